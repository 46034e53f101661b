//! The four protocol holes of issue 16, each as the scenario that exposed it.
//!
//! Each scenario is a function that drives cores through the public API and returns
//! `Err(evidence)` when the hole shows. The tests below assert that none does; with the
//! `danger-reintroduce-holes` feature, `tests/holes_reintroduced.rs` runs the same scenarios with
//! each hole switched back on and asserts that the scenario catches it.

mod support;

use support::holes::*;
use support::net::Prep;

const NONE: Prep = |_| {};

#[test]
fn a_single_voter_sends_nothing_at_its_new_term_before_the_term_is_durable() {
    let outcomes = [
        self_vote_sends_early(NONE, SelfVoteShape::OneVoterOneLearner, CampaignBy::CampaignNow),
        self_vote_sends_early(NONE, SelfVoteShape::OneVoterOneLearner, CampaignBy::Timeout),
        self_vote_sends_early(NONE, SelfVoteShape::OneVoterTwoLearners, CampaignBy::CampaignNow),
    ];
    assert_eq!(outcomes, [Ok(()), Ok(()), Ok(())]);
}

#[test]
fn a_joint_configuration_closed_by_the_self_vote_sends_nothing_early_either() {
    assert_eq!(self_vote_sends_early(NONE, SelfVoteShape::JointOfOne, CampaignBy::CampaignNow), Ok(()));
}

#[test]
fn a_joint_configuration_kept_only_by_a_compaction_is_left_by_the_next_leader() {
    assert_eq!(joint_only_in_base(NONE, JointBase::Compacted), Ok(()));
}

#[test]
fn a_joint_configuration_kept_only_by_a_restart_is_left_by_the_next_leader() {
    assert_eq!(joint_only_in_base(NONE, JointBase::Restarted), Ok(()));
}

#[test]
fn a_joint_configuration_is_left_on_request_when_auto_leave_is_off() {
    assert_eq!(manual_leave_joint(NONE), Ok(()));
}

#[test]
fn a_stale_batch_completion_after_two_truncations_does_not_mark_entries_persisted() {
    let outcomes = [persisted_aba(NONE, AbaWrites::Merged), persisted_aba(NONE, AbaWrites::OneByOne)];
    assert_eq!(outcomes, [Ok(()), Ok(())]);
}

#[test]
fn a_voter_in_a_lease_refuses_a_same_term_vote_after_its_term_moved() {
    let outcomes = [lease_vote_after_term_move(NONE, false), lease_vote_after_term_move(NONE, true)];
    assert_eq!(outcomes, [Ok(()), Ok(())]);
}

#[test]
fn campaign_now_inside_a_leaders_lease_does_not_vote_for_itself() {
    let outcomes = [campaign_now_in_lease(NONE, false), campaign_now_in_lease(NONE, true)];
    assert_eq!(outcomes, [Ok(()), Ok(())]);
}
