//! How replicas reach each other.

use quorate_core::Message;
use quorate_log::{Data, NodeId, SnapshotMeta, Term};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// What one runtime sends another. Serializable (postcard) for real transports; variant
/// order is the wire format and is append-only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum WireMessage {
    /// A consensus message.
    Raft(Message),
    /// A leader's whole snapshot for a follower that needs compacted entries.
    Snapshot {
        /// The leader.
        from: NodeId,
        /// The follower.
        to: NodeId,
        /// The leader's term when it sent the snapshot.
        term: Term,
        /// What the snapshot covers.
        meta: SnapshotMeta,
        /// The runtime's snapshot bytes (sessions and state machine).
        data: Data,
    },
}

impl WireMessage {
    /// The recipient.
    #[must_use]
    pub fn to(&self) -> NodeId {
        match self {
            WireMessage::Raft(m) => m.to,
            WireMessage::Snapshot { to, .. } => *to,
        }
    }

    /// The sender.
    #[must_use]
    pub fn from(&self) -> NodeId {
        match self {
            WireMessage::Raft(m) => m.from,
            WireMessage::Snapshot { from, .. } => *from,
        }
    }
}

/// Sends messages to peers. Delivery is best effort: a message may be dropped, delayed,
/// duplicated or reordered (Raft tolerates all four), so `send` never blocks — an
/// implementation drops what it cannot queue within its bounds. Received messages are handed
/// to the recipient's [`Inbox`].
pub trait Network: Send + 'static {
    /// Queues `msg` for `msg.to()`.
    fn send(&mut self, msg: WireMessage);
}

/// The sending side of a node's bounded input queue for messages from peers. Cloneable;
/// [`Inbox::deliver`] drops the message when the queue is full.
#[derive(Clone, Debug)]
pub struct Inbox {
    pub(crate) tx: mpsc::Sender<WireMessage>,
}

impl Inbox {
    /// Hands a received message to the node. Returns false if it was dropped (queue full or
    /// node stopped).
    pub fn deliver(&self, msg: WireMessage) -> bool {
        self.tx.try_send(msg).is_ok()
    }
}

/// An in-process network: every node registers its [`Inbox`]; [`MemNetwork`] endpoints
/// deliver straight into the recipient's inbox. Nodes can be cut off with
/// [`MemRouter::isolate`].
#[derive(Clone, Debug, Default)]
pub struct MemRouter {
    inner: Arc<Mutex<RouterInner>>,
}

#[derive(Debug, Default)]
struct RouterInner {
    inboxes: BTreeMap<NodeId, Inbox>,
    isolated: std::collections::BTreeSet<NodeId>,
}

impl MemRouter {
    /// An empty router.
    #[must_use]
    pub fn new() -> MemRouter {
        MemRouter::default()
    }

    /// Routes messages for `id` to `inbox` (replacing an earlier registration).
    pub fn register(&self, id: NodeId, inbox: Inbox) {
        self.lock().inboxes.insert(id, inbox);
    }

    /// Cuts `id` off (`true`) or reconnects it (`false`): messages from or to it are dropped.
    pub fn isolate(&self, id: NodeId, isolated: bool) {
        let mut g = self.lock();
        if isolated {
            g.isolated.insert(id);
        } else {
            g.isolated.remove(&id);
        }
    }

    /// A sending endpoint.
    #[must_use]
    pub fn endpoint(&self) -> MemNetwork {
        MemNetwork { router: self.clone() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RouterInner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A sending endpoint of a [`MemRouter`].
#[derive(Clone, Debug)]
pub struct MemNetwork {
    router: MemRouter,
}

impl Network for MemNetwork {
    fn send(&mut self, msg: WireMessage) {
        let g = self.router.lock();
        if g.isolated.contains(&msg.to()) || g.isolated.contains(&msg.from()) {
            return;
        }
        if let Some(inbox) = g.inboxes.get(&msg.to()) {
            inbox.deliver(msg);
        }
    }
}

/// A [`Network`] that only collects what is sent, for a driver stepped by hand (the
/// simulator delivers the messages itself).
impl Network for Vec<WireMessage> {
    fn send(&mut self, msg: WireMessage) {
        self.push(msg);
    }
}
