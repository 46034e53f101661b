//! `cargo xtask alerts [--live]`: the alert rules evaluated by Prometheus's own engine.
//! `promtool check rules docs/alerts.yml`, `promtool test rules docs/alerts.test.yml` (input
//! series and the alerts expected from them), a deliberately wrong expectation that promtool
//! must reject (so the step can fail), and `promtool check config` on the scrape configuration
//! for machines (`deploy/prometheus/prometheus.yml`, with the rules beside it). With `--live`
//! (as `cargo xtask ci` runs it), a real Prometheus scrapes a real 3-node cluster through that
//! configuration (its targets replaced by the nodes' loopback addresses, its intervals by 1 s)
//! with the rules loaded: every node up, one leader, no outage alert; then every node is killed
//! and `QuorateQuorumLost` must fire (pending, then firing after its `for: 1m`).
//!
//! promtool is taken from `QUORATE_PROMTOOL`, else `PATH`, else a copy unpacked earlier under
//! the target directory; when none is there and the machine is Debian or Ubuntu, Debian's
//! `prometheus` package is fetched with `apt-get download` and unpacked there with `dpkg-deb
//! -x` (only its files: no service is installed or started). Elsewhere the step stops and says
//! what to install.

use crate::cluster::target_dir;
use crate::{root, run};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// `cargo xtask alerts`.
pub(crate) fn alerts(args: &[String]) -> Result<()> {
    let live = match args {
        [] => false,
        [a] if a == "--live" => true,
        [a, ..] => bail!("`alerts` takes only --live, got `{a}`"),
    };
    let promtool = promtool()?;
    let root = root();
    let docs = root.join("docs");
    run(Command::new(&promtool).args(["check", "rules"]).arg(docs.join("alerts.yml")))?;
    run(Command::new(&promtool).args(["test", "rules"]).arg(docs.join("alerts.test.yml")))?;

    let scratch = target_dir().join("xtask-alerts");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    std::fs::copy(docs.join("alerts.yml"), scratch.join("alerts.yml")).context("copying docs/alerts.yml")?;

    // The check can fail: an alert expected where the rules give none is reported.
    let wrong = scratch.join("wrong.test.yml");
    std::fs::write(&wrong, WRONG_TEST).context("writing the wrong test")?;
    let out = Command::new(&promtool).args(["test", "rules"]).arg(&wrong).output().context("running promtool")?;
    if out.status.success() {
        bail!("promtool accepted a test that expects QuorateNoLeader from a healthy cluster: its test proves nothing");
    }
    eprintln!("  (promtool rejects a wrong expectation, as it must)");

    // The machines' scrape configuration, with the rules it loads beside it. (Debian's
    // promtool is built without Kubernetes discovery, so deploy/prometheus/kubernetes-pods.yml
    // is checked by crates/quorate-node/tests/deploy.rs only.)
    let config = scratch.join("prometheus.yml");
    std::fs::copy(root.join("deploy/prometheus/prometheus.yml"), &config).context("copying the scrape config")?;
    run(Command::new(&promtool).args(["check", "config"]).arg(&config))?;
    if live {
        live_outage(&promtool, &scratch)?;
    }
    Ok(())
}

/// A rule test that must fail: a leader throughout, yet QuorateNoLeader expected.
const WRONG_TEST: &str = r#"rule_files: [alerts.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'quorate_raft_role{job="quorate", cluster="prod", instance="n1:9100", role="leader"}'
        values: '1x10'
    alert_rule_test:
      - eval_time: 5m
        alertname: QuorateNoLeader
        exp_alerts:
          - exp_labels: {severity: page, cluster: prod}
"#;

