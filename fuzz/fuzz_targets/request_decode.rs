//! Every message kind the node decodes, and log commands, from arbitrary bytes: an error is
//! fine, a panic is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quorate_api::{NodeMessage, PROTOCOL_VERSION, decode_command, kinds};
use quorate_transport::WireMessage;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else { return };
    let all = [
        kinds::RAFT,
        kinds::SNAPSHOT_CHUNK,
        kinds::REQUEST,
        kinds::RESPONSE,
        kinds::REQUEST_ATTEMPT,
        kinds::HASH_SAMPLES,
        kinds::DISK_STATUS,
    ];
    let kind = all[usize::from(selector) % all.len()];
    if let Ok(m) = NodeMessage::decode(PROTOCOL_VERSION, kind, payload) {
        // The node checks a decoded request's bounds next; that must not panic either.
        match &m {
            NodeMessage::Request(r) => {
                let _ = r.validate();
            }
            NodeMessage::RequestAttempt(a) => {
                let _ = a.request.validate();
            }
            _ => {}
        }
        // What decodes must encode again.
        let mut out = Vec::new();
        m.encode(&mut out).expect("a decoded message re-encodes");
    }
    let _ = decode_command(data);
});
