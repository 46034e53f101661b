//! Exhaustive model checking of the real `quorate-core` at small bounds (step 3 of the
//! verification ladder).
//!
//! Where the simulator samples schedules, this module enumerates them: breadth first, from the
//! initial state of a small cluster, every action that could happen next is tried, and every
//! state reached is checked against the safety properties. States already seen are recognized
//! by a fingerprint and not explored again.
//!
//! ## The model
//!
//! A state is the cores themselves (cloned `Raft<MemLog>`s — the code under test, not a
//! re-implementation), each node's queue of persist batches handed out but not yet written,
//! the network (a set of in-flight messages, a copy count per message), what the bounds have
//! used, and the history the checkers need (leader of each term, committed and applied
//! entries). The actions from a state are:
//!
//! * deliver any in-flight message (in any order: arbitrary delay and reordering);
//! * drop one (bounded by `losses`) or duplicate one (bounded by `duplicates`);
//! * fire any node's timer: `handle_timeout` at that node's `poll_timeout`. Each node has its
//!   own clock, which moves only when its timer fires, so elections and heartbeats happen at
//!   any point relative to everything else;
//! * let a node's leader lease expire: its clock moves one election timeout, short of its
//!   election deadline (under check-quorum it then grants votes again);
//! * complete the oldest unwritten persist batch of any node (write it to its `MemLog`, then
//!   report it with `persisted`);
//! * propose a command on a leader (at most `proposals` in all);
//! * crash and restart a node (at most `crashes`): unwritten batches and all volatile state
//!   are lost, and the node restarts from its `MemLog` with `Raft::new`.
//!
//! After each action the node's `ready()` is drained into the network and its persist queue,
//! as a real driver does. States in which a term exceeds `terms` are checked but not explored
//! further; neither are states deeper than `depth`.
//!
//! ## Checks, on every state
//!
//! Election safety over the whole history (one leader per term, ever), leader completeness
//! (every current leader holds every entry committed in an earlier term), log matching over
//! every node's stable log and its in-memory log, state machine safety (every node's committed
//! prefix and every applied entry agree with what was committed or applied before), durability
//! of every message sent (`check_durable` against the sender's `MemLog`), and that no core
//! panics or halts. A failure comes with the shortest action trace that reaches it, which
//! [`replay`] re-executes step by step.
//!
//! ## Fingerprints
//!
//! A state's fingerprint hashes each core's full `Debug` rendering with the parts that only
//! encode the passage of time or ever-growing counters masked (clock readings, deadlines, the
//! random generator, heartbeat sequence numbers, I/O ids made relative to the last one
//! reported), plus the persist queues, the network, the bounds used and the checkers' history.
//! The masked timer state is summarized by what matters for behaviour: whether a node heard
//! from a leader since its clock last moved (it then ignores vote requests under
//! check-quorum), and a leader's heartbeat phase (check-quorum runs every second heartbeat).
//! Two states with one fingerprint may still differ in masked details; the search treats them
//! as one, so it may miss behaviours reachable only through such a detail, but every state it
//! reports was reached by really executing the core.

use crate::invariants::{
    ElectionSafety, LeaderCompleteness, StateMachineSafety, Violation, check_durable, check_log_matching,
    check_read_fresh,
};
use quorate_core::{Config, Instant, IoId, Message, MessageBody, Raft, ReadId, ReadLevel, Role};
use quorate_log::{
    Configuration, Data, Entry, EntryId, EntryPayload, HardState, LogIndex, LogStorage, MemLog, NodeId, SnapshotMeta,
    Term,
};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt::{self, Write as _};
use std::hash::{BuildHasherDefault, DefaultHasher, Hash, Hasher};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant as WallClock};

/// Bounds and settings of one model-checking run.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// Cluster size.
    pub nodes: usize,
    /// Of the `nodes`, how many (the highest-numbered) start as learners; the rest are voters.
    pub learners: usize,
    /// States where any node's term exceeds this are checked but not explored further.
    pub terms: u64,
    /// Client proposals, in all.
    pub proposals: u32,
    /// Crash-restarts, in all.
    pub crashes: u32,
    /// Messages dropped, in all.
    pub losses: u32,
    /// Messages duplicated, in all.
    pub duplicates: u32,
    /// Membership changes proposed, in all: the leader promotes the lowest-numbered learner
    /// if there is one, and otherwise removes the highest-numbered voter (itself included);
    /// voter changes go through a joint configuration.
    pub conf_changes: u32,
    /// Reads asked of a leader, in all. A read confirmed at an index below the highest
    /// commit when it was asked for is a violation (read freshness).
    pub reads: u32,
    /// Lease reads: the cores read with `ReadLevel::Lease` at a drift bound of a tenth of an
    /// election timeout (check-quorum must be on). All nodes then share one clock, so that
    /// a lease is measured against the same time as the voters' promises; every timer fires
    /// at or after its deadline on it (a late timer is a paused process).
    pub lease_reads: bool,
    /// Longest action sequence explored.
    pub depth: u32,
    /// Stop after this many distinct states.
    pub max_states: u64,
    /// Cores ask for pre-votes.
    pub pre_vote: bool,
    /// Cores run check-quorum (and its vote-request lease).
    pub check_quorum: bool,
    /// Check every message sent with `check_durable`. Turning it off shows what a durability
    /// bug does to the other properties.
    pub check_durability: bool,
    /// The driver holds every message whose term is not yet on the sender's stable storage
    /// until it is (pre-votes excepted). A driver-side workaround for hole 1 of issue 16,
    /// to explore past it on a core that has the hole; off by default.
    pub hold_unpersisted_term: bool,
    /// A deliberate driver bug, to show that the checker fails.
    pub bug: Option<ModelBug>,
    /// Applied to every core at start and restart (as `SimConfig::core_hook`: tests switch a
    /// hole of issue 16 back on with it).
    pub core_hook: Option<crate::sim::CoreHook>,
}

/// Deliberate driver mistakes; a model with one of them must report a failure.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum ModelBug {
    /// Report each persist batch persisted as soon as it is handed out, before it is written
    /// (a crash then loses state the node already acknowledged).
    AckBeforePersist,
    /// Serve reads on any node at once, at its own commit index, without asking the core.
    LocalReads,
}

