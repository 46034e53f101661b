//! `quorate cluster status`, `member ...`, `leader transfer`, `snapshot ...`.

use super::output::{Format, UnavailableError, print_json};
use super::{ConnArgs, MemberCmd, Outcome};
use anyhow::{Context, bail};
use quorate_client::{MemberKind, NodeStatus};
use quorate_log::{Configuration, NodeId};
use serde_json::{Value, json};
use std::io::Write;

fn node_id(id: u64) -> anyhow::Result<NodeId> {
    NodeId::new(id).context("node ids start at 1")
}

fn ids(set: &std::collections::BTreeSet<NodeId>) -> String {
    set.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// A configuration in a few characters: `voters=1,2,3 learners=4`, or with the outgoing half
/// of a joint change.
pub(crate) fn describe_config(c: &Configuration) -> String {
    let mut s = format!("voters={}", ids(&c.voters));
    if !c.voters_outgoing.is_empty() {
        s.push_str(&format!(" joint-old={}", ids(&c.voters_outgoing)));
    }
    if !c.learners.is_empty() {
        s.push_str(&format!(" learners={}", ids(&c.learners)));
    }
    s
}

/// The `HEALTH` cell of a node: `ok`, or what is wrong — `refusing-writes` (free disk space
/// below the node's floor: it refuses client writes), `recovering` (from lost synced state),
/// both joined by `+` — or `-` when unknown (no answer, or a 0.1.0 node, which cannot tell).
pub(crate) fn health_cell(health: Option<&quorate_client::NodeHealth>) -> String {
    let Some(h) = health else { return "-".into() };
    let mut wrong = Vec::new();
    if h.refusing_writes {
        wrong.push("refusing-writes");
    }
    if h.recovering {
        wrong.push("recovering");
    }
    if wrong.is_empty() { "ok".into() } else { wrong.join("+") }
}

type Healths = [(NodeId, Result<quorate_client::NodeHealth, String>)];

fn health_of(health: &Healths, id: NodeId) -> Option<&quorate_client::NodeHealth> {
    health.iter().find(|(h, _)| *h == id).and_then(|(_, h)| h.as_ref().ok())
}

/// One table row per node; a node that did not answer gets `unreachable` as its role and the
/// error at the end of the line. `SNAPSHOT` is the index of the node's latest snapshot,
/// `CONFIG-INDEX` the log index of the entry that set the configuration in `CONFIG` (the
/// configuration version: two nodes showing the same index hold the same configuration) and
/// `HEALTH` what [`health_cell`] says.
pub(crate) fn status_table(rows: &[(NodeId, String, Result<NodeStatus, String>)], health: &Healths) -> String {
    let header = [
        "ID",
        "ADDRESS",
        "ROLE",
        "TERM",
        "LEADER",
        "COMMIT",
        "APPLIED",
        "LAST",
        "SNAPSHOT",
        "CONFIG-INDEX",
        "HEALTH",
        "CONFIG",
    ];
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|s| (*s).to_string()).collect()];
    let mut notes = Vec::new();
    for (id, addr, status) in rows {
        let row = match status {
            Ok(s) => vec![
                id.to_string(),
                addr.clone(),
                s.role.to_string(),
                s.term.0.to_string(),
                s.leader.map_or("-".into(), |l| l.to_string()),
                s.commit.0.to_string(),
                s.applied.0.to_string(),
                s.last_index.0.to_string(),
                s.snapshot_index.0.to_string(),
                s.config_version.0.to_string(),
                health_cell(health_of(health, *id)),
                describe_config(&s.config),
            ],
            Err(e) => {
                notes.push(format!("node {id} at {addr}: {e}"));
                let mut r = vec![id.to_string(), addr.clone(), "unreachable".into()];
                r.extend(std::iter::repeat_n("-".to_string(), header.len() - 3));
                r
            }
        };
        table.push(row);
    }
    let widths: Vec<usize> =
        (0..header.len()).map(|c| table.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &table {
        let line: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    for n in notes {
        out.push_str(&n);
        out.push('\n');
    }
    out
}

fn ids_json(set: &std::collections::BTreeSet<NodeId>) -> Value {
    json!(set.iter().map(|n| n.get()).collect::<Vec<_>>())
}

/// `cluster status -o json`: `nodes`, one object per endpoint (`id`, `address`, `reachable`,
/// `error`, and when reachable `role`, `term`, `leader`, `commit`, `applied`, `last_index`,
/// `snapshot_index`, `config_index`, `config` {`voters`, `voters_outgoing`, `learners`},
/// `revision`, `danger`, `versions` {`binary`, `storage_format`, `cluster_version`,
/// `cluster_version_max`} or `null`, `health` {`refusing_writes`, `recovering`,
/// `disk_free_bytes`, `disk_floor_bytes`, `db_bytes`} or `null` for a node that cannot tell);
/// then `cluster_version` (committed) and `cluster_version_supported` (the highest every
/// member supports).
pub(crate) fn status_json(
    rows: &[(NodeId, String, Result<NodeStatus, String>)],
    versions: &[(NodeId, Result<quorate_client::VersionInfo, String>)],
    health: &Healths,
) -> Value {
    let nodes: Vec<Value> = rows
        .iter()
        .map(|(id, addr, status)| {
            let mut m = serde_json::Map::new();
            m.insert("id".into(), json!(id.get()));
            m.insert("address".into(), json!(addr));
            m.insert("reachable".into(), json!(status.is_ok()));
            m.insert("error".into(), json!(status.as_ref().err()));
            if let Ok(s) = status {
                let fields = json!({
                    "role": s.role.to_string(),
                    "term": s.term.0,
                    "leader": s.leader.map(|l| l.get()),
                    "commit": s.commit.0,
                    "applied": s.applied.0,
                    "last_index": s.last_index.0,
                    "snapshot_index": s.snapshot_index.0,
                    "config_index": s.config_version.0,
                    "config": {
                        "voters": ids_json(&s.config.voters),
                        "voters_outgoing": ids_json(&s.config.voters_outgoing),
                        "learners": ids_json(&s.config.learners),
                    },
                    "revision": s.revision,
                    "danger": s.danger,
                });
                if let Value::Object(f) = fields {
                    m.extend(f);
                }
            }
            let v = versions.iter().find(|(v, _)| v == id).and_then(|(_, v)| v.as_ref().ok());
            m.insert(
                "versions".into(),
                v.map_or(Value::Null, |v| {
                    json!({
                        "binary": v.binary_version,
                        "storage_format": v.storage_format,
                        "cluster_version": v.cluster_version,
                        "cluster_version_max": v.cluster_version_max,
                    })
                }),
            );
            m.insert(
                "health".into(),
                health_of(health, *id).map_or(Value::Null, |h| {
                    json!({
                        "refusing_writes": h.refusing_writes,
                        "recovering": h.recovering,
                        "disk_free_bytes": h.disk_free_bytes,
                        "disk_floor_bytes": h.disk_floor_bytes,
                        "db_bytes": h.db_bytes,
                    })
                }),
            );
            Value::Object(m)
        })
        .collect();
    let (committed, ceiling) = cluster_versions(versions);
    json!({"nodes": nodes, "cluster_version": committed, "cluster_version_supported": ceiling})
}

/// The committed cluster version (the highest any member reports) and the highest every member
/// supports (a member that does not answer counts as the initial version).
fn cluster_versions(versions: &[(NodeId, Result<quorate_client::VersionInfo, String>)]) -> (u32, u32) {
    let committed = versions.iter().filter_map(|(_, v)| v.as_ref().ok()).map(|v| v.cluster_version).max();
    let ceiling = versions
        .iter()
        .map(|(_, v)| v.as_ref().map_or(quorate_api::CLUSTER_VERSION_INITIAL, |v| v.cluster_version_max))
        .min();
    (committed.unwrap_or(quorate_api::CLUSTER_VERSION_INITIAL), ceiling.unwrap_or(quorate_api::CLUSTER_VERSION_INITIAL))
}

pub(crate) async fn status(conn: &ConnArgs) -> anyhow::Result<Outcome> {
    let client = conn.client()?;
    let members = client.members();
    let statuses = client.statuses().await;
    client.close();
    let rows: Vec<_> = statuses
        .into_iter()
        .map(|(id, s)| {
            let addr = members.iter().find(|(m, _)| *m == id).map_or("?".into(), |(_, a)| a.to_string());
            (id, addr, s.map_err(|e| e.to_string()))
        })
        .collect();
    let as_json = conn.output == Format::Json;
    let (versions, health, histories) = if rows.iter().any(|(_, _, s)| s.is_ok()) {
        let client = conn.client()?;
        let ids: Vec<NodeId> = rows.iter().map(|r| r.0).collect();
        let versions = versions_of(&client, &ids).await;
        let health = health_of_nodes(&client, &ids).await;
        let mut histories = Vec::new();
        for &id in &ids {
            histories.push((id, client.history(id).await.map_err(|e| e.to_string())));
        }
        client.close();
        (versions, health, histories)
    } else {
        (Vec::new(), Vec::new(), Vec::new())
    };
    if !as_json {
        print!("{}", status_table(&rows, &health));
    }
    let dangers: Vec<String> = rows
        .iter()
        .filter_map(|(id, _, s)| s.as_ref().ok().filter(|s| !s.danger.is_empty()).map(|s| (id, s)))
        .map(|(id, s)| format!("node {id} runs with settings that weaken safety: {}", s.danger.join(", ")))
        .collect();
    for d in &dangers {
        eprintln!("WARNING: {d}");
    }
    if !as_json && !versions.is_empty() {
        print!("{}", versions_table(&rows, &versions));
        print!("{}", history_table(&histories));
    }
    if as_json {
        let mut v = status_json(&rows, &versions, &health);
        add_history_json(&mut v, &histories);
        print_json(&v)?;
    }
    if rows.iter().all(|(_, _, s)| s.is_err()) {
        return Err(UnavailableError(
            "no node answered; check that the nodes run and that --endpoints is right".into(),
        )
        .into());
    }
    Ok(Outcome::Ok)
}

pub(crate) async fn member(conn: &ConnArgs, cmd: MemberCmd) -> anyhow::Result<Outcome> {
    let client = conn.client()?;
    let as_json = conn.output == Format::Json;
    let mut out = std::io::stdout().lock();
    match cmd {
        MemberCmd::List => {
            let members = client.member_list().await?;
            let kind = |k: MemberKind| match k {
                MemberKind::Voter => "voter",
                MemberKind::Learner => "learner",
                MemberKind::OutgoingVoter => "outgoing-voter",
                _ => "other",
            };
            if as_json {
                let list: Vec<Value> = members
                    .iter()
                    .map(|m| json!({"id": m.id.get(), "kind": kind(m.kind), "address": m.addr}))
                    .collect();
                print_json(&json!({"members": list}))?;
            } else {
                writeln!(out, "{:<6}{:<16}ADDRESS", "ID", "KIND")?;
                for m in members {
                    writeln!(out, "{:<6}{:<16}{}", m.id.to_string(), kind(m.kind), m.addr.as_deref().unwrap_or("-"))?;
                }
            }
        }
        MemberCmd::Add { learner: _, id, addr } => {
            client.member_add(node_id(id)?, addr.clone()).await?;
            if as_json {
                print_json(&json!({"added": id, "address": addr.to_string(), "kind": "learner"}))?;
            } else {
                writeln!(out, "node {id} at {addr} added as a learner; promote it with `quorate member promote {id}`")?;
            }
        }
        MemberCmd::Update { id, peer } => {
            client.member_update(node_id(id)?, peer.clone()).await?;
            if as_json {
                print_json(&json!({"updated": id, "address": peer.to_string()}))?;
            } else {
                writeln!(out, "node {id} is now reached at {peer}")?;
            }
        }
        MemberCmd::Promote { id } => {
            client.member_promote(node_id(id)?).await?;
            if as_json {
                print_json(&json!({"promoted": id}))?;
            } else {
                writeln!(out, "node {id} is now a voter")?;
            }
        }
        MemberCmd::Remove { id } => {
            client.member_remove(node_id(id)?).await?;
            if as_json {
                print_json(&json!({"removed": id}))?;
            } else {
                writeln!(out, "node {id} removed")?;
            }
        }
    }
    client.close();
    Ok(Outcome::Ok)
}

pub(crate) async fn transfer(conn: &ConnArgs, to: Option<u64>) -> anyhow::Result<Outcome> {
    let client = conn.client()?;
    let to = to.map(node_id).transpose()?;
    client.leader_transfer(to).await?;
    client.close();
    match to {
        _ if conn.output == Format::Json => print_json(&json!({"transferred_to": to.map(|t| t.get())}))?,
        Some(t) => println!("leadership handed to node {t}"),
        None => println!("leadership handed to the most caught-up voter"),
    }
    Ok(Outcome::Ok)
}

pub(crate) async fn snapshot_save(conn: &ConnArgs) -> anyhow::Result<Outcome> {
    let client = conn.client()?;
    let (path, index) = client.snapshot_save().await?;
    let node = client.leader();
    client.close();
    if conn.output == Format::Json {
        print_json(&json!({"path": path, "index": index.0, "node": node.map(|n| n.get())}))?;
    } else {
        let leader = node.map_or("the leader".into(), |l| format!("node {l}"));
        println!("snapshot at index {index} written to {path} on {leader}");
    }
    Ok(Outcome::Ok)
}

/// Every listed member's versions, asked concurrently (`Err`: the node did not answer, or runs
/// 0.1.0, which predates the request).
async fn versions_of(
    client: &quorate_client::Client,
    ids: &[NodeId],
) -> Vec<(NodeId, Result<quorate_client::VersionInfo, String>)> {
    let mut out = Vec::new();
    // One at a time: a handful of members, each answer bounded by the client's time limit.
    for &id in ids {
        out.push((id, client.versions(id).await.map_err(|e| e.to_string())));
    }
    out
}

/// Every listed member's health, one at a time (`Err`: the node did not answer, or runs
/// 0.1.0, which predates the request).
async fn health_of_nodes(
    client: &quorate_client::Client,
    ids: &[NodeId],
) -> Vec<(NodeId, Result<quorate_client::NodeHealth, String>)> {
    let mut out = Vec::new();
    for &id in ids {
        out.push((id, client.health(id).await.map_err(|e| e.to_string())));
    }
    out
}

/// The history table under `cluster status`: per node, the compaction revision, the revision,
/// and the earlier versions kept (entries and bytes, against the state machine's bounds).
pub(crate) fn history_table(histories: &[(NodeId, Result<quorate_client::HistoryInfo, String>)]) -> String {
    let mut out = String::from("\nID  HISTORY  COMPACTED  REVISION  ENTRIES  BYTES\n");
    for (id, h) in histories {
        let line = match h {
            Ok(h) if h.enabled => format!(
                "{:<4}{:<9}{:<11}{:<10}{:<9}{}",
                id.to_string(),
                "on",
                h.compacted,
                h.revision,
                h.entries,
                h.bytes
            ),
            Ok(h) => format!("{:<4}{:<9}{:<11}{:<10}{:<9}-", id.to_string(), "off", "-", h.revision, "-"),
            Err(_) => format!("{:<4}-", id.to_string()),
        };
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Adds each node's history (`null` if it did not answer) to `cluster status -o json`.
fn add_history_json(v: &mut Value, histories: &[(NodeId, Result<quorate_client::HistoryInfo, String>)]) {
    let Some(nodes) = v.get_mut("nodes").and_then(Value::as_array_mut) else { return };
    for node in nodes {
        let id = node.get("id").and_then(Value::as_u64);
        let h = histories.iter().find(|(h, _)| Some(h.get()) == id).and_then(|(_, h)| h.as_ref().ok());
        if let Value::Object(m) = node {
            m.insert(
                "history".into(),
                h.map_or(Value::Null, |h| {
                    json!({
                        "enabled": h.enabled,
                        "compacted": h.compacted,
                        "revision": h.revision,
                        "entries": h.entries,
                        "bytes": h.bytes,
                        "entries_max": h.entries_max,
                        "bytes_max": h.bytes_max,
                    })
                }),
            );
        }
    }
}

/// The versions table under `cluster status`: binary, storage format and cluster version per
/// node, and the cluster version the log committed.
pub(crate) fn versions_table(
    rows: &[(NodeId, String, Result<NodeStatus, String>)],
    versions: &[(NodeId, Result<quorate_client::VersionInfo, String>)],
) -> String {
    let mut out = String::from("\nID  BINARY    STORAGE-FORMAT  CLUSTER-VERSION  SUPPORTS\n");
    for (id, v) in versions {
        let status = rows.iter().find(|r| r.0 == *id).and_then(|r| r.2.as_ref().ok());
        let line = match (v, status) {
            (Ok(v), _) => format!(
                "{:<4}{:<10}{:<16}{:<17}{}..={}",
                id.to_string(),
                v.binary_version,
                v.storage_format,
                v.cluster_version,
                quorate_api::CLUSTER_VERSION_INITIAL,
                v.cluster_version_max
            ),
            // A node that answers Status but not Versions predates cluster versions (0.1.0).
            (Err(_), Some(s)) => format!(
                "{:<4}{:<10}{:<16}{:<17}{}..={}",
                id.to_string(),
                s.binary_version,
                s.storage_format,
                quorate_api::CLUSTER_VERSION_INITIAL,
                quorate_api::CLUSTER_VERSION_INITIAL,
                quorate_api::CLUSTER_VERSION_INITIAL
            ),
            (Err(_), None) => format!("{:<4}-", id.to_string()),
        };
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let (committed, ceiling) = cluster_versions(versions);
    out.push_str(&format!("cluster version {committed} (every member supports up to {ceiling})\n"));
    out
}

/// `quorate cluster finalize [--version N]`: asks every member for its versions; commits the
/// cluster version only if every member answers and supports it.
pub(crate) async fn finalize(conn: &ConnArgs, version: Option<u32>) -> anyhow::Result<Outcome> {
    let client = conn.client()?;
    let members = client.member_list().await.context("cannot list the members")?;
    let ids: Vec<NodeId> = members.iter().map(|m| m.id).collect();
    let versions = versions_of(&client, &ids).await;
    let mut lowest = u32::MAX;
    let mut current = quorate_api::CLUSTER_VERSION_INITIAL;
    for (id, v) in &versions {
        match v {
            Ok(v) => {
                lowest = lowest.min(v.cluster_version_max);
                current = current.max(v.cluster_version);
            }
            Err(e) => {
                client.close();
                bail!(
                    "node {id} did not report its versions ({e}); it is down or runs a binary older than \
                     0.2.0: upgrade and start every member, then run finalize again"
                );
            }
        }
    }
    let target = version.unwrap_or(lowest);
    if target > lowest {
        client.close();
        bail!("cluster version {target} is not supported by every member (the lowest maximum is {lowest})");
    }
    let as_json = conn.output == Format::Json;
    if target <= current {
        client.close();
        if as_json {
            print_json(&json!({"cluster_version": current, "changed": false}))?;
        } else {
            println!("the cluster is already at cluster version {current}; nothing to do");
        }
        return Ok(Outcome::Ok);
    }
    client.finalize(target).await?;
    client.close();
    if as_json {
        print_json(&json!({"cluster_version": target, "changed": true}))?;
        return Ok(Outcome::Ok);
    }
    println!(
        "cluster version {target} committed: its features are on; binaries that do not support it can no longer \
         join or open this cluster's data (no rollback past this point)"
    );
    Ok(Outcome::Ok)
}
