//! Findings of a review of bounded persist batches and recovery from lost synced state
//! (issue 18): each a scenario test against the public API. Both failed before their fixes:
//! R1 by a second exit from recovery (in a term above the record's, once the log matches the
//! leader's up to an entry of the current term), R2 in quorate-storage: its durable mark is
//! now raised with every synced write that extends the log, before the write is reported (the
//! contract of [`Recovering::last`](quorate_core::Recovering::last); the storage test
//! `every_synced_append_is_in_the_mark_before_the_write_returns` failed before).

mod support;

use quorate_core::Role;
use quorate_log::{Data, LogIndex, LogStorage, Term};
use support::holes::conf;
use support::net::{Net, Prep, is_append, log_ids, n};

const NONE: Prep = |_| {};

/// R1 (liveness). A recovering node whose record names uncommitted entries that no later
/// leader holds never leaves recovery while the cluster is quiet: its target (the recorded
/// last index) lies beyond the whole log of the leader of every later term, so no leader can
/// ever "make its log match up to the target". It then grants no vote for ever, and one more
/// failure leaves the cluster without a leader although two of three voters are up with every
/// committed entry.
///
/// Inputs: node 1 leads term 1 and commits its no-op 1@1 everywhere; it proposes a, b, c
/// (2..=4@1) and the appends reach node 3 only; node 3 writes them (its record's last entry
/// becomes 4@1); node 1 crashes before its own batch is written (the entries are lost there:
/// they were never committed); node 3 loses synced state back to its log up to 1@1. Node 1 or
/// node 2 wins a later term with the other's vote and commits its no-op at index 2. Node 3 is
/// caught up with that leader's whole log (2 entries) but its target is 4, so it stays in
/// recovery for ever with no new proposals. Then the leader is cut off: the remaining voter
/// campaigns, node 3 refuses, and no leader is ever elected.
///
/// Exiting would be safe here: a leader of a term above the record's term was elected without
/// the recovering node's vote, so it holds every entry that could ever be committed with the
/// node's forgotten acknowledgements (any quorum that commits such an entry meets the leader's
/// election quorum in another node, whose acknowledgement precedes its vote); entries of the
/// record it does not hold are never committed.
#[test]
fn r1_a_recovering_node_whose_record_outruns_every_later_leader_leaves_recovery() {
    let voters = conf(&[1, 2, 3], &[], &[]);
    let mut net = Net::with_nodes(NONE, &[1, 2, 3], &voters, |_| {});
    net.elect(1);
    net.settle(50, |_| true);
    let older = net.raft(3).storage().clone();
    assert_eq!(older.last_index(), LogIndex(1), "set-up: node 3 holds the no-op 1@1");
    for s in ["a", "b", "c"] {
        let now = net.now;
        net.raft(1).propose(now, Data::from(s)).expect("node 1 leads");
    }
    net.ready(1);
    // The appends reach node 3 only; node 3 writes them; its acknowledgements are lost.
    net.drop_where(|m| !(m.to == n(3) && is_append(m)));
    net.deliver(|_| true);
    net.ready(3);
    net.persist(3);
    net.ready(3);
    assert_eq!(net.raft(3).storage().last_index(), LogIndex(4), "set-up: node 3 wrote 2..=4@1");
    net.wire.clear();
    // Node 1 crashes before writing its own batch: 2..=4@1 were never committed.
    net.crash(1);
    assert_eq!(net.raft(1).last_index(), LogIndex(1), "set-up: node 1 lost its unwritten entries");
    // Node 3 loses synced state: its storage goes back to the log up to 1@1.
    let record = net.lose_state(3, older);
    assert_eq!(record.last.index, LogIndex(4));
    assert_eq!(record.term, Term(1));
    // A new leader (node 1 or 2, with the other's vote) commits its no-op at index 2.
    net.advance(200);
    let elected = net.run_until(
        2000,
        |_| true,
        |net| {
            let l = net.leaders();
            l.len() == 1 && {
                let id = l[0].get();
                net.raft(id).commit_index() >= LogIndex(2) && net.raft(id).term() > Term(1)
            }
        },
    );
    assert!(elected, "set-up: node 1 or 2 leads a later term and commits its no-op");
    let leader = net.leaders()[0].get();
    // A quiet cluster: heartbeats only, for 2 s (100 heartbeat intervals).
    net.settle(2000, |_| true);
    let leader_log = log_ids(net.raft(leader));
    let node3_log = log_ids(net.raft(3));
    assert_eq!(node3_log, leader_log, "node 3 holds the leader's whole log");
    assert_eq!(net.raft(3).commit_index(), net.raft(leader).commit_index(), "and its commit index");
    // The property: once a leader of a later term has caught it up with its whole log, the
    // node votes again.
    let still = net.raft(3).recovering().copied();
    // Show the consequence first (it is what an operator sees): cut the leader off.
    let other = [1, 2].into_iter().find(|&i| i != leader).expect("two others");
    let elected = net.run_until(
        3000,
        |m| m.from != n(leader) && m.to != n(leader),
        |net| net.raft(other).role() == Role::Leader || net.raft(3).role() == Role::Leader,
    );
    assert!(
        still.is_none() && elected,
        "node 3 is still recovering after 2 s with the leader's whole log {leader_log:?} (record {still:?}, target \
         beyond the leader's last index), and with the leader {leader} cut off no leader is elected among nodes \
         {other} and 3 in 3 s (elected: {elected})"
    );
}

