//! How replicas reach each other.

use crate::storage::SnapshotHeader;
use quorate_core::Message;
use quorate_log::{Data, EntryId, NodeId, SnapshotMeta, Term};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// What one runtime sends another. Serializable (postcard) for real transports; variant
/// order is the wire format and is append-only.
///
/// The runtime is pre-release: this format is not yet promised to any released node. Since
/// snapshots travel in chunks ([`WireMessage::SnapshotChunk`]), a leader no longer sends
/// [`WireMessage::Snapshot`]; the variant stays decodable, and a follower still accepts it
/// (as a transfer of one piece, within `Config::snapshot_staging_bytes_max`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum WireMessage {
    /// A consensus message.
    Raft(Message),
    /// A leader's whole snapshot for a follower that needs compacted entries (no longer sent:
    /// see the type's docs).
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
    /// A piece of a leader's snapshot for a follower that needs compacted entries.
    SnapshotChunk(SnapshotChunk),
    /// A follower's answer to a chunk: how much of the snapshot it holds durably.
    SnapshotAck(SnapshotAck),
    /// A piece of a snapshot sent as one ordered stream, unanswered
    /// ([`TransferFormat::Stream`]): how nodes that predate acknowledged transfers send and
    /// take snapshots.
    SnapshotStream(StreamChunk),
}

/// How a leader sends snapshots to its followers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransferFormat {
    /// In acknowledged chunks ([`WireMessage::SnapshotChunk`], answered with
    /// [`WireMessage::SnapshotAck`]): resumable from the last acknowledged byte after a
    /// dropped connection or a restart, within a window of unacknowledged bytes.
    #[default]
    Acknowledged,
    /// As one ordered stream of [`WireMessage::SnapshotStream`] pieces from offset 0, which
    /// the follower does not answer; a stream that breaks (a lost piece, a dropped
    /// connection) is sent again from the start once the core asks again. For a cluster with
    /// members that take only this (a host whose older releases streamed snapshots maps these
    /// pieces onto its old messages). The network must keep a stream's pieces in order:
    /// [`Network::send`] returning `false` makes the leader send that piece again, and a
    /// follower drops a stream at its first gap.
    Stream,
}

/// A piece of a snapshot stream ([`TransferFormat::Stream`]): bytes `offset..offset +
/// data.len()` of an image of `total` bytes covering `meta`. No checksum of the whole image
/// travels (the follower computes it as the pieces arrive, and the state machine's `restore`
/// checks the image's own format).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StreamChunk {
    /// The leader.
    pub from: NodeId,
    /// The follower.
    pub to: NodeId,
    /// The leader's term.
    pub term: Term,
    /// What the snapshot covers.
    pub meta: SnapshotMeta,
    /// Where `data` starts in the image.
    pub offset: u64,
    /// Length of the whole image in bytes.
    pub total: u64,
    /// The bytes.
    pub data: Data,
}

impl StreamChunk {
    /// Bytes `offset..offset + data.len()` of an image of `total` bytes covering `meta`.
    #[must_use]
    pub fn new(
        from: NodeId,
        to: NodeId,
        term: Term,
        meta: SnapshotMeta,
        offset: u64,
        total: u64,
        data: Data,
    ) -> StreamChunk {
        StreamChunk { from, to, term, meta, offset, total, data }
    }
}

/// A piece of a snapshot in transfer: bytes `offset..offset + data.len()` of the image that
/// `header` identifies. A transfer starts with an empty chunk at offset 0, which asks the
/// follower how much of this image it already holds (after a dropped connection or a restart
/// it resumes from there).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SnapshotChunk {
    /// The leader.
    pub from: NodeId,
    /// The follower.
    pub to: NodeId,
    /// The leader's term; a follower takes chunks only from the leader of its current term.
    pub term: Term,
    /// The image: what it covers, its length and its checksum.
    pub header: SnapshotHeader,
    /// Where `data` starts in the image.
    pub offset: u64,
    /// The bytes.
    pub data: Data,
    /// CRC-32 (IEEE) of `data`.
    pub data_crc: u32,
    /// Whether this is the last piece (`offset + data.len() == header.total_len`).
    pub done: bool,
}

