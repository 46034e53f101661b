//! Core bugs the simulator (quorate-check) found after issue 16's fixes, each as a scenario
//! through the public API that failed before its fix.

mod support;

use quorate_core::{Append, Heartbeat, MessageBody, Raft};
use quorate_log::{Data, Entry, EntryId, EntryPayload, HardState, LogIndex, MemLog, SnapshotMeta, Term};
use support::holes::conf;
use support::net::{config, msg, n, write};

fn entry(i: u64, t: u64) -> Entry {
    Entry { index: LogIndex(i), term: Term(t), payload: EntryPayload::Command(Data::from(format!("e{i}").as_str())) }
}

/// A follower of voters {1, 2, 3} whose storage holds entries 1..=5 of term 1, durable, with
/// nothing known committed (it missed the leader's commit index).
fn follower_with_five_entries() -> Raft<MemLog> {
    let mut s = MemLog::new(conf(&[1, 2, 3], &[], &[]));
    s.append(&(1..=5).map(|i| entry(i, 1)).collect::<Vec<_>>()).expect("contiguous");
    s.set_hard_state(HardState { term: Term(1), vote: None, commit: LogIndex::ZERO });
    Raft::new(config(n(2)), s, quorate_core::Instant::ZERO).expect("a valid configuration")
}

/// Apply gap (seeds 5, 7, 40, ... of `quorate-sim --seeds 500`): a snapshot install that keeps
/// the persisted suffix above it. The application installs the snapshot's state when the install
/// batch is reported; entries above the snapshot must not be handed out to apply before that,
/// or the state machine applies entry 4 on its own state at 0 and then skips the install (its
/// applied index is past the snapshot) — entries 1..=3 lost on that replica.
#[test]
fn entries_above_an_installed_snapshot_wait_for_the_install_to_be_persisted() {
    let mut r = follower_with_five_entries();
    let now = quorate_core::Instant::ZERO;
    let meta = SnapshotMeta { last: EntryId::new(Term(1), LogIndex(3)), config: conf(&[1, 2, 3], &[], &[]) };
    assert_eq!(r.install_snapshot(now, n(1), Term(1), meta), Ok(true));
    // The leader's commit index reaches the suffix the install kept.
    let hb = Heartbeat { commit: LogIndex(5), seq: 1 };
    r.handle_message(now, msg(1, 2, 1, MessageBody::Heartbeat(hb)));
    let rd = r.ready();
    let install = rd.persist.expect("the install batch");
    assert_eq!(install.install.as_ref().map(|m| m.last.index), Some(LogIndex(3)));
    let early: Vec<LogIndex> = rd.committed.iter().map(|e| e.index).collect();
    assert!(early.is_empty(), "entries {early:?} handed out to apply before the install batch was persisted");
    // Still held while the batch is on its way.
    let rd = r.ready();
    assert!(rd.committed.is_empty(), "entries handed out before the install was persisted: {:?}", rd.committed);
    write(r.storage_mut(), &install);
    r.persisted(now, install.io);
    let rd = r.ready();
    let applied: Vec<LogIndex> = rd.committed.iter().map(|e| e.index).collect();
    assert_eq!(applied, vec![LogIndex(4), LogIndex(5)], "the suffix after the install, in order");
}

/// The same with the suffix arriving in an append in the same step as the install (the suffix
/// then travels in the install batch itself).
#[test]
fn entries_appended_after_an_install_wait_for_the_install_batch() {
    let mut s = MemLog::new(conf(&[1, 2, 3], &[], &[]));
    s.set_hard_state(HardState { term: Term(1), vote: None, commit: LogIndex::ZERO });
    let mut r = Raft::new(config(n(2)), s, quorate_core::Instant::ZERO).expect("a valid configuration");
    let now = quorate_core::Instant::ZERO;
    let meta = SnapshotMeta { last: EntryId::new(Term(1), LogIndex(3)), config: conf(&[1, 2, 3], &[], &[]) };
    assert_eq!(r.install_snapshot(now, n(1), Term(1), meta), Ok(true));
    let a = Append {
        prev: EntryId::new(Term(1), LogIndex(3)),
        entries: vec![entry(4, 1), entry(5, 1)],
        commit: LogIndex(5),
    };
    r.handle_message(now, msg(1, 2, 1, MessageBody::Append(a)));
    let rd = r.ready();
    let batch = rd.persist.expect("the install batch with the entries");
    assert!(rd.committed.is_empty(), "entries handed out before the install was persisted: {:?}", rd.committed);
    write(r.storage_mut(), &batch);
    r.persisted(now, batch.io);
    let rd = r.ready();
    let applied: Vec<LogIndex> = rd.committed.iter().map(|e| e.index).collect();
    assert_eq!(applied, vec![LogIndex(4), LogIndex(5)]);
}

