//! `quorate snapshot save FILE` (a snapshot streamed from the leader to the caller's disk) and
//! bounded-staleness reads (`--consistency stale --max-staleness-ms / --max-lag-entries`), on
//! real 3-node clusters of `quorate` processes on 127.0.0.1 (issues 21 and 22).

use serde_json::Value;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[path = "support/procs.rs"]
mod procs;
use procs::free_base_port;

#[path = "support/cluster.rs"]
mod cluster;
use cluster::{BIN, Cluster};

/// Certificates and configurations of a 3-node cluster "e2e" on `base..base+3`, with the
/// nodes' failpoints on (`limits.danger_failpoints`).
fn create(dir: PathBuf, base: u16) -> Cluster {
    let c = Cluster::create(dir, base);
    c.edit_configs(|_, config| {
        assert!(!config.limits.danger_failpoints, "certs dev writes failpoints off");
        config.limits.danger_failpoints = true;
    });
    c
}

impl Cluster {
    /// Writes node `id`'s failpoints file and waits until the node logs that it applied it.
    fn failpoints(&self, id: u64, text: &str) {
        let seen = self.log(id).matches("failpoints set").count();
        let data = self.data_dir(id);
        std::fs::write(data.join("failpoints.toml.tmp"), text).unwrap();
        std::fs::rename(data.join("failpoints.toml.tmp"), data.join("failpoints.toml")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.log(id).matches("failpoints set").count() <= seen {
            assert!(Instant::now() < deadline, "node {id} never applied its failpoints {text:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `count` values of `bytes` bytes each (`big/NNN`), written through `--value-file`.
    fn fill(&self, count: usize, bytes: usize) {
        let file = self.dir.join("value.bin");
        for i in 0..count {
            let value = value(i, bytes);
            std::fs::write(&file, value).unwrap();
            self.ok(&["kv", "put", &format!("big/{i:03}"), "--value-file", &file.to_string_lossy()]);
        }
    }
}

/// The value `fill` writes at `big/i` (printable, so `-o json` shows it as text).
fn value(i: usize, bytes: usize) -> Vec<u8> {
    (0..bytes).map(|j| b'a' + ((j.wrapping_mul(31) ^ i.wrapping_mul(7)) % 26) as u8).collect()
}

/// A `snapshot save FILE --progress` running in the background: its standard error, line by
/// line, on a channel.
struct Save {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Save {
    fn start(c: &Cluster, file: &Path) -> Save {
        let mut child = c
            .command(&["snapshot", "save", &file.to_string_lossy(), "--progress"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Save { child, lines, seen: Vec::new() }
    }

    /// Waits (bounded) for a progress line that shows bytes received of a known total.
    fn wait_for_bytes(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|e| panic!("no progress ({e}): {:?}", self.seen));
            let receiving =
                line.starts_with("progress: ") && !line.starts_with("progress: 0/") && line.contains(" bytes (");
            self.seen.push(line);
            if receiving {
                return;
            }
        }
    }

    /// Waits for the save to end; returns its exit status and all of standard error.
    fn finish(mut self) -> (std::process::ExitStatus, String) {
        let status = self.child.wait().unwrap();
        self.seen.extend(self.lines.iter());
        (status, self.seen.join("\n"))
    }
}

fn assert_no_file(file: &Path) {
    assert!(!file.exists(), "{} exists after a failed save", file.display());
    let mut part = file.as_os_str().to_owned();
    part.push(".part");
    assert!(!Path::new(&part).exists(), "{} was left behind", Path::new(&part).display());
}

/// A store of several MiB saved with progress into a file on this machine, checked by
/// `snapshot status`, restored into a NEW cluster that serves the same data.
/// Found by `cargo xtask upgrade-check` (step 12): the client fetches a window of four 512 KiB
/// chunks before it knows the image's size, and a node whose image was already written (a small
/// store) refused the fetches past its end (`offset 524288 is beyond the image's 159631
/// bytes`), so saving a small store failed. Three saves of a store of a few KiB must succeed.
#[test]
fn a_small_store_is_saved_whole_though_the_first_window_asks_past_its_end() {
    let tmp = tempfile::tempdir().unwrap();
    let c = create(tmp.path().join("small"), free_base_port());
    let _nodes = c.start();
    c.eventually(&["kv", "put", "k-0", "v-0"]);
    c.wait_cluster_version(2);
    for round in 0..3 {
        let file = tmp.path().join(format!("small-{round}.qsnap"));
        let out = c.cli(&["-o", "json", "snapshot", "save", &file.to_string_lossy()]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "save {round} of a small store failed: {stderr}");
        let saved: Value = serde_json::from_slice(&out.stdout).unwrap();
        let bytes = saved["file_bytes"].as_u64().unwrap();
        assert!(bytes > 0 && bytes < 512 * 1024, "smaller than one chunk: {saved}");
        assert_eq!(std::fs::metadata(&file).unwrap().len(), bytes);
        let status = c.ok(&["snapshot", "status", &file.to_string_lossy()]);
        assert!(!status.is_empty(), "snapshot status of save {round}");
    }
}

#[test]
fn a_streamed_save_of_several_mib_is_verified_and_restores_into_a_new_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let old = create(tmp.path().join("old"), free_base_port());
    let file = tmp.path().join("backup.qsnap");
    let saved = {
        let _nodes = old.start();
        old.eventually(&["kv", "put", "k-0", "v-0"]);
        old.wait_cluster_version(2);
        old.fill(24, 256 * 1024);
        old.ok(&["kv", "put", "last", "yes"]);
        // Asked of a follower only: the save comes from the leader all the same.
        let leader = old.leader();
        let follower = (1..=3).find(|&i| i != leader).unwrap();
        let out = old
            .command(&["-o", "json", "snapshot", "save", &file.to_string_lossy(), "--progress"])
            .env("QUORATE_ENDPOINTS", old.endpoint(follower))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "snapshot save failed: {stderr}");
        let saved: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(saved["node"].as_u64(), Some(leader), "streamed from the leader: {saved}");
        let bytes = saved["file_bytes"].as_u64().unwrap();
        assert!(bytes > 6 << 20, "several MiB: {saved}");
        assert_eq!(std::fs::metadata(&file).unwrap().len(), bytes);
        // Progress on standard error (asked with --progress: not a terminal here), ending at the total.
        let progress: Vec<&str> = stderr.lines().filter(|l| l.starts_with("progress: ")).collect();
        assert!(progress.len() >= 2, "{stderr}");
        assert!(
            progress.last().unwrap().starts_with(&format!("progress: {bytes}/{bytes} bytes (100%) from node {leader}")),
            "{stderr}"
        );
        let mut part = file.as_os_str().to_owned();
        part.push(".part");
        assert!(!Path::new(&part).exists(), "the temporary file was renamed");
        // No image is left on the leader once the stream ended.
        let images = old.data_dir(leader).join("backups").join("stream");
        let left = std::fs::read_dir(&images).map(|d| d.count()).unwrap_or(0);
        assert_eq!(left, 0, "images left in {}", images.display());
        saved
    };

    // `snapshot status` accepts the file, offline.
    let out = Command::new(BIN).args(["-o", "json", "snapshot", "status"]).arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["index"], saved["index"], "{st}");
    assert_eq!(st["hash"], saved["hash"], "{st}");
    assert_eq!(st["verified"], true);
    assert!(st["keys"].as_u64().unwrap() >= 26, "{st}");

    // Restored into a new cluster, which serves the same data.
    let new = create(tmp.path().join("new"), free_base_port());
    for id in 1..=3u64 {
        let out = Command::new(BIN)
            .args(["snapshot", "restore", "--from"])
            .arg(&file)
            .arg("--data-dir")
            .arg(new.data_dir(id))
            .args(["--id", &id.to_string(), "--peers", &new.peers()])
            .output()
            .unwrap();
        assert!(out.status.success(), "restore of node {id}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let _nodes = new.start();
    assert_eq!(new.eventually(&["kv", "get", "k-0"]), "v-0\n");
    assert_eq!(new.ok(&["kv", "get", "last"]), "yes\n");
    let got = new.json(&["kv", "get", "big/017"]);
    let expected = value(17, 256 * 1024);
    assert_eq!(got["value"].as_str().map(str::as_bytes), Some(&expected[..]), "the restored value is the saved one");
}

/// A save in progress whose leader is deposed (a leadership transfer mid-save) fails and
/// leaves no file at its name; a second save meanwhile is refused as busy; a save whose
/// stream is cut (the leader killed mid-save) leaves no file either.
#[test]
fn a_deposed_leader_or_a_cut_stream_leaves_no_file_and_a_second_save_is_busy() {
    let tmp = tempfile::tempdir().unwrap();
    let c = create(tmp.path().join("c"), free_base_port());
    let mut nodes = c.start();
    c.eventually(&["kv", "put", "k", "v"]);
    c.wait_cluster_version(2);
    c.fill(24, 256 * 1024);
    // Every chunk the nodes serve takes 1.5 s: the save takes several seconds.
    for id in 1..=3 {
        c.failpoints(id, "slow_read_ms = 1500\n");
    }

    let leader = c.leader();
    let file = tmp.path().join("deposed.qsnap");
    let mut save = Save::start(&c, &file);
    save.wait_for_bytes();
    // One save per node at a time.
    let busy_file = tmp.path().join("busy.qsnap");
    let out = c.cli(&["snapshot", "save", &busy_file.to_string_lossy()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("busy"), "a second save: {stderr}");
    assert_no_file(&busy_file);
    // Leadership moves away mid-save.
    let to = (1..=3).find(|&i| i != leader).unwrap();
    c.ok(&["leader", "transfer", "--to", &to.to_string()]);
    let (status, stderr) = save.finish();
    assert!(!status.success(), "a save whose leader was deposed must fail: {stderr}");
    assert!(stderr.contains("stopped being the leader"), "{stderr}");
    assert_no_file(&file);

    // The stream cut: the (new) leader killed mid-save.
    let leader = c.leader();
    let file = tmp.path().join("cut.qsnap");
    let mut save = Save::start(&c, &file);
    save.wait_for_bytes();
    let child = &mut nodes.0[leader as usize - 1];
    child.kill().unwrap();
    child.wait().unwrap();
    let (status, stderr) = save.finish();
    assert!(!status.success(), "a save whose stream was cut must fail: {stderr}");
    assert_no_file(&file);
}

/// Bounded-staleness reads: gated on cluster version 2 (refused before finalize, with the
/// gate's words); then served within the bound, and refused — retryable, exit 5 — by a
/// follower whose state machine lags (a slow apply) or that has not heard from a leader for
/// longer than the bound (its peers gone). A streamed save is gated the same way.
#[test]
fn bounded_staleness_reads_are_gated_served_within_the_bound_and_refused_on_a_lagging_follower() {
    let tmp = tempfile::tempdir().unwrap();
    let c = create(tmp.path().join("c"), free_base_port());
    // Empty store directories: no bootstrap marker, the cluster stays at version 1 (as an
    // upgraded cluster before `cluster finalize`).
    for id in 1..=3 {
        std::fs::create_dir_all(c.data_dir(id).join("store")).unwrap();
    }
    let mut nodes = c.start();
    c.eventually(&["kv", "put", "k", "v"]);
    assert!(c.ok(&["cluster", "status"]).contains("cluster version 1"));
    let out = c.cli(&stale_get(&["--max-staleness-ms", "5000"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("needs cluster version 2"), "the gate: {stderr}");
    let file = tmp.path().join("gated.qsnap");
    let out = c.cli(&["snapshot", "save", &file.to_string_lossy()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("needs cluster version 2"), "the gate: {stderr}");
    assert_no_file(&file);
    // The bound goes with a stale read only.
    let out = c.cli(&["kv", "get", "k", "--max-lag-entries", "3"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--consistency stale"));

    c.ok(&["cluster", "finalize"]);
    c.wait_cluster_version(2);
    let leader = c.leader();
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let only = c.endpoint(follower);
    // Served by the follower, within the bound.
    let j = c.json(&stale_get(&["--max-staleness-ms", "5000", "--max-lag-entries", "1000", "--endpoints", &only]));
    assert_eq!(j["value"], "v", "{j}");
    assert_eq!(j["read"]["node"].as_u64(), Some(follower), "{j}");

    // The follower's state machine lags: refused with a bound of 0 entries, while writes go on.
    c.failpoints(follower, "slow_apply_ms = 400\n");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    let refusal = loop {
        for _ in 0..5 {
            c.ok(&["kv", "put", &format!("w-{i}"), "x"]);
            i += 1;
        }
        let out = c.cli(&stale_get(&["--max-lag-entries", "0", "--endpoints", &only, "--timeout", "2"]));
        if !out.status.success() {
            break out;
        }
        assert!(Instant::now() < deadline, "a lagging follower kept serving with a bound of 0 entries");
    };
    let stderr = String::from_utf8_lossy(&refusal.stderr);
    assert_eq!(refusal.status.code(), Some(5), "retryable (unavailable): {stderr}");
    assert!(stderr.contains("replica too stale") && stderr.contains("committed entries"), "{stderr}");
    // Asked of the whole cluster, the refusal moves the client on to another member.
    let j = c.json(&stale_get(&["--max-lag-entries", "1000000"]));
    assert_eq!(j["value"], "v", "{j}");
    c.failpoints(follower, "");

    // The follower cut off from every leader: refused past the time bound, served within it.
    for id in (1..=3).filter(|&i| i != follower) {
        let child = &mut nodes.0[id as usize - 1];
        child.kill().unwrap();
        child.wait().unwrap();
    }
    // Served until a second has passed since it last heard from a leader, refused from then.
    let deadline = Instant::now() + Duration::from_secs(30);
    let out = loop {
        let out = c.cli(&stale_get(&["--max-staleness-ms", "1000", "--endpoints", &only, "--timeout", "2"]));
        if !out.status.success() {
            break out;
        }
        assert!(Instant::now() < deadline, "a follower cut off from every leader kept serving with a 1 s bound");
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("last heard from a leader"), "{stderr}");
    let out = c.cli(&stale_get(&["--max-staleness-ms", "600000", "--endpoints", &only]));
    assert!(out.status.success(), "within the bound: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, b"v\n");
}

/// `kv get k --consistency stale` followed by `extra` (bounds, endpoints, timeout).
fn stale_get<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["kv", "get", "k", "--consistency", "stale"];
    args.extend_from_slice(extra);
    args
}
