//! The key-value state machine driven by the runtime's replica loop (`quorate_runtime::Replica`)
//! on RocksDB: applied in its own log format with its own sessions, committed, restarted
//! without applying again, applying a log the node's own driver wrote, and installed on a
//! follower from a snapshot transfer (also after an install that a crash interrupted).

use super::*;
use quorate_api::{Command, CommandOp, Sequenced, SessionId};
use quorate_core::Instant;
use quorate_log::Configuration;
use quorate_runtime::{ClientId, Config, Core, Error, ProposeCallback, Replica, RocksLog, Role, WireMessage};
use quorate_storage::StoreOptions;
use std::sync::Mutex;

type Log<T> = Arc<Mutex<Vec<Result<T, Error>>>>;

fn sink<T: Send + 'static>(log: &Log<T>) -> ProposeCallback<T> {
    let log = log.clone();
    Box::new(move |r| log.lock().expect("unpoisoned").push(r))
}

fn node(i: u64) -> NodeId {
    NodeId::new(i).expect("non-zero")
}

fn command(op: CommandOp) -> Vec<u8> {
    in_session(None, op)
}

/// A command as the node's driver writes it, in a session of the key-value state's own.
fn in_session(session: Option<Sequenced>, op: CommandOp) -> Vec<u8> {
    quorate_api::encode_command(&Command { session, time_ms: 1_000, op }).expect("encodes")
}

fn put(k: &str, v: &str) -> Vec<u8> {
    command(CommandOp::Put { key: k.into(), value: v.into() })
}

/// The results answered so far.
fn results(log: &Log<KvOutput>) -> Vec<Result<Response, ApiError>> {
    log.lock().expect("unpoisoned").iter().map(|r| r.clone().expect("applied").result).collect()
}

fn open(dir: &std::path::Path, config: &Configuration) -> (RocksLog, KvMachine) {
    let log = RocksLog::open(dir, StoreOptions::with_bootstrap(config.clone())).expect("opens");
    let sm = KvMachine::new(log.store().clone());
    (log, sm)
}

/// A single voter on RocksDB, leader.
fn start(dir: &std::path::Path) -> (Replica<KvMachine, RocksLog>, Instant) {
    let (log, sm) = open(dir, &Configuration::with_voters([node(1)]).expect("valid"));
    let mut cfg = Config::new(node(1));
    cfg.raft.compaction_tail_entries = 0;
    let mut r = Replica::new(cfg, log, sm, Instant::ZERO).expect("starts");
    let now = r.next_deadline().expect("an election timer");
    r.tick(now);
    r.process(now, &mut Vec::new());
    assert_eq!(r.status().role, Role::Leader);
    (r, now)
}

/// Every key-value pair (key, value, mod revision) as applied, and the revision.
type KvState = (Vec<(Vec<u8>, Vec<u8>, u64)>, u64);

fn kv_state(sm: &KvMachine) -> KvState {
    let (kvs, more) = sm.scan(b"", None, 1_000).expect("scans");
    assert!(!more);
    (kvs.into_iter().map(|kv| (kv.key, kv.value, kv.mod_revision)).collect(), sm.revision().expect("a revision"))
}

