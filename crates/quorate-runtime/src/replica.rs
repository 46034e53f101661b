//! [`Replica`]: the runtime's deterministic heart — one core, its storage and the state
//! machine, stepped synchronously. [`crate::Node`] runs one in a tokio task; the simulator
//! steps several by hand. Either way the same code orders persisting, sending, applying and
//! serving reads.

mod apply;
mod transfer;

pub use apply::{Applier, Jobs, Reports, SnapshotCallback};
use apply::{Job, Start, restore_image};

use crate::driver::Core;
use crate::error::Error;
use crate::network::{Network, TransferFormat, WireMessage};
use crate::sessions::{ClientId, Command, Sessions};
use crate::state_machine::StateMachine;
use crate::storage::{BatchWriter, LogStorage, SnapshotSource};
use crate::transfer::{Receiver, Sender, TokenBucket};
pub use crate::transfer::{SNAPSHOT_CHUNK_BYTES_MAX, TransferStats};
use quorate_core::{ConfChange, Instant, IoId, Raft, ReadId, Role};
use quorate_log::{
    Configuration, Data, Entry, EntryId, EntryPayload, LogIndex, NodeId, SnapshotMeta, StorageError, Term,
};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// Most callers waiting for one snapshot on demand ([`Replica::request_snapshot`]).
pub const SNAPSHOT_CALLERS_MAX: usize = 64;

/// The callers waiting for the snapshot on demand of one request (its number, they).
type SnapshotCallers = Arc<std::sync::Mutex<Option<(u64, Vec<SnapshotCallback>)>>>;

/// Answers the callers of request `.1`, once: when its job runs, or when the job is dropped
/// unrun ([`Error::OutcomeUnknown`]); a halt or a stop may have answered them first. Never
/// the callers of a later request.
struct SnapshotAnswer(SnapshotCallers, u64);

impl SnapshotAnswer {
    fn answer(&self, r: &Result<LogIndex, Error>) {
        answer_snapshot_callers(&self.0, Some(self.1), r);
    }
}

impl Drop for SnapshotAnswer {
    fn drop(&mut self) {
        self.answer(&Err(Error::OutcomeUnknown));
    }
}

/// Answers the waiting callers with `r` — those of request `only`, or whoever waits.
fn answer_snapshot_callers(callers: &SnapshotCallers, only: Option<u64>, r: &Result<LogIndex, Error>) {
    let joined = {
        let mut waiting = callers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*waiting {
            Some((n, _)) if only.is_none_or(|o| o == *n) => waiting.take(),
            _ => None,
        }
    };
    for f in joined.into_iter().flat_map(|(_, fs)| fs) {
        f(r.clone());
    }
}

/// Settings of one runtime replica.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// The consensus core's settings (id, timeouts, limits, snapshot thresholds).
    pub raft: quorate_core::Config,
    /// Most exactly-once sessions kept; opening one more evicts the one idle the longest.
    pub sessions_max: usize,
    /// Most proposals (commands, session opens, membership changes) waiting to be applied.
    pub proposals_pending_max: usize,
    /// Most linearizable or lease reads waiting for confirmation or for apply.
    pub reads_pending_max: usize,
    /// Bytes of snapshot per chunk sent to a follower (at most [`SNAPSHOT_CHUNK_BYTES_MAX`]).
    pub snapshot_chunk_bytes: usize,
    /// Most snapshot bytes a leader sends to one follower beyond what it acknowledged (for a
    /// stream, which is not answered: what it sends to one follower in one turn).
    pub snapshot_window_bytes: u64,
    /// Snapshot bytes a second this replica sends in chunks, over all followers (`None`: no
    /// limit). A token bucket of one chunk's burst, driven by the passed-in clock.
    pub snapshot_rate_bytes_per_sec: Option<u64>,
    /// Largest snapshot this replica stages from a leader; a larger one is refused. A bound
    /// on disk, not memory: the staging is a file, checked and installed as a stream (the
    /// runtime holds the session table and a 64 KiB buffer; how much the state machine's
    /// `restore` holds is up to it).
    pub snapshot_staging_bytes_max: u64,
    /// Chunks not acknowledged within this time are sent again from the acknowledged offset
    /// (and an opening chunk without an answer is sent again). A transfer without any
    /// progress for `raft.snapshot_send_timeout` is given up.
    pub snapshot_chunk_timeout: Duration,
    /// How this replica sends snapshots when it leads: in acknowledged chunks (the
    /// default), or as a stream for members that take only that
    /// ([`Replica::set_transfer_format`] changes it while running).
    pub snapshot_transfer: TransferFormat,
    /// Most bytes of committed entries handed to a detached state machine's side
    /// ([`Replica::detach_applier`]) and not yet applied: beyond it the replica takes nothing
    /// more from the core (no messages go out either) until that side catches up. The last
    /// resort that keeps memory bounded when applying is slower than committing; a replica
    /// that applies in its own turn applies at most the core's `apply_bytes_max` per round.
    pub apply_backlog_bytes_max: u64,
}

impl Config {
    /// Defaults for node `id`: the core's defaults, 4,096 sessions, 4,096 pending proposals,
    /// 4,096 pending reads; snapshots in chunks of 512 KiB, a window of 4 MiB, no rate limit,
    /// staging up to 64 GiB, chunks sent again after 2 s without an acknowledgement, an apply
    /// backlog of 256 MiB.
    #[must_use]
    pub fn new(id: NodeId) -> Config {
        Config {
            raft: quorate_core::Config::new(id),
            sessions_max: 4096,
            proposals_pending_max: 4096,
            reads_pending_max: 4096,
            snapshot_chunk_bytes: 512 << 10,
            snapshot_window_bytes: 4 << 20,
            snapshot_rate_bytes_per_sec: None,
            snapshot_staging_bytes_max: 64 << 30,
            snapshot_chunk_timeout: Duration::from_secs(2),
            snapshot_transfer: TransferFormat::Acknowledged,
            apply_backlog_bytes_max: 256 << 20,
        }
    }
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadLevel {
    /// Linearizable (ReadIndex): the leader confirms its leadership with a quorum, and the
    /// closure runs once this replica has applied at least the leader's commit index as of
    /// the request. Works on any replica.
    Linearizable,
    /// Lease read on the leader: no round trip while the lease holds (needs check-quorum and
    /// a clock-drift bound in the core's config); otherwise like `Linearizable`.
    Lease,
    /// The local state as it is, at once: may be arbitrarily stale, never blocks.
    Stale,
}

/// A glance at a replica, published by [`crate::Handle::status`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its term.
    pub term: Term,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// The commit index it knows.
    pub commit: LogIndex,
    /// The last index applied to the state machine.
    pub applied: LogIndex,
    /// The configuration in force.
    pub config: Configuration,
    /// The index covered by the latest snapshot.
    pub snapshot_index: LogIndex,
    /// Why the node halted, if it did.
    pub halted: Option<String>,
    /// The last index in its log.
    pub last_index: LogIndex,
    /// The index of the entry that set the configuration in force.
    pub config_version: LogIndex,
    /// Bytes appended and not yet committed (a leader's; 0 on a follower).
    pub uncommitted_bytes: u64,
    /// The most bytes in flight to one follower (a leader's; 0 on a follower).
    pub peer_inflight_bytes_max: u64,
}

/// Receives the outcome of a command.
pub type ProposeCallback<O> = Box<dyn FnOnce(Result<O, Error>) + Send>;
/// Runs a read over the state machine (or gets the error).
pub type ReadCallback<SM> = Box<dyn FnOnce(Result<&SM, Error>) + Send>;

enum Waiter<O> {
    Command(ProposeCallback<O>),
    Session(ProposeCallback<ClientId>),
    Conf(ProposeCallback<()>),
}

/// What an applied entry gives its proposer.
enum Applied<O> {
    Output(O),
    Session(ClientId),
    Other,
    Failed(Error),
}

impl<O> Waiter<O> {
    fn fail(self, e: Error) {
        match self {
            Waiter::Command(f) => f(Err(e)),
            Waiter::Session(f) => f(Err(e)),
            Waiter::Conf(f) => f(Err(e)),
        }
    }

    fn complete(self, a: Applied<O>) {
        match (self, a) {
            (w, Applied::Failed(e)) => w.fail(e),
            (Waiter::Command(f), Applied::Output(o)) => f(Ok(o)),
            (Waiter::Session(f), Applied::Session(c)) => f(Ok(c)),
            (Waiter::Conf(f), Applied::Other) => f(Ok(())),
            // Same index and term means the same entry: cannot happen; answer honestly.
            (w, _) => w.fail(Error::OutcomeUnknown),
        }
    }
}

/// Where the state machine's side of a replica runs.
enum Side<SM: StateMachine> {
    /// In the replica's turn: [`Replica::process`] runs the jobs (boxed: it is large).
    Inline(Box<Applier<SM>>),
    /// Elsewhere: the host takes the jobs ([`Replica::take_jobs`]) and hands back reports.
    Detached,
}

/// One command of an apply batch, decoded.
struct Pending {
    index: LogIndex,
    term: Term,
    command: Vec<u8>,
    session: Option<(ClientId, u64)>,
}

/// One replica: a consensus core over `L`, the state machine `SM`, the session table, and
/// the requests waiting for their outcome. Deterministic: its behaviour depends only on the
/// calls made and the `now` passed with each.
///
/// Drive it like the core: hand it inputs ([`Replica::receive`], [`Replica::tick`],
/// [`Replica::propose`], [`Replica::read`], …), then call [`Replica::process`], which loops
/// over the core's `Ready`: sends messages, writes the batch durably and reports it; then
/// applies committed entries, installs a snapshot's state, serves confirmed reads once
/// applied, takes and sends snapshots.
///
/// `C` is the consensus core: [`Raft`] itself, or a wrapper that sees every input of it
/// (see [`Core`] and [`Replica::with_core`]).
pub struct Replica<SM: StateMachine, L: LogStorage, C: Core<L> = Raft<L>> {
    cfg: Config,
    core: C,
    _log: std::marker::PhantomData<fn() -> L>,
    /// The state machine's side, or where it went.
    side: Side<SM>,
    /// The storage's batch writer, once the writes are detached ([`Replica::detach_writes`]).
    writer: Option<Writer>,
    /// Work for the state machine's side not yet run (inline) or taken (detached), in order.
    jobs: Vec<Job<SM>>,
    /// Bytes of committed entries handed to the state machine's side and not yet reported
    /// applied.
    apply_in_flight: u64,
    /// Turns that stopped at the apply backlog bound (detached), for tests and simulations.
    backlog_stops: u64,
    /// Proposers handed to the state machine's side with their entries and not yet answered
    /// (counted against `proposals_pending_max` with those waiting here).
    proposals_out: usize,
    /// The applied index, as the state machine's side last reported it.
    applied: LogIndex,
    proposals: BTreeMap<LogIndex, (Term, Waiter<SM::Output>)>,
    /// Reads waiting for the core's confirmation (then they go to the state machine's side).
    reads: BTreeMap<ReadId, ReadCallback<SM>>,
    /// Reads handed to the state machine's side and not yet answered (a bound's count).
    reads_out: Arc<std::sync::atomic::AtomicUsize>,
    /// Callers of the snapshot request waiting to be taken (`None`: none is).
    snapshot_callers: SnapshotCallers,
    next_read: u64,
    /// A received snapshot the core accepted: the complete staging, installed with the next
    /// batch (until then the staging is not touched).
    staged: Option<SnapshotMeta>,
    /// The storage's staging (header, durable length), mirrored.
    receiver: Receiver,
    /// Transfers this leader runs, one per follower: the sender, the image, and whether it
    /// runs as a stream ([`TransferFormat::Stream`], fixed when it opens).
    outgoing: BTreeMap<NodeId, (Sender, Arc<dyn SnapshotSource>, bool)>,
    /// The snapshot stream being received ([`TransferFormat::Stream`]): its leader and term,
    /// and the CRC-32 of the bytes staged so far (the stream carries none of its own).
    stream_in: Option<(NodeId, Term, crc32fast::Hasher)>,
    /// When a stream this leader sends goes on (its last round ended at its budget, or the
    /// network refused a piece): streams are not answered, so nothing else wakes it.
    stream_wake: Option<Instant>,
    /// The stored snapshot being sent, opened once (transfers hold their own handle).
    send_cache: Option<Arc<dyn SnapshotSource>>,
    /// The snapshot send rate limit.
    bucket: Option<TokenBucket>,
    /// The follower last served a chunk: the next round of the shared bucket starts after it.
    pump_cursor: Option<NodeId>,
    /// Followers that refused a snapshot: no transfer opens to them before then.
    refused_until: BTreeMap<NodeId, Instant>,
    /// Answers to chunks, sent at the end of the next `process`.
    outbox: Vec<WireMessage>,
    transfer_stats: TransferStats,
    halted: Option<String>,
    /// The most bytes of committed entries one round of a turn queued (tests of the bound).
    #[cfg(test)]
    peak_queued_bytes: u64,
}

impl<SM: StateMachine, L: LogStorage, C: Core<L>> std::fmt::Debug for Replica<SM, L, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").field("status", &self.status()).finish_non_exhaustive()
    }
}

impl<SM: StateMachine, L: LogStorage> Replica<SM, L> {
    /// Starts a replica from what `storage` holds, with the consensus core as it is (see
    /// [`Replica::with_core`] for the rest).
    ///
    /// # Errors
    /// See [`Replica::with_core`].
    pub fn new(cfg: Config, storage: L, sm: SM, now: Instant) -> Result<Self, Error> {
        Replica::with_core(cfg, storage, sm, now, Raft::new)
    }
}

