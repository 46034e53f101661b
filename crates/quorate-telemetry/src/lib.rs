//! # quorate-telemetry
//!
//! What an operator needs to explain an incident from evidence, in one small crate:
//!
//! * [`names`] — the name of every Quorate metric, defined once, with its unit last in the
//!   name, its kind, help text and label keys ([`names::ALL`]). Library crates record through
//!   the `metrics` facade (`metrics::counter!(names::PROPOSALS_SHED_TOTAL, ...)`) and the
//!   `tracing` facade and never choose an exporter; the node does.
//! * [`Metrics`] — a bounded registry behind the `metrics` facade, rendered in the
//!   Prometheus text format; [`http::serve`] — a tiny bounded HTTP/1.1 endpoint for
//!   `/metrics`, `/livez` and `/readyz` on a tokio listener.
//! * [`init_tracing`] — human or JSON logs with an env filter, and (cargo feature `otlp`)
//!   OpenTelemetry trace export over OTLP/HTTP when an endpoint is configured. Without one,
//!   no exporter is built and nothing touches the network.
//!
//! ```
//! use quorate_telemetry::{Metrics, names};
//!
//! let registry = Metrics::new();
//! metrics::with_local_recorder(&registry, || {
//!     metrics::gauge!(names::TERM).set(3.0);
//!     metrics::counter!(names::PROPOSALS_SHED_TOTAL, names::LABEL_REASON => "disk_space").increment(1);
//! });
//! let text = registry.render();
//! assert!(text.contains("quorate_raft_term 3\n"));
//! assert!(text.contains("quorate_proposals_shed_total{reason=\"disk_space\"} 1\n"));
//! ```
//!
//! The opentelemetry crates are pinned to one aligned set: `opentelemetry`,
//! `opentelemetry_sdk`, `opentelemetry-otlp`, `opentelemetry-http` 0.33 with
//! `tracing-opentelemetry` 0.34 (whose releases track opentelemetry's minor plus one).

#![forbid(unsafe_code)]

pub mod http;
pub mod names;
#[cfg(feature = "otlp")]
mod otlp;
pub mod process;
mod registry;

pub use registry::{Metrics, SERIES_MAX};

use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// Another `metrics` recorder was installed in this process first.
    #[error("another metrics recorder is installed in this process")]
    RecorderInstalled,
    /// A tracing subscriber was installed in this process first.
    #[error("a tracing subscriber is installed in this process already")]
    SubscriberInstalled,
    /// The log filter does not parse.
    #[error("invalid log filter {filter:?}: {reason}")]
    Filter {
        /// The filter as given.
        filter: String,
        /// Why it does not parse.
        reason: String,
    },
    /// The OTLP endpoint or exporter is not valid.
    #[error("OTLP trace export: {0}")]
    Otlp(String),
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LogFormat {
    /// One human-readable line per event (the default).
    #[default]
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "human" | "text" | "pretty" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?} (expected \"human\" or \"json\")")),
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogFormat::Human => "human",
            LogFormat::Json => "json",
        })
    }
}

/// Where and how to export traces over OTLP/HTTP (protobuf).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// The collector's traces URL, `http://host:port/v1/traces` (plain HTTP: run the
    /// collector beside the node, on loopback).
    pub endpoint: String,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// Time allowed for one export request.
    pub timeout: std::time::Duration,
}

/// Tracing set-up.
#[derive(Debug, Clone, Default)]
pub struct TracingConfig {
    /// Human or JSON lines.
    pub format: LogFormat,
    /// An env-filter directive (`info,quorate=debug`); `None` takes `RUST_LOG`, else `info`.
    pub filter: Option<String>,
    /// Trace export; `None` (the default) exports nothing and opens no connection. Only
    /// spans whose target starts with `quorate` are exported (a network stack's
    /// per-connection spans, entered on every poll, would cost more than they tell).
    pub otlp: Option<OtlpConfig>,
}

/// Keeps the trace exporter running; dropping it flushes pending spans (bounded by the
/// export timeout) and shuts the exporter down.
#[derive(Debug, Default)]
#[must_use = "dropping the guard stops trace export"]
pub struct TracingGuard {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl TracingGuard {
    /// Whether spans are exported over OTLP.
    pub fn exporting(&self) -> bool {
        #[cfg(feature = "otlp")]
        {
            self.provider.is_some()
        }
        #[cfg(not(feature = "otlp"))]
        {
            false
        }
    }

    /// Flushes pending spans now (returns once the exporter has answered or timed out).
    pub fn flush(&self) {
        #[cfg(feature = "otlp")]
        if let Some(p) = &self.provider {
            let _ = p.force_flush();
        }
    }
}

impl Drop for TracingGuard {
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

type BoxedLayer = Box<
    dyn tracing_subscriber::Layer<
            tracing_subscriber::layer::Layered<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>,
        > + Send
        + Sync,
>;

/// Installs the process's tracing subscriber: the filter, the log format, and an OTLP trace
/// exporter when configured (with the `otlp` feature; without it a configured endpoint is an
/// error rather than silently ignored).
///
/// # Errors
/// A bad filter, a bad OTLP endpoint, or a subscriber installed already (the caller may
/// ignore [`TelemetryError::SubscriberInstalled`]: tests install one per process).
pub fn init_tracing(config: &TracingConfig) -> Result<TracingGuard, TelemetryError> {
    use tracing_subscriber::EnvFilter;
    let filter = match &config.filter {
        Some(f) => {
            EnvFilter::try_new(f).map_err(|e| TelemetryError::Filter { filter: f.clone(), reason: e.to_string() })?
        }
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    // The filter wraps the whole subscriber: inside the `Vec` of layers it would only be one
    // layer among others and every other layer would still see TRACE events (quinn logs each
    // packet there).
    #[allow(unused_mut, reason = "pushed to only with the otlp feature")]
    let mut layers: Vec<BoxedLayer> = vec![match config.format {
        LogFormat::Human => tracing_subscriber::fmt::layer().with_target(true).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_target(true).boxed(),
    }];
    #[allow(unused_mut, reason = "mutated only with the otlp feature")]
    let mut guard = TracingGuard::default();
    if let Some(otlp) = &config.otlp {
        #[cfg(feature = "otlp")]
        {
            let (layer, provider) = otlp::layer(otlp)?;
            layers.push(layer);
            guard.provider = Some(provider);
        }
        #[cfg(not(feature = "otlp"))]
        {
            return Err(TelemetryError::Otlp(format!(
                "endpoint {} configured but this build has no OTLP support (cargo feature `otlp`)",
                otlp.endpoint
            )));
        }
    }
    tracing_subscriber::registry()
        .with(filter)
        .with(layers)
        .try_init()
        .map_err(|_| TelemetryError::SubscriberInstalled)?;
    Ok(guard)
}
