//! OTLP/HTTP trace export (cargo feature `otlp`), over a tiny blocking HTTP/1.1 client, with
//! TLS from rustls for `https://` collectors.
//!
//! Why not reqwest or hyper (opentelemetry-otlp's `reqwest-rustls` feature): they would bring
//! a second HTTP stack, and their own TLS set-up, into a tree that has neither; an OTLP export
//! is one `POST` of a protobuf body. rustls (with ring) is in the tree already for the
//! transport. The SDK's batch span processor runs exports on its own thread (with
//! `futures_executor::block_on`), so the client does blocking socket I/O there, and never on
//! the node's tokio workers.
//!
//! **One deadline per export.** An export is one attempt (the exporter's own retries are off:
//! its retry loop starts a new attempt whenever its budget is not spent, so two attempts could
//! take twice the timeout), and that attempt has one deadline, `timeout` after it starts, that
//! bounds everything it does: the name lookup (on a helper thread, see [`Resolver`]), the
//! connect, the TLS handshake, the write and the read of the answer. Every socket operation is
//! given only the time left ([`Timed`]), so a collector that accepts and never answers, or
//! answers one byte at a time, holds the export thread until the deadline and no longer. The
//! answer is read up to [`RESPONSE_BYTES_MAX`] bytes and no further than its
//! `Content-Length`. A failed export drops its batch; the span queue stays bounded
//! (`OTEL_BSP_MAX_QUEUE_SIZE`), and spans beyond it are dropped, never waited for.

use crate::{BoxedLayer, OtlpConfig, ParentRoot, TelemetryError, TraceSampler};
use bytes::Bytes;
use opentelemetry::KeyValue;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};
use tracing_subscriber::Layer as _;

/// Largest collector answer read, head and body (bytes). An OTLP answer is an
/// `ExportTraceServiceResponse`: a status line, a few headers and a partial-success message.
pub(crate) const RESPONSE_BYTES_MAX: usize = 64 * 1024;

/// Addresses of a collector's name tried, at most (within the export's deadline).
const ADDRS_MAX: usize = 8;

/// Where the system's CA bundle usually is (Debian/Ubuntu/Alpine, Fedora/RHEL, openSUSE,
/// macOS/BSD), after `SSL_CERT_FILE`.
const SYSTEM_BUNDLES: [&str; 5] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
    "/usr/local/share/certs/ca-root-nss.crt",
];

/// A one-request-per-connection HTTP/1.1 client; TLS when `tls` is set (`https://`).
#[derive(Debug, Clone)]
struct TinyClient {
    /// The deadline of one export, from its start.
    timeout: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
    resolver: Arc<Resolver>,
}

#[async_trait::async_trait]
impl HttpClient for TinyClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        post(Instant::now() + self.timeout, self.tls.as_ref(), &self.resolver, &request)
    }
}

/// How a name is looked up (the system's resolver; tests give a slow one).
type Lookup = fn(&str, u16) -> io::Result<Vec<SocketAddr>>;

fn system_lookup(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    Ok((host, port).to_socket_addrs()?.take(ADDRS_MAX).collect())
}

/// Looks the collector's name up again for every export (a collector behind a name that
/// moves, such as a Kubernetes Service, is followed), on a helper thread, because the
/// system's resolver (`getaddrinfo`) takes no timeout. At most one lookup runs at a time: an
/// export whose deadline passes during a lookup leaves it running, and the next export waits
/// for that same lookup instead of starting another, so a resolver that hangs costs one
/// thread, not one per export. An IP address is not looked up.
struct Resolver {
    lookup: Lookup,
    pending: Mutex<Option<PendingLookup>>,
}

struct PendingLookup {
    host: String,
    port: u16,
    answer: mpsc::Receiver<io::Result<Vec<SocketAddr>>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

impl Resolver {
    fn new(lookup: Lookup) -> Resolver {
        Resolver { lookup, pending: Mutex::new(None) }
    }

