//! `quorate cluster status`, `member ...`, `leader transfer`, `snapshot ...`.

use super::{ConnArgs, MemberCmd, Outcome};
use anyhow::{Context, bail};
use quorate_client::{MemberKind, NodeStatus};
use quorate_log::{Configuration, NodeId};
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

/// One table row per node; a node that did not answer gets `unreachable` as its role and the
/// error at the end of the line. `SNAPSHOT` is the index of the node's latest snapshot and
/// `CONFIG-INDEX` the log index of the entry that set the configuration in `CONFIG` (the
/// configuration version: two nodes showing the same index hold the same configuration).
pub(crate) fn status_table(rows: &[(NodeId, String, Result<NodeStatus, String>)]) -> String {
    let header =
        ["ID", "ADDRESS", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAST", "SNAPSHOT", "CONFIG-INDEX", "CONFIG"];
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
    print!("{}", status_table(&rows));
    let dangers: Vec<String> = rows
        .iter()
        .filter_map(|(id, _, s)| s.as_ref().ok().filter(|s| !s.danger.is_empty()).map(|s| (id, s)))
        .map(|(id, s)| format!("node {id} runs with settings that weaken safety: {}", s.danger.join(", ")))
        .collect();
    for d in &dangers {
        eprintln!("WARNING: {d}");
    }
    if rows.iter().any(|(_, _, s)| s.is_ok()) {
        let client = conn.client()?;
        let versions = versions_of(&client, &rows.iter().map(|r| r.0).collect::<Vec<_>>()).await;
        client.close();
        print!("{}", versions_table(&rows, &versions));
    }
    if rows.iter().all(|(_, _, s)| s.is_err()) {
        bail!("no node answered; check that the nodes run and that --endpoints is right");
    }
    Ok(Outcome::Ok)
}

pub(crate) async fn member(conn: &ConnArgs, cmd: MemberCmd) -> anyhow::Result<Outcome> {
    let client = conn.client()?;
    let mut out = std::io::stdout().lock();
    match cmd {
        MemberCmd::List => {
            let members = client.member_list().await?;
            writeln!(out, "{:<6}{:<16}ADDRESS", "ID", "KIND")?;
            for m in members {
                let kind = match m.kind {
                    MemberKind::Voter => "voter",
                    MemberKind::Learner => "learner",
                    MemberKind::OutgoingVoter => "outgoing-voter",
                    _ => "other",
                };
                writeln!(out, "{:<6}{:<16}{}", m.id.to_string(), kind, m.addr.as_deref().unwrap_or("-"))?;
            }
        }
        MemberCmd::Add { learner: _, id, addr } => {
            client.member_add(node_id(id)?, addr).await?;
            writeln!(out, "node {id} at {addr} added as a learner; promote it with `quorate member promote {id}`")?;
        }
        MemberCmd::Promote { id } => {
            client.member_promote(node_id(id)?).await?;
            writeln!(out, "node {id} is now a voter")?;
        }
        MemberCmd::Remove { id } => {
            client.member_remove(node_id(id)?).await?;
            writeln!(out, "node {id} removed")?;
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
        Some(t) => println!("leadership handed to node {t}"),
        None => println!("leadership handed to the most caught-up voter"),
    }
    Ok(Outcome::Ok)
}

pub(crate) async fn snapshot_save(conn: &ConnArgs) -> anyhow::Result<Outcome> {
    let client = conn.client()?;
    let (path, index) = client.snapshot_save().await?;
    let leader = client.leader().map_or("the leader".into(), |l| format!("node {l}"));
    client.close();
    println!("snapshot at index {index} written to {path} on {leader}");
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
    let committed = versions.iter().filter_map(|(_, v)| v.as_ref().ok()).map(|v| v.cluster_version).max();
    let ceiling = versions
        .iter()
        .map(|(_, v)| v.as_ref().map_or(quorate_api::CLUSTER_VERSION_INITIAL, |v| v.cluster_version_max))
        .min();
    out.push_str(&format!(
        "cluster version {} (every member supports up to {})\n",
        committed.unwrap_or(quorate_api::CLUSTER_VERSION_INITIAL),
        ceiling.unwrap_or(quorate_api::CLUSTER_VERSION_INITIAL)
    ));
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
    if target <= current {
        client.close();
        println!("the cluster is already at cluster version {current}; nothing to do");
        return Ok(Outcome::Ok);
    }
    client.finalize(target).await?;
    client.close();
    println!(
        "cluster version {target} committed: its features are on; binaries that do not support it can no longer \
         join or open this cluster's data (no rollback past this point)"
    );
    Ok(Outcome::Ok)
}
