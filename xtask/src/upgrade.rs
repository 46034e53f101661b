//! `cargo xtask upgrade-check [--from <version>] [--seed S] [--step-seconds N]`: a rolling
//! upgrade from a recorded release to the current tree, with rollback, on a real 3-node
//! cluster under a recorded, checked workload.
//!
//! 1. builds the release (from the commit in `releases.toml`, in a git worktree under
//!    `target/upgrade-check/`, with the shared target directory and the `ci` profile, so only
//!    workspace crates rebuild) and the current tree; copies both binaries aside;
//! 2. starts 3 nodes on the old binary and runs clients (puts and gets of unique values, every
//!    call recorded in a history);
//! 3. steps: replace nodes one at a time with the new binary (rolling upgrade); check that the
//!    new request gated on the cluster version is refused while mixed; roll every node back to
//!    the old binary (allowed before finalize); upgrade again; `quorate cluster finalize`; use
//!    the gated request; try the old binary on a finalized node's data (it must refuse);
//! 4. after every step: a leader, a new acknowledged write, converged replicas (same applied
//!    index, revision and values on every member), a linearizable history, no acknowledged
//!    write lost.
//!
//! Prints the plan first and a verdict last; node logs, histories and the report go to
//! `target/upgrade-check/run-<seed>/`.

use crate::chaos::checks::lost_writes;
use crate::chaos::workload::{ClientFactory, History, recorded_get, recorded_put};
use crate::cluster::{Cluster, NodeSpec, RaftSettings, free_udp_port};
use crate::release::read_releases;
use crate::{PROFILE, cargo, root, run};
use anyhow::{Context, Result, bail};
use quorate_check::history::Operation;
use quorate_check::linearizability::{Limits, Outcome, check};
use quorate_client::{Client, ReadConsistency};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const NODES: u64 = 3;
const CLIENTS: u64 = 3;
const KEYS: u64 = 8;
/// Bound on everything one check waits for (leader, a write, convergence).
const WAIT_MAX: Duration = Duration::from_secs(30);
/// Operations per client per step, at most (the step's time bounds them first).
const OPS_PER_STEP_MAX: u64 = 5_000;
/// Fast elections so a replaced leader is replaced quickly.
const RAFT: RaftSettings = RaftSettings { election_timeout_ms: 500, heartbeat_ms: 50, lease_clock_drift_ms: 0 };

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bin {
    Old,
    New,
}

#[derive(Clone, Debug)]
enum Step {
    /// Replace node `.0` (SIGTERM-free: SIGKILL, the harsher stop) and restart it on `.1`.
    Restart(u64, Bin),
    /// The request gated on cluster version 2 must be refused (cluster not finalized).
    GatedRefused,
    /// `quorate cluster finalize` with the new CLI.
    Finalize,
    /// The gated request works.
    GatedWorks,
    /// The old binary must refuse node `.0`'s finalized data; the node then restarts on the new one.
    OldRefuses(u64),
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Restart(n, Bin::New) => write!(f, "upgrade node {n} to the new binary"),
            Step::Restart(n, Bin::Old) => write!(f, "roll node {n} back to the old binary"),
            Step::GatedRefused => write!(
                f,
                "delete-range, member update, snapshot save FILE, bounded-staleness reads, reads at a revision, \
                 compact and watch refused before finalize"
            ),
            Step::Finalize => write!(f, "quorate cluster finalize"),
            Step::GatedWorks => {
                write!(
                    f,
                    "delete-range, member update, snapshot save FILE, bounded-staleness reads, reads at a revision, \
                     compact and watch work after finalize"
                )
            }
            Step::OldRefuses(n) => {
                write!(f, "old binary refuses node {n}'s finalized data; node {n} back on the new one")
            }
        }
    }
}

fn plan() -> Vec<Step> {
    let mut steps = Vec::new();
    for n in 1..=NODES {
        steps.push(Step::Restart(n, Bin::New));
        if n == 1 {
            steps.push(Step::GatedRefused);
        }
    }
    // Roll one node back, then all of them: before finalize, every mix is allowed.
    for n in (1..=NODES).rev() {
        steps.push(Step::Restart(n, Bin::Old));
    }
    for n in 1..=NODES {
        steps.push(Step::Restart(n, Bin::New));
    }
    steps.extend([Step::Finalize, Step::GatedWorks, Step::OldRefuses(NODES)]);
    steps
}

