//! The runtime's [`Network`] over the node's transport and the node's own peer messages: what
//! the node runs its replica with once it runs on `quorate-runtime` (issue 19). Every runtime
//! message maps onto one that released nodes speak, field for field, so a replica under the
//! runtime and a node running its own driver (0.1.0's included) understand each other:
//!
//! | runtime ([`WireMessage`]) | node ([`NodeMessage`]) | lane |
//! |---|---|---|
//! | `Raft` | `Raft` | consensus |
//! | `SnapshotChunk` (acknowledged) | `SnapshotPiece` (cluster version 2) | snapshot |
//! | `SnapshotAck` | `SnapshotAck` | consensus |
//! | `SnapshotStream` ([`quorate_runtime::TransferFormat::Stream`]) | `SnapshotChunk` (0.1.0's stream) | snapshot |
//!
//! The runtime's whole-image `Snapshot` is never sent (no node takes it). A received message
//! maps back with its sender as the transport authenticated it: one whose claimed sender is
//! another node is dropped. Hash samples and disk status are the node's own, beside the
//! runtime: [`from_peer`] hands them back for the node to handle.
//!
//! Pieces are bounded by the node's wire limit ([`SNAPSHOT_CHUNK_BYTES_MAX`], 1 MiB): the
//! node's runtime configuration keeps `snapshot_chunk_bytes` within it ([`CHUNK_BYTES_MAX`]),
//! and a larger piece is not sent ([`Network::send`] says so).

use quorate_api::limits::SNAPSHOT_CHUNK_BYTES_MAX;
use quorate_api::{NodeMessage, SnapshotAck, SnapshotChunk, SnapshotPiece};
use quorate_log::{Data, NodeId, SnapshotMeta};
use quorate_runtime::{AckStatus, Network, SnapshotHeader, StreamChunk, WireMessage};
use quorate_transport::{Lane, Transport};
use std::sync::Arc;

/// The largest snapshot piece the node's peers take: the runtime's `snapshot_chunk_bytes`
/// for the node stays within it.
pub(crate) const CHUNK_BYTES_MAX: usize = SNAPSHOT_CHUNK_BYTES_MAX;

/// The runtime's [`Network`] over the node's transport.
#[derive(Clone, Debug)]
pub(crate) struct PeerNetwork {
    transport: Arc<Transport<NodeMessage>>,
}

impl PeerNetwork {
    /// Sends through `transport` (whose peers are the members).
    pub(crate) fn new(transport: Arc<Transport<NodeMessage>>) -> PeerNetwork {
        PeerNetwork { transport }
    }
}

impl Network for PeerNetwork {
    fn send(&mut self, msg: WireMessage) -> bool {
        let Some((to, m, lane)) = to_node(msg) else { return false };
        match lane {
            Lane::Snapshot => self.transport.try_send_snapshot(to, m).is_ok(),
            _ => self.transport.try_send(to, m).is_ok(),
        }
    }
}

/// The node's message for a runtime message, its recipient and lane; `None` for what no node
/// takes (a whole-image snapshot, a piece over [`CHUNK_BYTES_MAX`]).
pub(crate) fn to_node(msg: WireMessage) -> Option<(NodeId, NodeMessage, Lane)> {
    let to = msg.to();
    let out = match msg {
        WireMessage::Raft(m) => (NodeMessage::Raft(m), Lane::Consensus),
        WireMessage::SnapshotChunk(c) => {
            if c.data.len() > CHUNK_BYTES_MAX {
                return None;
            }
            let piece = SnapshotPiece {
                term: c.term,
                meta: c.header.meta,
                total: c.header.total_len,
                checksum: c.header.checksum,
                offset: c.offset,
                data: c.data.as_ref().to_vec(),
                data_crc: c.data_crc,
                done: c.done,
            };
            (NodeMessage::SnapshotPiece(piece), Lane::Snapshot)
        }
        WireMessage::SnapshotAck(a) => {
            let ack = SnapshotAck {
                term: a.term,
                last: a.last,
                checksum: a.checksum,
                offset: a.offset,
                status: status_to_node(a.status)?,
            };
            (NodeMessage::SnapshotAck(ack), Lane::Consensus)
        }
        WireMessage::SnapshotStream(c) => {
            if c.data.len() > CHUNK_BYTES_MAX {
                return None;
            }
            let chunk = SnapshotChunk {
                term: c.term,
                meta: c.meta,
                offset: c.offset,
                total: c.total,
                data: c.data.as_ref().to_vec(),
            };
            (NodeMessage::SnapshotChunk(chunk), Lane::Snapshot)
        }
        _ => return None,
    };
    Some((to, out.0, out.1))
}

