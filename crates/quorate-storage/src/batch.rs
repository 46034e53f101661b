//! What a write carries ([`PersistBatch`], [`SmOp`]), the durable-log trait both stores
//! implement, and the validation shared by every store: one planner decides whether a batch
//! keeps the log's invariants, so the in-memory and the RocksDB store cannot disagree.

use crate::error::StoreError;
use quorate_log::{
    Configuration, Entry, EntryPayload, HardState, InitialState, LogIndex, LogStorage, SnapshotMeta, Term,
};
use std::collections::BTreeMap;

/// The most entries one [`PersistBatch`] may append.
pub const BATCH_ENTRIES_MAX: usize = 1 << 16;
/// The most payload bytes (by [`Entry::size_bytes`]) one [`PersistBatch`] may append.
pub const BATCH_BYTES_MAX: u64 = 64 << 20;
/// The most term runs the in-memory tail cache keeps (older runs are read from disk).
pub(crate) const TERM_RUNS_MAX: usize = 4096;

/// One atomic, durable write: what the consensus core's `Ready` output asks the application
/// to persist before it sends anything that depends on it.
///
/// Applied in this order, all or nothing (the order of `quorate-core`'s `Persist`):
/// 1. `install`: record a snapshot received from the leader; the log prefix it covers is
///    dropped, and the whole log if the log does not hold the snapshot's last entry;
/// 2. `compact`: the same for a snapshot this node took (normally only the prefix goes);
/// 3. `truncate_from`: remove every entry at or after this index (a conflicting suffix);
/// 4. `entries`: append; if the first entry's index is not past the last one, the log is
///    truncated from it first (so a leader's overwrite needs no explicit `truncate_from`);
/// 5. `hard_state`: replace the hard state (term, vote, commit).
///
/// Then the write is fsynced before [`DurableLog::write`] returns, unless every batch of the
/// write sets `skip_fsync`.
///
/// The store refuses (with [`StoreError::InvalidBatch`], [`StoreError::Unavailable`] or
/// [`StoreError::Compacted`], and no change) any batch that would leave a gap, let a term go
/// backwards, change a vote within a term, lower the commit index, truncate or discard entries
/// up to the persisted commit index, or commit past the last entry.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct PersistBatch {
    /// The new hard state, if it changed.
    pub hard_state: Option<HardState>,
    /// Remove every entry with index `>=` this first.
    pub truncate_from: Option<LogIndex>,
    /// Contiguous entries to append.
    pub entries: Vec<Entry>,
    /// A snapshot received from the leader: its metadata is recorded and the log up to
    /// `last.index` dropped (all of it if the log's term at `last.index` differs).
    pub install: Option<SnapshotMeta>,
    /// A snapshot taken locally: its metadata is recorded and the log prefix up to
    /// `last.index` dropped.
    pub compact: Option<SnapshotMeta>,
    /// Write without waiting for an fsync. Only for batches whose loss at a crash is safe
    /// (the core sets this when nothing but the commit index changed). A write that also
    /// carries any batch without this flag is fsynced.
    pub skip_fsync: bool,
}

impl PersistBatch {
    /// A batch that appends `entries`.
    #[must_use]
    pub fn append(entries: Vec<Entry>) -> PersistBatch {
        PersistBatch { entries, ..PersistBatch::default() }
    }

    /// Sets the hard state.
    #[must_use]
    pub fn with_hard_state(mut self, hs: HardState) -> PersistBatch {
        self.hard_state = Some(hs);
        self
    }

    /// Whether the batch changes nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.hard_state.is_none()
            && self.truncate_from.is_none()
            && self.entries.is_empty()
            && self.install.is_none()
            && self.compact.is_none()
    }

    /// Bytes the batch appends, by [`Entry::size_bytes`].
    #[must_use]
    pub fn size_bytes(&self) -> u64 {
        self.entries.iter().map(Entry::size_bytes).sum()
    }
}

