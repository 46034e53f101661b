//! The runtime's [`Network`](crate::Network) over quorate-transport: QUIC with mutual TLS and
//! certificate-bound node identities (cargo feature `quic`).

use crate::network::{Inbox, Network, WireMessage};
use quorate_transport::{Incoming, MessageError, MessageKind, Request, Transport};
use std::sync::Arc;
use tokio::sync::mpsc;

/// The message kind of a runtime consensus message.
pub const KIND_RAFT: MessageKind = MessageKind(MessageKind::APPLICATION_MIN);
/// The message kind of a runtime snapshot.
pub const KIND_SNAPSHOT: MessageKind = MessageKind(MessageKind::APPLICATION_MIN + 1);
/// The message kind of a runtime snapshot chunk (sent on the snapshot lane).
pub const KIND_SNAPSHOT_CHUNK: MessageKind = MessageKind(MessageKind::APPLICATION_MIN + 2);
/// The message kind of a follower's answer to a snapshot chunk.
pub const KIND_SNAPSHOT_ACK: MessageKind = MessageKind(MessageKind::APPLICATION_MIN + 3);
/// The message kind of a piece of a runtime snapshot stream (sent on the snapshot lane).
pub const KIND_SNAPSHOT_STREAM: MessageKind = MessageKind(MessageKind::APPLICATION_MIN + 4);
/// The first message kind left to the application (its client requests and responses).
pub const KIND_APP_MIN: u16 = MessageKind::APPLICATION_MIN + 0x100;

/// What travels on a runtime's QUIC transport: the runtime's own messages, or the
/// application's (kinds from [`KIND_APP_MIN`] on, bytes it encodes itself).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum QuicMessage {
    /// Between replicas.
    Runtime(WireMessage),
    /// The application's own request or response.
    App {
        /// Its kind (at least [`KIND_APP_MIN`]).
        kind: u16,
        /// Its bytes.
        payload: Vec<u8>,
    },
}

