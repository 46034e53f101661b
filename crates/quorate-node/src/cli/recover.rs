//! `quorate node force-new-cluster`: the unsafe, offline recovery after losing quorum.

use super::Outcome;
use super::output::{Format, print_json, usage};
use anyhow::Context;
use clap::Args;
use quorate_node::recover;
use std::path::PathBuf;

/// `quorate node force-new-cluster --data-dir DIR --id N [--dry-run | --i-have-lost-quorum]`
#[derive(Debug, Args)]
pub(crate) struct ForceArgs {
    /// The stopped node's data directory (its `data_dir`).
    #[arg(long)]
    pub(crate) data_dir: PathBuf,
    /// The node's id.
    #[arg(long)]
    pub(crate) id: u64,
    /// Print what would be done (the node's last index, commit, term and configuration) and
    /// change nothing: run it on every survivor and force the one with the highest last term, then
    /// the highest last index.
    #[arg(long, conflicts_with = "i_have_lost_quorum")]
    pub(crate) dry_run: bool,
    /// Required to change anything: a majority of the voters is permanently lost, and every
    /// lost member's data is gone or its certificate revoked.
    #[arg(long)]
    pub(crate) i_have_lost_quorum: bool,
}

pub(crate) fn force_new_cluster(args: &ForceArgs, format: Format) -> anyhow::Result<Outcome> {
    if !args.dry_run && !args.i_have_lost_quorum {
        return Err(usage(
            "force-new-cluster can lose acknowledged writes and commit unacknowledged ones; pass --dry-run to see \
             what it would do, or --i-have-lost-quorum to do it",
        ));
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let f = recover::force_new_cluster(&args.data_dir, args.id, args.dry_run, now)
        .with_context(|| format!("force-new-cluster of node {} in {} refused", args.id, args.data_dir.display()))?;
    if format == Format::Json {
        print_json(&serde_json::to_value(&f)?)?;
        return Ok(Outcome::Ok);
    }
    let verb = if f.dry_run { "would make" } else { "made" };
    println!(
        "{verb} node {} the only voter (was voters {:?}, learners {:?}, term {}): its log up to index {} (last term \
         {}; commit was {}) becomes committed; configuration entry at index {} in term {}.",
        f.node,
        f.old_voters,
        f.old_learners,
        f.old_term,
        f.last_index,
        f.last_term,
        f.commit,
        f.config_index,
        f.new_term
    );
    if !f.dry_run {
        println!(
            "Start the node, check its data, then add new members with `quorate member add`. Never start a lost \
             member again on its old data."
        );
    }
    Ok(Outcome::Ok)
}
