//! # quorate-admission
//!
//! Admission control and backpressure for a replicated log (or any server): decide, before
//! doing any work, whether a request is admitted; if not, say why and when to come back.
//! Overload then costs a refusal, not a timeout, a queue that grows without bound, or a
//! missed heartbeat and an election.
//!
//! The crate is sans-IO: no clock reads (every call takes `now` as [`Nanos`]), no threads, no
//! async runtime, no OS randomness (retry hints are jittered from a seed). It depends only on
//! `thiserror`.
//!
//! * [`Admission`] — the decision: [`Admission::try_admit`] returns a [`Permit`] or an
//!   [`Overloaded`] error with a [`Reason`] and a `retry_after`; [`Admission::complete`]
//!   releases the permit and feeds the adaptive limit. [`Class::Consensus`] is always admitted.
//! * [`Signals`] — what the node measures (uncommitted bytes, apply lag, proposal queue, peer
//!   backlog, free disk, fsync latency), each compared with a [`Config`] threshold.
//! * Building blocks, usable alone: [`BoundedQueue`] and [`ClassQueues`] (explicit refusal that
//!   hands the item back), [`Budget`], [`TokenBucket`], [`DebtBucket`] (a rate charged after
//!   the fact: the answer bytes a principal is sent, [`Admission::charge_answer`]), [`PrincipalTable`] (bounded, oldest
//!   idle evicted), [`GradientLimit`] (the adaptive concurrency limit `Admission` uses) and
//!   [`AimdLimit`] (a simpler alternative), and [`Holds`] (requests and answer bytes kept per
//!   principal until the answer is delivered; [`Admission::try_hold`]), and [`FairQueue`]
//!   (requests waiting to be served, one lane per principal, served by deficit round robin
//!   charged by cost: a deep backlog of one principal delays another's request by one turn).
//!
//! ```
//! use std::time::Duration;
//! use quorate_admission::{Admission, Class, Config, Nanos, Outcome, Principal, Reason, RequestInfo, Signals};
//!
//! let mut admission = Admission::new(Config::default(), 42)?;
//! let write = RequestInfo { class: Class::ClientWrite, principal: Principal(7), bytes: 512, is_retry: false };
//! let now = Nanos::from_millis(1);
//!
//! let permit = admission.try_admit(&write, now).expect("an idle node admits");
//! // ... propose, wait for commit and apply ...
//! admission.complete(permit, Outcome::Success, now + Duration::from_millis(3));
//!
//! // The disk runs low: writes are refused before they are proposed; reads still pass.
//! admission.set_signals(Signals { disk_free_bytes: 1 << 20, ..Signals::HEALTHY });
//! let refusal = admission.try_admit(&write, now).unwrap_err();
//! assert_eq!(refusal.reason, Reason::DiskSpace);
//! assert!(refusal.retry_after >= Duration::from_millis(admission.config().retry_after_ms_min));
//! let read = RequestInfo { class: Class::ClientRead, ..write };
//! let permit = admission.try_admit(&read, now)?;
//! admission.complete(permit, Outcome::Success, now);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The integration tests include a small deterministic model of goodput under overload (a
//! fake server with fixed capacity). It shows the shape of the behaviour; it is not a
//! measurement of a real node.

#![forbid(unsafe_code)]

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

mod admission;
mod bucket;
mod budget;
mod class;
mod config;
mod fair;
mod gradient;
mod holds;
mod limit;
mod principals;
mod queue;
mod rng;
mod signals;
mod time;

pub use admission::{Admission, Outcome, Overloaded, Permit, Reason, RequestInfo, Stats};
pub use bucket::{BUCKET_BURST_COUNT_MAX, BUCKET_RATE_PER_SEC_MAX, DEBT_BUCKET_UNITS_MAX, DebtBucket, TokenBucket};
pub use budget::{Budget, Exhausted};
pub use class::{Class, Principal};
pub use config::{
    ANSWER_CONTENTION_WINDOW_MS, ANSWER_DEBT_SECONDS_MAX, Config, ConfigError, LATENCY_MS_CEILING,
    RETRY_AFTER_MS_CEILING, SIGNAL_OVERSHOOT_PERCENT_MAX,
};
pub use fair::{FAIR_PRINCIPALS_CEILING, FAIR_QUANTUM_COST_CEILING, FAIR_QUEUED_COUNT_CEILING, FairLimits, FairQueue};
pub use gradient::{GRADIENT_WINDOW_SAMPLES_MIN, GradientLimit, GradientSettings};
pub use holds::{Hold, HoldLimits, HoldRefusal, Holds};
pub use limit::{AimdLimit, AimdSettings, CONCURRENCY_COUNT_CEILING};
pub use principals::{PRINCIPALS_TRACKED_CEILING, PrincipalTable, TableFull};
pub use queue::{BoundedQueue, ClassQueues, QueueRefusal, Refused};
pub use signals::Signals;
pub use time::{NANOS_PER_SEC, Nanos};
