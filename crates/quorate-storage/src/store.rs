//! [`RocksStore`]: the durable store on RocksDB.

use crate::FORMAT_VERSION;
use crate::batch::{DurableLog, PersistBatch, Plan, SmOp, Tail};
use crate::codec::{
    self, CF_LOG, CF_META, CF_SM, CF_SNAP, CFS, Cf, EntryOwned, KEY_APPLIED, KEY_CFG_PREFIX, KEY_FORMAT, KEY_HARD,
    KEY_SNAP_META, SM_PREFIX, SM_PREFIX_END, cfg_key, key_name, log_key, parse_index, sm_key,
};
use crate::durable::{self, LostStateRecord, Mark, MarkWriter};
use crate::error::StoreError;
use crate::snapshot::{self, SnapshotFile, SnapshotReader, SnapshotWriter};
use crate::space;
use quorate_log::{
    Configuration, Entry, EntryId, EntryPayload, HardState, InitialState, LogIndex, LogStorage, SnapshotMeta,
    StorageError, Term,
};
use rocksdb::{
    AsColumnFamilyRef, BoundColumnFamily, ColumnFamilyDescriptor, DBRecoveryMode, DBWithThreadMode, MultiThreaded,
    Options, ReadOptions, WriteBatch, WriteOptions,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};
use std::time::Duration;

mod install;
mod view;
pub use install::INSTALL_BATCH_BYTES_MAX;
pub use view::SmView;

/// The RocksDB handle: column families can be dropped and created while the store is shared
/// (a state-machine reinstall drops the whole `sm` family, see `install`).
pub(crate) type Db = DBWithThreadMode<MultiThreaded>;

/// At open, the terms of up to this many entries at the tail of the log are loaded (and their
/// checksums verified); older terms are read from disk on demand.
pub const OPEN_SCAN_ENTRIES_MAX: u64 = 1 << 16;
/// The most operations one [`RocksStore::apply`] call may carry.
pub const APPLY_OPS_MAX: usize = 1 << 16;
/// The longest state-machine key.
pub const SM_KEY_BYTES_MAX: usize = 64 << 10;
/// The longest state-machine value.
pub const SM_VALUE_BYTES_MAX: usize = 16 << 20;
/// The most directory entries [`RocksStore::usable_snapshot`] looks at.
const SNAPSHOT_FILES_SCANNED_MAX: usize = 4096;
/// The most pairs one [`RocksStore::sm_scan`] call returns.
pub const SM_SCAN_PAIRS_MAX: usize = 1 << 16;

/// A state-machine key and its value.
pub type SmPair = (Vec<u8>, Vec<u8>);

/// Options for [`RocksStore::open`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StoreOptions {
    /// The configuration a new store starts from (ignored when the store exists).
    pub bootstrap: Configuration,
    /// While the file system has less than this many bytes free, writes that grow the store
    /// are refused with [`StoreError::BelowFreeSpaceFloor`]: batches that append entries and
    /// the data batches of a snapshot install. Writes that free space or are tiny go through
    /// (hard-state-only, compaction, truncation and snapshot-record batches, state-machine
    /// applies of entries already in the log). Zero disables the check. Default:
    /// [`space_needed_bytes`](StoreOptions::space_needed_bytes) of the default write buffer.
    pub free_space_floor_bytes: u64,
    /// Whether [`RocksStore::apply`] fsyncs. Not needed for safety (state-machine data and the
    /// applied index are written atomically, so after a crash both are simply older and the
    /// entries are applied again from the log); default `false`.
    pub sync_apply: bool,
    /// Bytes of one memtable (RocksDB's `write_buffer_size`) of the `log` and `sm` column
    /// families; `meta` and `snap` use a quarter of it. The memtable, write-ahead-log and
    /// compaction budgets follow from it ([`space_needed_bytes`](StoreOptions::space_needed_bytes)).
    /// Default [`WRITE_BUFFER_BYTES_DEFAULT`]; at least [`WRITE_BUFFER_BYTES_MIN`].
    pub write_buffer_bytes: u64,
    /// A synced write that changes neither the term, the vote nor the log (it only moves the
    /// commit index) updates the durable mark (see [`MARK_FILE`](crate::MARK_FILE)) at most
    /// this often; zero: after every synced write. A write that changes the term, the vote or
    /// the log always updates it before it returns. Default [`DURABLE_MARK_INTERVAL_DEFAULT`].
    pub durable_mark_interval: Duration,
    /// Open a store whose durable mark is ahead of what it holds (lost synced state) instead of
    /// refusing it with [`StoreError::LostSyncedState`]: the evidence is kept durably in
    /// [`LOST_STATE_FILE`](crate::LOST_STATE_FILE) before the store opens, and
    /// [`RocksStore::lost_state`] hands it to the node, which must rejoin protocol-aware (no
    /// vote until a leader has caught it up: its consensus core's `Config::recovering`) and
    /// call [`RocksStore::recovered`] once it has. Default `false`: refuse (and refuse a store
    /// that still holds that file).
    pub accept_lost_state: bool,
    /// Bytes of the one block cache every column family shares (RocksDB's LRU cache, with
    /// index and filter blocks inside it, so that they are bounded too). Default
    /// [`BLOCK_CACHE_BYTES_DEFAULT`]; clamped to [`BLOCK_CACHE_BYTES_MIN`]..=[`BLOCK_CACHE_BYTES_MAX`].
    pub block_cache_bytes: u64,
}

/// The default size of the shared block cache.
pub const BLOCK_CACHE_BYTES_DEFAULT: u64 = 64 << 20;
/// The smallest block cache accepted.
pub const BLOCK_CACHE_BYTES_MIN: u64 = 1 << 20;
/// The largest block cache accepted.
pub const BLOCK_CACHE_BYTES_MAX: u64 = 64 << 30;

/// Bits per key of the `sm` family's bloom filters (RocksDB's usual 10: about 1 % false
/// positives).
const SM_BLOOM_BITS_PER_KEY: f64 = 10.0;
/// Share of the `sm` memtable given to its whole-key bloom filter.
const SM_MEMTABLE_BLOOM_RATIO: f64 = 0.02;

/// The default memtable size of the `log` and `sm` column families.
pub const WRITE_BUFFER_BYTES_DEFAULT: u64 = 16 << 20;
/// The smallest memtable size accepted.
pub const WRITE_BUFFER_BYTES_MIN: u64 = 1 << 20;
/// The largest memtable size accepted.
pub const WRITE_BUFFER_BYTES_MAX: u64 = 1 << 30;
/// The default of [`StoreOptions::durable_mark_interval`].
pub const DURABLE_MARK_INTERVAL_DEFAULT: Duration = Duration::from_millis(100);
/// Memtables of the `log` column family (appends arrive in bursts; more memtables absorb a
/// burst while an older one is flushed, instead of stalling the writer).
const LOG_WRITE_BUFFERS: u64 = 4;
/// Memtables of the other column families.
const OTHER_WRITE_BUFFERS: u64 = 2;
/// Level-0 files that start a compaction (RocksDB's default).
const L0_COMPACTION_TRIGGER: u64 = 4;
/// Level-0 files at which RocksDB stops writes until compaction catches up (bounds the size
/// of a level-0 compaction).
const L0_STOP_WRITES: u64 = 12;
/// Level-0 files at which RocksDB slows writes down.
const L0_SLOWDOWN_WRITES: u64 = 8;

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            bootstrap: Configuration::default(),
            free_space_floor_bytes: space_needed(WRITE_BUFFER_BYTES_DEFAULT),
            sync_apply: false,
            write_buffer_bytes: WRITE_BUFFER_BYTES_DEFAULT,
            durable_mark_interval: DURABLE_MARK_INTERVAL_DEFAULT,
            accept_lost_state: false,
            block_cache_bytes: BLOCK_CACHE_BYTES_DEFAULT,
        }
    }
}

impl StoreOptions {
    /// Default options with the given bootstrap configuration.
    #[must_use]
    pub fn with_bootstrap(config: Configuration) -> StoreOptions {
        StoreOptions { bootstrap: config, ..StoreOptions::default() }
    }

    /// The free space RocksDB itself may need at any moment with these options, which is
    /// what the free-space floor must cover: every memtable flushed (the `log` family's
    /// [`LOG_WRITE_BUFFERS`] and two of every other family, [`memtable_budget_bytes`]) plus
    /// the largest compaction ([`compaction_budget_bytes`]). Below it a background flush or
    /// compaction can fail with `ENOSPC` and stop writes.
    ///
    /// [`memtable_budget_bytes`]: StoreOptions::memtable_budget_bytes
    /// [`compaction_budget_bytes`]: StoreOptions::compaction_budget_bytes
    #[must_use]
    pub fn space_needed_bytes(&self) -> u64 {
        space_needed(self.write_buffer())
    }

    /// Bytes of every memtable of every column family at their configured maximum.
    #[must_use]
    pub fn memtable_budget_bytes(&self) -> u64 {
        memtable_budget(self.write_buffer())
    }

    /// Bytes the largest compaction may write: a level-0 compaction of every level-0 file
    /// RocksDB lets accumulate ([`L0_STOP_WRITES`], one memtable each) into level 1
    /// (`max_bytes_for_level_base`, [`L0_COMPACTION_TRIGGER`] memtables), which is also above
    /// `max_compaction_bytes` for the other levels.
    #[must_use]
    pub fn compaction_budget_bytes(&self) -> u64 {
        compaction_budget(self.write_buffer())
    }

    fn block_cache(&self) -> rocksdb::Cache {
        let bytes = self.block_cache_bytes.clamp(BLOCK_CACHE_BYTES_MIN, BLOCK_CACHE_BYTES_MAX);
        rocksdb::Cache::new_lru_cache(usize::try_from(bytes).unwrap_or(usize::MAX))
    }

    fn write_buffer(&self) -> u64 {
        self.write_buffer_bytes.clamp(WRITE_BUFFER_BYTES_MIN, WRITE_BUFFER_BYTES_MAX)
    }
}

fn memtable_budget(w: u64) -> u64 {
    w * LOG_WRITE_BUFFERS + w * OTHER_WRITE_BUFFERS + 2 * (w / 4) * OTHER_WRITE_BUFFERS
}

fn compaction_budget(w: u64) -> u64 {
    w * (L0_STOP_WRITES + L0_COMPACTION_TRIGGER)
}

