//! Failpoints: faults the operating system cannot give a test, injected into a running node.
//! Off unless the configuration turns on `limits.danger_failpoints` (a danger setting, shown
//! in status); when off every hook is a no-op that reads one boolean.
//!
//! When on, the node polls the file [`FILE_NAME`] in its data directory every
//! [`POLL_INTERVAL`] and applies what it says (a missing file means every fault off):
//!
//! ```toml
//! slow_disk_ms = 200   # delay every persist completion (a slow fsync) by this much
//! disk_full = true     # the free-space check reports "below the floor": writes are refused
//! clock_rate = 0.5     # the node's monotonic clock runs at this rate (0.01..=100)
//! disk_full_store = true     # the store's own floor reports full: appends wait for space
//! fsync_error = "eio"        # every consensus write fails: "eio", "eio-after-write", "enospc"
//! corrupt_wal = 1            # each new value: flip a byte in a record of the newest WAL
//! tear_wal = 1               # each new value: cut the newest WAL's last records, then crash
//! tear_wal_records = 1       # how many records from the end are lost (1..=4096)
//! corrupt_table = 1          # each new value: flip a byte in a table file of `corrupt_table_cf`
//! corrupt_table_cf = "sm"    # "sm" (state machine, the default) or "log"
//! slow_resolve_ms = 3000  # every resolution of a member's address takes this much longer
//! slow_apply_ms = 50   # the apply thread takes this much longer over every message
//! slow_read_ms = 2000  # every read the node serves takes this much longer
//! slow_snapshot_ms = 5000  # every snapshot the node writes is held this long before it is finished
//! torn_txn_reads_ms = 20  # TEST-ONLY WEAKENING: read-only transactions read key by key, live
//! watch_events = "drop"    # TEST-ONLY WEAKENING: "drop" the last event of each watch answer,
//!                          # or "duplicate" its first
//! lease_expire_delay_ms = 6000  # TEST-ONLY WEAKENING: the leader proposes a lease's expiry
//!                               # this much after its deadline
//! kill_apply_thread = true  # the apply thread panics at its next turn (within 250 ms)
//! ```
//!
//! * **Slow disk**: the delay runs on the group committer's writer thread after each batch's
//!   write and fsync, before its completion is reported (a group of several batches is held
//!   once per batch; on the runtime engine through `RocksLog::observe_writes`). The consensus
//!   core therefore sees a slow fsync: nothing counts as persisted, and no later group is
//!   written, until it passes.
//! * **Disk full**: the write path's free-space check fails, as on a full disk.
//! * **Slow name resolution**: resolving a member's address (`member add`, an address learned
//!   from the log, the peers at start) waits this long first, as a DNS server that does not
//!   answer would make it.
//! * **Slow apply**: the apply thread sleeps this long before handling each message from the
//!   driver (entries, reads, snapshots), as a large scan or a slow disk would make it.
//! * **Slow snapshots**: each snapshot of the state machine the node takes (the one the
//!   consensus core asks for) is held, its data written to the temporary file, for this long
//!   before it is finished (fsynced, renamed, reported), on whichever thread writes it, as a
//!   large state machine on a slow disk would make it. Clearing the setting ends a wait.
//! * **Slow reads**: serving each read (a get, a scan page, a read-only transaction page)
//!   takes this much longer, as a read of many large values would, on whichever thread serves
//!   it.
//! * **Dead apply thread**: the apply thread panics at its next turn, idle or not (it wakes
//!   every 250 ms), as a bug in the state machine would make it: the node must stop at once
//!   with that reason, not at the next commit.
//! * **Clock**: the time either engine feeds the core (elections, heartbeats, leases) runs at
//!   `clock_rate` from the moment the rate is read; it stays monotonic (the runtime engine's
//!   [`NodeClock`], whose timers wait the real time the skewed clock takes). A leader whose clock is
//!   slow believes its lease for longer than the other nodes wait before electing a new leader,
//!   which is the timing assumption lease reads rest on.
//! * **Store full**: the store's own free-space floor reports full, so appends are refused and
//!   the group committer holds them until the fault is cleared (a follower stalls, as at a real
//!   full disk), while hard-state writes (votes) still go through.
//! * **fsync errors**: every write of the consensus path fails as an `fsync` would
//!   ([`quorate_storage::WriteFault`]): `eio` (nothing written, the store is poisoned and the
//!   node stops), `eio-after-write` (the data reaches the disk, the report fails: an unknown
//!   outcome), `enospc` (RocksDB's out-of-space error: nothing applied, retried until cleared).
//! * **Disk damage** (one-shot, [`quorate_storage::faults`]): each *change* of `corrupt_wal`,
//!   `tear_wal` or `corrupt_table` to a new non-zero value seen while the node runs damages the
//!   store's files once (the value at start is only remembered, so a restarted node is not
//!   damaged again by a file that still holds it). `corrupt_wal` flips a byte of a record in the
//!   middle of the newest write-ahead log (seen at the next start: the node refuses to start,
//!   with evidence, unless RocksDB retired that log first); `tear_wal` cuts the newest log in
//!   the middle of its last record and aborts the process at once, as a power failure that
//!   loses a synced write would (the durable mark catches the loss at the next start);
//!   `corrupt_table` flips a byte in the first data block of the newest table file of the
//!   column family (the state machine's is repaired from the local snapshot when read).
//! * **Torn transaction reads** (a weakening, not a fault: it breaks a guarantee on purpose,
//!   as evidence that the transaction checker catches it): a read-only transaction is no longer
//!   served from one consistent view; each of its gets reads the live state machine, this many
//!   milliseconds after the previous one, so writes applied in between show in some of its
//!   results and not in others (read skew: `G-single` in `quorate_check::txn`). Replicas stay
//!   identical: only what this node answers to reads changes.
//! * **Weakened watch answers** (a weakening, as evidence that the watch checker of
//!   `cargo xtask chaos` catches it): every watch answer with events this node serves loses its
//!   last event (`"drop"`: a gap, the answer still claims to be complete) or carries its first
//!   event twice (`"duplicate"`). The event index itself is untouched.
//! * **Late lease expiry** (a weakening, as evidence that the lease checker of
//!   `cargo xtask chaos` catches it): the leader's sweep proposes a lease's expiry only this
//!   many milliseconds after its deadline, so leased keys outlive the documented bound
//!   (docs/consistency.md, *Leases*). Keep-alives and their answers are untouched.

