//! `quorate-model`: exhaustive model checking of the real consensus core at small bounds.
//!
//! `quorate-model [--quick | --quick-reconfig | --quick-learner | --quick-lease | --full] [--nodes N]
//! [--learners N] [--terms T] [--proposals K] [--crashes C] [--losses L] [--dups L] [--conf-changes C] [--reads R]
//! [--lease] [--depth D] [--max-states M] [--no-pre-vote] [--no-check-quorum] [--bug ack-before-persist|local-reads]
//! [--no-durability-check] [--hold-unpersisted-term] [--per-depth] [--hole NAME]` explores every
//! interleaving within the bounds and ends with one summary line:
//! `model-check: states N (distinct M), depth D, time T s, result: ok|VIOLATION ...`.
//! On a violation it first prints the action trace that reaches it. Exits 1 on a violation.
//! `--hole NAME` (a build with the feature `reintroduce-holes` only) switches one of issue
//! 16's holes back on in every core, as `quorate-sim --hole` does.

use quorate_check::model::{ModelBug, ModelConfig, check};
use std::process::ExitCode;

const USAGE: &str = "usage: quorate-model [--quick | --quick-reconfig | --quick-learner | --quick-lease | --full] \
[--nodes N] [--learners N] [--terms T] [--proposals K] [--crashes C] [--losses L] [--dups L] [--conf-changes C] [--reads R] \
[--lease] [--depth D] [--max-states M] [--no-pre-vote] [--no-check-quorum] [--bug ack-before-persist|local-reads] \
[--no-durability-check] [--hold-unpersisted-term] [--per-depth] [--hole NAME]";

fn parse() -> Result<(ModelConfig, bool), String> {
    let mut cfg = ModelConfig::full();
    let mut per_depth = false;
    let mut hole = None;
    let mut it = std::env::args().skip(1);
    let num = |v: Option<String>, name: &str| -> Result<u64, String> {
        let v = v.ok_or_else(|| format!("{name} needs a value"))?;
        v.parse().map_err(|_| format!("{name} takes a whole number, got `{v}`"))
    };
    let small = |v: u64, name: &str| u32::try_from(v).map_err(|_| format!("{name} is too large"));
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => cfg = ModelConfig { bug: cfg.bug, ..ModelConfig::quick() },
            "--full" => cfg = ModelConfig { bug: cfg.bug, ..ModelConfig::full() },
            "--quick-reconfig" => cfg = ModelConfig { bug: cfg.bug, ..ModelConfig::quick_reconfig() },
            "--quick-learner" => cfg = ModelConfig { bug: cfg.bug, ..ModelConfig::quick_learner() },
            "--quick-lease" => cfg = ModelConfig { bug: cfg.bug, ..ModelConfig::quick_lease() },
            "--nodes" => cfg.nodes = num(it.next(), "--nodes")? as usize,
            "--learners" => cfg.learners = num(it.next(), "--learners")? as usize,
            "--reads" => cfg.reads = small(num(it.next(), "--reads")?, "--reads")?,
            "--lease" => {
                cfg.lease_reads = true;
                cfg.check_quorum = true;
            }
            "--hold-unpersisted-term" => cfg.hold_unpersisted_term = true,
            "--terms" => cfg.terms = num(it.next(), "--terms")?,
            "--proposals" => cfg.proposals = small(num(it.next(), "--proposals")?, "--proposals")?,
            "--crashes" => cfg.crashes = small(num(it.next(), "--crashes")?, "--crashes")?,
            "--losses" => {
                cfg.losses = small(num(it.next(), "--losses")?, "--losses")?;
                cfg.duplicates = cfg.losses;
            }
            "--dups" => cfg.duplicates = small(num(it.next(), "--dups")?, "--dups")?,
            "--conf-changes" => cfg.conf_changes = small(num(it.next(), "--conf-changes")?, "--conf-changes")?,
            "--depth" => cfg.depth = small(num(it.next(), "--depth")?, "--depth")?,
            "--max-states" => cfg.max_states = num(it.next(), "--max-states")?,
            "--no-pre-vote" => cfg.pre_vote = false,
            "--no-check-quorum" => cfg.check_quorum = false,
            "--no-durability-check" => cfg.check_durability = false,
            "--bug" => match it.next().as_deref() {
                Some("ack-before-persist") => cfg.bug = Some(ModelBug::AckBeforePersist),
                Some("local-reads") => cfg.bug = Some(ModelBug::LocalReads),
                other => return Err(format!("unknown bug {other:?}; known: ack-before-persist, local-reads")),
            },
            "--per-depth" => per_depth = true,
            "--hole" => hole = Some(it.next().ok_or("--hole needs a name")?),
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    if !(1..=7).contains(&cfg.nodes) || cfg.terms == 0 || cfg.depth == 0 || cfg.max_states == 0 {
        return Err("--nodes must be 1..=7; --terms, --depth and --max-states must be positive".into());
    }
    if cfg.learners >= cfg.nodes {
        return Err("--learners must leave at least one voter".into());
    }
    if cfg.lease_reads && !cfg.check_quorum {
        return Err("--lease needs check-quorum".into());
    }
    if let Some(name) = hole {
        cfg.core_hook = Some(hole_hook(&name)?);
    }
    Ok((cfg, per_depth))
}

