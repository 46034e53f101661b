//! # quorate-client
//!
//! An async client for the Quorate reference node, a replicated, linearizable key-value
//! service. It speaks QUIC with mutual TLS ([`quorate_transport`]) and the wire types of
//! [`quorate_api`], and takes care of what every caller would otherwise get wrong:
//!
//! * **Leader discovery.** Writes go to the leader. A node that is not the leader answers
//!   `NotLeader { leader, addr }`; the client follows the hint at once, and when no leader is
//!   known it tries the configured members in turn. A node that just failed to answer (a
//!   timeout, no connection) is *suspect* for [`ClientConfig::suspect_for`]: hints naming it
//!   are not followed meanwhile (after a leader dies, its followers keep naming it until they
//!   elect another) and the other members are tried first, so a client finds a new leader as
//!   soon as there is one instead of returning to the dead one.
//! * **Bounded retries.** Failed attempts are retried with jittered exponential backoff
//!   ([`Backoff`]), bounded by a count ([`ClientConfig::retries_max`]) and a total time
//!   ([`ClientConfig::total_timeout`]); an overload answer (`ApiError::Shed`, or the older
//!   `ApiError::Overloaded`) is retried no sooner than its `retry_after_ms` (plus up to a
//!   tenth of jitter), unless its reason says a retry cannot succeed.
//!   Every retry draws a token from a rate-limited [`RetryBudget`], so retries cannot multiply
//!   the load on a cluster that is already struggling. Each attempt has its own timeout
//!   ([`ClientConfig::request_timeout`]). On a `quorate/2` connection a retry is sent with its
//!   attempt number ([`quorate_api::AttemptedRequest`]), so the node counts it against this
//!   client's retry budget there too (and in `quorate_client_retries_total`); a 0.1.0 node
//!   gets the plain request.
//! * **Exactly-once writes.** The client opens a session on its first write and gives each new
//!   write the next sequence number. A retry after a timeout or a lost connection reuses the
//!   same (session, sequence number), so the node applies the write once and answers the retry
//!   with the original result. Writes through one [`Client`] are therefore issued one at a
//!   time (reads run concurrently); for parallel writes use several clients — made with
//!   [`Client::session`] they share one connection per node.
//! * **Errors in plain words** ([`ClientError`]): which node, what happened, what to do.
//!
//! ```no_run
//! use quorate_client::{Client, ClientConfig, ReadConsistency};
//! use quorate_log::NodeId;
//! use quorate_transport::{ClusterId, TlsPaths};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let tls = TlsPaths {
//!     ca: "certs/ca.crt".into(),
//!     cert: "certs/client-admin.crt".into(),
//!     key: "certs/client-admin.key".into(),
//! };
//! let members = (1..=3u64).map(|i| (NodeId::new(i).unwrap(), format!("127.0.0.1:700{i}").parse().unwrap()));
//! let client = Client::new(ClientConfig::new(ClusterId::new("dev")?, members.collect(), tls))?;
//! let revision = client.put("greeting", "hello").await?;
//! let read = client.get("greeting", ReadConsistency::Linearizable).await?;
//! assert_eq!(read.kv.map(|kv| kv.value), Some(b"hello".to_vec()));
//! println!("written at revision {revision}");
//! # Ok(()) }
//! ```
//!
//! The client needs a tokio runtime (with the `time` and `net` drivers enabled).

#![forbid(unsafe_code)]

mod error;
mod lease;
mod link;
mod pages;
pub mod recipes;
mod retry;
mod watch;

pub use error::{ClientError, GiveUpReason};
pub use lease::{ByteKey, KeepAlive, Lease, LeaseId, LeaseLost};
use pages::follow_pages;
pub use pages::{EMPTY_PAGES_MAX, ScanPages};
pub use quorate_api::LeaseInfo;
pub use quorate_api::{
    ApiError, Compare, CompareOp, CompareTarget, HistoryInfo, KeyValue, Member, MemberKind, NodeHealth, NodeStatus,
    ReadConsistency, ReadInfo, StalenessBound, Txn, TxnOp, TxnResult, VersionInfo, WatchEvent,
};
pub use retry::{Backoff, RetryBudget, RetryBudgetConfig};
pub use watch::{EventKind, WATCH_FAILURES_MAX, Watch, WatchBatch, WatchOptions};

use link::{Link, LinkError, QuicLink};
use quorate_api::{ClientRequest, Request, Response, Sequenced, SessionId};
use quorate_core::SplitMix64;
use quorate_log::{LogIndex, NodeId};
use quorate_transport::{ClusterId, Credentials, PeerAddr, TlsPaths};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// Most members a client configuration may name (the configuration size limit of the log).
pub const MEMBERS_MAX: usize = quorate_log::MEMBERS_MAX;

/// Redirects followed at once, without backoff, within one call; beyond it the client backs
/// off, so two nodes that disagree about the leader cannot make it spin.
const REDIRECTS_IMMEDIATE_MAX: u32 = 3;

/// Times a paged read-only transaction is read again from its first page after the state
/// changed between two of its pages.
pub const TXN_READ_RESTARTS_MAX: u32 = 3;

/// Everything a [`Client`] needs to reach a cluster.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The cluster's name; must match the one in the client's certificate.
    pub cluster: ClusterId,
    /// Some or all members and their addresses (the client learns the leader's address from
    /// redirects).
    pub members: Vec<(NodeId, SocketAddr)>,
    /// The client's certificate, key and the cluster CA.
    pub tls: TlsPaths,
    /// Limit on one attempt (connection included).
    pub request_timeout: Duration,
    /// Limit on setting up a connection.
    pub connect_timeout: Duration,
    /// Retries after the first attempt, at most.
    pub retries_max: u32,
    /// Limit on a whole call, retries included.
    pub total_timeout: Duration,
    /// Delays between retries.
    pub backoff: Backoff,
    /// The token bucket that every retry draws from.
    pub retry_budget: RetryBudgetConfig,
    /// Seed of the jitter (`None`: from the clock).
    pub seed: Option<u64>,
    /// How long a node that did not answer an attempt (timeout, no connection) is passed over:
    /// leader hints naming it are not followed and other members are tried first, until it
    /// answers again or this time has passed. Of the order of the cluster's election timeout.
    pub suspect_for: Duration,
}

