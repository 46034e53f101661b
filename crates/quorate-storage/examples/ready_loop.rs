//! Plugging `quorate-storage` into a consensus loop.
//!
//! The consensus core hands the application, per `Ready`, a hard state and entries to append
//! (possibly after truncating a conflicting suffix). The application persists them, reports
//! completion back to the core, and only then sends the messages that depend on them. This
//! example plays the core's part with a scripted sequence of `Ready`s, persists them through a
//! `GroupCommitter`, applies committed entries to the state machine, takes a snapshot,
//! compacts, and reopens the store to show what a restarted node recovers.
//!
//! Run with `cargo run --profile ci -p quorate-storage --example ready_loop`.

use quorate_log::{
    Configuration, Data, Entry, EntryId, EntryPayload, HardState, LogIndex, LogStorage, NodeId, SnapshotMeta, Term,
};
use quorate_storage::{DurableLog, GroupCommitter, GroupOptions, PersistBatch, RocksStore, SmOp, StoreOptions};
use std::io::{Read, Write};
use std::sync::Arc;

/// What a core's `Ready` carries that storage cares about (a stand-in: the real type lives in
/// `quorate-core`).
struct Ready {
    hard_state: Option<HardState>,
    /// Entries to append; if the first one's index is not past the last stored one, the
    /// conflicting suffix is truncated first.
    entries: Vec<Entry>,
}

fn command(index: u64, term: u64, text: &str) -> Entry {
    Entry { index: LogIndex(index), term: Term(term), payload: EntryPayload::Command(Data::from(text)) }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("quorate-storage-example-{}", std::process::id()));
    let me = NodeId::new(1).ok_or("node id")?;
    let config = Configuration::with_voters([me])?;
    let mut options = StoreOptions::with_bootstrap(config.clone());
    options.free_space_floor_bytes = 16 << 20;

    let store = Arc::new(RocksStore::open(&dir, options.clone())?);
    let committer = GroupCommitter::new(Arc::clone(&store), GroupOptions::default())?;

    let hs = |commit: u64| HardState { term: Term(1), vote: Some(me), commit: LogIndex(commit) };
    let readies = vec![
        Ready { hard_state: Some(hs(0)), entries: vec![command(1, 1, "x=1"), command(2, 1, "y=2")] },
        Ready { hard_state: Some(hs(2)), entries: vec![command(3, 1, "x=3")] },
        Ready { hard_state: Some(hs(3)), entries: vec![] },
    ];

    for ready in readies {
        // 1. Persist (many Readies' writes may share one fsync through the committer).
        let batch = PersistBatch { hard_state: ready.hard_state, entries: ready.entries, ..PersistBatch::default() };
        committer.submit(batch)?.wait()?;
        // 2. Tell the core the batch is durable; it may now send the messages that depend on it.
        // 3. Apply newly committed entries; the applied index is written with the data.
        let commit = store.hard_state().commit;
        let from = store.applied_index().next();
        if from <= commit {
            let ops: Vec<SmOp> = store
                .entries(from, commit.next(), u64::MAX)?
                .into_iter()
                .filter_map(|e| match e.payload {
                    EntryPayload::Command(c) => {
                        let text = String::from_utf8_lossy(&c).into_owned();
                        let (k, v) = text.split_once('=')?;
                        Some(SmOp::Put { key: k.as_bytes().to_vec(), value: v.as_bytes().to_vec() })
                    }
                    _ => None,
                })
                .collect();
            store.apply(commit, ops)?;
        }
        println!("last={} commit={} applied={}", store.last_index(), commit, store.applied_index());
    }

    // Snapshot the state machine as a stream, then drop the log prefix it covers.
    let applied = store.applied_index();
    let meta = SnapshotMeta { last: EntryId::new(store.term(applied)?, applied), config };
    let mut writer = store.snapshot_writer(meta.clone())?;
    for (k, v) in store.sm_scan(b"", 1024)? {
        writer.write_all(&(k.len() as u32).to_le_bytes())?;
        writer.write_all(&k)?;
        writer.write_all(&(v.len() as u32).to_le_bytes())?;
        writer.write_all(&v)?;
    }
    let file = writer.finish()?;
    store.compact_to(meta)?;
    println!("snapshot of {} bytes at {}; log now starts at {}", file.data_len, applied, store.first_index());

    drop(committer);
    drop(store);

    // A restart recovers the hard state, the log tail, the snapshot and the applied index.
    let store = RocksStore::open(&dir, options)?;
    let init = store.initial_state()?;
    let mut snapshot = Vec::new();
    if let Some(mut r) = store.snapshot_reader()? {
        r.read_to_end(&mut snapshot)?;
    }
    println!(
        "recovered: term={} commit={} first={} last={} applied={} x={:?} snapshot={} bytes",
        init.hard_state.term,
        init.hard_state.commit,
        store.first_index(),
        store.last_index(),
        store.applied_index(),
        store.sm_get(b"x")?.map(|v| String::from_utf8_lossy(&v).into_owned()),
        snapshot.len()
    );
    drop(store);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
