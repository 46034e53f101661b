//! Real `quorate` node processes on 127.0.0.1, shared by the demo, the chaos runs and the
//! release checks: build the binary, write dev certificates and node configurations, start,
//! SIGKILL, SIGSTOP and SIGCONT nodes, and read their logs.
//!
//! Every process started through a [`Cluster`] is killed when the guard is dropped, on error
//! paths too; paused processes are resumed first so that they can die.

use crate::{PROFILE, cargo, root, run};
use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The client certificates every local cluster gets (`quorate certs dev`'s default).
const DEFAULT_CLIENTS: [&str; 3] = ["admin", "writer:write", "reader:read"];

/// Seconds a single CLI call may take (the CLI retries within it).
pub(crate) const CLI_TIMEOUT_S: &str = "10";

/// The cargo target directory (absolute).
pub(crate) fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d),
        Some(d) => root().join(d),
        None => root().join("target"),
    }
}

/// Builds the `quorate` binary with the `ci` profile and returns its path.
pub(crate) fn build_quorate() -> Result<PathBuf> {
    crate::setup()?;
    run(cargo().args(["build", "--locked", "--profile", PROFILE, "-p", "quorate-node", "--bin", "quorate"]))?;
    let bin = target_dir().join(PROFILE).join("quorate");
    if !bin.exists() {
        bail!("the build did not produce {}", bin.display());
    }
    Ok(bin)
}

/// A UDP port on 127.0.0.1 that was free a moment ago, below the kernel's ephemeral range.
pub(crate) fn free_udp_port() -> Result<u16> {
    pick_port(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok())
}

/// A TCP port on 127.0.0.1 that was free a moment ago, below the kernel's ephemeral range.
pub(crate) fn free_tcp_port() -> Result<u16> {
    pick_port(|p| TcpListener::bind(("127.0.0.1", p)).is_ok())
}

/// Lowest port handed to node listeners.
const LISTEN_PORT_MIN: u32 = 10_000;

/// A port for a node's listener, taken from below the kernel's ephemeral range: a node that
/// is killed and restarted must get its port back, and a socket bound to port 0 meanwhile (a
/// client, the fault proxy) could otherwise take it (seen in `chaos ci`: "Address already in
/// use" on restart). Ports are handed out once per process, from an offset that differs
/// between processes.
fn pick_port(free: impl Fn(u16) -> bool) -> Result<u16> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|v| v.parse::<u32>().ok()))
        .unwrap_or(32_768);
    let high = ephemeral_low.clamp(LISTEN_PORT_MIN + 1_000, 65_535);
    let span = high - LISTEN_PORT_MIN;
    let offset = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span.min(5_000) {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = LISTEN_PORT_MIN + offset.wrapping_add(n) % span;
        let port = u16::try_from(port).context("port out of range")?;
        if free(port) {
            return Ok(port);
        }
    }
    bail!("no free port on 127.0.0.1 in {LISTEN_PORT_MIN}..{high}")
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Consensus timing written into every node configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RaftSettings {
    pub(crate) election_timeout_ms: u64,
    pub(crate) heartbeat_ms: u64,
    /// 0: lease reads off (they fall back to linearizable reads).
    pub(crate) lease_clock_drift_ms: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings { election_timeout_ms: 1000, heartbeat_ms: 100, lease_clock_drift_ms: 0 }
    }
}

/// The configuration of one node, as [`Cluster::write_config`] writes it.
#[derive(Clone, Debug)]
pub(crate) struct NodeSpec {
    pub(crate) id: u64,
    pub(crate) listen: SocketAddr,
    /// The addresses this node uses to reach its peers (through a proxy, in chaos runs).
    pub(crate) peers: BTreeMap<u64, String>,
    /// Start empty and wait to be added.
    pub(crate) join: bool,
    pub(crate) metrics_listen: Option<SocketAddr>,
    pub(crate) raft: RaftSettings,
    /// Turn on the node's failpoints (`limits.danger_failpoints`).
    pub(crate) failpoints: bool,
    /// `limits.handshakes_per_source_per_sec` and `limits.handshake_burst_per_source`, both
    /// this (`None`: the node's defaults, 32/s after 128, and nothing written, so that a 0.1.0
    /// node reads the file). Every client of a local cluster connects from 127.0.0.1, one
    /// source: a harness that opens many connections (chaos clients that reconnect after every
    /// fault) raises it to [`LOOPBACK_HANDSHAKES`].
    pub(crate) handshakes_per_source: Option<u32>,
}

/// The handshake rate and burst per source of harnesses whose every client shares 127.0.0.1.
pub(crate) const LOOPBACK_HANDSHAKES: u32 = 100_000;

