//! A fake OTLP collector on 127.0.0.1 receives the span of a traced operation.

use quorate_telemetry::{LogFormat, OtlpConfig, TracingConfig, init_tracing};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// One received request: its request line and body.
struct Received {
    line: String,
    body: Vec<u8>,
}

/// Accepts up to `max` connections, answers each 200, and forwards what it received.
fn fake_collector(listener: TcpListener, max: usize, tx: mpsc::Sender<Received>) {
    for stream in listener.incoming().take(max) {
        let Ok(mut s) = stream else { continue };
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let (head_end, len) = loop {
            let n = s.read(&mut chunk).unwrap_or(0);
            if n == 0 {
                break (None, 0);
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)))
                    .unwrap_or(0);
                break (Some(end), len);
            }
            assert!(buf.len() < 1 << 20, "request head too long");
        };
        let Some(end) = head_end else { continue };
        while buf.len() < end + 4 + len {
            let n = s.read(&mut chunk).unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let line = String::from_utf8_lossy(&buf[..end]).lines().next().unwrap_or("").to_string();
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let _ = tx.send(Received { line, body: buf[end + 4..].to_vec() });
    }
}

#[test]
fn a_fake_collector_receives_the_span() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || fake_collector(listener, 16, tx));

    let config = TracingConfig {
        format: LogFormat::Json,
        filter: Some("info".into()),
        otlp: Some(OtlpConfig {
            endpoint: format!("http://{addr}/v1/traces"),
            service_name: "quorate-test".into(),
            timeout: Duration::from_secs(5),
        }),
    };
    let guard = init_tracing(&config).expect("tracing installs");
    assert!(guard.exporting());
    {
        let span = tracing::info_span!(target: "quorate::test", "proposal", term = 3u64, index = 17u64);
        let _e = span.enter();
        tracing::info!("committed");
        // Spans of other crates (here: this test's own target) are not exported.
        let _other = tracing::info_span!("not_exported").entered();
    }
    guard.flush();

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut found = None;
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(r) if r.body.windows(8).any(|w| w == b"proposal") => {
                found = Some(r);
                break;
            }
            Ok(_) => {}
            Err(_) => guard.flush(),
        }
    }
    let r = found.expect("the collector received the proposal span");
    assert_eq!(r.line, "POST /v1/traces HTTP/1.1");
    // Protobuf carries strings raw: the span name, the attribute key and the service name.
    assert!(r.body.windows(5).any(|w| w == b"index"), "attribute key present");
    assert!(r.body.windows(12).any(|w| w == b"quorate-test"), "service name present");
    assert!(!r.body.windows(12).any(|w| w == b"not_exported"), "only quorate spans are exported");
    drop(guard);
}

#[test]
fn a_bad_endpoint_is_a_clear_error() {
    // Runs before or after the other test in this binary; either way the endpoint is checked
    // before any subscriber is installed.
    let config = TracingConfig {
        otlp: Some(OtlpConfig {
            endpoint: "https://collector.invalid/v1/traces".into(),
            service_name: "x".into(),
            timeout: Duration::from_secs(1),
        }),
        ..TracingConfig::default()
    };
    let err = init_tracing(&config).expect_err("https is refused");
    assert!(err.to_string().contains("expected http://"), "{err}");
}
