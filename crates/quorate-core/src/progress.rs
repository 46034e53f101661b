//! The leader's view of each follower's replication (etcd's tracker), with an in-flight
//! window bounded in messages and bytes.

use crate::types::Instant;
use quorate_log::{EntryId, LogIndex};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// How the leader sends to a follower.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ProgressState {
    /// Where the follower's log matches is unknown: one probe at a time.
    Probe,
    /// The follower is in sync: appends are pipelined up to the in-flight window.
    Replicate,
    /// The follower needs entries that are compacted: a snapshot is being sent; appends
    /// wait until it is acknowledged (or fails, and the leader probes again).
    Snapshot,
}

/// Replication progress of one follower, as the leader tracks it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Progress {
    pub(crate) state: ProgressState,
    /// Highest index known to match (acknowledged as persisted by the follower).
    pub(crate) match_index: LogIndex,
    /// Next index to send.
    pub(crate) next_index: LogIndex,
    /// In probe state: a probe is outstanding; wait for an answer or a heartbeat response.
    pub(crate) probe_sent: bool,
    /// In-flight appends: (last index, bytes).
    inflight: VecDeque<(LogIndex, u64)>,
    inflight_bytes: u64,
    /// Heard from since the last check-quorum round.
    pub(crate) recent_active: bool,
    /// Highest heartbeat round acknowledged.
    pub(crate) acked_seq: u64,
    /// When the leader sent the heartbeat round `acked_seq` (the lease counts from there).
    pub(crate) acked_sent_at: Option<Instant>,
    /// In snapshot state: the snapshot's last entry and when it was sent.
    pub(crate) snapshot: Option<(EntryId, Instant)>,
    /// The commit index the latest append to this follower carried.
    pub(crate) commit_sent: LogIndex,
    /// Since when the match index has not moved while appends (or a snapshot) are
    /// outstanding, with that match index; reset by each check (see [`Progress::stalled`]).
    pub(crate) stall_check: Option<(LogIndex, Instant)>,
}

/// A snapshot of one follower's progress, for status and metrics.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PeerProgress {
    /// Send mode.
    pub state: ProgressState,
    /// Highest index known to match.
    pub match_index: LogIndex,
    /// Next index to send.
    pub next_index: LogIndex,
    /// Append messages in flight.
    pub inflight_msgs: usize,
    /// Entry bytes in flight.
    pub inflight_bytes: u64,
    /// Heard from within the current check-quorum window.
    pub recent_active: bool,
}

impl Progress {
    pub(crate) fn new(next_index: LogIndex) -> Progress {
        Progress {
            state: ProgressState::Probe,
            match_index: LogIndex::ZERO,
            next_index,
            probe_sent: false,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            recent_active: true,
            acked_seq: 0,
            acked_sent_at: None,
            snapshot: None,
            commit_sent: LogIndex::ZERO,
            stall_check: None,
        }
    }

    pub(crate) fn snapshot(&self) -> PeerProgress {
        PeerProgress {
            state: self.state,
            match_index: self.match_index,
            next_index: self.next_index,
            inflight_msgs: self.inflight.len(),
            inflight_bytes: self.inflight_bytes,
            recent_active: self.recent_active,
        }
    }

    /// Whether another append may be sent now.
    pub(crate) fn can_send(&self, msgs_max: usize, bytes_max: u64) -> bool {
        match self.state {
            ProgressState::Probe => !self.probe_sent,
            ProgressState::Replicate => self.inflight.len() < msgs_max && self.inflight_bytes < bytes_max,
            ProgressState::Snapshot => false,
        }
    }

    /// Records an append of entries ending at `last` with `bytes` of entries.
    pub(crate) fn sent(&mut self, last: Option<LogIndex>, bytes: u64) {
        match self.state {
            ProgressState::Probe | ProgressState::Snapshot => self.probe_sent = true,
            ProgressState::Replicate => {
                if let Some(last) = last {
                    debug_assert!(last >= self.next_index);
                    self.next_index = last.next();
                    self.inflight.push_back((last, bytes));
                    self.inflight_bytes += bytes;
                }
            }
        }
    }

    /// An acknowledgement up to `index`. Returns whether `match_index` moved.
    pub(crate) fn ack(&mut self, index: LogIndex) -> bool {
        let moved = index > self.match_index;
        if moved {
            self.match_index = index;
            self.probe_sent = false;
        }
        if self.next_index <= index {
            self.next_index = index.next();
        }
        while let Some(&(last, bytes)) = self.inflight.front() {
            if last > index {
                break;
            }
            self.inflight.pop_front();
            self.inflight_bytes -= bytes;
        }
        let snapshot_done = self.snapshot.is_some_and(|(s, _)| index >= s.index);
        if (self.state == ProgressState::Probe && moved) || (self.state == ProgressState::Snapshot && snapshot_done) {
            self.snapshot = None;
            self.become_replicate();
        }
        moved
    }

