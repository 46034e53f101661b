//! The QUIC transport: one endpoint per node, a dialing task per peer with bounded queues, an
//! accept loop that authenticates every connection, and the client request path.

use crate::addr::PeerAddr;
use crate::backoff::Backoff;
use crate::conns::{Held, Registered, Table, TableLimits, reserve};
use crate::frame::{
    ALPNS, FRAME_PAYLOAD_BYTES_CEILING, FRAME_PAYLOAD_BYTES_DEFAULT, Frame, FrameError, FrameHeader, HEADER_BYTES,
    Hello, Lane, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN,
};
use crate::identity::{ClientIdentity, ClusterId, Identity, PeerIdentity};
use crate::message::{MessageError, WireMessage, encode_message};
use crate::sources::{HANDSHAKE_RATE_CEILING, HANDSHAKE_SOURCES_MAX, Source, SourceLimiter};
use crate::tls::{Credentials, IdentityOf, TlsError, identity_of};
use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use quorate_log::NodeId;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::UnixTime;
use std::collections::HashMap;
use std::fmt;
use std::future::{Future, poll_fn};
use std::marker::PhantomData;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::AbortHandle;

/// The `tracing` target of audit events (who, what, result).
pub const AUDIT_TARGET: &str = "quorate::audit";

/// QUIC application error codes the transport closes connections and streams with.
pub mod codes {
    /// Orderly shutdown.
    pub const SHUTDOWN: u32 = 0;
    /// The connection was refused: wrong identity, cluster or protocol.
    pub const REFUSED: u32 = 0x10;
    /// A frame was malformed or too large; the stream is closed.
    pub const BAD_FRAME: u32 = 0x11;
    /// A message did not decode; the stream is closed.
    pub const BAD_MESSAGE: u32 = 0x12;
    /// The stream was used against the protocol (e.g. no hello first); also the code of a
    /// client connection closed for a bad request (a malformed, oversized, undecodable or
    /// truncated frame).
    pub const PROTOCOL: u32 = 0x13;
    /// A frame did not arrive in full within the frame deadline; the stream is closed.
    pub const TIMEOUT: u32 = 0x14;
    /// No room: the connection was refused for a connection limit, or a frame could not
    /// reserve its bytes within the frame deadline.
    pub const BUSY: u32 = 0x15;
}

/// Server name sent in the TLS handshake; identity is checked through the URI SAN instead.
const SERVER_NAME: &str = "quorate.invalid";
/// Most unidirectional streams a peer may have open towards us: its consensus and snapshot
/// lanes, and room for each to be replaced. Granted once the peer is authenticated as a node;
/// none during the handshake, none to a client.
const PEER_UNI_STREAMS_MAX: u32 = 4;
/// Most concurrent requests a client may have in flight on one connection. Granted once the
/// peer is authenticated as a client; none during the handshake, none to a node.
const CLIENT_BI_STREAMS_MAX: u32 = 64;
/// First capacity of a frame's payload buffer; it grows (doubling, capped at the announced
/// length) as bytes arrive.
const PAYLOAD_BUFFER_FIRST_BYTES: usize = 16 * 1024;
/// Most connection attempts being handshaken at once.
const INCOMING_MAX: usize = 256;
/// Most messages coalesced into one stream write.
const BATCH_MESSAGES_MAX: usize = 256;
/// A connection that lived at least this long resets the reconnect backoff.
const HEALTHY_CONNECTION: Duration = Duration::from_secs(1);

/// Settings of a [`Transport`]. Build with [`TransportConfig::new`] and adjust fields.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TransportConfig {
    /// The cluster this node belongs to; must match the certificate.
    pub cluster: ClusterId,
    /// This node's id; must match the certificate.
    pub node: NodeId,
    /// Local UDP address (port 0 picks one).
    pub bind: SocketAddr,
    /// Capacity, in messages, of each peer's consensus queue.
    pub queue_capacity: usize,
    /// Capacity, in chunks, of each peer's snapshot queue.
    pub snapshot_queue_capacity: usize,
    /// Capacity, in messages, of each inbox lane.
    pub inbox_capacity: usize,
    /// Largest frame payload accepted or sent (at most [`FRAME_PAYLOAD_BYTES_CEILING`]).
    pub frame_payload_bytes_max: u32,
    /// Bytes of consensus messages coalesced into one stream write.
    pub batch_bytes_max: usize,
    /// QUIC keep-alive interval.
    pub keep_alive: Duration,
    /// QUIC idle timeout: a silent connection is dropped after this.
    pub idle_timeout: Duration,
    /// Limit on a connection attempt (handshake included).
    pub connect_timeout: Duration,
    /// Shortest reconnect delay.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Seed of the reconnect jitter (mixed with the peer id).
    pub seed: u64,
    /// Largest client request payload accepted (`frame_payload_bytes_max` if lower).
    pub request_payload_bytes_max: u32,
    /// Most authenticated inbound connections, peers and clients together; an attempt beyond
    /// it is refused before its handshake.
    pub connections_max: usize,
    /// Most inbound connections of one client identity; the next one is refused.
    pub client_connections_per_identity_max: usize,
    /// Most inbound connections of one node identity; a newer one closes the oldest.
    pub peer_connections_per_node_max: usize,
    /// Limit on an inbound handshake (TLS included), from the first packet.
    pub handshake_timeout: Duration,
    /// Sustained connection attempts (handshakes) per second from one source address (an IPv4
    /// address or an IPv6 /64), after a burst of `handshake_burst_per_source`; an attempt
    /// beyond is dropped on its first packet, before any TLS work and without an answer (the
    /// client's retransmission gets in once the source has a token again). At most
    /// [`HANDSHAKE_SOURCES_MAX`](crate::HANDSHAKE_SOURCES_MAX) sources are remembered.
    pub handshakes_per_source_per_sec: u32,
    /// Connection attempts one source may make at once after a quiet spell.
    pub handshake_burst_per_source: u32,
    /// Limit on receiving one frame: a client request (from its stream's opening to its last
    /// byte, and again to reserve its bytes), a peer's frame (from its first byte to its last).
    pub frame_timeout: Duration,
    /// Bytes of inbound frames one identity may have being received or waiting to be handled
    /// (at least the largest frame).
    pub identity_inbound_bytes_max: u32,
    /// Bytes of client requests being received or waiting to be answered, all clients together.
    pub clients_inbound_bytes_max: u32,
    /// QUIC connection-level receive window of a client connection (bytes the client may send
    /// that the node has not read yet, over all its streams).
    pub client_receive_window_bytes: u32,
    /// QUIC send window of a client connection (response bytes buffered unacknowledged).
    pub client_send_window_bytes: u32,
    /// QUIC connection-level receive window of a peer connection.
    pub peer_receive_window_bytes: u32,
    /// QUIC receive window of one stream (every connection; QUIC's own default).
    pub stream_receive_window_bytes: u32,
    /// Turns a peer's host name into addresses, before every dial of a peer given by name
    /// ([`PeerAddr::Name`]); the system's resolver by default.
    pub resolver: Arc<dyn Resolver>,
    /// Limit on one resolution; a slower one counts as a failed dial.
    pub resolve_timeout: Duration,
}

/// Resolves a peer's host name to socket addresses. The transport asks again before every
/// dial, so a peer that moved is found under its name. Implement it to inject delays or
/// fixed answers (tests, fault injection); [`SystemResolver`] asks the operating system.
pub trait Resolver: Send + Sync + fmt::Debug + 'static {
    /// The addresses of `host` with `port`, best first.
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + '_>>;
}

/// The operating system's resolver (`getaddrinfo`, through tokio: `/etc/hosts`, DNS, …).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + '_>> {
        let host = host.to_string();
        Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), port)).await?.collect()) })
    }
}

