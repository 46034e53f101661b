//! Safety checkers, written as small observers over what nodes do, so that the simulator can
//! feed them on every step and tests can feed them deliberately broken data.

use quorate_core::{AppendResponse, Message, MessageBody};
use quorate_log::{Entry, EntryId, HardState, LogIndex, LogStorage, NodeId, Term};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// A broken safety property, with the evidence.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Violation {
    /// Two leaders in one term.
    ElectionSafety {
        /// The term.
        term: Term,
        /// The two leaders.
        leaders: (NodeId, NodeId),
    },
    /// Two logs agree on an entry id but differ before it, or hold different payloads under
    /// one id.
    LogMatching {
        /// Nodes compared.
        nodes: (NodeId, NodeId),
        /// Where they differ.
        index: LogIndex,
        /// What differs.
        detail: String,
    },
    /// A leader lacks an entry that was committed before its term.
    LeaderCompleteness {
        /// The leader.
        leader: NodeId,
        /// Its term.
        term: Term,
        /// The committed entry it lacks.
        missing: EntryId,
    },
    /// Two nodes applied different entries at one index.
    StateMachineSafety {
        /// The node that disagreed.
        node: NodeId,
        /// Where.
        index: LogIndex,
        /// What was applied first (elsewhere).
        expected: EntryId,
        /// What this node applied.
        got: EntryId,
    },
    /// A node acknowledged state that was not on its stable storage.
    Durability {
        /// The node.
        node: NodeId,
        /// What it acknowledged.
        detail: String,
    },
    /// The client history is not linearizable.
    Linearizability {
        /// The checker's explanation.
        detail: String,
    },
    /// The cluster did not recover after faults healed.
    Liveness {
        /// What did not happen.
        detail: String,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::ElectionSafety { term, leaders } => {
                write!(f, "election safety: two leaders in term {term}: {} and {}", leaders.0, leaders.1)
            }
            Violation::LogMatching { nodes, index, detail } => {
                write!(f, "log matching: nodes {} and {} at index {index}: {detail}", nodes.0, nodes.1)
            }
            Violation::LeaderCompleteness { leader, term, missing } => write!(
                f,
                "leader completeness: leader {leader} of term {term} lacks committed entry {}@{}",
                missing.index, missing.term
            ),
            Violation::StateMachineSafety { node, index, expected, got } => write!(
                f,
                "state machine safety: node {node} applied {}@{} at {index}, another node applied {}@{}",
                got.index, got.term, expected.index, expected.term
            ),
            Violation::Durability { node, detail } => write!(f, "durability: node {node} {detail}"),
            Violation::Linearizability { detail } => write!(f, "linearizability: {detail}"),
            Violation::Liveness { detail } => write!(f, "liveness: {detail}"),
        }
    }
}

/// At most one leader per term.
#[derive(Debug, Default)]
pub struct ElectionSafety {
    leaders: HashMap<Term, NodeId>,
}

impl ElectionSafety {
    /// Records that `node` is leader in `term`.
    pub fn observe_leader(&mut self, node: NodeId, term: Term) -> Result<(), Violation> {
        match self.leaders.insert(term, node) {
            Some(other) if other != node => Err(Violation::ElectionSafety { term, leaders: (other, node) }),
            _ => Ok(()),
        }
    }

    /// Number of terms that had a leader.
    #[must_use]
    pub fn terms_with_leader(&self) -> usize {
        self.leaders.len()
    }
}

/// Log matching across a set of logs (each a contiguous run of entries): equal ids imply
/// equal entries and equal prefixes.
pub fn check_log_matching(logs: &[(NodeId, &[Entry])]) -> Result<(), Violation> {
    for (i, (a, la)) in logs.iter().enumerate() {
        for (b, lb) in &logs[i + 1..] {
            check_pair(*a, la, *b, lb)?;
        }
    }
    Ok(())
}

fn check_pair(a: NodeId, la: &[Entry], b: NodeId, lb: &[Entry]) -> Result<(), Violation> {
    let (Some(fa), Some(fb)) = (la.first(), lb.first()) else { return Ok(()) };
    // Align on the common index range.
    let lo = fa.index.max(fb.index);
    let hi = la.last().map_or(LogIndex::ZERO, |e| e.index).min(lb.last().map_or(LogIndex::ZERO, |e| e.index));
    if lo > hi {
        return Ok(());
    }
    let at = |l: &[Entry], first: LogIndex, i: LogIndex| -> Option<Entry> {
        l.get(i.distance_from(first) as usize).cloned()
    };
    // The highest index where the two agree on the term: everything below must be equal.
    let mut i = hi;
    let mut agreed: Option<LogIndex> = None;
    while i >= lo {
        let (ea, eb) = (at(la, fa.index, i), at(lb, fb.index, i));
        if let (Some(ea), Some(eb)) = (ea, eb)
            && ea.term == eb.term
        {
            agreed = Some(i);
            break;
        }
        if i == LogIndex::ZERO {
            break;
        }
        i = i.prev();
    }
    let Some(top) = agreed else { return Ok(()) };
    let mut i = lo;
    while i <= top {
        let (ea, eb) = (at(la, fa.index, i), at(lb, fb.index, i));
        if ea != eb {
            return Err(Violation::LogMatching {
                nodes: (a, b),
                index: i,
                detail: format!("both hold index {top} in the same term, but differ here: {ea:?} vs {eb:?}"),
            });
        }
        i = i.next();
    }
    Ok(())
}

