//! A consistent, read-only view of the state machine at one applied index, readable from any
//! thread while the state machine goes on being written: a RocksDB snapshot of the store.
//!
//! The view holds the `sm` column family's handle from the moment it was taken, and reads it at
//! the snapshot's sequence number. A state-machine install ([`RocksStore::begin_sm_install`],
//! [`RocksStore::begin_sm_reinstall`], [`RocksStore::reset_sm`]) drops the `sm` column family
//! and creates it empty; a handle looked up after that names the new, empty family, in which
//! every key of an older sequence number reads as absent. A view never looks its handle up
//! again, and RocksDB keeps a dropped family's data while a handle to it lives, so a view read
//! across an install still reads the state it was taken at (tested). Callers should still not
//! rely on it: a view pins the dropped family's files until it goes, and the state it shows is
//! no longer the node's. (The node's apply thread lets every read of a view finish before it
//! begins an install, and refuses the views taken before one.)

use super::{RocksStore, in_sm};
use crate::codec::{self, CF_META, CF_SM, Cf, KEY_APPLIED, KEY_SM_INSTALL, sm_key};
use crate::error::StoreError;
use quorate_log::LogIndex;
use rocksdb::{BoundColumnFamily, ReadOptions, SnapshotWithThreadMode};
use std::sync::Arc;

/// A consistent, read-only view of the state machine at one applied index
/// ([`RocksStore::sm_view`]): every read sees the state machine exactly as it was when the view
/// was taken, whatever is applied since. `Send` and `Sync`: take it on the thread that applies,
/// read it on others. Keep it short-lived (see the module's notes on installs).
pub struct SmView<'a> {
    store: &'a RocksStore,
    sm: Arc<BoundColumnFamily<'a>>,
    snapshot: SnapshotWithThreadMode<'a, super::Db>,
    applied: LogIndex,
    /// Whether its reads keep the blocks they load in the block cache.
    fill_cache: bool,
}

impl std::fmt::Debug for SmView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmView").field("applied", &self.applied).finish_non_exhaustive()
    }
}

impl RocksStore {
    /// A consistent view of the state machine as it is now, with the applied index it is at.
    /// Refused while a state-machine install is unfinished (the state machine then holds an
    /// unknown part of a snapshot).
    pub fn sm_view(&self) -> Result<SmView<'_>, StoreError> {
        // The family and the snapshot are taken together, with no install's drop and creation
        // of the family in between: a view whose family was dropped while its snapshot was
        // being taken would pair the new state's applied index with the old, emptied family.
        let (sm, snapshot) = {
            let _swap = self.sm_swap.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            let sm = self
                .db
                .cf_handle(CF_SM)
                .ok_or_else(|| StoreError::Io(format!("the column family {CF_SM} is not open")))?;
            #[cfg(test)]
            if let Some(hook) = super::lock(&self.test_hooks.in_view_before_snapshot).take() {
                hook();
            }
            (sm, self.db.snapshot())
        };
        let meta = self.cf(CF_META)?;
        let read = |key: &[u8]| -> Result<Option<LogIndex>, StoreError> {
            let mut ro = ReadOptions::default();
            ro.set_snapshot(&snapshot);
            match self.db.get_pinned_cf_opt(&meta, key, &ro)? {
                Some(v) => Ok(Some(codec::decode(Cf::Meta, key, &v)?)),
                None => Ok(None),
            }
        };
        if let Some(at) = read(KEY_SM_INSTALL)? {
            return Err(StoreError::InvalidBatch(format!(
                "the state machine holds part of the snapshot at {at} (an install is unfinished); no view of it"
            )));
        }
        let applied = read(KEY_APPLIED)?.unwrap_or(LogIndex::ZERO);
        drop(meta);
        Ok(SmView { store: self, sm, snapshot, applied, fill_cache: true })
    }
}

impl SmView<'_> {
    /// The applied index of the state machine this view shows.
    #[must_use]
    pub fn applied_index(&self) -> LogIndex {
        self.applied
    }

    /// The same view, whose reads do not keep the blocks they load in the block cache: for a
    /// read of the whole state machine (a snapshot, a backup), which would otherwise evict
    /// the blocks every other read and every write's lookup needs.
    #[must_use]
    pub fn without_filling_the_cache(mut self) -> Self {
        self.fill_cache = false;
        self
    }

    fn options(&self) -> ReadOptions {
        let mut ro = ReadOptions::default();
        ro.set_snapshot(&self.snapshot);
        ro.fill_cache(self.fill_cache);
        ro
    }

    /// The state-machine value of `key`, checksum verified (as [`RocksStore::sm_get`]).
    pub fn sm_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let k = sm_key(key);
        let found = self.store.db.get_pinned_cf_opt(&self.sm, &k, &self.options()).map_err(|e| in_sm(e.into(), &k))?;
        match found {
            Some(v) => Ok(Some(codec::verify(Cf::Sm, &k, &v)?.to_vec())),
            None => Ok(None),
        }
    }

    /// Up to `limit` (at most [`SM_SCAN_PAIRS_MAX`](super::SM_SCAN_PAIRS_MAX)) pairs with keys `>= from`, in key order,
    /// checksums verified (as [`RocksStore::sm_scan`]).
    pub fn sm_scan(&self, from: &[u8], limit: usize) -> Result<Vec<super::SmPair>, StoreError> {
        self.sm_scan_bounded(from, limit, usize::MAX)
    }

    /// As [`sm_scan`](Self::sm_scan), stopping also once the pairs read hold `bytes_max`
    /// bytes of keys and values, the pair that reaches it included (as
    /// [`RocksStore::sm_scan_bounded`]).
    pub fn sm_scan_bounded(
        &self,
        from: &[u8],
        limit: usize,
        bytes_max: usize,
    ) -> Result<Vec<super::SmPair>, StoreError> {
        self.sm_scan_range(from, None, limit, bytes_max)
    }

    /// As [`sm_scan_bounded`](Self::sm_scan_bounded), with keys also `< end` (when given); the
    /// iterator stops at `end` (as [`RocksStore::sm_scan_range`]).
    pub fn sm_scan_range(
        &self,
        from: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        bytes_max: usize,
    ) -> Result<Vec<super::SmPair>, StoreError> {
        self.store.scan_sm_with(&self.sm, self.options(), from, end, limit, bytes_max)
    }
}
