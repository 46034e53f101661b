//! What a chaos run checks once every fault is healed:
//!
//! 1. **recovery**: a leader and a new acknowledged write within [`RECOVERY_MAX`];
//! 2. **final reads**: a linearizable read of every key, added to the history;
//! 3. **linearizability** of the whole history (`quorate_check::linearizability`);
//! 4. **no lost acknowledged write**: for every key whose last write (in real time) was
//!    acknowledged and followed no unfinished write, the final read returns that write;
//! 5. **identical replicas**: once every member has applied the leader's commit index, a
//!    stale scan of every key at each member returns the same pairs, and the same revision;
//! 6. **invariant counters**: every `/metrics` sample whose name contains `invariant` is 0 (a
//!    printed note when a node serves no `/metrics`).

use super::workload::{History, key_name, recorded_get, recorded_put};
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
    pub(crate) lost: Vec<String>,
    pub(crate) replicas: Result<String, String>,
    pub(crate) invariants: Result<String, String>,
    pub(crate) keys_checked: usize,
}

impl Report {
    pub(crate) fn pass(&self) -> bool {
        self.recovery.is_some_and(|r| r <= RECOVERY_MAX)
            && self.linearizable.as_deref() == Some("linearizable")
            && self.lost.is_empty()
            && self.replicas.is_ok()
            && self.invariants.is_ok()
    }

    pub(crate) fn summary(&self) -> String {
        let rec = match self.recovery {
            Some(d) => format!("recovered in {:.1}s (limit {}s)", d.as_secs_f64(), RECOVERY_MAX.as_secs()),
            None => format!("NO RECOVERY within {}s", RECOVERY_MAX.as_secs()),
        };
        let lin = self.linearizable.clone().unwrap_or_else(|| "not checked".into());
        let lost = if self.lost.is_empty() {
            format!("no acknowledged write lost ({} keys)", self.keys_checked)
        } else {
            format!("LOST WRITES: {}", self.lost.join("; "))
        };
        let rep = match &self.replicas {
            Ok(s) => s.clone(),
            Err(e) => format!("REPLICAS DIFFER: {e}"),
        };
        let inv = match &self.invariants {
            Ok(s) => s.clone(),
            Err(e) => format!("INVARIANT COUNTERS: {e}"),
        };
        format!("{lin}; {lost}; {rep}; {inv}; {rec}")
    }
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
        lost: Vec::new(),
        replicas: Ok(String::new()),
        invariants: Ok(String::new()),
        keys_checked: 0,
    };
    let checker_client = o.clients + 1;
    let client = env.factory.client(o.seed ^ 0xC4EC)?;

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

    // 2. Final linearizable reads of every key (retried; unknown reads constrain nothing).
    let mut finals: BTreeMap<String, Option<String>> = BTreeMap::new();
    for k in 0..o.keys {
        let key = key_name(k);
        for _ in 0..10 {
            if let Some(v) = recorded_get(history, &client, checker_client, &key, ReadConsistency::Linearizable).await {
                finals.insert(key.clone(), v);
                break;
            }
        }
    }

    // 3. Linearizability.
    let ops = history.snapshot();
    let t = Instant::now();
    let result = check(&ops, &Limits::default());
    println!("checker: {result} in {:.1}s", t.elapsed().as_secs_f64());
    report.linearizable = Some(match &result.outcome {
        Outcome::Linearizable => "linearizable".to_string(),
        other => format!("NOT LINEARIZABLE: {other}"),
    });

    // 4. Lost acknowledged writes.
    report.keys_checked = finals.len();
    report.lost = lost_writes(&ops, &finals);

    // 5. Identical replicas.
    report.replicas = replicas(env, members, o.seed).await.map_err(|e| format!("{e:#}"));

    // 6. Invariant counters.
    report.invariants = invariants(env, members);
    Ok(report)
}

