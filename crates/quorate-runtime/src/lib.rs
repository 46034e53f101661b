//! # quorate-runtime
//!
//! Run your own replicated service on [`quorate_core`]: write a [`StateMachine`], start a
//! [`Node`] per replica, and talk to it through a cloneable [`Handle`] — propose commands
//! (optionally exactly-once, in a session), read at a chosen level with a closure over the
//! applied state, change membership, transfer leadership, watch the status, snapshot on
//! demand, shut down gracefully.
//!
//! Storage, network and clock are traits ([`LogStorage`], [`Network`], [`Clock`]) with
//! in-memory implementations here ([`MemStorage`], [`MemRouter`]/[`MemNetwork`],
//! [`ManualClock`]). The runtime's logic is a synchronous, deterministic [`Replica`]: the
//! [`Node`] runs one in a tokio task, and a simulation can step several by hand from one
//! seed (this crate's `tests/sim.rs` does, with message loss, delay, reordering, partitions
//! and crashes, and checks linearizability; [`DeferredStorage`] lets it write each replica's
//! detached batches when it chooses, as a disk with a write queue would).
//!
//! ## What the runtime guarantees
//!
//! * **Durability before acknowledgement.** Every batch the core hands out is written
//!   through [`LogStorage::persist`], which returns only once it is durable, or — under
//!   [`Node`], when the storage has one ([`LogStorage::batch_writer`]; [`RocksLog`] does) —
//!   by a writer on a thread of its own that reports each batch once it is durable; only then
//!   does the core hear it is persisted, and it releases a vote, an append acknowledgement or
//!   a commit that depends on it only then.
//! * **Ordering.** Committed commands are applied in log order, once, on every replica; a
//!   snapshot install replaces the state machine's state before anything after it is applied.
//!   Under [`Node`] the state machine runs on a thread of its own, so replication (a
//!   follower's acknowledgements included) goes on while it applies, up to
//!   [`Config::apply_backlog_bytes_max`] behind; read closures run on that thread too.
//! * **Reads.** [`ReadLevel::Linearizable`] runs the closure after the leader confirmed its
//!   leadership and this replica applied at least the confirmed index;
//!   [`ReadLevel::Stale`] runs it at once on the local state.
//! * **Exactly-once.** A command proposed as `(client, seq)` of a session is applied at most
//!   once however often it is retried; a retry is answered with the first application's output.
//!   A state machine that owns its log format ([`StateMachine::ENVELOPE`] `= false`) gets
//!   every command as it is in the log and keeps its own sessions instead.
//!
//! * **Snapshots are streams, end to end.** [`StateMachine::snapshot`] writes into the
//!   storage's writer; the leader reads chunks from the stored image at their offsets
//!   ([`SnapshotSource::read_at`]); the follower stages them durably and checks the complete
//!   staging as a stream; [`StateMachine::restore`] reads from a reader over the stored
//!   image. Memory per transfer: the leader holds at most
//!   [`Config::snapshot_window_bytes`] of chunks in flight per follower (plus one chunk being
//!   read), the follower one chunk and a 64 KiB read buffer, and the runtime the session
//!   table; no side holds a whole image. A transfer cut by a dropped connection, a restart or
//!   a timeout resumes from the last acknowledged offset, within an optional rate limit
//!   ([`Config::snapshot_rate_bytes_per_sec`]). For members that take nothing else, a leader
//!   sends one ordered, unanswered stream instead ([`TransferFormat::Stream`]; its pieces in
//!   flight are bounded by the network's queue, and a broken stream starts over).
//! * **Durable state machines** ([`StateMachine::DURABLE`]) keep their state on disk: the
//!   runtime starts from their own `applied()`, re-applies only the entries after it, has
//!   them commit the session table atomically with each apply turn, never compacts the log
//!   past their last commit, and restores them again after an interrupted install.
//!
//! See `docs/embedding.md` in the repository for the full contract.
//!
//! ## Cargo features
//!
//! * `rocksdb`: [`RocksLog`](crate::LogStorage), the storage over quorate-storage's RocksDB
//!   store.
//! * `quic`: the `quic` module — `QuicNetwork` over quorate-transport (QUIC + mutual TLS),
//!   `QuicMessage` (the runtime's messages and the application's own requests on one
//!   transport) and `pump` (incoming messages to the node, requests to the application).
//!
//! ## Example: a replicated counter, three replicas in one process
//!
//! ```
//! use quorate_log::{Configuration, LogIndex, NodeId};
//! use quorate_runtime::{Committed, Config, MemRouter, MemStorage, Node, ReadLevel, RestoreError, StateMachine, SystemClock};
//! use std::io::{Read, Write};
//! use std::time::Duration;
//!
//! #[derive(Default)]
//! struct Counter { value: u64, applied: LogIndex }
//!
//! impl StateMachine for Counter {
//!     type Output = u64;
//!     fn apply(&mut self, batch: &[Committed<'_>]) -> Vec<u64> {
//!         batch.iter().map(|c| {
//!             self.value += c.command.iter().map(|b| u64::from(*b)).sum::<u64>();
//!             self.applied = c.index;
//!             self.value
//!         }).collect()
//!     }
//!     fn snapshot(&self, out: &mut dyn Write) -> std::io::Result<()> { out.write_all(&self.value.to_le_bytes()) }
//!     fn restore(&mut self, applied: LogIndex, image: &mut dyn Read) -> Result<(), RestoreError> {
//!         let mut bytes = [0u8; 8];
//!         image.read_exact(&mut bytes)?;
//!         *self = Counter { value: u64::from_le_bytes(bytes), applied };
//!         Ok(())
//!     }
//!     fn applied(&self) -> LogIndex { self.applied }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ids = [1, 2, 3].map(|i| NodeId::new(i).expect("non-zero"));
//! let router = MemRouter::new();
//! let mut nodes = Vec::new();
//! for id in ids {
//!     let mut cfg = Config::new(id);
//!     cfg.raft.election_timeout_min = Duration::from_millis(300);
//!     cfg.raft.heartbeat_interval = Duration::from_millis(50);
//!     let storage = MemStorage::new(Configuration::with_voters(ids)?);
//!     let node = Node::start(cfg, storage, Counter::default(), router.endpoint(), SystemClock::new())?;
//!     router.register(id, node.inbox());
//!     nodes.push(node);
//! }
//! // Wait until node 1 knows a leader, then propose there.
//! let leader = nodes[0].handle().status().wait_for(|s| s.leader.is_some()).await?.leader.expect("known");
//! let leader = nodes[ids.iter().position(|i| *i == leader).expect("a member")].handle();
//! assert_eq!(leader.propose([2u8, 3]).await?, 5);
//! // Exactly-once: a retry of the same (session, seq) is not applied again.
//! let session = leader.open_session().await?;
//! assert_eq!(leader.propose_in_session(session, 1, [10u8]).await?, 15);
//! assert_eq!(leader.propose_in_session(session, 1, [10u8]).await?, 15);
//! // A linearizable read on any replica sees every acknowledged write.
//! let value = nodes[2].handle().read(ReadLevel::Linearizable, |c: &Counter| c.value).await?;
//! assert_eq!(value, 15);
//! for node in nodes {
//!     node.shutdown().await;
//! }
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

