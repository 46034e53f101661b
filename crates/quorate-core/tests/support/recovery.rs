//! Scenarios of recovery from lost synced state (issue 18), shared by `tests/recovery.rs` (each
//! must come out `Ok`) and `tests/holes_reintroduced.rs` (with the hole `LostStateIgnored`
//! switched on — the node restarts as if nothing was lost — the scenarios that guard safety
//! return the evidence). Set-up steps panic when they fail, so that a broken set-up is never
//! mistaken for a caught hole.

use super::holes::conf;
use super::net::{Net, Prep, durable_hs, log_ids, msg, n};
use quorate_core::{
    Append, AppendResponse, LOST_STATE_HINT_TERM, Message, MessageBody, Recovering, RequestVote, Role, VoteResponse,
};
use quorate_log::{Data, EntryId, LogIndex, LogStorage, Term};

/// Votes and pre-votes node `i` granted, among the messages sent from the `since`-th on.
fn grants(net: &Net, i: u64, since: usize) -> Vec<String> {
    net.sent[since..]
        .iter()
        .filter(|m| m.from == n(i))
        .filter(|m| matches!(m.body, MessageBody::VoteResponse(VoteResponse { granted: true, .. })))
        .map(|m| format!("{m:?}"))
        .collect()
}

/// Vote requests node `i` sent, among the messages sent from the `since`-th on.
fn campaigns(net: &Net, i: u64, since: usize) -> usize {
    net.sent[since..].iter().filter(|m| m.from == n(i) && matches!(m.body, MessageBody::RequestVote(_))).count()
}

/// Hands `m` to its recipient and lets the recipient write what it hands out.
fn inject(net: &mut Net, m: Message) {
    let to = m.to.get();
    net.wire.push(m);
    let target = net.wire.len() - 1;
    let mut k = 0;
    net.deliver(|_| {
        k += 1;
        k - 1 == target
    });
    net.ready(to);
    net.persist(to);
    net.ready(to);
}

fn vote_request(from: u64, to: u64, term: u64, pre_vote: bool, last: (u64, u64)) -> Message {
    let last = EntryId::new(Term(last.1), LogIndex(last.0));
    msg(from, to, term, MessageBody::RequestVote(RequestVote { pre_vote, last, transfer: false }))
}

/// Three voters. Node 1 leads term 1 and commits entries 1..=4 on every node; it hands
/// leadership to node 2, which wins term 2 with node 3's vote and commits its no-op 5@2 on
/// every node. Then node 3 loses synced state: its storage goes back to what it held right
/// after the first election (term 1, vote for 1, log up to 1@1) while its record (term 2, vote
/// for 2, log up to 5@2) survives. Returns the cluster, node 3 restarted, and the record.
pub(crate) fn three_voters_one_lost(prep: Prep) -> (Net, Recovering) {
    let c = conf(&[1, 2, 3], &[], &[]);
    let mut net = Net::with_nodes(prep, &[1, 2, 3], &c, |_| {});
    net.elect(1);
    net.settle(50, |_| true);
    let older = net.raft(3).storage().clone();
    assert_eq!((older.hard_state().term, older.last_index()), (Term(1), LogIndex(1)), "set-up");
    for s in ["a", "b", "c"] {
        let now = net.now;
        net.raft(1).propose(now, Data::from(s)).expect("node 1 leads");
    }
    net.settle(100, |_| true);
    assert_eq!(net.raft(3).commit_index(), LogIndex(4), "set-up: entries 1..=4 committed on node 3");
    let now = net.now;
    net.raft(1).transfer_leadership(now, n(2)).expect("node 2 is a caught-up voter");
    let moved = net.run_until(200, |_| true, |net| net.leaders() == [n(2)] && net.raft(3).commit_index().0 >= 5);
    assert!(moved, "set-up: node 2 leads term 2 and node 3 holds its no-op");
    net.settle(50, |_| true);
    assert_eq!(durable_hs(net.raft(3)).vote, Some(n(2)), "set-up: node 3 voted for node 2 in term 2");
    let record = net.lose_state(3, older);
    assert_eq!((record.term, record.vote, record.last), (Term(2), Some(n(2)), EntryId::new(Term(2), LogIndex(5))));
    (net, record)
}

