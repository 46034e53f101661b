//! Durable storage of the Raft log, the hard state and the latest snapshot.

use quorate_core::Persist;
use quorate_log::{Data, EntryId, InitialState, LogIndex, MemLog, SnapshotMeta, StorageError, Term};
use serde::{Deserialize, Serialize};

/// Identifies one snapshot image in transfer: what it covers, its length and the CRC-32 of
/// all its bytes. Two images with the same header are the same bytes, so a transfer of one
/// can resume where a transfer of the other stopped (even from another leader).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SnapshotHeader {
    /// What the snapshot covers (its `last` entry is the snapshot's id).
    pub meta: SnapshotMeta,
    /// Length of the whole image in bytes.
    pub total_len: u64,
    /// CRC-32 (IEEE) of the whole image.
    pub checksum: u32,
}

impl SnapshotHeader {
    /// The header of `data`, covering `meta`.
    #[must_use]
    pub fn of(meta: SnapshotMeta, data: &[u8]) -> SnapshotHeader {
        SnapshotHeader { meta, total_len: data.len() as u64, checksum: crc32fast::hash(data) }
    }
}

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

    /// The snapshot being received from the leader, if any: its header and how many of its
    /// bytes are staged durably (a prefix). At most one staging exists at a time; it survives
    /// a restart, so a transfer resumes from this offset.
    fn staging(&self) -> Result<Option<(SnapshotHeader, u64)>, StorageError>;

    /// Discards any staging and starts an empty one for `header`.
    fn begin_staging(&mut self, header: &SnapshotHeader) -> Result<(), StorageError>;

    /// Appends `bytes` to the staging at `offset`, which must be the staged length; returns
    /// once they are durable (the runtime then acknowledges the new length to the leader).
    fn append_staging(&mut self, offset: u64, bytes: &[u8]) -> Result<(), StorageError>;

    /// Ends a complete staging: returns all its bytes and removes it. The runtime verifies the
    /// length and checksum against the header before it installs anything.
    fn finish_staging(&mut self) -> Result<Data, StorageError>;

    /// Discards the staging, if any.
    fn abort_staging(&mut self) -> Result<(), StorageError>;
}

/// The staging error for an append that does not continue the staged prefix.
pub(crate) fn staging_gap(staged: Option<u64>, offset: u64) -> StorageError {
    match staged {
        Some(at) => StorageError::Io(format!("staging append at {offset}, but {at} bytes are staged")),
        None => StorageError::Io(format!("staging append at {offset} without a staging")),
    }
}

/// In-memory [`LogStorage`] over [`MemLog`], for tests and simulations.
///
/// "Durable" here means: kept by [`MemStorage::crash`], which models a machine crash by
/// dropping what was written without `sync` (the commit index of unsynced batches).
#[derive(Clone, Debug)]
pub struct MemStorage {
    log: MemLog,
    snapshot: Option<(SnapshotMeta, Data)>,
    /// The snapshot being received and its staged bytes (kept by a crash: appends are
    /// durable).
    staging: Option<(SnapshotHeader, Vec<u8>)>,
    /// The commit index as of the last synced batch.
    synced_commit: LogIndex,
}

impl MemStorage {
    /// Empty storage whose bootstrap configuration is `config` (the same on every founding
    /// member; a node joining later starts with `Configuration::default()`).
    #[must_use]
    pub fn new(config: quorate_log::Configuration) -> MemStorage {
        MemStorage { log: MemLog::new(config), snapshot: None, staging: None, synced_commit: LogIndex::ZERO }
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

    fn staging(&self) -> Result<Option<(SnapshotHeader, u64)>, StorageError> {
        Ok(self.staging.as_ref().map(|(h, b)| (h.clone(), b.len() as u64)))
    }

    fn begin_staging(&mut self, header: &SnapshotHeader) -> Result<(), StorageError> {
        self.staging = Some((header.clone(), Vec::new()));
        Ok(())
    }

    fn append_staging(&mut self, offset: u64, bytes: &[u8]) -> Result<(), StorageError> {
        match &mut self.staging {
            Some((_, staged)) if staged.len() as u64 == offset => {
                staged.extend_from_slice(bytes);
                Ok(())
            }
            other => Err(staging_gap(other.as_ref().map(|(_, b)| b.len() as u64), offset)),
        }
    }

    fn finish_staging(&mut self) -> Result<Data, StorageError> {
        let (_, bytes) = self.staging.take().ok_or_else(|| StorageError::Io("no staging to finish".into()))?;
        Ok(Data::from(bytes))
    }

    fn abort_staging(&mut self) -> Result<(), StorageError> {
        self.staging = None;
        Ok(())
    }
}
