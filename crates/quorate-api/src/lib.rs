//! # quorate-api
//!
//! The wire types of the Quorate reference node, in a crate of their own so that clients,
//! tools and fuzzers can use them without linking the node (or RocksDB):
//!
//! * [`NodeMessage`]: everything that travels between nodes and clients over
//!   `quorate-transport` — Raft messages, snapshot chunks, client requests and responses —
//!   with the [`WireMessage`] encoding (postcard inside the transport's versioned envelope);
//! * [`ClientRequest`] / [`ClientResponse`]: the key-value API (put, get, delete,
//!   compare-and-swap, scan, transactions), cluster administration and status;
//! * [`Command`]: what the node writes into a log entry for each write.
//!
//! **Compatibility.** postcard is not self-describing: a field added to a struct breaks old
//! decoders. So every enum here is append-only, structs never change shape within a protocol
//! version, and a new shape is a new message kind or a new protocol version whose decoder
//! lives beside the old one. Golden byte fixtures of every kind (`tests/fixtures/v1/`) are
//! decoded by the tests of every later release.
//!
//! Every decoder is bounded ([`limits`]) and returns an error on any input, never panics.

#![forbid(unsafe_code)]

pub mod flight;
mod generations;
pub mod limits;
mod types;

pub use generations::*;
pub use types::*;

use quorate_transport::{MessageError, MessageKind, WireMessage};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The protocol version this crate speaks (the transport envelope carries it).
pub const PROTOCOL_VERSION: u16 = 1;

/// The cluster version of a cluster that never ran `quorate cluster finalize`: what 0.1.0
/// speaks.
pub const CLUSTER_VERSION_INITIAL: u32 = 1;
/// The newest cluster version this build supports. Cluster version 2 (0.2.0) adds
/// [`Request::DeleteRange`] and [`CommandOp::DeleteRange`] (and the other requests and
/// commands marked "since 0.2.0", leases among them); the requests [`Request::Versions`]
/// and [`Request::Finalize`] are answered at any cluster version. Nodes send each other
/// [`NodeMessage::HashSamples`], [`NodeMessage::DiskStatus`] and [`NodeMessage::SnapshotPiece`]
/// (answered with [`NodeMessage::SnapshotAck`]) only at cluster version 2 or more.
pub const CLUSTER_VERSION: u32 = 2;

/// Message kinds (append-only). Numbered from the transport's application range.
pub mod kinds {
    use quorate_transport::MessageKind;
    /// A Raft message between nodes.
    pub const RAFT: MessageKind = MessageKind(0x0100);
    /// A chunk of a snapshot stream.
    pub const SNAPSHOT_CHUNK: MessageKind = MessageKind(0x0101);
    /// A client request.
    pub const REQUEST: MessageKind = MessageKind(0x0102);
    /// A response to a client request.
    pub const RESPONSE: MessageKind = MessageKind(0x0103);
    /// Applied-entries hash samples between nodes (since 0.2.0; sent only at cluster version
    /// 2 or more, so a 0.1.0 node never receives it).
    pub const HASH_SAMPLES: MessageKind = MessageKind(0x0104);
    /// A client request with its attempt number ([`crate::AttemptedRequest`]; since 0.2.0, on
    /// `quorate/2` connections only).
    pub const REQUEST_ATTEMPT: MessageKind = MessageKind(0x0110);
    /// A node's free-space status, for the leader's admission (since 0.2.0; sent only at
    /// cluster version 2 or more).
    pub const DISK_STATUS: MessageKind = MessageKind(0x0105);
    /// A piece of a resumable snapshot transfer ([`crate::SnapshotPiece`]; since 0.2.0, sent
    /// only at cluster version 2 or more).
    pub const SNAPSHOT_PIECE: MessageKind = MessageKind(0x0106);
    /// A follower's answer to a snapshot piece ([`crate::SnapshotAck`]; since 0.2.0, sent
    /// only in answer to a piece).
    pub const SNAPSHOT_ACK: MessageKind = MessageKind(0x0107);
    /// Every kind above, in order (the fuzz target `request_decode` and the tests decode each).
    pub const ALL: [MessageKind; 9] = [
        RAFT,
        SNAPSHOT_CHUNK,
        REQUEST,
        RESPONSE,
        HASH_SAMPLES,
        REQUEST_ATTEMPT,
        DISK_STATUS,
        SNAPSHOT_PIECE,
        SNAPSHOT_ACK,
    ];
}

