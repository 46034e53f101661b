//! `quorate-sim`: runs simulation seeds and ends with one summary line.
//!
//! `quorate-sim --seeds N [--first S]` runs seeds S..S+N; `--seed S` replays one seed;
//! `--steps K` bounds the events per seed; `--verbose` narrates; `--history FILE` writes the
//! client history of a single seed as JSON lines.

use quorate_check::history::write_jsonl;
use quorate_check::sim::run_seed;
use std::process::ExitCode;
use std::time::Instant;

struct Args {
    seeds: u64,
    first: u64,
    steps: u64,
    verbose: bool,
    history: Option<String>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args { seeds: 100, first: 0, steps: 200_000, verbose: false, history: None };
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
            "-h" | "--help" => {
                return Err(
                    "usage: quorate-sim [--seeds N] [--first S | --seed S] [--steps K] [--verbose] [--history FILE]"
                        .into(),
                );
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if a.seeds == 0 || a.steps == 0 {
        return Err("--seeds and --steps must be positive".into());
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let (mut steps, mut violations, mut ops, mut crashes, mut partitions, mut committed, mut lease) =
        (0, 0, 0, 0, 0, 0, 0);
    let (mut conf_changes, mut refusals, mut snapshots, mut installs) = (0, 0, 0, 0);
    let mut failed = Vec::new();
    for seed in args.first..args.first + args.seeds {
        let r = run_seed(seed, args.steps, args.verbose);
        steps += r.steps;
        ops += r.ops;
        crashes += r.crashes;
        partitions += r.partitions;
        committed += r.committed;
        lease += r.lease_reads;
        conf_changes += r.conf_changes;
        refusals += r.conf_refusals;
        snapshots += r.snapshots;
        installs += r.installs;
        if args.verbose || args.seeds == 1 {
            println!(
                "seed {seed}: {} steps, {:.1} s simulated, {} committed, {} leaders, {} ops ({} ok), {} crashes, {} partitions, {} config changes, {} snapshots, {} installs",
                r.steps,
                r.sim_time_ns as f64 / 1e9,
                r.committed,
                r.leaders,
                r.ops,
                r.ops_ok,
                r.crashes,
                r.partitions,
                r.conf_changes,
                r.snapshots,
                r.installs
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
        if !r.violations.is_empty() {
            violations += r.violations.len();
            for v in &r.violations {
                eprintln!("seed {seed}: VIOLATION {v}");
            }
            eprintln!("replay: cargo xtask sim --seed {seed} --steps {} --verbose", args.steps);
            failed.push(seed);
        }
    }
    println!(
        "sim: seeds {}, steps {steps}, violations {violations} ({} entries committed, {ops} client ops, {lease} lease reads, {crashes} crashes, {partitions} partitions, {conf_changes} config changes ({refusals} refused), {snapshots} snapshots, {installs} installs, {:.1} s)",
        args.seeds,
        committed,
        started.elapsed().as_secs_f64()
    );
    // A run that exercised no membership change, snapshot or install proved nothing about them.
    if args.seeds >= 20 && (conf_changes == 0 || snapshots == 0 || installs == 0) {
        eprintln!("sim: the run exercised no configuration change, snapshot or install: a failed run");
        return ExitCode::FAILURE;
    }
    if args.seeds == 1 && failed.is_empty() {
        println!(
            "verdict: election safety, log matching, leader completeness, state-machine safety, durability, linearizability and recovery after healing all held"
        );
    }
    if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