impl ModelConfig {
    /// The preset for CI: a few seconds in the `ci` profile.
    #[must_use]
    pub fn quick() -> ModelConfig {
        ModelConfig {
            nodes: 3,
            learners: 0,
            terms: 2,
            proposals: 1,
            crashes: 1,
            losses: 0,
            duplicates: 0,
            conf_changes: 0,
            reads: 0,
            lease_reads: false,
            depth: 9,
            max_states: 2_000_000,
            pre_vote: true,
            check_quorum: true,
            check_durability: true,
            hold_unpersisted_term: false,
            bug: None,
            core_hook: None,
        }
    }

    /// The CI preset for the shape of hole 1 of issue 16: one voter and one learner (a cluster
    /// started from one node that grows by `join`). The voter elects itself on its own vote,
    /// proposes, crashes, restarts and elects itself again; the learner is promoted (a joint
    /// configuration in which the voter's own vote no longer closes the quorum); reads on the
    /// single voter are confirmed at once.
    #[must_use]
    pub fn quick_learner() -> ModelConfig {
        ModelConfig {
            nodes: 2,
            learners: 1,
            terms: 3,
            proposals: 2,
            conf_changes: 1,
            reads: 1,
            depth: 11,
            ..ModelConfig::quick()
        }
    }

    /// Lease reads on two voters, measured on one shared clock: an election (without
    /// pre-vote, to keep it short), the no-op's commit, a heartbeat round that starts the
    /// lease, and two reads, with a crash anywhere. (Three voters reach a lease read only at
    /// depth 13: three quarters of a minute.)
    #[must_use]
    pub fn quick_lease() -> ModelConfig {
        ModelConfig {
            nodes: 2,
            pre_vote: false,
            proposals: 0,
            reads: 2,
            lease_reads: true,
            depth: 14,
            ..ModelConfig::quick()
        }
    }

    /// The CI preset for membership changes: pre-vote off so that an election is short, one
    /// removal through a joint configuration, one crash.
    #[must_use]
    pub fn quick_reconfig() -> ModelConfig {
        ModelConfig { pre_vote: false, conf_changes: 1, depth: 10, ..ModelConfig::quick() }
    }

    /// The full run: under a minute in the `ci` profile. Without pre-vote an election is
    /// shorter, so this depth reaches commits, a second term's leader and crashes after them.
    #[must_use]
    pub fn full() -> ModelConfig {
        ModelConfig {
            terms: 3,
            proposals: 2,
            duplicates: 1,
            conf_changes: 1,
            depth: 12,
            pre_vote: false,
            ..ModelConfig::quick()
        }
    }
}

impl Default for ModelConfig {
    fn default() -> ModelConfig {
        ModelConfig::full()
    }
}

/// One step of the model. Nodes are indexes (node id − 1); messages are named by their key,
/// a hash of their content, so a trace replays from the initial state.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Action {
    /// Deliver the in-flight message with this key.
    Deliver {
        /// The message's key.
        key: u64,
    },
    /// Lose the in-flight message with this key.
    Drop {
        /// The message's key.
        key: u64,
    },
    /// Add a second copy of the in-flight message with this key.
    Duplicate {
        /// The message's key.
        key: u64,
    },
    /// Fire the node's timer.
    Timeout {
        /// The node's index.
        node: usize,
    },
    /// Advance the node's clock by one election timeout, short of its timer: the leader lease
    /// it grants by hearing from a leader (or by starting) expires without an election.
    Expire {
        /// The node's index.
        node: usize,
    },
    /// Write the node's oldest unwritten persist batch and report it.
    Persist {
        /// The node's index.
        node: usize,
    },
    /// Propose a command on the node (a leader).
    Propose {
        /// The node's index.
        node: usize,
    },
    /// Crash the node and restart it from its stable storage.
    Crash {
        /// The node's index.
        node: usize,
    },
    /// The node (a leader) promotes the lowest-numbered learner, or removes the
    /// highest-numbered voter.
    Reconfigure {
        /// The node's index.
        node: usize,
    },
    /// A client reads on the node (a leader, unless the driver is broken).
    Read {
        /// The node's index.
        node: usize,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Deliver { key } => write!(f, "deliver m{key:016x}"),
            Action::Drop { key } => write!(f, "drop m{key:016x}"),
            Action::Duplicate { key } => write!(f, "duplicate m{key:016x}"),
            Action::Timeout { node } => write!(f, "timeout n{}", node + 1),
            Action::Expire { node } => write!(f, "lease expires on n{}", node + 1),
            Action::Persist { node } => write!(f, "persist n{}", node + 1),
            Action::Propose { node } => write!(f, "propose n{}", node + 1),
            Action::Crash { node } => write!(f, "crash-restart n{}", node + 1),
            Action::Reconfigure { node } => write!(f, "reconfigure on n{}", node + 1),
            Action::Read { node } => write!(f, "read on n{}", node + 1),
        }
    }
}

/// What went wrong in a state.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Failure {
    /// A safety property is broken.
    Invariant(Violation),
    /// A core panicked (an internal assertion failed).
    Panic(String),
    /// A core halted.
    Halted {
        /// The node.
        node: NodeId,
        /// Why.
        reason: String,
    },
    /// The model could not do what an action asks (a bug in the model or a trace that does not
    /// fit the configuration).
    Driver(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Invariant(v) => write!(f, "{v}"),
            Failure::Panic(p) => write!(f, "core panicked: {p}"),
            Failure::Halted { node, reason } => write!(f, "node {node} halted: {reason}"),
            Failure::Driver(d) => write!(f, "model driver: {d}"),
        }
    }
}

impl From<Violation> for Failure {
    fn from(v: Violation) -> Failure {
        Failure::Invariant(v)
    }
}

/// A failure with the actions that reach it from the initial state.
#[derive(Clone, Debug)]
pub struct Counterexample {
    /// What failed.
    pub failure: Failure,
    /// The actions, in order; [`replay`] re-executes them.
    pub trace: Vec<Action>,
    /// One line per action, describing it and its effect (from a replay).
    pub narrative: Vec<String>,
}

