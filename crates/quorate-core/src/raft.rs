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
    ConfChange, ConfChangeError, CoreError, Instant, IoId, ProposeError, ReadError, ReadFailed, ReadId, ReadLevel,
    ReadReady, Role, SendSnapshot, TransferError,
};
use quorate_log::{
    Configuration, Data, ENTRY_OVERHEAD_BYTES, Entry, EntryId, EntryPayload, HardState, LogIndex, LogStorage, NodeId,
    SnapshotMeta, StorageError, Term,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

#[path = "image.rs"]
pub(crate) mod image;

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
    /// Take a snapshot of the state machine at exactly this point (after applying
    /// `committed`), persist it, then report it with [`Raft::snapshot_taken`].
    pub take_snapshot: Option<SnapshotMeta>,
    /// Snapshots to stream to followers that need compacted entries.
    pub send_snapshots: Vec<SendSnapshot>,
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
            && self.take_snapshot.is_none()
            && self.send_snapshots.is_empty()
    }
}

/// One batch for stable storage. Write it atomically, in this order: if `install` is present,
/// install that snapshot (its state-machine data, which the application staged before calling
/// [`Raft::install_snapshot`], and its metadata; log entries up to it are dropped, and all of
/// them if the log does not hold its last entry); if `compact` is present, delete log entries
/// up to it; if `entries` is not empty, delete every stored entry with index ≥
/// `entries[0].index`, then append `entries`; store `hard_state` if present. Then, if `sync`,
/// make it durable (fsync) before reporting [`Raft::persisted`]. `sync` is false only when
/// nothing but the commit index changed, which is safe to lose.
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
    /// A snapshot received from the leader to install.
    pub install: Option<SnapshotMeta>,
    /// Log entries up to this point are covered by a snapshot and may be deleted.
    pub compact: Option<SnapshotMeta>,
}

