//! Telemetry of a real 3-node cluster of `quorate` processes on 127.0.0.1: the metrics
//! endpoint's names and types, values that move (term after an election, commit after
//! writes), `quorate cluster status` and the metrics agreeing, the applied-entries hash
//! agreeing across replicas and compared inside the nodes after finalize, peer round-trip
//! times, election reasons, audit events of writes in the JSON log, `quorate top --once`, and
//! `/readyz` flipping when there is no leader.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use prost::Message as _;
use quorate_telemetry::http::get_blocking;
use quorate_telemetry::names as n;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

#[path = "support/procs.rs"]
mod procs;
use procs::{Nodes, free_base_port};

const BIN: &str = env!("CARGO_BIN_EXE_quorate");

fn free_tcp() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr")
}

/// Kills node `id` now (the guard kills the others, and would kill it again harmlessly).
fn kill(nodes: &mut Nodes, id: u64) {
    let c = &mut nodes.0[(id - 1) as usize];
    let _ = c.kill();
    let _ = c.wait();
}

struct Env {
    dir: PathBuf,
    endpoints: String,
    metrics: Vec<SocketAddr>,
}

impl Env {
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("QUORATE_CERTS", self.dir.join("certs"))
            .env("QUORATE_CLUSTER", "tele")
            .env("QUORATE_ENDPOINTS", &self.endpoints)
            .env("QUORATE_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .expect("run quorate")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "quorate {args:?} failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        stdout
    }

    fn get(&self, id: u64, path: &str) -> Option<(u16, String)> {
        get_blocking(self.metrics[(id - 1) as usize], path, Duration::from_secs(5), 4 << 20).ok()
    }

    fn scrape(&self, id: u64) -> Metrics {
        let (code, body) = self.get(id, "/metrics").unwrap_or_else(|| panic!("node {id} answers /metrics"));
        assert_eq!(code, 200);
        Metrics(body)
    }
}

/// A scrape, with look-ups by series.
struct Metrics(String);

impl Metrics {
    /// The value of the series `series` (a name, or a name with its `{labels}`).
    fn value(&self, series: &str) -> Option<f64> {
        self.0.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
    }

    fn must(&self, series: &str) -> f64 {
        self.value(series).unwrap_or_else(|| panic!("series {series} missing from:\n{}", self.0))
    }

    fn has_type(&self, name: &str, kind: &str) -> bool {
        self.0.lines().any(|l| l == format!("# TYPE {name} {kind}"))
    }

    fn role(&self) -> &'static str {
        for r in ["leader", "follower", "candidate", "pre_candidate"] {
            if self.value(&format!("{}{{role=\"{r}\"}}", n::ROLE)) == Some(1.0) {
                return r;
            }
        }
        "unknown"
    }
}

fn start(dir: &Path, metrics: &[SocketAddr]) -> Nodes {
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let log = std::fs::File::create(dir.join(format!("node-{id}.log"))).expect("log file");
        let child = Command::new(BIN)
            .args(["node", "start", "--config"])
            .arg(dir.join(format!("node-{id}.toml")))
            .env("QUORATE_METRICS_LISTEN", metrics[(id - 1) as usize].to_string())
            // A standard OpenTelemetry variable, honoured by the trace export.
            .env("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=ci")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn node");
        nodes.push(child);
    }
    Nodes(nodes)
}

/// A fake OTLP/HTTP collector: accepts up to `max` requests, answers 200, forwards each body.
fn fake_collector(max: usize) -> (SocketAddr, std::sync::mpsc::Receiver<Vec<u8>>) {
    use std::io::{Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max) {
            let Ok(mut s) = stream else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            let mut want = None;
            while want.is_none_or(|w| buf.len() < w) && buf.len() < 16 << 20 {
                let Ok(k) = s.read(&mut chunk) else { break };
                if k == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..k]);
                if want.is_none()
                    && let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n")
                {
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:")?.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    want = Some(end + 4 + len);
                }
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            if tx.send(buf).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

/// The string resource attributes of one `ResourceSpans`.
fn resource_attributes(rs: &ResourceSpans) -> std::collections::BTreeMap<String, String> {
    rs.resource
        .iter()
        .flat_map(|r| &r.attributes)
        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some((kv.key.clone(), s.clone())),
            _ => None,
        })
        .collect()
}

