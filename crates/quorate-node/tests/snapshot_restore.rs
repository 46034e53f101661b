//! `quorate snapshot save` on a running 3-node cluster, then `quorate snapshot restore` into
//! three new data directories of a NEW cluster (new certificates, new ports): the new cluster
//! starts from the snapshot, serves the old keys and takes new writes. A damaged file is
//! refused with a clear error and leaves nothing behind. Real `quorate` processes on
//! 127.0.0.1.

use std::path::Path;
use std::process::{Command, Output};

#[path = "support/procs.rs"]
mod procs;
use procs::{Nodes, free_base_port};

#[path = "support/cluster.rs"]
mod cluster;
use cluster::{BIN, Cluster};

const KEYS: usize = 20;

fn force(data_dir: &Path, flag: &str) -> Output {
    Command::new(BIN)
        .args(["node", "force-new-cluster", "--id", "1", "--data-dir"])
        .arg(data_dir)
        .args([flag].into_iter().filter(|f| !f.is_empty()))
        .output()
        .unwrap()
}

fn restore(file: &Path, data_dir: &Path, id: u64, peers: &str) -> Output {
    Command::new(BIN)
        .args(["snapshot", "restore", "--from"])
        .arg(file)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--id", &id.to_string(), "--peers", peers])
        .output()
        .unwrap()
}

#[test]
fn save_then_restore_into_a_new_three_node_cluster() {
    let tmp = tempfile::tempdir().unwrap();

    // The old cluster: some keys, then a backup.
    let old = Cluster::create(tmp.path().join("old"), free_base_port());
    let backup = {
        let _nodes = old.start();
        old.eventually(&["kv", "put", "k-0", "v-0"]);
        for i in 1..KEYS {
            old.ok(&["kv", "put", &format!("k-{i}"), &format!("v-{i}")]);
        }
        old.ok(&["kv", "del", "k-0"]);
        let saved = old.ok(&["snapshot", "save"]);
        // "snapshot at index N written to PATH on node X"
        let path = saved.split(" written to ").nth(1).and_then(|r| r.split(" on ").next()).expect(&saved);
        let copy = tmp.path().join("backup.qsnap");
        std::fs::copy(path.trim(), &copy).unwrap();
        copy
    };

    // A damaged copy is refused before anything is created.
    let damaged = tmp.path().join("damaged.qsnap");
    let mut bytes = std::fs::read(&backup).unwrap();
    let at = bytes.len() - 24;
    bytes[at] ^= 0xff;
    std::fs::write(&damaged, bytes).unwrap();
    let scratch = tmp.path().join("scratch");
    let out = restore(&damaged, &scratch, 1, "1=127.0.0.1:1");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot be restored") && err.contains("damaged.qsnap"), "{err}");
    assert!(!scratch.exists(), "nothing left behind");

    // The new cluster: new certificates, new ports, restored data directories.
    let new = Cluster::create(tmp.path().join("new"), free_base_port());
    assert_ne!(new.base, old.base);
    for id in 1..=3 {
        let out = restore(&backup, &new.data_dir(id), id, &new.peers());
        assert!(out.status.success(), "restore of node {id}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("restored node"));
    }
    // A second restore into the same directory is refused.
    let again = restore(&backup, &new.data_dir(1), 1, &new.peers());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));

    let _nodes = new.start();
    assert_eq!(new.eventually(&["kv", "get", "k-1"]), "v-1\n");
    for i in 1..KEYS {
        assert_eq!(new.ok(&["kv", "get", &format!("k-{i}")]), format!("v-{i}\n"));
    }
    assert_eq!(new.cli(&["kv", "get", "k-0"]).status.code(), Some(3), "the delete is restored too (exit 3: not found)");
    new.ok(&["kv", "put", "after-restore", "yes"]);
    assert_eq!(new.ok(&["kv", "get", "after-restore"]), "yes\n");
    let members = new.ok(&["member", "list"]);
    assert_eq!(members.lines().filter(|l| l.contains("voter")).count(), 3, "{members}");
    for i in 0..3u16 {
        assert!(members.contains(&format!("127.0.0.1:{}", new.base + i)), "new addresses: {members}");
    }
}

/// The runbook's "recover after losing quorum": two of three voters are lost for good (their
/// data is gone); the survivor, forced to be the only voter, serves every write the old cluster
/// acknowledged, takes new ones, and grows back with a new member.
#[test]
fn a_survivor_forced_after_losing_quorum_keeps_every_acknowledged_write_and_grows_back() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Cluster::create(tmp.path().join("c"), free_base_port());
    {
        let _nodes = c.start();
        c.eventually(&["kv", "put", "k-0", "v-0"]);
        for i in 1..KEYS {
            c.ok(&["kv", "put", &format!("k-{i}"), &format!("v-{i}")]);
        }
    } // every node is killed: the writes above are acknowledged, nothing more
    for lost in [2, 3] {
        std::fs::remove_dir_all(c.data_dir(lost)).unwrap();
    }

    // Refused without the explicit flag; a dry run changes nothing.
    let d1 = c.data_dir(1);
    let out = force(&d1, "");
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--i-have-lost-quorum"));
    let out = force(&d1, "--dry-run");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("would make node 1 the only voter"), "{said}");
    assert!(!d1.join("force-new-cluster.json").exists());
    let out = force(&d1, "--i-have-lost-quorum");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("made node 1 the only voter"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut nodes = Nodes(vec![c.start_one(1)]);
    assert_eq!(c.eventually(&["kv", "get", "k-1"]), "v-1\n");
    for i in 0..KEYS {
        assert_eq!(c.ok(&["kv", "get", &format!("k-{i}")]), format!("v-{i}\n"), "acknowledged write k-{i}");
    }
    c.ok(&["kv", "put", "after-recovery", "yes"]);
    let log = std::fs::read_to_string(c.log_path(1)).unwrap();
    assert!(log.contains("force_new_cluster") && log.contains("UNSAFE"), "the audit event is logged");
    assert!(!d1.join("force-new-cluster.json").exists(), "logged once, then renamed");

    // Grow back: node 2 comes back empty (a replacement machine), as a learner, then a voter.
    c.ok(&["member", "add", "--learner", "2", &format!("127.0.0.1:{}", c.base + 1)]);
    nodes.0.push(c.start_with(2, &["--join"]));
    c.eventually(&["member", "promote", "2"]);
    let members = c.ok(&["member", "list"]);
    assert_eq!(members.lines().filter(|l| l.contains("voter")).count(), 2, "{members}");
    c.ok(&["kv", "put", "with-two-voters", "yes"]);
    assert_eq!(c.ok(&["kv", "get", "after-recovery"]), "yes\n");
}
