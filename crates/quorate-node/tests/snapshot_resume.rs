//! A follower's snapshot transfer cut mid-way resumes from what it staged: real `quorate`
//! processes on 127.0.0.1. A follower is stopped while the leader writes ~5 MiB and compacts
//! its log past it; restarted, it needs the leader's snapshot, which the leader sends as a
//! resumable transfer at 1 MiB/s. Once the follower has staged at least two pieces it is
//! killed (SIGKILL), then started again: it finds its staging, the transfer goes on from the
//! staged length (the follower says so in its log and counts it in
//! `quorate_snapshot_transfers_resumed_total`), and the follower ends with the leader's data.

use quorate_telemetry::http::get_blocking;
use quorate_telemetry::names as n;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

#[path = "support/procs.rs"]
mod procs;
use procs::{Nodes, free_base_port};

const BIN: &str = env!("CARGO_BIN_EXE_quorate");
/// Large values written while the follower is down (each under the CLI's 1 MiB).
const BIG_VALUES: usize = 6;
const BIG_VALUE_BYTES: usize = 900 * 1024;

struct Env {
    dir: PathBuf,
    base: u16,
    metrics: Vec<SocketAddr>,
}

impl Env {
    fn endpoints(&self, ids: &[u16]) -> String {
        ids.iter().map(|i| format!("{i}=127.0.0.1:{}", self.base + i - 1)).collect::<Vec<_>>().join(",")
    }

    fn cli_at(&self, ids: &[u16], args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("QUORATE_CERTS", self.dir.join("certs"))
            .env("QUORATE_CLUSTER", "resume")
            .env("QUORATE_ENDPOINTS", self.endpoints(ids))
            .env("QUORATE_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .expect("run the cli")
    }

    fn start(&self, id: u16) -> Child {
        let log = std::fs::File::options().create(true).append(true).open(self.log(id)).expect("log file");
        Command::new(BIN)
            .args(["node", "start", "--config"])
            .arg(self.dir.join(format!("node-{id}.toml")))
            .env("QUORATE_METRICS_LISTEN", self.metrics[usize::from(id - 1)].to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn node")
    }

    fn log(&self, id: u16) -> PathBuf {
        self.dir.join(format!("node-{id}.log"))
    }

    /// The value of the unlabelled series `name` on node `id`, if it answers.
    fn metric(&self, id: u16, name: &str) -> Option<f64> {
        let (code, body) =
            get_blocking(self.metrics[usize::from(id - 1)], "/metrics", Duration::from_secs(5), 4 << 20).ok()?;
        if code != 200 {
            return None;
        }
        body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    fn role_is_leader(&self, id: u16) -> bool {
        self.metric(id, &format!("{}{{role=\"leader\"}}", n::ROLE)) == Some(1.0)
    }
}

fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A printable value of `len` bytes from `seed` (xorshift; the same on every run).
fn value(seed: u64, len: usize) -> String {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            char::from(b'a' + (s % 26) as u8)
        })
        .collect()
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn log_has(path: &Path, needle: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t.contains(needle))
}

#[test]
fn a_follower_killed_mid_transfer_resumes_from_its_staging() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let base = free_base_port();
    let env = Env {
        dir: dir.clone(),
        base,
        metrics: (0..3).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr")).collect(),
    };
    let out = Command::new(BIN)
        .args(["certs", "dev", "--dir"])
        .arg(&dir)
        .args(["--cluster", "resume", "--nodes", "3", "--base-port", &base.to_string()])
        .output()
        .expect("certs dev");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for id in 1..=3 {
        let path = dir.join(format!("node-{id}.toml"));
        let text = std::fs::read_to_string(&path).expect("config");
        let mut edited = text.clone();
        for (from, to) in [
            ("snapshot_entries = 100000", "snapshot_entries = 8"),
            ("compaction_tail_entries = 10000", "compaction_tail_entries = 2"),
            ("snapshot_rate_mb_per_sec = 64", "snapshot_rate_mb_per_sec = 1"),
        ] {
            assert!(edited.contains(from), "{from} in {text}");
            edited = edited.replace(from, to);
        }
        std::fs::write(&path, edited).expect("config");
    }
    let mut nodes = Nodes((1..=3).map(|id| env.start(id)).collect());
    let all = [1, 2, 3];