impl ClientConfig {
    /// A configuration with default limits: 5 s per attempt, 10 retries, 30 s per call.
    #[must_use]
    pub fn new(cluster: ClusterId, members: Vec<(NodeId, SocketAddr)>, tls: TlsPaths) -> ClientConfig {
        ClientConfig {
            cluster,
            members,
            tls,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            retries_max: 10,
            total_timeout: Duration::from_secs(30),
            backoff: Backoff::default(),
            retry_budget: RetryBudgetConfig::default(),
            seed: None,
            suspect_for: Duration::from_secs(2),
        }
    }

    fn validate(&self) -> Result<(), ClientError> {
        if self.members.is_empty() {
            return Err(ClientError::Config(
                "no endpoints: name at least one member (`--endpoints 1=HOST:PORT`)".into(),
            ));
        }
        if self.members.len() > MEMBERS_MAX {
            return Err(ClientError::Config(format!("at most {MEMBERS_MAX} endpoints, got {}", self.members.len())));
        }
        let mut seen = BTreeMap::new();
        for (id, addr) in &self.members {
            if let Some(other) = seen.insert(*id, *addr)
                && other != *addr
            {
                return Err(ClientError::Config(format!("node {id} is given two addresses: {other} and {addr}")));
            }
        }
        if self.request_timeout.is_zero() || self.total_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(ClientError::Config("timeouts must be longer than zero".into()));
        }
        Ok(())
    }
}

/// The result of a read of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Got {
    /// The pair, if the key is present.
    pub kv: Option<KeyValue>,
    /// Which node served the read, and how fresh it was.
    pub read: ReadInfo,
}

/// The result of a delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Deleted {
    /// Whether the key existed.
    pub existed: bool,
    /// The global revision after the delete.
    pub revision: u64,
}

/// The result of a compare-and-swap.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Swapped {
    /// Whether the swap happened.
    pub succeeded: bool,
    /// The pair before the operation.
    pub previous: Option<KeyValue>,
    /// The global revision after the operation.
    pub revision: u64,
}

/// The result of a scan.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Scanned {
    /// The pairs, in key order.
    pub kvs: Vec<KeyValue>,
    /// Whether more pairs lie in the range.
    pub more: bool,
    /// Which node served the read, and how fresh it was.
    pub read: ReadInfo,
}

/// One page of a scan ([`Client::scan_page`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScannedPage {
    /// The pairs, in key order.
    pub kvs: Vec<KeyValue>,
    /// Where the next page starts (pass it as `start` with the same `end`); `None`: the range
    /// holds no more keys.
    pub next: Option<Vec<u8>>,
    /// Which node served the read, and how fresh it was.
    pub read: ReadInfo,
}

/// The result of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TxnOutcome {
    /// Whether every comparison held (so the success branch ran).
    pub succeeded: bool,
    /// One result per operation of the branch that ran.
    pub results: Vec<TxnResult>,
    /// The global revision after the transaction.
    pub revision: u64,
}

/// Bytes asked for in one chunk of a streamed snapshot save ([`Client::snapshot_stream`]).
pub const SNAPSHOT_CHUNK_BYTES: u32 = 512 * 1024;
/// Chunks of a streamed snapshot save in flight at once.
pub const SNAPSHOT_WINDOW: usize = 4;

/// Where a streamed snapshot save stands ([`Client::snapshot_stream`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SaveProgress {
    /// The leader streaming it.
    pub node: NodeId,
    /// The applied index of the image.
    pub index: LogIndex,
    /// Bytes received and written so far.
    pub bytes: u64,
    /// The image's size, once the leader has written it whole.
    pub total: Option<u64>,
    /// Bytes of the image the leader has written so far.
    pub prepared: u64,
}

/// A completed streamed snapshot save.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamedSnapshot {
    /// The leader that streamed it.
    pub node: NodeId,
    /// The applied index it covers.
    pub index: LogIndex,
    /// The term of the entry at that index.
    pub term: quorate_log::Term,
    /// Its size.
    pub bytes: u64,
}

