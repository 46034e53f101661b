//! Serves `/metrics`, `/livez` and `/readyz` on a loopback port for a few seconds while a
//! fake "node" moves its term and commit index, scraping itself once a second.
//!
//! `cargo run -p quorate-telemetry --example endpoint`

use quorate_telemetry::http::{AlwaysHealthy, HttpLimits, get_blocking, serve};
use quorate_telemetry::{LogFormat, Metrics, TracingConfig, init_tracing, names};
use std::sync::Arc;
use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _guard = init_tracing(&TracingConfig { format: LogFormat::Human, ..TracingConfig::default() })?;
    let registry = Metrics::global()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "serving /metrics, /livez and /readyz");
    tokio::spawn(serve(listener, registry, Arc::new(AlwaysHealthy), HttpLimits::default()));
    for step in 1..=3u32 {
        metrics::gauge!(names::TERM).set(f64::from(step));
        metrics::gauge!(names::COMMIT_INDEX).set(f64::from(step * 100));
        metrics::histogram!(names::FSYNC_SECONDS).record(0.001 * f64::from(step));
        let (code, body) =
            tokio::task::spawn_blocking(move || get_blocking(addr, "/metrics", Duration::from_secs(2), 1 << 20))
                .await??;
        let line = body.lines().find(|l| l.starts_with(names::COMMIT_INDEX)).unwrap_or_default();
        println!("scrape {step}: HTTP {code}, {line}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(())
}
