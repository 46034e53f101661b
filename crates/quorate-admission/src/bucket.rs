//! Token buckets in exact integer arithmetic.

use std::time::Duration;

use crate::time::{NANOS_PER_SEC, Nanos};

/// Largest `rate_per_sec` a bucket accepts.
pub const BUCKET_RATE_PER_SEC_MAX: u64 = 1_000_000_000;
/// Largest `burst_count` a bucket accepts.
pub const BUCKET_BURST_COUNT_MAX: u64 = 1_000_000_000;

// The level is kept in "token-nanoseconds per second": one token is NANOS_PER_SEC units, and
// `elapsed_ns * rate_per_sec` units arrive in `elapsed_ns`. Exact, with no remainder to carry.
const _: () = assert!((BUCKET_BURST_COUNT_MAX as u128) * (NANOS_PER_SEC as u128) <= u64::MAX as u128);

/// A token bucket: `burst_count` tokens at most, refilled at `rate_per_sec` tokens per second.
/// Starts full. Time comes from the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    rate_per_sec: u64,
    burst_count: u64,
    /// Tokens × `NANOS_PER_SEC`.
    level: u64,
    refilled_at: Nanos,
}

impl TokenBucket {
    /// A full bucket. A rate of zero never refills (useful for a pure budget topped up by
    /// [`TokenBucket::deposit_percent`]).
    ///
    /// # Panics
    /// If `rate_per_sec` or `burst_count` exceed [`BUCKET_RATE_PER_SEC_MAX`] and
    /// [`BUCKET_BURST_COUNT_MAX`]; `Config::validate` keeps configured values within them.
    pub fn new(rate_per_sec: u64, burst_count: u64, now: Nanos) -> TokenBucket {
        assert!(rate_per_sec <= BUCKET_RATE_PER_SEC_MAX);
        assert!(burst_count <= BUCKET_BURST_COUNT_MAX);
        TokenBucket { rate_per_sec, burst_count, level: burst_count * NANOS_PER_SEC, refilled_at: now }
    }

    fn capacity(&self) -> u64 {
        self.burst_count * NANOS_PER_SEC
    }

    fn refill(&mut self, now: Nanos) {
        if now <= self.refilled_at {
            return; // Same instant, or the caller's clock went backwards: nothing arrives.
        }
        let elapsed_ns = now.0 - self.refilled_at.0;
        let arrived = elapsed_ns.saturating_mul(self.rate_per_sec);
        self.level = self.level.saturating_add(arrived).min(self.capacity());
        self.refilled_at = now;
    }

    /// Whether `cost_count` tokens are available at `now`, without taking them; if not, how
    /// long until they will be (`Duration::MAX` if never: zero rate, or more than the burst).
    pub fn check(&mut self, cost_count: u64, now: Nanos) -> Result<(), Duration> {
        self.refill(now);
        let cost = cost_count.saturating_mul(NANOS_PER_SEC);
        if cost <= self.level {
            return Ok(());
        }
        if self.rate_per_sec == 0 || cost > self.capacity() {
            return Err(Duration::MAX);
        }
        let wait_ns = (cost - self.level).div_ceil(self.rate_per_sec);
        Err(Duration::from_nanos(wait_ns))
    }

    /// Takes `cost_count` tokens, or refuses without taking anything (see [`TokenBucket::check`]).
    pub fn take(&mut self, cost_count: u64, now: Nanos) -> Result<(), Duration> {
        self.check(cost_count, now)?;
        let cost = cost_count * NANOS_PER_SEC;
        assert!(cost <= self.level);
        self.level -= cost;
        Ok(())
    }

    /// Adds `percent`/100 of a token (capped at the burst): a retry budget earns a fraction
    /// of a retry per success.
    pub fn deposit_percent(&mut self, percent: u64, now: Nanos) {
        self.refill(now);
        let amount = percent.saturating_mul(NANOS_PER_SEC / 100);
        self.level = self.level.saturating_add(amount).min(self.capacity());
    }

