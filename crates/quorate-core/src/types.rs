//! Small value types of the core's API: time, ids for reads and I/O, read levels, errors.

use quorate_log::{LogIndex, NodeId, StorageError, Term};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// A point on the caller's monotonic clock, in nanoseconds from an arbitrary origin.
///
/// The core never reads a clock: every input carries `now`. A driver converts its
/// `std::time::Instant` (or the simulator its virtual time) into this.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Instant(pub u64);

impl Instant {
    /// The origin.
    pub const ZERO: Instant = Instant(0);

    /// Nanoseconds since the origin.
    #[must_use]
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating.
    #[must_use]
    pub fn saturating_add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(d.as_nanos().min(u128::from(u64::MAX)) as u64))
    }

    /// Time from `earlier` to `self` (zero if `earlier` is later).
    #[must_use]
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Debug for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0 / 1_000_000)
    }
}

/// The caller's identifier for a read request, echoed in its result.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct ReadId(pub u64);

/// Identifies one batch of state handed to the application to persist. Batches must be
/// persisted, and reported with [`crate::Raft::persisted`], in the order they were handed out.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize)]
pub struct IoId(pub u64);

/// How strongly a read is ordered. `stale` reads never reach the core: the application
/// serves them from its local state.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ReadLevel {
    /// ReadIndex: the leader confirms with a quorum that it is still leader, then the read
    /// is served once the state machine has applied the returned index. The default.
    Linearizable,
    /// Leader lease: served by the leader without a round trip while its lease (based on
    /// check-quorum and the configured clock-drift bound) holds; otherwise like
    /// `Linearizable`. Only on the leader, and only when enabled in [`crate::Config`].
    Lease,
}

/// The role a node currently plays.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asking for pre-votes: would it win an election? (changes no durable state)
    PreCandidate,
    /// Campaigning in a new term.
    Candidate,
    /// Leads the current term.
    Leader,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        })
    }
}

/// Why a proposal was refused. Nothing was appended when this is returned.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProposeError {
    /// Only the leader accepts proposals.
    #[error("not the leader; the leader is {}", fmt_hint(*leader_hint))]
    NotLeader {
        /// The leader this node knows of, if any.
        leader_hint: Option<NodeId>,
    },
    /// Too many bytes are appended but not yet committed; retry after some commit.
    #[error("uncommitted bytes {uncommitted_bytes} + {proposal_bytes} would exceed the limit {limit_bytes}")]
    UncommittedLimit {
        /// Bytes appended but not committed.
        uncommitted_bytes: u64,
        /// Size of the refused proposal.
        proposal_bytes: u64,
        /// The configured limit.
        limit_bytes: u64,
    },
    /// The proposal alone is larger than a message may be.
    #[error("proposal of {proposal_bytes} bytes exceeds the maximum of {limit_bytes}")]
    TooLarge {
        /// Size of the refused proposal.
        proposal_bytes: u64,
        /// The configured limit.
        limit_bytes: u64,
    },
    /// Leadership is being handed over; proposals wait for the new leader.
    #[error("leadership transfer to {0} in progress")]
    TransferInProgress(NodeId),
    /// The node stopped after a storage failure.
    #[error("node halted: {0}")]
    Halted(String),
}

fn fmt_hint(n: Option<NodeId>) -> String {
    n.map_or_else(|| "unknown".to_owned(), |n| n.to_string())
}

/// Why a read request was refused or failed.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ReadError {
    /// No leader is known to forward the read to.
    #[error("no known leader to confirm the read")]
    NoLeader,
    /// Lease reads are served by the leader only.
    #[error("lease reads are served by the leader only; the leader is {}", fmt_hint(*leader_hint))]
    NotLeader {
        /// The leader this node knows of, if any.
        leader_hint: Option<NodeId>,
    },
    /// Lease reads are not enabled (they need check-quorum and a clock-drift bound).
    #[error("lease reads are not enabled on this node")]
    LeaseDisabled,
    /// Leadership changed before the read was confirmed; retry.
    #[error("leadership changed before the read was confirmed")]
    LeadershipLost,
    /// Too many reads are waiting for confirmation.
    #[error("too many pending reads (limit {0})")]
    TooManyPending(usize),
    /// The node stopped after a storage failure.
    #[error("node halted")]
    Halted,
}