#[test]
fn the_kv_state_machine_applies_commits_and_restarts_on_the_runtime() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (mut r, now) = start(dir.path());
    // Its sessions are its own: the runtime's are off for it.
    let runtime_sessions: Log<ClientId> = Log::default();
    r.open_session(now, sink(&runtime_sessions));
    assert_eq!(*runtime_sessions.lock().unwrap(), vec![Err(Error::SessionsOff)]);
    let out: Log<KvOutput> = Log::default();
    r.propose(now, command(CommandOp::OpenSession), None, sink(&out));
    r.process(now, &mut Vec::new());
    let Ok(Response::Session(session)) = results(&out)[0] else { panic!("{:?}", results(&out)) };
    let seq = |seq| Some(Sequenced { session, seq });
    r.propose(now, put("a", "1"), None, sink(&out));
    r.propose(now, in_session(seq(1), CommandOp::Put { key: "b".into(), value: "2".into() }), None, sink(&out));
    r.propose(
        now,
        command(CommandOp::Cas { key: "a".into(), expected: Some("1".into()), value: "3".into() }),
        None,
        sink(&out),
    );
    r.propose(now, command(CommandOp::Delete { key: "b".into() }), None, sink(&out));
    // Undecodable bytes: a deterministic error result, not a stop.
    r.propose(now, vec![0xff; 3], None, sink(&out));
    r.process(now, &mut Vec::new());
    let got = results(&out);
    assert_eq!(got[1..3], [Ok(Response::Put { revision: 1 }), Ok(Response::Put { revision: 2 })]);
    assert!(matches!(got[3], Ok(Response::Cas { succeeded: true, revision: 3, .. })), "{:?}", got[3]);
    assert_eq!(got[4], Ok(Response::Delete { deleted: true, revision: 4 }));
    assert!(matches!(got[5], Err(ApiError::InvalidRequest(_))), "{:?}", got[5]);
    assert_eq!(r.state_machine().expect("inline").get(b"a").expect("reads").map(|kv| kv.value), Some(b"3".to_vec()));
    assert_eq!(r.state_machine().expect("inline").get(b"b").expect("reads"), None);
    // Every turn is committed: the store's applied index is the runtime's.
    assert_eq!(r.state_machine().expect("inline").applied(), r.applied());
    let at = r.snapshot_now(now).expect("a snapshot");
    assert_eq!(at, r.applied());
    // After the snapshot: only in the state machine's own state (and the log).
    let c5 = || in_session(seq(2), CommandOp::Put { key: "c".into(), value: "5".into() });
    r.propose(now, c5(), None, sink(&out));
    r.process(now, &mut Vec::new());
    assert_eq!(results(&out)[6], Ok(Response::Put { revision: 5 }));
    let before = kv_state(r.state_machine().expect("inline"));
    let applied = r.applied();
    drop(r);

    let (mut r, now) = start(dir.path());
    // Started from its own applied index, not the snapshot's: nothing was applied again (the
    // put after the snapshot again would be revision 6). The new term's no-op moved it on.
    assert!(r.state_machine().expect("inline").applied() > applied);
    assert_eq!(r.state_machine().expect("inline").applied(), r.applied());
    assert_eq!(kv_state(r.state_machine().expect("inline")), before, "the state as committed, not the snapshot's");
    // The session table is part of the state: the retry of seq 2 is answered from it and
    // not applied again (which would be revision 6).
    r.propose(now, c5(), None, sink(&out));
    r.process(now, &mut Vec::new());
    assert_eq!(results(&out)[7], Ok(Response::Put { revision: 5 }));
    assert_eq!(kv_state(r.state_machine().expect("inline")), before);
    assert_eq!(
        r.state_machine().expect("inline").runtime_records().expect("records"),
        Vec::new(),
        "no runtime records"
    );
}

/// A log the node's own driver wrote — its entries are `quorate_api` commands as they are,
/// with the node's sessions — applies under the runtime: the runtime hands each entry to the
/// state machine unchanged (it would refuse every one as undecodable with its envelope on).
#[test]
fn a_log_written_by_the_nodes_driver_applies_under_the_runtime() {
    use quorate_log::{Data, Entry, EntryPayload, HardState, Term};
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = Configuration::with_voters([node(1)]).expect("valid");
    let session = SessionId(1);
    let seq = |seq| Some(Sequenced { session, seq });
    let commands = [
        command(CommandOp::OpenSession),
        in_session(seq(1), CommandOp::Put { key: "a".into(), value: "1".into() }),
        // A retry the driver appended again: applied once.
        in_session(seq(1), CommandOp::Put { key: "a".into(), value: "1".into() }),
        put("b", "2"),
        command(CommandOp::Delete { key: "a".into() }),
    ];
    {
        let (log, _) = open(dir.path(), &config);
        let store = log.store();
        // As the driver persists: entries of term 1, and the vote and commit beside them.
        let entries: Vec<Entry> = commands
            .iter()
            .enumerate()
            .map(|(i, c)| Entry {
                term: Term(1),
                index: LogIndex(i as u64 + 1),
                payload: EntryPayload::Command(Data::from(c.clone())),
            })
            .collect();
        let mut batch = quorate_storage::PersistBatch::append(entries);
        batch.hard_state = Some(HardState { term: Term(1), vote: Some(node(1)), commit: LogIndex(5) });
        store.write(batch).expect("persists");
    }
    let (r, _) = start(dir.path());
    let (kvs, revision) = kv_state(r.state_machine().expect("inline"));
    assert_eq!(kvs, vec![(b"b".to_vec(), b"2".to_vec(), 2)], "a put once, b put, a deleted");
    assert_eq!(revision, 3);
    assert!(r.state_machine().expect("inline").applied() > LogIndex(5), "applied all five and the new term's no-op");
}

