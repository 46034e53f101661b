//! Bounded queues that refuse explicitly.

use std::collections::VecDeque;
use std::fmt;

use crate::class::Class;

/// Why a push was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueueRefusal {
    /// The queue holds `capacity_count` items already.
    #[error("queue full ({capacity_count} items)")]
    Full {
        /// The queue's fixed capacity.
        capacity_count: usize,
    },
    /// The principal has `capacity_count` items queued already ([`FairQueue`](crate::FairQueue)).
    #[error("principal's queue full ({capacity_count} items)")]
    PrincipalFull {
        /// The per-principal capacity.
        capacity_count: usize,
    },
    /// The item would take the principal's queued bytes over `capacity_bytes`.
    #[error("principal's queued bytes over {capacity_bytes}")]
    PrincipalBytes {
        /// The per-principal byte capacity.
        capacity_bytes: u64,
    },
    /// The item would take the queued bytes over `capacity_bytes`.
    #[error("queued bytes over {capacity_bytes}")]
    Bytes {
        /// The byte capacity.
        capacity_bytes: u64,
    },
    /// `capacity_count` principals have items queued already, and this one is new.
    #[error("too many principals waiting ({capacity_count})")]
    Principals {
        /// The most principals with items queued.
        capacity_count: usize,
    },
}

/// A refused push: the item comes back to the caller, who decides what to do with it (answer
/// `Overloaded`, drop it, count it). Nothing is lost silently.
#[derive(PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Refused<T> {
    /// The item that was not queued.
    pub item: T,
    /// Why.
    pub reason: QueueRefusal,
}

impl<T> fmt::Debug for Refused<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Refused").field("reason", &self.reason).finish_non_exhaustive()
    }
}

/// A FIFO queue with a fixed capacity, allocated up front. `try_push` never grows it.
#[derive(Debug, Clone)]
pub struct BoundedQueue<T> {
    items: VecDeque<T>,
    capacity_count: usize,
}

impl<T> BoundedQueue<T> {
    /// A queue that holds at most `capacity_count` items (`> 0`).
    ///
    /// # Panics
    /// If `capacity_count` is zero: a queue that refuses everything is a configuration bug.
    pub fn new(capacity_count: usize) -> BoundedQueue<T> {
        assert!(capacity_count > 0, "a bounded queue needs a capacity");
        BoundedQueue { items: VecDeque::with_capacity(capacity_count), capacity_count }
    }

    /// Appends `item`, or hands it back with the reason if the queue is full.
    pub fn try_push(&mut self, item: T) -> Result<(), Refused<T>> {
        if self.items.len() >= self.capacity_count {
            return Err(Refused { item, reason: QueueRefusal::Full { capacity_count: self.capacity_count } });
        }
        self.items.push_back(item);
        debug_assert!(self.items.len() <= self.capacity_count);
        Ok(())
    }

    /// Removes the oldest item.
    pub fn pop(&mut self) -> Option<T> {
        self.items.pop_front()
    }

    /// The oldest item, without removing it.
    pub fn peek(&self) -> Option<&T> {
        self.items.front()
    }

    /// Items queued.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether a push would be refused.
    pub fn is_full(&self) -> bool {
        self.items.len() >= self.capacity_count
    }

    /// The fixed capacity.
    pub fn capacity_count(&self) -> usize {
        self.capacity_count
    }
}

/// One [`BoundedQueue`] per [`Class`], drained by priority: `Consensus` always first (never
/// behind client traffic), then `ClientWrite` and `ClientRead` alternately (neither starves
/// the other), then `Background` only when no client work waits.
///
/// Every lane is bounded, `Consensus` included: size its lane from the transport's per-peer
/// bounds so that it cannot fill in practice. A refused consensus message is handed back like
/// any other and the caller decides (a raft message can always be dropped and resent).
#[derive(Debug, Clone)]
pub struct ClassQueues<T> {
    lanes: [BoundedQueue<T>; 4],
    /// Which client lane goes first on the next pop when both have work.
    read_turn: bool,
}

impl<T> ClassQueues<T> {
    /// Lanes with the given capacities, indexed by [`Class::index`].
    pub fn new(capacity_count: [usize; 4]) -> ClassQueues<T> {
        ClassQueues { lanes: capacity_count.map(BoundedQueue::new), read_turn: false }
    }

    /// Queues `item` in the lane of `class`, or hands it back.
    pub fn try_push(&mut self, class: Class, item: T) -> Result<(), Refused<T>> {
        self.lanes[class.index()].try_push(item)
    }

    /// The next item by priority, with its class.
    pub fn pop(&mut self) -> Option<(Class, T)> {
        if let Some(item) = self.lanes[Class::Consensus.index()].pop() {
            return Some((Class::Consensus, item));
        }
        let order = if self.read_turn {
            [Class::ClientRead, Class::ClientWrite]
        } else {
            [Class::ClientWrite, Class::ClientRead]
        };
        for class in order {
            if let Some(item) = self.lanes[class.index()].pop() {
                self.read_turn = class == Class::ClientWrite;
                return Some((class, item));
            }
        }
        self.lanes[Class::Background.index()].pop().map(|item| (Class::Background, item))
    }

    /// Items queued in the lane of `class`.
    pub fn len(&self, class: Class) -> usize {
        self.lanes[class.index()].len()
    }

    /// Whether every lane is empty.
    pub fn is_empty(&self) -> bool {
        self.lanes.iter().all(BoundedQueue::is_empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_hands_the_item_back() {
        let mut q = BoundedQueue::new(2);
        q.try_push("a").unwrap();
        q.try_push("b").unwrap();
        assert!(q.is_full());
        let refused = q.try_push("c").unwrap_err();
        assert_eq!(refused.item, "c");
        assert_eq!(refused.reason, QueueRefusal::Full { capacity_count: 2 });
        assert_eq!(refused.to_string(), "queue full (2 items)");
        assert_eq!(q.pop(), Some("a"));
        q.try_push("c").unwrap();
        assert_eq!((q.pop(), q.pop(), q.pop()), (Some("b"), Some("c"), None));
        assert!(q.is_empty());
    }

    #[test]
    #[should_panic(expected = "capacity")]
    fn zero_capacity_is_a_bug() {
        let _ = BoundedQueue::<u8>::new(0);
    }

    #[test]
    fn consensus_is_never_behind_client_work() {
        let mut q = ClassQueues::new([4, 8, 8, 8]);
        for i in 0..8 {
            q.try_push(Class::ClientWrite, i).unwrap();
            q.try_push(Class::ClientRead, 100 + i).unwrap();
            q.try_push(Class::Background, 200 + i).unwrap();
        }
        assert!(q.try_push(Class::ClientWrite, 9).is_err());
        q.try_push(Class::Consensus, 1000).unwrap();
        assert_eq!(q.pop(), Some((Class::Consensus, 1000)));
        // Writes and reads alternate; background waits for both.
        let next: Vec<Class> = (0..4).map(|_| q.pop().unwrap().0).collect();
        assert_eq!(next, [Class::ClientWrite, Class::ClientRead, Class::ClientWrite, Class::ClientRead]);
        q.try_push(Class::Consensus, 1001).unwrap();
        assert_eq!(q.pop(), Some((Class::Consensus, 1001)));
        let mut classes = Vec::new();
        while let Some((class, _)) = q.pop() {
            classes.push(class);
        }
        assert_eq!(classes.len(), 20);
        assert!(classes[..12].iter().all(|c| *c != Class::Background));
        assert!(classes[12..].iter().all(|c| *c == Class::Background));
        assert!(q.is_empty());
    }
}
