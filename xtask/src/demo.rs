//! `cargo xtask demo [--smoke]`: a real 3-node cluster on 127.0.0.1, driven through the
//! `quorate` binary. It writes keys, reads them back linearizably, kills the leader with
//! SIGKILL, checks that every acknowledged write survived under the new leader, restarts the
//! killed node and watches it catch up. Without `--smoke` the cluster then keeps running until
//! Ctrl-C; with it, everything stops and one line gives the verdict.
//!
//! Every wait polls with a deadline; every child process is killed when the demo ends, on
//! error paths too (the `Cluster` guard's `Drop`).

pub(crate) use crate::cluster::text;
use crate::cluster::{Cluster, build_quorate, target_dir};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::process::Output;
use std::time::{Duration, Instant};

const NODES: u64 = 3;
const BASE_PORT: u16 = 7001;
const CLUSTER: &str = "demo";
/// Keys written before the crash, and after it (while one node is down).
const KEYS_BEFORE: usize = 100;
const KEYS_AFTER: usize = 20;
/// How long a leader may take to appear (first election, or after the crash).
const LEADER_WAIT: Duration = Duration::from_secs(30);
/// How long the restarted node may take to catch up.
const CATCH_UP_WAIT: Duration = Duration::from_secs(60);
const POLL_EVERY: Duration = Duration::from_millis(200);
/// The interactive demo keeps the cluster up at most this long.
const RUN_MAX: Duration = Duration::from_secs(24 * 3600);

pub(crate) fn demo(args: &[String]) -> Result<()> {
    let smoke = match args {
        [] => false,
        [a] if a == "--smoke" => true,
        _ => bail!("usage: cargo xtask demo [--smoke]"),
    };
    let started = Instant::now();
    let result = run_demo(smoke, started);
    match (&result, smoke) {
        (Ok(summary), true) => println!("demo: PASS — {summary} ({:.0}s)", started.elapsed().as_secs_f64()),
        (Ok(_), false) => {}
        (Err(e), _) => println!("demo: FAIL — {e:#}"),
    }
    result.map(drop)
}

pub(crate) fn step(text: &str) {
    println!("\n== {text}");
}

/// Builds `quorate`, writes dev certificates and configurations under
/// `$CARGO_TARGET_DIR/<dir_name>` (cleared first), starts the nodes and waits for a leader.
/// The returned guard kills every node when dropped.
pub(crate) fn start_cluster(dir_name: &str) -> Result<(Cluster, u64)> {
    start_cluster_with(dir_name, None)
}

/// As [`start_cluster`], with `limits.handshakes_per_source_per_sec` and
/// `limits.handshake_burst_per_source` set to `handshakes` (a benchmark's many clients all
/// connect from 127.0.0.1).
pub(crate) fn start_cluster_with(dir_name: &str, handshakes: Option<u32>) -> Result<(Cluster, u64)> {
    step("setup and build");
    let bin = build_quorate()?;
    let dir = target_dir().join(dir_name);
    for i in 0..NODES {
        let port = BASE_PORT + i as u16;
        UdpSocket::bind(("127.0.0.1", port)).with_context(|| {
            format!("port {port} on 127.0.0.1 is in use; is another demo or cluster running? stop it and try again")
        })?;
    }

    step("certificates and configurations");
    let mut cluster = Cluster::new(bin, dir.clone(), CLUSTER, true)?;
    cluster.generate_certs(NODES, BASE_PORT)?;
    if let Some(n) = handshakes {
        for id in 1..=NODES {
            crate::cluster::raise_handshake_limits(&cluster.config_path(id), n)?;
        }
    }
    println!("certificates in {}, configurations {}", cluster.certs_dir().display(), cluster.config_path(1).display());

    step(&format!("starting {NODES} nodes (logs in {})", dir.join("logs").display()));
    for id in 1..=NODES {
        cluster.start(id)?;
        println!("node {id} started");
    }
    let t = Instant::now();
    let leader = cluster.wait_for_leader(None)?;
    println!("node {leader} was elected leader after {:.1}s", t.elapsed().as_secs_f64());
    Ok((cluster, leader))
}

