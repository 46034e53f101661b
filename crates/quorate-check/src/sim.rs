//! Deterministic simulation of a cluster of `quorate-core` nodes in one thread.
//!
//! One seed decides everything, and every failing seed replays exactly from its number.
//!
//! * **Shapes**: 1, 2, 3 or 5 voters, with 0–2 learners; nodes that join later with an empty
//!   configuration (as `quorate node start --join` does) and are added as learners. The
//!   nemesis removes voters down to one and adds and promotes them back.
//! * **Options** sampled per seed: pre-vote, check-quorum, lease reads (at the configured drift
//!   bound), automatic leave of joint configurations (when off, a simulated operator calls
//!   `leave_joint` now and then).
//! * **Disks as the reference node uses them**: a group committer merges queued persist
//!   batches into one write and reports each batch's completion to the core separately, late,
//!   in order — the store may already hold batch k+1 when k is reported. Fsyncs may be slower
//!   than an election timeout. A crash loses every write not yet synced; a crash during a
//!   write keeps all of an atomic group or none of it (RocksDB's `WriteBatch`), or — on seeds
//!   with torn writes — a prefix of its operations in the order the persist contract gives
//!   (install, compaction, truncation, entries in order, then the hard state). A failed write
//!   crashes the node mid-write. A crash may also *lose synced state* (`lose_synced`): the
//!   store goes back to an earlier state of its own (a write-ahead log that lost its tail)
//!   while the durable record of what it held survives, so the loss is detected; the node
//!   restarts recovering from that record (`quorate_core::Config::recovering`) until a leader
//!   has caught it up.
//! * **Networks**: loss, duplication, reordering, symmetric and one-way partitions, and on
//!   some seeds delays far longer than an election timeout, so messages outlive elections.
//! * **Clocks and processes**: drift within a bound, whole-process pauses (a VM stall: the node
//!   handles nothing, then sees the time jump), clock jumps (within the lease drift bound when
//!   lease reads are on; forward and backward otherwise).
//! * **Operator**: snapshots at arbitrary applied indexes, membership changes, `leave_joint`.
//!
//! Checked on every step: election safety, log matching, leader completeness, state machine
//! safety, durability of every message against what survives a crash (terms of acknowledged
//! entries included, and that no message at a term leaves before the term is durable), read
//! freshness (a confirmed read is at least the highest commit when it was asked for),
//! membership rules, and that no core halts or panics. At the end: linearizability of the
//! client history, and that after the faults heal the cluster elects a leader, commits again
//! and leaves any joint configuration within a bound.

use crate::history::{Completion, OpKind, Operation, ReadCompletion};
use crate::invariants::{
    ElectionSafety, LeaderCompleteness, StateMachineSafety, Violation, VoteOnce, check_durable, check_log_matching,
    check_read_fresh, check_vote_in_lease,
};
use crate::kv::{KvCommand, KvStore};
use crate::linearizability;
use quorate_core::{
    ConfChange, Config, Instant, IoId, Message, MessageBody, Persist, ProposeError, Raft, ReadId, ReadLevel,
    Recovering, Role, SendSnapshot, SplitMix64, VoteResponse,
};
use quorate_log::{
    Configuration, Data, Entry, EntryId, EntryPayload, HardState, LogIndex, LogStorage, MemLog, NodeId, SnapshotMeta,
    StorageError, Term,
};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

const MS: u64 = 1_000_000;

/// Most extra delay of a message on a congested link.
const SLOW_LINK_EXTRA_NS: u64 = 4 * ELECTION_TIMEOUT_NS;

/// The lower bound of every simulated core's election timeout.
pub const ELECTION_TIMEOUT_NS: u64 = 150 * MS;

/// The lease reads' configured bound on clock drift between two nodes over one election
/// timeout.
pub const LEASE_DRIFT_NS: u64 = 20 * MS;

/// The probability that a crash loses the node's synced state, by default (see
/// [`DiskConfig::lose_synced`]).
pub const LOSE_SYNCED_DEFAULT: f64 = 0.1;

/// How often (simulated time) a node's store keeps an earlier state of itself, the state a
/// loss of synced state goes back to.
const CHECKPOINT_INTERVAL_NS: u64 = 300 * MS;

/// The step budget per seed that `quorate-sim` and [`find_violation`] use by default.
pub const STEPS_DEFAULT: u64 = 200_000;

/// A function applied to every core when its node starts (and restarts), before it handles
/// anything: lets a test put the core in a particular mode.
pub type CoreHook = fn(&mut Raft<MemLog>);

/// How a node's disk behaves.
#[derive(Clone, Debug)]
pub struct DiskConfig {
    /// Most queued persist batches merged into one write (1: one write per batch).
    pub group_batches_max: usize,
    /// Writes are not atomic: a crash during a write keeps a prefix of its operations. When
    /// false a group is one atomic write, as RocksDB's `WriteBatch` is: a crash during it keeps
    /// all of it or none.
    pub torn_writes: bool,
    /// Latency of a write that fsyncs (ns), uniform in the range.
    pub fsync_ns: (u64, u64),
    /// Probability that an fsync is slow (during the faults only).
    pub slow_fsync: f64,
    /// Latency of a slow fsync (ns): longer than an election timeout.
    pub slow_fsync_ns: (u64, u64),
    /// Each completion reaches the core up to this long after the previous one (ns).
    pub report_lag_ns: u64,
    /// Probability that a write fails: the node halts, crashing in the middle of the write.
    pub fsync_failure: f64,
    /// A node (by index) whose disk is degraded: during the faults every one of its fsyncs
    /// is slow.
    pub degraded_node: Option<usize>,
    /// Probability that a crash (during the faults) also loses synced state: the store goes
    /// back to an earlier state of its own (taken every `CHECKPOINT_INTERVAL_NS`, or the
    /// empty store) — a shorter log, an older term and vote, an older snapshot — while the
    /// record of what it held survives (the storage's durable mark), so the loss is detected
    /// and the node restarts recovering (`quorate_core::Config::recovering`). A loss is only
    /// injected while every configuration keeps a quorum of voters that are not recovering
    /// (a majority that lost state is unavailable by design: docs/operations.md). Drawn from
    /// a generator of its own, so that a seed without a loss runs as it did before.
    pub lose_synced: f64,
}

/// Settings of a simulation run; [`SimConfig::for_seed`] derives a varied one per seed.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Voters of the initial configuration.
    pub voters: usize,
    /// Learners of the initial configuration.
    pub learners: usize,
    /// Nodes that may ever exist (initial members plus nodes that join later).
    pub max_nodes: usize,
    /// The nemesis never removes voters below this many (1: down to a single voter).
    pub voters_min: usize,
    /// Most events processed.
    pub steps_max: u64,
    /// Simulated time during which faults are injected; afterwards everything heals.
    pub fault_time_ns: u64,
    /// After healing, a leader, a new commit and a non-joint configuration must appear within
    /// this time.
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
    /// Probability that a message is held back far longer (during the faults only).
    pub long_delay: f64,
    /// Delay range of a held-back message (ns): beyond an election timeout.
    pub long_delay_ns: (u64, u64),
    /// The disks.
    pub disk: DiskConfig,
    /// Mean time between nemesis actions (ns).
    pub nemesis_interval_ns: u64,
    /// Clock drift of each node, in parts per million (uniform in ±this).
    pub drift_ppm: i64,
    /// Largest clock jump (ns; 0: none). With lease reads, jumps go forward only, at most once
    /// per node in any two election timeouts, and this is kept within the drift bound.
    pub clock_jump_ns: u64,
    /// Process pause range (ns); `None`: no pauses.
    pub pause_ns: Option<(u64, u64)>,
    /// The cores ask for pre-votes.
    pub pre_vote: bool,
    /// The cores run check-quorum.
    pub check_quorum: bool,
    /// Lease reads, with [`LEASE_DRIFT_NS`] as the drift bound (needs `check_quorum`).
    pub lease_reads: bool,
    /// The cores leave joint configurations by themselves; when false the simulated operator
    /// calls `leave_joint`.
    pub auto_leave_joint: bool,
    /// Membership changes by the nemesis (add learner, promote, remove, replace).
    pub reconfig: bool,
    /// Applied entries after which a node's core asks for a snapshot.
    pub snapshot_entries: u64,
    /// Entries kept behind a snapshot.
    pub compaction_tail: u64,
    /// Most entries in one persist batch (`quorate_core::Config::persist_entries_max`).
    pub persist_entries_max: u64,
    /// The operator also snapshots nodes at arbitrary applied indexes.
    pub operator_snapshots: bool,
    /// The operator snapshots a node right after it applies a configuration entry (a backup
    /// after every membership change). Off in the sampled seeds.
    pub snapshot_on_config: bool,
    /// Check every message against its sender's stable storage. Turning it off shows what a
    /// durability bug does to the other properties.
    pub check_durability: bool,
    /// Check that under check-quorum no voter grants a vote within an election timeout of
    /// hearing from a leader. Turning it off lets a broken promise run on to a stale read.
    pub check_vote_lease: bool,
    /// Driver-side workarounds for known core bugs, to explore past them (all off by
    /// default: the simulator drives the core as quorate-node does).
    pub workarounds: Workarounds,
    /// Print events as they happen.
    pub verbose: bool,
    /// A deliberate driver bug, to show that the checkers catch it.
    pub bug: Option<InjectedBug>,
    /// Applied to every core at start and restart.
    pub core_hook: Option<CoreHook>,
}

/// Driver-side workarounds for bugs of the core found by the simulator, so that a run can
/// look for other bugs past them. Each is what a careful driver could do; none is what
/// quorate-node does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Workarounds {
    /// Hold every message whose term is not yet on the sender's stable storage until it is
    /// (pre-votes excepted): hides hole 1 of issue 16.
    pub hold_unpersisted_term: bool,
    /// Buffer committed entries handed out above a snapshot whose install is not yet
    /// reported, and apply them after it: hides the apply gap.
    pub buffer_apply_past_install: bool,
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
    /// Serve lease reads on followers too, at their own commit index.
    FollowerLeaseReads,
}

