//! The storage record codec (`quorate_log::record`, what `quorate-storage` reads back from
//! RocksDB) from arbitrary bytes: every record type the store decodes, under a key of each
//! column family. An error is fine, a panic is a bug; a record that verifies and decodes must
//! encode back to the same bytes.
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
                assert_eq!(again, value, "a decoded entry re-encodes to the same bytes");
            }
        }
        1 => {
            let _ = record::decode_term(key, value);
        }
        2 => {
            if let Ok(h) = record::decode::<HardState>(Cf::Meta, key, value) {
                assert_eq!(record::encode(Cf::Meta, key, &h).expect("re-encode"), value);
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
