//! Reads served off the apply thread.
//!
//! When a read's index is applied, the apply thread takes a consistent view of the state
//! machine ([`quorate_storage::SmView`], a RocksDB snapshot at the applied index) and hands the
//! read with the view to a small pool of read workers ([`READ_WORKERS`] threads, a queue of
//! [`READ_QUEUE_MAX`] reads). The apply thread goes on applying while a large read (a scan page
//! or a transaction page of up to 4 MiB) is served, so a reader's large or many reads no longer
//! hold up everyone's writes. A read is answered exactly as before: at the state of the view,
//! which is at or after the read's index, with the view's revision and applied index.
//!
//! **Fair across principals.** The queue has one lane per principal (the one the read was
//! admitted for; internal work — snapshot images — has a lane of its own), and the workers take
//! the lanes in turn, one read each ([`Jobs`], a [`FairQueue`] of cost 1 per read): a
//! principal with a backlog of large scans delays another principal's read by at most one of
//! its reads per worker, not by its whole backlog. The driver's queue ([`crate::waiting`]) is
//! fair up to dispatch; this keeps it fair up to the read itself.
//!
//! **Installs.** A snapshot install or a state-machine reinstall drops and recreates the `sm`
//! column family; a view taken before it must not be read after it (every key would read as
//! absent in the new, empty family: a linearizability violation). The [`InstallGate`] orders
//! them: a worker holds it shared while it reads a view, the apply thread holds it exclusive
//! while it installs, and every install starts a new *epoch*. A read whose view is of an
//! older epoch than the gate's is not served: it is answered `Unavailable` (retry), which
//! changes nothing.
//!
//! **Damage.** A read that meets a damaged record (or fails otherwise) is answered
//! `Unavailable` and the failure goes to the apply thread, which repairs the state machine (or
//! stops the node) as it did when it served the read itself.
//!
//! **Snapshots.** The snapshot the consensus core asks for is written from a view too, on a
//! thread of its own (`quorate-snapshot-N`, [`ReadPool::dispatch_snapshot`]): the apply thread
//! takes the view when it has applied exactly the snapshot's index (a RocksDB snapshot, so
//! the file holds the state at that index and nothing applied after it), hands it over and
//! goes on applying and serving reads while the file is written (issue 20: a snapshot of a
//! large state machine written on the apply thread held every read and write for seconds).
//! At most one is written at a time (the core asks for one at a time; a request while one is
//! in flight is skipped, and the core asks again). The writer holds the [`InstallGate`]
//! shared, as a read does, so an install waits for it; a view from before an install is not
//! written. The file is reported (`Event::SnapshotTaken`, and only then may the core compact
//! the log behind it) once it is fsynced and renamed into place; a write that fails or is cut
//! short (the node stopping, a crash) leaves only a temporary file, removed by its writer or
//! at the next start, and is never reported.
//!
//! If no worker thread can be started, the apply thread serves the reads itself (and writes
//! the snapshots itself, if the snapshot thread cannot be started).

use super::WaitingRead;
use crate::failpoints::Failpoints;
use crate::save_stream::Image;
use crate::sm::{self, SmError};
use quorate_admission::{FairLimits, FairQueue, Principal};
use quorate_api::{ApiError, ReadInfo, Staleness};
use quorate_log::NodeId;
use quorate_log::SnapshotMeta;
use quorate_storage::{RocksStore, SmView, SnapshotFile, StoreError};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock, RwLockWriteGuard};
use std::time::{Duration, Instant};

/// Read worker threads per node.
pub(crate) const READ_WORKERS: usize = 2;
/// Reads handed to the workers and not yet taken by one. Beyond it the apply thread waits for
/// a worker (reads then slow applying down as they did before the pool); admission bounds the
/// reads in flight long before (`limits.pending_requests_max`, per-principal requests).
pub(crate) const READ_QUEUE_MAX: usize = 1024;
/// Failures reported by workers and not yet taken by the apply thread (one is enough to
/// start a repair; more are dropped).
const FAILURES_MAX: usize = 64;
/// The lane of work that no client asked for (snapshot images) and of reads not admitted for a
/// principal. A client's principal is a 64-bit hash of its name: one that hashes to this only
/// shares its lane.
const INTERNAL: Principal = Principal(0);

