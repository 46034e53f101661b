//! The layout of `quorate-storage`'s snapshot files and of the state-machine data the
//! reference node keeps in them, as pure functions over bytes: here, in a crate that does not
//! link RocksDB, so that these decoders of disk and network bytes (a snapshot arrives from the
//! leader in chunks and is read back from its staging file) can be fuzzed cheaply (the fuzz
//! target `snapshot_decode`). `quorate-storage`'s `SnapshotReader` reads a file's header,
//! metadata and trailer with them; the node's state machine reads its pairs with
//! [`read_pairs`].
//!
//! ```text
//! header:  magic "QSNP" | format u32 LE | meta_len u32 LE | meta (postcard) | meta_crc u32 LE
//! data:    the application's bytes, data_len of them
//! trailer: data_len u64 LE | data_crc u32 LE | magic "QEND"
//! ```

use crate::SnapshotMeta;
use std::io::Read;

/// The magic a snapshot file starts with.
pub const MAGIC: &[u8; 4] = b"QSNP";
/// The magic a snapshot file ends with.
pub const MAGIC_END: &[u8; 4] = b"QEND";
/// Bytes of the fixed part of the header (magic, format, metadata length).
pub const HEAD_BYTES: usize = 12;
/// Bytes of the trailer.
pub const TRAILER_BYTES: u64 = 16;
/// The largest encoded snapshot metadata accepted when reading.
pub const SNAPSHOT_META_BYTES_MAX: u32 = 1 << 20;

/// Why a snapshot file's framing is refused.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotFileError {
    /// The bytes are not a whole, undamaged snapshot file.
    #[error("{0}")]
    Corrupt(String),
    /// Written by a newer format than the reader's.
    #[error("format {found} is newer than {supported}")]
    FormatTooNew {
        /// The format in the file.
        found: u32,
        /// The reader's format.
        supported: u32,
    },
    /// Written by an older format the reader cannot migrate.
    #[error("format {found} is older than {supported}")]
    FormatUnsupported {
        /// The format in the file.
        found: u32,
        /// The reader's format.
        supported: u32,
    },
}

/// Checks the fixed header of a file of `file_len` bytes, written for store format `supported`,
/// and returns the metadata's length and the header's whole length (metadata and its checksum
/// included).
///
/// # Errors
/// A bad magic, another format, metadata over [`SNAPSHOT_META_BYTES_MAX`] or a file too short
/// to hold the header and the trailer.
pub fn parse_head(head: &[u8; HEAD_BYTES], file_len: u64, supported: u32) -> Result<(u32, u64), SnapshotFileError> {
    let corrupt = SnapshotFileError::Corrupt;
    if &head[..4] != MAGIC {
        return Err(corrupt("not a snapshot file (bad magic)".into()));
    }
    let format = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if format > supported {
        return Err(SnapshotFileError::FormatTooNew { found: format, supported });
    }
    if format < supported {
        return Err(SnapshotFileError::FormatUnsupported { found: format, supported });
    }
    let meta_len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    if meta_len > SNAPSHOT_META_BYTES_MAX {
        return Err(corrupt(format!("metadata of {meta_len} bytes exceeds the limit {SNAPSHOT_META_BYTES_MAX}")));
    }
    let header_len = HEAD_BYTES as u64 + u64::from(meta_len) + 4;
    if file_len < header_len + TRAILER_BYTES {
        return Err(corrupt(format!("file of {file_len} bytes is truncated")));
    }
    Ok((meta_len, header_len))
}

/// Decodes the metadata and checks its checksum: `m` is the metadata followed by its 4-byte
/// CRC-32.
///
/// # Errors
/// A checksum mismatch or undecodable metadata.
pub fn parse_meta(m: &[u8]) -> Result<SnapshotMeta, SnapshotFileError> {
    let corrupt = SnapshotFileError::Corrupt;
    let Some(split) = m.len().checked_sub(4) else {
        return Err(corrupt("metadata cut short".into()));
    };
    let (m, crc) = m.split_at(split);
    if crc32fast::hash(m).to_le_bytes() != crc {
        return Err(corrupt("metadata checksum mismatch".into()));
    }
    postcard::from_bytes(m).map_err(|e| corrupt(format!("undecodable metadata: {e}")))
}

/// Checks the trailer of a file of `file_len` bytes whose header is `header_len` bytes and
/// returns the data's length and CRC-32.
///
/// # Errors
/// A bad end magic or a data length that does not match the file's length.
pub fn parse_trailer(
    trailer: &[u8; TRAILER_BYTES as usize],
    file_len: u64,
    header_len: u64,
) -> Result<(u64, u32), SnapshotFileError> {
    let corrupt = SnapshotFileError::Corrupt;
    if &trailer[12..] != MAGIC_END {
        return Err(corrupt("bad trailer (incomplete file?)".into()));
    }
    let mut l = [0u8; 8];
    l.copy_from_slice(&trailer[..8]);
    let data_len = u64::from_le_bytes(l);
    let data_crc = u32::from_le_bytes([trailer[8], trailer[9], trailer[10], trailer[11]]);
    if header_len.checked_add(data_len).and_then(|x| x.checked_add(TRAILER_BYTES)) != Some(file_len) {
        return Err(corrupt(format!(
            "trailer claims {data_len} data bytes, the file holds {}",
            file_len.saturating_sub(header_len).saturating_sub(TRAILER_BYTES)
        )));
    }
    Ok((data_len, data_crc))
}

/// Reads the state-machine data of a snapshot: pairs of `key_len u32 LE | key | value_len u32
/// LE | value` until the input ends at a pair boundary, handing each pair to `f`; keys over
/// `key_max` and values over `value_max` bytes are refused before anything is allocated.
/// Returns the number of pairs.
///
/// # Errors
/// What `f` returns, or `bad(detail)` for an input that ends inside a pair, a length over its
/// limit or a read error.
pub fn read_pairs<E>(
    input: &mut impl Read,
    key_max: usize,
    value_max: usize,
    bad: impl Fn(String) -> E,
    mut f: impl FnMut(Vec<u8>, Vec<u8>) -> Result<(), E>,
) -> Result<u64, E> {
    let mut n = 0;
    loop {
        let mut len = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            let r = input.read(&mut len[got..]).map_err(|e| bad(e.to_string()))?;
            if r == 0 {
                break;
            }
            got += r;
        }
        if got == 0 {
            return Ok(n);
        }
        if got < 4 {
            return Err(bad("data ends inside a length".into()));
        }
        let klen = u32::from_le_bytes(len) as usize;
        if klen > key_max {
            return Err(bad(format!("key of {klen} bytes exceeds {key_max}")));
        }
        let mut key = vec![0u8; klen];
        input.read_exact(&mut key).map_err(|e| bad(e.to_string()))?;
        input.read_exact(&mut len).map_err(|e| bad(e.to_string()))?;
        let vlen = u32::from_le_bytes(len) as usize;
        if vlen > value_max {
            return Err(bad(format!("value of {vlen} bytes exceeds {value_max}")));
        }
        let mut value = vec![0u8; vlen];
        input.read_exact(&mut value).map_err(|e| bad(e.to_string()))?;
        f(key, value)?;
        n += 1;
    }
}
