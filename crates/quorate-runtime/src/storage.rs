//! Durable storage of the Raft log, the hard state and the latest snapshot.

use quorate_core::Persist;
use quorate_log::{Data, Entry, EntryId, HardState, InitialState, LogIndex, MemLog, SnapshotMeta, StorageError, Term};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

/// Identifies one snapshot image in transfer: what it covers, its length and the CRC-32 of
/// all its bytes. Two images with the same header are the same bytes, so a transfer of one
/// can resume where a transfer of the other stopped (even from another leader).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SnapshotHeader {
    /// What the snapshot covers (its `last` entry is the snapshot's id).
    pub meta: SnapshotMeta,
    /// Length of the whole image in bytes.
    pub total_len: u64,
    /// CRC-32 (IEEE) of the whole image.
    pub checksum: u32,
}

impl SnapshotHeader {
    /// The header of an image of `total_len` bytes whose CRC-32 (IEEE) is `checksum`,
    /// covering `meta` (for an image read as a stream, not held in memory).
    #[must_use]
    pub fn new(meta: SnapshotMeta, total_len: u64, checksum: u32) -> SnapshotHeader {
        SnapshotHeader { meta, total_len, checksum }
    }

    /// The header of `data`, covering `meta`.
    #[must_use]
    pub fn of(meta: SnapshotMeta, data: &[u8]) -> SnapshotHeader {
        SnapshotHeader { meta, total_len: data.len() as u64, checksum: crc32fast::hash(data) }
    }
}

/// A stored snapshot image opened for reading at any offset: the leader reads chunks from it,
/// the runtime restores a state machine from it, the follower checks its staging through it.
/// Reads take `&self` (positioned reads), so one opened image serves several transfers. An
/// image opened before a newer snapshot replaced it stays readable while it is held (for a
/// file: the open handle keeps it).
pub trait SnapshotSource: Send + Sync + std::fmt::Debug {
    /// What the image covers, its length and its checksum.
    fn header(&self) -> &SnapshotHeader;

    /// Reads bytes of the image at `offset` into `buf`; fewer than `buf.len()` only at the
    /// image's end (0 at or past it).
    ///
    /// # Errors
    /// A failed read.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, StorageError>;

    /// Where, in the image, the bytes that were handed to the snapshot's writer
    /// ([`SnapshotSaver::save`]) lie: the whole image, unless the storage frames them
    /// (`RocksLog`'s images are whole snapshot files, a head before those bytes and a
    /// trailer after). The runtime restores from these bytes, and checks the whole image.
    fn content(&self) -> std::ops::Range<u64> {
        0..self.header().total_len
    }
}

/// Reads the image's bytes up to `content.start` and gives a reader of its content. A reader
/// that reaches the content's end reads the rest of the image first and fails there
/// (`InvalidData`) if the whole image does not check — as a reader of the whole image would —
/// so a consumer that reads to the end never accepts a damaged image.
pub(crate) fn content_reader<'r, 'a>(
    reader: &'r mut ImageReader<'a>,
    content: &std::ops::Range<u64>,
) -> std::io::Result<ContentReader<'r, 'a>> {
    use std::io::Read;
    let total = reader.source.header().total_len;
    if content.start > content.end || content.end > total {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("content {content:?} outside an image of {total} bytes"),
        ));
    }
    let skipped = std::io::copy(&mut (&mut *reader).take(content.start), &mut std::io::sink())?;
    if skipped != content.start {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the image ends before its content"));
    }
    Ok(ContentReader { inner: reader.take(content.end - content.start), checked: false })
}

/// The content of an image, read through its [`ImageReader`] (see [`content_reader`]).
pub(crate) struct ContentReader<'r, 'a> {
    inner: std::io::Take<&'r mut ImageReader<'a>>,
    checked: bool,
}

impl std::io::Read for ContentReader<'_, '_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(out)?;
        if n == 0 && !out.is_empty() && !self.checked {
            // The content's end: the rest of the image, and the whole image's check.
            self.inner.get_mut().finish()?;
            self.checked = true;
        }
        Ok(n)
    }
}

/// Stores the snapshots the runtime takes of the local state (see
/// [`LogStorage::snapshot_saver`]). It works beside the storage it came from, possibly on
/// another thread, while that storage installs snapshots received from a leader: a newer
/// snapshot always wins.
pub trait SnapshotSaver: Send {
    /// The index of the latest stored snapshot (taken or installed), `LogIndex::ZERO` if none.
    ///
    /// # Errors
    /// Storage that cannot be read.
    fn latest(&self) -> Result<LogIndex, StorageError>;

    /// Stores a snapshot of the local state: `write` streams the image into the writer it is
    /// given; the image is durable, and the latest snapshot, once this returns. Refused (an
    /// error, the stored snapshot kept) when a snapshot at `meta`'s index or above is stored
    /// already. A failure of `write` leaves the previous snapshot in place. The log is not
    /// compacted here: that comes later in a batch's `compact`.
    ///
    /// # Errors
    /// A failed write, or a snapshot not above the stored one.
    fn save(
        &mut self,
        meta: &SnapshotMeta,
        write: &mut dyn FnMut(&mut dyn std::io::Write) -> std::io::Result<()>,
    ) -> Result<(), StorageError>;
}