/// The address to dial for `addr` from an endpoint bound to `local`: a socket address as is;
/// a name resolved by `resolver` within `timeout`, its first address of `local`'s family
/// (an IPv4 endpoint cannot reach an IPv6 address) or else its first address.
pub(crate) async fn dial_addr(
    addr: &PeerAddr,
    local: SocketAddr,
    resolver: &dyn Resolver,
    timeout: Duration,
) -> Result<SocketAddr, TransportError> {
    let (host, port) = match addr {
        PeerAddr::Socket(sa) => return Ok(*sa),
        PeerAddr::Name { host, port } => (host, *port),
    };
    let found = match tokio::time::timeout(timeout, resolver.resolve(host, port)).await {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => return Err(TransportError::Resolve(format!("{addr}: {e}"))),
        Err(_) => return Err(TransportError::Resolve(format!("{addr}: no answer within {timeout:?}"))),
    };
    let same_family =
        found.iter().find(|a| a.is_ipv4() == local.is_ipv4() || local.ip().is_unspecified() && local.is_ipv6());
    same_family
        .or(found.first())
        .copied()
        .ok_or_else(|| TransportError::Resolve(format!("{addr}: the name has no address")))
}

impl TransportConfig {
    /// Defaults for a node `node` of `cluster` listening on `bind`.
    #[must_use]
    pub fn new(cluster: ClusterId, node: NodeId, bind: SocketAddr) -> TransportConfig {
        TransportConfig {
            cluster,
            node,
            bind,
            queue_capacity: 4096,
            snapshot_queue_capacity: 16,
            inbox_capacity: 8192,
            frame_payload_bytes_max: FRAME_PAYLOAD_BYTES_DEFAULT,
            batch_bytes_max: 64 * 1024,
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            seed: 0x5157_0a7e,
            request_payload_bytes_max: REQUEST_PAYLOAD_BYTES_DEFAULT,
            connections_max: 4096,
            client_connections_per_identity_max: 1024,
            peer_connections_per_node_max: 4,
            handshake_timeout: Duration::from_secs(5),
            handshakes_per_source_per_sec: 32,
            handshake_burst_per_source: 128,
            frame_timeout: Duration::from_secs(10),
            identity_inbound_bytes_max: 32 * MIB,
            clients_inbound_bytes_max: 256 * MIB,
            client_receive_window_bytes: MIB,
            client_send_window_bytes: MIB,
            peer_receive_window_bytes: 16 * MIB,
            stream_receive_window_bytes: 1_250_000,
            resolver: Arc::new(SystemResolver),
            resolve_timeout: Duration::from_secs(5),
        }
    }

    /// Checks that the settings work together.
    fn validate(&self) -> Result<(), TransportError> {
        let bad = |what: &str| Err(TransportError::Config(what.to_string()));
        if self.frame_payload_bytes_max > FRAME_PAYLOAD_BYTES_CEILING
            || self.queue_capacity == 0
            || self.snapshot_queue_capacity == 0
            || self.inbox_capacity == 0
        {
            return bad("frame limit above the ceiling, or a zero capacity");
        }
        if self.identity_inbound_bytes_max < self.frame_payload_bytes_max
            || self.clients_inbound_bytes_max < self.request_payload_bytes_max
        {
            return bad("an inbound byte budget below the largest frame it must hold");
        }
        if self.connections_max == 0
            || self.client_connections_per_identity_max == 0
            || self.peer_connections_per_node_max == 0
        {
            return bad("a zero connection limit");
        }
        if !(1..=HANDSHAKE_RATE_CEILING).contains(&self.handshakes_per_source_per_sec)
            || !(1..=HANDSHAKE_RATE_CEILING).contains(&self.handshake_burst_per_source)
        {
            return bad("a handshake rate or burst per source of zero or above 1,000,000");
        }
        if self.handshake_timeout.is_zero() || self.frame_timeout.is_zero() {
            return bad("a zero handshake or frame timeout");
        }
        if self.client_receive_window_bytes == 0
            || self.client_send_window_bytes == 0
            || self.peer_receive_window_bytes == 0
            || self.stream_receive_window_bytes == 0
        {
            return bad("a zero flow-control window");
        }
        Ok(())
    }
}

const MIB: u32 = 1024 * 1024;
/// Default limit on a client request payload (4 MiB): above any command the node accepts.
pub const REQUEST_PAYLOAD_BYTES_DEFAULT: u32 = 4 * MIB;

/// Why a message was not queued. The message is dropped either way (Raft retransmits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The peer's queue is full; its drop counter was incremented.
    #[error("peer queue full; message dropped")]
    QueueFull,
    /// No such peer was added.
    #[error("unknown peer")]
    UnknownPeer,
    /// The peer's task has ended (transport shutting down).
    #[error("transport closed")]
    Closed,
}

/// Errors of connecting, sending and receiving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// Socket error.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// TLS material problem.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The connection attempt could not start.
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed or was closed (handshake refusals land here).
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Writing to a stream failed.
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    /// Reading from a stream failed.
    #[error("read: {0}")]
    Read(String),
    /// A bad frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A bad message.
    #[error(transparent)]
    Message(#[from] MessageError),
    /// The other side is not who it must be (identity, cluster or protocol).
    #[error("refused: {0}")]
    Refused(String),
    /// Timed out.
    #[error("timed out")]
    Timeout,
    /// A peer's name did not resolve.
    #[error("cannot resolve {0}")]
    Resolve(String),
    /// The configuration is inconsistent.
    #[error("configuration: {0}")]
    Config(String),
    /// The stream or connection ended before an answer.
    #[error("closed before an answer")]
    Closed,
}

/// Per-peer counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerStats {
    /// Messages written to the peer's streams.
    pub sent: u64,
    /// Messages dropped because the queue was full (or could not be encoded).
    pub dropped: u64,
    /// Successful connections (including reconnects).
    pub connects: u64,
    /// Failed connection attempts (including identity refusals).
    pub connect_failures: u64,
    /// Whether a connection is up now.
    pub connected: bool,
    /// The smoothed round-trip time of the current connection (QUIC's estimate, fed by
    /// acknowledgements); `None` while no connection is up.
    pub rtt: Option<Duration>,
    /// Resolutions of the peer's name that failed or timed out (each also a failed dial).
    pub resolve_failures: u64,
    /// The socket address of the last dial (for a peer given by name, what its name resolved
    /// to then); `None` before the first.
    pub dialed: Option<SocketAddr>,
}

#[derive(Default)]
struct PeerCounters {
    sent: AtomicU64,
    dropped: AtomicU64,
    connects: AtomicU64,
    connect_failures: AtomicU64,
    connected: AtomicBool,
    resolve_failures: AtomicU64,
    /// The address of the last dial (a name's resolution).
    resolved: Mutex<Option<SocketAddr>>,
    /// The connection in use (a handle: it only reads the round-trip time through it).
    conn: Mutex<Option<Connection>>,
}

impl PeerCounters {
    fn set_resolved(&self, addr: Option<SocketAddr>) {
        *self.resolved.lock().unwrap_or_else(|p| p.into_inner()) = addr;
    }

    fn set_conn(&self, conn: Option<Connection>) {
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = conn;
    }

    fn rtt(&self) -> Option<Duration> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(Connection::rtt)
    }
}

struct Peer<M> {
    consensus: mpsc::Sender<M>,
    snapshot: mpsc::Sender<M>,
    counters: Arc<PeerCounters>,
    task: AbortHandle,
}

/// What arrives at a node.
#[derive(Debug)]
#[non_exhaustive]
pub enum Incoming<M> {
    /// A message from an authenticated peer.
    Peer {
        /// The sender, as bound to its certificate.
        from: NodeId,
        /// The lane it came on.
        lane: Lane,
        /// The message.
        message: M,
    },
    /// A request from an authenticated client; answer with [`Request::respond`].
    Request(Request<M>),
}

/// A client request waiting for its response.
pub struct Request<M> {
    /// Who asked, with the role from its certificate.
    pub from: ClientIdentity,
    /// The request.
    pub message: M,
    send: SendStream,
    frame_payload_bytes_max: u32,
    generation: u8,
    /// The request's bytes, reserved from its identity's and all clients' budgets until it
    /// is answered or dropped.
    _held: Held,
}