/// The read queue's bounds: every read costs 1 (its service time is not known before it is
/// read), so the lanes take turns read by read; no per-principal bound below the queue's own
/// (admission bounds each principal's reads in flight), and no bytes counted.
const QUEUE_LIMITS: FairLimits = FairLimits {
    principals_max: READ_QUEUE_MAX,
    principal_count_max: READ_QUEUE_MAX,
    count_max: READ_QUEUE_MAX,
    principal_bytes_max: 1,
    bytes_max: 1,
    quantum_cost: 1,
};

/// The queue between the apply thread and the workers: one lane per principal, taken in turn.
pub(crate) struct Jobs<T> {
    state: Mutex<JobsState<T>>,
    /// Signalled when an item is queued or the queue closes.
    ready: Condvar,
    /// Signalled when an item is taken or a worker leaves.
    room: Condvar,
}

struct JobsState<T> {
    queue: FairQueue<T>,
    /// No more items will be queued: workers leave once it is empty.
    closed: bool,
    /// Workers taking items; with none, a push is handed back (the caller serves it).
    workers: usize,
}

impl<T> Jobs<T> {
    fn new() -> Jobs<T> {
        // The bounds are constants, checked by a test.
        let queue = FairQueue::new(QUEUE_LIMITS).expect("the read queue's bounds are valid");
        Jobs {
            state: Mutex::new(JobsState { queue, closed: false, workers: 0 }),
            ready: Condvar::new(),
            room: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, JobsState<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `item` in `principal`'s lane, waiting for room while the queue is full; hands it
    /// back if no worker is left to take it or the queue is closed.
    fn push(&self, principal: Principal, item: T) -> Result<(), T> {
        let mut state = self.lock();
        let mut item = item;
        loop {
            if state.closed || state.workers == 0 {
                return Err(item);
            }
            match state.queue.try_push(principal, 1, 0, item) {
                Ok(()) => {
                    self.ready.notify_one();
                    return Ok(());
                }
                Err(refused) => {
                    item = refused.item;
                    state = self.room.wait(state).unwrap_or_else(PoisonError::into_inner);
                }
            }
        }
    }

    /// Queues `item` if there is room now; hands it back otherwise.
    fn try_push(&self, principal: Principal, item: T) -> Result<(), T> {
        let mut state = self.lock();
        if state.closed || state.workers == 0 {
            return Err(item);
        }
        let pushed = state.queue.try_push(principal, 1, 0, item).map_err(|r| r.item);
        if pushed.is_ok() {
            self.ready.notify_one();
        }
        pushed
    }

    /// The next item, lanes in turn; waits while the queue is empty; `None` once it is closed
    /// and empty.
    fn pop(&self) -> Option<T> {
        let mut state = self.lock();
        loop {
            if let Some((_, _, item)) = state.queue.pop() {
                self.room.notify_one();
                return Some(item);
            }
            if state.closed {
                return None;
            }
            state = self.ready.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// The next item if one is queued (tests).
    #[cfg(test)]
    fn try_pop(&self) -> Option<T> {
        let item = self.lock().queue.pop().map(|(_, _, item)| item);
        self.room.notify_one();
        item
    }

    /// No more items: workers take what is queued, then leave.
    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
        self.room.notify_all();
    }

    /// Counts one more worker taking items, until its [`WorkerGuard`] is dropped (also when
    /// the worker panics).
    fn enlist(&self) {
        self.lock().workers += 1;
    }
}

/// A worker's place among those of a [`Jobs`].
struct WorkerGuard<'a, T> {
    jobs: &'a Jobs<T>,
}

impl<T> Drop for WorkerGuard<'_, T> {
    fn drop(&mut self) {
        self.jobs.lock().workers -= 1;
        // A pusher waiting for room must not wait for a worker that is gone.
        self.jobs.room.notify_all();
    }
}

/// Orders the reads of views and the installs that drop the state machine's column family
/// (see the module's notes).
#[derive(Debug, Default)]
pub(crate) struct InstallGate {
    lock: RwLock<()>,
    /// Installs begun so far: a view of an older epoch is not read.
    epoch: AtomicU64,
    /// The node is stopping: reads not yet served are answered so.
    stopping: AtomicBool,
    /// An install waits for the gate: a snapshot being written (of a view the install makes
    /// stale) is cut short rather than waited for.
    installing: AtomicBool,
}

impl InstallGate {
    /// Waits until no worker reads a view, then holds every worker off (until the guard is
    /// dropped) and starts a new epoch: views taken before are not read any more.
    pub(crate) fn exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        self.installing.store(true, Ordering::Release);
        let guard = self.lock.write().unwrap_or_else(PoisonError::into_inner);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.installing.store(false, Ordering::Release);
        guard
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }
}

