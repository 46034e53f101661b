//! Reconnect backoff: exponential with jitter, from a seeded generator (no OS randomness), so a
//! test replays the same delays from the same seed.

use std::time::Duration;

/// Most doublings of the base delay (bounds the exponent).
const DOUBLINGS_MAX: u32 = 16;

/// Exponential backoff with "equal jitter": the n-th delay is uniformly drawn from
/// `[cap/2, cap]` where `cap = min(max, min * 2^n)`.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
    rng: SplitMix64,
}

impl Backoff {
    /// A backoff between `min` and `max` (swapped if given the wrong way round), drawing its
    /// jitter from `seed`.
    #[must_use]
    pub fn new(min: Duration, max: Duration, seed: u64) -> Backoff {
        let (min, max) = if min <= max { (min, max) } else { (max, min) };
        Backoff { min, max, attempt: 0, rng: SplitMix64(seed) }
    }

    /// The next delay; each call doubles the cap until it reaches `max`.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32 << self.attempt.min(DOUBLINGS_MAX);
        let cap = self.min.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half_ns = (cap.as_nanos() / 2) as u64;
        let jitter = self.rng.next() % half_ns.saturating_add(1);
        let delay = Duration::from_nanos(half_ns.saturating_add(jitter));
        debug_assert!(delay <= cap);
        delay
    }

    /// Back to the shortest delay (after a connection that worked).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// The SplitMix64 generator: tiny, seedable, good enough for jitter.
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_growing_and_deterministic() {
        let min = Duration::from_millis(10);
        let max = Duration::from_millis(1000);
        let mut a = Backoff::new(min, max, 42);
        let mut b = Backoff::new(min, max, 42);
        for n in 0..40u32 {
            let d = a.next_delay();
            assert_eq!(d, b.next_delay());
            let cap = min.saturating_mul(1 << n.min(DOUBLINGS_MAX)).min(max);
            assert!(d >= cap / 2 && d <= cap, "{d:?} for attempt {n}");
        }
        a.reset();
        assert!(a.next_delay() <= min);
    }
}