/// Everything the node's transport carries.
#[derive(Clone, PartialEq, Debug)]
#[non_exhaustive]
pub enum NodeMessage {
    /// A Raft message (consensus lane).
    Raft(quorate_core::Message),
    /// A snapshot chunk (snapshot lane).
    SnapshotChunk(SnapshotChunk),
    /// A client request.
    Request(ClientRequest),
    /// The answer to a client request.
    Response(ClientResponse),
    /// A node's latest applied-entries hash samples, for its peers to compare with their own
    /// (consensus lane). Since 0.2.0: sent only once the committed cluster version is 2 or
    /// more, because a 0.1.0 node closes the stream on a kind it does not know.
    HashSamples(HashSamples),
    /// A client request with its attempt number (since 0.2.0, `quorate/2` connections only).
    RequestAttempt(AttemptedRequest),
    /// A node's free disk space against its floor, sent to the other members (consensus lane)
    /// so that the leader refuses client writes while too few voters have room for them.
    /// Since 0.2.0: sent only once the committed cluster version is 2 or more.
    DiskStatus(DiskStatus),
    /// A piece of a resumable, acknowledged snapshot transfer (snapshot lane). Since 0.2.0:
    /// a leader sends pieces instead of [`NodeMessage::SnapshotChunk`]s only once the
    /// committed cluster version is 2 or more.
    SnapshotPiece(SnapshotPiece),
    /// A follower's answer to a [`NodeMessage::SnapshotPiece`] (consensus lane): how many
    /// bytes of the image it holds durably. Since 0.2.0.
    SnapshotAck(SnapshotAck),
}

/// A node's free-space status ([`NodeMessage::DiskStatus`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, serde::Deserialize)]
pub struct DiskStatus {
    /// The node refuses new client writes for disk space (free space is below its floor):
    /// growing its log further would bring it to the point where its store refuses appends.
    pub refusing: bool,
    /// Bytes free on the node's data volume.
    pub free_bytes: u64,
    /// The floor below which the node refuses client writes, in bytes.
    pub floor_bytes: u64,
}

/// A piece of a snapshot image sent in a resumable transfer ([`NodeMessage::SnapshotPiece`]):
/// bytes `offset..offset + data.len()` of the image the header fields describe. An empty
/// piece at offset 0 opens a transfer (the follower answers with what it holds).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, serde::Deserialize)]
pub struct SnapshotPiece {
    /// The leader's term.
    pub term: quorate_log::Term,
    /// What the snapshot covers.
    pub meta: quorate_log::SnapshotMeta,
    /// Length of the whole image (the snapshot file) in bytes.
    pub total: u64,
    /// CRC-32 (IEEE) of the whole image.
    pub checksum: u32,
    /// Where `data` starts in the image.
    pub offset: u64,
    /// The bytes (at most [`limits::SNAPSHOT_CHUNK_BYTES_MAX`]).
    #[serde(with = "quorate_log::byte_string")]
    pub data: Vec<u8>,
    /// CRC-32 (IEEE) of `data`.
    pub data_crc: u32,
    /// This is the last piece (`offset + data.len() == total`).
    pub done: bool,
}

