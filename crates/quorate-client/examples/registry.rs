//! A **service registry** on leases and watches, with nothing but the client.
//!
//! * An instance registers by granting itself a lease, writing `services/NAME/INSTANCE` = its
//!   address attached to that lease, and keeping the lease alive. When the instance dies, its
//!   keep-alives stop and the leader expires the lease: the key is deleted (through the log, at
//!   one revision on every replica) without anyone having to notice the death. An instance that
//!   leaves cleanly revokes its lease: the key is gone at once.
//! * A client that wants the live set reads the prefix **at one revision** R (a linearizable
//!   read says what R is; the rest is read at R), then **watches the prefix from R + 1**: every
//!   change after the snapshot arrives, in revision order, none twice, none missed — across
//!   reconnects and leader changes, from any member.
//!
//! The demonstration: instances a, b and c register; a directory loads and follows the prefix;
//! b "crashes" (its keep-alives stop) and must leave the directory within its lease's bound
//! (docs/consistency.md: TTL + 500 ms + one commit after the last keep-alive, more across a
//! leader change); c deregisters (revokes) and must leave at once; d joins. At the end the
//! directory must equal a linearizable read of the prefix. Exits non-zero otherwise.
//!
//! ```sh
//! quorate certs dev --dir /tmp/q --cluster dev --nodes 3
//! for i in 1 2 3; do quorate node start --config /tmp/q/node-$i.toml & done
//! QUORATE_CERTS=/tmp/q/certs QUORATE_CLUSTER=dev \
//! QUORATE_ENDPOINTS=1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 \
//!   cargo run -p quorate-client --example registry
//! ```
//! (`QUORATE_LEASE_TTL_MS` sets the instances' TTL, default 3000: at least three of the
//! cluster's election timeouts.)

mod common;

use common::{Error, client_from_env};
use quorate_client::{Client, EventKind, KeepAlive, Lease, ReadConsistency, WatchBatch, WatchOptions};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The service the instances offer (each run its own, `services/web-UNIXMS/`, so that a run
/// does not see the instances of an earlier one still waiting for their leases to expire).
static PREFIX: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    format!("services/web-{ms}/")
});
/// Most instances the directory reads in its first load.
const INSTANCES_MAX: u32 = 10_000;
/// Slack on top of the lease's own bound for a dead instance to leave the directory: the
/// documented bound across a leader change, and a slow shared machine.
const SLACK: Duration = Duration::from_secs(5);

/// A registered instance: its lease, kept alive until dropped.
struct Registered {
    lease: Lease,
    keep_alive: KeepAlive,
}

/// Registers `instance` at `address` under a lease of `ttl_ms` kept alive from now on.
async fn register(client: &Client, instance: &str, address: &str, ttl_ms: u64) -> Result<Registered, Error> {
    let lease = client.lease_grant(ttl_ms).await?;
    client.put_with_lease(format!("{}{instance}", *PREFIX), address, lease.id).await?;
    let keep_alive = client.keep_alive(lease);
    Ok(Registered { lease, keep_alive })
}

/// The live instances as one client sees them: loaded at one revision, then followed.
struct Directory {
    members: BTreeMap<String, String>,
    /// The revision the view is complete to.
    revision: u64,
}

impl Directory {
    /// Reads the prefix at one revision.
    async fn load(client: &Client) -> Result<Directory, Error> {
        let end = prefix_end(&PREFIX);
        // A linearizable read fixes the revision; the whole prefix is then read at it.
        let first = client.scan_page(PREFIX.as_str(), Some(&end), 1, ReadConsistency::Linearizable).await?;
        let revision = first.read.revision;
        let all =
            client.scan_at(PREFIX.as_str(), Some(&end), INSTANCES_MAX, revision, ReadConsistency::Linearizable).await?;
        if all.more {
            return Err(format!("more than {INSTANCES_MAX} instances registered").into());
        }
        let members =
            all.kvs.into_iter().map(|kv| (name(&kv.key), String::from_utf8_lossy(&kv.value).into())).collect();
        Ok(Directory { members, revision })
    }

    /// Applies one watch answer.
    fn apply(&mut self, batch: &WatchBatch) {
        for e in &batch.events {
            match e.kind {
                EventKind::Put => {
                    self.members.insert(name(&e.kv.key), String::from_utf8_lossy(&e.kv.value).into());
                }
                EventKind::Delete => {
                    self.members.remove(&name(&e.kv.key));
                }
                _ => {}
            }
        }
        self.revision = self.revision.max(batch.complete_to);
    }

    fn names(&self) -> Vec<&str> {
        self.members.keys().map(String::as_str).collect()
    }
}