/// Snapshot images are interchangeable too: one the node's driver writes (its pairs, through
/// the store's writer) is restored under the runtime, and one the runtime takes reads back
/// with the driver's reader — neither has a runtime part (the state machine owns its format).
#[test]
fn snapshots_of_the_nodes_driver_and_of_the_runtime_are_interchangeable() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (mut r, now) = start(dir.path());
    let out: Log<KvOutput> = Log::default();
    for (k, v) in [("a", "1"), ("b", "2"), ("c", "3")] {
        r.propose(now, put(k, v), None, sink(&out));
    }
    r.process(now, &mut Vec::new());
    assert!(results(&out).iter().all(Result::is_ok));
    // The runtime's snapshot, read with the driver's reader: the key-value pairs as stored.
    r.snapshot_now(now).expect("a snapshot");
    // The core records it (compacting the log behind it) in the next turn.
    r.process(now, &mut Vec::new());
    let store = r.storage().store().clone();
    let mut reader = store.snapshot_reader().expect("opens").expect("a snapshot");
    let mut pairs = Vec::new();
    super::super::read_snapshot_data(&mut reader, |k, v| {
        pairs.push((k, v));
        Ok(())
    })
    .expect("the driver reads it");
    assert_eq!(pairs, store.sm_scan(b"", 10_000).expect("scans"));
    // One more write, then a snapshot as the driver writes it at the applied index (newer
    // than the runtime's), and a state machine behind it (an interrupted install): the
    // runtime restores it from the driver's image.
    r.propose(now, put("d", "4"), None, sink(&out));
    r.process(now, &mut Vec::new());
    let expected = kv_state(r.state_machine().expect("inline"));
    assert_eq!(expected.0.len(), 4);
    let applied = r.applied();
    let meta = quorate_log::SnapshotMeta {
        last: quorate_log::EntryId::new(r.status().term, applied),
        config: Configuration::with_voters([node(1)]).expect("valid"),
    };
    drop(r);
    let mut w = store.snapshot_writer(meta).expect("a writer");
    super::super::write_snapshot_data(&*store, &mut w).expect("writes");
    w.finish().expect("finishes");
    store.begin_sm_reinstall(applied).expect("marks");
    assert_eq!(store.sm_scan(b"", 10_000).expect("scans"), Vec::new(), "the state machine is cleared");
    drop(store);
    let (r, _) = start(dir.path());
    assert_eq!(r.state_machine().expect("inline").interrupted_restore(), None, "restored");
    assert_eq!(kv_state(r.state_machine().expect("inline")), expected, "from the driver's image");
}

/// The node's flight recorder around the runtime's core (`Replica::with_core`): every input
/// of the core is recorded, and the dump replays in one process without a divergence.
#[test]
fn the_flight_recorder_records_a_runtime_replica_and_its_dump_replays() {
    use crate::flight::{Recorded, decode_dump, replay};
    let dir = tempfile::tempdir().expect("a temp dir");
    let (log, sm) = open(dir.path(), &Configuration::with_voters([node(1)]).expect("valid"));
    let mut cfg = Config::new(node(1));
    cfg.raft.compaction_tail_entries = 0;
    let mut r: Replica<KvMachine, RocksLog, Recorded<RocksLog>> =
        Replica::with_core(cfg, log, sm, Instant::ZERO, |cfg, storage, now| {
            Recorded::new(cfg, storage, now, None, 64 << 20)
        })
        .expect("starts");
    let now = r.next_deadline().expect("an election timer");
    r.tick(now);
    r.process(now, &mut Vec::new());
    assert_eq!(r.status().role, Role::Leader);
    let out: Log<KvOutput> = Log::default();
    for i in 0..40u32 {
        r.propose(now, put(&format!("k{}", i % 7), &i.to_string()), None, sink(&out));
        if i % 10 == 9 {
            r.process(now, &mut Vec::new());
            r.snapshot_now(now).expect("a snapshot");
        }
    }
    r.process(now, &mut Vec::new());
    assert_eq!(results(&out).len(), 40);
    assert!(results(&out).iter().all(Result::is_ok));
    let dump = decode_dump(&r.core_wrapper().dump_bytes("test")).expect("decodes");
    assert!(dump.inputs.len() > 40, "every proposal and more: {}", dump.inputs.len());
    let report = replay(&dump).expect("replays");
    assert_eq!(report.divergence, None, "{report:?}");
    assert_eq!(report.inputs, dump.inputs.len());
    assert!(report.readies > 4, "{report:?}");
}

