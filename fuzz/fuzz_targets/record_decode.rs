//! The storage record codec (`quorate_log::record`, what `quorate-storage` reads back from
//! RocksDB) from arbitrary bytes: every record type the store decodes, under a key of each
//! column family. An error is fine, a panic is a bug; a record that verifies and decodes must
//! encode to a record that decodes to the same value. (Not to the same bytes: postcard reads an
//! over-long varint, e.g. `c7 00` for 71, as the number it denotes, and the store only ever
//! writes the shortest form — `fuzz/regressions/record_decode/` keeps the input that showed it.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use quorate_log::record::{self, Cf, EntryOwned};
use quorate_log::{Configuration, HardState, LogIndex, SnapshotMeta};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    // The next byte (if any) is the key length; the key follows, then the stored value.
    let (key, value) = match rest.split_first() {
        Some((&n, tail)) if usize::from(n) <= tail.len() => tail.split_at(usize::from(n)),
        _ => (&[][..], rest),
    };
    let _ = record::key_name(Cf::Log, key);
    let _ = record::parse_index(key);
    match selector % 7 {
        0 => {
            if let Ok(e) = record::decode::<EntryOwned>(Cf::Log, key, value) {
                let again = record::encode_entry(key, e.term, &e.payload).expect("re-encode");
                let back = record::decode::<EntryOwned>(Cf::Log, key, &again).expect("decode the re-encoding");
                assert_eq!((back.term, back.payload), (e.term, e.payload), "an entry survives a round trip");
                assert!(again.len() <= value.len(), "the store's encoding is the shortest");
            }
        }
        1 => {
            let _ = record::decode_term(key, value);
        }
        2 => {
            if let Ok(h) = record::decode::<HardState>(Cf::Meta, key, value) {
                let again = record::encode(Cf::Meta, key, &h).expect("re-encode");
                assert_eq!(record::decode::<HardState>(Cf::Meta, key, &again).expect("decode the re-encoding"), h);
                assert!(again.len() <= value.len(), "the store's encoding is the shortest");
            }
        }
        3 => {
            let _ = record::decode::<Configuration>(Cf::Meta, key, value);
        }
        4 => {
            let _ = record::decode::<SnapshotMeta>(Cf::Snap, key, value);
        }
        5 => {
            let _ = record::decode::<u32>(Cf::Meta, record::KEY_FORMAT, value);
            let _ = record::decode::<LogIndex>(Cf::Meta, record::KEY_APPLIED, value);
        }
        _ => {
            let _ = record::verify(Cf::Sm, key, value);
        }
    }
});