    /// Whole tokens available at `now`.
    pub fn available_count(&mut self, now: Nanos) -> u64 {
        self.refill(now);
        self.level / NANOS_PER_SEC
    }

    /// Whether the bucket is full at `now` (so forgetting it loses nothing).
    pub fn is_full(&mut self, now: Nanos) -> bool {
        self.refill(now);
        self.level == self.capacity()
    }
}

/// A debt bucket: a rate charged *after* the fact, with costs only known once the work is
/// done (the bytes of an answer). Up to `burst` units are available at once and `rate_per_sec`
/// come back per second; a charge is always taken, even past zero, and the bucket is then in
/// debt: [`DebtBucket::check`] refuses until the debt is paid back by time, and says how long
/// that takes. The debt is capped at `debt_max` (one huge charge cannot shut its owner out for
/// longer than `debt_max / rate_per_sec`). Starts full. Time comes from the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebtBucket {
    rate_per_sec: u64,
    burst: u64,
    debt_max: u64,
    /// Units × `NANOS_PER_SEC`; negative in debt.
    level: i128,
    refilled_at: Nanos,
}

impl DebtBucket {
    /// A full bucket of `burst` units refilled at `rate_per_sec`, whose debt stops growing at
    /// `debt_max` units.
    ///
    /// # Panics
    /// If `rate_per_sec` is zero or above [`BUCKET_RATE_PER_SEC_MAX`], or `burst` or
    /// `debt_max` above [`DEBT_BUCKET_UNITS_MAX`]; `Config::validate` keeps configured values
    /// within them.
    pub fn new(rate_per_sec: u64, burst: u64, debt_max: u64, now: Nanos) -> DebtBucket {
        assert!(rate_per_sec > 0 && rate_per_sec <= BUCKET_RATE_PER_SEC_MAX);
        assert!(burst <= DEBT_BUCKET_UNITS_MAX && debt_max <= DEBT_BUCKET_UNITS_MAX);
        DebtBucket { rate_per_sec, burst, debt_max, level: Self::scaled(burst), refilled_at: now }
    }

    fn scaled(units: u64) -> i128 {
        i128::from(units) * i128::from(NANOS_PER_SEC)
    }

    fn refill(&mut self, now: Nanos) {
        if now <= self.refilled_at {
            return; // Same instant, or the caller's clock went backwards: nothing arrives.
        }
        let elapsed_ns = i128::from(now.0 - self.refilled_at.0);
        self.level = (self.level + elapsed_ns * i128::from(self.rate_per_sec)).min(Self::scaled(self.burst));
        self.refilled_at = now;
    }

    /// Whether the bucket is out of debt at `now` (its level is zero or more); if not, how
    /// long until it will be.
    pub fn check(&mut self, now: Nanos) -> Result<(), Duration> {
        self.refill(now);
        if self.level >= 0 {
            return Ok(());
        }
        let debt = self.level.unsigned_abs();
        let wait_ns = debt.div_ceil(u128::from(self.rate_per_sec));
        Err(Duration::from_nanos(u64::try_from(wait_ns).unwrap_or(u64::MAX)))
    }

    /// Takes `cost` units at `now`, into debt if need be (at most `debt_max`); returns the
    /// units taken (less than `cost` only where the debt stopped at `debt_max`).
    pub fn charge(&mut self, cost: u64, now: Nanos) -> u64 {
        self.refill(now);
        let floor = -Self::scaled(self.debt_max);
        self.take_to(cost, floor)
    }

    /// Lowers the level by `cost` units, not below `floor` (scaled), and returns the units
    /// taken.
    fn take_to(&mut self, cost: u64, floor: i128) -> u64 {
        let before = self.level;
        self.level = (self.level - Self::scaled(cost.min(DEBT_BUCKET_UNITS_MAX))).max(floor.min(before));
        u64::try_from((before - self.level) / i128::from(NANOS_PER_SEC)).expect("at most a charge")
    }

