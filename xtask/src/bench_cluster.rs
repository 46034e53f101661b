//! `cargo xtask bench cluster [--duration S] [--clients 1,16,64,256] [--skip-etcd]`: a real
//! 3-node Quorate cluster (fsync on, mutual TLS, RocksDB; the demo's set-up) driven by
//! `quorate bench`, then, in the same run, etcd 3.4's plain-HTTP cluster driven by the
//! etcd-bench scripts in `../shared/tools/etcd-bench` beside the repository (or
//! `QUORATE_ETCD_BENCH`). One table compares them; it is printed
//! and written to docs/benchmarks.md under `## Cluster (quorate-node vs etcd 3.4)`: the text
//! from that heading to the section's first `### ` subsection is replaced, and the hand-written
//! `### ` subsections after it (readings of earlier runs) are kept.
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

const USAGE: &str =
    "usage: cargo xtask bench cluster [--duration S] [--clients 1,16,64,256] [--connections N] [--skip-etcd]";

struct Options {
    duration: f64,
    clients: Vec<u32>,
    /// Connections the clients share (`quorate bench --connections`, at most the clients);
    /// `None`: one per client.
    connections: Option<u32>,
    skip_etcd: bool,
}

fn parse_args(args: &[String]) -> Result<Options> {
    let mut o = Options { duration: 10.0, clients: vec![1, 16, 64, 256], connections: None, skip_etcd: false };
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
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    /// Operations that succeeded.
    ops: u64,
    /// CPU seconds (user + system) per process of the measured system (`node-1`.., `m1`..)
    /// during the point; empty if not measured.
    cpu: Vec<(String, f64)>,
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

#[derive(Default)]
struct Results {
    quorate_writes: Vec<(u32, Point)>,
    quorate_reads: Option<Point>,
    etcd_writes: Vec<(u32, Point)>,
    /// etcd's linearizable GETs at 256 clients (what bench.sh measures).
    etcd_reads: Option<Point>,
    etcd_raw: String,
    /// Why etcd was not measured, if it was not.
    etcd_missing: Option<String>,
}

pub(crate) fn bench_cluster(args: &[String]) -> Result<()> {
    let o = parse_args(args)?;
    let started = Instant::now();
    let mut r = Results::default();
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
    let (ops, keys, value) = (OPS_MAX.to_string(), KEYS.to_string(), VALUE_SIZE.to_string());
    let ticks = proc_cpu::clock_ticks_per_second();
    let nodes: Vec<(String, u32)> = cluster.pids().into_iter().map(|(id, pid)| (format!("node-{id}"), pid)).collect();
    let mut bench = |clients: u32, read_ratio: &str, label: &str| -> Result<Point> {
        let connections = o.connections.map_or(clients, |n| n.min(clients));
        step(&format!("quorate bench: {label}, {clients} clients over {connections} connections, {duration} s"));
        let (c, n) = (clients.to_string(), connections.to_string());
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
        println!("{}", cpu_line(&p));
        Ok(p)
    };
    for &c in &o.clients {
        let p = bench(c, "0", "writes")?;
        r.quorate_writes.push((c, p));
    }
    r.quorate_reads = Some(bench(READ_CLIENTS, "1", "reads")?);
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
        p50_ms: after("p50")?.parse().ok()?,
        p99_ms: after("p99")?.parse().ok()?,
        errors,
        ops,
        cpu: Vec::new(),
    })
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
    drop(_guard);
    for (line, cpu) in stdout.lines().zip(line_cpu) {
        let first = line.split_whitespace().next().unwrap_or("");
        let kv = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k).and_then(|v| v.strip_prefix('=')).map(str::to_string))
        };
        let point = || -> Option<Point> {
            Some(Point {
                ops_per_s: kv("qps")?.parse().ok()?,
                p50_ms: kv("p50_ms")?.parse().ok()?,
                p99_ms: kv("p99_ms")?.parse().ok()?,
                errors: kv("errs")?.parse().ok()?,
                ops: kv("ok")?.parse().ok()?,
                cpu: cpu.clone(),
            })
        };
        match first {
            "PUT-leader" => {
                if let (Some(c), Some(p)) = (kv("clients").and_then(|c| c.parse().ok()), point()) {
                    println!("etcd PUT-leader {c} clients {}", cpu_line(&p));
                    r.etcd_writes.push((c, p));
                }
            }
            "GET-256" if kv("cons").as_deref() == Some("l") => r.etcd_reads = point(),
            _ => {}
        }
    }
    if r.etcd_writes.is_empty() {
        bail!("no PUT-leader line in bench.sh's output:\n{stdout}");
    }
    r.etcd_raw = stdout;
    Ok(())
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