/// A view of the state machine with what every read served from it reports.
pub(crate) struct View<'s> {
    sm: SmView<'s>,
    node: NodeId,
    revision: u64,
    epoch: u64,
}

impl View<'_> {
    /// The applied index the view is of.
    pub(crate) fn applied_index(&self) -> quorate_log::LogIndex {
        self.sm.applied_index()
    }

    fn read_info(&self, staleness: Option<Staleness>) -> ReadInfo {
        ReadInfo { node: self.node, revision: self.revision, applied: self.sm.applied_index(), staleness }
    }
}

/// What a worker does with a view: serve a read, or write a snapshot stream's image
/// (`quorate snapshot save FILE`, [`crate::save_stream`]).
#[allow(
    clippy::large_enum_variant,
    reason = "reads are by far the common job; boxing them would allocate once per read to save bytes on the rare image"
)]
enum Job<'s> {
    /// A read with the view to serve it from.
    Read { view: Arc<View<'s>>, read: WaitingRead },
    /// Write the image of `meta` (the view's applied point) for a snapshot stream.
    Image { view: Arc<View<'s>>, meta: SnapshotMeta, image: Arc<Image> },
}

/// A failure a worker met, for the apply thread: the epoch of the view it read, and the error.
pub(crate) type Failure = (u64, SmError);

/// How writing a snapshot ([`ReadPool::dispatch_snapshot`]) ended.
#[derive(Debug)]
pub(crate) enum SnapshotOutcome {
    /// The file is written, fsynced and in place, `elapsed` after the request was taken.
    Written { file: SnapshotFile, elapsed: Duration },
    /// Not written, for a reason that is no failure: the state machine was reinstalled since
    /// the view was taken (`stopping: false`), or the node is stopping.
    Dropped { why: &'static str, stopping: bool },
    /// Writing failed (the temporary file is removed).
    Failed(SmError),
}

/// What is done with a snapshot's outcome, on the thread that wrote it: report it. An error it
/// returns goes to the apply thread as a worker's failure (a damaged record is repaired; any
/// other stops the node).
pub(crate) type SnapshotDone = Box<dyn FnOnce(SnapshotOutcome) -> Option<SmError> + Send>;

/// A snapshot for the snapshot thread: its view (at exactly `meta.last`), and what to do next.
struct SnapshotJob<'s> {
    view: Arc<View<'s>>,
    meta: SnapshotMeta,
    started: Instant,
    done: SnapshotDone,
}

/// The read workers of one apply thread.
pub(crate) struct ReadPool<'s> {
    store: &'s RocksStore,
    gate: &'s InstallGate,
    node: NodeId,
    failpoints: Failpoints,
    /// `None`: no worker runs; reads are served by the caller.
    jobs: Option<Arc<Jobs<Job<'s>>>>,
    /// The snapshot thread's queue (one job: at most one snapshot is written at a time);
    /// `None`: it could not be started, and snapshots are written by the caller.
    snapshots: Option<SyncSender<SnapshotJob<'s>>>,
    /// A snapshot is being written (set when one is handed over, cleared when it is done).
    snapshot_busy: Arc<AtomicBool>,
}

impl Drop for ReadPool<'_> {
    /// Stops the workers (see [`ReadPool::stop`]) however the pool goes — an apply thread
    /// that panics drops it without `stop`, and a snapshot being written
    /// must still be cut short, or the thread's scope waits for the whole write before the
    /// node learns that its apply thread is gone.
    fn drop(&mut self) {
        self.gate.stopping.store(true, Ordering::Release);
        if let Some(jobs) = &self.jobs {
            jobs.close();
        }
    }
}

