//! Evidence hooks: issue 16's four holes and issue 18's lost-state hole, switched back on in one
//! core, so that the simulator and the model checker can show they would catch each of them. Only with the cargo feature
//! `danger-reintroduce-holes`, which no normal build enables; without it [`Danger`] is empty
//! and every check is a constant `false`.
//!
//! Each re-introduced code path is kept next to the fix it undoes, small and visibly the old
//! behaviour (grep for `HoleId::`).

/// A hole of issue 16 or 18 (crate-internal name; [`Hole`] is the public one, with the feature).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(not(feature = "danger-reintroduce-holes"), allow(dead_code, reason = "named only by the feature's paths"))]
pub(crate) enum HoleId {
    SelfVoteSendsEarly,
    JointOnlyInBase,
    PersistedAba,
    LeaseVoteAfterTermMove,
    LostStateIgnored,
}

/// Issue 16's protocol holes and issue 18's, for [`crate::Raft::danger_reintroduce`]. Test-only: a core with
/// a hole switched back on is unsafe.
#[cfg(feature = "danger-reintroduce-holes")]
#[doc(hidden)]
#[non_exhaustive]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Hole {
    /// Hole 1: a leader's messages leave at once, before its term is durable (a leader whose
    /// own vote closes the quorum can then send entries at a term it may win again after a
    /// crash).
    SelfVoteSendsEarly,
    /// Hole 2: only configuration entries above the log's floor count; a committed joint
    /// configuration that lives only in the base is never left, and changes are accepted on
    /// top of it.
    JointOnlyInBase,
    /// Hole 3: truncations leave the marks of batches in flight alone, so a stale completion
    /// moves the persisted watermark when `(term, index)` matches again.
    PersistedAba,
    /// Hole 4: the lease is checked only for vote requests at a higher term, and a node
    /// votes for itself inside another leader's lease.
    LeaseVoteAfterTermMove,
    /// Issue 18: a node that lost synced state ([`crate::Config::recovering`]) starts as if
    /// nothing was lost, with the older term and vote and the shorter log its storage holds
    /// (it can vote twice in a term, or help elect a leader that lacks a committed entry).
    LostStateIgnored,
}

#[cfg(feature = "danger-reintroduce-holes")]
impl From<Hole> for HoleId {
    fn from(h: Hole) -> HoleId {
        match h {
            Hole::SelfVoteSendsEarly => HoleId::SelfVoteSendsEarly,
            Hole::JointOnlyInBase => HoleId::JointOnlyInBase,
            Hole::PersistedAba => HoleId::PersistedAba,
            Hole::LeaseVoteAfterTermMove => HoleId::LeaseVoteAfterTermMove,
            Hole::LostStateIgnored => HoleId::LostStateIgnored,
        }
    }
}

/// The holes switched back on in one core: none, unless a test asked (never part of a
/// `CoreImage`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub(crate) struct Danger(#[cfg(feature = "danger-reintroduce-holes")] u8);

impl Danger {
    /// Whether `hole` is switched back on.
    #[inline]
    pub(crate) fn on(self, hole: HoleId) -> bool {
        #[cfg(feature = "danger-reintroduce-holes")]
        {
            self.0 & (1 << hole as u8) != 0
        }
        #[cfg(not(feature = "danger-reintroduce-holes"))]
        {
            let _ = hole;
            false
        }
    }

    /// Switches `hole` back on.
    #[cfg(feature = "danger-reintroduce-holes")]
    pub(crate) fn add(&mut self, hole: HoleId) {
        self.0 |= 1 << hole as u8;
    }
}