/// A client of a Quorate cluster. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Client {
    core: Core<Arc<QuicLink>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("cluster", &self.core.config.cluster)
            .field("members", &self.core.config.members)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Loads the TLS files and checks the configuration; connects lazily, on the first call.
    pub fn new(config: ClientConfig) -> Result<Client, ClientError> {
        config.validate()?;
        let credentials = Credentials::load(config.tls.clone())?;
        let identity = credentials.identity();
        if identity.cluster() != &config.cluster {
            return Err(ClientError::Config(format!(
                "the certificate {} is for cluster `{}`, not `{}`",
                config.tls.cert.display(),
                identity.cluster(),
                config.cluster
            )));
        }
        let link = QuicLink::new(Arc::new(credentials), config.connect_timeout, config.request_timeout);
        Ok(Client { core: Core::new(Arc::new(link), config) })
    }

    /// Another client over this one's connections (one QUIC connection per node, shared),
    /// with a session of its own: its writes run concurrently with this client's, as streams
    /// of the same connections, each exactly once in its own session. One client has one write
    /// in flight at a time (its session orders them); N clients made with `session` carry N
    /// concurrent writes over one connection per node instead of N connections — as etcd's
    /// clients multiplex requests over a gRPC connection. A node accepts a bounded number of
    /// concurrent requests per connection (further ones wait for a stream); the leader and
    /// the members a client suspects are its own. [`Client::close`] on any of them closes the
    /// shared connections.
    #[must_use]
    pub fn session(&self) -> Client {
        let mut config = self.core.config.clone();
        // Another seed for another jitter (the configured one stays reproducible).
        config.seed = Some(self.core.random());
        Client {
            core: Core::with_request_ids(Arc::clone(&self.core.link), config, Arc::clone(&self.core.next_request)),
        }
    }

    /// The members this client knows, with their addresses.
    #[must_use]
    pub fn members(&self) -> Vec<(NodeId, SocketAddr)> {
        self.core.addrs().iter().map(|(id, a)| (*id, *a)).collect()
    }

    /// The leader the client last heard of.
    #[must_use]
    pub fn leader(&self) -> Option<NodeId> {
        *lock(&self.core.leader)
    }

    /// Sets `key` to `value`; returns the revision of the write.
    pub async fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<u64, ClientError> {
        let body = Request::Put { key: key.as_ref().to_vec(), value: value.as_ref().to_vec() };
        match self.core.write(body).await? {
            (_, Response::Put { revision }) => Ok(revision),
            (node, other) => Err(unexpected(node, &other)),
        }
    }

    /// Reads `key` with the given consistency.
    pub async fn get(&self, key: impl AsRef<[u8]>, read: ReadConsistency) -> Result<Got, ClientError> {
        let body = Request::Get { key: key.as_ref().to_vec(), read };
        match self.core.send(body, None, Route::Leader).await? {
            (_, Response::Get { kv, read }) => Ok(Got { kv, read }),
            (node, other) => Err(unexpected(node, &other)),
        }
    }

    /// Reads `key` through node `node` (asked directly; no redirect and no retry elsewhere).
    /// At [`ReadConsistency::Linearizable`] the node confirms the read with a quorum round (a
    /// follower through its leader), so an answer says that `node` can serve the cluster:
    /// what `quorate endpoint health` asks of each member.
    pub async fn get_via(
        &self,
        node: NodeId,
        key: impl AsRef<[u8]>,
        read: ReadConsistency,
    ) -> Result<Got, ClientError> {
        let body = Request::Get { key: key.as_ref().to_vec(), read };
        match self.core.send(body, None, Route::Direct(node)).await? {
            (_, Response::Get { kv, read }) => Ok(Got { kv, read }),
            (node, other) => Err(unexpected(node, &other)),
        }
    }

    /// Removes `key`.
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<Deleted, ClientError> {
        match self.core.write(Request::Delete { key: key.as_ref().to_vec() }).await? {
            (_, Response::Delete { deleted, revision }) => Ok(Deleted { existed: deleted, revision }),
            (node, other) => Err(unexpected(node, &other)),
        }
    }

    /// Sets `key` to `value` if it holds `expected` (`None`: if it is absent).
    pub async fn cas(
        &self,
        key: impl AsRef<[u8]>,
        expected: Option<&[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<Swapped, ClientError> {
        let body = Request::Cas {
            key: key.as_ref().to_vec(),
            expected: expected.map(<[u8]>::to_vec),
            value: value.as_ref().to_vec(),
        };
        match self.core.write(body).await? {
            (_, Response::Cas { succeeded, previous, revision }) => Ok(Swapped { succeeded, previous, revision }),
            (node, other) => Err(unexpected(node, &other)),
        }
    }

    /// The pairs with keys in `[start, end)` (`end: None`: to the last key), at most `limit`.
    /// Nodes answer in pages of at most `limits::RESULT_BYTES_MAX` bytes; this follows the
    /// continuations until `limit` pairs or the end of the range (each page is its own read:
    /// the pages together are not one atomic read). `read` is that of the last page. To hold
    /// only one page at a time, use [`Client::scan_page`].
    pub async fn scan(
        &self,
        start: impl AsRef<[u8]>,
        end: Option<&[u8]>,
        limit: u32,
        read: ReadConsistency,
    ) -> Result<Scanned, ClientError> {
        self.core.scan(start.as_ref(), end, limit, read).await
    }

    /// One page of the pairs with keys in `[start, end)`: at most `limit` pairs and at most
    /// `limits::RESULT_BYTES_MAX` bytes, and where the next page starts.
    pub async fn scan_page(
        &self,
        start: impl AsRef<[u8]>,
        end: Option<&[u8]>,
        limit: u32,
        read: ReadConsistency,
    ) -> Result<ScannedPage, ClientError> {
        self.core.scan_page(start.as_ref(), end, limit, read).await
    }

    /// Runs a transaction atomically (exactly once if it writes). A read-only transaction is
    /// answered in pages read at one revision; if the state changes between two pages, it is
    /// read again from the first page, at most [`TXN_READ_RESTARTS_MAX`] times.
    pub async fn txn(&self, txn: Txn) -> Result<TxnOutcome, ClientError> {
        if txn.is_read_only() {
            return self.core.read_txn(txn).await;
        }
        match self.core.write(Request::Txn(txn)).await? {
            (_, Response::Txn { succeeded, results, revision }) => Ok(TxnOutcome { succeeded, results, revision }),
            (node, other) => Err(unexpected(node, &other)),
        }
    }

    /// The status of one node (asked directly; no redirect).
    pub async fn status(&self, node: NodeId) -> Result<NodeStatus, ClientError> {
        match self.core.send(Request::Status, None, Route::Direct(node)).await? {
            (_, Response::Status(s)) => Ok(s),
            (node, other) => Err(unexpected(node, &other)),
        }
    }

    /// The status of every known member, asked concurrently, in node order.
    pub async fn statuses(&self) -> Vec<(NodeId, Result<NodeStatus, ClientError>)> {
        let ids: Vec<NodeId> = self.core.addrs().keys().copied().collect();
        let futures = ids.iter().map(|&id| async move { (id, self.status(id).await) });
        join_all(futures.collect()).await
    }

    /// The members, their addresses and kinds.
    pub async fn member_list(&self) -> Result<Vec<Member>, ClientError> {
        match self.core.send(Request::MemberList, None, Route::Leader).await? {
            (_, Response::Members(m)) => Ok(m),
            (node, other) => Err(unexpected(node, &other)),
        }
    }

    /// Adds node `id` at `addr` as a learner (admin).
    ///
    /// `addr` is an `IP:PORT` ([`SocketAddr`]) or a `HOST:PORT` name ([`PeerAddr`]): the
    /// leader checks that it resolves, and the members resolve a name again before every dial.
    pub async fn member_add(&self, id: NodeId, addr: impl Into<PeerAddr>) -> Result<(), ClientError> {
        let addr = addr.into();
        if let Some(sa) = addr.socket() {
            self.core.learn_addr(id, sa);
        }
        self.done(Request::MemberAdd { id, addr: addr.to_string() }).await
    }

    /// Moves member `id` to `addr` (admin; etcd's `member update`): the change goes through
    /// the log, and every member dials `id` at `addr` once it has applied it. Needs cluster
    /// version 2.
    pub async fn member_update(&self, id: NodeId, addr: impl Into<PeerAddr>) -> Result<(), ClientError> {
        let addr = addr.into();
        self.done(Request::MemberUpdate { id, addr: addr.to_string() }).await?;
        if let Some(sa) = addr.socket() {
            self.core.learn_addr(id, sa);
        }
        Ok(())
    }

    /// Makes learner `id` a voter (admin).
    pub async fn member_promote(&self, id: NodeId) -> Result<(), ClientError> {
        self.done(Request::MemberPromote { id }).await
    }

    /// Removes member `id` (admin).
    pub async fn member_remove(&self, id: NodeId) -> Result<(), ClientError> {
        self.done(Request::MemberRemove { id }).await
    }

    /// Hands leadership to `to`, or to the most caught-up voter (admin).
    pub async fn leader_transfer(&self, to: Option<NodeId>) -> Result<(), ClientError> {
        self.done(Request::LeaderTransfer { to }).await?;
        *lock(&self.core.leader) = to;
        Ok(())
    }

    /// Writes a snapshot on the leader; returns its path there and the index it covers (admin).
    pub async fn snapshot_save(&self) -> Result<(String, LogIndex), ClientError> {
        match self.core.send(Request::SnapshotSave, None, Route::Leader).await? {
            (_, Response::SnapshotSaved { path, index }) => Ok((path, index)),
            (node, other) => Err(unexpected(node, &other)),
        }
    }

    /// Streams a snapshot of the state machine from the leader into `out` (admin; `quorate
    /// snapshot save FILE`): the leader confirms its leadership with a quorum round, takes an
    /// image at an applied index at or after the confirmed one (off its apply thread), and
    /// the client fetches it in chunks of [`SNAPSHOT_CHUNK_BYTES`], [`SNAPSHOT_WINDOW`] chunks
    /// in flight at a time. There is no deadline on the whole save: each chunk has the
    /// request timeout, and the save fails if no byte arrives (nor any progress of the image
    /// being written) for `idle`. `progress` is called after every step.
    ///
    /// The bytes written to `out` are a snapshot file (`quorate snapshot status` verifies
    /// it); they are whole only if this returns `Ok`: the end is confirmed by a second quorum
    /// round, so a leader deposed during the save (or cut off from its quorum) makes it fail.
    /// Needs cluster version 2; refused without sending on a `quorate/1` connection.
    pub async fn snapshot_stream<W: std::io::Write>(
        &self,
        out: &mut W,
        idle: Duration,
        mut progress: impl FnMut(&SaveProgress),
    ) -> Result<StreamedSnapshot, ClientError> {
        let (node, opened) = self.core.send(Request::SnapshotStreamOpen, None, Route::Leader).await?;
        let Response::SnapshotStreamOpened { stream, index, term } = opened else {
            return Err(unexpected(node, &opened));
        };
        let mut state = SaveProgress { node, index, bytes: 0, total: None, prepared: 0 };
        progress(&state);
        let mut last_progress = Instant::now();
        let fetch = |offset: u64, len: u32| async move {
            self.core.send(Request::SnapshotStreamFetch { stream, offset, len }, None, Route::Direct(node)).await
        };
        loop {
            if state.total == Some(state.bytes) {
                break;
            }
            let next = state.bytes;
            let window: Vec<_> = (0..SNAPSHOT_WINDOW as u64)
                .map(|i| next + i * u64::from(SNAPSHOT_CHUNK_BYTES))
                .filter(|o| state.total.is_none_or(|t| *o < t))
                .map(|o| fetch(o, SNAPSHOT_CHUNK_BYTES))
                .collect();
            let mut moved = false;
            for answer in join_all(window).await {
                let (_, answer) = answer?;
                let Response::SnapshotStreamData { offset, data, total, prepared, .. } = answer else {
                    return Err(unexpected(node, &answer));
                };
                if prepared > state.prepared {
                    state.prepared = prepared;
                    moved = true;
                }
                if total.is_some() {
                    state.total = total;
                }
                // In order only: a chunk after a short or empty one waits for the next round.
                if offset != state.bytes || data.is_empty() {
                    continue;
                }
                out.write_all(&data).map_err(|e| ClientError::Config(format!("writing the snapshot: {e}")))?;
                state.bytes += data.len() as u64;
                moved = true;
            }
            progress(&state);
            let now = Instant::now();
            if moved {
                last_progress = now;
            } else if now.duration_since(last_progress) >= idle {
                return Err(ClientError::GaveUp {
                    attempts: 1,
                    elapsed: now.duration_since(last_progress),
                    reason: GiveUpReason::Deadline,
                    last: format!("node {node}: no snapshot bytes for {} ms", idle.as_millis()),
                });
            } else {
                // The image is still being written: ask again shortly.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let (_, end) = fetch(state.bytes, 0).await?;
        match end {
            Response::SnapshotStreamData { complete: true, total: Some(t), .. } if t == state.bytes => {
                out.flush().map_err(|e| ClientError::Config(format!("writing the snapshot: {e}")))?;
                Ok(StreamedSnapshot { node, index, term, bytes: state.bytes })
            }
            other => Err(unexpected(node, &other)),
        }
    }

    /// Asks one node (directly; no redirect) to write its flight recording into its
    /// `<data_dir>/flight/` (admin); returns the file's path on that node and its input count.
    pub async fn flight_dump(&self, node: NodeId) -> Result<(String, u64), ClientError> {
        match self.core.send(Request::FlightDump, None, Route::Direct(node)).await? {
            (_, Response::FlightDumped { path, inputs }) => Ok((path, inputs)),
            (node, other) => Err(unexpected(node, &other)),
        }
    }

    /// The versions of one node (asked directly; no redirect). A 0.1.0 node cannot answer.
    pub async fn versions(&self, node: NodeId) -> Result<VersionInfo, ClientError> {
        match self.core.send(Request::Versions, None, Route::Direct(node)).await? {
            (_, Response::Versions(v)) => Ok(v),
            (node, other) => Err(unexpected(node, &other)),
        }
    }

    /// The health of one node (asked directly; no redirect): refusing writes for disk space,
    /// recovering from lost state, free space, database size. A 0.1.0 node cannot answer.
    pub async fn health(&self, node: NodeId) -> Result<NodeHealth, ClientError> {
        match self.core.send(Request::Health, None, Route::Direct(node)).await? {
            (_, Response::Health(h)) => Ok(h),
            (node, other) => Err(unexpected(node, &other)),
        }
    }

    /// Commits cluster version `version` through the log (admin; `quorate cluster finalize`
    /// checks first that every member supports it).
    pub async fn finalize(&self, version: u32) -> Result<(), ClientError> {
        self.done(Request::Finalize { version }).await
    }

    /// Deletes the keys in `[start, end)`, at most `limits::SCAN_LIMIT_MAX` per call — 2,000
    /// while the multi-version history is recorded (exactly once); the answer says whether keys
    /// remain. Needs cluster version 2.
    pub async fn delete_range(
        &self,
        start: impl AsRef<[u8]>,
        end: impl AsRef<[u8]>,
    ) -> Result<(u64, bool), ClientError> {
        let body = Request::DeleteRange { start: start.as_ref().to_vec(), end: end.as_ref().to_vec() };
        match self.core.write(body).await? {
            (_, Response::DeletedRange { deleted, more, .. }) => Ok((deleted, more)),
            (node, other) => Err(unexpected(node, &other)),
        }
    }

    /// Reads `key` as it was at key-value `revision` (the multi-version history; needs cluster
    /// version 2). Errors: [`ApiError::Compacted`] below the
    /// compaction revision, [`ApiError::FutureRevision`]
    /// past the current one (as the serving node knows it: at
    /// [`ReadConsistency::Linearizable`], as the cluster does).
    pub async fn get_at(
        &self,
        key: impl AsRef<[u8]>,
        revision: u64,
        read: ReadConsistency,
    ) -> Result<Got, ClientError> {
        let body = Request::GetAt { key: key.as_ref().to_vec(), revision, read };
        match self.core.send(body, None, Route::Leader).await? {
            (_, Response::Get { kv, read }) => Ok(Got { kv, read }),
            (node, other) => Err(unexpected(node, &other)),
        }
    }

    /// One page of the pairs with keys in `[start, end)` as they were at `revision`: ask the
    /// next page with its `next` as `start` and the same revision (the pages together are one
    /// read of that revision, unless it is compacted in between: then `Compacted`).
    pub async fn scan_at_page(
        &self,
        start: impl AsRef<[u8]>,
        end: Option<&[u8]>,
        limit: u32,
        revision: u64,
        read: ReadConsistency,
    ) -> Result<ScannedPage, ClientError> {
        self.core.scan_at_page(start.as_ref(), end, limit, revision, read).await
    }

    /// Up to `limit` pairs with keys in `[start, end)` as they were at `revision`, following
    /// the pages ([`Client::scan_at_page`]): one read of that revision.
    pub async fn scan_at(
        &self,
        start: impl AsRef<[u8]>,
        end: Option<&[u8]>,
        limit: u32,
        revision: u64,
        read: ReadConsistency,
    ) -> Result<Scanned, ClientError> {
        self.core.scan_at(start.as_ref(), end, limit, revision, read).await
    }

    /// The pages of a scan of `[start, end)` (at `revision`, or each page read now), one at a
    /// time, at most `limit` pairs in all: [`Client::scan`] or [`Client::scan_at`] without
    /// holding more than one page, with the same checks that the pages move on.
    #[must_use]
    pub fn scan_pages(
        &self,
        start: impl AsRef<[u8]>,
        end: Option<&[u8]>,
        limit: u32,
        revision: Option<u64>,
        read: ReadConsistency,
    ) -> ScanPages<'_> {
        ScanPages::new(self, start.as_ref(), end, limit, revision, read)
    }

    /// Compacts the history to `revision` (admin; through the log): reads below it are refused
    /// from then on. Returns the compaction revision (unchanged if it was already past).
    pub async fn compact(&self, revision: u64) -> Result<u64, ClientError> {
        match self.core.send(Request::Compact { revision }, None, Route::Leader).await? {
            (_, Response::Compacted { compacted }) => Ok(compacted),
            (node, other) => Err(unexpected(node, &other)),
        }
    }

    /// The multi-version history of one node (asked directly): compaction revision, entries
    /// and bytes kept. A 0.1.0 node cannot answer.
    pub async fn history(&self, node: NodeId) -> Result<HistoryInfo, ClientError> {
        match self.core.send(Request::History, None, Route::Direct(node)).await? {
            (_, Response::History(h)) => Ok(h),
            (node, other) => Err(unexpected(node, &other)),
        }
    }

    /// Closes every connection (calls after this reconnect).
    pub fn close(&self) {
        self.core.link.close();
    }

    async fn done(&self, body: Request) -> Result<(), ClientError> {
        match self.core.send(body, None, Route::Leader).await? {
            (_, Response::Done) => Ok(()),
            (node, other) => Err(unexpected(node, &other)),
        }
    }
}

/// Polls futures together on the current task (no spawning, so they may borrow).
async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in futures.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *out = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("every future completed")).collect()
}

