//! How requests reach a node: the QUIC link, and the seam that tests replace.

use quorate_api::{
    ApiError, AttemptedRequest, ClientRequest, ClientResponse, NodeMessage, PROTOCOL_GENERATION_2, Request, Response,
};
use quorate_log::NodeId;
use quorate_transport::{Client as Connection, ClientOptions, Credentials, TransportError};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why one exchange with a node failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LinkError {
    /// No connection could be made: the request was certainly not sent.
    Connect(String),
    /// The request may have been sent, and no answer came.
    Lost(String),
}

/// One request, one response, to one node.
pub(crate) trait Link: Send + Sync + 'static {
    /// `attempt`: retries of this call so far (0 = first try); told to the node where the
    /// connection's protocol generation allows it.
    fn call(
        &self,
        node: NodeId,
        addr: SocketAddr,
        request: ClientRequest,
        attempt: u32,
    ) -> impl Future<Output = Result<ClientResponse, LinkError>> + Send;

    /// Drops any connection to `node` (after a failure).
    fn forget(&self, node: NodeId);

    /// Closes every connection.
    fn close(&self);
}

/// A link shared by several clients ([`crate::Client::session`]): the same connections.
impl<L: Link> Link for Arc<L> {
    fn call(
        &self,
        node: NodeId,
        addr: SocketAddr,
        request: ClientRequest,
        attempt: u32,
    ) -> impl Future<Output = Result<ClientResponse, LinkError>> + Send {
        L::call(self, node, addr, request, attempt)
    }

    fn forget(&self, node: NodeId) {
        L::forget(self, node);
    }

    fn close(&self) {
        L::close(self);
    }
}

/// A cached connection and the address it goes to.
type Cached = (SocketAddr, Arc<Connection<NodeMessage>>);

/// QUIC with mutual TLS, one cached connection per node.
pub(crate) struct QuicLink {
    credentials: Arc<Credentials>,
    options: ClientOptions,
    connections: Mutex<HashMap<NodeId, Cached>>,
}

impl QuicLink {
    pub(crate) fn new(credentials: Arc<Credentials>, connect_timeout: Duration, request_timeout: Duration) -> QuicLink {
        let mut options = ClientOptions::default();
        options.connect_timeout = connect_timeout;
        options.request_timeout = request_timeout;
        QuicLink { credentials, options, connections: Mutex::new(HashMap::new()) }
    }

    fn cached(&self, node: NodeId, addr: SocketAddr) -> Option<Arc<Connection<NodeMessage>>> {
        let connections = self.connections.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        connections.get(&node).filter(|(a, _)| *a == addr).map(|(_, c)| Arc::clone(c))
    }

    async fn connection(&self, node: NodeId, addr: SocketAddr) -> Result<Arc<Connection<NodeMessage>>, LinkError> {
        if let Some(c) = self.cached(node, addr) {
            return Ok(c);
        }
        let conn = Connection::connect(&self.credentials, node, addr, self.options.clone())
            .await
            .map_err(|e| LinkError::Connect(describe(&e)))?;
        let conn = Arc::new(conn);
        let mut connections = self.connections.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, old)) = connections.insert(node, (addr, Arc::clone(&conn))) {
            old.close();
        }
        Ok(conn)
    }
}

fn describe(e: &TransportError) -> String {
    match e {
        TransportError::Timeout => "no answer in time".into(),
        TransportError::Connection(c) => format!("connection failed: {c}"),
        other => other.to_string(),
    }
}

/// A paged request sent to a 0.1.0 node as the whole request it knows; its answer is turned
/// back into the page the caller asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Unpaged {
    /// A `ScanPaged`, sent as `Scan`.
    Scan,
    /// A `TxnPaged` from operation `from` at `revision`, sent as `Txn`.
    Txn { from: u32, revision: Option<u64> },
}

