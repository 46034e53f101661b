//! The core's view of its log: persisted entries (read through [`LogStorage`]) followed by
//! entries appended in memory and not yet reported persisted ("unstable"), and the persisted
//! watermark.
//!
//! ## The watermark and its marks
//!
//! Every persist batch handed out carries a *mark*: the last entry the batch writes (or the
//! snapshot it installs). When the application reports the batch, the watermark moves to its
//! mark. A mark alone is not unique: after a truncation and a re-truncation the log can hold
//! the same `(term, index)` again, written by a later batch, while the earlier batch's
//! entries have meanwhile been overwritten on disk by a batch in between (issue 16, hole 3).
//! So a truncation at `at` caps the mark of every batch in flight at `at - 1` (the entries
//! below `at` are untouched by the truncation and stay what those batches wrote), and a
//! snapshot install that discards the log drops them: a completion then proves exactly what
//! its batch put on disk and no later batch has taken away.

use crate::danger::{Danger, HoleId};
use crate::types::IoId;
use quorate_log::{Entry, EntryId, LogIndex, LogStorage, StorageError, Term, limit_bytes};
use std::collections::VecDeque;

/// Where the entry at an index stands on its way to stable storage.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Durability {
    /// On stable storage.
    Durable,
    /// In this batch (handed out, not yet reported).
    InBatch(IoId),
    /// Not handed out yet: it goes into a later batch — the next one, or one after it when
    /// batches are bounded ([`RaftLog::hand_out`]); the batch that hands it out makes it
    /// durable.
    Later,
}

/// A snapshot install on its way to stable storage. The application installs the snapshot's
/// state-machine data when the batch carrying it is reported persisted; until then nothing
/// above the snapshot is handed out to apply (it would be applied on the state from before the
/// snapshot, and the install then skipped as already covered).
#[derive(Clone, Copy, PartialEq, Eq, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) enum InstallInFlight {
    /// Installed in the core, not handed out yet: it goes into the next batch.
    NextBatch,
    /// In this batch (handed out, not yet reported).
    InBatch(IoId),
}

/// Why entries could not be appended.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub(crate) enum AppendError {
    /// Reading the log failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// An entry conflicts with a committed one: a committed entry would be lost.
    #[error("entry {new:?} conflicts with the committed {held:?} (commit {commit}): a committed entry would be lost")]
    ConflictBelowCommit {
        /// The entry received.
        new: EntryId,
        /// The entry this log holds at its index.
        held: EntryId,
        /// This log's commit index.
        commit: LogIndex,
    },
    /// The entries do not follow `prev` one index after the other.
    #[error("entry at {index} where {expected} was due")]
    NotContiguous {
        /// The index found.
        index: LogIndex,
        /// The index due.
        expected: LogIndex,
    },
}

/// Storage plus the unstable tail.
///
/// Invariants (asserted in [`RaftLog::check`]):
/// * `unstable[i].index == unstable_offset + i`, contiguous;
/// * indexes below `unstable_offset` are read from storage, never at or above it;
/// * `persisted <= last_index()`, `handed <= last_index()`, `commit <= last_index()`;
/// * every mark of a batch in flight names an entry this log holds (or held before a
///   compaction), written by that batch or an earlier one.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(bound(serialize = "", deserialize = "S: Default"))]
pub(crate) struct RaftLog<S> {
    /// Not part of a core image (`crate::CoreImage`): restored with the storage given.
    #[serde(skip)]
    pub(crate) storage: S,
    unstable: Vec<Entry>,
    unstable_offset: LogIndex,
    /// Last index handed to the application in a persist batch.
    handed: LogIndex,
    /// Highest index known persisted and matching this log.
    pub(crate) persisted: LogIndex,
    pub(crate) commit: LogIndex,
    /// Last index handed to the application to apply.
    pub(crate) applied: LogIndex,
    /// A compaction point or installed snapshot handed out for persistence that storage may
    /// not reflect yet: nothing at or below it is read from storage.
    floor: EntryId,
    /// Batches handed out and not yet reported, in order, each with the entry up to which it
    /// makes this log durable (capped by later truncations; see the module docs).
    marks: VecDeque<(IoId, EntryId)>,
    /// The latest snapshot install not yet reported persisted, if any.
    install: Option<InstallInFlight>,
    /// Holes of issue 16 switched back on (tests only; see `crate::danger`).
    #[serde(skip)]
    pub(crate) danger: Danger,
}

