//! Three `quorate` processes on three "hosts": network namespaces the test creates, joined by a
//! bridge in a fourth, each with its own address and a hosts file the test writes
//! (`ip netns exec` mounts `/etc/netns/NAME/hosts` over `/etc/hosts`). The nodes know each
//! other only by name and listen on `0.0.0.0`. Node 3 then comes back on a new address under
//! the same name, and the others find it there: they resolve the name again before each dial.
//!
//! Needs root and iproute2 (`ip`); without them the test says why on stderr and passes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_quorate");
const PORT: u16 = 7001;
const SUBNET: &str = "10.213.0";

/// The namespaces and hosts files of one run; removed on every path, panics included.
struct Net {
    hub: String,
    hosts: Vec<String>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`ip {}`: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Net {
    /// The hub with its bridge and three hosts on it, or why they cannot be made here.
    fn create() -> Result<Net, String> {
        let uid = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(str::to_string))
            .unwrap_or_default();
        if uid.split_whitespace().nth(1) != Some("0") {
            return Err("not root (network namespaces need CAP_SYS_ADMIN)".into());
        }
        let tag = std::process::id();
        let hub = format!("qh{tag}");
        ip(&["netns", "add", &hub])?;
        let mut net = Net { hub: hub.clone(), hosts: Vec::new() };
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for i in 1..=3 {
            let host = format!("qn{tag}-{i}");
            ip(&["netns", "add", &host])?;
            net.hosts.push(host.clone());
            ip(&["-n", &host, "link", "set", "lo", "up"])?;
            let veth = format!("h{i}");
            ip(&["-n", &hub, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &host])?;
            ip(&["-n", &hub, "link", "set", &veth, "master", "br0"])?;
            ip(&["-n", &hub, "link", "set", &veth, "up"])?;
            ip(&["-n", &host, "addr", "add", &format!("{SUBNET}.{i}/24"), "dev", "eth0"])?;
            ip(&["-n", &host, "link", "set", "eth0", "up"])?;
        }
        Ok(net)
    }

    /// Writes every host's `/etc/hosts` (as `ip netns exec` shows it): `nI.quorate.test` at
    /// `addrs[I-1]`.
    fn write_hosts(&self, addrs: &[String; 3]) {
        let mut text = String::from("127.0.0.1 localhost\n");
        for (i, a) in addrs.iter().enumerate() {
            text.push_str(&format!("{a} n{}.quorate.test\n", i + 1));
        }
        for host in &self.hosts {
            let dir = Path::new("/etc/netns").join(host);
            std::fs::create_dir_all(&dir).expect("create /etc/netns/HOST");
            std::fs::write(dir.join("hosts"), &text).expect("write the hosts file");
        }
    }

    /// `ip netns exec HOST BIN ARGS` (the exec replaces `ip`: the child is the process).
    fn command(&self, host: usize, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.hosts[host - 1], BIN]).args(args);
        c
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for host in &self.hosts {
            let _ = ip(&["netns", "del", host]);
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(host));
        }
        let _ = ip(&["netns", "del", &self.hub]);
    }
}

