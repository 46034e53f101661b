//! The `quorate` CLI against a real 3-node cluster of `quorate` processes on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

#[path = "support/procs.rs"]
mod procs;
use procs::{Nodes, free_base_port};

const BIN: &str = env!("CARGO_BIN_EXE_quorate");

struct Env {
    dir: PathBuf,
    endpoints: String,
}

impl Env {
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("QUORATE_CERTS", self.dir.join("certs"))
            .env("QUORATE_CLUSTER", "e2e")
            .env("QUORATE_ENDPOINTS", &self.endpoints)
            .env("QUORATE_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "quorate {args:?} failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        stdout
    }
}

fn start(dir: &Path) -> Nodes {
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let log = std::fs::File::create(dir.join(format!("node-{id}.log"))).unwrap();
        let child = Command::new(BIN)
            .args(["node", "start", "--config"])
            .arg(dir.join(format!("node-{id}.toml")))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        nodes.push(child);
    }
    Nodes(nodes)
}

#[test]
fn cli_against_a_three_node_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    let base = free_base_port();
    let env = Env {
        dir: dir.clone(),
        endpoints: (0..3).map(|i| format!("{}=127.0.0.1:{}", i + 1, base + i)).collect::<Vec<_>>().join(","),
    };
    let out = env.cli(&[
        "certs",
        "dev",
        "--dir",
        &dir.to_string_lossy(),
        "--cluster",
        "e2e",
        "--nodes",
        "3",
        "--base-port",
        &base.to_string(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _nodes = start(&dir);

    // The first write waits for an election (the client retries within its timeout).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = env.cli(&["kv", "put", "greeting", "hello"]);
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "no write succeeded: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(env.ok(&["kv", "get", "greeting"]), "hello\n");
    assert_eq!(env.ok(&["kv", "get", "greeting", "--consistency", "lease"]), "hello\n");

    let missing = env.cli(&["kv", "get", "nothing-here"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));

    env.ok(&["kv", "cas", "greeting", "hi", "--expected", "hello"]);
    let refused = env.cli(&["kv", "cas", "greeting", "x", "--expected", "hello"]);
    assert_eq!(refused.status.code(), Some(1));
    env.ok(&["kv", "cas", "fresh", "1", "--absent"]);

    let txn = env.ok(&["kv", "txn", "if value(fresh) == 1; then put fresh 2; then get greeting; else get fresh"]);
    assert!(txn.starts_with("succeeded"), "{txn}");
    assert!(txn.contains("greeting=hi"), "{txn}");

    env.ok(&["kv", "put", "user/a", "1"]);
    env.ok(&["kv", "put", "user/b", "2"]);
    assert_eq!(env.ok(&["kv", "scan", "--prefix", "user/"]), "user/a=1\nuser/b=2\n");
    env.ok(&["kv", "del", "user/a"]);
    assert_eq!(env.ok(&["kv", "scan", "--prefix", "user/"]), "user/b=2\n");

    // A new cluster is raised to the newest cluster version on its own (no `cluster finalize`):
    // its leader proposes it once every member is connected over quorate/2.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = env.ok(&["cluster", "status"]);
        if status.contains(&format!("cluster version {}", quorate_api::CLUSTER_VERSION)) {
            break;
        }
        assert!(Instant::now() < deadline, "a new cluster stayed below its cluster version:\n{status}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // So a version-2 request works without finalize.
    env.ok(&["kv", "put", "range/a", "1"]);
    env.ok(&["kv", "put", "range/b", "2"]);
    env.ok(&["kv", "del-range", "range/", "range0"]);
    assert_eq!(env.ok(&["kv", "scan", "--prefix", "range/"]), "");

    let status = env.ok(&["cluster", "status"]);
    assert_eq!(status.lines().filter(|l| l.contains(" leader ")).count(), 1, "{status}");
    let members = env.ok(&["member", "list"]);
    assert_eq!(members.lines().filter(|l| l.contains("voter")).count(), 3, "{members}");

    // A usage error exits with 2, a failure with 1.
    assert_eq!(env.cli(&["kv", "get"]).status.code(), Some(2));
    let reader = Command::new(BIN)
        .args(["kv", "put", "k", "v", "--user", "reader"])
        .env("QUORATE_CERTS", dir.join("certs"))
        .env("QUORATE_CLUSTER", "e2e")
        .env("QUORATE_ENDPOINTS", &env.endpoints)
        .output()
        .unwrap();
    assert_eq!(reader.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&reader.stderr).contains("role"), "{}", String::from_utf8_lossy(&reader.stderr));
}
