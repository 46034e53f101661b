//! [`Node`]: a [`Replica`] run by a tokio task, and its cloneable [`Handle`].

use crate::clock::Clock;
use crate::driver::Core;
use crate::error::Error;
use crate::network::{Inbox, Network, TransferFormat, WireMessage};
use crate::replica::{Applier, Config, Jobs, ProposeCallback, ReadCallback, ReadLevel, Replica, Reports, Status};
use crate::sessions::ClientId;
use crate::state_machine::StateMachine;
use crate::storage::LogStorage;
use quorate_core::{ConfChange, Instant};
use quorate_log::{LogIndex, NodeId, Term};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Most requests queued from handles to the node's task; a full queue makes callers wait.
pub const REQUESTS_QUEUE_MAX: usize = 1024;
/// Most messages from peers queued for the node's task; [`Inbox::deliver`] drops beyond.
pub const INBOX_QUEUE_MAX: usize = 4096;
/// Most queued messages the task takes in one turn (besides the input that woke it) before it
/// processes them.
const MESSAGES_PER_TURN_MAX: usize = 256;
/// Most queued requests the task takes in one turn (besides the input that woke it) before it
/// processes them: proposals that arrived together go into one `Ready`, so one write to
/// storage (one fsync) and one round of appends carry them all, instead of a turn — and an
/// fsync — each.
const REQUESTS_PER_TURN_MAX: usize = 256;

/// A closure a host runs on the node's core wrapper ([`Handle::with_core`]).
type CoreCall = Box<dyn FnOnce(&mut dyn std::any::Any) + Send>;

enum Request<SM: StateMachine> {
    Propose { command: Vec<u8>, session: Option<(ClientId, u64)>, done: ProposeCallback<SM::Output> },
    ProposeInTerm { term: Term, command: Vec<u8>, done: ProposeCallback<SM::Output> },
    OpenSession { done: ProposeCallback<ClientId> },
    Read { level: ReadLevel, read: ReadCallback<SM> },
    Membership { change: ConfChange, done: ProposeCallback<()> },
    Transfer { to: NodeId, done: oneshot::Sender<Result<(), Error>> },
    Snapshot { done: oneshot::Sender<Result<LogIndex, Error>> },
    TransferFormat { format: TransferFormat, done: oneshot::Sender<Result<(), Error>> },
    Core { run: CoreCall },
    Shutdown { done: oneshot::Sender<()> },
}

/// A running replica: a tokio task that owns a [`Replica`] and drives it from four sources —
/// requests from [`Handle`]s, messages from peers (its [`Inbox`]), its timers and the
/// reports of its state machine — and a thread of its own (`quorate-apply`) that runs the
/// state machine ([`Replica::detach_applier`]).
///
/// Every turn of the task hands inputs to the replica and then runs
/// [`Replica::process`], which persists (durably) before anything that depends on it is
/// acknowledged, and hands the committed entries, installs, snapshots and confirmed reads
/// to the apply thread, which applies them in log order and answers proposers and readers.
/// So the task goes on replicating — a follower acknowledging appends, a leader sending
/// them — while a large batch applies, up to [`Config::apply_backlog_bytes_max`] ahead.
#[derive(Debug)]
pub struct Node<SM: StateMachine> {
    handle: Handle<SM>,
    task: tokio::task::JoinHandle<()>,
}

/// A cloneable way to talk to a running [`Node`]. Every method is async and returns once
/// the node has an answer.
pub struct Handle<SM: StateMachine> {
    requests: mpsc::Sender<Request<SM>>,
    inbox: Inbox,
    status: watch::Receiver<Status>,
}

impl<SM: StateMachine> Clone for Handle<SM> {
    fn clone(&self) -> Self {
        Handle { requests: self.requests.clone(), inbox: self.inbox.clone(), status: self.status.clone() }
    }
}

impl<SM: StateMachine> std::fmt::Debug for Handle<SM> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").field("status", &*self.status.borrow()).finish_non_exhaustive()
    }
}

impl<SM: StateMachine> Node<SM> {
    /// Starts a replica (see [`Replica::new`] for what it recovers from `storage`) in a new
    /// tokio task. Must be called inside a tokio runtime with the time driver enabled.
    /// Register [`Node::inbox`] with the network so that peers' messages reach it.
    pub fn start<L: LogStorage, N: Network, C: Clock>(
        cfg: Config,
        storage: L,
        state_machine: SM,
        network: N,
        clock: C,
    ) -> Result<Node<SM>, Error> {
        let replica = Replica::new(cfg, storage, state_machine, clock.now())?;
        Node::start_replica(replica, network, clock)
    }

