//! The admission decision.

use std::time::Duration;

use crate::bucket::{DebtBucket, TokenBucket};
use crate::budget::Budget;
use crate::class::{Class, Principal};
use crate::config::{
    ANSWER_CONTENTION_WINDOW_MS, ANSWER_DEBT_SECONDS_MAX, Config, ConfigError, SIGNAL_OVERSHOOT_PERCENT_MAX,
};
use crate::gradient::{GradientLimit, GradientSettings};
use crate::holds::{Hold, HoldLimits, HoldRefusal, Holds};
use crate::principals::PrincipalTable;
use crate::rng::SplitMix64;
use crate::signals::Signals;
use crate::time::{Nanos, duration_ns};

/// What the caller knows about a request before doing any work for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestInfo {
    /// Its priority class.
    pub class: Class,
    /// Who it is accounted to.
    pub principal: Principal,
    /// Its size (for writes, the bytes it will add to the log).
    pub bytes: u64,
    /// Whether the client says this is a retry of a request that failed or was refused.
    pub is_retry: bool,
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Reason {
    /// The proposal queue is at its threshold.
    #[error("proposal queue full")]
    QueueFull,
    /// Client work in flight is at the adaptive concurrency limit.
    #[error("concurrency limit reached")]
    ConcurrencyLimit,
    /// The principal has its fair share of the concurrency limit in flight already.
    #[error("{principal} is at its fair share")]
    FairShare {
        /// The principal.
        principal: Principal,
    },
    /// The principal is over its request rate.
    #[error("{principal} is rate limited")]
    RateLimited {
        /// The principal.
        principal: Principal,
    },
    /// The principal has spent its retry budget.
    #[error("{principal} has no retry budget left")]
    RetryBudget {
        /// The principal.
        principal: Principal,
    },
    /// Admitted requests hold `in_flight_bytes_max` already.
    #[error("too many bytes in flight")]
    InFlightBytes,
    /// The request is larger than `in_flight_bytes_max`: retrying will not help.
    #[error("request larger than in_flight_bytes_max")]
    RequestTooLarge,
    /// Uncommitted bytes in the core would pass their threshold.
    #[error("too many uncommitted bytes")]
    UncommittedBytes,
    /// The state machine is too far behind the commit index.
    #[error("apply lag too large")]
    ApplyLag,
    /// Free disk space is below the floor (clears itself above floor + hysteresis).
    #[error("disk space below the floor")]
    DiskSpace,
    /// Recent fsync latency is at its threshold.
    #[error("fsync latency too high")]
    FsyncLatency,
    /// The slowest peer has too many bytes in flight.
    #[error("peer replication backlog")]
    PeerBacklog,
    /// The principal holds `principal_requests_max` requests (admitted, answered or not, whose
    /// answers are not yet delivered).
    #[error("{principal} holds its most requests")]
    PrincipalRequests {
        /// The principal.
        principal: Principal,
    },
    /// The answer bytes the principal holds (or all principals hold) would pass
    /// `principal_response_bytes_max` (or `response_bytes_max`), or the principal is in debt
    /// for the answer bytes it was sent (`principal_answer_bytes_per_sec`).
    #[error("answer bytes of {principal} (or in total) at their budget or rate")]
    ResponseBytes {
        /// The principal.
        principal: Principal,
    },
}

impl Reason {
    /// A short stable name for metric labels (`shed requests by reason`).
    pub const fn label(&self) -> &'static str {
        match self {
            Reason::QueueFull => "queue_full",
            Reason::ConcurrencyLimit => "concurrency_limit",
            Reason::FairShare { .. } => "fair_share",
            Reason::RateLimited { .. } => "rate_limited",
            Reason::RetryBudget { .. } => "retry_budget",
            Reason::InFlightBytes => "in_flight_bytes",
            Reason::RequestTooLarge => "request_too_large",
            Reason::UncommittedBytes => "uncommitted_bytes",
            Reason::ApplyLag => "apply_lag",
            Reason::DiskSpace => "disk_space",
            Reason::FsyncLatency => "fsync_latency",
            Reason::PeerBacklog => "peer_backlog",
            Reason::PrincipalRequests { .. } => "principal_requests",
            Reason::ResponseBytes { .. } => "response_bytes",
        }
    }

    /// Whether the same request can succeed later. Only `RequestTooLarge` cannot.
    pub const fn is_retryable(&self) -> bool {
        !matches!(self, Reason::RequestTooLarge)
    }
}

