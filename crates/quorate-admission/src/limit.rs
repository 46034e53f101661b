//! An adaptive concurrency limit (AIMD on observed latency).

use std::time::Duration;

use crate::time::Nanos;

/// Largest concurrency limit a limiter accepts.
pub const CONCURRENCY_COUNT_CEILING: u32 = 1 << 20;

/// The limit is kept in thousandths so that additive increase can add `1/limit` per success.
const MILLI: u64 = 1000;

/// Settings of an [`AimdLimit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AimdSettings {
    /// The limit never goes below this (`> 0`).
    pub concurrency_count_min: u32,
    /// The limit never goes above this.
    pub concurrency_count_max: u32,
    /// The limit to start from.
    pub concurrency_count_initial: u32,
    /// A completion slower than this is a congestion signal.
    pub latency_target: Duration,
    /// On congestion the limit becomes `limit × backoff_percent / 100` (1..=99).
    pub backoff_percent: u8,
}

/// Additive-increase, multiplicative-decrease concurrency limit, fed with completions.
///
/// * A completion within the latency target, while the limit was at least half used, adds
///   `1/limit` (so about one per round trip of a full window).
/// * A completion over the target, or a dropped request, multiplies the limit by
///   `backoff_percent / 100`, at most once per `latency_target` (one congestion episode is
///   one decrease, not one per request caught in it).
/// * The limit stays within `[concurrency_count_min, concurrency_count_max]`.
///
/// The limit is found rather than configured: it settles near the concurrency at which the
/// server's latency reaches the target, which by Little's law is about
/// `throughput × latency_target`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AimdLimit {
    settings: AimdSettings,
    limit_milli: u64,
    decreased_at: Option<Nanos>,
}

impl AimdLimit {
    /// A limiter at `concurrency_count_initial`.
    ///
    /// # Panics
    /// If the settings are inconsistent (`Config::validate` checks them first).
    pub fn new(settings: AimdSettings) -> AimdLimit {
        assert!(settings.concurrency_count_min > 0);
        assert!(settings.concurrency_count_min <= settings.concurrency_count_initial);
        assert!(settings.concurrency_count_initial <= settings.concurrency_count_max);
        assert!(settings.concurrency_count_max <= CONCURRENCY_COUNT_CEILING);
        assert!((1..=99).contains(&settings.backoff_percent));
        AimdLimit { settings, limit_milli: u64::from(settings.concurrency_count_initial) * MILLI, decreased_at: None }
    }

    /// The current limit, in requests.
    pub fn limit_count(&self) -> u32 {
        let limit = (self.limit_milli / MILLI) as u32;
        assert!(limit >= self.settings.concurrency_count_min && limit <= self.settings.concurrency_count_max);
        limit
    }

    /// A request completed after `latency`; `in_flight_count` requests (this one included)
    /// were in flight just before it completed.
    pub fn on_sample(&mut self, latency: Duration, in_flight_count: u64, now: Nanos) {
        if latency > self.settings.latency_target {
            self.decrease(now);
        } else if in_flight_count * 2 >= u64::from(self.limit_count()) {
            let max_milli = u64::from(self.settings.concurrency_count_max) * MILLI;
            self.limit_milli = (self.limit_milli + MILLI * MILLI / self.limit_milli).min(max_milli);
        }
    }

    /// A request was dropped or timed out downstream: a congestion signal.
    pub fn on_drop(&mut self, now: Nanos) {
        self.decrease(now);
    }

    fn decrease(&mut self, now: Nanos) {
        if let Some(at) = self.decreased_at
            && now < at + self.settings.latency_target
        {
            return;
        }
        let min_milli = u64::from(self.settings.concurrency_count_min) * MILLI;
        self.limit_milli = (self.limit_milli * u64::from(self.settings.backoff_percent) / 100).max(min_milli);
        self.decreased_at = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter() -> AimdLimit {
        AimdLimit::new(AimdSettings {
            concurrency_count_min: 2,
            concurrency_count_max: 40,
            concurrency_count_initial: 10,
            latency_target: Duration::from_millis(10),
            backoff_percent: 50,
        })
    }

    #[test]
    fn grows_by_about_one_per_window_while_used_and_fast() {
        let mut l = limiter();
        // 1/limit per success: a window of 10 and then some.
        for i in 0..11 {
            l.on_sample(Duration::from_millis(1), 10, Nanos::from_millis(i));
        }
        assert_eq!(l.limit_count(), 11);
        // An idle limiter does not grow: unused headroom says nothing about capacity.
        for i in 0..1000 {
            l.on_sample(Duration::from_millis(1), 1, Nanos::from_millis(i));
        }
        assert_eq!(l.limit_count(), 11);
        for i in 0..100_000 {
            l.on_sample(Duration::from_millis(1), 40, Nanos::from_millis(i));
        }
        assert_eq!(l.limit_count(), 40, "capped at the maximum");
    }

    #[test]
    fn one_decrease_per_episode_bounded_below() {
        let mut l = limiter();
        l.on_sample(Duration::from_millis(50), 10, Nanos::from_millis(100));
        assert_eq!(l.limit_count(), 5);
        // Slow completions in the same episode (within latency_target) do not compound.
        l.on_sample(Duration::from_millis(50), 10, Nanos::from_millis(105));
        l.on_drop(Nanos::from_millis(109));
        assert_eq!(l.limit_count(), 5);
        l.on_drop(Nanos::from_millis(110));
        assert_eq!(l.limit_count(), 2);
        l.on_drop(Nanos::from_millis(200));
        assert_eq!(l.limit_count(), 2, "never below the minimum");
    }
}
