//! What a chaos run checks once every fault is healed:
//!
//! 1. **recovery**: a leader and a new acknowledged write within [`RECOVERY_MAX`];
//! 2. **final reads**: a linearizable read of every key, added to the history (a key whose
//!    read never returns fails the run: its check could not run);
//! 3. **linearizability** of the whole history (`quorate_check::linearizability`);
//! 4. **no lost acknowledged write**: every final read returns a value that a write which may
//!    be the key's last left ([`lost_writes`]);
//! 5. **identical replicas**: once every member has applied the leader's commit index, a
//!    stale scan of every key at each member returns the same pairs, and the same revision
//!    (scans not all read at one revision — a lease's revoke or expire landed between them —
//!    are repeated within the deadline);
//! 6. **invariant counters**: every member's `/metrics` is scraped, and every sample whose
//!    name contains `invariant` is 0 (a member that cannot be scraped fails the run).
//!
//! The per-fault bounds (traffic, leaderless and writeless time) are in `windows.rs`.

use super::workload::{CHECKER, History, Timeouts, key_name, recorded_get, recorded_put};
use super::{Env, Options, RECOVERY_MAX};
use anyhow::{Context, Result};
use quorate_check::history::{Completion, OpKind, Operation};
use quorate_check::linearizability::{Limits, Outcome, check};
use quorate_client::ReadConsistency;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The checks' results.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) recovery: Option<Duration>,
    pub(crate) linearizable: Option<String>,
    /// Keys whose final read never returned: a check that could not run.
    pub(crate) unread: Vec<String>,
    pub(crate) lost: LostWrites,
    pub(crate) replicas: Result<String, String>,
    pub(crate) invariants: Result<String, String>,
    /// What admission did, from the members' `/metrics` (reported, not judged).
    pub(crate) admission: String,
}

impl Report {
    pub(crate) fn pass(&self) -> bool {
        self.recovery.is_some_and(|r| r <= RECOVERY_MAX)
            && self.linearizable.as_deref() == Some("linearizable")
            && self.unread.is_empty()
            && self.lost.problems.is_empty()
            && self.replicas.is_ok()
            && self.invariants.is_ok()
    }

    pub(crate) fn summary(&self) -> String {
        let rec = match self.recovery {
            Some(d) => format!("recovered in {:.1}s (limit {}s)", d.as_secs_f64(), RECOVERY_MAX.as_secs()),
            None => format!("NO RECOVERY within {}s", RECOVERY_MAX.as_secs()),
        };
        let lin = self.linearizable.clone().unwrap_or_else(|| "not checked".into());
        let mut lost = if self.lost.problems.is_empty() {
            format!(
                "no acknowledged write lost ({} keys checked, {} of them pinned to one value)",
                self.lost.checked, self.lost.pinned
            )
        } else {
            format!("LOST WRITES: {}", self.lost.problems.join("; "))
        };
        if !self.unread.is_empty() {
            lost = format!(
                "FINAL READS FAILED for {} keys ({}), so they were not checked; {lost}",
                self.unread.len(),
                self.unread.join(", ")
            );
        }
        let rep = match &self.replicas {
            Ok(s) => s.clone(),
            Err(e) => format!("REPLICAS DIFFER: {e}"),
        };
        let inv = match &self.invariants {
            Ok(s) => s.clone(),
            Err(e) => format!("INVARIANT COUNTERS: {e}"),
        };
        format!("{lin}; {lost}; {rep}; {inv}; {rec}; {}", self.admission)
    }
}

/// How long the members may take, after the final reads, to apply the same index.
const CONVERGE_MAX: Duration = Duration::from_secs(30);

/// Final reads of a key, retried this many times before the key counts as unread.
const FINAL_READ_ATTEMPTS: usize = 10;

/// The checker's configuration cache for one key (keys are checked one after another). The
/// default (512 MiB) is too small for a 30-minute soak: seed 9's history (1.7 M operations, about
/// 70,000 on each of 24 keys) was inconclusive on its first key; with 4 GiB it was linearizable in
/// 31 s, peaking at 0.9 GB resident for the whole process.
const CHECK_CACHE_BYTES_PER_KEY_MAX: usize = 2 << 30;