fn unexpected(node: NodeId, response: &Response) -> ClientError {
    ClientError::Unexpected { node, what: format!("{response:?}").chars().take(200).collect() }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// To the leader (or whoever may know it).
    Leader,
    /// To this node only.
    Direct(NodeId),
}

#[derive(Clone, Copy, Debug)]
struct Session {
    id: SessionId,
    next_seq: u64,
}

/// A failure inside one call, before it becomes a [`ClientError`].
struct Failure {
    error: ClientError,
    /// An attempt may have been applied (so the caller must not reuse the operation blindly).
    ambiguous: bool,
}

/// The retry, redirect and session logic, over any [`Link`].
struct Core<L> {
    link: L,
    config: ClientConfig,
    order: Vec<NodeId>,
    addrs: Mutex<BTreeMap<NodeId, SocketAddr>>,
    leader: Mutex<Option<NodeId>>,
    /// Nodes that failed to answer, and until when they are passed over.
    suspects: Mutex<BTreeMap<NodeId, Instant>>,
    /// Request ids, shared by the clients over one link (ids are unique per connection).
    next_request: Arc<AtomicU64>,
    rotation: AtomicUsize,
    budget: Mutex<RetryBudget>,
    rng: Mutex<SplitMix64>,
    /// Held for the whole of a write: one write in flight per session.
    session: tokio::sync::Mutex<Option<Session>>,
}

