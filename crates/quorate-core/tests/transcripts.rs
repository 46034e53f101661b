//! Transcript tests (after etcd-io/raft's `testdata/*.txt`): each file in `testdata/` is a
//! scenario of commands driving a few cores over a manual in-memory network, each command
//! followed by the output it is expected to produce. See `transcript/mod.rs` for the format
//! and `transcript/env.rs` for the commands.
//!
//! `REWRITE=1 cargo test -p quorate-core --test transcripts` regenerates the expected output in
//! place; review the diff before committing it.

mod transcript;

use std::path::{Path, PathBuf};

#[test]
fn transcripts() {
    let dir = Path::new(&*std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()))
        .join("testdata");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no transcript files (*.txt) in {}", dir.display());
    let rewrite = std::env::var_os("REWRITE").is_some_and(|v| v == "1");
    let failures: Vec<String> = files.iter().filter_map(|f| transcript::run_file(f, rewrite).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} transcripts failed (REWRITE=1 regenerates them; review the diff):\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
}