/// Search steps allowed per key (the default, 10 M, with room for a soak's long keys: seed 9's
/// soak took 2.6 M steps in all).
const CHECK_STEPS_PER_KEY_MAX: u64 = 100_000_000;

/// The linearizability checker's limits for a chaos history.
fn checker_limits() -> Limits {
    let mut limits = Limits::default();
    limits.cache_bytes_per_key_max = limits.cache_bytes_per_key_max.max(CHECK_CACHE_BYTES_PER_KEY_MAX);
    limits.steps_per_key_max = limits.steps_per_key_max.max(CHECK_STEPS_PER_KEY_MAX);
    limits
}

/// Runs every check; the history gains the recovery write and the final reads.
pub(crate) async fn after_run(
    env: &Env,
    history: &History,
    o: &Options,
    healed: Instant,
    members: &BTreeSet<u64>,
) -> Result<Report> {
    let mut report = Report {
        recovery: None,
        linearizable: None,
        unread: Vec::new(),
        lost: LostWrites::default(),
        replicas: Ok(String::new()),
        invariants: Ok(String::new()),
        admission: String::new(),
    };
    let checker_client = o.clients + 1;
    let client = env.factory.client_as(CHECKER, &env.factory.members, o.seed ^ 0xC4EC, Timeouts::WORKLOAD)?;

    // 1. Recovery: a leader and a new acknowledged write.
    let deadline = healed + RECOVERY_MAX;
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        if recorded_put(history, &client, checker_client, "chaos/recovery", &format!("recovered-{n}")).await {
            report.recovery = Some(healed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "recovery: {}",
        report
            .recovery
            .map_or("none".to_string(), |d| format!("leader and a new commit {:.2}s after healing", d.as_secs_f64()))
    );

    // 2. Final linearizable reads of every key (retried; unknown reads constrain nothing, and
    //    a key never read is reported).
    let mut finals: BTreeMap<String, Option<String>> = BTreeMap::new();
    for k in 0..o.keys {
        let key = key_name(k);
        for _ in 0..FINAL_READ_ATTEMPTS {
            if let Some(v) = recorded_get(history, &client, checker_client, &key, ReadConsistency::Linearizable).await {
                finals.insert(key.clone(), v);
                break;
            }
        }
        if !finals.contains_key(&key) {
            report.unread.push(key);
        }
    }

    // 3. Linearizability.
    let ops = history.snapshot();
    let t = Instant::now();
    // A long check runs off the runtime's two threads (the leader observer keeps polling).
    let result = {
        let ops = ops.clone();
        tokio::task::spawn_blocking(move || check(&ops, &checker_limits())).await.context("the checker panicked")?
    };
    println!("checker: {result} in {:.1}s", t.elapsed().as_secs_f64());
    report.linearizable = Some(match &result.outcome {
        Outcome::Linearizable => "linearizable".to_string(),
        other => format!("NOT LINEARIZABLE: {other}"),
    });

    // 4. Lost acknowledged writes.
    report.lost = lost_writes(&ops, &finals);

    // 5. Identical replicas.
    report.replicas = replicas(env, members, o.seed).await.map_err(|e| format!("{e:#}"));

    // 6. Invariant counters (and what admission did, from the same scrape).
    let (invariants, admission) = invariants(env, members).await;
    report.invariants = invariants;
    report.admission = admission;
    Ok(report)
}

/// The lost-write check's findings.
#[derive(Clone, Debug, Default)]
pub(crate) struct LostWrites {
    /// Keys whose final value no write could have left there.
    pub(crate) problems: Vec<String>,
    /// Keys with a final read, each checked.
    pub(crate) checked: usize,
    /// Of those, keys for which exactly one final value was possible.
    pub(crate) pinned: usize,
}

/// For every key with a final read: the final value must be one that a write which may be
/// the key's last could have left. A write may be the last unless an acknowledged write was
/// called after it returned (an unfinished write never returned; a failed write or a cas
/// whose comparison failed wrote nothing). With no acknowledged write at all, the key may
/// also still be absent. So a lost acknowledged write, a value no write left and a value
/// an acknowledged later write overwrote are all caught; linearizability of the whole
/// history covers the rest.
pub(crate) fn lost_writes(ops: &[Operation], finals: &BTreeMap<String, Option<String>>) -> LostWrites {
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut out = LostWrites::default();
    for (key, final_value) in finals {
        let ops = by_key.get(key.as_str()).map(Vec::as_slice).unwrap_or_default();
        // Writes that may have taken effect: (call, return if any, acknowledged, what it left).
        let writes: Vec<(u64, Option<u64>, bool, Option<&str>)> = ops
            .iter()
            .filter_map(|op| match &op.kind {
                OpKind::Put { value, completion } | OpKind::Cas { value, completion, .. } => match completion {
                    Completion::Failed { .. } => None,
                    c => Some((op.call, c.ret(), matches!(c, Completion::Ok { .. }), Some(value.as_str()))),
                },
                OpKind::Delete { completion } => match completion {
                    Completion::Failed { .. } => None,
                    c => Some((op.call, c.ret(), matches!(c, Completion::Ok { .. }), None)),
                },
                _ => None,
            })
            .collect();
        let acked_calls: Vec<u64> = writes.iter().filter(|w| w.2).map(|w| w.0).collect();
        let mut allowed: BTreeSet<Option<&str>> = writes
            .iter()
            .filter(|(_, ret, _, _)| ret.is_none_or(|r| !acked_calls.iter().any(|&c| c > r)))
            .map(|w| w.3)
            .collect();
        if acked_calls.is_empty() {
            allowed.insert(None);
        }
        out.checked += 1;
        if allowed.len() == 1 {
            out.pinned += 1;
        }
        if !allowed.contains(&final_value.as_deref()) {
            let mut could: Vec<String> = allowed.iter().map(|v| format!("{v:?}")).collect();
            could.truncate(4);
            out.problems.push(format!(
                "{key}: the final read returned {final_value:?}, which no possibly-last write left (possible: {})",
                could.join(", ")
            ));
        }
    }
    out
}

/// Waits until every member applied the leader's commit index, then compares a stale scan of
/// all keys at each member, again until all are read at one revision ([`compare`]).
async fn replicas(env: &Env, members: &BTreeSet<u64>, seed: u64) -> Result<String> {
    let admin = env.factory.client(seed ^ 0x5CA9)?;
    // The committed configuration decides who must converge, not the nemesis' belief: a
    // membership change whose outcome it saw as unknown may have been applied (seen in CI:
    // `member remove 4` timed out on the client yet committed, and the check then waited for
    // node 4, which the leader no longer replicates to).
    let members: BTreeSet<u64> = match super::members(&admin, Duration::from_secs(10)).await {
        Ok(m) => {
            if &m != members {
                println!("replicas: the leader's configuration is {m:?} (the nemesis believed {members:?})");
            }
            m
        }
        Err(e) => anyhow::bail!("{e:#}"),
    };
    let members = &members;
    let deadline = Instant::now() + CONVERGE_MAX;
    // The latest answer of each member (applied, commit, when) and its latest error, across
    // polls: a failure names what each member last said, not only the last poll.
    let mut last: BTreeMap<u64, (u64, u64, Instant)> = BTreeMap::new();
    let mut errors: BTreeMap<u64, String> = BTreeMap::new();
    // The lease clients may still revoke a lease or see one expire (its keys deleted) while
    // the members are scanned one after another: scans that were not all read at one revision
    // are repeated (after converging again) until they are, within the deadline.
    loop {
        let target = loop {
            let statuses = admin.statuses().await;
            let mut applied = BTreeMap::new();
            let mut commit = 0;
            for (id, s) in &statuses {
                if !members.contains(&id.get()) {
                    continue;
                }
                match s {
                    Ok(s) => {
                        applied.insert(id.get(), s.applied.0);
                        commit = commit.max(s.commit.0);
                        last.insert(id.get(), (s.applied.0, s.commit.0, Instant::now()));
                        errors.remove(&id.get());
                    }
                    Err(e) => {
                        errors.insert(id.get(), format!("{e}").chars().take(120).collect());
                    }
                }
            }
            if applied.len() == members.len() && applied.values().all(|&a| a == commit) && commit > 0 {
                break commit;
            }
            if Instant::now() >= deadline {
                let said: Vec<String> = members
                    .iter()
                    .map(|id| {
                        let answer = match last.get(id) {
                            Some((a, c, at)) => {
                                format!("applied {a} of commit {c} {:.1}s before the end", at.elapsed().as_secs_f64())
                            }
                            None => "never answered".into(),
                        };
                        match errors.get(id) {
                            Some(e) => format!("node {id}: {answer}; then {e}"),
                            None => format!("node {id}: {answer}"),
                        }
                    })
                    .collect();
                anyhow::bail!(
                    "members {members:?} did not converge within {}s: {}",
                    CONVERGE_MAX.as_secs(),
                    said.join("; ")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mut states: BTreeMap<u64, Scan> = BTreeMap::new();
        for &id in members {
            let c = env.client_of(id, seed ^ id)?;
            states.insert(id, stale_scan(&c, id).await?);
        }
        match compare(&states) {
            Compared::Identical { keys, revision } => {
                return Ok(format!(
                    "{} members identical at index {target} ({keys} keys, revision {revision})",
                    states.len()
                ));
            }
            Compared::Differ(why) => anyhow::bail!("{why}"),
            Compared::Moving(why) if Instant::now() >= deadline => anyhow::bail!("{why}"),
            Compared::Moving(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// One member's stale scan: its pairs, and the revisions its first and last pages were read at.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Scan {
    kvs: Vec<(String, String, u64)>,
    revisions: (u64, u64),
}

/// The members' scans compared.
#[derive(Debug)]
enum Compared {
    /// All read at one revision, and identical.
    Identical { keys: usize, revision: u64 },
    /// Not all read at one revision (a write landed between the scans): read again.
    Moving(String),
    /// Read at one revision, and different: a divergence.
    Differ(String),
}

/// Compares the members' scans: only scans all read at one revision (each member's pages and
/// every member) say anything; two members at one revision must hold the same pairs.
fn compare(states: &BTreeMap<u64, Scan>) -> Compared {
    let Some((first, state)) = states.iter().next() else { return Compared::Differ("no member to compare".into()) };
    let revs: BTreeSet<u64> = states.values().flat_map(|s| [s.revisions.0, s.revisions.1]).collect();
    if revs.len() > 1 {
        let each: BTreeMap<u64, (u64, u64)> = states.iter().map(|(id, s)| (*id, s.revisions)).collect();
        return Compared::Moving(format!("revisions differ (first and last page per member): {each:?}"));
    }
    for (id, other) in states {
        if other.kvs != state.kvs {
            let diff = state.kvs.iter().zip(&other.kvs).find(|(a, b)| a != b);
            return Compared::Differ(format!(
                "node {id} differs from node {first} ({} vs {} keys; first difference {diff:?})",
                other.kvs.len(),
                state.kvs.len()
            ));
        }
    }
    Compared::Identical { keys: state.kvs.len(), revision: state.revisions.0 }
}

/// Every `chaos/` pair held by the node `client` talks to (a stale read, paged), and the
/// revisions of its first and last pages.
async fn stale_scan(client: &quorate_client::Client, id: u64) -> Result<Scan> {
    let mut out = Vec::new();
    let mut start = b"chaos/".to_vec();
    let mut revisions: Option<(u64, u64)> = None;
    for _ in 0..1000 {
        let page = client
            .scan(&start, Some(b"chaos0"), quorate_api::limits::SCAN_LIMIT_MAX, ReadConsistency::Stale)
            .await
            .with_context(|| format!("stale scan at node {id}"))?;
        let rev = page.read.revision;
        revisions = Some((revisions.map_or(rev, |r| r.0), rev));
        for kv in &page.kvs {
            out.push((
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
                kv.mod_revision,
            ));
        }
        match page.kvs.last() {
            Some(last) if page.more => {
                start = last.key.clone();
                start.push(0);
            }
            _ => return Ok(Scan { kvs: out, revisions: revisions.unwrap_or((0, 0)) }),
        }
    }
    anyhow::bail!("node {id}: more than 1000 scan pages")
}

/// Attempts at scraping one member's `/metrics` before the check fails.
const SCRAPE_ATTEMPTS: usize = 5;

/// Scrapes `/metrics` of every member; every sample named `*invariant*` must be 0, and a
/// member whose `/metrics` cannot be read fails the check (it could not run).
async fn invariants(env: &Env, members: &BTreeSet<u64>) -> (Result<String, String>, String) {
    let mut bodies = BTreeMap::new();
    let mut unscraped = Vec::new();
    for &id in members {
        let Some(&addr) = env.metrics.get(&id) else {
            unscraped.push(format!("node {id}: no metrics address"));
            continue;
        };
        let mut last = String::new();
        for attempt in 0..SCRAPE_ATTEMPTS {
            match tokio::task::spawn_blocking(move || http_get(addr, "/metrics")).await {
                Ok(Ok(body)) => {
                    bodies.insert(id, body);
                    break;
                }
                Ok(Err(e)) => last = format!("{e:#}"),
                Err(e) => last = e.to_string(),
            }
            if attempt + 1 < SCRAPE_ATTEMPTS {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        if !bodies.contains_key(&id) {
            unscraped.push(format!("node {id}: cannot scrape {addr}/metrics ({last})"));
        }
    }
    for (id, body) in &bodies {
        let _ = std::fs::write(env.dir.join(format!("metrics-node-{id}.txt")), body);
    }
    (invariant_samples(&bodies, &unscraped), admission_summary(&bodies))
}

/// Requests shed by reason and retries by principal, summed over the scraped members
/// (`quorate_proposals_shed_total{reason}`, `quorate_client_retries_total{principal}`).
pub(crate) fn admission_summary(bodies: &BTreeMap<u64, String>) -> String {
    let mut shed: BTreeMap<String, f64> = BTreeMap::new();
    let mut retries: BTreeMap<String, f64> = BTreeMap::new();
    for body in bodies.values() {
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            let mut parts = line.split_whitespace();
            let (Some(series), Some(value)) = (parts.next(), parts.next().and_then(|v| v.parse::<f64>().ok())) else {
                continue;
            };
            let label = |name: &str| {
                series
                    .split_once(&format!("{name}=\""))
                    .and_then(|(_, rest)| rest.split_once('"'))
                    .map(|(v, _)| v.to_string())
            };
            if series.starts_with("quorate_proposals_shed_total{") {
                *shed.entry(label("reason").unwrap_or_default()).or_default() += value;
            } else if series.starts_with("quorate_client_retries_total{") {
                *retries.entry(label("principal").unwrap_or_default()).or_default() += value;
            }
        }
    }
    // The largest four, as " (name n, ...)", or nothing when all are zero.
    let list = |m: &BTreeMap<String, f64>| {
        let mut v: Vec<(&String, &f64)> = m.iter().filter(|(_, n)| **n > 0.0).collect();
        v.sort_by(|a, b| b.1.total_cmp(a.1));
        let top = v.iter().take(4).map(|(k, n)| format!("{k} {n:.0}")).collect::<Vec<_>>();
        if top.is_empty() { String::new() } else { format!(" ({})", top.join(", ")) }
    };
    // Summed from +0.0: an empty `Sum` of f64 is -0.0, printed "-0".
    let total = |m: &BTreeMap<String, f64>| m.values().fold(0.0, |a, b| a + b);
    format!(
        "admission: {:.0} requests shed{}, {:.0} retries from {} principals{}",
        total(&shed),
        list(&shed),
        total(&retries),
        retries.values().filter(|n| **n > 0.0).count(),
        list(&retries)
    )
}

/// The invariant-counter check over scraped bodies (member → `/metrics` text).
pub(crate) fn invariant_samples(bodies: &BTreeMap<u64, String>, unscraped: &[String]) -> Result<String, String> {
    let mut bad: Vec<String> = unscraped.to_vec();
    let mut counters = 0;
    if bodies.is_empty() && unscraped.is_empty() {
        bad.push("no member to scrape".into());
    }
    for (id, body) in bodies {
        // Every node exports each invariant's counter from its start: none at all means the
        // check would be blind, which is a failure too.
        if !body.lines().any(|l| !l.starts_with('#') && l.contains("invariant_violations_total")) {
            bad.push(format!("node {id}: no invariant_violations_total series in /metrics"));
        }
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            let mut parts = line.split_whitespace();
            let (Some(name), Some(value)) = (parts.next(), parts.next()) else { continue };
            if name.contains("invariant") {
                counters += 1;
                if !value.parse::<f64>().is_ok_and(|v| v == 0.0) {
                    bad.push(format!("node {id}: {name} = {value}"));
                }
            }
        }
    }
    if !bad.is_empty() {
        return Err(bad.join(", "));
    }
    Ok(format!(
        "no runtime invariant violated ({counters} `*invariant*` samples, all 0, on all {} members' /metrics)",
        bodies.len()
    ))
}

/// A minimal HTTP/1.0 GET (loopback, bounded by timeouts and size).
pub(crate) fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut body = Vec::new();
    s.take(16 << 20).read_to_end(&mut body)?;
    let text = String::from_utf8_lossy(&body).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").context("no HTTP header")?;
    if !head.starts_with("HTTP/1.") || head.split_whitespace().nth(1).is_none_or(|c| c != "200") {
        anyhow::bail!("{}", head.lines().next().unwrap_or(""));
    }
    Ok(rest.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorate_check::history::ReadCompletion;

    fn scan(pairs: &[(&str, u64)], revisions: (u64, u64)) -> Scan {
        Scan { kvs: pairs.iter().map(|&(k, r)| (k.to_string(), "v".to_string(), r)).collect(), revisions }
    }

    #[test]
    fn members_read_at_different_revisions_are_read_again_and_at_one_revision_must_be_identical() {
        let a = scan(&[("chaos/k1", 3), ("chaos/lease/x", 4)], (5, 5));
        // Node 2 was scanned after a lease's expire deleted its key (revision 6): not a
        // difference, the scans must be repeated.
        let b = scan(&[("chaos/k1", 3)], (6, 6));
        let states: BTreeMap<u64, Scan> = [(1, a.clone()), (2, b)].into_iter().collect();
        assert!(matches!(compare(&states), Compared::Moving(_)), "{:?}", compare(&states));
        // A write between two pages of one member's scan: repeated too.
        let torn = scan(&[("chaos/k1", 3)], (5, 6));
        let states: BTreeMap<u64, Scan> = [(1, a.clone()), (2, torn)].into_iter().collect();
        assert!(matches!(compare(&states), Compared::Moving(_)));
        // At one revision, a difference is a divergence; no difference is identical.
        let c = scan(&[("chaos/k1", 3)], (5, 5));
        let states: BTreeMap<u64, Scan> = [(1, a.clone()), (2, c)].into_iter().collect();
        assert!(matches!(compare(&states), Compared::Differ(_)));
        let states: BTreeMap<u64, Scan> = [(1, a.clone()), (2, a)].into_iter().collect();
        assert!(matches!(compare(&states), Compared::Identical { keys: 2, revision: 5 }));
    }

    fn finals(k: &str, v: Option<&str>) -> BTreeMap<String, Option<String>> {
        [(k.to_string(), v.map(str::to_string))].into_iter().collect()
    }

    #[test]
    fn a_lost_acknowledged_write_is_reported() {
        let ops = vec![
            Operation::put(0, "k", "a", 10, Completion::Ok { ret: 20 }),
            Operation::put(1, "k", "b", 30, Completion::Ok { ret: 40 }),
        ];
        let ok = lost_writes(&ops, &finals("k", Some("b")));
        assert!(ok.problems.is_empty());
        assert_eq!((ok.checked, ok.pinned), (1, 1));
        assert_eq!(lost_writes(&ops, &finals("k", Some("a"))).problems.len(), 1, "overwritten by b");
        assert_eq!(lost_writes(&ops, &finals("k", None)).problems.len(), 1);
    }

    #[test]
    fn an_unfinished_write_makes_the_key_ambiguous() {
        let ops = vec![
            Operation::put(0, "k", "a", 10, Completion::Unknown),
            Operation::put(1, "k", "b", 30, Completion::Ok { ret: 40 }),
            Operation::get(2, "k", 50, ReadCompletion::Returned { ret: 60, output: Some("a".into()) }),
        ];
        let r = lost_writes(&ops, &finals("k", Some("a")));
        assert!(r.problems.is_empty());
        assert_eq!((r.checked, r.pinned), (1, 0));
        assert!(lost_writes(&ops, &finals("k", Some("b"))).problems.is_empty());
        // Not a value any write left.
        assert_eq!(lost_writes(&ops, &finals("k", Some("z"))).problems.len(), 1);
        assert_eq!(lost_writes(&ops, &finals("k", None)).problems.len(), 1, "b was acknowledged");
        let ops = vec![
            Operation::put(0, "k", "a", 10, Completion::Failed { ret: 20 }),
            Operation::delete(1, "k", 30, Completion::Ok { ret: 40 }),
        ];
        assert!(lost_writes(&ops, &finals("k", None)).problems.is_empty());
        assert_eq!(lost_writes(&ops, &finals("k", Some("a"))).problems.len(), 1, "a failed: it wrote nothing");
    }

    #[test]
    fn an_acknowledged_write_lost_behind_an_unfinished_one_is_caught() {
        // a acknowledged, then b unknown: the key holds a or b, never absent or older values.
        let ops = vec![
            Operation::put(0, "k", "old", 1, Completion::Ok { ret: 5 }),
            Operation::put(0, "k", "a", 10, Completion::Ok { ret: 20 }),
            Operation::put(1, "k", "b", 30, Completion::Unknown),
            Operation::cas(2, "k", "a", "c", 31, Completion::Failed { ret: 35 }),
        ];
        assert!(lost_writes(&ops, &finals("k", Some("a"))).problems.is_empty());
        assert!(lost_writes(&ops, &finals("k", Some("b"))).problems.is_empty());
        assert_eq!(lost_writes(&ops, &finals("k", Some("old"))).problems.len(), 1);
        assert_eq!(lost_writes(&ops, &finals("k", Some("c"))).problems.len(), 1, "the cas compared and failed");
        assert_eq!(lost_writes(&ops, &finals("k", None)).problems.len(), 1);
    }

    #[test]
    fn a_key_never_written_must_read_absent() {
        let r = lost_writes(&[], &finals("k", None));
        assert!(r.problems.is_empty());
        assert_eq!((r.checked, r.pinned), (1, 1));
        assert_eq!(lost_writes(&[], &finals("k", Some("x"))).problems.len(), 1);
        // Only keys with a final read are counted as checked.
        assert_eq!(lost_writes(&[], &BTreeMap::new()).checked, 0);
    }

    fn metrics(lines: &[&str]) -> String {
        lines.iter().map(|l| format!("{l}\n")).collect()
    }

    #[test]
    fn invariant_counters_fail_on_a_violation_a_blind_node_or_no_scrape() {
        let good = metrics(&[
            "# TYPE quorate_invariant_violations_total counter",
            "quorate_invariant_violations_total{invariant=\"term_monotonic\"} 0",
            "quorate_invariant_violations_total{invariant=\"cross_replica_hash\"} 0",
            "quorate_commit_index 12",
        ]);
        let bodies: BTreeMap<u64, String> = [(1, good.clone()), (2, good.clone())].into_iter().collect();
        let ok = invariant_samples(&bodies, &[]).unwrap();
        assert!(ok.contains("4 `*invariant*` samples, all 0, on all 2 members"), "{ok}");
        // A violation.
        let bad = good.replace("cross_replica_hash\"} 0", "cross_replica_hash\"} 1");
        let bodies: BTreeMap<u64, String> = [(1, good.clone()), (2, bad)].into_iter().collect();
        assert!(invariant_samples(&bodies, &[]).unwrap_err().contains("node 2"));
        // A node without the series.
        let bodies: BTreeMap<u64, String> =
            [(1, good.clone()), (2, metrics(&["quorate_commit_index 3"]))].into_iter().collect();
        assert!(invariant_samples(&bodies, &[]).unwrap_err().contains("no invariant_violations_total"));
        // A member that could not be scraped fails the check, even when the others pass.
        let bodies: BTreeMap<u64, String> = [(1, good)].into_iter().collect();
        let err = invariant_samples(&bodies, &["node 3: cannot scrape".into()]).unwrap_err();
        assert!(err.contains("node 3"), "{err}");
        // Nothing scraped at all: not a pass.
        assert!(invariant_samples(&BTreeMap::new(), &[]).is_err());
        assert!(invariant_samples(&BTreeMap::new(), &["node 1: cannot scrape".into()]).is_err());
    }

    #[test]
    fn admission_is_summed_over_members() {
        let a = metrics(&[
            "quorate_proposals_shed_total{reason=\"retry_budget\"} 8",
            "quorate_proposals_shed_total{reason=\"disk_space\"} 0",
            "quorate_client_retries_total{principal=\"chaos-shared\"} 29",
        ]);
        let b = metrics(&[
            "quorate_proposals_shed_total{reason=\"retry_budget\"} 2",
            "quorate_client_retries_total{principal=\"chaos-shared\"} 36",
            "quorate_client_retries_total{principal=\"admin\"} 1",
        ]);
        let s = admission_summary(&[(1, a), (2, b)].into_iter().collect());
        assert_eq!(
            s,
            "admission: 10 requests shed (retry_budget 10), 66 retries from 2 principals (chaos-shared 65, admin 1)"
        );
    }

    #[test]
    fn an_admission_that_shed_nothing_says_so_plainly() {
        // An empty f64 sum is -0.0: it printed "admission: -0 requests shed ()" (seed 303).
        let a = metrics(&["quorate_proposals_shed_total{reason=\"disk_space\"} 0", "quorate_commit_index 3"]);
        let s = admission_summary(&[(1, a)].into_iter().collect());
        assert_eq!(s, "admission: 0 requests shed, 0 retries from 0 principals");
        assert_eq!(admission_summary(&BTreeMap::new()), "admission: 0 requests shed, 0 retries from 0 principals");
    }

    #[test]
    fn the_summary_reports_unread_keys_and_fails() {
        let mut r = Report {
            recovery: Some(Duration::from_secs(1)),
            linearizable: Some("linearizable".into()),
            unread: Vec::new(),
            lost: LostWrites { problems: Vec::new(), checked: 24, pinned: 9 },
            replicas: Ok("3 members identical".into()),
            invariants: Ok("no runtime invariant violated".into()),
            admission: String::new(),
        };
        assert!(r.pass());
        assert!(r.summary().contains("24 keys checked, 9 of them pinned"), "{}", r.summary());
        r.unread.push("chaos/k003".into());
        assert!(!r.pass());
        assert!(r.summary().contains("FINAL READS FAILED for 1 keys (chaos/k003)"), "{}", r.summary());
        r.unread.clear();
        r.recovery = Some(RECOVERY_MAX + Duration::from_secs(1));
        assert!(!r.pass());
        r.recovery = Some(Duration::ZERO);
        r.linearizable = Some("NOT LINEARIZABLE: x".into());
        assert!(!r.pass());
    }
}
