//! Offline restore of a backup snapshot into the data directory of a node of a NEW cluster
//! (`quorate snapshot restore`, like `etcdutl snapshot restore`).
//!
//! The snapshot file (written by `quorate snapshot save`) is verified first — header,
//! metadata and data checksums — so a damaged file is refused before anything is created.
//! Then a fresh store is created whose recorded snapshot has the file's last index and term
//! but the given members as its configuration, its hard state is (snapshot term, no vote,
//! commit = snapshot index), and the state machine is the file's data with the member
//! address records replaced by the given members' addresses. Run it once per member with the
//! same file and the same `peers`, then start the members: they elect a leader from the
//! snapshot point and the cluster goes on from there. The old cluster's log after the
//! snapshot is not part of a backup.

use crate::apply::install_snapshot_data;
use crate::sm::{self, SmError};
use quorate_log::{Configuration, EntryId, HardState, LogIndex, NodeId, SnapshotMeta};
use quorate_storage::{PersistBatch, RocksStore, SnapshotReader, StoreError, StoreOptions};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The directory in which a restore builds the store before renaming it to `store`.
pub(crate) const RESTORING_DIR: &str = "store.restoring";

/// The store directory of a node's data directory.
const STORE_DIR: &str = "store";

/// `Err` (with what to do) if `data_dir` holds a restore that did not finish: a node must not
/// start there (it would create an empty store beside the half-made one).
pub(crate) fn check_not_interrupted(data_dir: &Path) -> Result<(), String> {
    let partial = data_dir.join(RESTORING_DIR);
    if partial.exists() {
        return Err(format!(
            "{} holds an unfinished `quorate snapshot restore` (the process stopped before it completed); this \
             node will not start from it. Remove the data directory {} and run the restore again",
            partial.display(),
            data_dir.display()
        ));
    }
    Ok(())
}

/// What a restore created.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Restored {
    /// The snapshot's last entry (index and term of the old cluster).
    pub last: EntryId,
    /// State-machine records written (member addresses included).
    pub records: u64,
    /// The members of the new cluster.
    pub members: Vec<u64>,
}

/// Why a restore did not happen. Nothing is left behind in the data directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// The snapshot file cannot be used.
    #[error("the snapshot file {path} cannot be restored: {detail}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The snapshot file does not verify (`quorate snapshot status`).
    #[error("the snapshot file {path} does not verify: {detail}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The data directory already holds something.
    #[error(
        "the data directory {0} is not empty; restore into a new directory (a restore creates a new cluster's \
         data and never overwrites a node's)"
    )]
    DataDirNotEmpty(PathBuf),
    /// The members given do not make a configuration.
    #[error("members: {0}")]
    Members(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Writing the state machine failed.
    #[error("state machine: {0}")]
    Sm(String),
    /// A file-system operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl From<SmError> for RestoreError {
    fn from(e: SmError) -> RestoreError {
        RestoreError::Sm(e.to_string())
    }
}

/// Parses `id=host:port,id=host:port,...`.
pub fn parse_peers(text: &str) -> Result<BTreeMap<u64, String>, RestoreError> {
    let mut peers = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((id, addr)) = part.split_once('=') else {
            return Err(RestoreError::Members(format!("`{part}` is not `id=host:port`")));
        };
        let id: u64 =
            id.trim().parse().map_err(|_| RestoreError::Members(format!("`{id}` in `{part}` is not a node id")))?;
        if peers.insert(id, addr.trim().to_string()).is_some() {
            return Err(RestoreError::Members(format!("node {id} is listed twice")));
        }
    }
    Ok(peers)
}

/// Verifies the snapshot file (header, metadata and data checksums) and returns its metadata.
pub(crate) fn verify_file(file: &Path) -> Result<SnapshotMeta, RestoreError> {
    let bad = |detail: String| RestoreError::BadFile { path: file.to_path_buf(), detail };
    let mut reader = SnapshotReader::open(file).map_err(|e| bad(e.to_string()))?;
    std::io::copy(&mut reader, &mut std::io::sink()).map_err(|e| bad(format!("the data does not verify: {e}")))?;
    let meta = reader.meta().clone();
    if meta.last.index == LogIndex::ZERO {
        return Err(bad("it is a snapshot of an empty log (index 0); there is nothing to restore".into()));
    }
    Ok(meta)
}

