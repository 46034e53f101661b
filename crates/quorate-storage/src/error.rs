//! The error type of the durable store.

use quorate_log::{LogIndex, StorageError};

/// Why a store operation failed.
///
/// Reads report [`Compacted`](StoreError::Compacted), [`Unavailable`](StoreError::Unavailable),
/// [`Corrupt`](StoreError::Corrupt) or [`Io`](StoreError::Io). Writes additionally report
/// [`Poisoned`](StoreError::Poisoned) once an earlier write failed,
/// [`BelowFreeSpaceFloor`](StoreError::BelowFreeSpaceFloor) when the disk is nearly full (the
/// node should refuse new work, not crash), and [`InvalidBatch`](StoreError::InvalidBatch)
/// when the caller asked for something that would break a log invariant.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The requested index was compacted into a snapshot.
    #[error("index {0} has been compacted into a snapshot")]
    Compacted(LogIndex),
    /// The requested index is beyond the end of the log (or a write would leave a gap).
    #[error("index {0} is beyond the last index of the log")]
    Unavailable(LogIndex),
    /// A stored record failed verification (checksum, decoding, or a gap in the log).
    #[error("corrupt record at {key}: {detail}")]
    Corrupt {
        /// Which record, human-readable: `log/42`, `meta/hard`, `sm/user-key`, ...
        key: String,
        /// What was wrong.
        detail: String,
    },
    /// The storage engine or the file system failed.
    #[error("storage I/O error: {0}")]
    Io(String),
    /// An earlier write or fsync failed, so nothing written since can be trusted; every write
    /// is refused until the process restarts and recovers from what is on disk.
    #[error("the store failed earlier and refuses writes until restarted: {cause}")]
    Poisoned {
        /// The failure that poisoned the store.
        cause: String,
    },
    /// Free space on the store's file system is below the configured floor; the write was
    /// refused and nothing was changed.
    #[error("free disk space is {free} bytes, below the floor of {floor} bytes; write refused")]
    BelowFreeSpaceFloor {
        /// Bytes available to the process.
        free: u64,
        /// The configured floor.
        floor: u64,
    },
    /// The data was written by a newer release with a format this build does not know.
    #[error(
        "the data directory has format version {found}, newer than version {supported} \
         supported by this build; run a release that supports format {found}"
    )]
    FormatTooNew {
        /// The version found on disk.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// The data has an older format for which this build has no migration.
    #[error(
        "the data directory has format version {found}, which this build (format {supported}) \
         cannot migrate"
    )]
    FormatUnsupported {
        /// The version found on disk.
        found: u32,
        /// The version this build writes.
        supported: u32,
    },
    /// The write would break a log invariant (a gap, a term going backwards, truncating
    /// committed entries, a vote changing within a term, ...). Nothing was written.
    #[error("invalid write: {0}")]
    InvalidBatch(String),
    /// The group committer's writer thread has stopped.
    #[error("the group committer has stopped")]
    Stopped,
    /// The file system ran out of space during the write (RocksDB's own `ENOSPC`, in the
    /// write or in a background flush that stopped writes). Nothing of the write is applied:
    /// the store stays usable, and RocksDB resumes on its own once space is freed (its
    /// `SstFileManager` polls free space), so the same write may simply be retried.
    #[error("the disk is full ({0}); nothing was written; retry once space is freed")]
    NoSpace(String),
    /// A batch written before this one in the same ordered stream (one
    /// [`RocksStore::write_many`](crate::RocksStore::write_many) call, or a
    /// [`GroupCommitter`](crate::GroupCommitter)) was refused, so this one, which was planned
    /// after it, was not written either.
    #[error("not written: an earlier batch of the same stream was refused ({cause})")]
    EarlierBatchFailed {
        /// Why the earlier batch was refused.
        cause: String,
    },
    /// Opening found less durable state than a synced record kept outside the write-ahead log
    /// says was there: acknowledged Raft state (a term, a vote, log entries or the commit
    /// index) was lost. A node must not vote or serve on this data.
    #[error("{0}")]
    LostSyncedState(Box<crate::durable::LostState>),
}

impl StoreError {
    /// Whether the error means the store cannot be written to any more (restart needed).
    #[must_use]
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            StoreError::Poisoned { .. }
                | StoreError::Io(_)
                | StoreError::Corrupt { .. }
                | StoreError::LostSyncedState(_)
                | StoreError::EarlierBatchFailed { .. }
        )
    }

    /// Whether the write was refused for disk space ([`BelowFreeSpaceFloor`] or [`NoSpace`])
    /// and changed nothing: the same write may be retried once space is freed.
    ///
    /// [`BelowFreeSpaceFloor`]: StoreError::BelowFreeSpaceFloor
    /// [`NoSpace`]: StoreError::NoSpace
    #[must_use]
    pub fn is_space(&self) -> bool {
        matches!(self, StoreError::BelowFreeSpaceFloor { .. } | StoreError::NoSpace(_))
    }
}

impl From<StoreError> for StorageError {
    fn from(e: StoreError) -> StorageError {
        match e {
            StoreError::Compacted(i) => StorageError::Compacted(i),
            StoreError::Unavailable(i) => StorageError::Unavailable(i),
            StoreError::Corrupt { key, detail } => StorageError::Corrupt { key, detail },
            other => StorageError::Io(other.to_string()),
        }
    }
}

impl From<StorageError> for StoreError {
    fn from(e: StorageError) -> StoreError {
        match e {
            StorageError::Compacted(i) => StoreError::Compacted(i),
            StorageError::Unavailable(i) => StoreError::Unavailable(i),
            StorageError::Corrupt { key, detail } => StoreError::Corrupt { key, detail },
            StorageError::Io(s) => StoreError::Io(s),
            other => StoreError::Io(other.to_string()),
        }
    }
}

/// The text RocksDB puts in every out-of-space status (`IOStatus::NoSpace`, from `ENOSPC`).
pub(crate) const NO_SPACE_TEXT: &str = "No space left on device";

impl From<rocksdb::Error> for StoreError {
    fn from(e: rocksdb::Error) -> StoreError {
        let kind = e.kind();
        let text = e.into_string();
        if text.contains(NO_SPACE_TEXT) {
            StoreError::NoSpace(text)
        } else if kind == rocksdb::ErrorKind::Corruption {
            // A block or file checksum, a WAL record or the MANIFEST: RocksDB's own
            // verification, named in the text (file and offset).
            StoreError::Corrupt { key: "rocksdb".into(), detail: text }
        } else {
            StoreError::Io(text)
        }
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> StoreError {
        if e.kind() == std::io::ErrorKind::StorageFull {
            StoreError::NoSpace(e.to_string())
        } else {
            StoreError::Io(e.to_string())
        }
    }
}