    /// Runs a replica built by hand — [`Replica::with_core`], with a core wrapper that sees
    /// every input — in a new tokio task and its state machine on a new thread, as
    /// [`Node::start`] does.
    ///
    /// # Errors
    /// [`Error::Start`] if the replica's state machine side was detached already, or the
    /// apply thread cannot be started.
    pub fn start_replica<L: LogStorage, D: Core<L> + 'static, N: Network, C: Clock>(
        mut replica: Replica<SM, L, D>,
        network: N,
        clock: C,
    ) -> Result<Node<SM>, Error> {
        let Some(applier) = replica.detach_applier() else {
            return Err(Error::Start("the replica's state machine side was detached already".into()));
        };
        // Batches are written by the storage's writer, if it has one; their reports come back
        // here (as many as batches in flight, which the core and the writer's queue bound).
        let (written_tx, written_rx) = mpsc::unbounded_channel();
        replica.detach_writes(move |io, r| {
            let _ = written_tx.send((io, r));
        })?;
        let (job_tx, job_rx) = std::sync::mpsc::channel();
        let (report_tx, report_rx) = mpsc::unbounded_channel();
        let apply = std::thread::Builder::new()
            .name("quorate-apply".into())
            .spawn(move || apply_thread(applier, &job_rx, &report_tx))
            .map_err(|e| Error::Start(format!("cannot start the apply thread: {e}")))?;
        let (req_tx, req_rx) = mpsc::channel(REQUESTS_QUEUE_MAX);
        let (in_tx, in_rx) = mpsc::channel(INBOX_QUEUE_MAX);
        let (status_tx, status_rx) = watch::channel(replica.status());
        let side = ApplySide { jobs: job_tx, reports: report_rx, open: true, thread: Some(apply), written: written_rx };
        let task = tokio::spawn(run(replica, side, network, clock, req_rx, in_rx, status_tx));
        Ok(Node { handle: Handle { requests: req_tx, inbox: Inbox { tx: in_tx }, status: status_rx }, task })
    }

    /// A handle to the node.
    #[must_use]
    pub fn handle(&self) -> Handle<SM> {
        self.handle.clone()
    }

    /// Where the network delivers this node's messages.
    #[must_use]
    pub fn inbox(&self) -> Inbox {
        self.handle.inbox.clone()
    }

    /// Shuts the node down gracefully and waits for its task to end.
    pub async fn shutdown(self) {
        self.handle.shutdown().await;
        let _ = self.task.await;
    }
}

/// The apply thread: runs the jobs it is handed, in order, and sends the reports of each
/// batch back at once (never held while more work queues: the replica's bounds and the
/// core's snapshot requests move on them). Ends when the node's task drops its sender (after
/// the jobs of its shutdown) or stops listening.
fn apply_thread<SM: StateMachine>(
    mut applier: Applier<SM>,
    jobs: &std::sync::mpsc::Receiver<Jobs<SM>>,
    reports: &mpsc::UnboundedSender<Reports>,
) {
    while let Ok(batch) = jobs.recv() {
        let out = applier.run(batch);
        if !out.is_empty() && reports.send(out).is_err() {
            break;
        }
    }
}

/// What a panic carried, as text.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// The node task's end of the apply thread.
struct ApplySide<SM: StateMachine> {
    jobs: std::sync::mpsc::Sender<Jobs<SM>>,
    reports: mpsc::UnboundedReceiver<Reports>,
    /// Whether the thread may still report (its sender is not gone).
    open: bool,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The outcomes of the batches the storage's writer wrote (see [`Replica::detach_writes`]).
    written: mpsc::UnboundedReceiver<(quorate_core::IoId, Result<(), quorate_log::StorageError>)>,
}

impl<SM: StateMachine> ApplySide<SM> {
    /// Hands the replica's queued work to the apply thread; halts the replica if the thread
    /// is gone.
    fn hand<L: LogStorage, D: Core<L>>(&mut self, replica: &mut Replica<SM, L, D>) {
        let jobs = replica.take_jobs();
        if !jobs.is_empty() && self.jobs.send(jobs).is_err() {
            // The jobs are dropped unrun: their callbacks' senders close, and the handles
            // answer `OutcomeUnknown` (snapshot callers too, when their request drops).
            replica.halt("the apply thread stopped".into());
        }
    }

