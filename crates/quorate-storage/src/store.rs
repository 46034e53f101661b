//! [`RocksStore`]: the durable store on RocksDB.

use crate::FORMAT_VERSION;
use crate::batch::{DurableLog, PersistBatch, Plan, SmOp, Tail};
use crate::codec::{
    self, CF_LOG, CF_META, CF_SM, CF_SNAP, CFS, Cf, EntryOwned, KEY_APPLIED, KEY_CFG_PREFIX, KEY_FORMAT, KEY_HARD,
    KEY_SNAP_META, SM_PREFIX, SM_PREFIX_END, cfg_key, key_name, log_key, parse_index, sm_key,
};
use crate::error::StoreError;
use crate::snapshot::{self, SnapshotReader, SnapshotWriter};
use crate::space;
use quorate_log::{
    Configuration, Entry, EntryId, EntryPayload, HardState, InitialState, LogIndex, LogStorage, SnapshotMeta,
    StorageError, Term,
};
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DB, DBRecoveryMode, Options, ReadOptions, WriteBatch, WriteOptions,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};

mod install;
pub use install::INSTALL_BATCH_BYTES_MAX;

/// At open, the terms of up to this many entries at the tail of the log are loaded (and their
/// checksums verified); older terms are read from disk on demand.
pub const OPEN_SCAN_ENTRIES_MAX: u64 = 1 << 16;
/// The most operations one [`RocksStore::apply`] call may carry.
pub const APPLY_OPS_MAX: usize = 1 << 16;
/// The longest state-machine key.
pub const SM_KEY_BYTES_MAX: usize = 64 << 10;
/// The longest state-machine value.
pub const SM_VALUE_BYTES_MAX: usize = 16 << 20;
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
    /// Writes are refused with [`StoreError::BelowFreeSpaceFloor`] while the file system has
    /// less than this many bytes free. Zero disables the check. Default: 64 MiB.
    pub free_space_floor_bytes: u64,
    /// Whether [`RocksStore::apply`] fsyncs. Not needed for safety (state-machine data and the
    /// applied index are written atomically, so after a crash both are simply older and the
    /// entries are applied again from the log); default `false`.
    pub sync_apply: bool,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions { bootstrap: Configuration::default(), free_space_floor_bytes: 64 << 20, sync_apply: false }
    }
}

