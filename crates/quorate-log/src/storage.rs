//! The read-only log-storage trait the consensus core reads from, the durable state types it
//! hands to the application to persist, and an in-memory implementation.
//!
//! Following etcd's design, the core never writes to storage: it hands the application the
//! hard state and entries to persist (in its `Ready` output) and later reads them back through
//! [`LogStorage`]. That keeps the core free of I/O and lets one storage serve both.

use crate::config::Configuration;
use crate::entry::Entry;
use crate::ids::{EntryId, LogIndex, NodeId, Term};
use serde::{Deserialize, Serialize};

/// State that must be on stable storage before a node answers anything that depends on it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct HardState {
    /// The latest term this node has seen.
    pub term: Term,
    /// The candidate this node voted for in `term`, if any.
    pub vote: Option<NodeId>,
    /// The highest index this node knows to be committed.
    pub commit: LogIndex,
}

/// Metadata of a state-machine snapshot: the last entry it covers and the configuration then.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Id of the last entry included in the snapshot.
    pub last: EntryId,
    /// The configuration in force at `last`.
    pub config: Configuration,
}

/// What a node recovers from storage at start-up.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct InitialState {
    /// The persisted hard state.
    pub hard_state: HardState,
    /// The latest configuration: from the newest configuration entry in the log, or the
    /// snapshot's, or the bootstrap configuration.
    pub config: Configuration,
}

/// Errors from reading a log.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The requested index was compacted into a snapshot.
    #[error("index {0} has been compacted into a snapshot")]
    Compacted(LogIndex),
    /// The requested index is beyond the end of the log.
    #[error("index {0} is beyond the last index of the log")]
    Unavailable(LogIndex),
    /// Stored bytes failed verification.
    #[error("corrupt record at {key}: {detail}")]
    Corrupt {
        /// Which record (human-readable key).
        key: String,
        /// What was wrong.
        detail: String,
    },
    /// The storage medium failed.
    #[error("storage I/O error: {0}")]
    Io(String),
}

/// Read access to a node's persisted log. Implementations must be consistent with what the
/// application has persisted from the core's `Ready` outputs.
pub trait LogStorage {
    /// Hard state and configuration to start from.
    fn initial_state(&self) -> Result<InitialState, StorageError>;

    /// Id of the last entry covered by the latest snapshot ([`EntryId::ZERO`] if none). The
    /// log holds entries from `snapshot_last().index + 1` on.
    fn snapshot_last(&self) -> EntryId;

    /// Index of the last entry in the log (or `snapshot_last().index` if the log is empty).
    fn last_index(&self) -> LogIndex;

    /// Term of the entry at `index`; `snapshot_last().index` is answered from the snapshot.
    fn term(&self, index: LogIndex) -> Result<Term, StorageError>;

    /// Entries in `[lo, hi)`, stopping early once `max_bytes` (by [`Entry::size_bytes`]) would
    /// be exceeded, but always at least one entry when the range is non-empty.
    fn entries(&self, lo: LogIndex, hi: LogIndex, max_bytes: u64) -> Result<Vec<Entry>, StorageError>;

    /// The first index still in the log.
    fn first_index(&self) -> LogIndex {
        self.snapshot_last().index.next()
    }

    /// The id of the last compacted entry and the configuration in force there.
    ///
    /// The default answers the configuration from [`LogStorage::initial_state`], which is only
    /// right when the log holds no configuration entry; stores that keep configuration
    /// entries should answer the configuration recorded with the compaction point.
    fn snapshot_meta(&self) -> Result<SnapshotMeta, StorageError> {
        Ok(SnapshotMeta { last: self.snapshot_last(), config: self.initial_state()?.config })
    }
}

/// A shared store (for example one written by a persistence thread and read by the core).
impl<T: LogStorage + ?Sized> LogStorage for std::sync::Arc<T> {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        (**self).initial_state()
    }
    fn snapshot_last(&self) -> EntryId {
        (**self).snapshot_last()
    }
    fn last_index(&self) -> LogIndex {
        (**self).last_index()
    }
    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        (**self).term(index)
    }
    fn entries(&self, lo: LogIndex, hi: LogIndex, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        (**self).entries(lo, hi, max_bytes)
    }
    fn first_index(&self) -> LogIndex {
        (**self).first_index()
    }
    fn snapshot_meta(&self) -> Result<SnapshotMeta, StorageError> {
        (**self).snapshot_meta()
    }
}

/// An in-memory log: the reference model that durable stores are tested against, and the
/// store used by the simulator and benchmarks.
#[derive(Clone, Debug, Default)]
pub struct MemLog {
    hard_state: HardState,
    snapshot: SnapshotMeta,
    /// `entries[i]` has index `snapshot.last.index + 1 + i`.
    entries: Vec<Entry>,
}

impl MemLog {
    /// An empty log whose bootstrap configuration is `config`.
    #[must_use]
    pub fn new(config: Configuration) -> MemLog {
        MemLog { snapshot: SnapshotMeta { last: EntryId::ZERO, config }, ..MemLog::default() }
    }