    /// Takes `cost` units at `now` down to zero at most: no new debt (a debt already owed
    /// stays as it is). Returns the units taken.
    pub fn charge_without_debt(&mut self, cost: u64, now: Nanos) -> u64 {
        self.refill(now);
        self.take_to(cost, 0)
    }

    /// Forgives any debt at `now`: the level is at least zero afterwards.
    pub fn forgive(&mut self, now: Nanos) {
        self.refill(now);
        self.level = self.level.max(0);
    }

    /// Gives back `units` charged before at `now` (an estimate charged in advance that the
    /// real cost did not reach), up to the burst.
    pub fn refund(&mut self, units: u64, now: Nanos) {
        self.refill(now);
        self.level = (self.level + Self::scaled(units.min(DEBT_BUCKET_UNITS_MAX))).min(Self::scaled(self.burst));
    }

    /// Units available at `now` (negative: the debt).
    pub fn level(&mut self, now: Nanos) -> i64 {
        self.refill(now);
        i64::try_from(self.level / i128::from(NANOS_PER_SEC)).expect("bounded by DEBT_BUCKET_UNITS_MAX")
    }
}

/// Largest `burst`, `debt_max` and single charge of a [`DebtBucket`] (2^48 units: 256 TiB).
pub const DEBT_BUCKET_UNITS_MAX: u64 = 1 << 48;

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn burst_then_rate() {
        let mut b = TokenBucket::new(10, 3, Nanos::ZERO);
        for _ in 0..3 {
            b.take(1, Nanos::ZERO).unwrap();
        }
        // 10 per second: the next token is 100 ms away.
        assert_eq!(b.take(1, Nanos::ZERO), Err(Duration::from_millis(100)));
        assert_eq!(b.take(1, Nanos(40 * MS)), Err(Duration::from_millis(60)));
        b.take(1, Nanos(100 * MS)).unwrap();
        assert_eq!(b.available_count(Nanos(100 * MS)), 0);
        // Long idle: refills to the burst, not beyond.
        assert_eq!(b.available_count(Nanos::from_secs(3600)), 3);
        assert!(b.is_full(Nanos::from_secs(3600)));
    }

    #[test]
    fn exact_over_many_small_steps() {
        // 3 tokens per second observed every 1 ns for a while loses nothing to rounding.
        let mut b = TokenBucket::new(3, 1000, Nanos::ZERO);
        for _ in 0..1000 {
            b.take(1, Nanos::ZERO).unwrap();
        }
        for t in 0..=1_000_000u64 {
            let _ = b.check(1000, Nanos(t * 1000));
        }
        // 1e9 ns elapsed at 3 tokens/s.
        assert_eq!(b.available_count(Nanos(NANOS_PER_SEC)), 3);
    }

    #[test]
    fn refusal_takes_nothing_and_time_going_back_is_harmless() {
        let mut b = TokenBucket::new(1, 2, Nanos::from_secs(10));
        b.take(2, Nanos::from_secs(10)).unwrap();
        assert!(b.take(1, Nanos::from_secs(5)).is_err());
        assert_eq!(b.available_count(Nanos::from_secs(11)), 1);
        assert_eq!(b.take(3, Nanos::from_secs(11)), Err(Duration::MAX), "more than the burst never fits");
    }

    #[test]
    fn deposits_fill_a_zero_rate_bucket() {
        let mut b = TokenBucket::new(0, 2, Nanos::ZERO);
        b.take(2, Nanos::ZERO).unwrap();
        assert_eq!(b.check(1, Nanos::from_secs(100)), Err(Duration::MAX));
        for _ in 0..9 {
            b.deposit_percent(10, Nanos::ZERO);
        }
        assert!(b.take(1, Nanos::ZERO).is_err());
        b.deposit_percent(10, Nanos::ZERO);
        b.take(1, Nanos::ZERO).unwrap();
        for _ in 0..100 {
            b.deposit_percent(50, Nanos::ZERO);
        }
        assert_eq!(b.available_count(Nanos::ZERO), 2, "deposits are capped at the burst");
    }

    #[test]
    fn a_debt_bucket_refuses_until_its_debt_is_paid_back() {
        const MIB: u64 = 1 << 20;
        let mut b = DebtBucket::new(4 * MIB, 8 * MIB, 64 * MIB, Nanos::ZERO);
        // The burst: 8 MiB of answers at once, and one more answer into debt.
        b.charge(4 * MIB, Nanos::ZERO);
        assert_eq!(b.check(Nanos::ZERO), Ok(()));
        b.charge(4 * MIB, Nanos::ZERO);
        assert_eq!(b.check(Nanos::ZERO), Ok(()), "at zero, not in debt");
        b.charge(2 * MIB, Nanos::ZERO);
        // 2 MiB of debt at 4 MiB/s: half a second.
        assert_eq!(b.check(Nanos::ZERO), Err(Duration::from_millis(500)));
        assert_eq!(b.check(Nanos(100 * MS)), Err(Duration::from_millis(400)));
        assert_eq!(b.level(Nanos(100 * MS)), -1_677_721, "1.6 MiB of debt left");
        assert_eq!(b.check(Nanos(500 * MS)), Ok(()));
        // Refilled to the burst, no further.
        assert_eq!(b.level(Nanos::from_secs(3600)), 8 * MIB as i64);
        // The debt stops at debt_max: 64 MiB at 4 MiB/s is 16 s, whatever was charged.
        b.charge(u64::MAX, Nanos::from_secs(3600));
        assert_eq!(b.check(Nanos::from_secs(3600)), Err(Duration::from_secs(16)));
        // A clock going back adds nothing and does not panic.
        assert!(b.check(Nanos::from_secs(10)).is_err());
    }

    #[test]
    fn a_refund_gives_back_what_an_estimate_overcharged_up_to_the_burst() {
        const MIB: u64 = 1 << 20;
        let mut b = DebtBucket::new(4 * MIB, 8 * MIB, 64 * MIB, Nanos::ZERO);
        // Three 4 MiB estimates charged in advance: 4 MiB of debt.
        for _ in 0..3 {
            b.charge(4 * MIB, Nanos::ZERO);
        }
        assert_eq!(b.check(Nanos::ZERO), Err(Duration::from_secs(1)));
        // Two answers took 1 MiB each: 3 MiB back each.
        b.refund(3 * MIB, Nanos::ZERO);
        b.refund(3 * MIB, Nanos::ZERO);
        assert_eq!(b.level(Nanos::ZERO), 2 * MIB as i64);
        // Never above the burst.
        b.refund(u64::MAX, Nanos::ZERO);
        assert_eq!(b.level(Nanos::ZERO), 8 * MIB as i64);
    }

    #[test]
    fn a_charge_without_debt_stops_at_zero_and_forgiving_clears_a_debt() {
        const MIB: u64 = 1 << 20;
        let mut b = DebtBucket::new(4 * MIB, 8 * MIB, 64 * MIB, Nanos::ZERO);
        b.charge_without_debt(6 * MIB, Nanos::ZERO);
        assert_eq!(b.level(Nanos::ZERO), 2 * MIB as i64);
        b.charge_without_debt(u64::MAX, Nanos::ZERO);
        assert_eq!(b.level(Nanos::ZERO), 0, "down to zero, not into debt");
        // A debt already owed is not made larger, nor forgiven, by it.
        b.charge(3 * MIB, Nanos::ZERO);
        b.charge_without_debt(MIB, Nanos::ZERO);
        assert_eq!(b.level(Nanos::ZERO), -3 * MIB as i64);
        b.forgive(Nanos::ZERO);
        assert_eq!(b.check(Nanos::ZERO), Ok(()));
        assert_eq!(b.level(Nanos::ZERO), 0);
        // Forgiving a bucket out of debt changes nothing.
        b.forgive(Nanos(500 * MS));
        assert_eq!(b.level(Nanos(500 * MS)), 2 * MIB as i64);
    }
}