impl<SM: StateMachine, L: LogStorage, C: Core<L>> Replica<SM, L, C> {
    /// Starts a replica from what `storage` holds, with the consensus core `make` builds
    /// from the core's settings, the storage and the time — [`Raft::new`], or a wrapper of
    /// it that sees every input ([`Core`]).
    ///
    /// A state machine in memory (`SM::DURABLE == false`) is restored from the latest stored
    /// snapshot (if any) — which replaces its state — and the log after it is applied again
    /// as it commits; with no snapshot `sm` must be new (`applied() == 0`).
    ///
    /// A durable state machine keeps its state: the runtime takes its `applied()` and its
    /// runtime records (the session table) and hands out only the entries after it. It is
    /// restored from the stored snapshot only if its last restore was interrupted, or if it is
    /// behind the stored snapshot or the log's first entry (a crash between the storage's
    /// install and the state machine's restore). A durable state machine ahead of the log's
    /// last entry is refused (the log lost entries it applied).
    ///
    /// # Errors
    /// [`Error::Start`] for a state machine and storage that do not fit together (above) or
    /// a core that cannot start, [`Error::Storage`] for storage that cannot be read.
    pub fn with_core(
        cfg: Config,
        storage: L,
        mut sm: SM,
        now: Instant,
        make: impl FnOnce(quorate_core::Config, L, Instant) -> Result<C, quorate_core::CoreError>,
    ) -> Result<Self, Error> {
        let stored = storage.open_snapshot()?;
        let floor = storage.snapshot_last();
        let restore_stored = if SM::DURABLE {
            let behind = stored.as_ref().is_some_and(|s| sm.applied() < s.header().meta.last.index);
            sm.interrupted_restore().is_some() || behind || sm.applied() < floor.index
        } else {
            stored.is_some()
        };
        let saver = storage.snapshot_saver();
        let (sessions, applied, applied_term, applied_config) = if restore_stored {
            let Some(source) = &stored else {
                return Err(Error::Start(match sm.interrupted_restore() {
                    Some(at) => {
                        format!("the state machine's restore of {at} was interrupted and storage holds no snapshot")
                    }
                    None => format!(
                        "the state machine has applied {}, the log starts after {} and storage holds no snapshot",
                        sm.applied(),
                        floor.index
                    ),
                }));
            };
            let meta = source.header().meta.clone();
            let sessions = restore_image(&mut sm, &**source)
                .map_err(|e| Error::Start(format!("stored snapshot at {}: {e}", meta.last.index)))?;
            (sessions, meta.last.index, meta.last.term, meta.config)
        } else if SM::DURABLE {
            let at = sm.applied();
            if at > storage.last_index() {
                return Err(Error::Start(format!(
                    "the state machine has applied {at}, beyond the log's last entry {}",
                    storage.last_index()
                )));
            }
            // A state machine that owns its format has no runtime records to read.
            let sessions = if SM::ENVELOPE {
                let records = sm.runtime_records().map_err(|e| Error::Start(e.to_string()))?;
                Sessions::from_records(records).map_err(Error::Start)?
            } else {
                Sessions::default()
            };
            let (term, config) = state_at(&storage, at)?;
            (sessions, at, term, config)
        } else {
            if sm.applied() != LogIndex::ZERO {
                return Err(Error::Start(format!(
                    "the state machine has applied {} but storage holds no snapshot",
                    sm.applied()
                )));
            }
            (Sessions::default(), LogIndex::ZERO, Term::ZERO, storage.snapshot_meta()?.config)
        };
        let snapshot = stored.map(|s| s.header().meta.clone());
        let mut raft_cfg = cfg.raft.clone();
        // A storage that lost synced state: the core rejoins from what it had recorded.
        if raft_cfg.recovering.is_none() {
            raft_cfg.recovering = storage.lost_state();
        }
        raft_cfg.applied = applied;
        raft_cfg.snapshot = snapshot;
        let staging = storage.staging()?;
        let burst = cfg.snapshot_chunk_bytes.clamp(1, SNAPSHOT_CHUNK_BYTES_MAX) as u64;
        let bucket = cfg.snapshot_rate_bytes_per_sec.map(|rate| TokenBucket::new(rate, burst, now));
        let core = make(raft_cfg, storage, now).map_err(|e| match e {
            quorate_core::CoreError::Storage(s) => Error::Storage(s),
            other => Error::Start(other.to_string()),
        })?;
        let start = Start { sessions, applied, applied_term, applied_config };
        let applier = Applier::new(sm, start, cfg.sessions_max, saver);
        Ok(Replica {
            cfg,
            core,
            _log: std::marker::PhantomData,
            side: Side::Inline(Box::new(applier)),
            writer: None,
            jobs: Vec::new(),
            apply_in_flight: 0,
            backlog_stops: 0,
            proposals_out: 0,
            applied,
            proposals: BTreeMap::new(),
            reads: BTreeMap::new(),
            reads_out: Arc::default(),
            snapshot_callers: Arc::default(),
            next_read: 1,
            staged: None,
            receiver: Receiver::new(staging),
            outgoing: BTreeMap::new(),
            stream_in: None,
            stream_wake: None,
            send_cache: None,
            bucket,
            pump_cursor: None,
            refused_until: BTreeMap::new(),
            outbox: Vec::new(),
            transfer_stats: TransferStats::default(),
            halted: None,
            #[cfg(test)]
            peak_queued_bytes: 0,
        })
    }

    /// This node's id.
    #[must_use]
    pub fn id(&self) -> NodeId {
        self.core.raft().id()
    }

    /// The state machine (as applied so far); `None` once its side was detached
    /// ([`Replica::detach_applier`]: ask the [`Applier`]).
    #[must_use]
    pub fn state_machine(&self) -> Option<&SM> {
        match &self.side {
            Side::Inline(a) => Some(a.state_machine()),
            Side::Detached => None,
        }
    }

    #[cfg(test)]
    fn sm_mut(&mut self) -> &mut SM {
        match &mut self.side {
            Side::Inline(a) => a.state_machine_mut(),
            Side::Detached => unreachable!("tests of the inline side"),
        }
    }

    /// Takes the state machine's side out of the replica, to run it elsewhere (a thread of
    /// its own, as [`crate::Node`] does): from then on [`Replica::process`] only queues its
    /// work — take it with [`Replica::take_jobs`], run it with [`Applier::run`], in order,
    /// and hand the reports back with [`Replica::on_reports`]. Meanwhile the replica goes on
    /// replicating (up to [`Config::apply_backlog_bytes_max`] ahead of applying). `None` if
    /// it was detached already.
    pub fn detach_applier(&mut self) -> Option<Applier<SM>> {
        match std::mem::replace(&mut self.side, Side::Detached) {
            // Inline, nothing stays queued between calls; were anything queued, the
            // detached side would run it first.
            Side::Inline(a) => Some(*a),
            Side::Detached => None,
        }
    }

    /// The work queued for a detached state machine's side, in order (empty while the side
    /// runs inline).
    pub fn take_jobs(&mut self) -> Jobs<SM> {
        match self.side {
            Side::Inline(_) => Jobs(Vec::new()),
            Side::Detached => Jobs(std::mem::take(&mut self.jobs)),
        }
    }

    /// Writes the core's batches with the storage's writer ([`LogStorage::batch_writer`])
    /// from now on, if it has one, instead of in the turn: `report` gets each batch's outcome
    /// (on the writer's thread, in order), to be handed to [`Replica::on_persisted`].
    /// Meanwhile the turn goes on — messages that do not wait for the batch go out, new
    /// proposals and messages come in, and their batches queue behind it to share the next
    /// fsync —; the core releases nothing that depends on a batch (a vote, an
    /// acknowledgement, a commit of the leader's own entries) before its report. A snapshot
    /// install is still written in the turn, after the writer is flushed. `Ok(false)` if the
    /// storage has no writer.
    ///
    /// # Errors
    /// [`Error::Start`] if the writes were detached already (their reports go elsewhere),
    /// [`Error::Storage`] if the writer cannot be started.
    pub fn detach_writes(
        &mut self,
        report: impl Fn(IoId, Result<(), StorageError>) + Send + Sync + 'static,
    ) -> Result<bool, Error> {
        if self.writer.is_some() {
            return Err(Error::Start("the replica's writes were detached already".into()));
        }
        let Some(writer) = self.core.raft().storage().batch_writer()? else { return Ok(false) };
        self.writer =
            Some(Writer { writer, report: Arc::new(report), submitted: VecDeque::new(), flushed_through: None });
        Ok(true)
    }

    /// Hands the replica the outcome of batch `io` written by the storage's writer
    /// ([`Replica::detach_writes`]): durable, the core hears it (and releases what waited for
    /// it on the next [`Replica::process`]); failed, the replica halts. Reports must come in
    /// the order the batches were submitted — the core takes one as covering every earlier
    /// batch —: one out of order halts the replica. The reports of batches a flush (before an
    /// install) already covered are ignored.
    pub fn on_persisted(&mut self, now: Instant, io: IoId, result: Result<(), StorageError>) {
        let Some(w) = self.writer.as_mut().filter(|_| self.halted.is_none()) else { return };
        if w.flushed_through.is_some_and(|f| io <= f) {
            return;
        }
        if w.submitted.front() != Some(&io) {
            let expected = w.submitted.front().copied();
            return self.halt(format!("the batch writer reported {io:?} where {expected:?} was next"));
        }
        w.submitted.pop_front();
        match result {
            Ok(()) => self.core.persisted(now, io),
            Err(e) => self.halt(format!("storage: {e}")),
        }
    }

    /// Takes the storage's writer out, for a host that stops the replica and waits for the
    /// writer off its async runtime (dropping it writes what was submitted and joins its
    /// thread). The replica halts if it has not stopped: it writes nothing more.
    pub fn take_batch_writer(&mut self) -> Option<Box<dyn BatchWriter>> {
        let w = self.writer.take()?;
        if self.halted.is_none() {
            self.halt("the replica's batch writer was taken out".into());
        }
        Some(w.writer)
    }

    /// The storage.
    #[must_use]
    pub fn storage(&self) -> &L {
        self.core.raft().storage()
    }

    /// The consensus core (read-only).
    #[must_use]
    pub fn core(&self) -> &Raft<L> {
        self.core.raft()
    }

    /// The core as it was given to [`Replica::with_core`] (a wrapper's own state: a flight
    /// recorder's dump, say).
    #[must_use]
    pub fn core_wrapper(&self) -> &C {
        &self.core
    }

    /// The core as it was given to [`Replica::with_core`], mutably: for the wrapper's own
    /// state (a flight recorder writing a dump, say). Not for the core's inputs: a call of a
    /// [`Core`] method through it bypasses the replica, which then no longer knows what the
    /// core holds (a `Ready` taken here is lost to it).
    pub fn core_wrapper_mut(&mut self) -> &mut C {
        &mut self.core
    }

    /// The index applied to the state machine (as its side last reported it).
    #[must_use]
    pub fn applied(&self) -> LogIndex {
        self.applied
    }

    /// Bytes of committed entries handed to a detached state machine's side and not yet
    /// reported applied, and the turns that stopped at [`Config::apply_backlog_bytes_max`]
    /// (the core had more to hand out).
    #[must_use]
    pub fn apply_backlog(&self) -> (u64, u64) {
        (self.apply_in_flight, self.backlog_stops)
    }

    /// The current status.
    #[must_use]
    pub fn status(&self) -> Status {
        Status {
            id: self.core.raft().id(),
            role: self.core.raft().role(),
            term: self.core.raft().term(),
            leader: self.core.raft().leader(),
            commit: self.core.raft().commit_index(),
            applied: self.applied,
            config: self.core.raft().configuration().clone(),
            snapshot_index: self.core.raft().storage().snapshot_last().index,
            halted: self.halted().map(str::to_owned),
            last_index: self.core.raft().last_index(),
            config_version: self.core.raft().config_version(),
            uncommitted_bytes: self.core.raft().uncommitted_bytes(),
            peer_inflight_bytes_max: self.core.raft().peer_inflight_bytes_max(),
        }
    }

    /// Why the replica halted, if it did.
    #[must_use]
    pub fn halted(&self) -> Option<&str> {
        self.halted.as_deref().or(self.core.raft().halted())
    }

    /// Counters of the snapshot transfers this replica sent and received.
    #[must_use]
    pub fn transfer_stats(&self) -> &TransferStats {
        &self.transfer_stats
    }