impl SimConfig {
    /// A configuration varied by `seed`: the cluster's shape, the core's options, the network,
    /// the disks, the clocks and the nemesis all depend on it.
    #[must_use]
    pub fn for_seed(seed: u64, steps_max: u64) -> SimConfig {
        let mut r = SplitMix64::new(seed ^ 0xC0FF_EE00);
        let mut pick = |options: &[u64]| options[r.below(options.len() as u64) as usize];
        let voters = pick(&[1, 2, 3, 3, 5]) as usize;
        let learners = pick(&[0, 0, 1, 2]) as usize;
        let clients = 2 + pick(&[0, 1, 2, 3]) as usize;
        let keys = 1 + pick(&[0, 1, 2, 3]) as usize;
        let loss = [0.0, 0.01, 0.05, 0.1][pick(&[0, 1, 2, 3]) as usize];
        let duplicate = [0.0, 0.01, 0.05][pick(&[0, 1, 2]) as usize];
        let delay_max = pick(&[MS, 5 * MS, 20 * MS]);
        let long_delay = [0.0, 0.0, 0.005, 0.02][pick(&[0, 1, 2, 3]) as usize];
        let group_batches_max = pick(&[1, 4, 64]) as usize;
        let torn_writes = pick(&[0, 1, 2]) == 0;
        let fsync_max = pick(&[MS, 4 * MS]);
        let slow_fsync = [0.0, 0.01, 0.05][pick(&[0, 1, 2]) as usize];
        let report_lag_ns = pick(&[0, MS / 2, 3 * MS]);
        let fsync_failure = [0.0, 0.0005][pick(&[0, 1]) as usize];
        let degraded = pick(&[0, 1, 2]) == 0;
        let degraded_node = pick(&[0, 1, 2, 3, 4]) as usize % (voters + learners);
        let nemesis_interval_ns = pick(&[200 * MS, 500 * MS]);
        let drift_ppm = pick(&[0, 1_000, 20_000]) as i64;
        let pauses = pick(&[0, 1]) == 1;
        let pre_vote = pick(&[0, 1, 1]) == 1;
        let check_quorum = pick(&[0, 1, 1]) == 1;
        let lease_reads = check_quorum && pick(&[0, 1]) == 1;
        let auto_leave_joint = pick(&[0, 1, 1]) == 1;
        let snapshot_entries = pick(&[20, 50, 200]);
        let compaction_tail = pick(&[0, 5, 30]);
        let operator_snapshots = pick(&[0, 1]) == 1;
        // From a generator of its own, so that every other choice of a seed stays as it was.
        let persist_entries_max = [u64::MAX, u64::MAX, 3, 1][SplitMix64::new(seed ^ 0xBA7C_4E55).below(4) as usize];
        // With lease reads, a forward jump on a follower shortens the time it refuses votes:
        // keep it within what the drift bound leaves over (see `clock_jump`).
        let clock_jump_ns = match (lease_reads, drift_ppm) {
            (true, 20_000) => 8 * MS,
            (true, _) => 15 * MS,
            (false, _) => pick(&[0, 50 * MS, 300 * MS]),
        };
        SimConfig {
            voters,
            learners,
            max_nodes: voters + learners + 2,
            voters_min: 1,
            steps_max,
            fault_time_ns: 4_000 * MS,
            recovery_bound_ns: 3_000 * MS,
            clients,
            keys,
            loss,
            duplicate,
            delay_ns: (MS / 10, delay_max),
            long_delay,
            long_delay_ns: (ELECTION_TIMEOUT_NS, 8 * ELECTION_TIMEOUT_NS),
            disk: DiskConfig {
                group_batches_max,
                torn_writes,
                fsync_ns: (MS / 20, fsync_max),
                slow_fsync,
                slow_fsync_ns: (ELECTION_TIMEOUT_NS, 5 * ELECTION_TIMEOUT_NS),
                report_lag_ns,
                fsync_failure,
                degraded_node: degraded.then_some(degraded_node),
                lose_synced: LOSE_SYNCED_DEFAULT,
            },
            nemesis_interval_ns,
            drift_ppm,
            clock_jump_ns,
            pause_ns: pauses.then_some((50 * MS, 800 * MS)),
            pre_vote,
            check_quorum,
            lease_reads,
            auto_leave_joint,
            reconfig: true,
            snapshot_entries,
            compaction_tail,
            persist_entries_max,
            operator_snapshots,
            snapshot_on_config: false,
            check_durability: true,
            check_vote_lease: true,
            workarounds: Workarounds::default(),
            verbose: false,
            bug: None,
            core_hook: None,
        }
    }

    /// Sets one setting by name, for `quorate-sim --set NAME=VALUE`: `voters`, `learners`,
    /// `voters_min`, `pre_vote`, `check_quorum`, `lease_reads`, `auto_leave_joint`,
    /// `operator_snapshots`, `snapshot_on_config`, `reconfig`, `torn_writes`, `group_batches_max`, `long_delay`,
    /// `slow_fsync`, `loss`, `snapshot_entries`, `compaction_tail`, `persist_entries_max`, `degraded_node` (an index),
    /// `nemesis_interval_ms`, `check_durability`, `lose_synced` (a probability),
    /// `check_vote_lease`, `hold_unpersisted_term`, `buffer_apply_past_install`. Setting `lease_reads`
    /// also turns `check_quorum` on and bounds clock jumps; `voters` raises `max_nodes`.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        let bad = || format!("`{value}` is not a valid value for {name}");
        let flag = || match value {
            "true" | "on" | "1" => Ok(true),
            "false" | "off" | "0" => Ok(false),
            _ => Err(bad()),
        };
        let count = || value.parse::<u64>().map_err(|_| bad());
        let share = || value.parse::<f64>().ok().filter(|p| (0.0..=1.0).contains(p)).ok_or_else(bad);
        match name {
            "voters" => self.voters = count()?.clamp(1, 7) as usize,
            "learners" => self.learners = count()?.min(4) as usize,
            "voters_min" => self.voters_min = count()?.clamp(1, 7) as usize,
            "pre_vote" => self.pre_vote = flag()?,
            "check_quorum" => self.check_quorum = flag()?,
            "lease_reads" => self.lease_reads = flag()?,
            "auto_leave_joint" => self.auto_leave_joint = flag()?,
            "operator_snapshots" => self.operator_snapshots = flag()?,
            "snapshot_on_config" => self.snapshot_on_config = flag()?,
            "reconfig" => self.reconfig = flag()?,
            "torn_writes" => self.disk.torn_writes = flag()?,
            "group_batches_max" => self.disk.group_batches_max = count()?.max(1) as usize,
            "long_delay" => self.long_delay = share()?,
            "slow_fsync" => self.disk.slow_fsync = share()?,
            "lose_synced" => self.disk.lose_synced = share()?,
            "loss" => self.loss = share()?,
            "snapshot_entries" => self.snapshot_entries = count()?,
            "compaction_tail" => self.compaction_tail = count()?,
            "persist_entries_max" => self.persist_entries_max = count()?.max(1),
            "degraded_node" => self.disk.degraded_node = Some(count()? as usize),
            "nemesis_interval_ms" => self.nemesis_interval_ns = count()?.max(10) * MS,
            "check_durability" => self.check_durability = flag()?,
            "check_vote_lease" => self.check_vote_lease = flag()?,
            "hold_unpersisted_term" => self.workarounds.hold_unpersisted_term = flag()?,
            "buffer_apply_past_install" => self.workarounds.buffer_apply_past_install = flag()?,
            _ => return Err(format!("unknown setting `{name}`")),
        }
        self.voters = self.voters.max(self.voters_min);
        self.max_nodes = self.max_nodes.max(self.voters + self.learners + 2);
        if self.lease_reads {
            self.check_quorum = true;
            let bound = if self.drift_ppm >= 20_000 { 8 * MS } else { 15 * MS };
            self.clock_jump_ns = self.clock_jump_ns.min(bound);
        }
        Ok(())
    }

    /// One line describing the cluster's shape and the options, for narration.
    #[must_use]
    pub fn describe(&self) -> String {
        format!(
            "{} voter(s), {} learner(s), up to {} nodes; pre-vote {}, check-quorum {}, lease reads {}, auto-leave {}; \
             disk: groups of <= {} batches, {} writes, slow fsync {}, degraded disk on {}, report lag {:.1} ms, synced state lost at {} of crashes; long delays {}, pauses {}, \
             clock jumps <= {} ms, drift {} ppm, loss {}, dup {}",
            self.voters,
            self.learners,
            self.max_nodes,
            self.pre_vote,
            self.check_quorum,
            self.lease_reads,
            self.auto_leave_joint,
            self.disk.group_batches_max,
            if self.disk.torn_writes { "torn" } else { "atomic" },
            self.disk.slow_fsync,
            self.disk.degraded_node.map_or_else(|| "none".to_owned(), |i| format!("node {}", i + 1)),
            self.disk.report_lag_ns as f64 / MS as f64,
            self.disk.lose_synced,
            self.long_delay,
            self.pause_ns.is_some(),
            self.clock_jump_ns / MS,
            self.drift_ppm,
            self.loss,
            self.duplicate,
        )
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
    /// Crashes injected (including failed writes).
    pub crashes: u64,
    /// Crashes that hit a node in the middle of a write.
    pub mid_write_crashes: u64,
    /// Of those, crashes that kept part of the write (torn writes only).
    pub torn_writes: u64,
    /// Crashes that lost synced state (the node restarted recovering).
    pub lost_states: u64,
    /// Recoveries from lost synced state that ended (`Ready::recovered`).
    pub recoveries: u64,
    /// Partitions injected.
    pub partitions: u64,
    /// Process pauses injected.
    pub pauses: u64,
    /// Clock jumps injected.
    pub clock_jumps: u64,
    /// Messages held back beyond an election timeout.
    pub long_delays: u64,
    /// Times a voter that had heard from a leader within an election timeout moved to a
    /// higher term, with no leader, on a message other than a vote request.
    pub term_moves_in_lease: u64,
    /// Writes (groups) issued.
    pub writes: u64,
    /// Writes that merged more than one batch.
    pub merged_writes: u64,
    /// Fsyncs slower than an election timeout.
    pub slow_fsyncs: u64,
    /// Client operations recorded.
    pub ops: usize,
    /// Client operations that completed successfully.
    pub ops_ok: usize,
    /// Reads confirmed by a lease without a round trip.
    pub lease_reads: u64,
    /// Membership changes appended (each step of a joint change counts once).
    pub conf_changes: u64,
    /// Membership changes refused as unsafe or premature.
    pub conf_refusals: u64,
    /// Times the operator left a joint configuration.
    pub leave_joints: u64,
    /// Snapshots taken (asked for by the core or by the operator).
    pub snapshots: u64,
    /// Snapshots installed from a leader.
    pub installs: u64,
    /// Most voters in any leader's configuration.
    pub most_voters: usize,
    /// Fewest voters in any leader's configuration.
    pub fewest_voters: usize,
    /// The client history.
    pub history: Vec<Operation>,
    /// Every violation found (the run stops at the first safety violation).
    pub violations: Vec<Violation>,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Deliver(usize),
    Written { node: usize, incarnation: u64 },
    Persisted { node: usize, incarnation: u64, io: IoId },
    Client(usize),
    Nemesis,
    Operator,
    Restart { node: usize },
    Heal,
    Snapshot(usize),
    Unblock { from: usize, to: usize },
    OperatorSnapshot { node: usize, incarnation: u64 },
}