impl<'s> ReadPool<'s> {
    /// Starts up to [`READ_WORKERS`] workers in `scope`; failures they meet arrive on the
    /// returned receiver.
    pub(crate) fn start<'scope>(
        scope: &'scope std::thread::Scope<'scope, 's>,
        store: &'s RocksStore,
        gate: &'s InstallGate,
        node: NodeId,
        failpoints: Failpoints,
    ) -> (ReadPool<'s>, Receiver<Failure>) {
        let (failures, failed) = std::sync::mpsc::sync_channel(FAILURES_MAX);
        let jobs = Arc::new(Jobs::new());
        let mut started = 0;
        for n in 0..READ_WORKERS {
            let (queue, failures, failpoints) = (jobs.clone(), failures.clone(), failpoints.clone());
            // Counted before the thread runs, so that a read dispatched right after `start`
            // is queued, not served here.
            queue.enlist();
            let spawned =
                std::thread::Builder::new().name(format!("quorate-read-{node}-{n}")).spawn_scoped(scope, move || {
                    let _place = WorkerGuard { jobs: &*queue };
                    work(&queue, store, gate, &failpoints, &failures);
                });
            match spawned {
                Ok(_) => started += 1,
                Err(e) => {
                    // Its place was counted: give it back.
                    drop(WorkerGuard { jobs: &*jobs });
                    tracing::warn!(error = %e, "cannot start a read worker");
                }
            }
        }
        if started == 0 {
            tracing::warn!("no read worker could be started; the apply thread serves reads itself");
        }
        let jobs = (started > 0).then_some(jobs);
        let snapshot_busy = Arc::new(AtomicBool::new(false));
        let (snapshots, queued) = std::sync::mpsc::sync_channel::<SnapshotJob<'s>>(1);
        let spawned = {
            let (failures, failpoints, busy) = (failures.clone(), failpoints.clone(), snapshot_busy.clone());
            std::thread::Builder::new().name(format!("quorate-snapshot-{node}")).spawn_scoped(scope, move || {
                while let Ok(job) = queued.recv() {
                    let SnapshotJob { view, meta, started, done } = job;
                    // Cleared also if the write panics (the thread is gone then, and the apply
                    // thread writes the next snapshot itself).
                    let free = ClearOnDrop(&busy);
                    let outcome = write_snapshot(&view, &meta, store, gate, &failpoints, started);
                    // Cleared first: a request that follows the report finds the thread free.
                    drop(free);
                    if let Some(e) = done(outcome) {
                        // One report starts a repair; the apply thread drops those of older epochs.
                        let _ = failures.try_send((view.epoch, e));
                    }
                }
            })
        };
        let snapshots = match spawned {
            Ok(_) => Some(snapshots),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the snapshot thread; the apply thread writes snapshots itself");
                None
            }
        };
        (ReadPool { store, gate, node, failpoints, jobs, snapshots, snapshot_busy }, failed)
    }

    /// Whether a snapshot handed to [`dispatch_snapshot`](Self::dispatch_snapshot) is still
    /// being written.
    pub(crate) fn snapshot_in_flight(&self) -> bool {
        self.snapshot_busy.load(Ordering::Acquire)
    }

    /// Has the snapshot thread write the snapshot file of `meta` from `view` (which must be of
    /// exactly `meta.last`; `started`: when the request was taken), then call `done` with the
    /// outcome there; an error `done` returns goes to the apply thread as a worker's failure.
    /// The caller checks [`snapshot_in_flight`](Self::snapshot_in_flight) first. Without a
    /// snapshot thread, the file is written here and `done`'s error is returned.
    pub(crate) fn dispatch_snapshot(
        &self,
        view: &Arc<View<'s>>,
        meta: SnapshotMeta,
        started: Instant,
        done: SnapshotDone,
    ) -> Result<(), SmError> {
        let job = SnapshotJob { view: view.clone(), meta, started, done };
        let job = match &self.snapshots {
            Some(queue) => {
                self.snapshot_busy.store(true, Ordering::Release);
                match queue.try_send(job) {
                    Ok(()) => return Ok(()),
                    // Busy (the caller did not check) or gone (the thread panicked): written here.
                    Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                        self.snapshot_busy.store(false, Ordering::Release);
                        job
                    }
                }
            }
            None => job,
        };
        let SnapshotJob { view, meta, started, done } = job;
        let outcome = write_snapshot(&view, &meta, self.store, self.gate, &self.failpoints, started);
        match done(outcome) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The gate installs take.
    pub(crate) fn gate(&self) -> &'s InstallGate {
        self.gate
    }

    /// A view of the state machine as applied now.
    pub(crate) fn view(&self) -> Result<Arc<View<'s>>, SmError> {
        self.view_of(self.store.sm_view()?)
    }

    /// A view for a read of the whole state machine (a snapshot, a snapshot stream): its reads
    /// leave the block cache as it was, so the blocks reads and writes need stay cached.
    pub(crate) fn bulk_view(&self) -> Result<Arc<View<'s>>, SmError> {
        self.view_of(self.store.sm_view()?.without_filling_the_cache())
    }

    fn view_of(&self, sm: quorate_storage::SmView<'s>) -> Result<Arc<View<'s>>, SmError> {
        let revision = sm::revision(&sm)?;
        Ok(Arc::new(View { sm, node: self.node, revision, epoch: self.gate.epoch() }))
    }

    /// Serves `read` from `view` on a worker (waiting for room in the queue if it is full), or
    /// here if no worker runs. A failure met here is returned (the caller repairs).
    pub(crate) fn dispatch(&self, view: &Arc<View<'s>>, read: WaitingRead) -> Result<(), SmError> {
        match &self.jobs {
            Some(jobs) => {
                let principal = read.responder.admitted_principal().unwrap_or(INTERNAL);
                match jobs.push(principal, Job::Read { view: view.clone(), read }) {
                    Ok(()) => Ok(()),
                    // Every worker is gone (a worker panicked): serve here.
                    Err(Job::Read { view, read }) => {
                        serve(&view, self.store, read, &self.failpoints).map_err(|(_, e)| e)
                    }
                    Err(Job::Image { .. }) => unreachable!("a read was pushed"),
                }
            }
            None => serve(view, self.store, read, &self.failpoints).map_err(|(_, e)| e),
        }
    }

    /// Has a worker write the image of `meta` from `view` for a snapshot stream (here, on the
    /// apply thread, only if no worker runs). Never fails: the outcome goes into `image`.
    pub(crate) fn dispatch_image(&self, view: &Arc<View<'s>>, meta: SnapshotMeta, image: Arc<Image>) {
        if let Some(jobs) = &self.jobs {
            let job = Job::Image { view: view.clone(), meta, image: image.clone() };
            if jobs.try_push(INTERNAL, job).is_err() {
                // The read queue is full (or no worker is left): refuse rather than hold the
                // apply thread.
                image.finish(Err("the node's read queue is full; retry".into()));
            }
            return;
        }
        image.finish(crate::save_stream::write_image(&view.sm, view.node, meta, &image));
    }

    /// Stops the workers: reads still queued are answered that the node is stopping; a
    /// snapshot being written is cut short (never reported; its temporary file is removed).
    pub(crate) fn stop(self) {
        // Dropping the pool marks the node stopping and closes the queue (see `Drop`).
        drop(self);
    }
}

