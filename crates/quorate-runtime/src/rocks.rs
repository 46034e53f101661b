//! [`RocksLog`]: the runtime's [`LogStorage`](crate::LogStorage) over quorate-storage's
//! RocksDB store (cargo feature `rocksdb`).

use crate::storage::{BatchDone, BatchWriter, LogStorage, SnapshotHeader, SnapshotSaver, SnapshotSource, staging_gap};
use quorate_core::Persist;
use quorate_log::snapshot_file::{self as layout, HEAD_BYTES, TRAILER_BYTES};
use quorate_log::{Entry, EntryId, InitialState, LogIndex, SnapshotMeta, StorageError, Term};
use quorate_storage::{GroupCommitter, GroupOptions, PersistBatch, RocksStore, StoreError, StoreOptions};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The directory (in the store's) of the snapshot being received: the staged file and
/// `state`. The staged file is a snapshot file in the making: with [`ImageLayout::Data`], the
/// head of a snapshot file of the image's metadata
/// ([`quorate_storage::snapshot_file_head`]) and then the image's bytes as they arrive (the
/// install appends the trailer: [`RocksStore::adopt_snapshot`]); with [`ImageLayout::File`],
/// the image's bytes alone, the image being a whole snapshot file (the install checks its
/// framing: [`RocksStore::adopt_snapshot_file`]). Bytes are appended and fsynced as they
/// arrive; `state` holds the header and the durable length of the image, replaced atomically
/// after each append; bytes of the file beyond that length are cut off when the store opens.
/// The install renames the file into the store's snapshot directory: the image is written
/// once, when it arrives, and never copied.
const STAGING_DIR: &str = "runtime-staging";

/// What a [`RocksLog`]'s snapshot images are — what its replicas send each other, so every
/// member of a cluster uses the same one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImageLayout {
    /// The state machine's bytes (and the runtime's part), as [`crate::MemStorage`]'s images
    /// are: replicas on either storage exchange snapshots.
    #[default]
    Data,
    /// Whole quorate-storage snapshot files (head with the metadata, the data, the trailer
    /// with the data's length and CRC-32) — what the Quorate node's peers send, so a host
    /// whose released nodes transfer snapshot files talks to them. The state machine still
    /// writes and restores only its bytes ([`crate::SnapshotSource::content`]).
    File,
}

impl ImageLayout {
    /// The staged file's name in [`STAGING_DIR`]: a staging of the other layout (or of an
    /// earlier one, `data`) has none, and is discarded when the store opens (the leader sends
    /// that snapshot again).
    fn staging_file(self) -> &'static str {
        match self {
            ImageLayout::Data => "image",
            ImageLayout::File => "file",
        }
    }
}

/// Bytes of the head of `meta`'s snapshot file (fixed part, metadata and its CRC).
fn head_len(meta: &SnapshotMeta) -> Result<u64, StoreError> {
    Ok(quorate_storage::snapshot_file_head(meta)?.len() as u64)
}

/// The runtime's storage on a [`RocksStore`]: every batch is one atomic RocksDB write, fsynced
/// before [`LogStorage::persist`] returns (unless the core marked it as only moving the commit
/// index); snapshots are checksummed files beside the database, written as streams and
/// fsynced before they are recorded, and read at offsets (positioned reads on an open file:
/// a transfer keeps reading an image that a newer snapshot replaced). Neither side of a
/// transfer reads an image into memory.
#[derive(Debug)]
pub struct RocksLog {
    store: Arc<RocksStore>,
    staging_dir: PathBuf,
    staging: Option<(SnapshotHeader, u64)>,
    layout: ImageLayout,
    /// Told of every batch the batch writer wrote ([`RocksLog::observe_writes`]).
    observer: Option<WriteObserver>,
}

/// A batch [`RocksLog`]'s batch writer has written or failed, as its observer
/// ([`RocksLog::observe_writes`]) is told before the batch's report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WrittenBatch {
    /// Fsynced (a batch that only moves the commit index is not).
    pub synced: bool,
    /// It compacted the log.
    pub compacted: bool,
    /// From its submission to the writer until written: the wait behind earlier batches and
    /// the write with its fsync (shared with the batches merged into the same write).
    pub took: Duration,
    /// Written; `false`: it failed (the replica halts on its report).
    pub ok: bool,
}