/// A refusal, decided before any work is done: the client should wait at least `retry_after`
/// (already jittered) before trying again, and count the attempt as a retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("overloaded ({reason}); retry after {} ms", retry_after.as_millis())]
pub struct Overloaded {
    /// Why.
    pub reason: Reason,
    /// How long to wait, between `retry_after_ms_min` and `retry_after_ms_max`.
    pub retry_after: Duration,
}

/// How an admitted request ended, as reported to [`Admission::complete`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done. Its latency feeds the limiter, and it earns its principal some retry budget.
    Success,
    /// Done with an application error (not found, precondition failed). Its latency feeds
    /// the limiter; the work was done, so it is no sign of overload.
    Failed,
    /// Timed out, or shed further down (lost leadership, queue refused): a congestion signal.
    Dropped,
    /// Abandoned by the client before completion; no latency sample.
    Cancelled,
}

/// Proof of admission. Hand it back to [`Admission::complete`] exactly once, to the instance
/// that issued it; that releases its budgets. Not `Clone`: it cannot be released twice.
#[must_use = "a permit holds budgets until it is passed to Admission::complete"]
#[derive(Debug, PartialEq, Eq)]
pub struct Permit {
    class: Class,
    principal: Principal,
    bytes: u64,
    admitted_at: Nanos,
}

impl Permit {
    /// The request's class.
    pub fn class(&self) -> Class {
        self.class
    }

    /// The request's principal.
    pub fn principal(&self) -> Principal {
        self.principal
    }

    /// The bytes it holds of the in-flight byte budget (zero for `Consensus`).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// When it was admitted.
    pub fn admitted_at(&self) -> Nanos {
        self.admitted_at
    }
}

/// Counters, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests admitted, by [`Class::index`].
    pub admitted_count: [u64; 4],
    /// Requests refused, by [`Class::index`] (`Consensus` stays zero).
    pub refused_count: [u64; 4],
    /// Permits completed.
    pub completed_count: u64,
}

#[derive(Clone, Debug)]
struct PrincipalState {
    rate: TokenBucket,
    retry: TokenBucket,
    /// Answer bytes sent, charged after the fact.
    answers: DebtBucket,
}

impl PrincipalState {
    fn new(config: &Config, now: Nanos) -> PrincipalState {
        PrincipalState {
            rate: TokenBucket::new(config.principal_rate_per_sec, config.principal_burst_count, now),
            retry: TokenBucket::new(config.retry_floor_per_sec, config.retry_burst_count, now),
            answers: DebtBucket::new(
                config.principal_answer_bytes_per_sec,
                config.principal_answer_burst_bytes,
                config.principal_answer_bytes_per_sec * ANSWER_DEBT_SECONDS_MAX,
                now,
            ),
        }
    }
}

/// Admission control for one node: decides, before any work is done, whether a request is
/// admitted, and if not, why and when to retry. Pure: no clock, no I/O, no OS randomness.
///
/// Checks, in order, for client classes (`Consensus` is admitted before any of them):
/// 1. size: a request larger than the in-flight byte budget can never be admitted;
/// 2. node signals (disk, uncommitted bytes, proposal queue, peer backlog, fsync latency,
///    apply lag), class dependent; `Background` at `background_signal_percent` of each;
/// 3. the principal's retry budget (retries only), its token bucket, and its answer-byte debt
///    ([`Admission::charge_answer`]; only while another principal asks, see
///    [`ANSWER_CONTENTION_WINDOW_MS`]);
/// 4. the adaptive concurrency limit ([`GradientLimit`]) with fair share between principals
///    (work-conserving: a principal past its share is refused only when the limit, less the
///    light reserve, is full — never while capacity is free);
/// 5. the in-flight byte budget.
///
/// Nothing is taken unless every check passes.
#[derive(Debug)]
pub struct Admission {
    config: Config,
    limiter: GradientLimit,
    principals: PrincipalTable<PrincipalState>,
    in_flight_count: u64,
    in_flight_by_class_count: [u64; 4],
    in_flight_bytes: Budget,
    holds: Holds,
    signals: Signals,
    disk_refusing: bool,
    latency_ewma_ns: Option<u64>,
    /// The virtual queue of busy principals' requests refused for concurrency: when the last
    /// one was told to come back (see [`Admission::contended_wait`]).
    returns_at: Nanos,
    /// Who asked last, for the answer-byte rate's contention test.
    askers: RecentAskers,
    rng: SplitMix64,
    stats: Stats,
}