/// Whether `path` runs as promtool.
fn works(path: &Path) -> bool {
    Command::new(path).arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Finds promtool, unpacking Debian's package under the target directory when it is missing.
fn promtool() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("QUORATE_PROMTOOL").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !works(&p) {
            bail!("QUORATE_PROMTOOL={} does not run as promtool", p.display());
        }
        return Ok(p);
    }
    if works(Path::new("promtool")) {
        return Ok(PathBuf::from("promtool"));
    }
    let dir = target_dir().join("tools/prometheus");
    let unpacked = dir.join("usr/bin/promtool");
    if works(&unpacked) {
        return Ok(unpacked);
    }
    if !Path::new("/etc/debian_version").exists() {
        bail!(
            "promtool (Prometheus's rule tester) is not installed: install Prometheus (it ships promtool) or set \
             QUORATE_PROMTOOL to its path, and run again"
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let download = || {
        Command::new("apt-get")
            .args(["download", "-qq", "-o", "APT::Sandbox::User=root", "prometheus"])
            .current_dir(&dir)
            .status()
    };
    if !download().is_ok_and(|s| s.success()) {
        // The package lists may be missing or stale (a fresh machine): refresh them (root).
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        if !download().is_ok_and(|s| s.success()) {
            bail!("`apt-get download prometheus` failed: install Prometheus's promtool or set QUORATE_PROMTOOL");
        }
    }
    let deb = std::fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
    let _ = std::fs::remove_file(&deb);
    if !works(&unpacked) {
        bail!("{} from Debian's prometheus package does not run", unpacked.display());
    }
    Ok(unpacked)
}

/// The Prometheus server beside `promtool` (same directory), else `prometheus` in `PATH`.
fn prometheus_beside(promtool: &Path) -> Result<PathBuf> {
    let beside = promtool.parent().map(|d| d.join("prometheus")).filter(|p| p.is_file());
    let candidate = beside.unwrap_or_else(|| PathBuf::from("prometheus"));
    if !works(&candidate) {
        bail!("no Prometheus server beside promtool or in PATH ({}): --live needs one", candidate.display());
    }
    Ok(candidate)
}

/// A Prometheus process, killed when dropped.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `s` percent-encoded for a URL's query.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The sample values of an instant query (empty: no series).
fn query(addr: std::net::SocketAddr, q: &str) -> Result<Vec<f64>> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(s, "GET /api/v1/query?query={} HTTP/1.0\r\nHost: {addr}\r\n\r\n", encode(q))?;
    let mut body = String::new();
    s.take(1 << 20).read_to_string(&mut body)?;
    if !body.contains("\"status\":\"success\"") {
        bail!("query {q}: {}", body.lines().last().unwrap_or(""));
    }
    // Each sample is `"value":[<time>,"<value>"]`.
    let mut out = Vec::new();
    for part in body.split("\"value\":[").skip(1) {
        let v = part.split('"').nth(1).context("a sample value")?;
        out.push(v.parse().with_context(|| format!("sample value {v:?}"))?);
    }
    Ok(out)
}

