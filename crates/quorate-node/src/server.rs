//! The node: a tokio driver of the consensus core, a separate apply thread, client request
//! handling, membership and snapshots. [`run`] runs it until SIGINT/SIGTERM or a fatal error;
//! [`run_until`] until a future of the caller's choosing completes (tests, embedding).
//!
//! Tasks and queues (every one bounded):
//!
//! * the **driver** owns the `Raft` core; it feeds it peer messages, client requests and
//!   timer ticks, sends the messages of each `Ready` at once (the core holds back those that
//!   need persistence), and hands persist batches to a `GroupCommitter` whose completions come
//!   back in order through a bounded channel and become `Raft::persisted`;
//! * the **apply thread** receives committed entries (and the writes and reads waiting for
//!   them) in order through a bounded channel, applies them in atomic store batches with the
//!   applied index, answers clients, takes and installs snapshots;
//! * one small task per client response, and one per outgoing snapshot stream.

use crate::apply::{Applier, ApplyMsg, ReadReq};
use crate::config::NodeConfig;
use quorate_api::{
    Access, ApiError, ClientRequest, ClientResponse, Command, CommandOp, DiskStatus, Member, MemberKind, NodeMessage,
    NodeStatus, ReadConsistency, Request, Response, SnapshotChunk, Staleness,
};
use quorate_core::{
    ConfChange, ConfChangeError, Config as CoreConfig, IoId, ProposeError, ReadError, ReadId, ReadLevel, Role,
};
use quorate_log::{Configuration, Data, EntryId, LogIndex, LogStorage, NodeId, SnapshotMeta, Term};
use quorate_storage::{
    GroupCommitter, GroupOptions, PersistBatch, RocksStore, SnapshotReader, StoreError, StoreOptions,
};
use quorate_transport::{
    ClusterId, Credentials, Inbox, Incoming, PeerAddr, Resolver, SystemResolver, TlsPaths, Transport, TransportConfig,
};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The tracing target of audit events (who, what, result, term/index).
pub const AUDIT_TARGET: &str = "quorate::audit";

/// How long a client write or read may wait inside the node before it is answered with
/// `Timeout` (writes: outcome unknown) or `Unavailable` (reads).
pub(crate) const REQUEST_DEADLINE: Duration = Duration::from_secs(20);

/// Capacity of the channel from the driver to the apply thread (messages).
const APPLY_QUEUE: usize = 256;
/// Capacity of the persist-completion channel: more than the group committer can hold, so
/// its writer thread never waits on it.
const PERSIST_QUEUE: usize = 8192;
/// Snapshot stream chunk size.
const CHUNK_BYTES: usize = 512 * 1024;
/// Inbox messages handled before the next `Ready` when several are waiting
/// ([`Driver::on_waiting`]).
const INBOX_BATCH_MAX: usize = 64;
/// How often the TLS files are checked for changes (and open connections for expired
/// certificates).
const TLS_WATCH_INTERVAL: Duration = Duration::from_secs(2);
/// Deadline of one resolution of a member's address.
pub(crate) const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Snapshot chunks waiting to be written to the staging file; a follower whose disk falls
/// further behind the stream drops the transfer (the leader retries).
const STAGING_QUEUE_CHUNKS: usize = 16;

/// Why the node stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The configuration is not valid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Storage failed; the node stopped to recover from disk on restart.
    #[error("storage: {0}")]
    Storage(String),
    /// The transport could not start or stopped.
    #[error("transport: {0}")]
    Transport(String),
    /// The consensus core refused to start or halted.
    #[error("consensus: {0}")]
    Core(String),
    /// Anything else fatal.
    #[error("{0}")]
    Fatal(String),
}

impl From<StoreError> for ServerError {
    fn from(e: StoreError) -> ServerError {
        ServerError::Storage(e.to_string())
    }
}

impl From<crate::sm::SmError> for ServerError {
    fn from(e: crate::sm::SmError) -> ServerError {
        ServerError::Storage(e.to_string())
    }
}

/// Installs the default tracing subscriber (human format, `RUST_LOG` filter, default `info`)
/// unless one is installed already.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(quorate_telemetry::stdout_color_allowed())
        .try_init();
}

/// Runs the node until SIGINT/SIGTERM or a fatal error.
pub async fn run(config: NodeConfig) -> Result<(), ServerError> {
    let _tracing = crate::telemetry::init_tracing(&config).map_err(ServerError::Fatal)?;
    run_until(config, shutdown_signal()).await
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown signal received");
}

/// State shared by the driver, the apply thread and response tasks.
pub(crate) struct Shared {
    pub(crate) id: NodeId,
    pub(crate) handle: tokio::runtime::Handle,
    pub(crate) store: Arc<RocksStore>,
    pub(crate) transport: Arc<Transport<NodeMessage>>,
    pub(crate) inflight: Arc<AtomicUsize>,
    /// Member addresses: bootstrap peers, then what the log recorded.
    pub(crate) addrs: RwLock<BTreeMap<NodeId, String>>,
    /// The configuration's `advertise`: checked against this node's address in the log.
    pub(crate) advertise: Option<String>,
    pub(crate) revision: AtomicU64,
    pub(crate) log_time_ms: AtomicU64,
    /// The applied cluster version (see [`crate::versions::AppliedClusterVersion`]).
    pub(crate) cluster_version: crate::versions::AppliedClusterVersion,
    pub(crate) backups_dir: PathBuf,
    pub(crate) telemetry: Arc<crate::telemetry::NodeTelemetry>,
    /// How long an answer waits for its client to take it (`limits.response_write_timeout_ms`).
    pub(crate) response_write_timeout: Duration,
    /// Injected faults (off unless `limits.danger_failpoints`).
    pub(crate) failpoints: crate::failpoints::Failpoints,
    /// Which session writes may replay applied ones (filled by the apply thread; see
    /// [`crate::replays`]).
    pub(crate) replays: crate::replays::ReplayHints,
    /// The snapshot stream this node serves, if any (`quorate snapshot save FILE`).
    pub(crate) streams: crate::save_stream::Streams,
    /// The applied key-value revision, for watches waiting on it (sent by the apply thread
    /// with `revision`).
    pub(crate) revision_tx: tokio::sync::watch::Sender<u64>,
    /// The watches in flight ([`crate::watches`]).
    pub(crate) watches: Arc<crate::watches::Watches>,
    /// Lease deadlines on the leader's clock ([`crate::leases`]; told by the apply thread).
    pub(crate) leases: crate::leases::LeaseClock,
}

impl Shared {
    pub(crate) fn addr_of(&self, id: NodeId) -> Option<String> {
        self.addrs.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(&id).cloned()
    }

    /// Records a member's address (from the log) and dials it if it is new or moved. A host
    /// name is handed to the transport as a name: it resolves it again before every dial (off
    /// the caller, the apply thread), so a member that comes back on a new address is found.
    pub(crate) fn learn_member_addr(self: &Arc<Self>, id: NodeId, addr: String) {
        let changed = {
            let mut a = self.addrs.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            a.insert(id, addr.clone()).as_deref() != Some(addr.as_str())
        };
        if changed && id == self.id {
            // Checked at start against the log this node had then; a `member update` applied
            // since (made while it was down, say) settles the question or raises it anew.
            check_advertise(id, self.advertise.as_deref(), &addr, true);
        }
        if !changed || id == self.id {
            return;
        }
        // The caller may be the apply thread, outside the runtime: the transport spawns the
        // peer's task on it.
        let _runtime = self.handle.enter();
        dial_member(&self.transport, id, &addr);
    }
}

/// Warns when `advertise` is not `dialed`, the address the cluster has for this node (the
/// cluster's address for a member changes through the log, `member update`, as etcd's does);
/// after a change in the log (`changed`), also says when the two now agree.
fn check_advertise(id: NodeId, advertise: Option<&str>, dialed: &str, changed: bool) {
    let Some(advertise) = advertise else { return };
    if !same_address(advertise, dialed) {
        tracing::warn!(node = %id, advertise = %advertise, %dialed,
            "`advertise` {advertise} is not the address the cluster dials this node at ({dialed}); to make it so, \
             run `quorate member update {id} --peer {advertise}`");
    } else if changed {
        tracing::info!(node = %id, %advertise,
            "the cluster now dials this node at its `advertise` address {advertise}");
    }
}

/// Whether two member addresses name the same place: equal but for the case of a host name,
/// or the same socket address written two ways (`[::1]:7001`, `[0:0::1]:7001`).
fn same_address(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b) || matches!((a.parse::<SocketAddr>(), b.parse::<SocketAddr>()), (Ok(x), Ok(y)) if x == y)
}

/// Starts dialing member `id` at `addr` (`IP:PORT` or `NAME:PORT`); an address that is
/// neither (a log written by hand, an old binary's lax check) is logged, not dialed.
fn dial_member(transport: &Transport<NodeMessage>, id: NodeId, addr: &str) {
    match PeerAddr::parse(addr) {
        Ok(a) => {
            tracing::info!(node = %id, %addr, "peer address learned");
            transport.add_peer_at(id, a);
        }
        Err(e) => tracing::warn!(node = %id, error = %e, "cannot use the member's address"),
    }
}

/// The system's resolver, behind the `slow_resolve_ms` failpoint: what the transport asks
/// before every dial of a member given by name, and what `member add` checks a new address with.
#[derive(Debug)]
struct NodeResolver {
    failpoints: crate::failpoints::Failpoints,
}

impl Resolver for NodeResolver {
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + '_>> {
        let delay = self.failpoints.resolve_delay();
        let lookup = SystemResolver.resolve(host, port);
        Box::pin(async move {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            lookup.await
        })
    }
}

/// A session id nobody can guess: 64 bits from the operating system's random source
/// (`/dev/urandom`), never zero. Drawn by the leader into the `OpenSessionFor` command, so
/// every replica applies the same id.
pub(crate) fn session_nonce() -> u64 {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    let drawn = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if let Err(e) = drawn {
        // Keyed SipHash of the clock and a counter, keyed from the OS at process start: still
        // not guessable from outside, and the apply refuses a taken id anyway.
        tracing::warn!(error = %e, "cannot read /dev/urandom; drawing a session id from the process's hash keys");
        use std::hash::BuildHasher;
        static STATE: std::sync::OnceLock<std::collections::hash_map::RandomState> = std::sync::OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let state = STATE.get_or_init(std::collections::hash_map::RandomState::new);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        bytes = state.hash_one((now, COUNTER.fetch_add(1, Ordering::Relaxed))).to_le_bytes();
    }
    u64::from_le_bytes(bytes).max(1)
}

/// The command for a client's `op` at cluster version `version`: from
/// [`crate::sm::OWNED_SESSIONS_CLUSTER_VERSION`] sessions belong to the principal that opened
/// them, so an opening draws a random id and a write in a session (`in_session`) says who asks.
pub(crate) fn owned_op(version: u32, in_session: bool, op: CommandOp, principal: &str) -> CommandOp {
    if version < crate::sm::OWNED_SESSIONS_CLUSTER_VERSION {
        return op;
    }
    match op {
        CommandOp::OpenSession => {
            CommandOp::OpenSessionFor { principal: principal.to_string(), nonce: session_nonce() }
        }
        op if in_session => match quorate_api::KvOp::from_command(op) {
            Ok(op) => CommandOp::ByPrincipal { principal: principal.to_string(), op },
            Err(op) => op,
        },
        op => op,
    }
}

/// A write that goes into its session's table when applied (from cluster version 2 the leader
/// wraps it into `ByPrincipal`): the kind of request a replay can be.
fn is_session_write(body: &Request) -> bool {
    match body {
        Request::Put { .. } | Request::Delete { .. } | Request::Cas { .. } | Request::DeleteRange { .. } => true,
        Request::Txn(t) => !t.is_read_only(),
        _ => false,
    }
}

/// Counts a request in flight until dropped.
pub(crate) struct InflightGuard(Arc<AtomicUsize>);