/// Keys whose final value is not their last acknowledged write, where that write is
/// unambiguous: every other non-failed write of the key returned before it was called.
pub(crate) fn lost_writes(ops: &[Operation], finals: &BTreeMap<String, Option<String>>) -> Vec<String> {
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut lost = Vec::new();
    for (key, final_value) in finals {
        let Some(ops) = by_key.get(key.as_str()) else { continue };
        // Writes that may have taken effect, with what they leave: Some(value) or None (delete).
        let writes: Vec<(&Operation, Option<&str>, Option<u64>)> = ops
            .iter()
            .filter_map(|op| match &op.kind {
                OpKind::Put { value, completion } | OpKind::Cas { value, completion, .. } => match completion {
                    Completion::Failed { .. } => None,
                    c => Some((*op, Some(value.as_str()), c.ret())),
                },
                OpKind::Delete { completion } => match completion {
                    Completion::Failed { .. } => None,
                    c => Some((*op, None, c.ret())),
                },
                _ => None,
            })
            .collect();
        let Some(&(last, value, Some(_))) = writes.iter().max_by_key(|w| w.0.call) else { continue };
        let acknowledged = matches!(
            &last.kind,
            OpKind::Put { completion: Completion::Ok { .. }, .. }
                | OpKind::Cas { completion: Completion::Ok { .. }, .. }
                | OpKind::Delete { completion: Completion::Ok { .. } }
        );
        let alone = writes.iter().all(|(w, _, ret)| std::ptr::eq(*w, last) || ret.is_some_and(|r| r < last.call));
        if acknowledged && alone && final_value.as_deref() != value {
            lost.push(format!(
                "{key}: last acknowledged write left {value:?}, the final read returned {final_value:?}"
            ));
        }
    }
    lost
}