/// The two client principals that asked most recently, distinct, each with the time of its
/// latest request: the most recent asker other than any principal `p` is one of them (the
/// first, or the second when the first is `p`), so whether anyone but `p` asked since a
/// given time is known from two slots, whatever the number of principals.
#[derive(Clone, Copy, Debug, Default)]
struct RecentAskers([Option<(Principal, Nanos)>; 2]);

impl RecentAskers {
    fn asked(&mut self, principal: Principal, now: Nanos) {
        match self.0[0] {
            Some((first, _)) if first == principal => self.0[0] = Some((principal, now)),
            first => self.0 = [Some((principal, now)), first],
        }
    }

    /// Whether a principal other than `principal` asked at or after `since`.
    fn others_since(&self, principal: Principal, since: Nanos) -> bool {
        self.0.iter().flatten().any(|&(p, at)| p != principal && at >= since)
    }
}

impl Admission {
    /// Validates `config` and starts with healthy signals. `seed` drives the jitter of
    /// `retry_after`; the same seed and the same calls give the same answers.
    pub fn new(config: Config, seed: u64) -> Result<Admission, ConfigError> {
        config.validate()?;
        let limiter = GradientLimit::new(GradientSettings {
            concurrency_count_min: config.concurrency_count_min,
            concurrency_count_max: config.concurrency_count_max,
            concurrency_count_initial: config.concurrency_count_initial,
            latency_target: Duration::from_millis(config.latency_target_ms),
            backoff_percent: config.concurrency_backoff_percent,
        });
        Ok(Admission {
            principals: PrincipalTable::new(config.principals_tracked_max as usize),
            in_flight_bytes: Budget::new(config.in_flight_bytes_max),
            holds: Holds::new(HoldLimits {
                principal_count_max: config.principal_requests_max,
                principal_bytes_max: config.principal_response_bytes_max,
                total_count_max: config.requests_max,
                total_bytes_max: config.response_bytes_max,
            }),
            limiter,
            config,
            in_flight_count: 0,
            in_flight_by_class_count: [0; 4],
            signals: Signals::HEALTHY,
            disk_refusing: false,
            latency_ewma_ns: None,
            returns_at: Nanos::ZERO,
            askers: RecentAskers::default(),
            rng: SplitMix64::new(seed),
            stats: Stats::default(),
        })
    }

    /// Updates the node's signals. The disk-space refusal starts when free space drops below
    /// `disk_free_bytes_min` and stops by itself once it is back above
    /// `disk_free_bytes_min + disk_free_hysteresis_bytes`.
    pub fn set_signals(&mut self, signals: Signals) {
        let floor = self.config.disk_free_bytes_min;
        if self.disk_refusing {
            if signals.disk_free_bytes >= floor.saturating_add(self.config.disk_free_hysteresis_bytes) {
                self.disk_refusing = false;
            }
        } else if signals.disk_free_bytes < floor {
            self.disk_refusing = true;
        }
        self.signals = signals;
    }

    /// Decides on `request` at `now`. On `Ok`, do the work and later pass the permit to
    /// [`Admission::complete`]. On `Err`, do nothing and answer the client with the error.
    pub fn try_admit(&mut self, request: &RequestInfo, now: Nanos) -> Result<Permit, Overloaded> {
        if request.class == Class::Consensus {
            // Never refused, never counted against client budgets.
            self.stats.admitted_count[Class::Consensus.index()] += 1;
            return Ok(Permit { class: Class::Consensus, principal: request.principal, bytes: 0, admitted_at: now });
        }
        self.asked(request.principal, now);
        match self.check(request, now) {
            Ok(()) => Ok(self.admit(request, now)),
            Err((reason, base)) => Err(self.refuse(request.class, reason, base)),
        }
    }

