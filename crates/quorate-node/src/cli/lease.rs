//! `quorate lease grant|keepalive|revoke|list|ttl`: leases, whose keys are deleted when the
//! lease is revoked or expires.

use super::output::{Format, escape, print_json};
use super::{ConnArgs, Outcome};
use clap::Subcommand;
use quorate_client::{Lease, LeaseId, LeaseInfo};
use serde_json::{Value, json};
use std::io::Write;
use std::time::Duration;

/// `quorate lease`.
#[derive(Debug, Subcommand)]
pub(crate) enum LeaseCmd {
    /// Grant a lease of TTL_MS milliseconds, owned by this certificate's principal; prints
    /// its id. Attach keys with `kv put --lease ID`.
    Grant {
        /// The time to live without a keep-alive, ms (at least 3000 and three election timeouts).
        ttl_ms: u64,
    },
    /// Keep a lease alive: renew it every third of its TTL until stopped (by --count,
    /// --duration-ms, or a signal). Exit 1 if the lease is lost.
    #[command(alias = "keep-alive")]
    Keepalive {
        /// The lease.
        id: u64,
        /// Stop after N renewals (exit 0).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
        /// Stop after MS milliseconds (exit 0 if the lease was kept alive all along).
        #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
        duration_ms: Option<u64>,
    },
    /// Revoke a lease (its owner, or an admin): every key attached to it is deleted at one
    /// revision.
    Revoke {
        /// The lease.
        id: u64,
    },
    /// This principal's leases, with the TTL left on the leader's clock.
    List,
    /// One lease: TTL, what is left of it, and its attached keys.
    Ttl {
        /// The lease.
        id: u64,
    },
}

fn info_json(l: &LeaseInfo) -> Value {
    json!({
        "id": l.id.0,
        "granted_ttl_ms": l.granted_ttl_ms,
        "remaining_ms": l.remaining_ms,
        "keys": l.key_count,
    })
}

pub(crate) async fn run(conn: &ConnArgs, cmd: LeaseCmd) -> anyhow::Result<Outcome> {
    let client = conn.client()?;
    let as_json = conn.output == Format::Json;
    let mut out = std::io::stdout().lock();
    match cmd {
        LeaseCmd::Grant { ttl_ms } => {
            let lease = client.lease_grant(ttl_ms).await?;
            if as_json {
                print_json(&json!({"id": lease.id.0, "ttl_ms": lease.ttl_ms}))?;
            } else {
                writeln!(out, "lease {} granted (TTL {} ms)", lease.id.0, lease.ttl_ms)?;
            }
        }
        LeaseCmd::Keepalive { id, count, duration_ms } => {
            // The TTL the lease was granted with, for the renewal period.
            let info = client.lease_time_to_live(LeaseId(id), false).await?;
            let lease = Lease::new(LeaseId(id), info.granted_ttl_ms);
            let mut keep = client.keep_alive(lease);
            let deadline = duration_ms.map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
            let target = count.unwrap_or(u64::MAX);
            let wait = keep.wait_renewals(target);
            let result = match deadline {
                Some(d) => match tokio::time::timeout_at(d, wait).await {
                    Ok(r) => r,
                    Err(_) => Ok(()),
                },
                None => wait.await,
            };
            let renewals = keep.renewals();
            drop(keep);
            match result {
                Ok(()) => {
                    if as_json {
                        print_json(&json!({"id": id, "renewals": renewals, "lost": Value::Null}))?;
                    } else {
                        writeln!(out, "lease {id} kept alive ({renewals} renewals)")?;
                    }
                }
                Err(lost) => {
                    if as_json {
                        print_json(&json!({"id": id, "renewals": renewals, "lost": lost.to_string()}))?;
                    } else {
                        eprintln!("lease {id} lost after {renewals} renewals: {lost}");
                    }
                    return Ok(Outcome::Failed);
                }
            }
        }
        LeaseCmd::Revoke { id } => {
            let (deleted, revision) = client.lease_revoke(LeaseId(id)).await?;
            if as_json {
                print_json(&json!({"id": id, "deleted": deleted, "revision": revision}))?;
            } else {
                writeln!(out, "lease {id} revoked: {deleted} keys deleted (revision {revision})")?;
            }
        }
        LeaseCmd::List => {
            let leases = client.lease_list().await?;
            if as_json {
                print_json(&Value::Array(leases.iter().map(info_json).collect()))?;
            } else {
                for l in &leases {
                    writeln!(
                        out,
                        "lease {}: TTL {} ms, {} ms left, {} keys",
                        l.id.0, l.granted_ttl_ms, l.remaining_ms, l.key_count
                    )?;
                }
            }
        }
        LeaseCmd::Ttl { id } => {
            let l = client.lease_time_to_live(LeaseId(id), true).await?;
            if as_json {
                let mut v = info_json(&l);
                v["attached"] = Value::Array(l.keys.iter().map(|k| json!(escape(&k.0, false))).collect());
                print_json(&v)?;
            } else {
                writeln!(
                    out,
                    "lease {}: TTL {} ms, {} ms left, {} keys",
                    l.id.0, l.granted_ttl_ms, l.remaining_ms, l.key_count
                )?;
                for k in &l.keys {
                    writeln!(out, "  {}", escape(&k.0, false))?;
                }
            }
        }
    }
    Ok(Outcome::Ok)
}
