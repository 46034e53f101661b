//! The consensus state machine.

use crate::config::Config;
use crate::log::RaftLog;
use crate::message::{
    Append, AppendResponse, Heartbeat, HeartbeatResponse, Message, MessageBody, ReadIndexRequest, ReadIndexResponse,
    RequestVote, VoteResponse,
};
use crate::progress::{PeerProgress, Progress, ProgressState};
use crate::rng::SplitMix64;
use crate::types::{
    CoreError, Instant, IoId, ProposeError, ReadError, ReadFailed, ReadId, ReadLevel, ReadReady, Role, TransferError,
};
use quorate_log::{
    Configuration, Data, ENTRY_OVERHEAD_BYTES, Entry, EntryId, EntryPayload, HardState, LogIndex, LogStorage, NodeId,
    StorageError, Term,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// Heartbeat rounds whose send time is remembered, for lease accounting.
const HEARTBEAT_ROUNDS_REMEMBERED: usize = 64;

/// What the application must do next, produced by [`Raft::ready`].
///
/// Handle it in this order: start persisting `persist` (and report it with
/// [`Raft::persisted`] once it is on stable storage — it may proceed in parallel with the
/// rest), send `messages`, apply `committed` in order, serve `reads` once applied ≥ their
/// index, and fail `failed_reads`. Every message here may be sent at once: messages that
/// promise persisted state are held back by the core until that state is reported persisted.
#[derive(Debug, Default)]
#[must_use = "a Ready must be handled: persist, send, apply"]
pub struct Ready {
    /// State to write to stable storage, if any.
    pub persist: Option<Persist>,
    /// Messages to send.
    pub messages: Vec<Message>,
    /// Committed entries to apply, in order, continuing from the previous `Ready`.
    pub committed: Vec<Entry>,
    /// Reads that are confirmed.
    pub reads: Vec<ReadReady>,
    /// Reads that could not be confirmed.
    pub failed_reads: Vec<ReadFailed>,
}

impl Ready {
    /// Whether there is nothing to do.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.persist.is_none()
            && self.messages.is_empty()
            && self.committed.is_empty()
            && self.reads.is_empty()
            && self.failed_reads.is_empty()
    }
}

/// One batch for stable storage. Write it atomically: if `entries` is not empty, first
/// delete every stored entry with index ≥ `entries[0].index`, then append `entries`; store
/// `hard_state` if present. Then, if `sync`, make it durable (fsync) before reporting
/// [`Raft::persisted`]. `sync` is false only when nothing but the commit index changed,
/// which is safe to lose.
#[derive(Debug)]
pub struct Persist {
    /// Report this id when done. Batches are reported in order.
    pub io: IoId,
    /// New hard state, if it changed.
    pub hard_state: Option<HardState>,
    /// Entries to write (after truncating from the first one's index).
    pub entries: Vec<Entry>,
    /// Whether durability is required before reporting.
    pub sync: bool,
}

/// The state of a core at a glance, for status pages and metrics.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its current term.
    pub term: Term,
    /// The vote it cast in this term.
    pub vote: Option<NodeId>,
    /// The leader it knows.
    pub leader: Option<NodeId>,
    /// The commit index.
    pub commit: LogIndex,
    /// The last index handed out to apply.
    pub applied: LogIndex,
    /// The last log index (persisted or not).
    pub last_index: LogIndex,
    /// The last index known persisted.
    pub persisted_index: LogIndex,
    /// The configuration in force.
    pub config: Configuration,
    /// Per-follower progress (leader only).
    pub peers: BTreeMap<NodeId, PeerProgress>,
    /// Bytes appended but not committed (leader only).
    pub uncommitted_bytes: u64,
    /// Why the node halted, if it did.
    pub halted: Option<String>,
}

#[derive(Debug)]
struct PendingRead {
    id: ReadId,
    /// `None`: a local read; `Some(peer)`: forwarded by a follower.
    origin: Option<NodeId>,
    /// The heartbeat round that must reach a quorum.
    seq: u64,
    index: LogIndex,
}

/// One Raft node's consensus state: sans-IO, driven by the caller.
///
/// Inputs are [`handle_message`](Raft::handle_message),
/// [`handle_timeout`](Raft::handle_timeout), [`propose`](Raft::propose),
/// [`read`](Raft::read), [`transfer_leadership`](Raft::transfer_leadership) and
/// [`persisted`](Raft::persisted); each takes `now`. Outputs come from
/// [`ready`](Raft::ready); [`poll_timeout`](Raft::poll_timeout) says when to call
/// `handle_timeout` next. The core reads its log through `S` and never writes to it.
#[derive(Debug)]
pub struct Raft<S> {
    cfg: Config,
    id: NodeId,
    log: RaftLog<S>,
    term: Term,
    vote: Option<NodeId>,
    role: Role,
    leader: Option<NodeId>,
    conf: Configuration,
    rng: SplitMix64,
    now: Instant,
    halted: Option<String>,