/// The observer of [`RocksLog::observe_writes`].
#[derive(Clone)]
struct WriteObserver(Arc<dyn Fn(&WrittenBatch) + Send + Sync>);

impl std::fmt::Debug for WriteObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteObserver")
    }
}

impl RocksLog {
    /// Opens (or creates) the store in `dir`. `options` carry the bootstrap configuration of a
    /// new store ([`StoreOptions::with_bootstrap`]). A store that lost synced state (its
    /// durable mark is ahead of what it holds) opens only with
    /// [`StoreOptions::accept_lost_state`]; the replica then recovers from what the mark had
    /// recorded ([`LogStorage::lost_state`]).
    pub fn open(dir: impl AsRef<Path>, options: StoreOptions) -> Result<RocksLog, StoreError> {
        RocksLog::open_with_layout(dir, options, ImageLayout::Data)
    }

    /// [`RocksLog::open`], with images laid out as `layout`.
    pub fn open_with_layout(
        dir: impl AsRef<Path>,
        options: StoreOptions,
        layout: ImageLayout,
    ) -> Result<RocksLog, StoreError> {
        let store = RocksStore::open(dir, options)?;
        let staging_dir = store.dir().join(STAGING_DIR);
        let staging = load_staging(&staging_dir, layout)?;
        Ok(RocksLog { store: Arc::new(store), staging_dir, staging, layout, observer: None })
    }

    /// Calls `observe` for every batch the batch writer ([`LogStorage::batch_writer`]) has
    /// written or failed, on the writer's thread, before the batch is reported to the
    /// replica: for fsync metrics, or a host's fault injection (a sleep here is a slow disk:
    /// it holds back the batch's report and the writer's next write — and a replica's turn
    /// that flushes the writer before an install, or its shutdown, waits for it). Set it
    /// before the replica detaches its writes (`Node` does at its start). Writes the replica
    /// makes in its own turn (installs) and the writer's flushes are not observed.
    ///
    /// `observe` must not panic: the writer's thread would die with it, and the batches it
    /// held would be reported only as the writer stopping.
    pub fn observe_writes(&mut self, observe: impl Fn(&WrittenBatch) + Send + Sync + 'static) {
        self.observer = Some(WriteObserver(Arc::new(observe)));
    }

    /// What this log's snapshot images are.
    #[must_use]
    pub fn layout(&self) -> ImageLayout {
        self.layout
    }

    /// The staged file.
    fn staging_path(&self) -> PathBuf {
        self.staging_dir.join(self.layout.staging_file())
    }

    /// The store underneath, shared: a durable state machine keeps its state in the same
    /// store (its `sm` column family, written atomically with its applied index by
    /// [`RocksStore::apply`]).
    #[must_use]
    pub fn store(&self) -> &Arc<RocksStore> {
        &self.store
    }

    fn write_staging_state(&self, header: &SnapshotHeader, len: u64) -> Result<(), StorageError> {
        let mut bytes = postcard::to_allocvec(&(header, len)).map_err(|e| io_err("encoding the staging state", e))?;
        bytes.extend_from_slice(&crc32fast::hash(&bytes).to_le_bytes());
        let tmp = self.staging_dir.join("state.tmp");
        let mut f = File::create(&tmp).map_err(|e| io_err("writing the staging state", e))?;
        f.write_all(&bytes).and_then(|()| f.sync_all()).map_err(|e| io_err("writing the staging state", e))?;
        fs::rename(&tmp, self.staging_dir.join("state")).map_err(|e| io_err("replacing the staging state", e))?;
        fsync_dir(&self.staging_dir)
    }

    /// Makes the complete staging of `meta` the store's snapshot file: the staged file gets
    /// its trailer and is renamed into the snapshot directory — not copied. Durable on return.
    fn install_staging(&self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        let header = match &self.staging {
            Some((h, at)) if h.meta == *meta && *at == h.total_len => h.clone(),
            _ => {
                return Err(StorageError::Io(format!(
                    "snapshot install at {} without a complete staging of it",
                    meta.last.index
                )));
            }
        };
        let path = self.staging_path();
        match self.layout {
            ImageLayout::Data => {
                self.store.adopt_snapshot(&path, header.meta, header.total_len, header.checksum)?;
            }
            ImageLayout::File => {
                self.store.adopt_snapshot_file(&path, header.meta)?;
            }
        }
        Ok(())
    }
}

