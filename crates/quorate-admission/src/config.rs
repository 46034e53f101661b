//! Configuration: every limit a named field with its unit last.

use crate::bucket::{BUCKET_BURST_COUNT_MAX, BUCKET_RATE_PER_SEC_MAX, DEBT_BUCKET_UNITS_MAX};
use crate::limit::CONCURRENCY_COUNT_CEILING;
use crate::principals::PRINCIPALS_TRACKED_CEILING;

/// Largest `retry_after_ms_max` accepted: one hour.
pub const RETRY_AFTER_MS_CEILING: u64 = 3_600_000;
/// Largest `latency_target_ms` and `fsync_latency_ms_max` accepted: one minute.
pub const LATENCY_MS_CEILING: u64 = 60_000;
/// The answer-byte debt of a principal stops growing at this many seconds of
/// `principal_answer_bytes_per_sec`: one burst of huge answers shuts its principal out for at
/// most this long.
pub const ANSWER_DEBT_SECONDS_MAX: u64 = 30;
/// The answer-byte rate is work-conserving: a principal is held to
/// `principal_answer_bytes_per_sec` only while another client principal holds a request, or
/// has asked the node for something within this many milliseconds plus `retry_after_ms_max`
/// (the longest hint a refused client waits); alone, its answers are not limited by rate
/// (the held-bytes budgets still bound them) and it owes no debt.
pub const ANSWER_CONTENTION_WINDOW_MS: u64 = 1_000;
/// A signal refusal's retry hint grows with how far the signal is past its threshold, up to
/// this factor (in percent of `signal_retry_after_ms`).
pub const SIGNAL_OVERSHOOT_PERCENT_MAX: u64 = 800;

const _: () = assert!(CONCURRENCY_COUNT_CEILING as usize <= PRINCIPALS_TRACKED_CEILING);
// The answer debt of the largest rate fits a debt bucket.
const _: () = assert!(BUCKET_RATE_PER_SEC_MAX * ANSWER_DEBT_SECONDS_MAX <= DEBT_BUCKET_UNITS_MAX);
const _: () = assert!(BUCKET_BURST_COUNT_MAX <= DEBT_BUCKET_UNITS_MAX);