impl SnapshotPiece {
    /// The bounds every piece keeps (the decoder refuses others): `data` at most
    /// [`limits::SNAPSHOT_CHUNK_BYTES_MAX`] bytes, inside the image, `done` exactly at its end.
    /// (The CRC is the receiver's to check: a corrupt piece is answered, not a broken stream.)
    ///
    /// # Errors
    /// What is out of bounds.
    pub fn check(&self) -> Result<(), String> {
        if self.data.len() > limits::SNAPSHOT_CHUNK_BYTES_MAX {
            return Err(format!(
                "snapshot piece of {} bytes exceeds {}",
                self.data.len(),
                limits::SNAPSHOT_CHUNK_BYTES_MAX
            ));
        }
        let end = self.offset.checked_add(self.data.len() as u64);
        if end.is_none_or(|e| e > self.total) {
            return Err(format!("snapshot piece at {} past the image's {} bytes", self.offset, self.total));
        }
        if self.done != (end == Some(self.total)) {
            return Err("snapshot piece `done` does not match its end".to_owned());
        }
        Ok(())
    }
}

/// What a follower did with a [`SnapshotPiece`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum SnapshotAckStatus {
    /// `offset` bytes are staged durably; send from there.
    Staging,
    /// The snapshot is verified and stored (or not needed): stop.
    Installed,
    /// The follower will not take this snapshot (over its limits, a storage failure, a file
    /// that does not verify): stop; the leader's core probes it again later.
    Refused,
    /// The follower starts this image over at `offset` (its staging was lost, or the whole
    /// image failed its checksum): send from `offset` now.
    Restart,
}

/// A follower's answer to a [`SnapshotPiece`] ([`NodeMessage::SnapshotAck`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SnapshotAck {
    /// The term of the piece answered.
    pub term: quorate_log::Term,
    /// The image: its last entry …
    pub last: quorate_log::EntryId,
    /// … and its CRC-32.
    pub checksum: u32,
    /// Bytes of the image the follower holds durably (or where it starts over).
    pub offset: u64,
    /// What it did.
    pub status: SnapshotAckStatus,
}

/// Most samples in one [`HashSamples`] message; the decoder refuses more.
pub const HASH_SAMPLES_MAX: usize = 16;

/// One sample of the hash of the entries a node applied: the hash of the window of entries
/// that ends at `index` (the window size is the node's; samples are compared only at equal
/// indexes).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, serde::Deserialize)]
pub struct HashSample {
    /// The last index of the window.
    pub index: u64,
    /// The window's hash.
    pub hash: u64,
}

/// A node's latest [`HashSample`]s, oldest first, at most [`HASH_SAMPLES_MAX`].
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, serde::Deserialize)]
pub struct HashSamples {
    /// The samples.
    pub samples: Vec<HashSample>,
}

/// A postcard output that appends to a caller's buffer (after a frame header, say), so that
/// a message is encoded once, in place, rather than into a buffer of its own and then copied.
struct AppendTo<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for AppendTo<'_> {
    type Output = ();

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Appends `value`'s encoding to `out`. Its size is computed first (cheap: values are byte
/// strings, counted by their length), so that a message over the limit is refused before
/// anything is encoded; on an error `out` is left as it was.
fn encode_into<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), MessageError> {
    let len = postcard::experimental::serialized_size(value).map_err(|e| MessageError::Encode(e.to_string()))?;
    if len > limits::MESSAGE_BYTES_MAX {
        return Err(MessageError::Encode(format!(
            "message of {len} bytes exceeds the limit of {}",
            limits::MESSAGE_BYTES_MAX
        )));
    }
    let start = out.len();
    out.reserve(len);
    if let Err(e) = postcard::serialize_with_flavor(value, AppendTo(out)) {
        out.truncate(start);
        return Err(MessageError::Encode(e.to_string()));
    }
    debug_assert_eq!(out.len() - start, len, "postcard's size and its encoding agree");
    Ok(())
}