/// Decodes every export request received so far and checks its resource: every node
/// exports under one service name, `quorate`, with its node id as `service.instance.id`, its
/// version and its cluster. Adds the instance id of each request carrying a `proposal` span.
fn drain_proposal_instances(
    spans: &std::sync::mpsc::Receiver<Vec<u8>>,
    instances: &mut std::collections::BTreeSet<String>,
) {
    while let Ok(body) = spans.try_recv() {
        let Some(end) = body.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        assert!(body.starts_with(b"POST /v1/traces "), "{}", String::from_utf8_lossy(&body[..end]));
        let req = ExportTraceServiceRequest::decode(&body[end + 4..]).expect("a protobuf export request");
        for rs in &req.resource_spans {
            let attrs = resource_attributes(rs);
            assert_eq!(attrs.get("service.name").map(String::as_str), Some("quorate"), "{attrs:?}");
            assert_eq!(attrs.get("service.version").map(String::as_str), Some(env!("CARGO_PKG_VERSION")), "{attrs:?}");
            assert_eq!(attrs.get("quorate.cluster").map(String::as_str), Some("tele"), "{attrs:?}");
            assert_eq!(attrs.get("deployment.environment").map(String::as_str), Some("ci"), "{attrs:?}");
            let id = attrs.get("service.instance.id").cloned().expect("an instance id");
            assert!(["1", "2", "3"].contains(&id.as_str()), "{attrs:?}");
            if let Some(p) = rs.scope_spans.iter().flat_map(|s| &s.spans).find(|s| s.name == "proposal") {
                let keys: Vec<&str> = p.attributes.iter().map(|kv| kv.key.as_str()).collect();
                assert!(keys.contains(&"term") && keys.contains(&"index"), "{keys:?}");
                instances.insert(id);
            }
        }
    }
}

