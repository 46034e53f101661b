//! Findings of an independent review of issue 16's core change, each a failing test against
//! the public API before its fix (F1 apply gap, F2 a removed leader that never campaigns, F3 a
//! stalled follower behind the floor, F4 a joiner's empty-configuration snapshot).

mod support;

use quorate_core::{ConfChange, Message, MessageBody, ProgressState, Role};
use quorate_log::{Data, Entry, EntryId, LogIndex, SnapshotMeta, Term};
use support::holes::conf;
use support::net::{Net, Prep, append, cmd, msg, n};

const NONE: Prep = |_| {};

/// F1. A snapshot install that keeps a persisted suffix: the core hands out committed entries
/// above the snapshot while the install batch is still unwritten.
#[test]
fn f1_entries_above_a_kept_suffix_are_not_handed_out_before_the_install_is_durable() {
    let voters = conf(&[1, 2, 3], &[], &[]);
    let mut net = Net::with_nodes(NONE, &[2], &voters, |_| {});
    net.advance(200);
    // Leader 1 (term 1) sends 1..10 with commit 1; node 2 writes them.
    let entries: Vec<Entry> = (1..=10).map(|i| cmd(i, 1, "x")).collect();
    net.wire.push(msg(1, 2, 1, append((0, 0), entries, 1)));
    net.deliver(|_| true);
    net.ready(2);
    net.persist(2);
    net.ready(2);
    assert_eq!(net.raft(2).commit_index(), LogIndex(1));
    assert_eq!(net.node(2).applied.len(), 1);
    // The leader's snapshot at 8 (its acks were lost, it compacted): it matches node 2's log.
    let meta = SnapshotMeta { last: EntryId::new(Term(1), LogIndex(8)), config: voters.clone() };
    let now = net.now;
    assert_eq!(net.raft(2).install_snapshot(now, n(1), Term(1), meta), Ok(true));
    net.ready(2);
    assert!(net.node(2).disk.iter().any(|p| p.install.is_some()), "the install batch is handed out, unwritten");
    // The ack of the install left at once (node 2's log was durable up to 10) ...
    assert!(net.wire.iter().any(|m| m.from == n(2)), "{:?}", net.wire);
    // ... so the leader goes on, and its next append carries commit 10.
    net.wire.clear();
    net.wire.push(msg(1, 2, 1, append((10, 1), vec![], 10)));
    net.deliver(|_| true);
    net.ready(2);
    let install_written = !net.node(2).disk.iter().any(|p| p.install.is_some());
    let above: Vec<u64> = net.node(2).applied.iter().map(|e| e.index.0).filter(|i| *i > 8).collect();
    assert!(
        install_written || above.is_empty(),
        "entries {above:?} handed out to apply on top of a state machine at 1, while the install batch (snapshot at 8) is unwritten"
    );
}

/// F2. Voters {1,2}; leader 2 removes itself. The joint configuration commits on both; the
/// entry leaving it (C_new = {1}) reaches only node 2, which then steps down (check-quorum on
/// C_new while node 1 is briefly unreachable). Node 2 is not a voter of its own latest,
/// uncommitted configuration, so it never campaigns; node 1 needs node 2's vote (joint) and
/// cannot get it (its log is behind). No leader ever again.
#[test]
fn f2_a_removed_leader_holding_the_only_copy_of_c_new_never_campaigns() {
    let mut net = Net::with_nodes(NONE, &[1, 2], &conf(&[1, 2], &[], &[]), |_| {});
    net.elect(2);
    let now = net.now;
    let joint = net.raft(2).propose_conf_change(now, ConfChange::Remove(n(2))).expect("accepted");
    let after_joint = joint.index.next();
    let carries_leave = move |m: &Message| matches!(&m.body, MessageBody::Append(a) if a.entries.iter().any(|e| e.index >= after_joint));
    let committed = net.run_until(
        200,
        |m| !carries_leave(m),
        |net| net.raft(1).commit_index() >= joint.index && net.raft(2).last_index() > joint.index,
    );
    assert!(committed, "the joint entry commits and node 2 appends C_new");
    assert_eq!(net.raft(2).configuration().voters, [n(1)].into_iter().collect());
    assert!(net.raft(1).configuration().is_joint(), "node 1 has only the joint configuration");
    // Node 1 unreachable for a while: node 2 steps down by check-quorum (on C_new = {1}).
    let stepped = net.run_until(400, |m| m.from != n(1) && m.to != n(1), |net| net.raft(2).role() != Role::Leader);
    assert!(stepped, "node 2 steps down");
    // Heal for good: 10 s of simulated time.
    let elected = net.run_until(10_000, |_| true, |net| !net.leaders().is_empty());
    let s1 = net.raft(1).status();
    let s2 = net.raft(2).status();
    assert!(
        elected,
        "no leader 10 s after healing: node 1 {:?} term {} last {} (config {:?}), node 2 {:?} term {} last {} (config {:?})",
        s1.role, s1.term, s1.last_index, s1.config, s2.role, s2.term, s2.last_index, s2.config
    );
}