fn space_needed(w: u64) -> u64 {
    memtable_budget(w) + compaction_budget(w)
}

/// What [`RocksStore::verify`] found (when it found nothing wrong).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Log entries checked (all of them, gap-free).
    pub entries: u64,
    /// State-machine records checked.
    pub sm_records: u64,
    /// Metadata records checked.
    pub meta_records: u64,
}

/// The durable store: a RocksDB database with one column family each for the log (`log`), the
/// hard state, format version, applied index and configuration mirror (`meta`), the snapshot
/// metadata (`snap`) and the application's state-machine data (`sm`), plus a directory of
/// snapshot data files.
///
/// Reads go through [`LogStorage`]; `last_index`, `snapshot_last` and the terms of recent
/// entries are answered from memory. Writes go through [`RocksStore::write`] (one batch, one
/// fsync), [`RocksStore::write_many`] or a [`GroupCommitter`](crate::GroupCommitter) (many
/// batches, one fsync), and [`RocksStore::apply`] (state-machine data).
///
/// After a failed write the store is poisoned: every later write fails with
/// [`StoreError::Poisoned`] and the process should restart and recover from disk.
pub struct RocksStore {
    pub(crate) db: Db,
    dir: PathBuf,
    snap_dir: PathBuf,
    pub(crate) tail: RwLock<Tail>,
    applied: AtomicU64,
    /// The snapshot index of an unfinished state-machine install (0: none); see `install`.
    install_pending: AtomicU64,
    /// Serializes the consensus log's writes ([`RocksStore::write_many`]): their planning
    /// against the tail, their RocksDB write and fsync, the tail's update and the durable mark.
    /// Lock order: `log_lock` before `sm_lock` (see [`RocksStore::exclusive`]).
    log_lock: Mutex<()>,
    /// Serializes the state machine's writes ([`RocksStore::apply`], the batches of a
    /// snapshot install): the applied index only advances, in order. The two never wait for
    /// each other (see the storage section of docs/architecture.md); install, repair and
    /// verification take both.
    sm_lock: Mutex<()>,
    poisoned: Mutex<Option<Poison>>,
    floor: AtomicU64,
    sync: WriteOptions,
    no_sync: WriteOptions,
    apply_opts: WriteOptions,
    /// The durable mark (see `durable`); written under `log_lock`.
    mark: Mutex<Option<MarkWriter>>,
    mark_interval: Duration,
    /// The mark was lowered before a write that removed entries; raise it after the next
    /// synced write whatever the interval.
    mark_lowered: std::sync::atomic::AtomicBool,
    db_dir: PathBuf,
    /// The memtable size the column families were opened with.
    write_buffer: u64,
    /// The block cache every column family shares.
    block_cache: rocksdb::Cache,
    /// An injected write failure (fault testing), see [`RocksStore::danger_inject_write_fault`].
    fault: Mutex<Option<WriteFault>>,
    /// Writes refused for disk space since the open.
    space_refusals: AtomicU64,
    /// Evidence that a table file of the state machine is damaged (see [`SM_DAMAGED_FILE`]).
    sm_damaged: Mutex<Option<String>>,
    /// [`StoreOptions::accept_lost_state`].
    accept_lost_state: bool,
    /// The loss of synced state the node is recovering from (see [`RocksStore::lost_state`]).
    lost_state: Mutex<Option<LostStateRecord>>,
    /// Held for writing while the `sm` column family is dropped and created again
    /// (`recreate_sm`); a handle lookup that misses waits on it (see [`RocksStore::cf`]).
    sm_swap: RwLock<()>,
    /// Hooks that let a test stop inside a window (cfg(test) only).
    #[cfg(test)]
    pub(crate) test_hooks: TestHooks,
}

/// Test hooks of [`RocksStore`].
#[cfg(test)]
#[derive(Default)]
pub(crate) struct TestHooks {
    /// Called inside `recreate_sm` between dropping the `sm` column family and creating it.
    pub(crate) between_drop_and_create: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// Handle lookups that missed and waited for the column family to be created again.
    pub(crate) cf_waits: AtomicU64,
    /// Called inside `write_many` once the log batch is on its way to RocksDB and before it
    /// is durable (a slow fsync, for tests of what may run meanwhile).
    pub(crate) before_log_sync: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// The next `FlushWAL` of a log write fails with this error (the sync step of
    /// `LogSync::Apart`, after the unsynced write reached RocksDB).
    pub(crate) fail_log_sync: Mutex<Option<String>>,
    /// Called inside `sm_view` between looking the `sm` family up and taking the snapshot.
    pub(crate) in_view_before_snapshot: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

/// The file, in the store's directory, that records that RocksDB met a damaged table file of
/// the state machine (in a compaction, which stops RocksDB for good): the next open keeps the
/// state machine's compactions off, and the node reinstalls the state machine (dropping its
/// files unread) before anything else.
pub const SM_DAMAGED_FILE: &str = "sm-damaged";
/// Bytes of evidence kept in [`SM_DAMAGED_FILE`].
const SM_DAMAGED_BYTES_MAX: u64 = 4096;

fn read_sm_damaged(dir: &Path) -> Result<Option<String>, StoreError> {
    let path = dir.join(SM_DAMAGED_FILE);
    match std::fs::metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
        Ok(m) if m.len() > SM_DAMAGED_BYTES_MAX => Ok(Some("(evidence too long to read)".into())),
        Ok(_) => Ok(Some(String::from_utf8_lossy(&std::fs::read(&path)?).into_owned())),
    }
}

/// Why the store refuses or retries writes after a failure.
#[derive(Clone, Debug)]
enum Poison {
    /// Nothing written since can be trusted; every write is refused until restart.
    Fatal(String),
    /// RocksDB ran out of space; it resumes on its own once space is freed (a write that
    /// failed with `ENOSPC` is not applied: RocksDB flushes its memtables and switches to a
    /// new write-ahead log before it accepts writes again). Writes are tried again.
    NoSpace(String),
}

/// A write failure to inject into the consensus write path ([`RocksStore::write_many`]) for
/// fault testing: what an `fsync` that fails looks like to the store.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum WriteFault {
    /// `EIO`: the write fails and the store is poisoned, as after a real failed `fsync`.
    Eio {
        /// The data reaches the disk first and only the report fails (an `fsync` whose
        /// outcome is unknown), instead of nothing being written.
        after_write: bool,
    },
    /// `ENOSPC`, as RocksDB reports it: nothing is applied, and the write may be retried.
    NoSpace,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.tail_read();
        f.debug_struct("RocksStore")
            .field("dir", &self.dir)
            .field("snapshot", &t.snapshot.last)
            .field("last", &t.last)
            .field("hard", &t.hard)
            .field("applied", &self.applied_index())
            .field("poisoned", &self.poisoned())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values are updated only after a write succeeded, never half-way; a panic
    // elsewhere cannot leave them inconsistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn missing(cf: Cf, key: &[u8]) -> StoreError {
    StoreError::Corrupt { key: key_name(cf, key), detail: "record missing".into() }
}

/// How a consensus write is made durable (see `RocksStore::commit_consensus_batch`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum LogSync {
    /// Not synced (commit-only batches).
    None,
    /// A synced RocksDB write.
    InWrite,
    /// An unsynced RocksDB write, then the write-ahead log fsynced outside RocksDB's write queue.
    Apart,
}