/// Polls `f` every 100 ms until it returns `Some`, or fails after `limit` with `what`.
fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn metrics_of_a_running_cluster_move_agree_with_status_and_readyz_flips() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("cluster");
    // Every node exports its traces to one fake collector. Bound first: a port `free_tcp`
    // picks and releases could otherwise be handed to it, and then this test's requests to a
    // node's metrics endpoint reach the collector, which answers anything with an empty 200
    // (seen once in CI: `/readyz` answered 200 with an empty body).
    let (collector, spans) = fake_collector(256);
    let base = free_base_port();
    let env = Env {
        dir: dir.clone(),
        endpoints: (0..3).map(|i| format!("{}=127.0.0.1:{}", i + 1, base + i)).collect::<Vec<_>>().join(","),
        metrics: (0..3).map(|_| free_tcp()).collect(),
    };
    let d = dir.to_string_lossy().into_owned();
    let b = base.to_string();
    env.ok(&["certs", "dev", "--dir", &d, "--cluster", "tele", "--nodes", "3", "--base-port", &b]);
    for id in 1..=3 {
        let path = dir.join(format!("node-{id}.toml"));
        let text = std::fs::read_to_string(&path).expect("config");
        assert!(text.contains("otlp_endpoint = \"\""), "{text}");
        let text = text.replace("otlp_endpoint = \"\"", &format!("otlp_endpoint = \"http://{collector}/v1/traces\""));
        // JSON logs, so that the audit events can be found by field.
        assert!(text.contains("log_format = \"human\""), "{text}");
        let text = text.replace("log_format = \"human\"", "log_format = \"json\"");
        std::fs::write(&path, text).expect("config");
    }
    let mut nodes = start(&dir, &env.metrics);

    // Ready once a leader is known; every node answers /livez.
    for id in 1..=3 {
        let body = eventually(Duration::from_secs(30), "/readyz 200 on every node", || {
            env.get(id, "/readyz").filter(|(c, _)| *c == 200).map(|(_, b)| b)
        });
        assert!(body.starts_with("ok: ") && body.contains("leader known"), "{body}");
        let (code, body) = env.get(id, "/livez").expect("livez");
        assert_eq!(code, 200, "{body}");
    }

    // Names and types.
    let leader = eventually(Duration::from_secs(10), "exactly one leader in the metrics", || {
        let roles: Vec<_> = (1..=3).map(|id| env.scrape(id).role()).collect();
        let leaders: Vec<u64> = (1..=3).filter(|id| roles[(*id - 1) as usize] == "leader").collect();
        (leaders.len() == 1).then(|| leaders[0])
    });
    let expected = [
        (n::TERM, "gauge"),
        (n::ROLE, "gauge"),
        (n::HAS_LEADER, "gauge"),
        (n::LEADER_ID, "gauge"),
        (n::COMMIT_INDEX, "gauge"),
        (n::APPLIED_INDEX, "gauge"),
        (n::LAST_LOG_INDEX, "gauge"),
        (n::CONFIG_VOTERS_COUNT, "gauge"),
        (n::PEER_MATCH_INDEX, "gauge"),
        (n::CERT_EXPIRY_SECONDS, "gauge"),
        (n::BUILD_INFO, "gauge"),
        (n::LEADER_CHANGES_TOTAL, "counter"),
        (n::ELECTIONS_TOTAL, "counter"),
        (n::FSYNC_SECONDS, "histogram"),
    ];
    // Gauges sampled on the driver's 500 ms sweep appear within a sweep or two.
    let m = eventually(Duration::from_secs(10), "every expected metric in the leader's scrape", || {
        let m = env.scrape(leader);
        expected.iter().all(|(name, kind)| m.has_type(name, kind)).then_some(m)
    });
    assert!(m.must(n::CERT_EXPIRY_SECONDS) > 0.0);
    assert_eq!(m.must(n::CONFIG_VOTERS_COUNT), 3.0);
    assert_eq!(m.must(n::LEADER_ID), leader as f64);
    assert!(m.must(&format!("{}_count", n::FSYNC_SECONDS)) >= 1.0, "the election's writes were fsynced");
    let term0 = m.must(n::TERM);
    assert!(term0 >= 1.0, "a term after the election");

    // Writes move the commit index, the proposal counters and latency histograms.
    let c0 = m.must(n::COMMIT_INDEX);
    let writes = 10;
    for i in 0..writes {
        env.ok(&["kv", "put", &format!("k{i}"), "v"]);
    }
    let m = eventually(Duration::from_secs(10), "the leader's commit index to move", || {
        let m = env.scrape(leader);
        (m.must(n::COMMIT_INDEX) >= c0 + f64::from(writes)).then_some(m)
    });
    assert!(m.must(n::PROPOSALS_RECEIVED_TOTAL) >= f64::from(writes), "{}", m.0);
    assert!(m.must(n::PROPOSALS_COMMITTED_TOTAL) >= f64::from(writes), "{}", m.0);
    assert!(m.must(&format!("{}_count", n::PROPOSAL_COMMIT_SECONDS)) >= f64::from(writes));
    assert!(m.has_type(n::COMMIT_APPLY_SECONDS, "histogram"));
    // Every invariant's counter is exported from the start, and all are zero.
    for name in n::invariant::ALL {
        let series = format!("{}{{invariant=\"{name}\"}}", n::INVARIANT_VIOLATIONS_TOTAL);
        assert_eq!(m.value(&series), Some(0.0), "{series}");
    }
    // Elections carry the reason the core recorded: every reason is exported, and the leader's
    // own campaigns (a pre-vote round, then the election) are counted.
    let campaigns: f64 = n::election::ALL
        .iter()
        .map(|r| m.value(&format!("{}{{reason=\"{r}\"}}", n::ELECTIONS_TOTAL)).unwrap_or(f64::NAN))
        .sum();
    assert!(campaigns >= 1.0, "the leader campaigned, with a known reason:\n{}", m.0);
    // Every peer has a round-trip time on every node (sampled on the 500 ms sweep).
    eventually(Duration::from_secs(10), "an RTT gauge for every peer on every node", || {
        (1..=3u64)
            .all(|id| {
                let m = env.scrape(id);
                (1..=3u64).filter(|p| *p != id).all(|p| {
                    m.value(&format!("{}{{peer=\"{p}\"}}", n::PEER_RTT_SECONDS)).is_some_and(|v| v > 0.0 && v < 5.0)
                })
            })
            .then_some(())
    });
    // Each answered write is an audit event on the leader, with op, key, result and index.
    let log = std::fs::read_to_string(dir.join(format!("node-{leader}.log"))).expect("leader log");
    let audit: Vec<&str> =
        log.lines().filter(|l| l.contains("\"target\":\"quorate::audit\"") && l.contains("\"op\":\"put\"")).collect();
    assert!(audit.len() >= writes as usize, "one audit event per write:\n{}", audit.join("\n"));
    let k0 = audit.iter().find(|l| l.contains("\"key\":\"k0\"")).expect("the audit event of k0");
    assert!(k0.contains("\"result\":\"ok\"") && !k0.contains("\"index\":0,") && k0.contains("\"principal\""), "{k0}");

    // The proposals' spans reach the collector (the batch exporter sends every few seconds),
    // decoded with the exporter's protobuf types: every node exports under one service name,
    // `quorate`, with its node id as `service.instance.id`.
    let mut instances = std::collections::BTreeSet::new();
    eventually(Duration::from_secs(30), "the leader's proposal spans at the collector", || {
        drain_proposal_instances(&spans, &mut instances);
        instances.contains(&leader.to_string()).then_some(())
    });

    // Finalize (cluster version 2): from now on the nodes send each other their hash samples.
    env.ok(&["cluster", "finalize"]);
    // Enough writes for one complete applied-entries hash window: every replica shows the
    // same sample at the same index.
    env.ok(&[
        "bench",
        "--clients",
        "16",
        "--read-ratio",
        "0",
        "--ops-max",
        "1200",
        "--duration",
        "60",
        "--value-size",
        "16",
    ]);
    let samples = eventually(Duration::from_secs(20), "a hash sample on every node", || {
        let s: Vec<(f64, f64)> = (1..=3)
            .filter_map(|id| {
                let m = env.scrape(id);
                Some((m.value(n::APPLIED_HASH_INDEX)?, m.value(n::APPLIED_HASH_VALUE)?))
            })
            .collect();
        (s.len() == 3 && s.iter().all(|x| x.0 == s[0].0)).then_some(s)
    });
    assert!(samples[0].0 >= 1024.0);
    assert!(samples.iter().all(|s| s.1 == samples[0].1), "replicas disagree on applied entries: {samples:?}");
    // The nodes compared those samples themselves: each counts matches from both peers, and no
    // cross-replica violation.
    eventually(Duration::from_secs(20), "every node to compare hash samples with both peers", || {
        (1..=3u64)
            .all(|id| {
                let m = env.scrape(id);
                (1..=3u64).filter(|p| *p != id).all(|p| {
                    m.value(&format!("{}{{peer=\"{p}\"}}", n::APPLIED_HASH_CHECKS_TOTAL)).is_some_and(|v| v >= 1.0)
                })
            })
            .then_some(())
    });
    for id in 1..=3 {
        let m = env.scrape(id);
        let series = format!("{}{{invariant=\"{}\"}}", n::INVARIANT_VIOLATIONS_TOTAL, n::invariant::CROSS_REPLICA_HASH);
        assert_eq!(m.value(&series), Some(0.0), "node {id}: {series}");
    }

    // `quorate cluster status` and the metrics agree (the cluster is idle now).
    eventually(Duration::from_secs(10), "cluster status and the metrics to agree", || {
        let status = env.ok(&["cluster", "status"]);
        let rows: Vec<Vec<&str>> = status
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|c| c.len() >= 12 && c[0].parse::<u64>().is_ok())
            .take(3)
            .collect();
        if rows.len() != 3 {
            return None;
        }
        for r in &rows {
            let id: u64 = r[0].parse().ok()?;
            let m = env.scrape(id);
            let agree = r[2] == m.role()
                && r[3].parse::<f64>().ok()? == m.must(n::TERM)
                && r[4].parse::<f64>().ok()? == m.must(n::LEADER_ID)
                && r[5].parse::<f64>().ok()? == m.must(n::COMMIT_INDEX)
                && r[6].parse::<f64>().ok()? == m.must(n::APPLIED_INDEX)
                && r[7].parse::<f64>().ok()? == m.must(n::LAST_LOG_INDEX)
                && r[8].parse::<f64>().ok()? == m.must(n::SNAPSHOT_INDEX)
                && r[9].parse::<f64>().ok()? == m.must(n::CONFIG_VERSION_INDEX);
            // HEALTH: `ok` while neither refusing writes nor recovering, as the gauges say.
            let health_agrees = r[10] == "ok" && m.must(n::REFUSING_WRITES) == 0.0 && m.must(n::RECOVERING) == 0.0;
            // CONFIG: `voters=1,2,3` (plus `joint-old=` while joint).
            let voters = r[11].strip_prefix("voters=")?.split(',').count();
            let config_agrees = voters as f64 == m.must(n::CONFIG_VOTERS_COUNT)
                && f64::from(u8::from(r.iter().any(|c| c.starts_with("joint-old=")))) == m.must(n::CONFIG_JOINT);
            // The versions table: `ID BINARY STORAGE-FORMAT CLUSTER-VERSION SUPPORTS` per node.
            let cluster_version = status.lines().find_map(|l| {
                let c: Vec<&str> = l.split_whitespace().collect();
                (c.len() == 5 && c[0] == r[0] && c[4].contains("..=")).then(|| c[3].parse::<f64>().ok())?
            })?;
            if !agree || !health_agrees || !config_agrees || cluster_version != m.must(n::CLUSTER_VERSION) {
                return None;
            }
        }
        Some(())
    });
    assert!(env.scrape(leader).must(n::CLUSTER_VERSION) >= 2.0, "finalized");

    // Resources: the database's size, free disk, the admission limit and the process.
    for id in 1..=3 {
        let m = env.scrape(id);
        assert!(m.must(n::DB_BYTES) >= 0.0 && m.must(n::DISK_FREE_BYTES) > 0.0, "node {id}: disk gauges");
        assert_eq!(m.must(n::REFUSING_WRITES), 0.0, "node {id}");
        assert!(m.must(n::ADMISSION_CONCURRENCY_LIMIT) >= 1.0, "node {id}: admission limit");
        assert!(m.must(n::ADMISSION_IN_FLIGHT) >= 0.0, "node {id}");
        assert!(m.must(n::PROCESS_OPEN_FDS) > 0.0 && m.must(n::PROCESS_RESIDENT_MEMORY_BYTES) > 0.0, "node {id}");
        assert!(m.must(n::PROCESS_CPU_SECONDS_TOTAL) > 0.0 && m.must(n::PROCESS_MAX_FDS) >= 1.0, "node {id}");
    }
    // `cluster status -o json` carries the same health, with the sizes.
    let json: serde_json::Value = serde_json::from_str(&env.ok(&["-o", "json", "cluster", "status"])).expect("JSON");
    for node in json["nodes"].as_array().expect("nodes") {
        let h = &node["health"];
        assert_eq!((h["refusing_writes"].as_bool(), h["recovering"].as_bool()), (Some(false), Some(false)), "{node}");
        assert!(h["disk_free_bytes"].as_u64().is_some_and(|b| b > 0) && h["db_bytes"].is_u64(), "{node}");
    }

    // `quorate top --once`: one frame, every node, one leader.
    let top = env.ok(&["top", "--once"]);
    assert!(top.starts_with("NODE"), "{top}");
    assert_eq!(top.lines().filter(|l| l.split_whitespace().nth(1) == Some("leader")).count(), 1, "{top}");
    assert_eq!(top.lines().count(), 4, "{top}");

    // A leadership transfer is a campaign with reason `transfer` on the new leader.
    let target = (1..=3).find(|id| *id != leader).expect("a follower");
    env.ok(&["leader", "transfer", "--to", &target.to_string()]);
    let transfer = format!("{}{{reason=\"{}\"}}", n::ELECTIONS_TOTAL, n::election::TRANSFER);
    eventually(Duration::from_secs(15), "the transfer target to lead, counting a transfer election", || {
        let m = env.scrape(target);
        (m.role() == "leader" && m.value(&transfer).is_some_and(|v| v >= 1.0)).then_some(())
    });
    let leader = target;
    // The new leader's proposals are traced under the same service name, with its own id.
    for i in 0..3 {
        env.ok(&["kv", "put", &format!("after-transfer-{i}"), "v"]);
    }
    eventually(Duration::from_secs(30), "the new leader's proposal spans at the collector", || {
        drain_proposal_instances(&spans, &mut instances);
        instances.contains(&leader.to_string()).then_some(())
    });
    assert!(instances.len() >= 2, "two nodes' spans, told apart by service.instance.id: {instances:?}");

    // Without a quorum there is no leader: the survivor's /readyz fails with the reason. (Its
    // term stays: with pre-vote, a node that cannot win does not start a real election.)
    let survivor = (1..=3).find(|id| *id != leader).expect("a follower");
    for id in 1..=3 {
        if id != survivor {
            kill(&mut nodes, id);
        }
    }
    let body = eventually(Duration::from_secs(30), "/readyz 503 on the survivor", || {
        env.get(survivor, "/readyz").filter(|(c, _)| *c == 503).map(|(_, b)| b)
    });
    assert!(body.contains("no leader known"), "{body}");
    let m = env.scrape(survivor);
    assert_eq!(m.must(n::HAS_LEADER), 0.0);
    assert!(m.must(n::LEADER_CHANGES_TOTAL) >= 2.0, "leader learned, then lost:\n{}", m.0);
    assert!(m.must(n::TERM) >= term0, "the term never goes down");
    let (code, _) = env.get(survivor, "/livez").expect("livez");
    assert_eq!(code, 200, "the survivor is still live");
}