/// R2 (safety, the premise of the recovery). `raft/recovery.rs` argued that the exit is safe
/// because "every entry that was committed with this node's acknowledgement before the loss lies
/// at or below the recorded last index (the record covers what was durable, and only what is
/// durable is acknowledged)". The store did not give that: it raises its durable mark for a
/// log-only synced write at most every `durable_mark_interval` (100 ms by default,
/// `RocksStore::raise_mark`), while the core acknowledges each batch as soon as it is reported.
/// So the record could lag the acknowledgements, and the core left recovery below entries it
/// acknowledged and that were committed with that acknowledgement (this test, with the lagging
/// record 2@1, failed: node 3 left recovery and nodes 2 and 3 committed another entry at 3).
/// The fix is the storage's: the mark is raised with every synced write that extends the log,
/// before the write is reported. The record here is what the store now hands over (4@1); a
/// lagging record still breaks the recovery, which is why [`Recovering::last`] states the
/// contract.
///
/// Inputs: node 1 leads term 1 and commits 2@1 everywhere (node 3's mark is raised: term 1,
/// last 2@1). Within the mark interval node 1 proposes 3@1 and 4@1; the appends reach node 3
/// only, node 3 writes and acknowledges them (its mark is not due), node 1 commits 4 with
/// nodes 1 and 3 and applies 3@1 and 4@1. Node 3's write-ahead log loses its tail back to 1@1:
/// the store detects the loss (the log no longer reaches the mark's 2@1) and hands the core the
/// record (term 1, vote 1, last 2@1). A delayed duplicate of node 1's first append of 2@1
/// reaches node 3: its log now matches the leader of its term up to 2 = the target, it writes
/// it, and leaves recovery. Node 1 is then cut off; nodes 2 and 3 elect a leader (node 3's vote
/// is granted: both logs end at 2@1), which commits its no-op at index 3.
#[test]
fn r2_a_record_whose_last_entry_lags_the_acknowledgements_loses_no_committed_entry() {
    use quorate_core::{MessageBody, Recovering};
    use quorate_log::{EntryId, EntryPayload};
    let voters = conf(&[1, 2, 3], &[], &[]);
    let mut net = Net::with_nodes(NONE, &[1, 2, 3], &voters, |_| {});
    net.elect(1);
    net.settle(50, |_| true);
    let older = net.raft(3).storage().clone();
    assert_eq!(older.last_index(), LogIndex(1), "set-up: node 3 holds 1@1");
    let now = net.now;
    net.raft(1).propose(now, Data::from("a")).expect("node 1 leads");
    net.settle(50, |_| true);
    let delayed = net
        .sent
        .iter()
        .find(|m| {
            m.to == n(3)
                && matches!(&m.body, MessageBody::Append(a) if a.entries.iter().any(|e| e.index == LogIndex(2)))
        })
        .cloned()
        .expect("set-up: node 1 sent 2@1 to node 3");
    // Node 3's durable mark, raised with the write of 2@1.
    let s = net.raft(3).storage();
    let hs = s.hard_state();
    let mut mark =
        Recovering { term: hs.term, vote: hs.vote, last: EntryId::new(Term(1), s.last_index()), commit: hs.commit };
    assert_eq!(mark.last.index, LogIndex(2), "set-up: node 3 wrote 2@1");
    // Within the mark interval: 3@1 and 4@1 reach node 3 only and are committed with its ack.
    for s in ["b", "c"] {
        let now = net.now;
        net.raft(1).propose(now, Data::from(s)).expect("node 1 leads");
    }
    net.ready(1);
    net.persist(1);
    net.drop_where(|m| !(m.to == n(3) && is_append(m)));
    net.deliver(|_| true);
    net.ready(3);
    net.persist(3);
    net.ready(3);
    assert_eq!(net.raft(3).storage().last_index(), LogIndex(4), "set-up: node 3 wrote 3..=4@1");
    net.deliver(|m| m.to == n(1));
    net.wire.clear();
    net.ready(1);
    net.persist(1);
    net.ready(1);
    assert_eq!(net.raft(1).commit_index(), LogIndex(4), "set-up: 4@1 committed with nodes 1 and 3");
    let applied1: Vec<(u64, u64)> = net.node(1).applied.iter().map(|e| (e.index.0, e.term.0)).collect();
    assert!(applied1.contains(&(3, 1)), "set-up: node 1 applied 3@1: {applied1:?}");
    // Node 3 loses its write-ahead log's tail back to 1@1; the store hands the core the mark,
    // which it raised with the write of 3..=4@1 before that write was reported.
    mark.last = EntryId::new(Term(1), LogIndex(4));
    net.node(3).cfg.recovering = Some(mark);
    net.restart(3, older);
    assert!(net.raft(3).recovering().is_some());
    // A delayed duplicate of node 1's first append of 2@1 reaches node 3.
    net.wire.push(delayed);
    net.deliver(|_| true);
    for _ in 0..3 {
        net.ready(3);
        net.persist(3);
    }
    net.ready(3);
    let left = net.raft(3).recovering().is_none();
    net.wire.clear();
    // Node 1 is cut off; nodes 2 and 3 elect a leader, which commits its no-op.
    let cut = |m: &quorate_core::Message| m.from != n(1) && m.to != n(1);
    let elected = net.run_until(3000, cut, |net| {
        [2, 3].into_iter().any(|i| net.raft(i).role() == Role::Leader && net.raft(i).commit_index() >= LogIndex(3))
    });
    net.settle(20, cut);
    let other: Vec<(u64, u64)> = [2, 3]
        .into_iter()
        .flat_map(|i| {
            net.node(i)
                .applied
                .iter()
                .filter(|e| !matches!(e.payload, EntryPayload::Config(_)))
                .map(|e| (e.index.0, e.term.0))
                .collect::<Vec<_>>()
        })
        .collect();
    let diverged = other.iter().any(|&(i, t)| applied1.iter().any(|&(j, u)| i == j && t != u));
    assert!(
        !diverged,
        "state machine safety: node 1 applied {applied1:?}; nodes 2 and 3 applied {other:?} (node 3 left recovery: \
         {left}, a leader elected without node 1: {elected})"
    );
}

