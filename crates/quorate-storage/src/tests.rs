//! Tests that need the crate's internals: corruption injected through raw RocksDB access,
//! format versions, poisoning, state-machine writes, snapshots and group commit.

use crate::codec::{self, CFS, Cf, KEY_FORMAT, KEY_HARD, cfg_key, log_key};
use crate::testdir::TestDir;
use crate::*;
use quorate_log::{
    Configuration, Data, Entry, EntryId, EntryPayload, HardState, LogIndex, LogStorage, NodeId, SnapshotMeta,
    StorageError, Term,
};
use rocksdb::{ColumnFamilyDescriptor, DB, Options};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index: LogIndex(index),
        term: Term(term),
        payload: EntryPayload::Command(Data::from(format!("cmd-{index}").as_str())),
    }
}

fn entries(lo: u64, hi: u64, term: u64) -> Vec<Entry> {
    (lo..=hi).map(|i| entry(i, term)).collect()
}

fn hs(term: u64, commit: u64) -> HardState {
    HardState { term: Term(term), vote: NodeId::new(1), commit: LogIndex(commit) }
}

fn opts() -> StoreOptions {
    StoreOptions { free_space_floor_bytes: 0, ..StoreOptions::default() }
}

fn open(dir: &Path) -> RocksStore {
    RocksStore::open(dir, opts()).expect("open")
}

fn raw(dir: &Path) -> DB {
    let cfs = CFS.map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
    DB::open_cf_descriptors(&Options::default(), dir.join("db"), cfs).expect("raw open")
}

/// Applies `f` to the stored bytes of `key` in `cf` with the store closed.
fn tamper(dir: &Path, cf: Cf, key: &[u8], f: impl FnOnce(&mut Vec<u8>)) {
    let db = raw(dir);
    let h = db.cf_handle(cf.name()).unwrap();
    let mut v = db.get_cf(h, key).unwrap().expect("record present");
    f(&mut v);
    db.put_cf(h, key, v).unwrap();
}

/// Applies `f` to the stored bytes of `key` in `cf` through the open store's database handle.
fn tamper_live(s: &RocksStore, cf: Cf, key: &[u8], f: impl FnOnce(&mut Vec<u8>)) {
    let h = s.db.cf_handle(cf.name()).unwrap();
    let mut v = s.db.get_cf(&h, key).unwrap().expect("record present");
    f(&mut v);
    s.db.put_cf(&h, key, v).unwrap();
}

fn with_ten_entries(dir: &Path) -> RocksStore {
    let s = open(dir);
    s.write(PersistBatch::append(entries(1, 10, 1)).with_hard_state(hs(1, 4))).unwrap();
    s
}

fn assert_corrupt_storage(r: Result<impl std::fmt::Debug, StorageError>, want: &str) {
    match r {
        Err(StorageError::Corrupt { key, .. }) if key == want => {}
        other => panic!("expected corruption of {want}, got {other:?}"),
    }
}

fn assert_corrupt(r: Result<impl std::fmt::Debug, StoreError>, want: &str) {
    match r {
        Err(StoreError::Corrupt { key, .. }) if key == want => {}
        other => panic!("expected corruption of {want}, got {other:?}"),
    }
}

#[test]
fn flipped_entry_byte_is_corrupt_naming_the_key() {
    for offset in [0usize, 2, 5, 9, usize::MAX] {
        let d = TestDir::new("flip");
        let s = with_ten_entries(d.path());
        tamper_live(&s, Cf::Log, &log_key(LogIndex(7)), |v| {
            let at = offset.min(v.len() - 1);
            v[at] ^= 0x10;
        });
        assert_corrupt_storage(s.entries(LogIndex(5), LogIndex(9), u64::MAX), "log/7");
        // Entries before the damage still read.
        assert_eq!(s.entries(LogIndex(5), LogIndex(7), u64::MAX).unwrap().len(), 2);
        assert_corrupt(s.verify(), "log/7");
        drop(s);
        // Opening checks the tail of the log and refuses too.
        assert_corrupt(RocksStore::open(d.path(), opts()), "log/7");
    }
}

#[test]
fn flipped_term_of_uncached_entry_is_corrupt() {
    let d = TestDir::new("flipterm");
    let s = with_ten_entries(d.path());
    tamper_live(&s, Cf::Log, &log_key(LogIndex(3)), |v| v[4] ^= 1);
    // Drop the cache so the term is read from disk.
    s.tail.write().unwrap().runs.clear();
    assert_corrupt_storage(s.term(LogIndex(3)), "log/3");
    assert_eq!(s.term(LogIndex(2)), Ok(Term(1)));
}

