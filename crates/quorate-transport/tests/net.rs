//! Loopback tests of the transport: the happy path and every refusal.

mod common;

use common::{TempDir, audited, run, wait_until, within};
use quinn::VarInt;
use quorate_log::NodeId;
use quorate_transport::dev_certs::{self, DevCerts, Validity};
use quorate_transport::{
    Client, ClientOptions, ClusterId, Credentials, FrameHeader, Hello, Identity, Inbox, Incoming, Lane, MessageKind,
    PROTOCOL_VERSION, Principal, RawMessage, Role, TlsPaths, Transport, TransportConfig, codes, decode_frame,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const KIND: MessageKind = MessageKind(0x0100);

fn id(n: u64) -> NodeId {
    NodeId::new(n).expect("non-zero")
}

fn cluster(name: &str) -> ClusterId {
    ClusterId::new(name).expect("valid cluster id")
}

fn msg(seq: u64, len: usize) -> RawMessage {
    let mut payload = seq.to_be_bytes().to_vec();
    payload.resize(len.max(8), 0xab);
    RawMessage { kind: KIND, payload }
}

fn seq_of(m: &RawMessage) -> u64 {
    u64::from_be_bytes(m.payload[..8].try_into().expect("8 bytes"))
}

struct Setup {
    dir: TempDir,
    certs: DevCerts,
    cluster: ClusterId,
}

fn setup(name: &str, nodes: &[u64]) -> Setup {
    let dir = TempDir::new(name);
    let cluster = cluster("alpha");
    let nodes: Vec<NodeId> = nodes.iter().map(|&n| id(n)).collect();
    let clients = [(Principal::new("ops").expect("principal"), Role::Admin)];
    let certs = dev_certs::generate(dir.path(), &cluster, &nodes, &clients).expect("dev certs");
    Setup { dir, certs, cluster }
}

impl Setup {
    fn creds(&self, node: u64) -> Arc<Credentials> {
        Arc::new(Credentials::load(self.certs.nodes[&id(node)].clone()).expect("load"))
    }

    /// An admin client certificate for `name`, from the cluster CA.
    fn issue_client(&self, name: &str) -> Arc<Credentials> {
        let identity = Identity::client(self.cluster.clone(), Principal::new(name).expect("principal"), Role::Admin);
        self.issue(&identity, Validity::from_now(Duration::from_secs(3600)), name)
    }

    /// Issues an extra certificate from the cluster CA.
    fn issue(&self, identity: &Identity, validity: Validity, name: &str) -> Arc<Credentials> {
        let paths =
            self.certs.authority.issue(identity, validity, self.dir.path(), name, &self.certs.ca).expect("issue");
        Arc::new(Credentials::load(paths).expect("load"))
    }
}

fn config(cluster: &ClusterId, node: u64) -> TransportConfig {
    let mut c = TransportConfig::new(cluster.clone(), id(node), "127.0.0.1:0".parse().unwrap());
    c.frame_payload_bytes_max = 1024 * 1024;
    c.backoff_min = Duration::from_millis(10);
    c.backoff_max = Duration::from_millis(200);
    c
}

async fn node(cluster: &ClusterId, n: u64, creds: Arc<Credentials>) -> (Transport<RawMessage>, Inbox<RawMessage>) {
    Transport::bind(config(cluster, n), creds).await.expect("bind")
}

/// A raw QUIC connection to `addr` using `creds` (so tests can misbehave on purpose).
async fn raw_connect(creds: &Credentials, addr: SocketAddr) -> quinn::Connection {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("endpoint");
    let config = quinn::ClientConfig::new(creds.quic_client_crypto());
    endpoint.connect_with(config, addr, "quorate.invalid").expect("connect").await.expect("handshake")
}

fn hello_frame(cluster: &ClusterId, from: u64, to: u64, lane: Lane) -> Vec<u8> {
    let mut buf = Vec::new();
    Hello::new(cluster.clone(), id(from), id(to), lane).encode_frame(&mut buf).expect("hello");
    buf
}

async fn closed_code(conn: &quinn::Connection) -> Option<u32> {
    match within("connection close", conn.closed()).await {
        quinn::ConnectionError::ApplicationClosed(c) => u32::try_from(c.error_code.into_inner()).ok(),
        _ => None,
    }
}

#[test]
fn happy_path_both_ways_ordered_with_snapshots_and_client_requests() {
    run(async {
        let s = setup("happy", &[1, 2]);
        let (t1, mut in1) = node(&s.cluster, 1, s.creds(1)).await;
        let (t2, mut in2) = node(&s.cluster, 2, s.creds(2)).await;
        t1.add_peer(id(2), t2.local_addr());
        t2.add_peer(id(1), t1.local_addr());

        const N: u64 = 3000;
        const CHUNKS: u64 = 8;
        for i in 0..N {
            t1.try_send(id(2), msg(i, 100)).expect("queued");
            t2.try_send(id(1), msg(i, 40)).expect("queued");
            if i % (N / CHUNKS) == 0 {
                t1.try_send_snapshot(id(2), msg(i / (N / CHUNKS), 256 * 1024)).expect("queued");
            }
        }

        let (mut consensus, mut snapshot) = (0u64, 0u64);
        within("node 2 to receive everything", async {
            while consensus < N || snapshot < CHUNKS {
                match in2.recv().await.expect("inbox open") {
                    Incoming::Peer { from, lane, message } => {
                        assert_eq!(from, id(1));
                        let (next, len) = match lane {
                            Lane::Consensus => (&mut consensus, 100),
                            _ => (&mut snapshot, 256 * 1024),
                        };
                        assert_eq!(seq_of(&message), *next, "in order on {lane:?}");
                        assert_eq!(message.payload.len(), len);
                        *next += 1;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        })
        .await;
        let mut back = 0u64;
        within("node 1 to receive everything", async {
            while back < N {
                if let Some(Incoming::Peer { from, message, .. }) = in1.recv().await {
                    assert_eq!((from, seq_of(&message)), (id(2), back));
                    back += 1;
                }
            }
        })
        .await;
        let stats = t1.peer_stats(id(2)).expect("peer");
        assert_eq!((stats.sent, stats.dropped), (N + CHUNKS, 0));
        assert!(stats.connected && stats.connects >= 1);
        // The QUIC round-trip estimate after this traffic: present, and loopback-sized.
        let rtt = stats.rtt.expect("an RTT once connected and after traffic");
        assert!(rtt > Duration::ZERO && rtt < Duration::from_secs(2), "{rtt:?}");
        assert!(t1.peer_rtt(id(2)).is_some());
        assert_eq!(t1.peer_rtt(id(9)), None, "an unknown peer has no RTT");
        assert_eq!(t1.peer_protocol_generation(id(2)), Some(2), "two current binaries speak quorate/2");
        assert_eq!(t1.peer_protocol_generation(id(9)), None, "an unknown peer has no connection");

        // A client with role admin sends a request; node 1 answers.
        let client_paths = s.certs.clients[&Principal::new("ops").unwrap()].clone();
        let client_creds = Credentials::load(client_paths).expect("client creds");
        let client = Client::<RawMessage>::connect(&client_creds, id(1), t1.local_addr(), ClientOptions::default())
            .await
            .expect("client connects");
        let asking = tokio::spawn(async move {
            let answer = client.request(&msg(7, 10)).await;
            (client, answer)
        });
        match within("request", in1.recv()).await {
            Some(Incoming::Request(r)) => {
                assert_eq!(r.from.role, Role::Admin);
                assert_eq!(r.from.principal.as_str(), "ops");
                let reply = msg(seq_of(&r.message) + 1, 10);
                r.respond(&reply).await.expect("respond");
            }
            other => panic!("expected a request, got {other:?}"),
        }
        let (client, answer) = within("answer", asking).await.expect("task");
        assert_eq!(seq_of(&answer.expect("answer")), 8);
        assert_eq!(t1.refusals(), 0);
        client.close();
        t2.shutdown().await;
        t1.shutdown().await;
    });
}

#[test]
fn full_queue_drops_and_counts_without_blocking() {
    run(async {
        let s = setup("drops", &[1, 2]);
        let mut c = config(&s.cluster, 1);
        c.queue_capacity = 4;
        let (t1, _in1) = Transport::<RawMessage>::bind(c, s.creds(1)).await.expect("bind");
        // Nobody listens at this address: the queue fills up.
        t1.add_peer(id(2), "127.0.0.1:9".parse().unwrap());
        let results: Vec<_> = (0..10).map(|i| t1.try_send(id(2), msg(i, 8))).collect();
        assert!(results[..4].iter().all(Result::is_ok));
        assert!(results[4..].iter().all(|r| r == &Err(quorate_transport::SendError::QueueFull)));
        assert_eq!(t1.peer_stats(id(2)).unwrap().dropped, 6);
        assert_eq!(t1.try_send(id(3), msg(0, 8)), Err(quorate_transport::SendError::UnknownPeer));
    });
}

#[test]
fn unknown_ca_is_refused_at_the_handshake() {
    run(async {
        let s = setup("unknown-ca", &[1]);
        let other = TempDir::new("unknown-ca-other");
        let rogue = dev_certs::generate(other.path(), &s.cluster, &[id(2)], &[]).expect("certs");
        let (t1, _in1) = node(&s.cluster, 1, s.creds(1)).await;
        // Trusts the real CA (so it accepts node 1) but presents a certificate from another CA.
        let mixed = TlsPaths { ca: s.certs.ca.clone(), ..rogue.nodes[&id(2)].clone() };
        let (t2, _in2) = node(&s.cluster, 2, Arc::new(Credentials::load(mixed).unwrap())).await;
        t2.add_peer(id(1), t1.local_addr());
        t2.try_send(id(1), msg(0, 8)).unwrap();
        wait_until("node 1 to refuse", || t1.refusals() >= 1).await;
        assert!(audited(&["what=handshake", "result=refused"]));
        // And a node that trusts only the rogue CA refuses node 1's certificate when dialing.
        let (t3, _in3) = node(&s.cluster, 2, Arc::new(Credentials::load(rogue.nodes[&id(2)].clone()).unwrap())).await;
        t3.add_peer(id(1), t1.local_addr());
        wait_until("dial to fail", || t3.peer_stats(id(1)).unwrap().connect_failures >= 1).await;
        assert_eq!(t3.peer_stats(id(1)).unwrap().connects, 0);
    });
}

#[test]
fn expired_certificate_is_refused() {
    run(async {
        let s = setup("expired", &[1]);
        let (t1, _in1) = node(&s.cluster, 1, s.creds(1)).await;
        let day = Duration::from_secs(86_400);
        let now = SystemTime::now();
        let expired = Validity { not_before: now - 2 * day, not_after: now - day };
        let creds = s.issue(&Identity::peer(s.cluster.clone(), id(2)), expired, "expired-2");
        assert!(creds.seconds_until_earliest_expiry() < 0);
        let (t2, _in2) = node(&s.cluster, 2, creds).await;
        t2.add_peer(id(1), t1.local_addr());
        wait_until("node 1 to refuse", || t1.refusals() >= 1).await;
        assert!(audited(&["what=handshake", "result=refused"]));
        assert_eq!(t2.peer_stats(id(1)).unwrap().sent, 0);
    });
}

#[test]
fn wrong_node_id_is_refused_by_dialer_and_by_server() {
    run(async {
        let s = setup("wrong-node", &[1, 2, 3]);
        let (t1, mut in1) = node(&s.cluster, 1, s.creds(1)).await;
        let (t3, _in3) = node(&s.cluster, 3, s.creds(3)).await;
        // Dialer side: node 1 thinks node 2 lives where node 3 does.
        t1.add_peer(id(2), t3.local_addr());
        wait_until("dial refusal", || t1.peer_stats(id(2)).unwrap().connect_failures >= 1).await;
        assert_eq!(t1.peer_stats(id(2)).unwrap().connects, 0);
        assert!(audited(&["what=dial", "result=refused", "certificate names quorate://alpha/node/3"]));

        // Server side: node 3's certificate claiming to be node 2 in its hello.
        let conn = raw_connect(&s.creds(3), t1.local_addr()).await;
        let mut send = conn.open_uni().await.unwrap();
        let mut frames = hello_frame(&s.cluster, 2, 1, Lane::Consensus);
        quorate_transport::encode_message(&msg(0, 8), 1024, &mut frames).unwrap();
        send.write_all(&frames).await.unwrap();
        assert_eq!(closed_code(&conn).await, Some(codes::REFUSED));
        assert!(t1.refusals() >= 1);
        assert!(audited(&["what=hello", "claims node 2 but its certificate names node 3"]));
        // Nothing from the impostor reached the inbox: a real message from node 3 arrives first.
        t3.add_peer(id(1), t1.local_addr());
        t3.try_send(id(1), msg(42, 8)).unwrap();
        match within("real message", in1.recv()).await {
            Some(Incoming::Peer { from, message, .. }) => {
                assert_eq!((from, seq_of(&message)), (id(3), 42));
            }
            other => panic!("unexpected {other:?}"),
        }
    });
}

#[test]
fn wrong_cluster_is_refused_by_dialer_and_by_server() {
    run(async {
        let s = setup("wrong-cluster", &[1]);
        let other = cluster("beta");
        let creds =
            s.issue(&Identity::peer(other.clone(), id(2)), Validity::from_now(Duration::from_secs(3600)), "beta-2");
        let (t1, _in1) = node(&s.cluster, 1, s.creds(1)).await;
        // Server side: a beta certificate (same CA) connecting to an alpha node.
        let conn = raw_connect(&creds, t1.local_addr()).await;
        assert_eq!(closed_code(&conn).await, Some(codes::REFUSED));
        assert!(audited(&["who=quorate://beta/node/2", "what=connect", "result=refused"]));
        // Dialer side: an alpha node dialing a beta node refuses it.
        let (t2, _in2) = node(&other, 2, creds).await;
        t1.add_peer(id(2), t2.local_addr());
        wait_until("dial refusal", || t1.peer_stats(id(2)).unwrap().connect_failures >= 1).await;
        assert_eq!(t1.peer_stats(id(2)).unwrap().connects, 0);
    });
}

/// Accepts any server certificate: lets a test reach the server's own checks.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Connects with a hand-built rustls config; returns whether the connection survived.
async fn connect_custom(addr: SocketAddr, client_cert: Option<&TlsPaths>, alpn: &[u8]) -> bool {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)));
    let mut tls = match client_cert {
        Some(p) => {
            let chain: Vec<_> = CertificateDer::pem_file_iter(&p.cert).unwrap().collect::<Result<_, _>>().unwrap();
            let key = PrivateKeyDer::from_pem_file(&p.key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let connecting = endpoint.connect_with(quinn::ClientConfig::new(Arc::new(crypto)), addr, "x.invalid").unwrap();
    match within("handshake", connecting).await {
        Err(_) => false,
        Ok(conn) => {
            // TLS 1.3: the client may finish before the server rejects its certificate.
            let _ = within("server verdict", async {
                let mut send = conn.open_uni().await?;
                send.write_all(&[0; 8]).await?;
                Ok::<_, Box<dyn std::error::Error>>(conn.closed().await)
            })
            .await;
            conn.close_reason().is_none()
        }
    }
}

#[test]
fn missing_client_certificate_is_refused() {
    run(async {
        let s = setup("no-client-cert", &[1]);
        let (t1, _in1) = node(&s.cluster, 1, s.creds(1)).await;
        assert!(!connect_custom(t1.local_addr(), None, b"quorate/1").await);
        wait_until("refusal", || t1.refusals() >= 1).await;
        assert!(audited(&["what=handshake", "result=refused"]));
    });
}

#[test]
fn quorate_1_is_refused_once_the_cluster_is_finalized() {
    run(async {
        let s = setup("finalized", &[1, 2]);
        let (t1, _in1) = node(&s.cluster, 1, s.creds(1)).await;
        let paths = s.certs.nodes[&id(2)].clone();
        t1.refuse_quorate_1();
        assert!(!connect_custom(t1.local_addr(), Some(&paths), b"quorate/1").await);
        wait_until("refusal", || t1.refusals() >= 1).await;
        assert!(audited(&["what=connect", "result=refused", "finalized"]));
    });
}

#[test]
fn alpn_mismatch_is_refused_at_the_handshake() {
    run(async {
        let s = setup("alpn", &[1, 2]);
        let (t1, _in1) = node(&s.cluster, 1, s.creds(1)).await;
        let paths = s.certs.nodes[&id(2)].clone();
        assert!(!connect_custom(t1.local_addr(), Some(&paths), b"quorate/0").await);
        wait_until("refusal", || t1.refusals() >= 1).await;
        assert!(audited(&["what=handshake", "result=refused"]));
    });
}

async fn stopped_code(send: &quinn::SendStream) -> Option<u32> {
    match within("stream stop", send.stopped()).await {
        Ok(Some(code)) => u32::try_from(code.into_inner()).ok(),
        _ => None,
    }
}

#[test]
fn oversize_frame_and_garbage_close_the_stream_not_the_node() {
    run(async {
        let s = setup("garbage", &[1, 2]);
        let mut c = config(&s.cluster, 1);
        c.frame_payload_bytes_max = 1024;
        let (t1, mut in1) = Transport::<RawMessage>::bind(c, s.creds(1)).await.expect("bind");
        let conn = raw_connect(&s.creds(2), t1.local_addr()).await;

        // Oversize: a header announcing 1025 bytes is refused before anything is allocated.
        let mut send = conn.open_uni().await.unwrap();
        let mut bytes = hello_frame(&s.cluster, 2, 1, Lane::Consensus);
        let header = FrameHeader { payload_bytes: 1025, version: PROTOCOL_VERSION, kind: KIND };
        bytes.extend_from_slice(&header.to_bytes());
        send.write_all(&bytes).await.unwrap();
        assert_eq!(stopped_code(&send).await, Some(codes::BAD_FRAME));

        // Garbage after a valid hello (seeded; forced to an invalid header).
        let mut x = 0x9e37_79b9_u64;
        let mut garbage: Vec<u8> = (0..300)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        garbage[4] = 0xff;
        assert!(decode_frame(&garbage, 1024).is_err());
        let mut send = conn.open_uni().await.unwrap();
        let mut bytes = hello_frame(&s.cluster, 2, 1, Lane::Consensus);
        bytes.extend_from_slice(&garbage);
        send.write_all(&bytes).await.unwrap();
        assert_eq!(stopped_code(&send).await, Some(codes::BAD_FRAME));

        // Garbage instead of a hello.
        let mut send = conn.open_uni().await.unwrap();
        send.write_all(&garbage).await.unwrap();
        assert_eq!(stopped_code(&send).await, Some(codes::PROTOCOL));

        // The connection and the node still work.
        let mut send = conn.open_uni().await.unwrap();
        let mut bytes = hello_frame(&s.cluster, 2, 1, Lane::Consensus);
        quorate_transport::encode_message(&msg(5, 8), 1024, &mut bytes).unwrap();
        send.write_all(&bytes).await.unwrap();
        match within("valid message", in1.recv()).await {
            Some(Incoming::Peer { from, message, .. }) => {
                assert_eq!((from, seq_of(&message)), (id(2), 5));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(conn.close_reason().is_none());
        conn.close(VarInt::from_u32(0), b"");
    });
}

fn leaf_der(path: &std::path::Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(path).unwrap().next().unwrap().unwrap().to_vec()
}

async fn served_cert(creds: &Credentials, addr: SocketAddr) -> Vec<u8> {
    let conn = raw_connect(creds, addr).await;
    let certs = conn.peer_identity().unwrap().downcast::<Vec<CertificateDer<'static>>>().unwrap();
    conn.close(VarInt::from_u32(0), b"");
    certs[0].to_vec()
}

#[test]
fn rotated_certificate_is_served_after_reload_without_restart() {
    run(async {
        let s = setup("reload", &[1, 2]);
        let (t1, _in1) = node(&s.cluster, 1, s.creds(1)).await;
        let paths = s.certs.nodes[&id(1)].clone();
        let client = s.creds(2);
        assert_eq!(served_cert(&client, t1.local_addr()).await, leaf_der(&paths.cert));
        let before = t1.credentials().seconds_until_earliest_expiry();
        assert!(before > 29 * 86_400);

        // Rotate to a 2-day certificate and reload explicitly.
        let me = Identity::peer(s.cluster.clone(), id(1));
        let two_days = Validity::from_now(Duration::from_secs(2 * 86_400));
        s.certs.authority.issue(&me, two_days, s.dir.path(), "node-1", &s.certs.ca).unwrap();
        t1.reload_tls().expect("reload");
        let after = t1.credentials().seconds_until_earliest_expiry();
        assert!(after <= 2 * 86_400 && after > 86_400, "{after}");
        assert_eq!(served_cert(&client, t1.local_addr()).await, leaf_der(&paths.cert));

        // A certificate for another identity is refused; the old one stays in force.
        let other = Identity::peer(s.cluster.clone(), id(3));
        s.certs.authority.issue(&other, two_days, s.dir.path(), "node-1", &s.certs.ca).unwrap();
        assert!(t1.reload_tls().is_err());
        assert_eq!(t1.credentials().identity(), me);
        assert_eq!(t1.credentials().reload_count(), 1);

        // The watcher picks up a change on its own.
        t1.watch_tls(Duration::from_millis(20));
        let one_day = Validity::from_now(Duration::from_secs(86_400));
        s.certs.authority.issue(&me, one_day, s.dir.path(), "node-1", &s.certs.ca).unwrap();
        wait_until("watcher reload", || t1.credentials().reload_count() >= 2).await;
        assert_eq!(served_cert(&client, t1.local_addr()).await, leaf_der(&paths.cert));
        assert!(t1.credentials().seconds_until_earliest_expiry() <= 86_400);
    });
}

/// A peer that crashes (no CONNECTION_CLOSE) and restarts at the same address with the same
/// credentials is reachable again within about a keep-alive interval, not only after the
/// idle timeout of the connection to its previous incarnation. Seen in chaos runs (issue
/// 18): a node SIGKILLed and restarted after 3 s heard nothing from its peers for up to
/// 10 s, and a cluster that needed its vote had no leader meanwhile. With a stable stateless
/// reset key the restarted node answers the old connection's packets with a reset that its
/// peer can verify, and the peer redials at once.
#[test]
fn a_restarted_peer_is_reachable_again_before_the_idle_timeout() {
    run(async {
        let s = setup("restart", &[1, 2]);
        // Production timing: keep-alive 1 s, idle timeout 10 s, backoff from 50 ms.
        let (t1, _in1) = Transport::<RawMessage>::bind(
            TransportConfig::new(s.cluster.clone(), id(1), "127.0.0.1:0".parse().unwrap()),
            s.creds(1),
        )
        .await
        .expect("bind 1");
        // Node 2's first incarnation runs on a runtime of its own, to be crashed.
        let crashing = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let (cluster, creds2, addr1) = (s.cluster.clone(), s.creds(2), t1.local_addr());
        let (addr2, in2, t2) = crashing
            .spawn(async move {
                let (t2, in2) = Transport::<RawMessage>::bind(config(&cluster, 2), creds2).await.expect("bind 2");
                t2.add_peer(id(1), addr1);
                (t2.local_addr(), in2, t2)
            })
            .await
            .expect("bind task");
        let (addr2, mut in2, t2) = (
            addr2,
            in2,
            crashing.spawn(async move {
                // Held until the runtime is dropped under it.
                let _t2 = t2;
                std::future::pending::<()>().await;
            }),
        );
        t1.add_peer(id(2), addr2);
        t1.try_send(id(2), msg(0, 16)).expect("queued");
        match within("the first message", in2.recv()).await {
            Some(Incoming::Peer { message, .. }) => assert_eq!(seq_of(&message), 0),
            other => panic!("unexpected {other:?}"),
        }
        wait_until("connected", || t1.peer_stats(id(2)).is_some_and(|p| p.connected)).await;
        // Crash: every task of node 2 is dropped with its runtime.
        drop(in2);
        crashing.shutdown_background();
        drop(t2);
        // Restart at the same address with the same credentials.
        let (t2, mut in2) = within("rebind", async {
            loop {
                let mut c = config(&s.cluster, 2);
                c.bind = addr2;
                match Transport::<RawMessage>::bind(c, s.creds(2)).await {
                    Ok(t) => break t,
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        })
        .await;
        let restarted = std::time::Instant::now();
        // Node 1 keeps sending; the first message the new node 2 receives ends the wait.
        let sender = {
            let t1 = Arc::new(t1);
            let t = t1.clone();
            (
                t1,
                tokio::spawn(async move {
                    for i in 1.. {
                        let _ = t.try_send(id(2), msg(i, 16));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }),
            )
        };
        match within("a message to the restarted node", in2.recv()).await {
            Some(Incoming::Peer { from, .. }) => assert_eq!(from, id(1)),
            other => panic!("unexpected {other:?}"),
        }
        let waited = restarted.elapsed();
        sender.1.abort();
        assert!(waited < Duration::from_secs(3), "node 1 reached the restarted node 2 only after {waited:?}");
        t2.shutdown().await;
    });
}

/// A QUIC connection to `addr` with `creds`, or the error that ended its handshake.
async fn try_connect(creds: &Credentials, addr: SocketAddr) -> Result<quinn::Connection, quinn::ConnectionError> {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("endpoint");
    let config = quinn::ClientConfig::new(creds.quic_client_crypto());
    within("handshake", endpoint.connect_with(config, addr, "quorate.invalid").expect("connect")).await
}

fn client_creds(s: &Setup, name: &str, role: Role) -> Arc<Credentials> {
    let identity = Identity::client(s.cluster.clone(), Principal::new(name).expect("principal"), role);
    s.issue(&identity, Validity::from_now(Duration::from_secs(3600)), &format!("client-{name}-extra"))
}

/// Sends one request on a new stream and returns it as node 1 received it.
async fn request_arrives(conn: &quinn::Connection, inbox: &mut Inbox<RawMessage>, seq: u64) {
    let (mut send, _recv) = conn.open_bi().await.expect("open_bi");
    let mut bytes = Vec::new();
    quorate_transport::encode_message(&msg(seq, 8), 1024, &mut bytes).unwrap();
    send.write_all(&bytes).await.unwrap();
    match within("request", inbox.recv()).await {
        Some(Incoming::Request(r)) => assert_eq!(seq_of(&r.message), seq),
        other => panic!("expected request {seq}, got {other:?}"),
    }
}

#[test]
fn connections_are_capped_per_client_identity_and_in_total() {
    run(async {
        let s = setup("conn-caps", &[1]);
        let mut c = config(&s.cluster, 1);
        c.client_connections_per_identity_max = 2;
        c.connections_max = 3;
        let (t1, mut in1) = Transport::<RawMessage>::bind(c, s.creds(1)).await.expect("bind");
        let addr = t1.local_addr();
        let alice = client_creds(&s, "alice", Role::Write);
        let bob = client_creds(&s, "bob", Role::Read);

        let a1 = raw_connect(&alice, addr).await;
        let a2 = raw_connect(&alice, addr).await;
        wait_until("two connections", || t1.connections() == 2).await;
        // The third of one identity is refused; the first two keep working.
        let a3 = raw_connect(&alice, addr).await;
        assert_eq!(closed_code(&a3).await, Some(codes::BUSY));
        assert!(audited(&["who=quorate://alpha/client/alice?role=write", "what=connect", "result=refused"]));
        request_arrives(&a1, &mut in1, 1).await;
        request_arrives(&a2, &mut in1, 2).await;
        assert_eq!(t1.connections(), 2);

        // Another identity takes the last slot; beyond it, attempts are refused before the
        // handshake.
        let b1 = raw_connect(&bob, addr).await;
        wait_until("three connections", || t1.connections() == 3).await;
        assert!(try_connect(&bob, addr).await.is_err(), "over connections_max");
        assert!(audited(&["what=connect", "result=refused", "connections_max"]));
        request_arrives(&b1, &mut in1, 3).await;

        // A connection that ends frees its slot.
        a1.close(VarInt::from_u32(0), b"");
        wait_until("a slot freed", || t1.connections() == 2).await;
        let a4 = raw_connect(&alice, addr).await;
        request_arrives(&a4, &mut in1, 4).await;
        assert_eq!(t1.connections(), 3);
    });
}

#[test]
fn a_newer_connection_of_a_node_closes_the_oldest() {
    run(async {
        let s = setup("peer-caps", &[1, 2]);
        let mut c = config(&s.cluster, 1);
        c.peer_connections_per_node_max = 1;
        let (t1, mut in1) = Transport::<RawMessage>::bind(c, s.creds(1)).await.expect("bind");
        let old = raw_connect(&s.creds(2), t1.local_addr()).await;
        wait_until("one connection", || t1.connections() == 1).await;
        // Node 2 restarted: its new connection is the live one.
        let new = raw_connect(&s.creds(2), t1.local_addr()).await;
        assert_eq!(closed_code(&old).await, Some(codes::SHUTDOWN));
        let mut send = new.open_uni().await.unwrap();
        let mut bytes = hello_frame(&s.cluster, 2, 1, Lane::Consensus);
        quorate_transport::encode_message(&msg(9, 8), 1024, &mut bytes).unwrap();
        send.write_all(&bytes).await.unwrap();
        match within("message", in1.recv()).await {
            Some(Incoming::Peer { from, message, .. }) => assert_eq!((from, seq_of(&message)), (id(2), 9)),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(t1.connections(), 1);
    });
}

#[test]
fn streams_are_granted_after_authentication_and_only_of_their_kind() {
    run(async {
        let s = setup("grants", &[1, 2]);
        let (t1, mut in1) = node(&s.cluster, 1, s.creds(1)).await;
        let addr = t1.local_addr();
        let short = Duration::from_millis(500);
        // A client may open request streams but no unidirectional one (whose bytes would be
        // buffered and never read).
        let client = raw_connect(&s.issue_client("ops2"), addr).await;
        assert!(tokio::time::timeout(short, client.open_uni()).await.is_err(), "a client got a uni stream");
        request_arrives(&client, &mut in1, 1).await;
        // A node may open its lanes but no bidirectional stream.
        let peer = raw_connect(&s.creds(2), addr).await;
        assert!(tokio::time::timeout(short, peer.open_bi()).await.is_err(), "a node got a bidi stream");
        within("a lane", peer.open_uni()).await.expect("a node gets its lanes");
    });
}

#[test]
fn a_request_that_trickles_or_never_starts_is_cut_at_the_frame_deadline() {
    run(async {
        let s = setup("slowloris", &[1, 2]);
        let mut c = config(&s.cluster, 1);
        c.frame_timeout = Duration::from_millis(300);
        let (t1, mut in1) = Transport::<RawMessage>::bind(c, s.creds(1)).await.expect("bind");
        let addr = t1.local_addr();
        let client = raw_connect(&s.issue_client("ops2"), addr).await;

        // A header and a few bytes of a 1000-byte request, then nothing.
        let (mut trickle, _r1) = client.open_bi().await.unwrap();
        let header = FrameHeader { payload_bytes: 1000, version: PROTOCOL_VERSION, kind: KIND };
        trickle.write_all(&header.to_bytes()).await.unwrap();
        trickle.write_all(&[7; 10]).await.unwrap();
        // Half a header, then nothing.
        let (mut half, _r2) = client.open_bi().await.unwrap();
        half.write_all(&header.to_bytes()[..4]).await.unwrap();
        assert_eq!(stopped_code(&trickle).await, Some(codes::TIMEOUT));
        assert_eq!(stopped_code(&half).await, Some(codes::TIMEOUT));
        // The connection still serves requests.
        request_arrives(&client, &mut in1, 1).await;

        // A peer lane: idle between messages is fine, a message that trickles is cut.
        let peer = raw_connect(&s.creds(2), addr).await;
        let mut idle = peer.open_uni().await.unwrap();
        let mut bytes = hello_frame(&s.cluster, 2, 1, Lane::Consensus);
        quorate_transport::encode_message(&msg(1, 8), 1024, &mut bytes).unwrap();
        idle.write_all(&bytes).await.unwrap();
        assert!(matches!(within("message", in1.recv()).await, Some(Incoming::Peer { .. })));
        let mut slow = peer.open_uni().await.unwrap();
        let mut bytes = hello_frame(&s.cluster, 2, 1, Lane::Snapshot);
        bytes.extend_from_slice(&header.to_bytes());
        bytes.extend_from_slice(&[1; 10]);
        slow.write_all(&bytes).await.unwrap();
        assert_eq!(stopped_code(&slow).await, Some(codes::TIMEOUT));
        // The idle lane has been silent longer than the deadline by now, and still works.
        let mut bytes = Vec::new();
        quorate_transport::encode_message(&msg(2, 8), 1024, &mut bytes).unwrap();
        idle.write_all(&bytes).await.unwrap();
        match within("message", in1.recv()).await {
            Some(Incoming::Peer { message, .. }) => assert_eq!(seq_of(&message), 2),
            other => panic!("unexpected {other:?}"),
        }
    });
}

/// Blocks the client's certificate check until released: the server's handshake never ends.
#[derive(Debug)]
struct Stall(std::sync::Mutex<std::sync::mpsc::Receiver<()>>, Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Stall {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let _ = self.0.lock().unwrap().recv_timeout(Duration::from_secs(60));
        Err(rustls::Error::General("stalled".into()))
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.1.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.1.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.1.signature_verification_algorithms.supported_schemes()
    }
}

#[test]
fn a_handshake_that_stalls_is_dropped_at_the_handshake_deadline() {
    run(async {
        let s = setup("handshake-stall", &[1]);
        let mut c = config(&s.cluster, 1);
        c.handshake_timeout = Duration::from_millis(300);
        // Far beyond the test's deadline: only the handshake deadline can end it in time.
        c.idle_timeout = Duration::from_secs(120);
        let (t1, _in1) = Transport::<RawMessage>::bind(c, s.creds(1)).await.expect("bind");
        let addr = t1.local_addr();
        let (release, stalled) = std::sync::mpsc::channel::<()>();
        // The stalling client runs on its own runtime: its verifier blocks its thread.
        let attacker = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .unwrap()
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(Stall(std::sync::Mutex::new(stalled), provider)))
                    .with_no_client_auth();
                tls.alpn_protocols = vec![b"quorate/2".to_vec()];
                let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
                let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
                let config = quinn::ClientConfig::new(Arc::new(crypto));
                let _ = endpoint.connect_with(config, addr, "x.invalid").unwrap().await;
            });
        });
        wait_until("the stalled handshake to be dropped", || {
            audited(&["what=handshake", "result=refused", "not completed within"])
        })
        .await;
        let _ = release.send(());
        let _ = attacker.join();
    });
}

#[test]
fn revoked_certificates_are_refused_and_open_connections_closed_when_the_list_is_reloaded() {
    run(async {
        let s = setup("crl", &[1, 2, 3]);
        let crl = s.dir.path().join("revoked.crl");
        s.certs.authority.revocation_list(&[], &crl).expect("empty list");
        let with_crl = |n: u64| {
            Arc::new(Credentials::load_with_crls(s.certs.nodes[&id(n)].clone(), vec![crl.clone()]).expect("load"))
        };
        let (t1, mut in1) = node(&s.cluster, 1, with_crl(1)).await;
        let addr = t1.local_addr();
        let mallory_paths = {
            let identity = Identity::client(s.cluster.clone(), Principal::new("mallory").unwrap(), Role::Write);
            s.certs
                .authority
                .issue(&identity, Validity::from_now(Duration::from_secs(3600)), s.dir.path(), "mallory", &s.certs.ca)
                .expect("issue")
        };
        let mallory = Arc::new(Credentials::load(mallory_paths.clone()).unwrap());
        let honest = s.issue_client("honest");
        let m = raw_connect(&mallory, addr).await;
        let h = raw_connect(&honest, addr).await;
        request_arrives(&m, &mut in1, 1).await;
        // Node 2 dials node 1 and is served.
        let (t2, _in2) = node(&s.cluster, 2, s.creds(2)).await;
        t2.add_peer(id(1), addr);
        t2.try_send(id(1), msg(5, 8)).unwrap();
        assert!(matches!(within("node 2's message", in1.recv()).await, Some(Incoming::Peer { .. })));

        // Mallory's and node 2's certificates are revoked; node 1 reloads its list.
        let node2 = s.certs.nodes[&id(2)].cert.clone();
        s.certs.authority.revocation_list(&[&mallory_paths.cert, &node2], &crl).expect("list");
        t1.reload_tls().expect("reload with the new list");
        assert_eq!(closed_code(&m).await, Some(codes::REFUSED));
        assert!(audited(&["who=quorate://alpha/client/mallory?role=write", "what=recheck", "result=refused"]));
        assert!(h.close_reason().is_none(), "an unrevoked client stays connected");
        request_arrives(&h, &mut in1, 2).await;
        // New connections with a revoked certificate fail at the handshake.
        assert!(!connect_custom(addr, Some(&mallory_paths), b"quorate/2").await);
        wait_until("node 2's connection to close", || !t2.peer_stats(id(1)).unwrap().connected).await;

        // A node dialing a revoked peer refuses it too.
        let (t3, _in3) = node(&s.cluster, 3, with_crl(3)).await;
        t3.add_peer(id(2), t2.local_addr());
        wait_until("node 3's dial to fail", || t3.peer_stats(id(2)).unwrap().connect_failures >= 1).await;
        assert_eq!(t3.peer_stats(id(2)).unwrap().connects, 0);
    });
}

#[test]
fn a_reload_refuses_an_expired_not_yet_valid_or_foreign_certificate_and_keeps_the_old_one() {
    run(async {
        let s = setup("reload-refusals", &[1, 2]);
        let (t1, _in1) = node(&s.cluster, 1, s.creds(1)).await;
        let paths = s.certs.nodes[&id(1)].clone();
        let served = leaf_der(&paths.cert);
        let me = Identity::peer(s.cluster.clone(), id(1));
        let day = Duration::from_secs(86_400);
        let now = SystemTime::now();
        let expired = Validity { not_before: now - 2 * day, not_after: now - day };
        let future = Validity { not_before: now + day, not_after: now + 2 * day };
        let other = TempDir::new("reload-refusals-other");
        let foreign = dev_certs::generate(other.path(), &s.cluster, &[id(1)], &[]).expect("certs");
        let restore = std::fs::read(&paths.cert).unwrap();
        let restore_key = std::fs::read(&paths.key).unwrap();
        for (what, write) in [
            (
                "expired",
                Box::new(|| drop(s.certs.authority.issue(&me, expired, s.dir.path(), "node-1", &s.certs.ca)))
                    as Box<dyn Fn()>,
            ),
            (
                "not yet valid",
                Box::new(|| drop(s.certs.authority.issue(&me, future, s.dir.path(), "node-1", &s.certs.ca))),
            ),
            (
                "another CA",
                Box::new(|| {
                    std::fs::copy(&foreign.nodes[&id(1)].cert, &paths.cert).unwrap();
                    std::fs::copy(&foreign.nodes[&id(1)].key, &paths.key).unwrap();
                }),
            ),
        ] {
            write();
            let failures = t1.credentials().reload_failures();
            let e = t1.reload_tls().expect_err(what);
            assert!(e.to_string().contains("not usable"), "{what}: {e}");
            assert_eq!(t1.credentials().reload_failures(), failures + 1, "{what}");
            assert!(audited(&["what=tls_reload", "result=failed"]));
            assert_eq!(served_cert(&s.creds(2), t1.local_addr()).await, served, "{what}: the old certificate stays");
            std::fs::write(&paths.cert, &restore).unwrap();
            std::fs::write(&paths.key, &restore_key).unwrap();
        }
        assert_eq!(t1.credentials().reload_count(), 0);
        t1.reload_tls().expect("the original certificate reloads");
    });
}

/// An attempt beyond its source's handshake rate is dropped on its first packet: no TLS work,
/// and no packet in answer — not even a `CONNECTION_REFUSED`, which a flooder reacts to at
/// once (the attack suite's connection flood made about 1,300 refused attempts a second,
/// spinning on the answers) and which goes to whatever address the first packet claims (a
/// reflection). An honest client is delayed, not failed: QUIC retransmits its first packet,
/// and the retransmission is let in once the source has a handshake token again.
#[test]
fn connection_attempts_beyond_a_sources_handshake_rate_are_dropped_before_any_tls() {
    run(async {
        let s = setup("handshake-rate", &[1]);
        let mut c = config(&s.cluster, 1);
        c.handshake_burst_per_source = 3;
        c.handshakes_per_source_per_sec = 1;
        let (t1, mut in1) = Transport::<RawMessage>::bind(c, s.creds(1)).await.expect("bind");
        let addr = t1.local_addr();
        let alice = client_creds(&s, "alice", Role::Write);
        // The burst: three attempts from 127.0.0.1 are handshaken and served.
        let mut held = Vec::new();
        for seq in 0..3 {
            let conn = raw_connect(&alice, addr).await;
            request_arrives(&conn, &mut in1, seq).await;
            held.push(conn);
        }
        // The fourth within the same second gets no answer: its handshake neither completes
        // nor is refused while its first packet is not sent again (QUIC's first retransmission
        // comes after about a second; 300 ms is well within it).
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("endpoint");
        let connecting = endpoint
            .connect_with(quinn::ClientConfig::new(alice.quic_client_crypto()), addr, "quorate.invalid")
            .expect("connect");
        tokio::pin!(connecting);
        match tokio::time::timeout(Duration::from_millis(300), &mut connecting).await {
            Err(_) => {}
            Ok(other) => panic!("expected no answer to an attempt over the rate, got {other:?}"),
        }
        wait_until("the attempt is counted", || t1.handshakes_refused() >= 1).await;
        assert!(audited(&["what=handshake", "result=refused", "handshakes_per_source_per_sec"]));
        // The connections of the burst are not affected.
        request_arrives(&held[0], &mut in1, 10).await;
        // One more attempt is allowed per second: the same attempt, retransmitted by the
        // client, gets through once a token is back.
        let conn = within("the delayed handshake", connecting).await.expect("the delayed attempt connects");
        request_arrives(&conn, &mut in1, 11).await;
        assert_eq!(t1.connections(), 4);
    });
}

/// A client that sends a frame no honest client sends — a header over the limit, garbage,
/// an undecodable message, or a stream finished inside a frame — loses its connection (one
/// audit line and one reconnection per violation, and a reconnection meets the handshake
/// rate), where it used to lose only the stream and could repeat thousands of times a second
/// on one connection, each costing the node a task, a log line and the stream's packets. A
/// stream the client resets (a cancelled request) is not a violation: the connection stays.
#[test]
fn a_client_that_sends_a_bad_frame_loses_its_connection() {
    run(async {
        let s = setup("bad-client-frames", &[1]);
        let mut c = config(&s.cluster, 1);
        c.frame_payload_bytes_max = 1024;
        let (t1, mut in1) = Transport::<RawMessage>::bind(c, s.creds(1)).await.expect("bind");
        let addr = t1.local_addr();
        let mallory = client_creds(&s, "mallory", Role::Write);
        let mut valid = Vec::new();
        quorate_transport::encode_message(&msg(1, 8), 1024, &mut valid).unwrap();
        let oversize = FrameHeader { payload_bytes: 1025, version: PROTOCOL_VERSION, kind: KIND }.to_bytes().to_vec();
        // A transport control kind on a request stream: a frame that parses, a message that
        // does not decode.
        let control = MessageKind::HELLO;
        let mut undecodable =
            FrameHeader { payload_bytes: 3, version: PROTOCOL_VERSION, kind: control }.to_bytes().to_vec();
        undecodable.extend_from_slice(&[0xff; 3]);
        let mut garbage = vec![0xab_u8; 64];
        garbage[4] = 0xff;
        let truncated = valid[..valid.len() - 3].to_vec();
        for (name, bytes) in
            [("oversize", oversize), ("undecodable", undecodable), ("garbage", garbage), ("truncated", truncated)]
        {
            let conn = raw_connect(&mallory, addr).await;
            request_arrives(&conn, &mut in1, 1).await;
            let (mut send, _recv) = conn.open_bi().await.expect("open_bi");
            send.write_all(&bytes).await.unwrap();
            let _ = send.finish();
            assert_eq!(closed_code(&conn).await, Some(codes::PROTOCOL), "{name}: the connection must be closed");
        }
        // A reset stream (a cancelled request) keeps the connection.
        let conn = raw_connect(&mallory, addr).await;
        let (mut send, _recv) = conn.open_bi().await.expect("open_bi");
        send.write_all(&valid[..5]).await.unwrap();
        send.reset(VarInt::from_u32(0)).unwrap();
        request_arrives(&conn, &mut in1, 2).await;
        assert!(conn.close_reason().is_none(), "a cancelled request closed the connection");
    });
}

/// A resolver with answers the test sets: what a hosts file would say.
#[derive(Debug, Default)]
struct Names {
    table: std::sync::Mutex<std::collections::HashMap<String, std::net::IpAddr>>,
    asked: std::sync::atomic::AtomicU64,
}

impl Names {
    fn set(&self, host: &str, ip: &str) {
        self.table.lock().unwrap().insert(host.to_string(), ip.parse().unwrap());
    }
}

impl quorate_transport::Resolver for Names {
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + '_>> {
        self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let found = self.table.lock().unwrap().get(host).map(|ip| SocketAddr::new(*ip, port));
        Box::pin(async move {
            found.map(|a| vec![a]).ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such host"))
        })
    }
}

async fn one_message(inbox: &mut Inbox<RawMessage>, from: u64) -> u64 {
    loop {
        if let Some(Incoming::Peer { from: f, message, .. }) = inbox.recv().await {
            assert_eq!(f, id(from));
            return seq_of(&message);
        }
    }
}

#[test]
fn a_peer_given_by_name_is_found_again_at_its_new_address() {
    run(async {
        let s = setup("byname", &[1, 2]);
        let names = Arc::new(Names::default());
        let mut c1 = config(&s.cluster, 1);
        c1.resolver = names.clone();
        let (t1, _in1) = Transport::<RawMessage>::bind(c1, s.creds(1)).await.expect("bind");
        let (t2, mut in2) = node(&s.cluster, 2, s.creds(2)).await;
        let port = t2.local_addr().port();
        let name = format!("node-2.quorate.test:{port}");

        // While the name does not resolve, dials fail and are counted; messages wait.
        t1.add_peer_at(id(2), name.parse().expect("a name"));
        t1.try_send(id(2), msg(1, 10)).expect("queued");
        wait_until("a failed resolution", || t1.peer_stats(id(2)).is_some_and(|p| p.resolve_failures >= 1)).await;
        assert!(!t1.peer_stats(id(2)).unwrap().connected);

        names.set("node-2.quorate.test", "127.0.0.1");
        assert_eq!(within("node 2 to hear from node 1", one_message(&mut in2, 1)).await, 1);
        assert_eq!(t1.peer_stats(id(2)).unwrap().dialed, Some(SocketAddr::new("127.0.0.1".parse().unwrap(), port)));

        // Node 2 comes back on another address under the same name (127.0.0.2 is loopback too).
        t2.shutdown().await;
        drop(in2);
        let mut c2 = config(&s.cluster, 2);
        c2.bind = SocketAddr::new("127.0.0.2".parse().unwrap(), port);
        let (t2b, mut in2b) = Transport::<RawMessage>::bind(c2, s.creds(2)).await.expect("bind on 127.0.0.2");
        names.set("node-2.quorate.test", "127.0.0.2");
        let asked_before = names.asked.load(std::sync::atomic::Ordering::SeqCst);
        // Node 1 finds it by its name: each dial asks the resolver again.
        let got = within("node 2 to hear from node 1 at its new address", async {
            let mut seq = 2;
            loop {
                let _ = t1.try_send(id(2), msg(seq, 10));
                seq += 1;
                if let Ok(s) = tokio::time::timeout(Duration::from_millis(200), one_message(&mut in2b, 1)).await {
                    break s;
                }
            }
        })
        .await;
        assert!(got >= 2, "a message sent after the move arrived: {got}");
        assert_eq!(t1.peer_stats(id(2)).unwrap().dialed, Some(t2b.local_addr()));
        assert!(names.asked.load(std::sync::atomic::Ordering::SeqCst) > asked_before, "the name was asked again");
        t2b.shutdown().await;
        t1.shutdown().await;
    });
}