/// The error of a save at or below the stored snapshot.
pub(crate) fn not_above(meta: &SnapshotMeta, stored: LogIndex) -> StorageError {
    StorageError::Io(format!("a snapshot at {} is not above the stored one at {stored}", meta.last.index))
}

/// The runtime's storage: the Raft log and hard state (read by the core through
/// [`quorate_log::LogStorage`]), the latest snapshot image and the staging of the one being
/// received. Snapshot images are streams: written through a writer, read at offsets, never
/// handed around whole.
///
/// **Durability before return.** [`LogStorage::persist`], [`SnapshotSaver::save`],
/// [`LogStorage::begin_staging`] and [`LogStorage::append_staging`] return only once what they
/// wrote survives a crash (for `persist`: when `batch.sync` is set; a batch without `sync`
/// only moves the commit index, which may be lost). The runtime acknowledges nothing that
/// depends on a write — no vote, no append acknowledgement, no commit of the leader's own
/// entries, no staged offset — before it returned `Ok`. An error halts the node.
pub trait LogStorage: quorate_log::LogStorage + Send + 'static {
    /// Writes one batch atomically, in the order [`Persist`] documents: the snapshot install,
    /// the compaction, the entries (truncating any conflicting suffix first), then the hard
    /// state. An install (`batch.install`) takes the image from the staging, which must be
    /// complete and of that snapshot: the staged image becomes the latest snapshot and the
    /// staging is gone (a crash may leave the staging behind; the snapshot is then recorded
    /// and the runtime discards the leftover). Move the staged image rather than copy it:
    /// `RocksLog` (feature `rocksdb`) renames its staged file into place.
    fn persist(&mut self, batch: &Persist) -> Result<(), StorageError>;

    /// A writer of the snapshots the runtime takes of the local state, for the state
    /// machine's side of the replica (which may run on a thread of its own: the saver is
    /// `Send` and works beside this storage). Asked once, when the replica starts.
    fn snapshot_saver(&self) -> Box<dyn SnapshotSaver>;

    /// The latest snapshot's header (taken locally or installed from the leader), if any.
    fn snapshot(&self) -> Result<Option<SnapshotHeader>, StorageError>;

    /// The latest snapshot, opened for reading.
    fn open_snapshot(&self) -> Result<Option<Box<dyn SnapshotSource>>, StorageError>;

    /// The snapshot being received from the leader, if any: its header and how many of its
    /// bytes are staged durably (a prefix). At most one staging exists at a time; it survives
    /// a restart, so a transfer resumes from this offset.
    fn staging(&self) -> Result<Option<(SnapshotHeader, u64)>, StorageError>;

    /// The staged bytes, opened for reading (the runtime checks a complete staging's length,
    /// checksum and format through it before the install).
    fn open_staging(&self) -> Result<Option<Box<dyn SnapshotSource>>, StorageError>;

    /// Discards any staging and starts an empty one for `header`.
    fn begin_staging(&mut self, header: &SnapshotHeader) -> Result<(), StorageError>;

    /// Appends `bytes` to the staging at `offset`, which must be the staged length; returns
    /// once they are durable (the runtime then acknowledges the new length to the leader).
    fn append_staging(&mut self, offset: u64, bytes: &[u8]) -> Result<(), StorageError>;

    /// Discards the staging, if any.
    fn abort_staging(&mut self) -> Result<(), StorageError>;

    /// Gives the complete staging its final header `header` — the same snapshot and length,
    /// and the checksum of the bytes staged, which a snapshot stream
    /// ([`crate::TransferFormat::Stream`]) makes known only at its end. Durable on return.
    ///
    /// # Errors
    /// No complete staging of `header`'s snapshot and length, or an I/O failure.
    fn seal_staging(&mut self, header: &SnapshotHeader) -> Result<(), StorageError>;

    /// A writer of this storage's batches on a thread of its own, so that a replica goes on
    /// (sends, receives, proposes, hands out what is durable) while a batch is fsynced, and
    /// batches that queue meanwhile share the next fsync. `None` (the default): the replica
    /// writes each batch in its turn with [`LogStorage::persist`]. Asked once, when a host
    /// detaches the writes ([`crate::Replica::detach_writes`]; [`crate::Node`] does). The
    /// writer works beside this storage: what it wrote is what the storage reads back.
    ///
    /// # Errors
    /// The writer cannot be started.
    fn batch_writer(&self) -> Result<Option<Box<dyn BatchWriter>>, StorageError> {
        Ok(None)
    }

    /// What this storage lost of the state it had reported durable (a disk that dropped
    /// synced writes, found when it opened; `RocksLog` finds it by the store's durable mark
    /// and opens only with `StoreOptions::accept_lost_state`): the term, vote, last entry and
    /// commit index it had recorded. The replica then starts recovering
    /// ([`quorate_core::Config::recovering`], unless the host set it): it does not campaign
    /// and votes only for a candidate at least as up to date as the record, until a leader
    /// has caught it up. `None` (the default): nothing lost.
    fn lost_state(&self) -> Option<quorate_core::Recovering> {
        None
    }

    /// The core reported the recovery from [`LogStorage::lost_state`] complete: a leader
    /// caught this replica up and what the recovery rests on is durable. Forget the loss, so
    /// that the next start is a normal one. The default does nothing.
    ///
    /// # Errors
    /// The loss cannot be forgotten durably (the replica halts; a restart recovers again).
    fn recovered(&mut self) -> Result<(), StorageError> {
        Ok(())
    }
}

