//! Watches, served as long polls ([`quorate_api::Request::Watch`]).
//!
//! A watch is a pull: each request asks for the events of a key or a prefix from a revision
//! on, and is answered from this member's applied state (a read at the `stale` level, through
//! the read workers: [`crate::sm::read_watch`] over a consistent view). The answer says up to
//! which revision it is complete; the client asks the next from the revision after it, on this
//! member or any other. Nothing is kept per watcher between requests, so a watch survives a
//! reconnect, a leader change or a move to another member without a gap or a duplicate: every
//! member applies the same log and holds the same event index.
//!
//! **Waiting.** A watch has one deadline, fixed when it arrives: its `wait_ms` later (at most
//! [`quorate_api::limits::WATCH_WAIT_MS_MAX`]), never restarted. When this member has applied
//! nothing at or after the asked revision, the request waits for the applied revision to reach
//! it (or the deadline), then is read. A read that finds no event for the watched keys is not
//! answered at once: the watch waits for the member's next applied revision past the read's
//! `complete_to` and is read again from there, until an event matches (answered then) or the
//! deadline comes (answered then, with no events and the `complete_to` of the last read). So a
//! watch of a quiet key in a busy cluster waits its whole wait instead of being answered at
//! every write to other keys (which made its client poll in a tight loop). While the cluster is
//! written, a quiet watch is also answered, with no events, once [`PROGRESS_INTERVAL`] has
//! passed since its arrival and `complete_to` has moved past where it asked from: a
//! *progress notification* at most that often per watch. The waits are on the applied-revision
//! notification (no polling); each new read follows a new applied revision, and a read is
//! bounded as any ([`crate::sm::read_watch`]). A watch read again from a later revision can be
//! answered [`quorate_api::ApiError::Compacted`] for it if compaction passed it meanwhile; the
//! client resyncs as for any compacted position. A watch waiting keeps its slot and its
//! admission (below) until its answer is written.
//!
//! **Bounds.** Each answer is bounded in events and bytes; watches waiting or being read are
//! bounded per node ([`WATCHES_PER_NODE_MAX`]) and per principal
//! ([`WATCHES_PER_PRINCIPAL_MAX`]), on top of admission (a watch is a client read: it holds a
//! slot of the node's and of its principal's in-flight requests, and its answer's bytes, until
//! the answer is written). **Slow watchers:** the server buffers nothing for a watcher; one
//! that falls behind compaction is answered [`quorate_api::ApiError::Compacted`] and resyncs
//! (read at the compaction revision, watch from the next one).

use quorate_api::{ApiError, OverloadReason};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Watches waiting or being read on one node at a time.
pub(crate) const WATCHES_PER_NODE_MAX: usize = 1024;
/// Watches waiting or being read for one principal at a time.
pub(crate) const WATCHES_PER_PRINCIPAL_MAX: usize = 64;
/// What a refused watch is told to wait before it asks again.
const RETRY_AFTER: Duration = Duration::from_millis(200);
/// How long after its arrival a watch whose keys stay quiet is answered anyway, with no events,
/// once the member's applied revision has moved past where it asked from (a progress
/// notification: the client learns `complete_to` at least this often while the cluster is
/// written, even with a longer wait).
pub(crate) const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

/// The watches in flight on a node.
#[derive(Debug, Default)]
pub(crate) struct Watches {
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_principal: HashMap<String, usize>,
}

/// A watch's place among the node's and its principal's (released when dropped).
#[derive(Debug)]
pub(crate) struct WatchSlot {
    watches: Arc<Watches>,
    principal: String,
}

impl Watches {
    /// A slot for a watch of `principal`, or the refusal (`Shed`, retry later).
    pub(crate) fn admit(self: &Arc<Self>, principal: &str) -> Result<WatchSlot, ApiError> {
        let mut c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if c.total >= WATCHES_PER_NODE_MAX {
            drop(c);
            return Err(crate::admission::shed(OverloadReason::QueueFull, RETRY_AFTER));
        }
        let mine = c.by_principal.get(principal).copied().unwrap_or(0);
        if mine >= WATCHES_PER_PRINCIPAL_MAX {
            drop(c);
            return Err(crate::admission::shed(OverloadReason::PrincipalRequests, RETRY_AFTER));
        }
        c.total += 1;
        c.by_principal.insert(principal.to_string(), mine + 1);
        Ok(WatchSlot { watches: self.clone(), principal: principal.to_string() })
    }

    /// Watches in flight on the node.
    pub(crate) fn in_flight(&self) -> usize {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner).total
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut c = self.watches.counts.lock().unwrap_or_else(PoisonError::into_inner);
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_principal.get_mut(&self.principal) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.by_principal.remove(&self.principal);
            }
        }
    }
}

/// Waits until the applied revision `revisions` reports passes `past`, or `deadline` comes:
/// whether it passed (`false` also when the node is shutting down).
pub(crate) async fn wait_past(
    revisions: &mut tokio::sync::watch::Receiver<u64>,
    past: u64,
    deadline: std::time::Instant,
) -> bool {
    matches!(tokio::time::timeout_at(deadline.into(), revisions.wait_for(|&r| r > past)).await, Ok(Ok(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_are_capped_per_principal_and_per_node_and_slots_come_back_when_dropped() {
        let w = Arc::new(Watches::default());
        let mine: Vec<WatchSlot> = (0..WATCHES_PER_PRINCIPAL_MAX).map(|_| w.admit("alice").unwrap()).collect();
        assert!(matches!(
            w.admit("alice"),
            Err(ApiError::Shed(o)) if o.reason == OverloadReason::PrincipalRequests
        ));
        let other = w.admit("bob").expect("another principal is not held up");
        drop(mine);
        assert_eq!(w.in_flight(), 1);
        let _again = w.admit("alice").expect("slots come back");
        drop(other);
        let mut many = Vec::new();
        for i in 0..WATCHES_PER_NODE_MAX - 1 {
            many.push(w.admit(&format!("p{}", i % 100)).unwrap());
        }
        assert!(matches!(w.admit("carol"), Err(ApiError::Shed(o)) if o.reason == OverloadReason::QueueFull));
    }
}
