//! Durable storage of the Raft log, the hard state and the latest snapshot.

use quorate_core::Persist;
use quorate_log::{Data, EntryId, InitialState, LogIndex, MemLog, SnapshotMeta, StorageError, Term};

/// The runtime's storage: the Raft log and hard state (read by the core through
/// [`quorate_log::LogStorage`]) plus the latest snapshot's bytes.
///
/// **Durability before return.** [`LogStorage::persist`] and [`LogStorage::save_snapshot`]
/// return only once what they wrote survives a crash (when `batch.sync` is set; a batch
/// without `sync` only moves the commit index, which may be lost). The runtime acknowledges
/// nothing that depends on a batch — no vote, no append acknowledgement, no commit of the
/// leader's own entries — before `persist` returned `Ok`. An error halts the node.
pub trait LogStorage: quorate_log::LogStorage + Send + 'static {
    /// Writes one batch atomically, in the order [`Persist`] documents: the snapshot install
    /// (with `snapshot`, its bytes, present exactly when `batch.install` is), the compaction,
    /// the entries (truncating any conflicting suffix first), then the hard state.
    fn persist(&mut self, batch: &Persist, snapshot: Option<&Data>) -> Result<(), StorageError>;

    /// Stores a snapshot the runtime took of the local state machine (durably), replacing the
    /// previous one. The log is not compacted here: that comes later in a batch's `compact`.
    fn save_snapshot(&mut self, meta: &SnapshotMeta, data: &Data) -> Result<(), StorageError>;

    /// The latest snapshot (taken locally or installed from the leader), if any.
    fn snapshot(&self) -> Result<Option<(SnapshotMeta, Data)>, StorageError>;
}

/// In-memory [`LogStorage`] over [`MemLog`], for tests and simulations.
///
/// "Durable" here means: kept by [`MemStorage::crash`], which models a machine crash by
/// dropping what was written without `sync` (the commit index of unsynced batches).
#[derive(Clone, Debug)]
pub struct MemStorage {
    log: MemLog,
    snapshot: Option<(SnapshotMeta, Data)>,
    /// The commit index as of the last synced batch.
    synced_commit: LogIndex,
}

impl MemStorage {
    /// Empty storage whose bootstrap configuration is `config` (the same on every founding
    /// member; a node joining later starts with `Configuration::default()`).
    #[must_use]
    pub fn new(config: quorate_log::Configuration) -> MemStorage {
        MemStorage { log: MemLog::new(config), snapshot: None, synced_commit: LogIndex::ZERO }
    }

    /// Models a crash: whatever was written without `sync` is lost.
    pub fn crash(&mut self) {
        let mut hs = self.log.hard_state();
        hs.commit = hs.commit.min(self.synced_commit);
        self.log.set_hard_state(hs);
    }

    /// The underlying log.
    #[must_use]
    pub fn log(&self) -> &MemLog {
        &self.log
    }
}

impl quorate_log::LogStorage for MemStorage {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        self.log.initial_state()
    }
    fn snapshot_last(&self) -> EntryId {
        self.log.snapshot_last()
    }
    fn last_index(&self) -> LogIndex {
        self.log.last_index()
    }
    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        self.log.term(index)
    }
    fn entries(&self, lo: LogIndex, hi: LogIndex, max_bytes: u64) -> Result<Vec<quorate_log::Entry>, StorageError> {
        self.log.entries(lo, hi, max_bytes)
    }
    fn snapshot_meta(&self) -> Result<SnapshotMeta, StorageError> {
        quorate_log::LogStorage::snapshot_meta(&self.log)
    }
}

impl LogStorage for MemStorage {
    fn persist(&mut self, batch: &Persist, snapshot: Option<&Data>) -> Result<(), StorageError> {
        if let Some(meta) = &batch.install {
            let data = snapshot.ok_or_else(|| StorageError::Io("snapshot install without its data".into()))?;
            self.log.apply_snapshot(meta.clone());
            self.snapshot = Some((meta.clone(), data.clone()));
        }
        if let Some(meta) = &batch.compact {
            self.log.apply_snapshot(meta.clone());
        }
        self.log.append(&batch.entries)?;
        if let Some(hs) = batch.hard_state {
            self.log.set_hard_state(hs);
        }
        if batch.sync {
            self.synced_commit = self.log.hard_state().commit;
        }
        Ok(())
    }

    fn save_snapshot(&mut self, meta: &SnapshotMeta, data: &Data) -> Result<(), StorageError> {
        self.snapshot = Some((meta.clone(), data.clone()));
        Ok(())
    }

    fn snapshot(&self) -> Result<Option<(SnapshotMeta, Data)>, StorageError> {
        Ok(self.snapshot.clone())
    }
}
