//! Every message kind the node decodes, and log commands, from arbitrary bytes: an error is
//! fine, a panic is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quorate_api::{NodeMessage, PROTOCOL_VERSION, decode_command, kinds};
use quorate_transport::WireMessage;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else { return };
    let kind = [kinds::RAFT, kinds::SNAPSHOT_CHUNK, kinds::REQUEST, kinds::RESPONSE][usize::from(selector % 4)];
    if let Ok(m) = NodeMessage::decode(PROTOCOL_VERSION, kind, payload) {
        // The node checks a decoded request's bounds next; that must not panic either.
        if let NodeMessage::Request(r) = &m {
            let _ = r.validate();
        }
        // What decodes must encode again.
        let mut out = Vec::new();
        m.encode(&mut out).expect("a decoded message re-encodes");
    }
    let _ = decode_command(data);
});
