//! Settings of one core, validated at construction.

use crate::raft::recovery::Recovering;
use crate::types::CoreError;
use quorate_log::{LogIndex, NodeId};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Settings of one core. Every limit has a default; [`Config::new`] gives sensible ones.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Config {
    /// This node's id.
    pub id: NodeId,
    /// The lower bound of the randomized election timeout; the timeout is drawn uniformly
    /// from `[election_timeout_min, 2 × election_timeout_min)`.
    pub election_timeout_min: Duration,
    /// How often the leader sends heartbeats. Must be well below `election_timeout_min`.
    pub heartbeat_interval: Duration,
    /// Ask for pre-votes before starting an election, so a partitioned node rejoining does not
    /// disrupt a healthy leader.
    pub pre_vote: bool,
    /// The leader steps down if it has not heard from a quorum within an election timeout;
    /// voters ignore vote requests while they hear from a leader.
    pub check_quorum: bool,
    /// Enables lease reads, with the bound on clock drift between any two nodes over one
    /// `election_timeout_min`. Requires `check_quorum`. `None` disables lease reads.
    pub lease_clock_drift_max: Option<Duration>,
    /// Largest total entry size of one append message.
    pub msg_bytes_max: u64,
    /// Most append messages in flight to one follower.
    pub inflight_msgs_max: usize,
    /// Most entry bytes in flight to one follower.
    pub inflight_bytes_max: u64,
    /// Most bytes a leader holds appended but not committed; proposals beyond are refused.
    pub uncommitted_bytes_max: u64,
    /// Largest total size of committed entries handed out in one `Ready`.
    pub apply_bytes_max: u64,
    /// Most entries in one persist batch ([`crate::Persist`]); a longer unstable tail (a
    /// follower catching up far behind) goes out in several batches. At most what the
    /// storage accepts in one write (quorate-storage: 65,536).
    pub persist_entries_max: u64,
    /// Most entry bytes (by `Entry::size_bytes`) in one persist batch, but always at least
    /// one entry. At most what the storage accepts in one write (quorate-storage: 64 MiB).
    pub persist_bytes_max: u64,
    /// Most reads waiting for confirmation.
    pub pending_reads_max: usize,
    /// The index the application's state machine has applied (on restart), so committed
    /// entries are handed out only from the next one.
    pub applied: LogIndex,
    /// Seed of the core's random number generator (election timeouts).
    pub seed: u64,
    /// Ask the application for a snapshot once this many entries were applied since the
    /// last one (`0`: never ask; the application may still snapshot on its own).
    pub snapshot_entries_threshold: u64,
    /// Ask for a snapshot once this many entry bytes (by `Entry::size_bytes`) were applied
    /// since the last one (`0`: never ask on bytes).
    pub snapshot_bytes_threshold: u64,
    /// Entries kept in the log behind a snapshot, so that slightly slow followers catch up
    /// from the log instead of needing a snapshot.
    pub compaction_tail_entries: u64,
    /// A learner is promoted only if it is at most this many entries behind the leader.
    pub promote_lag_entries_max: u64,
    /// Leave a joint configuration automatically once it is committed. When false, the
    /// application calls [`crate::Raft::leave_joint`].
    pub auto_leave_joint: bool,
    /// A snapshot sent to a follower that is not acknowledged within this time is given up
    /// and the follower probed again.
    pub snapshot_send_timeout: std::time::Duration,
    /// The application's latest snapshot, on restart (what the leader sends to followers that
    /// need compacted entries).
    pub snapshot: Option<quorate_log::SnapshotMeta>,
    /// The node lost synced state and this is what it had durably recorded before (the
    /// storage's durable mark): the core starts in protocol-aware recovery — it takes the
    /// recorded term and vote back, never campaigns and votes only for a candidate at least
    /// as up to date as the record until a leader has caught its log up again, and reports the end in [`crate::Ready::recovered`]. Pass it
    /// on every start until that report has been handled (a crash in between is safe).
    /// `None` (the default): the storage holds everything the node acknowledged.
    pub recovering: Option<Recovering>,
}