/// The settings of an [`Admission`](crate::Admission). Start from [`Config::default`] and
/// change what you need; [`Config::validate`] (also run by `Admission::new`) says what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    // --- adaptive concurrency ---
    /// Lowest concurrency limit for client work.
    pub concurrency_count_min: u32,
    /// Highest concurrency limit for client work.
    pub concurrency_count_max: u32,
    /// Concurrency limit at start.
    pub concurrency_count_initial: u32,
    /// A window of client completions whose average latency is above this lowers the
    /// concurrency limit (by `target / average`, at most halving it per window).
    pub latency_target_ms: u64,
    /// After a window with a dropped request (timed out downstream) the concurrency limit is
    /// multiplied by this, in percent (1..=99).
    pub concurrency_backoff_percent: u8,
    /// `Background` work is admitted only while total client work in flight is below this
    /// percentage of the concurrency limit (1..=100).
    pub background_concurrency_percent: u8,

    // --- fairness ---
    /// A principal with fewer requests than this in flight is "light": it is admitted whenever
    /// the concurrency limit has room. Also the smallest fair share.
    pub fair_share_count_min: u32,
    /// Slots of the concurrency limit that principals at or above `fair_share_count_min`
    /// in flight cannot take: they stay free for light principals.
    pub light_reserve_count: u32,

    // --- budgets ---
    /// Bytes of admitted client requests in flight at once. A request larger than this is
    /// refused with `RequestTooLarge`.
    pub in_flight_bytes_max: u64,

    // --- holds: requests and answer bytes kept until the answer is delivered ---
    /// Requests one principal may hold: admitted and not yet answered, or answered and not yet
    /// delivered (a client that does not read its answers keeps them).
    pub principal_requests_max: u64,
    /// Answer bytes one principal may hold: the most each of its unanswered requests can be
    /// answered with, plus the answers being delivered to it.
    pub principal_response_bytes_max: u64,
    /// Requests held by all principals together (refused beyond with `QueueFull`).
    pub requests_max: u64,
    /// Answer bytes held by all principals together.
    pub response_bytes_max: u64,
    /// Answer bytes one principal is sent per second, sustained: every answer's bytes are
    /// charged to its principal once it is known, and a principal in debt is refused
    /// (`ResponseBytes`) for as long as the debt takes to pay back. The debt stops growing at
    /// [`ANSWER_DEBT_SECONDS_MAX`] seconds of this rate. Work-conserving: it holds only while
    /// another principal asks (see [`ANSWER_CONTENTION_WINDOW_MS`]).
    pub principal_answer_bytes_per_sec: u64,
    /// Answer bytes a principal may be sent at once after a quiet spell.
    pub principal_answer_burst_bytes: u64,

    // --- per principal ---
    /// Principals whose rate and retry state is remembered (oldest idle evicted beyond).
    /// Must exceed `concurrency_count_max` so that an idle principal can always be evicted.
    pub principals_tracked_max: u32,
    /// Sustained requests per second per principal.
    pub principal_rate_per_sec: u64,
    /// Requests a principal may send at once after being idle.
    pub principal_burst_count: u64,
    /// Each success earns its principal this percentage of one retry.
    pub retry_ratio_percent: u8,
    /// Retries a principal earns per second regardless of successes (the floor).
    pub retry_floor_per_sec: u64,
    /// Retries a principal may bank.
    pub retry_burst_count: u64,

    // --- signals from the node: thresholds for client writes ---
    /// Uncommitted bytes in the consensus core (including this request) above which writes
    /// are refused.
    pub uncommitted_bytes_max: u64,
    /// Committed but not yet applied entries above which client work is refused.
    pub apply_lag_entries_max: u64,
    /// Proposals queued at or above which writes are refused (`QueueFull`).
    pub proposal_queue_count_max: u64,
    /// Bytes in flight to the slowest peer at or above which writes are refused.
    pub peer_in_flight_bytes_max: u64,
    /// Free disk bytes (after this request) below which writes are refused.
    pub disk_free_bytes_min: u64,
    /// Once refusing for disk space, writes resume only when free space is back above
    /// `disk_free_bytes_min + disk_free_hysteresis_bytes`. No manual disarm.
    pub disk_free_hysteresis_bytes: u64,
    /// Recent fsync latency (p99 or EWMA, as the node measures it) at or above which writes are
    /// refused.
    pub fsync_latency_ms_max: u64,
    /// `Background` work is refused at this percentage of every signal threshold (1..=100).
    pub background_signal_percent: u8,

    // --- retry hints ---
    /// Smallest `retry_after` ever returned.
    pub retry_after_ms_min: u64,
    /// Largest `retry_after` ever returned.
    pub retry_after_ms_max: u64,
    /// Base `retry_after` for a signal refusal (scaled up by how far past the threshold).
    pub signal_retry_after_ms: u64,
    /// `retry_after` is spread upwards by up to this percentage, from the seeded generator.
    pub retry_jitter_percent: u8,
}

impl Default for Config {
    fn default() -> Config {
        const MIB: u64 = 1 << 20;
        Config {
            concurrency_count_min: 8,
            concurrency_count_max: 1024,
            concurrency_count_initial: 64,
            latency_target_ms: 50,
            concurrency_backoff_percent: 90,
            background_concurrency_percent: 25,
            fair_share_count_min: 2,
            light_reserve_count: 2,
            in_flight_bytes_max: 64 * MIB,
            principal_requests_max: 1024,
            principal_response_bytes_max: 128 * MIB,
            requests_max: 10_000,
            response_bytes_max: 1024 * MIB,
            principal_answer_bytes_per_sec: 4 * MIB,
            principal_answer_burst_bytes: 8 * MIB,
            principals_tracked_max: 4096,
            principal_rate_per_sec: 1000,
            principal_burst_count: 200,
            retry_ratio_percent: 10,
            retry_floor_per_sec: 1,
            retry_burst_count: 10,
            uncommitted_bytes_max: 64 * MIB,
            apply_lag_entries_max: 10_000,
            proposal_queue_count_max: 1024,
            peer_in_flight_bytes_max: 32 * MIB,
            disk_free_bytes_min: 1024 * MIB,
            disk_free_hysteresis_bytes: 256 * MIB,
            fsync_latency_ms_max: 100,
            background_signal_percent: 50,
            retry_after_ms_min: 10,
            retry_after_ms_max: 10_000,
            signal_retry_after_ms: 100,
            retry_jitter_percent: 50,
        }
    }
}