    fn check(&mut self, request: &RequestInfo, now: Nanos) -> Result<(), (Reason, Duration)> {
        let config = &self.config;
        let ms_max = Duration::from_millis(config.retry_after_ms_max);
        if request.bytes > config.in_flight_bytes_max {
            return Err((Reason::RequestTooLarge, ms_max));
        }
        self.check_signals(request)?;

        let principal = request.principal;
        let contended = self.contended(principal, now);
        if let Some(state) = self.principals.get_mut(principal) {
            if request.is_retry {
                state.retry.check(1, now).map_err(|wait| (Reason::RetryBudget { principal }, wait))?;
            }
            state.rate.check(1, now).map_err(|wait| (Reason::RateLimited { principal }, wait))?;
            if contended {
                // Sent more answer bytes than its rate: refused until the debt is paid back.
                state.answers.check(now).map_err(|wait| (Reason::ResponseBytes { principal }, wait))?;
            } else {
                // Alone: no one waits for the bytes a refusal would save.
                state.answers.forgive(now);
            }
        } // An untracked principal starts with full buckets (burst ≥ 1 by validation).

        let limit = u64::from(self.limiter.limit_count());
        let ceiling = match request.class {
            Class::Background => (limit * u64::from(self.config.background_concurrency_percent) / 100).max(1),
            _ => limit,
        };
        let pins = u64::from(self.principals.pins_count(principal));
        if pins < u64::from(self.config.fair_share_count_min) {
            // Light principal: any free slot will do, the reserved ones included. Its hint is
            // one slot's turnover, not its place in the queue of the busy ones.
            if self.in_flight_count >= ceiling {
                return Err((Reason::ConcurrencyLimit, self.latency_estimate()));
            }
        } else {
            let active = self.principals.active_count() as u64;
            assert!(active >= 1, "this principal has work in flight");
            let share = (limit / active).max(u64::from(self.config.fair_share_count_min));
            // Work-conserving: every slot but the light reserve is for whoever asks, so a
            // principal alone (or the only busy one) may use all of them; a busy principal is
            // refused only once they are all taken — for fair share if it holds its share and
            // others hold work too, else for the limit.
            let full = self.in_flight_count + u64::from(self.config.light_reserve_count) >= ceiling;
            if full {
                let wait = self.contended_wait(now);
                let reason = if pins >= share && active > 1 {
                    Reason::FairShare { principal }
                } else {
                    Reason::ConcurrencyLimit
                };
                return Err((reason, wait));
            }
        }
        if request.bytes > self.in_flight_bytes.available() {
            return Err((Reason::InFlightBytes, self.latency_estimate()));
        }
        Ok(())
    }

    fn check_signals(&self, request: &RequestInfo) -> Result<(), (Reason, Duration)> {
        let config = &self.config;
        let signals = &self.signals;
        let percent = match request.class {
            Class::Background => u64::from(config.background_signal_percent),
            _ => 100,
        };
        let scaled = |threshold: u64| (threshold.saturating_mul(percent) / 100).max(1);
        let over = |reason: Reason, value: u64, threshold: u64| {
            let overshoot_percent = (u128::from(value) * 100 / u128::from(threshold))
                .clamp(100, u128::from(SIGNAL_OVERSHOOT_PERCENT_MAX)) as u64;
            Err((reason, Duration::from_millis(config.signal_retry_after_ms * overshoot_percent / 100)))
        };
        let writes = matches!(request.class, Class::ClientWrite | Class::Background);
        if writes {
            let floor = config.disk_free_bytes_min.saturating_mul(100) / percent;
            if self.disk_refusing || signals.disk_free_bytes.saturating_sub(request.bytes) < floor {
                return Err((Reason::DiskSpace, Duration::from_millis(config.retry_after_ms_max)));
            }
            let threshold = scaled(config.uncommitted_bytes_max);
            let uncommitted = signals.uncommitted_bytes.saturating_add(request.bytes);
            if uncommitted > threshold {
                return over(Reason::UncommittedBytes, uncommitted, threshold);
            }
            let threshold = scaled(config.proposal_queue_count_max);
            if signals.proposal_queue_count >= threshold {
                return over(Reason::QueueFull, signals.proposal_queue_count + 1, threshold);
            }
            let threshold = scaled(config.peer_in_flight_bytes_max);
            if signals.peer_in_flight_bytes_max >= threshold {
                return over(Reason::PeerBacklog, signals.peer_in_flight_bytes_max, threshold);
            }
            let threshold = scaled(config.fsync_latency_ms_max.saturating_mul(1_000_000));
            let fsync_ns = duration_ns(signals.fsync_latency);
            if fsync_ns >= threshold {
                return over(Reason::FsyncLatency, fsync_ns, threshold);
            }
        }
        let threshold = scaled(config.apply_lag_entries_max);
        if signals.apply_lag_entries >= threshold {
            return over(Reason::ApplyLag, signals.apply_lag_entries, threshold);
        }
        Ok(())
    }

