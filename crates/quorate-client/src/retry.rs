//! Retry policy: jittered exponential backoff and a rate-limited retry budget. Time is passed
//! in, so both are deterministic under test.

use std::time::Duration;
use tokio::time::Instant;

/// Exponential backoff with "equal jitter": the delay before retry `n` (from 0) is drawn
/// uniformly from `[cap/2, cap]`, where `cap = min(max, initial * 2^n)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The cap of the first delay.
    pub initial: Duration,
    /// The largest delay.
    pub max: Duration,
}

/// Most doublings of the initial delay (bounds the exponent).
const DOUBLINGS_MAX: u32 = 20;

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff { initial: Duration::from_millis(25), max: Duration::from_secs(1) }
    }
}

impl Backoff {
    /// The upper bound of the delay before retry `attempt` (0 for the first retry).
    #[must_use]
    pub fn cap(&self, attempt: u32) -> Duration {
        let (lo, hi) = if self.initial <= self.max { (self.initial, self.max) } else { (self.max, self.initial) };
        lo.saturating_mul(1u32 << attempt.min(DOUBLINGS_MAX)).min(hi)
    }

    /// The delay before retry `attempt`, with jitter drawn from `random`.
    #[must_use]
    pub fn delay(&self, attempt: u32, random: u64) -> Duration {
        let cap = self.cap(attempt);
        let half_ns = (cap.as_nanos() / 2) as u64;
        let jitter = random % half_ns.saturating_add(1);
        Duration::from_nanos(half_ns.saturating_add(jitter))
    }
}

/// Settings of the [`RetryBudget`]: a token bucket that every retry (not every first attempt)
/// draws one token from, so that retries cannot multiply the load on a struggling cluster.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryBudgetConfig {
    /// Tokens the bucket holds when full (and at the start): the largest burst of retries.
    pub burst: u32,
    /// Tokens added per second.
    pub per_second: f64,
}

impl Default for RetryBudgetConfig {
    fn default() -> RetryBudgetConfig {
        RetryBudgetConfig { burst: 50, per_second: 20.0 }
    }
}

/// Thousandths of a token, so the refill is exact integer arithmetic.
const MILLI: u64 = 1000;

/// A token bucket for retries.
#[derive(Clone, Debug)]
pub struct RetryBudget {
    capacity_milli: u64,
    per_second_milli: u64,
    tokens_milli: u64,
    last: Instant,
}

impl RetryBudget {
    /// A full bucket at `now`.
    #[must_use]
    pub fn new(config: RetryBudgetConfig, now: Instant) -> RetryBudget {
        let capacity_milli = u64::from(config.burst.max(1)) * MILLI;
        let per_second_milli = if config.per_second.is_finite() && config.per_second > 0.0 {
            (config.per_second * MILLI as f64).min(u64::MAX as f64 / 2.0) as u64
        } else {
            0
        };
        RetryBudget { capacity_milli, per_second_milli, tokens_milli: capacity_milli, last: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        let added = (elapsed.as_micros().saturating_mul(u128::from(self.per_second_milli)) / 1_000_000) as u64;
        if added > 0 {
            self.tokens_milli = self.tokens_milli.saturating_add(added).min(self.capacity_milli);
            self.last = now;
        }
    }

    /// Takes one token if there is one; `false` means: do not retry now.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens_milli >= MILLI {
            self.tokens_milli -= MILLI;
            true
        } else {
            false
        }
    }

    /// Whole tokens available at `now`.
    #[must_use]
    pub fn available(&mut self, now: Instant) -> u64 {
        self.refill(now);
        self.tokens_milli / MILLI
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_delays_stay_within_their_caps() {
        let b = Backoff { initial: Duration::from_millis(10), max: Duration::from_millis(500) };
        let mut rng = quorate_core::SplitMix64::new(7);
        for attempt in 0..100u32 {
            let cap = b.cap(attempt);
            assert!(cap <= b.max && cap >= b.initial);
            for _ in 0..50 {
                let d = b.delay(attempt, rng.next_u64());
                assert!(d >= cap / 2 && d <= cap, "{d:?} outside [{:?}, {cap:?}]", cap / 2);
            }
        }
        assert_eq!(b.cap(0), Duration::from_millis(10));
        assert_eq!(b.cap(1), Duration::from_millis(20));
        assert_eq!(b.cap(6), Duration::from_millis(500));
        assert_eq!(b.cap(u32::MAX), Duration::from_millis(500));
    }

    #[test]
    fn backoff_tolerates_swapped_and_zero_bounds() {
        let swapped = Backoff { initial: Duration::from_secs(2), max: Duration::from_millis(100) };
        assert_eq!(swapped.cap(0), Duration::from_millis(100));
        assert_eq!(swapped.cap(10), Duration::from_secs(2));
        let zero = Backoff { initial: Duration::ZERO, max: Duration::ZERO };
        assert_eq!(zero.delay(3, u64::MAX), Duration::ZERO);
    }

    #[test]
    fn retry_budget_limits_bursts_and_refills_with_time() {
        let start = Instant::now();
        let mut budget = RetryBudget::new(RetryBudgetConfig { burst: 3, per_second: 2.0 }, start);
        assert!(budget.try_withdraw(start));
        assert!(budget.try_withdraw(start));
        assert!(budget.try_withdraw(start));
        assert!(!budget.try_withdraw(start), "a burst beyond the bucket is refused");
        assert!(!budget.try_withdraw(start + Duration::from_millis(400)), "0.8 tokens are not a token");
        assert!(budget.try_withdraw(start + Duration::from_millis(500)));
        assert!(!budget.try_withdraw(start + Duration::from_millis(500)));
        // A long pause refills to the burst, never beyond.
        assert_eq!(budget.available(start + Duration::from_secs(3600)), 3);
    }

    #[test]
    fn retry_budget_with_no_refill_stays_empty() {
        let start = Instant::now();
        let mut budget = RetryBudget::new(RetryBudgetConfig { burst: 1, per_second: f64::NAN }, start);
        assert!(budget.try_withdraw(start));
        assert!(!budget.try_withdraw(start + Duration::from_secs(10_000)));
    }
}
