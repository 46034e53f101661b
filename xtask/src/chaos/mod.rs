//! `cargo xtask chaos`: fault testing of a real cluster — node processes on 127.0.0.1 with
//! QUIC, mutual TLS, RocksDB and fsync — under concurrent clients whose every call is recorded
//! and checked afterwards (see `docs/chaos.md`).
//!
//! * [`proxy`]: the fault-injecting UDP proxy between nodes (partitions);
//! * [`workload`]: the clients and the history they record;
//! * [`nemesis`]: the seeded fault schedule (kill, pause, partition, reconfig, leader transfer,
//!   disk full, clock, slow disk);
//! * [`checks`]: what is checked after a run (linearizability, lost writes, identical replicas,
//!   invariant counters, recovery);
//! * [`scenarios`]: failover timing, named regressions and the bounded CI run.

pub(crate) mod checks;
mod nemesis;
pub(crate) mod proxy;
mod scenarios;
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
use workload::{ClientFactory, History, KeyChoice, WorkloadSpec};

pub(crate) const USAGE: &str = "\
usage: cargo xtask chaos [--nodes 3|5] [--duration SECONDS] [--seed S] [--faults LIST]
                         [--workload mixed|hot-key] [--reads linearizable|lease] [--clients N] [--keys N]
       cargo xtask chaos failover [--kills N] [--seed S]
       cargo xtask chaos regress [NAME]      (names: single-node-crash, index-monotonic,
                                             reconfig-split-brain, lock-fencing; none: all)
       cargo xtask chaos ci                  the bounded CI slice: fixed seeds, every fault kind
       cargo xtask chaos soak [--duration SECONDS] [--seed S]
                                             every fault kind, 5 nodes, long
faults (comma-separated; default all): kill,pause,partition,reconfig,leader-transfer,disk-full,clock,slow-disk
artifacts: $CARGO_TARGET_DIR/chaos/<seed>/ (history.jsonl, nemesis.log, logs/, metrics-*.txt, verdict.txt)";

/// The election settings of every chaos cluster (also recorded with the failover figures).
pub(crate) const RAFT: RaftSettings =
    RaftSettings { election_timeout_ms: 500, heartbeat_ms: 50, lease_clock_drift_ms: 0 };

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
    /// Artifacts directory name under `chaos/` (default: the seed).
    pub(crate) label: Option<String>,
}

impl Options {
    pub(crate) fn new(seed: u64) -> Options {
        Options {
            nodes: 3,
            duration: Duration::from_secs(30),
            seed,
            faults: Fault::ALL.to_vec(),
            choice: KeyChoice::Mixed,
            reads: ReadConsistency::Linearizable,
            clients: 8,
            keys: 24,
            label: None,
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
                    _ => bail!("--workload is mixed or hot-key, got `{v}`"),
                }
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
}

impl Env {
    /// Certificates, configurations and the proxy for `nodes` voters and `spares` spare ids,
    /// under `dir` (cleared); starts the voters. Within a tokio runtime.
    pub(crate) async fn create(bin: PathBuf, dir: PathBuf, nodes: u64, spares: u64, raft: RaftSettings) -> Result<Env> {
        let mut cluster = Cluster::new(bin, dir.clone(), "chaos", true)?;
        // QUIC's own info-level events fill gigabytes in a chaos run.
        cluster.log_filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info,quinn=warn,quinn_proto=warn".into());
        let total = nodes + spares;
        cluster.generate_certs(total, 7001)?;
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
            })?;
        }
        let factory = ClientFactory {
            cluster: cluster.name.clone(),
            certs: cluster.certs_dir(),
            members: listen.iter().map(|(id, a)| (*id, *a)).collect(),
        };
        let env = Env { cluster: Mutex::new(cluster), proxy, factory, listen, metrics, dir };
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

