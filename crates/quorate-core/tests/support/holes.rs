//! The scenarios of issue 16's four holes, shared by `tests/holes.rs` (each must come out
//! `Ok`) and `tests/holes_reintroduced.rs` (with the hole switched back on, each must return the
//! evidence). Set-up steps that have nothing to do with the hole panic when they fail, so that
//! a broken set-up is never mistaken for a caught hole.

use super::net::{Net, Prep, n};
use quorate_core::{
    Append, ConfChange, ConfChangeError, HeartbeatResponse, IoId, Message, MessageBody, RequestVote, Role, VoteResponse,
};
use quorate_log::{
    Configuration, Data, Entry, EntryId, EntryPayload, LogIndex, LogStorage, MemLog, NodeId, SnapshotMeta, Term,
};
use std::time::Duration;

pub(crate) fn conf(voters: &[u64], outgoing: &[u64], learners: &[u64]) -> Configuration {
    Configuration {
        voters: voters.iter().map(|i| n(*i)).collect(),
        voters_outgoing: outgoing.iter().map(|i| n(*i)).collect(),
        learners: learners.iter().map(|i| n(*i)).collect(),
    }
}

fn msg(from: u64, to: u64, term: u64, body: MessageBody) -> Message {
    Message { from: n(from), to: n(to), term: Term(term), body }
}

fn stored(r: &quorate_core::Raft<MemLog>) -> Vec<Entry> {
    let s = r.storage();
    s.entries(s.first_index(), s.last_index().next(), u64::MAX).expect("readable")
}

// ----- hole 1 -----

/// Where node 1's own vote closes the quorum.
#[derive(Clone, Copy, Debug)]
pub(crate) enum SelfVoteShape {
    /// Voters {1}, learner {2}: a cluster grown from one node with learners.
    OneVoterOneLearner,
    /// Voters {1}, learners {2, 3}.
    OneVoterTwoLearners,
    /// A joint configuration whose halves are both {1}, learner {2}.
    JointOfOne,
}

/// How node 1 starts its campaign.
#[derive(Clone, Copy, Debug)]
pub(crate) enum CampaignBy {
    /// `campaign_now` at once (at start-up).
    CampaignNow,
    /// Its election timer.
    Timeout,
}

/// Hole 1: node 1 campaigns, wins on its own vote and proposes X; it crashes before the batch
/// holding the new term is written, restarts at the old term, wins the same term again and
/// proposes Y at the same index. No message at a term may leave before that term is durable,
/// and the learners' logs must match the leader's.
pub(crate) fn self_vote_sends_early(prep: Prep, shape: SelfVoteShape, by: CampaignBy) -> Result<(), String> {
    let c = match shape {
        SelfVoteShape::OneVoterOneLearner => conf(&[1], &[], &[2]),
        SelfVoteShape::OneVoterTwoLearners => conf(&[1], &[], &[2, 3]),
        SelfVoteShape::JointOfOne => conf(&[1], &[1], &[2]),
    };
    let learners: Vec<u64> = c.learners.iter().map(|l| l.get()).collect();
    let ids: Vec<u64> = std::iter::once(1).chain(learners.iter().copied()).collect();
    let mut net = Net::with_nodes(prep, &ids, &c, |_| {});
    let campaign = |net: &mut Net| match by {
        CampaignBy::CampaignNow => {
            let now = net.now;
            net.raft(1).campaign_now(now);
        }
        CampaignBy::Timeout => {
            let t = net.raft(1).poll_timeout().expect("a follower has an election timer");
            net.now = net.now.max(t);
            let now = net.now;
            net.raft(1).handle_timeout(now);
        }
    };
    campaign(&mut net);
    assert_eq!(net.raft(1).role(), Role::Leader, "node 1 wins on its own vote ({shape:?})");
    let now = net.now;
    let x = net.raft(1).propose(now, Data::from("X")).expect("the leader accepts");
    net.ready(1);
    assert!(!net.node(1).disk.is_empty(), "the batch with the new term is handed out");
    // Whatever node 1 sent reaches the learners, which write it; their answers are lost.
    for _ in 0..4 {
        net.drop_where(|m| m.to == n(1));
        net.deliver(|_| true);
        for &l in &learners {
            net.ready(l);
            net.persist(l);
            net.ready(l);
        }
    }
    net.drop_where(|_| true);
    // Node 1 crashes before its batch reaches the disk, restarts and wins the same term again.
    net.crash(1);
    net.advance(1);
    campaign(&mut net);
    assert_eq!(net.raft(1).role(), Role::Leader, "node 1 wins again after the restart");
    let now = net.now;
    let y = net.raft(1).propose(now, Data::from("Y")).expect("the leader accepts");
    assert_eq!(y.index, x.index, "X and Y are proposed at the same index");
    net.settle(100, |_| true);
    assert!(net.raft(1).commit_index() >= y.index, "the second Y commits");
    let leader_log = stored(net.raft(1));
    for l in learners {
        let learner_log = stored(net.raft(l));
        for (a, b) in leader_log.iter().zip(&learner_log) {
            if a != b {
                return Err(format!("log matching broken: the leader holds {a:?}, learner {l} holds {b:?}"));
            }
        }
        assert_eq!(learner_log.len(), leader_log.len(), "learner {l} caught up");
    }
    if let Some(e) = net.early.first() {
        return Err(format!("a message left before its term was durable: {e}"));
    }
    Ok(())
}

