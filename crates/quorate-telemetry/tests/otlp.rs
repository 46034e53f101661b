//! A fake OTLP/HTTP collector on 127.0.0.1 — plain and behind TLS with a test CA — receives
//! the span of a traced operation; the request is decoded with the exporter's own protobuf
//! types and its resource attributes checked.
//!
//! Each test installs the process's tracing subscriber, so each needs its own process (the
//! workspace runs tests with nextest, one process per test).

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message as _;
use quorate_telemetry::{LogFormat, OtlpConfig, TracingConfig, init_tracing};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

/// One received request: its head (request line and headers, lowercased names) and body.
struct Received {
    line: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// Reads one HTTP/1.1 request from `s`, answers 200 and returns it.
fn serve_one(mut s: impl Read + Write) -> Option<Received> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut want = None;
    while want.is_none_or(|w| buf.len() < w) {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        assert!(buf.len() < 16 << 20, "request too long");
        if want.is_none()
            && let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n")
        {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)))
                .unwrap_or(0);
            want = Some(end + 4 + len);
        }
    }
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.lines();
    let line = lines.next().unwrap_or("").to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = s.flush();
    Some(Received { line, headers, body: buf[end + 4..].to_vec() })
}

/// Accepts connections (TLS when `tls` is set) and forwards every request received.
fn fake_collector(tls: Option<Arc<rustls::ServerConfig>>) -> (std::net::SocketAddr, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(64) {
            let Ok(s) = stream else { continue };
            s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            let got = match &tls {
                None => serve_one(s),
                Some(config) => {
                    let conn = rustls::ServerConnection::new(config.clone()).expect("server connection");
                    let mut stream = rustls::StreamOwned::new(conn, s);
                    let got = serve_one(&mut stream);
                    stream.conn.send_close_notify();
                    let _ = stream.flush();
                    got
                }
            };
            if let Some(r) = got
                && tx.send(r).is_err()
            {
                return;
            }
        }
    });
    (addr, rx)
}

/// Emits a `proposal` span (exported) and a span of another target (not exported), then
/// waits for the collector to receive the proposal's export request, decoded.
fn export_and_receive(config: OtlpConfig, rx: &mpsc::Receiver<Received>) -> (Received, ExportTraceServiceRequest) {
    let guard =
        init_tracing(&TracingConfig { format: LogFormat::Json, filter: Some("info".into()), otlp: Some(config) })
            .expect("tracing installs");
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
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(r) => {
                let req = ExportTraceServiceRequest::decode(r.body.as_slice()).expect("a protobuf export request");
                let names: Vec<&str> = req
                    .resource_spans
                    .iter()
                    .flat_map(|rs| &rs.scope_spans)
                    .flat_map(|ss| &ss.spans)
                    .map(|s| s.name.as_str())
                    .collect();
                assert!(!names.contains(&"not_exported"), "only quorate spans are exported: {names:?}");
                if names.contains(&"proposal") {
                    drop(guard);
                    return (r, req);
                }
            }
            Err(_) => guard.flush(),
        }
    }
    panic!("the collector did not receive the proposal span");
}

/// The resource attributes of the first resource, as strings.
fn resource_of(req: &ExportTraceServiceRequest) -> BTreeMap<String, String> {
    let resource = req.resource_spans[0].resource.as_ref().expect("a resource");
    resource
        .attributes
        .iter()
        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some((kv.key.clone(), s.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_fake_collector_receives_the_span_with_one_service_and_the_instance() {
    let (addr, rx) = fake_collector(None);
    // The environment an operator would set, given as a map (the test cannot change its own
    // process's environment safely).
    let env: BTreeMap<&str, String> = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}")),
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test%20lab,service.instance.id=ignored".into()),
        ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20t0ken".into()),
    ]
    .into_iter()
    .collect();
    let mut config = OtlpConfig::from_env("http://127.0.0.1:1/v1/traces", "", |k| env.get(k).cloned())
        .expect("valid")
        .expect("export configured");
    config.service_instance_id = Some("2".into());
    config.service_version = Some("0.1.0".into());
    let (r, req) = export_and_receive(config, &rx);
    assert_eq!(r.line, "POST /v1/traces HTTP/1.1", "the env endpoint won, with the signal path appended");
    assert_eq!(r.headers.get("content-type").map(String::as_str), Some("application/x-protobuf"));
    assert_eq!(r.headers.get("authorization").map(String::as_str), Some("Bearer t0ken"));
    let res = resource_of(&req);
    assert_eq!(res.get("service.name").map(String::as_str), Some("quorate"), "{res:?}");
    assert_eq!(res.get("service.instance.id").map(String::as_str), Some("2"), "the node's id wins: {res:?}");
    assert_eq!(res.get("service.version").map(String::as_str), Some("0.1.0"), "{res:?}");
    assert_eq!(res.get("deployment.environment").map(String::as_str), Some("test lab"), "{res:?}");
    assert_eq!(res.get("telemetry.sdk.name").map(String::as_str), Some("opentelemetry"), "{res:?}");
    let span = req.resource_spans[0].scope_spans.iter().flat_map(|s| &s.spans).find(|s| s.name == "proposal").unwrap();
    let keys: Vec<&str> = span.attributes.iter().map(|kv| kv.key.as_str()).collect();
    assert!(keys.contains(&"term") && keys.contains(&"index"), "{keys:?}");
}

#[test]
fn an_https_collector_with_a_test_ca_receives_the_span() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate().expect("server key");
    let server_params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("params");
    let server = server_params.signed_by(&server_key, &issuer).expect("server cert");
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![server.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
        )
        .expect("server config");
    let (addr, rx) = fake_collector(Some(Arc::new(tls)));
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write ca");

    let env: BTreeMap<&str, String> = [
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", format!("https://localhost:{}/v1/traces", addr.port())),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca_file.display().to_string()),
        ("OTEL_SERVICE_NAME", "quorate-prod".into()),
    ]
    .into_iter()
    .collect();
    let mut config = OtlpConfig::from_env("", "quorate", |k| env.get(k).cloned()).expect("valid").expect("export on");
    config.service_instance_id = Some("3".into());
    let (r, req) = export_and_receive(config, &rx);
    assert_eq!(r.line, "POST /v1/traces HTTP/1.1");
    let res = resource_of(&req);
    assert_eq!(res.get("service.name").map(String::as_str), Some("quorate-prod"), "OTEL_SERVICE_NAME: {res:?}");
    assert_eq!(res.get("service.instance.id").map(String::as_str), Some("3"), "{res:?}");
}

#[test]
fn bad_endpoints_and_ca_files_are_clear_errors() {
    // Each is refused before any subscriber is installed.
    let err = init_tracing(&TracingConfig {
        otlp: Some(OtlpConfig::new("ftp://collector.invalid/v1/traces")),
        ..TracingConfig::default()
    })
    .expect_err("ftp is refused");
    assert!(err.to_string().contains("expected http://host:port/v1/traces or https://"), "{err}");
    let mut https = OtlpConfig::new("https://collector.invalid/v1/traces");
    https.ca_file = Some("/nonexistent/ca.pem".into());
    let err = init_tracing(&TracingConfig { otlp: Some(https), ..TracingConfig::default() })
        .expect_err("a missing CA file is refused");
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}