/// Before finalize: `kv get --rev`, `kv scan --rev`, `kv compact` and `watch` are refused by the gate
/// (a new node refuses by the cluster version; a 0.1.0 node cannot read the request).
fn history_refused(cluster: &Cluster, endpoints: &str) -> Result<String> {
    let mut refusals = Vec::new();
    for args in [
        &["kv", "get", "chaos/0", "--rev", "1"][..],
        &["kv", "scan", "--prefix", "chaos/", "--rev", "1"],
        &["kv", "compact", "1"],
        &["watch", "chaos/", "--prefix", "--rev", "1", "--count", "1", "--duration-ms", "3000"],
    ] {
        let out = cluster.quorate_to(args, endpoints)?;
        let err = crate::cluster::text(&out.stderr);
        if out.status.success() || !err.contains("needs cluster version 2") {
            bail!("`quorate {}` was not refused before finalize: {}", args.join(" "), err.trim());
        }
        refusals.push(args[..2].join(" "));
    }
    Ok(format!("{} refused", refusals.join(", ")))
}

/// The revision a `kv put` printed (`OK (revision N)`).
fn put_revision(cluster: &Cluster, endpoints: &str, key: &str, value: &str) -> Result<u64> {
    let out = cluster.quorate_to(&["kv", "put", key, value], endpoints)?;
    let text = crate::cluster::text(&out.stdout);
    text.trim()
        .strip_prefix("OK (revision ")
        .and_then(|t| t.strip_suffix(')'))
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("kv put answered {:?} {:?}", text.trim(), crate::cluster::text(&out.stderr).trim()))
}

/// After finalize: two versions of a key read at their revisions (linearizable reads), both
/// watched from the first, a compaction to the second, then the first refused as compacted.
fn history_works(cluster: &Cluster, endpoints: &str) -> Result<String> {
    let key = "upgrade/history";
    let r1 = put_revision(cluster, endpoints, key, "first")?;
    let r2 = put_revision(cluster, endpoints, key, "second")?;
    for (rev, want) in [(r1, "first"), (r2, "second")] {
        let rev = rev.to_string();
        let out = cluster.quorate_to(&["kv", "get", key, "--rev", &rev], endpoints)?;
        let got = crate::cluster::text(&out.stdout);
        if !out.status.success() || got.trim() != want {
            bail!("kv get --rev {rev} answered {:?} {:?}", got.trim(), crate::cluster::text(&out.stderr).trim());
        }
    }
    // A watch from the first: both puts, in order.
    let out = cluster
        .quorate_to(&["watch", key, "--rev", &r1.to_string(), "--count", "2", "--duration-ms", "10000"], endpoints)?;
    let seen = crate::cluster::text(&out.stdout);
    if !out.status.success() || seen.lines().count() != 2 || !seen.contains("first") || !seen.contains("second") {
        bail!("watch --rev {r1} answered {:?} {:?}", seen.trim(), crate::cluster::text(&out.stderr).trim());
    }
    let out = cluster.quorate_to(&["kv", "compact", &r2.to_string()], endpoints)?;
    if !out.status.success() {
        bail!("kv compact {r2} failed: {}", crate::cluster::text(&out.stderr).trim());
    }
    let out = cluster.quorate_to(&["kv", "get", key, "--rev", &r1.to_string()], endpoints)?;
    let err = crate::cluster::text(&out.stderr);
    if out.status.success() || !err.contains("compacted") {
        bail!("kv get --rev {r1} after compacting to {r2} was not refused: {}", err.trim());
    }
    Ok(format!(
        "history read at revisions {r1} and {r2}, watched from {r1}, compacted to {r2}, {r1} refused as compacted"
    ))
}

