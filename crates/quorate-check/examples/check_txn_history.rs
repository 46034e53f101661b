//! Checks a JSON-lines transaction (list-append) history (docs/history-format.md, "Transaction
//! histories"; `txn-history.jsonl` of a chaos run) for strict serializability.
//!
//! `cargo run -p quorate-check --example check_txn_history -- txn-history.jsonl`

use quorate_check::txn::{TXNS_MAX, check, read_jsonl};
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: check_txn_history FILE.jsonl");
        return ExitCode::from(2);
    };
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("cannot open {path}: {e}");
            return ExitCode::from(2);
        }
    };
    let history = match read_jsonl(std::io::BufReader::new(file), TXNS_MAX) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("{path}: {e}");
            return ExitCode::from(2);
        }
    };
    let report = check(&history);
    println!("{}", report.summary());
    for a in &report.anomalies {
        println!("\n{a}");
        if !a.detail.is_empty() {
            println!("{}", a.detail);
        }
    }
    if report.pass() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
