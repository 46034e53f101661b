//! Cluster configurations (who votes, who only learns) and the quorum rules over them.

use crate::ids::{LogIndex, NodeId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The largest number of members (voters plus learners) a configuration may name. Quorum
/// computations allocate nothing at this size and the bound keeps every decoder honest.
pub const MEMBERS_MAX: usize = 64;

/// A cluster configuration.
///
/// `voters` is the current voter set. While a joint-consensus change is in progress,
/// `voters_outgoing` holds the previous voter set and every decision needs a majority of
/// *both* sets; otherwise it is empty. Learners receive the log but never vote or count.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Configuration {
    /// Voters of the (incoming) configuration.
    pub voters: BTreeSet<NodeId>,
    /// Voters of the outgoing configuration during a joint change; empty otherwise.
    pub voters_outgoing: BTreeSet<NodeId>,
    /// Non-voting members that receive the log.
    pub learners: BTreeSet<NodeId>,
}

/// Why a configuration is not acceptable.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigurationError {
    /// There are no voters.
    #[error("a configuration needs at least one voter")]
    NoVoters,
    /// A node is both a voter and a learner.
    #[error("node {0} cannot be both a voter and a learner")]
    VoterAndLearner(NodeId),
    /// Too many members.
    #[error("a configuration may name at most {max} members, this one names {count}")]
    TooManyMembers {
        /// Members named.
        count: usize,
        /// The limit.
        max: usize,
    },
}

impl Configuration {
    /// A plain (non-joint) configuration with the given voters and no learners.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Result<Configuration, ConfigurationError> {
        let c = Configuration {
            voters: voters.into_iter().collect(),
            voters_outgoing: BTreeSet::new(),
            learners: BTreeSet::new(),
        };
        c.validate()?;
        Ok(c)
    }

    /// Checks the structural rules: at least one voter, no node both voter and learner, size.
    pub fn validate(&self) -> Result<(), ConfigurationError> {
        if self.voters.is_empty() {
            return Err(ConfigurationError::NoVoters);
        }
        if let Some(n) = self.learners.iter().find(|n| self.voters.contains(n) || self.voters_outgoing.contains(n)) {
            return Err(ConfigurationError::VoterAndLearner(*n));
        }
        let count = self.members().count();
        if count > MEMBERS_MAX {
            return Err(ConfigurationError::TooManyMembers { count, max: MEMBERS_MAX });
        }
        Ok(())
    }

    /// Whether a joint change is in progress.
    #[must_use]
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// Whether `id` votes in either half of the configuration.
    #[must_use]
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.voters_outgoing.contains(&id)
    }

    /// Whether `id` is a learner.
    #[must_use]
    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.contains(&id)
    }

    /// Every member (voters of both halves and learners), sorted, without duplicates.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        let all: BTreeSet<NodeId> =
            self.voters.iter().chain(&self.voters_outgoing).chain(&self.learners).copied().collect();
        all.into_iter()
    }

    /// Every voter of either half, without duplicates.
    pub fn all_voters(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().copied().chain(self.voters_outgoing.iter().copied().filter(|n| !self.voters.contains(n)))
    }

    /// Whether the nodes for which `yes` holds form a quorum (a majority of each half).
    pub fn has_quorum(&self, yes: impl Fn(NodeId) -> bool) -> bool {
        majority(&self.voters, &yes) && (self.voters_outgoing.is_empty() || majority(&self.voters_outgoing, &yes))
    }

    /// Outcome of a vote: `Some(true)` won, `Some(false)` lost, `None` undecided.
    /// `vote(n)` is `Some(granted)` for the nodes that answered.
    pub fn vote_result(&self, vote: impl Fn(NodeId) -> Option<bool>) -> Option<bool> {
        let a = vote_result(&self.voters, &vote);
        if self.voters_outgoing.is_empty() {
            return a;
        }
        let b = vote_result(&self.voters_outgoing, &vote);
        match (a, b) {
            (Some(true), Some(true)) => Some(true),
            (Some(false), _) | (_, Some(false)) => Some(false),
            _ => None,
        }
    }

    /// The largest index replicated on a quorum, given each voter's acknowledged index.
    #[must_use]
    pub fn committed_index(&self, acked: impl Fn(NodeId) -> LogIndex) -> LogIndex {
        let a = quorum_index(&self.voters, &acked);
        if self.voters_outgoing.is_empty() { a } else { a.min(quorum_index(&self.voters_outgoing, &acked)) }
    }

    /// Bytes charged for a configuration entry in size limits.
    #[must_use]
    pub fn size_bytes(&self) -> u64 {
        8 * (self.voters.len() + self.voters_outgoing.len() + self.learners.len()) as u64
    }
}