pub(crate) fn upgrade_check(args: &[String]) -> Result<()> {
    let mut from = None;
    let mut seed = 1u64;
    let mut step_seconds = 3u64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} takes a value"));
        match a.as_str() {
            "--from" => from = Some(val()?.clone()),
            "--seed" => seed = val()?.parse().context("--seed takes a number")?,
            "--step-seconds" => step_seconds = val()?.parse().context("--step-seconds takes a number")?,
            other => bail!(
                "usage: cargo xtask upgrade-check [--from <version>] [--seed S] [--step-seconds N]; got `{other}`"
            ),
        }
    }
    if !(1..=60).contains(&step_seconds) {
        bail!("--step-seconds must be between 1 and 60");
    }
    let releases = read_releases(&root())?;
    let release = match &from {
        Some(v) => releases.iter().find(|r| &r.version == v).cloned(),
        None => releases.last().cloned(),
    };
    let Some(release) = release else {
        bail!(
            "no recorded release {} in releases.toml (known: {})",
            from.as_deref().unwrap_or("(latest)"),
            releases.iter().map(|r| r.version.as_str()).collect::<Vec<_>>().join(", ")
        );
    };
    let base = root().join("target").join("upgrade-check");
    let steps = plan();
    println!("upgrade-check: {} ({}) -> current tree, seed {seed}", release.version, &release.commit[..12]);
    println!(
        "plan: 3 nodes on {}; {CLIENTS} clients, {step_seconds}s of load per step; after each step: leader, a new commit, converged replicas, linearizable history, no lost acknowledged write",
        release.version
    );
    for (i, s) in steps.iter().enumerate() {
        println!("  {:>2}. {s}", i + 1);
    }
    println!("logs: {}", base.join(format!("run-{seed}")).display());

    // 1. Binaries.
    let bins = base.join("bin");
    std::fs::create_dir_all(&bins)?;
    let old_bin = build_release(&base, &release.version, &release.commit, &bins)?;
    let new_bin = build_current(&bins, &old_bin)?;

    // 2. The cluster.
    let dir = base.join(format!("run-{seed}"));
    let mut cluster = Cluster::new(new_bin.clone(), dir.clone(), "upgrade", true)?;
    let ports: Vec<u16> = (0..NODES).map(|_| free_udp_port()).collect::<Result<_>>()?;
    cluster.generate_certs(NODES, ports[0])?;
    let listen: BTreeMap<u64, SocketAddr> =
        (1..=NODES).map(|i| (i, SocketAddr::from(([127, 0, 0, 1], ports[(i - 1) as usize])))).collect();
    for i in 1..=NODES {
        // Every member, this node included (a bootstrapping node lists itself).
        let peers = listen.iter().map(|(p, a)| (*p, a.to_string())).collect();
        cluster.write_config(&NodeSpec {
            id: i,
            listen: listen[&i],
            peers,
            join: false,
            metrics_listen: None,
            raft: RAFT,
            failpoints: false,
            // The old binary (0.1.0) refuses settings it does not know.
            handshakes_per_source: None,
        })?;
    }
    let endpoints = listen.iter().map(|(i, a)| format!("{i}={a}")).collect::<Vec<_>>().join(",");
    let factory = ClientFactory {
        cluster: cluster.name.clone(),
        certs: cluster.certs_dir(),
        members: listen.iter().map(|(i, a)| (*i, *a)).collect(),
        workload_members: listen.iter().map(|(i, a)| (*i, *a)).collect(),
    };
    let mut on: BTreeMap<u64, Bin> = BTreeMap::new();
    cluster.bin = old_bin.clone();
    for i in 1..=NODES {
        cluster.start(i)?;
        on.insert(i, Bin::Old);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let history = Arc::new(History::new());
    let mut report = Vec::new();
    let mut pass = true;

    let check0 = rt.block_on(step_check(&factory, &history, 0, step_seconds, &mut cluster, seed));
    let record = |label: &str, r: &Result<String>, report: &mut Vec<String>| {
        let line = match r {
            Ok(s) => format!("ok    {label}: {s}"),
            Err(e) => format!("FAIL  {label}: {e:#}"),
        };
        println!("{line}");
        report.push(line);
    };
    record("3 nodes on the old binary", &check0, &mut report);
    pass &= check0.is_ok();

    for (i, step) in steps.iter().enumerate() {
        if !pass {
            break;
        }
        let n = i as u64 + 1;
        let done: Result<String> = match step {
            Step::Restart(node, bin) => {
                cluster.kill(*node)?;
                cluster.bin = if *bin == Bin::New { new_bin.clone() } else { old_bin.clone() };
                cluster.start(*node)?;
                on.insert(*node, *bin);
                Ok(format!("node {node} on {}", if *bin == Bin::New { "the new binary" } else { "the old binary" }))
            }
            Step::GatedRefused => {
                cluster.bin = new_bin.clone();
                // Each gated request, through every endpoint (whichever node answers) and
                // through a node still on the old binary alone, must be refused in the gate's
                // words: a new node refuses by the gate; a client does not send such a request
                // to a 0.1.0 node (it cannot decode it and would drop the stream, leaving the
                // outcome unknown). Node 2's own address: even applied, the update would change
                // nothing.
                let old_node = on.iter().find(|(_, b)| **b == Bin::Old).map(|(n, _)| *n);
                let old_only = old_node.map(|n| format!("{n}={}", listen[&n]));
                let peer = listen[&2].to_string();
                let tries: [(&str, Vec<&str>); 2] = [
                    ("delete-range", vec!["kv", "del-range", "chaos/", "chaos0"]),
                    ("member update", vec!["member", "update", "2", "--peer", &peer]),
                ];
                let mut seen = Vec::new();
                let mut failed = None;
                for (what, args) in &tries {
                    for (via, eps) in [("every endpoint", Some(&endpoints)), ("the old node", old_only.as_ref())] {
                        let Some(eps) = eps else { continue };
                        let out = cluster.quorate_to(args, eps)?;
                        let err = crate::cluster::text(&out.stderr);
                        let words = format!("{what} needs cluster version 2");
                        if out.status.success() || !err.contains(&words) {
                            failed.get_or_insert_with(|| {
                                anyhow::anyhow!(
                                    "{what} via {via} was not refused by the gate before finalize: {}",
                                    err.trim()
                                )
                            });
                        } else {
                            seen.push(format!("{what} via {via}"));
                        }
                    }
                }
                // The streamed save, the bounded-staleness read and the history requests, the
                // same two ways.
                let mut more = Vec::new();
                for eps in [Some(&endpoints), old_only.as_ref()].into_iter().flatten() {
                    match gated_0_2_requests(&cluster, eps, &dir, false)
                        .and_then(|m| Ok(format!("{m}; {}", history_refused(&cluster, eps)?)))
                    {
                        Ok(m) => more.push(m),
                        Err(e) => {
                            failed.get_or_insert(e);
                        }
                    }
                }
                match failed {
                    Some(e) => Err(e),
                    None if old_node.is_none() => Err(anyhow::anyhow!("no node on the old binary at this step")),
                    None => Ok(format!("refused by the gate: {}; {}", seen.join(", "), more.join("; "))),
                }
            }
            Step::Finalize => {
                cluster.bin = new_bin.clone();
                let out = cluster.quorate_to(&["cluster", "finalize"], &endpoints)?;
                let text = crate::cluster::text(&out.stdout) + &crate::cluster::text(&out.stderr);
                if out.status.success() {
                    Ok(text.trim().lines().next().unwrap_or("").to_string())
                } else {
                    Err(anyhow::anyhow!("finalize failed: {}", text.trim()))
                }
            }
            Step::GatedWorks => {
                cluster.bin = new_bin.clone();
                let out = cluster.quorate_to(&["kv", "del-range", "upgrade/gated-a", "upgrade/gated-z"], &endpoints)?;
                let text = crate::cluster::text(&out.stdout) + &crate::cluster::text(&out.stderr);
                if !out.status.success() {
                    Err(anyhow::anyhow!("delete-range failed after finalize: {}", text.trim()))
                } else {
                    let peer = listen[&2].to_string();
                    let up = cluster.quorate_to(&["member", "update", "2", "--peer", &peer], &endpoints)?;
                    let up_text = crate::cluster::text(&up.stdout) + &crate::cluster::text(&up.stderr);
                    if up.status.success() {
                        gated_0_2_requests(&cluster, &endpoints, &dir, true).and_then(|more| {
                            let history = history_works(&cluster, &endpoints)?;
                            Ok(format!(
                                "delete-range: {}; member update: {}; {more}; {history}",
                                text.trim(),
                                up_text.trim()
                            ))
                        })
                    } else {
                        Err(anyhow::anyhow!("member update failed after finalize: {}", up_text.trim()))
                    }
                }
            }
            Step::OldRefuses(node) => old_refuses(&mut cluster, *node, &old_bin, &new_bin),
        };
        cluster.bin = new_bin.clone();
        let r = done.and_then(|what| {
            let c = rt.block_on(step_check(&factory, &history, n, step_seconds, &mut cluster, seed))?;
            Ok(format!("{what}; {c}"))
        });
        pass &= r.is_ok();
        record(&format!("step {n:>2}: {step}"), &r, &mut report);
    }

    // The whole history, once more, and the versions the nodes report.
    history.write(&dir.join("history.jsonl"))?;
    let status = cluster.quorate_to(&["cluster", "status"], &endpoints)?;
    let status_text = crate::cluster::text(&status.stdout);
    println!("{}", status_text.trim_end());
    cluster.stop_all();
    let verdict = format!(
        "upgrade-check {}: {} -> current, {} steps, {} operations recorded, seed {seed}",
        if pass { "PASSED" } else { "FAILED" },
        release.version,
        steps.len(),
        history.len()
    );
    report.push(status_text);
    report.push(verdict.clone());
    std::fs::write(dir.join("report.txt"), report.join("\n"))?;
    println!("{verdict}");
    if !pass {
        bail!("upgrade-check failed; logs in {}", dir.display());
    }
    Ok(())
}