#[test]
fn corrupt_tail_entry_fails_open() {
    let d = TestDir::new("flipopen");
    drop(with_ten_entries(d.path()));
    tamper(d.path(), Cf::Log, &log_key(LogIndex(10)), |v| {
        let n = v.len();
        v[n - 1] ^= 0xff;
    });
    let err = RocksStore::open(d.path(), opts()).unwrap_err();
    assert!(matches!(&err, StoreError::Corrupt { key, .. } if key == "log/10"), "{err}");
}

#[test]
fn corrupt_hard_state_fails_open() {
    let d = TestDir::new("fliphard");
    drop(with_ten_entries(d.path()));
    tamper(d.path(), Cf::Meta, KEY_HARD, |v| v.truncate(2));
    let err = RocksStore::open(d.path(), opts()).unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt { key, detail } if key == "meta/hard" && detail.contains("shorter")),
        "{err}"
    );
}

#[test]
fn swapped_records_are_detected() {
    // Intact records under the wrong key: the key is part of the checksum.
    let d = TestDir::new("swap");
    let s = with_ten_entries(d.path());
    let h = s.db.cf_handle("log").unwrap();
    let v2 = s.db.get_cf(&h, log_key(LogIndex(2))).unwrap().unwrap();
    s.db.put_cf(&h, log_key(LogIndex(3)), v2).unwrap();
    assert_corrupt_storage(s.entries(LogIndex(1), LogIndex(5), u64::MAX), "log/3");
}

#[test]
fn a_gap_is_corrupt_naming_the_missing_key() {
    let d = TestDir::new("gap");
    let s = with_ten_entries(d.path());
    s.db.delete_cf(&s.db.cf_handle("log").unwrap(), log_key(LogIndex(6))).unwrap();
    assert_corrupt_storage(s.entries(LogIndex(2), LogIndex(9), u64::MAX), "log/6");
    assert_corrupt(s.verify(), "log/6");
    s.tail.write().unwrap().runs.clear();
    assert_corrupt_storage(s.term(LogIndex(6)), "log/6");
    drop(s);
    assert_corrupt(RocksStore::open(d.path(), opts()), "log/6");
}

#[test]
fn corrupt_config_mirror_and_sm_values_are_detected() {
    let d = TestDir::new("cfgsm");
    {
        let s = open(d.path());
        let c = Configuration::with_voters([NodeId::new(1).unwrap()]).unwrap();
        s.write(
            PersistBatch::append(vec![Entry { index: LogIndex(1), term: Term(1), payload: EntryPayload::Config(c) }])
                .with_hard_state(hs(1, 1)),
        )
        .unwrap();
        s.apply(LogIndex(1), [SmOp::Put { key: b"k1".to_vec(), value: b"v1".to_vec() }]).unwrap();
    }
    tamper(d.path(), Cf::Sm, &codec::sm_key(b"k1"), |v| v[4] ^= 1);
    let s = open(d.path());
    let err = s.sm_get(b"k1").unwrap_err();
    assert!(matches!(&err, StoreError::Corrupt { key, .. } if key == "sm/k1"), "{err}");
    assert!(s.sm_scan(b"", 10).is_err());
    drop(s);
    tamper(d.path(), Cf::Meta, &cfg_key(LogIndex(1)), |v| v[0] ^= 1);
    let err = RocksStore::open(d.path(), opts()).unwrap_err();
    assert!(matches!(&err, StoreError::Corrupt { key, .. } if key == "meta/cfg/1"), "{err}");
}

fn stamp_format(dir: &Path, version: u32) {
    let db = raw(dir);
    let h = db.cf_handle("meta").unwrap();
    db.put_cf(h, KEY_FORMAT, codec::encode(Cf::Meta, KEY_FORMAT, &version).unwrap()).unwrap();
}

#[test]
fn newer_format_is_refused_naming_both_versions() {
    let d = TestDir::new("fmtnew");
    drop(with_ten_entries(d.path()));
    stamp_format(d.path(), crate::FORMAT_VERSION_FINALIZED + 1);
    let err = RocksStore::open(d.path(), opts()).unwrap_err();
    assert_eq!(err, StoreError::FormatTooNew { found: 3, supported: 2 });
    let msg = err.to_string();
    assert!(msg.contains("version 3") && msg.contains("version 2"), "{msg}");
}

#[test]
fn the_finalized_stamp_is_raised_once_and_reopens() {
    let d = TestDir::new("fmtfinal");
    let store = with_ten_entries(d.path());
    assert_eq!(store.format_version().unwrap(), FORMAT_VERSION);
    store.stamp_format(crate::FORMAT_VERSION_FINALIZED).unwrap();
    store.stamp_format(FORMAT_VERSION).unwrap(); // never lowered
    assert!(store.stamp_format(crate::FORMAT_VERSION_FINALIZED + 1).is_err());
    drop(store);
    let store = RocksStore::open(d.path(), opts()).unwrap();
    assert_eq!(store.format_version().unwrap(), crate::FORMAT_VERSION_FINALIZED);
    assert_eq!(store.last_index(), LogIndex(10));
}