    fn resolve(&self, host: &str, port: u16, deadline: Instant) -> io::Result<Vec<SocketAddr>> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(p) = pending.as_ref()
            && (p.host != host || p.port != port)
        {
            return Err(io::Error::other(format!("a lookup of {}:{} is still running", p.host, p.port)));
        }
        if pending.is_none() {
            let (tx, rx) = mpsc::sync_channel(1);
            let (name, lookup) = (host.to_string(), self.lookup);
            std::thread::Builder::new().name("otlp-resolve".into()).spawn(move || {
                let _ = tx.send(lookup(&name, port));
            })?;
            *pending = Some(PendingLookup { host: host.to_string(), port, answer: rx });
        }
        let wait = left(deadline)?;
        // Set just above.
        let answer = pending.as_ref().map(|p| p.answer.recv_timeout(wait));
        match answer {
            Some(Ok(found)) => {
                *pending = None;
                let found = found?;
                if found.is_empty() {
                    return Err(io::Error::other(format!("{host} has no address")));
                }
                Ok(found)
            }
            Some(Err(mpsc::RecvTimeoutError::Timeout)) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("looking {host} up took longer than the export's deadline"),
            )),
            Some(Err(mpsc::RecvTimeoutError::Disconnected)) | None => {
                *pending = None;
                Err(io::Error::other(format!("the lookup of {host} ended without an answer")))
            }
        }
    }
}

/// The time left before `deadline`; an error once it has passed.
fn left(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "the export's deadline passed"));
    }
    Ok(left)
}

/// A TCP stream whose every read and write is given only the time left before the export's
/// deadline (a socket timeout bounds one operation; this bounds them all together).
struct Timed {
    s: TcpStream,
    deadline: Instant,
}

/// A socket timeout is `WouldBlock` on Unix: say what it is.
fn timed_out(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        io::Error::new(io::ErrorKind::TimedOut, "the export's deadline passed")
    } else {
        e
    }
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.s.set_read_timeout(Some(left(self.deadline)?))?;
        self.s.read(buf).map_err(timed_out)
    }
}

impl Write for Timed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.s.set_write_timeout(Some(left(self.deadline)?))?;
        self.s.write(buf).map_err(timed_out)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.s.flush()
    }
}

/// Connects to the first of `addrs` that accepts before the deadline.
fn connect(addrs: &[SocketAddr], deadline: Instant) -> io::Result<TcpStream> {
    let mut last = None;
    for addr in addrs.iter().take(ADDRS_MAX) {
        match TcpStream::connect_timeout(addr, left(deadline)?) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no address to connect to")))
}

/// One export request, everything it does bounded by `deadline`.
fn post(
    deadline: Instant,
    tls: Option<&Arc<rustls::ClientConfig>>,
    resolver: &Resolver,
    request: &Request<Bytes>,
) -> Result<Response<Bytes>, HttpError> {
    let uri = request.uri();
    let (secure, default_port) = match uri.scheme_str() {
        Some("http") => (false, 80),
        Some("https") => (true, 443),
        _ => return Err(format!("only http:// and https:// collectors are supported, not {uri}").into()),
    };
    let host = uri.host().ok_or("collector URL has no host")?;
    // `[::1]` in a URL is `::1` to the resolver and in the certificate.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(default_port);
    let addrs = resolver.resolve(bare, port, deadline)?;
    let s = Timed { s: connect(&addrs, deadline)?, deadline };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut head = format!("{} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n", request.method());
    for (name, value) in request.headers() {
        if name == http::header::CONTENT_LENGTH || name == http::header::CONNECTION || name == http::header::HOST {
            continue;
        }
        if let Ok(v) = value.to_str() {
            head.push_str(&format!("{name}: {v}\r\n"));
        }
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", request.body().len()));
    let buf = if secure {
        let config = tls.ok_or("an https:// collector needs TLS set up (internal error)")?;
        let name = ServerName::try_from(bare.to_string())?;
        let conn = rustls::ClientConnection::new(config.clone(), name)?;
        exchange(rustls::StreamOwned::new(conn, s), head.as_bytes(), request.body())?
    } else {
        exchange(s, head.as_bytes(), request.body())?
    };
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").ok_or("collector response has no header end")?;
    let head = std::str::from_utf8(&buf[..end])?;
    let status: u16 =
        head.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or("collector response has no status code")?;
    let body = Bytes::copy_from_slice(&buf[end + 4..]);
    Ok(Response::builder().status(status).body(body)?)
}

/// The length of the whole answer, once its head is in: the head plus its `Content-Length`
/// (`None` without one: the answer ends when the server closes).
fn answer_len(head: &[u8]) -> io::Result<Option<usize>> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, format!("collector response: {why}"));
    let text = std::str::from_utf8(head).map_err(|_| bad("a head that is not text"))?;
    for line in text.split("\r\n").skip(1) {
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            let len: usize = value.trim().parse().map_err(|_| bad("a Content-Length that is not a number"))?;
            return Ok(Some(head.len().saturating_add(4).saturating_add(len)));
        }
    }
    Ok(None)
}

