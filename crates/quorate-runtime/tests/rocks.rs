//! [`RocksLog`]: a replica on RocksDB survives a restart with its snapshot, its session table
//! and the log after the snapshot; a retried session command is still answered from the cache.
//! Snapshots are streamed from and to files: written through the store's writer, read at
//! offsets (also after a newer snapshot replaced the file), staged and installed.

use quorate_core::Instant;
use quorate_log::{Configuration, LogIndex, NodeId};
use quorate_runtime::{
    ClientId, Committed, Config, Error, ProposeCallback, Replica, RestoreError, RocksLog, Role, StateMachine,
};
use quorate_storage::StoreOptions;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Sum {
    total: u64,
    applied: LogIndex,
}

impl StateMachine for Sum {
    type Output = u64;
    fn apply(&mut self, batch: &[Committed<'_>]) -> Vec<u64> {
        batch
            .iter()
            .map(|c| {
                self.total += c.command.iter().map(|b| u64::from(*b)).sum::<u64>();
                self.applied = c.index;
                self.total
            })
            .collect()
    }
    fn snapshot(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        out.write_all(&self.total.to_le_bytes())?;
        // Padding, so that an image spans many read pieces and chunks: 200 KiB.
        for i in 0..200u32 {
            out.write_all(&[(i % 251) as u8; 1024])?;
        }
        Ok(())
    }
    fn restore(&mut self, applied: LogIndex, s: &mut dyn std::io::Read) -> Result<(), RestoreError> {
        let mut b = [0u8; 8];
        s.read_exact(&mut b)?;
        let mut padding = Vec::new();
        s.read_to_end(&mut padding)?;
        if padding.len() != 200 * 1024 {
            return Err(RestoreError(format!("{} bytes of padding", padding.len())));
        }
        (self.total, self.applied) = (u64::from_le_bytes(b), applied);
        Ok(())
    }
    fn applied(&self) -> LogIndex {
        self.applied
    }
}

type Log<T> = Arc<Mutex<Vec<Result<T, Error>>>>;

fn sink<T: Send + 'static>(log: &Log<T>) -> ProposeCallback<T> {
    let log = log.clone();
    Box::new(move |r| log.lock().expect("unpoisoned").push(r))
}

fn start(dir: &std::path::Path) -> (Replica<Sum, RocksLog>, Instant) {
    let id = NodeId::new(1).expect("non-zero");
    let store = RocksLog::open(dir, StoreOptions::with_bootstrap(Configuration::with_voters([id]).expect("valid")))
        .expect("opens");
    let mut cfg = Config::new(id);
    cfg.raft.compaction_tail_entries = 0;
    let mut r = Replica::new(cfg, store, Sum::default(), Instant::ZERO).expect("starts");
    let now = r.next_deadline().expect("an election timer");
    r.tick(now);
    r.process(now, &mut Vec::new());
    assert_eq!(r.status().role, Role::Leader);
    (r, now)
}

#[test]
fn a_replica_on_rocksdb_restarts_from_its_snapshot_and_log() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (mut r, now) = start(dir.path());
    let sessions: Log<ClientId> = Log::default();
    r.open_session(now, sink(&sessions));
    r.process(now, &mut Vec::new());
    let client = sessions.lock().unwrap().pop().expect("answered").expect("opened");
    let out: Log<u64> = Log::default();
    r.propose(now, vec![5], Some((client, 1)), sink(&out));
    r.process(now, &mut Vec::new());
    let at = r.snapshot_now(now).expect("a snapshot");
    assert!(at > LogIndex(0));
    // After the snapshot: one more command, only in the log.
    r.propose(now, vec![2], Some((client, 2)), sink(&out));
    r.process(now, &mut Vec::new());
    assert_eq!(*out.lock().unwrap(), vec![Ok(5), Ok(7)]);
    drop(r);

    let (mut r, now) = start(dir.path());
    assert_eq!(r.state_machine().expect("inline").total, 7, "snapshot restored and the log after it applied again");
    assert!(r.status().snapshot_index <= at);
    r.propose(now, vec![2], Some((client, 2)), sink(&out));
    r.process(now, &mut Vec::new());
    assert_eq!(out.lock().unwrap().last(), Some(&Ok(7)), "the retry is answered from the cache");
    assert_eq!(r.state_machine().expect("inline").total, 7);
}

