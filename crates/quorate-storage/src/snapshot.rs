//! Snapshot data files, written and read as streams (never whole in memory).
//!
//! Layout of a snapshot file:
//!
//! ```text
//! header:  magic "QSNP" | format u32 LE | meta_len u32 LE | meta (postcard) | meta_crc u32 LE
//! data:    the application's bytes, data_len of them
//! trailer: data_len u64 LE | data_crc u32 LE | magic "QEND"
//! ```
//!
//! The writer streams into `*.tmp`, then fsyncs, renames to the final name and fsyncs the
//! directory, so a crash leaves either no snapshot or a whole one. The reader checks the
//! header and trailer on open and the data checksum when the data has been read to its end:
//! a mismatch is an [`std::io::ErrorKind::InvalidData`] error from `read`, so a consumer that
//! reads to the end never accepts damaged data.

use crate::FORMAT_VERSION;
use crate::error::StoreError;
use quorate_log::SnapshotMeta;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub use quorate_log::snapshot_file::SNAPSHOT_META_BYTES_MAX;
use quorate_log::snapshot_file::{self as layout, HEAD_BYTES, MAGIC, MAGIC_END, SnapshotFileError, TRAILER_BYTES};
const SUFFIX: &str = ".qsnap";
const TMP_SUFFIX: &str = ".tmp";

/// The file name of the snapshot described by `meta`.
#[must_use]
pub(crate) fn file_name(meta: &SnapshotMeta) -> String {
    format!("snap-{:020}-{:020}{SUFFIX}", meta.last.index.0, meta.last.term.0)
}

/// The index encoded in a snapshot file name, if it is one.
pub(crate) fn index_of(name: &str) -> Option<u64> {
    let rest = name.strip_prefix("snap-")?.strip_suffix(SUFFIX)?;
    rest.split('-').next()?.parse().ok()
}

/// Removes leftover temporary files (from a crash mid-write) in `dir`.
pub(crate) fn remove_temporaries(dir: &Path) -> Result<(), StoreError> {
    for ent in fs::read_dir(dir)? {
        let ent = ent?;
        if ent.file_name().to_string_lossy().ends_with(TMP_SUFFIX) {
            fs::remove_file(ent.path())?;
        }
    }
    Ok(())
}