impl SnapshotChunk {
    /// Bytes `offset..offset + data.len()` of the image `header` describes.
    #[must_use]
    pub fn new(from: NodeId, to: NodeId, term: Term, header: SnapshotHeader, offset: u64, data: Data) -> SnapshotChunk {
        let done = offset.saturating_add(data.len() as u64) == header.total_len;
        let data_crc = crc32fast::hash(&data);
        SnapshotChunk { from, to, term, header, offset, data, data_crc, done }
    }
}

impl SnapshotAck {
    /// `from`'s answer to `to` about the image `header`: `offset` bytes held, `status`.
    #[must_use]
    pub fn new(
        from: NodeId,
        to: NodeId,
        term: Term,
        header: &SnapshotHeader,
        offset: u64,
        status: AckStatus,
    ) -> SnapshotAck {
        SnapshotAck { from, to, term, last: header.meta.last, checksum: header.checksum, offset, status }
    }
}

/// What a follower did with a snapshot chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AckStatus {
    /// Staging: `offset` bytes are staged durably; send from there.
    Staging,
    /// The snapshot is installed (or the follower already has all it covers): stop.
    Installed,
    /// The follower will not take this snapshot (over its staging limit, a storage failure,
    /// or an image that does not decode): stop; the leader's core probes it again later.
    Refused,
    /// The follower starts this image over at `offset` (its staging was lost, or the complete
    /// image failed its checksum): send from `offset` now, even below what it acknowledged.
    Restart,
}

/// A follower's answer to a [`SnapshotChunk`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SnapshotAck {
    /// The follower.
    pub from: NodeId,
    /// The leader.
    pub to: NodeId,
    /// The chunk's term.
    pub term: Term,
    /// The snapshot's last entry (with `checksum`, which image).
    pub last: EntryId,
    /// The image's checksum.
    pub checksum: u32,
    /// Bytes of the image the follower holds durably: where the next chunk must start.
    pub offset: u64,
    /// What the follower did.
    pub status: AckStatus,
}

impl WireMessage {
    /// The recipient.
    #[must_use]
    pub fn to(&self) -> NodeId {
        match self {
            WireMessage::Raft(m) => m.to,
            WireMessage::Snapshot { to, .. } => *to,
            WireMessage::SnapshotChunk(c) => c.to,
            WireMessage::SnapshotAck(a) => a.to,
            WireMessage::SnapshotStream(c) => c.to,
        }
    }

    /// The sender.
    #[must_use]
    pub fn from(&self) -> NodeId {
        match self {
            WireMessage::Raft(m) => m.from,
            WireMessage::Snapshot { from, .. } => *from,
            WireMessage::SnapshotChunk(c) => c.from,
            WireMessage::SnapshotAck(a) => a.from,
            WireMessage::SnapshotStream(c) => c.from,
        }
    }
}

/// Sends messages to peers. Delivery is best effort: a message may be dropped, delayed,
/// duplicated or reordered (Raft tolerates all four), so `send` never blocks — an
/// implementation drops what it cannot queue within its bounds, and says so. Pieces of a
/// snapshot stream ([`WireMessage::SnapshotStream`]) between two peers must keep their order
/// (a lane of their own, as [`WireMessage::SnapshotChunk`]s have on a real transport).
/// Received messages are handed to the recipient's [`Inbox`].
pub trait Network: Send + 'static {
    /// Queues `msg` for `msg.to()`. Returns false if `msg` was dropped at once (its queue
    /// is full, or the peer is unknown); a message queued may still be lost on the way.
    fn send(&mut self, msg: WireMessage) -> bool;
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
    fn send(&mut self, msg: WireMessage) -> bool {
        let g = self.router.lock();
        if g.isolated.contains(&msg.to()) || g.isolated.contains(&msg.from()) {
            // Lost on the way: the sender cannot tell.
            return true;
        }
        g.inboxes.get(&msg.to()).is_some_and(|inbox| inbox.deliver(msg))
    }
}

/// A [`Network`] that only collects what is sent, for a driver stepped by hand (the
/// simulator delivers the messages itself).
impl Network for Vec<WireMessage> {
    fn send(&mut self, msg: WireMessage) -> bool {
        self.push(msg);
        true
    }
}
