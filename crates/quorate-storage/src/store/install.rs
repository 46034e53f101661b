//! Installing a snapshot's state-machine data in several writes.
//!
//! A snapshot can hold more records than one atomic write may carry ([`APPLY_OPS_MAX`]), so
//! its data goes in as: [`RocksStore::begin_sm_install`] (one synced write: every state
//! machine key removed and an *install in progress* marker recorded), any number of
//! [`RocksStore::write_sm_install_batch`] writes, then [`RocksStore::finish_sm_install`] (one
//! synced write: the applied index set to the snapshot's and the marker removed).
//!
//! **Invariant.** While the marker is on disk the state machine is not trusted: it may hold
//! part of a snapshot, and its applied index means nothing. [`RocksStore::apply`] refuses to
//! write on top of it, and a node that finds the marker at start-up
//! ([`RocksStore::sm_install_pending`]) installs the snapshot again from its file, starting
//! with the clearing write. RocksDB's write-ahead log keeps writes in order, so a crash at any
//! point leaves either the old state machine (the begin write lost), a marked partial one, or
//! the whole snapshot with its applied index.
//!
//! **Reinstall.** A damaged state machine is repaired by installing the local snapshot again
//! ([`RocksStore::begin_sm_reinstall`], which may go back below the applied index) and applying
//! the log after it again: the log keeps every entry after the recorded snapshot.

use super::{APPLY_OPS_MAX, RocksStore, lock, put_sm};
use crate::codec::{self, CF_META, CF_SM, Cf, KEY_APPLIED, KEY_SM_INSTALL, SM_PREFIX, SM_PREFIX_END};
use crate::error::StoreError;
use quorate_log::LogIndex;
use rocksdb::WriteBatch;
use std::sync::atomic::Ordering;

/// Most bytes (keys and values) in one [`RocksStore::write_sm_install_batch`].
pub const INSTALL_BATCH_BYTES_MAX: usize = 64 << 20;

impl RocksStore {
    /// The snapshot index whose state-machine install was begun and not finished, if any:
    /// the state machine holds an unknown part of that snapshot and must be installed again.
    #[must_use]
    pub fn sm_install_pending(&self) -> Option<LogIndex> {
        match self.install_pending.load(Ordering::Acquire) {
            0 => None,
            i => Some(LogIndex(i)),
        }
    }

    /// Reads the marker from disk (at open).
    pub(super) fn load_install_marker(&self) -> Result<(), StoreError> {
        let at: Option<LogIndex> = self.get_decoded(Cf::Meta, KEY_SM_INSTALL)?;
        if at == Some(LogIndex::ZERO) {
            return Err(StoreError::Corrupt {
                key: codec::key_name(Cf::Meta, KEY_SM_INSTALL),
                detail: "install marker at index 0".into(),
            });
        }
        self.install_pending.store(at.map_or(0, |i| i.0), Ordering::Release);
        Ok(())
    }

    /// Begins installing the state-machine data of the snapshot ending at `target`: removes
    /// every state-machine key and records the install marker, in one durable write. `target`
    /// must be above the applied index, unless an install is already in progress (starting
    /// again over an unfinished install is the recovery).
    pub fn begin_sm_install(&self, target: LogIndex) -> Result<(), StoreError> {
        if self.sm_install_pending().is_none() && target <= self.applied_index() {
            return Err(StoreError::InvalidBatch(format!(
                "installing the snapshot at {target} would go back from the applied index {}",
                self.applied_index()
            )));
        }
        self.begin_install(target)
    }

    /// Begins installing the snapshot at `target` again over a damaged state machine, like
    /// [`begin_sm_install`](Self::begin_sm_install) but also at or below the applied index:
    /// [`finish_sm_install`](Self::finish_sm_install) then sets the applied index back to
    /// `target`, and the caller applies the log after it again. Every table file of the state
    /// machine is dropped too (the column family is recreated), so that a damaged one is gone,
    /// not merely hidden.
    pub fn begin_sm_reinstall(&self, target: LogIndex) -> Result<(), StoreError> {
        self.begin_install(target)
    }

    fn begin_install(&self, target: LogIndex) -> Result<(), StoreError> {
        // Exclusive: it drops and creates the state machine's column family.
        let _w = self.exclusive();
        // Clearing frees space: allowed below the floor.
        self.check_poison()?;
        if target == LogIndex::ZERO {
            return Err(StoreError::InvalidBatch("a snapshot install needs a snapshot index above 0".into()));
        }
        let mut wb = WriteBatch::default();
        wb.delete_range_cf(&self.cf(CF_SM)?, [SM_PREFIX], [SM_PREFIX_END]);
        wb.put_cf(&self.cf(CF_META)?, KEY_SM_INSTALL, codec::encode(Cf::Meta, KEY_SM_INSTALL, &target)?);
        self.commit_batch(wb, &self.sync)?;
        self.install_pending.store(target.0, Ordering::Release);
        self.recreate_sm()
    }

