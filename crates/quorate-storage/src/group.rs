//! Group commit: many submitters' batches share one RocksDB write and one fsync.

use crate::batch::PersistBatch;
use crate::error::StoreError;
use crate::store::RocksStore;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::thread::JoinHandle;
use std::time::Duration;

/// Limits of a [`GroupCommitter`].
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct GroupOptions {
    /// Submissions that may wait in the queue; [`GroupCommitter::submit`] blocks beyond it and
    /// [`GroupCommitter::try_submit`] refuses.
    pub queue_batches_max: usize,
    /// The most batches merged into one write.
    pub group_batches_max: usize,
    /// A group is closed once its entries reach this many bytes.
    pub group_bytes_max: u64,
    /// While the store refuses a batch for disk space ([`StoreError::is_space`]: below the
    /// free-space floor, or RocksDB's own `ENOSPC`), the writer writes it again every this long
    /// — holding every later batch behind it — until it goes through or the committer is
    /// dropped; its submitter sees a slow write, never a failure. `None`: such a batch is
    /// refused like any other (and so is everything after it).
    pub space_retry_interval: Option<Duration>,
}

impl Default for GroupOptions {
    fn default() -> GroupOptions {
        GroupOptions {
            queue_batches_max: 4096,
            group_batches_max: 1024,
            group_bytes_max: 16 << 20,
            space_retry_interval: Some(Duration::from_millis(250)),
        }
    }
}

type Callback = Box<dyn FnOnce(Result<(), StoreError>) + Send + 'static>;

enum Reply {
    Channel(SyncSender<Result<(), StoreError>>),
    Callback(Callback),
}

impl Reply {
    fn send(self, r: Result<(), StoreError>) {
        match self {
            // The submitter may have stopped waiting; nothing to do then.
            Reply::Channel(tx) => {
                let _ = tx.send(r);
            }
            Reply::Callback(f) => f(r),
        }
    }
}

struct Job {
    batch: PersistBatch,
    reply: Reply,
}

/// The completion of one submitted batch.
#[derive(Debug)]
#[must_use = "a batch is durable only once its completion reports Ok"]
pub struct Completion(Receiver<Result<(), StoreError>>);

impl Completion {
    /// Blocks until the batch is durable (`Ok`) or failed.
    pub fn wait(self) -> Result<(), StoreError> {
        self.0.recv().unwrap_or(Err(StoreError::Stopped))
    }

    /// The outcome if it is known, without blocking.
    pub fn try_wait(&self) -> Option<Result<(), StoreError>> {
        match self.0.try_recv() {
            Ok(r) => Some(r),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Err(StoreError::Stopped)),
        }
    }
}

/// A writer thread that merges queued [`PersistBatch`]es into one RocksDB write with one fsync
/// and reports each batch's outcome to its submitter.
///
/// While one group is being fsynced, new submissions queue up and form the next group, so the
/// number of fsyncs adapts to the load: one per batch when idle, one per many under load.
/// Batches are written in submission order, and they are one ordered stream: once a batch is
/// refused (invalid, failed, poisoned store), every later batch is refused with
/// [`StoreError::EarlierBatchFailed`] and nothing after it is ever written. A batch refused for
/// disk space is retried instead (see [`GroupOptions::space_retry_interval`]). Dropping the
/// committer finishes the queued work and joins the thread.
pub struct GroupCommitter {
    tx: Option<SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
    stopping: Arc<AtomicBool>,
}

impl std::fmt::Debug for GroupCommitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommitter").finish_non_exhaustive()
    }
}

impl GroupCommitter {
    /// Starts the writer thread for `store`.
    pub fn new(store: Arc<RocksStore>, options: GroupOptions) -> Result<GroupCommitter, StoreError> {
        let (tx, rx) = mpsc::sync_channel::<Job>(options.queue_batches_max.max(1));
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&stopping);
        let thread = std::thread::Builder::new()
            .name("quorate-group-commit".into())
            .spawn(move || run(&store, &rx, options, &stop))?;
        Ok(GroupCommitter { tx: Some(tx), thread: Some(thread), stopping })
    }

    fn sender(&self) -> Result<&SyncSender<Job>, StoreError> {
        self.tx.as_ref().ok_or(StoreError::Stopped)
    }

    /// Queues `batch` (blocking while the queue is full) and returns its completion.
    pub fn submit(&self, batch: PersistBatch) -> Result<Completion, StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.sender()?.send(Job { batch, reply: Reply::Channel(tx) }).map_err(|_| StoreError::Stopped)?;
        Ok(Completion(rx))
    }

    /// Queues `batch` unless the queue is full (then the batch is handed back, so the caller
    /// can shed load), and returns its completion.
    pub fn try_submit(&self, batch: PersistBatch) -> Result<Completion, TrySubmitError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let job = Job { batch, reply: Reply::Channel(tx) };
        let sender = self.sender().map_err(|_| TrySubmitError::Stopped)?;
        match sender.try_send(job) {
            Ok(()) => Ok(Completion(rx)),
            Err(TrySendError::Full(j)) => Err(TrySubmitError::Full(Box::new(j.batch))),
            Err(TrySendError::Disconnected(_)) => Err(TrySubmitError::Stopped),
        }
    }

    /// Queues `batch` (blocking while the queue is full); `done` is called on the writer
    /// thread with the outcome. Keep `done` short: it delays the next group.
    pub fn submit_with(
        &self,
        batch: PersistBatch,
        done: impl FnOnce(Result<(), StoreError>) + Send + 'static,
    ) -> Result<(), StoreError> {
        self.sender()?.send(Job { batch, reply: Reply::Callback(Box::new(done)) }).map_err(|_| StoreError::Stopped)
    }
}