impl<M: fmt::Debug> fmt::Debug for Request<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request").field("from", &self.from).field("message", &self.message).finish_non_exhaustive()
    }
}

impl<M> Request<M> {
    /// The protocol generation its connection negotiated: 2 for `quorate/2`, 1 for `quorate/1`
    /// (a 0.1.0 client, which understands only what 0.1.0 could decode).
    pub fn protocol_generation(&self) -> u8 {
        self.generation
    }
}

impl<M: WireMessage> Request<M> {
    /// Sends the response and closes the request stream.
    pub async fn respond(mut self, response: &M) -> Result<(), TransportError> {
        let mut buf = Vec::new();
        encode_message(response, self.frame_payload_bytes_max, &mut buf)?;
        self.send.write_all(&buf).await?;
        let _ = self.send.finish();
        Ok(())
    }
}

/// The receiving side of a [`Transport`]: consensus messages first, then client requests,
/// then snapshot chunks, so a backlog of bulk data never delays a heartbeat.
pub struct Inbox<M> {
    consensus: mpsc::Receiver<(NodeId, M, Held)>,
    requests: mpsc::Receiver<Request<M>>,
    snapshot: mpsc::Receiver<(NodeId, M, Held)>,
}

impl<M> fmt::Debug for Inbox<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbox").finish_non_exhaustive()
    }
}

impl<M> Inbox<M> {
    /// The next message; `None` once the transport is gone.
    pub async fn recv(&mut self) -> Option<Incoming<M>> {
        poll_fn(|cx| {
            let mut closed = 0;
            // A peer message's reserved bytes are released here: the application has it.
            match self.consensus.poll_recv(cx) {
                Poll::Ready(Some((from, message, _held))) => {
                    return Poll::Ready(Some(Incoming::Peer { from, lane: Lane::Consensus, message }));
                }
                Poll::Ready(None) => closed += 1,
                Poll::Pending => {}
            }
            match self.requests.poll_recv(cx) {
                Poll::Ready(Some(r)) => return Poll::Ready(Some(Incoming::Request(r))),
                Poll::Ready(None) => closed += 1,
                Poll::Pending => {}
            }
            match self.snapshot.poll_recv(cx) {
                Poll::Ready(Some((from, message, _held))) => {
                    return Poll::Ready(Some(Incoming::Peer { from, lane: Lane::Snapshot, message }));
                }
                Poll::Ready(None) => closed += 1,
                Poll::Pending => {}
            }
            if closed == 3 { Poll::Ready(None) } else { Poll::Pending }
        })
        .await
    }
}

/// State shared with the background tasks.
struct Ctx<M> {
    config: TransportConfig,
    credentials: Arc<Credentials>,
    endpoint: Endpoint,
    quic: Arc<quinn::TransportConfig>,
    refusals: AtomicU64,
    /// Handshake buckets per source address.
    sources: Mutex<SourceLimiter>,
    /// Connection attempts refused for their source's handshake rate.
    handshakes_refused: AtomicU64,
    /// Set once the cluster is finalized past protocol generation 1 ([`Transport::refuse_quorate_1`]).
    quorate_1_refused: std::sync::atomic::AtomicBool,
    inbox_consensus: mpsc::Sender<(NodeId, M, Held)>,
    inbox_snapshot: mpsc::Sender<(NodeId, M, Held)>,
    inbox_requests: mpsc::Sender<Request<M>>,
    /// Open connections and the per-identity byte budgets.
    conns: Arc<Table>,
    /// Bytes of client requests being received or waiting to be answered.
    clients_budget: Arc<Semaphore>,
}

/// A node's QUIC endpoint: dials its peers, accepts peers and clients, authenticates all of
/// them by certificate, and moves [`WireMessage`]s. Dropping it closes the endpoint.
pub struct Transport<M: WireMessage> {
    ctx: Arc<Ctx<M>>,
    peers: RwLock<HashMap<NodeId, Peer<M>>>,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl<M: WireMessage> fmt::Debug for Transport<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("node", &self.ctx.config.node)
            .field("local_addr", &self.local_addr())
            .finish_non_exhaustive()
    }
}

/// The QUIC transport parameters of a node's endpoint (accepted and dialed connections). No
/// stream may be opened towards the node until the other side is authenticated: then a node
/// gets its unidirectional lanes and a client its bidirectional request streams, each with
/// the connection windows of its kind. A dialed connection never grants any stream.
pub fn quic_transport_config(config: &TransportConfig) -> Result<quinn::TransportConfig, TransportError> {
    let mut t = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(config.idle_timeout)
        .map_err(|_| TransportError::Config("idle timeout too large".into()))?;
    t.max_idle_timeout(Some(idle));
    t.keep_alive_interval(Some(config.keep_alive));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.max_concurrent_bidi_streams(VarInt::from_u32(0));
    t.stream_receive_window(VarInt::from_u32(config.stream_receive_window_bytes));
    // Until a connection is authenticated it may not send on any stream; the window is raised
    // for its kind then.
    t.receive_window(VarInt::from_u32(config.stream_receive_window_bytes));
    t.send_window(u64::from(config.client_send_window_bytes.max(config.stream_receive_window_bytes)));
    Ok(t)
}

impl<M: WireMessage> Transport<M> {
    /// Binds the endpoint and starts accepting. The certificate in `credentials` must name
    /// `quorate://<config.cluster>/node/<config.node>`. Must be called within a tokio runtime.
    pub async fn bind(
        config: TransportConfig,
        credentials: Arc<Credentials>,
    ) -> Result<(Transport<M>, Inbox<M>), TransportError> {
        let expected = Identity::peer(config.cluster.clone(), config.node);
        if credentials.identity() != expected {
            return Err(TransportError::Config(format!(
                "certificate names {}, configuration says {expected}",
                credentials.identity()
            )));
        }
        config.validate()?;
        let quic = Arc::new(quic_transport_config(&config)?);
        // A reset key that survives a restart (derived from the private key), so that a
        // restarted node resets its peers' connections to its previous incarnation.
        let mut endpoint_config = quinn::EndpointConfig::default();
        endpoint_config.reset_key(Arc::new(credentials.reset_key()));
        endpoint_config.cid_generator(|| Box::new(crate::tls::RandomCids));
        let runtime =
            quinn::default_runtime().ok_or_else(|| TransportError::Config("no async runtime found".into()))?;
        let socket = std::net::UdpSocket::bind(config.bind)?;
        let endpoint = Endpoint::new(endpoint_config, Some(server_config(&credentials, &quic)), socket, runtime)?;
        let (ctx_tx, consensus) = mpsc::channel(config.inbox_capacity);
        let (snap_tx, snapshot) = mpsc::channel(config.inbox_capacity);
        let (req_tx, requests) = mpsc::channel(config.inbox_capacity);
        let conns = Table::new(TableLimits {
            connections_max: config.connections_max,
            client_connections_per_identity_max: config.client_connections_per_identity_max,
            peer_connections_per_node_max: config.peer_connections_per_node_max,
            identity_inbound_bytes_max: config.identity_inbound_bytes_max,
        });
        let clients_budget = Arc::new(Semaphore::new(config.clients_inbound_bytes_max as usize));
        let sources = Mutex::new(SourceLimiter::new(
            config.handshakes_per_source_per_sec,
            config.handshake_burst_per_source,
            HANDSHAKE_SOURCES_MAX,
        ));
        let ctx = Arc::new(Ctx {
            sources,
            handshakes_refused: AtomicU64::new(0),
            config,
            credentials,
            endpoint,
            quic,
            refusals: AtomicU64::new(0),
            quorate_1_refused: std::sync::atomic::AtomicBool::new(false),
            inbox_consensus: ctx_tx,
            inbox_snapshot: snap_tx,
            inbox_requests: req_tx,
            conns,
            clients_budget,
        });
        let accept = tokio::spawn(accept_loop(ctx.clone())).abort_handle();
        let transport = Transport { ctx, peers: RwLock::new(HashMap::new()), tasks: Mutex::new(vec![accept]) };
        Ok((transport, Inbox { consensus, requests, snapshot }))
    }

