//! `cargo xtask chaos`: fault testing of a real cluster — node processes on 127.0.0.1 with
//! QUIC, mutual TLS, RocksDB and fsync — under concurrent clients whose every call is recorded
//! and checked afterwards (see `docs/chaos.md`).
//!
//! * [`proxy`]: the fault-injecting UDP proxy between nodes (partitions);
//! * [`workload`]: the clients and the history they record;
//! * [`nemesis`]: the seeded fault schedule (kill, pause, partition, reconfig, leader transfer,
//!   disk full, clock, slow disk), one table row per kind of fault;
//! * [`windows`]: the per-fault verdict (traffic during each fault, the longest time without a
//!   leader and without an acknowledged write, against bounds);
//! * [`checks`]: what is checked after a run (linearizability, lost writes, identical replicas,
//!   invariant counters, recovery);
//! * [`watchers`]: watch clients through the faults and the check of their streams;
//! * [`leasers`]: lease clients through the faults and the check of their leases' expiry;
//! * [`scenarios`]: failover timing, named regressions and the bounded CI run.

pub(crate) mod checks;
mod leasers;
mod nemesis;
pub(crate) mod proxy;
mod scenarios;
mod txn;
mod watchers;
mod windows;
pub(crate) mod workload;

use crate::cluster::{Cluster, NodeSpec, RaftSettings, build_quorate, free_tcp_port, free_udp_port, target_dir};
use anyhow::{Context, Result, bail};
use nemesis::Fault;
use quorate_client::{Client, ReadConsistency};
use quorate_core::Role as RaftRole;
use quorate_log::NodeId;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use windows::{Sample, Seen};
use workload::{ClientFactory, History, KeyChoice, OBSERVER, Principals, Timeouts, WorkloadSpec};

pub(crate) const USAGE: &str = "\
usage: cargo xtask chaos [--nodes 3|5] [--duration SECONDS] [--seed S] [--faults LIST]
                         [--workload mixed|hot-key|txn] [--reads linearizable|lease] [--clients N] [--keys N]
                         [--txn-clients N] [--txn-slots N] [--engine driver|runtime]
                         [--principals per-client|shared] [--hold-ms LO-HI] [--target leader|any]
       cargo xtask chaos failover [--kills N] [--seed S]
       cargo xtask chaos regress [NAME]      (names: see docs/chaos.md or `chaos regress list`; none: all)
       cargo xtask chaos ci                  the bounded CI slice: fixed seeds, every fault kind
       cargo xtask chaos weakened            a run against nodes serving torn read-only transactions
                                             watch answers short of their last event and lease expiry
                                             6 s late (test-only failpoints), then its control without
                                             them: passes when the checkers name only torn-read anomalies
                                             (at least one G-single), missing watch events and outlived
                                             leases, and the control is clean
       cargo xtask chaos soak [--duration SECONDS] [--seed S]
                                             every fault kind, 5 nodes, long
faults (comma-separated; default all): kill,pause,partition,reconfig,leader-transfer,disk-full,clock,slow-disk,lost-wal
workload txn: the mixed workload plus 4 list-append transaction clients (--txn-clients), checked
for strict serializability (txn-history.jsonl)
every run: 2 watchers of the workload's keys, their streams checked against the writes (watch.txt),
           and 2 lease clients whose leases are checked against the documented expiry bound (lease.txt)
artifacts: $CARGO_TARGET_DIR/chaos/<seed>/ (history.jsonl, nemesis.log, logs/, metrics-*.txt, verdict.txt)";

/// The election settings of every chaos cluster (also recorded with the failover figures).
pub(crate) const RAFT: RaftSettings =
    RaftSettings { election_timeout_ms: 500, heartbeat_ms: 50, lease_clock_drift_ms: 0 };

/// The lease reads' clock-drift bound (`raft.lease_clock_drift_ms`) in runs with `--reads lease`.
pub(crate) const LEASE_DRIFT_MS: u64 = 100;

/// How long the cluster may take, after the last fault heals, to have a leader and commit.
pub(crate) const RECOVERY_MAX: Duration = Duration::from_secs(30);

/// Spare node ids (certificates and ports) for membership changes.
const SPARES: u64 = 4;

