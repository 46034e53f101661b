//! Snapshots larger than one state-machine write: built, installed in batches, and recovered
//! after a crash between batches.

use super::{INSTALL_BATCH_PAIRS, install_snapshot_batches, install_snapshot_data};
use crate::sm;
use quorate_log::{Configuration, Data, Entry, EntryId, EntryPayload, LogIndex, NodeId, SnapshotMeta, Term};
use quorate_storage::{APPLY_OPS_MAX, PersistBatch, RocksStore, SmOp, StoreOptions};
use std::path::Path;

const KEYS: usize = 200_000;

fn voters() -> Configuration {
    Configuration::with_voters([NodeId::new(1).expect("non-zero")]).expect("one voter")
}

fn open(dir: &Path) -> RocksStore {
    RocksStore::open(dir, StoreOptions::with_bootstrap(voters())).expect("store opens")
}

fn entry(i: u64) -> Entry {
    Entry { index: LogIndex(i), term: Term(1), payload: EntryPayload::Command(Data::from("x")) }
}

/// Every state-machine pair, in key order.
fn all_pairs(store: &RocksStore) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut from = Vec::new();
    loop {
        let page = store.sm_scan(&from, 50_000).expect("scan");
        let more = page.len() == 50_000;
        if let Some((k, _)) = page.last() {
            from = k.clone();
            from.push(0);
        }
        out.extend(page);
        if !more {
            return out;
        }
    }
}

/// A source store holding `KEYS` pairs applied through 4 entries, and its snapshot meta.
fn source(dir: &Path) -> (RocksStore, SnapshotMeta) {
    let src = open(dir);
    src.write(PersistBatch::append((1..=4).map(entry).collect())).expect("append");
    let per = KEYS / 4;
    assert!(per < APPLY_OPS_MAX);
    for chunk in 0..4u64 {
        let ops = (0..per).map(|i| {
            let n = chunk as usize * per + i;
            SmOp::Put { key: format!("key/{n:08}").into_bytes(), value: format!("value-{n}-{}", n * 7919).into_bytes() }
        });
        src.apply(LogIndex(chunk + 1), ops).expect("apply");
    }
    let meta = SnapshotMeta { last: EntryId::new(Term(1), LogIndex(4)), config: voters() };
    (src, meta)
}

/// A store that records `meta` (as an install from a leader would) with its data file
/// streamed from `src` by the node's snapshot writer, and a stale key of its own.
fn target(dir: &Path, src: &RocksStore, meta: &SnapshotMeta) -> RocksStore {
    let dst = open(dir);
    dst.write(PersistBatch::append(vec![entry(1)])).expect("append");
    dst.apply(LogIndex(1), [SmOp::Put { key: b"stale".to_vec(), value: b"old".to_vec() }]).expect("apply");
    let mut w = dst.snapshot_writer(meta.clone()).expect("writer");
    let n = sm::write_snapshot_data(src, &mut w).expect("snapshot data written");
    assert_eq!(n, KEYS as u64, "the build side writes every pair");
    w.finish().expect("snapshot finished");
    dst.write(PersistBatch { install: Some(meta.clone()), ..PersistBatch::default() }).expect("install batch");
    dst
}

#[test]
fn snapshot_of_200k_keys_builds_and_installs_in_batches() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (src, meta) = source(&dir.path().join("src"));
    let dst = target(&dir.path().join("dst"), &src, &meta);
    const { assert!(KEYS > 2 * INSTALL_BATCH_PAIRS, "more than one batch") };
    install_snapshot_data(&dst, &meta).expect("install");
    assert_eq!(dst.applied_index(), LogIndex(4));
    assert_eq!(dst.sm_install_pending(), None);
    let (want, got) = (all_pairs(&src), all_pairs(&dst));
    assert_eq!(got.len(), KEYS, "stale key gone, every snapshot key present");
    assert!(want == got, "installed state machine equals the snapshot's");
}

#[test]
fn crash_between_install_batches_recovers_to_exactly_the_snapshot() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (src, meta) = source(&dir.path().join("src"));
    let dst_dir = dir.path().join("dst");
    let dst = target(&dst_dir, &src, &meta);
    // "Crash" after the first batch: the marker is on disk, the applied index is the old one.
    install_snapshot_batches(&dst, &meta, Some(1), false).expect("partial install");
    drop(dst);
    let dst = open(&dst_dir);
    assert_eq!(dst.sm_install_pending(), Some(LogIndex(4)), "the marker survives the crash");
    assert_eq!(dst.applied_index(), LogIndex(1));
    let partial = all_pairs(&dst).len();
    assert_eq!(partial, INSTALL_BATCH_PAIRS, "a partial state machine, exactly one batch");
    // Nothing may be applied on top of a partial install.
    let e = dst.apply(LogIndex(2), [SmOp::Delete { key: b"x".to_vec() }]).unwrap_err().to_string();
    assert!(e.contains("install"), "{e}");
    // The start-up repair path redoes it from the file.
    install_snapshot_data(&dst, &meta).expect("install again");
    assert_eq!(dst.sm_install_pending(), None);
    assert_eq!(dst.applied_index(), LogIndex(4));
    assert!(all_pairs(&src) == all_pairs(&dst), "exactly the snapshot's state, no stale or duplicate key");
    // And it stays so across another restart.
    drop(dst);
    let dst = open(&dst_dir);
    assert_eq!((dst.sm_install_pending(), dst.applied_index()), (None, LogIndex(4)));
}

