//! Lease clients of a chaos run and the lease check (issue 22).
//!
//! [`LEASERS`] clients, under their own principal ([`LEASER`]), each repeat through the faults:
//! grant a lease of [`TTL_MS`], attach 1–3 keys to it with `put_with_lease` (keys under
//! `chaos/lease/`, which no other client touches and the watchers do not watch), keep it alive
//! every [`RENEW`] for a seeded while (reading one of its keys, linearizably, after each
//! keep-alive), then either revoke it or stop keeping it alive and let it expire — the two
//! alternate, a client's first lease expiring — and poll its keys with linearizable gets every
//! [`POLL`] until each is seen absent or [`POLL_PAST_DEADLINE`] past the nominal deadline passes.
//! Every call is recorded on the history's clock (not in the history: the linearizability
//! checker does not model expiry). When the workload stops, each client ends its current
//! lease the same way and stops. [`quorate_check::lease::check`] then holds every lease to the
//! documented bound, widened for the leader changes the observer saw and the faults the run
//! injected (docs/chaos.md, "Leases").

use super::nemesis::{Fault, FaultRecord};
use super::windows::Sample;
use super::workload::{ClientFactory, History, Timeouts};
use anyhow::{Context, Result};
use quorate_check::lease::{self, Attached, Bound, Call, Lease, Office, Outcome, Read, Stall};
use quorate_client::{ApiError, Client, ClientError, LeaseId, ReadConsistency};
use quorate_core::SplitMix64;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Lease clients per run.
pub(crate) const LEASERS: u64 = 2;
/// Their principal (role write).
pub(crate) const LEASER: &str = "chaos-leaser";
/// The TTL they ask for: the minimum a leader grants (three of its election timeouts, and
/// `LEASE_TTL_MS_MIN`), so an expiry comes soon.
const TTL_MS: u64 = 3_000;
/// Keys attached to a lease, at most.
const KEYS_MAX: u64 = 3;
/// How long a lease is kept alive, at most (uniform from 0).
const KEEP_MS_MAX: u64 = 6_000;
/// The keep-alive period: a third of the TTL, as the client library's keep-alive task.
const RENEW: Duration = Duration::from_millis(TTL_MS / 3);
/// The period of the reads that wait for the keys to go.
const POLL: Duration = Duration::from_millis(200);
/// How long past the nominal deadline (last keep-alive + TTL) the keys are polled at most:
/// well past the bound without faults (TTL + 1.5 s) and the weakened run's late expiry (6 s),
/// and room for a few leader changes (each gives the lease its full TTL again).
const POLL_PAST_DEADLINE: Duration = Duration::from_secs(20);
/// Leases one client takes at most (a bound on memory and time).
const LEASES_PER_CLIENT_MAX: usize = 500;
/// Reads recorded per lease at most.
const READS_PER_LEASE_MAX: usize = 2_000;
/// The lease clients' time limits: an answer within a second or another attempt, a call given
/// up after 2.5 s.
const TIMEOUTS: Timeouts = Timeouts {
    request: Duration::from_millis(1000),
    connect: Duration::from_millis(500),
    total: Duration::from_millis(2500),
    retries_max: 20,
};

/// The node's lease sweep period (`crates/quorate-node/src/server.rs`, every 500 ms).
const SWEEP_MS: u64 = 500;
/// "One commit" of the documented bound, as this check assumes it outside the faults it
/// widens for: replicate and apply one entry on a 2-core machine shared with other runs.
const COMMIT_MS: u64 = 1_000;
/// How long a status probe may take (its answer describes a moment within it).
const PROBE_MS: u64 = 300;

/// What the lease clients recorded.
#[derive(Debug, Default)]
pub(crate) struct Recorded {
    pub(crate) leases: Vec<Lease>,
    /// Grants that failed or whose outcome is unknown (nothing to check).
    pub(crate) grants_failed: u64,
}