/// F3. A follower in Replicate whose whole in-flight window was lost, while the leader compacts
/// past the window's start before the stall check fires: the stall probe's `prev` is compacted,
/// `send_probe` silently sends nothing, the window stays full, and the follower never catches up.
#[test]
fn f3_a_stalled_follower_behind_the_floor_is_sent_a_snapshot() {
    let mut net = Net::with_nodes(NONE, &[1, 2, 3], &conf(&[1, 2, 3], &[], &[]), |c| {
        c.inflight_msgs_max = 1;
        c.compaction_tail_entries = 0;
        c.snapshot_entries_threshold = 0;
        c.snapshot_bytes_threshold = 0;
    });
    net.elect(1);
    assert_eq!(net.raft(1).status().peers[&n(2)].state, ProgressState::Replicate);
    // Entry a: the append to node 2 is lost (its window of one is now full).
    let now = net.now;
    net.raft(1).propose(now, Data::from("a")).expect("accepted");
    net.ready(1);
    assert_eq!(net.drop_where(|m| m.to == n(2) && matches!(m.body, MessageBody::Append(_))).len(), 1);
    // Node 3 acks; the leader commits, applies and snapshots at the tip, compacting its log.
    let last = net.raft(1).last_index();
    let applied = net.run_until(
        50,
        |m| m.to != n(2) && m.from != n(2),
        |net| net.node(1).applied.last().is_some_and(|e| e.index == last),
    );
    assert!(applied);
    let now = net.now;
    let at = net.node(1).applied.last().map(Entry::id).expect("applied");
    let c = net.raft(1).configuration().clone();
    net.raft(1).snapshot_taken(now, SnapshotMeta { last: at, config: c });
    // One more entry so that the window start (a) lies below the floor.
    let now = net.now;
    net.raft(1).propose(now, Data::from("b")).expect("accepted");
    let last = net.raft(1).last_index();
    let applied = net.run_until(
        50,
        |m| m.to != n(2) && m.from != n(2),
        |net| net.node(1).applied.last().is_some_and(|e| e.index == last),
    );
    assert!(applied);
    let now = net.now;
    let at = net.node(1).applied.last().map(Entry::id).expect("applied");
    let c = net.raft(1).configuration().clone();
    net.raft(1).snapshot_taken(now, SnapshotMeta { last: at, config: c });
    net.ready(1);
    net.persist(1);
    assert!(net.raft(1).status().first_index > LogIndex(2), "{:?}", net.raft(1).status());
    // From now on everything is delivered: 2 s of simulated time.
    let caught_up = net.run_until(
        2000,
        |_| true,
        |net| !net.snapshots.is_empty() || net.raft(1).status().peers[&n(2)].match_index >= last,
    );
    let p = net.raft(1).status().peers[&n(2)].clone();
    assert!(caught_up, "node 2 is never sent the snapshot nor any append: {p:?}");
}

