//! The flight recorder on real `quorate` processes: a 3-node cluster with a small recorder
//! budget (`limits.flight_recorder_mb = 1`) and frequent snapshots takes a load, loses a node
//! (another election if it led) and takes more load until every surviving node's ring has
//! wrapped (its oldest inputs dropped). Each surviving node's recording — requested with the
//! admin request `quorate debug flight-dump --node ID` — starts at a later checkpoint and
//! replays exactly with `quorate replay`; so does one asked for through the data directory. A
//! writer may not ask; an edited recording diverges; a truncated or garbage file is refused.
//!
//! And a runtime invariant violation seen by real nodes of both engines (node 1 on the driver,
//! nodes 2 and 3 on the runtime): node 3 sends its peers corrupted applied-hash samples (a
//! failpoint); the peers count a `cross_replica_hash` violation on their `/metrics`, log the
//! evidence and dump a flight recording that replays, and every true sample matches across
//! the engines.

use quorate_node::config::{Engine, NodeConfig};
use quorate_node::flight;
use quorate_telemetry::http::get_blocking;
use quorate_telemetry::names as n;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

#[path = "support/procs.rs"]
mod procs;
use procs::{Nodes, free_base_port};

#[path = "support/cluster.rs"]
mod cluster;
use cluster::{BIN, Cluster};

/// Load rounds before every surviving ring must have wrapped.
const ROUNDS_MAX: usize = 8;

fn ok(out: &Output) -> String {
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "failed: {s}{}", String::from_utf8_lossy(&out.stderr));
    s
}

/// A bounded closed-loop load: mostly writes.
fn load(c: &Cluster) {
    let args = [
        "bench",
        "--duration",
        "4",
        "--clients",
        "4",
        "--read-ratio",
        "0.2",
        "--ops-max",
        "20000",
        "--value-size",
        "64",
        "--keys",
        "200",
    ];
    ok(&c.cli(&args));
}

/// Asks node `id` for its recording over the client API, copied to `file`.
fn dump(c: &Cluster, id: u32, file: &Path) -> flight::Dump {
    let out = c.cli(&["debug", "flight-dump", "--node", &id.to_string(), "--out", &file.to_string_lossy()]);
    let said = ok(&out);
    assert!(said.contains("inputs"), "{said}");
    flight::read_dump(file).unwrap()
}

fn replays(file: &Path) {
    let out = Command::new(BIN).arg("replay").arg(file).output().unwrap();
    let said = ok(&out);
    assert!(said.contains("outputs match") && said.contains("from a checkpoint"), "{said}");
}

/// Three `quorate` node processes on 127.0.0.1 from `certs dev` configurations under `dir`,
/// each edited by `edit` (with its id) first; their logs go to `dir/node-N.log`. Returns the
/// cluster, the guard and the configurations as started.
fn start_cluster(dir: &Path, edit: impl Fn(u64, &mut NodeConfig)) -> (Cluster, Nodes, Vec<NodeConfig>) {
    let c = Cluster::create(dir.to_path_buf(), free_base_port());
    let configs = c.edit_configs(edit);
    let nodes = c.start();
    (c, nodes, configs)
}

#[test]
fn wrapped_recordings_of_a_real_cluster_replay_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    // A small ring (1 MiB) and frequent snapshots (the checkpoints' log stays short).
    let (c, mut nodes, _) = start_cluster(&dir, |_, config| {
        config.limits.flight_recorder_mb = 1;
        config.raft.snapshot_entries = 500;
        config.raft.compaction_tail_entries = 100;
    });

    c.eventually(&["kv", "put", "k-0", "v"]);
    load(&c);
    // Node 1 goes away (a new election if it led); the other two go on until both rings wrap.
    let _ = nodes.0[0].kill();
    let _ = nodes.0[0].wait();
    c.eventually(&["kv", "put", "after", "v"]);
    let mut recordings = Vec::new();
    for round in 1..=ROUNDS_MAX {
        load(&c);
        recordings.clear();
        for id in [2, 3] {
            let file = tmp.path().join(format!("node-{id}.qflt"));
            let d = dump(&c, id, &file);
            recordings.push((id, file, d));
        }
        if recordings.iter().all(|(_, _, d)| d.header.first_input > 0) {
            break;
        }
        assert!(
            round < ROUNDS_MAX,
            "the rings never wrapped: {:?}",
            recordings.iter().map(|r| &r.2.header).collect::<Vec<_>>()
        );
    }
    for (id, file, d) in &recordings {
        let Some(flight::Origin::Checkpoint(cp)) = &d.origin else {
            panic!("node {id}: no checkpoint: {}", d.header.note)
        };
        assert_eq!(cp.at, d.header.first_input, "node {id}");
        assert!(d.inputs.len() > 1000, "node {id}: {} inputs", d.inputs.len());
        assert_eq!(d.header.reason, "request");
        replays(file);
    }
    // A dump is an admin request: a writer's certificate is refused.
    let out = Command::new(BIN)
        .args(["debug", "flight-dump", "--node", "2"])
        .env("QUORATE_CERTS", dir.join("certs"))
        .env("QUORATE_CLUSTER", "e2e")
        .env("QUORATE_ENDPOINTS", c.peers())
        .env("QUORATE_USER", "writer")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Admin"), "{err}");
    // The fallback through the data directory.
    let via_file = tmp.path().join("node-2-file.qflt");
    let out = Command::new(BIN)
        .args(["debug", "flight-dump", "--data-dir"])
        .arg(dir.join("data").join("node-2"))
        .arg("--out")
        .arg(&via_file)
        .output()
        .unwrap();
    ok(&out);
    replays(&via_file);
    drop(nodes);

    // An edited recording (one Ready's recorded digest changed) is reported as divergent.
    let (_, file, dump) = &recordings[0];
    let mut edited = dump.clone();
    let k = edited.inputs.iter().position(|i| matches!(i, flight::Input::Ready { .. })).expect("a Ready");
    if let flight::Input::Ready { digest } = &mut edited.inputs[k] {
        *digest ^= 1;
    }
    let tampered = tmp.path().join("tampered.qflt");
    std::fs::write(&tampered, flight::encode_dump(&edited)).unwrap();
    let out = Command::new(BIN).arg("replay").arg(&tampered).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("DIVERGED"), "{}", String::from_utf8_lossy(&out.stdout));

    // Truncated and garbage files: a clear error, exit 1, no panic.
    let bytes = std::fs::read(file).unwrap();
    let cut = tmp.path().join("cut.qflt");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let garbage = tmp.path().join("garbage.qflt");
    std::fs::write(&garbage, b"this is not a recording at all").unwrap();
    for f in [&cut, &garbage] {
        let out = Command::new(BIN).arg("replay").arg(f).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not a valid flight recording") && !err.contains("panicked"), "{err}");
    }
}

