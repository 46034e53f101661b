//! A replicated lock service with fencing tokens: three processes, RocksDB, QUIC with mTLS.
//!
//! `cargo run -p quorate-runtime --features rocksdb,quic --example lock` starts three node
//! processes (this program with `node <id> <dir> <port> <port> <port>`, see `common/mod.rs`)
//! and plays two clients:
//! alice takes the lock, bob is refused, alice releases, bob takes it with a larger fencing
//! token — and a resource that remembers the largest token it has seen refuses alice's stale
//! one. Every grant carries a token that increases with every grant, across leader changes.

mod common;

use common::{Cluster, Error, node_args};
use quorate_log::LogIndex;
use quorate_runtime::quic::{KIND_APP_MIN, QuicMessage};
use quorate_runtime::{Committed, RestoreError, StateMachine};
use std::collections::BTreeMap;

/// Locks by name: holder and fencing token. Commands are `acquire <lock> <holder>` and
/// `release <lock> <holder>`; the output is the token, or why not.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Locks {
    held: BTreeMap<String, (String, u64)>,
    last_token: u64,
    applied: LogIndex,
}

impl Locks {
    fn run(&mut self, command: &str) -> Result<u64, String> {
        match command.split(' ').collect::<Vec<_>>().as_slice() {
            ["acquire", lock, holder] => match self.held.get(*lock) {
                Some((h, t)) if h != holder => Err(format!("{lock} is held by {h} (token {t})")),
                Some((_, t)) => Ok(*t),
                None => {
                    self.last_token += 1;
                    self.held.insert((*lock).to_owned(), ((*holder).to_owned(), self.last_token));
                    Ok(self.last_token)
                }
            },
            ["release", lock, holder] => match self.held.get(*lock) {
                Some((h, t)) if h == holder => Ok((*t, self.held.remove(*lock)).0),
                _ => Err(format!("{holder} does not hold {lock}")),
            },
            _ => Err(format!("unknown command {command:?}")),
        }
    }
}

impl StateMachine for Locks {
    type Output = Result<u64, String>;
    fn apply(&mut self, batch: &[Committed<'_>]) -> Vec<Self::Output> {
        let out = batch.iter().map(|c| self.run(&String::from_utf8_lossy(c.command))).collect();
        self.applied = batch.last().map_or(self.applied, |c| c.index);
        out
    }
    fn snapshot(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        out.write_all(&postcard::to_allocvec(self).map_err(std::io::Error::other)?)
    }
    fn restore(&mut self, applied: LogIndex, image: &mut dyn std::io::Read) -> Result<(), RestoreError> {
        let mut bytes = Vec::new();
        image.read_to_end(&mut bytes)?;
        *self = postcard::from_bytes(&bytes).map_err(|e| RestoreError(e.to_string()))?;
        self.applied = applied;
        Ok(())
    }
    fn applied(&self) -> LogIndex {
        self.applied
    }
}

const COMMAND: u16 = KIND_APP_MIN;
const GRANTED: u16 = KIND_APP_MIN + 1;
const REFUSED: u16 = KIND_APP_MIN + 2;
const NOT_SERVED: u16 = KIND_APP_MIN + 3;

/// Sends `command` to whichever node leads; the lock service's answer.
async fn ask(cluster: &Cluster, command: &str) -> Result<u64, String> {
    for attempt in 0..300 {
        let Ok(client) = cluster.connect(attempt % 3 + 1).await else {
            continue;
        };
        match client.request(&QuicMessage::App { kind: COMMAND, payload: command.as_bytes().to_vec() }).await {
            Ok(QuicMessage::App { kind: GRANTED, payload }) => {
                return Ok(u64::from_le_bytes(payload.as_slice().try_into().unwrap_or_default()));
            }
            Ok(QuicMessage::App { kind: REFUSED, payload }) => {
                return Err(String::from_utf8_lossy(&payload).into_owned());
            }
            _ => {}
        }
    }
    Err("no node answered".into())
}

/// A resource protected by fencing: it refuses a token older than the largest it has seen.
fn write_resource(largest: &mut u64, who: &str, token: u64) {
    let verdict = if token >= *largest { "accepted" } else { "refused (stale token)" };
    *largest = (*largest).max(token);
    println!("resource: write by {who} with token {token} {verdict}");
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    if let Some(args) = node_args()? {
        let (node, mut requests) = args.start("locks", Locks::default()).await?;
        while let Some(request) = requests.recv().await {
            let handle = node.handle();
            tokio::spawn(async move {
                let QuicMessage::App { payload, .. } = &request.message else { return };
                let reply = match handle.propose(payload.clone()).await {
                    Ok(Ok(token)) => QuicMessage::App { kind: GRANTED, payload: token.to_le_bytes().to_vec() },
                    Ok(Err(why)) => QuicMessage::App { kind: REFUSED, payload: why.into_bytes() },
                    Err(e) => QuicMessage::App { kind: NOT_SERVED, payload: e.to_string().into_bytes() },
                };
                let _ = request.respond(&reply).await;
            });
        }
        return Ok(());
    }
    let cluster = Cluster::launch("locks")?;
    let mut largest = 0;
    let alice = ask(&cluster, "acquire db alice").await?;
    println!("alice: acquired db, token {alice}");
    write_resource(&mut largest, "alice", alice);
    println!("bob: {}", ask(&cluster, "acquire db bob").await.err().unwrap_or_default());
    ask(&cluster, "release db alice").await?;
    println!("alice: released db");
    let bob = ask(&cluster, "acquire db bob").await?;
    println!("bob: acquired db, token {bob}");
    write_resource(&mut largest, "bob", bob);
    write_resource(&mut largest, "alice", alice);
    Ok(())
}