    // Timers.
    election_deadline: Instant,
    heartbeat_deadline: Instant,
    check_quorum_deadline: Instant,
    last_leader_contact: Option<Instant>,

    // Candidate.
    votes: BTreeMap<NodeId, bool>,

    // Leader.
    peers: BTreeMap<NodeId, Progress>,
    commit_sent: BTreeMap<NodeId, LogIndex>,
    match_at_heartbeat: BTreeMap<NodeId, LogIndex>,
    uncommitted: VecDeque<(LogIndex, u64)>,
    uncommitted_bytes: u64,
    transferee: Option<(NodeId, Instant)>,
    timeout_now_sent: bool,
    hb_seq: u64,
    hb_sent_at: VecDeque<(u64, Instant)>,
    heartbeat_pending: bool,
    pending_reads: VecDeque<PendingRead>,
    reads_awaiting_commit: Vec<(ReadId, Option<NodeId>)>,

    // Follower: reads forwarded to the leader, with the time they were sent.
    forwarded_reads: Vec<(ReadId, Instant)>,

    // Outputs.
    msgs: Vec<Message>,
    msgs_unpersisted: Vec<Message>,
    held: VecDeque<(IoId, Vec<Message>)>,
    reads_ready: Vec<ReadReady>,
    reads_failed: Vec<ReadFailed>,
    io_issued: IoId,
    io_persisted: IoId,
    io_batches: VecDeque<(IoId, Option<EntryId>)>,
    handed_hs: HardState,
}

impl<S: LogStorage> Raft<S> {
    /// Creates a core from what `storage` holds. The node starts as a follower with an
    /// election timer running from `now`.
    pub fn new(cfg: Config, storage: S, now: Instant) -> Result<Raft<S>, CoreError> {
        cfg.validate()?;
        let init = storage.initial_state()?;
        init.config.validate().map_err(|e| CoreError::Config(e.to_string()))?;
        let hs = init.hard_state;
        let log = RaftLog::new(storage, hs.commit, cfg.applied);
        let mut r = Raft {
            id: cfg.id,
            rng: SplitMix64::new(cfg.seed ^ 0x0051_554f_5241_5445),
            log,
            term: hs.term,
            vote: hs.vote,
            role: Role::Follower,
            leader: None,
            conf: init.config,
            now,
            halted: None,
            election_deadline: now,
            heartbeat_deadline: now,
            check_quorum_deadline: now,
            // Until an election timeout has passed since start, act as if a leader was just
            // heard from: a restarted voter must not help depose a leader whose lease it may
            // have granted before the crash.
            last_leader_contact: Some(now),
            votes: BTreeMap::new(),
            peers: BTreeMap::new(),
            commit_sent: BTreeMap::new(),
            match_at_heartbeat: BTreeMap::new(),
            uncommitted: VecDeque::new(),
            uncommitted_bytes: 0,
            transferee: None,
            timeout_now_sent: false,
            hb_seq: 0,
            hb_sent_at: VecDeque::new(),
            heartbeat_pending: false,
            pending_reads: VecDeque::new(),
            reads_awaiting_commit: Vec::new(),
            forwarded_reads: Vec::new(),
            msgs: Vec::new(),
            msgs_unpersisted: Vec::new(),
            held: VecDeque::new(),
            reads_ready: Vec::new(),
            reads_failed: Vec::new(),
            io_issued: IoId(0),
            io_persisted: IoId(0),
            io_batches: VecDeque::new(),
            handed_hs: hs,
            cfg,
        };
        r.reset_election_deadline();
        Ok(r)
    }

    // ----- queries -----

    /// This node's id.
    #[must_use]
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Current role.
    #[must_use]
    pub fn role(&self) -> Role {
        self.role
    }

    /// Current term.
    #[must_use]
    pub fn term(&self) -> Term {
        self.term
    }

    /// The leader this node knows of.
    #[must_use]
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// The commit index.
    #[must_use]
    pub fn commit_index(&self) -> LogIndex {
        self.log.commit
    }

    /// The last log index.
    #[must_use]
    pub fn last_index(&self) -> LogIndex {
        self.log.last_index()
    }

    /// The configuration in force.
    #[must_use]
    pub fn configuration(&self) -> &Configuration {
        &self.conf
    }

    /// The current hard state (possibly not yet persisted).
    #[must_use]
    pub fn hard_state(&self) -> HardState {
        HardState { term: self.term, vote: self.vote, commit: self.log.commit }
    }

    /// Why the node halted, if it did.
    #[must_use]
    pub fn halted(&self) -> Option<&str> {
        self.halted.as_deref()
    }

    /// The log storage.
    #[must_use]
    pub fn storage(&self) -> &S {
        &self.log.storage
    }

