//! `quorate snapshot restore`: an offline restore into a new cluster member's data directory.

use super::Outcome;
use super::output::{Format, print_json, usage};
use anyhow::Context;
use clap::Args;
use quorate_node::restore;
use serde_json::json;
use std::path::PathBuf;

/// `quorate snapshot restore --from FILE --data-dir DIR --id N --peers 1=host:port,...`
#[derive(Debug, Args)]
pub(crate) struct RestoreArgs {
    /// The snapshot file written by `quorate snapshot save`.
    #[arg(long)]
    pub(crate) from: PathBuf,
    /// The data directory to create (missing or empty); the node's `data_dir`.
    #[arg(long)]
    pub(crate) data_dir: PathBuf,
    /// This member's node id.
    #[arg(long)]
    pub(crate) id: u64,
    /// Every member of the new cluster: `1=127.0.0.1:7001,2=127.0.0.1:7002,...` (the same list
    /// for every member, and the `peers` of their configurations).
    #[arg(long)]
    pub(crate) peers: String,
}

pub(crate) fn restore(args: &RestoreArgs, format: Format) -> anyhow::Result<Outcome> {
    let peers = restore::parse_peers(&args.peers).map_err(|e| usage(format!("--peers: {e:#}")))?;
    let done = restore::restore(&args.from, &args.data_dir, args.id, &peers)
        .with_context(|| format!("restore of node {} into {} failed", args.id, args.data_dir.display()))?;
    if format == Format::Json {
        print_json(&json!({
            "node": args.id,
            "data_dir": args.data_dir.display().to_string(),
            "index": done.last.index.0,
            "term": done.last.term.0,
            "records": done.records,
            "members": done.members,
        }))?;
        return Ok(Outcome::Ok);
    }
    println!(
        "restored node {} into {}: snapshot at index {} (term {}), {} records; members {:?}. Start every member \
         with these peers.",
        args.id,
        args.data_dir.display(),
        done.last.index,
        done.last.term,
        done.records,
        done.members
    );
    Ok(Outcome::Ok)
}