use quorate_storage::{RocksStore, WriteFault};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// The control file, in the node's data directory.
pub(crate) const FILE_NAME: &str = "failpoints.toml";

/// How often the control file is read.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The largest slow-disk delay accepted.
pub(crate) const SLOW_DISK_MS_MAX: u64 = 60_000;

/// The most write-ahead-log records `tear_wal` may cut.
pub(crate) const TEAR_RECORDS_MAX: u64 = 4096;

/// How often a held snapshot reads the slow-snapshot setting again.
const HOLD_CHECK_EVERY: Duration = Duration::from_millis(10);

/// Largest control file read, in bytes.
const FILE_BYTES_MAX: u64 = 64 * 1024;

/// What the control file may say. Unknown fields are refused.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Settings {
    /// Delay before each persist completion, in milliseconds (0: off).
    pub(crate) slow_disk_ms: u64,
    /// Report the disk as full.
    pub(crate) disk_full: bool,
    /// Rate of the node's clock (1.0: real time).
    pub(crate) clock_rate: f64,
    /// Send this node's applied-hash samples to its peers with one bit flipped: their
    /// cross-replica check must report a `cross_replica_hash` violation.
    pub(crate) corrupt_hash_samples: bool,
    /// The store's own free-space floor reports full (appends wait for space).
    pub(crate) disk_full_store: bool,
    /// Fail every consensus write: `""` (off), `"eio"`, `"eio-after-write"` or `"enospc"`.
    pub(crate) fsync_error: String,
    /// A new non-zero value flips a byte of a record of the newest write-ahead log.
    pub(crate) corrupt_wal: u64,
    /// A new non-zero value cuts the newest write-ahead log in its last records and aborts.
    pub(crate) tear_wal: u64,
    /// How many records from the end `tear_wal` loses (1: the last one).
    pub(crate) tear_wal_records: u64,
    /// A new non-zero value flips a byte in a table file of `corrupt_table_cf`.
    pub(crate) corrupt_table: u64,
    /// The column family of `corrupt_table`: `"sm"` or `"log"`.
    pub(crate) corrupt_table_cf: String,
    /// Delay before each resolution of a member's address, in milliseconds (0: off).
    pub(crate) slow_resolve_ms: u64,
    /// Delay of the apply thread before each message it handles, in milliseconds (0: off).
    pub(crate) slow_apply_ms: u64,
    /// Delay of each read served, in milliseconds (0: off).
    pub(crate) slow_read_ms: u64,
    /// Hold of each snapshot written before it is finished, in milliseconds (0: off).
    pub(crate) slow_snapshot_ms: u64,
    /// Serve read-only transactions key by key from the live state, this many milliseconds
    /// apart, instead of from one view (0: off). A test-only weakening.
    pub(crate) torn_txn_reads_ms: u64,
    /// The apply thread panics at its next turn.
    pub(crate) kill_apply_thread: bool,
    /// Weaken watch answers: `""` (off), `"drop"` or `"duplicate"`. A test-only weakening.
    pub(crate) watch_events: String,
    /// Propose a lease's expiry this many milliseconds after its deadline (0: off). A
    /// test-only weakening.
    pub(crate) lease_expire_delay_ms: u64,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            slow_disk_ms: 0,
            disk_full: false,
            clock_rate: 1.0,
            corrupt_hash_samples: false,
            slow_resolve_ms: 0,
            slow_apply_ms: 0,
            slow_read_ms: 0,
            slow_snapshot_ms: 0,
            torn_txn_reads_ms: 0,
            kill_apply_thread: false,
            disk_full_store: false,
            fsync_error: String::new(),
            corrupt_wal: 0,
            tear_wal: 0,
            tear_wal_records: 1,
            corrupt_table: 0,
            corrupt_table_cf: "sm".into(),
            watch_events: String::new(),
            lease_expire_delay_ms: 0,
        }
    }
}

