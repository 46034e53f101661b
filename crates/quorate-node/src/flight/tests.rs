//! A deterministic 3-core cluster (in memory, seeded) run through elections, partitions and
//! writes with a recorder on every core; each core's recording must replay exactly, an
//! edited recording must diverge, and damaged files must be refused with clear errors.

use super::*;
use quorate_core::Role;
use quorate_log::Configuration;

const STEP: Duration = Duration::from_millis(5);

struct Sim {
    nodes: Vec<Recorded<MemStore>>,
    now: Instant,
    net: VecDeque<Message>,
    /// Per node: persist batches handed out, written and reported one step later.
    unpersisted: Vec<Vec<(IoId, PersistBatch)>>,
    /// A node cut off from the others (its messages in and out are dropped).
    isolated: Option<u64>,
    leaders: Vec<(u64, Term)>,
    proposals_ok: u64,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let ids: Vec<NodeId> = (1..=3).map(|i| NodeId::new(i).expect("non-zero")).collect();
        let voters = Configuration::with_voters(ids.clone()).expect("voters");
        let nodes = ids
            .iter()
            .map(|&id| {
                let mut cfg = CoreConfig::new(id);
                cfg.election_timeout_min = Duration::from_millis(100);
                cfg.heartbeat_interval = Duration::from_millis(20);
                cfg.seed = seed ^ id.get();
                cfg.snapshot_entries_threshold = 1_000_000;
                Recorded::new(cfg, MemStore::new(voters.clone()), Instant::ZERO, None, 64 << 20).expect("core")
            })
            .collect();
        Sim {
            nodes,
            now: Instant::ZERO,
            net: VecDeque::new(),
            unpersisted: vec![Vec::new(); 3],
            isolated: None,
            leaders: Vec::new(),
            proposals_ok: 0,
        }
    }

    fn cut(&self, a: NodeId, b: NodeId) -> bool {
        self.isolated.is_some_and(|i| a.get() == i || b.get() == i)
    }

    fn step(&mut self, propose: bool) {
        self.now = Instant(self.now.0 + STEP.as_nanos() as u64);
        let now = self.now;
        for (i, n) in self.nodes.iter_mut().enumerate() {
            // Last step's batches are durable now, in order.
            for (io, batch) in std::mem::take(&mut self.unpersisted[i]) {
                n.storage().write(batch).expect("persist");
                n.persisted(now, io);
            }
            if n.poll_timeout().is_some_and(|t| t <= now) {
                n.handle_timeout(now);
            }
            if propose && n.role() == Role::Leader && n.propose(now, Data::from("w")).is_ok() {
                self.proposals_ok += 1;
            }
            for _ in 0..16 {
                if !n.has_ready() {
                    break;
                }
                let rd = n.ready();
                if let Some(p) = &rd.persist {
                    self.unpersisted[i].push((p.io, persist_batch(p)));
                }
                self.net.extend(rd.messages);
            }
            if n.role() == Role::Leader && self.leaders.last() != Some(&(n.id().get(), n.term())) {
                self.leaders.push((n.id().get(), n.term()));
            }
        }
        for m in std::mem::take(&mut self.net) {
            if !self.cut(m.from, m.to) {
                self.nodes[(m.to.get() - 1) as usize].handle_message(now, m);
            }
        }
    }

    fn leader(&self) -> Option<u64> {
        self.nodes.iter().find(|n| n.role() == Role::Leader).map(|n| n.id().get())
    }
}

/// Elections, writes, the leader cut off (a new election), healed, more writes.
fn run(seed: u64) -> Sim {
    let mut sim = Sim::new(seed);
    for k in 0..3 {
        for s in 0..400 {
            sim.step(s % 3 == 0);
        }
        if k < 2 {
            sim.isolated = sim.leader();
            for _ in 0..200 {
                sim.step(false);
            }
            sim.isolated = None;
        }
    }
    sim
}

