//! In-process clusters over real QUIC + mutual TLS and RocksDB: a follower that fell behind
//! the leader's compacted log catches up by installing a snapshot (and keeps it across a
//! restart), and membership changes through the client API (add, promote, remove).

#[path = "support/procs.rs"]
mod procs;

mod common {
    use quorate_api::{ApiError, ClientRequest, ClientResponse, NodeMessage, ReadConsistency, Request, Response};
    use quorate_core::Role as RaftRole;
    use quorate_log::NodeId;
    use quorate_node::config::{LimitsConfig, NodeConfig, RaftConfig, TlsConfig};
    use quorate_node::server::{ServerError, run_until};
    use quorate_transport::{Client, ClientOptions, ClusterId, Credentials, Principal, Role, TlsPaths};
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

    pub(crate) fn nid(n: u64) -> NodeId {
        NodeId::new(n).unwrap()
    }

    use super::procs::free_port;

    pub(crate) struct Node {
        pub(crate) config: NodeConfig,
        stop: Option<oneshot::Sender<()>>,
        task: Option<JoinHandle<Result<(), ServerError>>>,
    }

    impl Node {
        pub(crate) fn start(config: NodeConfig) -> Node {
            let (tx, rx) = oneshot::channel::<()>();
            let task = tokio::spawn(run_until(config.clone(), async move {
                let _ = rx.await;
            }));
            Node { config, stop: Some(tx), task: Some(task) }
        }

        pub(crate) async fn stop(&mut self) {
            if let Some(tx) = self.stop.take() {
                let _ = tx.send(());
            }
            if let Some(t) = self.task.take() {
                t.await.unwrap().unwrap();
            }
        }

        pub(crate) fn running(&self) -> bool {
            self.task.is_some()
        }
    }

    pub(crate) struct Cluster {
        _dir: tempfile::TempDir,
        pub(crate) cluster: ClusterId,
        /// Nodes started (or stopped) so far.
        pub(crate) nodes: BTreeMap<u64, Node>,
        /// Configurations of nodes that hold certificates but are not started: `join = true`.
        pub(crate) spare: BTreeMap<u64, NodeConfig>,
        creds: BTreeMap<&'static str, Credentials>,
        pub(crate) admin_tls: TlsPaths,
        next_id: u64,
    }

    impl Cluster {
        /// Starts nodes 1..=3 as the initial voters; nodes 4..=3+spare get certificates and a
        /// `join = true` configuration listing the voters as peers.
        pub(crate) fn start(raft: RaftConfig, spare: u64) -> Cluster {
            quorate_node::server::init_tracing();
            let dir = tempfile::tempdir().unwrap();
            let cluster = ClusterId::new("test").unwrap();
            let ids: Vec<NodeId> = (1..=3 + spare).map(nid).collect();
            let clients = [
                (Principal::new("writer").unwrap(), Role::Write),
                (Principal::new("reader").unwrap(), Role::Read),
                (Principal::new("admin").unwrap(), Role::Admin),
            ];
            let certs =
                quorate_transport::dev_certs::generate(&dir.path().join("certs"), &cluster, &ids, &clients).unwrap();
            let addrs: BTreeMap<u64, SocketAddr> = ids.iter().map(|i| (i.get(), free_port())).collect();
            let peers: BTreeMap<u64, String> =
                addrs.iter().filter(|(i, _)| **i <= 3).map(|(i, a)| (*i, a.to_string())).collect();
            let mut nodes = BTreeMap::new();
            let mut spare = BTreeMap::new();
            for (i, paths) in &certs.nodes {
                let i = i.get();
                let config = NodeConfig {
                    id: i,
                    cluster: "test".into(),
                    listen: addrs[&i],
                    data_dir: dir.path().join(format!("n{i}")),
                    join: i > 3,
                    metrics_listen: None,
                    advertise: None,
                    peers: peers.clone(),
                    tls: TlsConfig {
                        ca: paths.ca.clone(),
                        cert: paths.cert.clone(),
                        key: paths.key.clone(),
                        crls: Vec::new(),
                    },
                    raft: raft.clone(),
                    limits: LimitsConfig { free_space_floor_mb: 0, ..LimitsConfig::default() },
                    telemetry: Default::default(),
                    admission: Default::default(),
                    history: Default::default(),
                };
                if i <= 3 {
                    nodes.insert(i, Node::start(config));
                } else {
                    spare.insert(i, config);
                }
            }
            let mut creds = BTreeMap::new();
            for name in ["writer", "reader", "admin"] {
                let paths = certs.clients[&Principal::new(name).unwrap()].clone();
                creds.insert(name, Credentials::load(paths).unwrap());
            }
            let admin_tls = certs.clients[&Principal::new("admin").unwrap()].clone();
            Cluster { _dir: dir, cluster, nodes, spare, creds, admin_tls, next_id: 1 }
        }

