//! `quorate endpoint health`: every member of the cluster, each asked directly.
//!
//! Healthy means what it means to etcd's `endpoint health`: the member serves a
//! *linearizable* read — a quorum round through it (a follower asks its leader, which
//! confirms its leadership with a quorum of heartbeats) — within the command's timeout. A
//! member that answers but sits on the minority side of a partition, or whose leader is
//! gone, cannot, so it is reported unhealthy even while it still names a leader. Besides:
//! not refusing writes for disk space and not recovering from lost state. The cluster view:
//! a majority of the voters healthy.

use super::output::{Format, UnavailableError, print_json};
use super::{ConnArgs, Outcome};
use quorate_api::{MemberKind, ReadConsistency};
use quorate_client::{Client, NodeHealth, NodeStatus};
use quorate_log::NodeId;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The key each member is asked to read linearizably (its value, if any, is not shown).
pub(crate) const HEALTH_KEY: &[u8] = b"health";

/// One member's answer.
#[derive(Debug)]
pub(crate) struct Probe {
    pub(crate) id: NodeId,
    /// The address asked (`-` when the member has none and is not in `--endpoints`).
    pub(crate) address: String,
    /// Whether it votes (from the member list; every member when the list is unknown).
    pub(crate) voter: bool,
    /// The linearizable read through it: how long it took, or why it failed.
    pub(crate) read: Result<Duration, String>,
    pub(crate) health: Result<NodeHealth, String>,
    pub(crate) status: Result<NodeStatus, String>,
}

impl Probe {
    /// Healthy: it serves a linearizable read, accepts writes and is not recovering.
    pub(crate) fn healthy(&self) -> bool {
        self.problem().is_none()
    }

    /// What is wrong, if anything.
    pub(crate) fn problem(&self) -> Option<String> {
        // Neither the read nor the health answered: it is unreachable, and that says it all.
        if let (Err(_), Err(e)) = (&self.read, &self.health) {
            return Some(format!("unreachable: {e}"));
        }
        let mut wrong = Vec::new();
        if let Err(e) = &self.read {
            wrong.push(format!("no linearizable read: {e}"));
        }
        match &self.health {
            Err(e) => wrong.push(format!("no health answer: {e}")),
            Ok(h) => {
                if h.refusing_writes {
                    wrong.push("refusing writes (disk space)".into());
                }
                if h.recovering {
                    wrong.push("recovering from lost state".into());
                }
            }
        }
        (!wrong.is_empty()).then(|| wrong.join("; "))
    }
}

/// The cluster's view: the voters and those of them healthy.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ClusterView {
    pub(crate) voters: Vec<NodeId>,
    pub(crate) healthy_voters: Vec<NodeId>,
}

impl ClusterView {
    pub(crate) fn of(probes: &[Probe]) -> ClusterView {
        let voters: Vec<NodeId> = probes.iter().filter(|p| p.voter).map(|p| p.id).collect();
        let healthy_voters = probes.iter().filter(|p| p.voter && p.healthy()).map(|p| p.id).collect();
        ClusterView { voters, healthy_voters }
    }

    /// A majority of the voters is healthy: the cluster serves linearizable reads and writes.
    pub(crate) fn quorum(&self) -> bool {
        !self.voters.is_empty() && self.healthy_voters.len() > self.voters.len() / 2
    }
}

/// The table: one row per member, the cluster's line, the problems of the unhealthy ones.
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
            p.read.as_ref().map_or("-".into(), |took| format!("{}ms", took.as_millis())),
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
    let view = ClusterView::of(probes);
    out.push_str(&format!(
        "cluster: {} of {} voters healthy: {}\n",
        view.healthy_voters.len(),
        view.voters.len(),
        if view.quorum() { "quorum" } else { "NO QUORUM" }
    ));
    if let Some(e) = list_error {
        out.push_str(&format!("the member list could not be read ({e}); asked the --endpoints instead\n"));
    }
    for n in notes {
        out.push_str(&n);
        out.push('\n');
    }
    out
}