impl quorate_transport::WireMessage for QuicMessage {
    fn kind(&self) -> MessageKind {
        match self {
            QuicMessage::Runtime(m) => runtime_kind(m),
            QuicMessage::App { kind, .. } => MessageKind(*kind),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) -> Result<(), MessageError> {
        match self {
            QuicMessage::Runtime(m) => {
                let bytes = postcard::to_allocvec(m).map_err(|e| MessageError::Encode(e.to_string()))?;
                out.extend_from_slice(&bytes);
            }
            QuicMessage::App { kind, payload } => {
                if *kind < KIND_APP_MIN {
                    return Err(MessageError::Encode(format!("application kind {kind} below {KIND_APP_MIN}")));
                }
                out.extend_from_slice(payload);
            }
        }
        Ok(())
    }

    fn decode(_version: u16, kind: MessageKind, payload: &[u8]) -> Result<Self, MessageError> {
        let runtime = |payload: &[u8]| {
            postcard::from_bytes::<WireMessage>(payload)
                .map_err(|e| MessageError::Malformed { kind, detail: e.to_string() })
        };
        match kind {
            KIND_RAFT | KIND_SNAPSHOT | KIND_SNAPSHOT_CHUNK | KIND_SNAPSHOT_ACK | KIND_SNAPSHOT_STREAM => {
                let m = runtime(payload)?;
                if runtime_kind(&m) != kind {
                    return Err(MessageError::Malformed { kind, detail: "payload of another kind".into() });
                }
                Ok(QuicMessage::Runtime(m))
            }
            MessageKind(k) if k >= KIND_APP_MIN => Ok(QuicMessage::App { kind: k, payload: payload.to_vec() }),
            other => Err(MessageError::UnknownKind(other)),
        }
    }
}

/// The message kind of a runtime message.
fn runtime_kind(m: &WireMessage) -> MessageKind {
    match m {
        WireMessage::Raft(_) => KIND_RAFT,
        WireMessage::SnapshotChunk(_) => KIND_SNAPSHOT_CHUNK,
        WireMessage::SnapshotAck(_) => KIND_SNAPSHOT_ACK,
        WireMessage::SnapshotStream(_) => KIND_SNAPSHOT_STREAM,
        // `Snapshot`, and any later variant: the snapshot kind.
        _ => KIND_SNAPSHOT,
    }
}

/// A [`Network`] that sends through a quorate-transport [`Transport`]: consensus messages on
/// the consensus lane (with the answers to snapshot chunks), snapshots and their chunks on the
/// snapshot lane. A full per-peer queue drops the message
/// (Raft retransmits). Peers must be known to the transport ([`Transport::add_peer`]).
#[derive(Clone, Debug)]
pub struct QuicNetwork {
    transport: Arc<Transport<QuicMessage>>,
}

impl QuicNetwork {
    /// Sends through `transport`.
    #[must_use]
    pub fn new(transport: Arc<Transport<QuicMessage>>) -> QuicNetwork {
        QuicNetwork { transport }
    }
}

impl Network for QuicNetwork {
    fn send(&mut self, msg: WireMessage) -> bool {
        let to = msg.to();
        let snapshot = matches!(
            msg,
            WireMessage::Snapshot { .. } | WireMessage::SnapshotChunk(_) | WireMessage::SnapshotStream(_)
        );
        let m = QuicMessage::Runtime(msg);
        // Dropped messages are retransmitted by the protocol; the sender hears of the drop.
        if snapshot { self.transport.try_send_snapshot(to, m) } else { self.transport.try_send(to, m) }.is_ok()
    }
}

/// Runs until the transport closes: hands peers' runtime messages to the node's `inbox` —
/// only those whose claimed sender is the peer its certificate names — and the application's
/// client requests to `requests` (dropped, unanswered, when that queue is full).
pub async fn pump(
    mut incoming: quorate_transport::Inbox<QuicMessage>,
    inbox: Inbox,
    requests: mpsc::Sender<Request<QuicMessage>>,
) {
    while let Some(next) = incoming.recv().await {
        match next {
            Incoming::Peer { from, message: QuicMessage::Runtime(m), .. } if m.from() == from => {
                inbox.deliver(m);
            }
            Incoming::Request(r) => {
                let _ = requests.try_send(r);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorate_transport::WireMessage as _;

    #[test]
    fn messages_round_trip_and_garbage_is_an_error() {
        let id = quorate_log::NodeId::new(1).expect("non-zero");
        let m = QuicMessage::Runtime(WireMessage::Snapshot {
            from: id,
            to: id,
            term: quorate_log::Term(3),
            meta: quorate_log::SnapshotMeta::default(),
            data: quorate_log::Data::from(vec![1, 2, 3]),
        });
        let mut buf = Vec::new();
        m.encode(&mut buf).expect("encodes");
        assert_eq!(QuicMessage::decode(1, m.kind(), &buf), Ok(m));
        assert!(QuicMessage::decode(1, KIND_RAFT, &buf).is_err(), "a snapshot under the raft kind");
        assert!(QuicMessage::decode(1, KIND_RAFT, &[0xff, 0xff, 0xff]).is_err());
        assert!(QuicMessage::decode(1, MessageKind(MessageKind::APPLICATION_MIN + 7), &[]).is_err());
        let meta = quorate_log::SnapshotMeta::default();
        let header = crate::SnapshotHeader::of(meta, b"image");
        let chunk =
            crate::SnapshotChunk::new(id, id, quorate_log::Term(3), header, 1, quorate_log::Data::from(&b"mag"[..]));
        let ack = crate::SnapshotAck {
            from: id,
            to: id,
            term: quorate_log::Term(3),
            last: chunk.header.meta.last,
            checksum: chunk.header.checksum,
            offset: 4,
            status: crate::AckStatus::Staging,
        };
        let meta = chunk.header.meta.clone();
        let piece =
            crate::StreamChunk::new(id, id, quorate_log::Term(3), meta, 2, 5, quorate_log::Data::from(&b"age"[..]));
        for (m, kind) in [
            (QuicMessage::Runtime(WireMessage::SnapshotChunk(chunk)), KIND_SNAPSHOT_CHUNK),
            (QuicMessage::Runtime(WireMessage::SnapshotAck(ack)), KIND_SNAPSHOT_ACK),
            (QuicMessage::Runtime(WireMessage::SnapshotStream(piece)), KIND_SNAPSHOT_STREAM),
        ] {
            assert_eq!(m.kind(), kind);
            let mut buf = Vec::new();
            m.encode(&mut buf).expect("encodes");
            assert_eq!(QuicMessage::decode(1, kind, &buf), Ok(m));
            assert!(QuicMessage::decode(1, KIND_SNAPSHOT, &buf).is_err(), "under another kind");
        }
        let app = QuicMessage::App { kind: KIND_APP_MIN + 1, payload: b"hi".to_vec() };
        let mut buf = Vec::new();
        app.encode(&mut buf).expect("encodes");
        assert_eq!(QuicMessage::decode(1, app.kind(), &buf), Ok(app));
    }
}
