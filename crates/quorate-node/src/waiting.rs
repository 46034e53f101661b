//! Client requests between the transport's inbox and their dispatch by the driver: fair
//! scheduling across principals.
//!
//! The driver reads client requests from the inbox (up to [`REQUESTS_READ_MAX`] per turn of
//! its loop), checks them (well-formed, role allowed) and queues them here, in one lane per
//! principal ([`quorate_admission::FairQueue`]); it dispatches them (admission, then a
//! proposal or a read) from here, [`DISPATCH_BATCH_MAX`] per turn, by deficit round robin:
//! each request is charged its estimated cost ([`cost_of`]: a fixed [`REQUEST_COST_BASE`],
//! the bytes it writes or names, and the answer bytes a scan or transaction is charged at
//! admission), and each principal with requests waiting is served about [`QUANTUM_COST`] of
//! cost per turn. A principal with a deep backlog of expensive requests then delays another
//! principal's request by one turn (less than `2 × QUANTUM_COST` of its cost), not by its
//! whole backlog; a busy honest principal and a flood of cheap requests get the same cost of
//! service.
//!
//! Status, health and version requests never wait here: they are dispatched as they arrive
//! ([`bypasses_queue`]). A request over one of the queue's bounds (per principal: requests
//! and bytes; in all: requests, bytes and principals) is answered at once with
//! `Shed(QueueFull)` and a retry hint of [`QUEUE_FULL_RETRY_AFTER`], before any work.

use quorate_admission::{FairLimits, FairQueue, Principal};
use quorate_api::Request;
use std::time::Duration;

/// Requests dispatched from the queue per turn of the driver's loop.
pub(crate) const DISPATCH_BATCH_MAX: usize = 64;
/// Client requests read from the inbox into the queue per turn of the driver's loop (more than
/// it dispatches: requests wait here, in their principals' lanes, rather than in the inbox in
/// arrival order).
pub(crate) const REQUESTS_READ_MAX: usize = 512;
/// Cost credited to each principal with requests waiting per turn; a request costs at most
/// this much (larger answers are bounded further by admission's answer-byte rate).
pub(crate) const QUANTUM_COST: u64 = 256 * 1024;
/// Principals with requests waiting at once.
pub(crate) const WAITING_PRINCIPALS_MAX: usize = 1024;
/// Requests waiting per principal.
pub(crate) const PRINCIPAL_WAITING_COUNT_MAX: usize = 512;
/// Requests waiting in all (the transport's inbox holds as many).
pub(crate) const WAITING_COUNT_MAX: usize = 8192;
/// Bytes of requests ([`crate::admission::request_bytes`]) waiting per principal.
pub(crate) const PRINCIPAL_WAITING_BYTES_MAX: u64 = 64 << 20;
/// Bytes of requests waiting in all.
pub(crate) const WAITING_BYTES_MAX: u64 = 256 << 20;
/// The retry hint of a request refused because the queue is full.
pub(crate) const QUEUE_FULL_RETRY_AFTER: Duration = Duration::from_millis(50);

// Any one request the API accepts fits an empty lane.
const _: () = assert!(quorate_api::limits::MESSAGE_BYTES_MAX as u64 <= PRINCIPAL_WAITING_BYTES_MAX);
const _: () = assert!(PRINCIPAL_WAITING_BYTES_MAX <= WAITING_BYTES_MAX);
const _: () = assert!(PRINCIPAL_WAITING_COUNT_MAX <= WAITING_COUNT_MAX && DISPATCH_BATCH_MAX <= REQUESTS_READ_MAX);

/// The queue's bounds.
const LIMITS: FairLimits = FairLimits {
    principals_max: WAITING_PRINCIPALS_MAX,
    principal_count_max: PRINCIPAL_WAITING_COUNT_MAX,
    count_max: WAITING_COUNT_MAX,
    principal_bytes_max: PRINCIPAL_WAITING_BYTES_MAX,
    bytes_max: WAITING_BYTES_MAX,
    quantum_cost: QUANTUM_COST,
};

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
/// it writes or names, and the answer bytes a scan or transaction is charged at admission; at
/// most [`QUANTUM_COST`]), and the bytes it holds while it waits.
pub(crate) fn cost_of(body: &Request) -> (u64, u64) {
    let bytes = crate::admission::request_bytes(body);
    let cost = REQUEST_COST_BASE
        .saturating_add(bytes)
        .saturating_add(crate::admission::answer_bytes_charged_at_admission(body));
    (cost.min(QUANTUM_COST), bytes)
}

/// The client requests waiting for dispatch, one lane per principal.
#[derive(Debug)]
pub(crate) struct Waiting<T> {
    queue: FairQueue<T>,
}

impl<T> Waiting<T> {
    pub(crate) fn new() -> Waiting<T> {
        // The bounds are constants, checked by a test.
        Waiting { queue: FairQueue::new(LIMITS).expect("the queue's bounds are valid") }
    }

    /// Queues `item`, a request of `principal` of cost and bytes [`cost_of`] its body; a
    /// request over one of the queue's bounds is handed back.
    pub(crate) fn push(&mut self, principal: Principal, cost: u64, bytes: u64, item: T) -> Result<(), T> {
        self.queue.try_push(principal, cost, bytes, item).map_err(|r| r.item)
    }

    /// The next request to dispatch, by deficit round robin across principals.
    pub(crate) fn pop(&mut self) -> Option<T> {
        self.queue.pop().map(|(_, _, item)| item)
    }

    /// Whether nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Requests waiting.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    /// Requests, bytes and principals waiting (the `quorate_requests_waiting_*` gauges).
    pub(crate) fn sizes(&self) -> (usize, u64, usize) {
        (self.queue.len(), self.queue.bytes(), self.queue.principal_count())
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
    const _: () = assert!(2 * QUANTUM_COST <= CHEAP_REQUEST_WAIT_COST_MAX);

    #[test]
    fn the_bounds_are_valid() {
        LIMITS.validate().expect("valid");
    }

    #[test]
    fn a_flood_is_refused_in_its_own_lane_and_others_still_queue() {
        let (flood, other) = (principal_of("flood"), principal_of("other"));
        let get = Request::Get { key: b"k".to_vec(), read: ReadConsistency::Linearizable };
        let (cost, bytes) = cost_of(&get);
        let mut q = Waiting::new();
        let queued = (0..PRINCIPAL_WAITING_COUNT_MAX * 2).filter(|i| q.push(flood, cost, bytes, *i).is_ok()).count();
        assert_eq!(queued, PRINCIPAL_WAITING_COUNT_MAX);
        assert!(q.push(other, cost, bytes, usize::MAX).is_ok());
        assert_eq!(q.len(), PRINCIPAL_WAITING_COUNT_MAX + 1);
        // The other principal's request is dispatched after one turn of the flood's lane.
        let before = std::iter::from_fn(|| q.pop()).position(|i| i == usize::MAX).expect("dispatched");
        assert!(before as u64 <= 2 * QUANTUM_COST / cost, "{before} of the flood's requests first");
        assert!(before < PRINCIPAL_WAITING_COUNT_MAX / 4, "{before} of the flood's requests first");
    }

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