// ----- hole 2 -----

/// How the committed joint configuration ends up only in the configuration at the log's floor.
#[derive(Clone, Copy, Debug)]
pub(crate) enum JointBase {
    /// The survivors snapshot at the joint entry and compact their logs with no tail.
    Compacted,
    /// ... and then restart from their storage.
    Restarted,
}

/// Hole 2: voters {1,2,3}; leader 1 removes itself; the joint configuration commits, the
/// appends carrying the entry that leaves it are lost, nodes 2 and 3 learn the commit from
/// heartbeats and snapshot at the joint entry with no tail. The next leader (2 or 3) must
/// refuse another change while joint and must leave the joint configuration.
pub(crate) fn joint_only_in_base(prep: Prep, how: JointBase) -> Result<(), String> {
    let mut net = Net::with_nodes(prep, &[1, 2, 3], &conf(&[1, 2, 3], &[], &[]), |c| {
        c.compaction_tail_entries = 0;
        c.snapshot_entries_threshold = 0;
        c.snapshot_bytes_threshold = 0;
    });
    net.elect(1);
    let now = net.now;
    let joint = net.raft(1).propose_conf_change(now, ConfChange::Remove(n(1))).expect("the leader accepts");
    let after_joint = joint.index.next();
    let carries_leave = move |m: &Message| matches!(&m.body, MessageBody::Append(a) if a.entries.iter().any(|e| e.index >= after_joint));
    let learned = net.run_until(
        500,
        |m| !carries_leave(m),
        |net| {
            [2, 3].iter().all(|&i| {
                net.raft(i).commit_index() >= joint.index && net.node(i).applied.len() as u64 >= joint.index.0
            })
        },
    );
    assert!(learned, "nodes 2 and 3 learn that the joint entry committed");
    assert_eq!(net.raft(1).role(), Role::Leader, "node 1 still leads the joint configuration");
    for i in [2, 3] {
        let now = net.now;
        let r = net.raft(i);
        assert_eq!(r.last_index(), joint.index, "node {i} never received the entry leaving the joint configuration");
        assert!(r.configuration().is_joint());
        let config = r.configuration().clone();
        r.snapshot_taken(now, SnapshotMeta { last: joint, config });
        net.ready(i);
        net.persist(i);
        assert_eq!(net.raft(i).storage().first_index(), after_joint, "node {i} compacted its whole log");
    }
    if let JointBase::Restarted = how {
        net.crash(2);
        net.crash(3);
    }
    // Node 1 is cut off; 2 or 3 wins.
    let cut = |m: &Message| m.from != n(1) && m.to != n(1);
    let elected = net.run_until(2000, cut, |net| net.leaders().iter().any(|l| *l != n(1)));
    assert!(elected, "a new leader among 2 and 3");
    let leader = *net.leaders().iter().find(|l| **l != n(1)).expect("elected");
    let l = leader.get();
    assert!(net.raft(l).configuration().is_joint(), "the new leader starts in the joint configuration");
    let now = net.now;
    match net.raft(l).propose_conf_change(now, ConfChange::AddLearner(n(4))) {
        Err(ConfChangeError::ChangeInFlight(_)) => {}
        other => return Err(format!("node {l} answered a change proposed while joint with {other:?}")),
    }
    let left = net.run_until(2000, cut, |net| {
        [2, 3].iter().all(|&i| {
            let r = net.raft(i);
            !r.configuration().is_joint() && r.commit_index().0 >= r.config_version().0
        })
    });
    if !left {
        let c = net.raft(l).configuration().clone();
        return Err(format!("node {l} leads but never leaves the joint configuration {c:?}"));
    }
    let c = net.raft(l).configuration().clone();
    assert_eq!(c.voters, [2, 3].map(n).into_iter().collect(), "{c:?}");
    assert!(!c.is_voter(n(1)) && !c.is_learner(n(1)), "node 1 is gone: {c:?}");
    Ok(())
}