/// What `quorate snapshot status` reports about a snapshot file.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnapshotInfo {
    /// What the snapshot covers: last index and term, configuration.
    pub meta: SnapshotMeta,
    /// Bytes of the whole file.
    pub file_bytes: u64,
    /// Bytes of state-machine data in it.
    pub data_bytes: u64,
    /// State-machine records (keys, sessions, member addresses, metadata).
    pub records: u64,
    /// Client keys among them.
    pub keys: u64,
    /// The member addresses recorded in the data (id → address), at most
    /// [`STATUS_ADDRESSES_MAX`] (the lowest ids), each as printable text
    /// ([`printable_address`]: cut after [`quorate_api::limits::TEXT_BYTES_MAX`] bytes,
    /// anything but printable ASCII escaped), so that a crafted file cannot write terminal
    /// escapes or unbounded text to the operator's screen.
    pub addresses: BTreeMap<u64, String>,
    /// Member address records beyond [`STATUS_ADDRESSES_MAX`], counted, not kept.
    pub addresses_omitted: u64,
    /// CRC-32 of the data (the checksum the file's trailer carries, verified).
    pub data_crc32: u32,
}

/// Member addresses `quorate snapshot status` keeps and shows, at most (a state machine
/// keeps the address of every member it ever had, up to this many are read at start too).
pub const STATUS_ADDRESSES_MAX: usize = quorate_log::MEMBERS_MAX * 4;