/// The value of one series on the node's `/metrics` (absent: `None`).
fn metric(addr: SocketAddr, series: &str) -> Option<f64> {
    let body = get_blocking(addr, "/metrics", Duration::from_secs(5), 4 << 20).ok()?.1;
    body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn a_hash_mismatch_between_real_nodes_is_counted_and_dumped() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    let (c, nodes, configs) = start_cluster(&dir, |id, config| {
        config.metrics_listen = Some(TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap());
        // Node 3 is the one whose samples go wrong.
        config.limits.danger_failpoints = id == 3;
        if id > 1 {
            config.engine = Engine::Runtime;
        }
    });
    let metrics: Vec<SocketAddr> = configs.iter().map(|c| c.metrics_listen.expect("set above")).collect();
    let data_dirs: Vec<PathBuf> = configs.iter().map(|c| c.data_dir.clone()).collect();
    c.eventually(&["kv", "put", "k-0", "v"]);
    std::fs::write(data_dirs[2].join("failpoints.toml"), "corrupt_hash_samples = true\n").unwrap();

    let series = format!("{}{{invariant=\"{}\"}}", n::INVARIANT_VIOLATIONS_TOTAL, n::invariant::CROSS_REPLICA_HASH);
    let violations = |id: usize| metric(metrics[id - 1], &series);
    assert_eq!(violations(1), Some(0.0), "exported at zero before anything went wrong");
    // True samples compared: by node 3 (runtime) of both engines', by node 2 (runtime) of
    // node 1's (driver) and the other way.
    let checks = |peer: u64| format!("{}{{peer=\"{peer}\"}}", n::APPLIED_HASH_CHECKS_TOTAL);
    let compared = |node: usize, peer: u64| metric(metrics[node - 1], &checks(peer));
    let pairs = [(3, 1), (3, 2), (2, 1), (1, 2)];
    let mut seen = false;
    for _ in 0..ROUNDS_MAX {
        // Every load fills about two hash windows of 1024 entries; samples go out every 2 s.
        load(&c);
        if violations(1).is_some_and(|v| v >= 1.0)
            && violations(2).is_some_and(|v| v >= 1.0)
            && pairs.iter().all(|&(node, peer)| compared(node, peer).is_some_and(|v| v >= 1.0))
        {
            seen = true;
            break;
        }
    }
    let checked: Vec<_> = pairs.iter().map(|&(node, peer)| ((node, peer), compared(node, peer))).collect();
    assert!(
        seen,
        "nodes 1 and 2 never counted the corrupted samples ({:?} {:?}), or true samples were not compared: {checked:?}",
        violations(1),
        violations(2)
    );
    // They match, across engines: node 3 counts no violation.
    assert_eq!(violations(3), Some(0.0));
    drop(nodes);

    for id in [1usize, 2] {
        let log = std::fs::read_to_string(dir.join(format!("node-{id}.log"))).unwrap();
        assert!(
            log.contains(n::invariant::CROSS_REPLICA_HASH) && log.contains("peer 3"),
            "node {id} logged no evidence"
        );
        // The violation dumped a recording, and it replays.
        let flight_dir = data_dirs[id - 1].join("flight");
        let dumped: Vec<PathBuf> = std::fs::read_dir(&flight_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "qflt"))
            .filter(|p| flight::read_dump(p).is_ok_and(|d| d.header.reason == "invariant violation"))
            .collect();
        assert!(!dumped.is_empty(), "node {id}: no violation dump in {}", flight_dir.display());
        replays(&dumped[0]);
    }
}
