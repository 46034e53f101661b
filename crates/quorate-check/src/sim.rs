//! Deterministic simulation of a cluster of `quorate-core` nodes in one thread.
//!
//! One seed decides everything: message delays, loss, duplication and reordering;
//! symmetric and one-way partitions; crashes that lose every write not yet persisted;
//! failed fsyncs (the node halts instead of acknowledging); clock drift within the
//! configured bound; and the clients' proposals and reads. Every step is checked against
//! the safety properties; each seed's client history is checked for linearizability; after
//! the faults heal, the cluster must elect a leader and commit again within a bound.

use crate::history::{Completion, OpKind, Operation, ReadCompletion};
use crate::invariants::{
    ElectionSafety, LeaderCompleteness, StateMachineSafety, Violation, check_durable, check_log_matching,
};
use crate::kv::{KvCommand, KvStore};
use crate::linearizability;
use quorate_core::{
    ConfChange, Config, Instant, Message, ProposeError, Raft, ReadId, ReadLevel, Role, SendSnapshot, SplitMix64,
};
use quorate_log::{Configuration, Data, EntryId, EntryPayload, LogIndex, MemLog, NodeId, SnapshotMeta, Term};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Duration;

const MS: u64 = 1_000_000;

/// Settings of a simulation run; [`SimConfig::for_seed`] derives a varied one per seed.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Cluster size.
    pub nodes: usize,
    /// Most events processed.
    pub steps_max: u64,
    /// Simulated time during which faults are injected; afterwards everything heals.
    pub fault_time_ns: u64,
    /// After healing, a leader and a new commit must appear within this time.
    pub recovery_bound_ns: u64,
    /// Concurrent clients.
    pub clients: usize,
    /// Keys the clients touch.
    pub keys: usize,
    /// Probability a message is lost.
    pub loss: f64,
    /// Probability a message is duplicated.
    pub duplicate: f64,
    /// Message delay range (ns): uniform in `[min, max]`; reordering follows from it.
    pub delay_ns: (u64, u64),
    /// Disk write latency range (ns).
    pub disk_ns: (u64, u64),
    /// Mean time between nemesis actions (ns).
    pub nemesis_interval_ns: u64,
    /// Probability that a persist batch fails (the node halts and restarts later).
    pub fsync_failure: f64,
    /// Clock drift of each node, in parts per million (uniform in ±this).
    pub drift_ppm: i64,
    /// Enable lease reads (with a drift bound that covers `drift_ppm`).
    pub lease_reads: bool,
    /// Print events as they happen.
    pub verbose: bool,
    /// A deliberate driver bug, to show that the checkers catch it.
    pub bug: Option<InjectedBug>,
    /// Nodes that may ever exist (initial members plus nodes added later).
    pub max_nodes: usize,
    /// Membership changes by the nemesis (add learner, promote, remove, replace).
    pub reconfig: bool,
    /// Applied entries after which a node snapshots and compacts its log.
    pub snapshot_entries: u64,
    /// Entries kept behind a snapshot.
    pub compaction_tail: u64,
}

/// Deliberate mistakes a driver of the core could make; tests inject them and expect the
/// checkers to report a violation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum InjectedBug {
    /// Report a persist batch done as soon as it is handed out, before it reaches the disk.
    AckBeforePersist,
    /// Serve linearizable reads from local state at once, without ReadIndex.
    LocalReads,
}

impl SimConfig {
    /// A configuration varied by `seed`: cluster size, loss, duplication, delays, drift and
    /// whether lease reads are used all depend on it.
    #[must_use]
    pub fn for_seed(seed: u64, steps_max: u64) -> SimConfig {
        let mut r = SplitMix64::new(seed ^ 0xC0FF_EE00);
        let nodes = if r.chance(0.3) { 5 } else { 3 };
        SimConfig {
            nodes,
            steps_max,
            fault_time_ns: 4_000 * MS,
            recovery_bound_ns: 3_000 * MS,
            clients: 2 + r.below(4) as usize,
            keys: 1 + r.below(4) as usize,
            loss: [0.0, 0.01, 0.05, 0.1][r.below(4) as usize],
            duplicate: [0.0, 0.01, 0.05][r.below(3) as usize],
            delay_ns: (MS / 10, [MS, 5 * MS, 20 * MS][r.below(3) as usize]),
            disk_ns: (MS / 20, [MS, 4 * MS][r.below(2) as usize]),
            nemesis_interval_ns: [200 * MS, 500 * MS][r.below(2) as usize],
            fsync_failure: [0.0, 0.0005][r.below(2) as usize],
            drift_ppm: [0, 1_000, 20_000][r.below(3) as usize],
            lease_reads: r.chance(0.5),
            verbose: false,
            bug: None,
            max_nodes: nodes + 2,
            reconfig: true,
            snapshot_entries: [20, 50, 200][r.below(3) as usize],
            compaction_tail: [0, 5, 30][r.below(3) as usize],
        }
    }
}