mod clock;
mod driver;
mod error;
mod network;
mod node;
#[cfg(feature = "quic")]
pub mod quic;
mod replica;
#[cfg(feature = "rocksdb")]
mod rocks;
mod sessions;
mod state_machine;
mod storage;
pub mod transfer;

pub use clock::{Clock, ManualClock, SystemClock};
pub use driver::Core;
pub use error::Error;
pub use network::{
    AckStatus, Inbox, MemNetwork, MemRouter, Network, SnapshotAck, SnapshotChunk, StreamChunk, TransferFormat,
    WireMessage,
};
pub use node::{Handle, INBOX_QUEUE_MAX, Node, REQUESTS_QUEUE_MAX};
pub use replica::{
    Applier, Config, Jobs, ProposeCallback, ReadCallback, ReadLevel, Replica, Reports, SNAPSHOT_CALLERS_MAX,
    SNAPSHOT_CHUNK_BYTES_MAX, SnapshotCallback, Status, TransferStats,
};
#[cfg(feature = "rocksdb")]
pub use rocks::{ImageLayout, RocksLog, WrittenBatch};
pub use sessions::ClientId;
pub use state_machine::{Committed, RestoreError, RuntimeWrites, StateMachine};
pub use storage::{
    BatchDone, BatchWriter, DeferredStorage, LogStorage, MemStorage, SnapshotHeader, SnapshotSaver, SnapshotSource,
};

// The vocabulary users need alongside the runtime.
pub use quorate_core::{ConfChange, Role};
