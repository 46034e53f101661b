//! The wire envelope: a fixed header carrying length, protocol version and message kind,
//! followed by the payload. This module does no I/O and depends on nothing but `core`, so the
//! decoder can be fuzzed cheaply (`fuzz/fuzz_targets/frame_decode.rs`).
//!
//! ```text
//! offset  size  field
//! 0       4     payload_bytes   u32, big-endian; bounded by the receiver's limit
//! 4       2     version         u16, big-endian; protocol version of the payload encoding
//! 6       2     kind            u16, big-endian; message kind, append-only, never reused
//! 8       n     payload         `payload_bytes` bytes
//! ```
//!
//! The length is checked against the limit **before** any buffer for the payload is allocated.

use crate::identity::{ClusterId, IdentityError};
use quorate_log::NodeId;
use std::fmt;

/// The protocol version this build writes.
pub const PROTOCOL_VERSION: u16 = 1;
/// The oldest protocol version this build still decodes (version N+1 keeps the decoder of N).
pub const PROTOCOL_VERSION_MIN: u16 = 1;
/// The ALPN protocol id of protocol generation 1 (Quorate 0.1.0), negotiated in the TLS
/// handshake.
pub const ALPN: &[u8] = b"quorate/1";
/// The ALPN protocol id of protocol generation 2 (Quorate 0.2.0: the same envelope and
/// decoders, plus message bodies an older peer cannot decode; the application uses those only
/// once the cluster version allows).
pub const ALPN_V2: &[u8] = b"quorate/2";
/// Every ALPN id this build offers (client) and accepts (server), most preferred first: a
/// server picks the first of these the client also offers. All of them run under one and the
/// same TLS configuration (TLS 1.3 only, client certificates required, 0-RTT and resumption
/// off), so negotiating an older generation never weakens security.
pub const ALPNS: &[&[u8]] = &[ALPN_V2, ALPN];
/// Size of the fixed frame header.
pub const HEADER_BYTES: usize = 8;
/// Hard ceiling on a frame payload, whatever a configuration says (64 MiB).
pub const FRAME_PAYLOAD_BYTES_CEILING: u32 = 64 * 1024 * 1024;
/// Default limit on a frame payload (8 MiB): large enough for a snapshot chunk.
pub const FRAME_PAYLOAD_BYTES_DEFAULT: u32 = 8 * 1024 * 1024;

const _: () = assert!(FRAME_PAYLOAD_BYTES_DEFAULT <= FRAME_PAYLOAD_BYTES_CEILING);
const _: () = assert!(PROTOCOL_VERSION_MIN <= PROTOCOL_VERSION);

/// A message kind. Kinds are append-only: a kind, once released, keeps its meaning forever.
///
/// Kinds below [`MessageKind::APPLICATION_MIN`] belong to the transport itself (control
/// frames such as [`Hello`]); the application numbers its messages from `APPLICATION_MIN` up.
/// Kind zero is reserved and never valid on the wire.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageKind(pub u16);

impl MessageKind {
    /// The first kind available to applications.
    pub const APPLICATION_MIN: u16 = 0x0100;
    /// Transport control: [`Hello`], the first frame of every peer stream.
    pub const HELLO: MessageKind = MessageKind(1);

    /// Whether this kind belongs to the transport (below [`Self::APPLICATION_MIN`]).
    #[must_use]
    pub const fn is_control(self) -> bool {
        self.0 < Self::APPLICATION_MIN
    }
}

impl fmt::Debug for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kind:{:#06x}", self.0)
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#06x}", self.0)
    }
}