/// Leader completeness: every entry committed before a leader's term is in its log.
#[derive(Debug, Default)]
pub struct LeaderCompleteness {
    /// Committed entry ids by index, with the term in which the commit was observed.
    committed: BTreeMap<LogIndex, EntryId>,
}

impl LeaderCompleteness {
    /// Records that `id` is committed.
    pub fn observe_commit(&mut self, id: EntryId) {
        self.committed.entry(id.index).or_insert(id);
    }

    /// The highest committed index observed.
    #[must_use]
    pub fn committed_index(&self) -> LogIndex {
        self.committed.keys().next_back().copied().unwrap_or_default()
    }

    /// Checks a leader of `term` whose log answers `term_at(index)` (`None` when it does not
    /// hold the index) and whose log is compacted up to `floor` (entries at or below it are
    /// covered by a snapshot, checked separately by [`StateMachineSafety::observe_snapshot`]).
    /// Only entries committed in earlier terms are required (checked when the leader is first
    /// observed).
    pub fn check_leader(
        &self,
        leader: NodeId,
        term: Term,
        floor: LogIndex,
        term_at: impl Fn(LogIndex) -> Option<Term>,
    ) -> Result<(), Violation> {
        for id in self.committed.range(floor.next()..).map(|(_, id)| id) {
            if id.term >= term {
                continue;
            }
            if term_at(id.index) != Some(id.term) {
                return Err(Violation::LeaderCompleteness { leader, term, missing: *id });
            }
        }
        Ok(())
    }
}

/// State machine safety: one entry per index across every node's applies.
#[derive(Debug, Default)]
pub struct StateMachineSafety {
    applied: Vec<EntryId>,
}

impl StateMachineSafety {
    /// Records that `node` applied `entry`.
    pub fn observe_apply(&mut self, node: NodeId, entry: &Entry) -> Result<(), Violation> {
        let idx = entry.index.0 as usize;
        if idx == 0 {
            return Ok(());
        }
        if idx <= self.applied.len() {
            let expected = self.applied[idx - 1];
            if expected != entry.id() {
                return Err(Violation::StateMachineSafety { node, index: entry.index, expected, got: entry.id() });
            }
            return Ok(());
        }
        if idx == self.applied.len() + 1 {
            self.applied.push(entry.id());
            return Ok(());
        }
        // A gap: some node applied further ahead without anyone recording the middle;
        // impossible because every node applies in order from 1.
        Err(Violation::StateMachineSafety { node, index: entry.index, expected: EntryId::ZERO, got: entry.id() })
    }

    /// Records that `node` installed (or took) a snapshot ending at `last`: the entry there
    /// must be the one applied everywhere else.
    pub fn observe_snapshot(&mut self, node: NodeId, last: EntryId) -> Result<(), Violation> {
        let idx = last.index.0 as usize;
        match self.applied.get(idx.wrapping_sub(1)) {
            _ if idx == 0 => Ok(()),
            Some(expected) if *expected == last => Ok(()),
            Some(expected) => {
                Err(Violation::StateMachineSafety { node, index: last.index, expected: *expected, got: last })
            }
            None => Err(Violation::StateMachineSafety { node, index: last.index, expected: EntryId::ZERO, got: last }),
        }
    }

    /// The highest index applied anywhere.
    #[must_use]
    pub fn applied_index(&self) -> LogIndex {
        LogIndex(self.applied.len() as u64)
    }
}