/// One operation of a planned write, encoded.
enum Op {
    Put(&'static str, Vec<u8>, Vec<u8>),
    DeleteRange(&'static str, Vec<u8>, Vec<u8>),
}

impl RocksStore {
    /// Opens the store in `dir`, creating it (stamped with [`FORMAT_VERSION`] and
    /// `options.bootstrap`) if it does not exist. Refuses data of an unknown format.
    pub fn open(dir: impl AsRef<Path>, options: StoreOptions) -> Result<RocksStore, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        let db_dir = dir.join("db");
        let snap_dir = dir.join("snapshots");
        std::fs::create_dir_all(&db_dir)?;
        std::fs::create_dir_all(&snap_dir)?;
        snapshot::remove_temporaries(&snap_dir)?;

        let w = options.write_buffer();
        let opts = db_options(w, DBRecoveryMode::TolerateCorruptedTailRecords);
        let manifest_before = durable::current_manifest(&db_dir);
        // The previous mark, armed before the database is opened (which starts a new MANIFEST)
        // if it counts: a refused open or a crash before the new mark leaves it compared again.
        let mark_path = dir.join(durable::MARK_FILE);
        let mut previous = durable::read(&mark_path)?;
        if let Some((seq, mark)) = previous
            && mark.manifest != durable::OPENING
            && (manifest_before.is_none() || manifest_before == Some(mark.manifest))
        {
            let armed = Mark { manifest: durable::OPENING, ..mark };
            drop(MarkWriter::create_or_open(&mark_path, seq, armed)?);
            previous = Some((seq + 1, armed));
        }
        // A state machine known to be damaged (a compaction met a damaged table file of it) is
        // opened without compactions until it is reinstalled, which drops its files unread.
        let sm_damaged = read_sm_damaged(&dir)?;
        let block_cache = options.block_cache();
        let mut cfs = cf_descriptors(w, &block_cache);
        if sm_damaged.is_some() {
            let mut o = cf_options(CF_SM, w, &block_cache);
            o.set_disable_auto_compactions(true);
            cfs.retain(|d| d.name() != CF_SM);
            cfs.push(ColumnFamilyDescriptor::new(CF_SM, o));
        }
        let db = match Db::open_cf_descriptors(&opts, &db_dir, cfs) {
            Ok(db) => db,
            Err(e) => return Err(open_error(&dir, &db_dir, e)),
        };
        for name in CFS {
            if db.cf_handle(name).is_none() {
                return Err(StoreError::Io(format!("column family {name} did not open")));
            }
        }
        let manifest = durable::current_manifest(&db_dir).unwrap_or(0);
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        let mut apply_opts = WriteOptions::default();
        apply_opts.set_sync(options.sync_apply);
        let store = RocksStore {
            db,
            dir,
            snap_dir,
            tail: RwLock::new(Tail::default()),
            applied: AtomicU64::new(0),
            install_pending: AtomicU64::new(0),
            log_lock: Mutex::new(()),
            sm_lock: Mutex::new(()),
            poisoned: Mutex::new(None),
            floor: AtomicU64::new(options.free_space_floor_bytes),
            sync,
            no_sync: WriteOptions::default(),
            apply_opts,
            // Replaced below, once the data is loaded and compared with the previous mark.
            mark: Mutex::new(None),
            mark_interval: options.durable_mark_interval,
            mark_lowered: std::sync::atomic::AtomicBool::new(false),
            db_dir,
            write_buffer: w,
            block_cache,
            fault: Mutex::new(None),
            space_refusals: AtomicU64::new(0),
            sm_damaged: Mutex::new(sm_damaged),
            accept_lost_state: options.accept_lost_state,
            lost_state: Mutex::new(None),
            sm_swap: RwLock::new(()),
            #[cfg(test)]
            test_hooks: TestHooks::default(),
        };
        let created = store.check_format(&options)?;
        store.load()?;
        store.load_install_marker()?;
        store.check_mark(previous, created, manifest_before, manifest, &mark_path)?;
        Ok(store)
    }

    /// Compares the previous durable mark with the loaded data (see `durable`), then records
    /// a new mark of the data as it is. A loss is refused, or — with
    /// [`StoreOptions::accept_lost_state`] — recorded durably in the lost-state file first
    /// (merged with an earlier record still there), so that the mark may then be lowered.
    fn check_mark(
        &self,
        previous: Option<(u64, Mark)>,
        created: bool,
        manifest_before: Option<u64>,
        manifest: u64,
        path: &Path,
    ) -> Result<(), StoreError> {
        let (hard, last, snapshot) = {
            let t = self.tail_read();
            (t.hard, EntryId::new(self.last_term(&t)?, t.last), t.snapshot.last)
        };
        let mut seq = 0;
        let evidence_path = self.dir.join(durable::LOST_STATE_FILE);
        let mut evidence = durable::read_lost_state(&evidence_path)?;
        if let Some((s, mark)) = previous {
            seq = s;
            // A mark counts only if no other program opened the database since it was
            // written (a new database counts: it must not exist without its data).
            if created || manifest_before == Some(mark.manifest) || mark.manifest == durable::OPENING {
                let term_at_mark = if mark.last.index > snapshot.index && mark.last.index <= last.index {
                    Some(self.term_at(mark.last.index)?)
                } else {
                    None
                };
                let found = durable::Found { hard, last, snapshot, term_at_mark, created };
                if let Some(lost) = durable::compare(&mark, &found, path) {
                    if !self.accept_lost_state {
                        return Err(StoreError::LostSyncedState(Box::new(lost)));
                    }
                    let record = LostStateRecord::of(&lost);
                    let record = match evidence.take() {
                        Some(earlier) => earlier.merge(record),
                        None => record,
                    };
                    // Durable before the mark is lowered to the data below: a crash in between
                    // finds the loss again, or this record.
                    durable::write_lost_state(&evidence_path, &record)?;
                    evidence = Some(record);
                }
            }
        }
        if let Some(record) = &evidence
            && !self.accept_lost_state
        {
            let lost = durable::LostState {
                mark_file: evidence_path.clone(),
                mark: Mark {
                    term: record.term,
                    vote: record.vote,
                    commit: record.commit,
                    last: record.last,
                    manifest: 0,
                    written_unix_ms: record.detected_unix_ms,
                },
                found: format!("term {}, log up to index {}", hard.term, last.index),
                lost: std::iter::once(format!(
                    "the recovery from an earlier loss ({}) is not finished (the file {} says so); start the node \
                     with raft.rejoin_after_lost_state = true to finish it",
                    record.lost.join("; "),
                    evidence_path.display()
                ))
                .collect(),
            };
            return Err(StoreError::LostSyncedState(Box::new(lost)));
        }
        *lock(&self.lost_state) = evidence;
        let writer = MarkWriter::create_or_open(path, seq, Mark::of(hard, last, manifest))?;
        *lock(&self.mark) = Some(writer);
        Ok(())
    }

    /// The term of the last entry of `t` (the snapshot's when the log is empty).
    fn last_term(&self, t: &Tail) -> Result<Term, StoreError> {
        t.term(t.last, &|i| self.read_term(i))
    }

    fn term_at(&self, index: LogIndex) -> Result<Term, StoreError> {
        let cached = self.tail_read().cached_term(index);
        match cached {
            Some(t) => Ok(t),
            None => self.read_term(index),
        }
    }

    /// The handle of the column family `name`. `open` opened every family in `CFS` and checked
    /// each handle; only `sm` is ever dropped and created again (`recreate_sm`, while it holds
    /// `sm_swap` for writing), so a lookup that misses waits for that to finish and looks again.
    /// A family still missing after that is an error, never a panic: the caller may be any
    /// thread (a chaos soak found a node's sweep reading the state machine in that window).
    pub(crate) fn cf(&self, name: &str) -> Result<Arc<BoundColumnFamily<'_>>, StoreError> {
        if let Some(h) = self.db.cf_handle(name) {
            return Ok(h);
        }
        #[cfg(test)]
        self.test_hooks.cf_waits.fetch_add(1, Ordering::SeqCst);
        let _swapped = self.sm_swap.read().unwrap_or_else(PoisonError::into_inner);
        self.db.cf_handle(name).ok_or_else(|| StoreError::Io(format!("the column family {name} is not open")))
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<rocksdb::DBPinnableSlice<'_>>, StoreError> {
        Ok(self.db.get_pinned_cf(&self.cf(cf.name())?, key)?)
    }

    fn get_decoded<T: serde::de::DeserializeOwned>(&self, cf: Cf, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.get(cf, key)? {
            Some(v) => Ok(Some(codec::decode(cf, key, &v)?)),
            None => Ok(None),
        }
    }

    fn cf_is_empty(&self, name: &str) -> Result<bool, StoreError> {
        let mut it = self.db.raw_iterator_cf(&self.cf(name)?);
        it.seek_to_first();
        it.status()?;
        Ok(!it.valid())
    }

    /// The format stamp on disk ([`FORMAT_VERSION`] or [`crate::FORMAT_VERSION_FINALIZED`]).
    pub fn format_version(&self) -> Result<u32, StoreError> {
        Ok(self.get_decoded::<u32>(Cf::Meta, KEY_FORMAT)?.unwrap_or(FORMAT_VERSION))
    }

    /// Raises the format stamp to `version` (at most [`crate::FORMAT_VERSION_FINALIZED`]),
    /// durably; never lowers it. Called when the cluster is finalized: from then on, binaries
    /// that only know format 1 refuse to open this store.
    pub fn stamp_format(&self, version: u32) -> Result<(), StoreError> {
        if version > crate::FORMAT_VERSION_FINALIZED {
            return Err(StoreError::FormatTooNew { found: version, supported: crate::FORMAT_VERSION_FINALIZED });
        }
        if self.format_version()? >= version {
            return Ok(());
        }
        let mut wb = WriteBatch::default();
        wb.put_cf(&self.cf(CF_META)?, KEY_FORMAT, codec::encode(Cf::Meta, KEY_FORMAT, &version)?);
        self.db.write_opt(wb, &self.sync)?;
        Ok(())
    }

    /// Checks the format stamp; creates the store's records if there is none (and the
    /// database is empty). Returns whether it created them.
    fn check_format(&self, options: &StoreOptions) -> Result<bool, StoreError> {
        match self.get_decoded::<u32>(Cf::Meta, KEY_FORMAT)? {
            Some(v) if v == FORMAT_VERSION || v == crate::FORMAT_VERSION_FINALIZED => Ok(false),
            Some(v) if v > FORMAT_VERSION => {
                Err(StoreError::FormatTooNew { found: v, supported: crate::FORMAT_VERSION_FINALIZED })
            }
            Some(v) => migrate(&self.db, v).map(|()| false),
            None => {
                for name in CFS {
                    if !self.cf_is_empty(name)? {
                        return Err(StoreError::Corrupt {
                            key: key_name(Cf::Meta, KEY_FORMAT),
                            detail: format!("format version missing but column family {name} holds data"),
                        });
                    }
                }
                let snap = SnapshotMeta { last: EntryId::ZERO, config: options.bootstrap.clone() };
                let mut wb = WriteBatch::default();
                let meta = &self.cf(CF_META)?;
                wb.put_cf(meta, KEY_HARD, codec::encode(Cf::Meta, KEY_HARD, &HardState::default())?);
                wb.put_cf(meta, KEY_APPLIED, codec::encode(Cf::Meta, KEY_APPLIED, &LogIndex::ZERO)?);
                wb.put_cf(&self.cf(CF_SNAP)?, KEY_SNAP_META, codec::encode(Cf::Snap, KEY_SNAP_META, &snap)?);
                // The version goes last in the batch only for readability: the batch is atomic.
                wb.put_cf(meta, KEY_FORMAT, codec::encode(Cf::Meta, KEY_FORMAT, &FORMAT_VERSION)?);
                self.db.write_opt(wb, &self.sync)?;
                Ok(true)
            }
        }
    }

