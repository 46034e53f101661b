//! The nemesis: a fault schedule drawn from the seed. Two loops run side by side:
//!
//! * the **fault loop** holds at most one process, network or disk fault at a time (each for
//!   1.5–4 s, longer than the election timeout and than a lease), heals it on time, waits
//!   0.3–0.9 s and injects the next; the kinds come round-robin in an order shuffled per round,
//!   so every kind asked for is injected once the run is long enough;
//! * the **admin loop** makes membership changes and leadership transfers, faults active or not.
//!
//! Separate loops so that an admin request that hangs for its whole time limit (the cluster
//! has no leader) never stretches a fault past its hold. Every action is logged and recorded
//! with the time it *started* on the history's clock, and with the time it ended (healed, or
//! answered), for the per-fault verdict (`windows.rs`).
//!
//! A kind of fault is one row of [`FAULTS`]. A fault driven by a node failpoint
//! (`data_dir/failpoints.toml`, `crates/quorate-node/src/failpoints.rs`) is an
//! [`Action::Failpoint`] row whose function draws the file's text from the seed: adding a
//! disk fault the node can inject is one row here plus its failpoint in the node.

use super::windows::AFTERMATH;
use super::workload::{History, Timeouts};
use super::{Env, nid};
use anyhow::{Result, bail};
use quorate_client::Client;
use quorate_core::SplitMix64;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a failpoint fault writes into the target's `failpoints.toml`, and how it reads in
/// the log.
pub(crate) struct FailpointSetting {
    pub(crate) toml: String,
    pub(crate) what: String,
}

/// How long lasting faults hold by default: longer than an election timeout (500 ms) and a
/// lease (400 ms), short enough for many faults per run.
pub(crate) const HOLD_MS: (u64, u64) = (1500, 4000);

/// Whom a scripted step targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// The agreed leader (waiting up to 5 s for one).
    Leader,
    /// A running member that is not the leader.
    Follower,
}

/// One step of a scripted schedule (named regressions): `at` after the nemesis starts,
/// `fault` on `target`, held for `hold` (lasting faults; admin requests ignore both).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Step {
    pub(crate) at: Duration,
    pub(crate) fault: Fault,
    pub(crate) target: Target,
    pub(crate) hold: Duration,
}

impl Step {
    /// A step at `at_ms` of `fault` on `target` for `hold_ms`.
    pub(crate) const fn new(at_ms: u64, fault: Fault, target: Target, hold_ms: u64) -> Step {
        Step { at: Duration::from_millis(at_ms), fault, target, hold: Duration::from_millis(hold_ms) }
    }
}

/// What a failpoint fault's settings may depend on, and how the schedule is made.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Context {
    /// Clients read with `ReadConsistency::Lease`: faults must keep the lease's timing
    /// assumption (clock rates within the drift bound), or a stale read is expected, not a
    /// finding.
    pub(crate) lease_reads: bool,
    /// How long a lasting fault holds: uniform in this range (milliseconds).
    pub(crate) hold_ms: (u64, u64),
    /// A fixed schedule instead of the seed's (the seed still picks among followers).
    pub(crate) script: Option<&'static [Step]>,
    /// Lasting faults hit the leader whenever there is one (instead of half of the time):
    /// lease runs, where a paused or skewed leader is the case that matters.
    pub(crate) leader_first: bool,
    /// The k-th spare (k = 1, 2, ...) is added no sooner than (k − 1) × this after the
    /// nemesis starts, so that membership changes are spread over the whole run.
    pub(crate) spare_every: Duration,
}

/// How a kind of fault acts.
#[derive(Clone, Copy)]
pub(crate) enum Action {
    /// SIGKILL the target, restart it when healed.
    Kill,
    /// SIGSTOP the target, SIGCONT when healed.
    Pause,
    /// Cut links in the proxy: the target isolated, one direction only, or a minority split.
    Partition,
    /// A failpoint of the target for the hold, cleared when healed. With `restart_on_heal`
    /// the node is SIGKILLed when healed and restarted without the failpoint (for faults that
    /// act on what a restart reads back: corrupt or torn records).
    Failpoint { settings: fn(&mut SplitMix64, Context) -> FailpointSetting, restart_on_heal: bool },
    /// Add a spare as a learner, promote it, remove it (one step per request).
    Reconfig,
    /// Ask the leader to hand over leadership.
    LeaderTransfer,
}

/// One kind of fault.
pub(crate) struct FaultSpec {
    /// Its name on the command line and in the log.
    pub(crate) name: &'static str,
    pub(crate) action: Action,
    /// Writes may be refused for the whole hold by design (a leader whose disk is full or slow
    /// refuses them: admission's disk-space and fsync-latency signals): the bound on the time
    /// without an acknowledged write grows by the hold, and the fault's traffic minimum is
    /// every client calling rather than operations acknowledged.
    pub(crate) blocks_writes: bool,
}

