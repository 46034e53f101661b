//! Writes a key and reads it back from a local dev cluster.
//!
//! ```sh
//! quorate certs dev --dir /tmp/q --cluster dev --nodes 3
//! for i in 1 2 3; do quorate node start --config /tmp/q/node-$i.toml & done
//! cargo run -p quorate-client --example put_get -- /tmp/q/certs
//! ```

use quorate_client::{Client, ClientConfig, ReadConsistency};
use quorate_log::NodeId;
use quorate_transport::{ClusterId, TlsPaths};
use std::path::PathBuf;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let certs = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "certs".into()));
    let tls = TlsPaths {
        ca: certs.join("ca.crt"),
        cert: certs.join("client-admin.crt"),
        key: certs.join("client-admin.key"),
    };
    let mut members = Vec::new();
    for i in 1..=3u64 {
        let id = NodeId::new(i).ok_or("node ids start at 1")?;
        members.push((id, format!("127.0.0.1:{}", 7000 + i).parse()?));
    }
    let client = Client::new(ClientConfig::new(ClusterId::new("dev")?, members, tls))?;

    let revision = client.put("greeting", "hello").await?;
    let read = client.get("greeting", ReadConsistency::Linearizable).await?;
    let value = read.kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
    println!("put at revision {revision}; read {value:?} from node {}", read.read.node);
    client.close();
    Ok(())
}
