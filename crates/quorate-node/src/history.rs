//! The node's side of the multi-version history (the state machine's side is
//! [`crate::sm::history`]): the answer to `Request::History`, and the leader's automatic
//! compaction by revision count and by age (`[history]` in the configuration).
//!
//! Automatic compaction is proposed by the leader as an ordinary
//! [`CommandOp::Compact`](quorate_api::CommandOp::Compact): every replica applies the same
//! compactions at the same log positions. The age rule needs to know when each revision was
//! reached; the leader samples its own revision as time passes (in memory: a new leader starts
//! sampling afresh, so after a leader change age-based compaction resumes once
//! `history.retain_ms` has passed — the count rule, and the state machine's hard bound, go on
//! meanwhile).

use quorate_api::{ApiError, HistoryInfo, Response};
use quorate_log::NodeId;
use quorate_storage::RocksStore;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The answer to `Request::History`, from the state machine in node `id`'s `store`.
pub(crate) fn info(store: &RocksStore, id: NodeId) -> Result<Response, ApiError> {
    let err = |e: crate::sm::SmError| ApiError::Internal(format!("history: {e}"));
    let state = crate::sm::history_state(store).map_err(err)?;
    let revision = crate::sm::revision(store).map_err(err)?;
    // The event index (watches) is counted in the history's size: it is dropped with it.
    let events = crate::sm::events_state(store).map_err(err)?;
    let (ev_entries, ev_bytes) = events.map_or((0, 0), |e| (e.entries, e.bytes));
    Ok(Response::History(HistoryInfo {
        id,
        enabled: state.is_some(),
        compacted: state.map_or(0, |s| s.compacted),
        revision,
        entries: state.map_or(0, |s| s.entries).saturating_add(ev_entries),
        bytes: state.map_or(0, |s| s.bytes).saturating_add(ev_bytes),
        entries_max: crate::sm::HISTORY_ENTRIES_MAX,
        bytes_max: crate::sm::HISTORY_BYTES_MAX,
    }))
}

/// How often the leader considers an automatic compaction.
pub(crate) const AUTO_COMPACT_EVERY: Duration = Duration::from_secs(5);
/// Revision samples kept for the age rule (spaced so that they cover twice `retain_ms`).
const SAMPLES_MAX: usize = 1024;

/// The leader's automatic compaction.
#[derive(Debug)]
pub(crate) struct AutoCompact {
    retain_revisions: u64,
    retain: Option<Duration>,
    /// `(when, revision)`, oldest first.
    samples: VecDeque<(Instant, u64)>,
    next_check: Instant,
}

impl AutoCompact {
    /// `retain_revisions`: keep at least this many revisions (0: no count rule); `retain_ms`:
    /// keep at least this much time of history (0: no age rule).
    pub(crate) fn new(retain_revisions: u64, retain_ms: u64, now: Instant) -> AutoCompact {
        AutoCompact {
            retain_revisions,
            retain: (retain_ms > 0).then(|| Duration::from_millis(retain_ms)),
            samples: VecDeque::new(),
            next_check: now,
        }
    }

    /// The compaction revision to propose now, if any: the larger of what each rule allows,
    /// when it is above the current compaction revision. `history`: `(revision, compacted)`
    /// of this node's state machine, `None` while history is not recorded.
    pub(crate) fn due(&mut self, now: Instant, is_leader: bool, history: Option<(u64, u64)>) -> Option<u64> {
        if now < self.next_check {
            return None;
        }
        self.next_check = now + AUTO_COMPACT_EVERY;
        let (revision, compacted) = history?;
        if let Some(retain) = self.retain {
            let spacing = retain / (SAMPLES_MAX as u32 / 2);
            if self.samples.back().is_none_or(|(t, _)| now.saturating_duration_since(*t) >= spacing) {
                if self.samples.len() == SAMPLES_MAX {
                    self.samples.pop_front();
                }
                self.samples.push_back((now, revision));
            }
        }
        if !is_leader {
            return None;
        }
        let by_count = if self.retain_revisions > 0 { revision.saturating_sub(self.retain_revisions) } else { 0 };
        let by_age = match self.retain {
            Some(retain) => self
                .samples
                .iter()
                .take_while(|(t, _)| now.saturating_duration_since(*t) >= retain)
                .last()
                .map_or(0, |(_, r)| *r),
            None => 0,
        };
        let target = by_count.max(by_age).min(revision);
        (target > compacted).then_some(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_rule_keeps_that_many_revisions_and_only_the_leader_proposes() {
        let t0 = Instant::now();
        let mut a = AutoCompact::new(100, 0, t0);
        assert_eq!(a.due(t0, true, None), None, "history not recorded");
        let t = t0 + AUTO_COMPACT_EVERY;
        assert_eq!(a.due(t, true, Some((50, 0))), None, "fewer revisions than kept");
        let t = t + AUTO_COMPACT_EVERY;
        assert_eq!(a.due(t, false, Some((500, 0))), None, "a follower");
        let t = t + AUTO_COMPACT_EVERY;
        assert_eq!(a.due(t, true, Some((500, 0))), Some(400));
        assert_eq!(a.due(t, true, Some((600, 0))), None, "not before the next check");
        let t = t + AUTO_COMPACT_EVERY;
        assert_eq!(a.due(t, true, Some((500, 400))), None, "already there");
        let mut off = AutoCompact::new(0, 0, t0);
        assert_eq!(off.due(t0, true, Some((1_000_000, 0))), None, "both rules off");
    }

    #[test]
    fn the_age_rule_compacts_to_the_revision_reached_retain_ago() {
        let t0 = Instant::now();
        let retain = Duration::from_secs(60);
        let mut a = AutoCompact::new(0, retain.as_millis() as u64, t0);
        let mut t = t0;
        let mut proposed = Vec::new();
        // One revision per second, checked every 5 s, for 3 minutes.
        while t < t0 + Duration::from_secs(180) {
            let revision = t.duration_since(t0).as_secs();
            if let Some(c) = a.due(t, true, Some((revision, proposed.last().copied().unwrap_or(0)))) {
                // Never beyond what is at least `retain` old.
                assert!(c + retain.as_secs() <= revision, "compacted to {c} at revision {revision}");
                proposed.push(c);
            }
            t += AUTO_COMPACT_EVERY;
        }
        assert!(!proposed.is_empty());
        let last = *proposed.last().unwrap();
        assert!(last + retain.as_secs() + 2 * AUTO_COMPACT_EVERY.as_secs() >= 175, "kept too much: {last}");
        // The count rule and the age rule together: the larger target wins.
        let mut both = AutoCompact::new(10, retain.as_millis() as u64, t0);
        assert_eq!(both.due(t0, true, Some((1000, 0))), Some(990));
    }
}