impl<L: Link> Core<L> {
    fn new(link: L, config: ClientConfig) -> Core<L> {
        Core::with_request_ids(link, config, Arc::new(AtomicU64::new(1)))
    }

    fn with_request_ids(link: L, config: ClientConfig, next_request: Arc<AtomicU64>) -> Core<L> {
        let addrs: BTreeMap<NodeId, SocketAddr> = config.members.iter().copied().collect();
        let seed = config.seed.unwrap_or_else(|| {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            (t.as_nanos() as u64) ^ u64::from(std::process::id()).rotate_left(32)
        });
        Core {
            link,
            order: addrs.keys().copied().collect(),
            addrs: Mutex::new(addrs),
            leader: Mutex::new(None),
            suspects: Mutex::new(BTreeMap::new()),
            next_request,
            rotation: AtomicUsize::new((seed % 1024) as usize),
            budget: Mutex::new(RetryBudget::new(config.retry_budget, Instant::now())),
            rng: Mutex::new(SplitMix64::new(seed)),
            session: tokio::sync::Mutex::new(None),
            config,
        }
    }

    fn addrs(&self) -> BTreeMap<NodeId, SocketAddr> {
        lock(&self.addrs).clone()
    }

    /// Remembers `addr` for `node` from a leader hint, unless `node` is a configured member:
    /// a hint carries the address the leader's *peers* use, which need not be one clients can
    /// reach (behind a proxy or a separate peer network it is not), so a configured client
    /// address is never replaced by one. (Found by a chaos soak run: a hint naming the peer
    /// proxy's front made the new leader look dead to the clients once the proxy evicted them.)
    fn learn_addr(&self, node: NodeId, addr: SocketAddr) {
        if self.config.members.iter().any(|(m, _)| *m == node) {
            return;
        }
        lock(&self.addrs).insert(node, addr);
    }

