//! The apply task: a dedicated thread that applies committed entries to the key-value state
//! machine (one atomic store batch per group of entries, with the applied index), answers the
//! writes waiting for them, serves reads once applied far enough, takes snapshots and installs
//! snapshots received from the leader.

use crate::server::{Event, Responder, Shared};
use crate::sm::{self, Overlay, SmError};
use quorate_api::{ApiError, ReadInfo, Response, Staleness, Txn};
use quorate_log::{Configuration, Entry, EntryId, EntryPayload, LogIndex, SnapshotMeta};
use quorate_storage::{APPLY_OPS_MAX, INSTALL_BATCH_BYTES_MAX, RocksStore, SnapshotReader, SnapshotWriter, StoreError};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Store operations gathered before a batch is written (well below the store's limit).
const OPS_PER_BATCH: usize = APPLY_OPS_MAX / 2;

/// A read waiting to be served.
#[derive(Debug)]
pub(crate) enum ReadReq {
    Get { key: Vec<u8> },
    Scan { start: Vec<u8>, end: Option<Vec<u8>>, limit: u32 },
    Txn(Txn),
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
    /// Write a backup snapshot into the backups directory.
    Backup { config: Configuration, responder: Responder },
}

struct Waiting {
    term: quorate_log::Term,
    responder: Responder,
    deadline: Instant,
}

struct WaitingRead {
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
    last_sweep: Instant,
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
    install_snapshot_batches(store, meta, None).map(|_| ())
}

/// State-machine pairs per install batch (the store takes at most [`APPLY_OPS_MAX`]).
pub(crate) const INSTALL_BATCH_PAIRS: usize = APPLY_OPS_MAX / 2;
/// Bytes per install batch, well below the store's limit.
const INSTALL_BATCH_BYTES: usize = INSTALL_BATCH_BYTES_MAX / 2;

/// [`install_snapshot_data`], stopping after `stop_after` batches when given (a test hook
/// that simulates a crash between batches: the marker stays). Returns the pairs installed.
pub(crate) fn install_snapshot_batches(
    store: &RocksStore,
    meta: &SnapshotMeta,
    stop_after: Option<usize>,
) -> Result<u64, SmError> {
    let open = || -> Result<SnapshotReader, SmError> {
        let Some(reader) = store.snapshot_reader()? else {
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
    store.begin_sm_install(meta.last.index)?;
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
            store.write_sm_install_batch(std::mem::take(&mut batch))?;
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
        store.write_sm_install_batch(batch)?;
    }
    store.finish_sm_install(meta.last.index)?;
    Ok(n)
}

impl Applier {
    pub(crate) fn new(shared: Arc<Shared>, events: mpsc::Sender<Event>, applied: EntryId) -> Applier {
        Applier { shared, events, applied, writes: BTreeMap::new(), reads: BTreeMap::new(), last_sweep: Instant::now() }
    }

    /// Runs until the driver drops its sender. A state-machine failure is reported as a
    /// fatal event and ends the task.
    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<ApplyMsg>) {
        let handle = self.shared.handle.clone();
        loop {
            let next = handle.block_on(async { tokio::time::timeout(Duration::from_millis(250), rx.recv()).await });
            let result = match next {
                Ok(None) => break,
                Ok(Some(msg)) => {
                    self.shared.failpoints.before_apply();
                    self.handle(msg)
                }
                Err(_) => Ok(()),
            };
            if let Err(e) = result.and_then(|()| self.serve_reads()) {
                tracing::error!(error = %e, "state machine failed; stopping the node");
                let _ = self.events.blocking_send(Event::Fatal(format!("state machine: {e}")));
                break;
            }
            if self.last_sweep.elapsed() >= Duration::from_millis(250) {
                self.sweep();
            }
        }
        // Anything still waiting learns that the node is stopping.
        for (_, w) in std::mem::take(&mut self.writes) {
            w.responder.send(Err(ApiError::Timeout), None);
        }
        for (_, rs) in std::mem::take(&mut self.reads) {
            for r in rs {
                r.responder.send(Err(ApiError::Unavailable("node stopping; retry elsewhere".into())), None);
            }
        }
    }

    fn handle(&mut self, msg: ApplyMsg) -> Result<(), SmError> {
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
            ApplyMsg::TakeSnapshot(meta) => self.take_snapshot(meta),
            ApplyMsg::Install(meta) => self.install(&meta),
            ApplyMsg::Backup { config, responder } => {
                let r = self.backup(config);
                let at = Some(self.applied);
                match r {
                    Ok((path, index)) => {
                        responder.send(Ok(Response::SnapshotSaved { path: path.display().to_string(), index }), at);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "backup snapshot failed");
                        responder.send(Err(ApiError::Internal(format!("backup failed: {e}"))), at);
                    }
                }
                Ok(())
            }
        }
    }

    fn apply_entries(&mut self, entries: &[Entry]) -> Result<(), SmError> {
        let store = self.shared.store.clone();
        let mut rest = entries;
        while !rest.is_empty() {
            let mut ov = Overlay::new(&*store);
            let mut outcomes = Vec::new();
            let mut last = None;
            let mut used = 0;
            for e in rest {
                used += 1;
                if e.index <= self.applied.index {
                    continue;
                }
                self.shared.telemetry.applying(e);
                let outcome = match &e.payload {
                    EntryPayload::Command(d) => Some(sm::apply_entry(&mut ov, e.index, d)?),
                    _ => None,
                };
                outcomes.push((e.id(), outcome));
                last = Some(e.id());
                if ov.len() >= OPS_PER_BATCH {
                    break;
                }
            }
            rest = &rest[used..];
            let Some(last) = last else { continue };
            store.apply(last.index, ov.into_ops())?;
            self.applied = last;
            self.shared.telemetry.applied(last.index);
            self.shared.revision.store(sm::revision(&*store)?, Ordering::Relaxed);
            self.shared.log_time_ms.store(sm::log_time_ms(&*store)?, Ordering::Relaxed);
            for (id, outcome) in outcomes {
                let result = match outcome {
                    Some(o) => {
                        if let Some((node, addr)) = o.member_addr {
                            self.shared.learn_member_addr(node, addr);
                        }
                        if o.cluster_version.is_some() {
                            crate::versions::sync_format(&self.shared.store)?;
                            crate::versions::sync_transport(&self.shared);
                        }
                        o.result
                    }
                    None => Ok(Response::Done),
                };
                self.answer_write(id, result);
            }
        }
        Ok(())
    }

    /// Answers the write waiting at `id.index`, if any, and any older one left over.
    fn answer_write(&mut self, id: EntryId, result: Result<Response, ApiError>) {
        while let Some(entry) = self.writes.first_entry() {
            if *entry.key() > id.index {
                break;
            }
            let index = *entry.key();
            let w = entry.remove();
            if index == id.index && w.term == id.term {
                w.responder.send(result.clone(), Some(id));
            } else {
                // A different entry landed at that index: ours was never committed.
                w.responder.send(Err(ApiError::Unavailable("leadership changed; retry".into())), Some(id));
            }
        }
    }

    fn read_info(&self, staleness: Option<Staleness>) -> ReadInfo {
        ReadInfo {
            node: self.shared.id,
            revision: self.shared.revision.load(Ordering::Relaxed),
            applied: self.applied.index,
            staleness,
        }
    }

    fn serve_reads(&mut self) -> Result<(), SmError> {
        while let Some(entry) = self.reads.first_entry() {
            if *entry.key() > self.applied.index {
                break;
            }
            for r in entry.remove() {
                let store = &*self.shared.store;
                let read = self.read_info(r.staleness);
                let result = match r.req {
                    ReadReq::Get { key } => Response::Get { kv: sm::read_get(store, &key)?, read },
                    ReadReq::Scan { start, end, limit } => {
                        let (kvs, more) = sm::read_scan(store, &start, end.as_deref(), limit)?;
                        Response::Scan { kvs, more, read }
                    }
                    ReadReq::Txn(txn) => {
                        let (succeeded, results) = sm::read_txn(store, &txn)?;
                        Response::Txn { succeeded, results, revision: read.revision }
                    }
                };
                r.responder.send(Ok(result), None);
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
    }

    fn write_snapshot(&self, mut w: SnapshotWriter) -> Result<quorate_storage::SnapshotFile, SmError> {
        sm::write_snapshot_data(&*self.shared.store, &mut w)?;
        Ok(w.finish()?)
    }

    fn take_snapshot(&mut self, meta: SnapshotMeta) -> Result<(), SmError> {
        if meta.last != self.applied {
            tracing::warn!(asked = ?meta.last, applied = ?self.applied, "snapshot request does not match the applied point");
            return Ok(());
        }
        let take_started = Instant::now();
        let writer = self.shared.store.snapshot_writer(meta.clone())?;
        let file = self.write_snapshot(writer)?;
        self.shared.telemetry.snapshot_taken(file.data_len, take_started.elapsed());
        tracing::info!(node = %self.shared.id, index = %meta.last.index, bytes = file.data_len, "snapshot taken");
        let _ = self.events.blocking_send(Event::SnapshotTaken(meta, file.path));
        Ok(())
    }

    fn install(&mut self, meta: &SnapshotMeta) -> Result<(), SmError> {
        if meta.last.index <= self.applied.index {
            return Ok(());
        }
        let install_started = Instant::now();
        install_snapshot_data(&self.shared.store, meta)?;
        self.applied = meta.last;
        self.shared.telemetry.installed(meta.last.index, install_started.elapsed());
        let store = &*self.shared.store;
        self.shared.revision.store(sm::revision(store)?, Ordering::Relaxed);
        self.shared.log_time_ms.store(sm::log_time_ms(store)?, Ordering::Relaxed);
        for (node, addr) in sm::member_addrs(store)? {
            self.shared.learn_member_addr(node, addr);
        }
        crate::versions::sync_format(store)?;
        crate::versions::sync_transport(&self.shared);
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

    fn backup(&self, config: Configuration) -> Result<(PathBuf, LogIndex), SmError> {
        std::fs::create_dir_all(&self.shared.backups_dir).map_err(StoreError::from)?;
        let meta = SnapshotMeta { last: self.applied, config };
        let writer = SnapshotWriter::create(&self.shared.backups_dir, meta)?;
        let file = self.write_snapshot(writer)?;
        Ok((file.path, self.applied.index))
    }
}

#[cfg(test)]
mod install_tests;