/// Sets `limits.handshakes_per_source_per_sec` and `limits.handshake_burst_per_source` to `n`
/// in the configuration file at `path` (one written by `quorate certs dev`).
pub(crate) fn raise_handshake_limits(path: &Path, n: u32) -> Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let settings = format!("handshakes_per_source_per_sec = {n}\nhandshake_burst_per_source = {n}\n");
    let text = match text.find("\n[limits]\n") {
        Some(at) => {
            let at = at + "\n[limits]\n".len();
            format!("{}{settings}{}", &text[..at], &text[at..])
        }
        None => format!("{text}\n[limits]\n{settings}"),
    };
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The node processes of one local cluster; kills them all when dropped.
pub(crate) struct Cluster {
    pub(crate) bin: PathBuf,
    pub(crate) dir: PathBuf,
    /// The cluster's name (bound to every certificate).
    pub(crate) name: String,
    pub(crate) nodes: BTreeMap<u64, Child>,
    paused: BTreeSet<u64>,
    /// `RUST_LOG` of the nodes started from now on (default: the caller's `RUST_LOG`, or `info`).
    pub(crate) log_filter: String,
    /// `QUORATE_ENGINE` of the nodes started from now on (`None`: inherited from the caller).
    pub(crate) engine: Option<&'static str>,
}