#[test]
fn unknown_older_format_is_refused() {
    let d = TestDir::new("fmtold");
    drop(with_ten_entries(d.path()));
    stamp_format(d.path(), 0);
    let err = RocksStore::open(d.path(), opts()).unwrap_err();
    assert_eq!(err, StoreError::FormatUnsupported { found: 0, supported: 1 });
}

#[test]
fn missing_format_with_data_is_refused() {
    let d = TestDir::new("fmtmissing");
    drop(with_ten_entries(d.path()));
    {
        let db = raw(d.path());
        let h = db.cf_handle("meta").unwrap();
        db.delete_cf(h, KEY_FORMAT).unwrap();
    }
    let err = RocksStore::open(d.path(), opts()).unwrap_err();
    assert!(matches!(&err, StoreError::Corrupt { key, .. } if key == "meta/format"), "{err}");
}

#[test]
fn a_failed_write_poisons_the_store() {
    let d = TestDir::new("poison");
    let s = open(d.path());
    s.write(PersistBatch::append(entries(1, 3, 1))).unwrap();
    s.danger_inject_write_fault(Some(WriteFault::Eio { after_write: false }));
    let err = s.write(PersistBatch::append(entries(4, 4, 1))).unwrap_err();
    s.danger_inject_write_fault(None);
    assert!(matches!(err, StoreError::Io(_)), "{err}");
    assert!(err.is_fatal());
    // Nothing changed in memory, and every later write is refused.
    assert_eq!(s.last_index(), LogIndex(3));
    for _ in 0..3 {
        let err = s.write(PersistBatch::append(entries(4, 4, 1))).unwrap_err();
        assert!(matches!(err, StoreError::Poisoned { .. }), "{err}");
    }
    let err = s.apply(LogIndex(1), []).unwrap_err();
    assert!(matches!(err, StoreError::Poisoned { .. }), "{err}");
    assert!(s.poisoned().is_some());
    // Reads still work; a restart recovers what was durable.
    assert_eq!(s.entries(LogIndex(1), LogIndex(4), u64::MAX).unwrap().len(), 3);
    drop(s);
    let s = open(d.path());
    assert_eq!(s.last_index(), LogIndex(3));
    s.write(PersistBatch::append(entries(4, 4, 1))).unwrap();
}

#[test]
fn free_space_floor_refuses_writes_without_poisoning() {
    let d = TestDir::new("floor");
    let s = open(d.path());
    s.set_free_space_floor(u64::MAX);
    let err = s.write(PersistBatch::append(entries(1, 1, 1))).unwrap_err();
    assert!(matches!(err, StoreError::BelowFreeSpaceFloor { floor: u64::MAX, free } if free > 0), "{err}");
    assert!(!err.is_fatal());
    assert!(s.free_space_ok().is_err());
    assert_eq!(s.last_index(), LogIndex(0));
    s.set_free_space_floor(1);
    s.free_space_ok().unwrap();
    s.write(PersistBatch::append(entries(1, 1, 1))).unwrap();
    assert_eq!(s.last_index(), LogIndex(1));
    assert!(s.poisoned().is_none());
}

#[test]
fn a_view_that_does_not_fill_the_cache_reads_everything_and_leaves_the_cache_as_it_was() {
    let d = TestDir::new("view-uncached");
    let s = open(d.path());
    s.write(PersistBatch::append(entries(1, 5, 1)).with_hard_state(hs(1, 5))).unwrap();
    // 8 MiB of values in table files (not memtables), so that reads load blocks.
    // Values that do not compress (xorshift bytes), so that blocks keep their size.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    let ops: Vec<SmOp> =
        (0..2048u32).map(|i| SmOp::Put { key: format!("k{i:05}").into_bytes(), value: noise(4096) }).collect();
    s.apply(LogIndex(1), ops).unwrap();
    s.flush().unwrap();
    let scan_all = |view: &SmView<'_>| -> usize {
        let (mut from, mut n) = (Vec::new(), 0);
        loop {
            let page = view.sm_scan(&from, 256).unwrap();
            let Some((last, _)) = page.last() else { return n };
            n += page.len();
            from = last.clone();
            from.push(0);
        }
    };
    let before = s.block_cache_usage_bytes();
    assert_eq!(scan_all(&s.sm_view().unwrap().without_filling_the_cache()), 2048);
    let uncached = s.block_cache_usage_bytes();
    assert!(uncached < before + (1 << 20), "a whole scan without filling grew the cache {before} -> {uncached}");
    // The same scan through an ordinary view keeps its blocks (the check above can fail).
    assert_eq!(scan_all(&s.sm_view().unwrap()), 2048);
    let cached = s.block_cache_usage_bytes();
    assert!(cached > uncached + (4 << 20), "an ordinary scan kept {uncached} -> {cached} bytes");
}