/// All of `source`, read at offsets in pieces of `piece` bytes.
fn read_all(source: &dyn quorate_runtime::SnapshotSource, piece: usize) -> Vec<u8> {
    let total = source.header().total_len;
    let mut out = Vec::new();
    while (out.len() as u64) < total {
        let mut buf = vec![0u8; piece];
        let n = source.read_at(out.len() as u64, &mut buf).expect("reads");
        assert!(n > 0, "short read at {}", out.len());
        out.extend_from_slice(&buf[..n]);
    }
    let mut buf = [0u8; 16];
    assert_eq!(source.read_at(total, &mut buf), Ok(0), "nothing past the end");
    out
}

/// Item 4 of issue 19d: `RocksLog` streams snapshots from its files. The image is written
/// through the store's writer, its header (length, CRC-32) comes from the file's trailer
/// without hashing, reads at any offset give the image's bytes, and an image opened before a
/// newer snapshot replaced it (and compaction removed its file) still reads whole.
#[test]
fn rocks_log_streams_snapshots_from_files_at_offsets() {
    use quorate_runtime::{LogStorage, SnapshotHeader};
    let dir = tempfile::tempdir().expect("a temp dir");
    let (mut r, now) = start(dir.path());
    for k in 1..=3u8 {
        r.propose(now, vec![k], None, Box::new(|_| {}));
    }
    r.process(now, &mut Vec::new());
    let at = r.snapshot_now(now).expect("a snapshot");
    let old = r.storage().open_snapshot().expect("readable").expect("a snapshot");
    let h = old.header().clone();
    assert_eq!(h.meta.last.index, at);
    assert!(h.total_len > 200 * 1024);
    let whole = read_all(old.as_ref(), 48 * 1024 + 7);
    assert_eq!(SnapshotHeader::of(h.meta.clone(), &whole), h, "the trailer's length and CRC-32 are the image's");
    assert_eq!(read_all(old.as_ref(), 1_000_000), whole, "the piece size does not matter");
    let mut mid = [0u8; 100];
    assert_eq!(old.read_at(123_456, &mut mid), Ok(100));
    assert_eq!(&mid[..], &whole[123_456..123_556]);
    // A newer snapshot replaces it; compaction (no tail) removes the older file.
    r.propose(now, vec![9], None, Box::new(|_| {}));
    r.process(now, &mut Vec::new());
    let newer = r.snapshot_now(now).expect("a snapshot");
    assert!(newer > at);
    r.propose(now, vec![1], None, Box::new(|_| {}));
    r.process(now, &mut Vec::new());
    assert_eq!(r.storage().snapshot().expect("readable").map(|h| h.meta.last.index), Some(newer));
    let files: Vec<String> = std::fs::read_dir(r.storage().store().dir().join("snapshots"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    let old_name = format!("snap-{:020}-{:020}.qsnap", at.0, h.meta.last.term.0);
    assert!(!files.contains(&old_name), "compaction removed the older file: {files:?}");
    assert!(!files.is_empty(), "the newer file is there");
    assert_eq!(read_all(old.as_ref(), 64 * 1024), whole, "the older image, still open, reads whole");
    drop(r);
    let (r, _) = start(dir.path());
    assert_eq!(r.state_machine().expect("inline").total, 1 + 2 + 3 + 9 + 1, "restored from the newer file, streamed");
}

/// The staging of a snapshot in transfer survives a reopen at its durable length (bytes past
/// it are cut off), is replaced by another image, and its complete bytes come back once.
#[test]
fn a_staged_snapshot_survives_a_reopen_and_is_replaced_by_another_image() {
    use quorate_log::{EntryId, SnapshotMeta, Term};
    use quorate_runtime::{LogStorage, SnapshotHeader};
    let dir = tempfile::tempdir().expect("a temporary directory");
    let id = NodeId::new(1).expect("non-zero");
    let open = || {
        RocksLog::open(dir.path(), StoreOptions::with_bootstrap(Configuration::with_voters([id]).expect("valid")))
            .expect("opens")
    };
    let image: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let meta = SnapshotMeta { last: EntryId::new(Term(2), LogIndex(40)), config: Configuration::default() };
    let header = SnapshotHeader::of(meta.clone(), &image);
    let mut s = open();
    assert_eq!(s.staging(), Ok(None));
    s.begin_staging(&header).expect("begins");
    s.append_staging(0, &image[..4_000]).expect("appends");
    assert!(s.append_staging(5_000, &image[5_000..6_000]).is_err(), "a gap is refused");
    assert_eq!(s.staging(), Ok(Some((header.clone(), 4_000))));
    drop(s);
    // A torn write after the last recorded append: bytes past the durable length.
    let data = dir.path().join("runtime-staging").join("image");
    let mut torn = std::fs::read(&data).expect("staged bytes");
    torn.extend_from_slice(&[0xee; 123]);
    std::fs::write(&data, torn).expect("writes");
    let mut s = open();
    assert_eq!(s.staging(), Ok(Some((header.clone(), 4_000))), "the durable length, after a reopen");
    s.append_staging(4_000, &image[4_000..]).expect("appends the rest");
    let staged = s.open_staging().expect("readable").expect("a staging");
    assert_eq!(staged.header(), &header);
    assert_eq!(read_all(staged.as_ref(), 999), image, "the image, without the torn bytes");
    drop(staged);
    s.abort_staging().expect("aborts");
    assert_eq!(s.staging(), Ok(None));
    // Another image replaces a staging; abort removes it, also after a reopen.
    s.begin_staging(&header).expect("begins");
    s.append_staging(0, &image[..100]).expect("appends");
    let other = SnapshotHeader::of(SnapshotMeta { last: EntryId::new(Term(3), LogIndex(50)), ..meta }, &image[..500]);
    s.begin_staging(&other).expect("replaces");
    assert_eq!(s.staging(), Ok(Some((other, 0))));
    s.abort_staging().expect("aborts");
    drop(s);
    assert_eq!(open().staging(), Ok(None));
}

/// A staging received as a stream starts without the image's checksum; sealed once complete
/// (and only then), it carries it, also after a reopen, and reads back as that image.
#[test]
fn a_complete_staging_is_sealed_with_its_checksum_and_keeps_it_across_a_reopen() {
    use quorate_log::{EntryId, SnapshotMeta, Term};
    use quorate_runtime::{LogStorage, SnapshotHeader};
    let dir = tempfile::tempdir().expect("a temporary directory");
    let id = NodeId::new(1).expect("non-zero");
    let open = || {
        RocksLog::open(dir.path(), StoreOptions::with_bootstrap(Configuration::with_voters([id]).expect("valid")))
            .expect("opens")
    };
    let image: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
    let meta = SnapshotMeta { last: EntryId::new(Term(2), LogIndex(40)), config: Configuration::default() };
    let sealed = SnapshotHeader::of(meta.clone(), &image);
    let unsealed = SnapshotHeader::new(meta.clone(), image.len() as u64, 0);
    let mut s = open();
    assert!(s.seal_staging(&sealed).is_err(), "nothing staged");
    s.begin_staging(&unsealed).expect("begins");
    s.append_staging(0, &image[..6_000]).expect("appends");
    assert!(s.seal_staging(&sealed).is_err(), "not complete");
    s.append_staging(6_000, &image[6_000..]).expect("appends the rest");
    let elsewhere = SnapshotHeader::new(SnapshotMeta { last: EntryId::new(Term(2), LogIndex(41)), ..meta }, 10_000, 1);
    assert!(s.seal_staging(&elsewhere).is_err(), "another snapshot");
    s.seal_staging(&sealed).expect("seals");
    assert_eq!(s.staging(), Ok(Some((sealed.clone(), 10_000))));
    drop(s);
    let s = open();
    assert_eq!(s.staging(), Ok(Some((sealed.clone(), 10_000))), "sealed, after a reopen");
    let staged = s.open_staging().expect("readable").expect("a staging");
    assert_eq!(staged.header(), &sealed);
    assert_eq!(read_all(staged.as_ref(), 999), image);
}

/// Three replicas driven by hand: 1 and 3 on storage `S` (in memory unless said), 2 on
/// RocksDB (down while `b` is None). Messages are delivered at the next step.
struct Trio<S: quorate_runtime::LogStorage = quorate_runtime::MemStorage> {
    a: Replica<Sum, S>,
    b: Option<Replica<Sum, RocksLog>>,
    c: Replica<Sum, S>,
    now: Instant,
    wire: Vec<quorate_runtime::WireMessage>,
    /// Data chunks sent to node 2.
    chunks_to_b: u64,
}

impl<S: quorate_runtime::LogStorage> Trio<S> {
    fn step(&mut self) {
        let mut t = self.now.0 + 10_000_000;
        let deadlines =
            [self.a.next_deadline(), self.b.as_ref().and_then(|b| b.next_deadline()), self.c.next_deadline()];
        for d in deadlines.into_iter().flatten() {
            t = t.min(d.0);
        }
        self.now = Instant(t.max(self.now.0 + 1_000_000));
        let now = self.now;
        for m in std::mem::take(&mut self.wire) {
            match m.to().get() {
                1 => self.a.receive(now, m),
                2 => {
                    if let Some(b) = &mut self.b {
                        b.receive(now, m);
                    }
                }
                _ => self.c.receive(now, m),
            }
        }
        let mut out = Vec::new();
        self.a.tick(now);
        self.a.process(now, &mut out);
        self.c.tick(now);
        self.c.process(now, &mut out);
        if let Some(b) = &mut self.b {
            b.tick(now);
            b.process(now, &mut out);
        }
        for m in &out {
            let to_b = match m {
                quorate_runtime::WireMessage::SnapshotChunk(c) => c.to.get() == 2 && !c.data.is_empty(),
                quorate_runtime::WireMessage::SnapshotStream(c) => c.to.get() == 2,
                _ => false,
            };
            if to_b {
                self.chunks_to_b += 1;
            }
        }
        self.wire = out;
    }

    fn run_until(&mut self, steps: usize, done: impl Fn(&Trio<S>) -> bool) -> bool {
        (0..steps).any(|_| {
            self.step();
            done(self)
        })
    }

    fn leader(&mut self) -> Option<&mut Replica<Sum, S>> {
        if self.a.status().role == Role::Leader {
            Some(&mut self.a)
        } else if self.c.status().role == Role::Leader {
            Some(&mut self.c)
        } else {
            None
        }
    }
}

/// S2: a crash after the last chunk was appended durably, before the staging was finished
/// (and removed), leaves a complete staging on disk. After a reopen, the leader's next
/// transfer has it checked and installed (nothing sent again), and it is gone for good.
#[test]
fn a_complete_staging_left_by_a_crash_is_installed_by_the_next_transfer() {
    use quorate_runtime::{LogStorage, MemStorage};
    let ids: Vec<NodeId> = (1..=3).map(|i| NodeId::new(i).expect("non-zero")).collect();
    let conf = Configuration::with_voters(ids.iter().copied()).expect("valid");
    let cfg = |id: NodeId| {
        let mut cfg = Config::new(id);
        cfg.raft.seed = id.get();
        cfg.raft.snapshot_entries_threshold = 5;
        cfg.raft.compaction_tail_entries = 1;
        cfg
    };
    let mem = |id| Replica::new(cfg(id), MemStorage::new(conf.clone()), Sum::default(), Instant::ZERO).expect("starts");
    let mut trio =
        Trio { a: mem(ids[0]), b: None, c: mem(ids[2]), now: Instant::ZERO, wire: Vec::new(), chunks_to_b: 0 };
    assert!(trio.run_until(1_000, |t| t.a.status().role == Role::Leader || t.c.status().role == Role::Leader));
    for k in 0..20u8 {
        let now = trio.now;
        trio.leader().expect("a leader").propose(now, vec![k], None, Box::new(|_| {}));
        trio.step();
    }
    assert!(trio.run_until(1_000, |t| t.a.state_machine().expect("inline").total == 190
        && t.c.state_machine().expect("inline").total == 190));
    let leader = trio.leader().expect("a leader");
    assert!(leader.status().snapshot_index > LogIndex(2), "the leader compacted past node 2's log");
    let (header, image) = leader.storage().snapshot_bytes().expect("a snapshot");

    // Node 2 staged the whole image durably, then died before finishing it.
    let dir = tempfile::tempdir().expect("a temp dir");
    let open = || RocksLog::open(dir.path(), StoreOptions::with_bootstrap(conf.clone())).expect("opens");
    let mut s = open();
    s.begin_staging(&header).expect("begins");
    s.append_staging(0, &image).expect("appends");
    drop(s);
    let s = open();
    assert_eq!(s.staging(), Ok(Some((header.clone(), header.total_len))), "complete after the reopen");
    trio.b = Some(Replica::new(cfg(ids[1]), s, Sum::default(), trio.now).expect("starts"));
    let installed =
        trio.run_until(3_000, |t| t.b.as_ref().is_some_and(|b| b.state_machine().expect("inline").total == 190));
    let b = trio.b.take().expect("running");
    assert!(installed, "node 2 installed the staged image: {:?}", b.transfer_stats());
    assert_eq!(b.transfer_stats().installs, 1);
    assert_eq!(trio.chunks_to_b, 0, "no byte was sent again");
    assert_eq!(b.storage().staging(), Ok(None));
    drop(b);
    assert_eq!(open().staging(), Ok(None), "the finished staging stays gone after a reopen");
}

/// Brief 19c (issue 19): installing a complete staging moves the staged file into the store's
/// snapshot directory — the image is written once, when it is staged, and not copied again by
/// the install. The snapshot file after the install is the staging file before it (the same
/// inode: a rename, not a copy), it reads back as the image, the staging is gone, and a reopen
/// finds the snapshot. An install interrupted between its trailer and its rename leaves a
/// staging that is whole after a reopen. (Before the change the install copied the staging
/// into a new file: this test failed on the inode, 10011015 against 10011018.)
#[cfg(unix)]
#[test]
fn installing_a_staged_snapshot_renames_the_staged_file_instead_of_copying_it() {
    use quorate_core::{IoId, Persist};
    use quorate_log::{EntryId, SnapshotMeta, Term};
    use quorate_runtime::{LogStorage, SnapshotHeader};
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let id = NodeId::new(1).expect("non-zero");
    let config = Configuration::with_voters([id]).expect("valid");
    let open = || RocksLog::open(dir.path(), StoreOptions::with_bootstrap(config.clone())).expect("opens");
    let image: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let meta = SnapshotMeta { last: EntryId::new(Term(2), LogIndex(40)), config: config.clone() };
    let header = SnapshotHeader::of(meta.clone(), &image);
    let mut s = open();
    s.begin_staging(&header).expect("begins");
    s.append_staging(0, &image[..150_000]).expect("appends");
    s.append_staging(150_000, &image[150_000..]).expect("appends the rest");
    // The one file of the staging that holds the image's bytes.
    let staging_dir = dir.path().join("runtime-staging");
    let staged: Vec<(std::path::PathBuf, std::fs::Metadata)> = std::fs::read_dir(&staging_dir)
        .expect("a staging directory")
        .filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok().map(|m| (e.path(), m)))
        .filter(|(_, m)| m.len() >= image.len() as u64)
        .collect();
    assert_eq!(staged.len(), 1, "one staged image: {staged:?}");
    let staged_inode = staged[0].1.ino();
    // An install interrupted after it appended the trailer, before the rename: a reopen cuts
    // the trailer off, and the staging is whole again.
    drop(s);
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&staged[0].0).expect("the staged file");
        f.write_all(&[0xab; 16]).expect("writes");
    }
    let mut s = open();
    assert_eq!(s.staging(), Ok(Some((header.clone(), image.len() as u64))), "whole, without the trailer");
    let batch = Persist {
        io: IoId(1),
        hard_state: None,
        entries: Vec::new(),
        sync: true,
        install: Some(meta.clone()),
        compact: None,
    };
    s.persist(&batch).expect("installs");
    assert_eq!(s.staging(), Ok(None), "the staging is gone");
    assert!(!staging_dir.exists(), "and so is its directory");
    let installed = s.open_snapshot().expect("readable").expect("the installed snapshot");
    assert_eq!(installed.header(), &header);
    assert_eq!(read_all(installed.as_ref(), 64 * 1024), image, "the image, read back");
    drop(installed);
    let file = s.store().snapshot_dir().join(format!("snap-{:020}-{:020}.qsnap", 40, 2));
    let inode = std::fs::metadata(&file).expect("the snapshot file").ino();
    assert_eq!(inode, staged_inode, "the install renamed the staged file: it did not copy the image again");
    drop(s);
    let s = open();
    assert_eq!(s.snapshot().expect("readable"), Some(header), "the installed snapshot, after a reopen");
    assert_eq!(s.staging(), Ok(None));
}