    /// The next member in turn, skipping `after` when there is another, and suspects when
    /// there is a member that is not.
    fn next_member(&self, after: Option<NodeId>) -> NodeId {
        let n = self.order.len();
        let mut fallback = None;
        for _ in 0..n {
            let i = self.rotation.fetch_add(1, Ordering::Relaxed) % n;
            let node = self.order[i];
            if Some(node) != after || n == 1 {
                if !self.is_suspect(node) {
                    return node;
                }
                fallback.get_or_insert(node);
            }
        }
        fallback.unwrap_or(self.order[0])
    }

    /// Marks `node` as not answering for [`ClientConfig::suspect_for`].
    fn suspect(&self, node: NodeId) {
        let now = Instant::now();
        let mut suspects = lock(&self.suspects);
        suspects.retain(|_, t| *t > now);
        suspects.insert(node, now + self.config.suspect_for);
    }

    fn is_suspect(&self, node: NodeId) -> bool {
        lock(&self.suspects).get(&node).is_some_and(|t| *t > Instant::now())
    }

    fn answered(&self, node: NodeId) {
        lock(&self.suspects).remove(&node);
    }

    fn first_target(&self) -> NodeId {
        let leader = *lock(&self.leader);
        match leader {
            Some(l) if lock(&self.addrs).contains_key(&l) && !self.is_suspect(l) => l,
            _ => self.next_member(None),
        }
    }

    fn forget_leader(&self, node: NodeId) {
        let mut leader = lock(&self.leader);
        if *leader == Some(node) {
            *leader = None;
        }
    }

