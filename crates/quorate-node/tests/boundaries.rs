//! Boundaries of the request and apply path on real `quorate` processes (QUIC with mutual TLS,
//! RocksDB, fsync), three nodes from `quorate certs dev` with the client certificates `alice`
//! and `bob` (write), `reader` and `slow` (read) — the attacks of issue 17, each a test that
//! failed before its fix:
//!
//! * `one_request_cannot_stop_the_cluster`: 1 MB under `big`, then one session transaction
//!   `put x y` + 17 × `get big`. Every replica used to stop (the session record was over the
//!   state machine's value limit), at every restart. Now the transaction is answered with an
//!   error, identically everywhere, changes nothing, and every node goes on — and restarts.
//! * `sessions_belong_to_the_principal_that_opened_them`: bob probes session ids below his own
//!   and takes over alice's session; alice's next write used to be answered with bob's cached
//!   result and never applied. Now ids are random and a foreign session is `SessionExpired`;
//!   sequence jumps are refused; audit events name the session and a cached answer.
//! * `a_client_that_does_not_read_its_answers_cannot_shut_others_out`: a read-role client on
//!   many connections with tiny receive windows sends gets of a 64 KiB value and never reads
//!   the answers. It used to hold the node-wide request slots (everyone else shed with
//!   `QueueFull`, forever). Now it holds only its own principal's slots, for at most the
//!   response write timeout: each wave goes on until the principal is refused for its held
//!   requests, and meanwhile a well-behaved client is served (every request, and at least a
//!   floor of them in every window). The share of goodput it keeps is a timing, judged by
//!   `cargo xtask attack` (`slow-reader`), not here.
//! * `large_results_are_paged_not_dropped`: a put of exactly `VALUE_BYTES_MAX` is accepted; a
//!   scan and a read-only transaction over 12 MiB of values (more than a message holds) are
//!   answered in pages (the whole answer used to be computed, then dropped by the transport);
//!   a writing transaction whose results would be too large is refused and changes nothing; a
//!   page read after the state changed says so.
//!
//! * `a_transaction_whose_results_cannot_fit_is_refused_before_it_is_logged`: the same
//!   transaction (without a session) used to be logged and applied by every replica — each
//!   reading 17 MB to find the results too large — before its error; the leader now bounds
//!   its results from the stored sizes off the driver and refuses it unlogged (the commit
//!   index does not move), charging what it read to the principal's answer rate.
//! * `a_principal_sent_more_than_its_answer_rate_is_shed_and_no_one_else_is`: a read-role
//!   client reading a 1 MiB value in a loop was never refused (answer bytes were held, not
//!   rated); it is now refused `response_bytes` for the time its debt takes, and another
//!   principal is served meanwhile.
//!
//! * `replays_of_applied_writes_are_answered_without_a_log_write`: every replay of a session
//!   write (same session, same sequence number, or an older one) used to be proposed,
//!   replicated and written to every replica's log before apply answered it from the session
//!   table (`replayed-requests` kept 77–90 % of a well-behaved client's goodput). 1,100
//!   replays of applied writes, on the leader and on a follower, now move no index, get the
//!   original answer (or apply's refusal of an older number), are counted and audited as
//!   answered from the session cache; another principal's writes in the session and a replay
//!   racing its not-yet-applied original still go through the log.
//!
//! Every wait is bounded by a deadline; every node process is killed on every path.

use quorate_api::{
    ApiError, ClientRequest, NodeMessage, ReadConsistency, Request, Response, Sequenced, SessionId, Txn, TxnOp,
    TxnResult, limits,
};
use quorate_log::NodeId;
use quorate_node::config::NodeConfig;
use quorate_transport::{Client, ClientOptions, Credentials, TlsPaths};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[path = "support/procs.rs"]
mod procs;

#[path = "support/cluster.rs"]
mod cluster;
use cluster::Slots;

/// Longest wait for a cluster to elect a leader, finalize, answer, or for a node to start.
const DEADLINE: Duration = Duration::from_secs(60);
/// Longest wait for one answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
const CLUSTER: &str = "bnd";
const CLIENTS: &str = "alice:write,bob:write,reader:read,slow:read,checker:admin";

fn nid(n: u64) -> NodeId {
    NodeId::new(n).expect("non-zero")
}

/// Three node processes; each is killed when the cluster is dropped.
struct Cluster {
    // First: the nodes are killed before their directory is removed.
    nodes: Slots,
    _tmp: tempfile::TempDir,
    setup: cluster::Cluster,
    addrs: Vec<SocketAddr>,
    metrics: Vec<SocketAddr>,
    next_id: AtomicU64,
}

