//! [`Replica`]: the runtime's deterministic heart — one core, its storage and the state
//! machine, stepped synchronously. [`crate::Node`] runs one in a tokio task; the simulator
//! steps several by hand. Either way the same code orders persisting, sending, applying and
//! serving reads.

mod transfer;

use crate::error::Error;
use crate::network::{Network, WireMessage};
use crate::sessions::{ClientId, Command, SessionCheck, Sessions, SnapshotImage};
use crate::state_machine::{Committed, StateMachine};
use crate::storage::LogStorage;
use crate::storage::SnapshotHeader;
use quorate_core::{ConfChange, Instant, Raft, ReadId, Role};
use quorate_log::{Configuration, Data, Entry, EntryId, EntryPayload, LogIndex, NodeId, SnapshotMeta, Term};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use transfer::{Outgoing, TokenBucket};
pub use transfer::{SNAPSHOT_CHUNK_BYTES_MAX, TransferStats};

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
    /// Most snapshot bytes a leader sends to one follower beyond what it acknowledged.
    pub snapshot_window_bytes: u64,
    /// Snapshot bytes a second this replica sends in chunks, over all followers (`None`: no
    /// limit). A token bucket of one chunk's burst, driven by the passed-in clock.
    pub snapshot_rate_bytes_per_sec: Option<u64>,
    /// Largest snapshot this replica stages from a leader; a larger one is refused. The
    /// staging is on disk, but installing it holds the image in memory two to three times
    /// (the bytes, the decoded image, the state machine's restored state): plan for a peak
    /// of 2–3× this.
    pub snapshot_staging_bytes_max: u64,
    /// Chunks not acknowledged within this time are sent again from the acknowledged offset
    /// (and an opening chunk without an answer is sent again). A transfer without any
    /// progress for `raft.snapshot_send_timeout` is given up.
    pub snapshot_chunk_timeout: Duration,
}

impl Config {
    /// Defaults for node `id`: the core's defaults, 4,096 sessions, 4,096 pending proposals,
    /// 4,096 pending reads; snapshots in chunks of 512 KiB, a window of 4 MiB, no rate limit,
    /// staging up to 1 GiB, chunks sent again after 2 s without an acknowledgement.
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
            snapshot_staging_bytes_max: 1 << 30,
            snapshot_chunk_timeout: Duration::from_secs(2),
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
/// over the core's `Ready`: writes the batch durably, applies committed entries, installs a
/// snapshot's state, reports the batch persisted, sends messages, serves confirmed reads once
/// applied, takes and sends snapshots.
pub struct Replica<SM: StateMachine, L: LogStorage> {
    cfg: Config,
    raft: Raft<L>,
    sm: SM,
    sessions: Sessions,
    applied: LogIndex,
    applied_term: Term,
    applied_config: Configuration,
    proposals: BTreeMap<LogIndex, (Term, Waiter<SM::Output>)>,
    reads: BTreeMap<ReadId, ReadCallback<SM>>,
    ready_reads: BTreeMap<(LogIndex, ReadId), ReadCallback<SM>>,
    next_read: u64,
    /// A received snapshot the core accepted, installed with the next batch.
    staged: Option<(SnapshotMeta, Data)>,
    /// The storage's staging (header, durable length), mirrored.
    staging: Option<(SnapshotHeader, u64)>,
    /// Transfers this leader runs, one per follower.
    outgoing: BTreeMap<NodeId, Outgoing>,
    /// The stored snapshot being sent, read once.
    send_cache: Option<(SnapshotHeader, Data)>,
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
}

impl<SM: StateMachine, L: LogStorage> std::fmt::Debug for Replica<SM, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").field("status", &self.status()).finish_non_exhaustive()
    }
}

