//! The application's replicated state machine.

use quorate_log::LogIndex;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// One committed command handed to [`StateMachine::apply`]: its log index and its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed<'a> {
    /// The command's log index. Strictly increasing across calls.
    pub index: LogIndex,
    /// The command as proposed.
    pub command: &'a [u8],
}

/// A state machine the runtime replicates.
///
/// The runtime calls it from one task at a time (never concurrently), in log order. Every
/// replica applies the same commands in the same order, so the state machine must be
/// **deterministic**: its state and outputs after a sequence of commands depend only on that
/// sequence — not on the clock, randomness, the node it runs on or the batch boundaries.
///
/// A command the state machine cannot execute (malformed bytes, a failed precondition) is not
/// an error of the runtime: return it as an output (make `Output` a `Result`). The runtime never
/// stops because of an output; there is no way to refuse a committed command.
pub trait StateMachine: Send + 'static {
    /// What applying one command returns to its proposer (and what an exactly-once session
    /// caches for a retry, so it is serializable: the cache is part of the snapshot).
    type Output: Clone + Serialize + DeserializeOwned + Send + 'static;

    /// Applies a batch of committed commands, in order, returning exactly one output per
    /// command, in the same order. A batch is never empty.
    fn apply(&mut self, batch: &[Committed<'_>]) -> Vec<Self::Output>;

    /// Serializes the whole state as of [`StateMachine::applied`].
    fn snapshot(&self) -> Vec<u8>;

    /// Replaces the whole state with the one `snapshot` encodes (written by
    /// [`StateMachine::snapshot`] on some replica), which covers the log up to `applied`.
    /// Nothing of the previous state may survive. An error halts the node (the snapshot came
    /// from this program's own `snapshot`, so it means a bug or corruption).
    fn restore(&mut self, applied: LogIndex, snapshot: &[u8]) -> Result<(), RestoreError>;

    /// The index of the last command applied (or restored to); `LogIndex::ZERO` for a new
    /// state machine. The runtime starts handing out commands after it.
    fn applied(&self) -> LogIndex;
}

/// A snapshot could not be restored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot restore the state machine: {0}")]
pub struct RestoreError(pub String);
