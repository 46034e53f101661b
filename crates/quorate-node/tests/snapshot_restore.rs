//! `quorate snapshot save` on a running 3-node cluster, then `quorate snapshot restore` into
//! three new data directories of a NEW cluster (new certificates, new ports): the new cluster
//! starts from the snapshot, serves the old keys and takes new writes. A damaged file is
//! refused with a clear error and leaves nothing behind. Real `quorate` processes on
//! 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

#[path = "support/procs.rs"]
mod procs;
use procs::{Nodes, free_base_port};

const BIN: &str = env!("CARGO_BIN_EXE_quorate");
const KEYS: usize = 20;

struct Cluster {
    dir: PathBuf,
    base: u16,
}

impl Cluster {
    /// Certificates and node configurations of a 3-node cluster "e2e" on `base..base+3`.
    fn create(dir: PathBuf, base: u16) -> Cluster {
        let out = Command::new(BIN)
            .args(["certs", "dev", "--dir"])
            .arg(&dir)
            .args(["--cluster", "e2e", "--nodes", "3", "--base-port", &base.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Cluster { dir, base }
    }

    fn peers(&self) -> String {
        (0..3).map(|i| format!("{}=127.0.0.1:{}", i + 1, self.base + i)).collect::<Vec<_>>().join(",")
    }

    fn data_dir(&self, id: u16) -> PathBuf {
        self.dir.join("data").join(format!("node-{id}"))
    }

    fn start(&self) -> Nodes {
        let mut nodes = Vec::new();
        for id in 1..=3 {
            let log = std::fs::File::create(self.dir.join(format!("node-{id}.log"))).unwrap();
            let child = Command::new(BIN)
                .args(["node", "start", "--config"])
                .arg(self.dir.join(format!("node-{id}.toml")))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            nodes.push(child);
        }
        Nodes(nodes)
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("QUORATE_CERTS", self.dir.join("certs"))
            .env("QUORATE_CLUSTER", "e2e")
            .env("QUORATE_ENDPOINTS", self.peers())
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

    /// Retries `args` until it succeeds (a fresh cluster first elects a leader).
    fn eventually(&self, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.cli(args);
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            assert!(
                Instant::now() < deadline,
                "quorate {args:?} never succeeded: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn restore(file: &Path, data_dir: &Path, id: u16, peers: &str) -> Output {
    Command::new(BIN)
        .args(["snapshot", "restore", "--from"])
        .arg(file)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--id", &id.to_string(), "--peers", peers])
        .output()
        .unwrap()
}

#[test]
fn save_then_restore_into_a_new_three_node_cluster() {
    let tmp = tempfile::tempdir().unwrap();

    // The old cluster: some keys, then a backup.
    let old = Cluster::create(tmp.path().join("old"), free_base_port());
    let backup = {
        let _nodes = old.start();
        old.eventually(&["kv", "put", "k-0", "v-0"]);
        for i in 1..KEYS {
            old.ok(&["kv", "put", &format!("k-{i}"), &format!("v-{i}")]);
        }
        old.ok(&["kv", "del", "k-0"]);
        let saved = old.ok(&["snapshot", "save"]);
        // "snapshot at index N written to PATH on node X"
        let path = saved.split(" written to ").nth(1).and_then(|r| r.split(" on ").next()).expect(&saved);
        let copy = tmp.path().join("backup.qsnap");
        std::fs::copy(path.trim(), &copy).unwrap();
        copy
    };

    // A damaged copy is refused before anything is created.
    let damaged = tmp.path().join("damaged.qsnap");
    let mut bytes = std::fs::read(&backup).unwrap();
    let at = bytes.len() - 24;
    bytes[at] ^= 0xff;
    std::fs::write(&damaged, bytes).unwrap();
    let scratch = tmp.path().join("scratch");
    let out = restore(&damaged, &scratch, 1, "1=127.0.0.1:1");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot be restored") && err.contains("damaged.qsnap"), "{err}");
    assert!(!scratch.exists(), "nothing left behind");

    // The new cluster: new certificates, new ports, restored data directories.
    let new = Cluster::create(tmp.path().join("new"), free_base_port());
    assert_ne!(new.base, old.base);
    for id in 1..=3 {
        let out = restore(&backup, &new.data_dir(id), id, &new.peers());
        assert!(out.status.success(), "restore of node {id}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("restored node"));
    }
    // A second restore into the same directory is refused.
    let again = restore(&backup, &new.data_dir(1), 1, &new.peers());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));

    let _nodes = new.start();
    assert_eq!(new.eventually(&["kv", "get", "k-1"]), "v-1\n");
    for i in 1..KEYS {
        assert_eq!(new.ok(&["kv", "get", &format!("k-{i}")]), format!("v-{i}\n"));
    }
    assert_eq!(new.cli(&["kv", "get", "k-0"]).status.code(), Some(3), "the delete is restored too (exit 3: not found)");
    new.ok(&["kv", "put", "after-restore", "yes"]);
    assert_eq!(new.ok(&["kv", "get", "after-restore"]), "yes\n");
    let members = new.ok(&["member", "list"]);
    assert_eq!(members.lines().filter(|l| l.contains("voter")).count(), 3, "{members}");
    for i in 0..3u16 {
        assert!(members.contains(&format!("127.0.0.1:{}", new.base + i)), "new addresses: {members}");
    }
}