/// One chaos run's settings.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    pub(crate) nodes: u64,
    pub(crate) duration: Duration,
    pub(crate) seed: u64,
    pub(crate) faults: Vec<Fault>,
    pub(crate) choice: KeyChoice,
    pub(crate) reads: ReadConsistency,
    pub(crate) clients: u64,
    pub(crate) keys: u64,
    pub(crate) principals: Principals,
    /// How long each lasting fault holds (milliseconds, uniform in the range).
    pub(crate) hold_ms: (u64, u64),
    /// A fixed fault schedule (named regressions) instead of the seed's.
    pub(crate) script: Option<&'static [nemesis::Step]>,
    /// Lasting faults hit the leader whenever there is one (`--target leader`).
    pub(crate) leader_first: bool,
    /// What the per-fault verdict holds the run to.
    pub(crate) bounds: windows::Bounds,
    /// Artifacts directory name under `chaos/` (default: the seed).
    pub(crate) label: Option<String>,
    /// List-append transaction clients alongside the KV clients (0: none).
    pub(crate) txn_clients: u64,
    /// Keys (slots) the transaction clients share.
    pub(crate) txn_slots: u64,
    /// Failpoint settings written to every node before the workload starts (test-only
    /// weakenings; `None` in every real run).
    pub(crate) failpoints: Option<&'static str>,
    /// The nodes' engine, `driver` or `runtime` (`QUORATE_ENGINE`; `None`: the caller's
    /// environment, else the default).
    pub(crate) engine: Option<&'static str>,
}

impl Options {
    pub(crate) fn new(seed: u64) -> Options {
        Options {
            nodes: 3,
            duration: Duration::from_secs(30),
            seed,
            faults: Fault::all(),
            choice: KeyChoice::Mixed,
            reads: ReadConsistency::Linearizable,
            clients: 8,
            keys: 24,
            principals: Principals::PerClient,
            hold_ms: nemesis::HOLD_MS,
            script: None,
            leader_first: false,
            bounds: windows::BOUNDS,
            label: None,
            txn_clients: 0,
            txn_slots: 6,
            failpoints: None,
            engine: None,
        }
    }

    /// The engine the nodes run on, as the run's verdict names it.
    fn engine_name(&self) -> String {
        match self.engine {
            Some(e) => e.to_string(),
            None => std::env::var("QUORATE_ENGINE").unwrap_or_else(|_| "driver".into()),
        }
    }

    fn dir_name(&self) -> String {
        self.label.clone().unwrap_or_else(|| self.seed.to_string())
    }
}

pub(crate) fn chaos(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("failover") => return scenarios::failover(&args[1..]),
        Some("regress") => return scenarios::regress(&args[1..]),
        Some("ci") => return scenarios::ci(&args[1..]),
        Some("soak") => return scenarios::soak(&args[1..]),
        Some("weakened") => return scenarios::weakened(&args[1..]),
        Some("help" | "--help" | "-h") => {
            println!("{USAGE}");
            return Ok(());
        }
        _ => {}
    }
    let o = parse(args)?;
    let verdict = run(&o)?;
    if !verdict.pass {
        bail!("chaos run failed: {}", verdict.line);
    }
    Ok(())
}

fn value<'a>(args: &'a [String], i: usize, flag: &str) -> Result<&'a str> {
    args.get(i + 1).map(String::as_str).with_context(|| format!("{flag} needs a value\n{USAGE}"))
}

pub(crate) fn parse_num(v: &str, flag: &str) -> Result<u64> {
    v.parse().with_context(|| format!("{flag} takes a whole number, got `{v}`"))
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options::new(1);
    let mut i = 0;
    while i < args.len() {
        let flag = args[i].as_str();
        let v = value(args, i, flag)?;
        match flag {
            "--nodes" => {
                o.nodes = parse_num(v, flag)?;
                if !(1..=7).contains(&o.nodes) {
                    bail!("--nodes must be between 1 and 7 (3 or 5 are the usual sizes)");
                }
            }
            "--duration" => o.duration = Duration::from_secs(parse_num(v, flag)?.clamp(1, 24 * 3600)),
            "--seed" => o.seed = parse_num(v, flag)?,
            "--faults" => o.faults = Fault::parse_list(v)?,
            "--workload" => {
                o.choice = match v {
                    "mixed" => KeyChoice::Mixed,
                    "hot-key" => KeyChoice::HotKey,
                    "txn" => {
                        o.txn_clients = o.txn_clients.max(4);
                        KeyChoice::Mixed
                    }
                    _ => bail!("--workload is mixed, hot-key or txn, got `{v}`"),
                }
            }
            "--txn-clients" => o.txn_clients = parse_num(v, flag)?.clamp(0, 64),
            "--txn-slots" => o.txn_slots = parse_num(v, flag)?.clamp(1, 1000),
            "--engine" => {
                o.engine = Some(match v {
                    "driver" => "driver",
                    "runtime" => "runtime",
                    _ => bail!("--engine is driver or runtime, got `{v}`"),
                });
            }
            "--reads" => {
                o.reads = match v {
                    "linearizable" => ReadConsistency::Linearizable,
                    "lease" => ReadConsistency::Lease,
                    _ => bail!("--reads is linearizable or lease, got `{v}`"),
                }
            }
            "--clients" => o.clients = parse_num(v, flag)?.clamp(1, 256),
            "--keys" => o.keys = parse_num(v, flag)?.clamp(1, 10_000),
            "--target" => {
                o.leader_first = match v {
                    "leader" => true,
                    "any" => false,
                    _ => bail!("--target is leader or any, got `{v}`"),
                }
            }
            "--hold-ms" => {
                let (lo, hi) = v.split_once('-').unwrap_or((v, v));
                let (lo, hi) = (parse_num(lo, flag)?, parse_num(hi, flag)?);
                if !(100..=600_000).contains(&lo) || hi < lo || hi > 600_000 {
                    bail!("--hold-ms takes LO-HI milliseconds within 100..=600000, got `{v}`");
                }
                o.hold_ms = (lo, hi);
            }
            "--principals" => {
                o.principals = match v {
                    "per-client" => Principals::PerClient,
                    "shared" => Principals::Shared,
                    _ => bail!("--principals is per-client or shared, got `{v}`"),
                }
            }
            _ => bail!("unknown flag `{flag}`\n{USAGE}"),
        }
        i += 2;
    }
    Ok(o)
}

