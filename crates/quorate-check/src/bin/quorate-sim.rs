//! `quorate-sim`: runs simulation seeds and ends with one summary line.
//!
//! `quorate-sim --seeds N [--first S]` runs seeds S..S+N; `--seed S` replays one seed;
//! `--steps K` bounds the events per seed; `--verbose` narrates; `--history FILE` writes the
//! client history of a single seed as JSON lines. `--voters-min V` keeps at least V voters in
//! every configuration (the initial one included); `--set NAME=VALUE` overrides one setting of
//! every seed (see `SimConfig::set`); `--no-durability-check` stops checking messages against
//! stable storage, to see what a durability bug leads to.
//!
//! Built with the feature `reintroduce-holes` (`cargo xtask sim --hole/--holes` does so):
//! `--hole NAME` switches one of issue 16's holes back on in every core of every seed, and
//! `--holes` runs every hole's hunt (`quorate_check::holes`) and fails unless each is caught.

use quorate_check::history::write_jsonl;
use quorate_check::sim::{SimConfig, run_config};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

const USAGE: &str = "usage: quorate-sim [--seeds N] [--first S | --seed S] [--steps K] [--verbose] [--history FILE] \
[--voters-min V] [--set NAME=VALUE]... [--no-durability-check] [--hole NAME | --holes]";

