//! # quorate-node
//!
//! The reference node of Quorate: a replicated, linearizable key-value service (like etcd)
//! composed from the project's crates — the sans-IO consensus core (`quorate-core`), the
//! RocksDB store (`quorate-storage`), the QUIC + mutual TLS transport (`quorate-transport`)
//! and the wire contract (`quorate-api`).
//!
//! * [`config`]: the TOML configuration, environment and flag overrides, validation;
//! * [`server::run`]: the node itself — a tokio driver of the consensus core, a separate
//!   apply task, client request handling, membership, snapshots;
//! * [`flight`]: the flight recorder of the consensus core's inputs and `quorate replay`;
//! * [`restore`]: offline restore of a backup snapshot into a new cluster's data directory;
//! * [`sm`]: the key-value state machine (revisions, transactions, exactly-once sessions),
//!   deterministic and persisted atomically with the applied index.

#![forbid(unsafe_code)]

mod admission;
mod apply;
mod apply_backlog;
mod audit;
pub mod failpoints;
pub mod flight;
pub use quorate_config as config;
mod hash_exchange;
mod history;
mod invariants;
pub mod recover;
mod replays;
pub mod restore;
mod save_stream;
pub mod server;
pub mod sm;
mod telemetry;
mod versions;

/// The version of this binary (from Cargo).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

// The configuration crate repeats two wire limits so that it stays free of the node's
// dependencies; these fail to compile if the copies drift.
const _: () = assert!(config::MEMBERS_MAX == quorate_log::MEMBERS_MAX);
const _: () = assert!(config::ADDRESS_BYTES_MAX == quorate_api::limits::TEXT_BYTES_MAX);
const _: () = assert!(config::HANDSHAKES_PER_SOURCE_MAX == quorate_transport::HANDSHAKE_RATE_CEILING);
const _: () = assert!(config::PRINCIPAL_ANSWER_BYTES_PER_SEC_MAX <= quorate_admission::BUCKET_RATE_PER_SEC_MAX);