/// The outcome of a batch handed to a [`BatchWriter`]: called once, on any thread.
pub type BatchDone = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

/// Writes persist batches off the replica's turn ([`LogStorage::batch_writer`]). The batches
/// are one ordered stream: each is written, atomically and in the order of
/// [`LogStorage::persist`], after every batch submitted before it, and its outcome reported in
/// submission order; once one fails, every later one fails too (nothing after a failed batch
/// is written). A batch is reported `Ok` only once it is durable (when its `sync` is set).
/// The replica submits no install (it flushes the writer and writes an install itself, as the
/// staging it takes lives in the storage). Dropping the writer writes what was submitted
/// (reporting each outcome) and stops its thread.
pub trait BatchWriter: Send {
    /// Queues `batch`; `done` gets its outcome. May block while the writer's queue is full.
    ///
    /// # Errors
    /// The writer has stopped (then `done` is dropped uncalled).
    fn submit(&mut self, batch: Persist, done: BatchDone) -> Result<(), StorageError>;

    /// Returns once every batch submitted before is written and its outcome reported:
    /// `Err` if any of them failed.
    ///
    /// # Errors
    /// A submitted batch failed, or the writer has stopped.
    fn flush(&mut self) -> Result<(), StorageError>;
}

/// The error for a [`LogStorage::seal_staging`] of anything but a complete staging of
/// `header`'s snapshot and length.
pub(crate) fn check_seal(staging: Option<(&SnapshotHeader, u64)>, header: &SnapshotHeader) -> Result<(), StorageError> {
    match staging {
        Some((h, at)) if h.meta == header.meta && h.total_len == header.total_len && at == h.total_len => Ok(()),
        _ => Err(StorageError::Io(format!(
            "sealing a staging of snapshot {} ({} bytes) that is not staged complete",
            header.meta.last.index, header.total_len
        ))),
    }
}

/// The staging error for an append that does not continue the staged prefix.
pub(crate) fn staging_gap(staged: Option<u64>, offset: u64) -> StorageError {
    match staged {
        Some(at) => StorageError::Io(format!("staging append at {offset}, but {at} bytes are staged")),
        None => StorageError::Io(format!("staging append at {offset} without a staging")),
    }
}

/// An image held in memory, read through [`SnapshotSource`] like a file.
#[derive(Clone, Debug)]
pub(crate) struct MemImage {
    pub(crate) header: SnapshotHeader,
    pub(crate) data: Data,
}

impl SnapshotSource for MemImage {
    fn header(&self) -> &SnapshotHeader {
        &self.header
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, StorageError> {
        let len = self.data.len() as u64;
        if offset >= len {
            return Ok(0);
        }
        let lo = offset as usize;
        let n = buf.len().min(self.data.len() - lo);
        buf[..n].copy_from_slice(&self.data[lo..lo + n]);
        Ok(n)
    }
}

/// In-memory [`LogStorage`] over [`MemLog`], for tests and simulations. It keeps snapshot
/// images in memory but serves them through the same streaming interfaces as a disk.
///
/// "Durable" here means: kept by [`MemStorage::crash`], which models a machine crash by
/// dropping what was written without `sync` (the commit index of unsynced batches).
#[derive(Debug)]
pub struct MemStorage {
    log: MemLog,
    /// The latest snapshot, shared with this storage's [`SnapshotSaver`].
    snapshot: Arc<Mutex<Option<MemImage>>>,
    /// The snapshot being received and its staged bytes (kept by a crash: appends are
    /// durable).
    staging: Option<(SnapshotHeader, Vec<u8>)>,
    /// The commit index as of the last synced batch.
    synced_commit: LogIndex,
    /// Synced state this storage lost, as recorded before the loss
    /// ([`MemStorage::lose_synced_state`]), until the replica recovers.
    lost: Option<quorate_core::Recovering>,
}

impl MemStorage {
    /// Empty storage whose bootstrap configuration is `config` (the same on every founding
    /// member; a node joining later starts with `Configuration::default()`).
    #[must_use]
    pub fn new(config: quorate_log::Configuration) -> MemStorage {
        MemStorage {
            log: MemLog::new(config),
            snapshot: Arc::new(Mutex::new(None)),
            staging: None,
            synced_commit: LogIndex::ZERO,
            lost: None,
        }
    }