fn main() -> ExitCode {
    let (cfg, per_depth) = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    println!(
        "model: {} nodes ({} learners), terms <= {}, proposals <= {}, crashes <= {}, losses <= {}, duplicates <= {}, \
         config changes <= {}, reads <= {}{}, depth <= {}, states <= {}, pre-vote {}, check-quorum {}{}{}{}",
        cfg.nodes,
        cfg.learners,
        cfg.terms,
        cfg.proposals,
        cfg.crashes,
        cfg.losses,
        cfg.duplicates,
        cfg.conf_changes,
        cfg.reads,
        if cfg.lease_reads { " (lease)" } else { "" },
        cfg.depth,
        cfg.max_states,
        cfg.pre_vote,
        cfg.check_quorum,
        if cfg.hold_unpersisted_term { ", driver holds messages until their term is durable" } else { "" },
        if cfg.core_hook.is_some() { ", a hole of issue 16 switched back on" } else { "" },
        cfg.bug.map_or_else(String::new, |b| format!(", injected bug {b:?}"))
    );
    let out = check(&cfg);
    if per_depth {
        for (d, n) in out.per_depth.iter().enumerate() {
            println!("depth {d:>3}: {n} new states");
        }
    }
    println!(
        "coverage: highest index committed {}, most terms with a leader {}, most reads confirmed on a path {}, states with a joint configuration {}, states after a removal {}, states pruned by the term bound {}",
        out.max_committed,
        out.max_leader_terms,
        out.reads_confirmed,
        out.joint_states,
        out.reconfigured_states,
        out.term_pruned
    );
    if let Some(c) = &out.counterexample {
        println!("counterexample ({} actions):", c.trace.len());
        for line in &c.narrative {
            println!("{line}");
        }
        println!("failure: {}", c.failure);
    }
    println!("{out}");
    if out.counterexample.is_some() { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// The core hook that switches the hole named `name` back on.
#[cfg(feature = "reintroduce-holes")]
fn hole_hook(name: &str) -> Result<quorate_check::sim::CoreHook, String> {
    let names: Vec<&str> = quorate_check::holes::hunts().iter().map(|h| h.name).collect();
    quorate_check::holes::by_name(name)
        .map(|h| quorate_check::holes::hook(h.hole))
        .ok_or_else(|| format!("unknown hole `{name}`; known: {}", names.join(", ")))
}

#[cfg(not(feature = "reintroduce-holes"))]
fn hole_hook(_: &str) -> Result<quorate_check::sim::CoreHook, String> {
    Err("--hole needs a build with the feature `reintroduce-holes` (`cargo xtask model-check --hole NAME ...`)".into())
}