/// Builds `commit` in a worktree under `base` and copies its `quorate` to `bins`, with a stamp
/// naming the commit; a binary whose stamp names `commit` is used as it is (a release's commit
/// never changes, and its build — RocksDB's C++ with the release's own features — takes ~20
/// minutes in a target directory that does not hold it).
fn build_release(base: &Path, version: &str, commit: &str, bins: &Path) -> Result<PathBuf> {
    let src = base.join(format!("src-{version}"));
    let out = bins.join(format!("quorate-{version}"));
    let stamp = bins.join(format!("quorate-{version}.commit"));
    if out.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == commit) {
        println!("release {version}: {} was built from {commit}; not rebuilt", out.display());
        return Ok(out);
    }
    let _ = std::fs::remove_file(&stamp);
    if !src.join("Cargo.toml").exists() {
        run(std::process::Command::new("git").args(["worktree", "add", "--detach", "--force"]).arg(&src).arg(commit))?;
    }
    // Workspace crates of every worktree share artifact names in the shared target directory
    // (cargo hashes a path package by its path inside the workspace), and cargo decides
    // freshness by modification times: a checkout older than the last build of another tree
    // would pass as fresh. Touching the release's sources forces its own build.
    touch_sources(&src.join("crates"))?;
    run(cargo().current_dir(&src).args([
        "build",
        "--locked",
        "--profile",
        PROFILE,
        "-p",
        "quorate-node",
        "--bin",
        "quorate",
    ]))?;
    copy_bin(&crate::cluster::target_dir().join(PROFILE).join("quorate"), &out)?;
    std::fs::write(&stamp, format!("{commit}\n")).with_context(|| format!("cannot write {}", stamp.display()))?;
    Ok(out)
}