/// What a peer's message is to the node on the runtime.
#[derive(Debug, PartialEq)]
pub(crate) enum FromPeer {
    /// For the replica's inbox.
    Runtime(WireMessage),
    /// A runtime message to drop: it claims another sender, or another recipient.
    Drop,
    /// The node's own (hash samples, disk status, client traffic).
    Node(NodeMessage),
}

/// What peer `from` (as the transport authenticated it) sent to `me`.
pub(crate) fn from_peer(me: NodeId, from: NodeId, msg: NodeMessage) -> FromPeer {
    let m = match msg {
        NodeMessage::Raft(m) => {
            if m.from != from || m.to != me {
                return FromPeer::Drop;
            }
            WireMessage::Raft(m)
        }
        NodeMessage::SnapshotPiece(p) => {
            let header = SnapshotHeader::new(p.meta, p.total, p.checksum);
            let mut c = quorate_runtime::SnapshotChunk::new(from, me, p.term, header, p.offset, Data::from(p.data));
            // As sent: the runtime checks them (a corrupt piece is refused there).
            c.data_crc = p.data_crc;
            c.done = p.done;
            WireMessage::SnapshotChunk(c)
        }
        NodeMessage::SnapshotAck(a) => {
            let Some(status) = status_from_node(a.status) else { return FromPeer::Drop };
            let image = SnapshotHeader::new(SnapshotMeta { last: a.last, ..SnapshotMeta::default() }, 0, a.checksum);
            WireMessage::SnapshotAck(quorate_runtime::SnapshotAck::new(from, me, a.term, &image, a.offset, status))
        }
        NodeMessage::SnapshotChunk(c) => WireMessage::SnapshotStream(StreamChunk::new(
            from,
            me,
            c.term,
            c.meta,
            c.offset,
            c.total,
            Data::from(c.data),
        )),
        other => return FromPeer::Node(other),
    };
    FromPeer::Runtime(m)
}

fn status_to_node(s: AckStatus) -> Option<quorate_api::SnapshotAckStatus> {
    use quorate_api::SnapshotAckStatus as N;
    Some(match s {
        AckStatus::Staging => N::Staging,
        AckStatus::Installed => N::Installed,
        AckStatus::Refused => N::Refused,
        AckStatus::Restart => N::Restart,
        _ => return None,
    })
}

