//! Byte strings for `Vec<u8>` fields: `#[serde(with = "quorate_log::byte_string")]` (and
//! [`option`] for `Option<Vec<u8>>`).
//!
//! Serde's own `Vec<u8>` is a sequence of `u8`: postcard writes and reads it one element at a
//! time (a visitor call, a bounds check and a push per byte), and computes its size the same
//! way. As a byte string it is one length and one copy — and postcard's encoding of the two is
//! **the same bytes** (a varint length, then the bytes raw), so annotating a field changes no
//! wire or stored format: the fixtures of released formats prove it
//! (`crates/quorate-api/tests/released.rs`), and [`tests`] below for both shapes. Formats
//! that tell the two apart keep reading what they wrote: JSON writes a byte string as an
//! array of numbers, as it writes a `Vec<u8>`, and such an array is read back here.

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserializer, Serializer};
use std::fmt;

/// Writes `bytes` as a byte string (postcard: varint length, then the bytes).
///
/// # Errors
/// Those of the serializer.
pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(bytes)
}

/// Reads a byte string (or, from a self-describing format, a sequence of bytes).
///
/// # Errors
/// Those of the deserializer; anything but bytes or a sequence of `u8`.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    d.deserialize_byte_buf(ByteBuf)
}

/// Most bytes reserved ahead from a sequence's size hint (which comes from the input).
const SEQ_RESERVE_BYTES_MAX: usize = 4096;

struct ByteBuf;

impl<'de> Visitor<'de> for ByteBuf {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(SEQ_RESERVE_BYTES_MAX));
        while let Some(b) = seq.next_element::<u8>()? {
            v.push(b);
        }
        Ok(v)
    }
}

/// `Option<Vec<u8>>` as an option of a byte string: `#[serde(with =
/// "quorate_log::byte_string::option")]`. Postcard: the same bytes as `Option<Vec<u8>>`.
pub mod option {
    use super::ByteBuf;
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serialize, Serializer};
    use std::fmt;

    struct Bytes<'a>(&'a [u8]);

    impl Serialize for Bytes<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    /// Writes `None`, or `Some` and the bytes as a byte string.
    ///
    /// # Errors
    /// Those of the serializer.
    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => s.serialize_some(&Bytes(b)),
            None => s.serialize_none(),
        }
    }

    /// Reads what [`serialize`] writes.
    ///
    /// # Errors
    /// Those of the deserializer.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        d.deserialize_option(OptionVisitor)
    }

    struct OptionVisitor;

    impl<'de> Visitor<'de> for OptionVisitor {
        type Value = Option<Vec<u8>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an optional byte string")
        }

        fn visit_none<E: de::Error>(self) -> Result<Option<Vec<u8>>, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Option<Vec<u8>>, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<Vec<u8>>, D::Error> {
            d.deserialize_byte_buf(ByteBuf).map(Some)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    /// The shape of a value-carrying record, plain (`Vec<u8>`: a sequence of `u8`).
    #[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
    struct Plain {
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        n: u64,
    }

    /// The same fields as byte strings.
    #[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
    struct Bytes {
        #[serde(with = "crate::byte_string")]
        key: Vec<u8>,
        #[serde(with = "crate::byte_string::option")]
        value: Option<Vec<u8>>,
        n: u64,
    }

    fn cases() -> Vec<Plain> {
        let mut long = vec![0u8; 70_000];
        for (i, b) in long.iter_mut().enumerate() {
            *b = (i * 7 % 251) as u8;
        }
        vec![
            Plain { key: vec![], value: None, n: 0 },
            Plain { key: b"k".to_vec(), value: Some(vec![]), n: 1 },
            Plain { key: vec![0, 127, 128, 255], value: Some(vec![1; 127]), n: 300 },
            Plain { key: vec![9; 128], value: Some(vec![2; 16_384]), n: u64::MAX },
            Plain { key: long.clone(), value: Some(long), n: 7 },
        ]
    }

    #[test]
    fn postcard_bytes_are_those_of_a_plain_vec() {
        for p in cases() {
            let b = Bytes { key: p.key.clone(), value: p.value.clone(), n: p.n };
            let plain = postcard::to_allocvec(&p).expect("encode plain");
            let bytes = postcard::to_allocvec(&b).expect("encode bytes");
            assert_eq!(plain, bytes, "key of {} bytes", p.key.len());
            assert_eq!(postcard::experimental::serialized_size(&b).expect("size"), plain.len());
            // Each reads what the other wrote.
            assert_eq!(postcard::from_bytes::<Bytes>(&plain).expect("decode"), b);
            assert_eq!(postcard::from_bytes::<Plain>(&bytes).expect("decode"), p);
        }
    }

    #[test]
    fn a_sequence_of_bytes_is_read_too() {
        // What a self-describing format (JSON: an array of numbers) presents.
        use serde::de::value::{Error, SeqDeserializer};
        let seq = SeqDeserializer::<_, Error>::new(vec![1u8, 2, 255].into_iter());
        assert_eq!(crate::byte_string::deserialize(seq).expect("a sequence"), vec![1, 2, 255]);
        let not_bytes = SeqDeserializer::<_, Error>::new(vec![1u32, 256].into_iter());
        assert!(crate::byte_string::deserialize(not_bytes).is_err(), "256 is not a byte");
    }

    #[test]
    fn truncated_or_lying_lengths_are_errors_not_allocations() {
        let b = Bytes { key: vec![5; 300], value: Some(vec![6; 300]), n: 3 };
        let bytes = postcard::to_allocvec(&b).expect("encode");
        for cut in 0..bytes.len() {
            assert!(postcard::from_bytes::<Bytes>(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // A length of u32::MAX with three bytes behind it.
        let lying = [0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2, 3];
        assert!(postcard::from_bytes::<Bytes>(&lying).is_err());
    }
}
