//! Recovery after losing quorum (`quorate node force-new-cluster`, like etcd's
//! `--force-new-cluster`): an explicit, audited, **unsafe** step that turns one surviving
//! member's data into a one-voter cluster, from which the operator then adds new members.
//!
//! Offline, on a stopped node's data directory, it:
//! 1. opens the store (refused while a node runs on it: RocksDB's lock) and reads the hard
//!    state, the last log entry and the configuration in force, which must contain this node;
//! 2. writes the record [`RECORD_FILE`] into the data directory (synced): who, when, the old
//!    configuration, the old term, the last index and the commit index;
//! 3. appends one configuration entry — this node the only voter — at the end of the log, in a
//!    term above every term the node has seen, and records that term (no vote) in one synced
//!    write. A configuration takes effect when appended, so the node, started again, is the
//!    only voter: it elects itself and commits its **whole log**, including entries it held but
//!    did not know to be committed.
//!
//! What it costs, and why it is unsafe: writes acknowledged by the old cluster that never
//! reached this node are lost; writes in this node's log that the old cluster never committed
//! (their clients saw an error or no answer) become committed; if an old member that was
//! believed lost comes back with the old configuration it can form a second cluster — its
//! certificate must be revoked or its data removed first, and so must every survivor that is
//! not forced. Pick the survivor with the highest last term, then the highest last index
//! (`quorate node force-new-cluster --dry-run` prints both for each candidate). A store that
//! lost synced state cannot be forced (its term and vote may be older than what it promised).
//!
//! At its next start the node logs the record as an audit event (`op=force_new_cluster`) and
//! renames it to `force-new-cluster.<time>.logged.json`; a record whose change is missing from
//! the store (the command stopped in between) stops the node with what to do.

use quorate_log::{Configuration, Entry, EntryPayload, HardState, LogStorage, NodeId, Term};
use quorate_storage::{PersistBatch, RocksStore, StoreError, StoreOptions};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The record a forced recovery leaves in the data directory until the node has logged it.
pub const RECORD_FILE: &str = "force-new-cluster.json";

/// The largest record file read back (a record is a few hundred bytes).
const RECORD_BYTES_MAX: u64 = 64 << 10;

/// What a forced recovery found and did (also the record's contents).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Forced {
    /// The surviving node, now the only voter.
    pub node: u64,
    /// When the command ran (milliseconds since the Unix epoch).
    pub at_unix_ms: u64,
    /// The voters of the configuration in force before.
    pub old_voters: Vec<u64>,
    /// The learners of the configuration in force before.
    pub old_learners: Vec<u64>,
    /// The node's term before.
    pub old_term: u64,
    /// The commit index the node knew.
    pub commit: u64,
    /// The index of the last entry the node held (every entry up to it becomes committed).
    pub last_index: u64,
    /// The term of that entry: choose the survivor with the highest last term, then the
    /// highest last index (Raft's "more up to date").
    #[serde(default)]
    pub last_term: u64,
    /// The term of the new configuration entry.
    pub new_term: u64,
    /// The index of the new configuration entry (`last_index + 1`).
    pub config_index: u64,
    /// Whether this was a dry run (nothing written).
    pub dry_run: bool,
}

/// Why a forced recovery did not happen. Nothing was changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForceError {
    /// The data directory holds no store.
    #[error("{0} holds no store (is this a node's data_dir?)")]
    NoStore(PathBuf),
    /// The store cannot be opened (a node running on it holds its lock, or it is damaged).
    #[error("cannot open the store in {path} (stop the node first; a running node holds its lock): {source}")]
    Open {
        /// The store's directory.
        path: PathBuf,
        /// The cause.
        source: StoreError,
    },
    /// The node is not a member of the configuration in force.
    #[error("node {node} is not a member of the configuration in force ({config}); run this on a member's data")]
    NotMember {
        /// The node.
        node: u64,
        /// The configuration in force.
        config: String,
    },
    /// Reading or writing the store failed.
    #[error("store: {0}")]
    Store(String),
    /// A file-system operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The node id is not valid.
    #[error("node ids start at 1")]
    BadId,
    /// The store lost synced state (its durable mark is ahead of what it holds).
    #[error(
        "this node's store lost synced state and cannot be forced (its term and vote may be older than what it \
         promised): force another survivor; {0}"
    )]
    LostState(String),
    /// The change is already in the store; only the node's start (which logs it) is missing.
    #[error("node {0} is already the only voter of this store (forced before): start the node")]
    AlreadyForced(u64),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ForceError + '_ {
    move |source| ForceError::Io { path: path.to_path_buf(), source }
}

fn ids(set: &std::collections::BTreeSet<NodeId>) -> Vec<u64> {
    set.iter().map(|n| n.get()).collect()
}