/// The recorder's dump triggers under the runtime: a dump asked through the replica's
/// mutable way to its core wrapper (what `Handle::with_core` runs in a node's task), and a
/// dump when the replica halts for a reason of its own (not the core's), each written to the
/// flight directory and replaying exactly.
#[test]
fn a_runtime_replica_under_the_recorder_dumps_on_request_and_on_its_own_halt() {
    use crate::flight::{Recorded, read_dump, replay};
    let dir = tempfile::tempdir().expect("a temp dir");
    let flights = tempfile::tempdir().expect("a temp dir");
    let (log, sm) = open(dir.path(), &Configuration::with_voters([node(1)]).expect("valid"));
    let to = flights.path().to_path_buf();
    let mut r: Replica<KvMachine, RocksLog, Recorded<RocksLog>> =
        Replica::with_core(Config::new(node(1)), log, sm, Instant::ZERO, move |cfg, storage, now| {
            Recorded::new(cfg, storage, now, Some(to), 64 << 20)
        })
        .expect("starts");
    let now = r.next_deadline().expect("an election timer");
    r.tick(now);
    r.process(now, &mut Vec::new());
    let out: Log<KvOutput> = Log::default();
    for i in 0..10u32 {
        r.propose(now, put("k", &i.to_string()), None, sink(&out));
    }
    r.process(now, &mut Vec::new());
    assert_eq!(results(&out).len(), 10);
    let asked = r.core_wrapper_mut().dump("asked").expect("writes").expect("a flight directory");
    let dump = read_dump(&asked.path).expect("reads");
    assert_eq!(dump.header.reason, "asked");
    assert_eq!(replay(&dump).expect("replays").divergence, None);
    // The replica halts (here by hand, as a host does when its apply thread died; a storage
    // or state machine failure takes the same way): the recorder hears it and dumps once.
    r.halt("the apply thread stopped".into());
    r.halt("again".into());
    let mut files: Vec<_> = std::fs::read_dir(flights.path())
        .expect("listable")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "qflt") && *p != asked.path)
        .collect();
    assert_eq!(files.len(), 1, "one dump on the halt: {files:?}");
    let dump = read_dump(&files.remove(0)).expect("reads");
    assert_eq!(dump.header.reason, "halt: the apply thread stopped");
    let report = replay(&dump).expect("replays");
    assert_eq!(report.divergence, None, "{report:?}");
    assert!(report.inputs >= 10, "{report:?}");
}

/// Builds a replica's consensus core (`Raft::new`, or the flight recorder around it).
type MakeCore<C> = fn(quorate_core::Config, RocksLog, Instant) -> Result<C, quorate_core::CoreError>;

/// Three replicas on RocksDB driven by hand (messages delivered at the next step); node 3 is
/// down while its slot is `None`. `C`: their cores, as `make` builds them.
struct Trio<C: Core<RocksLog>> {
    nodes: Vec<Option<Replica<KvMachine, RocksLog, C>>>,
    dirs: Vec<tempfile::TempDir>,
    config: Configuration,
    now: Instant,
    wire: Vec<WireMessage>,
    make: MakeCore<C>,
    /// The replicas' snapshot images (the node's peers send whole files).
    layout: quorate_runtime::ImageLayout,
    /// How leaders send snapshots.
    format: quorate_runtime::TransferFormat,
    /// Every message crosses the node's wire: mapped to the node's message
    /// (`peer_network::to_node`), encoded and decoded by the node's codec, and mapped back
    /// with the sender as a transport names it (`peer_network::from_peer`).
    node_wire: bool,
    /// Messages that crossed the node's wire, by the node's message kind.
    crossed: std::collections::BTreeMap<u16, u64>,
}

impl<C: Core<RocksLog>> Trio<C> {
    fn new(make: MakeCore<C>) -> Trio<C> {
        let config = Configuration::with_voters([node(1), node(2), node(3)]).expect("valid");
        let dirs = (0..3).map(|_| tempfile::tempdir().expect("a temp dir")).collect();
        Trio {
            nodes: vec![None, None, None],
            dirs,
            config,
            now: Instant::ZERO,
            wire: Vec::new(),
            make,
            layout: quorate_runtime::ImageLayout::Data,
            format: quorate_runtime::TransferFormat::Acknowledged,
            node_wire: false,
            crossed: std::collections::BTreeMap::new(),
        }
    }

