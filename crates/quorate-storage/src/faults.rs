//! Disk faults for fault testing: damage a store's files the way a failing disk does, so that
//! tests and chaos runs can check what the store and the node make of it. Nothing here is
//! used by a store in normal operation; the node calls it only through its failpoints
//! (`limits.danger_failpoints`).
//!
//! * [`corrupt_wal_record`]: flip one byte inside a record in the middle of the newest
//!   write-ahead log (a latent sector error, or a bit flip on the way to the disk). RocksDB's
//!   record checksum catches it at the next open.
//! * [`tear_wal_tail`]: cut the newest write-ahead log in the middle of its last record (a
//!   write that did not fully reach the disk although it was reported synced — a lying disk or
//!   a lost write). RocksDB cannot tell it from a crash mid-write; the durable mark can.
//! * [`corrupt_table_file`]: flip one byte in the first data block of a table file of a column
//!   family. RocksDB's block checksum catches it when the block is read.
//!
//! The files may be open by a running store: RocksDB re-reads a write-ahead log only when it
//! recovers at the next open, and a table block when it is not in its cache.

use crate::error::StoreError;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// RocksDB's write-ahead log block size.
const WAL_BLOCK_BYTES: u64 = 32 * 1024;
/// The largest log file these functions read.
const WAL_FILE_BYTES_MAX: u64 = 512 << 20;
/// Records of one log file looked at.
const WAL_RECORDS_MAX: usize = 1 << 22;

/// What a fault did, for the test's or the operator's log.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub struct FaultReport {
    /// The damaged file.
    pub file: PathBuf,
    /// The byte offset damaged (flipped, or where the file now ends).
    pub offset: u64,
    /// What was done, in words.
    pub what: String,
}

/// One physical record of a write-ahead log.
#[derive(Clone, Copy, Debug)]
struct Record {
    /// Offset of the header.
    at: u64,
    header: u64,
    len: u64,
}

/// The newest write-ahead log of the store in `store_dir` (its `db/NNNNNN.log` with the
/// highest number).
pub fn newest_wal(store_dir: &Path) -> Result<Option<PathBuf>, StoreError> {
    let mut best: Option<(u64, PathBuf)> = None;
    for ent in std::fs::read_dir(store_dir.join("db"))? {
        let ent = ent?;
        let name = ent.file_name().to_string_lossy().into_owned();
        let Some(n) = name.strip_suffix(".log").and_then(|n| n.parse::<u64>().ok()) else { continue };
        if best.as_ref().is_none_or(|(b, _)| n > *b) {
            best = Some((n, ent.path()));
        }
    }
    Ok(best.map(|(_, p)| p))
}

/// The physical records of the log file `bytes` (RocksDB's log format: 32 KiB blocks of
/// records with a 7-byte header — checksum, length, type — or 11 bytes for the recyclable
/// types). Stops at the first thing that is not a whole record.
fn records(bytes: &[u8]) -> Vec<Record> {
    let mut out = Vec::new();
    let mut at = 0u64;
    let size = bytes.len() as u64;
    while at < size && out.len() < WAL_RECORDS_MAX {
        let block_end = (at / WAL_BLOCK_BYTES + 1) * WAL_BLOCK_BYTES;
        if block_end - at < 7 {
            at = block_end;
            continue;
        }
        let h = &bytes[at as usize..];
        if h.len() < 7 {
            break;
        }
        let len = u64::from(u16::from_le_bytes([h[4], h[5]]));
        let kind = h[6];
        if kind == 0 && len == 0 {
            // Zero padding to the end of the block.
            at = block_end;
            continue;
        }
        let header = if (5..=8).contains(&kind) || kind == 11 { 11 } else { 7 };
        if at + header + len > size.min(block_end) {
            break;
        }
        out.push(Record { at, header, len });
        at += header + len;
    }
    out
}

