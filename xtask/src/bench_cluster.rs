//! `cargo xtask bench cluster [--duration S] [--clients 1,16,64,256] [--connections N]
//! [--workloads put,mixed,put:4096] [--skip-etcd]`: a real 3-node Quorate cluster (fsync on, mutual TLS, RocksDB; the demo's set-up) driven by
//! `quorate bench`, then, in the same run, etcd 3.4's plain-HTTP cluster driven by the
//! etcd-bench scripts in `../shared/tools/etcd-bench` beside the repository (or
//! `QUORATE_ETCD_BENCH`). One table compares them; it is printed
//! and written to docs/benchmarks.md under `## Cluster (quorate-node vs etcd 3.4)`: the text
//! from that heading to the section's first `### ` subsection is replaced, and the hand-written
//! `### ` subsections after it (readings of earlier runs) are kept.
//!
//! Workloads (`--workloads`, comma-separated, run in the order given; default `put`):
//! - `put[:BYTES]`: puts only, values of BYTES bytes (default 256). The default `put` is
//!   measured for etcd by `bench.sh` (which also gives the linearizable-get row); any other
//!   size by etcd's load generator run directly (`--op put --val-size BYTES`, to the leader).
//! - `mixed[:BYTES]`: 50 % linearizable gets and 50 % puts. Quorate: one closed loop per client
//!   choosing per operation (`quorate bench --read-ratio 0.5 --consistency linearizable`).
//!   etcd: its load generator does one kind of operation per process, so a point is two
//!   processes at once, ceil(c/2) clients putting to the leader and floor(c/2) doing
//!   linearizable gets spread over the members, summed: two closed loops, so the shares are not
//!   forced to 50/50. Each half's rate and latency is reported beside the sum. A 1-client point
//!   has no etcd figure (a half would have no client).
//!
//! etcd's load generator runs a fixed number of operations, not a duration: every directly run
//! point first runs a short probe ([`PROBE_OPS_PER_CLIENT`] operations a client, the halves of
//! a mixed point at once) and then a total of the probe's rate times `--duration`, so it lasts
//! about as long as Quorate's point.
//!
//! Every point also gives the CPU time (user + system, from `/proc/<pid>/stat`) the measured
//! system's own processes used during it — the three nodes, or the three etcd members — per
//! operation and per process: unlike throughput, it hardly moves when something else shares
//! the machine, and the load generators are not in it.
//!
//! Every child is killed when the run ends, on error paths too: the Quorate nodes by the demo's
//! `Cluster` guard, the etcd members by `EtcdGuard` (`cluster.sh stop`).

use crate::demo::{start_cluster_with, step, text};
use crate::proc_cpu;
use crate::{root, run};
use anyhow::{Context, Result, bail};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

const SECTION: &str = "## Cluster (quorate-node vs etcd 3.4)";
/// The etcd-bench scripts, relative to the repository root (as the docs name them).
const ETCD_BENCH: &str = "../shared/tools/etcd-bench";
const LOADGEN_TARGET: &str = "/var/tmp/etcd-loadgen-target";
/// Where `cluster.sh start` records the etcd members' process ids, one a line (m1, m2, m3).
const ETCD_PIDS: &str = "/tmp/etcd-bench/pids";
const VALUE_SIZE: u32 = 256;
const READ_CLIENTS: u32 = 64;
/// Most operations in one `quorate bench` run (it stops at the duration or this cap).
const OPS_MAX: u64 = 500_000;
/// Distinct keys the writes spread over.
const KEYS: u64 = 100_000;

/// Value sizes a workload may name (Quorate takes up to 1 MiB; the load generators hold one
/// value per client).
const VALUE_SIZE_MAX: u32 = 64 * 1024;
/// Workloads in one run.
const WORKLOADS_MAX: usize = 8;
/// The share of gets in a mixed workload (`quorate bench --read-ratio`).
const MIXED_READ_RATIO: &str = "0.5";
/// etcd's client endpoints as `cluster.sh start plain` opens them.
const ETCD_ENDPOINTS: &str = "http://127.0.0.1:23791,http://127.0.0.1:23792,http://127.0.0.1:23793";
/// Operations per client in the probe before a directly run etcd point, from `PROBE_OPS_MIN`
/// to `PROBE_OPS_MAX` in all.
const PROBE_OPS_PER_CLIENT: u64 = 25;
const PROBE_OPS_MIN: u64 = 300;
const PROBE_OPS_MAX: u64 = 5_000;
/// Fewest operations in a directly run etcd point.
const ETCD_OPS_MIN: u64 = 300;

const USAGE: &str = "usage: cargo xtask bench cluster [--duration S] [--clients 1,16,64,256] [--connections N] \
                     [--workloads put,mixed,put:4096] [--skip-etcd]";

/// What a sweep over the client counts measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Puts only.
    Put,
    /// 50 % linearizable gets, 50 % puts.
    Mixed,
}

/// A workload of `--workloads`: a kind and a value size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Workload {
    kind: Kind,
    value_size: u32,
}

impl Workload {
    /// The default, and the one `bench.sh` measures for etcd.
    const PUT_256: Workload = Workload { kind: Kind::Put, value_size: VALUE_SIZE };

    /// The table's name for it: `put 256 B`, `mixed 256 B (50 % get)`.
    fn label(self) -> String {
        match self.kind {
            Kind::Put => format!("put {} B", self.value_size),
            Kind::Mixed => format!("mixed {} B (50 % get)", self.value_size),
        }
    }

    /// As `--workloads` names it: `put`, `mixed`, `put:4096`.
    fn spec(self) -> String {
        let kind = match self.kind {
            Kind::Put => "put",
            Kind::Mixed => "mixed",
        };
        if self.value_size == VALUE_SIZE { kind.to_string() } else { format!("{kind}:{}", self.value_size) }
    }

    fn read_ratio(self) -> &'static str {
        match self.kind {
            Kind::Put => "0",
            Kind::Mixed => MIXED_READ_RATIO,
        }
    }
}

/// `put,mixed,put:4096`: kinds with an optional `:BYTES` (default 256), no repeats.
fn parse_workloads(v: &str) -> Result<Vec<Workload>> {
    let mut out: Vec<Workload> = Vec::new();
    for item in v.split(',').map(str::trim) {
        let (kind, size) = item.split_once(':').map_or((item, None), |(k, s)| (k, Some(s)));
        let kind = match kind {
            "put" => Kind::Put,
            "mixed" => Kind::Mixed,
            _ => bail!("unknown workload `{item}`: the workloads are put[:BYTES] and mixed[:BYTES]"),
        };
        let value_size = match size {
            None => VALUE_SIZE,
            Some(s) => s.parse::<u32>().ok().filter(|n| (1..=VALUE_SIZE_MAX).contains(n)).with_context(|| {
                format!("bad value size in `{item}`: a count of bytes between 1 and {VALUE_SIZE_MAX}")
            })?,
        };
        let w = Workload { kind, value_size };
        if out.contains(&w) {
            bail!("workload `{item}` is given twice");
        }
        out.push(w);
    }
    if out.len() > WORKLOADS_MAX {
        bail!("at most {WORKLOADS_MAX} workloads in one run");
    }
    Ok(out)
}

struct Options {
    duration: f64,
    clients: Vec<u32>,
    /// Connections the clients share (`quorate bench --connections`, at most the clients);
    /// `None`: one per client.
    connections: Option<u32>,
    /// The sweeps, in the order they run.
    workloads: Vec<Workload>,
    skip_etcd: bool,
}

fn parse_args(args: &[String]) -> Result<Options> {
    let mut o = Options {
        duration: 10.0,
        clients: vec![1, 16, 64, 256],
        connections: None,
        workloads: vec![Workload::PUT_256],
        skip_etcd: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--duration" => {
                let v = it.next().context(USAGE)?;
                o.duration = v.parse().with_context(|| format!("--duration takes seconds, got `{v}`"))?;
                if !(o.duration > 0.0 && o.duration <= 3600.0) {
                    bail!("--duration must be between 0 and 3600 seconds");
                }
            }
            "--clients" => {
                let v = it.next().context(USAGE)?;
                o.clients = v
                    .split(',')
                    .map(|c| c.trim().parse::<u32>().with_context(|| format!("bad client count `{c}`")))
                    .collect::<Result<_>>()?;
                if o.clients.is_empty() || o.clients.iter().any(|&c| c == 0 || c > 1024) {
                    bail!("--clients takes counts between 1 and 1024, comma-separated");
                }
            }
            "--connections" => {
                let v = it.next().context(USAGE)?;
                let n: u32 = v.parse().with_context(|| format!("--connections takes a count, got `{v}`"))?;
                if !(1..=1024).contains(&n) {
                    bail!("--connections takes a count between 1 and 1024");
                }
                o.connections = Some(n);
            }
            "--workloads" => o.workloads = parse_workloads(it.next().context(USAGE)?)?,
            "--skip-etcd" => o.skip_etcd = true,
            other => bail!("unknown option `{other}`\n{USAGE}"),
        }
    }
    Ok(o)
}