/// Writes the request and reads the answer: up to its `Content-Length` (else until the
/// server closes), at most [`RESPONSE_BYTES_MAX`] bytes; `s` bounds the time.
fn exchange(mut s: impl Read + Write, head: &[u8], body: &[u8]) -> io::Result<Vec<u8>> {
    s.write_all(head)?;
    s.write_all(body)?;
    s.flush()?;
    let too_long = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the collector's response is longer than {RESPONSE_BYTES_MAX} bytes"),
        )
    };
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // The answer's length once its head is in; where to look for the head's end next.
    let (mut total, mut scanned) = (None, 0usize);
    loop {
        if total.is_none()
            && let Some(end) = buf[scanned..].windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + scanned)
        {
            total = Some(answer_len(&buf[..end])?);
        }
        scanned = buf.len().saturating_sub(3);
        match total {
            Some(Some(t)) if t > RESPONSE_BYTES_MAX => return Err(too_long()),
            Some(Some(t)) if buf.len() >= t => {
                buf.truncate(t);
                return Ok(buf);
            }
            _ => {}
        }
        if buf.len() >= RESPONSE_BYTES_MAX {
            return Err(too_long());
        }
        let want = chunk.len().min(RESPONSE_BYTES_MAX - buf.len());
        match s.read(&mut chunk[..want]) {
            Ok(0) if buf.is_empty() => {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the collector closed without answering"));
            }
            // The server closed: the answer is what came (HTTP/1.1 without a length).
            Ok(0) => return Ok(buf),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A TLS server that closes without close_notify after a complete answer: the
            // answer stands (it ends at the close, as HTTP/1.1 allows).
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !buf.is_empty() => return Ok(buf),
            Err(e) => return Err(e),
        }
    }
}

/// The TLS client configuration for an `https://` collector: the configured CA file, else
/// the system's bundle; a client certificate when configured.
fn tls_config(config: &OtlpConfig) -> Result<Arc<rustls::ClientConfig>, TelemetryError> {
    let otlp = |m: String| TelemetryError::Otlp(m);
    let mut roots = rustls::RootCertStore::empty();
    let bundle = match &config.ca_file {
        Some(p) => p.clone(),
        None => std::env::var_os("SSL_CERT_FILE")
            .map(std::path::PathBuf::from)
            .or_else(|| SYSTEM_BUNDLES.iter().map(std::path::PathBuf::from).find(|p| p.is_file()))
            .ok_or_else(|| {
                otlp(format!(
                    "https endpoint {:?}: no CA bundle found (set OTEL_EXPORTER_OTLP_CERTIFICATE or SSL_CERT_FILE)",
                    config.endpoint
                ))
            })?,
    };
    let certs = read_certs(&bundle)?;
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(otlp(format!("{}: no usable CA certificate", bundle.display())));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| otlp(e.to_string()))?
        .with_root_certificates(roots);
    let tls = match &config.client_identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = read_certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| otlp(format!("{}: {e}", key.display())))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| otlp(format!("client certificate: {e}")))?
        }
    };
    Ok(Arc::new(tls))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TelemetryError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| TelemetryError::Otlp(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TelemetryError::Otlp(format!("{}: no PEM certificate", path.display())));
    }
    Ok(certs)
}

fn sampler(s: TraceSampler) -> Sampler {
    match s {
        TraceSampler::AlwaysOn => Sampler::AlwaysOn,
        TraceSampler::AlwaysOff => Sampler::AlwaysOff,
        TraceSampler::Ratio(r) => Sampler::TraceIdRatioBased(r),
        TraceSampler::ParentBased(root) => Sampler::ParentBased(Box::new(match root {
            ParentRoot::AlwaysOn => Sampler::AlwaysOn,
            ParentRoot::AlwaysOff => Sampler::AlwaysOff,
            ParentRoot::Ratio(r) => Sampler::TraceIdRatioBased(r),
        })),
    }
}