impl Cluster {
    /// A cluster rooted at `dir`; `clear` removes what a previous run left there.
    pub(crate) fn new(bin: PathBuf, dir: PathBuf, name: &str, clear: bool) -> Result<Cluster> {
        if clear && dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir.join("logs"))?;
        let log_filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
        Ok(Cluster {
            bin,
            dir,
            name: name.to_string(),
            nodes: BTreeMap::new(),
            paused: BTreeSet::new(),
            log_filter,
            engine: None,
        })
    }

    /// `quorate certs dev`: a CA, certificates for nodes `1..=nodes` and the clients `admin`,
    /// `writer`, `reader`, and configurations listening from `base_port` on.
    pub(crate) fn generate_certs(&self, nodes: u64, base_port: u16) -> Result<()> {
        self.generate_certs_for(nodes, base_port, &[])
    }

    /// As [`Cluster::generate_certs`], with client certificates for `extra_clients` too
    /// (`NAME:ROLE` each, as `quorate certs dev --clients` takes them).
    pub(crate) fn generate_certs_for(&self, nodes: u64, base_port: u16, extra_clients: &[String]) -> Result<()> {
        let mut clients: Vec<String> = DEFAULT_CLIENTS.iter().map(|c| (*c).to_string()).collect();
        clients.extend(extra_clients.iter().cloned());
        let out = self.quorate_to(
            &[
                "certs",
                "dev",
                "--dir",
                &self.dir.to_string_lossy(),
                "--cluster",
                &self.name,
                "--nodes",
                &nodes.to_string(),
                "--base-port",
                &base_port.to_string(),
                "--clients",
                &clients.join(","),
                "--force",
            ],
            "",
        )?;
        if !out.status.success() {
            bail!("`quorate certs dev` failed: {}", text(&out.stderr).trim());
        }
        Ok(())
    }

    pub(crate) fn certs_dir(&self) -> PathBuf {
        self.dir.join("certs")
    }

    pub(crate) fn config_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}.toml"))
    }

    pub(crate) fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.join("data").join(format!("node-{id}"))
    }

    pub(crate) fn log_path(&self, id: u64) -> PathBuf {
        self.dir.join("logs").join(format!("node-{id}.log"))
    }

    /// Writes (replaces) the configuration file of `spec.id`.
    pub(crate) fn write_config(&self, spec: &NodeSpec) -> Result<()> {
        let certs = self.certs_dir();
        let mut t = String::new();
        let q = |p: &Path| format!("{:?}", p.to_string_lossy());
        writeln!(t, "id = {}", spec.id)?;
        writeln!(t, "cluster = {:?}", self.name)?;
        writeln!(t, "listen = \"{}\"", spec.listen)?;
        writeln!(t, "data_dir = {}", q(&self.data_dir(spec.id)))?;
        writeln!(t, "join = {}", spec.join)?;
        if let Some(m) = spec.metrics_listen {
            writeln!(t, "metrics_listen = \"{m}\"")?;
        }
        writeln!(t, "\n[peers]")?;
        for (id, addr) in &spec.peers {
            writeln!(t, "{id} = {addr:?}")?;
        }
        writeln!(t, "\n[tls]")?;
        writeln!(t, "ca = {}", q(&certs.join("ca.crt")))?;
        writeln!(t, "cert = {}", q(&certs.join(format!("node-{}.crt", spec.id))))?;
        writeln!(t, "key = {}", q(&certs.join(format!("node-{}.key", spec.id))))?;
        writeln!(t, "\n[raft]")?;
        writeln!(t, "election_timeout_ms = {}", spec.raft.election_timeout_ms)?;
        writeln!(t, "heartbeat_ms = {}", spec.raft.heartbeat_ms)?;
        writeln!(t, "lease_clock_drift_ms = {}", spec.raft.lease_clock_drift_ms)?;
        if spec.failpoints || spec.handshakes_per_source.is_some() {
            writeln!(t, "\n[limits]")?;
        }
        if spec.failpoints {
            writeln!(t, "danger_failpoints = true")?;
        }
        if let Some(n) = spec.handshakes_per_source {
            writeln!(t, "handshakes_per_source_per_sec = {n}")?;
            writeln!(t, "handshake_burst_per_source = {n}")?;
        }
        let path = self.config_path(spec.id);
        std::fs::write(&path, t).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Runs the CLI with `QUORATE_ENDPOINTS=endpoints` (bounded by the CLI's own timeout).
    pub(crate) fn quorate_to(&self, args: &[&str], endpoints: &str) -> Result<Output> {
        self.quorate_command(args, endpoints).output().with_context(|| format!("cannot run {}", self.bin.display()))
    }

    /// The CLI's command as [`Cluster::quorate_to`] runs it, for a caller that starts it and
    /// goes on while it runs.
    pub(crate) fn quorate_command(&self, args: &[&str], endpoints: &str) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .env("QUORATE_CERTS", self.certs_dir())
            .env("QUORATE_CLUSTER", &self.name)
            .env("QUORATE_ENDPOINTS", endpoints)
            .env("QUORATE_TIMEOUT", CLI_TIMEOUT_S)
            .env("QUORATE_USER", "admin")
            .stdin(Stdio::null());
        c
    }

    /// Starts node `id` from its configuration file, appending to its log.
    pub(crate) fn start(&mut self, id: u64) -> Result<()> {
        if self.nodes.contains_key(&id) {
            bail!("node {id} is already running");
        }
        let log = File::options().create(true).append(true).open(self.log_path(id))?;
        let mut cmd = Command::new(&self.bin);
        if let Some(engine) = self.engine {
            cmd.env("QUORATE_ENGINE", engine);
        }
        let child = cmd
            .args(["node", "start", "--config"])
            .arg(self.config_path(id))
            .env("RUST_LOG", &self.log_filter)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start node {id}"))?;
        self.nodes.insert(id, child);
        Ok(())
    }

    pub(crate) fn is_running(&self, id: u64) -> bool {
        self.nodes.contains_key(&id)
    }

    pub(crate) fn is_paused(&self, id: u64) -> bool {
        self.paused.contains(&id)
    }

    /// The process id of each running node.
    pub(crate) fn pids(&self) -> Vec<(u64, u32)> {
        self.nodes.iter().map(|(id, c)| (*id, c.id())).collect()
    }

    /// The ids of the running (possibly paused) nodes.
    pub(crate) fn running(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// SIGKILL (`Child::kill` on Unix), then reap.
    pub(crate) fn kill(&mut self, id: u64) -> Result<()> {
        let mut child = self.nodes.remove(&id).with_context(|| format!("node {id} is not running"))?;
        child.kill().with_context(|| format!("cannot kill node {id}"))?;
        child.wait()?;
        self.paused.remove(&id);
        Ok(())
    }

    fn signal(&self, id: u64, sig: &str) -> Result<()> {
        let child = self.nodes.get(&id).with_context(|| format!("node {id} is not running"))?;
        let status = Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .with_context(|| format!("cannot run kill {sig}"))?;
        if !status.success() {
            bail!("kill {sig} {} failed ({status})", child.id());
        }
        Ok(())
    }

    /// SIGSTOP: the process stays, frozen (its sockets keep receiving into their buffers).
    pub(crate) fn pause(&mut self, id: u64) -> Result<()> {
        self.signal(id, "-STOP")?;
        self.paused.insert(id);
        Ok(())
    }

    /// SIGCONT.
    pub(crate) fn resume(&mut self, id: u64) -> Result<()> {
        self.signal(id, "-CONT")?;
        self.paused.remove(&id);
        Ok(())
    }

    pub(crate) fn stop_all(&mut self) {
        for id in std::mem::take(&mut self.paused) {
            let _ = self.signal(id, "-CONT");
        }
        for (_, mut child) in std::mem::take(&mut self.nodes) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Fails with the node's log tail if a node we started has exited.
    pub(crate) fn check_running(&mut self) -> Result<()> {
        let mut dead = Vec::new();
        for (id, child) in &mut self.nodes {
            if let Some(status) = child.try_wait()? {
                dead.push((*id, status));
            }
        }
        if let Some((id, status)) = dead.first() {
            let tail = self.log_tail(*id, 20);
            self.nodes.remove(id);
            bail!("node {id} exited ({status}); the end of its log:\n{tail}");
        }
        Ok(())
    }

    pub(crate) fn log_tail(&self, id: u64, lines: usize) -> String {
        let Ok(f) = File::open(self.log_path(id)) else { return "(no log)".into() };
        let all: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}
