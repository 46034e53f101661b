//! Watches (`quorate watch`) on real 3-node clusters of `quorate` processes on 127.0.0.1
//! (issue 22): a watcher on a follower sees every acknowledged write of a concurrent writer
//! exactly once, in revision order, across a leader change and a reconnect to another member;
//! a watch from a compacted revision is refused in clear words; the cluster-version gate; a
//! watch of a quiet key waits out its wait while other keys are written (brief 22C).

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

#[path = "support/procs.rs"]
mod procs;
use procs::free_base_port;
#[path = "support/cluster.rs"]
mod cluster;
use cluster::{Cluster, kill};

/// An event as (revision, key, type, value).
fn event(v: &Value) -> (u64, String, String, String) {
    (
        v["revision"].as_u64().unwrap(),
        v["kv"]["key"].as_str().unwrap().to_string(),
        v["type"].as_str().unwrap().to_string(),
        v["kv"]["value"].as_str().unwrap_or_default().to_string(),
    )
}

#[test]
fn a_watcher_on_a_follower_sees_every_acknowledged_write_once_in_order_across_a_leader_kill_and_a_reconnect() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Cluster::create(tmp.path().join("c"), free_base_port());
    let mut nodes = c.start();
    c.eventually(&["kv", "put", "start", "x"]);
    c.wait_cluster_version(2);
    let start = c.json(&["kv", "put", "start", "y"])["revision"].as_u64().unwrap();
    let leader = c.leader();
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let third = (1..=3).find(|&i| i != leader && i != follower).unwrap();
    let from = (start + 1).to_string();
    let on = follower.to_string();
    let (mut watcher, events) = c.watcher(&["w/", "--prefix", "--rev", &from, "--node", &on]);

    // The writer: acknowledged writes (key, value) -> revision. Faults on the way: the leader
    // killed (a leader change), then restarted; then the member the watcher polls killed (the
    // watcher reconnects to another member), then restarted.
    let mut acknowledged: BTreeMap<u64, (String, String)> = BTreeMap::new();
    let mut seen = Vec::new();
    let drain = |seen: &mut Vec<Value>| {
        while let Ok(v) = events.try_recv() {
            seen.push(v);
        }
    };
    for i in 0..60u64 {
        match i {
            15 => kill(&mut nodes, leader),
            25 => nodes.0[leader as usize - 1] = c.start_one(leader),
            35 => kill(&mut nodes, follower),
            45 => nodes.0[follower as usize - 1] = c.start_one(follower),
            _ => {}
        }
        if i == 20 {
            assert_ne!(c.leader(), leader, "a new leader was elected");
        }
        let (key, value) = (format!("w/{i:03}"), format!("v{i}"));
        let out = c.cli(&["-o", "json", "kv", "put", &key, &value]);
        if out.status.success() {
            let j: Value = serde_json::from_slice(&out.stdout).unwrap();
            acknowledged.insert(j["revision"].as_u64().unwrap(), (key, value));
        }
        drain(&mut seen);
    }
    assert!(acknowledged.len() >= 40, "most writes were acknowledged: {}", acknowledged.len());
    // A last write; the watcher is done once it has seen it.
    let last = c.json(&["kv", "put", "w/zz", "end"])["revision"].as_u64().unwrap();
    acknowledged.insert(last, ("w/zz".into(), "end".into()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !seen.iter().any(|v| v["revision"].as_u64() == Some(last)) {
        assert!(Instant::now() < deadline, "the watcher never saw revision {last}: {} events", seen.len());
        if let Ok(v) = events.recv_timeout(Duration::from_millis(200)) {
            seen.push(v);
        }
    }
    let _ = watcher.kill();
    let _ = watcher.wait();

    let got: Vec<(u64, String, String, String)> = seen.iter().map(event).collect();
    // In revision order, no (revision, key) twice: no duplicate across the reconnect.
    assert!(got.windows(2).all(|p| (p[0].0, &p[0].1) < (p[1].0, &p[1].1)), "in order, no duplicate: {got:?}");
    // Every acknowledged write exactly once, at its revision, with its value.
    for (rev, (key, value)) in &acknowledged {
        let at: Vec<_> = got.iter().filter(|e| e.0 == *rev).collect();
        assert_eq!(at.len(), 1, "revision {rev} ({key}) seen once: {at:?}");
        assert_eq!((&at[0].1, at[0].2.as_str(), &at[0].3), (key, "put", value), "revision {rev}");
    }
    // Nothing outside the range and only the watched prefix; a write that was not acknowledged
    // may show up (its outcome was unknown), but then with the value that writer sent.
    assert!(got.iter().all(|e| e.0 > start && e.1.starts_with("w/")));
    let written: BTreeSet<(String, String)> =
        (0..60u64).map(|i| (format!("w/{i:03}"), format!("v{i}"))).chain([("w/zz".into(), "end".into())]).collect();
    assert!(got.iter().all(|e| written.contains(&(e.1.clone(), e.3.clone()))), "only values that were written");

    // Another member, watched afresh from the same revision: the same events (every member
    // keeps the same index).
    let count = got.len().to_string();
    let out = c.ok(&[
        "-o",
        "json",
        "watch",
        "w/",
        "--prefix",
        "--rev",
        &from,
        "--node",
        &third.to_string(),
        "--count",
        &count,
        "--duration-ms",
        "30000",
    ]);
    let again: Vec<_> = out.lines().map(|l| event(&serde_json::from_str(l).unwrap())).collect();
    assert_eq!(again, got, "node {third} gives the same stream");
    drop(nodes);
}

#[test]
fn a_watch_is_gated_on_the_cluster_version_and_refused_below_the_compaction_revision_in_clear_words() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Cluster::create(tmp.path().join("c"), free_base_port());
    // Empty store directories: no bootstrap marker, the cluster stays at version 1.
    for id in 1..=3 {
        std::fs::create_dir_all(c.data_dir(id).join("store")).unwrap();
    }
    let nodes = c.start();
    c.eventually(&["kv", "put", "k", "v0"]);
    let out = c.cli(&["watch", "k", "--rev", "1", "--count", "1", "--duration-ms", "5000"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("needs cluster version 2"), "the gate: {stderr}");

    c.ok(&["cluster", "finalize"]);
    c.wait_cluster_version(2);
    let first = c.json(&["kv", "put", "k", "v1"])["revision"].as_u64().unwrap();
    for i in 2..=5 {
        c.ok(&["kv", "put", "k", &format!("v{i}")]);
    }
    // From before events were recorded: refused as compacted, saying what to do.
    let out = c.cli(&["watch", "k", "--rev", "1", "--count", "1", "--duration-ms", "5000"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "refused: {stderr}");
    assert!(stderr.contains("are not kept") && stderr.contains("watch from --rev"), "{stderr}");
    // From the first recorded revision: the five puts, with the values they replaced.
    let out = c.ok(&["watch", "k", "--rev", &first.to_string(), "--prev-kv", "--count", "5", "--duration-ms", "10000"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert_eq!(lines[0], format!("PUT k=v1 (revision {first}) was v0"));
    assert_eq!(lines[4], format!("PUT k=v5 (revision {}) was v4", first + 4));
    // Compacted past them: refused, with the revision to resume from.
    let c2 = first + 2;
    c.ok(&["kv", "compact", &c2.to_string()]);
    let out = c.cli(&["watch", "k", "--rev", &first.to_string(), "--count", "1", "--duration-ms", "5000"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "refused: {stderr}");
    assert!(stderr.contains(&format!("watch from --rev {}", c2 + 1)), "{stderr}");
    let out = c.ok(&["watch", "k", "--rev", &(c2 + 1).to_string(), "--count", "2", "--duration-ms", "10000"]);
    assert_eq!(out.lines().count(), 2, "{out}");
    // A quiet key: nothing within the time asked, exit 1 with --count.
    let out = c.cli(&["watch", "quiet", "--count", "1", "--duration-ms", "1500"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    drop(nodes);
}

/// A client of the cluster's members (admin), with a request timeout long enough for the
/// waits below.
fn client(c: &Cluster) -> quorate_client::Client {
    let members = (1..=3u64)
        .map(|id| {
            let path = c.dir.join(format!("node-{id}.toml"));
            let config = quorate_node::config::NodeConfig::from_toml(&std::fs::read_to_string(path).unwrap()).unwrap();
            (quorate_log::NodeId::new(id).unwrap(), config.listen)
        })
        .collect();
    let certs = c.dir.join("certs");
    let tls = quorate_transport::TlsPaths {
        ca: certs.join("ca.crt"),
        cert: certs.join("client-admin.crt"),
        key: certs.join("client-admin.key"),
    };
    let mut cc = quorate_client::ClientConfig::new(quorate_transport::ClusterId::new("e2e").unwrap(), members, tls);
    cc.seed = Some(22);
    cc.request_timeout = Duration::from_secs(20);
    cc.total_timeout = Duration::from_secs(60);
    quorate_client::Client::new(cc).unwrap()
}

/// The waiting rule of `crates/quorate-node/src/watches.rs`: a watch on a quiet key is not
/// answered each time the member's revision moves (a client would poll in a tight loop), only
/// when its wait runs out, with no events; a write to the watched key wakes it at once.
#[test]
fn a_watch_on_a_quiet_key_waits_out_its_wait_while_other_keys_are_written_and_a_write_to_it_wakes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Cluster::create(tmp.path().join("c"), free_base_port());
    let nodes = c.start();
    c.eventually(&["kv", "put", "start", "x"]);
    c.wait_cluster_version(2);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let client = std::sync::Arc::new(client(&c));
    rt.block_on(async {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        // A writer of other keys for as long as the watches below run.
        let writer = {
            let (client, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                let mut written = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && written < 100_000 {
                    client.put(format!("busy/{written}"), "x").await.expect("a write of another key");
                    written += 1;
                }
                written
            })
        };
        let start = client.put("start", "z").await.unwrap();

        // A quiet key: one poll, answered only when its wait runs out, with no events and the
        // revisions the writer moved through covered.
        let wait = Duration::from_millis(2_000);
        let mut options = quorate_client::WatchOptions::key("quiet").from_revision(start + 1);
        options.wait = wait;
        let mut quiet = client.watch(options);
        let asked = Instant::now();
        let batch = quiet.next().await.expect("a progress notification");
        let elapsed = asked.elapsed();
        assert!(batch.events.is_empty(), "nothing was written to the key: {batch:?}");
        assert!(
            elapsed >= wait - Duration::from_millis(100),
            "answered after {elapsed:?}, before its wait of {wait:?} ran out (complete to {}, from {})",
            batch.complete_to,
            start + 1
        );
        assert!(batch.complete_to > start, "the other keys' revisions are covered: {batch:?}");

        // The same key watched with a long wait: a write to it wakes the watch at once.
        let long = Duration::from_millis(9_000);
        let from = quiet.next_revision();
        let mut options = quorate_client::WatchOptions::key("quiet").from_revision(from);
        options.wait = long;
        let watcher = {
            let client = client.clone();
            tokio::spawn(async move {
                let asked = Instant::now();
                let batch = client.watch(options).next().await.expect("the write's event");
                (batch, asked.elapsed())
            })
        };
        let wrote = client.put("quiet", "woken").await.unwrap();
        let (batch, elapsed) = watcher.await.unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let written = writer.await.unwrap();
        assert!(written >= 5, "the other keys were written meanwhile: {written}");
        assert_eq!(batch.events.len(), 1, "the write to the key: {batch:?}");
        assert_eq!((batch.events[0].kv.mod_revision, batch.events[0].kv.value.as_slice()), (wrote, &b"woken"[..]));
        assert!(elapsed < long / 2, "woken by the write, not by its wait running out: {elapsed:?}");
    });
    drop(nodes);
}
