//! The runtime's errors.

use quorate_log::NodeId;

/// Why a request to the runtime failed.
///
/// Each variant says whether the request **may have taken effect**: see
/// [`Error::outcome_unknown`]. A definite failure can be retried freely; after an unknown
/// outcome only a session command (retried with the same sequence number) is safe to retry —
/// in the runtime's session, or in the state machine's own when it owns its format
/// ([`crate::StateMachine::ENVELOPE`] `= false`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// This node is not the leader; nothing was appended. Retry on the leader.
    #[error("not the leader; the leader is {}", leader_hint.map_or_else(|| "unknown".to_owned(), |n| n.to_string()))]
    NotLeader {
        /// The leader this node knows of, if any.
        leader_hint: Option<NodeId>,
    },
    /// The core refused the proposal (too large, too many uncommitted bytes, a transfer in
    /// progress); nothing was appended.
    #[error(transparent)]
    Propose(#[from] quorate_core::ProposeError),
    /// The read could not be confirmed; retry.
    #[error(transparent)]
    Read(#[from] quorate_core::ReadError),
    /// The membership change was refused; nothing was appended.
    #[error(transparent)]
    ConfChange(#[from] quorate_core::ConfChangeError),
    /// The leadership transfer was refused.
    #[error(transparent)]
    Transfer(#[from] quorate_core::TransferError),
    /// A bounded queue of the runtime is full; nothing was done.
    #[error("too many pending {what} (limit {limit})")]
    Busy {
        /// Which queue.
        what: &'static str,
        /// Its bound.
        limit: usize,
    },
    /// The entry was appended but another leader's entry was applied at its index: it was
    /// **not** applied and never will be.
    #[error("the proposal was overwritten by another leader's entry; it was not applied")]
    Dropped,
    /// The entry was appended, but this node can no longer tell whether it was applied (it
    /// installed a snapshot covering the index, stopped, or — leading again after its log was
    /// cut back — proposed another entry at the index, while a member that holds this one may
    /// still lead and commit it). It may have been applied.
    #[error("the proposal's outcome is unknown")]
    OutcomeUnknown,
    /// The session is not (or no longer) in the session table: it was evicted or never
    /// opened. Nothing was applied; open a new session.
    #[error("the client session has expired")]
    SessionExpired,
    /// A session command older than the session's last applied one: its output is gone.
    #[error("sequence number older than the session's last applied command")]
    StaleSequence,
    /// A session was asked of a state machine that keeps its own
    /// ([`crate::StateMachine::ENVELOPE`] is `false`): nothing was appended.
    #[error("this state machine keeps its own sessions: the runtime's are off")]
    SessionsOff,
    /// The runtime could not decode a committed command (written by a newer version).
    #[error("the committed command could not be decoded")]
    Undecodable,
    /// The node halted after a storage failure or a broken contract; it serves nothing more.
    #[error("node halted: {0}")]
    Halted(String),
    /// The node was shut down.
    #[error("node shut down")]
    Shutdown,
    /// Storage failed while serving the request.
    #[error("storage: {0}")]
    Storage(#[from] quorate_log::StorageError),
    /// The request needs the state machine, which runs elsewhere
    /// ([`crate::Replica::detach_applier`]): ask in a way that waits for it.
    #[error("the state machine runs elsewhere: ask for this with a callback")]
    Detached,
    /// [`crate::Handle::with_core`] asked for a core wrapper of another type than the node's.
    #[error("the node's core is not of the type asked for")]
    CoreType,
    /// The runtime's configuration or start-up state is invalid.
    #[error("invalid start-up state: {0}")]
    Start(String),
}

impl Error {
    /// Whether the request may have taken effect although it failed.
    #[must_use]
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, Error::OutcomeUnknown | Error::Shutdown | Error::Halted(_))
    }
}