/// F2b. Same deadlock without check-quorum: leader 2 appends C_new = {1}, crashes before
/// node 1 gets it and restarts. Its latest configuration excludes it, so it never campaigns.
#[test]
fn f2b_a_restarted_removed_leader_holding_the_only_copy_of_c_new_never_campaigns() {
    let mut net = Net::with_nodes(NONE, &[1, 2], &conf(&[1, 2], &[], &[]), |c| {
        c.check_quorum = false;
        c.pre_vote = false;
    });
    net.elect(2);
    let now = net.now;
    let joint = net.raft(2).propose_conf_change(now, ConfChange::Remove(n(2))).expect("accepted");
    let after_joint = joint.index.next();
    let carries_leave = move |m: &Message| matches!(&m.body, MessageBody::Append(a) if a.entries.iter().any(|e| e.index >= after_joint));
    let committed = net.run_until(
        200,
        |m| !carries_leave(m),
        |net| net.raft(1).commit_index() >= joint.index && net.raft(2).last_index() > joint.index,
    );
    assert!(committed);
    net.ready(2);
    net.persist(2);
    net.wire.clear();
    net.crash(2);
    let elected = net.run_until(10_000, |_| true, |net| !net.leaders().is_empty());
    let s1 = net.raft(1).status();
    let s2 = net.raft(2).status();
    assert!(
        elected,
        "no leader after 10 s: node 1 {:?} term {} last {} (config {:?}), node 2 {:?} term {} last {} (config {:?})",
        s1.role, s1.term, s1.last_index, s1.config, s2.role, s2.term, s2.last_index, s2.config
    );
}

/// F4. A node that joins with an empty configuration and catches up from index 1 never learns
/// the configuration in force below its first configuration entry (the bootstrap one lives only
/// in the other nodes' snapshot meta at 0): `Membership::at` answers the empty configuration
/// there, and the core asks for (and records) a snapshot carrying it.
#[test]
fn f4_a_joiner_never_snapshots_with_an_empty_configuration() {
    let voters = conf(&[1, 2, 3], &[], &[]);
    let mut net = Net::with_nodes(NONE, &[1, 2, 3], &voters, |_| {});
    net.elect(1);
    for k in 0..3 {
        let now = net.now;
        net.raft(1).propose(now, Data::from(format!("k{k}").as_str())).expect("accepted");
    }
    net.settle(50, |_| true);
    // Node 4 joins empty; it applies one entry per Ready and wants a snapshot after each.
    let mut c4 = support::net::config(n(4));
    c4.apply_bytes_max = 1;
    c4.snapshot_entries_threshold = 1;
    net.add(c4, quorate_log::MemLog::new(quorate_log::Configuration::default()));
    let now = net.now;
    net.raft(1).propose_conf_change(now, ConfChange::AddLearner(n(4))).expect("accepted");
    let caught_up = net.run_until(300, |_| true, |net| !net.node(4).snapshot_requests.is_empty());
    assert!(caught_up, "node 4 is asked for a snapshot");
    let asked = net.node(4).snapshot_requests[0].clone();
    assert!(
        asked.config.validate().is_ok(),
        "node 4 is asked to snapshot at {:?} with configuration {:?} (in force there: {voters:?})",
        asked.last,
        asked.config
    );
}