/// The resource every exported span carries: `service.name` (one for every node),
/// `service.instance.id`, `service.version`, the SDK's `telemetry.sdk.*`, and the extra
/// attributes (which do not override the three service attributes).
fn resource(config: &OtlpConfig) -> opentelemetry_sdk::Resource {
    let mut attributes: Vec<KeyValue> = config
        .resource_attributes
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "service.name" | "service.instance.id" | "service.version"))
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
        .collect();
    attributes.push(KeyValue::new("service.name", config.service_name.clone()));
    if let Some(id) = &config.service_instance_id {
        attributes.push(KeyValue::new("service.instance.id", id.clone()));
    }
    if let Some(v) = &config.service_version {
        attributes.push(KeyValue::new("service.version", v.clone()));
    }
    opentelemetry_sdk::Resource::builder_empty()
        .with_detector(Box::new(opentelemetry_sdk::resource::TelemetryResourceDetector))
        .with_attributes(attributes)
        .build()
}

/// Builds the tracing layer and the provider that owns the exporter.
pub(crate) fn layer(config: &OtlpConfig) -> Result<(BoxedLayer, SdkTracerProvider), TelemetryError> {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
    let uri: http::Uri =
        config.endpoint.parse().map_err(|e| TelemetryError::Otlp(format!("endpoint {:?}: {e}", config.endpoint)))?;
    let secure = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => {
            return Err(TelemetryError::Otlp(format!(
                "endpoint {:?}: expected http://host:port/v1/traces or https://host:port/v1/traces",
                config.endpoint
            )));
        }
    };
    if uri.host().is_none() {
        return Err(TelemetryError::Otlp(format!("endpoint {:?}: no host", config.endpoint)));
    }
    let tls = if secure { Some(tls_config(config)?) } else { None };
    let headers = config.headers.iter().cloned().collect();
    let timeout = config.timeout.min(crate::OTLP_TIMEOUT_MAX);
    let batch = config.batch.checked()?;
    let client = TinyClient { timeout, tls, resolver: Arc::new(Resolver::new(system_lookup)) };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_endpoint(config.endpoint.clone())
        .with_protocol(Protocol::HttpBinary)
        .with_timeout(timeout)
        // One attempt per export, under one deadline (see the module's documentation).
        .with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled())
        .with_headers(headers)
        .build()
        .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
    // Every value set here, so the SDK's own unchecked reading of `OTEL_BSP_*` (a queue of
    // any size is allocated at once) is overridden by the checked one.
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(batch.queue_size)
                .with_max_export_batch_size(batch.export_batch_size)
                .with_scheduled_delay(batch.schedule_delay)
                .build(),
        )
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource(config))
        .with_sampler(sampler(config.sampler))
        .build();
    let tracer = provider.tracer("quorate");
    // Only Quorate's own spans go to the exporter (the node's `proposal` spans and the like):
    // the network stack's per-connection spans are entered on every poll and would cost more
    // than the traces are worth. Idle-time tracking is off for the same reason.
    let only_quorate = tracing_subscriber::filter::filter_fn(|m| m.target().starts_with("quorate"));
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_filter(only_quorate)
        .boxed();
    Ok((layer, provider))
}

#[cfg(test)]
mod tests {
    //! Review of issue 21: an export was bounded per socket operation, not as a whole. A
    //! collector that answers one byte at a time held the export thread for as long as it
    //! liked, the name lookup had no timeout, and the answer was read until the server closed.
    use super::*;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn request(to: &str) -> Request<Bytes> {
        Request::builder()
            .method("POST")
            .uri(to)
            .header("content-type", "application/x-protobuf")
            .body(Bytes::from_static(b"spans"))
            .expect("a request")
    }

