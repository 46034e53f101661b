//! Runtime invariant checks cheap enough to leave on in production.
//!
//! * **term never decreases**, **commit never decreases** (the core's view, checked after
//!   every `Ready` cycle of the driver);
//! * **applied ≤ committed** (the apply thread's index against the core's commit index,
//!   read in that order, so the race can only hide a violation, never invent one);
//! * **a leader's log contains its commit index** (`last_index ≥ commit` while leader);
//! * **cross-replica agreement of applied entries**: every node folds each entry it applies
//!   (index, term, payload) into a hash per window of [`HASH_WINDOW_ENTRIES`] indexes and
//!   publishes the last sample of a complete window ([`AppliedHasher`]); two replicas with
//!   different samples at one index applied different entries there. The samples are
//!   exported as `quorate_applied_hash_index` / `quorate_applied_hash_value`, and each node
//!   sends its latest samples to its peers and compares theirs with its own at the same
//!   index ([`crate::hash_exchange`]; invariant `cross_replica_hash`).
//!   A restart or a snapshot install starts the hasher mid-window: that window is skipped
//!   (not sampled), the next complete one is.
//!
//! A violation increments `quorate_invariant_violations_total{invariant=...}`, is logged at
//! error level with the evidence, and — with `telemetry.halt_on_invariant_violation` — stops
//! the node.

use quorate_log::{Entry, EntryPayload};
use quorate_telemetry::names::{self, invariant};
use std::collections::VecDeque;

/// Indexes per hash window (a power of two: cheap modulo, aligned across nodes).
pub(crate) const HASH_WINDOW_ENTRIES: u64 = 1024;
/// Samples of complete windows kept in memory.
pub(crate) const HASH_SAMPLES_MAX: usize = 16;
/// Bits of a sample published as a gauge (exact in an `f64`).
const HASH_BITS: u32 = 48;

/// A failed check, with its evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Violation {
    /// The `invariant` label.
    pub(crate) invariant: &'static str,
    /// What was seen.
    pub(crate) evidence: String,
}

/// Checks of the driver's view (the consensus core), fed after every cycle.
#[derive(Debug, Default)]
pub(crate) struct Invariants {
    term: u64,
    commit: u64,
    /// Violations so far (also counted by the metric).
    pub(crate) violations: u64,
}

/// What the driver saw in one cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Observed {
    pub(crate) term: u64,
    pub(crate) commit: u64,
    pub(crate) applied: u64,
    pub(crate) last_index: u64,
    pub(crate) is_leader: bool,
}

impl Invariants {
    /// Starts from what the node recovered (so a restart is not a "decrease").
    pub(crate) fn new(term: u64, commit: u64) -> Invariants {
        for name in invariant::ALL {
            metrics::counter!(names::INVARIANT_VIOLATIONS_TOTAL, names::LABEL_INVARIANT => *name).increment(0);
        }
        Invariants { term, commit, violations: 0 }
    }

    /// Checks one observation; returns the violations it found (usually none).
    pub(crate) fn check(&mut self, o: Observed) -> Vec<Violation> {
        let mut v = Vec::new();
        if o.term < self.term {
            v.push(Violation {
                invariant: invariant::TERM_MONOTONIC,
                evidence: format!("term went from {} down to {}", self.term, o.term),
            });
        }
        if o.commit < self.commit {
            v.push(Violation {
                invariant: invariant::COMMIT_MONOTONIC,
                evidence: format!("commit index went from {} down to {}", self.commit, o.commit),
            });
        }
        if o.applied > o.commit {
            v.push(Violation {
                invariant: invariant::APPLIED_LE_COMMITTED,
                evidence: format!("applied index {} is above commit index {}", o.applied, o.commit),
            });
        }
        if o.is_leader && o.last_index < o.commit {
            v.push(Violation {
                invariant: invariant::LEADER_HAS_COMMITTED,
                evidence: format!(
                    "leader in term {} has last log index {} below its commit index {}",
                    o.term, o.last_index, o.commit
                ),
            });
        }
        self.term = self.term.max(o.term);
        self.commit = self.commit.max(o.commit);
        for x in &v {
            report(x);
        }
        self.violations += v.len() as u64;
        v
    }
}