    /// Stops the replica, lets the apply thread answer what it holds, and waits for it.
    async fn stop<L: LogStorage, D: Core<L>>(mut self, replica: &mut Replica<SM, L, D>) {
        replica.stop();
        let jobs = replica.take_jobs();
        let _ = self.jobs.send(jobs);
        drop(self.jobs);
        // The writer finishes what was submitted (nothing depends on it any more) and stops.
        let writer = replica.take_batch_writer();
        let thread = self.thread.take();
        let _ = tokio::task::spawn_blocking(move || {
            drop(writer);
            thread.map(std::thread::JoinHandle::join)
        })
        .await;
    }
}

async fn run<SM: StateMachine, L: LogStorage, D: Core<L> + 'static, N: Network, C: Clock>(
    mut replica: Replica<SM, L, D>,
    mut side: ApplySide<SM>,
    mut net: N,
    clock: C,
    mut requests: mpsc::Receiver<Request<SM>>,
    mut inbox: mpsc::Receiver<WireMessage>,
    status: watch::Sender<Status>,
) {
    loop {
        let now = clock.now();
        replica.tick(now);
        replica.process(now, &mut net);
        side.hand(&mut replica);
        let current = replica.status();
        status.send_if_modified(|s| {
            let changed = *s != current;
            *s = current;
            changed
        });
        let wait = replica.next_deadline().map_or(Duration::from_secs(3600), |d| clock.real_until(d));
        tokio::select! {
            biased;
            // The writer's reports first: what they release (acknowledgements, commits) is
            // what everything else waits for. The sender lives in the replica's writer.
            Some((io, r)) = side.written.recv() => replica.on_persisted(clock.now(), io, r),
            reports = side.reports.recv(), if side.open => {
                match reports {
                    Some(r) => replica.on_reports(clock.now(), r),
                    // Its sender is gone: the thread ended (a panic in the state machine, or
                    // in a read closure or a callback run there).
                    None => {
                        side.open = false;
                        let why = match side.thread.take().map(std::thread::JoinHandle::join) {
                            Some(Err(payload)) => format!("the apply thread panicked: {}", panic_text(&*payload)),
                            _ => "the apply thread stopped".to_owned(),
                        };
                        replica.halt(why);
                    }
                }
            }
            msg = inbox.recv() => {
                let Some(msg) = msg else { break };
                replica.receive(clock.now(), msg);
            }
            req = requests.recv() => {
                let Some(req) = req else { break };
                if let Some(done) = take_request(&mut replica, clock.now(), req) {
                    side.stop(&mut replica).await;
                    let _ = done.send(());
                    return;
                }
            }
            () = tokio::time::sleep(wait) => {}
        }
        // Whatever else is waiting joins this turn (each source within its bound), so that
        // the turn's messages carry it all: one append per follower for the proposals queued
        // meanwhile, one acknowledgement for the batches reported meanwhile — not a turn, and
        // its messages, per input.
        while let Ok((io, r)) = side.written.try_recv() {
            replica.on_persisted(clock.now(), io, r);
        }
        while let Ok(r) = side.reports.try_recv() {
            replica.on_reports(clock.now(), r);
        }
        for _ in 0..MESSAGES_PER_TURN_MAX {
            let Ok(msg) = inbox.try_recv() else { break };
            replica.receive(clock.now(), msg);
        }
        for _ in 0..REQUESTS_PER_TURN_MAX {
            let Ok(req) = requests.try_recv() else { break };
            if let Some(done) = take_request(&mut replica, clock.now(), req) {
                side.stop(&mut replica).await;
                let _ = done.send(());
                return;
            }
        }
    }
    side.stop(&mut replica).await;
}

/// Hands one request to the replica; a shutdown is handed back (its answer) for the task to
/// stop.
fn take_request<SM: StateMachine, L: LogStorage, D: Core<L> + 'static>(
    replica: &mut Replica<SM, L, D>,
    now: Instant,
    req: Request<SM>,
) -> Option<oneshot::Sender<()>> {
    match req {
        Request::Shutdown { done } => return Some(done),
        Request::Propose { command, session, done } => replica.propose(now, command, session, done),
        Request::ProposeInTerm { term, command, done } => replica.propose_in_term(now, term, command, done),
        Request::OpenSession { done } => replica.open_session(now, done),
        Request::Read { level, read } => replica.read(now, level, read),
        Request::Membership { change, done } => replica.change_membership(now, change, done),
        Request::Transfer { to, done } => {
            let _ = done.send(replica.transfer_leader(now, to));
        }
        Request::Snapshot { done } => replica.request_snapshot(
            now,
            Box::new(move |r| {
                let _ = done.send(r);
            }),
        ),
        Request::TransferFormat { format, done } => {
            replica.set_transfer_format(format);
            let _ = done.send(Ok(()));
        }
        Request::Core { run } => {
            // A panic there may leave the wrapper half-changed: halt, do not go on.
            let core = replica.core_wrapper_mut();
            let call = std::panic::AssertUnwindSafe(move || run(core));
            if let Err(payload) = std::panic::catch_unwind(call) {
                replica.halt(format!("a closure run on the core panicked: {}", panic_text(&*payload)));
            }
        }
    }
    None
}