/// The outcome of one run.
#[derive(Clone, Debug)]
pub(crate) struct Verdict {
    pub(crate) pass: bool,
    pub(crate) line: String,
    pub(crate) ops: usize,
    /// Whether every check other than the transaction, watch and lease checks passed.
    pub(crate) rest_pass: bool,
    /// What the transaction check found (runs with transaction clients whose check ran).
    pub(crate) txn: Option<TxnFindings>,
    /// What the watch check found (runs whose watch check ran).
    pub(crate) watch: Option<WatchFindings>,
    /// What the lease check found (runs whose lease check ran).
    pub(crate) lease: Option<LeaseFindings>,
}

impl Verdict {
    /// A verdict with no transaction, watch or lease check: `rest_pass` is `pass`.
    pub(crate) fn plain(pass: bool, line: String, ops: usize) -> Verdict {
        Verdict { pass, line, ops, rest_pass: pass, txn: None, watch: None, lease: None }
    }
}

/// What the lease check of a run found.
#[derive(Clone, Debug, Default)]
pub(crate) struct LeaseFindings {
    /// Violations by kind (empty: every lease kept its promises).
    pub(crate) kinds: BTreeMap<quorate_check::lease::ViolationKind, usize>,
    /// Whether the check saw an expiry and a revoke (otherwise it checked little).
    pub(crate) exercised: bool,
}

/// What the watch check of a run found.
#[derive(Clone, Debug, Default)]
pub(crate) struct WatchFindings {
    /// Violations by kind (empty: every stream passed).
    pub(crate) kinds: BTreeMap<quorate_check::watch::ViolationKind, usize>,
    /// Acknowledged writes the streams covered.
    pub(crate) acked_covered: usize,
}

/// What the transaction check of a run found.
#[derive(Clone, Debug, Default)]
pub(crate) struct TxnFindings {
    /// Anomalies by kind (empty: strictly serializable).
    pub(crate) kinds: BTreeMap<quorate_check::txn::AnomalyKind, usize>,
    /// Whether the check covered the whole run: every key had its final read, no limit was
    /// reached, and the clients never hit the history's cap (which stops them issuing).
    pub(crate) complete: bool,
}

/// A running chaos cluster: node processes, the proxy, and how to reach them.
pub(crate) struct Env {
    pub(crate) cluster: Mutex<Cluster>,
    pub(crate) proxy: proxy::Proxy,
    pub(crate) factory: ClientFactory,
    /// Every id with certificates: `1..=nodes` bootstrap voters, then spares.
    pub(crate) listen: BTreeMap<u64, SocketAddr>,
    pub(crate) metrics: BTreeMap<u64, SocketAddr>,
    pub(crate) dir: PathBuf,
    /// Each node's latest status as the leader observer saw it (history time), when one runs.
    pub(crate) observed: Mutex<windows::Latest>,
}

