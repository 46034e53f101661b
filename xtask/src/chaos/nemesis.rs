//! The nemesis: a fault schedule drawn from the seed. At most one process, network or disk
//! fault is active at a time (each for 1.5–4 s, longer than the election timeout), while
//! membership changes and leadership transfers run alongside, faults active or not.

use super::workload::History;
use super::{Env, members, nid};
use anyhow::{Result, bail};
use quorate_client::Client;
use quorate_core::SplitMix64;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Fault {
    /// SIGKILL a node (the leader half of the time), restart it when healed.
    Kill,
    /// SIGSTOP a node (the leader half of the time), SIGCONT when healed.
    Pause,
    /// Cut links in the proxy: one node isolated, a minority split off, or one direction only.
    Partition,
    /// Add a spare as a learner, promote it, remove it.
    Reconfig,
    /// Ask the leader to hand over leadership.
    LeaderTransfer,
    /// Failpoint: the free-space check fails.
    DiskFull,
    /// Failpoint: a node's clock runs fast or slow.
    Clock,
    /// Failpoint: every persist completion is delayed.
    SlowDisk,
}

impl Fault {
    pub(crate) const ALL: [Fault; 8] = [
        Fault::Kill,
        Fault::Pause,
        Fault::Partition,
        Fault::Reconfig,
        Fault::LeaderTransfer,
        Fault::DiskFull,
        Fault::Clock,
        Fault::SlowDisk,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::Partition => "partition",
            Fault::Reconfig => "reconfig",
            Fault::LeaderTransfer => "leader-transfer",
            Fault::DiskFull => "disk-full",
            Fault::Clock => "clock",
            Fault::SlowDisk => "slow-disk",
        }
    }

    pub(crate) fn parse_list(v: &str) -> Result<Vec<Fault>> {
        let mut out = Vec::new();
        for name in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if name == "none" {
                continue;
            }
            match Fault::ALL.iter().find(|f| f.name() == name) {
                Some(f) => out.push(*f),
                None => bail!(
                    "unknown fault `{name}`; known: {} (or none)",
                    Fault::ALL.iter().map(|f| f.name()).collect::<Vec<_>>().join(",")
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
    fn lasting(self) -> bool {
        !matches!(self, Fault::Reconfig | Fault::LeaderTransfer)
    }
}

/// A fault in force.
#[derive(Debug)]
enum Active {
    Killed(u64),
    Paused(u64),
    Partitioned,
    Failpoint(u64),
}

/// Where the current membership change stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Spare {
    Idle,
    Learner(u64),
    Voter(u64),
}

pub(crate) struct Nemesis {
    env: Arc<Env>,
    rng: SplitMix64,
    faults: Vec<Fault>,
    nodes: u64,
    spares: u64,
    history: Arc<History>,
    admin: Option<Arc<Client>>,
    active: Option<(Active, Instant)>,
    spare: Spare,
    next_spare: u64,
    retired: BTreeSet<u64>,
    /// What happened, one line each, time on the history's clock.
    pub(crate) log: Vec<String>,
    /// Faults and admin requests made.
    pub(crate) injected: u64,
    /// The members at the end (what the final checks compare).
    pub(crate) members: BTreeSet<u64>,
}

impl Nemesis {
    pub(crate) fn new(
        env: Arc<Env>,
        seed: u64,
        faults: Vec<Fault>,
        nodes: u64,
        spares: u64,
        history: Arc<History>,
    ) -> Nemesis {
        let admin = env.factory.client(seed ^ 0x004E_454D_4553_4953).ok().map(Arc::new);
        Nemesis {
            env,
            rng: SplitMix64::new(seed ^ 0x006E_656D_6573_6973),
            faults,
            nodes,
            spares,
            history,
            admin,
            active: None,
            spare: Spare::Idle,
            next_spare: nodes + 1,
            retired: BTreeSet::new(),
            log: Vec::new(),
            injected: 0,
            members: (1..=nodes).collect(),
        }
    }

    fn note(&mut self, what: String) {
        let t = self.history.now() as f64 / 1e9;
        let line = format!("{t:9.3}s {what}");
        println!("nemesis {line}");
        self.log.push(line);
    }

    fn between(&mut self, lo_ms: u64, hi_ms: u64) -> Duration {
        Duration::from_millis(lo_ms + self.rng.below(hi_ms - lo_ms + 1))
    }

    /// Runs the schedule until `duration` passes or `stop` is set; returns itself for
    /// [`Nemesis::heal_all`].
    pub(crate) async fn run(mut self, duration: Duration, stop: Arc<AtomicBool>) -> Result<Nemesis> {
        let deadline = Instant::now() + duration;
        let lasting: Vec<Fault> = self.faults.iter().copied().filter(|f| f.lasting()).collect();
        let admin_ops: Vec<Fault> = self.faults.iter().copied().filter(|f| !f.lasting()).collect();
        // Let the workload start on a healthy cluster.
        tokio::time::sleep(Duration::from_millis(500).min(duration / 4)).await;
        while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            let pause = self.between(300, 900);
            tokio::time::sleep(pause).await;
            if let Some((_, until)) = &self.active
                && Instant::now() >= *until
            {
                self.heal().await?;
            }
            if self.active.is_none() && !lasting.is_empty() && self.rng.chance(0.7) {
                let f = lasting[self.rng.below(lasting.len() as u64) as usize];
                self.inject(f).await?;
            }
            if !admin_ops.is_empty() && self.rng.chance(0.35) {
                let f = admin_ops[self.rng.below(admin_ops.len() as u64) as usize];
                self.admin_op(f).await;
            }
            self.env.check_running()?;
        }
        Ok(self)
    }

    /// Running, unpaused members.
    fn live_members(&self) -> Vec<u64> {
        let c = self.env.lock();
        self.members.iter().copied().filter(|&id| c.is_running(id) && !c.is_paused(id)).collect()
    }

    async fn leader(&self) -> Option<u64> {
        let admin = self.admin.as_ref()?;
        self.env.leader(admin).await.map(|(l, _)| l)
    }

    /// The leader half of the time (when there is one), else a random live member; and
    /// whether the target is the leader.
    async fn target(&mut self) -> Option<(u64, bool)> {
        let live = self.live_members();
        let leader = self.leader().await;
        if self.rng.chance(0.5)
            && let Some(l) = leader
            && live.contains(&l)
        {
            return Some((l, true));
        }
        if live.is_empty() {
            return None;
        }
        let t = live[self.rng.below(live.len() as u64) as usize];
        Some((t, leader == Some(t)))
    }

    async fn inject(&mut self, f: Fault) -> Result<()> {
        let Some((target, is_leader)) = self.target().await else { return Ok(()) };
        let role = if is_leader { ", the leader" } else { "" };
        let hold = self.between(1500, 4000);
        let until = Instant::now() + hold;
        let ms = hold.as_millis();
        let active = match f {
            Fault::Kill => {
                self.env.lock().kill(target)?;
                self.note(format!("kill node {target}{role} (SIGKILL) for {ms} ms"));
                Active::Killed(target)
            }
            Fault::Pause => {
                self.env.lock().pause(target)?;
                self.note(format!("pause node {target}{role} (SIGSTOP) for {ms} ms"));
                Active::Paused(target)
            }
            Fault::Partition => {
                let all: Vec<u64> = (1..=self.nodes + self.spares).collect();
                let mut blocked = BTreeSet::new();
                let what = match self.rng.below(4) {
                    0 => {
                        for &y in all.iter().filter(|&&y| y != target) {
                            blocked.insert((target, y));
                            blocked.insert((y, target));
                        }
                        format!("isolate node {target} (symmetric)")
                    }
                    1 => {
                        for &y in all.iter().filter(|&&y| y != target) {
                            blocked.insert((target, y));
                        }
                        format!("one-way: node {target} cannot send, still receives")
                    }
                    2 => {
                        for &y in all.iter().filter(|&&y| y != target) {
                            blocked.insert((y, target));
                        }
                        format!("one-way: node {target} cannot receive, still sends")
                    }
                    _ => {
                        let mut m: Vec<u64> = self.members.iter().copied().collect();
                        // Fisher-Yates with the seed's generator.
                        for i in (1..m.len()).rev() {
                            let j = self.rng.below(i as u64 + 1) as usize;
                            m.swap(i, j);
                        }
                        let minority: BTreeSet<u64> = m.iter().copied().take((m.len() - 1) / 2).collect();
                        let minority = if minority.is_empty() { std::iter::once(target).collect() } else { minority };
                        for &x in &all {
                            for &y in &all {
                                if minority.contains(&x) != minority.contains(&y) {
                                    blocked.insert((x, y));
                                }
                            }
                        }
                        format!("split: minority {minority:?} from the majority")
                    }
                };
                self.env.proxy.set_blocked(blocked);
                self.note(format!("partition {what}{role} for {ms} ms"));
                Active::Partitioned
            }
            Fault::DiskFull => {
                self.env.set_failpoints(target, "disk_full = true\n")?;
                self.note(format!("disk full on node {target}{role} for {ms} ms"));
                Active::Failpoint(target)
            }
            Fault::SlowDisk => {
                let delay = self.between(50, 400).as_millis();
                self.env.set_failpoints(target, &format!("slow_disk_ms = {delay}\n"))?;
                self.note(format!("slow disk on node {target}{role}: +{delay} ms per fsync, for {ms} ms"));
                Active::Failpoint(target)
            }
            Fault::Clock => {
                let rate = [0.25, 0.5, 2.0, 4.0][self.rng.below(4) as usize];
                self.env.set_failpoints(target, &format!("clock_rate = {rate}\n"))?;
                self.note(format!("clock of node {target}{role} at rate {rate} for {ms} ms"));
                Active::Failpoint(target)
            }
            Fault::Reconfig | Fault::LeaderTransfer => return Ok(()),
        };
        self.injected += 1;
        self.active = Some((active, until));
        Ok(())
    }

    async fn heal(&mut self) -> Result<()> {
        let Some((active, _)) = self.active.take() else { return Ok(()) };
        match active {
            Active::Killed(id) => {
                if !self.retired.contains(&id) {
                    self.env.lock().start(id)?;
                    self.note(format!("restart node {id}"));
                }
            }
            Active::Paused(id) => {
                let running = self.env.lock().is_running(id);
                if running {
                    self.env.lock().resume(id)?;
                    self.note(format!("resume node {id} (SIGCONT)"));
                }
            }
            Active::Partitioned => {
                self.env.proxy.heal();
                self.note("heal the network".into());
            }
            Active::Failpoint(id) => {
                self.env.set_failpoints(id, "")?;
                self.note(format!("clear the failpoints of node {id}"));
            }
        }
        Ok(())
    }

    /// Ends every fault: heals the active one, resumes and restarts members, clears the
    /// network and every failpoint.
    pub(crate) async fn heal_all(&mut self) -> Result<()> {
        self.heal().await?;
        self.env.proxy.heal();
        for id in 1..=self.nodes + self.spares {
            self.env.set_failpoints(id, "")?;
        }
        let mut todo = Vec::new();
        {
            let mut c = self.env.lock();
            for id in c.running() {
                if c.is_paused(id) {
                    c.resume(id)?;
                }
            }
            for &id in &self.members {
                if !c.is_running(id) {
                    c.start(id)?;
                    todo.push(id);
                }
            }
        }
        for id in todo {
            self.note(format!("restart node {id} (final heal)"));
        }
        let (forwarded, dropped) = self.env.proxy.counters();
        self.note(format!("every fault healed (proxy: {forwarded} datagrams forwarded, {dropped} dropped)"));
        if let Some(admin) = &self.admin
            && let Ok(m) = members(admin).await
        {
            self.members = m.into_iter().collect();
        }
        Ok(())
    }

    async fn admin_op(&mut self, f: Fault) {
        let Some(admin) = self.admin.clone() else { return };
        match f {
            Fault::LeaderTransfer => {
                let voters: Vec<u64> = self.members.iter().copied().filter(|&m| m <= self.nodes).collect();
                let to = if self.rng.chance(0.5) && !voters.is_empty() {
                    Some(voters[self.rng.below(voters.len() as u64) as usize])
                } else {
                    None
                };
                let r = match to.map(nid).transpose() {
                    Ok(to) => admin.leader_transfer(to).await.map_err(anyhow::Error::from),
                    Err(e) => Err(e),
                };
                self.injected += 1;
                self.note(format!("leader transfer to {} → {}", to.map_or("any".into(), |t| t.to_string()), brief(&r)));
            }
            Fault::Reconfig => self.reconfig().await,
            _ => {}
        }
    }

    async fn reconfig(&mut self) {
        let Some(admin) = self.admin.clone() else { return };
        let step = match self.spare {
            Spare::Idle => {
                if self.next_spare > self.nodes + self.spares {
                    return;
                }
                let id = self.next_spare;
                let started = {
                    let mut c = self.env.lock();
                    if c.is_running(id) { Ok(()) } else { c.start(id) }
                };
                if let Err(e) = started {
                    self.note(format!("cannot start spare node {id}: {e:#}"));
                    return;
                }
                let r = match nid(id) {
                    Ok(n) => admin.member_add(n, self.env.proxy.front(id)).await.map_err(anyhow::Error::from),
                    Err(e) => Err(e),
                };
                format!("member add {id} (learner) → {}", brief(&r))
            }
            Spare::Learner(id) => {
                let r = match nid(id) {
                    Ok(n) => admin.member_promote(n).await.map_err(anyhow::Error::from),
                    Err(e) => Err(e),
                };
                format!("member promote {id} → {}", brief(&r))
            }
            Spare::Voter(id) => {
                let r = match nid(id) {
                    Ok(n) => admin.member_remove(n).await.map_err(anyhow::Error::from),
                    Err(e) => Err(e),
                };
                format!("member remove {id} → {}", brief(&r))
            }
        };
        self.injected += 1;
        self.note(step);
        // Where things stand now, from the leader's member list.
        let Ok(list) = admin.member_list().await else { return };
        let current = self.next_spare;
        let entry = list.iter().find(|m| m.id.get() == current);
        self.members = list.iter().map(|m| m.id.get()).collect();
        self.spare = match entry.map(|m| m.kind) {
            Some(quorate_client::MemberKind::Learner) => Spare::Learner(current),
            Some(_) => Spare::Voter(current),
            None if matches!(self.spare, Spare::Voter(_)) => {
                // Removed: stop its process for good.
                let _ = self.env.lock().kill(current);
                self.retired.insert(current);
                self.note(format!("node {current} removed; its process stopped"));
                self.next_spare += 1;
                Spare::Idle
            }
            None => self.spare,
        };
    }
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