/// A snapshot in transit: (from, to, sender's term, metadata, data).
type Transfer = (usize, usize, Term, SnapshotMeta, KvStore);

/// A persist batch as the disk holds it.
#[derive(Clone, Debug)]
struct Batch {
    io: IoId,
    hard_state: Option<HardState>,
    entries: Vec<Entry>,
    sync: bool,
    install: Option<(SnapshotMeta, KvStore)>,
    compact: Option<SnapshotMeta>,
}

impl Batch {
    /// Operations of this batch when written piece by piece: the install, the compaction, the
    /// truncation, each entry, and the hard state (first or last).
    fn ops(&self) -> usize {
        usize::from(self.install.is_some())
            + usize::from(self.compact.is_some())
            + usize::from(self.hard_state.is_some())
            + if self.entries.is_empty() { 0 } else { 1 + self.entries.len() }
    }

    /// Writes the first `limit` operations to `store` (all of them with `usize::MAX`) in the
    /// order of the persist contract (`quorate_core::Persist`: install, compaction, entries,
    /// hard state); returns the operations written. The install, if written, is also recorded
    /// in `snapshot`.
    fn write(
        &self,
        store: &mut MemLog,
        limit: usize,
        snapshot: &mut Option<(SnapshotMeta, KvStore)>,
    ) -> Result<usize, StorageError> {
        let mut done = 0;
        macro_rules! step {
            ($e:expr) => {
                if done == limit {
                    return Ok(done);
                }
                $e;
                done += 1;
            };
        }
        if let Some((meta, data)) = &self.install {
            step!({
                store.apply_snapshot(meta.clone());
                *snapshot = Some((meta.clone(), data.clone()));
            });
        }
        if let Some(meta) = &self.compact {
            step!(store.apply_snapshot(meta.clone()));
        }
        if let Some(first) = self.entries.first() {
            step!(store.truncate_from(first.index));
            for e in &self.entries {
                step!(store.append(std::slice::from_ref(e))?);
            }
        }
        if let Some(hs) = self.hard_state {
            // A store holds no commit index beyond its entries (quorate-storage refuses it:
            // the second finding of issue 18's soak).
            if hs.commit > quorate_log::LogStorage::last_index(store) {
                return Err(StorageError::Unavailable(hs.commit));
            }
            step!(store.set_hard_state(hs));
        }
        Ok(done)
    }
}

/// A node's disk: the group committer's queue, the write in progress, and what survives a
/// crash.
#[derive(Default)]
struct Disk {
    /// Batches handed out and not yet written.
    queue: VecDeque<Batch>,
    /// The group being written (empty when idle), and whether it fsyncs.
    writing: Vec<Batch>,
    writing_sync: bool,
    /// Groups written without an fsync since the last one: lost at a crash.
    unsynced: Vec<Batch>,
    /// Installs written whose completion is not yet reported: (io, metadata, data).
    installs: VecDeque<(IoId, SnapshotMeta, KvStore)>,
    /// When the latest completion reaches the core.
    last_report_at: u64,
}

impl Disk {
    /// Whether a snapshot install is handed out and not yet reported.
    fn install_pending(&self) -> bool {
        !self.installs.is_empty() || self.queue.iter().chain(&self.writing).any(|b| b.install.is_some())
    }
}

struct Node {
    id: NodeId,
    raft: Option<Raft<MemLog>>,
    /// Changes at every start and crash: completions and replies of an earlier process are
    /// recognized and dropped.
    incarnation: u64,
    drift_ppm: i64,
    /// Added to the node's clock: the sum of its clock jumps.
    clock_offset_ns: i64,
    last_jump_at: u64,
    /// The process handles nothing before this time.
    paused_until: u64,
    /// Every fsync is slow before this time (a disk under contention).
    disk_slow_until: u64,
    disk: Disk,
    /// What survives a crash: the log and hard state as durably written.
    durable: MemLog,
    kv: KvStore,
    applied: LogIndex,
    /// The configuration in force at `applied`.
    applied_conf: Configuration,
    /// Reads confirmed but waiting for apply: (read id, index).
    parked_reads: Vec<(ReadId, LogIndex)>,
    /// The latest snapshot (taken, or installed and reported): metadata and data.
    snapshot: Option<(SnapshotMeta, KvStore)>,
    /// The latest snapshot that survives a crash.
    durable_snapshot: Option<(SnapshotMeta, KvStore)>,
    /// A received snapshot staged until its install is handed out.
    staged: Option<(SnapshotMeta, KvStore)>,
    /// When (its own clock, ns) the node last heard from a leader it follows, and who.
    contact: Option<(u64, NodeId)>,
    /// Messages held until their term is durable (`Workarounds::hold_unpersisted_term`).
    held: Vec<Message>,
    /// Committed entries waiting for a snapshot install (`Workarounds::buffer_apply_past_install`).
    apply_buffer: Vec<Entry>,
    /// The configuration the node was created with (the bootstrap one, or empty for a node
    /// that joins).
    bootstrap: Configuration,
    /// An earlier durable state of the store (its log and hard state, and its snapshot), and
    /// when it was taken: what a loss of synced state goes back to.
    checkpoint: (MemLog, Option<(SnapshotMeta, KvStore)>, u64),
    /// The record of what the store held before it lost synced state, kept until the core
    /// reports the end of its recovery (the node's `lost-state` file).
    record: Option<Recovering>,
}

impl Node {
    fn new(id: NodeId, incarnation: u64, drift_ppm: i64, bootstrap: Configuration) -> Node {
        Node {
            id,
            raft: None,
            incarnation,
            drift_ppm,
            clock_offset_ns: 0,
            last_jump_at: 0,
            paused_until: 0,
            disk_slow_until: 0,
            disk: Disk::default(),
            durable: MemLog::new(bootstrap.clone()),
            kv: KvStore::default(),
            applied: LogIndex::ZERO,
            applied_conf: bootstrap.clone(),
            parked_reads: Vec::new(),
            snapshot: None,
            durable_snapshot: None,
            staged: None,
            contact: None,
            held: Vec::new(),
            apply_buffer: Vec::new(),
            checkpoint: (MemLog::new(bootstrap.clone()), None, 0),
            record: None,
            bootstrap,
        }
    }

    fn running(&self) -> Option<&Raft<MemLog>> {
        self.raft.as_ref()
    }
}