/// Ids of members (voters and learners) in the configuration the leader reports.
pub(crate) async fn members(client: &Client) -> Result<Vec<u64>> {
    let m = client.member_list().await.context("member list")?;
    Ok(m.iter().map(|m| m.id.get()).collect())
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
        Err(e) => Verdict { pass: false, line: format!("chaos seed={}: FAIL — {e:#}", o.seed), ops: 0 },
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

async fn run_async(o: &Options, bin: PathBuf, dir: PathBuf) -> Result<Verdict> {
    let spares = if o.faults.contains(&Fault::Reconfig) { SPARES } else { 0 };
    let mut raft = RAFT;
    if o.reads == ReadConsistency::Lease {
        raft.lease_clock_drift_ms = 100;
    }
    crate::demo::step(&format!(
        "chaos seed {}: {} nodes, {}s, faults {}, {:?} workload, {:?} reads",
        o.seed,
        o.nodes,
        o.duration.as_secs(),
        Fault::names(&o.faults),
        o.choice,
        o.reads
    ));
    let env = Arc::new(Env::create(bin, dir.clone(), o.nodes, spares, raft).await?);
    let admin = env.factory.client(o.seed ^ 0xAD)?;
    let t = Instant::now();
    let (leader, term) = env.wait_for_leader(&admin, Duration::from_secs(30)).await?;
    println!("leader: node {leader} (term {term}) after {:.1}s", t.elapsed().as_secs_f64());

    let history = Arc::new(History::new());
    let stop = Arc::new(AtomicBool::new(false));
    let observing = Arc::new(AtomicBool::new(true));
    let observer = tokio::spawn(observe_leaders(env.clone(), observing.clone(), o.seed));
    let spec = WorkloadSpec {
        clients: o.clients,
        keys: o.keys,
        choice: o.choice,
        reads: o.reads,
        seed: o.seed,
        ops_per_client_max: 1_000_000,
    };
    let clients = tokio::spawn(workload::run_clients(spec, env.factory.clone(), history.clone(), stop.clone()));
    let nem = nemesis::Nemesis::new(env.clone(), o.seed, o.faults.clone(), o.nodes, spares, history.clone());
    let nem_stop = stop.clone();
    let duration = o.duration;
    let nemesis_task = tokio::spawn(async move { nem.run(duration, nem_stop).await });
    tokio::time::sleep(o.duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut nem = nemesis_task.await.context("the nemesis panicked")??;
    let counts = clients.await.context("the clients panicked")??;
    println!(
        "workload done: {} operations ({} ok, {} failed, {} unknown)",
        history.len(),
        counts.ok,
        counts.failed,
        counts.unknown
    );
    // Heal everything, then the checks.
    nem.heal_all().await?;
    let healed = Instant::now();
    std::fs::write(dir.join("nemesis.log"), nem.log.join("\n") + "\n")?;
    let report = checks::after_run(&env, &history, o, healed, &nem.members).await;
    observing.store(false, Ordering::Relaxed);
    let leaders = observer.await.context("the leader observer panicked")?;
    let split: Vec<String> =
        leaders.iter().filter(|(_, l)| l.len() > 1).map(|(term, l)| format!("term {term}: leaders {l:?}")).collect();
    history.write(&dir.join("history.jsonl"))?;
    env.lock().stop_all();
    let report = report?;
    let pass = report.pass() && split.is_empty();
    let safety = if split.is_empty() {
        format!("one leader per term ({} terms observed)", leaders.len())
    } else {
        format!("SPLIT BRAIN: {}", split.join("; "))
    };
    let line = format!(
        "chaos seed={} nodes={} faults={} workload={:?} reads={:?}: {} — {} ops ({} ok, {} failed, {} unknown), {} faults injected; {safety}; {}",
        o.seed,
        o.nodes,
        Fault::names(&o.faults),
        o.choice,
        o.reads,
        if pass { "PASS" } else { "FAIL" },
        history.len(),
        counts.ok,
        counts.failed,
        counts.unknown,
        nem.injected,
        report.summary()
    );
    Ok(Verdict { pass, line, ops: history.len() })
}

/// Polls every node's status every 100 ms while `on`; the leaders seen in each term.
async fn observe_leaders(env: Arc<Env>, on: Arc<AtomicBool>, seed: u64) -> BTreeMap<u64, BTreeSet<u64>> {
    let mut seen: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    let Ok(client) = env.factory.client(seed ^ 0x0B5E) else { return seen };
    while on.load(Ordering::Relaxed) {
        for (_, s) in client.statuses().await {
            if let Ok(s) = s
                && s.role == RaftRole::Leader
            {
                seen.entry(s.term.0).or_default().insert(s.id.get());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen
}