    fn admit(&mut self, request: &RequestInfo, now: Nanos) -> Permit {
        let config = &self.config;
        let state = self
            .principals
            .get_or_insert_with(request.principal, now, || PrincipalState::new(config, now))
            // Pinned principals ≤ client requests in flight ≤ concurrency_count_max
            // < principals_tracked_max (validated), so an idle principal can be evicted.
            .expect("an idle principal is always evictable");
        if request.is_retry {
            state.retry.take(1, now).expect("checked before admitting");
        }
        state.rate.take(1, now).expect("checked before admitting");
        self.principals.pin(request.principal);
        self.in_flight_bytes.try_acquire(request.bytes).expect("checked before admitting");
        self.in_flight_count += 1;
        self.in_flight_by_class_count[request.class.index()] += 1;
        assert!(self.in_flight_count <= u64::from(self.config.concurrency_count_max));
        self.stats.admitted_count[request.class.index()] += 1;
        Permit { class: request.class, principal: request.principal, bytes: request.bytes, admitted_at: now }
    }

    fn refuse(&mut self, class: Class, reason: Reason, base: Duration) -> Overloaded {
        self.stats.refused_count[class.index()] += 1;
        let ms_min = self.config.retry_after_ms_min;
        let ms_max = self.config.retry_after_ms_max;
        let base_ms = u64::try_from(base.as_millis()).unwrap_or(u64::MAX).clamp(ms_min, ms_max);
        // Spread upwards, so that the hint stays a lower bound (a bucket really is empty until
        // then) and clients refused together do not come back together. Near the maximum the
        // window slides down instead of collapsing onto `retry_after_ms_max`.
        let spread_ms = base_ms * u64::from(self.config.retry_jitter_percent) / 100;
        let high_ms = (base_ms + spread_ms).min(ms_max);
        let low_ms = high_ms.saturating_sub(spread_ms).max(ms_min);
        let jittered_ms = low_ms + self.rng.below(high_ms - low_ms + 1);
        assert!(jittered_ms >= ms_min && jittered_ms <= ms_max);
        Overloaded { reason, retry_after: Duration::from_millis(jittered_ms) }
    }

    /// The hint of a busy principal's concurrency or fair-share refusal: its place in a virtual
    /// queue served at the node's throughput. One slot frees every `latency / limit` (Little's
    /// law); each refusal books the next such turn after the last one booked, so that refused
    /// clients come back spread out at about the rate slots free up — enough to keep the limit
    /// full, without a storm of returns that would all be refused again. The queue looks at
    /// most `retry_after_ms_max` ahead (a client that ignores its hints cannot push everyone
    /// else's out indefinitely), and never less than the recent completion latency (by then
    /// every slot has turned over once).
    fn contended_wait(&mut self, now: Nanos) -> Duration {
        let latency_ns = duration_ns(self.latency_estimate());
        let turn_ns = (latency_ns / u64::from(self.limiter.limit_count())).max(1);
        let horizon = now.saturating_add(Duration::from_millis(self.config.retry_after_ms_max));
        self.returns_at = self.returns_at.max(now).saturating_add(Duration::from_nanos(turn_ns)).min(horizon);
        let queued = self.returns_at.saturating_since(now);
        queued.max(Duration::from_nanos(latency_ns))
    }

