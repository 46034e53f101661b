//! Throughput of quorate-transport next to plain quinn with the same TLS settings (mutual
//! TLS, same certificates, ALPN, transport parameters) and the same stream pattern (one
//! long-lived unidirectional stream of length-prefixed frames), on loopback.
//!
//! `cargo xtask bench transport` (= `cargo bench --profile ci -p quorate-transport --bench
//! transport`). Bounded: a fixed message count per run, `RUNS` runs, and a per-run deadline.
//! Prints medians and the ratio transport / plain quinn.

use quinn::{Endpoint, VarInt};
use quorate_log::NodeId;
use quorate_transport::{
    ClusterId, Credentials, FrameHeader, HEADER_BYTES, Incoming, MessageKind, PROTOCOL_VERSION, RawMessage, SendError,
    Transport, TransportConfig, dev_certs, quic_transport_config,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RUNS: usize = 5;
const RUN_DEADLINE: Duration = Duration::from_secs(60);
const KIND: MessageKind = MessageKind(0x0100);
/// (payload bytes, messages per run)
const WORKLOADS: [(usize, usize); 2] = [(100, 200_000), (64 * 1024, 3_000)];

struct Fixture {
    cluster: ClusterId,
    creds1: Arc<Credentials>,
    creds2: Arc<Credentials>,
}

/// Messages queued per peer: about 4 MiB in flight, as a node would configure it.
fn queue_capacity(size: usize) -> usize {
    (4 * 1024 * 1024 / size).clamp(16, 8192)
}

fn config(f: &Fixture, node: u64, size: usize) -> TransportConfig {
    let mut c = TransportConfig::new(
        f.cluster.clone(),
        NodeId::new(node).expect("non-zero"),
        "127.0.0.1:0".parse().expect("addr"),
    );
    c.queue_capacity = queue_capacity(size);
    c.inbox_capacity = 8192;
    c
}

/// Seconds to move `count` messages of `size` bytes from node 1 to node 2 through the
/// transport.
async fn run_transport(f: &Fixture, size: usize, count: usize) -> f64 {
    let n2 = NodeId::new(2).expect("2");
    let (t1, _in1) = Transport::<RawMessage>::bind(config(f, 1, size), f.creds1.clone()).await.expect("bind 1");
    let (t2, mut in2) = Transport::<RawMessage>::bind(config(f, 2, size), f.creds2.clone()).await.expect("bind 2");
    t1.add_peer(n2, t2.local_addr());
    // Warm up: one message through, so the handshake is not timed.
    let warm = RawMessage { kind: KIND, payload: vec![0; size] };
    t1.try_send(n2, warm.clone()).expect("queued");
    in2.recv().await.expect("warm-up");

    let start = Instant::now();
    let receiver = tokio::spawn(async move {
        let mut got = 0usize;
        while got < count {
            match in2.recv().await {
                Some(Incoming::Peer { message, .. }) => {
                    assert_eq!(message.payload.len(), size);
                    got += 1;
                }
                Some(_) => {}
                None => break,
            }
        }
        got
    });
    for _ in 0..count {
        let mut m = RawMessage { kind: KIND, payload: warm.payload.clone() };
        loop {
            match t1.try_send(n2, m) {
                Ok(()) => break,
                Err(SendError::QueueFull) => {
                    m = RawMessage { kind: KIND, payload: warm.payload.clone() };
                    tokio::task::yield_now().await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    let got = tokio::time::timeout(RUN_DEADLINE, receiver).await.expect("run deadline").expect("receiver");
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(got, count);
    drop(t1);
    drop(t2);
    secs
}

/// The same through plain quinn: one uni stream, a write per frame, a read per header and
/// per payload.
async fn run_plain(f: &Fixture, size: usize, count: usize) -> f64 {
    let quic = Arc::new(quic_transport_config(&config(f, 1, size)).expect("quic config"));
    let mut server_config = quinn::ServerConfig::with_crypto(f.creds2.quic_server_crypto());
    server_config.transport_config(quic.clone());
    let server = Endpoint::server(server_config, "127.0.0.1:0".parse().expect("addr")).expect("server");
    let addr = server.local_addr().expect("addr");
    let client = Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client");
    let mut client_config = quinn::ClientConfig::new(f.creds1.quic_client_crypto());
    client_config.transport_config(quic);

    let receiver = tokio::spawn(async move {
        let conn = server.accept().await.expect("incoming").await.expect("handshake");
        let mut recv = conn.accept_uni().await.expect("stream");
        let mut header = [0u8; HEADER_BYTES];
        recv.read_exact(&mut header).await.expect("warm-up header");
        let h = FrameHeader::parse(&header, u32::MAX).expect("header");
        let mut payload = vec![0; h.payload_bytes as usize];
        recv.read_exact(&mut payload).await.expect("warm-up payload");
        let start = Instant::now();
        for _ in 0..count {
            recv.read_exact(&mut header).await.expect("header");
            let h = FrameHeader::parse(&header, u32::MAX).expect("header");
            let mut payload = vec![0; h.payload_bytes as usize];
            recv.read_exact(&mut payload).await.expect("payload");
        }
        let _ = server;
        start
    });
    let conn = client.connect_with(client_config, addr, "quorate.invalid").expect("connect").await.expect("handshake");
    let mut send = conn.open_uni().await.expect("stream");
    let header = FrameHeader { payload_bytes: size as u32, version: PROTOCOL_VERSION, kind: KIND }.to_bytes();
    let payload = vec![0u8; size];
    let mut frame = header.to_vec();
    frame.extend_from_slice(&payload);
    send.write_all(&frame).await.expect("warm-up");
    let sent_start = Instant::now();
    for _ in 0..count {
        let mut frame = Vec::with_capacity(HEADER_BYTES + size);
        frame.extend_from_slice(&header);
        frame.extend_from_slice(&payload);
        send.write_all(&frame).await.expect("write");
    }
    let start = tokio::time::timeout(RUN_DEADLINE, receiver).await.expect("run deadline").expect("receiver");
    let secs = start.min(sent_start).elapsed().as_secs_f64();
    conn.close(VarInt::from_u32(0), b"");
    client.close(VarInt::from_u32(0), b"");
    secs
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = std::env::temp_dir().join(format!("quorate-transport-bench-{}", std::process::id()));
    let cluster = ClusterId::new("bench").expect("cluster");
    let nodes = [NodeId::new(1).expect("1"), NodeId::new(2).expect("2")];
    let certs = dev_certs::generate(&dir, &cluster, &nodes, &[]).expect("certs");
    let load = |n: NodeId| Arc::new(Credentials::load(certs.nodes[&n].clone()).expect("creds"));
    let f = Fixture { cluster, creds1: load(nodes[0]), creds2: load(nodes[1]) };
    println!("| payload | messages/run | runs | quorate-transport msg/s | MB/s | plain quinn msg/s | MB/s | ratio |");
    println!("|---|---|---|---|---|---|---|---|");
    for (size, count) in WORKLOADS {
        let (mut ours, mut plain) = (Vec::new(), Vec::new());
        for _ in 0..RUNS {
            ours.push(rt.block_on(run_transport(&f, size, count)));
            plain.push(rt.block_on(run_plain(&f, size, count)));
        }
        let rate = |secs: f64| count as f64 / secs;
        let mbps = |secs: f64| (count * size) as f64 / secs / 1e6;
        let (o, p) = (median(ours), median(plain));
        println!(
            "| {size} B | {count} | {RUNS} | {:.0} | {:.1} | {:.0} | {:.1} | {:.2} |",
            rate(o),
            mbps(o),
            rate(p),
            mbps(p),
            p / o
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
