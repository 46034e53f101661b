//! A tiny HTTP/1.1 endpoint for scrapes and probes: `GET /metrics` (Prometheus text),
//! `GET /livez` and `GET /readyz` (200 or 503 with the reason in the body).
//!
//! Deliberately small and bounded rather than a web framework: one request per connection
//! (`Connection: close`), a request head of at most [`HttpLimits::request_bytes_max`] bytes
//! read within [`HttpLimits::head_timeout`], a response written within
//! [`HttpLimits::timeout`], at most [`HttpLimits::connections_max`] connections at once,
//! `GET` and `HEAD` only.
//!
//! **Probes are never starved.** Connections are always accepted: when every slot is taken, the
//! oldest connection that has not yet sent its request head is closed to make room, so idle
//! sockets cannot keep `/livez` and `/readyz` out (an orchestrator would restart a healthy
//! node). At most half the slots answer `/metrics` at once (a slow reader of a large scrape
//! holds its slot for up to `timeout`; beyond that a scrape gets 503), and a probe's answer is
//! a few bytes, so a slot always frees quickly.

use crate::Metrics;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The answer of a probe: healthy or not, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Healthy (HTTP 200) or not (HTTP 503).
    pub ok: bool,
    /// One line saying why; the response body.
    pub reason: String,
}

impl Probe {
    /// A healthy answer.
    pub fn ok(reason: impl Into<String>) -> Probe {
        Probe { ok: true, reason: reason.into() }
    }

    /// An unhealthy answer.
    pub fn fail(reason: impl Into<String>) -> Probe {
        Probe { ok: false, reason: reason.into() }
    }
}

/// What the endpoint asks the application. Called from the endpoint's tasks: answer from
/// state that is cheap to read (atomics, a snapshot refreshed elsewhere).
pub trait Probes: Send + Sync + 'static {
    /// `/livez`: is the process (and its storage) making progress?
    fn livez(&self) -> Probe;
    /// `/readyz`: should clients be sent here?
    fn readyz(&self) -> Probe;
    /// Called before `/metrics` renders, to refresh values sampled on demand.
    fn before_scrape(&self) {}
}

/// Probes that always answer healthy (an endpoint that only serves metrics).
#[derive(Debug, Clone, Copy, Default)]
pub struct AlwaysHealthy;

impl Probes for AlwaysHealthy {
    fn livez(&self) -> Probe {
        Probe::ok("ok")
    }
    fn readyz(&self) -> Probe {
        Probe::ok("ok")
    }
}

/// Bounds of the endpoint.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Largest request head accepted (bytes); a longer one gets 431.
    pub request_bytes_max: usize,
    /// Time allowed to write a response.
    pub timeout: Duration,
    /// Connections served at once (when all are taken, the oldest one still silent is closed).
    pub connections_max: usize,
    /// Time allowed to receive a request head, from the connection's acceptance.
    pub head_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            request_bytes_max: 8 * 1024,
            timeout: Duration::from_secs(5),
            connections_max: 128,
            head_timeout: Duration::from_secs(2),
        }
    }
}

/// The Prometheus text format's content type.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `/metrics`, `/livez` and `/readyz` on `listener` until the task is dropped or
/// aborted. Errors on single connections are logged at debug level and never end the loop.
pub async fn serve(listener: TcpListener, metrics: Metrics, probes: Arc<dyn Probes>, limits: HttpLimits) {
    let max = limits.connections_max.max(1);
    let live = Arc::new(AtomicUsize::new(0));
    let scrapes = Arc::new(tokio::sync::Semaphore::new((max / 2).max(1)));
    // Connections that have not sent their request head yet, oldest first (bounded by `max`:
    // finished ones and ones past their head are dropped from it at every acceptance).
    let mut silent: VecDeque<(Arc<AtomicBool>, tokio::task::AbortHandle)> = VecDeque::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and similar: back off rather than spin.
                tracing::debug!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        silent.retain(|(head, task)| !head.load(Ordering::Relaxed) && !task.is_finished());
        if live.load(Ordering::Relaxed) >= max {
            match silent.pop_front() {
                Some((_, task)) => {
                    tracing::debug!(%peer, "metrics endpoint: every slot taken; closing the oldest silent connection");
                    task.abort();
                }
                None => {
                    // Every slot is answering a request: each ends within `timeout`.
                    tracing::debug!(%peer, "metrics endpoint: every slot answering; connection refused");
                    drop(stream);
                    continue;
                }
            }
        }
        let slot = Slot::take(&live);
        let head = Arc::new(AtomicBool::new(false));
        let (metrics, probes, scrapes, got_head) = (metrics.clone(), probes.clone(), scrapes.clone(), head.clone());
        let task = tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = handle(stream, &metrics, &*probes, limits, &got_head, &scrapes).await {
                tracing::debug!(%peer, error = %e, "metrics endpoint: connection failed");
            }
        });
        silent.push_back((head, task.abort_handle()));
    }
}