/// Why a leadership transfer was refused.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// Only the leader can transfer leadership.
    #[error("not the leader")]
    NotLeader,
    /// The target is not a voter of the current configuration.
    #[error("node {0} is not a voter")]
    NotAVoter(NodeId),
    /// The target is this node.
    #[error("node {0} is already the leader")]
    AlreadyLeader(NodeId),
}

/// Errors creating a core.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Reading the initial state failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Result of a confirmed read: serve it once the state machine has applied `index`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ReadReady {
    /// The caller's id.
    pub id: ReadId,
    /// Wait until applied ≥ this index, then read.
    pub index: LogIndex,
}

/// A read that cannot be confirmed; the caller should retry (possibly elsewhere).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ReadFailed {
    /// The caller's id.
    pub id: ReadId,
    /// Why.
    pub error: ReadError,
}

/// A membership change, proposed with [`crate::Raft::propose_conf_change`]. Changes of the
/// voter set go through a joint configuration (old and new voters both form quorums) and
/// leave it once it commits; learner-only changes take one step.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ConfChange {
    /// Add a non-voting member that receives the log.
    AddLearner(NodeId),
    /// Make a learner a voter (refused while it is far behind).
    Promote(NodeId),
    /// Remove a member (voter or learner), including the leader itself: it keeps leading until
    /// the change commits, then hands over and steps down.
    Remove(NodeId),
    /// Replace voter `old` with `new`, a caught-up learner, in one joint change.
    Replace {
        /// The voter leaving.
        old: NodeId,
        /// The learner taking its place.
        new: NodeId,
    },
}

/// Why a membership change was refused. Nothing was appended when this is returned.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfChangeError {
    /// Only the leader changes the configuration.
    #[error("not the leader; the leader is {}", fmt_hint(*leader_hint))]
    NotLeader {
        /// The leader this node knows of.
        leader_hint: Option<NodeId>,
    },
    /// A change is already in flight (at most one at a time).
    #[error("a configuration change is already in flight at index {0}")]
    ChangeInFlight(LogIndex),
    /// The node is already a member (or already a voter, for a promotion).
    #[error("node {0} is already a member in that role")]
    AlreadyMember(NodeId),
    /// The node is not a member (or not a learner, for a promotion or replacement).
    #[error("node {0} is not a member in the required role")]
    NotMember(NodeId),
    /// The learner is too far behind to become a voter safely.
    #[error("node {node} is {behind} entries behind (at most {max} allowed); let it catch up first")]
    TooFarBehind {
        /// The learner.
        node: NodeId,
        /// How far behind it is.
        behind: u64,
        /// The limit.
        max: u64,
    },
    /// With the nodes currently reachable, the new configuration could not form a quorum.
    #[error("the new configuration would have no quorum among the nodes heard from recently")]
    WouldLoseQuorum,
    /// The change would leave no voters or break a structural rule.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// Leadership is being handed over.
    #[error("leadership transfer in progress")]
    TransferInProgress,
    /// The node stopped after a storage failure.
    #[error("node halted")]
    Halted,
}

/// Instructions to send the application's snapshot to a follower that needs compacted
/// entries. Stream it out of band (chunked); on the follower, the application verifies and
/// stages the data, then calls [`crate::Raft::install_snapshot`].
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SendSnapshot {
    /// The follower.
    pub to: NodeId,
    /// The snapshot to send (the application's latest).
    pub meta: quorate_log::SnapshotMeta,
}

/// Why a snapshot could not be installed.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The snapshot comes from a leader of an older term.
    #[error("snapshot from term {term}, but this node is in term {current}")]
    StaleTerm {
        /// The sender's term.
        term: Term,
        /// This node's term.
        current: Term,
    },
    /// The node stopped after a storage failure.
    #[error("node halted")]
    Halted,
}