fn decode_from<T: DeserializeOwned>(kind: MessageKind, payload: &[u8]) -> Result<T, MessageError> {
    if payload.len() > limits::MESSAGE_BYTES_MAX {
        return Err(MessageError::Malformed { kind, detail: format!("{} bytes exceed the limit", payload.len()) });
    }
    let (value, rest) =
        postcard::take_from_bytes(payload).map_err(|e| MessageError::Malformed { kind, detail: e.to_string() })?;
    if !rest.is_empty() {
        return Err(MessageError::Malformed { kind, detail: format!("{} trailing bytes", rest.len()) });
    }
    Ok(value)
}

impl WireMessage for NodeMessage {
    fn kind(&self) -> MessageKind {
        match self {
            NodeMessage::Raft(_) => kinds::RAFT,
            NodeMessage::SnapshotChunk(_) => kinds::SNAPSHOT_CHUNK,
            NodeMessage::Request(_) => kinds::REQUEST,
            NodeMessage::Response(_) => kinds::RESPONSE,
            NodeMessage::HashSamples(_) => kinds::HASH_SAMPLES,
            NodeMessage::RequestAttempt(_) => kinds::REQUEST_ATTEMPT,
            NodeMessage::DiskStatus(_) => kinds::DISK_STATUS,
            NodeMessage::SnapshotPiece(_) => kinds::SNAPSHOT_PIECE,
            NodeMessage::SnapshotAck(_) => kinds::SNAPSHOT_ACK,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) -> Result<(), MessageError> {
        match self {
            NodeMessage::Raft(m) => encode_into(m, out),
            NodeMessage::SnapshotChunk(c) => encode_into(c, out),
            NodeMessage::Request(r) => encode_into(r, out),
            NodeMessage::Response(r) => encode_into(r, out),
            NodeMessage::HashSamples(h) => {
                if h.samples.len() > HASH_SAMPLES_MAX {
                    return Err(MessageError::Encode(format!(
                        "{} hash samples exceed the limit of {HASH_SAMPLES_MAX}",
                        h.samples.len()
                    )));
                }
                encode_into(h, out)
            }
            NodeMessage::RequestAttempt(r) => encode_into(r, out),
            NodeMessage::DiskStatus(d) => encode_into(d, out),
            NodeMessage::SnapshotPiece(p) => {
                p.check().map_err(MessageError::Encode)?;
                encode_into(p, out)
            }
            NodeMessage::SnapshotAck(a) => encode_into(a, out),
        }
    }

    fn decode(version: u16, kind: MessageKind, payload: &[u8]) -> Result<NodeMessage, MessageError> {
        if version != PROTOCOL_VERSION {
            return Err(MessageError::Malformed { kind, detail: format!("unsupported protocol version {version}") });
        }
        let m = match kind {
            kinds::RAFT => NodeMessage::Raft(decode_from(kind, payload)?),
            kinds::SNAPSHOT_CHUNK => NodeMessage::SnapshotChunk(decode_from(kind, payload)?),
            kinds::REQUEST => {
                // Bounds (`ClientRequest::validate`) are checked by the receiver, which can
                // then answer with a typed error on the same stream instead of resetting it.
                NodeMessage::Request(decode_from(kind, payload)?)
            }
            kinds::RESPONSE => NodeMessage::Response(decode_from(kind, payload)?),
            kinds::HASH_SAMPLES => {
                let h: HashSamples = decode_from(kind, payload)?;
                if h.samples.len() > HASH_SAMPLES_MAX {
                    return Err(MessageError::Malformed {
                        kind,
                        detail: format!("{} hash samples exceed the limit of {HASH_SAMPLES_MAX}", h.samples.len()),
                    });
                }
                NodeMessage::HashSamples(h)
            }
            // Bounds of the request inside are checked by the receiver, as for REQUEST.
            kinds::REQUEST_ATTEMPT => NodeMessage::RequestAttempt(decode_from(kind, payload)?),
            kinds::DISK_STATUS => NodeMessage::DiskStatus(decode_from(kind, payload)?),
            kinds::SNAPSHOT_PIECE => {
                let p: SnapshotPiece = decode_from(kind, payload)?;
                p.check().map_err(|detail| MessageError::Malformed { kind, detail })?;
                NodeMessage::SnapshotPiece(p)
            }
            kinds::SNAPSHOT_ACK => NodeMessage::SnapshotAck(decode_from(kind, payload)?),
            other => return Err(MessageError::UnknownKind(other)),
        };
        Ok(m)
    }
}

/// The bytes `value` takes encoded with postcard (the wire and log encoding), computed without
/// encoding it; `usize::MAX` if it cannot be encoded. Deterministic: the node bounds results at
/// apply with it, identically on every replica.
#[must_use]
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> usize {
    postcard::experimental::serialized_size(value).unwrap_or(usize::MAX)
}

/// Encodes a log command.
pub fn encode_command(cmd: &Command) -> Result<Vec<u8>, CommandError> {
    let bytes = postcard::to_allocvec(cmd).map_err(|e| CommandError(e.to_string()))?;
    if bytes.len() > limits::COMMAND_BYTES_MAX {
        return Err(CommandError(format!("command of {} bytes exceeds {}", bytes.len(), limits::COMMAND_BYTES_MAX)));
    }
    Ok(bytes)
}

/// Decodes a log command (bytes read from the log: checked, never trusted).
pub fn decode_command(bytes: &[u8]) -> Result<Command, CommandError> {
    if bytes.len() > limits::COMMAND_BYTES_MAX {
        return Err(CommandError(format!("command of {} bytes exceeds {}", bytes.len(), limits::COMMAND_BYTES_MAX)));
    }
    let (cmd, rest): (Command, _) = postcard::take_from_bytes(bytes).map_err(|e| CommandError(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CommandError(format!("{} trailing bytes after a command", rest.len())));
    }
    Ok(cmd)
}

/// A log command that could not be encoded or decoded.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[error("bad command: {0}")]
pub struct CommandError(pub String);

#[cfg(test)]
mod hash_samples_tests {
    use super::*;