/// A recovering node votes as if its log still ended at the record (5@2): it refuses every
/// candidate less up to date than that — here one ending at 4@1, which its own short log (1@1)
/// would let it vote for — at any term, vote or pre-vote; it never grants a second vote in
/// its recorded term (it voted for node 2 there, and that vote is what it lost); and in a later
/// term it grants a candidate at least as up to date as the record (that candidate holds every
/// entry committed with its forgotten acknowledgements).
pub(crate) fn no_vote_while_recovering(prep: Prep) -> Result<(), String> {
    let (mut net, _) = three_voters_one_lost(prep);
    net.wire.clear();
    let since = net.sent.len();
    // Past the start-up period in which a restarted voter ignores vote requests.
    net.advance(150);
    inject(&mut net, vote_request(1, 3, 2, false, (5, 2)));
    for (term, pre_vote) in [(3, true), (3, false), (4, true), (9, false)] {
        inject(&mut net, vote_request(1, 3, term, pre_vote, (4, 1)));
    }
    let granted = grants(&net, 3, since);
    if !granted.is_empty() {
        return Err(format!("node 3 granted while its state was lost: {granted:?}"));
    }
    let since = net.sent.len();
    inject(&mut net, vote_request(1, 3, 10, false, (5, 2)));
    if grants(&net, 3, since).len() == 1 {
        Ok(())
    } else {
        Err("node 3 refused a candidate of a later term as up to date as its record".into())
    }
}

/// A recovering node never campaigns: not when its election timer fires, not on
/// `campaign_now`, not on `TimeoutNow` from the leader.
pub(crate) fn never_campaigns_while_recovering(prep: Prep) -> Result<(), String> {
    let (mut net, _) = three_voters_one_lost(prep);
    net.wire.clear();
    let since = net.sent.len();
    for _ in 0..100 {
        net.advance(10);
        net.tick();
        net.ready(3);
        net.persist(3);
        net.ready(3);
        net.wire.clear();
    }
    let now = net.now;
    net.raft(3).campaign_now(now);
    net.ready(3);
    net.persist(3);
    net.wire.clear();
    inject(&mut net, msg(2, 3, 2, MessageBody::TimeoutNow));
    let sent = campaigns(&net, 3, since);
    let r = net.raft(3);
    if sent == 0 && r.last_campaign().is_none() && r.role() == Role::Follower {
        Ok(())
    } else {
        Err(format!("node 3 campaigned while its state was lost: {sent} vote requests, {:?}", r.last_campaign()))
    }
}

/// A recovering node is back at its recorded term: a leader of an older term (node 1, which
/// has not heard of term 2) is told the newer term, and its entries are not taken.
pub(crate) fn rejects_an_older_leader(prep: Prep) -> Result<(), String> {
    let (mut net, _) = three_voters_one_lost(prep);
    net.wire.clear();
    let since = net.sent.len();
    let x = quorate_log::Entry {
        index: LogIndex(2),
        term: Term(1),
        payload: quorate_log::EntryPayload::Command(Data::from("x")),
    };
    let body =
        MessageBody::Append(Append { prev: EntryId::new(Term(1), LogIndex(1)), entries: vec![x], commit: LogIndex(1) });
    inject(&mut net, msg(1, 3, 1, body));
    let took = log_ids(net.raft(3)).contains(&(2, 1));
    let accepted = net.sent[since..].iter().any(|m| {
        m.from == n(3)
            && m.term == Term(1)
            && matches!(m.body, MessageBody::AppendResponse(AppendResponse::Accepted { .. }))
    });
    if took || accepted || net.raft(3).term() != Term(2) {
        return Err(format!(
            "node 3 took an append of term 1 from node 1 (in its log: {took}, acknowledged: {accepted}, term {})",
            net.raft(3).term()
        ));
    }
    Ok(())
}

