//! Tests of what the store does with damaged files and a full disk: the write-ahead log
//! policy, the durable mark, the free-space floor and RocksDB's own `ENOSPC`.

use crate::testdir::TestDir;
use crate::*;
use quorate_log::{Data, Entry, EntryId, EntryPayload, HardState, LogIndex, LogStorage, NodeId, SnapshotMeta, Term};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index: LogIndex(index),
        term: Term(term),
        payload: EntryPayload::Command(Data::from(format!("cmd-{index}-{}", "x".repeat(40)).as_str())),
    }
}

fn hs(term: u64, vote: u64, commit: u64) -> HardState {
    HardState { term: Term(term), vote: NodeId::new(vote), commit: LogIndex(commit) }
}

fn opts() -> StoreOptions {
    StoreOptions { free_space_floor_bytes: 0, ..StoreOptions::default() }
}

fn open(dir: &Path) -> RocksStore {
    RocksStore::open(dir, opts()).expect("open")
}

/// Ten synced writes, one per term: entry `t` in term `t`, voting for node 1, committing the
/// entry before. The write-ahead log holds them all (nothing is flushed).
fn ten_terms(dir: &Path) {
    let s = open(dir);
    for t in 1..=10 {
        s.write(PersistBatch::append(vec![entry(t, t)]).with_hard_state(hs(t, 1, t - 1))).unwrap();
    }
}

#[test]
fn a_corrupted_wal_record_refuses_to_open_instead_of_rolling_back() {
    // Issue 18, FAST '18: with `PointInTime` recovery a damaged record in the middle of the
    // write-ahead log made RocksDB stop replaying there and drop every later record silently,
    // synced or not, so the store opened with an older term and vote and a shorter log.
    let d = TestDir::new("walflip");
    ten_terms(d.path());
    let report = faults::corrupt_wal_record(d.path()).unwrap().expect("a record to damage");
    match RocksStore::open(d.path(), opts()) {
        Err(StoreError::Corrupt { key, detail }) => {
            assert_eq!(key, "rocksdb");
            // RocksDB's words, where the damage is, what survives before it, what the mark says.
            assert!(detail.contains("checksum mismatch") || detail.contains("Corruption"), "{detail}");
            assert!(detail.contains("replayed up to the damage, the data holds term"), "{detail}");
            assert!(detail.contains("the durable mark records term 10"), "{detail}");
            assert!(detail.contains("member remove"), "{detail}");
        }
        Err(e) => panic!("unexpected error after {report:?}: {e}"),
        Ok(s) => panic!(
            "opened after {report:?} with term {} and last index {}, instead of refusing",
            s.hard_state().term,
            s.last_index()
        ),
    }
}

#[test]
fn a_torn_tail_that_held_a_synced_vote_is_lost_state() {
    // The last record held a synced term and vote; a disk that lost it looks to RocksDB like a
    // crash mid-write. The durable mark (written before the write returned) says otherwise.
    let d = TestDir::new("walteartail");
    ten_terms(d.path());
    faults::tear_wal_tail(d.path(), 1).unwrap().expect("a record to tear");
    match RocksStore::open(d.path(), opts()) {
        Err(StoreError::LostSyncedState(lost)) => {
            let text = lost.to_string();
            assert!(lost.lost.iter().any(|l| l == "term 10 -> 9"), "{text}");
            assert!(lost.lost.iter().any(|l| l.contains("log entries 10..=10")), "{text}");
            assert!(text.contains("durable-mark") && text.contains("member remove"), "{text}");
        }
        other => panic!("expected lost synced state, got {other:?}"),
    }
}

#[test]
fn a_torn_tail_of_unsynced_writes_opens() {
    // Only a write that was never synced is lost: a crash in the middle of a write.
    let d = TestDir::new("walteartailok");
    {
        let s = open(d.path());
        s.write(PersistBatch::append(vec![entry(1, 1), entry(2, 1)]).with_hard_state(hs(1, 1, 0))).unwrap();
        let mut commit_only = PersistBatch::default().with_hard_state(hs(1, 1, 2));
        commit_only.skip_fsync = true;
        s.write(commit_only).unwrap();
    }
    faults::tear_wal_tail(d.path(), 1).unwrap().expect("a record to tear");
    let s = open(d.path());
    assert_eq!(s.hard_state(), hs(1, 1, 0));
    assert_eq!(s.last_index(), LogIndex(2));
}

