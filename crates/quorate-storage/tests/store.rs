//! One conformance suite run against both [`MemStore`] and [`RocksStore`], a seeded
//! differential test of the two, and crash tests that SIGKILL a real writer process.

use quorate_log::{
    Configuration, Data, Entry, EntryId, EntryPayload, HardState, LogIndex, LogStorage, NodeId, SnapshotMeta,
    StorageError, Term,
};
use quorate_storage::{
    DurableLog, GroupCommitter, GroupOptions, MemStore, PersistBatch, RocksStore, SmOp, StoreError, StoreOptions,
};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

// ---------------------------------------------------------------------------------------------
// Helpers

static DIRS: AtomicU64 = AtomicU64::new(0);

/// A unique temporary directory, removed on drop.
struct TestDir(PathBuf);

impl TestDir {
    fn new(tag: &str) -> TestDir {
        let n = DIRS.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("quorate-storage-it-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TestDir(p)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A small deterministic generator (xorshift64*), so that every run is replayable.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn voters(ids: &[u64]) -> Configuration {
    Configuration::with_voters(ids.iter().map(|i| NodeId::new(*i).unwrap())).unwrap()
}

/// The payload of entry `index` in term `term`: checkable after a crash.
fn payload(index: u64, term: u64, len: usize) -> Data {
    let mut v = Vec::with_capacity(len);
    let seed = (index << 16) ^ term;
    for i in 0..len {
        v.push((seed.wrapping_mul(31).wrapping_add(i as u64 * 7) >> 3) as u8);
    }
    Data::from(v)
}

fn entry(index: u64, term: u64) -> Entry {
    Entry { index: LogIndex(index), term: Term(term), payload: EntryPayload::Command(payload(index, term, 20)) }
}

fn entries(lo: u64, hi: u64, term: u64) -> Vec<Entry> {
    (lo..=hi).map(|i| entry(i, term)).collect()
}

fn hs(term: u64, commit: u64) -> HardState {
    HardState { term: Term(term), vote: NodeId::new(1), commit: LogIndex(commit) }
}

fn rocks_options(bootstrap: Configuration) -> StoreOptions {
    let mut o = StoreOptions::with_bootstrap(bootstrap);
    o.free_space_floor_bytes = 0;
    o
}

// ---------------------------------------------------------------------------------------------
// The conformance suite

/// How the suite makes and reopens a store.
trait Harness {
    type Store: DurableLog;
    fn fresh(&mut self, bootstrap: Configuration) -> Self::Store;
    /// Closes and reopens `s` (the in-memory store simply keeps going).
    fn reopen(&mut self, s: Self::Store) -> Self::Store;
}

struct Mem;

impl Harness for Mem {
    type Store = MemStore;
    fn fresh(&mut self, bootstrap: Configuration) -> MemStore {
        MemStore::new(bootstrap)
    }
    fn reopen(&mut self, s: MemStore) -> MemStore {
        s
    }
}

struct Rocks {
    dirs: Vec<TestDir>,
    bootstrap: Configuration,
}

impl Rocks {
    fn new() -> Rocks {
        Rocks { dirs: Vec::new(), bootstrap: Configuration::default() }
    }
    fn dir(&self) -> &Path {
        &self.dirs.last().expect("a store was made").0
    }
}

impl Harness for Rocks {
    type Store = RocksStore;
    fn fresh(&mut self, bootstrap: Configuration) -> RocksStore {
        self.dirs.push(TestDir::new("conf"));
        self.bootstrap = bootstrap.clone();
        RocksStore::open(self.dir(), rocks_options(bootstrap)).unwrap()
    }
    fn reopen(&mut self, s: RocksStore) -> RocksStore {
        drop(s);
        let s = RocksStore::open(self.dir(), rocks_options(self.bootstrap.clone())).unwrap();
        s.verify().unwrap();
        s
    }
}

fn terms<S: DurableLog>(s: &S, lo: u64, hi: u64) -> Vec<u64> {
    (lo..=hi).map(|i| s.term(LogIndex(i)).unwrap().0).collect()
}

fn case_append_and_read<H: Harness>(h: &mut H) {
    let s = h.fresh(voters(&[1, 2, 3]));
    assert_eq!(s.last_index(), LogIndex(0));
    assert_eq!(s.first_index(), LogIndex(1));
    assert_eq!(s.term(LogIndex(0)), Ok(Term(0)));
    assert_eq!(s.term(LogIndex(1)), Err(StorageError::Unavailable(LogIndex(1))));
    assert!(s.entries(LogIndex(1), LogIndex(1), 0).unwrap().is_empty());
    s.write(PersistBatch::append(entries(1, 5, 1))).unwrap();
    s.write(PersistBatch::append(entries(6, 10, 2))).unwrap();
    let s = h.reopen(s);
    assert_eq!(s.last_index(), LogIndex(10));
    assert_eq!(terms(&s, 1, 10), [1, 1, 1, 1, 1, 2, 2, 2, 2, 2]);
    let all = s.entries(LogIndex(1), LogIndex(11), u64::MAX).unwrap();
    assert_eq!(all, [entries(1, 5, 1), entries(6, 10, 2)].concat());
    // Byte-bounded slices: each entry is 24 + 20 bytes; always at least one entry.
    assert_eq!(s.entries(LogIndex(2), LogIndex(11), 100).unwrap().len(), 2);
    assert_eq!(s.entries(LogIndex(2), LogIndex(11), 0).unwrap().len(), 1);
    assert_eq!(s.entries(LogIndex(3), LogIndex(5), u64::MAX).unwrap(), entries(3, 4, 1));
    assert_eq!(s.entries(LogIndex(5), LogIndex(12), u64::MAX), Err(StorageError::Unavailable(LogIndex(11))));
    assert_eq!(s.term(LogIndex(11)), Err(StorageError::Unavailable(LogIndex(11))));
}

fn case_overwrite_conflicting_suffix<H: Harness>(h: &mut H) {
    let s = h.fresh(voters(&[1]));
    s.write(PersistBatch::append(entries(1, 6, 1)).with_hard_state(hs(1, 2))).unwrap();
    // A new leader's entries overwrite from index 4 (implicit truncation).
    s.write(PersistBatch::append(entries(4, 5, 2)).with_hard_state(hs(2, 2))).unwrap();
    assert_eq!(s.last_index(), LogIndex(5));
    assert_eq!(terms(&s, 1, 5), [1, 1, 1, 2, 2]);
    // Explicit truncation without entries.
    s.write(PersistBatch { truncate_from: Some(LogIndex(5)), ..PersistBatch::default() }).unwrap();
    assert_eq!(s.last_index(), LogIndex(4));
    // Truncation and append in one batch, truncating further than the first entry.
    s.write(PersistBatch { truncate_from: Some(LogIndex(3)), entries: entries(3, 7, 3), ..PersistBatch::default() })
        .unwrap();
    let s = h.reopen(s);
    assert_eq!(terms(&s, 1, 7), [1, 1, 3, 3, 3, 3, 3]);
    assert_eq!(s.entries(LogIndex(1), LogIndex(8), u64::MAX).unwrap(), [entries(1, 2, 1), entries(3, 7, 3)].concat());
    // Committed entries are never truncated.
    let err = s.write(PersistBatch::append(entries(2, 2, 4))).unwrap_err();
    assert!(matches!(err, StoreError::InvalidBatch(_)), "{err}");
    assert_eq!(s.last_index(), LogIndex(7));
}

fn case_refusals_change_nothing<H: Harness>(h: &mut H) {
    let s = h.fresh(voters(&[1]));
    s.write(PersistBatch::append(entries(1, 3, 2)).with_hard_state(hs(2, 1))).unwrap();
    let refused = [
        // A gap.
        PersistBatch::append(entries(5, 5, 2)),
        // Not contiguous.
        PersistBatch::append(vec![entry(4, 2), entry(6, 2)]),
        // A term going backwards.
        PersistBatch::append(entries(4, 4, 1)),
        // Commit past the end.
        PersistBatch::append(entries(4, 4, 2)).with_hard_state(hs(2, 9)),
        // Term going back; vote changing within a term; commit going back.
        PersistBatch::default().with_hard_state(hs(1, 1)),
        PersistBatch::default().with_hard_state(HardState { term: Term(2), vote: NodeId::new(2), commit: LogIndex(1) }),
        PersistBatch::default().with_hard_state(hs(2, 0)),
        // Truncating committed entries explicitly.
        PersistBatch { truncate_from: Some(LogIndex(1)), ..PersistBatch::default() },
    ];
    for b in refused {
        assert!(s.write(b.clone()).is_err(), "accepted {b:?}");
        assert_eq!(s.last_index(), LogIndex(3));
        assert_eq!(s.hard_state(), hs(2, 1));
        assert_eq!(s.snapshot_last(), EntryId::ZERO);
    }
    let s = h.reopen(s);
    assert_eq!(terms(&s, 1, 3), [2, 2, 2]);
    // An empty batch is fine.
    s.write(PersistBatch::default()).unwrap();
}

fn case_hard_state_round_trip<H: Harness>(h: &mut H) {
    let s = h.fresh(voters(&[1, 2, 3]));
    assert_eq!(s.initial_state().unwrap().hard_state, HardState::default());
    let a = HardState { term: Term(5), vote: NodeId::new(3), commit: LogIndex(0) };
    s.write(PersistBatch::default().with_hard_state(a)).unwrap();
    let s = h.reopen(s);
    assert_eq!(s.hard_state(), a);
    assert_eq!(s.initial_state().unwrap().hard_state, a);
    assert_eq!(s.initial_state().unwrap().config, voters(&[1, 2, 3]));
    // A new term may clear the vote.
    let b = HardState { term: Term(6), vote: None, commit: LogIndex(0) };
    s.write(PersistBatch::default().with_hard_state(b)).unwrap();
    let s = h.reopen(s);
    assert_eq!(s.hard_state(), b);
}

fn case_configuration_tracking<H: Harness>(h: &mut H) {
    let s = h.fresh(voters(&[1]));
    let c2 = voters(&[1, 2]);
    let c3 = voters(&[1, 2, 3]);
    let cfg = |i: u64, t: u64, c: &Configuration| Entry {
        index: LogIndex(i),
        term: Term(t),
        payload: EntryPayload::Config(c.clone()),
    };
    s.write(PersistBatch::append(vec![entry(1, 1), cfg(2, 1, &c2), entry(3, 1), cfg(4, 1, &c3)])).unwrap();
    assert_eq!(s.initial_state().unwrap().config, c3);
    s.write(PersistBatch::append(entries(4, 4, 2))).unwrap();
    let s = h.reopen(s);
    assert_eq!(s.initial_state().unwrap().config, c2);
    s.write(PersistBatch::append(entries(2, 2, 3))).unwrap();
    let s = h.reopen(s);
    assert_eq!(s.initial_state().unwrap().config, voters(&[1]));
}

fn case_compaction<H: Harness>(h: &mut H) {
    let s = h.fresh(voters(&[1]));
    s.write(PersistBatch::append(entries(1, 10, 1)).with_hard_state(hs(1, 0))).unwrap();
    s.write(PersistBatch::append(entries(11, 20, 2)).with_hard_state(hs(2, 15))).unwrap();
    let snap = SnapshotMeta { last: EntryId::new(Term(1), LogIndex(10)), config: voters(&[1, 9]) };
    s.compact_to(snap.clone()).unwrap();
    let s = h.reopen(s);
    assert_eq!(s.snapshot_last(), snap.last);
    assert_eq!(s.snapshot_meta().unwrap(), snap);
    assert_eq!(s.first_index(), LogIndex(11));
    assert_eq!(s.last_index(), LogIndex(20));
    assert_eq!(s.term(LogIndex(10)), Ok(Term(1)));
    assert_eq!(s.term(LogIndex(9)), Err(StorageError::Compacted(LogIndex(9))));
    assert_eq!(s.entries(LogIndex(10), LogIndex(12), u64::MAX), Err(StorageError::Compacted(LogIndex(10))));
    assert_eq!(s.entries(LogIndex(11), LogIndex(21), u64::MAX).unwrap(), entries(11, 20, 2));
    assert_eq!(s.initial_state().unwrap().config, voters(&[1, 9]));
    // An older snapshot is a no-op; truncating into the snapshot is refused.
    s.compact_to(SnapshotMeta { last: EntryId::new(Term(1), LogIndex(5)), config: voters(&[1]) }).unwrap();
    assert_eq!(s.first_index(), LogIndex(11));
    assert_eq!(s.write(PersistBatch::append(entries(10, 10, 2))), Err(StoreError::Compacted(LogIndex(10))));
    // A snapshot whose last entry disagrees with the log discards the whole log (installing a
    // leader's snapshot); the hard state commits it in the same batch.
    let leader_snap = SnapshotMeta { last: EntryId::new(Term(7), LogIndex(30)), config: voters(&[1, 2, 3]) };
    s.write(PersistBatch {
        hard_state: Some(hs(7, 30)),
        compact: Some(leader_snap.clone()),
        ..PersistBatch::default()
    })
    .unwrap();
    let s = h.reopen(s);
    assert_eq!(s.first_index(), LogIndex(31));
    assert_eq!(s.last_index(), LogIndex(30));
    assert_eq!(s.term(LogIndex(30)), Ok(Term(7)));
    assert_eq!(s.initial_state().unwrap().config, voters(&[1, 2, 3]));
    s.write(PersistBatch::append(entries(31, 33, 7))).unwrap();
    assert_eq!(terms(&s, 30, 33), [7, 7, 7, 7]);
    // A snapshot that disagrees with committed entries is refused.
    s.write(PersistBatch::default().with_hard_state(hs(7, 32))).unwrap();
    let err = s
        .write(PersistBatch {
            install: Some(SnapshotMeta { last: EntryId::new(Term(6), LogIndex(31)), config: voters(&[1]) }),
            ..PersistBatch::default()
        })
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidBatch(_)), "{err}");
    // Installing a snapshot and appending after it in one batch (the order of the core's
    // `Persist`: snapshots first, then entries, then the hard state).
    s.write(PersistBatch {
        install: Some(SnapshotMeta { last: EntryId::new(Term(8), LogIndex(40)), config: voters(&[1, 2, 3]) }),
        entries: entries(41, 42, 8),
        hard_state: Some(hs(8, 40)),
        ..PersistBatch::default()
    })
    .unwrap();
    let s = h.reopen(s);
    assert_eq!((s.first_index(), s.last_index()), (LogIndex(41), LogIndex(42)));
    assert_eq!(terms(&s, 40, 42), [8, 8, 8]);
    assert_eq!(s.entries(LogIndex(41), LogIndex(43), u64::MAX).unwrap(), entries(41, 42, 8));
    // Truncating the new suffix is fine; the snapshot is not.
    s.write(PersistBatch::append(entries(42, 42, 9)).with_hard_state(hs(9, 40))).unwrap();
    assert_eq!(
        s.write(PersistBatch { truncate_from: Some(LogIndex(40)), ..PersistBatch::default() }),
        Err(StoreError::Compacted(LogIndex(40)))
    );
    s.write(PersistBatch::append(entries(43, 43, 9))).unwrap();
    // Compacting everything and keeping nothing: the log is empty after the snapshot.
    s.write(PersistBatch { skip_fsync: true, ..PersistBatch::default().with_hard_state(hs(9, 43)) }).unwrap();
    s.compact_to(SnapshotMeta { last: EntryId::new(Term(9), LogIndex(43)), config: voters(&[1, 2, 3]) }).unwrap();
    let s = h.reopen(s);
    assert_eq!(s.hard_state(), hs(9, 43));
    assert_eq!((s.first_index(), s.last_index()), (LogIndex(44), LogIndex(43)));
    s.write(PersistBatch::append(entries(44, 44, 9))).unwrap();
    assert_eq!(s.entries(LogIndex(44), LogIndex(45), 0).unwrap(), entries(44, 44, 9));
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod conformance_mem {
            $(#[test] fn $case() { super::$case(&mut super::Mem); })*
        }
        mod conformance_rocks {
            $(#[test] fn $case() { super::$case(&mut super::Rocks::new()); })*
        }
    };
}

conformance!(
    case_append_and_read,
    case_overwrite_conflicting_suffix,
    case_refusals_change_nothing,
    case_hard_state_round_trip,
    case_configuration_tracking,
    case_compaction,
);

// ---------------------------------------------------------------------------------------------
// Differential: random operations against both stores must give identical observations.

fn observe<S: DurableLog>(s: &S) -> String {
    let first = s.first_index();
    let last = s.last_index();
    let mut o =
        format!("snap={:?} first={first:?} last={last:?} init={:?}", s.snapshot_last(), s.initial_state().unwrap());
    let es = s.entries(first, last.next(), u64::MAX).unwrap();
    for e in es {
        o.push_str(&format!(" {}:{}", e.index, e.term));
    }
    o
}

#[test]
fn differential_random_operations() {
    let seeds: u64 = std::env::var("QUORATE_DIFF_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(8);
    for seed in 0..seeds {
        let mut rng = Rng::new(seed + 1);
        let mem = MemStore::new(voters(&[1]));
        let mut h = Rocks::new();
        let mut rocks = h.fresh(voters(&[1]));
        let mut term = 1u64;
        let (mut accepted, mut refused) = (0u32, 0u32);
        for step in 0..300 {
            let last = mem.last_index().0;
            let commit = mem.hard_state().commit.0;
            let b = match rng.below(10) {
                0..=4 => {
                    let n = 1 + rng.below(8);
                    PersistBatch::append(entries(last + 1, last + n, term))
                }
                5 => {
                    // Overwrite an uncommitted suffix with a newer term (may be refused).
                    term += 1;
                    let from = commit + 1 + rng.below(last.saturating_sub(commit) + 1);
                    let n = rng.below(4);
                    let mut b = PersistBatch { truncate_from: Some(LogIndex(from)), ..PersistBatch::default() };
                    if n > 0 {
                        b.entries = entries(from, from + n - 1, term);
                    }
                    b.with_hard_state(hs(term, commit))
                }
                6 | 7 => {
                    let c = commit + rng.below(last.saturating_sub(commit) + 1);
                    PersistBatch::default().with_hard_state(hs(term, c))
                }
                8 => {
                    let first = mem.first_index().0;
                    // The snapshot index is first - 1 <= commit: pick from [first - 1, commit].
                    let at = first - 1 + rng.below(commit + 2 - first);
                    let mut t = mem.term(LogIndex(at)).unwrap().0;
                    if rng.below(4) == 0 {
                        // A snapshot that disagrees with the log (a leader's): usually
                        // refused, accepted (discarding the log) when it ends at the commit.
                        t += 1;
                        term = term.max(t);
                    }
                    PersistBatch {
                        compact: Some(SnapshotMeta {
                            last: EntryId::new(Term(t), LogIndex(at)),
                            config: voters(&[1, 1 + rng.below(5)]),
                        }),
                        ..PersistBatch::default()
                    }
                }
                _ => {
                    // Something usually invalid: a gap or a stale term.
                    PersistBatch::append(entries(last + 1 + rng.below(3), last + 2, rng.below(term + 1)))
                }
            };
            let a = mem.write(b.clone());
            let r = rocks.write(b.clone());
            assert_eq!(a, r, "seed {seed} step {step}: {b:?}");
            if a.is_ok() {
                accepted += 1;
            } else {
                refused += 1;
            }
            if step % 50 == 49 {
                rocks = h.reopen(rocks);
            }
            assert_eq!(observe(&mem), observe(&rocks), "seed {seed} step {step}");
        }
        // The generator must exercise both outcomes substantially.
        assert!(accepted >= 150 && refused >= 10, "seed {seed}: {accepted} accepted, {refused} refused");
        assert!(mem.snapshot_last().index > LogIndex(0), "seed {seed}: never compacted");
    }
}

// ---------------------------------------------------------------------------------------------
// Crash tests: a child process appends under load and prints each acknowledged index; the
// parent SIGKILLs it at a seeded moment and checks that everything acknowledged survived.

const CHILD_ENV: &str = "QUORATE_CRASH_CHILD";
const SEED_ENV: &str = "QUORATE_CRASH_SEED";
const PAYLOAD_BYTES: usize = 256;

fn crash_entry(index: u64) -> Entry {
    // The term grows slowly so that term runs are exercised; it is a pure function of the
    // index, so the parent can check every entry.
    let term = 1 + index / 97;
    Entry {
        index: LogIndex(index),
        term: Term(term),
        payload: EntryPayload::Command(payload(index, term, PAYLOAD_BYTES)),
    }
}

/// The child's body: run only by `crash_rounds_keep_acknowledged_entries`, which re-executes
/// this test binary with `--include-ignored --exact crash_child_entry_point`.
#[test]
#[ignore = "entry point of the crash test's child process"]
fn crash_child_entry_point() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let seed: u64 = std::env::var(SEED_ENV).unwrap().parse().unwrap();
    let mut rng = Rng::new(seed);
    let store = Arc::new(RocksStore::open(&dir, rocks_options(voters(&[1]))).unwrap());
    // The state machine applies whatever the log holds, concurrently with the log's writes (it
    // takes its own lock): each apply records the index it applied in the same write.
    {
        let store = Arc::clone(&store);
        std::thread::spawn(move || {
            loop {
                let (applied, last) = (store.applied_index(), store.last_index());
                if last > applied {
                    let value = last.0.to_string().into_bytes();
                    if let Err(e) = store.apply(last, [SmOp::Put { key: APPLIED_KEY.to_vec(), value }]) {
                        // Not a panic in a thread nobody joins: the child stops at once (stdout
                        // is the writer's, locked), and the parent fails the round with this
                        // line ("the child exited early ... : <stderr>").
                        eprintln!("the child's applier failed: {e}");
                        std::process::exit(3);
                    }
                } else {
                    // Nothing new: poll again shortly, without spinning a core that the
                    // writer under test needs.
                    std::thread::park_timeout(std::time::Duration::from_micros(200));
                }
            }
        });
    }
    let mut out = std::io::stdout().lock();
    let mut next = store.last_index().0 + 1;
    let ack = |out: &mut std::io::StdoutLock<'_>, i: u64| {
        writeln!(out, "ack {i}").unwrap();
        out.flush().unwrap();
    };
    if rng.below(2) == 0 {
        // Direct synchronous writes, with occasional compaction.
        writeln!(out, "mode direct").unwrap();
        loop {
            let n = 1 + rng.below(32);
            let batch: Vec<Entry> = (next..next + n).map(crash_entry).collect();
            let last = next + n - 1;
            let mut b = PersistBatch::append(batch).with_hard_state(HardState {
                term: Term(1 + last / 97),
                vote: NodeId::new(1),
                commit: LogIndex(last),
            });
            if rng.below(8) == 0 && next > 50 {
                let at = next - 1 - rng.below(40);
                b.compact =
                    Some(SnapshotMeta { last: EntryId::new(Term(1 + at / 97), LogIndex(at)), config: voters(&[1]) });
            }
            store.write(b).unwrap();
            ack(&mut out, last);
            next = last + 1;
        }
    } else {
        // Pipelined submissions through the group committer.
        writeln!(out, "mode group").unwrap();
        let g = GroupCommitter::new(Arc::clone(&store), GroupOptions::default()).unwrap();
        let mut pending = std::collections::VecDeque::new();
        loop {
            while pending.len() < 16 {
                let n = 1 + rng.below(8);
                let batch: Vec<Entry> = (next..next + n).map(crash_entry).collect();
                let last = next + n - 1;
                pending.push_back((last, g.submit(PersistBatch::append(batch)).unwrap()));
                next = last + 1;
            }
            let (last, c) = pending.pop_front().unwrap();
            c.wait().unwrap();
            ack(&mut out, last);
        }
    }
}

