//! Two nodes on loopback exchanging messages over QUIC with mutual TLS, using development
//! certificates generated into a temporary directory.
//!
//! ```text
//! cargo run --profile ci -p quorate-transport --example two_nodes
//! ```

use quorate_log::NodeId;
use quorate_transport::{
    ClusterId, Credentials, Incoming, MessageKind, RawMessage, Transport, TransportConfig, dev_certs,
};
use std::sync::Arc;
use std::time::Duration;

const PING: MessageKind = MessageKind(0x0100);
const PONG: MessageKind = MessageKind(0x0101);
const ROUNDS: u32 = 5;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(demo())
}

async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("quorate-two-nodes-{}", std::process::id()));
    let cluster = ClusterId::new("demo")?;
    let (n1, n2) = (NodeId::new(1).ok_or("id")?, NodeId::new(2).ok_or("id")?);
    let certs = dev_certs::generate(&dir, &cluster, &[n1, n2], &[])?;
    println!("dev certificates in {}", dir.display());

    let mut bound = Vec::new();
    for node in [n1, n2] {
        let creds = Arc::new(Credentials::load(certs.nodes[&node].clone())?);
        println!(
            "node {node}: {} (certificate expires in {} days)",
            creds.identity(),
            creds.seconds_until_earliest_expiry() / 86_400
        );
        let config = TransportConfig::new(cluster.clone(), node, "127.0.0.1:0".parse()?);
        bound.push(Transport::<RawMessage>::bind(config, creds).await?);
    }
    let (t2, mut inbox2) = bound.pop().ok_or("node 2")?;
    let (t1, mut inbox1) = bound.pop().ok_or("node 1")?;
    t1.add_peer(n2, t2.local_addr());
    t2.add_peer(n1, t1.local_addr());

    // Node 2 answers every ping with a pong.
    let responder = tokio::spawn(async move {
        while let Some(Incoming::Peer { from, message, .. }) = inbox2.recv().await {
            let reply = RawMessage { kind: PONG, payload: message.payload };
            let _ = t2.try_send(from, reply);
        }
    });

    for round in 0..ROUNDS {
        let ping = RawMessage { kind: PING, payload: format!("ping {round}").into_bytes() };
        t1.try_send(n2, ping)?;
        let reply = tokio::time::timeout(Duration::from_secs(10), inbox1.recv()).await?;
        if let Some(Incoming::Peer { from, message, .. }) = reply {
            println!("node 1 got {:?} from node {from}: {}", message.kind, String::from_utf8_lossy(&message.payload));
        }
    }
    println!("node 1 -> node 2: {:?}", t1.peer_stats(n2));
    t1.shutdown().await;
    responder.abort();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