#[test]
fn a_view_keeps_its_applied_point_while_applying_goes_on() {
    let d = TestDir::new("view");
    let s = open(d.path());
    s.write(PersistBatch::append(entries(1, 5, 1)).with_hard_state(hs(1, 5))).unwrap();
    s.apply(LogIndex(1), [SmOp::Put { key: b"a".to_vec(), value: b"1".to_vec() }]).unwrap();
    let view = s.sm_view().unwrap();
    assert_eq!(view.applied_index(), LogIndex(1));
    s.apply(
        LogIndex(2),
        [SmOp::Put { key: b"a".to_vec(), value: b"2".to_vec() }, SmOp::Put { key: b"b".to_vec(), value: vec![7; 10] }],
    )
    .unwrap();
    s.apply(LogIndex(3), [SmOp::Clear]).unwrap();
    // Read on another thread: the view still shows index 1, the store index 3.
    std::thread::scope(|sc| {
        sc.spawn(|| {
            assert_eq!(view.sm_get(b"a").unwrap(), Some(b"1".to_vec()));
            assert_eq!(view.sm_get(b"b").unwrap(), None);
            assert_eq!(view.sm_scan(b"", 10).unwrap(), vec![(b"a".to_vec(), b"1".to_vec())]);
            assert_eq!(view.sm_scan_bounded(b"b", 10, 1).unwrap(), Vec::new());
        });
    });
    assert_eq!(s.sm_get(b"a").unwrap(), None);
    let now = s.sm_view().unwrap();
    assert_eq!(now.applied_index(), LogIndex(3));
    assert!(now.sm_scan(b"", 10).unwrap().is_empty());
    drop(view);
    // No view of a state machine whose install is unfinished.
    s.write(PersistBatch::append(entries(6, 9, 1)).with_hard_state(hs(1, 9))).unwrap();
    s.begin_sm_install(LogIndex(8)).unwrap();
    assert!(matches!(s.sm_view(), Err(StoreError::InvalidBatch(_))));
    s.finish_sm_install(LogIndex(8)).unwrap();
    assert_eq!(s.sm_view().unwrap().applied_index(), LogIndex(8));
}

