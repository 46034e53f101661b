//! The node as an application of `quorate-runtime` (issue 19): `engine = "runtime"` in the
//! configuration, **experimental**. The runtime's [`Node`] runs the replica — the consensus
//! core wrapped in the flight recorder ([`crate::flight::Recorded`]), the log and snapshots in
//! the node's store ([`RocksLog`] with whole snapshot files as images, [`ImageLayout::File`]),
//! the key-value state machine on its own thread ([`KvMachine`]) — and its peers are the
//! node's transport ([`PeerNetwork`]). What stays here is the node around the runtime's
//! [`Handle`]:
//!
//! * **the receive loop**: peer messages become the runtime's ([`crate::peer_network::from_peer`],
//!   members only); client requests are checked (bounds, role), take a node-wide slot
//!   (`limits.pending_requests_max`) and are served on a task of their own;
//! * **client requests**: after admission ([`crate::admission::Gate`]), writes become the
//!   node's commands (the same bytes as the node's own driver writes, so a cluster may mix
//!   both engines and 0.1.0 nodes) and are proposed on the leader; reads wait until the runtime
//!   allows them (its read closure only says how far the state machine has applied) and run on
//!   a blocking thread over a RocksDB snapshot at that index or later ([`read_view`]); status,
//!   health, members and their changes, versions, finalize, leader transfer and flight dumps
//!   ask the runtime;
//! * **what the node learns by applying** ([`KvApplied`]): member addresses are dialed, the
//!   cluster version gates requests and the snapshot transfer format (0.1.0's stream while the
//!   cluster version is 1, acknowledged pieces after), a new cluster finalizes its version on
//!   its own ([`crate::versions::AutoFinalize`]), the leader compacts the history by rule;
//! * a halt of the runtime (storage, state machine, apply thread) stops the node with an error.
//!
//! * **telemetry**: the metrics endpoint with the core's metrics, probes and runtime invariant
//!   checks, sampled between two turns of the runtime's task every [`TICK`] ([`observe`]; the
//!   driver observes after every `Ready`).
//!
//! * **backups** ([`Serving::save`], [`Serving::open_stream`]): `snapshot save` and the streamed
//!   `snapshot save FILE` ([`crate::save_stream`]) as the driver serves them — on the leader, after
//!   a linearizable confirmation, written on a blocking thread (a read worker's permit held) from
//!   a view of the store at the confirmed index or later, in the same format and place; a stream
//!   whose node stops leading its term is aborted on the next [`TICK`].
//!
//! * **between members** ([`Serving::exchange_with_members`], [`Serving::on_peer`]): the
//!   applied-entries hash samples (folded by [`KvMachine`] from every committed entry the
//!   runtime shows it, the same bytes as the driver's) and the free-space status, exchanged as
//!   the driver does; a leader refuses writes while too few voters have room
//!   ([`crate::peer_disks`]).
//!
//! Not yet served here (left out): admission's fair queues per principal, proposal spans and the
//! storage-stall probe, and the failpoints `slow_apply_ms`, `slow_read_ms`, `slow_snapshot_ms`,
//! `kill_apply_thread`, `torn_txn_reads_ms` and `watch_events` (the store's own failpoints
//! work, as do `slow_disk_ms` — through [`RocksLog::observe_writes`] — and `clock_rate` —
//! [`crate::failpoints::NodeClock`]). The driver (the
//! default engine) serves all of them.

use crate::apply::ReadReq;
use crate::config::NodeConfig;
use crate::flight::Recorded;
use crate::peer_network::{FromPeer, PeerNetwork, from_peer};
use crate::server::{InflightGuard, REQUEST_DEADLINE, Responder, ServerError};
use crate::sm::leases::LEASES_CLUSTER_VERSION;
use crate::sm::runtime::{KvApplied, KvMachine};
use quorate_api::{
    Access, ApiError, ClientRequest, ClientResponse, Command, CommandOp, Member, MemberKind, NodeMessage, NodeStatus,
    ReadConsistency, ReadInfo, Request, Response, Staleness,
};
use quorate_log::{Configuration, EntryId, LogIndex, LogStorage as _, NodeId, SnapshotMeta, Term};
use quorate_runtime::{Clock, Core as _, Handle, ImageLayout, Node, ReadLevel, RocksLog, Role, TransferFormat};
use quorate_storage::{RocksStore, SmView};
use quorate_transport::{Incoming, Transport};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// The core the runtime drives: the consensus core in the flight recorder.
type Core = Recorded<RocksLog>;

/// How often the node looks at what changed (cluster version, halts, automatic finalize).
const TICK: Duration = Duration::from_millis(200);
/// Client reads served at once, each on a blocking thread over a snapshot of the store (never
/// on the apply thread, which only says how far it has applied).
const READ_WORKERS: usize = 4;
/// Longest wait for a read worker to bound a transaction before it is proposed (then it is
/// shed, not proposed).
const BOUND_PERMIT_WAIT: Duration = Duration::from_secs(1);

