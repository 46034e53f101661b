//! `cargo xtask attack`: a hostile-client suite against a real 3-node cluster (node processes on
//! 127.0.0.1 with QUIC, mutual TLS and RocksDB, certificates from `quorate certs dev`).
//!
//! Each attack runs for a bounded time while a well-behaved client of the write-role principal
//! `writer` (puts and linearizable gets of its own keys, every call recorded) is measured
//! alongside, in windows that alternate between unloaded and attacked (`U A U ... A U`). Two
//! well-behaved clients take turns, in two phases per attack:
//!
//! * the **paced** client ([`paced`]): it offers a fixed rate (by default half of the
//!   closed-loop goodput measured unloaded at the start of the run) with a bounded number of
//!   requests in flight. Its share of offered operations answered is the verdict's goodput:
//!   it measures denial of service;
//! * the **saturating** client (4 closed-loop tasks, the suite's client before brief 13A): its
//!   goodput is measured and printed, not bound — on a 2-core machine shared with the
//!   attacker's process, a client that takes all the CPU it can loses whatever CPU the
//!   attacker's own process takes, so its share measures the attacker's CPU as much as the
//!   attack.
//!
//! The verdict of an attack is PASS only if all of these hold:
//!
//! * **up**: every node process still runs afterwards;
//! * **term**: the leader's term is unchanged (the attack caused no election);
//! * **goodput**: over the attacked windows together the paced client got at least
//!   [`GOODPUT_MIN`] of the share of its offered operations answered in the unloaded windows
//!   around them ([`Windows::overall`]: its goodput under attack over its unloaded goodput),
//!   and in no attacked window less than [`WINDOW_MIN`] ([`Windows::worst`]: no outage of half
//!   a window); a tick it could not send because all its requests were in flight counts as
//!   lost;
//! * **rss**: no node's resident memory grew by more than [`RSS_GROWTH_MAX_MIB`] MiB over its
//!   value before the attack (sampled every 200 ms);
//! * **history**: the well-behaved client's history, closed by final linearizable reads, is
//!   linearizable (quorate-check's checker, as in `cargo xtask chaos`) and no acknowledged write
//!   is lost;
//! * **check**: what the attack itself must not achieve (a hijacked session, a write by a
//!   read-role client, a request served on an expired certificate, ...) did not happen.
//!
//! Every loop is bounded in count and in time; only loopback addresses are used. A node that
//! died is replaced by a fresh cluster before the next attack (its verdict is already FAIL).

use crate::chaos::checks::lost_writes;
use crate::chaos::workload::{History, recorded_get, recorded_put};
use crate::cluster::{Cluster, NodeSpec, RaftSettings, build_quorate, free_udp_port, target_dir, text};
use anyhow::{Context, Result, bail};
use quorate_api::{
    ClientRequest, ClientResponse, Compare, CompareOp, CompareTarget, NodeMessage, Request, Response, Sequenced,
    SessionId, Txn, TxnOp, kinds,
};
use quorate_check::linearizability::{Limits, Outcome, check};
use quorate_client::{Client, ClientConfig, ReadConsistency};
use quorate_core::{Message, MessageBody, Role as RaftRole, SplitMix64};
use quorate_log::{NodeId, Term};
use quorate_transport::{ClientOptions, ClusterId, Credentials, TlsPaths, Transport, TransportConfig, encode_message};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod paced;

const USAGE: &str = "\
usage: cargo xtask attack [--only NAME[,NAME...]] [--seed S] [--seconds N] [--rounds R]
                          [--saturating-rounds S] [--paced-rate OPS] [--ci] [--goodput-reported]
  --seconds N   seconds of attack per attack with the paced client (default 10; --ci: 5)
  --rounds R    attacked windows they are split into; unloaded windows of the same length come
                before, between and after them (default 5; --ci: 5)
  --saturating-rounds S   attacked windows of the same length with the saturating
                (closed-loop) client after the paced ones, reported and not bound; 0: none
                (default: as --rounds; --ci: 2)
  --paced-rate OPS   operations per second the paced client offers (default: half the
                closed-loop goodput measured unloaded at the start, 3 windows of 1 s)
  --ci          the short slice CI runs (every attack; paced: 5 windows of 1 s attacked, 6
                unloaded; saturating: 2 attacked, 3 unloaded)
  --goodput-reported   the paced client's kept share is measured and printed but does not
                fail an attack; every other column still does
attacks: big-session-txn, session-hijack, slow-reader, large-reads, handshake-slowloris,
         connection-flood, stream-flood, oversized-frames, truncated-frames, garbage-frames,
         replayed-requests, removed-node, expired-cert, read-role-writes
artifacts: $CARGO_TARGET_DIR/attack/ (logs/, attack-results.md)";

/// The least share of its unloaded goodput the paced client must keep over the attacked
/// windows together.
pub(crate) const GOODPUT_MIN: f64 = 0.90;
/// The least share of its unloaded goodput the paced client must keep in each attacked window.
/// A single window of 1 s (CI's slice) loses 10 % to a 100 ms fsync or scheduling stall of a
/// shared 2-core machine, which unloaded windows show too; half a window is an outage.
pub(crate) const WINDOW_MIN: f64 = 0.50;
/// The most a node's resident memory may grow during an attack.
pub(crate) const RSS_GROWTH_MAX_MIB: u64 = 256;
/// Longest measurement or attack, per attack.
const SECONDS_MAX: u64 = 600;
/// Most windows of each kind per attack.
const ROUNDS_MAX: u64 = 100;
/// `--ci`: seconds of each kind per attack with the paced client, the rounds they are split
/// into, and the rounds of the saturating client after them (windows of the same length).
const CI_SECONDS: u64 = 5;
const CI_ROUNDS: u64 = 5;
const CI_SATURATING_ROUNDS: u64 = 2;
/// Unloaded windows of 1 s of the saturating client at the start of the run that set the
/// paced client's default rate.
const CALIBRATION_WINDOWS: u32 = 3;
/// Tasks of the saturating well-behaved client.
const GOOD_TASKS: u64 = 4;
/// Keys of the well-behaved client.
const GOOD_KEYS: u64 = 8;
/// Node ids with certificates: 1..=3 are the cluster, 4 is "a removed node".
const NODES: u64 = 3;
const REMOVED: u64 = 4;
/// Client principals issued by `quorate certs dev` for the suite.
const CLIENTS: &str = "admin:admin,writer:write,alice:write,bob:write,mallory:write,reader:read";
/// The election settings of the suite's cluster.
const RAFT: RaftSettings = RaftSettings { election_timeout_ms: 1000, heartbeat_ms: 100, lease_clock_drift_ms: 0 };
/// The server name every Quorate client uses (the transport's `SERVER_NAME`).
const SERVER_NAME: &str = "quorate.invalid";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attack {
    BigSessionTxn,
    SessionHijack,
    SlowReader,
    LargeReads,
    HandshakeSlowloris,
    ConnectionFlood,
    StreamFlood,
    OversizedFrames,
    TruncatedFrames,
    GarbageFrames,
    ReplayedRequests,
    RemovedNode,
    ExpiredCert,
    ReadRoleWrites,
}

impl Attack {
    const ALL: [Attack; 14] = [
        Attack::BigSessionTxn,
        Attack::SessionHijack,
        Attack::SlowReader,
        Attack::LargeReads,
        Attack::HandshakeSlowloris,
        Attack::ConnectionFlood,
        Attack::StreamFlood,
        Attack::OversizedFrames,
        Attack::TruncatedFrames,
        Attack::GarbageFrames,
        Attack::ReplayedRequests,
        Attack::RemovedNode,
        Attack::ExpiredCert,
        Attack::ReadRoleWrites,
    ];

    fn name(self) -> &'static str {
        match self {
            Attack::BigSessionTxn => "big-session-txn",
            Attack::SessionHijack => "session-hijack",
            Attack::SlowReader => "slow-reader",
            Attack::LargeReads => "large-reads",
            Attack::HandshakeSlowloris => "handshake-slowloris",
            Attack::ConnectionFlood => "connection-flood",
            Attack::StreamFlood => "stream-flood",
            Attack::OversizedFrames => "oversized-frames",
            Attack::TruncatedFrames => "truncated-frames",
            Attack::GarbageFrames => "garbage-frames",
            Attack::ReplayedRequests => "replayed-requests",
            Attack::RemovedNode => "removed-node",
            Attack::ExpiredCert => "expired-cert",
            Attack::ReadRoleWrites => "read-role-writes",
        }
    }

    fn parse(name: &str) -> Result<Attack> {
        Attack::ALL.into_iter().find(|a| a.name() == name).with_context(|| format!("no attack `{name}`\n{USAGE}"))
    }
}

struct Options {
    attacks: Vec<Attack>,
    seed: u64,
    seconds: u64,
    rounds: u64,
    /// Attacked windows with the saturating client (after the paced ones).
    saturating_rounds: u64,
    /// `--paced-rate` (else calibrated at the start).
    paced_rate: Option<f64>,
    /// Whether a paced client that keeps less than [`GOODPUT_MIN`] fails the attack
    /// (`--goodput-reported`: no; the figure is still measured and printed).
    goodput_bound: bool,
    command: String,
}