    /// Loads the in-memory tail and checks the log's shape against the metadata.
    fn load(&self) -> Result<(), StoreError> {
        let hard: HardState = self.get_decoded(Cf::Meta, KEY_HARD)?.ok_or_else(|| missing(Cf::Meta, KEY_HARD))?;
        let applied: LogIndex =
            self.get_decoded(Cf::Meta, KEY_APPLIED)?.ok_or_else(|| missing(Cf::Meta, KEY_APPLIED))?;
        let snap: SnapshotMeta =
            self.get_decoded(Cf::Snap, KEY_SNAP_META)?.ok_or_else(|| missing(Cf::Snap, KEY_SNAP_META))?;

        let mut tail = Tail { snapshot: snap.clone(), last: snap.last.index, hard, ..Tail::default() };

        // The configuration mirror.
        let mut it = self.db.raw_iterator_cf(&self.cf(CF_META)?);
        it.seek(KEY_CFG_PREFIX);
        while let Some((k, v)) = it.item() {
            if !k.starts_with(KEY_CFG_PREFIX) {
                break;
            }
            let index = parse_index(&k[KEY_CFG_PREFIX.len()..]).ok_or_else(|| StoreError::Corrupt {
                key: key_name(Cf::Meta, k),
                detail: "malformed configuration key".into(),
            })?;
            let c: Configuration = codec::decode(Cf::Meta, k, v)?;
            tail.configs.insert(index, c);
            it.next();
        }
        it.status()?;
        drop(it);

        // The log's ends.
        let mut it = self.db.raw_iterator_cf(&self.cf(CF_LOG)?);
        it.seek_to_first();
        it.status()?;
        if let Some(k) = it.key() {
            let first = parse_index(k)
                .ok_or_else(|| StoreError::Corrupt { key: key_name(Cf::Log, k), detail: "malformed log key".into() })?;
            if first != snap.last.index.next() {
                return Err(StoreError::Corrupt {
                    key: key_name(Cf::Log, k),
                    detail: format!("the log starts at {first} but the snapshot ends at {}", snap.last.index),
                });
            }
            it.seek_to_last();
            it.status()?;
            let last = it.key().and_then(parse_index).ok_or_else(|| StoreError::Corrupt {
                key: "log/<last>".into(),
                detail: "malformed last log key".into(),
            })?;
            // Terms of the tail, newest first, checking that the keys are contiguous.
            let mut expect = last;
            let mut terms_rev: Vec<(LogIndex, Term)> = Vec::new();
            let mut scanned = 0u64;
            while scanned < OPEN_SCAN_ENTRIES_MAX && expect >= first {
                let Some((k, v)) = it.item() else {
                    it.status()?;
                    return Err(missing(Cf::Log, &log_key(expect)));
                };
                if k != log_key(expect) {
                    return Err(StoreError::Corrupt {
                        key: key_name(Cf::Log, &log_key(expect)),
                        detail: format!("record missing (next present: {})", key_name(Cf::Log, k)),
                    });
                }
                let t = codec::decode_term(k, v)?;
                match terms_rev.last_mut() {
                    Some(run) if run.1 == t => run.0 = expect,
                    Some(run) if run.1 < t => {
                        return Err(StoreError::Corrupt {
                            key: key_name(Cf::Log, k),
                            detail: format!("term {t} is newer than the term {} after it", run.1),
                        });
                    }
                    _ => terms_rev.push((expect, t)),
                }
                scanned += 1;
                expect = expect.prev();
                it.prev();
            }
            terms_rev.reverse();
            tail.runs = terms_rev;
            tail.last = last;
        }
        drop(it);

        if let Some((&i, _)) = tail.configs.iter().next()
            && i <= snap.last.index
        {
            return Err(StoreError::Corrupt {
                key: key_name(Cf::Meta, &cfg_key(i)),
                detail: format!("configuration mirror at or below the snapshot {}", snap.last.index),
            });
        }
        if let Some((&i, _)) = tail.configs.iter().next_back()
            && i > tail.last
        {
            return Err(StoreError::Corrupt {
                key: key_name(Cf::Meta, &cfg_key(i)),
                detail: format!("configuration mirror past the last entry {}", tail.last),
            });
        }
        if hard.commit > tail.last {
            return Err(StoreError::Corrupt {
                key: key_name(Cf::Meta, KEY_HARD),
                detail: format!("commit index {} past the last entry {}", hard.commit, tail.last),
            });
        }
        if applied > tail.last {
            return Err(StoreError::Corrupt {
                key: key_name(Cf::Meta, KEY_APPLIED),
                detail: format!("applied index {applied} past the last entry {}", tail.last),
            });
        }
        tail.trim();
        *self.tail.write().unwrap_or_else(PoisonError::into_inner) = tail;
        self.applied.store(applied.0, Ordering::Release);
        Ok(())
    }

    fn tail_read(&self) -> RwLockReadGuard<'_, Tail> {
        self.tail.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The directory the store lives in.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory of snapshot data files.
    #[must_use]
    pub fn snapshot_dir(&self) -> &Path {
        &self.snap_dir
    }

    /// The durable mark's file (see [`MARK_FILE`](crate::MARK_FILE)).
    #[must_use]
    pub fn mark_file(&self) -> PathBuf {
        self.dir.join(durable::MARK_FILE)
    }

    /// The loss of synced state this store was opened with (see
    /// [`StoreOptions::accept_lost_state`]) and that the node has not recovered from yet:
    /// what the durable mark had recorded, the node's recovery input. `None`: nothing lost.
    #[must_use]
    pub fn lost_state(&self) -> Option<LostStateRecord> {
        lock(&self.lost_state).clone()
    }

    /// The node has recovered from the loss of synced state (its consensus core reported it:
    /// its log, term and vote are durable again, verified by a leader): the evidence file is
    /// removed durably, and the next open is a normal one. Until this returns, a restart
    /// recovers again.
    pub fn recovered(&self) -> Result<(), StoreError> {
        let mut held = lock(&self.lost_state);
        durable::remove_lost_state(&self.dir.join(durable::LOST_STATE_FILE))?;
        *held = None;
        Ok(())
    }

    /// The live table files of the column family `cf` (`"log"`, `"meta"`, `"snap"` or
    /// `"sm"`): path and size, newest last (fault testing and tools).
    pub fn table_files(&self, cf: &str) -> Result<Vec<(PathBuf, u64)>, StoreError> {
        let mut files: Vec<(PathBuf, u64)> = self
            .db
            .live_files()?
            .into_iter()
            .filter(|f| f.column_family_name == cf)
            .map(|f| (self.db_dir.join(f.name.trim_start_matches('/')), f.size as u64))
            .collect();
        files.sort();
        Ok(files)
    }

    /// Bytes of the store's live table files, every column family (what the database takes
    /// on disk apart from its write-ahead log and the snapshot files): the node's DB-size
    /// gauge.
    pub fn live_files_bytes(&self) -> Result<u64, StoreError> {
        Ok(self.db.live_files()?.iter().map(|f| f.size as u64).sum())
    }

    /// Bytes the block cache (shared by the column families) holds now.
    #[must_use]
    pub fn block_cache_usage_bytes(&self) -> u64 {
        self.block_cache.get_usage() as u64
    }

