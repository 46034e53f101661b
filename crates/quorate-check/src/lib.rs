//! # quorate-check
//!
//! Evidence that Quorate keeps its promises:
//!
//! * [`sim`]: a deterministic simulator that drives several `quorate-core` nodes in one
//!   thread from one seed — message delay, loss, duplication and reordering, symmetric and
//!   one-way partitions, crashes that lose unpersisted writes, failed fsyncs, clock drift —
//!   with clients issuing reads and writes. Any failing seed replays exactly.
//! * [`invariants`]: checkers for election safety, log matching, leader completeness, state
//!   machine safety and durability, fed on every simulated step.
//! * [`linearizability`]: a Wing–Gong/Lowe checker for key-value histories, partitioned by
//!   key, with operations of unknown outcome; [`history`] is the JSON-lines format it reads,
//!   shared with the real-process fault tests.
//! * [`kv`]: the simulator's key-value state machine.
//!
//! This crate never depends on an async runtime, a network stack or a disk engine.
//!
//! ```
//! let report = quorate_check::sim::run_seed(7, 5_000, false);
//! assert!(report.violations.is_empty(), "{:?}", report.violations);
//! ```

#![forbid(unsafe_code)]

pub mod history;
pub mod invariants;
pub mod kv;
pub mod linearizability;
pub mod model;
pub mod sim;