/// A worker: serves queued reads until the pool is dropped.
fn work(
    queue: &Jobs<Job<'_>>,
    store: &RocksStore,
    gate: &InstallGate,
    failpoints: &Failpoints,
    failures: &SyncSender<Failure>,
) {
    loop {
        let (view, read) = match queue.pop() {
            Some(Job::Read { view, read }) => (view, read),
            Some(Job::Image { view, meta, image }) => {
                if gate.stopping.load(Ordering::Acquire) {
                    image.finish(Err("node stopping".into()));
                    continue;
                }
                // Shared, as for a read: an install waits until the image is written.
                let shared = gate.lock.read().unwrap_or_else(PoisonError::into_inner);
                let result = if view.epoch == gate.epoch() {
                    crate::save_stream::write_image(&view.sm, view.node, meta, &image)
                } else {
                    Err("the state machine was reinstalled before the image was written; retry".into())
                };
                drop(shared);
                image.finish(result);
                continue;
            }
            None => return,
        };
        if gate.stopping.load(Ordering::Acquire) {
            read.responder.send(Err(ApiError::Unavailable("node stopping; retry elsewhere".into())), None);
            continue;
        }
        // Held while the view is read: an install waits for it, and none runs meanwhile.
        let shared = gate.lock.read().unwrap_or_else(PoisonError::into_inner);
        if view.epoch != gate.epoch() {
            drop(shared);
            read.responder.send(
                Err(ApiError::Unavailable(
                    "the state machine was reinstalled before the read was served; retry".into(),
                )),
                None,
            );
            continue;
        }
        let served = serve(&view, store, read, failpoints);
        drop(shared);
        if let Err(failure) = served {
            // One report starts a repair; the apply thread drops those of older epochs.
            let _ = failures.try_send(failure);
        }
    }
}