    /// Flushes every column family's memtables to table files and waits (tests and tools).
    pub fn flush(&self) -> Result<(), StoreError> {
        let cfs: Vec<Arc<BoundColumnFamily<'_>>> = CFS.iter().map(|n| self.cf(n)).collect::<Result<_, _>>()?;
        let cfs: Vec<&Arc<BoundColumnFamily<'_>>> = cfs.iter().collect();
        self.db.flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())?;
        Ok(())
    }

    /// The index of the last entry whose effects are in the state-machine data.
    #[must_use]
    pub fn applied_index(&self) -> LogIndex {
        LogIndex(self.applied.load(Ordering::Acquire))
    }

    /// Why the store refuses writes, if it does (a failed write poisons it; running out of
    /// space does not, see [`StoreError::NoSpace`]).
    #[must_use]
    pub fn poisoned(&self) -> Option<String> {
        match &*lock(&self.poisoned) {
            Some(Poison::Fatal(cause)) => Some(cause.clone()),
            _ => None,
        }
    }

    /// Writes refused for disk space since the open: below the free-space floor, or by
    /// RocksDB's own `ENOSPC`.
    #[must_use]
    pub fn space_refusals(&self) -> u64 {
        self.space_refusals.load(Ordering::Relaxed)
    }

    /// Whether RocksDB's last write failed for lack of space and no write has succeeded since.
    #[must_use]
    pub fn out_of_space(&self) -> Option<String> {
        match &*lock(&self.poisoned) {
            Some(Poison::NoSpace(cause)) => Some(cause.clone()),
            _ => None,
        }
    }

    /// Sets the free-space floor (bytes; zero disables the check).
    pub fn set_free_space_floor(&self, bytes: u64) {
        self.floor.store(bytes, Ordering::Relaxed);
    }

    /// The free-space floor (bytes; zero: not checked).
    #[must_use]
    pub fn free_space_floor(&self) -> u64 {
        self.floor.load(Ordering::Relaxed)
    }

    /// Bytes free on the store's file system.
    pub fn free_space_bytes(&self) -> Result<u64, StoreError> {
        space::free_space_bytes(&self.dir)
    }

    /// `Ok(())` if writes are currently accepted as far as disk space goes, else
    /// [`StoreError::BelowFreeSpaceFloor`]. Nodes check it to refuse proposals early.
    pub fn free_space_ok(&self) -> Result<(), StoreError> {
        space::check_free_space(&self.dir, self.floor.load(Ordering::Relaxed))
    }

    /// `Err(Poisoned)` once a write failed (other than for space).
    fn check_poison(&self) -> Result<(), StoreError> {
        match self.poisoned() {
            Some(cause) => Err(StoreError::Poisoned { cause }),
            None => Ok(()),
        }
    }

    /// For writes that grow the store: not poisoned and above the floor.
    fn writable(&self) -> Result<(), StoreError> {
        self.check_poison()?;
        self.free_space_ok()
    }

    fn poison(&self, cause: String) -> StoreError {
        let mut p = lock(&self.poisoned);
        if !matches!(*p, Some(Poison::Fatal(_))) {
            *p = Some(Poison::Fatal(cause.clone()));
        }
        StoreError::Io(cause)
    }

    /// Injects `fault` into every following write of [`write_many`](Self::write_many) (the
    /// consensus write path; `None` stops it). For fault testing only: with
    /// [`WriteFault::Eio`] the store is poisoned as after a real failed `fsync`.
    pub fn danger_inject_write_fault(&self, fault: Option<WriteFault>) {
        *lock(&self.fault) = fault;
    }

    /// Runs `f` while no consensus or state-machine write can reach RocksDB (both write locks
    /// are held, so no write and no log fsync is in progress). For fault testing only:
    /// damaging the newest write-ahead log while a write is appended to it leaves a hole
    /// before that write, which RocksDB rightly takes for damage in the middle of the log, not
    /// for a lost tail.
    pub fn danger_with_writes_stopped<R>(&self, f: impl FnOnce() -> R) -> R {
        let _w = self.exclusive();
        f()
    }

    /// Both write locks, in the one order (`log_lock`, then `sm_lock`): for the writes that
    /// must exclude every other (a snapshot install's begin and finish, a state-machine reset)
    /// and for reading everything at one point (`verify`).
    pub(crate) fn exclusive(&self) -> (MutexGuard<'_, ()>, MutexGuard<'_, ()>) {
        let log = lock(&self.log_lock);
        (log, lock(&self.sm_lock))
    }

    /// Writes `wb`. A failure poisons the store, unless RocksDB ran out of space: then the
    /// write is not applied and later writes are tried again ([`StoreError::NoSpace`]).
    fn commit_batch(&self, wb: WriteBatch, opts: &WriteOptions) -> Result<(), StoreError> {
        // The log and the state machine write concurrently: a success only clears an
        // out-of-space state that was there before this write began (one set meanwhile may be
        // newer than this write's success, and the next write clears it if RocksDB resumed).
        let refusals = self.space_refusals.load(Ordering::Acquire);
        match self.db.write_opt(wb, opts) {
            Ok(()) => {
                let mut p = lock(&self.poisoned);
                if matches!(*p, Some(Poison::NoSpace(_))) && self.space_refusals.load(Ordering::Acquire) == refusals {
                    *p = None;
                }
                Ok(())
            }
            Err(e) => Err(self.write_failed(e.into_string())),
        }
    }

    fn write_failed(&self, text: String) -> StoreError {
        if text.contains("Corruption") {
            self.note_sm_damage(&text);
        }
        if text.contains(crate::error::NO_SPACE_TEXT) {
            self.space_refusals.fetch_add(1, Ordering::Relaxed);
            let mut p = lock(&self.poisoned);
            if p.is_none() {
                *p = Some(Poison::NoSpace(text.clone()));
            }
            return StoreError::NoSpace(text);
        }
        self.poison(format!("write failed: {text}"))
    }

    /// If RocksDB's corruption `text` names a table file of the state machine, records it in
    /// [`SM_DAMAGED_FILE`] (synced) for the next open.
    fn note_sm_damage(&self, text: &str) {
        let Some(number) = sst_number(text) else { return };
        let in_sm = self.db.live_files().is_ok_and(|files| {
            files.iter().any(|f| f.column_family_name == CF_SM && sst_number(&f.name) == Some(number))
        });
        if !in_sm {
            return;
        }
        let evidence: String = text.chars().take(SM_DAMAGED_BYTES_MAX as usize / 2).collect();
        let path = self.dir.join(SM_DAMAGED_FILE);
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&path)?;
            std::io::Write::write_all(&mut f, evidence.as_bytes())?;
            f.sync_all()?;
            std::fs::File::open(&self.dir)?.sync_all()
        };
        let _ = write();
        *lock(&self.sm_damaged) = Some(evidence);
    }

    /// Evidence that a table file of the state machine is damaged, recorded when RocksDB met
    /// it (see [`SM_DAMAGED_FILE`]); cleared by a reinstall.
    #[must_use]
    pub fn sm_damaged(&self) -> Option<String> {
        lock(&self.sm_damaged).clone()
    }

    /// Writes a consensus batch durably ([`commit_batch`](Self::commit_batch) with the
    /// injected fault, if any), in one of three ways:
    ///
    /// * [`LogSync::Apart`]: written without sync, then the write-ahead log fsynced outside
    ///   RocksDB's write queue (`FlushWAL(sync)`), so that a state-machine write arriving
    ///   meanwhile is not queued behind the fsync (RocksDB lets a write join the group of a
    ///   synced one, and makes every later write wait for that group, fsync included). Only
    ///   for batches that add to the log: RocksDB shows a write to its readers before this
    ///   fsync, and the store's readers see the log only up to the tail, published after it.
    /// * [`LogSync::InWrite`]: one synced write, shown to readers only once durable — for
    ///   batches that remove entries (truncation, compaction, install), whose removal readers
    ///   below the old tail would otherwise meet before it is durable.
    /// * [`LogSync::None`]: an unsynced write (commit-only batches).
    ///
    /// A failed fsync poisons the store whatever the error says (its outcome is unknown).
    fn commit_consensus_batch(&self, wb: WriteBatch, how: LogSync) -> Result<(), StoreError> {
        let fault = *lock(&self.fault);
        let write = |wb: WriteBatch| -> Result<(), StoreError> {
            match how {
                LogSync::InWrite => self.commit_batch(wb, &self.sync),
                LogSync::None => self.commit_batch(wb, &self.no_sync),
                LogSync::Apart => {
                    self.commit_batch(wb, &self.no_sync)?;
                    #[cfg(test)]
                    if let Some(hook) = lock(&self.test_hooks.before_log_sync).take() {
                        hook();
                    }
                    let synced = self.db.flush_wal(true).map_err(|e| e.to_string());
                    #[cfg(test)]
                    let synced = match lock(&self.test_hooks.fail_log_sync).take() {
                        Some(injected) => Err(injected),
                        None => synced,
                    };
                    synced.map_err(|e| self.poison(format!("write failed: fsync of the write-ahead log: {e}")))
                }
            }
        };
        match fault {
            None => write(wb),
            Some(WriteFault::NoSpace) => {
                Err(self.write_failed(format!("IO error: {}: injected (fault testing)", crate::error::NO_SPACE_TEXT)))
            }
            Some(WriteFault::Eio { after_write }) => {
                if after_write {
                    write(wb)?;
                }
                Err(self.poison("write failed: IO error: Input/output error: injected (fault testing)".into()))
            }
        }
    }

    /// Reads the term of `index` from disk (verifying the record's checksum).
    fn read_term(&self, index: LogIndex) -> Result<Term, StoreError> {
        let k = log_key(index);
        match self.get(Cf::Log, &k)? {
            Some(v) => codec::decode_term(&k, &v),
            None => Err(self.gap(index)),
        }
    }

    /// The error for an entry that should be on disk but is not.
    fn gap(&self, index: LogIndex) -> StoreError {
        let t = self.tail_read();
        if index <= t.snapshot.last.index {
            // Compacted concurrently.
            return StoreError::Compacted(index);
        }
        if index > t.last {
            return StoreError::Unavailable(index);
        }
        StoreError::Corrupt {
            key: key_name(Cf::Log, &log_key(index)),
            detail: "entry missing (a gap in the log)".into(),
        }
    }

    /// Persists `batch` atomically and durably (one fsync). See [`PersistBatch`] for the order
    /// of its parts and the invariants checked.
    pub fn write(&self, batch: PersistBatch) -> Result<(), StoreError> {
        self.write_many(std::slice::from_ref(&batch)).pop().unwrap_or(Ok(()))
    }

    /// Persists several batches, in order, in one RocksDB write with one fsync, and returns
    /// the result of each in order. The batches are an ordered stream (each is planned on top
    /// of the ones before it), so once one is refused — invalid, or growing the store below the
    /// free-space floor — every later one is refused too ([`StoreError::EarlierBatchFailed`]):
    /// a batch is never written without the ones before it.
    ///
    /// Below the free-space floor, batches that append entries are refused
    /// ([`StoreError::BelowFreeSpaceFloor`]); batches without entries (hard state, compaction,
    /// truncation, a snapshot record) are tiny or free space and go through.
    pub fn write_many(&self, batches: &[PersistBatch]) -> Vec<Result<(), StoreError>> {
        let _w = lock(&self.log_lock);
        if let Err(e) = self.check_poison() {
            return vec![Err(e); batches.len()];
        }
        let floor = self.free_space_ok().err();
        let mut tail = self.tail_read().clone();
        let mut wb = WriteBatch::default();
        let mut results = Vec::with_capacity(batches.len());
        let mut refused: Option<String> = None;
        let mut compacted = false;
        let mut removes = false;
        let mut sync = false;
        // The lowest log position this write keeps of what the durable mark may cover.
        let mut keep: Option<EntryId> = None;
        let lookup = |i: LogIndex| self.read_term(i);
        // Every family's handle, looked up once for the whole write.
        let handles = match CFS.iter().map(|n| Ok((*n, self.cf(n)?))).collect::<Result<Vec<_>, StoreError>>() {
            Ok(h) => h,
            Err(e) => return batches.iter().map(|_| Err(e.clone())).collect(),
        };
        let handle = |name: &str| handles.iter().find(|(n, _)| *n == name).map(|(_, h)| h);
        for b in batches {
            if let Some(cause) = &refused {
                results.push(Err(StoreError::EarlierBatchFailed { cause: cause.clone() }));
                continue;
            }
            if let Some(e) = floor.as_ref().filter(|_| !b.entries.is_empty()) {
                self.space_refusals.fetch_add(1, Ordering::Relaxed);
                refused = Some(e.to_string());
                results.push(Err(e.clone()));
                continue;
            }
            let before = tail.clone();
            let mut t = tail.clone();
            let r = t
                .plan(b, &lookup)
                .and_then(|plan| {
                    let removes = plan.truncate_from.is_some() || !plan.compactions.is_empty();
                    Ok((removes, removes_from(&plan, &before, &lookup)?, encode_plan(&plan, b)?))
                })
                .and_then(|(removes, removed, ops)| {
                    let ops = ops
                        .into_iter()
                        .map(|op| {
                            let name = match &op {
                                Op::Put(cf, ..) | Op::DeleteRange(cf, ..) => *cf,
                            };
                            let h = handle(name)
                                .ok_or_else(|| StoreError::Io(format!("the column family {name} is not open")))?;
                            Ok((h, op))
                        })
                        .collect::<Result<Vec<_>, StoreError>>()?;
                    Ok((removes, removed, ops))
                });
            match r {
                Ok((removes_entries, removed, ops)) => {
                    for (h, op) in ops {
                        match op {
                            Op::Put(_, k, v) => wb.put_cf(h, k, v),
                            Op::DeleteRange(_, a, z) => wb.delete_range_cf(h, a, z),
                        }
                    }
                    if let Some(kept) = removed {
                        keep = Some(keep.map_or(kept, |k| k.min(kept)));
                    }
                    compacted |= b.compact.is_some() || b.install.is_some();
                    removes |= removes_entries;
                    sync |= !b.skip_fsync;
                    tail = t;
                    results.push(Ok(()));
                }
                Err(e) => {
                    refused = Some(e.to_string());
                    results.push(Err(e));
                }
            }
        }
        if wb.is_empty() {
            return results;
        }
        let fail = |results: &mut Vec<Result<(), StoreError>>, e: StoreError| {
            for r in results.iter_mut() {
                if r.is_ok() {
                    *r = Err(e.clone());
                }
            }
        };
        // The mark must never claim entries this write removes, even if it is lost halfway.
        if let Some(kept) = keep
            && let Err(e) = self.lower_mark(kept)
        {
            fail(&mut results, e);
            return results;
        }
        let how = match (sync, removes) {
            (false, _) => LogSync::None,
            (true, false) => LogSync::Apart,
            (true, true) => LogSync::InWrite,
        };
        if let Err(e) = self.commit_consensus_batch(wb, how) {
            fail(&mut results, e);
            return results;
        }
        tail.trim();
        let snap_index = tail.snapshot.last.index.0;
        let mark = self.last_term(&tail).map(|t| Mark::of(tail.hard, EntryId::new(t, tail.last), 0));
        *self.tail.write().unwrap_or_else(PoisonError::into_inner) = tail;
        if sync {
            // Only what was synced may be marked; a vote or a term before it is acknowledged.
            if let Err(e) = mark.and_then(|m| self.raise_mark(m)) {
                fail(&mut results, e);
                return results;
            }
        }
        if compacted {
            // Older snapshot files are garbage now. A failure to remove one is harmless: the
            // next compaction retries.
            let _ = snapshot::remove_older(&self.snap_dir, snap_index);
            // Retire the write-ahead logs: the compacted log prefix no longer pins them.
            self.flush_in_background();
        }
        results
    }

    /// Lowers the durable mark's last entry to `kept` (before a write that removes entries
    /// after it), if the mark claims more.
    fn lower_mark(&self, kept: EntryId) -> Result<(), StoreError> {
        let mut guard = lock(&self.mark);
        let Some(w) = guard.as_mut() else { return Ok(()) };
        let mut m = w.current();
        if m.last.index <= kept.index {
            return Ok(());
        }
        m.last = kept;
        m.written_unix_ms = durable::unix_ms();
        w.write(m).map_err(|e| self.poison(format!("cannot write the durable mark {}: {e}", w.path().display())))?;
        self.mark_lowered.store(true, Ordering::Release);
        Ok(())
    }

    /// Raises the durable mark to `new` (the synced state after a write) when the term, the
    /// vote or the log changed, the mark was lowered, or the interval passed (a write that
    /// only moves the commit index).
    ///
    /// The log is marked with every synced write that changes it, before the write returns:
    /// the node acknowledges entries as soon as it does, and a mark that lagged them would let
    /// a lost tail of acknowledged entries go unnoticed (the lagging mark still satisfied) —
    /// or, detected, hand the recovery a record below its acknowledgements (issue 18, review
    /// finding R2).
    fn raise_mark(&self, new: Mark) -> Result<(), StoreError> {
        let mut guard = lock(&self.mark);
        let Some(w) = guard.as_mut() else { return Ok(()) };
        let cur = w.current();
        let due = new.term != cur.term
            || new.vote != cur.vote
            || new.last != cur.last
            || self.mark_lowered.load(Ordering::Acquire)
            || w.age() >= self.mark_interval;
        if !due || (new.last == cur.last && new.commit == cur.commit && new.term == cur.term && new.vote == cur.vote) {
            return Ok(());
        }
        // The session's MANIFEST (RocksDB may have started a new one since the open).
        let manifest = durable::current_manifest(&self.db_dir).unwrap_or(cur.manifest);
        w.write(Mark { manifest, ..new })
            .map_err(|e| self.poison(format!("cannot write the durable mark {}: {e}", w.path().display())))?;
        self.mark_lowered.store(false, Ordering::Release);
        Ok(())
    }

    /// Starts flushing every column family's memtable without waiting, so that the
    /// write-ahead logs they pin can be deleted. A failure is RocksDB's background error and
    /// shows in the next write.
    fn flush_in_background(&self) {
        let mut fo = rocksdb::FlushOptions::default();
        fo.set_wait(false);
        // A missing family shows in the next write, like a failed flush.
        let Ok(cfs) = CFS.iter().map(|n| self.cf(n)).collect::<Result<Vec<Arc<BoundColumnFamily<'_>>>, _>>() else {
            return;
        };
        let cfs: Vec<&Arc<BoundColumnFamily<'_>>> = cfs.iter().collect();
        let _ = self.db.flush_cfs_opt(&cfs, &fo);
    }

    /// Writes state-machine operations together with the new applied index, atomically, so
    /// that after a restart the state machine neither re-applies nor misses an entry: resume
    /// applying at `applied_index() + 1`. `applied` must advance and not pass the last index.
    ///
    /// Not refused below the free-space floor: it applies entries already in the log, whose
    /// amount the floor's headroom bounds (refusing it would only stop the state machine).
    ///
    /// Takes the state machine's lock only: it does not wait for a log write (nor a log write
    /// for it). The entries it applies are durable before it can name them: the last index it
    /// is checked against is published only after the log write that added them was fsynced.
    pub fn apply(&self, applied: LogIndex, ops: impl IntoIterator<Item = SmOp>) -> Result<(), StoreError> {
        let _w = lock(&self.sm_lock);
        self.check_poison()?;
        if let Some(at) = self.sm_install_pending() {
            return Err(StoreError::InvalidBatch(format!(
                "the state machine holds part of the snapshot at {at} (an install was interrupted); install it again first"
            )));
        }
        let current = self.applied_index();
        if applied <= current {
            return Err(StoreError::InvalidBatch(format!("applied index would not advance ({current} to {applied})")));
        }
        // Only committed entries are applied, and only persisted ones; the persisted commit
        // index may lag behind (the core persists it lazily), the last index may not.
        let last = self.tail_read().last;
        if applied > last {
            return Err(StoreError::InvalidBatch(format!(
                "applied index {applied} would pass the last persisted entry {last}"
            )));
        }
        let sm = &self.cf(CF_SM)?;
        let mut wb = WriteBatch::default();
        for (n, op) in ops.into_iter().enumerate() {
            if n >= APPLY_OPS_MAX {
                return Err(StoreError::InvalidBatch(format!("more than {APPLY_OPS_MAX} operations in one apply")));
            }
            match op {
                SmOp::Put { key, value } => put_sm(&mut wb, sm, &key, &value)?,
                SmOp::Delete { key } => {
                    check_sm_key(&key)?;
                    wb.delete_cf(sm, sm_key(&key));
                }
                SmOp::Clear => wb.delete_range_cf(sm, [SM_PREFIX], [SM_PREFIX_END]),
            }
        }
        wb.put_cf(&self.cf(CF_META)?, KEY_APPLIED, codec::encode(Cf::Meta, KEY_APPLIED, &applied)?);
        self.commit_batch(wb, &self.apply_opts)?;
        self.applied.store(applied.0, Ordering::Release);
        Ok(())
    }

    /// The state-machine value of `key`, checksum verified.
    pub fn sm_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let k = sm_key(key);
        match self.get(Cf::Sm, &k).map_err(|e| in_sm(e, &k))? {
            Some(v) => Ok(Some(codec::verify(Cf::Sm, &k, &v)?.to_vec())),
            None => Ok(None),
        }
    }

    /// Up to `limit` (at most [`SM_SCAN_PAIRS_MAX`]) state-machine pairs with keys `>= from`,
    /// in key order, checksums verified. Page by passing the last key plus a zero byte.
    pub fn sm_scan(&self, from: &[u8], limit: usize) -> Result<Vec<SmPair>, StoreError> {
        self.sm_scan_bounded(from, limit, usize::MAX)
    }

    /// As [`sm_scan`](Self::sm_scan), stopping also once the pairs read hold `bytes_max` bytes
    /// of keys and values (the pair that reaches it included, so a positive budget returns at
    /// least one pair when there is one): a page of large values is never read into memory
    /// whole.
    pub fn sm_scan_bounded(&self, from: &[u8], limit: usize, bytes_max: usize) -> Result<Vec<SmPair>, StoreError> {
        self.sm_scan_range(from, None, limit, bytes_max)
    }

    /// As [`sm_scan_bounded`](Self::sm_scan_bounded), with keys also `< end` (when given). The
    /// iterator stops at `end`: it never steps over the deleted keys (tombstones) beyond it,
    /// which a scan that finds nothing in its range would otherwise walk to the next live key.
    pub fn sm_scan_range(
        &self,
        from: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        bytes_max: usize,
    ) -> Result<Vec<SmPair>, StoreError> {
        self.scan_sm_with(&self.cf(CF_SM)?, ReadOptions::default(), from, end, limit, bytes_max)
    }

    /// The scan behind [`sm_scan_range`](Self::sm_scan_range) and
    /// [`SmView::sm_scan_range`](view::SmView::sm_scan_range): reads the `sm` family `sm` with
    /// `ro` (a snapshot, or none), up to `end` (`None`: the family's end).
    fn scan_sm_with(
        &self,
        sm: &Arc<BoundColumnFamily<'_>>,
        mut ro: ReadOptions,
        from: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        bytes_max: usize,
    ) -> Result<Vec<SmPair>, StoreError> {
        let limit = limit.min(SM_SCAN_PAIRS_MAX);
        let mut bytes = 0usize;
        ro.set_iterate_upper_bound(end.map_or_else(|| vec![SM_PREFIX_END], sm_key));
        let mut it = self.db.raw_iterator_cf_opt(sm, ro);
        it.seek(sm_key(from));
        let mut out = Vec::new();
        while out.len() < limit && bytes < bytes_max {
            let Some((k, v)) = it.item() else { break };
            let body = codec::verify(Cf::Sm, k, v)?;
            bytes = bytes.saturating_add(k.len().saturating_sub(1) + body.len());
            out.push((k[1..].to_vec(), body.to_vec()));
            it.next();
        }
        it.status().map_err(|e| in_sm(e.into(), &sm_key(from)))?;
        Ok(out)
    }

    /// Starts streaming a snapshot's data to a file in [`snapshot_dir`](Self::snapshot_dir).
    /// Finish it, then record it with [`compact_to`](DurableLog::compact_to) (or a batch's
    /// `compact`) so that the log prefix it covers can go.
    pub fn snapshot_writer(&self, meta: SnapshotMeta) -> Result<SnapshotWriter, StoreError> {
        SnapshotWriter::create(&self.snap_dir, meta)
    }

    /// Makes a file written elsewhere — [`snapshot_file_head`](crate::snapshot_file_head) of
    /// `meta`, then `data_len` bytes of data with CRC-32 `data_crc` — the snapshot file of
    /// `meta`, by appending the trailer and renaming it into
    /// [`snapshot_dir`](Self::snapshot_dir) (it must be on the same file system): a snapshot
    /// received in pieces and staged on disk becomes the store's without being copied again.
    /// Durable on return; record it like a written one. The data is not read here (a reader
    /// checks its CRC-32 when it reaches the end).
    pub fn adopt_snapshot(
        &self,
        file: &Path,
        meta: SnapshotMeta,
        data_len: u64,
        data_crc: u32,
    ) -> Result<SnapshotFile, StoreError> {
        snapshot::adopt(&self.snap_dir, file, meta, data_len, data_crc)
    }

    /// Makes `file` — a whole snapshot file of `meta`, received and staged elsewhere — the
    /// store's snapshot file of `meta` by renaming it into
    /// [`snapshot_dir`](Self::snapshot_dir) (same file system): not copied. Its head,
    /// metadata and trailer are checked, not its data (a reader checks that when it reaches
    /// the end). Durable on return; record it like a written one.
    pub fn adopt_snapshot_file(&self, file: &Path, meta: SnapshotMeta) -> Result<SnapshotFile, StoreError> {
        snapshot::adopt_file(&self.snap_dir, file, meta)
    }

    /// A reader of the data of the latest recorded snapshot, if its file is present.
    pub fn snapshot_reader(&self) -> Result<Option<SnapshotReader>, StoreError> {
        let meta = self.tail_read().snapshot.clone();
        if meta.last.index == LogIndex::ZERO {
            return Ok(None);
        }
        let path = self.snap_dir.join(snapshot::file_name(&meta));
        if !path.exists() {
            return Ok(None);
        }
        let r = SnapshotReader::open(&path)?;
        if r.meta() != &meta {
            return Err(StoreError::Corrupt {
                key: format!("snapshot file {}", path.display()),
                detail: "metadata differs from the recorded snapshot".into(),
            });
        }
        Ok(Some(r))
    }

    /// The newest snapshot file in the snapshot directory whose header and metadata verify,
    /// whose index is at most `at_most` and at least the log's floor (so that the log holds
    /// every entry after it): a state machine installed from it and the log after it applied
    /// again is the state machine at any applied index up to `at_most`. Its data checksum is
    /// checked when it is read.
    pub fn usable_snapshot(&self, at_most: LogIndex) -> Result<Option<(SnapshotMeta, PathBuf)>, StoreError> {
        let floor = self.tail_read().snapshot.last;
        let mut best: Option<(SnapshotMeta, PathBuf)> = None;
        for (n, ent) in std::fs::read_dir(&self.snap_dir)?.enumerate() {
            if n >= SNAPSHOT_FILES_SCANNED_MAX {
                break;
            }
            let path = ent?.path();
            let Some(index) = path.file_name().and_then(|n| snapshot::index_of(&n.to_string_lossy())) else { continue };
            if index < floor.index.0 || index > at_most.0 || best.as_ref().is_some_and(|(b, _)| b.last.index.0 >= index)
            {
                continue;
            }
            let Ok(r) = SnapshotReader::open(&path) else { continue };
            let meta = r.meta().clone();
            // The log must agree with the file at the file's index.
            let agrees = if meta.last.index == floor.index {
                meta.last.term == floor.term
            } else {
                self.term_at(meta.last.index).is_ok_and(|t| t == meta.last.term)
            };
            if meta.last.index.0 == index && agrees {
                best = Some((meta, path));
            }
        }
        Ok(best)
    }

    /// Reads every record of every column family, verifying checksums, that the log is
    /// gap-free from the snapshot to the last index, that terms never decrease, and that the
    /// configuration mirror matches the configuration entries. Takes time proportional to the
    /// data; meant for tests, tools and start-up checks.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        let _w = self.exclusive();
        let tail = self.tail_read().clone();
        let mut report = VerifyReport::default();
        let mut it = self.db.raw_iterator_cf(&self.cf(CF_LOG)?);
        it.seek_to_first();
        let mut expect = tail.snapshot.last.index.next();
        let mut prev_term = tail.snapshot.last.term;
        let mut configs = std::collections::BTreeMap::new();
        while let Some((k, v)) = it.item() {
            if k != log_key(expect) {
                return Err(StoreError::Corrupt {
                    key: key_name(Cf::Log, &log_key(expect)),
                    detail: format!("expected this entry, found {}", key_name(Cf::Log, k)),
                });
            }
            let e: EntryOwned = codec::decode(Cf::Log, k, v)?;
            if e.term < prev_term {
                return Err(StoreError::Corrupt {
                    key: key_name(Cf::Log, k),
                    detail: format!("term {} older than the term {prev_term} before it", e.term),
                });
            }
            if let Some(t) = tail.cached_term(expect)
                && t != e.term
            {
                return Err(StoreError::Corrupt {
                    key: key_name(Cf::Log, k),
                    detail: format!("term {} on disk, {t} in memory", e.term),
                });
            }
            if let EntryPayload::Config(c) = e.payload {
                configs.insert(expect, c);
            }
            prev_term = e.term;
            expect = expect.next();
            report.entries += 1;
            it.next();
        }
        it.status()?;
        if expect.prev() != tail.last {
            return Err(StoreError::Corrupt {
                key: key_name(Cf::Log, &log_key(expect)),
                detail: format!("the log ends at {} but {} was expected", expect.prev(), tail.last),
            });
        }
        if configs != tail.configs {
            return Err(StoreError::Corrupt {
                key: "meta/cfg".into(),
                detail: "configuration mirror differs from the configuration entries".into(),
            });
        }
        for (name, cf) in [(CF_META, Cf::Meta), (CF_SNAP, Cf::Snap), (CF_SM, Cf::Sm)] {
            let mut it = self.db.raw_iterator_cf(&self.cf(name)?);
            it.seek_to_first();
            while let Some((k, v)) = it.item() {
                codec::verify(cf, k, v)?;
                if cf == Cf::Sm {
                    report.sm_records += 1;
                } else {
                    report.meta_records += 1;
                }
                it.next();
            }
            it.status()?;
        }
        Ok(report)
    }
}

