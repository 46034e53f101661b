//! A replicated counter: three processes, RocksDB storage, QUIC with mutual TLS.
//!
//! `cargo run -p quorate-runtime --features rocksdb,quic --example counter` writes dev
//! certificates to a temporary directory, starts three node processes (this program with
//! `node <id> <dir> <port> <port> <port>`), sends ten increments as a client (to whichever
//! node leads), reads the counter linearizably from every node, and stops the nodes.

use quorate_log::{Configuration, LogIndex, NodeId};
use quorate_runtime::quic::{KIND_APP_MIN, QuicMessage, QuicNetwork, pump};
use quorate_runtime::{Committed, Config, Node, ReadLevel, RestoreError, RocksLog, StateMachine, SystemClock};
use quorate_storage::StoreOptions;
use quorate_transport::{
    Client, ClientOptions, ClusterId, Credentials, Principal, Role, TlsPaths, Transport, TransportConfig,
};
use std::{path::Path, process::Command, sync::Arc};

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
    fn snapshot(&self) -> Vec<u8> {
        self.value.to_le_bytes().to_vec()
    }
    fn restore(&mut self, applied: LogIndex, s: &[u8]) -> Result<(), RestoreError> {
        let bytes = s.try_into().map_err(|_| RestoreError("expected 8 bytes".into()))?;
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

fn nid(i: u64) -> NodeId {
    NodeId::new(i).expect("non-zero")
}

fn tls(dir: &Path, name: &str) -> Result<Credentials, Box<dyn std::error::Error>> {
    let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    Ok(Credentials::load(TlsPaths { ca: dir.join("ca.crt"), cert, key })?)
}

/// One node process: storage in `<dir>/node-<id>`, peers on localhost `ports`.
async fn node(id: u64, dir: &Path, ports: &[u16]) -> Result<(), Box<dyn std::error::Error>> {
    let voters = Configuration::with_voters((1..=3).map(nid))?;
    let storage = RocksLog::open(dir.join(format!("node-{id}")), StoreOptions::with_bootstrap(voters))?;
    let config =
        TransportConfig::new(ClusterId::new("counter")?, nid(id), ([127, 0, 0, 1], ports[id as usize - 1]).into());
    let (transport, incoming) = Transport::bind(config, Arc::new(tls(dir, &format!("node-{id}"))?)).await?;
    for peer in (1..=3).filter(|p| *p != id) {
        transport.add_peer(nid(peer), ([127, 0, 0, 1], ports[peer as usize - 1]).into());
    }
    let network = QuicNetwork::new(Arc::new(transport));
    let node = Node::start(Config::new(nid(id)), storage, Counter::default(), network, SystemClock::new())?;
    let (tx, mut requests) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(pump(incoming, node.inbox(), tx));
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
    Ok(())
}

/// Sends `kind` to node `id` until it answers with a value.
async fn ask(creds: &Credentials, ports: &[u16], id: u64, kind: u16) -> Result<u64, Box<dyn std::error::Error>> {
    let addr = ([127, 0, 0, 1], ports[id as usize - 1]).into();
    let client = Client::<QuicMessage>::connect(creds, nid(id), addr, ClientOptions::default()).await?;
    match client.request(&QuicMessage::App { kind, payload: vec![] }).await? {
        QuicMessage::App { kind: VALUE, payload } => Ok(u64::from_le_bytes(payload.as_slice().try_into()?)),
        other => Err(format!("node {id}: {other:?}").into()),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("node") {
        let ports: Vec<u16> = args[4..7].iter().map(|p| p.parse()).collect::<Result<_, _>>()?;
        return node(args[2].parse()?, Path::new(&args[3]), &ports).await;
    }
    let dir = tempfile::tempdir()?;
    let client = (Principal::new("demo")?, Role::Write);
    quorate_transport::dev_certs::generate(
        dir.path(),
        &ClusterId::new("counter")?,
        &[nid(1), nid(2), nid(3)],
        &[client],
    )?;
    let ports: Vec<u16> = (0..3)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.port()))
        .collect::<Result<_, _>>()?;
    let mut children = Vec::new();
    for id in 1..=3u64 {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("node").arg(id.to_string()).arg(dir.path()).args(ports.iter().map(u16::to_string));
        children.push(cmd.spawn()?);
    }
    let creds = tls(dir.path(), "client-demo")?;
    let mut target = 1;
    for i in 1..=10 {
        // Only the leader accepts increments: on a refusal, try the next node.
        let v = loop {
            match ask(&creds, &ports, target, INCR).await {
                Ok(v) => break v,
                Err(_) => target = target % 3 + 1,
            }
        };
        println!("increment {i} -> {v} (node {target})");
    }
    for id in 1..=3 {
        let v = loop {
            if let Ok(v) = ask(&creds, &ports, id, GET).await {
                break v;
            }
        };
        println!("node {id}: counter = {v}");
    }
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    Ok(())
}