/// A collector that reads each request and then answers one byte every 20 ms, for ever (an
/// endless header line): every socket read succeeds well within a socket timeout. Reports,
/// per connection, how long the client stayed before it closed.
fn trickling_collector() -> (SocketAddr, std::sync::mpsc::Receiver<Duration>) {
    use std::io::{Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(64) {
            let Ok(mut s) = stream else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let accepted = Instant::now();
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut chunk = [0u8; 65536];
                let _ = s.read(&mut chunk);
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nX-Slow: ");
                // At most 60 s (3,000 bytes): the client closes long before, or the test fails.
                for _ in 0..3_000 {
                    if s.write_all(b"a").is_err() {
                        let _ = tx.send(accepted.elapsed());
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        }
    });
    (addr, rx)
}

/// Review of issue 21: an export was bounded per socket operation, so a collector that
/// trickles its answer held the node's export thread for good (one export, never another).
/// Now each export gives up at its deadline (`OTEL_EXPORTER_OTLP_TIMEOUT`), the next export
/// opens a new connection, and the node serves writes throughout.
#[test]
fn a_trickling_collector_holds_no_export_past_its_deadline_and_the_node_keeps_serving() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("cluster");
    let port = procs::free_ports(1);
    let env = Env { dir: dir.clone(), endpoints: format!("1=127.0.0.1:{port}"), metrics: Vec::new() };
    let d = dir.to_string_lossy().into_owned();
    env.ok(&["certs", "dev", "--dir", &d, "--cluster", "tele", "--nodes", "1", "--base-port", &port.to_string()]);
    let (collector, held) = trickling_collector();
    let log = std::fs::File::create(dir.join("node-1.log")).expect("log file");
    let _node = Nodes(vec![
        Command::new(BIN)
            .args(["node", "start", "--config"])
            .arg(dir.join("node-1.toml"))
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}"))
            .env("OTEL_EXPORTER_OTLP_TIMEOUT", "500")
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn node"),
    ]);
    eventually(Duration::from_secs(30), "the first write", || {
        env.cli(&["kv", "put", "k0", "v"]).status.success().then_some(())
    });
    // Writes go on while exports are held by the collector; each is served promptly.
    for i in 1..=20 {
        let start = Instant::now();
        env.ok(&["kv", "put", &format!("k{i}"), "v"]);
        assert!(start.elapsed() < Duration::from_secs(5), "write {i} took {:?}", start.elapsed());
    }
    // Two exports, one after the other (the first did not hold the thread), each given up at
    // its deadline (500 ms; the collector notices the close within its next 20 ms write).
    for n in 1..=2 {
        let stayed = held.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| {
            panic!(
                "export {n} was not given up (the export thread is held): {}",
                std::fs::read_to_string(dir.join("node-1.log")).unwrap_or_default()
            )
        });
        assert!(stayed < Duration::from_millis(1_500), "export {n} held its connection for {stayed:?}");
    }
    assert_eq!(env.ok(&["kv", "get", "k20"]), "v\n");
    // The log went to a file, not a terminal: plain text, no colour escape codes (issue 21).
    let log = std::fs::read_to_string(dir.join("node-1.log")).expect("node log");
    assert!(log.contains("INFO"), "the node logged: {log}");
    assert!(!log.contains('\x1b'), "escape codes in a log written to a file: {log}");
}

/// Review of issue 21: `OTEL_BSP_MAX_QUEUE_SIZE` went to the SDK unchecked, and a queue of
/// 10^15 spans is allocated at start (the process aborted). Now the node refuses to start
/// and names the variable.
#[test]
fn a_huge_span_queue_is_refused_at_start_by_name() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("cluster");
    let port = procs::free_ports(1);
    let env = Env { dir: dir.clone(), endpoints: format!("1=127.0.0.1:{port}"), metrics: Vec::new() };
    let d = dir.to_string_lossy().into_owned();
    env.ok(&["certs", "dev", "--dir", &d, "--cluster", "tele", "--nodes", "1", "--base-port", &port.to_string()]);
    let out = Command::new(BIN)
        .args(["node", "start", "--config"])
        .arg(dir.join("node-1.toml"))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
        .env("OTEL_BSP_MAX_QUEUE_SIZE", "1000000000000000")
        .stdin(Stdio::null())
        .output()
        .expect("run node");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "a clear refusal, not an abort: {stderr}");
    assert!(stderr.contains("OTEL_BSP_MAX_QUEUE_SIZE") && stderr.contains("32768"), "{stderr}");
}