/// Runs the node on the runtime until `shutdown` completes or a fatal error; `gate` is its
/// admission control.
pub(crate) async fn run(
    config: NodeConfig,
    gate: Arc<crate::admission::Gate>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let id = crate::server::node_id(config.id)?;
    let data_dir = config.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| ServerError::Storage(format!("cannot create directory {}: {e}", data_dir.display())))?;
    crate::restore::check_not_interrupted(&data_dir).map_err(ServerError::Storage)?;
    // Backups go where the driver writes them; no stream's image outlives its process.
    let backups_dir = data_dir.join("backups");
    std::fs::create_dir_all(&backups_dir)
        .map_err(|e| ServerError::Storage(format!("cannot create directory {}: {e}", backups_dir.display())))?;
    crate::save_stream::clear(&backups_dir);
    let (options, client_floor) = crate::server::store_options(&config)?;
    let bootstrap_version = crate::versions::bootstrap_marker(&data_dir, &data_dir.join("store"), config.join)
        .map_err(ServerError::Fatal)?;
    let mut log = RocksLog::open_with_layout(data_dir.join("store"), options, ImageLayout::File)?;
    let store = log.store().clone();
    // As the driver starts: an install a crash interrupted is finished and damaged records
    // repaired before anything reads the state machine (the store's format is the same).
    crate::apply::repair_at_start(&store, id)?;
    crate::server::audit_forced_recovery(&data_dir, &store, id)?;
    let cluster_version = crate::versions::check_at_start(&store).map_err(ServerError::Fatal)?;
    let failpoints = crate::failpoints::Failpoints::start(&data_dir, config.limits.danger_failpoints);
    failpoints.attach_store(&store);
    // Every batch the store's group committer writes, as the driver's committer callback
    // sees it: the fsync and compaction histograms, the slow-disk failpoint (a sleep before
    // the report, on the writer's thread) and admission's fsync latency signal.
    {
        let (fp, fsync) = (failpoints.clone(), gate.fsync_probe());
        log.observe_writes(move |w| {
            crate::telemetry::FsyncTimer::record(w.took, w.synced, w.compacted);
            let slept = Instant::now();
            fp.before_persist_completion();
            if w.synced {
                fsync.record(w.took + slept.elapsed());
            }
        });
    }

    let mut cfg = quorate_runtime::Config::new(id);
    cfg.raft = crate::server::core_config(&config, id);
    cfg.raft.recovering = crate::server::recovering(&store, id);
    cfg.snapshot_chunk_bytes = cfg.snapshot_chunk_bytes.min(crate::peer_network::CHUNK_BYTES_MAX);
    cfg.snapshot_rate_bytes_per_sec = Some(config.limits.snapshot_rate_mb_per_sec.saturating_mul(1 << 20).max(1));
    cfg.snapshot_staging_bytes_max = config.limits.snapshot_staging_mb.saturating_mul(1 << 20);
    let mut format = transfer_format(cluster_version);
    cfg.snapshot_transfer = format;
    // Skewed by the clock fault, as the driver's core clock is.
    let clock = crate::failpoints::NodeClock::new(failpoints.clone());
    let flight_dir = Some(data_dir.join("flight"));
    let flight_budget = usize::try_from(config.limits.flight_recorder_mb << 20).unwrap_or(usize::MAX);
    let applied = Arc::new(KvApplied::of(&store)?);
    let telemetry = crate::telemetry::NodeTelemetry::new(store.applied_index());
    let sm = KvMachine::with_effects(store.clone(), applied.clone(), Some(telemetry.clone()));
    let replica = quorate_runtime::Replica::with_core(cfg, log, sm, clock.now(), |cc, log, now| {
        Recorded::new(cc, log, now, flight_dir, flight_budget)
    })
    .map_err(|e| ServerError::Fatal(format!("cannot start the replica: {e}")))?;
    // The replica's start may have restored its snapshot: read what it left.
    applied.refresh(&store)?;
    telemetry.applied_at_start(store.applied_index());
    let cluster_version = applied.cluster_version.get();

    let (transport, mut inbox) = crate::server::bind_transport(&config, id, &failpoints).await?;
    if cluster_version >= 2 {
        transport.refuse_quorate_1();
    }
    let addrs = crate::server::start_addrs(&config, id, &store, &transport)?;
    tracing::info!(node = %id, addr = %transport.local_addr(), applied = %store.applied_index(),
        "listening (engine: runtime, experimental)");
    let _endpoint = crate::telemetry::serve(config.metrics_listen, &telemetry).await.map_err(ServerError::Fatal)?;
    let node = Node::start_replica(replica, PeerNetwork::new(transport.clone()), clock)
        .map_err(|e| ServerError::Fatal(format!("cannot start the replica: {e}")))?;
    let observer = {
        let s = node.handle().status().borrow().clone();
        let halt = config.telemetry.halt_on_invariant_violation;
        Arc::new(Mutex::new(crate::telemetry::Observer::new(telemetry.clone(), s.term.0, s.commit.0, halt)))
    };
    let observing = Arc::new(AtomicBool::new(false));
    let (violation_tx, mut violation_rx) = tokio::sync::mpsc::channel::<String>(1);

    let serving = Arc::new_cyclic(|me| Serving {
        me: me.clone(),
        watches: Arc::default(),
        expiring: Arc::default(),
        streams: Arc::default(),
        backups_dir,
        id,
        handle: node.handle(),
        status: node.handle().status(),
        store: store.clone(),
        applied: applied.clone(),
        addrs: RwLock::new(addrs),
        transport: transport.clone(),
        gate,
        failpoints,
        inflight: Arc::new(AtomicUsize::new(0)),
        reads: tokio::sync::Semaphore::new(READ_WORKERS),
        bulk: Arc::new(tokio::sync::Semaphore::new(1)),
        stopping: Arc::new(AtomicBool::new(false)),
        runtime: tokio::runtime::Handle::current(),
        last_time_ms: AtomicU64::new(0),
        started: Instant::now(),
        leader_contact_ms: AtomicU64::new(u64::MAX),
        client_floor,
        disk: Mutex::new((Instant::now(), true)),
        peer_disks: Mutex::default(),
        observer: observer.clone(),
        config,
    });
    let mut finalize = crate::versions::AutoFinalize::new(bootstrap_version, Instant::now());
    let mut compact = crate::history::AutoCompact::new(
        serving.config.history.retain_revisions,
        serving.config.history.retain_ms,
        Instant::now(),
    );
    let peer_inbox = node.inbox();
    // Recovering from lost synced state (the runtime's storage forgets it when a leader has
    // caught this node up): logged once over.
    let mut lost_state = store.lost_state().is_some();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    // The node's own work before messages, so that a flood of requests cannot hold off a
    // halt, an address to dial or a format switch; nothing here waits on the runtime.
    let result = loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break Ok(()),
            Some(why) = violation_rx.recv() => break Err(ServerError::Fatal(why)),
            _ = tick.tick() => {
                observe(&serving.handle, &observer, &observing, &telemetry, &violation_tx);
                if let Some(why) = serving.status.borrow().halted.clone() {
                    break Err(ServerError::Fatal(format!("the replica halted: {why}")));
                }
                let version = applied.cluster_version.get();
                if version >= 2 {
                    transport.refuse_quorate_1();
                }
                let wanted = transfer_format(version);
                if wanted != format {
                    tracing::info!(?wanted, version, "snapshot transfers change format with the cluster version");
                    let handle = serving.handle.clone();
                    // Only ever raised with the cluster version: the last call wins.
                    tokio::spawn(async move { handle.set_transfer_format(wanted).await });
                    format = wanted;
                }
                serving.auto_finalize(&mut finalize);
                serving.auto_compact(&mut compact);
                serving.expire_leases();
                serving.end_stale_stream();
                serving.exchange_with_members();
                if lost_state && store.lost_state().is_none() {
                    lost_state = false;
                    tracing::info!(node = id.get(), term = serving.status.borrow().term.0,
                        "recovered from lost synced state: a leader caught this node up; it votes again");
                }
            }
            () = applied.addrs_changed.notified() => serving.learn_addrs(),
            m = inbox.recv() => match m {
                Some(Incoming::Peer { from, message, .. }) => serving.on_peer(&peer_inbox, from, message),
                Some(Incoming::Request(req)) => serving.clone().on_request(req),
                Some(_) => {}
                None => break Err(ServerError::Transport("the transport stopped".into())),
            },
        }
    };
    telemetry.stopped();
    if let Err(e) = &result {
        let reason = format!("error: {e}");
        let _ = serving.handle.with_core::<Core, _>(move |core| core.dump(&reason).map(|_| ())).await;
    }
    node.shutdown().await;
    // A stream's image being written stops (at its next MiB); reads waiting for the store give
    // up, and those running, backups included, finish or stop (bounded) before the store is
    // let go.
    let _ = serving.streams.check(Term(0), false, Instant::now());
    serving.stopping.store(true, Ordering::Release);
    let _ = tokio::time::timeout(Duration::from_secs(5), serving.reads.acquire_many(READ_WORKERS as u32)).await;
    drop(serving);
    crate::server::let_go(transport, &store).await;
    tracing::info!(node = %id, "node stopped");
    result
}

/// Telemetry of the core, between two turns of the runtime's task (at most one at a time, every
/// [`TICK`]): the metrics and probes the driver updates after every `Ready`, the runtime
/// invariant checks (a violation stops the node when `telemetry.halt_on_invariant_violation`
/// is on, through `violation`), and a flight dump when the count of violations rose.
fn observe(
    handle: &Handle<KvMachine>,
    observer: &Arc<Mutex<crate::telemetry::Observer>>,
    observing: &Arc<AtomicBool>,
    telemetry: &Arc<crate::telemetry::NodeTelemetry>,
    violation: &tokio::sync::mpsc::Sender<String>,
) {
    telemetry.applied(handle.status().borrow().applied);
    if observing.swap(true, Ordering::AcqRel) {
        return;
    }
    let (handle, observer, observing, violation) =
        (handle.clone(), observer.clone(), observing.clone(), violation.clone());
    tokio::spawn(async move {
        let checked = handle
            .with_core::<Core, _>(move |core| {
                let r = observer.lock().unwrap_or_else(PoisonError::into_inner).observe(core.raft());
                core.dump_on_violations(crate::invariants::violations_total());
                r
            })
            .await;
        if let Ok(Err(why)) = checked {
            let _ = violation.try_send(why);
        }
        observing.store(false, Ordering::Release);
    });
}

/// Serves `req` from a consistent view of the state machine at `needed` or later: a view taken
/// during an install, or of a store that has not yet written what the runtime applied, is
/// taken again (every millisecond, until `deadline`).
fn read_view(
    store: &RocksStore,
    node: NodeId,
    req: &ReadReq,
    staleness: Option<Staleness>,
    needed: quorate_log::LogIndex,
    deadline: Instant,
    stopping: &AtomicBool,
) -> Result<Response, ApiError> {
    let view = await_view(store, needed, deadline, stopping)?;
    // A damaged record: retryable (another member, or this one once repaired at its next
    // start), as the driver answers.
    let internal = |e: crate::sm::SmError| {
        tracing::warn!(error = %e, "a read met a state-machine record it cannot read");
        ApiError::Unavailable(format!("the state machine could not be read here ({e}); retry"))
    };
    let read = ReadInfo {
        node,
        revision: crate::sm::revision(&view).map_err(internal)?,
        applied: view.applied_index(),
        staleness,
    };
    crate::apply::read_one(&view, req, read).map_err(internal)?
}