/// `request` as a 0.1.0 node can decode it (paged reads become whole ones).
pub(crate) fn unpaged(request: ClientRequest) -> (ClientRequest, Option<Unpaged>) {
    let ClientRequest { id, session, body } = request;
    let (body, paged) = match body {
        Request::ScanPaged { start, end, limit, read } => {
            (Request::Scan { start, end, limit, read }, Some(Unpaged::Scan))
        }
        Request::TxnPaged { txn, from, revision } => (Request::Txn(txn), Some(Unpaged::Txn { from, revision })),
        other => (other, None),
    };
    (ClientRequest { id, session, body }, paged)
}

impl Unpaged {
    /// The page a whole answer makes.
    pub(crate) fn page(&self, answer: Response) -> Result<Response, ApiError> {
        Ok(match (self, answer) {
            (Unpaged::Scan, Response::Scan { kvs, more, read }) => {
                // 0.1.0 says only whether more keys remain: the next page starts after the last.
                let next = if more {
                    kvs.last().map(|kv| {
                        let mut k = kv.key.clone();
                        k.push(0);
                        k
                    })
                } else {
                    None
                };
                Response::ScanPage { kvs, next, read }
            }
            (Unpaged::Txn { from, revision }, Response::Txn { succeeded, results, revision: at }) => {
                // The whole transaction again: only the results this page asked for, and only
                // if the state is the one the first page read.
                if let Some(r) = revision
                    && *r != at
                {
                    return Err(ApiError::PageExpired { revision: *r, current: at });
                }
                let results = results.into_iter().skip(*from as usize).collect();
                Response::TxnPage { succeeded, results, revision: at, next: None }
            }
            (_, other) => other,
        })
    }
}

impl Link for QuicLink {
    async fn call(
        &self,
        node: NodeId,
        addr: SocketAddr,
        request: ClientRequest,
        attempt: u32,
    ) -> Result<ClientResponse, LinkError> {
        let conn = self.connection(node, addr).await?;
        let id = request.id;
        let generation = conn.protocol_generation();
        // A 0.1.0 node (quorate/1) answers whole scans and transactions, not pages.
        let (request, paged) = if generation < PROTOCOL_GENERATION_2 { unpaged(request) } else { (request, None) };
        // Anything else 0.1.0 cannot decode is not sent: it would close the stream, and the
        // caller would learn only that the outcome is unknown. The refusal comes back as the
        // node's answer (nothing was sent, so nothing can have been applied).
        if let Some(refusal) = request.body.refusal_at_generation(generation) {
            return Ok(ClientResponse { id, result: Err(refusal) });
        }
        // A retry says so where the node can decode it (quorate/2); a 0.1.0 node gets the
        // request as 0.1.0 sent it. First tries are plain requests either way.
        let message = if attempt > 0 && generation >= PROTOCOL_GENERATION_2 {
            NodeMessage::RequestAttempt(AttemptedRequest { attempt, request })
        } else {
            NodeMessage::Request(request)
        };
        match conn.request(&message).await {
            Ok(NodeMessage::Response(r)) if r.id == id => Ok(match paged {
                Some(p) => ClientResponse { id, result: r.result.and_then(|answer| p.page(answer)) },
                None => r,
            }),
            Ok(NodeMessage::Response(r)) => {
                self.forget(node);
                Err(LinkError::Lost(format!("answer to request {} arrived for request {id}", r.id)))
            }
            Ok(_) => {
                self.forget(node);
                Err(LinkError::Lost("a message that is not a response arrived".into()))
            }
            Err(e) => {
                self.forget(node);
                Err(LinkError::Lost(describe(&e)))
            }
        }
    }

    fn forget(&self, node: NodeId) {
        let removed = self.connections.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&node);
        if let Some((_, conn)) = removed {
            conn.close();
        }
    }

    fn close(&self) {
        let all: Vec<_> = self.connections.lock().unwrap_or_else(std::sync::PoisonError::into_inner).drain().collect();
        for (_, (_, conn)) in all {
            conn.close();
        }
    }
}