fn read_wal(path: &Path) -> Result<Vec<u8>, StoreError> {
    let mut f = std::fs::File::open(path)?;
    let size = f.metadata()?.len();
    if size > WAL_FILE_BYTES_MAX {
        return Err(StoreError::Io(format!("{} is larger than {WAL_FILE_BYTES_MAX} bytes", path.display())));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    f.read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn flip(path: &Path, offset: u64) -> Result<(), StoreError> {
    let mut f = OpenOptions::new().read(true).write(true).open(path)?;
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(&mut b)?;
    b[0] ^= 0x5a;
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(&b)?;
    f.sync_all()?;
    Ok(())
}

/// Flips one byte in the payload of the middle record of the newest write-ahead log of the
/// store in `store_dir`. `Ok(None)` when that log holds fewer than two records.
pub fn corrupt_wal_record(store_dir: &Path) -> Result<Option<FaultReport>, StoreError> {
    let Some(path) = newest_wal(store_dir)? else { return Ok(None) };
    let bytes = read_wal(&path)?;
    let recs: Vec<Record> = records(&bytes).into_iter().filter(|r| r.len > 0).collect();
    if recs.len() < 2 {
        return Ok(None);
    }
    let n = recs.len() / 2;
    let r = recs[n];
    let offset = r.at + r.header + r.len / 2;
    flip(&path, offset)?;
    Ok(Some(FaultReport {
        file: path,
        offset,
        what: format!("flipped a byte of record {n} of {} (payload of {} bytes at {})", recs.len(), r.len, r.at),
    }))
}

/// Cuts the newest write-ahead log of the store in `store_dir` in the middle of its
/// `records_back`-th record from the end (1: the last one; at least 1), so that it and every
/// record after it are lost. `Ok(None)` when that log holds no record.
pub fn tear_wal_tail(store_dir: &Path, records_back: usize) -> Result<Option<FaultReport>, StoreError> {
    let Some(path) = newest_wal(store_dir)? else { return Ok(None) };
    let bytes = read_wal(&path)?;
    let recs: Vec<Record> = records(&bytes).into_iter().filter(|r| r.len > 0).collect();
    if recs.is_empty() {
        return Ok(None);
    }
    let back = records_back.clamp(1, recs.len());
    let r = recs[recs.len() - back];
    let offset = r.at + r.header + r.len / 2;
    let f = OpenOptions::new().write(true).open(&path)?;
    f.set_len(offset)?;
    f.sync_all()?;
    Ok(Some(FaultReport {
        file: path,
        offset,
        what: format!(
            "cut record {} of {} (payload of {} bytes at {}) in half, losing it and the {} after it; the file now ends \
             at {offset}",
            recs.len() - back,
            recs.len(),
            r.len,
            r.at,
            back - 1
        ),
    }))
}

/// Flips one byte inside the first data block of the table file `path` (a file of
/// [`RocksStore::table_files`](crate::RocksStore::table_files)).
pub fn corrupt_table_file(path: &Path) -> Result<FaultReport, StoreError> {
    let size = std::fs::metadata(path)?.len();
    if size < 64 {
        return Err(StoreError::Io(format!("{} is too small to be a table file", path.display())));
    }
    // Data blocks start at offset 0 (RocksDB's block-based table); the footer is at the end.
    let offset = (size / 8).min(64);
    flip(path, offset)?;
    Ok(FaultReport {
        file: path.to_path_buf(),
        offset,
        what: format!("flipped a byte of the first data block (file of {size} bytes)"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 0, 0];
        v.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        v.push(kind);
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn records_are_found_across_blocks_and_padding() {
        let mut bytes = record(1, &[7; 100]);
        bytes.extend(record(1, &[8; 200]));
        // Fill the block up to 3 bytes before its end, then padding.
        let fill = WAL_BLOCK_BYTES as usize - bytes.len() - 7 - 3;
        bytes.extend(record(2, &vec![9; fill]));
        bytes.extend([0, 0, 0]);
        bytes.extend(record(4, &[1; 10]));
        let recs = records(&bytes);
        assert_eq!(recs.len(), 4, "{recs:?}");
        assert_eq!(recs[3].at, WAL_BLOCK_BYTES);
        assert_eq!(recs[1].len, 200);
        // A cut record ends the list, never a panic.
        for cut in (0..bytes.len()).step_by(997) {
            let _ = records(&bytes[..cut]);
        }
    }
}