impl Settings {
    /// The write fault `fsync_error` names.
    fn write_fault(&self) -> Option<WriteFault> {
        match self.fsync_error.as_str() {
            "eio" => Some(WriteFault::Eio { after_write: false }),
            "eio-after-write" => Some(WriteFault::Eio { after_write: true }),
            "enospc" => Some(WriteFault::NoSpace),
            _ => None,
        }
    }
}

/// Why a control file was not applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum FailpointError {
    /// The file is not valid TOML of the expected shape.
    #[error("{path}: {detail}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A value is out of range.
    #[error("{path}: {detail}")]
    Range {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

impl Settings {
    /// Parses and checks the text of a control file.
    pub(crate) fn parse(text: &str, path: &Path) -> Result<Settings, FailpointError> {
        let s: Settings = toml::from_str(text)
            .map_err(|e| FailpointError::Parse { path: path.to_path_buf(), detail: e.to_string() })?;
        for (name, ms) in [
            ("slow_disk_ms", s.slow_disk_ms),
            ("slow_resolve_ms", s.slow_resolve_ms),
            ("slow_apply_ms", s.slow_apply_ms),
            ("slow_read_ms", s.slow_read_ms),
            ("slow_snapshot_ms", s.slow_snapshot_ms),
            ("torn_txn_reads_ms", s.torn_txn_reads_ms),
            ("lease_expire_delay_ms", s.lease_expire_delay_ms),
        ] {
            if ms > SLOW_DISK_MS_MAX {
                return Err(FailpointError::Range {
                    path: path.to_path_buf(),
                    detail: format!("{name} must be at most {SLOW_DISK_MS_MAX}"),
                });
            }
        }
        if !(0.01..=100.0).contains(&s.clock_rate) {
            return Err(FailpointError::Range {
                path: path.to_path_buf(),
                detail: "clock_rate must be between 0.01 and 100".into(),
            });
        }
        if !matches!(s.fsync_error.as_str(), "" | "eio" | "eio-after-write" | "enospc") {
            return Err(FailpointError::Range {
                path: path.to_path_buf(),
                detail: "fsync_error must be \"\", \"eio\", \"eio-after-write\" or \"enospc\"".into(),
            });
        }
        if !(1..=TEAR_RECORDS_MAX).contains(&s.tear_wal_records) {
            return Err(FailpointError::Range {
                path: path.to_path_buf(),
                detail: format!("tear_wal_records must be between 1 and {TEAR_RECORDS_MAX}"),
            });
        }
        if WatchWeakening::parse(&s.watch_events).is_none() {
            return Err(FailpointError::Range {
                path: path.to_path_buf(),
                detail: "watch_events must be \"\", \"drop\" or \"duplicate\"".into(),
            });
        }
        if !matches!(s.corrupt_table_cf.as_str(), "sm" | "log") {
            return Err(FailpointError::Range {
                path: path.to_path_buf(),
                detail: "corrupt_table_cf must be \"sm\" or \"log\"".into(),
            });
        }
        Ok(s)
    }
}

/// How the `watch_events` weakening changes a watch answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WatchWeakening {
    /// The answer's last event is left out.
    Drop,
    /// The answer's first event is sent twice.
    Duplicate,
}

impl WatchWeakening {
    /// `Some(None)`: off; `None`: not a known value.
    fn parse(text: &str) -> Option<Option<WatchWeakening>> {
        match text {
            "" => Some(None),
            "drop" => Some(Some(WatchWeakening::Drop)),
            "duplicate" => Some(Some(WatchWeakening::Duplicate)),
            _ => None,
        }
    }

    fn code(w: Option<WatchWeakening>) -> u8 {
        match w {
            None => 0,
            Some(WatchWeakening::Drop) => 1,
            Some(WatchWeakening::Duplicate) => 2,
        }
    }

    /// Applies the weakening to `events` (a watch answer's).
    pub(crate) fn apply<T: Clone>(self, events: &mut Vec<T>) {
        match self {
            WatchWeakening::Drop => {
                events.pop();
            }
            WatchWeakening::Duplicate => {
                if let Some(first) = events.first().cloned() {
                    events.insert(0, first);
                }
            }
        }
    }
}

/// The skewed clock: `virtual = base_virtual + (real - base_real) × rate`.
#[derive(Debug)]
struct Clock {
    base_real: Duration,
    base_virtual: Duration,
    rate: f64,
    /// A new rate, applied at the next reading.
    pending: Option<f64>,
}

#[derive(Debug)]
struct Inner {
    enabled: bool,
    slow_disk_ms: AtomicU64,
    disk_full: AtomicBool,
    corrupt_hash_samples: AtomicBool,
    slow_resolve_ms: AtomicU64,
    slow_apply_ms: AtomicU64,
    slow_read_ms: AtomicU64,
    slow_snapshot_ms: AtomicU64,
    torn_txn_reads_ms: AtomicU64,
    kill_apply_thread: AtomicBool,
    /// [`WatchWeakening::code`] of the `watch_events` weakening.
    watch_events: std::sync::atomic::AtomicU8,
    lease_expire_delay_ms: AtomicU64,
    clock: Mutex<Clock>,
    disk: Mutex<Disk>,
}