/// Runs [`LEASERS`] lease clients until `stop`, each then ending its current lease.
pub(crate) async fn run(
    factory: ClientFactory,
    history: Arc<History>,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> Result<Recorded> {
    let mut tasks = Vec::new();
    for i in 0..LEASERS {
        let client = factory.client_as(LEASER, &factory.workload_members, seed ^ 0x1EA5_0000 ^ i, TIMEOUTS)?;
        let (history, stop) = (history.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let r = one(i, &client, &history, SplitMix64::new(seed ^ 0x1EA5_E000 ^ (i << 8)), &stop).await;
            client.close();
            r
        }));
    }
    let mut all = Recorded::default();
    for t in tasks {
        let r = t.await.context("a lease client panicked")?;
        all.leases.extend(r.leases);
        all.grants_failed += r.grants_failed;
    }
    Ok(all)
}

fn call_of<T>(invoked_ns: u64, completed_ns: u64, r: &Result<T, ClientError>, ttl: impl Fn(&T) -> u64) -> Call {
    let outcome = match r {
        Ok(t) => Outcome::Acked { ttl_ms: ttl(t) },
        // The leader says the lease is gone, or no attempt could have been applied.
        Err(e) if matches!(e.api_error(), Some(ApiError::InvalidRequest(_))) => Outcome::Failed,
        Err(ClientError::GaveUp { .. }) => Outcome::Failed,
        Err(_) => Outcome::Unknown,
    };
    Call { invoked_ns, completed_ns, outcome }
}

/// A linearizable read of `key` for `lease`, recorded if it returned.
async fn read(client: &Client, history: &History, lease: &mut Lease, key: &str) -> Option<bool> {
    let invoked_ns = history.now();
    let r = client.get(key, ReadConsistency::Linearizable).await;
    let completed_ns = history.now();
    let present = r.ok()?.kv.is_some();
    if lease.reads.len() < READS_PER_LEASE_MAX {
        lease.reads.push(Read { key: key.to_string(), invoked_ns, completed_ns, present });
    }
    Some(present)
}

/// One lease client: its leases until `stop`.
async fn one(i: u64, client: &Client, history: &History, mut rng: SplitMix64, stop: &AtomicBool) -> Recorded {
    let mut out = Recorded::default();
    let name = format!("leaser-{i}");
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) && out.leases.len() < LEASES_PER_CLIENT_MAX {
        let invoked = history.now();
        let r = client.lease_grant(TTL_MS).await;
        let grant = call_of(invoked, history.now(), &r, |l| l.ttl_ms);
        let Ok(granted) = r else {
            out.grants_failed += 1;
            tokio::time::sleep(POLL).await;
            continue;
        };
        let mut lease = Lease {
            id: granted.id.0,
            client: name.clone(),
            ttl_ms: granted.ttl_ms,
            grant: Some(grant),
            ..Lease::default()
        };
        let keys = 1 + rng.below(KEYS_MAX);
        for k in 0..keys {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let key = format!("chaos/lease/{name}/{}/{k}", granted.id.0);
            if let Ok(_revision) = client.put_with_lease(&key, format!("{name}-{n}-{k}"), granted.id).await {
                lease.keys.push(Attached { key, attached_ns: history.now() });
            }
        }
        // Keep it alive for a seeded while, reading a key after each keep-alive.
        let keep = Duration::from_millis(rng.below(KEEP_MS_MAX + 1));
        let keep_until = tokio::time::Instant::now() + keep;
        let mut lost = false;
        while tokio::time::Instant::now() < keep_until && !stop.load(Ordering::Relaxed) {
            let next = tokio::time::Instant::now() + RENEW;
            let invoked = history.now();
            let r = client.lease_keep_alive(LeaseId(lease.id)).await;
            let ka = call_of(invoked, history.now(), &r, |ttl| *ttl);
            lease.keep_alives.push(ka);
            if ka.outcome == Outcome::Failed && r.as_ref().err().and_then(ClientError::api_error).is_some() {
                // The leader says it is gone: the reads below tell whether that was early.
                lost = true;
            }
            if !lease.keys.is_empty() {
                let key = lease.keys[rng.below(lease.keys.len() as u64) as usize].key.clone();
                read(client, history, &mut lease, &key).await;
            }
            if lost {
                break;
            }
            tokio::time::sleep_until(next).await;
        }
        // Revoke (odd leases of client 0, even of client 1) or let it expire.
        if (n + i) % 2 == 1 && !lost {
            let invoked = history.now();
            let r = client.lease_revoke(LeaseId(lease.id)).await;
            lease.revoke = Some(call_of(invoked, history.now(), &r, |_| 0));
        }
        // Poll the keys until each is seen absent, or the polling bound passes.
        let nominal_ns = lease.last_accepted_ns().unwrap_or(invoked) + TTL_MS * 1_000_000;
        let until_ns = nominal_ns + u64::try_from(POLL_PAST_DEADLINE.as_nanos()).unwrap_or(u64::MAX);
        let mut pending: Vec<String> = lease.keys.iter().map(|k| k.key.clone()).collect();
        while !pending.is_empty() && history.now() < until_ns && lease.reads.len() < READS_PER_LEASE_MAX {
            let mut still = Vec::new();
            for key in pending {
                if read(client, history, &mut lease, &key).await != Some(false) {
                    still.push(key);
                }
            }
            pending = still;
            if !pending.is_empty() {
                tokio::time::sleep(POLL).await;
            }
        }
        out.leases.push(lease);
        n += 1;
    }
    out
}