impl<S> RaftLog<S> {
    /// The same log over another storage (restoring a `crate::CoreImage`).
    pub(crate) fn with_storage<T>(self, storage: T) -> RaftLog<T> {
        let RaftLog {
            storage: _,
            unstable,
            unstable_offset,
            handed,
            persisted,
            commit,
            applied,
            floor,
            marks,
            install,
            danger,
        } = self;
        RaftLog {
            storage,
            unstable,
            unstable_offset,
            handed,
            persisted,
            commit,
            applied,
            floor,
            marks,
            install,
            danger,
        }
    }
}

impl<S: LogStorage> RaftLog<S> {
    pub(crate) fn new(storage: S, commit: LogIndex, applied: LogIndex) -> RaftLog<S> {
        let last = storage.last_index();
        let snap = storage.snapshot_last().index;
        // The application applies only committed entries, so its applied index is committed
        // even if the persisted commit index lags behind it (commit is persisted lazily).
        let commit = commit.max(applied).min(last).max(snap);
        RaftLog {
            unstable: Vec::new(),
            unstable_offset: last.next(),
            handed: last,
            persisted: last,
            commit,
            applied: applied.max(snap).min(commit),
            floor: storage.snapshot_last(),
            marks: VecDeque::new(),
            install: None,
            danger: Danger::default(),
            storage,
        }
    }

    /// The last entry covered by a snapshot or compaction (entries up to it are gone).
    pub(crate) fn floor(&self) -> EntryId {
        let s = self.storage.snapshot_last();
        if s.index >= self.floor.index { s } else { self.floor }
    }

    pub(crate) fn last_index(&self) -> LogIndex {
        match self.unstable.last() {
            Some(e) => e.index,
            None => self.unstable_offset.prev(),
        }
    }

    pub(crate) fn first_index(&self) -> LogIndex {
        self.floor().index.next()
    }