/// `-o json`: `healthy` (every member), `cluster` {`voters`, `healthy_voters`, `quorum`},
/// `members` (one object per member: `id`, `address`, `voter`, `healthy`, `took_ms` (the
/// linearizable read), `leader`, `refusing_writes`, `recovering`, `disk_free_bytes`,
/// `db_bytes`, `error`), `member_list_error`.
pub(crate) fn to_json(probes: &[Probe], list_error: Option<&str>) -> Value {
    let members: Vec<Value> = probes
        .iter()
        .map(|p| {
            let h = p.health.as_ref().ok();
            json!({
                "id": p.id.get(),
                "address": p.address,
                "voter": p.voter,
                "healthy": p.healthy(),
                "took_ms": p.read.as_ref().ok().map(|took| took.as_millis() as u64),
                "leader": p.status.as_ref().ok().and_then(|s| s.leader).map(|l| l.get()),
                "refusing_writes": h.map(|h| h.refusing_writes),
                "recovering": h.map(|h| h.recovering),
                "disk_free_bytes": h.and_then(|h| h.disk_free_bytes),
                "db_bytes": h.and_then(|h| h.db_bytes),
                "error": p.problem(),
            })
        })
        .collect();
    let view = ClusterView::of(probes);
    let ids = |v: &[NodeId]| v.iter().map(|n| n.get()).collect::<Vec<_>>();
    json!({
        "healthy": !probes.is_empty() && list_error.is_none() && probes.iter().all(Probe::healthy),
        "cluster": {
            "voters": ids(&view.voters),
            "healthy_voters": ids(&view.healthy_voters),
            "quorum": view.quorum(),
        },
        "members": members,
        "member_list_error": list_error,
    })
}

/// Asks member `id`: a linearizable read through it (timed), its health and its status.
async fn probe_one(
    c: &Client,
    id: NodeId,
    limit: Duration,
) -> (Result<Duration, String>, Result<NodeHealth, String>, Result<NodeStatus, String>) {
    let start = Instant::now();
    let read = match tokio::time::timeout(limit, c.get_via(id, HEALTH_KEY, ReadConsistency::Linearizable)).await {
        Ok(Ok(_)) => Ok(start.elapsed()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("not served within {} ms", limit.as_millis())),
    };
    let health = c.health(id).await.map_err(|e| e.to_string());
    let status = c.status(id).await.map_err(|e| e.to_string());
    (read, health, status)
}