/// One measured point: throughput and latency percentiles in milliseconds, and the CPU the
/// measured system's processes used during it.
#[derive(Debug, Clone, PartialEq)]
struct Point {
    ops_per_s: f64,
    /// `None` where no figure covers all the point's operations (etcd's mixed points: two
    /// processes, each with its own percentiles, in [`Point::mix`]).
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    errors: u64,
    /// Operations that succeeded.
    ops: u64,
    /// CPU seconds (user + system) per process of the measured system (`node-1`.., `m1`..)
    /// during the point; empty if not measured.
    cpu: Vec<(String, f64)>,
    /// A mixed point's gets and puts apart.
    mix: Option<Box<Mix>>,
}

/// The two halves of a mixed point.
#[derive(Debug, Clone, PartialEq)]
struct Mix {
    gets: Half,
    puts: Half,
}

/// The gets or the puts of a mixed point.
#[derive(Debug, Clone, PartialEq)]
struct Half {
    point: Point,
    /// etcd: the clients and the seconds of this half's load generator (Quorate's clients do
    /// both kinds, within one duration).
    clients: Option<u32>,
    secs: Option<f64>,
}

impl Point {
    /// CPU microseconds per successful operation, summed over the processes.
    fn cpu_us_per_op(&self) -> Option<f64> {
        if self.cpu.is_empty() {
            return None;
        }
        proc_cpu::micros_per_op(self.cpu.iter().map(|(_, s)| s).sum(), self.ops)
    }
}

/// One workload over the client counts, on both systems.
struct Sweep {
    workload: Workload,
    quorate: Vec<(u32, Point)>,
    etcd: Vec<(u32, Point)>,
}

#[derive(Default)]
struct Results {
    /// One per workload, in the order of `--workloads`.
    sweeps: Vec<Sweep>,
    quorate_reads: Option<Point>,
    /// etcd's linearizable GETs at 256 clients (what bench.sh measures).
    etcd_reads: Option<Point>,
    etcd_raw: String,
    /// The lines of etcd's load generator run directly (workloads other than `put`).
    etcd_direct_raw: String,
    /// Why etcd was not measured, if it was not.
    etcd_missing: Option<String>,
}

impl Results {
    fn new(o: &Options) -> Results {
        let sweeps =
            o.workloads.iter().map(|&workload| Sweep { workload, quorate: Vec::new(), etcd: Vec::new() }).collect();
        Results { sweeps, ..Results::default() }
    }

    fn sweep_mut(&mut self, w: Workload) -> Option<&mut Sweep> {
        self.sweeps.iter_mut().find(|s| s.workload == w)
    }
}

pub(crate) fn bench_cluster(args: &[String]) -> Result<()> {
    let o = parse_args(args)?;
    let started = Instant::now();
    let mut r = Results::new(&o);
    run_quorate(&o, &mut r)?;
    if o.skip_etcd {
        r.etcd_missing = Some("skipped (--skip-etcd)".into());
    } else {
        run_etcd(&o, &mut r)?;
    }
    let (table, verdict) = render(&o, &r);
    step("results");
    println!("{table}\n{verdict}");
    let doc = root().join("docs/benchmarks.md");
    write_section(&doc, &section_text(&o, &r, &table, &verdict))?;
    println!("\nwrote `{SECTION}` in {} ({:.0}s in all)", doc.display(), started.elapsed().as_secs_f64());
    Ok(())
}

fn run_quorate(o: &Options, r: &mut Results) -> Result<()> {
    // Up to 1,024 clients, each with a connection of its own, all from 127.0.0.1.
    let (mut cluster, _leader) = start_cluster_with("bench-cluster", Some(crate::cluster::LOOPBACK_HANDSHAKES))?;
    // The demo configurations must keep fsync on; refuse to measure otherwise.
    for id in 1..=3 {
        let cfg = cluster.dir.join(format!("node-{id}.toml"));
        let body = std::fs::read_to_string(&cfg).with_context(|| format!("cannot read {}", cfg.display()))?;
        if body.lines().any(|l| l.split('#').next().unwrap_or("").replace(' ', "") == "danger_skip_fsync=true") {
            bail!("{} turns fsync off; this benchmark measures durable writes", cfg.display());
        }
    }
    let duration = o.duration.to_string();
    let (ops, keys) = (OPS_MAX.to_string(), KEYS.to_string());
    let ticks = proc_cpu::clock_ticks_per_second();
    let nodes: Vec<(String, u32)> = cluster.pids().into_iter().map(|(id, pid)| (format!("node-{id}"), pid)).collect();
    // `label` is the line of `quorate bench`'s output that is the point: `writes`, `reads` or
    // `all` (a mixed point, whose `reads` and `writes` lines are its halves).
    let mut bench = |clients: u32, read_ratio: &str, value_size: u32, label: &str| -> Result<Point> {
        let connections = o.connections.map_or(clients, |n| n.min(clients));
        step(&format!(
            "quorate bench: {label}, read ratio {read_ratio}, {value_size} B values, {clients} clients over \
             {connections} connections, {duration} s"
        ));
        let (c, n, value) = (clients.to_string(), connections.to_string(), value_size.to_string());
        let cpu_before = proc_cpu::snapshot(&nodes, ticks)?;
        let out = cluster.quorate(&[
            "bench",
            "--clients",
            &c,
            "--connections",
            &n,
            "--value-size",
            &value,
            "--duration",
            &duration,
            "--read-ratio",
            read_ratio,
            "--ops-max",
            &ops,
            "--keys",
            &keys,
            "--consistency",
            "linearizable",
        ])?;
        let stdout = text(&out.stdout);
        print!("{stdout}");
        if !out.status.success() {
            cluster.check_running()?;
            bail!("`quorate bench` failed: {}", text(&out.stderr).trim());
        }
        let cpu = proc_cpu::used(&cpu_before, &proc_cpu::snapshot(&nodes, ticks)?)?;
        let mut p = parse_quorate(&stdout, label).with_context(|| format!("no `{label}` line in:\n{stdout}"))?;
        p.cpu = cpu;
        if label == "all" {
            p.mix = Some(Box::new(parse_quorate_mix(&stdout).with_context(|| format!("no halves in:\n{stdout}"))?));
        }
        println!("{}", cpu_line(&p));
        Ok(p)
    };
    for &w in &o.workloads {
        for &c in &o.clients {
            let label = match w.kind {
                Kind::Put => "writes",
                Kind::Mixed => "all",
            };
            let p = bench(c, w.read_ratio(), w.value_size, label)?;
            r.sweep_mut(w).context("a sweep per workload")?.quorate.push((c, p));
        }
    }
    r.quorate_reads = Some(bench(READ_CLIENTS, "1", VALUE_SIZE, "reads")?);
    cluster.stop_all();
    Ok(())
}

/// `cpu: 93.1 µs/op (node-1 1.20 s, node-2 0.80 s, node-3 0.79 s)`.
fn cpu_line(p: &Point) -> String {
    let per: Vec<String> = p.cpu.iter().map(|(l, s)| format!("{l} {s:.2} s")).collect();
    match p.cpu_us_per_op() {
        Some(us) => format!("cpu: {us:.1} µs/op ({})", per.join(", ")),
        None => format!("cpu: - ({})", per.join(", ")),
    }
}

/// Parses `writes 1234 ops (567/s), 0 errors; latency ms p50 1.23  p90 2.34  p99 3.45  max 9.99`.
fn parse_quorate(out: &str, label: &str) -> Option<Point> {
    let line = out.lines().find(|l| l.split_whitespace().next() == Some(label))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let ops = words.get(1)?.parse().ok()?;
    let after = |w: &str| words.iter().position(|x| *x == w).and_then(|i| words.get(i + 1));
    let rate = words.iter().find(|w| w.starts_with('(') && w.ends_with("/s),"))?;
    let ops_per_s = rate.trim_start_matches('(').trim_end_matches("/s),").parse().ok()?;
    let errors = words.iter().position(|x| x.starts_with("errors")).and_then(|i| words[i - 1].parse().ok())?;
    Some(Point {
        ops_per_s,
        p50_ms: Some(after("p50")?.parse().ok()?),
        p99_ms: Some(after("p99")?.parse().ok()?),
        errors,
        ops,
        cpu: Vec::new(),
        mix: None,
    })
}