/// With `auto_leave_joint` off, the application leaves a committed joint configuration with
/// `leave_joint`; it is refused while the joint entry is uncommitted and while the leave
/// entry is.
pub(crate) fn manual_leave_joint(prep: Prep) -> Result<(), String> {
    let mut net = Net::with_nodes(prep, &[1, 2, 3], &conf(&[1, 2, 3], &[], &[]), |c| c.auto_leave_joint = false);
    net.elect(1);
    let now = net.now;
    let joint = net.raft(1).propose_conf_change(now, ConfChange::Remove(n(3))).expect("the leader accepts");
    match net.raft(1).leave_joint(now) {
        Err(ConfChangeError::ChangeInFlight(i)) if i == joint.index => {}
        other => return Err(format!("leave_joint before the joint entry commits: {other:?}")),
    }
    let committed = net.run_until(200, |_| true, |net| net.raft(1).commit_index() >= joint.index);
    assert!(committed, "the joint entry commits");
    net.settle(50, |_| true);
    assert!(net.raft(1).configuration().is_joint(), "not left automatically");
    let now = net.now;
    let leave = match net.raft(1).leave_joint(now) {
        Ok(id) => id,
        Err(e) => return Err(format!("leave_joint on a committed joint configuration: {e}")),
    };
    if let Ok(again) = net.raft(1).leave_joint(now) {
        return Err(format!("a second leave_joint was accepted at {again:?}"));
    }
    let done = net.run_until(200, |_| true, |net| net.raft(2).commit_index() >= leave.index);
    assert!(done, "the leave entry commits");
    let c = net.raft(2).configuration().clone();
    assert!(!c.is_joint() && c.voters == [1, 2].map(n).into_iter().collect(), "{c:?}");
    Ok(())
}

// ----- hole 3 -----

/// How the follower's store writes the three batches.
#[derive(Clone, Copy, Debug)]
pub(crate) enum AbaWrites {
    /// The first two batches in one write (a group commit), reported one by one.
    Merged,
    /// One write per batch.
    OneByOne,
}

fn entry(i: u64, t: u64, s: &str) -> Entry {
    Entry { index: LogIndex(i), term: Term(t), payload: EntryPayload::Command(Data::from(s)) }
}

fn append(from: u64, term: u64, entries: Vec<Entry>, commit: u64) -> Message {
    let body = MessageBody::Append(Append { prev: EntryId::ZERO, entries, commit: LogIndex(commit) });
    msg(from, 5, term, body)
}