fn majority(set: &BTreeSet<NodeId>, yes: &impl Fn(NodeId) -> bool) -> bool {
    let n = set.iter().filter(|id| yes(**id)).count();
    n > set.len() / 2
}

fn vote_result(set: &BTreeSet<NodeId>, vote: &impl Fn(NodeId) -> Option<bool>) -> Option<bool> {
    let (mut yes, mut no) = (0, 0);
    for id in set {
        match vote(*id) {
            Some(true) => yes += 1,
            Some(false) => no += 1,
            None => {}
        }
    }
    let q = set.len() / 2 + 1;
    if yes >= q {
        Some(true)
    } else if no > set.len() - q {
        Some(false)
    } else {
        None
    }
}

fn quorum_index(set: &BTreeSet<NodeId>, acked: &impl Fn(NodeId) -> LogIndex) -> LogIndex {
    if set.is_empty() {
        // An empty half places no constraint (only possible for `voters_outgoing`).
        return LogIndex(u64::MAX);
    }
    debug_assert!(set.len() <= MEMBERS_MAX);
    let mut buf = [LogIndex::ZERO; MEMBERS_MAX];
    let n = set.len().min(MEMBERS_MAX);
    for (slot, id) in buf.iter_mut().zip(set.iter()) {
        *slot = acked(*id);
    }
    let v = &mut buf[..n];
    v.sort_unstable_by(|a, b| b.cmp(a));
    // Sorted descending: the (majority)-th largest value is on a quorum.
    v[n / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u64]) -> BTreeSet<NodeId> {
        v.iter().map(|i| NodeId::new(*i).unwrap()).collect()
    }

    #[test]
    fn quorum_index_of_three_and_four() {
        let c = Configuration { voters: ids(&[1, 2, 3]), ..Default::default() };
        let acked = |n: NodeId| LogIndex([0, 5, 3, 9][n.get() as usize]);
        assert_eq!(c.committed_index(acked), LogIndex(5));
        let c = Configuration { voters: ids(&[1, 2, 3, 4]), ..Default::default() };
        let acked = |n: NodeId| LogIndex([0, 5, 3, 9, 1][n.get() as usize]);
        // Four voters need three acks: the third largest of {9,5,3,1} is 3.
        assert_eq!(c.committed_index(acked), LogIndex(3));
    }

    #[test]
    fn joint_needs_both_halves() {
        let c = Configuration { voters: ids(&[1, 2, 3]), voters_outgoing: ids(&[3, 4, 5]), ..Default::default() };
        assert!(!c.has_quorum(|n| [1, 2].contains(&n.get())));
        assert!(c.has_quorum(|n| [1, 2, 4, 5].contains(&n.get())));
        assert_eq!(c.vote_result(|n| if n.get() <= 3 { Some(true) } else { None }), None);
        assert_eq!(c.vote_result(|n| Some(n.get() <= 2)), Some(false));
        let acked = |n: NodeId| LogIndex(n.get() * 10);
        // incoming {1,2,3}: 20; outgoing {3,4,5}: 40; joint: min = 20.
        assert_eq!(c.committed_index(acked), LogIndex(20));
    }

    #[test]
    fn validation() {
        assert_eq!(Configuration::default().validate(), Err(ConfigurationError::NoVoters));
        let c = Configuration { voters: ids(&[1]), learners: ids(&[1]), ..Default::default() };
        assert!(matches!(c.validate(), Err(ConfigurationError::VoterAndLearner(_))));
    }

    #[test]
    fn vote_result_loses_early() {
        let c = Configuration::with_voters(ids(&[1, 2, 3])).unwrap();
        assert_eq!(c.vote_result(|n| if n.get() == 1 { Some(true) } else { Some(false) }), Some(false));
        assert_eq!(c.vote_result(|n| if n.get() <= 2 { Some(true) } else { None }), Some(true));
        assert_eq!(c.vote_result(|n| if n.get() == 1 { Some(true) } else { None }), None);
    }
}