/// What a run explored and found.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Actions executed (transitions explored).
    pub states: u64,
    /// Distinct states (by fingerprint), the initial one included.
    pub distinct: u64,
    /// Deepest level at which a new state was found.
    pub depth: u32,
    /// States not explored further because a term exceeded the bound.
    pub term_pruned: u64,
    /// Whether the run stopped at `max_states` rather than exhausting the bounds.
    pub truncated: bool,
    /// Distinct states found at each depth.
    pub per_depth: Vec<u64>,
    /// The highest index committed in any state explored.
    pub max_committed: u64,
    /// The most terms that had a leader, in any state explored.
    pub max_leader_terms: usize,
    /// The most reads confirmed (lease or ReadIndex) on one path explored.
    pub reads_confirmed: u64,
    /// States in which some node holds a joint configuration, and states in which some node
    /// holds a configuration with fewer voters than at the start.
    pub joint_states: u64,
    /// See `joint_states`.
    pub reconfigured_states: u64,
    /// Wall-clock time.
    pub elapsed: Duration,
    /// The first failure found (by depth), if any.
    pub counterexample: Option<Counterexample>,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "model-check: states {} (distinct {}), depth {}, time {:.1} s, result: ",
            self.states,
            self.distinct,
            self.depth,
            self.elapsed.as_secs_f64()
        )?;
        match &self.counterexample {
            None if self.truncated => write!(f, "ok (stopped at the state limit)"),
            None => write!(f, "ok"),
            Some(c) => write!(f, "VIOLATION {} (after {} actions)", c.failure, c.trace.len()),
        }
    }
}

/// Explores every interleaving of the cluster within `cfg`'s bounds, breadth first.
#[must_use]
pub fn check(cfg: &ModelConfig) -> Outcome {
    let started = WallClock::now();
    let mut out = Outcome::default();
    let mut scratch = Scratch::default();
    let init = match State::initial(cfg, &mut scratch) {
        Ok(s) => s,
        Err(failure) => {
            out.counterexample = Some(Counterexample { failure, trace: Vec::new(), narrative: Vec::new() });
            out.elapsed = started.elapsed();
            return out;
        }
    };
    let mut visited: HashSet<u64, BuildHasherDefault<IdentityHasher>> = HashSet::default();
    visited.insert(init.fingerprint());
    out.per_depth.push(1);
    // Parent pointers: entry k is (parent entry, action that led here); entry 0 is the root.
    let mut trail: Vec<(u32, Action)> = vec![(u32::MAX, Action::Timeout { node: 0 })];
    let mut frontier: Vec<(State, u32)> = vec![(init, 0)];
    let mut actions = Vec::new();
    'search: for depth in 1..=cfg.depth {
        let mut next = Vec::new();
        for (state, at) in std::mem::take(&mut frontier) {
            state.actions(cfg, &mut actions);
            for &action in &actions {
                let mut succ = state.clone();
                out.states += 1;
                let result = catch_unwind(AssertUnwindSafe(|| succ.apply(cfg, action, &mut scratch, None)));
                let failure = match result {
                    Ok(Ok(())) => None,
                    Ok(Err(f)) => Some(f),
                    Err(panic) => Some(Failure::Panic(panic_message(panic.as_ref()))),
                };
                if let Some(failure) = failure {
                    let mut trace = path(&trail, at);
                    trace.push(action);
                    let narrative = replay(cfg, &trace).narrative;
                    out.counterexample = Some(Counterexample { failure, trace, narrative });
                    out.depth = depth;
                    break 'search;
                }
                if succ.max_term() > cfg.terms {
                    out.term_pruned += 1;
                    continue;
                }
                if visited.insert(succ.fingerprint()) {
                    out.max_committed = out.max_committed.max(succ.committed.len() as u64);
                    out.reads_confirmed = out.reads_confirmed.max(succ.confirmed);
                    out.max_leader_terms = out.max_leader_terms.max(succ.leaders.len());
                    if succ.nodes.iter().any(|n| n.raft.configuration().is_joint()) {
                        out.joint_states += 1;
                    }
                    if succ.nodes.iter().any(|n| n.raft.configuration().voters.len() < cfg.nodes - cfg.learners) {
                        out.reconfigured_states += 1;
                    }
                    trail.push((at, action));
                    next.push((succ, (trail.len() - 1) as u32));
                    if visited.len() as u64 >= cfg.max_states {
                        out.truncated = true;
                        out.per_depth.push(next.len() as u64);
                        out.depth = depth;
                        break 'search;
                    }
                }
            }
        }
        if next.is_empty() {
            break;
        }
        out.per_depth.push(next.len() as u64);
        out.depth = depth;
        frontier = next;
    }
    out.distinct = visited.len() as u64;
    out.elapsed = started.elapsed();
    out
}

/// The result of re-executing a trace.
#[derive(Clone, Debug, Default)]
pub struct Replay {
    /// One line per action executed.
    pub narrative: Vec<String>,
    /// The failure the trace ends in, if any (execution stops there).
    pub failure: Option<Failure>,
}

/// Re-executes `trace` from the initial state, describing each step.
#[must_use]
pub fn replay(cfg: &ModelConfig, trace: &[Action]) -> Replay {
    let mut scratch = Scratch::default();
    let mut out = Replay::default();
    let mut state = match State::initial(cfg, &mut scratch) {
        Ok(s) => s,
        Err(f) => {
            out.failure = Some(f);
            return out;
        }
    };
    for (k, &action) in trace.iter().enumerate() {
        let what = state.describe(action);
        let target = match action {
            Action::Deliver { key } => {
                state.find(key).ok().map(|pos| (state.net[pos].msg.to.get() as usize).wrapping_sub(1))
            }
            other => other.node(),
        };
        let mut notes = Vec::new();
        let result = catch_unwind(AssertUnwindSafe(|| state.apply(cfg, action, &mut scratch, Some(&mut notes))));
        let failure = match result {
            Ok(Ok(())) => None,
            Ok(Err(f)) => Some(f),
            Err(panic) => Some(Failure::Panic(panic_message(panic.as_ref()))),
        };
        let mut line = format!("{:>3}. {what}", k + 1);
        for n in &notes {
            line.push_str("\n       ");
            line.push_str(n);
        }
        if failure.is_none()
            && let Some(n) = target.and_then(|i| state.nodes.get(i))
        {
            line.push_str("\n       => ");
            line.push_str(&n.summary());
        }
        out.narrative.push(line);
        if failure.is_some() {
            out.failure = failure;
            break;
        }
    }
    out
}

impl Action {
    fn node(self) -> Option<usize> {
        match self {
            Action::Timeout { node }
            | Action::Expire { node }
            | Action::Persist { node }
            | Action::Propose { node }
            | Action::Crash { node }
            | Action::Reconfigure { node }
            | Action::Read { node } => Some(node),
            Action::Deliver { .. } | Action::Drop { .. } | Action::Duplicate { .. } => None,
        }
    }
}

