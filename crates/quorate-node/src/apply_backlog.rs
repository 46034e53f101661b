//! The driver's side of the apply channel: the driver never waits on the apply thread.
//!
//! [`ApplyBacklog::push`] hands a message to the bounded apply channel with `try_send`; when
//! the channel is full (the apply thread is busy, e.g. with a large scan) the message waits
//! here, in order, and the driver's loop moves it on as soon as the channel has room
//! ([`ApplyBacklog::flush`], woken by a `reserve` branch of its `select!`). Meanwhile the
//! driver goes on serving timers, heartbeats and consensus messages.
//!
//! The backlog is bounded: on a leader, admission sheds client requests long before
//! ([`crate::admission`]: apply lag in entries, in-flight requests), so it stays far below its
//! bounds; a follower whose apply thread is slower than the leader's commit rate could reach
//! them, and only then does [`ApplyBacklog::push`] wait for the apply thread (counted in
//! `quorate_apply_backlog_waits_total`), the last resort that keeps memory bounded.

use crate::apply::ApplyMsg;
use crate::server::ServerError;
use std::collections::VecDeque;
use tokio::sync::mpsc::{self, error::TrySendError};

/// Most messages waiting for the apply channel in the driver.
pub(crate) const APPLY_BACKLOG_MAX: usize = 65_536;
/// Most bytes of committed entries waiting for the apply channel in the driver.
pub(crate) const APPLY_BACKLOG_BYTES_MAX: u64 = 512 << 20;
/// What a message other than committed entries is counted as (its bookkeeping).
const MESSAGE_OVERHEAD_BYTES: u64 = 256;

/// Messages for the apply thread that did not fit its channel yet, in order.
#[derive(Default)]
pub(crate) struct ApplyBacklog {
    queue: VecDeque<(ApplyMsg, u64)>,
    bytes: u64,
}

fn stopped() -> ServerError {
    ServerError::Fatal("the apply thread stopped".into())
}

fn weight(msg: &ApplyMsg) -> u64 {
    let entries = match msg {
        ApplyMsg::Entries(es) => es.iter().map(quorate_log::Entry::size_bytes).sum(),
        _ => 0,
    };
    entries + MESSAGE_OVERHEAD_BYTES
}

impl ApplyBacklog {
    /// Whether nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Sends `msg` after everything already waiting: at once if the channel has room,
    /// otherwise it waits here. Waits for the apply thread only when the backlog is over its
    /// bounds.
    pub(crate) async fn push(&mut self, tx: &mpsc::Sender<ApplyMsg>, msg: ApplyMsg) -> Result<(), ServerError> {
        let msg = if self.queue.is_empty() {
            match tx.try_send(msg) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(_)) => return Err(stopped()),
                Err(TrySendError::Full(m)) => m,
            }
        } else {
            msg
        };
        let w = weight(&msg);
        self.queue.push_back((msg, w));
        self.bytes += w;
        if self.queue.len() > APPLY_BACKLOG_MAX || self.bytes > APPLY_BACKLOG_BYTES_MAX {
            metrics::counter!(quorate_telemetry::names::APPLY_BACKLOG_WAITS_TOTAL).increment(1);
            tracing::warn!(
                messages = self.queue.len(),
                bytes = self.bytes,
                "apply backlog full: waiting for the apply thread"
            );
            while self.queue.len() > APPLY_BACKLOG_MAX || self.bytes > APPLY_BACKLOG_BYTES_MAX {
                let permit = tx.reserve().await.map_err(|_| stopped())?;
                self.send_front(permit);
            }
        }
        Ok(())
    }

    /// Takes the oldest waiting message (the caller holds room in the channel for it).
    pub(crate) fn pop(&mut self) -> Option<ApplyMsg> {
        let (msg, w) = self.queue.pop_front()?;
        self.bytes -= w;
        Some(msg)
    }

    fn send_front(&mut self, permit: mpsc::Permit<'_, ApplyMsg>) {
        if let Some(msg) = self.pop() {
            permit.send(msg);
        }
    }

    /// Moves waiting messages into the channel while it has room.
    pub(crate) fn flush(&mut self, tx: &mpsc::Sender<ApplyMsg>) -> Result<(), ServerError> {
        while !self.queue.is_empty() {
            match tx.try_reserve() {
                Ok(permit) => self.send_front(permit),
                Err(TrySendError::Full(())) => break,
                Err(TrySendError::Closed(())) => return Err(stopped()),
            }
        }
        Ok(())
    }
}
