//! The on-disk encoding of `quorate-storage`: keys (big-endian, so that RocksDB's byte order is
//! index order) and checksummed records. It lives here, in a crate that does not link RocksDB,
//! so that the decoder of these disk bytes can be fuzzed cheaply (the fuzz target
//! `record_decode`); `quorate-storage` maps [`RecordError`] to its `RecordError`.
//!
//! Every value is `crc (4 bytes, little-endian) || body`, where `body` is postcard and `crc`
//! is CRC-32 over `column-family tag || key || body`. Folding the key and the column family into
//! the checksum catches a record that is intact but stored under the wrong key. Decoding
//! never panics: short values, checksum mismatches, malformed or trailing bytes all become
//! [`RecordError::Corrupt`] naming the key.

use crate::{EntryPayload, LogIndex, Term};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// Name of the column family holding log entries.
pub const CF_LOG: &str = "log";
/// Name of the column family holding the hard state, format version, applied index and the
/// configuration mirror.
pub const CF_META: &str = "meta";
/// Name of the column family holding snapshot metadata.
pub const CF_SNAP: &str = "snap";
/// Name of the column family holding the application's state-machine data.
pub const CF_SM: &str = "sm";

/// The four column families, in a fixed order.
pub const CFS: [&str; 4] = [CF_LOG, CF_META, CF_SNAP, CF_SM];

/// Bytes of the checksum that prefixes every value.
pub const CRC_BYTES: usize = 4;

/// Meta key: the format version (u32).
pub const KEY_FORMAT: &[u8] = b"format";
/// Meta key: the hard state.
pub const KEY_HARD: &[u8] = b"hard";
/// Meta key: the applied index.
pub const KEY_APPLIED: &[u8] = b"applied";
/// Meta key of the marker of an unfinished multi-write snapshot install (its snapshot index).
pub const KEY_SM_INSTALL: &[u8] = b"sm_install";
/// Meta key prefix: `cfg || index (8 bytes BE)` mirrors a configuration entry of the log.
pub const KEY_CFG_PREFIX: &[u8] = b"cfg/";
/// Snap key: the latest snapshot metadata.
pub const KEY_SNAP_META: &[u8] = b"meta";
/// State-machine keys are `SM_PREFIX || application key`, so that every application key lies
/// in `[SM_PREFIX, SM_PREFIX_END)` and can be cleared with one range deletion.
pub const SM_PREFIX: u8 = b'k';
/// The exclusive end of the state-machine key range.
pub const SM_PREFIX_END: u8 = b'l';

/// Why a record could not be encoded or decoded.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// A stored record failed verification (checksum, decoding, trailing bytes).
    #[error("corrupt record at {key}: {detail}")]
    Corrupt {
        /// Which record, human-readable: `log/42`, `meta/hard`, `sm/user-key`, ...
        key: String,
        /// What was wrong.
        detail: String,
    },
    /// A value could not be encoded.
    #[error("{0}")]
    Encode(String),
}

/// A column family, as far as checksums and error messages are concerned.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Cf {
    /// Log entries.
    Log,
    /// Hard state, format version, applied index, configuration mirror.
    Meta,
    /// Snapshot metadata.
    Snap,
    /// The application's state-machine data.
    Sm,
}

impl Cf {
    fn tag(self) -> u8 {
        match self {
            Cf::Log => 1,
            Cf::Meta => 2,
            Cf::Snap => 3,
            Cf::Sm => 4,
        }
    }

    /// The column family's name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Cf::Log => CF_LOG,
            Cf::Meta => CF_META,
            Cf::Snap => CF_SNAP,
            Cf::Sm => CF_SM,
        }
    }
}

/// The log key of `index`: 8 bytes, big-endian.
#[must_use]
pub fn log_key(index: LogIndex) -> [u8; 8] {
    index.0.to_be_bytes()
}

/// The meta key mirroring a configuration entry at `index`.
#[must_use]
pub fn cfg_key(index: LogIndex) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(KEY_CFG_PREFIX);
    k[4..].copy_from_slice(&index.0.to_be_bytes());
    k
}

/// The index of a log key, or `None` if it is not 8 bytes.
#[must_use]
pub fn parse_index(key: &[u8]) -> Option<LogIndex> {
    let b: [u8; 8] = key.try_into().ok()?;
    Some(LogIndex(u64::from_be_bytes(b)))
}

/// The stored key of the application's state-machine key `key`.
#[must_use]
pub fn sm_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(SM_PREFIX);
    k.extend_from_slice(key);
    k
}

/// A human-readable name of a stored key, used in [`RecordError::Corrupt`].
#[must_use]
pub fn key_name(cf: Cf, key: &[u8]) -> String {
    let mut s = String::from(cf.name());
    s.push('/');
    match cf {
        Cf::Log => match parse_index(key) {
            Some(i) => {
                let _ = write!(s, "{i}");
            }
            None => escape_into(&mut s, key),
        },
        Cf::Meta if key.len() == 12 && key.starts_with(KEY_CFG_PREFIX) => {
            s.push_str("cfg/");
            let _ = write!(s, "{}", parse_index(&key[4..]).unwrap_or_default());
        }
        Cf::Sm if key.first() == Some(&SM_PREFIX) => escape_into(&mut s, &key[1..]),
        _ => escape_into(&mut s, key),
    }
    s
}

