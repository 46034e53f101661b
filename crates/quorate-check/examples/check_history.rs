//! Checks a JSON-lines client history (docs/history-format.md) for linearizability.
//!
//! `cargo run -p quorate-check --example check_history -- history.jsonl`

use quorate_check::history::read_jsonl;
use quorate_check::linearizability::{Limits, check};
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: check_history FILE.jsonl");
        return ExitCode::from(2);
    };
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("cannot open {path}: {e}");
            return ExitCode::from(2);
        }
    };
    let history = match read_jsonl(std::io::BufReader::new(file)) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("{path}: {e}");
            return ExitCode::from(2);
        }
    };
    let result = check(&history, &Limits::default());
    println!("{result}");
    if result.is_linearizable() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