impl Env {
    /// Certificates, configurations and the proxy for `nodes` voters and `spares` spare ids,
    /// under `dir` (cleared); starts the voters. Within a tokio runtime.
    pub(crate) async fn create(
        bin: PathBuf,
        dir: PathBuf,
        nodes: u64,
        spares: u64,
        raft: RaftSettings,
        clients: &[String],
        engine: Option<&'static str>,
    ) -> Result<Env> {
        let mut cluster = Cluster::new(bin, dir.clone(), "chaos", true)?;
        cluster.engine = engine;
        // QUIC's own info-level events fill gigabytes in a chaos run.
        cluster.log_filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info,quinn=warn,quinn_proto=warn".into());
        let total = nodes + spares;
        let mut principals = vec![
            format!("{}:write", workload::CHECKER),
            format!("{OBSERVER}:read"),
            format!("{}:read", watchers::WATCHER),
            format!("{}:write", leasers::LEASER),
        ];
        principals.extend(clients.iter().cloned());
        cluster.generate_certs_for(total, 7001, &principals)?;
        let mut listen = BTreeMap::new();
        let mut metrics = BTreeMap::new();
        for id in 1..=total {
            listen.insert(id, SocketAddr::from(([127, 0, 0, 1], free_udp_port()?)));
            metrics.insert(id, SocketAddr::from(([127, 0, 0, 1], free_tcp_port()?)));
        }
        let proxy = proxy::Proxy::start(&listen).await?;
        for id in 1..=total {
            let mut peers: BTreeMap<u64, String> =
                (1..=nodes).filter(|&k| k != id).map(|k| (k, proxy.front(k).to_string())).collect();
            let join = id > nodes;
            if !join {
                peers.insert(id, listen[&id].to_string());
            }
            cluster.write_config(&NodeSpec {
                id,
                listen: listen[&id],
                peers,
                join,
                metrics_listen: Some(metrics[&id]),
                raft,
                failpoints: true,
                // Clients reconnect after every fault, all from 127.0.0.1.
                handshakes_per_source: Some(crate::cluster::LOOPBACK_HANDSHAKES),
            })?;
        }
        let factory = ClientFactory {
            cluster: cluster.name.clone(),
            certs: cluster.certs_dir(),
            members: listen.iter().map(|(id, a)| (*id, *a)).collect(),
            workload_members: listen.iter().filter(|(id, _)| **id <= nodes).map(|(id, a)| (*id, *a)).collect(),
        };
        let observed = Mutex::new(BTreeMap::new());
        let env = Env { cluster: Mutex::new(cluster), proxy, factory, listen, metrics, dir, observed };
        for id in 1..=nodes {
            env.lock().start(id)?;
        }
        Ok(env)
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Cluster> {
        self.cluster.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A client that talks to node `id` only.
    pub(crate) fn client_of(&self, id: u64, seed: u64) -> Result<Client> {
        self.factory.client_to(&[(id, self.listen[&id])], seed)
    }

    /// Writes node `id`'s failpoint control file.
    pub(crate) fn set_failpoints(&self, id: u64, text: &str) -> Result<()> {
        let dir = self.lock().data_dir(id);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("failpoints.toml");
        let tmp = dir.join("failpoints.toml.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
    }

    /// The leader that the running nodes agree on (a majority of the voters it names), with
    /// its term.
    pub(crate) async fn leader(&self, client: &Client) -> Option<(u64, u64)> {
        let statuses = client.statuses().await;
        let ok: Vec<_> = statuses.into_iter().filter_map(|(_, s)| s.ok()).collect();
        let leader = ok.iter().filter(|s| s.role == RaftRole::Leader).max_by_key(|s| s.term)?;
        let voters = leader.config.voters.len();
        let agree = ok.iter().filter(|s| s.leader == Some(leader.id) && s.term == leader.term).count();
        (agree * 2 > voters).then_some((leader.id.get(), leader.term.0))
    }

    /// Polls until there is an agreed leader; its id and term.
    pub(crate) async fn wait_for_leader(&self, client: &Client, within: Duration) -> Result<(u64, u64)> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(l) = self.leader(client).await {
                return Ok(l);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("no leader within {}s", within.as_secs())
    }

    /// Fails if a node we started exited on its own (a crash is a finding).
    pub(crate) fn check_running(&self) -> Result<()> {
        self.lock().check_running()
    }
}

/// Ids of members (voters and learners) in the configuration of the leader the nodes agree
/// on, from every node's status (polled until there is an agreed leader, at most `within`).
/// Never from `member list` alone: any node answers it with its own configuration, and a
/// spare that is not (or no longer) a member answers with an empty one — which emptied the
/// set the checks compared (issue 18: "invariant counters skipped", and the seed-4242
/// "members did not converge: applied {}, commit 0").
pub(crate) async fn members(client: &Client, within: Duration) -> Result<BTreeSet<u64>> {
    Ok(members_with_kinds(client, within).await?.into_iter().map(|(id, _)| id).collect())
}

/// As [`members`], each with whether it is a learner.
pub(crate) async fn members_with_kinds(client: &Client, within: Duration) -> Result<Vec<(u64, bool)>> {
    let deadline = Instant::now() + within;
    loop {
        let statuses: BTreeMap<u64, quorate_api::NodeStatus> =
            client.statuses().await.into_iter().filter_map(|(id, s)| Some((id.get(), s.ok()?))).collect();
        let latest: windows::Latest = statuses.iter().map(|(id, s)| (*id, (0, Some(seen_of(s))))).collect();
        if let Some((leader, members)) = windows::leader_members(&latest, 0)
            && !members.is_empty()
            && let Some(s) = statuses.get(&leader)
        {
            return Ok(members.into_iter().map(|id| (id, s.config.learners.iter().any(|l| l.get() == id))).collect());
        }
        if Instant::now() >= deadline {
            bail!("no agreed leader to report the members within {}s", within.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the leader observer keeps of a node's status.
fn seen_of(s: &quorate_api::NodeStatus) -> Seen {
    Seen {
        leads: s.role == RaftRole::Leader,
        term: s.term.0,
        leader: s.leader.map(|l| l.get()),
        voters: s.config.voters.union(&s.config.voters_outgoing).map(|v| v.get()).collect(),
        learners: s.config.learners.iter().map(|v| v.get()).collect(),
        indexes: (s.commit.0, s.applied.0, s.last_index.0),
    }
}

/// Node id from a raw number (chaos ids start at 1).
pub(crate) fn nid(id: u64) -> Result<NodeId> {
    NodeId::new(id).context("node ids start at 1")
}

/// A multi-threaded runtime for the chaos clients and nemesis.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start a tokio runtime")
}

/// One full chaos run: cluster, workload, nemesis, heal, checks, verdict.
pub(crate) fn run(o: &Options) -> Result<Verdict> {
    let bin = build_quorate()?;
    let dir = target_dir().join("chaos").join(o.dir_name());
    let rt = runtime()?;
    let started = Instant::now();
    let result = rt.block_on(run_async(o, bin, dir.clone()));
    let verdict = match result {
        Ok(v) => v,
        Err(e) => Verdict::plain(false, format!("chaos seed={}: FAIL — {e:#}", o.seed), 0),
    };
    let line = format!("{} ({:.0}s; artifacts in {})", verdict.line, started.elapsed().as_secs_f64(), dir.display());
    let _ = std::fs::write(dir.join("verdict.txt"), format!("{line}\n"));
    if verdict.pass {
        // Keep the history, logs and metrics; the data directories only matter after a failure.
        let _ = std::fs::remove_dir_all(dir.join("data"));
    }
    println!("{line}");
    Ok(Verdict { line, ..verdict })
}

/// Spare ids for membership changes: one per minute of the run, at least [`SPARES`] and at
/// most 32 (each is added, promoted and removed once, so a long soak keeps changing its
/// membership to the end instead of running out after the first minutes); none without
/// the reconfiguration fault.
fn spares_for(o: &Options) -> u64 {
    if o.faults.contains(&Fault::RECONFIG) { (o.duration.as_secs() / 60).clamp(SPARES, 32) } else { 0 }
}

async fn run_async(o: &Options, bin: PathBuf, dir: PathBuf) -> Result<Verdict> {
    let spares = spares_for(o);
    let mut raft = RAFT;
    if o.reads == ReadConsistency::Lease {
        raft.lease_clock_drift_ms = LEASE_DRIFT_MS;
    }
    crate::demo::step(&format!(
        "chaos seed {}: {} nodes ({} engine), {}s, faults {}, {:?} workload, {:?} reads, {:?} principals",
        o.seed,
        o.nodes,
        o.engine_name(),
        o.duration.as_secs(),
        Fault::names(&o.faults),
        o.choice,
        o.reads,
        o.principals
    ));
    let mut principals = o.principals.certs(o.clients);
    principals.extend((0..o.txn_clients).map(|i| format!("{}:write", txn::principal(i))));
    let env = Arc::new(Env::create(bin, dir.clone(), o.nodes, spares, raft, &principals, o.engine).await?);
    if let Some(text) = o.failpoints {
        for id in 1..=o.nodes {
            env.set_failpoints(id, text)?;
        }
        println!("failpoints on every node: {}", text.trim().replace('\n', "; "));
    }
    let admin = env.factory.client(o.seed ^ 0xAD)?;
    let t = Instant::now();
    let (leader, term) = env.wait_for_leader(&admin, Duration::from_secs(30)).await?;
    println!("leader: node {leader} (term {term}) after {:.1}s", t.elapsed().as_secs_f64());

    let from = first_revision(&admin, leader).await?;
    let history = Arc::new(History::new());
    let stop = Arc::new(AtomicBool::new(false));
    let observing = Arc::new(AtomicBool::new(true));
    let observer = tokio::spawn(observe(env.clone(), history.clone(), observing.clone(), o.seed));
    let spec = WorkloadSpec {
        clients: o.clients,
        keys: o.keys,
        choice: o.choice,
        reads: o.reads,
        principals: o.principals,
        seed: o.seed,
        ops_per_client_max: 1_000_000,
    };
    let begin_ns = history.now();
    let clients = tokio::spawn(workload::run_clients(spec, env.factory.clone(), history.clone(), stop.clone()));
    let drain = Arc::new(watchers::Drain::default());
    let watching = tokio::spawn(watchers::run(env.factory.clone(), from, o.seed, drain.clone()));
    let leasing = tokio::spawn(leasers::run(env.factory.clone(), history.clone(), o.seed, stop.clone()));
    let txn_spec = txn::TxnSpec { clients: o.txn_clients, slots: o.txn_slots, seed: o.seed };
    let txns = Arc::new(txn::TxnHistory::new());
    let txn_clients =
        tokio::spawn(txn::run_clients(txn_spec, env.factory.clone(), history.clone(), txns.clone(), stop.clone()));
    let ctx = nemesis::Context {
        lease_reads: o.reads == ReadConsistency::Lease,
        hold_ms: o.hold_ms,
        script: o.script,
        leader_first: o.leader_first,
        spare_every: if spares == 0 { Duration::ZERO } else { o.duration / u32::try_from(spares).unwrap_or(u32::MAX) },
    };
    let nem =
        Arc::new(nemesis::Nemesis::new(env.clone(), o.seed, o.faults.clone(), (o.nodes, spares), ctx, history.clone()));
    let deadline = Instant::now() + o.duration;
    let nemesis_task = tokio::spawn(nem.clone().run(deadline, stop.clone()));
    // The run ends at its deadline, or earlier when the history is full (the clients have
    // stopped: faults after that would run without load).
    tokio::select! {
        () = tokio::time::sleep_until(deadline.into()) => {}
        () = history.filled() => {}
    }
    stop.store(true, Ordering::Relaxed);
    let stop_ns = history.now();
    nemesis_task.await.context("the nemesis panicked")??;
    let counts = clients.await.context("the clients panicked")??;
    let txn_counts = txn_clients.await.context("the transaction clients panicked")??;
    if o.txn_clients > 0 {
        println!("transaction workload done: {} ok, {} failed, {} unknown", txn_counts.0, txn_counts.1, txn_counts.2);
    }
    println!(
        "workload done: {} operations ({} ok, {} failed, {} unknown)",
        history.len(),
        counts.ok,
        counts.failed,
        counts.unknown
    );
    // The watchers go on until they cover the last revision a write was acknowledged at.
    let last_acked = history
        .writes()
        .iter()
        .filter_map(|w| match w.outcome {
            quorate_check::watch::Outcome::Acked(r) => Some(r),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    drain.start(last_acked);
    // Heal everything, then the checks.
    let nem = nem.heal_all().await?;
    let healed = Instant::now();
    let origin = format!("# history time 0 = {} (node logs are in UTC)\n", history.origin_utc());
    std::fs::write(dir.join("nemesis.log"), origin + &nem.log.join("\n") + "\n")?;
    let report = checks::after_run(&env, &history, o, healed, &nem.members).await;
    let txn_verdict = if o.txn_clients > 0 { Some(check_txns(&env, o, &history, &txns).await) } else { None };
    // What the watch check adds to the run: waiting for the watchers after the other checks,
    // and the check itself (the watchers' drain runs alongside the heal and the checks).
    let watch_started = Instant::now();
    let watch_verdict = match watching.await.context("the watchers panicked")? {
        Ok(recorded) => {
            let reached = recorded.streams.iter().map(|s| s.batches.last().map_or(0, |b| b.complete_to)).min();
            // The watchers hop between members every few seconds: a run of some length in
            // which none did would check no resume elsewhere, and fails (the harness is wrong).
            let hopless = recorded.hops == 0
                && o.duration >= watchers::HOPS_EXPECTED_AFTER
                && env.factory.workload_members.len() > 1;
            let checked = watchers::check(recorded, &history, &dir).await;
            checked.map(|(pass, line, report)| {
                let reached = reached.unwrap_or(0);
                // A stream that never got to the end covers less than the run wrote: a failure.
                let mut covered = if reached >= last_acked {
                    format!("every stream complete to revision {last_acked}, the last acknowledged, or past it")
                } else {
                    format!(
                        "WATCHERS BEHIND: a stream complete only to {reached} of {last_acked}, the last acknowledged"
                    )
                };
                if hopless {
                    covered.push_str("; NO HOP: no watcher resumed on another member");
                }
                let findings = WatchFindings { kinds: report.counts.clone(), acked_covered: report.acked_covered };
                (pass && reached >= last_acked && !hopless, format!("{line}; {covered}"), findings)
            })
        }
        Err(e) => Err(e),
    };
    let watch_added = watch_started.elapsed().as_secs_f64();
    println!(
        "the watch check added {watch_added:.1}s to the run (waiting for the watchers after the other checks, and checking)"
    );
    // The lease clients end their last leases (revoked, or polled until expired) while the
    // other checks run; the observer goes on meanwhile, for the leader changes they span.
    let lease_started = Instant::now();
    let leased = leasing.await.context("the lease clients panicked")?;
    let lease_added = lease_started.elapsed().as_secs_f64();
    observing.store(false, Ordering::Relaxed);
    let samples = observer.await.context("the leader observer panicked")?;
    let lease_verdict = leased.and_then(|recorded| {
        let offices = leasers::offices(&samples);
        let stalls = leasers::stalls(&nem.records, history.now());
        let (pass, line, report) =
            leasers::check(&recorded, &offices, &stalls, &leasers::bound(RAFT.election_timeout_ms), &dir)?;
        let exercised = report.expiries_observed > 0 && report.revokes_observed > 0;
        let findings = LeaseFindings { kinds: report.counts.clone(), exercised };
        Ok((pass, line, findings))
    });
    let ops = history.snapshot();
    let bounds = windows::Bounds { single_voter: o.nodes == 1, clients: o.clients, ..o.bounds };
    let faults = windows::judge(&nem.records, &o.faults, &ops, &samples, (begin_ns, stop_ns), &bounds);
    std::fs::write(dir.join("faults.txt"), faults.table())?;
    std::fs::write(dir.join("leaders.txt"), windows::leaders_text(&samples))?;
    std::fs::write(dir.join("status.tsv"), windows::status_text(&samples))?;
    print!("{}", faults.table());
    let leaders = windows::leaders_per_term(&samples);
    let split: Vec<String> =
        leaders.iter().filter(|(_, l)| l.len() > 1).map(|(term, l)| format!("term {term}: leaders {l:?}")).collect();
    history.write(&dir.join("history.jsonl"))?;
    env.lock().stop_all();
    let report = report?;
    let (txn_pass, txn_line, txn) = match txn_verdict {
        None => (true, String::new(), None),
        Some(Ok((pass, line, findings))) => (pass, format!("; txn: {line}"), Some(findings)),
        Some(Err(e)) => (false, format!("; txn: NOT CHECKED: {e:#}"), None),
    };
    let (watch_pass, watch_line, watch) = match watch_verdict {
        Ok((pass, line, findings)) => (pass, format!("; watch: {line} (+{watch_added:.1}s)"), Some(findings)),
        Err(e) => (false, format!("; watch: NOT CHECKED: {e:#}"), None),
    };
    let (lease_pass, lease_line, lease) = match lease_verdict {
        Ok((pass, line, findings)) => (pass, format!("; lease: {line} (+{lease_added:.1}s)"), Some(findings)),
        Err(e) => (false, format!("; lease: NOT CHECKED: {e:#}"), None),
    };
    let rest_pass = report.pass() && split.is_empty() && faults.pass();
    let pass = rest_pass && txn_pass && watch_pass && lease_pass;
    let capped = if let Some(at) = history.full_at_ns() {
        format!(
            "; history cap reached after {:.1}s of {}s: the clients stopped issuing at {} operations and the run ended there (every issued one recorded and checked)",
            at.saturating_sub(begin_ns) as f64 / 1e9,
            o.duration.as_secs(),
            workload::HISTORY_OPS_MAX
        )
    } else {
        String::new()
    };
    let safety = if split.is_empty() {
        format!("one leader per term ({} terms observed)", leaders.len())
    } else {
        format!("SPLIT BRAIN: {}", split.join("; "))
    };
    let reads = match o.reads {
        ReadConsistency::Lease => format!("Lease (drift bound {LEASE_DRIFT_MS} ms)"),
        other => format!("{other:?}"),
    };
    let line = format!(
        "chaos seed={} nodes={} engine={} faults={} workload={:?}{} reads={reads} principals={:?}: {} — {} ops ({} ok, {} failed, {} unknown){capped}; {}; {safety}; {}{txn_line}{watch_line}{lease_line}",
        o.seed,
        o.nodes,
        o.engine_name(),
        Fault::names(&o.faults),
        o.choice,
        if o.txn_clients > 0 { format!("+txn({} clients)", o.txn_clients) } else { String::new() },
        o.principals,
        if pass { "PASS" } else { "FAIL" },
        history.len(),
        counts.ok,
        counts.failed,
        counts.unknown,
        faults.summary(),
        report.summary()
    );
    Ok(Verdict { pass, line, ops: history.len(), rest_pass, txn, watch, lease })
}

/// The run's first revision, where the watchers start: the one after the leader's current
/// revision once it records events (cluster version 2, reached on its own shortly after a
/// fresh cluster's first commit), within 30 s.
async fn first_revision(admin: &Client, leader: u64) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match admin.history(nid(leader)?).await {
            Ok(h) if h.enabled => return Ok(h.revision + 1),
            _ if Instant::now() >= deadline => bail!("node {leader} does not record events (history) after 30 s"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The transaction history's final reads and its check: whether it passed, the summary, and
/// the findings.
async fn check_txns(
    env: &Env,
    o: &Options,
    history: &History,
    txns: &Arc<txn::TxnHistory>,
) -> Result<(bool, String, TxnFindings)> {
    let client = env.factory.client_as(workload::CHECKER, &env.factory.members, o.seed ^ 0x7C4E, Timeouts::WORKLOAD)?;
    let all_read = txn::final_reads(&client, o.txn_clients, history, txns).await;
    client.close();
    txns.write(&env.dir.join("txn-history.jsonl"))?;
    let h = txns.snapshot();
    let t = Instant::now();
    let report = tokio::task::spawn_blocking(move || quorate_check::txn::check(&h))
        .await
        .context("the transaction checker panicked")?;
    let took = t.elapsed().as_secs_f64();
    let mut explained = String::new();
    for a in &report.anomalies {
        explained.push_str(&format!("{a}\n"));
        if !a.detail.is_empty() {
            explained.push_str(&format!("{}\n", a.detail));
        }
        explained.push('\n');
    }
    std::fs::write(env.dir.join("txn-anomalies.txt"), &explained)?;
    println!("transactions: {} (checked in {took:.2}s)", report.summary());
    let mut line = report.summary();
    if !all_read {
        line = format!("FINAL READS FAILED (some keys not read after healing); {line}");
    }
    if txns.capped() {
        line = format!(
            "history cap reached: the clients stopped issuing at {} transactions (every issued one recorded and checked); {line}",
            txns.cap()
        );
    }
    let complete =
        all_read && !txns.capped() && !matches!(report.verdict, quorate_check::txn::Verdict::TooLarge { .. });
    let findings = TxnFindings { kinds: report.counts.clone(), complete };
    Ok((report.pass() && all_read, line, findings))
}

/// Status samples kept at most (a bound on memory: ten a second per node for hours).
const SAMPLES_MAX: usize = 2_000_000;

/// Every node's status every 100 ms, each node by its own task and client (300 ms per
/// probe, so a paused node slows only its own samples), while `on`; stamped on the history's
/// clock.
async fn observe(env: Arc<Env>, history: Arc<History>, on: Arc<AtomicBool>, seed: u64) -> Vec<Sample> {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (&id, &addr) in &env.listen {
        let Ok(client) = env.factory.client_as(OBSERVER, &[(id, addr)], seed ^ 0x0B5E ^ (id << 32), Timeouts::PROBE)
        else {
            continue;
        };
        let Ok(node) = nid(id) else { continue };
        let (env, history, on, samples) = (env.clone(), history.clone(), on.clone(), samples.clone());
        tasks.push(tokio::spawn(async move {
            while on.load(Ordering::Relaxed) {
                let started = Instant::now();
                let r = tokio::time::timeout(Timeouts::PROBE.total, client.status(node)).await;
                let seen = match r {
                    Ok(Ok(s)) => Some(seen_of(&s)),
                    _ => None,
                };
                let sample = Sample { node: id, at_ns: history.now(), seen };
                env.observed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(id, (sample.at_ns, sample.seen.clone()));
                {
                    let mut v = samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if v.len() < SAMPLES_MAX {
                        v.push(sample);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100).saturating_sub(started.elapsed())).await;
            }
            client.close();
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut v = std::mem::take(&mut *samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    v.sort_by_key(|s| s.at_ns);
    v
}
