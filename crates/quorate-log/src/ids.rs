//! Identifier newtypes: a node id, a term and a log index are different things.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The identity of one cluster member. Zero is reserved and never a valid node id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(u64);

impl NodeId {
    /// Makes a node id; returns `None` for the reserved value zero.
    #[must_use]
    pub const fn new(id: u64) -> Option<NodeId> {
        if id == 0 { None } else { Some(NodeId(id)) }
    }

    /// The raw value (never zero).
    #[must_use]
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A Raft term: a logical clock that only moves forward. Term zero precedes every election.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Term(pub u64);

impl Term {
    /// The term before any election.
    pub const ZERO: Term = Term(0);

    /// The next term. Saturates rather than wrapping (2^64 elections will not happen).
    #[must_use]
    pub const fn next(self) -> Term {
        Term(self.0.saturating_add(1))
    }
}

impl fmt::Debug for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}", self.0)
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A position in the replicated log. The first entry has index 1; index 0 means "nothing".
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LogIndex(pub u64);

impl LogIndex {
    /// The position before the first entry.
    pub const ZERO: LogIndex = LogIndex(0);

    /// The following index.
    #[must_use]
    pub const fn next(self) -> LogIndex {
        LogIndex(self.0.saturating_add(1))
    }

    /// The preceding index, saturating at zero.
    #[must_use]
    pub const fn prev(self) -> LogIndex {
        LogIndex(self.0.saturating_sub(1))
    }

    /// Number of indexes from `earlier` up to `self` (zero when `earlier` is not earlier).
    #[must_use]
    pub const fn distance_from(self, earlier: LogIndex) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Debug for LogIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "i{}", self.0)
    }
}

impl fmt::Display for LogIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The identity of an entry: its index and the term in which a leader created it.
/// By the log-matching property two logs holding the same `EntryId` agree on the whole prefix.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct EntryId {
    /// Term of the entry.
    pub term: Term,
    /// Index of the entry.
    pub index: LogIndex,
}

impl EntryId {
    /// The id of the (virtual) entry before the first one.
    pub const ZERO: EntryId = EntryId { term: Term::ZERO, index: LogIndex::ZERO };

    /// Makes an entry id.
    #[must_use]
    pub const fn new(term: Term, index: LogIndex) -> EntryId {
        EntryId { term, index }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_zero_is_refused() {
        assert!(NodeId::new(0).is_none());
        assert_eq!(NodeId::new(7).map(NodeId::get), Some(7));
    }

    #[test]
    fn index_arithmetic_saturates() {
        assert_eq!(LogIndex::ZERO.prev(), LogIndex::ZERO);
        assert_eq!(LogIndex(5).distance_from(LogIndex(9)), 0);
        assert_eq!(LogIndex(9).distance_from(LogIndex(5)), 4);
        assert_eq!(Term(u64::MAX).next(), Term(u64::MAX));
    }
}
