//! A 3-node cluster of real `quorate` processes on 127.0.0.1 and its `quorate` command lines,
//! shared by the tests that run one (leases, watches, recipes, saves and restores, disk faults,
//! boundaries, flight recordings). Include it after `procs.rs`:
//! `#[path = "support/procs.rs"] mod procs;` then `#[path = "support/cluster.rs"] mod cluster;`.
//!
//! The knobs a test needs are here rather than in a copy: the cluster's name and extra
//! `certs dev` arguments ([`Cluster::create_as`]), each node's configuration edited by a closure
//! ([`Cluster::edit_configs`]), extra `node start` arguments ([`Cluster::start_with`]), and
//! nodes that a test stops and starts again ([`Slots`]).

// Every test binary includes this file and uses a different part of it.
#![allow(dead_code)]

use crate::procs::Nodes;
use quorate_node::config::NodeConfig;
use serde_json::Value;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_quorate");

/// The cluster's files under `dir` (certificates, configurations, data, logs) and its ports.
pub(crate) struct Cluster {
    pub(crate) dir: PathBuf,
    pub(crate) base: u16,
    /// The cluster's name (`--cluster`).
    pub(crate) name: &'static str,
}

impl Cluster {
    /// Certificates and node configurations of a 3-node cluster "e2e" on `base..base+3`.
    pub(crate) fn create(dir: PathBuf, base: u16) -> Cluster {
        Cluster::create_as(dir, base, "e2e", &[])
    }

    /// [`Cluster::create`] for a cluster named `name`, with `extra` arguments to `certs dev`
    /// (`--clients` …).
    pub(crate) fn create_as(dir: PathBuf, base: u16, name: &'static str, extra: &[&str]) -> Cluster {
        let out = Command::new(BIN)
            .args(["certs", "dev", "--dir"])
            .arg(&dir)
            .args(["--cluster", name, "--nodes", "3", "--base-port", &base.to_string()])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Cluster { dir, base, name }
    }

    /// Edits each node's configuration with `edit` (its id, the configuration as `certs dev`
    /// wrote it) and writes it back; returns the configurations, node 1 first.
    pub(crate) fn edit_configs(&self, edit: impl Fn(u64, &mut NodeConfig)) -> Vec<NodeConfig> {
        let mut configs = Vec::new();
        for id in 1..=3 {
            let path = self.dir.join(format!("node-{id}.toml"));
            let mut config = NodeConfig::from_toml(&std::fs::read_to_string(&path).unwrap()).unwrap();
            edit(id, &mut config);
            std::fs::write(&path, config.to_toml().unwrap()).unwrap();
            configs.push(config);
        }
        configs
    }

    pub(crate) fn peers(&self) -> String {
        (0..3).map(|i| format!("{}=127.0.0.1:{}", i + 1, self.base + i)).collect::<Vec<_>>().join(",")
    }

    /// Node `id` alone, as `QUORATE_ENDPOINTS` or `--endpoints` take it.
    pub(crate) fn endpoint(&self, id: u64) -> String {
        format!("{id}=127.0.0.1:{}", self.base + id as u16 - 1)
    }

    pub(crate) fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.join("data").join(format!("node-{id}"))
    }

    /// Node `id`'s log file (appended to by every start).
    pub(crate) fn log_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}.log"))
    }

    /// Node `id`'s log so far.
    pub(crate) fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }

    pub(crate) fn start(&self) -> Nodes {
        Nodes((1..=3).map(|id| self.start_one(id)).collect())
    }

    pub(crate) fn start_one(&self, id: u64) -> Child {
        self.start_with(id, &[])
    }

    /// Starts node `id` with `extra` arguments to `node start` (`--join` …).
    pub(crate) fn start_with(&self, id: u64, extra: &[&str]) -> Child {
        let log = std::fs::File::options().create(true).append(true).open(self.log_path(id)).unwrap();
        Command::new(BIN)
            .args(["node", "start", "--config"])
            .arg(self.dir.join(format!("node-{id}.toml")))
            .args(extra)
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
            .env("QUORATE_CLUSTER", self.name)
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
            let status = String::from_utf8_lossy(&status.stdout);
            if status.contains(&format!("cluster version {version}")) {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster did not reach version {version}:\n{status}");
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

/// The node processes of a test that stops and starts them again: a slot per node (`None`:
/// not running); every one is killed on every path, panics included.
pub(crate) struct Slots(Vec<Option<Child>>);

impl Slots {
    /// Every node of `cluster` started, each in its slot.
    pub(crate) fn start(cluster: &Cluster) -> Slots {
        let mut slots = Slots(vec![None, None, None]);
        for id in 1..=3 {
            slots.spawn(cluster, id);
        }
        slots
    }

    /// Starts node `id` (again), appending to its log.
    pub(crate) fn spawn(&mut self, cluster: &Cluster, id: u64) {
        self.0[id as usize - 1] = Some(cluster.start_one(id));
    }

    /// Kills node `id` (SIGKILL), if it runs, and reaps it.
    pub(crate) fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.0[id as usize - 1].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Node `id`'s slot.
    pub(crate) fn slot(&mut self, id: u64) -> &mut Option<Child> {
        &mut self.0[id as usize - 1]
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        for c in self.0.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
