//! # quorate-config
//!
//! The configuration of the Quorate reference node (`quorate-node`): a TOML file, then
//! environment overrides (`QUORATE_ID`, `QUORATE_LISTEN`, `QUORATE_DATA_DIR`,
//! `QUORATE_METRICS_LISTEN`, `QUORATE_ENGINE`), then command-line flags ([`NodeConfig::apply_flags`]), then
//! [`NodeConfig::validate`]. It lives in its own crate, with no RocksDB, network or async
//! runtime below it, so that the decoder can be fuzzed (`fuzz/fuzz_targets/config_decode.rs`)
//! and used by tools that only read or write node configurations.
//!
//! ```toml
//! id = 1
//! cluster = "dev"
//! listen = "127.0.0.1:7001"
//! data_dir = "/var/lib/quorate/n1"
//! join = false
//! [peers]
//! 1 = "127.0.0.1:7001"
//! 2 = "127.0.0.1:7002"
//! 3 = "127.0.0.1:7003"
//! [tls]
//! ca = "certs/ca.pem"
//! cert = "certs/node-1.pem"
//! key = "certs/node-1.key"
//! ```
//!
//! Unknown fields are refused, so a misspelt setting never goes unnoticed.
//!
//! ```
//! use quorate_config::NodeConfig;
//!
//! let text = r#"
//! id = 1
//! cluster = "dev"
//! listen = "127.0.0.1:7001"
//! data_dir = "/var/lib/quorate/n1"
//! [peers]
//! 1 = "127.0.0.1:7001"
//! [tls]
//! ca = "ca.pem"
//! cert = "node-1.pem"
//! key = "node-1.key"
//! "#;
//! let mut config = NodeConfig::from_toml(text)?;
//! config.apply_env(|var| (var == "QUORATE_ID").then(|| "1".to_string()))?;
//! config.validate()?;
//! assert_eq!(config.raft.heartbeat_ms, 100); // defaults fill what the file leaves out
//! # Ok::<(), quorate_config::ConfigError>(())
//! ```

#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Largest accepted configuration file, in bytes.
pub const CONFIG_BYTES_MAX: u64 = 1024 * 1024;

/// Most members in `peers` (equal to `quorate_log::MEMBERS_MAX`; `quorate-node` checks
/// that the two agree at compile time).
pub const MEMBERS_MAX: usize = 64;

/// Longest peer address in bytes (equal to `quorate_api::limits::TEXT_BYTES_MAX`;
/// `quorate-node` checks that the two agree at compile time).
pub const ADDRESS_BYTES_MAX: usize = 4 * 1024;
/// Shortest `limits.response_write_timeout_ms` accepted.
pub const RESPONSE_WRITE_TIMEOUT_MS_MIN: u64 = 100;
/// Longest `limits.response_write_timeout_ms` accepted (ten minutes).
pub const RESPONSE_WRITE_TIMEOUT_MS_MAX: u64 = 600_000;

/// The whole configuration of a node.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id (> 0), bound to its certificate.
    pub id: u64,
    /// The cluster's name, bound to every certificate: 1 to 63 bytes of lowercase letters,
    /// digits and `-`, not starting or ending with `-` (the rule of `ClusterId`).
    pub cluster: String,
    /// The one QUIC endpoint for peers and clients (`IP:PORT`; `0.0.0.0:7001` listens on
    /// every interface).
    pub listen: SocketAddr,
    /// The address this node expects the other members to reach it at (`HOST:PORT` or
    /// `IP:PORT`), when it is not `listen` — behind NAT, in a container, under a DNS name.
    /// Checked, not announced: the others dial the address the cluster has for this node
    /// (its `peers` entry, then what `member add`/`member update` recorded), and the node
    /// warns at start when `advertise` differs from it. Used as this node's own address only
    /// when neither names it (a node joining). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// Where the node keeps its data (RocksDB, snapshots, backups).
    pub data_dir: PathBuf,
    /// `true`: start with no configuration and wait to be added as a learner.
    #[serde(default)]
    pub join: bool,
    /// Optional address of the metrics/health HTTP endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// Bootstrap members: id → address (must include this node unless `join`).
    #[serde(default)]
    pub peers: BTreeMap<u64, String>,
    /// Certificates.
    pub tls: TlsConfig,
    /// Consensus timing and behaviour.
    #[serde(default)]
    pub raft: RaftConfig,
    /// Bounds.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Logs, trace export and runtime invariant checks.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Admission control: what the node refuses (`Overloaded`) before doing any work.
    #[serde(default)]
    pub admission: AdmissionConfig,
    /// Automatic compaction of the multi-version history (since 0.2.0; written only when
    /// not the default, so that a 0.1.0 node reads what this one writes).
    #[serde(default, skip_serializing_if = "HistoryConfig::is_default")]
    pub history: HistoryConfig,
    /// What drives the node (written only when not the default, so that a 0.1.0 or 0.2.0
    /// node reads what this one writes).
    #[serde(default, skip_serializing_if = "Engine::is_default")]
    pub engine: Engine,
}

/// What drives a node: its own driver, or `quorate-runtime` (issue 19, on its way to being the
/// only one). Both speak the same wire and store formats, so a cluster may mix them.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Engine {
    /// The node's own driver and apply thread: every feature (the default).
    #[default]
    Driver,
    /// **Experimental.** The node as an application of `quorate-runtime`: every request of the
    /// API, membership changes, versions, finalize, flight dumps, metrics, the hash and
    /// free-space exchange between members. What it lacks yet is listed in
    /// `docs/operations.md`, "Engines".
    Runtime,
}

impl Engine {
    /// Whether this is the default engine.
    #[must_use]
    pub fn is_default(&self) -> bool {
        *self == Engine::Driver
    }
}

/// Longest `history.retain_ms` accepted (30 days).
pub const HISTORY_RETAIN_MS_MAX: u64 = 30 * 24 * 3600 * 1000;
/// Shortest non-zero `history.retain_ms` accepted.
pub const HISTORY_RETAIN_MS_MIN: u64 = 1000;
/// Largest `history.retain_revisions` accepted.
pub const HISTORY_RETAIN_REVISIONS_MAX: u64 = 1_000_000_000;