fn fmt_point(p: Option<&Point>) -> (String, String, String, String) {
    match p {
        Some(p) => (
            format!("{:.0}", p.ops_per_s),
            format!("{:.2}", p.p50_ms),
            format!("{:.2}", p.p99_ms),
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

fn lookup(v: &[(u32, Point)], c: u32) -> Option<&Point> {
    v.iter().find(|(n, _)| *n == c).map(|(_, p)| p)
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
        let (ratio, p99r) = match (q, e) {
            (Some(q), Some(e)) if comparable && e.ops_per_s > 0.0 && e.p99_ms > 0.0 => {
                (format!("{:.2}x", q.ops_per_s / e.ops_per_s), format!("{:.2}", q.p99_ms / e.p99_ms))
            }
            _ => ("-".into(), "-".into()),
        };
        let cpur = match (q.and_then(Point::cpu_us_per_op), e.and_then(Point::cpu_us_per_op)) {
            (Some(q), Some(e)) if comparable && e > 0.0 => format!("{:.2}", q / e),
            _ => "-".into(),
        };
        t.push_str(&format!(
            "| {label} | {clients} | {qo} | {q50} | {q99} | {qc} | {eo} | {e50} | {e99} | {ec} | {ratio} | {p99r} | \
             {cpur} |\n"
        ));
        cpu.push_str(&format!("| {label} | {clients} | {} | {} |\n", fmt_per_process(q), fmt_per_process(e)));
    };
    for &c in &o.clients {
        row("put 256 B", c.to_string(), lookup(&r.quorate_writes, c), lookup(&r.etcd_writes, c), true);
    }
    row(
        "get (linearizable)",
        format!("{READ_CLIENTS} (etcd: 256)"),
        r.quorate_reads.as_ref(),
        r.etcd_reads.as_ref(),
        false,
    );
    let errors: u64 =
        r.quorate_writes.iter().map(|(_, p)| p.errors).sum::<u64>() + r.quorate_reads.as_ref().map_or(0, |p| p.errors);
    t.push_str(&format!(
        "\nThe get row is context, not a comparison: quorate at {READ_CLIENTS} clients, etcd at 256 (bench.sh's \
         GET-256, linearizable), so no ratio is given.\n\nCPU µs/op: the CPU time (user + system, from \
         `/proc/<pid>/stat`) of the three quorate nodes, or of the three etcd members, during the point, divided \
         by the operations that succeeded (the load generators are not counted). Per process, in seconds:\n\n{cpu}"
    ));
    if errors > 0 {
        t.push_str(&format!("\nquorate bench reported {errors} failed operations (not counted in ops/s).\n"));
    }

    let mut v = String::from("Goals (quorate with mTLS + fsync vs etcd plain HTTP + fsync, writes):\n");
    for (c, factor, need_p99) in [(1u32, 1.0, false), (64, 2.0, true), (256, 2.0, true)] {
        let goal = if need_p99 {
            format!("{c} clients: >= {factor:.0}x etcd's writes/s and a lower p99")
        } else {
            format!("{c} client: >= etcd's writes/s")
        };
        let line = match (lookup(&r.quorate_writes, c), lookup(&r.etcd_writes, c)) {
            (Some(q), Some(e)) => {
                let ratio = q.ops_per_s / e.ops_per_s;
                let tput_ok = ratio >= factor;
                let p99_ok = !need_p99 || q.p99_ms < e.p99_ms;
                let mut why = format!("{ratio:.2}x writes/s");
                if need_p99 {
                    why.push_str(&format!(", p99 {:.2} vs {:.2} ms", q.p99_ms, e.p99_ms));
                }
                format!("{} ({why})", if tput_ok && p99_ok { "MET" } else { "MISSED" })
            }
            _ => format!(
                "NOT MEASURED ({})",
                r.etcd_missing.as_deref().unwrap_or("this client count was not in --clients")
            ),
        };
        v.push_str(&format!("- {goal}: {line}\n"));
    }
    for c in [64u32, 256] {
        let line = match (
            lookup(&r.quorate_writes, c).and_then(Point::cpu_us_per_op),
            lookup(&r.etcd_writes, c).and_then(Point::cpu_us_per_op),
        ) {
            (Some(q), Some(e)) => {
                format!("{} ({q:.0} vs {e:.0} µs per write)", if q <= e / 2.0 { "MET" } else { "MISSED" })
            }
            _ => format!(
                "NOT MEASURED ({})",
                r.etcd_missing.as_deref().unwrap_or("this client count was not in --clients")
            ),
        };
        v.push_str(&format!("- {c} clients: CPU per write <= half of etcd's: {line}\n"));
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
    if o.skip_etcd {
        command.push_str(" --skip-etcd");
    }
    let mut s = format!(
        "{SECTION}\n\nCommand: `{command}` (`xtask/src/bench_cluster.rs`; defaults `--duration 10 --clients \
         1,16,64,256`).\n\nWorkload: a 3-node `quorate` cluster on 127.0.0.1:7001-7003 set up like `cargo xtask \
         demo` (RocksDB, fsync on, mutual TLS on client and peer links); `quorate bench` closed loop, {VALUE_SIZE} B \
         values over {KEYS} keys, puts only (`--read-ratio 0`) for each client count, {} s each (cap {OPS_MAX} \
         operations; {}), then linearizable gets at {READ_CLIENTS} clients. In the same run, etcd 3.4 (3 members on \
         127.0.0.1, plain HTTP, fsync on) via `{ETCD_BENCH}`: `cluster.sh start plain`, `CLIENTS=\"{}\" bench.sh \
         plain` (puts of {VALUE_SIZE} B values with 8 B sequential keys to the leader, fixed totals), `cluster.sh \
         stop`; its linearizable-get row is bench.sh's GET-256 (256 clients). Load generators share the machine \
         with the nodes.\n\nMachine: {}.\n\n",
        o.duration,
        o.connections.map_or_else(
            || "each client with a connection of its own".to_string(),
            |n| format!("the clients share {n} connections, as sessions over QUIC streams")
        ),
        o.clients.iter().map(u32::to_string).collect::<Vec<_>>().join(" "),
        machine()
    );
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
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_string()).collect::<Vec<_>>();
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
        assert_eq!(p, Point { ops_per_s: 500.0, p50_ms: 1.5, p99_ms: 3.25, errors: 2, ops: 5000, cpu: Vec::new() });
        assert_eq!(p.cpu_us_per_op(), None, "no CPU measured");
        assert!(parse_quorate(out, "reads").is_none());
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
            ops_per_s,
            p50_ms: 1.0,
            p99_ms: 2.0,
            errors: 0,
            ops,
            cpu: cpu.iter().map(|(l, s)| ((*l).to_string(), *s)).collect(),
        };
        let q = point(1000.0, 10_000, &[("node-1", 0.5), ("node-2", 0.25), ("node-3", 0.25)]);
        assert_eq!(q.cpu_us_per_op(), Some(100.0));
        let e = point(900.0, 9_000, &[("m1", 1.2), ("m2", 0.3), ("m3", 0.3)]);
        assert_eq!(e.cpu_us_per_op(), Some(200.0));
        let o = Options { duration: 1.0, clients: vec![64], connections: None, skip_etcd: false };
        let r = Results { quorate_writes: vec![(64, q)], etcd_writes: vec![(64, e)], ..Results::default() };
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
