//! A replicated counter: three processes, RocksDB storage, QUIC with mutual TLS.
//!
//! `cargo run -p quorate-runtime --features rocksdb,quic --example counter` writes dev
//! certificates to a temporary directory, starts three node processes (this program with
//! `node <id> <dir> <port> <port> <port>`, see `common/mod.rs`), sends ten increments as a
//! client (to whichever node leads), reads the counter linearizably from every node, and stops
//! the nodes.

mod common;

use common::{Cluster, Error, node_args};
use quorate_log::LogIndex;
use quorate_runtime::quic::{KIND_APP_MIN, QuicMessage};
use quorate_runtime::{Committed, ReadLevel, RestoreError, StateMachine};
use std::io::{Read, Write};

#[derive(Default)]
struct Counter {
    value: u64,
    applied: LogIndex,
}

impl StateMachine for Counter {
    type Output = u64;
    fn apply(&mut self, batch: &[Committed<'_>]) -> Vec<u64> {
        batch.iter().map(|c| (self.value += 1, self.applied = c.index, self.value).2).collect()
    }
    fn snapshot(&self, out: &mut dyn Write) -> std::io::Result<()> {
        out.write_all(&self.value.to_le_bytes())
    }
    fn restore(&mut self, applied: LogIndex, image: &mut dyn Read) -> Result<(), RestoreError> {
        let mut bytes = [0u8; 8];
        image.read_exact(&mut bytes)?;
        (self.value, self.applied) = (u64::from_le_bytes(bytes), applied);
        Ok(())
    }
    fn applied(&self) -> LogIndex {
        self.applied
    }
}

const INCR: u16 = KIND_APP_MIN;
const GET: u16 = KIND_APP_MIN + 1;
const VALUE: u16 = KIND_APP_MIN + 2;
const REFUSED: u16 = KIND_APP_MIN + 3;

/// Sends `kind` to node `id`; the counter's value if it answers with one.
async fn ask(cluster: &Cluster, id: u64, kind: u16) -> Result<u64, Error> {
    match cluster.connect(id).await?.request(&QuicMessage::App { kind, payload: vec![] }).await? {
        QuicMessage::App { kind: VALUE, payload } => Ok(u64::from_le_bytes(payload.as_slice().try_into()?)),
        other => Err(format!("node {id}: {other:?}").into()),
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    if let Some(args) = node_args()? {
        let (node, mut requests) = args.start("counter", Counter::default()).await?;
        while let Some(request) = requests.recv().await {
            let handle = node.handle();
            tokio::spawn(async move {
                let answer = match &request.message {
                    QuicMessage::App { kind: INCR, .. } => handle.propose(vec![]).await,
                    _ => handle.read(ReadLevel::Linearizable, |c: &Counter| c.value).await,
                };
                let reply = match answer {
                    Ok(v) => QuicMessage::App { kind: VALUE, payload: v.to_le_bytes().to_vec() },
                    Err(e) => QuicMessage::App { kind: REFUSED, payload: e.to_string().into_bytes() },
                };
                let _ = request.respond(&reply).await;
            });
        }
        return Ok(());
    }
    let cluster = Cluster::launch("counter")?;
    let mut target = 1;
    for i in 1..=10 {
        // Only the leader accepts increments: on a refusal, try the next node.
        let v = loop {
            match ask(&cluster, target, INCR).await {
                Ok(v) => break v,
                Err(_) => target = target % 3 + 1,
            }
        };
        println!("increment {i} -> {v} (node {target})");
    }
    for id in 1..=3 {
        let v = loop {
            if let Ok(v) = ask(&cluster, id, GET).await {
                break v;
            }
        };
        println!("node {id}: counter = {v}");
    }
    Ok(())
}