fn path(trail: &[(u32, Action)], mut at: u32) -> Vec<Action> {
    let mut out = Vec::new();
    while at != 0 && at != u32::MAX {
        let (parent, action) = trail[at as usize];
        out.push(action);
        at = parent;
    }
    out.reverse();
    out
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_owned()
    }
}

// ----- the state -----

/// A persist batch handed out and not yet written.
#[derive(Clone, Debug)]
struct Batch {
    io: IoId,
    hard_state: Option<HardState>,
    entries: Vec<Entry>,
    install: Option<SnapshotMeta>,
    compact: Option<SnapshotMeta>,
}

impl Batch {
    fn write_to(&self, store: &mut MemLog) -> Result<(), Failure> {
        if let Some(meta) = &self.install {
            store.apply_snapshot(meta.clone());
        }
        if let Some(meta) = &self.compact {
            store.apply_snapshot(meta.clone());
        }
        store.append(&self.entries).map_err(|e| Failure::Driver(format!("bad persist batch: {e}")))?;
        if let Some(hs) = self.hard_state {
            store.set_hard_state(hs);
        }
        Ok(())
    }
}

#[derive(Clone)]
struct Node {
    id: NodeId,
    raft: Raft<MemLog>,
    /// The node's clock (ns); moves only when its timer fires.
    clock: u64,
    /// Persist batches handed out and not yet written, oldest first.
    disk: VecDeque<Batch>,
    /// The last I/O id reported with `persisted`.
    io_acked: u64,
    /// Heard from a leader since the clock last moved (or since start): under check-quorum the
    /// node then ignores vote requests.
    lease: bool,
    /// The term this node leads, and how many times its timer fired in it (mod 2).
    leading: Option<Term>,
    phase: u8,
    /// Messages held by the driver until their term is on stable storage
    /// (`ModelConfig::hold_unpersisted_term`).
    held: Vec<Message>,
    fp: u64,
}

impl Node {
    fn summary(&self) -> String {
        let r = &self.raft;
        let store = r.storage();
        let hs = store.hard_state();
        let vote = r.hard_state().vote.map_or_else(|| "-".to_owned(), |v| v.to_string());
        let log: Vec<String> = (1..=r.last_index().0)
            .map(|i| r.entry_term(LogIndex(i)).map_or_else(|_| "?".to_owned(), |t| t.0.to_string()))
            .collect();
        format!(
            "n{}: {} term {} vote {} commit {} log [{}] | stable term {} vote {} log {} | unwritten batches {}",
            self.id,
            r.role(),
            r.term(),
            vote,
            r.commit_index(),
            log.join(" "),
            hs.term,
            hs.vote.map_or_else(|| "-".to_owned(), |v| v.to_string()),
            store.last_index(),
            self.disk.len()
        )
    }

    /// The node's log as it is in memory: stable storage with the unwritten batches applied.
    fn view(&self) -> Result<Vec<Entry>, Failure> {
        if self.disk.is_empty() {
            return Ok(self.raft.storage().all_entries().to_vec());
        }
        let mut log = self.raft.storage().clone();
        for b in &self.disk {
            b.write_to(&mut log)?;
        }
        Ok(log.all_entries().to_vec())
    }
}

#[derive(Clone)]
struct InFlight {
    key: u64,
    copies: u8,
    msg: Arc<Message>,
}

#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Debug)]
struct Used {
    reads: u32,
    conf_changes: u32,
    proposals: u32,
    crashes: u32,
    losses: u32,
    duplicates: u32,
}

#[derive(Clone)]
struct State {
    /// Shared with the parent state until changed: a successor changes one node.
    nodes: Vec<Arc<Node>>,
    /// Sorted by key.
    net: Vec<InFlight>,
    used: Used,
    /// Every leader seen, by term.
    leaders: BTreeMap<Term, NodeId>,
    /// Every entry known committed, by index, with the term in which it was committed (the
    /// term of the first node seen to know it: the leader that counted the quorum).
    committed: BTreeMap<LogIndex, (EntryId, Term)>,
    /// Entries applied anywhere, in index order from 1.
    applied: Vec<EntryId>,
    /// Reads asked for and not yet confirmed or failed: (read id, node index, the highest
    /// index committed when it was asked for, lease).
    reads: Vec<(u64, usize, LogIndex, bool)>,
    /// The shared clock (ns), with `ModelConfig::lease_reads`; masked from fingerprints.
    now: u64,
    /// Reads confirmed on the way to this state (a statistic, not part of the fingerprint).
    confirmed: u64,
}

#[derive(Default)]
struct Scratch {
    debug: String,
    norm: Vec<u8>,
}

const ELECTION_TIMEOUT_NS: u64 = 1_000_000_000;

fn core_config(cfg: &ModelConfig, id: NodeId) -> Config {
    let mut c = Config::new(id);
    c.election_timeout_min = Duration::from_nanos(ELECTION_TIMEOUT_NS);
    c.pre_vote = cfg.pre_vote;
    c.check_quorum = cfg.check_quorum;
    if cfg.lease_reads {
        c.lease_clock_drift_max = Some(Duration::from_nanos(ELECTION_TIMEOUT_NS / 10));
    }
    // Check-quorum runs every second heartbeat, so a leader's step-down is a short path.
    c.heartbeat_interval = c.election_timeout_min / 2;
    c.snapshot_entries_threshold = 0;
    c
}

impl State {
    fn initial(cfg: &ModelConfig, scratch: &mut Scratch) -> Result<State, Failure> {
        let ids: Vec<NodeId> = (1..=cfg.nodes as u64).filter_map(NodeId::new).collect();
        let voters = cfg.nodes.saturating_sub(cfg.learners);
        let conf = Configuration {
            voters: ids.iter().take(voters).copied().collect(),
            learners: ids.iter().skip(voters).copied().collect(),
            ..Configuration::default()
        };
        conf.validate().map_err(|e| Failure::Driver(e.to_string()))?;
        let mut nodes = Vec::new();
        for id in ids {
            let mut raft = Raft::new(core_config(cfg, id), MemLog::new(conf.clone()), Instant(0))
                .map_err(|e| Failure::Driver(format!("cannot start node {id}: {e}")))?;
            if let Some(hook) = cfg.core_hook {
                hook(&mut raft);
            }
            nodes.push(Arc::new(Node {
                id,
                raft,
                clock: 0,
                disk: VecDeque::new(),
                io_acked: 0,
                lease: true,
                leading: None,
                phase: 0,
                held: Vec::new(),
                fp: 0,
            }));
        }
        let mut s = State {
            nodes,
            net: Vec::new(),
            used: Used::default(),
            leaders: BTreeMap::new(),
            committed: BTreeMap::new(),
            applied: Vec::new(),
            reads: Vec::new(),
            now: 0,
            confirmed: 0,
        };
        for i in 0..s.nodes.len() {
            s.drain(cfg, i, scratch, &mut None)?;
            let fp = node_fingerprint(&s.nodes[i], scratch);
            Arc::make_mut(&mut s.nodes[i]).fp = fp;
        }
        s.check(cfg)?;
        Ok(s)
    }