#[test]
fn every_core_replays_exactly() {
    let sim = run(7);
    assert!(sim.leaders.len() >= 3, "several elections: {:?}", sim.leaders);
    assert!(sim.proposals_ok > 100, "writes were proposed: {}", sim.proposals_ok);
    assert!(sim.nodes.iter().all(|n| n.commit_index().0 > 100), "writes committed");
    for n in &sim.nodes {
        let bytes = n.dump_bytes("test");
        let dump = decode_dump(&bytes).expect("decodes");
        assert_eq!(dump.inputs.len(), n.recorded_inputs());
        assert_eq!(dump.header.reason, "test");
        let report = replay(&dump).expect("replays");
        assert_eq!(report.divergence, None, "node {}", n.id());
        assert_eq!(report.inputs, dump.inputs.len());
        assert!(report.readies > 100 && report.compared >= report.readies, "{report:?}");
        // Deterministic: again, the same report.
        assert_eq!(replay(&dump).expect("replays"), report);
    }
}

#[test]
fn an_edited_recording_diverges() {
    let sim = run(11);
    let dump = decode_dump(&sim.nodes[0].dump_bytes("test")).expect("decodes");
    // Drop one received message half-way: the core's later outputs must differ.
    let mut edited = dump.clone();
    let k = edited.inputs.iter().enumerate().filter(|(_, i)| matches!(i, Input::Message { .. })).nth(200).expect("m").0;
    edited.inputs.remove(k);
    let report = replay(&decode_dump(&encode_dump(&edited)).expect("re-encoded")).expect("replays");
    let d = report.divergence.expect("divergence detected");
    assert!(d.at >= k, "{d:?} before the edit at {k}");
    // A changed proposal result digest is caught at that very input.
    let mut edited = dump.clone();
    let (k, input) =
        edited.inputs.iter_mut().enumerate().find(|(_, i)| matches!(i, Input::Propose { .. })).expect("a proposal");
    if let Input::Propose { out, .. } = input {
        *out ^= 1;
    }
    let d = replay(&edited).expect("replays").divergence.expect("divergence");
    assert_eq!((d.at, d.kind), (k, "propose"));
}

#[test]
fn damaged_files_get_clear_errors() {
    let sim = run(3);
    let bytes = sim.nodes[1].dump_bytes("test");
    let e = decode_dump(&bytes[..bytes.len() - 5]).unwrap_err().to_string();
    assert!(e.contains("truncated"), "{e}");
    // Cut exactly at a frame boundary (the end marker gone): still seen as truncated.
    let e = decode_dump(&bytes[..bytes.len() - TRAILER_BYTES]).unwrap_err().to_string();
    assert!(e.contains("end marker"), "{e}");
    // A frame dropped from the middle of an otherwise whole file: the count disagrees.
    let mut dump = decode_dump(&bytes).expect("a whole recording decodes");
    let last = dump.inputs.len() as u64;
    dump.inputs.pop();
    let mut short = encode_dump(&dump);
    let n = short.len();
    short[n - 8..].copy_from_slice(&last.to_le_bytes());
    let e = decode_dump(&short).unwrap_err().to_string();
    assert!(e.contains("end marker says"), "{e}");
    let e = decode_dump(b"garbage that is no recording").unwrap_err().to_string();
    assert!(e.contains("magic"), "{e}");
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x20;
    let e = decode_dump(&flipped).unwrap_err().to_string();
    assert!(e.contains("checksum") || e.contains("claims") || e.contains("cut short"), "{e}");
    // Arbitrary bytes behind a valid magic: an error, never a panic.
    let mut rng = quorate_core::SplitMix64::new(5);
    for len in 0..300usize {
        let mut b = b"QFLT".to_vec();
        b.extend_from_slice(&FORMAT.to_le_bytes());
        b.extend((0..len).map(|_| rng.next_u64() as u8));
        assert!(decode_dump(&b).is_err());
    }
    let dir = tempfile::tempdir().expect("dir");
    let e = read_dump(&dir.path().join("missing.qflt")).unwrap_err().to_string();
    assert!(e.contains("missing.qflt"), "{e}");
}
