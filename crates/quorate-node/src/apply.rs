//! The apply task: a dedicated thread that applies committed entries to the key-value state
//! machine (one atomic store batch per group of entries, with the applied index), answers the
//! writes waiting for them, hands reads to its read workers once applied far enough (with a
//! consistent view of the state machine: see `reads`), takes snapshots and installs snapshots
//! received from the leader.

use crate::server::{Event, Responder, Shared};
use crate::sm::{self, Overlay, SmError};
use quorate_api::{ApiError, ReadInfo, Response, Staleness, Txn};
use quorate_log::{Configuration, Entry, EntryId, EntryPayload, LogIndex, LogStorage, SnapshotMeta};
use quorate_storage::{APPLY_OPS_MAX, INSTALL_BATCH_BYTES_MAX, RocksStore, SnapshotReader, SnapshotWriter, StoreError};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Store operations gathered before a batch is written (well below the store's limit).
const OPS_PER_BATCH: usize = APPLY_OPS_MAX / 2;
/// Bytes gathered before a batch is written: the state-machine writes pending plus the results
/// waiting to be answered. A batch is cut after the entry that reaches it, so it holds at most
/// this plus one command's writes and result.
pub(crate) const APPLY_BATCH_BYTES_MAX: usize = 64 << 20;

// A batch of OPS_PER_BATCH operations plus one command's stays within the store's limit.
const _: () = assert!(OPS_PER_BATCH + sm::COMMAND_WRITES_MAX + 8 <= APPLY_OPS_MAX);
/// State-machine repairs (reinstalls from the local snapshot) one process makes before it
/// stops instead: a disk that keeps damaging records is not to be trusted.
pub(crate) const REPAIRS_MAX: u32 = 3;
/// Bytes of log entries read at a time when the log is applied again after a reinstall.
const REPLAY_READ_BYTES: u64 = 16 << 20;
/// How long a state-machine write refused for disk space is retried before the node stops.
const SPACE_RETRY_FOR: Duration = Duration::from_secs(300);
/// Time between two tries of a state-machine write refused for disk space.
const SPACE_RETRY_EVERY: Duration = Duration::from_millis(250);

/// A read waiting to be served.
#[derive(Debug)]
pub(crate) enum ReadReq {
    Get {
        key: Vec<u8>,
    },
    /// A scan page; `paged`: answer with `Response::ScanPage` (else `Response::Scan`).
    Scan {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: u32,
        paged: bool,
    },
    /// `key` as it was at key-value `revision` (multi-version history).
    GetAt {
        key: Vec<u8>,
        revision: u64,
    },
    /// A scan page as the keys were at `revision` (answered with `Response::ScanPage`).
    ScanAt {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: u32,
        revision: u64,
    },
    /// A watch's next answer (from this node's applied state).
    Watch(quorate_api::WatchRequest),
    /// The stored part of leases the leader's clock answered for (key counts; the attached
    /// keys if `keys`): `Response::Leases` if `list`, else `Response::LeaseTtl` of the one.
    Leases {
        seen: Vec<crate::leases::Seen>,
        keys: bool,
        list: bool,
    },
    /// A read-only transaction from operation `from` at `revision` (a next page); `paged`:
    /// answer with `Response::TxnPage` (else the whole `Response::Txn`, or an error if it does
    /// not fit one answer).
    Txn {
        txn: Txn,
        from: u32,
        revision: Option<u64>,
        paged: bool,
    },
}

/// What the driver hands the apply task, in order.
pub(crate) enum ApplyMsg {
    /// Committed entries, in order.
    Entries(Vec<Entry>),
    /// A client write proposed at `at`: answer it when that index is applied.
    Register { at: EntryId, responder: Responder, deadline: Instant },
    /// Serve a read once applied ≥ `index`.
    Read { index: LogIndex, req: ReadReq, responder: Responder, staleness: Option<Staleness>, deadline: Instant },
    /// Write a snapshot of the state machine at exactly this applied point.
    TakeSnapshot(SnapshotMeta),
    /// The install batch for this snapshot is durable: install its data.
    Install(SnapshotMeta),
    /// Write a backup snapshot into the backups directory once applied ≥ `index` (the index
    /// a ReadIndex round confirmed this node's leadership at); with `stream`, have a read
    /// worker write the image of snapshot stream `stream` instead ([`crate::save_stream`]).
    Backup { config: Configuration, index: LogIndex, responder: Responder, deadline: Instant, stream: Option<u64> },
}

/// The damaged state-machine record `e` names, if `e` is one (a value that does not decode or
/// whose checksum does not verify, or a RocksDB block of the state machine that does not):
/// the state machine can be repaired from the local snapshot and the log.
pub(crate) fn sm_damage(e: &SmError) -> Option<String> {
    match e {
        SmError::Corrupt { key, detail } => Some(format!("sm/{key}: {detail}")),
        SmError::Storage(StoreError::Corrupt { key, detail }) if key.starts_with("sm/") => {
            Some(format!("{key}: {detail}"))
        }
        _ => None,
    }
}

/// Runs `write` again while the store refuses it for disk space, up to [`SPACE_RETRY_FOR`]:
/// a full disk stalls the state machine instead of stopping the node.
fn retry_space<T>(what: &str, mut write: impl FnMut() -> Result<T, StoreError>) -> Result<T, StoreError> {
    let started = Instant::now();
    let mut warned = false;
    loop {
        match write() {
            Err(e) if e.is_space() && started.elapsed() < SPACE_RETRY_FOR => {
                if !warned {
                    tracing::warn!(error = %e, what, "state-machine write refused for disk space; retrying until space is freed");
                    warned = true;
                }
                std::thread::sleep(SPACE_RETRY_EVERY);
            }
            r => return r,
        }
    }
}

/// Applies the log entries `(from, to]` to the state machine again (after a reinstall), in
/// atomic batches with the applied index, reading the log in bounded chunks. The entries were
/// applied before, so they are committed and persisted. Only the state machine changes: no
/// client is answered, no hash window is fed.
pub(crate) fn replay_log(store: &RocksStore, from: LogIndex, to: LogIndex) -> Result<(), SmError> {
    let mut next = from.next();
    while next <= to {
        let entries = store.entries(next, to.next(), REPLAY_READ_BYTES).map_err(StoreError::from)?;
        let Some(last) = entries.last().map(|e| e.index) else {
            return Err(SmError::Storage(StoreError::Unavailable(next)));
        };
        let mut rest = entries.as_slice();
        while !rest.is_empty() {
            let mut ov = Overlay::new(store);
            let mut used = 0;
            let mut upto = None;
            for e in rest {
                used += 1;
                if let EntryPayload::Command(d) = &e.payload {
                    sm::apply_entry(&mut ov, e.index, d.as_ref())?;
                }
                upto = Some(e.index);
                if ov.len() >= OPS_PER_BATCH {
                    break;
                }
            }
            rest = &rest[used..];
            if let Some(at) = upto {
                let ops = ov.into_ops();
                retry_space("replay", || store.apply(at, ops.iter().cloned()))?;
            }
        }
        next = last.next();
    }
    crate::versions::sync_format(store)?;
    Ok(())
}

/// Reinstalls the state machine from the newest local snapshot file the log continues
/// ([`RocksStore::usable_snapshot`]; its data checksum is checked before anything is cleared),
/// or clears it when the log still starts at index 1 and there is none, and applies the log
/// after it again up to `to`. Returns the index reinstalled from.
pub(crate) fn reinstall_state_machine(store: &RocksStore, to: LogIndex) -> Result<LogIndex, SmError> {
    let from = match store.usable_snapshot(to)? {
        Some((meta, path)) => {
            install_snapshot_batches_from(store, &meta, Some(&path), None, true)?;
            meta.last.index
        }
        None if store.snapshot_last().index == LogIndex::ZERO => {
            store.reset_sm()?;
            LogIndex::ZERO
        }
        None => {
            return Err(SmError::Storage(StoreError::Io(format!(
                "cannot repair the state machine: no local snapshot file between the log's first index {} and the \
                 applied index {to} (remove this node from the cluster and add it back as a new member)",
                store.snapshot_last().index.next()
            ))));
        }
    };
    replay_log(store, from, to)?;
    Ok(from)
}

/// At start, before anything reads the state machine: finishes an install or a reinstall that a
/// crash interrupted, and repairs a state machine whose records do not verify (reinstall from
/// the local snapshot, then the log again up to the applied index), with the evidence logged,
/// instead of stopping at every start.
pub(crate) fn repair_at_start(store: &RocksStore, id: quorate_log::NodeId) -> Result<(), SmError> {
    let recorded = store.snapshot_meta().map_err(StoreError::from)?;
    let applied = store.applied_index();
    if let Some(at) = store.sm_install_pending() {
        tracing::warn!(node = %id, install = %at, snapshot = %recorded.last.index, "completing an interrupted snapshot install");
        if at == recorded.last.index {
            install_snapshot_batches(store, &recorded, None, true)?;
        } else {
            // A reinstall from a local snapshot file (a repair) was interrupted.
            let Some((meta, path)) = store.usable_snapshot(at)?.filter(|(m, _)| m.last.index == at) else {
                return Err(SmError::Storage(StoreError::Io(format!(
                    "an interrupted state-machine reinstall from the snapshot at {at} cannot be completed: its file is \
                     gone (remove this node from the cluster and add it back as a new member)"
                ))));
            };
            install_snapshot_batches_from(store, &meta, Some(&path), None, true)?;
        }
        if applied > at {
            // The log after the snapshot had been applied before.
            replay_log(store, at, applied)?;
        }
    } else if recorded.last.index > applied {
        tracing::warn!(node = %id, index = %recorded.last.index, "completing an interrupted snapshot install");
        install_snapshot_data(store, &recorded)?;
    }
    // The records a start reads; one that does not verify is repaired. So is a state machine
    // whose table file a compaction found damaged (RocksDB stopped; see `SM_DAMAGED_FILE`).
    let probe = |store: &RocksStore| -> Result<(), SmError> {
        sm::check_cluster_version(store)?;
        sm::revision(store)?;
        sm::log_time_ms(store)?;
        sm::member_addrs(store)?;
        Ok(())
    };
    let damaged = match (store.sm_damaged(), probe(store)) {
        (Some(evidence), _) => Some(evidence),
        (None, Ok(())) => None,
        (None, Err(e)) => Some(sm_damage(&e).ok_or(e)?),
    };
    if let Some(damage) = damaged {
        let to = store.applied_index();
        tracing::error!(node = %id, damage = %damage, applied = %to, "a state-machine record does not verify; reinstalling the state machine from the local snapshot and applying the log after it again");
        let from = reinstall_state_machine(store, to)?;
        tracing::warn!(node = %id, snapshot = %from, applied = %to, "state machine repaired");
        probe(store)?;
    }
    Ok(())
}

struct Waiting {
    term: quorate_log::Term,
    responder: Responder,
    deadline: Instant,
}

/// A `snapshot save` confirmed at `index`, waiting for it to be applied.
pub(crate) struct WaitingBackup {
    /// A snapshot stream's image rather than a file in the backups directory.
    stream: Option<u64>,
    config: Configuration,
    index: LogIndex,
    responder: Responder,
    deadline: Instant,
}

/// `snapshot save`s waiting for their index at most (admin requests; more are refused).
const BACKUPS_WAITING_MAX: usize = 4;

pub(crate) struct WaitingRead {
    req: ReadReq,
    responder: Responder,
    staleness: Option<Staleness>,
    deadline: Instant,
}

pub(crate) struct Applier {
    shared: Arc<Shared>,
    events: mpsc::Sender<Event>,
    applied: EntryId,
    writes: BTreeMap<LogIndex, Waiting>,
    reads: BTreeMap<LogIndex, Vec<WaitingRead>>,
    /// `snapshot save`s confirmed by a ReadIndex round, waiting for their index to be applied
    /// (at most [`BACKUPS_WAITING_MAX`]).
    backups: Vec<WaitingBackup>,
    last_sweep: Instant,
    /// State-machine repairs made by this process.
    repairs: u32,
    /// The state machine's bookkeeping keys as the last apply batch stored them, to seed the
    /// next batch's overlay ([`Overlay::with_meta`]): `m/time`, `m/revision` and the rest are
    /// not read from the store again for every batch. `None` until a batch is stored, and
    /// again whenever anything else writes the state machine (an install, a repair) or a
    /// batch fails.
    meta: Option<sm::MetaCache>,
}

/// Installs the data of the store's recorded snapshot `meta` (its file in the snapshot
/// directory) into the state machine. Also the repair path at start-up, when the install
/// batch was written but the data not yet, or not all of it (a crash in between).
///
/// The file's checksum is verified by a first read before anything is written. The data then
/// goes in bounded batches behind the store's *install in progress* marker
/// ([`RocksStore::begin_sm_install`]): a crash between batches leaves the marker, and the next
/// start installs again from a cleared state machine, so a mixed state is never served.
pub(crate) fn install_snapshot_data(store: &RocksStore, meta: &SnapshotMeta) -> Result<(), SmError> {
    install_snapshot_batches(store, meta, None, false).map(|_| ())
}

/// State-machine pairs per install batch (the store takes at most [`APPLY_OPS_MAX`]).
pub(crate) const INSTALL_BATCH_PAIRS: usize = APPLY_OPS_MAX / 2;
/// Bytes per install batch, well below the store's limit.
const INSTALL_BATCH_BYTES: usize = INSTALL_BATCH_BYTES_MAX / 2;

/// [`install_snapshot_data`], stopping after `stop_after` batches when given (a test hook
/// that simulates a crash between batches: the marker stays). With `reinstall`, the snapshot
/// may be at or below the applied index (a repair: the caller applies the log after it
/// again). Returns the pairs installed.
pub(crate) fn install_snapshot_batches(
    store: &RocksStore,
    meta: &SnapshotMeta,
    stop_after: Option<usize>,
    reinstall: bool,
) -> Result<u64, SmError> {
    install_snapshot_batches_from(store, meta, None, stop_after, reinstall)
}

/// [`install_snapshot_batches`] from the snapshot file `path` (`None`: the file of the
/// store's recorded snapshot).
fn install_snapshot_batches_from(
    store: &RocksStore,
    meta: &SnapshotMeta,
    path: Option<&std::path::Path>,
    stop_after: Option<usize>,
    reinstall: bool,
) -> Result<u64, SmError> {
    let open = || -> Result<SnapshotReader, SmError> {
        let found = match path {
            Some(p) => Some(SnapshotReader::open(p)?),
            None => store.snapshot_reader()?,
        };
        let Some(reader) = found else {
            return Err(SmError::Storage(StoreError::Io(format!(
                "the snapshot file for index {} is missing; cannot install the state machine",
                meta.last.index
            ))));
        };
        if reader.meta() != meta {
            return Err(SmError::Storage(StoreError::Io(format!(
                "the recorded snapshot is {:?}, expected {:?}",
                reader.meta().last,
                meta.last
            ))));
        }
        Ok(reader)
    };
    // Checksum first: a damaged file must not clear a good state machine.
    let mut check = open()?;
    std::io::copy(&mut check, &mut std::io::sink()).map_err(|e| {
        SmError::Storage(StoreError::Corrupt {
            key: format!("snapshot at {}", meta.last.index),
            detail: format!("the snapshot file does not verify: {e}"),
        })
    })?;
    drop(check);

    let mut reader = open()?;
    if reinstall {
        store.begin_sm_reinstall(meta.last.index)?;
    } else {
        store.begin_sm_install(meta.last.index)?;
    }
    let mut batch: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut bytes = 0usize;
    let mut batches = 0usize;
    let stopped = std::cell::Cell::new(false);
    let n = sm::read_snapshot_data(&mut reader, |key, value| {
        if stopped.get() {
            return Ok(());
        }
        bytes += key.len() + value.len();
        batch.push((key, value));
        if batch.len() >= INSTALL_BATCH_PAIRS || bytes >= INSTALL_BATCH_BYTES {
            let pairs = std::mem::take(&mut batch);
            retry_space("snapshot install", || store.write_sm_install_batch(pairs.clone()))?;
            bytes = 0;
            batches += 1;
            if stop_after.is_some_and(|s| batches >= s) {
                stopped.set(true);
            }
        }
        Ok(())
    })?;
    if stopped.get() {
        return Ok(0);
    }
    if !batch.is_empty() {
        retry_space("snapshot install", || store.write_sm_install_batch(batch.clone()))?;
    }
    store.finish_sm_install(meta.last.index)?;
    Ok(n)
}

/// Serves a read-only transaction (or one page of it) at the state `read` describes.
fn read_txn<R: sm::SmRead + ?Sized>(
    store: &R,
    txn: &Txn,
    from: u32,
    revision: Option<u64>,
    paged: bool,
    read: &ReadInfo,
) -> Result<Result<Response, ApiError>, SmError> {
    if let Some(revision) = revision
        && revision != read.revision
    {
        // The key-value state moved on since the first page: the pages would not be one read.
        return Ok(Err(ApiError::PageExpired { revision, current: read.revision }));
    }
    let page = match sm::read_txn_page(store, txn, from, sm::PAGE_RESULT_BYTES_MAX)? {
        Ok(page) => page,
        Err(e) => return Ok(Err(e)),
    };
    if paged {
        return Ok(Ok(Response::TxnPage {
            succeeded: page.succeeded,
            results: page.results,
            revision: read.revision,
            next: page.next,
        }));
    }
    if page.next.is_some() {
        return Ok(Err(ApiError::InvalidRequest(format!(
            "the results of this read-only transaction take more than {} bytes, more than one answer holds: read it \
             in pages (a quorate/2 client does) or split it",
            sm::PAGE_RESULT_BYTES_MAX
        ))));
    }
    Ok(Ok(Response::Txn { succeeded: page.succeeded, results: page.results, revision: read.revision }))
}

impl Applier {
    pub(crate) fn new(shared: Arc<Shared>, events: mpsc::Sender<Event>, applied: EntryId) -> Applier {
        Applier {
            shared,
            events,
            applied,
            writes: BTreeMap::new(),
            reads: BTreeMap::new(),
            backups: Vec::new(),
            last_sweep: Instant::now(),
            repairs: 0,
            meta: None,
        }
    }

    /// Runs until the driver drops its sender. A state-machine failure is reported as a
    /// fatal event and ends the task.
    pub(crate) fn run(mut self, rx: &mut mpsc::Receiver<ApplyMsg>) {
        let store = self.shared.store.clone();
        let gate = reads::InstallGate::default();
        std::thread::scope(|scope| {
            let (pool, failed) =
                reads::ReadPool::start(scope, &store, &gate, self.shared.id, self.shared.failpoints.clone());
            self.run_with(rx, &pool, &failed);
            // Reads still queued are answered that the node is stopping; the workers end.
            pool.stop();
        });
        // Anything still waiting learns that the node is stopping.
        for (_, w) in std::mem::take(&mut self.writes) {
            w.responder.send(Err(ApiError::Timeout), None);
        }
        for (_, rs) in std::mem::take(&mut self.reads) {
            for r in rs {
                r.responder.send(Err(ApiError::Unavailable("node stopping; retry elsewhere".into())), None);
            }
        }
        for b in std::mem::take(&mut self.backups) {
            b.responder.send(Err(ApiError::Unavailable("node stopping; retry elsewhere".into())), None);
        }
    }

    /// The loop of [`run`](Self::run), with the read workers running.
    fn run_with(
        &mut self,
        rx: &mut mpsc::Receiver<ApplyMsg>,
        pool: &reads::ReadPool<'_>,
        failed: &Receiver<reads::Failure>,
    ) {
        let handle = self.shared.handle.clone();
        loop {
            self.shared.failpoints.apply_turn();
            let next = handle.block_on(async { tokio::time::timeout(Duration::from_millis(250), rx.recv()).await });
            let result = match next {
                Ok(None) => break,
                Ok(Some(msg)) => {
                    self.shared.failpoints.before_apply();
                    self.handle_repairing(msg, pool)
                }
                Err(_) => Ok(()),
            };
            let result = result
                .and_then(|()| self.repair_read_failures(pool, failed))
                .and_then(|()| self.serve_reads_repairing(pool));
            self.save_backups(pool);
            if let Err(e) = result {
                tracing::error!(error = %e, "state machine failed; stopping the node");
                let _ = self.events.blocking_send(Event::Fatal(format!("state machine: {e}")));
                break;
            }
            if self.last_sweep.elapsed() >= Duration::from_millis(250) {
                self.sweep();
            }
        }
    }

    /// Repairs the state machine after a failure a read worker met (a damaged record), as
    /// when the apply thread met it; a failure that is not damage, or one more than
    /// [`REPAIRS_MAX`] repairs allow, is returned (the node stops). Failures met in views from
    /// before the last install or repair are dropped (the state machine they read is gone).
    fn repair_read_failures(
        &mut self,
        pool: &reads::ReadPool<'_>,
        failed: &Receiver<reads::Failure>,
    ) -> Result<(), SmError> {
        while let Ok(failure) = failed.try_recv() {
            if !pool.is_current(&failure) {
                continue;
            }
            let (_, e) = failure;
            if !self.repair_if_damaged(&e, pool)? {
                return Err(e);
            }
        }
        Ok(())
    }

    /// [`handle`](Self::handle), repairing a damaged state machine (and handling the message
    /// again) instead of failing, at most [`REPAIRS_MAX`] times per process.
    fn handle_repairing(&mut self, msg: ApplyMsg, pool: &reads::ReadPool<'_>) -> Result<(), SmError> {
        match msg {
            ApplyMsg::Entries(entries) => loop {
                match self.apply_entries(&entries) {
                    Err(e) if self.repair_if_damaged(&e, pool)? => {}
                    r => return r,
                }
            },
            ApplyMsg::TakeSnapshot(meta) => loop {
                match self.take_snapshot(meta.clone(), pool) {
                    Err(e) if self.repair_if_damaged(&e, pool)? => {}
                    r => return r,
                }
            },
            other => self.handle(other, pool),
        }
    }

    /// [`serve_reads`](Self::serve_reads), repairing a damaged state machine as
    /// [`handle_repairing`](Self::handle_repairing) does.
    fn serve_reads_repairing(&mut self, pool: &reads::ReadPool<'_>) -> Result<(), SmError> {
        loop {
            match self.serve_reads(pool) {
                Err(e) if self.repair_if_damaged(&e, pool)? => {}
                r => return r,
            }
        }
    }

    /// If `e` is a damaged state-machine record and repairs are left: reinstalls the state
    /// machine from the local snapshot, applies the log after it again up to the applied index
    /// (evidence logged), and returns `true`. A failed repair is an error.
    fn repair_if_damaged(&mut self, e: &SmError, pool: &reads::ReadPool<'_>) -> Result<bool, SmError> {
        let Some(damage) = sm_damage(e) else { return Ok(false) };
        if self.repairs >= REPAIRS_MAX {
            tracing::error!(node = %self.shared.id, damage = %damage, repairs = self.repairs, "a state-machine record does not verify again after {REPAIRS_MAX} repairs; stopping (the disk is not to be trusted)");
            return Ok(false);
        }
        self.repairs += 1;
        self.meta = None;
        let store = self.shared.store.clone();
        let to = self.applied.index;
        let started = Instant::now();
        tracing::error!(node = %self.shared.id, damage = %damage, applied = %to, repair = self.repairs, "a state-machine record does not verify; reinstalling the state machine from the local snapshot and applying the log after it again");
        // No read worker reads a view while the column family is dropped and recreated.
        let exclusive = pool.gate().exclusive();
        let from = reinstall_state_machine(&store, to)?;
        drop(exclusive);
        self.refresh_from_store()?;
        tracing::warn!(node = %self.shared.id, snapshot = %from, applied = %to, elapsed_ms = started.elapsed().as_millis() as u64, "state machine repaired");
        Ok(true)
    }

    /// Reloads what the node caches from the state machine (after an install or a repair).
    fn refresh_from_store(&mut self) -> Result<(), SmError> {
        self.meta = None;
        let store = &*self.shared.store;
        let revision = sm::revision(store)?;
        self.shared.revision.store(revision, Ordering::Relaxed);
        self.shared.revision_tx.send_replace(revision);
        self.shared.log_time_ms.store(sm::log_time_ms(store)?, Ordering::Relaxed);
        for (node, addr) in sm::member_addrs(store)? {
            self.shared.learn_member_addr(node, addr);
        }
        self.shared.cluster_version.refresh(store)?;
        // The lease table was replaced: the leader's clock reloads it.
        self.shared.leases.invalidate();
        crate::versions::sync_format(store)?;
        crate::versions::sync_transport(&self.shared);
        Ok(())
    }

    fn handle(&mut self, msg: ApplyMsg, pool: &reads::ReadPool<'_>) -> Result<(), SmError> {
        match msg {
            ApplyMsg::Entries(entries) => self.apply_entries(&entries),
            ApplyMsg::Register { at, responder, deadline } => {
                if at.index <= self.applied.index {
                    // Cannot happen (registration precedes the entry in the channel); be safe.
                    responder.send(Err(ApiError::Timeout), Some(at));
                } else if let Some(old) = self.writes.insert(at.index, Waiting { term: at.term, responder, deadline }) {
                    // Our entry was overwritten in this node's log, but a copy may survive on
                    // other replicas and still commit under a later leader: the outcome is unknown,
                    // not a failure (the client retries under the same session sequence number).
                    old.responder.send(Err(ApiError::Timeout), None);
                }
                Ok(())
            }
            ApplyMsg::Read { index, req, responder, staleness, deadline } => {
                self.reads.entry(index).or_default().push(WaitingRead { req, responder, staleness, deadline });
                Ok(())
            }
            ApplyMsg::TakeSnapshot(meta) => self.take_snapshot(meta, pool),
            ApplyMsg::Install(meta) => self.install(&meta, pool),
            ApplyMsg::Backup { config, index, responder, deadline, stream } => {
                if self.backups.len() >= BACKUPS_WAITING_MAX {
                    responder.send(Err(ApiError::Unavailable("too many snapshot saves waiting; retry".into())), None);
                } else {
                    self.backups.push(WaitingBackup { stream, config, index, responder, deadline });
                    self.save_backups(pool);
                }
                Ok(())
            }
        }
    }

    fn apply_entries(&mut self, entries: &[Entry]) -> Result<(), SmError> {
        let store = self.shared.store.clone();
        let mut rest = entries;
        while !rest.is_empty() {
            // Taken: a batch that fails leaves none (the next one reads the store).
            let mut ov = Overlay::with_meta(&*store, self.meta.take().unwrap_or_default());
            let mut outcomes = Vec::new();
            let mut last = None;
            let mut used = 0;
            let mut result_bytes = 0usize;
            for e in rest {
                used += 1;
                if e.index <= self.applied.index {
                    continue;
                }
                self.shared.telemetry.applying(e);
                let outcome = match &e.payload {
                    EntryPayload::Command(d) => {
                        let mut o = sm::apply_entry(&mut ov, e.index, d)?;
                        if self.writes.contains_key(&e.index) {
                            result_bytes = result_bytes.saturating_add(quorate_api::encoded_len(&o.result));
                        } else {
                            // Nobody here waits for it (a follower, or a write proposed
                            // elsewhere): keep no result in memory until the batch is written.
                            o.result = Ok(Response::Done);
                        }
                        Some(o)
                    }
                    _ => None,
                };
                outcomes.push((e.id(), outcome));
                last = Some(e.id());
                if ov.len() >= OPS_PER_BATCH || ov.bytes().saturating_add(result_bytes) >= APPLY_BATCH_BYTES_MAX {
                    break;
                }
            }
            rest = &rest[used..];
            let Some(last) = last else {
                self.meta = Some(ov.meta_after());
                continue;
            };
            // What the store holds once the batch is written, known without reading it back.
            let (revision, log_time_ms) = (sm::ov_revision(&ov)?, sm::ov_log_time_ms(&ov)?);
            let meta = ov.meta_after();
            let ops = ov.into_ops();
            retry_space("apply", || store.apply(last.index, ops.iter().cloned()))?;
            self.meta = Some(meta);
            self.applied = last;
            self.shared.telemetry.applied(last.index);
            self.shared.revision.store(revision, Ordering::Relaxed);
            self.shared.revision_tx.send_replace(revision);
            self.shared.log_time_ms.store(log_time_ms, Ordering::Relaxed);
            for (id, outcome) in outcomes {
                let (result, cached) = match outcome {
                    Some(o) => {
                        if let Some((node, addr)) = o.member_addr {
                            self.shared.learn_member_addr(node, addr);
                        }
                        if let Some(s) = &o.in_session {
                            // Stored: replays of it may be answered before proposing.
                            self.shared.replays.applied(s.session.0, &s.principal, s.last_seq);
                        }
                        if let Some(change) = &o.lease {
                            // Written: the leader's clock may count on it.
                            self.shared.leases.applied(change, std::time::Instant::now());
                        }
                        if let Some(version) = o.cluster_version {
                            self.shared.cluster_version.raise(version);
                            crate::versions::sync_format(&self.shared.store)?;
                            crate::versions::sync_transport(&self.shared);
                        }
                        (o.result, o.cached)
                    }
                    None => (Ok(Response::Done), false),
                };
                self.answer_write(id, result, cached);
            }
        }
        Ok(())
    }

    /// Answers the write waiting at `id.index`, if any, and any older one left over.
    /// `cached`: the result came from the session's cache (audited as such).
    fn answer_write(&mut self, id: EntryId, result: Result<Response, ApiError>, cached: bool) {
        while let Some(entry) = self.writes.first_entry() {
            if *entry.key() > id.index {
                break;
            }
            let index = *entry.key();
            let mut w = entry.remove();
            if index == id.index && w.term == id.term {
                if cached {
                    w.responder.mark_answered(crate::audit::Answered::FromCacheAtApply);
                }
                w.responder.send(result.clone(), Some(id));
            } else {
                // A different entry landed at that index: ours was never committed.
                w.responder.send(Err(ApiError::Unavailable("leadership changed; retry".into())), Some(id));
            }
        }
    }

    /// Hands the reads whose index is applied to the read workers, with one view of the state
    /// machine as applied now. A read served here (no worker runs) that meets a damaged record
    /// is answered `Unavailable` (retry), the others of its index wait, and the error is
    /// returned (the caller repairs the state machine).
    fn serve_reads(&mut self, pool: &reads::ReadPool<'_>) -> Result<(), SmError> {
        if self.reads.first_key_value().is_none_or(|(index, _)| *index > self.applied.index) {
            return Ok(());
        }
        let view = pool.view()?;
        while let Some(entry) = self.reads.first_entry() {
            if *entry.key() > self.applied.index {
                break;
            }
            let index = *entry.key();
            let mut rest = entry.remove().into_iter();
            while let Some(r) = rest.next() {
                if let Err(e) = pool.dispatch(&view, r) {
                    let left: Vec<WaitingRead> = rest.collect();
                    if !left.is_empty() {
                        self.reads.insert(index, left);
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn sweep(&mut self) {
        let now = Instant::now();
        self.last_sweep = now;
        let expired: Vec<LogIndex> = self.writes.iter().filter(|(_, w)| w.deadline <= now).map(|(i, _)| *i).collect();
        for i in expired {
            if let Some(w) = self.writes.remove(&i) {
                w.responder.send(Err(ApiError::Timeout), None);
            }
        }
        for rs in self.reads.values_mut() {
            let (gone, keep): (Vec<_>, Vec<_>) = std::mem::take(rs).into_iter().partition(|r| r.deadline <= now);
            *rs = keep;
            for r in gone {
                r.responder.send(Err(ApiError::Unavailable("read not served in time; retry".into())), None);
            }
        }
        self.reads.retain(|_, rs| !rs.is_empty());
        let (gone, keep): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.backups).into_iter().partition(|b| b.deadline <= now);
        self.backups = keep;
        for b in gone {
            b.responder
                .send(Err(ApiError::Unavailable("snapshot save: index not applied in time; retry".into())), None);
        }
    }

    /// Takes the snapshot the core asked for at `meta.last`: a view of the state machine as
    /// applied now (exactly `meta.last`), written to its file off this thread (see
    /// [`reads`]: the snapshot thread), which reports it. At most one at a time: a request
    /// while one is written is skipped (the core asks again).
    fn take_snapshot(&mut self, meta: SnapshotMeta, pool: &reads::ReadPool<'_>) -> Result<(), SmError> {
        if meta.last != self.applied {
            tracing::warn!(asked = ?meta.last, applied = ?self.applied, "snapshot request does not match the applied point");
            // Reported, so that the core's request does not stay pending (it asks again).
            let _ = self.events.blocking_send(Event::SnapshotSkipped(meta));
            return Ok(());
        }
        if pool.snapshot_in_flight() {
            tracing::info!(node = %self.shared.id, index = %meta.last.index, "a snapshot is still being written; this request is skipped (the core asks again)");
            let _ = self.events.blocking_send(Event::SnapshotSkipped(meta));
            return Ok(());
        }
        let started = Instant::now();
        let view = pool.bulk_view()?;
        if view.applied_index() != meta.last.index {
            // Cannot happen: this thread is the state machine's only writer.
            tracing::warn!(asked = ?meta.last, view = %view.applied_index(), "the snapshot's view is not of the applied point; skipped");
            let _ = self.events.blocking_send(Event::SnapshotSkipped(meta));
            return Ok(());
        }
        let (shared, events) = (self.shared.clone(), self.events.clone());
        let report = meta.clone();
        let done: reads::SnapshotDone = Box::new(move |outcome| report_snapshot(&shared, &events, report, outcome));
        pool.dispatch_snapshot(&view, meta, started, done)
    }

    fn install(&mut self, meta: &SnapshotMeta, pool: &reads::ReadPool<'_>) -> Result<(), SmError> {
        if meta.last.index <= self.applied.index {
            return Ok(());
        }
        let install_started = Instant::now();
        self.meta = None;
        // No read worker reads a view while the column family is dropped and recreated.
        let exclusive = pool.gate().exclusive();
        install_snapshot_data(&self.shared.store, meta)?;
        drop(exclusive);
        self.applied = meta.last;
        self.shared.telemetry.installed(meta.last.index, install_started.elapsed());
        self.refresh_from_store()?;
        // Writes waiting at covered indexes: the outcome is in the snapshot, unknown here.
        while let Some(e) = self.writes.first_entry() {
            if *e.key() > meta.last.index {
                break;
            }
            e.remove().responder.send(Err(ApiError::Timeout), None);
        }
        tracing::info!(node = %self.shared.id, index = %meta.last.index, "snapshot installed");
        Ok(())
    }

    /// Writes the backups whose confirmed index is applied (a snapshot stream's image: hands
    /// it to a read worker, and answers the stream's opening).
    fn save_backups(&mut self, pool: &reads::ReadPool<'_>) {
        if self.backups.iter().all(|b| b.index > self.applied.index) {
            return;
        }
        let (due, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.backups).into_iter().partition(|b| b.index <= self.applied.index);
        self.backups = waiting;
        for b in due {
            if let Some(stream) = b.stream {
                self.start_image(stream, b.config, b.responder, pool);
                continue;
            }
            let r = self.backup(b.config);
            let at = Some(self.applied);
            match r {
                Ok((path, index)) => {
                    b.responder.send(Ok(Response::SnapshotSaved { path: path.display().to_string(), index }), at);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "backup snapshot failed");
                    b.responder.send(Err(ApiError::Internal(format!("backup failed: {e}"))), at);
                }
            }
        }
    }

    /// Snapshot stream `stream`: a view of the state machine as applied now (at or after the
    /// confirmed index) goes to a read worker, which writes the image; the opening is answered.
    fn start_image(&self, stream: u64, config: Configuration, responder: Responder, pool: &reads::ReadPool<'_>) {
        let Some(image) = self.shared.streams.image(stream) else {
            responder.send(Err(self.shared.streams.gone(stream)), None);
            return;
        };
        let meta = SnapshotMeta { last: self.applied, config };
        match pool.bulk_view() {
            Ok(view) => {
                pool.dispatch_image(&view, meta, image);
                let opened =
                    Response::SnapshotStreamOpened { stream, index: self.applied.index, term: self.applied.term };
                responder.send(Ok(opened), Some(self.applied));
            }
            Err(e) => {
                image.finish(Err(format!("cannot take a view of the state machine: {e}")));
                responder.send(Err(ApiError::Internal(format!("snapshot stream: {e}"))), None);
            }
        }
    }

    /// The backup of the state machine as applied now (this thread is its only writer).
    fn backup(&self, config: Configuration) -> Result<(PathBuf, LogIndex), SmError> {
        let meta = SnapshotMeta { last: self.applied, config };
        let path = write_backup(&*self.shared.store, &self.shared.backups_dir, meta, &|| false)?;
        Ok((path, self.applied.index))
    }
}

/// Writes the backup snapshot `meta` of `sm` (the state machine at `meta.last`) into
/// `backups_dir` (`snapshot save`: the snapshot file format, written to a temporary name,
/// fsynced, renamed); returns its path. Cut short, and nothing left, once `stop()` is true.
/// Both engines' backups: the driver's apply thread, a blocking thread of the runtime
/// engine's.
pub(crate) fn write_backup<R: sm::SmRead + ?Sized>(
    sm: &R,
    backups_dir: &std::path::Path,
    meta: SnapshotMeta,
    stop: &impl Fn() -> bool,
) -> Result<PathBuf, SmError> {
    std::fs::create_dir_all(backups_dir).map_err(StoreError::from)?;
    let mut out = reads::Stoppable { inner: SnapshotWriter::create(backups_dir, meta)?, stop };
    sm::write_snapshot_data(sm, &mut out)?;
    Ok(out.inner.finish()?.path)
}

/// Reports how writing the snapshot `meta` ended (on the thread that wrote it): taken, with
/// its file (the core may then compact the log behind it), or skipped (the core asks again).
/// Returns a failure for the apply thread: a damaged record is repaired, any other error
/// stops the node, as when the snapshot was written on the apply thread. Running out of
/// space is not fatal: the log keeps its entries until a later snapshot fits.
fn report_snapshot(
    shared: &Shared,
    events: &mpsc::Sender<Event>,
    meta: SnapshotMeta,
    outcome: reads::SnapshotOutcome,
) -> Option<SmError> {
    let (node, index) = (shared.id, meta.last.index);
    match outcome {
        reads::SnapshotOutcome::Written { file, elapsed } => {
            shared.telemetry.snapshot_taken(file.data_len, elapsed);
            tracing::info!(node = %node, index = %index, bytes = file.data_len, elapsed_ms = elapsed.as_millis() as u64, "snapshot taken");
            let _ = events.blocking_send(Event::SnapshotTaken(meta, file.path));
            None
        }
        // The driver is stopping too: nobody to tell.
        reads::SnapshotOutcome::Dropped { stopping: true, .. } => None,
        reads::SnapshotOutcome::Dropped { why, stopping: false } => {
            tracing::info!(node = %node, index = %index, why, "snapshot not taken");
            let _ = events.blocking_send(Event::SnapshotSkipped(meta));
            None
        }
        reads::SnapshotOutcome::Failed(SmError::Storage(e)) if e.is_space() => {
            tracing::warn!(node = %node, index = %index, error = %e, "no space for a snapshot; skipped");
            let _ = events.blocking_send(Event::SnapshotSkipped(meta));
            None
        }
        reads::SnapshotOutcome::Failed(e) => {
            // The core asks again (after a repair, if the node goes on).
            tracing::warn!(node = %node, index = %index, error = %e, "snapshot failed");
            let _ = events.blocking_send(Event::SnapshotSkipped(meta));
            Some(e)
        }
    }
}

/// One read, served from `store` (a view of the state machine) and reported as `read`: its
/// answer (an error the client is told), or a state-machine failure (a damaged record) that
/// the apply thread repairs.
pub(crate) fn read_one<R: sm::SmRead + ?Sized>(
    store: &R,
    req: &ReadReq,
    read: ReadInfo,
) -> Result<Result<Response, ApiError>, SmError> {
    Ok(match req {
        ReadReq::Get { key } => Ok(Response::Get { kv: sm::read_get(store, key)?, read }),
        ReadReq::Scan { start, end, limit, paged } => {
            let page = sm::read_scan_page(store, start, end.as_deref(), *limit, sm::PAGE_RESULT_BYTES_MAX)?;
            Ok(if *paged {
                Response::ScanPage { kvs: page.kvs, next: page.next, read }
            } else {
                Response::Scan { kvs: page.kvs, more: page.next.is_some(), read }
            })
        }
        ReadReq::Txn { txn, from, revision, paged } => read_txn(store, txn, *from, *revision, *paged, &read)?,
        ReadReq::GetAt { key, revision } => {
            sm::read_get_at(store, key, *revision)?.map(|kv| Response::Get { kv, read })
        }
        ReadReq::Watch(w) => sm::read_watch(store, w)?.map(|page| {
            Response::Watch(quorate_api::WatchAnswer { events: page.events, complete_to: page.complete_to, read })
        }),
        ReadReq::ScanAt { start, end, limit, revision } => {
            sm::read_scan_at_page(store, start, end.as_deref(), *limit, *revision, sm::PAGE_RESULT_BYTES_MAX)?
                .map(|page| Response::ScanPage { kvs: page.kvs, next: page.next, read })
        }
        ReadReq::Leases { seen, keys, list } => {
            let mut infos = Vec::with_capacity(seen.len());
            for s in seen {
                // A lease the clock knows and the view does not was removed after the clock was
                // read: reported with no keys, as the clock saw it.
                let (key_count, keys) = sm::leases::lease_info(store, s.id, *keys)?
                    .map_or((0, Vec::new()), |(rec, keys)| {
                        (rec.keys, keys.into_iter().map(quorate_api::ByteKey).collect())
                    });
                infos.push(quorate_api::LeaseInfo {
                    id: s.id,
                    granted_ttl_ms: s.ttl_ms,
                    remaining_ms: s.remaining_ms,
                    key_count,
                    keys,
                });
            }
            if *list {
                Ok(Response::Leases(infos))
            } else {
                infos.pop().map(Response::LeaseTtl).ok_or_else(|| ApiError::Internal("no lease to answer for".into()))
            }
        }
    })
}

#[cfg(test)]
mod install_tests;
mod reads;
