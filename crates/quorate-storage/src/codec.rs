//! The on-disk encoding: keys (big-endian, so that RocksDB's byte order is index order) and
//! checksummed records. The codec itself is [`quorate_log::record`] (outside this crate, so
//! that it is fuzzed without linking RocksDB); this module maps its errors to [`StoreError`].
//!
//! Every value is `crc (4 bytes, little-endian) || body`, where `body` is postcard and `crc`
//! is CRC-32 over `column-family tag || key || body`. Decoding never panics: short values,
//! checksum mismatches, malformed or trailing bytes all become [`StoreError::Corrupt`] naming
//! the key.

use crate::error::StoreError;
use quorate_log::record::{self, RecordError};
use quorate_log::{EntryPayload, Term};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub(crate) use quorate_log::record::{
    CF_LOG, CF_META, CF_SM, CF_SNAP, CFS, Cf, EntryOwned, KEY_APPLIED, KEY_CFG_PREFIX, KEY_FORMAT, KEY_HARD,
    KEY_SM_INSTALL, KEY_SNAP_META, SM_PREFIX, SM_PREFIX_END, cfg_key, encode_raw, key_name, log_key, parse_index,
    sm_key,
};

impl From<RecordError> for StoreError {
    fn from(e: RecordError) -> StoreError {
        match e {
            RecordError::Corrupt { key, detail } => StoreError::Corrupt { key, detail },
            RecordError::Encode(s) => StoreError::Io(s),
            other => StoreError::Io(other.to_string()),
        }
    }
}

/// Encodes `value` as a checksummed record stored under `key` in `cf`.
pub(crate) fn encode<T: Serialize + ?Sized>(cf: Cf, key: &[u8], value: &T) -> Result<Vec<u8>, StoreError> {
    Ok(record::encode(cf, key, value)?)
}

/// Encodes a log entry (its index is the key), sized so that the buffer is allocated once.
pub(crate) fn encode_entry(key: &[u8], term: Term, payload: &EntryPayload) -> Result<Vec<u8>, StoreError> {
    Ok(record::encode_entry(key, term, payload)?)
}

/// Verifies the checksum of a stored record and returns its body.
pub(crate) fn verify<'v>(cf: Cf, key: &[u8], value: &'v [u8]) -> Result<&'v [u8], StoreError> {
    Ok(record::verify(cf, key, value)?)
}

/// Verifies and decodes a stored record. Trailing bytes are corruption.
pub(crate) fn decode<T: DeserializeOwned>(cf: Cf, key: &[u8], value: &[u8]) -> Result<T, StoreError> {
    Ok(record::decode(cf, key, value)?)
}

/// Reads just the term of a stored log record, verifying the checksum of the whole record.
pub(crate) fn decode_term(key: &[u8], value: &[u8]) -> Result<Term, StoreError> {
    Ok(record::decode_term(key, value)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorate_log::{Data, LogIndex};

    /// The mapping keeps the kind of error and the key: corruption stays corruption.
    #[test]
    fn record_errors_map_to_store_errors() {
        let p = EntryPayload::Command(Data::from("x"));
        let v = encode_entry(&log_key(LogIndex(1)), Term(1), &p).unwrap();
        let err = decode::<EntryOwned>(Cf::Log, &log_key(LogIndex(2)), &v).unwrap_err();
        assert!(matches!(&err, StoreError::Corrupt { key, .. } if key == "log/2"), "{err}");
        assert_eq!(decode_term(&log_key(LogIndex(1)), &v).unwrap(), Term(1));
    }
}