    /// When [`Replica::tick`] (and then [`Replica::process`]) should next be called: the
    /// core's timers, and the snapshot transfers' (retries, rate limit).
    #[must_use]
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.halted.is_some() {
            return None;
        }
        match (self.core.raft().poll_timeout(), self.transfer_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Sends snapshots as `format` from now on: a transfer already under way finishes in its
    /// format; one still waiting for its first answer opens again in this one. A
    /// host whose cluster still has members that take only streams sets
    /// [`TransferFormat::Stream`] until they are gone. Any replica takes both formats.
    pub fn set_transfer_format(&mut self, format: TransferFormat) {
        self.cfg.snapshot_transfer = format;
    }

    /// How this replica sends snapshots ([`Config::snapshot_transfer`]).
    #[must_use]
    pub fn transfer_format(&self) -> TransferFormat {
        self.cfg.snapshot_transfer
    }

    /// Advances the core's timers to `now`.
    pub fn tick(&mut self, now: Instant) {
        if self.core.raft().poll_timeout().is_some_and(|d| d <= now) {
            self.core.handle_timeout(now);
        }
    }

    /// Hands over a message from a peer. A snapshot chunk is checked and staged (the answer
    /// goes out in the next [`Replica::process`]), and so is a piece of a snapshot stream (in
    /// order, unanswered); a complete staging is checked (length, checksum, the runtime's
    /// part decodes) and offered to the core; anything malformed is dropped, and so is a
    /// whole [`WireMessage::Snapshot`] (no longer taken) and a `TimeoutNow` that is not from
    /// the leader of this replica's term.
    pub fn receive(&mut self, now: Instant, msg: WireMessage) {
        if self.halted.is_some() {
            return;
        }
        match msg {
            WireMessage::Raft(m) => {
                // The core campaigns on any `TimeoutNow`: only the leader of this replica's
                // term may hand leadership over, or any peer could force elections.
                let raft = self.core.raft();
                if matches!(m.body, quorate_core::MessageBody::TimeoutNow)
                    && (raft.leader() != Some(m.from) || m.term != raft.term())
                {
                    return;
                }
                self.core.handle_message(now, m);
            }
            WireMessage::SnapshotChunk(c) => self.on_chunk(now, c),
            WireMessage::SnapshotAck(a) => self.on_ack(now, a),
            WireMessage::SnapshotStream(c) => self.on_stream(now, c),
            // A whole snapshot in one message (the first format, no longer sent nor taken:
            // snapshots travel in chunks, staged on disk).
            WireMessage::Snapshot { .. } => self.transfer_stats.chunks_refused += 1,
        }
    }

    fn refusal(&self) -> Option<Error> {
        self.halted().map(|h| Error::Halted(h.to_owned()))
    }

    fn admit(&mut self) -> Result<(), Error> {
        if let Some(e) = self.refusal() {
            return Err(e);
        }
        if self.proposals.len() + self.proposals_out >= self.cfg.proposals_pending_max {
            return Err(Error::Busy { what: "proposals", limit: self.cfg.proposals_pending_max });
        }
        Ok(())
    }

    /// A leader sheds new commands well before a full apply backlog stops its replication
    /// (for the whole cluster): at half of it. Not membership changes (tiny, and the way to
    /// replace a slow node), and not on a follower (it answers `NotLeader`, with a hint).
    fn shed(&self) -> Result<(), Error> {
        let shed_at = (self.cfg.apply_backlog_bytes_max / 2).max(1);
        if matches!(self.side, Side::Detached)
            && self.core.raft().role() == Role::Leader
            && self.apply_in_flight >= shed_at
        {
            return Err(Error::Busy {
                what: "apply backlog bytes",
                limit: usize::try_from(shed_at).unwrap_or(usize::MAX),
            });
        }
        Ok(())
    }

    /// Appends `bytes` as a command entry (the runtime's encoding of a [`Command`], or the
    /// state machine's own command when [`StateMachine::ENVELOPE`] is off).
    fn append(&mut self, now: Instant, bytes: Vec<u8>, waiter: Waiter<SM::Output>) {
        if let Err(e) = self.admit().and_then(|()| self.shed()) {
            return waiter.fail(e);
        }
        match self.core.propose(now, Data::from(bytes)) {
            Ok(id) => self.track(id, waiter),
            Err(quorate_core::ProposeError::NotLeader { leader_hint }) => waiter.fail(Error::NotLeader { leader_hint }),
            Err(e) => waiter.fail(Error::Propose(e)),
        }
    }

    fn track(&mut self, id: EntryId, waiter: Waiter<SM::Output>) {
        // A waiter still at this index belongs to an entry this leader's log no longer holds
        // (it was truncated). It is not committed now, but it may still be: another member
        // may hold it and lead next (five voters: see
        // `a_waiter_whose_index_is_reused_learns_its_outcome_is_unknown`). Only applying this
        // index with another term proves it was not (`Dropped`, at apply).
        if let Some((_, old)) = self.proposals.insert(id.index, (id.term, waiter)) {
            old.fail(Error::OutcomeUnknown);
        }
    }

    /// Proposes `command`, optionally as `(client, seq)` of an exactly-once session; `done`
    /// receives the state machine's output once the command is applied here (or the cached
    /// output, for a retried sequence number), or an error.
    pub fn propose(
        &mut self,
        now: Instant,
        command: Vec<u8>,
        session: Option<(ClientId, u64)>,
        done: ProposeCallback<SM::Output>,
    ) {
        let bytes = match session {
            _ if !SM::ENVELOPE && session.is_some() => {
                return done(Err(self.refusal().unwrap_or(Error::SessionsOff)));
            }
            _ if !SM::ENVELOPE => command,
            Some((client, seq)) => Command::Session { client, seq, command }.encode(),
            None => Command::Plain(command).encode(),
        };
        self.append(now, bytes, Waiter::Command(done));
    }

    /// Proposes `command` (outside any session) only if this replica still leads `term`: a
    /// command a leader decided on from what it knew in that term — its clock's deadlines,
    /// say — must not be appended in a later term, after another leader acted on newer
    /// knowledge. [`Error::NotLeader`] otherwise, naming the current leader unless it is this
    /// replica (in a later term: there is nowhere to send the same command again).
    pub fn propose_in_term(&mut self, now: Instant, term: Term, command: Vec<u8>, done: ProposeCallback<SM::Output>) {
        if let Some(e) = self.refusal() {
            return done(Err(e));
        }
        let raft = self.core.raft();
        if raft.role() != Role::Leader || raft.term() != term {
            let me = raft.id();
            return done(Err(Error::NotLeader { leader_hint: raft.leader().filter(|l| *l != me) }));
        }
        self.propose(now, command, None, done);
    }

    /// Opens an exactly-once session; `done` receives its id once the opening commits
    /// ([`Error::SessionsOff`] at once when [`StateMachine::ENVELOPE`] is off).
    pub fn open_session(&mut self, now: Instant, done: ProposeCallback<ClientId>) {
        if !SM::ENVELOPE {
            return done(Err(self.refusal().unwrap_or(Error::SessionsOff)));
        }
        self.append(now, Command::OpenSession.encode(), Waiter::Session(done));
    }

    /// Proposes a membership change; `done` is called once it is applied here.
    pub fn change_membership(&mut self, now: Instant, change: ConfChange, done: ProposeCallback<()>) {
        if let Err(e) = self.admit() {
            return done(Err(e));
        }
        match self.core.propose_conf_change(now, change) {
            Ok(id) => self.track(id, Waiter::Conf(done)),
            Err(quorate_core::ConfChangeError::NotLeader { leader_hint }) => {
                done(Err(Error::NotLeader { leader_hint }))
            }
            Err(e) => done(Err(Error::ConfChange(e))),
        }
    }

    /// Hands leadership to `to` (leader only).
    pub fn transfer_leader(&mut self, now: Instant, to: NodeId) -> Result<(), Error> {
        if let Some(e) = self.refusal() {
            return Err(e);
        }
        Ok(self.core.transfer_leadership(now, to)?)
    }

    /// Reads at `level`: `read` runs over the state machine once the level allows (for
    /// [`ReadLevel::Stale`]: at once while the state machine runs in the replica's turn, after
    /// the work handed out before it when it is detached), or receives the error.
    pub fn read(&mut self, now: Instant, level: ReadLevel, read: ReadCallback<SM>) {
        if let Some(e) = self.refusal() {
            return read(Err(e));
        }
        if self.reads.len() + self.reads_out.load(std::sync::atomic::Ordering::Relaxed) >= self.cfg.reads_pending_max {
            return read(Err(Error::Busy { what: "reads", limit: self.cfg.reads_pending_max }));
        }
        let core_level = match level {
            ReadLevel::Stale => {
                self.hand_read(LogIndex::ZERO, read);
                return self.run_inline(now);
            }
            ReadLevel::Linearizable => quorate_core::ReadLevel::Linearizable,
            ReadLevel::Lease => quorate_core::ReadLevel::Lease,
        };
        let id = ReadId(self.next_read);
        self.next_read += 1;
        match self.core.read(now, id, core_level) {
            Ok(()) => {
                self.reads.insert(id, read);
            }
            Err(e) => read(Err(Error::Read(e))),
        }
    }

    /// Hands a read to the state machine's side, to run once applied up to `index`; counts
    /// it until it has run.
    fn hand_read(&mut self, index: LogIndex, read: ReadCallback<SM>) {
        let out = self.reads_out.clone();
        out.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = self.next_read;
        self.next_read += 1;
        self.jobs.push(Job::Read {
            index,
            id,
            read: Box::new(move |sm| {
                out.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                read(sm);
            }),
        });
    }

    /// Takes a snapshot of the applied state now (if anything was applied since the last)
    /// and lets the core compact the log behind it. Returns the index it covers. For a
    /// replica whose state machine runs in its turn; a detached one answers
    /// [`Error::Detached`] (use [`Replica::request_snapshot`]).
    pub fn snapshot_now(&mut self, now: Instant) -> Result<LogIndex, Error> {
        if matches!(self.side, Side::Detached) {
            return Err(self.refusal().unwrap_or(Error::Detached));
        }
        let got = Arc::new(std::sync::Mutex::new(None));
        let put = got.clone();
        self.request_snapshot(
            now,
            Box::new(move |r| {
                *put.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(r);
            }),
        );
        let answer = got.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        answer.unwrap_or(Err(Error::OutcomeUnknown))
    }

    /// Asks for a snapshot of the applied state (if anything was applied since the last);
    /// `done` receives the index it covers once it is stored, and the core compacts the log
    /// behind it. Requests made until the one waiting is stored join it (one image for all
    /// of them); at most [`SNAPSHOT_CALLERS_MAX`] wait, beyond them [`Error::Busy`]. If the
    /// request is dropped unrun (the apply thread died), they get [`Error::OutcomeUnknown`].
    pub fn request_snapshot(&mut self, now: Instant, done: SnapshotCallback) {
        if let Some(e) = self.refusal() {
            return done(Err(e));
        }
        let request = self.next_read;
        self.next_read += 1;
        {
            let mut waiting = self.snapshot_callers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((_, callers)) = waiting.as_mut() {
                if callers.len() >= SNAPSHOT_CALLERS_MAX {
                    drop(waiting);
                    return done(Err(Error::Busy { what: "snapshot requests", limit: SNAPSHOT_CALLERS_MAX }));
                }
                callers.push(done);
                return;
            }
            *waiting = Some((request, vec![done]));
        }
        // The job answers everyone who joined before it ran (or, dropped unrun, tells them
        // the outcome is unknown).
        let answer = SnapshotAnswer(self.snapshot_callers.clone(), request);
        self.jobs.push(Job::SnapshotNow(Box::new(move |r| answer.answer(&r))));
        self.run_inline(now);
    }

    /// Fails every waiting request (a proposal with [`Error::OutcomeUnknown`], a read with
    /// [`Error::Shutdown`]) and returns the state machine (`None` once detached: the
    /// [`Applier`] has it, and must still run the last [`Replica::take_jobs`], which fails
    /// what it holds). Storage is dropped (closed).
    pub fn shutdown(mut self) -> Option<SM> {
        self.stop();
        match std::mem::replace(&mut self.side, Side::Detached) {
            Side::Inline(mut a) => {
                drop(a.run(Jobs(std::mem::take(&mut self.jobs))));
                Some(a.into_state_machine())
            }
            Side::Detached => None,
        }
    }

    /// Fails every waiting request (as [`Replica::shutdown`]) and queues the stop of the
    /// state machine's side; the replica does nothing more. For a host that runs the
    /// detached side: take the last jobs after it.
    pub fn stop(&mut self) {
        if self.halted.is_none() {
            self.halted = Some("shut down".into());
        }
        self.fail_all(&Error::Shutdown);
        self.jobs.push(Job::Shutdown);
    }

    fn fail_all(&mut self, e: &Error) {
        for (_, (_, w)) in std::mem::take(&mut self.proposals) {
            w.fail(if matches!(e, Error::Shutdown | Error::Halted(_)) { Error::OutcomeUnknown } else { e.clone() });
        }
        for (_, r) in std::mem::take(&mut self.reads) {
            r(Err(e.clone()));
        }
        // Work not yet run: refused here, in order.
        for j in std::mem::take(&mut self.jobs) {
            apply::refuse(j, e);
        }
        // Snapshot callers, also those of a request the other side holds (if it runs, it
        // finds no one left to answer).
        answer_snapshot_callers(&self.snapshot_callers, None, &Err(e.clone()));
    }

    /// Halts the replica: every waiting request fails, the state machine's side is told
    /// (and fails what it holds), nothing more is done. The replica halts by itself on a
    /// storage failure or a broken contract; a host calls this when the thread that runs the
    /// detached state machine's side died.
    pub fn halt(&mut self, reason: String) {
        if self.halted.is_none() {
            self.halt_here(reason.clone());
            self.jobs.push(Job::Halt(reason));
            if let Side::Inline(a) = &mut self.side {
                drop(a.run(Jobs(std::mem::take(&mut self.jobs))));
            }
        }
    }

    /// Halts here only (the state machine's side knows).
    fn halt_here(&mut self, reason: String) {
        if self.halted.is_none() {
            self.core.replica_halted(&reason);
            self.halted = Some(reason.clone());
            self.fail_all(&Error::Halted(reason));
        }
    }

    /// Runs the queued work now if the state machine runs in the replica's turn.
    fn run_inline(&mut self, now: Instant) {
        if let Side::Inline(a) = &mut self.side
            && !self.jobs.is_empty()
        {
            let reports = a.run(Jobs(std::mem::take(&mut self.jobs)));
            self.on_reports(now, reports);
        }
    }

    /// Does everything the core asks for, until it asks for nothing more (see the type's docs
    /// for the order), then sends what the snapshot transfers may send now and the answers to
    /// snapshot chunks received.
    ///
    /// Replication first, the state machine after: each `Ready`'s messages go out before its
    /// batch is written (the core released each only once what it depends on was durable),
    /// the batch is reported persisted as soon as it is durable, and only once the core has
    /// nothing more to hand out — or the committed entries queued reach the core's
    /// `apply_bytes_max`, as in a catch-up — is anything applied: committed entries, snapshot
    /// installs and the snapshots the core asked for, in the order the core handed them out.
    /// So a leader's appends do not wait for its own fsync, and a follower's acknowledgement
    /// waits for at most one round of applying (none in the steady state).
    ///
    /// Once the state machine's side is detached ([`Replica::detach_applier`]) nothing is
    /// applied here: the work is queued for [`Replica::take_jobs`], and the turn replicates
    /// until the core has nothing more or [`Config::apply_backlog_bytes_max`] of committed
    /// entries wait for that side.
    pub fn process(&mut self, now: Instant, net: &mut impl Network) {
        loop {
            self.replicate(now, net);
            if self.jobs.is_empty() || self.halted.is_some() || matches!(self.side, Side::Detached) {
                break;
            }
            // May ask the core for more (a snapshot taken: the log compacted behind it).
            self.run_inline(now);
        }
        if self.halted.is_none() {
            self.pump_transfers(now, net);
            self.finish_turn(net);
        }
    }

    /// Handles `Ready`s until the core has nothing more to hand out, or until the committed
    /// entries handed to the state machine's side and not yet applied reach the bound (the
    /// core's `apply_bytes_max` inline — so at most that plus one `Ready`'s committed entries
    /// are queued per round, and a restart far behind its commit index does not read the
    /// whole tail into memory before applying any of it —, `apply_backlog_bytes_max`
    /// detached): sends, persists, reports persisted, hands confirmed reads on and opens
    /// snapshot transfers; queues the work for the state machine's side, in order.
    fn replicate(&mut self, now: Instant, net: &mut impl Network) {
        let bound = match self.side {
            Side::Inline(_) => self.cfg.raft.apply_bytes_max,
            Side::Detached => self.cfg.apply_backlog_bytes_max,
        };
        if self.apply_in_flight >= bound && self.core.raft().has_ready() {
            self.backlog_stops += 1;
        }
        while self.halted.is_none() && self.apply_in_flight < bound && self.core.raft().has_ready() {
            let ready = self.core.ready();
            if ready.is_empty() {
                break;
            }
            // 0. The recovery from lost synced state is over, on durable ground (the core
            //    says so): the storage forgets the loss.
            if ready.recovered
                && let Err(e) = self.core.storage_mut().recovered()
            {
                return self.halt(format!("storage: cannot record the recovery from lost state: {e}"));
            }
            // 1. Messages: none depends on this batch or on applying.
            for m in ready.messages {
                net.send(WireMessage::Raft(m));
            }
            // 2. Write the batch: handed to the storage's writer (durable once it reports),
            //    or here (durable once `persist` returns). An install takes the complete
            //    staging the core accepted as the snapshot, here, after every batch before it.
            let mut install = None;
            let mut persisted = None;
            if let Some(batch) = ready.persist {
                let io = batch.io;
                match &mut self.writer {
                    Some(w) if batch.install.is_none() => {
                        if let Err(e) = w.submit(batch) {
                            return self.halt(format!("storage: {e}"));
                        }
                    }
                    writer => {
                        if let Some(meta) = &batch.install
                            && self.staged.take().as_ref() != Some(meta)
                        {
                            return self.halt(format!("snapshot install at {} without its staging", meta.last.index));
                        }
                        // Everything submitted before is durable first (reported too; the
                        // report of this batch below covers those as well, and their own
                        // reports, when they come, are ignored).
                        let flushed = match writer {
                            Some(w) => {
                                let r = w.writer.flush();
                                w.submitted.clear();
                                w.flushed_through = Some(io);
                                r
                            }
                            None => Ok(()),
                        };
                        if let Err(e) = flushed.and_then(|()| self.core.storage_mut().persist(&batch)) {
                            return self.halt(format!("storage: {e}"));
                        }
                        if batch.install.is_some() {
                            self.receiver.forget();
                        }
                        install = batch.install;
                        persisted = Some(io);
                    }
                }
            }
            // 3. For the state machine, in order: what committed before this batch's install
            //    (if any), then the install, which replaces the state before anything the
            //    core hands out after the report below is applied.
            if let (Some(first), Some(last)) = (ready.committed.first(), ready.committed.last()) {
                let (lo, hi) = (first.index, last.index);
                let bytes = ready.committed.iter().map(Entry::size_bytes).sum::<u64>();
                let mut waiters = self.proposals.split_off(&lo);
                let mut rest = waiters.split_off(&hi.next());
                self.proposals.append(&mut rest);
                self.apply_in_flight += bytes;
                self.proposals_out += waiters.len();
                self.jobs.push(Job::Apply { entries: ready.committed, bytes, waiters });
            }
            if let Some(meta) = install {
                self.hand_install(meta);
                if self.halted.is_some() {
                    return;
                }
            }
            if let Some(io) = persisted {
                self.core.persisted(now, io);
            }
            // 4. Reads: confirmed ones run once applied ≥ their index.
            for r in ready.reads {
                if let Some(f) = self.reads.remove(&r.id) {
                    self.hand_read(r.index, f);
                }
            }
            for r in ready.failed_reads {
                if let Some(f) = self.reads.remove(&r.id) {
                    f(Err(Error::Read(r.error)));
                }
            }
            // 5. Snapshots: one to take once applied up to it; transfers to open.
            if let Some(meta) = ready.take_snapshot {
                self.jobs.push(Job::Snapshot(meta));
            }
            for s in ready.send_snapshots {
                self.start_transfer(now, s);
            }
        }
        #[cfg(test)]
        {
            self.peak_queued_bytes = self.peak_queued_bytes.max(self.apply_in_flight);
        }
    }

    /// Hands an installed snapshot to the state machine's side, opened here; the proposals
    /// it covers cannot learn whether they were applied.
    fn hand_install(&mut self, meta: SnapshotMeta) {
        let source = match self.core.raft().storage().open_snapshot() {
            Ok(Some(s)) if s.header().meta == meta => s,
            Ok(_) => return self.halt(format!("the installed snapshot at {} is not in storage", meta.last.index)),
            Err(e) => return self.halt(format!("storage: {e}")),
        };
        let rest = self.proposals.split_off(&meta.last.index.next());
        for (_, (_, w)) in std::mem::replace(&mut self.proposals, rest) {
            w.fail(Error::OutcomeUnknown);
        }
        self.jobs.push(Job::Install { meta, source });
    }
}

/// Where a batch writer's reports go.
type ReportFn = dyn Fn(IoId, Result<(), StorageError>) + Send + Sync;

/// The storage's batch writer and where its reports go.
struct Writer {
    writer: Box<dyn BatchWriter>,
    report: Arc<ReportFn>,
    /// The batches submitted and not yet reported, oldest first: reports come in this order.
    submitted: VecDeque<IoId>,
    /// The last batch written in the turn after a flush: reports up to it are stale.
    flushed_through: Option<IoId>,
}

impl Writer {
    fn submit(&mut self, batch: quorate_core::Persist) -> Result<(), StorageError> {
        let io = batch.io;
        let report = Report { io, to: Some(Arc::clone(&self.report)) };
        self.writer.submit(batch, Box::new(move |r| report.send(r)))?;
        self.submitted.push_back(io);
        Ok(())
    }
}

/// One batch's report: sent once — as a failure if the writer drops the batch unreported (a
/// writer thread that died), so the replica halts rather than waits for ever.
struct Report {
    io: IoId,
    to: Option<Arc<ReportFn>>,
}

impl Report {
    fn send(mut self, r: Result<(), StorageError>) {
        if let Some(to) = self.to.take() {
            to(self.io, r);
        }
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        if let Some(to) = self.to.take() {
            to(self.io, Err(StorageError::Io("the batch writer dropped a batch without writing it".into())));
        }
    }
}

/// The term of entry `at` and the configuration in force there: the log's floor's, changed by
/// the configuration entries after it up to `at`.
fn state_at<L: LogStorage>(storage: &L, at: LogIndex) -> Result<(Term, Configuration), Error> {
    let floor = storage.snapshot_last();
    let mut config = storage.snapshot_meta()?.config;
    let term = if at == floor.index { floor.term } else { storage.term(at)? };
    let mut next = floor.index.next();
    while next <= at {
        let page = storage.entries(next, at.next(), 16 << 20)?;
        let Some(last) = page.last() else {
            return Err(Error::Start(format!("the log has no entry {next} (the state machine applied {at})")));
        };
        next = last.index.next();
        for e in page {
            if let EntryPayload::Config(c) = e.payload {
                config = c;
            }
        }
    }
    Ok((term, config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_machine::{Committed, RuntimeWrites};
    use crate::storage::{DeferredStorage, MemStorage};
    use quorate_log::LogStorage as _;
    use std::sync::{Arc, Mutex};

    /// Sums the bytes of each command; `bad_outputs` makes it break the output contract.
    #[derive(Default)]
    struct Sum {
        total: u64,
        applied: LogIndex,
        bad_outputs: bool,
    }

    impl StateMachine for Sum {
        type Output = u64;
        fn apply(&mut self, batch: &[Committed<'_>]) -> Vec<u64> {
            let mut out: Vec<u64> = batch
                .iter()
                .map(|c| {
                    self.total += c.command.iter().map(|b| u64::from(*b)).sum::<u64>();
                    self.applied = c.index;
                    self.total
                })
                .collect();
            if self.bad_outputs {
                out.pop();
            }
            out
        }
        fn snapshot(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
            out.write_all(&self.total.to_le_bytes())
        }
        fn restore(&mut self, applied: LogIndex, s: &mut dyn std::io::Read) -> Result<(), crate::RestoreError> {
            let mut b = [0u8; 8];
            s.read_exact(&mut b)?;
            self.total = u64::from_le_bytes(b);
            self.applied = applied;
            Ok(())
        }
        fn applied(&self) -> LogIndex {
            self.applied
        }
    }

    type Log<T> = Arc<Mutex<Vec<Result<T, Error>>>>;

    fn sink<T: Send + 'static>(log: &Log<T>) -> ProposeCallback<T> {
        let log = log.clone();
        Box::new(move |r| log.lock().expect("unpoisoned").push(r))
    }

    fn id() -> NodeId {
        NodeId::new(1).expect("non-zero")
    }

    /// A single-voter replica, elected and with its no-op applied.
    fn leader<SM: StateMachine, L: LogStorage>(storage: L, sm: SM, cfg: Config) -> (Replica<SM, L>, Instant) {
        let mut r = Replica::new(cfg, storage, sm, Instant::ZERO).expect("starts");
        let now = r.next_deadline().expect("an election timer");
        r.tick(now);
        r.process(now, &mut Vec::new());
        assert_eq!(r.status().role, Role::Leader);
        (r, now)
    }

    fn storage() -> MemStorage {
        MemStorage::new(Configuration::with_voters([id()]).expect("valid"))
    }

    type Reports = Arc<Mutex<Vec<(IoId, Result<(), StorageError>)>>>;

    /// A single-voter leader over [`DeferredStorage`] with its writes detached; the reports
    /// of its batches.
    fn deferred_leader() -> (Replica<Sum, DeferredStorage>, DeferredStorage, Reports, Instant) {
        let disk = DeferredStorage::new(storage());
        let (mut r, now) = leader(disk.clone(), Sum::default(), Config::new(id()));
        let reports = Reports::default();
        let to = reports.clone();
        assert_eq!(r.detach_writes(move |io, res| to.lock().unwrap().push((io, res))), Ok(true));
        assert!(matches!(r.detach_writes(|_, _| ()), Err(Error::Start(_))), "once");
        (r, disk, reports, now)
    }

    fn hand_reports<L: LogStorage>(r: &mut Replica<Sum, L>, reports: &Reports, now: Instant) {
        let got: Vec<_> = reports.lock().unwrap().drain(..).collect();
        for (io, res) in got {
            r.on_persisted(now, io, res);
        }
    }

    #[test]
    fn batches_written_off_the_turn_are_acknowledged_only_once_durable_and_do_not_wait_for_each_other() {
        let (mut r, disk, reports, now) = deferred_leader();
        let last = disk.last_index();
        let out: Log<u64> = Log::default();
        r.propose(now, vec![5], None, sink(&out));
        r.process(now, &mut Vec::new());
        assert_eq!(disk.queued(), 1, "handed to the writer");
        assert_eq!(disk.last_index(), last, "not written in the turn");
        // The next proposal goes out while the first batch is not yet durable.
        r.propose(now, vec![1], None, sink(&out));
        r.process(now, &mut Vec::new());
        assert_eq!(disk.queued(), 2);
        assert!(out.lock().unwrap().is_empty(), "nothing is committed before it is durable");
        assert_eq!(r.status().commit, last);
        // The first is durable: it commits, the second does not yet.
        disk.write(1);
        hand_reports(&mut r, &reports, now);
        r.process(now, &mut Vec::new());
        assert_eq!(*out.lock().unwrap(), vec![Ok(5)]);
        disk.write(1);
        hand_reports(&mut r, &reports, now);
        r.process(now, &mut Vec::new());
        assert_eq!(*out.lock().unwrap(), vec![Ok(5), Ok(6)]);
        let written = disk.last_index();
        assert_eq!(written, r.status().last_index);
        assert!(r.halted().is_none());
    }

    #[test]
    fn a_failed_or_dropped_write_halts_the_replica_and_acknowledges_nothing() {
        for dropped in [false, true] {
            let (mut r, disk, reports, now) = deferred_leader();
            let out: Log<u64> = Log::default();
            r.propose(now, vec![5], None, sink(&out));
            r.process(now, &mut Vec::new());
            r.propose(now, vec![1], None, sink(&out));
            r.process(now, &mut Vec::new());
            if dropped {
                // A writer thread that died drops what it held: each is reported failed.
                drop(disk.take_queued());
            } else {
                assert_eq!(disk.fail(), 2);
            }
            hand_reports(&mut r, &reports, now);
            r.process(now, &mut Vec::new());
            assert!(r.halted().is_some_and(|h| h.starts_with("storage: ")), "{:?}", r.halted());
            assert_eq!(*out.lock().unwrap(), vec![Err(Error::OutcomeUnknown), Err(Error::OutcomeUnknown)]);
        }
    }

    #[test]
    fn a_report_out_of_order_halts_the_replica_and_a_taken_writer_stops_it() {
        let (mut r, disk, reports, now) = deferred_leader();
        let out: Log<u64> = Log::default();
        for v in [5, 1] {
            r.propose(now, vec![v], None, sink(&out));
            r.process(now, &mut Vec::new());
        }
        // The second batch reported before the first: the core would take it as covering both.
        let mut queued = disk.take_queued();
        let (_, second) = queued.pop().expect("two");
        second(Ok(()));
        hand_reports(&mut r, &reports, now);
        assert!(r.halted().is_some_and(|h| h.contains("where")), "{:?}", r.halted());
        assert_eq!(*out.lock().unwrap(), vec![Err(Error::OutcomeUnknown), Err(Error::OutcomeUnknown)]);
        drop(queued);

        let (mut r, _disk, _reports, _now) = deferred_leader();
        assert!(r.take_batch_writer().is_some());
        assert!(r.halted().is_some(), "writes nothing more");
    }

    /// Two voters: node 1 over [`MemStorage`], node 2 over [`DeferredStorage`] with its
    /// writes detached. Returns them with node 1 elected and both caught up, the follower's
    /// disk and reports, and the time.
    fn two_voters() -> (Replica<Sum, MemStorage>, Replica<Sum, DeferredStorage>, DeferredStorage, Reports, Instant) {
        let ids = [id(), NodeId::new(2).expect("non-zero")];
        let conf = Configuration::with_voters(ids).expect("valid");
        let mut c1 = Config::new(ids[0]);
        c1.raft.seed = 1;
        let mut leader =
            Replica::new(c1, MemStorage::new(conf.clone()), Sum::default(), Instant::ZERO).expect("starts");
        let disk = DeferredStorage::new(MemStorage::new(conf));
        let mut follower =
            Replica::new(Config::new(ids[1]), disk.clone(), Sum::default(), Instant::ZERO).expect("starts");
        let reports = Reports::default();
        let to = reports.clone();
        assert_eq!(follower.detach_writes(move |io, res| to.lock().unwrap().push((io, res))), Ok(true));
        // Node 1 campaigns first; the follower's disk writes at once until the no-op commits.
        let mut now = leader.next_deadline().expect("an election timer");
        leader.tick(now);
        for _ in 0..50 {
            let mut to_follower = Vec::new();
            leader.process(now, &mut to_follower);
            for m in to_follower {
                follower.receive(now, m);
            }
            let mut to_leader = Vec::new();
            follower.process(now, &mut to_leader);
            disk.write(usize::MAX);
            hand_reports(&mut follower, &reports, now);
            follower.process(now, &mut to_leader);
            for m in to_leader {
                leader.receive(now, m);
            }
            now = Instant(now.0 + 1_000_000);
            if leader.status().role == Role::Leader && follower.status().commit == leader.status().last_index {
                break;
            }
        }
        assert_eq!(leader.status().role, Role::Leader);
        assert_eq!(leader.status().commit, leader.status().last_index, "the no-op committed");
        (leader, follower, disk, reports, now)
    }

    /// With two voters the leader commits only with the follower's acknowledgement, so a
    /// commit before the follower's disk reported its batch would be an acknowledgement of
    /// what a crash could still lose.
    #[test]
    fn a_followers_acknowledgement_waits_for_its_disks_report() {
        let (mut leader, mut follower, disk, reports, now) = two_voters();
        let out: Log<u64> = Log::default();
        leader.propose(now, vec![7], None, sink(&out));
        let mut to_follower = Vec::new();
        leader.process(now, &mut to_follower);
        assert!(!to_follower.is_empty(), "the entry goes out");
        for m in to_follower {
            follower.receive(now, m);
        }
        let mut to_leader = Vec::new();
        follower.process(now, &mut to_leader);
        assert_eq!(disk.queued(), 1, "the follower's batch waits on its disk");
        for m in std::mem::take(&mut to_leader) {
            leader.receive(now, m);
        }
        leader.process(now, &mut Vec::new());
        assert!(out.lock().unwrap().is_empty(), "nothing commits before the follower's batch is durable");
        let last = leader.status().last_index;
        assert!(leader.status().commit < last);

        // Its disk reports: the follower acknowledges, the leader commits and answers.
        assert_eq!(disk.write(1), 1);
        hand_reports(&mut follower, &reports, now);
        follower.process(now, &mut to_leader);
        for m in to_leader {
            leader.receive(now, m);
        }
        leader.process(now, &mut Vec::new());
        assert_eq!(*out.lock().unwrap(), vec![Ok(7)]);
        assert_eq!(leader.status().commit, last);
        assert_eq!(disk.last_index(), last);
    }

    /// One round between [`two_voters`]: both tick, the leader's messages reach the follower,
    /// the follower's disk writes what it queued (if `write`) and reports, and its answers
    /// reach the leader.
    fn round(
        leader: &mut Replica<Sum, MemStorage>,
        follower: &mut Replica<Sum, DeferredStorage>,
        disk: &DeferredStorage,
        reports: &Reports,
        now: Instant,
        write: bool,
    ) {
        leader.tick(now);
        follower.tick(now);
        let mut to_follower = Vec::new();
        leader.process(now, &mut to_follower);
        for m in to_follower {
            follower.receive(now, m);
        }
        let mut to_leader = Vec::new();
        follower.process(now, &mut to_leader);
        if write {
            disk.write(usize::MAX);
        }
        hand_reports(follower, reports, now);
        follower.process(now, &mut to_leader);
        for m in to_leader {
            leader.receive(now, m);
        }
    }

    /// A follower whose disk lost synced writes restarts recovering from what its storage had
    /// recorded: it does not campaign, and the storage forgets the loss only once a leader
    /// has caught the follower up and its disk has reported the catch-up durable.
    #[test]
    fn a_replica_whose_storage_lost_synced_state_recovers_and_forgets_the_loss_only_once_durable() {
        let (mut leader, mut follower, disk, reports, mut now) = two_voters();
        let out: Log<u64> = Log::default();
        for v in [1, 2, 3] {
            leader.propose(now, vec![v], None, sink(&out));
        }
        for _ in 0..20 {
            now = Instant(now.0 + 20_000_000);
            round(&mut leader, &mut follower, &disk, &reports, now, true);
        }
        let last = leader.status().last_index;
        assert_eq!(follower.status().commit, last, "caught up: {:?}", follower.status());
        let term = follower.status().term;

        // A crash that loses the last two synced entries; the record keeps what was synced.
        drop(follower);
        let mut lost = disk.disk();
        lost.lose_synced_state(LogIndex(last.0 - 1));
        assert_eq!(lost.last_index(), LogIndex(last.0 - 2));
        let disk = DeferredStorage::new(lost);
        let mut follower =
            Replica::new(Config::new(NodeId::new(2).expect("non-zero")), disk.clone(), Sum::default(), now)
                .expect("starts");
        let reports = Reports::default();
        let to = reports.clone();
        assert_eq!(follower.detach_writes(move |io, res| to.lock().unwrap().push((io, res))), Ok(true));
        assert!(follower.core().recovering().is_some(), "the storage's record reached the core");

        // Alone past its election timeout: no campaign.
        let due = follower.next_deadline().expect("an election timer");
        follower.tick(due);
        let mut sent = Vec::new();
        follower.process(due, &mut sent);
        assert_eq!((follower.status().role, follower.status().term), (Role::Follower, term));
        assert!(sent.is_empty(), "no vote asked: {sent:?}");

        // The leader sends the lost entries; the follower's disk holds them back: still
        // recovering, the loss not forgotten.
        for _ in 0..10 {
            now = Instant(now.0 + 20_000_000);
            round(&mut leader, &mut follower, &disk, &reports, now, false);
        }
        assert!(disk.queued() > 0, "the catch-up waits on the disk");
        assert!(disk.lost_state().is_some() && follower.core().recovering().is_some());
        // Durable: recovered, the loss forgotten, the log whole again.
        for _ in 0..10 {
            now = Instant(now.0 + 20_000_000);
            round(&mut leader, &mut follower, &disk, &reports, now, true);
        }
        assert!(follower.core().recovering().is_none(), "left recovery");
        assert_eq!(disk.lost_state(), None, "the storage forgot the loss");
        assert_eq!(disk.last_index(), last);
        assert!(follower.halted().is_none());
    }

    #[test]
    fn a_proposal_for_another_term_is_refused() {
        let (mut r, now) = leader(storage(), Sum::default(), Config::new(id()));
        let term = r.status().term;
        let out: Log<u64> = Log::default();
        r.propose_in_term(now, Term(term.0 - 1), vec![9], sink(&out));
        r.propose_in_term(now, Term(term.0 + 1), vec![9], sink(&out));
        r.propose_in_term(now, term, vec![4], sink(&out));
        r.process(now, &mut Vec::new());
        // Not this replica's to retry: no hint.
        let not_leader = Err(Error::NotLeader { leader_hint: None });
        assert_eq!(*out.lock().unwrap(), vec![not_leader.clone(), not_leader, Ok(4)]);
    }

    #[test]
    fn exactly_once_survives_a_snapshot_and_a_restart() {
        let (mut r, now) = leader(storage(), Sum::default(), Config::new(id()));
        let sessions: Log<ClientId> = Log::default();
        r.open_session(now, sink(&sessions));
        r.process(now, &mut Vec::new());
        let client = sessions.lock().unwrap().pop().expect("answered").expect("opened");
        let out: Log<u64> = Log::default();
        r.propose(now, vec![7], Some((client, 1)), sink(&out));
        r.process(now, &mut Vec::new());
        assert_eq!(r.snapshot_now(now), Ok(r.applied()));
        // A restart restores the snapshot: state and session table.
        let disk = r.storage().clone();
        drop(r);
        let (mut r, now) = leader(disk, Sum::default(), Config::new(id()));
        assert_eq!(r.state_machine().expect("inline").total, 7);
        r.propose(now, vec![7], Some((client, 1)), sink(&out));
        r.propose(now, vec![1], Some((client, 2)), sink(&out));
        r.propose(now, vec![1], Some((client, 1)), sink(&out));
        r.propose(now, vec![1], Some((ClientId(999), 1)), sink(&out));
        r.process(now, &mut Vec::new());
        let got = out.lock().unwrap().clone();
        assert_eq!(got, vec![Ok(7), Ok(7), Ok(8), Err(Error::StaleSequence), Err(Error::SessionExpired)]);
        assert_eq!(r.state_machine().expect("inline").total, 8, "the retry was not applied again");
    }

    #[test]
    fn reads_stale_at_once_linearizable_after_confirmation() {
        let (mut r, now) = leader(storage(), Sum::default(), Config::new(id()));
        let out: Log<u64> = Log::default();
        r.propose(now, vec![5], None, sink(&out));
        let reads: Log<u64> = Log::default();
        let (l1, l2) = (reads.clone(), reads.clone());
        // Before process the proposal is not applied: a stale read sees 0, at once.
        r.read(now, ReadLevel::Stale, Box::new(move |sm| l1.lock().unwrap().push(sm.map(|s| s.total))));
        assert_eq!(*reads.lock().unwrap(), vec![Ok(0)]);
        r.process(now, &mut Vec::new());
        assert_eq!(*out.lock().unwrap(), vec![Ok(5)]);
        // After the acknowledgement a linearizable read must see the write; it runs only
        // once confirmed (in `process`), not when asked.
        r.read(now, ReadLevel::Linearizable, Box::new(move |sm| l2.lock().unwrap().push(sm.map(|s| s.total))));
        assert_eq!(reads.lock().unwrap().len(), 1);
        r.process(now, &mut Vec::new());
        assert_eq!(*reads.lock().unwrap(), vec![Ok(0), Ok(5)]);
    }

    /// A proposal whose index a later leader of this node reuses may still commit: with five
    /// voters, A's write W at i+1 reaches only B; C leads and cuts A's log back below i+1; A
    /// leads again and proposes at i+1; B, whose last term is newer than D's and E's, leads
    /// next and commits W. So W's proposer hears that its outcome is unknown, never that W was
    /// dropped (a client would then retry a write that may apply).
    #[test]
    fn a_waiter_whose_index_is_reused_learns_its_outcome_is_unknown() {
        let (mut r, _now) = leader(storage(), Sum::default(), Config::new(id()));
        let out: Log<u64> = Log::default();
        let first = EntryId::new(Term(2), LogIndex(5));
        r.track(first, Waiter::Command(sink(&out)));
        r.track(EntryId::new(Term(4), LogIndex(5)), Waiter::Command(sink(&out)));
        assert_eq!(*out.lock().unwrap(), vec![Err(Error::OutcomeUnknown)]);
    }

    #[test]
    fn queues_are_bounded() {
        let mut cfg = Config::new(id());
        cfg.proposals_pending_max = 1;
        cfg.reads_pending_max = 1;
        let (mut r, now) = leader(storage(), Sum::default(), cfg);
        let out: Log<u64> = Log::default();
        r.propose(now, vec![1], None, sink(&out));
        r.propose(now, vec![1], None, sink(&out));
        assert_eq!(*out.lock().unwrap(), vec![Err(Error::Busy { what: "proposals", limit: 1 })]);
        let reads: Log<u64> = Log::default();
        for _ in 0..2 {
            let l = reads.clone();
            r.read(now, ReadLevel::Linearizable, Box::new(move |sm| l.lock().unwrap().push(sm.map(|s| s.total))));
        }
        assert_eq!(*reads.lock().unwrap(), vec![Err(Error::Busy { what: "reads", limit: 1 })]);
        r.process(now, &mut Vec::new());
        assert_eq!(out.lock().unwrap().len(), 2);
        assert_eq!(reads.lock().unwrap().len(), 2);
    }

    #[test]
    fn requests_handed_to_a_detached_state_machine_count_against_the_bounds() {
        let mut cfg = Config::new(id());
        cfg.proposals_pending_max = 2;
        cfg.reads_pending_max = 1;
        let (mut r, now) = leader(storage(), Sum::default(), cfg);
        let mut applier = r.detach_applier().expect("inline until now");
        let out: Log<u64> = Log::default();
        r.propose(now, vec![1], None, sink(&out));
        r.propose(now, vec![2], None, sink(&out));
        r.process(now, &mut Vec::new());
        let jobs = r.take_jobs();
        assert!(out.lock().unwrap().is_empty(), "committed, handed over, not applied");
        r.propose(now, vec![3], None, sink(&out));
        assert_eq!(*out.lock().unwrap(), vec![Err(Error::Busy { what: "proposals", limit: 2 })]);
        // A stale read waits on the state machine's side too.
        let reads: Log<u64> = Log::default();
        for _ in 0..2 {
            let l = reads.clone();
            r.read(now, ReadLevel::Stale, Box::new(move |sm| l.lock().unwrap().push(sm.map(|s| s.total))));
        }
        assert_eq!(*reads.lock().unwrap(), vec![Err(Error::Busy { what: "reads", limit: 1 })]);
        let reports = applier.run(jobs);
        r.on_reports(now, reports);
        let reports = applier.run(r.take_jobs());
        r.on_reports(now, reports);
        assert_eq!(out.lock().unwrap()[1..], [Ok(1), Ok(3)]);
        assert_eq!(reads.lock().unwrap()[1..], [Ok(3)]);
        r.propose(now, vec![4], None, sink(&out));
        r.process(now, &mut Vec::new());
        assert_eq!(out.lock().unwrap().len(), 3, "room again: taken, not refused");
    }

    #[test]
    fn snapshot_requests_waiting_together_share_one_image_and_are_bounded() {
        let (mut r, now) = leader(storage(), Sum::default(), Config::new(id()));
        let mut applier = r.detach_applier().expect("inline until now");
        let out: Log<u64> = Log::default();
        r.propose(now, vec![5], None, sink(&out));
        r.process(now, &mut Vec::new());
        let reports = applier.run(r.take_jobs());
        r.on_reports(now, reports);
        let answers: Log<LogIndex> = Log::default();
        for _ in 0..SNAPSHOT_CALLERS_MAX + 1 {
            let a = answers.clone();
            r.request_snapshot(now, Box::new(move |res| a.lock().unwrap().push(res)));
        }
        assert_eq!(
            *answers.lock().unwrap(),
            vec![Err(Error::Busy { what: "snapshot requests", limit: SNAPSHOT_CALLERS_MAX })]
        );
        let jobs = r.take_jobs();
        assert_eq!(jobs.0.iter().filter(|j| matches!(j, Job::SnapshotNow(_))).count(), 1, "one image for all");
        let reports = applier.run(jobs);
        r.on_reports(now, reports);
        let got = answers.lock().unwrap().clone();
        assert_eq!(got.len(), SNAPSHOT_CALLERS_MAX + 1);
        assert!(got[1..].iter().all(|a| *a == Ok(r.applied())), "{got:?}");
        // The next request is a new one.
        let a = answers.clone();
        r.request_snapshot(now, Box::new(move |res| a.lock().unwrap().push(res)));
        assert_eq!(r.take_jobs().0.len(), 1);
    }

    #[test]
    fn snapshot_callers_are_answered_once_when_their_request_is_dropped_or_the_replica_halts() {
        let (mut r, now) = leader(storage(), Sum::default(), Config::new(id()));
        let mut applier = r.detach_applier().expect("inline until now");
        let answers: Log<LogIndex> = Log::default();
        let ask = |r: &mut Replica<Sum, MemStorage>| {
            let a = answers.clone();
            r.request_snapshot(now, Box::new(move |res| a.lock().unwrap().push(res)));
        };
        ask(&mut r);
        ask(&mut r);
        // The apply thread died with the request: both hear that the outcome is unknown.
        drop(r.take_jobs());
        assert_eq!(*answers.lock().unwrap(), vec![Err(Error::OutcomeUnknown), Err(Error::OutcomeUnknown)]);
        // A later request is its own: the earlier one's end does not answer it.
        ask(&mut r);
        let reports = applier.run(r.take_jobs());
        r.on_reports(now, reports);
        assert_eq!(answers.lock().unwrap()[2..], [Ok(r.applied())]);
        // Held by the other side when the replica halts: answered by the halt, once.
        ask(&mut r);
        let held = r.take_jobs();
        r.halt("storage: gone".into());
        let reports = applier.run(held);
        r.on_reports(now, reports);
        assert_eq!(answers.lock().unwrap()[3..], [Err(Error::Halted("storage: gone".into()))]);
    }

    #[test]
    fn proposals_are_shed_at_half_the_apply_backlog() {
        let mut cfg = Config::new(id());
        cfg.apply_backlog_bytes_max = 400;
        let (mut r, now) = leader(storage(), Sum::default(), cfg);
        let _applier = r.detach_applier().expect("inline until now");
        let out: Log<u64> = Log::default();
        for _ in 0..20 {
            r.propose(now, vec![1; 50], None, sink(&out));
            r.process(now, &mut Vec::new());
        }
        let (backlog, _) = r.apply_backlog();
        assert!((200..400 + 200).contains(&backlog), "{backlog}");
        let got = out.lock().unwrap().clone();
        assert!(
            !got.is_empty() && got.iter().all(|o| *o == Err(Error::Busy { what: "apply backlog bytes", limit: 200 }))
        );
        // A membership change is not shed (the way to replace a slow node).
        let conf: Log<()> = Log::default();
        let c = conf.clone();
        r.change_membership(
            now,
            ConfChange::AddLearner(NodeId::new(2).expect("non-zero")),
            Box::new(move |res| c.lock().unwrap().push(res)),
        );
        assert!(conf.lock().unwrap().is_empty(), "taken: {:?}", conf.lock().unwrap());
    }

    #[test]
    fn a_state_machine_breaking_its_contract_halts_the_node_without_panicking() {
        let sm = Sum { bad_outputs: true, ..Sum::default() };
        let (mut r, now) = leader(storage(), sm, Config::new(id()));
        let out: Log<u64> = Log::default();
        r.propose(now, vec![1], None, sink(&out));
        r.process(now, &mut Vec::new());
        assert!(r.halted().is_some_and(|h| h.contains("0 outputs for 1 commands")), "{:?}", r.halted());
        assert!(matches!(out.lock().unwrap()[0], Err(Error::OutcomeUnknown)));
        r.propose(now, vec![1], None, sink(&out));
        assert!(matches!(out.lock().unwrap()[1], Err(Error::Halted(_))));
    }

    #[test]
    fn malformed_messages_are_dropped() {
        let (mut r, now) = leader(storage(), Sum::default(), Config::new(id()));
        let before = r.status();
        let from = NodeId::new(2).expect("non-zero");
        let meta = SnapshotMeta { last: EntryId::new(Term(9), LogIndex(100)), config: Configuration::default() };
        r.receive(now, WireMessage::Snapshot { from, to: id(), term: Term(9), meta, data: Data::from(vec![1, 2, 3]) });
        r.process(now, &mut Vec::new());
        assert_eq!(r.status(), before);
        // Plain garbage in the log is a deterministic result too.
        let out: Log<u64> = Log::default();
        r.append(now, Command::Plain(vec![]).encode(), Waiter::Command(sink(&out)));
        r.process(now, &mut Vec::new());
        assert_eq!(*out.lock().unwrap(), vec![Ok(0)]);
    }

    /// [`Sum`] owning its log format: the runtime's envelope and sessions off.
    #[derive(Default)]
    struct OwnSum(Sum);

    impl StateMachine for OwnSum {
        type Output = u64;
        const ENVELOPE: bool = false;
        fn apply(&mut self, batch: &[Committed<'_>]) -> Vec<u64> {
            self.0.apply(batch)
        }
        fn snapshot(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
            self.0.snapshot(out)
        }
        fn restore(&mut self, applied: LogIndex, s: &mut dyn std::io::Read) -> Result<(), crate::RestoreError> {
            self.0.restore(applied, s)
        }
        fn applied(&self) -> LogIndex {
            self.0.applied
        }
    }

    #[test]
    fn a_state_machine_owning_its_format_gets_every_command_as_proposed_and_no_sessions() {
        let (mut r, now) = leader(storage(), OwnSum::default(), Config::new(id()));
        let first = r.storage().last_index().next();
        let out: Log<u64> = Log::default();
        // Bytes the runtime would read as its own envelope, bytes it could not decode, and
        // nothing at all: each reaches the state machine, and the log, as proposed.
        let enveloped = Command::Plain(vec![7]).encode();
        let sum: u64 = enveloped.iter().map(|b| u64::from(*b)).sum();
        r.propose(now, enveloped.clone(), None, sink(&out));
        r.propose(now, vec![0xff], None, sink(&out));
        r.propose(now, Vec::new(), None, sink(&out));
        r.process(now, &mut Vec::new());
        assert_eq!(*out.lock().unwrap(), vec![Ok(sum), Ok(sum + 255), Ok(sum + 255)]);
        let logged: Vec<Vec<u8>> = r
            .storage()
            .entries(first, r.storage().last_index().next(), u64::MAX)
            .expect("reads")
            .into_iter()
            .map(|e| match e.payload {
                EntryPayload::Command(d) => d.to_vec(),
                other => panic!("not a command: {other:?}"),
            })
            .collect();
        assert_eq!(logged, vec![enveloped, vec![0xff], Vec::new()]);
        // The runtime's sessions are off: refused at once, nothing appended.
        let last = r.storage().last_index();
        let sessions: Log<ClientId> = Log::default();
        r.open_session(now, sink(&sessions));
        r.propose(now, vec![1], Some((ClientId(first.0), 1)), sink(&out));
        r.process(now, &mut Vec::new());
        assert_eq!(*sessions.lock().unwrap(), vec![Err(Error::SessionsOff)]);
        assert_eq!(out.lock().unwrap()[3], Err(Error::SessionsOff));
        assert_eq!(r.storage().last_index(), last);
        // A snapshot and a restart: the state comes back, and applying goes on. The image is
        // the state machine's 8 bytes alone (no runtime part).
        assert_eq!(r.snapshot_now(now), Ok(r.applied()));
        let image = r.storage().open_snapshot().expect("reads").expect("a snapshot");
        assert_eq!(image.header().total_len, 8);
        let disk = r.storage().clone();
        drop(r);
        let (mut r, now) = leader(disk, OwnSum::default(), Config::new(id()));
        assert_eq!(r.state_machine().expect("inline").0.total, sum + 255);
        r.propose(now, vec![1], None, sink(&out));
        r.process(now, &mut Vec::new());
        assert_eq!(out.lock().unwrap()[4], Ok(sum + 256));
    }

    /// [`Sum`] that records every entry it is shown: `(index, term, kind, applied by then)`.
    #[derive(Default)]
    struct Watching {
        sum: Sum,
        shown: Vec<(LogIndex, Term, char, LogIndex)>,
    }

    impl StateMachine for Watching {
        type Output = u64;
        fn apply(&mut self, batch: &[Committed<'_>]) -> Vec<u64> {
            self.sum.apply(batch)
        }
        fn observe_entry(&mut self, e: &Entry) {
            let kind = match e.payload {
                EntryPayload::Noop => 'n',
                EntryPayload::Command(_) => 'c',
                EntryPayload::Config(_) => 'm',
                _ => '?',
            };
            self.shown.push((e.index, e.term, kind, self.sum.applied));
        }
        fn snapshot(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
            self.sum.snapshot(out)
        }
        fn restore(&mut self, applied: LogIndex, s: &mut dyn std::io::Read) -> Result<(), crate::RestoreError> {
            self.sum.restore(applied, s)
        }
        fn applied(&self) -> LogIndex {
            self.sum.applied
        }
    }

    #[test]
    fn the_state_machine_is_shown_every_committed_entry_once_in_order_before_it_applies() {
        let (mut r, now) = leader(storage(), Watching::default(), Config::new(id()));
        let out: Log<u64> = Log::default();
        let changed: Log<()> = Log::default();
        r.propose(now, vec![2], None, sink(&out));
        r.process(now, &mut Vec::new());
        let learner = NodeId::new(2).expect("non-zero");
        r.change_membership(now, ConfChange::AddLearner(learner), sink(&changed));
        r.process(now, &mut Vec::new());
        r.propose(now, vec![3], None, sink(&out));
        r.process(now, &mut Vec::new());
        assert_eq!(*out.lock().unwrap(), vec![Ok(2), Ok(5)]);
        assert_eq!(*changed.lock().unwrap(), vec![Ok(())]);
        let last = r.storage().last_index();
        let sm = r.state_machine().expect("inline");
        let kinds: String = sm.shown.iter().map(|s| s.2).collect();
        assert_eq!(kinds, "ncmc", "{:?}", sm.shown);
        let logged = r.storage().entries(LogIndex(1), last.next(), u64::MAX).expect("reads");
        for (shown, e) in sm.shown.iter().zip(&logged) {
            assert_eq!((shown.0, shown.1), (e.index, e.term), "as the log holds them, in order");
            assert!(shown.3 < e.index, "shown before its command applied: {shown:?}");
        }
        assert_eq!(sm.shown.len(), logged.len());
        // A snapshot and a restart: the entries it covers are not shown again; the new term's
        // no-op and later commands are.
        assert_eq!(r.snapshot_now(now), Ok(last));
        let disk = r.storage().clone();
        drop(r);
        let (mut r, now) = leader(disk, Watching::default(), Config::new(id()));
        r.propose(now, vec![1], None, sink(&out));
        r.process(now, &mut Vec::new());
        assert_eq!(out.lock().unwrap()[2], Ok(6));
        let shown: Vec<(LogIndex, char)> =
            r.state_machine().expect("inline").shown.iter().map(|s| (s.0, s.2)).collect();
        assert_eq!(shown, vec![(last.next(), 'n'), (last.next().next(), 'c')]);
    }

    /// Counts the commands it applied in a counter the test's network also sees.
    struct Seen {
        seen: Arc<std::sync::atomic::AtomicU64>,
        applied: LogIndex,
    }

    impl StateMachine for Seen {
        type Output = ();
        fn apply(&mut self, batch: &[Committed<'_>]) -> Vec<()> {
            self.seen.fetch_add(batch.len() as u64, std::sync::atomic::Ordering::SeqCst);
            self.applied = batch.last().map_or(self.applied, |c| c.index);
            vec![(); batch.len()]
        }
        fn snapshot(&self, _: &mut dyn std::io::Write) -> std::io::Result<()> {
            Ok(())
        }
        fn restore(&mut self, applied: LogIndex, _: &mut dyn std::io::Read) -> Result<(), crate::RestoreError> {
            self.applied = applied;
            Ok(())
        }
        fn applied(&self) -> LogIndex {
            self.applied
        }
    }

    /// Records each message sent with the commands its sender's state machine had applied
    /// by then.
    struct Probe {
        seen: Arc<std::sync::atomic::AtomicU64>,
        sent: Vec<(WireMessage, u64)>,
    }

    impl Network for Probe {
        fn send(&mut self, msg: WireMessage) -> bool {
            self.sent.push((msg, self.seen.load(std::sync::atomic::Ordering::SeqCst)));
            true
        }
    }

    #[test]
    fn replication_goes_out_before_the_state_machine_runs() {
        use quorate_core::{AppendResponse, MessageBody};
        let ids = [id(), NodeId::new(2).expect("non-zero")];
        let config = Configuration::with_voters(ids).expect("valid");
        let seen: Vec<_> = ids.iter().map(|_| Arc::new(std::sync::atomic::AtomicU64::new(0))).collect();
        let mut rs: Vec<_> = ids
            .iter()
            .zip(&seen)
            .map(|(i, s)| {
                let sm = Seen { seen: s.clone(), applied: LogIndex::ZERO };
                Replica::new(Config::new(*i), MemStorage::new(config.clone()), sm, Instant::ZERO).expect("starts")
            })
            .collect();
        // Delivers everything sent, turn by turn, until nothing moves; the follower's
        // messages of each turn are returned with what its state machine had applied.
        let mut wire: Vec<WireMessage> = Vec::new();
        let mut now = rs[0].next_deadline().expect("an election timer");
        rs[0].tick(now);
        let turn = |rs: &mut Vec<Replica<Seen, MemStorage>>, wire: &mut Vec<WireMessage>, now: Instant| {
            let mut follower = Vec::new();
            for (i, r) in rs.iter_mut().enumerate() {
                for m in wire.iter().filter(|m| m.to() == ids[i]) {
                    r.receive(now, m.clone());
                }
                let mut probe = Probe { seen: seen[i].clone(), sent: Vec::new() };
                r.process(now, &mut probe);
                if i == 1 {
                    follower.extend(probe.sent.iter().cloned());
                }
                wire.retain(|m| m.to() != ids[i]);
                wire.extend(probe.sent.into_iter().map(|(m, _)| m));
            }
            follower
        };
        for _ in 0..20 {
            turn(&mut rs, &mut wire, now);
            now = Instant(now.0 + 1_000_000);
        }
        assert_eq!(rs[0].status().role, Role::Leader);
        let out: Log<()> = Log::default();
        // A goes out and the follower acknowledges it; B is proposed before the leader hears
        // that, so the follower learns that A committed in the same turn that brings B.
        rs[0].propose(now, vec![1], None, sink(&out));
        turn(&mut rs, &mut wire, now);
        assert!(out.lock().unwrap().is_empty(), "A is not committed yet");
        let before = seen[1].load(std::sync::atomic::Ordering::SeqCst);
        rs[0].propose(now, vec![2], None, sink(&out));
        let mut sent = Vec::new();
        for _ in 0..3 {
            sent.extend(turn(&mut rs, &mut wire, now));
        }
        assert_eq!(out.lock().unwrap().len(), 2, "A and B applied on the leader");
        assert_eq!(seen[1].load(std::sync::atomic::Ordering::SeqCst), before + 2, "A and B applied on the follower");
        let b = rs[1].storage().last_index();
        let acks: Vec<u64> = sent
            .into_iter()
            .filter_map(|(m, seen_then)| match m {
                WireMessage::Raft(m) => match m.body {
                    MessageBody::AppendResponse(AppendResponse::Accepted { match_index }) if match_index == b => {
                        Some(seen_then)
                    }
                    _ => None,
                },
                _ => None,
            })
            .collect();
        // The acknowledgement of B left before the follower applied A (which committed in
        // the same turn): replication does not wait for the state machine.
        assert_eq!(acks.first(), Some(&before), "{acks:?}");
    }

    /// Two replicas, the follower's detached applier, its work held back by the test, the
    /// time, and the count of commands applied on both.
    type DetachedPair =
        (Vec<Replica<Seen, MemStorage>>, Applier<Seen>, Vec<Jobs<Seen>>, Instant, Arc<std::sync::atomic::AtomicU64>);

    /// A leader and a follower whose state machine runs detached.
    fn pair_with_detached_follower(backlog: u64) -> DetachedPair {
        let ids = [id(), NodeId::new(2).expect("non-zero")];
        let config = Configuration::with_voters(ids).expect("valid");
        let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut rs: Vec<_> = ids
            .iter()
            .map(|i| {
                let sm = Seen { seen: seen.clone(), applied: LogIndex::ZERO };
                let mut cfg = Config::new(*i);
                cfg.apply_backlog_bytes_max = backlog;
                Replica::new(cfg, MemStorage::new(config.clone()), sm, Instant::ZERO).expect("starts")
            })
            .collect();
        let applier = rs[1].detach_applier().expect("inline until now");
        assert!(rs[1].detach_applier().is_none(), "detached once");
        assert!(rs[1].state_machine().is_none());
        let now = rs[0].next_deadline().expect("an election timer");
        rs[0].tick(now);
        (rs, applier, Vec::new(), now, seen)
    }

    /// One turn of both: delivers what the other sent, processes, holds the follower's work.
    fn pair_turn(
        rs: &mut [Replica<Seen, MemStorage>],
        wire: &mut Vec<WireMessage>,
        held: &mut Vec<Jobs<Seen>>,
        now: Instant,
    ) {
        for r in rs.iter_mut() {
            let me = r.id();
            for m in wire.iter().filter(|m| m.to() == me) {
                r.receive(now, m.clone());
            }
            wire.retain(|m| m.to() != me);
            let mut out = Vec::new();
            r.process(now, &mut out);
            wire.extend(out);
        }
        let jobs = rs[1].take_jobs();
        if !jobs.is_empty() {
            held.push(jobs);
        }
    }

    #[test]
    fn a_follower_acknowledges_while_its_detached_state_machine_has_not_applied() {
        let (mut rs, mut applier, mut held, mut now, seen) = pair_with_detached_follower(256 << 20);
        let mut wire = Vec::new();
        for _ in 0..20 {
            pair_turn(&mut rs, &mut wire, &mut held, now);
            now = Instant(now.0 + 1_000_000);
        }
        assert_eq!(rs[0].status().role, Role::Leader);
        let out: Log<()> = Log::default();
        for b in 1..=10u8 {
            rs[0].propose(now, vec![b], None, sink(&out));
            pair_turn(&mut rs, &mut wire, &mut held, now);
        }
        for _ in 0..3 {
            pair_turn(&mut rs, &mut wire, &mut held, now);
        }
        // Two voters: nothing commits without the follower's acknowledgements.
        assert_eq!(out.lock().unwrap().len(), 10, "all ten committed and applied on the leader");
        let commit = rs[0].status().commit;
        assert_eq!(rs[1].status().commit, commit, "the follower knows the commit index");
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 10, "the leader's ten, none of the follower's");
        assert_eq!(rs[1].applied(), LogIndex::ZERO, "the follower applied nothing yet");
        assert!(rs[1].state_machine().is_none());
        // Its side runs the held work, in order, and reports.
        for jobs in held.drain(..) {
            let reports = applier.run(jobs);
            rs[1].on_reports(now, reports);
        }
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 20, "the follower applied the ten");
        assert_eq!(rs[1].applied(), commit);
        assert_eq!(applier.applied(), commit);
        // A stale read waits for the work handed out before it; a snapshot on demand is
        // asked with a callback.
        let read = Arc::new(Mutex::new(None));
        let r2 = read.clone();
        rs[1].read(now, ReadLevel::Stale, Box::new(move |sm| *r2.lock().unwrap() = Some(sm.map(|s| s.applied))));
        assert!(read.lock().unwrap().is_none(), "not run here");
        assert_eq!(rs[1].snapshot_now(now), Err(Error::Detached));
        let snap = Arc::new(Mutex::new(None));
        let s2 = snap.clone();
        rs[1].request_snapshot(now, Box::new(move |r| *s2.lock().unwrap() = Some(r)));
        let reports = applier.run(rs[1].take_jobs());
        assert_eq!(*read.lock().unwrap(), Some(Ok(commit)));
        assert_eq!(*snap.lock().unwrap(), Some(Ok(commit)));
        rs[1].on_reports(now, reports);
        assert_eq!(rs[1].storage().snapshot().expect("readable").map(|h| h.meta.last.index), Some(commit));
    }

    #[test]
    fn a_full_apply_backlog_stops_replication_until_the_state_machine_catches_up() {
        // One byte: the first committed entries fill it.
        let (mut rs, mut applier, mut held, mut now, _) = pair_with_detached_follower(1);
        let mut wire = Vec::new();
        for _ in 0..20 {
            pair_turn(&mut rs, &mut wire, &mut held, now);
            now = Instant(now.0 + 1_000_000);
        }
        assert_eq!(rs[0].status().role, Role::Leader);
        assert!(!held.is_empty(), "the new term's entry committed and was handed out");
        let out: Log<()> = Log::default();
        rs[0].propose(now, vec![1], None, sink(&out));
        for _ in 0..10 {
            pair_turn(&mut rs, &mut wire, &mut held, now);
            now = Instant(now.0 + 1_000_000);
        }
        assert!(out.lock().unwrap().is_empty(), "the follower takes nothing more: no acknowledgement, no commit");
        for jobs in held.drain(..) {
            let reports = applier.run(jobs);
            rs[1].on_reports(now, reports);
        }
        for _ in 0..10 {
            pair_turn(&mut rs, &mut wire, &mut held, now);
            now = Instant(now.0 + 1_000_000);
        }
        assert_eq!(out.lock().unwrap().len(), 1, "committed once the backlog drained");
    }

    #[test]
    fn a_turn_queues_at_most_about_apply_bytes_max_of_committed_entries() {
        let mut cfg = Config::new(id());
        cfg.raft.apply_bytes_max = 1_000;
        let (mut r, now) = leader(storage(), Sum::default(), cfg.clone());
        let out: Log<u64> = Log::default();
        for _ in 0..100 {
            r.propose(now, vec![1; 100], None, sink(&out));
        }
        r.process(now, &mut Vec::new());
        assert_eq!(out.lock().unwrap().len(), 100);
        // A restart with the whole log committed and nothing applied (no snapshot): the
        // tail (about 12 KB) is applied in rounds, each stopping once the bound is reached:
        // below it, plus one `Ready` of at most the bound (and one entry).
        let disk = r.storage().clone();
        drop(r);
        let (r, _) = leader(disk, Sum::default(), cfg);
        assert_eq!(r.state_machine().expect("inline").total, 100 * 100);
        assert!(r.peak_queued_bytes > 0 && r.peak_queued_bytes < 2 * 1_000 + 124, "{}", r.peak_queued_bytes);
    }

    #[test]
    fn a_state_machine_ahead_of_an_empty_storage_is_refused() {
        let sm = Sum { applied: LogIndex(5), ..Sum::default() };
        let e = Replica::new(Config::new(id()), storage(), sm, Instant::ZERO).map(|_| ()).unwrap_err();
        assert!(matches!(e, Error::Start(_)), "{e}");
    }

    /// What a durable [`DSum`] keeps across a crash: the state, applied index and runtime
    /// records of its last commit, and the marker of a restore not yet committed.
    #[derive(Clone, Debug, Default)]
    struct SumDisk {
        total: u64,
        applied: LogIndex,
        records: BTreeMap<u64, Vec<u8>>,
        restoring: Option<LogIndex>,
    }

    /// A durable [`Sum`]: works in memory, commits to a shared "disk"; counts the commands it
    /// applies (to see what is applied again after a restart).
    #[derive(Debug)]
    struct DSum {
        total: u64,
        applied: LogIndex,
        disk: Arc<Mutex<SumDisk>>,
        applied_commands: u64,
        fail_commit: bool,
        /// Apply calls fail (`failure()`) from now on.
        fail_apply: bool,
        /// `commit_due()` once this many commands were applied since the last commit.
        commit_every: Option<u64>,
        since_commit: u64,
        /// Commits made, and the most commands one carried.
        commits: u64,
        commit_commands_max: u64,
    }

    impl DSum {
        fn open(disk: &Arc<Mutex<SumDisk>>) -> DSum {
            let d = disk.lock().unwrap();
            DSum {
                total: d.total,
                applied: d.applied,
                disk: disk.clone(),
                applied_commands: 0,
                fail_commit: false,
                fail_apply: false,
                commit_every: None,
                since_commit: 0,
                commits: 0,
                commit_commands_max: 0,
            }
        }
    }

    impl StateMachine for DSum {
        type Output = u64;
        const DURABLE: bool = true;
        const APPLY_COMMANDS_MAX: usize = 2;
        fn apply(&mut self, batch: &[Committed<'_>]) -> Vec<u64> {
            assert!(batch.len() <= Self::APPLY_COMMANDS_MAX, "a batch of {}", batch.len());
            batch
                .iter()
                .map(|c| {
                    self.total += c.command.iter().map(|b| u64::from(*b)).sum::<u64>();
                    self.applied = c.index;
                    self.applied_commands += 1;
                    self.since_commit += 1;
                    self.total
                })
                .collect()
        }
        fn failure(&self) -> Option<String> {
            self.fail_apply.then(|| "the disk cannot be read".to_string())
        }
        fn commit_due(&self) -> bool {
            self.commit_every.is_some_and(|n| self.since_commit >= n)
        }
        fn snapshot(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
            out.write_all(&self.total.to_le_bytes())
        }
        fn restore(&mut self, applied: LogIndex, s: &mut dyn std::io::Read) -> Result<(), crate::RestoreError> {
            let mut b = [0u8; 8];
            s.read_exact(&mut b)?;
            self.disk.lock().unwrap().restoring = Some(applied);
            (self.total, self.applied) = (u64::from_le_bytes(b), applied);
            Ok(())
        }
        fn applied(&self) -> LogIndex {
            self.applied
        }
        fn commit(&mut self, applied: LogIndex, runtime: &RuntimeWrites) -> std::io::Result<()> {
            if self.fail_commit {
                return Err(std::io::Error::other("the disk is full"));
            }
            let mut d = self.disk.lock().unwrap();
            (d.total, d.applied, d.restoring) = (self.total, applied, None);
            runtime.apply_to(&mut d.records);
            self.applied = applied;
            self.commits += 1;
            self.commit_commands_max = self.commit_commands_max.max(self.since_commit);
            self.since_commit = 0;
            Ok(())
        }
        fn runtime_records(&self) -> Result<Vec<(u64, Vec<u8>)>, crate::RestoreError> {
            Ok(self.disk.lock().unwrap().records.iter().map(|(k, v)| (*k, v.clone())).collect())
        }
        fn interrupted_restore(&self) -> Option<LogIndex> {
            self.disk.lock().unwrap().restoring
        }
    }

    #[test]
    fn a_durable_state_machine_keeps_its_state_and_sessions_across_a_restart() {
        let disk = Arc::new(Mutex::new(SumDisk::default()));
        let (mut r, now) = leader(storage(), DSum::open(&disk), Config::new(id()));
        let sessions: Log<ClientId> = Log::default();
        r.open_session(now, sink(&sessions));
        r.process(now, &mut Vec::new());
        let client = sessions.lock().unwrap().pop().expect("answered").expect("opened");
        let out: Log<u64> = Log::default();
        r.propose(now, vec![7], Some((client, 1)), sink(&out));
        r.process(now, &mut Vec::new());
        assert_eq!(r.snapshot_now(now), Ok(r.applied()));
        // After the snapshot: in the state machine's own state (and the log) only.
        r.propose(now, vec![3], Some((client, 2)), sink(&out));
        r.propose(now, vec![1], None, sink(&out));
        r.process(now, &mut Vec::new());
        assert_eq!(*out.lock().unwrap(), vec![Ok(7), Ok(10), Ok(11)]);
        let committed = disk.lock().unwrap().clone();
        assert_eq!((committed.total, committed.applied), (11, r.applied()), "every turn is committed");
        assert_eq!(committed.records.len(), 1, "the session's record");
        let store = r.storage().clone();
        drop(r);
        // The restart takes the state machine's own state: nothing is restored from the
        // snapshot (which holds 7), nothing is applied again.
        let (mut r, now) = leader(store, DSum::open(&disk), Config::new(id()));
        assert_eq!(
            (r.state_machine().expect("inline").total, r.state_machine().expect("inline").applied_commands),
            (11, 0)
        );
        // The session table came back from the records: the retry of seq 2 (after the
        // snapshot) is answered from the cache, not applied again.
        r.propose(now, vec![3], Some((client, 2)), sink(&out));
        r.propose(now, vec![1], Some((client, 3)), sink(&out));
        r.process(now, &mut Vec::new());
        assert_eq!(out.lock().unwrap()[3..], [Ok(10), Ok(12)]);
        assert_eq!(
            (r.state_machine().expect("inline").total, r.state_machine().expect("inline").applied_commands),
            (12, 1)
        );
    }

    #[test]
    fn a_crash_before_the_commit_applies_the_uncommitted_entries_again_once() {
        let disk = Arc::new(Mutex::new(SumDisk::default()));
        let (mut r, now) = leader(storage(), DSum::open(&disk), Config::new(id()));
        let out: Log<u64> = Log::default();
        r.propose(now, vec![5], None, sink(&out));
        r.process(now, &mut Vec::new());
        let before = disk.lock().unwrap().clone();
        assert_eq!(before.total, 5);
        // The commit of the next turn fails (the process dies there): the disk keeps 5.
        r.sm_mut().fail_commit = true;
        r.propose(now, vec![2], None, sink(&out));
        r.propose(now, vec![3], None, sink(&out));
        r.process(now, &mut Vec::new());
        assert!(r.halted().is_some_and(|h| h.contains("the disk is full")), "{:?}", r.halted());
        assert_eq!(disk.lock().unwrap().applied, before.applied, "nothing of the turn is durable");
        let store = r.storage().clone();
        drop(r);
        let (r, _) = leader(store, DSum::open(&disk), Config::new(id()));
        assert_eq!(r.state_machine().expect("inline").total, 10, "neither skipped nor applied twice");
        assert_eq!(
            r.state_machine().expect("inline").applied_commands,
            2,
            "exactly the two uncommitted commands again"
        );
        assert_eq!(disk.lock().unwrap().total, 10);
    }

    #[test]
    fn a_durable_state_machine_behind_the_snapshot_or_interrupted_is_restored_from_it() {
        let disk = Arc::new(Mutex::new(SumDisk::default()));
        let (mut r, now) = leader(storage(), DSum::open(&disk), Config::new(id()));
        for b in [4u8, 6] {
            r.propose(now, vec![b], None, Box::new(|_| {}));
        }
        r.process(now, &mut Vec::new());
        let at = r.snapshot_now(now).expect("a snapshot");
        let store = r.storage().clone();
        drop(r);
        // Behind the stored snapshot (a crash between the storage's install and the state
        // machine's restore): restored from it, and committed.
        let behind = Arc::new(Mutex::new(SumDisk::default()));
        let r = Replica::new(Config::new(id()), store.clone(), DSum::open(&behind), Instant::ZERO).expect("starts");
        assert_eq!(
            (r.state_machine().expect("inline").total, r.state_machine().expect("inline").applied_commands),
            (10, 0)
        );
        assert_eq!(behind.lock().unwrap().applied, at);
        // An interrupted restore (the marker is there, the state is garbage): restored again.
        let torn =
            Arc::new(Mutex::new(SumDisk { total: 999, applied: at, records: BTreeMap::new(), restoring: Some(at) }));
        let r = Replica::new(Config::new(id()), store, DSum::open(&torn), Instant::ZERO).expect("starts");
        assert_eq!(r.state_machine().expect("inline").total, 10);
        assert_eq!(torn.lock().unwrap().restoring, None, "the restore was committed");
        // Without a snapshot to restore from, an interrupted restore cannot start.
        let e = Replica::new(Config::new(id()), storage(), DSum::open(&torn_again(at)), Instant::ZERO)
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(e, Error::Start(_)), "{e}");
    }

    fn torn_again(at: LogIndex) -> Arc<Mutex<SumDisk>> {
        Arc::new(Mutex::new(SumDisk { total: 1, applied: at, records: BTreeMap::new(), restoring: Some(at) }))
    }

    #[test]
    fn a_durable_state_machine_ahead_of_the_log_is_refused() {
        let disk = Arc::new(Mutex::new(SumDisk { applied: LogIndex(5), ..SumDisk::default() }));
        let e = Replica::new(Config::new(id()), storage(), DSum::open(&disk), Instant::ZERO).map(|_| ()).unwrap_err();
        assert!(matches!(e, Error::Start(ref m) if m.contains("beyond the log")), "{e}");
    }

    #[test]
    fn a_durable_state_machine_is_committed_when_due_within_a_turn() {
        let disk = Arc::new(Mutex::new(SumDisk::default()));
        let mut sm = DSum::open(&disk);
        sm.commit_every = Some(2);
        let (mut r, now) = leader(storage(), sm, Config::new(id()));
        let commits_before = r.state_machine().expect("inline").commits;
        let out: Log<u64> = Log::default();
        for b in 1..=7u8 {
            r.propose(now, vec![b], None, sink(&out));
        }
        r.process(now, &mut Vec::new());
        assert_eq!(out.lock().unwrap().len(), 7, "every command answered");
        let sm = r.state_machine().expect("inline");
        // Apply calls of at most 2 commands, a commit after every 2: 3 within the turn and
        // the turn's own for the last one.
        assert_eq!(sm.commits - commits_before, 4);
        assert_eq!(sm.commit_commands_max, 2, "no commit carries more than it asked for");
        let d = disk.lock().unwrap().clone();
        assert_eq!((d.total, d.applied), (28, r.applied()));
    }

    /// A durable state machine's commit is written before its proposers hear (a host that
    /// learns from the commit — the node's lease clock — knows before the client does), and a
    /// commit that fails leaves the outcome unknown.
    #[test]
    fn proposers_hear_only_once_the_durable_state_machine_committed() {
        let disk = Arc::new(Mutex::new(SumDisk::default()));
        let (mut r, now) = leader(storage(), DSum::open(&disk), Config::new(id()));
        let seen: Log<u64> = Log::default();
        let (d, log) = (disk.clone(), seen.clone());
        // The answer carries the total the disk held when it came.
        let on_disk: ProposeCallback<u64> = Box::new(move |res| {
            let total = d.lock().unwrap().total;
            log.lock().unwrap().push(res.map(|_| total));
        });
        r.propose(now, vec![5], None, on_disk);
        r.process(now, &mut Vec::new());
        assert_eq!(*seen.lock().unwrap(), vec![Ok(5)], "committed before answered");
        r.sm_mut().fail_commit = true;
        let out: Log<u64> = Log::default();
        r.propose(now, vec![2], None, sink(&out));
        r.process(now, &mut Vec::new());
        assert!(r.halted().is_some());
        assert_eq!(*out.lock().unwrap(), vec![Err(Error::OutcomeUnknown)], "applied, not written: unknown");
    }

    #[test]
    fn a_state_machine_failure_halts_before_its_outputs_are_answered() {
        let disk = Arc::new(Mutex::new(SumDisk::default()));
        let (mut r, now) = leader(storage(), DSum::open(&disk), Config::new(id()));
        let out: Log<u64> = Log::default();
        r.propose(now, vec![5], None, sink(&out));
        r.process(now, &mut Vec::new());
        let before = disk.lock().unwrap().clone();
        r.sm_mut().fail_apply = true;
        r.propose(now, vec![2], None, sink(&out));
        r.process(now, &mut Vec::new());
        assert!(r.halted().is_some_and(|h| h.contains("the disk cannot be read")), "{:?}", r.halted());
        let answers = out.lock().unwrap();
        assert_eq!(answers[0], Ok(5));
        // Committed, so its outcome is unknown to the proposer: never the output of the failed call.
        assert_eq!(answers[1], Err(Error::OutcomeUnknown), "the output of the failed call is not answered");
        assert_eq!(disk.lock().unwrap().applied, before.applied, "nothing of the failed call is committed");
    }
}
