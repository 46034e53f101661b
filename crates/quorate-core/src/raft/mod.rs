//! The consensus state machine: [`Raft`], its inputs and its output ([`Ready`]).
//!
//! One type, split by concern: `election` (campaigns, votes, role changes), `replication`
//! (proposals, appends, heartbeats, commit), `membership` (configuration changes), `snapshot`
//! (taking, installing and sending snapshots), `reads` (ReadIndex and lease reads), `outbox`
//! (outgoing messages) and `image` (the core as data). This file holds the state, the
//! queries, the inputs that touch every concern (`handle_message`, `handle_timeout`,
//! `persisted`) and `ready`.

use crate::config::Config;
use crate::danger::Danger;
use crate::log::RaftLog;
use crate::message::{HeartbeatResponse, Message, MessageBody, ReadIndexResponse, VoteResponse};
use crate::progress::PeerProgress;
use crate::rng::SplitMix64;
use crate::types::{CoreError, Instant, IoId, ReadError, ReadFailed, ReadReady, Role, SendSnapshot};
use quorate_log::{
    Configuration, Entry, EntryPayload, HardState, LogIndex, LogStorage, NodeId, SnapshotMeta, StorageError, Term,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod election;
pub(crate) mod image;
mod membership;
use membership::Membership;
mod outbox;
use outbox::Outbox;
mod reads;
pub(crate) mod recovery;
use recovery::Recovery;
mod replication;
mod role;
use role::{Follower, Leader, RoleState};
mod snapshot;

/// What the application must do next, produced by [`Raft::ready`].
///
/// Handle it in this order: start persisting `persist` (and report it with
/// [`Raft::persisted`] once it is on stable storage — it may proceed in parallel with the
/// rest), send `messages`, apply `committed` in order, serve `reads` once applied ≥ their
/// index, and fail `failed_reads`. Every message here may be sent at once: each message is
/// held back by the core until what it depends on (its sender's term and vote, and for an
/// append acknowledgement the log up to the acknowledged index) is reported persisted.
/// Committed entries above a snapshot install ([`Persist::install`]) are handed out only once
/// the batch carrying the install is reported persisted: install the snapshot's state-machine
/// data before applying anything handed out after that report.
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
    /// The core has left recovery from lost synced state ([`Config::recovering`]): its log,
    /// term and vote are durable again and it votes and campaigns as usual. Drop the evidence
    /// of the loss durably (the next start passes no `recovering`). Reported once.
    pub recovered: bool,
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
            && !self.recovered
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
    /// The role and the state only it has.
    role: RoleState,
    /// The configuration in force at each index of the log.
    membership: Membership,
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

    /// When a non-leader campaigns next (unless it hears from a leader first).
    election_deadline: Instant,
    /// When this node last heard from a leader (or started): the start of its lease promise.
    last_leader_contact: Option<Instant>,
    /// Campaigns started so far, and the reason of the latest.
    last_campaign: Option<(u64, CampaignReason)>,

    // Outputs.
    /// Messages made, free to leave or held until what they depend on is durable.
    outbox: Outbox,
    reads_ready: Vec<ReadReady>,
    reads_failed: Vec<ReadFailed>,
    io_issued: IoId,
    io_persisted: IoId,
    handed_hs: HardState,
    /// The batch that carries the term and vote of `handed_hs`.
    hs_io: IoId,
    /// Recovery from lost synced state, while it lasts (see `recovery`).
    recovery: Option<Recovery>,
    /// The core left recovery and has not reported it in a `Ready` yet.
    recovered_unreported: bool,
    /// Holes of issue 16 switched back on (tests only; see `crate::danger`). Not part of an
    /// image.
    #[serde(skip)]
    danger: Danger,
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
        let snapshot = cfg.snapshot.clone().filter(|m| m.last.index <= log.commit);
        // Entries (and their bytes) the (persistent) state machine applied since the latest
        // snapshot (else since the log's floor) count toward the next one: a node restarted
        // more often than it applies a threshold's worth would otherwise never take one.
        let since = snapshot.as_ref().map_or(log.floor().index, |m| m.last.index);
        let applied_since_snapshot = log.applied.distance_from(since);
        let scan = scan_log(&log, since)?;
        let membership = Membership::new(log.floor().index, base_conf, scan.configs);
        let mut r = Raft {
            id: cfg.id,
            rng: SplitMix64::new(cfg.seed ^ 0x0051_554f_5241_5445),
            log,
            term: hs.term,
            vote: hs.vote,
            role: RoleState::Follower(Follower::default()),
            membership,
            snapshot,
            applied_since_snapshot,
            applied_bytes_since_snapshot: scan.applied_bytes_since,
            snapshot_requested: false,
            pending_install: None,
            pending_compact: None,
            send_snapshots: Vec::new(),
            snapshot_wanted: false,
            now,
            halted: None,
            election_deadline: now,
            // Until an election timeout has passed since start, act as if a leader was just
            // heard from: a restarted voter must not help depose a leader whose lease it may
            // have granted before the crash.
            last_leader_contact: Some(now),
            last_campaign: None,
            outbox: Outbox::default(),
            reads_ready: Vec::new(),
            reads_failed: Vec::new(),
            io_issued: IoId(0),
            io_persisted: IoId(0),
            handed_hs: hs,
            hs_io: IoId(0),
            recovery: None,
            recovered_unreported: false,
            danger: Danger::default(),
            cfg,
        };
        if let Some(record) = r.cfg.recovering {
            r.start_recovery(record);
        }
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
        self.role.role()
    }

    /// Current term.
    #[must_use]
    pub fn term(&self) -> Term {
        self.term
    }

    /// The leader this node knows of.
    #[must_use]
    pub fn leader(&self) -> Option<NodeId> {
        match &self.role {
            RoleState::Follower(f) => f.leader,
            RoleState::Leader(_) => Some(self.id),
            RoleState::PreCandidate(_) | RoleState::Candidate(_) => None,
        }
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
        self.leader_state().map_or(0, |l| l.uncommitted_bytes)
    }

    /// The most entry bytes in flight to one follower (leader only; zero otherwise). A
    /// read-only signal for admission control.
    #[must_use]
    pub fn peer_inflight_bytes_max(&self) -> u64 {
        self.leader_state().and_then(|l| l.peers.values().map(|p| p.snapshot().inflight_bytes).max()).unwrap_or(0)
    }

    /// The configuration in force.
    #[must_use]
    pub fn configuration(&self) -> &Configuration {
        self.membership.latest()
    }

    /// The configuration version: the index of the entry that set the configuration in
    /// force, or the log's floor if that entry was compacted (0 for the bootstrap one).
    #[must_use]
    pub fn config_version(&self) -> LogIndex {
        self.membership.latest_index()
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
            role: self.role(),
            term: self.term,
            vote: self.vote,
            leader: self.leader(),
            commit: self.log.commit,
            applied: self.log.applied,
            last_index: self.log.last_index(),
            persisted_index: self.log.persisted,
            config: self.conf().clone(),
            config_version: self.config_version(),
            snapshot_index: self.snapshot.as_ref().map_or(LogIndex::ZERO, |m| m.last.index),
            first_index: self.log.first_index(),
            peers: self
                .leader_state()
                .map(|l| l.peers.iter().map(|(id, p)| (*id, p.snapshot())).collect())
                .unwrap_or_default(),
            uncommitted_bytes: self.uncommitted_bytes(),
            halted: self.halted.clone(),
        }
    }

    /// When [`handle_timeout`](Raft::handle_timeout) should next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.halted.is_some() {
            return None;
        }
        match &self.role {
            RoleState::Leader(l) => {
                let mut t = l.heartbeat_deadline.min(l.check_quorum_deadline);
                if let Some((_, d)) = l.transferee {
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
        if let RoleState::Leader(l) = &mut self.role {
            if now >= l.heartbeat_deadline {
                l.heartbeat_pending = true;
                l.heartbeat_deadline = now.saturating_add(self.cfg.heartbeat_interval);
            }
            if now >= l.check_quorum_deadline {
                l.check_quorum_deadline = now.saturating_add(self.cfg.election_timeout_min);
                if self.cfg.check_quorum {
                    let id = self.id;
                    let peers = &l.peers;
                    let active = self
                        .membership
                        .latest()
                        .has_quorum(|n| n == id || peers.get(&n).is_some_and(|p| p.recent_active));
                    for p in l.peers.values_mut() {
                        p.recent_active = false;
                    }
                    if !active {
                        let term = self.term;
                        self.become_follower(term, None);
                        return;
                    }
                }
            }
            if let Some((_, deadline)) = l.transferee
                && now >= deadline
            {
                l.transferee = None;
            }
            let timeout = self.cfg.snapshot_send_timeout;
            for p in l.peers.values_mut() {
                if p.snapshot.is_some_and(|(_, sent)| now.saturating_since(sent) >= timeout) {
                    p.become_probe();
                }
            }
        } else {
            if let RoleState::Follower(f) = &mut self.role {
                let expiry = self.cfg.election_timeout_min * 2;
                let failed = &mut self.reads_failed;
                f.forwarded_reads.retain(|(id, sent)| {
                    let keep = now.saturating_since(*sent) < expiry;
                    if !keep {
                        failed.push(ReadFailed { id: *id, error: ReadError::LeadershipLost });
                    }
                    keep
                });
            }
            if now >= self.election_deadline {
                if self.may_campaign() {
                    let reason = if self.leader().is_some() {
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
        self.log.on_persisted(io);
        self.io_persisted = io;
        self.outbox.release(io);
        if self.is_leader() {
            self.maybe_commit();
        }
        self.maybe_leave_recovery();
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
                // Only a leader confirms a read; a refusal may come from any node (one that is
                // not the leader answers a forwarded read with a refusal at its own term).
                MessageBody::ReadIndexResponse(r) => {
                    let leader = r.index.is_some().then_some(m.from);
                    self.become_follower(m.term, leader);
                }
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
                if !matches!(self.role, RoleState::Follower(_)) {
                    self.become_follower(term, Some(from));
                }
                self.heard_from_leader(from);
                self.handle_append(from, term, a);
            }
            MessageBody::Heartbeat(hb) => {
                if !matches!(self.role, RoleState::Follower(_)) {
                    self.become_follower(term, Some(from));
                }
                self.heard_from_leader(from);
                let mut commit = hb.commit.min(self.log.last_index());
                if self.is_recovering() {
                    // A heartbeat proves nothing about this log; only what a leader of this
                    // term verified may be committed (see `recovery`).
                    match self.recovery_verified() {
                        Some(v) => commit = commit.min(v),
                        None => {
                            commit = commit.min(self.log.commit);
                            self.reject_unverified(from);
                        }
                    }
                }
                if let Err(e) = self.log.commit_to(commit) {
                    self.halt(format!("heartbeat from {from} at term {term}: {e}"));
                    return;
                }
                self.send(from, MessageBody::HeartbeatResponse(HeartbeatResponse { seq: hb.seq }));
            }
            MessageBody::TimeoutNow => {
                if !self.is_leader() && self.may_campaign() {
                    self.campaign(false, CampaignReason::Transfer);
                }
            }
            MessageBody::AppendResponse(r) => self.handle_append_response(from, r),
            MessageBody::HeartbeatResponse(r) => self.handle_heartbeat_response(from, r.seq),
            MessageBody::ReadIndex(r) => {
                if self.is_leader() {
                    if self.leader_read(r.id, Some(from)).is_err() {
                        self.send(from, MessageBody::ReadIndexResponse(ReadIndexResponse { id: r.id, index: None }));
                    }
                } else {
                    self.send(from, MessageBody::ReadIndexResponse(ReadIndexResponse { id: r.id, index: None }));
                }
            }
            MessageBody::ReadIndexResponse(r) => {
                let RoleState::Follower(f) = &mut self.role else { return };
                if let Some(pos) = f.forwarded_reads.iter().position(|(id, _)| *id == r.id) {
                    f.forwarded_reads.swap_remove(pos);
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
        self.outbox.has_ready()
            || self.log.has_unhanded()
            || self.hard_state() != self.handed_hs
            || self.log.has_committed_to_apply()
            || !self.reads_ready.is_empty()
            || !self.reads_failed.is_empty()
            || self.snapshot_due()
            || !self.send_snapshots.is_empty()
            || self.pending_install.is_some()
            || self.pending_compact.is_some()
            || self.recovered_unreported
            || self.leader_state().is_some_and(|l| l.heartbeat_pending || self.leader_has_sends(l))
    }

    /// Collects what the application must do now. Its one protocol step comes first: the
    /// leader turns what the inputs since the previous `Ready` made due into messages — a
    /// heartbeat round (timer, or reads waiting for confirmation) and the appends each
    /// follower's window allows — once per `Ready`, so that they batch (`flush`). Then it
    /// only hands out: the next persist batch, the messages free to leave (each held until
    /// what it depends on is durable), committed entries to apply, read results, snapshot
    /// requests and transfers.
    pub fn ready(&mut self) -> Ready {
        if self.halted.is_some() {
            return Ready::default();
        }
        self.flush();
        let persist = self.take_persist();
        let committed = self.take_committed();
        self.log.check();
        Ready {
            persist,
            messages: self.outbox.take(),
            committed,
            reads: std::mem::take(&mut self.reads_ready),
            failed_reads: std::mem::take(&mut self.reads_failed),
            take_snapshot: self.take_snapshot_request(),
            send_snapshots: std::mem::take(&mut self.send_snapshots),
            recovered: std::mem::take(&mut self.recovered_unreported),
        }
    }

    /// The next persist batch, if the hard state, the log, a snapshot install or a compaction
    /// changed since the last one.
    fn take_persist(&mut self) -> Option<Persist> {
        let hs = self.hard_state();
        let install = self.pending_install.take();
        let compact = self.pending_compact.take();
        if hs == self.handed_hs && !self.log.has_unhanded() && install.is_none() && compact.is_none() {
            return None;
        }
        let io = IoId(self.io_issued.0 + 1);
        let entries = self.log.hand_out(
            io,
            install.as_ref().map(|m| m.last),
            self.cfg.persist_entries_max,
            self.cfg.persist_bytes_max,
        );
        self.outbox.handed_out(io, self.log.handed());
        // A batch's commit index never passes its entries: the rest of the log goes out in
        // later batches, and storage holds no commit beyond what it holds.
        let mut hs = hs;
        hs.commit = hs.commit.min(self.log.handed());
        let term_or_vote = (hs.term, hs.vote) != (self.handed_hs.term, self.handed_hs.vote);
        // Only a commit index is safe to lose: anything else must be durable when reported.
        let sync = !entries.is_empty() || install.is_some() || term_or_vote;
        let hard_state = (hs != self.handed_hs).then_some(hs);
        if term_or_vote {
            self.hs_io = io;
        }
        self.handed_hs = hs;
        self.io_issued = io;
        Some(Persist { io, hard_state, entries, sync, install, compact })
    }

    /// Committed, persisted entries to apply (at most `apply_bytes_max` of them), counted
    /// toward the snapshot thresholds: a snapshot is asked for once one is due.
    fn take_committed(&mut self) -> Vec<Entry> {
        let committed = match self.log.take_committed(self.cfg.apply_bytes_max) {
            Ok(c) => c,
            Err(e) => {
                self.halt(format!("reading committed entries: {e}"));
                return Vec::new();
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
        committed
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
            self.role = RoleState::Follower(Follower::default());
        }
    }

    fn reset_election_deadline(&mut self) {
        let base = self.cfg.election_timeout_min.as_nanos().min(u128::from(u64::MAX)) as u64;
        let jitter = self.rng.below(base);
        self.election_deadline = Instant(self.now.0.saturating_add(base).saturating_add(jitter));
    }

    /// Switches `hole` of issue 16 back on in this core (and in nothing else): the old
    /// buggy behaviour, for the simulator and the model checker to show that they catch it.
    /// Never use it outside such a test. Not part of a [`CoreImage`](image::CoreImage).
    #[cfg(feature = "danger-reintroduce-holes")]
    #[doc(hidden)]
    pub fn danger_reintroduce(&mut self, hole: crate::danger::Hole) {
        let hole = crate::danger::HoleId::from(hole);
        self.danger.add(hole);
        self.log.danger.add(hole);
        if hole == crate::danger::HoleId::LostStateIgnored {
            self.danger_ignore_lost_state();
        }
    }

    /// Whether this node leads its term.
    fn is_leader(&self) -> bool {
        matches!(self.role, RoleState::Leader(_))
    }

    /// The leader's state, if this node leads.
    fn leader_state(&self) -> Option<&Leader> {
        match &self.role {
            RoleState::Leader(l) => Some(l),
            _ => None,
        }
    }

    /// The leader's state, if this node leads.
    fn leader_state_mut(&mut self) -> Option<&mut Leader> {
        match &mut self.role {
            RoleState::Leader(l) => Some(l),
            _ => None,
        }
    }

    // ----- internals: reads -----
}

/// What a start learns from one pass over the stored log.
struct LogScan {
    /// The configuration entries, in log order.
    configs: Vec<(LogIndex, Configuration)>,
    /// Bytes (as [`Entry::size_bytes`] counts them) of the entries after the scan's `since`
    /// index up to the state machine's applied index.
    applied_bytes_since: u64,
}

/// Reads the stored log once, in bounded chunks: its configuration entries, and the bytes
/// applied after `since` (the latest snapshot's index).
fn scan_log<S: LogStorage>(log: &RaftLog<S>, since: LogIndex) -> Result<LogScan, StorageError> {
    const CHUNK_BYTES_MAX: u64 = 4 << 20;
    let mut out = LogScan { configs: Vec::new(), applied_bytes_since: 0 };
    let mut next = log.first_index();
    let end = log.last_index().next();
    while next < end {
        let chunk = log.entries(next, end, CHUNK_BYTES_MAX)?;
        let Some(last) = chunk.last() else { break };
        next = last.index.next();
        for e in &chunk {
            if let EntryPayload::Config(c) = &e.payload {
                out.configs.push((e.index, c.clone()));
            }
            if e.index > since && e.index <= log.applied {
                out.applied_bytes_since = out.applied_bytes_since.saturating_add(e.size_bytes());
            }
        }
    }
    Ok(out)
}
