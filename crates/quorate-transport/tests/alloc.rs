//! Memory that a client's frame headers can make a node allocate: a header announcing a large
//! request must not allocate its announced length (a process of its own, with a counting
//! allocator).
#![allow(unsafe_code, reason = "a counting global allocator needs `unsafe impl GlobalAlloc`")]

mod common;

use common::{TempDir, run, within};
use quorate_log::NodeId;
use quorate_transport::dev_certs;
use quorate_transport::{
    Credentials, FrameHeader, Incoming, MessageKind, PROTOCOL_VERSION, Principal, RawMessage, Role, Transport,
    TransportConfig,
};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts the bytes currently allocated.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Streams whose headers announce a large request (their total stays within one identity's
/// byte budget, so that every one of them is read at once).
const STREAMS: usize = 7;
const ANNOUNCED: u32 = 4 * 1024 * 1024 - 1;

#[test]
fn headers_announcing_large_requests_allocate_nothing_like_their_length() {
    run(async {
        let dir = TempDir::new("alloc");
        let cluster = quorate_transport::ClusterId::new("alpha").unwrap();
        let n1 = NodeId::new(1).unwrap();
        let ops = Principal::new("ops").unwrap();
        let certs = dev_certs::generate(dir.path(), &cluster, &[n1], &[(ops.clone(), Role::Admin)]).unwrap();
        let mut c = TransportConfig::new(cluster, n1, "127.0.0.1:0".parse().unwrap());
        c.frame_payload_bytes_max = 4 * 1024 * 1024;
        let creds = Arc::new(Credentials::load(certs.nodes[&n1].clone()).unwrap());
        let (t1, mut inbox) = Transport::<RawMessage>::bind(c, creds).await.unwrap();
        let client = Credentials::load(certs.clients[&ops].clone()).unwrap();
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let conn = endpoint
            .connect_with(quinn::ClientConfig::new(client.quic_client_crypto()), t1.local_addr(), "quorate.invalid")
            .unwrap()
            .await
            .unwrap();
        // Warm up: one request through, so that the connection's own buffers are counted in
        // the baseline.
        let marker = |seq: u8| {
            let mut bytes = Vec::new();
            let m = RawMessage { kind: MessageKind(0x100), payload: vec![seq; 8] };
            quorate_transport::encode_message(&m, 1024, &mut bytes).unwrap();
            bytes
        };
        let (mut s, _r) = conn.open_bi().await.unwrap();
        s.write_all(&marker(0)).await.unwrap();
        let warm = within("warm-up request", inbox.recv()).await;
        assert!(matches!(warm, Some(Incoming::Request(_))));
        let before = LIVE.load(Ordering::Relaxed);

        let header = FrameHeader { payload_bytes: ANNOUNCED, version: PROTOCOL_VERSION, kind: MessageKind(0x100) };
        let mut streams = Vec::new();
        for _ in 0..STREAMS {
            let (mut send, recv) = conn.open_bi().await.unwrap();
            send.write_all(&header.to_bytes()).await.unwrap();
            send.write_all(&[0xab; 100]).await.unwrap();
            streams.push((send, recv));
        }
        // A complete request after them: once it arrives, the node has read the headers.
        let (mut s, _r) = conn.open_bi().await.unwrap();
        s.write_all(&marker(1)).await.unwrap();
        let arrived = within("marker request", inbox.recv()).await;
        assert!(matches!(arrived, Some(Incoming::Request(_))));
        let grown = LIVE.load(Ordering::Relaxed).saturating_sub(before);
        let announced = STREAMS * ANNOUNCED as usize;
        assert!(
            grown < 8 * 1024 * 1024,
            "{STREAMS} headers announcing {announced} bytes in total grew the heap by {grown} bytes"
        );
        drop(streams);
        conn.close(0u32.into(), b"");
    });
}