    pub(crate) fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        let floor = self.floor();
        if index < floor.index {
            return Err(StorageError::Compacted(index));
        }
        if index == floor.index {
            return Ok(floor.term);
        }
        if index >= self.unstable_offset {
            let off = index.distance_from(self.unstable_offset) as usize;
            return self.unstable.get(off).map(|e| e.term).ok_or(StorageError::Unavailable(index));
        }
        self.storage.term(index)
    }

    pub(crate) fn last_id(&self) -> EntryId {
        let last = self.last_index();
        // The last index is always readable: from unstable, storage, or the snapshot.
        EntryId::new(self.term(last).unwrap_or(Term::ZERO), last)
    }

    /// Whether this log holds `id`.
    pub(crate) fn matches(&self, id: EntryId) -> bool {
        self.term(id.index).is_ok_and(|t| t == id.term)
    }

    /// Whether a log ending at `last` is at least as up to date as this one.
    pub(crate) fn is_up_to_date(&self, last: EntryId) -> bool {
        let mine = self.last_id();
        (last.term, last.index) >= (mine.term, mine.index)
    }

    /// Entries in `[lo, hi)` bounded by `max_bytes` (at least one when non-empty).
    pub(crate) fn entries(&self, lo: LogIndex, hi: LogIndex, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        let hi = hi.min(self.last_index().next());
        if lo >= hi {
            return Ok(Vec::new());
        }
        if lo <= self.floor().index {
            return Err(StorageError::Compacted(lo));
        }
        let mut out = if lo < self.unstable_offset {
            self.storage.entries(lo, hi.min(self.unstable_offset), max_bytes)?
        } else {
            Vec::new()
        };
        let stored_end = lo.0 + out.len() as u64;
        if hi > self.unstable_offset && stored_end >= self.unstable_offset.0 {
            let used: u64 = out.iter().map(Entry::size_bytes).sum();
            let from = LogIndex(stored_end.max(self.unstable_offset.0));
            let a = from.distance_from(self.unstable_offset) as usize;
            let b = hi.distance_from(self.unstable_offset) as usize;
            let tail = &self.unstable[a..b.min(self.unstable.len())];
            if out.is_empty() {
                out.extend_from_slice(limit_bytes(tail, max_bytes));
            } else {
                let budget = max_bytes.saturating_sub(used);
                let mut total = 0;
                for e in tail {
                    total += e.size_bytes();
                    if total > budget {
                        break;
                    }
                    out.push(e.clone());
                }
            }
        }
        Ok(out)
    }

    /// Appends one entry at `last_index() + 1`.
    pub(crate) fn push(&mut self, entry: Entry) {
        debug_assert_eq!(entry.index, self.last_index().next());
        self.unstable.push(entry);
    }

    /// Appends `entries`, which must follow an entry this log holds, truncating any
    /// conflicting suffix. Returns the index of the last entry of `entries` (or `prev`) and
    /// the index from which entries were written, if any. Entries that already match are
    /// skipped so nothing persisted is rewritten. Entries that do not follow `prev` one after
    /// the other, or that conflict with a committed entry, are refused (nothing is appended):
    /// they come from a peer, which must never make this log lose a committed entry.
    pub(crate) fn append_after(
        &mut self,
        prev: EntryId,
        entries: &[Entry],
    ) -> Result<(LogIndex, Option<LogIndex>), AppendError> {
        debug_assert!(self.matches(prev));
        let mut expected = prev.index.next();
        for e in entries {
            if e.index != expected {
                return Err(AppendError::NotContiguous { index: e.index, expected });
            }
            expected = expected.next();
        }
        let last_new = entries.last().map_or(prev.index, |e| e.index);
        // First entry whose term differs (or that is past our end).
        let mut start = entries.len();
        for (i, e) in entries.iter().enumerate() {
            if e.index > self.last_index() {
                start = i;
                break;
            }
            match self.term(e.index) {
                Ok(t) if t == e.term => continue,
                Err(StorageError::Compacted(_)) => continue,
                Ok(t) => {
                    if e.index <= self.commit {
                        let held = EntryId::new(t, e.index);
                        return Err(AppendError::ConflictBelowCommit { new: e.id(), held, commit: self.commit });
                    }
                    start = i;
                    break;
                }
                Err(err) => return Err(err.into()),
            }
        }
        if start < entries.len() {
            let at = entries[start].index;
            self.truncate_from(at);
            self.unstable.extend_from_slice(&entries[start..]);
            return Ok((last_new, Some(at)));
        }
        Ok((last_new, None))
    }

    /// Installs a snapshot ending at `last`: entries up to it are replaced by the snapshot;
    /// a suffix that agrees with it is kept, anything else is discarded. The install goes out
    /// in the next batch ([`RaftLog::hand_out`] with `install`); until that batch is reported,
    /// the watermark does not pass what was durable before.
    pub(crate) fn install_snapshot(&mut self, last: EntryId) {
        debug_assert!(last.index > self.commit);
        if !self.matches(last) {
            self.unstable.clear();
            self.unstable_offset = last.index.next();
            self.handed = last.index;
            // The install discards the whole log on disk: no earlier batch's completion says
            // anything about this log any more. Only committed entries are known to agree with
            // what is durable.
            self.marks.clear();
            self.persisted = self.persisted.min(self.commit);
        } else if last.index >= self.unstable_offset {
            let n = last.index.distance_from(self.unstable_offset) as usize + 1;
            self.unstable.drain(..n.min(self.unstable.len()));
            self.unstable_offset = last.index.next();
            self.handed = self.handed.max(last.index);
        }
        self.floor = last;
        self.commit = self.commit.max(last.index);
        self.applied = self.applied.max(last.index);
        self.install = Some(InstallInFlight::NextBatch);
    }

    /// Compacts the log up to `last` (covered by a snapshot): nothing at or below it is read
    /// from storage from now on.
    pub(crate) fn compact(&mut self, last: EntryId) {
        debug_assert!(last.index <= self.applied && last.index <= self.persisted);
        if last.index > self.floor().index {
            self.floor = last;
        }
    }

    fn truncate_from(&mut self, at: LogIndex) {
        debug_assert!(at > self.commit);
        // With hole 3 re-introduced (tests only) the marks are left alone, as before issue 16.
        if !self.danger.on(HoleId::PersistedAba) {
            // Batches in flight that wrote at or above `at` make the log durable only below it
            // once this truncation reaches the disk; cap their marks (see the module docs).
            let below = at.prev();
            let below = EntryId::new(self.term(below).unwrap_or(self.floor().term), below);
            for (_, mark) in &mut self.marks {
                if mark.index >= at {
                    *mark = below;
                }
            }
        }
        if at >= self.unstable_offset {
            let keep = at.distance_from(self.unstable_offset) as usize;
            self.unstable.truncate(keep);
        } else {
            // Truncating into persisted entries: the next persist batch starts at `at` and the
            // storage overwrites from there. Until then nothing at or above `at` is read from
            // storage.
            self.unstable.clear();
            self.unstable_offset = at;
        }
        self.handed = self.handed.min(at.prev());
        self.persisted = self.persisted.min(at.prev());
    }

    /// Entries not yet handed out for persistence, for batch `io` (which also carries
    /// `install`, a snapshot installed since the last batch, if any), at most `max_entries`
    /// of them and `max_bytes` of their sizes (but at least one, so that a batch always makes
    /// progress); marks them handed and records the batch's mark. What is left goes into the
    /// next batches ([`RaftLog::has_unhanded`]).
    pub(crate) fn hand_out(
        &mut self,
        io: IoId,
        install: Option<EntryId>,
        max_entries: u64,
        max_bytes: u64,
    ) -> Vec<Entry> {
        let from = self.handed.next().max(self.unstable_offset);
        let out = if from > self.last_index() {
            Vec::new()
        } else {
            let a = from.distance_from(self.unstable_offset) as usize;
            let b =
                self.unstable.len().min(a.saturating_add(usize::try_from(max_entries.max(1)).unwrap_or(usize::MAX)));
            limit_bytes(&self.unstable[a..b], max_bytes).to_vec()
        };
        self.handed = match out.last() {
            Some(e) => e.index,
            // Nothing left to hand out: everything up to the last index is in a batch.
            None => self.last_index(),
        };
        if install.is_some() {
            self.install = Some(InstallInFlight::InBatch(io));
        }
        if let Some(mark) = out.last().map(Entry::id).or(install) {
            debug_assert!(self.marks.back().is_none_or(|(b, _)| *b < io));
            self.marks.push_back((io, mark));
        }
        out
    }

    /// The application reports batch `io` (and every earlier one) on stable storage.
    pub(crate) fn on_persisted(&mut self, io: IoId) {
        if let Some(InstallInFlight::InBatch(b)) = self.install
            && b <= io
        {
            self.install = None;
        }
        while let Some(&(b, mark)) = self.marks.front() {
            if b > io {
                break;
            }
            self.marks.pop_front();
            self.persisted_to(mark);
        }
    }

    /// Where the entry at `index` (of this log) stands on its way to stable storage.
    pub(crate) fn durability(&self, index: LogIndex) -> Durability {
        if index <= self.persisted {
            return Durability::Durable;
        }
        // The first batch in flight whose mark reaches `index` wrote it (marks are capped by
        // truncations, so a mark at or above `index` means the entry there is still the one
        // that batch, or an earlier one, wrote).
        match self.marks.iter().find(|(_, m)| m.index >= index) {
            Some((io, _)) => Durability::InBatch(*io),
            None => Durability::Later,
        }
    }

    /// The application persisted a batch ending at `last`.
    fn persisted_to(&mut self, last: EntryId) {
        if last.index <= self.persisted || !self.matches(last) {
            // Already known, or overwritten since: a later batch will cover it.
            return;
        }
        self.persisted = last.index;
        if last.index >= self.unstable_offset {
            let n = last.index.distance_from(self.unstable_offset) as usize + 1;
            self.unstable.drain(..n.min(self.unstable.len()));
            self.unstable_offset = last.index.next();
        }
    }

    /// Moves the commit index up to `index` (never back). Refused beyond the last index:
    /// nothing is committed that this log does not hold.
    pub(crate) fn commit_to(&mut self, index: LogIndex) -> Result<bool, String> {
        if index <= self.commit {
            return Ok(false);
        }
        if index > self.last_index() {
            return Err(format!("commit {index} beyond the last index {}", self.last_index()));
        }
        self.commit = index;
        Ok(true)
    }

    /// Committed, persisted entries not yet handed out to apply, bounded in bytes; marks
    /// them handed. None while a snapshot install is in flight (see [`InstallInFlight`]).
    pub(crate) fn take_committed(&mut self, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        let hi = self.commit.min(self.persisted);
        if hi <= self.applied || self.install.is_some() {
            return Ok(Vec::new());
        }
        let out = self.entries(self.applied.next(), hi.next(), max_bytes)?;
        if let Some(e) = out.last() {
            self.applied = e.index;
        }
        Ok(out)
    }

    pub(crate) fn has_committed_to_apply(&self) -> bool {
        self.commit.min(self.persisted) > self.applied && self.install.is_none()
    }

    pub(crate) fn has_unhanded(&self) -> bool {
        self.handed < self.last_index()
    }

    /// The last index handed out in a persist batch: a batch's commit index never passes it
    /// (storage holds no commit index beyond the entries written).
    pub(crate) fn handed(&self) -> LogIndex {
        self.handed
    }

    /// The largest index ≤ `index` whose term is ≤ `term` (etcd's findConflictByTerm): lets a
    /// leader skip all entries of a term a follower does not have.
    pub(crate) fn find_conflict_by_term(&self, index: LogIndex, term: Term) -> EntryId {
        let mut i = index.min(self.last_index());
        let floor = self.floor().index;
        loop {
            match self.term(i) {
                Ok(t) if t <= term => return EntryId::new(t, i),
                Ok(_) if i > floor => i = i.prev(),
                _ => return EntryId::new(Term::ZERO, i),
            }
        }
    }

    pub(crate) fn check(&self) {
        debug_assert!(self.unstable.iter().enumerate().all(|(i, e)| e.index.0 == self.unstable_offset.0 + i as u64));
        debug_assert!(self.persisted <= self.last_index());
        debug_assert!(self.handed <= self.last_index());
        debug_assert!(self.commit <= self.last_index());
        debug_assert!(self.applied <= self.commit);
        debug_assert!(self.floor.index <= self.last_index());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorate_log::{EntryPayload, MemLog};

    fn e(i: u64, t: u64) -> Entry {
        Entry { index: LogIndex(i), term: Term(t), payload: EntryPayload::Noop }
    }

    #[test]
    fn truncation_into_persisted_entries_is_rewritten_by_the_next_batch() {
        let mut store = MemLog::default();
        store.append(&[e(1, 1), e(2, 1), e(3, 1)]).unwrap();
        let mut log = RaftLog::new(store, LogIndex(1), LogIndex::ZERO);
        let (last, written) = log.append_after(EntryId::new(Term(1), LogIndex(1)), &[e(2, 2), e(3, 2)]).unwrap();
        assert_eq!(last, LogIndex(3));
        assert_eq!(written, Some(LogIndex(2)));
        assert_eq!(log.term(LogIndex(2)), Ok(Term(2)));
        assert_eq!(log.persisted, LogIndex(1));
        let batch = log.hand_out(IoId(1), None, u64::MAX, u64::MAX);
        assert_eq!(batch.first().map(|e| e.index), Some(LogIndex(2)));
        log.storage.append(&batch).unwrap();
        log.on_persisted(IoId(1));
        assert_eq!(log.persisted, LogIndex(3));
        log.check();
    }

    #[test]
    fn stale_completion_does_not_advance_persisted() {
        let mut log = RaftLog::new(MemLog::default(), LogIndex::ZERO, LogIndex::ZERO);
        log.push(e(1, 1));
        log.push(e(2, 1));
        let _ = log.hand_out(IoId(1), None, u64::MAX, u64::MAX);
        log.append_after(EntryId::new(Term(1), LogIndex(1)), &[e(2, 2)]).unwrap();
        log.on_persisted(IoId(1));
        assert_eq!(log.persisted, LogIndex(1), "batch 1 made 1@1 durable; its 2@1 is overwritten");
        assert_eq!(log.hand_out(IoId(2), None, u64::MAX, u64::MAX), vec![e(2, 2)]);
    }

    /// Hole 3 of issue 16 at the level of the log: batch 1 writes 1..3@1, batch 2 overwrites
    /// from 1 with 1@2, batch 3 brings 1..3@1 back. Batch 1's completion, with batch 2 on disk
    /// too (a group commit), must not mark 1..3@1 persisted: storage holds 1@2 there.
    #[test]
    fn a_completion_from_before_two_truncations_proves_nothing_about_the_log_after_them() {
        let mut log = RaftLog::new(MemLog::default(), LogIndex::ZERO, LogIndex::ZERO);
        let a = [e(1, 1), e(2, 1), e(3, 1)];
        log.append_after(EntryId::ZERO, &a).unwrap();
        let batch_a = log.hand_out(IoId(1), None, u64::MAX, u64::MAX);
        log.append_after(EntryId::ZERO, &[e(1, 2)]).unwrap();
        let batch_b = log.hand_out(IoId(2), None, u64::MAX, u64::MAX);
        log.append_after(EntryId::ZERO, &a).unwrap();
        let batch_c = log.hand_out(IoId(3), None, u64::MAX, u64::MAX);
        log.storage.append(&batch_a).unwrap();
        log.storage.append(&batch_b).unwrap();
        log.on_persisted(IoId(1));
        assert_eq!(log.persisted, LogIndex::ZERO, "nothing batch 1 wrote is still this log's on disk");
        assert_eq!(log.term(LogIndex(1)), Ok(Term(1)), "the log still reads what it holds");
        log.on_persisted(IoId(2));
        assert_eq!(log.persisted, LogIndex::ZERO);
        log.storage.append(&batch_c).unwrap();
        log.on_persisted(IoId(3));
        assert_eq!(log.persisted, LogIndex(3));
        log.check();
    }

    /// A byte budget that exactly fits entries from storage and from the unstable tail returns
    /// all of them (found by mutation testing: `>` and `>=` at the budget's edge).
    #[test]
    fn entries_fill_a_byte_budget_exactly_across_storage_and_the_unstable_tail() {
        let mut store = MemLog::default();
        store.append(&[e(1, 1), e(2, 1)]).unwrap();
        let mut log = RaftLog::new(store, LogIndex::ZERO, LogIndex::ZERO);
        log.push(e(3, 1));
        log.push(e(4, 1));
        let size = e(1, 1).size_bytes();
        let all = log.entries(LogIndex(1), LogIndex(5), 4 * size).unwrap();
        assert_eq!(all.iter().map(|x| x.index.0).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        let three = log.entries(LogIndex(1), LogIndex(5), 4 * size - 1).unwrap();
        assert_eq!(three.len(), 3, "one byte short of the fourth entry");
        // From the unstable tail alone, at least one entry whatever the budget.
        assert_eq!(log.entries(LogIndex(3), LogIndex(5), 1).unwrap().len(), 1);
        assert_eq!(log.entries(LogIndex(3), LogIndex(5), 2 * size).unwrap().len(), 2);
    }

    #[test]
    fn conflict_hint_skips_a_term() {
        let mut store = MemLog::default();
        store.append(&[e(1, 1), e(2, 1), e(3, 3), e(4, 3), e(5, 3)]).unwrap();
        let log = RaftLog::new(store, LogIndex::ZERO, LogIndex::ZERO);
        assert_eq!(log.find_conflict_by_term(LogIndex(5), Term(2)), EntryId::new(Term(1), LogIndex(2)));
        assert_eq!(log.find_conflict_by_term(LogIndex(9), Term(3)), EntryId::new(Term(3), LogIndex(5)));
        assert_eq!(log.find_conflict_by_term(LogIndex(5), Term(0)), EntryId::new(Term(0), LogIndex(0)));
    }

    /// The hint never goes below the floor: at the floor with a later term it answers the floor
    /// itself, unknown term (found by mutation testing: a guard replaced by `true` survived).
    #[test]
    fn conflict_hint_stops_at_the_floor() {
        let mut store = MemLog::default();
        store.append(&[e(1, 1), e(2, 1), e(3, 3), e(4, 3), e(5, 3)]).unwrap();
        let mut log = RaftLog::new(store, LogIndex(5), LogIndex(5));
        log.compact(EntryId::new(Term(3), LogIndex(3)));
        assert_eq!(log.floor(), EntryId::new(Term(3), LogIndex(3)));
        assert_eq!(log.find_conflict_by_term(LogIndex(5), Term(2)), EntryId::new(Term(0), LogIndex(3)));
        assert_eq!(log.find_conflict_by_term(LogIndex(5), Term(3)), EntryId::new(Term(3), LogIndex(5)));
    }
}