    /// How long a slot is likely to take to free up: the recent completion latency.
    fn latency_estimate(&self) -> Duration {
        Duration::from_nanos(self.latency_ewma_ns.unwrap_or(self.config.latency_target_ms * 1_000_000))
    }

    /// Releases `permit`'s budgets at `now` and feeds its outcome to the concurrency limiter.
    ///
    /// # Panics
    /// If `permit` was not issued by this instance or is released twice (the counters would
    /// go negative).
    pub fn complete(&mut self, permit: Permit, outcome: Outcome, now: Nanos) {
        self.stats.completed_count += 1;
        if permit.class == Class::Consensus {
            return;
        }
        let in_flight_before = self.in_flight_count;
        assert!(in_flight_before > 0 && self.in_flight_by_class_count[permit.class.index()] > 0, "foreign permit");
        self.in_flight_count -= 1;
        self.in_flight_by_class_count[permit.class.index()] -= 1;
        self.in_flight_bytes.release(permit.bytes);
        self.principals.unpin(permit.principal, now);
        let latency = now.saturating_since(permit.admitted_at);
        match outcome {
            Outcome::Success | Outcome::Failed => {
                if outcome == Outcome::Success {
                    let percent = u64::from(self.config.retry_ratio_percent);
                    let state = self.principals.get_mut(permit.principal).expect("evicted only when idle");
                    state.retry.deposit_percent(percent, now);
                }
                self.limiter.on_sample(latency, in_flight_before, now);
                let sample = duration_ns(latency);
                let ewma = self.latency_ewma_ns.map_or(sample, |old| old - old / 8 + sample / 8);
                self.latency_ewma_ns = Some(ewma);
            }
            Outcome::Dropped => self.limiter.on_drop(now),
            Outcome::Cancelled => {}
        }
    }

    /// Charges `bytes` of an answer sent (or about to be) to `principal` at `now`, against its
    /// answer-byte rate (`principal_answer_bytes_per_sec`, after a burst of
    /// `principal_answer_burst_bytes`). The charge is always taken, into debt if need be; while
    /// the principal is in debt its requests are refused with [`Reason::ResponseBytes`] and a
    /// retry hint of the time the debt takes to pay back. Call it before completing the
    /// request's permit (a principal with work in flight is never forgotten); the charge of a
    /// principal that is not tracked is made on a fresh state (or dropped if every tracked
    /// principal has work in flight, which validation rules out). While the principal is
    /// alone (see [`ANSWER_CONTENTION_WINDOW_MS`]) the charge goes down to zero at most.
    /// Returns the bytes taken: settle an estimate charged in advance against that, not
    /// against the estimate.
    pub fn charge_answer(&mut self, principal: Principal, bytes: u64, now: Nanos) -> u64 {
        let contended = self.contended(principal, now);
        let config = &self.config;
        match self.principals.get_or_insert_with(principal, now, || PrincipalState::new(config, now)) {
            Ok(state) if contended => state.answers.charge(bytes, now),
            Ok(state) => state.answers.charge_without_debt(bytes, now),
            Err(_) => 0,
        }
    }

    /// Notes that `principal` asked the node for something at `now`, for the answer-byte
    /// rate's contention test ([`ANSWER_CONTENTION_WINDOW_MS`]). [`Admission::try_admit`]
    /// notes every client request itself; call this for a request refused before it (by
    /// [`Admission::try_hold`], say), so that a principal shut out by another's held answers
    /// still counts as asking.
    pub fn asked(&mut self, principal: Principal, now: Nanos) {
        self.askers.asked(principal, now);
    }