/// Violations reported in this process (the flight recorder dumps when it grows).
static VIOLATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Violations reported in this process so far, by any check.
pub(crate) fn violations_total() -> u64 {
    VIOLATIONS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Counts and logs a violation.
pub(crate) fn report(v: &Violation) {
    VIOLATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    metrics::counter!(names::INVARIANT_VIOLATIONS_TOTAL, names::LABEL_INVARIANT => v.invariant).increment(1);
    tracing::error!(invariant = v.invariant, evidence = %v.evidence, "INVARIANT VIOLATED: this is a bug; keep the data directory and logs");
}

/// Hashes applied entries per window of [`HASH_WINDOW_ENTRIES`] indexes (FNV-1a, 64 bits,
/// truncated to 48 when published). Fed by the apply thread in index order.
#[derive(Debug, Default)]
pub(crate) struct AppliedHasher {
    /// The index expected next; 0: unknown (just started, or after a snapshot install).
    next: u64,
    /// Whether the current window was seen from its first index.
    complete: bool,
    hash: u64,
    samples: VecDeque<(u64, u64)>,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fold(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

impl AppliedHasher {
    /// Folds one applied entry in; returns a new sample `(index, hash)` when it completes a
    /// window.
    pub(crate) fn entry(&mut self, e: &Entry) -> Option<(u64, u64)> {
        let index = e.index.0;
        if index % HASH_WINDOW_ENTRIES == 1 {
            self.complete = true;
            self.hash = FNV_OFFSET;
        } else if self.next != index {
            self.complete = false;
        }
        self.next = index + 1;
        if !self.complete {
            return None;
        }
        let mut h = fold(self.hash, &index.to_le_bytes());
        h = fold(h, &e.term.0.to_le_bytes());
        h = match &e.payload {
            EntryPayload::Noop => fold(h, &[0]),
            EntryPayload::Command(d) => fold(fold(h, &[1]), d),
            // A configuration (or a later kind of payload) by its storage encoding, which the
            // storage format pins: the same bytes in every release (a `Debug` rendering could
            // change between releases, and mixed releases compare samples).
            other => fold(fold(h, &[2]), &postcard::to_allocvec(other).unwrap_or_default()),
        };
        self.hash = h;
        if !index.is_multiple_of(HASH_WINDOW_ENTRIES) {
            return None;
        }
        let sample = (index, h & ((1u64 << HASH_BITS) - 1));
        if self.samples.len() == HASH_SAMPLES_MAX {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
        metrics::gauge!(names::APPLIED_HASH_INDEX).set(sample.0 as f64);
        metrics::gauge!(names::APPLIED_HASH_VALUE).set(sample.1 as f64);
        Some(sample)
    }

    /// A snapshot was installed: the entries before it were not seen here.
    pub(crate) fn reset(&mut self) {
        self.next = 0;
        self.complete = false;
    }

    /// The samples kept, oldest first.
    pub(crate) fn samples(&self) -> impl Iterator<Item = &(u64, u64)> {
        self.samples.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorate_log::{Data, LogIndex, Term};

    fn entry(index: u64, term: u64, data: &str) -> Entry {
        Entry { term: Term(term), index: LogIndex(index), payload: EntryPayload::Command(Data::from(data)) }
    }

    fn o(term: u64, commit: u64, applied: u64, last: u64, leader: bool) -> Observed {
        Observed { term, commit, applied, last_index: last, is_leader: leader }
    }

    #[test]
    fn monotonic_and_ordering_checks() {
        let mut inv = Invariants::new(3, 10);
        assert!(inv.check(o(3, 10, 9, 12, true)).is_empty());
        assert!(inv.check(o(4, 11, 11, 11, false)).is_empty());
        let v: Vec<_> = inv.check(o(2, 9, 12, 8, true)).into_iter().map(|v| v.invariant).collect();
        assert_eq!(
            v,
            [
                invariant::TERM_MONOTONIC,
                invariant::COMMIT_MONOTONIC,
                invariant::APPLIED_LE_COMMITTED,
                invariant::LEADER_HAS_COMMITTED
            ]
        );
        assert_eq!(inv.violations, 4);
        // The high-water marks stay: the same low values are flagged again.
        assert_eq!(inv.check(o(3, 10, 0, 10, false)).len(), 2);
    }

    #[test]
    fn replicas_agree_on_window_samples_and_a_divergence_shows() {
        let k = HASH_WINDOW_ENTRIES;
        let mut a = AppliedHasher::default();
        let mut b = AppliedHasher::default();
        let mut c = AppliedHasher::default();
        for i in 1..=3 * k {
            let data = format!("cmd-{i}");
            a.entry(&entry(i, 1, &data));
            // b restarts after index 1500: the second window is not sampled, the third is.
            if i == 1500 {
                b.reset();
            }
            b.entry(&entry(i, 1, &data));
            // c applied a different command at index 2100.
            let other = if i == 2100 { "evil".to_string() } else { data };
            c.entry(&entry(i, 1, &other));
        }
        let sa: Vec<_> = a.samples().copied().collect();
        let sb: Vec<_> = b.samples().copied().collect();
        let sc: Vec<_> = c.samples().copied().collect();
        assert_eq!(sa.iter().map(|s| s.0).collect::<Vec<_>>(), [k, 2 * k, 3 * k]);
        assert_eq!(sb, [sa[0], sa[2]], "the window with the restart is skipped");
        assert_eq!(&sc[..2], &sa[..2]);
        assert_ne!(sc[2], sa[2], "a different entry at 2100 changes the third sample");
    }

    #[test]
    fn configuration_entries_are_hashed_by_their_encoding() {
        use quorate_log::{Configuration, NodeId};
        let conf = |n: u64| {
            let ids = (1..=n).map(|i| NodeId::new(i).expect("non-zero"));
            EntryPayload::Config(Configuration::with_voters(ids).expect("voters"))
        };
        let window = |payload_at_7: EntryPayload| {
            let mut h = AppliedHasher::default();
            for i in 1..=HASH_WINDOW_ENTRIES {
                let payload = if i == 7 { payload_at_7.clone() } else { EntryPayload::Noop };
                h.entry(&Entry { term: Term(1), index: LogIndex(i), payload });
            }
            h.samples().copied().collect::<Vec<_>>()
        };
        let three = window(conf(3));
        assert_eq!(three.len(), 1);
        assert_eq!(three, window(conf(3)), "equal configurations, equal samples");
        assert_ne!(three, window(conf(5)), "a different configuration shows");
        assert_ne!(three, window(EntryPayload::Noop));
    }
}