/// Serves one read from `view`: answers it, or answers `Unavailable` and returns the failure
/// (with the view's epoch) if the state machine failed.
fn serve(view: &View<'_>, store: &RocksStore, read: WaitingRead, failpoints: &Failpoints) -> Result<(), Failure> {
    let WaitingRead { req, responder, staleness, deadline } = read;
    if deadline <= Instant::now() {
        responder.send(Err(ApiError::Unavailable("read not served in time; retry".into())), None);
        return Ok(());
    }
    failpoints.before_read();
    let served = match (failpoints.torn_txn_reads(), &req) {
        // The test-only weakening: the transaction's gets read the live state one by one.
        (Some(gap), super::ReadReq::Txn { .. }) => {
            super::read_one(&TornReads { store, gap }, &req, view.read_info(staleness))
        }
        _ => super::read_one(&view.sm, &req, view.read_info(staleness)),
    };
    match served {
        Ok(mut result) => {
            // The test-only weakening of watch answers.
            if let (Some(w), Ok(quorate_api::Response::Watch(a))) = (failpoints.watch_weakening(), &mut result) {
                w.apply(&mut a.events);
            }
            responder.send(result, None);
            Ok(())
        }
        Err(e) => {
            responder.send(Err(ApiError::Unavailable("the read met a damaged record; retry".into())), None);
            Err((view.epoch, e))
        }
    }
}

/// Clears its flag when dropped.
struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Writes the snapshot file of `meta` from `view` (of exactly `meta.last`), holding the gate
/// shared as a read does: an install waits for it, and a view from before an install is not
/// written. Cut short when the node stops, or when an install waits (its view would be stale:
/// the install does not wait for a whole write, and the core asks again).
fn write_snapshot(
    view: &View<'_>,
    meta: &SnapshotMeta,
    store: &RocksStore,
    gate: &InstallGate,
    failpoints: &Failpoints,
    started: Instant,
) -> SnapshotOutcome {
    let stopping = || gate.stopping.load(Ordering::Acquire);
    let cut = || stopping() || gate.installing.load(Ordering::Acquire);
    if stopping() {
        return SnapshotOutcome::Dropped { why: "the node is stopping", stopping: true };
    }
    let shared = gate.lock.read().unwrap_or_else(PoisonError::into_inner);
    if view.epoch != gate.epoch() {
        return SnapshotOutcome::Dropped {
            why: "the state machine was reinstalled since the snapshot's view was taken",
            stopping: false,
        };
    }
    let written = (|| -> Result<SnapshotFile, SmError> {
        let mut out = Stoppable { inner: store.snapshot_writer(meta.clone())?, stop: &cut };
        sm::write_snapshot_data(&view.sm, &mut out)?;
        failpoints.hold_snapshot(started, cut);
        if cut() {
            // Dropped unfinished: its temporary file is removed.
            return Err(SmError::Storage(StoreError::Io("the node is stopping, or an install waits".into())));
        }
        Ok(out.inner.finish()?)
    })();
    // Read while the gate is still held shared: once it is released, the waiting install takes
    // it and clears `installing`, and a write it cut short would read as a failure.
    let cut_for_install = written.is_err() && gate.installing.load(Ordering::Acquire);
    drop(shared);
    match written {
        Ok(file) => SnapshotOutcome::Written { file, elapsed: started.elapsed() },
        Err(_) if stopping() => SnapshotOutcome::Dropped { why: "the node is stopping", stopping: true },
        Err(_) if cut_for_install => SnapshotOutcome::Dropped {
            why: "an install of a newer snapshot waits for the state machine",
            stopping: false,
        },
        Err(e) => SnapshotOutcome::Failed(e),
    }
}

/// A writer that fails once `stop()` is true (a snapshot cut short when the node stops).
pub(crate) struct Stoppable<'a, W, F: Fn() -> bool> {
    /// What is written to.
    pub(crate) inner: W,
    /// Whether to stop.
    pub(crate) stop: &'a F,
}

impl<W: std::io::Write, F: Fn() -> bool> std::io::Write for Stoppable<'_, W, F> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if (self.stop)() {
            return Err(std::io::Error::other("the node is stopping"));
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The live state machine, each read `gap` after the previous one: what a read-only
/// transaction is served from under the `torn_txn_reads_ms` failpoint (a test-only weakening).
struct TornReads<'a> {
    store: &'a RocksStore,
    gap: std::time::Duration,
}