/// Makes node `id`, whose stopped data directory is `data_dir`, the only voter of its log's
/// configuration (see the module's notes). With `dry_run`, reports what it would do and
/// changes nothing.
pub fn force_new_cluster(data_dir: &Path, id: u64, dry_run: bool, now_unix_ms: u64) -> Result<Forced, ForceError> {
    let node = NodeId::new(id).ok_or(ForceError::BadId)?;
    crate::restore::check_not_interrupted(data_dir).map_err(ForceError::Store)?;
    let store_dir = data_dir.join("store");
    if !store_dir.join("db").join("CURRENT").exists() {
        return Err(ForceError::NoStore(data_dir.to_path_buf()));
    }
    let store = RocksStore::open(&store_dir, StoreOptions::default()).map_err(|source| match source {
        StoreError::LostSyncedState(e) => ForceError::LostState(e.to_string()),
        source => ForceError::Open { path: store_dir.clone(), source },
    })?;
    let initial = store.initial_state().map_err(|e| ForceError::Store(e.to_string()))?;
    let old = initial.config;
    let only = Configuration::with_voters([node]).map_err(|e| ForceError::Store(e.to_string()))?;
    // A record not yet logged by the node: the command ran before. Its change is either in the
    // store (nothing to do), or missing (it stopped in between), or it was run with another
    // member's id by mistake: do it (again), keeping what the record says about the old
    // cluster, whose members it is checked against.
    let earlier = read_record(data_dir).map_err(ForceError::Store)?;
    match &earlier {
        Some(r) if r.node == id && old == only => return Err(ForceError::AlreadyForced(id)),
        Some(r) if !r.old_voters.contains(&id) && !r.old_learners.contains(&id) => {
            return Err(ForceError::NotMember {
                node: id,
                config: format!(
                    "voters {:?}, learners {:?}, as recorded in {RECORD_FILE}",
                    r.old_voters, r.old_learners
                ),
            });
        }
        Some(_) => {}
        None if !old.is_voter(node) && !old.is_learner(node) => {
            return Err(ForceError::NotMember { node: id, config: format!("{old:?}") });
        }
        None => {}
    }
    let hs = initial.hard_state;
    let last = store.last_index();
    let last_term = store.term(last).map_err(|e| ForceError::Store(e.to_string()))?;
    let new_term = Term(hs.term.0.max(last_term.0)).next();
    let mut forced = Forced {
        node: id,
        at_unix_ms: now_unix_ms,
        old_voters: ids(&old.voters),
        old_learners: ids(&old.learners),
        old_term: hs.term.0,
        commit: hs.commit.0,
        last_index: last.0,
        last_term: last_term.0,
        new_term: new_term.0,
        config_index: last.next().0,
        dry_run,
    };
    if let Some(r) = earlier {
        (forced.at_unix_ms, forced.old_voters, forced.old_learners, forced.old_term) =
            (r.at_unix_ms, r.old_voters, r.old_learners, r.old_term);
    }
    if dry_run {
        return Ok(forced);
    }
    // The record first, synced: a change without its record must not exist.
    write_record(data_dir, &forced)?;
    let config = Configuration::with_voters([node]).map_err(|e| ForceError::Store(e.to_string()))?;
    let entry = Entry { index: last.next(), term: new_term, payload: EntryPayload::Config(config) };
    let hard = HardState { term: new_term, vote: None, commit: hs.commit };
    store
        .write(PersistBatch::append(vec![entry]).with_hard_state(hard))
        .map_err(|e| ForceError::Store(e.to_string()))?;
    Ok(forced)
}

fn write_record(data_dir: &Path, forced: &Forced) -> Result<(), ForceError> {
    let path = data_dir.join(RECORD_FILE);
    let tmp = data_dir.join(format!("{RECORD_FILE}.tmp"));
    let bytes = serde_json::to_vec_pretty(forced).map_err(|e| ForceError::Store(e.to_string()))?;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    std::fs::File::open(data_dir).and_then(|d| d.sync_all()).map_err(io(data_dir))
}

/// At a node's start: the record of a forced recovery in `data_dir`, if any, checked against
/// the store's configuration in force (`config`, at index `config_index`). `Ok(Some)` once
/// the caller should log it as an audit event and then call [`mark_logged`]; `Err` (with what
/// to do) if the record's change is missing from the store or the record is unreadable.
pub(crate) fn pending_record(data_dir: &Path, config: &Configuration) -> Result<Option<Forced>, String> {
    let path = data_dir.join(RECORD_FILE);
    let Some(forced) = read_record(data_dir)? else { return Ok(None) };
    let only = NodeId::new(forced.node).and_then(|n| Configuration::with_voters([n]).ok());
    if only.as_ref() != Some(config) {
        return Err(format!(
            "{} records a force-new-cluster of node {} that is not in the store (its configuration in force is \
             {config:?}): the command stopped before it finished. Run `quorate node force-new-cluster` again, or \
             remove the record to start with the old configuration",
            path.display(),
            forced.node
        ));
    }
    Ok(Some(forced))
}