    /// The bound UDP address.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.ctx.endpoint.local_addr().unwrap_or_else(|_| self.ctx.config.bind)
    }

    /// This node's id.
    #[must_use]
    pub fn node(&self) -> NodeId {
        self.ctx.config.node
    }

    /// The TLS credentials in use.
    #[must_use]
    pub fn credentials(&self) -> &Arc<Credentials> {
        &self.ctx.credentials
    }

    /// Adds (or re-addresses) a peer and starts dialing it in the background. Messages to it
    /// queue up to the configured capacity meanwhile.
    pub fn add_peer(&self, node: NodeId, addr: SocketAddr) {
        self.add_peer_at(node, PeerAddr::Socket(addr));
    }

    /// As [`add_peer`](Self::add_peer), with an address that may be a host name: it is
    /// resolved again before every dial (see [`TransportConfig::resolver`]).
    pub fn add_peer_at(&self, node: NodeId, addr: PeerAddr) {
        let cfg = &self.ctx.config;
        let (consensus, consensus_rx) = mpsc::channel(cfg.queue_capacity);
        let (snapshot, snapshot_rx) = mpsc::channel(cfg.snapshot_queue_capacity);
        let counters = Arc::new(PeerCounters::default());
        let task = tokio::spawn(peer_task(self.ctx.clone(), node, addr, consensus_rx, snapshot_rx, counters.clone()))
            .abort_handle();
        let peer = Peer { consensus, snapshot, counters, task };
        let old = self.write_peers().insert(node, peer);
        if let Some(old) = old {
            old.task.abort();
        }
    }

    /// Stops dialing a peer and drops its queues. Returns whether it was known.
    pub fn remove_peer(&self, node: NodeId) -> bool {
        let old = self.write_peers().remove(&node);
        old.map(|p| p.task.abort()).is_some()
    }

    /// Queues a consensus message for `to` without waiting. When the queue is full the message
    /// is dropped and the peer's drop counter incremented.
    pub fn try_send(&self, to: NodeId, message: M) -> Result<(), SendError> {
        self.try_send_on(to, message, Lane::Consensus)
    }

    /// Queues a snapshot chunk for `to` on the separate snapshot stream, without waiting.
    pub fn try_send_snapshot(&self, to: NodeId, chunk: M) -> Result<(), SendError> {
        self.try_send_on(to, chunk, Lane::Snapshot)
    }

    fn try_send_on(&self, to: NodeId, message: M, lane: Lane) -> Result<(), SendError> {
        let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
        let peer = peers.get(&to).ok_or(SendError::UnknownPeer)?;
        let queue = match lane {
            Lane::Consensus => &peer.consensus,
            Lane::Snapshot => &peer.snapshot,
        };
        match queue.try_send(message) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                peer.counters.dropped.fetch_add(1, Ordering::Relaxed);
                Err(SendError::QueueFull)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::Closed),
        }
    }

    /// Counters of one peer.
    #[must_use]
    pub fn peer_stats(&self, node: NodeId) -> Option<PeerStats> {
        let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
        peers.get(&node).map(|p| {
            let c = &p.counters;
            PeerStats {
                sent: c.sent.load(Ordering::Relaxed),
                dropped: c.dropped.load(Ordering::Relaxed),
                connects: c.connects.load(Ordering::Relaxed),
                connect_failures: c.connect_failures.load(Ordering::Relaxed),
                connected: c.connected.load(Ordering::Relaxed),
                rtt: c.rtt(),
                resolve_failures: c.resolve_failures.load(Ordering::Relaxed),
                dialed: *c.resolved.lock().unwrap_or_else(|p| p.into_inner()),
            }
        })
    }

    /// The smoothed round-trip time to a peer over its current connection; `None` when the
    /// peer is unknown or not connected.
    #[must_use]
    pub fn peer_rtt(&self, node: NodeId) -> Option<Duration> {
        let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
        peers.get(&node).and_then(|p| p.counters.rtt())
    }

    /// The protocol generation of the current connection to a peer (2 for `quorate/2`, 1 for
    /// `quorate/1`, a 0.1.0 binary); `None` when the peer is unknown or not connected.
    #[must_use]
    pub fn peer_protocol_generation(&self, node: NodeId) -> Option<u8> {
        let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
        let p = peers.get(&node)?;
        p.counters.conn.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(protocol_generation)
    }

    /// How many inbound connections or streams were refused (bad handshake, identity,
    /// cluster, protocol). Each refusal is also an audit event.
    #[must_use]
    pub fn refusals(&self) -> u64 {
        self.ctx.refusals.load(Ordering::Relaxed)
    }

    /// From now on, refuses every new connection, inbound or dialled, that negotiated
    /// `quorate/1` (binaries older than 0.2.0): called once the cluster is finalized past
    /// protocol generation 1, so that an old binary cannot join. Existing connections stay.
    pub fn refuse_quorate_1(&self) {
        self.ctx.quorate_1_refused.store(true, Ordering::Relaxed);
    }

    /// Connection attempts dropped on their first packet for their source's handshake rate
    /// (`handshakes_per_source_per_sec`). Not audit events one by one (a flood would flood the
    /// log): one audit event per 1,024 refusals (the first included), and this counts them all.
    #[must_use]
    pub fn handshakes_refused(&self) -> u64 {
        self.ctx.handshakes_refused.load(Ordering::Relaxed)
    }

    /// Established inbound connections (authenticated peers and clients).
    #[must_use]
    pub fn connections(&self) -> usize {
        self.ctx.conns.inbound()
    }

    /// Re-reads the certificate files (and revocation lists), serves new connections with
    /// them, and closes every open connection whose peer no longer verifies (see
    /// [`Transport::recheck_connections`]). A refused reload keeps everything as it was.
    pub fn reload_tls(&self) -> Result<(), TlsError> {
        self.ctx.credentials.reload()?;
        self.ctx.endpoint.set_server_config(Some(server_config(&self.ctx.credentials, &self.ctx.quic)));
        recheck(&self.ctx);
        Ok(())
    }

    /// Closes every open connection, inbound or dialed, whose peer's certificate chain no
    /// longer verifies against the credentials in force: revoked by a revocation list,
    /// expired, or issued by a CA no longer in the bundle. Each is an audit event. Returns
    /// how many were closed.
    pub fn recheck_connections(&self) -> usize {
        recheck(&self.ctx)
    }

    /// Every `every`: reloads the certificate files if any changed (a refused reload is
    /// logged, counted, and retried at the next change), re-checks every open connection after
    /// a reload, and closes connections whose peer certificate has expired.
    pub fn watch_tls(&self, every: Duration) {
        let ctx = self.ctx.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Ok(true) = ctx.credentials.reload_if_changed() {
                    ctx.endpoint.set_server_config(Some(server_config(&ctx.credentials, &ctx.quic)));
                    recheck(&ctx);
                }
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
                for who in ctx.conns.expire(now) {
                    audit_refused(&ctx.refusals, &who, "recheck", &"certificate expired; connection closed");
                }
            }
        });
        self.lock_tasks().push(task.abort_handle());
    }

    /// Closes every connection and waits (bounded) for the peers to be told.
    pub async fn shutdown(self) {
        self.stop();
        self.ctx.endpoint.close(VarInt::from_u32(codes::SHUTDOWN), b"shutdown");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ctx.endpoint.wait_idle()).await;
    }

    fn stop(&self) {
        for task in self.lock_tasks().drain(..) {
            task.abort();
        }
        for (_, peer) in self.write_peers().drain() {
            peer.task.abort();
        }
    }

    fn write_peers(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<NodeId, Peer<M>>> {
        self.peers.write().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, Vec<AbortHandle>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<M: WireMessage> Drop for Transport<M> {
    fn drop(&mut self) {
        self.stop();
        self.ctx.endpoint.close(VarInt::from_u32(codes::SHUTDOWN), b"dropped");
    }
}

fn server_config(credentials: &Credentials, quic: &Arc<quinn::TransportConfig>) -> quinn::ServerConfig {
    let mut server = quinn::ServerConfig::with_crypto(credentials.quic_server_crypto());
    server.transport_config(quic.clone());
    server.max_incoming(INCOMING_MAX);
    server
}

fn client_config(credentials: &Credentials, quic: &Arc<quinn::TransportConfig>) -> quinn::ClientConfig {
    let mut client = quinn::ClientConfig::new(credentials.quic_client_crypto());
    client.transport_config(quic.clone());
    client
}

fn recheck<M>(ctx: &Ctx<M>) -> usize {
    let closed = ctx.conns.recheck(&ctx.credentials.trust(), UnixTime::now());
    for (who, reason) in &closed {
        audit_refused(&ctx.refusals, who, "recheck", &format!("{reason}; connection closed"));
    }
    closed.len()
}

enum Either<A, B> {
    Left(A),
    Right(B),
}

/// Polls two futures, `a` first, returning whichever completes first.
async fn race<A: Future, B: Future>(a: A, b: B) -> Either<A::Output, B::Output> {
    let mut a = pin!(a);
    let mut b = pin!(b);
    poll_fn(|cx| {
        if let Poll::Ready(x) = a.as_mut().poll(cx) {
            return Poll::Ready(Either::Left(x));
        }
        if let Poll::Ready(y) = b.as_mut().poll(cx) {
            return Poll::Ready(Either::Right(y));
        }
        Poll::Pending
    })
    .await
}

fn audit_refused(refusals: &AtomicU64, who: &dyn fmt::Display, what: &str, reason: &dyn fmt::Display) {
    tracing::warn!(target: "quorate::audit", who = %who, what, result = "refused", reason = %reason);
    refusals.fetch_add(1, Ordering::Relaxed);
}

fn audit_accepted(who: &dyn fmt::Display, what: &str) {
    tracing::info!(target: "quorate::audit", who = %who, what, result = "accepted");
}

/// The protocol generation a connection negotiated (2 for `quorate/2`, else 1).
fn protocol_generation(conn: &Connection) -> u8 {
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    if alpn.as_deref() == Some(crate::frame::ALPN_V2) { 2 } else { 1 }
}

/// Checks ALPN and reads the identity from the peer's certificate.
fn authenticate(conn: &Connection, refuse_quorate_1: bool) -> Result<Identity, String> {
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    if !alpn.as_deref().is_some_and(|a| ALPNS.contains(&a)) {
        return Err("no quorate ALPN (quorate/2 or quorate/1) negotiated".into());
    }
    if refuse_quorate_1 && alpn.as_deref() == Some(crate::frame::ALPN) {
        return Err("the cluster is finalized: a peer speaking only quorate/1 (a binary older than 0.2.0) can no \
             longer join; upgrade it"
            .into());
    }
    let certs = conn
        .peer_identity()
        .and_then(|c| c.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or_else(|| "no peer certificate".to_string())?;
    let leaf = certs.first().ok_or_else(|| "empty certificate chain".to_string())?;
    identity_of(leaf).map_err(|e| match e {
        IdentityOf::Missing(r) => r,
        IdentityOf::Invalid(e) => e.to_string(),
    })
}

fn refuse_connection(conn: &Connection, reason: &str) {
    conn.close(VarInt::from_u32(codes::REFUSED), reason.as_bytes());
}

async fn accept_loop<M: WireMessage>(ctx: Arc<Ctx<M>>) {
    while let Some(incoming) = ctx.endpoint.accept().await {
        let remote = incoming.remote_address();
        // The source's handshake rate first. An attempt beyond it is dropped: no TLS work and
        // no packet in answer. A `CONNECTION_REFUSED` would go to whatever address the first
        // packet claims (a reflection) and give a flooder something to spin on (the attack
        // suite's connection flood made ~1,300 refused attempts a second); a dropped attempt
        // waits for its own retransmission (about a second), which an honest client makes and
        // which is let in once the source has a token again.
        let source = Source::of(remote);
        let rate =
            ctx.sources.lock().unwrap_or_else(std::sync::PoisonError::into_inner).try_take(source, Instant::now());
        if let Err(wait) = rate {
            let refused = ctx.handshakes_refused.fetch_add(1, Ordering::Relaxed);
            // One audit event per 1,024 refusals: a flood must not flood the log.
            if refused.is_multiple_of(1024) {
                let reason = format!(
                    "over handshakes_per_source_per_sec from this source (next in {wait:?}; {} refused so far)",
                    refused + 1
                );
                audit_refused(&ctx.refusals, &remote, "handshake", &reason);
            }
            incoming.ignore();
            continue;
        }
        if let Err(refusal) = ctx.conns.has_room() {
            audit_refused(&ctx.refusals, &remote, "connect", &refusal);
            incoming.refuse();
            continue;
        }
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let connecting = match incoming.accept() {
                Ok(c) => c,
                Err(e) => {
                    audit_refused(&ctx.refusals, &remote, "handshake", &e);
                    return;
                }
            };
            // Dropping an unfinished handshake closes it.
            let conn = match tokio::time::timeout(ctx.config.handshake_timeout, connecting).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => {
                    audit_refused(&ctx.refusals, &remote, "handshake", &e);
                    return;
                }
                Err(_) => {
                    let reason = format!("not completed within {:?}", ctx.config.handshake_timeout);
                    audit_refused(&ctx.refusals, &remote, "handshake", &reason);
                    return;
                }
            };
            let identity = match authenticate(&conn, ctx.quorate_1_refused.load(Ordering::Relaxed)) {
                Ok(identity) => identity,
                Err(reason) => {
                    audit_refused(&ctx.refusals, &remote, "connect", &reason);
                    refuse_connection(&conn, &reason);
                    return;
                }
            };
            if identity.cluster() != &ctx.config.cluster {
                let reason = format!("cluster is not {}", ctx.config.cluster);
                audit_refused(&ctx.refusals, &identity, "connect", &reason);
                refuse_connection(&conn, "wrong cluster");
                return;
            }
            let (registered, budget) = match ctx.conns.admit(&conn, &identity) {
                Ok(r) => r,
                Err(refusal) => {
                    audit_refused(&ctx.refusals, &identity, "connect", &refusal);
                    conn.close(VarInt::from_u32(codes::BUSY), b"too many connections");
                    return;
                }
            };
            audit_accepted(&identity, "connect");
            match identity {
                Identity::Peer(peer) => serve_peer(ctx, conn, peer, budget).await,
                Identity::Client(client) => serve_client(ctx, conn, client, budget).await,
            }
            drop(registered);
        });
    }
}

