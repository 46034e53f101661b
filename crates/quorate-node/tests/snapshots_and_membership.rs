//! In-process clusters over real QUIC + mutual TLS and RocksDB: a follower that fell behind
//! the leader's compacted log catches up by installing a snapshot (and keeps it across a
//! restart), and membership changes through the client API (add, promote, remove).

#[path = "support/procs.rs"]
mod procs;

#[path = "support/inproc.rs"]
mod inproc;

use inproc::{Cluster, DEADLINE, Node, fast_raft, nid, put};
use quorate_api::{ApiError, MemberKind, ReadConsistency, Request, Response};
use quorate_node::config::RaftConfig;
use std::time::{Duration, Instant};

impl Cluster {
    async fn status(&mut self, node: u64) -> quorate_api::NodeStatus {
        match self.call_retry(node, Request::Status).await {
            Response::Status(s) => s,
            other => panic!("not a status: {other:?}"),
        }
    }

    /// Polls until `node` has applied everything `leader` had committed when this began.
    async fn wait_applied(&mut self, node: u64, leader: u64) {
        let target = self.status(leader).await.commit;
        let until = Instant::now() + DEADLINE;
        while self.status(node).await.applied < target {
            assert!(Instant::now() < until, "node {node} never applied {target}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A local (stale) read of `key` on `node`.
    async fn stale_value(&mut self, node: u64, key: &str) -> Option<Vec<u8>> {
        let body = Request::Get { key: key.into(), read: ReadConsistency::Stale };
        match self.call_retry(node, body).await {
            Response::Get { kv, .. } => kv.map(|kv| kv.value),
            other => panic!("not a get: {other:?}"),
        }
    }
}

const KEYS: usize = 200;
const TAIL: u64 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lagging_follower_installs_a_snapshot() {
    let raft = RaftConfig { snapshot_entries: 20, compaction_tail_entries: TAIL, ..fast_raft() };
    let mut c = Cluster::start(raft);
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
    let mut c = Cluster::start_with(fast_raft(), 1, false);
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