/// The `reads` and `writes` lines of a mixed `quorate bench` run, as its halves.
fn parse_quorate_mix(out: &str) -> Option<Mix> {
    let half = |label| Some(Half { point: parse_quorate(out, label)?, clients: None, secs: None });
    Some(Mix { gets: half("reads")?, puts: half("writes")? })
}

/// Parses a line of etcd's load generator (`... ok=N errs=E secs=S qps=Q ... p50_ms=A ...
/// p99_ms=B ...`, also inside bench.sh's lines): the point and its seconds.
fn parse_loadgen(line: &str) -> Option<(Point, f64)> {
    let kv = |k: &str| line.split_whitespace().find_map(|w| w.strip_prefix(k).and_then(|v| v.strip_prefix('=')));
    let point = Point {
        ops_per_s: kv("qps")?.parse().ok()?,
        p50_ms: Some(kv("p50_ms")?.parse().ok()?),
        p99_ms: Some(kv("p99_ms")?.parse().ok()?),
        errors: kv("errs")?.parse().ok()?,
        ops: kv("ok")?.parse().ok()?,
        cpu: Vec::new(),
        mix: None,
    };
    Some((point, kv("secs")?.parse().ok()?))
}

/// Where the etcd-bench scripts are: `QUORATE_ETCD_BENCH` if set, else [`ETCD_BENCH`] from the
/// repository root — never one machine's absolute path.
fn etcd_bench_dir() -> PathBuf {
    etcd_bench_dir_from(std::env::var_os("QUORATE_ETCD_BENCH"), &root())
}

fn etcd_bench_dir_from(var: Option<std::ffi::OsString>, root: &Path) -> PathBuf {
    match var {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => root.join(ETCD_BENCH),
    }
}

/// Stops the etcd members `cluster.sh start` recorded, also on error paths.
struct EtcdGuard(PathBuf);

impl Drop for EtcdGuard {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(self.0.join("cluster.sh")).arg("stop").status();
    }
}

fn run_etcd(o: &Options, r: &mut Results) -> Result<()> {
    step("etcd 3.4: set-up");
    let dir = etcd_bench_dir();
    if !dir.join("bench.sh").exists() {
        bail!("{} is missing (set QUORATE_ETCD_BENCH to the etcd-bench folder); run with --skip-etcd", dir.display());
    }
    for tool in ["etcd", "etcdctl", "protoc"] {
        if !Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success()) {
            bail!(
                "`{tool}` is missing; install it with `apt-get update && apt-get install -y etcd-server \
                 etcd-client protobuf-compiler` (as root) or run with --skip-etcd"
            );
        }
    }
    // The folder is read-only: build the load generator into a target directory outside it.
    run(crate::cargo()
        .env("CARGO_TARGET_DIR", LOADGEN_TARGET)
        .args(["build", "--release", "--manifest-path"])
        .arg(dir.join("loadgen/Cargo.toml")))?;
    let lg = Path::new(LOADGEN_TARGET).join("release/etcd-loadgen");

    step("etcd 3.4: 3 members, plain HTTP");
    let _guard = EtcdGuard(dir.clone());
    run(Command::new("bash").arg(dir.join("cluster.sh")).args(["start", "plain"]))?;
    let pids_text = std::fs::read_to_string(ETCD_PIDS).with_context(|| format!("cannot read {ETCD_PIDS}"))?;
    let members = parse_pids(&pids_text).with_context(|| format!("cannot parse {ETCD_PIDS}"))?;
    let ticks = proc_cpu::clock_ticks_per_second();
    let clients = o.clients.iter().map(u32::to_string).collect::<Vec<_>>().join(" ");
    step(&format!("etcd 3.4: bench.sh plain (CLIENTS=\"{clients}\")"));
    eprintln!("$ CLIENTS=\"{clients}\" LG={} {}/bench.sh plain", lg.display(), dir.display());
    // bench.sh prints one line as each of its runs ends: the members' CPU is read at every
    // line, and a run's use is what they used since the line before (the script's own
    // etcdctl and /metrics requests between runs are in it; they are small).
    let mut child = Command::new("bash")
        .arg(dir.join("bench.sh"))
        .arg("plain")
        .env("CLIENTS", &clients)
        .env("LG", &lg)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run bench.sh")?;
    let mut stdout = String::new();
    let mut line_cpu = Vec::new();
    let mut last = proc_cpu::snapshot(&members, ticks)?;
    if let Some(out) = child.stdout.take() {
        for line in std::io::BufReader::new(out).lines() {
            let line = line.context("cannot read bench.sh's output")?;
            println!("{line}");
            let now = proc_cpu::snapshot(&members, ticks)?;
            line_cpu.push(proc_cpu::used(&last, &now)?);
            last = now;
            stdout.push_str(&line);
            stdout.push('\n');
        }
    }
    let status = child.wait().context("cannot wait for bench.sh")?;
    if !status.success() {
        bail!("bench.sh failed ({status}); its error output is above");
    }
    let mut put_leader = 0;
    for (line, cpu) in stdout.lines().zip(line_cpu) {
        let first = line.split_whitespace().next().unwrap_or("");
        let kv = |k: &str| line.split_whitespace().find_map(|w| w.strip_prefix(k).and_then(|v| v.strip_prefix('=')));
        let point = || parse_loadgen(line).map(|(p, _)| Point { cpu: cpu.clone(), ..p });
        match first {
            "PUT-leader" => {
                if let (Some(c), Some(p)) = (kv("clients").and_then(|c| c.parse().ok()), point()) {
                    println!("etcd PUT-leader {c} clients {}", cpu_line(&p));
                    put_leader += 1;
                    if let Some(s) = r.sweep_mut(Workload::PUT_256) {
                        s.etcd.push((c, p));
                    }
                }
            }
            "GET-256" if kv("cons") == Some("l") => r.etcd_reads = point(),
            _ => {}
        }
    }
    if put_leader == 0 {
        bail!("no PUT-leader line in bench.sh's output:\n{stdout}");
    }
    r.etcd_raw = stdout;

    let direct: Vec<Workload> = o.workloads.iter().copied().filter(|&w| w != Workload::PUT_256).collect();
    if !direct.is_empty() {
        let leader = etcd_leader()?;
        let direct_runs = EtcdDirect { lg: &lg, members: &members, ticks, duration_s: o.duration };
        for w in direct {
            for &c in &o.clients {
                let Some(runs) = etcd_runs(w, c, &leader) else {
                    println!("etcd {}: {c} client: no point (a mixed point needs a client per half)", w.label());
                    continue;
                };
                let p = direct_runs.point(w, c, &runs, &mut r.etcd_direct_raw)?;
                println!("etcd {} {c} clients {}", w.label(), cpu_line(&p));
                r.sweep_mut(w).context("a sweep per workload")?.etcd.push((c, p));
            }
        }
    }
    drop(_guard);
    Ok(())
}

/// The leader's client URL, from `etcdctl endpoint status` (as bench.sh finds it).
fn etcd_leader() -> Result<String> {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={ETCD_ENDPOINTS}"))
        .args(["endpoint", "status"])
        .output()
        .context("cannot run etcdctl")?;
    let stdout = text(&out.stdout);
    if !out.status.success() {
        bail!("`etcdctl endpoint status` failed: {}", text(&out.stderr).trim());
    }
    parse_etcd_leader(&stdout).with_context(|| format!("no leader in `etcdctl endpoint status`:\n{stdout}"))
}

/// `http://127.0.0.1:23792, 8e9e05c52164694d, 3.4.23, 20 kB, true, false, 2, 8, 8, `: the
/// endpoint of the line whose fifth field (is leader) is `true`.
fn parse_etcd_leader(status: &str) -> Option<String> {
    let mut leaders = status.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(", ").map(str::trim).collect();
        (f.get(4) == Some(&"true")).then(|| f[0].to_string())
    });
    let leader = leaders.next()?;
    // Two members claiming leadership would make the put target a guess.
    leaders.next().is_none().then_some(leader)
}

/// Which operation one load generator process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// Puts to the leader (as bench.sh's PUT-leader).
    Put,
    /// Linearizable gets of one key, over all members (as bench.sh's GET-256).
    Get,
}