/// RocksDB's database options. `w` is the memtable size of the `log` and `sm` families.
///
/// * **Recovery mode `TolerateCorruptedTailRecords`**: a damaged record anywhere in any
///   write-ahead log fails the open with a corruption error; only an incomplete record at the
///   end of a log (a write in progress at a crash) is dropped. `PointInTime`, RocksDB's
///   default, would instead stop replaying at the first damaged record and silently drop every
///   later one, synced or not. A torn tail that held synced records is caught by the durable
///   mark.
/// * **WALs tracked in the MANIFEST**: a synced, closed log that is missing or shorter than
///   recorded fails the open.
/// * **Short-lived WALs**: `max_total_wal_size` of [`WAL_BUDGET_WRITE_BUFFERS`] memtables, so
///   that the rarely written `meta` and `snap` families cannot pin gigabytes of logs (RocksDB's
///   default is four times the sum of all memtables); the store also flushes every family after
///   a compaction ([`RocksStore::write_many`]).
/// * **Table files synced as they are written** ([`BYTES_PER_SYNC`]), so that flushes and
///   compactions never leave a whole file of dirty pages for the log's fsyncs to wait behind.
fn db_options(w: u64, recovery: DBRecoveryMode) -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_paranoid_checks(true);
    opts.set_wal_recovery_mode(recovery);
    opts.set_track_and_verify_wals_in_manifest(true);
    opts.set_max_total_wal_size(w * WAL_BUDGET_WRITE_BUFFERS);
    opts.set_keep_log_file_num(4);
    opts.set_max_background_jobs(2);
    opts.set_bytes_per_sync(BYTES_PER_SYNC);
    opts
}

