//! # quorate-transport
//!
//! The network layer of the Quorate replicated log: QUIC ([quinn]) with mutual TLS
//! ([rustls], TLS 1.3 only, 0-RTT off, ALPN `quorate/2`, and `quorate/1` for 0.1.0 peers).
//!
//! * **Identity bound to certificates.** Every endpoint presents a certificate that chains to
//!   the cluster CA and carries one URI SAN: `quorate://<cluster>/node/<id>` for a member,
//!   `quorate://<cluster>/client/<principal>?role=<read|write|admin>` for a client
//!   ([`Identity`]). A dialer checks that the server is the node it meant to reach; a server
//!   checks that a peer's [`Hello`] claims the node its certificate names. Refusals are audit
//!   events on the `tracing` target `quorate::audit`.
//! * **Versioned framing.** Every message travels in an envelope with its length, protocol
//!   version and append-only [`MessageKind`] ([`frame`]); the length is bounded and checked
//!   before allocation; garbage is a typed error that closes the stream (a client's whole
//!   connection, for a request), never a panic.
//! * **Per-peer bounded queues.** [`Transport::try_send`] never blocks: a full queue drops
//!   the message and counts it (Raft retransmits). Peers are redialed with seeded, jittered
//!   backoff. Snapshot chunks travel on their own stream ([`Transport::try_send_snapshot`]),
//!   so they never delay a heartbeat.
//! * **Rotation without restart.** [`Credentials::reload`] / [`Transport::reload_tls`]
//!   re-read the PEM files; [`Transport::watch_tls`] polls their modification times;
//!   [`Credentials::seconds_until_earliest_expiry`] feeds an expiry gauge.
//! * **Dev certificates.** [`dev_certs::generate`] writes a local CA and certificates.
//!
//! Features: `net` (default) is the transport; without it the crate is only the frame codec,
//! identities and message trait (no quinn, no tokio), which is what the fuzz target uses.
//! `dev-certs` (not a default: enable it for development tools and tests) adds [`dev_certs`]
//! (rcgen).
//!
//! ```no_run
//! # #[cfg(feature = "dev-certs")]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use quorate_transport::{ClusterId, Credentials, MessageKind, RawMessage, Transport, TransportConfig, dev_certs};
//! use quorate_log::NodeId;
//! use std::sync::Arc;
//!
//! let cluster = ClusterId::new("demo")?;
//! let (n1, n2) = (NodeId::new(1).unwrap(), NodeId::new(2).unwrap());
//! let certs = dev_certs::generate("certs".as_ref(), &cluster, &[n1, n2], &[])?;
//! let creds = Arc::new(Credentials::load(certs.nodes[&n1].clone())?);
//! let config = TransportConfig::new(cluster, n1, "127.0.0.1:0".parse()?);
//! let (transport, mut inbox) = Transport::<RawMessage>::bind(config, creds).await?;
//! transport.add_peer(n2, "127.0.0.1:7002".parse()?);
//! transport.try_send(n2, RawMessage { kind: MessageKind(0x100), payload: b"hi".to_vec() })?;
//! while let Some(incoming) = inbox.recv().await { /* hand it to the core */ }
//! # Ok(()) }
//! ```

/// Most certificate revocation list files one endpoint reads (`Credentials::load_with_crls`).
pub const CRL_FILES_MAX: usize = 16;

mod addr;
#[cfg(feature = "net")]
mod backoff;
#[cfg(feature = "net")]
mod conns;
pub mod der;
#[cfg(feature = "dev-certs")]
pub mod dev_certs;
pub mod frame;
mod identity;
mod message;
#[cfg(feature = "net")]
mod sources;
#[cfg(feature = "net")]
mod tls;
#[cfg(feature = "net")]
mod transport;

pub use addr::{PEER_ADDR_BYTES_MAX, PeerAddr, PeerAddrError};
#[cfg(feature = "net")]
pub use backoff::Backoff;
pub use frame::{
    ALPN, ALPN_V2, ALPNS, FRAME_PAYLOAD_BYTES_CEILING, FRAME_PAYLOAD_BYTES_DEFAULT, Frame, FrameError, FrameHeader,
    HEADER_BYTES, Hello, Lane, MessageKind, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN, decode_frame, encode_frame,
};
pub use identity::{
    CLUSTER_ID_BYTES_MAX, ClientIdentity, ClusterId, Identity, IdentityError, PRINCIPAL_BYTES_MAX, PeerIdentity,
    Principal, Role, URI_SCHEME,
};
pub use message::{MessageError, RawMessage, WireMessage, decode_message, encode_message};
#[cfg(feature = "net")]
pub use sources::{HANDSHAKE_RATE_CEILING, HANDSHAKE_SOURCES_MAX};
#[cfg(feature = "net")]
pub use tls::{CRL_FILE_BYTES_MAX, Credentials, TlsError, TlsPaths};
#[cfg(feature = "net")]
pub use transport::{
    AUDIT_TARGET, Client, ClientOptions, Inbox, Incoming, PeerStats, REQUEST_PAYLOAD_BYTES_DEFAULT, Request, Resolver,
    SendError, SystemResolver, Transport, TransportConfig, TransportError, codes, quic_transport_config,
};
