//! The `quorate` binary: runs a node (`quorate node start`) and talks to a cluster (`kv`,
//! `cluster`, `member`, `leader`, `snapshot`, `certs`, `bench`). `quorate --help` lists it all.
//!
//! Exit codes (docs/operations.md): 0 success, 1 failure (the message says which node, what
//! happened and what to do), 2 usage error, 3 key not found, 4 comparison false (`kv cas`,
//! `kv txn`), 5 cluster unavailable, 6 refused (role, invalid request), 7 outcome unknown.

mod cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // clap prints usage errors itself and exits with 2 (0 for --help and --version).
    let args = cli::Cli::parse();
    let exit = match cli::run(args) {
        Ok(outcome) => outcome.code(),
        Err(e) => {
            eprintln!("error: {e:#}");
            cli::output::exit_of(&e).code()
        }
    };
    ExitCode::from(exit)
}
