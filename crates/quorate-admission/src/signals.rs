//! Load signals the node measures and hands in.

use std::time::Duration;

/// What the node currently observes about itself. The caller updates it (for example after
/// every `Ready` cycle or every few milliseconds) with [`Admission::set_signals`]; each field
/// is compared with a threshold of the [`Config`](crate::Config).
///
/// [`Admission::set_signals`]: crate::Admission::set_signals
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signals {
    /// Bytes proposed but not yet committed (guards memory, and the latency of everything
    /// queued behind them).
    pub uncommitted_bytes: u64,
    /// `committed − applied`, in entries (guards read latency and the state machine falling
    /// behind the log).
    pub apply_lag_entries: u64,
    /// Proposals waiting to enter the core (guards the proposal queue's bound).
    pub proposal_queue_count: u64,
    /// Bytes in flight to the slowest peer (guards the transport's per-peer queues and a
    /// follower that cannot keep up).
    pub peer_in_flight_bytes_max: u64,
    /// Free bytes on the log/data volume (guards running out of disk, after which nothing can
    /// be persisted, not even a vote).
    pub disk_free_bytes: u64,
    /// Recent fsync latency, as a p99 or an EWMA (guards a slow disk: every commit waits on it).
    pub fsync_latency: Duration,
}

impl Signals {
    /// A node with nothing backed up and plenty of disk.
    pub const HEALTHY: Signals = Signals {
        uncommitted_bytes: 0,
        apply_lag_entries: 0,
        proposal_queue_count: 0,
        peer_in_flight_bytes_max: 0,
        disk_free_bytes: u64::MAX,
        fsync_latency: Duration::ZERO,
    };
}

impl Default for Signals {
    /// [`Signals::HEALTHY`]. Note that this fails open: a node that never feeds its signals
    /// only gets the concurrency, rate and retry limits.
    fn default() -> Signals {
        Signals::HEALTHY
    }
}