/// Every kind of fault. The order is the order of `--faults` lists and of the docs' table.
pub(crate) const FAULTS: &[FaultSpec] = &[
    FaultSpec { name: "kill", action: Action::Kill, blocks_writes: false },
    FaultSpec { name: "pause", action: Action::Pause, blocks_writes: false },
    FaultSpec { name: "partition", action: Action::Partition, blocks_writes: false },
    FaultSpec { name: "reconfig", action: Action::Reconfig, blocks_writes: false },
    FaultSpec { name: "leader-transfer", action: Action::LeaderTransfer, blocks_writes: false },
    FaultSpec {
        name: "disk-full",
        action: Action::Failpoint { settings: disk_full, restart_on_heal: false },
        blocks_writes: true,
    },
    FaultSpec {
        name: "clock",
        action: Action::Failpoint { settings: clock, restart_on_heal: false },
        blocks_writes: false,
    },
    FaultSpec {
        name: "slow-disk",
        action: Action::Failpoint { settings: slow_disk, restart_on_heal: false },
        blocks_writes: true,
    },
    FaultSpec {
        name: "lost-wal",
        action: Action::Failpoint { settings: lost_wal, restart_on_heal: true },
        blocks_writes: false,
    },
];

fn disk_full(_: &mut SplitMix64, _: Context) -> FailpointSetting {
    FailpointSetting { toml: "disk_full = true\n".into(), what: "disk full".into() }
}

fn slow_disk(rng: &mut SplitMix64, _: Context) -> FailpointSetting {
    let ms = 50 + rng.below(351);
    FailpointSetting { toml: format!("slow_disk_ms = {ms}\n"), what: format!("slow disk: +{ms} ms per fsync") }
}

/// The most write-ahead-log records a `lost-wal` fault cuts.
const LOST_WAL_RECORDS_MAX: u64 = 16;

/// A disk that loses the newest records of the write-ahead log although they were synced: the
/// node's `tear_wal` failpoint cuts them and aborts the process at once (a power failure);
/// the node stays down for the hold and is restarted when healed. If what was cut had been
/// synced, its store finds less than its durable mark recorded and it rejoins protocol-aware
/// (no campaign, and votes only as up to date as its record, until a leader has caught it up:
/// docs/operations.md, *Lost synced state*);
/// otherwise it restarts as after a crash mid-write. The failpoint is one-shot per new value:
/// the file is cleared at every heal, so `1` is new each time.
fn lost_wal(rng: &mut SplitMix64, _: Context) -> FailpointSetting {
    let records = 1 + rng.below(LOST_WAL_RECORDS_MAX);
    FailpointSetting {
        toml: format!("tear_wal = 1\ntear_wal_records = {records}\n"),
        what: format!("lost write-ahead log: the last {records} records cut, then a crash"),
    }
}

/// Clock rates for runs with lease reads: a leader clock at rate `r` and a voter's at `v`
/// keep the lease safe while `r / v ≥ (election_timeout − drift) / election_timeout`
/// (0.8 with the chaos settings: 500 ms and a drift bound of 100 ms), one node skewed at a
/// time.
pub(crate) const LEASE_SAFE_CLOCK_RATES: [f64; 4] = [0.85, 0.9, 1.1, 1.2];
/// Clock rates otherwise: far outside any drift bound.
const CLOCK_RATES: [f64; 4] = [0.25, 0.5, 2.0, 4.0];

fn clock(rng: &mut SplitMix64, ctx: Context) -> FailpointSetting {
    let rates = if ctx.lease_reads { LEASE_SAFE_CLOCK_RATES } else { CLOCK_RATES };
    let rate = rates[rng.below(rates.len() as u64) as usize];
    FailpointSetting { toml: format!("clock_rate = {rate}\n"), what: format!("clock at rate {rate}") }
}

/// A kind of fault: a row of [`FAULTS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Fault(usize);

impl Fault {
    pub(crate) const KILL: Fault = Fault(0);
    pub(crate) const PAUSE: Fault = Fault(1);
    pub(crate) const PARTITION: Fault = Fault(2);
    pub(crate) const RECONFIG: Fault = Fault(3);
    pub(crate) const LEADER_TRANSFER: Fault = Fault(4);
    pub(crate) const DISK_FULL: Fault = Fault(5);
    pub(crate) const CLOCK: Fault = Fault(6);
    pub(crate) const SLOW_DISK: Fault = Fault(7);
    pub(crate) const LOST_WAL: Fault = Fault(8);

    /// Every kind, in table order.
    pub(crate) fn all() -> Vec<Fault> {
        (0..FAULTS.len()).map(Fault).collect()
    }

