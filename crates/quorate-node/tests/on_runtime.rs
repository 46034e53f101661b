//! The node on `quorate-runtime` (`engine = "runtime"`, issue 19): three in-process nodes over
//! real QUIC + mutual TLS and RocksDB serve the key-value API; a cluster mixing both engines
//! replicates, catches followers of either engine up by snapshot from a leader of the other
//! (at cluster version 1, where leaders send 0.1.0's stream, and after finalize, where they
//! send acknowledged pieces) and hands leadership from one engine to the other.

#[path = "support/procs.rs"]
mod procs;

#[path = "support/inproc.rs"]
mod inproc;

use inproc::{Cluster, DEADLINE, Node, fast_raft, put};
use quorate_api::{
    ApiError, Compare, CompareOp, CompareTarget, ReadConsistency, Request, Response, Sequenced, SessionId, Txn, TxnOp,
    TxnResult,
};
use quorate_log::NodeId;
use quorate_node::config::{Engine, RaftConfig};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

const RUNTIME: [Engine; 3] = [Engine::Runtime; 3];

impl Cluster {
    async fn call(&mut self, node: u64, body: Request) -> Result<Response, ApiError> {
        self.call_as("writer", node, None, body).await.expect("transport")
    }

    /// Polls `node` until its stale (local) read of `key` gives `value`.
    async fn applied_on(&mut self, node: u64, key: &str, value: &str) {
        let until = Instant::now() + DEADLINE;
        loop {
            let r = self.call_retry(node, get(key, ReadConsistency::Stale)).await;
            if value_of(&r).as_deref() == Some(value.as_bytes()) {
                return;
            }
            assert!(Instant::now() < until, "node {node} never applied {key} = {value}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn status_of(&mut self, node: u64) -> quorate_api::NodeStatus {
        match self.call_retry(node, Request::Status).await {
            Response::Status(s) => s,
            other => panic!("not a status: {other:?}"),
        }
    }

    async fn cluster_version_of(&mut self, node: u64) -> u32 {
        match self.call_retry(node, Request::Versions).await {
            Response::Versions(v) => v.cluster_version,
            other => panic!("not versions: {other:?}"),
        }
    }

    /// Makes `to` the leader (through whichever node leads now) and waits until all agree.
    async fn lead_with(&mut self, to: u64) {
        let until = Instant::now() + DEADLINE;
        loop {
            let leader = self.leader().await;
            if leader == to {
                return;
            }
            let transfer = Request::LeaderTransfer { to: Some(NodeId::new(to).unwrap()) };
            let _ = self.call_as("admin", leader, None, transfer).await;
            assert!(Instant::now() < until, "node {to} never became the leader");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The leader's log no longer holds the entry after `had` (a follower's last index when it
/// stopped): with `compaction_tail_entries = 5`, the log starts at most 5 entries before the
/// snapshot. So that follower can only catch up by installing a snapshot.
fn assert_compacted_past(leader: quorate_api::NodeStatus, had: quorate_log::LogIndex) {
    assert!(
        leader.snapshot_index.0 > had.0 + 1 + 5,
        "the leader must have compacted past the follower's log ({had}): {leader:?}"
    );
}

fn get(k: &str, read: ReadConsistency) -> Request {
    Request::Get { key: k.into(), read }
}

fn value_of(r: &Response) -> Option<Vec<u8>> {
    match r {
        Response::Get { kv, .. } => kv.as_ref().map(|kv| kv.value.clone()),
        other => panic!("not a get: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_on_the_runtime_serve_the_kv_api() {
    let mut c = Cluster::start_on(fast_raft(), 0, false, RUNTIME);
    let leader = c.leader().await;
    let follower = (1..=3).find(|&i| i != leader).unwrap();

    // put / get / cas / delete / scan / txn on the leader.
    let Response::Put { revision: r1 } = c.call_retry(leader, put("a", "1")).await else { panic!() };
    let got = c.call(leader, get("a", ReadConsistency::Linearizable)).await.unwrap();
    assert_eq!(value_of(&got), Some(b"1".to_vec()));
    let cas = Request::Cas { key: "a".into(), expected: Some("1".into()), value: "2".into() };
    let Response::Cas { succeeded: true, previous: Some(prev), revision } = c.call(leader, cas.clone()).await.unwrap()
    else {
        panic!("cas failed")
    };
    assert_eq!((prev.value.as_slice(), revision), (&b"1"[..], r1 + 1));
    let Response::Cas { succeeded: false, .. } = c.call(leader, cas).await.unwrap() else {
        panic!("cas succeeded twice")
    };
    for k in ["b", "c", "d"] {
        c.call(leader, put(k, k)).await.unwrap();
    }
    let scan =
        Request::Scan { start: "b".into(), end: Some("d".into()), limit: 10, read: ReadConsistency::Linearizable };
    let Response::Scan { kvs, more: false, .. } = c.call(leader, scan).await.unwrap() else { panic!() };
    assert_eq!(kvs.iter().map(|k| k.key.clone()).collect::<Vec<_>>(), vec![b"b".to_vec(), b"c".to_vec()]);
    let Response::Delete { deleted: true, .. } = c.call(leader, Request::Delete { key: "d".into() }).await.unwrap()
    else {
        panic!()
    };
    let txn = Txn {
        compare: vec![Compare {
            key: "a".into(),
            target: CompareTarget::Value(Some("2".into())),
            op: CompareOp::Equal,
        }],
        success: vec![TxnOp::Put { key: "t".into(), value: "yes".into() }, TxnOp::Get { key: "a".into() }],
        failure: vec![TxnOp::Put { key: "t".into(), value: "no".into() }],
    };
    let Response::Txn { succeeded: true, results, .. } = c.call(leader, Request::Txn(txn)).await.unwrap() else {
        panic!()
    };
    assert!(matches!(&results[1], TxnResult::Get(Some(kv)) if kv.value == b"2"));

    // A write on a follower names the leader and its address.
    match c.call(follower, put("x", "1")).await {
        Err(ApiError::NotLeader { leader: Some(l), addr: Some(a) }) => {
            assert_eq!(l.get(), leader);
            assert_eq!(a, c.nodes[&leader].addr().to_string());
        }
        other => panic!("expected NotLeader, got {other:?}"),
    }

    // Linearizable reads on a follower see the latest acknowledged write.
    for i in 0..5 {
        let v = format!("v{i}");
        c.call(leader, put("lin", &v)).await.unwrap();
        let r = c.call(follower, get("lin", ReadConsistency::Linearizable)).await.unwrap();
        assert_eq!(value_of(&r), Some(v.into_bytes()));
    }
    // Stale reads say how stale they may be, and who served them.
    let Response::Get { read, .. } = c.call(follower, get("lin", ReadConsistency::Stale)).await.unwrap() else {
        panic!()
    };
    assert!(read.staleness.is_some());
    assert_eq!(read.node.get(), follower);

    // A lease read on the leader; on a follower it names the leader.
    let r = c.call(leader, get("lin", ReadConsistency::Lease)).await.unwrap();
    assert_eq!(value_of(&r), Some(b"v4".to_vec()));
    let r = c.call(follower, get("lin", ReadConsistency::Lease)).await;
    assert!(matches!(r, Err(ApiError::NotLeader { leader: Some(_), .. })), "{r:?}");

    // A new cluster raised its cluster version on its own; then sessions are the principal's.
    let until = Instant::now() + DEADLINE;
    while c.cluster_version_of(follower).await < quorate_api::CLUSTER_VERSION {
        assert!(Instant::now() < until, "the new cluster never finalized its version");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Bounded-stale reads on a follower: served within a bound it meets (it hears from the
    // leader every heartbeat), refused with a bound no replica meets.
    let fresh = quorate_api::StalenessBound { max_lag_entries: Some(1_000), max_since_leader_ms: Some(10_000) };
    let r = c.call(follower, get("lin", ReadConsistency::BoundedStale(fresh))).await.unwrap();
    let Response::Get { read, .. } = &r else { panic!() };
    assert!(read.staleness.as_ref().is_some_and(|s| s.since_leader_ms.is_some()), "{read:?}");
    assert_eq!(value_of(&r), Some(b"v4".to_vec()));
    let never = quorate_api::StalenessBound { max_lag_entries: None, max_since_leader_ms: Some(0) };
    let mut refused = false;
    for _ in 0..20 {
        // 0 ms since the leader: met only in the millisecond a heartbeat arrives.
        match c.call(follower, get("lin", ReadConsistency::BoundedStale(never))).await {
            Err(ApiError::Unavailable(_)) => {
                refused = true;
                break;
            }
            other => assert!(other.is_ok(), "{other:?}"),
        }
    }
    assert!(refused, "a bound of 0 ms since the leader is refused on a follower");

    // Exactly-once: the same session and sequence number twice, applied once.
    let Response::Session(session) = c.call(leader, Request::OpenSession).await.unwrap() else { panic!() };
    let s1 = Some(Sequenced { session, seq: 1 });
    let first = c.call_as("writer", leader, s1, put("once", "x")).await.unwrap();
    let again = c.call_as("writer", leader, s1, put("once", "x")).await.unwrap();
    assert_eq!(first, again);
    let r = c.call(leader, get("once", ReadConsistency::Linearizable)).await.unwrap();
    let Response::Get { kv: Some(kv), .. } = r else { panic!() };
    assert_eq!(kv.version, 1);
    let bogus = Some(Sequenced { session: SessionId(999_999), seq: 1 });
    assert_eq!(c.call_as("writer", leader, bogus, put("once", "y")).await.unwrap(), Err(ApiError::SessionExpired));
    // Another principal cannot write in the writer's session.
    let stolen = c.call_as("admin", leader, Some(Sequenced { session, seq: 2 }), put("once", "z")).await.unwrap();
    assert!(stolen.is_err(), "{stolen:?}");

    // A read at a revision (history is on at the finalized version).
    let Response::Put { revision: at } = c.call(leader, put("h", "old")).await.unwrap() else { panic!() };
    c.call(leader, put("h", "new")).await.unwrap();
    let old = Request::GetAt { key: "h".into(), revision: at, read: ReadConsistency::Linearizable };
    assert_eq!(value_of(&c.call(follower, old).await.unwrap()), Some(b"old".to_vec()));

    // Roles: a read-only client may read but not write; admin requests need admin.
    let denied = c.call_as("reader", leader, None, put("r", "1")).await.unwrap();
    assert!(matches!(denied, Err(ApiError::Unauthorized { .. })), "{denied:?}");
    assert!(c.call_as("reader", leader, None, get("a", ReadConsistency::Linearizable)).await.unwrap().is_ok());
    let denied = c.call_as("writer", leader, None, Request::FlightDump).await.unwrap();
    assert!(matches!(denied, Err(ApiError::Unauthorized { .. })), "{denied:?}");

    // Status, members, versions.
    let s = c.status_of(leader).await;
    assert!(s.danger.is_empty());
    assert_eq!(s.binary_version, quorate_node::VERSION);
    assert_eq!(s.leader.map(NodeId::get), Some(leader));
    assert!(s.applied.0 > 0 && s.revision > at, "{s:?}");
    let Response::Members(m) = c.call(follower, Request::MemberList).await.unwrap() else { panic!() };
    assert_eq!(m.len(), 3);
    assert!(m.iter().all(|m| m.addr.is_some()));

    // Every request of this API is served on this engine now (backups and streamed saves
    // too: `snapshot_saves_on_the_runtime_*` below), so none is left to check the refusal of
    // an unserved one with; the node's fallback answers only kinds a newer API may add.

    // Leadership moves on request, and the new leader takes writes.
    let other = (1..=3).find(|&i| i != leader).unwrap();
    c.lead_with(other).await;
    c.call_retry(other, put("after-transfer", "1")).await;
    c.applied_on(leader, "after-transfer", "1").await;

    // A flight dump on request.
    let dumped = c.call_as("admin", other, None, Request::FlightDump).await.unwrap();
    assert!(matches!(dumped, Ok(Response::FlightDumped { .. })), "{dumped:?}");

    c.stop_all().await;
}

fn watch(key: &str, from_revision: u64, wait_ms: u32) -> Request {
    Request::Watch(quorate_api::WatchRequest {
        key: key.into(),
        prefix: true,
        from_revision,
        prev_kv: true,
        max_events: 100,
        max_bytes: 0,
        wait_ms,
    })
}

/// The events of a watch's answer as (key, value, previous value), and its `complete_to`.
fn events_of(r: Result<Response, ApiError>) -> (Vec<(String, String, Option<String>)>, u64) {
    let Ok(Response::Watch(a)) = r else { panic!("not a watch answer: {r:?}") };
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
    let events = a.events.iter().map(|e| (text(&e.kv.key), text(&e.kv.value), e.prev.as_ref().map(|p| text(&p.value))));
    (events.collect(), a.complete_to)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watches_and_history_are_served_on_the_runtime() {
    let mut c = Cluster::start_on(fast_raft(), 0, false, RUNTIME);
    let leader = c.leader().await;
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let until = Instant::now() + DEADLINE;
    while c.cluster_version_of(follower).await < quorate_api::CLUSTER_VERSION {
        assert!(Instant::now() < until, "the new cluster never finalized its version");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Response::Put { revision: r1 } = c.call_retry(leader, put("w/a", "1")).await else { panic!() };
    c.call(leader, put("other", "x")).await.unwrap();
    c.call(leader, put("w/a", "2")).await.unwrap();
    c.applied_on(follower, "w/a", "2").await;

    // At once, on a follower: every event of the prefix from r1, in order, with the previous value.
    let (events, complete_to) = events_of(c.call(follower, watch("w/", r1, 0)).await);
    let want = vec![("w/a".into(), "1".into(), None), ("w/a".into(), "2".into(), Some("1".into()))];
    assert_eq!(events, want);
    assert!(complete_to >= r1 + 2, "{complete_to}");

    // A watch past the applied revision waits; writes to other keys do not answer it, the next
    // write of its prefix does.
    let waiting = c.call_in_background("writer", follower, None, watch("w/", complete_to + 1, 20_000));
    for i in 0..3 {
        c.call(leader, put(&format!("quiet/{i}"), "q")).await.unwrap();
    }
    c.applied_on(follower, "quiet/2", "q").await;
    assert!(!waiting.is_finished(), "answered with no events while its wait lasts");
    let Response::Put { revision: r4 } = c.call(leader, put("w/b", "3")).await.unwrap() else { panic!() };
    let answer = tokio::time::timeout(DEADLINE, waiting).await.expect("answered").unwrap().expect("transport");
    let (events, complete_to) = events_of(answer);
    assert_eq!(events, vec![("w/b".to_string(), "3".to_string(), None)]);
    assert!(complete_to >= r4, "{complete_to} < {r4}");

    // A short wait with nothing new is answered empty at its deadline, complete to where it was.
    let asked = Instant::now();
    let (events, to) = events_of(c.call(follower, watch("w/", complete_to + 1, 300)).await);
    assert!(events.is_empty() && to >= complete_to, "{events:?} {to}");
    assert!(asked.elapsed() >= Duration::from_millis(300), "answered before its wait: {:?}", asked.elapsed());

    // History: on and sized, on every member.
    let Response::History(h) = c.call(follower, Request::History).await.unwrap() else { panic!() };
    assert!(h.enabled && h.revision >= r4 && h.entries > 0, "{h:?}");
    assert_eq!(h.id.get(), follower);

    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leases_are_granted_kept_alive_revoked_and_expire_on_the_runtime() {
    let mut c = Cluster::start_on(fast_raft(), 0, false, RUNTIME);
    let leader = c.leader().await;
    let until = Instant::now() + DEADLINE;
    while c.cluster_version_of(leader).await < quorate_api::CLUSTER_VERSION {
        assert!(Instant::now() < until, "the new cluster never finalized its version");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // At least 3 s (the API), and three election timeouts of this cluster.
    let too_short = c.call(leader, Request::LeaseGrant { ttl_ms: 1_000 }).await;
    assert!(matches!(too_short, Err(ApiError::InvalidRequest(_))), "{too_short:?}");
    // The leader's clock takes office at its first tick after the version (retried until then).
    let Response::Leases(none) = c.call_retry(leader, Request::LeaseList).await else { panic!() };
    assert!(none.is_empty());
    let before_grants = Instant::now();
    let mut granted = Vec::new();
    for _ in 0..3 {
        match c.call_retry(leader, Request::LeaseGrant { ttl_ms: 3_000 }).await {
            Response::LeaseGranted { id, ttl_ms: 3_000 } => granted.push(id),
            other => panic!("not granted: {other:?}"),
        }
    }
    let (kept, revoked, left) = (granted[0], granted[1], granted[2]);
    for (key, lease) in [("l/kept", kept), ("l/revoked", revoked), ("l/left", left)] {
        let put = Request::PutWithLease { key: key.into(), value: "v".into(), lease };
        c.call(leader, put).await.unwrap();
    }
    // The admin may attach a key to any principal's lease.
    let attached = Request::PutWithLease { key: "l/admin".into(), value: "v".into(), lease: kept };
    assert!(c.call_as("admin", leader, None, attached).await.unwrap().is_ok());
    let Response::LeaseTtl(info) = c.call_retry(leader, Request::LeaseTimeToLive { id: kept, keys: true }).await else {
        panic!()
    };
    assert_eq!((info.granted_ttl_ms, info.key_count), (3_000, 2), "{info:?}");
    let Response::LeaseRevoked { deleted: 1, .. } = c.call(leader, Request::LeaseRevoke { id: revoked }).await.unwrap()
    else {
        panic!("revoke")
    };
    assert_eq!(value_of(&c.call(leader, get("l/revoked", ReadConsistency::Linearizable)).await.unwrap()), None);
    let Response::Leases(list) = c.call(leader, Request::LeaseList).await.unwrap() else { panic!() };
    let mut ids: Vec<_> = list.iter().map(|l| l.id).collect();
    ids.sort();
    let mut want = vec![kept, left];
    want.sort();
    assert_eq!(ids, want);
    // Kept alive for twice its TTL while the other lapses: the other's key goes (never before
    // its TTL from its grant), this one's stays.
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let mut left_gone = None;
    while left_gone.is_none() || before_grants.elapsed() < Duration::from_millis(6_000) {
        let kept_alive = c.call(leader, Request::LeaseKeepAlive { id: kept }).await;
        assert!(matches!(kept_alive, Ok(Response::LeaseKeptAlive { ttl_ms: 3_000, .. })), "{kept_alive:?}");
        if left_gone.is_none() {
            let r = c.call(follower, get("l/left", ReadConsistency::Linearizable)).await.unwrap();
            if value_of(&r).is_none() {
                left_gone = Some(before_grants.elapsed());
            }
        }
        // Nominal 3 s; expiry is swept every 200 ms and applied a round later.
        assert!(before_grants.elapsed() < Duration::from_secs(20), "the lapsed lease never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let gone_after = left_gone.expect("gone");
    assert!(gone_after >= Duration::from_millis(3_000), "expired before its TTL: {gone_after:?}");
    let r = c.call(follower, get("l/kept", ReadConsistency::Linearizable)).await.unwrap();
    assert_eq!(value_of(&r), Some(b"v".to_vec()), "a lease kept alive keeps its keys");
    let gone = c.call(leader, Request::LeaseKeepAlive { id: left }).await;
    assert!(matches!(gone, Err(ApiError::InvalidRequest(_))), "{gone:?}");
    // A follower names the leader for the clock's requests.
    let r = c.call(follower, Request::LeaseKeepAlive { id: kept }).await;
    assert!(matches!(r, Err(ApiError::NotLeader { leader: Some(_), .. })), "{r:?}");

    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_runtime_node_restarts_and_catches_up_by_snapshot_with_nothing_lost() {
    // Small thresholds: the leader snapshots and compacts while a follower is down, so the
    // follower needs a snapshot to catch up.
    let raft = RaftConfig { snapshot_entries: 20, compaction_tail_entries: 5, ..fast_raft() };
    let mut c = Cluster::start_on(raft, 0, false, RUNTIME);
    let leader = c.leader().await;
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    for i in 0..10 {
        c.call_retry(leader, put(&format!("k{i:03}"), "before")).await;
    }
    c.applied_on(follower, "k009", "before").await;
    let had = c.status_of(follower).await.last_index;
    let node = c.nodes.get_mut(&follower).unwrap();
    node.stop().await;
    let mut config = node.config.clone();
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    config.metrics_listen = Some(metrics);
    for i in 0..100 {
        c.call_retry(leader, put(&format!("k{i:03}"), "after")).await;
    }
    assert_compacted_past(c.status_of(leader).await, had);
    *c.nodes.get_mut(&follower).unwrap() = Node::start(config);
    for i in [0, 50, 99] {
        let r = c.call_retry(follower, get(&format!("k{i:03}"), ReadConsistency::Linearizable)).await;
        assert_eq!(value_of(&r), Some(b"after".to_vec()), "restarted node served a stale value for k{i:03}");
    }
    c.applied_on(follower, "k099", "after").await;
    // It serves its probes and metrics (the core's, observed between the runtime's turns).
    let http = |path: &str| quorate_telemetry::http::get_blocking(metrics, path, Duration::from_secs(5), 4 << 20);
    let until = Instant::now() + DEADLINE;
    loop {
        match http("/readyz") {
            Ok((200, body)) if body.contains("leader known") => break,
            other => assert!(Instant::now() < until, "/readyz never ready: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, body) = http("/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(body.lines().any(|l| l.starts_with("quorate_raft_commit_index ")), "{body}");
    assert!(body.contains("quorate_invariant_violations_total"), "{body}");
    // The whole cluster restarts with nothing lost.
    c.stop_all().await;
    let configs: Vec<_> = c.nodes.values().map(|n| n.config.clone()).collect();
    for cfg in configs {
        c.nodes.insert(cfg.id, Node::start(cfg));
    }
    let leader = c.leader().await;
    let r = c.call_retry(leader, get("k050", ReadConsistency::Linearizable)).await;
    assert_eq!(value_of(&r), Some(b"after".to_vec()));
    c.stop_all().await;
}

/// Nodes 1 and 2 on the driver, node 3 on the runtime: each engine leads in turn, and each
/// catches a follower of the other engine up by snapshot. `upgraded`: the cluster stays at
/// cluster version 1, where snapshots go as 0.1.0's unanswered stream; otherwise it
/// finalizes and they go as acknowledged pieces.
async fn mixed_engines(upgraded: bool) {
    let raft = RaftConfig { snapshot_entries: 20, compaction_tail_entries: 5, ..fast_raft() };
    let mut c = Cluster::start_on(raft, 0, upgraded, [Engine::Driver, Engine::Driver, Engine::Runtime]);
    let want_version = if upgraded { 1 } else { quorate_api::CLUSTER_VERSION };
    let until = Instant::now() + DEADLINE;
    while c.cluster_version_of(3).await != want_version {
        assert!(Instant::now() < until, "cluster version never reached {want_version}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A driver leads; the runtime node misses 100 writes and catches up by snapshot.
    c.lead_with(1).await;
    c.call_retry(1, put("k", "first")).await;
    c.applied_on(3, "k", "first").await;
    let had = c.status_of(3).await.last_index;
    let mut n3 = c.nodes.remove(&3).unwrap();
    n3.stop().await;
    for i in 0..100 {
        c.call_retry(1, put(&format!("d{i:03}"), "by-driver")).await;
    }
    assert_compacted_past(c.status_of(1).await, had);
    c.nodes.insert(3, Node::start(n3.config.clone()));
    c.applied_on(3, "d099", "by-driver").await;

    // The runtime node leads; a driver follower misses 100 writes and catches up by snapshot.
    c.lead_with(3).await;
    c.call_retry(3, put("k", "second")).await;
    c.applied_on(2, "k", "second").await;
    let had = c.status_of(2).await.last_index;
    let mut n2 = c.nodes.remove(&2).unwrap();
    n2.stop().await;
    for i in 0..100 {
        c.call_retry(3, put(&format!("r{i:03}"), "by-runtime")).await;
    }
    assert_compacted_past(c.status_of(3).await, had);
    c.nodes.insert(2, Node::start(n2.config.clone()));
    c.applied_on(2, "r099", "by-runtime").await;
    // Every node holds everything, and linearizable reads agree on all three.
    for node in 1..=3 {
        for key in ["d000", "d099", "r000", "r099"] {
            let r = c.call_retry(node, get(key, ReadConsistency::Linearizable)).await;
            assert!(value_of(&r).is_some(), "node {node} lacks {key}");
        }
    }
    assert_eq!(c.cluster_version_of(2).await, want_version);
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_mixing_both_engines_at_the_newest_cluster_version() {
    mixed_engines(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_mixing_both_engines_at_cluster_version_1() {
    mixed_engines(true).await;
}

fn voters(m: &[quorate_api::Member]) -> Vec<u64> {
    m.iter().filter(|m| m.kind == quorate_api::MemberKind::Voter).map(|m| m.id.get()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_are_added_promoted_updated_and_removed_on_the_runtime() {
    let mut c = Cluster::start_on(fast_raft(), 1, false, RUNTIME);
    c.leader().await;
    let members: Vec<_> = c.nodes.values().map(|n| (inproc::nid(n.config.id), n.config.listen)).collect();
    let client =
        quorate_client::Client::new(quorate_client::ClientConfig::new(c.cluster.clone(), members, c.admin_tls.clone()))
            .unwrap();
    for i in 0..20 {
        client.put(format!("a{i:02}"), "1").await.unwrap();
    }

    // Node 4, on the runtime too, starts with `join = true` and waits to be added.
    let mut cfg4 = c.spare.remove(&4).unwrap();
    cfg4.engine = Engine::Runtime;
    let addr4 = cfg4.listen;
    c.nodes.insert(4, Node::start(cfg4));
    client.member_add(inproc::nid(4), addr4).await.unwrap();
    let m = client.member_list().await.unwrap();
    assert!(
        m.iter().any(|m| m.id.get() == 4
            && m.kind == quorate_api::MemberKind::Learner
            && m.addr.as_deref() == Some(addr4.to_string().as_str())),
        "{m:?}"
    );
    c.applied_on(4, "a19", "1").await;

    // Refusals are plain errors: an unknown node cannot be promoted, a member not re-added.
    let e = client.member_promote(inproc::nid(9)).await.unwrap_err();
    assert!(matches!(e.api_error(), Some(ApiError::Refused(_))), "{e}");
    let e = client.member_add(inproc::nid(4), addr4).await.unwrap_err();
    assert!(matches!(e.api_error(), Some(ApiError::Refused(_))), "{e}");

    client.member_promote(inproc::nid(4)).await.unwrap();
    let m = client.member_list().await.unwrap();
    assert_eq!(voters(&m), vec![1, 2, 3, 4], "{m:?}");
    for i in 0..20 {
        client.put(format!("b{i:02}"), "2").await.unwrap();
    }

    // A member's address is updated through the log: every member records it.
    let leader = c.leader().await;
    let update = Request::MemberUpdate { id: inproc::nid(4), addr: addr4.to_string() };
    // A member update needs the finalized version, which a new cluster raises on its own once
    // its leader has heard every member (node 4 included).
    let until = Instant::now() + DEADLINE;
    while c.cluster_version_of(leader).await < quorate_api::CLUSTER_VERSION {
        assert!(Instant::now() < until, "the cluster never finalized its version");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.call_as("admin", leader, None, update).await.unwrap(), Ok(Response::Done));

    // Remove an original follower; three voters remain and writes still work.
    let gone = (1..=3).find(|&i| i != leader).unwrap();
    client.member_remove(inproc::nid(gone)).await.unwrap();
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
    c.applied_on(4, "c19", "3").await;
    client.close();
    c.stop_all().await;
}

/// Waits (bounded) until `node` applied cluster version `version` or later.
async fn wait_cluster_version(c: &mut Cluster, node: u64, version: u32) {
    let until = Instant::now() + DEADLINE;
    while c.cluster_version_of(node).await < version {
        assert!(Instant::now() < until, "node {node} never reached cluster version {version}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `count` acknowledged writes `save/NN = vNN` on the leader, then the leader's applied index
/// (at or after the last write's index: the leader applied it before acknowledging it).
async fn acknowledged_writes(c: &mut Cluster, leader: u64, count: usize) -> (Vec<(String, String)>, u64) {
    let mut written = Vec::new();
    for i in 0..count {
        let (k, v) = (format!("save/{i:02}"), format!("v{i:02}"));
        c.call_retry(leader, put(&k, &v)).await;
        written.push((k, v));
    }
    let applied = c.status_of(leader).await.applied.0;
    (written, applied)
}

/// `NotLeader` naming `leader` and its address.
fn assert_names_leader(c: &Cluster, answer: Result<Response, ApiError>, leader: u64) {
    match answer {
        Err(ApiError::NotLeader { leader: Some(l), addr: Some(a) }) => {
            assert_eq!(l.get(), leader);
            assert_eq!(a, c.nodes[&leader].addr().to_string());
        }
        other => panic!("expected NotLeader naming node {leader}, got {other:?}"),
    }
}

/// Checks the snapshot file `file` offline (verified whole, at `index`, with at least
/// `written` keys), then restores it into a new one-node cluster on the runtime engine (node
/// 1's certificates and address: the cluster must be stopped) that must serve every
/// acknowledged write.
async fn restores_with(c: &mut Cluster, file: &Path, index: u64, written: &[(String, String)]) {
    let info = quorate_node::restore::inspect(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert_eq!(info.meta.last.index.0, index, "{info:?}");
    assert!(info.keys >= written.len() as u64, "{info:?}");
    let dir = tempfile::tempdir().unwrap();
    let mut config = c.nodes[&1].config.clone();
    let peers = BTreeMap::from([(1, config.listen.to_string())]);
    quorate_node::restore::restore(file, &dir.path().join("n1"), 1, &peers).unwrap();
    config.data_dir = dir.path().join("n1");
    config.peers = peers;
    c.nodes.insert(1, Node::start(config));
    for (k, v) in written {
        let r = c.call_retry(1, get(k, ReadConsistency::Linearizable)).await;
        assert_eq!(value_of(&r), Some(v.clone().into_bytes()), "{k} in the restored snapshot");
    }
    c.nodes.get_mut(&1).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_saves_on_the_runtime_write_a_backup_on_the_leader_that_restores() {
    let mut c = Cluster::start_on(fast_raft(), 0, false, RUNTIME);
    let leader = c.leader().await;
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let (written, applied) = acknowledged_writes(&mut c, leader, 20).await;

    // A follower names the leader; an admin request, refused to a writer.
    let refused = c.call_as("admin", follower, None, Request::SnapshotSave).await.unwrap();
    assert_names_leader(&c, refused, leader);
    let denied = c.call(leader, Request::SnapshotSave).await;
    assert!(matches!(denied, Err(ApiError::Unauthorized { .. })), "{denied:?}");

    let saved = c.call_as("admin", leader, None, Request::SnapshotSave).await.unwrap();
    let Ok(Response::SnapshotSaved { path, index }) = saved else { panic!("not saved: {saved:?}") };
    let path = std::path::PathBuf::from(path);
    assert!(path.is_file(), "{}", path.display());
    let backups = c.nodes[&leader].config.data_dir.join("backups");
    assert_eq!(path.parent(), Some(backups.as_path()), "written in the leader's backups directory");
    assert!(index.0 >= applied, "the backup at {index} misses acknowledged writes up to {applied}");

    // Saves asked at once (at one index: one file name): one at a time is written, the others
    // are refused as busy — none fails half-way or leaves a file another save damaged.
    let at_once: Vec<_> = (0..6).map(|_| c.call_in_background("admin", leader, None, Request::SnapshotSave)).collect();
    let mut saves = 0;
    for call in at_once {
        match call.await.unwrap().unwrap() {
            Ok(Response::SnapshotSaved { path, .. }) => {
                saves += 1;
                let info = quorate_node::restore::inspect(std::path::Path::new(&path));
                assert!(info.is_ok(), "{path}: {info:?}");
            }
            Err(ApiError::Refused(why)) if why.contains("busy") => {}
            other => panic!("a save at once with others: {other:?}"),
        }
    }
    assert!(saves >= 1, "no save of six was written");

    let copy = tempfile::tempdir().unwrap();
    let file = copy.path().join("backup.qsnap");
    std::fs::copy(&path, &file).unwrap();
    c.stop_all().await;
    restores_with(&mut c, &file, index.0, &written).await;
}

/// Fetches the image of `stream` from `node` whole (asking again while it is being written),
/// then ends the stream; returns the bytes.
async fn fetch_all(c: &mut Cluster, node: u64, stream: u64) -> Vec<u8> {
    const CHUNK: u32 = 64 * 1024;
    let until = Instant::now() + DEADLINE;
    let mut bytes = Vec::new();
    let total = loop {
        let fetch = Request::SnapshotStreamFetch { stream, offset: bytes.len() as u64, len: CHUNK };
        let got = c.call_as("admin", node, None, fetch).await.unwrap();
        let Ok(Response::SnapshotStreamData { offset, data, total, complete: false, .. }) = got else {
            panic!("not a chunk: {got:?}")
        };
        assert_eq!(offset, bytes.len() as u64);
        bytes.extend_from_slice(&data);
        match total {
            Some(t) if t == bytes.len() as u64 => break t,
            Some(t) => assert!(bytes.len() as u64 <= t && !data.is_empty(), "{} of {t}", bytes.len()),
            // Still being written: asked again shortly.
            None => {
                assert!(data.is_empty() && Instant::now() < until, "the image was never written");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let end = Request::SnapshotStreamFetch { stream, offset: total, len: 0 };
    let ended = c.call_as("admin", node, None, end).await.unwrap();
    assert!(
        matches!(ended, Ok(Response::SnapshotStreamData { complete: true, total: Some(t), .. }) if t == total),
        "{ended:?}"
    );
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_saves_on_the_runtime_stream_from_the_leader_one_at_a_time() {
    let mut c = Cluster::start_on(fast_raft(), 0, false, RUNTIME);
    let leader = c.leader().await;
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    wait_cluster_version(&mut c, leader, quorate_api::CLUSTER_VERSION).await;
    let (written, applied) = acknowledged_writes(&mut c, leader, 20).await;

    let refused = c.call_as("admin", follower, None, Request::SnapshotStreamOpen).await.unwrap();
    assert_names_leader(&c, refused, leader);
    let opened = c.call_as("admin", leader, None, Request::SnapshotStreamOpen).await.unwrap();
    let Ok(Response::SnapshotStreamOpened { stream, index, .. }) = opened else { panic!("not opened: {opened:?}") };
    assert!(index.0 >= applied, "the image at {index} misses acknowledged writes up to {applied}");
    // One stream at a time.
    let busy = c.call_as("admin", leader, None, Request::SnapshotStreamOpen).await.unwrap();
    assert!(matches!(&busy, Err(ApiError::Refused(why)) if why.contains("busy")), "{busy:?}");
    let bytes = fetch_all(&mut c, leader, stream).await;
    // Ended: its image is gone, and the slot is free again.
    let again = Request::SnapshotStreamFetch { stream, offset: 0, len: 1024 };
    let gone = c.call_as("admin", leader, None, again).await.unwrap();
    assert!(matches!(&gone, Err(ApiError::Refused(why)) if why.contains("no snapshot stream")), "{gone:?}");
    let images = c.nodes[&leader].config.data_dir.join("backups").join("stream");
    assert_eq!(std::fs::read_dir(&images).map(|d| d.count()).unwrap_or(0), 0, "images left in {}", images.display());

    // A leader deposed during a save aborts it (its image removed) without being asked.
    let opened = c.call_as("admin", leader, None, Request::SnapshotStreamOpen).await.unwrap();
    let Ok(Response::SnapshotStreamOpened { stream: second, .. }) = opened else { panic!("not opened: {opened:?}") };
    let until = Instant::now() + DEADLINE;
    loop {
        let fetch = Request::SnapshotStreamFetch { stream: second, offset: 0, len: 1 };
        match c.call_as("admin", leader, None, fetch).await.unwrap() {
            Ok(Response::SnapshotStreamData { total: Some(_), .. }) => break,
            Ok(Response::SnapshotStreamData { total: None, .. }) => {
                assert!(Instant::now() < until, "the second image was never written");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("not a chunk: {other:?}"),
        }
    }
    assert_eq!(std::fs::read_dir(&images).unwrap().count(), 1, "the second image is written");
    c.lead_with(follower).await;
    let until = Instant::now() + DEADLINE;
    while std::fs::read_dir(&images).map(|d| d.count()).unwrap_or(0) > 0 {
        assert!(Instant::now() < until, "the deposed leader kept its image in {}", images.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fetch = Request::SnapshotStreamFetch { stream: second, offset: 0, len: 1024 };
    let aborted = c.call_as("admin", leader, None, fetch).await.unwrap();
    assert!(
        matches!(&aborted, Err(ApiError::Refused(why)) if why.contains("was aborted") && why.contains("stopped being the leader")),
        "{aborted:?}"
    );

    let copy = tempfile::tempdir().unwrap();
    let file = copy.path().join("streamed.qsnap");
    std::fs::write(&file, &bytes).unwrap();
    c.stop_all().await;
    restores_with(&mut c, &file, index.0, &written).await;
}

/// An upgraded cluster (cluster version 1) on the runtime: a backup is served, a streamed save
/// is refused until the version is finalized, as on the driver.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_streamed_save_on_the_runtime_waits_for_the_finalized_cluster_version() {
    let mut c = Cluster::start_on(fast_raft(), 0, true, RUNTIME);
    let leader = c.leader().await;
    let (_, applied) = acknowledged_writes(&mut c, leader, 3).await;
    assert_eq!(c.cluster_version_of(leader).await, 1);
    let refused = c.call_as("admin", leader, None, Request::SnapshotStreamOpen).await.unwrap();
    assert!(
        matches!(&refused, Err(ApiError::InvalidRequest(why)) if why.contains("needs cluster version 2")),
        "{refused:?}"
    );
    let saved = c.call_as("admin", leader, None, Request::SnapshotSave).await.unwrap();
    assert!(matches!(saved, Ok(Response::SnapshotSaved { index, .. }) if index.0 >= applied), "{saved:?}");

    let finalize = Request::Finalize { version: quorate_api::CLUSTER_VERSION };
    let finalized = c.call_as("admin", leader, None, finalize).await.unwrap();
    assert!(finalized.is_ok(), "{finalized:?}");
    wait_cluster_version(&mut c, leader, quorate_api::CLUSTER_VERSION).await;
    let opened = c.call_as("admin", leader, None, Request::SnapshotStreamOpen).await.unwrap();
    let Ok(Response::SnapshotStreamOpened { stream, .. }) = opened else { panic!("not opened: {opened:?}") };
    let bytes = fetch_all(&mut c, leader, stream).await;
    assert!(!bytes.is_empty());
    c.stop_all().await;
}
