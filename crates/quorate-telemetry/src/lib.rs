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
mod otlp_env;
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
///
/// Build it with [`OtlpConfig::new`] or, honouring the standard `OTEL_*` environment
/// variables, with [`OtlpConfig::from_env`]; then set the fields the caller knows (the node
/// sets [`service_instance_id`](Self::service_instance_id) to its node id).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct OtlpConfig {
    /// The collector's traces URL, `http://host:port/v1/traces` or `https://...` (TLS 1.3,
    /// with rustls).
    pub endpoint: String,
    /// The `service.name` resource attribute: one name for every node of a deployment
    /// ([`SERVICE_NAME_DEFAULT`] unless configured), so a trace backend shows one service
    /// with one instance per node.
    pub service_name: String,
    /// The `service.instance.id` resource attribute (the node id), if known.
    pub service_instance_id: Option<String>,
    /// The `service.version` resource attribute, if known.
    pub service_version: Option<String>,
    /// Further resource attributes (from `OTEL_RESOURCE_ATTRIBUTES`); the three above win
    /// over a key given here too.
    pub resource_attributes: Vec<(String, String)>,
    /// Extra request headers (from `OTEL_EXPORTER_OTLP_HEADERS`), such as an API key.
    pub headers: Vec<(String, String)>,
    /// Which traces are kept.
    pub sampler: TraceSampler,
    /// The PEM certificates trusted for an `https://` collector; `None`: the system's bundle
    /// (`SSL_CERT_FILE`, else the usual distribution paths).
    pub ca_file: Option<std::path::PathBuf>,
    /// A client certificate and its key (PEM) for a collector that asks for one.
    pub client_identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// The deadline of one export: the name lookup, connect, TLS handshake, write and read of
    /// the answer together (at most [`OTLP_TIMEOUT_MAX`]; a longer one is cut to it).
    pub timeout: std::time::Duration,
    /// The batch span processor's queue, batch and delay (`OTEL_BSP_*`).
    pub batch: BatchLimits,
}

/// The batch span processor's settings (the standard `OTEL_BSP_*` variables), each within
/// its stated bounds: a span queue is allocated whole at start, so an unbounded size would
/// abort the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchLimits {
    /// Spans queued for export at most (`OTEL_BSP_MAX_QUEUE_SIZE`, default 2,048, at most
    /// [`BSP_QUEUE_SIZE_MAX`]); spans beyond it are dropped, never waited for.
    pub queue_size: usize,
    /// Spans per export at most (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, default 512, at most the
    /// queue size).
    pub export_batch_size: usize,
    /// Time between two exports (`OTEL_BSP_SCHEDULE_DELAY`, default 5 s, from
    /// [`BSP_SCHEDULE_DELAY_MIN`] to [`BSP_SCHEDULE_DELAY_MAX`]).
    pub schedule_delay: std::time::Duration,
}

/// The largest span queue (`OTEL_BSP_MAX_QUEUE_SIZE`): 32,768 spans, tens of MiB at most.
pub const BSP_QUEUE_SIZE_MAX: usize = 32_768;
/// The shortest delay between exports (`OTEL_BSP_SCHEDULE_DELAY`): the export thread wakes
/// this often even with nothing to send.
pub const BSP_SCHEDULE_DELAY_MIN: std::time::Duration = std::time::Duration::from_millis(10);
/// The longest delay between exports (`OTEL_BSP_SCHEDULE_DELAY`).
pub const BSP_SCHEDULE_DELAY_MAX: std::time::Duration = std::time::Duration::from_secs(60);

impl Default for BatchLimits {
    fn default() -> BatchLimits {
        BatchLimits { queue_size: 2_048, export_batch_size: 512, schedule_delay: std::time::Duration::from_secs(5) }
    }
}

impl BatchLimits {
    /// These limits if each is within its bounds (a batch larger than the queue is cut to it).
    ///
    /// # Errors
    /// A queue of 0 or more than [`BSP_QUEUE_SIZE_MAX`] spans, a batch of 0, a delay outside
    /// [`BSP_SCHEDULE_DELAY_MIN`]..=[`BSP_SCHEDULE_DELAY_MAX`].
    pub fn checked(self) -> Result<BatchLimits, TelemetryError> {
        let bad = |what: &str| Err(TelemetryError::Otlp(format!("batch span processor: {what}")));
        if !(1..=BSP_QUEUE_SIZE_MAX).contains(&self.queue_size) {
            return bad(&format!("a queue of {} spans (1 to {BSP_QUEUE_SIZE_MAX})", self.queue_size));
        }
        if self.export_batch_size == 0 {
            return bad("a batch of 0 spans");
        }
        if !(BSP_SCHEDULE_DELAY_MIN..=BSP_SCHEDULE_DELAY_MAX).contains(&self.schedule_delay) {
            return bad(&format!(
                "a delay of {:?} ({BSP_SCHEDULE_DELAY_MIN:?} to {BSP_SCHEDULE_DELAY_MAX:?})",
                self.schedule_delay
            ));
        }
        Ok(BatchLimits { export_batch_size: self.export_batch_size.min(self.queue_size), ..self })
    }
}