/// The store's batch of the core's `batch`, with its `entries` (taken out of it or copied).
fn store_batch(batch: &Persist, entries: Vec<Entry>) -> PersistBatch {
    PersistBatch {
        hard_state: batch.hard_state,
        truncate_from: entries.first().map(|e| e.index),
        entries,
        install: batch.install.clone(),
        compact: batch.compact.clone(),
        skip_fsync: !batch.sync,
    }
}

/// [`RocksLog`]'s [`BatchWriter`]: quorate-storage's group committer.
struct RocksWriter {
    committer: GroupCommitter,
    observer: Option<WriteObserver>,
}

impl BatchWriter for RocksWriter {
    fn submit(&mut self, mut batch: Persist, done: BatchDone) -> Result<(), StorageError> {
        if batch.install.is_some() {
            // The staging is the storage's: an install is written by `persist`.
            return Err(StorageError::Io("a snapshot install handed to the batch writer".into()));
        }
        let entries = std::mem::take(&mut batch.entries);
        let (synced, compacted, submitted) = (batch.sync, batch.compact.is_some(), Instant::now());
        let observer = self.observer.clone();
        Ok(self.committer.submit_with(store_batch(&batch, entries), move |r| {
            if let Some(WriteObserver(observe)) = observer {
                observe(&WrittenBatch { synced, compacted, took: submitted.elapsed(), ok: r.is_ok() });
            }
            done(r.map_err(StorageError::from));
        })?)
    }

    fn flush(&mut self) -> Result<(), StorageError> {
        // An empty batch, written after everything before it: once it is reported, so is
        // all that came before (a failure among them fails it too).
        Ok(self.committer.submit(PersistBatch { skip_fsync: true, ..PersistBatch::default() })?.wait()?)
    }
}

impl quorate_log::LogStorage for RocksLog {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        self.store.initial_state()
    }
    fn snapshot_last(&self) -> EntryId {
        self.store.snapshot_last()
    }
    fn last_index(&self) -> LogIndex {
        self.store.last_index()
    }
    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        self.store.term(index)
    }
    fn entries(&self, lo: LogIndex, hi: LogIndex, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        self.store.entries(lo, hi, max_bytes)
    }
    fn first_index(&self) -> LogIndex {
        self.store.first_index()
    }
    fn snapshot_meta(&self) -> Result<SnapshotMeta, StorageError> {
        self.store.snapshot_meta()
    }
}

impl LogStorage for RocksLog {
    fn persist(&mut self, batch: &Persist) -> Result<(), StorageError> {
        if let Some(meta) = &batch.install {
            // The file first: the batch that records the install must find it.
            self.install_staging(meta)?;
        }
        self.store.write(store_batch(batch, batch.entries.clone()))?;
        if batch.install.is_some() {
            // Installed: the staging is garbage (a crash before this removal leaves it behind,
            // and the runtime discards a staging it has committed past).
            self.abort_staging()?;
        }
        Ok(())
    }

    fn snapshot_saver(&self) -> Box<dyn SnapshotSaver> {
        Box::new(RocksSaver { store: self.store.clone() })
    }

    /// The store's group committer: batches queued while one write is fsynced share the next
    /// write and its fsync. A batch refused for disk space fails (the replica halts, as when
    /// it writes in its turn) rather than being written again until space comes back: a
    /// writer waiting for space would hold the replica's task in a flush or a full queue,
    /// beyond the reach of its shutdown.
    fn batch_writer(&self) -> Result<Option<Box<dyn BatchWriter>>, StorageError> {
        let mut options = GroupOptions::default();
        options.space_retry_interval = None;
        let committer = GroupCommitter::new(self.store.clone(), options)?;
        Ok(Some(Box::new(RocksWriter { committer, observer: self.observer.clone() })))
    }