/// One etcd load generator process of a point.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LoadgenRun {
    op: Op,
    endpoints: String,
    clients: u32,
    value_size: u32,
}

impl LoadgenRun {
    /// Its arguments for `total` operations: bench.sh's, with this run's value size and
    /// clients (connections as bench.sh gives them: at most 100 for puts, 99 for gets).
    fn args(&self, total: u64) -> Vec<String> {
        let conns = match self.op {
            Op::Put => self.clients.min(100),
            Op::Get => self.clients.min(99),
        };
        let mut a: Vec<String> = vec!["--endpoints".into(), self.endpoints.clone()];
        if self.op == Op::Get {
            a.extend(["--op", "get", "--consistency", "l"].map(String::from));
        }
        for (k, v) in [
            ("--conns", u64::from(conns)),
            ("--clients", u64::from(self.clients)),
            ("--total", total),
            ("--key-size", 8),
            ("--val-size", u64::from(self.value_size)),
        ] {
            a.extend([k.to_string(), v.to_string()]);
        }
        a
    }

    fn probe_total(&self) -> u64 {
        (u64::from(self.clients) * PROBE_OPS_PER_CLIENT).clamp(PROBE_OPS_MIN, PROBE_OPS_MAX)
    }
}

/// The load generator processes of one etcd point: puts, or puts and gets at once (a mixed
/// point: ceil(c/2) clients putting, floor(c/2) getting); `None` for a 1-client mixed point.
fn etcd_runs(w: Workload, clients: u32, leader: &str) -> Option<Vec<LoadgenRun>> {
    let put = |clients| LoadgenRun { op: Op::Put, endpoints: leader.to_string(), clients, value_size: w.value_size };
    match w.kind {
        Kind::Put => Some(vec![put(clients)]),
        Kind::Mixed => {
            let gets = clients / 2;
            (gets > 0).then(|| {
                vec![
                    put(clients - gets),
                    LoadgenRun {
                        op: Op::Get,
                        endpoints: ETCD_ENDPOINTS.to_string(),
                        clients: gets,
                        value_size: w.value_size,
                    },
                ]
            })
        }
    }
}

/// Operations for a point of `duration_s` at the probe's rate.
fn sized_total(probe_ops_per_s: f64, duration_s: f64) -> u64 {
    ((probe_ops_per_s * duration_s).round() as u64).clamp(ETCD_OPS_MIN, OPS_MAX)
}

/// Runs the processes at once; each one's output line and what it parses to.
fn run_loadgens(lg: &Path, runs: &[LoadgenRun], totals: &[u64]) -> Result<Vec<(String, Point, f64)>> {
    let mut children = Vec::new();
    for (run, total) in runs.iter().zip(totals) {
        let args = run.args(*total);
        eprintln!("$ {} {}", lg.display(), args.join(" "));
        let child = Command::new(lg)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", lg.display()));
        children.push(child);
    }
    // Wait for every process started before reporting any failure.
    let outputs: Vec<Result<std::process::Output>> = children
        .into_iter()
        .map(|c| c.and_then(|c| c.wait_with_output().context("cannot wait for the load generator")))
        .collect();
    let mut lines = Vec::new();
    for out in outputs {
        let out = out?;
        let stdout = text(&out.stdout);
        if !out.status.success() {
            bail!("the etcd load generator failed ({}): {}", out.status, text(&out.stderr).trim());
        }
        let line = stdout.lines().find(|l| l.starts_with("op=")).unwrap_or("").to_string();
        let (p, secs) = parse_loadgen(&line).with_context(|| format!("no result line in:\n{stdout}"))?;
        lines.push((line, p, secs));
    }
    Ok(lines)
}

/// What every directly run etcd point of a run shares.
struct EtcdDirect<'a> {
    /// The load generator's binary.
    lg: &'a Path,
    /// The etcd members whose CPU is charged to the points.
    members: &'a [(String, u32)],
    ticks: u64,
    duration_s: f64,
}

impl EtcdDirect<'_> {
    /// One point: a probe, then totals sized to the duration, with the members' CPU over the
    /// second run. Appends the load generators' lines to `raw`.
    fn point(&self, w: Workload, clients: u32, runs: &[LoadgenRun], raw: &mut String) -> Result<Point> {
        step(&format!("etcd 3.4: {}, {clients} clients", w.label()));
        let probe_totals: Vec<u64> = runs.iter().map(LoadgenRun::probe_total).collect();
        let probe = run_loadgens(self.lg, runs, &probe_totals)?;
        let totals: Vec<u64> = probe.iter().map(|(_, p, _)| sized_total(p.ops_per_s, self.duration_s)).collect();
        let before = proc_cpu::snapshot(self.members, self.ticks)?;
        let lines = run_loadgens(self.lg, runs, &totals)?;
        let cpu = proc_cpu::used(&before, &proc_cpu::snapshot(self.members, self.ticks)?)?;
        for (line, _, _) in &lines {
            println!("{line}");
            raw.push_str(&format!("{} c={clients}: {line}\n", w.spec()));
        }
        combine(runs, lines.into_iter().map(|(_, p, secs)| (p, secs)).collect(), cpu)
    }
}

/// A point from its processes' results: one process as it is; a mixed point's two summed,
/// each kept as a half.
fn combine(runs: &[LoadgenRun], results: Vec<(Point, f64)>, cpu: Vec<(String, f64)>) -> Result<Point> {
    match (runs, results.as_slice()) {
        ([_], [(p, _)]) => Ok(Point { cpu, ..p.clone() }),
        ([a, b], [(pa, sa), (pb, sb)]) if a.op != b.op => {
            let half = |run: &LoadgenRun, p: &Point, secs: f64| Half {
                point: p.clone(),
                clients: Some(run.clients),
                secs: Some(secs),
            };
            let (ha, hb) = (half(a, pa, *sa), half(b, pb, *sb));
            let (gets, puts) = if a.op == Op::Get { (ha, hb) } else { (hb, ha) };
            Ok(Point {
                ops_per_s: pa.ops_per_s + pb.ops_per_s,
                p50_ms: None,
                p99_ms: None,
                errors: pa.errors + pb.errors,
                ops: pa.ops + pb.ops,
                cpu,
                mix: Some(Box::new(Mix { gets, puts })),
            })
        }
        _ => bail!("{} load generator runs, {} results: not a point", runs.len(), results.len()),
    }
}

/// The etcd members' process ids as `cluster.sh` records them, labelled `m1`, `m2`, ...
fn parse_pids(text: &str) -> Result<Vec<(String, u32)>> {
    let pids = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .enumerate()
        .map(|(i, l)| Ok((format!("m{}", i + 1), l.parse::<u32>().with_context(|| format!("bad process id `{l}`"))?)))
        .collect::<Result<Vec<_>>>()?;
    if pids.is_empty() {
        bail!("no process ids");
    }
    Ok(pids)
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |ms| format!("{ms:.2}"))
}

fn fmt_point(p: Option<&Point>) -> (String, String, String, String) {
    match p {
        Some(p) => (
            format!("{:.0}", p.ops_per_s),
            fmt_ms(p.p50_ms),
            fmt_ms(p.p99_ms),
            p.cpu_us_per_op().map_or_else(|| "-".into(), |us| format!("{us:.0}")),
        ),
        None => ("-".into(), "-".into(), "-".into(), "-".into()),
    }
}

/// `node-1 1.20 / node-2 0.80 / node-3 0.79` (CPU seconds during the point), or `-`.
fn fmt_per_process(p: Option<&Point>) -> String {
    match p {
        Some(p) if !p.cpu.is_empty() => {
            p.cpu.iter().map(|(l, s)| format!("{l} {s:.2}")).collect::<Vec<_>>().join(" / ")
        }
        _ => "-".into(),
    }
}

/// A half's `ops/s` (with an etcd process's clients and seconds) and `p50 / p99`.
fn fmt_half(h: Option<&Half>) -> (String, String) {
    let Some(h) = h else { return ("-".into(), "-".into()) };
    let mut rate = format!("{:.0}", h.point.ops_per_s);
    if let (Some(c), Some(s)) = (h.clients, h.secs) {
        rate.push_str(&format!(" ({c} clients, {s:.1} s)"));
    }
    (rate, format!("{} / {}", fmt_ms(h.point.p50_ms), fmt_ms(h.point.p99_ms)))
}

fn ratio(q: Option<f64>, e: Option<f64>) -> Option<f64> {
    match (q, e) {
        (Some(q), Some(e)) if e > 0.0 => Some(q / e),
        _ => None,
    }
}