impl sm::SmRead for TornReads<'_> {
    fn sm_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, SmError> {
        std::thread::sleep(self.gap);
        sm::SmRead::sm_get(self.store, key)
    }
    fn sm_scan(&self, from: &[u8], limit: usize) -> Result<Vec<quorate_storage::SmPair>, SmError> {
        sm::SmRead::sm_scan(self.store, from, limit)
    }
    fn sm_scan_range(
        &self,
        from: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        bytes_max: usize,
    ) -> Result<Vec<quorate_storage::SmPair>, SmError> {
        sm::SmRead::sm_scan_range(self.store, from, end, limit, bytes_max)
    }
}

impl<'s> ReadPool<'s> {
    /// Whether `failure` happened in the current epoch (not before an install since).
    pub(crate) fn is_current(&self, failure: &Failure) -> bool {
        failure.0 == self.gate.epoch()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const A: Principal = Principal(1);
    const B: Principal = Principal(2);

    #[test]
    fn the_queue_bounds_are_valid() {
        QUEUE_LIMITS.validate().unwrap();
    }

    #[test]
    fn a_principal_behind_a_backlog_waits_for_one_read_not_the_backlog() {
        let jobs = Jobs::new();
        jobs.enlist();
        for n in 0..100 {
            jobs.push(A, ("a", n)).unwrap();
        }
        jobs.push(B, ("b", 0)).unwrap();
        jobs.push(B, ("b", 1)).unwrap();
        let order: Vec<_> = (0..6).map(|_| jobs.pop().unwrap()).collect();
        // Lanes take turns, one read each, in the order they first had work.
        assert_eq!(order, vec![("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("a", 3)]);
        // Within a lane, arrival order.
        let rest: Vec<_> = std::iter::from_fn(|| jobs.try_pop()).collect();
        assert_eq!(rest, (4..100).map(|n| ("a", n)).collect::<Vec<_>>());
    }

    #[test]
    fn a_full_queue_refuses_a_try_and_holds_a_push_until_a_read_is_taken() {
        let jobs = Arc::new(Jobs::new());
        jobs.enlist();
        for n in 0..READ_QUEUE_MAX {
            jobs.push(A, n).unwrap();
        }
        assert_eq!(jobs.try_push(B, usize::MAX), Err(usize::MAX), "full: handed back at once");
        let (done_tx, done) = std::sync::mpsc::channel();
        let pusher = {
            let jobs = jobs.clone();
            std::thread::spawn(move || {
                let pushed = jobs.push(B, usize::MAX);
                done_tx.send(pushed).unwrap();
            })
        };
        // The pusher waits for room: it has not returned while nothing was taken.
        assert!(done.recv_timeout(Duration::from_millis(50)).is_err(), "a push into a full queue waits");
        assert_eq!(jobs.pop(), Some(0));
        assert_eq!(done.recv_timeout(Duration::from_secs(10)).expect("the push completes once there is room"), Ok(()));
        pusher.join().unwrap();
        // B's read comes next: its lane's turn follows A's.
        assert_eq!(jobs.pop(), Some(usize::MAX));
    }

    #[test]
    fn a_closed_queue_is_drained_then_ends_and_refuses_more() {
        let jobs = Jobs::new();
        jobs.enlist();
        jobs.push(A, 1).unwrap();
        jobs.push(B, 2).unwrap();
        jobs.close();
        assert_eq!(jobs.push(A, 3), Err(3));
        assert_eq!(jobs.pop(), Some(1));
        assert_eq!(jobs.pop(), Some(2));
        assert_eq!(jobs.pop(), None);
    }

    #[test]
    fn with_no_worker_left_a_push_is_handed_back_and_a_waiting_push_wakes() {
        let jobs = Arc::new(Jobs::new());
        assert_eq!(jobs.push(A, 0), Err(0), "no worker ever enlisted");
        jobs.enlist();
        for n in 0..READ_QUEUE_MAX {
            jobs.push(A, n).unwrap();
        }
        let (done_tx, done) = std::sync::mpsc::channel();
        let pusher = {
            let jobs = jobs.clone();
            std::thread::spawn(move || done_tx.send(jobs.push(B, usize::MAX)).unwrap())
        };
        assert!(done.recv_timeout(Duration::from_millis(50)).is_err(), "a push into a full queue waits");
        // The only worker leaves (as a panicking worker would): the waiting push is handed back.
        drop(WorkerGuard { jobs: &*jobs });
        assert_eq!(done.recv_timeout(Duration::from_secs(10)).expect("the push returns"), Err(usize::MAX));
        pusher.join().unwrap();
    }
}
