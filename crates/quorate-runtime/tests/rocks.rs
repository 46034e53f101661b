//! [`RocksLog`]: a replica on RocksDB survives a restart with its snapshot, its session table
//! and the log after the snapshot; a retried session command is still answered from the cache.

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
    fn snapshot(&self) -> Vec<u8> {
        self.total.to_le_bytes().to_vec()
    }
    fn restore(&mut self, applied: LogIndex, s: &[u8]) -> Result<(), RestoreError> {
        let b: [u8; 8] = s.try_into().map_err(|_| RestoreError("8 bytes".into()))?;
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
    let mut r = Replica::new(Config::new(id), store, Sum::default(), Instant::ZERO).expect("starts");
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
    assert_eq!(r.state_machine().total, 7, "snapshot restored and the log after it applied again");
    assert!(r.status().snapshot_index <= at);
    r.propose(now, vec![2], Some((client, 2)), sink(&out));
    r.process(now, &mut Vec::new());
    assert_eq!(out.lock().unwrap().last(), Some(&Ok(7)), "the retry is answered from the cache");
    assert_eq!(r.state_machine().total, 7);
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
    let data = dir.path().join("runtime-staging").join("data");
    let mut torn = std::fs::read(&data).expect("staged bytes");
    torn.extend_from_slice(&[0xee; 123]);
    std::fs::write(&data, torn).expect("writes");
    let mut s = open();
    assert_eq!(s.staging(), Ok(Some((header.clone(), 4_000))), "the durable length, after a reopen");
    s.append_staging(4_000, &image[4_000..]).expect("appends the rest");
    let whole = s.finish_staging().expect("finishes");
    assert_eq!(&whole[..], &image[..], "the image, without the torn bytes");
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