/// What is wrong with a [`Config`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A field that must be positive is zero.
    #[error("{field} must be greater than zero")]
    Zero {
        /// The field.
        field: &'static str,
    },
    /// A field exceeds the crate's hard ceiling for it.
    #[error("{field} = {value} exceeds the ceiling {ceiling}")]
    AboveCeiling {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The ceiling.
        ceiling: u64,
    },
    /// A percentage is out of its range.
    #[error("{field} = {value}% must be within {min}..={max}")]
    PercentOutOfRange {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u8,
        /// Smallest allowed.
        min: u8,
        /// Largest allowed.
        max: u8,
    },
    /// Two fields are in the wrong order.
    #[error("{lower} ({lower_value}) must not exceed {upper} ({upper_value})")]
    Order {
        /// The field that must be smaller or equal.
        lower: &'static str,
        /// Its value.
        lower_value: u64,
        /// The field that must be larger or equal.
        upper: &'static str,
        /// Its value.
        upper_value: u64,
    },
    /// Too few tracked principals for the concurrency limit.
    #[error(
        "principals_tracked_max ({principals}) must exceed concurrency_count_max ({concurrency}) so that an idle \
         principal can always be evicted"
    )]
    PrincipalsTrackedTooFew {
        /// `principals_tracked_max`.
        principals: u32,
        /// `concurrency_count_max`.
        concurrency: u32,
    },
    /// The light reserve would leave no room for busy principals at the minimum limit.
    #[error(
        "light_reserve_count ({reserve}) must be below concurrency_count_min ({concurrency_min}), or busy principals \
         could never be admitted"
    )]
    ReserveTooLarge {
        /// `light_reserve_count`.
        reserve: u32,
        /// `concurrency_count_min`.
        concurrency_min: u32,
    },
}