/// Why a campaign (a pre-vote round or an election) started; see [`Raft::last_campaign`].
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CampaignReason {
    /// The election timer fired while no leader was known for the term.
    ElectionTimeout,
    /// The election timer fired while a leader was still known: it went silent.
    LeaderTimeout,
    /// The leader asked this node to take over (`TimeoutNow`, leadership transfer).
    Transfer,
    /// The application asked for it ([`Raft::campaign_now`]).
    Forced,
    /// A pre-vote round was won: the real election that follows it.
    PreVotePassed,
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
    /// The configuration version: the index of the entry that set it (0: bootstrap).
    pub config_version: LogIndex,
    /// The last index covered by the latest snapshot known to the core.
    pub snapshot_index: LogIndex,
    /// The first index still in the log.
    pub first_index: LogIndex,
    /// Per-follower progress (leader only).
    pub peers: BTreeMap<NodeId, PeerProgress>,
    /// Bytes appended but not committed (leader only).
    pub uncommitted_bytes: u64,
    /// Why the node halted, if it did.
    pub halted: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
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
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(bound(serialize = "", deserialize = "S: image::Detachable"))]
pub struct Raft<S> {
    cfg: Config,
    id: NodeId,
    log: RaftLog<S>,
    term: Term,
    vote: Option<NodeId>,
    role: Role,
    leader: Option<NodeId>,
    conf: Configuration,
    /// Configuration entries above the log's floor, in index order.
    conf_history: Vec<(LogIndex, Configuration)>,
    /// The configuration at the log's floor.
    base_conf: Configuration,
    /// The application's latest snapshot.
    snapshot: Option<SnapshotMeta>,
    applied_since_snapshot: u64,
    applied_bytes_since_snapshot: u64,
    snapshot_requested: bool,
    pending_install: Option<SnapshotMeta>,
    pending_compact: Option<SnapshotMeta>,
    send_snapshots: Vec<SendSnapshot>,
    snapshot_wanted: bool,
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
    /// Campaigns started so far, and the reason of the latest.
    last_campaign: Option<(u64, CampaignReason)>,

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
        // A node joining an existing cluster starts with no configuration and learns it
        // from the leader; anything else must be a valid configuration.
        if init.config != Configuration::default() {
            init.config.validate().map_err(|e| CoreError::Config(e.to_string()))?;
        }
        let base_conf = storage.snapshot_meta()?.config;
        let hs = init.hard_state;
        let log = RaftLog::new(storage, hs.commit, cfg.applied);
        let conf_history = scan_configs(&log)?;
        let conf = conf_history.last().map_or_else(|| base_conf.clone(), |(_, c)| c.clone());
        let snapshot = cfg.snapshot.clone().filter(|m| m.last.index <= log.commit);
        let mut r = Raft {
            id: cfg.id,
            rng: SplitMix64::new(cfg.seed ^ 0x0051_554f_5241_5445),
            log,
            term: hs.term,
            vote: hs.vote,
            role: Role::Follower,
            leader: None,
            conf,
            conf_history,
            base_conf,
            snapshot,
            applied_since_snapshot: 0,
            applied_bytes_since_snapshot: 0,
            snapshot_requested: false,
            pending_install: None,
            pending_compact: None,
            send_snapshots: Vec::new(),
            snapshot_wanted: false,
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
            last_campaign: None,
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

    /// Bytes appended but not yet committed (leader only; zero otherwise). A read-only
    /// signal for admission control.
    #[must_use]
    pub fn uncommitted_bytes(&self) -> u64 {
        self.uncommitted_bytes
    }

    /// The most entry bytes in flight to one follower (leader only; zero otherwise). A
    /// read-only signal for admission control.
    #[must_use]
    pub fn peer_inflight_bytes_max(&self) -> u64 {
        self.peers.values().map(|p| p.snapshot().inflight_bytes).max().unwrap_or(0)
    }

    /// The configuration in force.
    #[must_use]
    pub fn configuration(&self) -> &Configuration {
        &self.conf
    }

    /// The configuration version: the index of the entry that set the configuration in
    /// force, or the log's floor if that entry was compacted (0 for the bootstrap one).
    #[must_use]
    pub fn config_version(&self) -> LogIndex {
        self.conf_history.last().map_or_else(|| self.log.floor().index, |(i, _)| *i)
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

    /// How many campaigns (pre-vote rounds and elections) this core started since it was
    /// created, and why the latest one started; `None` before the first.
    #[must_use]
    pub fn last_campaign(&self) -> Option<(u64, CampaignReason)> {
        self.last_campaign
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
            config_version: self.config_version(),
            snapshot_index: self.snapshot.as_ref().map_or(LogIndex::ZERO, |m| m.last.index),
            first_index: self.log.first_index(),
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
            let timeout = self.cfg.snapshot_send_timeout;
            for p in self.peers.values_mut() {
                if p.snapshot.is_some_and(|(_, sent)| now.saturating_since(sent) >= timeout) {
                    p.become_probe();
                }
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
                    let reason = if self.leader.is_some() {
                        CampaignReason::LeaderTimeout
                    } else {
                        CampaignReason::ElectionTimeout
                    };
                    self.campaign(self.cfg.pre_vote, reason);
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
            self.campaign(self.cfg.pre_vote, CampaignReason::Forced);
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

    /// Proposes a membership change (leader only). At most one change is in flight: the
    /// previous one must be committed (and a joint configuration left) first. Voter changes
    /// go through a joint configuration; the configuration takes effect as soon as its entry
    /// is appended, on every node.
    pub fn propose_conf_change(&mut self, now: Instant, change: ConfChange) -> Result<EntryId, ConfChangeError> {
        self.advance_clock(now);
        if self.halted.is_some() {
            return Err(ConfChangeError::Halted);
        }
        if self.role != Role::Leader {
            return Err(ConfChangeError::NotLeader { leader_hint: self.leader });
        }
        if self.transferee.is_some() {
            return Err(ConfChangeError::TransferInProgress);
        }
        if let Some(at) = self.conf_change_in_flight() {
            return Err(ConfChangeError::ChangeInFlight(at));
        }
        let old = &self.conf;
        let mut new = old.clone();
        let last = self.log.last_index();
        let max_lag = self.cfg.promote_lag_entries_max;
        // A learner may become a voter only once it is nearly caught up.
        let caught_up = |n: NodeId| {
            let behind = last.distance_from(self.peers.get(&n).map_or(LogIndex::ZERO, |p| p.match_index));
            if behind > max_lag { Err(ConfChangeError::TooFarBehind { node: n, behind, max: max_lag }) } else { Ok(()) }
        };
        match change {
            ConfChange::AddLearner(n) => {
                if old.is_voter(n) || old.is_learner(n) {
                    return Err(ConfChangeError::AlreadyMember(n));
                }
                new.learners.insert(n);
            }
            ConfChange::Promote(n) => {
                if old.is_voter(n) {
                    return Err(ConfChangeError::AlreadyMember(n));
                }
                if !old.is_learner(n) {
                    return Err(ConfChangeError::NotMember(n));
                }
                caught_up(n)?;
                new.learners.remove(&n);
                new.voters.insert(n);
            }
            ConfChange::Remove(n) => {
                if old.is_learner(n) {
                    new.learners.remove(&n);
                } else if old.voters.contains(&n) {
                    new.voters.remove(&n);
                } else {
                    return Err(ConfChangeError::NotMember(n));
                }
            }
            ConfChange::Replace { old: out, new: incoming } => {
                if !old.voters.contains(&out) {
                    return Err(ConfChangeError::NotMember(out));
                }
                if !old.is_learner(incoming) {
                    return Err(ConfChangeError::NotMember(incoming));
                }
                caught_up(incoming)?;
                new.voters.remove(&out);
                new.learners.remove(&incoming);
                new.voters.insert(incoming);
            }
        }
        new.validate().map_err(|e| ConfChangeError::Invalid(e.to_string()))?;
        if new.voters != old.voters {
            new.voters_outgoing = old.voters.clone();
        }
        // The new configuration must be able to form a quorum with the nodes that answered
        // recently (a caught-up newcomer counts).
        let id = self.id;
        let healthy = |n: NodeId| {
            n == id
                || self.peers.get(&n).is_some_and(|p| p.recent_active && last.distance_from(p.match_index) <= max_lag)
        };
        if !new.has_quorum(healthy) {
            return Err(ConfChangeError::WouldLoseQuorum);
        }
        let size = ENTRY_OVERHEAD_BYTES + new.size_bytes();
        Ok(self.append_own(EntryPayload::Config(new), size))
    }

    /// Leaves a committed joint configuration (when `auto_leave_joint` is off).
    pub fn leave_joint(&mut self, now: Instant) -> Result<EntryId, ConfChangeError> {
        self.advance_clock(now);
        if self.role != Role::Leader || self.halted.is_some() {
            return Err(ConfChangeError::NotLeader { leader_hint: self.leader });
        }
        if !self.conf.is_joint() {
            return Err(ConfChangeError::Invalid("the configuration is not joint".into()));
        }
        if let Some(at) = self.conf_change_in_flight() {
            return Err(ConfChangeError::ChangeInFlight(at));
        }
        Ok(self.append_leave_joint())
    }

    /// Reports that the application took the snapshot asked for in [`Ready::take_snapshot`]
    /// (or one of its own, at an applied index) and persisted it. The core then compacts the
    /// log behind it, keeping `compaction_tail_entries`, and sends this snapshot to
    /// followers that need compacted entries.
    pub fn snapshot_taken(&mut self, now: Instant, meta: SnapshotMeta) {
        self.advance_clock(now);
        self.snapshot_requested = false;
        if meta.last.index > self.log.applied || !self.log.matches(meta.last) {
            return;
        }
        if self.snapshot.as_ref().is_some_and(|s| s.last.index >= meta.last.index) {
            return;
        }
        self.applied_since_snapshot = self.log.applied.distance_from(meta.last.index);
        // Bytes applied after the snapshot point are not tracked per entry; start afresh.
        self.applied_bytes_since_snapshot = 0;
        let compact_to = LogIndex(meta.last.index.0.saturating_sub(self.cfg.compaction_tail_entries));
        self.snapshot = Some(meta);
        if compact_to > self.log.floor().index && compact_to <= self.log.persisted {
            let Ok(term) = self.log.term(compact_to) else { return };
            let at = EntryId::new(term, compact_to);
            let config = self.conf_at(compact_to);
            self.rebase_configs(compact_to, config.clone());
            self.log.compact(at);
            self.pending_compact = Some(SnapshotMeta { last: at, config });
        }
    }

    /// Installs a snapshot received from the leader `from` of `term`, whose data the
    /// application has received completely, verified and staged. Returns `Ok(true)` if the
    /// snapshot is to be installed (it then appears in the next [`Persist::install`]; install
    /// the staged data with it), `Ok(false)` if this node already has everything it covers
    /// (discard the staged data).
    pub fn install_snapshot(
        &mut self,
        now: Instant,
        from: NodeId,
        term: Term,
        meta: SnapshotMeta,
    ) -> Result<bool, crate::types::SnapshotError> {
        self.advance_clock(now);
        if self.halted.is_some() {
            return Err(crate::types::SnapshotError::Halted);
        }
        if term < self.term {
            return Err(crate::types::SnapshotError::StaleTerm { term, current: self.term });
        }
        if term > self.term || self.role != Role::Follower {
            self.become_follower(term, Some(from));
        }
        self.heard_from_leader(from);
        if meta.last.index <= self.log.commit {
            let match_index = self.log.commit;
            self.send(from, MessageBody::AppendResponse(AppendResponse::Accepted { match_index }));
            return Ok(false);
        }
        let keeps_suffix = self.log.matches(meta.last);
        self.log.install_snapshot(meta.last);
        if keeps_suffix {
            self.rebase_configs(meta.last.index, meta.config.clone());
        } else {
            self.conf_history.clear();
            self.base_conf = meta.config.clone();
        }
        self.refresh_conf();
        self.applied_since_snapshot = 0;
        self.applied_bytes_since_snapshot = 0;
        self.pending_install = Some(meta.clone());
        self.snapshot = Some(meta.clone());
        let match_index = meta.last.index;
        self.send(from, MessageBody::AppendResponse(AppendResponse::Accepted { match_index }));
        Ok(true)
    }

    /// Reports that sending a snapshot to `to` failed; the leader probes it again.
    pub fn snapshot_send_failed(&mut self, now: Instant, to: NodeId) {
        self.advance_clock(now);
        if let Some(p) = self.peers.get_mut(&to)
            && p.state == ProgressState::Snapshot
        {
            p.become_probe();
        }
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
                    self.campaign(false, CampaignReason::Transfer);
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
            || (self.snapshot_wanted && !self.snapshot_requested)
            || !self.send_snapshots.is_empty()
            || self.pending_install.is_some()
            || self.pending_compact.is_some()
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
        let install = self.pending_install.take();
        let compact = self.pending_compact.take();
        let persist = if hs != self.handed_hs || !entries.is_empty() || install.is_some() || compact.is_some() {
            let sync = !entries.is_empty()
                || install.is_some()
                || hs.term != self.handed_hs.term
                || hs.vote != self.handed_hs.vote;
            let hard_state = (hs != self.handed_hs).then_some(hs);
            self.handed_hs = hs;
            self.io_issued = IoId(self.io_issued.0 + 1);
            self.io_batches.push_back((self.io_issued, entries.last().map(Entry::id)));
            Some(Persist { io: self.io_issued, hard_state, entries, sync, install, compact })
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
        self.applied_since_snapshot += committed.len() as u64;
        self.applied_bytes_since_snapshot += committed.iter().map(Entry::size_bytes).sum::<u64>();
        let entries_due = self.cfg.snapshot_entries_threshold > 0
            && self.applied_since_snapshot >= self.cfg.snapshot_entries_threshold;
        let bytes_due = self.cfg.snapshot_bytes_threshold > 0
            && self.applied_bytes_since_snapshot >= self.cfg.snapshot_bytes_threshold;
        if entries_due || bytes_due {
            self.request_snapshot();
        }
        self.log.check();
        Ready {
            persist,
            messages: std::mem::take(&mut self.msgs),
            committed,
            reads: std::mem::take(&mut self.reads_ready),
            failed_reads: std::mem::take(&mut self.reads_failed),
            take_snapshot: self.take_snapshot_request(),
            send_snapshots: std::mem::take(&mut self.send_snapshots),
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

    fn campaign(&mut self, pre_vote: bool, reason: CampaignReason) {
        let transfer = reason == CampaignReason::Transfer;
        let seq = self.last_campaign.map_or(0, |(n, _)| n) + 1;
        self.last_campaign = Some((seq, reason));
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
            self.campaign(false, CampaignReason::PreVotePassed);
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
            // Grants come at the term the pre-candidate would campaign in; refusals at the
            // voter's own term, which is usually the pre-candidate's current one.
            Role::PreCandidate => vr.pre_vote && (term == self.term.next() || (!vr.granted && term == self.term)),
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
        self.peers.clear();
        self.sync_peers();
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
        let is_config = if let EntryPayload::Config(c) = &payload {
            self.conf_history.push((index, c.clone()));
            true
        } else {
            false
        };
        self.log.push(Entry { index, term: self.term, payload });
        if is_config {
            self.refresh_conf();
        }
        self.uncommitted.push_back((index, size));
        self.uncommitted_bytes += size;
        id
    }

    // ----- internals: configurations and snapshots -----

    /// The index of an uncommitted configuration entry, or of a joint configuration not yet
    /// left: a new change must wait.
    fn conf_change_in_flight(&self) -> Option<LogIndex> {
        let (at, conf) = self.conf_history.last()?;
        (*at > self.log.commit || conf.is_joint()).then_some(*at)
    }

    fn append_leave_joint(&mut self) -> EntryId {
        let new = Configuration {
            voters: self.conf.voters.clone(),
            voters_outgoing: Default::default(),
            learners: self.conf.learners.clone(),
        };
        let size = ENTRY_OVERHEAD_BYTES + new.size_bytes();
        self.append_own(EntryPayload::Config(new), size)
    }

    /// The configuration in force at `index`.
    fn conf_at(&self, index: LogIndex) -> Configuration {
        self.conf_history
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .map_or_else(|| self.base_conf.clone(), |(_, c)| c.clone())
    }

    /// The log's floor moves to `index`, where `config` is in force.
    fn rebase_configs(&mut self, index: LogIndex, config: Configuration) {
        self.conf_history.retain(|(i, _)| *i > index);
        self.base_conf = config;
    }

    fn refresh_conf(&mut self) {
        let latest = self.conf_history.last().map_or(&self.base_conf, |(_, c)| c);
        if *latest == self.conf {
            // The common case, on every append: no allocation.
            return;
        }
        self.conf = latest.clone();
        if self.role == Role::Leader {
            self.sync_peers();
        }
    }

    /// Entries were written to the log from index `from` on (a truncated suffix is gone):
    /// configurations take effect when appended.
    fn on_log_written(&mut self, from: LogIndex, entries: &[Entry]) {
        self.conf_history.retain(|(i, _)| *i < from);
        for e in entries.iter().filter(|e| e.index >= from) {
            if let EntryPayload::Config(c) = &e.payload {
                self.conf_history.push((e.index, c.clone()));
            }
        }
        self.refresh_conf();
    }

    /// The leader tracks exactly the members of its configuration.
    fn sync_peers(&mut self) {
        let next = self.log.last_index().next();
        let members: Vec<NodeId> = self.conf.members().filter(|n| *n != self.id).collect();
        self.peers.retain(|id, _| members.contains(id));
        for m in members {
            self.peers.entry(m).or_insert_with(|| Progress::new(next));
        }
    }

    /// A follower needs entries that are compacted: send it the latest snapshot, or ask the
    /// application for one.
    fn start_snapshot(&mut self, to: NodeId) {
        let floor = self.log.floor().index;
        match self.snapshot.clone() {
            Some(meta) if meta.last.index >= floor => {
                let now = self.now;
                if let Some(p) = self.peers.get_mut(&to) {
                    p.become_snapshot(meta.last.index, now);
                }
                self.send_snapshots.push(SendSnapshot { to, meta });
            }
            _ => self.request_snapshot(),
        }
    }

    /// Asks the application for a snapshot; the request goes out at the end of the next
    /// `Ready`, at the index applied by then.
    fn request_snapshot(&mut self) {
        if !self.snapshot_requested {
            self.snapshot_wanted = true;
        }
    }

    fn take_snapshot_request(&mut self) -> Option<SnapshotMeta> {
        if !self.snapshot_wanted || self.snapshot_requested || self.log.applied == LogIndex::ZERO {
            return None;
        }
        let applied = self.log.applied;
        let term = self.log.term(applied).ok()?;
        self.snapshot_wanted = false;
        self.snapshot_requested = true;
        Some(SnapshotMeta { last: EntryId::new(term, applied), config: self.conf_at(applied) })
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
            Ok((last_new, written)) => {
                if let Some(from) = written {
                    self.on_log_written(from, &a.entries);
                }
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
                // Waiting for the snapshot's acknowledgement (or its timeout).
                ProgressState::Snapshot => {}
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
            Err(StorageError::Compacted(_)) => {
                self.start_snapshot(to);
                return false;
            }
            Err(e) => {
                self.halt(format!("reading term at {prev_index}: {e}"));
                return false;
            }
        };
        let entries = match self.log.entries(next, last.next(), self.cfg.msg_bytes_max) {
            Ok(e) => e,
            Err(StorageError::Compacted(_)) => {
                self.start_snapshot(to);
                return false;
            }
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
        self.after_config_commit();
        if first_in_term {
            let waiting = std::mem::take(&mut self.reads_awaiting_commit);
            for (rid, origin) in waiting {
                if self.leader_read(rid, origin).is_err() {
                    self.fail_read(rid, origin);
                }
            }
        }
    }

    /// Once a configuration entry commits: leave a joint configuration (if automatic), and a
    /// leader that is no longer a voter hands over and steps down.
    fn after_config_commit(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let Some((at, conf)) = self.conf_history.last() else { return };
        if *at > self.log.commit {
            return;
        }
        if conf.is_joint() {
            if self.cfg.auto_leave_joint {
                self.append_leave_joint();
            }
            return;
        }
        if !conf.is_voter(self.id) {
            // Hand over to the most caught-up voter, then step down.
            let best = self
                .peers
                .iter()
                .filter(|(n, _)| conf.is_voter(**n))
                .max_by_key(|(_, p)| p.match_index)
                .map(|(n, p)| (*n, p.match_index));
            if let Some((to, m)) = best
                && m == self.log.last_index()
            {
                self.send_timeout_now(to);
            }
            let term = self.term;
            self.become_follower(term, None);
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

/// Configuration entries in the log above its floor, read in bounded chunks at start-up.
fn scan_configs<S: LogStorage>(log: &RaftLog<S>) -> Result<Vec<(LogIndex, Configuration)>, StorageError> {
    const CHUNK_BYTES_MAX: u64 = 4 << 20;
    let mut out = Vec::new();
    let mut next = log.first_index();
    let end = log.last_index().next();
    while next < end {
        let chunk = log.entries(next, end, CHUNK_BYTES_MAX)?;
        let Some(last) = chunk.last() else { break };
        next = last.index.next();
        for e in &chunk {
            if let EntryPayload::Config(c) = &e.payload {
                out.push((e.index, c.clone()));
            }
        }
    }
    Ok(out)
}
