//! Encodes a few requests and prints their sizes and bytes.

use quorate_api::{ClientRequest, NodeMessage, Request, Sequenced, SessionId};
use quorate_transport::WireMessage;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let requests = [
        Request::Put { key: b"user/42".to_vec(), value: b"alice".to_vec() },
        Request::Delete { key: b"user/42".to_vec() },
        Request::Status,
    ];
    for (i, body) in requests.into_iter().enumerate() {
        let msg = NodeMessage::Request(ClientRequest {
            id: i as u64,
            session: Some(Sequenced { session: SessionId(7), seq: i as u64 + 1 }),
            body,
        });
        let mut bytes = Vec::new();
        msg.encode(&mut bytes)?;
        println!("kind {:?}: {} bytes {:02x?}", msg.kind(), bytes.len(), bytes);
    }
    Ok(())
}
