//! ALPN negotiation between protocol generations, and downgrade resistance: whatever the
//! peers offer, the handshake is TLS 1.3 with a verified client certificate or it fails.
//! In-memory rustls handshakes with the transport's own configurations.

use super::{ALPNS, certs, read, rustls_configs};
use crate::dev_certs;
use crate::frame::{ALPN, ALPN_V2};
use crate::identity::{ClusterId, Principal, Role};
use quorate_log::NodeId;
use rustls::pki_types::{PrivateKeyDer, ServerName, pem::PemObject};
use std::sync::Arc;

struct Dir(std::path::PathBuf);
impl Dir {
    fn ca(&self) -> std::path::PathBuf {
        self.0.join("ca.crt")
    }
}
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn configs() -> (Dir, rustls::ServerConfig, rustls::ClientConfig) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = Dir(std::env::temp_dir().join(format!("quorate-alpn-{}-{n}", std::process::id())));
    let cluster = ClusterId::new("alpn").unwrap();
    let node = NodeId::new(1).unwrap();
    let out =
        dev_certs::generate(&dir.0, &cluster, &[node], &[(Principal::new("admin").unwrap(), Role::Admin)]).unwrap();
    let paths = &out.nodes[&node];
    let ca = certs(&paths.ca).unwrap();
    let chain = certs(&paths.cert).unwrap();
    let key = PrivateKeyDer::from_pem_slice(&read(&paths.key).unwrap()).unwrap();
    let (server, client) = rustls_configs(&ca, chain, key).unwrap();
    (dir, server, client)
}

/// Drives a handshake to its end (bounded); the negotiated ALPN as both sides see it.
fn handshake(client: rustls::ClientConfig, server: rustls::ServerConfig) -> Result<Vec<u8>, rustls::Error> {
    let name = ServerName::try_from("node-1.quorate").unwrap();
    let mut c = rustls::ClientConnection::new(Arc::new(client), name)?;
    let mut s = rustls::ServerConnection::new(Arc::new(server))?;
    for _ in 0..32 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            s.read_tls(&mut buf.as_slice()).unwrap();
            s.process_new_packets()?;
        }
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            c.read_tls(&mut buf.as_slice()).unwrap();
            c.process_new_packets()?;
        }
        if !c.is_handshaking() && !s.is_handshaking() {
            assert_eq!(c.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
            assert_eq!(s.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
            assert!(s.peer_certificates().is_some_and(|c| !c.is_empty()), "client certificate verified");
            let alpn = s.alpn_protocol().map(<[u8]>::to_vec).unwrap_or_default();
            assert_eq!(c.alpn_protocol().map(<[u8]>::to_vec).unwrap_or_default(), alpn);
            return Ok(alpn);
        }
    }
    Err(rustls::Error::General("handshake made no progress".into()))
}

#[test]
fn both_generations_are_offered_newest_first() {
    assert_eq!(ALPNS, &[ALPN_V2, ALPN]);
    let (_d, server, client) = configs();
    assert_eq!(server.alpn_protocols, vec![b"quorate/2".to_vec(), b"quorate/1".to_vec()]);
    assert_eq!(client.alpn_protocols, server.alpn_protocols);
}

#[test]
fn new_peers_negotiate_quorate_2_and_old_peers_quorate_1() {
    let (_d, server, client) = configs();
    assert_eq!(handshake(client.clone(), server.clone()).unwrap(), b"quorate/2");
    // A 0.1.0 client offers quorate/1 only.
    let mut old_client = client.clone();
    old_client.alpn_protocols = vec![ALPN.to_vec()];
    assert_eq!(handshake(old_client, server.clone()).unwrap(), b"quorate/1");
    // A 0.1.0 server accepts quorate/1 only.
    let mut old_server = server.clone();
    old_server.alpn_protocols = vec![ALPN.to_vec()];
    assert_eq!(handshake(client.clone(), old_server).unwrap(), b"quorate/1");
    // A client preferring the older generation still gets the server's preference.
    let mut reordered = client;
    reordered.alpn_protocols = vec![ALPN.to_vec(), ALPN_V2.to_vec()];
    assert_eq!(handshake(reordered, server).unwrap(), b"quorate/2");
}

#[test]
fn no_offer_downgrades_security() {
    let (_d, server, client) = configs();
    // An unknown or older generation than quorate/1: no common protocol, no connection.
    for offer in [b"quorate/0".to_vec(), b"h3".to_vec()] {
        let mut c = client.clone();
        c.alpn_protocols = vec![offer.clone()];
        let err = handshake(c, server.clone()).unwrap_err();
        assert!(format!("{err:?}").contains("NoApplicationProtocol"), "{offer:?}: {err:?}");
    }
    // No ALPN at all: rustls completes a TLS 1.3, mutually authenticated handshake that names
    // no protocol, and the transport refuses the connection (`authenticate`); never a weaker
    // setting either way.
    let mut none = client.clone();
    none.alpn_protocols = Vec::new();
    if let Ok(alpn) = handshake(none, server.clone()) {
        assert!(alpn.is_empty());
    }
    // The old generation without a client certificate: refused, as for the new one.
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&_d.ca()).unwrap() {
        roots.add(c).unwrap();
    }
    let provider = super::provider();
    let trust = super::Trust {
        roots: Arc::new(roots),
        crls: Vec::new(),
        algorithms: provider.signature_verification_algorithms,
    };
    let verifier = Arc::new(super::ChainOnlyVerifier { trust: Arc::new(trust) });
    for offer in ALPNS {
        let mut anon = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
        anon.alpn_protocols = vec![offer.to_vec()];
        let err = handshake(anon, server.clone()).unwrap_err();
        assert!(format!("{err:?}").to_lowercase().contains("cert"), "{err:?}");
    }
}