impl<SM: StateMachine> Handle<SM> {
    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T, Error>>) -> Request<SM>) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.requests.send(make(tx)).await.map_err(|_| Error::Shutdown)?;
        // A dropped answer means the node stopped with the request in flight.
        rx.await.unwrap_or(Err(Error::OutcomeUnknown))
    }

    /// Proposes `command` outside any session and returns the state machine's output once it
    /// is applied on this node. After an error with [`Error::outcome_unknown`], retrying may
    /// apply it twice: use a session for exactly-once.
    pub async fn propose(&self, command: impl Into<Vec<u8>>) -> Result<SM::Output, Error> {
        let command = command.into();
        self.call(|tx| Request::Propose { command, session: None, done: answer(tx) }).await
    }

    /// [`Handle::propose`], appended only if this node still leads `term` when the proposal
    /// reaches the replica ([`Replica::propose_in_term`]): for a command a leader decided on
    /// from what it knew in that term.
    pub async fn propose_in_term(&self, term: Term, command: impl Into<Vec<u8>>) -> Result<SM::Output, Error> {
        let command = command.into();
        self.call(|tx| Request::ProposeInTerm { term, command, done: answer(tx) }).await
    }

    /// Opens an exactly-once session (a committed entry; its index is the id).
    /// [`Error::SessionsOff`] for a state machine that keeps its own sessions
    /// ([`StateMachine::ENVELOPE`] `= false`).
    pub async fn open_session(&self) -> Result<ClientId, Error> {
        self.call(|tx| Request::OpenSession { done: answer(tx) }).await
    }

    /// Proposes `command` as number `seq` of session `client`. Number commands 1, 2, 3, …
    /// one at a time; retry a command whose outcome is unknown with the **same** `seq` (on
    /// any node): it is applied at most once, and a retry gets the first application's output.
    /// [`Error::SessionsOff`] for a state machine that keeps its own sessions
    /// ([`StateMachine::ENVELOPE`] `= false`).
    pub async fn propose_in_session(
        &self,
        client: ClientId,
        seq: u64,
        command: impl Into<Vec<u8>>,
    ) -> Result<SM::Output, Error> {
        let command = command.into();
        self.call(|tx| Request::Propose { command, session: Some((client, seq)), done: answer(tx) }).await
    }

    /// Runs `read` over the state machine at `level` and returns what it returns.
    pub async fn read<R: Send + 'static>(
        &self,
        level: ReadLevel,
        read: impl FnOnce(&SM) -> R + Send + 'static,
    ) -> Result<R, Error> {
        self.call(|tx| Request::Read {
            level,
            read: Box::new(move |sm: Result<&SM, Error>| {
                let _ = tx.send(sm.map(read));
            }),
        })
        .await
    }

    /// Proposes a membership change (leader only) and returns once it is applied here.
    pub async fn change_membership(&self, change: ConfChange) -> Result<(), Error> {
        self.call(|tx| Request::Membership { change, done: answer(tx) }).await
    }

    /// Adds `id` as a learner: it receives the log but does not vote.
    pub async fn add_learner(&self, id: NodeId) -> Result<(), Error> {
        self.change_membership(ConfChange::AddLearner(id)).await
    }

    /// Makes learner `id` a voter (refused while it is far behind).
    pub async fn promote(&self, id: NodeId) -> Result<(), Error> {
        self.change_membership(ConfChange::Promote(id)).await
    }

    /// Removes member `id` (voter or learner; the leader too).
    pub async fn remove_member(&self, id: NodeId) -> Result<(), Error> {
        self.change_membership(ConfChange::Remove(id)).await
    }

    /// Hands leadership to voter `to` (leader only). Returns once the transfer started.
    pub async fn transfer_leader(&self, to: NodeId) -> Result<(), Error> {
        self.call(|tx| Request::Transfer { to, done: tx }).await
    }

    /// Takes a snapshot of the applied state now and returns the index it covers.
    pub async fn snapshot_now(&self) -> Result<LogIndex, Error> {
        self.call(|tx| Request::Snapshot { done: tx }).await
    }

    /// Sends snapshots as `format` from now on ([`crate::Replica::set_transfer_format`]): a
    /// host sets [`TransferFormat::Stream`] while its cluster has members that take only
    /// streams, and back to acknowledged chunks once they are gone.
    pub async fn set_transfer_format(&self, format: TransferFormat) -> Result<(), Error> {
        self.call(|tx| Request::TransferFormat { format, done: tx }).await
    }

    /// Runs `f` on the node's core — the wrapper of type `W` it was started with
    /// ([`crate::Replica::with_core`], [`Node::start_replica`]) — in the node's task between
    /// two turns, and returns what `f` returns: a way to a wrapper's own state (the Quorate
    /// node's flight recorder writes a dump on request this way). [`Error::CoreType`] if the
    /// node's core is not a `W`. `f` must not call the core's inputs (see
    /// [`crate::Replica::core_wrapper_mut`]).
    pub async fn with_core<W: 'static, R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut W) -> R + Send + 'static,
    ) -> Result<R, Error> {
        self.call(|tx| Request::Core {
            run: Box::new(move |core: &mut dyn std::any::Any| {
                let _ = tx.send(core.downcast_mut::<W>().map(f).ok_or(Error::CoreType));
            }),
        })
        .await
    }

    /// The node's status, updated after every turn of its task.
    #[must_use]
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Where the network delivers this node's messages.
    #[must_use]
    pub fn inbox(&self) -> Inbox {
        self.inbox.clone()
    }

    /// Stops the node: waiting requests fail ([`Error::OutcomeUnknown`] for proposals), the
    /// task ends. Returns once it has (at once if it already stopped).
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.requests.send(Request::Shutdown { done: tx }).await.is_ok() {
            let _ = rx.await;
        }
    }
}