    /// What the store's durable mark had recorded, if the store opened below it
    /// ([`RocksStore::lost_state`]; the evidence stays in its `lost-state` file until
    /// [`LogStorage::recovered`]).
    fn lost_state(&self) -> Option<quorate_core::Recovering> {
        let lost = self.store.lost_state()?;
        Some(quorate_core::Recovering { term: lost.term, vote: lost.vote, last: lost.last, commit: lost.commit })
    }

    /// Removes the evidence durably ([`RocksStore::recovered`]): the next open is a normal one.
    fn recovered(&mut self) -> Result<(), StorageError> {
        self.store.recovered().map_err(|e| io_err("recording the recovery from lost state", e))
    }

    fn snapshot(&self) -> Result<Option<SnapshotHeader>, StorageError> {
        Ok(self.open_snapshot()?.map(|s| s.header().clone()))
    }

    fn open_snapshot(&self) -> Result<Option<Box<dyn SnapshotSource>>, StorageError> {
        // The newest verified file the log agrees with (the recorded compaction point may
        // lag behind the newest snapshot by the core's compaction tail).
        let Some((_, path)) = self.store.usable_snapshot(LogIndex(u64::MAX))? else { return Ok(None) };
        Ok(Some(Box::new(FileImage::open_snapshot(&path, self.layout)?)))
    }

    fn open_staging(&self) -> Result<Option<Box<dyn SnapshotSource>>, StorageError> {
        let Some((header, staged)) = self.staging.clone() else { return Ok(None) };
        let name = "the staging file".to_owned();
        let mut file = File::open(self.staging_path()).map_err(|e| io_err("opening the staging file", e))?;
        if self.layout == ImageLayout::Data {
            let start = head_len(&header.meta)?;
            let content = 0..header.total_len;
            return Ok(Some(Box::new(FileImage { file, start, header, content, name })));
        }
        let content = if staged == header.total_len {
            // Complete: it must be a snapshot file of the header's snapshot, whose framing
            // gives the header's CRC. The reader checks the bytes against that CRC, and as CRCs
            // combine linearly, bytes that match it hold data whose CRC is the trailer's: the
            // file installed then reads back whole (and a leader cannot hand over a file
            // whose trailer lies about its data).
            let f = Framing::read(&mut file, header.total_len, &name)?;
            if f.meta != header.meta {
                return Err(StorageError::Io(format!("{name}: a snapshot file of another snapshot")));
            }
            if f.checksum != header.checksum {
                return Err(StorageError::Io(format!(
                    "{name}: its framing gives CRC-32 {:#010x}, the image's is {:#010x}",
                    f.checksum, header.checksum
                )));
            }
            f.content
        } else {
            let start = head_len(&header.meta)?;
            start..header.total_len.saturating_sub(TRAILER_BYTES).max(start)
        };
        Ok(Some(Box::new(FileImage { file, start: 0, header, content, name })))
    }

    fn staging(&self) -> Result<Option<(SnapshotHeader, u64)>, StorageError> {
        Ok(self.staging.clone())
    }

    fn begin_staging(&mut self, header: &SnapshotHeader) -> Result<(), StorageError> {
        self.abort_staging()?;
        fs::create_dir_all(&self.staging_dir).map_err(|e| io_err("creating the staging directory", e))?;
        let head = match self.layout {
            ImageLayout::Data => quorate_storage::snapshot_file_head(&header.meta)?,
            ImageLayout::File => Vec::new(),
        };
        File::create(self.staging_path())
            .and_then(|mut f| f.write_all(&head).and_then(|()| f.sync_all()))
            .map_err(|e| io_err("creating the staging file", e))?;
        self.write_staging_state(header, 0)?;
        if let Some(parent) = self.staging_dir.parent() {
            fsync_dir(parent)?;
        }
        self.staging = Some((header.clone(), 0));
        Ok(())
    }