impl StoreOptions {
    /// Default options with the given bootstrap configuration.
    #[must_use]
    pub fn with_bootstrap(config: Configuration) -> StoreOptions {
        StoreOptions { bootstrap: config, ..StoreOptions::default() }
    }
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
    pub(crate) db: DB,
    dir: PathBuf,
    snap_dir: PathBuf,
    pub(crate) tail: RwLock<Tail>,
    applied: AtomicU64,
    /// The snapshot index of an unfinished state-machine install (0: none); see `install`.
    install_pending: AtomicU64,
    write_lock: Mutex<()>,
    poisoned: Mutex<Option<String>>,
    floor: AtomicU64,
    sync: WriteOptions,
    no_sync: WriteOptions,
    apply_opts: WriteOptions,
    #[cfg(test)]
    pub(crate) fail_next_write: std::sync::atomic::AtomicBool,
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

        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_paranoid_checks(true);
        // A crash may leave a torn record at the end of the WAL (a write that was never
        // acknowledged); recovery stops there. Synced records are never lost.
        opts.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
        opts.set_keep_log_file_num(4);
        opts.set_max_background_jobs(2);
        let cfs = CFS.map(|name| {
            let mut o = Options::default();
            if name == CF_LOG {
                // Appends arrive in bursts; more memtables absorb a burst while an older one
                // is flushed, instead of stalling the writer.
                o.set_max_write_buffer_number(4);
            }
            ColumnFamilyDescriptor::new(name, o)
        });
        let db = DB::open_cf_descriptors(&opts, &db_dir, cfs)?;
        for name in CFS {
            if db.cf_handle(name).is_none() {
                return Err(StoreError::Io(format!("column family {name} did not open")));
            }
        }
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
            write_lock: Mutex::new(()),
            poisoned: Mutex::new(None),
            floor: AtomicU64::new(options.free_space_floor_bytes),
            sync,
            no_sync: WriteOptions::default(),
            apply_opts,
            #[cfg(test)]
            fail_next_write: std::sync::atomic::AtomicBool::new(false),
        };
        store.check_format(&options)?;
        store.load()?;
        store.load_install_marker()?;
        Ok(store)
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        // Invariant: `open` opened every column family in CFS and checked each handle.
        self.db.cf_handle(name).expect("invariant: every column family is opened by RocksStore::open")
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<rocksdb::DBPinnableSlice<'_>>, StoreError> {
        Ok(self.db.get_pinned_cf(self.cf(cf.name()), key)?)
    }

    fn get_decoded<T: serde::de::DeserializeOwned>(&self, cf: Cf, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.get(cf, key)? {
            Some(v) => Ok(Some(codec::decode(cf, key, &v)?)),
            None => Ok(None),
        }
    }

    fn cf_is_empty(&self, name: &str) -> Result<bool, StoreError> {
        let mut it = self.db.raw_iterator_cf(self.cf(name));
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
        wb.put_cf(self.cf(CF_META), KEY_FORMAT, codec::encode(Cf::Meta, KEY_FORMAT, &version)?);
        self.db.write_opt(wb, &self.sync)?;
        Ok(())
    }

    fn check_format(&self, options: &StoreOptions) -> Result<(), StoreError> {
        match self.get_decoded::<u32>(Cf::Meta, KEY_FORMAT)? {
            Some(v) if v == FORMAT_VERSION || v == crate::FORMAT_VERSION_FINALIZED => Ok(()),
            Some(v) if v > FORMAT_VERSION => {
                Err(StoreError::FormatTooNew { found: v, supported: crate::FORMAT_VERSION_FINALIZED })
            }
            Some(v) => migrate(&self.db, v),
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
                let meta = self.cf(CF_META);
                wb.put_cf(meta, KEY_HARD, codec::encode(Cf::Meta, KEY_HARD, &HardState::default())?);
                wb.put_cf(meta, KEY_APPLIED, codec::encode(Cf::Meta, KEY_APPLIED, &LogIndex::ZERO)?);
                wb.put_cf(self.cf(CF_SNAP), KEY_SNAP_META, codec::encode(Cf::Snap, KEY_SNAP_META, &snap)?);
                // The version goes last in the batch only for readability: the batch is atomic.
                wb.put_cf(meta, KEY_FORMAT, codec::encode(Cf::Meta, KEY_FORMAT, &FORMAT_VERSION)?);
                self.db.write_opt(wb, &self.sync)?;
                Ok(())
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
        let mut it = self.db.raw_iterator_cf(self.cf(CF_META));
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
        let mut it = self.db.raw_iterator_cf(self.cf(CF_LOG));
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

    /// The index of the last entry whose effects are in the state-machine data.
    #[must_use]
    pub fn applied_index(&self) -> LogIndex {
        LogIndex(self.applied.load(Ordering::Acquire))
    }

    /// Why the store refuses writes, if it does.
    #[must_use]
    pub fn poisoned(&self) -> Option<String> {
        lock(&self.poisoned).clone()
    }

    /// Sets the free-space floor (bytes; zero disables the check).
    pub fn set_free_space_floor(&self, bytes: u64) {
        self.floor.store(bytes, Ordering::Relaxed);
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

    fn writable(&self) -> Result<(), StoreError> {
        if let Some(cause) = self.poisoned() {
            return Err(StoreError::Poisoned { cause });
        }
        self.free_space_ok()
    }

    fn poison(&self, cause: String) -> StoreError {
        let mut p = lock(&self.poisoned);
        if p.is_none() {
            *p = Some(cause.clone());
        }
        StoreError::Io(cause)
    }

    fn commit_batch(&self, wb: WriteBatch, opts: &WriteOptions) -> Result<(), StoreError> {
        #[cfg(test)]
        if self.fail_next_write.swap(false, Ordering::SeqCst) {
            return Err(self.poison("injected write failure".into()));
        }
        self.db.write_opt(wb, opts).map_err(|e| self.poison(format!("write failed: {}", e.into_string())))
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

    /// Persists several batches, in order, in one RocksDB write with one fsync. Each batch is
    /// validated on its own (an invalid one is refused and the others still written); the
    /// result of each is returned in order.
    pub fn write_many(&self, batches: &[PersistBatch]) -> Vec<Result<(), StoreError>> {
        let _w = lock(&self.write_lock);
        if let Err(e) = self.writable() {
            return vec![Err(e); batches.len()];
        }
        let mut tail = self.tail_read().clone();
        let mut wb = WriteBatch::default();
        let mut results = Vec::with_capacity(batches.len());
        let mut compacted = false;
        let mut sync = false;
        let lookup = |i: LogIndex| self.read_term(i);
        for b in batches {
            let mut t = tail.clone();
            let r = t.plan(b, &lookup).and_then(|plan| encode_plan(&plan, b));
            match r {
                Ok(ops) => {
                    for op in ops {
                        match op {
                            Op::Put(cf, k, v) => wb.put_cf(self.cf(cf), k, v),
                            Op::DeleteRange(cf, a, z) => wb.delete_range_cf(self.cf(cf), a, z),
                        }
                    }
                    compacted |= b.compact.is_some() || b.install.is_some();
                    sync |= !b.skip_fsync;
                    tail = t;
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        if wb.is_empty() {
            return results;
        }
        let opts = if sync { &self.sync } else { &self.no_sync };
        if let Err(e) = self.commit_batch(wb, opts) {
            for r in &mut results {
                if r.is_ok() {
                    *r = Err(e.clone());
                }
            }
            return results;
        }
        tail.trim();
        let snap_index = tail.snapshot.last.index.0;
        *self.tail.write().unwrap_or_else(PoisonError::into_inner) = tail;
        if compacted {
            // Older snapshot files are garbage now. A failure to remove one is harmless: the
            // next compaction retries.
            let _ = snapshot::remove_older(&self.snap_dir, snap_index);
        }
        results
    }

    /// Writes state-machine operations together with the new applied index, atomically, so
    /// that after a restart the state machine neither re-applies nor misses an entry: resume
    /// applying at `applied_index() + 1`. `applied` must advance and not pass the last index.
    pub fn apply(&self, applied: LogIndex, ops: impl IntoIterator<Item = SmOp>) -> Result<(), StoreError> {
        let _w = lock(&self.write_lock);
        self.writable()?;
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
        let sm = self.cf(CF_SM);
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
        wb.put_cf(self.cf(CF_META), KEY_APPLIED, codec::encode(Cf::Meta, KEY_APPLIED, &applied)?);
        self.commit_batch(wb, &self.apply_opts)?;
        self.applied.store(applied.0, Ordering::Release);
        Ok(())
    }

    /// The state-machine value of `key`, checksum verified.
    pub fn sm_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let k = sm_key(key);
        match self.get(Cf::Sm, &k)? {
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
        let limit = limit.min(SM_SCAN_PAIRS_MAX);
        let mut bytes = 0usize;
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(vec![SM_PREFIX_END]);
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_SM), ro);
        it.seek(sm_key(from));
        let mut out = Vec::new();
        while out.len() < limit && bytes < bytes_max {
            let Some((k, v)) = it.item() else { break };
            let body = codec::verify(Cf::Sm, k, v)?;
            bytes = bytes.saturating_add(k.len().saturating_sub(1) + body.len());
            out.push((k[1..].to_vec(), body.to_vec()));
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// Starts streaming a snapshot's data to a file in [`snapshot_dir`](Self::snapshot_dir).
    /// Finish it, then record it with [`compact_to`](DurableLog::compact_to) (or a batch's
    /// `compact`) so that the log prefix it covers can go.
    pub fn snapshot_writer(&self, meta: SnapshotMeta) -> Result<SnapshotWriter, StoreError> {
        SnapshotWriter::create(&self.snap_dir, meta)
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

    /// Reads every record of every column family, verifying checksums, that the log is
    /// gap-free from the snapshot to the last index, that terms never decrease, and that the
    /// configuration mirror matches the configuration entries. Takes time proportional to the
    /// data; meant for tests, tools and start-up checks.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        let _w = lock(&self.write_lock);
        let tail = self.tail_read().clone();
        let mut report = VerifyReport::default();
        let mut it = self.db.raw_iterator_cf(self.cf(CF_LOG));
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
            let mut it = self.db.raw_iterator_cf(self.cf(name));
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

/// Upgrades data of format `from` (older than [`FORMAT_VERSION`]) in place.
///
/// There is no older format yet, so every older version is refused. When the format changes,
/// add an arm here that rewrites the data in one synced batch which also stamps the new
/// version, so that a crash mid-migration leaves the old format intact.
fn migrate(db: &DB, from: u32) -> Result<(), StoreError> {
    let _ = db;
    Err(StoreError::FormatUnsupported { found: from, supported: FORMAT_VERSION })
}

/// Checks one state-machine pair against its bounds and adds it, checksummed, to `wb`.
fn put_sm(wb: &mut WriteBatch, sm: &ColumnFamily, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
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
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_LOG), ro);
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
