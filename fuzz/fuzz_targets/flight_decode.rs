//! A flight recording (`quorate replay FILE`) from arbitrary bytes
//! (`quorate_api::flight::decode_dump`): an error is fine, a panic is a bug; what decodes
//! must encode back to a recording that decodes to the same dump.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quorate_api::flight::{decode_dump, encode_dump};

fuzz_target!(|data: &[u8]| {
    if let Ok(dump) = decode_dump(data) {
        let again = decode_dump(&encode_dump(&dump)).expect("a re-encoded dump decodes");
        assert_eq!(again.inputs, dump.inputs);
        assert_eq!(again.header, dump.header);
        assert_eq!(again.origin, dump.origin);
    }
});