    /// `kinds::ALL` names every kind the decoder knows (the fuzz target `request_decode`
    /// relies on it): every kind of the application range outside it is unknown.
    #[test]
    fn kinds_all_is_every_decoded_kind() {
        use quorate_transport::MessageKind;
        for k in 0x0100..0x0200u16 {
            let kind = MessageKind(k);
            let unknown = matches!(NodeMessage::decode(PROTOCOL_VERSION, kind, &[]), Err(MessageError::UnknownKind(_)));
            assert_eq!(unknown, !kinds::ALL.contains(&kind), "kind {k:#06x}");
        }
    }

    fn sample(index: u64) -> HashSample {
        HashSample { index, hash: index.wrapping_mul(0x9E37_79B9_7F4A_7C15) }
    }

    #[test]
    fn hash_samples_round_trip_and_are_bounded() {
        let m = NodeMessage::HashSamples(HashSamples { samples: (1..=4).map(|i| sample(i * 1024)).collect() });
        assert_eq!(m.kind(), kinds::HASH_SAMPLES);
        let mut buf = Vec::new();
        m.encode(&mut buf).expect("encode");
        assert_eq!(NodeMessage::decode(PROTOCOL_VERSION, kinds::HASH_SAMPLES, &buf).expect("decode"), m);
        // Too many samples: refused both ways, never a panic.
        let big = HashSamples { samples: (1..=HASH_SAMPLES_MAX as u64 + 1).map(sample).collect() };
        assert!(NodeMessage::HashSamples(big.clone()).encode(&mut Vec::new()).is_err());
        let bytes = postcard::to_allocvec(&big).expect("postcard");
        assert!(matches!(
            NodeMessage::decode(PROTOCOL_VERSION, kinds::HASH_SAMPLES, &bytes),
            Err(MessageError::Malformed { .. })
        ));
        // Truncated bytes are an error.
        assert!(NodeMessage::decode(PROTOCOL_VERSION, kinds::HASH_SAMPLES, &buf[..buf.len() - 1]).is_err());
    }
}