/// The `service.name` every Quorate node exports under unless configured otherwise.
pub const SERVICE_NAME_DEFAULT: &str = "quorate";

/// The export deadline when none is configured.
pub const OTLP_TIMEOUT_DEFAULT: std::time::Duration = std::time::Duration::from_secs(5);

/// The longest export deadline (`OTEL_EXPORTER_OTLP_TIMEOUT`): an export holds the export
/// thread (and, at shutdown, the node's exit) at most this long.
pub const OTLP_TIMEOUT_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// Which traces are kept (the standard `OTEL_TRACES_SAMPLER` values).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum TraceSampler {
    /// Every trace (`always_on`).
    AlwaysOn,
    /// No trace (`always_off`).
    AlwaysOff,
    /// This fraction of traces, by trace id (`traceidratio`).
    Ratio(f64),
    /// A child follows its parent's decision; a root follows the inner sampler
    /// (`parentbased_always_on`, the default, `parentbased_always_off`,
    /// `parentbased_traceidratio`).
    ParentBased(ParentRoot),
}

/// The decision for a root span under [`TraceSampler::ParentBased`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub enum ParentRoot {
    /// Keep every root.
    #[default]
    AlwaysOn,
    /// Keep no root.
    AlwaysOff,
    /// Keep this fraction of roots.
    Ratio(f64),
}

impl Default for TraceSampler {
    fn default() -> TraceSampler {
        TraceSampler::ParentBased(ParentRoot::AlwaysOn)
    }
}

impl OtlpConfig {
    /// An export to `endpoint` under [`SERVICE_NAME_DEFAULT`], with no instance id, every
    /// trace kept, the system's trust roots and [`OTLP_TIMEOUT_DEFAULT`].
    pub fn new(endpoint: impl Into<String>) -> OtlpConfig {
        OtlpConfig {
            endpoint: endpoint.into(),
            service_name: SERVICE_NAME_DEFAULT.into(),
            service_instance_id: None,
            service_version: None,
            resource_attributes: Vec::new(),
            headers: Vec::new(),
            sampler: TraceSampler::default(),
            ca_file: None,
            client_identity: None,
            timeout: OTLP_TIMEOUT_DEFAULT,
            batch: BatchLimits::default(),
        }
    }

    /// The export the configuration and the standard OpenTelemetry environment variables
    /// ask for, or `None` when nothing is to be exported. `endpoint` and `service_name` are
    /// the configured values (empty: not configured); `env` looks a variable up
    /// (`|k| std::env::var(k).ok()`). The environment wins over the configuration:
    ///
    /// * `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`: no export;
    /// * `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is), else `OTEL_EXPORTER_OTLP_ENDPOINT`
    ///   (`/v1/traces` appended), else `endpoint`; none of them: no export;
    /// * `OTEL_SERVICE_NAME`, else `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, else
    ///   `service_name`, else [`SERVICE_NAME_DEFAULT`];
    /// * `OTEL_RESOURCE_ATTRIBUTES` (`key=value,...`, values percent-decoded);
    /// * `OTEL_EXPORTER_OTLP_TRACES_HEADERS`, else `OTEL_EXPORTER_OTLP_HEADERS`;
    /// * `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`;
    /// * `OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE`, else `OTEL_EXPORTER_OTLP_CERTIFICATE`; the
    ///   `..._CLIENT_CERTIFICATE` and `..._CLIENT_KEY` pairs likewise;
    /// * `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, else `OTEL_EXPORTER_OTLP_TIMEOUT` (ms, 1 to
    ///   [`OTLP_TIMEOUT_MAX`]): the deadline of one export;
    /// * `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, `OTEL_BSP_SCHEDULE_DELAY`
    ///   (ms) within the bounds of [`BatchLimits`]; `OTEL_BSP_EXPORT_TIMEOUT` (ms, 1 to
    ///   [`OTLP_TIMEOUT_MAX`]) lowers the export deadline when set;
    /// * `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else `OTEL_EXPORTER_OTLP_PROTOCOL`: only
    ///   `http/protobuf` is supported.
    ///
    /// # Errors
    /// A value that is set but cannot be honoured (an unknown sampler or exporter, another
    /// protocol, a bad number or one outside its bounds, a client certificate without its
    /// key); the message names the variable.
    pub fn from_env(
        endpoint: &str,
        service_name: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<OtlpConfig>, TelemetryError> {
        otlp_env::resolve(endpoint, service_name, &|k: &str| env(k).filter(|v| !v.trim().is_empty()))
    }
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

/// Whether output to a stream may carry colour and other escape codes: only on a terminal,
/// and never when `NO_COLOR` is set to a non-empty value (<https://no-color.org>). Logs
/// redirected to a file or a journal stay plain text.
#[must_use]
pub fn color_allowed(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// [`color_allowed`] for this process's standard output (where the human log format writes).
#[must_use]
pub fn stdout_color_allowed() -> bool {
    use std::io::IsTerminal as _;
    color_allowed(std::io::stdout().is_terminal(), std::env::var_os("NO_COLOR").as_deref())
}

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
        LogFormat::Human => {
            tracing_subscriber::fmt::layer().with_target(true).with_ansi(stdout_color_allowed()).boxed()
        }
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_target(true).with_ansi(false).boxed(),
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