/// One state-machine write, applied together with the applied index.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum SmOp {
    /// Sets `key` to `value`.
    Put {
        /// The application's key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Removes `key`.
    Delete {
        /// The application's key.
        key: Vec<u8>,
    },
    /// Removes every key (before installing a snapshot's data).
    Clear,
}

/// A log store that can also be written: the trait the conformance suite runs against, so that
/// [`MemStore`](crate::MemStore) and [`RocksStore`](crate::RocksStore) behave identically.
pub trait DurableLog: LogStorage {
    /// Persists `batch` atomically; on `Ok` it is durable (for a durable store: fsynced).
    fn write(&self, batch: PersistBatch) -> Result<(), StoreError>;

    /// The persisted hard state.
    fn hard_state(&self) -> HardState;

    /// Records `meta` and drops the log prefix it covers (see [`PersistBatch::compact`]).
    fn compact_to(&self, meta: SnapshotMeta) -> Result<(), StoreError> {
        self.write(PersistBatch { compact: Some(meta), ..PersistBatch::default() })
    }
}

/// An in-memory summary of a log, enough to validate writes and answer `last_index`, `term`
/// (of cached indexes) and `initial_state` without touching the disk.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tail {
    pub(crate) snapshot: SnapshotMeta,
    pub(crate) last: LogIndex,
    /// Runs of equal terms, `(first index of the run, term)`, covering `[runs[0].0, last]`
    /// (empty if no entry is cached). Terms of older entries are read from disk.
    pub(crate) runs: Vec<(LogIndex, Term)>,
    /// Configuration entries in the log.
    pub(crate) configs: BTreeMap<LogIndex, Configuration>,
    pub(crate) hard: HardState,
}

/// What a validated batch does, for the store to carry out.
#[derive(Clone, Debug, Default)]
pub(crate) struct Plan {
    /// Delete every log entry (and configuration mirror) at or after this index.
    pub(crate) truncate_from: Option<LogIndex>,
    /// Snapshots to record (install, then compact), each with the exclusive end of the log
    /// range it deletes. Carried out before the truncation and the appends.
    pub(crate) compactions: Vec<(SnapshotMeta, LogIndex)>,
}

impl Tail {
    /// The term at `index` if it is answered from memory.
    pub(crate) fn cached_term(&self, index: LogIndex) -> Option<Term> {
        if index == self.snapshot.last.index {
            return Some(self.snapshot.last.term);
        }
        let first = self.runs.first()?.0;
        if index < first || index > self.last {
            return None;
        }
        let at = self.runs.partition_point(|r| r.0 <= index);
        // `at >= 1` because runs[0].0 <= index.
        Some(self.runs[at - 1].1)
    }

    /// The term at `index`, from memory or through `lookup` (which reads the disk).
    pub(crate) fn term(
        &self,
        index: LogIndex,
        lookup: &dyn Fn(LogIndex) -> Result<Term, StoreError>,
    ) -> Result<Term, StoreError> {
        if index < self.snapshot.last.index {
            return Err(StoreError::Compacted(index));
        }
        if index > self.last {
            return Err(StoreError::Unavailable(index));
        }
        match self.cached_term(index) {
            Some(t) => Ok(t),
            None => lookup(index),
        }
    }

    /// The latest configuration: the newest configuration entry, else the snapshot's.
    pub(crate) fn config(&self) -> &Configuration {
        self.configs.values().next_back().unwrap_or(&self.snapshot.config)
    }

    pub(crate) fn initial_state(&self) -> InitialState {
        InitialState { hard_state: self.hard, config: self.config().clone() }
    }

    fn truncate(&mut self, from: LogIndex) {
        debug_assert!(from > self.snapshot.last.index && from <= self.last);
        self.last = from.prev();
        let keep = self.runs.partition_point(|r| r.0 < from);
        self.runs.truncate(keep);
        self.configs.split_off(&from);
    }

    pub(crate) fn push(&mut self, e: &Entry) {
        debug_assert_eq!(e.index, self.last.next());
        if self.runs.last().map(|r| r.1) != Some(e.term) {
            self.runs.push((e.index, e.term));
        }
        self.last = e.index;
        if let EntryPayload::Config(c) = &e.payload {
            self.configs.insert(e.index, c.clone());
        }
    }

