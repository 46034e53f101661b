//! OTLP/HTTP trace export (cargo feature `otlp`), over a tiny blocking HTTP/1.1 client, with
//! TLS from rustls for `https://` collectors.
//!
//! Why not reqwest or hyper (opentelemetry-otlp's `reqwest-rustls` feature): they would bring
//! a second HTTP stack, and their own TLS set-up, into a tree that has neither; an OTLP export
//! is one `POST` of a protobuf body. rustls (with ring) is in the tree already for the
//! transport. The SDK's batch span processor runs exports on its own thread (with
//! `futures_executor::block_on`), so the client does blocking socket I/O there, bounded by the
//! configured timeout, and never on the node's tokio workers.

use crate::{BoxedLayer, OtlpConfig, ParentRoot, TelemetryError, TraceSampler};
use bytes::Bytes;
use opentelemetry::KeyValue;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tracing_subscriber::Layer as _;

/// Largest collector response read (bytes).
const RESPONSE_BYTES_MAX: u64 = 1 << 20;

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
    timeout: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
}

#[async_trait::async_trait]
impl HttpClient for TinyClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        post(self.timeout, self.tls.as_ref(), &request)
    }
}

fn post(
    timeout: Duration,
    tls: Option<&Arc<rustls::ClientConfig>>,
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
    let addr = (bare, port).to_socket_addrs()?.next().ok_or("collector host does not resolve")?;
    let s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
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

/// Writes the request and reads the response until the server closes (bounded).
fn exchange(mut s: impl Read + Write, head: &[u8], body: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(head)?;
    s.write_all(body)?;
    s.flush()?;
    let mut buf = Vec::new();
    match s.take(RESPONSE_BYTES_MAX).read_to_end(&mut buf) {
        Ok(_) => Ok(buf),
        // A TLS server that closes without close_notify after a complete answer: the answer
        // stands (it carries its own length or ends at the close, as HTTP/1.1 allows).
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => Ok(buf),
        Err(e) => Err(e),
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
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(TinyClient { timeout: config.timeout, tls })
        .with_endpoint(config.endpoint.clone())
        .with_protocol(Protocol::HttpBinary)
        .with_timeout(config.timeout)
        .with_headers(headers)
        .build()
        .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
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
