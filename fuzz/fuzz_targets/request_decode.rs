//! Every message kind the node decodes (`quorate_api::kinds::ALL`: Raft, snapshot chunks,
//! requests, responses, hash samples, attempted requests, disk status, snapshot pieces and
//! their acknowledgements), at every protocol version, and log
//! commands, from arbitrary bytes: an error is fine, a panic is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quorate_api::{NodeMessage, PROTOCOL_VERSION, decode_command, kinds};
use quorate_transport::WireMessage;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else { return };
    let kind = kinds::ALL[usize::from(selector) % kinds::ALL.len()];
    // The high bit picks a protocol version other than the current one (refused, never a panic).
    let version = if selector & 0x80 == 0 { PROTOCOL_VERSION } else { PROTOCOL_VERSION.wrapping_add(1) };
    if let Ok(m) = NodeMessage::decode(version, kind, payload) {
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
