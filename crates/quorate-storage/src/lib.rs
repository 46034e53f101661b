//! # quorate-storage
//!
//! The durable storage of the Quorate replicated log, on RocksDB: log entries, the hard state
//! (term, vote, commit), configurations, snapshot metadata and data, and the application's
//! state-machine data, with a checksum on every record and a format version on every store.
//!
//! The consensus core ([`quorate-core`]) never writes to storage. Each `Ready` it produces
//! asks the application to persist a hard state and entries (possibly after truncating a
//! conflicting suffix); the application turns that into a [`PersistBatch`], writes it with
//! [`RocksStore::write`] (one atomic RocksDB write, fsynced before it returns) or through a
//! [`GroupCommitter`] (many batches share one fsync), and only then tells the core the batch
//! is durable. The core reads the log back through the read-only
//! [`LogStorage`](quorate_log::LogStorage) trait, which [`RocksStore`] implements.
//!
//! ```
//! use quorate_log::{Configuration, Data, Entry, EntryPayload, HardState, LogIndex, LogStorage, NodeId, Term};
//! use quorate_storage::{PersistBatch, RocksStore, StoreOptions};
//!
//! # let dir = std::env::temp_dir().join(format!("quorate-storage-doc-{}", std::process::id()));
//! let voters = Configuration::with_voters([1, 2, 3].map(|i| NodeId::new(i).expect("non-zero")))?;
//! let store = RocksStore::open(&dir, StoreOptions::with_bootstrap(voters))?;
//! let entry = Entry { index: LogIndex(1), term: Term(1), payload: EntryPayload::Command(Data::from("x=1")) };
//! let hs = HardState { term: Term(1), vote: NodeId::new(1), commit: LogIndex(1) };
//! store.write(PersistBatch::append(vec![entry]).with_hard_state(hs))?; // durable on return
//! assert_eq!(store.last_index(), LogIndex(1));
//! assert_eq!(store.initial_state()?.hard_state, hs);
//! # drop(store);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Layout
//!
//! One RocksDB database with four column families, all keys big-endian so that byte order is
//! index order:
//!
//! | column family | key | value |
//! |---|---|---|
//! | `log` | index (u64 BE) | term and payload |
//! | `meta` | `format`, `hard`, `applied`, `sm_install`, `cfg/` + index (u64 BE) | format version, [`HardState`](quorate_log::HardState), applied index, the marker of an unfinished snapshot install, a mirror of each configuration entry |
//! | `snap` | `meta` | the latest [`SnapshotMeta`](quorate_log::SnapshotMeta) |
//! | `sm` | `k` + application key | application value |
//!
//! Every value is `CRC-32 (4 bytes LE) || postcard body`, the checksum covering the column
//! family, the key and the body; it is verified on every read, and a mismatch is
//! [`StoreError::Corrupt`] naming the key (`log/42`), never a panic and never skipped.
//! Snapshot data lives in files beside the database (see [`SnapshotWriter`]).
//!
//! ## Architecture
//!
//! * `batch`: [`PersistBatch`] and the one validator every store uses (`Tail::plan`): a
//!   batch that would leave a gap, move a term backwards, change a vote within a term, lower
//!   or over-extend the commit index, or truncate or discard entries up to the persisted
//!   commit index is refused before anything is written. A batch is carried out in the order
//!   of the core's `Persist`: snapshot install, compaction, truncation, appends, hard state. [`MemStore`] and [`RocksStore`] share it, so the
//!   conformance suite holds them to identical behaviour.
//! * `store`: [`RocksStore`]. An in-memory `Tail` (snapshot, last index, runs of equal terms,
//!   configuration entries, hard state) answers `last_index`, `term` of recent entries and
//!   `initial_state` without I/O; it is replaced only after a write is durable. The log's writes
//!   are serialised by one lock and the state machine's by another (an apply does not wait for
//!   a log fsync); reads do not wait for fsyncs.
//! * `group`: [`GroupCommitter`], a writer thread that merges whatever is queued into one
//!   RocksDB write with one fsync and answers each submitter.
//! * `snapshot`: streamed, checksummed snapshot files.
//! * `store/install`: a snapshot's state-machine data installed in several writes behind a
//!   persisted *install in progress* marker ([`RocksStore::begin_sm_install`]).
//! * `store/view`: [`SmView`], a consistent read-only view of the state machine at one applied
//!   index (a RocksDB snapshot), read on other threads while applying goes on; never across an
//!   install.
//! * `codec`: keys and checksummed records.
//!
//! **Architecture invariants.** Nothing is acknowledged before the write-ahead log holding it
//! was fsynced (a write with `sync = true`, or an unsynced write followed by `FlushWAL(true)`). A failed write poisons the store: every later write fails with
//! [`StoreError::Poisoned`], because a disk that failed an fsync cannot be trusted (the node
//! restarts and recovers from what is on disk). Disk bytes are decoded with bounded lengths and
//! checked results only. No async runtime.
//!
//! [`quorate-core`]: https://docs.rs/quorate-core

mod batch;
mod codec;
#[cfg(test)]
mod disk_tests;
mod durable;
mod error;
pub mod faults;
mod group;
mod mem;
mod snapshot;
mod space;
mod store;
#[cfg(test)]
mod testdir;
#[cfg(test)]
mod tests;

pub use batch::{BATCH_BYTES_MAX, BATCH_ENTRIES_MAX, DurableLog, PersistBatch, SmOp};
pub use durable::{LOST_STATE_FILE, LostState, LostStateRecord, MARK_FILE, Mark};
pub use error::StoreError;
pub use group::{Completion, GroupCommitter, GroupOptions, TrySubmitError};
pub use mem::MemStore;
pub use snapshot::{
    SNAPSHOT_META_BYTES_MAX, SNAPSHOT_SYNC_BYTES, SnapshotFile, SnapshotReader, SnapshotWriter,
    file_head as snapshot_file_head,
};
pub use space::{check_free_space, free_space_bytes};
pub use store::{
    APPLY_OPS_MAX, BLOCK_CACHE_BYTES_DEFAULT, BLOCK_CACHE_BYTES_MAX, BLOCK_CACHE_BYTES_MIN,
    DURABLE_MARK_INTERVAL_DEFAULT, INSTALL_BATCH_BYTES_MAX, OPEN_SCAN_ENTRIES_MAX, RocksStore, SM_DAMAGED_FILE,
    SM_KEY_BYTES_MAX, SM_SCAN_PAIRS_MAX, SM_VALUE_BYTES_MAX, SmPair, SmView, StoreOptions, VerifyReport,
    WRITE_BUFFER_BYTES_DEFAULT, WRITE_BUFFER_BYTES_MAX, WRITE_BUFFER_BYTES_MIN, WriteFault,
};

/// The on-disk format this build writes, stamped into every store at creation. A store of a
/// newer format is refused with [`StoreError::FormatTooNew`]; an older one is migrated or
/// refused with [`StoreError::FormatUnsupported`] (there is no older format yet).
pub const FORMAT_VERSION: u32 = 1;
/// The format stamp of a store whose cluster has been finalized at cluster version 2 or later
/// ([`RocksStore::stamp_format`]): the same layout as [`FORMAT_VERSION`] (snapshot files keep
/// format 1), stamped so that binaries older than 0.2.0, which refuse any format above 1, can
/// no longer open data of a finalized cluster. This build opens both.
pub const FORMAT_VERSION_FINALIZED: u32 = 2;