/// Builds the current tree's `quorate` and copies it to `bins`; refuses a binary identical to
/// the release's (cargo took the release's artifacts for fresh: touch a source file and rerun).
fn build_current(bins: &Path, old: &Path) -> Result<PathBuf> {
    let built = crate::cluster::build_quorate()?;
    let out = bins.join("quorate-current");
    copy_bin(&built, &out)?;
    if std::fs::read(&out)? == std::fs::read(old)? {
        bail!(
            "the current tree's binary is identical to the release's: cargo reused the release's artifacts; \
             touch crates/quorate-node/src/main.rs and run again"
        );
    }
    Ok(out)
}

/// Sets the modification time of every file under `dir` to now (bounded: at most 10,000 files).
fn touch_sources(dir: &Path) -> Result<()> {
    let mut stack = vec![dir.to_path_buf()];
    let mut n = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("cannot list {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if n < 10_000 {
                n += 1;
                std::fs::File::options()
                    .append(true)
                    .open(&p)
                    .and_then(|f| f.set_modified(std::time::SystemTime::now()))
                    .with_context(|| format!("cannot touch {}", p.display()))?;
            }
        }
    }
    Ok(())
}

/// Copies a binary aside: the shared target directory holds one `quorate` at a time.
fn copy_bin(from: &Path, to: &Path) -> Result<()> {
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).with_context(|| format!("cannot copy {}", from.display()))?;
    std::fs::rename(&tmp, to)?;
    Ok(())
}

