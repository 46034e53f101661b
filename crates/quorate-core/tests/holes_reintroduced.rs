//! Evidence that the scenarios of `tests/holes.rs` (and `tests/recovery.rs`) catch each hole of
//! issue 16 (and issue 18's lost-state hole): with the hole
//! switched back on (`Raft::danger_reintroduce`, feature `danger-reintroduce-holes`), every
//! scenario returns the evidence of the hole. Run with
//! `cargo nextest run -p quorate-core --features danger-reintroduce-holes`.

mod support;

use quorate_core::Hole;
use support::holes::*;
use support::net::Prep;
use support::recovery::*;

const SELF_VOTE_SENDS_EARLY: Prep = |r| r.danger_reintroduce(Hole::SelfVoteSendsEarly);
const JOINT_ONLY_IN_BASE: Prep = |r| r.danger_reintroduce(Hole::JointOnlyInBase);
const PERSISTED_ABA: Prep = |r| r.danger_reintroduce(Hole::PersistedAba);
const LEASE_VOTE_AFTER_TERM_MOVE: Prep = |r| r.danger_reintroduce(Hole::LeaseVoteAfterTermMove);
const LOST_STATE_IGNORED: Prep = |r| r.danger_reintroduce(Hole::LostStateIgnored);

fn caught(outcome: Result<(), String>, evidence: &str) -> bool {
    outcome.as_ref().is_err_and(|e| e.contains(evidence))
}

#[test]
fn hole_1_a_leader_sending_before_its_term_is_durable_breaks_log_matching() {
    for (shape, by) in [
        (SelfVoteShape::OneVoterOneLearner, CampaignBy::CampaignNow),
        (SelfVoteShape::OneVoterOneLearner, CampaignBy::Timeout),
        (SelfVoteShape::OneVoterTwoLearners, CampaignBy::CampaignNow),
        (SelfVoteShape::JointOfOne, CampaignBy::CampaignNow),
    ] {
        let outcome = self_vote_sends_early(SELF_VOTE_SENDS_EARLY, shape, by);
        assert!(caught(outcome.clone(), "log matching broken"), "{shape:?} {by:?}: {outcome:?}");
    }
}

#[test]
fn hole_2_a_joint_configuration_only_in_the_base_is_never_left() {
    for how in [JointBase::Compacted, JointBase::Restarted] {
        let outcome = joint_only_in_base(JOINT_ONLY_IN_BASE, how);
        assert!(caught(outcome.clone(), "answered a change proposed while joint"), "{how:?}: {outcome:?}");
    }
}

#[test]
fn hole_3_a_stale_completion_marks_overwritten_entries_persisted() {
    let merged = persisted_aba(PERSISTED_ABA, AbaWrites::Merged);
    assert!(caught(merged.clone(), "A and B written, A reported"), "{merged:?}");
    let one_by_one = persisted_aba(PERSISTED_ABA, AbaWrites::OneByOne);
    assert!(caught(one_by_one.clone(), "B written and reported"), "{one_by_one:?}");
}

#[test]
fn hole_4_a_voter_in_a_lease_votes_once_its_term_moved_and_campaigns_for_itself() {
    for pre_vote in [false, true] {
        let outcome = lease_vote_after_term_move(LEASE_VOTE_AFTER_TERM_MOVE, pre_vote);
        assert!(caught(outcome.clone(), "5 ms after acknowledging"), "pre-vote {pre_vote}: {outcome:?}");
        let outcome = campaign_now_in_lease(LEASE_VOTE_AFTER_TERM_MOVE, pre_vote);
        assert!(caught(outcome.clone(), "5 ms after L's heartbeat"), "pre-vote {pre_vote}: {outcome:?}");
    }
}

/// Issue 18: a node that lost synced state and restarts as if nothing was lost votes a second
/// time in a term, campaigns, takes an older leader's entries, keeps a log a stale leader never
/// repairs, and applies an entry that was never committed. Each recovery scenario catches it.
#[test]
fn lost_state_ignored_votes_twice_campaigns_and_applies_an_uncommitted_entry() {
    let outcome = no_vote_while_recovering(LOST_STATE_IGNORED);
    assert!(caught(outcome.clone(), "granted while its state was lost"), "{outcome:?}");
    let outcome = never_campaigns_while_recovering(LOST_STATE_IGNORED);
    assert!(caught(outcome.clone(), "campaigned while its state was lost"), "{outcome:?}");
    let outcome = rejects_an_older_leader(LOST_STATE_IGNORED);
    assert!(caught(outcome.clone(), "took an append of term 1"), "{outcome:?}");
    let outcome = heartbeats_alone_catch_it_up(LOST_STATE_IGNORED);
    assert!(caught(outcome.clone(), "node 3's log is [(1, 1)]"), "{outcome:?}");
    let outcome = unverified_heartbeat_commits_nothing(LOST_STATE_IGNORED);
    assert!(caught(outcome.clone(), "applied the uncommitted 2@1"), "{outcome:?}");
}

/// Each switch re-introduces its own hole and no other: the other scenarios stay clean.
#[test]
fn each_switch_opens_only_its_own_hole() {
    assert_eq!(joint_only_in_base(SELF_VOTE_SENDS_EARLY, JointBase::Compacted), Ok(()));
    assert_eq!(persisted_aba(JOINT_ONLY_IN_BASE, AbaWrites::Merged), Ok(()));
    assert_eq!(persisted_aba(LOST_STATE_IGNORED, AbaWrites::Merged), Ok(()));
    assert_eq!(no_vote_while_recovering(PERSISTED_ABA), Ok(()));
    assert_eq!(lease_vote_after_term_move(PERSISTED_ABA, false), Ok(()));
    let outcome =
        self_vote_sends_early(LEASE_VOTE_AFTER_TERM_MOVE, SelfVoteShape::OneVoterOneLearner, CampaignBy::Timeout);
    assert_eq!(outcome, Ok(()));
}