/// Automatic compaction of the multi-version history: the leader proposes a compaction when
/// either rule allows one (the state machine also bounds the history on its own: see
/// `docs/operations.md`).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Keep at least the last this many revisions readable (0: no count rule).
    pub retain_revisions: u64,
    /// Keep at least this much time of history readable, in ms (0, the default: no age rule).
    pub retain_ms: u64,
}

impl Default for HistoryConfig {
    fn default() -> HistoryConfig {
        HistoryConfig { retain_revisions: 100_000, retain_ms: 0 }
    }
}

impl HistoryConfig {
    /// Whether every setting is the default.
    #[must_use]
    pub fn is_default(&self) -> bool {
        *self == HistoryConfig::default()
    }
}

/// Admission control (`quorate-admission`): every client request is admitted or refused with
/// `Overloaded { reason, retry_after }` before any work is done. Free disk space is governed
/// by `limits.free_space_floor_mb`. The node checks these with the admission crate's own
/// validation at start (errors name `admission`).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    /// DANGER: admit every request (no shedding). Overload then shows as timeouts, growing
    /// queues and memory instead of refusals. Shown in status as a danger setting.
    pub danger_admission_disabled: bool,
    /// Lowest adaptive concurrency limit for client requests.
    pub concurrency_count_min: u32,
    /// Highest adaptive concurrency limit.
    pub concurrency_count_max: u32,
    /// Concurrency limit at start.
    pub concurrency_count_initial: u32,
    /// Completions slower than this lower the concurrency limit.
    pub latency_target_ms: u64,
    /// Sustained requests per second per client principal (certificate identity).
    pub principal_rate_per_sec: u64,
    /// Requests a principal may send at once after being idle.
    pub principal_burst_count: u64,
    /// Bytes of admitted requests in flight; a larger request is refused for good.
    pub in_flight_bytes_max: u64,
    /// Writes are refused while this many bytes are appended but not committed.
    pub uncommitted_bytes_max: u64,
    /// Requests are refused while this many entries are committed but not applied.
    pub apply_lag_entries_max: u64,
    /// Writes are refused while this many entries are appended but not committed.
    pub proposal_queue_count_max: u64,
    /// Writes are refused while the slowest follower has this many bytes in flight.
    pub peer_in_flight_bytes_max: u64,
    /// Writes are refused while recent persist (fsync) latency is at least this.
    pub fsync_latency_ms_max: u64,
    /// Smallest `retry_after` in a refusal.
    pub retry_after_ms_min: u64,
    /// Largest `retry_after` in a refusal.
    pub retry_after_ms_max: u64,
    /// Requests one client principal may have in flight, from admission until its answer is
    /// delivered (an answer the client does not read keeps its slot until
    /// `limits.response_write_timeout_ms`).
    pub principal_requests_max: u64,
    /// Answer bytes one client principal may hold: the most each of its unanswered requests
    /// can be answered with, plus its answers being delivered.
    pub principal_response_bytes_max: u64,
    /// Answer bytes all clients together may hold (bounds the node's memory for answers).
    pub response_bytes_max: u64,
    /// Answer bytes one client principal is sent per second, sustained (after a burst of
    /// twice this): every answer's bytes are charged to its principal, and a principal that
    /// was sent more is refused (`Overloaded`, `response_bytes`) for as long as its debt takes
    /// to pay back at this rate. Work-conserving: the rate holds only while another client
    /// principal holds a request or has asked the node for something within the last second
    /// plus `retry_after_ms_max`; a principal alone is not held to it. 1 to 1,000,000,000. Written to a configuration file only when
    /// not the default, so that a 0.1.0 node (which refuses unknown settings) reads our files.
    #[serde(skip_serializing_if = "is_default_answer_rate")]
    pub principal_answer_bytes_per_sec: u64,
}

/// Default `admission.principal_answer_bytes_per_sec`: 4 MiB/s.
pub const PRINCIPAL_ANSWER_BYTES_PER_SEC_DEFAULT: u64 = 4 << 20;
/// Largest `admission.principal_answer_bytes_per_sec`.
pub const PRINCIPAL_ANSWER_BYTES_PER_SEC_MAX: u64 = 1_000_000_000;
/// Default `limits.handshakes_per_source_per_sec`.
pub const HANDSHAKES_PER_SOURCE_PER_SEC_DEFAULT: u32 = 32;
/// Default `limits.handshake_burst_per_source`.
pub const HANDSHAKE_BURST_PER_SOURCE_DEFAULT: u32 = 128;
/// Largest `limits.handshakes_per_source_per_sec` and `limits.handshake_burst_per_source`
/// (equal to `quorate_transport::HANDSHAKE_RATE_CEILING`; `quorate-node` checks that the two
/// agree at compile time).
pub const HANDSHAKES_PER_SOURCE_MAX: u32 = 1_000_000;
/// Default `limits.client_connections_per_identity_max`.
pub const CLIENT_CONNECTIONS_PER_IDENTITY_DEFAULT: u64 = 1024;
/// Largest `limits.client_connections_per_identity_max`.
pub const CLIENT_CONNECTIONS_PER_IDENTITY_MAX: u64 = 1_000_000;

// Settings added after 0.1.0 are written only when they differ from their default (a 0.1.0
// node refuses settings it does not know).
fn is_default_answer_rate(v: &u64) -> bool {
    *v == PRINCIPAL_ANSWER_BYTES_PER_SEC_DEFAULT
}
fn is_default_handshake_rate(v: &u32) -> bool {
    *v == HANDSHAKES_PER_SOURCE_PER_SEC_DEFAULT
}
fn is_default_handshake_burst(v: &u32) -> bool {
    *v == HANDSHAKE_BURST_PER_SOURCE_DEFAULT
}
fn is_default_client_connections(v: &u64) -> bool {
    *v == CLIENT_CONNECTIONS_PER_IDENTITY_DEFAULT
}