    fn compact(&mut self, meta: SnapshotMeta, keep_suffix: bool) {
        let at = meta.last.index;
        if keep_suffix {
            // Runs that end at or before `at` go; the run covering `at + 1` starts there.
            let first_kept = at.next();
            let covering = self.runs.partition_point(|r| r.0 <= first_kept);
            if covering > 0 {
                self.runs.drain(..covering - 1);
                if let Some(r) = self.runs.first_mut() {
                    r.0 = r.0.max(first_kept);
                }
            }
            if at >= self.last {
                self.runs.clear();
            }
            self.configs = self.configs.split_off(&first_kept);
        } else {
            self.runs.clear();
            self.configs.clear();
            self.last = at;
        }
        self.snapshot = meta;
    }

    /// Forgets the oldest term runs beyond [`TERM_RUNS_MAX`]; their terms are read from disk.
    pub(crate) fn trim(&mut self) {
        if self.runs.len() > TERM_RUNS_MAX {
            let drop = self.runs.len() - TERM_RUNS_MAX;
            self.runs.drain(..drop);
        }
    }

    /// Validates `batch` against this tail and applies it to `self`. On error `self` may be
    /// partly changed: callers plan on a clone.
    pub(crate) fn plan(
        &mut self,
        batch: &PersistBatch,
        lookup: &dyn Fn(LogIndex) -> Result<Term, StoreError>,
    ) -> Result<Plan, StoreError> {
        let mut plan = Plan::default();
        let old_commit = self.hard.commit;
        if let Some(hs) = &batch.hard_state {
            if hs.term < self.hard.term {
                return Err(invalid(format!("hard state term would go back from {} to {}", self.hard.term, hs.term)));
            }
            if hs.term == self.hard.term && self.hard.vote.is_some() && hs.vote != self.hard.vote {
                return Err(invalid(format!(
                    "vote in term {} would change from {:?} to {:?}",
                    hs.term, self.hard.vote, hs.vote
                )));
            }
            if hs.commit < self.hard.commit {
                return Err(invalid(format!("commit index would go back from {} to {}", self.hard.commit, hs.commit)));
            }
        }
        if batch.entries.len() > BATCH_ENTRIES_MAX {
            return Err(invalid(format!(
                "{} entries in one batch, the limit is {BATCH_ENTRIES_MAX}",
                batch.entries.len()
            )));
        }
        if batch.size_bytes() > BATCH_BYTES_MAX {
            return Err(invalid(format!(
                "{} bytes of entries in one batch, the limit is {BATCH_BYTES_MAX}",
                batch.size_bytes()
            )));
        }

        // 1, 2. Snapshots: installed from the leader, then taken locally.
        for meta in [&batch.install, &batch.compact].into_iter().flatten() {
            let at = meta.last.index;
            if at <= self.snapshot.last.index {
                continue;
            }
            let keep = at <= self.last && self.term(at, lookup)? == meta.last.term;
            if !keep && old_commit > at {
                return Err(invalid(format!(
                    "a snapshot at {at} disagrees with the log and would discard committed entries up to {old_commit}"
                )));
            }
            let delete_end = if keep { at.next() } else { LogIndex(u64::MAX) };
            self.compact(meta.clone(), keep);
            plan.compactions.push((meta.clone(), delete_end));
        }

        // 3. Truncation, explicit or implied by the first entry.
        let mut truncate = batch.truncate_from;
        if let Some(first) = batch.entries.first()
            && first.index <= self.last
        {
            truncate = Some(truncate.map_or(first.index, |t| t.min(first.index)));
        }
        if let Some(from) = truncate {
            if from <= self.snapshot.last.index {
                return Err(StoreError::Compacted(from));
            }
            if from <= self.last {
                if from <= old_commit {
                    return Err(invalid(format!(
                        "truncating from {from} would remove committed entries (commit {old_commit})"
                    )));
                }
                self.truncate(from);
                plan.truncate_from = Some(from);
            }
        }

        // 4. Append.
        if let Some(first) = batch.entries.first() {
            if first.index != self.last.next() {
                return Err(StoreError::Unavailable(first.index));
            }
            let mut prev = self.term(self.last, lookup)?;
            for (i, e) in batch.entries.iter().enumerate() {
                if e.index != self.last.next() {
                    return Err(invalid(format!(
                        "entry {i} of the batch has index {}, expected {}",
                        e.index,
                        self.last.next()
                    )));
                }
                if e.term < prev {
                    return Err(invalid(format!(
                        "entry {} has term {}, older than the term {prev} before it",
                        e.index, e.term
                    )));
                }
                prev = e.term;
                self.push(e);
            }
        }

        // 5. Hard state.
        if let Some(hs) = batch.hard_state {
            self.hard = hs;
        }

        if self.hard.commit > self.last {
            return Err(invalid(format!(
                "commit index {} would be past the last entry {}",
                self.hard.commit, self.last
            )));
        }
        Ok(plan)
    }
}