    /// A write, exactly once: opens the session if needed and takes the next sequence number.
    async fn write(&self, body: Request) -> Result<(NodeId, Response), ClientError> {
        let mut session = self.session.lock().await;
        // A session that expired before this write reached the log: open a new one and try
        // again, once.
        for _ in 0..2 {
            let current = match *session {
                Some(s) => s,
                None => {
                    let id = self.open_session().await?;
                    *session = Some(Session { id, next_seq: 1 });
                    Session { id, next_seq: 1 }
                }
            };
            let sequenced = Sequenced { session: current.id, seq: current.next_seq };
            *session = Some(Session { id: current.id, next_seq: current.next_seq + 1 });
            match self.send_inner(body.clone(), Some(sequenced), Route::Leader).await {
                Ok(answer) => return Ok(answer),
                Err(Failure {
                    error: ClientError::Rejected { error: ApiError::SessionExpired, .. },
                    ambiguous: false,
                }) => {
                    *session = None;
                }
                Err(f) => return Err(f.error),
            }
        }
        Err(ClientError::Config("the cluster expired two new sessions in a row; check the nodes' clocks".into()))
    }

    async fn scan_page(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: u32,
        read: ReadConsistency,
    ) -> Result<ScannedPage, ClientError> {
        self.page(Request::ScanPaged { start: start.to_vec(), end: end.map(<[u8]>::to_vec), limit, read }).await
    }

    /// One page of a scan (`body`: a scan request), from the leader.
    async fn page(&self, body: Request) -> Result<ScannedPage, ClientError> {
        match self.send(body, None, Route::Leader).await? {
            (_, Response::ScanPage { kvs, next, read }) => Ok(ScannedPage { kvs, next, read }),
            (node, other) => Err(unexpected(node, &other)),
        }
    }

    async fn scan_at_page(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: u32,
        revision: u64,
        read: ReadConsistency,
    ) -> Result<ScannedPage, ClientError> {
        self.page(Request::ScanAt { start: start.to_vec(), end: end.map(<[u8]>::to_vec), limit, revision, read }).await
    }

    /// Follows the pages of a scan at `revision` until `limit` pairs or the end of the range.
    async fn scan_at(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: u32,
        revision: u64,
        read: ReadConsistency,
    ) -> Result<Scanned, ClientError> {
        follow_pages(
            start,
            limit,
            |from, want| async move { self.scan_at_page(&from, end, want, revision, read).await },
        )
        .await
    }

