//! A lock with a lease and **fencing tokens**, built on compare-and-swap and transactions —
//! and a demonstration that the token stops a holder that outlived its lease (the failure
//! Jepsen found in etcd 3.4.3's lock: a lease is only advice, a paused process cannot know
//! that it expired).
//!
//! * The lock is one key. Acquiring it is a `cas` from "absent" (or from an expired holder's
//!   value) to `holder=NAME;expires_unix_ms=T`. The **fencing token** is the revision of that
//!   write: revisions only grow, so a later holder always has a larger token.
//! * Every write to the protected resource is a transaction that runs only if the stored fence
//!   is not greater than the writer's token, and raises the fence to it. A holder whose lease
//!   expired and who was replaced writes with a smaller token than the fence: refused.
//!
//! The demonstration: A acquires the lock and "pauses" (does nothing) past its lease; B takes
//! the expired lock and writes; A wakes up and writes with its old token — the fence refuses it.
//! Exits non-zero if the stale write is accepted.
//!
//! ```sh
//! quorate certs dev --dir /tmp/q --cluster dev --nodes 3
//! for i in 1 2 3; do quorate node start --config /tmp/q/node-$i.toml & done
//! QUORATE_CERTS=/tmp/q/certs QUORATE_CLUSTER=dev \
//! QUORATE_ENDPOINTS=1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 \
//!   cargo run -p quorate-client --example lock
//! ```

use quorate_client::{Client, ClientConfig, Compare, CompareOp, CompareTarget, ReadConsistency, Txn, TxnOp};
use quorate_log::NodeId;
use quorate_transport::{ClusterId, TlsPaths};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

type Error = Box<dyn std::error::Error>;

/// How long a lock is held without renewal.
const TTL: Duration = Duration::from_millis(1500);
/// How long `acquire` keeps trying.
const ACQUIRE_WAIT: Duration = Duration::from_secs(20);

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A held lock: who holds it, the value stored, and the fencing token.
#[derive(Debug, Clone)]
struct Held {
    holder: String,
    value: Vec<u8>,
    token: u64,
}

/// The lock named `name`: key `lock/NAME`, fence `lock/NAME/fence`.
struct Lock {
    key: String,
    fence: String,
}

impl Lock {
    fn new(name: &str) -> Lock {
        Lock { key: format!("lock/{name}"), fence: format!("lock/{name}/fence") }
    }