    /// The persisted hard state.
    #[must_use]
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// Replaces the hard state.
    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    /// Every entry still held (after the snapshot).
    #[must_use]
    pub fn all_entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Appends `entries`, first truncating any existing suffix from `entries[0].index` on.
    /// `entries` must be contiguous and start at most one past the current last index.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        if first.index <= self.snapshot.last.index {
            return Err(StorageError::Compacted(first.index));
        }
        if first.index > self.last_index().next() {
            return Err(StorageError::Unavailable(first.index));
        }
        debug_assert!(entries.windows(2).all(|w| w[1].index == w[0].index.next()));
        self.truncate_from(first.index);
        self.entries.extend_from_slice(entries);
        Ok(())
    }

    /// Removes every entry with index `>= from`.
    pub fn truncate_from(&mut self, from: LogIndex) {
        let keep = from.distance_from(self.snapshot.last.index.next()) as usize;
        if from > self.snapshot.last.index {
            self.entries.truncate(keep);
        }
    }

    /// Drops entries up to and including `meta.last.index`, recording the snapshot metadata.
    /// Entries after it are kept if they agree with it; otherwise the whole log is discarded.
    pub fn apply_snapshot(&mut self, meta: SnapshotMeta) {
        let last = meta.last;
        if last.index <= self.snapshot.last.index {
            return;
        }
        let keep_suffix = self.term(last.index).ok() == Some(last.term);
        if keep_suffix {
            let drop = last.index.distance_from(self.snapshot.last.index) as usize;
            self.entries.drain(..drop.min(self.entries.len()));
        } else {
            self.entries.clear();
        }
        self.snapshot = meta;
    }

    /// The latest snapshot metadata.
    #[must_use]
    pub fn snapshot_meta(&self) -> &SnapshotMeta {
        &self.snapshot
    }

    fn offset(&self, index: LogIndex) -> Option<usize> {
        if index <= self.snapshot.last.index || index > self.last_index() {
            return None;
        }
        Some(index.distance_from(self.snapshot.last.index.next()) as usize)
    }
}

impl LogStorage for MemLog {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        let config = self
            .entries
            .iter()
            .rev()
            .find_map(|e| match &e.payload {
                crate::EntryPayload::Config(c) => Some(c.clone()),
                _ => None,
            })
            .unwrap_or_else(|| self.snapshot.config.clone());
        Ok(InitialState { hard_state: self.hard_state, config })
    }

    fn snapshot_last(&self) -> EntryId {
        self.snapshot.last
    }

    fn snapshot_meta(&self) -> Result<SnapshotMeta, StorageError> {
        Ok(self.snapshot.clone())
    }

    fn last_index(&self) -> LogIndex {
        LogIndex(self.snapshot.last.index.0 + self.entries.len() as u64)
    }

    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        if index == self.snapshot.last.index {
            return Ok(self.snapshot.last.term);
        }
        if index < self.snapshot.last.index {
            return Err(StorageError::Compacted(index));
        }
        match self.offset(index) {
            Some(o) => Ok(self.entries[o].term),
            None => Err(StorageError::Unavailable(index)),
        }
    }

    fn entries(&self, lo: LogIndex, hi: LogIndex, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        if lo >= hi {
            return Ok(Vec::new());
        }
        if lo <= self.snapshot.last.index {
            return Err(StorageError::Compacted(lo));
        }
        if hi.prev() > self.last_index() {
            return Err(StorageError::Unavailable(hi.prev()));
        }
        let start = self.offset(lo).ok_or(StorageError::Unavailable(lo))?;
        let end = start + hi.distance_from(lo) as usize;
        Ok(limit_bytes(&self.entries[start..end], max_bytes).to_vec())
    }
}

/// The longest prefix of `entries` whose total size is within `max_bytes`, but at least one
/// entry if `entries` is non-empty (so that progress is always possible).
#[must_use]
pub fn limit_bytes(entries: &[Entry], max_bytes: u64) -> &[Entry] {
    let mut total = 0u64;
    for (i, e) in entries.iter().enumerate() {
        total = total.saturating_add(e.size_bytes());
        if total > max_bytes && i > 0 {
            return &entries[..i];
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Data, EntryPayload};

    fn e(index: u64, term: u64) -> Entry {
        Entry { index: LogIndex(index), term: Term(term), payload: EntryPayload::Command(Data::from(vec![0; 76])) }
    }

    #[test]
    fn append_truncates_conflicting_suffix() {
        let mut log = MemLog::default();
        log.append(&[e(1, 1), e(2, 1), e(3, 1)]).unwrap();
        log.append(&[e(2, 2)]).unwrap();
        assert_eq!(log.last_index(), LogIndex(2));
        assert_eq!(log.term(LogIndex(2)), Ok(Term(2)));
        assert_eq!(log.append(&[e(5, 2)]), Err(StorageError::Unavailable(LogIndex(5))));
    }

    #[test]
    fn entries_are_bounded_in_bytes_but_never_empty() {
        let mut log = MemLog::default();
        log.append(&[e(1, 1), e(2, 1), e(3, 1)]).unwrap();
        // Each entry is 100 bytes.
        assert_eq!(log.entries(LogIndex(1), LogIndex(4), 250).unwrap().len(), 2);
        assert_eq!(log.entries(LogIndex(1), LogIndex(4), 1).unwrap().len(), 1);
        assert_eq!(log.entries(LogIndex(1), LogIndex(4), u64::MAX).unwrap().len(), 3);
        assert!(log.entries(LogIndex(2), LogIndex(5), u64::MAX).is_err());
    }

    #[test]
    fn snapshot_compacts_prefix() {
        let mut log = MemLog::default();
        log.append(&[e(1, 1), e(2, 1), e(3, 2)]).unwrap();
        log.apply_snapshot(SnapshotMeta { last: EntryId::new(Term(1), LogIndex(2)), config: Configuration::default() });
        assert_eq!(log.first_index(), LogIndex(3));
        assert_eq!(log.term(LogIndex(2)), Ok(Term(1)));
        assert_eq!(log.term(LogIndex(1)), Err(StorageError::Compacted(LogIndex(1))));
        assert_eq!(log.entries(LogIndex(3), LogIndex(4), 0).unwrap()[0].term, Term(2));
    }
}