    fn max_term(&self) -> u64 {
        self.nodes.iter().map(|n| n.raft.term().0).max().unwrap_or(0)
    }

    fn actions(&self, cfg: &ModelConfig, out: &mut Vec<Action>) {
        out.clear();
        for f in &self.net {
            out.push(Action::Deliver { key: f.key });
            if self.used.losses < cfg.losses {
                out.push(Action::Drop { key: f.key });
            }
            if self.used.duplicates < cfg.duplicates && f.copies < 2 {
                out.push(Action::Duplicate { key: f.key });
            }
        }
        for (node, n) in self.nodes.iter().enumerate() {
            let clock = if cfg.lease_reads { self.now } else { n.clock };
            if let Some(at) = n.raft.poll_timeout() {
                out.push(Action::Timeout { node });
                if n.lease && n.raft.role() != Role::Leader && clock + ELECTION_TIMEOUT_NS < at.0 {
                    out.push(Action::Expire { node });
                }
            }
            let reader = n.raft.role() == Role::Leader || cfg.bug == Some(ModelBug::LocalReads);
            if self.used.reads < cfg.reads && reader && n.raft.halted().is_none() {
                out.push(Action::Read { node });
            }
            if !n.disk.is_empty() {
                out.push(Action::Persist { node });
            }
            if self.used.proposals < cfg.proposals && n.raft.role() == Role::Leader && n.raft.halted().is_none() {
                out.push(Action::Propose { node });
            }
            if self.used.crashes < cfg.crashes {
                out.push(Action::Crash { node });
            }
            if self.used.conf_changes < cfg.conf_changes && n.raft.role() == Role::Leader && n.raft.halted().is_none() {
                out.push(Action::Reconfigure { node });
            }
        }
    }

    fn find(&self, key: u64) -> Result<usize, Failure> {
        self.net
            .binary_search_by_key(&key, |f| f.key)
            .map_err(|_| Failure::Driver(format!("no in-flight message m{key:016x}")))
    }

    fn node(&self, node: usize) -> Result<&Node, Failure> {
        self.nodes.get(node).map(Arc::as_ref).ok_or_else(|| Failure::Driver(format!("no node with index {node}")))
    }

    fn describe(&self, action: Action) -> String {
        match action {
            Action::Deliver { key } | Action::Drop { key } | Action::Duplicate { key } => {
                let verb = match action {
                    Action::Deliver { .. } => "deliver",
                    Action::Drop { .. } => "drop",
                    _ => "duplicate",
                };
                match self.find(key) {
                    Ok(pos) => {
                        let m = &self.net[pos].msg;
                        format!("{verb} n{} -> n{} [term {}] {:?}", m.from, m.to, m.term, m.body)
                    }
                    Err(_) => format!("{action} (no such message)"),
                }
            }
            _ => action.to_string(),
        }
    }