    fn cfg(id: NodeId) -> Config {
        let mut cfg = Config::new(id);
        cfg.raft.seed = id.get();
        cfg.raft.snapshot_entries_threshold = 5;
        cfg.raft.compaction_tail_entries = 1;
        cfg
    }

    fn start(&mut self, i: usize) {
        let log = RocksLog::open_with_layout(
            self.dirs[i].path(),
            StoreOptions::with_bootstrap(self.config.clone()),
            self.layout,
        )
        .expect("opens");
        let sm = KvMachine::new(log.store().clone());
        let id = node(i as u64 + 1);
        let mut cfg = Self::cfg(id);
        cfg.snapshot_transfer = self.format;
        if self.node_wire {
            // Small pieces, so that a snapshot takes many.
            cfg.snapshot_chunk_bytes = 64;
        }
        self.nodes[i] = Some(Replica::with_core(cfg, log, sm, self.now, self.make).expect("starts"));
    }

    /// `m` as the recipient's transport hands it over (the node's wire, when `node_wire`).
    fn cross(&mut self, m: WireMessage) -> WireMessage {
        use crate::peer_network::{FromPeer, from_peer, to_node};
        use quorate_transport::WireMessage as _;
        if !self.node_wire {
            return m;
        }
        let from = m.from();
        let (to, sent, _) = to_node(m).expect("a message the node's peers take");
        let mut bytes = Vec::new();
        sent.encode(&mut bytes).expect("encodes");
        *self.crossed.entry(sent.kind().0).or_default() += 1;
        let got =
            quorate_api::NodeMessage::decode(quorate_api::PROTOCOL_VERSION, sent.kind(), &bytes).expect("decodes");
        match from_peer(to, from, got) {
            FromPeer::Runtime(m) => m,
            other => panic!("not the runtime's: {other:?}"),
        }
    }

    fn step(&mut self) {
        let mut t = self.now.0 + 10_000_000;
        for d in self.nodes.iter().flatten().filter_map(Replica::next_deadline) {
            t = t.min(d.0);
        }
        self.now = Instant(t.max(self.now.0 + 1_000_000));
        let now = self.now;
        for m in std::mem::take(&mut self.wire) {
            let to = m.to().get() as usize - 1;
            if self.nodes[to].is_none() {
                continue;
            }
            let m = self.cross(m);
            if let Some(r) = &mut self.nodes[to] {
                r.receive(now, m);
            }
        }
        let mut out = Vec::new();
        for r in self.nodes.iter_mut().flatten() {
            r.tick(now);
            r.process(now, &mut out);
        }
        self.wire = out;
    }

    fn run_until(&mut self, steps: usize, done: impl Fn(&Trio<C>) -> bool) -> bool {
        (0..steps).any(|_| {
            self.step();
            done(self)
        })
    }

    fn leader(&mut self) -> Option<&mut Replica<KvMachine, RocksLog, C>> {
        self.nodes.iter_mut().flatten().find(|r| r.status().role == Role::Leader)
    }

    fn state(&self, i: usize) -> Option<KvState> {
        self.nodes[i].as_ref().map(|r| kv_state(r.state_machine().expect("inline")))
    }
}

#[test]
fn a_follower_installs_the_kv_state_from_a_snapshot_and_an_interrupted_install_again() {
    install_scenario(Trio::new(quorate_core::Raft::new));
}

/// The same three replicas, each under the node's flight recorder: every running core — the
/// leader, a follower, and node 3 since its restart over an interrupted install — dumps a
/// recording (messages, proposals, snapshots taken and sent) that replays without a
/// divergence.
#[test]
fn three_runtime_replicas_under_the_flight_recorder_replay_exactly() {
    use crate::flight::{Recorded, decode_dump, replay};
    let make: MakeCore<Recorded<RocksLog>> = |cfg, storage, now| Recorded::new(cfg, storage, now, None, 64 << 20);
    let mut trio = install_scenario(Trio::new(make));
    // A little more life, so that node 3 (just restarted) hears from the leader too.
    assert!(!trio.run_until(50, |_| false));
    let (mut taken, mut all_messages) = (0, 0);
    for r in trio.nodes.iter().flatten() {
        let dump = decode_dump(&r.core_wrapper().dump_bytes("test")).expect("decodes");
        let messages = dump.inputs.iter().filter(|i| matches!(i, crate::flight::Input::Message { .. })).count();
        taken += dump.inputs.iter().filter(|i| matches!(i, crate::flight::Input::SnapshotTaken { .. })).count();
        assert!(messages > 0, "node {}: its messages were recorded", r.id());
        all_messages += messages;
        let report = replay(&dump).expect("replays");
        assert_eq!(report.divergence, None, "node {}: {report:?}", r.id());
        assert_eq!(report.inputs, dump.inputs.len());
    }
    assert!(taken > 0, "a snapshot was taken under the recorder");
    assert!(all_messages > 50, "{all_messages} messages recorded");
}