struct Args {
    seeds: u64,
    first: u64,
    steps: u64,
    verbose: bool,
    history: Option<String>,
    voters_min: Option<usize>,
    sets: Vec<(String, String)>,
    durability: bool,
    hole: Option<String>,
    holes: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        seeds: 100,
        first: 0,
        steps: quorate_check::sim::STEPS_DEFAULT,
        verbose: false,
        history: None,
        voters_min: None,
        sets: Vec::new(),
        durability: true,
        hole: None,
        holes: false,
    };
    let mut it = std::env::args().skip(1);
    let num = |v: Option<String>, name: &str| -> Result<u64, String> {
        let v = v.ok_or_else(|| format!("{name} needs a value"))?;
        v.parse().map_err(|_| format!("{name} takes a whole number, got `{v}`"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seeds" => a.seeds = num(it.next(), "--seeds")?,
            "--first" => a.first = num(it.next(), "--first")?,
            "--seed" => {
                a.first = num(it.next(), "--seed")?;
                a.seeds = 1;
            }
            "--steps" => a.steps = num(it.next(), "--steps")?,
            "--verbose" => a.verbose = true,
            "--history" => a.history = Some(it.next().ok_or("--history needs a file name")?),
            "--voters-min" => a.voters_min = Some(num(it.next(), "--voters-min")?.clamp(1, 5) as usize),
            "--no-durability-check" => a.durability = false,
            "--hole" => {
                let name = it.next().ok_or("--hole needs a name")?;
                check_hole(&name)?;
                a.hole = Some(name);
            }
            "--holes" => {
                check_hole("")?;
                a.holes = true;
            }
            "--set" => {
                let v = it.next().ok_or("--set needs NAME=VALUE")?;
                let (name, value) = v.split_once('=').ok_or_else(|| format!("--set takes NAME=VALUE, got `{v}`"))?;
                // Fail early on a bad name or value.
                quorate_check::sim::SimConfig::for_seed(0, 1).set(name, value)?;
                a.sets.push((name.to_owned(), value.to_owned()));
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    if a.seeds == 0 || a.steps == 0 {
        return Err("--seeds and --steps must be positive".into());
    }
    Ok(a)
}

/// Totals over the seeds run.
#[derive(Default)]
struct Totals {
    steps: u64,
    ops: usize,
    crashes: u64,
    mid_write: u64,
    torn: u64,
    partitions: u64,
    pauses: u64,
    jumps: u64,
    long_delays: u64,
    writes: u64,
    merged: u64,
    slow: u64,
    committed: u64,
    lease: u64,
    conf_changes: u64,
    refusals: u64,
    leave_joints: u64,
    snapshots: u64,
    installs: u64,
    single_voter: u64,
    term_moves: u64,
    lost_states: u64,
    recoveries: u64,
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if args.holes {
        return hunt_holes();
    }
    let started = Instant::now();
    let mut t = Totals::default();
    let mut kinds: BTreeMap<&'static str, Vec<u64>> = BTreeMap::new();
    let mut failed = Vec::new();
    let mut extra = String::new();
    if let Some(v) = args.voters_min {
        extra.push_str(&format!(" --voters-min {v}"));
    }
    for (name, value) in &args.sets {
        extra.push_str(&format!(" --set {name}={value}"));
    }
    if !args.durability {
        extra.push_str(" --no-durability-check");
    }
    if let Some(h) = &args.hole {
        extra.push_str(&format!(" --hole {h}"));
    }
    for seed in args.first..args.first + args.seeds {
        let mut cfg = SimConfig::for_seed(seed, args.steps);
        cfg.verbose = args.verbose;
        cfg.check_durability = args.durability;
        if let Some(v) = args.voters_min {
            cfg.voters_min = v;
            cfg.voters = cfg.voters.max(v);
            cfg.max_nodes = cfg.voters + cfg.learners + 2;
        }
        for (name, value) in &args.sets {
            // Checked when parsed.
            let _ = cfg.set(name, value);
        }
        if let Some(h) = &args.hole {
            set_hole(&mut cfg, h);
        }
        let r = run_config(seed, cfg);
        t.steps += r.steps;
        t.ops += r.ops;
        t.crashes += r.crashes;
        t.mid_write += r.mid_write_crashes;
        t.torn += r.torn_writes;
        t.partitions += r.partitions;
        t.pauses += r.pauses;
        t.jumps += r.clock_jumps;
        t.long_delays += r.long_delays;
        t.writes += r.writes;
        t.merged += r.merged_writes;
        t.slow += r.slow_fsyncs;
        t.committed += r.committed;
        t.lease += r.lease_reads;
        t.conf_changes += r.conf_changes;
        t.refusals += r.conf_refusals;
        t.leave_joints += r.leave_joints;
        t.snapshots += r.snapshots;
        t.installs += r.installs;
        t.single_voter += u64::from(r.fewest_voters == 1);
        t.term_moves += r.term_moves_in_lease;
        t.lost_states += r.lost_states;
        t.recoveries += r.recoveries;
        if args.verbose || args.seeds == 1 {
            println!(
                "seed {seed}: {} steps, {:.1} s simulated, {} committed, {} leaders, {} ops ({} ok), {} crashes ({} mid-write, {} torn, {} lost synced state), {} recoveries, {} partitions, {} pauses, {} clock jumps, {} writes ({} merged, {} slow), {} config changes, {} snapshots, {} installs, voters {}..={}",
                r.steps,
                r.sim_time_ns as f64 / 1e9,
                r.committed,
                r.leaders,
                r.ops,
                r.ops_ok,
                r.crashes,
                r.mid_write_crashes,
                r.torn_writes,
                r.lost_states,
                r.recoveries,
                r.partitions,
                r.pauses,
                r.clock_jumps,
                r.writes,
                r.merged_writes,
                r.slow_fsyncs,
                r.conf_changes,
                r.snapshots,
                r.installs,
                r.fewest_voters,
                r.most_voters,
            );
        }
        if let Some(path) = &args.history {
            let written = std::fs::File::create(path)
                .map_err(|e| e.to_string())
                .and_then(|f| write_jsonl(std::io::BufWriter::new(f), &r.history).map_err(|e| e.to_string()));
            if let Err(e) = written {
                eprintln!("cannot write history to {path}: {e}");
                return ExitCode::from(2);
            }
        }
        if let Some(v) = r.violations.first() {
            for v in &r.violations {
                eprintln!("seed {seed}: VIOLATION {v}");
            }
            eprintln!("replay: cargo xtask sim --seed {seed} --steps {}{extra} --verbose", args.steps);
            kinds.entry(kind(v)).or_default().push(seed);
            failed.push(seed);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "sim: seeds {}, steps {}, violations {} ({} entries committed, {} client ops, {} lease reads, {} crashes ({} mid-write, {} torn, {} lost synced state), {} recoveries from lost state, {} partitions, {} pauses, {} clock jumps, {} long delays, {} writes ({} merged, {} slow fsyncs), {} config changes ({} refused, {} operator leaves), {} seeds down to one voter, {} term moves in a lease, {} snapshots, {} installs, {:.1} s, {:.0} steps/s)",
        args.seeds,
        t.steps,
        failed.len(),
        t.committed,
        t.ops,
        t.lease,
        t.crashes,
        t.mid_write,
        t.torn,
        t.lost_states,
        t.recoveries,
        t.partitions,
        t.pauses,
        t.jumps,
        t.long_delays,
        t.writes,
        t.merged,
        t.slow,
        t.conf_changes,
        t.refusals,
        t.leave_joints,
        t.single_voter,
        t.term_moves,
        t.snapshots,
        t.installs,
        elapsed,
        t.steps as f64 / elapsed.max(1e-9),
    );
    for (k, seeds) in &kinds {
        let shown: Vec<String> = seeds.iter().take(12).map(u64::to_string).collect();
        let more = if seeds.len() > 12 { format!(" (+{} more)", seeds.len() - 12) } else { String::new() };
        println!("  {k}: {} seed(s): {}{more}", seeds.len(), shown.join(" "));
    }
    // A run that exercised none of these faults proved nothing about them.
    if args.seeds >= 20 && failed.is_empty() {
        let missing: Vec<&str> = [
            ("configuration change", t.conf_changes),
            ("snapshot", t.snapshots),
            ("install", t.installs),
            ("mid-write crash", t.mid_write),
            ("merged write", t.merged),
            ("pause", t.pauses),
        ]
        .iter()
        .filter(|(_, n)| *n == 0)
        .map(|(name, _)| *name)
        .collect();
        if !missing.is_empty() {
            eprintln!("sim: the run exercised no {}: a failed run", missing.join(", no "));
            return ExitCode::FAILURE;
        }
    }
    if args.seeds == 1 && failed.is_empty() {
        println!(
            "verdict: election safety, log matching, leader completeness, state-machine safety, durability, read freshness, membership rules, linearizability and recovery after healing all held"
        );
    }
    if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// A short name for a violation's kind, to group the seeds that found it.
fn kind(v: &quorate_check::invariants::Violation) -> &'static str {
    use quorate_check::invariants::Violation as V;
    match v {
        V::ElectionSafety { .. } => "election safety",
        V::LogMatching { .. } => "log matching",
        V::LeaderCompleteness { .. } => "leader completeness",
        V::StateMachineSafety { .. } => "state machine safety",
        V::Durability { detail, .. } if detail.contains("while stable storage holds term") => {
            "durability (message before its term is durable)"
        }
        V::Durability { .. } => "durability",
        V::Linearizability { .. } => "linearizability",
        V::Liveness { detail } if detail.contains("joint") => "liveness (joint configuration never left)",
        V::Liveness { .. } => "liveness",
        V::StaleRead { .. } => "stale read",
        V::VoteInLease { .. } => "vote in lease",
        V::Reconfiguration { detail, .. } if detail.contains("joint") => {
            "reconfiguration (change accepted while joint)"
        }
        V::Reconfiguration { .. } => "reconfiguration",
        V::ApplyGap { .. } => "apply gap",
        V::Halted { .. } => "halt",
        V::Panic { .. } => "panic",
        V::DoubleVote { .. } => "double vote",
        _ => "other",
    }
}

/// Fails unless this binary can switch holes back on (and, given a name, knows it).
#[cfg(feature = "reintroduce-holes")]
fn check_hole(name: &str) -> Result<(), String> {
    if name.is_empty() || quorate_check::holes::by_name(name).is_some() {
        return Ok(());
    }
    let names: Vec<&str> = quorate_check::holes::hunts().iter().map(|h| h.name).collect();
    Err(format!("unknown hole `{name}`; known: {}", names.join(", ")))
}

#[cfg(not(feature = "reintroduce-holes"))]
fn check_hole(_: &str) -> Result<(), String> {
    Err("--hole and --holes need a build with the feature `reintroduce-holes`: run `cargo xtask sim --hole NAME ...` or `cargo xtask sim --holes`".into())
}

/// Switches the named hole on in every core of `cfg` (the hunt's own settings are not applied:
/// the replay command names them with `--set`).
#[cfg(feature = "reintroduce-holes")]
fn set_hole(cfg: &mut SimConfig, name: &str) {
    if let Some(h) = quorate_check::holes::by_name(name) {
        cfg.core_hook = Some(quorate_check::holes::hook(h.hole));
    }
}

#[cfg(not(feature = "reintroduce-holes"))]
fn set_hole(_: &mut SimConfig, _: &str) {}

/// Runs every hole's hunt; fails unless each hole is caught within its seeds.
#[cfg(feature = "reintroduce-holes")]
fn hunt_holes() -> ExitCode {
    let mut uncaught = Vec::new();
    for h in quorate_check::holes::hunts() {
        let started = Instant::now();
        let found = h.run();
        let secs = started.elapsed().as_secs_f64();
        let sets: Vec<String> = h.settings.iter().map(|(n, v)| format!("{n}={v}")).collect();
        let (first, last) = (h.seeds.start, h.seeds.end.saturating_sub(1));
        match found {
            Some((seed, v)) => {
                println!(
                    "hole {:?} ({}): caught at seed {seed} of {first}..={last} [{}] in {secs:.1} s: {} ({v})",
                    h.hole,
                    h.name,
                    sets.join(" "),
                    kind(&v)
                );
                println!("  replay: {}", h.replay(seed));
            }
            None => {
                println!(
                    "hole {:?} ({}): NOT caught in seeds {first}..={last} [{}] ({secs:.1} s)",
                    h.hole,
                    h.name,
                    sets.join(" ")
                );
                uncaught.push(h.name);
            }
        }
    }
    if uncaught.is_empty() {
        println!("holes: every re-introduced hole was caught");
        ExitCode::SUCCESS
    } else {
        println!("holes: not caught: {}", uncaught.join(", "));
        ExitCode::FAILURE
    }
}

#[cfg(not(feature = "reintroduce-holes"))]
fn hunt_holes() -> ExitCode {
    ExitCode::from(2)
}