    /// Executes `action`, drains the affected node and checks the resulting state.
    fn apply(
        &mut self,
        cfg: &ModelConfig,
        action: Action,
        scratch: &mut Scratch,
        notes: Option<&mut Vec<String>>,
    ) -> Result<(), Failure> {
        let mut notes = notes;
        if cfg.lease_reads {
            // One shared clock: the node about to act reads it.
            let target = match action {
                Action::Deliver { key } => {
                    self.find(key).ok().map(|pos| (self.net[pos].msg.to.get() as usize).wrapping_sub(1))
                }
                other => other.node(),
            };
            if let Some(i) = target.filter(|i| *i < self.nodes.len())
                && self.nodes[i].clock != self.now
            {
                Arc::make_mut(&mut self.nodes[i]).clock = self.now;
            }
        }
        let touched = match action {
            Action::Deliver { key } => {
                let pos = self.find(key)?;
                let msg = Message::clone(&self.net[pos].msg);
                self.take_copy(pos);
                let to = (msg.to.get() as usize).wrapping_sub(1);
                let n = self.nodes.get_mut(to).ok_or_else(|| Failure::Driver(format!("message to {}", msg.to)))?;
                let n = Arc::make_mut(n);
                let term = n.raft.term();
                let contact = match msg.body {
                    MessageBody::Append(_) | MessageBody::Heartbeat(_) => msg.term >= term,
                    MessageBody::TimeoutNow => msg.term > term,
                    _ => false,
                };
                n.raft.handle_message(Instant(n.clock), msg);
                if contact {
                    n.lease = true;
                }
                Some(to)
            }
            Action::Drop { key } => {
                let pos = self.find(key)?;
                self.take_copy(pos);
                self.used.losses += 1;
                None
            }
            Action::Duplicate { key } => {
                let pos = self.find(key)?;
                self.net[pos].copies += 1;
                self.used.duplicates += 1;
                None
            }
            Action::Timeout { node } => {
                self.node(node)?;
                let n = Arc::make_mut(&mut self.nodes[node]);
                let at = n.raft.poll_timeout().ok_or_else(|| Failure::Driver(format!("n{} has no timer", n.id)))?;
                n.clock = n.clock.max(at.0);
                let was_leader = n.raft.role() == Role::Leader;
                n.raft.handle_timeout(Instant(n.clock));
                if was_leader {
                    n.phase ^= 1;
                } else {
                    n.lease = false;
                }
                Some(node)
            }
            Action::Expire { node } => {
                self.node(node)?;
                let n = Arc::make_mut(&mut self.nodes[node]);
                n.clock += ELECTION_TIMEOUT_NS;
                n.raft.handle_timeout(Instant(n.clock));
                n.lease = false;
                Some(node)
            }
            Action::Persist { node } => {
                self.node(node)?;
                let ack = cfg.bug != Some(ModelBug::AckBeforePersist);
                let n = Arc::make_mut(&mut self.nodes[node]);
                let batch =
                    n.disk.pop_front().ok_or_else(|| Failure::Driver(format!("n{} has nothing to persist", n.id)))?;
                batch.write_to(n.raft.storage_mut())?;
                if ack {
                    n.raft.persisted(Instant(n.clock), batch.io);
                    n.io_acked = batch.io.0;
                }
                Some(node)
            }
            Action::Propose { node } => {
                self.node(node)?;
                self.used.proposals += 1;
                let data = Data::from(format!("p{}", self.used.proposals).as_str());
                let n = Arc::make_mut(&mut self.nodes[node]);
                n.raft
                    .propose(Instant(n.clock), data)
                    .map_err(|e| Failure::Driver(format!("proposal on n{} refused: {e}", n.id)))?;
                Some(node)
            }
            Action::Reconfigure { node } => {
                self.node(node)?;
                self.used.conf_changes += 1;
                let n = Arc::make_mut(&mut self.nodes[node]);
                let conf = n.raft.configuration();
                let change = match (conf.learners.iter().next(), conf.voters.iter().next_back()) {
                    (Some(l), _) => quorate_core::ConfChange::Promote(*l),
                    (None, Some(v)) => quorate_core::ConfChange::Remove(*v),
                    (None, None) => return Err(Failure::Driver("a leader without voters".into())),
                };
                // Refusals (a change in flight, no healthy quorum) are legitimate outcomes.
                let _ = n.raft.propose_conf_change(Instant(n.clock), change);
                Some(node)
            }
            Action::Read { node } => {
                self.node(node)?;
                self.used.reads += 1;
                let id = u64::from(self.used.reads);
                let committed = self.committed.keys().next_back().copied().unwrap_or_default();
                let n = Arc::make_mut(&mut self.nodes[node]);
                if cfg.bug == Some(ModelBug::LocalReads) {
                    // The broken driver answers at once from the node's own state.
                    check_read_fresh(n.id, n.raft.commit_index(), committed, false)?;
                    self.confirmed += 1;
                } else {
                    let level = if cfg.lease_reads { ReadLevel::Lease } else { ReadLevel::Linearizable };
                    // A refused read (no leader, too many pending) is a legitimate outcome.
                    if n.raft.read(Instant(n.clock), ReadId(id), level).is_ok() {
                        self.reads.push((id, node, committed, cfg.lease_reads));
                    }
                }
                Some(node)
            }
            Action::Crash { node } => {
                self.node(node)?;
                self.used.crashes += 1;
                let c = core_config(cfg, self.nodes[node].id);
                let n = Arc::make_mut(&mut self.nodes[node]);
                let stable = n.raft.storage().clone();
                if let Some(notes) = notes.as_deref_mut()
                    && !n.disk.is_empty()
                {
                    notes.push(format!("n{} loses {} unwritten persist batch(es)", n.id, n.disk.len()));
                }
                n.raft = Raft::new(c, stable, Instant(n.clock))
                    .map_err(|e| Failure::Driver(format!("n{} cannot restart: {e}", n.id)))?;
                if let Some(hook) = cfg.core_hook {
                    hook(&mut n.raft);
                }
                n.disk.clear();
                n.held.clear();
                // Reads asked of the old process are gone with it.
                self.reads.retain(|r| r.1 != node);
                n.io_acked = 0;
                n.lease = true;
                Some(node)
            }
        };
        if let Some(i) = touched {
            if cfg.lease_reads {
                self.now = self.now.max(self.nodes[i].clock);
            }
            if cfg.hold_unpersisted_term && !self.nodes[i].held.is_empty() {
                let n = Arc::make_mut(&mut self.nodes[i]);
                let durable = n.raft.storage().hard_state().term;
                let (ready, still): (Vec<Message>, Vec<Message>) =
                    std::mem::take(&mut n.held).into_iter().partition(|m| m.term <= durable);
                n.held = still;
                for m in ready {
                    self.send(m, scratch);
                }
            }
            let n = Arc::make_mut(&mut self.nodes[i]);
            if n.raft.role() == Role::Leader {
                if n.leading != Some(n.raft.term()) {
                    n.leading = Some(n.raft.term());
                    n.phase = 0;
                }
            } else {
                n.leading = None;
                n.phase = 0;
            }
            self.drain(cfg, i, scratch, &mut notes)?;
            let fp = node_fingerprint(&self.nodes[i], scratch);
            Arc::make_mut(&mut self.nodes[i]).fp = fp;
            self.collect_dead_messages();
        }
        self.check(cfg)
    }

    /// Removes messages whose delivery can no longer do anything: kinds the receiver ignores
    /// below its term, from a term below the one on the receiver's stable storage (its term
    /// never falls below that, even across a restart).
    fn collect_dead_messages(&mut self) {
        let nodes = &self.nodes;
        self.net.retain(|f| {
            let m = &f.msg;
            let answered = match &m.body {
                MessageBody::Append(_) | MessageBody::Heartbeat(_) => true,
                MessageBody::RequestVote(rv) => rv.pre_vote,
                _ => false,
            };
            let stable_term =
                nodes.get((m.to.get() as usize).wrapping_sub(1)).map(|n| n.raft.storage().hard_state().term);
            answered || stable_term.is_none_or(|t| m.term >= t)
        });
    }

    fn take_copy(&mut self, pos: usize) {
        if self.net[pos].copies > 1 {
            self.net[pos].copies -= 1;
        } else {
            self.net.remove(pos);
        }
    }