fn check_recovered(dir: &Path, acked: u64) -> u64 {
    let s = RocksStore::open(dir, rocks_options(voters(&[1]))).unwrap();
    let report = s.verify().unwrap();
    let last = s.last_index().0;
    assert!(last >= acked, "acknowledged {acked} but recovered only up to {last}");
    let first = s.first_index().0;
    assert_eq!(report.entries, last + 1 - first);
    let mut i = first;
    while i <= last {
        let es = s.entries(LogIndex(i), LogIndex(last + 1), 1 << 20).unwrap();
        for e in &es {
            assert_eq!(e, &crash_entry(e.index.0), "entry {} differs", e.index);
        }
        i += es.len() as u64;
    }
    let hs = s.hard_state();
    assert!(hs.commit.0 <= last);
    // The state machine's data and applied index were written together, and never past what
    // the log held durably.
    let applied = s.applied_index();
    assert!(applied.0 <= last, "applied {applied} past the recovered log's end {last}");
    let recorded = s.sm_get(APPLIED_KEY).unwrap().map(|v| String::from_utf8(v).unwrap());
    assert_eq!(recorded, (applied.0 > 0).then(|| applied.0.to_string()), "state machine and applied index differ");
    APPLIED_SEEN.fetch_max(applied.0, Ordering::Relaxed);
    last
}

