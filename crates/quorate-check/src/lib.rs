//! # quorate-check
//!
//! Evidence that Quorate keeps its promises:
//!
//! * [`sim`]: a deterministic simulator that drives several `quorate-core` nodes in one
//!   thread from one seed — cluster shapes down to one voter, membership changes, message
//!   delay, loss, duplication and reordering, partitions, a group-committing disk with late
//!   completions, slow fsyncs and crashes mid-write, process pauses, clock drift and jumps —
//!   with clients issuing reads and writes. Any failing seed replays exactly.
//! * [`model`]: exhaustive model checking of the same cores at small bounds.
//! * [`invariants`]: checkers for election safety, log matching, leader completeness, state
//!   machine safety, durability, read freshness and the check-quorum vote promise, fed on
//!   every simulated step.
//! * [`linearizability`]: a Wing–Gong/Lowe checker for key-value histories, partitioned by
//!   key, with operations of unknown outcome; [`history`] is the JSON-lines format it reads,
//!   shared with the real-process fault tests.
//! * [`txn`]: transactional (list-append) histories and a checker that searches their
//!   dependency graph (ww, wr, rw, real time) for cycles and names the anomaly (G0, G1a, G1b,
//!   G1c, G-single, G2 and their real-time variants), after Jepsen's Elle.
//! * [`watch`]: a checker for watch streams against the history of writes: no gap, no
//!   duplicate, revision order across reconnects, and every acknowledged write at its revision.
//! * [`lease`]: a checker for leases recorded under faults: no leased key outlives its lease's
//!   documented expiry bound (widened, explicitly, for leader changes and stalls), none is
//!   deleted while an acknowledged keep-alive's TTL still runs, none is seen after a revoke.
//! * [`kv`]: the simulator's key-value state machine.
//! * `holes` (cargo feature `reintroduce-holes` only): issue 16's protocol holes switched
//!   back on in the simulated cores, and the seeds and settings that catch each.
//!
//! This crate never depends on an async runtime, a network stack or a disk engine.
//!
//! ```
//! use quorate_check::invariants::Violation;
//! use quorate_check::sim::{InjectedBug, find_violation, run_seed};
//!
//! // One seed, replayable from its number.
//! let report = run_seed(7, 5_000, false);
//! assert_eq!(report.seed, 7);
//! // A driver that acknowledges appends before they are durable is caught within a few seeds.
//! let found = find_violation(0..10, |c| {
//!     c.bug = Some(InjectedBug::AckBeforePersist);
//!     c.reconfig = false;
//! });
//! assert!(matches!(found, Some((_, Violation::Durability { .. }))), "{found:?}");
//! ```

#![forbid(unsafe_code)]

pub mod history;
#[cfg(feature = "reintroduce-holes")]
pub mod holes;
pub mod invariants;
pub mod kv;
pub mod lease;
pub mod linearizability;
pub mod model;
pub mod sim;
pub mod txn;
pub mod watch;