    /// Takes the lock when it is free or its holder's lease has expired.
    async fn acquire(&self, client: &Client, holder: &str) -> Result<Held, Error> {
        let deadline = Instant::now() + ACQUIRE_WAIT;
        while Instant::now() < deadline {
            let current = client.get(&self.key, ReadConsistency::Linearizable).await?.kv.map(|kv| kv.value);
            let free = match &current {
                None => true,
                Some(v) => expires_ms(v).is_none_or(|t| t <= unix_ms()),
            };
            if free {
                let value = format!("holder={holder};expires_unix_ms={}", unix_ms() + TTL.as_millis() as u64);
                let swapped = client.cas(&self.key, current.as_deref(), value.as_bytes()).await?;
                if swapped.succeeded {
                    // The revision of the acquiring write: larger than any earlier holder's.
                    return Ok(Held { holder: holder.to_string(), value: value.into_bytes(), token: swapped.revision });
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("{holder} could not acquire {} within {}s", self.key, ACQUIRE_WAIT.as_secs()).into())
    }

    /// Writes `data` to `resource` if `held`'s token is not older than the fence; whether it
    /// was written.
    async fn fenced_put(&self, client: &Client, held: &Held, resource: &str, data: &str) -> Result<bool, Error> {
        let token = format!("{:020}", held.token);
        let txn = Txn {
            // Zero-padded decimals compare as numbers; an absent fence is smallest.
            compare: vec![Compare {
                key: self.fence.clone().into_bytes(),
                target: CompareTarget::Value(Some(token.clone().into_bytes())),
                op: CompareOp::Greater,
            }],
            // The fence is newer: a later holder exists. Write nothing.
            success: vec![],
            failure: vec![
                TxnOp::Put { key: self.fence.clone().into_bytes(), value: token.into_bytes() },
                TxnOp::Put { key: resource.as_bytes().to_vec(), value: data.as_bytes().to_vec() },
            ],
        };
        let outcome = client.txn(txn).await?;
        Ok(!outcome.succeeded)
    }

    /// Releases the lock if `held` still holds it.
    async fn release(&self, client: &Client, held: &Held) -> Result<bool, Error> {
        let txn = Txn {
            compare: vec![Compare {
                key: self.key.clone().into_bytes(),
                target: CompareTarget::Value(Some(held.value.clone())),
                op: CompareOp::Equal,
            }],
            success: vec![TxnOp::Delete { key: self.key.clone().into_bytes() }],
            failure: vec![],
        };
        Ok(client.txn(txn).await?.succeeded)
    }
}

fn expires_ms(value: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(value).ok()?;
    s.split(';').find_map(|p| p.strip_prefix("expires_unix_ms="))?.parse().ok()
}

fn client_from_env() -> Result<Client, Error> {
    let certs = PathBuf::from(std::env::var("QUORATE_CERTS").unwrap_or_else(|_| "certs".into()));
    let cluster = std::env::var("QUORATE_CLUSTER").unwrap_or_else(|_| "dev".into());
    let endpoints = std::env::var("QUORATE_ENDPOINTS")
        .unwrap_or_else(|_| "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003".into());
    let mut members = Vec::new();
    for e in endpoints.split(',').filter(|e| !e.is_empty()) {
        let (id, addr) = e.split_once('=').ok_or_else(|| format!("endpoint `{e}` is not ID=HOST:PORT"))?;
        let id = NodeId::new(id.trim().parse()?).ok_or("node ids start at 1")?;
        members.push((id, addr.trim().parse()?));
    }
    let tls = TlsPaths {
        ca: certs.join("ca.crt"),
        cert: certs.join("client-admin.crt"),
        key: certs.join("client-admin.key"),
    };
    Ok(Client::new(ClientConfig::new(ClusterId::new(&cluster)?, members, tls))?)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    // Two processes in real life; two clients (two sessions) here.
    let (a, b) = (client_from_env()?, client_from_env()?);
    let lock = Lock::new("demo");
    let resource = "lock/demo/resource";

    let held_a = lock.acquire(&a, "A").await?;
    println!("A holds {} with fencing token {}", lock.key, held_a.token);
    assert!(lock.fenced_put(&a, &held_a, resource, "written by A").await?, "A's first write must pass the fence");
    println!("A wrote the resource under its token");

    // A pauses (a GC pause, SIGSTOP, a slow disk) for longer than its lease.
    tokio::time::sleep(TTL + Duration::from_millis(200)).await;

    let held_b = lock.acquire(&b, "B").await?;
    println!("A's lease expired; B holds {} with fencing token {}", lock.key, held_b.token);
    if held_b.token <= held_a.token {
        return Err(format!("B's token {} is not above A's {}", held_b.token, held_a.token).into());
    }
    assert!(lock.fenced_put(&b, &held_b, resource, "written by B").await?, "B's write must pass the fence");
    println!("B wrote the resource under its token");

    // A wakes up, still believing it holds the lock, and writes.
    let stale = lock.fenced_put(&a, &held_a, resource, "stale write by A").await?;
    let now = a
        .get(resource, ReadConsistency::Linearizable)
        .await?
        .kv
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
    if stale {
        return Err(
            format!("the stale holder {} wrote past the fence; the resource holds {now:?}", held_a.holder).into()
        );
    }
    println!("A's stale write (token {}) was refused by the fence; the resource holds {now:?}", held_a.token);
    if now.as_deref() != Some("written by B") {
        return Err(format!("the resource should hold B's write, holds {now:?}").into());
    }
    let released = lock.release(&b, &held_b).await?;
    a.close();
    b.close();
    println!(
        "lock-fencing: PASS — stale holder A (token {}) refused after B (token {}) took the expired lock; released: {released}",
        held_a.token, held_b.token
    );
    Ok(())
}