fn lookup(v: &[(u32, Point)], c: u32) -> Option<&Point> {
    v.iter().find(|(n, _)| *n == c).map(|(_, p)| p)
}

/// Why a sweep has no etcd figure at `c` clients.
fn etcd_missing_at(o: &Options, r: &Results, w: Workload, c: u32) -> String {
    if let Some(why) = &r.etcd_missing {
        why.clone()
    } else if !o.clients.contains(&c) {
        "this client count was not in --clients".into()
    } else if !o.workloads.contains(&w) {
        "this workload was not in --workloads".into()
    } else if w.kind == Kind::Mixed && c < 2 {
        "etcd's mix needs a client per half".into()
    } else {
        "no figure".into()
    }
}

/// The p99 latencies a goal compares: the point's, or for a mixed point each half's.
fn p99_pairs(q: &Point, e: &Point) -> Option<Vec<(&'static str, f64, f64)>> {
    match (&q.mix, &e.mix) {
        (Some(qm), Some(em)) => Some(vec![
            ("gets ", qm.gets.point.p99_ms?, em.gets.point.p99_ms?),
            ("puts ", qm.puts.point.p99_ms?, em.puts.point.p99_ms?),
        ]),
        _ => Some(vec![("", q.p99_ms?, e.p99_ms?)]),
    }
}