fn open_file_layout(dir: &std::path::Path, conf: &Configuration) -> RocksLog {
    RocksLog::open_with_layout(dir, StoreOptions::with_bootstrap(conf.clone()), quorate_runtime::ImageLayout::File)
        .expect("opens")
}

/// With `ImageLayout::File`, an image is the whole snapshot file as it lies on disk — its
/// length and CRC-32 are the file's (what the Quorate node's peers send and check), computed
/// from the head, the trailer and the data's CRC without hashing the data — and the state
/// machine restores from the data inside it.
#[test]
fn file_images_are_whole_snapshot_files_and_restore_from_their_data() {
    use quorate_runtime::{LogStorage, SnapshotHeader};
    let dir = tempfile::tempdir().expect("a temp dir");
    let id = NodeId::new(1).expect("non-zero");
    let conf = Configuration::with_voters([id]).expect("valid");
    let start = || {
        let mut cfg = Config::new(id);
        cfg.raft.compaction_tail_entries = 0;
        let mut r =
            Replica::new(cfg, open_file_layout(dir.path(), &conf), Sum::default(), Instant::ZERO).expect("starts");
        let now = r.next_deadline().expect("an election timer");
        r.tick(now);
        r.process(now, &mut Vec::new());
        assert_eq!(r.status().role, Role::Leader);
        (r, now)
    };
    let (mut r, now) = start();
    for k in 1..=3u8 {
        r.propose(now, vec![k], None, Box::new(|_| {}));
    }
    r.process(now, &mut Vec::new());
    let at = r.snapshot_now(now).expect("a snapshot");
    let image = r.storage().open_snapshot().expect("readable").expect("a snapshot");
    let h = image.header().clone();
    let path = r.storage().store().snapshot_dir().join(format!("snap-{:020}-{:020}.qsnap", at.0, h.meta.last.term.0));
    let file = std::fs::read(&path).expect("the snapshot file");
    assert_eq!(h, SnapshotHeader::of(h.meta.clone(), &file), "the image is the file, its CRC-32 the file's");
    assert_eq!(read_all(image.as_ref(), 48 * 1024 + 7), file);
    let content = image.content();
    assert!(content.start > 0 && content.end + 16 == file.len() as u64, "{content:?} in {} bytes", file.len());
    let end = usize::try_from(content.end).expect("small");
    assert_eq!(&file[end..end + 8], &(content.end - content.start).to_le_bytes(), "the trailer follows the data");
    drop(image);
    drop(r);
    let (r, _) = start();
    assert_eq!(r.state_machine().expect("inline").total, 6, "restored from the data inside the file");
}

