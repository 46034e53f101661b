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
    /// A read was confirmed at an index below one that was already committed when the read
    /// was asked for: the node that confirmed it was no longer the only leader (a stale
    /// lease, or a stale ReadIndex).
    StaleRead {
        /// The node that confirmed the read.
        node: NodeId,
        /// The index it confirmed.
        index: LogIndex,
        /// The highest index committed anywhere when the read was asked for.
        committed: LogIndex,
        /// Whether the read asked for a lease.
        lease: bool,
    },
    /// A voter granted its vote within one election timeout (on its own clock) of hearing
    /// from a leader, under check-quorum, for an election that was not a leader transfer: the
    /// leader's lease, which rests on that promise, no longer holds.
    VoteInLease {
        /// The voter.
        node: NodeId,
        /// The candidate it voted for.
        candidate: NodeId,
        /// The election's term.
        term: Term,
        /// The leader it had heard from.
        leader: NodeId,
        /// How long before the vote it heard from that leader (ns, on the voter's clock).
        since_ns: u64,
    },
    /// A membership rule was broken: a change accepted while another is in flight, or a
    /// snapshot recorded with a configuration other than the one in force at its index.
    Reconfiguration {
        /// The node.
        node: NodeId,
        /// What happened.
        detail: String,
    },
    /// A core handed out a committed entry that does not follow what the node's state machine
    /// has applied (and installed): the entries in between would never be applied there.
    ApplyGap {
        /// The node.
        node: NodeId,
        /// The entry handed out.
        index: LogIndex,
        /// What the state machine had applied.
        applied: LogIndex,
    },
    /// A core halted although its driver did nothing wrong (only I/O failures may stop a node).
    Halted {
        /// The node.
        node: NodeId,
        /// The core's reason.
        reason: String,
    },
    /// A core panicked.
    Panic {
        /// The panic message.
        detail: String,
    },
    /// A voter granted its vote in one term to two candidates (messages that left it): the
    /// failure a node that forgot its vote (lost synced state) is exposed to.
    DoubleVote {
        /// The voter.
        node: NodeId,
        /// The term.
        term: Term,
        /// The candidates, in the order the votes left.
        candidates: (NodeId, NodeId),
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
            Violation::StaleRead { node, index, committed, lease } => write!(
                f,
                "stale read: node {node} confirmed a {} read at index {index}, but index {committed} was already committed when it was asked for",
                if *lease { "lease" } else { "linearizable" }
            ),
            Violation::VoteInLease { node, candidate, term, leader, since_ns } => write!(
                f,
                "vote in lease: node {node} granted its vote to {candidate} for term {term} {:.1} ms after hearing from leader {leader} (check-quorum promises no vote for an election timeout)",
                *since_ns as f64 / 1e6
            ),
            Violation::Reconfiguration { node, detail } => write!(f, "reconfiguration: node {node} {detail}"),
            Violation::ApplyGap { node, index, applied } => write!(
                f,
                "apply gap: node {node} was handed entry {index} to apply with {applied} applied; the entries between would never be applied there"
            ),
            Violation::Halted { node, reason } => write!(f, "halt: node {node} halted: {reason}"),
            Violation::Panic { detail } => write!(f, "panic: a core panicked: {detail}"),
            Violation::DoubleVote { node, term, candidates } => write!(
                f,
                "double vote: node {node} granted its vote in term {term} to {} and then to {}",
                candidates.0, candidates.1
            ),
        }
    }
}

/// At most one vote per voter and term, among the grants that left the voters.
#[derive(Debug, Default)]
pub struct VoteOnce {
    votes: HashMap<(NodeId, Term), NodeId>,
}