impl Options {
    /// One unloaded or attacked window.
    fn window(&self) -> Duration {
        Duration::from_millis(self.seconds * 1000 / self.rounds)
    }
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        attacks: Attack::ALL.to_vec(),
        seed: 1,
        seconds: 10,
        rounds: 5,
        saturating_rounds: 5,
        paced_rate: None,
        goodput_bound: true,
        command: String::new(),
    };
    let mut ci = false;
    let (mut seconds, mut rounds, mut saturating_rounds) = (None, None, None);
    let mut i = 0;
    while i < args.len() {
        let flag = args[i].as_str();
        let value = || args.get(i + 1).map(String::as_str).with_context(|| format!("{flag} needs a value\n{USAGE}"));
        match flag {
            "--ci" => {
                ci = true;
                i += 1;
                continue;
            }
            "--goodput-reported" => {
                o.goodput_bound = false;
                i += 1;
                continue;
            }
            "--only" => o.attacks = value()?.split(',').map(Attack::parse).collect::<Result<_>>()?,
            "--seed" => o.seed = value()?.parse().context("--seed takes a whole number")?,
            "--seconds" => {
                let s: u64 = value()?.parse().context("--seconds takes a whole number")?;
                if !(1..=SECONDS_MAX).contains(&s) {
                    bail!("--seconds must be within 1..={SECONDS_MAX}");
                }
                seconds = Some(s);
            }
            "--rounds" => {
                let r: u64 = value()?.parse().context("--rounds takes a whole number")?;
                if !(1..=ROUNDS_MAX).contains(&r) {
                    bail!("--rounds must be within 1..={ROUNDS_MAX}");
                }
                rounds = Some(r);
            }
            "--saturating-rounds" => {
                let r: u64 = value()?.parse().context("--saturating-rounds takes a whole number")?;
                if r > ROUNDS_MAX {
                    bail!("--saturating-rounds must be within 0..={ROUNDS_MAX}");
                }
                saturating_rounds = Some(r);
            }
            "--paced-rate" => {
                let r: f64 = value()?.parse().context("--paced-rate takes a number of operations per second")?;
                if !(paced::PACED_RATE_MIN..=paced::PACED_RATE_MAX).contains(&r) {
                    bail!("--paced-rate must be within {}..={}", paced::PACED_RATE_MIN, paced::PACED_RATE_MAX);
                }
                o.paced_rate = Some(r);
            }
            "help" | "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown flag `{other}`\n{USAGE}"),
        }
        i += 2;
    }
    o.seconds = seconds.unwrap_or(if ci { CI_SECONDS } else { 10 });
    o.rounds = rounds.unwrap_or(if ci { CI_ROUNDS } else { 5 });
    o.saturating_rounds = saturating_rounds.unwrap_or(if ci { CI_SATURATING_ROUNDS } else { o.rounds });
    if o.seconds * 1000 / o.rounds < 500 {
        bail!("--seconds / --rounds: a window must last at least 500 ms");
    }
    o.command = format!("cargo xtask attack {}", args.join(" ")).trim().to_string();
    Ok(o)
}

pub(crate) fn attack(args: &[String]) -> Result<()> {
    if args.first().is_some_and(|a| a == "--agent") {
        return agent(args);
    }
    let o = parse(args)?;
    let bin = build_quorate()?;
    let dir = target_dir().join("attack");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start a tokio runtime")?;
    let (rows, rate) = rt.block_on(run_all(&o, bin, dir.clone()))?;
    let table = table(&rows);
    let failed: Vec<&str> = rows.iter().filter(|r| !r.pass).map(|r| r.attack.name()).collect();
    println!("\n{table}");
    let summary = format!(
        "attack: {} of {} attacks passed (paced client {}: {:.0} ops/s offered, at most {} in flight; {}s unloaded and {}s attacked each, in {} rounds, then {} rounds of the saturating client, reported; seed {}{}){}",
        rows.len() - failed.len(),
        rows.len(),
        rate.how,
        rate.rate,
        paced::outstanding_cap(rate.rate),
        o.seconds,
        o.seconds,
        o.rounds,
        o.saturating_rounds,
        o.seed,
        if o.goodput_bound {
            String::new()
        } else {
            format!(
                "; paced goodput reported, not bound: {} of them kept less than 90 %",
                rows.iter().filter(|r| r.kept < GOODPUT_MIN).count()
            )
        },
        if failed.is_empty() { String::new() } else { format!("; FAILED: {}", failed.join(", ")) }
    );
    println!("{summary}");
    let load = std::process::Command::new("uptime").output().map(|o| text(&o.stdout)).unwrap_or_default();
    let _ = std::fs::write(
        dir.join("attack-results.md"),
        format!("command: `{}`\nload: {}\n\n{table}\n\n{summary}\n", o.command, load.trim()),
    );
    if !failed.is_empty() {
        bail!("{summary}");
    }
    Ok(())
}

/// The paced client's rate for the run, and where it came from.
struct Rate {
    rate: f64,
    how: String,
}

/// One attack's measurements and verdict.
struct Row {
    attack: Attack,
    up: bool,
    terms: (u64, u64),
    /// The paced client: its rate and clients (requests in flight at most), how many of them
    /// answered their warm-up get, and the served share of each window (with the CPU figures).
    paced_rate: f64,
    paced_cap: usize,
    paced_warmed: usize,
    paced: Windows,
    /// Its totals over unloaded and over attacked windows.
    paced_totals: (paced::Tally, paced::Tally),
    /// The verdict's figure: the attacked windows' served share over that of the unloaded
    /// windows around them ([`Windows::overall`]); the worst window is `paced.worst()`.
    kept: f64,
    /// Its latency p99 (ms, from the scheduled time) in unloaded and in attacked windows.
    p99_ms: (f64, f64),
    /// The saturating client's goodput (acknowledged operations per second) of each window;
    /// reported, not bound.
    saturating: Windows,
    rss_growth_mib: u64,
    history: Result<String, String>,
    check: Result<String, String>,
    pass: bool,
    took: Duration,
}

impl Row {
    /// A row for an attack that could not run.
    fn failed(attack: Attack, up: bool, why: String) -> Row {
        Row {
            attack,
            up,
            terms: (0, 0),
            paced_rate: 0.0,
            paced_cap: 0,
            paced_warmed: 0,
            paced: Windows::default(),
            paced_totals: Default::default(),
            kept: 0.0,
            p99_ms: (0.0, 0.0),
            saturating: Windows::default(),
            rss_growth_mib: 0,
            history: Err("not checked".into()),
            check: Err(why),
            pass: false,
            took: Duration::ZERO,
        }
    }
}

fn table(rows: &[Row]) -> String {
    let mut t = vec![
        format!(
            "| attack | nodes up | term before→after | paced offered/s | paced served unloaded→attacked | kept (≥ {:.0} %), worst window (≥ {:.0} %) | paced p99 ms unloaded→attacked | saturating goodput unloaded→attacked/s (kept; reported) | node CPU unloaded→attacked, paced (cores) | attacker CPU (cores) | max RSS growth MiB (≤ {RSS_GROWTH_MAX_MIB}) | history | attack check | verdict |",
            100.0 * GOODPUT_MIN,
            100.0 * WINDOW_MIN
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|".to_string(),
    ];
    for r in rows {
        let show = |x: &Result<String, String>| match x {
            Ok(s) => s.clone(),
            Err(e) => format!("FAIL: {e}"),
        };
        t.push(format!(
            "| {} | {} | {}→{} | {:.0} | {:.1}→{:.1} % | {:.0} %, {:.0} % | {:.1}→{:.1} | {:.0}→{:.0} ({:.0} %) | {:.2}→{:.2} | {:.2} | {} | {} | {} | {} |",
            r.attack.name(),
            if r.up { "yes" } else { "NO" },
            r.terms.0,
            r.terms.1,
            r.paced_rate,
            100.0 * r.paced_totals.0.served(),
            100.0 * r.paced_totals.1.served(),
            100.0 * r.kept,
            100.0 * r.paced.worst(),
            r.p99_ms.0,
            r.p99_ms.1,
            median(&r.saturating.base),
            median(&r.saturating.during),
            100.0 * r.saturating.kept(),
            median(&r.paced.node_cpu_base),
            median(&r.paced.node_cpu_during),
            median(&r.paced.attacker_cpu),
            r.rss_growth_mib,
            show(&r.history).replace('|', "/"),
            show(&r.check).replace('|', "/"),
            if r.pass { "PASS" } else { "FAIL" }
        ));
    }
    t.join("\n")
}

/// The suite's cluster: node processes, addresses, certificates.
struct Env {
    cluster: Cluster,
    target: Target,
    dir: PathBuf,
    generation: u64,
    /// The paced client's clients, kept from one attack to the next.
    paced: paced::Clients,
}

/// What a client or an attacker needs to reach the cluster: its addresses and the certificates
/// (no processes; the attacker's own process builds one from its arguments).
struct Target {
    listen: BTreeMap<u64, SocketAddr>,
    certs: PathBuf,
}

impl Env {
    fn create(bin: PathBuf, dir: PathBuf, generation: u64) -> Result<Env> {
        let mut cluster = Cluster::new(bin, dir.clone(), "attack", true)?;
        cluster.log_filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info,quinn=warn,quinn_proto=warn".into());
        let out = cluster.quorate_to(
            &[
                "certs",
                "dev",
                "--dir",
                &dir.to_string_lossy(),
                "--cluster",
                "attack",
                "--nodes",
                &(NODES + 1).to_string(),
                "--clients",
                CLIENTS,
                "--expired-clients",
                "expired:write",
                "--force",
            ],
            "",
        )?;
        if !out.status.success() {
            bail!("`quorate certs dev` failed: {}", text(&out.stderr).trim());
        }
        let mut listen = BTreeMap::new();
        for id in 1..=NODES + 1 {
            listen.insert(id, SocketAddr::from(([127, 0, 0, 1], free_udp_port()?)));
        }
        for id in 1..=NODES {
            let peers = (1..=NODES).map(|k| (k, listen[&k].to_string())).collect();
            cluster.write_config(&NodeSpec {
                id,
                listen: listen[&id],
                peers,
                join: false,
                metrics_listen: None,
                raft: RAFT,
                failpoints: false,
                // The defaults are what the suite measures (the connection flood meets them).
                handshakes_per_source: None,
            })?;
        }
        for id in 1..=NODES {
            cluster.start(id)?;
        }
        let target = Target { listen, certs: cluster.certs_dir() };
        Ok(Env { cluster, target, dir, generation, paced: Vec::new() })
    }

    /// Resident memory of each running node, in KiB.
    fn rss_kib(&self) -> BTreeMap<u64, u64> {
        self.cluster.pids().into_iter().map(|(id, pid)| (id, rss_of(pid))).collect()
    }
}

impl Target {
    fn certs(&self) -> PathBuf {
        self.certs.clone()
    }

    fn tls(&self, name: &str) -> TlsPaths {
        let c = self.certs();
        TlsPaths { ca: c.join("ca.crt"), cert: c.join(format!("{name}.crt")), key: c.join(format!("{name}.key")) }
    }

    fn members(&self) -> Vec<(NodeId, SocketAddr)> {
        (1..=NODES).filter_map(|id| Some((NodeId::new(id)?, self.listen[&id]))).collect()
    }

    /// A `quorate-client` of `principal` (short limits so that a stalled call shows quickly).
    fn client(&self, principal: &str, seed: u64) -> Result<Client> {
        let mut config =
            ClientConfig::new(ClusterId::new("attack")?, self.members(), self.tls(&format!("client-{principal}")));
        config.request_timeout = Duration::from_millis(2000);
        config.connect_timeout = Duration::from_millis(1000);
        config.total_timeout = Duration::from_secs(5);
        config.retries_max = 10;
        config.seed = Some(seed);
        Ok(Client::new(config)?)
    }

    fn credentials(&self, name: &str) -> Result<Arc<Credentials>> {
        Ok(Arc::new(Credentials::load(self.tls(name)).with_context(|| format!("credentials {name}"))?))
    }

    /// A raw QUIC connection with the certificate `name` (e.g. `client-reader`) to node `id`;
    /// `window`: the stream and connection receive windows in bytes (a client that reads
    /// nothing). The endpoint must be kept with the connection.
    async fn raw(&self, name: &str, id: u64, window: Option<u32>) -> Result<(quinn::Endpoint, quinn::Connection)> {
        let creds = self.credentials(name)?;
        raw_connect(&creds, self.listen[&id], window).await
    }
}

async fn raw_connect(
    creds: &Credentials,
    addr: SocketAddr,
    window: Option<u32>,
) -> Result<(quinn::Endpoint, quinn::Connection)> {
    let endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let conn = raw_connect_on(&endpoint, creds, addr, window).await?;
    Ok((endpoint, conn))
}

/// [`raw_connect`] on an endpoint the caller keeps (an attacker making many connections uses
/// one socket for them all, as a real one would: the node sees the same source address).
async fn raw_connect_on(
    endpoint: &quinn::Endpoint,
    creds: &Credentials,
    addr: SocketAddr,
    window: Option<u32>,
) -> Result<quinn::Connection> {
    let mut quic = quinn::TransportConfig::default();
    quic.max_idle_timeout(Some(quinn::IdleTimeout::try_from(Duration::from_secs(30))?));
    quic.keep_alive_interval(Some(Duration::from_secs(1)));
    if let Some(w) = window {
        quic.stream_receive_window(quinn::VarInt::from_u32(w));
        quic.receive_window(quinn::VarInt::from_u32(w));
    }
    let mut config = quinn::ClientConfig::new(creds.quic_client_crypto());
    config.transport_config(Arc::new(quic));
    let connecting = endpoint.connect_with(config, addr, SERVER_NAME)?;
    let conn = tokio::time::timeout(Duration::from_secs(5), connecting).await.context("handshake timed out")??;
    Ok(conn)
}

/// One request on a raw connection: its response, or why none came (bounded by 5 s).
async fn raw_request(conn: &quinn::Connection, request: ClientRequest) -> Result<ClientResponse> {
    let mut buf = Vec::new();
    encode_message(&NodeMessage::Request(request), quorate_transport::FRAME_PAYLOAD_BYTES_DEFAULT, &mut buf)?;
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&buf).await?;
        let _ = send.finish();
        let bytes = recv.read_to_end(64 << 20).await?;
        let (frame, _) =
            quorate_transport::decode_frame(&bytes, 64 << 20)?.context("the answer ends inside its frame")?;
        match quorate_transport::decode_message::<NodeMessage>(&frame)? {
            NodeMessage::Response(r) => Ok(r),
            other => bail!("unexpected message {other:?}"),
        }
    };
    tokio::time::timeout(Duration::from_secs(5), exchange).await.context("no answer within 5 s")?
}