    /// Models a disk that lost synced writes, as a durable mark would find it: the log from
    /// `from` on is gone (never the snapshot; the commit index is lowered below the cut),
    /// and what the storage had recorded before the loss — term, vote, last entry, commit —
    /// is kept (lost again before the replica recovered: the records merge as quorate-storage's
    /// do — the higher term with its vote, the more up-to-date last entry by term then index,
    /// the higher commit — since the replica may have acknowledged entries past the first
    /// record meanwhile). A replica started on it recovers from that record
    /// ([`LogStorage::lost_state`]) until a leader has caught it up
    /// ([`LogStorage::recovered`] forgets it). For simulations and tests.
    pub fn lose_synced_state(&mut self, from: LogIndex) {
        let hs = self.log.hard_state();
        let snapshot = self.log.snapshot_meta().last;
        let last = self.log.all_entries().last().map_or(snapshot, Entry::id);
        let now = quorate_core::Recovering { term: hs.term, vote: hs.vote, last, commit: hs.commit };
        self.lost = Some(match self.lost {
            None => now,
            Some(r) => quorate_core::Recovering {
                term: r.term.max(now.term),
                vote: match r.term.cmp(&now.term) {
                    std::cmp::Ordering::Greater => r.vote,
                    std::cmp::Ordering::Equal => now.vote.or(r.vote),
                    std::cmp::Ordering::Less => now.vote,
                },
                // Raft's order (term, then index): a later term's entry at a lower index
                // replaced the longer tail, which never committed.
                last: r.last.max(now.last),
                commit: r.commit.max(now.commit),
            },
        });
        let from = from.max(snapshot.index.next());
        self.log.truncate_from(from);
        let kept = LogIndex(from.0 - 1);
        self.log.set_hard_state(HardState { commit: hs.commit.min(kept), ..hs });
        self.synced_commit = self.synced_commit.min(kept);
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<MemImage>> {
        lock(&self.snapshot)
    }

    /// Models a crash: whatever was written without `sync` is lost.
    pub fn crash(&mut self) {
        let mut hs = self.log.hard_state();
        hs.commit = hs.commit.min(self.synced_commit);
        self.log.set_hard_state(hs);
    }

    /// The underlying log.
    #[must_use]
    pub fn log(&self) -> &MemLog {
        &self.log
    }

    /// The latest snapshot's bytes (for tests: a disk would be read through
    /// [`LogStorage::open_snapshot`]).
    #[must_use]
    pub fn snapshot_bytes(&self) -> Option<(SnapshotHeader, Data)> {
        self.slot().as_ref().map(|i| (i.header.clone(), i.data.clone()))
    }
}

/// A copy is another disk: it shares nothing with the original (not even the snapshot a
/// saver of the original writes).
impl Clone for MemStorage {
    fn clone(&self) -> MemStorage {
        MemStorage {
            log: self.log.clone(),
            snapshot: Arc::new(Mutex::new(self.slot().clone())),
            staging: self.staging.clone(),
            synced_commit: self.synced_commit,
            lost: self.lost,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding it cannot leave the slot half-written (one assignment).
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// [`MemStorage`]'s saver: writes into the storage's snapshot slot.
#[derive(Debug)]
struct MemSaver {
    slot: Arc<Mutex<Option<MemImage>>>,
}

impl SnapshotSaver for MemSaver {
    fn latest(&self) -> Result<LogIndex, StorageError> {
        Ok(lock(&self.slot).as_ref().map_or(LogIndex::ZERO, |i| i.header.meta.last.index))
    }

    fn save(
        &mut self,
        meta: &SnapshotMeta,
        write: &mut dyn FnMut(&mut dyn std::io::Write) -> std::io::Result<()>,
    ) -> Result<(), StorageError> {
        let mut bytes = Vec::new();
        write(&mut bytes).map_err(|e| StorageError::Io(format!("writing the snapshot: {e}")))?;
        let header = SnapshotHeader::of(meta.clone(), &bytes);
        let mut slot = lock(&self.slot);
        let stored = slot.as_ref().map_or(LogIndex::ZERO, |i| i.header.meta.last.index);
        if meta.last.index <= stored {
            return Err(not_above(meta, stored));
        }
        *slot = Some(MemImage { header, data: Data::from(bytes) });
        Ok(())
    }
}

impl quorate_log::LogStorage for MemStorage {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        self.log.initial_state()
    }
    fn snapshot_last(&self) -> EntryId {
        self.log.snapshot_last()
    }
    fn last_index(&self) -> LogIndex {
        self.log.last_index()
    }
    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        self.log.term(index)
    }
    fn entries(&self, lo: LogIndex, hi: LogIndex, max_bytes: u64) -> Result<Vec<quorate_log::Entry>, StorageError> {
        self.log.entries(lo, hi, max_bytes)
    }
    fn snapshot_meta(&self) -> Result<SnapshotMeta, StorageError> {
        quorate_log::LogStorage::snapshot_meta(&self.log)
    }
}

impl LogStorage for MemStorage {
    fn lost_state(&self) -> Option<quorate_core::Recovering> {
        self.lost
    }
    fn recovered(&mut self) -> Result<(), StorageError> {
        self.lost = None;
        Ok(())
    }
    fn persist(&mut self, batch: &Persist) -> Result<(), StorageError> {
        if let Some(meta) = &batch.install {
            let image = match self.staging.take() {
                Some((h, bytes)) if h.meta == *meta && bytes.len() as u64 == h.total_len => {
                    MemImage { header: h, data: Data::from(bytes) }
                }
                other => {
                    self.staging = other;
                    return Err(StorageError::Io(format!(
                        "snapshot install at {} without a complete staging of it",
                        meta.last.index
                    )));
                }
            };
            self.log.apply_snapshot(meta.clone());
            *self.slot() = Some(image);
        }
        if let Some(meta) = &batch.compact {
            self.log.apply_snapshot(meta.clone());
        }
        self.log.append(&batch.entries)?;
        if let Some(hs) = batch.hard_state {
            self.log.set_hard_state(hs);
        }
        if batch.sync {
            self.synced_commit = self.log.hard_state().commit;
        }
        Ok(())
    }