/// The leaders the observer saw, each with a lower bound on when it became leader (its last
/// sample not leading that term — following, or leading an earlier term —, less a probe's
/// length) and its first sighting.
pub(crate) fn offices(samples: &[Sample]) -> Vec<Office> {
    let mut by_term: BTreeMap<u64, Office> = BTreeMap::new();
    // Per node: its last sample not leading, and its last sample leading (with the term).
    let mut last_other: BTreeMap<u64, u64> = BTreeMap::new();
    let mut last_led: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut seen: BTreeSet<(u64, u64)> = BTreeSet::new();
    for s in samples {
        let Some(st) = &s.seen else { continue };
        if st.leads {
            if seen.insert((s.node, st.term)) {
                let other = last_other.get(&s.node).copied();
                let led_before = last_led.get(&s.node).filter(|(term, _)| *term != st.term).map(|&(_, at)| at);
                let from_ns = other.max(led_before).map_or(0, |t| t.saturating_sub(PROBE_MS * 1_000_000));
                by_term.entry(st.term).or_insert(Office { term: st.term, from_ns, seen_ns: s.at_ns });
            }
            last_led.insert(s.node, (st.term, s.at_ns));
        } else {
            last_other.insert(s.node, s.at_ns);
        }
    }
    by_term.into_values().collect()
}

/// The faults that may hold the leader or its commits: every one the run injected except
/// clock-rate skew (the lease clock is the node's real monotonic clock).
pub(crate) fn stalls(records: &[FaultRecord], end_ns: u64) -> Vec<Stall> {
    records
        .iter()
        .filter(|r| r.fault != Fault::CLOCK)
        .map(|r| Stall { from_ns: r.start_ns, to_ns: r.end_ns.unwrap_or(end_ns).max(r.start_ns) })
        .collect()
}

/// The documented bound's terms for a cluster with `election_timeout_ms`.
pub(crate) fn bound(election_timeout_ms: u64) -> Bound {
    Bound {
        sweep_ms: SWEEP_MS,
        commit_ms: COMMIT_MS,
        // 1–2 election timeouts and a vote round.
        election_ms: 2 * election_timeout_ms + 100,
        // Check-quorum steps a deposed leader down within one election timeout; twice that.
        deposed_ms: 2 * election_timeout_ms,
    }
}

