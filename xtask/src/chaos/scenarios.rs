//! Fixed scenarios on top of the chaos machinery: failover timing, named regressions from the
//! field (each with a fixed seed), the bounded CI slice and the long soak.

use super::nemesis::{Fault, Step, Target};
use super::windows::Bounds;
use super::workload::{History, KeyChoice, recorded_put};
use super::{Env, Options, RAFT, Verdict, nid, parse_num, run, runtime};
use crate::cluster::{build_quorate, target_dir};
use crate::{PROFILE, cargo, run as run_cmd};
use anyhow::{Context, Result, bail};
use quorate_check::lease::ViolationKind as LeaseViolation;
use quorate_check::linearizability::{Limits, check};
use quorate_check::txn::AnomalyKind;
use quorate_check::watch::ViolationKind;
use quorate_client::ReadConsistency;
use quorate_core::Role as RaftRole;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// Named regressions: name, seed, what it guards against.
pub(crate) const REGRESSIONS: &[(&str, u64, &str)] = &[
    ("single-node-crash", 14370, "a single-node cluster loses an acknowledged write on crash (etcd #14370)"),
    ("index-monotonic", 7, "the revision or applied index goes back after a crash"),
    (
        "reconfig-split-brain",
        456,
        "split brain from a node campaigning with committed-but-unapplied configuration changes (etcd-io/raft#456)",
    ),
    ("lock-fencing", 343, "a lock held past expiry without fencing (Jepsen etcd 3.4.3)"),
    (
        "service-registry",
        616,
        "a service registry on leases and watches misses an instance's expiry, revoke or join, or diverges from a \
         linearizable read (issue 22)",
    ),
    (
        "sigcont-stall",
        18,
        "a leader stalls for seconds when a follower paused for seconds resumes, and a restarted node hears nothing \
         for up to 10 s (issue 18)",
    ),
    (
        "shared-principal",
        505,
        "every client under one principal on purpose, the leader killed, paused or cut off for 3-6 s: one retry \
         budget for all (docs/chaos.md, Principals)",
    ),
    (
        "seed-4242",
        4242,
        "the 60 s all-faults run that ended REPLICAS DIFFER: proxy fronts refusing new client sources after 64 (issue 18)",
    ),
];

/// `sigcont-stall`: a follower paused for 7 s, then the leader paused for 7 s (the new
/// leader then faces a follower 7 s behind), then a follower SIGKILLed for 3 s and restarted.
const SIGCONT_STALL: &[Step] = &[
    Step::new(2_000, Fault::PAUSE, Target::Follower, 7_000),
    Step::new(12_000, Fault::PAUSE, Target::Leader, 7_000),
    Step::new(23_000, Fault::KILL, Target::Follower, 3_000),
];

/// The `sigcont-stall` bounds: tighter than a random run's, since each fault here leaves a
/// majority up (a pause of a follower should cost the leader nothing).
const SIGCONT_STALL_BOUNDS: Bounds = Bounds {
    leaderless_max: Duration::from_secs(3),
    writeless_max: Duration::from_secs(4),
    answer_after_heal_max: Duration::from_secs(3),
    ..super::windows::BOUNDS
};

fn flags(args: &[String]) -> Result<Vec<(String, String)>> {
    if !args.len().is_multiple_of(2) {
        bail!("flags come in pairs (`--name value`)\n{}", super::USAGE);
    }
    Ok(args.chunks(2).map(|c| (c[0].clone(), c[1].clone())).collect())
}

/// The runs of `cargo xtask chaos ci`: fixed seeds, every fault kind across them, lease reads
/// under pauses and clock skew.
pub(crate) fn ci_runs() -> Vec<Options> {
    let mut a = Options::new(101);
    a.duration = Duration::from_secs(30);
    a.faults = vec![Fault::KILL, Fault::PAUSE, Fault::PARTITION, Fault::RECONFIG, Fault::LEADER_TRANSFER];
    a.label = Some("ci-101".into());
    // The transaction workload rides along: 4 list-append clients, checked for strict
    // serializability under kills, pauses, partitions and membership changes.
    a.txn_clients = 4;
    let mut b = Options::new(202);
    b.duration = Duration::from_secs(25);
    b.faults = vec![Fault::DISK_FULL, Fault::CLOCK, Fault::SLOW_DISK, Fault::KILL, Fault::LOST_WAL];
    b.choice = KeyChoice::HotKey;
    b.label = Some("ci-202".into());
    // Lease reads with a drift bound, the clock fault (within the bound) and pauses longer
    // than the lease, each on the leader.
    let mut c = Options::new(303);
    c.duration = Duration::from_secs(25);
    c.faults = vec![Fault::PAUSE, Fault::CLOCK, Fault::PARTITION, Fault::LEADER_TRANSFER];
    c.reads = ReadConsistency::Lease;
    c.leader_first = true;
    c.label = Some("ci-303-lease".into());
    // Every node on the runtime engine (issue 19), under every fault kind, with the
    // transaction clients: 40 s, for nine kinds (in 25 s the kill was never drawn).
    let mut d = Options::new(404);
    d.duration = Duration::from_secs(40);
    d.faults = Fault::all();
    d.txn_clients = 4;
    d.engine = Some("runtime");
    d.label = Some("ci-404-runtime".into());
    vec![a, b, c, d]
}