    fn snapshot_saver(&self) -> Box<dyn SnapshotSaver> {
        Box::new(MemSaver { slot: self.snapshot.clone() })
    }

    fn snapshot(&self) -> Result<Option<SnapshotHeader>, StorageError> {
        Ok(self.slot().as_ref().map(|i| i.header.clone()))
    }

    fn open_snapshot(&self) -> Result<Option<Box<dyn SnapshotSource>>, StorageError> {
        Ok(self.slot().clone().map(|i| Box::new(i) as Box<dyn SnapshotSource>))
    }

    fn staging(&self) -> Result<Option<(SnapshotHeader, u64)>, StorageError> {
        Ok(self.staging.as_ref().map(|(h, b)| (h.clone(), b.len() as u64)))
    }

    fn open_staging(&self) -> Result<Option<Box<dyn SnapshotSource>>, StorageError> {
        Ok(self.staging.as_ref().map(|(h, b)| {
            Box::new(MemImage { header: h.clone(), data: Data::copy_from(b) }) as Box<dyn SnapshotSource>
        }))
    }

    fn begin_staging(&mut self, header: &SnapshotHeader) -> Result<(), StorageError> {
        self.staging = Some((header.clone(), Vec::new()));
        Ok(())
    }

    fn append_staging(&mut self, offset: u64, bytes: &[u8]) -> Result<(), StorageError> {
        match &mut self.staging {
            Some((_, staged)) if staged.len() as u64 == offset => {
                staged.extend_from_slice(bytes);
                Ok(())
            }
            other => Err(staging_gap(other.as_ref().map(|(_, b)| b.len() as u64), offset)),
        }
    }

    fn abort_staging(&mut self) -> Result<(), StorageError> {
        self.staging = None;
        Ok(())
    }

    fn seal_staging(&mut self, header: &SnapshotHeader) -> Result<(), StorageError> {
        check_seal(self.staging.as_ref().map(|(h, b)| (h, b.len() as u64)), header)?;
        if let Some((h, _)) = &mut self.staging {
            *h = header.clone();
        }
        Ok(())
    }
}

/// A [`MemStorage`] whose [`BatchWriter`] only queues the batches: the host — a simulator, a
/// test — writes them when it chooses ([`DeferredStorage::write`]) or fails them
/// ([`DeferredStorage::fail`]), so a replica's detached writes
/// ([`crate::Replica::detach_writes`]) interleave with messages, proposals and crashes
/// deterministically. Without detached writes it is a [`MemStorage`] (batches written in the
/// turn).
///
/// A clone is a handle to the same disk and queue (unlike a [`MemStorage`]'s). The writer
/// keeps the [`BatchWriter`] contract: batches are written in submission order and reported in
/// that order, a flush writes every queued batch, once a batch failed every later one fails
/// too, and dropping the writer writes what is queued. So a crash is modelled by copying the
/// disk ([`DeferredStorage::disk`], without the queue) *before* the replica (and its writer)
/// is dropped, and starting the next replica over a new `DeferredStorage` of that copy. One
/// writer at a time ([`LogStorage::batch_writer`] refuses a second while the first lives).
/// Writes, failures and reports are serialized (a report is made before the next write takes
/// its batches), so the host may write from another thread than the replica's — but never
/// from within a report.
#[derive(Clone)]
pub struct DeferredStorage {
    shared: Arc<Mutex<Deferred>>,
    /// Held while batches are taken from the queue and reported, so that reports keep the
    /// queue's order whoever writes.
    reporting: Arc<Mutex<()>>,
}

/// What a [`DeferredStorage`]'s handles share.
struct Deferred {
    disk: MemStorage,
    queued: std::collections::VecDeque<(Persist, BatchDone)>,
    /// A batch failed: every later one fails too.
    failed: bool,
    /// Batches the writer's flushes took (written, or failed).
    flushed: u64,
    /// A writer of this storage lives.
    writer: bool,
}

impl std::fmt::Debug for DeferredStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = lock(&self.shared);
        f.debug_struct("DeferredStorage")
            .field("disk", &d.disk)
            .field("queued", &d.queued.len())
            .field("failed", &d.failed)
            .field("flushed", &d.flushed)
            .finish()
    }
}

impl DeferredStorage {
    /// Defers the writes of batches to `disk`.
    #[must_use]
    pub fn new(disk: MemStorage) -> DeferredStorage {
        DeferredStorage {
            shared: Arc::new(Mutex::new(Deferred {
                disk,
                queued: std::collections::VecDeque::new(),
                failed: false,
                flushed: 0,
                writer: false,
            })),
            reporting: Arc::new(Mutex::new(())),
        }
    }