impl Cluster {
    /// Certificates and configurations from `quorate certs dev`, each configuration edited by
    /// `edit`, and three nodes started (their logs in `node-N.log`, audit events included).
    fn start(edit: impl Fn(&mut NodeConfig)) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cluster");
        let base = procs::free_base_port();
        let setup = cluster::Cluster::create_as(dir, base, CLUSTER, &["--clients", CLIENTS]);
        let configs = setup.edit_configs(|_, config| {
            config.raft.election_timeout_ms = 600;
            config.raft.heartbeat_ms = 60;
            config.limits.free_space_floor_mb = 0;
            config.telemetry.log_filter = "warn,quorate::audit=info".into();
            // Every client here connects from 127.0.0.1, most calls on a connection of their
            // own: one source for the handshake rate, raised so that only a test of it meets it.
            config.limits.handshakes_per_source_per_sec = 100_000;
            config.limits.handshake_burst_per_source = 100_000;
            let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
            config.metrics_listen = Some(metrics);
            edit(config);
        });
        let addrs = configs.iter().map(|c| c.listen).collect();
        let metrics = configs.iter().map(|c| c.metrics_listen.expect("set above")).collect();
        Cluster { nodes: Slots::start(&setup), _tmp: tmp, setup, addrs, metrics, next_id: AtomicU64::new(1) }
    }

    /// Starts node `id` (again), appending to its log.
    fn spawn(&mut self, id: u64) {
        self.nodes.spawn(&self.setup, id);
    }

    /// Kills node `id` (SIGKILL) and waits for it.
    fn kill(&mut self, id: u64) {
        self.nodes.kill(id);
    }

    /// Node `id`'s log, without terminal colours.
    fn log(&self, id: u64) -> String {
        let raw = self.setup.log(id);
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(ch) = chars.next() {
            if ch == '\u{1b}' {
                // An SGR sequence: ESC [ ... m
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                out.push(ch);
            }
        }
        out
    }

    /// The sum of the samples of node `id`'s `/metrics` whose line starts with `prefix`.
    fn metric(&self, id: u64, prefix: &str) -> f64 {
        let addr = self.metrics[id as usize - 1];
        let body = quorate_telemetry::http::get_blocking(addr, "/metrics", Duration::from_secs(5), 16 << 20)
            .expect("the metrics endpoint answers")
            .1;
        body.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
    }

    /// Panics (with the node's log) if a node process has exited.
    fn assert_running(&mut self) {
        for id in 1..=3u64 {
            if let Some(c) = self.nodes.slot(id).as_mut() {
                let status = c.try_wait().unwrap();
                assert!(status.is_none(), "node {id} exited ({status:?}); its log:\n{}", self.log(id));
            }
        }
    }

    fn credentials(&self, who: &str) -> Credentials {
        let certs = self.setup.dir.join("certs");
        Credentials::load(TlsPaths {
            ca: certs.join("ca.crt"),
            cert: certs.join(format!("client-{who}.crt")),
            key: certs.join(format!("client-{who}.key")),
        })
        .unwrap()
    }

    /// A connection of `who` to node `id`, retried until the deadline.
    async fn connect(&self, who: &str, id: u64) -> Client<NodeMessage> {
        let mut options = ClientOptions::default();
        options.request_timeout = REQUEST_TIMEOUT;
        let creds = self.credentials(who);
        let deadline = Instant::now() + DEADLINE;
        loop {
            match Client::<NodeMessage>::connect(&creds, nid(id), self.addrs[id as usize - 1], options.clone()).await {
                Ok(c) => return c,
                Err(e) => assert!(Instant::now() < deadline, "cannot connect to node {id}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One request on `client`: its result, or `None` for no answer.
    async fn request(
        &self,
        client: &Client<NodeMessage>,
        session: Option<Sequenced>,
        body: Request,
    ) -> Option<Result<Response, ApiError>> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let req = NodeMessage::Request(ClientRequest { id, session, body });
        match tokio::time::timeout(REQUEST_TIMEOUT, client.request(&req)).await {
            Ok(Ok(NodeMessage::Response(r))) => {
                assert_eq!(r.id, id);
                Some(r.result)
            }
            _ => None,
        }
    }

    /// One request of `who` to node `id` on a connection of its own.
    async fn call(
        &self,
        who: &str,
        id: u64,
        session: Option<Sequenced>,
        body: Request,
    ) -> Option<Result<Response, ApiError>> {
        let client = self.connect(who, id).await;
        let r = self.request(&client, session, body).await;
        client.close();
        r
    }

    /// Retries a request while the cluster answers "not now" (an election, catch-up).
    async fn call_ok(&self, who: &str, id: u64, session: Option<Sequenced>, body: Request) -> Response {
        let deadline = Instant::now() + DEADLINE;
        // Requests can hold megabytes: name them by their first bytes only.
        let what: String = format!("{body:?}").chars().take(120).collect();
        loop {
            match self.call(who, id, session, body.clone()).await {
                Some(Ok(r)) => return r,
                Some(Err(e @ ApiError::InvalidRequest(_))) | Some(Err(e @ ApiError::Unauthorized { .. })) => {
                    panic!("{what} refused: {e}")
                }
                other => {
                    let other: String = format!("{other:?}").chars().take(300).collect();
                    assert!(Instant::now() < deadline, "{what} still failing: {other}");
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The leader every node agrees on.
    async fn leader(&self) -> u64 {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let mut seen = Vec::new();
            for id in 1..=3 {
                if let Some(Ok(Response::Status(s))) = self.call("reader", id, None, Request::Status).await {
                    seen.push(s.leader.map(NodeId::get));
                }
            }
            if seen.len() == 3
                && let Some(Some(l)) = seen.first().copied()
                && seen.iter().all(|x| *x == Some(l))
            {
                return l;
            }
            assert!(Instant::now() < deadline, "no leader agreed on: {seen:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every node has applied cluster version 2 (a new cluster finalizes itself).
    async fn wait_finalized(&self) {
        let deadline = Instant::now() + DEADLINE;
        for id in 1..=3 {
            loop {
                if let Some(Ok(Response::Versions(v))) = self.call("reader", id, None, Request::Versions).await
                    && v.cluster_version >= 2
                {
                    break;
                }
                assert!(Instant::now() < deadline, "node {id} never reached cluster version 2");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    async fn open_session(&self, who: &str, leader: u64) -> SessionId {
        match self.call_ok(who, leader, None, Request::OpenSession).await {
            Response::Session(s) => s,
            other => panic!("not a session: {other:?}"),
        }
    }

    /// A linearizable read of `key` on node `id`.
    async fn value(&self, id: u64, key: &str) -> Option<Vec<u8>> {
        let body = Request::Get { key: key.into(), read: ReadConsistency::Linearizable };
        match self.call_ok("reader", id, None, body).await {
            Response::Get { kv, .. } => kv.map(|kv| kv.value),
            other => panic!("not a get: {other:?}"),
        }
    }
}

fn put(key: &str, value: &[u8]) -> Request {
    Request::Put { key: key.into(), value: value.to_vec() }
}

fn seq(session: SessionId, seq: u64) -> Option<Sequenced> {
    Some(Sequenced { session, seq })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_cannot_stop_the_cluster() {
    let mut c = Cluster::start(|_| ());
    let leader = c.leader().await;
    c.wait_finalized().await;
    // 1 MB under `big`, written with a transaction of one put (as the issue did).
    let big = vec![b'b'; 1_000_000];
    let one_put =
        Txn { compare: vec![], success: vec![TxnOp::Put { key: b"big".to_vec(), value: big }], failure: vec![] };
    c.call_ok("alice", leader, None, Request::Txn(one_put)).await;
    // One session transaction: put x y, then 17 gets of big (17 MB of results).
    let session = c.open_session("alice", leader).await;
    let mut ops = vec![TxnOp::Put { key: b"x".to_vec(), value: b"y".to_vec() }];
    ops.extend((0..17).map(|_| TxnOp::Get { key: b"big".to_vec() }));
    let txn = Request::Txn(Txn { compare: vec![], success: ops, failure: vec![] });
    let first = c.call("alice", leader, seq(session, 1), txn.clone()).await;
    let Some(Err(ApiError::InvalidRequest(why))) = &first else {
        panic!("the transaction must get an error result, got {first:?}; leader's log:\n{}", c.log(leader))
    };
    assert!(why.contains("nothing was changed"), "{why}");
    // A retry in the session gets the same answer (applied once, from the session's cache).
    assert_eq!(c.call("alice", leader, seq(session, 1), txn).await, first);
    c.assert_running();
    // Every node went on: the next write in the session commits and every node serves it.
    c.call_ok("alice", leader, seq(session, 2), put("after", b"1")).await;
    for id in 1..=3 {
        assert_eq!(c.value(id, "x").await, None, "node {id}: the refused transaction changed nothing");
        assert_eq!(c.value(id, "after").await.as_deref(), Some(&b"1"[..]), "node {id}");
    }
    c.assert_running();
    // And every node restarts (the entry used to stop them again at every restart).
    for id in 1..=3 {
        c.kill(id);
    }
    for id in 1..=3 {
        c.spawn(id);
    }
    let leader = c.leader().await;
    c.call_ok("alice", leader, None, put("restarted", b"1")).await;
    for id in 1..=3 {
        assert_eq!(c.value(id, "x").await, None, "node {id}");
        assert_eq!(c.value(id, "big").await.map(|v| v.len()), Some(1_000_000), "node {id}");
        assert_eq!(c.value(id, "restarted").await.as_deref(), Some(&b"1"[..]), "node {id}");
    }
    c.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_belong_to_the_principal_that_opened_them() {
    let mut c = Cluster::start(|_| ());
    let leader = c.leader().await;
    c.wait_finalized().await;
    // Alice writes in her session.
    let alice = c.open_session("alice", leader).await;
    c.call_ok("alice", leader, seq(alice, 1), put("k", b"v1")).await;
    // Bob opens his own and probes the ids below it with sequence number 1 and a compare that
    // cannot succeed: any answer but "no such session" finds a session.
    let bob = c.open_session("bob", leader).await;
    let cas = Request::Cas { key: b"never".to_vec(), expected: Some(b"impossible".to_vec()), value: b"x".to_vec() };
    let mut found = Vec::new();
    for id in bob.0.saturating_sub(32)..bob.0 {
        let answer = c.call("bob", leader, seq(SessionId(id), 1), cas.clone()).await;
        if answer != Some(Err(ApiError::SessionExpired)) {
            found.push((id, answer));
        }
    }
    assert!(found.is_empty(), "bob found sessions by probing below his own ({bob:?}): {found:?}");
    // Ids are not log indexes: drawn at random from 64 bits.
    assert!(alice.0 > 1 << 32 && bob.0 > 1 << 32, "guessable session ids: {alice:?} {bob:?}");
    // Even knowing alice's id, bob gets nothing: not her cached result, not her session.
    assert_eq!(c.call("bob", leader, seq(alice, 1), cas).await, Some(Err(ApiError::SessionExpired)));
    let hijack = c.call("bob", leader, seq(alice, 2), put("bobs", b"x")).await;
    assert_eq!(hijack, Some(Err(ApiError::SessionExpired)));
    // Alice's next write is applied (it used to be answered OK with bob's cached result).
    let Response::Put { revision } = c.call_ok("alice", leader, seq(alice, 2), put("k", b"v2")).await else {
        panic!("not a put")
    };
    assert_eq!(c.value(leader, "k").await.as_deref(), Some(&b"v2"[..]), "alice's acknowledged write was lost");
    assert_eq!(c.value(leader, "bobs").await, None);
    // Her retry is answered from the cache, applied once.
    assert_eq!(
        c.call("alice", leader, seq(alice, 2), put("k", b"v2")).await,
        Some(Ok(Response::Put { revision })),
        "a retry gets the original answer"
    );
    // A jump to u64::MAX (which would end the session) is refused; the session goes on.
    let jump = c.call("alice", leader, seq(alice, u64::MAX), put("k", b"jump")).await;
    assert!(matches!(&jump, Some(Err(ApiError::InvalidRequest(why))) if why.contains("past")), "{jump:?}");
    c.call_ok("alice", leader, seq(alice, 3), put("k", b"v3")).await;
    assert_eq!(c.value(leader, "k").await.as_deref(), Some(&b"v3"[..]));
    // Audit events name the session and the answer from the cache.
    let log = c.log(leader);
    let events: Vec<&str> =
        log.lines().filter(|l| l.contains("quorate::audit") && l.contains("client write")).collect();
    let alices = format!("session={}", alice.0);
    assert!(
        events.iter().any(|l| l.contains(&alices) && l.contains("cached=true") && l.contains("principal=alice")),
        "no audit event of alice's cached answer: {events:#?}"
    );
    assert!(
        events.iter().any(|l| l.contains(&alices) && l.contains("principal=bob") && l.contains("session_expired")),
        "no audit event of bob's refused use of alice's session: {events:#?}"
    );
    c.assert_running();
}

/// A raw QUIC connection of `who` whose streams' receive windows are tiny: it sends requests
/// and never reads the answers (what `quorate_transport::Client` would never do). A 64 KiB
/// answer can never be delivered through the 1 KiB stream window; the connection's window
/// (1 MiB) only keeps the small answers (refusals) from blocking the connection as a whole.
async fn stalling_connection(c: &Cluster, who: &str, id: u64) -> (quinn::Endpoint, quinn::Connection) {
    let mut quic = quinn::TransportConfig::default();
    quic.stream_receive_window(quinn::VarInt::from_u32(1024));
    quic.receive_window(quinn::VarInt::from_u32(1 << 20));
    quic.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    let mut config = quinn::ClientConfig::new(c.credentials(who).quic_client_crypto());
    config.transport_config(Arc::new(quic));
    let endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let conn = endpoint.connect_with(config, c.addrs[id as usize - 1], "quorate.invalid").unwrap().await.unwrap();
    (endpoint, conn)
}

/// What the well-behaved client got in one window: requests answered successfully, requests
/// that failed (no answer, or an error, named in `errors`), and the window's length.
struct Window {
    ok: u64,
    failed: u64,
    errors: Vec<String>,
    elapsed: Duration,
}

impl Window {
    fn per_sec(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

/// Sequential gets and puts of `who` on one connection for `duration`.
async fn goodput(c: &Cluster, client: &Client<NodeMessage>, who: &str, duration: Duration) -> Window {
    let started = Instant::now();
    let mut w = Window { ok: 0, failed: 0, errors: Vec::new(), elapsed: Duration::ZERO };
    let mut sent = 0u64;
    while started.elapsed() < duration {
        sent += 1;
        let body = if sent.is_multiple_of(2) {
            put(&format!("{who}-{}", sent % 64), b"v")
        } else {
            Request::Get { key: format!("{who}-{}", sent % 64).into_bytes(), read: ReadConsistency::Linearizable }
        };
        match c.request(client, None, body).await {
            Some(Ok(_)) => w.ok += 1,
            other => {
                w.failed += 1;
                if w.errors.len() < 8 {
                    w.errors.push(format!("{:?}", other.map(|r| r.map(|_| "an answer"))));
                }
            }
        }
    }
    w.elapsed = started.elapsed();
    w
}

/// One wave of the attack: on each of `conns`, gets of the 64 KiB value on new streams, sent
/// and never read, until `stop` is set or `streams_per_connection_max` were opened (a
/// connection may have 64 streams open at once: once that many answers are held, its next
/// stream waits for one to be given up). Returns the streams, kept open and unread.
fn stall_wave(
    c: &Cluster,
    conns: &[quinn::Connection],
    streams_per_connection_max: usize,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinSet<Vec<(quinn::SendStream, quinn::RecvStream)>> {
    let mut tasks = tokio::task::JoinSet::new();
    for conn in conns {
        let conn = conn.clone();
        let mut stop = stop.clone();
        let next_id = c.next_id.fetch_add(streams_per_connection_max as u64, Ordering::Relaxed);
        tasks.spawn(async move {
            let mut streams = Vec::new();
            for i in 0..streams_per_connection_max as u64 {
                if *stop.borrow() {
                    break;
                }
                let opened = tokio::select! {
                    opened = conn.open_bi() => opened,
                    _ = stop.changed() => break,
                };
                let Ok((mut send, recv)) = opened else { break };
                let body = Request::Get { key: b"v64k".to_vec(), read: ReadConsistency::Linearizable };
                let msg = NodeMessage::Request(ClientRequest { id: next_id + i, session: None, body });
                let mut buf = Vec::new();
                quorate_transport::encode_message(&msg, quorate_transport::FRAME_PAYLOAD_BYTES_DEFAULT, &mut buf)
                    .unwrap();
                if send.write_all(&buf).await.is_err() {
                    break;
                }
                let _ = send.finish();
                streams.push((send, recv));
            }
            streams
        });
    }
    tasks
}

/// The goodput of each window, rounded to one request a second.
fn rates(windows: &[Window]) -> Vec<f64> {
    windows.iter().map(|w| w.per_sec().round()).collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_its_answers_cannot_shut_others_out() {
    const CONNECTIONS: usize = 20;
    /// Streams one connection opens in a wave at most (64 open at once).
    const STREAMS_PER_CONNECTION_MAX: usize = 256;
    const PRINCIPAL_REQUESTS_MAX: u64 = 200;
    const ROUNDS: usize = 3;
    const WINDOW: Duration = Duration::from_millis(2000);
    /// The well-behaved client is served in every window: this many successful requests at
    /// least (it makes hundreds a second unloaded; a functional floor, not a speed target).
    const WINDOW_OK_MIN: u64 = 20;
    const POLL: Duration = Duration::from_millis(20);
    // 1000 request slots on the node, 200 for any one principal; answers not taken within
    // 4 s are dropped (longer than a measuring window). Admission starts with room for every
    // request of a wave at once, so that it is the slots, not the adaptive limit, under test.
    let mut c = Cluster::start(|config| {
        config.limits.pending_requests_max = 1000;
        config.limits.response_write_timeout_ms = 4000;
        config.admission.principal_requests_max = PRINCIPAL_REQUESTS_MAX;
        config.admission.concurrency_count_initial = config.admission.concurrency_count_max;
        // The held requests are under test, not the held answer bytes: a get holds the most
        // its answer can take (a 1 MiB value) until it is answered, so with the default
        // 128 MiB a principal with more than ~121 gets not yet answered is refused
        // `response_bytes` before its 200th slot. On a loaded machine the wave arrives faster
        // than it is answered and the slot cap was then never reached (the flake of CI: no
        // `principal_requests` refusal). 512 MiB holds 200 gets at their largest.
        config.admission.principal_response_bytes_max = 512 << 20;
        // Nor the answer-byte rate (each wave's answers, computed and never read, would
        // otherwise put the slow principal in debt for many seconds).
        config.admission.principal_answer_bytes_per_sec = 1_000_000_000;
    });
    let leader = c.leader().await;
    c.wait_finalized().await;
    c.call_ok("alice", leader, None, put("v64k", &[7u8; 64 * 1024])).await;
    let well_behaved = c.connect("alice", leader).await;
    // The attacker's principal on a connection that does read its answers: it sees what the
    // node refuses the principal while the other connections hold its slots.
    let probe = c.connect("slow", leader).await;
    // The attacker's connections, set up once (their handshakes are not part of a window).
    let mut endpoints = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..CONNECTIONS {
        let (endpoint, conn) = stalling_connection(&c, "slow", leader).await;
        endpoints.push(endpoint);
        conns.push(conn);
    }
    // Rounds of a quiet window, then a wave of the attack that goes on until the principal
    // is refused for its held requests (a condition, not a time: a loaded machine may answer
    // or give up the first requests of a wave before its last arrive), then a window while
    // its answers are held.
    let (mut quiet, mut attacked) = (Vec::new(), Vec::new());
    let mut refusals_seen = 0u64;
    for round in 0..ROUNDS {
        quiet.push(goodput(&c, &well_behaved, "alice", WINDOW).await);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut wave = stall_wave(&c, &conns, STREAMS_PER_CONNECTION_MAX, stop_rx);
        let deadline = Instant::now() + DEADLINE;
        loop {
            match c.request(&probe, None, Request::Status).await {
                Some(Err(ApiError::Shed(o))) if o.reason == quorate_api::OverloadReason::PrincipalRequests => break,
                other => assert!(
                    Instant::now() < deadline,
                    "round {round}: the slow principal was never refused for its {PRINCIPAL_REQUESTS_MAX} held \
                     requests (last probe: {:?})",
                    other.map(|r| r.map(|_| "an answer"))
                ),
            }
            tokio::time::sleep(POLL).await;
        }
        refusals_seen += 1;
        let _ = stop_tx.send(true);
        let mut streams = Vec::new();
        while let Some(t) = wave.join_next().await {
            streams.extend(t.unwrap());
        }
        // The slots were held by the wave's gets (and at most one probe).
        assert!(streams.len() as u64 >= PRINCIPAL_REQUESTS_MAX - 1, "round {round}: {} gets sent", streams.len());
        attacked.push(goodput(&c, &well_behaved, "alice", WINDOW).await);
        // Everyone else is answered too (a status).
        let status = c.call("reader", leader, None, Request::Status).await;
        assert!(matches!(status, Some(Ok(Response::Status(_)))), "round {round}: {status:?}");
        // The stalled answers are given up after the write timeout: the slow principal's
        // slots come back (its connection that reads is answered again).
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(Ok(Response::Status(_))) = c.request(&probe, None, Request::Status).await {
                break;
            }
            assert!(Instant::now() < deadline, "round {round}: the slow principal's slots never came back");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        drop(streams);
    }
    // Its answers were held, then given up (their slots came back only so); its requests
    // beyond its slots were refused, as the node counted too.
    assert!(c.metric(leader, "quorate_response_write_timeouts_total{principal=\"slow\"}") >= 1.0);
    let counted = c.metric(leader, "quorate_proposals_shed_total{reason=\"principal_requests\"}");
    assert!(counted >= refusals_seen as f64, "{counted} principal_requests refusals counted, {refusals_seen} seen");
    probe.close();
    drop(conns);
    drop(endpoints);
    let (q, a) = (median(rates(&quiet)), median(rates(&attacked)));
    // The share of its goodput the well-behaved client keeps is a timing figure, printed
    // here and judged where timings are judged: `cargo xtask attack` (the `slow-reader`
    // attack, at least 90 %, docs/security.md). On a loaded 2-core machine it measures the
    // machine as much as the attack, so this test asserts that the client is served.
    eprintln!(
        "goodput of the well-behaved client: quiet {:?}/s, attacked {:?}/s; medians {q:.0}/s and {a:.0}/s ({:.0} %)",
        rates(&quiet),
        rates(&attacked),
        100.0 * a / q.max(1.0)
    );
    for (round, (wq, wa)) in quiet.iter().zip(&attacked).enumerate() {
        for (what, w) in [("quiet", wq), ("attacked", wa)] {
            assert_eq!(
                w.failed, 0,
                "round {round}, {what} window: requests of the well-behaved client failed: {:?}",
                w.errors
            );
            assert!(w.ok >= WINDOW_OK_MIN, "round {round}, {what} window: {} requests served in {:?}", w.ok, w.elapsed);
        }
    }
    c.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_results_are_paged_not_dropped() {
    // Paging is under test, not the answer-byte rate (the reader reads ~50 MiB here).
    let mut c = Cluster::start(|config| config.admission.principal_answer_bytes_per_sec = 1_000_000_000);
    let leader = c.leader().await;
    c.wait_finalized().await;
    // The documented largest value can be written (it used to be refused: "command of 1048628
    // bytes exceeds 1048576"), under the largest key.
    let largest = vec![b'm'; limits::VALUE_BYTES_MAX];
    let key = "k".repeat(limits::KEY_BYTES_MAX);
    c.call_ok("alice", leader, None, put(&key, &largest)).await;
    assert_eq!(c.value(leader, &key).await.map(|v| v.len()), Some(limits::VALUE_BYTES_MAX));
    // 12 MiB of values: more than one message holds.
    for i in 0..12 {
        c.call_ok("alice", leader, None, put(&format!("big/{i:02}"), &largest)).await;
    }
    // A scan is answered in pages with a continuation, each within the result limit.
    let mut pages = 0;
    let mut got = Vec::new();
    let mut start = b"big/".to_vec();
    loop {
        let body = Request::ScanPaged {
            start: start.clone(),
            end: Some(b"big0".to_vec()),
            limit: 100,
            read: ReadConsistency::Linearizable,
        };
        let Response::ScanPage { kvs, next, .. } = c.call_ok("reader", leader, None, body).await else {
            panic!("not a scan page")
        };
        pages += 1;
        assert!(!kvs.is_empty() && kvs.len() <= 4, "a page holds at most RESULT_BYTES_MAX bytes: {}", kvs.len());
        got.extend(kvs.into_iter().map(|kv| kv.key));
        match next {
            Some(n) => start = n,
            None => break,
        }
        assert!(pages <= 12, "too many pages");
    }
    let expected: Vec<Vec<u8>> = (0..12).map(|i| format!("big/{i:02}").into_bytes()).collect();
    assert_eq!(got, expected);
    assert!(pages >= 3, "{pages} pages");
    // The plain scan of 0.1.0 clients gets its first page and `more`, not a dropped stream.
    let plain = Request::Scan { start: b"big/".to_vec(), end: None, limit: 100, read: ReadConsistency::Linearizable };
    let Response::Scan { kvs, more: true, .. } = c.call_ok("reader", leader, None, plain).await else {
        panic!("a plain scan over 12 MiB says there is more")
    };
    assert!(!kvs.is_empty() && kvs.len() < 12);
    // A read-only transaction of 12 gets: too large for one answer, answered in pages at one
    // revision.
    let gets = Txn {
        compare: vec![],
        success: (0..12).map(|i| TxnOp::Get { key: format!("big/{i:02}").into_bytes() }).collect(),
        failure: vec![],
    };
    let whole = c.call("reader", leader, None, Request::Txn(gets.clone())).await;
    assert!(matches!(&whole, Some(Err(ApiError::InvalidRequest(why))) if why.contains("pages")), "{whole:?}");
    let mut results = Vec::new();
    let (mut from, mut revision) = (0, None);
    loop {
        let body = Request::TxnPaged { txn: gets.clone(), from, revision };
        let Response::TxnPage { succeeded: true, results: page, revision: at, next } =
            c.call_ok("reader", leader, None, body).await
        else {
            panic!("not a transaction page")
        };
        results.extend(page);
        match next {
            Some(n) => (from, revision) = (n, Some(at)),
            None => break,
        }
    }
    assert_eq!(results.len(), 12);
    assert!(results.iter().all(|r| matches!(r, TxnResult::Get(Some(kv)) if kv.value.len() == limits::VALUE_BYTES_MAX)));
    // A next page after the state changed is refused: the pages would not be one read.
    let first = Request::TxnPaged { txn: gets.clone(), from: 0, revision: None };
    let Response::TxnPage { revision: at, next: Some(n), .. } = c.call_ok("reader", leader, None, first).await else {
        panic!("a first page with a continuation")
    };
    c.call_ok("alice", leader, None, put("unrelated", b"1")).await;
    let stale = Request::TxnPaged { txn: gets, from: n, revision: Some(at) };
    let expired = c.call("reader", leader, None, stale).await;
    assert!(matches!(expired, Some(Err(ApiError::PageExpired { revision, .. })) if revision == at), "{expired:?}");
    // A writing transaction whose results would pass the limit is refused and changes nothing.
    let session = c.open_session("alice", leader).await;
    let mut ops = vec![TxnOp::Put { key: b"w".to_vec(), value: b"1".to_vec() }];
    ops.extend((0..12).map(|i| TxnOp::Get { key: format!("big/{i:02}").into_bytes() }));
    let write = Request::Txn(Txn { compare: vec![], success: ops, failure: vec![] });
    let refused = c.call("alice", leader, seq(session, 1), write).await;
    assert!(matches!(&refused, Some(Err(ApiError::InvalidRequest(why))) if why.contains("nothing was changed")));
    assert_eq!(c.value(leader, "w").await, None);
    c.assert_running();
}

/// The commit index node `id` reports.
async fn commit_index(c: &Cluster, id: u64) -> u64 {
    match c.call_ok("reader", id, None, Request::Status).await {
        Response::Status(s) => s.commit.0,
        other => panic!("not a status: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_whose_results_cannot_fit_is_refused_before_it_is_logged() {
    let mut c = Cluster::start(|_| ());
    let leader = c.leader().await;
    c.wait_finalized().await;
    c.call_ok("alice", leader, None, put("big", &vec![b'b'; 1_000_000])).await;
    // A writing transaction that reads 17 MB: put x y, then 17 gets of big.
    let mut ops = vec![TxnOp::Put { key: b"x".to_vec(), value: b"y".to_vec() }];
    ops.extend((0..17).map(|_| TxnOp::Get { key: b"big".to_vec() }));
    let txn = Request::Txn(Txn { compare: vec![], success: ops, failure: vec![] });
    // Nothing else writes: the commit index moves only if the transaction is logged.
    let before = commit_index(&c, leader).await;
    for attempt in 0..3 {
        let refused = c.call("alice", leader, None, txn.clone()).await;
        let Some(Err(ApiError::InvalidRequest(why))) = &refused else {
            panic!("attempt {attempt}: the transaction must be refused, got {refused:?}")
        };
        // Apply's own error, word for word.
        assert!(why.contains("results of this transaction would take more than"), "{why}");
        assert!(why.contains("nothing was changed"), "{why}");
    }
    // Repeating it costs its principal: the values read to refuse it (1 MB each time) are
    // charged to alice's answer rate (8 MiB at once, then 4 MiB/s), so she is soon refused by
    // admission, before any read — while she shares the node (the rate is work-conserving):
    // the reader asks for the status before each attempt.
    let reader = c.connect("reader", leader).await;
    let mut shed = None;
    for attempt in 0..32 {
        let status = c.request(&reader, None, Request::Status).await;
        assert!(matches!(status, Some(Ok(Response::Status(_)))), "the reader's status: {status:?}");
        match c.call("alice", leader, None, txn.clone()).await {
            Some(Err(ApiError::Shed(o))) => {
                shed = Some((attempt, o));
                break;
            }
            Some(Err(ApiError::InvalidRequest(_))) => {}
            other => panic!("attempt {attempt}: {:?}", other.map(|r| r.map(|_| "an answer"))),
        }
    }
    let (attempt, o) = shed.expect("32 refused transactions, and their principal never shed");
    reader.close();
    assert_eq!(o.reason, quorate_api::OverloadReason::ResponseBytes, "{o:?}");
    assert!(3 + attempt <= 16, "shed only after {} refusals", 3 + attempt);
    let after = commit_index(&c, leader).await;
    assert_eq!(after, before, "the refused transaction was logged (commit {before} -> {after})");
    assert_eq!(c.value(leader, "x").await, None);
    // Each refusal before proposal is counted, per principal, on the leader (the attempts
    // shed by admission never reached the bound, so are not).
    let counted = c.metric(leader, "quorate_txns_refused_unproposed_total{principal=\"alice\"}");
    assert_eq!(counted, (3 + attempt) as f64, "counted refusals before proposal");
    // A writing transaction that reads what fits is proposed, applied and answered as before.
    let ok = Txn {
        compare: vec![],
        success: vec![TxnOp::Put { key: b"x".to_vec(), value: b"y".to_vec() }, TxnOp::Get { key: b"big".to_vec() }],
        failure: vec![],
    };
    let Response::Txn { succeeded: true, results, .. } = c.call_ok("alice", leader, None, Request::Txn(ok)).await
    else {
        panic!("not a transaction")
    };
    assert!(matches!(&results[1], TxnResult::Get(Some(kv)) if kv.value.len() == 1_000_000), "{results:?}");
    assert!(commit_index(&c, leader).await > after);
    // Following its own writes: a transaction that first shrinks big reads little, and fits.
    let mut ops = vec![TxnOp::Put { key: b"big".to_vec(), value: b"small".to_vec() }];
    ops.extend((0..17).map(|_| TxnOp::Get { key: b"big".to_vec() }));
    let shrink = Request::Txn(Txn { compare: vec![], success: ops, failure: vec![] });
    assert!(matches!(c.call_ok("alice", leader, None, shrink).await, Response::Txn { succeeded: true, .. }));
    for id in 1..=3 {
        assert_eq!(c.value(id, "big").await.as_deref(), Some(&b"small"[..]), "node {id}");
    }
    c.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_sent_more_than_its_answer_rate_is_shed_and_no_one_else_is() {
    const MIB: usize = 1 << 20;
    // 1 MiB/s for each principal, after a burst of 2 MiB.
    let mut c = Cluster::start(|config| config.admission.principal_answer_bytes_per_sec = MIB as u64);
    let leader = c.leader().await;
    c.wait_finalized().await;
    c.call_ok("alice", leader, None, put("v1m", &vec![7u8; MIB - 64])).await;
    let get = Request::Get { key: b"v1m".to_vec(), read: ReadConsistency::Linearizable };
    let reader = c.connect("reader", leader).await;
    // The rate divides the node among the principals that use it (alone, a principal is not
    // held to it: quorate-admission's tests): alice asks for a small value every 100 ms
    // meanwhile, and is answered every time.
    let neighbour = c.connect("alice", leader).await;
    let small = Request::Get { key: b"absent".to_vec(), read: ReadConsistency::Linearizable };
    assert!(matches!(c.request(&neighbour, None, small.clone()).await, Some(Ok(Response::Get { kv: None, .. }))));
    let done = std::sync::atomic::AtomicBool::new(false);
    let keep_asking = async {
        let mut asked = 0u32;
        while !done.load(Ordering::Relaxed) {
            match c.request(&neighbour, None, small.clone()).await {
                Some(Ok(Response::Get { kv: None, .. })) => asked += 1,
                other => panic!("alice's small get: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        asked
    };
    // The burst is answered, then the reader is in debt and refused, with the time it takes.
    let reading = async {
        let (mut answered, mut shed) = (0, None);
        // Alice has asked before the reader starts, so the rate holds from its first answer.
        while !done.load(Ordering::Relaxed) && shed.is_none() && answered < 10 {
            match c.request(&reader, None, get.clone()).await {
                Some(Ok(Response::Get { kv: Some(kv), .. })) => {
                    assert_eq!(kv.value.len(), MIB - 64);
                    answered += 1;
                }
                Some(Err(ApiError::Shed(o))) => shed = Some(o),
                other => panic!("unexpected {:?}", other.map(|r| r.map(|_| "an answer"))),
            }
        }
        done.store(true, Ordering::Relaxed);
        (answered, shed)
    };
    let started = Instant::now();
    let (asked, (answered, shed)) = tokio::join!(keep_asking, reading);
    assert!(asked >= 1, "alice asked meanwhile");
    neighbour.close();
    let shed = shed.unwrap_or_else(|| panic!("{answered} MiB answered and never shed"));
    // The burst (2 MiB) and the answer that went into debt, plus what the rate refilled while
    // they were read: one more answer per second taken (a slow machine takes longer; the
    // bound follows the time it took rather than assume it was under a second).
    let refilled = started.elapsed().as_secs_f64().ceil() as usize;
    assert!((2..=2 + refilled).contains(&answered), "{answered} answers of 1 MiB before the first refusal");
    assert_eq!(shed.reason, quorate_api::OverloadReason::ResponseBytes, "{shed:?}");
    // In debt by at most one answer: it is paid back within about a second at 1 MiB/s.
    assert!((1..=1_600).contains(&shed.retry_after_ms), "{shed:?}");
    // Another principal is served meanwhile, large answers included.
    let Response::Get { kv: Some(kv), .. } = c.call_ok("alice", leader, None, get.clone()).await else {
        panic!("alice is not served")
    };
    assert_eq!(kv.value.len(), MIB - 64);
    // Once the hinted time has passed, the reader is served again.
    tokio::time::sleep(Duration::from_millis(u64::from(shed.retry_after_ms))).await;
    let again = c.request(&reader, None, get).await;
    assert!(matches!(again, Some(Ok(Response::Get { kv: Some(_), .. }))), "{:?}", again.map(|r| r.map(|_| ())));
    assert!(c.metric(leader, "quorate_proposals_shed_total{reason=\"response_bytes\"}") >= 1.0);
    reader.close();
    c.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_attempts_beyond_a_sources_handshake_rate_are_refused() {
    // Node 1 takes 8 handshakes from one address at once, then 1 per second.
    let mut c = Cluster::start(|config| {
        if config.id == 1 {
            config.limits.handshakes_per_source_per_sec = 1;
            config.limits.handshake_burst_per_source = 8;
        }
    });
    let creds = c.credentials("reader");
    let mut options = ClientOptions::default();
    options.request_timeout = REQUEST_TIMEOUT;
    // An attempt over the rate gets no answer (it is dropped): give up on it before QUIC's
    // first retransmission (about a second), so that it counts as not made.
    options.connect_timeout = Duration::from_millis(300);
    let (mut made, mut refused) = (Vec::new(), 0);
    let started = Instant::now();
    for _ in 0..16 {
        match Client::<NodeMessage>::connect(&creds, nid(1), c.addrs[0], options.clone()).await {
            Ok(client) => made.push(client),
            Err(_) => refused += 1,
        }
    }
    // At most the burst (its peers, which dial from 127.0.0.1 too, may have taken some of
    // it) and one more for every second of refill the attempts took (about one on a quiet
    // machine; the bound follows the time taken); the rest refused.
    let refilled = started.elapsed().as_secs_f64().ceil() as usize;
    assert!((1..=8 + refilled).contains(&made.len()), "{} connections made, {refused} refused", made.len());
    assert_eq!(made.len() + refused, 16);
    // The connections made are served; another address's limits (node 2's) are its own.
    let status = c.request(&made[0], None, Request::Status).await;
    assert!(matches!(status, Some(Ok(Response::Status(_)))), "{status:?}");
    assert!(matches!(c.call("reader", 2, None, Request::Status).await, Some(Ok(Response::Status(_)))));
    assert!(c.log(1).contains("handshakes_per_source_per_sec"), "no audit event of the refusal");
    for client in made {
        client.close();
    }
    c.assert_running();
}

/// Node `id`'s commit and applied indexes.
async fn indexes(c: &Cluster, id: u64) -> (u64, u64) {
    match c.call_ok("reader", id, None, Request::Status).await {
        Response::Status(s) => (s.commit.0, s.applied.0),
        other => panic!("not a status: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_of_applied_writes_are_answered_without_a_log_write() {
    let mut c = Cluster::start(|config| config.limits.danger_failpoints = true);
    let leader = c.leader().await;
    c.wait_finalized().await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let alice = c.open_session("alice", leader).await;
    c.call_ok("alice", leader, seq(alice, 1), put("r", b"v1")).await;
    let second = c.call_ok("alice", leader, seq(alice, 2), put("r", b"v2")).await;
    // Every node has applied both (a linearizable read waits for its node to apply them).
    for id in 1..=3 {
        assert_eq!(c.value(id, "r").await.as_deref(), Some(&b"v2"[..]), "node {id}");
    }
    // Nothing else writes: the commit index moves only if a replay is logged.
    let before = commit_index(&c, leader).await;
    // 1,000 replays on the leader, alternately of the last sequence number (its original
    // answer) and of an older one (apply's refusal), then 100 on a follower.
    for (node, n) in [(leader, 1_000), (follower, 100)] {
        let client = c.connect("alice", node).await;
        for i in 0..n {
            if i % 2 == 0 {
                let again = c.request(&client, seq(alice, 2), put("r", b"v2")).await;
                assert_eq!(again, Some(Ok(second.clone())), "node {node}, replay {i}: the original answer");
            } else {
                let older = c.request(&client, seq(alice, 1), put("r", b"v1")).await;
                assert!(
                    matches!(&older, Some(Err(ApiError::InvalidRequest(why))) if why.contains("older than the session's last one (2)")),
                    "node {node}, replay {i}: {older:?}"
                );
            }
        }
        client.close();
        let after = commit_index(&c, leader).await;
        assert_eq!(after, before, "node {node}: replays of applied writes were logged (commit {before} -> {after})");
    }
    let answered = |id| c.metric(id, "quorate_session_replays_answered_total{principal=\"alice\"}");
    assert_eq!((answered(leader), answered(follower)), (1_000.0, 100.0), "replays answered before proposing");
    for id in 1..=3 {
        assert_eq!(c.value(id, "r").await.as_deref(), Some(&b"v2"[..]), "node {id}");
    }
    let alices = format!("session={}", alice.0);
    let audited = |id: u64, how: &str| {
        c.log(id)
            .lines()
            .filter(|l| l.contains("quorate::audit") && l.contains(&alices) && l.contains("principal=alice"))
            .filter(|l| l.contains(how))
            .count()
    };
    assert_eq!(audited(leader, "answered=\"from the session cache, not proposed\""), 500);
    assert_eq!(audited(leader, "answered=\"from the session table, not proposed\""), 500);
    assert_eq!(audited(follower, "answered=\"from the session cache, not proposed\""), 50);

    // Another principal's writes in alice's session, at her applied sequence numbers: refused
    // as apply refuses them, through the log exactly as writes in an absent session are — an
    // answer and a path that tell nothing about the session.
    let before = commit_index(&c, leader).await;
    let absent = SessionId(alice.0 ^ 0x5a5a);
    for (session, s) in [(alice, 2), (alice, 1), (absent, 2), (absent, 1)] {
        let r = c.call("bob", leader, seq(session, s), put("r", b"bob")).await;
        assert_eq!(r, Some(Err(ApiError::SessionExpired)), "bob in {session:?} at {s}");
    }
    assert_eq!(
        commit_index(&c, leader).await,
        before + 4,
        "each of bob's writes is logged, his and an absent session's alike"
    );
    assert_eq!(c.metric(leader, "quorate_session_replays_answered_total{principal=\"bob\"}"), 0.0);
    assert_eq!(c.value(leader, "r").await.as_deref(), Some(&b"v2"[..]));

    // A replay racing its original: with the leader's apply thread slowed, sequence number 3
    // is committed but not applied when its replay arrives, so the replay goes through the
    // log too; the write is applied once and both get its answer.
    std::fs::write(c.setup.data_dir(leader).join("failpoints.toml"), "slow_apply_ms = 1500\n")
        .expect("failpoints file");
    let deadline = Instant::now() + DEADLINE;
    loop {
        // A write that takes the slowed apply's time shows the failpoint is read.
        let started = Instant::now();
        c.call_ok("alice", leader, None, put("probe", b"p")).await;
        if started.elapsed() >= Duration::from_millis(1500) {
            break;
        }
        assert!(Instant::now() < deadline, "the apply thread was never slowed");
    }
    let before = commit_index(&c, leader).await;
    let original = {
        let client = c.connect("alice", leader).await;
        let req = NodeMessage::Request(ClientRequest { id: 1, session: seq(alice, 3), body: put("r", b"v3") });
        tokio::spawn(async move {
            let r = tokio::time::timeout(REQUEST_TIMEOUT, client.request(&req)).await;
            client.close();
            match r {
                Ok(Ok(NodeMessage::Response(r))) => Some(r.result),
                _ => None,
            }
        })
    };
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (commit, applied) = indexes(&c, leader).await;
        if commit > before {
            assert!(applied < commit, "the original was applied before its replay could race it");
            break;
        }
        assert!(Instant::now() < deadline, "the original was never committed");
    }
    let replay = c.call("alice", leader, seq(alice, 3), put("r", b"v3")).await;
    let original = original.await.expect("the original's task");
    assert!(matches!(original, Some(Ok(Response::Put { .. }))), "{original:?}");
    assert_eq!(replay, original, "the replay gets the original's answer");
    assert_eq!(commit_index(&c, leader).await, before + 2, "the replay racing its original was logged");
    assert_eq!(answered(leader), 1_000.0, "a replay racing its original is not answered before proposing");
    assert_eq!(audited(leader, "answered=\"from the session cache, at apply\""), 1);
    std::fs::write(c.setup.data_dir(leader).join("failpoints.toml"), "").expect("failpoints file");
    for id in 1..=3 {
        assert_eq!(c.value(id, "r").await.as_deref(), Some(&b"v3"[..]), "node {id}");
    }
    c.assert_running();
}