#[test]
fn a_lost_database_beside_its_mark_is_lost_state() {
    let d = TestDir::new("lostdb");
    ten_terms(d.path());
    std::fs::remove_dir_all(d.path().join("db")).unwrap();
    match RocksStore::open(d.path(), opts()) {
        Err(StoreError::LostSyncedState(lost)) => {
            assert!(lost.lost.iter().any(|l| l.contains("the whole database")), "{lost}");
        }
        other => panic!("expected lost synced state, got {other:?}"),
    }
}

#[test]
fn a_damaged_mark_refuses_to_open_and_a_removed_one_is_taken_again() {
    let d = TestDir::new("markdamaged");
    ten_terms(d.path());
    let path = d.path().join(MARK_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[30] ^= 1;
    bytes[512 + 30] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    assert!(
        matches!(RocksStore::open(d.path(), opts()), Err(StoreError::Corrupt { key, .. }) if key.contains("mark file"))
    );
    // The operator's explicit choice: without a mark the data is taken as it is.
    std::fs::remove_file(&path).unwrap();
    let s = open(d.path());
    assert_eq!(s.hard_state().term, Term(10));
    assert!(path.exists());
}

#[test]
fn truncations_lower_the_mark_before_the_write() {
    let d = TestDir::new("marklower");
    let mut o = opts();
    o.durable_mark_interval = Duration::ZERO;
    {
        let s = RocksStore::open(d.path(), o.clone()).unwrap();
        s.write(PersistBatch::append((1..=10).map(|i| entry(i, 1)).collect()).with_hard_state(hs(1, 1, 2))).unwrap();
        // A new leader's conflicting suffix, whose write fails before it reaches the disk: the
        // mark was lowered first, so the longer log on disk still satisfies it.
        s.danger_inject_write_fault(Some(WriteFault::Eio { after_write: false }));
        assert!(s.write(PersistBatch::append(vec![entry(4, 2)]).with_hard_state(hs(2, 3, 2))).is_err());
    }
    {
        let s = RocksStore::open(d.path(), o.clone()).unwrap();
        assert_eq!(s.last_index(), LogIndex(10));
        // Now the truncation goes through, and the mark follows it up.
        s.write(PersistBatch::append(vec![entry(4, 2)]).with_hard_state(hs(2, 3, 2))).unwrap();
    }
    let s = RocksStore::open(d.path(), o).unwrap();
    assert_eq!(s.last_index(), LogIndex(4));
    assert_eq!(s.term(LogIndex(4)), Ok(Term(2)));
}

#[test]
fn a_mark_older_than_another_open_is_not_compared() {
    // A release without the mark (a rollback) may legitimately truncate the log below it.
    let d = TestDir::new("markstale");
    ten_terms(d.path());
    {
        let cfs = crate::codec::CFS.map(|n| rocksdb::ColumnFamilyDescriptor::new(n, rocksdb::Options::default()));
        let db = rocksdb::DB::open_cf_descriptors(&rocksdb::Options::default(), d.path().join("db"), cfs).unwrap();
        let log = db.cf_handle("log").unwrap();
        db.delete_cf(log, crate::codec::log_key(LogIndex(10))).unwrap();
    }
    let s = open(d.path());
    assert_eq!(s.last_index(), LogIndex(9));
}

#[test]
fn write_ahead_logs_stay_within_their_budget() {
    // Issue 18: the rarely written `meta` family pinned every log file, so the logs grew
    // without bound (RocksDB's default limit is four times all memtables: gigabytes).
    let d = TestDir::new("walbudget");
    let mut o = opts();
    o.write_buffer_bytes = WRITE_BUFFER_BYTES_MIN;
    let s = RocksStore::open(d.path(), o).unwrap();
    let value = vec![7u8; 4096];
    let mut index = 0u64;
    // 24 MiB of entries, with a hard state now and then.
    for round in 0..6144u64 {
        index += 1;
        let e =
            Entry { index: LogIndex(index), term: Term(1), payload: EntryPayload::Command(Data::from(value.clone())) };
        let mut b = PersistBatch::append(vec![e]);
        b.skip_fsync = true;
        if round % 512 == 0 {
            b.hard_state = Some(hs(1, 1, index - 1));
        }
        s.write(b).unwrap();
    }
    let wal_bytes = || -> u64 {
        std::fs::read_dir(d.path().join("db"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    };
    let budget = WRITE_BUFFER_BYTES_MIN * crate::store::WAL_BUDGET_WRITE_BUFFERS;
    // RocksDB flushes once the logs pass the budget and deletes them after the flush (in the
    // background); one memtable's worth may follow.
    let deadline = Instant::now() + Duration::from_secs(20);
    while wal_bytes() > budget + 2 * WRITE_BUFFER_BYTES_MIN {
        assert!(Instant::now() < deadline, "{} bytes of write-ahead logs, budget {budget}", wal_bytes());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn space_needed_follows_the_write_buffer() {
    let o = StoreOptions::default();
    assert_eq!(o.write_buffer_bytes, 16 << 20);
    // log: 4 x 16 MiB; sm: 2 x 16 MiB; meta and snap: 2 x 4 MiB each.
    assert_eq!(o.memtable_budget_bytes(), 112 << 20);
    // 12 level-0 files and a level 1 of 4 memtables.
    assert_eq!(o.compaction_budget_bytes(), 256 << 20);
    assert_eq!(o.space_needed_bytes(), 368 << 20);
    assert_eq!(o.free_space_floor_bytes, o.space_needed_bytes());
    let small = StoreOptions { write_buffer_bytes: 1, ..StoreOptions::default() };
    assert_eq!(small.space_needed_bytes(), 23 * WRITE_BUFFER_BYTES_MIN);
}

#[test]
fn below_the_floor_only_writes_that_grow_the_store_are_refused() {
    let d = TestDir::new("floorkinds");
    let s = open(d.path());
    s.write(PersistBatch::append((1..=10).map(|i| entry(i, 1)).collect()).with_hard_state(hs(1, 1, 8))).unwrap();
    s.set_free_space_floor(u64::MAX);
    // Appends are refused, without poisoning.
    let err = s.write(PersistBatch::append(vec![entry(11, 1)])).unwrap_err();
    assert!(matches!(err, StoreError::BelowFreeSpaceFloor { .. }) && err.is_space() && !err.is_fatal(), "{err}");
    // A vote, a commit, a compaction and a truncation go through.
    s.write(PersistBatch::default().with_hard_state(hs(2, 3, 8))).unwrap();
    s.compact_to(SnapshotMeta { last: EntryId::new(Term(1), LogIndex(5)), config: Default::default() }).unwrap();
    s.write(PersistBatch { truncate_from: Some(LogIndex(10)), ..PersistBatch::default() }).unwrap();
    // State-machine applies of entries already in the log too; the data of an install not.
    s.apply(LogIndex(3), [SmOp::Put { key: b"k".to_vec(), value: b"v".to_vec() }]).unwrap();
    s.begin_sm_reinstall(LogIndex(5)).unwrap();
    assert!(matches!(
        s.write_sm_install_batch(vec![(b"a".to_vec(), b"b".to_vec())]),
        Err(StoreError::BelowFreeSpaceFloor { .. })
    ));
    s.finish_sm_install(LogIndex(5)).unwrap();
    assert_eq!(s.applied_index(), LogIndex(5));
    assert_eq!(s.last_index(), LogIndex(9));
    assert_eq!(s.hard_state(), hs(2, 3, 8));
    assert!(s.poisoned().is_none());
}

#[test]
fn the_group_committer_holds_a_batch_refused_for_space_until_space_returns() {
    let d = TestDir::new("groupspace");
    let s = Arc::new(open(d.path()));
    let g = GroupCommitter::new(
        Arc::clone(&s),
        GroupOptions { space_retry_interval: Some(Duration::from_millis(5)), ..GroupOptions::default() },
    )
    .unwrap();
    g.submit(PersistBatch::append(vec![entry(1, 1)])).unwrap().wait().unwrap();
    s.set_free_space_floor(u64::MAX);
    let first = g.submit(PersistBatch::append(vec![entry(2, 1)])).unwrap();
    let second = g.submit(PersistBatch::default().with_hard_state(hs(1, 1, 2))).unwrap();
    // The writer keeps trying (and the store keeps refusing) while neither completes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.space_refusals() < 5 {
        assert!(Instant::now() < deadline, "the writer did not retry");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(first.try_wait().is_none() && second.try_wait().is_none());
    assert_eq!(s.last_index(), LogIndex(1));
    s.set_free_space_floor(0);
    first.wait().unwrap();
    second.wait().unwrap();
    assert_eq!(s.last_index(), LogIndex(2));
    assert_eq!(s.hard_state(), hs(1, 1, 2));
    // Dropping the committer while a batch waits for space ends the wait.
    s.set_free_space_floor(u64::MAX);
    let waiting = g.submit(PersistBatch::append(vec![entry(3, 1)])).unwrap();
    drop(g);
    assert_eq!(waiting.wait(), Err(StoreError::Stopped));
}

#[test]
fn an_injected_enospc_is_retried_not_fatal() {
    let d = TestDir::new("enospcinjected");
    let s = open(d.path());
    s.danger_inject_write_fault(Some(WriteFault::NoSpace));
    let err = s.write(PersistBatch::append(vec![entry(1, 1)])).unwrap_err();
    assert!(matches!(&err, StoreError::NoSpace(t) if t.contains("No space left on device")) && err.is_space(), "{err}");
    assert!(s.poisoned().is_none() && s.out_of_space().is_some());
    s.danger_inject_write_fault(None);
    s.write(PersistBatch::append(vec![entry(1, 1)])).unwrap();
    assert!(s.out_of_space().is_none());
    // EIO after the data reached the disk: poisoned; the restart finds the data.
    s.danger_inject_write_fault(Some(WriteFault::Eio { after_write: true }));
    assert!(s.write(PersistBatch::append(vec![entry(2, 1)])).unwrap_err().is_fatal());
    assert!(matches!(s.write(PersistBatch::append(vec![entry(2, 1)])), Err(StoreError::Poisoned { .. })));
    drop(s);
    let s = open(d.path());
    assert_eq!(s.last_index(), LogIndex(2));
}

#[test]
fn a_damaged_table_block_of_the_state_machine_names_the_record() {
    let d = TestDir::new("sstflip");
    let s = open(d.path());
    s.write(PersistBatch::append(vec![entry(1, 1)]).with_hard_state(hs(1, 1, 1))).unwrap();
    let ops: Vec<SmOp> =
        (0..200u32).map(|i| SmOp::Put { key: format!("key{i:04}").into_bytes(), value: vec![1; 64] }).collect();
    s.apply(LogIndex(1), ops).unwrap();
    s.flush().unwrap();
    let files = s.table_files("sm").unwrap();
    let (path, _) = files.last().expect("a table file of the state machine");
    drop(s);
    faults::corrupt_table_file(path).unwrap();
    let s = open(d.path());
    let err = s.sm_get(b"key0000").unwrap_err();
    assert!(matches!(&err, StoreError::Corrupt { key, .. } if key == "sm/key0000"), "{err}");
    assert!(s.sm_scan(b"", 10).is_err());
    // Reinstalling drops the damaged file: the state machine reads again (empty here).
    s.begin_sm_reinstall(LogIndex(1)).unwrap();
    assert_eq!(s.sm_get(b"key0000").unwrap(), None);
    assert!(s.table_files("sm").unwrap().iter().all(|(p, _)| p != path));
}

#[test]
fn a_compaction_that_meets_a_damaged_state_machine_file_is_recorded_for_the_next_open() {
    let d = TestDir::new("smcompaction");
    let s = open(d.path());
    s.write(PersistBatch::append(vec![entry(1, 1), entry(2, 1)]).with_hard_state(hs(1, 1, 2))).unwrap();
    for round in 1..=2u64 {
        let ops: Vec<SmOp> = (0..100u32)
            .map(|i| SmOp::Put { key: format!("key{i:04}").into_bytes(), value: vec![round as u8; 64] })
            .collect();
        s.apply(LogIndex(round), ops).unwrap();
        s.flush().unwrap();
    }
    let (path, _) = s.table_files("sm").unwrap()[0].clone();
    faults::corrupt_table_file(&path).unwrap();
    // A compaction reads the damaged block: RocksDB stops for good (paranoid checks).
    s.db.compact_range_cf(&s.cf("sm").unwrap(), None::<&[u8]>, None::<&[u8]>);
    let err = s.write(PersistBatch::append(vec![entry(3, 1)])).unwrap_err();
    assert!(err.is_fatal(), "{err}");
    let evidence = s.sm_damaged().expect("the damage is recorded");
    assert!(evidence.contains(".sst"), "{evidence}");
    drop(s);
    // The next open knows, with the state machine's compactions off; a reinstall clears it.
    let s = open(d.path());
    assert_eq!(s.sm_damaged().as_deref(), Some(evidence.as_str()));
    s.begin_sm_reinstall(LogIndex(1)).unwrap();
    assert!(s.sm_damaged().is_none());
    assert!(!d.path().join(SM_DAMAGED_FILE).exists());
    s.write(PersistBatch::append(vec![entry(3, 1)])).unwrap();
    drop(s);
    assert!(open(d.path()).sm_damaged().is_none());
}

#[test]
fn snapshot_files_go_only_after_a_durable_compaction_past_them() {
    use std::io::Write;
    let d = TestDir::new("snapfilesgo");
    let s = open(d.path());
    s.write(PersistBatch::append((1..=30).map(|i| entry(i, 1)).collect()).with_hard_state(hs(1, 1, 30))).unwrap();
    let take = |at: u64| {
        let mut w = s
            .snapshot_writer(SnapshotMeta { last: EntryId::new(Term(1), LogIndex(at)), config: Default::default() })
            .unwrap();
        w.write_all(b"data").unwrap();
        w.finish().unwrap().path
    };
    let (first, second) = (take(10), take(20));
    let compact = |at: u64| SnapshotMeta { last: EntryId::new(Term(1), LogIndex(at)), config: Default::default() };
    // A compaction write that fails deletes nothing.
    s.danger_inject_write_fault(Some(WriteFault::NoSpace));
    assert!(s.compact_to(compact(15)).is_err());
    s.danger_inject_write_fault(None);
    assert!(first.exists() && second.exists());
    // Once it is durable, the files below the new floor go; the one the log continues from stays.
    s.compact_to(compact(15)).unwrap();
    assert!(!first.exists() && second.exists());
    assert_eq!(s.usable_snapshot(LogIndex(30)).unwrap().map(|(m, _)| m.last.index), Some(LogIndex(20)));
    assert_eq!(s.usable_snapshot(LogIndex(19)).unwrap(), None);
}

fn accepting() -> StoreOptions {
    StoreOptions { accept_lost_state: true, ..opts() }
}

#[test]
fn an_accepted_loss_is_kept_as_evidence_until_recovered() {
    // Issue 18: a node that rejoins protocol-aware opens the store that lost its synced tail;
    // what the mark recorded is its recovery input, kept durably across restarts until the
    // node has caught up.
    let d = TestDir::new("lostaccepted");
    ten_terms(d.path());
    faults::tear_wal_tail(d.path(), 1).unwrap().expect("a record to tear");
    let evidence = d.path().join(LOST_STATE_FILE);
    {
        let s = RocksStore::open(d.path(), accepting()).expect("opens with the loss");
        assert_eq!((s.hard_state().term, s.last_index()), (Term(9), LogIndex(9)));
        let r = s.lost_state().expect("the loss is recorded");
        assert_eq!(
            (r.term, r.vote, r.last, r.commit),
            (Term(10), NodeId::new(1), EntryId::new(Term(10), LogIndex(10)), LogIndex(9))
        );
        assert!(r.lost.iter().any(|l| l == "term 10 -> 9"), "{r:?}");
        assert!(evidence.exists());
    }
    // A restart (the mark now matches the data): still recovering, from the same record.
    {
        let s = RocksStore::open(d.path(), accepting()).unwrap();
        assert_eq!(s.lost_state().map(|r| r.term), Some(Term(10)));
    }
    // Without the option, an unfinished recovery refuses to open, like a fresh loss.
    match RocksStore::open(d.path(), opts()) {
        Err(StoreError::LostSyncedState(lost)) => assert!(lost.to_string().contains("not finished"), "{lost}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    {
        let s = RocksStore::open(d.path(), accepting()).unwrap();
        s.recovered().unwrap();
        assert_eq!(s.lost_state(), None);
        assert!(!evidence.exists());
    }
    let s = open(d.path());
    assert_eq!(s.lost_state(), None);
}

#[test]
fn a_refused_open_refuses_again() {
    // Every open starts a new MANIFEST, and a mark of an older MANIFEST is stale (another
    // program opened the database). A refused open (or a crash between the database's open
    // and the comparison) must not make the next open take the mark for stale.
    let d = TestDir::new("lostagain");
    ten_terms(d.path());
    faults::tear_wal_tail(d.path(), 1).unwrap().expect("a record to tear");
    for attempt in 1..=3 {
        match RocksStore::open(d.path(), opts()) {
            Err(StoreError::LostSyncedState(lost)) => assert!(lost.lost.iter().any(|l| l == "term 10 -> 9"), "{lost}"),
            Err(e) => panic!("open {attempt}: unexpected error {e}"),
            Ok(s) => panic!("open {attempt} took the lost state: term {}", s.hard_state().term),
        }
    }
}

#[test]
fn a_crash_before_the_mark_is_lowered_finds_the_loss_again_and_keeps_the_record() {
    let d = TestDir::new("lostcrash");
    ten_terms(d.path());
    faults::tear_wal_tail(d.path(), 1).unwrap().expect("a record to tear");
    // The mark as an open leaves it before the loss is recorded (a refused open does the same).
    assert!(RocksStore::open(d.path(), opts()).is_err());
    let mark = d.path().join(MARK_FILE);
    let high = std::fs::read(&mark).unwrap();
    drop(RocksStore::open(d.path(), accepting()).unwrap());
    // The evidence was written and the process died before the mark was lowered.
    std::fs::write(&mark, &high).unwrap();
    let s = RocksStore::open(d.path(), accepting()).unwrap();
    let r = s.lost_state().expect("still recovering");
    assert_eq!((r.term, r.last.index), (Term(10), LogIndex(10)));
    assert_eq!(r.lost.iter().filter(|l| *l == "term 10 -> 9").count(), 2, "both detections: {r:?}");
}

#[test]
fn every_synced_append_is_in_the_mark_before_the_write_returns() {
    // Issue 18, review finding R2: the mark was raised for a write that changed neither the
    // term nor the vote at most every `durable_mark_interval` (100 ms), while the node
    // acknowledges a write as soon as it returns. A disk that then lost the write-ahead log's
    // tail lost acknowledged entries silently: the lagging mark was still satisfied, the store
    // opened with a shorter log, and the node could help elect a leader without an entry
    // committed with its own acknowledgement. Default options: the interval is not zero.
    let d = TestDir::new("markappend");
    assert!(opts().durable_mark_interval > Duration::ZERO);
    {
        let s = open(d.path());
        // The first write changes the term and the vote: the mark is raised.
        s.write(PersistBatch::append(vec![entry(1, 1), entry(2, 1)]).with_hard_state(hs(1, 1, 0))).unwrap();
        // Well within the interval: log-only synced appends, each acknowledged when it returns.
        s.write(PersistBatch::append(vec![entry(3, 1)])).unwrap();
        s.write(PersistBatch::append(vec![entry(4, 1)])).unwrap();
        let (_, mark) = durable::read(&d.path().join(MARK_FILE)).unwrap().expect("a mark");
        assert_eq!(mark.last, EntryId::new(Term(1), LogIndex(4)), "the mark right after the write returned");
    }
    // The disk loses the last write's record (4@1, acknowledged).
    faults::tear_wal_tail(d.path(), 1).unwrap().expect("a record to tear");
    match RocksStore::open(d.path(), opts()) {
        Err(StoreError::LostSyncedState(lost)) => {
            assert!(lost.lost.iter().any(|l| l.contains("log entries 4..=4")), "{lost}");
        }
        other => panic!("expected lost synced state, got {:?}", other.map(|s| s.last_index())),
    }
}

/// Chaos soak finding (seed 9, a fresh node installing its first snapshot): the node's sweep read
/// the state machine (the cluster version) on another thread while the install had dropped the
/// `sm` column family and not yet created it again; the handle lookup found nothing and
/// panicked ("every column family is opened by RocksStore::open"), stopping the node. A read in
/// that window now waits for the column family and sees the cleared state machine.
#[test]
fn a_state_machine_read_while_an_install_recreates_the_column_family_waits_and_sees_it_cleared() {
    let d = TestDir::new("swapread");
    let s = Arc::new(open(d.path()));
    s.write(PersistBatch::append((1..=5).map(|i| entry(i, 1)).collect()).with_hard_state(hs(1, 1, 5))).unwrap();
    s.apply(LogIndex(3), [SmOp::Put { key: b"k".to_vec(), value: b"v".to_vec() }]).unwrap();
    assert_eq!(s.sm_get(b"k").unwrap(), Some(b"v".to_vec()));

    type Reader = std::thread::JoinHandle<Result<Option<Vec<u8>>, StoreError>>;
    let reader: Arc<std::sync::Mutex<Option<Reader>>> = Arc::default();
    let (hook_store, slot) = (Arc::clone(&s), Arc::clone(&reader));
    *s.test_hooks.between_drop_and_create.lock().unwrap() = Some(Box::new(move || {
        // Inside the window: a read from another thread, like the node's sweep.
        let r = Arc::clone(&hook_store);
        let h = std::thread::spawn(move || r.sm_get(b"k"));
        // Leave the window only once the reader has finished or is waiting for the family.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !h.is_finished() && hook_store.test_hooks.cf_waits.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "the reader neither finished nor waited within 60 s");
            std::thread::yield_now();
        }
        *slot.lock().unwrap() = Some(h);
    }));
    s.begin_sm_install(LogIndex(5)).unwrap();
    let h = reader.lock().unwrap().take().expect("the hook ran between the drop and the create");
    let got = h.join().expect("the reader must not panic");
    assert_eq!(got.unwrap(), None, "the install cleared the state machine before the window");
    assert_eq!(s.test_hooks.cf_waits.load(std::sync::atomic::Ordering::SeqCst), 1);
    // The install goes on as before.
    s.write_sm_install_batch(vec![(b"k".to_vec(), b"w".to_vec())]).unwrap();
    s.finish_sm_install(LogIndex(5)).unwrap();
    assert_eq!(s.sm_get(b"k").unwrap(), Some(b"w".to_vec()));
}

/// The text of the database's newest OPTIONS file (RocksDB writes one at every open and
/// options change).
fn latest_options(s: &RocksStore) -> String {
    let db_dir = s.dir().join("db");
    let latest = std::fs::read_dir(&db_dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with("OPTIONS-"))
        .max_by_key(|n| n["OPTIONS-".len()..].parse::<u64>().unwrap_or(0))
        .expect("an OPTIONS file");
    std::fs::read_to_string(db_dir.join(latest)).unwrap()
}

/// RocksDB writes its table files (flushes, compactions) to the disk as it goes, 1 MiB at a
/// time, instead of leaving a whole file in the page cache until its final sync — which the
/// log's fsyncs on the same disk would then wait behind (issue 20).
#[test]
fn table_files_reach_the_disk_as_they_are_written() {
    let d = TestDir::new("bytes-per-sync");
    let s = RocksStore::open(d.path(), opts()).expect("open");
    let text = latest_options(&s);
    let db = text.split("[DBOptions]").nth(1).and_then(|t| t.split("\n[").next()).expect("a DBOptions section");
    assert!(db.lines().any(|l| l.trim() == "bytes_per_sync=1048576"), "{db}");
}

/// Every column family reads through the one block cache of the configured size, and only
/// the `sm` family has bloom filters — also after an install recreates it (RocksDB records
/// each family's options in the database's OPTIONS file, which is what is read here).
#[test]
fn the_families_share_one_block_cache_and_the_state_machine_has_bloom_filters() {
    let d = TestDir::new("tables");
    let options = StoreOptions { block_cache_bytes: 24 << 20, ..opts() };
    let s = RocksStore::open(d.path(), options).expect("open");
    for name in crate::codec::CFS {
        let cf = s.db.cf_handle(name).unwrap();
        let capacity = s.db.property_int_value_cf(&cf, "rocksdb.block-cache-capacity").unwrap();
        assert_eq!(capacity, Some(24 << 20), "{name}");
    }
    let families = |s: &RocksStore| -> BTreeMap<String, String> {
        let text = latest_options(s);
        // `[TableOptions/BlockBasedTable "NAME"]` sections: NAME -> its filter policy line.
        let mut out = BTreeMap::new();
        let mut current = None;
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("[TableOptions/BlockBasedTable \"") {
                current = rest.strip_suffix("\"]").map(str::to_string);
            } else if line.starts_with('[') {
                current = None;
            } else if let (Some(name), Some(policy)) = (&current, line.strip_prefix("filter_policy=")) {
                out.insert(name.clone(), policy.to_string());
            }
        }
        out
    };
    let check = |f: &BTreeMap<String, String>| {
        for name in crate::codec::CFS {
            let policy = f.get(name).map(String::as_str).unwrap_or("nullptr");
            assert_eq!(policy.contains("bloomfilter"), name == crate::codec::CF_SM, "{name}: {policy} in {f:?}");
        }
    };
    check(&families(&s));
    s.begin_sm_install(LogIndex(1)).unwrap();
    check(&families(&s));
}