/// The leader's id and term as the nodes report them (a majority agreeing), if any.
async fn leader(client: &Client) -> Option<(u64, u64)> {
    let ok: Vec<_> = client.statuses().await.into_iter().filter_map(|(_, s)| s.ok()).collect();
    let l = ok.iter().filter(|s| s.role == RaftRole::Leader).max_by_key(|s| s.term)?;
    let agree = ok.iter().filter(|s| s.leader == Some(l.id) && s.term == l.term).count();
    (agree * 2 > l.config.voters.len()).then_some((l.id.get(), l.term.0))
}

async fn wait_for_leader(client: &Client, within: Duration) -> Result<(u64, u64)> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(l) = leader(client).await {
            return Ok(l);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no leader within {}s", within.as_secs())
}

async fn run_all(o: &Options, bin: PathBuf, dir: PathBuf) -> Result<(Vec<Row>, Rate)> {
    let suite = Instant::now();
    let mut env = Env::create(bin.clone(), dir.clone(), 0)?;
    let rate = match o.paced_rate {
        Some(rate) => Rate { rate, how: "rate set by --paced-rate".into() },
        None => calibrate(&env, o.seed).await?,
    };
    crate::demo::step(&format!(
        "paced client: {:.0} ops/s ({}), at most {} in flight",
        rate.rate,
        rate.how,
        paced::outstanding_cap(rate.rate)
    ));
    let mut rows = Vec::new();
    for &attack in &o.attacks {
        if env.cluster.check_running().is_err() || {
            let admin = env.target.client("admin", o.seed)?;
            let up = wait_for_leader(&admin, Duration::from_secs(20)).await.is_ok();
            admin.close();
            !up
        } {
            // A previous attack left the cluster broken (its verdict says so): start afresh.
            let generation = env.generation + 1;
            drop(env);
            let _ = std::fs::rename(&dir, dir.with_extension(format!("broken-{generation}")));
            env = Env::create(bin.clone(), dir.clone(), generation)?;
        }
        crate::demo::step(&format!(
            "attack {} ({}s unloaded, {}s under attack, in {} rounds, paced; then {} rounds saturating; at +{:.0}s)",
            attack.name(),
            o.seconds,
            o.seconds,
            o.rounds,
            o.saturating_rounds,
            suite.elapsed().as_secs_f64()
        ));
        let row = match run_one(&mut env, attack, o, rate.rate).await {
            Ok(row) => row,
            Err(e) => {
                Row::failed(attack, env.cluster.check_running().is_ok(), format!("the attack could not run: {e:#}"))
            }
        };
        let list = |xs: &[f64], digits: usize| xs.iter().map(|x| format!("{x:.digits$}")).collect::<Vec<_>>().join(" ");
        let pct = |xs: &[f64]| xs.iter().map(|x| format!("{:.1}", 100.0 * x)).collect::<Vec<_>>().join(" ");
        let (u, a) = &row.paced_totals;
        println!(
            "{}: {} in {:.0}s (paced {:.0}/s, {} clients ({} warmed): served % [{}] → [{}], kept {:.0} % (all attacked windows; worst {:.0} %), unloaded {} offered {} unsent {} failed, attacked {} offered {} unsent {} failed, p99 {:.1} → {:.1} ms; node CPU [{}] → [{}], attacker [{}] | saturating goodput {:.0}/s → {:.0}/s, kept {:.0} % (reported), windows [{}] → [{}]; node CPU [{}] → [{}], attacker [{}] | term {}→{}, RSS +{} MiB; history: {}; check: {})",
            attack.name(),
            if row.pass { "PASS" } else { "FAIL" },
            row.took.as_secs_f64(),
            row.paced_rate,
            row.paced_cap,
            row.paced_warmed,
            pct(&row.paced.base),
            pct(&row.paced.during),
            100.0 * row.kept,
            100.0 * row.paced.worst(),
            u.offered,
            u.unsent,
            u.failed,
            a.offered,
            a.unsent,
            a.failed,
            row.p99_ms.0,
            row.p99_ms.1,
            list(&row.paced.node_cpu_base, 2),
            list(&row.paced.node_cpu_during, 2),
            list(&row.paced.attacker_cpu, 2),
            median(&row.saturating.base),
            median(&row.saturating.during),
            100.0 * row.saturating.kept(),
            list(&row.saturating.base, 0),
            list(&row.saturating.during, 0),
            list(&row.saturating.node_cpu_base, 2),
            list(&row.saturating.node_cpu_during, 2),
            list(&row.saturating.attacker_cpu, 2),
            row.terms.0,
            row.terms.1,
            row.rss_growth_mib,
            match &row.history {
                Ok(s) | Err(s) => s,
            },
            match &row.check {
                Ok(s) | Err(s) => s,
            }
        );
        rows.push(row);
    }
    Ok((rows, rate))
}

/// The paced client's default rate: [`paced::PACED_SHARE`] of the median goodput of the
/// saturating client over [`CALIBRATION_WINDOWS`] unloaded windows of 1 s, before any attack
/// (no attacker process yet), once the cluster has a leader and the client its first answers.
async fn calibrate(env: &Env, seed: u64) -> Result<Rate> {
    let admin = env.target.client("admin", seed ^ 0xCA0)?;
    let leader = wait_for_leader(&admin, Duration::from_secs(20)).await;
    admin.close();
    leader.context("calibrating the paced client's rate")?;
    let history = Arc::new(History::new());
    let good = Good::start(&env.target, seed ^ 0xCA1, &format!("{}.calibration", env.generation), history)?;
    good.answering().await;
    let mut windows = Vec::new();
    for _ in 0..CALIBRATION_WINDOWS {
        windows.push(good.measure(Duration::from_secs(1)).await);
    }
    good.finish().await;
    let m = median(&windows);
    if m <= 0.0 {
        bail!("the saturating client got nothing answered in {CALIBRATION_WINDOWS} unloaded windows of 1 s");
    }
    let list = windows.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(" ");
    Ok(Rate {
        rate: paced::rate_from_capacity(m),
        how: format!(
            "{:.0} % of the saturating client's unloaded median of {m:.0} ops/s, windows [{list}]",
            100.0 * paced::PACED_SHARE
        ),
    })
}