async fn serve_peer<M: WireMessage>(ctx: Arc<Ctx<M>>, conn: Connection, peer: PeerIdentity, budget: Arc<Semaphore>) {
    conn.set_receive_window(VarInt::from_u32(ctx.config.peer_receive_window_bytes));
    conn.set_max_concurrent_uni_streams(VarInt::from_u32(PEER_UNI_STREAMS_MAX));
    while let Ok(recv) = conn.accept_uni().await {
        tokio::spawn(read_peer_stream(ctx.clone(), conn.clone(), peer.clone(), recv, budget.clone()));
    }
}

async fn read_peer_stream<M: WireMessage>(
    ctx: Arc<Ctx<M>>,
    conn: Connection,
    peer: PeerIdentity,
    recv: RecvStream,
    budget: Arc<Semaphore>,
) {
    let limit = ctx.config.frame_timeout;
    let mut reader = FrameReader::new(recv, ctx.config.frame_payload_bytes_max);
    // The hello: its first byte within the frame deadline of the stream's opening, like the
    // rest of it.
    let hello = match reader.frame(Some(limit), limit).await {
        Ok(Some((header, payload))) => Hello::decode(&Frame { header, payload: &payload }),
        Ok(None) | Err(ReadFrameError::Stream(_) | ReadFrameError::Truncated(_) | ReadFrameError::Busy) => return,
        Err(ReadFrameError::Timeout) => {
            reader.stop(codes::TIMEOUT);
            audit_refused(&ctx.refusals, &Identity::Peer(peer), "hello", &"not received within the frame deadline");
            return;
        }
        Err(ReadFrameError::Frame(e)) => Err(e),
    };
    let hello = match hello {
        Ok(hello) => hello,
        Err(e) => {
            audit_refused(&ctx.refusals, &Identity::Peer(peer), "hello", &e);
            reader.stop(codes::PROTOCOL);
            return;
        }
    };
    let mismatch = if hello.cluster != ctx.config.cluster {
        Some(format!("hello names cluster {}", hello.cluster))
    } else if hello.from != peer.node {
        Some(format!("claims node {} but its certificate names node {}", hello.from, peer.node))
    } else if hello.to != ctx.config.node {
        Some(format!("meant for node {}", hello.to))
    } else if hello.version_max < PROTOCOL_VERSION_MIN || hello.version_min > PROTOCOL_VERSION {
        Some(format!("speaks protocol {}..={}", hello.version_min, hello.version_max))
    } else {
        None
    };
    if let Some(reason) = mismatch {
        audit_refused(&ctx.refusals, &Identity::Peer(peer), "hello", &reason);
        refuse_connection(&conn, "identity mismatch");
        return;
    }
    let inbox = match hello.lane {
        Lane::Consensus => &ctx.inbox_consensus,
        Lane::Snapshot => &ctx.inbox_snapshot,
    };
    loop {
        // A lane may stay silent between messages; once a frame starts it must arrive whole
        // within the deadline. Waiting for budget is this node's own backpressure (the inbox
        // not yet drained), not the peer's doing: no deadline on it.
        let header = match reader.header(None, limit).await {
            Ok(Some(h)) => h,
            Ok(None) | Err(ReadFrameError::Stream(_) | ReadFrameError::Truncated(_)) => return,
            Err(e) => return peer_stream_failed(&mut reader, &peer, e),
        };
        let Some(held) = reserve(&budget, None, header.payload_bytes).await else { return };
        let message = match reader.payload(&header, limit).await {
            Ok(payload) => decode_owned::<M>(header, payload),
            Err(ReadFrameError::Stream(_) | ReadFrameError::Truncated(_)) => return,
            Err(e) => return peer_stream_failed(&mut reader, &peer, e),
        };
        match message {
            Ok(message) => {
                if inbox.send((peer.node, message, held)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                reader.stop(codes::BAD_MESSAGE);
                tracing::warn!(peer = %peer.node, error = %e, "undecodable message; stream closed");
                return;
            }
        }
    }
}

/// Closes a peer stream after a bad or late frame.
fn peer_stream_failed(reader: &mut FrameReader, peer: &PeerIdentity, e: ReadFrameError) {
    match e {
        ReadFrameError::Timeout => {
            reader.stop(codes::TIMEOUT);
            tracing::warn!(peer = %peer.node, "frame not received within the frame deadline; stream closed");
        }
        ReadFrameError::Frame(e) => {
            reader.stop(codes::BAD_FRAME);
            tracing::warn!(peer = %peer.node, error = %e, "bad frame; stream closed");
        }
        ReadFrameError::Stream(_) | ReadFrameError::Truncated(_) | ReadFrameError::Busy => {}
    }
}

async fn serve_client<M: WireMessage>(
    ctx: Arc<Ctx<M>>,
    conn: Connection,
    client: ClientIdentity,
    budget: Arc<Semaphore>,
) {
    conn.set_receive_window(VarInt::from_u32(ctx.config.client_receive_window_bytes));
    conn.set_send_window(u64::from(ctx.config.client_send_window_bytes));
    conn.set_max_concurrent_bi_streams(VarInt::from_u32(CLIENT_BI_STREAMS_MAX));
    let generation = protocol_generation(&conn);
    while let Ok((send, recv)) = conn.accept_bi().await {
        let conn = conn.clone();
        tokio::spawn(read_request(ctx.clone(), client.clone(), conn, send, recv, generation, budget.clone()));
    }
}

/// Reads one request: its header within the frame deadline of the stream's opening, its
/// bytes reserved within the deadline again, its payload within the deadline again.
///
/// A request no honest client sends — a frame over the limit or with a bad header, a message
/// that does not decode, a stream finished inside its frame — closes the client's whole
/// connection (`codes::PROTOCOL`), logged once: the client must connect again, which meets
/// the handshake rate of its source, so it cannot make the node refuse thousands of bad frames
/// a second on one connection. A late frame or one without room for its bytes closes only its
/// stream (`TIMEOUT`, `BUSY`), and a reset stream (a cancelled request) is no fault at all.
async fn read_request<M: WireMessage>(
    ctx: Arc<Ctx<M>>,
    from: ClientIdentity,
    conn: Connection,
    mut send: SendStream,
    recv: RecvStream,
    generation: u8,
    budget: Arc<Semaphore>,
) {
    let limit = ctx.config.frame_timeout;
    let max = ctx.config.request_payload_bytes_max.min(ctx.config.frame_payload_bytes_max);
    let mut reader = FrameReader::new(recv, max);
    let result = async {
        let header = match reader.header(Some(limit), limit).await {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(None),
            Err(e) => return Err(e),
        };
        let reserved = tokio::time::timeout(limit, reserve(&budget, Some(&ctx.clients_budget), header.payload_bytes));
        let held = match reserved.await {
            Ok(Some(held)) => held,
            Ok(None) => return Ok(None),
            Err(_) => return Err(ReadFrameError::Busy),
        };
        let payload = reader.payload(&header, limit).await?;
        Ok(Some((header, payload, held)))
    }
    .await;
    // (code, reason, whether the whole connection goes)
    let failed = |code: u32, reason: String, violation: bool| (code, reason, violation);
    let outcome = match result {
        Ok(Some((header, payload, held))) => match decode_owned::<M>(header, payload) {
            Ok(message) => Ok((message, held)),
            Err(e) => Err(failed(codes::BAD_MESSAGE, e.to_string(), true)),
        },
        Ok(None) | Err(ReadFrameError::Stream(_)) => return,
        Err(ReadFrameError::Truncated(why)) => Err(failed(codes::BAD_FRAME, why.into(), true)),
        Err(ReadFrameError::Frame(e)) => Err(failed(codes::BAD_FRAME, e.to_string(), true)),
        Err(ReadFrameError::Timeout) => {
            Err(failed(codes::TIMEOUT, "not received within the frame deadline".into(), false))
        }
        Err(ReadFrameError::Busy) => {
            Err(failed(codes::BUSY, "no room for its bytes within the frame deadline".into(), false))
        }
    };
    match outcome {
        Ok((message, held)) => {
            let max = ctx.config.frame_payload_bytes_max;
            let request = Request { from, message, send, frame_payload_bytes_max: max, generation, _held: held };
            let _ = ctx.inbox_requests.send(request).await;
        }
        Err((_, reason, true)) => {
            // Once per connection: the other streams of a closing connection fail as lost.
            if conn.close_reason().is_none() {
                conn.close(VarInt::from_u32(codes::PROTOCOL), b"protocol violation");
                tracing::warn!(client = %from.principal, reason, "bad request; connection closed");
            }
        }
        Err((code, reason, false)) => {
            reader.stop(code);
            let _ = send.reset(VarInt::from_u32(code));
            tracing::warn!(client = %from.principal, reason, "request not received; stream closed");
        }
    }
}

/// Dials a peer, checks it is who we meant, and returns the connection.
async fn connect_peer<M: WireMessage>(
    ctx: &Ctx<M>,
    node: NodeId,
    addr: SocketAddr,
) -> Result<Connection, TransportError> {
    let config = client_config(&ctx.credentials, &ctx.quic);
    let connecting = ctx.endpoint.connect_with(config, addr, SERVER_NAME)?;
    let conn =
        tokio::time::timeout(ctx.config.connect_timeout, connecting).await.map_err(|_| TransportError::Timeout)??;
    let expected = Identity::peer(ctx.config.cluster.clone(), node);
    check_server_identity(&conn, &expected, &ctx.refusals, ctx.quorate_1_refused.load(Ordering::Relaxed))?;
    Ok(conn)
}

fn check_server_identity(
    conn: &Connection,
    expected: &Identity,
    refusals: &AtomicU64,
    refuse_quorate_1: bool,
) -> Result<(), TransportError> {
    let reason = match authenticate(conn, refuse_quorate_1) {
        Ok(found) if &found == expected => return Ok(()),
        Ok(found) => format!("expected {expected}, certificate names {found}"),
        Err(reason) => reason,
    };
    audit_refused(refusals, &conn.remote_address(), "dial", &reason);
    refuse_connection(conn, "unexpected identity");
    Err(TransportError::Refused(reason))
}

async fn peer_task<M: WireMessage>(
    ctx: Arc<Ctx<M>>,
    node: NodeId,
    addr: PeerAddr,
    mut consensus: mpsc::Receiver<M>,
    snapshot: mpsc::Receiver<M>,
    counters: Arc<PeerCounters>,
) {
    let seed = ctx.config.seed ^ node.get().wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut backoff = Backoff::new(ctx.config.backoff_min, ctx.config.backoff_max, seed);
    let snapshot = Arc::new(tokio::sync::Mutex::new(snapshot));
    loop {
        let local = ctx.endpoint.local_addr().unwrap_or(ctx.config.bind);
        let dialed = match dial_addr(&addr, local, &*ctx.config.resolver, ctx.config.resolve_timeout).await {
            Ok(sa) => {
                counters.set_resolved(Some(sa));
                connect_peer(&ctx, node, sa).await
            }
            Err(e) => {
                counters.resolve_failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        };
        match dialed {
            Ok(conn) => {
                let since = Instant::now();
                let _registered: Registered =
                    ctx.conns.dialed(&conn, &Identity::peer(ctx.config.cluster.clone(), node));
                counters.connects.fetch_add(1, Ordering::Relaxed);
                counters.connected.store(true, Ordering::Relaxed);
                counters.set_conn(Some(conn.clone()));
                let snap =
                    tokio::spawn(snapshot_sender(ctx.clone(), conn.clone(), node, snapshot.clone(), counters.clone()));
                let result = consensus_sender(&ctx, &conn, node, &mut consensus, &counters).await;
                snap.abort();
                let _ = snap.await;
                counters.connected.store(false, Ordering::Relaxed);
                counters.set_conn(None);
                conn.close(VarInt::from_u32(codes::SHUTDOWN), b"reconnecting");
                match result {
                    Ok(()) => return, // queue closed: peer removed
                    Err(e) => tracing::debug!(peer = %node, error = %e, "peer connection lost"),
                }
                if since.elapsed() >= HEALTHY_CONNECTION {
                    backoff.reset();
                }
            }
            Err(e) => {
                counters.connect_failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %node, %addr, error = %e, "connect failed");
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

async fn open_lane<M: WireMessage>(
    ctx: &Ctx<M>,
    conn: &Connection,
    node: NodeId,
    lane: Lane,
    buf: &mut Vec<u8>,
) -> Result<SendStream, TransportError> {
    let mut send = conn.open_uni().await?;
    let priority = match lane {
        Lane::Consensus => 1,
        Lane::Snapshot => 0,
    };
    let _ = send.set_priority(priority);
    buf.clear();
    Hello::new(ctx.config.cluster.clone(), ctx.config.node, node, lane).encode_frame(buf)?;
    send.write_all(buf).await?;
    buf.clear();
    Ok(send)
}

/// Encodes `message` into `buf`; an unencodable message is dropped and counted.
fn encode_or_drop<M: WireMessage>(
    message: &M,
    max: u32,
    buf: &mut Vec<u8>,
    counters: &PeerCounters,
    node: NodeId,
) -> bool {
    match encode_message(message, max, buf) {
        Ok(()) => true,
        Err(e) => {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(peer = %node, error = %e, "message not encodable; dropped");
            false
        }
    }
}

/// Writes consensus messages until the queue closes (`Ok`) or the connection fails.
async fn consensus_sender<M: WireMessage>(
    ctx: &Ctx<M>,
    conn: &Connection,
    node: NodeId,
    queue: &mut mpsc::Receiver<M>,
    counters: &PeerCounters,
) -> Result<(), TransportError> {
    let max = ctx.config.frame_payload_bytes_max;
    let mut buf = Vec::with_capacity(ctx.config.batch_bytes_max);
    let mut send = open_lane(ctx, conn, node, Lane::Consensus, &mut buf).await?;
    loop {
        let first = match race(queue.recv(), conn.closed()).await {
            Either::Left(Some(m)) => m,
            Either::Left(None) => return Ok(()),
            Either::Right(e) => return Err(e.into()),
        };
        let mut count = u64::from(encode_or_drop(&first, max, &mut buf, counters, node));
        let mut taken = 1;
        while buf.len() < ctx.config.batch_bytes_max && taken < BATCH_MESSAGES_MAX {
            let Ok(m) = queue.try_recv() else { break };
            taken += 1;
            count += u64::from(encode_or_drop(&m, max, &mut buf, counters, node));
        }
        send.write_all(&buf).await?;
        counters.sent.fetch_add(count, Ordering::Relaxed);
        buf.clear();
        if buf.capacity() > 4 * ctx.config.batch_bytes_max {
            buf.shrink_to(ctx.config.batch_bytes_max);
        }
    }
}

/// Writes snapshot chunks on their own stream, opened at the first chunk.
async fn snapshot_sender<M: WireMessage>(
    ctx: Arc<Ctx<M>>,
    conn: Connection,
    node: NodeId,
    queue: Arc<tokio::sync::Mutex<mpsc::Receiver<M>>>,
    counters: Arc<PeerCounters>,
) -> Result<(), TransportError> {
    let mut queue = queue.lock().await;
    let max = ctx.config.frame_payload_bytes_max;
    let mut buf = Vec::new();
    let mut send: Option<SendStream> = None;
    while let Some(chunk) = queue.recv().await {
        let stream = match send.as_mut() {
            Some(s) => s,
            None => send.insert(open_lane(&ctx, &conn, node, Lane::Snapshot, &mut buf).await?),
        };
        if encode_or_drop(&chunk, max, &mut buf, &counters, node) {
            stream.write_all(&buf).await?;
            counters.sent.fetch_add(1, Ordering::Relaxed);
        }
        buf.clear();
    }
    Ok(())
}

fn decode_owned<M: WireMessage>(header: FrameHeader, payload: Vec<u8>) -> Result<M, MessageError> {
    if header.kind.is_control() {
        return Err(MessageError::UnknownKind(header.kind));
    }
    M::decode_owned(header.version, header.kind, payload)
}

enum ReadFrameError {
    Frame(FrameError),
    /// The stream was reset or its connection lost (a cancelled request, a closed connection).
    Stream(String),
    /// The sender finished the stream inside a frame: no honest sender does.
    Truncated(&'static str),
    /// The frame did not arrive within its deadline.
    Timeout,
    /// No budget for the frame's bytes within its deadline.
    Busy,
}

/// Reads frames from a stream through a buffer. A frame's length is checked against the limit
/// before anything is buffered for it, and its payload buffer grows as bytes arrive (never
/// past the announced length), so a header that announces a large frame allocates nothing.
struct FrameReader {
    recv: RecvStream,
    buf: Vec<u8>,
    pos: usize,
    max: u32,
}

/// Awaits `f` until `deadline` (`None`: no deadline).
async fn by<T>(deadline: Option<tokio::time::Instant>, f: impl Future<Output = T>) -> Result<T, ReadFrameError> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, f).await.map_err(|_| ReadFrameError::Timeout),
        None => Ok(f.await),
    }
}

impl FrameReader {
    fn new(recv: RecvStream, max: u32) -> FrameReader {
        FrameReader { recv, buf: Vec::new(), pos: 0, max }
    }

    /// The next frame (header and payload), or `None` at a clean end of stream; see
    /// [`FrameReader::header`] for the deadlines, which apply to the whole frame.
    async fn frame(
        &mut self,
        idle: Option<Duration>,
        limit: Duration,
    ) -> Result<Option<(FrameHeader, Vec<u8>)>, ReadFrameError> {
        let Some(header) = self.header(idle, limit).await? else { return Ok(None) };
        let payload = self.payload(&header, limit).await?;
        Ok(Some((header, payload)))
    }

    /// The next frame header, validated (its length against the limit), or `None` at a clean
    /// end of stream. The frame's first byte must arrive within `idle` (`None`: no limit);
    /// from then on the rest of the header within `limit`.
    async fn header(&mut self, idle: Option<Duration>, limit: Duration) -> Result<Option<FrameHeader>, ReadFrameError> {
        let mut deadline = idle.map(|i| tokio::time::Instant::now() + i);
        while self.buf.len() - self.pos < HEADER_BYTES {
            if self.buf.len() > self.pos && deadline.is_none() {
                deadline = Some(tokio::time::Instant::now() + limit);
            }
            if !by(deadline, self.fill()).await?? {
                return if self.buf.len() == self.pos {
                    Ok(None)
                } else {
                    Err(ReadFrameError::Truncated("the stream was finished inside a frame header"))
                };
            }
        }
        let mut header_bytes = [0u8; HEADER_BYTES];
        header_bytes.copy_from_slice(&self.buf[self.pos..self.pos + HEADER_BYTES]);
        let header = FrameHeader::parse(&header_bytes, self.max).map_err(ReadFrameError::Frame)?;
        self.pos += HEADER_BYTES;
        Ok(Some(header))
    }

    /// The payload announced by `header` (just read), within `limit`.
    async fn payload(&mut self, header: &FrameHeader, limit: Duration) -> Result<Vec<u8>, ReadFrameError> {
        let len = header.payload_bytes as usize;
        let available = self.buf.len() - self.pos;
        if available >= len {
            let payload = self.buf[self.pos..self.pos + len].to_vec();
            self.pos += len;
            return Ok(payload);
        }
        let mut payload = Vec::with_capacity(len.min(PAYLOAD_BUFFER_FIRST_BYTES).max(available));
        payload.extend_from_slice(&self.buf[self.pos..]);
        self.buf.clear();
        self.pos = 0;
        let deadline = Some(tokio::time::Instant::now() + limit);
        while payload.len() < len {
            let chunk = match by(deadline, self.recv.read_chunk(len - payload.len(), true)).await? {
                Ok(Some(chunk)) => chunk.bytes,
                Ok(None) => return Err(ReadFrameError::Truncated("the stream was finished inside a frame")),
                Err(e) => return Err(ReadFrameError::Stream(e.to_string())),
            };
            let needed = payload.len() + chunk.len();
            if needed > payload.capacity() {
                // Double, but never past the announced length.
                let target = (payload.capacity() * 2).clamp(needed, len);
                payload.reserve_exact(target - payload.len());
            }
            payload.extend_from_slice(&chunk);
        }
        Ok(payload)
    }

    /// Reads one more chunk into the buffer; `false` at the end of the stream.
    async fn fill(&mut self) -> Result<bool, ReadFrameError> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        match self.recv.read_chunk(usize::MAX, true).await {
            Ok(Some(chunk)) => {
                self.buf.extend_from_slice(&chunk.bytes);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => Err(ReadFrameError::Stream(e.to_string())),
        }
    }

    fn stop(&mut self, code: u32) {
        let _ = self.recv.stop(VarInt::from_u32(code));
    }
}

/// Settings of a [`Client`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientOptions {
    /// Largest frame payload sent or accepted.
    pub frame_payload_bytes_max: u32,
    /// Limit on connecting (handshake included).
    pub connect_timeout: Duration,
    /// Limit on one request's round trip.
    pub request_timeout: Duration,
    /// QUIC keep-alive interval.
    pub keep_alive: Duration,
    /// QUIC idle timeout.
    pub idle_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            frame_payload_bytes_max: FRAME_PAYLOAD_BYTES_DEFAULT,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
        }
    }
}