/// Polls `check` every 500 ms until it is true or `within` has passed.
fn wait_until(within: std::time::Duration, what: &str, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let start = std::time::Instant::now();
    loop {
        match check() {
            Ok(true) => {
                eprintln!("  {what} after {:.1}s", start.elapsed().as_secs_f64());
                return Ok(());
            }
            Ok(false) => {}
            Err(e) if start.elapsed() >= within => return Err(e.context(format!("waiting for {what}"))),
            Err(_) => {}
        }
        if start.elapsed() >= within {
            bail!("{what}: not within {}s", within.as_secs());
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// A real Prometheus with deploy/prometheus/prometheus.yml and docs/alerts.yml over a real
/// 3-node cluster: healthy, then every node killed; `QuorateQuorumLost` must fire.
fn live_outage(promtool: &Path, scratch: &Path) -> Result<()> {
    use crate::cluster::{Cluster, NodeSpec, RaftSettings, build_quorate, free_tcp_port, free_udp_port};
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    let prometheus = prometheus_beside(promtool)?;
    let bin = build_quorate()?;
    let mut cluster = Cluster::new(bin, scratch.join("cluster"), "alerts", true)?;
    cluster.generate_certs(3, 7001)?;
    let mut listen = BTreeMap::new();
    let mut metrics = BTreeMap::new();
    for id in 1..=3u64 {
        listen.insert(id, SocketAddr::from(([127, 0, 0, 1], free_udp_port()?)));
        metrics.insert(id, SocketAddr::from(([127, 0, 0, 1], free_tcp_port()?)));
    }
    let peers: BTreeMap<u64, String> = listen.iter().map(|(id, a)| (*id, a.to_string())).collect();
    for id in 1..=3u64 {
        cluster.write_config(&NodeSpec {
            id,
            listen: listen[&id],
            peers: peers.clone(),
            join: false,
            metrics_listen: Some(metrics[&id]),
            raft: RaftSettings::default(),
            failpoints: false,
            handshakes_per_source: None,
        })?;
        cluster.start(id)?;
    }

    // The shipped scrape configuration: its targets and intervals replaced, nothing else.
    let shipped = std::fs::read_to_string(root().join("deploy/prometheus/prometheus.yml"))?;
    let targets: Vec<String> = metrics.values().map(|a| format!("\"{a}\"")).collect();
    let mut replaced = 0;
    let config: String = shipped
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("- targets: [\"10.0.0.") {
                replaced += 1;
                let indent = &l[..l.len() - l.trim_start().len()];
                format!("{indent}- targets: [{}]\n", targets.join(", "))
            } else if l.contains("_interval: 15s") {
                replaced += 1;
                format!("{}\n", l.replace("15s", "1s"))
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    if replaced != 3 {
        bail!("deploy/prometheus/prometheus.yml: expected one node target line and two 15s intervals");
    }
    let config_path = scratch.join("live.yml");
    std::fs::write(&config_path, config)?;
    let web = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()?));
    let log = std::fs::File::create(scratch.join("prometheus.log"))?;
    eprintln!(
        "$ {} --config.file {} (log: {})",
        prometheus.display(),
        config_path.display(),
        scratch.join("prometheus.log").display()
    );
    let _server = Server(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", scratch.join("tsdb").display()))
            .arg(format!("--web.listen-address={web}"))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting prometheus")?,
    );

    let sel = "job=\"quorate\",cluster=\"prod\"";
    let within = std::time::Duration::from_secs(90);
    wait_until(within, "Prometheus scrapes 3 nodes up and 1 leader", || {
        cluster.check_running()?;
        let up = query(web, &format!("sum(up{{{sel}}})"))?;
        let leaders = query(web, &format!("sum(quorate_raft_role{{{sel},role=\"leader\"}})"))?;
        Ok(up == [3.0] && leaders == [1.0])
    })?;
    // Alerts that went pending before the first scrape or the first election (no target yet,
    // no leader yet) clear at the next evaluations; none may have fired.
    let outage = "ALERTS{alertname=~\"QuorateQuorumLost|QuorateNoLeader|QuorateNotScraped\"}";
    wait_until(within, "no outage alert pending with every node up", || Ok(query(web, outage)?.is_empty()))?;
    let fired = "max_over_time(ALERTS{alertname=~\"QuorateQuorumLost|QuorateNoLeader|QuorateNotScraped\",alertstate=\"firing\"}[10m])";
    if !query(web, fired)?.is_empty() {
        bail!("an outage alert fired while the cluster came up");
    }
    for id in 1..=3u64 {
        cluster.kill(id)?;
    }
    eprintln!("  killed every node (SIGKILL)");
    let lost = "ALERTS{alertname=\"QuorateQuorumLost\",cluster=\"prod\",severity=\"page\"";
    wait_until(within, "QuorateQuorumLost pending", || {
        Ok(!query(web, &format!("{lost},alertstate=\"pending\"}}"))?.is_empty())
    })?;
    // `for: 1m`, evaluated every second.
    wait_until(std::time::Duration::from_secs(120), "QuorateQuorumLost firing", || {
        Ok(!query(web, &format!("{lost},alertstate=\"firing\"}}"))?.is_empty())
    })?;
    Ok(())
}