/// After finalize: the old binary, started on `node`'s data, must exit with a clear refusal;
/// then the node comes back on the new binary.
/// `snapshot save FILE` (streamed to this machine), a bounded-staleness read and a lease grant: refused
/// with the gate's words while the cluster is mixed or not finalized (`works: false`; a 0.1.0
/// node cannot decode either request, so a new node refuses by the gate and the client refuses
/// to send them on a `quorate/1` connection), both served after finalize (`works: true`).
fn gated_0_2_requests(cluster: &Cluster, endpoints: &str, dir: &Path, works: bool) -> Result<String> {
    let file = dir.join(if works { "streamed-after-finalize.qsnap" } else { "streamed-before-finalize.qsnap" });
    let file_arg = file.to_string_lossy().into_owned();
    let save = cluster.quorate_to(&["snapshot", "save", &file_arg], endpoints)?;
    let save_text = crate::cluster::text(&save.stdout) + &crate::cluster::text(&save.stderr);
    let read_args = ["kv", "get", "upgrade/bounded", "--consistency", "stale", "--max-staleness-ms", "60000"];
    let read = cluster.quorate_to(&read_args, endpoints)?;
    let read_text = crate::cluster::text(&read.stdout) + &crate::cluster::text(&read.stderr);
    let lease = cluster.quorate_to(&["lease", "grant", "10000"], endpoints)?;
    let lease_text = crate::cluster::text(&lease.stdout) + &crate::cluster::text(&lease.stderr);
    let last = |t: &str| t.trim().lines().last().unwrap_or("").to_string();
    if works && !lease.status.success() {
        bail!("a lease grant failed after finalize: {}", lease_text.trim());
    }
    if !works && (lease.status.success() || !lease_text.contains("needs cluster version 2")) {
        bail!("a lease grant was not refused before finalize: {}", lease_text.trim());
    }
    if works {
        if !save.status.success() || !file.exists() {
            bail!("snapshot save FILE failed after finalize: {}", save_text.trim());
        }
        // Exit 3 is "not found": the read was served.
        if !matches!(read.status.code(), Some(0 | 3)) {
            bail!("a bounded-staleness read failed after finalize: {}", read_text.trim());
        }
        Ok(format!("snapshot save FILE: {}; bounded-staleness read served; lease granted", last(&save_text)))
    } else {
        if save.status.success() || !save_text.contains("needs cluster version 2") || file.exists() {
            bail!("snapshot save FILE was not refused before finalize: {}", save_text.trim());
        }
        if read.status.success() || !read_text.contains("needs cluster version 2") {
            bail!("a bounded-staleness read was not refused before finalize: {}", read_text.trim());
        }
        Ok(format!("snapshot save FILE refused: {}; bounded-staleness read and lease grant refused", last(&save_text)))
    }
}