    /// Follows scan pages until `limit` pairs or the end of the range.
    async fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: u32,
        read: ReadConsistency,
    ) -> Result<Scanned, ClientError> {
        follow_pages(start, limit, |from, want| async move { self.scan_page(&from, end, want, read).await }).await
    }

    /// A read-only transaction, page by page at one revision; read again from the first page
    /// (at most [`TXN_READ_RESTARTS_MAX`] times) if the state changed in between.
    async fn read_txn(&self, txn: Txn) -> Result<TxnOutcome, ClientError> {
        let mut restarts = 0;
        'again: loop {
            let mut results = Vec::new();
            let (mut from, mut revision) = (0u32, None);
            // Each page but the last holds at least one result: at most TXN_OPS_MAX pages.
            for _ in 0..=quorate_api::limits::TXN_OPS_MAX {
                let body = Request::TxnPaged { txn: txn.clone(), from, revision };
                match self.send_inner(body, None, Route::Leader).await {
                    Ok((node, Response::TxnPage { succeeded, results: page, revision: at, next })) => {
                        results.extend(page);
                        match next {
                            None => return Ok(TxnOutcome { succeeded, results, revision: at }),
                            Some(n) if n > from => (from, revision) = (n, Some(at)),
                            Some(n) => {
                                return Err(ClientError::Unexpected {
                                    node,
                                    what: format!("a transaction page from operation {from} continues at {n}"),
                                });
                            }
                        }
                    }
                    Ok((node, other)) => return Err(unexpected(node, &other)),
                    Err(Failure {
                        error: ClientError::Rejected { error: ApiError::PageExpired { .. }, .. }, ..
                    }) if restarts < TXN_READ_RESTARTS_MAX => {
                        restarts += 1;
                        continue 'again;
                    }
                    Err(f) => return Err(f.error),
                }
            }
            return Err(ClientError::Config("a paged transaction did not end within its operation count".into()));
        }
    }

    async fn open_session(&self) -> Result<SessionId, ClientError> {
        match self.send(Request::OpenSession, None, Route::Leader).await? {
            (_, Response::Session(id)) => Ok(id),
            (node, other) => Err(unexpected(node, &other)),
        }
    }

    async fn send(
        &self,
        body: Request,
        session: Option<Sequenced>,
        route: Route,
    ) -> Result<(NodeId, Response), ClientError> {
        self.send_inner(body, session, route).await.map_err(|f| f.error)
    }

    fn random(&self) -> u64 {
        lock(&self.rng).next_u64()
    }

    /// One call: attempts, redirects and retries until an answer or a limit.
    async fn send_inner(
        &self,
        body: Request,
        session: Option<Sequenced>,
        route: Route,
    ) -> Result<(NodeId, Response), Failure> {
        let started = Instant::now();
        let deadline = started + self.config.total_timeout;
        // Whether a repeat of this request could be applied twice, were it not sequenced:
        // then a lost answer leaves the outcome unknown.
        // (Opening a session is safe to repeat: an unused session just expires.)
        let mutates = !matches!(body, Request::OpenSession) && body.access() != quorate_api::Access::Read;
        let mut target = match route {
            Route::Leader => self.first_target(),
            Route::Direct(node) => node,
        };
        let mut attempts = 0u32;
        let mut retries = 0u32;
        let mut redirects = 0u32;
        let mut ambiguous = false;
        loop {
            attempts += 1;
            let Some(addr) = lock(&self.addrs).get(&target).copied() else {
                return Err(Failure { error: ClientError::UnknownNode(target), ambiguous });
            };
            let request =
                ClientRequest { id: self.next_request.fetch_add(1, Ordering::Relaxed), session, body: body.clone() };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let limit = self.config.request_timeout.min(remaining);
            // The attempt number the node sees: retries after a failure or a refusal so far
            // (redirects followed at once are not retries).
            let outcome = tokio::time::timeout(limit, self.link.call(target, addr, request, retries)).await;
            // What to do next: `None` = give up with `error`; else the minimum delay.
            let mut floor = Duration::ZERO;
            let mut immediate = false;
            let mut lost = false;
            let last: String;
            if let Ok(Ok(_)) = &outcome {
                self.answered(target);
            }
            match outcome {
                Err(_) => {
                    self.link.forget(target);
                    self.suspect(target);
                    ambiguous |= mutates;
                    last = format!("node {target} at {addr} did not answer within {} ms", limit.as_millis());
                    if route == Route::Leader {
                        self.forget_leader(target);
                        target = self.next_member(Some(target));
                    }
                }
                Ok(Err(LinkError::Connect(e))) => {
                    self.suspect(target);
                    last = format!("cannot connect to node {target} at {addr}: {e}");
                    if route == Route::Leader {
                        self.forget_leader(target);
                        target = self.next_member(Some(target));
                    }
                }
                Ok(Err(LinkError::Lost(e))) => {
                    ambiguous |= mutates;
                    lost = true;
                    last = format!("lost the answer of node {target} at {addr}: {e}");
                    if route == Route::Leader {
                        self.forget_leader(target);
                        target = self.next_member(Some(target));
                    }
                }
                Ok(Ok(response)) => match response.result {
                    Ok(answer) => {
                        if route == Route::Leader && mutates {
                            *lock(&self.leader) = Some(target);
                        }
                        return Ok((target, answer));
                    }
                    Err(ApiError::NotLeader { leader, addr: hint }) if route == Route::Leader => {
                        last = format!("node {target} is not the leader");
                        if let (Some(l), Some(a)) = (leader, hint.as_deref().and_then(|a| a.parse().ok())) {
                            self.learn_addr(l, a);
                        }
                        // A hint naming a node that just failed to answer is likely stale (the
                        // followers of a dead leader name it until they elect another).
                        match leader {
                            Some(l) if l != target && lock(&self.addrs).contains_key(&l) && !self.is_suspect(l) => {
                                *lock(&self.leader) = Some(l);
                                redirects += 1;
                                immediate = redirects <= REDIRECTS_IMMEDIATE_MAX;
                                target = l;
                            }
                            _ => {
                                self.forget_leader(target);
                                target = self.next_member(Some(target));
                            }
                        }
                    }
                    Err(ApiError::Overloaded { reason, retry_after_ms }) => {
                        last = format!("node {target} is overloaded ({reason})");
                        floor = Duration::from_millis(u64::from(retry_after_ms));
                    }
                    Err(ApiError::Shed(o)) if o.reason.is_retryable() => {
                        // Refused before any work: safe to repeat, never sooner than the hint.
                        last = format!("node {target} shed the request ({})", o.reason);
                        floor = Duration::from_millis(u64::from(o.retry_after_ms));
                    }
                    Err(ApiError::Unavailable(why)) => {
                        last = format!("node {target} cannot serve now: {why}");
                        if route == Route::Leader {
                            self.forget_leader(target);
                            target = self.next_member(Some(target));
                        }
                    }
                    Err(ApiError::Timeout) => {
                        // The node may have appended the write: retry the same (session, seq).
                        ambiguous |= mutates;
                        last = format!("node {target} timed out; the outcome is unknown");
                    }
                    Err(ApiError::SessionExpired) if ambiguous => {
                        // An earlier attempt may have been applied before the session ended
                        // (or stopped being usable): the outcome is unknown, not a refusal.
                        return Err(Failure {
                            error: ClientError::OutcomeUnknown {
                                attempts,
                                elapsed: started.elapsed(),
                                last: format!(
                                    "node {target}: the session ended before a retry could learn the outcome"
                                ),
                            },
                            ambiguous,
                        });
                    }
                    Err(error) => {
                        return Err(Failure { error: ClientError::Rejected { node: target, error }, ambiguous });
                    }
                },
            }

            let give_up = |reason: GiveUpReason, last: String| {
                let elapsed = started.elapsed();
                let error = if ambiguous {
                    ClientError::OutcomeUnknown { attempts, elapsed, last }
                } else {
                    ClientError::GaveUp { attempts, elapsed, reason, last }
                };
                Failure { error, ambiguous }
            };
            // A request to one named node (status) is retried once, and only after a lost
            // answer (a stale cached connection): a node that is down should cost one
            // connection attempt, not a whole retry schedule.
            let retries_max = match route {
                Route::Leader => self.config.retries_max,
                Route::Direct(_) if lost => self.config.retries_max.min(1),
                Route::Direct(_) => 0,
            };
            if attempts > retries_max {
                return Err(give_up(GiveUpReason::Retries, last));
            }
            let delay = if immediate {
                Duration::ZERO
            } else {
                let d = self.config.backoff.delay(retries, self.random()).max(overload_delay(floor, self.random()));
                retries += 1;
                d
            };
            let now = Instant::now();
            if now + delay >= deadline {
                return Err(give_up(GiveUpReason::Deadline, last));
            }
            if !immediate && !lock(&self.budget).try_withdraw(now) {
                return Err(give_up(GiveUpReason::Budget, last));
            }
            tracing::debug!(target: "quorate::client", attempt = attempts, delay_ms = delay.as_millis() as u64, next = %target, "retrying: {last}");
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The wait after an overload answer with hint `floor`: the hint plus up to a tenth more,
/// drawn from `random`, so that clients refused together do not return together. Never less
/// than the hint.
fn overload_delay(floor: Duration, random: u64) -> Duration {
    let spread_ns = u64::try_from(floor.as_nanos() / 10).unwrap_or(u64::MAX);
    floor.saturating_add(Duration::from_nanos(random % spread_ns.saturating_add(1)))
}

#[cfg(test)]
mod tests;