/// Replicas on `ImageLayout::File` send each other whole snapshot files, in acknowledged
/// chunks and as a stream: the follower's installed file is the leader's, byte for byte.
#[test]
fn file_images_transfer_between_replicas_in_chunks_and_as_streams() {
    use quorate_runtime::{LogStorage, TransferFormat};
    for format in [TransferFormat::Acknowledged, TransferFormat::Stream] {
        let ids: Vec<NodeId> = (1..=3).map(|i| NodeId::new(i).expect("non-zero")).collect();
        let conf = Configuration::with_voters(ids.iter().copied()).expect("valid");
        let cfg = |id: NodeId| {
            let mut cfg = Config::new(id);
            cfg.raft.seed = id.get();
            cfg.raft.snapshot_entries_threshold = 5;
            cfg.raft.compaction_tail_entries = 1;
            cfg.snapshot_chunk_bytes = 16 * 1024;
            cfg.snapshot_transfer = format;
            cfg
        };
        let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("a temp dir")).collect();
        let node = |i: usize| {
            Replica::new(cfg(ids[i]), open_file_layout(dirs[i].path(), &conf), Sum::default(), Instant::ZERO)
                .expect("starts")
        };
        let mut trio = Trio { a: node(0), b: None, c: node(2), now: Instant::ZERO, wire: Vec::new(), chunks_to_b: 0 };
        assert!(trio.run_until(1_000, |t| t.a.status().role == Role::Leader || t.c.status().role == Role::Leader));
        for k in 0..20u8 {
            let now = trio.now;
            trio.leader().expect("a leader").propose(now, vec![k], None, Box::new(|_| {}));
            trio.step();
        }
        let leader_has = |t: &Trio<RocksLog>| {
            t.a.state_machine().expect("inline").total == 190 && t.c.state_machine().expect("inline").total == 190
        };
        assert!(trio.run_until(1_000, leader_has));
        assert!(trio.leader().expect("a leader").status().snapshot_index > LogIndex(2), "compacted past node 2");
        trio.b = Some(node(1));
        let installed =
            trio.run_until(3_000, |t| t.b.as_ref().is_some_and(|b| b.state_machine().expect("inline").total == 190));
        let b = trio.b.take().expect("running");
        assert!(installed, "{format:?}: node 2 installed the leader's file: {:?}", b.transfer_stats());
        let stats = b.transfer_stats();
        assert_eq!(stats.installs, 1, "{format:?}");
        assert_eq!(stats.stream_installs, u64::from(format == TransferFormat::Stream), "{format:?}");
        assert!(trio.chunks_to_b > 5, "{format:?}: in many pieces: {}", trio.chunks_to_b);
        let installed = b.storage().snapshot().expect("readable").expect("a snapshot");
        let file_of = |r: &Replica<Sum, RocksLog>| {
            let last = installed.meta.last;
            let name = format!("snap-{:020}-{:020}.qsnap", last.index.0, last.term.0);
            std::fs::read(r.storage().store().snapshot_dir().join(name)).expect("the snapshot file")
        };
        let ours = file_of(&b);
        let leader = trio.leader().expect("a leader");
        assert_eq!(leader.storage().snapshot().expect("readable").as_ref(), Some(&installed), "{format:?}");
        assert!(ours == file_of(leader), "{format:?}: the leader's file, byte for byte");
        drop(b);
        // Restarted, it restores from the installed file, and catches up from the log.
        let b = node(1);
        assert!(b.applied() >= installed.meta.last.index, "{format:?}: restored from the installed file");
        trio.b = Some(b);
        let caught_up =
            trio.run_until(1_000, |t| t.b.as_ref().is_some_and(|b| b.state_machine().expect("inline").total == 190));
        assert!(caught_up, "{format:?}: caught up after the restart");
        assert_eq!(trio.b.as_ref().expect("running").transfer_stats().installs, 0, "{format:?}: no second transfer");
    }
}