/// The node on the runtime: replicas whose images are the node's snapshot files, talking over
/// the node's own wire messages, transfer the key-value state in the node's resumable pieces
/// and in 0.1.0's stream — so they send and take what released nodes send and take. The file
/// node 3 installed is a snapshot file the node's own driver reads, and its CRC-32 is the one
/// the node's transfers compute (of the whole file).
#[test]
fn kv_replicas_on_the_nodes_snapshot_files_and_wire_transfer_in_pieces_and_in_streams() {
    use quorate_runtime::{ImageLayout, LogStorage, TransferFormat};
    for (format, kind) in [
        (TransferFormat::Acknowledged, quorate_api::kinds::SNAPSHOT_PIECE),
        (TransferFormat::Stream, quorate_api::kinds::SNAPSHOT_CHUNK),
    ] {
        let mut trio = Trio::new(quorate_core::Raft::new);
        trio.layout = ImageLayout::File;
        trio.format = format;
        trio.node_wire = true;
        let trio = install_scenario(trio);
        let pieces = trio.crossed.get(&kind.0).copied().unwrap_or(0);
        assert!(pieces > 5, "{format:?}: the snapshot went as the node's {kind:?}, in {pieces} pieces");
        if format == TransferFormat::Acknowledged {
            let acks = trio.crossed.get(&quorate_api::kinds::SNAPSHOT_ACK.0).copied().unwrap_or(0);
            assert!(acks > 0, "{format:?}: answered with the node's SnapshotAck");
        } else {
            assert!(!trio.crossed.contains_key(&quorate_api::kinds::SNAPSHOT_PIECE.0), "{format:?}: streams only");
        }
        let n3 = trio.nodes[2].as_ref().expect("running");
        let header = n3.storage().snapshot().expect("readable").expect("a snapshot");
        let store = n3.storage().store().clone();
        let path = store
            .snapshot_dir()
            .join(format!("snap-{:020}-{:020}.qsnap", header.meta.last.index.0, header.meta.last.term.0));
        let file = std::fs::read(&path).expect("node 3's snapshot file");
        assert_eq!((file.len() as u64, crc32fast::hash(&file)), (header.total_len, header.checksum), "{format:?}");
        let mut reader = quorate_storage::SnapshotReader::open(&path).expect("the node's reader opens it");
        std::io::copy(&mut reader, &mut std::io::sink()).expect("its data checks");
        assert_eq!(reader.meta(), &header.meta);
    }
}