/// The table (markdown) and the verdict on the issue's goals.
fn render(o: &Options, r: &Results) -> (String, String) {
    let mut t = String::from(
        "| workload | clients | quorate ops/s | quorate p50 ms | quorate p99 ms | quorate CPU µs/op | etcd ops/s | etcd \
         p50 ms | etcd p99 ms | etcd CPU µs/op | ops/s ratio (q/e) | p99 ratio (q/e) | CPU/op ratio (q/e) \
         |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut cpu =
        String::from("| workload | clients | quorate CPU s per node | etcd CPU s per member |\n|---|---|---|---|\n");
    let mut row = |label: &str, clients: String, q: Option<&Point>, e: Option<&Point>, comparable: bool| {
        let (qo, q50, q99, qc) = fmt_point(q);
        let (eo, e50, e99, ec) = fmt_point(e);
        let (ratio_ops, ratio_p99) = match (q, e) {
            (Some(q), Some(e)) if comparable && e.ops_per_s > 0.0 => (
                format!("{:.2}x", q.ops_per_s / e.ops_per_s),
                ratio(q.p99_ms, e.p99_ms).map_or_else(|| "-".into(), |x| format!("{x:.2}")),
            ),
            _ => ("-".into(), "-".into()),
        };
        let cpur = match ratio(q.and_then(Point::cpu_us_per_op), e.and_then(Point::cpu_us_per_op)) {
            Some(x) if comparable => format!("{x:.2}"),
            _ => "-".into(),
        };
        t.push_str(&format!(
            "| {label} | {clients} | {qo} | {q50} | {q99} | {qc} | {eo} | {e50} | {e99} | {ec} | {ratio_ops} | \
             {ratio_p99} | {cpur} |\n"
        ));
        cpu.push_str(&format!("| {label} | {clients} | {} | {} |\n", fmt_per_process(q), fmt_per_process(e)));
    };
    for s in &r.sweeps {
        for &c in &o.clients {
            row(&s.workload.label(), c.to_string(), lookup(&s.quorate, c), lookup(&s.etcd, c), true);
        }
    }
    row(
        "get (linearizable)",
        format!("{READ_CLIENTS} (etcd: 256)"),
        r.quorate_reads.as_ref(),
        r.etcd_reads.as_ref(),
        false,
    );
    let errors: u64 = r.sweeps.iter().flat_map(|s| &s.quorate).map(|(_, p)| p.errors).sum::<u64>()
        + r.quorate_reads.as_ref().map_or(0, |p| p.errors);
    // Quorate's get row reads the keys as the last workload left them.
    let read_bytes = o.workloads.last().map_or(VALUE_SIZE, |w| w.value_size);
    t.push_str(&format!(
        "\nThe get row is context, not a comparison: quorate at {READ_CLIENTS} clients, etcd at 256 (bench.sh's \
         GET-256, linearizable), so no ratio is given. Quorate's gets read the values the last workload wrote \
         ({read_bytes} B), all its clients one principal.\n"
    ));
    let mixed: Vec<&Sweep> = r.sweeps.iter().filter(|s| s.workload.kind == Kind::Mixed).collect();
    if !mixed.is_empty() {
        t.push_str(
            "\nA mixed row's ops/s is gets and puts together. Quorate's clients choose a get or a put per \
             operation (50/50 in expectation); etcd's mix is two load generators at once, half the clients \
             putting to the leader and half doing linearizable gets, so its shares follow each loop's own rate \
             and are not forced to 50/50, and its ops/s is the sum of the two processes' rates. The two \
             processes' latencies are not merged (etcd's p50 and p99 are `-` above); each half, in ms \
             (etcd: the clients and seconds of each process):\n\n| workload | clients | quorate gets/s | quorate \
             get p50 / p99 | quorate puts/s | quorate put p50 / p99 | etcd gets/s | etcd get p50 / p99 | etcd \
             puts/s | etcd put p50 / p99 | get p99 ratio (q/e) | put p99 ratio (q/e) |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for s in mixed {
            for &c in &o.clients {
                let (q, e) = (
                    lookup(&s.quorate, c).and_then(|p| p.mix.as_deref()),
                    lookup(&s.etcd, c).and_then(|p| p.mix.as_deref()),
                );
                let (qg, qg_ms) = fmt_half(q.map(|m| &m.gets));
                let (qp, qp_ms) = fmt_half(q.map(|m| &m.puts));
                let (eg, eg_ms) = fmt_half(e.map(|m| &m.gets));
                let (ep, ep_ms) = fmt_half(e.map(|m| &m.puts));
                let r99 = |qh: Option<&Half>, eh: Option<&Half>| {
                    ratio(qh.and_then(|h| h.point.p99_ms), eh.and_then(|h| h.point.p99_ms))
                        .map_or_else(|| "-".into(), |x| format!("{x:.2}"))
                };
                t.push_str(&format!(
                    "| {} | {c} | {qg} | {qg_ms} | {qp} | {qp_ms} | {eg} | {eg_ms} | {ep} | {ep_ms} | {} | {} |\n",
                    s.workload.label(),
                    r99(q.map(|m| &m.gets), e.map(|m| &m.gets)),
                    r99(q.map(|m| &m.puts), e.map(|m| &m.puts)),
                ));
            }
        }
    }
    t.push_str(&format!(
        "\nCPU µs/op: the CPU time (user + system, from `/proc/<pid>/stat`) of the three quorate nodes, or of the \
         three etcd members, during the point, divided by the operations that succeeded (the load generators are \
         not counted). Per process, in seconds:\n\n{cpu}"
    ));
    if errors > 0 {
        t.push_str(&format!("\nquorate bench reported {errors} failed operations (not counted in ops/s).\n"));
    }

    let mut v = String::new();
    for (i, s) in r.sweeps.iter().enumerate() {
        let w = s.workload;
        if i > 0 {
            v.push('\n');
        }
        let (rate, op) = match w.kind {
            Kind::Put => ("writes/s", "write"),
            Kind::Mixed => ("ops/s", "op"),
        };
        if w == Workload::PUT_256 {
            v.push_str("Goals (quorate with mTLS + fsync vs etcd plain HTTP + fsync, writes):\n");
        } else {
            v.push_str(&format!("Goals, {} (the same comparison):\n", w.label()));
        }
        for (c, factor, need_p99) in [(1u32, 1.0, false), (64, 2.0, true), (256, 2.0, true)] {
            let goal = if need_p99 {
                format!("{c} clients: >= {factor:.0}x etcd's {rate} and a lower p99")
            } else {
                format!("{c} client: >= etcd's {rate}")
            };
            let line = match (lookup(&s.quorate, c), lookup(&s.etcd, c)) {
                (Some(q), Some(e)) if e.ops_per_s > 0.0 => {
                    let x = q.ops_per_s / e.ops_per_s;
                    let mut why = format!("{x:.2}x {rate}");
                    let mut p99_ok = true;
                    if need_p99 {
                        match p99_pairs(q, e) {
                            Some(pairs) => {
                                let shown: Vec<String> =
                                    pairs.iter().map(|(l, qp, ep)| format!("{l}{qp:.2} vs {ep:.2}")).collect();
                                why.push_str(&format!(", p99 {} ms", shown.join(", ")));
                                p99_ok = pairs.iter().all(|(_, qp, ep)| qp < ep);
                            }
                            None => {
                                why.push_str(", p99 not measured");
                                p99_ok = false;
                            }
                        }
                    }
                    format!("{} ({why})", if x >= factor && p99_ok { "MET" } else { "MISSED" })
                }
                _ => format!("NOT MEASURED ({})", etcd_missing_at(o, r, w, c)),
            };
            v.push_str(&format!("- {goal}: {line}\n"));
        }
        for c in [64u32, 256] {
            let line = match (
                lookup(&s.quorate, c).and_then(Point::cpu_us_per_op),
                lookup(&s.etcd, c).and_then(Point::cpu_us_per_op),
            ) {
                (Some(q), Some(e)) => {
                    format!("{} ({q:.0} vs {e:.0} µs per {op})", if q <= e / 2.0 { "MET" } else { "MISSED" })
                }
                _ => format!("NOT MEASURED ({})", etcd_missing_at(o, r, w, c)),
            };
            v.push_str(&format!("- {c} clients: CPU per {op} <= half of etcd's: {line}\n"));
        }
    }
    (t, v)
}

fn machine() -> String {
    let sh = |c: &str| {
        Command::new("sh")
            .args(["-c", c])
            .output()
            .map(|o| text(&o.stdout).trim().to_string())
            .unwrap_or_else(|_| "?".into())
    };
    let model = sh("lscpu | grep 'Model name' | sed 's/Model name:[[:space:]]*//'");
    format!("{} cores (`nproc`), {model}; run {}", sh("nproc"), sh("date -u '+%Y-%m-%d %H:%M UTC'"))
}

fn section_text(o: &Options, r: &Results, table: &str, verdict: &str) -> String {
    let clients = o.clients.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let mut command = format!("cargo xtask bench cluster --duration {} --clients {clients}", o.duration);
    if let Some(n) = o.connections {
        command.push_str(&format!(" --connections {n}"));
    }
    let default_workloads = o.workloads == [Workload::PUT_256];
    if !default_workloads {
        let specs: Vec<String> = o.workloads.iter().map(|w| w.spec()).collect();
        command.push_str(&format!(" --workloads {}", specs.join(",")));
    }
    if o.skip_etcd {
        command.push_str(" --skip-etcd");
    }
    let quorate_work = if default_workloads {
        format!("{VALUE_SIZE} B values over {KEYS} keys, puts only (`--read-ratio 0`) for each client count")
    } else {
        let each: Vec<String> = o
            .workloads
            .iter()
            .map(|w| format!("{} (`--read-ratio {} --value-size {}`)", w.label(), w.read_ratio(), w.value_size))
            .collect();
        format!("over {KEYS} keys, for each workload in turn — {} — and each client count", each.join(", "))
    };
    let mut s = format!(
        "{SECTION}\n\nCommand: `{command}` (`xtask/src/bench_cluster.rs`; defaults `--duration 10 --clients \
         1,16,64,256 --workloads put`; `--workloads put,mixed,put:4096` adds 50 % linearizable gets and 4 KiB \
         values).\n\nWorkload: a 3-node `quorate` cluster on 127.0.0.1:7001-7003 set up like `cargo xtask \
         demo` (RocksDB, fsync on, mutual TLS on client and peer links); `quorate bench` closed loop, {quorate_work}, \
         {} s each (cap {OPS_MAX} operations; {}), then linearizable gets at {READ_CLIENTS} clients. In the same run, \
         etcd 3.4 (3 members on 127.0.0.1, plain HTTP, fsync on) via `{ETCD_BENCH}`: `cluster.sh start plain`, \
         `CLIENTS=\"{}\" bench.sh plain` (puts of {VALUE_SIZE} B values with 8 B sequential keys to the leader, fixed \
         totals), `cluster.sh stop`; its linearizable-get row is bench.sh's GET-256 (256 clients). Load generators \
         share the machine with the nodes.\n\n",
        o.duration,
        o.connections.map_or_else(
            || "each client with a connection of its own".to_string(),
            |n| format!("the clients share {n} connections, as sessions over QUIC streams")
        ),
        o.clients.iter().map(u32::to_string).collect::<Vec<_>>().join(" "),
    );
    if o.workloads.iter().any(|&w| w != Workload::PUT_256) {
        s.push_str(&format!(
            "etcd's workloads other than `put` run its load generator (`{ETCD_BENCH}/loadgen`) directly, with \
             bench.sh's flags, before `cluster.sh stop`; the leader is found as bench.sh finds it (`etcdctl \
             endpoint status`). Puts go to the leader with 8 B sequential keys and `--val-size` the workload's \
             size. A mixed point is two load generators at once: ceil(c/2) clients putting to the leader and \
             floor(c/2) doing linearizable gets of one key over the three members (bench.sh's GET shape); its \
             ops/s is their sum. That is two closed loops, whose shares follow their own rates, where Quorate's \
             clients choose per operation; at 1 client etcd has no mixed point. The load generator runs a fixed \
             total, not a duration: each point first runs a probe ({PROBE_OPS_PER_CLIENT} operations a client, \
             {PROBE_OPS_MIN} to {PROBE_OPS_MAX}; both halves at once), then the probe's rate times {} s operations, \
             so it lasts about as long as Quorate's point (the seconds each process took are in the output \
             below).{}\n\n",
            o.duration,
            if o.workloads.contains(&Workload::PUT_256) {
                ""
            } else {
                " bench.sh still runs, for the get row; its put lines are in its output below, not in the table."
            }
        ));
    }
    s.push_str(&format!("Machine: {}.\n\n", machine()));
    if o.duration < 10.0 {
        s.push_str(&format!(
            "Note: this run used {} s per point instead of the default 10 s, to fit a time limit; figures from one \
             run, not a median.\n\n",
            o.duration
        ));
    }
    s.push_str(table);
    s.push('\n');
    s.push_str(verdict);
    if !r.etcd_raw.is_empty() {
        s.push_str("\n<details><summary>bench.sh output</summary>\n\n```\n");
        s.push_str(r.etcd_raw.trim_end());
        s.push_str("\n```\n</details>\n");
    }
    if !r.etcd_direct_raw.is_empty() {
        s.push_str(
            "\n<details><summary>etcd load generator, run directly (workload, clients: its line)</summary>\n\n```\n",
        );
        s.push_str(r.etcd_direct_raw.trim_end());
        s.push_str("\n```\n</details>\n");
    }
    s
}

/// Replaces the generated part of the section or appends the section.
fn write_section(doc: &Path, section: &str) -> Result<()> {
    let old = std::fs::read_to_string(doc).unwrap_or_default();
    let new = replace_section(&old, section);
    std::fs::write(doc, new).with_context(|| format!("cannot write {}", doc.display()))
}

/// The generated part of the section runs from its heading to its first `### ` subsection (or
/// the next `## ` heading): that part is replaced, and the hand-written `### ` subsections
/// after it (what earlier runs showed, kept for the record) stay as they are. The generated
/// text itself has no `### ` heading.
fn replace_section(old: &str, section: &str) -> String {
    let section = format!("{}\n", section.trim_end());
    let lines: Vec<&str> = old.lines().collect();
    match lines.iter().position(|l| l.trim_end() == SECTION) {
        Some(start) => {
            let end = lines[start + 1..]
                .iter()
                .position(|l| l.starts_with("## ") || l.starts_with("### "))
                .map_or(lines.len(), |i| start + 1 + i);
            let mut out = lines[..start].join("\n");
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&section);
            if end < lines.len() {
                out.push('\n');
                out.push_str(&lines[end..].join("\n"));
                out.push('\n');
            }
            out
        }
        None => format!("{}\n\n{section}", old.trim_end()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_optional_and_bounded() {
        assert_eq!(parse_args(&args(&[])).unwrap().connections, None);
        let o = parse_args(&args(&["--clients", "256", "--connections", "4"])).unwrap();
        assert_eq!((o.clients.clone(), o.connections), (vec![256], Some(4)));
        for bad in ["0", "1025", "x"] {
            assert!(parse_args(&args(&["--connections", bad])).is_err(), "{bad}");
        }
        let text = section_text(&o, &Results::default(), "", "");
        assert!(text.contains("--connections 4") && text.contains("share 4 connections"), "{text}");
    }

    #[test]
    fn the_etcd_bench_folder_is_beside_the_repository_unless_the_variable_says_otherwise() {
        let root = Path::new("/somewhere/quorate");
        assert_eq!(etcd_bench_dir_from(None, root), root.join("../shared/tools/etcd-bench"));
        assert_eq!(etcd_bench_dir_from(Some("".into()), root), root.join("../shared/tools/etcd-bench"));
        assert_eq!(etcd_bench_dir_from(Some("/opt/eb".into()), root), PathBuf::from("/opt/eb"));
    }

    #[test]
    fn parses_quorate_bench_lines() {
        let out = "64 clients, 256 B values, read ratio 0.00, 10.0 s\n\
                   all    5000 ops (500/s), 0 errors; latency ms p50 1.00  p90 2.00  p99 3.00  max 4.00\n\
                   reads  0 ops, 0 errors\n\
                   writes 5000 ops (500/s), 2 errors; latency ms p50 1.50  p90 2.00  p99 3.25  max 4.00\n";
        let p = parse_quorate(out, "writes").unwrap();
        assert_eq!(p, point(500.0, Some(1.5), Some(3.25), 2, 5000));
        assert_eq!(p.cpu_us_per_op(), None, "no CPU measured");
        assert!(parse_quorate(out, "reads").is_none());
        assert!(parse_quorate_mix(out).is_none(), "a mixed run has both halves");
    }

    /// A point without CPU figures or halves.
    fn point(ops_per_s: f64, p50_ms: Option<f64>, p99_ms: Option<f64>, errors: u64, ops: u64) -> Point {
        Point { ops_per_s, p50_ms, p99_ms, errors, ops, cpu: Vec::new(), mix: None }
    }

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn workloads_default_to_puts_of_256_bytes_and_are_parsed_strictly() {
        assert_eq!(parse_args(&[]).unwrap().workloads, vec![Workload::PUT_256]);
        let o = parse_args(&args(&["--workloads", "put,mixed,put:4096"])).unwrap();
        let put = |value_size| Workload { kind: Kind::Put, value_size };
        assert_eq!(o.workloads, vec![put(256), Workload { kind: Kind::Mixed, value_size: 256 }, put(4096)]);
        assert_eq!(
            o.workloads.iter().map(|w| (w.spec(), w.label(), w.read_ratio())).collect::<Vec<_>>(),
            vec![
                ("put".to_string(), "put 256 B".to_string(), "0"),
                ("mixed".to_string(), "mixed 256 B (50 % get)".to_string(), "0.5"),
                ("put:4096".to_string(), "put 4096 B".to_string(), "0"),
            ]
        );
        // An explicit default size is the same workload.
        assert_eq!(
            parse_workloads("mixed:256, put:65536").unwrap(),
            vec![Workload { kind: Kind::Mixed, value_size: 256 }, put(65536)]
        );
        for bad in [
            "",
            "get",
            "put:",
            "put:0",
            "put:65537",
            "put:4k",
            "put,put:256",
            "mixed:1:2",
            "put,put:1,put:2,put:3,put:4,put:5,put:6,put:7,put:8",
        ] {
            assert!(parse_workloads(bad).is_err(), "{bad}");
        }
        assert!(parse_args(&args(&["--workloads"])).is_err(), "a value is required");
        let text = section_text(&o, &Results::new(&o), "", "");
        assert!(text.contains("--workloads put,mixed,put:4096"), "{text}");
        assert!(text.contains("ceil(c/2) clients putting") && text.contains("two closed loops"), "{text}");
        let default = section_text(&parse_args(&[]).unwrap(), &Results::default(), "", "");
        assert!(
            default.contains("Command: `cargo xtask bench cluster --duration 10 --clients 1,16,64,256` ("),
            "{default}"
        );
        assert!(!default.contains("ceil(c/2)"), "{default}");
    }

    #[test]
    fn a_mixed_quorate_run_gives_the_point_and_its_halves() {
        let out = "16 clients over 16 connections, 256 B values, read ratio 0.50, 3.0 s\n\
                   all    9000 ops (3000/s), 1 errors; latency ms p50 2.00  p90 3.00  p99 6.00  max 9.00\n\
                   reads  4600 ops (1533/s), 0 errors; latency ms p50 1.00  p90 2.00  p99 4.00  max 5.00\n\
                   writes 4400 ops (1467/s), 1 errors; latency ms p50 3.00  p90 4.00  p99 7.50  max 9.00\n";
        assert_eq!(parse_quorate(out, "all").unwrap(), point(3000.0, Some(2.0), Some(6.0), 1, 9000));
        let m = parse_quorate_mix(out).unwrap();
        assert_eq!(m.gets, Half { point: point(1533.0, Some(1.0), Some(4.0), 0, 4600), clients: None, secs: None });
        assert_eq!(m.puts, Half { point: point(1467.0, Some(3.0), Some(7.5), 1, 4400), clients: None, secs: None });
    }

    #[test]
    fn etcd_load_generator_lines_and_leader_are_parsed() {
        let line = "op=get cons=l conns=32 clients=32 ok=20000 errs=1 secs=9.87 qps=2026 mean_ms=15.00 p50_ms=14.10 \
                    p90_ms=20.00 p99_ms=31.50 p999_ms=40.00 max_ms=50.00 loadgen_cpu=30%";
        assert_eq!(parse_loadgen(line), Some((point(2026.0, Some(14.1), Some(31.5), 1, 20000), 9.87)));
        // Inside bench.sh's lines too.
        let (p, _) = parse_loadgen(&format!("PUT-leader {line} box_cpu=90% load1=3.0")).unwrap();
        assert_eq!(p.ops, 20000);
        assert_eq!(parse_loadgen("op=put ok=10 errs=0"), None);
        let status = "http://127.0.0.1:23791, 8e9e05c52164694d, 3.4.23, 20 kB, false, false, 2, 8, 8, \n\
                      http://127.0.0.1:23792, 91bc3c398fb3c146, 3.4.23, 20 kB, true, false, 2, 8, 8, \n\
                      http://127.0.0.1:23793, fd422379fda50e48, 3.4.23, 20 kB, false, false, 2, 8, 8, \n";
        assert_eq!(parse_etcd_leader(status).as_deref(), Some("http://127.0.0.1:23792"));
        assert_eq!(parse_etcd_leader(&status.replace("false, false", "true, false")), None, "two leaders");
        assert_eq!(parse_etcd_leader(&status.replace("true", "false")), None, "no leader");
    }

    #[test]
    fn etcd_points_split_clients_and_take_bench_sh_flags() {
        let leader = "http://127.0.0.1:23792";
        let mixed = Workload { kind: Kind::Mixed, value_size: 256 };
        assert_eq!(etcd_runs(mixed, 1, leader), None, "a half would have no client");
        let runs = etcd_runs(mixed, 17, leader).unwrap();
        assert_eq!(runs.iter().map(|r| (r.op, r.clients)).collect::<Vec<_>>(), vec![(Op::Put, 9), (Op::Get, 8)]);
        assert_eq!(
            runs[0].args(1000).join(" "),
            format!("--endpoints {leader} --conns 9 --clients 9 --total 1000 --key-size 8 --val-size 256")
        );
        assert_eq!(
            runs[1].args(2000).join(" "),
            format!(
                "--endpoints {ETCD_ENDPOINTS} --op get --consistency l --conns 8 --clients 8 --total 2000 --key-size 8 --val-size 256"
            )
        );
        let put = etcd_runs(Workload { kind: Kind::Put, value_size: 4096 }, 256, leader).unwrap();
        assert_eq!(put.len(), 1);
        assert!(put[0].args(5).join(" ").contains("--conns 100 --clients 256 --total 5 --key-size 8 --val-size 4096"));
        let gets = &etcd_runs(mixed, 512, leader).unwrap()[1];
        assert!(gets.args(5).join(" ").contains("--conns 99 --clients 256"), "as bench.sh's GET-256");
        // Probes and totals stay within their bounds.
        assert_eq!(runs[1].probe_total(), PROBE_OPS_MIN);
        assert_eq!(put[0].probe_total(), PROBE_OPS_MAX);
        let put_100 = &etcd_runs(Workload { kind: Kind::Put, value_size: 4096 }, 100, leader).unwrap()[0];
        assert_eq!(put_100.probe_total(), 100 * PROBE_OPS_PER_CLIENT);
        assert_eq!(sized_total(4321.4, 10.0), 43_214);
        assert_eq!(sized_total(0.0, 10.0), ETCD_OPS_MIN);
        assert_eq!(sized_total(1e9, 10.0), OPS_MAX);
    }

    #[test]
    fn an_etcd_mixed_point_sums_its_halves() {
        let leader = "http://127.0.0.1:23792";
        let runs = etcd_runs(Workload { kind: Kind::Mixed, value_size: 256 }, 64, leader).unwrap();
        let (puts, gets) =
            (point(3000.0, Some(9.0), Some(20.0), 0, 30_000), point(4000.0, Some(7.0), Some(15.0), 2, 41_000));
        let cpu = vec![("m1".to_string(), 7.1)];
        let p = combine(&runs, vec![(puts.clone(), 10.0), (gets.clone(), 10.25)], cpu.clone()).unwrap();
        assert_eq!((p.ops_per_s, p.ops, p.errors, p.p50_ms, p.p99_ms), (7000.0, 71_000, 2, None, None));
        assert_eq!(p.cpu, cpu);
        let m = p.mix.unwrap();
        assert_eq!(m.gets, Half { point: gets, clients: Some(32), secs: Some(10.25) });
        assert_eq!(m.puts, Half { point: puts.clone(), clients: Some(32), secs: Some(10.0) });
        assert!(combine(&runs, vec![(puts, 1.0)], Vec::new()).is_err(), "a result per process");
    }

    #[test]
    fn mixed_rows_compare_sums_and_each_half() {
        let mixed = Workload { kind: Kind::Mixed, value_size: 256 };
        let o = Options {
            duration: 10.0,
            clients: vec![1, 64],
            connections: None,
            workloads: vec![mixed],
            skip_etcd: false,
        };
        let half =
            |ops_per_s, p99, clients, secs| Half { point: point(ops_per_s, Some(1.0), Some(p99), 0, 1), clients, secs };
        let with = |p: Point, gets: Half, puts: Half, cpu: f64| Point {
            cpu: vec![("x".to_string(), cpu)],
            mix: Some(Box::new(Mix { gets, puts })),
            ..p
        };
        let q = with(
            point(9000.0, Some(2.0), Some(6.0), 0, 90_000),
            half(4600.0, 4.0, None, None),
            half(4400.0, 8.0, None, None),
            9.0,
        );
        let e = with(
            point(4000.0, None, None, 0, 40_000),
            half(2500.0, 5.0, Some(32), Some(10.1)),
            half(1500.0, 9.0, Some(32), Some(9.8)),
            8.0,
        );
        let mut r = Results::new(&o);
        r.sweeps[0].quorate = vec![(1, point(500.0, Some(1.0), Some(2.0), 0, 5000)), (64, q)];
        r.sweeps[0].etcd = vec![(64, e)];
        let (table, verdict) = render(&o, &r);
        assert!(
            table.contains(
                "| mixed 256 B (50 % get) | 64 | 9000 | 2.00 | 6.00 | 100 | 4000 | - | - | 200 | 2.25x | - | 0.50 |"
            ),
            "{table}"
        );
        assert!(
            table.contains(
                "| mixed 256 B (50 % get) | 64 | 4600 | 1.00 / 4.00 | 4400 | 1.00 / 8.00 | 2500 (32 clients, 10.1 s) \
                 | 1.00 / 5.00 | 1500 (32 clients, 9.8 s) | 1.00 / 9.00 | 0.80 | 0.89 |"
            ),
            "{table}"
        );
        assert!(table.contains("| mixed 256 B (50 % get) | 1 | - | - | - | - | - | - | - | - | - | - |"), "{table}");
        assert!(verdict.starts_with("Goals, mixed 256 B (50 % get) (the same comparison):\n"), "{verdict}");
        assert!(
            verdict.contains(
                "- 64 clients: >= 2x etcd's ops/s and a lower p99: MET (2.25x ops/s, p99 gets 4.00 vs 5.00, puts \
                 8.00 vs 9.00 ms)"
            ),
            "{verdict}"
        );
        assert!(
            verdict.contains("- 1 client: >= etcd's ops/s: NOT MEASURED (etcd's mix needs a client per half)"),
            "{verdict}"
        );
        assert!(
            verdict.contains("- 64 clients: CPU per op <= half of etcd's: MET (100 vs 200 µs per op)"),
            "{verdict}"
        );
        assert!(
            verdict.contains(
                "- 256 clients: CPU per op <= half of etcd's: NOT MEASURED (this client count was not in --clients)"
            ),
            "{verdict}"
        );
        assert!(!verdict.contains("writes"), "no put-256 goals without the put sweep: {verdict}");
    }

    #[test]
    fn etcd_pids_are_read_as_cluster_sh_records_them() {
        let pids = parse_pids("101\n102\n\n103\n").unwrap();
        assert_eq!(pids, vec![("m1".to_string(), 101), ("m2".to_string(), 102), ("m3".to_string(), 103)]);
        assert!(parse_pids("").is_err());
        assert!(parse_pids("101\nabc\n").is_err());
    }

    #[test]
    fn cpu_per_write_is_summed_over_processes_and_compared() {
        let point = |ops_per_s: f64, ops: u64, cpu: &[(&str, f64)]| Point {
            cpu: cpu.iter().map(|(l, s)| ((*l).to_string(), *s)).collect(),
            ..point(ops_per_s, Some(1.0), Some(2.0), 0, ops)
        };
        let q = point(1000.0, 10_000, &[("node-1", 0.5), ("node-2", 0.25), ("node-3", 0.25)]);
        assert_eq!(q.cpu_us_per_op(), Some(100.0));
        let e = point(900.0, 9_000, &[("m1", 1.2), ("m2", 0.3), ("m3", 0.3)]);
        assert_eq!(e.cpu_us_per_op(), Some(200.0));
        let o = Options {
            duration: 1.0,
            clients: vec![64],
            connections: None,
            workloads: vec![Workload::PUT_256],
            skip_etcd: false,
        };
        let mut r = Results::new(&o);
        r.sweeps[0].quorate = vec![(64, q)];
        r.sweeps[0].etcd = vec![(64, e)];
        let (table, verdict) = render(&o, &r);
        assert!(
            table.contains(
                "| put 256 B | 64 | 1000 | 1.00 | 2.00 | 100 | 900 | 1.00 | 2.00 | 200 | 1.11x | 1.00 | 0.50 |"
            ),
            "{table}"
        );
        assert!(
            table
                .contains("| put 256 B | 64 | node-1 0.50 / node-2 0.25 / node-3 0.25 | m1 1.20 / m2 0.30 / m3 0.30 |"),
            "{table}"
        );
        assert!(
            verdict.contains("64 clients: CPU per write <= half of etcd's: MET (100 vs 200 µs per write)"),
            "{verdict}"
        );
        assert!(verdict.contains("256 clients: CPU per write <= half of etcd's: NOT MEASURED"), "{verdict}");
    }

    #[test]
    fn replaces_only_its_section() {
        let doc = "# B\n\n## A\na\n\n## Cluster (quorate-node vs etcd 3.4)\nold\n\n## C\nc\n";
        let new = replace_section(doc, "## Cluster (quorate-node vs etcd 3.4)\nnew\n");
        assert_eq!(new, "# B\n\n## A\na\n\n## Cluster (quorate-node vs etcd 3.4)\nnew\n\n## C\nc\n");
        // The hand-written subsections after the generated part stay, in order.
        let doc = "# B\n\n## Cluster (quorate-node vs etcd 3.4)\nold\n| t |\n\n### Run 2\nkept\n\n### Run 1\nkept too\n\n## C\nc\n";
        let new = replace_section(doc, "## Cluster (quorate-node vs etcd 3.4)\nnew\n");
        assert_eq!(
            new,
            "# B\n\n## Cluster (quorate-node vs etcd 3.4)\nnew\n\n### Run 2\nkept\n\n### Run 1\nkept too\n\n## C\nc\n"
        );
        // Also when the section is the last one of the file.
        let doc = "# B\n\n## Cluster (quorate-node vs etcd 3.4)\nold\n\n### Run 1\nkept\n";
        let new = replace_section(doc, "## Cluster (quorate-node vs etcd 3.4)\nnew\n");
        assert_eq!(new, "# B\n\n## Cluster (quorate-node vs etcd 3.4)\nnew\n\n### Run 1\nkept\n");
        // So the generated text must not open a subsection of its own.
        let o = parse_args(&[]).unwrap();
        let (table, verdict) = render(&o, &Results::default());
        let generated = section_text(&o, &Results::default(), &table, &verdict);
        assert!(generated.starts_with(SECTION) && !generated.lines().any(|l| l.starts_with("### ")), "{generated}");
        let appended = replace_section("# B\n", "## Cluster (quorate-node vs etcd 3.4)\nx\n");
        assert_eq!(appended, "# B\n\n## Cluster (quorate-node vs etcd 3.4)\nx\n");
    }
}