#[test]
fn a_view_reads_its_own_state_even_across_a_reinstall() {
    // A view holds the `sm` family's handle from when it was taken, and RocksDB keeps a dropped
    // family's data while a handle to it lives: after a reinstall drops and recreates the
    // family, the view still reads the state it was taken at, never the new, empty family.
    // (The node does not rely on it: its install gate waits for reads in flight and refuses
    // views from before an install.)
    let d = TestDir::new("view-reinstall");
    let s = open(d.path());
    s.write(PersistBatch::append(entries(1, 5, 1)).with_hard_state(hs(1, 5))).unwrap();
    s.apply(LogIndex(2), [SmOp::Put { key: b"a".to_vec(), value: b"1".to_vec() }]).unwrap();
    let view = s.sm_view().unwrap();
    s.begin_sm_reinstall(LogIndex(1)).unwrap();
    s.finish_sm_install(LogIndex(1)).unwrap();
    assert_eq!(s.sm_get(b"a").unwrap(), None, "the store's family is new and empty");
    assert_eq!(view.sm_get(b"a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(view.sm_scan(b"", 10).unwrap(), vec![(b"a".to_vec(), b"1".to_vec())]);
    assert_eq!(view.applied_index(), LogIndex(2));
}

#[test]
fn a_view_taken_while_an_install_runs_is_refused_or_shows_one_whole_state() {
    // The view's thread stops between looking the `sm` family up and taking its snapshot; a
    // whole reinstall runs on another thread meanwhile (or would, if nothing held it back).
    // The view must then be refused (an install is unfinished) or show one whole state: the
    // old one at its index, or the new one at its index — never the new index over the old,
    // emptied family.
    let d = TestDir::new("view-during-install");
    let s = Arc::new(open(d.path()));
    s.write(PersistBatch::append(entries(1, 5, 1)).with_hard_state(hs(1, 5))).unwrap();
    s.apply(LogIndex(2), [SmOp::Put { key: b"a".to_vec(), value: b"1".to_vec() }]).unwrap();
    let installer = Arc::new(std::sync::Mutex::new(None));
    let (store, slot) = (s.clone(), installer.clone());
    *s.test_hooks.in_view_before_snapshot.lock().unwrap() = Some(Box::new(move || {
        let t = std::thread::spawn(move || {
            store.begin_sm_reinstall(LogIndex(4)).unwrap();
            store.write_sm_install_batch(vec![(b"b".to_vec(), b"2".to_vec())]).unwrap();
            store.finish_sm_install(LogIndex(4)).unwrap();
        });
        // Until the install is done, or for a second if the view holds it back.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while !t.is_finished() && std::time::Instant::now() < until {
            std::thread::yield_now();
        }
        *slot.lock().unwrap() = Some(t);
    }));
    let view = s.sm_view();
    match &view {
        Err(e) => assert!(e.to_string().contains("install is unfinished"), "{e}"),
        Ok(v) if v.applied_index() == LogIndex(2) => assert_eq!(v.sm_get(b"a").unwrap(), Some(b"1".to_vec())),
        Ok(v) => {
            assert_eq!(v.applied_index(), LogIndex(4));
            assert_eq!(v.sm_get(b"b").unwrap(), Some(b"2".to_vec()), "a view at 4 shows the state at 4");
        }
    }
    drop(view);
    installer.lock().unwrap().take().expect("the hook ran").join().unwrap();
    let after = s.sm_view().unwrap();
    assert_eq!((after.applied_index(), after.sm_get(b"b").unwrap()), (LogIndex(4), Some(b"2".to_vec())));
}

#[test]
fn apply_is_atomic_with_the_applied_index_and_survives_reopen() {
    let d = TestDir::new("apply");
    {
        let s = open(d.path());
        s.write(PersistBatch::append(entries(1, 5, 1)).with_hard_state(hs(1, 4))).unwrap();
        assert_eq!(s.applied_index(), LogIndex(0));
        s.apply(
            LogIndex(2),
            [
                SmOp::Put { key: b"a".to_vec(), value: b"1".to_vec() },
                SmOp::Put { key: b"b".to_vec(), value: b"2".to_vec() },
            ],
        )
        .unwrap();
        // Re-applying, or applying past the last entry, is refused.
        assert!(matches!(s.apply(LogIndex(2), []), Err(StoreError::InvalidBatch(_))));
        assert!(matches!(s.apply(LogIndex(6), []), Err(StoreError::InvalidBatch(_))));
        s.apply(
            LogIndex(3),
            [SmOp::Delete { key: b"a".to_vec() }, SmOp::Put { key: b"c".to_vec(), value: vec![0; 1000] }],
        )
        .unwrap();
    }
    let s = open(d.path());
    assert_eq!(s.applied_index(), LogIndex(3));
    assert_eq!(s.sm_get(b"a").unwrap(), None);
    assert_eq!(s.sm_get(b"b").unwrap(), Some(b"2".to_vec()));
    let all = s.sm_scan(b"", 100).unwrap();
    assert_eq!(all.iter().map(|(k, _)| k.as_slice()).collect::<Vec<_>>(), [b"b".as_slice(), b"c".as_slice()]);
    assert_eq!(s.sm_scan(b"b\0", 100).unwrap().len(), 1);
    // A byte bound stops a page at the pair that reaches it, never before the first pair.
    assert_eq!(s.sm_scan_bounded(b"", 100, 1).unwrap().len(), 1, "b (2 bytes) reaches 1 byte");
    assert_eq!(s.sm_scan_bounded(b"", 100, 2).unwrap().len(), 1);
    assert_eq!(s.sm_scan_bounded(b"", 100, 3).unwrap().len(), 2, "b is 2 bytes, c 1001");
    assert_eq!(s.sm_scan_bounded(b"c", 100, 0).unwrap().len(), 0, "a zero budget reads nothing");
    // An end bound: keys below it only (and a view's scans the same).
    assert_eq!(s.sm_scan_range(b"", Some(b"c"), 100, usize::MAX).unwrap().len(), 1, "b, not c");
    assert_eq!(s.sm_scan_range(b"", Some(b"b"), 100, usize::MAX).unwrap().len(), 0, "the end is excluded");
    assert_eq!(s.sm_scan_range(b"b\0", Some(b"c\0"), 100, usize::MAX).unwrap().len(), 1, "c");
    let view = s.sm_view().unwrap();
    assert_eq!(view.sm_scan_range(b"", Some(b"c"), 100, usize::MAX).unwrap().len(), 1, "b, not c");
    assert_eq!(view.sm_scan_range(b"", None, 100, usize::MAX).unwrap().len(), 2);
    drop(view);
    s.apply(LogIndex(4), [SmOp::Clear]).unwrap();
    assert!(s.sm_scan(b"", 100).unwrap().is_empty());
    assert_eq!(s.verify().unwrap().sm_records, 0);
}

#[test]
fn snapshot_stream_compaction_and_reopen() {
    let d = TestDir::new("snap");
    let meta = SnapshotMeta {
        last: EntryId::new(Term(1), LogIndex(6)),
        config: Configuration::with_voters([NodeId::new(1).unwrap()]).unwrap(),
    };
    {
        let s = open(d.path());
        s.write(PersistBatch::append(entries(1, 10, 1)).with_hard_state(hs(1, 8))).unwrap();
        assert!(s.snapshot_reader().unwrap().is_none());
        let mut w = s.snapshot_writer(meta.clone()).unwrap();
        for i in 0..100u32 {
            w.write_all(&i.to_le_bytes().repeat(256)).unwrap();
        }
        let f = w.finish().unwrap();
        assert_eq!(f.data_len, 100 * 1024);
        s.compact_to(meta.clone()).unwrap();
        assert_eq!(s.first_index(), LogIndex(7));
        assert_eq!(s.term(LogIndex(6)), Ok(Term(1)));
        assert_eq!(s.term(LogIndex(5)), Err(StorageError::Compacted(LogIndex(5))));
        // A newer snapshot removes the older file.
        let meta2 = SnapshotMeta { last: EntryId::new(Term(1), LogIndex(8)), ..meta.clone() };
        let mut w = s.snapshot_writer(meta2.clone()).unwrap();
        w.write_all(b"second").unwrap();
        w.finish().unwrap();
        s.compact_to(meta2).unwrap();
        assert_eq!(std::fs::read_dir(s.snapshot_dir()).unwrap().count(), 1);
    }
    let s = open(d.path());
    assert_eq!(s.first_index(), LogIndex(9));
    assert_eq!(s.last_index(), LogIndex(10));
    assert_eq!(s.initial_state().unwrap().config, meta.config);
    let mut r = s.snapshot_reader().unwrap().expect("snapshot file");
    let mut data = Vec::new();
    r.read_to_end(&mut data).unwrap();
    assert_eq!(data, b"second");
    assert_eq!(s.verify().unwrap().entries, 2);
}

#[test]
fn group_commit_merges_and_reports_each_batch() {
    let d = TestDir::new("group");
    let s = Arc::new(open(d.path()));
    let g = GroupCommitter::new(Arc::clone(&s), GroupOptions::default()).unwrap();
    let mut pending = Vec::new();
    for i in 1..=200u64 {
        pending.push(g.submit(PersistBatch::append(vec![entry(i, 1)])).unwrap());
    }
    // An invalid batch at the end is refused, and so is everything after it.
    let bad = g.submit(PersistBatch::append(vec![entry(500, 1)])).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    g.submit_with(PersistBatch::append(vec![entry(201, 1)]), move |r| {
        tx.send(r).unwrap();
    })
    .unwrap();
    for p in pending {
        p.wait().unwrap();
    }
    assert_eq!(bad.wait(), Err(StoreError::Unavailable(LogIndex(500))));
    assert!(matches!(rx.recv().unwrap(), Err(StoreError::EarlierBatchFailed { .. })));
    drop(g);
    assert_eq!(s.last_index(), LogIndex(200));
    assert_eq!(s.verify().unwrap().entries, 200);
}

#[test]
fn a_refused_batch_refuses_every_later_batch_of_the_write() {
    // Issue 18: `write_many` used to plan each batch on its own and write batch k+1 after
    // batch k was refused, although k+1 was planned on top of k.
    let d = TestDir::new("refusedk");
    let s = open(d.path());
    s.write(PersistBatch::append(entries(1, 3, 1))).unwrap();
    let results = s.write_many(&[
        PersistBatch::append(entries(4, 4, 1)),
        PersistBatch::append(entries(9, 9, 1)),
        PersistBatch::default().with_hard_state(hs(2, 3)),
        PersistBatch::append(entries(5, 6, 2)),
    ]);
    assert_eq!(results[0], Ok(()));
    assert_eq!(results[1], Err(StoreError::Unavailable(LogIndex(9))));
    for r in &results[2..] {
        assert!(matches!(r, Err(StoreError::EarlierBatchFailed { cause }) if cause.contains("beyond")), "{r:?}");
    }
    assert_eq!(s.last_index(), LogIndex(4));
    assert_eq!(s.hard_state(), HardState::default());
    drop(s);
    let s = open(d.path());
    assert_eq!(s.last_index(), LogIndex(4));
    assert_eq!(s.hard_state(), HardState::default());
}

#[test]
fn the_group_committer_writes_nothing_after_a_refused_batch() {
    // Issue 18: a later group was still written after a batch of an earlier group was refused.
    let d = TestDir::new("groupbroken");
    let s = Arc::new(open(d.path()));
    let g = GroupCommitter::new(Arc::clone(&s), GroupOptions::default()).unwrap();
    g.submit(PersistBatch::append(entries(1, 2, 1))).unwrap().wait().unwrap();
    assert_eq!(
        g.submit(PersistBatch::append(entries(7, 7, 1))).unwrap().wait(),
        Err(StoreError::Unavailable(LogIndex(7)))
    );
    // A valid continuation, in a group of its own: never written.
    let later = g.submit(PersistBatch::append(entries(3, 3, 1)).with_hard_state(hs(2, 1))).unwrap().wait();
    assert!(matches!(later, Err(StoreError::EarlierBatchFailed { .. })), "{later:?}");
    drop(g);
    assert_eq!(s.last_index(), LogIndex(2));
    assert_eq!(s.hard_state(), HardState::default());
}

#[test]
fn readers_see_only_durable_contiguous_prefixes_during_writes() {
    let d = TestDir::new("readers");
    let s = Arc::new(open(d.path()));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (s, done) = (Arc::clone(&s), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !done.load(std::sync::atomic::Ordering::Acquire) || reads == 0 {
                let last = s.last_index();
                if last > LogIndex(0) {
                    let lo = LogIndex(last.0.saturating_sub(50).max(1));
                    let es = s.entries(lo, last.next(), u64::MAX).unwrap();
                    assert_eq!(es.len() as u64, last.0 - lo.0 + 1);
                    assert!(es.iter().zip(lo.0..).all(|(e, i)| e.index == LogIndex(i)));
                    assert_eq!(s.term(last).unwrap(), Term(1 + last.0 / 100));
                }
                reads += 1;
            }
            reads
        })
    };
    let g = GroupCommitter::new(Arc::clone(&s), GroupOptions::default()).unwrap();
    let mut pending = Vec::new();
    for i in 1..=2000u64 {
        pending.push(g.submit(PersistBatch::append(vec![entry(i, 1 + i / 100)])).unwrap());
    }
    for p in pending {
        p.wait().unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    assert!(reader.join().unwrap() > 0);
    assert_eq!(s.last_index(), LogIndex(2000));
}