    pub(crate) fn spec(self) -> &'static FaultSpec {
        &FAULTS[self.0]
    }

    pub(crate) fn name(self) -> &'static str {
        self.spec().name
    }

    pub(crate) fn parse_list(v: &str) -> Result<Vec<Fault>> {
        let mut out = Vec::new();
        for name in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if name == "none" {
                continue;
            }
            match FAULTS.iter().position(|f| f.name == name) {
                Some(i) => out.push(Fault(i)),
                None => bail!(
                    "unknown fault `{name}`; known: {} (or none)",
                    FAULTS.iter().map(|f| f.name).collect::<Vec<_>>().join(",")
                ),
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    pub(crate) fn names(list: &[Fault]) -> String {
        if list.is_empty() {
            return "none".into();
        }
        list.iter().map(|f| f.name()).collect::<Vec<_>>().join(",")
    }

    /// Faults that hold for a while and then heal (the others are one-shot admin requests).
    pub(crate) fn lasting(self) -> bool {
        !matches!(self.spec().action, Action::Reconfig | Action::LeaderTransfer)
    }
}

/// One fault or admin request as it happened, on the history's clock (nanoseconds).
#[derive(Clone, Debug)]
pub(crate) struct FaultRecord {
    /// 1, 2, … in order of start.
    pub(crate) n: usize,
    pub(crate) fault: Fault,
    /// What was done, to whom.
    pub(crate) what: String,
    /// The node a process fault stopped (kill, pause, a failpoint healed by a restart): it
    /// must answer again soon after the heal.
    pub(crate) stopped: Option<u64>,
    /// When the action started.
    pub(crate) start_ns: u64,
    /// When it was healed (a lasting fault) or answered (an admin request); `None` while
    /// in force.
    pub(crate) end_ns: Option<u64>,
    /// Only for admin requests: how it ended (`ok` or the error).
    pub(crate) outcome: Option<String>,
}

/// A fault in force.
#[derive(Debug)]
enum Active {
    Killed(u64),
    Paused(u64),
    Partitioned,
    Failpoint { id: u64, restart: bool },
}

/// Where the current membership change stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Spare {
    Idle,
    Learner(u64),
    Voter(u64),
}

/// What both loops read and write.
struct State {
    /// The members as last seen by the nemesis (the final checks take the committed ones).
    members: BTreeSet<u64>,
    /// Spares removed from the cluster: never restarted.
    retired: BTreeSet<u64>,
    records: Vec<FaultRecord>,
    log: Vec<String>,
    /// Where the current membership change stands, and the next spare id to add.
    spare: Spare,
    next_spare: u64,
}

pub(crate) struct Nemesis {
    env: Arc<Env>,
    seed: u64,
    faults: Vec<Fault>,
    nodes: u64,
    spares: u64,
    ctx: Context,
    history: Arc<History>,
    /// Admin requests (5 s per call).
    admin: Option<Arc<Client>>,
    /// Status probes to find the leader (300 ms).
    probe: Option<Arc<Client>>,
    state: Arc<Mutex<State>>,
    /// When the nemesis was made (the spares' schedule counts from it).
    born: Instant,
    /// The fault in force when the run ended, for [`Nemesis::heal_all`].
    pending: Mutex<Option<(Active, usize)>>,
}

/// What the nemesis did, for the verdict and `nemesis.log`.
pub(crate) struct Report {
    pub(crate) log: Vec<String>,
    pub(crate) records: Vec<FaultRecord>,
    /// The members at the end, as the leader reported them after the final heal.
    pub(crate) members: BTreeSet<u64>,
}

