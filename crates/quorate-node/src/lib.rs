//! # quorate-node
//!
//! The reference node of Quorate: a replicated, linearizable key-value service (like etcd)
//! composed from the project's crates — the sans-IO consensus core (`quorate-core`), the
//! RocksDB store (`quorate-storage`), the QUIC + mutual TLS transport (`quorate-transport`)
//! and the wire contract (`quorate-api`) — and the `quorate` binary.
//!
//! ## The library's API
//!
//! The library half of the crate is what the `quorate` binary needs, and nothing else; every
//! other module (the driver's internals, the key-value state machine, the apply task, the
//! flight recorder's ring, failpoints, telemetry, admission) is private and may change in any
//! release. Public, and kept stable within a minor version:
//!
//! * [`config`]: the TOML configuration, environment and flag overrides, validation (a
//!   re-export of `quorate-config`);
//! * [`server`]: running a node — [`server::run`] (until SIGINT/SIGTERM) and
//!   [`server::run_until`] (until a future completes), [`server::ServerError`],
//!   [`server::init_tracing`] (the default subscriber, only if the host installed none) and
//!   [`server::AUDIT_TARGET`] (the tracing target of audit events);
//! * [`flight`]: reading and replaying a flight-recorder dump (`quorate replay FILE`) —
//!   [`flight::read_dump`], [`flight::replay`] and the dump's format (re-exported from
//!   `quorate_api::flight`); the recorder itself is private;
//! * [`restore`]: offline restore of a backup snapshot into a new cluster's data directory
//!   (`quorate snapshot restore`) and its inspection (`quorate snapshot status`);
//! * [`recover`]: the offline `quorate node force-new-cluster` of a cluster that lost quorum;
//! * [`VERSION`]: the version of this build.
//!
//! Clients use `quorate-client`; programs that want a replicated service of their own use
//! `quorate-runtime`, not this crate.

#![forbid(unsafe_code)]

mod admission;
mod apply;
mod apply_backlog;
mod audit;
mod failpoints;
pub mod flight;
pub use quorate_config as config;
mod hash_exchange;
mod history;
mod invariants;
mod leases;
mod on_runtime;
mod peer_disks;
mod peer_network;
pub mod recover;
mod replays;
pub mod restore;
mod save_stream;
pub mod server;
mod sm;
mod telemetry;
mod transfer;
mod versions;
mod waiting;
mod watches;

/// The version of this binary (from Cargo).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

// The configuration crate repeats two wire limits so that it stays free of the node's
// dependencies; these fail to compile if the copies drift.
const _: () = assert!(config::MEMBERS_MAX == quorate_log::MEMBERS_MAX);
const _: () = assert!(config::ADDRESS_BYTES_MAX == quorate_api::limits::TEXT_BYTES_MAX);
const _: () = assert!(config::HANDSHAKES_PER_SOURCE_MAX == quorate_transport::HANDSHAKE_RATE_CEILING);
const _: () = assert!(config::PRINCIPAL_ANSWER_BYTES_PER_SEC_MAX <= quorate_admission::BUCKET_RATE_PER_SEC_MAX);