/// The node processes; killed on every path.
struct Nodes(Vec<Option<Child>>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in self.0.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Run {
    net: Net,
    dir: PathBuf,
    nodes: Nodes,
}

impl Run {
    fn start(&mut self, id: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("node-{id}.log")))
            .expect("log file");
        let config = self.dir.join(format!("node-{id}.toml"));
        let child = self
            .net
            .command(id, &["node", "start", "--config", &config.to_string_lossy()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start a node");
        self.nodes.0[id - 1] = Some(child);
    }

    fn stop(&mut self, id: usize) {
        if let Some(mut c) = self.nodes.0[id - 1].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `quorate ARGS` on host `from`, reaching the members `via` by name.
    fn cli(&self, from: usize, via: &[usize], args: &[&str]) -> Output {
        let endpoints: Vec<String> = via.iter().map(|i| format!("{i}=n{i}.quorate.test:{PORT}")).collect();
        self.net
            .command(from, args)
            .env("QUORATE_CERTS", self.dir.join("certs"))
            .env("QUORATE_CLUSTER", "netns")
            .env("QUORATE_ENDPOINTS", endpoints.join(","))
            .env("QUORATE_TIMEOUT", "5")
            .stdin(Stdio::null())
            .output()
            .expect("run the CLI")
    }

    /// Retries `quorate ARGS` until it succeeds and prints `want` (`None`: anything), bounded.
    fn until(&self, what: &str, from: usize, via: &[usize], args: &[&str], want: Option<&str>) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let out = self.cli(from, via, args);
            if out.status.success() && want.is_none_or(|w| String::from_utf8_lossy(&out.stdout).trim() == w) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: `quorate {}` did not print {want:?} within 90 s; last: {}{}\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn logs(&self) -> String {
        (1..=3)
            .map(|i| {
                let text = std::fs::read_to_string(self.dir.join(format!("node-{i}.log"))).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                format!("--- node {i} (last lines)\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Rewrites `certs dev`'s configuration of node `id`: listen on every interface, peers by name.
fn by_name(path: &Path) {
    let text = std::fs::read_to_string(path).expect("read the configuration");
    let mut config: toml::Table = text.parse().expect("a TOML configuration");
    config.insert("listen".into(), toml::Value::String(format!("0.0.0.0:{PORT}")));
    let mut peers = toml::Table::new();
    for i in 1..=3 {
        peers.insert(i.to_string(), toml::Value::String(format!("n{i}.quorate.test:{PORT}")));
    }
    config.insert("peers".into(), toml::Value::Table(peers));
    config.remove("metrics_listen");
    std::fs::write(path, toml::to_string(&config).expect("encode")).expect("write the configuration");
}

#[test]
fn a_node_that_comes_back_on_a_new_address_is_found_by_its_name() {
    let net = match Net::create() {
        Ok(net) => net,
        Err(why) => {
            eprintln!("SKIPPED a_node_that_comes_back_on_a_new_address_is_found_by_its_name: {why}");
            return;
        }
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("cluster");
    let out = Command::new(BIN)
        .args(["certs", "dev", "--dir", &dir.to_string_lossy(), "--cluster", "netns", "--nodes", "3"])
        .output()
        .expect("certs dev");
    assert!(out.status.success(), "certs dev: {}", String::from_utf8_lossy(&out.stderr));
    for i in 1..=3 {
        by_name(&dir.join(format!("node-{i}.toml")));
    }
    let mut addrs = [1, 2, 3].map(|i| format!("{SUBNET}.{i}"));
    net.write_hosts(&addrs);
    let mut run = Run { net, dir, nodes: Nodes(vec![None, None, None]) };
    for i in 1..=3 {
        run.start(i);
    }
    // Every member serves, found by name from host 1.
    run.until("the first write (an election first)", 1, &[1, 2, 3], &["kv", "put", "before", "1"], None);
    for i in 1..=3 {
        run.until("a stale read on each node", i, &[i], &["kv", "get", "before", "--consistency", "stale"], Some("1"));
    }

    // Node 3 comes back at another address under the same name.
    run.stop(3);
    let host3 = run.net.hosts[2].clone();
    ip(&["-n", &host3, "addr", "del", &format!("{SUBNET}.3/24"), "dev", "eth0"]).expect("drop the old address");
    ip(&["-n", &host3, "addr", "add", &format!("{SUBNET}.13/24"), "dev", "eth0"]).expect("add the new address");
    addrs[2] = format!("{SUBNET}.13");
    run.net.write_hosts(&addrs);
    run.start(3);

    // A write through nodes 1 and 2 reaches node 3 only if they dial it at its new address:
    // each node sends on the connections it dials itself.
    run.until("a write after the move", 1, &[1, 2], &["kv", "put", "after", "2"], None);
    let stale = ["kv", "get", "after", "--consistency", "stale"];
    run.until("node 3 to apply the write after its move", 3, &[3], &stale, Some("2"));
    // And node 3 serves linearizable reads again (confirmed with the leader), asked from host 2.
    run.until("a linearizable read on node 3", 2, &[3], &["kv", "get", "after"], Some("2"));
}
