//! Where the runtime reads the time.

use quorate_core::Instant;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonic clock. The runtime reads it before every input it hands the core; timers
/// (elections, heartbeats) are measured on it.
pub trait Clock: Send + Sync + 'static {
    /// The current time. Never goes backwards.
    fn now(&self) -> Instant;

    /// How long, in real time, until this clock reads `at` (zero if it does already): what a
    /// [`crate::Node`] sleeps for its next timer. The default, the difference on this clock,
    /// is right for a clock that runs at real time; one that runs at another rate (a host's
    /// skewed clock for fault injection) says how long that really is.
    fn real_until(&self, at: Instant) -> std::time::Duration {
        at.saturating_since(self.now())
    }
}

/// The process's monotonic clock (`std::time::Instant`), as nanoseconds since its creation.
#[derive(Clone, Copy, Debug)]
pub struct SystemClock {
    origin: std::time::Instant,
}

impl SystemClock {
    /// A clock whose origin is now.
    #[must_use]
    pub fn new() -> SystemClock {
        SystemClock { origin: std::time::Instant::now() }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant(self.origin.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64)
    }
}

/// A clock moved by hand, shared by its clones: for tests and simulations.
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at [`Instant::ZERO`].
    #[must_use]
    pub fn new() -> ManualClock {
        ManualClock::default()
    }

    /// Moves the clock to `to` (ignored if that is in the past).
    pub fn set(&self, to: Instant) {
        self.nanos.fetch_max(to.0, Ordering::SeqCst);
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: std::time::Duration) {
        self.set(self.now().saturating_add(d));
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        Instant(self.nanos.load(Ordering::SeqCst))
    }
}
