//! `quorate endpoint health`: every member of the cluster, each asked directly.

use super::output::{Format, UnavailableError, print_json};
use super::{ConnArgs, Outcome};
use quorate_client::{Client, NodeHealth, NodeStatus};
use quorate_log::NodeId;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One member's answer.
#[derive(Debug)]
pub(crate) struct Probe {
    pub(crate) id: NodeId,
    /// The address asked (`-` when the member has none and is not in `--endpoints`).
    pub(crate) address: String,
    pub(crate) health: Result<NodeHealth, String>,
    pub(crate) status: Result<NodeStatus, String>,
    /// How long the health request took.
    pub(crate) took: Duration,
}

impl Probe {
    /// Healthy: it answers, knows a leader, accepts writes and is not recovering.
    pub(crate) fn healthy(&self) -> bool {
        self.problem().is_none()
    }

    /// What is wrong, if anything.
    pub(crate) fn problem(&self) -> Option<String> {
        let h = match &self.health {
            Err(e) => return Some(format!("unreachable: {e}")),
            Ok(h) => h,
        };
        let mut wrong = Vec::new();
        match &self.status {
            Err(e) => wrong.push(format!("no status: {e}")),
            Ok(s) if s.leader.is_none() => wrong.push("no leader known".to_string()),
            Ok(_) => {}
        }
        if h.refusing_writes {
            wrong.push("refusing writes (disk space)".into());
        }
        if h.recovering {
            wrong.push("recovering from lost state".into());
        }
        (!wrong.is_empty()).then(|| wrong.join("; "))
    }
}

/// The table: one row per member, the problems of the unhealthy ones after it.
pub(crate) fn table(probes: &[Probe], list_error: Option<&str>) -> String {
    let header = ["ID", "ADDRESS", "HEALTHY", "TOOK", "LEADER", "HEALTH"];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_string()).collect()];
    let mut notes = Vec::new();
    for p in probes {
        let leader = p.status.as_ref().ok().and_then(|s| s.leader).map_or("-".into(), |l| l.to_string());
        rows.push(vec![
            p.id.to_string(),
            p.address.clone(),
            if p.healthy() { "true" } else { "false" }.into(),
            if p.health.is_ok() { format!("{}ms", p.took.as_millis()) } else { "-".into() },
            leader,
            super::cluster::health_cell(p.health.as_ref().ok()),
        ]);
        if let Some(why) = p.problem() {
            notes.push(format!("node {} at {}: {why}", p.id, p.address));
        }
    }
    let widths: Vec<usize> =
        (0..header.len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if let Some(e) = list_error {
        out.push_str(&format!("the member list could not be read ({e}); asked the --endpoints instead\n"));
    }
    for n in notes {
        out.push_str(&n);
        out.push('\n');
    }
    out
}

/// `-o json`: `healthy` (every member), `members` (one object per member: `id`, `address`,
/// `healthy`, `took_ms`, `leader`, `refusing_writes`, `recovering`, `disk_free_bytes`,
/// `db_bytes`, `error`), `member_list_error`.
pub(crate) fn to_json(probes: &[Probe], list_error: Option<&str>) -> Value {
    let members: Vec<Value> = probes
        .iter()
        .map(|p| {
            let h = p.health.as_ref().ok();
            json!({
                "id": p.id.get(),
                "address": p.address,
                "healthy": p.healthy(),
                "took_ms": h.map(|_| p.took.as_millis() as u64),
                "leader": p.status.as_ref().ok().and_then(|s| s.leader).map(|l| l.get()),
                "refusing_writes": h.map(|h| h.refusing_writes),
                "recovering": h.map(|h| h.recovering),
                "disk_free_bytes": h.and_then(|h| h.disk_free_bytes),
                "db_bytes": h.and_then(|h| h.db_bytes),
                "error": p.problem(),
            })
        })
        .collect();
    json!({
        "healthy": !probes.is_empty() && list_error.is_none() && probes.iter().all(Probe::healthy),
        "members": members,
        "member_list_error": list_error,
    })
}

