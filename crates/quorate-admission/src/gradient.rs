//! An adaptive concurrency limit driven by the latency gradient (after Netflix's
//! concurrency-limits `Gradient2`), bounded above by an absolute latency target.

use std::time::Duration;

use crate::limit::CONCURRENCY_COUNT_CEILING;
use crate::time::{Nanos, duration_ns};

/// Fewest completions in one measurement window.
pub const GRADIENT_WINDOW_SAMPLES_MIN: u64 = 16;
/// A window holds at least this percentage of the current limit in completions (about a
/// quarter of a round trip of a full window), so that one outlier moves its average little.
const WINDOW_LIMIT_PERCENT: u64 = 25;
/// The long-term latency is an average over about this many windows.
const LONG_WINDOWS: f64 = 16.0;
/// The limit keeps growing while the short-term latency is within this factor of the
/// long-term one (`Gradient2`'s `rttTolerance`).
const TOLERANCE: f64 = 1.5;
/// Each window moves the limit this fraction of the way to its new estimate.
const SMOOTHING: f64 = 0.2;
/// The lowest gradient of one window: the most one window can shrink the estimate.
const GRADIENT_MIN: f64 = 0.5;

/// Settings of a [`GradientLimit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GradientSettings {
    /// The limit never goes below this (`> 0`).
    pub concurrency_count_min: u32,
    /// The limit never goes above this.
    pub concurrency_count_max: u32,
    /// The limit to start from.
    pub concurrency_count_initial: u32,
    /// A window whose *average* completion latency is above this shrinks the limit in
    /// proportion (`target / average`), whatever the gradient says.
    pub latency_target: Duration,
    /// After a window with a dropped request (a timeout downstream) the limit becomes
    /// `limit × backoff_percent / 100` (1..=99).
    pub backoff_percent: u8,
}

/// A concurrency limit that grows while latency holds, stops growing while latency climbs,
/// and shrinks only past the latency target.
///
/// Completions are grouped into windows of `max(16, limit / 4)` samples. At the end of each,
/// with `short` the window's average latency and `long` an average over about 16 windows
/// (pulled down quickly when it is more than twice `short`, so that one slow period is
/// forgotten):
///
/// * a window with a dropped request (a timeout downstream): `limit × backoff_percent / 100`;
/// * `short` over the latency target: the limit moves a fifth of the way towards
///   `limit × max(0.5, target / short) + √limit`, never up;
/// * less than half the limit used (the window's most requests in flight), or `short` more
///   than 1.5 × `long` (the gradient: queueing builds up faster than the average follows):
///   unchanged;
/// * otherwise it grows by `0.2 × √limit` (a fifth of a queue allowance of √limit).
///
/// Within `[min, max]` always. The shape follows Netflix's concurrency-limits `Gradient2`
/// (windowed averages, long against short latency, a √limit queue allowance, smoothing),
/// with one deliberate difference: the gradient only *stops growth*; the limit shrinks only
/// past the absolute target. On a node that batches fsyncs latency rises with concurrency
/// *and so does throughput* (larger batches), and a window average is noisy; a gradient that
/// shrinks the limit there sheds while throughput is still rising (and, while the limit is
/// app-limited and cannot grow back, ratchets it down on noise). Below the target this limiter
/// never sheds for latency; at the target it holds about `throughput × target` in flight.
/// And unlike an AIMD limit that shrinks on any single slow completion, one outlier among the
/// completions of a window moves its average little.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GradientLimit {
    settings: GradientSettings,
    limit: f64,
    long_ns: Option<f64>,
    window_count: u64,
    window_sum_ns: u128,
    window_in_flight_max: u64,
    window_dropped: bool,
    updates_count: u64,
}