/// Waits until every member applied the leader's commit index, then compares a stale scan of
/// all keys at each member.
async fn replicas(env: &Env, members: &BTreeSet<u64>, seed: u64) -> Result<String> {
    let admin = env.factory.client(seed ^ 0x5CA9)?;
    // The committed configuration decides who must converge, not the nemesis' belief: a
    // membership change whose outcome it saw as unknown may have been applied (seen in CI:
    // `member remove 4` timed out on the client yet committed, and the check then waited for
    // node 4, which the leader no longer replicates to).
    let members: BTreeSet<u64> = match super::members(&admin).await {
        Ok(m) if !m.is_empty() => {
            let m: BTreeSet<u64> = m.into_iter().collect();
            if &m != members {
                println!("replicas: the committed configuration is {m:?} (the nemesis believed {members:?})");
            }
            m
        }
        _ => members.clone(),
    };
    let members = &members;
    let deadline = Instant::now() + Duration::from_secs(30);
    let target = loop {
        let statuses = admin.statuses().await;
        let mut applied = BTreeMap::new();
        let mut commit = 0;
        for (id, s) in &statuses {
            if let Ok(s) = s
                && members.contains(&id.get())
            {
                applied.insert(id.get(), s.applied.0);
                commit = commit.max(s.commit.0);
            }
        }
        if applied.len() == members.len() && applied.values().all(|&a| a == commit) && commit > 0 {
            break commit;
        }
        if Instant::now() >= deadline {
            anyhow::bail!("members did not converge within 30s: applied {applied:?}, commit {commit}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut states: BTreeMap<u64, Vec<(String, String, u64)>> = BTreeMap::new();
    let mut revisions = BTreeMap::new();
    for &id in members {
        let c = env.client_of(id, seed ^ id)?;
        let (kvs, revision) = stale_scan(&c, id).await?;
        revisions.insert(id, revision);
        states.insert(id, kvs);
    }
    let Some((first, state)) = states.iter().next() else { anyhow::bail!("no member to compare") };
    for (id, other) in &states {
        if other != state {
            let diff = state.iter().zip(other).find(|(a, b)| a != b);
            anyhow::bail!(
                "node {id} differs from node {first} ({} vs {} keys; first difference {diff:?})",
                other.len(),
                state.len()
            );
        }
    }
    let revs: BTreeSet<u64> = revisions.values().copied().collect();
    if revs.len() > 1 {
        anyhow::bail!("revisions differ: {revisions:?}");
    }
    Ok(format!(
        "{} members identical at index {target} ({} keys, revision {})",
        states.len(),
        state.len(),
        revs.iter().next().copied().unwrap_or(0)
    ))
}

/// Every `chaos/` pair held by the node `client` talks to (a stale read, paged), and the
/// revision of the first page.
async fn stale_scan(client: &quorate_client::Client, id: u64) -> Result<(Vec<(String, String, u64)>, u64)> {
    let mut out = Vec::new();
    let mut start = b"chaos/".to_vec();
    let mut revision = None;
    for _ in 0..1000 {
        let page = client
            .scan(&start, Some(b"chaos0"), quorate_api::limits::SCAN_LIMIT_MAX, ReadConsistency::Stale)
            .await
            .with_context(|| format!("stale scan at node {id}"))?;
        revision.get_or_insert(page.read.revision);
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
            _ => return Ok((out, revision.unwrap_or(0))),
        }
    }
    anyhow::bail!("node {id}: more than 1000 scan pages")
}

/// Scrapes `/metrics` of each member; every sample named `*invariant*` must be 0.
fn invariants(env: &Env, members: &BTreeSet<u64>) -> Result<String, String> {
    let mut scraped = 0;
    let mut bad = Vec::new();
    let mut counters = 0;
    for &id in members {
        let Some(addr) = env.metrics.get(&id) else { continue };
        let Ok(body) = http_get(*addr, "/metrics") else { continue };
        scraped += 1;
        // Every node exports each invariant's counter from its start: none at all means the
        // check would be blind, which is a failure too.
        if !body.lines().any(|l| !l.starts_with('#') && l.contains("invariant_violations_total")) {
            bad.push(format!("node {id}: no invariant_violations_total series in /metrics"));
        }
        let _ = std::fs::write(env.dir.join(format!("metrics-node-{id}.txt")), &body);
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
    if scraped == 0 {
        let note = "invariant counters: skipped (no node serves /metrics yet)".to_string();
        println!("note: {note}");
        return Ok(note);
    }
    if !bad.is_empty() {
        return Err(bad.join(", "));
    }
    Ok(format!("no runtime invariant violated ({counters} `*invariant*` samples, all 0, on {scraped} nodes' /metrics)"))
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

    fn finals(k: &str, v: Option<&str>) -> BTreeMap<String, Option<String>> {
        [(k.to_string(), v.map(str::to_string))].into_iter().collect()
    }

    #[test]
    fn a_lost_acknowledged_write_is_reported() {
        let ops = vec![
            Operation::put(0, "k", "a", 10, Completion::Ok { ret: 20 }),
            Operation::put(1, "k", "b", 30, Completion::Ok { ret: 40 }),
        ];
        assert!(lost_writes(&ops, &finals("k", Some("b"))).is_empty());
        assert_eq!(lost_writes(&ops, &finals("k", Some("a"))).len(), 1);
        assert_eq!(lost_writes(&ops, &finals("k", None)).len(), 1);
    }

    #[test]
    fn an_unfinished_write_makes_the_key_ambiguous() {
        let ops = vec![
            Operation::put(0, "k", "a", 10, Completion::Unknown),
            Operation::put(1, "k", "b", 30, Completion::Ok { ret: 40 }),
            Operation::get(2, "k", 50, ReadCompletion::Returned { ret: 60, output: Some("a".into()) }),
        ];
        assert!(lost_writes(&ops, &finals("k", Some("a"))).is_empty());
        let ops = vec![
            Operation::put(0, "k", "a", 10, Completion::Failed { ret: 20 }),
            Operation::delete(1, "k", 30, Completion::Ok { ret: 40 }),
        ];
        assert!(lost_writes(&ops, &finals("k", None)).is_empty());
        assert_eq!(lost_writes(&ops, &finals("k", Some("a"))).len(), 1);
    }
}
