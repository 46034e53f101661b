//! Three in-process nodes over real QUIC + mutual TLS and RocksDB: elections, the key-value
//! API, follower reads, exactly-once sessions, role checks, restart and snapshot catch-up.

#[path = "support/procs.rs"]
mod procs;

#[path = "support/inproc.rs"]
mod inproc;

use inproc::{Cluster, DEADLINE, Node, fast_raft, put};
use quorate_api::{
    ApiError, Compare, CompareOp, CompareTarget, ReadConsistency, Request, Response, Sequenced, SessionId, Txn, TxnOp,
    TxnResult,
};
use quorate_node::config::{NodeConfig, RaftConfig};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

impl Cluster {
    async fn call(&mut self, node: u64, body: Request) -> Result<Response, ApiError> {
        self.call_as("writer", node, None, body).await.expect("transport")
    }
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
async fn three_nodes_serve_the_kv_api() {
    let mut c = Cluster::start(fast_raft());
    let leader = c.leader().await;
    let follower = (1..=3).find(|&i| i != leader).unwrap();

    // put / get / cas / delete / scan / txn on the leader.
    let Response::Put { revision: r1 } = c.call(leader, put("a", "1")).await.unwrap() else { panic!() };
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
    // Well-formed but out of bounds: a typed refusal on the stream, not a reset.
    let too_many = Request::Scan {
        start: "b".into(),
        end: None,
        limit: quorate_api::limits::SCAN_LIMIT_MAX + 1,
        read: ReadConsistency::Linearizable,
    };
    let Err(ApiError::InvalidRequest(why)) = c.call(leader, too_many).await else {
        panic!("an over-limit scan must be refused with InvalidRequest")
    };
    assert!(why.contains("scan limit"), "{why}");
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
    // Stale reads say how stale they may be.
    let Response::Get { read, .. } = c.call(follower, get("lin", ReadConsistency::Stale)).await.unwrap() else {
        panic!()
    };
    assert!(read.staleness.is_some());
    assert_eq!(read.node.get(), follower);

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

    // Roles: a read-only client may read but not write; admin requests need admin.
    let denied = c.call_as("reader", leader, None, put("r", "1")).await.unwrap();
    assert!(matches!(denied, Err(ApiError::Unauthorized { .. })), "{denied:?}");
    assert!(c.call_as("reader", leader, None, get("a", ReadConsistency::Linearizable)).await.unwrap().is_ok());
    let denied = c.call_as("writer", leader, None, Request::SnapshotSave).await.unwrap();
    assert!(matches!(denied, Err(ApiError::Unauthorized { .. })));

    // Status and members.
    let Response::Status(s) = c.call(leader, Request::Status).await.unwrap() else { panic!() };
    assert!(s.danger.is_empty());
    assert_eq!(s.binary_version, quorate_node::VERSION);
    let Response::Members(m) = c.call(follower, Request::MemberList).await.unwrap() else { panic!() };
    assert_eq!(m.len(), 3);
    assert!(m.iter().all(|m| m.addr.is_some()));

    // A backup snapshot.
    let saved = c.call_as("admin", leader, None, Request::SnapshotSave).await.unwrap().unwrap();
    let Response::SnapshotSaved { path, .. } = saved else { panic!() };
    assert!(Path::new(&path).exists());

    c.stop_all().await;
}

fn data_dir_of(c: &Cluster, i: u64) -> PathBuf {
    c.nodes[&i].config.data_dir.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_node_catches_up_with_nothing_lost() {
    // Small thresholds: the leader snapshots and compacts while a follower is down, so the
    // follower needs a snapshot to catch up.
    let raft = RaftConfig { snapshot_entries: 20, compaction_tail_entries: 5, ..fast_raft() };
    let mut c = Cluster::start(raft);
    let leader = c.leader().await;
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    for i in 0..10 {
        c.call_retry(leader, put(&format!("k{i:03}"), "before")).await;
    }
    let dir = data_dir_of(&c, follower);
    let node = c.nodes.get_mut(&follower).unwrap();
    node.stop().await;
    let config = node.config.clone();
    assert_eq!(config.data_dir, dir);
    for i in 0..100 {
        c.call_retry(leader, put(&format!("k{i:03}"), "after")).await;
    }
    // Restart on the same data directory.
    *c.nodes.get_mut(&follower).unwrap() = Node::start(config);
    // A linearizable read on the restarted node sees every acknowledged write.
    for i in [0, 50, 99] {
        let r = c.call_retry(follower, get(&format!("k{i:03}"), ReadConsistency::Linearizable)).await;
        assert_eq!(value_of(&r), Some(b"after".to_vec()), "restarted node served a stale value for k{i:03}");
    }
    // Its own state machine caught up too (stale reads are local).
    let until = Instant::now() + DEADLINE;
    loop {
        let r = c.call_retry(follower, get("k099", ReadConsistency::Stale)).await;
        if value_of(&r) == Some(b"after".to_vec()) {
            break;
        }
        assert!(Instant::now() < until, "follower never applied k099");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Response::Status(s) = c.call(follower, Request::Status).await.unwrap() else { panic!() };
    assert!(s.snapshot_index.0 > 0, "snapshots are taken and compaction runs: {s:?}");
    // And the whole cluster restarts with nothing lost.
    c.stop_all().await;
    let configs: Vec<NodeConfig> = c.nodes.values().map(|n| n.config.clone()).collect();
    for cfg in configs {
        let id = cfg.id;
        c.nodes.insert(id, Node::start(cfg));
    }
    let leader = c.leader().await;
    let r = c.call_retry(leader, get("k050", ReadConsistency::Linearizable)).await;
    assert_eq!(value_of(&r), Some(b"after".to_vec()));
    c.stop_all().await;
}

/// Polls every running node until its history is recorded, and returns the compaction
/// revision it started at (the same on every node).
async fn history_recorded(c: &mut Cluster) -> u64 {
    let until = Instant::now() + DEADLINE;
    loop {
        let mut starts = Vec::new();
        for i in 1..=3 {
            if let Ok(Ok(Response::History(h))) = c.call_as("reader", i, None, Request::History).await
                && h.enabled
            {
                starts.push(h.compacted);
            }
        }
        if starts.len() == 3 && starts.iter().all(|s| *s == starts[0]) {
            return starts[0];
        }
        assert!(Instant::now() < until, "history not recorded on every node: {starts:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn get_at(k: &str, revision: u64) -> Request {
    Request::GetAt { key: k.into(), revision, read: ReadConsistency::Linearizable }
}

fn scan_at(start: &str, end: &str, revision: u64) -> Request {
    Request::ScanAt {
        start: start.into(),
        end: Some(end.into()),
        limit: 100,
        revision,
        read: ReadConsistency::Linearizable,
    }
}

fn pairs(r: &Response) -> Vec<(String, String)> {
    match r {
        Response::ScanPage { kvs, next: None, .. } => kvs
            .iter()
            .map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), String::from_utf8_lossy(&kv.value).into_owned()))
            .collect(),
        other => panic!("not a whole scan page: {other:?}"),
    }
}

/// Multi-version history on a real cluster: every write kind recorded, reads at each old
/// revision answered alike by every member (followers included), a compaction through the log
/// refused to a writer and applied for an admin, then the compacted and future revisions
/// refused with their errors on every member; a member that catches up from a snapshot holds
/// the same history.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_at_a_revision_on_every_member_then_compaction() {
    let raft = RaftConfig { snapshot_entries: 20, compaction_tail_entries: 5, ..fast_raft() };
    let mut c = Cluster::start(raft);
    let leader = c.leader().await;
    // A new cluster raises itself to cluster version 2, which starts the history.
    let start = history_recorded(&mut c).await;

    let rev = |r: Response| match r {
        Response::Put { revision } | Response::Delete { revision, .. } | Response::Txn { revision, .. } => revision,
        Response::DeletedRange { revision, .. } => revision,
        other => panic!("not a write: {other:?}"),
    };
    let r1 = rev(c.call_retry(leader, put("h/a", "1")).await);
    let r2 = rev(c.call_retry(leader, put("h/b", "1")).await);
    let r3 = rev(c.call_retry(leader, put("h/a", "2")).await);
    let r4 = rev(c.call_retry(leader, Request::Delete { key: "h/b".into() }).await);
    let txn = Txn {
        compare: vec![],
        success: vec![
            TxnOp::Put { key: "h/a".into(), value: "3".into() },
            TxnOp::Put { key: "h/c".into(), value: "1".into() },
        ],
        failure: vec![],
    };
    let r5 = rev(c.call_retry(leader, Request::Txn(txn)).await);
    let r6 = rev(c.call_retry(leader, Request::DeleteRange { start: "h/a".into(), end: "h/b".into() }).await);
    assert!(start < r1 && r1 < r2 && r2 < r3 && r3 < r4 && r4 < r5 && r5 < r6);
    let expected: Vec<(u64, Vec<(&str, &str)>)> = vec![
        (r1, vec![("h/a", "1")]),
        (r2, vec![("h/a", "1"), ("h/b", "1")]),
        (r3, vec![("h/a", "2"), ("h/b", "1")]),
        (r4, vec![("h/a", "2")]),
        (r5, vec![("h/a", "3"), ("h/c", "1")]),
        (r6, vec![("h/c", "1")]),
    ];
    for node in 1..=3 {
        for (at, want) in &expected {
            let want: Vec<(String, String)> = want.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            let got = c.call_retry(node, scan_at("h/", "h0", *at)).await;
            assert_eq!(pairs(&got), want, "node {node}, revision {at}");
            let a = c.call_retry(node, get_at("h/a", *at)).await;
            let want_a = want.iter().find(|(k, _)| k == "h/a").map(|(_, v)| v.clone().into_bytes());
            assert_eq!(value_of(&a), want_a, "node {node}: h/a at {at}");
        }
    }

    // Compaction is an admin's: a writer is refused; an admin's goes through the log.
    let denied = c.call_as("writer", leader, None, Request::Compact { revision: r3 }).await.unwrap();
    assert!(matches!(denied, Err(ApiError::Unauthorized { .. })), "{denied:?}");
    let done = c.call_as("admin", leader, None, Request::Compact { revision: r3 }).await.unwrap();
    assert_eq!(done, Ok(Response::Compacted { compacted: r3 }));
    let current = rev(c.call_retry(leader, put("h/z", "1")).await);
    for node in 1..=3 {
        let until = Instant::now() + DEADLINE;
        let refused = loop {
            match c.call_as("reader", node, None, get_at("h/a", r2)).await.unwrap() {
                Err(ApiError::Unavailable(_)) | Ok(_) if Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                other => break other,
            }
        };
        assert_eq!(refused, Err(ApiError::Compacted { revision: r2, compacted: r3 }), "node {node}");
        let scan = c.call_as("reader", node, None, scan_at("h/", "h0", r1)).await.unwrap();
        assert_eq!(scan, Err(ApiError::Compacted { revision: r1, compacted: r3 }), "node {node}");
        let got = c.call_retry(node, get_at("h/a", r3)).await;
        assert_eq!(value_of(&got), Some(b"2".to_vec()), "node {node}: the compaction revision itself is kept");
        let future = c.call_as("reader", node, None, get_at("h/a", current + 1000)).await.unwrap();
        assert!(
            matches!(future, Err(ApiError::FutureRevision { revision, current: now }) if revision == current + 1000 && now >= current),
            "node {node}: {future:?}"
        );
    }

    // A follower that is away while the leader snapshots catches up from a snapshot, and
    // holds the same history (the snapshot carries it with the compaction revision).
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    c.nodes.get_mut(&follower).unwrap().stop().await;
    for i in 0..60 {
        c.call_retry(leader, put("h/c", &format!("v{i}"))).await;
    }
    let config = c.nodes[&follower].config.clone();
    c.nodes.insert(follower, Node::start(config));
    let got = c.call_retry(follower, get_at("h/c", r5)).await;
    assert_eq!(value_of(&got), Some(b"1".to_vec()));
    let mut infos = Vec::new();
    let until = Instant::now() + DEADLINE;
    loop {
        infos.clear();
        for node in 1..=3 {
            if let Ok(Ok(Response::History(h))) = c.call_as("reader", node, None, Request::History).await {
                infos.push(h);
            }
        }
        let same = infos.len() == 3
            && infos.iter().all(|h| {
                (h.revision, h.compacted, h.entries, h.bytes)
                    == (infos[0].revision, infos[0].compacted, infos[0].entries, infos[0].bytes)
            });
        if same {
            break;
        }
        assert!(Instant::now() < until, "histories differ: {infos:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(infos[0].compacted, r3);
    assert!(infos[0].entries >= 60, "{:?}", infos[0]);
    c.stop_all().await;
}

/// The gate: a cluster at cluster version 1 (an upgraded one, before `cluster finalize`)
/// refuses reads at a revision and compaction with the gate's message and records nothing;
/// finalizing starts the history at that point.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_is_refused_below_cluster_version_2_and_starts_at_finalize() {
    let mut c = Cluster::start_with(fast_raft(), 0, true);
    let leader = c.leader().await;
    c.call_retry(leader, put("g", "1")).await;
    c.call_retry(leader, put("g", "2")).await;
    let Response::Versions(v) = c.call_retry(leader, Request::Versions).await else { panic!() };
    assert_eq!(v.cluster_version, 1, "an upgraded cluster waits for finalize");
    let gate = |r: Result<Response, ApiError>| matches!(&r, Err(ApiError::InvalidRequest(w)) if w.contains("needs cluster version 2") && w.contains("finalize"));
    for node in 1..=3 {
        assert!(gate(c.call_as("reader", node, None, get_at("g", 1)).await.unwrap()), "node {node}");
        assert!(gate(c.call_as("reader", node, None, scan_at("a", "z", 1)).await.unwrap()), "node {node}");
        let Ok(Response::History(h)) = c.call_as("reader", node, None, Request::History).await.unwrap() else {
            panic!()
        };
        assert!(!h.enabled && h.entries == 0, "{h:?}");
    }
    assert!(gate(c.call_as("admin", leader, None, Request::Compact { revision: 1 }).await.unwrap()));

    assert_eq!(c.call_as("admin", leader, None, Request::Finalize { version: 2 }).await.unwrap(), Ok(Response::Done));
    let start = history_recorded(&mut c).await;
    let Response::Put { revision } = c.call_retry(leader, put("g", "3")).await else { panic!() };
    // Before finalize nothing was kept: those revisions read as compacted.
    let before = c.call_as("reader", leader, None, get_at("g", start - 1)).await.unwrap();
    assert_eq!(before, Err(ApiError::Compacted { revision: start - 1, compacted: start }));
    assert_eq!(value_of(&c.call_retry(leader, get_at("g", start)).await), Some(b"2".to_vec()));
    assert_eq!(value_of(&c.call_retry(leader, get_at("g", revision)).await), Some(b"3".to_vec()));
    c.stop_all().await;
}