/// Why [`GroupCommitter::try_submit`] did not queue a batch.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrySubmitError {
    /// The queue is full; here is the batch back.
    #[error("the group-commit queue is full")]
    Full(Box<PersistBatch>),
    /// The writer thread has stopped.
    #[error("the group committer has stopped")]
    Stopped,
}

impl Drop for GroupCommitter {
    fn drop(&mut self) {
        // A batch waiting for disk space is not retried any more (its submitter learns
        // `Stopped`); everything else queued is still written.
        self.stopping.store(true, Ordering::Release);
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            // A panic on the writer thread has already been reported to the submitters as
            // `Stopped` (their channels closed); nothing more to do here.
            let _ = t.join();
        }
    }
}

/// How often a writer waiting for disk space checks whether the committer was dropped.
const STOP_CHECK: Duration = Duration::from_millis(20);

fn run(store: &RocksStore, rx: &Receiver<Job>, options: GroupOptions, stopping: &AtomicBool) {
    let group_max = options.group_batches_max.max(1);
    let mut batches = Vec::with_capacity(group_max);
    let mut replies: Vec<Option<Reply>> = Vec::with_capacity(group_max);
    // Why the stream broke, once a batch was refused: nothing after it is written.
    let mut broken: Option<String> = None;
    while let Ok(first) = rx.recv() {
        let mut bytes = first.batch.size_bytes();
        batches.push(first.batch);
        replies.push(Some(first.reply));
        while batches.len() < group_max && bytes < options.group_bytes_max {
            match rx.try_recv() {
                Ok(j) => {
                    bytes += j.batch.size_bytes();
                    batches.push(j.batch);
                    replies.push(Some(j.reply));
                }
                Err(_) => break,
            }
        }
        let mut from = 0;
        while from < batches.len() {
            if let Some(cause) = &broken {
                for reply in replies[from..].iter_mut().filter_map(Option::take) {
                    reply.send(Err(StoreError::EarlierBatchFailed { cause: cause.clone() }));
                }
                break;
            }
            let results = store.write_many(&batches[from..]);
            debug_assert_eq!(results.len(), batches.len() - from);
            let mut retry_at = None;
            for (i, r) in results.into_iter().enumerate() {
                let at = from + i;
                match r {
                    Err(e) if e.is_space() && options.space_retry_interval.is_some() => {
                        // Everything after it was refused as planned after it: retry from here.
                        retry_at = Some(at);
                        break;
                    }
                    Err(e) => {
                        if broken.is_none() && !matches!(e, StoreError::EarlierBatchFailed { .. }) {
                            broken = Some(e.to_string());
                        }
                        if let Some(reply) = replies[at].take() {
                            reply.send(Err(e));
                        }
                    }
                    Ok(()) => {
                        if let Some(reply) = replies[at].take() {
                            reply.send(Ok(()));
                        }
                    }
                }
            }
            let Some(at) = retry_at else { break };
            from = at;
            if !wait_for_space(options.space_retry_interval.unwrap_or_default(), stopping) {
                for reply in replies[from..].iter_mut().filter_map(Option::take) {
                    reply.send(Err(StoreError::Stopped));
                }
                break;
            }
        }
        batches.clear();
        replies.clear();
    }
}

/// Sleeps `interval`, in short steps; `false` if the committer is being dropped.
fn wait_for_space(interval: Duration, stopping: &AtomicBool) -> bool {
    let until = std::time::Instant::now() + interval;
    loop {
        if stopping.load(Ordering::Acquire) {
            return false;
        }
        let now = std::time::Instant::now();
        if now >= until {
            return true;
        }
        std::thread::sleep(STOP_CHECK.min(until - now));
    }
}