/// The store-facing faults: what is set, the one-shot counters last seen, the store.
#[derive(Debug, Default)]
struct Disk {
    store: Option<Weak<RocksStore>>,
    /// The store's floor before the fault.
    floor: u64,
    full: bool,
    fault: Option<WriteFault>,
    /// `corrupt_wal`, `tear_wal`, `corrupt_table` last seen (`None`: nothing read yet; the
    /// first values are only remembered).
    seen: Option<(u64, u64, u64)>,
}

/// A handle on the node's failpoints (cheap to clone).
#[derive(Clone, Debug)]
pub(crate) struct Failpoints {
    inner: Arc<Inner>,
}

impl Failpoints {
    /// Failpoints that never fire.
    #[must_use]
    pub(crate) fn disabled() -> Failpoints {
        Failpoints::new(false)
    }

    fn new(enabled: bool) -> Failpoints {
        let clock = Clock { base_real: Duration::ZERO, base_virtual: Duration::ZERO, rate: 1.0, pending: None };
        Failpoints {
            inner: Arc::new(Inner {
                enabled,
                slow_disk_ms: AtomicU64::new(0),
                disk_full: AtomicBool::new(false),
                corrupt_hash_samples: AtomicBool::new(false),
                slow_resolve_ms: AtomicU64::new(0),
                slow_apply_ms: AtomicU64::new(0),
                slow_read_ms: AtomicU64::new(0),
                slow_snapshot_ms: AtomicU64::new(0),
                torn_txn_reads_ms: AtomicU64::new(0),
                kill_apply_thread: AtomicBool::new(false),
                watch_events: std::sync::atomic::AtomicU8::new(0),
                lease_expire_delay_ms: AtomicU64::new(0),
                clock: Mutex::new(clock),
                disk: Mutex::new(Disk::default()),
            }),
        }
    }

    /// Gives the disk faults the store they act on, and applies the ones already set.
    pub(crate) fn attach_store(&self, store: &Arc<RocksStore>) {
        if !self.inner.enabled {
            return;
        }
        let mut d = self.inner.disk.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        d.store = Some(Arc::downgrade(store));
        d.floor = store.free_space_floor();
        apply_store_faults(&d, store);
    }