/// What one seed did and found.
#[derive(Debug, Default)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Events processed.
    pub steps: u64,
    /// Simulated time reached (ns).
    pub sim_time_ns: u64,
    /// Highest index committed anywhere.
    pub committed: u64,
    /// Terms that had a leader.
    pub leaders: usize,
    /// Crashes injected (including failed fsyncs).
    pub crashes: u64,
    /// Partitions injected.
    pub partitions: u64,
    /// Client operations recorded.
    pub ops: usize,
    /// Client operations that completed successfully.
    pub ops_ok: usize,
    /// Lease reads served.
    pub lease_reads: u64,
    /// Membership changes appended (each step of a joint change counts once).
    pub conf_changes: u64,
    /// Membership changes refused as unsafe or premature.
    pub conf_refusals: u64,
    /// Snapshots taken.
    pub snapshots: u64,
    /// Snapshots installed from a leader.
    pub installs: u64,
    /// The client history.
    pub history: Vec<Operation>,
    /// Every violation found (the run stops at the first safety violation).
    pub violations: Vec<Violation>,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Deliver(usize),
    DiskDone { node: usize, incarnation: u64 },
    Client(usize),
    Nemesis,
    Restart { node: usize },
    Heal,
    Snapshot(usize),
}

/// A snapshot in transit: (from, to, sender's term, metadata, data).
type Transfer = (usize, usize, Term, SnapshotMeta, KvStore);

struct Node {
    id: NodeId,
    raft: Option<Raft<MemLog>>,
    /// What survives a crash: the log and hard state as persisted.
    incarnation: u64,
    drift_ppm: i64,
    /// Persist batches in flight, in order, with their completion times.
    disk: std::collections::VecDeque<(u64, quorate_core::Persist)>,
    kv: KvStore,
    applied: LogIndex,
    /// Reads confirmed but waiting for apply: (read id, index).
    parked_reads: Vec<(ReadId, LogIndex)>,
    /// A crashed node's durable state, kept until restart.
    durable: Option<MemLog>,
    /// The latest snapshot, durable: metadata and state-machine data.
    snapshot: Option<(SnapshotMeta, KvStore)>,
    /// A received snapshot staged until its install is persisted.
    staged: Option<(SnapshotMeta, KvStore)>,
}

#[derive(Debug)]
enum Waiting {
    Write { node: usize, id: EntryId, incarnation: u64 },
    Read { node: usize, read: ReadId, incarnation: u64, lease: bool },
}

#[derive(Debug)]
struct Client {
    guess: usize,
    op_seq: u64,
    pending: Option<(Operation, Waiting, u64)>,
    last_value: BTreeMap<String, String>,
}

/// A running simulation.
pub struct Sim {
    cfg: SimConfig,
    seed: u64,
    rng: SplitMix64,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, Event)>>,
    messages: BTreeMap<usize, Message>,
    transfers: BTreeMap<usize, Transfer>,
    next_msg: usize,
    nodes: Vec<Node>,
    blocked: BTreeSet<(usize, usize)>,
    clients: Vec<Client>,
    next_read: u64,
    history: Vec<Operation>,
    election: ElectionSafety,
    completeness: LeaderCompleteness,
    sm: StateMachineSafety,
    known_leaders: BTreeSet<(u64, usize)>,
    report: SimReport,
    healed_at: Option<u64>,
    commit_at_heal: LogIndex,
    recovered: bool,
}

