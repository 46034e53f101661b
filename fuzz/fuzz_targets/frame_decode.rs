//! Fuzzes the frame decoder: any input either decodes, asks for more bytes, or returns a
//! typed error; never a panic, never an allocation beyond the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quorate_transport::{Hello, RawMessage, decode_frame, decode_message, encode_frame};

fuzz_target!(|data: &[u8]| {
    let limit = 64 * 1024;
    let mut rest = data;
    while let Ok(Some((frame, used))) = decode_frame(rest, limit) {
        assert!(used <= rest.len() && used >= quorate_transport::HEADER_BYTES);
        let _ = Hello::decode(&frame);
        if let Ok(m) = decode_message::<RawMessage>(&frame) {
            // Round trip: re-encoding a decoded message gives the same bytes.
            let mut out = Vec::new();
            encode_frame(m.kind, &m.payload, limit, &mut out).expect("re-encode");
            assert_eq!(out, rest[..used]);
        }
        rest = &rest[used..];
    }
});