/// F4b. The consequence: the joiner snapshots where it was asked to, later leads, and sends
/// that snapshot to the next joiner, which halts ("configuration is invalid").
#[test]
fn f4b_a_snapshot_taken_by_a_joiner_does_not_halt_the_node_it_is_sent_to() {
    let voters = conf(&[1, 2, 3], &[], &[]);
    let mut net = Net::with_nodes(NONE, &[1, 2, 3], &voters, |_| {});
    net.elect(1);
    for k in 0..3 {
        let now = net.now;
        net.raft(1).propose(now, Data::from(format!("k{k}").as_str())).expect("accepted");
    }
    net.settle(50, |_| true);
    let mut c4 = support::net::config(n(4));
    c4.apply_bytes_max = 1;
    c4.snapshot_entries_threshold = 1;
    c4.compaction_tail_entries = 0;
    net.add(c4, quorate_log::MemLog::new(quorate_log::Configuration::default()));
    let now = net.now;
    net.raft(1).propose_conf_change(now, ConfChange::AddLearner(n(4))).expect("accepted");
    assert!(net.run_until(300, |_| true, |net| !net.node(4).snapshot_requests.is_empty()));
    // The application takes the snapshot it was asked for (as any driver does).
    let asked = net.node(4).snapshot_requests[0].clone();
    let now = net.now;
    net.raft(4).snapshot_taken(now, asked);
    net.settle(100, |_| true);
    // Node 4 is promoted and takes over.
    let now = net.now;
    net.raft(1).propose_conf_change(now, ConfChange::Promote(n(4))).expect("accepted");
    assert!(net.run_until(
        300,
        |_| true,
        |net| {
            let c = net.raft(1).configuration().clone();
            !c.is_joint() && c.is_voter(n(4)) && net.raft(1).commit_index().0 >= net.raft(1).config_version().0
        }
    ));
    net.settle(100, |_| true);
    net.advance(200);
    let now = net.now;
    net.raft(1).transfer_leadership(now, n(4)).expect("transfer");
    assert!(net.run_until(300, |_| true, |net| net.leaders() == [n(4)]), "node 4 leads");
    net.settle(100, |_| true);
    // Node 5 joins empty; leader 4 has compacted behind its snapshot and sends it.
    net.add(support::net::config(n(5)), quorate_log::MemLog::new(quorate_log::Configuration::default()));
    let now = net.now;
    net.raft(4).propose_conf_change(now, ConfChange::AddLearner(n(5))).expect("accepted");
    assert!(net.run_until(300, |_| true, |net| net.snapshots.iter().any(|(_, _, s)| s.to == n(5))), "a snapshot for 5");
    let (from, term, s) = net.snapshots.iter().find(|(_, _, s)| s.to == n(5)).cloned().expect("found");
    let now = net.now;
    let r = net.raft(5).install_snapshot(now, from, term, s.meta.clone());
    assert!(
        net.raft(5).halted().is_none(),
        "node 5 halted on a correct leader's snapshot {:?}: {r:?} {:?}",
        s.meta,
        net.raft(5).halted()
    );
}

/// F3b. The same as a partition: node 2 is cut off while the leader fills its window and
/// compacts; after the partition heals, node 2 is never caught up.
#[test]
fn f3b_a_follower_partitioned_with_a_full_window_catches_up_after_healing() {
    let mut net = Net::with_nodes(NONE, &[1, 2, 3], &conf(&[1, 2, 3], &[], &[]), |c| {
        c.inflight_msgs_max = 4;
        c.compaction_tail_entries = 2;
        c.snapshot_entries_threshold = 0;
        c.snapshot_bytes_threshold = 0;
    });
    net.elect(1);
    let cut = |m: &Message| m.from != n(2) && m.to != n(2);
    for k in 0..12 {
        let now = net.now;
        net.raft(1).propose(now, Data::from(format!("k{k}").as_str())).expect("accepted");
        net.settle(3, cut);
    }
    net.settle(200, cut);
    let p = net.raft(1).status().peers[&n(2)].clone();
    assert_eq!((p.state, p.inflight_msgs), (ProgressState::Replicate, 4), "{p:?}");
    let now = net.now;
    let at = net.node(1).applied.last().map(Entry::id).expect("applied");
    let c = net.raft(1).configuration().clone();
    net.raft(1).snapshot_taken(now, SnapshotMeta { last: at, config: c });
    net.settle(10, cut);
    let floor = net.raft(1).status().first_index;
    assert!(floor > p.next_index, "the leader compacted past node 2's window: first index {floor}, {p:?}");
    let last = net.raft(1).last_index();
    let caught_up = net.run_until(
        3000,
        |_| true,
        |net| !net.snapshots.is_empty() || net.raft(1).status().peers[&n(2)].match_index >= last,
    );
    let p = net.raft(1).status().peers[&n(2)].clone();
    assert!(caught_up, "3 s after healing node 2 still gets nothing: {p:?}");
}