/// With `ImageLayout::File`, a complete staging must be a snapshot file of its snapshot:
/// bytes that are not one cannot be opened for the check (the replica refuses the image
/// rather than install it), while a partial staging opens as it is.
#[test]
fn a_complete_file_staging_that_is_not_a_snapshot_file_is_not_opened() {
    use quorate_log::{EntryId, SnapshotMeta, Term};
    use quorate_runtime::{LogStorage, SnapshotHeader};
    let dir = tempfile::tempdir().expect("a temporary directory");
    let conf = Configuration::with_voters([NodeId::new(1).expect("non-zero")]).expect("valid");
    let mut s = open_file_layout(dir.path(), &conf);
    let bytes: Vec<u8> = (0..5_000u32).map(|i| (i % 241) as u8).collect();
    let meta = SnapshotMeta { last: EntryId::new(Term(2), LogIndex(40)), config: Configuration::default() };
    let header = SnapshotHeader::of(meta, &bytes);
    s.begin_staging(&header).expect("begins");
    s.append_staging(0, &bytes[..2_000]).expect("appends");
    assert!(s.open_staging().expect("a partial staging opens").is_some());
    s.append_staging(2_000, &bytes[2_000..]).expect("appends the rest");
    assert!(s.open_staging().is_err(), "not a snapshot file");
}