/// How long a test waits for something that takes milliseconds (a loaded machine included).
const WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Holds a log write just before it is durable (the `before_log_sync` hook): `entered` says
/// it is there, dropping `release` (or sending on it) lets it go on.
fn hold_log_write_before_sync(s: &RocksStore) -> (std::sync::mpsc::Receiver<()>, std::sync::mpsc::Sender<()>) {
    let (entered_tx, entered) = std::sync::mpsc::channel::<()>();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    *s.test_hooks.before_log_sync.lock().unwrap() = Some(Box::new(move || {
        let _ = entered_tx.send(());
        // Released by a message or by the sender's drop (a failing test must not hang).
        let _ = release_rx.recv();
    }));
    (entered, release)
}

/// Issue 20 (brief 20D): the state machine's apply does not wait for a log write's fsync. A log
/// write is held just before it is durable; an apply of entries already durable completes
/// meanwhile, and nothing of the held write shows — not in the tail, not in the durable mark —
/// until it is durable.
#[test]
fn an_apply_completes_while_a_log_write_waits_for_its_fsync() {
    let d = TestDir::new("applyduringsync");
    let s = Arc::new(open(d.path()));
    s.write(PersistBatch::append(entries(1, 3, 1)).with_hard_state(hs(1, 3))).unwrap();
    let (entered, release) = hold_log_write_before_sync(&s);
    let writer = {
        let s = Arc::clone(&s);
        std::thread::spawn(move || s.write(PersistBatch::append(entries(4, 6, 1)).with_hard_state(hs(1, 5))))
    };
    entered.recv_timeout(WAIT).expect("the log write reaches its fsync");
    let (applied_tx, applied) = std::sync::mpsc::channel();
    let applier = {
        let s = Arc::clone(&s);
        std::thread::spawn(move || {
            let r = s.apply(LogIndex(3), [SmOp::Put { key: b"k".to_vec(), value: b"v".to_vec() }]);
            let _ = applied_tx.send(r);
        })
    };
    let outcome = applied.recv_timeout(WAIT);
    // Not durable yet: not in the tail, not readable, not in the durable mark.
    let visible = (s.last_index(), s.entries(LogIndex(4), LogIndex(5), u64::MAX).is_ok());
    let (_, mark) = crate::durable::read(&s.mark_file()).unwrap().unwrap();
    drop(release);
    assert_eq!(outcome.map_err(|e| format!("{e:?}")), Ok(Ok(())), "the apply waited for the log write's fsync");
    assert_eq!(visible, (LogIndex(3), false), "a log write showed before it was durable");
    assert_eq!(mark.last.index, LogIndex(3), "the durable mark claimed a write before it was durable");
    writer.join().unwrap().unwrap();
    applier.join().unwrap();
    assert_eq!(s.applied_index(), LogIndex(3));
    assert_eq!(s.sm_get(b"k").unwrap(), Some(b"v".to_vec()));
    assert_eq!(s.last_index(), LogIndex(6));
    let (_, mark) = crate::durable::read(&s.mark_file()).unwrap().unwrap();
    assert_eq!(mark.last.index, LogIndex(6));
    s.apply(LogIndex(6), []).unwrap();
    drop(s);
    let s = open(d.path());
    assert_eq!((s.last_index(), s.applied_index()), (LogIndex(6), LogIndex(6)));
    assert_eq!(s.sm_get(b"k").unwrap(), Some(b"v".to_vec()));
}