/// Why a frame or a control message could not be encoded or decoded. Decoding never panics;
/// every malformed input maps to one of these, and the stream that carried it is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The payload length exceeds the receiver's limit; nothing was allocated.
    #[error("frame payload of {payload_bytes} bytes exceeds the limit of {limit_bytes} bytes")]
    TooLarge {
        /// The length the header announced.
        payload_bytes: u64,
        /// The receiver's limit.
        limit_bytes: u32,
    },
    /// The envelope's protocol version is outside what this build decodes.
    #[error("unsupported protocol version {0} (supported {PROTOCOL_VERSION_MIN}..={PROTOCOL_VERSION})")]
    UnsupportedVersion(u16),
    /// Kind zero is reserved.
    #[error("reserved message kind 0")]
    ReservedKind,
    /// A control kind this build does not know.
    #[error("unknown control message kind {0}")]
    UnknownControlKind(MessageKind),
    /// A control message whose payload does not parse.
    #[error("malformed {kind} payload: {reason}")]
    Malformed {
        /// The kind of the malformed message.
        kind: MessageKind,
        /// What was wrong.
        reason: &'static str,
    },
    /// A control message naming an invalid identity.
    #[error("invalid identity in control message: {0}")]
    Identity(#[from] IdentityError),
}

/// The fixed 8-byte header that precedes every payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Length of the payload that follows the header.
    pub payload_bytes: u32,
    /// Protocol version of the payload encoding.
    pub version: u16,
    /// Message kind.
    pub kind: MessageKind,
}

impl FrameHeader {
    /// Parses and validates a header: the version must be supported, the kind non-zero and the
    /// payload no longer than `payload_bytes_max` (itself clamped to
    /// [`FRAME_PAYLOAD_BYTES_CEILING`]). Call this before allocating the payload buffer.
    pub fn parse(bytes: &[u8; HEADER_BYTES], payload_bytes_max: u32) -> Result<Self, FrameError> {
        let limit_bytes = payload_bytes_max.min(FRAME_PAYLOAD_BYTES_CEILING);
        let payload_bytes = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let version = u16::from_be_bytes([bytes[4], bytes[5]]);
        let kind = MessageKind(u16::from_be_bytes([bytes[6], bytes[7]]));
        if payload_bytes > limit_bytes {
            return Err(FrameError::TooLarge { payload_bytes: u64::from(payload_bytes), limit_bytes });
        }
        if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION).contains(&version) {
            return Err(FrameError::UnsupportedVersion(version));
        }
        if kind.0 == 0 {
            return Err(FrameError::ReservedKind);
        }
        Ok(FrameHeader { payload_bytes, version, kind })
    }

    /// The header's wire bytes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[0..4].copy_from_slice(&self.payload_bytes.to_be_bytes());
        out[4..6].copy_from_slice(&self.version.to_be_bytes());
        out[6..8].copy_from_slice(&self.kind.0.to_be_bytes());
        out
    }
}

/// A decoded frame borrowing its payload from the input buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The validated header.
    pub header: FrameHeader,
    /// The payload bytes.
    pub payload: &'a [u8],
}

/// Decodes the first frame of `buf`. Returns `Ok(None)` when `buf` holds only a prefix of a
/// valid frame (read more), otherwise the frame and the number of bytes it occupied.
pub fn decode_frame(buf: &[u8], payload_bytes_max: u32) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    let Some(header_bytes) = buf.first_chunk::<HEADER_BYTES>() else {
        return Ok(None);
    };
    let header = FrameHeader::parse(header_bytes, payload_bytes_max)?;
    let end = HEADER_BYTES + header.payload_bytes as usize;
    match buf.get(HEADER_BYTES..end) {
        Some(payload) => Ok(Some((Frame { header, payload }, end))),
        None => Ok(None),
    }
}

/// Appends a frame with `kind` and `payload` to `out`, at the current [`PROTOCOL_VERSION`].
pub fn encode_frame(
    kind: MessageKind,
    payload: &[u8],
    payload_bytes_max: u32,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    let start = begin_frame(out);
    out.extend_from_slice(payload);
    finish_frame(out, start, kind, payload_bytes_max)
}

/// Reserves a header at the end of `out` and returns its offset; write the payload after it
/// and call [`finish_frame`]. Lets an encoder write the payload in place without a copy.
pub fn begin_frame(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_BYTES]);
    start
}