impl Nemesis {
    pub(crate) fn new(
        env: Arc<Env>,
        seed: u64,
        faults: Vec<Fault>,
        (nodes, spares): (u64, u64),
        ctx: Context,
        history: Arc<History>,
    ) -> Nemesis {
        let admin = env.factory.client(seed ^ 0x004E_454D_4553_4953).ok().map(Arc::new);
        let probe = env
            .factory
            .client_as(super::workload::ADMIN, &env.factory.members, seed ^ 0x0050_524F_4245, Timeouts::PROBE)
            .ok()
            .map(Arc::new);
        let state = State {
            members: (1..=nodes).collect(),
            retired: BTreeSet::new(),
            records: Vec::new(),
            log: Vec::new(),
            spare: Spare::Idle,
            next_spare: nodes + 1,
        };
        Nemesis {
            env,
            seed,
            faults,
            nodes,
            spares,
            ctx,
            history,
            admin,
            probe,
            state: Arc::new(Mutex::new(state)),
            born: Instant::now(),
            pending: Mutex::new(None),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn now(&self) -> u64 {
        self.history.now()
    }

    /// Logs a line stamped `at` (history nanoseconds).
    fn note_at(&self, at: u64, what: &str) {
        let line = format!("{:9.3}s {what}", at as f64 / 1e9);
        println!("nemesis {line}");
        self.state().log.push(line);
    }

    /// Starts a record (and logs it, stamped with its start); its number.
    fn begin(&self, fault: Fault, start_ns: u64, what: String, stopped: Option<u64>) -> usize {
        let n = {
            let mut s = self.state();
            let n = s.records.len() + 1;
            s.records.push(FaultRecord {
                n,
                fault,
                what: what.clone(),
                stopped,
                start_ns,
                end_ns: None,
                outcome: None,
            });
            n
        };
        self.note_at(start_ns, &format!("#{n} {what}"));
        n
    }

    /// Ends record `n` at `end_ns`.
    fn end(&self, n: usize, end_ns: u64, outcome: Option<String>) {
        let mut s = self.state();
        if let Some(r) = s.records.get_mut(n - 1) {
            r.end_ns = Some(end_ns);
            r.outcome = outcome;
        }
    }

    /// Runs the schedule until `deadline` or `stop`. A lasting fault is injected only if its
    /// hold and its [`AFTERMATH`] end before the deadline, so that each one runs under the
    /// workload and is judged on its whole window.
    pub(crate) async fn run(self: Arc<Self>, deadline: Instant, stop: Arc<AtomicBool>) -> Result<()> {
        let lasting: Vec<Fault> = self.faults.iter().copied().filter(|f| f.lasting()).collect();
        let admin_ops: Vec<Fault> = self.faults.iter().copied().filter(|f| !f.lasting()).collect();
        let faults = {
            let (me, stop) = (self.clone(), stop.clone());
            tokio::spawn(async move { me.fault_loop(lasting, deadline, stop).await })
        };
        let admin = {
            let me = self.clone();
            tokio::spawn(async move { me.admin_loop(admin_ops, deadline, stop).await })
        };
        let (f, a) = (faults.await, admin.await);
        f.map_err(|e| anyhow::anyhow!("the fault loop panicked: {e}"))??;
        a.map_err(|e| anyhow::anyhow!("the admin loop panicked: {e}"))?;
        Ok(())
    }

    /// Sleeps `d`, at most until `deadline` or `stop`; whether the run goes on.
    async fn sleep(d: Duration, deadline: Instant, stop: &AtomicBool) -> bool {
        let until = (Instant::now() + d).min(deadline);
        while Instant::now() < until {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            tokio::time::sleep(until.saturating_duration_since(Instant::now()).min(Duration::from_millis(50))).await;
        }
        Instant::now() < deadline && !stop.load(Ordering::Relaxed)
    }

    async fn fault_loop(&self, kinds: Vec<Fault>, deadline: Instant, stop: Arc<AtomicBool>) -> Result<()> {
        let mut rng = SplitMix64::new(self.seed ^ 0x006E_656D_6573_6973);
        if let Some(script) = self.ctx.script {
            return self.scripted(script, &mut rng, deadline, &stop).await;
        }
        // Let the workload start on a healthy cluster.
        let start = Duration::from_millis(500).min(deadline.saturating_duration_since(Instant::now()) / 4);
        if !Self::sleep(start, deadline, &stop).await || kinds.is_empty() {
            return Ok(());
        }
        let mut round: Vec<Fault> = Vec::new();
        loop {
            if round.is_empty() {
                round = kinds.clone();
                shuffle(&mut rng, &mut round);
            }
            let f = round.pop().unwrap_or(Fault::KILL);
            let hold = between(&mut rng, self.ctx.hold_ms.0, self.ctx.hold_ms.1);
            if !fits(Instant::now(), hold, deadline) {
                return Ok(());
            }
            let active = self.inject(f, &mut rng, hold).await?;
            let go_on = Self::sleep(hold, deadline, &stop).await;
            if let Some((active, n)) = active {
                if !go_on {
                    // The final heal (`heal_all`) ends it, and its record.
                    *self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((active, n));
                    return Ok(());
                }
                self.heal(active, n).await?;
            }
            self.env.check_running()?;
            if !go_on || !Self::sleep(between(&mut rng, 300, 900), deadline, &stop).await {
                return Ok(());
            }
        }
    }

    /// Runs `script` step by step (admin requests in turn with the faults).
    async fn scripted(
        &self,
        script: &[Step],
        rng: &mut SplitMix64,
        deadline: Instant,
        stop: &AtomicBool,
    ) -> Result<()> {
        let started = Instant::now();
        for step in script {
            let wait = (started + step.at).saturating_duration_since(Instant::now());
            if !Self::sleep(wait, deadline, stop).await {
                return Ok(());
            }
            if !step.fault.lasting() {
                match step.fault {
                    Fault::LEADER_TRANSFER => self.leader_transfer(rng).await,
                    _ => self.reconfig().await,
                }
                continue;
            }
            let Some((target, leader)) = self.scripted_target(step.target, rng).await else {
                self.note_at(self.now(), &format!("step {step:?}: no such node now; skipped"));
                continue;
            };
            let active = self.inject_on(step.fault, target, leader, rng, step.hold).await?;
            let go_on = Self::sleep(step.hold, deadline, stop).await;
            if let Some((active, n)) = active {
                if !go_on {
                    *self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((active, n));
                    return Ok(());
                }
                self.heal(active, n).await?;
            }
            self.env.check_running()?;
        }
        Ok(())
    }

    /// The node a scripted step targets, and the leader.
    async fn scripted_target(&self, target: Target, rng: &mut SplitMix64) -> Option<(u64, Option<u64>)> {
        let until = Instant::now() + Duration::from_secs(5);
        let leader = loop {
            match self.leader().await {
                Some(l) => break Some(l),
                None if Instant::now() < until => tokio::time::sleep(Duration::from_millis(50)).await,
                None => break None,
            }
        };
        let live = self.live_members();
        match target {
            Target::Leader => leader.filter(|l| live.contains(l)).map(|l| (l, leader)),
            Target::Follower => {
                let followers: Vec<u64> = live.into_iter().filter(|&id| Some(id) != leader).collect();
                (!followers.is_empty()).then(|| (followers[rng.below(followers.len() as u64) as usize], leader))
            }
        }
    }

    async fn admin_loop(&self, kinds: Vec<Fault>, deadline: Instant, stop: Arc<AtomicBool>) {
        if kinds.is_empty() || self.ctx.script.is_some() {
            return;
        }
        let mut rng = SplitMix64::new(self.seed ^ 0x0061_646D_696E);
        while Self::sleep(between(&mut rng, 300, 900), deadline, &stop).await {
            if !rng.chance(0.35) {
                continue;
            }
            match kinds[rng.below(kinds.len() as u64) as usize] {
                Fault::LEADER_TRANSFER => self.leader_transfer(&mut rng).await,
                Fault::RECONFIG => self.reconfig().await,
                _ => {}
            }
        }
    }

    /// Running, unpaused members.
    fn live_members(&self) -> Vec<u64> {
        let members: Vec<u64> = self.state().members.iter().copied().collect();
        let c = self.env.lock();
        members.into_iter().filter(|&id| c.is_running(id) && !c.is_paused(id)).collect()
    }

    /// The leader the nodes agree on, as the leader observer saw it last (the verdict's
    /// definition); asked with short time limits when no observer runs.
    async fn leader(&self) -> Option<u64> {
        let latest = self.env.observed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if !latest.is_empty() {
            let stale = super::windows::SAMPLE_STALE.as_nanos() as u64;
            return super::windows::agreed(&latest, self.now(), stale).map(|(l, _)| l);
        }
        let probe = self.probe.as_ref()?;
        self.env.leader(probe).await.map(|(l, _)| l)
    }

    /// The leader half of the time (when there is one), else a random live member; and the
    /// leader (if known).
    async fn target(&self, rng: &mut SplitMix64) -> Option<(u64, Option<u64>)> {
        let live = self.live_members();
        let leader = self.leader().await;
        if (self.ctx.leader_first || rng.chance(0.5))
            && let Some(l) = leader
            && live.contains(&l)
        {
            return Some((l, leader));
        }
        if live.is_empty() {
            return None;
        }
        Some((live[rng.below(live.len() as u64) as usize], leader))
    }

    /// Injects one fault of kind `f` held for `hold`; what to heal and its record number.
    async fn inject(&self, f: Fault, rng: &mut SplitMix64, hold: Duration) -> Result<Option<(Active, usize)>> {
        let Some((target, leader)) = self.target(rng).await else { return Ok(None) };
        self.inject_on(f, target, leader, rng, hold).await
    }

    /// Injects one fault of kind `f` on `target` held for `hold`.
    async fn inject_on(
        &self,
        f: Fault,
        target: u64,
        leader: Option<u64>,
        rng: &mut SplitMix64,
        hold: Duration,
    ) -> Result<Option<(Active, usize)>> {
        let role = |id: u64| if leader == Some(id) { ", the leader" } else { "" };
        let ms = hold.as_millis();
        let start = self.now();
        let (active, what) = match f.spec().action {
            Action::Kill => {
                self.env.lock().kill(target)?;
                (Active::Killed(target), format!("kill node {target}{} (SIGKILL) for {ms} ms", role(target)))
            }
            Action::Pause => {
                self.env.lock().pause(target)?;
                (Active::Paused(target), format!("pause node {target}{} (SIGSTOP) for {ms} ms", role(target)))
            }
            Action::Partition => {
                let members: Vec<u64> = self.state().members.iter().copied().collect();
                let all: Vec<u64> = (1..=self.nodes + self.spares).collect();
                let (blocked, what) = partition(rng, target, &members, &all, leader);
                self.env.proxy.set_blocked(blocked);
                (Active::Partitioned, format!("partition: {what} for {ms} ms"))
            }
            Action::Failpoint { settings, restart_on_heal } => {
                let s = settings(rng, self.ctx);
                self.env.set_failpoints(target, &s.toml)?;
                (
                    Active::Failpoint { id: target, restart: restart_on_heal },
                    format!("{} on node {target}{} for {ms} ms", s.what, role(target)),
                )
            }
            Action::Reconfig | Action::LeaderTransfer => return Ok(None),
        };
        let stopped = match active {
            Active::Killed(id) | Active::Paused(id) | Active::Failpoint { id, restart: true } => Some(id),
            _ => None,
        };
        let n = self.begin(f, start, what, stopped);
        Ok(Some((active, n)))
    }

    async fn heal(&self, active: Active, n: usize) -> Result<()> {
        let at = self.now();
        match active {
            Active::Killed(id) => {
                if self.state().retired.contains(&id) {
                    self.gone(n, id, at);
                } else {
                    self.env.lock().start(id)?;
                    self.note_at(at, &format!("heal #{n}: restart node {id}"));
                }
            }
            Active::Paused(id) => {
                let running = self.env.lock().is_running(id);
                if running {
                    self.env.lock().resume(id)?;
                    self.note_at(at, &format!("heal #{n}: resume node {id} (SIGCONT)"));
                } else {
                    self.gone(n, id, at);
                }
            }
            Active::Partitioned => {
                self.env.proxy.heal();
                self.note_at(at, &format!("heal #{n}: heal the network"));
            }
            Active::Failpoint { id, restart } => {
                // A node that crashed itself (the `lost-wal` fault aborts) is still in the
                // cluster's table; killing an exited process is a no-op.
                if restart && self.env.lock().is_running(id) {
                    self.env.lock().kill(id)?;
                    self.env.set_failpoints(id, "")?;
                    if !self.state().retired.contains(&id) {
                        self.env.lock().start(id)?;
                    }
                    self.note_at(at, &format!("heal #{n}: SIGKILL node {id}, clear its failpoints, restart it"));
                } else {
                    self.env.set_failpoints(id, "")?;
                    self.note_at(at, &format!("heal #{n}: clear the failpoints of node {id}"));
                }
            }
        }
        self.end(n, at, None);
        Ok(())
    }

    /// Record `n`'s node was removed from the cluster (and stopped) while the fault held:
    /// nothing to heal, and it is not expected to answer again.
    fn gone(&self, n: usize, id: u64, at: u64) {
        if let Some(r) = self.state().records.get_mut(n - 1) {
            r.stopped = None;
        }
        self.note_at(at, &format!("heal #{n}: node {id} was removed meanwhile; nothing to heal"));
    }

    /// Ends every fault: heals the active one, resumes and restarts members, clears the
    /// network and every failpoint; returns what happened.
    pub(crate) async fn heal_all(&self) -> Result<Report> {
        let pending = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some((active, n)) = pending {
            self.heal(active, n).await?;
        }
        let at = self.now();
        self.env.proxy.heal();
        for id in 1..=self.nodes + self.spares {
            self.env.set_failpoints(id, "")?;
        }
        let members: Vec<u64> = self.state().members.iter().copied().collect();
        let mut todo = Vec::new();
        {
            let mut c = self.env.lock();
            for id in c.running() {
                if c.is_paused(id) {
                    c.resume(id)?;
                }
            }
            for &id in &members {
                if !c.is_running(id) {
                    c.start(id)?;
                    todo.push(id);
                }
            }
        }
        for id in todo {
            self.note_at(at, &format!("restart node {id} (final heal)"));
        }
        let (forwarded, dropped, evicted) = self.env.proxy.counters();
        self.note_at(
            at,
            &format!(
                "every fault healed (proxy: {forwarded} datagrams forwarded, {dropped} dropped, {evicted} idle client sources evicted)"
            ),
        );
        if let Some(admin) = &self.admin
            && let Ok(m) = super::members(admin, Duration::from_secs(10)).await
        {
            self.state().members = m;
        }
        let s = self.state();
        Ok(Report { log: s.log.clone(), records: s.records.clone(), members: s.members.clone() })
    }

    async fn leader_transfer(&self, rng: &mut SplitMix64) {
        let Some(admin) = self.admin.clone() else { return };
        let voters: Vec<u64> = self.state().members.iter().copied().filter(|&m| m <= self.nodes).collect();
        let to = if rng.chance(0.5) && !voters.is_empty() {
            Some(voters[rng.below(voters.len() as u64) as usize])
        } else {
            None
        };
        let n = self.begin(
            Fault::LEADER_TRANSFER,
            self.now(),
            format!("leader transfer to {}", to.map_or("any".into(), |t| format!("node {t}"))),
            None,
        );
        let r = match to.map(nid).transpose() {
            Ok(to) => admin.leader_transfer(to).await.map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        self.answered(n, &r);
    }

    /// Ends admin record `n` with its outcome, and logs it.
    fn answered<T>(&self, n: usize, r: &Result<T>) {
        let at = self.now();
        let outcome = brief(r);
        self.note_at(at, &format!("#{n} → {outcome}"));
        self.end(n, at, Some(outcome));
    }

    async fn reconfig(&self) {
        let Some(admin) = self.admin.clone() else { return };
        let (spare, current) = {
            let s = self.state();
            (s.spare, s.next_spare)
        };
        // When this call's `member remove` began (the node's process is stopped once it is out).
        let mut removing_since = 0;
        match spare {
            Spare::Idle => {
                if current > self.nodes + self.spares {
                    return;
                }
                let k = u32::try_from(current - self.nodes - 1).unwrap_or(u32::MAX);
                if self.born.elapsed() < self.ctx.spare_every.saturating_mul(k) {
                    return;
                }
                let started = {
                    let mut c = self.env.lock();
                    if c.is_running(current) { Ok(()) } else { c.start(current) }
                };
                if let Err(e) = started {
                    self.note_at(self.now(), &format!("cannot start spare node {current}: {e:#}"));
                    return;
                }
                let n = self.begin(Fault::RECONFIG, self.now(), format!("member add {current} (learner)"), None);
                let r = match nid(current) {
                    Ok(id) => admin.member_add(id, self.env.proxy.front(current)).await.map_err(anyhow::Error::from),
                    Err(e) => Err(e),
                };
                self.answered(n, &r);
            }
            Spare::Learner(id) => {
                let n = self.begin(Fault::RECONFIG, self.now(), format!("member promote {id}"), None);
                let r = match nid(id) {
                    Ok(i) => admin.member_promote(i).await.map_err(anyhow::Error::from),
                    Err(e) => Err(e),
                };
                self.answered(n, &r);
            }
            Spare::Voter(id) => {
                removing_since = self.now();
                let n = self.begin(Fault::RECONFIG, removing_since, format!("member remove {id}"), None);
                let r = match nid(id) {
                    Ok(i) => admin.member_remove(i).await.map_err(anyhow::Error::from),
                    Err(e) => Err(e),
                };
                self.answered(n, &r);
            }
        }
        // Where things stand now, from the configuration of the agreed leader (not from
        // `member list`, which any node answers with its own configuration).
        let Some(probe) = self.probe.clone() else { return };
        let Ok(list) = super::members_with_kinds(&probe, Duration::from_secs(5)).await else { return };
        let entry = list.iter().find(|(id, _)| *id == current).map(|(_, learner)| *learner);
        self.state().members = list.iter().map(|(id, _)| *id).collect();
        let next = match entry {
            Some(true) => Spare::Learner(current),
            Some(false) => Spare::Voter(current),
            None if matches!(spare, Spare::Voter(_)) => {
                // Removed: stop its process for good.
                self.state().retired.insert(current);
                let _ = self.env.lock().kill(current);
                let released = release_removed(&mut self.state().records, current, removing_since);
                self.note_at(
                    self.now(),
                    &format!(
                        "node {current} removed; its process stopped{}",
                        match released.as_slice() {
                            [] => String::new(),
                            n => format!(
                                " (not expected to answer after #{})",
                                n.iter().map(ToString::to_string).collect::<Vec<_>>().join(", #")
                            ),
                        }
                    ),
                );
                self.state().next_spare += 1;
                Spare::Idle
            }
            None => spare,
        };
        self.state().spare = next;
    }
}

/// Node `id` was removed by a `member remove` begun at `since` and its process stopped for
/// good: a fault that stopped it and still holds, or healed after `since`, cannot expect it to
/// answer after its heal (its answer clause is dropped). Soak seed 9, 2026-12-05: `kill` #871
/// of node 32 healed (restart) 0.3 s after `member remove 32` was answered and 48 ms before the
/// process was stopped for the removal; `lost-wal` #224 of node 12 was still held when node 12
/// was removed. Both failed "never answered after the heal". Returns the records released.
fn release_removed(records: &mut [FaultRecord], id: u64, since: u64) -> Vec<usize> {
    let mut released = Vec::new();
    for r in records.iter_mut().filter(|r| r.stopped == Some(id) && r.end_ns.is_none_or(|end| end >= since)) {
        r.stopped = None;
        released.push(r.n);
    }
    released
}

/// A duration in `[lo_ms, hi_ms]` from the generator.
fn between(rng: &mut SplitMix64, lo_ms: u64, hi_ms: u64) -> Duration {
    Duration::from_millis(lo_ms + rng.below(hi_ms - lo_ms + 1))
}

/// Whether a lasting fault injected at `now` and held for `hold` may run before `deadline`
/// (when the workload stops): its hold and the [`AFTERMATH`] in which the verdict asks for its
/// load to be served must both end under the workload.
fn fits(now: Instant, hold: Duration, deadline: Instant) -> bool {
    now + hold + AFTERMATH + Duration::from_millis(200) <= deadline
}

/// Fisher–Yates with the seed's generator.
fn shuffle<T>(rng: &mut SplitMix64, v: &mut [T]) {
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
}

/// One of four partitions around `target` among `all` ids (members and spares), as a set
/// of cut directed links, and its description naming where the leader is.
pub(crate) fn partition(
    rng: &mut SplitMix64,
    target: u64,
    members: &[u64],
    all: &[u64],
    leader: Option<u64>,
) -> (BTreeSet<(u64, u64)>, String) {
    let mut blocked = BTreeSet::new();
    let role = |id: u64| if leader == Some(id) { ", the leader" } else { "" };
    let what = match rng.below(4) {
        0 => {
            for &y in all.iter().filter(|&&y| y != target) {
                blocked.insert((target, y));
                blocked.insert((y, target));
            }
            format!("isolate node {target}{} (symmetric)", role(target))
        }
        1 => {
            for &y in all.iter().filter(|&&y| y != target) {
                blocked.insert((target, y));
            }
            format!("one-way: node {target}{} cannot send, still receives", role(target))
        }
        2 => {
            for &y in all.iter().filter(|&&y| y != target) {
                blocked.insert((y, target));
            }
            format!("one-way: node {target}{} cannot receive, still sends", role(target))
        }
        _ => {
            let mut m = members.to_vec();
            shuffle(rng, &mut m);
            let minority: BTreeSet<u64> = m.iter().copied().take((m.len().max(1) - 1) / 2).collect();
            let minority = if minority.is_empty() { std::iter::once(target).collect() } else { minority };
            for &x in all {
                for &y in all {
                    if minority.contains(&x) != minority.contains(&y) {
                        blocked.insert((x, y));
                    }
                }
            }
            let majority: BTreeSet<u64> = members.iter().copied().filter(|m| !minority.contains(m)).collect();
            let side = match leader {
                Some(l) if minority.contains(&l) => format!("leader {l} in the minority"),
                Some(l) if majority.contains(&l) => format!("leader {l} in the majority"),
                _ => "no leader known".into(),
            };
            format!("split: minority {minority:?} from the majority {majority:?} ({side})")
        }
    };
    (blocked, what)
}

fn brief<T>(r: &Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => {
            let s = format!("{e:#}");
            s.chars().take(160).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seed 101 of `chaos ci` killed the leader 26.5 s into a 30 s run for 2.5 s: the workload
    /// stopped 1.1 s after the heal, and the fault's 3 s after it (when the load must be served
    /// again) were cut short, so a new leader's first answers fell after the end and the fault
    /// failed with 0 operations acknowledged.
    fn record(n: usize, fault: Fault, stopped: u64, start_s: f64, end_s: Option<f64>) -> FaultRecord {
        FaultRecord {
            n,
            fault,
            what: format!("test fault {n}"),
            stopped: Some(stopped),
            start_ns: (start_s * 1e9) as u64,
            end_ns: end_s.map(|e| (e * 1e9) as u64),
            outcome: None,
        }
    }

    /// The soak's #871 (a kill healed after the node's removal began) and #224 (a lost-wal
    /// still held when the node was removed) are not held to an answer; an earlier fault of
    /// the same node that healed before the removal, and another node's, still are.
    #[test]
    fn a_node_removed_around_its_heal_is_not_expected_to_answer() {
        let mut records = vec![
            record(1, Fault::KILL, 32, 100.0, Some(103.0)),
            record(2, Fault::KILL, 32, 1676.277, Some(1679.892)),
            record(3, Fault::LOST_WAL, 12, 422.895, None),
            record(4, Fault::PAUSE, 31, 1677.0, Some(1680.0)),
        ];
        assert_eq!(release_removed(&mut records, 32, 1_679_578_000_000), [2]);
        assert_eq!(release_removed(&mut records, 12, 424_804_000_000), [3]);
        let stopped: Vec<Option<u64>> = records.iter().map(|r| r.stopped).collect();
        assert_eq!(stopped, [Some(32), None, None, Some(31)]);
    }

    #[test]
    fn a_fault_is_injected_only_if_its_aftermath_ends_before_the_workload() {
        let now = Instant::now();
        let hold = Duration::from_millis(2478);
        let deadline = now + Duration::from_millis(3548);
        assert!(!fits(now, hold, deadline));
        let enough = hold + AFTERMATH + Duration::from_millis(200);
        assert!(fits(now, hold, now + enough));
        assert!(!fits(now, hold, now + enough - Duration::from_millis(1)));
    }

    #[test]
    fn fault_constants_name_their_rows() {
        let named = [
            (Fault::KILL, "kill"),
            (Fault::PAUSE, "pause"),
            (Fault::PARTITION, "partition"),
            (Fault::RECONFIG, "reconfig"),
            (Fault::LEADER_TRANSFER, "leader-transfer"),
            (Fault::DISK_FULL, "disk-full"),
            (Fault::CLOCK, "clock"),
            (Fault::SLOW_DISK, "slow-disk"),
            (Fault::LOST_WAL, "lost-wal"),
        ];
        for (f, name) in named {
            assert_eq!(f.name(), name);
        }
        assert_eq!(Fault::all().len(), FAULTS.len());
        assert_eq!(Fault::parse_list("slow-disk, kill,kill").unwrap(), vec![Fault::KILL, Fault::SLOW_DISK]);
        assert!(Fault::parse_list("kill,flood").is_err());
        assert!(Fault::parse_list("none").unwrap().is_empty());
    }

    #[test]
    fn lease_runs_keep_clock_rates_within_the_drift_bound() {
        // The chaos clusters: election timeout 500 ms, lease drift bound 100 ms.
        let (election, drift) = (f64::from(500u32), f64::from(100u32));
        let ratio_min = (election - drift) / election;
        for r in LEASE_SAFE_CLOCK_RATES {
            // A slow leader clock, or a fast voter clock, one node at a time.
            assert!(r >= ratio_min && 1.0 / r >= ratio_min, "rate {r}");
        }
        let mut rng = SplitMix64::new(3);
        for _ in 0..100 {
            let s = clock(
                &mut rng,
                Context {
                    lease_reads: true,
                    hold_ms: HOLD_MS,
                    script: None,
                    leader_first: false,
                    spare_every: Duration::ZERO,
                },
            );
            let rate: f64 = s.toml.trim().trim_start_matches("clock_rate = ").parse().unwrap();
            assert!(LEASE_SAFE_CLOCK_RATES.contains(&rate));
        }
    }

    #[test]
    fn a_split_names_the_side_the_leader_is_on() {
        let all = [1, 2, 3, 4, 5];
        let members = [1, 2, 3, 4, 5];
        let mut seen_split = 0;
        for seed in 0..200 {
            let mut rng = SplitMix64::new(seed);
            let (blocked, what) = partition(&mut rng, 2, &members, &all, Some(4));
            if !what.starts_with("split") {
                continue;
            }
            seen_split += 1;
            // Node 4 leads: the description says on which side it is, and that side is right.
            let four_cut_from_one = blocked.contains(&(4, 1));
            let minority_has_4 = what.contains("leader 4 in the minority");
            assert!(minority_has_4 || what.contains("leader 4 in the majority"), "{what}");
            let (minority, _) = what.split_once(" from ").unwrap();
            assert_eq!(minority.contains('4'), minority_has_4, "{what}");
            if four_cut_from_one {
                assert_ne!(minority.contains('4'), minority.contains('1'), "{what}");
            }
        }
        assert!(seen_split > 20);
    }

    #[test]
    fn a_round_injects_every_kind_once() {
        let mut rng = SplitMix64::new(9);
        let mut kinds = Fault::all();
        shuffle(&mut rng, &mut kinds);
        kinds.sort();
        assert_eq!(kinds, Fault::all());
    }
}