    /// A copy of the disk as written so far (what a crash keeps of it, after
    /// [`MemStorage::crash`]); queued batches are not on it.
    #[must_use]
    pub fn disk(&self) -> MemStorage {
        lock(&self.shared).disk.clone()
    }

    /// Batches queued and not yet written.
    #[must_use]
    pub fn queued(&self) -> usize {
        lock(&self.shared).queued.len()
    }

    /// Batches the writer's flushes took, written or failed (a replica flushes before it writes
    /// an install).
    #[must_use]
    pub fn flushed(&self) -> u64 {
        lock(&self.shared).flushed
    }

    /// Writes the `n` oldest queued batches (fewer if fewer are queued), in order, and
    /// reports each: `Ok` once written, or the disk's error (then this batch and every later
    /// one fail). Returns how many were reported. The reports are made with no lock held.
    pub fn write(&self, n: usize) -> usize {
        let _reporting = lock(&self.reporting);
        let mut done = Vec::new();
        {
            let mut d = lock(&self.shared);
            for _ in 0..n {
                let Some((batch, report)) = d.queued.pop_front() else { break };
                let r = if d.failed { Err(failed()) } else { d.disk.persist(&batch) };
                d.failed |= r.is_err();
                done.push((report, r));
            }
        }
        let count = done.len();
        for (report, r) in done {
            report(r);
        }
        count
    }

    /// Fails every queued batch (a disk that stopped writing), and every batch queued later.
    /// Returns how many were reported.
    pub fn fail(&self) -> usize {
        let _reporting = lock(&self.reporting);
        let queued: Vec<_> = {
            let mut d = lock(&self.shared);
            d.failed = true;
            d.queued.drain(..).collect()
        };
        let count = queued.len();
        for (_, report) in queued {
            report(Err(failed()));
        }
        count
    }

    /// Takes the queued batches out unwritten, with their reports (to drop them, as a dead
    /// writer thread would, or to report them out of order). The writer is then dead: every
    /// later batch and flush fails.
    pub fn take_queued(&self) -> Vec<(Persist, BatchDone)> {
        let mut d = lock(&self.shared);
        d.failed = true;
        d.queued.drain(..).collect()
    }
}

fn failed() -> StorageError {
    StorageError::Io("the disk failed an earlier batch".into())
}

/// [`DeferredStorage`]'s writer: queues.
struct DeferredWriter(DeferredStorage);

impl BatchWriter for DeferredWriter {
    fn submit(&mut self, batch: Persist, done: BatchDone) -> Result<(), StorageError> {
        lock(&self.0.shared).queued.push_back((batch, done));
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StorageError> {
        let took = self.0.write(usize::MAX) as u64;
        let mut d = lock(&self.0.shared);
        d.flushed += took;
        if d.failed { Err(failed()) } else { Ok(()) }
    }
}

/// Writes what is queued, as the contract says of a writer dropped.
impl Drop for DeferredWriter {
    fn drop(&mut self) {
        self.0.write(usize::MAX);
        lock(&self.0.shared).writer = false;
    }
}

impl quorate_log::LogStorage for DeferredStorage {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        lock(&self.shared).disk.initial_state()
    }
    fn snapshot_last(&self) -> EntryId {
        lock(&self.shared).disk.snapshot_last()
    }
    fn last_index(&self) -> LogIndex {
        lock(&self.shared).disk.last_index()
    }
    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        lock(&self.shared).disk.term(index)
    }
    fn entries(&self, lo: LogIndex, hi: LogIndex, max_bytes: u64) -> Result<Vec<quorate_log::Entry>, StorageError> {
        lock(&self.shared).disk.entries(lo, hi, max_bytes)
    }
    fn snapshot_meta(&self) -> Result<SnapshotMeta, StorageError> {
        quorate_log::LogStorage::snapshot_meta(&lock(&self.shared).disk)
    }
}