#[test]
fn damaged_snapshot_file_is_refused_before_the_state_machine_is_touched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (src, meta) = source(&dir.path().join("src"));
    let dst = target(&dir.path().join("dst"), &src, &meta);
    let file = std::fs::read_dir(dst.snapshot_dir())
        .expect("snapshot dir")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|x| x == "qsnap"))
        .expect("snapshot file");
    let mut bytes = std::fs::read(&file).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&file, bytes).expect("write");
    let e = install_snapshot_data(&dst, &meta).unwrap_err().to_string();
    assert!(e.contains("does not verify"), "{e}");
    assert_eq!(dst.sm_install_pending(), None, "nothing begun");
    assert_eq!(dst.sm_get(b"stale").expect("read"), Some(b"old".to_vec()), "old state untouched");
}

/// The cluster version the server gates on is read from memory
/// ([`crate::versions::AppliedClusterVersion`]), not from the state machine: an install clears
/// the state machine and fills it in batches, and until the batch holding `m/cluster_version`
/// is written the state machine reads as version 1 — a node finalized at version 2 would have
/// gated on version 1 meanwhile (a read of the state machine mid-install, below, shows it).
#[test]
fn the_applied_cluster_version_never_goes_back_across_an_install() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A source at cluster version 2, with more pairs than one install batch ahead of the
    // version's key ("key/…" sorts before "m/cluster_version").
    let src = open(&dir.path().join("src"));
    src.write(PersistBatch::append((1..=2).map(entry).collect())).expect("append");
    let keys = INSTALL_BATCH_PAIRS + 10;
    let ops = (0..keys).map(|n| SmOp::Put { key: format!("key/{n:08}").into_bytes(), value: b"v".to_vec() });
    src.apply(LogIndex(1), ops).expect("apply");
    let version = SmOp::Put { key: b"m/cluster_version".to_vec(), value: 2u64.to_le_bytes().to_vec() };
    src.apply(LogIndex(2), [version.clone()]).expect("apply");
    assert_eq!(sm::cluster_version(&src).expect("version"), 2);
    let meta = SnapshotMeta { last: EntryId::new(Term(1), LogIndex(2)), config: voters() };
    // A target finalized at 2 as well, which installs the snapshot.
    let dst_dir = dir.path().join("dst");
    let dst = open(&dst_dir);
    dst.write(PersistBatch::append(vec![entry(1)])).expect("append");
    dst.apply(LogIndex(1), [version]).expect("apply");
    let applied = crate::versions::AppliedClusterVersion::new(sm::cluster_version(&dst).expect("version"));
    assert_eq!(applied.get(), 2);
    let mut w = dst.snapshot_writer(meta.clone()).expect("writer");
    sm::write_snapshot_data(&src, &mut w).expect("snapshot data written");
    w.finish().expect("snapshot finished");
    dst.write(PersistBatch { install: Some(meta.clone()), ..PersistBatch::default() }).expect("install batch");
    // Mid-install (one batch written): the state machine reads version 1, the cache does not.
    install_snapshot_batches(&dst, &meta, Some(1), false).expect("partial install");
    assert_eq!(sm::cluster_version(&dst).expect("version"), quorate_api::CLUSTER_VERSION_INITIAL);
    assert_eq!(applied.get(), 2, "a reader mid-install sees the applied version");
    // A refresh mid-install (none is made there; be safe) would not lower it either.
    assert_eq!(applied.refresh(&dst).expect("refresh"), 2);
    assert_eq!(applied.get(), 2);
    // The install finishes: the state machine reads 2 again, and a higher version raises it.
    install_snapshot_data(&dst, &meta).expect("install");
    assert_eq!(sm::cluster_version(&dst).expect("version"), 2);
    assert_eq!(applied.refresh(&dst).expect("refresh"), 2);
    assert_eq!(applied.raise(3), 3);
    assert_eq!(applied.raise(1), 3, "never lowered");
}