/// RocksDB syncs a table file it writes (a flush, a compaction) every this many bytes, as its
/// tuning guide advises, instead of leaving the whole file to its final sync: the log's fsyncs
/// on the same disk would otherwise wait behind tens of megabytes of table data (issue 20).
pub(crate) const BYTES_PER_SYNC: u64 = 1 << 20;

/// The write-ahead logs kept before RocksDB flushes the families that pin the oldest one, in
/// memtables of the `log` family.
pub(crate) const WAL_BUDGET_WRITE_BUFFERS: u64 = 4;

/// The column families with their memtable and compaction settings (see
/// [`StoreOptions::space_needed_bytes`]).
fn cf_descriptors(w: u64, cache: &rocksdb::Cache) -> Vec<ColumnFamilyDescriptor> {
    // RocksDB's `default` family, unused, is opened too (with RocksDB's default options unless
    // named): its memtable is kept as small as `meta`'s, because after an out-of-space error
    // RocksDB resumes only once free space reaches the largest memtable of any family (64 MiB
    // for an untouched `default`, whatever the others use).
    CFS.iter()
        .chain(std::iter::once(&rocksdb::DEFAULT_COLUMN_FAMILY_NAME))
        .map(|&name| ColumnFamilyDescriptor::new(name, cf_options(name, w, cache)))
        .collect()
}

/// The options of the column family `name`. Every family reads its table files through the
/// one block cache `cache`, index and filter blocks included (level 0's pinned), so the
/// store's read memory is bounded by one figure ([`StoreOptions::block_cache_bytes`]) rather
/// than RocksDB's default of a cache per family with index and filter blocks outside. The
/// `sm` family, read at random by key on every apply and every read, also has bloom filters:
/// in its table files ([`SM_BLOOM_BITS_PER_KEY`], whole keys) and in its memtable
/// ([`SM_MEMTABLE_BLOOM_RATIO`]), so a get of an absent key — a put of a new key reads
/// before it writes — skips the files and the skip list that cannot hold it. The `log` family
/// is read by index in order, and `meta`/`snap` by a few fixed keys: no filters.
pub(crate) fn cf_options(name: &str, w: u64, cache: &rocksdb::Cache) -> Options {
    let mut o = Options::default();
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    if name == CF_SM {
        table.set_bloom_filter(SM_BLOOM_BITS_PER_KEY, false);
        table.set_whole_key_filtering(true);
        o.set_memtable_whole_key_filtering(true);
        o.set_memtable_prefix_bloom_ratio(SM_MEMTABLE_BLOOM_RATIO);
    }
    o.set_block_based_table_factory(&table);
    let (size, count) = if name == CF_LOG || name == CF_SM {
        (w, if name == CF_LOG { LOG_WRITE_BUFFERS } else { OTHER_WRITE_BUFFERS })
    } else {
        (w / 4, OTHER_WRITE_BUFFERS)
    };
    o.set_write_buffer_size(size as usize);
    o.set_max_write_buffer_number(count as i32);
    o.set_target_file_size_base(w);
    o.set_max_bytes_for_level_base(w * L0_COMPACTION_TRIGGER);
    o.set_max_compaction_bytes(w * L0_COMPACTION_TRIGGER * 2);
    o.set_level_zero_file_num_compaction_trigger(L0_COMPACTION_TRIGGER as i32);
    o.set_level_zero_slowdown_writes_trigger(L0_SLOWDOWN_WRITES as i32);
    o.set_level_zero_stop_writes_trigger(L0_STOP_WRITES as i32);
    o
}