impl LogStorage for DeferredStorage {
    fn persist(&mut self, batch: &Persist) -> Result<(), StorageError> {
        lock(&self.shared).disk.persist(batch)
    }
    fn snapshot_saver(&self) -> Box<dyn SnapshotSaver> {
        lock(&self.shared).disk.snapshot_saver()
    }
    fn snapshot(&self) -> Result<Option<SnapshotHeader>, StorageError> {
        lock(&self.shared).disk.snapshot()
    }
    fn open_snapshot(&self) -> Result<Option<Box<dyn SnapshotSource>>, StorageError> {
        lock(&self.shared).disk.open_snapshot()
    }
    fn staging(&self) -> Result<Option<(SnapshotHeader, u64)>, StorageError> {
        lock(&self.shared).disk.staging()
    }
    fn open_staging(&self) -> Result<Option<Box<dyn SnapshotSource>>, StorageError> {
        lock(&self.shared).disk.open_staging()
    }
    fn begin_staging(&mut self, header: &SnapshotHeader) -> Result<(), StorageError> {
        lock(&self.shared).disk.begin_staging(header)
    }
    fn append_staging(&mut self, offset: u64, bytes: &[u8]) -> Result<(), StorageError> {
        lock(&self.shared).disk.append_staging(offset, bytes)
    }
    fn abort_staging(&mut self) -> Result<(), StorageError> {
        lock(&self.shared).disk.abort_staging()
    }
    fn seal_staging(&mut self, header: &SnapshotHeader) -> Result<(), StorageError> {
        lock(&self.shared).disk.seal_staging(header)
    }
    fn batch_writer(&self) -> Result<Option<Box<dyn BatchWriter>>, StorageError> {
        let mut d = lock(&self.shared);
        if d.writer {
            return Err(StorageError::Io("this storage's batch writer is taken already".into()));
        }
        d.writer = true;
        drop(d);
        Ok(Some(Box::new(DeferredWriter(self.clone()))))
    }
    fn lost_state(&self) -> Option<quorate_core::Recovering> {
        lock(&self.shared).disk.lost_state()
    }
    fn recovered(&mut self) -> Result<(), StorageError> {
        lock(&self.shared).disk.recovered()
    }
}

/// Reads a snapshot image from the start as a stream, over a [`SnapshotSource`], in pieces of
/// [`IMAGE_READ_BYTES`]; checks the image's length and CRC-32 against its header when it
/// reaches the end (a mismatch is an `InvalidData` error from `read`, so a consumer that reads
/// to the end never accepts a damaged image).
#[derive(Debug)]
pub(crate) struct ImageReader<'a> {
    source: &'a dyn SnapshotSource,
    offset: u64,
    hasher: crc32fast::Hasher,
    buf: Vec<u8>,
    pos: usize,
    checked: bool,
}

/// Bytes an [`ImageReader`] reads from its source at once.
pub(crate) const IMAGE_READ_BYTES: usize = 64 << 10;

impl<'a> ImageReader<'a> {
    pub(crate) fn new(source: &'a dyn SnapshotSource) -> ImageReader<'a> {
        ImageReader { source, offset: 0, hasher: crc32fast::Hasher::new(), buf: Vec::new(), pos: 0, checked: false }
    }

    /// Reads (and checks) the rest of the image.
    pub(crate) fn finish(&mut self) -> std::io::Result<()> {
        std::io::copy(self, &mut std::io::sink()).map(|_| ())
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let h = self.source.header();
        let left = h.total_len.saturating_sub(self.offset);
        if left == 0 {
            if !self.checked {
                let got = self.hasher.clone().finalize();
                if got != h.checksum {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "snapshot at {}: checksum {got:#010x}, expected {:#010x}",
                            h.meta.last.index, h.checksum
                        ),
                    ));
                }
                self.checked = true;
            }
            self.buf.clear();
            self.pos = 0;
            return Ok(());
        }
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(IMAGE_READ_BYTES);
        self.buf.resize(n, 0);
        let got = self.source.read_at(self.offset, &mut self.buf).map_err(std::io::Error::other)?;
        if got == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("snapshot at {} ends at {} of {} bytes", h.meta.last.index, self.offset, h.total_len),
            ));
        }
        self.buf.truncate(got);
        self.hasher.update(&self.buf);
        self.offset += got as u64;
        self.pos = 0;
        Ok(())
    }
}