/// The saturating well-behaved client: `GOOD_TASKS` closed loops of put-then-get on its own
/// keys, every call recorded; counts acknowledged operations. (Each get follows a put of its
/// key, so it never reads a value written before this history began.)
struct Good {
    ok: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn good_key(i: u64) -> String {
    format!("attack/good/{i}")
}

impl Good {
    /// A moment to connect before the first window: until the first answers (at most 10 s;
    /// a client that never gets one is measured as it is), and 500 ms more for the rest of
    /// its tasks.
    async fn answering(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.ok.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    /// `tag`: in every value written, unique to the run and attack (values are unique per key).
    fn start(env: &Target, seed: u64, tag: &str, history: Arc<History>) -> Result<Good> {
        let ok = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for t in 0..GOOD_TASKS {
            let client = env.client("writer", seed ^ (t + 1).wrapping_mul(0x9E37_79B9))?;
            let (history, ok, stop, tag) = (history.clone(), ok.clone(), stop.clone(), tag.to_string());
            tasks.push(tokio::spawn(async move {
                let mut rng = SplitMix64::new(seed.wrapping_add(t));
                // Bounded: at most a million operations per task.
                for n in 0..1_000_000u64 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let key = good_key(rng.below(GOOD_KEYS));
                    let value = format!("g{tag}-t{t}-{n}");
                    if recorded_put(&history, &client, t, &key, &value).await {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    if recorded_get(&history, &client, t, &key, ReadConsistency::Linearizable).await.is_some() {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
                client.close();
            }));
        }
        Ok(Good { ok, stop, tasks })
    }

    /// Acknowledged operations per second over `window`.
    async fn measure(&self, window: Duration) -> f64 {
        let before = self.ok.load(Ordering::Relaxed);
        let t = Instant::now();
        tokio::time::sleep(window).await;
        let n = self.ok.load(Ordering::Relaxed) - before;
        n as f64 / t.elapsed().as_secs_f64()
    }

    async fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
        }
    }
}

async fn run_one(env: &mut Env, attack: Attack, o: &Options, rate: f64) -> Result<Row> {
    let started = Instant::now();
    let seed = o.seed ^ (attack as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407);
    let window = o.window();
    // In every value the well-behaved clients write: values are unique per key across the run.
    let tag = format!("{}.{}", env.generation, attack.name());
    let history = Arc::new(History::new());
    let admin = env.target.client("admin", seed ^ 0xAD)?;
    let (_, term_before) = wait_for_leader(&admin, Duration::from_secs(20)).await?;
    let prepared = prepare(&env.target, attack, seed).await.context("preparing the attack")?;
    // The attacker's process is started (and idle) before the first unloaded window, so that
    // every window is measured with it present.
    let mut agent = Agent::spawn(env, attack, seed, &prepared)?;
    // The paced client's clients: one request in flight each; history ids after the
    // saturating client's tasks and the final reads' id. Those of the previous attack, and new
    // ones for any it did not give back.
    let mut clients = std::mem::take(&mut env.paced);
    for id in (0..paced::outstanding_cap(rate) as u64).map(|i| GOOD_TASKS + 1 + i) {
        if !clients.iter().any(|(i, _)| *i == id) {
            clients
                .push((id, Arc::new(env.target.client("writer", o.seed ^ env.generation.wrapping_mul(1 << 32) ^ id)?)));
        }
    }
    let windows_max = usize::try_from(2 * o.rounds + 1)?;
    let paced = paced::Paced::start(
        clients,
        rate,
        windows_max,
        history.clone(),
        GOOD_KEYS,
        good_key,
        seed ^ 0x9AC,
        tag.clone(),
    )
    .await
    .context("starting the paced client")?;
    let rss_before = env.rss_kib();
    let rss_max = Arc::new(Mutex::new(rss_before.clone()));
    let sampling = Arc::new(AtomicBool::new(true));
    let pids = env.cluster.pids();
    let sampler = {
        let (rss_max, sampling, pids) = (rss_max.clone(), sampling.clone(), pids.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                for (id, pid) in &pids {
                    let kib = rss_of(*pid);
                    let mut m = rss_max.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    let e = m.entry(*id).or_insert(0);
                    *e = (*e).max(kib);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let node_pids: Vec<u32> = pids.iter().map(|&(_, pid)| pid).collect();
    // The paced phase (the verdict's goodput), then the saturating one (reported).
    let mut pw = Windows::default();
    let mut notes = alternate(Meter::Paced(&paced), &mut agent, o.rounds, 0, window, &node_pids, &mut pw).await;
    let (paced_rate, paced_cap, paced_warmed) = (paced.rate(), paced.cap(), paced.warmed());
    // Its requests end within the client's total timeout (5 s); later ones count as failed.
    let (outcome, clients) = paced.finish(Duration::from_secs(8)).await;
    env.paced = clients;
    let outcome = outcome.first_windows(pw.base.len() + pw.during.len());
    (pw.base, pw.during) = outcome.served();
    let mut sw = Windows::default();
    if notes.is_ok() && o.saturating_rounds > 0 {
        let good = Good::start(&env.target, seed, &tag, history.clone())?;
        good.answering().await;
        let more =
            alternate(Meter::Saturating(&good), &mut agent, o.saturating_rounds, o.rounds, window, &node_pids, &mut sw)
                .await;
        good.finish().await;
        notes = match (notes, more) {
            (Ok(mut a), Ok(b)) => {
                a.extend(b);
                Ok(a)
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
    }
    drop(agent);
    let attack_check = notes.map(|n| summarize(&n));
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    let up = env.cluster.check_running().is_ok();
    let term_after = match wait_for_leader(&admin, Duration::from_secs(10)).await {
        Ok((_, t)) => t,
        Err(_) => u64::MAX,
    };
    // Final linearizable reads of every key of the well-behaved client, then the checks.
    let mut finals = BTreeMap::new();
    let reader = env.target.client("writer", seed ^ 0xF1)?;
    for k in 0..GOOD_KEYS {
        let key = good_key(k);
        for _ in 0..10 {
            if let Some(v) = recorded_get(&history, &reader, GOOD_TASKS, &key, ReadConsistency::Linearizable).await {
                finals.insert(key.clone(), v);
                break;
            }
        }
    }
    reader.close();
    let ops = history.snapshot();
    let result = check(&ops, &Limits::default());
    let lost = lost_writes(&ops, &finals);
    let history_verdict = match (&result.outcome, lost.problems.is_empty(), finals.len() as u64 == GOOD_KEYS) {
        (Outcome::Linearizable, true, true) => Ok(format!("{} ops linearizable, none lost", ops.len())),
        (Outcome::Linearizable, true, false) => Err(format!("only {} of {GOOD_KEYS} keys read back", finals.len())),
        (Outcome::Linearizable, false, _) => Err(format!("lost: {}", lost.problems.join("; "))),
        (other, _, _) => Err(format!("NOT LINEARIZABLE: {other}")),
    };
    let _ = history.write(&env.dir.join(format!("history-{}.jsonl", attack.name())));
    let rss_max = rss_max.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let growth_kib =
        rss_max.iter().map(|(id, max)| max.saturating_sub(rss_before.get(id).copied().unwrap_or(*max))).max();
    let rss_growth_mib = growth_kib.unwrap_or(0) / 1024;
    admin.close();
    let paced_totals = outcome.totals();
    let kept = pw.overall();
    let p99_ms = (
        paced::quantile_ms(&outcome.latencies_unloaded_us, 0.99),
        paced::quantile_ms(&outcome.latencies_attacked_us, 0.99),
    );
    let pass = up
        && term_after == term_before
        && paced_totals.0.served() > 0.0
        && (pw.goodput_holds() || !o.goodput_bound)
        && rss_growth_mib <= RSS_GROWTH_MAX_MIB
        && history_verdict.is_ok()
        && attack_check.is_ok();
    Ok(Row {
        attack,
        up,
        terms: (term_before, term_after),
        paced_rate,
        paced_cap,
        paced_warmed,
        paced: pw,
        paced_totals,
        kept,
        p99_ms,
        saturating: sw,
        rss_growth_mib,
        history: history_verdict,
        check: attack_check,
        pass,
        took: started.elapsed(),
    })
}

/// What the windows of a phase measure.
enum Meter<'a> {
    /// The paced client: each window's ticks are charged to it (its served share is known
    /// once the phase's requests have ended).
    Paced(&'a paced::Paced),
    /// The saturating client's goodput.
    Saturating(&'a Good),
}

/// Unloaded and attacked windows alternately, starting and ending unloaded (`U A U A ... A
/// U`, `rounds` attacked ones, the attacker's rounds numbered from `first_round`), measured
/// into `w`. Each attacked window is later compared with the unloaded windows around it, so
/// that a change in the machine's other load (or a drift of the cluster's own speed) lands on
/// both kinds of window alike. The attack's notes of each round, or why it failed.
async fn alternate(
    meter: Meter<'_>,
    agent: &mut Agent,
    rounds: u64,
    first_round: u64,
    window: Duration,
    nodes: &[u32],
    w: &mut Windows,
) -> Result<Vec<String>, String> {
    let mut notes = Vec::new();
    let mut index = 0;
    for round in first_round..first_round + rounds {
        let (goodput, cpu) = measured(&meter, index, nodes, None, window).await;
        index += 1;
        w.base.push(goodput);
        w.node_cpu_base.push(cpu.0);
        agent.start(round, window).map_err(|e| format!("{e:#}"))?;
        let (goodput, cpu) = measured(&meter, index, nodes, Some(agent.pid()), window).await;
        index += 1;
        w.during.push(goodput);
        w.node_cpu_during.push(cpu.0);
        w.attacker_cpu.push(cpu.1);
        // The attack's own end (after its window) comes before the next unloaded window.
        let note = tokio::task::block_in_place(|| agent.result(window + AGENT_GRACE))
            .map_err(|e| format!("round {}: {e}", round + 1))?;
        notes.push(note);
    }
    let (goodput, cpu) = measured(&meter, index, nodes, None, window).await;
    w.base.push(goodput);
    w.node_cpu_base.push(cpu.0);
    Ok(notes)
}

/// The figures of each window of one attack, in order.
#[derive(Default)]
struct Windows {
    /// The well-behaved client's figure of each unloaded and attacked window: the saturating
    /// client's goodput (acknowledged operations per second), or the paced client's served
    /// share (operations answered successfully over operations offered).
    base: Vec<f64>,
    during: Vec<f64>,
    /// CPU the node processes used together, in cores.
    node_cpu_base: Vec<f64>,
    node_cpu_during: Vec<f64>,
    /// CPU the attacker's process used, in cores.
    attacker_cpu: Vec<f64>,
}

impl Windows {
    /// For each attacked window, its figure over the mean of the unloaded windows just before
    /// and just after it (those with an unloaded window before it that is not 0).
    fn ratios(&self) -> Vec<f64> {
        self.ratios_against(false)
    }

    /// [`Windows::ratios`], each against [`Windows::around`]. `floored` (the paced verdict):
    /// a window with nothing to compare with counts as 0, not left out.
    fn ratios_against(&self, floored: bool) -> Vec<f64> {
        self.during
            .iter()
            .enumerate()
            .filter_map(|(i, &a)| match self.around(i, floored) {
                Some(around) if around > 0.0 => Some(a / around),
                _ if floored => Some(0.0),
                _ => None,
            })
            .collect()
    }

    /// What attacked window `i` is compared with: the mean of the unloaded windows just
    /// before and after it (`None`: no unloaded window before it). `floored`: never less than
    /// the median unloaded window — for the paced client, whose unloaded windows all serve
    /// (about) everything it offers whatever the cluster's drift, so that damage lingering
    /// after an attack (a backlog, a stall in the next unloaded window) cannot lower the bar
    /// its attacked window is held to. The saturating client's figure follows the cluster's
    /// drift (a store growing slower), so its windows are compared with their neighbours.
    fn around(&self, i: usize, floored: bool) -> Option<f64> {
        let mean = match (self.base.get(i), self.base.get(i + 1)) {
            (Some(&b0), Some(&b1)) => (b0 + b1) / 2.0,
            (Some(&b0), None) => b0,
            _ => return None,
        };
        Some(if floored { mean.max(median(&self.base)) } else { mean })
    }

    /// The share of its unloaded figure the well-behaved client kept: the median of
    /// [`Windows::ratios`] (0 when there is nothing to compare). What the saturating client's
    /// goodput is reported as.
    fn kept(&self) -> f64 {
        median(&self.ratios())
    }

    /// The attacked windows together over the unloaded windows around each: the sum of the
    /// attacked figures over the sum of what each is compared with ([`Windows::around`],
    /// floored at the unloaded median; 0 when nothing was served unloaded, or a window has
    /// nothing to compare with). For the paced client, whose windows offer the same count, its
    /// goodput under attack over its goodput unloaded: the verdict keeps [`GOODPUT_MIN`].
    fn overall(&self) -> f64 {
        let (mut got, mut around_sum) = (0.0, 0.0);
        for (i, &a) in self.during.iter().enumerate() {
            // A window with nothing to compare with fails the figure, rather than leaving it.
            match self.around(i, true) {
                Some(around) if around > 0.0 && a.is_finite() => {
                    got += a;
                    around_sum += around;
                }
                _ => return 0.0,
            }
        }
        if around_sum > 0.0 { got / around_sum } else { 0.0 }
    }

    /// The paced client's goodput verdict: [`Windows::overall`] keeps [`GOODPUT_MIN`],
    /// [`Windows::worst`] keeps [`WINDOW_MIN`], and the unloaded windows [`Windows::recovered`].
    fn goodput_holds(&self) -> bool {
        self.overall() >= GOODPUT_MIN && self.worst() >= WINDOW_MIN && self.recovered()
    }

    /// Every unloaded window served at least [`WINDOW_MIN`] of the median unloaded window: an
    /// attack whose damage lingers (no answers after it stops) fails, though its own windows
    /// are judged against the median. False when nothing was served unloaded.
    fn recovered(&self) -> bool {
        let m = median(&self.base);
        m > 0.0 && self.base.iter().all(|&b| b.is_finite() && b >= WINDOW_MIN * m)
    }

    /// The worst attacked window: the least of [`Windows::ratios`] (0 when there is nothing to
    /// compare). The paced client's verdict: every attacked window keeps [`WINDOW_MIN`].
    fn worst(&self) -> f64 {
        self.ratios_against(true).into_iter().filter(|x| x.is_finite()).min_by(f64::total_cmp).unwrap_or(0.0)
    }
}

/// The median of `xs` (the mean of the middle two for an even count); 0 for none.
fn median(xs: &[f64]) -> f64 {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2.0 }
}

/// One window (number `index` of its phase): the saturating client's goodput over it (0 for
/// the paced client, whose ticks of the window are charged to `index`), with the CPU (in
/// cores) the node processes and the attacker's process used meanwhile.
async fn measured(
    meter: &Meter<'_>,
    index: usize,
    nodes: &[u32],
    attacker: Option<u32>,
    window: Duration,
) -> (f64, (f64, f64)) {
    let cpu = |pids: &[u32]| pids.iter().map(|&p| cpu_ticks(p)).sum::<u64>();
    let attacker: Vec<u32> = attacker.into_iter().collect();
    let (n0, a0, t0) = (cpu(nodes), cpu(&attacker), Instant::now());
    let goodput = match meter {
        Meter::Saturating(good) => good.measure(window).await,
        Meter::Paced(p) => {
            p.set_window(Some(index));
            tokio::time::sleep(window).await;
            p.set_window(None);
            0.0
        }
    };
    let secs = t0.elapsed().as_secs_f64().max(1e-3);
    let cores = |before: u64, after: u64| after.saturating_sub(before) as f64 / CLOCK_TICKS_PER_SEC / secs;
    (goodput, (cores(n0, cpu(nodes)), cores(a0, cpu(&attacker))))
}

/// `USER_HZ` of Linux's `/proc/<pid>/stat` (100 on every architecture Quorate runs on).
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// User and system CPU time of a process, in clock ticks (0 if it is gone).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { return 0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let at = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    at(11) + at(12)
}

/// The notes of an attack's rounds: one if they all say the same, else each in order.
fn summarize(notes: &[String]) -> String {
    match notes {
        [] => String::new(),
        [one] => one.clone(),
        _ if notes.iter().all(|n| n == &notes[0]) => format!("{} (each of {} rounds)", notes[0], notes.len()),
        _ => notes.join("; "),
    }
}

/// Longest the attacker may take after its window to report (the attacks' own checks after
/// their window: a linearizable read, a last write).
const AGENT_GRACE: Duration = Duration::from_secs(60);

/// The attacker: this program again (`cargo xtask attack --agent ...`) in its own process at
/// `nice 19`, idle until told to run one window of its attack. A real attacker runs on its own
/// machine; here it shares the cluster's cores, and the lowest priority keeps its own
/// encoding, TLS and bookkeeping from being counted as the cluster serving others worse. What
/// it costs the nodes is still paid by the nodes (the table shows their CPU and the
/// attacker's). It reads `go ROUND MILLIS` lines on its standard input and answers each with
/// one line, `ok NOTE` or `err NOTE`, when that run of its attack has ended.
struct Agent {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Agent {
    fn spawn(env: &Env, attack: Attack, seed: u64, p: &Prepared) -> Result<Agent> {
        use std::process::{Command, Stdio};
        // This very binary, even if a build replaced its file meanwhile (`cargo xtask ci`'s test
        // steps rebuild `xtask` while it runs): Linux keeps the running image under /proc.
        let proc_exe = std::path::PathBuf::from(format!("/proc/{}/exe", std::process::id()));
        let exe =
            if proc_exe.exists() { proc_exe } else { std::env::current_exe().context("cannot find this program")? };
        let log = std::fs::File::create(env.dir.join("logs").join(format!("attacker-{}.log", attack.name())))?;
        let listen: Vec<String> = env.target.listen.iter().map(|(id, a)| format!("{id}={a}")).collect();
        let mut cmd = Command::new("nice");
        cmd.args(["-n", "19"])
            .arg(exe)
            .args(["attack", "--agent", attack.name(), "--seed", &seed.to_string()])
            .args(["--leader", &p.leader.to_string(), "--listen", &listen.join(",")])
            .arg("--certs")
            .arg(&env.target.certs);
        if let Some(s) = p.alice_session {
            cmd.args(["--alice-session", &s.0.to_string()]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .context("cannot start the attacker's process (`nice`)")?;
        let stdin = child.stdin.take().context("the attacker's stdin")?;
        let stdout = child.stdout.take().context("the attacker's stdout")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Agent { child, stdin, lines })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts round `round` of the attack, for `window`.
    fn start(&mut self, round: u64, window: Duration) -> Result<()> {
        use std::io::Write;
        writeln!(self.stdin, "go {round} {}", window.as_millis()).context("the attacker's process is gone")?;
        self.stdin.flush().context("the attacker's process is gone")?;
        Ok(())
    }

    /// The outcome of the round started last (blocks up to `within`).
    fn result(&mut self, within: Duration) -> Result<String, String> {
        match self.lines.recv_timeout(within) {
            Ok(line) => match line.split_once(' ').unwrap_or((line.as_str(), "")) {
                ("ok", note) => Ok(note.to_string()),
                ("err", note) => Err(note.to_string()),
                _ => Err(format!("the attacker said `{line}`")),
            },
            Err(_) => Err(format!(
                "the attacker's process did not report within {}s (its log: logs/attacker-*.log)",
                within.as_secs()
            )),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `cargo xtask attack --agent NAME ...`: the attacker's process (see [`Agent`]).
fn agent(args: &[String]) -> Result<()> {
    use std::io::{BufRead, Write};
    let mut attack = None;
    let (mut seed, mut leader, mut alice_session) = (0u64, 0u64, None);
    let mut listen = BTreeMap::new();
    let mut certs = None;
    for pair in args.chunks(2) {
        let [flag, value] = pair else { bail!("--agent: `{}` needs a value", pair[0]) };
        match flag.as_str() {
            "--agent" => attack = Some(Attack::parse(value)?),
            "--seed" => seed = value.parse()?,
            "--leader" => leader = value.parse()?,
            "--alice-session" => alice_session = Some(SessionId(value.parse()?)),
            "--certs" => certs = Some(PathBuf::from(value)),
            "--listen" => {
                for one in value.split(',') {
                    let (id, addr) = one.split_once('=').context("--listen takes ID=ADDR,...")?;
                    listen.insert(id.parse()?, addr.parse()?);
                }
            }
            other => bail!("--agent: unknown flag `{other}`"),
        }
    }
    let attack = attack.context("--agent needs an attack")?;
    let target = Target { listen, certs: certs.context("--agent needs --certs")? };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the attacker's runtime")?;
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let mut words = line.split_whitespace();
        let (Some("go"), Some(round), Some(ms)) = (words.next(), words.next(), words.next()) else {
            bail!("--agent: unknown command `{line}`");
        };
        let round: u64 = round.parse()?;
        let window = Duration::from_millis(ms.parse()?);
        let p = Prepared { leader, alice_session, round };
        let round_seed = seed ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let r = rt.block_on(run_attack(&target, attack, round_seed, Instant::now() + window, p));
        let (tag, note) = match r {
            Ok(n) => ("ok", n),
            Err(e) => ("err", e),
        };
        writeln!(out, "{tag} {}", note.replace('\n', " "))?;
        out.flush()?;
    }
    Ok(())
}

fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// What an attack sets up before the unloaded measurement (values to read, sessions).
#[derive(Default)]
struct Prepared {
    leader: u64,
    alice_session: Option<SessionId>,
    /// Which run of the attack this is (0, 1, ...: one per attacked window).
    round: u64,
}

async fn prepare(env: &Target, attack: Attack, seed: u64) -> Result<Prepared> {
    let admin = env.client("admin", seed ^ 0x11)?;
    let (leader, _) = wait_for_leader(&admin, Duration::from_secs(20)).await?;
    let mut p = Prepared { leader, alice_session: None, round: 0 };
    let writer = env.client("mallory", seed ^ 0x12)?;
    match attack {
        Attack::BigSessionTxn => {
            writer.put("attack/big", vec![b'b'; 1_000_000]).await.context("put big")?;
        }
        Attack::SlowReader => {
            writer.put("attack/v64", vec![b'v'; 64 << 10]).await.context("put v64")?;
        }
        Attack::LargeReads => {
            for i in 0..8 {
                writer.put(format!("attack/large/{i}"), vec![b'l'; 1 << 20]).await.context("put large")?;
            }
        }
        Attack::SessionHijack => {
            let (_ep, conn) = env.raw("client-alice", leader, None).await?;
            let r = raw_request(&conn, ClientRequest { id: 1, session: None, body: Request::OpenSession }).await?;
            let Ok(Response::Session(s)) = r.result else { bail!("alice could not open a session: {:?}", r.result) };
            let put = Request::Put { key: b"attack/alice".to_vec(), value: b"a1".to_vec() };
            let r =
                raw_request(&conn, ClientRequest { id: 2, session: Some(Sequenced { session: s, seq: 1 }), body: put })
                    .await?;
            if r.result.is_err() {
                bail!("alice's first put failed: {:?}", r.result);
            }
            conn.close(0u32.into(), b"done");
            p.alice_session = Some(s);
        }
        Attack::ReadRoleWrites => {
            writer.put("attack/ro", "before").await.context("put ro")?;
        }
        _ => {}
    }
    writer.close();
    admin.close();
    Ok(p)
}

/// Runs `attack` until `until`; `Ok(note)` if what it must not achieve did not happen.
async fn run_attack(env: &Target, attack: Attack, seed: u64, until: Instant, p: Prepared) -> Result<String, String> {
    let r = match attack {
        Attack::BigSessionTxn => big_session_txn(env, seed, until).await,
        Attack::SessionHijack => session_hijack(env, until, &p).await,
        Attack::SlowReader => slow_reader(env, until, &p).await,
        Attack::LargeReads => large_reads(env, seed, until).await,
        Attack::HandshakeSlowloris => handshake_slowloris(env, until, &p).await,
        Attack::ConnectionFlood => connection_flood(env, until, &p).await,
        Attack::StreamFlood => stream_flood(env, until, &p).await,
        Attack::OversizedFrames | Attack::TruncatedFrames | Attack::GarbageFrames => {
            bad_frames(env, attack, seed, until, &p).await
        }
        Attack::ReplayedRequests => replayed_requests(env, until, &p).await,
        Attack::RemovedNode => removed_node(env, until).await,
        Attack::ExpiredCert => expired_cert(env, until, &p).await,
        Attack::ReadRoleWrites => read_role_writes(env, seed, until).await,
    };
    // Whatever the attack did, it ends at `until` (its tasks are bounded by it).
    let left = until.saturating_duration_since(Instant::now());
    tokio::time::sleep(left).await;
    r.map_err(|e| format!("{e:#}"))?
}

fn left(until: Instant) -> bool {
    Instant::now() < until
}

/// 1 MB under `big`, then session transactions `put x y` + 17 × `get big` (the issue's
/// reproduction): refused or answered, never a stopped replica.
async fn big_session_txn(env: &Target, seed: u64, until: Instant) -> Result<Result<String, String>> {
    let c = env.client("mallory", seed ^ 0x21)?;
    let (mut ok, mut refused) = (0u64, 0u64);
    for n in 0..1000u64 {
        if !left(until) {
            break;
        }
        let mut success = vec![TxnOp::Put { key: b"attack/x".to_vec(), value: format!("y{n}").into_bytes() }];
        success.extend((0..17).map(|_| TxnOp::Get { key: b"attack/big".to_vec() }));
        match c.txn(Txn { compare: Vec::new(), success, failure: Vec::new() }).await {
            Ok(_) => ok += 1,
            Err(_) => refused += 1,
        }
    }
    c.close();
    Ok(Ok(format!("{ok} answered, {refused} refused")))
}

/// Bob uses alice's session (as if he had guessed or learned its id): every use must be refused,
/// and alice's next write must apply.
async fn session_hijack(env: &Target, until: Instant, p: &Prepared) -> Result<Result<String, String>> {
    let s = p.alice_session.context("no session of alice")?;
    let (_ep, bob) = env.raw("client-bob", p.leader, None).await?;
    let mut served = Vec::new();
    let mut tries = 0;
    for seq in [1u64, 2, 3, u64::MAX] {
        let put = Request::Put { key: b"attack/alice".to_vec(), value: b"bob".to_vec() };
        tries += 1;
        if let Ok(r) = raw_request(
            &bob,
            ClientRequest { id: seq.wrapping_add(10), session: Some(Sequenced { session: s, seq }), body: put },
        )
        .await
            && r.result.is_ok()
        {
            served.push(seq);
        }
    }
    // Probing: compares that cannot succeed under ids near alice's.
    for probe in s.0.saturating_sub(20)..s.0.saturating_add(20) {
        if !left(until) {
            break;
        }
        let txn = Txn {
            compare: vec![Compare {
                key: b"attack/none".to_vec(),
                target: CompareTarget::Version(u64::MAX),
                op: CompareOp::Equal,
            }],
            success: vec![TxnOp::Put { key: b"attack/alice".to_vec(), value: b"bob".to_vec() }],
            failure: Vec::new(),
        };
        tries += 1;
        let req = ClientRequest {
            id: probe,
            session: Some(Sequenced { session: SessionId(probe), seq: 1 }),
            body: Request::Txn(txn),
        };
        if let Ok(r) = raw_request(&bob, req).await
            && probe == s.0
            && r.result.is_ok()
        {
            served.push(probe);
        }
    }
    bob.close(0u32.into(), b"done");
    // Alice's next write must be applied, not answered from a cache bob filled.
    let (_ep2, alice) = env.raw("client-alice", p.leader, None).await?;
    let put = Request::Put { key: b"attack/alice".to_vec(), value: format!("a{}", 2 + p.round).into_bytes() };
    // Her next sequence number: 2 in the first round, one more in each later one.
    let seq = 2 + p.round;
    let r =
        raw_request(&alice, ClientRequest { id: 3, session: Some(Sequenced { session: s, seq }), body: put }).await?;
    alice.close(0u32.into(), b"done");
    let c = env.client("alice", 7)?;
    let got = c.get("attack/alice", ReadConsistency::Linearizable).await.map(|g| g.kv.map(|kv| kv.value));
    c.close();
    if !served.is_empty() {
        return Ok(Err(format!("bob was served on alice's session (seq/ids {served:?})")));
    }
    if r.result.is_err() {
        return Ok(Err(format!("alice's next write failed: {:?}", r.result)));
    }
    match got {
        Ok(Some(v)) if v == format!("a{}", 2 + p.round).as_bytes() => {
            Ok(Ok(format!("{tries} uses of alice's session refused; her write applied")))
        }
        other => Ok(Err(format!("alice's key holds {other:?}, not her write"))),
    }
}

/// A read-role client with many connections whose receive windows are tiny, sending gets of a
/// 64 KiB value and never reading the answers.
async fn slow_reader(env: &Target, until: Instant, _p: &Prepared) -> Result<Result<String, String>> {
    let creds = env.credentials("client-reader")?;
    let (conns_max, streams_per_conn) = (64u32, 64u32);
    let mut held = Vec::new();
    let mut streams = 0u64;
    let mut buf = Vec::new();
    let get = NodeMessage::Request(ClientRequest {
        id: 1,
        session: None,
        body: Request::Get { key: b"attack/v64".to_vec(), read: ReadConsistency::Linearizable },
    });
    encode_message(&get, quorate_transport::FRAME_PAYLOAD_BYTES_DEFAULT, &mut buf)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for i in 0..conns_max {
        if !left(until) {
            break;
        }
        let node = 1 + u64::from(i) % NODES;
        let Ok((ep, conn)) = raw_connect(&creds, env.listen[&node], Some(1)).await else { continue };
        for _ in 0..streams_per_conn {
            let Ok(Ok((mut send, recv))) = tokio::time::timeout(Duration::from_millis(200), conn.open_bi()).await
            else {
                break;
            };
            if tokio::time::timeout(Duration::from_millis(200), send.write_all(&buf)).await.is_ok() {
                let _ = send.finish();
                streams += 1;
            }
            held.push((send, recv));
        }
        tokio::spawn(async move {
            // Keeps the connection (never reading) until the attack ends.
            tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
            conn.close(0u32.into(), b"done");
            drop(ep);
        });
    }
    tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
    drop(held);
    Ok(Ok(format!("{streams} unread gets held")))
}

/// Eight streams of large scans and read-only transactions over 1 MiB values.
async fn large_reads(env: &Target, seed: u64, until: Instant) -> Result<Result<String, String>> {
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let c = env.client("reader", seed ^ (0x31 + t))?;
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            for i in 0..10_000u64 {
                if !left(until) {
                    break;
                }
                // Each read ends with the window (the client's retries after a refusal too).
                let rest = until.saturating_duration_since(Instant::now());
                if i % 2 == 0 {
                    let scan = c.scan(
                        "attack/large/",
                        Some(b"attack/large0".as_slice()),
                        10_000,
                        ReadConsistency::Linearizable,
                    );
                    let _ = tokio::time::timeout(rest, scan).await;
                } else {
                    let success =
                        (0..128).map(|k| TxnOp::Get { key: format!("attack/large/{}", k % 8).into_bytes() }).collect();
                    let _ =
                        tokio::time::timeout(rest, c.txn(Txn { compare: Vec::new(), success, failure: Vec::new() }))
                            .await;
                }
                n += 1;
            }
            c.close();
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap_or(0);
    }
    Ok(Ok(format!("{total} large reads")))
}

/// Handshakes that never finish: each connection's first datagram reaches the node through a
/// relay that then forwards nothing more.
async fn handshake_slowloris(env: &Target, until: Instant, p: &Prepared) -> Result<Result<String, String>> {
    let creds = env.credentials("client-reader")?;
    let target = env.listen[&p.leader];
    let mut started = 0u64;
    let mut held = Vec::new();
    for _ in 0..256u32 {
        if !left(until) {
            break;
        }
        let relay = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let relay_addr = relay.local_addr()?;
        let mut config = quinn::ClientConfig::new(creds.quic_client_crypto());
        let mut quic = quinn::TransportConfig::default();
        quic.max_idle_timeout(Some(quinn::IdleTimeout::try_from(Duration::from_secs(60))?));
        config.transport_config(Arc::new(quic));
        let endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let connecting = endpoint.connect_with(config, relay_addr, SERVER_NAME)?;
        // Polled so that it sends its first flight; it never completes (nothing comes back).
        let task = tokio::spawn(async move { tokio::time::timeout(Duration::from_secs(60), connecting).await });
        let mut first = vec![0u8; 2048];
        let Ok(Ok((n, _))) = tokio::time::timeout(Duration::from_millis(500), relay.recv_from(&mut first)).await else {
            task.abort();
            continue;
        };
        relay.send_to(&first[..n], target).await?;
        started += 1;
        held.push((relay, endpoint, task));
    }
    tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
    for (_, ep, task) in held {
        task.abort();
        ep.close(0u32.into(), b"done");
    }
    Ok(Ok(format!("{started} handshakes left unfinished")))
}

/// Many full connections of one read-role client, held open and idle.
async fn connection_flood(env: &Target, until: Instant, p: &Prepared) -> Result<Result<String, String>> {
    let creds = env.credentials("client-reader")?;
    let target = env.listen[&p.leader];
    let mut held = Vec::new();
    let mut refused = 0u64;
    let ep = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    for _ in 0..2000u32 {
        if !left(until) {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(500), raw_connect_on(&ep, &creds, target, None)).await {
            Ok(Ok(c)) => held.push(c),
            _ => refused += 1,
        }
    }
    let n = held.len();
    tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
    for conn in held {
        conn.close(0u32.into(), b"done");
    }
    ep.close(0u32.into(), b"done");
    Ok(Ok(format!("{n} connections held, {refused} not made")))
}

/// Streams opened as fast as allowed, each sending a frame header that promises 1 MiB and then
/// nothing (a frame slowloris), on a few connections.
async fn stream_flood(env: &Target, until: Instant, p: &Prepared) -> Result<Result<String, String>> {
    let creds = env.credentials("client-reader")?;
    let target = env.listen[&p.leader];
    let mut header = Vec::new();
    header.extend_from_slice(&(1u32 << 20).to_be_bytes());
    header.extend_from_slice(&quorate_api::PROTOCOL_VERSION.to_be_bytes());
    header.extend_from_slice(&kinds::REQUEST.0.to_be_bytes());
    let mut held = Vec::new();
    let mut conns = Vec::new();
    let mut opened = 0u64;
    for _ in 0..4 {
        let Ok((ep, conn)) = raw_connect(&creds, target, None).await else { continue };
        for _ in 0..10_000u32 {
            if !left(until) {
                break;
            }
            let Ok(Ok((mut send, recv))) = tokio::time::timeout(Duration::from_millis(100), conn.open_bi()).await
            else {
                break;
            };
            let _ = tokio::time::timeout(Duration::from_millis(100), send.write_all(&header)).await;
            opened += 1;
            held.push((send, recv));
        }
        conns.push((ep, conn));
    }
    tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
    drop(held);
    for (ep, conn) in conns {
        conn.close(0u32.into(), b"done");
        ep.close(0u32.into(), b"done");
    }
    Ok(Ok(format!("{opened} streams opened with a promised 1 MiB frame")))
}

/// Oversized (a header claiming more than any limit, then bytes), truncated (a valid request
/// cut in half) or garbage (random bytes) frames, each on its own stream.
async fn bad_frames(
    env: &Target,
    attack: Attack,
    seed: u64,
    until: Instant,
    p: &Prepared,
) -> Result<Result<String, String>> {
    let (ep, mut conn) = env.raw("client-mallory", p.leader, None).await?;
    let creds = env.credentials("client-mallory")?;
    let (mut connections, mut refused) = (1u64, 0u64);
    let mut rng = SplitMix64::new(seed);
    let mut valid = Vec::new();
    let put = NodeMessage::Request(ClientRequest {
        id: 1,
        session: None,
        body: Request::Put { key: b"attack/frames".to_vec(), value: vec![b'f'; 4096] },
    });
    encode_message(&put, quorate_transport::FRAME_PAYLOAD_BYTES_DEFAULT, &mut valid)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut sent = 0u64;
    let mut answered = 0u64;
    for _ in 0..100_000u32 {
        if !left(until) {
            break;
        }
        if conn.close_reason().is_some() {
            // The node closed the connection for a bad frame: connect again, as a real
            // attacker would (each time meeting the node's handshake rate for its address;
            // after a refusal it waits 10 ms: the node lets it in at most
            // `handshakes_per_source_per_sec` times a second however fast it asks, and asking
            // faster only burns the attacker's CPU, which here is the cluster's — a flood of
            // connection attempts is the `connection-flood` attack).
            let reconnect = tokio::time::timeout(
                until.saturating_duration_since(Instant::now()),
                raw_connect_on(&ep, &creds, env.listen[&p.leader], None),
            );
            match reconnect.await {
                Ok(Ok(c)) => {
                    conn = c;
                    connections += 1;
                }
                _ => {
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let bytes: Vec<u8> = match attack {
            Attack::OversizedFrames => {
                let mut b = Vec::new();
                let claims = [u32::MAX, 64 << 20, (8 << 20) + 1];
                b.extend_from_slice(&claims[rng.below(3) as usize].to_be_bytes());
                b.extend_from_slice(&quorate_api::PROTOCOL_VERSION.to_be_bytes());
                b.extend_from_slice(&kinds::REQUEST.0.to_be_bytes());
                b.extend(std::iter::repeat_n(0xAB, 64 << 10));
                b
            }
            Attack::TruncatedFrames => valid[..1 + rng.below(valid.len() as u64 - 1) as usize].to_vec(),
            _ => (0..1 + rng.below(4096)).map(|_| rng.below(256) as u8).collect(),
        };
        let exchange = async {
            let (mut send, mut recv) = conn.open_bi().await?;
            send.write_all(&bytes).await?;
            let _ = send.finish();
            let got = recv.read_to_end(1 << 20).await.map(|b| !b.is_empty()).unwrap_or(false);
            anyhow::Ok(got)
        };
        sent += 1;
        if let Ok(Ok(true)) = tokio::time::timeout(Duration::from_secs(2), exchange).await {
            answered += 1;
        }
    }
    conn.close(0u32.into(), b"done");
    drop(ep);
    Ok(Ok(format!(
        "{sent} bad frames sent on {connections} connections ({refused} more refused; {answered} answered with an error)"
    )))
}

/// A put and its successor, then the first put replayed (same session and sequence number):
/// replays are answered from the session, never applied again.
async fn replayed_requests(env: &Target, until: Instant, p: &Prepared) -> Result<Result<String, String>> {
    let (_ep, conn) = env.raw("client-mallory", p.leader, None).await?;
    let r = raw_request(&conn, ClientRequest { id: 1, session: None, body: Request::OpenSession }).await?;
    let Ok(Response::Session(s)) = r.result else { bail!("no session: {:?}", r.result) };
    let put = |value: &str, seq: u64| ClientRequest {
        id: seq,
        session: Some(Sequenced { session: s, seq }),
        body: Request::Put { key: b"attack/replay".to_vec(), value: value.as_bytes().to_vec() },
    };
    raw_request(&conn, put("v1", 1)).await?.result.map_err(|e| anyhow::anyhow!("put v1: {e}"))?;
    raw_request(&conn, put("v2", 2)).await?.result.map_err(|e| anyhow::anyhow!("put v2: {e}"))?;
    let mut replays = 0u64;
    for _ in 0..10_000u32 {
        if !left(until) {
            break;
        }
        let _ = raw_request(&conn, put("v1", 1)).await;
        replays += 1;
    }
    conn.close(0u32.into(), b"done");
    let c = env.client("mallory", 9)?;
    let got = c.get("attack/replay", ReadConsistency::Linearizable).await.map(|g| g.kv.map(|kv| kv.value));
    c.close();
    match got {
        Ok(Some(v)) if v == b"v2" => Ok(Ok(format!("{replays} replays, none applied"))),
        other => Ok(Err(format!("after {replays} replays the key holds {other:?}, not v2"))),
    }
}

/// A node certificate of the cluster whose node is not a member (as after `member remove`):
/// it asks every follower to campaign now (`TimeoutNow`) in the current term.
async fn removed_node(env: &Target, until: Instant) -> Result<Result<String, String>> {
    let creds = env.credentials(&format!("node-{REMOVED}"))?;
    let me = NodeId::new(REMOVED).context("id")?;
    let config = TransportConfig::new(ClusterId::new("attack")?, me, env.listen[&REMOVED]);
    let (transport, _inbox) = Transport::<NodeMessage>::bind(config, creds).await?;
    for id in 1..=NODES {
        transport.add_peer(NodeId::new(id).context("id")?, env.listen[&id]);
    }
    let admin = env.client("admin", 0x44)?;
    let mut sent = 0u64;
    for _ in 0..1000u32 {
        if !left(until) {
            break;
        }
        let Some((leader, term)) = leader(&admin).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        for id in (1..=NODES).filter(|&i| i != leader) {
            let to = NodeId::new(id).context("id")?;
            let m = Message { from: me, to, term: Term(term), body: MessageBody::TimeoutNow };
            if transport.try_send(to, NodeMessage::Raft(m)).is_ok() {
                sent += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    admin.close();
    transport.shutdown().await;
    Ok(Ok(format!("{sent} TimeoutNow sent")))
}

/// A client certificate that expired an hour ago: no connection may serve it.
async fn expired_cert(env: &Target, until: Instant, p: &Prepared) -> Result<Result<String, String>> {
    let creds = env.credentials("client-expired")?;
    let (mut refused, mut served) = (0u64, 0u64);
    for n in 0..2000u64 {
        if !left(until) {
            break;
        }
        match quorate_transport::Client::<NodeMessage>::connect(
            &creds,
            NodeId::new(p.leader).context("id")?,
            env.listen[&p.leader],
            ClientOptions::default(),
        )
        .await
        {
            Err(_) => refused += 1,
            Ok(c) => {
                let put = Request::Put { key: b"attack/expired".to_vec(), value: b"x".to_vec() };
                match c.request(&NodeMessage::Request(ClientRequest { id: n, session: None, body: put })).await {
                    Ok(NodeMessage::Response(ClientResponse { result: Ok(_), .. })) => served += 1,
                    _ => refused += 1,
                }
                c.close();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if served > 0 {
        return Ok(Err(format!("{served} requests served on an expired certificate")));
    }
    Ok(Ok(format!("{refused} attempts refused")))
}

/// A read-role client tries every write and admin operation: each must be refused as
/// unauthorized, and the key it targets must keep its value.
async fn read_role_writes(env: &Target, seed: u64, until: Instant) -> Result<Result<String, String>> {
    let c = env.client("reader", seed ^ 0x51)?;
    let mut allowed = Vec::new();
    let mut unauthorized = 0u64;
    let mut other = Vec::new();
    let mut note = |name: &str, r: Result<(), quorate_client::ClientError>| match r {
        Ok(()) => allowed.push(name.to_string()),
        Err(e) if format!("{e:?}").contains("Unauthorized") => unauthorized += 1,
        Err(e) => other.push(format!("{name}: {e}")),
    };
    for _ in 0..100u32 {
        if !left(until) {
            break;
        }
        note("put", c.put("attack/ro", "reader").await.map(|_| ()));
        note("delete", c.delete("attack/ro").await.map(|_| ()));
        note("cas", c.cas("attack/ro", Some(b"before".as_slice()), "reader").await.map(|_| ()));
        let txn = Txn {
            compare: Vec::new(),
            success: vec![TxnOp::Put { key: b"attack/ro".to_vec(), value: b"reader".to_vec() }],
            failure: Vec::new(),
        };
        note("txn", c.txn(txn).await.map(|_| ()));
        note("delete-range", c.delete_range("attack/", "attack0").await.map(|_| ()));
        note("member-remove", c.member_remove(NodeId::new(3).context("id")?).await);
        note("member-add", c.member_add(NodeId::new(9).context("id")?, env.listen[&REMOVED]).await);
        note("leader-transfer", c.leader_transfer(None).await);
        note("snapshot-save", c.snapshot_save().await.map(|_| ()));
        note("finalize", c.finalize(quorate_api::CLUSTER_VERSION).await);
    }
    let got = c.get("attack/ro", ReadConsistency::Linearizable).await.map(|g| g.kv.map(|kv| kv.value));
    c.close();
    if !allowed.is_empty() {
        allowed.dedup();
        return Ok(Err(format!("a read-role client was allowed: {}", allowed.join(", "))));
    }
    if !other.is_empty() {
        other.truncate(3);
        return Ok(Err(format!("refused, but not as unauthorized: {}", other.join("; "))));
    }
    match got {
        Ok(Some(v)) if v == b"before" => Ok(Ok(format!("{unauthorized} attempts refused as unauthorized"))),
        other => Ok(Err(format!("the key holds {other:?}, not its value before"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attack_names_parse_back() {
        for a in Attack::ALL {
            assert_eq!(Attack::parse(a.name()).unwrap(), a);
        }
        assert!(Attack::parse("nope").is_err());
    }

    #[test]
    fn kept_compares_each_attacked_window_with_the_unloaded_windows_around_it() {
        // A cluster slowing down steadily: every attacked window lies between its neighbours.
        let w = Windows { base: vec![1000.0, 800.0, 600.0], during: vec![900.0, 700.0], ..Windows::default() };
        assert!((w.kept() - 1.0).abs() < 1e-9, "{}", w.kept());
        // Unloaded medians alone would say 700/800; the pairs say what the attack took.
        let w = Windows {
            base: vec![1000.0, 1000.0, 1000.0, 1000.0],
            during: vec![500.0, 950.0, 900.0],
            ..Windows::default()
        };
        assert!((w.kept() - 0.9).abs() < 1e-9, "{}", w.kept());
        assert_eq!(Windows::default().kept(), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0, 10.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    /// The paced verdict over crafted windows: served shares of `U A U A ... A U`.
    fn paced_windows(unloaded: &[f64], attacked: &[f64]) -> Windows {
        Windows { base: unloaded.to_vec(), during: attacked.to_vec(), ..Windows::default() }
    }

    #[test]
    fn the_paced_verdict_is_the_goodput_under_attack_with_no_window_an_outage() {
        // Offered 1,000 a window; in the third attacked window 150 ticks found every client
        // busy (unsent) — lost goodput, not skipped.
        let t = |unsent, ok| paced::Tally { offered: 1000, unsent, failed: 1000 - unsent - ok, ok };
        let outcome = paced::Outcome {
            windows: vec![t(0, 1000), t(0, 990), t(0, 1000), t(0, 1000), t(0, 1000), t(150, 850), t(0, 1000)],
            ..paced::Outcome::default()
        };
        let (unloaded, attacked) = outcome.served();
        let w = paced_windows(&unloaded, &attacked);
        assert!((w.worst() - 0.85).abs() < 1e-9, "{}", w.worst());
        // One window at 85 %: 2,840 served of 3,000 around, 94.7 % under attack — it holds.
        assert!((w.overall() - 2.84 / 3.0).abs() < 1e-9, "{}", w.overall());
        assert!(w.goodput_holds());
        // Every window at 85 %: it does not, though no window is an outage.
        let w = paced_windows(&[1.0, 1.0, 1.0, 1.0], &[0.85, 0.85, 0.85]);
        assert!((w.overall() - 0.85).abs() < 1e-9 && w.worst() >= WINDOW_MIN);
        assert!(!w.goodput_holds());
        // One window half lost, the others whole: 92 % overall, but an outage — it does not.
        let w = paced_windows(&[1.0; 8], &[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.45]);
        assert!(w.overall() >= GOODPUT_MIN && w.worst() < WINDOW_MIN, "{} {}", w.overall(), w.worst());
        assert!(!w.goodput_holds());
        // At the bounds it holds.
        let w = paced_windows(&[1.0; 8], &[1.0, 1.0, 1.0, 1.0, 1.0, 0.9, 0.5]);
        assert!(w.goodput_holds(), "{} {}", w.overall(), w.worst());
        // Damage that lingers into the unloaded windows after an attack does not lower the bar
        // (review): 90 % against an unloaded window of 30 % after it is 90 % of the median, not
        // 138 %; and nothing served after the first attacked window fails, rather than
        // leaving windows with nothing to compare.
        let w = paced_windows(&[1.0, 0.3, 1.0, 1.0], &[0.9, 1.0, 1.0]);
        assert!((w.worst() - 0.9).abs() < 1e-9, "{}", w.worst());
        assert!(!w.recovered() && !w.goodput_holds(), "an unloaded window at 30 % of the median");
        let w = paced_windows(&[1.0, 0.0, 0.0, 0.0], &[0.95, 0.0, 0.0]);
        assert!(!w.goodput_holds(), "{} {}", w.overall(), w.worst());
        assert!(w.overall() < 0.5 && w.worst() == 0.0, "{} {}", w.overall(), w.worst());
    }

    #[test]
    fn the_paced_verdict_compares_with_the_unloaded_windows_around() {
        // The machine's other load costs the unloaded windows around the third attacked one
        // too: 86 % against 95 % around is 90.5 % kept — but never against less than the
        // median unloaded window (here 0.975).
        let w = paced_windows(&[1.0, 1.0, 0.95, 0.95], &[1.0, 1.0, 0.86]);
        assert!((w.worst() - 0.86 / 0.975).abs() < 1e-9, "{}", w.worst());
        assert!((w.overall() - 2.86 / 2.95).abs() < 1e-9, "{}", w.overall());
        let w = paced_windows(&[0.9, 0.9, 1.0, 1.0, 0.9], &[1.0, 1.0, 0.86, 1.0]);
        assert!((w.worst() - 0.86).abs() < 1e-9, "neighbours above the median: {}", w.worst());
        // An unloaded window that served nothing cannot vouch for anything: nothing compared.
        assert_eq!(paced_windows(&[0.0], &[1.0]).worst(), 0.0);
        assert_eq!(paced_windows(&[0.0], &[1.0]).overall(), 0.0);
        assert!(!Windows::default().goodput_holds());
    }

    #[test]
    fn options() {
        let o = parse(&["--ci".into(), "--only".into(), "slow-reader,removed-node".into()]).unwrap();
        assert_eq!((o.seconds, o.rounds, o.saturating_rounds), (CI_SECONDS, CI_ROUNDS, CI_SATURATING_ROUNDS));
        assert_eq!(o.window(), Duration::from_secs(1));
        assert_eq!(o.attacks, vec![Attack::SlowReader, Attack::RemovedNode]);
        assert!(o.goodput_bound);
        assert_eq!(o.paced_rate, None);
        assert!(!parse(&["--ci".into(), "--goodput-reported".into()]).unwrap().goodput_bound);
        assert!(parse(&["--seconds".into(), "0".into()]).is_err());
        let o = parse(&["--rounds".into(), "4".into()]).unwrap();
        assert_eq!(o.saturating_rounds, 4);
        let o = parse(&["--saturating-rounds".into(), "0".into(), "--paced-rate".into(), "800".into()]).unwrap();
        assert_eq!((o.saturating_rounds, o.paced_rate), (0, Some(800.0)));
        assert!(parse(&["--paced-rate".into(), "0".into()]).is_err());
        assert!(parse(&["--paced-rate".into(), "NaN".into()]).is_err());
        assert!(parse(&["--saturating-rounds".into(), "101".into()]).is_err());
    }
}
