//! Client requests between the transport's inbox and their dispatch by the driver.
//!
//! The driver reads client requests from the inbox, checks them (well-formed, role allowed),
//! and queues them here; it then dispatches them (admission, proposal or read) from this
//! queue, a bounded batch per turn of its loop. Status, health and version requests never
//! wait here: they are dispatched as they arrive ([`bypasses_queue`]).
//!
//! Today the queue is served in arrival order.

use quorate_admission::Principal;
use quorate_api::Request;
use std::collections::VecDeque;
use std::time::Duration;

/// Requests dispatched from the queue per turn of the driver's loop.
pub(crate) const DISPATCH_BATCH_MAX: usize = 64;
/// Requests waiting in all.
pub(crate) const WAITING_COUNT_MAX: usize = 8192;
/// The retry hint of a request refused because the queue is full.
pub(crate) const QUEUE_FULL_RETRY_AFTER: Duration = Duration::from_millis(50);

/// Whether `body` is dispatched at once, never queued behind other requests: status, health and
/// versions (an orchestrator's probes and a client's leader discovery stay answered under any
/// load).
pub(crate) fn bypasses_queue(body: &Request) -> bool {
    matches!(body, Request::Status | Request::Health | Request::Versions)
}

/// Fixed cost of any request, in bytes-equivalent: what the node spends on a request whatever
/// its size (decoding, admission, a proposal or a read round, an answer).
pub(crate) const REQUEST_COST_BASE: u64 = 4096;

/// The estimated cost of serving `body` (in bytes-equivalent: [`REQUEST_COST_BASE`], the bytes
/// it writes or names, and the answer bytes a scan or transaction is charged at admission),
/// and the bytes it holds while it waits.
pub(crate) fn cost_of(body: &Request) -> (u64, u64) {
    let bytes = crate::admission::request_bytes(body);
    let cost = REQUEST_COST_BASE
        .saturating_add(bytes)
        .saturating_add(crate::admission::answer_bytes_charged_at_admission(body));
    (cost, bytes)
}

/// The client requests waiting for dispatch.
#[derive(Debug)]
pub(crate) struct Waiting<T> {
    fifo: VecDeque<T>,
}

impl<T> Waiting<T> {
    pub(crate) fn new() -> Waiting<T> {
        Waiting { fifo: VecDeque::new() }
    }

    /// Queues `item`, a request of `principal` of cost and bytes [`cost_of`] its body; a full
    /// queue hands it back.
    pub(crate) fn push(&mut self, _principal: Principal, _cost: u64, _bytes: u64, item: T) -> Result<(), T> {
        if self.fifo.len() >= WAITING_COUNT_MAX {
            return Err(item);
        }
        self.fifo.push_back(item);
        Ok(())
    }

    /// The next request to dispatch.
    pub(crate) fn pop(&mut self) -> Option<T> {
        self.fifo.pop_front()
    }

    /// Whether nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.fifo.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::principal_of;
    use quorate_api::ReadConsistency;

    /// The most cost (bytes-equivalent) of other principals' requests dispatched before a
    /// principal's one cheap request, when one other principal has a deep backlog: two turns of
    /// 256 KiB of its cost.
    const CHEAP_REQUEST_WAIT_COST_MAX: u64 = 2 * 256 * 1024;

    #[test]
    fn a_deep_backlog_of_expensive_requests_does_not_delay_a_cheap_request_of_another_principal() {
        let (reader, writer) = (principal_of("reader"), principal_of("writer"));
        let scan =
            Request::Scan { start: b"a".to_vec(), end: None, limit: 10_000, read: ReadConsistency::Linearizable };
        let get = Request::Get { key: b"k".to_vec(), read: ReadConsistency::Linearizable };
        let mut q = Waiting::new();
        for _ in 0..500 {
            let (cost, bytes) = cost_of(&scan);
            q.push(reader, cost, bytes, (reader, cost)).unwrap_or_else(|_| panic!("room for the backlog"));
        }
        let (cost, bytes) = cost_of(&get);
        q.push(writer, cost, bytes, (writer, cost)).unwrap_or_else(|_| panic!("room for the get"));
        let (mut dispatched_before, mut cost_before) = (0, 0);
        loop {
            let (p, cost) = q.pop().expect("the get is dispatched");
            if p == writer {
                break;
            }
            dispatched_before += 1;
            cost_before += cost;
        }
        assert!(
            cost_before <= CHEAP_REQUEST_WAIT_COST_MAX && dispatched_before <= 2,
            "the writer's get waited for {dispatched_before} of the reader's scans (cost {cost_before})"
        );
    }
}