        pub(crate) async fn call_as(
            &mut self,
            who: &'static str,
            node: u64,
            body: Request,
        ) -> Result<Result<Response, ApiError>, String> {
            let id = self.next_id;
            self.next_id += 1;
            let addr = self.nodes[&node].config.listen;
            let client = Client::<NodeMessage>::connect(&self.creds[who], nid(node), addr, ClientOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            let req = NodeMessage::Request(ClientRequest { id, session: None, body });
            let resp = client.request(&req).await.map_err(|e| e.to_string());
            client.close();
            match resp? {
                NodeMessage::Response(ClientResponse { id: rid, result }) => {
                    assert_eq!(rid, id);
                    Ok(result)
                }
                other => Err(format!("unexpected {other:?}")),
            }
        }

        /// Polls until some node reports itself leader, and every running node agrees.
        pub(crate) async fn leader(&mut self) -> u64 {
            let until = Instant::now() + DEADLINE;
            while Instant::now() < until {
                let ids: Vec<u64> = self.nodes.iter().filter(|(_, n)| n.running()).map(|(i, _)| *i).collect();
                let mut leaders = Vec::new();
                for i in &ids {
                    if let Ok(Ok(Response::Status(s))) = self.call_as("reader", *i, Request::Status).await {
                        leaders.push((s.role == RaftRole::Leader, s.leader.map(NodeId::get)));
                    }
                }
                if leaders.len() == ids.len()
                    && let Some(l) = leaders.iter().find(|(is, _)| *is).and_then(|(_, l)| *l)
                    && leaders.iter().all(|(_, x)| *x == Some(l))
                {
                    return l;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("no leader elected within {DEADLINE:?}");
        }

        /// Retries a request while the cluster answers "not now" (elections, catch-up).
        pub(crate) async fn call_retry(&mut self, node: u64, body: Request) -> Response {
            let until = Instant::now() + DEADLINE;
            loop {
                match self.call_as("writer", node, body.clone()).await {
                    Ok(Ok(r)) => return r,
                    Ok(Err(
                        e @ (ApiError::Unavailable(_)
                        | ApiError::Timeout
                        | ApiError::Overloaded { .. }
                        | ApiError::NotLeader { .. }),
                    )) => assert!(Instant::now() < until, "still failing after {DEADLINE:?}: {e}"),
                    Ok(Err(e)) => panic!("request failed: {e}"),
                    Err(e) => assert!(Instant::now() < until, "transport still failing: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }

        pub(crate) async fn status(&mut self, node: u64) -> quorate_api::NodeStatus {
            match self.call_retry(node, Request::Status).await {
                Response::Status(s) => s,
                other => panic!("not a status: {other:?}"),
            }
        }

        /// Polls until `node` has applied everything `leader` had committed when this began.
        pub(crate) async fn wait_applied(&mut self, node: u64, leader: u64) {
            let target = self.status(leader).await.commit;
            let until = Instant::now() + DEADLINE;
            while self.status(node).await.applied < target {
                assert!(Instant::now() < until, "node {node} never applied {target}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }

        /// A local (stale) read of `key` on `node`.
        pub(crate) async fn stale_value(&mut self, node: u64, key: &str) -> Option<Vec<u8>> {
            let body = Request::Get { key: key.into(), read: ReadConsistency::Stale };
            match self.call_retry(node, body).await {
                Response::Get { kv, .. } => kv.map(|kv| kv.value),
                other => panic!("not a get: {other:?}"),
            }
        }

        pub(crate) async fn stop_all(&mut self) {
            for n in self.nodes.values_mut() {
                n.stop().await;
            }
        }
    }

    pub(crate) fn fast_raft() -> RaftConfig {
        RaftConfig { election_timeout_ms: 400, heartbeat_ms: 50, ..RaftConfig::default() }
    }

    pub(crate) fn put(k: &str, v: &str) -> Request {
        Request::Put { key: k.into(), value: v.into() }
    }
}

use common::{Cluster, DEADLINE, Node, fast_raft, nid, put};
use quorate_api::{ApiError, MemberKind, ReadConsistency};
use quorate_node::config::RaftConfig;
use std::time::{Duration, Instant};

const KEYS: usize = 200;
const TAIL: u64 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lagging_follower_installs_a_snapshot() {
    let raft = RaftConfig { snapshot_entries: 20, compaction_tail_entries: TAIL, ..fast_raft() };
    let mut c = Cluster::start(raft, 0);
    let leader = c.leader().await;
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    for i in 0..10 {
        c.call_retry(leader, put(&format!("pre{i}"), "x")).await;
    }
    c.wait_applied(follower, leader).await;
    // Nothing is written from here until the follower stops, so the leader's last index bounds
    // whatever the follower holds.
    let follower_last = c.status(leader).await.last_index;
    c.nodes.get_mut(&follower).unwrap().stop().await;

    for i in 0..KEYS {
        c.call_retry(leader, put(&format!("k{i:03}"), &format!("v{i}"))).await;
    }
    // Both running nodes snapshot every 20 entries and keep only `TAIL` entries behind their
    // snapshot, so once their snapshot index passes `follower_last + TAIL`, the entries right
    // after the follower's log are gone from every log. The leader may still hold appends for
    // the stopped follower in its transport queue (sent before compaction, delivered on
    // reconnect, which lets a follower catch up without a snapshot), so both are restarted:
    // then no copy of those entries exists anywhere, and the only way for the follower to
    // catch up is to install a snapshot. That, and the follower's snapshot index ending at or
    // past the leader's, is the signal that it installed one.
    let others: Vec<u64> = (1..=3).filter(|&i| i != follower).collect();
    let until = Instant::now() + DEADLINE;
    for &i in &others {
        loop {
            let s = c.status(i).await.snapshot_index;
            if s.0 > follower_last.0 + TAIL {
                break;
            }
            assert!(Instant::now() < until, "node {i} never compacted past {follower_last}: snapshot at {s}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for &i in &others {
        c.nodes.get_mut(&i).unwrap().stop().await;
        let config = c.nodes[&i].config.clone();
        *c.nodes.get_mut(&i).unwrap() = Node::start(config);
    }
    let leader = c.leader().await;
    let leader_snapshot = c.status(leader).await.snapshot_index;
    assert!(leader_snapshot.0 > follower_last.0 + TAIL);

    let config = c.nodes[&follower].config.clone();
    *c.nodes.get_mut(&follower).unwrap() = Node::start(config.clone());
    c.wait_applied(follower, leader).await;
    // Nothing was written since the restart but the new leader's first entry, so the
    // follower took no snapshot of its own after the installed one.
    let installed = c.status(follower).await.snapshot_index;
    assert!(
        installed >= leader_snapshot,
        "follower snapshot {installed}, leader's {leader_snapshot}, follower's last index before the stop {follower_last}"
    );
    for i in 0..KEYS {
        let v = c.stale_value(follower, &format!("k{i:03}")).await;
        assert_eq!(v, Some(format!("v{i}").into_bytes()), "k{i:03} after the install");
    }
    assert_eq!(c.stale_value(follower, "pre9").await, Some(b"x".to_vec()));

    // The installed state survives a restart.
    c.nodes.get_mut(&follower).unwrap().stop().await;
    *c.nodes.get_mut(&follower).unwrap() = Node::start(config);
    for i in 0..KEYS {
        let v = c.stale_value(follower, &format!("k{i:03}")).await;
        assert_eq!(v, Some(format!("v{i}").into_bytes()), "k{i:03} after restarting");
    }
    assert!(c.status(follower).await.snapshot_index >= installed);
    c.stop_all().await;
}

fn voters(m: &[quorate_api::Member]) -> Vec<u64> {
    m.iter().filter(|m| m.kind == MemberKind::Voter).map(|m| m.id.get()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn membership_add_promote_remove() {
    let mut c = Cluster::start(fast_raft(), 1);
    let leader = c.leader().await;
    let members: Vec<_> = c.nodes.values().map(|n| (nid(n.config.id), n.config.listen)).collect();
    let client =
        quorate_client::Client::new(quorate_client::ClientConfig::new(c.cluster.clone(), members, c.admin_tls.clone()))
            .unwrap();
    for i in 0..20 {
        client.put(format!("a{i:02}"), "1").await.unwrap();
    }

    // Node 4 starts with `join = true` and waits to be added.
    let cfg4 = c.spare.remove(&4).unwrap();
    let addr4 = cfg4.listen;
    c.nodes.insert(4, Node::start(cfg4));
    client.member_add(nid(4), addr4).await.unwrap();
    let m = client.member_list().await.unwrap();
    assert!(m.iter().any(|m| m.id == nid(4) && m.kind == MemberKind::Learner), "{m:?}");
    c.wait_applied(4, leader).await;
    assert_eq!(c.stale_value(4, "a19").await, Some(b"1".to_vec()));

    // Refusals are plain errors: an unknown node cannot be promoted, a member not re-added.
    let e = client.member_promote(nid(9)).await.unwrap_err();
    assert!(matches!(e.api_error(), Some(ApiError::Refused(_))), "{e}");
    let e = client.member_add(nid(4), addr4).await.unwrap_err();
    assert!(matches!(e.api_error(), Some(ApiError::Refused(_))), "{e}");

    client.member_promote(nid(4)).await.unwrap();
    let m = client.member_list().await.unwrap();
    assert_eq!(voters(&m), vec![1, 2, 3, 4], "{m:?}");
    assert_eq!(m.len(), 4, "{m:?}");
    for i in 0..20 {
        client.put(format!("b{i:02}"), "2").await.unwrap();
    }

    // Remove an original follower; three voters remain and writes still work.
    let leader = c.leader().await;
    let gone = (1..=3).find(|&i| i != leader).unwrap();
    client.member_remove(nid(gone)).await.unwrap();
    let m = client.member_list().await.unwrap();
    let expect: Vec<u64> = (1..=4).filter(|&i| i != gone).collect();
    assert_eq!(voters(&m), expect, "{m:?}");
    assert_eq!(m.len(), 3, "{m:?}");
    c.nodes.get_mut(&gone).unwrap().stop().await;
    c.nodes.remove(&gone);
    for i in 0..20 {
        client.put(format!("c{i:02}"), "3").await.unwrap();
    }
    let got = client.get("c19", ReadConsistency::Linearizable).await.unwrap();
    assert_eq!(got.kv.map(|kv| kv.value), Some(b"3".to_vec()));
    let leader = c.leader().await;
    c.wait_applied(4, leader).await;
    assert_eq!(c.stale_value(4, "c19").await, Some(b"3".to_vec()));
    client.close();
    c.stop_all().await;
}