/// Node 3 joins empty and catches up by a snapshot transfer, then crashes in an install and
/// is restored again; returns the trio, running.
fn install_scenario<C: Core<RocksLog>>(mut trio: Trio<C>) -> Trio<C> {
    trio.start(0);
    trio.start(1);
    assert!(trio.run_until(1_000, |t| t.nodes.iter().flatten().any(|r| r.status().role == Role::Leader)));
    let out: Log<KvOutput> = Log::default();
    for k in 0..20u32 {
        let now = trio.now;
        trio.leader().expect("a leader").propose(now, put(&format!("k{k:02}"), &k.to_string()), None, sink(&out));
        trio.step();
    }
    assert!(trio.run_until(1_000, |t| out.lock().unwrap().len() == 20 && t.state(0) == t.state(1)));
    assert!(results(&out).iter().all(Result::is_ok));
    let leader = trio.leader().expect("a leader");
    assert!(leader.status().snapshot_index > LogIndex(2), "the leader compacted past node 3's empty log");
    let expected = kv_state(leader.state_machine().expect("inline"));
    assert_eq!(expected.0.len(), 20);

    // Node 3 comes up empty: only a snapshot brings it up to date.
    trio.start(2);
    assert!(trio.run_until(3_000, |t| t.state(2).as_ref() == Some(&expected)), "node 3 caught up");
    let n3 = trio.nodes[2].as_ref().expect("running");
    assert_eq!(n3.transfer_stats().installs, 1, "by a snapshot install");
    let snapshot_at = n3.status().snapshot_index;
    assert!(snapshot_at > LogIndex::ZERO);
    // Entries after the snapshot are applied on top of it.
    let now = trio.now;
    trio.leader().expect("a leader").propose(now, put("after", "x"), None, sink(&out));
    let has_after = |s: &Option<KvState>| s.as_ref().is_some_and(|s| s.0.iter().any(|(k, _, _)| k == b"after"));
    assert!(trio.run_until(1_000, |t| (0..3).all(|i| has_after(&t.state(i))) && t.state(2) == t.state(0)));
    assert_eq!(results(&out).len(), 21);
    let expected = trio.state(0).expect("running");

    // A crash in the middle of an install on node 3: the state machine is cleared and marked.
    let n3 = trio.nodes[2].take().expect("running");
    let store = n3.storage().store().clone();
    drop(n3);
    let applied = store.applied_index();
    store.begin_sm_reinstall(applied).expect("marks");
    assert_eq!(store.sm_install_pending(), Some(applied));
    drop(store);
    // At start the runtime restores it from the stored snapshot, and the log after it is
    // applied again.
    trio.start(2);
    let n3 = trio.nodes[2].as_ref().expect("running");
    assert_eq!(n3.state_machine().expect("inline").interrupted_restore(), None, "the restore was finished");
    assert!(trio.run_until(1_000, |t| t.state(2).as_ref() == Some(&expected)), "node 3 has the state again");
    trio
}

/// The layer of pending writes over the store answers scans as the merge of the two, whatever
/// the page the store is read in: pending deletes hide stored keys, pending puts come in key
/// order, a limit of 1 (a probe) still finds the first live key past many hidden ones.
#[test]
fn the_pending_layer_merges_with_the_store_across_pages() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let voters = Configuration::with_voters([node(1)]).expect("valid");
    let log = RocksLog::open(dir.path(), StoreOptions::with_bootstrap(voters)).expect("opens");
    let store = log.store().clone();
    let key = |i: u32| quorate_log::record::sm_key(format!("k{i:04}").as_bytes());
    // 3,000 stored keys: more than two of the largest pages.
    let stored: Vec<SmOp> = (0..3000).map(|i| SmOp::Put { key: key(i), value: vec![1] }).collect();
    let term = quorate_log::Term(1);
    let entries: Vec<quorate_log::Entry> = (1..=3)
        .map(|i| quorate_log::Entry { index: LogIndex(i), term, payload: quorate_log::EntryPayload::Noop })
        .collect();
    let hard = quorate_log::HardState { term, vote: Some(node(1)), commit: LogIndex(3) };
    store.write(quorate_storage::PersistBatch::append(entries).with_hard_state(hard)).expect("log");
    for (i, chunk) in stored.chunks(1000).enumerate() {
        store.apply(LogIndex(i as u64 + 1), chunk.to_vec()).expect("applies");
    }
    let mut pending = BTreeMap::new();
    // The first 2,500 stored keys deleted, one put back, one new key between stored ones.
    for i in 0..2500 {
        pending.insert(key(i), None);
    }
    pending.insert(key(1200), Some(vec![2]));
    let between = [key(2600).as_slice(), b"x"].concat();
    pending.insert(between.clone(), Some(vec![3]));
    let layer = Layer { base: &store, pending: &pending };
    let first = layer.sm_scan_bounded(&key(0), 1, 1).expect("scans");
    assert_eq!(first, vec![(key(1200), vec![2])], "the probe finds the put-back key");
    let next = layer.sm_scan(&[key(1200).as_slice(), &[0]].concat(), 2).expect("scans");
    assert_eq!(next, vec![(key(2500), vec![1]), (key(2501), vec![1])], "past the hidden keys");
    let all = layer.sm_scan(&key(0), 10_000).expect("scans");
    assert_eq!(all.len(), 1 + 500 + 1);
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "in key order");
    assert!(all.contains(&(between, vec![3])));
    let bounded = layer.sm_scan_range(&key(2500), Some(&key(2503)), 100, usize::MAX).expect("scans");
    assert_eq!(bounded.len(), 3);
}
