//! [`MemStore`]: the in-memory reference implementation of [`DurableLog`].

use crate::batch::{DurableLog, PersistBatch, Tail};
use crate::error::StoreError;
use quorate_log::{
    Configuration, Entry, EntryId, HardState, InitialState, LogIndex, LogStorage, MemLog, SnapshotMeta, StorageError,
    Term,
};
use std::sync::{PoisonError, RwLock};

/// A [`DurableLog`] kept in memory (nothing survives the process): a
/// [`quorate_log::MemLog`] behind the same validation as [`RocksStore`](crate::RocksStore).
/// Use it in tests and simulations, and as the model the durable store is checked against.
#[derive(Debug, Default)]
pub struct MemStore {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    log: MemLog,
    tail: Tail,
}

impl MemStore {
    /// An empty store whose bootstrap configuration is `config`.
    #[must_use]
    pub fn new(config: Configuration) -> MemStore {
        let log = MemLog::new(config);
        let tail = Tail { snapshot: log.snapshot_meta().clone(), ..Tail::default() };
        MemStore { inner: RwLock::new(Inner { log, tail }) }
    }

    /// A copy of the underlying [`MemLog`].
    #[must_use]
    pub fn to_mem_log(&self) -> MemLog {
        self.read(|i| i.log.clone())
    }

    fn read<R>(&self, f: impl FnOnce(&Inner) -> R) -> R {
        // A panic while holding the lock cannot leave `Inner` half-updated: writes are
        // planned on a clone and applied only after validation.
        f(&self.inner.read().unwrap_or_else(PoisonError::into_inner))
    }
}

impl DurableLog for MemStore {
    fn write(&self, batch: PersistBatch) -> Result<(), StoreError> {
        let mut g = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let inner = &mut *g;
        let mut tail = inner.tail.clone();
        let log = &inner.log;
        let plan = tail.plan(&batch, &|i| log.term(i).map_err(StoreError::from))?;
        for (meta, _) in plan.compactions {
            inner.log.apply_snapshot(meta);
        }
        if let Some(from) = plan.truncate_from {
            inner.log.truncate_from(from);
        }
        inner.log.append(&batch.entries)?;
        if let Some(hs) = batch.hard_state {
            inner.log.set_hard_state(hs);
        }
        tail.trim();
        inner.tail = tail;
        Ok(())
    }

    fn hard_state(&self) -> HardState {
        self.read(|i| i.log.hard_state())
    }
}

impl LogStorage for MemStore {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        self.read(|i| i.log.initial_state())
    }

    fn snapshot_last(&self) -> EntryId {
        self.read(|i| i.log.snapshot_last())
    }

    fn snapshot_meta(&self) -> Result<SnapshotMeta, StorageError> {
        self.read(|i| Ok(i.log.snapshot_meta().clone()))
    }

    fn last_index(&self) -> LogIndex {
        self.read(|i| i.log.last_index())
    }

    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        self.read(|i| i.log.term(index))
    }

    fn entries(&self, lo: LogIndex, hi: LogIndex, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        self.read(|i| i.log.entries(lo, hi, max_bytes))
    }
}
