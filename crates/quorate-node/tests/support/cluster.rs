//! A 3-node cluster of real `quorate` processes on 127.0.0.1 and its `quorate` command lines,
//! shared by the tests of issue 22's features (leases, watches, recipes). Include it after
//! `procs.rs`: `#[path = "support/procs.rs"] mod procs;` then
//! `#[path = "support/cluster.rs"] mod cluster;`.

// Every test binary includes this file and uses a different part of it.
#![allow(dead_code)]

use crate::procs::Nodes;
use serde_json::Value;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_quorate");

pub(crate) struct Cluster {
    pub(crate) dir: PathBuf,
    pub(crate) base: u16,
}

impl Cluster {
    pub(crate) fn create(dir: PathBuf, base: u16) -> Cluster {
        let out = Command::new(BIN)
            .args(["certs", "dev", "--dir"])
            .arg(&dir)
            .args(["--cluster", "e2e", "--nodes", "3", "--base-port", &base.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Cluster { dir, base }
    }

    pub(crate) fn peers(&self) -> String {
        (0..3).map(|i| format!("{}=127.0.0.1:{}", i + 1, self.base + i)).collect::<Vec<_>>().join(",")
    }

    pub(crate) fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.join("data").join(format!("node-{id}"))
    }

    pub(crate) fn start(&self) -> Nodes {
        Nodes((1..=3).map(|id| self.start_one(id)).collect())
    }

    pub(crate) fn start_one(&self, id: u64) -> Child {
        let log = std::fs::File::options().create(true).append(true).open(self.dir.join(format!("node-{id}.log")));
        let log = log.unwrap();
        Command::new(BIN)
            .args(["node", "start", "--config"])
            .arg(self.dir.join(format!("node-{id}.toml")))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("QUORATE_CERTS", self.dir.join("certs"))
            .env("QUORATE_CLUSTER", "e2e")
            .env("QUORATE_ENDPOINTS", self.peers())
            .env("QUORATE_TIMEOUT", "10")
            .stdin(Stdio::null());
        c
    }

    pub(crate) fn cli(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "quorate {args:?} failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        stdout
    }

    pub(crate) fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        let out = self.ok(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("quorate {args:?} printed no JSON ({e}): {out}"))
    }

    pub(crate) fn eventually(&self, args: &[&str]) -> String {
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

    pub(crate) fn wait_cluster_version(&self, version: u32) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.cli(&["cluster", "status"]);
            if String::from_utf8_lossy(&status.stdout).contains(&format!("cluster version {version}")) {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster did not reach version {version}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub(crate) fn leader(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(out) = self.command(&["-o", "json", "cluster", "status"]).output()
                && let Ok(status) = serde_json::from_slice::<Value>(&out.stdout)
                && let Some(l) = status["nodes"].as_array().and_then(|n| n.iter().find(|n| n["role"] == "leader"))
            {
                return l["id"].as_u64().unwrap();
            }
            assert!(Instant::now() < deadline, "no leader");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A `quorate -o json watch ARGS` process whose lines arrive on the receiver.
    pub(crate) fn watcher(&self, args: &[&str]) -> (Child, mpsc::Receiver<Value>) {
        let mut all = vec!["-o", "json", "watch"];
        all.extend_from_slice(args);
        let mut child = self.command(&all).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        (child, rx)
    }
}

/// Kills node `id` (SIGKILL) and reaps it.
pub(crate) fn kill(nodes: &mut Nodes, id: u64) {
    let child = &mut nodes.0[id as usize - 1];
    child.kill().unwrap();
    child.wait().unwrap();
}
