//! The smaller findings of issue 16's review, each as a scenario through the public API:
//! stall detection that does not depend on how heartbeat answers are paired, a lost snapshot
//! acknowledgement, the configuration a snapshot carries, read refusals from nodes that do not
//! lead, and peer input that must halt the node with evidence instead of panicking or being
//! taken in silently.

mod support;

use quorate_core::{
    AppendResponse, Heartbeat, Message, MessageBody, ProgressState, ReadId, ReadIndexResponse, ReadLevel, SnapshotError,
};
use quorate_log::{Configuration, Data, Entry, EntryId, EntryPayload, LogIndex, MemLog, SnapshotMeta, Term};
use support::holes::conf;
use support::net::{Net, Prep, append, cmd, msg, n};

const NONE: Prep = |_| {};

fn is_append_to(m: &Message, to: u64) -> bool {
    m.to == n(to) && matches!(m.body, MessageBody::Append(_))
}

fn peer(net: &mut Net, leader: u64, p: u64) -> quorate_core::PeerProgress {
    net.raft(leader).status().peers[&n(p)].clone()
}

/// A follower with a slow disk answers heartbeats at once (they promise nothing about its log)
/// but acknowledges appends late. Its answers reaching the leader together, with the same
/// match index, must not make the leader drop the appends in flight to it (they used to flip
/// it to Probe).
#[test]
fn heartbeat_answers_of_a_slow_follower_arriving_together_keep_its_window() {
    let mut net = Net::with_nodes(NONE, &[1, 2, 3], &conf(&[1, 2, 3], &[], &[]), |_| {});
    net.elect(1);
    let now = net.now;
    net.raft(1).propose(now, Data::from("a")).expect("the leader accepts");
    net.ready(1);
    net.persist(1);
    net.deliver(|_| true);
    // Node 2's disk is slow: its batch is handed out and stays unwritten for now.
    net.ready(2);
    net.ready(3);
    net.persist(3);
    net.ready(3);
    for _ in 0..2 {
        net.advance(20);
        net.tick();
        net.ready(1);
        net.deliver(|m| m.to == n(2) && matches!(m.body, MessageBody::Heartbeat(_)));
        net.ready(2);
    }
    // The leader appends again; that append stays in flight.
    let now = net.now;
    net.raft(1).propose(now, Data::from("b")).expect("the leader accepts");
    net.ready(1);
    // Node 2's disk catches up: its acknowledgement and both heartbeat answers reach the
    // leader together.
    net.persist(2);
    net.ready(2);
    let delivered = net.deliver(|m| m.to == n(1));
    assert!(delivered >= 3, "two heartbeat answers and an acknowledgement");
    let p = peer(&mut net, 1, 2);
    assert_eq!(p.state, ProgressState::Replicate, "{p:?}");
    assert_eq!(p.inflight_msgs, 1, "the append of b is still in flight: {p:?}");
}

/// The last append of a window is lost and nothing else is proposed: the leader finds out
/// from the follower's heartbeat answers (no progress for a heartbeat interval) and sends it
/// again.
#[test]
fn a_lost_append_at_the_end_of_the_window_is_sent_again() {
    let mut net = Net::with_nodes(NONE, &[1, 2, 3], &conf(&[1, 2, 3], &[], &[]), |_| {});
    net.elect(1);
    let now = net.now;
    net.raft(1).propose(now, Data::from("a")).expect("the leader accepts");
    net.ready(1);
    let lost = net.drop_where(|m| is_append_to(m, 2));
    assert_eq!(lost.len(), 1);
    let last = net.raft(1).last_index();
    let caught_up = net.run_until(200, |_| true, |net| peer(net, 1, 2).match_index == last);
    assert!(caught_up, "node 2 got the lost entry again: {:?}", peer(&mut net, 1, 2));
    assert_eq!(peer(&mut net, 1, 2).state, ProgressState::Replicate);
}

