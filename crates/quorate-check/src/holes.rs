//! Evidence that the simulator catches each of issue 16's protocol holes, and issue 18's
//! lost-state hole, when it is switched back on in the core (`quorate_core::Hole`, cargo feature `reintroduce-holes` of this crate,
//! which forwards to `quorate-core/danger-reintroduce-holes`; no normal build enables it).
//!
//! Each [`HoleHunt`] names a hole, the settings that focus the simulator on it (as
//! `quorate-sim --set NAME=VALUE` pairs, so that a finding replays from the command line) and
//! the seed range searched; [`HoleHunt::run`] switches the hole on in every core at every
//! start ([`SimConfig::core_hook`]) and returns the first violation. `cargo xtask sim --holes`
//! runs every hunt and fails if one comes back empty.

use crate::invariants::Violation;
use crate::sim::{CoreHook, SimConfig, find_violation};
use quorate_core::Hole;
use std::ops::Range;

/// One hole and where the simulator looks for it.
#[derive(Clone, Debug)]
pub struct HoleHunt {
    /// The hole switched back on.
    pub hole: Hole,
    /// Its name on the command line (`quorate-sim --hole NAME`).
    pub name: &'static str,
    /// Settings applied to every seed's configuration before the hook, as `--set` pairs.
    pub settings: &'static [(&'static str, &'static str)],
    /// The seeds searched, in order.
    pub seeds: Range<u64>,
}

/// The seed budget of every hunt: the seeds `cargo xtask ci` runs.
pub const SEEDS: Range<u64> = 0..500;

/// The hunts `cargo xtask sim --holes` runs: each hole of issue 16 (and issue 18's) with the
/// settings that reach it within [`SEEDS`].
#[must_use]
pub fn hunts() -> Vec<HoleHunt> {
    vec![
        // Hole 1 is frequent in the default distribution (one voter with learners).
        HoleHunt { hole: Hole::SelfVoteSendsEarly, name: "self-vote-sends-early", settings: &[], seeds: SEEDS },
        // Hole 2 needs a joint configuration that survives only in the base: a compaction
        // or snapshot at the joint entry, and (with automatic leave off) a change proposed
        // on top of it.
        HoleHunt {
            hole: Hole::JointOnlyInBase,
            name: "joint-only-in-base",
            settings: &[("auto_leave_joint", "false")],
            seeds: SEEDS,
        },
        // Hole 3 needs five voters and three leaders in a row whose appends reach one
        // follower within one slow group write: a degraded disk on node 5, frequent faults,
        // long delays.
        HoleHunt {
            hole: Hole::PersistedAba,
            name: "persisted-aba",
            settings: &[
                ("voters", "5"),
                ("reconfig", "false"),
                ("degraded_node", "4"),
                ("group_batches_max", "64"),
                ("nemesis_interval_ms", "100"),
                ("long_delay", "0.05"),
                ("slow_fsync", "0.2"),
            ],
            seeds: SEEDS,
        },
        // Hole 4 needs three voters, lease reads and pre-vote.
        HoleHunt {
            hole: Hole::LeaseVoteAfterTermMove,
            name: "lease-vote-after-term-move",
            settings: &[("voters_min", "3"), ("lease_reads", "true"), ("pre_vote", "true"), ("reconfig", "false")],
            seeds: SEEDS,
        },
        // Issue 18's hole needs crashes that lose synced state: half of them do.
        HoleHunt {
            hole: Hole::LostStateIgnored,
            name: "lost-state-ignored",
            settings: &[("voters_min", "3"), ("lose_synced", "0.5")],
            seeds: SEEDS,
        },
    ]
}

/// The hook that switches `hole` on in a core.
#[must_use]
pub fn hook(hole: Hole) -> CoreHook {
    match hole {
        Hole::SelfVoteSendsEarly => |r| r.danger_reintroduce(Hole::SelfVoteSendsEarly),
        Hole::JointOnlyInBase => |r| r.danger_reintroduce(Hole::JointOnlyInBase),
        Hole::PersistedAba => |r| r.danger_reintroduce(Hole::PersistedAba),
        Hole::LeaseVoteAfterTermMove => |r| r.danger_reintroduce(Hole::LeaseVoteAfterTermMove),
        Hole::LostStateIgnored => |r| r.danger_reintroduce(Hole::LostStateIgnored),
        _ => |_| {},
    }
}

/// The hunt for the hole named `name` (as on the command line).
#[must_use]
pub fn by_name(name: &str) -> Option<HoleHunt> {
    hunts().into_iter().find(|h| h.name == name)
}

impl HoleHunt {
    /// Applies this hunt's settings and hook to `cfg`.
    pub fn apply(&self, cfg: &mut SimConfig) {
        for (name, value) in self.settings {
            // The settings are this module's constants; a bad one fails the tests below.
            let _ = cfg.set(name, value);
        }
        cfg.core_hook = Some(hook(self.hole));
    }

    /// The first seed of [`HoleHunt::seeds`] at which the simulator finds a violation with the
    /// hole switched on, and that violation.
    #[must_use]
    pub fn run(&self) -> Option<(u64, Violation)> {
        find_violation(self.seeds.clone(), |c| self.apply(c))
    }

    /// The command that replays `seed` of this hunt, narrated.
    #[must_use]
    pub fn replay(&self, seed: u64) -> String {
        let sets: String = self.settings.iter().map(|(n, v)| format!(" --set {n}={v}")).collect();
        format!("cargo xtask sim --hole {} --seed {seed}{sets} --verbose", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hunt_has_valid_settings_and_a_distinct_name() {
        let hunts = hunts();
        for h in &hunts {
            let mut c = SimConfig::for_seed(0, 1);
            for (n, v) in h.settings {
                assert!(c.set(n, v).is_ok(), "{}: --set {n}={v}", h.name);
            }
            assert_eq!(by_name(h.name).map(|x| x.hole), Some(h.hole));
        }
        assert_eq!(hunts.len(), 5);
    }
}