    // A leader, at cluster version 2 (a new cluster raises it on its own).
    eventually(Duration::from_secs(30), "a first write", || {
        env.cli_at(&all, &["kv", "put", "k-0", "v"]).status.success().then_some(())
    });
    let leader = eventually(Duration::from_secs(30), "a leader at cluster version 2", || {
        all.into_iter().find(|&id| env.role_is_leader(id) && env.metric(id, n::CLUSTER_VERSION) == Some(2.0))
    });
    let follower = all.into_iter().find(|&id| id != leader).expect("a follower");
    let others: Vec<u16> = all.into_iter().filter(|&id| id != follower).collect();

    // The follower stops; the others write ~5 MiB and compact past it.
    kill(&mut nodes.0[usize::from(follower - 1)]);
    let values: Vec<String> = (0..BIG_VALUES).map(|i| value(i as u64 + 1, BIG_VALUE_BYTES)).collect();
    for (i, v) in values.iter().enumerate() {
        let file = dir.join(format!("value-{i}"));
        std::fs::write(&file, v).expect("value file");
        let f = file.to_string_lossy().into_owned();
        let out = env.cli_at(&others, &["kv", "put", &format!("big-{i}"), "--value-file", &f]);
        assert!(out.status.success(), "put big-{i}: {}", String::from_utf8_lossy(&out.stderr));
    }
    for i in 0..20 {
        let out = env.cli_at(&others, &["kv", "put", &format!("small-{i}"), &i.to_string()]);
        assert!(out.status.success(), "put small-{i}: {}", String::from_utf8_lossy(&out.stderr));
    }
    eventually(Duration::from_secs(30), "the leader's snapshot past the writes", || {
        (env.metric(leader, n::SNAPSHOT_INDEX)? >= 20.0).then_some(())
    });

    // Restarted, the follower needs the snapshot: killed again once it staged two pieces.
    nodes.0[usize::from(follower - 1)] = env.start(follower);
    let staged = eventually(Duration::from_secs(60), "two pieces staged on the follower", || {
        env.metric(follower, n::SNAPSHOT_PIECES_STAGED_TOTAL).filter(|v| *v >= 2.0)
    });
    kill(&mut nodes.0[usize::from(follower - 1)]);
    assert!(
        !log_has(&env.log(follower), "installing snapshot"),
        "the follower installed the snapshot before it was killed ({staged} pieces staged): the cut is not mid-way"
    );

    // Started again, it goes on from its staging and ends with the leader's data.
    nodes.0[usize::from(follower - 1)] = env.start(follower);
    let stale = |key: &str| {
        let out = env.cli_at(&[follower], &["kv", "get", key, "--consistency", "stale"]);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    };
    eventually(Duration::from_secs(90), "the follower serving the last write", || {
        (stale("small-19")? == "19").then_some(())
    });
    for (i, v) in values.iter().enumerate() {
        assert_eq!(stale(&format!("big-{i}")).as_deref(), Some(v.as_str()), "big-{i} on the follower");
    }
    assert!(
        log_has(&env.log(follower), "snapshot transfer resumed from the staging kept across a restart"),
        "the follower did not resume its staging"
    );
    assert!(env.metric(follower, n::SNAPSHOT_TRANSFERS_RESUMED_TOTAL).is_some_and(|v| v >= 1.0));
    assert!(env.metric(leader, n::SNAPSHOT_TRANSFERS_STARTED_TOTAL).is_some_and(|v| v >= 1.0));
    drop(nodes);
}