/// Node 3 is cut off while the leader compacts its log; when it comes back it needs the
/// leader's snapshot, which the leader took with a wrong configuration in its meta.
fn snapshot_scenario() -> (Net, quorate_core::SendSnapshot, Term) {
    let voters = conf(&[1, 2, 3], &[], &[]);
    let mut net = Net::with_nodes(NONE, &[1, 2, 3], &voters, |c| {
        c.snapshot_entries_threshold = 0;
        c.snapshot_bytes_threshold = 0;
        c.compaction_tail_entries = 0;
    });
    net.elect(1);
    let cut = |m: &Message| m.from != n(3) && m.to != n(3);
    for k in 0..5 {
        let now = net.now;
        net.raft(1).propose(now, Data::from(format!("k{k}").as_str())).expect("the leader accepts");
    }
    let last = net.raft(1).last_index();
    let applied = net.run_until(200, cut, |net| net.node(1).applied.last().is_some_and(|e| e.index == last));
    assert!(applied, "the leader applied everything");
    let at = net.node(1).applied.last().map(Entry::id).expect("applied");
    let now = net.now;
    let wrong = conf(&[7], &[], &[]);
    net.raft(1).snapshot_taken(now, SnapshotMeta { last: at, config: wrong });
    net.ready(1);
    net.persist(1);
    assert_eq!(net.raft(1).status().first_index, at.index.next(), "the leader compacted up to its snapshot");
    let asked = net.run_until(300, |_| true, |net| !net.snapshots.is_empty());
    assert!(asked, "the leader sends node 3 its snapshot");
    let (from, term, s) = net.snapshots.remove(0);
    assert_eq!((from, s.to), (n(1), n(3)));
    (net, s, term)
}

#[test]
fn a_snapshot_carries_the_configuration_at_its_index_whatever_snapshot_taken_was_given() {
    let (_, s, _) = snapshot_scenario();
    assert_eq!(s.meta.config, conf(&[1, 2, 3], &[], &[]), "{s:?}");
}

/// The follower installs the snapshot and its acknowledgement is lost: the leader must not
/// wait for `snapshot_send_timeout` (30 s) to replicate to it again.
#[test]
fn a_lost_snapshot_acknowledgement_is_recovered_within_a_few_heartbeats() {
    let (mut net, s, term) = snapshot_scenario();
    let now = net.now;
    assert_eq!(net.raft(3).install_snapshot(now, n(1), term, s.meta.clone()), Ok(true));
    net.ready(3);
    net.persist(3);
    net.ready(3);
    let lost = net.drop_where(|m| {
        m.from == n(3) && matches!(m.body, MessageBody::AppendResponse(AppendResponse::Accepted { .. }))
    });
    assert!(!lost.is_empty(), "node 3 acknowledged the install, and that was lost");
    assert_eq!(peer(&mut net, 1, 3).state, ProgressState::Snapshot);
    let started = net.now;
    let back = net.run_until(
        500,
        |_| true,
        |net| {
            let p = peer(net, 1, 3);
            p.state == ProgressState::Replicate && p.match_index >= s.meta.last.index
        },
    );
    assert!(back, "still waiting for the snapshot after {:?}", net.now.saturating_since(started));
    assert!(net.now.saturating_since(started) < std::time::Duration::from_millis(200));
}

/// A node that does not lead answers a forwarded read with a refusal at its own (higher)
/// term; the follower that forwarded it must not take that node for the leader.
#[test]
fn a_read_refusal_from_a_node_that_does_not_lead_names_no_leader() {
    let mut net = Net::with_nodes(NONE, &[2], &conf(&[1, 2, 3], &[], &[]), |_| {});
    net.advance(200);
    net.wire.push(msg(1, 2, 1, MessageBody::Heartbeat(Heartbeat { commit: LogIndex(0), seq: 1 })));
    net.deliver(|_| true);
    net.ready(2);
    net.persist(2);
    assert_eq!(net.raft(2).leader(), Some(n(1)));
    let now = net.now;
    net.raft(2).read(now, ReadId(7), ReadLevel::Linearizable).expect("forwarded");
    net.wire.push(msg(3, 2, 2, MessageBody::ReadIndexResponse(ReadIndexResponse { id: ReadId(7), index: None })));
    net.deliver(|_| true);
    assert_eq!(net.raft(2).term(), Term(2));
    assert_eq!(net.raft(2).leader(), None, "a refusal names no leader");
    let rd = net.raft(2).ready();
    assert_eq!(rd.failed_reads.iter().map(|f| f.id).collect::<Vec<_>>(), [ReadId(7)]);
    // A confirmation comes only from the leader of its term.
    net.raft(2).read(now, ReadId(8), ReadLevel::Linearizable).expect_err("no leader to forward to");
    net.wire.push(msg(
        3,
        2,
        3,
        MessageBody::ReadIndexResponse(ReadIndexResponse { id: ReadId(9), index: Some(LogIndex(0)) }),
    ));
    net.deliver(|_| true);
    assert_eq!(net.raft(2).leader(), Some(n(3)));
}