/// One of the endpoint's connection slots, freed when dropped (also when its task is aborted).
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(live: &Arc<AtomicUsize>) -> Slot {
        live.fetch_add(1, Ordering::Relaxed);
        Slot(live.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn handle(
    mut stream: TcpStream,
    metrics: &Metrics,
    probes: &dyn Probes,
    limits: HttpLimits,
    got_head: &AtomicBool,
    scrapes: &tokio::sync::Semaphore,
) -> std::io::Result<()> {
    let head = match tokio::time::timeout(limits.head_timeout, read_head(&mut stream, limits.request_bytes_max)).await {
        Ok(Ok(Some(h))) => h,
        Ok(Ok(None)) => {
            got_head.store(true, Ordering::Relaxed);
            return respond(&mut stream, 431, "text/plain", b"request header too large\n", false, limits).await;
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "request not read in time")),
    };
    got_head.store(true, Ordering::Relaxed);
    let (method, path) = match parse_request_line(&head) {
        Some(r) => r,
        None => return respond(&mut stream, 400, "text/plain", b"bad request\n", false, limits).await,
    };
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return respond(&mut stream, 405, "text/plain", b"only GET and HEAD\n", false, limits).await;
    }
    let path = path.split('?').next().unwrap_or("");
    match path {
        "/metrics" => {
            let Ok(_scrape) = scrapes.try_acquire() else {
                return respond(&mut stream, 503, "text/plain", b"busy: too many scrapes at once\n", head_only, limits)
                    .await;
            };
            probes.before_scrape();
            let body = metrics.render();
            respond(&mut stream, 200, METRICS_CONTENT_TYPE, body.as_bytes(), head_only, limits).await
        }
        "/livez" | "/readyz" => {
            let p = if path == "/livez" { probes.livez() } else { probes.readyz() };
            let body = format!("{}: {}\n", if p.ok { "ok" } else { "not ok" }, p.reason);
            let code = if p.ok { 200 } else { 503 };
            respond(&mut stream, code, "text/plain; charset=utf-8", body.as_bytes(), head_only, limits).await
        }
        _ => {
            respond(&mut stream, 404, "text/plain", b"not found: try /metrics, /livez or /readyz\n", head_only, limits)
                .await
        }
    }
}

/// Reads until the end of the request head. `None` when it exceeds `max` bytes.
async fn read_head(stream: &mut TcpStream, max: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(1024.min(max));
    let mut chunk = [0u8; 1024];
    loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            return Ok(Some(buf));
        }
        if buf.len() >= max {
            return Ok(None);
        }
        let want = chunk.len().min(max - buf.len());
        let n = stream.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed mid-request"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn parse_request_line(head: &[u8]) -> Option<(&str, &str)> {
    let end = head.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&head[..end]).ok()?.trim_end_matches('\r');
    let mut parts = line.split(' ');
    let method = parts.next()?;
    let path = parts.next()?;
    let version = parts.next()?;
    if parts.next().is_some() || !version.starts_with("HTTP/1.") || !path.starts_with('/') {
        return None;
    }
    Some((method, path))
}

async fn respond(
    stream: &mut TcpStream,
    code: u16,
    content_type: &str,
    body: &[u8],
    head_only: bool,
    limits: HttpLimits,
) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n",
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        if !head_only {
            stream.write_all(body).await?;
        }
        stream.shutdown().await
    };
    tokio::time::timeout(limits.timeout, write)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "response not written in time"))?
}

/// A minimal blocking HTTP/1.1 GET against a loopback endpoint, for tests and `quorate
/// top`: returns the status code and body. Bounded by `timeout` and `body_bytes_max`.
///
/// # Errors
/// Connection, timeout, size or parse failures, as an I/O error.
pub fn get_blocking(
    addr: std::net::SocketAddr,
    path: &str,
    timeout: Duration,
    body_bytes_max: usize,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    s.take(body_bytes_max as u64 + 4096).read_to_end(&mut buf)?;
    let text = String::from_utf8(buf).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no header end"))?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no status code"))?;
    Ok((code, body.to_string()))
}
