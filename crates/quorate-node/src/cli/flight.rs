//! `quorate replay FILE` and `quorate debug flight-dump`: the flight recorder's tools.

use super::ConnArgs;
use super::Outcome;
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use quorate_log::NodeId;
use quorate_node::flight;
use std::path::{Path, PathBuf};
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
    /// Ask a node to write its flight recording into its `<data_dir>/flight/` and print the
    /// file's path: `--node ID` asks over the client API (an admin request; the endpoints and
    /// certificates as for every command), `--data-dir DIR` through the data directory on this
    /// machine (the fallback when the client API cannot be used). `--out FILE` copies the
    /// recording (the node's file must be on this machine).
    FlightDump {
        /// The node to ask over the client API (its id in the endpoints).
        #[arg(long, conflicts_with = "data_dir", required_unless_present = "data_dir")]
        node: Option<u64>,
        /// The node's data directory (asks through a request file; needs file-system access).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Where to copy the recording.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Seconds to wait for a node asked through its data directory (it looks for requests
        /// twice a second).
        #[arg(long, default_value_t = 10)]
        wait: u64,
    },
}

pub(crate) fn replay(args: &ReplayArgs) -> anyhow::Result<Outcome> {
    let dump = flight::read_dump(&args.file)?;
    let h = &dump.header;
    let from = match &dump.origin {
        Some(flight::Origin::Checkpoint(c)) => format!("from a checkpoint after input {}", c.at),
        Some(flight::Origin::Start(_)) => "from process start (format 2)".to_string(),
        _ => "without a checkpoint".to_string(),
    };
    println!(
        "recording of node {} ({}): {} inputs {from}{}",
        h.node,
        h.reason,
        dump.inputs.len(),
        if h.note.is_empty() { String::new() } else { format!("; note: {}", h.note) }
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
            Ok(Outcome::Failed)
        }
    }
}

pub(crate) fn debug(conn: &ConnArgs, cmd: &DebugCmd) -> anyhow::Result<Outcome> {
    match cmd {
        DebugCmd::FlightDump { node, data_dir, out, wait } => {
            let (path, inputs) = match (node, data_dir) {
                (Some(id), _) => {
                    let id = NodeId::new(*id).context("--node: node ids start at 1")?;
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                    let client = conn.client()?;
                    let answer = rt.block_on(client.flight_dump(id));
                    client.close();
                    let (path, inputs) = answer.with_context(|| format!("node {id} could not dump its recording"))?;
                    (path, Some(inputs))
                }
                (None, Some(dir)) => (by_request_file(dir, *wait)?, None),
                (None, None) => bail!("pass --node ID (client API) or --data-dir DIR (request file)"),
            };
            let count = inputs.map_or_else(String::new, |n| format!(", {n} inputs"));
            match out {
                Some(out) => {
                    std::fs::copy(&path, out).with_context(|| format!("cannot copy {path} to {}", out.display()))?;
                    println!("flight recording written to {} (the node's copy: {path}{count})", out.display());
                }
                None => println!("flight recording written to {path}{count}"),
            }
            Ok(Outcome::Ok)
        }
    }
}

/// Asks through the data directory: writes the request file, waits for the answer file.
fn by_request_file(data_dir: &Path, wait: u64) -> anyhow::Result<String> {
    let dir = data_dir.join("flight");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let done = dir.join(format!("{}.done", flight::REQUEST_FILE));
    let _ = std::fs::remove_file(&done);
    let req = dir.join(flight::REQUEST_FILE);
    std::fs::write(&req, b"dump").with_context(|| format!("cannot write {}", req.display()))?;
    let deadline = Instant::now() + Duration::from_secs(wait);
    while !done.exists() {
        if Instant::now() >= deadline {
            let _ = std::fs::remove_file(&req);
            bail!("the node with data directory {} did not answer within {wait} s; is it running?", data_dir.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let answer = std::fs::read_to_string(&done).context("cannot read the node's answer")?;
    let _ = std::fs::remove_file(&done);
    if let Some(e) = answer.strip_prefix("error: ") {
        bail!("the node could not dump its recording: {e}");
    }
    Ok(answer)
}