impl std::io::Read for ImageReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.pos == self.buf.len() {
            self.fill()?;
            if self.buf.is_empty() {
                return Ok(0);
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorate_log::Configuration;
    use quorate_log::LogStorage as _;
    use std::io::{ErrorKind, Read};

    /// A batch that sets the term to `term` (no entries).
    fn term_batch(io: u64, term: u64) -> Persist {
        let hard_state = quorate_log::HardState { term: Term(term), vote: None, commit: LogIndex::ZERO };
        Persist {
            io: quorate_core::IoId(io),
            hard_state: Some(hard_state),
            entries: Vec::new(),
            sync: true,
            install: None,
            compact: None,
        }
    }

    type Outcomes = Arc<Mutex<Vec<(u64, bool)>>>;

    fn note(outcomes: &Outcomes, io: u64) -> BatchDone {
        let outcomes = outcomes.clone();
        Box::new(move |r| outcomes.lock().unwrap().push((io, r.is_ok())))
    }

    /// `DeferredStorage`'s writer keeps the `BatchWriter` contract where a host could trip on
    /// it: one writer at a time, a dropped writer writes what is queued, a batch after a
    /// failure fails, and a writer whose batches were taken out is dead.
    #[test]
    fn a_deferred_storages_writer_keeps_the_batch_writer_contract() {
        let conf = Configuration::with_voters([quorate_log::NodeId::new(1).unwrap()]).unwrap();
        let disk = DeferredStorage::new(MemStorage::new(conf));
        let outcomes = Outcomes::default();
        let mut w = disk.batch_writer().unwrap().unwrap();
        assert!(disk.batch_writer().is_err(), "one writer at a time");
        w.submit(term_batch(1, 3), note(&outcomes, 1)).unwrap();
        w.submit(term_batch(2, 4), note(&outcomes, 2)).unwrap();
        assert_eq!(disk.write(1), 1);
        assert_eq!(disk.disk().initial_state().unwrap().hard_state.term, Term(3));
        drop(w);
        assert_eq!(*outcomes.lock().unwrap(), vec![(1, true), (2, true)], "the dropped writer wrote the rest");
        assert_eq!(disk.disk().initial_state().unwrap().hard_state.term, Term(4));

        let mut w = disk.batch_writer().unwrap().unwrap();
        w.submit(term_batch(3, 5), note(&outcomes, 3)).unwrap();
        assert_eq!(disk.fail(), 1);
        w.submit(term_batch(4, 6), note(&outcomes, 4)).unwrap();
        assert!(w.flush().is_err(), "after a failure");
        assert_eq!(outcomes.lock().unwrap()[2..], [(3, false), (4, false)]);
        assert_eq!(disk.disk().initial_state().unwrap().hard_state.term, Term(4), "nothing written after the failure");
        drop(w);

        let disk = DeferredStorage::new(disk.disk());
        let mut w = disk.batch_writer().unwrap().unwrap();
        w.submit(term_batch(5, 7), note(&outcomes, 5)).unwrap();
        drop(disk.take_queued());
        assert!(w.flush().is_err(), "a writer whose batches were taken out is dead");
        assert_eq!(outcomes.lock().unwrap().len(), 4, "a taken batch is reported by whoever took it");
    }

    /// An image whose content lies inside it, between framing bytes.
    #[derive(Debug)]
    struct Framed(MemImage, std::ops::Range<u64>);

    impl SnapshotSource for Framed {
        fn header(&self) -> &SnapshotHeader {
            self.0.header()
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, StorageError> {
            self.0.read_at(offset, buf)
        }
        fn content(&self) -> std::ops::Range<u64> {
            self.1.clone()
        }
    }

    /// A reader of an image's content gives exactly the content, and — like a reader of the
    /// whole image — fails at the content's end if the whole image does not check: a state
    /// machine that reads to the end never accepts a damaged image. A content outside the
    /// image is an error, not an empty stream.
    #[test]
    fn a_content_reader_gives_the_content_and_fails_at_its_end_on_a_damaged_image() {
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let meta = SnapshotMeta { last: EntryId::new(Term(1), LogIndex(9)), config: Configuration::default() };
        let header = SnapshotHeader::of(meta, &bytes);
        let image =
            |h: SnapshotHeader, content| Framed(MemImage { header: h, data: Data::from(bytes.clone()) }, content);
        let good = image(header.clone(), 10..99_990);
        let mut reader = ImageReader::new(&good);
        let mut out = Vec::new();
        content_reader(&mut reader, &good.content()).expect("a content").read_to_end(&mut out).expect("checks");
        assert_eq!(out, &bytes[10..99_990]);
        let mut damaged = header.clone();
        damaged.checksum ^= 1;
        let bad = image(damaged, 10..99_990);
        let mut reader = ImageReader::new(&bad);
        let e = content_reader(&mut reader, &bad.content()).expect("a content").read_to_end(&mut Vec::new());
        assert_eq!(e.expect_err("damaged").kind(), ErrorKind::InvalidData, "at the content's end");
        for outside in [10..100_001, std::ops::Range { start: 50, end: 40 }] {
            let bad = image(header.clone(), outside.clone());
            let mut reader = ImageReader::new(&bad);
            assert!(content_reader(&mut reader, &outside).is_err(), "{outside:?}");
        }
    }

    #[test]
    fn an_image_reader_streams_the_image_and_refuses_a_damaged_or_short_one_at_its_end() {
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let meta = SnapshotMeta { last: EntryId::new(Term(1), LogIndex(9)), config: Configuration::default() };
        let header = SnapshotHeader::of(meta, &bytes);
        let good = MemImage { header: header.clone(), data: Data::from(bytes.clone()) };
        let mut out = Vec::new();
        ImageReader::new(&good).read_to_end(&mut out).expect("a whole image");
        assert_eq!(out, bytes);
        // Read in small pieces: the same bytes.
        let mut reader = ImageReader::new(&good);
        let mut piece = [0u8; 1_000];
        reader.read_exact(&mut piece).expect("reads");
        assert_eq!(&piece[..], &bytes[..1_000]);
        reader.finish().expect("the rest checks");
        let mut flipped = bytes.clone();
        flipped[150_000] ^= 1;
        let damaged = MemImage { header: header.clone(), data: Data::from(flipped) };
        let e = ImageReader::new(&damaged).read_to_end(&mut Vec::new()).expect_err("damaged");
        assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
        let short = MemImage { header, data: Data::copy_from(&bytes[..1_000]) };
        let e = ImageReader::new(&short).finish().expect_err("short");
        assert_eq!(e.kind(), ErrorKind::UnexpectedEof, "{e}");
    }
}