/// The number of the first `NNNNNN.sst` file named in `text`.
fn sst_number(text: &str) -> Option<u64> {
    let at = text.find(".sst")?;
    let digits: String = text[..at].chars().rev().take_while(char::is_ascii_digit).collect();
    digits.chars().rev().collect::<String>().parse().ok()
}

/// The error of a failed open. A corruption RocksDB found while recovering (a damaged
/// write-ahead log record, a missing or short log, a damaged table file) comes with what the
/// data up to the damage holds and what the durable mark says, and what to do.
fn open_error(dir: &Path, db_dir: &Path, e: rocksdb::Error) -> StoreError {
    let err = StoreError::from(e);
    let StoreError::Corrupt { detail, .. } = &err else { return err };
    let mark = match durable::read(&dir.join(durable::MARK_FILE)) {
        Ok(Some((_, m))) => format!("the durable mark records {}", m.describe()),
        Ok(None) => "there is no durable mark".to_string(),
        Err(e) => format!("the durable mark cannot be read ({e})"),
    };
    let survives = match summarize_point_in_time(db_dir) {
        Ok(s) => format!("replayed up to the damage, the data holds {s}"),
        Err(e) => format!("the data up to the damage cannot be read either ({e})"),
    };
    StoreError::Corrupt {
        key: "rocksdb".into(),
        detail: format!(
            "{detail}. RocksDB refused to recover: its write-ahead log or a table file is damaged, and replaying \
             past the damage would silently drop synced records. {survives}; {mark}. The node must not run on \
             this data: remove it from the cluster (`quorate member remove <id>`), move its data directory aside \
             (keep it as evidence) and add it back as a new member"
        ),
    }
}

/// What a read-only, point-in-time replay of the database at `db_dir` holds: the hard state
/// and the last log index (evidence for [`open_error`]; writes nothing).
fn summarize_point_in_time(db_dir: &Path) -> Result<String, StoreError> {
    let mut opts = db_options(WRITE_BUFFER_BYTES_MIN, DBRecoveryMode::PointInTime);
    opts.create_if_missing(false);
    let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES_MIN as usize);
    let db = Db::open_cf_descriptors_read_only(&opts, db_dir, cf_descriptors(WRITE_BUFFER_BYTES_MIN, &cache), false)?;
    let meta = db.cf_handle(CF_META).ok_or_else(|| StoreError::Io("no meta column family".into()))?;
    let hard: Option<HardState> = match db.get_pinned_cf(&meta, KEY_HARD)? {
        Some(v) => Some(codec::decode(Cf::Meta, KEY_HARD, &v)?),
        None => None,
    };
    let log = db.cf_handle(CF_LOG).ok_or_else(|| StoreError::Io("no log column family".into()))?;
    let mut it = db.raw_iterator_cf(&log);
    it.seek_to_last();
    let last = it.key().and_then(parse_index);
    Ok(format!(
        "{}, log up to index {}",
        hard.map_or_else(
            || "no hard state".to_string(),
            |h| format!(
                "term {}, vote {}, commit index {}",
                h.term,
                h.vote.map_or_else(|| "none".to_string(), |v| v.to_string()),
                h.commit
            )
        ),
        last.map_or_else(|| "(empty)".to_string(), |i| i.to_string())
    ))
}

/// Upgrades data of format `from` (older than [`FORMAT_VERSION`]) in place.
///
/// There is no older format yet, so every older version is refused. When the format changes,
/// add an arm here that rewrites the data in one synced batch which also stamps the new
/// version, so that a crash mid-migration leaves the old format intact.
fn migrate(db: &Db, from: u32) -> Result<(), StoreError> {
    let _ = db;
    Err(StoreError::FormatUnsupported { found: from, supported: FORMAT_VERSION })
}

/// A RocksDB corruption met while reading the state machine, named as a state-machine record
/// (`sm/<key>`, the key read or the start of the scan) so that the caller knows the state
/// machine, not the log, is damaged.
fn in_sm(e: StoreError, key: &[u8]) -> StoreError {
    match e {
        StoreError::Corrupt { key: k, detail } if k == "rocksdb" => {
            StoreError::Corrupt { key: key_name(Cf::Sm, key), detail: format!("{detail} (RocksDB)") }
        }
        other => other,
    }
}

/// Checks one state-machine pair against its bounds and adds it, checksummed, to `wb`.
fn put_sm(wb: &mut WriteBatch, sm: &impl AsColumnFamilyRef, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
    check_sm_key(key)?;
    if value.len() > SM_VALUE_BYTES_MAX {
        return Err(StoreError::InvalidBatch(format!(
            "state-machine value of {} bytes, the limit is {SM_VALUE_BYTES_MAX}",
            value.len()
        )));
    }
    let k = sm_key(key);
    let v = codec::encode_raw(Cf::Sm, &k, value);
    wb.put_cf(sm, k, v);
    Ok(())
}

fn check_sm_key(key: &[u8]) -> Result<(), StoreError> {
    if key.len() > SM_KEY_BYTES_MAX {
        return Err(StoreError::InvalidBatch(format!(
            "state-machine key of {} bytes, the limit is {SM_KEY_BYTES_MAX}",
            key.len()
        )));
    }
    Ok(())
}

/// If the planned batch removes log entries (a truncation, or a snapshot that discards the
/// log), the last entry it keeps of the log `before` it: the durable mark may not claim more
/// while the batch is being written.
fn removes_from(
    plan: &Plan,
    before: &Tail,
    lookup: &dyn Fn(LogIndex) -> Result<Term, StoreError>,
) -> Result<Option<EntryId>, StoreError> {
    let mut kept: Option<EntryId> = None;
    for (meta, end) in &plan.compactions {
        if *end == LogIndex(u64::MAX) {
            // The whole log goes; the snapshot's entry is what remains.
            kept = Some(kept.map_or(meta.last, |k| k.min(meta.last)));
        }
    }
    if let Some(from) = plan.truncate_from {
        let at = from.prev();
        let id = EntryId::new(before.term(at, lookup)?, at);
        kept = Some(kept.map_or(id, |k| k.min(id)));
    }
    Ok(kept)
}

fn encode_plan(plan: &Plan, b: &PersistBatch) -> Result<Vec<Op>, StoreError> {
    let mut ops = Vec::with_capacity(b.entries.len() + 6);
    let end_log = log_key(LogIndex(u64::MAX)).to_vec();
    let end_cfg = cfg_key(LogIndex(u64::MAX)).to_vec();
    for (meta, end) in &plan.compactions {
        ops.push(Op::Put(CF_SNAP, KEY_SNAP_META.to_vec(), codec::encode(Cf::Snap, KEY_SNAP_META, meta)?));
        ops.push(Op::DeleteRange(CF_LOG, log_key(LogIndex::ZERO).to_vec(), log_key(*end).to_vec()));
        ops.push(Op::DeleteRange(CF_META, cfg_key(LogIndex::ZERO).to_vec(), cfg_key(*end).to_vec()));
    }
    if let Some(from) = plan.truncate_from {
        ops.push(Op::DeleteRange(CF_LOG, log_key(from).to_vec(), end_log));
        ops.push(Op::DeleteRange(CF_META, cfg_key(from).to_vec(), end_cfg));
    }
    for e in &b.entries {
        let k = log_key(e.index);
        let v = codec::encode_entry(&k, e.term, &e.payload)?;
        ops.push(Op::Put(CF_LOG, k.to_vec(), v));
        if let EntryPayload::Config(c) = &e.payload {
            let k = cfg_key(e.index);
            let v = codec::encode(Cf::Meta, &k, c)?;
            ops.push(Op::Put(CF_META, k.to_vec(), v));
        }
    }
    if let Some(hs) = &b.hard_state {
        ops.push(Op::Put(CF_META, KEY_HARD.to_vec(), codec::encode(Cf::Meta, KEY_HARD, hs)?));
    }
    Ok(ops)
}

impl DurableLog for RocksStore {
    fn write(&self, batch: PersistBatch) -> Result<(), StoreError> {
        RocksStore::write(self, batch)
    }

    fn hard_state(&self) -> HardState {
        self.tail_read().hard
    }
}

impl LogStorage for RocksStore {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        Ok(self.tail_read().initial_state())
    }

    fn snapshot_last(&self) -> EntryId {
        self.tail_read().snapshot.last
    }

    fn snapshot_meta(&self) -> Result<SnapshotMeta, StorageError> {
        Ok(self.tail_read().snapshot.clone())
    }

    fn last_index(&self) -> LogIndex {
        self.tail_read().last
    }

    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        let cached = {
            let t = self.tail_read();
            if index < t.snapshot.last.index {
                return Err(StorageError::Compacted(index));
            }
            if index > t.last {
                return Err(StorageError::Unavailable(index));
            }
            t.cached_term(index)
        };
        match cached {
            Some(t) => Ok(t),
            None => self.read_term(index).map_err(StorageError::from),
        }
    }

    fn entries(&self, lo: LogIndex, hi: LogIndex, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        if lo >= hi {
            return Ok(Vec::new());
        }
        {
            let t = self.tail_read();
            if lo <= t.snapshot.last.index {
                return Err(StorageError::Compacted(lo));
            }
            if hi.prev() > t.last {
                return Err(StorageError::Unavailable(hi.prev()));
            }
        }
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(log_key(hi).to_vec());
        let mut it = self.db.raw_iterator_cf_opt(&self.cf(CF_LOG)?, ro);
        it.seek(log_key(lo));
        let mut out = Vec::new();
        let mut total = 0u64;
        let mut expect = lo;
        while expect < hi {
            let Some((k, v)) = it.item() else {
                it.status().map_err(StoreError::from)?;
                return Err(self.gap(expect).into());
            };
            if k != log_key(expect) {
                return Err(self.gap(expect).into());
            }
            let e: EntryOwned = codec::decode(Cf::Log, k, v)?;
            let entry = Entry { index: expect, term: e.term, payload: e.payload };
            total = total.saturating_add(entry.size_bytes());
            if total > max_bytes && !out.is_empty() {
                break;
            }
            out.push(entry);
            expect = expect.next();
            it.next();
        }
        Ok(out)
    }
}