/// The test-only weakenings of [`weakened`]: read-only transactions torn key by key, the
/// last event of every watch answer dropped, and every lease's expiry proposed 6 s after its
/// deadline. Each is caught by its own checker; none can touch what another checks (watches
/// never see transactions' or leases' keys, transaction reads are not watch answers, and the
/// lease clients' keys are their own).
const TORN_TXN_READS: &str = "torn_txn_reads_ms = 20\nwatch_events = \"drop\"\nlease_expire_delay_ms = 6000\n";

/// The run of [`weakened`]: no fault, only transaction clients' contention (3 shared keys), the
/// KV clients and the watchers, every node serving read-only transactions torn and watch
/// answers short of their last event ([`TORN_TXN_READS`]).
fn weakened_run() -> Options {
    let mut o = Options::new(2201);
    o.duration = Duration::from_secs(10);
    o.faults = Vec::new();
    o.txn_clients = 4;
    o.txn_slots = 3;
    o.failpoints = Some(TORN_TXN_READS);
    o.label = Some("weakened-torn-txn-reads".into());
    o
}

/// The control of [`weakened_run`]: the same workload and seed on nodes without the failpoint,
/// shorter; it must pass every check, the transaction check included.
fn weakened_control() -> Options {
    let mut o = weakened_run();
    o.duration = Duration::from_secs(5);
    o.failpoints = None;
    o.label = Some("weakened-control".into());
    o
}

/// The anomalies torn read-only transactions produce: a read-only transaction that sees one
/// append of a transaction and misses another (read skew: one `rw` edge, `G-single`) or misses
/// appends of two transactions that each see the other's effect through other reads (`G2`),
/// with real-time variants. A torn read is still each key's latest committed list, so it never
/// misses an append that returned before the transaction was called (no lost append), never
/// sees an uncommitted or unknown value (no G1a, garbage) and sits in no cycle without an `rw`
/// edge (no G0, G1c): any of those would mean the checker or the harness is wrong.
const TORN_READ_KINDS: [AnomalyKind; 4] =
    [AnomalyKind::GSingle, AnomalyKind::G2, AnomalyKind::GSingleRealtime, AnomalyKind::G2Realtime];

/// What watch answers short of their last event produce: acknowledged writes missing from the
/// streams, and streams that disagree where they overlap (each lost different events). A
/// dropped event never duplicates one, reorders one or invents a value: any of those would mean
/// the checker or the harness is wrong.
const DROPPED_EVENT_KINDS: [ViolationKind; 2] = [ViolationKind::MissingWrite, ViolationKind::StreamsDiffer];

/// What a late lease expiry produces: keys read after their lease's expiry bound. A late
/// expiry deletes nothing early and touches no revoke: anything else would mean the checker
/// or the harness is wrong.
const LATE_EXPIRY_KINDS: [LeaseViolation; 1] = [LeaseViolation::Outlived];