/// A consistent view of the state machine at `needed` or later: a view taken during an
/// install, or of a store that has not yet written what the runtime applied, is taken again
/// (every millisecond, until `deadline`, or until the node stops).
fn await_view<'s>(
    store: &'s RocksStore,
    needed: LogIndex,
    deadline: Instant,
    stopping: &AtomicBool,
) -> Result<SmView<'s>, ApiError> {
    loop {
        let why = match store.sm_view() {
            Ok(view) if view.applied_index() >= needed => return Ok(view),
            Ok(view) => format!("the state machine is at {}, the read needs {needed}", view.applied_index()),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline || stopping.load(Ordering::Acquire) {
            return Err(ApiError::Unavailable(format!("cannot read the state machine yet ({why}); retry")));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// As [`await_view`], with the entry the view is at: its term read from the log (a snapshot's
/// metadata needs it). A view the log was compacted past meanwhile (a snapshot taken since) is
/// taken again: a newer one is at the snapshot or after it, where the log knows the term.
fn await_view_at_entry<'s>(
    store: &'s RocksStore,
    needed: LogIndex,
    deadline: Instant,
    stopping: &AtomicBool,
) -> Result<(SmView<'s>, EntryId), ApiError> {
    loop {
        let view = await_view(store, needed, deadline, stopping)?;
        let index = view.applied_index();
        match applied_term(store, index) {
            Ok(term) => return Ok((view, EntryId::new(term, index))),
            Err(e) if Instant::now() >= deadline || stopping.load(Ordering::Acquire) => {
                return Err(ApiError::Unavailable(format!(
                    "cannot read the term of the applied entry {index} ({e}); retry"
                )));
            }
            Err(e) => {
                tracing::debug!(%index, error = %e, "the applied entry's term is not in the log now; a newer view")
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The term of the entry at `index`, the state machine's applied index (0 for an empty one).
fn applied_term(store: &RocksStore, index: LogIndex) -> Result<Term, quorate_log::StorageError> {
    if index == LogIndex::ZERO { Ok(Term(0)) } else { store.term(index) }
}

/// A lease sweep in flight ([`Serving::expire_leases`]): clears its flag when dropped.
struct Sweeping(Arc<AtomicBool>);

impl Drop for Sweeping {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// How leaders send snapshots at cluster version `version`: 0.1.0's unanswered stream while
/// a 0.1.0 member may be in the cluster (version 1), acknowledged pieces after.
fn transfer_format(version: u32) -> TransferFormat {
    if version >= crate::versions::RESUMABLE_SNAPSHOT_CLUSTER_VERSION {
        TransferFormat::Acknowledged
    } else {
        TransferFormat::Stream
    }
}

/// The node around the runtime's handle: what client requests and the receive loop need.
struct Serving {
    /// Itself, for the watches that wait and are read again ([`Serving::watch`]).
    me: std::sync::Weak<Serving>,
    /// The watches in flight ([`crate::watches`]).
    watches: Arc<crate::watches::Watches>,
    /// Whether a sweep's lease expiries are still being proposed ([`Serving::expire_leases`]).
    expiring: Arc<AtomicBool>,
    /// This node's snapshot stream slot (`snapshot save FILE`, [`crate::save_stream`]).
    streams: Arc<crate::save_stream::Streams>,
    /// Where backups (`snapshot save`) and stream images are written: `<data_dir>/backups`.
    backups_dir: PathBuf,
    id: NodeId,
    config: NodeConfig,
    handle: Handle<KvMachine>,
    /// The runtime's status, updated after every turn of its task.
    status: tokio::sync::watch::Receiver<quorate_runtime::Status>,
    store: Arc<RocksStore>,
    applied: Arc<KvApplied>,
    /// Member addresses: the bootstrap peers and what the log recorded.
    addrs: RwLock<BTreeMap<NodeId, String>>,
    transport: Arc<Transport<NodeMessage>>,
    /// Faults injected by tests (name resolution, here).
    failpoints: crate::failpoints::Failpoints,
    /// Admission control: per-principal limits and answer budgets, before any work.
    gate: Arc<crate::admission::Gate>,
    /// Client requests admitted and not yet answered (bounded by `limits.pending_requests_max`).
    inflight: Arc<AtomicUsize>,
    /// Reads running on blocking threads ([`READ_WORKERS`]).
    reads: tokio::sync::Semaphore,
    /// One backup or stream image written at a time (each also holds a read worker while it
    /// writes): more are refused as busy, so saves can neither take every read worker nor
    /// write the same file at once.
    bulk: Arc<tokio::sync::Semaphore>,
    /// Set when the node stops: reads waiting for the store give up.
    stopping: Arc<AtomicBool>,
    runtime: tokio::runtime::Handle,
    /// The log time of the last command this node proposed.
    last_time_ms: AtomicU64,
    started: Instant,
    /// When the leader was last heard from, in ms since `started` (`u64::MAX`: never).
    leader_contact_ms: AtomicU64,
    /// Client writes are refused below this much free space.
    client_floor: u64,
    /// When free space was last checked, and whether it was above the floor.
    disk: Mutex<(Instant, bool)>,
    /// The other members' free-space status, and when this node last sent its own.
    peer_disks: Mutex<crate::peer_disks::PeerDisks>,
    /// The metrics, invariant checks and the applied-hash exchange with the other members.
    observer: Arc<Mutex<crate::telemetry::Observer>>,
}

impl Serving {
    /// A peer's message: to the runtime if it is one of its kinds, from a member (or, for a
    /// node not configured yet, from a bootstrap peer); the node's own kinds (hash samples,
    /// free-space status) as the driver takes them.
    fn on_peer(&self, inbox: &quorate_runtime::Inbox, from: NodeId, message: NodeMessage) {
        use quorate_telemetry::names::peer_refused;
        let status = self.status.borrow();
        let c = &status.config;
        let unconfigured = c.voters.is_empty() && c.voters_outgoing.is_empty() && c.learners.is_empty();
        let allowed = c.is_voter(from)
            || c.is_learner(from)
            || status.leader == Some(from)
            || (unconfigured && self.config.peers.contains_key(&from.get()));
        if !allowed {
            crate::server::refused_peer(from, peer_refused::NOT_MEMBER, "not a member of the configuration");
            return;
        }
        let from_leader = status.leader == Some(from);
        drop(status);
        match from_peer(self.id, from, message) {
            FromPeer::Runtime(m) => {
                if from_leader {
                    let ms = self.started.elapsed().as_millis() as u64;
                    self.leader_contact_ms.store(ms, Ordering::Relaxed);
                }
                if !inbox.deliver(m) {
                    tracing::debug!(peer = %from, "the runtime's inbox is full; a peer message dropped");
                }
            }
            FromPeer::Drop => {
                crate::server::refused_peer(from, peer_refused::NOT_MEMBER, "a message claiming another sender");
            }
            FromPeer::Node(NodeMessage::HashSamples(samples)) => {
                // Not from the leader of an unknown configuration: only members' samples count.
                let member = {
                    let c = &self.status.borrow().config;
                    c.is_voter(from) || c.is_learner(from)
                };
                if member {
                    self.observer
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .hash_samples_from(self.id, from, &samples);
                } else {
                    crate::server::refused_peer(from, peer_refused::NOT_MEMBER, "hash samples from a non-member");
                }
            }
            FromPeer::Node(NodeMessage::DiskStatus(disk)) => {
                let config = self.status.borrow().config.clone();
                let mut d = self.peer_disks.lock().unwrap_or_else(PoisonError::into_inner);
                d.received(self.id, from, &config, disk, Instant::now());
            }
            FromPeer::Node(_) => tracing::debug!(peer = %from, "unexpected message kind from a peer"),
        }
    }

    /// On every tick, as the driver does after its turns: this node's applied-entries hash
    /// samples and its free-space status to the other members, when due (each gated on the
    /// cluster version).
    fn exchange_with_members(&self) {
        let config = self.status.borrow().config.clone();
        let version = self.applied.cluster_version.get();
        let corrupt = self.failpoints.corrupt_hash_samples();
        self.observer.lock().unwrap_or_else(PoisonError::into_inner).exchange_hashes(
            self.id,
            &config,
            version,
            corrupt,
            &self.transport,
        );
        if !self.peer_disks.lock().unwrap_or_else(PoisonError::into_inner).send_due(version, Instant::now()) {
            return;
        }
        let status = quorate_api::DiskStatus {
            refusing: !self.disk_ok(),
            free_bytes: self.store.free_space_bytes().unwrap_or(u64::MAX),
            floor_bytes: self.client_floor,
        };
        for to in config.members().filter(|&m| m != self.id) {
            if let Err(e) = self.transport.try_send(to, NodeMessage::DiskStatus(status)) {
                tracing::trace!(peer = %to, error = %e, "disk status dropped");
            }
        }
    }

    /// Dials the member addresses that applied commands recorded.
    fn learn_addrs(&self) {
        for (id, addr) in self.applied.take_addrs() {
            let changed = {
                let mut a = self.addrs.write().unwrap_or_else(PoisonError::into_inner);
                a.insert(id, addr.clone()).as_deref() != Some(addr.as_str())
            };
            if changed && id != self.id {
                match quorate_transport::PeerAddr::parse(&addr) {
                    Ok(a) => {
                        tracing::info!(node = %id, %addr, "peer address learned");
                        self.transport.add_peer_at(id, a);
                    }
                    Err(e) => tracing::warn!(node = %id, error = %e, "cannot use the member's address"),
                }
            }
        }
    }

    /// A new cluster's leader proposes its cluster version once every member can follow.
    fn auto_finalize(&self, finalize: &mut crate::versions::AutoFinalize) {
        let (others, leader) = {
            let status = self.status.borrow();
            let others: Vec<NodeId> = status.config.members().filter(|&m| m != self.id).collect();
            (others, status.role == Role::Leader)
        };
        let version = self.applied.cluster_version.get();
        let transport = &self.transport;
        let Some(version) =
            finalize.due(Instant::now(), leader, version, &others, |id| transport.peer_protocol_generation(id))
        else {
            return;
        };
        let cmd = Command { session: None, time_ms: self.next_time_ms(), op: CommandOp::SetClusterVersion { version } };
        let Ok(bytes) = quorate_api::encode_command(&cmd) else { return };
        // Not waited for here: its outcome shows in the applied version.
        let handle = self.handle.clone();
        tokio::spawn(async move {
            match handle.propose(bytes).await {
                Ok(_) => tracing::info!(version, "new cluster: its cluster version is applied"),
                Err(e) => tracing::warn!(version, error = %e, "new cluster: cannot raise its cluster version yet"),
            }
        });
    }

    /// The leader proposes a compaction of the history when `[history]`'s rules allow one.
    fn auto_compact(&self, compact: &mut crate::history::AutoCompact) {
        let leader = self.status.borrow().role == Role::Leader;
        let history = match crate::sm::history_state(&*self.store) {
            Ok(Some(h)) => Some((self.applied.revision.load(Ordering::Acquire), h.compacted)),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(error = %e, "history state not readable now");
                None
            }
        };
        let Some(revision) = compact.due(Instant::now(), leader, history) else { return };
        let cmd = Command { session: None, time_ms: self.next_time_ms(), op: CommandOp::Compact { revision } };
        let Ok(bytes) = quorate_api::encode_command(&cmd) else { return };
        let handle = self.handle.clone();
        tokio::spawn(async move {
            if let Err(e) = handle.propose(bytes).await {
                tracing::debug!(revision, error = %e, "cannot propose an automatic compaction now");
            }
        });
    }

    /// A client request: checked, given a node-wide slot, and served on a task of its own.
    fn on_request(self: Arc<Self>, mut req: quorate_transport::Request<NodeMessage>) {
        let placeholder = NodeMessage::Response(ClientResponse { id: 0, result: Err(ApiError::Timeout) });
        let timeout = Duration::from_millis(self.config.limits.response_write_timeout_ms);
        let (attempt, message) = crate::admission::attempt_of(std::mem::replace(&mut req.message, placeholder));
        let ClientRequest { id, session, body } = match message {
            NodeMessage::Request(r) => match r.validate() {
                Ok(()) => r,
                Err(detail) => {
                    let audit = crate::audit::describe(&r.body, r.session);
                    let r = Responder::new(req, r.id, self.runtime.clone(), audit, false, timeout);
                    r.send(Err(ApiError::InvalidRequest(detail)), None);
                    return;
                }
            },
            _ => {
                let r = Responder::new(req, 0, self.runtime.clone(), None, false, timeout);
                r.send(Err(ApiError::InvalidRequest("expected a client request".into())), None);
                return;
            }
        };
        let access = body.access();
        let audit = crate::audit::describe(&body, session);
        let needed = match access {
            Access::Read => quorate_transport::Role::Read,
            Access::Write => quorate_transport::Role::Write,
            _ => quorate_transport::Role::Admin,
        };
        let allowed = req.from.role.allows(needed);
        let principal = crate::admission::principal_of(req.from.principal.as_str());
        crate::admission::note_attempt(req.from.principal.as_str(), attempt);
        let mut responder = Responder::new(req, id, self.runtime.clone(), audit, access != Access::Read, timeout);
        if !allowed {
            crate::telemetry::refused("role");
            responder.send(Err(ApiError::Unauthorized { needed: access }), None);
            return;
        }
        // Admission, before any work: it holds a slot of the principal's, and the most bytes
        // the answer can take, until the answer is written.
        let signals = {
            let s = self.status.borrow();
            crate::admission::CoreSignals {
                uncommitted_bytes: s.uncommitted_bytes,
                apply_lag_entries: s.commit.0.saturating_sub(s.applied.0),
                proposal_queue_count: s.last_index.0.saturating_sub(s.commit.0),
                peer_in_flight_bytes_max: s.peer_inflight_bytes_max,
            }
        };
        match self.gate.admit(&body, principal, attempt > 0, signals, self.store.dir()) {
            Ok(ticket) => responder.admitted(ticket),
            Err(e) => return responder.send(Err(e), None),
        }
        if self.inflight.load(Ordering::Acquire) >= self.config.limits.pending_requests_max {
            // Not a latency sample for the adaptive limit: the permit goes before the refusal.
            responder.admitted(None);
            let e = crate::admission::shed(quorate_api::OverloadReason::QueueFull, Duration::from_millis(50));
            responder.send(Err(e), None);
            return;
        }
        responder.hold(InflightGuard::new(&self.inflight));
        tokio::spawn(async move { self.dispatch(session, body, responder).await });
    }

    async fn dispatch(&self, session: Option<quorate_api::Sequenced>, body: Request, responder: Responder) {
        use crate::sm::{DELETE_RANGE_CLUSTER_VERSION, HISTORY_CLUSTER_VERSION};
        match body {
            Request::Put { key, value } => self.write(session, CommandOp::Put { key, value }, responder).await,
            Request::Delete { key } => self.write(session, CommandOp::Delete { key }, responder).await,
            Request::Cas { key, expected, value } => {
                self.write(session, CommandOp::Cas { key, expected, value }, responder).await;
            }
            Request::OpenSession => self.write(None, CommandOp::OpenSession, responder).await,
            Request::Txn(txn) if txn.is_read_only() => {
                let req = ReadReq::Txn { txn, from: 0, revision: None, paged: false };
                self.read(req, ReadConsistency::Linearizable, responder).await;
            }
            Request::Txn(txn) => self.bound_then_write(session, txn, responder).await,
            Request::TxnPaged { txn, from, revision } => {
                let req = ReadReq::Txn { txn, from, revision, paged: true };
                self.read(req, ReadConsistency::Linearizable, responder).await;
            }
            Request::Get { key, read } => self.read(ReadReq::Get { key }, read, responder).await,
            Request::Scan { start, end, limit, read } => {
                self.read(ReadReq::Scan { start, end, limit, paged: false }, read, responder).await;
            }
            Request::ScanPaged { start, end, limit, read } => {
                self.read(ReadReq::Scan { start, end, limit, paged: true }, read, responder).await;
            }
            Request::GetAt { key, revision, read } => {
                match self.require(HISTORY_CLUSTER_VERSION, "a read at a revision") {
                    Ok(()) => self.read(ReadReq::GetAt { key, revision }, read, responder).await,
                    Err(e) => responder.send(Err(e), None),
                }
            }
            Request::ScanAt { start, end, limit, revision, read } => {
                match self.require(HISTORY_CLUSTER_VERSION, "a read at a revision") {
                    Ok(()) => self.read(ReadReq::ScanAt { start, end, limit, revision }, read, responder).await,
                    Err(e) => responder.send(Err(e), None),
                }
            }
            Request::Compact { revision } => match self.require(HISTORY_CLUSTER_VERSION, "compact") {
                Ok(()) => self.write(None, CommandOp::Compact { revision }, responder).await,
                Err(e) => responder.send(Err(e), None),
            },
            Request::DeleteRange { start, end } => match self.require(DELETE_RANGE_CLUSTER_VERSION, "delete-range") {
                Ok(()) => self.write(session, CommandOp::DeleteRange { start, end }, responder).await,
                Err(e) => responder.send(Err(e), None),
            },
            Request::Status => responder.send(Ok(Response::Status(self.status())), None),
            Request::MemberList => responder.send(Ok(Response::Members(self.members())), None),
            Request::MemberAdd { id: new, addr } => {
                let answer = self.member_add(new, addr).await;
                responder.send(answer, None);
            }
            Request::MemberUpdate { id, addr } => self.member_update(id, addr, responder).await,
            Request::MemberPromote { id } => {
                let answer = self.conf_change(quorate_runtime::ConfChange::Promote(id)).await;
                responder.send(answer, None);
            }
            Request::MemberRemove { id } => {
                let answer = self.conf_change(quorate_runtime::ConfChange::Remove(id)).await;
                responder.send(answer, None);
            }
            Request::Finalize { version } => {
                match crate::versions::check_finalize_from(self.applied.cluster_version.get(), version) {
                    Ok(()) => self.write(None, CommandOp::SetClusterVersion { version }, responder).await,
                    Err(e) => responder.send(Err(e), None),
                }
            }
            Request::Health => {
                let recovering = self.handle.with_core::<Core, _>(|core| core.raft().recovering().is_some()).await;
                let answer = recovering.map_err(|e| self.refusal(e, &self.status.borrow().clone())).map(|recovering| {
                    let disk_ok = self.disk_ok();
                    Response::Health(quorate_api::NodeHealth {
                        id: self.id,
                        refusing_writes: !disk_ok || self.store.out_of_space().is_some(),
                        recovering,
                        disk_free_bytes: self.store.free_space_bytes().ok(),
                        disk_floor_bytes: self.client_floor,
                        db_bytes: self.store.live_files_bytes().ok(),
                    })
                });
                responder.send(answer, None);
            }
            Request::History => responder.send(crate::history::info(&self.store, self.id), None),
            body @ (Request::LeaseGrant { .. } | Request::LeaseRevoke { .. } | Request::PutWithLease { .. }) => {
                let version = self.applied.cluster_version.get();
                match crate::server::lease_write(version, self.config.raft.election_timeout_ms, body, &responder) {
                    Ok(op) => self.write(session, op, responder).await,
                    Err(e) => responder.send(Err(e), None),
                }
            }
            body @ (Request::LeaseKeepAlive { .. } | Request::LeaseList | Request::LeaseTimeToLive { .. }) => {
                self.lease_read(body, responder).await;
            }
            Request::Watch(watch) => self.watch(watch, responder).await,
            Request::Versions => {
                let version = self.applied.cluster_version.get();
                responder.send(crate::versions::info_of(self.id, &self.store, version), None);
            }
            Request::LeaderTransfer { to } => {
                let answer = self.transfer(to).await;
                responder.send(answer, None);
            }
            Request::FlightDump => {
                // The closure answers; if the node stops first, the client hears so here.
                let held = Arc::new(Mutex::new(Some(responder)));
                let inside = held.clone();
                let ran = self
                    .handle
                    .with_core::<Core, _>(move |core| {
                        let taken = inside.lock().unwrap_or_else(PoisonError::into_inner).take();
                        if let Some(responder) = taken {
                            crate::flight::answer_dump_request(core, responder);
                        }
                    })
                    .await;
                let left = held.lock().unwrap_or_else(PoisonError::into_inner).take();
                if let (Err(e), Some(responder)) = (ran, left) {
                    let status = self.status.borrow().clone();
                    responder.send(Err(self.refusal(e, &status)), None);
                }
            }
            Request::SnapshotSave => self.save(responder).await,
            Request::SnapshotStreamOpen => self.open_stream(responder).await,
            Request::SnapshotStreamFetch { stream, offset, len } => {
                self.fetch_stream(stream, offset, len, responder).await;
            }
            // Every request of this API is served above; a newer API's (the enum is
            // non-exhaustive) would be refused here.
            _ => responder.send(
                Err(ApiError::InvalidRequest(
                    "this request is not served by a node on the runtime engine yet (engine = \"runtime\" is \
                     experimental); run it on a node with the default engine"
                        .into(),
                )),
                None,
            ),
        }
    }

    /// Refuses a request that needs cluster version `needed` before it is applied.
    fn require(&self, needed: u32, what: &str) -> Result<(), ApiError> {
        let current = self.applied.cluster_version.get();
        if current < needed {
            return Err(quorate_api::cluster_version_refusal(what, needed, current));
        }
        Ok(())
    }

    /// `NotLeader`, with the leader this node knows of and its address.
    fn leader_hint(&self, status: &quorate_runtime::Status) -> ApiError {
        let leader = status.leader.filter(|&l| l != self.id || status.role == Role::Leader);
        let addr = leader.and_then(|l| self.addrs.read().unwrap_or_else(PoisonError::into_inner).get(&l).cloned());
        ApiError::NotLeader { leader, addr }
    }

    /// Whether free space is above the client floor (checked at most every 250 ms).
    fn disk_ok(&self) -> bool {
        let floor = self.client_floor;
        if floor == 0 && !self.failpoints.disk_full() {
            return true;
        }
        let mut disk = self.disk.lock().unwrap_or_else(PoisonError::into_inner);
        if disk.0.elapsed() >= Duration::from_millis(250) {
            let ok = !self.failpoints.disk_full() && quorate_storage::check_free_space(self.store.dir(), floor).is_ok();
            if !ok && disk.1 {
                tracing::warn!(floor_mb = floor >> 20, "free disk space below the floor; refusing writes");
            } else if ok && !disk.1 {
                tracing::info!(floor_mb = floor >> 20, "free disk space above the floor again");
            }
            *disk = (Instant::now(), ok);
        }
        disk.1
    }

    /// Log time for a new command: never decreasing along this node's commands, nor below
    /// what the log applied.
    fn next_time_ms(&self) -> u64 {
        let wall =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let t = wall.max(self.applied.log_time_ms.load(Ordering::Acquire));
        self.last_time_ms.fetch_max(t, Ordering::AcqRel).max(t)
    }

    /// A write: the node's command for `op`, proposed on the leader and answered with what
    /// applying it gave.
    async fn write(&self, session: Option<quorate_api::Sequenced>, op: CommandOp, responder: Responder) {
        let status = self.status.borrow().clone();
        if status.role != Role::Leader {
            responder.send(Err(self.leader_hint(&status)), None);
            return;
        }
        let short = || {
            let mut d = self.peer_disks.lock().unwrap_or_else(PoisonError::into_inner);
            d.voters_short_of_space(self.id, &status.config, Instant::now()).is_some()
        };
        if !self.disk_ok() || short() {
            let e = crate::admission::shed(quorate_api::OverloadReason::DiskSpace, Duration::from_secs(1));
            responder.send(Err(e), None);
            return;
        }
        let version = self.applied.cluster_version.get();
        let op = crate::server::owned_op(version, session.is_some(), op, responder.principal());
        let cmd = Command { session, time_ms: self.next_time_ms(), op };
        let bytes = match quorate_api::encode_command(&cmd) {
            Ok(b) => b,
            Err(e) => return responder.send(Err(ApiError::InvalidRequest(e.to_string())), None),
        };
        let answer = match tokio::time::timeout(REQUEST_DEADLINE, self.handle.propose(bytes)).await {
            Ok(Ok(out)) => out.result,
            Ok(Err(e)) => Err(self.refusal(e, &status)),
            // Appended or not, applied or not: the client cannot tell (a retry in its session can).
            Err(_) => Err(ApiError::Timeout),
        };
        responder.send(answer, None);
    }

    /// A read at `level`, run over the applied state once the runtime allows it.
    async fn read(&self, req: ReadReq, level: ReadConsistency, responder: Responder) {
        let status = self.status.borrow().clone();
        let (level, staleness) = match level {
            ReadConsistency::Stale | ReadConsistency::BoundedStale(_) => {
                let since_leader_ms = if status.role == Role::Leader {
                    Some(0)
                } else {
                    match self.leader_contact_ms.load(Ordering::Relaxed) {
                        u64::MAX => None,
                        at => Some((self.started.elapsed().as_millis() as u64).saturating_sub(at)),
                    }
                };
                if let ReadConsistency::BoundedStale(bound) = &level {
                    // Checked against the applied index now: the read is served at this index
                    // or a later one.
                    let refused = self
                        .require(crate::versions::BOUNDED_STALENESS_CLUSTER_VERSION, "a bounded-staleness read")
                        .err()
                        .or_else(|| {
                            bound
                                .violation(status.commit.0, status.applied.0, since_leader_ms)
                                .map(ApiError::Unavailable)
                        });
                    if let Some(e) = refused {
                        return responder.send(Err(e), None);
                    }
                }
                (ReadLevel::Stale, Some(Staleness { known_commit: status.commit, since_leader_ms }))
            }
            ReadConsistency::Lease => {
                if status.role != Role::Leader {
                    return responder.send(Err(self.leader_hint(&status)), None);
                }
                let level =
                    if self.config.raft.lease_clock_drift_ms == 0 { ReadLevel::Linearizable } else { ReadLevel::Lease };
                (level, None)
            }
            _ => (ReadLevel::Linearizable, None),
        };
        let deadline = Instant::now() + REQUEST_DEADLINE;
        // A stale read needs nothing of the runtime: the store as it is. Any other waits until
        // the runtime allows it, and learns how far the state machine had applied by then.
        let needed = if staleness.is_some() {
            quorate_log::LogIndex::ZERO
        } else {
            match self.applied_for(level, |e| self.refusal(e, &status)).await {
                Ok(at) => at,
                Err(e) => return responder.send(Err(e), None),
            }
        };
        let answer = self.serve_read(req, staleness, needed, deadline).await;
        responder.send(answer, None);
    }

    /// Serves `req` on a blocking thread from a snapshot of the store that has applied at least
    /// `needed` (waiting for it, and for an install to finish, until `deadline`).
    async fn serve_read(
        &self,
        req: ReadReq,
        staleness: Option<Staleness>,
        needed: quorate_log::LogIndex,
        deadline: Instant,
    ) -> Result<Response, ApiError> {
        let (store, node, stopping) = (self.store.clone(), self.id, self.stopping.clone());
        self.on_read_worker(deadline, move || read_view(&store, node, &req, staleness, needed, deadline, &stopping))
            .await
            .and_then(|read| read)
    }

    /// How far the state machine had applied once the runtime allowed a read at `level` (at
    /// `Linearizable`, once a quorum confirmed this node's leadership), within the request's
    /// deadline; `refuse` says what the client is told when the runtime refuses.
    async fn applied_for(
        &self,
        level: ReadLevel,
        refuse: impl FnOnce(quorate_runtime::Error) -> ApiError,
    ) -> Result<LogIndex, ApiError> {
        let run = self.handle.read(level, |sm: &KvMachine| sm.last_applied());
        match tokio::time::timeout(REQUEST_DEADLINE, run).await {
            Ok(Ok(at)) => Ok(at),
            Ok(Err(e)) => Err(refuse(e)),
            Err(_) => Err(ApiError::Unavailable("read not served in time; retry".into())),
        }
    }

    /// Runs `work` on a blocking thread once one of the [`READ_WORKERS`] is free (waiting for
    /// one until `deadline`), holding it until `work` returns.
    async fn on_read_worker<T: Send + 'static>(
        &self,
        deadline: Instant,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let Ok(Ok(_permit)) = tokio::time::timeout_at(deadline.into(), self.reads.acquire()).await else {
            return Err(ApiError::Unavailable("read not served in time; retry".into()));
        };
        tokio::task::spawn_blocking(work).await.map_err(|e| ApiError::Internal(format!("a read worker failed: {e}")))
    }

    /// What a save (`snapshot save`, a stream's opening) is told when its confirmation fails:
    /// asked of a node that is not (or no longer) the leader, `NotLeader` with the leader it
    /// knows of, so the client asks that one, as the driver answers.
    fn save_refusal(&self, e: quorate_runtime::Error, status: &quorate_runtime::Status) -> ApiError {
        use quorate_core::ReadError as R;
        use quorate_runtime::Error as E;
        match e {
            E::NotLeader { .. } | E::Read(R::NotLeader { .. } | R::NoLeader | R::LeadershipLost) => {
                self.leader_hint(&self.status.borrow().clone())
            }
            e => self.refusal(e, status),
        }
    }

    /// `snapshot save`, as the driver serves it: on the leader, a linearizable confirmation,
    /// then a backup of the state machine at the confirmed index or later, written into the
    /// backups directory on a blocking thread from a view of the store (so that it holds every
    /// write acknowledged before the request, and a deposed leader writes none). The
    /// configuration in its metadata is the leader's when the confirmation began.
    async fn save(&self, responder: Responder) {
        let (status, bulk) = match self.leader_with_bulk() {
            Ok(held) => held,
            Err(e) => return responder.send(Err(e), None),
        };
        let deadline = Instant::now() + REQUEST_DEADLINE;
        let config = status.config.clone();
        let needed = match self.applied_for(ReadLevel::Linearizable, |e| self.save_refusal(e, &status)).await {
            Ok(at) => at,
            Err(e) => return responder.send(Err(e), None),
        };
        // A linearizable read on a node that just lost its leadership is answered through the
        // new leader: this node, no longer the leader, writes no backup.
        if self.term_and_lead() != (status.term, true) {
            return responder.send(Err(self.leader_hint(&self.status.borrow().clone())), None);
        }
        let (store, stopping, dir) = (self.store.clone(), self.stopping.clone(), self.backups_dir.clone());
        let saved = self
            .on_read_worker(deadline, move || {
                let _bulk = bulk;
                let (view, last) = await_view_at_entry(&store, needed, deadline, &stopping)?;
                let stop = || stopping.load(Ordering::Acquire);
                let meta = SnapshotMeta { last, config };
                match crate::apply::write_backup(&view.without_filling_the_cache(), &dir, meta, &stop) {
                    Ok(path) => Ok((path, last)),
                    Err(e) => {
                        tracing::warn!(error = %e, "backup snapshot failed");
                        Err(ApiError::Internal(format!("backup failed: {e}")))
                    }
                }
            })
            .await
            .and_then(|saved| saved);
        match saved {
            Ok((path, last)) => {
                let saved = Response::SnapshotSaved { path: path.display().to_string(), index: last.index };
                responder.send(Ok(saved), Some(last));
            }
            Err(e) => responder.send(Err(e), None),
        }
    }

    /// `snapshot save FILE` ([`crate::save_stream`]), as the driver serves it: reserves this
    /// node's stream slot, confirms the leadership (linearizable), then takes a view of the
    /// store at the confirmed index or later on a blocking thread (a read worker's permit held
    /// until the image is written), answers the opening with the view's entry and writes the
    /// image from it.
    async fn open_stream(&self, responder: Responder) {
        let what = "a streamed snapshot save";
        if let Err(e) = self.require(crate::versions::SNAPSHOT_STREAM_CLUSTER_VERSION, what) {
            return responder.send(Err(e), None);
        }
        let (status, bulk) = match self.leader_with_bulk() {
            Ok(held) => held,
            Err(e) => return responder.send(Err(e), None),
        };
        let (stream, image) = match self.streams.begin(status.term, &self.backups_dir, Instant::now()) {
            Ok(begun) => begun,
            Err(e) => return responder.send(Err(e), None),
        };
        let deadline = Instant::now() + REQUEST_DEADLINE;
        let config = status.config.clone();
        let needed = match self.applied_for(ReadLevel::Linearizable, |e| self.save_refusal(e, &status)).await {
            Ok(at) => at,
            Err(e) => {
                self.streams.release(stream);
                return responder.send(Err(e), None);
            }
        };
        let (taken, viewed) = tokio::sync::oneshot::channel();
        let (store, stopping, node) = (self.store.clone(), self.stopping.clone(), self.id);
        let write = self.on_read_worker(deadline, move || {
            let _bulk = bulk;
            let (view, last) = match await_view_at_entry(&store, needed, deadline, &stopping) {
                Ok(v) => v,
                Err(e) => {
                    image.finish(Err(e.to_string()));
                    let _ = taken.send(Err(e));
                    return;
                }
            };
            let _ = taken.send(Ok(last));
            let meta = SnapshotMeta { last, config };
            image.finish(crate::save_stream::write_image(&view.without_filling_the_cache(), node, meta, &image));
        });
        let answer = async {
            let e = match viewed.await {
                Ok(Ok(last)) => {
                    let opened = Response::SnapshotStreamOpened { stream, index: last.index, term: last.term };
                    return responder.send(Ok(opened), Some(last));
                }
                Ok(Err(e)) => e,
                // No read worker in time (or it failed): the view was never taken.
                Err(_) => ApiError::Unavailable("the snapshot image could not be started in time; retry".into()),
            };
            self.streams.release(stream);
            responder.send(Err(e), None);
        };
        // The opening is answered once the view is taken; the image is written after.
        let (written, ()) = tokio::join!(write, answer);
        if let Err(e) = written {
            tracing::debug!(stream, error = %e, "a snapshot stream's image was not written");
        }
    }

    /// A fetch of a stream's image ([`crate::save_stream::Streams::fetch`]): a chunk read on a
    /// blocking thread, or the end, confirmed again (linearizable) and complete only if this
    /// node still leads the term the stream was opened in.
    async fn fetch_stream(&self, stream: u64, offset: u64, len: u32, responder: Responder) {
        use crate::save_stream::Fetch;
        let (term, leader) = self.term_and_lead();
        match self.streams.fetch(stream, offset, len, term, leader, Instant::now()) {
            Fetch::Answer(answer) => responder.send(answer, None),
            Fetch::ConfirmEnd => {
                use quorate_core::ReadError as R;
                use quorate_runtime::Error as E;
                let status = self.status.borrow().clone();
                // Deposed: the stream ends. Anything else (busy, the state machine slow to
                // apply): the image stays, and the client may ask for the end again.
                let deposed = AtomicBool::new(false);
                let refuse = |e: E| match e {
                    E::NotLeader { .. } | E::Read(_) => {
                        let lost = matches!(
                            e,
                            E::NotLeader { .. } | E::Read(R::NotLeader { .. } | R::NoLeader | R::LeadershipLost)
                        );
                        deposed.store(lost, Ordering::Relaxed);
                        crate::save_stream::unconfirmed_end()
                    }
                    e => self.refusal(e, &status),
                };
                let answer = match self.applied_for(ReadLevel::Linearizable, refuse).await {
                    Ok(_) => {
                        let (term, leader) = self.term_and_lead();
                        self.streams.end(stream, term, leader, Instant::now())
                    }
                    Err(e) => {
                        if deposed.load(Ordering::Relaxed) {
                            self.streams.release(stream);
                        }
                        Err(e)
                    }
                };
                responder.send(answer, None);
            }
            Fetch::Chunk { path, total } => {
                let streams = self.streams.clone();
                let read = tokio::task::spawn_blocking(move || streams.chunk(stream, &path, offset, len, total));
                let answer =
                    read.await.unwrap_or_else(|e| Err(ApiError::Internal(format!("a chunk read failed: {e}"))));
                responder.send(answer, None);
            }
        }
    }

    /// For a save: the status, if this node leads (else the leader's hint), and the permit to
    /// write a backup or a stream's image (busy if one is being written).
    fn leader_with_bulk(&self) -> Result<(quorate_runtime::Status, tokio::sync::OwnedSemaphorePermit), ApiError> {
        let status = self.status.borrow().clone();
        if status.role != Role::Leader {
            return Err(self.leader_hint(&status));
        }
        let bulk = self.bulk.clone().try_acquire_owned().map_err(|_| {
            ApiError::Refused(
                "busy: a snapshot save is running on this node; one at a time — retry when it ends".into(),
            )
        })?;
        Ok((status, bulk))
    }

    /// This node's term, and whether it leads it, as the runtime last published them.
    fn term_and_lead(&self) -> (Term, bool) {
        let s = self.status.borrow();
        (s.term, s.role == Role::Leader)
    }

    /// Ends the snapshot stream if this node no longer leads the term it was opened in (a
    /// deposed leader never completes a save), or if nobody fetched it for
    /// [`crate::save_stream::STREAM_IDLE`]; on every [`TICK`].
    fn end_stale_stream(&self) {
        if !self.streams.active() {
            return;
        }
        let (term, leader) = self.term_and_lead();
        if let Some(stream) = self.streams.check(term, leader, Instant::now()) {
            tracing::debug!(stream, "snapshot stream ended by the tick");
        }
    }

    /// The leader's lease clock ([`crate::leases`]), as the driver runs it: takes office in a
    /// new term once it has applied an entry of the term (every lease then gets its full TTL),
    /// then proposes the expiry of the leases whose deadline passed — appended only while this
    /// node still leads the term whose deadlines said so (`propose_in_term`: a later leader
    /// gave every lease its full TTL again and took keep-alives) — with one sweep's proposals
    /// in flight at a time, for at most [`crate::leases::EXPIRE_RETRY`] (an expiry not applied
    /// is proposed again after that; one applied twice, or after a revoke, does nothing).
    fn expire_leases(&self) {
        let (role, term) = {
            let s = self.status.borrow();
            (s.role, s.term.0)
        };
        let leases = &self.applied.leases;
        if role != Role::Leader || self.applied.cluster_version.get() < LEASES_CLUSTER_VERSION {
            leases.step_down();
            return;
        }
        let now = Instant::now();
        let applied_term = match applied_term(&self.store, self.store.applied_index()) {
            Ok(t) => t.0,
            Err(e) => return tracing::warn!(error = %e, "leases: cannot read the applied entry's term now"),
        };
        match leases.take_office(term, applied_term, now, &*self.store) {
            Ok(true) => tracing::debug!(term, "leases: took office, every lease has its full TTL"),
            Ok(false) => {}
            Err(e) => return tracing::warn!(error = %e, "leases: cannot load the lease table now"),
        }
        if !leases.in_office(term) {
            // Not yet: the deadlines may be an earlier term's.
            return;
        }
        // The test-only late-expiry weakening may look at the deadlines as they were earlier.
        let Some(due_at) = self.failpoints.lease_due_at(now) else { return };
        if self.expiring.swap(true, Ordering::AcqRel) {
            // The last sweep's proposals are still in flight.
            return;
        }
        // Cleared when the sweep's proposals are done, whichever way this ends.
        let sweep = Sweeping(self.expiring.clone());
        let mut proposals = tokio::task::JoinSet::new();
        for id in leases.due(due_at, crate::leases::EXPIRES_PER_SWEEP) {
            let cmd = Command { session: None, time_ms: self.next_time_ms(), op: CommandOp::LeaseExpire { id } };
            let bytes = match quorate_api::encode_command(&cmd) {
                Ok(b) => b,
                Err(e) => {
                    tracing::debug!(lease = id.0, error = %e, "cannot encode a lease's expiry");
                    continue;
                }
            };
            let handle = self.handle.clone();
            proposals.spawn(async move { (id, handle.propose_in_term(quorate_log::Term(term), bytes).await) });
        }
        if proposals.is_empty() {
            return;
        }
        tokio::spawn(async move {
            let all = async {
                while let Some(done) = proposals.join_next().await {
                    match done {
                        Ok((id, Ok(_))) => tracing::debug!(lease = id.0, "a lease's expiry applied"),
                        Ok((id, Err(e))) => tracing::debug!(lease = id.0, error = %e, "a lease's expiry not applied"),
                        Err(e) => tracing::debug!(error = %e, "a lease's expiry proposal ended"),
                    }
                }
            };
            if tokio::time::timeout(crate::leases::EXPIRE_RETRY, all).await.is_err() {
                tracing::debug!("lease expiries not applied within the retry interval: proposed again later");
            }
            // Those still waiting are dropped (their proposals, if appended, apply or not).
            drop(proposals);
            drop(sweep);
        });
    }

    /// A lease request the leader answers from its clock (keep-alive, list, time to live), as
    /// the driver does: a keep-alive moves one deadline here; what the lease table holds (key
    /// counts, attached keys) is read from this leader's applied state on a read worker.
    async fn lease_read(&self, body: Request, responder: Responder) {
        if let Err(e) = self.require(LEASES_CLUSTER_VERSION, "a lease") {
            return responder.send(Err(e), None);
        }
        let status = self.status.borrow().clone();
        if status.role != Role::Leader {
            return responder.send(Err(self.leader_hint(&status)), None);
        }
        let leases = &self.applied.leases;
        if !leases.in_office(status.term.0) {
            return responder.send(Err(ApiError::Unavailable("the leader is loading its leases; retry".into())), None);
        }
        let (principal, admin, now) = (responder.principal().to_string(), responder.is_admin(), Instant::now());
        let read = match body {
            Request::LeaseKeepAlive { id } => {
                let kept =
                    leases.keep_alive(id, &principal, admin, now).map(|ttl_ms| Response::LeaseKeptAlive { id, ttl_ms });
                return responder.send(kept, None);
            }
            Request::LeaseTimeToLive { id, keys } => match leases.get(id, &principal, admin, now) {
                Some(seen) => ReadReq::Leases { seen: vec![seen], keys, list: false },
                None => {
                    let gone = format!("lease {} not found (revoked, expired, or not yours)", id.0);
                    return responder.send(Err(ApiError::InvalidRequest(gone)), None);
                }
            },
            Request::LeaseList => ReadReq::Leases { seen: leases.list(&principal, now), keys: false, list: true },
            _ => return responder.send(Err(ApiError::InvalidRequest("not a lease request".into())), None),
        };
        // Served from this leader's applied state, which holds every lease its clock knows
        // (the clock took office only after applying its term's first entry).
        self.read(read, ReadConsistency::Stale, responder).await;
    }

    /// A watch ([`crate::watches`]), as the driver serves one: read at the `stale` level from
    /// this member's applied state, waiting for the applied revision and read again after an
    /// empty read until its deadline.
    async fn watch(&self, watch: quorate_api::WatchRequest, responder: Responder) {
        if let Err(e) = self.require(crate::sm::HISTORY_CLUSTER_VERSION, "a watch") {
            return responder.send(Err(e), None);
        }
        let me = self.me.clone();
        // The node stopped (its serving gone): the responder is dropped.
        let again = crate::server::watch_again(move |watch, responder| {
            let me = me.clone();
            async move {
                if let Some(serving) = me.upgrade() {
                    serving.read(ReadReq::Watch(watch), ReadConsistency::Stale, *responder).await;
                }
            }
        });
        let revisions = &self.applied.revisions;
        if let Some((watch, responder)) = crate::server::begin_watch(&self.watches, revisions, watch, responder, again)
        {
            self.read(ReadReq::Watch(watch), ReadConsistency::Stale, responder).await;
        }
    }

    /// A writing transaction: from [`crate::sm::BOUNDED_RESULTS_CLUSTER_VERSION`], one whose
    /// gets cannot fit in an answer is refused before it is proposed (bounded on a read
    /// worker, the cost charged to the principal), as the driver does.
    async fn bound_then_write(
        &self,
        session: Option<quorate_api::Sequenced>,
        txn: quorate_api::Txn,
        responder: Responder,
    ) {
        let has_gets = txn.success.iter().chain(&txn.failure).any(|o| matches!(o, quorate_api::TxnOp::Get { .. }));
        let leads = self.status.borrow().role == Role::Leader;
        if !has_gets || !leads || self.applied.cluster_version.get() < crate::sm::BOUNDED_RESULTS_CLUSTER_VERSION {
            return self.write(session, CommandOp::Txn(txn), responder).await;
        }
        let Ok(Ok(permit)) = tokio::time::timeout(BOUND_PERMIT_WAIT, self.reads.acquire()).await else {
            // Not proposed: a refusal the client may retry, not an unknown outcome.
            let e = crate::admission::shed(quorate_api::OverloadReason::QueueFull, Duration::from_millis(100));
            return responder.send(Err(e), None);
        };
        let store = self.store.clone();
        let bounded = tokio::task::spawn_blocking(move || {
            let bound = crate::sm::txn_bound(&*store, &txn);
            (txn, bound)
        })
        .await;
        drop(permit);
        let Ok((txn, bound)) = bounded else {
            return responder.send(Err(ApiError::Internal("bounding a transaction failed".into())), None);
        };
        match bound {
            Ok(b) if b.result_bytes_min > quorate_api::limits::RESULT_BYTES_MAX as u64 => {
                tracing::debug!(bound = ?b, "writing transaction refused before it was proposed: its results cannot fit");
                crate::telemetry::txn_refused_unproposed(responder.principal());
                responder.charge_reads(b.read_bytes);
                responder.send(Err(crate::sm::txn_results_too_large()), None);
            }
            bounded => {
                if let Err(e) = bounded {
                    tracing::warn!(error = %e, "cannot bound a transaction's results; proposing it (apply checks them)");
                }
                self.write(session, CommandOp::Txn(txn), responder).await;
            }
        }
    }

    /// What the client is told when the runtime refuses or loses its request.
    fn refusal(&self, e: quorate_runtime::Error, status: &quorate_runtime::Status) -> ApiError {
        use quorate_runtime::Error as E;
        let hint = || self.leader_hint(status);
        match e {
            E::NotLeader { leader_hint: leader } => {
                let addr =
                    leader.and_then(|l| self.addrs.read().unwrap_or_else(PoisonError::into_inner).get(&l).cloned());
                ApiError::NotLeader { leader, addr }
            }
            E::Propose(e) => crate::server::propose_refusal(e, hint),
            E::Read(e) => crate::server::read_refusal(&e, hint),
            E::ConfChange(e) => crate::server::conf_refusal(e, hint),
            E::Transfer(e) => ApiError::Refused(e.to_string()),
            E::Busy { what: "reads", .. } => {
                crate::admission::shed(quorate_api::OverloadReason::PendingReads, Duration::from_millis(50))
            }
            E::Busy { what: "apply backlog bytes", .. } => {
                crate::admission::shed(quorate_api::OverloadReason::UncommittedBytes, Duration::from_millis(100))
            }
            E::Busy { .. } => crate::admission::shed(quorate_api::OverloadReason::QueueFull, Duration::from_millis(50)),
            E::Dropped => {
                ApiError::Unavailable("a new leader's entry took this write's place: not applied; retry".into())
            }
            E::OutcomeUnknown => ApiError::Timeout,
            E::Halted(why) => ApiError::Internal(format!("node halted: {why}")),
            E::Shutdown => ApiError::Unavailable("the node is shutting down".into()),
            other => ApiError::Unavailable(other.to_string()),
        }
    }

    /// The node's status, as the runtime published it after its last turn.
    fn status(&self) -> NodeStatus {
        let s = self.status.borrow();
        NodeStatus {
            id: s.id,
            role: s.role,
            term: s.term,
            leader: s.leader,
            commit: s.commit,
            applied: s.applied,
            last_index: s.last_index,
            config: s.config.clone(),
            config_version: s.config_version,
            snapshot_index: s.snapshot_index,
            revision: self.applied.revision.load(Ordering::Acquire),
            binary_version: crate::VERSION.to_string(),
            storage_format: quorate_storage::FORMAT_VERSION,
            danger: self.config.danger_settings(),
        }
    }

    /// The members of the configuration in force, with their addresses.
    fn members(&self) -> Vec<Member> {
        let c: Configuration = self.handle.status().borrow().config.clone();
        let addrs = self.addrs.read().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::new();
        let mut push = |id: NodeId, kind| out.push(Member { id, addr: addrs.get(&id).cloned(), kind });
        for &v in &c.voters {
            push(v, MemberKind::Voter);
        }
        for &v in c.voters_outgoing.difference(&c.voters) {
            push(v, MemberKind::OutgoingVoter);
        }
        for &l in &c.learners {
            push(l, MemberKind::Learner);
        }
        out
    }

    /// `member add`: the new member's address is resolved (within the driver's bound), dialed,
    /// recorded through the log (every replica learns it), then the member is added as a
    /// learner; answered once both are applied here.
    async fn member_add(&self, new: NodeId, addr: String) -> Result<Response, ApiError> {
        let status = self.status.borrow().clone();
        if status.role != Role::Leader {
            return Err(self.leader_hint(&status));
        }
        if status.config.members().any(|m| m == new) {
            return Err(ApiError::Refused(format!("node {new} is already a member")));
        }
        let Some(sa) = crate::server::resolve(&addr, &self.failpoints).await else {
            return Err(ApiError::InvalidRequest(format!("cannot resolve address {addr:?}")));
        };
        self.transport.add_peer_at(
            new,
            quorate_transport::PeerAddr::parse(&addr).unwrap_or(quorate_transport::PeerAddr::Socket(sa)),
        );
        let cmd =
            Command { session: None, time_ms: self.next_time_ms(), op: CommandOp::SetMemberAddr { id: new, addr } };
        let bytes = quorate_api::encode_command(&cmd).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
        match tokio::time::timeout(REQUEST_DEADLINE, self.handle.propose(bytes)).await {
            Ok(Ok(out)) => {
                out.result?;
            }
            Ok(Err(e)) => return Err(self.refusal(e, &status)),
            Err(_) => return Err(ApiError::Timeout),
        }
        self.conf_change(quorate_runtime::ConfChange::AddLearner(new)).await
    }

    /// `member update`: from [`crate::versions::MEMBER_UPDATE_CLUSTER_VERSION`], a member's new
    /// address (resolved first) goes through the log as `SetMemberAddr`.
    async fn member_update(&self, id: NodeId, addr: String, responder: Responder) {
        let status = self.status.borrow().clone();
        if status.role != Role::Leader {
            return responder.send(Err(self.leader_hint(&status)), None);
        }
        if let Err(e) = self.require(crate::versions::MEMBER_UPDATE_CLUSTER_VERSION, "member update") {
            return responder.send(Err(e), None);
        }
        if !status.config.members().any(|m| m == id) {
            return responder.send(Err(ApiError::Refused(format!("node {id} is not a member"))), None);
        }
        if crate::server::resolve(&addr, &self.failpoints).await.is_none() {
            return responder.send(Err(ApiError::InvalidRequest(format!("cannot resolve address {addr:?}"))), None);
        }
        self.write(None, CommandOp::SetMemberAddr { id, addr }, responder).await;
    }

    /// A membership change, answered once it is applied here.
    async fn conf_change(&self, change: quorate_runtime::ConfChange) -> Result<Response, ApiError> {
        let status = self.status.borrow().clone();
        match tokio::time::timeout(REQUEST_DEADLINE, self.handle.change_membership(change)).await {
            Ok(Ok(())) => Ok(Response::Done),
            Ok(Err(e)) => Err(self.refusal(e, &status)),
            Err(_) => Err(ApiError::Timeout),
        }
    }

    /// Hands leadership to `to`, or to the voter furthest along.
    async fn transfer(&self, to: Option<NodeId>) -> Result<Response, ApiError> {
        let status = self.status.borrow().clone();
        if status.role != Role::Leader {
            return Err(self.leader_hint(&status));
        }
        let target = match to {
            Some(t) => t,
            None => {
                let me = self.id;
                let best = self
                    .handle
                    .with_core::<Core, _>(move |core| {
                        let s = core.raft().status();
                        s.peers
                            .iter()
                            .filter(|(id, _)| **id != me && s.config.is_voter(**id))
                            .max_by_key(|(_, p)| p.match_index)
                            .map(|(id, _)| *id)
                    })
                    .await
                    .map_err(|e| self.refusal(e, &status))?;
                best.ok_or_else(|| ApiError::Refused("no other voter to transfer leadership to".into()))?
            }
        };
        self.handle.transfer_leader(target).await.map_err(|e| self.refusal(e, &status))?;
        Ok(Response::Done)
    }
}
