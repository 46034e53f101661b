//! A lock on a lease with **fencing tokens** ([`quorate_client::recipes::Lock`]) — and a
//! demonstration that the token stops a holder that outlived its lease (the failure Jepsen
//! found in etcd 3.4.3's lock: a lease is only advice, a paused process cannot know that it
//! expired).
//!
//! * Each contender puts `lock/demo/<lease id>` attached to its lease; the holder is the key
//!   created first, and its **fencing token** is the revision that created it. Revisions only
//!   grow, so a later holder always has a larger token. A waiter watches the key before its
//!   own and takes over when it is deleted — when the holder releases it, or when the
//!   holder's lease expires because it stopped renewing it.
//! * Every write to the protected resource goes through a [`Fence`]: a transaction that runs
//!   only if the stored fence is not greater than the writer's token, and raises the fence to
//!   it. A holder whose lease expired and who was replaced writes with a smaller token than
//!   the fence: refused.
//!
//! The demonstration: A acquires the lock and writes; A "pauses" (its keep-alive stops, as in
//! a GC pause or SIGSTOP) until its lease expires; B, waiting in line, takes the lock with a
//! larger token and writes; A wakes up and writes with its old token — the fence refuses it
//! (and so does a transaction conditioned on A still owning its key). Exits non-zero if the
//! stale write is accepted.
//!
//! ```sh
//! quorate certs dev --dir /tmp/q --cluster dev --nodes 3
//! for i in 1 2 3; do quorate node start --config /tmp/q/node-$i.toml & done
//! QUORATE_CERTS=/tmp/q/certs QUORATE_CLUSTER=dev \
//! QUORATE_ENDPOINTS=1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 \
//!   cargo run -p quorate-client --example lock
//! ```

mod common;

use common::{Error, client_from_env};
use quorate_client::recipes::{Fence, Lock, Session};
use quorate_client::{ReadConsistency, Txn, TxnOp};
use std::time::{Duration, Instant};

/// The TTL of each contender's lease: the shortest a cluster grants
/// (`quorate_api::limits::LEASE_TTL_MS_MIN`, and three election timeouts of at most 1 s).
const TTL_MS: u64 = 3_000;
/// How long `acquire` waits at most.
const ACQUIRE_WAIT: Duration = Duration::from_secs(30);

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    // Two processes in real life; two clients (two sessions, two leases) here.
    let (a, b) = (client_from_env()?, client_from_env()?);
    let lock = Lock::new("demo")?;
    // The fence and the resource live outside the lock's prefix (`lock/demo/`), where only
    // the contenders' keys belong.
    let fence = Fence::new("demo/fence");
    let resource = "demo/resource";

    let mut session_a = Session::grant(&a, TTL_MS).await?;
    let held_a = lock.acquire(&session_a, ACQUIRE_WAIT).await?;
    let key_a = String::from_utf8_lossy(held_a.key()).into_owned();
    println!("A holds {key_a} with fencing token {}", held_a.token());
    if !fence.put(&a, held_a.token(), resource, "written by A").await? {
        return Err("A's first write was refused by the fence".into());
    }
    println!("A wrote the resource under its token");

    // A pauses (a GC pause, SIGSTOP, a slow disk): its keep-alives stop, and its lease
    // expires on the leader after the TTL. B is waiting in line meanwhile.
    let session_b = Session::grant(&b, TTL_MS).await?;
    session_a.stop_keep_alive();
    let paused = Instant::now();
    let held_b = lock.acquire(&session_b, ACQUIRE_WAIT).await?;
    println!(
        "A's lease expired; B holds {} with fencing token {} ({} ms after A's keep-alive stopped)",
        String::from_utf8_lossy(held_b.key()),
        held_b.token(),
        paused.elapsed().as_millis()
    );
    if held_b.token() <= held_a.token() {
        return Err(format!("B's token {} is not above A's {}", held_b.token(), held_a.token()).into());
    }
    if !fence.put(&b, held_b.token(), resource, "written by B").await? {
        return Err("B's write was refused by the fence".into());
    }
    println!("B wrote the resource under its token");

    // A wakes up, still believing it holds the lock, and writes with its old token.
    let stale = fence.put(&a, held_a.token(), resource, "stale write by A").await?;
    // The same write conditioned on A still owning its key (etcd's `IsOwner`).
    let owned = a
        .txn(Txn {
            compare: vec![held_a.owner_compare()],
            success: vec![TxnOp::Put { key: resource.as_bytes().to_vec(), value: b"stale write by A".to_vec() }],
            failure: vec![],
        })
        .await?
        .succeeded;
    let now = a
        .get(resource, ReadConsistency::Linearizable)
        .await?
        .kv
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
    if stale || owned {
        return Err(format!(
            "the stale holder A wrote past the fence (fence: {stale}, owner check: {owned}); the resource holds {now:?}"
        )
        .into());
    }
    println!(
        "A's stale write (token {}) was refused by the fence and by the owner check; the resource holds {now:?}",
        held_a.token()
    );
    if now.as_deref() != Some("written by B") {
        return Err(format!("the resource should hold B's write, holds {now:?}").into());
    }
    // The loss as the cluster sees it (A's own handle only says its keep-alive was stopped).
    if a.get(held_a.key(), ReadConsistency::Linearizable).await?.kv.is_some() {
        return Err("A's key outlived its expired lease".into());
    }
    let token_b = held_b.token();
    let released = held_b.release(&session_b).await?;
    session_b.close().await?;
    session_a.close().await?;
    a.close();
    b.close();
    println!("A's key went with its expired lease");
    println!(
        "lock-fencing: PASS — stale holder A (token {}) refused after B (token {}) took the lock on A's expired lease; released: {released}",
        held_a.token(),
        token_b
    );
    Ok(())
}