/// The instance's name in a registry key.
fn name(key: &[u8]) -> String {
    String::from_utf8_lossy(key.strip_prefix(PREFIX.as_bytes()).unwrap_or(key)).into_owned()
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

/// Follows `watch` into `dir` until `want` holds or `within` has passed; how long it took.
async fn follow_until(
    watch: &mut quorate_client::Watch<'_>,
    dir: &mut Directory,
    within: Duration,
    what: &str,
    want: impl Fn(&Directory) -> bool,
) -> Result<Duration, Error> {
    let started = Instant::now();
    while !want(dir) {
        let left = within.checked_sub(started.elapsed()).ok_or_else(|| {
            format!("{what}: not seen within {} ms; the directory holds {:?}", within.as_millis(), dir.names())
        })?;
        match tokio::time::timeout(left, watch.next()).await {
            Ok(batch) => dir.apply(&batch?),
            Err(_) => continue,
        }
    }
    Ok(started.elapsed())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let ttl_ms: u64 = match std::env::var("QUORATE_LEASE_TTL_MS") {
        Ok(v) => v.parse().map_err(|e| format!("QUORATE_LEASE_TTL_MS `{v}`: {e}"))?,
        Err(_) => 3_000,
    };
    let ttl = Duration::from_millis(ttl_ms);
    // Each instance is its own process in real life; its own client here.
    let (a, b, c, d, reader) =
        (client_from_env()?, client_from_env()?, client_from_env()?, client_from_env()?, client_from_env()?);
    let a_reg = register(&a, "a", "10.0.0.1:8080", ttl_ms).await?;
    let b_reg = register(&b, "b", "10.0.0.2:8080", ttl_ms).await?;
    let c_reg = register(&c, "c", "10.0.0.3:8080", ttl_ms).await?;
    println!("registered a, b, c under {} with leases of {ttl_ms} ms, kept alive", *PREFIX);

    let mut dir = Directory::load(&reader).await?;
    println!("directory loaded at revision {}: {:?}", dir.revision, dir.names());
    let mut watch = reader.watch(WatchOptions::prefix(PREFIX.as_str()).from_revision(dir.revision + 1));
    follow_until(&mut watch, &mut dir, SLACK, "a, b and c registered", |d| d.names() == ["a", "b", "c"]).await?;

    // b crashes: its keep-alives stop, nobody revokes anything.
    drop(b_reg.keep_alive);
    let within = ttl + Duration::from_millis(500) + SLACK;
    let took = follow_until(&mut watch, &mut dir, within, "b's expiry", |d| !d.members.contains_key("b")).await?;
    println!(
        "b stopped keeping its lease {} alive; it left the directory {} ms later (lease bound {} ms + one commit)",
        b_reg.lease.id.0,
        took.as_millis(),
        ttl_ms + 500
    );
    if took + Duration::from_millis(200) < ttl.mul_f64(2.0 / 3.0) {
        return Err(format!("b left after {} ms, before its lease could have expired", took.as_millis()).into());
    }

    // c leaves cleanly: revoking its lease deletes its key at once.
    drop(c_reg.keep_alive);
    let (deleted, revision) = c.lease_revoke(c_reg.lease.id).await?;
    let took = follow_until(&mut watch, &mut dir, SLACK, "c's revoke", |d| !d.members.contains_key("c")).await?;
    println!("c revoked its lease: {deleted} key deleted at revision {revision}, seen {} ms later", took.as_millis());

    // d joins.
    let d_reg = register(&d, "d", "10.0.0.4:8080", ttl_ms).await?;
    follow_until(&mut watch, &mut dir, SLACK, "d registered", |d| d.members.contains_key("d")).await?;

    // The followed view equals what a linearizable read says now (a quiet moment: nothing is
    // registering or expiring, a and d are kept alive).
    let end = prefix_end(&PREFIX);
    let now = reader.scan(PREFIX.as_str(), Some(&end), INSTANCES_MAX, ReadConsistency::Linearizable).await?;
    follow_until(&mut watch, &mut dir, SLACK, "the read's revision", |d| d.revision >= now.read.revision).await?;
    let read: BTreeMap<String, String> =
        now.kvs.into_iter().map(|kv| (name(&kv.key), String::from_utf8_lossy(&kv.value).into())).collect();
    if read != dir.members || dir.names() != ["a", "d"] {
        return Err(format!("the directory {:?} differs from a linearizable read {read:?}", dir.members).into());
    }
    println!(
        "registry: PASS — the directory {:?} equals a linearizable read at revision {}",
        dir.names(),
        now.read.revision
    );
    // a and d leave cleanly.
    for (client, reg) in [(&a, a_reg), (&d, d_reg)] {
        drop(reg.keep_alive);
        client.lease_revoke(reg.lease.id).await?;
    }
    for client in [&a, &b, &c, &d, &reader] {
        client.close();
    }
    Ok(())
}