/// Removes snapshot files of indexes below `keep_from` in `dir`.
pub(crate) fn remove_older(dir: &Path, keep_from: u64) -> Result<(), StoreError> {
    for ent in fs::read_dir(dir)? {
        let ent = ent?;
        if let Some(i) = index_of(&ent.file_name().to_string_lossy())
            && i < keep_from
        {
            fs::remove_file(ent.path())?;
        }
    }
    Ok(())
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The bytes a snapshot file of `meta` starts with: magic, format, the metadata's length, the
/// metadata (postcard) and its CRC-32 — what [`SnapshotWriter`] writes before the data. A file
/// made of them and then the data becomes a snapshot file with
/// [`RocksStore::adopt_snapshot`](crate::RocksStore::adopt_snapshot).
pub fn file_head(meta: &SnapshotMeta) -> Result<Vec<u8>, StoreError> {
    let m = postcard::to_allocvec(meta).map_err(|e| StoreError::Io(format!("cannot encode snapshot metadata: {e}")))?;
    let mut head = Vec::with_capacity(HEAD_BYTES + m.len() + 4);
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    head.extend_from_slice(&(m.len() as u32).to_le_bytes());
    head.extend_from_slice(&m);
    head.extend_from_slice(&crc32fast::hash(&m).to_le_bytes());
    Ok(head)
}

/// The bytes a snapshot file ends with: the data's length and CRC-32, and the end magic.
fn trailer(data_len: u64, data_crc: u32) -> [u8; TRAILER_BYTES as usize] {
    let mut t = [0u8; TRAILER_BYTES as usize];
    t[..8].copy_from_slice(&data_len.to_le_bytes());
    t[8..12].copy_from_slice(&data_crc.to_le_bytes());
    t[12..].copy_from_slice(MAGIC_END);
    t
}

/// Makes `from` — a file holding [`file_head`] of `meta` and then `data_len` bytes of data
/// whose CRC-32 is `data_crc` — the snapshot file of `meta` in `dir`: appends the trailer,
/// fsyncs the file, renames it into place (same file system) and fsyncs both directories.
/// The data is neither read nor copied: the caller checked it, and a reader checks it again
/// when it reads to the end. A file of another length or with another head is refused.
pub(crate) fn adopt(
    dir: &Path,
    from: &Path,
    meta: SnapshotMeta,
    data_len: u64,
    data_crc: u32,
) -> Result<SnapshotFile, StoreError> {
    let head = file_head(&meta)?;
    let mut file = fs::OpenOptions::new().read(true).write(true).open(from)?;
    let len = file.metadata()?.len();
    if len != head.len() as u64 + data_len {
        return Err(StoreError::Io(format!(
            "{}: {len} bytes, not a {}-byte head and {data_len} bytes of data",
            from.display(),
            head.len()
        )));
    }
    let mut found = vec![0u8; head.len()];
    file.read_exact(&mut found)?;
    if found != head {
        return Err(StoreError::Io(format!(
            "{}: its head is not that of the snapshot at {}",
            from.display(),
            meta.last.index
        )));
    }
    file.seek(SeekFrom::End(0))?;
    file.write_all(&trailer(data_len, data_crc))?;
    file.sync_all()?;
    drop(file);
    let path = move_into(dir, from, &meta)?;
    Ok(SnapshotFile { path, meta, data_len, data_crc })
}

/// Renames the synced snapshot file `from` to `meta`'s name in `dir` (same file system) and
/// fsyncs both directories; returns where it is now.
fn move_into(dir: &Path, from: &Path, meta: &SnapshotMeta) -> Result<PathBuf, StoreError> {
    fs::create_dir_all(dir)?;
    let path = dir.join(file_name(meta));
    fs::rename(from, &path)?;
    fsync_dir(dir)?;
    if let Some(parent) = from.parent() {
        fsync_dir(parent)?;
    }
    Ok(path)
}

/// Makes `from` — a whole snapshot file of `meta`, received in pieces and staged — the
/// snapshot file of `meta` in `dir`: checks its head, metadata and trailer (not the data: the
/// caller checked the whole file, and a reader checks the data again when it reads to the
/// end), fsyncs it, renames it into place (same file system) and fsyncs both directories.
pub(crate) fn adopt_file(dir: &Path, from: &Path, meta: SnapshotMeta) -> Result<SnapshotFile, StoreError> {
    let r = SnapshotReader::open(from)?;
    if r.meta() != &meta {
        return Err(StoreError::Io(format!(
            "{}: a snapshot file of {}, not of {}",
            from.display(),
            r.meta().last.index,
            meta.last.index
        )));
    }
    let (data_len, data_crc) = (r.data_len, r.data_crc);
    drop(r);
    File::open(from)?.sync_all()?;
    let path = move_into(dir, from, &meta)?;
    Ok(SnapshotFile { path, meta, data_len, data_crc })
}

/// Streams a snapshot's data into a file in the store's snapshot directory. Create it with
/// [`RocksStore::snapshot_writer`](crate::RocksStore::snapshot_writer), write the data through
/// [`Write`], then [`finish`](SnapshotWriter::finish). Dropping it unfinished discards it.
#[derive(Debug)]
pub struct SnapshotWriter {
    file: Option<BufWriter<File>>,
    tmp: PathBuf,
    dir: PathBuf,
    meta: SnapshotMeta,
    hasher: crc32fast::Hasher,
    data_len: u64,
    /// Bytes written since the file was last synced, and the syncs made while writing (not
    /// counting the one in [`SnapshotWriter::finish`]).
    unsynced: u64,
    syncs: u64,
}

/// A snapshot file being written is synced every this many bytes (as RocksDB's
/// `bytes_per_sync`), so that its page cache never holds more unwritten: a file of hundreds
/// of megabytes written whole and synced only at its end made the log's fsyncs on the same
/// disk wait for all of it (issue 20: writes stalled for seconds while three nodes wrote their
/// snapshots).
pub const SNAPSHOT_SYNC_BYTES: u64 = 8 << 20;

/// A finished, durable snapshot file.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub struct SnapshotFile {
    /// Where it is.
    pub path: PathBuf,
    /// What it covers.
    pub meta: SnapshotMeta,
    /// Bytes of application data.
    pub data_len: u64,
    /// CRC-32 of the data.
    pub data_crc: u32,
}