impl GradientLimit {
    /// A limiter at `concurrency_count_initial`.
    ///
    /// # Panics
    /// If the settings are inconsistent (`Config::validate` checks them first).
    pub fn new(settings: GradientSettings) -> GradientLimit {
        assert!(settings.concurrency_count_min > 0);
        assert!(settings.concurrency_count_min <= settings.concurrency_count_initial);
        assert!(settings.concurrency_count_initial <= settings.concurrency_count_max);
        assert!(settings.concurrency_count_max <= CONCURRENCY_COUNT_CEILING);
        assert!((1..=99).contains(&settings.backoff_percent));
        assert!(!settings.latency_target.is_zero());
        GradientLimit {
            settings,
            limit: f64::from(settings.concurrency_count_initial),
            long_ns: None,
            window_count: 0,
            window_sum_ns: 0,
            window_in_flight_max: 0,
            window_dropped: false,
            updates_count: 0,
        }
    }

    /// The current limit, in requests.
    pub fn limit_count(&self) -> u32 {
        let limit = self.limit as u32;
        assert!(limit >= self.settings.concurrency_count_min && limit <= self.settings.concurrency_count_max);
        limit
    }

    /// Windows completed so far (each one an update of the limit).
    pub fn updates_count(&self) -> u64 {
        self.updates_count
    }

    /// The long-term average latency (`None` before the first window ends).
    pub fn long_latency(&self) -> Option<Duration> {
        self.long_ns.map(|ns| Duration::from_nanos(ns as u64))
    }

    fn window_samples(&self) -> u64 {
        (self.limit as u64 * WINDOW_LIMIT_PERCENT / 100).max(GRADIENT_WINDOW_SAMPLES_MIN)
    }

    /// A request completed after `latency`; `in_flight_count` requests (this one included)
    /// were in flight just before it completed.
    pub fn on_sample(&mut self, latency: Duration, in_flight_count: u64, _now: Nanos) {
        self.window_count += 1;
        self.window_sum_ns += u128::from(duration_ns(latency));
        self.window_in_flight_max = self.window_in_flight_max.max(in_flight_count);
        if self.window_count >= self.window_samples() {
            self.update();
        }
    }

    /// A request was dropped or timed out downstream: a congestion signal, applied when the
    /// current window ends (one decrease per window, however many drops it holds).
    pub fn on_drop(&mut self, now: Nanos) {
        self.window_dropped = true;
        // A drop is also a sample (of unknown, long latency): it moves the window on.
        self.on_sample(self.settings.latency_target, self.window_in_flight_max, now);
    }