fn status_from_node(s: quorate_api::SnapshotAckStatus) -> Option<AckStatus> {
    use quorate_api::SnapshotAckStatus as N;
    Some(match s {
        N::Staging => AckStatus::Staging,
        N::Installed => AckStatus::Installed,
        N::Refused => AckStatus::Refused,
        N::Restart => AckStatus::Restart,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorate_core::{Message, MessageBody};
    use quorate_log::{Configuration, EntryId, LogIndex, Term};
    use quorate_transport::WireMessage as _;

    fn id(n: u64) -> NodeId {
        NodeId::new(n).expect("non-zero")
    }

    /// Through the node's wire: encoded and decoded as a peer's transport would.
    fn over_the_wire(m: &NodeMessage) -> NodeMessage {
        let mut buf = Vec::new();
        m.encode(&mut buf).expect("encodes");
        NodeMessage::decode(quorate_api::PROTOCOL_VERSION, m.kind(), &buf).expect("decodes")
    }

    fn image() -> (SnapshotHeader, Vec<u8>) {
        let meta = SnapshotMeta {
            last: EntryId::new(Term(4), LogIndex(90)),
            config: Configuration::with_voters([id(1), id(2), id(3)]).expect("valid"),
        };
        let bytes: Vec<u8> = (0..3_000u32).map(|i| (i % 251) as u8).collect();
        (SnapshotHeader::of(meta, &bytes), bytes)
    }

    #[test]
    fn every_runtime_message_crosses_the_nodes_wire_and_comes_back_the_same() {
        let (leader, follower) = (id(1), id(2));
        let (header, bytes) = image();
        let term = Term(5);
        let raft = Message { from: leader, to: follower, term, body: MessageBody::TimeoutNow };
        let chunk = quorate_runtime::SnapshotChunk::new(
            leader,
            follower,
            term,
            header.clone(),
            1_000,
            Data::copy_from(&bytes[1_000..2_000]),
        );
        let last = quorate_runtime::SnapshotChunk::new(
            leader,
            follower,
            term,
            header.clone(),
            2_000,
            Data::copy_from(&bytes[2_000..]),
        );
        assert!(last.done);
        let ack = quorate_runtime::SnapshotAck::new(follower, leader, term, &header, 2_000, AckStatus::Restart);
        let stream = StreamChunk::new(
            leader,
            follower,
            term,
            header.meta.clone(),
            0,
            header.total_len,
            Data::copy_from(&bytes[..1_000]),
        );
        let cases = [
            (WireMessage::Raft(raft), Lane::Consensus, quorate_api::kinds::RAFT),
            (WireMessage::SnapshotChunk(chunk), Lane::Snapshot, quorate_api::kinds::SNAPSHOT_PIECE),
            (WireMessage::SnapshotChunk(last), Lane::Snapshot, quorate_api::kinds::SNAPSHOT_PIECE),
            (WireMessage::SnapshotAck(ack), Lane::Consensus, quorate_api::kinds::SNAPSHOT_ACK),
            // 0.1.0's own stream message: what a 0.1.0 follower takes, and sends as leader.
            (WireMessage::SnapshotStream(stream), Lane::Snapshot, quorate_api::kinds::SNAPSHOT_CHUNK),
        ];
        for (msg, lane, kind) in cases {
            let (to, node, l) = to_node(msg.clone()).expect("a node message");
            assert_eq!((to, l, node.kind()), (msg.to(), lane, kind), "{msg:?}");
            assert_eq!(from_peer(to, msg.from(), over_the_wire(&node)), FromPeer::Runtime(msg));
        }
    }

    #[test]
    fn claimed_senders_unsendable_pieces_and_the_nodes_own_messages_are_told_apart() {
        let (me, peer, liar) = (id(2), id(1), id(3));
        // A Raft message claiming another sender (or addressed elsewhere) is dropped.
        let m = Message { from: liar, to: me, term: Term(5), body: MessageBody::TimeoutNow };
        assert_eq!(from_peer(me, peer, NodeMessage::Raft(m.clone())), FromPeer::Drop);
        let elsewhere = Message { from: peer, to: liar, ..m };
        assert_eq!(from_peer(me, peer, NodeMessage::Raft(elsewhere)), FromPeer::Drop);
        // Pieces take their sender from the transport, never from the bytes.
        let (header, bytes) = image();
        let piece = SnapshotChunk {
            term: Term(5),
            meta: header.meta.clone(),
            offset: 0,
            total: header.total_len,
            data: bytes[..10].to_vec(),
        };
        match from_peer(me, peer, NodeMessage::SnapshotChunk(piece)) {
            FromPeer::Runtime(WireMessage::SnapshotStream(c)) => assert_eq!((c.from, c.to), (peer, me)),
            other => panic!("a stream piece: {other:?}"),
        }
        // The node's own messages go back to it.
        let disk = NodeMessage::DiskStatus(quorate_api::DiskStatus::default());
        assert_eq!(from_peer(me, peer, disk.clone()), FromPeer::Node(disk));
        // Nothing a node cannot take is sent: a whole image, a piece over the wire's limit.
        let whole = WireMessage::Snapshot {
            from: peer,
            to: me,
            term: Term(5),
            meta: header.meta.clone(),
            data: Data::copy_from(&bytes),
        };
        assert!(to_node(whole).is_none());
        let big = vec![7u8; CHUNK_BYTES_MAX + 1];
        let header = SnapshotHeader::of(header.meta, &big);
        let over = quorate_runtime::SnapshotChunk::new(peer, me, Term(5), header.clone(), 0, Data::from(big.clone()));
        assert!(to_node(WireMessage::SnapshotChunk(over)).is_none());
        let over = StreamChunk::new(peer, me, Term(5), header.meta, 0, header.total_len, Data::from(big));
        assert!(to_node(WireMessage::SnapshotStream(over)).is_none());
    }
}