impl SnapshotWriter {
    /// Starts a snapshot file for `meta` in `dir`.
    pub fn create(dir: &Path, meta: SnapshotMeta) -> Result<SnapshotWriter, StoreError> {
        fs::create_dir_all(dir)?;
        let tmp = dir.join(format!("{}{TMP_SUFFIX}", file_name(&meta)));
        let mut file = BufWriter::with_capacity(1 << 16, File::create(&tmp)?);
        file.write_all(&file_head(&meta)?)?;
        Ok(SnapshotWriter {
            file: Some(file),
            tmp,
            dir: dir.to_path_buf(),
            meta,
            hasher: crc32fast::Hasher::new(),
            data_len: 0,
            unsynced: 0,
            syncs: 0,
        })
    }

    /// Writes the trailer, fsyncs the file, renames it into place and fsyncs the directory.
    pub fn finish(mut self) -> Result<SnapshotFile, StoreError> {
        let mut file = self.file.take().ok_or_else(|| StoreError::Io("snapshot writer already finished".into()))?;
        let data_crc = self.hasher.clone().finalize();
        file.write_all(&trailer(self.data_len, data_crc))?;
        let file = file.into_inner().map_err(|e| StoreError::Io(e.to_string()))?;
        file.sync_all()?;
        drop(file);
        let path = self.dir.join(file_name(&self.meta));
        fs::rename(&self.tmp, &path)?;
        fsync_dir(&self.dir)?;
        Ok(SnapshotFile { path, meta: self.meta.clone(), data_len: self.data_len, data_crc })
    }
}

impl Write for SnapshotWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let file = self.file.as_mut().ok_or_else(|| io::Error::other("snapshot writer already finished"))?;
        // Synced before taking more, so that an error takes none of `buf` (the `Write`
        // contract: an error means nothing was written).
        if self.unsynced >= SNAPSHOT_SYNC_BYTES {
            file.flush()?;
            file.get_ref().sync_data()?;
            self.unsynced = 0;
            self.syncs += 1;
        }
        let n = file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.data_len += n as u64;
        self.unsynced += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            // Unfinished: the temporary file is garbage. Failure to remove it is harmless
            // (temporaries are removed at the next open).
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Streams a snapshot's data out of a snapshot file, verifying its checksum at the end.
#[derive(Debug)]
pub struct SnapshotReader {
    file: BufReader<io::Take<File>>,
    meta: SnapshotMeta,
    data_len: u64,
    data_crc: u32,
    hasher: crc32fast::Hasher,
    remaining: u64,
    name: String,
}

impl SnapshotReader {
    /// Opens a snapshot file and checks its header and trailer.
    pub fn open(path: &Path) -> Result<SnapshotReader, StoreError> {
        let name = format!("snapshot file {}", path.display());
        let corrupt = |detail: String| StoreError::Corrupt { key: name.clone(), detail };
        let mut file = File::open(path)?;
        let file_len = file.metadata()?.len();
        let layout_err = |e: SnapshotFileError| match e {
            SnapshotFileError::FormatTooNew { found, supported } => StoreError::FormatTooNew { found, supported },
            SnapshotFileError::FormatUnsupported { found, supported } => {
                StoreError::FormatUnsupported { found, supported }
            }
            other => corrupt(other.to_string()),
        };
        let mut head = [0u8; HEAD_BYTES];
        file.read_exact(&mut head).map_err(|e| corrupt(format!("cannot read the header: {e}")))?;
        let (meta_len, header_len) = layout::parse_head(&head, file_len, FORMAT_VERSION).map_err(layout_err)?;
        let mut m = vec![0u8; meta_len as usize + 4];
        file.read_exact(&mut m).map_err(|e| corrupt(format!("cannot read the metadata: {e}")))?;
        let meta = layout::parse_meta(&m).map_err(layout_err)?;
        let mut trailer = [0u8; TRAILER_BYTES as usize];
        file.seek(SeekFrom::Start(file_len - TRAILER_BYTES))?;
        file.read_exact(&mut trailer)?;
        let (data_len, data_crc) = layout::parse_trailer(&trailer, file_len, header_len).map_err(layout_err)?;
        file.seek(SeekFrom::Start(header_len))?;
        Ok(SnapshotReader {
            file: BufReader::with_capacity(1 << 16, file.take(data_len)),
            meta,
            data_len,
            data_crc,
            hasher: crc32fast::Hasher::new(),
            remaining: data_len,
            name,
        })
    }