impl Config {
    /// Defaults: 1 s election timeout, 100 ms heartbeats, pre-vote and check-quorum on, lease
    /// reads off, 1 MiB messages, 256 messages / 8 MiB in flight, 64 MiB uncommitted.
    #[must_use]
    pub fn new(id: NodeId) -> Config {
        Config {
            id,
            election_timeout_min: Duration::from_millis(1000),
            heartbeat_interval: Duration::from_millis(100),
            pre_vote: true,
            check_quorum: true,
            lease_clock_drift_max: None,
            msg_bytes_max: 1 << 20,
            inflight_msgs_max: 256,
            inflight_bytes_max: 8 << 20,
            uncommitted_bytes_max: 64 << 20,
            apply_bytes_max: 4 << 20,
            persist_entries_max: 1 << 16,
            persist_bytes_max: 64 << 20,
            pending_reads_max: 4096,
            applied: LogIndex::ZERO,
            seed: id.get(),
            snapshot_entries_threshold: 100_000,
            snapshot_bytes_threshold: 256 << 20,
            compaction_tail_entries: 10_000,
            promote_lag_entries_max: 1_000,
            auto_leave_joint: true,
            snapshot_send_timeout: Duration::from_secs(30),
            snapshot: None,
            recovering: None,
        }
    }

    /// Checks the relations between settings.
    pub fn validate(&self) -> Result<(), CoreError> {
        let err = |s: &str| Err(CoreError::Config(s.to_owned()));
        if self.heartbeat_interval.is_zero() || self.election_timeout_min.is_zero() {
            return err("heartbeat_interval and election_timeout_min must be positive");
        }
        if self.heartbeat_interval * 2 > self.election_timeout_min {
            return err("heartbeat_interval must be at most half of election_timeout_min");
        }
        if let Some(drift) = self.lease_clock_drift_max {
            if !self.check_quorum {
                return err("lease reads need check_quorum");
            }
            if drift * 2 >= self.election_timeout_min {
                return err("lease_clock_drift_max must be below half of election_timeout_min");
            }
        }
        if self.inflight_msgs_max == 0 || self.msg_bytes_max == 0 || self.inflight_bytes_max < self.msg_bytes_max {
            return err("inflight_msgs_max and msg_bytes_max must be positive, inflight_bytes_max >= msg_bytes_max");
        }
        if self.uncommitted_bytes_max == 0 || self.apply_bytes_max == 0 || self.pending_reads_max == 0 {
            return err("uncommitted_bytes_max, apply_bytes_max and pending_reads_max must be positive");
        }
        if self.persist_entries_max == 0 || self.persist_bytes_max == 0 {
            return err("persist_entries_max and persist_bytes_max must be positive");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_relations_are_refused() {
        let id = NodeId::new(1).unwrap();
        assert!(Config::new(id).validate().is_ok());
        let mut c = Config::new(id);
        c.heartbeat_interval = c.election_timeout_min;
        assert!(c.validate().is_err());
        // Each of the two intervals must be positive on its own (found by mutation testing:
        // `||` replaced by `&&` survived).
        let mut c = Config::new(id);
        c.heartbeat_interval = Duration::ZERO;
        assert!(c.validate().is_err(), "a zero heartbeat interval");
        let mut c = Config::new(id);
        c.election_timeout_min = Duration::ZERO;
        c.heartbeat_interval = Duration::ZERO;
        assert!(c.validate().is_err());
        let mut c = Config::new(id);
        c.election_timeout_min = Duration::ZERO;
        assert!(c.validate().is_err(), "a zero election timeout");
        let mut c = Config::new(id);
        c.check_quorum = false;
        c.lease_clock_drift_max = Some(Duration::from_millis(10));
        assert!(c.validate().is_err());
    }
}