    /// Whether `principal` shares the node: another client principal holds a request (in
    /// flight, or its answer being delivered), or asked within [`ANSWER_CONTENTION_WINDOW_MS`]
    /// plus `retry_after_ms_max` before `now` (a client told to come back later still waits
    /// for the node). The answer-byte rate holds only then (work-conserving, as fair share is).
    fn contended(&self, principal: Principal, now: Nanos) -> bool {
        if self.holds.total_count() > self.holds.principal_count(principal) {
            return true;
        }
        let window_ms = ANSWER_CONTENTION_WINDOW_MS.saturating_add(self.config.retry_after_ms_max);
        let since = Nanos(now.0.saturating_sub(window_ms.saturating_mul(1_000_000)));
        self.askers.others_since(principal, since)
    }

    /// Gives back to `principal` `bytes` of an answer charged in advance
    /// ([`Admission::charge_answer`] of an estimate, at admission) that the answer did not
    /// take, or that was never sent (the request was cancelled), up to its burst. Call it, as
    /// the charge, before completing the request's permit.
    pub fn refund_answer(&mut self, principal: Principal, bytes: u64, now: Nanos) {
        if let Some(state) = self.principals.get_mut(principal) {
            state.answers.refund(bytes, now);
        }
    }

    /// The answer bytes `principal` may still be sent at `now` before it is in debt (negative:
    /// its debt); `None` if it is not tracked (it would start with the full burst).
    pub fn answer_bytes_level(&mut self, principal: Principal, now: Nanos) -> Option<i64> {
        self.principals.get_mut(principal).map(|state| state.answers.level(now))
    }

    /// Takes a [`Hold`] for a `class` request of `principal`: one of its request slots and
    /// `bytes` of answer (the most its answer can take), kept until [`Admission::release_hold`]
    /// — after the answer has been delivered, not merely computed, so that a client that does
    /// not read its answers runs out of its own slots and bytes, not everyone's. Take it before
    /// [`Admission::try_admit`] (and release it if that refuses). Refused with
    /// [`Reason::PrincipalRequests`], [`Reason::ResponseBytes`] or [`Reason::QueueFull`] (all
    /// principals' requests) and a retry hint; nothing is taken then.
    pub fn try_hold(&mut self, class: Class, principal: Principal, bytes: u64) -> Result<Hold, Overloaded> {
        match self.holds.try_hold(principal, bytes) {
            Ok(hold) => Ok(hold),
            Err(refusal) => {
                let reason = match refusal {
                    HoldRefusal::PrincipalCount => Reason::PrincipalRequests { principal },
                    HoldRefusal::PrincipalBytes | HoldRefusal::TotalBytes => Reason::ResponseBytes { principal },
                    HoldRefusal::TotalCount => Reason::QueueFull,
                };
                let base = self.latency_estimate();
                Err(self.refuse(class, reason, base))
            }
        }
    }

    /// Sets the bytes `hold` keeps to its answer's real size, once known.
    pub fn resize_hold(&mut self, hold: &mut Hold, bytes: u64) {
        self.holds.resize(hold, bytes);
    }

    /// Gives back `hold`'s slot and bytes (its answer was delivered, or given up).
    ///
    /// # Panics
    /// If `hold` was not issued by this instance.
    pub fn release_hold(&mut self, hold: Hold) {
        self.holds.release(hold);
    }

    /// The requests and answer bytes held (see [`Admission::try_hold`]).
    pub fn holds(&self) -> &Holds {
        &self.holds
    }

    /// The current adaptive concurrency limit for client work.
    pub fn concurrency_limit_count(&self) -> u32 {
        self.limiter.limit_count()
    }

    /// Client requests admitted and not yet completed.
    pub fn in_flight_count(&self) -> u64 {
        self.in_flight_count
    }

    /// Client requests of `class` admitted and not yet completed.
    pub fn in_flight_class_count(&self, class: Class) -> u64 {
        self.in_flight_by_class_count[class.index()]
    }

    /// Bytes of admitted client requests not yet completed.
    pub fn in_flight_bytes(&self) -> u64 {
        self.in_flight_bytes.used()
    }

    /// Whether writes are being refused for disk space (until free space passes the floor
    /// plus the hysteresis).
    pub fn is_refusing_for_disk(&self) -> bool {
        self.disk_refusing
    }

    /// The signals last set.
    pub fn signals(&self) -> &Signals {
        &self.signals
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Counters since creation.
    pub fn stats(&self) -> Stats {
        self.stats
    }
}
