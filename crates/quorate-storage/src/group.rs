//! Group commit: many submitters' batches share one RocksDB write and one fsync.

use crate::batch::PersistBatch;
use crate::error::StoreError;
use crate::store::RocksStore;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::thread::JoinHandle;

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
}

impl Default for GroupOptions {
    fn default() -> GroupOptions {
        GroupOptions { queue_batches_max: 4096, group_batches_max: 1024, group_bytes_max: 16 << 20 }
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
/// Batches are written in submission order. Dropping the committer finishes the queued work and
/// joins the thread.
pub struct GroupCommitter {
    tx: Option<SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
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
        let thread =
            std::thread::Builder::new().name("quorate-group-commit".into()).spawn(move || run(&store, &rx, options))?;
        Ok(GroupCommitter { tx: Some(tx), thread: Some(thread) })
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
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            // A panic on the writer thread has already been reported to the submitters as
            // `Stopped` (their channels closed); nothing more to do here.
            let _ = t.join();
        }
    }
}

fn run(store: &RocksStore, rx: &Receiver<Job>, options: GroupOptions) {
    let group_max = options.group_batches_max.max(1);
    let mut batches = Vec::with_capacity(group_max);
    let mut replies = Vec::with_capacity(group_max);
    while let Ok(first) = rx.recv() {
        let mut bytes = first.batch.size_bytes();
        batches.push(first.batch);
        replies.push(first.reply);
        while batches.len() < group_max && bytes < options.group_bytes_max {
            match rx.try_recv() {
                Ok(j) => {
                    bytes += j.batch.size_bytes();
                    batches.push(j.batch);
                    replies.push(j.reply);
                }
                Err(_) => break,
            }
        }
        let results = store.write_many(&batches);
        debug_assert_eq!(results.len(), replies.len());
        for (reply, r) in replies.drain(..).zip(results) {
            reply.send(r);
        }
        batches.clear();
    }
}