impl<SM: StateMachine, L: LogStorage> Replica<SM, L> {
    /// Starts a replica from what `storage` holds: the latest snapshot (if any) is restored
    /// into `sm` — which replaces its state — and the log after it is applied again as it
    /// commits. With no snapshot `sm` must be new (`applied() == 0`).
    pub fn new(cfg: Config, storage: L, mut sm: SM, now: Instant) -> Result<Self, Error> {
        let mut sessions = Sessions::default();
        let snapshot = storage.snapshot()?;
        let (applied, applied_term, applied_config) = match &snapshot {
            Some((meta, data)) => {
                let image = SnapshotImage::decode(data)
                    .ok_or_else(|| Error::Start(format!("stored snapshot at {} is unreadable", meta.last.index)))?;
                sm.restore(meta.last.index, &image.state).map_err(|e| Error::Start(e.to_string()))?;
                sessions = image.sessions;
                (meta.last.index, meta.last.term, meta.config.clone())
            }
            None => {
                if sm.applied() != LogIndex::ZERO {
                    return Err(Error::Start(format!(
                        "the state machine has applied {} but storage holds no snapshot",
                        sm.applied()
                    )));
                }
                (LogIndex::ZERO, Term::ZERO, storage.snapshot_meta()?.config)
            }
        };
        let mut raft_cfg = cfg.raft.clone();
        raft_cfg.applied = applied;
        raft_cfg.snapshot = snapshot.map(|(m, _)| m);
        let staging = storage.staging()?;
        let burst = cfg.snapshot_chunk_bytes.clamp(1, SNAPSHOT_CHUNK_BYTES_MAX) as u64;
        let bucket = cfg.snapshot_rate_bytes_per_sec.map(|rate| TokenBucket::new(rate, burst, now));
        let raft = Raft::new(raft_cfg, storage, now).map_err(|e| match e {
            quorate_core::CoreError::Storage(s) => Error::Storage(s),
            other => Error::Start(other.to_string()),
        })?;
        Ok(Replica {
            cfg,
            raft,
            sm,
            sessions,
            applied,
            applied_term,
            applied_config,
            proposals: BTreeMap::new(),
            reads: BTreeMap::new(),
            ready_reads: BTreeMap::new(),
            next_read: 1,
            staged: None,
            staging,
            outgoing: BTreeMap::new(),
            send_cache: None,
            bucket,
            pump_cursor: None,
            refused_until: BTreeMap::new(),
            outbox: Vec::new(),
            transfer_stats: TransferStats::default(),
            halted: None,
        })
    }

    /// This node's id.
    #[must_use]
    pub fn id(&self) -> NodeId {
        self.raft.id()
    }

    /// The state machine (as applied so far).
    #[must_use]
    pub fn state_machine(&self) -> &SM {
        &self.sm
    }

    /// The storage.
    #[must_use]
    pub fn storage(&self) -> &L {
        self.raft.storage()
    }

    /// The consensus core (read-only).
    #[must_use]
    pub fn core(&self) -> &Raft<L> {
        &self.raft
    }

    /// The index applied to the state machine.
    #[must_use]
    pub fn applied(&self) -> LogIndex {
        self.applied
    }

    /// The current status.
    #[must_use]
    pub fn status(&self) -> Status {
        Status {
            id: self.raft.id(),
            role: self.raft.role(),
            term: self.raft.term(),
            leader: self.raft.leader(),
            commit: self.raft.commit_index(),
            applied: self.applied,
            config: self.raft.configuration().clone(),
            snapshot_index: self.raft.storage().snapshot_last().index,
            halted: self.halted().map(str::to_owned),
        }
    }

