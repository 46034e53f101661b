//! The `quorate` binary: runs a node (`quorate node start`) and talks to a cluster (`kv`,
//! `cluster`, `member`, `leader`, `snapshot`, `certs`, `bench`). `quorate --help` lists it all.
//!
//! Exit codes: 0 success, 1 failure (the message says which node, what happened and what to
//! do), 2 usage error.

mod cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // clap prints usage errors itself and exits with 2 (0 for --help and --version).
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(cli::Outcome::Ok) => ExitCode::SUCCESS,
        Ok(cli::Outcome::No) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