/// Brief 20D: with the log and the state machine under separate locks, a failed log fsync
/// still stops both. An apply that runs while the failing write waits for its fsync completes
/// (it is ordered before the failure); after the failure both the log's and the state
/// machine's writes are refused, and a restart finds the applied index within the log and the
/// state machine matching it.
#[test]
fn a_failed_log_fsync_stops_the_log_and_the_state_machine() {
    let d = TestDir::new("poisonboth");
    let s = Arc::new(open(d.path()));
    s.write(PersistBatch::append(entries(1, 3, 1)).with_hard_state(hs(1, 3))).unwrap();
    s.danger_inject_write_fault(Some(WriteFault::Eio { after_write: true }));
    let (entered, release) = hold_log_write_before_sync(&s);
    let writer = {
        let s = Arc::clone(&s);
        std::thread::spawn(move || s.write(PersistBatch::append(entries(4, 6, 1))))
    };
    entered.recv_timeout(WAIT).expect("the log write reaches its fsync");
    // On another thread, so that an apply stuck behind the held write fails the test
    // instead of hanging it.
    let (applied_tx, applied) = std::sync::mpsc::channel();
    let applier = {
        let s = Arc::clone(&s);
        std::thread::spawn(move || {
            let _ = applied_tx.send(s.apply(LogIndex(2), [SmOp::Put { key: b"k".to_vec(), value: b"2".to_vec() }]));
        })
    };
    let applied = applied.recv_timeout(WAIT);
    drop(release);
    applier.join().unwrap();
    applied.expect("the apply waited for the log write's fsync").unwrap();
    let err = writer.join().unwrap().unwrap_err();
    assert!(err.is_fatal(), "{err}");
    s.danger_inject_write_fault(None);
    let err = s.apply(LogIndex(3), [SmOp::Put { key: b"k".to_vec(), value: b"3".to_vec() }]).unwrap_err();
    assert!(matches!(err, StoreError::Poisoned { .. }), "{err}");
    let err = s.write(PersistBatch::append(entries(4, 4, 1))).unwrap_err();
    assert!(matches!(err, StoreError::Poisoned { .. }), "{err}");
    let err = s.write_sm_install_batch(vec![(b"x".to_vec(), b"y".to_vec())]).unwrap_err();
    assert!(matches!(err, StoreError::Poisoned { .. }), "{err}");
    // Nothing of the failed write shows, and the applied index stayed where it was.
    assert_eq!((s.last_index(), s.applied_index()), (LogIndex(3), LogIndex(2)));
    drop(s);
    let s = open(d.path());
    assert!(s.applied_index() <= s.last_index());
    assert_eq!(s.applied_index(), LogIndex(2));
    assert_eq!(s.sm_get(b"k").unwrap(), Some(b"2".to_vec()));
}

