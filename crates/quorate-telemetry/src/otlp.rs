//! OTLP/HTTP trace export (cargo feature `otlp`), over a tiny blocking HTTP/1.1 client.
//!
//! Why not reqwest or hyper: they would bring a second HTTP stack into a tree that has none;
//! an OTLP export is one `POST` of a protobuf body to a collector beside the node. The SDK's
//! batch span processor runs exports on its own thread (with `futures_executor::block_on`),
//! so the client does blocking socket I/O there, bounded by the configured timeout, and
//! never on the node's tokio workers.

use crate::{BoxedLayer, OtlpConfig, TelemetryError};
use bytes::Bytes;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;
use tracing_subscriber::Layer as _;

/// Largest collector response read (bytes).
const RESPONSE_BYTES_MAX: u64 = 1 << 20;

/// A one-request-per-connection HTTP/1.1 client for plain `http://` collectors.
#[derive(Debug, Clone, Copy)]
struct TinyClient {
    timeout: Duration,
}

#[async_trait::async_trait]
impl HttpClient for TinyClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        post(self.timeout, &request)
    }
}

fn post(timeout: Duration, request: &Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
    let uri = request.uri();
    if uri.scheme_str() != Some("http") {
        return Err(format!("only http:// collectors are supported, not {uri}").into());
    }
    let host = uri.host().ok_or("collector URL has no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let addr = (host, port).to_socket_addrs()?.next().ok_or("collector host does not resolve")?;
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
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
    s.write_all(head.as_bytes())?;
    s.write_all(request.body())?;
    let mut buf = Vec::new();
    s.take(RESPONSE_BYTES_MAX).read_to_end(&mut buf)?;
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").ok_or("collector response has no header end")?;
    let head = std::str::from_utf8(&buf[..end])?;
    let status: u16 =
        head.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or("collector response has no status code")?;
    let body = Bytes::copy_from_slice(&buf[end + 4..]);
    Ok(Response::builder().status(status).body(body)?)
}

/// Builds the tracing layer and the provider that owns the exporter.
pub(crate) fn layer(config: &OtlpConfig) -> Result<(BoxedLayer, SdkTracerProvider), TelemetryError> {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
    let uri: http::Uri =
        config.endpoint.parse().map_err(|e| TelemetryError::Otlp(format!("endpoint {:?}: {e}", config.endpoint)))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(TelemetryError::Otlp(format!(
            "endpoint {:?}: expected http://host:port/v1/traces",
            config.endpoint
        )));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(TinyClient { timeout: config.timeout })
        .with_endpoint(config.endpoint.clone())
        .with_protocol(Protocol::HttpBinary)
        .with_timeout(config.timeout)
        .build()
        .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
    let resource = opentelemetry_sdk::Resource::builder_empty().with_service_name(config.service_name.clone()).build();
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
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