impl Default for AdmissionConfig {
    fn default() -> AdmissionConfig {
        const MIB: u64 = 1 << 20;
        AdmissionConfig {
            danger_admission_disabled: false,
            concurrency_count_min: 16,
            concurrency_count_max: 1024,
            concurrency_count_initial: 256,
            latency_target_ms: 100,
            principal_rate_per_sec: 100_000,
            principal_burst_count: 10_000,
            in_flight_bytes_max: 64 * MIB,
            uncommitted_bytes_max: 32 * MIB,
            apply_lag_entries_max: 20_000,
            proposal_queue_count_max: 20_000,
            peer_in_flight_bytes_max: 8 * MIB,
            fsync_latency_ms_max: 250,
            retry_after_ms_min: 10,
            retry_after_ms_max: 5_000,
            principal_requests_max: 1024,
            principal_response_bytes_max: 128 * MIB,
            response_bytes_max: 1024 * MIB,
            principal_answer_bytes_per_sec: PRINCIPAL_ANSWER_BYTES_PER_SEC_DEFAULT,
        }
    }
}

/// Logs, trace export and runtime invariant checks (`quorate-telemetry`).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `human` (one readable line per event) or `json` (one object per line).
    pub log_format: String,
    /// An env-filter directive such as `info,quorate::audit=info`; empty: `RUST_LOG`, else
    /// `info`.
    pub log_filter: String,
    /// OTLP/HTTP traces URL of a collector (`http://127.0.0.1:4318/v1/traces`, or `https://`);
    /// empty (the default): no trace export and no connection attempted, unless the standard
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT` variables name
    /// one (they override this key).
    pub otlp_endpoint: String,
    /// Trace one proposal in this many (by log index; 1, the default: every proposal). Raise
    /// it to cut the export volume of a busy cluster.
    pub trace_proposals_every: u64,
    /// Stop the node when a runtime invariant check fails (the evidence is logged and
    /// `quorate_invariant_violations_total` counts it either way).
    pub halt_on_invariant_violation: bool,
}

impl Default for TelemetryConfig {
    fn default() -> TelemetryConfig {
        TelemetryConfig {
            log_format: "human".into(),
            log_filter: String::new(),
            otlp_endpoint: String::new(),
            trace_proposals_every: 1,
            halt_on_invariant_violation: false,
        }
    }
}

/// Certificate paths (PEM). Relative paths are taken relative to the config file.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The cluster CA certificate.
    pub ca: PathBuf,
    /// This node's certificate.
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
    /// Certificate revocation lists of the cluster CA (files of PEM `X509 CRL` blocks, or one
    /// DER CRL), at most 16. Re-read with the certificates: a node or client whose certificate
    /// is listed is refused, and its open connections are closed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crls: Vec<PathBuf>,
}

/// Consensus settings.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    /// Minimum election timeout (the maximum is twice this).
    pub election_timeout_ms: u64,
    /// Leader heartbeat interval.
    pub heartbeat_ms: u64,
    /// Pre-vote before campaigning.
    pub pre_vote: bool,
    /// Leaders step down without a quorum.
    pub check_quorum: bool,
    /// Clock drift bound for lease reads; 0 turns lease reads off (they fall back to
    /// linearizable reads). Requires `check_quorum`.
    pub lease_clock_drift_ms: u64,
    /// Take a snapshot after this many applied entries.
    pub snapshot_entries: u64,
    /// Entries kept behind a snapshot for slow followers.
    pub compaction_tail_entries: u64,
    /// A node whose store lost synced state (detected at start by the durable mark) rejoins
    /// automatically: it does not campaign and votes only for candidates at least as up to
    /// date as what it had recorded until it has caught up from the leader
    /// (docs/operations.md, "Lost synced state"). `false`: it refuses to start with the
    /// evidence, for an operator to remove it and add it back. Written to a configuration
    /// file only when `false` (a 0.1.0 node refuses unknown fields).
    #[serde(skip_serializing_if = "is_true")]
    pub rejoin_after_lost_state: bool,
}

/// Whether `b` is true (a serde `skip_serializing_if` helper).
fn is_true(b: &bool) -> bool {
    *b
}

impl Default for RaftConfig {
    fn default() -> RaftConfig {
        RaftConfig {
            election_timeout_ms: 1000,
            heartbeat_ms: 100,
            pre_vote: true,
            check_quorum: true,
            lease_clock_drift_ms: 0,
            snapshot_entries: 100_000,
            compaction_tail_entries: 10_000,
            rejoin_after_lost_state: true,
        }
    }
}

/// Bounds and safety-weakening switches.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Most client requests in flight (admitted and not yet delivered); more are refused with
    /// `Overloaded` (`QueueFull`).
    pub pending_requests_max: usize,
    /// How long the node keeps trying to deliver an answer to a client that does not read it;
    /// then the answer is dropped (the client sees its stream end) and its slot freed.
    pub response_write_timeout_ms: u64,
    /// Headroom, in MiB, above what the storage engine itself needs (its memtables flushed and
    /// its largest compaction, which follow from `storage_write_buffer_mb`): client writes are
    /// refused (`Overloaded`, "disk space") while free space is below that need plus this
    /// headroom, and the store refuses appends below the need alone. 0 turns every free-space
    /// check off.
    pub free_space_floor_mb: u64,
    /// Size in MiB of one memtable of the storage engine's log and state-machine column
    /// families (RocksDB's `write_buffer_size`; the other families use a quarter). The
    /// memtable, write-ahead-log and compaction budgets, and so the free space the node keeps,
    /// follow from it (23 memtables: 368 MiB for the default 16).
    pub storage_write_buffer_mb: u64,
    /// DANGER: skip fsync. An acknowledged write can be lost at a power failure. Shown in
    /// status as a danger setting.
    pub danger_skip_fsync: bool,
    /// DANGER: obey the fault-injection file `failpoints.toml` in the data directory (slow
    /// disk, disk full, clock rate; see docs/chaos.md). For fault testing only.
    pub danger_failpoints: bool,
    /// Memory for the flight recorder of the consensus core's inputs, in MiB (the base log
    /// capture may take as much again); 0 turns it off. See docs/operations.md.
    pub flight_recorder_mb: u64,
    /// Largest snapshot a follower accepts from its leader, in MiB. A transfer also needs
    /// twice its size free on disk (the staged file and its copy) above `free_space_floor_mb`.
    pub snapshot_staging_mb: u64,
    /// Rate at which a leader streams a snapshot to one follower, in MiB per second.
    pub snapshot_rate_mb_per_sec: u64,
    /// Sustained connection attempts per second from one source address (an IPv4 address or
    /// an IPv6 /64), after a burst of `handshake_burst_per_source`; an attempt beyond is
    /// dropped on its first packet, before any TLS work and without an answer (the client's
    /// retransmission gets in once a token is back). Clients and peers behind one address
    /// (a NAT, or every test on 127.0.0.1) share it. Written to a file only when not the
    /// default.
    #[serde(skip_serializing_if = "is_default_handshake_rate")]
    pub handshakes_per_source_per_sec: u32,
    /// Connection attempts one source address may make at once after a quiet spell. Written
    /// to a file only when not the default.
    #[serde(skip_serializing_if = "is_default_handshake_burst")]
    pub handshake_burst_per_source: u32,
    /// Most connections one client identity (certificate principal) may hold on this node;
    /// the next is refused. Written to a file only when not the default.
    #[serde(skip_serializing_if = "is_default_client_connections")]
    pub client_connections_per_identity_max: u64,
}

impl Default for LimitsConfig {
    fn default() -> LimitsConfig {
        LimitsConfig {
            pending_requests_max: 10_000,
            response_write_timeout_ms: 10_000,
            free_space_floor_mb: 64,
            storage_write_buffer_mb: 16,
            danger_skip_fsync: false,
            danger_failpoints: false,
            flight_recorder_mb: 64,
            snapshot_staging_mb: 64 * 1024,
            snapshot_rate_mb_per_sec: 64,
            handshakes_per_source_per_sec: HANDSHAKES_PER_SOURCE_PER_SEC_DEFAULT,
            handshake_burst_per_source: HANDSHAKE_BURST_PER_SOURCE_DEFAULT,
            client_connections_per_identity_max: CLIENT_CONNECTIONS_PER_IDENTITY_DEFAULT,
        }
    }
}

/// Largest `limits.snapshot_staging_mb` (16 TiB).
pub const SNAPSHOT_STAGING_MB_MAX: u64 = 16 * 1024 * 1024;
/// Largest `limits.snapshot_rate_mb_per_sec`.
pub const SNAPSHOT_RATE_MB_PER_SEC_MAX: u64 = 100_000;

/// Command-line overrides (highest precedence). `None` leaves the setting alone.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
#[non_exhaustive]
pub struct ConfigFlags {
    /// `--id`
    pub id: Option<u64>,
    /// `--listen`
    pub listen: Option<SocketAddr>,
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--metrics-listen`
    pub metrics_listen: Option<SocketAddr>,
    /// `--join`
    pub join: Option<bool>,
}