/// Judges the weakened run against its control: it passes when the control is clean (every
/// check, transactions, watches and leases included), the weakened run's transaction check,
/// complete, found only [`TORN_READ_KINDS`], at least one plain `G-single` among them, its watch
/// check found only [`DROPPED_EVENT_KINDS`], at least one missing write among them, its lease
/// check found only [`LATE_EXPIRY_KINDS`], and every other check of the run passed. The reason
/// either way.
fn judge_weakened(weak: &Verdict, control: &Verdict) -> (bool, String) {
    let mut wrong = Vec::new();
    if !control.pass
        || control.txn.as_ref().is_none_or(|t| !t.kinds.is_empty() || !t.complete)
        || control.watch.as_ref().is_none_or(|w| !w.kinds.is_empty() || w.acked_covered == 0)
        || control.lease.as_ref().is_none_or(|l| !l.kinds.is_empty() || !l.exercised)
    {
        wrong.push("the control run without the failpoint is not clean".to_string());
    }
    if !weak.rest_pass {
        wrong.push("a check other than the transaction, watch and lease checks failed".to_string());
    }
    match &weak.lease {
        None => wrong.push("the lease check did not run".to_string()),
        Some(l) => {
            let unexpected: Vec<String> = l
                .kinds
                .iter()
                .filter(|(k, _)| !LATE_EXPIRY_KINDS.contains(k))
                .map(|(k, n)| format!("{k} ×{n}"))
                .collect();
            if !unexpected.is_empty() {
                wrong.push(format!("lease violations a late expiry cannot produce: {}", unexpected.join(", ")));
            }
            if !l.kinds.contains_key(&LeaseViolation::Outlived) {
                wrong.push("no outlived lease, what a late expiry produces".to_string());
            }
        }
    }
    match &weak.watch {
        None => wrong.push("the watch check did not run".to_string()),
        Some(w) => {
            let unexpected: Vec<String> = w
                .kinds
                .iter()
                .filter(|(k, _)| !DROPPED_EVENT_KINDS.contains(k))
                .map(|(k, n)| format!("{k} ×{n}"))
                .collect();
            if !unexpected.is_empty() {
                wrong.push(format!("watch violations dropped events cannot produce: {}", unexpected.join(", ")));
            }
            if !w.kinds.contains_key(&ViolationKind::MissingWrite) {
                wrong.push("no missing-write in the watch streams, what dropped events produce".to_string());
            }
        }
    }
    match &weak.txn {
        None => wrong.push("the transaction check did not run".to_string()),
        Some(t) => {
            if !t.complete {
                wrong.push("the transaction check did not cover the whole history".to_string());
            }
            let unexpected: Vec<String> = t
                .kinds
                .iter()
                .filter(|(k, _)| !TORN_READ_KINDS.contains(k))
                .map(|(k, n)| format!("{k} ×{n}"))
                .collect();
            if !unexpected.is_empty() {
                wrong.push(format!("anomalies torn reads cannot produce: {}", unexpected.join(", ")));
            }
            if !t.kinds.contains_key(&AnomalyKind::GSingle) {
                wrong.push("no G-single (read skew), the anomaly torn reads produce".to_string());
            }
        }
    }
    let kinds = weak
        .txn
        .as_ref()
        .map(|t| t.kinds.iter().map(|(k, n)| format!("{k} ×{n}")).collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    let watch_kinds = weak
        .watch
        .as_ref()
        .map(|w| w.kinds.iter().map(|(k, n)| format!("{k} ×{n}")).collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    let lease_kinds = weak
        .lease
        .as_ref()
        .map(|l| l.kinds.iter().map(|(k, n)| format!("{k} ×{n}")).collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    if wrong.is_empty() {
        (
            true,
            format!(
                "weakened node caught (expected): only torn-read anomalies ({kinds}), dropped-event watch \
                 violations ({watch_kinds}) and late-expiry lease violations ({lease_kinds}); control clean"
            ),
        )
    } else {
        (false, format!("weakened node NOT judged as expected: {}", wrong.join("; ")))
    }
}

/// The weakened run and its control, judged by [`judge_weakened`]; the verdict line quotes
/// both runs' lines.
fn weakened_verdict() -> Result<Verdict> {
    crate::demo::step("weakened-node control: the same transaction workload without the failpoint; must be clean");
    let control = run(&weakened_control())?;
    crate::demo::step(
        "weakened node: read-only transactions torn (failpoint torn_txn_reads_ms), watch answers short of their last \
         event (failpoint watch_events), lease expiry 6 s late (failpoint lease_expire_delay_ms); each checker must \
         object",
    );
    let weak = run(&weakened_run())?;
    let (pass, judged) = judge_weakened(&weak, &control);
    let line = format!("{judged}\n  weakened: {}\n  control: {}", weak.line, control.line);
    println!("{line}");
    Ok(Verdict::plain(pass, line, weak.ops + control.ops))
}

/// `cargo xtask chaos weakened`: a run against nodes weakened on purpose, which must fail the
/// transaction check with the anomalies torn reads produce and nothing else, and its control
/// without the failpoint, which must pass (evidence that the checker catches a real node's
/// anomaly, names it right, and does not object to a correct node under the same workload).
pub(crate) fn weakened(args: &[String]) -> Result<()> {
    if let Some(a) = args.first() {
        bail!("`chaos weakened` takes no arguments, got `{a}`");
    }
    report(&[weakened_verdict()?])
}

/// `cargo xtask chaos ci`: [`ci_runs`], the weakened-node run and the `lock-fencing` and
/// `service-registry` regressions, a few minutes.
pub(crate) fn ci(args: &[String]) -> Result<()> {
    if let Some(a) = args.first() {
        bail!("`chaos ci` takes no arguments, got `{a}`");
    }
    let mut verdicts = Vec::new();
    for o in ci_runs() {
        verdicts.push(run(&o)?);
    }
    verdicts.push(weakened_verdict()?);
    verdicts.push(regression("lock-fencing")?);
    verdicts.push(regression("service-registry")?);
    report(&verdicts)
}

/// `cargo xtask chaos soak`: 5 nodes, every fault, thirty minutes unless told otherwise.
pub(crate) fn soak(args: &[String]) -> Result<()> {
    let mut o = Options::new(1);
    o.nodes = 5;
    o.duration = Duration::from_secs(1800);
    o.label = Some("soak".into());
    for (flag, v) in flags(args)? {
        match flag.as_str() {
            "--duration" => o.duration = Duration::from_secs(parse_num(&v, &flag)?.clamp(1, 24 * 3600)),
            "--seed" => o.seed = parse_num(&v, &flag)?,
            _ => bail!("`chaos soak` takes --duration and --seed, got `{flag}`"),
        }
    }
    report(&[run(&o)?])
}

fn report(verdicts: &[Verdict]) -> Result<()> {
    let failed: Vec<&Verdict> = verdicts.iter().filter(|v| !v.pass).collect();
    let ops: usize = verdicts.iter().map(|v| v.ops).sum();
    if failed.is_empty() {
        println!("chaos: PASS — {} runs, {ops} operations checked", verdicts.len());
        Ok(())
    } else {
        bail!(
            "chaos: {} of {} runs FAILED:\n{}",
            failed.len(),
            verdicts.len(),
            failed.iter().map(|v| v.line.as_str()).collect::<Vec<_>>().join("\n")
        )
    }
}

/// `cargo xtask chaos regress [NAME]`.
pub(crate) fn regress(args: &[String]) -> Result<()> {
    let names: Vec<&str> = match args {
        [] => REGRESSIONS.iter().map(|r| r.0).collect(),
        [n] if n == "list" => {
            for (name, seed, what) in REGRESSIONS {
                println!("{name:<22} seed {seed:<6} {what}");
            }
            return Ok(());
        }
        [n] => vec![n.as_str()],
        _ => bail!("usage: cargo xtask chaos regress [NAME]"),
    };
    let mut verdicts = Vec::new();
    for n in names {
        verdicts.push(regression(n)?);
    }
    report(&verdicts)
}

fn regression(name: &str) -> Result<Verdict> {
    let Some(&(_, seed, what)) = REGRESSIONS.iter().find(|r| r.0 == name) else {
        bail!("unknown regression `{name}`; known: {}", REGRESSIONS.iter().map(|r| r.0).collect::<Vec<_>>().join(", "));
    };
    crate::demo::step(&format!("regression {name} (seed {seed}): {what}"));
    let mut o = Options::new(seed);
    o.label = Some(format!("regress-{name}"));
    let v = match name {
        "single-node-crash" => {
            o.nodes = 1;
            o.duration = Duration::from_secs(20);
            o.faults = vec![Fault::KILL];
            run(&o)?
        }
        "reconfig-split-brain" => {
            o.duration = Duration::from_secs(40);
            o.faults = vec![Fault::RECONFIG, Fault::LEADER_TRANSFER, Fault::KILL, Fault::PAUSE, Fault::PARTITION];
            run(&o)?
        }
        "sigcont-stall" => {
            o.duration = Duration::from_secs(32);
            o.faults = vec![Fault::KILL, Fault::PAUSE];
            o.script = Some(SIGCONT_STALL);
            o.bounds = SIGCONT_STALL_BOUNDS;
            run(&o)?
        }
        "seed-4242" => {
            o.duration = Duration::from_secs(60);
            // Every kind of fault there was when it was found (the schedule is drawn from the
            // seed and the list).
            o.faults = Fault::all().into_iter().filter(|&f| f != Fault::LOST_WAL).collect();
            run(&o)?
        }
        "shared-principal" => {
            o.duration = Duration::from_secs(30);
            o.faults = vec![Fault::KILL, Fault::PAUSE, Fault::PARTITION];
            o.principals = super::workload::Principals::Shared;
            o.leader_first = true;
            o.hold_ms = (3000, 6000);
            run(&o)?
        }
        "index-monotonic" => index_monotonic(seed)?,
        "lock-fencing" => lock_fencing()?,
        "service-registry" => service_registry()?,
        _ => bail!("unknown regression `{name}`"),
    };
    println!("regression {name}: {}", if v.pass { "PASS" } else { "FAIL" });
    Ok(v)
}

/// Kills every node at once (SIGKILL) three times during writes; after each restart every
/// node's applied index and the revision must be at least what they were before, and at
/// least the revision of every acknowledged write.
fn index_monotonic(seed: u64) -> Result<Verdict> {
    let bin = build_quorate()?;
    let dir = target_dir().join("chaos").join("regress-index-monotonic");
    let rt = runtime()?;
    rt.block_on(async move {
        let env = Env::create(bin, dir.clone(), 3, 0, RAFT, &[], None).await?;
        let admin = env.factory.client(seed)?;
        let writer = env.factory.client(seed ^ 1)?;
        let history = History::new();
        env.wait_for_leader(&admin, Duration::from_secs(30)).await?;
        let mut acked_revision = 0u64;
        let mut problems = Vec::new();
        let mut writes = 0u64;
        for round in 0..3u64 {
            for i in 0..50u64 {
                let (key, value) = (format!("chaos/k{:03}", i % 8), format!("r{round}-{i}"));
                let call = history.now();
                let r = writer.put(&key, &value).await;
                let c = super::workload::write_completion(&r, history.now());
                history.record(quorate_check::history::Operation::put(0, &key, &value, call, c));
                if let Ok(rev) = r {
                    acked_revision = acked_revision.max(rev);
                    writes += 1;
                }
            }
            let before: Vec<(u64, u64, u64)> = admin
                .statuses()
                .await
                .into_iter()
                .filter_map(|(id, s)| s.ok().map(|s| (id.get(), s.applied.0, s.revision)))
                .collect();
            {
                let mut c = env.lock();
                for id in 1..=3 {
                    c.kill(id)?;
                }
                for id in 1..=3 {
                    c.start(id)?;
                }
            }
            env.wait_for_leader(&admin, Duration::from_secs(30)).await?;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let after = admin.statuses().await;
                let mut behind = Vec::new();
                for (id, applied, revision) in &before {
                    let Some(Ok(s)) = after.iter().find(|(n, _)| n.get() == *id).map(|(_, s)| s) else {
                        behind.push(format!("node {id} unreachable"));
                        continue;
                    };
                    if s.applied.0 < *applied || s.revision < *revision || s.revision < acked_revision {
                        behind.push(format!(
                            "node {id}: applied {} (was {applied}), revision {} (was {revision}, acknowledged {acked_revision})",
                            s.applied.0, s.revision
                        ));
                    }
                }
                if behind.is_empty() {
                    break;
                }
                if Instant::now() >= deadline {
                    problems.push(format!("round {round}: {}", behind.join("; ")));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // Right after the restart, before catching up, the applied index read from disk
            // must not be below what the node had reported.
            println!("round {round}: all three nodes killed and restarted; {writes} writes acknowledged so far");
        }
        for i in 0..8u64 {
            let key = format!("chaos/k{i:03}");
            super::workload::recorded_get(&history, &admin, 1, &key, quorate_client::ReadConsistency::Linearizable).await;
        }
        let lin = check(&history.snapshot(), &Limits::default());
        if !lin.is_linearizable() {
            problems.push(format!("history: {lin}"));
        }
        history.write(&dir.join("history.jsonl"))?;
        env.lock().stop_all();
        let pass = problems.is_empty();
        if pass {
            let _ = std::fs::remove_dir_all(dir.join("data"));
        }
        let line = format!(
            "regress index-monotonic seed={seed}: {} — 3 whole-cluster SIGKILLs, {writes} acknowledged writes (max revision {acked_revision}); {}",
            if pass { "PASS" } else { "FAIL" },
            if pass { format!("applied index and revision never went back; {lin}") } else { problems.join("; ") }
        );
        println!("{line}");
        Ok(Verdict::plain(pass, line, history.len()))
    })
}

/// Runs `examples/lock.rs` (the lease-based lock recipe, `quorate_client::recipes::Lock`,
/// with fencing tokens) against a 3-node cluster: a holder whose keep-alive stops loses the
/// lock to the waiter when its lease expires, and its write with the old token must be refused
/// by the fence (and by the owner condition).
fn lock_fencing() -> Result<Verdict> {
    client_example("lock-fencing", "lock", 343)
}

/// Runs `examples/registry.rs` (a service registry on leases and watches) against a 3-node
/// cluster: a directory loaded at one revision and followed by a prefix watch must see an
/// instance whose keep-alives stop leave within its lease's bound (and not before two thirds
/// of its TTL), a revoked one leave at once and a new one join, and equal a linearizable read.
fn service_registry() -> Result<Verdict> {
    client_example("service-registry", "registry", 616)
}

/// Builds quorate-client's example `example`, runs it against a fresh 3-node cluster (named
/// `seed`'s client factory, the chaos raft settings) and passes if it exits 0. Its output is
/// kept in `target/chaos/regress-NAME/EXAMPLE-example.txt`.
fn client_example(name: &str, example: &str, seed: u64) -> Result<Verdict> {
    let bin = build_quorate()?;
    run_cmd(cargo().args(["build", "--locked", "--profile", PROFILE, "-p", "quorate-client", "--example", example]))?;
    let program = target_dir().join(PROFILE).join("examples").join(example);
    let dir = target_dir().join("chaos").join(format!("regress-{name}"));
    let rt = runtime()?;
    rt.block_on(async move {
        let env = Env::create(bin, dir.clone(), 3, 0, RAFT, &[], None).await?;
        let admin = env.factory.client(seed)?;
        env.wait_for_leader(&admin, Duration::from_secs(30)).await?;
        // Leases and watches need cluster version 2, which a fresh cluster commits on its own
        // shortly after it starts: every member must have applied it.
        let deadline = Instant::now() + Duration::from_secs(30);
        for id in env.listen.keys() {
            loop {
                match admin.versions(nid(*id)?).await {
                    Ok(v) if v.cluster_version >= 2 => break,
                    _ if Instant::now() >= deadline => bail!("node {id} is not at cluster version 2 after 30 s"),
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
        let endpoints: Vec<String> = env.listen.iter().map(|(id, a)| format!("{id}={a}")).collect();
        let out = Command::new(&program)
            .env("QUORATE_CERTS", env.factory.certs.clone())
            .env("QUORATE_CLUSTER", &env.factory.cluster)
            .env("QUORATE_ENDPOINTS", endpoints.join(","))
            .output()
            .with_context(|| format!("cannot run {}", program.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        print!("{stdout}");
        std::fs::write(dir.join(format!("{example}-example.txt")), &stdout)?;
        env.lock().stop_all();
        let pass = out.status.success();
        if pass {
            let _ = std::fs::remove_dir_all(dir.join("data"));
        }
        let line = format!(
            "regress {name}: {} — {}",
            if pass { "PASS" } else { "FAIL" },
            stdout.lines().last().unwrap_or("(no output)")
        );
        if !pass {
            eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(Verdict::plain(pass, line, 0))
    })
}

/// `cargo xtask chaos failover [--kills N] [--seed S]`: SIGKILL the leader N times; each
/// time, the time from the kill to the first acknowledged write.
pub(crate) fn failover(args: &[String]) -> Result<()> {
    let mut kills = 10u64;
    let mut seed = 1u64;
    let mut attempt_ms = FAILOVER_ATTEMPT_MS;
    for (flag, v) in flags(args)? {
        match flag.as_str() {
            "--kills" => kills = parse_num(&v, &flag)?.clamp(1, 1000),
            "--seed" => seed = parse_num(&v, &flag)?,
            "--attempt-ms" => attempt_ms = parse_num(&v, &flag)?.clamp(50, 30_000),
            _ => bail!("`chaos failover` takes --kills, --seed and --attempt-ms, got `{flag}`"),
        }
    }
    let bin = build_quorate()?;
    let dir: PathBuf = target_dir().join("chaos").join("failover");
    let rt = runtime()?;
    let times = rt.block_on(async move {
        let env = Env::create(bin, dir.clone(), 3, 0, RAFT, &[], None).await?;
        let admin = env.factory.client(seed)?;
        let history = History::new();
        let writer = fast_client(&env, seed ^ 7, attempt_ms)?;
        let observer = fast_client(&env, seed ^ 11, FAILOVER_ATTEMPT_MS)?;
        let mut times = Vec::new();
        env.wait_for_leader(&admin, Duration::from_secs(30)).await?;
        for k in 0..kills {
            let (leader, term) = env.wait_for_leader(&admin, Duration::from_secs(30)).await?;
            // A write first, so the writer knows the leader (as a busy client would).
            recorded_put(&history, &writer, 0, "failover/k", &format!("before-{k}")).await;
            let survivors = (1..=3u64).filter(|&i| i != leader).map(super::nid).collect::<Result<Vec<_>>>()?;
            let t0 = Instant::now();
            env.lock().kill(leader)?;
            // The writer retries until a write is acknowledged; meanwhile an observer asks the
            // survivors for their status every 10 ms, to split the failover into the election
            // and the client's own delay.
            let write = async {
                let mut n = 0;
                loop {
                    n += 1;
                    if recorded_put(&history, &writer, 0, "failover/k", &format!("after-{k}-{n}")).await {
                        return Ok(t0.elapsed());
                    }
                    if t0.elapsed() > Duration::from_secs(60) {
                        bail!("no write acknowledged within 60s of killing leader {leader}");
                    }
                }
            };
            let elected = async {
                while t0.elapsed() < Duration::from_secs(60) {
                    for &id in &survivors {
                        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(50), observer.status(id)).await
                            && s.role == RaftRole::Leader
                            && s.term.0 > term
                        {
                            return Some((t0.elapsed(), s.id.get(), s.term.0));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                None
            };
            let (written, elected) = tokio::join!(write, elected);
            let written = written?;
            let (elected_after, new_leader, new_term) =
                elected.context("no survivor reported itself leader within 60s")?;
            println!(
                "kill {}: leader {leader} (term {term}) SIGKILLed; node {new_leader} leader of term {new_term} \
                 seen after {:.0} ms; first acknowledged write after {:.0} ms",
                k + 1,
                elected_after.as_secs_f64() * 1000.0,
                written.as_secs_f64() * 1000.0
            );
            times.push((elected_after, written));
            env.lock().start(leader)?;
            // Let it catch up before the next kill, so every kill leaves a quorum.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let st = admin.statuses().await;
                let commit = st.iter().filter_map(|(_, s)| s.as_ref().ok()).map(|s| s.commit.0).max().unwrap_or(0);
                let caught_up = st.iter().all(|(_, s)| s.as_ref().is_ok_and(|s| s.applied.0 >= commit));
                if caught_up && commit > 0 {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!("node {leader} did not catch up within 60s");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let lin = check(&history.snapshot(), &Limits::default());
        history.write(&dir.join("history.jsonl"))?;
        env.lock().stop_all();
        if !lin.is_linearizable() {
            bail!("the failover history is not linearizable: {lin}");
        }
        println!("failover history: {lin}");
        let _ = std::fs::remove_dir_all(dir.join("data"));
        Ok::<_, anyhow::Error>(times)
    })?;
    let (median_elected, max_elected) = median_max(times.iter().map(|t| t.0));
    let (median, max) = median_max(times.iter().map(|t| t.1));
    println!(
        "failover: {} kills of the leader; SIGKILL → first acknowledged write: median {median:.0} ms, max {max:.0} ms; \
         SIGKILL → new leader seen: median {median_elected:.0} ms, max {max_elected:.0} ms \
         (election_timeout_ms {}, heartbeat_ms {}, pre_vote on, client attempt timeout {} ms)",
        times.len(),
        RAFT.election_timeout_ms,
        RAFT.heartbeat_ms,
        attempt_ms
    );
    Ok(())
}

/// Median and maximum of durations, in milliseconds.
fn median_max(durations: impl Iterator<Item = Duration>) -> (f64, f64) {
    let mut ms: Vec<f64> = durations.map(|t| t.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    if ms.is_empty() {
        return (0.0, 0.0);
    }
    let median = if ms.len() % 2 == 1 { ms[ms.len() / 2] } else { (ms[ms.len() / 2 - 1] + ms[ms.len() / 2]) / 2.0 };
    (median, ms[ms.len() - 1])
}

/// The failover writer's per-attempt timeout by default (`--attempt-ms`): a request to the
/// dead leader costs this much.
const FAILOVER_ATTEMPT_MS: u64 = 300;

fn fast_client(env: &Env, seed: u64, attempt_ms: u64) -> Result<quorate_client::Client> {
    let tls = quorate_transport::TlsPaths {
        ca: env.factory.certs.join("ca.crt"),
        cert: env.factory.certs.join("client-admin.crt"),
        key: env.factory.certs.join("client-admin.key"),
    };
    let members = env.listen.iter().map(|(id, a)| Ok((super::nid(*id)?, *a))).collect::<Result<Vec<_>>>()?;
    let mut c =
        quorate_client::ClientConfig::new(quorate_transport::ClusterId::new(&env.factory.cluster)?, members, tls);
    c.request_timeout = Duration::from_millis(attempt_ms);
    c.connect_timeout = Duration::from_millis(attempt_ms);
    c.total_timeout = Duration::from_secs(10);
    c.retries_max = 100;
    c.backoff = quorate_client::Backoff::default();
    c.seed = Some(seed);
    Ok(quorate_client::Client::new(c)?)
}

#[cfg(test)]
mod tests {
    use super::{
        AnomalyKind, DROPPED_EVENT_KINDS, LATE_EXPIRY_KINDS, LeaseViolation, TORN_READ_KINDS, Verdict, ViolationKind,
        judge_weakened,
    };
    use crate::chaos::{LeaseFindings, TxnFindings, WatchFindings};

    /// A weakened run's watch findings: missing writes, as dropped events make.
    const DROPPED: &[(ViolationKind, usize)] = &[(ViolationKind::MissingWrite, 40), (ViolationKind::StreamsDiffer, 7)];

    /// A weakened run's lease findings: outlived leases, as a late expiry makes.
    const LATE: &[(LeaseViolation, usize)] = &[(LeaseViolation::Outlived, 12)];

    fn run_with(rest_pass: bool, kinds: &[(AnomalyKind, usize)], complete: bool) -> Verdict {
        with_lease(with_watch(run_txn(rest_pass, kinds, complete), DROPPED), LATE)
    }

    fn with_lease(mut v: Verdict, kinds: &[(LeaseViolation, usize)]) -> Verdict {
        v.pass &= kinds.is_empty();
        v.lease = Some(LeaseFindings { kinds: kinds.iter().copied().collect(), exercised: true });
        v
    }

    fn run_txn(rest_pass: bool, kinds: &[(AnomalyKind, usize)], complete: bool) -> Verdict {
        let txn = TxnFindings { kinds: kinds.iter().copied().collect(), complete };
        let pass = rest_pass && kinds.is_empty() && complete;
        Verdict { pass, line: String::new(), ops: 1, rest_pass, txn: Some(txn), watch: None, lease: None }
    }

    fn with_watch(mut v: Verdict, kinds: &[(ViolationKind, usize)]) -> Verdict {
        v.pass &= kinds.is_empty();
        v.watch = Some(WatchFindings { kinds: kinds.iter().copied().collect(), acked_covered: 100 });
        v
    }

    fn clean() -> Verdict {
        with_lease(with_watch(run_txn(true, &[], true), &[]), &[])
    }

    #[test]
    fn late_lease_expiry_passes_only_with_outlived_leases_and_a_clean_control() {
        let weak = run_with(true, &[(AnomalyKind::GSingle, 90)], true);
        let (pass, why) = judge_weakened(&weak, &clean());
        assert!(pass && why.contains("outlived ×12"), "{why}");
        for wrong in [LeaseViolation::ExpiredEarly, LeaseViolation::SeenAfterRevoke] {
            assert!(!LATE_EXPIRY_KINDS.contains(&wrong));
            let weak = with_lease(
                with_watch(run_txn(true, &[(AnomalyKind::GSingle, 90)], true), DROPPED),
                &[(LeaseViolation::Outlived, 3), (wrong, 1)],
            );
            let (pass, why) = judge_weakened(&weak, &clean());
            assert!(!pass && why.contains(wrong.name()), "{wrong}: {why}");
        }
        // No outlived lease: not caught.
        let missed = with_lease(with_watch(run_txn(true, &[(AnomalyKind::GSingle, 90)], true), DROPPED), &[]);
        let (pass, why) = judge_weakened(&missed, &clean());
        assert!(!pass && why.contains("no outlived lease"), "{why}");
        let unchecked = with_watch(run_txn(true, &[(AnomalyKind::GSingle, 90)], true), DROPPED);
        let (pass, why) = judge_weakened(&unchecked, &clean());
        assert!(!pass && why.contains("lease check did not run"), "{why}");
        // The control's lease check must be clean and exercised (an expiry and a revoke seen).
        let dirty = with_lease(with_watch(run_txn(true, &[], true), &[]), &[(LeaseViolation::Outlived, 1)]);
        assert!(!judge_weakened(&weak, &dirty).0);
        let mut idle = clean();
        idle.lease = Some(LeaseFindings::default());
        assert!(!judge_weakened(&weak, &idle).0);
        assert!(!judge_weakened(&weak, &with_watch(run_txn(true, &[], true), &[])).0);
    }

    #[test]
    fn dropped_watch_events_pass_only_with_their_own_violations_and_a_clean_control() {
        let torn = run_with(true, &[(AnomalyKind::GSingle, 90)], true);
        let (pass, why) = judge_weakened(&torn, &clean());
        assert!(pass && why.contains("missing-write ×40"), "{why}");
        for wrong in [
            ViolationKind::Gap,
            ViolationKind::Duplicate,
            ViolationKind::OutOfOrder,
            ViolationKind::WrongValue,
            ViolationKind::WrongRevision,
            ViolationKind::Unwritten,
            ViolationKind::FailedWriteSeen,
        ] {
            assert!(!DROPPED_EVENT_KINDS.contains(&wrong));
            let weak = with_watch(
                run_txn(true, &[(AnomalyKind::GSingle, 90)], true),
                &[(ViolationKind::MissingWrite, 3), (wrong, 1)],
            );
            let (pass, why) = judge_weakened(&weak, &clean());
            assert!(!pass && why.contains(wrong.name()), "{wrong}: {why}");
        }
        // No missing write: not caught (streams that only disagree are not enough).
        let only_differ =
            with_watch(run_txn(true, &[(AnomalyKind::GSingle, 90)], true), &[(ViolationKind::StreamsDiffer, 3)]);
        assert!(!judge_weakened(&only_differ, &clean()).0);
        let unchecked = run_txn(true, &[(AnomalyKind::GSingle, 90)], true);
        let (pass, why) = judge_weakened(&unchecked, &clean());
        assert!(!pass && why.contains("watch check did not run"), "{why}");
        // The control's watch check must be clean and have covered acknowledged writes.
        let dirty = with_watch(run_txn(true, &[], true), &[(ViolationKind::MissingWrite, 1)]);
        assert!(!judge_weakened(&torn, &dirty).0);
        let mut empty = clean();
        empty.watch = Some(WatchFindings::default());
        assert!(!judge_weakened(&torn, &empty).0);
        assert!(!judge_weakened(&torn, &run_txn(true, &[], true)).0);
    }

    #[test]
    fn torn_reads_pass_only_with_their_own_anomalies_and_a_clean_control() {
        let torn = run_with(
            true,
            &[(AnomalyKind::GSingle, 90), (AnomalyKind::G2, 20), (AnomalyKind::GSingleRealtime, 9)],
            true,
        );
        let (pass, why) = judge_weakened(&torn, &clean());
        assert!(pass, "{why}");
        assert!(why.contains("G-single ×90"), "{why}");
        // Every kind torn reads cannot produce fails the judgment, alone or among torn ones.
        for wrong in [
            AnomalyKind::G0,
            AnomalyKind::G1a,
            AnomalyKind::G1b,
            AnomalyKind::G1c,
            AnomalyKind::G1cRealtime,
            AnomalyKind::G0Realtime,
            AnomalyKind::LostAppend,
            AnomalyKind::LostUpdate,
            AnomalyKind::GarbageRead,
            AnomalyKind::IncompatibleOrder,
            AnomalyKind::Internal,
        ] {
            assert!(!TORN_READ_KINDS.contains(&wrong));
            let weak = run_with(true, &[(AnomalyKind::GSingle, 90), (wrong, 1)], true);
            let (pass, why) = judge_weakened(&weak, &clean());
            assert!(!pass && why.contains(wrong.name()), "{wrong}: {why}");
        }
        // At least one plain G-single.
        let no_single = run_with(true, &[(AnomalyKind::G2, 5), (AnomalyKind::GSingleRealtime, 3)], true);
        assert!(!judge_weakened(&no_single, &clean()).0);
        // No anomaly at all: not caught.
        assert!(!judge_weakened(&clean(), &clean()).0);
        // The control must be clean: an anomaly, another failed check, an incomplete check.
        let dirty = with_watch(run_txn(true, &[(AnomalyKind::GSingle, 1)], true), &[]);
        let (pass, why) = judge_weakened(&torn, &dirty);
        assert!(!pass && why.contains("control"), "{why}");
        assert!(!judge_weakened(&torn, &with_watch(run_txn(false, &[], true), &[])).0);
        assert!(!judge_weakened(&torn, &with_watch(run_txn(true, &[], false), &[])).0);
        assert!(!judge_weakened(&torn, &Verdict::plain(true, String::new(), 1)).0);
        // The weakened run's other checks must pass, and its transaction check be complete.
        let other_failed = run_with(false, &[(AnomalyKind::GSingle, 90)], true);
        assert!(!judge_weakened(&other_failed, &clean()).0);
        let incomplete = run_with(true, &[(AnomalyKind::GSingle, 90)], false);
        assert!(!judge_weakened(&incomplete, &clean()).0);
        assert!(!judge_weakened(&Verdict::plain(false, String::new(), 1), &clean()).0);
    }
}