/// `quorate endpoint health`: the members from the cluster (the `--endpoints` when it cannot
/// say), each asked for its health and status directly, concurrently. Exit 0 when every member
/// is healthy, 1 when one is not or does not answer, 5 when none answers.
pub(crate) async fn health(conn: &ConnArgs) -> anyhow::Result<Outcome> {
    let mut config = conn.client_config()?;
    let endpoints = config.members.clone();
    let client = Client::new(config.clone())?;
    let listed = client.member_list().await;
    client.close();
    let (members, list_error): (Vec<(NodeId, Option<String>)>, Option<String>) = match listed {
        Ok(ms) => (ms.into_iter().map(|m| (m.id, m.addr)).collect(), None),
        Err(e) => (endpoints.iter().map(|(id, a)| (*id, Some(a.to_string()))).collect(), Some(e.to_string())),
    };
    // Each member at its recorded address, resolved now; else at its --endpoints entry.
    let mut dial: Vec<(NodeId, SocketAddr)> = Vec::new();
    let mut shown = Vec::new();
    for (id, addr) in &members {
        let resolved = addr.as_deref().and_then(|a| super::conn::resolve_endpoint(a).ok());
        let at = resolved.or_else(|| endpoints.iter().find(|(e, _)| e == id).map(|(_, a)| *a));
        if let Some(a) = at {
            dial.push((*id, a));
        }
        shown.push((*id, addr.clone().or_else(|| at.map(|a| a.to_string())).unwrap_or_else(|| "-".into()), at));
    }
    let mut probes = Vec::new();
    if !dial.is_empty() {
        config.members = dial;
        let client = Arc::new(Client::new(config)?);
        let mut set = tokio::task::JoinSet::new();
        for (i, (id, _, at)) in shown.iter().enumerate() {
            if at.is_none() {
                continue;
            }
            let (c, id) = (client.clone(), *id);
            set.spawn(async move {
                let start = Instant::now();
                let health = c.health(id).await.map_err(|e| e.to_string());
                let took = start.elapsed();
                let status = c.status(id).await.map_err(|e| e.to_string());
                (i, health, status, took)
            });
        }
        let mut answers = Vec::new();
        while let Some(done) = set.join_next().await {
            answers.push(done?);
        }
        client.close();
        for (i, (id, address, at)) in shown.into_iter().enumerate() {
            let probe = match (at, answers.iter().position(|a| a.0 == i)) {
                (Some(_), Some(k)) => {
                    let (_, health, status, took) = answers.swap_remove(k);
                    Probe { id, address, health, status, took }
                }
                _ => {
                    let no = "no address: not in the member list or --endpoints".to_string();
                    Probe { id, address, health: Err(no.clone()), status: Err(no), took: Duration::ZERO }
                }
            };
            probes.push(probe);
        }
    }
    if conn.output == Format::Json {
        print_json(&to_json(&probes, list_error.as_deref()))?;
    } else {
        print!("{}", table(&probes, list_error.as_deref()));
    }
    if probes.iter().all(|p| p.health.is_err()) {
        return Err(UnavailableError(
            "no member answered; check that the nodes run and that --endpoints is right".into(),
        )
        .into());
    }
    if list_error.is_some() || !probes.iter().all(Probe::healthy) {
        return Ok(Outcome::Failed);
    }
    Ok(Outcome::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(id: u64, health: Result<NodeHealth, String>, leader: Option<u64>) -> Probe {
        let n = NodeId::new(id).unwrap();
        let status = NodeStatus {
            id: n,
            role: quorate_core::Role::Follower,
            term: quorate_log::Term(2),
            leader: leader.and_then(NodeId::new),
            commit: quorate_log::LogIndex(5),
            applied: quorate_log::LogIndex(5),
            last_index: quorate_log::LogIndex(5),
            config: quorate_log::Configuration::default(),
            config_version: quorate_log::LogIndex(1),
            snapshot_index: quorate_log::LogIndex(0),
            revision: 3,
            binary_version: "0.1.0".into(),
            storage_format: 1,
            danger: Vec::new(),
        };
        Probe {
            id: n,
            address: format!("127.0.0.1:700{id}"),
            health,
            status: Ok(status),
            took: Duration::from_millis(3),
        }
    }

    fn fine(id: u64) -> NodeHealth {
        NodeHealth {
            id: NodeId::new(id).unwrap(),
            refusing_writes: false,
            recovering: false,
            disk_free_bytes: Some(1 << 30),
            disk_floor_bytes: 64 << 20,
            db_bytes: Some(4096),
        }
    }

    #[test]
    fn healthy_means_answering_with_a_leader_and_accepting_writes() {
        let ok = probe(1, Ok(fine(1)), Some(1));
        assert!(ok.healthy());
        let no_leader = probe(2, Ok(fine(2)), None);
        assert_eq!(no_leader.problem().as_deref(), Some("no leader known"));
        let mut full = fine(3);
        full.refusing_writes = true;
        assert!(probe(3, Ok(full), Some(1)).problem().unwrap().contains("refusing writes"));
        let down = probe(3, Err("gave up after 3 attempts".into()), None);
        assert!(down.problem().unwrap().starts_with("unreachable: gave up"));

        let probes = [ok, down];
        let t = table(&probes, None);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("ID  ADDRESS") && lines[0].ends_with("HEALTH"), "{t}");
        assert!(lines[1].contains("true") && lines[1].contains("3ms") && lines[1].ends_with("ok"), "{t}");
        assert!(lines[2].contains("false") && lines[2].ends_with("-"), "{t}");
        assert!(lines[3].starts_with("node 3 at 127.0.0.1:7003: unreachable"), "{t}");
        let j = to_json(&probes, None);
        assert_eq!(j["healthy"], false);
        assert_eq!(j["members"][0]["healthy"], true);
        assert_eq!(j["members"][0]["took_ms"], 3);
        assert_eq!(j["members"][1]["took_ms"], Value::Null);
        assert!(j["members"][1]["error"].as_str().unwrap().contains("unreachable"));
        let all_ok = to_json(&probes[..1], None);
        assert_eq!(all_ok["healthy"], true);
        assert_eq!(
            to_json(&probes[..1], Some("no leader"))["healthy"],
            false,
            "an unreadable member list is not healthy"
        );
    }
}