/// The record in `data_dir`, if there is one.
fn read_record(data_dir: &Path) -> Result<Option<Forced>, String> {
    let path = data_dir.join(RECORD_FILE);
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    if meta.len() > RECORD_BYTES_MAX {
        return Err(format!("{} is {} bytes, not a force-new-cluster record", path.display(), meta.len()));
    }
    let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| format!("{} is not a force-new-cluster record ({e}); inspect it and remove it", path.display()))
}

/// Renames the record once its audit event is logged, so that it is logged once.
pub(crate) fn mark_logged(data_dir: &Path, forced: &Forced) -> Result<(), String> {
    let from = data_dir.join(RECORD_FILE);
    let to = data_dir.join(format!("force-new-cluster.{}.logged.json", forced.at_unix_ms));
    std::fs::rename(&from, &to).map_err(|e| format!("cannot rename {} to {}: {e}", from.display(), to.display()))?;
    std::fs::File::open(data_dir).and_then(|d| d.sync_all()).map_err(|e| format!("{}: {e}", data_dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorate_log::LogIndex;

    fn voters(ids: &[u64]) -> Configuration {
        Configuration::with_voters(ids.iter().map(|&i| NodeId::new(i).unwrap())).unwrap()
    }

    /// A stopped node 1 of a 3-voter cluster whose log holds 5 entries (term 2), commit 3.
    fn survivor(dir: &Path) {
        let store = RocksStore::open(dir.join("store"), StoreOptions::with_bootstrap(voters(&[1, 2, 3]))).unwrap();
        let entries =
            (1..=5).map(|i| Entry { index: LogIndex(i), term: Term(2), payload: EntryPayload::Noop }).collect();
        let hs = HardState { term: Term(3), vote: NodeId::new(2), commit: LogIndex(3) };
        store.write(PersistBatch::append(entries).with_hard_state(hs)).unwrap();
    }

    /// The record a first run on [`survivor`]'s data writes at `at_unix_ms`.
    fn first_run_of_survivor(at_unix_ms: u64) -> Forced {
        Forced {
            node: 1,
            at_unix_ms,
            old_voters: vec![1, 2, 3],
            old_learners: vec![],
            old_term: 3,
            commit: 3,
            last_index: 5,
            last_term: 2,
            new_term: 4,
            config_index: 6,
            dry_run: false,
        }
    }

    #[test]
    fn the_survivor_becomes_the_only_voter_keeping_its_whole_log() {
        let tmp = tempfile::tempdir().unwrap();
        survivor(tmp.path());
        let dry = force_new_cluster(tmp.path(), 1, true, 7).unwrap();
        assert!(dry.dry_run);
        assert!(!tmp.path().join(RECORD_FILE).exists(), "a dry run writes nothing");

        let forced = force_new_cluster(tmp.path(), 1, false, 7).unwrap();
        assert_eq!((forced.old_voters.clone(), forced.old_term, forced.commit), (vec![1, 2, 3], 3, 3));
        assert_eq!((forced.last_index, forced.last_term, forced.config_index, forced.new_term), (5, 2, 6, 4));
        let store = RocksStore::open(tmp.path().join("store"), StoreOptions::default()).unwrap();
        let initial = store.initial_state().unwrap();
        assert_eq!(initial.config, voters(&[1]));
        assert_eq!(initial.hard_state, HardState { term: Term(4), vote: None, commit: LogIndex(3) });
        assert_eq!(store.entries(LogIndex(1), LogIndex(6), u64::MAX).unwrap().len(), 5, "the log is kept");
        assert_eq!(store.term(LogIndex(6)).unwrap(), Term(4));
        drop(store);

        // The node logs the record once.
        let record = pending_record(tmp.path(), &voters(&[1])).unwrap().unwrap();
        assert_eq!(record, forced);
        mark_logged(tmp.path(), &record).unwrap();
        assert_eq!(pending_record(tmp.path(), &voters(&[1])).unwrap(), None);
        assert!(tmp.path().join("force-new-cluster.7.logged.json").exists());
    }

    #[test]
    fn refusals_change_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(force_new_cluster(tmp.path(), 1, false, 1), Err(ForceError::NoStore(_))));
        assert!(matches!(force_new_cluster(tmp.path(), 0, false, 1), Err(ForceError::BadId)));
        survivor(tmp.path());
        let err = force_new_cluster(tmp.path(), 9, false, 1).unwrap_err();
        assert!(matches!(err, ForceError::NotMember { node: 9, .. }), "{err}");
        // A running node holds the store's lock.
        let running = RocksStore::open(tmp.path().join("store"), StoreOptions::default()).unwrap();
        let err = force_new_cluster(tmp.path(), 1, false, 1).unwrap_err();
        assert!(matches!(err, ForceError::Open { .. }), "{err}");
        drop(running);
        assert!(!tmp.path().join(RECORD_FILE).exists());
        let store = RocksStore::open(tmp.path().join("store"), StoreOptions::default()).unwrap();
        assert_eq!(store.initial_state().unwrap().config, voters(&[1, 2, 3]));
    }

    #[test]
    fn a_record_without_its_change_stops_the_node_with_what_to_do() {
        let tmp = tempfile::tempdir().unwrap();
        let forced = first_run_of_survivor(1);
        write_record(tmp.path(), &forced).unwrap();
        let err = pending_record(tmp.path(), &voters(&[1, 2, 3])).unwrap_err();
        assert!(err.contains("stopped before it finished") && err.contains("again"), "{err}");
        std::fs::write(tmp.path().join(RECORD_FILE), b"{not json").unwrap();
        let err = pending_record(tmp.path(), &voters(&[1])).unwrap_err();
        assert!(err.contains("not a force-new-cluster record"), "{err}");
    }

    #[test]
    fn a_run_stopped_after_its_record_is_finished_by_the_next_which_keeps_the_record() {
        let tmp = tempfile::tempdir().unwrap();
        survivor(tmp.path());
        // The first run wrote its record and stopped before the store write.
        let first = first_run_of_survivor(5);
        write_record(tmp.path(), &first).unwrap();
        let again = force_new_cluster(tmp.path(), 1, false, 9).unwrap();
        assert_eq!(again, first, "the record keeps the first run's time and the old cluster");
        // A third run finds the change made and overwrites nothing.
        let third = force_new_cluster(tmp.path(), 1, false, 10).unwrap_err();
        assert!(matches!(third, ForceError::AlreadyForced(1)), "{third}");
        assert_eq!(read_record(tmp.path()).unwrap(), Some(first));
    }

    #[test]
    fn a_survivor_whose_log_is_compacted_to_its_last_entry_is_forced_above_the_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        survivor(tmp.path());
        {
            let store = RocksStore::open(tmp.path().join("store"), StoreOptions::default()).unwrap();
            store.apply(LogIndex(5), []).unwrap();
            let meta = quorate_log::SnapshotMeta {
                last: quorate_log::EntryId::new(Term(2), LogIndex(5)),
                config: voters(&[1, 2, 3]),
            };
            store.write(PersistBatch { compact: Some(meta), ..PersistBatch::default() }).unwrap();
            assert_eq!(store.last_index(), LogIndex(5));
            assert_eq!(store.first_index(), LogIndex(6), "the log is empty above the snapshot");
        }
        let forced = force_new_cluster(tmp.path(), 1, false, 1).unwrap();
        assert_eq!((forced.last_index, forced.last_term, forced.config_index, forced.new_term), (5, 2, 6, 4));
        let store = RocksStore::open(tmp.path().join("store"), StoreOptions::default()).unwrap();
        assert_eq!(store.initial_state().unwrap().config, voters(&[1]));
        assert_eq!(store.term(LogIndex(6)).unwrap(), Term(4));
    }

    #[test]
    fn a_run_with_another_members_id_is_superseded_by_the_right_one() {
        let tmp = tempfile::tempdir().unwrap();
        let store = RocksStore::open(
            tmp.path().join("store"),
            StoreOptions::with_bootstrap(
                Configuration::with_voters([1, 2, 3].map(|i| NodeId::new(i).unwrap())).unwrap(),
            ),
        )
        .unwrap();
        let e = Entry { index: LogIndex(1), term: Term(1), payload: EntryPayload::Noop };
        store
            .write(PersistBatch::append(vec![e]).with_hard_state(HardState {
                term: Term(1),
                vote: None,
                commit: LogIndex(1),
            }))
            .unwrap();
        drop(store);
        // Node 1's data, forced with --id 2 by mistake: the store now names 2 the only voter.
        let wrong = force_new_cluster(tmp.path(), 2, false, 5).unwrap();
        assert_eq!(pending_record(tmp.path(), &voters(&[2])).unwrap(), Some(wrong.clone()));
        // Only a member of the recorded old cluster can supersede it.
        assert!(matches!(force_new_cluster(tmp.path(), 9, false, 6), Err(ForceError::NotMember { node: 9, .. })));
        let right = force_new_cluster(tmp.path(), 1, false, 6).unwrap();
        assert_eq!(
            (right.node, right.at_unix_ms, right.old_voters.clone()),
            (1, 5, vec![1, 2, 3]),
            "the first record's old cluster"
        );
        assert_eq!((right.last_index, right.config_index, right.new_term), (2, 3, 3), "above the wrong run's entry");
        assert_eq!(pending_record(tmp.path(), &voters(&[1])).unwrap(), Some(right));
    }
}