    /// Why the replica halted, if it did.
    #[must_use]
    pub fn halted(&self) -> Option<&str> {
        self.halted.as_deref().or(self.raft.halted())
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
        match (self.raft.poll_timeout(), self.transfer_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Advances the core's timers to `now`.
    pub fn tick(&mut self, now: Instant) {
        if self.raft.poll_timeout().is_some_and(|d| d <= now) {
            self.raft.handle_timeout(now);
        }
    }

    /// Hands over a message from a peer. A snapshot chunk is checked and staged (the answer
    /// goes out in the next [`Replica::process`]); a complete snapshot is checked (it must
    /// decode) and offered to the core; anything malformed is dropped.
    pub fn receive(&mut self, now: Instant, msg: WireMessage) {
        if self.halted.is_some() {
            return;
        }
        match msg {
            WireMessage::Raft(m) => self.raft.handle_message(now, m),
            WireMessage::SnapshotChunk(c) => self.on_chunk(now, c),
            WireMessage::SnapshotAck(a) => self.on_ack(now, a),
            WireMessage::Snapshot { from, to, term, meta, data } => {
                if to != self.id()
                    || data.len() as u64 > self.cfg.snapshot_staging_bytes_max
                    || SnapshotImage::decode(&data).is_none()
                {
                    return;
                }
                if let Ok(true) = self.raft.install_snapshot(now, from, term, meta.clone()) {
                    self.staged = Some((meta, data));
                }
            }
        }
    }

    fn refusal(&self) -> Option<Error> {
        self.halted().map(|h| Error::Halted(h.to_owned()))
    }

    fn admit(&mut self) -> Result<(), Error> {
        if let Some(e) = self.refusal() {
            return Err(e);
        }
        if self.proposals.len() >= self.cfg.proposals_pending_max {
            return Err(Error::Busy { what: "proposals", limit: self.cfg.proposals_pending_max });
        }
        Ok(())
    }

    fn append(&mut self, now: Instant, command: &Command, waiter: Waiter<SM::Output>) {
        if let Err(e) = self.admit() {
            return waiter.fail(e);
        }
        match self.raft.propose(now, Data::from(command.encode())) {
            Ok(id) => self.track(id, waiter),
            Err(quorate_core::ProposeError::NotLeader { leader_hint }) => waiter.fail(Error::NotLeader { leader_hint }),
            Err(e) => waiter.fail(Error::Propose(e)),
        }
    }

    fn track(&mut self, id: EntryId, waiter: Waiter<SM::Output>) {
        // A waiter still at this index belongs to an entry this leader's log no longer holds
        // (it was truncated): that entry was never committed, or the leader would hold it.
        if let Some((_, old)) = self.proposals.insert(id.index, (id.term, waiter)) {
            old.fail(Error::Dropped);
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
        let command = match session {
            Some((client, seq)) => Command::Session { client, seq, command },
            None => Command::Plain(command),
        };
        self.append(now, &command, Waiter::Command(done));
    }

    /// Opens an exactly-once session; `done` receives its id once the opening commits.
    pub fn open_session(&mut self, now: Instant, done: ProposeCallback<ClientId>) {
        self.append(now, &Command::OpenSession, Waiter::Session(done));
    }

    /// Proposes a membership change; `done` is called once it is applied here.
    pub fn change_membership(&mut self, now: Instant, change: ConfChange, done: ProposeCallback<()>) {
        if let Err(e) = self.admit() {
            return done(Err(e));
        }
        match self.raft.propose_conf_change(now, change) {
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
        Ok(self.raft.transfer_leadership(now, to)?)
    }

    /// Reads at `level`: `read` runs over the state machine once the level allows (at once
    /// for [`ReadLevel::Stale`]), or receives the error.
    pub fn read(&mut self, now: Instant, level: ReadLevel, read: ReadCallback<SM>) {
        if let Some(e) = self.refusal() {
            return read(Err(e));
        }
        let core_level = match level {
            ReadLevel::Stale => return read(Ok(&self.sm)),
            ReadLevel::Linearizable => quorate_core::ReadLevel::Linearizable,
            ReadLevel::Lease => quorate_core::ReadLevel::Lease,
        };
        if self.reads.len() + self.ready_reads.len() >= self.cfg.reads_pending_max {
            return read(Err(Error::Busy { what: "reads", limit: self.cfg.reads_pending_max }));
        }
        let id = ReadId(self.next_read);
        self.next_read += 1;
        match self.raft.read(now, id, core_level) {
            Ok(()) => {
                self.reads.insert(id, read);
            }
            Err(e) => read(Err(Error::Read(e))),
        }
    }

    /// Takes a snapshot of the applied state now (if anything was applied since the last)
    /// and lets the core compact the log behind it. Returns the index it covers.
    pub fn snapshot_now(&mut self, now: Instant) -> Result<LogIndex, Error> {
        if let Some(e) = self.refusal() {
            return Err(e);
        }
        let current = self.raft.storage().snapshot()?.map_or(LogIndex::ZERO, |(m, _)| m.last.index);
        if self.applied <= current {
            return Ok(current);
        }
        let meta =
            SnapshotMeta { last: EntryId::new(self.applied_term, self.applied), config: self.applied_config.clone() };
        self.take_snapshot(now, meta)?;
        Ok(self.applied)
    }

    /// Fails every waiting request (a proposal with [`Error::OutcomeUnknown`], a read with
    /// [`Error::Shutdown`]) and returns the state machine. Storage is dropped (closed).
    pub fn shutdown(mut self) -> SM {
        self.fail_all(&Error::Shutdown);
        self.sm
    }

    fn fail_all(&mut self, e: &Error) {
        for (_, (_, w)) in std::mem::take(&mut self.proposals) {
            w.fail(if matches!(e, Error::Shutdown | Error::Halted(_)) { Error::OutcomeUnknown } else { e.clone() });
        }
        for (_, r) in std::mem::take(&mut self.reads) {
            r(Err(e.clone()));
        }
        for (_, r) in std::mem::take(&mut self.ready_reads) {
            r(Err(e.clone()));
        }
    }

    fn halt(&mut self, reason: String) {
        if self.halted.is_none() {
            self.halted = Some(reason.clone());
            self.fail_all(&Error::Halted(reason));
        }
    }

    /// Does everything the core asks for, until it asks for nothing more (see the type's docs
    /// for the order), then sends what the snapshot transfers may send now and the answers to
    /// snapshot chunks received.
    pub fn process(&mut self, now: Instant, net: &mut impl Network) {
        while self.halted.is_none() && self.raft.has_ready() {
            let ready = self.raft.ready();
            if ready.is_empty() {
                break;
            }
            // 1. Write the batch; durable once `persist` returns.
            let mut install = None;
            if let Some(batch) = &ready.persist {
                let data = match &batch.install {
                    Some(meta) => match self.staged.take() {
                        Some((m, d)) if m == *meta => Some(d),
                        _ => return self.halt(format!("snapshot install at {} without staged data", meta.last.index)),
                    },
                    None => None,
                };
                if let Err(e) = self.raft.storage_mut().persist(batch, data.as_ref()) {
                    return self.halt(format!("storage: {e}"));
                }
                install = batch.install.clone().zip(data);
            }
            // 2. Apply what was committed before this batch's install (if any).
            self.apply(&ready.committed);
            // 3. The install replaces the state machine's state; only then is the batch
            //    reported, after which the core hands out entries above the snapshot.
            if let Some((meta, data)) = install {
                self.restore(&meta, &data);
            }
            if let Some(batch) = &ready.persist {
                self.raft.persisted(now, batch.io);
            }
            // 4. Messages: each was held by the core until what it depends on was durable.
            for m in ready.messages {
                net.send(WireMessage::Raft(m));
            }
            // 5. Reads: confirmed ones wait until applied ≥ their index.
            for r in ready.reads {
                if let Some(f) = self.reads.remove(&r.id) {
                    self.ready_reads.insert((r.index, r.id), f);
                }
            }
            for r in ready.failed_reads {
                if let Some(f) = self.reads.remove(&r.id) {
                    f(Err(Error::Read(r.error)));
                }
            }
            self.serve_reads();
            // 6. Snapshots.
            if let Some(meta) = ready.take_snapshot {
                if meta.last.index == self.applied {
                    if self.take_snapshot(now, meta).is_err() {
                        self.raft.snapshot_skipped(now);
                    }
                } else {
                    self.raft.snapshot_skipped(now);
                }
            }
            for s in ready.send_snapshots {
                self.start_transfer(now, s);
            }
        }
        if self.halted.is_none() {
            self.pump_transfers(now, net);
            self.finish_turn(net);
        }
    }

    fn take_snapshot(&mut self, now: Instant, meta: SnapshotMeta) -> Result<(), Error> {
        let image = SnapshotImage { sessions: self.sessions.clone(), state: self.sm.snapshot() };
        let data = Data::from(image.encode());
        self.raft.storage_mut().save_snapshot(&meta, &data)?;
        // The image kept for sending is superseded (transfers hold their own).
        self.send_cache = None;
        self.raft.snapshot_taken(now, meta);
        Ok(())
    }

    fn restore(&mut self, meta: &SnapshotMeta, data: &Data) {
        let Some(image) = SnapshotImage::decode(data) else {
            return self.halt(format!("snapshot at {} does not decode", meta.last.index));
        };
        if let Err(e) = self.sm.restore(meta.last.index, &image.state) {
            return self.halt(e.to_string());
        }
        self.sessions = image.sessions;
        self.applied = meta.last.index;
        self.applied_term = meta.last.term;
        self.applied_config = meta.config.clone();
        // Proposals the snapshot covers: this node cannot tell whether they were applied.
        let rest = self.proposals.split_off(&self.applied.next());
        for (_, (_, w)) in std::mem::replace(&mut self.proposals, rest) {
            w.fail(Error::OutcomeUnknown);
        }
        self.serve_reads();
    }

    fn serve_reads(&mut self) {
        while let Some(entry) = self.ready_reads.first_entry() {
            if entry.key().0 > self.applied {
                break;
            }
            let f = entry.remove();
            f(Ok(&self.sm));
        }
    }

    fn resolve(&mut self, index: LogIndex, term: Term, outcome: Applied<SM::Output>) {
        if let Some((t, w)) = self.proposals.remove(&index) {
            if t == term { w.complete(outcome) } else { w.fail(Error::Dropped) }
        }
    }

    fn apply(&mut self, entries: &[Entry]) {
        let mut batch: Vec<Pending> = Vec::new();
        let mut touched: BTreeSet<ClientId> = BTreeSet::new();
        let mut last: Option<EntryId> = None;
        for e in entries {
            if self.halted.is_some() {
                return;
            }
            if e.index <= self.applied {
                continue;
            }
            match &e.payload {
                EntryPayload::Command(data) => match Command::decode(data) {
                    Some(Command::Plain(command)) => {
                        batch.push(Pending { index: e.index, term: e.term, command, session: None });
                    }
                    Some(Command::Session { client, seq, command }) => {
                        if touched.contains(&client) {
                            self.flush(&mut batch, &mut touched);
                        }
                        match self.sessions.check(client, seq) {
                            SessionCheck::Apply => {
                                touched.insert(client);
                                batch.push(Pending {
                                    index: e.index,
                                    term: e.term,
                                    command,
                                    session: Some((client, seq)),
                                });
                            }
                            SessionCheck::Cached(out) => {
                                let outcome = match postcard::from_bytes(&out) {
                                    Ok(o) => Applied::Output(o),
                                    Err(_) => Applied::Failed(Error::Undecodable),
                                };
                                self.resolve(e.index, e.term, outcome);
                            }
                            SessionCheck::Stale => self.resolve(e.index, e.term, Applied::Failed(Error::StaleSequence)),
                            SessionCheck::Expired => {
                                self.resolve(e.index, e.term, Applied::Failed(Error::SessionExpired));
                            }
                        }
                    }
                    Some(Command::OpenSession) => {
                        self.flush(&mut batch, &mut touched);
                        let id = self.sessions.open(e.index, self.cfg.sessions_max);
                        self.resolve(e.index, e.term, Applied::Session(id));
                    }
                    None => self.resolve(e.index, e.term, Applied::Failed(Error::Undecodable)),
                },
                EntryPayload::Config(c) => {
                    self.applied_config = c.clone();
                    self.resolve(e.index, e.term, Applied::Other);
                }
                // A no-op, or a payload of a later version: nothing for the state machine.
                _ => self.resolve(e.index, e.term, Applied::Other),
            }
            last = Some(e.id());
        }
        self.flush(&mut batch, &mut touched);
        if let Some(last) = last
            && self.halted.is_none()
        {
            self.applied = last.index;
            self.applied_term = last.term;
        }
        self.serve_reads();
    }

    /// Applies the batch of commands collected so far; `applied` moves to its last entry.
    fn flush(&mut self, batch: &mut Vec<Pending>, touched: &mut BTreeSet<ClientId>) {
        touched.clear();
        if batch.is_empty() || self.halted.is_some() {
            batch.clear();
            return;
        }
        let items = std::mem::take(batch);
        let committed: Vec<Committed<'_>> =
            items.iter().map(|p| Committed { index: p.index, command: &p.command }).collect();
        let outputs = self.sm.apply(&committed);
        if outputs.len() != items.len() {
            return self.halt(format!(
                "the state machine returned {} outputs for {} commands",
                outputs.len(),
                items.len()
            ));
        }
        for (p, out) in items.into_iter().zip(outputs) {
            if let Some((client, seq)) = p.session {
                let encoded = postcard::to_allocvec(&out).unwrap_or_default();
                self.sessions.record(client, seq, p.index, encoded);
            }
            self.applied = p.index;
            self.applied_term = p.term;
            self.resolve(p.index, p.term, Applied::Output(out));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;
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
        fn snapshot(&self) -> Vec<u8> {
            self.total.to_le_bytes().to_vec()
        }
        fn restore(&mut self, applied: LogIndex, s: &[u8]) -> Result<(), crate::RestoreError> {
            let b: [u8; 8] = s.try_into().map_err(|_| crate::RestoreError("8 bytes".into()))?;
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
    fn leader(storage: MemStorage, sm: Sum, cfg: Config) -> (Replica<Sum, MemStorage>, Instant) {
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
        assert_eq!(r.state_machine().total, 7);
        r.propose(now, vec![7], Some((client, 1)), sink(&out));
        r.propose(now, vec![1], Some((client, 2)), sink(&out));
        r.propose(now, vec![1], Some((client, 1)), sink(&out));
        r.propose(now, vec![1], Some((ClientId(999), 1)), sink(&out));
        r.process(now, &mut Vec::new());
        let got = out.lock().unwrap().clone();
        assert_eq!(got, vec![Ok(7), Ok(7), Ok(8), Err(Error::StaleSequence), Err(Error::SessionExpired)]);
        assert_eq!(r.state_machine().total, 8, "the retry was not applied again");
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
        r.append(now, &Command::Plain(vec![]), Waiter::Command(sink(&out)));
        r.process(now, &mut Vec::new());
        assert_eq!(*out.lock().unwrap(), vec![Ok(0)]);
    }

    #[test]
    fn a_state_machine_ahead_of_an_empty_storage_is_refused() {
        let sm = Sum { applied: LogIndex(5), ..Sum::default() };
        let e = Replica::new(Config::new(id()), storage(), sm, Instant::ZERO).map(|_| ()).unwrap_err();
        assert!(matches!(e, Error::Start(_)), "{e}");
    }
}