/// A client connection to one node: each request travels on its own bidirectional stream.
pub struct Client<M> {
    endpoint: Endpoint,
    conn: Connection,
    options: ClientOptions,
    _message: PhantomData<fn() -> M>,
}

impl<M> fmt::Debug for Client<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("remote", &self.conn.remote_address()).finish_non_exhaustive()
    }
}

impl<M: WireMessage> Client<M> {
    /// Connects to node `server` at `addr`; the server's certificate must name that node in
    /// the client's own cluster. Must be called within a tokio runtime.
    pub async fn connect(
        credentials: &Credentials,
        server: NodeId,
        addr: SocketAddr,
        options: ClientOptions,
    ) -> Result<Client<M>, TransportError> {
        let local: SocketAddr =
            if addr.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
        let endpoint = Endpoint::client(local)?;
        let mut quic = quinn::TransportConfig::default();
        let idle = quinn::IdleTimeout::try_from(options.idle_timeout)
            .map_err(|_| TransportError::Config("idle timeout too large".into()))?;
        quic.max_idle_timeout(Some(idle));
        quic.keep_alive_interval(Some(options.keep_alive));
        // A node never opens a stream towards a client.
        quic.max_concurrent_uni_streams(VarInt::from_u32(0));
        quic.max_concurrent_bidi_streams(VarInt::from_u32(0));
        let config = client_config(credentials, &Arc::new(quic));
        let connecting = endpoint.connect_with(config, addr, SERVER_NAME)?;
        let conn =
            tokio::time::timeout(options.connect_timeout, connecting).await.map_err(|_| TransportError::Timeout)??;
        let expected = Identity::peer(credentials.identity().cluster().clone(), server);
        check_server_identity(&conn, &expected, &AtomicU64::new(0), false)?;
        Ok(Client { endpoint, conn, options, _message: PhantomData })
    }