/// Hole 3: follower 5 of five voters writes the entries of the leader of term 2 (batch A), has
/// them overwritten by the leader of term 3 (batch B), and gets them back, committed, from the
/// leader of term 4 (batch C) — three batches in flight. Completions arrive for A after B is
/// on disk too. The core must never take an entry as persisted that storage does not hold,
/// and must hand out exactly the committed entries.
pub(crate) fn persisted_aba(prep: Prep, writes: AbaWrites) -> Result<(), String> {
    let mut net = Net::with_nodes(prep, &[5], &conf(&[1, 2, 3, 4, 5], &[], &[]), |_| {});
    net.advance(200);
    let l4 = vec![
        entry(1, 2, "a"),
        entry(2, 2, "b"),
        entry(3, 2, "c"),
        Entry { index: LogIndex(4), term: Term(4), payload: EntryPayload::Noop },
    ];
    for m in [append(1, 2, l4[..3].to_vec(), 0), append(2, 3, vec![entry(1, 3, "x")], 0), append(1, 4, l4.clone(), 4)] {
        net.wire.push(m);
        net.deliver(|_| true);
        net.ready(5);
    }
    let ios: Vec<IoId> = net.node(5).disk.iter().map(|p| p.io).collect();
    assert_eq!(ios.len(), 3, "three batches in flight");
    let check = |net: &mut Net, step: &str| -> Result<(), String> {
        let r = net.raft(5);
        if let Some(h) = r.halted() {
            return Err(format!("{step}: the follower halted: {h}"));
        }
        let persisted = r.status().persisted_index;
        for i in 1..=persisted.0 {
            let durable = r.storage().term(LogIndex(i)).ok();
            if durable != Some(l4[(i - 1) as usize].term) {
                return Err(format!(
                    "{step}: entries up to {persisted} taken as persisted, but storage holds {durable:?} at {i}"
                ));
            }
        }
        for i in 1..=r.last_index().0 {
            let t = r.entry_term(LogIndex(i)).ok();
            if t != Some(l4[(i - 1) as usize].term) {
                return Err(format!(
                    "{step}: the log reads {t:?} at {i}, the leader of term 4 sent {:?}",
                    l4[(i - 1) as usize]
                ));
            }
        }
        let applied = &net.node(5).applied;
        if applied[..] != l4[..applied.len()] {
            return Err(format!("{step}: applied {applied:?}, committed {l4:?}"));
        }
        Ok(())
    };
    let now = net.now;
    match writes {
        AbaWrites::Merged => {
            net.write(5, 2);
            net.raft(5).persisted(now, ios[0]);
            net.ready(5);
            check(&mut net, "A and B written, A reported")?;
            net.raft(5).persisted(now, ios[1]);
            net.ready(5);
            check(&mut net, "B reported")?;
            net.write(5, 1);
            net.raft(5).persisted(now, ios[2]);
            net.ready(5);
            check(&mut net, "C written and reported")?;
        }
        AbaWrites::OneByOne => {
            for (k, step) in ["A", "B", "C"].iter().enumerate() {
                net.write(5, 1);
                net.raft(5).persisted(now, ios[k]);
                net.ready(5);
                check(&mut net, &format!("{step} written and reported"))?;
            }
        }
    }
    if net.node(5).applied != l4 {
        return Err(format!("applied {:?} once everything is durable, committed {l4:?}", net.node(5).applied));
    }
    Ok(())
}

// ----- hole 4 -----

fn lease_follower(prep: Prep, pre_vote: bool) -> Net {
    let mut net = Net::with_nodes(prep, &[2], &conf(&[1, 2, 3], &[], &[]), |c| {
        c.lease_clock_drift_max = Some(Duration::from_millis(10));
        c.pre_vote = pre_vote;
    });
    net.advance(200);
    // V (node 2) hears from L (node 1), leader of term 1, and acknowledges: L's lease rests on V.
    net.wire.push(msg(1, 2, 1, MessageBody::Heartbeat(quorate_core::Heartbeat { commit: LogIndex(0), seq: 1 })));
    net.deliver(|_| true);
    for _ in 0..2 {
        net.ready(2);
        net.persist(2);
    }
    net.ready(2);
    let acked = net.drop_where(|m| m.to == n(1));
    assert!(
        acked.iter().any(|m| matches!(m.body, MessageBody::HeartbeatResponse(HeartbeatResponse { seq: 1 }))),
        "V acknowledges the heartbeat: {acked:?}"
    );
    net
}