/// Fills in the header reserved by [`begin_frame`] at `start`. If the payload is too large the
/// frame is removed from `out` again and an error returned.
pub fn finish_frame(
    out: &mut Vec<u8>,
    start: usize,
    kind: MessageKind,
    payload_bytes_max: u32,
) -> Result<(), FrameError> {
    assert!(start + HEADER_BYTES <= out.len(), "finish_frame without begin_frame");
    let limit_bytes = payload_bytes_max.min(FRAME_PAYLOAD_BYTES_CEILING);
    let payload_len = out.len() - start - HEADER_BYTES;
    let fits = u32::try_from(payload_len).ok().filter(|n| *n <= limit_bytes);
    let Some(payload_bytes) = fits else {
        out.truncate(start);
        return Err(FrameError::TooLarge { payload_bytes: payload_len as u64, limit_bytes });
    };
    if kind.0 == 0 {
        out.truncate(start);
        return Err(FrameError::ReservedKind);
    }
    let header = FrameHeader { payload_bytes, version: PROTOCOL_VERSION, kind };
    out[start..start + HEADER_BYTES].copy_from_slice(&header.to_bytes());
    Ok(())
}

/// Which stream of a peer connection a message travels on. Consensus messages (votes,
/// appends, heartbeats) and snapshot chunks use separate QUIC streams, so a large snapshot
/// never delays a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Lane {
    /// Votes, appends, heartbeats and their responses: small, latency-sensitive.
    Consensus,
    /// Snapshot chunks: large, bulk, flow-controlled separately.
    Snapshot,
}

impl Lane {
    const fn code(self) -> u8 {
        match self {
            Lane::Consensus => 0,
            Lane::Snapshot => 1,
        }
    }

    const fn from_code(code: u8) -> Option<Lane> {
        match code {
            0 => Some(Lane::Consensus),
            1 => Some(Lane::Snapshot),
            _ => None,
        }
    }
}

/// The first frame on every peer stream ([`MessageKind::HELLO`]): the sender's claim of who it
/// is and whom it means to reach. The receiver checks `from` against the node id in the TLS
/// certificate, and `cluster`/`to` against itself; a mismatch refuses the connection.
///
/// Payload layout (big-endian): `version_min u16 | version_max u16 | from u64 | to u64 |
/// lane u8 | cluster_len u8 | cluster bytes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Oldest protocol version the sender decodes.
    pub version_min: u16,
    /// Newest protocol version the sender decodes.
    pub version_max: u16,
    /// The cluster the sender belongs to.
    pub cluster: ClusterId,
    /// The node id the sender claims.
    pub from: NodeId,
    /// The node id the sender means to reach.
    pub to: NodeId,
    /// The lane this stream carries.
    pub lane: Lane,
}

impl Hello {
    const FIXED_BYTES: usize = 2 + 2 + 8 + 8 + 1 + 1;

    /// A hello at this build's protocol versions.
    #[must_use]
    pub fn new(cluster: ClusterId, from: NodeId, to: NodeId, lane: Lane) -> Hello {
        Hello { version_min: PROTOCOL_VERSION_MIN, version_max: PROTOCOL_VERSION, cluster, from, to, lane }
    }

    /// Appends the hello as a complete frame to `out`.
    pub fn encode_frame(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let start = begin_frame(out);
        out.extend_from_slice(&self.version_min.to_be_bytes());
        out.extend_from_slice(&self.version_max.to_be_bytes());
        out.extend_from_slice(&self.from.get().to_be_bytes());
        out.extend_from_slice(&self.to.get().to_be_bytes());
        out.push(self.lane.code());
        let cluster = self.cluster.as_str().as_bytes();
        // ClusterId is at most 63 bytes (checked at parse time).
        out.push(cluster.len() as u8);
        out.extend_from_slice(cluster);
        finish_frame(out, start, MessageKind::HELLO, FRAME_PAYLOAD_BYTES_CEILING)
    }