impl InflightGuard {
    pub(crate) fn new(c: &Arc<AtomicUsize>) -> InflightGuard {
        c.fetch_add(1, Ordering::AcqRel);
        InflightGuard(c.clone())
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Answers one client request (from any thread): spawns a small task that writes the
/// response, within the response write timeout. Writes and admin requests are audited when
/// answered ([`crate::audit`]).
///
/// An admitted request's slot (its [`InflightGuard`]) and its admission [`Ticket`]'s hold —
/// the request's place among its principal's requests and the bytes of its answer — are kept
/// until the answer has been written or the write given up, so that a client that does not
/// read its answers uses up its own budget, not everyone's.
///
/// [`Ticket`]: crate::admission::Ticket
pub(crate) struct Responder {
    req: quorate_transport::Request<NodeMessage>,
    id: u64,
    handle: tokio::runtime::Handle,
    audit: Option<crate::audit::What>,
    guard: Option<InflightGuard>,
    /// Admission: answering completes its permit (latency into the adaptive limit); writing
    /// the answer releases its hold.
    ticket: Option<crate::admission::Ticket>,
    /// Whether the request may change state: an answer too large to send is then `Timeout`
    /// (its outcome is unknown to the client), not a refusal.
    writes: bool,
    /// Longest wait for the client to take the answer.
    write_timeout: Duration,
    /// Where the answer came from (audited).
    answered: crate::audit::Answered,
    /// A watch's place among the node's and its principal's, until the answer is written.
    watch: Option<crate::watches::WatchSlot>,
    /// A watch that waits for its own keys: an answer with no events is not sent before its
    /// deadline, the watch waits again instead ([`crate::watches`], "Waiting").
    rewait: Option<Rewait>,
}

/// What a watch still waiting for its own keys needs to wait again and be read again.
pub(crate) struct Rewait {
    /// The watch, asked from the revision after the last empty read's `complete_to`.
    watch: quorate_api::WatchRequest,
    /// When its wait runs out: one deadline from the request's arrival, never restarted.
    deadline: Instant,
    /// When an empty answer whose `complete_to` moved is sent anyway (a progress
    /// notification, [`crate::watches::PROGRESS_INTERVAL`] after the arrival).
    progress_at: Instant,
    /// The revision the client asked from.
    asked_from: u64,
    revisions: tokio::sync::watch::Receiver<u64>,
    again: WatchAgain,
}

/// How a watch that waited is read again (at the `stale` level, from its revision): handed
/// back to whatever serves the node's reads — the driver's loop, or the runtime engine.
pub(crate) type WatchAgain = Arc<
    dyn Fn(quorate_api::WatchRequest, Box<Responder>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// The command of a lease write — a grant, a revoke, a put with a lease — as both engines
/// check it: the lease gate at cluster version `version`, a TTL of at least three election
/// timeouts (`election_timeout_ms`), and the asking principal (and whether it is an admin) from
/// `responder`. In the client's session when it sends one (a retry is then applied once).
pub(crate) fn lease_write(
    version: u32,
    election_timeout_ms: u64,
    body: Request,
    responder: &Responder,
) -> Result<CommandOp, ApiError> {
    use crate::sm::leases::LEASES_CLUSTER_VERSION;
    let gate = |what: &str| {
        if version < LEASES_CLUSTER_VERSION {
            return Err(quorate_api::cluster_version_refusal(what, LEASES_CLUSTER_VERSION, version));
        }
        Ok(())
    };
    let (principal, admin) = (responder.principal().to_string(), responder.is_admin());
    match body {
        Request::LeaseGrant { ttl_ms } => {
            gate("a lease")?;
            let min = election_timeout_ms.saturating_mul(3);
            if ttl_ms < min {
                return Err(ApiError::InvalidRequest(format!(
                    "a lease's TTL must be at least three election timeouts of this cluster ({min} ms)"
                )));
            }
            Ok(CommandOp::LeaseGrant { principal, ttl_ms })
        }
        Request::LeaseRevoke { id } => {
            gate("a lease")?;
            Ok(CommandOp::LeaseRevoke { principal, admin, id })
        }
        Request::PutWithLease { key, value, lease } => {
            gate("a put with a lease")?;
            Ok(CommandOp::ByPrincipal { principal, op: quorate_api::KvOp::PutLeased { key, value, lease, admin } })
        }
        _ => Err(ApiError::InvalidRequest("not a lease write".into())),
    }
}

/// A [`WatchAgain`] that runs `f`.
pub(crate) fn watch_again<F, Fut>(f: F) -> WatchAgain
where
    F: Fn(quorate_api::WatchRequest, Box<Responder>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    type Boxed = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
    Arc::new(move |watch: quorate_api::WatchRequest, responder: Box<Responder>| -> Boxed {
        Box::pin(f(watch, responder))
    })
}

/// Takes in a watch (see [`crate::watches`]): its slot among the node's and its principal's,
/// and — with a wait — what it needs to wait again after an empty read. The watch and its
/// responder come back when it is to be read now, at the `stale` level; otherwise it was
/// refused (answered) or waits on a task for the applied revision to reach the one it asks
/// from (or its deadline), and is then read through `again`. `revisions` is the node's
/// applied revision.
pub(crate) fn begin_watch(
    watches: &Arc<crate::watches::Watches>,
    revisions: &tokio::sync::watch::Sender<u64>,
    watch: quorate_api::WatchRequest,
    mut responder: Responder,
    again: WatchAgain,
) -> Option<(quorate_api::WatchRequest, Responder)> {
    match watches.admit(responder.principal()) {
        Ok(slot) => responder.watch = Some(slot),
        Err(e) => {
            responder.send(Err(e), None);
            return None;
        }
    }
    let arrival = Instant::now();
    let wait = Duration::from_millis(u64::from(watch.wait_ms.min(quorate_api::limits::WATCH_WAIT_MS_MAX)));
    let deadline = arrival + wait;
    if watch.wait_ms > 0 {
        responder.rewait = Some(Rewait {
            watch: watch.clone(),
            deadline,
            progress_at: arrival + crate::watches::PROGRESS_INTERVAL,
            asked_from: watch.from_revision,
            revisions: revisions.subscribe(),
            again: Arc::clone(&again),
        });
    }
    let applied = *revisions.borrow();
    if watch.wait_ms == 0 || applied >= watch.from_revision {
        return Some((watch, responder));
    }
    let mut revisions = revisions.subscribe();
    let handle = responder.handle.clone();
    handle.spawn(async move {
        crate::watches::wait_past(&mut revisions, watch.from_revision.saturating_sub(1), deadline).await;
        // Its server gone (shutting down): the responder is dropped.
        again(watch, Box::new(responder)).await;
    });
    None
}

impl Responder {
    /// The principal the request was admitted for (`None` if it was not admitted: an
    /// internal request).
    pub(crate) fn admitted_principal(&self) -> Option<quorate_admission::Principal> {
        self.ticket.as_ref().and_then(crate::admission::Ticket::principal)
    }

    /// A responder for request `id` on `req`'s stream, with nothing admitted yet.
    pub(crate) fn new(
        req: quorate_transport::Request<NodeMessage>,
        id: u64,
        handle: tokio::runtime::Handle,
        audit: Option<crate::audit::What>,
        writes: bool,
        write_timeout: Duration,
    ) -> Responder {
        Responder {
            req,
            id,
            handle,
            audit,
            guard: None,
            ticket: None,
            writes,
            write_timeout,
            answered: crate::audit::Answered::Normally,
            watch: None,
            rewait: None,
        }
    }

    /// Holds what admission gave the request (its permit and hold) until the answer is written.
    pub(crate) fn admitted(&mut self, ticket: Option<crate::admission::Ticket>) {
        self.ticket = ticket;
    }

    /// Charges `bytes` read for the request to its principal's answer rate.
    pub(crate) fn charge_reads(&self, bytes: u64) {
        if let Some(t) = self.ticket.as_ref() {
            t.charge_reads(bytes);
        }
    }

    /// Holds the node-wide slot `guard` until the answer is written or given up.
    pub(crate) fn hold(&mut self, guard: InflightGuard) {
        self.guard = Some(guard);
    }

    /// The principal of the client certificate that sent the request.
    pub(crate) fn principal(&self) -> &str {
        self.req.from.principal.as_str()
    }

    /// Whether the client certificate has the admin role.
    pub(crate) fn is_admin(&self) -> bool {
        self.req.from.role.allows(quorate_transport::Role::Admin)
    }

    /// Where the answer comes from (a retry answered from the session's cache): said so in
    /// the audit event.
    pub(crate) fn mark_answered(&mut self, answered: crate::audit::Answered) {
        self.answered = answered;
    }

    pub(crate) fn send(mut self, result: Result<Response, ApiError>, at: Option<EntryId>) {
        if let Some(rewait) = self.rewait.take() {
            match result {
                Ok(Response::Watch(answer)) => return self.watch_answered(rewait, answer, at),
                other => return self.send(other, at),
            }
        }
        // A quorate/1 (0.1.0) client gets only what 0.1.0 decodes (Shed → Overloaded).
        let result = result.map_err(|e| e.for_generation(self.req.protocol_generation()));
        let mut response = ClientResponse { id: self.id, result };
        let mut bytes = quorate_api::encoded_len(&response);
        if bytes > quorate_api::limits::MESSAGE_BYTES_MAX {
            // Never computed and silently dropped: the client hears why. A write may have
            // been applied, so its outcome is unknown to the client (a retry in its session
            // learns it); a read changed nothing.
            tracing::warn!(bytes, limit = quorate_api::limits::MESSAGE_BYTES_MAX, "answer too large to send");
            response.result = Err(if self.writes {
                ApiError::Timeout
            } else {
                ApiError::InvalidRequest(format!(
                    "the answer would take {bytes} bytes, more than the {} a message may hold",
                    quorate_api::limits::MESSAGE_BYTES_MAX
                ))
            });
            bytes = quorate_api::encoded_len(&response);
        }
        crate::telemetry::answered(self.req.from.principal.as_str(), &response.result);
        if let Some(t) = self.ticket.as_mut() {
            t.answered(&response.result, bytes as u64);
        }
        if let Some(what) = &self.audit {
            crate::audit::emit(&self.req.from, what, &response.result, at, self.answered);
        }
        let Responder { req, handle, guard, ticket, write_timeout, watch, .. } = self;
        handle.spawn(async move {
            let principal = req.from.principal.clone();
            let msg = NodeMessage::Response(response);
            match tokio::time::timeout(write_timeout, req.respond(&msg)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "could not send a response"),
                Err(_) => {
                    // The client does not take its answer: drop it (its stream ends) and free
                    // what it held.
                    crate::telemetry::response_write_timed_out(principal.as_str());
                    tracing::debug!(
                        principal = %principal.as_str(),
                        timeout_ms = write_timeout.as_millis() as u64,
                        "response write timed out"
                    );
                }
            }
            drop(ticket);
            drop(guard);
            drop(watch);
        });
    }
}

impl Responder {
    /// A watch's answer: sent if it has events, if the watch's wait ran out, or as a progress
    /// notification once [`crate::watches::PROGRESS_INTERVAL`] passed and `complete_to` moved.
    /// Otherwise the watch waits (on a task, holding its slot and admission) for the applied
    /// revision to pass `complete_to` and is read again from there, or, if its deadline comes
    /// first, this answer is sent then. Never a busy loop: each new read follows a new applied
    /// revision past the last one read.
    fn watch_answered(mut self, mut rewait: Rewait, answer: quorate_api::WatchAnswer, at: Option<EntryId>) {
        let now = Instant::now();
        let progress = now >= rewait.progress_at && answer.complete_to >= rewait.asked_from;
        if !answer.events.is_empty() || now >= rewait.deadline || progress {
            return self.send(Ok(Response::Watch(answer)), at);
        }
        let handle = self.handle.clone();
        handle.spawn(async move {
            let past = answer.complete_to;
            if crate::watches::wait_past(&mut rewait.revisions, past, rewait.deadline).await {
                rewait.watch.from_revision = rewait.watch.from_revision.max(past.saturating_add(1));
                let (again, watch) = (Arc::clone(&rewait.again), rewait.watch.clone());
                self.rewait = Some(rewait);
                // Its server gone (shutting down): the responder is dropped.
                again(watch, Box::new(self)).await;
            } else {
                self.send(Ok(Response::Watch(answer)), at);
            }
        });
    }
}

/// Events for the driver from other threads and tasks.
pub(crate) enum Event {
    SnapshotTaken(SnapshotMeta, PathBuf),
    /// The snapshot asked for could not be written for lack of space.
    SnapshotSkipped(SnapshotMeta),
    SnapshotStaged {
        from: NodeId,
        term: Term,
        meta: SnapshotMeta,
        path: PathBuf,
    },
    /// A snapshot stream started in this term failed.
    SnapshotSendFailed(NodeId, Term),
    /// A snapshot stream started in this term completed.
    SnapshotSent(NodeId, Term),
    /// A session write that looked like a replay was not one the session table answers
    /// ([`Driver::answer_replay`]): handle it as any request now.
    NotReplay {
        session: quorate_api::Sequenced,
        body: Request,
        responder: Box<Responder>,
    },
    /// A writing transaction that reads was bounded off the driver and may fit its answer:
    /// propose it now ([`Driver::bound_then_propose`]).
    TxnBounded {
        session: Option<quorate_api::Sequenced>,
        txn: quorate_api::Txn,
        responder: Box<Responder>,
    },
    /// The address of a member being added was resolved (`None`: it could not be, in time).
    MemberAddrResolved {
        new: NodeId,
        addr: String,
        resolved: Option<SocketAddr>,
        responder: Box<Responder>,
    },
    /// The new address of a member being moved (`member update`) was resolved.
    MemberUpdateResolved {
        id: NodeId,
        addr: String,
        resolved: Option<SocketAddr>,
        responder: Box<Responder>,
    },
    /// A watch waited for its revision (or its wait ran out): read it now.
    WatchReady {
        watch: quorate_api::WatchRequest,
        responder: Box<Responder>,
    },
    Fatal(String),
}

struct Persisted {
    io: IoId,
    install: Option<SnapshotMeta>,
    result: Result<(), StoreError>,
}

struct PendingRead {
    what: Confirming,
    responder: Responder,
    deadline: Instant,
}

/// What waits for a ReadIndex round (the leader's confirmation, by a quorum, that it is
/// still leader, at the commit index it recorded).
enum Confirming {
    /// A client read, served once applied up to the confirmed index.
    Read(ReadReq),
    /// `snapshot save`: the backup is written only once the round confirmed this node's
    /// leadership, at an applied index up to the confirmed one, so that it holds every write
    /// acknowledged before the request, and a deposed leader writes none (review of issue 21:
    /// the leader wrote it at once, and a stale leader's file was reported good).
    Save(Configuration),
    /// `snapshot save FILE` (a streamed save, [`crate::save_stream`]): as `Save`, but the
    /// image goes to a read worker and then to the caller, chunk by chunk (the `u64` is the
    /// stream's id).
    Stream(Configuration, u64),
    /// The end of a streamed save: complete only if this node is still the leader of the
    /// stream's term once the round confirms it.
    StreamEnd(u64),
}

impl Confirming {
    /// The snapshot stream a failed or expired round ends.
    fn stream(&self) -> Option<u64> {
        match self {
            Confirming::Stream(_, id) | Confirming::StreamEnd(id) => Some(*id),
            _ => None,
        }
    }
}

/// A snapshot transfer being received: from the leader `from` in `term`. The chunks go to a
/// writer on a blocking thread of its own through a bounded queue; dropping this ends the
/// writer, which removes the partial file.
struct Staging {
    from: NodeId,
    term: Term,
    meta: SnapshotMeta,
    total: u64,
    next: u64,
    chunks: mpsc::Sender<StageChunk>,
}

/// The next bytes of a staged file, for its writer; `last` when every byte was sent (the
/// writer then syncs, verifies, hands the file to the store and tells the driver).
struct StageChunk {
    bytes: Vec<u8>,
    last: bool,
}

/// The output of `f` if it is ready at its first poll (it is then dropped otherwise: use
/// only with cancel-safe futures).
fn ready_now<F: Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

pub(crate) fn node_id(raw: u64) -> Result<NodeId, ServerError> {
    NodeId::new(raw).ok_or_else(|| ServerError::Fatal(format!("invalid node id {raw}")))
}

/// Resolves a member's address (`host:port` or a socket address) within [`RESOLVE_TIMEOUT`].
/// Never called on the driver or the apply thread: it runs in a task of its own.
pub(crate) async fn resolve(addr: &str, failpoints: &crate::failpoints::Failpoints) -> Option<SocketAddr> {
    let attempt = async {
        if let Some(d) = failpoints.resolve_delay() {
            tokio::time::sleep(d).await;
        }
        match PeerAddr::parse(addr).ok()? {
            PeerAddr::Socket(sa) => Some(sa),
            PeerAddr::Name { host, port } => tokio::net::lookup_host((host.as_str(), port)).await.ok()?.next(),
            _ => None,
        }
    };
    tokio::time::timeout(RESOLVE_TIMEOUT, attempt).await.ok().flatten()
}

/// Logs the record of a `quorate node force-new-cluster` run on this data directory as an
/// audit event, once ([`crate::recover`]); refuses to start if its change is not in the store.
pub(crate) fn audit_forced_recovery(data_dir: &Path, store: &RocksStore, id: NodeId) -> Result<(), ServerError> {
    let config = store.initial_state().map_err(|e| ServerError::Storage(e.to_string()))?.config;
    let Some(forced) = crate::recover::pending_record(data_dir, &config).map_err(ServerError::Fatal)? else {
        return Ok(());
    };
    if forced.node != id.get() {
        return Err(ServerError::Fatal(format!(
            "{} records a force-new-cluster of node {}, but this is node {id}: the command was run with the wrong \
             --id. Run `quorate node force-new-cluster --id {id} --i-have-lost-quorum` on this data directory: it \
             supersedes the wrong run",
            data_dir.join(crate::recover::RECORD_FILE).display(),
            forced.node
        )));
    }
    tracing::warn!(
        target: AUDIT_TARGET,
        principal = "offline operator",
        op = "force_new_cluster",
        node = forced.node,
        at_unix_ms = forced.at_unix_ms,
        old_voters = ?forced.old_voters,
        old_learners = ?forced.old_learners,
        old_term = forced.old_term,
        commit = forced.commit,
        last_index = forced.last_index,
        last_term = forced.last_term,
        term = forced.new_term,
        index = forced.config_index,
        "UNSAFE: this node's cluster was forced to one voter after losing quorum; entries up to last_index become \
         committed, acknowledged writes that never reached this node are lost"
    );
    crate::recover::mark_logged(data_dir, &forced).map_err(ServerError::Storage)
}

/// Removes what a previous run left in the staging directory: only partial transfers live
/// there (a completed one moves into the store's snapshot directory). The staging of a
/// resumable transfer ([`crate::transfer`]) is kept: the transfer resumes from it.
fn clear_staging(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for ent in entries.flatten() {
        let path = ent.path();
        let resumable = [crate::transfer::PART_FILE, crate::transfer::HEADER_FILE]
            .iter()
            .any(|n| path.file_name().is_some_and(|f| f == *n));
        if path.is_file() && !resumable {
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::info!(file = %path.display(), "removed a partial snapshot transfer"),
                Err(e) => tracing::warn!(file = %path.display(), error = %e, "cannot remove a partial snapshot"),
            }
        }
    }
}

/// The latest snapshot file in `dir` at or below `applied` (what this node serves to
/// followers after a restart).
fn latest_snapshot_file(dir: &Path, applied: LogIndex) -> Option<(SnapshotMeta, PathBuf)> {
    let mut best: Option<(SnapshotMeta, PathBuf)> = None;
    for ent in std::fs::read_dir(dir).ok()?.flatten() {
        let path = ent.path();
        if path.extension().and_then(|e| e.to_str()) != Some("qsnap") {
            continue;
        }
        let Ok(r) = SnapshotReader::open(&path) else { continue };
        let meta = r.meta().clone();
        if meta.last.index <= applied && best.as_ref().is_none_or(|(b, _)| b.last.index < meta.last.index) {
            best = Some((meta, path));
        }
    }
    best
}

/// The store's options for `config` (its bootstrap configuration, write buffer, lost-state
/// rule and free-space floor), and the free-space floor below which client writes are refused.
pub(crate) fn store_options(config: &NodeConfig) -> Result<(StoreOptions, u64), ServerError> {
    let bootstrap = if config.join {
        Configuration::default()
    } else {
        let voters: Vec<NodeId> = config.peers.keys().map(|&p| node_id(p)).collect::<Result<_, _>>()?;
        Configuration::with_voters(voters).map_err(|e| ServerError::Fatal(format!("peers: {e}")))?
    };
    let mut options = StoreOptions::with_bootstrap(bootstrap);
    options.write_buffer_bytes = config.limits.storage_write_buffer_mb.saturating_mul(1 << 20);
    // Issue 18: a store that lost synced state opens, and the node rejoins without campaigning
    // (voting only for candidates as up to date as its record) until a leader has caught it
    // up (the consensus core's `recovering`).
    options.accept_lost_state = config.raft.rejoin_after_lost_state;
    // Client writes are refused (Overloaded) below the client floor; the store refuses appends
    // (they wait for space) below what RocksDB itself needs, the store floor.
    let (store_floor, client_floor) = crate::admission::space_floors(config);
    options.free_space_floor_bytes = store_floor;
    tracing::info!(
        store_floor_mb = store_floor >> 20,
        client_floor_mb = client_floor >> 20,
        "free-space floors (appends wait below the store floor; client writes are refused below the client floor)"
    );
    Ok((options, client_floor))
}

/// The consensus core's configuration from `config`: timing, pre-vote, check-quorum, the lease
/// clock bound, snapshot and compaction thresholds, a seed, and a message bound that takes the
/// largest command. What the store recovers (applied index, snapshot, lost state) is the
/// caller's to set.
pub(crate) fn core_config(config: &NodeConfig, id: NodeId) -> CoreConfig {
    let mut cc = CoreConfig::new(id);
    cc.election_timeout_min = Duration::from_millis(config.raft.election_timeout_ms);
    cc.heartbeat_interval = Duration::from_millis(config.raft.heartbeat_ms);
    cc.pre_vote = config.raft.pre_vote;
    cc.check_quorum = config.raft.check_quorum;
    cc.lease_clock_drift_max =
        (config.raft.lease_clock_drift_ms > 0).then(|| Duration::from_millis(config.raft.lease_clock_drift_ms));
    cc.seed = id.get()
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    // The largest command a client may send (a put of the largest key and value) is one
    // entry: the core must accept it (a put of `VALUE_BYTES_MAX` used to be refused).
    cc.msg_bytes_max =
        cc.msg_bytes_max.max(quorate_log::ENTRY_OVERHEAD_BYTES + quorate_api::limits::COMMAND_BYTES_MAX as u64);
    cc.snapshot_entries_threshold = config.raft.snapshot_entries;
    cc.compaction_tail_entries = config.raft.compaction_tail_entries;
    cc
}

/// What a store that lost synced state recorded, for the core to rejoin from without
/// campaigning (issue 18; `raft.rejoin_after_lost_state`), logged with its evidence.
pub(crate) fn recovering(store: &RocksStore, id: NodeId) -> Option<quorate_core::Recovering> {
    let lost = store.lost_state()?;
    tracing::warn!(
        node = id.get(),
        recorded = %lost.describe(),
        evidence = %store.dir().join(quorate_storage::LOST_STATE_FILE).display(),
        "this node lost synced state: it rejoins without campaigning, votes only for a candidate at least as up to \
         date as what it had recorded, and leaves recovery once a leader has caught it up \
         (raft.rejoin_after_lost_state)"
    );
    Some(quorate_core::Recovering { term: lost.term, vote: lost.vote, last: lost.last, commit: lost.commit })
}

/// Binds the node's one QUIC endpoint (peers and clients) with its credentials, and watches
/// its TLS files.
pub(crate) async fn bind_transport(
    config: &NodeConfig,
    id: NodeId,
    failpoints: &crate::failpoints::Failpoints,
) -> Result<(Arc<Transport<NodeMessage>>, Inbox<NodeMessage>), ServerError> {
    let paths = TlsPaths { ca: config.tls.ca.clone(), cert: config.tls.cert.clone(), key: config.tls.key.clone() };
    let credentials = Credentials::load_with_crls(paths, config.tls.crls.clone())
        .map_err(|e| ServerError::Transport(format!("TLS credentials: {e}")))?;
    let cluster = ClusterId::new(&config.cluster).map_err(|e| ServerError::Fatal(format!("cluster: {e}")))?;
    let credentials = Arc::new(credentials);
    let mut tconfig = TransportConfig::new(cluster, id, config.listen);
    tconfig.resolver = Arc::new(NodeResolver { failpoints: failpoints.clone() });
    tconfig.handshakes_per_source_per_sec = config.limits.handshakes_per_source_per_sec;
    tconfig.handshake_burst_per_source = config.limits.handshake_burst_per_source;
    tconfig.client_connections_per_identity_max =
        usize::try_from(config.limits.client_connections_per_identity_max).unwrap_or(usize::MAX);
    // A previous incarnation of this node (a restart in the same process) may hold the UDP
    // port for a moment while its connections close: retry briefly.
    let bind_deadline = Instant::now() + Duration::from_secs(5);
    let (transport, inbox) = loop {
        match Transport::<NodeMessage>::bind(tconfig.clone(), credentials.clone()).await {
            Ok(t) => break t,
            Err(quorate_transport::TransportError::Io(e))
                if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < bind_deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(ServerError::Transport(format!("cannot listen on {}: {e}", config.listen))),
        }
    };
    let transport = Arc::new(transport);
    transport.watch_tls(TLS_WATCH_INTERVAL);
    Ok((transport, inbox))
}

/// The members' addresses at start — the bootstrap peers, overridden by what the log recorded,
/// and this node's own — with every other member dialed.
pub(crate) fn start_addrs(
    config: &NodeConfig,
    id: NodeId,
    store: &RocksStore,
    transport: &Transport<NodeMessage>,
) -> Result<BTreeMap<NodeId, String>, ServerError> {
    let mut addrs: BTreeMap<NodeId, String> = BTreeMap::new();
    for (&p, a) in &config.peers {
        addrs.insert(node_id(p)?, a.clone());
    }
    addrs.extend(crate::sm::member_addrs(store)?);
    // This node's own entry is where the others dial it: the log's address, else its `peers`
    // entry; `advertise` (else `listen`) only when neither names it (a node joining). An
    // `advertise` that differs is reported, not announced: the cluster's address for a member
    // changes through the log (`member update`), as etcd's does.
    let own = addrs
        .entry(id)
        .or_insert_with(|| config.advertise.clone().unwrap_or_else(|| config.listen.to_string()))
        .clone();
    check_advertise(id, config.advertise.as_deref(), &own, false);
    // Dialed in the transport's tasks: a name is resolved before every dial, and a slow name
    // server delays no one but that peer.
    for (&p, a) in &addrs {
        if p != id {
            dial_member(transport, p, a);
        }
    }
    Ok(addrs)
}

/// Runs the node until `shutdown` completes or a fatal error. Logs the effective
/// configuration at start.
pub async fn run_until(config: NodeConfig, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    let id = config.id;
    let r = run_inner(config, shutdown).await;
    if let Err(e) = &r {
        tracing::error!(node = id, error = %e, "node stopped with an error");
    }
    r
}

async fn run_inner(config: NodeConfig, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    config.validate()?;
    let gate = crate::admission::Gate::new(&config, config.id)?;
    match config.to_toml() {
        Ok(t) => tracing::info!(version = crate::VERSION, "starting quorate node with configuration:\n{t}"),
        Err(e) => tracing::warn!(error = %e, "cannot render the configuration"),
    }
    for d in config.danger_settings() {
        tracing::warn!(setting = %d, "DANGER: a safety-weakening setting is on");
    }
    if config.engine == crate::config::Engine::Runtime {
        return crate::on_runtime::run(config, gate, shutdown).await;
    }
    let id = node_id(config.id)?;
    let data_dir = config.data_dir.clone();
    let staging_dir = data_dir.join("staging");
    let backups_dir = data_dir.join("backups");
    for d in [&data_dir, &staging_dir, &backups_dir] {
        std::fs::create_dir_all(d)
            .map_err(|e| ServerError::Storage(format!("cannot create directory {}: {e}", d.display())))?;
    }
    crate::save_stream::clear(&backups_dir);
    clear_staging(&staging_dir);

    // Storage.
    crate::restore::check_not_interrupted(&data_dir).map_err(ServerError::Storage)?;
    let (options, client_floor) = store_options(&config)?;
    let bootstrap_version = crate::versions::bootstrap_marker(&data_dir, &data_dir.join("store"), config.join)
        .map_err(ServerError::Fatal)?;
    let store = Arc::new(RocksStore::open(data_dir.join("store"), options).map_err(|e| {
        if matches!(e, StoreError::LostSyncedState(_) | StoreError::Corrupt { .. }) {
            // Evidence first, on its own line: this node refuses to start on this data.
            tracing::error!(node = id.get(), evidence = %e, "refusing to start: the store lost or damaged synced state");
        }
        ServerError::from(e)
    })?);
    // Repair: an install (or a reinstall) begun and not finished, a damaged state machine.
    crate::apply::repair_at_start(&store, id)?;
    let cluster_version = crate::versions::check_at_start(&store).map_err(ServerError::Fatal)?;
    audit_forced_recovery(&data_dir, &store, id)?;
    let applied_index = store.applied_index();
    let applied = if applied_index == LogIndex::ZERO {
        EntryId::default()
    } else {
        let term = store.term(applied_index).map_err(|e| ServerError::Storage(e.to_string()))?;
        EntryId::new(term, applied_index)
    };
    let latest = latest_snapshot_file(store.snapshot_dir(), applied_index);

    // Consensus core.
    let mut cc = core_config(&config, id);
    cc.applied = applied_index;
    cc.snapshot = latest.as_ref().map(|(m, _)| m.clone());
    cc.recovering = recovering(&store, id);
    let start = Instant::now();
    let flight_dir = Some(data_dir.join("flight"));
    let flight_budget = usize::try_from(config.limits.flight_recorder_mb << 20).unwrap_or(usize::MAX);
    let raft = crate::flight::Recorded::new(cc, store.clone(), quorate_core::Instant::ZERO, flight_dir, flight_budget)
        .map_err(|e| ServerError::Core(e.to_string()))?;

    // Transport.
    let failpoints = crate::failpoints::Failpoints::start(&data_dir, config.limits.danger_failpoints);
    failpoints.attach_store(&store);
    let (transport, inbox) = bind_transport(&config, id, &failpoints).await?;
    tracing::info!(node = %id, addr = %transport.local_addr(), applied = %applied_index, "listening");

    // Addresses: bootstrap peers, overridden by what the log recorded.
    let addrs = start_addrs(&config, id, &store, &transport)?;

    let telemetry = crate::telemetry::NodeTelemetry::new(applied_index);
    let _endpoint = crate::telemetry::serve(config.metrics_listen, &telemetry).await.map_err(ServerError::Fatal)?;
    let shared = Arc::new(Shared {
        id,
        handle: tokio::runtime::Handle::current(),
        store: store.clone(),
        transport: transport.clone(),
        inflight: Arc::new(AtomicUsize::new(0)),
        addrs: RwLock::new(addrs),
        advertise: config.advertise.clone(),
        revision: AtomicU64::new(crate::sm::revision(&*store)?),
        log_time_ms: AtomicU64::new(crate::sm::log_time_ms(&*store)?),
        cluster_version: crate::versions::AppliedClusterVersion::new(cluster_version),
        backups_dir,
        telemetry: telemetry.clone(),
        response_write_timeout: Duration::from_millis(config.limits.response_write_timeout_ms),
        failpoints: failpoints.clone(),
        replays: crate::replays::ReplayHints::default(),
        streams: crate::save_stream::Streams::default(),
        revision_tx: tokio::sync::watch::Sender::new(crate::sm::revision(&*store)?),
        watches: Arc::default(),
        leases: crate::leases::LeaseClock::default(),
    });
    crate::versions::sync_transport(&shared);

    // Apply thread.
    let (events_tx, events_rx) = mpsc::channel(256);
    let (apply_tx, apply_rx) = mpsc::channel(APPLY_QUEUE);
    let applier = Applier::new(shared.clone(), events_tx.clone(), applied);
    // Why the apply thread ended (a panic), written before its channel closes: the driver
    // stops on the close at once, with this reason.
    let apply_exit: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let exit = apply_exit.clone();
    let apply_thread = std::thread::Builder::new()
        .name(format!("quorate-apply-{id}"))
        .spawn(move || {
            let mut rx = apply_rx;
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| applier.run(&mut rx)));
            if let Err(panic) = run {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".into());
                *exit.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(format!("it panicked: {what}"));
            }
            drop(rx);
        })
        .map_err(|e| ServerError::Fatal(format!("cannot start the apply thread: {e}")))?;

    // The staging worker of resumable snapshot transfers to this node.
    let pieces = {
        let events = events_tx.clone();
        crate::transfer::spawn_receiver(crate::transfer::ReceiveJob {
            dir: staging_dir.clone(),
            store: store.clone(),
            transport: shared.transport.clone(),
            staging_bytes_max: config.limits.snapshot_staging_mb.saturating_mul(1 << 20),
            floor_bytes: config.limits.free_space_floor_mb.saturating_mul(1 << 20),
            on_stored: Box::new(move |from, term, meta, path| {
                let _ = events.blocking_send(Event::SnapshotStaged { from, term, meta, path });
            }),
        })
    };

    let committer = GroupCommitter::new(store.clone(), GroupOptions::default())?;
    let (persist_tx, persist_rx) = mpsc::channel(PERSIST_QUEUE);

    let halt = config.telemetry.halt_on_invariant_violation;
    let mut obs = crate::telemetry::Observer::new(telemetry.clone(), raft.term().0, raft.commit_index().0, halt);
    obs.trace_every(config.telemetry.trace_proposals_every);
    let auto_compact =
        crate::history::AutoCompact::new(config.history.retain_revisions, config.history.retain_ms, Instant::now());
    let mut driver = Driver {
        shared: shared.clone(),
        config,
        raft,
        committer,
        start,
        apply_tx,
        apply_exit,
        apply_backlog: Default::default(),
        persist_tx,
        persist_rx,
        events_tx,
        events_rx,
        reads: HashMap::new(),
        next_read: 1,
        last_time_ms: 0,
        last_leader_contact: None,
        latest_snapshot: latest,
        sending: HashMap::new(),
        piece_acks: HashMap::new(),
        pieces,
        staging: None,
        staging_dir,
        obs,
        disk: (Instant::now(), true),
        client_floor,
        peer_disks: crate::peer_disks::PeerDisks::default(),
        failpoints,
        gate,
        auto_finalize: crate::versions::AutoFinalize::new(bootstrap_version, Instant::now()),
        auto_compact,
        waiting: crate::waiting::Waiting::new(),
    };
    let result = driver.run(inbox, shutdown).await;
    if let Err(e) = &result {
        let _ = driver.raft.dump(&format!("error: {e}"));
    }
    // Orderly stop: the apply thread ends when its channel closes; the committer finishes
    // queued batches; nothing keeps the store open afterwards, so it can be reopened.
    driver.stop();
    let _ = tokio::task::spawn_blocking(move || apply_thread.join()).await;
    drop(shared);
    // Snapshot senders were aborted.
    let_go(transport, &store).await;
    tracing::info!(node = %id, "node stopped");
    result
}