    /// Whether anything sent is still unacknowledged: appends in flight, or a snapshot.
    pub(crate) fn awaits_ack(&self) -> bool {
        !self.inflight.is_empty() || self.snapshot.is_some()
    }

    /// Stall detection, called on each heartbeat answer (the follower is alive) at `now`:
    /// whether the match index has not moved for at least `interval` while something is
    /// unacknowledged. At most once per `interval` it answers yes; it never depends on how
    /// many answers arrive together.
    pub(crate) fn stalled(&mut self, now: Instant, interval: std::time::Duration) -> bool {
        if !self.awaits_ack() {
            self.stall_check = None;
            return false;
        }
        match self.stall_check {
            Some((m, since)) if m == self.match_index => {
                if now.saturating_since(since) < interval {
                    return false;
                }
                self.stall_check = Some((m, now));
                true
            }
            _ => {
                self.stall_check = Some((self.match_index, now));
                false
            }
        }
    }

    /// Starts sending a snapshot ending at `last`.
    pub(crate) fn become_snapshot(&mut self, last: EntryId, now: Instant) {
        self.state = ProgressState::Snapshot;
        self.snapshot = Some((last, now));
        self.stall_check = Some((self.match_index, now));
        self.inflight.clear();
        self.inflight_bytes = 0;
    }

    /// A rejection of `rejected` with the leader's next guess. Returns whether it applied
    /// (stale rejections are ignored).
    pub(crate) fn reject(&mut self, rejected: LogIndex, next_guess: LogIndex) -> bool {
        match self.state {
            ProgressState::Snapshot => false,
            ProgressState::Replicate => {
                if rejected <= self.match_index {
                    return false;
                }
                self.become_probe();
                self.next_index = self.match_index.next();
                true
            }
            ProgressState::Probe => {
                if rejected != self.next_index.prev() {
                    return false;
                }
                self.next_index = next_guess.next().min(rejected).max(self.match_index.next());
                self.probe_sent = false;
                true
            }
        }
    }

    /// The follower lost state it had acknowledged (a rejection of `rejected` marked with
    /// [`LOST_STATE_HINT_TERM`](crate::LOST_STATE_HINT_TERM)): its match index is void. The
    /// next probe's `prev` is below `rejected` (so a walk back always moves: the marker hides
    /// the hint's term, which the leader would otherwise use to skip), at most `hint` and below
    /// the leader's `last` (so that the probe carries an entry and goes out at once). A
    /// snapshot being sent goes on; its acknowledgement sets the match index again. Harmless if
    /// the follower lied: the leader only resends, and a lower match index never lowers a
    /// commit index.
    pub(crate) fn forget_match(&mut self, rejected: LogIndex, hint: LogIndex, last: LogIndex) {
        self.match_index = LogIndex::ZERO;
        self.stall_check = None;
        if self.state == ProgressState::Snapshot {
            return;
        }
        self.become_probe();
        self.next_index = hint.min(rejected.prev()).min(last.prev()).next();
    }

    pub(crate) fn become_probe(&mut self) {
        self.state = ProgressState::Probe;
        self.snapshot = None;
        self.probe_sent = false;
        self.next_index = self.match_index.next().max(self.next_index.min(self.match_index.next()));
        self.inflight.clear();
        self.inflight_bytes = 0;
    }

    fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.probe_sent = false;
        self.next_index = self.match_index.next();
        self.inflight.clear();
        self.inflight_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_bounds_messages_and_bytes() {
        let mut p = Progress::new(LogIndex(1));
        assert!(p.can_send(2, 100));
        p.sent(Some(LogIndex(0)), 0);
        assert!(!p.can_send(2, 100), "one probe at a time");
        assert!(p.ack(LogIndex(0)) || p.match_index == LogIndex(0));
        p.ack(LogIndex(1));
        assert_eq!(p.state, ProgressState::Replicate);
        p.sent(Some(LogIndex(5)), 60);
        assert!(p.can_send(2, 100));
        p.sent(Some(LogIndex(9)), 60);
        assert!(!p.can_send(2, 1000), "message window full");
        p.ack(LogIndex(5));
        assert!(p.can_send(2, 100));
        assert_eq!(p.snapshot().inflight_bytes, 60);
    }

    #[test]
    fn rejection_in_probe_uses_the_hint() {
        let mut p = Progress::new(LogIndex(11));
        p.sent(None, 0);
        assert!(!p.reject(LogIndex(3), LogIndex(2)), "stale rejection ignored");
        assert!(p.reject(LogIndex(10), LogIndex(4)));
        assert_eq!(p.next_index, LogIndex(5));
        assert!(p.can_send(1, 1));
    }
}