fn answer<T: Send + 'static>(tx: oneshot::Sender<Result<T, Error>>) -> Box<dyn FnOnce(Result<T, Error>) + Send> {
    Box::new(move |r| {
        let _ = tx.send(r);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_machine::Committed;
    use crate::storage::MemStorage;
    use quorate_core::Instant;
    use quorate_log::Configuration;

    struct Count(LogIndex);

    impl StateMachine for Count {
        type Output = ();
        fn apply(&mut self, batch: &[Committed<'_>]) -> Vec<()> {
            self.0 = batch.last().map_or(self.0, |c| c.index);
            vec![(); batch.len()]
        }
        fn snapshot(&self, _: &mut dyn std::io::Write) -> std::io::Result<()> {
            Ok(())
        }
        fn restore(&mut self, applied: LogIndex, _: &mut dyn std::io::Read) -> Result<(), crate::RestoreError> {
            self.0 = applied;
            Ok(())
        }
        fn applied(&self) -> LogIndex {
            self.0
        }
    }

    /// Work that queued while the thread was busy is reported batch by batch, not held back
    /// until the queue is empty (the replica's bounds move on the reports).
    #[test]
    fn the_apply_thread_reports_each_batch_at_once() {
        let id = NodeId::new(1).expect("non-zero");
        let storage = MemStorage::new(Configuration::with_voters([id]).expect("valid"));
        let mut r = Replica::new(Config::new(id), storage, Count(LogIndex::ZERO), Instant::ZERO).expect("starts");
        let now = r.next_deadline().expect("an election timer");
        r.tick(now);
        let applier = r.detach_applier().expect("inline until now");
        let (job_tx, job_rx) = std::sync::mpsc::channel();
        for b in 0..3u8 {
            r.propose(now, vec![b], None, Box::new(|_| {}));
            r.process(now, &mut Vec::new());
            job_tx.send(r.take_jobs()).expect("open");
        }
        drop(job_tx);
        let (report_tx, mut report_rx) = mpsc::unbounded_channel();
        std::thread::spawn(move || apply_thread(applier, &job_rx, &report_tx)).join().expect("no panic");
        let mut batches = 0;
        while let Ok(reports) = report_rx.try_recv() {
            r.on_reports(now, reports);
            batches += 1;
        }
        assert_eq!(batches, 3, "one report per batch of work");
        assert_eq!(r.applied(), r.status().commit);
    }
}
