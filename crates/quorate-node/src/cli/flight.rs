//! `quorate replay FILE` and `quorate debug flight-dump`: the flight recorder's tools.

use super::Outcome;
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use quorate_node::flight;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `quorate replay FILE`
#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    /// A flight recording (`flight-*.qflt` in a node's `<data_dir>/flight/`).
    pub(crate) file: PathBuf,
}

/// `quorate debug ...`
#[derive(Debug, Subcommand)]
pub(crate) enum DebugCmd {
    /// Ask a running node on this machine to dump its flight recording, and copy it to OUT.
    /// (The request goes through the node's data directory: whoever may write there may ask.)
    FlightDump {
        /// The node's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Where to write the recording.
        #[arg(long)]
        out: PathBuf,
        /// Seconds to wait for the node (it looks for requests twice a second).
        #[arg(long, default_value_t = 10)]
        wait: u64,
    },
}

pub(crate) fn replay(args: &ReplayArgs) -> anyhow::Result<Outcome> {
    let dump = flight::read_dump(&args.file)?;
    let h = &dump.header;
    println!(
        "recording of node {} ({}): {} inputs{}",
        h.node,
        h.reason,
        dump.inputs.len(),
        if h.dropped > 0 { format!(", {} later inputs not kept (buffer full)", h.dropped) } else { String::new() }
    );
    let report = flight::replay(&dump)?;
    match report.divergence {
        None => {
            println!(
                "replayed {} inputs through a fresh core: all {} outputs match ({} Ready)",
                report.inputs, report.compared, report.readies
            );
            Ok(Outcome::Ok)
        }
        Some(d) => {
            println!(
                "DIVERGED at input #{} ({}): recorded output digest {:08x}, replayed {:08x}; {} inputs replayed before it",
                d.at, d.kind, d.recorded, d.replayed, report.inputs
            );
            Ok(Outcome::No)
        }
    }
}

pub(crate) fn debug(cmd: &DebugCmd) -> anyhow::Result<Outcome> {
    match cmd {
        DebugCmd::FlightDump { data_dir, out, wait } => {
            let dir = data_dir.join("flight");
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let done = dir.join(format!("{}.done", flight::REQUEST_FILE));
            let _ = std::fs::remove_file(&done);
            let req = dir.join(flight::REQUEST_FILE);
            std::fs::write(&req, b"dump").with_context(|| format!("cannot write {}", req.display()))?;
            let deadline = Instant::now() + Duration::from_secs(*wait);
            while !done.exists() {
                if Instant::now() >= deadline {
                    let _ = std::fs::remove_file(&req);
                    bail!(
                        "the node with data directory {} did not answer within {wait} s; is it running?",
                        data_dir.display()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let answer = std::fs::read_to_string(&done).context("cannot read the node's answer")?;
            let _ = std::fs::remove_file(&done);
            if let Some(e) = answer.strip_prefix("error: ") {
                bail!("the node could not dump its recording: {e}");
            }
            std::fs::copy(&answer, out).with_context(|| format!("cannot copy {answer} to {}", out.display()))?;
            println!("flight recording written to {} (the node's copy: {answer})", out.display());
            Ok(Outcome::Ok)
        }
    }
}