    fn append_staging(&mut self, offset: u64, bytes: &[u8]) -> Result<(), StorageError> {
        let header = match &self.staging {
            Some((h, at)) if *at == offset => h.clone(),
            other => return Err(staging_gap(other.as_ref().map(|(_, at)| *at), offset)),
        };
        let mut f = OpenOptions::new()
            .append(true)
            .open(self.staging_path())
            .map_err(|e| io_err("opening the staging file", e))?;
        f.write_all(bytes).and_then(|()| f.sync_data()).map_err(|e| io_err("appending to the staging file", e))?;
        let len = offset + bytes.len() as u64;
        self.write_staging_state(&header, len)?;
        self.staging = Some((header, len));
        Ok(())
    }

    fn abort_staging(&mut self) -> Result<(), StorageError> {
        self.staging = None;
        match fs::remove_dir_all(&self.staging_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("removing the staging directory", e)),
        }
        // Make the removal durable: otherwise a crash can bring back a finished staging
        // (whose image was installed) at its full length.
        match self.staging_dir.parent() {
            Some(parent) => fsync_dir(parent),
            None => Ok(()),
        }
    }

    fn seal_staging(&mut self, header: &SnapshotHeader) -> Result<(), StorageError> {
        crate::storage::check_seal(self.staging.as_ref().map(|(h, at)| (h, *at)), header)?;
        self.write_staging_state(header, header.total_len)?;
        self.staging = Some((header.clone(), header.total_len));
        Ok(())
    }
}

/// [`RocksLog`]'s saver: snapshot files are named by index and the newest one the log agrees
/// with is the latest, so a save racing an install of a newer snapshot cannot replace it.
#[derive(Debug)]
struct RocksSaver {
    store: Arc<RocksStore>,
}

impl SnapshotSaver for RocksSaver {
    fn latest(&self) -> Result<LogIndex, StorageError> {
        Ok(self.store.usable_snapshot(LogIndex(u64::MAX))?.map_or(LogIndex::ZERO, |(m, _)| m.last.index))
    }