/// The end of a stop: waits (bounded) until the tasks still answering let go of the transport,
/// closes it so that the address can be bound again at once, then waits (bounded) until they
/// let go of the store, so that it can be opened again.
pub(crate) async fn let_go(transport: Arc<Transport<NodeMessage>>, store: &Arc<RocksStore>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Arc::strong_count(&transport) > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    match Arc::try_unwrap(transport) {
        Ok(t) => t.shutdown().await,
        Err(_) => tracing::warn!("transport still referenced at shutdown"),
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Arc::strong_count(store) > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if Arc::strong_count(store) > 1 {
        tracing::warn!("the store is still referenced at shutdown");
    }
}

struct Driver {
    shared: Arc<Shared>,
    config: NodeConfig,
    raft: crate::flight::Recorded<Arc<RocksStore>>,
    committer: GroupCommitter,
    start: Instant,
    apply_tx: mpsc::Sender<ApplyMsg>,
    /// Why the apply thread ended, if it did (set before its channel closes).
    apply_exit: Arc<std::sync::Mutex<Option<String>>>,
    /// Messages for the apply thread waiting for room in its channel (the driver never
    /// waits on the apply thread; see [`crate::apply_backlog`]).
    apply_backlog: crate::apply_backlog::ApplyBacklog,
    persist_tx: mpsc::Sender<Persisted>,
    persist_rx: mpsc::Receiver<Persisted>,
    events_tx: mpsc::Sender<Event>,
    events_rx: mpsc::Receiver<Event>,
    reads: HashMap<ReadId, PendingRead>,
    next_read: u64,
    last_time_ms: u64,
    last_leader_contact: Option<Instant>,
    latest_snapshot: Option<(SnapshotMeta, PathBuf)>,
    /// Snapshot streams to followers, with the term they were started in (aborted when this
    /// node is no longer leader of that term).
    sending: HashMap<NodeId, (Term, tokio::task::AbortHandle)>,
    /// The acknowledgement queues of the resumable transfers among `sending`, by follower,
    /// with their term.
    piece_acks: HashMap<NodeId, (Term, mpsc::Sender<quorate_api::SnapshotAck>)>,
    /// The staging worker of resumable transfers to this node ([`crate::transfer`]).
    pieces: mpsc::Sender<crate::transfer::Incoming>,
    staging: Option<Staging>,
    staging_dir: PathBuf,
    /// Metrics, traces and invariant checks.
    obs: crate::telemetry::Observer,
    /// When free space was last checked, and whether it was above the client floor.
    disk: (Instant, bool),
    /// Client writes are refused below this much free space (bytes; 0: not checked).
    client_floor: u64,
    /// The other members' free-space status, and when this node last sent its own.
    peer_disks: crate::peer_disks::PeerDisks,
    /// Injected faults (off unless `limits.danger_failpoints`).
    failpoints: crate::failpoints::Failpoints,
    /// Admission control for client requests.
    gate: Arc<crate::admission::Gate>,
    /// Raises a new cluster's version without `cluster finalize`.
    auto_finalize: crate::versions::AutoFinalize,
    /// The leader's automatic compaction of the history.
    auto_compact: crate::history::AutoCompact,
    /// Client requests read from the inbox and checked, waiting for dispatch ([`crate::waiting`]).
    waiting: crate::waiting::Waiting<WaitingRequest>,
}

/// A client request read from the inbox, well-formed and allowed by its role, waiting for its
/// dispatch (admission first).
struct WaitingRequest {
    attempt: u32,
    session: Option<quorate_api::Sequenced>,
    body: Request,
    principal: quorate_admission::Principal,
    responder: Responder,
}

impl Driver {
    /// Drops everything the driver holds, the apply channel and the committer first.
    fn stop(self) {
        let Driver { raft, committer, apply_tx, sending, shared, staging, pieces, .. } = self;
        drop(pieces);
        for (_, (_, h)) in sending {
            h.abort();
        }
        drop(apply_tx);
        drop(committer);
        drop(raft);
        drop(staging);
        drop(shared);
    }
}

/// The error the node stops with once the apply thread is gone; `why` is what it left.
fn apply_stopped_because(why: Option<String>) -> ServerError {
    match why {
        Some(why) => ServerError::Fatal(format!("the apply thread stopped: {why}")),
        None => ServerError::Fatal("the apply thread stopped".into()),
    }
}

/// A peer's message dropped: counted by reason, logged at debug (a removed node may keep
/// sending for a long time).
pub(crate) fn refused_peer(from: NodeId, reason: &'static str, what: &str) {
    use quorate_telemetry::names as n;
    metrics::counter!(n::PEER_MESSAGES_REFUSED_TOTAL, n::LABEL_REASON => reason).increment(1);
    tracing::debug!(peer = %from, reason, "peer message dropped: {what}");
}

impl Driver {
    /// The error the node stops with once the apply thread is gone.
    fn apply_stopped(&self) -> ServerError {
        apply_stopped_because(self.apply_exit.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
    }

    fn now(&self) -> quorate_core::Instant {
        quorate_core::Instant(self.failpoints.clock(self.start.elapsed()).as_nanos().min(u128::from(u64::MAX)) as u64)
    }

    async fn run(
        &mut self,
        mut inbox: Inbox<NodeMessage>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServerError> {
        tokio::pin!(shutdown);
        let mut sweep = tokio::time::interval(Duration::from_millis(500));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.drain_ready().await?;
            self.abort_stale_snapshot_sends();
            self.abort_stale_save_stream();
            self.obs.observe(&self.raft).map_err(ServerError::Core)?;
            self.raft.dump_on_violations(crate::invariants::violations_total());
            let wake = self.raft.poll_timeout().map_or_else(
                || Instant::now() + Duration::from_secs(3600),
                |t| self.start + self.failpoints.real_at(Duration::from_nanos(t.as_nanos())),
            );
            tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                Some(p) = self.persist_rx.recv() => self.on_persisted(p).await?,
                Some(ev) = self.events_rx.recv() => self.on_event(ev).await?,
                // A dead apply thread (a panic) stops the node now, not at the next commit; a
                // state-machine error arrives first, as a fatal event (above).
                () = self.apply_tx.closed() => return Err(self.apply_stopped()),
                permit = self.apply_tx.clone().reserve_owned(), if !self.apply_backlog.is_empty() => {
                    let permit = permit.map_err(|_| self.apply_stopped())?;
                    if let Some(msg) = self.apply_backlog.pop() {
                        permit.send(msg);
                    }
                    self.apply_backlog.flush(&self.apply_tx)?;
                }
                m = inbox.recv() => match m {
                    Some(m) => {
                        self.on_incoming(m).await?;
                        self.on_waiting(&mut inbox).await?;
                        self.dispatch_waiting().await?;
                    }
                    None => return Err(ServerError::Transport("the transport stopped".into())),
                },
                () = tokio::time::sleep_until(wake.into()) => {
                    let now = self.now();
                    self.raft.handle_timeout(now);
                }
                _ = sweep.tick() => self.sweep(),
                // Last: client requests still waiting once nothing else is ready.
                () = std::future::ready(()), if !self.waiting.is_empty() => self.dispatch_waiting().await?,
            }
        }
    }

    /// Handles the messages already waiting in the inbox, up to [`INBOX_BATCH_MAX`] in all,
    /// before the next `Ready`: a burst (a resumed peer's backlog of answers, many clients at
    /// once) is one batch for the core instead of one `Ready` per message. A leader whose
    /// follower was paused for seconds receives the answers to every heartbeat of the pause
    /// at once; with a `Ready` after each, each answer re-armed a probe that re-read and
    /// re-sent the follower's whole backlog (up to `msg_bytes_max`), and the leader stalled
    /// for seconds (issue 18, the "SIGCONT stall"; `cargo xtask chaos regress sigcont-stall`).
    ///
    /// Client requests read here only join their principals' lanes ([`crate::waiting`]): up to
    /// [`crate::waiting::REQUESTS_READ_MAX`] of them are read besides the peer messages, so that
    /// a burst of one principal's requests waits in its own lane rather than in the inbox ahead
    /// of everyone else's.
    async fn on_waiting(&mut self, inbox: &mut Inbox<NodeMessage>) -> Result<(), ServerError> {
        let (mut peers, mut requests) = (1, 0);
        while peers < INBOX_BATCH_MAX && requests < crate::waiting::REQUESTS_READ_MAX {
            match ready_now(inbox.recv()) {
                Some(Some(m)) => {
                    if matches!(m, Incoming::Request(_)) {
                        requests += 1;
                    } else {
                        peers += 1;
                    }
                    self.on_incoming(m).await?;
                }
                // Nothing waiting (or the transport stopped: the next `recv` says so).
                _ => break,
            }
        }
        Ok(())
    }

    /// Dispatches up to [`crate::waiting::DISPATCH_BATCH_MAX`] waiting client requests.
    async fn dispatch_waiting(&mut self) -> Result<(), ServerError> {
        for _ in 0..crate::waiting::DISPATCH_BATCH_MAX {
            let Some(w) = self.waiting.pop() else { break };
            self.admit_and_dispatch(w).await?;
        }
        Ok(())
    }

    /// Aborts the snapshot streams started in an earlier term, or while this node was leader
    /// and no longer is: a deposed leader's stream must not run on beside the new leader's.
    fn abort_stale_snapshot_sends(&mut self) {
        if self.sending.is_empty() {
            return;
        }
        let (term, leader) = (self.raft.term(), self.raft.role() == Role::Leader);
        self.sending.retain(|to, (started, task)| {
            let keep = leader && *started == term && !task.is_finished();
            if !keep && !task.is_finished() {
                task.abort();
                tracing::info!(peer = %to, "snapshot stream aborted: no longer leader of its term");
            }
            keep
        });
        let sending = &self.sending;
        self.piece_acks.retain(|to, _| sending.contains_key(to));
    }

    /// Ends the snapshot save streamed from this node if it is no longer the leader of the
    /// term the save started in: a deposed leader never completes a save.
    fn abort_stale_save_stream(&mut self) {
        if self.shared.streams.active() {
            let (term, leader) = (self.raft.term(), self.raft.role() == Role::Leader);
            let _ = self.shared.streams.check(term, leader, Instant::now());
        }
    }

    async fn drain_ready(&mut self) -> Result<(), ServerError> {
        for _ in 0..64 {
            if let Some(h) = self.raft.halted() {
                return Err(ServerError::Core(format!("consensus core halted: {h}")));
            }
            if !self.raft.has_ready() {
                break;
            }
            let rd = self.raft.ready();
            if rd.is_empty() {
                break;
            }
            if rd.recovered {
                // Everything the recovery rests on is durable (the core said so): the evidence
                // goes, and the next start is a normal one.
                self.shared.store.recovered().map_err(ServerError::from)?;
                tracing::info!(
                    node = self.shared.id.get(),
                    term = self.raft.term().0,
                    "recovered from lost synced state: a leader caught this node up; it votes again"
                );
            }
            if let Some(p) = rd.persist {
                let batch = PersistBatch {
                    hard_state: p.hard_state,
                    truncate_from: p.entries.first().map(|e| e.index),
                    entries: p.entries,
                    install: p.install.clone(),
                    compact: p.compact,
                    skip_fsync: !p.sync || self.config.limits.danger_skip_fsync,
                };
                let tx = self.persist_tx.clone();
                let (fsync, synced, submitted) = (self.gate.fsync_probe(), !batch.skip_fsync, Instant::now());
                let (io, install) = (p.io, p.install);
                // The callback runs on the committer's writer thread, never in the runtime.
                let fp = self.failpoints.clone();
                let fsync_timer = crate::telemetry::FsyncTimer::start(!batch.skip_fsync, batch.compact.is_some());
                self.committer.submit_with(batch, move |result| {
                    fsync_timer.done();
                    fp.before_persist_completion();
                    if synced {
                        fsync.record(submitted.elapsed());
                    }
                    let _ = tx.blocking_send(Persisted { io, install, result });
                })?;
            }
            for m in rd.messages {
                let to = m.to;
                if let Err(e) = self.shared.transport.try_send(to, NodeMessage::Raft(m)) {
                    tracing::trace!(peer = %to, error = %e, "message dropped");
                }
            }
            if !rd.committed.is_empty() {
                self.apply_backlog.push(&self.apply_tx, ApplyMsg::Entries(rd.committed)).await?;
            }
            for r in rd.reads {
                if let Some(p) = self.reads.remove(&r.id) {
                    let msg = match p.what {
                        Confirming::Read(req) => ApplyMsg::Read {
                            index: r.index,
                            req,
                            responder: p.responder,
                            staleness: None,
                            deadline: p.deadline,
                        },
                        Confirming::Save(config) => ApplyMsg::Backup {
                            config,
                            index: r.index,
                            responder: p.responder,
                            deadline: p.deadline,
                            stream: None,
                        },
                        Confirming::Stream(config, stream) => ApplyMsg::Backup {
                            config,
                            index: r.index,
                            responder: p.responder,
                            deadline: p.deadline,
                            stream: Some(stream),
                        },
                        Confirming::StreamEnd(stream) => {
                            self.end_stream(stream, p.responder);
                            continue;
                        }
                    };
                    self.apply_backlog.push(&self.apply_tx, msg).await?;
                }
            }
            for f in rd.failed_reads {
                if let Some(p) = self.reads.remove(&f.id) {
                    let e = match p.what {
                        // A save whose round failed was asked of a leader that no longer is:
                        // NotLeader, so the client asks the leader it names.
                        Confirming::Save(_) | Confirming::Stream(..) => self.leader_hint(),
                        Confirming::StreamEnd(_) => crate::save_stream::unconfirmed_end(),
                        Confirming::Read(_) => self.read_error(&f.error),
                    };
                    if let Some(stream) = p.what.stream() {
                        self.shared.streams.release(stream);
                    }
                    p.responder.send(Err(e), None);
                }
            }
            if let Some(meta) = rd.take_snapshot {
                self.apply_backlog.push(&self.apply_tx, ApplyMsg::TakeSnapshot(meta)).await?;
            }
            for s in rd.send_snapshots {
                self.start_snapshot_send(s.to, s.meta);
            }
        }
        Ok(())
    }

    async fn on_persisted(&mut self, p: Persisted) -> Result<(), ServerError> {
        if let Err(e) = p.result {
            return Err(ServerError::Storage(format!("persisting consensus state failed: {e}")));
        }
        if let Some(meta) = p.install {
            // Before the core hands out entries after the snapshot.
            self.apply_backlog.push(&self.apply_tx, ApplyMsg::Install(meta)).await?;
        }
        let now = self.now();
        self.raft.persisted(now, p.io);
        Ok(())
    }

    async fn on_event(&mut self, ev: Event) -> Result<(), ServerError> {
        let now = self.now();
        match ev {
            Event::Fatal(e) => return Err(ServerError::Storage(e)),
            Event::SnapshotTaken(meta, path) => {
                // The previous file stays: the store deletes snapshot files below its log floor
                // only once the compaction that moves the floor is durable, so a crash in between
                // never leaves the store without the snapshot its log continues from.
                let _previous = snapshot_taken_keeps_files(&mut self.latest_snapshot, meta.clone(), path);
                self.raft.snapshot_taken(now, meta);
            }
            Event::SnapshotSkipped(meta) => {
                // Re-arm the core's request (it asks again after the next applied entry), also
                // when this node has no snapshot yet to report instead.
                tracing::info!(asked = %meta.last.index, "snapshot skipped (see the apply thread's reason); the core will ask again");
                self.raft.snapshot_skipped(now);
            }
            Event::SnapshotStaged { from, term, meta, path } => {
                tracing::debug!(peer = %from, index = %meta.last.index, "snapshot staged");
                match self.raft.install_snapshot(now, from, term, meta.clone()) {
                    Ok(true) => {
                        tracing::info!(index = %meta.last.index, leader = %from, "installing snapshot");
                        self.latest_snapshot = Some((meta, path));
                    }
                    Ok(false) => {
                        tracing::info!(index = %meta.last.index, "received snapshot not needed (already caught up)");
                        if self.latest_snapshot.as_ref().is_none_or(|(_, p)| *p != path) {
                            let _ = std::fs::remove_file(path);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "snapshot refused");
                        if self.latest_snapshot.as_ref().is_none_or(|(_, p)| *p != path) {
                            let _ = std::fs::remove_file(path);
                        }
                    }
                }
            }
            Event::SnapshotSendFailed(to, term) => {
                // A stream of an earlier term says nothing about the current one.
                if self.sending.get(&to).is_some_and(|(t, _)| *t == term) {
                    self.sending.remove(&to);
                    self.piece_acks.remove(&to);
                    self.raft.snapshot_send_failed(now, to);
                }
            }
            Event::NotReplay { session, body, responder } => {
                self.dispatch(Some(session), body, *responder).await?;
            }
            Event::WatchReady { watch, responder } => {
                self.read(ReadReq::Watch(watch), ReadConsistency::Stale, *responder).await?;
            }
            Event::TxnBounded { session, txn, responder } => {
                self.propose_write(session, CommandOp::Txn(txn), *responder).await?;
            }
            Event::MemberAddrResolved { new, addr, resolved, responder } => {
                self.member_addr_resolved(new, addr, resolved, *responder).await?;
            }
            Event::MemberUpdateResolved { id, addr, resolved, responder } => {
                self.member_update_resolved(id, addr, resolved, *responder).await?;
            }
            Event::SnapshotSent(to, term) => {
                crate::telemetry::snapshot_sent();
                if self.sending.get(&to).is_some_and(|(t, _)| *t == term) {
                    self.sending.remove(&to);
                    self.piece_acks.remove(&to);
                }
            }
        }
        Ok(())
    }

    /// Whether consensus traffic from `from` is accepted: a member of this node's
    /// configuration (voters of both halves, learners), or the leader this node follows in its
    /// term (a leader that removed itself keeps leading until its removal commits), or, while
    /// this node has no configuration yet (it is joining), one of its configured peers. Any
    /// other holder of a node certificate of the cluster — a removed node — is ignored.
    fn peer_allowed(&self, from: NodeId) -> bool {
        let c = self.raft.configuration();
        if c.is_voter(from) || c.is_learner(from) || self.raft.leader() == Some(from) {
            return true;
        }
        let unconfigured = c.voters.is_empty() && c.voters_outgoing.is_empty() && c.learners.is_empty();
        unconfigured && self.config.peers.contains_key(&from.get())
    }

    async fn on_incoming(&mut self, m: Incoming<NodeMessage>) -> Result<(), ServerError> {
        use quorate_telemetry::names::peer_refused;
        match m {
            Incoming::Peer { from, message, .. } => {
                if !self.peer_allowed(from) {
                    refused_peer(from, peer_refused::NOT_MEMBER, "not a member of the configuration");
                    return Ok(());
                }
                match message {
                    NodeMessage::Raft(msg) => {
                        if msg.from != from {
                            tracing::warn!(peer = %from, claimed = %msg.from, "message claims another sender; dropped");
                            return Ok(());
                        }
                        // Only the leader of this node's term hands leadership over.
                        let from_leader = self.raft.leader() == Some(from) && msg.term == self.raft.term();
                        if matches!(msg.body, quorate_core::MessageBody::TimeoutNow) && !from_leader {
                            refused_peer(from, peer_refused::NOT_LEADER, "TimeoutNow not from the current leader");
                            return Ok(());
                        }
                        if self.raft.leader() == Some(from) {
                            self.last_leader_contact = Some(Instant::now());
                        }
                        let now = self.now();
                        self.raft.handle_message(now, msg);
                    }
                    NodeMessage::SnapshotChunk(c) => self.on_chunk(from, c),
                    NodeMessage::SnapshotPiece(p) => self.on_piece(from, p),
                    NodeMessage::SnapshotAck(a) => {
                        // Only to a transfer this node runs, in its term (the queue is
                        // bounded; a dropped acknowledgement is repeated by the next one).
                        if let Some((term, acks)) = self.piece_acks.get(&from)
                            && *term == a.term
                        {
                            let _ = acks.try_send(a);
                        }
                    }
                    NodeMessage::HashSamples(s) => {
                        let c = self.raft.configuration();
                        if c.is_voter(from) || c.is_learner(from) {
                            self.obs.hash_samples_from(self.shared.id, from, &s);
                        } else {
                            refused_peer(from, peer_refused::NOT_MEMBER, "hash samples from a non-member");
                        }
                    }
                    NodeMessage::DiskStatus(s) => {
                        self.peer_disks.received(self.shared.id, from, self.raft.configuration(), s, Instant::now());
                    }
                    _ => tracing::debug!(peer = %from, "unexpected message kind from a peer"),
                }
            }
            Incoming::Request(req) => self.on_request(req).await?,
            _ => {}
        }
        Ok(())
    }

    fn sweep(&mut self) {
        self.raft.poll_dump_request();
        self.auto_finalize();
        self.auto_compact();
        self.expire_leases();
        self.send_disk_status();
        let resources = crate::telemetry::Resources {
            disk_ok: self.disk.1,
            floor_bytes: self.client_floor,
            admission: self.gate.concurrency(),
            waiting: self.waiting.sizes(),
        };
        self.obs.sample(&self.raft, &self.shared, resources, self.failpoints.corrupt_hash_samples());
        let now = Instant::now();
        let expired: Vec<ReadId> = self.reads.iter().filter(|(_, p)| p.deadline <= now).map(|(id, _)| *id).collect();
        for id in expired {
            if let Some(p) = self.reads.remove(&id) {
                if let Some(stream) = p.what.stream() {
                    self.shared.streams.release(stream);
                }
                p.responder.send(Err(ApiError::Unavailable("read not confirmed in time; retry".into())), None);
            }
        }
        if let Some(stream) = self.shared.streams.check(self.raft.term(), self.raft.role() == Role::Leader, now) {
            tracing::debug!(stream, "snapshot stream ended by the sweep");
        }
    }

    /// A new cluster's leader raises the cluster version once every member can follow
    /// ([`crate::versions::AutoFinalize`]); the entry is applied like `cluster finalize`'s.
    fn auto_finalize(&mut self) {
        let me = self.shared.id;
        let others: Vec<NodeId> = self.raft.configuration().members().filter(|&m| m != me).collect();
        let applied = crate::versions::cluster_version(&self.shared);
        let transport = &self.shared.transport;
        let Some(version) =
            self.auto_finalize.due(Instant::now(), self.raft.role() == Role::Leader, applied, &others, |id| {
                transport.peer_protocol_generation(id)
            })
        else {
            return;
        };
        let cmd = Command { session: None, time_ms: self.next_time_ms(), op: CommandOp::SetClusterVersion { version } };
        let result = quorate_api::encode_command(&cmd)
            .map_err(|e| e.to_string())
            .and_then(|bytes| self.raft.propose(self.now(), Data::from(bytes)).map_err(|e| e.to_string()));
        match result {
            Ok(at) => tracing::info!(version, index = %at.index, "new cluster: proposing its cluster version"),
            Err(e) => tracing::warn!(version, error = %e, "new cluster: cannot propose its cluster version yet"),
        }
    }

    /// The leader proposes a compaction of the history when `[history]`'s rules allow one
    /// ([`crate::history::AutoCompact`]); it is applied like `quorate kv compact`'s.
    fn auto_compact(&mut self) {
        let now = Instant::now();
        let is_leader = self.raft.role() == Role::Leader;
        let store = &self.shared.store;
        let history = match crate::sm::history_state(&**store) {
            Ok(Some(h)) => Some((self.shared.revision.load(Ordering::Acquire), h.compacted)),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(error = %e, "history state not readable now");
                None
            }
        };
        let Some(revision) = self.auto_compact.due(now, is_leader, history) else { return };
        let cmd = Command { session: None, time_ms: self.next_time_ms(), op: CommandOp::Compact { revision } };
        let result = quorate_api::encode_command(&cmd)
            .map_err(|e| e.to_string())
            .and_then(|bytes| self.raft.propose(self.now(), Data::from(bytes)).map_err(|e| e.to_string()));
        match result {
            Ok(at) => tracing::debug!(revision, index = %at.index, "proposing an automatic compaction"),
            Err(e) => tracing::debug!(revision, error = %e, "cannot propose an automatic compaction now"),
        }
    }

    /// The leader's lease clock ([`crate::leases`]): takes office in a new term (every lease
    /// gets its full TTL), then proposes the expiry of the leases whose deadline passed.
    fn expire_leases(&mut self) {
        let is_leader = self.raft.role() == Role::Leader;
        if !is_leader || crate::versions::cluster_version(&self.shared) < crate::sm::leases::LEASES_CLUSTER_VERSION {
            self.shared.leases.step_down();
            return;
        }
        let now = Instant::now();
        let applied = self.shared.store.applied_index();
        let applied_term = if applied == LogIndex::ZERO { Ok(0) } else { self.shared.store.term(applied).map(|t| t.0) };
        let applied_term = match applied_term {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "leases: cannot read the applied entry's term now");
                return;
            }
        };
        match self.shared.leases.take_office(self.raft.term().0, applied_term, now, &*self.shared.store) {
            Ok(true) => tracing::debug!(term = %self.raft.term(), "leases: took office, every lease has its full TTL"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "leases: cannot load the lease table now");
                return;
            }
        }
        if !self.shared.leases.in_office(self.raft.term().0) {
            // Not yet: the deadlines may be an earlier term's.
            return;
        }
        // The test-only late-expiry weakening may look at the deadlines as they were earlier.
        let Some(due_at) = self.failpoints.lease_due_at(now) else { return };
        for id in self.shared.leases.due(due_at, crate::leases::EXPIRES_PER_SWEEP) {
            let cmd = Command { session: None, time_ms: self.next_time_ms(), op: CommandOp::LeaseExpire { id } };
            let result = quorate_api::encode_command(&cmd)
                .map_err(|e| e.to_string())
                .and_then(|bytes| self.raft.propose(self.now(), Data::from(bytes)).map_err(|e| e.to_string()));
            match result {
                Ok(at) => tracing::debug!(lease = id.0, index = %at.index, "proposing a lease's expiry"),
                Err(e) => tracing::debug!(lease = id.0, error = %e, "cannot propose a lease's expiry now"),
            }
        }
    }

    /// A lease request the leader answers from its clock (keep-alive, list, time to live).
    /// Only the clock is read here, in the driver (a keep-alive moves one deadline; a list
    /// takes the principal's own leases through the clock's index by owner); what the lease
    /// table holds (key counts, attached keys) is read by the read workers, like any read, so
    /// that no lease request reads the store in the driver.
    async fn lease_read(&mut self, body: Request, responder: Responder) -> Result<(), ServerError> {
        let gate = crate::versions::require(&self.shared, crate::sm::leases::LEASES_CLUSTER_VERSION, "a lease");
        if let Err(e) = gate {
            responder.send(Err(e), None);
            return Ok(());
        }
        if self.raft.role() != Role::Leader {
            responder.send(Err(self.leader_hint()), None);
            return Ok(());
        }
        if !self.shared.leases.in_office(self.raft.term().0) {
            responder.send(Err(ApiError::Unavailable("the leader is loading its leases; retry".into())), None);
            return Ok(());
        }
        let (principal, admin, now) = (responder.principal().to_string(), responder.is_admin(), Instant::now());
        let gone = |id: quorate_api::LeaseId| {
            ApiError::InvalidRequest(format!("lease {} not found (revoked, expired, or not yours)", id.0))
        };
        let read = match body {
            Request::LeaseKeepAlive { id } => {
                let kept = self
                    .shared
                    .leases
                    .keep_alive(id, &principal, admin, now)
                    .map(|ttl_ms| Response::LeaseKeptAlive { id, ttl_ms });
                responder.send(kept, None);
                return Ok(());
            }
            Request::LeaseTimeToLive { id, keys } => match self.shared.leases.get(id, &principal, admin, now) {
                Some(seen) => ReadReq::Leases { seen: vec![seen], keys, list: false },
                None => {
                    responder.send(Err(gone(id)), None);
                    return Ok(());
                }
            },
            Request::LeaseList => {
                ReadReq::Leases { seen: self.shared.leases.list(&principal, now), keys: false, list: true }
            }
            _ => {
                responder.send(Err(ApiError::InvalidRequest("not a lease request".into())), None);
                return Ok(());
            }
        };
        // Served from this leader's applied state, which holds every lease its clock knows
        // (the clock took office only after applying its term's first entry).
        self.read(read, ReadConsistency::Stale, responder).await
    }

    /// Sends this node's free-space status to the other members when it is due
    /// ([`crate::peer_disks::PeerDisks::send_due`]).
    fn send_disk_status(&mut self) {
        if !self.peer_disks.send_due(crate::versions::cluster_version(&self.shared), Instant::now()) {
            return;
        }
        let refusing = !self.disk_ok();
        let free_bytes = self.shared.store.free_space_bytes().unwrap_or(u64::MAX);
        let status = DiskStatus { refusing, free_bytes, floor_bytes: self.client_floor };
        let me = self.shared.id;
        let others: Vec<NodeId> = self.raft.configuration().members().filter(|&m| m != me).collect();
        for to in others {
            if let Err(e) = self.shared.transport.try_send(to, NodeMessage::DiskStatus(status)) {
                tracing::trace!(peer = %to, error = %e, "disk status dropped");
            }
        }
    }

    fn leader_hint(&self) -> ApiError {
        let leader = self.raft.leader().filter(|&l| l != self.shared.id || self.raft.role() == Role::Leader);
        ApiError::NotLeader { leader, addr: leader.and_then(|l| self.shared.addr_of(l)) }
    }

    fn read_error(&self, e: &ReadError) -> ApiError {
        read_refusal(e, || self.leader_hint())
    }

    fn propose_error(&self, e: ProposeError) -> ApiError {
        self.obs.failed(crate::telemetry::propose_error_reason(&e));
        propose_refusal(e, || self.leader_hint())
    }

    fn conf_error(&self, e: ConfChangeError) -> ApiError {
        conf_refusal(e, || self.leader_hint())
    }

    /// Log time for a new command: never decreasing along the log.
    fn next_time_ms(&mut self) -> u64 {
        let wall =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let t = wall.max(self.last_time_ms).max(self.shared.log_time_ms.load(Ordering::Relaxed));
        self.last_time_ms = t;
        t
    }

    fn disk_ok(&mut self) -> bool {
        let floor = self.client_floor;
        if floor == 0 && !self.failpoints.disk_full() {
            return true;
        }
        if self.disk.0.elapsed() >= Duration::from_millis(250) {
            let ok = !self.failpoints.disk_full()
                && quorate_storage::check_free_space(self.shared.store.dir(), floor).is_ok();
            if !ok && self.disk.1 {
                tracing::warn!(floor_mb = floor >> 20, "free disk space below the floor; refusing writes");
            } else if ok && !self.disk.1 {
                tracing::info!(floor_mb = floor >> 20, "free disk space above the floor again");
            }
            self.disk = (Instant::now(), ok);
        }
        self.disk.1
    }

    fn status(&self) -> NodeStatus {
        let s = self.raft.status();
        NodeStatus {
            id: s.id,
            role: s.role,
            term: s.term,
            leader: s.leader,
            commit: s.commit,
            applied: self.shared.store.applied_index(),
            last_index: s.last_index,
            config: s.config,
            config_version: s.config_version,
            snapshot_index: s.snapshot_index,
            revision: self.shared.revision.load(Ordering::Relaxed),
            binary_version: crate::VERSION.to_string(),
            storage_format: quorate_storage::FORMAT_VERSION,
            danger: self.config.danger_settings(),
        }
    }

    fn health(&mut self) -> quorate_api::NodeHealth {
        let disk_ok = self.disk_ok();
        let store = &self.shared.store;
        quorate_api::NodeHealth {
            id: self.shared.id,
            refusing_writes: !disk_ok || store.out_of_space().is_some(),
            recovering: self.raft.recovering().is_some(),
            disk_free_bytes: store.free_space_bytes().ok(),
            disk_floor_bytes: self.client_floor,
            db_bytes: store.live_files_bytes().ok(),
        }
    }

    fn members(&self) -> Vec<Member> {
        let c = self.raft.configuration();
        let mut out = Vec::new();
        let mut push = |id: NodeId, kind| out.push(Member { id, addr: self.shared.addr_of(id), kind });
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

    async fn register(&mut self, at: EntryId, responder: Responder) -> Result<(), ServerError> {
        self.obs.proposed(at);
        let msg = ApplyMsg::Register { at, responder, deadline: Instant::now() + REQUEST_DEADLINE };
        self.apply_backlog.push(&self.apply_tx, msg).await
    }

    async fn propose_write(
        &mut self,
        session: Option<quorate_api::Sequenced>,
        op: CommandOp,
        responder: Responder,
    ) -> Result<(), ServerError> {
        if self.raft.role() != Role::Leader {
            responder.send(Err(self.leader_hint()), None);
            return Ok(());
        }
        if !self.disk_ok() {
            let e = crate::admission::shed(quorate_api::OverloadReason::DiskSpace, Duration::from_secs(1));
            responder.send(Err(e), None);
            return Ok(());
        }
        if self.peer_disks.voters_short_of_space(self.shared.id, self.raft.configuration(), Instant::now()).is_some() {
            let e = crate::admission::shed(quorate_api::OverloadReason::DiskSpace, Duration::from_secs(1));
            responder.send(Err(e), None);
            return Ok(());
        }
        let version = crate::versions::cluster_version(&self.shared);
        let op = owned_op(version, session.is_some(), op, responder.principal());
        let cmd = Command { session, time_ms: self.next_time_ms(), op };
        let bytes = match quorate_api::encode_command(&cmd) {
            Ok(b) => b,
            Err(e) => {
                responder.send(Err(ApiError::InvalidRequest(e.to_string())), None);
                return Ok(());
            }
        };
        let now = self.now();
        match self.raft.propose(now, Data::from(bytes)) {
            Ok(at) => self.register(at, responder).await,
            Err(e) => {
                responder.send(Err(self.propose_error(e)), None);
                Ok(())
            }
        }
    }

    async fn read(&mut self, req: ReadReq, level: ReadConsistency, responder: Responder) -> Result<(), ServerError> {
        let deadline = Instant::now() + REQUEST_DEADLINE;
        let level = match level {
            ReadConsistency::Stale | ReadConsistency::BoundedStale(_) => {
                let since_leader_ms = if self.raft.role() == Role::Leader {
                    Some(0)
                } else {
                    self.last_leader_contact.map(|t| t.elapsed().as_millis() as u64)
                };
                let known_commit = self.raft.commit_index();
                if let ReadConsistency::BoundedStale(bound) = level {
                    let gate = crate::versions::require(
                        &self.shared,
                        crate::versions::BOUNDED_STALENESS_CLUSTER_VERSION,
                        "a bounded-staleness read",
                    );
                    // Checked against the applied index now: the read is served at this index
                    // or a later one, so the lag it is served with is at most this one.
                    let applied = self.shared.store.applied_index();
                    let refused = gate.err().or_else(|| {
                        bound.violation(known_commit.0, applied.0, since_leader_ms).map(ApiError::Unavailable)
                    });
                    if let Some(e) = refused {
                        responder.send(Err(e), None);
                        return Ok(());
                    }
                }
                let staleness = Staleness { known_commit, since_leader_ms };
                let msg =
                    ApplyMsg::Read { index: LogIndex::ZERO, req, responder, staleness: Some(staleness), deadline };
                return self.apply_backlog.push(&self.apply_tx, msg).await;
            }
            ReadConsistency::Lease => {
                if self.raft.role() != Role::Leader {
                    responder.send(Err(self.leader_hint()), None);
                    return Ok(());
                }
                if self.config.raft.lease_clock_drift_ms == 0 { ReadLevel::Linearizable } else { ReadLevel::Lease }
            }
            _ => ReadLevel::Linearizable,
        };
        let id = ReadId(self.next_read);
        self.next_read += 1;
        let now = self.now();
        match self.raft.read(now, id, level) {
            Ok(()) => {
                self.reads.insert(id, PendingRead { what: Confirming::Read(req), responder, deadline });
            }
            Err(e) => responder.send(Err(self.read_error(&e)), None),
        }
        Ok(())
    }

    /// `snapshot save` on the leader: a ReadIndex round first ([`Confirming::Save`]); the
    /// apply thread writes the backup once the round confirmed leadership and the state
    /// machine reached the confirmed index. A round that fails (deposed, or no quorum within
    /// the request's deadline) writes nothing.
    fn confirm_then_save(&mut self, responder: Responder) {
        let deadline = Instant::now() + REQUEST_DEADLINE;
        let id = ReadId(self.next_read);
        self.next_read += 1;
        let now = self.now();
        let config = self.raft.configuration().clone();
        match self.raft.read(now, id, ReadLevel::Linearizable) {
            Ok(()) => {
                self.reads.insert(id, PendingRead { what: Confirming::Save(config), responder, deadline });
            }
            Err(ReadError::NotLeader { .. } | ReadError::NoLeader | ReadError::LeadershipLost) => {
                responder.send(Err(self.leader_hint()), None);
            }
            Err(e) => responder.send(Err(self.read_error(&e)), None),
        }
    }

    /// `snapshot save FILE` on the leader: reserves the stream slot (one per node), then a
    /// ReadIndex round ([`Confirming::Stream`]); the apply thread hands the image to a read
    /// worker once the confirmed index is applied, and answers with the stream's id.
    fn open_stream(&mut self, responder: Responder) {
        if let Err(e) = crate::versions::require(
            &self.shared,
            crate::versions::SNAPSHOT_STREAM_CLUSTER_VERSION,
            "a streamed snapshot save",
        ) {
            responder.send(Err(e), None);
            return;
        }
        if self.raft.role() != Role::Leader {
            responder.send(Err(self.leader_hint()), None);
            return;
        }
        let stream = match self.shared.streams.begin(self.raft.term(), &self.shared.backups_dir, Instant::now()) {
            Ok((stream, _)) => stream,
            Err(e) => {
                responder.send(Err(e), None);
                return;
            }
        };
        let id = ReadId(self.next_read);
        self.next_read += 1;
        let now = self.now();
        let config = self.raft.configuration().clone();
        let deadline = Instant::now() + REQUEST_DEADLINE;
        match self.raft.read(now, id, ReadLevel::Linearizable) {
            Ok(()) => {
                self.reads.insert(id, PendingRead { what: Confirming::Stream(config, stream), responder, deadline });
            }
            Err(e) => {
                self.shared.streams.release(stream);
                let e = match e {
                    ReadError::NotLeader { .. } | ReadError::NoLeader | ReadError::LeadershipLost => self.leader_hint(),
                    e => self.read_error(&e),
                };
                responder.send(Err(e), None);
            }
        }
    }

    /// A chunk of stream `stream`'s image (or, with `len` 0, its end: confirmed by a ReadIndex
    /// round, [`Confirming::StreamEnd`]).
    fn fetch_stream(&mut self, stream: u64, offset: u64, len: u32, responder: Responder) {
        use crate::save_stream::Fetch;
        let leader = self.raft.role() == Role::Leader;
        match self.shared.streams.fetch(stream, offset, len, self.raft.term(), leader, Instant::now()) {
            Fetch::Answer(answer) => responder.send(answer, None),
            Fetch::ConfirmEnd => {
                let id = ReadId(self.next_read);
                self.next_read += 1;
                let now = self.now();
                let deadline = Instant::now() + REQUEST_DEADLINE;
                match self.raft.read(now, id, ReadLevel::Linearizable) {
                    Ok(()) => {
                        self.reads.insert(id, PendingRead { what: Confirming::StreamEnd(stream), responder, deadline });
                    }
                    Err(e) => {
                        self.shared.streams.release(stream);
                        responder.send(Err(self.read_error(&e)), None);
                    }
                }
            }
            Fetch::Chunk { path, total } => {
                let failpoints = self.shared.failpoints.clone();
                let shared = self.shared.clone();
                self.shared.handle.spawn_blocking(move || {
                    // A slow read (the `slow_read_ms` failpoint) slows each chunk too.
                    failpoints.before_read();
                    responder.send(shared.streams.chunk(stream, &path, offset, len, total), None);
                });
            }
        }
    }

    /// The end of a streamed save, its ReadIndex round done: complete if this node is still
    /// the leader of the stream's term.
    fn end_stream(&mut self, stream: u64, responder: Responder) {
        let leader = self.raft.role() == Role::Leader;
        responder.send(self.shared.streams.end(stream, self.raft.term(), leader, Instant::now()), None);
    }

    /// A client request from the inbox: validated and checked against the role, then queued in
    /// its principal's lane of the fair queue ([`crate::waiting`]; status, health and versions
    /// are dispatched at once), or refused `Shed(QueueFull)` past the queue's bounds.
    async fn on_request(&mut self, mut req: quorate_transport::Request<NodeMessage>) -> Result<(), ServerError> {
        let placeholder = NodeMessage::Response(ClientResponse { id: 0, result: Err(ApiError::Timeout) });
        let handle = self.shared.handle.clone();
        let timeout = self.shared.response_write_timeout;
        let (attempt, message) = crate::admission::attempt_of(std::mem::replace(&mut req.message, placeholder));
        let ClientRequest { id, session, body } = match message {
            NodeMessage::Request(r) => match r.validate() {
                Ok(()) => r,
                Err(detail) => {
                    // Well-formed bytes, out-of-bounds request: a typed answer, and the
                    // connection stays usable.
                    let audit = crate::audit::describe(&r.body, r.session);
                    let r = Responder::new(req, r.id, handle, audit, false, timeout);
                    r.send(Err(ApiError::InvalidRequest(detail)), None);
                    return Ok(());
                }
            },
            _ => {
                let r = Responder::new(req, 0, handle, None, false, timeout);
                r.send(Err(ApiError::InvalidRequest("expected a client request".into())), None);
                return Ok(());
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
        let responder = Responder::new(req, id, handle, audit, access != Access::Read, timeout);
        if !allowed {
            crate::telemetry::refused("role");
            responder.send(Err(ApiError::Unauthorized { needed: access }), None);
            return Ok(());
        }
        let w = WaitingRequest { attempt, session, body, principal, responder };
        if crate::waiting::bypasses_queue(&w.body) {
            return self.admit_and_dispatch(w).await;
        }
        let (cost, bytes) = crate::waiting::cost_of(&w.body);
        if let Err(w) = self.waiting.push(principal, cost, bytes, w) {
            let e =
                crate::admission::shed(quorate_api::OverloadReason::QueueFull, crate::waiting::QUEUE_FULL_RETRY_AFTER);
            w.responder.send(Err(e), None);
        }
        Ok(())
    }

    /// Admits a checked client request and dispatches it, or answers its refusal.
    async fn admit_and_dispatch(&mut self, w: WaitingRequest) -> Result<(), ServerError> {
        let WaitingRequest { attempt, session, body, principal, mut responder } = w;
        // Admission, before any work; consensus traffic never comes this way. It holds a slot
        // of the principal's, and the most bytes the answer can take, until the answer is
        // written: a client that does not read its answers runs out of its own budget.
        let signals = crate::admission::CoreSignals::measure(&self.raft, self.shared.store.applied_index());
        match self.gate.admit(&body, principal, attempt > 0, signals, self.shared.store.dir()) {
            Ok(ticket) => responder.ticket = ticket,
            Err(e) => {
                responder.send(Err(e), None);
                return Ok(());
            }
        }
        // The node-wide slot, taken only once the request is allowed and admitted (a refused
        // request never takes one), and held until its answer is written or given up.
        if self.shared.inflight.load(Ordering::Acquire) >= self.config.limits.pending_requests_max {
            // Not a latency sample for the adaptive limit: the permit is cancelled (and the hold
            // released) before the refusal is sent.
            responder.ticket = None;
            let e = crate::admission::shed(quorate_api::OverloadReason::QueueFull, Duration::from_millis(50));
            responder.send(Err(e), None);
            return Ok(());
        }
        responder.guard = Some(InflightGuard::new(&self.shared.inflight));
        // A replay of a write its session has applied is answered from the session table, on
        // any member, without a proposal ([`crate::replays`]).
        if let Some(s) = session
            && is_session_write(&body)
            && self.shared.replays.may_be_replay(s.session.0, responder.principal(), s.seq)
        {
            self.answer_replay(s, body, responder);
            return Ok(());
        }
        self.dispatch(session, body, responder).await
    }

    /// A write that may replay one its session applied (the hints say so): the session's
    /// record is read on a blocking thread, never the driver, and decides alone
    /// ([`crate::sm::replay_answer`]). A replay is answered there, with the answer applying
    /// it would give, audited as answered from the session cache and counted in
    /// `quorate_session_replays_answered_total`; anything else comes back to the driver as
    /// [`Event::NotReplay`] and is handled as if it had just arrived (proposed on the leader,
    /// `NotLeader` elsewhere, refused by apply if the session is not the principal's).
    fn answer_replay(&self, s: quorate_api::Sequenced, body: Request, mut responder: Responder) {
        let (shared, events) = (self.shared.clone(), self.events_tx.clone());
        tokio::task::spawn_blocking(move || {
            // The log time a command proposed now would carry at least.
            let wall =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
            let now_ms = wall.max(shared.log_time_ms.load(Ordering::Relaxed));
            match crate::sm::replay_answer(&*shared.store, s.session, s.seq, responder.principal(), now_ms) {
                Ok(Some((result, cached))) => {
                    crate::telemetry::replay_answered(responder.principal());
                    responder.mark_answered(if cached {
                        crate::audit::Answered::FromCacheNotProposed
                    } else {
                        crate::audit::Answered::FromTableNotProposed
                    });
                    responder.send(result, None);
                }
                other => {
                    if let Err(e) = other {
                        tracing::warn!(error = %e, "cannot read a session's record; handling the write as new");
                    }
                    // The driver gone (shutting down): the responder is dropped with the event.
                    let _ = events.blocking_send(Event::NotReplay { session: s, body, responder: Box::new(responder) });
                }
            }
        });
    }

    /// Handles an admitted request (its slot taken).
    async fn dispatch(
        &mut self,
        session: Option<quorate_api::Sequenced>,
        body: Request,
        responder: Responder,
    ) -> Result<(), ServerError> {
        match body {
            Request::Put { key, value } => self.propose_write(session, CommandOp::Put { key, value }, responder).await,
            Request::Delete { key } => self.propose_write(session, CommandOp::Delete { key }, responder).await,
            Request::Cas { key, expected, value } => {
                self.propose_write(session, CommandOp::Cas { key, expected, value }, responder).await
            }
            Request::OpenSession => self.propose_write(None, CommandOp::OpenSession, responder).await,
            Request::Txn(txn) => {
                if txn.is_read_only() {
                    let req = ReadReq::Txn { txn, from: 0, revision: None, paged: false };
                    self.read(req, ReadConsistency::Linearizable, responder).await
                } else if self.raft.role() == Role::Leader
                    && txn.success.iter().chain(&txn.failure).any(|o| matches!(o, quorate_api::TxnOp::Get { .. }))
                    && crate::versions::cluster_version(&self.shared) >= crate::sm::BOUNDED_RESULTS_CLUSTER_VERSION
                {
                    self.bound_then_propose(session, txn, responder);
                    Ok(())
                } else {
                    self.propose_write(session, CommandOp::Txn(txn), responder).await
                }
            }
            Request::TxnPaged { txn, from, revision } => {
                let req = ReadReq::Txn { txn, from, revision, paged: true };
                self.read(req, ReadConsistency::Linearizable, responder).await
            }
            Request::Get { key, read } => self.read(ReadReq::Get { key }, read, responder).await,
            Request::Scan { start, end, limit, read } => {
                self.read(ReadReq::Scan { start, end, limit, paged: false }, read, responder).await
            }
            Request::ScanPaged { start, end, limit, read } => {
                self.read(ReadReq::Scan { start, end, limit, paged: true }, read, responder).await
            }
            Request::Status => {
                responder.send(Ok(Response::Status(self.status())), None);
                Ok(())
            }
            Request::MemberList => {
                responder.send(Ok(Response::Members(self.members())), None);
                Ok(())
            }
            Request::MemberAdd { id: new, addr } => self.member_add(new, addr, responder).await,
            Request::MemberUpdate { id, addr } => {
                self.member_update(id, addr, responder);
                Ok(())
            }
            Request::MemberPromote { id: n } => self.conf_change(ConfChange::Promote(n), responder).await,
            Request::MemberRemove { id: n } => self.conf_change(ConfChange::Remove(n), responder).await,
            Request::LeaderTransfer { to } => {
                let result = self.transfer(to);
                let at = Some(EntryId::new(self.raft.term(), self.raft.commit_index()));
                responder.send(result, at);
                Ok(())
            }
            // Only the leader writes a backup: a follower's state machine may lag, and the
            // operator asked "the cluster", so a follower answers NotLeader and the client
            // follows the hint (issue 21).
            Request::SnapshotSave if self.raft.role() != Role::Leader => {
                responder.send(Err(self.leader_hint()), None);
                Ok(())
            }
            Request::SnapshotSave => {
                self.confirm_then_save(responder);
                Ok(())
            }
            Request::SnapshotStreamOpen => {
                self.open_stream(responder);
                Ok(())
            }
            Request::SnapshotStreamFetch { stream, offset, len } => {
                self.fetch_stream(stream, offset, len, responder);
                Ok(())
            }
            Request::Versions => {
                responder.send(crate::versions::info(&self.shared), None);
                Ok(())
            }
            Request::Health => {
                let health = self.health();
                responder.send(Ok(Response::Health(health)), None);
                Ok(())
            }
            Request::FlightDump => {
                crate::flight::answer_dump_request(&mut self.raft, responder);
                Ok(())
            }
            Request::Finalize { version } => match crate::versions::check_finalize(&self.shared, version) {
                Ok(()) => self.propose_write(None, CommandOp::SetClusterVersion { version }, responder).await,
                Err(e) => {
                    responder.send(Err(e), None);
                    Ok(())
                }
            },
            Request::GetAt { key, revision, read } => {
                match crate::versions::require(&self.shared, crate::sm::HISTORY_CLUSTER_VERSION, "a read at a revision")
                {
                    Ok(()) => self.read(ReadReq::GetAt { key, revision }, read, responder).await,
                    Err(e) => {
                        responder.send(Err(e), None);
                        Ok(())
                    }
                }
            }
            Request::ScanAt { start, end, limit, revision, read } => {
                match crate::versions::require(&self.shared, crate::sm::HISTORY_CLUSTER_VERSION, "a read at a revision")
                {
                    Ok(()) => self.read(ReadReq::ScanAt { start, end, limit, revision }, read, responder).await,
                    Err(e) => {
                        responder.send(Err(e), None);
                        Ok(())
                    }
                }
            }
            Request::Compact { revision } => {
                match crate::versions::require(&self.shared, crate::sm::HISTORY_CLUSTER_VERSION, "compact") {
                    Ok(()) => self.propose_write(None, CommandOp::Compact { revision }, responder).await,
                    Err(e) => {
                        responder.send(Err(e), None);
                        Ok(())
                    }
                }
            }
            Request::History => {
                let info = crate::history::info(&self.shared.store, self.shared.id);
                responder.send(info, None);
                Ok(())
            }
            Request::Watch(watch) => self.watch(watch, responder).await,
            body @ (Request::LeaseGrant { .. } | Request::LeaseRevoke { .. } | Request::PutWithLease { .. }) => {
                let version = crate::versions::cluster_version(&self.shared);
                match lease_write(version, self.config.raft.election_timeout_ms, body, &responder) {
                    Ok(op) => self.propose_write(session, op, responder).await,
                    Err(e) => {
                        responder.send(Err(e), None);
                        Ok(())
                    }
                }
            }
            body @ (Request::LeaseKeepAlive { .. } | Request::LeaseList | Request::LeaseTimeToLive { .. }) => {
                self.lease_read(body, responder).await
            }
            Request::DeleteRange { start, end } => {
                match crate::versions::require(&self.shared, crate::sm::DELETE_RANGE_CLUSTER_VERSION, "delete-range") {
                    Ok(()) => self.propose_write(session, CommandOp::DeleteRange { start, end }, responder).await,
                    Err(e) => {
                        responder.send(Err(e), None);
                        Ok(())
                    }
                }
            }
            _ => {
                responder.send(Err(ApiError::InvalidRequest("request not supported by this node".into())), None);
                Ok(())
            }
        }
    }

    /// A watch ([`crate::watches`]): counted among the node's and its principal's, then read
    /// from this node's applied state at once, or once the applied revision reaches the one
    /// asked for (or the wait runs out); an answer with no events waits again until its
    /// deadline ([`Responder::watch_answered`]).
    async fn watch(&mut self, watch: quorate_api::WatchRequest, responder: Responder) -> Result<(), ServerError> {
        if let Err(e) = crate::versions::require(&self.shared, crate::sm::HISTORY_CLUSTER_VERSION, "a watch") {
            responder.send(Err(e), None);
            return Ok(());
        }
        let events = self.events_tx.clone();
        // Read again by the driver's loop (the driver gone: the responder is dropped).
        let again = watch_again(move |watch, responder| {
            let events = events.clone();
            async move {
                let _ = events.send(Event::WatchReady { watch, responder }).await;
            }
        });
        match begin_watch(&self.shared.watches, &self.shared.revision_tx, watch, responder, again) {
            Some((watch, responder)) => self.read(ReadReq::Watch(watch), ReadConsistency::Stale, responder).await,
            None => Ok(()),
        }
    }

    fn transfer(&mut self, to: Option<NodeId>) -> Result<Response, ApiError> {
        if self.raft.role() != Role::Leader {
            return Err(self.leader_hint());
        }
        let target = match to {
            Some(t) => t,
            None => {
                let s = self.raft.status();
                let best = s
                    .peers
                    .iter()
                    .filter(|(id, _)| **id != self.shared.id && s.config.is_voter(**id))
                    .max_by_key(|(_, p)| p.match_index)
                    .map(|(id, _)| *id);
                best.ok_or_else(|| ApiError::Refused("no other voter to transfer leadership to".into()))?
            }
        };
        let now = self.now();
        self.raft.transfer_leadership(now, target).map_err(|e| ApiError::Refused(e.to_string()))?;
        Ok(Response::Done)
    }

    async fn conf_change(&mut self, change: ConfChange, responder: Responder) -> Result<(), ServerError> {
        let now = self.now();
        match self.raft.propose_conf_change(now, change) {
            Ok(at) => self.register(at, responder).await,
            Err(e) => {
                responder.send(Err(self.conf_error(e)), None);
                Ok(())
            }
        }
    }

    /// A writing transaction that also reads, on cluster version 2 or later: its results are
    /// bounded before it is proposed. On a blocking thread (never the driver), the sizes of the
    /// values its gets would read now give a lower bound of its results
    /// ([`crate::sm::txn_result_bytes_min`]); over [`quorate_api::limits::RESULT_BYTES_MAX`] it
    /// is refused, unlogged, with apply's own error, so that no replica reads its values, and
    /// the bytes the leader read to decide are charged to its principal's answer rate. Else
    /// (or if the store cannot say) it goes back to the driver to be proposed
    /// ([`Event::TxnBounded`]), and apply's deterministic check still holds.
    fn bound_then_propose(&self, session: Option<quorate_api::Sequenced>, txn: quorate_api::Txn, responder: Responder) {
        let (store, events) = (self.shared.store.clone(), self.events_tx.clone());
        tokio::task::spawn_blocking(move || match crate::sm::txn_bound(&*store, &txn) {
            Ok(bound) if bound.result_bytes_min > quorate_api::limits::RESULT_BYTES_MAX as u64 => {
                tracing::debug!(?bound, "writing transaction refused before it was proposed: its results cannot fit");
                crate::telemetry::txn_refused_unproposed(responder.principal());
                // What the refusal cost the leader is charged to the principal's answer rate:
                // a client that repeats such transactions is soon refused by admission, before
                // any read.
                if let Some(t) = responder.ticket.as_ref() {
                    t.charge_reads(bound.read_bytes);
                }
                responder.send(Err(crate::sm::txn_results_too_large()), None);
            }
            bounded => {
                if let Err(e) = bounded {
                    tracing::warn!(error = %e, "cannot bound a transaction's results; proposing it (apply checks them)");
                }
                // The driver gone (shutting down): the responder is dropped with the event.
                let _ = events.blocking_send(Event::TxnBounded { session, txn, responder: Box::new(responder) });
            }
        });
    }

    async fn member_add(&mut self, new: NodeId, addr: String, responder: Responder) -> Result<(), ServerError> {
        if self.raft.role() != Role::Leader {
            responder.send(Err(self.leader_hint()), None);
            return Ok(());
        }
        if self.raft.configuration().members().any(|m| m == new) {
            responder.send(Err(ApiError::Refused(format!("node {new} is already a member"))), None);
            return Ok(());
        }
        // Resolved off the driver, within RESOLVE_TIMEOUT; the add goes on in
        // `member_addr_resolved`.
        let (events, failpoints) = (self.events_tx.clone(), self.failpoints.clone());
        tokio::spawn(async move {
            let resolved = resolve(&addr, &failpoints).await;
            let responder = Box::new(responder);
            let _ = events.send(Event::MemberAddrResolved { new, addr, resolved, responder }).await;
        });
        Ok(())
    }

    /// The second half of [`Driver::member_add`], once the new member's address resolved:
    /// this node may have lost leadership, or the node been added, in the meantime.
    async fn member_addr_resolved(
        &mut self,
        new: NodeId,
        addr: String,
        resolved: Option<SocketAddr>,
        responder: Responder,
    ) -> Result<(), ServerError> {
        if self.raft.role() != Role::Leader {
            responder.send(Err(self.leader_hint()), None);
            return Ok(());
        }
        if self.raft.configuration().members().any(|m| m == new) {
            responder.send(Err(ApiError::Refused(format!("node {new} is already a member"))), None);
            return Ok(());
        }
        let Some(sa) = resolved else {
            responder.send(Err(ApiError::InvalidRequest(format!("cannot resolve address {addr:?}"))), None);
            return Ok(());
        };
        // First the address, through the log (every node learns it when applying), then the
        // learner. This node dials it at once: it replicates to the learner from now on.
        self.shared.transport.add_peer_at(new, PeerAddr::parse(&addr).unwrap_or(PeerAddr::Socket(sa)));
        let cmd =
            Command { session: None, time_ms: self.next_time_ms(), op: CommandOp::SetMemberAddr { id: new, addr } };
        let bytes = match quorate_api::encode_command(&cmd) {
            Ok(b) => b,
            Err(e) => {
                responder.send(Err(ApiError::InvalidRequest(e.to_string())), None);
                return Ok(());
            }
        };
        let now = self.now();
        if let Err(e) = self.raft.propose(now, Data::from(bytes)) {
            responder.send(Err(self.propose_error(e)), None);
            return Ok(());
        }
        self.conf_change(ConfChange::AddLearner(new), responder).await
    }

    /// `member update`: leader only, from cluster version 2
    /// ([`crate::versions::MEMBER_UPDATE_CLUSTER_VERSION`]), for a member of the
    /// configuration; the new address is resolved off the driver (as `member add`'s) and the
    /// change goes on in [`Driver::member_update_resolved`].
    fn member_update(&mut self, id: NodeId, addr: String, responder: Responder) {
        if self.raft.role() != Role::Leader {
            responder.send(Err(self.leader_hint()), None);
            return;
        }
        let gate = crate::versions::MEMBER_UPDATE_CLUSTER_VERSION;
        if let Err(e) = crate::versions::require(&self.shared, gate, "member update") {
            responder.send(Err(e), None);
            return;
        }
        if !self.raft.configuration().members().any(|m| m == id) {
            responder.send(Err(ApiError::Refused(format!("node {id} is not a member"))), None);
            return;
        }
        let (events, failpoints) = (self.events_tx.clone(), self.failpoints.clone());
        tokio::spawn(async move {
            let resolved = resolve(&addr, &failpoints).await;
            let responder = Box::new(responder);
            let _ = events.send(Event::MemberUpdateResolved { id, addr, resolved, responder }).await;
        });
    }

    /// The second half of [`Driver::member_update`]: the address goes through the log as
    /// `SetMemberAddr`, which every replica applies by recording it and dialing the member
    /// there (`Shared::learn_member_addr`); the client is answered once it is applied here.
    async fn member_update_resolved(
        &mut self,
        id: NodeId,
        addr: String,
        resolved: Option<SocketAddr>,
        responder: Responder,
    ) -> Result<(), ServerError> {
        if !self.raft.configuration().members().any(|m| m == id) {
            responder.send(Err(ApiError::Refused(format!("node {id} is not a member"))), None);
            return Ok(());
        }
        if resolved.is_none() {
            responder.send(Err(ApiError::InvalidRequest(format!("cannot resolve address {addr:?}"))), None);
            return Ok(());
        }
        // Leadership is checked again by `propose_write`.
        self.propose_write(None, CommandOp::SetMemberAddr { id, addr }, responder).await
    }

    fn start_snapshot_send(&mut self, to: NodeId, meta: SnapshotMeta) {
        let term = self.raft.term();
        match self.sending.get(&to) {
            Some((started, h)) if *started == term && !h.is_finished() => return,
            Some((_, h)) => h.abort(),
            None => {}
        }
        let path = match &self.latest_snapshot {
            Some((m, p)) if *m == meta => p.clone(),
            _ => {
                tracing::warn!(peer = %to, index = %meta.last.index, "asked to send a snapshot this node does not hold");
                let now = self.now();
                self.raft.snapshot_send_failed(now, to);
                return;
            }
        };
        let transport = self.shared.transport.clone();
        let events = self.events_tx.clone();
        let rate = self.config.limits.snapshot_rate_mb_per_sec.saturating_mul(1 << 20);
        if crate::versions::cluster_version(&self.shared) >= crate::versions::RESUMABLE_SNAPSHOT_CLUSTER_VERSION {
            // Every member decodes pieces: the resumable, acknowledged transfer.
            tracing::info!(peer = %to, index = %meta.last.index, "sending snapshot (resumable)");
            let (acks_tx, acks) = mpsc::channel(crate::transfer::ACK_QUEUE);
            let job = crate::transfer::SendJob { transport, to, term, meta, path, rate_bytes_per_sec: rate, acks };
            let task = tokio::spawn(async move {
                let ev = match crate::transfer::send(job).await {
                    Ok(()) => Event::SnapshotSent(to, term),
                    Err(e) => {
                        tracing::warn!(peer = %to, error = %e, "snapshot transfer failed");
                        Event::SnapshotSendFailed(to, term)
                    }
                };
                let _ = events.send(ev).await;
            });
            self.sending.insert(to, (term, task.abort_handle()));
            self.piece_acks.insert(to, (term, acks_tx));
            return;
        }
        tracing::info!(peer = %to, index = %meta.last.index, "sending snapshot");
        let task = tokio::spawn(async move {
            let ev = match send_snapshot(&transport, to, term, meta, &path, rate).await {
                Ok(()) => Event::SnapshotSent(to, term),
                Err(e) => {
                    tracing::warn!(peer = %to, error = %e, "snapshot send failed");
                    Event::SnapshotSendFailed(to, term)
                }
            };
            let _ = events.send(ev).await;
        });
        self.sending.insert(to, (term, task.abort_handle()));
    }

    /// A snapshot chunk. Accepted only from the leader this node follows, for its current
    /// term (a chunk's own `term` is not trusted), and only as the next chunk of the transfer
    /// that leader started at offset 0; a snapshot larger than `limits.snapshot_staging_mb`,
    /// or than the free disk space allows, is refused at its first chunk. The bytes are written
    /// by a staging writer off the driver; a chunk that does not continue the transfer is
    /// dropped and the transfer left alone (the leader's stream is ordered; after a loss it
    /// times out and starts again at offset 0).
    fn on_chunk(&mut self, from: NodeId, c: SnapshotChunk) {
        use quorate_telemetry::names::peer_refused;
        let len = c.data.len() as u64;
        tracing::debug!(peer = %from, offset = c.offset, len, total = c.total, "snapshot chunk");
        let from_leader =
            self.raft.leader() == Some(from) && c.term == self.raft.term() && self.raft.role() != Role::Leader;
        if !from_leader {
            refused_peer(from, peer_refused::NOT_LEADER, "snapshot chunk not from the current leader");
            return;
        }
        // A transfer of a previous leader or term is over.
        if self.staging.as_ref().is_some_and(|st| st.from != from || st.term != c.term) {
            self.staging = None;
        }
        let malformed = c.data.len() > quorate_api::limits::SNAPSHOT_CHUNK_BYTES_MAX
            || c.offset.checked_add(len).is_none_or(|end| end > c.total);
        if malformed {
            tracing::warn!(peer = %from, "malformed snapshot chunk dropped");
            return;
        }
        if c.offset == 0 {
            // The leader starts (or starts again) a transfer.
            self.staging = None;
            let cap = self.config.limits.snapshot_staging_mb.saturating_mul(1 << 20);
            if c.total > cap {
                tracing::warn!(peer = %from, bytes = c.total, limit_bytes = cap,
                    "snapshot larger than limits.snapshot_staging_mb refused");
                refused_peer(from, peer_refused::SNAPSHOT_TOO_LARGE, "snapshot over the staging limit");
                return;
            }
            // The staged file and its copy into the store, above the floor.
            let floor = self.config.limits.free_space_floor_mb.saturating_mul(1 << 20);
            let needed = c.total.saturating_mul(2).saturating_add(floor);
            match quorate_storage::free_space_bytes(&self.staging_dir) {
                Ok(free) if free >= needed => {}
                Ok(free) => {
                    tracing::warn!(peer = %from, bytes = c.total, free, needed,
                        "not enough free disk space to receive a snapshot; refused");
                    refused_peer(from, peer_refused::SNAPSHOT_TOO_LARGE, "snapshot over the free disk space");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot measure free disk space; snapshot refused");
                    return;
                }
            }
            match self.start_staging(from, &c) {
                Ok(st) => self.staging = Some(st),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot stage a snapshot");
                    return;
                }
            }
        }
        let Some(st) = self.staging.as_mut() else {
            refused_peer(from, peer_refused::SNAPSHOT_OUT_OF_ORDER, "snapshot chunk without a transfer");
            return;
        };
        if st.meta != c.meta || st.total != c.total || st.next != c.offset {
            refused_peer(from, peer_refused::SNAPSHOT_OUT_OF_ORDER, "snapshot chunk out of order");
            return;
        }
        st.next += len;
        let done = st.next == st.total;
        if st.chunks.try_send(StageChunk { bytes: c.data, last: done }).is_err() {
            // The disk falls behind the stream (or the writer failed): drop the transfer.
            tracing::warn!(peer = %from, "snapshot staging cannot keep up with the stream; transfer dropped");
            self.staging = None;
        } else if done {
            // The writer finishes on its own; a new transfer starts at offset 0.
            self.staging = None;
        }
    }

    /// A piece of a resumable transfer ([`crate::transfer`]). Accepted only from the leader
    /// this node follows, in its current term; a piece of an image this node committed past
    /// is answered at once (the core answers the leader as for an install). The staging
    /// worker checks and stages the rest; when its queue is full the piece is dropped (the
    /// leader sends it again).
    fn on_piece(&mut self, from: NodeId, p: quorate_api::SnapshotPiece) {
        use quorate_telemetry::names::peer_refused;
        let from_leader =
            self.raft.leader() == Some(from) && p.term == self.raft.term() && self.raft.role() != Role::Leader;
        if !from_leader {
            refused_peer(from, peer_refused::NOT_LEADER, "snapshot piece not from the current leader");
            return;
        }
        if p.meta.last.index <= self.raft.commit_index() {
            let now = self.now();
            let _ = self.raft.install_snapshot(now, from, p.term, p.meta.clone());
            let a = quorate_api::SnapshotAck {
                term: p.term,
                last: p.meta.last,
                checksum: p.checksum,
                offset: p.total,
                status: quorate_api::SnapshotAckStatus::Installed,
            };
            let _ = self.shared.transport.try_send(from, NodeMessage::SnapshotAck(a));
            return;
        }
        if self.pieces.try_send(crate::transfer::Incoming { from, piece: p }).is_err() {
            tracing::debug!(peer = %from, "snapshot staging busy; piece dropped (the leader sends it again)");
        }
    }

    /// Starts the staging writer of a transfer whose first chunk is `c`.
    fn start_staging(&self, from: NodeId, c: &SnapshotChunk) -> std::io::Result<Staging> {
        // A name of its own per transfer: the writer of a dropped transfer removes its file
        // when it ends, possibly after the leader started the next one.
        static TRANSFERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = TRANSFERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.staging_dir.join(format!("incoming-{from}-{}-{seq}.part", c.term.0));
        let file = std::fs::File::create(&path)?;
        let (tx, rx) = mpsc::channel(STAGING_QUEUE_CHUNKS);
        let (store, events, term, meta) = (self.shared.store.clone(), self.events_tx.clone(), c.term, c.meta.clone());
        tokio::task::spawn_blocking(move || stage(rx, file, &path, &store, &events, from, term, meta));
        Ok(Staging { from, term: c.term, meta: c.meta.clone(), total: c.total, next: 0, chunks: tx })
    }
}

/// The staging writer: writes the chunks it is sent; after the last one syncs the file,
/// verifies it into the store's snapshot directory and tells the driver. The partial file is
/// removed whatever happens (the verified copy lives in the store).
#[allow(clippy::too_many_arguments)]
fn stage(
    mut rx: mpsc::Receiver<StageChunk>,
    mut file: std::fs::File,
    path: &Path,
    store: &RocksStore,
    events: &mpsc::Sender<Event>,
    from: NodeId,
    term: Term,
    meta: SnapshotMeta,
) {
    use std::io::Write;
    // Synced as it is written, as the store's snapshot files are (`SNAPSHOT_SYNC_BYTES`).
    let mut unsynced = 0u64;
    let outcome = loop {
        match rx.blocking_recv() {
            Some(StageChunk { bytes, last }) => {
                if let Err(e) = file.write_all(&bytes) {
                    break Some(Err(StoreError::from(e)));
                }
                unsynced += bytes.len() as u64;
                if unsynced >= quorate_storage::SNAPSHOT_SYNC_BYTES && !last {
                    if let Err(e) = file.sync_data() {
                        break Some(Err(StoreError::from(e)));
                    }
                    unsynced = 0;
                }
                if last {
                    let r =
                        file.sync_all().map_err(StoreError::from).and_then(|()| verify_and_store(store, path, &meta));
                    break Some(r);
                }
            }
            // The driver dropped the transfer.
            None => break None,
        }
    };
    drop(file);
    let _ = std::fs::remove_file(path);
    match outcome {
        Some(Ok(p)) => {
            tracing::debug!(peer = %from, index = %meta.last.index, "received snapshot verified");
            let _ = events.blocking_send(Event::SnapshotStaged { from, term, meta, path: p });
        }
        Some(Err(e)) => tracing::warn!(peer = %from, error = %e, "received snapshot not staged"),
        None => tracing::debug!(peer = %from, "snapshot transfer dropped; partial file removed"),
    }
}

/// Records a newly taken snapshot as the node's latest and returns the previous one, whose
/// file is NOT deleted here: the store removes snapshot files below its log floor after the
/// compaction batch that moves the floor is durable ([`RocksStore::write_many`]). A snapshot
/// at or below the latest (written off the apply thread, reported after an install of a newer
/// one that waited for it) is not recorded: the core keeps the newer one, and sends only the
/// file that matches it.
fn snapshot_taken_keeps_files(
    latest: &mut Option<(SnapshotMeta, PathBuf)>,
    meta: SnapshotMeta,
    path: PathBuf,
) -> Option<(SnapshotMeta, PathBuf)> {
    if latest.as_ref().is_some_and(|(l, _)| l.last.index >= meta.last.index) {
        tracing::info!(index = %meta.last.index, "a snapshot taken below the latest is not recorded");
        return None;
    }
    latest.replace((meta, path))
}

/// Checks a received snapshot file (header, metadata, data checksum) while copying it into
/// the store's snapshot directory, where the install finds it.
pub(crate) fn verify_and_store(store: &RocksStore, staged: &Path, meta: &SnapshotMeta) -> Result<PathBuf, StoreError> {
    let mut reader = SnapshotReader::open(staged)?;
    if reader.meta() != meta {
        return Err(StoreError::Io("snapshot file metadata differs from the stream's".into()));
    }
    let mut writer = store.snapshot_writer(meta.clone())?;
    std::io::copy(&mut reader, &mut writer)?;
    Ok(writer.finish()?.path)
}

/// Streams a snapshot file to `to` over the snapshot lane, with backoff while the peer's
/// queue is full and a rate limit.
async fn send_snapshot(
    transport: &Transport<NodeMessage>,
    to: NodeId,
    term: Term,
    meta: SnapshotMeta,
    path: &Path,
    rate_bytes_per_sec: u64,
) -> Result<(), String> {
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(path).await.map_err(|e| format!("open {}: {e}", path.display()))?;
    let total = file.metadata().await.map_err(|e| e.to_string())?.len();
    let started = Instant::now();
    let mut offset = 0u64;
    while offset < total {
        let want = CHUNK_BYTES.min((total - offset) as usize);
        let mut data = vec![0u8; want];
        file.read_exact(&mut data).await.map_err(|e| e.to_string())?;
        let chunk = SnapshotChunk { term, meta: meta.clone(), offset, total, data };
        let mut delay = Duration::from_millis(5);
        let give_up = Instant::now() + Duration::from_secs(30);
        loop {
            match transport.try_send_snapshot(to, NodeMessage::SnapshotChunk(chunk.clone())) {
                Ok(()) => break,
                Err(quorate_transport::SendError::QueueFull) if Instant::now() < give_up => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(500));
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        offset += want as u64;
        // Rate limit: no faster than `limits.snapshot_rate_mb_per_sec` on average.
        let due = Duration::from_secs_f64(offset as f64 / rate_bytes_per_sec.max(1) as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    crate::telemetry::snapshot_streamed(total, started.elapsed());
    Ok(())
}

/// What a client is told when the core refuses its read (`hint`: the leader hint).
pub(crate) fn read_refusal(e: &ReadError, hint: impl FnOnce() -> ApiError) -> ApiError {
    match e {
        ReadError::NotLeader { .. } => hint(),
        ReadError::NoLeader => ApiError::Unavailable("no leader known; retry".into()),
        ReadError::LeadershipLost => {
            ApiError::Unavailable("leadership changed before the read was confirmed; retry".into())
        }
        ReadError::TooManyPending(_) => {
            crate::admission::shed(quorate_api::OverloadReason::PendingReads, Duration::from_millis(50))
        }
        ReadError::LeaseDisabled => ApiError::InvalidRequest("lease reads are not enabled on this node".into()),
        ReadError::Halted => ApiError::Internal("node halted".into()),
        other => ApiError::Unavailable(other.to_string()),
    }
}

/// What a client is told when the core refuses its proposal (`hint`: the leader hint).
pub(crate) fn propose_refusal(e: ProposeError, hint: impl FnOnce() -> ApiError) -> ApiError {
    match e {
        ProposeError::NotLeader { .. } => hint(),
        ProposeError::UncommittedLimit { .. } => {
            crate::admission::shed(quorate_api::OverloadReason::UncommittedBytes, Duration::from_millis(100))
        }
        ProposeError::TooLarge { proposal_bytes, limit_bytes } => {
            ApiError::InvalidRequest(format!("command of {proposal_bytes} bytes exceeds {limit_bytes}"))
        }
        ProposeError::TransferInProgress(to) => {
            ApiError::Unavailable(format!("leadership transfer to {to} in progress; retry"))
        }
        ProposeError::Halted(h) => ApiError::Internal(format!("node halted: {h}")),
        other => ApiError::Unavailable(other.to_string()),
    }
}

/// What a client is told when the core refuses a membership change (`hint`: the leader hint).
pub(crate) fn conf_refusal(e: ConfChangeError, hint: impl FnOnce() -> ApiError) -> ApiError {
    match e {
        ConfChangeError::NotLeader { .. } => hint(),
        ConfChangeError::Halted => ApiError::Internal("node halted".into()),
        other => ApiError::Refused(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorate_log::{Configuration, EntryId};

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta { last: EntryId::new(Term(1), LogIndex(index)), config: Configuration::default() }
    }

    #[test]
    fn taking_a_snapshot_deletes_no_snapshot_file() {
        // Issue 18: the driver deleted the previous snapshot file as soon as a new one was
        // taken, before the compaction recording it was durable; the store deletes files below
        // its log floor, after that write.
        let tmp = tempfile::tempdir().unwrap();
        let old = tmp.path().join("old.qsnap");
        let new = tmp.path().join("new.qsnap");
        std::fs::write(&old, b"old").unwrap();
        std::fs::write(&new, b"new").unwrap();
        let mut latest = Some((meta(10), old.clone()));
        let previous = snapshot_taken_keeps_files(&mut latest, meta(20), new.clone());
        assert_eq!(previous, Some((meta(10), old.clone())));
        assert_eq!(latest, Some((meta(20), new)));
        assert!(old.exists(), "the previous snapshot file was deleted before the new one was recorded");
    }

    #[test]
    fn a_snapshot_taken_below_the_latest_does_not_replace_it() {
        // A snapshot written off the apply thread is reported after an install that waited for
        // it (review of issue 20's change): the installed, newer snapshot stays the latest —
        // the core keeps the newer one too, and asks the driver to send exactly that file.
        let tmp = tempfile::tempdir().unwrap();
        let (installed, late) = (tmp.path().join("installed.qsnap"), tmp.path().join("late.qsnap"));
        let mut latest = Some((meta(500), installed.clone()));
        assert_eq!(snapshot_taken_keeps_files(&mut latest, meta(100), late.clone()), None);
        assert_eq!(latest, Some((meta(500), installed)));
        // The first one, or a newer one, is recorded.
        let mut none = None;
        assert_eq!(snapshot_taken_keeps_files(&mut none, meta(100), late.clone()), None);
        assert_eq!(none, Some((meta(100), late)));
    }
}
