//! Log entries and their payloads.

use crate::config::Configuration;
use crate::ids::{EntryId, LogIndex, Term};
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::sync::Arc;

/// Immutable, cheaply clonable bytes (a reference-counted slice).
///
/// Entries are cloned into one message per follower; sharing the bytes keeps that clone free
/// of allocation. Serialized as a byte string (postcard: length prefix plus raw bytes).
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Data(Arc<[u8]>);

impl Data {
    /// Copies `bytes` into a new shared buffer.
    #[must_use]
    pub fn copy_from(bytes: &[u8]) -> Data {
        Data(Arc::from(bytes))
    }

    /// The number of bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no bytes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl AsRef<[u8]> for Data {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl std::ops::Deref for Data {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Data {
    fn from(v: Vec<u8>) -> Data {
        Data(Arc::from(v))
    }
}

impl From<&[u8]> for Data {
    fn from(v: &[u8]) -> Data {
        Data::copy_from(v)
    }
}

impl From<&str> for Data {
    fn from(v: &str) -> Data {
        Data::copy_from(v.as_bytes())
    }
}

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(&self.0) {
            Ok(s) if s.len() <= 64 => write!(f, "{s:?}"),
            _ => write!(f, "<{} bytes>", self.0.len()),
        }
    }
}

impl Serialize for Data {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Data, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Data;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Data, E> {
                Ok(Data::copy_from(v))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Data, E> {
                Ok(Data::from(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Data, E> {
                Ok(Data::copy_from(v.as_bytes()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Data, A::Error> {
                // Self-describing formats (JSON) may present bytes as a sequence of numbers.
                // The size hint comes from the input, so it is capped before allocating.
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(b) = seq.next_element::<u8>()? {
                    v.push(b);
                }
                Ok(Data::from(v))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// What an entry carries. Variants are append-only: their order is part of the wire and disk
/// format.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum EntryPayload {
    /// Appended by every new leader at the start of its term, so that it can commit (a leader
    /// may only commit entries of its own term by counting replicas).
    Noop,
    /// An application command, opaque to consensus.
    Command(Data),
    /// A configuration change: the configuration that takes effect when this entry is appended.
    Config(Configuration),
}

impl EntryPayload {
    /// Bytes this payload is charged for in size limits (the command bytes; a small fixed cost
    /// for the others).
    #[must_use]
    pub fn size_bytes(&self) -> u64 {
        match self {
            EntryPayload::Noop => 0,
            EntryPayload::Command(d) => d.len() as u64,
            EntryPayload::Config(c) => c.size_bytes(),
        }
    }
}

/// One log entry.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the log.
    pub index: LogIndex,
    /// Term of the leader that created it.
    pub term: Term,
    /// What it carries.
    pub payload: EntryPayload,
}

/// A fixed per-entry overhead used in byte limits, so that empty entries still count.
pub const ENTRY_OVERHEAD_BYTES: u64 = 24;

impl Entry {
    /// The entry's id (term and index).
    #[must_use]
    pub fn id(&self) -> EntryId {
        EntryId::new(self.term, self.index)
    }

    /// Bytes charged for this entry in byte-bounded slices and limits.
    #[must_use]
    pub fn size_bytes(&self) -> u64 {
        ENTRY_OVERHEAD_BYTES + self.payload.size_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_clone_shares_the_buffer() {
        let a = Data::from("hello");
        let b = a.clone();
        assert!(std::ptr::eq(a.as_ref().as_ptr(), b.as_ref().as_ptr()));
        assert_eq!(format!("{a:?}"), "\"hello\"");
        assert_eq!(format!("{:?}", Data::from(vec![0xff; 100])), "<100 bytes>");
    }

    #[test]
    fn size_counts_overhead() {
        let e = Entry { index: LogIndex(1), term: Term(1), payload: EntryPayload::Noop };
        assert_eq!(e.size_bytes(), ENTRY_OVERHEAD_BYTES);
        let e = Entry { index: LogIndex(1), term: Term(1), payload: EntryPayload::Command(Data::from(vec![0; 256])) };
        assert_eq!(e.size_bytes(), ENTRY_OVERHEAD_BYTES + 256);
    }
}