    /// What the snapshot covers.
    #[must_use]
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// Bytes of application data.
    #[must_use]
    pub fn data_len(&self) -> u64 {
        self.data_len
    }
}

impl Read for SnapshotReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let n = self.file.read(buf)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("{}: data ends early", self.name)));
        }
        self.hasher.update(&buf[..n]);
        self.remaining -= n as u64;
        if self.remaining == 0 {
            let got = self.hasher.clone().finalize();
            if got != self.data_crc {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: data checksum mismatch: stored {:#010x}, computed {got:#010x}",
                        self.name, self.data_crc
                    ),
                ));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TestDir;
    use quorate_log::{EntryId, LogIndex, Term};

    fn meta() -> SnapshotMeta {
        SnapshotMeta { last: EntryId::new(Term(3), LogIndex(77)), config: quorate_log::Configuration::default() }
    }

    fn write(dir: &Path, chunks: usize) -> SnapshotFile {
        let mut w = SnapshotWriter::create(dir, meta()).unwrap();
        for i in 0..chunks {
            w.write_all(&[i as u8; 1000]).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn round_trip_in_chunks() {
        let d = TestDir::new("snapfile");
        let f = write(d.path(), 300);
        assert_eq!(f.data_len, 300_000);
        let mut r = SnapshotReader::open(&f.path).unwrap();
        assert_eq!(r.meta(), &meta());
        let mut buf = [0u8; 4096];
        let mut total = 0u64;
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            for (j, b) in buf[..n].iter().enumerate() {
                assert_eq!(*b, ((total + j as u64) / 1000) as u8);
            }
            total += n as u64;
        }
        assert_eq!(total, 300_000);
    }

    /// A large snapshot reaches the disk as it is written, a bounded amount at a time, not
    /// all at the final sync.
    #[test]
    fn a_large_snapshot_is_synced_as_it_is_written() {
        let d = TestDir::new("snapsync");
        let mut w = SnapshotWriter::create(d.path(), meta()).unwrap();
        let chunk = vec![7u8; 100_000];
        let mut most = 0;
        let total = 3 * SNAPSHOT_SYNC_BYTES + 12_345;
        let mut written = 0u64;
        while written < total {
            let n = chunk.len().min((total - written) as usize);
            w.write_all(&chunk[..n]).unwrap();
            written += n as u64;
            most = most.max(w.unsynced);
        }
        assert!(most <= SNAPSHOT_SYNC_BYTES + chunk.len() as u64, "{most} bytes unsynced at once");
        // A sync before the write after the unsynced bytes reach the bound: every 84 chunks here.
        let per_sync = SNAPSHOT_SYNC_BYTES.div_ceil(chunk.len() as u64) * chunk.len() as u64;
        assert_eq!(w.syncs, total / per_sync, "one sync per {SNAPSHOT_SYNC_BYTES} bytes");
        assert!(w.syncs >= 2);
        let f = w.finish().unwrap();
        assert_eq!(f.data_len, total);
        let mut r = SnapshotReader::open(&f.path).unwrap();
        assert_eq!(io::copy(&mut r, &mut io::sink()).unwrap(), total);
    }

    #[test]
    fn damage_is_detected() {
        let d = TestDir::new("snapdamage");
        let f = write(d.path(), 10);
        let good = fs::read(&f.path).unwrap();
        // A flipped data byte: detected at the end of the stream.
        let mut bad = good.clone();
        bad[good.len() / 2] ^= 1;
        fs::write(&f.path, &bad).unwrap();
        let mut r = SnapshotReader::open(&f.path).unwrap();
        let err = io::copy(&mut r, &mut io::sink()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // Every truncation is refused at open or while reading, never a panic.
        for n in (0..good.len()).step_by(97) {
            fs::write(&f.path, &good[..n]).unwrap();
            if let Ok(mut r) = SnapshotReader::open(&f.path) {
                assert!(io::copy(&mut r, &mut io::sink()).is_err());
            }
        }
        // A flipped header byte.
        let mut bad = good.clone();
        bad[13] ^= 0x40;
        fs::write(&f.path, &bad).unwrap();
        assert!(matches!(SnapshotReader::open(&f.path), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn unfinished_writer_leaves_nothing() {
        let d = TestDir::new("snapdrop");
        let mut w = SnapshotWriter::create(d.path(), meta()).unwrap();
        w.write_all(b"partial").unwrap();
        drop(w);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