/// The state-machine key the crash child's applier writes the applied index to.
const APPLIED_KEY: &[u8] = b"applied";
/// The highest applied index a crash round recovered.
static APPLIED_SEEN: AtomicU64 = AtomicU64::new(0);

#[test]
fn crash_rounds_keep_acknowledged_entries() {
    let rounds: u64 = std::env::var("QUORATE_CRASH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let base_seed: u64 = std::env::var("QUORATE_CRASH_BASE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed);
    let dir = TestDir::new("crash");
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng::new(base_seed);
    let mut acked = 0u64;
    let mut modes = std::collections::BTreeSet::new();
    for round in 0..rounds {
        let seed = rng.next();
        // Kill after a seeded number of acknowledgements (the child keeps writing meanwhile).
        let kill_after = 1 + rng.below(120);
        let mut child = Command::new(&exe)
            .args(["crash_child_entry_point", "--exact", "--include-ignored", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &dir.0)
            .env(SEED_ENV, seed.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut seen = 0u64;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            // libtest prints "test crash_child_entry_point ... " before the child's first line.
            if let Some((_, m)) = line.split_once("mode ") {
                modes.insert(m.to_owned());
            }
            if let Some(i) = line.strip_prefix("ack ") {
                let i: u64 = i.parse().unwrap();
                assert!(i > acked, "round {round}: ack {i} after {acked}");
                acked = i;
                seen += 1;
                if seen >= kill_after {
                    break;
                }
            }
        }
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            seen,
            kill_after,
            "round {round} (seed {seed}): the child exited early with {status}: {}",
            std::io::read_to_string(child.stderr.take().unwrap()).unwrap_or_default()
        );
        let last = check_recovered(&dir.0, acked);
        // Entries written but not acknowledged before the kill may survive too; later acks
        // continue from the recovered end.
        acked = acked.max(last);
    }
    assert!(acked > rounds, "too little progress: {acked}");
    assert!(APPLIED_SEEN.load(Ordering::Relaxed) > 0, "the child's applier never applied anything");
    if rounds >= 10 {
        assert_eq!(modes.len(), 2, "both writer modes must run: {modes:?}");
    }
    eprintln!("crash test: {rounds} rounds, {acked} entries acknowledged and recovered");
}

