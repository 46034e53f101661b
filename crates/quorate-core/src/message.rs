//! Messages between cores. Serializable with serde; variant order is part of the wire format
//! and is append-only.

use crate::types::ReadId;
use quorate_log::{Entry, EntryId, LogIndex, NodeId, Term};
use serde::{Deserialize, Serialize};

/// A message from one core to another.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Message {
    /// Sender.
    pub from: NodeId,
    /// Recipient.
    pub to: NodeId,
    /// The sender's term (for a pre-vote request: the term it would campaign in).
    pub term: Term,
    /// What it says.
    pub body: MessageBody,
}

/// The kinds of messages. Append-only: never reorder or remove a variant.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MessageBody {
    /// Leader → follower: entries following `prev`, and the leader's commit index.
    Append(Append),
    /// Follower → leader: the result of an `Append`.
    AppendResponse(AppendResponse),
    /// Leader → follower: "I am still leader", with a sequence number used to confirm reads.
    Heartbeat(Heartbeat),
    /// Follower → leader: acknowledges a heartbeat.
    HeartbeatResponse(HeartbeatResponse),
    /// Candidate (or pre-candidate) → voter.
    RequestVote(RequestVote),
    /// Voter → candidate.
    VoteResponse(VoteResponse),
    /// Leader → transfer target: campaign now, without waiting for a timeout.
    TimeoutNow,
    /// Follower → leader: confirm a linearizable read for me.
    ReadIndex(ReadIndexRequest),
    /// Leader → follower: the read index (or a failure) for a forwarded read.
    ReadIndexResponse(ReadIndexResponse),
}

impl MessageBody {
    /// A short name for logs and metrics.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            MessageBody::Append(_) => "append",
            MessageBody::AppendResponse(_) => "append-response",
            MessageBody::Heartbeat(_) => "heartbeat",
            MessageBody::HeartbeatResponse(_) => "heartbeat-response",
            MessageBody::RequestVote(v) if v.pre_vote => "pre-vote",
            MessageBody::RequestVote(_) => "vote",
            MessageBody::VoteResponse(v) if v.pre_vote => "pre-vote-response",
            MessageBody::VoteResponse(_) => "vote-response",
            MessageBody::TimeoutNow => "timeout-now",
            MessageBody::ReadIndex(_) => "read-index",
            MessageBody::ReadIndexResponse(_) => "read-index-response",
        }
    }
}

/// Replicates entries.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Append {
    /// The entry immediately before `entries`; the follower must hold it to accept.
    pub prev: EntryId,
    /// Entries to append (possibly none: a probe).
    pub entries: Vec<Entry>,
    /// The leader's commit index.
    pub commit: LogIndex,
}

/// Answer to an [`Append`].
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum AppendResponse {
    /// The follower's log matches the leader's up to `match_index` (and it is persisted).
    Accepted {
        /// Highest index known to match the leader's log.
        match_index: LogIndex,
    },
    /// The follower does not hold `prev`; a hint lets the leader skip a whole term.
    Rejected {
        /// The `prev.index` that was rejected.
        rejected: LogIndex,
        /// The largest index ≤ `rejected` at which the follower's term is ≤ `prev.term`.
        hint: EntryId,
    },
}

/// Leader liveness and read confirmation.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The leader's commit index, capped at what the follower is known to hold.
    pub commit: LogIndex,
    /// Sequence number of this heartbeat round.
    pub seq: u64,
}

/// Acknowledges a heartbeat round.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// The acknowledged round.
    pub seq: u64,
}

/// Asks for a vote (or a pre-vote).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RequestVote {
    /// A pre-vote changes no state on either side.
    pub pre_vote: bool,
    /// The candidate's last log entry.
    pub last: EntryId,
    /// Sent because the leader handed over (bypasses the voters' leader-lease check).
    pub transfer: bool,
}

/// Answers a vote request.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct VoteResponse {
    /// Answers a pre-vote.
    pub pre_vote: bool,
    /// Whether the vote is granted.
    pub granted: bool,
}

/// A read forwarded to the leader.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ReadIndexRequest {
    /// The follower's read id.
    pub id: ReadId,
}

/// The leader's answer to a forwarded read.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ReadIndexResponse {
    /// The follower's read id.
    pub id: ReadId,
    /// The read index, or `None` if the leader could not confirm the read.
    pub index: Option<LogIndex>,
}