    /// A collector on 127.0.0.1 that reads each request's head and then does `answer` with
    /// the connection (on a thread of its own per connection).
    fn collector(answer: fn(TcpStream)) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for s in listener.incoming().take(16) {
                let Ok(mut s) = s else { continue };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
                    let _ = s.read(&mut buf);
                    answer(s);
                });
            }
        });
        addr
    }

    fn post_to(addr: SocketAddr, timeout: Duration) -> (Result<Response<Bytes>, HttpError>, Duration) {
        let resolver = Resolver::new(system_lookup);
        let start = Instant::now();
        let r = post(start + timeout, None, &resolver, &request(&format!("http://{addr}/v1/traces")));
        (r, start.elapsed())
    }

    /// Holds the connection open, sending nothing, for longer than any test waits.
    fn never_answers(s: TcpStream) {
        std::thread::sleep(Duration::from_secs(30));
        drop(s);
    }

    /// An endless head, one byte every 20 ms: every read succeeds within a socket timeout.
    fn trickles(mut s: TcpStream) {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nX-Slow: ");
        for _ in 0..1_500 {
            if s.write_all(b"a").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A complete answer with its length, and the connection left open.
    fn answers_and_stays(mut s: TcpStream) {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        std::thread::sleep(Duration::from_secs(30));
    }

    /// An answer longer than the bound, sent quickly.
    fn answers_too_much(mut s: TcpStream) {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n");
        let _ = s.write_all(&vec![b'x'; RESPONSE_BYTES_MAX * 2]);
    }

    #[test]
    fn a_collector_that_never_answers_is_given_up_at_the_deadline() {
        let (r, took) = post_to(collector(never_answers), Duration::from_millis(300));
        let e = r.expect_err("no answer").to_string();
        assert!(e.contains("deadline"), "{e}");
        assert!(took >= Duration::from_millis(300) && took < Duration::from_millis(1_300), "took {took:?}");
    }

    #[test]
    fn a_collector_that_trickles_its_answer_is_given_up_at_the_deadline() {
        let (r, took) = post_to(collector(trickles), Duration::from_millis(400));
        let e = r.expect_err("never a whole answer").to_string();
        assert!(e.contains("deadline"), "{e}");
        assert!(took < Duration::from_millis(1_400), "one deadline for the whole export, took {took:?}");
    }

    #[test]
    fn an_answer_ends_at_its_length_and_is_bounded_in_bytes() {
        let (r, took) = post_to(collector(answers_and_stays), Duration::from_secs(5));
        let answer = r.expect("a complete answer");
        assert_eq!((answer.status().as_u16(), answer.body().as_ref()), (200, &b"ok"[..]));
        assert!(took < Duration::from_secs(2), "not read until the server closes: {took:?}");
        let (r, _) = post_to(collector(answers_too_much), Duration::from_secs(5));
        let e = r.expect_err("too long").to_string();
        assert!(e.contains(&format!("longer than {RESPONSE_BYTES_MAX} bytes")), "{e}");
    }

    static LOOKUPS: AtomicUsize = AtomicUsize::new(0);

    /// A resolver that hangs for 2 s.
    fn hanging_lookup(_: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        LOOKUPS.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_secs(2));
        Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))])
    }

    #[test]
    fn a_name_lookup_is_bounded_by_the_deadline_and_runs_once_at_a_time() {
        let resolver = Resolver::new(hanging_lookup);
        let to = request("http://collector.invalid:4318/v1/traces");
        for _ in 0..3 {
            let start = Instant::now();
            let e = post(start + Duration::from_millis(200), None, &resolver, &to).expect_err("lookup too slow");
            assert!(e.to_string().contains("looking collector.invalid up took longer"), "{e}");
            assert!(start.elapsed() < Duration::from_millis(1_000), "took {:?}", start.elapsed());
        }
        assert_eq!(LOOKUPS.load(Ordering::SeqCst), 1, "the exports waited for the one lookup running");
        // An address needs no lookup.
        let ip = resolver.resolve("127.0.0.1", 9, Instant::now() + Duration::from_millis(1)).unwrap();
        assert_eq!(ip, vec![SocketAddr::from(([127, 0, 0, 1], 9))]);
        // Once the lookup answers, the next export takes its answer.
        let found = resolver.resolve("collector.invalid", 4318, Instant::now() + Duration::from_secs(5)).unwrap();
        assert_eq!(found, vec![SocketAddr::from(([127, 0, 0, 1], 4318))]);
        assert_eq!(LOOKUPS.load(Ordering::SeqCst), 1);
    }
}