impl VoteOnce {
    /// Records that a grant of `node`'s vote in `term` for `candidate` left `node`.
    pub fn observe_grant(&mut self, node: NodeId, term: Term, candidate: NodeId) -> Result<(), Violation> {
        match self.votes.insert((node, term), candidate) {
            Some(first) if first != candidate => {
                Err(Violation::DoubleVote { node, term, candidates: (first, candidate) })
            }
            _ => Ok(()),
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

/// Leader completeness: an entry committed in a term is in the log of the leader of every
/// later term (Raft's Leader Completeness Property). "Committed in a term" is the term of the
/// leader that counted the quorum, not the entry's own term: an entry of term 1 committed by
/// the leader of term 3 binds the leaders of terms 4 and up, not a leader of term 2 whose
/// election completes late.
#[derive(Debug, Default)]
pub struct LeaderCompleteness {
    /// Committed entry ids by index, with the term in which each was committed.
    committed: BTreeMap<LogIndex, (EntryId, Term)>,
}

impl LeaderCompleteness {
    /// Records that `id` was committed in term `in_term` (the term of the leader that counted
    /// the quorum; a later term only weakens the check).
    pub fn observe_commit(&mut self, id: EntryId, in_term: Term) {
        self.committed.entry(id.index).or_insert((id, in_term));
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
        for (id, in_term) in self.committed.range(floor.next()..).map(|(_, c)| c) {
            if *in_term >= term {
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

/// How many indexes below an acknowledged `match_index` [`check_durable`] compares term by
/// term (the earlier ones were compared when they were acknowledged).
pub const ACK_TERMS_CHECKED: u64 = 32;

/// Durability: a message leaves a node only once what it promises is on the node's stable
/// storage (`durable_hs`, `durable`: what survives a crash now, not what the node has merely
/// written). Checked, for a message `msg` sent by a node whose current term is `term_now` and
/// whose in-memory log answers `mem_term(index)`:
///
/// * every message but a pre-vote request or answer: its term is on stable storage (a
///   leader's appends included: a leader whose own vote completed the quorum must not send
///   before its term is durable);
/// * a granted vote: the vote is on stable storage (unless a later term already is, which the
///   vote can no longer contradict);
/// * a vote request: the candidate's vote for itself is on stable storage (likewise);
/// * an append acknowledgement of the current term: stable storage holds entries up to
///   `match_index`, and with the same terms as the log that made the acknowledgement (at
///   `match_index` and the [`ACK_TERMS_CHECKED`] indexes below it). An acknowledgement of an
///   earlier term is not compared: a later leader may legitimately have overwritten those
///   entries in the same group write that made them durable.
pub fn check_durable(
    msg: &Message,
    durable_hs: HardState,
    durable: &impl LogStorage,
    term_now: Term,
    mem_term: impl Fn(LogIndex) -> Option<Term>,
) -> Result<(), Violation> {
    let fail = |detail: String| Err(Violation::Durability { node: msg.from, detail });
    let pre_vote = match &msg.body {
        MessageBody::RequestVote(r) => r.pre_vote,
        MessageBody::VoteResponse(v) => v.pre_vote,
        _ => false,
    };
    if !pre_vote && durable_hs.term < msg.term {
        return fail(format!(
            "sent {} to {} at term {} while stable storage holds term {}",
            msg.body.kind(),
            msg.to,
            msg.term,
            durable_hs.term
        ));
    }
    match &msg.body {
        MessageBody::VoteResponse(v)
            if v.granted && !v.pre_vote && durable_hs.term == msg.term && durable_hs.vote != Some(msg.to) =>
        {
            fail(format!(
                "granted its vote to {} in term {} while stable storage holds term {} vote {:?}",
                msg.to, msg.term, durable_hs.term, durable_hs.vote
            ))
        }
        MessageBody::RequestVote(r)
            if !r.pre_vote && durable_hs.term == msg.term && durable_hs.vote != Some(msg.from) =>
        {
            fail(format!(
                "asked for votes in term {} before persisting its own vote (stable: term {} vote {:?})",
                msg.term, durable_hs.term, durable_hs.vote
            ))
        }
        MessageBody::AppendResponse(AppendResponse::Accepted { match_index }) if term_now == msg.term => {
            let match_index = *match_index;
            if durable.last_index() < match_index {
                return fail(format!(
                    "acknowledged entries up to {match_index} with only {} on stable storage",
                    durable.last_index()
                ));
            }
            let floor = durable.snapshot_last().index;
            let mut i = LogIndex(match_index.0.saturating_sub(ACK_TERMS_CHECKED)).max(floor);
            while i <= match_index {
                if let Some(mem) = mem_term(i) {
                    let stable = durable.term(i).ok();
                    if stable != Some(mem) {
                        return fail(format!(
                            "acknowledged entries up to {match_index} in term {}: its log holds {i}@{mem} but stable storage holds {}",
                            msg.term,
                            stable.map_or_else(|| "nothing".to_owned(), |t| format!("{i}@{t}"))
                        ));
                    }
                }
                i = i.next();
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The vote promise behind check-quorum and leases: a voter that heard from a leader at
/// `contact` (its own clock) grants no vote to another candidate before `contact +
/// election_timeout` — unless the election is a leadership transfer. `granted_at` is when it
/// decided, on the same clock.
pub fn check_vote_in_lease(
    node: NodeId,
    candidate: NodeId,
    term: Term,
    contact: (u64, NodeId),
    granted_at: u64,
    election_timeout_ns: u64,
) -> Result<(), Violation> {
    let (at, leader) = contact;
    let since = granted_at.saturating_sub(at);
    if leader != candidate && since < election_timeout_ns {
        return Err(Violation::VoteInLease { node, candidate, term, leader, since_ns: since });
    }
    Ok(())
}

/// Read freshness: a read confirmed at `index` must reflect every entry committed anywhere
/// before it was asked for (`committed_before`). The leader's commit index is the highest in
/// the cluster while it is the only leader; a lower one means another leader committed first
/// and the read was answered by a stale leader (an expired lease, or a confirmation that did
/// not come from a quorum of the current term). Cheaper than a linearizability search and
/// independent of what the clients happened to write.
pub fn check_read_fresh(
    node: NodeId,
    index: LogIndex,
    committed_before: LogIndex,
    lease: bool,
) -> Result<(), Violation> {
    if index < committed_before {
        return Err(Violation::StaleRead { node, index, committed: committed_before, lease });
    }
    Ok(())
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
        c.observe_commit(EntryId::new(Term(1), LogIndex(1)), Term(1));
        c.observe_commit(EntryId::new(Term(2), LogIndex(2)), Term(2));
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
        // An entry of term 1 committed in term 4 does not bind a leader of term 3 whose
        // election completes late, but it binds a leader of term 5.
        c.observe_commit(EntryId::new(Term(1), LogIndex(3)), Term(4));
        let lacks_3 =
            |i: LogIndex| [None, Some(Term(1)), Some(Term(2)), Some(Term(3))].get(i.0 as usize).copied().flatten();
        assert!(c.check_leader(n(2), Term(3), LogIndex::ZERO, lacks_3).is_ok());
        assert!(matches!(
            c.check_leader(n(2), Term(5), LogIndex::ZERO, lacks_3),
            Err(Violation::LeaderCompleteness { missing: EntryId { index: LogIndex(3), .. }, .. })
        ));
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

    /// The sender's in-memory log for these tests: terms 1, 1, 2 at indexes 1..=3.
    fn mem(i: LogIndex) -> Option<Term> {
        [None, Some(Term(1)), Some(Term(1)), Some(Term(2))].get(i.0 as usize).copied().flatten()
    }

    fn msg(from: u64, to: u64, term: u64, body: MessageBody) -> Message {
        Message { from: n(from), to: n(to), term: Term(term), body }
    }

    #[test]
    fn acknowledgements_before_persistence_are_caught() {
        let mut durable = MemLog::default();
        durable.append(&[e(1, 1, "a")]).unwrap();
        let hs = HardState { term: Term(1), vote: Some(n(2)), commit: LogIndex(0) };
        let ack =
            |m: u64| msg(1, 2, 1, MessageBody::AppendResponse(AppendResponse::Accepted { match_index: LogIndex(m) }));
        assert!(check_durable(&ack(1), hs, &durable, Term(1), mem).is_ok());
        assert!(check_durable(&ack(2), hs, &durable, Term(1), mem).is_err());
        let vote = |to: u64, term: u64| {
            msg(1, to, term, MessageBody::VoteResponse(VoteResponse { pre_vote: false, granted: true }))
        };
        assert!(check_durable(&vote(2, 1), hs, &durable, Term(1), mem).is_ok());
        assert!(check_durable(&vote(3, 1), hs, &durable, Term(1), mem).is_err());
        assert!(check_durable(&vote(2, 2), hs, &durable, Term(2), mem).is_err());
        let ask = msg(
            2,
            1,
            2,
            MessageBody::RequestVote(RequestVote { pre_vote: false, last: EntryId::ZERO, transfer: false }),
        );
        assert!(check_durable(&ask, hs, &durable, Term(2), mem).is_err());
    }

    #[test]
    fn acknowledged_terms_must_be_durable_not_only_the_last_index() {
        // Stable storage holds three entries, but index 3 is of term 1 while the log that
        // acknowledges holds 3@2 (a stale completion was taken for the current write).
        let mut durable = MemLog::default();
        durable.append(&[e(1, 1, "a"), e(2, 1, "b"), e(3, 1, "old")]).unwrap();
        let hs = HardState { term: Term(2), vote: None, commit: LogIndex(0) };
        let ack = |m: u64, term: u64| {
            msg(1, 2, term, MessageBody::AppendResponse(AppendResponse::Accepted { match_index: LogIndex(m) }))
        };
        assert!(check_durable(&ack(2, 2), hs, &durable, Term(2), mem).is_ok());
        let err = check_durable(&ack(3, 2), hs, &durable, Term(2), mem).unwrap_err();
        assert!(err.to_string().contains("3@2"), "{err}");
        // Once the node is in a later term, an old acknowledgement is not compared: a later
        // leader may have overwritten those entries in the same write.
        assert!(check_durable(&ack(3, 2), hs, &durable, Term(3), mem).is_ok());
        // Entries covered by a snapshot on stable storage are compared at the snapshot only.
        let mut compacted = durable.clone();
        compacted.apply_snapshot(quorate_log::SnapshotMeta {
            last: EntryId::new(Term(1), LogIndex(2)),
            config: quorate_log::Configuration::default(),
        });
        assert!(check_durable(&ack(2, 2), hs, &compacted, Term(2), mem).is_ok());
    }

    #[test]
    fn a_message_at_a_term_not_yet_durable_is_caught() {
        // Hole 1: a leader whose own vote made the quorum sends appends at its new term before
        // the term is on stable storage.
        let durable = MemLog::default();
        let old = HardState { term: Term(1), vote: Some(n(1)), commit: LogIndex(0) };
        let append = msg(
            1,
            2,
            2,
            MessageBody::Append(quorate_core::Append {
                prev: EntryId::ZERO,
                entries: vec![e(1, 2, "x")],
                commit: LogIndex::ZERO,
            }),
        );
        let err = check_durable(&append, old, &durable, Term(2), mem).unwrap_err();
        assert!(err.to_string().contains("at term 2 while stable storage holds term 1"), "{err}");
        let now = HardState { term: Term(2), ..old };
        assert!(check_durable(&append, now, &durable, Term(2), mem).is_ok());
        // Pre-votes promise nothing and are exempt.
        let pre = msg(
            1,
            2,
            2,
            MessageBody::RequestVote(RequestVote { pre_vote: true, last: EntryId::ZERO, transfer: false }),
        );
        assert!(check_durable(&pre, old, &durable, Term(1), mem).is_ok());
        let pre_grant = msg(1, 2, 2, MessageBody::VoteResponse(VoteResponse { pre_vote: true, granted: true }));
        assert!(check_durable(&pre_grant, old, &durable, Term(1), mem).is_ok());
    }

    #[test]
    fn a_vote_inside_a_lease_is_caught() {
        let eto = 150_000_000;
        // Heard from leader 1 at 1000 ms; a vote for 3 at 1005 ms breaks its lease.
        let err = check_vote_in_lease(n(2), n(3), Term(2), (1_000_000_000, n(1)), 1_005_000_000, eto).unwrap_err();
        assert!(matches!(err, Violation::VoteInLease { since_ns: 5_000_000, .. }), "{err}");
        assert!(check_vote_in_lease(n(2), n(3), Term(2), (1_000_000_000, n(1)), 1_150_000_000, eto).is_ok());
        // A vote for the leader it heard from is no breach.
        assert!(check_vote_in_lease(n(2), n(1), Term(2), (1_000_000_000, n(1)), 1_005_000_000, eto).is_ok());
    }

    #[test]
    fn a_read_below_an_earlier_commit_is_caught() {
        assert!(check_read_fresh(n(1), LogIndex(5), LogIndex(5), true).is_ok());
        assert!(check_read_fresh(n(1), LogIndex(6), LogIndex(5), false).is_ok());
        let err = check_read_fresh(n(1), LogIndex(4), LogIndex(5), true).unwrap_err();
        assert!(matches!(err, Violation::StaleRead { lease: true, .. }), "{err}");
    }
}