    /// Hands node `i`'s `Ready`s to the network and its persist queue until it has none.
    fn drain(
        &mut self,
        cfg: &ModelConfig,
        i: usize,
        scratch: &mut Scratch,
        notes: &mut Option<&mut Vec<String>>,
    ) -> Result<(), Failure> {
        for _ in 0..64 {
            if !self.nodes[i].raft.has_ready() {
                break;
            }
            let n = Arc::make_mut(&mut self.nodes[i]);
            let ready = n.raft.ready();
            if ready.is_empty() {
                break;
            }
            if ready.take_snapshot.is_some() || !ready.send_snapshots.is_empty() {
                return Err(Failure::Driver("snapshots are not modelled".into()));
            }
            if let Some(p) = ready.persist {
                let io = p.io;
                if let Some(notes) = notes.as_deref_mut() {
                    notes.push(format!(
                        "n{} hands out batch {}: hard state {:?}, entries {:?}",
                        n.id,
                        io.0,
                        p.hard_state,
                        p.entries.iter().map(Entry::id).collect::<Vec<_>>()
                    ));
                }
                n.disk.push_back(Batch {
                    io,
                    hard_state: p.hard_state,
                    entries: p.entries,
                    install: p.install,
                    compact: p.compact,
                });
                if cfg.bug == Some(ModelBug::AckBeforePersist) {
                    n.raft.persisted(Instant(n.clock), io);
                    n.io_acked = io.0;
                }
            }
            let mut messages = ready.messages;
            if cfg.hold_unpersisted_term {
                let durable = n.raft.storage().hard_state().term;
                let pre_vote = |m: &Message| match &m.body {
                    MessageBody::RequestVote(r) => r.pre_vote,
                    MessageBody::VoteResponse(v) => v.pre_vote,
                    _ => false,
                };
                let (hold, send): (Vec<Message>, Vec<Message>) =
                    messages.into_iter().partition(|m| m.term > durable && !pre_vote(m));
                n.held.extend(hold);
                messages = send;
            }
            if cfg.check_durability {
                let store = n.raft.storage();
                for m in &messages {
                    check_durable(m, store.hard_state(), store, n.raft.term(), |i| n.raft.entry_term(i).ok())?;
                }
            }
            let id = n.id;
            for e in &ready.committed {
                self.observe_apply(id, e)?;
            }
            for rr in &ready.reads {
                if let Some(pos) = self.reads.iter().position(|r| r.0 == rr.id.0) {
                    let (_, _, committed, lease) = self.reads.remove(pos);
                    check_read_fresh(id, rr.index, committed, lease)?;
                    self.confirmed += 1;
                }
            }
            for f in &ready.failed_reads {
                self.reads.retain(|r| r.0 != f.id.0);
            }
            for m in messages {
                if let Some(notes) = notes.as_deref_mut() {
                    notes.push(format!("n{} sends to n{} [term {}] {:?}", m.from, m.to, m.term, m.body));
                }
                self.send(m, scratch);
            }
        }
        Ok(())
    }

    fn observe_apply(&mut self, node: NodeId, e: &Entry) -> Result<(), Failure> {
        let mut sm = StateMachineSafety::default();
        for id in &self.applied {
            sm.observe_apply(node, &Entry { index: id.index, term: id.term, payload: EntryPayload::Noop })?;
        }
        sm.observe_apply(node, e)?;
        if e.index.0 == self.applied.len() as u64 + 1 {
            self.applied.push(e.id());
        }
        Ok(())
    }

    fn send(&mut self, m: Message, scratch: &mut Scratch) {
        let key = message_key(&m, scratch);
        // An identical message already in flight absorbs the new copy: delivering it twice is
        // what `Duplicate` explores.
        if let Err(pos) = self.net.binary_search_by_key(&key, |f| f.key) {
            self.net.insert(pos, InFlight { key, copies: 1, msg: Arc::new(m) });
        }
    }

    /// Every safety check on the whole state.
    fn check(&mut self, cfg: &ModelConfig) -> Result<(), Failure> {
        for n in &self.nodes {
            if let Some(reason) = n.raft.halted() {
                return Err(Failure::Halted { node: n.id, reason: reason.to_owned() });
            }
        }
        // What each node knows committed must agree with what was committed before.
        for n in &self.nodes {
            for i in 1..=n.raft.commit_index().0 {
                let index = LogIndex(i);
                let term = n.raft.entry_term(index).map_err(|e| Failure::Driver(format!("n{}: {e}", n.id)))?;
                let got = EntryId::new(term, index);
                match self.committed.get(&index) {
                    Some((expected, _)) if *expected != got => {
                        return Err(
                            Violation::StateMachineSafety { node: n.id, index, expected: *expected, got }.into()
                        );
                    }
                    Some(_) => {}
                    None => {
                        self.committed.insert(index, (got, n.raft.term()));
                    }
                }
            }
        }
        // One leader per term, ever; every leader holds every entry committed before its term.
        let mut election = ElectionSafety::default();
        for (term, node) in &self.leaders {
            election.observe_leader(*node, *term)?;
        }
        let mut completeness = LeaderCompleteness::default();
        for (id, in_term) in self.committed.values() {
            completeness.observe_commit(*id, *in_term);
        }
        for n in &self.nodes {
            if n.raft.role() != Role::Leader {
                continue;
            }
            let term = n.raft.term();
            election.observe_leader(n.id, term)?;
            self.leaders.insert(term, n.id);
            completeness.check_leader(n.id, term, LogIndex::ZERO, |i| n.raft.entry_term(i).ok())?;
        }
        // Log matching across every stable log and every in-memory log.
        let mut owned: Vec<(NodeId, Vec<Entry>)> = Vec::new();
        for n in &self.nodes {
            let view = n.view()?;
            // A broken driver makes the core's log differ from what it wrote; let the other
            // checks show what that leads to.
            if cfg.bug.is_none() && view.last().map_or(LogIndex::ZERO, |e| e.index) != n.raft.last_index()
                || cfg.bug.is_none() && view.iter().any(|e| n.raft.entry_term(e.index).ok() != Some(e.term))
            {
                return Err(Failure::Driver(format!(
                    "n{}: stable log plus unwritten batches differ from the core's log",
                    n.id
                )));
            }
            owned.push((n.id, view));
        }
        let mut logs: Vec<(NodeId, &[Entry])> = owned.iter().map(|(id, l)| (*id, l.as_slice())).collect();
        for n in &self.nodes {
            if !n.disk.is_empty() {
                logs.push((n.id, n.raft.storage().all_entries()));
            }
        }
        check_log_matching(&logs)?;
        Ok(())
    }

    fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        for n in &self.nodes {
            h.write_u64(n.fp);
        }
        h.write_usize(self.net.len());
        for f in &self.net {
            h.write_u64(f.key);
            h.write_u8(f.copies);
        }
        self.used.hash(&mut h);
        for (t, n) in &self.leaders {
            h.write_u64(t.0);
            h.write_u64(n.get());
        }
        h.write_u8(0xff);
        for (i, (id, in_term)) in &self.committed {
            h.write_u64(i.0);
            h.write_u64(id.term.0);
            h.write_u64(in_term.0);
        }
        h.write_u8(0xfd);
        for (id, node, committed, lease) in &self.reads {
            h.write_u64(*id);
            h.write_usize(*node);
            h.write_u64(committed.0);
            h.write_u8(u8::from(*lease));
        }
        h.write_u8(0xfe);
        for id in &self.applied {
            h.write_u64(id.term.0);
        }
        h.finish()
    }
}

