//! Nodes run in the test's process (`run_until` on its tokio runtime) over real QUIC + mutual
//! TLS and RocksDB, with certificates from a dev CA the test holds, and calls to them as a
//! client principal; and the node configuration such clusters start from, shared with the
//! tests that run processes from configurations of their own. Include it after `procs.rs`:
//! `#[path = "support/procs.rs"] mod procs;` then `#[path = "support/inproc.rs"] mod inproc;`.

// Every test binary includes this file and uses a different part of it.
#![allow(dead_code)]

use crate::procs::free_port;
use quorate_api::{ApiError, ClientRequest, ClientResponse, NodeMessage, Request, Response, Sequenced};
use quorate_core::Role as RaftRole;
use quorate_log::NodeId;
use quorate_node::config::{Engine, LimitsConfig, NodeConfig, RaftConfig, TlsConfig};
use quorate_node::server::{ServerError, run_until};
use quorate_transport::{Client, ClientOptions, ClusterId, Credentials, Principal, Role, TlsPaths};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Longest wait for a leader, or for a request to go through.
pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

pub(crate) fn nid(n: u64) -> NodeId {
    NodeId::new(n).unwrap()
}

/// Node `id` of the cluster `cluster` listening on `listen`, its data in `data_dir`, its TLS
/// files `paths` (from `dev_certs::generate`): a member that bootstraps, no peers, no metrics
/// endpoint, no free-space floor, defaults otherwise. Callers set the rest with `..`.
pub(crate) fn node_config(
    id: u64,
    cluster: &str,
    listen: SocketAddr,
    data_dir: PathBuf,
    paths: &TlsPaths,
) -> NodeConfig {
    NodeConfig {
        id,
        cluster: cluster.into(),
        listen,
        data_dir,
        join: false,
        metrics_listen: None,
        advertise: None,
        peers: BTreeMap::new(),
        tls: TlsConfig { ca: paths.ca.clone(), cert: paths.cert.clone(), key: paths.key.clone(), crls: Vec::new() },
        raft: RaftConfig::default(),
        limits: LimitsConfig { free_space_floor_mb: 0, ..LimitsConfig::default() },
        telemetry: Default::default(),
        admission: Default::default(),
        history: Default::default(),
        engine: Default::default(),
    }
}

/// One node running in this process until it is stopped.
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

    /// Stops the node and waits for it: it must stop cleanly.
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

    pub(crate) fn addr(&self) -> SocketAddr {
        self.config.listen
    }
}

/// A cluster "test" of three voters, and spare nodes that hold certificates.
pub(crate) struct Cluster {
    _dir: tempfile::TempDir,
    pub(crate) cluster: ClusterId,
    /// Nodes started (or stopped) so far.
    pub(crate) nodes: BTreeMap<u64, Node>,
    /// Configurations of nodes that hold certificates but are not started: `join = true`.
    pub(crate) spare: BTreeMap<u64, NodeConfig>,
    /// The clients' credentials: `writer`, `reader` and `admin`.
    creds: BTreeMap<&'static str, std::sync::Arc<Credentials>>,
    pub(crate) admin_tls: TlsPaths,
    next_id: u64,
}

impl Cluster {
    /// Nodes 1..=3 started as the initial voters.
    pub(crate) fn start(raft: RaftConfig) -> Cluster {
        Cluster::start_with(raft, 0, false)
    }

    /// Starts nodes 1..=3 as the initial voters; nodes 4..=3+spare get certificates and a
    /// `join = true` configuration listing the voters as peers. `upgraded`: every node starts
    /// on an empty store directory, so none takes itself for a new cluster's first start (no
    /// bootstrap marker): the cluster stays at cluster version 1 until finalized, as an
    /// upgraded one does.
    pub(crate) fn start_with(raft: RaftConfig, spare: u64, upgraded: bool) -> Cluster {
        Cluster::start_on(raft, spare, upgraded, [Engine::Driver; 3])
    }

    /// As [`Cluster::start_with`], node `i` of the first three on engine `engines[i - 1]`.
    pub(crate) fn start_on(raft: RaftConfig, spare: u64, upgraded: bool, engines: [Engine; 3]) -> Cluster {
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
                join: i > 3,
                peers: peers.clone(),
                raft: raft.clone(),
                engine: if i <= 3 { engines[(i - 1) as usize] } else { Engine::Driver },
                ..node_config(i, "test", addrs[&i], dir.path().join(format!("n{i}")), paths)
            };
            if upgraded {
                std::fs::create_dir_all(config.data_dir.join("store")).unwrap();
            }
            if i <= 3 {
                nodes.insert(i, Node::start(config));
            } else {
                spare.insert(i, config);
            }
        }
        let mut creds = BTreeMap::new();
        for name in ["writer", "reader", "admin"] {
            let paths = certs.clients[&Principal::new(name).unwrap()].clone();
            creds.insert(name, std::sync::Arc::new(Credentials::load(paths).unwrap()));
        }
        let admin_tls = certs.clients[&Principal::new("admin").unwrap()].clone();
        Cluster { _dir: dir, cluster, nodes, spare, creds, admin_tls, next_id: 1 }
    }

    /// One request of `who` to `node` on a connection of its own: the node's answer, or why
    /// there was none.
    pub(crate) async fn call_as(
        &mut self,
        who: &'static str,
        node: u64,
        session: Option<Sequenced>,
        body: Request,
    ) -> Result<Result<Response, ApiError>, String> {
        self.call_in_background(who, node, session, body).await.map_err(|e| e.to_string())?
    }

    /// [`Cluster::call_as`] on a task of its own (the test goes on while it waits).
    pub(crate) fn call_in_background(
        &mut self,
        who: &'static str,
        node: u64,
        session: Option<Sequenced>,
        body: Request,
    ) -> tokio::task::JoinHandle<Result<Result<Response, ApiError>, String>> {
        let id = self.next_id;
        self.next_id += 1;
        let addr = self.nodes[&node].addr();
        let creds = self.creds[who].clone();
        tokio::spawn(async move { call_once(&creds, node, addr, id, session, body).await })
    }
}

/// One request to `node` at `addr` as `creds`, on a connection of its own.
async fn call_once(
    creds: &Credentials,
    node: u64,
    addr: SocketAddr,
    id: u64,
    session: Option<Sequenced>,
    body: Request,
) -> Result<Result<Response, ApiError>, String> {
    {
        let client = Client::<NodeMessage>::connect(creds, nid(node), addr, ClientOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        let req = NodeMessage::Request(ClientRequest { id, session, body });
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
}

impl Cluster {
    /// Polls until some node reports itself leader, and every running node agrees.
    pub(crate) async fn leader(&mut self) -> u64 {
        let until = Instant::now() + DEADLINE;
        while Instant::now() < until {
            let ids: Vec<u64> = self.nodes.iter().filter(|(_, n)| n.running()).map(|(i, _)| *i).collect();
            let mut leaders = Vec::new();
            for i in &ids {
                if let Ok(Ok(Response::Status(s))) = self.call_as("reader", *i, None, Request::Status).await {
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
            match self.call_as("writer", node, None, body.clone()).await {
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

    pub(crate) async fn stop_all(&mut self) {
        for n in self.nodes.values_mut() {
            n.stop().await;
        }
    }
}

/// Elections in a few hundred milliseconds.
pub(crate) fn fast_raft() -> RaftConfig {
    RaftConfig { election_timeout_ms: 400, heartbeat_ms: 50, ..RaftConfig::default() }
}

pub(crate) fn put(k: &str, v: &str) -> Request {
    Request::Put { key: k.into(), value: v.into() }
}
