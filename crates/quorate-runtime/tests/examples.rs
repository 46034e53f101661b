//! Runs the examples — each starts three node processes over QUIC + mTLS with RocksDB storage
//! from one command — and checks what they print: `counter` (ten acknowledged increments, the
//! same counter read linearizably from every node) and `lock` (fencing tokens increase, a
//! stale token is refused).

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The example binaries next to the test binaries' `deps` (`cargo xtask ci` builds them first).
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps/<test>");
    profile_dir.join("examples").join(name)
}

/// Runs an example to completion (at most 120 s) and returns its standard output.
fn run(name: &str) -> String {
    let path = example(name);
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build --profile ci -p quorate-node -p quorate-runtime --features quorate-runtime/rocksdb,quorate-runtime/quic --example {name}`",
        path.display()
    );
    let mut child = Command::new(&path).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waitable") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the {name} example did not finish within 120 s");
        }
        // Polling a child process: there is no event to wait on without a runtime.
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    child.stdout.take().expect("piped").read_to_string(&mut out).expect("utf-8");
    assert!(status.success(), "{status}\n{out}");
    out
}

#[test]
fn the_counter_example_runs_three_processes_and_agrees() {
    let out = run("counter");
    let increments: Vec<u64> = out
        .lines()
        .filter_map(|l| l.strip_prefix("increment "))
        .filter_map(|l| l.split(" -> ").nth(1)?.split(' ').next()?.parse().ok())
        .collect();
    assert_eq!(increments.len(), 10, "{out}");
    assert!(increments.windows(2).all(|w| w[0] < w[1]), "each increment sees the ones before: {out}");
    let finals: Vec<u64> = (1..=3)
        .map(|i| {
            let line = out.lines().find_map(|l| l.strip_prefix(&format!("node {i}: counter = "))).expect("reported");
            line.parse().expect("a number")
        })
        .collect();
    let last = *increments.last().expect("ten");
    assert_eq!(finals, vec![last; 3], "every node reads the last acknowledged value: {out}");
}

#[test]
fn the_lock_example_grants_increasing_fencing_tokens() {
    let out = run("lock");
    let token = |who: &str| -> u64 {
        let line = out.lines().find_map(|l| l.strip_prefix(&format!("{who}: acquired db, token "))).expect("granted");
        line.parse().expect("a number")
    };
    assert!(token("alice") < token("bob"), "{out}");
    assert!(out.contains("bob: db is held by alice"), "{out}");
    assert!(out.contains(&format!("write by alice with token {} refused (stale token)", token("alice"))), "{out}");
}