    /// Decodes a hello from a frame (any supported version).
    pub fn decode(frame: &Frame<'_>) -> Result<Hello, FrameError> {
        let kind = frame.header.kind;
        if kind != MessageKind::HELLO {
            return Err(if kind.is_control() {
                FrameError::UnknownControlKind(kind)
            } else {
                FrameError::Malformed { kind, reason: "expected a hello as the first frame of the stream" }
            });
        }
        let malformed = |reason| FrameError::Malformed { kind, reason };
        let p = frame.payload;
        let fixed = p.first_chunk::<{ Hello::FIXED_BYTES }>().ok_or(malformed("truncated"))?;
        let u16_at = |i: usize| u16::from_be_bytes([fixed[i], fixed[i + 1]]);
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&fixed[i..i + 8]);
            u64::from_be_bytes(b)
        };
        let version_min = u16_at(0);
        let version_max = u16_at(2);
        if version_min > version_max {
            return Err(malformed("version_min > version_max"));
        }
        let from = NodeId::new(u64_at(4)).ok_or(malformed("node id zero"))?;
        let to = NodeId::new(u64_at(12)).ok_or(malformed("node id zero"))?;
        let lane = Lane::from_code(fixed[20]).ok_or(malformed("unknown lane"))?;
        let cluster_len = usize::from(fixed[21]);
        let rest = &p[Hello::FIXED_BYTES..];
        if rest.len() != cluster_len {
            return Err(malformed("cluster length does not match payload"));
        }
        let cluster = std::str::from_utf8(rest).map_err(|_| malformed("cluster not UTF-8"))?;
        Ok(Hello { version_min, version_max, cluster: ClusterId::new(cluster)?, from, to, lane })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello::new(ClusterId::new("alpha").unwrap(), NodeId::new(1).unwrap(), NodeId::new(2).unwrap(), Lane::Snapshot)
    }

    #[test]
    fn frame_round_trip_and_prefixes() {
        let mut buf = Vec::new();
        encode_frame(MessageKind(0x0100), b"hello", 1024, &mut buf).unwrap();
        encode_frame(MessageKind(0x0101), b"", 1024, &mut buf).unwrap();
        let (f, n) = decode_frame(&buf, 1024).unwrap().unwrap();
        assert_eq!((f.header.kind, f.payload, n), (MessageKind(0x0100), &b"hello"[..], 13));
        let (f2, n2) = decode_frame(&buf[n..], 1024).unwrap().unwrap();
        assert_eq!((f2.payload.len(), n2), (0, 8));
        for cut in 0..n {
            assert_eq!(decode_frame(&buf[..cut], 1024).unwrap(), None);
        }
    }

    #[test]
    fn oversize_is_refused_from_the_header_alone() {
        let header = FrameHeader { payload_bytes: 1025, version: PROTOCOL_VERSION, kind: MessageKind(0x100) };
        let err = decode_frame(&header.to_bytes(), 1024).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { payload_bytes: 1025, .. }));
        let mut out = vec![7];
        let err = encode_frame(MessageKind(0x100), &[0; 1025], 1024, &mut out).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }));
        assert_eq!(out, vec![7], "a refused frame leaves the buffer as it was");
    }

    #[test]
    fn bad_version_and_kind_zero() {
        let mut h = FrameHeader { payload_bytes: 0, version: 9, kind: MessageKind(0x100) };
        assert_eq!(decode_frame(&h.to_bytes(), 10), Err(FrameError::UnsupportedVersion(9)));
        h.version = PROTOCOL_VERSION;
        h.kind = MessageKind(0);
        assert_eq!(decode_frame(&h.to_bytes(), 10), Err(FrameError::ReservedKind));
    }

    #[test]
    fn hello_round_trip_and_truncations() {
        let mut buf = Vec::new();
        hello().encode_frame(&mut buf).unwrap();
        let (f, _) = decode_frame(&buf, 1024).unwrap().unwrap();
        assert_eq!(Hello::decode(&f).unwrap(), hello());
        for cut in 0..f.payload.len() {
            let short = Frame { header: f.header, payload: &f.payload[..cut] };
            assert!(Hello::decode(&short).is_err());
        }
    }
}