fn escape_into(s: &mut String, bytes: &[u8]) {
    // Bounded so that an error message about a huge key stays small.
    const SHOWN_BYTES_MAX: usize = 64;
    for &b in bytes.iter().take(SHOWN_BYTES_MAX) {
        if b.is_ascii_graphic() {
            s.push(b as char);
        } else {
            let _ = write!(s, "\\x{b:02x}");
        }
    }
    if bytes.len() > SHOWN_BYTES_MAX {
        s.push_str("...");
    }
}

fn checksum(cf: Cf, key: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&[cf.tag()]);
    h.update(&(key.len() as u32).to_le_bytes());
    h.update(key);
    h.update(body);
    h.finalize()
}

/// Encodes `value` as a checksummed record stored under `key` in `cf`.
///
/// # Errors
/// [`RecordError::Encode`] when postcard cannot encode the value.
pub fn encode<T: Serialize + ?Sized>(cf: Cf, key: &[u8], value: &T) -> Result<Vec<u8>, RecordError> {
    let mut buf = Vec::with_capacity(64);
    buf.extend_from_slice(&[0u8; CRC_BYTES]);
    let buf = postcard::to_extend(value, buf)
        .map_err(|e| RecordError::Encode(format!("cannot encode {}: {e}", key_name(cf, key))))?;
    Ok(seal(cf, key, buf))
}

/// Encodes a log entry (its index is the key), sized so that the buffer is allocated once.
///
/// # Errors
/// [`RecordError::Encode`] when postcard cannot encode the entry.
pub fn encode_entry(key: &[u8], term: Term, payload: &EntryPayload) -> Result<Vec<u8>, RecordError> {
    // Term (varint, at most 10 bytes), variant tag, length prefix and the payload bytes.
    let hint = CRC_BYTES + 24 + payload.size_bytes().min(1 << 20) as usize;
    let mut buf = Vec::with_capacity(hint);
    buf.extend_from_slice(&[0u8; CRC_BYTES]);
    let buf = postcard::to_extend(&EntryRef { term, payload }, buf)
        .map_err(|e| RecordError::Encode(format!("cannot encode {}: {e}", key_name(Cf::Log, key))))?;
    Ok(seal(Cf::Log, key, buf))
}

/// Encodes raw bytes (state-machine values) as a checksummed record.
#[must_use]
pub fn encode_raw(cf: Cf, key: &[u8], raw: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(CRC_BYTES + raw.len());
    buf.extend_from_slice(&[0u8; CRC_BYTES]);
    buf.extend_from_slice(raw);
    seal(cf, key, buf)
}

fn seal(cf: Cf, key: &[u8], mut buf: Vec<u8>) -> Vec<u8> {
    let crc = checksum(cf, key, &buf[CRC_BYTES..]);
    buf[..CRC_BYTES].copy_from_slice(&crc.to_le_bytes());
    buf
}

/// Verifies the checksum of a stored record and returns its body.
///
/// # Errors
/// [`RecordError::Corrupt`] for a short record or a checksum mismatch.
pub fn verify<'v>(cf: Cf, key: &[u8], value: &'v [u8]) -> Result<&'v [u8], RecordError> {
    let corrupt = |detail: String| RecordError::Corrupt { key: key_name(cf, key), detail };
    if value.len() < CRC_BYTES {
        return Err(corrupt(format!("record of {} bytes is shorter than its {CRC_BYTES}-byte checksum", value.len())));
    }
    let (crc, body) = value.split_at(CRC_BYTES);
    let mut stored = [0u8; CRC_BYTES];
    stored.copy_from_slice(crc);
    let stored = u32::from_le_bytes(stored);
    let computed = checksum(cf, key, body);
    if stored != computed {
        return Err(corrupt(format!("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")));
    }
    Ok(body)
}

/// Verifies and decodes a stored record. Trailing bytes are corruption.
///
/// # Errors
/// [`RecordError::Corrupt`] for a damaged, undecodable or over-long record.
pub fn decode<T: DeserializeOwned>(cf: Cf, key: &[u8], value: &[u8]) -> Result<T, RecordError> {
    let body = verify(cf, key, value)?;
    let (v, rest) = postcard::take_from_bytes::<T>(body)
        .map_err(|e| RecordError::Corrupt { key: key_name(cf, key), detail: format!("undecodable record: {e}") })?;
    if !rest.is_empty() {
        return Err(RecordError::Corrupt {
            key: key_name(cf, key),
            detail: format!("{} trailing bytes after the record", rest.len()),
        });
    }
    Ok(v)
}

/// How a log entry is stored: its index is the key.
#[derive(Serialize)]
pub struct EntryRef<'a> {
    /// The entry's term.
    pub term: Term,
    /// The entry's payload.
    pub payload: &'a EntryPayload,
}

