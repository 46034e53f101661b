//! The consensus core as the runtime drives it, behind a trait, so that a host can wrap it.

use quorate_core::{
    ConfChange, ConfChangeError, Instant, IoId, Message, ProposeError, Raft, ReadError, ReadId, ReadLevel, Ready,
    SnapshotError, TransferError,
};
use quorate_log::{Data, EntryId, NodeId, SnapshotMeta, Term};

/// The consensus core as a [`crate::Replica`] drives it: every call that changes the core
/// goes through this trait, every query goes to the [`Raft`] it holds ([`Core::raft`]).
///
/// [`Raft`] implements it. A host that wants to see every input of the core — the Quorate
/// node's flight recorder keeps each one, with a digest of its answer, to replay a window of
/// the node's life in one process — wraps the core in a type of its own that implements this
/// trait by noting each call and forwarding it, and starts the replica with
/// [`crate::Replica::with_core`].
///
/// A wrapper must forward every call, unchanged and in order, and return the core's answer
/// unchanged: the runtime's guarantees are the core's. Storage writes
/// ([`Core::storage_mut`]) are not inputs of the core.
pub trait Core<L: quorate_log::LogStorage>: Send {
    /// The core, for queries (role, term, commit index, storage, …).
    fn raft(&self) -> &Raft<L>;
    /// The core's storage, to write batches and snapshots the core asked for.
    fn storage_mut(&mut self) -> &mut L;
    /// [`Raft::handle_message`].
    fn handle_message(&mut self, now: Instant, m: Message);
    /// [`Raft::handle_timeout`].
    fn handle_timeout(&mut self, now: Instant);
    /// [`Raft::propose`].
    ///
    /// # Errors
    /// The core's.
    fn propose(&mut self, now: Instant, data: Data) -> Result<EntryId, ProposeError>;
    /// [`Raft::propose_conf_change`].
    ///
    /// # Errors
    /// The core's.
    fn propose_conf_change(&mut self, now: Instant, change: ConfChange) -> Result<EntryId, ConfChangeError>;
    /// [`Raft::read`].
    ///
    /// # Errors
    /// The core's.
    fn read(&mut self, now: Instant, id: ReadId, level: ReadLevel) -> Result<(), ReadError>;
    /// [`Raft::transfer_leadership`].
    ///
    /// # Errors
    /// The core's.
    fn transfer_leadership(&mut self, now: Instant, to: NodeId) -> Result<(), TransferError>;
    /// [`Raft::snapshot_taken`].
    fn snapshot_taken(&mut self, now: Instant, meta: SnapshotMeta);
    /// [`Raft::snapshot_skipped`].
    fn snapshot_skipped(&mut self, now: Instant);
    /// [`Raft::install_snapshot`].
    ///
    /// # Errors
    /// The core's.
    fn install_snapshot(
        &mut self,
        now: Instant,
        from: NodeId,
        term: Term,
        meta: SnapshotMeta,
    ) -> Result<bool, SnapshotError>;
    /// [`Raft::snapshot_send_failed`].
    fn snapshot_send_failed(&mut self, now: Instant, to: NodeId);
    /// [`Raft::persisted`].
    fn persisted(&mut self, now: Instant, io: IoId);
    /// [`Raft::ready`].
    fn ready(&mut self) -> Ready;
    /// Not an input of the core: the replica halted for a reason of its own — a storage
    /// failure, its state machine's failure or broken contract, the end of the thread that
    /// runs the state machine — and asks nothing more of the core. (A halt of the core itself
    /// shows in [`Raft::halted`].) A wrapper may record it: the Quorate node's flight
    /// recorder dumps its recording. Called at most once, and not when the replica is stopped
    /// ([`crate::Replica::stop`], a shutdown). The default does nothing.
    fn replica_halted(&mut self, reason: &str) {
        let _ = reason;
    }
}

impl<L: quorate_log::LogStorage + Send> Core<L> for Raft<L> {
    fn raft(&self) -> &Raft<L> {
        self
    }
    fn storage_mut(&mut self) -> &mut L {
        Raft::storage_mut(self)
    }
    fn handle_message(&mut self, now: Instant, m: Message) {
        Raft::handle_message(self, now, m);
    }
    fn handle_timeout(&mut self, now: Instant) {
        Raft::handle_timeout(self, now);
    }
    fn propose(&mut self, now: Instant, data: Data) -> Result<EntryId, ProposeError> {
        Raft::propose(self, now, data)
    }
    fn propose_conf_change(&mut self, now: Instant, change: ConfChange) -> Result<EntryId, ConfChangeError> {
        Raft::propose_conf_change(self, now, change)
    }
    fn read(&mut self, now: Instant, id: ReadId, level: ReadLevel) -> Result<(), ReadError> {
        Raft::read(self, now, id, level)
    }
    fn transfer_leadership(&mut self, now: Instant, to: NodeId) -> Result<(), TransferError> {
        Raft::transfer_leadership(self, now, to)
    }
    fn snapshot_taken(&mut self, now: Instant, meta: SnapshotMeta) {
        Raft::snapshot_taken(self, now, meta);
    }
    fn snapshot_skipped(&mut self, now: Instant) {
        Raft::snapshot_skipped(self, now);
    }
    fn install_snapshot(
        &mut self,
        now: Instant,
        from: NodeId,
        term: Term,
        meta: SnapshotMeta,
    ) -> Result<bool, SnapshotError> {
        Raft::install_snapshot(self, now, from, term, meta)
    }
    fn snapshot_send_failed(&mut self, now: Instant, to: NodeId) {
        Raft::snapshot_send_failed(self, now, to);
    }
    fn persisted(&mut self, now: Instant, io: IoId) {
        Raft::persisted(self, now, io);
    }
    fn ready(&mut self) -> Ready {
        Raft::ready(self)
    }
}