/// Why a configuration could not be loaded or is not valid.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped fields.
    #[error("config file {path} is not valid: {detail}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said (names the field and line).
        detail: String,
    },
    /// An environment variable has a value that does not parse.
    #[error("environment variable {var}={value:?} is not valid: {detail}")]
    Env {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        detail: String,
    },
    /// A field has a value that does not work.
    #[error("config field `{field}`: {detail}")]
    Invalid {
        /// The field, dotted (`raft.heartbeat_ms`).
        field: &'static str,
        /// What is wrong and what to do.
        detail: String,
    },
    /// The configuration could not be written as TOML.
    #[error("cannot write config as TOML: {0}")]
    Serialize(String),
}

fn invalid(field: &'static str, detail: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field, detail: detail.into() }
}

impl NodeConfig {
    /// Reads `path` (TOML), then applies the environment overrides. Relative TLS paths and
    /// a relative `data_dir` are resolved against the file's directory. Does not validate:
    /// call [`NodeConfig::apply_flags`] then [`NodeConfig::validate`].
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let read_err = |source| ConfigError::Read { path: path.to_path_buf(), source };
        let meta = std::fs::metadata(path).map_err(read_err)?;
        if meta.len() > CONFIG_BYTES_MAX {
            return Err(ConfigError::Parse {
                path: path.to_path_buf(),
                detail: format!("file of {} bytes exceeds {CONFIG_BYTES_MAX}", meta.len()),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        let mut config = NodeConfig::from_toml(&text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), detail: e.to_string() })?;
        if let Some(base) = path.parent() {
            config.resolve_relative(base);
        }
        config.apply_env(|name| std::env::var(name).ok())?;
        Ok(config)
    }

