//! The HTTP endpoint: metrics, probes, bounds.

use quorate_telemetry::http::{HttpLimits, Probe, Probes, get_blocking, serve};
use quorate_telemetry::{Metrics, names};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

struct Flag(AtomicBool);

impl Probes for Flag {
    fn livez(&self) -> Probe {
        Probe::ok("storage responsive")
    }
    fn readyz(&self) -> Probe {
        if self.0.load(Ordering::Relaxed) { Probe::ok("has a leader") } else { Probe::fail("no leader known") }
    }
    fn before_scrape(&self) {
        metrics::gauge!(names::HAS_LEADER).set(if self.0.load(Ordering::Relaxed) { 1.0 } else { 0.0 });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_metrics_and_probes_within_bounds() {
    let registry = Metrics::global().expect("first recorder in this test binary");
    metrics::counter!(names::PROPOSALS_SHED_TOTAL, names::LABEL_REASON => "queue").increment(2);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let probes = Arc::new(Flag(AtomicBool::new(false)));
    let limits = HttpLimits {
        request_bytes_max: 1024,
        timeout: Duration::from_secs(2),
        connections_max: 4,
        head_timeout: Duration::from_secs(2),
    };
    let server = tokio::spawn(serve(listener, registry, probes.clone(), limits));

    let get = move |path: &'static str| {
        tokio::task::spawn_blocking(move || get_blocking(addr, path, Duration::from_secs(5), 1 << 20))
    };
    let (code, body) = get("/metrics").await.expect("join").expect("scrape");
    assert_eq!(code, 200);
    assert!(body.contains("# TYPE quorate_proposals_shed_total counter\n"), "{body}");
    assert!(body.contains("quorate_proposals_shed_total{reason=\"queue\"} 2\n"), "{body}");
    assert!(body.contains("quorate_raft_has_leader 0\n"), "{body}");

    let (code, body) = get("/readyz").await.expect("join").expect("readyz");
    assert_eq!((code, body.as_str()), (503, "not ok: no leader known\n"));
    probes.0.store(true, Ordering::Relaxed);
    let (code, body) = get("/readyz").await.expect("join").expect("readyz");
    assert_eq!((code, body.as_str()), (200, "ok: has a leader\n"));
    let (code, _) = get("/livez").await.expect("join").expect("livez");
    assert_eq!(code, 200);
    let (code, _) = get("/nope").await.expect("join").expect("404");
    assert_eq!(code, 404);

    // An oversized request head is refused with 431, and a silent client is dropped after
    // the timeout; the endpoint keeps serving.
    let big = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let _ = write!(s, "GET /metrics HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "a".repeat(4096));
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
    .await
    .expect("join");
    assert!(big.starts_with("HTTP/1.1 431 "), "{big}");
    let silent = std::net::TcpStream::connect(addr).expect("connect");
    let (code, _) = get("/livez").await.expect("join").expect("livez while a client is silent");
    assert_eq!(code, 200);
    drop(silent);
    server.abort();
}

/// Idle sockets that hold every connection slot must not keep `/livez` and `/readyz` out: an
/// orchestrator would restart a healthy node. The head deadline here is far longer than the
/// probe's own timeout, so only a fix that frees a slot for the probe (not the deadline of
/// the idle sockets) lets it through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_on_every_slot_do_not_starve_the_probes() {
    let registry = Metrics::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let probes = Arc::new(Flag(AtomicBool::new(true)));
    let limits = HttpLimits {
        connections_max: 8,
        timeout: Duration::from_secs(120),
        head_timeout: Duration::from_secs(120),
        ..HttpLimits::default()
    };
    let server = tokio::spawn(serve(listener, registry, probes, limits));

    // Many more idle sockets than slots, each connected and silent.
    let idle: Vec<std::net::TcpStream> =
        (0..4 * limits.connections_max).map(|_| std::net::TcpStream::connect(addr).expect("connect")).collect();
    for path in ["/livez", "/readyz", "/livez"] {
        let (code, body) =
            tokio::task::spawn_blocking(move || get_blocking(addr, path, Duration::from_secs(10), 1 << 20))
                .await
                .expect("join")
                .unwrap_or_else(|e| panic!("{path} while {} idle sockets are open: {e}", 4 * 8));
        assert_eq!(code, 200, "{path}: {body}");
    }
    drop(idle);
    server.abort();
}
