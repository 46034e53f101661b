//! What differs between the protocol generations a connection can negotiate (`quorate/1` for
//! 0.1.0 peers, `quorate/2` since 0.2.0), for client traffic:
//!
//! * a client on a `quorate/2` connection may send [`AttemptedRequest`] (kind
//!   [`kinds::REQUEST_ATTEMPT`](crate::kinds::REQUEST_ATTEMPT)): a request with its attempt
//!   number, so that the node knows retries (admission's retry budget, retry metrics). A 0.1.0
//!   node cannot decode it, so it is never sent on a `quorate/1` connection;
//! * a node answering a `quorate/1` connection sends only what 0.1.0 decodes:
//!   [`ClientResponse::for_generation`] turns [`ApiError::Shed`] (added after 0.1.0) into the
//!   0.1.0 variant [`ApiError::Overloaded`] with the reason in words (and
//!   [`ApiError::PageExpired`], an answer to a `quorate/2` request only, into
//!   [`ApiError::InvalidRequest`]);
//! * the paged reads [`Request::ScanPaged`](crate::Request::ScanPaged) and
//!   [`Request::TxnPaged`](crate::Request::TxnPaged) are sent on `quorate/2` connections only
//!   (a 0.1.0 node cannot decode them); a client speaks plain `Scan` and `Txn` to a 0.1.0 node.

use crate::{ApiError, ClientRequest, ClientResponse};
use serde::{Deserialize, Serialize};

/// The first protocol generation (`quorate/1`, Quorate 0.1.0).
pub const PROTOCOL_GENERATION_1: u8 = 1;
/// The protocol generation of `quorate/2` (Quorate 0.2.0): adds [`AttemptedRequest`] and
/// [`ApiError::Shed`].
pub const PROTOCOL_GENERATION_2: u8 = 2;

/// A client request with its attempt number: 0 is the first try, 1 the first retry, and so on.
/// Sent only on `quorate/2` connections; the answer is an ordinary
/// [`NodeMessage::Response`](crate::NodeMessage::Response).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct AttemptedRequest {
    /// 0 for the first try; a retry counts against the client's retry budget at the node.
    pub attempt: u32,
    /// The request, exactly as it would be sent alone.
    pub request: ClientRequest,
}

impl AttemptedRequest {
    /// Whether this is a retry (attempt 1 or later).
    #[must_use]
    pub fn is_retry(&self) -> bool {
        self.attempt > 0
    }
}

impl ApiError {
    /// This error as a client of protocol `generation` can decode it: before generation 2,
    /// [`ApiError::Shed`] becomes [`ApiError::Overloaded`] (same hint, reason in words);
    /// everything else is unchanged.
    #[must_use]
    pub fn for_generation(self, generation: u8) -> ApiError {
        match self {
            ApiError::Shed(o) if generation < PROTOCOL_GENERATION_2 => {
                ApiError::Overloaded { reason: o.reason.to_string(), retry_after_ms: o.retry_after_ms }
            }
            // Only a paged transaction (a quorate/2 request) is answered with it; never send a
            // 0.1.0 client a variant it cannot decode all the same.
            e @ (ApiError::PageExpired { .. } | ApiError::Compacted { .. } | ApiError::FutureRevision { .. })
                if generation < PROTOCOL_GENERATION_2 =>
            {
                ApiError::InvalidRequest(e.to_string())
            }
            other => other,
        }
    }
}

impl ClientResponse {
    /// This response as a client of protocol `generation` can decode it (see
    /// [`ApiError::for_generation`]).
    #[must_use]
    pub fn for_generation(self, generation: u8) -> ClientResponse {
        ClientResponse { id: self.id, result: self.result.map_err(|e| e.for_generation(generation)) }
    }
}