    fn update(&mut self) {
        assert!(self.window_count > 0);
        let short = (self.window_sum_ns / u128::from(self.window_count)) as f64;
        let short = short.max(1.0);
        let long = match self.long_ns {
            None => short,
            Some(long) => {
                let long = long + (short - long) / LONG_WINDOWS;
                // After a slow period the long average is pulled down quickly.
                if long > 2.0 * short { long * 0.9 + short * 0.1 } else { long }
            }
        };
        self.long_ns = Some(long);
        let target = duration_ns(self.settings.latency_target) as f64;
        let app_limited = (self.window_in_flight_max as f64) < self.limit / 2.0;
        let next = if self.window_dropped {
            self.limit * f64::from(self.settings.backoff_percent) / 100.0
        } else if short > target {
            // Over the target: shrink in proportion, at most halving the estimate.
            let gradient = (target / short).max(GRADIENT_MIN);
            let estimate = self.limit * gradient + self.limit.sqrt();
            (self.limit * (1.0 - SMOOTHING) + estimate * SMOOTHING).min(self.limit)
        } else if app_limited || short > TOLERANCE * long {
            // Unused headroom says nothing about capacity; and while latency climbs faster
            // than its long-term average follows, queueing is building: hold, do not grow.
            self.limit
        } else {
            // Within the target and steady: grow by a share of the queue allowance √limit.
            self.limit + SMOOTHING * self.limit.sqrt()
        };
        let min = f64::from(self.settings.concurrency_count_min);
        let max = f64::from(self.settings.concurrency_count_max);
        self.limit = next.clamp(min, max);
        self.window_count = 0;
        self.window_sum_ns = 0;
        self.window_in_flight_max = 0;
        self.window_dropped = false;
        self.updates_count += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter() -> GradientLimit {
        GradientLimit::new(GradientSettings {
            concurrency_count_min: 4,
            concurrency_count_max: 1000,
            concurrency_count_initial: 64,
            latency_target: Duration::from_millis(100),
            backoff_percent: 50,
        })
    }

    /// Feeds `windows` full windows of `latency` with `in_flight` in flight.
    fn feed(l: &mut GradientLimit, windows: u32, latency: Duration, in_flight: u64) {
        for _ in 0..windows {
            let before = l.updates_count();
            for _ in 0..100_000 {
                l.on_sample(latency, in_flight, Nanos::ZERO);
                if l.updates_count() > before {
                    break;
                }
            }
        }
    }

    #[test]
    fn grows_while_latency_is_steady_and_used() {
        let mut l = limiter();
        feed(&mut l, 20, Duration::from_millis(5), 64);
        let grown = l.limit_count();
        assert!(grown > 64, "{grown}");
        // Keeps growing with its use, up to the maximum.
        feed(&mut l, 2000, Duration::from_millis(5), 1000);
        assert_eq!(l.limit_count(), 1000);
    }

    #[test]
    fn does_not_grow_while_half_unused() {
        let mut l = limiter();
        feed(&mut l, 100, Duration::from_millis(5), 10);
        assert_eq!(l.limit_count(), 64);
    }

    #[test]
    fn one_outlier_in_a_window_does_not_shrink_it() {
        let mut l = limiter();
        feed(&mut l, 10, Duration::from_millis(20), 64);
        let before = l.limit_count();
        // A window of 16: 15 fast completions and one at 300 ms (average 37.5 ms < target).
        for i in 0..16 {
            let latency = if i == 7 { Duration::from_millis(300) } else { Duration::from_millis(20) };
            l.on_sample(latency, 100, Nanos::ZERO);
        }
        assert!(l.limit_count() >= before, "{} < {before}", l.limit_count());
    }

    #[test]
    fn climbing_latency_holds_it_and_the_target_bounds_it() {
        let mut l = limiter();
        feed(&mut l, 50, Duration::from_millis(10), 1000);
        let high = l.limit_count();
        // Latency jumps to 4x, still under the target: the gradient stops growth.
        feed(&mut l, 3, Duration::from_millis(40), 1000);
        assert_eq!(l.limit_count(), high);
        // Once the long average has followed (steady again), growth resumes.
        feed(&mut l, 60, Duration::from_millis(40), 1000);
        assert!(l.limit_count() > high, "{} !> {high}", l.limit_count());
        // Over the target for good: the limit falls (to where √limit balances target/short).
        feed(&mut l, 500, Duration::from_millis(400), 1000);
        assert!(l.limit_count() <= 5, "{}", l.limit_count());
    }

    #[test]
    fn noise_while_app_limited_does_not_ratchet_it_down() {
        let mut l = limiter();
        for i in 0..200u64 {
            let ms = if i % 3 == 0 { 30 } else { 2 };
            feed(&mut l, 1, Duration::from_millis(ms), 10);
        }
        assert_eq!(l.limit_count(), 64);
    }

    #[test]
    fn steady_latency_over_target_is_not_accepted_as_normal() {
        let mut l = limiter();
        // The long average follows a steady 150 ms, but the target still applies: the limit
        // falls until the queue allowance √limit balances the gradient (2/3): about 9.
        feed(&mut l, 200, Duration::from_millis(150), 1000);
        assert!(l.limit_count() <= 10, "{}", l.limit_count());
        feed(&mut l, 200, Duration::from_millis(50), 1000);
        assert!(l.limit_count() > 100, "recovers: {}", l.limit_count());
    }

    #[test]
    fn drops_shrink_once_per_window() {
        let mut l = limiter();
        feed(&mut l, 5, Duration::from_millis(10), 64);
        let before = l.limit;
        for _ in 0..5 {
            l.on_drop(Nanos::ZERO);
        }
        l.on_sample(Duration::from_millis(10), 64, Nanos::ZERO);
        feed(&mut l, 1, Duration::from_millis(10), 64);
        let after = l.limit;
        assert!((after - before * 0.5).abs() < 1e-9, "{before} -> {after}: halved once");
    }
}