fn entry(i: u64, t: u64, payload: EntryPayload) -> Entry {
    Entry { index: LogIndex(i), term: Term(t), payload }
}

/// Appends no correct leader sends: the follower halts with the evidence (no panic, nothing
/// taken into its log).
#[test]
fn malformed_appends_halt_the_follower_with_evidence() {
    let committed = [cmd(1, 1, "a"), cmd(2, 1, "b")];
    let cases: Vec<(&str, u64, MessageBody, &str)> = vec![
        ("entries skip an index", 1, append((0, 0), vec![cmd(1, 1, "a"), cmd(3, 1, "c")], 0), "one after the other"),
        ("entries do not start after prev", 1, append((0, 0), vec![cmd(2, 1, "a")], 0), "where 1 was due"),
        ("terms go back", 2, append((0, 0), vec![cmd(1, 2, "a"), cmd(2, 1, "b")], 0), "the term goes back"),
        ("an entry above the message's term", 1, append((0, 0), vec![cmd(1, 2, "a")], 0), "above the message's term"),
        ("prev above the message's term", 1, append((1, 2), vec![], 0), "above the message's term"),
        (
            "an invalid configuration",
            1,
            append((0, 0), vec![entry(1, 1, EntryPayload::Config(Configuration::default()))], 0),
            "invalid configuration",
        ),
        (
            "an entry contradicting a committed one",
            2,
            append((0, 0), vec![cmd(1, 1, "a"), cmd(2, 2, "x")], 2),
            "contradicts the committed",
        ),
    ];
    for (what, term, body, evidence) in cases {
        let mut net = Net::with_nodes(NONE, &[2], &conf(&[1, 2, 3], &[], &[]), |_| {});
        net.advance(200);
        // Two entries from the leader of term 1, committed.
        net.wire.push(msg(1, 2, 1, append((0, 0), committed.to_vec(), 2)));
        net.deliver(|_| true);
        net.ready(2);
        net.persist(2);
        net.ready(2);
        assert_eq!(net.raft(2).commit_index(), LogIndex(2), "{what}: set-up");
        let before: Vec<(u64, u64)> = support::net::log_ids(net.raft(2));
        net.wire.push(msg(1, 2, term, body));
        net.deliver(|_| true);
        let r = net.raft(2);
        let halted = r.halted().map(str::to_owned);
        assert!(halted.as_deref().is_some_and(|h| h.contains(evidence)), "{what}: halted {halted:?}");
        assert_eq!(support::net::log_ids(r), before, "{what}: nothing was taken in");
        assert!(r.ready().is_empty(), "{what}: a halted node hands nothing out");
    }
}

/// A snapshot whose last entry is above the sender's term, or whose configuration is invalid,
/// halts the node with the evidence.
#[test]
fn a_malformed_snapshot_halts_the_follower_with_evidence() {
    let voters = conf(&[1, 2, 3], &[], &[]);
    let cases = [
        (
            "last entry above the term",
            SnapshotMeta { last: EntryId::new(Term(3), LogIndex(5)), config: voters.clone() },
            "above the leader's term",
        ),
        (
            "no voters",
            SnapshotMeta { last: EntryId::new(Term(1), LogIndex(5)), config: Configuration::default() },
            "configuration is invalid",
        ),
    ];
    for (what, meta, evidence) in cases {
        let mut r = quorate_core::Raft::new(
            support::net::config(n(2)),
            MemLog::new(voters.clone()),
            quorate_core::Instant::ZERO,
        )
        .expect("valid");
        let now = quorate_core::Instant(200_000_000);
        assert_eq!(r.install_snapshot(now, n(1), Term(2), meta), Err(SnapshotError::Halted), "{what}");
        assert!(r.halted().is_some_and(|h| h.contains(evidence)), "{what}: {:?}", r.halted());
    }
}