#[derive(Debug)]
enum Waiting {
    Write { node: usize, id: EntryId, incarnation: u64 },
    Read { node: usize, read: ReadId, incarnation: u64, lease: bool, committed: LogIndex },
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
    /// Decides losses of synced state (see [`DiskConfig::lose_synced`]).
    loss_rng: SplitMix64,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, Event)>>,
    messages: BTreeMap<usize, Message>,
    transfers: BTreeMap<usize, Transfer>,
    next_msg: usize,
    nodes: Vec<Node>,
    blocked: BTreeSet<(usize, usize)>,
    /// Congested links: (from, to) → until when messages on it get an extra delay.
    slow: BTreeMap<(usize, usize), u64>,
    clients: Vec<Client>,
    next_read: u64,
    history: Vec<Operation>,
    election: ElectionSafety,
    votes: VoteOnce,
    completeness: LeaderCompleteness,
    sm: StateMachineSafety,
    known_leaders: BTreeSet<(u64, usize)>,
    /// The highest commit index any node has reached so far.
    commit_high: LogIndex,
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
        let members = cfg.voters + cfg.learners;
        let ids: Vec<NodeId> = (1..=members as u64).filter_map(NodeId::new).collect();
        let conf = Configuration {
            voters: ids.iter().take(cfg.voters).copied().collect(),
            learners: ids.iter().skip(cfg.voters).copied().collect(),
            ..Configuration::default()
        };
        let mut nodes = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let drift = drift_of(&mut rng, cfg.drift_ppm);
            nodes.push(Node::new(*id, i as u64 * 1000, drift, conf.clone()));
        }
        let clients = (0..cfg.clients)
            .map(|c| Client { guess: c % members, op_seq: 0, pending: None, last_value: BTreeMap::new() })
            .collect();
        let mut sim = Sim {
            seed,
            rng,
            loss_rng: SplitMix64::new(seed ^ 0x1057_57A7_E000),
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            messages: BTreeMap::new(),
            transfers: BTreeMap::new(),
            next_msg: 0,
            nodes,
            blocked: BTreeSet::new(),
            slow: BTreeMap::new(),
            clients,
            next_read: 1,
            history: Vec::new(),
            election: ElectionSafety::default(),
            votes: VoteOnce::default(),
            completeness: LeaderCompleteness::default(),
            sm: StateMachineSafety::default(),
            known_leaders: BTreeSet::new(),
            commit_high: LogIndex::ZERO,
            report: SimReport { seed, fewest_voters: usize::MAX, ..SimReport::default() },
            healed_at: None,
            commit_at_heal: LogIndex::ZERO,
            recovered: false,
            cfg,
        };
        sim.log(|| format!("seed {seed}: {}", sim.cfg.describe()));
        for i in 0..sim.nodes.len() {
            sim.start_node(i);
        }
        for c in 0..sim.clients.len() {
            let t = sim.rng.below(50 * MS);
            sim.schedule(t, Event::Client(c));
        }
        let t = sim.cfg.nemesis_interval_ns;
        sim.schedule(t, Event::Nemesis);
        sim.schedule(100 * MS, Event::Operator);
        let heal = sim.cfg.fault_time_ns;
        sim.schedule(heal, Event::Heal);
        sim
    }

    fn core_config(&self, id: NodeId) -> Config {
        let mut c = Config::new(id);
        c.election_timeout_min = Duration::from_nanos(ELECTION_TIMEOUT_NS);
        c.heartbeat_interval = Duration::from_millis(30);
        c.msg_bytes_max = 4096;
        c.inflight_msgs_max = 8;
        c.inflight_bytes_max = 16 * 1024;
        c.uncommitted_bytes_max = 64 * 1024;
        c.seed = self.seed.wrapping_mul(31).wrapping_add(id.get());
        c.snapshot_entries_threshold = self.cfg.snapshot_entries;
        c.compaction_tail_entries = self.cfg.compaction_tail;
        c.persist_entries_max = self.cfg.persist_entries_max;
        c.promote_lag_entries_max = 20;
        c.snapshot_send_timeout = Duration::from_millis(500);
        c.pre_vote = self.cfg.pre_vote;
        c.check_quorum = self.cfg.check_quorum;
        c.auto_leave_joint = self.cfg.auto_leave_joint;
        if self.cfg.lease_reads {
            // Drift over one election timeout: 150 ms × 2 × drift_ppm, plus clock jumps; see
            // `SimConfig::for_seed`.
            c.lease_clock_drift_max = Some(Duration::from_nanos(LEASE_DRIFT_NS));
        }
        c
    }

    fn faults(&self) -> bool {
        self.healed_at.is_none()
    }

    fn local_time(&self, node: usize, t: u64) -> Instant {
        let n = &self.nodes[node];
        let ppm = i128::from(n.drift_ppm);
        let v = i128::from(t) + i128::from(t) * ppm / 1_000_000 + i128::from(n.clock_offset_ns);
        Instant(v.max(0) as u64)
    }

    fn sim_time(&self, node: usize, local: Instant) -> u64 {
        let n = &self.nodes[node];
        let ppm = i128::from(n.drift_ppm);
        let base = (i128::from(local.0) - i128::from(n.clock_offset_ns)).max(0);
        let t = base * 1_000_000 / (1_000_000 + ppm);
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

    fn violation(&mut self, v: Violation) {
        self.log(|| format!("VIOLATION {v}"));
        self.report.violations.push(v);
    }

    fn start_node(&mut self, i: usize) {
        let id = self.nodes[i].id;
        let mut cfg = self.core_config(id);
        let snap = self.nodes[i].durable_snapshot.clone();
        if let Some((meta, _)) = &snap {
            cfg.applied = meta.last.index;
            cfg.snapshot = Some(meta.clone());
        }
        cfg.recovering = self.nodes[i].record;
        let now = self.local_time(i, self.now);
        match Raft::new(cfg, self.nodes[i].durable.clone(), now) {
            Ok(mut r) => {
                if let Some(hook) = self.cfg.core_hook {
                    hook(&mut r);
                }
                self.nodes[i].raft = Some(r);
            }
            Err(e) => self.violation(Violation::Durability { node: id, detail: format!("cannot restart: {e}") }),
        }
        let n = &mut self.nodes[i];
        n.incarnation += 1;
        n.paused_until = 0;
        n.kv = snap.as_ref().map(|(_, kv)| kv.clone()).unwrap_or_default();
        n.applied = snap.as_ref().map_or(LogIndex::ZERO, |(m, _)| m.last.index);
        n.applied_conf = snap.as_ref().map_or_else(|| n.bootstrap.clone(), |(m, _)| m.config.clone());
        n.snapshot = snap;
        n.parked_reads.clear();
        n.disk = Disk::default();
        n.staged = None;
        n.held.clear();
        n.apply_buffer.clear();
    }

    /// Adds a node slot that joins with an empty configuration (it learns the real one
    /// from the leader once added as a learner).
    fn new_node(&mut self) -> Option<usize> {
        if self.nodes.len() >= self.cfg.max_nodes {
            return None;
        }
        let i = self.nodes.len();
        let id = NodeId::new(i as u64 + 1)?;
        let drift = drift_of(&mut self.rng, self.cfg.drift_ppm);
        self.nodes.push(Node::new(id, i as u64 * 1000, drift, Configuration::default()));
        self.start_node(i);
        self.log(|| format!("node {id} starts with an empty configuration, to join"));
        Some(i)
    }

    fn crash(&mut self, i: usize, why: &str) {
        let configurations = self.configurations();
        if self.nodes[i].raft.take().is_none() {
            return;
        }
        self.report.crashes += 1;
        let writing = std::mem::take(&mut self.nodes[i].disk.writing);
        let mut kept = String::new();
        if !writing.is_empty() {
            self.report.mid_write_crashes += 1;
            let total: usize = writing.iter().map(Batch::ops).sum();
            // Drawn so that every seed keeps its trajectory: torn writes used to keep the hard
            // state before the entries half of the time, an order the persist contract forbids
            // (the commit index then survived without the entries it covers).
            let _ = self.rng.chance(0.5);
            // An atomic group is all or nothing; a torn one keeps a prefix of its operations.
            // Groups written before without an fsync reach the disk only if this one does
            // (an atomic write syncs the whole write-ahead log); a torn write has no such
            // ordering and they are lost.
            let (limit, with_unsynced) = if self.cfg.disk.torn_writes {
                (self.rng.below(total as u64 + 1) as usize, false)
            } else if self.rng.chance(0.5) {
                (usize::MAX, true)
            } else {
                (0, false)
            };
            let n = &mut self.nodes[i];
            let mut store = n.durable.clone();
            let mut snapshot = n.durable_snapshot.clone();
            let mut ok = true;
            if with_unsynced {
                for b in &n.disk.unsynced {
                    ok &= b.write(&mut store, usize::MAX, &mut snapshot).is_ok();
                }
            }
            let mut left = limit;
            for b in &writing {
                match b.write(&mut store, left, &mut snapshot) {
                    Ok(done) => left -= done.min(left),
                    Err(_) => ok = false,
                }
            }
            let written = limit.min(total);
            if ok {
                n.durable = store;
                n.durable_snapshot = snapshot;
            }
            if self.cfg.disk.torn_writes && written > 0 && written < total {
                self.report.torn_writes += 1;
            }
            kept = format!(
                " during a write of {} batch(es): {written} of {total} operations survive{}",
                writing.len(),
                if self.cfg.disk.torn_writes { " (torn)" } else { "" }
            );
        }
        self.maybe_lose_synced(i, &configurations);
        let n = &mut self.nodes[i];
        n.disk = Disk::default();
        n.staged = None;
        n.held.clear();
        n.apply_buffer.clear();
        n.snapshot = n.durable_snapshot.clone();
        n.incarnation += 1;
        n.paused_until = 0;
        let id = n.id;
        self.log(|| format!("node {id} crashes ({why}){kept}; unsynced writes are lost"));
        let back = self.now + 50 * MS + self.rng.below(1_000 * MS);
        if self.faults() {
            self.schedule(back, Event::Restart { node: i });
        }
    }

    /// At a crash of node `i` (its process is gone): with probability `lose_synced`, its store
    /// goes back to its checkpoint while the record of what it held survives (see
    /// [`DiskConfig::lose_synced`]). Only during the faults, only if the store changed since
    /// the checkpoint, and only if every configuration in force keeps a quorum of voters that
    /// are not recovering without node `i`.
    fn maybe_lose_synced(&mut self, i: usize, configurations: &[Configuration]) {
        if !self.faults() || self.cfg.disk.lose_synced == 0.0 {
            return;
        }
        let id = self.nodes[i].id;
        let recovering: BTreeSet<NodeId> =
            self.nodes.iter().filter(|n| n.record.is_some() || n.id == id).map(|n| n.id).collect();
        let quorum_left =
            configurations.iter().filter(|c| !c.voters.is_empty()).all(|c| c.has_quorum(|v| !recovering.contains(&v)));
        if !quorum_left || !self.loss_rng.chance(self.cfg.disk.lose_synced) {
            return;
        }
        let n = &mut self.nodes[i];
        let (older, older_snapshot, taken_at) = n.checkpoint.clone();
        let hs = n.durable.hard_state();
        if (hs, n.durable.last_index()) == (older.hard_state(), older.last_index()) {
            return;
        }
        let last_index = n.durable.last_index();
        let last_term = n.durable.term(last_index).unwrap_or(n.durable.snapshot_last().term);
        let now =
            Recovering { term: hs.term, vote: hs.vote, last: EntryId::new(last_term, last_index), commit: hs.commit };
        // Lost again while recovering: the records merge as quorate-storage's do — the
        // higher term with its vote (in one term, a vote either holds), the more up-to-date
        // last entry by term then index (a later term's entry at a lower index replaced the
        // longer tail, which never committed), the higher commit.
        let record = match n.record {
            None => now,
            Some(r) => Recovering {
                term: r.term.max(now.term),
                vote: match r.term.cmp(&now.term) {
                    std::cmp::Ordering::Greater => r.vote,
                    std::cmp::Ordering::Equal => now.vote.or(r.vote),
                    std::cmp::Ordering::Less => now.vote,
                },
                last: r.last.max(now.last),
                commit: r.commit.max(now.commit),
            },
        };
        n.record = Some(record);
        n.durable = older;
        n.durable_snapshot = older_snapshot;
        self.report.lost_states += 1;
        let at = taken_at as f64 / MS as f64;
        self.log(|| {
            format!(
                "node {id} loses synced state: its store goes back to {at:.1} ms; the record survives: term {}, vote {:?}, last {}@{}, commit {}",
                record.term,
                record.vote.map(NodeId::get),
                record.last.index,
                record.last.term,
                record.commit
            )
        });
    }

    /// The configuration every node knows: the latest of a running core, the stored one of a
    /// node that is down.
    fn configurations(&self) -> Vec<Configuration> {
        self.nodes
            .iter()
            .map(|n| match n.running() {
                Some(r) => r.configuration().clone(),
                None => n.durable.initial_state().map(|s| s.config).unwrap_or_default(),
            })
            .collect()
    }

    /// The node an event is for, if it needs that node's process.
    fn event_node(&self, ev: &Event) -> Option<usize> {
        match ev {
            Event::Deliver(k) => self.messages.get(k).map(|m| (m.to.get() - 1) as usize),
            Event::Written { node, .. } | Event::Persisted { node, .. } => Some(*node),
            Event::Snapshot(k) => self.transfers.get(k).map(|t| t.1),
            _ => None,
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
                    let st = self.sim_time(i, t).max(self.now).max(self.nodes[i].paused_until);
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
                match self.event_node(&ev) {
                    // A paused process handles its input when it resumes, in arrival order.
                    Some(i) if self.nodes[i].paused_until > self.now => {
                        let at = self.nodes[i].paused_until;
                        self.schedule(at, ev);
                    }
                    _ => self.handle_event(ev),
                }
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
                self.deliver(m);
            }
            Event::Written { node, incarnation } => self.written(node, incarnation),
            Event::Persisted { node, incarnation, io } => self.persisted(node, incarnation, io),
            Event::Client(c) => self.client_step(c),
            Event::Nemesis => self.nemesis(),
            Event::Operator => self.operator(),
            Event::Restart { node } => {
                if self.nodes[node].raft.is_none() {
                    let id = self.nodes[node].id;
                    self.log(|| format!("node {id} restarts from its stable storage"));
                    self.start_node(node);
                }
            }
            Event::Heal => self.heal(),
            Event::OperatorSnapshot { node, incarnation } => {
                if self.nodes[node].incarnation == incarnation {
                    self.snapshot_node(node);
                }
            }
            Event::Unblock { from, to } => {
                if self.blocked.remove(&(from, to)) {
                    self.log(|| format!("link {} -> {} is back", from + 1, to + 1));
                }
            }
            Event::Snapshot(k) => {
                let Some((from, to, term, meta, kv)) = self.transfers.remove(&k) else { return };
                let local = self.local_time(to, self.now);
                let from_id = self.nodes[from].id;
                let n = &mut self.nodes[to];
                let Some(r) = n.raft.as_mut() else { return };
                if let Ok(true) = r.install_snapshot(local, from_id, term, meta.clone()) {
                    n.staged = Some((meta, kv));
                }
                if r.leader() == Some(from_id) && r.term() == term {
                    n.contact = Some((local.0, from_id));
                }
                self.drain(to);
            }
        }
    }

    /// Hands a message to its recipient, watching the promises check-quorum makes.
    fn deliver(&mut self, m: Message) {
        let to = (m.to.get() - 1) as usize;
        let local = self.local_time(to, self.now);
        let in_lease = self.nodes[to].contact.is_some_and(|(at, _)| local.0.saturating_sub(at) < ELECTION_TIMEOUT_NS);
        let Some(r) = self.nodes[to].raft.as_mut() else { return };
        let before = (r.term(), r.hard_state().vote, r.leader());
        let (from, term) = (m.from, m.term);
        let vote_request = match &m.body {
            MessageBody::RequestVote(rv) if !rv.pre_vote => Some(rv.transfer),
            _ => None,
        };
        let from_leader = matches!(m.body, MessageBody::Append(_) | MessageBody::Heartbeat(_));
        let kind = m.body.kind();
        if self.cfg.verbose
            && matches!(m.body, MessageBody::RequestVote(_) | MessageBody::VoteResponse(_) | MessageBody::TimeoutNow)
        {
            println!(
                "[{:>7.1} ms] node {} ({}, term {}) gets from {from} at term {term}: {:?}",
                self.now as f64 / MS as f64,
                m.to,
                r.role(),
                before.0,
                m.body
            );
        }
        r.handle_message(local, m);
        let after = (r.term(), r.hard_state().vote, r.leader());
        let id = r.id();
        let voter = r.configuration().is_voter(id);
        if from_leader && after.0 == term && after.2 == Some(from) && r.role() == Role::Follower {
            self.nodes[to].contact = Some((local.0, from));
        }
        if in_lease && after.0 > before.0 && after.2.is_none() && vote_request.is_none() && kind != "timeout-now" {
            self.report.term_moves_in_lease += 1;
            self.log(|| format!("node {id}, in a leader's lease, moves to term {} on a {kind} from {from}", after.0));
        }
        let granted = after.0 == term && after.1 == Some(from) && (before.0, before.1) != (term, Some(from));
        if self.cfg.check_quorum
            && self.cfg.check_vote_lease
            && voter
            && granted
            && vote_request == Some(false)
            && let Some(contact) = self.nodes[to].contact
            && let Err(v) = check_vote_in_lease(id, from, term, contact, local.0, ELECTION_TIMEOUT_NS)
        {
            self.violation(v);
            return;
        }
        self.drain(to);
    }

    // ----- the disk -----

    /// Starts writing the queued batches as one group, if the disk is idle.
    fn start_write(&mut self, i: usize) {
        let faults = self.faults();
        let n = &mut self.nodes[i];
        if !n.disk.writing.is_empty() || n.disk.queue.is_empty() {
            return;
        }
        let count = n.disk.queue.len().min(self.cfg.disk.group_batches_max.max(1));
        n.disk.writing = n.disk.queue.drain(..count).collect();
        n.disk.writing_sync = n.disk.writing.iter().any(|b| b.sync);
        let d = &self.cfg.disk;
        let range = if !n.disk.writing_sync {
            (d.fsync_ns.0, d.fsync_ns.0)
        } else if faults && (n.disk_slow_until > self.now || d.degraded_node == Some(i)) {
            // A disk under contention: fsyncs from a third of an election timeout to two.
            self.report.slow_fsyncs += 1;
            (ELECTION_TIMEOUT_NS / 3, 2 * ELECTION_TIMEOUT_NS)
        } else if faults && self.rng.chance(d.slow_fsync) {
            self.report.slow_fsyncs += 1;
            d.slow_fsync_ns
        } else {
            d.fsync_ns
        };
        let latency = range.0 + self.rng.below(range.1 - range.0 + 1);
        self.report.writes += 1;
        self.report.merged_writes += u64::from(count > 1);
        let inc = n.incarnation;
        let (id, sync) = (n.id, n.disk.writing_sync);
        if count > 1 || latency >= ELECTION_TIMEOUT_NS {
            self.log(|| {
                format!(
                    "node {id} writes {count} batch(es) as one{}, done in {:.1} ms",
                    if sync { " with fsync" } else { "" },
                    latency as f64 / MS as f64
                )
            });
        }
        self.schedule(self.now + latency, Event::Written { node: i, incarnation: inc });
    }

    /// A group write completes: the store holds it (durably, if it fsynced), and each batch's
    /// completion is reported to the core later, one by one, in order.
    fn written(&mut self, i: usize, incarnation: u64) {
        if self.nodes[i].incarnation != incarnation || self.nodes[i].raft.is_none() {
            return;
        }
        if self.faults() && self.rng.chance(self.cfg.disk.fsync_failure) {
            // The write failed: the node must not acknowledge it; it halts mid-write.
            self.crash(i, "write failed");
            return;
        }
        let group = std::mem::take(&mut self.nodes[i].disk.writing);
        let sync = self.nodes[i].disk.writing_sync;
        let id = self.nodes[i].id;
        let n = &mut self.nodes[i];
        let Some(r) = n.raft.as_mut() else { return };
        let mut ignored = None;
        let mut failed = None;
        for b in &group {
            if let Err(e) = b.write(r.storage_mut(), usize::MAX, &mut ignored) {
                failed = Some(e);
            }
        }
        if sync && failed.is_none() {
            let unsynced = std::mem::take(&mut n.disk.unsynced);
            for b in unsynced.iter().chain(&group) {
                if let Err(e) = b.write(&mut n.durable, usize::MAX, &mut n.durable_snapshot) {
                    failed = Some(e);
                }
            }
            if self.cfg.disk.lose_synced > 0.0 && self.now >= n.checkpoint.2 + CHECKPOINT_INTERVAL_NS {
                n.checkpoint = (n.durable.clone(), n.durable_snapshot.clone(), self.now);
            }
        }
        if let Some(e) = failed {
            self.violation(Violation::Durability { node: id, detail: format!("bad persist batch: {e}") });
            return;
        }
        let mut ios = Vec::with_capacity(group.len());
        for b in group {
            ios.push(b.io);
            if let Some((meta, data)) = &b.install {
                n.disk.installs.push_back((b.io, meta.clone(), data.clone()));
            }
            if !sync {
                n.disk.unsynced.push(b);
            }
        }
        if sync && !self.nodes[i].held.is_empty() {
            let durable = self.nodes[i].durable.hard_state().term;
            let (ready, still): (Vec<Message>, Vec<Message>) =
                std::mem::take(&mut self.nodes[i].held).into_iter().partition(|m| m.term <= durable);
            self.nodes[i].held = still;
            for m in ready {
                self.send(i, m);
            }
        }
        let lag = self.cfg.disk.report_lag_ns;
        for io in ios {
            let at = self.now.max(self.nodes[i].disk.last_report_at) + self.rng.below(lag + 1);
            self.nodes[i].disk.last_report_at = at;
            self.schedule(at, Event::Persisted { node: i, incarnation, io });
        }
        self.start_write(i);
    }

    /// The core learns that batch `io` (and every earlier one) is on stable storage.
    fn persisted(&mut self, i: usize, incarnation: u64, io: IoId) {
        if self.nodes[i].incarnation != incarnation || self.nodes[i].raft.is_none() {
            return;
        }
        let id = self.nodes[i].id;
        if self.nodes[i].disk.installs.front().is_some_and(|(b, _, _)| *b == io) {
            // The state machine takes the snapshot's data before the core hands out anything
            // after it, as the node does.
            let Some((_, meta, kv)) = self.nodes[i].disk.installs.pop_front() else { return };
            if let Err(v) = self.sm.observe_snapshot(id, meta.last) {
                self.violation(v);
                return;
            }
            let n = &mut self.nodes[i];
            n.kv = kv.clone();
            n.applied = meta.last.index;
            n.applied_conf = meta.config.clone();
            n.snapshot = Some((meta.clone(), kv));
            self.report.installs += 1;
            self.log(|| format!("node {id} installs a snapshot up to {}", meta.last.index));
            let buffered = std::mem::take(&mut self.nodes[i].apply_buffer);
            for e in buffered {
                if e.index > self.nodes[i].applied && !self.apply(i, e) {
                    return;
                }
            }
        }
        let local = self.local_time(i, self.now);
        if let Some(r) = self.nodes[i].raft.as_mut() {
            let before = r.status().persisted_index;
            r.persisted(local, io);
            if self.cfg.verbose {
                let after = r.status().persisted_index;
                println!(
                    "[{:>7.1} ms] node {id}: batch {} reported; persisted index {before} -> {after}",
                    self.now as f64 / MS as f64,
                    io.0
                );
            }
        }
        self.drain(i);
    }

    /// Queues a persist batch handed out by node `i`'s core.
    fn submit(&mut self, i: usize, p: Persist) {
        let id = self.nodes[i].id;
        let install = match (&p.install, self.nodes[i].staged.take()) {
            (None, staged) => {
                self.nodes[i].staged = staged;
                None
            }
            (Some(meta), Some((m, kv))) if m == *meta => Some((m, kv)),
            (Some(meta), _) => {
                self.violation(Violation::Durability {
                    node: id,
                    detail: format!("asked to install snapshot {:?} that was never staged", meta.last),
                });
                return;
            }
        };
        if self.cfg.verbose {
            println!(
                "[{:>7.1} ms] node {id} hands out batch {}: hard state {:?}, entries {:?}, install {:?}, compact {:?}",
                self.now as f64 / MS as f64,
                p.io.0,
                p.hard_state.map(|h| (h.term.0, h.vote.map(NodeId::get), h.commit.0)),
                (p.entries.first().map(|e| e.id()), p.entries.last().map(|e| e.id())),
                install.as_ref().map(|(m, _)| m.last),
                p.compact.as_ref().map(|m| m.last),
            );
        }
        let batch =
            Batch { io: p.io, hard_state: p.hard_state, entries: p.entries, sync: p.sync, install, compact: p.compact };
        self.nodes[i].disk.queue.push_back(batch);
        self.start_write(i);
    }

    // ----- the driver -----

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
                self.submit(i, p);
                if !self.report.violations.is_empty() {
                    return;
                }
            }
            if ready.recovered {
                // The node drops its record of the loss (durably, at once).
                let id = self.nodes[i].id;
                self.nodes[i].record = None;
                self.report.recoveries += 1;
                self.log(|| format!("node {id} has recovered from its lost state: it votes again"));
            }
            for m in ready.messages {
                if let MessageBody::VoteResponse(VoteResponse { pre_vote: false, granted: true }) = m.body
                    && let Err(v) = self.votes.observe_grant(m.from, m.term, m.to)
                {
                    self.violation(v);
                    return;
                }
                if self.cfg.workarounds.hold_unpersisted_term
                    && m.term > self.nodes[i].durable.hard_state().term
                    && !is_pre_vote(&m)
                {
                    self.nodes[i].held.push(m);
                    continue;
                }
                if self.cfg.check_durability
                    && let Some(r) = self.nodes[i].raft.as_ref()
                {
                    let durable = &self.nodes[i].durable;
                    if let Err(v) = check_durable(&m, durable.hard_state(), durable, r.term(), |x| r.entry_term(x).ok())
                    {
                        self.violation(v);
                        return;
                    }
                }
                self.send(i, m);
            }
            for e in ready.committed {
                if !self.apply(i, e) {
                    return;
                }
            }
            for rr in ready.reads {
                if !self.check_read(i, rr.id, rr.index) {
                    return;
                }
                self.nodes[i].parked_reads.push((rr.id, rr.index));
            }
            for f in ready.failed_reads {
                self.fail_read(i, f.id);
            }
            self.serve_parked_reads(i);
            if let Some(meta) = ready.take_snapshot
                && !self.take_snapshot(i, meta)
            {
                return;
            }
            for SendSnapshot { to, meta } in ready.send_snapshots {
                self.send_snapshot(i, to, meta);
            }
        }
        self.observe_roles(i);
        if let Some(r) = self.nodes[i].raft.as_ref() {
            // Commits first appear on the leader that counted the quorum: they are committed
            // in its term.
            let mut at = self.commit_high.next();
            while at <= r.commit_index() {
                if let Ok(t) = r.entry_term(at) {
                    self.completeness.observe_commit(EntryId::new(t, at), r.term());
                }
                at = at.next();
            }
            self.commit_high = self.commit_high.max(r.commit_index());
            if let Some(reason) = r.halted() {
                let (node, reason) = (r.id(), reason.to_owned());
                self.violation(Violation::Halted { node, reason });
            }
        }
    }

    /// Applies one committed entry on node `i`; false after a violation.
    fn apply(&mut self, i: usize, e: Entry) -> bool {
        let id = self.nodes[i].id;
        let applied = self.nodes[i].applied;
        if self.cfg.workarounds.buffer_apply_past_install
            && e.index > applied.next()
            && self.nodes[i].disk.install_pending()
        {
            self.nodes[i].apply_buffer.push(e);
            return true;
        }
        if e.index != applied.next() {
            // The driver applies what it is handed, in order (as quorate-node's apply thread
            // does); a gap means entries that will never reach this state machine.
            self.violation(Violation::ApplyGap { node: id, index: e.index, applied });
            return false;
        }
        if let Err(v) = self.sm.observe_apply(id, &e) {
            self.violation(v);
            return false;
        }
        let mut applied_ok = true;
        match &e.payload {
            EntryPayload::Command(d) => {
                if let Some(cmd) = KvCommand::decode(d) {
                    applied_ok = self.nodes[i].kv.apply(&cmd);
                }
            }
            EntryPayload::Config(c) => {
                let conf = show_conf(c);
                self.log(|| format!("node {id} applies configuration {conf} at {}", e.index));
                self.nodes[i].applied_conf = c.clone();
                if self.cfg.snapshot_on_config {
                    let incarnation = self.nodes[i].incarnation;
                    self.schedule(self.now, Event::OperatorSnapshot { node: i, incarnation });
                }
            }
            _ => {}
        }
        self.nodes[i].applied = e.index;
        self.resolve_writes(i, e.id(), applied_ok);
        true
    }

    /// The core asks for a snapshot at exactly its applied index; false after a violation.
    fn take_snapshot(&mut self, i: usize, meta: SnapshotMeta) -> bool {
        let id = self.nodes[i].id;
        if meta.last.index != self.nodes[i].applied {
            self.violation(Violation::Durability {
                node: id,
                detail: format!("asked to snapshot at {} with {} applied", meta.last.index, self.nodes[i].applied),
            });
            return false;
        }
        if meta.config != self.nodes[i].applied_conf {
            self.violation(Violation::Reconfiguration {
                node: id,
                detail: format!(
                    "asked for a snapshot at {} with configuration {:?}, but {:?} is in force there",
                    meta.last.index, meta.config, self.nodes[i].applied_conf
                ),
            });
            return false;
        }
        self.record_snapshot(i, meta)
    }

    fn record_snapshot(&mut self, i: usize, meta: SnapshotMeta) -> bool {
        let id = self.nodes[i].id;
        if let Err(v) = self.sm.observe_snapshot(id, meta.last) {
            self.violation(v);
            return false;
        }
        // The application writes and syncs the snapshot before reporting it.
        let snap = (meta.clone(), self.nodes[i].kv.clone());
        self.nodes[i].snapshot = Some(snap.clone());
        self.nodes[i].durable_snapshot = Some(snap);
        self.report.snapshots += 1;
        let local = self.local_time(i, self.now);
        if let Some(r) = self.nodes[i].raft.as_mut() {
            r.snapshot_taken(local, meta);
        }
        true
    }

    fn send_snapshot(&mut self, from: usize, to: NodeId, meta: SnapshotMeta) {
        let to_i = (to.get() - 1) as usize;
        let term = self.nodes[from].raft.as_ref().map_or(Term::ZERO, Raft::term);
        let Some((m, kv)) = self.nodes[from].snapshot.clone() else { return };
        if self.cfg.workarounds.hold_unpersisted_term && self.nodes[from].durable.hard_state().term < term {
            // Not yet: the leader retries once the transfer times out.
            return;
        }
        if self.cfg.check_durability && self.nodes[from].durable.hard_state().term < term {
            let id = self.nodes[from].id;
            let stable = self.nodes[from].durable.hard_state().term;
            self.violation(Violation::Durability {
                node: id,
                detail: format!("sent a snapshot to {to} at term {term} while stable storage holds term {stable}"),
            });
            return;
        }
        if m != meta || to_i >= self.nodes.len() || self.blocked.contains(&(from, to_i)) {
            return;
        }
        if self.faults() && self.rng.chance(self.cfg.loss * 3.0) {
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
            self.violation(v);
            return;
        }
        let voters = r.configuration().voters.len();
        self.report.most_voters = self.report.most_voters.max(voters);
        self.report.fewest_voters = self.report.fewest_voters.min(voters);
        if self.known_leaders.insert((term.0, i)) {
            let id = r.id();
            let floor = r.status().first_index.prev();
            let res = self.completeness.check_leader(id, term, floor, |idx| r.entry_term(idx).ok());
            let conf = r.configuration().clone();
            if let Err(v) = res {
                self.violation(v);
            }
            self.log(|| format!("node {id} becomes leader of term {term} (configuration {})", show_conf(&conf)));
        }
    }

    fn send(&mut self, from: usize, m: Message) {
        let to = (m.to.get() - 1) as usize;
        if to >= self.nodes.len() || self.blocked.contains(&(from, to)) {
            return;
        }
        let faults = self.faults();
        if faults && self.rng.chance(self.cfg.loss) {
            return;
        }
        let copies = if faults && self.rng.chance(self.cfg.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            let (lo, hi) = if faults && self.rng.chance(self.cfg.long_delay) {
                self.report.long_delays += 1;
                self.cfg.long_delay_ns
            } else {
                self.cfg.delay_ns
            };
            let mut at = self.now + lo + self.rng.below(hi - lo + 1);
            if self.slow.get(&(from, to)).is_some_and(|until| *until > self.now) {
                // A congested link: long and uneven delays, so its messages also reorder.
                at += self.rng.below(SLOW_LINK_EXTRA_NS);
            }
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
        if self.nodes[node].paused_until > self.now {
            // The node does not answer until it resumes; the client calls then.
            let at = self.nodes[node].paused_until;
            self.schedule(at, Event::Client(c));
            return;
        }
        let key = format!("k{}", self.rng.below(self.cfg.keys as u64));
        self.clients[c].op_seq += 1;
        let value = format!("c{c}v{}", self.clients[c].op_seq);
        let roll = self.rng.below(100);
        let call = self.now;
        let deadline = self.now + 2_000 * MS;
        let local = self.local_time(node, self.now);
        let incarnation = self.nodes[node].incarnation;
        let committed = self.commit_high;
        let Some(raft) = self.nodes[node].raft.as_mut() else {
            self.retry_elsewhere(c, None);
            return;
        };
        if roll < 40 {
            let lease = self.cfg.lease_reads && roll < 30 && raft.role() == Role::Leader;
            let read = ReadId(self.next_read);
            self.next_read += 1;
            let level = if lease { ReadLevel::Lease } else { ReadLevel::Linearizable };
            if self.cfg.bug == Some(InjectedBug::LocalReads) {
                let output = self.nodes[node].kv.get(&key).map(str::to_owned);
                let op = Operation::get(c as u64, key, call, ReadCompletion::Returned { ret: self.now, output });
                self.finish_op(c, op);
                return;
            }
            if self.cfg.bug == Some(InjectedBug::FollowerLeaseReads)
                && self.cfg.lease_reads
                && roll < 30
                && raft.role() != Role::Leader
            {
                let index = raft.commit_index();
                let op = Operation::get(c as u64, key, call, ReadCompletion::Unknown);
                self.clients[c].pending =
                    Some((op, Waiting::Read { node, read, incarnation, lease: true, committed }, deadline));
                if self.check_read(node, read, index) {
                    self.nodes[node].parked_reads.push((read, index));
                    self.serve_parked_reads(node);
                }
                return;
            }
            match raft.read(local, read, level) {
                Ok(()) => {
                    let op = Operation::get(c as u64, key, call, ReadCompletion::Unknown);
                    self.clients[c].pending =
                        Some((op, Waiting::Read { node, read, incarnation, lease, committed }, deadline));
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
                    self.retry_elsewhere(c, leader_hint);
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

    /// A read confirmed at `index` on node `i`: it must not be older than what was committed
    /// when it was asked for. False after a violation.
    fn check_read(&mut self, i: usize, read: ReadId, index: LogIndex) -> bool {
        let incarnation = self.nodes[i].incarnation;
        let asked = self.clients.iter().find_map(|cl| match &cl.pending {
            Some((_, Waiting::Read { node, read: r, incarnation: inc, lease, committed }, _))
                if *node == i && *r == read && *inc == incarnation =>
            {
                Some((*lease, *committed))
            }
            _ => None,
        });
        let Some((lease, committed)) = asked else { return true };
        let id = self.nodes[i].id;
        if lease && index >= committed {
            self.log(|| format!("node {id} confirms a lease read at {index}"));
        }
        if let Err(v) = check_read_fresh(id, index, committed, lease) {
            self.violation(v);
            return false;
        }
        true
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

    fn leader(&self) -> Option<usize> {
        (0..self.nodes.len()).find(|i| {
            self.nodes[*i].paused_until <= self.now
                && self.nodes[*i].running().is_some_and(|r| r.role() == Role::Leader && r.halted().is_none())
        })
    }

    fn nemesis(&mut self) {
        if !self.faults() {
            return;
        }
        let n = self.nodes.len();
        let roll = self.rng.below(if self.cfg.reconfig { 28 } else { 23 });
        match roll {
            0..=3 => {
                // Crash any node; half of the time one in the middle of a write, if any.
                let writing: Vec<usize> = (0..n).filter(|i| !self.nodes[*i].disk.writing.is_empty()).collect();
                let i = if !writing.is_empty() && self.rng.chance(0.5) {
                    writing[self.rng.below(writing.len() as u64) as usize]
                } else {
                    self.rng.below(n as u64) as usize
                };
                self.crash(i, "killed");
            }
            4 | 5 => {
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
            6 => {
                let a = self.rng.below(n as u64) as usize;
                let b = (a + 1 + self.rng.below(n as u64 - 1) as usize) % n;
                self.blocked.insert((a, b));
                self.report.partitions += 1;
                self.log(|| format!("one-way partition: {} -/-> {}", a + 1, b + 1));
            }
            7 | 8 => {
                self.blocked.clear();
                self.log(|| "partitions heal".to_owned());
            }
            9 | 10 => {
                if let Some(i) = self.leader() {
                    self.crash(i, "leader killed");
                }
            }
            11 | 12 => self.pause(),
            13 => self.clock_jump(),
            14 | 15 => self.operator_snapshot(),
            16 => self.slow_link(),
            17 | 18 => self.slow_disk(),
            19 | 20 => self.flap(),
            21 | 22 => self.hiccup(),
            _ => self.reconfigure(),
        }
        let t = self.now + self.cfg.nemesis_interval_ns / 2 + self.rng.below(self.cfg.nemesis_interval_ns);
        self.schedule(t, Event::Nemesis);
    }

    /// A link becomes congested for a while: its messages take up to
    /// [`SLOW_LINK_EXTRA_NS`] longer, unevenly.
    fn slow_link(&mut self) {
        let n = self.nodes.len();
        let a = self.rng.below(n as u64) as usize;
        let b = (a + 1 + self.rng.below(n as u64 - 1) as usize) % n;
        let d = ELECTION_TIMEOUT_NS + self.rng.below(7 * ELECTION_TIMEOUT_NS);
        self.slow.insert((a, b), self.now + d);
        self.log(|| format!("link {} -> {} is congested for {:.0} ms", a + 1, b + 1, d as f64 / MS as f64));
    }

    /// A node's disk is under contention for a while: every fsync takes longer than an
    /// election timeout (when the seed has slow fsyncs at all).
    fn slow_disk(&mut self) {
        if self.cfg.disk.slow_fsync == 0.0 {
            return;
        }
        let i = self.rng.below(self.nodes.len() as u64) as usize;
        let d = 1_000 * MS + self.rng.below(2_000 * MS);
        self.nodes[i].disk_slow_until = self.now + d;
        let id = self.nodes[i].id;
        self.log(|| format!("node {id}'s disk is slow for {:.0} ms", d as f64 / MS as f64));
    }

    /// A correlated fault (a hiccup of shared infrastructure): the leader's process stalls
    /// for one to three election timeouts while a follower's disk turns slow. The followers
    /// campaign during the stall, a slow candidate's messages leave late and together, and
    /// the leader resumes in between.
    fn hiccup(&mut self) {
        let (Some(l), Some((_, hi))) = (self.leader(), self.cfg.pause_ns) else { return };
        let others: Vec<usize> = (0..self.nodes.len()).filter(|i| *i != l && self.nodes[*i].raft.is_some()).collect();
        if others.is_empty() {
            return;
        }
        let f = others[self.rng.below(others.len() as u64) as usize];
        let d = ELECTION_TIMEOUT_NS + self.rng.below((2 * ELECTION_TIMEOUT_NS).min(hi));
        self.nodes[l].paused_until = self.now + d;
        self.nodes[f].disk_slow_until = self.now + d + self.rng.below(4 * ELECTION_TIMEOUT_NS);
        self.report.pauses += 1;
        let (lid, fid) = (self.nodes[l].id, self.nodes[f].id);
        self.log(|| {
            format!("hiccup: leader {lid} pauses for {:.0} ms; node {fid}'s disk turns slow", d as f64 / MS as f64)
        });
    }

    /// A brief loss of a node's outgoing messages (the leader's, half of the time), about one
    /// election timeout long: its peers may time out and campaign while it still leads.
    fn flap(&mut self) {
        let n = self.nodes.len();
        let x = match self.leader() {
            Some(l) if self.rng.chance(0.5) => l,
            _ => self.rng.below(n as u64) as usize,
        };
        let d = ELECTION_TIMEOUT_NS / 2 + self.rng.below(2 * ELECTION_TIMEOUT_NS);
        for y in (0..n).filter(|y| *y != x) {
            if self.blocked.insert((x, y)) {
                self.schedule(self.now + d, Event::Unblock { from: x, to: y });
            }
        }
        self.report.partitions += 1;
        self.log(|| format!("node {}'s outgoing messages are lost for {:.0} ms", x + 1, d as f64 / MS as f64));
    }

    /// A whole-process pause (a VM stall): the node handles nothing, then sees the time jump.
    fn pause(&mut self) {
        let Some((lo, hi)) = self.cfg.pause_ns else { return };
        let i = match self.leader() {
            Some(l) if self.rng.chance(0.5) => l,
            _ => self.rng.below(self.nodes.len() as u64) as usize,
        };
        if self.nodes[i].raft.is_none() || self.nodes[i].paused_until > self.now {
            return;
        }
        let d = lo + self.rng.below(hi - lo + 1);
        self.nodes[i].paused_until = self.now + d;
        self.report.pauses += 1;
        let id = self.nodes[i].id;
        self.log(|| format!("node {id} pauses for {:.1} ms", d as f64 / MS as f64));
    }

    /// A clock jump. With lease reads the clock only jumps forward, by at most
    /// `clock_jump_ns` and at most once in two election timeouts: together with the drift this
    /// stays within the lease's drift bound (a jump on a voter shortens the time it refuses
    /// votes by as much). Without lease reads safety does not depend on clocks, and jumps go
    /// both ways (a backward jump stalls the core's monotonic clock until it catches up).
    fn clock_jump(&mut self) {
        if self.cfg.clock_jump_ns == 0 {
            return;
        }
        let i = self.rng.below(self.nodes.len() as u64) as usize;
        let size = 1 + self.rng.below(self.cfg.clock_jump_ns) as i64;
        let jump = if self.cfg.lease_reads {
            if self.now.saturating_sub(self.nodes[i].last_jump_at) < 4 * ELECTION_TIMEOUT_NS {
                return;
            }
            size
        } else if self.rng.chance(0.5) {
            size
        } else {
            -size
        };
        self.nodes[i].clock_offset_ns += jump;
        self.nodes[i].last_jump_at = self.now;
        self.report.clock_jumps += 1;
        let id = self.nodes[i].id;
        self.log(|| format!("node {id}'s clock jumps {:+.1} ms", jump as f64 / MS as f64));
    }

    /// The operator snapshots a node at whatever it has applied, as the application may.
    fn operator_snapshot(&mut self) {
        if !self.cfg.operator_snapshots {
            return;
        }
        let i = self.rng.below(self.nodes.len() as u64) as usize;
        self.snapshot_node(i);
    }

    /// Node `i` snapshots at whatever it has applied.
    fn snapshot_node(&mut self, i: usize) {
        let applied = self.nodes[i].applied;
        let Some(r) = self.nodes[i].running() else { return };
        if applied == LogIndex::ZERO
            || self.nodes[i].paused_until > self.now
            || self.nodes[i].snapshot.as_ref().is_some_and(|(m, _)| m.last.index >= applied)
        {
            return;
        }
        let Ok(term) = r.entry_term(applied) else { return };
        let meta = SnapshotMeta { last: EntryId::new(term, applied), config: self.nodes[i].applied_conf.clone() };
        let id = self.nodes[i].id;
        self.log(|| format!("operator: node {id} snapshots at {applied}"));
        if self.record_snapshot(i, meta) {
            self.drain(i);
        }
    }

    /// Periodic operator work: leave joint configurations when the cores do not do it by
    /// themselves (sometimes during the faults, always after).
    fn operator(&mut self) {
        let t = self.now + 50 * MS + self.rng.below(100 * MS);
        if self.now < self.cfg.fault_time_ns + self.cfg.recovery_bound_ns {
            self.schedule(t, Event::Operator);
        }
        if self.cfg.auto_leave_joint || (self.faults() && !self.rng.chance(0.3)) {
            return;
        }
        let Some(li) = self.leader() else { return };
        let local = self.local_time(li, self.now);
        let Some(r) = self.nodes[li].raft.as_mut() else { return };
        if !r.configuration().is_joint() {
            return;
        }
        if let Ok(id) = r.leave_joint(local) {
            self.report.leave_joints += 1;
            let leader = r.id();
            self.log(|| format!("operator: leader {leader} leaves the joint configuration at {}", id.index));
        }
        self.drain(li);
    }

    /// A membership change on the current leader: add a learner (a new node, or one that is
    /// not a member now), promote one, remove a member (voters down to one; the leader
    /// included) or replace a voter.
    fn reconfigure(&mut self) {
        // An operator does not change the membership while a node recovers from lost state
        // (docs/operations.md): a removal could leave a majority of recovering voters.
        if self.nodes.iter().any(|n| n.record.is_some()) {
            return;
        }
        let Some(li) = self.leader() else { return };
        let Some(conf) = self.nodes[li].running().map(|r| r.configuration().clone()) else { return };
        let voters: Vec<NodeId> = conf.voters.iter().copied().collect();
        let learners: Vec<NodeId> = conf.learners.iter().copied().collect();
        let outsiders: Vec<NodeId> =
            self.nodes.iter().map(|n| n.id).filter(|id| !conf.is_voter(*id) && !conf.is_learner(*id)).collect();
        let pick = |v: &[NodeId], r: &mut SplitMix64| v.get(r.below(v.len() as u64) as usize).copied();
        let change = match self.rng.below(5) {
            0 => {
                let add = if !outsiders.is_empty() && self.rng.chance(0.5) {
                    pick(&outsiders, &mut self.rng)
                } else {
                    self.new_node().map(|i| self.nodes[i].id).or_else(|| pick(&outsiders, &mut self.rng))
                };
                add.map(ConfChange::AddLearner)
            }
            1 | 2 => pick(&learners, &mut self.rng).map(ConfChange::Promote),
            3 => {
                if voters.len() > self.cfg.voters_min.max(1) && (learners.is_empty() || self.rng.chance(0.7)) {
                    pick(&voters, &mut self.rng).map(ConfChange::Remove)
                } else {
                    pick(&learners, &mut self.rng).map(ConfChange::Remove)
                }
            }
            _ => match (pick(&voters, &mut self.rng), pick(&learners, &mut self.rng)) {
                (Some(old), Some(new)) => Some(ConfChange::Replace { old, new }),
                _ => None,
            },
        };
        let Some(change) = change else { return };
        let local = self.local_time(li, self.now);
        let Some(r) = self.nodes[li].raft.as_mut() else { return };
        let leader = r.id();
        let joint = r.configuration().is_joint();
        let uncommitted = r.config_version() > r.commit_index();
        let (version, commit) = (r.config_version(), r.commit_index());
        match r.propose_conf_change(local, change.clone()) {
            Ok(id) => {
                self.report.conf_changes += 1;
                self.log(|| format!("leader {leader} proposes {change:?} at {}", id.index));
                if joint || uncommitted {
                    self.violation(Violation::Reconfiguration {
                        node: leader,
                        detail: format!(
                            "accepted {change:?} while {}",
                            if joint {
                                format!("its configuration {} is joint", show_conf(&conf))
                            } else {
                                format!("the configuration entry at {version} is not committed (commit {commit})")
                            }
                        ),
                    });
                    return;
                }
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
        self.slow.clear();
        for i in 0..self.nodes.len() {
            self.nodes[i].paused_until = self.nodes[i].paused_until.min(self.now);
            self.nodes[i].disk_slow_until = 0;
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
        let leader = self.leader().and_then(|i| self.nodes[i].running());
        let joint = leader.is_some_and(|r| r.configuration().is_joint());
        if leader.is_some() && !joint && self.sm.applied_index() > self.commit_at_heal {
            self.recovered = true;
            let dt = self.now - healed;
            self.log(|| format!("recovered {:.1} ms after healing", dt as f64 / MS as f64));
        } else if self.now > healed + self.cfg.recovery_bound_ns {
            let bound = self.cfg.recovery_bound_ns / MS;
            let detail = match leader {
                Some(r) if joint => format!(
                    "leader {} still has the joint configuration {} (config version {}, commit {}) {bound} ms after faults healed",
                    r.id(),
                    show_conf(r.configuration()),
                    r.config_version(),
                    r.commit_index()
                ),
                _ => format!("no leader with a new commit within {bound} ms after faults healed"),
            };
            self.violation(Violation::Liveness { detail });
        }
    }

    fn check_logs(&mut self) {
        let logs: Vec<(NodeId, &[Entry])> = self
            .nodes
            .iter()
            .map(|n| (n.id, n.running().map_or_else(|| n.durable.all_entries(), |r| r.storage().all_entries())))
            .collect();
        if let Err(v) = check_log_matching(&logs) {
            self.violation(v);
        }
    }

    /// One line per node: what its core believes, for narration.
    fn describe_nodes(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| match n.running() {
                None => format!("node {}: down; stable term {}", n.id, n.durable.hard_state().term),
                Some(r) => {
                    let s = r.status();
                    format!(
                        "node {}: {} term {} vote {:?} leader {:?} commit {} last {} persisted {} first {} config {} (version {}), stable term {} vote {:?}{}{}",
                        n.id,
                        s.role,
                        s.term,
                        s.vote.map(NodeId::get),
                        s.leader.map(NodeId::get),
                        s.commit,
                        s.last_index,
                        s.persisted_index,
                        s.first_index,
                        show_conf(&s.config),
                        s.config_version,
                        n.durable.hard_state().term,
                        n.durable.hard_state().vote.map(NodeId::get),
                        if n.paused_until > self.now { ", paused" } else { "" },
                        s.halted.map_or_else(String::new, |h| format!(", halted: {h}")),
                    )
                }
            })
            .collect()
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
        if self.cfg.verbose {
            for line in self.describe_nodes() {
                self.log(|| line);
            }
        }
        if self.report.fewest_voters == usize::MAX {
            self.report.fewest_voters = 0;
        }
        self.report.sim_time_ns = self.now;
        self.report.committed = self.sm.applied_index().0;
        self.report.leaders = self.election.terms_with_leader();
        self.report.ops = self.history.len();
        self.report.history = self.history;
        self.report
    }
}

fn is_pre_vote(m: &Message) -> bool {
    match &m.body {
        MessageBody::RequestVote(r) => r.pre_vote,
        MessageBody::VoteResponse(v) => v.pre_vote,
        _ => false,
    }
}

fn drift_of(rng: &mut SplitMix64, ppm: i64) -> i64 {
    if ppm == 0 { 0 } else { rng.below(2 * ppm as u64 + 1) as i64 - ppm }
}

fn show_conf(c: &Configuration) -> String {
    let ids = |s: &BTreeSet<NodeId>| s.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",");
    let mut out = format!("voters {{{}}}", ids(&c.voters));
    if c.is_joint() {
        out.push_str(&format!(" & outgoing {{{}}}", ids(&c.voters_outgoing)));
    }
    if !c.learners.is_empty() {
        out.push_str(&format!(" learners {{{}}}", ids(&c.learners)));
    }
    out
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
    run_config(seed, cfg)
}

/// Runs one seed with a given configuration. A panic of a core is reported as a
/// [`Violation::Panic`] (the report then holds nothing else).
#[must_use]
pub fn run_config(seed: u64, cfg: SimConfig) -> SimReport {
    match catch_unwind(AssertUnwindSafe(|| Sim::new(seed, cfg).run())) {
        Ok(r) => r,
        Err(p) => {
            let detail = p
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic payload".into());
            SimReport { seed, violations: vec![Violation::Panic { detail }], ..SimReport::default() }
        }
    }
}

/// Runs `seeds` in order, each with [`SimConfig::for_seed`] (at [`STEPS_DEFAULT`] steps)
/// changed by `mutate`, and returns the first seed that violates a property with its first
/// violation. For tests that show a checker catches a bug within a seed budget, for example
/// a core bug re-introduced through [`SimConfig::core_hook`].
pub fn find_violation(seeds: Range<u64>, mutate: impl Fn(&mut SimConfig)) -> Option<(u64, Violation)> {
    seeds.into_iter().find_map(|seed| {
        let mut cfg = SimConfig::for_seed(seed, STEPS_DEFAULT);
        mutate(&mut cfg);
        run_config(seed, cfg).violations.into_iter().next().map(|v| (seed, v))
    })
}
