//! Leases (`quorate lease`) on a real 3-node cluster of `quorate` processes on 127.0.0.1
//! (issue 22): a key attached to a lease that is kept alive outlives the lease's TTL, across a
//! kill of the leader; once the keep-alives stop, it is gone within the documented bound
//! (docs/consistency.md), and a watch sees its deletion.

use serde_json::Value;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[path = "support/procs.rs"]
mod procs;
use procs::free_base_port;
#[path = "support/cluster.rs"]
mod cluster;
use cluster::{Cluster, kill};

/// The lease TTL of the test (twice the minimum, so that a leader change, which takes a few
/// election timeouts of 1 s here, fits well within it).
const TTL_MS: u64 = 6_000;
/// What docs/consistency.md bounds a leased key's life by after its last keep-alive with no
/// leader change: the TTL, the leader's sweep (500 ms) and one commit; plus, here, the start
/// of a `quorate kv get` process per poll.
const AFTER_TTL_SLACK: Duration = Duration::from_millis(2_500);

#[test]
fn a_kept_alive_lease_survives_a_leader_kill_and_its_key_is_deleted_within_the_bound_once_it_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Cluster::create(tmp.path().join("c"), free_base_port());
    let mut nodes = c.start();
    c.eventually(&["kv", "put", "start", "x"]);
    c.wait_cluster_version(2);
    // Below the minimum: a clear refusal.
    let out = c.cli(&["lease", "grant", "100"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("TTL"), "{}", String::from_utf8_lossy(&out.stderr));

    let ttl = TTL_MS.to_string();
    let id = c.json(&["lease", "grant", &ttl])["id"].as_u64().unwrap();
    let lease = id.to_string();
    let put = c.json(&["kv", "put", "--lease", &lease, "l/key", "v"])["revision"].as_u64().unwrap();
    c.ok(&["kv", "put", "l/plain", "p"]);
    let attached = c.json(&["lease", "ttl", &lease]);
    assert_eq!(attached["keys"].as_u64(), Some(1), "{attached}");
    assert_eq!(attached["attached"][0].as_str(), Some("l/key"), "{attached}");
    // The list reads its leases' key counts from the state machine too (on a read worker).
    let listed = c.json(&["lease", "list"]);
    let mine = listed.as_array().unwrap().iter().find(|l| l["id"].as_u64() == Some(id)).cloned();
    assert_eq!(mine.as_ref().and_then(|l| l["keys"].as_u64()), Some(1), "{listed}");
    let from = (put + 1).to_string();
    let (mut watcher, events) = c.watcher(&["l/", "--prefix", "--rev", &from]);

    // Keep it alive for well over two TTLs, and kill the leader in the middle of it.
    let keep_ms = 3 * TTL_MS;
    let keeper = c
        .command(&["-o", "json", "lease", "keepalive", &lease, "--duration-ms", &keep_ms.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let leader = c.leader();
    // Past one TTL of keep-alives, the key is there.
    while started.elapsed() < Duration::from_millis(TTL_MS + 1_000) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(c.cli(&["kv", "get", "l/key"]).status.success(), "a kept-alive key outlives its TTL");
    kill(&mut nodes, leader);
    let deadline = Instant::now() + Duration::from_secs(30);
    let new_leader = loop {
        let l = c.leader();
        if l != leader {
            break l;
        }
        assert!(Instant::now() < deadline, "no new leader");
    };
    let keeper_out = keeper.wait_with_output().unwrap();
    // At or after the last keep-alive: the bound from it holds from here too.
    let stopped = Instant::now();
    let report = String::from_utf8_lossy(&keeper_out.stdout).into_owned();
    assert!(
        keeper_out.status.success(),
        "the keep-alive held across the leader kill (new leader {new_leader}): {report}{}",
        String::from_utf8_lossy(&keeper_out.stderr)
    );
    assert!(c.cli(&["kv", "get", "l/key"]).status.success(), "the key outlived the leader kill");
    nodes.0[leader as usize - 1] = c.start_one(leader);

    // The keep-alives stopped: the key goes within the bound, the plain key stays.
    let bound = Duration::from_millis(TTL_MS) + AFTER_TTL_SLACK;
    loop {
        let out = c.cli(&["kv", "get", "l/key"]);
        if out.status.code() == Some(3) {
            break;
        }
        assert!(stopped.elapsed() < bound, "the leased key outlived its last keep-alive by more than {bound:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let gone_after = stopped.elapsed();
    assert!(c.cli(&["kv", "get", "l/plain"]).status.success());
    let list = c.json(&["lease", "list"]);
    assert!(list.as_array().unwrap().iter().all(|l| l["id"].as_u64() != Some(id)), "{list}");

    // The watch saw the expiry as a delete of the key.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while !seen.iter().any(|v: &Value| v["type"] == "delete" && v["kv"]["key"] == "l/key") {
        assert!(Instant::now() < deadline, "the watch never saw the delete: {seen:?}");
        if let Ok(v) = events.recv_timeout(Duration::from_millis(200)) {
            seen.push(v);
        }
    }
    let _ = watcher.kill();
    let _ = watcher.wait();
    eprintln!("leased key gone {gone_after:?} after the keep-alive process stopped (TTL {TTL_MS} ms)");
    // A revoke of the expired lease is refused in clear words.
    let out = c.cli(&["lease", "revoke", &lease]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_revoke_deletes_the_keys_at_one_revision_and_a_watch_sees_them() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Cluster::create(tmp.path().join("c"), free_base_port());
    let _nodes = c.start();
    c.eventually(&["kv", "put", "start", "x"]);
    c.wait_cluster_version(2);
    let id = c.json(&["lease", "grant", "60000"])["id"].as_u64().unwrap().to_string();
    let first = c.json(&["kv", "put", "--lease", &id, "r/a", "1"])["revision"].as_u64().unwrap();
    c.ok(&["kv", "put", "--lease", &id, "r/b", "2"]);
    let from = (first + 2).to_string();
    let (mut watcher, events) = c.watcher(&["r/", "--prefix", "--rev", &from]);
    let revoked = c.json(&["lease", "revoke", &id]);
    assert_eq!(revoked["deleted"].as_u64(), Some(2), "{revoked}");
    let at = revoked["revision"].as_u64().unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 2 {
        assert!(Instant::now() < deadline, "the watch saw {seen:?}");
        if let Ok(v) = events.recv_timeout(Duration::from_millis(200)) {
            seen.push(v);
        }
    }
    let _ = watcher.kill();
    let _ = watcher.wait();
    for (v, key) in seen.iter().zip(["r/a", "r/b"]) {
        assert_eq!(
            (v["type"].as_str(), v["kv"]["key"].as_str(), v["revision"].as_u64()),
            (Some("delete"), Some(key), Some(at))
        );
    }
    assert_eq!(c.cli(&["kv", "get", "r/a"]).status.code(), Some(3));
}