    /// Drops the `sm` column family and creates it empty: every table file of the state
    /// machine goes without being read, so a damaged one cannot stop a later compaction.
    /// Called after the clearing write (the range deletion hides the old data even if the
    /// drop does not happen); a crash between the drop and the creation is repaired by the
    /// next open, which creates missing families.
    fn recreate_sm(&self) -> Result<(), StoreError> {
        let _swapping = self.sm_swap.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.db
            .drop_cf(CF_SM)
            .map_err(|e| self.poison(format!("cannot drop the state machine's column family: {e}")))?;
        #[cfg(test)]
        if let Some(hook) = lock(&self.test_hooks.between_drop_and_create).take() {
            hook();
        }
        self.db
            .create_cf(CF_SM, &super::cf_options(CF_SM, self.write_buffer, &self.block_cache))
            .map_err(|e| self.poison(format!("cannot create the state machine's column family: {e}")))?;
        // Its files are gone: the record of a damaged one goes too.
        if lock(&self.sm_damaged).take().is_some() {
            let _ = std::fs::remove_file(self.dir().join(super::SM_DAMAGED_FILE));
        }
        Ok(())
    }

    /// Clears the state machine and sets the applied index to 0, in one durable write: the
    /// repair of a damaged state machine when there is no snapshot (the log starts at index 1,
    /// and the caller applies all of it again).
    pub fn reset_sm(&self) -> Result<(), StoreError> {
        // Exclusive: it checks the log's floor and drops the state machine's column family.
        let _w = self.exclusive();
        self.check_poison()?;
        if self.tail_read().snapshot.last.index != LogIndex::ZERO {
            return Err(StoreError::InvalidBatch(
                "the log does not start at index 1; reinstall the snapshot instead".into(),
            ));
        }
        let mut wb = WriteBatch::default();
        wb.delete_range_cf(&self.cf(CF_SM)?, [SM_PREFIX], [SM_PREFIX_END]);
        wb.put_cf(&self.cf(CF_META)?, KEY_APPLIED, codec::encode(Cf::Meta, KEY_APPLIED, &LogIndex::ZERO)?);
        wb.delete_cf(&self.cf(CF_META)?, KEY_SM_INSTALL);
        self.commit_batch(wb, &self.sync)?;
        self.applied.store(0, Ordering::Release);
        self.install_pending.store(0, Ordering::Release);
        self.recreate_sm()
    }

    /// Writes one batch of state-machine pairs of the install begun with
    /// [`begin_sm_install`](Self::begin_sm_install): at most [`APPLY_OPS_MAX`] pairs and
    /// [`INSTALL_BATCH_BYTES_MAX`] bytes. Not fsynced on its own (the finishing write is).
    pub fn write_sm_install_batch(&self, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), StoreError> {
        // The state machine's lock only: it writes state-machine keys of an install in
        // progress, which only holders of that lock begin and end.
        let _w = lock(&self.sm_lock);
        self.writable()?;
        if self.sm_install_pending().is_none() {
            return Err(StoreError::InvalidBatch("no snapshot install in progress; begin one first".into()));
        }
        if pairs.len() > APPLY_OPS_MAX {
            return Err(StoreError::InvalidBatch(format!(
                "{} pairs in one install batch, the limit is {APPLY_OPS_MAX}",
                pairs.len()
            )));
        }
        let bytes: usize = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
        if bytes > INSTALL_BATCH_BYTES_MAX {
            return Err(StoreError::InvalidBatch(format!(
                "{bytes} bytes in one install batch, the limit is {INSTALL_BATCH_BYTES_MAX}"
            )));
        }
        let sm = &self.cf(CF_SM)?;
        let mut wb = WriteBatch::default();
        for (key, value) in pairs {
            put_sm(&mut wb, sm, &key, &value)?;
        }
        self.commit_batch(wb, &self.no_sync)
    }

    /// Finishes the install begun at `target`: the applied index becomes `target` and the
    /// marker goes, in one durable write. `target` must be the begun install's index and not
    /// past the last log index (the snapshot is recorded first). (The applied index may go
    /// back: the begin write cleared the state machine, and checked the direction.)
    pub fn finish_sm_install(&self, target: LogIndex) -> Result<(), StoreError> {
        let _w = self.exclusive();
        self.check_poison()?;
        match self.sm_install_pending() {
            Some(t) if t == target => {}
            Some(t) => {
                return Err(StoreError::InvalidBatch(format!(
                    "finishing an install at {target}, but the install in progress is at {t}"
                )));
            }
            None => return Err(StoreError::InvalidBatch("no snapshot install in progress".into())),
        }
        let last = self.tail_read().last;
        if target > last {
            return Err(StoreError::InvalidBatch(format!(
                "applied index {target} would pass the last persisted entry {last}; record the snapshot first"
            )));
        }
        let mut wb = WriteBatch::default();
        let meta = &self.cf(CF_META)?;
        wb.put_cf(meta, KEY_APPLIED, codec::encode(Cf::Meta, KEY_APPLIED, &target)?);
        wb.delete_cf(meta, KEY_SM_INSTALL);
        self.commit_batch(wb, &self.sync)?;
        self.applied.store(target.0, Ordering::Release);
        self.install_pending.store(0, Ordering::Release);
        Ok(())
    }
}
