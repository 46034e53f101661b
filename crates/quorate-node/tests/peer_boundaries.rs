//! The node's boundaries against peers and stalls, on real `quorate` processes on 127.0.0.1
//! (RocksDB, QUIC with mutual TLS, certificates from a dev CA held by the test):
//!
//! * peers are members: a node certificate of the cluster is not enough to force an
//!   election, stream snapshot chunks or halt a node with hash samples;
//! * snapshot transfers: partial files do not survive a restart, a snapshot over the staging
//!   limit is refused, a deposed leader stops streaming;
//! * certificate revocation lists cut a revoked client off, and a certificate reload refuses an
//!   expired certificate and keeps the old one;
//! * the consensus driver keeps its heartbeats going while the apply thread is slow or a member
//!   address takes seconds to resolve, and the apply thread does not wait for name resolution;
//! * a slow read does not hold up the apply of writes, nor a snapshot being written the reads
//!   and writes; a node that stops or crashes while writing one leaves no partial file.

#[path = "support/procs.rs"]
mod procs;

#[path = "support/inproc.rs"]
mod inproc;

use inproc::node_config;
use procs::{Nodes, free_ports};
use quorate_api::{ClientRequest, ClientResponse, HashSample, HashSamples, NodeMessage, Request, SnapshotChunk};
use quorate_core::{Message, MessageBody, RequestVote};
use quorate_log::{Configuration, EntryId, LogIndex, NodeId, SnapshotMeta, Term};
use quorate_node::config::{LimitsConfig, NodeConfig};
use quorate_telemetry::http::get_blocking;
use quorate_telemetry::names as n;
use quorate_transport::dev_certs::{self, DevCerts, Validity};
use quorate_transport::{
    Client as RawClient, ClientOptions, ClusterId, Credentials, Identity, Principal, Role, TlsPaths, Transport,
    TransportConfig,
};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const BIN: &str = env!("CARGO_BIN_EXE_quorate");
/// Every wait of these tests is bounded by this.
const DEADLINE: Duration = Duration::from_secs(45);

fn nid(n: u64) -> NodeId {
    NodeId::new(n).expect("non-zero")
}

fn free_tcp() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr")
}

/// Polls `f` every 50 ms until it returns `Some`, or fails after [`DEADLINE`] with `what`.
async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A scrape of one node's `/metrics`.
struct Scrape(String);

impl Scrape {
    fn value(&self, series: &str) -> Option<f64> {
        self.0.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
    }

    fn or_zero(&self, series: &str) -> f64 {
        self.value(series).unwrap_or(0.0)
    }
}

/// A cluster of `quorate` processes whose certificates come from a CA the test holds.
struct Cluster {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    cluster: ClusterId,
    certs: DevCerts,
    /// Configurations by node id (members and spares).
    configs: Vec<NodeConfig>,
    metrics: Vec<SocketAddr>,
    nodes: Nodes,
    /// Which child of `nodes` runs node `id` (`None`: not started).
    child: Vec<Option<usize>>,
}

/// Client certificates every cluster gets.
const CLIENTS: &[(&str, Role)] = &[("admin", Role::Admin), ("writer", Role::Write), ("mallory", Role::Write)];

impl Cluster {
    /// [`Cluster::new`], then every member started.
    fn start(members: u64, spares: u64, tweak: impl Fn(&mut NodeConfig)) -> Cluster {
        let mut c = Cluster::new(members, spares, tweak);
        for i in 1..=members {
            c.spawn(i);
        }
        c
    }

    /// Certificates for nodes `1..=members + spares` and their configurations (members
    /// bootstrap, spares join; `tweak` adjusts each); nothing started.
    fn new(members: u64, spares: u64, tweak: impl Fn(&mut NodeConfig)) -> Cluster {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let cluster = ClusterId::new("bounds").unwrap();
        let all = members + spares;
        let ids: Vec<NodeId> = (1..=all).map(nid).collect();
        let clients: Vec<(Principal, Role)> = CLIENTS.iter().map(|(p, r)| (Principal::new(p).unwrap(), *r)).collect();
        let certs = dev_certs::generate(&dir.join("certs"), &cluster, &ids, &clients).expect("dev certs");
        let base = free_ports(all as u16);
        let addr = |i: u64| SocketAddr::from(([127, 0, 0, 1], base + (i - 1) as u16));
        let peers: std::collections::BTreeMap<u64, String> = (1..=members).map(|i| (i, addr(i).to_string())).collect();
        let metrics: Vec<SocketAddr> = (1..=all).map(|_| free_tcp()).collect();
        let configs: Vec<NodeConfig> = (1..=all)
            .map(|i| {
                let paths = &certs.nodes[&nid(i)];
                let mut c = NodeConfig {
                    join: i > members,
                    metrics_listen: Some(metrics[(i - 1) as usize]),
                    // Every node lists the members (a joining node answers whichever leader
                    // adds it: it must know its address).
                    peers: peers.clone(),
                    limits: LimitsConfig { free_space_floor_mb: 0, danger_failpoints: true, ..LimitsConfig::default() },
                    ..node_config(i, &cluster.to_string(), addr(i), dir.join(format!("n{i}")), paths)
                };
                tweak(&mut c);
                c
            })
            .collect();
        Cluster {
            _tmp: tmp,
            dir,
            cluster,
            certs,
            configs,
            metrics,
            nodes: Nodes(Vec::new()),
            child: vec![None; all as usize],
        }
    }