fn invalid(s: String) -> StoreError {
    StoreError::InvalidBatch(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorate_log::EntryId;

    fn e(index: u64, term: u64) -> Entry {
        Entry { index: LogIndex(index), term: Term(term), payload: EntryPayload::Noop }
    }

    fn no_disk(i: LogIndex) -> Result<Term, StoreError> {
        panic!("unexpected disk read of {i}")
    }

    #[test]
    fn runs_follow_appends_truncation_and_compaction() {
        let mut t = Tail::default();
        t.plan(&PersistBatch::append(vec![e(1, 1), e(2, 1), e(3, 2), e(4, 2), e(5, 3)]), &no_disk).unwrap();
        assert_eq!(t.runs, vec![(LogIndex(1), Term(1)), (LogIndex(3), Term(2)), (LogIndex(5), Term(3))]);
        assert_eq!(t.cached_term(LogIndex(4)), Some(Term(2)));
        t.plan(&PersistBatch::append(vec![e(4, 4)]), &no_disk).unwrap();
        assert_eq!(t.last, LogIndex(4));
        assert_eq!(t.cached_term(LogIndex(4)), Some(Term(4)));
        assert_eq!(t.cached_term(LogIndex(3)), Some(Term(2)));
        let hs = HardState { commit: LogIndex(3), ..HardState::default() };
        t.plan(
            &PersistBatch {
                hard_state: Some(hs),
                compact: Some(SnapshotMeta {
                    last: EntryId::new(Term(2), LogIndex(3)),
                    config: Configuration::default(),
                }),
                ..PersistBatch::default()
            },
            &no_disk,
        )
        .unwrap();
        assert_eq!(t.runs, vec![(LogIndex(4), Term(4))]);
        assert_eq!(t.cached_term(LogIndex(3)), Some(Term(2)));
        assert_eq!(t.term(LogIndex(2), &no_disk), Err(StoreError::Compacted(LogIndex(2))));
    }

    #[test]
    fn invariants_are_refused() {
        let mut t = Tail::default();
        t.plan(
            &PersistBatch::append(vec![e(1, 1), e(2, 2)]).with_hard_state(HardState {
                term: Term(2),
                vote: quorate_log::NodeId::new(1),
                commit: LogIndex(1),
            }),
            &no_disk,
        )
        .unwrap();
        let cases = [
            PersistBatch::append(vec![e(4, 2)]),
            PersistBatch::append(vec![e(3, 1)]),
            PersistBatch::append(vec![e(3, 2), e(5, 2)]),
            PersistBatch::append(vec![e(1, 3)]),
            PersistBatch::default().with_hard_state(HardState::default()),
            PersistBatch::default().with_hard_state(HardState {
                term: Term(2),
                vote: quorate_log::NodeId::new(3),
                commit: LogIndex(1),
            }),
            PersistBatch::default().with_hard_state(HardState { term: Term(3), vote: None, commit: LogIndex(3) }),
        ];
        for b in cases {
            let mut c = t.clone();
            assert!(c.plan(&b, &no_disk).is_err(), "{b:?} was accepted");
        }
    }
}
