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
//! **Waiting.** When this member has applied nothing at or after the asked revision, the
//! request waits (up to its `wait_ms`, at most [`quorate_api::limits::WATCH_WAIT_MS_MAX`]) for
//! the applied revision to reach it, then is read. A watch on a quiet key is answered each time
//! the member's revision moves, with no events and a larger `complete_to` (a progress
//! notification).
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

/// Waits until the applied revision `revisions` reports reaches `from`, or `wait` passes.
pub(crate) async fn wait_for_revision(mut revisions: tokio::sync::watch::Receiver<u64>, from: u64, wait: Duration) {
    let _ = tokio::time::timeout(wait, revisions.wait_for(|&r| r >= from)).await;
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