fn config_entry(i: u64, t: u64, c: quorate_log::Configuration) -> Entry {
    Entry { index: LogIndex(i), term: Term(t), payload: EntryPayload::Config(c) }
}

/// A removed node never campaigned (seed 351 of `quorate-sim --seeds 500`; 12070, 13853 and
/// 15340 of the long run before issue 16). Leader 2 of voters {1, 2} removes itself: the joint
/// configuration {1} & {1, 2} commits at 2, the final {1} is appended at 3 on node 2 only, and
/// node 2 restarts. Node 1 needs node 2's vote (the joint configuration is in force on node 1)
/// and cannot get it (its log is behind); node 2 holds the only copy of {1} and is not a voter
/// there. Raft dissertation §4.2.2: a server outside its own latest configuration still
/// campaigns while that configuration is uncommitted. Node 2 must win, commit {1} and hand over.
#[test]
fn a_node_outside_its_uncommitted_configuration_campaigns_when_it_holds_the_only_copy() {
    let old = conf(&[1, 2], &[], &[]);
    let joint = conf(&[1], &[1, 2], &[]);
    let new = conf(&[1], &[], &[]);
    let mut net = support::net::Net::new(|_| {});
    let mut s1 = MemLog::new(old.clone());
    s1.append(&[entry(1, 1), config_entry(2, 1, joint.clone())]).expect("contiguous");
    s1.set_hard_state(HardState { term: Term(1), vote: Some(n(2)), commit: LogIndex(2) });
    let mut s2 = s1.clone();
    s2.append(&[config_entry(3, 1, new.clone())]).expect("contiguous");
    net.add(config(n(1)), s1);
    net.add(config(n(2)), s2);
    assert!(net.raft(1).configuration().is_joint());
    assert_eq!(*net.raft(2).configuration(), new);
    let done = net.run_until(
        3000,
        |_| true,
        |net| {
            !net.leaders().is_empty()
                && net.raft(1).commit_index() >= LogIndex(3)
                && *net.raft(1).configuration() == new
        },
    );
    let status = |net: &mut support::net::Net, i| {
        let s = net.raft(i).status();
        format!(
            "node {i}: {:?} term {} commit {} last {} config {:?}",
            s.role, s.term, s.commit, s.last_index, s.config
        )
    };
    assert!(done, "no leader committed {{1}}: {}; {}", status(&mut net, 1), status(&mut net, 2));
    // Node 2 steps down once {1} is committed; node 1 leads from then on.
    let settled = net.run_until(3000, |_| true, |net| net.leaders() == [n(1)]);
    assert!(settled, "node 1 leads {{1}}: {}; {}", status(&mut net, 1), status(&mut net, 2));
}

/// A node removed by a committed configuration does not campaign (it would only disturb the
/// cluster it left).
#[test]
fn a_node_outside_its_committed_configuration_never_campaigns() {
    let joint = conf(&[1], &[1, 2], &[]);
    let new = conf(&[1], &[], &[]);
    let mut net = support::net::Net::new(|_| {});
    let mut s = MemLog::new(conf(&[1, 2], &[], &[]));
    s.append(&[entry(1, 1), config_entry(2, 1, joint), config_entry(3, 1, new)]).expect("contiguous");
    s.set_hard_state(HardState { term: Term(1), vote: Some(n(2)), commit: LogIndex(3) });
    net.add(config(n(2)), s);
    net.settle(2000, |_| false);
    assert_eq!(net.raft(2).last_campaign(), None, "a removed node campaigned");
    assert_eq!(net.raft(2).term(), Term(1));
}
