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
//!   (a 0.1.0 node cannot decode them); a client speaks plain `Scan` and `Txn` to a 0.1.0 node;
//! * every other request 0.1.0 cannot decode is never sent on a `quorate/1` connection: a 0.1.0
//!   node would close the stream, which a client can only report as an unknown outcome.
//!   [`Request::refusal_at_generation`] gives the error a client answers with instead (for a
//!   request gated on the cluster version, the gate's own words: a node that speaks `quorate/1`
//!   is proof that the cluster is not finalized).

use crate::{ApiError, CLUSTER_VERSION_INITIAL, ClientRequest, ClientResponse, ReadConsistency, Request};
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

/// The refusal of a request gated on cluster version `needed` while the cluster is at
/// `current`: the same words wherever it is refused (a node's gate, apply, or a client that
/// will not send the request to a 0.1.0 node).
#[must_use]
pub fn cluster_version_refusal(what: &str, needed: u32, current: u32) -> ApiError {
    ApiError::InvalidRequest(format!(
        "{what} needs cluster version {needed}, the cluster is at {current}: upgrade every node, then run \
         `quorate cluster finalize`"
    ))
}

impl Request {
    /// Why this request must not be sent on a connection of protocol `generation`, as the
    /// error the caller gets instead; `None` when a node of that generation decodes it.
    ///
    /// Before generation 2 (a 0.1.0 node) that is every request added since 0.1.0, and a
    /// bounded-staleness read level inside a request 0.1.0 knows. The paged
    /// reads are listed too, but a client sends them to a 0.1.0 node as the whole `Scan` and
    /// `Txn` it knows (see the module documentation) and never reaches this refusal with them.
    #[must_use]
    pub fn refusal_at_generation(&self, generation: u8) -> Option<ApiError> {
        if generation >= PROTOCOL_GENERATION_2 {
            return None;
        }
        // A read level 0.1.0 does not know, inside a request it knows.
        if let Request::Get { read: ReadConsistency::BoundedStale(_), .. }
        | Request::Scan { read: ReadConsistency::BoundedStale(_), .. }
        | Request::ScanPaged { read: ReadConsistency::BoundedStale(_), .. } = self
        {
            return Some(cluster_version_refusal("a bounded-staleness read", 2, CLUSTER_VERSION_INITIAL));
        }
        // Every variant by name, so that a new request must say whether 0.1.0 decodes it.
        let missing = match self {
            Request::Put { .. }
            | Request::Get { .. }
            | Request::Delete { .. }
            | Request::Cas { .. }
            | Request::Scan { .. }
            | Request::Txn(_)
            | Request::Status
            | Request::MemberList
            | Request::MemberAdd { .. }
            | Request::MemberPromote { .. }
            | Request::MemberRemove { .. }
            | Request::LeaderTransfer { .. }
            | Request::SnapshotSave
            | Request::OpenSession => return None,
            // Gated on cluster version 2: a quorate/1 node means the cluster is still at 1.
            Request::DeleteRange { .. } => {
                return Some(cluster_version_refusal("delete-range", 2, CLUSTER_VERSION_INITIAL));
            }
            Request::MemberUpdate { .. } => {
                return Some(cluster_version_refusal("member update", 2, CLUSTER_VERSION_INITIAL));
            }
            Request::GetAt { .. } | Request::ScanAt { .. } => {
                return Some(cluster_version_refusal("a read at a revision", 2, CLUSTER_VERSION_INITIAL));
            }
            Request::Compact { .. } => {
                return Some(cluster_version_refusal("compact", 2, CLUSTER_VERSION_INITIAL));
            }
            Request::History => "history",
            Request::Watch(_) => {
                return Some(cluster_version_refusal("a watch", 2, CLUSTER_VERSION_INITIAL));
            }
            Request::LeaseGrant { .. }
            | Request::LeaseRevoke { .. }
            | Request::LeaseKeepAlive { .. }
            | Request::LeaseList
            | Request::LeaseTimeToLive { .. } => {
                return Some(cluster_version_refusal("a lease", 2, CLUSTER_VERSION_INITIAL));
            }
            Request::PutWithLease { .. } => {
                return Some(cluster_version_refusal("a put with a lease", 2, CLUSTER_VERSION_INITIAL));
            }
            Request::SnapshotStreamOpen | Request::SnapshotStreamFetch { .. } => {
                return Some(cluster_version_refusal("a streamed snapshot save", 2, CLUSTER_VERSION_INITIAL));
            }
            Request::Versions => "versions",
            Request::Finalize { .. } => "finalize",
            Request::FlightDump => "flight dump",
            Request::ScanPaged { .. } => "paged scan",
            Request::TxnPaged { .. } => "paged transaction",
            Request::Health => "health",
        };
        Some(ApiError::InvalidRequest(format!(
            "this node runs Quorate 0.1.0 (protocol quorate/1), which has no `{missing}` request: the request \
             was not sent; upgrade the node first"
        )))
    }
}
