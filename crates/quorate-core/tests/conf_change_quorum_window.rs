//! A membership change right after the leader's check-quorum round (found by
//! `snapshots_and_membership::membership_add_promote_remove` failing once in CI, 2026-12-05:
//! `member promote` refused with "the new configuration would have no quorum among the nodes
//! heard from recently" on a healthy cluster under load).

mod support;

use quorate_core::{ConfChange, ConfChangeError};
use support::holes::conf;
use support::net::{Net, Prep, n};

const NONE: Prep = |_| {};

/// Every election timeout the leader's check-quorum round forgets which followers it heard
/// from, and counts them again from the next answers. A change proposed between the round and
/// those answers found no follower "recently active" and was refused, on a healthy cluster
/// whose followers had all answered a heartbeat within the last election timeout. A follower
/// that answered within that time counts.
#[test]
fn a_change_right_after_the_check_quorum_round_is_not_refused_on_a_healthy_cluster() {
    let c = conf(&[1, 2, 3], &[], &[4]);
    let mut net = Net::with_nodes(NONE, &[1, 2, 3, 4], &c, |_| {});
    net.elect(1);
    net.settle(100, |_| true);
    assert_eq!(net.raft(4).commit_index(), net.raft(1).commit_index(), "set-up: learner 4 caught up");
    // Run the cluster until the leader's check-quorum round has just forgotten its followers:
    // every message delivered up to then, none after.
    let mut forgotten = false;
    for _ in 0..2000 {
        net.advance(1);
        net.tick();
        net.ready(1);
        let st = net.raft(1).status();
        if st.peers.values().all(|p| !p.recent_active) {
            forgotten = true;
            break;
        }
        net.deliver(|_| true);
        for i in 1..=4 {
            net.ready(i);
            net.persist(i);
            net.ready(i);
        }
        net.deliver(|_| true);
    }
    assert!(forgotten, "set-up: the check-quorum round came");
    let now = net.now;
    let r: Result<_, ConfChangeError> = net.raft(1).propose_conf_change(now, ConfChange::Promote(n(4)));
    assert!(r.is_ok(), "promoting caught-up learner 4 on a healthy cluster right after the check-quorum round: {r:?}");
}
