//! Time as the caller passes it in.

use std::fmt;
use std::ops::Add;
use std::time::Duration;

/// Nanoseconds in one second.
pub const NANOS_PER_SEC: u64 = 1_000_000_000;

/// A point in time: nanoseconds since an epoch the caller chooses (process start, simulation
/// start). The crate never reads a clock; every call that needs the time takes a `Nanos`.
///
/// The caller should pass a monotonic clock. If `now` ever goes backwards the crate treats the
/// elapsed time as zero (token buckets do not refill) rather than panicking.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Nanos(pub u64);

impl Nanos {
    /// The epoch.
    pub const ZERO: Nanos = Nanos(0);

    /// `ms` milliseconds after the epoch (saturating).
    pub const fn from_millis(ms: u64) -> Nanos {
        Nanos(ms.saturating_mul(1_000_000))
    }

    /// `s` seconds after the epoch (saturating).
    pub const fn from_secs(s: u64) -> Nanos {
        Nanos(s.saturating_mul(NANOS_PER_SEC))
    }

    /// The time elapsed since `earlier`, or zero if `earlier` is later than `self`.
    pub fn saturating_since(self, earlier: Nanos) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// `self + duration`, saturating at `u64::MAX` nanoseconds.
    pub fn saturating_add(self, duration: Duration) -> Nanos {
        Nanos(self.0.saturating_add(duration_ns(duration)))
    }
}

impl Add<Duration> for Nanos {
    type Output = Nanos;

    /// Saturating addition; see [`Nanos::saturating_add`].
    fn add(self, duration: Duration) -> Nanos {
        self.saturating_add(duration)
    }
}

impl fmt::Display for Nanos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:09}s", self.0 / NANOS_PER_SEC, self.0 % NANOS_PER_SEC)
    }
}

/// A duration in whole nanoseconds, saturating at `u64::MAX` (about 584 years).
pub(crate) fn duration_ns(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Nanos::from_millis(3), Nanos(3_000_000));
        assert_eq!(Nanos::from_secs(2).saturating_since(Nanos::from_secs(1)), Duration::from_secs(1));
        assert_eq!(Nanos::from_secs(1).saturating_since(Nanos::from_secs(2)), Duration::ZERO);
        assert_eq!(Nanos(u64::MAX - 1) + Duration::from_secs(1), Nanos(u64::MAX));
        assert_eq!(Nanos::from_secs(u64::MAX), Nanos(u64::MAX));
        assert_eq!(Nanos(1_500_000_000).to_string(), "1.500000000s");
    }
}
