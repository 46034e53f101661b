//! The role a node plays and the state that belongs to it alone. A role change replaces the
//! whole [`RoleState`] (see `Raft::set_role`), so no role's data outlives the role: a new
//! leader starts with fresh progress, reads and heartbeat rounds by construction, and what a
//! role still owed (reads waiting for confirmation) is settled as it ends.

use crate::progress::Progress;
use crate::types::{Instant, ReadId, Role};
use quorate_log::{LogIndex, NodeId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// Heartbeat rounds whose send time is remembered, for lease accounting.
pub(super) const HEARTBEAT_ROUNDS_REMEMBERED: usize = 64;

/// A node's role and the state that only that role has.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) enum RoleState {
    /// Follows a leader (or waits for one).
    Follower(Follower),
    /// Asks for pre-votes.
    PreCandidate(Campaign),
    /// Campaigns in its own term, having voted for itself.
    Candidate(Campaign),
    /// Leads its term.
    Leader(Box<Leader>),
}

impl RoleState {
    /// The public name of the role.
    pub(super) fn role(&self) -> Role {
        match self {
            RoleState::Follower(_) => Role::Follower,
            RoleState::PreCandidate(_) => Role::PreCandidate,
            RoleState::Candidate(_) => Role::Candidate,
            RoleState::Leader(_) => Role::Leader,
        }
    }
}

/// A follower's state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct Follower {
    /// The leader of the current term, once heard from.
    pub(super) leader: Option<NodeId>,
    /// Reads forwarded to that leader, with the time they were sent.
    pub(super) forwarded_reads: Vec<(ReadId, Instant)>,
}

/// A (pre-)candidate's state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Campaign {
    /// Answers received, this node's own included.
    pub(super) votes: BTreeMap<NodeId, bool>,
}

/// A read waiting for a heartbeat round to reach a quorum.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct PendingRead {
    pub(super) id: ReadId,
    /// `None`: a local read; `Some(peer)`: forwarded by a follower.
    pub(super) origin: Option<NodeId>,
    /// The heartbeat round that must reach a quorum.
    pub(super) seq: u64,
    pub(super) index: LogIndex,
}

/// A leader's state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Leader {
    /// Replication progress of every other member.
    pub(super) peers: BTreeMap<NodeId, Progress>,
    /// Entries appended in this term and not committed yet: (index, bytes), in index order.
    pub(super) uncommitted: VecDeque<(LogIndex, u64)>,
    pub(super) uncommitted_bytes: u64,
    /// A leadership transfer in progress: the target and when it is abandoned.
    pub(super) transferee: Option<(NodeId, Instant)>,
    /// `TimeoutNow` went out: no more lease reads in this term.
    pub(super) timeout_now_sent: bool,
    /// The latest heartbeat round.
    pub(super) hb_seq: u64,
    /// Send times of the latest heartbeat rounds (at most `HEARTBEAT_ROUNDS_REMEMBERED`).
    pub(super) hb_sent_at: VecDeque<(u64, Instant)>,
    /// A heartbeat round is due (timer, or a read waiting for confirmation).
    pub(super) heartbeat_pending: bool,
    pub(super) heartbeat_deadline: Instant,
    pub(super) check_quorum_deadline: Instant,
    /// Reads waiting for a heartbeat round to reach a quorum, in round order.
    pub(super) pending_reads: VecDeque<PendingRead>,
    /// Reads waiting for the first commit of this term.
    pub(super) reads_awaiting_commit: Vec<(ReadId, Option<NodeId>)>,
}

impl Leader {
    /// A leader elected at `now`.
    pub(super) fn new(
        now: Instant,
        heartbeat_interval: std::time::Duration,
        election_timeout_min: std::time::Duration,
    ) -> Leader {
        Leader {
            peers: BTreeMap::new(),
            uncommitted: VecDeque::new(),
            uncommitted_bytes: 0,
            transferee: None,
            timeout_now_sent: false,
            hb_seq: 0,
            hb_sent_at: VecDeque::new(),
            heartbeat_pending: false,
            heartbeat_deadline: now.saturating_add(heartbeat_interval),
            check_quorum_deadline: now.saturating_add(election_timeout_min),
            pending_reads: VecDeque::new(),
            reads_awaiting_commit: Vec::new(),
        }
    }

    /// Every read this leader still owes an answer, in the order they came.
    pub(super) fn take_reads(&mut self) -> Vec<(ReadId, Option<NodeId>)> {
        self.pending_reads.drain(..).map(|r| (r.id, r.origin)).chain(self.reads_awaiting_commit.drain(..)).collect()
    }
}