/// An address recorded in a snapshot as one line of printable text: printable ASCII (what a
/// `host:port` is made of) as is, `\` as `\\`, every other byte as `\xNN`; cut after
/// [`quorate_api::limits::TEXT_BYTES_MAX`] bytes with `...(N bytes)`.
#[must_use]
pub fn printable_address(bytes: &[u8]) -> String {
    let max = quorate_api::limits::TEXT_BYTES_MAX;
    let mut out = String::with_capacity(bytes.len().min(max));
    for &b in bytes.iter().take(max) {
        match b {
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    if bytes.len() > max {
        out.push_str(&format!("...({} bytes)", bytes.len()));
    }
    out
}

/// Reads a snapshot file offline and verifies it whole — header, metadata and data
/// checksums, the record framing, and that the keys are in strictly ascending order (as the
/// state machine writes them: a file whose keys go back or repeat was not written by a node)
/// — then says what it holds, bounded ([`SnapshotInfo::addresses`]). Never changes the file.
pub fn inspect(file: &Path) -> Result<SnapshotInfo, RestoreError> {
    let bad = |detail: String| RestoreError::Damaged { path: file.to_path_buf(), detail };
    let file_bytes =
        std::fs::metadata(file).map_err(|source| RestoreError::Io { path: file.to_path_buf(), source })?.len();
    let reader = SnapshotReader::open(file).map_err(|e| bad(e.to_string()))?;
    let meta = reader.meta().clone();
    let data_bytes = reader.data_len();
    let mut hashing = Crc32Reader { inner: reader, hasher: crc32fast::Hasher::new() };
    let (mut keys, mut addresses, mut addresses_omitted) = (0u64, BTreeMap::new(), 0u64);
    let mut previous: Option<Vec<u8>> = None;
    let mut record = 0u64;
    let records = sm::read_snapshot_data(&mut hashing, |k, v| {
        record += 1;
        if previous.as_ref().is_some_and(|p| k <= *p) {
            return Err(SmError::Corrupt {
                key: printable_address(&k[..k.len().min(64)]),
                detail: format!("record {record}: its key is not after the previous record's (keys must ascend)"),
            });
        }
        if sm::is_kv_key(&k) {
            keys += 1;
        } else if sm::is_member_addr_key(&k) {
            // Ids ascend with the keys, so the lowest ones are kept.
            match sm::member_addr_of(&k, &[]) {
                Some((id, _)) if addresses.len() < STATUS_ADDRESSES_MAX => {
                    addresses.insert(id, printable_address(&v));
                }
                _ => addresses_omitted += 1,
            }
        }
        previous = Some(k);
        Ok(())
    })
    .map_err(|e| bad(format!("the data: {e}")))?;
    Ok(SnapshotInfo {
        meta,
        file_bytes,
        data_bytes,
        records,
        keys,
        addresses,
        addresses_omitted,
        data_crc32: hashing.hasher.finalize(),
    })
}

/// Hashes what passes through.
struct Crc32Reader<R> {
    inner: R,
    hasher: crc32fast::Hasher,
}

impl<R: std::io::Read> std::io::Read for Crc32Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn members(id: u64, peers: &BTreeMap<u64, String>) -> Result<Configuration, RestoreError> {
    if !peers.contains_key(&id) {
        return Err(RestoreError::Members(format!("--peers must include this node ({id})")));
    }
    if peers.len() > quorate_log::MEMBERS_MAX {
        return Err(RestoreError::Members(format!("at most {} members", quorate_log::MEMBERS_MAX)));
    }
    let mut voters = Vec::new();
    for (&p, addr) in peers {
        let n = NodeId::new(p).ok_or_else(|| RestoreError::Members("node ids start at 1".into()))?;
        if addr.is_empty() || addr.len() > quorate_api::limits::TEXT_BYTES_MAX || !addr.contains(':') {
            return Err(RestoreError::Members(format!("the address of node {p} must be `host:port`, got {addr:?}")));
        }
        voters.push(n);
    }
    Configuration::with_voters(voters).map_err(|e| RestoreError::Members(e.to_string()))
}

/// Restores `file` into `data_dir` (which must be missing or empty) for node `id` of a new
/// cluster of `peers` (id → address, including `id`).
pub fn restore(file: &Path, data_dir: &Path, id: u64, peers: &BTreeMap<u64, String>) -> Result<Restored, RestoreError> {
    let config = members(id, peers)?;
    let meta = verify_file(file)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RestoreError::Io { path, source }
    };
    if data_dir.exists() {
        let mut entries = std::fs::read_dir(data_dir).map_err(io(data_dir))?;
        if entries.next().is_some() {
            return Err(RestoreError::DataDirNotEmpty(data_dir.to_path_buf()));
        }
    }
    std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    let result = restore_into(file, data_dir, &meta, config, peers, || Ok(())).and_then(|restored| {
        // Only a complete store gets the name a node starts from.
        let (from, to) = (data_dir.join(RESTORING_DIR), data_dir.join(STORE_DIR));
        std::fs::rename(&from, &to).map_err(io(&to))?;
        std::fs::File::open(data_dir).and_then(|d| d.sync_all()).map_err(io(data_dir))?;
        Ok(restored)
    });
    if result.is_err() {
        // Leave no half-made store that a node could start from.
        let _ = std::fs::remove_dir_all(data_dir);
    }
    result
}

/// Builds the store in `data_dir/`[`RESTORING_DIR`]. `created` runs once the store exists
/// (tests stop there to model a crash).
fn restore_into(
    file: &Path,
    data_dir: &Path,
    old: &SnapshotMeta,
    config: Configuration,
    peers: &BTreeMap<u64, String>,
    created: impl FnOnce() -> Result<(), RestoreError>,
) -> Result<Restored, RestoreError> {
    let store = RocksStore::open(data_dir.join(RESTORING_DIR), StoreOptions::with_bootstrap(config.clone()))?;
    created()?;
    let meta = SnapshotMeta { last: old.last, config };

    // The data again, member addresses replaced, into the new store's snapshot file.
    let mut writer = store.snapshot_writer(meta.clone())?;
    let mut reader = SnapshotReader::open(file)?;
    let mut records = 0u64;
    let mut put = |w: &mut quorate_storage::SnapshotWriter, k: &[u8], v: &[u8]| -> Result<(), SmError> {
        let io = |e: std::io::Error| SmError::Storage(StoreError::Io(format!("writing snapshot: {e}")));
        w.write_all(&(k.len() as u32).to_le_bytes()).map_err(io)?;
        w.write_all(k).map_err(io)?;
        w.write_all(&(v.len() as u32).to_le_bytes()).map_err(io)?;
        w.write_all(v).map_err(io)?;
        records += 1;
        Ok(())
    };
    // The new addresses go in key order among the others (they ascend with the ids), so that
    // the file's keys ascend as a node writes them (they used to come last, after every key).
    let mut addrs = Vec::new();
    for (&p, addr) in peers {
        let n = NodeId::new(p).ok_or_else(|| RestoreError::Members("node ids start at 1".into()))?;
        addrs.push(sm::member_addr_record(n, addr));
    }
    let mut addrs = addrs.into_iter().peekable();
    sm::read_snapshot_data(&mut reader, |k, v| {
        if sm::is_member_addr_key(&k) {
            return Ok(());
        }
        while let Some((ak, av)) = addrs.next_if(|(ak, _)| *ak < k) {
            put(&mut writer, &ak, &av)?;
        }
        put(&mut writer, &k, &v)
    })?;
    for (k, v) in addrs {
        put(&mut writer, &k, &v)?;
    }
    writer.finish()?;

    let hard = HardState { term: meta.last.term, vote: None, commit: meta.last.index };
    store.write(PersistBatch { install: Some(meta.clone()), hard_state: Some(hard), ..PersistBatch::default() })?;
    install_snapshot_data(&store, &meta)?;
    Ok(Restored { last: meta.last, records, members: peers.keys().copied().collect() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorate_log::{Configuration, EntryId, LogIndex, Term};

    /// A backup file of a state machine with a few records, at index 42 term 3.
    fn backup(dir: &Path) -> PathBuf {
        let meta = SnapshotMeta {
            last: EntryId::new(Term(3), LogIndex(42)),
            config: Configuration::with_voters([NodeId::new(1).unwrap()]).unwrap(),
        };
        let mut w = quorate_storage::SnapshotWriter::create(dir, meta).unwrap();
        for (k, v) in [(b"a".as_slice(), b"1".as_slice()), (b"b", b"2")] {
            w.write_all(&(k.len() as u32).to_le_bytes()).unwrap();
            w.write_all(k).unwrap();
            w.write_all(&(v.len() as u32).to_le_bytes()).unwrap();
            w.write_all(v).unwrap();
        }
        w.finish().unwrap().path
    }

    #[test]
    fn a_crash_mid_restore_leaves_no_store_a_node_would_start_from() {
        // Issue 18: the store was created under its final name before the install was written,
        // so a crash in between left an empty store that a node would start from.
        let tmp = tempfile::tempdir().unwrap();
        let file = backup(tmp.path());
        let data_dir = tmp.path().join("node-1");
        std::fs::create_dir_all(&data_dir).unwrap();
        let peers = parse_peers("1=127.0.0.1:7001").unwrap();
        let meta = verify_file(&file).unwrap();
        let config = members(1, &peers).unwrap();
        // The process dies right after the store was created (no cleanup runs).
        let crashed =
            restore_into(&file, &data_dir, &meta, config, &peers, || Err(RestoreError::Members("crash".into())));
        assert!(crashed.is_err());
        assert!(!data_dir.join(STORE_DIR).exists(), "a half-made store has the name a node starts from");
        let refusal = check_not_interrupted(&data_dir).unwrap_err();
        assert!(refusal.contains("unfinished") && refusal.contains("run the restore again"), "{refusal}");

        // A complete restore renames it into place.
        let data_dir = tmp.path().join("node-2");
        let restored = restore(&file, &data_dir, 1, &peers).unwrap();
        assert_eq!(restored.last, EntryId::new(Term(3), LogIndex(42)));
        check_not_interrupted(&data_dir).unwrap();
        let store = RocksStore::open(data_dir.join(STORE_DIR), StoreOptions::default()).unwrap();
        assert_eq!(store.applied_index(), LogIndex(42));
        assert_eq!(store.sm_install_pending(), None);
    }

    /// A snapshot file whose data is `pairs`, framed as the state machine writes them.
    fn file_of(dir: &Path, pairs: &[(Vec<u8>, Vec<u8>)]) -> (PathBuf, Vec<u8>) {
        let meta = SnapshotMeta {
            last: EntryId::new(Term(3), LogIndex(42)),
            config: Configuration::with_voters([NodeId::new(1).unwrap(), NodeId::new(2).unwrap()]).unwrap(),
        };
        let mut data = Vec::new();
        for (k, v) in pairs {
            data.extend_from_slice(&(k.len() as u32).to_le_bytes());
            data.extend_from_slice(k);
            data.extend_from_slice(&(v.len() as u32).to_le_bytes());
            data.extend_from_slice(v);
        }
        let mut w = quorate_storage::SnapshotWriter::create(dir, meta).unwrap();
        w.write_all(&data).unwrap();
        (w.finish().unwrap().path, data)
    }

    #[test]
    fn snapshot_status_reports_a_good_file() {
        let tmp = tempfile::tempdir().unwrap();
        // In key order, as a node writes them.
        let pairs = vec![
            sm::member_addr_record(NodeId::new(1).unwrap(), "10.0.0.1:7001"),
            sm::member_addr_record(NodeId::new(2).unwrap(), "n2.example:7001"),
            (b"kuser/a".to_vec(), b"1".to_vec()),
            (b"kuser/b".to_vec(), b"2".to_vec()),
            (b"m/revision".to_vec(), 9u64.to_le_bytes().to_vec()),
        ];
        let (file, data) = file_of(tmp.path(), &pairs);
        let info = inspect(&file).unwrap();
        assert_eq!(info.meta.last, EntryId::new(Term(3), LogIndex(42)));
        assert_eq!(info.meta.config.voters.len(), 2);
        assert_eq!((info.records, info.keys), (5, 2));
        assert_eq!(info.addresses.get(&2).map(String::as_str), Some("n2.example:7001"));
        assert_eq!(info.data_bytes, data.len() as u64);
        assert_eq!(info.file_bytes, std::fs::metadata(&file).unwrap().len());
        assert_eq!(info.data_crc32, crc32fast::hash(&data), "the hash is the CRC-32 of the data");
        // An empty state machine is a valid snapshot too.
        let empty = tempfile::tempdir().unwrap();
        let (file, _) = file_of(empty.path(), &[]);
        let info = inspect(&file).unwrap();
        assert_eq!((info.records, info.keys, info.data_crc32), (0, 0, crc32fast::hash(&[])));
    }

    #[test]
    fn snapshot_status_refuses_truncated_corrupt_and_foreign_files_without_panicking() {
        let tmp = tempfile::tempdir().unwrap();
        let pairs = vec![(b"kkey".to_vec(), b"value".to_vec()), (b"kother".to_vec(), vec![0xff; 40])];
        let (file, _) = file_of(tmp.path(), &pairs);
        let good = std::fs::read(&file).unwrap();
        let crafted = tmp.path().join("crafted.qsnap");
        // Every truncation, the empty file included.
        for len in 0..good.len() {
            std::fs::write(&crafted, &good[..len]).unwrap();
            let e = inspect(&crafted).expect_err("a truncated file verifies");
            assert!(matches!(e, RestoreError::Damaged { .. }), "truncated to {len}: {e}");
        }
        // Every single-bit flip: header, metadata, data and trailer are all checked.
        for at in 0..good.len() {
            for bit in [0x01u8, 0x80] {
                let mut bytes = good.clone();
                bytes[at] ^= bit;
                std::fs::write(&crafted, &bytes).unwrap();
                let e = inspect(&crafted).expect_err("a corrupt file verifies");
                assert!(e.to_string().contains("does not verify"), "byte {at} ^ {bit:#x}: {e}");
            }
        }
        // Bytes appended after the trailer.
        let mut longer = good.clone();
        longer.extend_from_slice(b"junk");
        std::fs::write(&crafted, &longer).unwrap();
        assert!(inspect(&crafted).is_err());
        // Not a snapshot at all.
        std::fs::write(&crafted, b"SQLite format 3\0 and then some more bytes than a header").unwrap();
        let e = inspect(&crafted).unwrap_err().to_string();
        assert!(e.contains("does not verify"), "{e}");
        // Checksums right but the records' framing wrong: a key length past the data.
        let framing = tempfile::tempdir().unwrap();
        let meta = SnapshotMeta {
            last: EntryId::new(Term(1), LogIndex(5)),
            config: Configuration::with_voters([NodeId::new(1).unwrap()]).unwrap(),
        };
        let mut w = quorate_storage::SnapshotWriter::create(framing.path(), meta).unwrap();
        w.write_all(&[4, 0, 0, 0, b'k', b'a']).unwrap();
        let path = w.finish().unwrap().path;
        let e = inspect(&path).unwrap_err().to_string();
        assert!(e.contains("does not verify") && e.contains("the data"), "{e}");
        // Missing file and a directory.
        assert!(matches!(inspect(&tmp.path().join("missing")), Err(RestoreError::Io { .. })));
        assert!(inspect(tmp.path()).is_err());
    }

    /// Found with the key-order check of `snapshot status`: a restore wrote the new member
    /// addresses after every other record, so the restored store's snapshot file (the one it
    /// sends to a follower) had keys out of order.
    #[test]
    fn a_restored_snapshot_keeps_its_keys_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let file = backup(tmp.path());
        let data_dir = tmp.path().join("node-1");
        let peers = parse_peers("1=127.0.0.1:7001,2=127.0.0.1:7002").unwrap();
        restore(&file, &data_dir, 1, &peers).unwrap();
        let store = RocksStore::open(data_dir.join(STORE_DIR), StoreOptions::default()).unwrap();
        let files: Vec<PathBuf> = std::fs::read_dir(store.snapshot_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "qsnap"))
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        let info = inspect(&files[0]).expect("the restored snapshot's keys ascend");
        assert_eq!(info.records, 4, "two keys and two addresses");
        assert_eq!(info.addresses.get(&2).map(String::as_str), Some("127.0.0.1:7002"));
    }

    /// Review of issue 21: `snapshot status` kept every address record of a file, whole, and
    /// printed it as it was (a crafted file could send terminal escapes to the operator's
    /// screen, or fill memory); the order of the keys was not checked.
    #[test]
    fn snapshot_status_of_crafted_files_is_bounded_escaped_and_checks_key_order() {
        let tmp = tempfile::tempdir().unwrap();
        let node = |id: u64| NodeId::new(id).unwrap();
        // Terminal escapes (a window title, a colour, a bell), a bidi override, a backslash,
        // bytes that are not UTF-8.
        let evil = b"\x1b]0;owned\x07\x1b[31mred\xe2\x80\xaeevil\\ \xff:7001".to_vec();
        let huge = vec![b'h'; 100_000];
        let (file, _) = file_of(
            tmp.path(),
            &[
                (sm::member_addr_record(node(1), "").0, evil),
                (sm::member_addr_record(node(2), "").0, huge),
                sm::member_addr_record(node(3), "10.0.0.3:7001"),
            ],
        );
        let info = inspect(&file).unwrap();
        let shown = &info.addresses[&1];
        assert_eq!(shown, "\\x1b]0;owned\\x07\\x1b[31mred\\xe2\\x80\\xaeevil\\\\ \\xff:7001");
        for a in info.addresses.values() {
            assert!(a.bytes().all(|b| (0x20..=0x7e).contains(&b)), "printable ASCII only: {a:?}");
        }
        let cut = &info.addresses[&2];
        assert!(cut.len() < quorate_api::limits::TEXT_BYTES_MAX + 32, "cut: {} bytes", cut.len());
        assert!(cut.ends_with("...(100000 bytes)"), "{}", &cut[cut.len() - 40..]);
        assert_eq!(info.addresses[&3], "10.0.0.3:7001");
        assert_eq!(info.addresses_omitted, 0);

        // Ten thousand address records: the lowest ids kept, the rest counted.
        let many = tempfile::tempdir().unwrap();
        let pairs: Vec<_> = (1..=10_000u64).map(|i| sm::member_addr_record(node(i), "10.0.0.1:7001")).collect();
        let (file, _) = file_of(many.path(), &pairs);
        let info = inspect(&file).unwrap();
        assert_eq!(info.addresses.len(), STATUS_ADDRESSES_MAX);
        assert_eq!(info.addresses.keys().next_back(), Some(&(STATUS_ADDRESSES_MAX as u64)));
        assert_eq!(info.addresses_omitted, 10_000 - STATUS_ADDRESSES_MAX as u64);
        assert_eq!(info.records, 10_000);

        // Keys that go back, or repeat: refused, naming the record.
        for (name, pairs) in [
            ("back", vec![(b"kb".to_vec(), b"1".to_vec()), (b"ka".to_vec(), b"2".to_vec())]),
            ("repeat", vec![(b"ka".to_vec(), b"1".to_vec()), (b"ka".to_vec(), b"2".to_vec())]),
            ("prefix", vec![(b"kab".to_vec(), b"1".to_vec()), (b"ka".to_vec(), b"2".to_vec())]),
        ] {
            let d = tempfile::tempdir().unwrap();
            let (file, _) = file_of(d.path(), &pairs);
            let e = inspect(&file).expect_err(name);
            assert!(matches!(e, RestoreError::Damaged { .. }), "{name}: {e}");
            let e = e.to_string();
            assert!(e.contains("record 2") && e.contains("keys must ascend"), "{name}: {e}");
        }
    }
}