/// Brief 19c: a file made of `snapshot_file_head(meta)` and the data becomes, by
/// `adopt_snapshot`, byte for byte the snapshot file `SnapshotWriter` writes for the same
/// metadata and data — renamed into the snapshot directory, not copied (its inode is kept) —
/// and reads back through `SnapshotReader`. A file of another length or with another head is
/// refused and left where it was.
#[cfg(unix)]
#[test]
fn an_adopted_snapshot_file_is_the_file_the_writer_writes_and_is_renamed_not_copied() {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let t = TestDir::new("adopt");
    let s = RocksStore::open(t.0.join("store"), rocks_options(voters(&[1]))).unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let crc = crc32fast::hash(&data);
    // The reference: the writer's file for snapshot 10, moved aside.
    let at10 = SnapshotMeta { last: EntryId::new(Term(1), LogIndex(10)), config: voters(&[1]) };
    let mut w = s.snapshot_writer(at10.clone()).unwrap();
    w.write_all(&data).unwrap();
    let written = w.finish().unwrap();
    let reference = std::fs::read(&written.path).unwrap();
    std::fs::remove_file(&written.path).unwrap();
    // The same snapshot staged elsewhere (same file system) and adopted.
    let staged = t.0.join("staged");
    let mut bytes = quorate_storage::snapshot_file_head(&at10).unwrap();
    bytes.extend_from_slice(&data);
    std::fs::write(&staged, &bytes).unwrap();
    let inode = std::fs::metadata(&staged).unwrap().ino();
    let adopted = s.adopt_snapshot(&staged, at10.clone(), data.len() as u64, crc).unwrap();
    assert_eq!(adopted, written, "the same path, metadata, length and CRC-32");
    assert_eq!(std::fs::read(&adopted.path).unwrap(), reference, "byte for byte the writer's file");
    assert_eq!(std::fs::metadata(&adopted.path).unwrap().ino(), inode, "renamed, not copied");
    assert!(!staged.exists());
    let mut r = quorate_storage::SnapshotReader::open(&adopted.path).unwrap();
    let mut back = Vec::new();
    r.read_to_end(&mut back).unwrap();
    assert_eq!(back, data);
    // Refused: a short file, and a file whose head is another snapshot's.
    let at20 = SnapshotMeta { last: EntryId::new(Term(1), LogIndex(20)), config: voters(&[1]) };
    std::fs::write(&staged, &bytes[..bytes.len() - 1]).unwrap();
    assert!(s.adopt_snapshot(&staged, at10.clone(), data.len() as u64, crc).is_err(), "one byte short");
    std::fs::write(&staged, &bytes).unwrap();
    assert!(s.adopt_snapshot(&staged, at20, data.len() as u64, crc).is_err(), "the head of snapshot 10");
    assert_eq!(std::fs::read(&staged).unwrap(), bytes, "a refused file is left as it was");
}
