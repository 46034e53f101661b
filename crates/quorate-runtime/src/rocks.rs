//! [`RocksLog`]: the runtime's [`LogStorage`](crate::LogStorage) over quorate-storage's
//! RocksDB store (cargo feature `rocksdb`).

use crate::storage::LogStorage;
use quorate_core::Persist;
use quorate_log::{Data, Entry, EntryId, InitialState, LogIndex, SnapshotMeta, StorageError, Term};
use quorate_storage::{PersistBatch, RocksStore, StoreError, StoreOptions};
use std::io::{Read, Write};
use std::path::Path;

/// The largest snapshot [`RocksLog`] reads back into memory.
pub const SNAPSHOT_READ_BYTES_MAX: u64 = 1 << 30;

/// The runtime's storage on a [`RocksStore`]: every batch is one atomic RocksDB write, fsynced
/// before [`LogStorage::persist`] returns (unless the core marked it as only moving the commit
/// index); snapshots are checksummed files beside the database, written and fsynced before
/// they are recorded.
#[derive(Debug)]
pub struct RocksLog {
    store: RocksStore,
}

impl RocksLog {
    /// Opens (or creates) the store in `dir`. `options` carry the bootstrap configuration of a
    /// new store ([`StoreOptions::with_bootstrap`]). A store that reports lost synced state is
    /// refused: recovering from it is not supported by the runtime yet.
    pub fn open(dir: impl AsRef<Path>, options: StoreOptions) -> Result<RocksLog, StoreError> {
        let store = RocksStore::open(dir, options)?;
        if let Some(lost) = store.lost_state() {
            return Err(StoreError::Io(format!(
                "the store lost synced state ({lost:?}); the runtime cannot recover it yet"
            )));
        }
        Ok(RocksLog { store })
    }

    /// The store underneath.
    #[must_use]
    pub fn store(&self) -> &RocksStore {
        &self.store
    }

    fn write_snapshot(&self, meta: &SnapshotMeta, data: &Data) -> Result<(), StoreError> {
        let mut w = self.store.snapshot_writer(meta.clone())?;
        w.write_all(data)?;
        w.finish()?;
        Ok(())
    }
}

impl quorate_log::LogStorage for RocksLog {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        self.store.initial_state()
    }
    fn snapshot_last(&self) -> EntryId {
        self.store.snapshot_last()
    }
    fn last_index(&self) -> LogIndex {
        self.store.last_index()
    }
    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        self.store.term(index)
    }
    fn entries(&self, lo: LogIndex, hi: LogIndex, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        self.store.entries(lo, hi, max_bytes)
    }
    fn first_index(&self) -> LogIndex {
        self.store.first_index()
    }
    fn snapshot_meta(&self) -> Result<SnapshotMeta, StorageError> {
        self.store.snapshot_meta()
    }
}

impl LogStorage for RocksLog {
    fn persist(&mut self, batch: &Persist, snapshot: Option<&Data>) -> Result<(), StorageError> {
        if let Some(meta) = &batch.install {
            let data = snapshot.ok_or_else(|| StorageError::Io("snapshot install without its data".into()))?;
            // The file first: the batch that records the install must find it.
            self.write_snapshot(meta, data)?;
        }
        let b = PersistBatch {
            hard_state: batch.hard_state,
            truncate_from: batch.entries.first().map(|e| e.index),
            entries: batch.entries.clone(),
            install: batch.install.clone(),
            compact: batch.compact.clone(),
            skip_fsync: !batch.sync,
        };
        Ok(self.store.write(b)?)
    }

    fn save_snapshot(&mut self, meta: &SnapshotMeta, data: &Data) -> Result<(), StorageError> {
        Ok(self.write_snapshot(meta, data)?)
    }

    fn snapshot(&self) -> Result<Option<(SnapshotMeta, Data)>, StorageError> {
        // The newest verified file the log agrees with (the recorded compaction point may
        // lag behind the newest snapshot by the core's compaction tail).
        let Some((meta, path)) = self.store.usable_snapshot(LogIndex(u64::MAX))? else { return Ok(None) };
        let mut reader = quorate_storage::SnapshotReader::open(&path)?;
        if reader.data_len() > SNAPSHOT_READ_BYTES_MAX {
            return Err(StorageError::Io(format!(
                "snapshot {} holds {} bytes, more than the {SNAPSHOT_READ_BYTES_MAX} the runtime reads",
                path.display(),
                reader.data_len()
            )));
        }
        let mut data = Vec::with_capacity(reader.data_len() as usize);
        reader.read_to_end(&mut data).map_err(|e| StorageError::Io(format!("reading {}: {e}", path.display())))?;
        Ok(Some((meta, Data::from(data))))
    }
}