/// A snapshot file of `meta` around `data`, its trailer saying `data_crc`.
fn snapshot_file(meta: &quorate_log::SnapshotMeta, data: &[u8], data_crc: u32) -> Vec<u8> {
    let mut file = quorate_storage::snapshot_file_head(meta).expect("a head");
    file.extend_from_slice(data);
    file.extend_from_slice(&(data.len() as u64).to_le_bytes());
    file.extend_from_slice(&data_crc.to_le_bytes());
    file.extend_from_slice(b"QEND");
    file
}

/// With `ImageLayout::File`, a complete staging is opened for the check only if its framing
/// gives the image's CRC-32: a file whose trailer lies about its data's CRC (however right the
/// CRC of its bytes) is refused before it is installed — it would not read back — and so is a
/// trailer with a CRC for no data.
#[test]
fn a_file_staging_whose_trailer_lies_about_its_data_is_not_opened() {
    use quorate_log::{EntryId, SnapshotMeta, Term};
    use quorate_runtime::{LogStorage, SnapshotHeader};
    let conf = Configuration::with_voters([NodeId::new(1).expect("non-zero")]).expect("valid");
    let meta = SnapshotMeta { last: EntryId::new(Term(2), LogIndex(40)), config: Configuration::default() };
    let data: Vec<u8> = (0..3_000u32).map(|i| (i % 239) as u8).collect();
    // What is staged, and the length of the data it opens with (`None`: not opened).
    let cases = [
        ("an honest file", snapshot_file(&meta, &data, crc32fast::hash(&data)), Some(data.len())),
        ("a trailer with another CRC", snapshot_file(&meta, &data, crc32fast::hash(&data) ^ 1), None),
        ("a CRC for no data", snapshot_file(&meta, &[], 7), None),
        ("no data", snapshot_file(&meta, &[], 0), Some(0)),
    ];
    for (what, file, opens) in cases {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut s = open_file_layout(dir.path(), &conf);
        // The header a leader would send: the true length and CRC-32 of the bytes.
        let header = SnapshotHeader::of(meta.clone(), &file);
        s.begin_staging(&header).expect("begins");
        s.append_staging(0, &file).expect("appends");
        match s.open_staging() {
            Ok(Some(staged)) => {
                let c = staged.content();
                assert_eq!(Some((c.end - c.start) as usize), opens, "{what}: opened");
            }
            Ok(None) => panic!("{what}: no staging"),
            Err(e) => assert_eq!(opens, None, "{what}: {e}"),
        }
    }
}