/// A decoded log record.
#[derive(Debug, Deserialize)]
pub struct EntryOwned {
    /// The entry's term.
    pub term: Term,
    /// The entry's payload.
    pub payload: EntryPayload,
}

/// Only the term of a log record (the payload is not decoded).
#[derive(Deserialize)]
struct TermOnly {
    term: Term,
}

/// Reads just the term of a stored log record, verifying the checksum of the whole record.
///
/// # Errors
/// [`RecordError::Corrupt`] for a damaged or undecodable record.
pub fn decode_term(key: &[u8], value: &[u8]) -> Result<Term, RecordError> {
    let body = verify(Cf::Log, key, value)?;
    let (t, _) = postcard::take_from_bytes::<TermOnly>(body).map_err(|e| RecordError::Corrupt {
        key: key_name(Cf::Log, key),
        detail: format!("undecodable record: {e}"),
    })?;
    Ok(t.term)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Configuration, Data, HardState, NodeId};

    #[test]
    fn round_trip_and_key_names() {
        let hs = HardState { term: Term(3), vote: NodeId::new(2), commit: LogIndex(9) };
        let v = encode(Cf::Meta, KEY_HARD, &hs).unwrap();
        assert_eq!(decode::<HardState>(Cf::Meta, KEY_HARD, &v).unwrap(), hs);
        assert_eq!(key_name(Cf::Log, &log_key(LogIndex(42))), "log/42");
        assert_eq!(key_name(Cf::Meta, &cfg_key(LogIndex(7))), "meta/cfg/7");
        assert_eq!(key_name(Cf::Sm, &sm_key(b"a\x00")), "sm/a\\x00");
        assert_eq!(key_name(Cf::Meta, KEY_HARD), "meta/hard");
        let p = EntryPayload::Config(Configuration::default());
        let k = log_key(LogIndex(5));
        let v = encode(Cf::Log, &k, &EntryRef { term: Term(2), payload: &p }).unwrap();
        let e: EntryOwned = decode(Cf::Log, &k, &v).unwrap();
        assert_eq!((e.term, e.payload), (Term(2), p));
        assert_eq!(decode_term(&k, &v).unwrap(), Term(2));
    }

    #[test]
    fn the_key_is_part_of_the_checksum() {
        let p = EntryPayload::Command(Data::from("x"));
        let v = encode(Cf::Log, &log_key(LogIndex(1)), &EntryRef { term: Term(1), payload: &p }).unwrap();
        let err = decode::<EntryOwned>(Cf::Log, &log_key(LogIndex(2)), &v).unwrap_err();
        assert!(matches!(&err, RecordError::Corrupt { key, .. } if key == "log/2"), "{err}");
    }

    /// Every single-byte flip and every truncation of a record is detected, never a panic.
    #[test]
    fn flips_and_truncations_are_detected() {
        let p = EntryPayload::Command(Data::from(vec![7u8; 40]));
        let k = log_key(LogIndex(11));
        let v = encode(Cf::Log, &k, &EntryRef { term: Term(4), payload: &p }).unwrap();
        for i in 0..v.len() {
            for bit in 0..8 {
                let mut w = v.clone();
                w[i] ^= 1 << bit;
                assert!(decode::<EntryOwned>(Cf::Log, &k, &w).is_err());
            }
        }
        for n in 0..v.len() {
            assert!(decode::<EntryOwned>(Cf::Log, &k, &v[..n]).is_err());
        }
    }

    /// Garbage with a valid checksum (as if written by a buggy or hostile writer) decodes to an
    /// error, not a panic or a huge allocation.
    #[test]
    fn garbage_with_valid_checksum_never_panics() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..200usize {
            let mut raw = vec![0u8; len];
            for b in &mut raw {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            let k = log_key(LogIndex(len as u64));
            let v = encode_raw(Cf::Log, &k, &raw);
            let _ = decode::<EntryOwned>(Cf::Log, &k, &v);
            let _ = decode::<HardState>(Cf::Meta, &k, &v);
            let _ = decode::<Configuration>(Cf::Meta, &k, &v);
        }
    }

    /// Found by the `record_decode` fuzz target (CI, 2026-12-06): a record with an over-long
    /// varint (`c7 00` for the term 71) and a valid checksum decodes to the value it denotes;
    /// the store re-encodes it in the shortest form, which decodes to the same value.
    #[test]
    fn an_overlong_varint_decodes_to_its_value_and_re_encodes_shorter() {
        let key = b"cfg/\x00\xff\xff\xff\xff\xff\xff\xff";
        let stored = [0x1a, 0x64, 0xd6, 0xcf, 0xc7, 0x00, 0x00, 0x01];
        let hs = decode::<HardState>(Cf::Meta, key, &stored).unwrap();
        assert_eq!(hs, HardState { term: Term(71), vote: None, commit: LogIndex(1) });
        let again = encode(Cf::Meta, key, &hs).unwrap();
        assert_eq!(&again[CRC_BYTES..], &[71, 0, 1]);
        assert_eq!(decode::<HardState>(Cf::Meta, key, &again).unwrap(), hs);
    }
}