/// Durability: a message that acknowledges state is only sent once that state is on the
/// sender's stable storage (`durable`). Checks votes, vote requests and append
/// acknowledgements.
pub fn check_durable(msg: &Message, durable_hs: HardState, durable: &impl LogStorage) -> Result<(), Violation> {
    let fail = |detail: String| Err(Violation::Durability { node: msg.from, detail });
    match &msg.body {
        MessageBody::VoteResponse(v)
            if v.granted && !v.pre_vote && (durable_hs.term != msg.term || durable_hs.vote != Some(msg.to)) =>
        {
            fail(format!(
                "granted its vote to {} in term {} while stable storage holds term {} vote {:?}",
                msg.to, msg.term, durable_hs.term, durable_hs.vote
            ))
        }
        MessageBody::RequestVote(r)
            if !r.pre_vote && (durable_hs.term != msg.term || durable_hs.vote != Some(msg.from)) =>
        {
            fail(format!(
                "asked for votes in term {} before persisting its own vote (stable: term {} vote {:?})",
                msg.term, durable_hs.term, durable_hs.vote
            ))
        }
        MessageBody::AppendResponse(AppendResponse::Accepted { match_index })
            if durable.last_index() < *match_index =>
        {
            fail(format!(
                "acknowledged entries up to {match_index} with only {} on stable storage",
                durable.last_index()
            ))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorate_core::{RequestVote, VoteResponse};
    use quorate_log::{Data, EntryPayload, MemLog};

    fn n(i: u64) -> NodeId {
        NodeId::new(i).unwrap()
    }

    fn e(i: u64, t: u64, p: &str) -> Entry {
        Entry { index: LogIndex(i), term: Term(t), payload: EntryPayload::Command(Data::from(p)) }
    }

    #[test]
    fn two_leaders_in_one_term_are_caught() {
        let mut c = ElectionSafety::default();
        c.observe_leader(n(1), Term(2)).unwrap();
        c.observe_leader(n(1), Term(2)).unwrap();
        c.observe_leader(n(2), Term(3)).unwrap();
        assert!(matches!(c.observe_leader(n(3), Term(2)), Err(Violation::ElectionSafety { .. })));
    }

    #[test]
    fn diverging_prefix_is_caught() {
        let a = vec![e(1, 1, "x"), e(2, 1, "y"), e(3, 2, "z")];
        let b = vec![e(1, 1, "x"), e(2, 1, "DIFFERENT"), e(3, 2, "z")];
        let c = vec![e(1, 1, "x"), e(2, 1, "y"), e(3, 3, "other term is fine")];
        assert!(check_log_matching(&[(n(1), &a), (n(3), &c)]).is_ok());
        let err = check_log_matching(&[(n(1), &a), (n(2), &b)]).unwrap_err();
        assert!(matches!(err, Violation::LogMatching { index: LogIndex(2), .. }), "{err}");
    }

    #[test]
    fn leader_missing_a_committed_entry_is_caught() {
        let mut c = LeaderCompleteness::default();
        c.observe_commit(EntryId::new(Term(1), LogIndex(1)));
        c.observe_commit(EntryId::new(Term(2), LogIndex(2)));
        let good = |i: LogIndex| [None, Some(Term(1)), Some(Term(2))].get(i.0 as usize).copied().flatten();
        assert!(c.check_leader(n(1), Term(3), LogIndex::ZERO, good).is_ok());
        let bad = |i: LogIndex| [None, Some(Term(1)), Some(Term(1))].get(i.0 as usize).copied().flatten();
        assert!(matches!(
            c.check_leader(n(2), Term(3), LogIndex::ZERO, bad),
            Err(Violation::LeaderCompleteness { .. })
        ));
        // Entries below a snapshot are not looked up in the log.
        let compacted = |i: LogIndex| if i.0 <= 2 { None } else { Some(Term(3)) };
        assert!(c.check_leader(n(3), Term(3), LogIndex(2), compacted).is_ok());
    }

    #[test]
    fn different_applies_at_one_index_are_caught() {
        let mut c = StateMachineSafety::default();
        c.observe_apply(n(1), &e(1, 1, "a")).unwrap();
        c.observe_apply(n(2), &e(1, 1, "a")).unwrap();
        assert!(c.observe_apply(n(3), &e(1, 2, "b")).is_err());
        assert!(c.observe_apply(n(3), &e(5, 2, "gap")).is_err());
        assert!(c.observe_snapshot(n(3), EntryId::new(Term(1), LogIndex(1))).is_ok());
        assert!(c.observe_snapshot(n(3), EntryId::new(Term(2), LogIndex(1))).is_err());
        assert!(c.observe_snapshot(n(3), EntryId::new(Term(1), LogIndex(9))).is_err());
    }

    #[test]
    fn acknowledgements_before_persistence_are_caught() {
        let mut durable = MemLog::default();
        durable.append(&[e(1, 1, "a")]).unwrap();
        let hs = HardState { term: Term(1), vote: Some(n(2)), commit: LogIndex(0) };
        let ack = |m: u64| Message {
            from: n(1),
            to: n(2),
            term: Term(1),
            body: MessageBody::AppendResponse(AppendResponse::Accepted { match_index: LogIndex(m) }),
        };
        assert!(check_durable(&ack(1), hs, &durable).is_ok());
        assert!(check_durable(&ack(2), hs, &durable).is_err());
        let vote = |to: u64, term: u64| Message {
            from: n(1),
            to: n(to),
            term: Term(term),
            body: MessageBody::VoteResponse(VoteResponse { pre_vote: false, granted: true }),
        };
        assert!(check_durable(&vote(2, 1), hs, &durable).is_ok());
        assert!(check_durable(&vote(3, 1), hs, &durable).is_err());
        assert!(check_durable(&vote(2, 2), hs, &durable).is_err());
        let ask = Message {
            from: n(2),
            to: n(1),
            term: Term(2),
            body: MessageBody::RequestVote(RequestVote { pre_vote: false, last: EntryId::ZERO, transfer: false }),
        };
        assert!(check_durable(&ask, hs, &durable).is_err());
    }
}