/// The lease check of a run: whether it passed, its summary line, and the report (written
/// to `lease.txt` in `dir` with the violations).
pub(crate) fn check(
    recorded: &Recorded,
    offices: &[Office],
    stalls: &[Stall],
    bound: &Bound,
    dir: &std::path::Path,
) -> Result<(bool, String, lease::Report)> {
    let report = lease::check(&recorded.leases, offices, stalls, bound);
    let mut line = report.summary();
    if recorded.grants_failed > 0 {
        line.push_str(&format!("; {} grants failed or unknown (not checked)", recorded.grants_failed));
    }
    // A check that saw no expiry and no revoke checked nothing of what matters.
    let exercised = report.expiries_observed > 0 && report.revokes_observed > 0;
    if !exercised {
        line.push_str("; NOT EXERCISED: no expiry or no revoke observed");
    }
    let mut text = format!(
        "{line}\nbound: {bound:?}; {} leader offices observed, {} stalls (faults other than clock)\n",
        offices.len(),
        stalls.len()
    );
    for v in &report.violations {
        text.push_str(&format!("{v}\n"));
    }
    // The leases let expire whose keys the polling did not all see go: how far it got.
    let secs = |ns: u64| format!("{:.3}s", ns as f64 / 1e9);
    for l in &recorded.leases {
        let expiring = l.grant.is_some_and(|g| g.is_acked()) && !l.revoke.is_some_and(|r| r.is_acked());
        let gone = |k: &str| l.reads.iter().any(|r| r.key == k && !r.present);
        if !expiring || l.keys.is_empty() || l.keys.iter().all(|k| gone(&k.key)) {
            continue;
        }
        let last_present = l.reads.iter().filter(|r| r.present).map(|r| r.invoked_ns).max();
        let last_read = l.reads.iter().map(|r| r.completed_ns).max();
        text.push_str(&format!(
            "unresolved: lease {} ({}): last keep-alive possibly accepted at {}, a key last seen present by a read \
             begun at {}, last read completed at {}, expiry bound {}\n",
            l.id,
            l.client,
            l.last_accepted_ns().map_or("-".into(), secs),
            last_present.map_or("-".into(), secs),
            last_read.map_or("-".into(), secs),
            l.expiry_bound_ns(offices, stalls, bound).map_or("-".into(), secs),
        ));
    }
    std::fs::write(dir.join("lease.txt"), text)?;
    println!("leases: {line}");
    Ok((report.pass() && exercised, line, report))
}

#[cfg(test)]
mod tests {
    use super::super::windows::Seen;
    use super::*;

    const S: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;

    fn sample(node: u64, at_ns: u64, leads: bool, term: u64) -> Sample {
        let seen = Seen { leads, term, leader: None, voters: vec![1, 2, 3], learners: Vec::new(), indexes: (0, 0, 0) };
        Sample { node, at_ns, seen: Some(seen) }
    }

    #[test]
    fn an_office_starts_after_the_last_sample_not_leading_its_term() {
        // Node 1: a follower at 1 s, leads term 2 from 2 s, then term 3 seen at 5 s with no
        // sample in between where it did not lead: term 3 began after its last sample leading
        // term 2 (4 s), not after the follower sample at 1 s.
        let samples = [
            sample(1, S, false, 1),
            sample(1, 2 * S, true, 2),
            sample(1, 4 * S, true, 2),
            sample(1, 5 * S, true, 3),
            sample(2, 7 * S, false, 3),
            sample(2, 8 * S, true, 4),
        ];
        let got = offices(&samples);
        let want = [
            Office { term: 2, from_ns: S - PROBE_MS * MS, seen_ns: 2 * S },
            Office { term: 3, from_ns: 4 * S - PROBE_MS * MS, seen_ns: 5 * S },
            Office { term: 4, from_ns: 7 * S - PROBE_MS * MS, seen_ns: 8 * S },
        ];
        assert_eq!(got, want);
    }
}