    fn save(
        &mut self,
        meta: &SnapshotMeta,
        write: &mut dyn FnMut(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<(), StorageError> {
        let stored = self.latest()?;
        if meta.last.index <= stored {
            return Err(crate::storage::not_above(meta, stored));
        }
        let mut w = self.store.snapshot_writer(meta.clone())?;
        write(&mut w).map_err(|e| io_err("writing the snapshot", e))?;
        w.finish()?;
        Ok(())
    }
}

/// A snapshot file's framing: what it covers, where its data lies, and the CRC-32 of the
/// whole file.
struct Framing {
    meta: SnapshotMeta,
    /// The data.
    content: std::ops::Range<u64>,
    /// The data's CRC-32 (the trailer's).
    data_crc: u32,
    /// The whole file's.
    checksum: u32,
}

impl Framing {
    /// Reads and checks the head, metadata and trailer of the snapshot file `file` of
    /// `file_len` bytes (the layout quorate-storage writes). The whole file's CRC-32 comes from
    /// the CRCs of its head and trailer and the data's CRC in the trailer — the data is not
    /// read (a reader checks it when it reaches the end).
    fn read(file: &mut File, file_len: u64, name: &str) -> Result<Framing, StorageError> {
        let bad = |e: &dyn std::fmt::Display| StorageError::Io(format!("{name}: {e}"));
        let mut head = [0u8; HEAD_BYTES];
        file.seek(SeekFrom::Start(0)).map_err(|e| bad(&e))?;
        file.read_exact(&mut head).map_err(|e| bad(&e))?;
        let (meta_len, header_len) =
            layout::parse_head(&head, file_len, quorate_storage::FORMAT_VERSION).map_err(|e| bad(&e))?;
        let mut m = vec![0u8; meta_len as usize + 4];
        file.read_exact(&mut m).map_err(|e| bad(&e))?;
        let meta = layout::parse_meta(&m).map_err(|e| bad(&e))?;
        let mut trailer = [0u8; TRAILER_BYTES as usize];
        file.seek(SeekFrom::Start(file_len - TRAILER_BYTES)).map_err(|e| bad(&e))?;
        file.read_exact(&mut trailer).map_err(|e| bad(&e))?;
        let (data_len, data_crc) = layout::parse_trailer(&trailer, file_len, header_len).map_err(|e| bad(&e))?;
        if data_len == 0 && data_crc != 0 {
            // No data has CRC 0 (and the combination below would not see this one).
            return Err(bad(&"a trailer with a CRC for no data"));
        }
        let mut whole = crc32fast::Hasher::new();
        whole.update(&head);
        whole.update(&m);
        whole.combine(&crc32fast::Hasher::new_with_initial_len(data_crc, data_len));
        let mut end = crc32fast::Hasher::new();
        end.update(&trailer);
        whole.combine(&end);
        Ok(Framing { meta, content: header_len..header_len + data_len, data_crc, checksum: whole.finalize() })
    }
}

/// An image in a file, from byte `start` on: a snapshot file's data or the whole file (as the
/// layout says), or the staging of one.
#[derive(Debug)]
struct FileImage {
    file: File,
    start: u64,
    header: SnapshotHeader,
    /// Where the state machine's bytes lie (between the file's head and its trailer).
    content: std::ops::Range<u64>,
    name: String,
}

impl FileImage {
    /// Opens a snapshot file as an image of `layout`: checks its framing and takes the
    /// image's length and CRC-32 from it — nothing is hashed.
    fn open_snapshot(path: &Path, layout: ImageLayout) -> Result<FileImage, StorageError> {
        let name = format!("snapshot file {}", path.display());
        let mut file = File::open(path).map_err(|e| StorageError::Io(format!("{name}: {e}")))?;
        let file_len = file.metadata().map_err(|e| StorageError::Io(format!("{name}: {e}")))?.len();
        let f = Framing::read(&mut file, file_len, &name)?;
        Ok(match layout {
            ImageLayout::Data => {
                let total_len = f.content.end - f.content.start;
                let header = SnapshotHeader { meta: f.meta, total_len, checksum: f.data_crc };
                FileImage { file, start: f.content.start, header, content: 0..total_len, name }
            }
            ImageLayout::File => {
                let header = SnapshotHeader { meta: f.meta, total_len: file_len, checksum: f.checksum };
                FileImage { file, start: 0, header, content: f.content, name }
            }
        })
    }
}

impl SnapshotSource for FileImage {
    fn header(&self) -> &SnapshotHeader {
        &self.header
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, StorageError> {
        let left = self.header.total_len.saturating_sub(offset);
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let at = self.start.checked_add(offset).ok_or_else(|| StorageError::Io("offset overflows".into()))?;
        let mut done = 0;
        while done < want {
            match read_at(&self.file, &mut buf[done..want], at + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(&format!("reading {}", self.name), e)),
            }
        }
        Ok(done)
    }

    fn content(&self) -> std::ops::Range<u64> {
        self.content.clone()
    }
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, at)
}

#[cfg(windows)]
fn read_at(file: &File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, at)
}

fn io_err(what: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Io(format!("{what}: {e}"))
}

fn fsync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_err("syncing a directory", e))
}

/// The staging left by the last run, if it is whole: its state file decodes and checks, and
/// the staged file (of `layout`) holds at least the recorded length (anything beyond, such as
/// a torn append or the trailer of an install a crash interrupted before its rename, is cut
/// off). Anything else is discarded: the leader sends the snapshot again from the start.
fn load_staging(dir: &Path, layout: ImageLayout) -> Result<Option<(SnapshotHeader, u64)>, StoreError> {
    let state = match fs::read(dir.join("state")) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            discard(dir)?;
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let parsed = state.split_last_chunk::<4>().and_then(|(body, crc)| {
        if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
            return None;
        }
        postcard::from_bytes::<(SnapshotHeader, u64)>(body).ok()
    });
    let Some((header, len)) = parsed.filter(|(h, len)| *len <= h.total_len) else {
        discard(dir)?;
        return Ok(None);
    };
    let data = dir.join(layout.staging_file());
    let with_head = match layout {
        ImageLayout::Data => head_len(&header.meta)? + len,
        ImageLayout::File => len,
    };
    match fs::metadata(&data) {
        Ok(m) if m.len() >= with_head => {
            let f = OpenOptions::new().write(true).open(&data)?;
            f.set_len(with_head)?;
            f.sync_all()?;
            Ok(Some((header, len)))
        }
        _ => {
            discard(dir)?;
            Ok(None)
        }
    }
}

fn discard(dir: &Path) -> Result<(), StoreError> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}