/// The exit that fixes R1 must wait for an entry of the leader's own term: a log verified by a
/// later leader only up to older entries may still lack an entry committed with the node's
/// forgotten acknowledgement (the later leader holds it, further on).
///
/// Inputs: node 1 leads term 1 and commits 2..=4@1 with node 3's acknowledgement only (node 2
/// never gets them); node 3 loses synced state back to 1@1 (record: term 1, last 4@1). Node 1
/// crashes and restarts, and wins term 2 with node 2's vote (node 3 hears nothing); its no-op is
/// 5@2. A first append of term 2 from node 1 reaches node 3 carrying only 2@1 (as a leader
/// limited by `msg_bytes_max` sends it): node 3's log now matches the term-2 leader's up to 2,
/// an entry of term 1. Leaving recovery there would let node 3 — whose log lacks the committed
/// 3..=4@1 — win a later election with node 2's vote. It stays recovering until the leader has
/// caught it up to an entry of term 2, and then leaves.
#[test]
fn r1_the_later_term_exit_waits_for_an_entry_of_the_leaders_term() {
    use quorate_core::{Append, Message, MessageBody};
    use quorate_log::EntryId;
    let voters = conf(&[1, 2, 3], &[], &[]);
    let mut net = Net::with_nodes(NONE, &[1, 2, 3], &voters, |_| {});
    net.elect(1);
    net.settle(50, |_| true);
    let older = net.raft(3).storage().clone();
    assert_eq!(older.last_index(), LogIndex(1), "set-up: node 3 holds the no-op 1@1");
    for s in ["a", "b", "c"] {
        let now = net.now;
        net.raft(1).propose(now, Data::from(s)).expect("node 1 leads");
    }
    net.ready(1);
    net.persist(1);
    net.drop_where(|m| !(m.to == n(3) && is_append(m)));
    net.deliver(|_| true);
    net.ready(3);
    net.persist(3);
    net.ready(3);
    net.deliver(|m| m.to == n(1));
    net.wire.clear();
    net.ready(1);
    net.persist(1);
    net.ready(1);
    assert_eq!(net.raft(1).commit_index(), LogIndex(4), "set-up: 2..=4@1 committed with nodes 1 and 3");
    let record = net.lose_state(3, older);
    assert_eq!((record.term, record.last), (Term(1), EntryId::new(Term(1), LogIndex(4))));
    // Node 1 restarts and wins term 2 with node 2's vote; node 3 hears nothing meanwhile.
    net.crash(1);
    net.advance(100);
    let now = net.now;
    net.raft(1).campaign_now(now);
    let elected = net.run_until(
        500,
        |m| m.to != n(3),
        |net| net.leaders() == [n(1)] && net.raft(1).term() > Term(1) && net.raft(1).commit_index() >= LogIndex(5),
    );
    assert!(elected, "set-up: node 1 leads a later term and commits its no-op");
    let term = net.raft(1).term();
    net.wire.clear();
    // A first append of that term reaches node 3 with 2@1 only.
    let two = net.raft(1).storage().entries(LogIndex(2), LogIndex(3), u64::MAX).expect("node 1 holds 2@1");
    assert_eq!(two.len(), 1);
    let first = Append { prev: EntryId::new(Term(1), LogIndex(1)), entries: two, commit: net.raft(1).commit_index() };
    net.wire.push(Message { from: n(1), to: n(3), term, body: MessageBody::Append(first) });
    net.deliver(|_| true);
    for _ in 0..3 {
        net.ready(3);
        net.persist(3);
    }
    net.ready(3);
    assert_eq!(net.raft(3).term(), term, "node 3 took the leader's term");
    assert_eq!(net.raft(3).storage().last_index(), LogIndex(2), "node 3 wrote 2@1");
    assert!(
        net.raft(3).recovering().is_some(),
        "node 3 left recovery with a log {:?} verified by the leader of term {term} only up to an entry of term 1; \
         the committed 3..=4@1 are missing",
        log_ids(net.raft(3))
    );
    // The leader catches it up: once it holds 5@2 it leaves recovery.
    let caught_up = net.run_until(500, |_| true, |net| net.raft(3).recovering().is_none());
    assert!(caught_up, "node 3 leaves recovery once the leader has caught it up to its no-op");
    let leader_log = log_ids(net.raft(1));
    assert_eq!(&log_ids(net.raft(3))[..leader_log.len().min(5)], &leader_log[..leader_log.len().min(5)]);
}
