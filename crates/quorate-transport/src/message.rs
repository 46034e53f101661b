//! Application messages carried in frames: the [`WireMessage`] trait and [`RawMessage`].

use crate::frame::{Frame, FrameError, MessageKind, begin_frame, finish_frame};

/// Why an application message could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The kind is not one this decoder knows (or is a transport control kind).
    #[error("unknown message kind {0}")]
    UnknownKind(MessageKind),
    /// The payload does not decode as the kind says.
    #[error("malformed payload of kind {kind}: {detail}")]
    Malformed {
        /// The message kind.
        kind: MessageKind,
        /// The decoder's complaint.
        detail: String,
    },
    /// The message could not be encoded.
    #[error("could not encode message: {0}")]
    Encode(String),
    /// The frame around the message is bad (too large, bad version...).
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// A message type the transport can carry. The node implements it for its enum of Raft
/// messages, client requests/responses and snapshot chunks (typically with `postcard`).
///
/// Contract: kinds are at least [`MessageKind::APPLICATION_MIN`], append-only, and
/// `decode(v, m.kind(), encode(m)) == m` for every supported version `v`. `decode` receives
/// the envelope version so that version N+1 keeps decoding what version N wrote. `decode`
/// must not panic on any input.
pub trait WireMessage: Sized + Send + 'static {
    /// The message's kind.
    fn kind(&self) -> MessageKind;
    /// Appends the payload (not the frame header) to `out`.
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), MessageError>;
    /// Decodes a payload of `kind` written at protocol `version`.
    fn decode(version: u16, kind: MessageKind, payload: &[u8]) -> Result<Self, MessageError>;

    /// Like [`decode`](WireMessage::decode), from a payload the transport owns; override it
    /// to take the buffer without a copy (as [`RawMessage`] does).
    fn decode_owned(version: u16, kind: MessageKind, payload: Vec<u8>) -> Result<Self, MessageError> {
        Self::decode(version, kind, &payload)
    }
}

/// Opaque payload bytes with a kind: for applications that do their own encoding, and for
/// tests and benchmarks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawMessage {
    /// The kind (at least [`MessageKind::APPLICATION_MIN`]).
    pub kind: MessageKind,
    /// The payload.
    pub payload: Vec<u8>,
}

impl WireMessage for RawMessage {
    fn kind(&self) -> MessageKind {
        self.kind
    }

    fn encode(&self, out: &mut Vec<u8>) -> Result<(), MessageError> {
        out.extend_from_slice(&self.payload);
        Ok(())
    }

    fn decode(_version: u16, kind: MessageKind, payload: &[u8]) -> Result<Self, MessageError> {
        if kind.is_control() {
            return Err(MessageError::UnknownKind(kind));
        }
        Ok(RawMessage { kind, payload: payload.to_vec() })
    }

    fn decode_owned(_version: u16, kind: MessageKind, payload: Vec<u8>) -> Result<Self, MessageError> {
        if kind.is_control() {
            return Err(MessageError::UnknownKind(kind));
        }
        Ok(RawMessage { kind, payload })
    }
}

/// Appends `message` as a complete frame to `out`. Control kinds are refused: they belong to
/// the transport. On error `out` is left as it was.
pub fn encode_message<M: WireMessage>(
    message: &M,
    payload_bytes_max: u32,
    out: &mut Vec<u8>,
) -> Result<(), MessageError> {
    let kind = message.kind();
    if kind.is_control() {
        return Err(MessageError::UnknownKind(kind));
    }
    let start = begin_frame(out);
    if let Err(e) = message.encode(out) {
        out.truncate(start);
        return Err(e);
    }
    finish_frame(out, start, kind, payload_bytes_max)?;
    Ok(())
}

/// Decodes an application message from a frame. Control kinds are refused.
pub fn decode_message<M: WireMessage>(frame: &Frame<'_>) -> Result<M, MessageError> {
    let kind = frame.header.kind;
    if kind.is_control() {
        return Err(MessageError::UnknownKind(kind));
    }
    M::decode(frame.header.version, kind, frame.payload)
}