impl Config {
    /// Checks every field and every relation between fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive: [(&'static str, u64); 18] = [
            ("concurrency_count_min", self.concurrency_count_min.into()),
            ("latency_target_ms", self.latency_target_ms),
            ("fair_share_count_min", self.fair_share_count_min.into()),
            ("in_flight_bytes_max", self.in_flight_bytes_max),
            ("principal_requests_max", self.principal_requests_max),
            ("principal_response_bytes_max", self.principal_response_bytes_max),
            ("requests_max", self.requests_max),
            ("response_bytes_max", self.response_bytes_max),
            ("principal_answer_bytes_per_sec", self.principal_answer_bytes_per_sec),
            ("principal_answer_burst_bytes", self.principal_answer_burst_bytes),
            ("principal_rate_per_sec", self.principal_rate_per_sec),
            ("principal_burst_count", self.principal_burst_count),
            ("retry_burst_count", self.retry_burst_count),
            ("uncommitted_bytes_max", self.uncommitted_bytes_max),
            ("apply_lag_entries_max", self.apply_lag_entries_max),
            ("proposal_queue_count_max", self.proposal_queue_count_max),
            ("peer_in_flight_bytes_max", self.peer_in_flight_bytes_max),
            ("fsync_latency_ms_max", self.fsync_latency_ms_max),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(ConfigError::Zero { field });
            }
        }
        let ceilings: [(&'static str, u64, u64); 11] = [
            ("concurrency_count_max", self.concurrency_count_max.into(), CONCURRENCY_COUNT_CEILING.into()),
            ("principals_tracked_max", self.principals_tracked_max.into(), PRINCIPALS_TRACKED_CEILING as u64),
            ("principal_rate_per_sec", self.principal_rate_per_sec, BUCKET_RATE_PER_SEC_MAX),
            ("principal_answer_bytes_per_sec", self.principal_answer_bytes_per_sec, BUCKET_RATE_PER_SEC_MAX),
            ("principal_answer_burst_bytes", self.principal_answer_burst_bytes, BUCKET_BURST_COUNT_MAX),
            ("principal_burst_count", self.principal_burst_count, BUCKET_BURST_COUNT_MAX),
            ("retry_floor_per_sec", self.retry_floor_per_sec, BUCKET_RATE_PER_SEC_MAX),
            ("retry_burst_count", self.retry_burst_count, BUCKET_BURST_COUNT_MAX),
            ("retry_after_ms_max", self.retry_after_ms_max, RETRY_AFTER_MS_CEILING),
            ("latency_target_ms", self.latency_target_ms, LATENCY_MS_CEILING),
            ("fsync_latency_ms_max", self.fsync_latency_ms_max, LATENCY_MS_CEILING),
        ];
        for (field, value, ceiling) in ceilings {
            if value > ceiling {
                return Err(ConfigError::AboveCeiling { field, value, ceiling });
            }
        }
        let percents: [(&'static str, u8, u8, u8); 5] = [
            ("concurrency_backoff_percent", self.concurrency_backoff_percent, 1, 99),
            ("background_concurrency_percent", self.background_concurrency_percent, 1, 100),
            ("retry_ratio_percent", self.retry_ratio_percent, 0, 100),
            ("background_signal_percent", self.background_signal_percent, 1, 100),
            ("retry_jitter_percent", self.retry_jitter_percent, 0, 100),
        ];
        for (field, value, min, max) in percents {
            if !(min..=max).contains(&value) {
                return Err(ConfigError::PercentOutOfRange { field, value, min, max });
            }
        }
        let orders: [(&'static str, u64, &'static str, u64); 6] = [
            ("principal_requests_max", self.principal_requests_max, "requests_max", self.requests_max),
            (
                "principal_response_bytes_max",
                self.principal_response_bytes_max,
                "response_bytes_max",
                self.response_bytes_max,
            ),
            (
                "concurrency_count_min",
                self.concurrency_count_min.into(),
                "concurrency_count_initial",
                self.concurrency_count_initial.into(),
            ),
            (
                "concurrency_count_initial",
                self.concurrency_count_initial.into(),
                "concurrency_count_max",
                self.concurrency_count_max.into(),
            ),
            ("retry_after_ms_min", self.retry_after_ms_min, "retry_after_ms_max", self.retry_after_ms_max),
            ("signal_retry_after_ms", self.signal_retry_after_ms, "retry_after_ms_max", self.retry_after_ms_max),
        ];
        for (lower, lower_value, upper, upper_value) in orders {
            if lower_value > upper_value {
                return Err(ConfigError::Order { lower, lower_value, upper, upper_value });
            }
        }
        if self.principals_tracked_max <= self.concurrency_count_max {
            return Err(ConfigError::PrincipalsTrackedTooFew {
                principals: self.principals_tracked_max,
                concurrency: self.concurrency_count_max,
            });
        }
        if self.light_reserve_count >= self.concurrency_count_min {
            return Err(ConfigError::ReserveTooLarge {
                reserve: self.light_reserve_count,
                concurrency_min: self.concurrency_count_min,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(edit: impl FnOnce(&mut Config), expected: &str) {
        let mut config = Config::default();
        edit(&mut config);
        assert_eq!(config.validate().unwrap_err().to_string(), expected);
    }

    #[test]
    fn default_is_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        check(|c| c.latency_target_ms = 0, "latency_target_ms must be greater than zero");
        check(|c| c.retry_after_ms_max = 7_200_000, "retry_after_ms_max = 7200000 exceeds the ceiling 3600000");
        check(|c| c.concurrency_backoff_percent = 100, "concurrency_backoff_percent = 100% must be within 1..=99");
        check(
            |c| c.concurrency_count_initial = 2000,
            "concurrency_count_initial (2000) must not exceed concurrency_count_max (1024)",
        );
        check(
            |c| c.principals_tracked_max = 1024,
            "principals_tracked_max (1024) must exceed concurrency_count_max (1024) so that an idle principal can \
             always be evicted",
        );
        check(
            |c| c.light_reserve_count = 8,
            "light_reserve_count (8) must be below concurrency_count_min (8), or busy principals could never be \
             admitted",
        );
        check(|c| c.principal_answer_bytes_per_sec = 0, "principal_answer_bytes_per_sec must be greater than zero");
        check(
            |c| c.principal_answer_bytes_per_sec = 2_000_000_000,
            "principal_answer_bytes_per_sec = 2000000000 exceeds the ceiling 1000000000",
        );
        check(
            |c| c.retry_after_ms_min = 20_000,
            "retry_after_ms_min (20000) must not exceed retry_after_ms_max (10000)",
        );
    }
}
