//! The flight recorder on real `quorate` processes: a 3-node cluster elects a leader, takes
//! writes, loses a node (another election if it led), takes more writes; each surviving
//! node's recording, fetched with `quorate debug flight-dump`, replays exactly with
//! `quorate replay`. An edited recording diverges; a truncated or garbage file is refused.

use quorate_node::flight;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

#[path = "support/procs.rs"]
mod procs;
use procs::{Nodes, free_base_port};

const BIN: &str = env!("CARGO_BIN_EXE_quorate");

fn cli(dir: &Path, endpoints: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("QUORATE_CERTS", dir.join("certs"))
        .env("QUORATE_CLUSTER", "e2e")
        .env("QUORATE_ENDPOINTS", endpoints)
        .env("QUORATE_TIMEOUT", "10")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "failed: {s}{}", String::from_utf8_lossy(&out.stderr));
    s
}

fn eventually(dir: &Path, endpoints: &str, args: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = cli(dir, endpoints, args);
        if out.status.success() {
            return;
        }
        assert!(Instant::now() < deadline, "{args:?} never succeeded: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn recordings_of_a_real_cluster_replay_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    let base = free_base_port(40_000);
    let endpoints: String = (0..3).map(|i| format!("{}=127.0.0.1:{}", i + 1, base + i)).collect::<Vec<_>>().join(",");
    let out = Command::new(BIN)
        .args(["certs", "dev", "--dir"])
        .arg(&dir)
        .args(["--cluster", "e2e", "--nodes", "3", "--base-port", &base.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let log = std::fs::File::create(dir.join(format!("node-{id}.log"))).unwrap();
        nodes.push(
            Command::new(BIN)
                .args(["node", "start", "--config"])
                .arg(dir.join(format!("node-{id}.toml")))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }
    let mut nodes = Nodes(nodes);

    eventually(&dir, &endpoints, &["kv", "put", "k-0", "v"]);
    for i in 1..20 {
        ok(&cli(&dir, &endpoints, &["kv", "put", &format!("k-{i}"), "v"]));
    }
    // Node 1 goes away (a new election if it led); the other two go on.
    let _ = nodes.0[0].kill();
    let _ = nodes.0[0].wait();
    eventually(&dir, &endpoints, &["kv", "put", "after", "v"]);
    for i in 0..10 {
        ok(&cli(&dir, &endpoints, &["kv", "put", &format!("after-{i}"), "v"]));
        ok(&cli(&dir, &endpoints, &["kv", "get", &format!("after-{i}")]));
    }

    let data = |id: u32| -> PathBuf { dir.join("data").join(format!("node-{id}")) };
    let mut recordings = Vec::new();
    for id in [2, 3] {
        let file = tmp.path().join(format!("node-{id}.qflt"));
        let out = Command::new(BIN)
            .args(["debug", "flight-dump", "--data-dir"])
            .arg(data(id))
            .arg("--out")
            .arg(&file)
            .output()
            .unwrap();
        ok(&out);
        let out = Command::new(BIN).arg("replay").arg(&file).output().unwrap();
        let said = ok(&out);
        assert!(said.contains("outputs match"), "{said}");
        let dump = flight::read_dump(&file).unwrap();
        assert!(dump.inputs.len() > 100, "node {id}: {} inputs", dump.inputs.len());
        recordings.push((file, dump));
    }
    drop(nodes);

    // An edited recording (one received message removed) is reported as divergent.
    let (file, dump) = &recordings[0];
    let mut edited = dump.clone();
    let k =
        edited.inputs.iter().position(|i| matches!(i, flight::Input::Message { .. })).expect("a message was recorded");
    edited.inputs.remove(k);
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