    fn config(&self, id: u64) -> &NodeConfig {
        &self.configs[(id - 1) as usize]
    }

    fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.dir.join(format!("node-{id}.log"))).unwrap_or_default()
    }

    /// Writes node `id`'s configuration and starts its process.
    fn spawn(&mut self, id: u64) {
        let config = self.config(id);
        let path = self.dir.join(format!("node-{id}.toml"));
        std::fs::write(&path, config.to_toml().expect("toml")).expect("config file");
        let log = std::fs::File::create(self.dir.join(format!("node-{id}.log"))).expect("log file");
        let child = Command::new(BIN)
            .args(["node", "start", "--config"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn node");
        self.nodes.0.push(child);
        self.child[(id - 1) as usize] = Some(self.nodes.0.len() - 1);
    }

    /// Kills node `id` (SIGKILL) and waits for it.
    fn kill(&mut self, id: u64) {
        if let Some(i) = self.child[(id - 1) as usize].take() {
            let _ = self.nodes.0[i].kill();
            let _ = self.nodes.0[i].wait();
        }
    }

    /// Waits, up to [`DEADLINE`], for node `id` to exit by itself; returns how long it took.
    fn exited(&mut self, id: u64) -> Duration {
        let i = self.child[(id - 1) as usize].take().expect("node running");
        let child = &mut self.nodes.0[i];
        let started = Instant::now();
        loop {
            if child.try_wait().expect("wait").is_some() {
                return started.elapsed();
            }
            assert!(started.elapsed() < DEADLINE, "node {id} did not exit within {DEADLINE:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops node `id` as an operator would (SIGTERM) and waits for it to exit, up to
    /// [`DEADLINE`]; returns how long it took.
    fn stop(&mut self, id: u64) -> Duration {
        let i = self.child[(id - 1) as usize].take().expect("node running");
        let child = &mut self.nodes.0[i];
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        let started = Instant::now();
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        loop {
            if child.try_wait().expect("wait").is_some() {
                return started.elapsed();
            }
            assert!(started.elapsed() < DEADLINE, "node {id} did not stop within {DEADLINE:?} of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether node `id`'s process is still running.
    fn running(&mut self, id: u64) -> bool {
        match self.child[(id - 1) as usize] {
            Some(i) => matches!(self.nodes.0[i].try_wait(), Ok(None)),
            None => false,
        }
    }

    fn scrape(&self, id: u64) -> Option<Scrape> {
        let addr = self.metrics[(id - 1) as usize];
        let (code, body) = get_blocking(addr, "/metrics", Duration::from_secs(5), 8 << 20).ok()?;
        (code == 200).then_some(Scrape(body))
    }

    /// Writes node `id`'s failpoint control file (the node reads it within 100 ms).
    fn failpoints(&self, id: u64, text: &str) {
        let data = &self.config(id).data_dir;
        let tmp = data.join("failpoints.toml.tmp");
        std::fs::write(&tmp, text).expect("failpoints");
        std::fs::rename(&tmp, data.join("failpoints.toml")).expect("failpoints");
    }

    /// Waits until node `id` logged that it applied failpoint settings containing `needle`.
    async fn failpoints_applied(&self, id: u64, needle: &str) {
        eventually(&format!("node {id} to apply failpoints {needle}"), async || {
            self.log(id).lines().any(|l| l.contains("failpoints set") && l.contains(needle)).then_some(())
        })
        .await;
    }

    fn client_paths(&self, name: &str) -> TlsPaths {
        self.certs.clients[&Principal::new(name).unwrap()].clone()
    }

    fn client(&self, name: &str, members: &[u64]) -> quorate_client::Client {
        let members = members.iter().map(|&i| (nid(i), self.config(i).listen)).collect();
        let mut config = quorate_client::ClientConfig::new(self.cluster.clone(), members, self.client_paths(name));
        config.seed = Some(7);
        config.request_timeout = Duration::from_secs(15);
        config.total_timeout = Duration::from_secs(60);
        quorate_client::Client::new(config).expect("client")
    }

    /// The leader every member in `members` agrees on, and its term.
    async fn leader(&self, members: &[u64]) -> (u64, Term) {
        let client = self.client("admin", members);
        let found = eventually("a leader every member agrees on", async || {
            let mut seen = Vec::new();
            for &i in members {
                let s = client.status(nid(i)).await.ok()?;
                seen.push((s.leader?, s.term));
            }
            let (l, t) = seen[0];
            seen.iter().all(|x| *x == (l, t)).then_some((l.get(), t))
        })
        .await;
        client.close();
        found
    }

    /// Node `id`'s term and leader as it reports them.
    async fn view(&self, id: u64) -> (Term, Option<NodeId>) {
        let client = self.client("admin", &[id]);
        let s = client.status(nid(id)).await.expect("status");
        client.close();
        (s.term, s.leader)
    }
}

/// A transport that holds node `id`'s certificate (and not its process): what a removed node,
/// or a stolen node key, can send.
async fn impostor(c: &Cluster, id: u64) -> (Transport<NodeMessage>, quorate_transport::Inbox<NodeMessage>) {
    let creds = Arc::new(Credentials::load(c.certs.nodes[&nid(id)].clone()).expect("creds"));
    let config = TransportConfig::new(c.cluster.clone(), nid(id), "127.0.0.1:0".parse().unwrap());
    Transport::bind(config, creds).await.expect("bind")
}

fn raft(from: u64, to: u64, term: Term, body: MessageBody) -> NodeMessage {
    NodeMessage::Raft(Message { from: nid(from), to: nid(to), term, body })
}

fn refused(m: &Scrape, reason: &str) -> f64 {
    m.or_zero(&format!("{}{{reason=\"{reason}\"}}", n::PEER_MESSAGES_REFUSED_TOTAL))
}

/// `per_task` puts from each of 16 concurrent tasks.
async fn write_many(client: &Arc<quorate_client::Client>, tag: &str, per_task: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..16 {
        let (w, tag) = (client.clone(), tag.to_string());
        tasks.spawn(async move {
            for i in 0..per_task {
                w.put(format!("{tag}-{t}-{i}"), "v").await.expect("put");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("writer task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_certificate_is_not_membership() {
    let mut c = Cluster::start(3, 0, |cfg| cfg.telemetry.halt_on_invariant_violation = true);
    let (leader, _) = c.leader(&[1, 2, 3]).await;
    let writer = Arc::new(c.client("writer", &[1, 2, 3]));

    // A member that is not the leader cannot hand leadership to anyone.
    let mut others = (1..=3).filter(|&i| i != leader);
    let (attacker, follower) = (others.next().unwrap(), others.next().unwrap());
    let (term, _) = c.view(follower).await;
    let (t, _inbox) = impostor(&c, attacker).await;
    t.add_peer(nid(follower), c.config(follower).listen);
    t.try_send(nid(follower), raft(attacker, follower, Term(term.0 + 5), MessageBody::TimeoutNow)).unwrap();
    eventually("the follower to refuse a TimeoutNow not from its leader", async || {
        (refused(&c.scrape(follower)?, "not_leader") >= 1.0).then_some(())
    })
    .await;
    assert_eq!(c.view(follower).await, (term, Some(nid(leader))), "no election was forced");
    drop(t);

    // The attacker is removed (and stopped); it keeps its certificate.
    let admin = c.client("admin", &[leader, follower]);
    admin.member_remove(nid(attacker)).await.expect("remove a node");
    c.kill(attacker);
    let (leader, term) = c.leader(&[leader, follower]).await;
    let follower = if leader == follower { 6 - leader - attacker } else { follower };
    // A full applied-entries hash window that the removed node never saw.
    write_many(&writer, "w", 70).await;
    let m = eventually("a hash sample on the follower", async || {
        let m = c.scrape(follower)?;
        m.value(n::APPLIED_HASH_INDEX).is_some_and(|i| i >= 1024.0).then_some(m)
    })
    .await;
    let index = m.value(n::APPLIED_HASH_INDEX).expect("a hash sample") as u64;
    let refused_before = refused(&m, "not_member");

    let (t, _inbox) = impostor(&c, attacker).await;
    t.add_peer(nid(follower), c.config(follower).listen);
    let high = Term(term.0 + 10);
    let far = EntryId::new(Term(term.0 + 9), LogIndex(1 << 40));
    let attacks = [
        raft(attacker, follower, high, MessageBody::TimeoutNow),
        raft(
            attacker,
            follower,
            high,
            MessageBody::RequestVote(RequestVote { pre_vote: false, last: far, transfer: true }),
        ),
        NodeMessage::HashSamples(HashSamples { samples: vec![HashSample { index, hash: 0xbad }] }),
    ];
    let sent = attacks.len() + 1;
    for a in attacks {
        t.try_send(nid(follower), a).unwrap();
    }
    let meta = SnapshotMeta { last: far, config: Configuration::with_voters([nid(attacker)]).unwrap() };
    let chunk = SnapshotChunk { term: high, meta, offset: 0, total: 1 << 30, data: vec![0; 1024] };
    t.try_send_snapshot(nid(follower), NodeMessage::SnapshotChunk(chunk)).unwrap();
    eventually("the follower to refuse every message of the removed node", async || {
        (refused(&c.scrape(follower)?, "not_member") >= refused_before + sent as f64).then_some(())
    })
    .await;
    assert!(c.running(follower), "the follower halted:\n{}", c.log(follower));
    assert_eq!(c.view(follower).await, (term, Some(nid(leader))), "no election was forced");
    assert_eq!(c.view(leader).await, (term, Some(nid(leader))));
    let m = c.scrape(follower).expect("scrape");
    let series = format!("{}{{invariant=\"{}\"}}", n::INVARIANT_VIOLATIONS_TOTAL, n::invariant::CROSS_REPLICA_HASH);
    assert_eq!(m.value(&series), Some(0.0), "the removed node's samples were compared");
    let staged: Vec<_> = std::fs::read_dir(c.config(follower).data_dir.join("staging")).unwrap().flatten().collect();
    assert!(staged.is_empty(), "the removed node's chunk was staged: {staged:?}");
    // And the cluster still works.
    writer.put("after", "ok").await.expect("a write after the attacks");
    admin.close();
    writer.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_clients_are_cut_off_and_a_bad_certificate_is_not_loaded() {
    let crl = Path::new("revoked.crl");
    let mut c = Cluster::new(3, 0, |cfg| cfg.tls.crls = vec![cfg.tls.ca.with_file_name(crl)]);
    let crl = c.dir.join("certs").join(crl);
    c.certs.authority.revocation_list(&[], &crl).expect("empty list");
    for i in 1..=3 {
        c.spawn(i);
    }
    let (leader, _) = c.leader(&[1, 2, 3]).await;
    let leader_addr = c.config(leader).listen;
    let mallory_creds = Credentials::load(c.client_paths("mallory")).unwrap();
    let options = ClientOptions::default();
    let mallory = RawClient::<NodeMessage>::connect(&mallory_creds, nid(leader), leader_addr, options.clone())
        .await
        .expect("mallory connects");
    let put = |id: u64, key: &str| {
        NodeMessage::Request(ClientRequest {
            id,
            session: None,
            body: Request::Put { key: key.into(), value: b"v".to_vec() },
        })
    };
    match mallory.request(&put(1, "m")).await.expect("mallory writes") {
        NodeMessage::Response(ClientResponse { result, .. }) => assert!(result.is_ok(), "{result:?}"),
        other => panic!("unexpected {other:?}"),
    }

    // Mallory's certificate is revoked: the nodes pick up the new list on their own.
    let mallory_cert = c.client_paths("mallory").cert;
    c.certs.authority.revocation_list(&[&mallory_cert], &crl).expect("list");
    eventually("mallory's open connection to be closed", async || {
        mallory.request(&put(2, "m2")).await.is_err().then_some(())
    })
    .await;
    // (TLS 1.3: the client may finish its handshake before the node refuses its certificate.)
    if let Ok(again) =
        RawClient::<NodeMessage>::connect(&mallory_creds, nid(leader), leader_addr, options.clone()).await
    {
        assert!(again.request(&put(3, "m3")).await.is_err(), "a revoked certificate is served");
    }
    assert!(c.log(leader).contains("recheck"), "no audit event for the closed connection");
    let writer = c.client("writer", &[1, 2, 3]);
    writer.put("honest", "yes").await.expect("an unrevoked client still writes");

    // Node 1's certificate is replaced by an expired one: the reload is refused, counted, and
    // node 1 keeps serving with the certificate it has.
    let me = Identity::peer(c.cluster.clone(), nid(1));
    let day = Duration::from_secs(86_400);
    let now = SystemTime::now();
    let expired = Validity { not_before: now - 2 * day, not_after: now - day };
    c.certs.authority.issue(&me, expired, &c.dir.join("certs"), "node-1", &c.certs.ca).expect("expired cert");
    eventually("node 1 to refuse the expired certificate", async || {
        (c.scrape(1)?.value(n::TLS_RELOAD_FAILURES_TOTAL)? >= 1.0).then_some(())
    })
    .await;
    let writer_creds = Credentials::load(c.client_paths("writer")).unwrap();
    let fresh = RawClient::<NodeMessage>::connect(&writer_creds, nid(1), c.config(1).listen, options).await;
    assert!(fresh.is_ok(), "node 1 serves an expired certificate: {:?}", fresh.err());
    assert!(c.log(1).contains("tls_reload"), "no log line for the refused reload");
    writer.close();
}

/// Connections of the write flood: with 64 requests each, twice as many writes in flight as
/// the channel from the driver to the apply thread holds (256 messages; each write is one
/// there, and each batch of committed entries one more).
const FLOOD_CONNECTIONS: u64 = 8;

/// Writes, as many as the streams allow, for `for_`; returns how many were sent.
async fn flood_writes(c: &Cluster, node: u64, for_: Duration) -> u64 {
    let creds = Credentials::load(c.client_paths("writer")).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    let end = Instant::now() + for_;
    for conn in 0..FLOOD_CONNECTIONS {
        let client = Arc::new(
            RawClient::<NodeMessage>::connect(&creds, nid(node), c.config(node).listen, ClientOptions::default())
                .await
                .expect("connect"),
        );
        for s in 0..64u64 {
            let client = client.clone();
            tasks.spawn(async move {
                let mut sent = 0u64;
                let mut id = (conn << 32) | (s << 16);
                while Instant::now() < end {
                    id += 1;
                    let body = Request::Put { key: format!("flood-{id:x}").into_bytes(), value: vec![1; 16] };
                    let req = NodeMessage::Request(ClientRequest { id, session: None, body });
                    // Answered, refused or timed out: all the same here.
                    let _ = client.request(&req).await;
                    sent += 1;
                }
                sent
            });
        }
    }
    let mut sent = 0;
    while let Some(r) = tasks.join_next().await {
        sent += r.expect("flood task");
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_apply_thread_does_not_stop_the_leaders_heartbeats() {
    let c = Cluster::start(3, 0, |_| {});
    let (leader, term) = c.leader(&[1, 2, 3]).await;
    // The leader's apply thread takes 3 s over every message (as a large scan would), longer
    // than an election timeout; the writes fill its channel from the driver at once.
    c.failpoints(leader, "slow_apply_ms = 3000\n");
    c.failpoints_applied(leader, "slow_apply_ms: 3000").await;
    // Three times the longest election timeout.
    let sent = flood_writes(&c, leader, Duration::from_secs(6)).await;
    c.failpoints(leader, "");
    for id in 1..=3 {
        assert_eq!(c.view(id).await, (term, Some(nid(leader))), "node {id}: an election during the flood");
    }
    assert!(sent >= 8 * 64, "the flood sent {sent} writes");
}

/// Most writes the test below makes while its slow read is served.
const WRITES_DURING_READ_MAX: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_read_does_not_hold_up_writes() {
    let c = Cluster::start(3, 0, |_| {});
    let (leader, term) = c.leader(&[1, 2, 3]).await;
    let writer = Arc::new(c.client("writer", &[leader]));
    writer.put("slow-read", "before").await.expect("put");
    // Every read the leader serves takes 2 s, as a read of many large values would.
    c.failpoints(leader, "slow_read_ms = 2000\n");
    c.failpoints_applied(leader, "slow_read_ms: 2000").await;
    let reader = writer.clone();
    let started = Instant::now();
    let read = tokio::spawn(async move {
        let got = reader.get("slow-read", quorate_api::ReadConsistency::Linearizable).await.expect("slow get");
        (got, started.elapsed())
    });
    // Writes one after another while the read is served: each must be applied and answered
    // while the read is still being served, not after it.
    let mut latencies = Vec::new();
    while !read.is_finished() && latencies.len() < WRITES_DURING_READ_MAX {
        let t = Instant::now();
        writer.put(format!("during-{}", latencies.len()), "v").await.expect("put during the read");
        latencies.push(t.elapsed());
    }
    let (got, took) = read.await.expect("reader task");
    c.failpoints(leader, "");
    assert_eq!(got.kv.expect("the key is there").value, b"before".to_vec());
    assert!(took >= Duration::from_secs(2), "the read took {took:?}: the failpoint did not slow it");
    let longest = latencies.iter().max().copied().unwrap_or_default();
    assert!(
        latencies.len() >= 10 && longest < Duration::from_secs(1),
        "{} writes during a read of {took:?}, the longest took {longest:?}: writes waited for the read",
        latencies.len()
    );
    assert_eq!(c.view(leader).await, (term, Some(nid(leader))), "no election");
    writer.close();
}

/// The snapshot files node `id` is writing (temporary names) and has finished, by name.
fn snapshot_files(c: &Cluster, id: u64) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let dir = c.config(id).data_dir.join("store").join("snapshots");
    let mut names: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect()).unwrap_or_default();
    names.sort();
    names.into_iter().partition(|p| p.extension().is_some_and(|e| e == "tmp"))
}

/// Longest a read or a write may take while the leader writes a snapshot (issue 20: the
/// snapshot was written on the apply thread, and every read and write waited for it).
const DURING_SNAPSHOT_MAX: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_being_written_does_not_hold_up_reads_or_writes() {
    // Every node takes a snapshot every 100 entries.
    let c = Cluster::start(3, 0, snapshotting);
    let (leader, term) = c.leader(&[1, 2, 3]).await;
    // The leader's snapshots are held, their data written, until the failpoint is cleared.
    c.failpoints(leader, "slow_snapshot_ms = 60000\n");
    c.failpoints_applied(leader, "slow_snapshot_ms: 60000").await;
    let taken_before = c.log(leader).matches("snapshot taken").count();
    let writer = c.client("writer", &[leader]);
    // Writes until the leader is writing a snapshot.
    let mut written = 0;
    while snapshot_files(&c, leader).0.is_empty() {
        assert!(written < 1000, "no snapshot started after {written} writes");
        tokio::time::timeout(DURING_SNAPSHOT_MAX, writer.put(format!("before-{written}"), "v"))
            .await
            .unwrap_or_else(|_| {
                panic!("write {written} took more than {DURING_SNAPSHOT_MAX:?}: held up by the snapshot")
            })
            .expect("put");
        written += 1;
    }
    // While it is held: linearizable reads and writes are served, each promptly.
    for i in 0..20 {
        let got = tokio::time::timeout(
            DURING_SNAPSHOT_MAX,
            writer.get("before-0", quorate_api::ReadConsistency::Linearizable),
        )
        .await
        .unwrap_or_else(|_| panic!("a linearizable get took more than {DURING_SNAPSHOT_MAX:?} during the snapshot"))
        .expect("get");
        assert_eq!(got.kv.expect("the key is there").value, b"v".to_vec());
        tokio::time::timeout(DURING_SNAPSHOT_MAX, writer.put(format!("held-{i}"), "v"))
            .await
            .unwrap_or_else(|_| panic!("a write took more than {DURING_SNAPSHOT_MAX:?} during the snapshot"))
            .expect("put");
    }
    // ... and all of it while the snapshot was still being written.
    let (writing, _) = snapshot_files(&c, leader);
    assert_eq!(writing.len(), 1, "the held snapshot is still being written: {writing:?}");
    assert_eq!(c.log(leader).matches("snapshot taken").count(), taken_before, "no snapshot reported while held");
    // Released: it is finished and reported, and holds the state at its index, none of the
    // writes applied after it.
    c.failpoints(leader, "");
    eventually("the held snapshot to be reported", async || {
        (c.log(leader).matches("snapshot taken").count() > taken_before).then_some(())
    })
    .await;
    let (writing, finished) = snapshot_files(&c, leader);
    assert!(writing.is_empty(), "no temporary file left: {writing:?}");
    let newest = finished.last().expect("a snapshot file");
    let bytes = std::fs::read(newest).expect("snapshot file");
    let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"before-0"), "the snapshot holds a write applied before its index");
    assert!(!has(b"held-"), "the snapshot holds a write applied after its index");
    assert_eq!(c.view(leader).await, (term, Some(nid(leader))), "no election");
    writer.close();
}

/// Longest a node writing a (held) snapshot may take to stop: far below the hold.
const STOP_MAX: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_or_crashes_while_writing_a_snapshot_leaves_no_partial_file() {
    let mut c = Cluster::start(3, 0, snapshotting);
    let (leader, _) = c.leader(&[1, 2, 3]).await;
    let follower = if leader == 1 { 2 } else { 1 };
    let writer = c.client("writer", &[1, 2, 3]);
    let mut written = 0;
    // Writes until `id` is writing a snapshot (held by the failpoint).
    async fn until_writing(c: &Cluster, writer: &quorate_client::Client, id: u64, written: &mut usize) {
        while snapshot_files(c, id).0.is_empty() {
            assert!(*written < 5000, "node {id} started no snapshot");
            writer.put(format!("k-{written}"), "v").await.expect("put");
            *written += 1;
        }
    }
    // A stop while the snapshot is written cuts it short: prompt, no temporary file, no report.
    c.failpoints(follower, "slow_snapshot_ms = 60000\n");
    c.failpoints_applied(follower, "slow_snapshot_ms: 60000").await;
    until_writing(&c, &writer, follower, &mut written).await;
    let took = c.stop(follower);
    assert!(took < STOP_MAX, "the node took {took:?} to stop while writing a snapshot");
    assert_eq!(snapshot_files(&c, follower).0, Vec::<PathBuf>::new(), "a temporary file is left after a stop");
    assert!(!c.log(follower).contains("snapshot taken"), "the cut snapshot was reported");
    // A crash while the snapshot is written leaves its temporary file, which the next start
    // removes; the node catches up and takes its snapshots again.
    c.spawn(follower);
    c.failpoints_applied(follower, "slow_snapshot_ms: 60000").await;
    until_writing(&c, &writer, follower, &mut written).await;
    c.kill(follower);
    assert_eq!(snapshot_files(&c, follower).0.len(), 1, "the crash left the temporary file");
    c.failpoints(follower, "");
    c.spawn(follower);
    c.failpoints_applied(follower, "slow_snapshot_ms: 0").await;
    eventually("the start to remove the temporary file", async || {
        snapshot_files(&c, follower).0.is_empty().then_some(())
    })
    .await;
    for _ in 0..200 {
        writer.put(format!("k-{written}"), "v").await.expect("put");
        written += 1;
    }
    eventually("the restarted node to take a snapshot", async || {
        c.log(follower).contains("snapshot taken").then_some(())
    })
    .await;
    let reader = c.client("writer", &[follower]);
    let last = format!("k-{}", written - 1);
    eventually("the restarted node to apply the last write", async || {
        let got = reader.get(&last, quorate_api::ReadConsistency::Stale).await.ok()?;
        got.kv.is_some().then_some(())
    })
    .await;
    reader.close();
    // An apply thread that dies (a panic) while a snapshot is written cuts it short too: the
    // node stops promptly with the thread's reason, not once the snapshot is finished (the
    // read pool was dropped without being stopped, and its snapshot thread held on).
    c.failpoints(follower, "slow_snapshot_ms = 60000\n");
    c.failpoints_applied(follower, "slow_snapshot_ms: 60000").await;
    until_writing(&c, &writer, follower, &mut written).await;
    c.failpoints(follower, "slow_snapshot_ms = 60000\nkill_apply_thread = true\n");
    let took = c.exited(follower);
    let log = c.log(follower);
    assert!(log.contains("failpoint: the apply thread was killed"), "{log}");
    assert!(took < STOP_MAX, "the node took {took:?} to stop after its apply thread died while writing a snapshot");
    assert_eq!(snapshot_files(&c, follower).0, Vec::<PathBuf>::new(), "a temporary file is left");
    writer.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_name_resolution_stalls_neither_the_driver_nor_the_apply_thread() {
    let c = Cluster::start(3, 1, |_| {});
    let (leader, term) = c.leader(&[1, 2, 3]).await;
    let followers: Vec<u64> = (1..=3).filter(|&i| i != leader).collect();
    // The leader resolves the new member's address for 3 s (three election timeouts); the
    // followers, when they apply it, for 60 s.
    c.failpoints(leader, "slow_resolve_ms = 3000\n");
    for &f in &followers {
        c.failpoints(f, "slow_resolve_ms = 60000\n");
    }
    c.failpoints_applied(leader, "slow_resolve_ms: 3000").await;
    for &f in &followers {
        c.failpoints_applied(f, "slow_resolve_ms: 60000").await;
    }
    let admin = c.client("admin", &[1, 2, 3]);
    // By name: the leader resolves it to check the add, and every member's transport resolves
    // it again before each dial of node 4 (slowly, here), off the driver and the apply thread.
    let by_name: quorate_transport::PeerAddr =
        format!("localhost:{}", c.config(4).listen.port()).parse().expect("a host name");
    admin.member_add(nid(4), by_name.clone()).await.expect("member add");
    for id in 1..=3 {
        assert_eq!(c.view(id).await, (term, Some(nid(leader))), "node {id}: an election during the add");
    }
    // The followers applied the new address and go on applying.
    let writer = c.client("writer", &[1, 2, 3]);
    writer.put("after-add", "1").await.expect("put");
    for &f in &followers {
        let reader = c.client("writer", &[f]);
        eventually(&format!("node {f} to apply the write after the add"), async || {
            let got = reader.get("after-add", quorate_api::ReadConsistency::Stale).await.ok()?;
            got.kv.is_some().then_some(())
        })
        .await;
        reader.close();
    }
    // Every member recorded the name, not what it resolved to.
    let members = admin.member_list().await.expect("member list");
    let four = members.iter().find(|m| m.id == nid(4)).expect("node 4 is a member");
    assert_eq!(four.addr.as_deref(), Some(by_name.to_string().as_str()));
    admin.close();
    writer.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_snapshot_transfer_does_not_survive_a_restart() {
    let mut c = Cluster::new(1, 0, |_| {});
    // What a node killed in the middle of receiving a snapshot leaves behind.
    let stale = c.config(1).data_dir.join("staging").join("incoming-9-1.part");
    std::fs::create_dir_all(stale.parent().unwrap()).unwrap();
    std::fs::write(&stale, vec![0xab; 4096]).unwrap();
    c.spawn(1);
    c.leader(&[1]).await;
    assert!(!stale.exists(), "a partial snapshot file survived the restart");
}

/// Raft settings under which a new member must be sent a snapshot: the log is compacted every
/// 100 entries down to 10.
fn snapshotting(cfg: &mut NodeConfig) {
    cfg.raft.snapshot_entries = 100;
    cfg.raft.compaction_tail_entries = 10;
}

/// Adds node `id` as a learner, retrying while the leader refuses a change it could not
/// commit yet (right after a write flood, a follower may not have been heard from recently).
async fn add_member(admin: &quorate_client::Client, id: u64, addr: SocketAddr) {
    eventually("the member add", async || match admin.member_add(nid(id), addr).await {
        Ok(_) => Some(()),
        Err(e) => {
            eprintln!("member add: {e:?}; retrying");
            None
        }
    })
    .await;
}

/// 300 writes of 8 KiB (2.4 MB of state), and the leader's snapshot past them.
async fn fill_and_compact(c: &Cluster, members: &[u64]) -> (u64, LogIndex) {
    let writer = Arc::new(c.client("writer", members));
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..10 {
        let w = writer.clone();
        tasks.spawn(async move {
            for i in 0..30 {
                w.put(format!("big-{t}-{i}"), vec![b'x'; 8 * 1024]).await.expect("put");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("writer task");
    }
    writer.close();
    let (leader, _) = c.leader(members).await;
    let admin = c.client("admin", members);
    let snapshot = eventually("the leader's snapshot past the writes", async || {
        let s = admin.status(nid(leader)).await.ok()?;
        (s.snapshot_index.0 >= 300).then_some(s.snapshot_index)
    })
    .await;
    admin.close();
    (leader, snapshot)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_over_the_staging_limit_is_refused() {
    let c = Cluster::start(3, 1, |cfg| {
        snapshotting(cfg);
        if cfg.id == 4 {
            cfg.limits.snapshot_staging_mb = 1;
        }
    });
    let (_, snapshot) = fill_and_compact(&c, &[1, 2, 3]).await;
    let mut c = c;
    c.spawn(4);
    let admin = c.client("admin", &[1, 2, 3]);
    add_member(&admin, 4, c.config(4).listen).await;
    // The leader can only send node 4 a snapshot of 2.4 MB; node 4 takes at most 1 MiB.
    eventually("node 4 to refuse the snapshot", async || {
        let m = c.scrape(4)?;
        (m.or_zero(&format!("{}{{reason=\"snapshot_too_large\"}}", n::PEER_MESSAGES_REFUSED_TOTAL)) >= 1.0)
            .then_some(())
    })
    .await;
    let s = c.client("admin", &[4]).status(nid(4)).await.expect("status");
    assert!(s.applied < snapshot, "node 4 installed a snapshot over its limit: {s:?}");
    let staged: Vec<_> = std::fs::read_dir(c.config(4).data_dir.join("staging")).unwrap().flatten().collect();
    assert!(staged.is_empty(), "a refused snapshot left files: {staged:?}");
    admin.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_stops_streaming_its_snapshot() {
    // 1 MiB/s: the 2.4 MB snapshot takes over two seconds to stream.
    let c = Cluster::start(3, 1, |cfg| {
        snapshotting(cfg);
        cfg.limits.snapshot_rate_mb_per_sec = 1;
    });
    let (leader, snapshot) = fill_and_compact(&c, &[1, 2, 3]).await;
    let mut c = c;
    c.spawn(4);
    let admin = c.client("admin", &[1, 2, 3]);
    add_member(&admin, 4, c.config(4).listen).await;
    eventually("node 4 to start receiving the snapshot", async || {
        let staged = std::fs::read_dir(c.config(4).data_dir.join("staging")).ok()?;
        (staged.flatten().count() > 0).then_some(())
    })
    .await;
    // Leadership moves in the middle of the stream.
    let next = (1..=3).find(|&i| i != leader).unwrap();
    admin.leader_transfer(Some(nid(next))).await.expect("leader transfer");
    eventually("the deposed leader to abort its stream", async || {
        c.log(leader).contains("snapshot stream aborted").then_some(())
    })
    .await;
    // The new leader's transfer completes.
    let probe = c.client("admin", &[4]);
    eventually("node 4 to install a snapshot", async || {
        let s = probe.status(nid(4)).await.ok()?;
        (s.applied >= snapshot).then_some(())
    })
    .await;
    probe.close();
    admin.close();
}
