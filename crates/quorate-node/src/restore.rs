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
pub const RESTORING_DIR: &str = "store.restoring";

/// The store directory of a node's data directory.
const STORE_DIR: &str = "store";

/// `Err` (with what to do) if `data_dir` holds a restore that did not finish: a node must not
/// start there (it would create an empty store beside the half-made one).
pub fn check_not_interrupted(data_dir: &Path) -> Result<(), String> {
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
    Sm(#[from] SmError),
    /// A file-system operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
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
pub fn verify_file(file: &Path) -> Result<SnapshotMeta, RestoreError> {
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
    /// The member addresses recorded in the data (id → address).
    pub addresses: BTreeMap<u64, String>,
    /// CRC-32 of the data (the checksum the file's trailer carries, verified).
    pub data_crc32: u32,
}

/// Reads a snapshot file offline and verifies it whole — header, metadata and data
/// checksums, and the record framing — then says what it holds. Never changes the file.
pub fn inspect(file: &Path) -> Result<SnapshotInfo, RestoreError> {
    let bad = |detail: String| RestoreError::Damaged { path: file.to_path_buf(), detail };
    let file_bytes =
        std::fs::metadata(file).map_err(|source| RestoreError::Io { path: file.to_path_buf(), source })?.len();
    let reader = SnapshotReader::open(file).map_err(|e| bad(e.to_string()))?;
    let meta = reader.meta().clone();
    let data_bytes = reader.data_len();
    let mut hashing = Crc32Reader { inner: reader, hasher: crc32fast::Hasher::new() };
    let (mut keys, mut addresses) = (0u64, BTreeMap::new());
    let records = sm::read_snapshot_data(&mut hashing, |k, v| {
        if sm::is_kv_key(&k) {
            keys += 1;
        } else if let Some((id, addr)) = sm::member_addr_of(&k, &v) {
            addresses.insert(id, addr);
        }
        Ok(())
    })
    .map_err(|e| bad(format!("the data: {e}")))?;
    Ok(SnapshotInfo { meta, file_bytes, data_bytes, records, keys, addresses, data_crc32: hashing.hasher.finalize() })
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
    sm::read_snapshot_data(
        &mut reader,
        |k, v| if sm::is_member_addr_key(&k) { Ok(()) } else { put(&mut writer, &k, &v) },
    )?;
    for (&p, addr) in peers {
        let n = NodeId::new(p).ok_or_else(|| RestoreError::Members("node ids start at 1".into()))?;
        let (k, v) = sm::member_addr_record(n, addr);
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
        let pairs = vec![
            (b"kuser/a".to_vec(), b"1".to_vec()),
            (b"kuser/b".to_vec(), b"2".to_vec()),
            sm::member_addr_record(NodeId::new(1).unwrap(), "10.0.0.1:7001"),
            sm::member_addr_record(NodeId::new(2).unwrap(), "n2.example:7001"),
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
}