    /// The log storage, for the application to write persisted batches into.
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.log.storage
    }

    /// Term of the entry at `index`, from the unstable tail or storage.
    pub fn entry_term(&self, index: LogIndex) -> Result<Term, StorageError> {
        self.log.term(index)
    }

    /// A status snapshot.
    #[must_use]
    pub fn status(&self) -> Status {
        Status {
            id: self.id,
            role: self.role,
            term: self.term,
            vote: self.vote,
            leader: self.leader,
            commit: self.log.commit,
            applied: self.log.applied,
            last_index: self.log.last_index(),
            persisted_index: self.log.persisted,
            config: self.conf.clone(),
            peers: self.peers.iter().map(|(id, p)| (*id, p.snapshot())).collect(),
            uncommitted_bytes: self.uncommitted_bytes,
            halted: self.halted.clone(),
        }
    }

    /// When [`handle_timeout`](Raft::handle_timeout) should next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.halted.is_some() {
            return None;
        }
        match self.role {
            Role::Leader => {
                let mut t = self.heartbeat_deadline.min(self.check_quorum_deadline);
                if let Some((_, d)) = self.transferee {
                    t = t.min(d);
                }
                Some(t)
            }
            _ => Some(self.election_deadline),
        }
    }

    // ----- inputs -----

    /// Advances timers to `now`: elections, heartbeats, check-quorum, transfer deadlines.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance_clock(now);
        if self.halted.is_some() {
            return;
        }
        let now = self.now;
        if self.role == Role::Leader {
            if now >= self.heartbeat_deadline {
                self.heartbeat_pending = true;
                self.heartbeat_deadline = now.saturating_add(self.cfg.heartbeat_interval);
            }
            if now >= self.check_quorum_deadline {
                self.check_quorum_deadline = now.saturating_add(self.cfg.election_timeout_min);
                if self.cfg.check_quorum {
                    let id = self.id;
                    let active =
                        self.conf.has_quorum(|n| n == id || self.peers.get(&n).is_some_and(|p| p.recent_active));
                    for p in self.peers.values_mut() {
                        p.recent_active = false;
                    }
                    if !active {
                        let term = self.term;
                        self.become_follower(term, None);
                        return;
                    }
                }
            }
            if let Some((_, deadline)) = self.transferee
                && now >= deadline
            {
                self.transferee = None;
            }
        } else {
            let expiry = self.cfg.election_timeout_min * 2;
            let before = self.forwarded_reads.len();
            let failed = &mut self.reads_failed;
            self.forwarded_reads.retain(|(id, sent)| {
                let keep = now.saturating_since(*sent) < expiry;
                if !keep {
                    failed.push(ReadFailed { id: *id, error: ReadError::LeadershipLost });
                }
                keep
            });
            debug_assert!(self.forwarded_reads.len() <= before);
            if now >= self.election_deadline {
                if self.conf.is_voter(self.id) {
                    self.campaign(self.cfg.pre_vote, false);
                } else {
                    self.reset_election_deadline();
                }
            }
        }
    }

    /// Starts an election now (pre-vote first if configured), as after an election timeout.
    pub fn campaign_now(&mut self, now: Instant) {
        self.advance_clock(now);
        if self.halted.is_none() && self.role != Role::Leader && self.conf.is_voter(self.id) {
            self.campaign(self.cfg.pre_vote, false);
        }
    }

    /// Proposes a command. On the leader it is appended and will be committed (or lost, if
    /// leadership changes first: then a different entry, or none, appears at the returned
    /// index). Anywhere else it is refused with the leader hint.
    pub fn propose(&mut self, now: Instant, data: Data) -> Result<EntryId, ProposeError> {
        self.advance_clock(now);
        if let Some(h) = &self.halted {
            return Err(ProposeError::Halted(h.clone()));
        }
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader { leader_hint: self.leader });
        }
        if let Some((to, _)) = self.transferee {
            return Err(ProposeError::TransferInProgress(to));
        }
        let size = ENTRY_OVERHEAD_BYTES + data.len() as u64;
        if size > self.cfg.msg_bytes_max {
            return Err(ProposeError::TooLarge { proposal_bytes: size, limit_bytes: self.cfg.msg_bytes_max });
        }
        if self.uncommitted_bytes > 0 && self.uncommitted_bytes + size > self.cfg.uncommitted_bytes_max {
            return Err(ProposeError::UncommittedLimit {
                uncommitted_bytes: self.uncommitted_bytes,
                proposal_bytes: size,
                limit_bytes: self.cfg.uncommitted_bytes_max,
            });
        }
        Ok(self.append_own(EntryPayload::Command(data), size))
    }

    /// Asks for a read at `level`. The result arrives in a later [`Ready`]: a
    /// [`ReadReady`] (serve once applied ≥ its index) or a [`ReadFailed`].
    pub fn read(&mut self, now: Instant, id: ReadId, level: ReadLevel) -> Result<(), ReadError> {
        self.advance_clock(now);
        if self.halted.is_some() {
            return Err(ReadError::Halted);
        }
        if level == ReadLevel::Lease {
            if self.cfg.lease_clock_drift_max.is_none() {
                return Err(ReadError::LeaseDisabled);
            }
            if self.role != Role::Leader {
                return Err(ReadError::NotLeader { leader_hint: self.leader });
            }
            if self.lease_valid() && self.committed_in_term() {
                self.reads_ready.push(ReadReady { id, index: self.log.commit });
                return Ok(());
            }
        }
        if self.role == Role::Leader {
            return self.leader_read(id, None);
        }
        let Some(leader) = self.leader else { return Err(ReadError::NoLeader) };
        if self.forwarded_reads.len() >= self.cfg.pending_reads_max {
            return Err(ReadError::TooManyPending(self.cfg.pending_reads_max));
        }
        self.forwarded_reads.push((id, self.now));
        self.send(leader, MessageBody::ReadIndex(ReadIndexRequest { id }));
        Ok(())
    }

    /// Hands leadership to `to`: proposals are refused until the transfer ends; once `to`
    /// is caught up it is told to campaign at once. The transfer is abandoned after an
    /// election timeout.
    pub fn transfer_leadership(&mut self, now: Instant, to: NodeId) -> Result<(), TransferError> {
        self.advance_clock(now);
        if self.role != Role::Leader || self.halted.is_some() {
            return Err(TransferError::NotLeader);
        }
        if to == self.id {
            return Err(TransferError::AlreadyLeader(to));
        }
        if !self.conf.is_voter(to) {
            return Err(TransferError::NotAVoter(to));
        }
        self.transferee = Some((to, self.now.saturating_add(self.cfg.election_timeout_min)));
        if self.peers.get(&to).is_some_and(|p| p.match_index == self.log.last_index()) {
            self.send_timeout_now(to);
        }
        Ok(())
    }

    /// Reports that the persist batch `io` (and every earlier one) is on stable storage.
    pub fn persisted(&mut self, now: Instant, io: IoId) {
        self.advance_clock(now);
        if self.halted.is_some() {
            return;
        }
        if io <= self.io_persisted {
            return;
        }
        if io > self.io_issued {
            self.halt(format!("persisted({io:?}) reported, but only {:?} was issued", self.io_issued));
            return;
        }
        while let Some(&(b, last)) = self.io_batches.front() {
            if b > io {
                break;
            }
            self.io_batches.pop_front();
            if let Some(last) = last {
                self.log.persisted_to(last);
            }
        }
        self.io_persisted = io;
        while let Some((tag, _)) = self.held.front() {
            if *tag > io {
                break;
            }
            if let Some((_, msgs)) = self.held.pop_front() {
                self.msgs.extend(msgs);
            }
        }
        if self.role == Role::Leader {
            self.maybe_commit();
        }
    }

    /// Handles a message from a peer.
    pub fn handle_message(&mut self, now: Instant, m: Message) {
        self.advance_clock(now);
        if self.halted.is_some() || m.to != self.id || m.from == self.id {
            return;
        }
        if m.term > self.term {
            match &m.body {
                MessageBody::RequestVote(rv) => {
                    if !rv.transfer && self.in_lease() {
                        return;
                    }
                    if !rv.pre_vote {
                        self.become_follower(m.term, None);
                    }
                }
                MessageBody::VoteResponse(vr) if vr.pre_vote && vr.granted => {}
                MessageBody::Append(_) | MessageBody::Heartbeat(_) | MessageBody::TimeoutNow => {
                    self.become_follower(m.term, Some(m.from));
                }
                MessageBody::ReadIndexResponse(_) => self.become_follower(m.term, Some(m.from)),
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < self.term {
            match &m.body {
                // A stale leader: answer with our term so it steps down.
                MessageBody::Append(_) | MessageBody::Heartbeat(_) => {
                    self.send(m.from, MessageBody::HeartbeatResponse(HeartbeatResponse { seq: 0 }));
                }
                MessageBody::RequestVote(rv) if rv.pre_vote => {
                    self.send(m.from, MessageBody::VoteResponse(VoteResponse { pre_vote: true, granted: false }));
                }
                _ => {}
            }
            return;
        }
        let from = m.from;
        let term = m.term;
        match m.body {
            MessageBody::RequestVote(rv) => self.handle_request_vote(from, term, &rv),
            MessageBody::VoteResponse(vr) => self.handle_vote_response(from, term, &vr),
            MessageBody::Append(a) => {
                if self.role != Role::Follower {
                    self.become_follower(term, Some(from));
                }
                self.heard_from_leader(from);
                self.handle_append(from, a);
            }
            MessageBody::Heartbeat(hb) => {
                if self.role != Role::Follower {
                    self.become_follower(term, Some(from));
                }
                self.heard_from_leader(from);
                let commit = hb.commit.min(self.log.last_index());
                self.log.commit_to(commit);
                self.send(from, MessageBody::HeartbeatResponse(HeartbeatResponse { seq: hb.seq }));
            }
            MessageBody::TimeoutNow => {
                if self.role != Role::Leader && self.conf.is_voter(self.id) {
                    self.campaign(false, true);
                }
            }
            MessageBody::AppendResponse(r) => self.handle_append_response(from, r),
            MessageBody::HeartbeatResponse(r) => self.handle_heartbeat_response(from, r.seq),
            MessageBody::ReadIndex(r) => {
                if self.role == Role::Leader {
                    if self.leader_read(r.id, Some(from)).is_err() {
                        self.send(from, MessageBody::ReadIndexResponse(ReadIndexResponse { id: r.id, index: None }));
                    }
                } else {
                    self.send(from, MessageBody::ReadIndexResponse(ReadIndexResponse { id: r.id, index: None }));
                }
            }
            MessageBody::ReadIndexResponse(r) => {
                if let Some(pos) = self.forwarded_reads.iter().position(|(id, _)| *id == r.id) {
                    self.forwarded_reads.swap_remove(pos);
                    match r.index {
                        Some(index) => self.reads_ready.push(ReadReady { id: r.id, index }),
                        None => self.reads_failed.push(ReadFailed { id: r.id, error: ReadError::LeadershipLost }),
                    }
                }
            }
        }
    }

    /// Whether [`ready`](Raft::ready) may have something to hand out. Conservative: it may
    /// return true for an empty `Ready`.
    #[must_use]
    pub fn has_ready(&self) -> bool {
        !self.msgs.is_empty()
            || !self.msgs_unpersisted.is_empty()
            || self.log.has_unhanded()
            || self.hard_state() != self.handed_hs
            || self.log.has_committed_to_apply()
            || !self.reads_ready.is_empty()
            || !self.reads_failed.is_empty()
            || (self.role == Role::Leader && (self.heartbeat_pending || self.leader_has_sends()))
    }

    /// Collects what the application must do now.
    pub fn ready(&mut self) -> Ready {
        if self.halted.is_some() {
            return Ready::default();
        }
        if self.role == Role::Leader {
            if self.heartbeat_pending {
                self.broadcast_heartbeat();
            }
            let ids: Vec<NodeId> = self.peers.keys().copied().collect();
            for id in ids {
                while self.send_append(id) {}
            }
        }
        let hs = self.hard_state();
        let entries = self.log.take_unpersisted();
        let persist = if hs != self.handed_hs || !entries.is_empty() {
            let sync = !entries.is_empty() || hs.term != self.handed_hs.term || hs.vote != self.handed_hs.vote;
            let hard_state = (hs != self.handed_hs).then_some(hs);
            self.handed_hs = hs;
            self.io_issued = IoId(self.io_issued.0 + 1);
            self.io_batches.push_back((self.io_issued, entries.last().map(Entry::id)));
            Some(Persist { io: self.io_issued, hard_state, entries, sync })
        } else {
            None
        };
        if !self.msgs_unpersisted.is_empty() {
            let msgs = std::mem::take(&mut self.msgs_unpersisted);
            if self.io_persisted >= self.io_issued {
                self.msgs.extend(msgs);
            } else {
                self.held.push_back((self.io_issued, msgs));
            }
        }
        let committed = match self.log.take_committed(self.cfg.apply_bytes_max) {
            Ok(c) => c,
            Err(e) => {
                self.halt(format!("reading committed entries: {e}"));
                Vec::new()
            }
        };
        self.log.check();
        Ready {
            persist,
            messages: std::mem::take(&mut self.msgs),
            committed,
            reads: std::mem::take(&mut self.reads_ready),
            failed_reads: std::mem::take(&mut self.reads_failed),
        }
    }

    // ----- internals: roles -----

    fn advance_clock(&mut self, now: Instant) {
        // The caller's clock is monotonic; tolerate (and ignore) a step backwards.
        if now > self.now {
            self.now = now;
        }
    }

    fn halt(&mut self, reason: String) {
        if self.halted.is_none() {
            self.halted = Some(reason);
            self.role = Role::Follower;
            self.leader = None;
        }
    }

    fn reset_election_deadline(&mut self) {
        let base = self.cfg.election_timeout_min.as_nanos().min(u128::from(u64::MAX)) as u64;
        let jitter = self.rng.below(base);
        self.election_deadline = Instant(self.now.0.saturating_add(base).saturating_add(jitter));
    }

    fn in_lease(&self) -> bool {
        if self.role == Role::Leader {
            return self.cfg.check_quorum;
        }
        self.cfg.check_quorum
            && self.last_leader_contact.is_some_and(|t| self.now.saturating_since(t) < self.cfg.election_timeout_min)
    }

    fn heard_from_leader(&mut self, from: NodeId) {
        self.leader = Some(from);
        self.last_leader_contact = Some(self.now);
        self.reset_election_deadline();
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        let was_leader = self.role == Role::Leader;
        if term > self.term {
            self.term = term;
            self.vote = None;
        }
        if self.leader != leader || was_leader {
            for (id, _) in self.forwarded_reads.drain(..) {
                self.reads_failed.push(ReadFailed { id, error: ReadError::LeadershipLost });
            }
        }
        self.role = Role::Follower;
        self.leader = leader;
        if was_leader {
            self.abandon_leadership();
        }
        if leader.is_some() {
            self.last_leader_contact = Some(self.now);
        }
        self.reset_election_deadline();
    }

    fn abandon_leadership(&mut self) {
        self.peers.clear();
        self.commit_sent.clear();
        self.match_at_heartbeat.clear();
        self.uncommitted.clear();
        self.uncommitted_bytes = 0;
        self.transferee = None;
        self.timeout_now_sent = false;
        self.heartbeat_pending = false;
        let reads: Vec<(ReadId, Option<NodeId>)> = self
            .pending_reads
            .drain(..)
            .map(|r| (r.id, r.origin))
            .chain(self.reads_awaiting_commit.drain(..))
            .collect();
        for (id, origin) in reads {
            self.fail_read(id, origin);
        }
    }

    fn fail_read(&mut self, id: ReadId, origin: Option<NodeId>) {
        match origin {
            None => self.reads_failed.push(ReadFailed { id, error: ReadError::LeadershipLost }),
            Some(peer) => self.send(peer, MessageBody::ReadIndexResponse(ReadIndexResponse { id, index: None })),
        }
    }

    fn campaign(&mut self, pre_vote: bool, transfer: bool) {
        self.leader = None;
        self.votes.clear();
        self.votes.insert(self.id, true);
        let term = if pre_vote {
            self.role = Role::PreCandidate;
            self.term.next()
        } else {
            self.term = self.term.next();
            self.vote = Some(self.id);
            self.role = Role::Candidate;
            self.term
        };
        self.reset_election_deadline();
        if self.tally() == Some(true) {
            self.won_election(pre_vote);
            return;
        }
        let last = self.log.last_id();
        let voters: Vec<NodeId> = self.conf.all_voters().filter(|n| *n != self.id).collect();
        for to in voters {
            let body = MessageBody::RequestVote(RequestVote { pre_vote, last, transfer });
            self.msgs_unpersisted.push(Message { from: self.id, to, term, body });
        }
    }

    fn tally(&self) -> Option<bool> {
        self.conf.vote_result(|n| self.votes.get(&n).copied())
    }

    fn won_election(&mut self, pre_vote: bool) {
        if pre_vote {
            self.campaign(false, false);
        } else {
            self.become_leader();
        }
    }

    fn handle_request_vote(&mut self, from: NodeId, term: Term, rv: &RequestVote) {
        let up_to_date = self.log.is_up_to_date(rv.last);
        if rv.pre_vote {
            // Grant if the candidate's term is ahead of ours (or we could vote for it now),
            // its log is at least as up to date, and we have not heard from a leader
            // recently (checked before, for higher terms).
            let could_vote = term > self.term || self.vote.is_none_or(|v| v == from) && self.leader.is_none();
            let granted = could_vote && up_to_date;
            let reply_term = if granted { term } else { self.term };
            let body = MessageBody::VoteResponse(VoteResponse { pre_vote: true, granted });
            self.msgs_unpersisted.push(Message { from: self.id, to: from, term: reply_term, body });
            return;
        }
        let can_vote = self.vote == Some(from) || (self.vote.is_none() && self.leader.is_none());
        let granted = can_vote && up_to_date;
        if granted {
            self.vote = Some(from);
            self.reset_election_deadline();
        }
        self.send(from, MessageBody::VoteResponse(VoteResponse { pre_vote: false, granted }));
    }

    fn handle_vote_response(&mut self, from: NodeId, term: Term, vr: &VoteResponse) {
        let expected = match self.role {
            Role::PreCandidate => vr.pre_vote && term == self.term.next(),
            Role::Candidate => !vr.pre_vote && term == self.term,
            _ => false,
        };
        if !expected || !self.conf.is_voter(from) {
            return;
        }
        self.votes.insert(from, vr.granted);
        match self.tally() {
            Some(true) => self.won_election(vr.pre_vote),
            Some(false) => {
                let t = self.term;
                self.become_follower(t, None);
            }
            None => {}
        }
    }

    fn become_leader(&mut self) {
        debug_assert_eq!(self.role, Role::Candidate);
        self.role = Role::Leader;
        self.leader = Some(self.id);
        let next = self.log.last_index().next();
        self.peers = self.conf.members().filter(|n| *n != self.id).map(|n| (n, Progress::new(next))).collect();
        self.commit_sent.clear();
        self.match_at_heartbeat.clear();
        self.uncommitted.clear();
        self.uncommitted_bytes = 0;
        self.transferee = None;
        self.timeout_now_sent = false;
        self.heartbeat_deadline = self.now.saturating_add(self.cfg.heartbeat_interval);
        self.check_quorum_deadline = self.now.saturating_add(self.cfg.election_timeout_min);
        // A leader may only commit entries of its own term by counting; the no-op gives it
        // one at once.
        self.append_own(EntryPayload::Noop, ENTRY_OVERHEAD_BYTES);
    }

    fn append_own(&mut self, payload: EntryPayload, size: u64) -> EntryId {
        let index = self.log.last_index().next();
        let id = EntryId::new(self.term, index);
        self.log.push(Entry { index, term: self.term, payload });
        self.uncommitted.push_back((index, size));
        self.uncommitted_bytes += size;
        id
    }

    // ----- internals: replication -----

    fn send(&mut self, to: NodeId, body: MessageBody) {
        let m = Message { from: self.id, to, term: self.term, body };
        if self.role == Role::Leader {
            // The leader's term and vote were persisted before any peer granted it a vote;
            // its appends may go out before its own copy is durable (its own persistence
            // counts toward the quorum only once reported).
            self.msgs.push(m);
        } else {
            self.msgs_unpersisted.push(m);
        }
    }

    fn handle_append(&mut self, from: NodeId, a: Append) {
        if a.prev.index < self.log.commit {
            // Already committed here: report how far we know the logs match.
            let match_index = self.log.commit;
            self.send(from, MessageBody::AppendResponse(AppendResponse::Accepted { match_index }));
            return;
        }
        if !self.log.matches(a.prev) {
            let hint = self.log.find_conflict_by_term(a.prev.index, a.prev.term);
            let body = MessageBody::AppendResponse(AppendResponse::Rejected { rejected: a.prev.index, hint });
            self.send(from, body);
            return;
        }
        match self.log.append_after(a.prev, &a.entries) {
            Ok(last_new) => {
                self.log.commit_to(a.commit.min(last_new));
                self.send(from, MessageBody::AppendResponse(AppendResponse::Accepted { match_index: last_new }));
            }
            Err(e) => self.halt(format!("appending entries: {e}")),
        }
    }

    fn handle_append_response(&mut self, from: NodeId, r: AppendResponse) {
        if self.role != Role::Leader {
            return;
        }
        let Some(pr) = self.peers.get_mut(&from) else { return };
        pr.recent_active = true;
        match r {
            AppendResponse::Accepted { match_index } => {
                if match_index > self.log.last_index() {
                    return;
                }
                if pr.ack(match_index) {
                    self.maybe_commit();
                }
                if let Some((to, _)) = self.transferee
                    && to == from
                    && match_index == self.log.last_index()
                {
                    self.send_timeout_now(to);
                }
            }
            AppendResponse::Rejected { rejected, hint } => {
                let guess = if hint.term > Term::ZERO {
                    self.log.find_conflict_by_term(hint.index, hint.term).index
                } else {
                    hint.index
                };
                if let Some(pr) = self.peers.get_mut(&from) {
                    pr.reject(rejected, guess);
                }
            }
        }
    }

    fn handle_heartbeat_response(&mut self, from: NodeId, seq: u64) {
        if self.role != Role::Leader {
            return;
        }
        let last = self.log.last_index();
        let sent_at = self.hb_sent_at.iter().find(|(s, _)| *s == seq).map(|(_, t)| *t);
        let Some(pr) = self.peers.get_mut(&from) else { return };
        pr.recent_active = true;
        if seq > pr.acked_seq {
            pr.acked_seq = seq;
            pr.acked_sent_at = sent_at.or(pr.acked_sent_at);
        }
        if pr.match_index < last {
            match pr.state {
                ProgressState::Probe => pr.probe_sent = false,
                ProgressState::Replicate => {
                    // No progress over a whole heartbeat interval: something was lost.
                    let before = self.match_at_heartbeat.insert(from, pr.match_index);
                    if before == Some(pr.match_index) {
                        pr.become_probe();
                    }
                }
            }
        }
        self.release_reads();
    }

    fn leader_has_sends(&self) -> bool {
        let last = self.log.last_index();
        self.peers.iter().any(|(id, p)| {
            (p.next_index <= last && p.can_send(self.cfg.inflight_msgs_max, self.cfg.inflight_bytes_max))
                || self.commit_sent.get(id).copied().unwrap_or_default() < self.log.commit
        })
    }

    /// Sends one append to `to` if there is something to send and the window allows.
    fn send_append(&mut self, to: NodeId) -> bool {
        let last = self.log.last_index();
        let commit = self.log.commit;
        let Some(pr) = self.peers.get(&to) else { return false };
        if !pr.can_send(self.cfg.inflight_msgs_max, self.cfg.inflight_bytes_max) {
            return false;
        }
        let next = pr.next_index;
        let probing = pr.state == ProgressState::Probe;
        let commit_behind = self.commit_sent.get(&to).copied().unwrap_or_default() < commit;
        if next > last && !probing && !commit_behind {
            return false;
        }
        if next > last && probing && pr.match_index == last && !commit_behind {
            return false;
        }
        let prev_index = next.prev();
        let prev_term = match self.log.term(prev_index) {
            Ok(t) => t,
            Err(StorageError::Compacted(_)) => return false,
            Err(e) => {
                self.halt(format!("reading term at {prev_index}: {e}"));
                return false;
            }
        };
        let entries = match self.log.entries(next, last.next(), self.cfg.msg_bytes_max) {
            Ok(e) => e,
            Err(StorageError::Compacted(_)) => return false,
            Err(e) => {
                self.halt(format!("reading entries from {next}: {e}"));
                return false;
            }
        };
        let bytes: u64 = entries.iter().map(Entry::size_bytes).sum();
        let last_sent = entries.last().map(|e| e.index);
        if let Some(pr) = self.peers.get_mut(&to) {
            pr.sent(last_sent, bytes);
        }
        self.commit_sent.insert(to, commit);
        let body = MessageBody::Append(Append { prev: EntryId::new(prev_term, prev_index), entries, commit });
        self.send(to, body);
        // In replicate state keep going while there are entries; a lone commit update or a
        // probe is one message.
        last_sent.is_some() && !probing
    }

    fn broadcast_heartbeat(&mut self) {
        self.heartbeat_pending = false;
        self.hb_seq += 1;
        let seq = self.hb_seq;
        if self.hb_sent_at.len() == HEARTBEAT_ROUNDS_REMEMBERED {
            self.hb_sent_at.pop_front();
        }
        self.hb_sent_at.push_back((seq, self.now));
        let commit = self.log.commit;
        let targets: Vec<(NodeId, LogIndex)> =
            self.peers.iter().map(|(id, p)| (*id, commit.min(p.match_index))).collect();
        for (to, c) in targets {
            self.send(to, MessageBody::Heartbeat(Heartbeat { commit: c, seq }));
        }
        // A single-voter cluster confirms reads by itself.
        self.release_reads();
    }

    fn send_timeout_now(&mut self, to: NodeId) {
        self.timeout_now_sent = true;
        self.send(to, MessageBody::TimeoutNow);
    }

    fn maybe_commit(&mut self) {
        let id = self.id;
        let persisted = self.log.persisted;
        let peers = &self.peers;
        let idx = self.conf.committed_index(|n| {
            if n == id { persisted } else { peers.get(&n).map_or(LogIndex::ZERO, |p| p.match_index) }
        });
        if idx <= self.log.commit || idx > self.log.last_index() {
            return;
        }
        // Only entries of the current term are committed by counting (Raft §5.4.2).
        if self.log.term(idx).ok() != Some(self.term) {
            return;
        }
        let first_in_term = !self.committed_in_term();
        self.log.commit_to(idx);
        while let Some(&(i, size)) = self.uncommitted.front() {
            if i > idx {
                break;
            }
            self.uncommitted.pop_front();
            self.uncommitted_bytes -= size;
        }
        if first_in_term {
            let waiting = std::mem::take(&mut self.reads_awaiting_commit);
            for (rid, origin) in waiting {
                if self.leader_read(rid, origin).is_err() {
                    self.fail_read(rid, origin);
                }
            }
        }
    }

    // ----- internals: reads -----

    fn committed_in_term(&self) -> bool {
        self.log.term(self.log.commit).ok() == Some(self.term)
    }

    fn lease_valid(&self) -> bool {
        let Some(drift) = self.cfg.lease_clock_drift_max else { return false };
        if self.role != Role::Leader || self.timeout_now_sent || self.transferee.is_some() {
            return false;
        }
        let id = self.id;
        let now = self.now;
        // The quorum-th most recent send time of an acknowledged heartbeat round.
        let start = self.conf.committed_index(|n| {
            if n == id {
                LogIndex(now.0)
            } else {
                LogIndex(self.peers.get(&n).and_then(|p| p.acked_sent_at).map_or(0, |t| t.0))
            }
        });
        let lease_end = Instant(start.0).saturating_add(self.cfg.election_timeout_min.saturating_sub(drift));
        start.0 > 0 && now < lease_end
    }

    fn leader_read(&mut self, id: ReadId, origin: Option<NodeId>) -> Result<(), ReadError> {
        if self.pending_reads.len() + self.reads_awaiting_commit.len() >= self.cfg.pending_reads_max {
            return Err(ReadError::TooManyPending(self.cfg.pending_reads_max));
        }
        if !self.committed_in_term() {
            self.reads_awaiting_commit.push((id, origin));
            return Ok(());
        }
        self.pending_reads.push_back(PendingRead { id, origin, seq: self.hb_seq + 1, index: self.log.commit });
        self.heartbeat_pending = true;
        Ok(())
    }

    fn release_reads(&mut self) {
        if self.pending_reads.is_empty() {
            return;
        }
        let id = self.id;
        let peers = &self.peers;
        let quorum_seq = self
            .conf
            .committed_index(|n| LogIndex(if n == id { u64::MAX } else { peers.get(&n).map_or(0, |p| p.acked_seq) }));
        while let Some(r) = self.pending_reads.front() {
            if r.seq > quorum_seq.0 || r.seq > self.hb_seq {
                break;
            }
            let Some(r) = self.pending_reads.pop_front() else { break };
            match r.origin {
                None => self.reads_ready.push(ReadReady { id: r.id, index: r.index }),
                Some(peer) => {
                    let body = MessageBody::ReadIndexResponse(ReadIndexResponse { id: r.id, index: Some(r.index) });
                    self.send(peer, body);
                }
            }
        }
    }
}