fn granted_to(net: &Net, from: NodeId, to: NodeId) -> Option<&Message> {
    net.sent.iter().find(|m| {
        m.from == from && m.to == to && matches!(m.body, MessageBody::VoteResponse(VoteResponse { granted: true, .. }))
    })
}

fn drain(net: &mut Net, i: u64) {
    for _ in 0..3 {
        net.ready(i);
        net.persist(i);
    }
    net.ready(i);
}

/// Hole 4: three voters, lease reads on. V acknowledged L's heartbeat; 5 ms later a delayed
/// refusal of V's own old pre-vote arrives from C at term 2 and moves V to term 2 with no
/// leader; then C's request (a vote, or a pre-vote) at term 2 arrives. V must refuse it.
pub(crate) fn lease_vote_after_term_move(prep: Prep, pre_vote_request: bool) -> Result<(), String> {
    let mut net = lease_follower(prep, true);
    net.advance(5);
    net.wire.push(msg(3, 2, 2, MessageBody::VoteResponse(VoteResponse { pre_vote: true, granted: false })));
    net.deliver(|_| true);
    drain(&mut net, 2);
    assert_eq!(net.raft(2).term(), Term(2), "the refusal moved V to term 2");
    let rv = RequestVote { pre_vote: pre_vote_request, last: EntryId::ZERO, transfer: false };
    net.wire.push(msg(3, 2, 2, MessageBody::RequestVote(rv)));
    net.deliver(|_| true);
    drain(&mut net, 2);
    if let Some(m) = granted_to(&net, n(2), n(3)) {
        return Err(format!("V granted {m:?} 5 ms after acknowledging the leader's heartbeat"));
    }
    if net.raft(2).hard_state().vote == Some(n(3)) {
        return Err("V voted for C inside L's lease".to_owned());
    }
    Ok(())
}

/// Hole 4, the node's own side: `campaign_now` on V inside L's lease must not make V vote for
/// itself (with pre-vote, not even once a pre-vote round passed). Once the lease promise has
/// run out without news from L, V campaigns.
pub(crate) fn campaign_now_in_lease(prep: Prep, pre_vote: bool) -> Result<(), String> {
    let mut net = lease_follower(prep, pre_vote);
    net.advance(5);
    let now = net.now;
    net.raft(2).campaign_now(now);
    drain(&mut net, 2);
    let grant = |net: &mut Net| {
        let term = net.raft(2).term().0 + 1;
        net.wire.push(msg(3, 2, term, MessageBody::VoteResponse(VoteResponse { pre_vote: true, granted: true })));
        net.deliver(|_| true);
        drain(net, 2);
    };
    if pre_vote {
        // C (not in the lease) grants the pre-vote.
        grant(&mut net);
    }
    let r = net.raft(2);
    let voted_self = r.hard_state().vote == Some(n(2)) && r.term() > Term(1);
    if voted_self || matches!(r.role(), Role::Candidate | Role::Leader) {
        return Err(format!(
            "V is {} at term {} with vote {:?}, 5 ms after L's heartbeat",
            r.role(),
            r.term(),
            r.hard_state().vote
        ));
    }
    if let Some(m) =
        net.sent.iter().find(|m| matches!(m.body, MessageBody::RequestVote(RequestVote { pre_vote: false, .. })))
    {
        return Err(format!("V asked for votes inside the lease: {m:?}"));
    }
    // L goes silent: once the lease promise has run out, V campaigns after all.
    let mut campaigned = false;
    for _ in 0..300 {
        net.advance(1);
        net.tick();
        drain(&mut net, 2);
        if pre_vote && net.raft(2).role() == Role::PreCandidate {
            grant(&mut net);
        }
        if net.raft(2).role() == Role::Candidate {
            campaigned = true;
            break;
        }
    }
    if !campaigned {
        return Err("V never campaigned after the lease ran out".to_owned());
    }
    Ok(())
}