    /// Sends a request and waits for its response.
    pub async fn request(&self, request: &M) -> Result<M, TransportError> {
        let max = self.options.frame_payload_bytes_max;
        let round_trip = async {
            let (mut send, recv) = self.conn.open_bi().await?;
            let mut buf = Vec::new();
            encode_message(request, max, &mut buf)?;
            send.write_all(&buf).await?;
            let _ = send.finish();
            let mut reader = FrameReader::new(recv, max);
            // The whole round trip is bounded by the request timeout below.
            match reader.frame(None, self.options.request_timeout).await {
                Ok(Some((header, payload))) => Ok(decode_owned::<M>(header, payload)?),
                Ok(None) => Err(TransportError::Closed),
                Err(ReadFrameError::Frame(e)) => Err(e.into()),
                Err(ReadFrameError::Stream(e)) => Err(TransportError::Read(e)),
                Err(ReadFrameError::Truncated(why)) => Err(TransportError::Read(why.into())),
                Err(ReadFrameError::Timeout | ReadFrameError::Busy) => Err(TransportError::Timeout),
            }
        };
        tokio::time::timeout(self.options.request_timeout, round_trip).await.map_err(|_| TransportError::Timeout)?
    }

    /// The protocol generation this connection negotiated: 2 for `quorate/2`, 1 for
    /// `quorate/1` (a 0.1.0 server). Send what that generation can decode.
    pub fn protocol_generation(&self) -> u8 {
        protocol_generation(&self.conn)
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.conn.close(VarInt::from_u32(codes::SHUTDOWN), b"bye");
        self.endpoint.close(VarInt::from_u32(codes::SHUTDOWN), b"bye");
    }
}