fn old_refuses(cluster: &mut Cluster, node: u64, old_bin: &Path, new_bin: &Path) -> Result<String> {
    cluster.kill(node)?;
    cluster.bin = old_bin.to_owned();
    cluster.start(node)?;
    let deadline = Instant::now() + WAIT_MAX;
    let refusal = loop {
        match cluster.check_running() {
            Err(e) => break format!("{e:#}"),
            Ok(()) if Instant::now() > deadline => {
                cluster.kill(node)?;
                bail!("the old binary kept running on finalized data for {}s", WAIT_MAX.as_secs());
            }
            Ok(()) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let line = refusal
        .lines()
        .find(|l| l.contains("format") || l.contains("cluster version"))
        .with_context(|| format!("the old binary exited without naming the format: {refusal}"))?
        .trim()
        .to_string();
    cluster.bin = new_bin.to_owned();
    cluster.start(node)?;
    Ok(format!("old binary refused: {line}"))
}

/// Load for `seconds`, then the checks.
async fn step_check(
    factory: &ClientFactory,
    history: &Arc<History>,
    step: u64,
    seconds: u64,
    cluster: &mut Cluster,
    seed: u64,
) -> Result<String> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let client = factory.client(seed ^ (step * 1000 + c + 1))?;
        let (history, stop) = (history.clone(), stop.clone());
        tasks.push(tokio::spawn(async move { load(step, c, client, &history, &stop).await }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = 0;
    for t in tasks {
        acked += t.await.context("a client task panicked")?;
    }
    cluster.check_running()?;
    let checker = factory.client(seed ^ 0xC4EC ^ step)?;
    let id = 1000 + step;
    // A leader and a new acknowledged write.
    let t = Instant::now();
    let mut committed = None;
    while t.elapsed() < WAIT_MAX {
        if recorded_put(
            history,
            &checker,
            id,
            &format!("upgrade/step-{step}"),
            &format!("step-{step}-{}", t.elapsed().as_nanos()),
        )
        .await
        {
            committed = Some(t.elapsed());
            break;
        }
    }
    let Some(committed) = committed else {
        bail!("no leader / no commit within {}s", WAIT_MAX.as_secs());
    };
    // Converged replicas.
    let converged = converge(factory, &checker, seed).await?;
    // Final reads, lost writes, linearizability.
    let mut finals = BTreeMap::new();
    for k in 0..KEYS {
        let key = key_of(k);
        for _ in 0..10 {
            if let Some(v) = recorded_get(history, &checker, id, &key, ReadConsistency::Linearizable).await {
                finals.insert(key.clone(), v);
                break;
            }
        }
    }
    checker.close();
    let unread: Vec<String> = (0..KEYS).map(key_of).filter(|k| !finals.contains_key(k)).collect();
    if !unread.is_empty() {
        bail!("final reads failed for {} keys ({}): they could not be checked", unread.len(), unread.join(", "));
    }
    let ops: Vec<Operation> = history.snapshot();
    let lost = lost_writes(&ops, &finals);
    if !lost.problems.is_empty() {
        bail!("acknowledged writes lost: {}", lost.problems.join("; "));
    }
    let result = check(&ops, &Limits::default());
    if !matches!(result.outcome, Outcome::Linearizable) {
        bail!("history not linearizable: {result}");
    }
    Ok(format!(
        "{acked} writes acknowledged in {seconds}s, a commit after {:.1}s, {converged}, {} ops linearizable, none lost",
        committed.as_secs_f64(),
        ops.len()
    ))
}

fn key_of(k: u64) -> String {
    format!("upgrade/k{k}")
}

/// One client: puts of unique values and linearizable gets until `stop`; returns the puts
/// acknowledged.
async fn load(step: u64, c: u64, client: Client, history: &History, stop: &AtomicBool) -> u64 {
    let mut acked = 0;
    let id = step * 100 + c;
    for n in 0..OPS_PER_STEP_MAX {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let key = key_of((n * 7 + c * 3 + step) % KEYS);
        if n % 3 == 2 {
            recorded_get(history, &client, id, &key, ReadConsistency::Linearizable).await;
        } else if recorded_put(history, &client, id, &key, &format!("s{step}-c{c}-{n}")).await {
            acked += 1;
        }
    }
    client.close();
    acked
}

/// Waits until every member has applied the same index with the same revision, then compares
/// every key read locally (stale) at each member.
async fn converge(factory: &ClientFactory, checker: &Client, seed: u64) -> Result<String> {
    let t = Instant::now();
    loop {
        let statuses = checker.statuses().await;
        let ok: Vec<_> = statuses.iter().filter_map(|(_, s)| s.as_ref().ok()).collect();
        let same = ok.len() == statuses.len()
            && ok.windows(2).all(|w| w[0].applied == w[1].applied && w[0].revision == w[1].revision)
            && ok.first().is_some_and(|s| s.applied >= s.commit);
        if same {
            let applied = ok[0].applied;
            let mut values: Option<Vec<Option<Vec<u8>>>> = None;
            for (id, addr) in &factory.members {
                let one = factory.client_to(&[(*id, *addr)], seed ^ id)?;
                let mut mine = Vec::new();
                for k in 0..KEYS {
                    let got = one
                        .get(key_of(k), ReadConsistency::Stale)
                        .await
                        .with_context(|| format!("stale read at node {id}"))?;
                    mine.push(got.kv.map(|kv| kv.value));
                }
                one.close();
                match &values {
                    None => values = Some(mine),
                    Some(v) if *v == mine => {}
                    Some(_) => bail!("node {id} holds different values at applied index {}", applied.0),
                }
            }
            return Ok(format!(
                "replicas identical at applied index {} after {:.1}s",
                applied.0,
                t.elapsed().as_secs_f64()
            ));
        }
        if t.elapsed() > WAIT_MAX {
            let view: Vec<String> = statuses
                .iter()
                .map(|(id, s)| match s {
                    Ok(s) => format!("{id}: applied {} revision {}", s.applied.0, s.revision),
                    Err(e) => format!("{id}: {e}"),
                })
                .collect();
            bail!("replicas did not converge within {}s: {}", WAIT_MAX.as_secs(), view.join(", "));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