    /// With `enabled`, failpoints controlled by `data_dir/`[`FILE_NAME`], polled by a small
    /// thread that ends when the last handle is dropped; otherwise [`Failpoints::disabled`].
    #[must_use]
    pub(crate) fn start(data_dir: &Path, enabled: bool) -> Failpoints {
        if !enabled {
            return Failpoints::disabled();
        }
        let fp = Failpoints::new(true);
        let weak = Arc::downgrade(&fp.inner);
        let path = data_dir.join(FILE_NAME);
        tracing::warn!(file = %path.display(), "DANGER: failpoints are enabled");
        let spawned = std::thread::Builder::new().name("quorate-failpoints".into()).spawn(move || poll(&weak, &path));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the failpoint thread; failpoints stay off");
        }
        fp
    }

    /// Applies settings (from the control file, or a test).
    pub(crate) fn apply(&self, s: &Settings) {
        if !self.inner.enabled {
            return;
        }
        self.inner.slow_disk_ms.store(s.slow_disk_ms.min(SLOW_DISK_MS_MAX), Ordering::Relaxed);
        self.inner.disk_full.store(s.disk_full, Ordering::Relaxed);
        self.inner.corrupt_hash_samples.store(s.corrupt_hash_samples, Ordering::Relaxed);
        self.inner.slow_resolve_ms.store(s.slow_resolve_ms.min(SLOW_DISK_MS_MAX), Ordering::Relaxed);
        self.inner.slow_apply_ms.store(s.slow_apply_ms.min(SLOW_DISK_MS_MAX), Ordering::Relaxed);
        self.inner.slow_read_ms.store(s.slow_read_ms.min(SLOW_DISK_MS_MAX), Ordering::Relaxed);
        self.inner.slow_snapshot_ms.store(s.slow_snapshot_ms.min(SLOW_DISK_MS_MAX), Ordering::Relaxed);
        self.inner.torn_txn_reads_ms.store(s.torn_txn_reads_ms.min(SLOW_DISK_MS_MAX), Ordering::Relaxed);
        self.inner.kill_apply_thread.store(s.kill_apply_thread, Ordering::Relaxed);
        let watch = WatchWeakening::parse(&s.watch_events).flatten();
        self.inner.watch_events.store(WatchWeakening::code(watch), Ordering::Relaxed);
        self.inner.lease_expire_delay_ms.store(s.lease_expire_delay_ms.min(SLOW_DISK_MS_MAX), Ordering::Relaxed);
        {
            let mut c = self.inner.clock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if (c.rate - s.clock_rate).abs() > f64::EPSILON || c.pending.is_some() {
                c.pending = Some(s.clock_rate.clamp(0.01, 100.0));
            }
        }
        let mut d = self.inner.disk.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        d.full = s.disk_full_store;
        d.fault = s.write_fault();
        let counters = (s.corrupt_wal, s.tear_wal, s.corrupt_table);
        let previous = d.seen.replace(counters);
        let store = d.store.as_ref().and_then(Weak::upgrade);
        if let Some(store) = &store {
            apply_store_faults(&d, store);
        }
        drop(d);
        let Some((wal, tear, table)) = previous else { return };
        let Some(store) = store else { return };
        if s.corrupt_wal != 0 && s.corrupt_wal != wal {
            match quorate_storage::faults::corrupt_wal_record(store.dir()) {
                Ok(Some(r)) => {
                    tracing::warn!(file = %r.file.display(), offset = r.offset, what = %r.what, "failpoint: write-ahead log damaged")
                }
                Ok(None) => tracing::warn!("failpoint: the newest write-ahead log has too few records to damage"),
                Err(e) => tracing::warn!(error = %e, "failpoint: cannot damage the write-ahead log"),
            }
        }
        if s.corrupt_table != 0 && s.corrupt_table != table {
            let newest = store.table_files(&s.corrupt_table_cf).map(|f| f.last().cloned());
            match newest {
                Ok(Some((path, _))) => match quorate_storage::faults::corrupt_table_file(&path) {
                    Ok(r) => {
                        tracing::warn!(file = %r.file.display(), offset = r.offset, what = %r.what, "failpoint: table file damaged")
                    }
                    Err(e) => tracing::warn!(error = %e, "failpoint: cannot damage a table file"),
                },
                Ok(None) => tracing::warn!(cf = %s.corrupt_table_cf, "failpoint: no table file to damage yet"),
                Err(e) => tracing::warn!(error = %e, "failpoint: cannot list table files"),
            }
        }
        if s.tear_wal != 0 && s.tear_wal != tear {
            // With writes stopped until the process is gone: a write appended after the cut
            // would leave a hole in the log (damage in its middle), not a lost tail.
            store.danger_with_writes_stopped(|| {
                match quorate_storage::faults::tear_wal_tail(store.dir(), s.tear_wal_records as usize) {
                    Ok(Some(r)) => {
                        tracing::error!(file = %r.file.display(), offset = r.offset, what = %r.what, "failpoint: write-ahead log torn; crashing now (as at a power failure)");
                        std::process::abort();
                    }
                    Ok(None) => tracing::warn!("failpoint: the newest write-ahead log has no record to tear"),
                    Err(e) => tracing::warn!(error = %e, "failpoint: cannot tear the write-ahead log"),
                }
            });
        }
    }

    /// The slow-disk delay, if that fault is on.
    #[must_use]
    pub(crate) fn fsync_delay(&self) -> Option<Duration> {
        if !self.inner.enabled {
            return None;
        }
        let ms = self.inner.slow_disk_ms.load(Ordering::Relaxed);
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    /// Sleeps for the slow-disk delay, if on (call on the persistence thread only).
    pub(crate) fn before_persist_completion(&self) {
        if let Some(d) = self.fsync_delay() {
            std::thread::sleep(d);
        }
    }

    /// The slow-resolution delay, if that fault is on.
    #[must_use]
    pub(crate) fn resolve_delay(&self) -> Option<Duration> {
        let ms = if self.inner.enabled { self.inner.slow_resolve_ms.load(Ordering::Relaxed) } else { 0 };
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    /// Sleeps for the slow-apply delay, if on (call on the apply thread only).
    pub(crate) fn before_apply(&self) {
        let ms = if self.inner.enabled { self.inner.slow_apply_ms.load(Ordering::Relaxed) } else { 0 };
        if ms > 0 {
            std::thread::sleep(Duration::from_millis(ms));
        }
    }

    /// Panics if the dead-apply-thread fault is on (call on the apply thread only, at each
    /// of its turns).
    pub(crate) fn apply_turn(&self) {
        if self.inner.enabled && self.inner.kill_apply_thread.load(Ordering::Relaxed) {
            tracing::error!("failpoint: killing the apply thread");
            panic!("failpoint: the apply thread was killed");
        }
    }

    /// Sleeps for the slow-read delay, if on (call where a read is served).
    pub(crate) fn before_read(&self) {
        let ms = if self.inner.enabled { self.inner.slow_read_ms.load(Ordering::Relaxed) } else { 0 };
        if ms > 0 {
            std::thread::sleep(Duration::from_millis(ms));
        }
    }

    /// Holds a snapshot whose data is written, before it is finished, while the slow-snapshot
    /// setting asks for more than the time since `started` (read again every
    /// [`HOLD_CHECK_EVERY`], so clearing it ends the wait) and `stop()` is false.
    pub(crate) fn hold_snapshot(&self, started: std::time::Instant, stop: impl Fn() -> bool) {
        if !self.inner.enabled {
            return;
        }
        loop {
            let ms = self.inner.slow_snapshot_ms.load(Ordering::Relaxed);
            if started.elapsed() >= Duration::from_millis(ms) || stop() {
                return;
            }
            std::thread::sleep(HOLD_CHECK_EVERY);
        }
    }

    /// The gap between the gets of a torn read-only transaction, if that weakening is on.
    #[must_use]
    pub(crate) fn torn_txn_reads(&self) -> Option<Duration> {
        let ms = if self.inner.enabled { self.inner.torn_txn_reads_ms.load(Ordering::Relaxed) } else { 0 };
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    /// The weakening of watch answers, if on.
    #[must_use]
    pub(crate) fn watch_weakening(&self) -> Option<WatchWeakening> {
        if !self.inner.enabled {
            return None;
        }
        match self.inner.watch_events.load(Ordering::Relaxed) {
            1 => Some(WatchWeakening::Drop),
            2 => Some(WatchWeakening::Duplicate),
            _ => None,
        }
    }

    /// How long after a lease's deadline the leader proposes its expiry, if that weakening is
    /// on.
    #[must_use]
    pub(crate) fn lease_expire_delay(&self) -> Option<Duration> {
        let ms = if self.inner.enabled { self.inner.lease_expire_delay_ms.load(Ordering::Relaxed) } else { 0 };
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    /// The instant whose lease deadlines a sweep at `now` expires: `now`, or — with the
    /// test-only late-expiry weakening on — `now` minus the delay, so each expiry is proposed
    /// that much after its deadline. `None` while `now` is too early for the delay.
    #[must_use]
    pub(crate) fn lease_due_at(&self, now: std::time::Instant) -> Option<std::time::Instant> {
        match self.lease_expire_delay() {
            None => Some(now),
            Some(delay) => now.checked_sub(delay),
        }
    }

    /// Whether the disk-full fault is on.
    #[must_use]
    pub(crate) fn disk_full(&self) -> bool {
        self.inner.enabled && self.inner.disk_full.load(Ordering::Relaxed)
    }

    /// Whether the samples sent to peers are to be corrupted.
    #[must_use]
    pub(crate) fn corrupt_hash_samples(&self) -> bool {
        self.inner.enabled && self.inner.corrupt_hash_samples.load(Ordering::Relaxed)
    }

    /// The node's time for `real` time since the driver started (skewed by the clock fault).
    /// Monotonic as long as `real` is.
    #[must_use]
    pub(crate) fn clock(&self, real: Duration) -> Duration {
        if !self.inner.enabled {
            return real;
        }
        let mut c = self.inner.clock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let real = real.max(c.base_real);
        let now = c.base_virtual + (real - c.base_real).mul_f64(c.rate);
        if let Some(rate) = c.pending.take() {
            c.base_real = real;
            c.base_virtual = now;
            c.rate = rate;
        }
        now
    }

    /// The real time (since the driver started) at which the node's clock reads `virtual_`;
    /// for timers. Never earlier than the last rate change.
    #[must_use]
    pub(crate) fn real_at(&self, virtual_: Duration) -> Duration {
        if !self.inner.enabled {
            return virtual_;
        }
        let c = self.inner.clock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match virtual_.checked_sub(c.base_virtual) {
            Some(d) => c.base_real + d.div_f64(c.rate),
            None => c.base_real,
        }
    }
}

/// Sets the store's floor and write fault from `d`.
fn apply_store_faults(d: &Disk, store: &RocksStore) {
    store.set_free_space_floor(if d.full { u64::MAX } else { d.floor });
    store.danger_inject_write_fault(d.fault);
}

/// Reads the control file every [`POLL_INTERVAL`] until the failpoints are dropped.
fn poll(weak: &Weak<Inner>, path: &Path) {
    let mut last: Option<String> = None;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let fp = Failpoints { inner };
        let text = match std::fs::metadata(path) {
            // Not TOML: refused with a warning.
            Ok(m) if m.len() > FILE_BYTES_MAX => Some(format!("(file larger than {FILE_BYTES_MAX} bytes)")),
            Ok(_) => std::fs::read_to_string(path).ok(),
            Err(_) => None,
        };
        let text = text.unwrap_or_default();
        if last.as_deref() != Some(text.as_str()) {
            match Settings::parse(&text, path) {
                Ok(s) => {
                    tracing::warn!(?s, "failpoints set");
                    fp.apply(&s);
                }
                Err(e) => tracing::warn!(error = %e, "failpoint file refused; failpoints unchanged"),
            }
            last = Some(text);
        }
        drop(fp);
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// The runtime engine's clock: the process's monotonic clock, skewed by the clock fault
/// (`clock_rate`) as the driver's core clock is, with timers that wait the real time the skewed
/// clock takes to reach them.
#[derive(Clone, Debug)]
pub(crate) struct NodeClock {
    origin: std::time::Instant,
    failpoints: Failpoints,
}

impl NodeClock {
    pub(crate) fn new(failpoints: Failpoints) -> NodeClock {
        NodeClock { origin: std::time::Instant::now(), failpoints }
    }

    /// The clock's reading `real` after its origin.
    fn at(&self, real: Duration) -> quorate_core::Instant {
        quorate_core::Instant(self.failpoints.clock(real).as_nanos().min(u128::from(u64::MAX)) as u64)
    }

    /// The real time from `real` after the origin until the clock reads `at`.
    fn real_until_from(&self, at: quorate_core::Instant, real: Duration) -> Duration {
        self.failpoints.real_at(Duration::from_nanos(at.0)).saturating_sub(real)
    }
}

impl quorate_runtime::Clock for NodeClock {
    fn now(&self) -> quorate_core::Instant {
        self.at(self.origin.elapsed())
    }

    /// With failpoints on, at most [`POLL_INTERVAL`]: a new rate starts at the next reading,
    /// so a wait computed at the old rate is cut short to take it up.
    fn real_until(&self, at: quorate_core::Instant) -> Duration {
        let wait = self.real_until_from(at, self.origin.elapsed());
        if self.failpoints.inner.enabled { wait.min(POLL_INTERVAL) } else { wait }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_failpoints_never_fire() {
        let fp = Failpoints::disabled();
        fp.apply(&Settings {
            slow_disk_ms: 100,
            disk_full: true,
            clock_rate: 2.0,
            corrupt_hash_samples: true,
            slow_resolve_ms: 5,
            slow_apply_ms: 5,
            slow_read_ms: 5,
            slow_snapshot_ms: SLOW_DISK_MS_MAX,
            torn_txn_reads_ms: 5,
            watch_events: "drop".into(),
            lease_expire_delay_ms: 6000,
            ..Settings::default()
        });
        // Returns at once (a hold would outlast the test's time limit).
        fp.hold_snapshot(std::time::Instant::now(), || false);
        assert_eq!(fp.resolve_delay(), None);
        assert_eq!(fp.lease_expire_delay(), None);
        assert_eq!(fp.watch_weakening(), None);
        assert_eq!(fp.torn_txn_reads(), None);
        assert!(!fp.disk_full());
        assert!(!fp.corrupt_hash_samples());
        assert_eq!(fp.fsync_delay(), None);
        assert_eq!(fp.clock(Duration::from_secs(3)), Duration::from_secs(3));
        assert_eq!(fp.real_at(Duration::from_secs(3)), Duration::from_secs(3));
    }

    #[test]
    fn a_held_snapshot_is_released_by_clearing_the_setting_or_by_stop() {
        let fp = Failpoints::new(true);
        fp.apply(&Settings { slow_snapshot_ms: SLOW_DISK_MS_MAX, ..Settings::default() });
        fp.hold_snapshot(std::time::Instant::now(), || true);
        let (done_tx, done) = std::sync::mpsc::channel();
        let holder = {
            let fp = fp.clone();
            std::thread::spawn(move || {
                fp.hold_snapshot(std::time::Instant::now(), || false);
                done_tx.send(()).unwrap();
            })
        };
        assert!(done.recv_timeout(Duration::from_millis(50)).is_err(), "held while the setting asks for more");
        fp.apply(&Settings::default());
        done.recv_timeout(Duration::from_secs(10)).expect("released once the setting is cleared");
        holder.join().unwrap();
    }

    #[test]
    fn settings_parse_and_refuse_bad_values() {
        let p = Path::new("failpoints.toml");
        let s =
            Settings::parse("slow_disk_ms = 5\ndisk_full = true\nclock_rate = 0.5\ncorrupt_hash_samples = true\n", p)
                .unwrap();
        assert_eq!(
            s,
            Settings {
                slow_disk_ms: 5,
                disk_full: true,
                clock_rate: 0.5,
                corrupt_hash_samples: true,
                ..Settings::default()
            }
        );
        let s = Settings::parse("slow_resolve_ms = 3000\nslow_apply_ms = 50\nslow_read_ms = 2000\n", p).unwrap();
        assert_eq!((s.slow_resolve_ms, s.slow_apply_ms, s.slow_read_ms), (3000, 50, 2000));
        assert!(Settings::parse("slow_read_ms = 999999", p).is_err());
        assert_eq!(Settings::parse("torn_txn_reads_ms = 20", p).unwrap().torn_txn_reads_ms, 20);
        assert!(Settings::parse("torn_txn_reads_ms = 999999", p).is_err());
        assert_eq!(Settings::parse("lease_expire_delay_ms = 6000", p).unwrap().lease_expire_delay_ms, 6000);
        assert!(
            Settings::parse("lease_expire_delay_ms = 999999", p)
                .unwrap_err()
                .to_string()
                .contains("lease_expire_delay_ms")
        );
        let fp = Failpoints::new(true);
        fp.apply(&Settings { lease_expire_delay_ms: 6000, ..Settings::default() });
        assert_eq!(fp.lease_expire_delay(), Some(Duration::from_secs(6)));
        fp.apply(&Settings::default());
        assert_eq!(fp.lease_expire_delay(), None);
        let s = Settings::parse("watch_events = \"duplicate\"", p).unwrap();
        assert_eq!(WatchWeakening::parse(&s.watch_events), Some(Some(WatchWeakening::Duplicate)));
        assert!(Settings::parse("watch_events = \"lose\"", p).unwrap_err().to_string().contains("watch_events"));
        let fp = Failpoints::new(true);
        fp.apply(&Settings { watch_events: "drop".into(), ..Settings::default() });
        let mut events = vec![1, 2, 3];
        fp.watch_weakening().expect("on").apply(&mut events);
        assert_eq!(events, [1, 2]);
        fp.apply(&Settings { watch_events: "duplicate".into(), ..Settings::default() });
        fp.watch_weakening().expect("on").apply(&mut events);
        assert_eq!(events, [1, 1, 2]);
        fp.apply(&Settings::default());
        assert_eq!(fp.watch_weakening(), None);
        assert!(Settings::parse("slow_resolve_ms = 999999", p).is_err());
        assert_eq!(Settings::parse("", p).unwrap(), Settings::default());
        assert!(Settings::parse("slow_disk = 5", p).unwrap_err().to_string().contains("slow_disk"));
        assert!(Settings::parse("clock_rate = 0", p).unwrap_err().to_string().contains("clock_rate"));
        assert!(Settings::parse("slow_disk_ms = 999999", p).is_err());
        let disk = "disk_full_store = true\nfsync_error = \"eio-after-write\"\ncorrupt_wal = 2\ntear_wal = 1\ncorrupt_table = 3\ncorrupt_table_cf = \"log\"\n";
        let s = Settings::parse(disk, p).unwrap();
        assert_eq!(s.write_fault(), Some(WriteFault::Eio { after_write: true }));
        assert_eq!((s.corrupt_wal, s.tear_wal, s.corrupt_table, s.corrupt_table_cf.as_str()), (2, 1, 3, "log"));
        assert!(Settings::parse("fsync_error = \"ebusy\"", p).unwrap_err().to_string().contains("fsync_error"));
        assert!(
            Settings::parse("corrupt_table_cf = \"meta\"", p).unwrap_err().to_string().contains("corrupt_table_cf")
        );
        assert_eq!(Settings::default().write_fault(), None);
    }

    #[test]
    fn skewed_clock_is_monotonic_and_invertible() {
        let fp = Failpoints::new(true);
        let s = Duration::from_secs;
        assert_eq!(fp.clock(s(10)), s(10));
        fp.apply(&Settings { clock_rate: 0.5, ..Settings::default() });
        // The new rate starts at the next reading.
        assert_eq!(fp.clock(s(12)), s(12));
        assert_eq!(fp.clock(s(14)), s(13));
        assert_eq!(fp.real_at(s(14)), s(16));
        // Earlier real times never make the clock go back.
        assert_eq!(fp.clock(s(1)), s(12));
        fp.apply(&Settings::default());
        assert_eq!(fp.clock(s(16)), s(14));
        assert_eq!(fp.clock(s(18)), s(16));
        fp.apply(&Settings {
            slow_disk_ms: 7,
            disk_full: true,
            clock_rate: 1.0,
            corrupt_hash_samples: true,
            slow_resolve_ms: 9,
            slow_apply_ms: 0,
            ..Settings::default()
        });
        assert_eq!(fp.resolve_delay(), Some(Duration::from_millis(9)));
        assert!(fp.disk_full());
        assert!(fp.corrupt_hash_samples());
        assert_eq!(fp.fsync_delay(), Some(Duration::from_millis(7)));
    }

    #[test]
    fn the_runtime_engines_clock_is_skewed_and_its_timers_wait_the_real_time() {
        let fp = Failpoints::new(true);
        let clock = NodeClock::new(fp.clone());
        let s = Duration::from_secs;
        let at = |d: Duration| quorate_core::Instant(d.as_nanos() as u64);
        assert_eq!(clock.at(s(4)), at(s(4)));
        assert_eq!(clock.real_until_from(at(s(6)), s(4)), s(2));
        // Twice as fast from the next reading (4 s): reading 6 s comes after 1 s of real time.
        fp.apply(&Settings { clock_rate: 2.0, ..Settings::default() });
        assert_eq!(clock.at(s(4)), at(s(4)));
        assert_eq!(clock.real_until_from(at(s(6)), s(4)), s(1));
        assert_eq!(clock.at(s(5)), at(s(6)));
        assert_eq!(clock.real_until_from(at(s(6)), s(5)), Duration::ZERO, "due");
        // A timer far off waits at most a poll interval (a new rate is taken up), unless
        // failpoints are off.
        use quorate_runtime::Clock as _;
        assert_eq!(clock.real_until(at(s(3600))), POLL_INTERVAL);
        let off = NodeClock::new(Failpoints::new(false));
        assert!(off.real_until(at(s(3600))) > s(3000));
        // Off: the clock reads real time.
        assert_eq!(off.at(s(9)), at(s(9)));
        assert_eq!(off.real_until_from(at(s(10)), s(9)), s(1));
    }
}