// ----- fingerprints -----

/// Fields of the cores' `Debug` output that only record the passage of time or grow without
/// bound, or never change in the model; masked out of fingerprints.
const MASKED_FIELDS: &[&str] = &[
    "cfg",
    "rng",
    "now",
    "election_deadline",
    "heartbeat_deadline",
    "check_quorum_deadline",
    "last_leader_contact",
    "hb_seq",
    "hb_sent_at",
    "seq",
    "acked_seq",
    "acked_sent_at",
    "io_issued",
    "io_persisted",
    "applied_since_snapshot",
    "conf",
    "base_conf",
    "forwarded_reads",
    "transferee",
];

fn node_fingerprint(n: &Node, scratch: &mut Scratch) -> u64 {
    scratch.debug.clear();
    let _ = write!(scratch.debug, "{:?}", n.raft);
    scratch.norm.clear();
    normalize(&scratch.debug, n.io_acked, &mut scratch.norm);
    let mut h = DefaultHasher::new();
    h.write(&scratch.norm);
    h.write_u8(u8::from(n.lease));
    h.write_u8(n.phase);
    h.write_usize(n.held.len());
    for m in &n.held {
        h.write_u64(message_key(m, scratch));
    }
    h.write_usize(n.disk.len());
    for b in &n.disk {
        hash_hard_state(b.hard_state, &mut h);
        h.write_usize(b.entries.len());
        for e in &b.entries {
            hash_entry(e, &mut h);
        }
        h.write_u8(u8::from(b.install.is_some()) | u8::from(b.compact.is_some()) << 1);
    }
    h.finish()
}

fn hash_hard_state(hs: Option<HardState>, h: &mut DefaultHasher) {
    match hs {
        None => h.write_u8(0),
        Some(hs) => {
            h.write_u8(1);
            h.write_u64(hs.term.0);
            h.write_u64(hs.vote.map_or(0, NodeId::get));
            h.write_u64(hs.commit.0);
        }
    }
}

fn hash_entry(e: &Entry, h: &mut DefaultHasher) {
    h.write_u64(e.index.0);
    h.write_u64(e.term.0);
    match &e.payload {
        EntryPayload::Noop => h.write_u8(0),
        EntryPayload::Command(d) => {
            h.write_u8(1);
            d.hash(h);
        }
        other => {
            h.write_u8(2);
            format!("{other:?}").hash(h);
        }
    }
}

fn message_key(m: &Message, scratch: &mut Scratch) -> u64 {
    scratch.debug.clear();
    let _ = write!(scratch.debug, "{m:?}");
    scratch.norm.clear();
    normalize(&scratch.debug, 0, &mut scratch.norm);
    let mut h = DefaultHasher::new();
    h.write(&scratch.norm);
    h.finish()
}

/// Copies a `Debug` rendering, leaving out [`MASKED_FIELDS`], replacing every time reading
/// (`<digits>ms`) with `#ms`, and making `IoId(n)` relative to `io_base`.
fn normalize(src: &str, io_base: u64, out: &mut Vec<u8>) {
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'"' {
            let j = skip_string(b, i);
            out.extend_from_slice(&b[i..j]);
            i = j;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let j = i + b[i..].iter().take_while(|c| c.is_ascii_alphanumeric() || **c == b'_').count();
            let word = &src[i..j];
            if b[j..].starts_with(b": ") && MASKED_FIELDS.contains(&word) {
                i = skip_value(b, j + 2);
                continue;
            }
            if word == "IoId" && b.get(j) == Some(&b'(') {
                let k = j + 1 + b[j + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
                if let Ok(n) = src[j + 1..k].parse::<u64>() {
                    let _ = write!(Bytes(out), "IoId({}", n.saturating_sub(io_base));
                    i = k;
                    continue;
                }
            }
            out.extend_from_slice(word.as_bytes());
            i = j;
        } else if c.is_ascii_digit() {
            let j = i + b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
            if b[j..].starts_with(b"ms") {
                out.extend_from_slice(b"#ms");
                i = j + 2;
            } else {
                out.extend_from_slice(&b[i..j]);
                i = j;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
}

fn skip_string(b: &[u8], mut i: usize) -> usize {
    i += 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// The end of the value starting at `i`: the next `,` or closing bracket at its own level.
fn skip_value(b: &[u8], mut i: usize) -> usize {
    let mut depth = 0usize;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i = skip_string(b, i);
                continue;
            }
            b'{' | b'[' | b'(' => depth += 1,
            b'}' | b']' | b')' => {
                if depth == 0 {
                    return i;
                }
                depth -= 1;
            }
            b',' if depth == 0 => return i,
            _ => {}
        }
        i += 1;
    }
    i
}

struct Bytes<'a>(&'a mut Vec<u8>);

impl fmt::Write for Bytes<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// The visited set's keys are already hashes.
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_masks_time_and_counters() {
        let mut out = Vec::new();
        normalize(
            "Raft { now: 1200ms, term: t1, held: [(IoId(7), [])], x: Foo { seq: 9, y: 3 }, z: 5ms, s: \"a, b\" }",
            5,
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Raft { , term: t1, held: [(IoId(2), [])], x: Foo { , y: 3 }, z: #ms, s: \"a, b\" }"
        );
    }

    #[test]
    fn fingerprints_ignore_the_clock() {
        let cfg = ModelConfig::quick();
        let mut scratch = Scratch::default();
        let a = State::initial(&cfg, &mut scratch).unwrap();
        let mut b = a.clone();
        // A node restarted at a later time, with nothing to lose, is in the same state.
        let c = core_config(&cfg, b.nodes[0].id);
        let n = Arc::make_mut(&mut b.nodes[0]);
        n.clock = 5_000_000_000;
        n.raft = Raft::new(c, n.raft.storage().clone(), Instant(5_000_000_000)).unwrap();
        n.fp = node_fingerprint(n, &mut scratch);
        assert_eq!(a.fingerprint(), b.fingerprint());
    }
}