/// Brief 20D (review): a failed fsync of the write-ahead log — the sync step after an
/// unsynced log write, not the write — poisons the store: the write is refused, nothing of it
/// shows, and every later log and state-machine write is refused.
#[test]
fn a_failed_wal_sync_after_an_unsynced_log_write_poisons_the_store() {
    let d = TestDir::new("walsyncfail");
    let s = open(d.path());
    s.write(PersistBatch::append(entries(1, 3, 1)).with_hard_state(hs(1, 3))).unwrap();
    s.apply(LogIndex(1), [SmOp::Put { key: b"k".to_vec(), value: b"1".to_vec() }]).unwrap();
    *s.test_hooks.fail_log_sync.lock().unwrap() = Some("Input/output error (injected)".into());
    let err = s.write(PersistBatch::append(entries(4, 6, 1))).unwrap_err();
    assert!(err.is_fatal(), "{err}");
    assert!(err.to_string().contains("fsync of the write-ahead log"), "{err}");
    assert_eq!(s.last_index(), LogIndex(3), "a write whose fsync failed showed");
    let err = s.write(PersistBatch::append(entries(4, 4, 1))).unwrap_err();
    assert!(matches!(err, StoreError::Poisoned { .. }), "{err}");
    let err = s.apply(LogIndex(2), [SmOp::Put { key: b"k".to_vec(), value: b"2".to_vec() }]).unwrap_err();
    assert!(matches!(err, StoreError::Poisoned { .. }), "{err}");
    drop(s);
    let s = open(d.path());
    assert!(s.applied_index() <= s.last_index());
    assert_eq!(s.sm_get(b"k").unwrap(), Some(b"1".to_vec()));
}
