//! The application's replicated state machine.

use quorate_log::{Entry, LogIndex};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io::{Read, Write};

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
///
/// Snapshots are streams: [`StateMachine::snapshot`] writes into the storage's writer (a file
/// for `RocksLog`) and [`StateMachine::restore`] reads from a reader over the stored image, so
/// neither the runtime nor the storage ever holds a whole snapshot in memory (the state
/// machine decides how much it buffers).
///
/// # In memory or durable
///
/// By default ([`StateMachine::DURABLE`] `= false`) the state lives in memory: at every start
/// the runtime restores it from the latest stored snapshot and applies the log after it
/// again. A state machine that keeps its own state on disk (a RocksDB column family, say) sets
/// `DURABLE = true` and takes on the contract of the durable methods below —
/// [`StateMachine::commit`], [`StateMachine::runtime_records`] and
/// [`StateMachine::interrupted_restore`] —; the runtime then trusts its `applied()` at start
/// (which may be ahead of the stored snapshot), applies only the entries after it, and keeps
/// the stored snapshot for followers (and for an interrupted install). See
/// `docs/embedding.md`, "Durable state machines".
pub trait StateMachine: Send + 'static {
    /// What applying one command returns to its proposer (and what an exactly-once session
    /// caches for a retry, so it is serializable: the cache is part of the snapshot).
    type Output: Clone + Serialize + DeserializeOwned + Send + 'static;

    /// Whether the state machine keeps its state durably itself (see the type's docs). An
    /// associated constant, not a method: it decides at compile time how the runtime starts
    /// and cannot change while a node runs.
    const DURABLE: bool = false;

    /// Whether the runtime wraps each command in its own envelope and keeps exactly-once
    /// sessions for it (the default). A state machine that **owns its log format** sets it
    /// to `false`: each command is written into the log exactly as proposed and handed to
    /// [`StateMachine::apply`] exactly as it is in the log — every command entry, whatever
    /// its bytes, so a log written by another program (an earlier release of the
    /// application, say) goes on applying. The runtime's sessions are then off:
    /// [`crate::Handle::open_session`] and [`crate::Handle::propose_in_session`] fail with
    /// [`crate::Error::SessionsOff`], and exactly-once is the state machine's own business
    /// (it keeps its session table in its state, as the Quorate node does). Its snapshot
    /// images are its own bytes alone (no runtime part), and a durable one never gets runtime
    /// records ([`RuntimeWrites`] are empty but for `clear`; `runtime_records` is not asked).
    /// An associated constant: the log's format cannot change while a node runs.
    const ENVELOPE: bool = true;

    /// Most commands handed to one [`StateMachine::apply`] call (at least 1). A durable state
    /// machine whose [`StateMachine::commit`] is one atomic write of bounded size sets it,
    /// with [`StateMachine::commit_due`], so that what one commit carries stays bounded: the
    /// runtime asks `commit_due` after every call. The default puts no bound.
    const APPLY_COMMANDS_MAX: usize = usize::MAX;

    /// Applies a batch of committed commands, in order, returning exactly one output per
    /// command, in the same order. A batch is never empty and holds at most
    /// [`StateMachine::APPLY_COMMANDS_MAX`] commands. Later calls see the effects of earlier
    /// ones (also before a [`StateMachine::commit`]).
    fn apply(&mut self, batch: &[Committed<'_>]) -> Vec<Self::Output>;

    /// Sees every committed entry as the log holds it — its term, and no-ops and
    /// configuration changes too — in log order, each once per replica start, before its
    /// command (if any) reaches [`StateMachine::apply`]. For observation only: an audit trail,
    /// or a running hash of the applied log that replicas compare (the Quorate node does, to
    /// catch replicas that diverge). It changes nothing and cannot refuse; entries a restored
    /// snapshot covers are not shown. Across restarts an entry may be shown again: the log
    /// after the applied index a replica starts from (a durable state machine's last commit)
    /// is shown as it applies again. The default does nothing.
    fn observe_entry(&mut self, entry: &Entry) {
        let _ = entry;
    }

    /// A failure of the state machine's own I/O met while applying (a durable state machine
    /// reads its store): asked after every [`StateMachine::apply`] call, before any of its
    /// outputs is answered. `Some` halts the node; the outputs of that call are dropped (they
    /// may be wrong: the failure is not deterministic, unlike an output). The default, for a
    /// state machine that cannot fail, is `None`.
    fn failure(&self) -> Option<String> {
        None
    }

    /// Writes the whole state as of [`StateMachine::applied`] to `out`: a stream, of any
    /// length. Only [`StateMachine::restore`] of this program reads it back.
    ///
    /// # Errors
    /// A failure to write (the runtime then skips this snapshot).
    fn snapshot(&self, out: &mut dyn Write) -> std::io::Result<()>;

    /// Replaces the whole state with the one `snapshot` encodes (written by
    /// [`StateMachine::snapshot`] on some replica), which covers the log up to `applied`.
    /// Nothing of the previous state may survive. The reader yields the image's bytes and
    /// fails (`InvalidData`) at its end if they do not match the image's checksum.
    ///
    /// A durable state machine's restore is complete only with the [`StateMachine::commit`]
    /// that follows it: until that commit is durable, a crash must leave either the old state
    /// (with its `applied()`) or a state that reports [`StateMachine::interrupted_restore`].
    ///
    /// # Errors
    /// An image that cannot be read or restored: the node halts (the image came from this
    /// program's own `snapshot`, so it means a bug or corruption).
    fn restore(&mut self, applied: LogIndex, snapshot: &mut dyn Read) -> Result<(), RestoreError>;

    /// The index of the last command applied (or restored to); `LogIndex::ZERO` for a new
    /// state machine. For a durable state machine: the index of its last durable
    /// [`StateMachine::commit`] (the runtime starts handing out commands after it).
    fn applied(&self) -> LogIndex;

    /// **Durable state machines:** makes everything applied since the last commit durable,
    /// **in one atomic write**, together with `applied` as the new applied index and the
    /// runtime's own records `runtime` (the exactly-once session table's changes). Called at
    /// the end of every apply turn (also when the turn held only entries that do not reach
    /// `apply`: no-ops, membership changes, session opens, retries answered from the cache)
    /// and after every [`StateMachine::restore`] (then `runtime.clear` is set: the records
    /// are replaced). A crash before `commit` returns must leave the state as of the previous
    /// commit; after it returns, `applied()` must answer `applied` across a crash.
    ///
    /// The default, for a state machine in memory, does nothing.
    ///
    /// # Errors
    /// A failed write: the node halts (nothing is applied on top of it).
    fn commit(&mut self, applied: LogIndex, runtime: &RuntimeWrites) -> std::io::Result<()> {
        let _ = (applied, runtime);
        Ok(())
    }

    /// **Durable state machines:** whether what was applied since the last commit is as much
    /// as one commit should carry: the runtime then commits at once, before the next apply
    /// call, instead of at the end of the turn. The default never asks.
    fn commit_due(&self) -> bool {
        false
    }

    /// **Durable state machines:** the runtime's records as of the last durable commit (every
    /// `(key, value)` put and not deleted or cleared since), read once at start.
    ///
    /// # Errors
    /// Records that cannot be read: the node does not start.
    fn runtime_records(&self) -> Result<Vec<(u64, Vec<u8>)>, RestoreError> {
        Ok(Vec::new())
    }

    /// **Durable state machines:** `Some(index)` when a restore (of the snapshot at `index`)
    /// was begun and its commit never became durable — the state is not to be trusted. The
    /// runtime then restores again from the stored snapshot before anything else.
    fn interrupted_restore(&self) -> Option<LogIndex> {
        None
    }
}

/// The runtime's own replicated records — the exactly-once session table, one record per
/// session — as changes a durable state machine writes in [`StateMachine::commit`]. Keys are
/// session ids; values are opaque to the state machine (store and return them as they are).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RuntimeWrites {
    /// Remove every record first (set after a restore: the records that follow replace them).
    pub clear: bool,
    /// Records to write (insert or overwrite).
    pub put: Vec<(u64, Vec<u8>)>,
    /// Records to remove.
    pub delete: Vec<u64>,
}

impl RuntimeWrites {
    /// Whether there is nothing to write.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        !self.clear && self.put.is_empty() && self.delete.is_empty()
    }

    /// Applies these changes to `records` (a convenience for state machines that keep the
    /// records in a map).
    pub fn apply_to(&self, records: &mut std::collections::BTreeMap<u64, Vec<u8>>) {
        if self.clear {
            records.clear();
        }
        for k in &self.delete {
            records.remove(k);
        }
        for (k, v) in &self.put {
            records.insert(*k, v.clone());
        }
    }
}

/// A snapshot could not be restored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot restore the state machine: {0}")]
pub struct RestoreError(pub String);

impl From<std::io::Error> for RestoreError {
    fn from(e: std::io::Error) -> RestoreError {
        RestoreError(e.to_string())
    }
}