/// The leader of term 2 led across node 3's loss: it still believes node 3 holds 5@2 (its
/// match index is stale) and has nothing new to send — only heartbeats. Node 3 must still get
/// its log back: its answer to an unverified heartbeat makes the leader forget the match index
/// and resend. Then node 3 leaves recovery, reports it once, and holds the leader's log.
pub(crate) fn heartbeats_alone_catch_it_up(prep: Prep) -> Result<(), String> {
    let (mut net, _) = three_voters_one_lost(prep);
    let done = net.run_until(500, |_| true, |net| log_ids(net.raft(3)) == log_ids(net.raft(2)));
    net.settle(100, |_| true);
    let proposals = net.raft(2).last_index();
    if !done || proposals != LogIndex(5) {
        return Err(format!(
            "node 3's log is {:?}, the leader's {:?} (leader's last index {proposals})",
            log_ids(net.raft(3)),
            log_ids(net.raft(2))
        ));
    }
    let marked = net.sent.iter().any(|m| {
        m.from == n(3)
            && matches!(&m.body, MessageBody::AppendResponse(AppendResponse::Rejected { hint, .. }) if hint.term == LOST_STATE_HINT_TERM)
    });
    let recovered = net.node(3).recovered;
    if !marked || recovered != 1 || net.raft(3).recovering().is_some() {
        return Err(format!("marker sent: {marked}, recovery reported {recovered} times"));
    }
    Ok(())
}

/// Node 3 catches up from the leader of term 2 while clients write, leaves recovery, and votes
/// and campaigns again: the leader hands leadership to it.
pub(crate) fn catches_up_then_votes_again(prep: Prep) -> Result<(), String> {
    let (mut net, record) = three_voters_one_lost(prep);
    for s in ["d", "e"] {
        let now = net.now;
        net.raft(2).propose(now, Data::from(s)).expect("node 2 leads");
    }
    let caught = net.run_until(500, |_| true, |net| net.node(3).recovered == 1);
    if !caught {
        return Err(format!("node 3 did not leave recovery: log {:?}", log_ids(net.raft(3))));
    }
    let r = net.raft(3);
    if r.last_index() < record.target() || durable_hs(r).term < record.term {
        return Err(format!("node 3 left recovery before catching up: log {:?}, {:?}", log_ids(r), durable_hs(r)));
    }
    net.settle(100, |_| true);
    let now = net.now;
    net.raft(2).transfer_leadership(now, n(3)).map_err(|e| format!("transfer: {e}"))?;
    let led = net.run_until(300, |_| true, |net| net.leaders() == [n(3)]);
    if !led {
        return Err("node 3 did not take over leadership after its recovery".into());
    }
    Ok(())
}

/// The end of recovery is reported once, and only once what it rests on is durable: with node
/// 3's writes held back, its log is verified in memory but it stays in recovery; once the
/// writes land it reports the end, once. A later crash restarts it normally.
pub(crate) fn recovered_once_and_only_when_durable(prep: Prep) -> Result<(), String> {
    let (mut net, _) = three_voters_one_lost(prep);
    // The recorded term and vote reach the disk (nothing at that term leaves before); every
    // later write of node 3 is held back.
    net.ready(3);
    net.persist(3);
    for _ in 0..300 {
        net.advance(1);
        net.tick();
        for i in 1..=3 {
            net.ready(i);
            if i != 3 {
                net.persist(i);
            }
            net.ready(i);
        }
        net.deliver(|_| true);
    }
    let in_memory = log_ids(net.raft(3)).contains(&(5, 2));
    if !in_memory {
        return Err(format!("set-up: node 3's log in memory is {:?}", log_ids(net.raft(3))));
    }
    if net.node(3).recovered != 0 || net.raft(3).recovering().is_none() {
        return Err("node 3 left recovery before its log and term were durable".into());
    }
    net.persist(3);
    net.ready(3);
    net.settle(200, |_| true);
    if net.node(3).recovered != 1 {
        return Err(format!("recovery reported {} times", net.node(3).recovered));
    }
    let storage = net.raft(3).storage().clone();
    net.restart(3, storage);
    net.settle(200, |_| true);
    if net.raft(3).recovering().is_some() || net.node(3).recovered != 1 {
        return Err("a restart after the report recovered again".into());
    }
    Ok(())
}