fn run_demo(smoke: bool, started: Instant) -> Result<String> {
    let (mut cluster, leader) = start_cluster("demo")?;

    step(&format!("writing {KEYS_BEFORE} keys through the CLI"));
    let t = Instant::now();
    let mut acknowledged = BTreeMap::new();
    for i in 0..KEYS_BEFORE {
        let (key, value) = (format!("demo/key-{i:03}"), format!("value-{i:03}"));
        cluster.put(&key, &value)?;
        acknowledged.insert(key, value);
    }
    println!("{KEYS_BEFORE} writes acknowledged in {:.1}s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    cluster.verify(&acknowledged, None)?;
    println!("all {} read back (linearizable) in {:.1}s", acknowledged.len(), t.elapsed().as_secs_f64());
    cluster.print_status()?;

    step(&format!("killing the leader, node {leader}, with SIGKILL"));
    cluster.kill(leader)?;
    println!("node {leader} killed");
    let t = Instant::now();
    let new_leader = cluster.wait_for_leader(Some(leader))?;
    println!("node {new_leader} took over after {:.1}s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    cluster.verify(&acknowledged, None)?;
    println!(
        "every acknowledged write is still there ({} keys, {:.1}s)",
        acknowledged.len(),
        t.elapsed().as_secs_f64()
    );
    for i in 0..KEYS_AFTER {
        let (key, value) = (format!("demo/after-{i:03}"), format!("written-while-node-{leader}-was-down"));
        cluster.put(&key, &value)?;
        acknowledged.insert(key, value);
    }
    println!("{KEYS_AFTER} more writes acknowledged by the two remaining nodes");
    cluster.print_status()?;

    step(&format!("restarting node {leader}"));
    cluster.start(leader)?;
    println!("node {leader} started");
    let t = Instant::now();
    let applied = cluster.wait_for_catch_up(leader)?;
    println!("node {leader} caught up to index {applied} in {:.1}s", t.elapsed().as_secs_f64());
    // Its own copy of the data: stale reads are served locally by the node asked.
    cluster.verify(&acknowledged, Some(leader))?;
    println!("node {leader} serves all {} keys from its own state (stale reads, asked directly)", acknowledged.len());
    cluster.print_status()?;

    let summary = format!(
        "{} acknowledged writes survived the SIGKILL of leader {leader}; node {new_leader} took over; node \
         {leader} caught up",
        acknowledged.len()
    );
    if smoke {
        cluster.stop_all();
        return Ok(summary);
    }
    step("the cluster keeps running; press Ctrl-C to stop it");
    println!("{summary}; demo steps took {:.0}s", started.elapsed().as_secs_f64());
    println!("try:");
    let env = cluster.env_line();
    println!("  {env} {} kv put hello world", cluster.bin.display());
    println!("  {env} {} cluster status", cluster.bin.display());
    println!("  {env} {} bench --clients 8 --duration 5", cluster.bin.display());
    cluster.watch(RUN_MAX)
}

/// One row of `quorate cluster status`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    id: u64,
    role: String,
    leader: Option<u64>,
    commit: u64,
    applied: u64,
}

/// Parses the table of `quorate cluster status` (rows start with a node id; unreachable rows
/// have role `unreachable`).
fn parse_status(out: &str) -> Vec<Row> {
    out.lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let id = cols.first()?.parse().ok()?;
            let role = (*cols.get(2)?).to_string();
            let num = |i: usize| cols.get(i).and_then(|c| c.parse::<u64>().ok());
            Some(Row { id, role, leader: num(4), commit: num(5).unwrap_or(0), applied: num(6).unwrap_or(0) })
        })
        .collect()
}

/// The leader a majority of the cluster agrees on, if any.
fn agreed_leader(rows: &[Row], excluded: Option<u64>) -> Option<u64> {
    let leader = rows.iter().find(|r| r.role == "leader" && Some(r.id) != excluded)?.id;
    let agree = rows.iter().filter(|r| r.leader == Some(leader)).count() as u64;
    (agree > NODES / 2).then_some(leader)
}