impl Sim {
    /// Builds a simulation of `cfg` driven by `seed`.
    #[must_use]
    pub fn new(seed: u64, cfg: SimConfig) -> Sim {
        let mut rng = SplitMix64::new(seed);
        let ids: Vec<NodeId> = (1..=cfg.nodes as u64).filter_map(NodeId::new).collect();
        let voters = Configuration { voters: ids.iter().copied().collect(), ..Configuration::default() };
        let mut nodes = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let drift =
                if cfg.drift_ppm == 0 { 0 } else { rng.below(2 * cfg.drift_ppm as u64 + 1) as i64 - cfg.drift_ppm };
            let mut n = Node {
                id: *id,
                raft: None,
                incarnation: 0,
                drift_ppm: drift,
                disk: std::collections::VecDeque::new(),
                kv: KvStore::default(),
                applied: LogIndex::ZERO,
                parked_reads: Vec::new(),
                durable: Some(MemLog::new(voters.clone())),
                snapshot: None,
                staged: None,
            };
            n.incarnation = i as u64 * 1000;
            nodes.push(n);
        }
        let clients = (0..cfg.clients)
            .map(|c| Client { guess: c % cfg.nodes, op_seq: 0, pending: None, last_value: BTreeMap::new() })
            .collect();
        let mut sim = Sim {
            seed,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            messages: BTreeMap::new(),
            transfers: BTreeMap::new(),
            next_msg: 0,
            nodes,
            blocked: BTreeSet::new(),
            clients,
            next_read: 1,
            history: Vec::new(),
            election: ElectionSafety::default(),
            completeness: LeaderCompleteness::default(),
            sm: StateMachineSafety::default(),
            known_leaders: BTreeSet::new(),
            report: SimReport { seed, ..SimReport::default() },
            healed_at: None,
            commit_at_heal: LogIndex::ZERO,
            recovered: false,
            cfg,
        };
        for i in 0..sim.nodes.len() {
            sim.start_node(i);
        }
        for c in 0..sim.clients.len() {
            let t = sim.rng.below(50 * MS);
            sim.schedule(t, Event::Client(c));
        }
        let t = sim.cfg.nemesis_interval_ns;
        sim.schedule(t, Event::Nemesis);
        let heal = sim.cfg.fault_time_ns;
        sim.schedule(heal, Event::Heal);
        sim
    }

    fn core_config(&self, id: NodeId) -> Config {
        let mut c = Config::new(id);
        c.election_timeout_min = Duration::from_millis(150);
        c.heartbeat_interval = Duration::from_millis(30);
        c.msg_bytes_max = 4096;
        c.inflight_msgs_max = 8;
        c.inflight_bytes_max = 16 * 1024;
        c.uncommitted_bytes_max = 64 * 1024;
        c.seed = self.seed.wrapping_mul(31).wrapping_add(id.get());
        c.snapshot_entries_threshold = self.cfg.snapshot_entries;
        c.compaction_tail_entries = self.cfg.compaction_tail;
        c.promote_lag_entries_max = 20;
        c.snapshot_send_timeout = Duration::from_millis(500);
        if self.cfg.lease_reads {
            // Drift over one election timeout: 150 ms × 2 × drift_ppm, plus margin.
            c.lease_clock_drift_max = Some(Duration::from_millis(20));
        }
        c
    }

    fn local_time(&self, node: usize, t: u64) -> Instant {
        let ppm = i128::from(self.nodes[node].drift_ppm);
        Instant((i128::from(t) + i128::from(t) * ppm / 1_000_000) as u64)
    }

    fn sim_time(&self, node: usize, local: Instant) -> u64 {
        let ppm = i128::from(self.nodes[node].drift_ppm);
        let t = i128::from(local.0) * 1_000_000 / (1_000_000 + ppm);
        (t as u64).saturating_add(1)
    }

    fn schedule(&mut self, at: u64, ev: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, ev)));
    }

    fn log(&self, s: impl FnOnce() -> String) {
        if self.cfg.verbose {
            println!("[{:>7.1} ms] {}", self.now as f64 / MS as f64, s());
        }
    }

    fn start_node(&mut self, i: usize) {
        let durable = self.nodes[i].durable.take().unwrap_or_default();
        let id = self.nodes[i].id;
        let mut cfg = self.core_config(id);
        let snap = self.nodes[i].snapshot.clone();
        if let Some((meta, _)) = &snap {
            cfg.applied = meta.last.index;
            cfg.snapshot = Some(meta.clone());
        }
        let now = self.local_time(i, self.now);
        match Raft::new(cfg, durable, now) {
            Ok(r) => self.nodes[i].raft = Some(r),
            Err(e) => {
                self.report.violations.push(Violation::Durability { node: id, detail: format!("cannot restart: {e}") })
            }
        }
        let n = &mut self.nodes[i];
        n.incarnation += 1;
        n.kv = snap.as_ref().map(|(_, kv)| kv.clone()).unwrap_or_default();
        n.applied = snap.as_ref().map_or(LogIndex::ZERO, |(m, _)| m.last.index);
        n.parked_reads.clear();
        n.disk.clear();
        n.staged = None;
    }

    /// Adds a node slot that joins with an empty configuration (it learns the real one
    /// from the leader once added as a learner).
    fn new_node(&mut self) -> Option<usize> {
        if self.nodes.len() >= self.cfg.max_nodes {
            return None;
        }
        let i = self.nodes.len();
        let id = NodeId::new(i as u64 + 1)?;
        self.nodes.push(Node {
            id,
            raft: None,
            incarnation: i as u64 * 1000,
            drift_ppm: 0,
            disk: std::collections::VecDeque::new(),
            kv: KvStore::default(),
            applied: LogIndex::ZERO,
            parked_reads: Vec::new(),
            durable: Some(MemLog::new(Configuration::default())),
            snapshot: None,
            staged: None,
        });
        self.start_node(i);
        Some(i)
    }

    fn crash(&mut self, i: usize, why: &str) {
        let Some(raft) = self.nodes[i].raft.take() else { return };
        self.report.crashes += 1;
        self.nodes[i].durable = Some(raft.storage().clone());
        self.nodes[i].disk.clear();
        self.nodes[i].incarnation += 1;
        let id = self.nodes[i].id;
        self.log(|| format!("node {id} crashes ({why}); unpersisted writes are lost"));
        let back = self.now + 50 * MS + self.rng.below(1_000 * MS);
        if self.healed_at.is_none() {
            self.schedule(back, Event::Restart { node: i });
        }
    }

    /// Runs until the step budget or the time budget ends, or a safety violation.
    pub fn run(mut self) -> SimReport {
        let end_time = self.cfg.fault_time_ns + self.cfg.recovery_bound_ns + 1_000 * MS;
        while self.report.steps < self.cfg.steps_max && self.report.violations.is_empty() {
            // The next timer of any node, or the next queued event.
            let mut next_timer: Option<(u64, usize)> = None;
            for i in 0..self.nodes.len() {
                if let Some(t) = self.nodes[i].raft.as_ref().and_then(Raft::poll_timeout) {
                    let st = self.sim_time(i, t).max(self.now);
                    if next_timer.is_none_or(|(b, _)| st < b) {
                        next_timer = Some((st, i));
                    }
                }
            }
            let next_event = self.queue.peek().map(|Reverse((t, _, _))| *t);
            let take_timer = match (next_timer, next_event) {
                (Some((tt, _)), Some(te)) => tt < te,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if take_timer {
                let (t, i) = next_timer.unwrap_or_default();
                self.now = self.now.max(t);
                let local = self.local_time(i, self.now);
                if let Some(r) = self.nodes[i].raft.as_mut() {
                    r.handle_timeout(local);
                }
                self.drain(i);
            } else if let Some(Reverse((t, _, ev))) = self.queue.pop() {
                self.now = self.now.max(t);
                self.handle_event(ev);
            }
            self.report.steps += 1;
            if self.now > end_time {
                break;
            }
            if self.report.steps.is_multiple_of(2048) {
                self.check_logs();
            }
            self.check_recovery();
        }
        self.finish()
    }

    fn handle_event(&mut self, ev: Event) {
        match ev {
            Event::Deliver(k) => {
                let Some(m) = self.messages.remove(&k) else { return };
                let to = (m.to.get() - 1) as usize;
                let local = self.local_time(to, self.now);
                if let Some(r) = self.nodes[to].raft.as_mut() {
                    r.handle_message(local, m);
                    self.drain(to);
                }
            }
            Event::DiskDone { node, incarnation } => self.disk_done(node, incarnation),
            Event::Client(c) => self.client_step(c),
            Event::Nemesis => self.nemesis(),
            Event::Restart { node } => {
                if self.nodes[node].raft.is_none() {
                    let id = self.nodes[node].id;
                    self.log(|| format!("node {id} restarts from its stable storage"));
                    self.start_node(node);
                }
            }
            Event::Heal => self.heal(),
            Event::Snapshot(k) => {
                let Some((from, to, term, meta, kv)) = self.transfers.remove(&k) else { return };
                let local = self.local_time(to, self.now);
                let from_id = self.nodes[from].id;
                let Some(r) = self.nodes[to].raft.as_mut() else { return };
                if let Ok(true) = r.install_snapshot(local, from_id, term, meta.clone()) {
                    self.nodes[to].staged = Some((meta, kv));
                }
                self.drain(to);
            }
        }
    }

    fn disk_done(&mut self, i: usize, incarnation: u64) {
        if self.nodes[i].incarnation != incarnation || self.nodes[i].raft.is_none() {
            return;
        }
        let Some((_, batch)) = self.nodes[i].disk.pop_front() else { return };
        if self.healed_at.is_none() && self.rng.chance(self.cfg.fsync_failure) {
            // The write failed: the node must not acknowledge it; it halts.
            self.crash(i, "fsync failed");
            return;
        }
        if let Some(meta) = &batch.install {
            // Install the staged data atomically with the metadata.
            let id = self.nodes[i].id;
            match self.nodes[i].staged.take() {
                Some((m, kv)) if m == *meta => {
                    if let Err(v) = self.sm.observe_snapshot(id, meta.last) {
                        self.report.violations.push(v);
                        return;
                    }
                    self.nodes[i].kv = kv.clone();
                    self.nodes[i].applied = meta.last.index;
                    self.nodes[i].snapshot = Some((m, kv));
                    self.report.installs += 1;
                    self.log(|| format!("node {id} installs a snapshot up to {}", meta.last.index));
                }
                _ => {
                    self.report.violations.push(Violation::Durability {
                        node: id,
                        detail: format!("asked to install snapshot {:?} that was never staged", meta.last),
                    });
                    return;
                }
            }
        }
        let local = self.local_time(i, self.now);
        let Some(r) = self.nodes[i].raft.as_mut() else { return };
        let store = r.storage_mut();
        if let Some(meta) = batch.install.clone() {
            store.apply_snapshot(meta);
        }
        if let Some(meta) = batch.compact.clone() {
            store.apply_snapshot(meta);
        }
        if let Some(hs) = batch.hard_state {
            store.set_hard_state(hs);
        }
        if let Err(e) = store.append(&batch.entries) {
            let id = self.nodes[i].id;
            self.report.violations.push(Violation::Durability { node: id, detail: format!("bad persist batch: {e}") });
            return;
        }
        r.persisted(local, batch.io);
        self.drain(i);
    }

    /// Handles every `Ready` of node `i` until it has nothing more.
    fn drain(&mut self, i: usize) {
        for _ in 0..64 {
            let Some(r) = self.nodes[i].raft.as_mut() else { return };
            if !r.has_ready() {
                break;
            }
            let ready = r.ready();
            if ready.is_empty() {
                break;
            }
            self.observe_roles(i);
            if let Some(p) = ready.persist {
                if self.cfg.bug == Some(InjectedBug::AckBeforePersist) {
                    let local = self.local_time(i, self.now);
                    if let Some(r) = self.nodes[i].raft.as_mut() {
                        r.persisted(local, p.io);
                    }
                }
                let lat = self.cfg.disk_ns.0 + self.rng.below(self.cfg.disk_ns.1 - self.cfg.disk_ns.0 + 1);
                let prev = self.nodes[i].disk.back().map_or(0, |(t, _)| *t);
                let done = (self.now + lat).max(prev);
                self.nodes[i].disk.push_back((done, p));
                let inc = self.nodes[i].incarnation;
                self.schedule(done, Event::DiskDone { node: i, incarnation: inc });
            }
            for m in ready.messages {
                if let Some(r) = self.nodes[i].raft.as_ref() {
                    let store = r.storage();
                    let hs = store.hard_state();
                    if let Err(v) = check_durable(&m, hs, store) {
                        self.report.violations.push(v);
                        return;
                    }
                }
                self.send(i, m);
            }
            for e in ready.committed {
                let id = self.nodes[i].id;
                self.completeness.observe_commit(e.id());
                if let Err(v) = self.sm.observe_apply(id, &e) {
                    self.report.violations.push(v);
                    return;
                }
                let mut applied_ok = true;
                if let EntryPayload::Command(d) = &e.payload
                    && let Some(cmd) = KvCommand::decode(d)
                {
                    applied_ok = self.nodes[i].kv.apply(&cmd);
                }
                self.nodes[i].applied = e.index;
                self.resolve_writes(i, e.id(), applied_ok);
            }
            for rr in ready.reads {
                self.nodes[i].parked_reads.push((rr.id, rr.index));
            }
            for f in ready.failed_reads {
                self.fail_read(i, f.id);
            }
            self.serve_parked_reads(i);
            if let Some(meta) = ready.take_snapshot {
                let id = self.nodes[i].id;
                if meta.last.index != self.nodes[i].applied {
                    self.report.violations.push(Violation::Durability {
                        node: id,
                        detail: format!(
                            "asked to snapshot at {} with {} applied",
                            meta.last.index, self.nodes[i].applied
                        ),
                    });
                    return;
                }
                if let Err(v) = self.sm.observe_snapshot(id, meta.last) {
                    self.report.violations.push(v);
                    return;
                }
                self.nodes[i].snapshot = Some((meta.clone(), self.nodes[i].kv.clone()));
                self.report.snapshots += 1;
                let local = self.local_time(i, self.now);
                if let Some(r) = self.nodes[i].raft.as_mut() {
                    r.snapshot_taken(local, meta);
                }
            }
            for SendSnapshot { to, meta } in ready.send_snapshots {
                self.send_snapshot(i, to, meta);
            }
        }
        self.observe_roles(i);
    }

    fn send_snapshot(&mut self, from: usize, to: NodeId, meta: SnapshotMeta) {
        let to_i = (to.get() - 1) as usize;
        let term = self.nodes[from].raft.as_ref().map_or(Term::ZERO, Raft::term);
        let Some((m, kv)) = self.nodes[from].snapshot.clone() else { return };
        if m != meta || to_i >= self.nodes.len() || self.blocked.contains(&(from, to_i)) {
            return;
        }
        if self.healed_at.is_none() && self.rng.chance(self.cfg.loss * 3.0) {
            // The stream broke: the leader learns it and probes again later.
            let local = self.local_time(from, self.now);
            if let Some(r) = self.nodes[from].raft.as_mut() {
                r.snapshot_send_failed(local, to);
            }
            return;
        }
        // A stream takes longer than a message: proportional to the state's size.
        let at = self.now + self.cfg.delay_ns.1 + (kv.len() as u64 + 1) * (MS / 10);
        let k = self.next_msg;
        self.next_msg += 1;
        self.transfers.insert(k, (from, to_i, term, meta, kv));
        self.schedule(at, Event::Snapshot(k));
    }

    fn observe_roles(&mut self, i: usize) {
        let Some(r) = self.nodes[i].raft.as_ref() else { return };
        if r.role() != Role::Leader {
            return;
        }
        let term = r.term();
        if let Err(v) = self.election.observe_leader(r.id(), term) {
            self.report.violations.push(v);
            return;
        }
        if self.known_leaders.insert((term.0, i)) {
            let id = r.id();
            let floor = r.status().first_index.prev();
            let res = self.completeness.check_leader(id, term, floor, |idx| r.entry_term(idx).ok());
            if let Err(v) = res {
                self.report.violations.push(v);
            }
            self.log(|| format!("node {id} becomes leader of term {term}"));
        }
    }

    fn send(&mut self, from: usize, m: Message) {
        let to = (m.to.get() - 1) as usize;
        if to >= self.nodes.len() || self.blocked.contains(&(from, to)) {
            return;
        }
        let faults = self.healed_at.is_none();
        if faults && self.rng.chance(self.cfg.loss) {
            return;
        }
        let copies = if faults && self.rng.chance(self.cfg.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            let (lo, hi) = self.cfg.delay_ns;
            let at = self.now + lo + self.rng.below(hi - lo + 1);
            let k = self.next_msg;
            self.next_msg += 1;
            self.messages.insert(k, m.clone());
            self.schedule(at, Event::Deliver(k));
        }
    }

    // ----- clients -----

    fn client_step(&mut self, c: usize) {
        if self.clients[c].pending.is_some() {
            // Still waiting: time out after two seconds.
            let deadline = self.clients[c].pending.as_ref().map_or(0, |p| p.2);
            if self.now >= deadline {
                self.complete_unknown(c);
            } else {
                self.schedule(deadline, Event::Client(c));
                return;
            }
        }
        let end = self.cfg.fault_time_ns + self.cfg.recovery_bound_ns;
        if self.now > end {
            return;
        }
        let node = self.clients[c].guess;
        let key = format!("k{}", self.rng.below(self.cfg.keys as u64));
        self.clients[c].op_seq += 1;
        let value = format!("c{c}v{}", self.clients[c].op_seq);
        let roll = self.rng.below(100);
        let call = self.now;
        let deadline = self.now + 2_000 * MS;
        let local = self.local_time(node, self.now);
        let incarnation = self.nodes[node].incarnation;
        let Some(raft) = self.nodes[node].raft.as_mut() else {
            self.retry_elsewhere(c, None);
            return;
        };
        if roll < 40 {
            let lease = self.cfg.lease_reads && roll < 15 && raft.role() == Role::Leader;
            let read = ReadId(self.next_read);
            self.next_read += 1;
            let level = if lease { ReadLevel::Lease } else { ReadLevel::Linearizable };
            if self.cfg.bug == Some(InjectedBug::LocalReads) {
                let output = self.nodes[node].kv.get(&key).map(str::to_owned);
                let op = Operation::get(c as u64, key, call, ReadCompletion::Returned { ret: self.now, output });
                self.finish_op(c, op);
                return;
            }
            match raft.read(local, read, level) {
                Ok(()) => {
                    let op = Operation::get(c as u64, key, call, ReadCompletion::Unknown);
                    self.clients[c].pending = Some((op, Waiting::Read { node, read, incarnation, lease }, deadline));
                }
                Err(_) => {
                    let hint = raft.leader();
                    self.retry_elsewhere(c, hint);
                    return;
                }
            }
        } else {
            let expected = self.clients[c].last_value.get(&key).cloned();
            let (cmd, op) = match (roll, expected) {
                (40..=69, _) | (70..=89, None) => (
                    KvCommand::Put { key: key.clone(), value: value.clone() },
                    Operation::put(c as u64, key, value, call, Completion::Unknown),
                ),
                (70..=89, Some(exp)) => (
                    KvCommand::Cas { key: key.clone(), expected: exp.clone(), value: value.clone() },
                    Operation::cas(c as u64, key, exp, value, call, Completion::Unknown),
                ),
                _ => (
                    KvCommand::Delete { key: key.clone() },
                    Operation::delete(c as u64, key, call, Completion::Unknown),
                ),
            };
            match raft.propose(local, Data::from(cmd.encode())) {
                Ok(id) => {
                    self.clients[c].pending = Some((op, Waiting::Write { node, id, incarnation }, deadline));
                }
                Err(ProposeError::NotLeader { leader_hint }) => {
                    let hint = leader_hint.map(|n| (n.get() - 1) as usize);
                    self.retry_elsewhere(c, hint.map(|h| NodeId::new(h as u64 + 1)).unwrap_or(None));
                    return;
                }
                Err(_) => {
                    self.retry_elsewhere(c, None);
                    return;
                }
            }
        }
        self.drain(node);
        if self.clients[c].pending.is_some() {
            self.schedule(deadline, Event::Client(c));
        }
    }

    fn retry_elsewhere(&mut self, c: usize, hint: Option<NodeId>) {
        self.clients[c].guess = match hint {
            Some(n) if (n.get() as usize) <= self.nodes.len() => (n.get() - 1) as usize,
            _ => self.rng.below(self.nodes.len() as u64) as usize,
        };
        let t = self.now + 5 * MS + self.rng.below(20 * MS);
        self.schedule(t, Event::Client(c));
    }

    fn finish_op(&mut self, c: usize, op: Operation) {
        let ok = match &op.kind {
            OpKind::Get { completion } => matches!(completion, ReadCompletion::Returned { .. }),
            OpKind::Put { completion, .. } | OpKind::Delete { completion } | OpKind::Cas { completion, .. } => {
                matches!(completion, Completion::Ok { .. })
            }
        };
        self.report.ops_ok += usize::from(ok);
        self.history.push(op);
        let t = self.now + self.rng.below(10 * MS);
        self.schedule(t, Event::Client(c));
    }

    fn complete_unknown(&mut self, c: usize) {
        if let Some((op, _, _)) = self.clients[c].pending.take() {
            self.clients[c].last_value.remove(&op.key);
            self.clients[c].guess = self.rng.below(self.nodes.len() as u64) as usize;
            self.history.push(op);
        }
    }

    fn resolve_writes(&mut self, node: usize, applied: EntryId, took_effect: bool) {
        for c in 0..self.clients.len() {
            let matches = matches!(
                &self.clients[c].pending,
                Some((_, Waiting::Write { node: n, id, incarnation }, _))
                    if *n == node && id.index == applied.index && *incarnation == self.nodes[node].incarnation
            );
            if !matches {
                continue;
            }
            let Some((mut op, Waiting::Write { id, .. }, _)) = self.clients[c].pending.take() else { continue };
            let ret = self.now;
            let ours = id.term == applied.term;
            // `Failed` on a cas means "the comparison failed". A proposal that lost its slot
            // (another entry committed at its index) had no effect at all: for put and delete
            // that is a definite failure; for a cas it is recorded as unknown, which claims
            // nothing about the value.
            let completion = match (ours, took_effect, &op.kind) {
                (true, true, _) => Completion::Ok { ret },
                (true, false, _) => Completion::Failed { ret },
                (false, _, OpKind::Cas { .. }) => Completion::Unknown,
                (false, _, _) => Completion::Failed { ret },
            };
            set_completion(&mut op, completion);
            if ours && took_effect {
                if let OpKind::Put { value, .. } | OpKind::Cas { value, .. } = &op.kind {
                    self.clients[c].last_value.insert(op.key.clone(), value.clone());
                } else {
                    self.clients[c].last_value.remove(&op.key);
                }
            }
            self.finish_op(c, op);
        }
    }

    fn serve_parked_reads(&mut self, node: usize) {
        let applied = self.nodes[node].applied;
        let ready: Vec<ReadId> =
            self.nodes[node].parked_reads.iter().filter(|(_, idx)| *idx <= applied).map(|(id, _)| *id).collect();
        self.nodes[node].parked_reads.retain(|(_, idx)| *idx > applied);
        for read in ready {
            for c in 0..self.clients.len() {
                let matches = matches!(
                    &self.clients[c].pending,
                    Some((_, Waiting::Read { node: n, read: r, incarnation, .. }, _))
                        if *n == node && *r == read && *incarnation == self.nodes[node].incarnation
                );
                if !matches {
                    continue;
                }
                let Some((mut op, Waiting::Read { lease, .. }, _)) = self.clients[c].pending.take() else { continue };
                let output = self.nodes[node].kv.get(&op.key).map(str::to_owned);
                if let Some(v) = &output {
                    self.clients[c].last_value.insert(op.key.clone(), v.clone());
                }
                self.report.lease_reads += u64::from(lease);
                op.kind = OpKind::Get { completion: ReadCompletion::Returned { ret: self.now, output } };
                self.finish_op(c, op);
            }
        }
    }

    fn fail_read(&mut self, node: usize, read: ReadId) {
        for c in 0..self.clients.len() {
            let matches = matches!(
                &self.clients[c].pending,
                Some((_, Waiting::Read { node: n, read: r, .. }, _)) if *n == node && *r == read
            );
            if matches {
                // A failed read had no effect and returned nothing: it is not recorded.
                self.clients[c].pending = None;
                self.retry_elsewhere(c, None);
            }
        }
    }

    // ----- faults -----

    fn nemesis(&mut self) {
        if self.healed_at.is_some() {
            return;
        }
        let n = self.nodes.len();
        let roll = self.rng.below(if self.cfg.reconfig { 8 } else { 6 });
        if roll >= 6 {
            self.reconfigure();
            let t = self.now + self.cfg.nemesis_interval_ns / 2 + self.rng.below(self.cfg.nemesis_interval_ns);
            self.schedule(t, Event::Nemesis);
            return;
        }
        match roll {
            0 | 1 => {
                let i = self.rng.below(n as u64) as usize;
                self.crash(i, "killed");
            }
            2 => {
                // Symmetric split into two groups.
                let mask = 1 + self.rng.below((1 << n) - 2);
                self.blocked.clear();
                for a in 0..n {
                    for b in 0..n {
                        if (mask >> a) & 1 != (mask >> b) & 1 {
                            self.blocked.insert((a, b));
                        }
                    }
                }
                self.report.partitions += 1;
                self.log(|| {
                    format!(
                        "partition: {:?} | rest",
                        (0..n).filter(|a| (mask >> a) & 1 == 1).map(|a| a + 1).collect::<Vec<_>>()
                    )
                });
            }
            3 => {
                let a = self.rng.below(n as u64) as usize;
                let b = (a + 1 + self.rng.below(n as u64 - 1) as usize) % n;
                self.blocked.insert((a, b));
                self.report.partitions += 1;
                self.log(|| format!("one-way partition: {} -/-> {}", a + 1, b + 1));
            }
            4 => {
                self.blocked.clear();
                self.log(|| "partitions heal".to_owned());
            }
            _ => {
                // Crash the current leader, if any.
                if let Some(i) = (0..n).find(|i| self.nodes[*i].raft.as_ref().is_some_and(|r| r.role() == Role::Leader))
                {
                    self.crash(i, "leader killed");
                }
            }
        }
        let t = self.now + self.cfg.nemesis_interval_ns / 2 + self.rng.below(self.cfg.nemesis_interval_ns);
        self.schedule(t, Event::Nemesis);
    }

    /// A membership change on the current leader: add a learner, promote one, remove any
    /// member (the leader included) or replace a voter.
    fn reconfigure(&mut self) {
        let Some(li) =
            (0..self.nodes.len()).find(|i| self.nodes[*i].raft.as_ref().is_some_and(|r| r.role() == Role::Leader))
        else {
            return;
        };
        let Some(conf) = self.nodes[li].raft.as_ref().map(|r| r.configuration().clone()) else { return };
        let voters: Vec<NodeId> = conf.voters.iter().copied().collect();
        let learners: Vec<NodeId> = conf.learners.iter().copied().collect();
        let pick = |v: &[NodeId], r: &mut SplitMix64| v.get(r.below(v.len() as u64) as usize).copied();
        let change = match self.rng.below(4) {
            0 => match self.new_node() {
                Some(i) => Some(ConfChange::AddLearner(self.nodes[i].id)),
                None => pick(&learners, &mut self.rng).map(ConfChange::Promote),
            },
            1 => pick(&learners, &mut self.rng).map(ConfChange::Promote),
            2 if voters.len() > 2 => pick(&voters, &mut self.rng).map(ConfChange::Remove),
            _ => match (pick(&voters, &mut self.rng), pick(&learners, &mut self.rng)) {
                (Some(old), Some(new)) => Some(ConfChange::Replace { old, new }),
                _ => None,
            },
        };
        let Some(change) = change else { return };
        let local = self.local_time(li, self.now);
        let Some(r) = self.nodes[li].raft.as_mut() else { return };
        let leader = r.id();
        match r.propose_conf_change(local, change.clone()) {
            Ok(id) => {
                self.report.conf_changes += 1;
                self.log(|| format!("leader {leader} proposes {change:?} at {}", id.index));
            }
            Err(e) => {
                self.report.conf_refusals += 1;
                self.log(|| format!("leader {leader} refuses {change:?}: {e}"));
            }
        }
        self.drain(li);
    }

    fn heal(&mut self) {
        self.healed_at = Some(self.now);
        self.blocked.clear();
        for i in 0..self.nodes.len() {
            if self.nodes[i].raft.is_none() {
                self.start_node(i);
            }
        }
        self.commit_at_heal = self.sm.applied_index();
        self.log(|| "all faults heal; every node runs".to_owned());
    }

    fn check_recovery(&mut self) {
        let Some(healed) = self.healed_at else { return };
        if self.recovered {
            return;
        }
        let has_leader = self.nodes.iter().any(|n| n.raft.as_ref().is_some_and(|r| r.role() == Role::Leader));
        if has_leader && self.sm.applied_index() > self.commit_at_heal {
            self.recovered = true;
            let dt = self.now - healed;
            self.log(|| format!("recovered {:.1} ms after healing", dt as f64 / MS as f64));
        } else if self.now > healed + self.cfg.recovery_bound_ns {
            self.report.violations.push(Violation::Liveness {
                detail: format!(
                    "no leader with a new commit within {} ms after faults healed",
                    self.cfg.recovery_bound_ns / MS
                ),
            });
        }
    }

    fn check_logs(&mut self) {
        let logs: Vec<(NodeId, &[quorate_log::Entry])> = self
            .nodes
            .iter()
            .filter_map(|n| {
                n.raft
                    .as_ref()
                    .map(|r| (n.id, r.storage().all_entries()))
                    .or_else(|| n.durable.as_ref().map(|d| (n.id, d.all_entries())))
            })
            .collect();
        if let Err(v) = check_log_matching(&logs) {
            self.report.violations.push(v);
        }
    }

    fn finish(mut self) -> SimReport {
        self.check_logs();
        if self.report.violations.is_empty()
            && self.healed_at.is_some()
            && !self.recovered
            && self.report.steps < self.cfg.steps_max
        {
            self.report
                .violations
                .push(Violation::Liveness { detail: "the run ended before the cluster recovered".into() });
        }
        // Outstanding operations have unknown outcomes.
        for c in 0..self.clients.len() {
            self.complete_unknown(c);
        }
        if self.report.violations.is_empty() {
            let result = linearizability::check(&self.history, &linearizability::Limits::default());
            if !result.is_linearizable() {
                self.report.violations.push(Violation::Linearizability { detail: format!("{result}") });
            }
        }
        self.report.sim_time_ns = self.now;
        self.report.committed = self.sm.applied_index().0;
        self.report.leaders = self.election.terms_with_leader();
        self.report.ops = self.history.len();
        self.report.history = self.history;
        self.report
    }
}

fn set_completion(op: &mut Operation, completion: Completion) {
    match &mut op.kind {
        OpKind::Put { completion: c, .. } | OpKind::Delete { completion: c } | OpKind::Cas { completion: c, .. } => {
            *c = completion
        }
        _ => {}
    }
}

/// Runs one seed with the configuration [`SimConfig::for_seed`] derives.
#[must_use]
pub fn run_seed(seed: u64, steps_max: u64, verbose: bool) -> SimReport {
    run_seed_with(seed, steps_max, verbose, None)
}

/// Runs one seed with an optional injected driver bug.
#[must_use]
pub fn run_seed_with(seed: u64, steps_max: u64, verbose: bool, bug: Option<InjectedBug>) -> SimReport {
    let mut cfg = SimConfig::for_seed(seed, steps_max);
    cfg.verbose = verbose;
    cfg.bug = bug;
    Sim::new(seed, cfg).run()
}