/// A crash while recovering (the application passes the same record again) stays safe: the
/// node is still recovering, grants nothing below its record, and recovers later. The same holds if it crashes
/// after the end was reported but before the application dropped the record.
pub(crate) fn crash_while_recovering(prep: Prep) -> Result<(), String> {
    let (mut net, record) = three_voters_one_lost(prep);
    // The recorded term and vote reach the disk; nothing else happens.
    net.ready(3);
    net.persist(3);
    net.wire.clear();
    let storage = net.raft(3).storage().clone();
    net.restart(3, storage);
    if net.raft(3).recovering() != Some(&record) {
        return Err("a restart with the record is not recovering".into());
    }
    let since = net.sent.len();
    net.advance(150);
    inject(&mut net, vote_request(1, 3, 3, false, (4, 1)));
    let granted = grants(&net, 3, since);
    if !granted.is_empty() {
        return Err(format!("granted after a crash while recovering: {granted:?}"));
    }
    net.run_until(2000, |_| true, |net| net.node(3).recovered == 1);
    if net.node(3).recovered != 1 {
        return Err("node 3 did not recover after its crash".into());
    }
    // Crash after the report, the record still passed (the application had not dropped it).
    net.node(3).cfg.recovering = Some(record);
    let storage = net.raft(3).storage().clone();
    net.restart(3, storage);
    net.advance(150);
    let since = net.sent.len();
    inject(&mut net, vote_request(1, 3, 9, false, (4, 1)));
    let granted = grants(&net, 3, since);
    net.run_until(2000, |_| true, |net| net.node(3).recovered == 2);
    if !granted.is_empty() || net.node(3).recovered != 2 {
        return Err(format!("granted {granted:?}; recovery reported {} times", net.node(3).recovered));
    }
    Ok(())
}

/// Five voters. Node 1 leads term 1; an entry 2@1 reaches only node 3 and is never committed.
/// Node 2 wins term 2 without node 1 and 3 and overwrites index 2 with its no-op 2@2, which
/// commits on every node but 1. Node 3 then loses state back to the log holding 2@1. The
/// leader of term 2 believes node 3 matches up to 2 (stale): a heartbeat carries commit 2.
/// A recovering node must not commit what a leader has not verified: it must never apply 2@1.
pub(crate) fn unverified_heartbeat_commits_nothing(prep: Prep) -> Result<(), String> {
    let c = conf(&[1, 2, 3, 4, 5], &[], &[]);
    let mut net = Net::with_nodes(prep, &[1, 2, 3, 4, 5], &c, |_| {});
    net.elect(1);
    net.settle(50, |_| true);
    let now = net.now;
    net.raft(1).propose(now, Data::from("only-on-3")).expect("node 1 leads");
    // The entry goes to node 3 only; its acknowledgement is lost.
    for _ in 0..5 {
        net.advance(1);
        for i in 1..=5 {
            net.ready(i);
            net.persist(i);
            net.ready(i);
        }
        net.drop_where(|m| !(m.from == n(1) && m.to == n(3) && matches!(m.body, MessageBody::Append(_))));
        net.deliver(|_| true);
    }
    net.ready(3);
    net.persist(3);
    net.wire.clear();
    let older = net.raft(3).storage().clone();
    assert_eq!(log_ids(net.raft(3)), vec![(1, 1), (2, 1)], "set-up: node 3 holds 2@1");
    // Node 1 is cut off; node 2 campaigns once the lease has run out, with node 3 cut off too
    // (it would refuse anyway: its log is ahead).
    net.advance(150);
    let now = net.now;
    net.raft(2).campaign_now(now);
    let without = |ids: &'static [u64]| move |m: &Message| !ids.iter().any(|i| m.from == n(*i) || m.to == n(*i));
    let leader = |net: &mut Net| [2, 4, 5].into_iter().find(|i| net.raft(*i).role() == Role::Leader);
    let won =
        net.run_until(300, without(&[1, 3]), |net| leader(net).is_some_and(|l| net.raft(l).commit_index().0 >= 2));
    assert!(won, "set-up: a leader among 2, 4 and 5 commits its no-op");
    let l = leader(&mut net).expect("a leader");
    let term = net.raft(l).term().0;
    let cut = without(&[1]);
    let took = net.run_until(300, cut, |net| log_ids(net.raft(3)) == vec![(1, 1), (2, term)]);
    assert!(took, "set-up: node 3 took the new leader's no-op 2@{term}");
    net.settle(30, cut);
    net.lose_state(3, older);
    let _ = net.run_until(300, cut, |net| net.node(3).recovered == 1);
    net.settle(50, cut);
    let applied: Vec<(u64, u64)> = net.node(3).applied.iter().map(|e| (e.index.0, e.term.0)).collect();
    if applied.contains(&(2, 1)) {
        return Err(format!("node 3 applied the uncommitted 2@1: applied {applied:?}"));
    }
    if !applied.contains(&(2, term)) || net.node(3).recovered != 1 {
        return Err(format!("node 3 did not catch up: applied {applied:?}, log {:?}", log_ids(net.raft(3))));
    }
    Ok(())
}