/// `quorate endpoint health`: the members from the cluster (the `--endpoints` when it cannot
/// say), each asked directly and concurrently for a linearizable read, its health and its
/// status. Exit 0 when every member is healthy; 1 when one is not but a majority of the
/// voters is; 5 when a majority of the voters is not healthy (no quorum: the cluster cannot
/// serve), none answering included.
pub(crate) async fn health(conn: &ConnArgs) -> anyhow::Result<Outcome> {
    let mut config = conn.client_config()?;
    let limit = config.total_timeout;
    let endpoints = config.members.clone();
    let client = Client::new(config.clone())?;
    let listed = client.member_list().await;
    client.close();
    type Listed = (NodeId, Option<String>, bool);
    let (members, list_error): (Vec<Listed>, Option<String>) = match listed {
        Ok(ms) => (ms.into_iter().map(|m| (m.id, m.addr, m.kind != MemberKind::Learner)).collect(), None),
        Err(e) => (endpoints.iter().map(|(id, a)| (*id, Some(a.to_string()), true)).collect(), Some(e.to_string())),
    };
    // Each member at its recorded address, resolved now; else at its --endpoints entry.
    let mut dial: Vec<(NodeId, SocketAddr)> = Vec::new();
    let mut shown = Vec::new();
    for (id, addr, voter) in &members {
        let resolved = addr.as_deref().and_then(|a| super::conn::resolve_endpoint(a).ok());
        let at = resolved.or_else(|| endpoints.iter().find(|(e, _)| e == id).map(|(_, a)| *a));
        if let Some(a) = at {
            dial.push((*id, a));
        }
        shown.push((*id, addr.clone().or_else(|| at.map(|a| a.to_string())).unwrap_or_else(|| "-".into()), at, *voter));
    }
    let mut probes = Vec::new();
    if !dial.is_empty() {
        config.members = dial;
        let client = Arc::new(Client::new(config)?);
        let mut set = tokio::task::JoinSet::new();
        for (i, (id, _, at, _)) in shown.iter().enumerate() {
            if at.is_none() {
                continue;
            }
            let (c, id) = (client.clone(), *id);
            set.spawn(async move {
                let (read, health, status) = probe_one(&c, id, limit).await;
                (i, read, health, status)
            });
        }
        let mut answers = Vec::new();
        while let Some(done) = set.join_next().await {
            answers.push(done?);
        }
        client.close();
        for (i, (id, address, at, voter)) in shown.into_iter().enumerate() {
            let probe = match (at, answers.iter().position(|a| a.0 == i)) {
                (Some(_), Some(k)) => {
                    let (_, read, health, status) = answers.swap_remove(k);
                    Probe { id, address, voter, read, health, status }
                }
                _ => {
                    let no = "no address: not in the member list or --endpoints".to_string();
                    Probe { id, address, voter, read: Err(no.clone()), health: Err(no.clone()), status: Err(no) }
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
    let view = ClusterView::of(&probes);
    if !view.quorum() {
        return Err(UnavailableError(format!(
            "no quorum: {} of {} voters serve linearizable reads; check that the nodes run and that --endpoints \
             is right",
            view.healthy_voters.len(),
            view.voters.len()
        ))
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

    fn probe(id: u64, read: Result<u64, &str>, health: Result<NodeHealth, String>, leader: Option<u64>) -> Probe {
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
            voter: true,
            read: read.map(Duration::from_millis).map_err(str::to_string),
            health,
            status: Ok(status),
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

    /// Review of issue 21: healthy was each node's own view (it answers and names a leader),
    /// so a node on the minority side of a partition, still naming its old leader, was
    /// healthy. Now healthy means a linearizable read through it was served.
    #[test]
    fn healthy_means_a_linearizable_read_through_the_member() {
        let ok = probe(1, Ok(3), Ok(fine(1)), Some(1));
        assert!(ok.healthy());
        let cut_off = probe(2, Err("not served within 3000 ms"), Ok(fine(2)), Some(1));
        assert!(!cut_off.healthy(), "it names a leader and answers, but serves no linearizable read");
        assert_eq!(cut_off.problem().as_deref(), Some("no linearizable read: not served within 3000 ms"));
        let mut full = fine(3);
        full.refusing_writes = true;
        assert!(probe(3, Ok(2), Ok(full), Some(1)).problem().unwrap().contains("refusing writes"));
        let down = probe(3, Err("gave up"), Err("gave up after 3 attempts".into()), None);
        assert_eq!(down.problem().as_deref(), Some("unreachable: gave up after 3 attempts"));

        let probes = [ok, cut_off, down];
        let t = table(&probes, None);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("ID  ADDRESS") && lines[0].ends_with("HEALTH"), "{t}");
        assert!(lines[1].contains("true") && lines[1].contains("3ms") && lines[1].ends_with("ok"), "{t}");
        assert!(lines[2].contains("false") && lines[2].ends_with("ok"), "{t}");
        assert!(lines[3].contains("false") && lines[3].ends_with("-"), "{t}");
        assert_eq!(lines[4], "cluster: 1 of 3 voters healthy: NO QUORUM", "{t}");
        assert!(lines[5].starts_with("node 2 at 127.0.0.1:7002: no linearizable read"), "{t}");
        let j = to_json(&probes, None);
        assert_eq!(j["healthy"], false);
        assert_eq!(j["cluster"]["voters"], json!([1, 2, 3]));
        assert_eq!(j["cluster"]["healthy_voters"], json!([1]));
        assert_eq!(j["cluster"]["quorum"], false);
        assert_eq!(j["members"][0]["healthy"], true);
        assert_eq!(j["members"][0]["took_ms"], 3);
        assert_eq!(j["members"][1]["took_ms"], Value::Null);
        assert_eq!(j["members"][1]["leader"], 1);
        assert!(j["members"][2]["error"].as_str().unwrap().contains("unreachable"));
        let two_of_three = [probe(1, Ok(1), Ok(fine(1)), Some(1)), probe(2, Ok(1), Ok(fine(2)), Some(1))];
        let one_down = [
            probe(1, Ok(1), Ok(fine(1)), Some(1)),
            probe(2, Ok(1), Ok(fine(2)), Some(1)),
            probe(3, Err("gave up"), Err("gave up".into()), None),
        ];
        let view = ClusterView::of(&one_down);
        assert!(view.quorum(), "two of three voters: {view:?}");
        let all_ok = to_json(&two_of_three, None);
        assert_eq!((all_ok["healthy"].clone(), all_ok["cluster"]["quorum"].clone()), (json!(true), json!(true)));
        assert_eq!(
            to_json(&two_of_three, Some("no leader"))["healthy"],
            false,
            "an unreadable member list is not healthy"
        );
        // A learner does not count toward the quorum.
        let mut learner = probe(4, Err("x"), Ok(fine(4)), Some(1));
        learner.voter = false;
        let view = ClusterView::of(&[probe(1, Ok(1), Ok(fine(1)), Some(1)), learner]);
        assert_eq!((view.voters.len(), view.healthy_voters.len(), view.quorum()), (1, 1, true));
        assert!(!ClusterView::of(&[]).quorum(), "no voter known: no quorum");
    }
}