/// The demo's view of the cluster: the CLI against its fixed endpoints.
impl Cluster {
    pub(crate) fn endpoints(only: impl Fn(u64) -> bool) -> String {
        (1..=NODES)
            .filter(|i| only(*i))
            .map(|i| format!("{i}=127.0.0.1:{}", BASE_PORT + (i - 1) as u16))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn env_line(&self) -> String {
        format!(
            "QUORATE_CERTS={} QUORATE_CLUSTER={CLUSTER} QUORATE_ENDPOINTS={}",
            self.dir.join("certs").display(),
            Cluster::endpoints(|_| true)
        )
    }

    /// Runs the CLI against every node.
    pub(crate) fn quorate(&self, args: &[&str]) -> Result<Output> {
        self.quorate_to(args, &Cluster::endpoints(|_| true))
    }

    /// Runs the CLI against the running nodes, as a client configured with the live members
    /// would (a fresh CLI process knows no leader, and each dead endpoint it tries first costs
    /// a connection timeout).
    fn quorate_live(&self, args: &[&str]) -> Result<Output> {
        self.quorate_to(args, &Cluster::endpoints(|i| self.is_running(i)))
    }

    fn status(&self) -> Result<(Vec<Row>, String)> {
        let out = self.quorate(&["cluster", "status"])?;
        let stdout = text(&out.stdout);
        Ok((parse_status(&stdout), stdout))
    }

    fn print_status(&mut self) -> Result<()> {
        self.check_running()?;
        let (_, table) = self.status()?;
        println!("$ quorate cluster status\n{}", table.trim_end());
        Ok(())
    }

    fn wait_for_leader(&mut self, excluded: Option<u64>) -> Result<u64> {
        let deadline = Instant::now() + LEADER_WAIT;
        let mut last = String::new();
        while Instant::now() < deadline {
            self.check_running()?;
            let (rows, table) = self.status()?;
            if let Some(leader) = agreed_leader(&rows, excluded) {
                return Ok(leader);
            }
            last = table;
            std::thread::sleep(POLL_EVERY);
        }
        bail!("no leader within {}s; the last status:\n{last}\n{}", LEADER_WAIT.as_secs(), self.log_tails())
    }

    fn log_tails(&self) -> String {
        (1..=NODES).map(|i| format!("--- node {i} log:\n{}", self.log_tail(i, 10))).collect::<Vec<_>>().join("\n")
    }

    /// Waits until `node` has applied everything the leader had committed when it restarted.
    fn wait_for_catch_up(&mut self, node: u64) -> Result<u64> {
        let (rows, _) = self.status()?;
        let target = rows.iter().filter(|r| r.role == "leader").map(|r| r.commit).max().unwrap_or(0);
        let deadline = Instant::now() + CATCH_UP_WAIT;
        let mut last = String::new();
        while Instant::now() < deadline {
            self.check_running()?;
            let (rows, table) = self.status()?;
            if let Some(r) = rows.iter().find(|r| r.id == node && r.role != "unreachable")
                && r.applied >= target
                && target > 0
            {
                return Ok(r.applied);
            }
            last = table;
            std::thread::sleep(POLL_EVERY);
        }
        bail!("node {node} did not reach index {target} within {}s; the last status:\n{last}", CATCH_UP_WAIT.as_secs())
    }

    fn put(&mut self, key: &str, value: &str) -> Result<()> {
        let out = self.quorate_live(&["kv", "put", key, value])?;
        if !out.status.success() {
            self.check_running()?;
            bail!("writing {key} failed: {}", text(&out.stderr).trim());
        }
        Ok(())
    }

    /// Reads every key: linearizably through any node, or (with `at`) stale from that node only.
    fn verify(&mut self, expected: &BTreeMap<String, String>, at: Option<u64>) -> Result<()> {
        let consistency = if at.is_some() { "stale" } else { "linearizable" };
        for (key, value) in expected {
            let args = ["kv", "get", key, "--consistency", consistency];
            let out = match at {
                Some(node) => self.quorate_to(&args, &Cluster::endpoints(|i| i == node))?,
                None => self.quorate_live(&args)?,
            };
            let got = text(&out.stdout);
            if !out.status.success() || got.trim_end_matches('\n') != value {
                self.check_running()?;
                bail!(
                    "LOST WRITE: {key} should be {value:?}, a {consistency} read{} returned {:?} ({})",
                    at.map_or(String::new(), |n| format!(" at node {n}")),
                    got.trim_end(),
                    text(&out.stderr).trim()
                );
            }
        }
        Ok(())
    }

    /// Keeps the cluster up until Ctrl-C (which reaches the nodes too) or `limit`.
    fn watch(&mut self, limit: Duration) -> Result<String> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            self.check_running()?;
            std::thread::sleep(Duration::from_secs(1));
        }
        Ok("stopped after the time limit".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_status_table() {
        let out = "ID  ADDRESS         ROLE         TERM  LEADER  COMMIT  APPLIED  LAST  SNAPSHOT  CONFIG-INDEX  CONFIG\n\
                   1   127.0.0.1:7001  leader       2     1       12      12       12    0         1             voters=1,2,3\n\
                   2   127.0.0.1:7002  follower     2     1       12      11       12    0         1             voters=1,2,3\n\
                   3   127.0.0.1:7003  unreachable  -     -       -       -        -     -         -             -\n\
                   node 3 at 127.0.0.1:7003: cannot connect\n";
        let rows = parse_status(out);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0], Row { id: 1, role: "leader".into(), leader: Some(1), commit: 12, applied: 12 });
        assert_eq!(rows[2].role, "unreachable");
        assert_eq!(rows[2].leader, None);
        assert_eq!(agreed_leader(&rows, None), Some(1));
        assert_eq!(agreed_leader(&rows, Some(1)), None);
        assert_eq!(agreed_leader(&rows[..1], None), None, "one vote is not a majority of three");
    }
}