    /// Parses TOML text (no environment, no path resolution).
    pub fn from_toml(text: &str) -> Result<NodeConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse { path: PathBuf::from("<text>"), detail: e.to_string() })
    }

    /// The configuration as TOML (what [`NodeConfig::load`] reads back).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        // TOML keys are strings; the peers table uses ids as keys.
        toml::to_string_pretty(self).map_err(|e| ConfigError::Serialize(e.to_string()))
    }

    /// Makes relative paths absolute against `base` (the config file's directory).
    pub fn resolve_relative(&mut self, base: &Path) {
        let files = [&mut self.data_dir, &mut self.tls.ca, &mut self.tls.cert, &mut self.tls.key];
        for p in files.into_iter().chain(self.tls.crls.iter_mut()) {
            if p.is_relative() && !base.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        }
    }

    /// Applies `QUORATE_ID`, `QUORATE_LISTEN`, `QUORATE_ADVERTISE`, `QUORATE_DATA_DIR`,
    /// `QUORATE_METRICS_LISTEN`, `QUORATE_ENGINE` (`driver` or `runtime`: a whole cluster of
    /// nodes started by a tool moves to the other engine without editing their files) as read
    /// by `get` (the process environment in [`NodeConfig::load`]). `QUORATE_ADVERTISE` is
    /// checked by [`NodeConfig::validate`].
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = get("QUORATE_ID") {
            self.id = v.trim().parse().map_err(|e: std::num::ParseIntError| ConfigError::Env {
                var: "QUORATE_ID",
                value: v.clone(),
                detail: e.to_string(),
            })?;
        }
        if let Some(v) = get("QUORATE_LISTEN") {
            self.listen = v.trim().parse().map_err(|e: std::net::AddrParseError| ConfigError::Env {
                var: "QUORATE_LISTEN",
                value: v.clone(),
                detail: e.to_string(),
            })?;
        }
        if let Some(v) = get("QUORATE_ADVERTISE") {
            self.advertise = Some(v.trim().to_string());
        }
        if let Some(v) = get("QUORATE_DATA_DIR") {
            if v.is_empty() {
                return Err(ConfigError::Env { var: "QUORATE_DATA_DIR", value: v, detail: "must not be empty".into() });
            }
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = get("QUORATE_ENGINE") {
            self.engine = match v.trim() {
                "driver" => Engine::Driver,
                "runtime" => Engine::Runtime,
                _ => {
                    return Err(ConfigError::Env {
                        var: "QUORATE_ENGINE",
                        value: v,
                        detail: "must be `driver` or `runtime`".into(),
                    });
                }
            };
        }
        if let Some(v) = get("QUORATE_METRICS_LISTEN") {
            self.metrics_listen = Some(v.trim().parse().map_err(|e: std::net::AddrParseError| ConfigError::Env {
                var: "QUORATE_METRICS_LISTEN",
                value: v.clone(),
                detail: e.to_string(),
            })?);
        }
        Ok(())
    }

    /// Applies command-line overrides.
    pub fn apply_flags(&mut self, flags: &ConfigFlags) {
        if let Some(id) = flags.id {
            self.id = id;
        }
        if let Some(l) = flags.listen {
            self.listen = l;
        }
        if let Some(d) = &flags.data_dir {
            self.data_dir = d.clone();
        }
        if let Some(m) = flags.metrics_listen {
            self.metrics_listen = Some(m);
        }
        if let Some(j) = flags.join {
            self.join = j;
        }
    }

    /// Checks that the settings work together; each error names the field and what to do.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(invalid("id", "must be a positive integer (node ids start at 1)"));
        }
        // The rule of the identity every certificate carries (`quorate://<cluster>/...`),
        // checked here so that a name the node cannot use is refused before anything starts.
        if let Err(e) = quorate_transport::ClusterId::new(&self.cluster) {
            return Err(invalid("cluster", e.to_string()));
        }
        if self.tls.crls.len() > quorate_transport::CRL_FILES_MAX {
            return Err(invalid("tls.crls", format!("at most {} files", quorate_transport::CRL_FILES_MAX)));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must name a directory (it is created if missing)"));
        }
        for (id, addr) in &self.peers {
            if *id == 0 {
                return Err(invalid("peers", "node ids start at 1; remove the entry `0`"));
            }
            if addr.len() > ADDRESS_BYTES_MAX {
                return Err(invalid("peers", format!("address of node {id} is over {ADDRESS_BYTES_MAX} bytes")));
            }
            if let Err(e) = quorate_transport::PeerAddr::parse(addr) {
                return Err(invalid("peers", format!("address of node {id}: {e}")));
            }
        }
        if let Some(a) = &self.advertise
            && let Err(e) = quorate_transport::PeerAddr::parse(a)
        {
            return Err(invalid("advertise", e.to_string()));
        }
        if self.peers.len() > MEMBERS_MAX {
            return Err(invalid("peers", format!("at most {} members", MEMBERS_MAX)));
        }
        if self.join {
            if self.peers.contains_key(&self.id) && self.peers.len() == 1 {
                return Err(invalid(
                    "join",
                    "a joining node waits to be added by an existing cluster; list the existing members in `peers`, \
                     not only this node",
                ));
            }
        } else if !self.peers.contains_key(&self.id) {
            return Err(invalid(
                "peers",
                format!(
                    "must include this node ({} = \"{}\") to bootstrap a cluster, or set `join = true` to be added \
                     to an existing one",
                    self.id, self.listen
                ),
            ));
        }
        let r = &self.raft;
        if r.heartbeat_ms == 0 {
            return Err(invalid("raft.heartbeat_ms", "must be at least 1"));
        }
        // Every product of settings saturates: a huge value is refused, never an overflow.
        if r.election_timeout_ms < r.heartbeat_ms.saturating_mul(3) {
            return Err(invalid(
                "raft.election_timeout_ms",
                format!(
                    "must be at least 3 × raft.heartbeat_ms ({} ms); raise it or lower the heartbeat",
                    r.heartbeat_ms.saturating_mul(3)
                ),
            ));
        }
        if r.election_timeout_ms > 600_000 {
            return Err(invalid("raft.election_timeout_ms", "must be at most 600000 (10 minutes)"));
        }
        if r.lease_clock_drift_ms > 0 {
            if !r.check_quorum {
                return Err(invalid(
                    "raft.lease_clock_drift_ms",
                    "lease reads need raft.check_quorum = true; enable it or set the drift to 0",
                ));
            }
            if r.lease_clock_drift_ms.saturating_mul(2) >= r.election_timeout_ms {
                return Err(invalid(
                    "raft.lease_clock_drift_ms",
                    "must be below half of raft.election_timeout_ms (the lease would be too short to be useful)",
                ));
            }
        }
        if r.snapshot_entries == 0 {
            return Err(invalid("raft.snapshot_entries", "must be at least 1"));
        }
        if self.history.retain_revisions > HISTORY_RETAIN_REVISIONS_MAX {
            return Err(invalid(
                "history.retain_revisions",
                format!("must be at most {HISTORY_RETAIN_REVISIONS_MAX} (0 turns the count rule off)"),
            ));
        }
        let ms = self.history.retain_ms;
        if ms != 0 && !(HISTORY_RETAIN_MS_MIN..=HISTORY_RETAIN_MS_MAX).contains(&ms) {
            return Err(invalid(
                "history.retain_ms",
                format!("must be 0 (off) or {HISTORY_RETAIN_MS_MIN}..={HISTORY_RETAIN_MS_MAX}"),
            ));
        }
        if self.telemetry.trace_proposals_every == 0 {
            return Err(invalid("telemetry.trace_proposals_every", "must be at least 1 (1: every proposal)"));
        }
        if !matches!(self.telemetry.log_format.as_str(), "human" | "json") {
            return Err(invalid("telemetry.log_format", "must be \"human\" or \"json\""));
        }
        let otlp = &self.telemetry.otlp_endpoint;
        if !otlp.is_empty()
            && (!(otlp.starts_with("http://") || otlp.starts_with("https://")) || otlp.len() > ADDRESS_BYTES_MAX)
        {
            return Err(invalid(
                "telemetry.otlp_endpoint",
                "must be an http:// or https:// URL such as http://127.0.0.1:4318/v1/traces",
            ));
        }
        if !(1..=1024).contains(&self.limits.storage_write_buffer_mb) {
            return Err(invalid("limits.storage_write_buffer_mb", "must be between 1 and 1024"));
        }
        if self.limits.flight_recorder_mb > 1024 {
            return Err(invalid("limits.flight_recorder_mb", "must be at most 1024 (0 turns the recorder off)"));
        }
        if self.limits.pending_requests_max == 0 {
            return Err(invalid("limits.pending_requests_max", "must be at least 1"));
        }
        if !(RESPONSE_WRITE_TIMEOUT_MS_MIN..=RESPONSE_WRITE_TIMEOUT_MS_MAX)
            .contains(&self.limits.response_write_timeout_ms)
        {
            return Err(invalid(
                "limits.response_write_timeout_ms",
                format!("must be between {RESPONSE_WRITE_TIMEOUT_MS_MIN} and {RESPONSE_WRITE_TIMEOUT_MS_MAX}"),
            ));
        }
        let l = &self.limits;
        if !(1..=SNAPSHOT_STAGING_MB_MAX).contains(&l.snapshot_staging_mb) {
            return Err(invalid("limits.snapshot_staging_mb", format!("must be 1..={SNAPSHOT_STAGING_MB_MAX}")));
        }
        if !(1..=SNAPSHOT_RATE_MB_PER_SEC_MAX).contains(&l.snapshot_rate_mb_per_sec) {
            return Err(invalid(
                "limits.snapshot_rate_mb_per_sec",
                format!("must be 1..={SNAPSHOT_RATE_MB_PER_SEC_MAX}"),
            ));
        }
        if !(1..=HANDSHAKES_PER_SOURCE_MAX).contains(&l.handshakes_per_source_per_sec) {
            return Err(invalid(
                "limits.handshakes_per_source_per_sec",
                format!("must be 1..={HANDSHAKES_PER_SOURCE_MAX}"),
            ));
        }
        if !(1..=HANDSHAKES_PER_SOURCE_MAX).contains(&l.handshake_burst_per_source) {
            return Err(invalid(
                "limits.handshake_burst_per_source",
                format!("must be 1..={HANDSHAKES_PER_SOURCE_MAX}"),
            ));
        }
        if !(1..=CLIENT_CONNECTIONS_PER_IDENTITY_MAX).contains(&l.client_connections_per_identity_max) {
            return Err(invalid(
                "limits.client_connections_per_identity_max",
                format!("must be 1..={CLIENT_CONNECTIONS_PER_IDENTITY_MAX}"),
            ));
        }
        if !(1..=PRINCIPAL_ANSWER_BYTES_PER_SEC_MAX).contains(&self.admission.principal_answer_bytes_per_sec) {
            return Err(invalid(
                "admission.principal_answer_bytes_per_sec",
                format!("must be 1..={PRINCIPAL_ANSWER_BYTES_PER_SEC_MAX}"),
            ));
        }
        Ok(())
    }

    /// Settings in force that weaken safety, by name.
    #[must_use]
    pub fn danger_settings(&self) -> Vec<String> {
        let mut d = Vec::new();
        if self.limits.danger_skip_fsync {
            d.push("limits.danger_skip_fsync".to_string());
        }
        if self.admission.danger_admission_disabled {
            d.push("admission.danger_admission_disabled".to_string());
        }
        if self.limits.danger_failpoints {
            d.push("limits.danger_failpoints".to_string());
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
id = 1
cluster = "dev"
listen = "127.0.0.1:7001"
data_dir = "/var/lib/quorate/n1"
join = false
[peers]
1 = "127.0.0.1:7001"
2 = "127.0.0.1:7002"
3 = "127.0.0.1:7003"
[tls]
ca = "certs/ca.pem"
cert = "certs/node-1.pem"
key = "certs/node-1.key"
[raft]
election_timeout_ms = 1000
heartbeat_ms = 100
pre_vote = true
check_quorum = true
lease_clock_drift_ms = 0
snapshot_entries = 100000
compaction_tail_entries = 10000
[limits]
pending_requests_max = 10000
free_space_floor_mb = 64
danger_skip_fsync = false
"#;

    #[test]
    fn sample_parses_validates_and_round_trips() {
        let c = NodeConfig::from_toml(SAMPLE).unwrap();
        c.validate().unwrap();
        assert_eq!(c.peers.len(), 3);
        let again = NodeConfig::from_toml(&c.to_toml().unwrap()).unwrap();
        assert_eq!(c, again);
    }

    #[test]
    fn the_engine_is_the_driver_by_default_written_only_when_not_and_unknown_ones_are_refused() {
        let mut c = NodeConfig::from_toml(SAMPLE).unwrap();
        assert_eq!(c.engine, Engine::Driver);
        assert!(!c.to_toml().unwrap().contains("engine"), "a 0.1.0 node must parse what we write");
        c.engine = Engine::Runtime;
        let text = c.to_toml().unwrap();
        assert!(text.contains("engine = \"runtime\""), "{text}");
        assert_eq!(NodeConfig::from_toml(&text).unwrap(), c);
        let bad = format!("engine = \"turbo\"\n{SAMPLE}");
        let e = NodeConfig::from_toml(&bad).unwrap_err().to_string();
        assert!(e.contains("turbo") || e.contains("engine"), "{e}");
    }

    #[test]
    fn rejoin_after_lost_state_is_on_by_default_and_written_only_when_off() {
        // SAMPLE is a 0.1.0 file: it has no such field.
        let mut c = NodeConfig::from_toml(SAMPLE).unwrap();
        assert!(c.raft.rejoin_after_lost_state);
        assert!(!c.to_toml().unwrap().contains("rejoin_after_lost_state"), "a 0.1.0 node must parse what we write");
        c.raft.rejoin_after_lost_state = false;
        let text = c.to_toml().unwrap();
        assert!(text.contains("rejoin_after_lost_state = false"), "{text}");
        assert_eq!(NodeConfig::from_toml(&text).unwrap(), c);
    }

    #[test]
    fn history_settings_are_bounded_and_written_only_when_not_the_default() {
        let c = NodeConfig::from_toml(SAMPLE).unwrap();
        assert_eq!(c.history, HistoryConfig::default());
        assert!(!c.to_toml().unwrap().contains("history"), "a 0.1.0 node must parse what we write");
        let text = format!("{SAMPLE}[history]\nretain_revisions = 0\nretain_ms = 60000\n");
        let h = NodeConfig::from_toml(&text).unwrap();
        h.validate().unwrap();
        assert_eq!((h.history.retain_revisions, h.history.retain_ms), (0, 60_000));
        assert_eq!(NodeConfig::from_toml(&h.to_toml().unwrap()).unwrap(), h);
        for (rev, ms, field) in [
            (HISTORY_RETAIN_REVISIONS_MAX + 1, 0, "history.retain_revisions"),
            (10, 1, "history.retain_ms"),
            (10, HISTORY_RETAIN_MS_MAX + 1, "history.retain_ms"),
        ] {
            let mut c = c.clone();
            c.history = HistoryConfig { retain_revisions: rev, retain_ms: ms };
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = SAMPLE.replace("heartbeat_ms = 100", "heartbeat_ms = 100\nheartbeat = 5");
        let e = NodeConfig::from_toml(&text).unwrap_err().to_string();
        assert!(e.contains("heartbeat"), "{e}");
    }

    #[test]
    fn the_response_write_timeout_is_bounded() {
        let mut c = NodeConfig::from_toml(SAMPLE).unwrap();
        assert_eq!(c.limits.response_write_timeout_ms, 10_000);
        for bad in [0, RESPONSE_WRITE_TIMEOUT_MS_MIN - 1, RESPONSE_WRITE_TIMEOUT_MS_MAX + 1, u64::MAX] {
            c.limits.response_write_timeout_ms = bad;
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("limits.response_write_timeout_ms"), "{e}");
        }
        c.limits.response_write_timeout_ms = RESPONSE_WRITE_TIMEOUT_MS_MIN;
        c.validate().unwrap();
    }

    #[test]
    fn env_and_flags_override() {
        let mut c = NodeConfig::from_toml(SAMPLE).unwrap();
        c.apply_env(|k| match k {
            "QUORATE_ID" => Some("2".into()),
            "QUORATE_LISTEN" => Some("127.0.0.1:9000".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.id, 2);
        assert_eq!(c.listen.port(), 9000);
        c.apply_flags(&ConfigFlags { id: Some(3), ..ConfigFlags::default() });
        assert_eq!(c.id, 3);
        assert!(c.apply_env(|k| (k == "QUORATE_ID").then(|| "x".into())).is_err());
        c.apply_env(|k| (k == "QUORATE_ENGINE").then(|| "runtime".into())).unwrap();
        assert_eq!(c.engine, Engine::Runtime);
        let e = c.apply_env(|k| (k == "QUORATE_ENGINE").then(|| "turbo".into())).unwrap_err().to_string();
        assert!(e.contains("QUORATE_ENGINE"), "{e}");
        assert_eq!(c.engine, Engine::Runtime, "a refused value changes nothing");
    }

    /// Every numeric setting at its extremes: validation answers (an error or not), never
    /// panics (the ci profile has overflow checks on, so an overflowing `3 * heartbeat_ms`
    /// would).
    #[test]
    fn extreme_numbers_never_panic_validation() {
        type Set = fn(&mut NodeConfig, u64);
        let fields: &[(&str, Set)] = &[
            ("raft.heartbeat_ms", |c, v| c.raft.heartbeat_ms = v),
            ("raft.election_timeout_ms", |c, v| c.raft.election_timeout_ms = v),
            ("raft.lease_clock_drift_ms", |c, v| c.raft.lease_clock_drift_ms = v),
            ("raft.snapshot_entries", |c, v| c.raft.snapshot_entries = v),
            ("raft.compaction_tail_entries", |c, v| c.raft.compaction_tail_entries = v),
            ("limits.free_space_floor_mb", |c, v| c.limits.free_space_floor_mb = v),
            ("limits.flight_recorder_mb", |c, v| c.limits.flight_recorder_mb = v),
            ("limits.snapshot_staging_mb", |c, v| c.limits.snapshot_staging_mb = v),
            ("limits.snapshot_rate_mb_per_sec", |c, v| c.limits.snapshot_rate_mb_per_sec = v),
            ("limits.pending_requests_max", |c, v| c.limits.pending_requests_max = v as usize),
            ("limits.handshakes_per_source_per_sec", |c, v| c.limits.handshakes_per_source_per_sec = v as u32),
            ("limits.handshake_burst_per_source", |c, v| c.limits.handshake_burst_per_source = v as u32),
            ("limits.client_connections_per_identity_max", |c, v| c.limits.client_connections_per_identity_max = v),
            ("admission.principal_answer_bytes_per_sec", |c, v| c.admission.principal_answer_bytes_per_sec = v),
            ("telemetry.trace_proposals_every", |c, v| c.telemetry.trace_proposals_every = v),
            ("history.retain_revisions", |c, v| c.history.retain_revisions = v),
            ("history.retain_ms", |c, v| c.history.retain_ms = v),
        ];
        let values = [0, 1, 2, 3, u64::MAX / 3 + 1, u64::MAX / 2 + 1, u64::MAX - 1, u64::MAX];
        for (name, set) in fields {
            for v in values {
                for w in values {
                    // Each field at `v`, with the heartbeat (which the others are compared
                    // against) at `w`.
                    let mut c = NodeConfig::from_toml(SAMPLE).unwrap();
                    c.raft.heartbeat_ms = w;
                    set(&mut c, v);
                    let _ = c.validate().map_err(|e| assert!(!e.to_string().is_empty(), "{name}"));
                }
            }
        }
        let mut c = NodeConfig::from_toml(SAMPLE).unwrap();
        c.raft.heartbeat_ms = u64::MAX / 2;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("raft.election_timeout_ms"), "{e}");
    }

    /// The cluster name must be one the node can use as a `ClusterId` (the authority of every
    /// certificate's identity URI): refused when the file is read, not after the store opened.
    #[test]
    fn cluster_names_follow_the_cluster_id_rule() {
        for bad in ["Dev", "dev.prod", "dev_1", "-dev", "dev-", "", &"a".repeat(64)] {
            let mut c = NodeConfig::from_toml(SAMPLE).unwrap();
            c.cluster = bad.to_string();
            let e = c.validate().expect_err(bad).to_string();
            assert!(e.contains("cluster"), "{bad:?}: {e}");
        }
        for good in ["dev", "prod-eu-1", "a", &"a".repeat(63)] {
            let mut c = NodeConfig::from_toml(SAMPLE).unwrap();
            c.cluster = good.to_string();
            c.validate().unwrap_or_else(|e| panic!("{good:?}: {e}"));
        }
    }

    #[test]
    fn the_otlp_endpoint_may_be_http_or_https() {
        let mut c = NodeConfig::from_toml(SAMPLE).unwrap();
        for ok in ["", "http://127.0.0.1:4318/v1/traces", "https://otel.example.com:4318/v1/traces"] {
            c.telemetry.otlp_endpoint = ok.into();
            c.validate().unwrap();
        }
        for bad in ["127.0.0.1:4318", "grpc://otel:4317", "ftp://x/v1/traces"] {
            c.telemetry.otlp_endpoint = bad.into();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("telemetry.otlp_endpoint"), "{e}");
        }
    }

    #[test]
    fn validation_names_the_field() {
        let mut c = NodeConfig::from_toml(SAMPLE).unwrap();
        c.raft.lease_clock_drift_ms = 50;
        c.raft.check_quorum = false;
        assert!(c.validate().unwrap_err().to_string().contains("raft.lease_clock_drift_ms"));
        let mut c = NodeConfig::from_toml(SAMPLE).unwrap();
        c.id = 4;
        assert!(c.validate().unwrap_err().to_string().contains("peers"));
        c.join = true;
        c.validate().unwrap();
        let mut c = NodeConfig::from_toml(SAMPLE).unwrap();
        c.limits.danger_skip_fsync = true;
        assert_eq!(c.danger_settings(), vec!["limits.danger_skip_fsync".to_string()]);
        c.limits.danger_skip_fsync = false;
        c.admission.danger_admission_disabled = true;
        assert_eq!(c.danger_settings(), vec!["admission.danger_admission_disabled".to_string()]);
    }

    /// A 0.1.0 node refuses settings it does not know: a configuration that keeps the
    /// defaults of the settings added since must be written without them, and one that
    /// changes them must say so.
    #[test]
    fn the_answer_byte_rate_is_written_only_when_not_the_default() {
        let c = NodeConfig::from_toml(SAMPLE).unwrap();
        assert_eq!(c.admission.principal_answer_bytes_per_sec, 4 << 20);
        let text = c.to_toml().unwrap();
        for added in [
            "principal_answer_bytes_per_sec",
            "handshakes_per_source_per_sec",
            "handshake_burst_per_source",
            "client_connections_per_identity_max",
        ] {
            assert!(!text.contains(added), "{added} written at its default:\n{text}");
        }
        assert_eq!(NodeConfig::from_toml(&text).unwrap(), c);

        let mut changed = c.clone();
        changed.admission.principal_answer_bytes_per_sec = 64 << 20;
        changed.limits.handshakes_per_source_per_sec = 10_000;
        changed.limits.handshake_burst_per_source = 10_000;
        changed.limits.client_connections_per_identity_max = 8;
        let text = changed.to_toml().unwrap();
        assert!(text.contains("principal_answer_bytes_per_sec = 67108864"), "{text}");
        assert!(text.contains("handshakes_per_source_per_sec = 10000"), "{text}");
        assert!(text.contains("handshake_burst_per_source = 10000"), "{text}");
        assert!(text.contains("client_connections_per_identity_max = 8"), "{text}");
        assert_eq!(NodeConfig::from_toml(&text).unwrap(), changed);

        for (edit, field) in [
            (
                (|c: &mut NodeConfig| c.admission.principal_answer_bytes_per_sec = 0) as fn(&mut NodeConfig),
                "admission.principal_answer_bytes_per_sec",
            ),
            (
                |c| c.admission.principal_answer_bytes_per_sec = 1_000_000_001,
                "admission.principal_answer_bytes_per_sec",
            ),
            (|c| c.limits.handshakes_per_source_per_sec = 0, "limits.handshakes_per_source_per_sec"),
            (|c| c.limits.handshake_burst_per_source = 1_000_001, "limits.handshake_burst_per_source"),
            (|c| c.limits.client_connections_per_identity_max = 0, "limits.client_connections_per_identity_max"),
        ] {
            let mut c = c.clone();
            edit(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
    }
}
