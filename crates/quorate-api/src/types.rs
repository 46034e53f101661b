//! Requests, responses, log commands and snapshot chunks. Every enum is append-only.

use crate::limits;
use quorate_core::Role as RaftRole;
use quorate_log::{Configuration, LogIndex, NodeId, SnapshotMeta, Term};
use serde::{Deserialize, Serialize};

/// A client session, for exactly-once writes: allocated through the log with
/// [`Request::OpenSession`], then used with increasing sequence numbers.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct SessionId(pub u64);

/// A lease: keys attached to it are deleted when it is revoked or expires. Its id is the log
/// index of the entry that granted it (unique, never reused); knowing an id gives nothing, as
/// only the principal that granted it (or an admin) may keep it alive, revoke it or attach
/// keys to it. Since 0.2.0.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct LeaseId(pub u64);

/// A write's place in its session: a retry carries the same pair and is answered with the
/// original result, applied once.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Sequenced {
    /// The session.
    pub session: SessionId,
    /// Sequence number within the session, starting at 1, increasing by one per new write.
    pub seq: u64,
}

/// How a read is ordered.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ReadConsistency {
    /// Linearizable (ReadIndex): sees every write acknowledged before the read started. Served
    /// by any node; followers ask the leader for the read index.
    #[default]
    Linearizable,
    /// Leader lease: linearizable while clocks drift less than the configured bound; served by
    /// the leader without a quorum round trip.
    Lease,
    /// Local and serializable: may lag; the response says by how much.
    Stale,
    /// Local and serializable as [`ReadConsistency::Stale`], but refused
    /// ([`ApiError::Unavailable`], retryable: ask another member or the leader) when the
    /// serving replica is further behind than the caller's bound. Since 0.2.0: a 0.1.0 node
    /// cannot decode it, so a client sends it only on a `quorate/2` connection and a node
    /// serves it only at cluster version 2 or more.
    BoundedStale(StalenessBound),
}

/// How far behind a [`ReadConsistency::BoundedStale`] read may be served. Each bound that is
/// set must hold; a bound left `None` is not checked (both `None` is a plain stale read).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct StalenessBound {
    /// Most log entries the replica may know committed and not yet have applied
    /// (`known_commit - applied` when the read is admitted).
    pub max_lag_entries: Option<u64>,
    /// Most milliseconds since the replica last heard from a leader (a leader: 0). A replica
    /// that never heard from one is refused whenever this is set.
    pub max_since_leader_ms: Option<u64>,
}

impl StalenessBound {
    /// Why a replica that knows `known_commit`, has applied `applied` and last heard from a
    /// leader `since_leader_ms` ago may not serve a read with this bound; `None`: it may.
    #[must_use]
    pub fn violation(&self, known_commit: u64, applied: u64, since_leader_ms: Option<u64>) -> Option<String> {
        let lag = known_commit.saturating_sub(applied);
        if let Some(max) = self.max_lag_entries
            && lag > max
        {
            return Some(format!(
                "replica too stale: {lag} committed entries not yet applied, more than the bound of {max}; retry on \
                 another member or the leader"
            ));
        }
        if let Some(max) = self.max_since_leader_ms {
            match since_leader_ms {
                Some(ms) if ms <= max => {}
                Some(ms) => {
                    return Some(format!(
                        "replica too stale: last heard from a leader {ms} ms ago, more than the bound of {max} ms; \
                         retry on another member or the leader"
                    ));
                }
                None => {
                    return Some(
                        "replica too stale: it has not heard from a leader yet; retry on another member or the leader"
                            .into(),
                    );
                }
            }
        }
        None
    }
}

/// A request from a client.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ClientRequest {
    /// Chosen by the client, echoed in the response.
    pub id: u64,
    /// For writes: the session and sequence number (exactly-once). `None`: at-most-once.
    pub session: Option<Sequenced>,
    /// What to do.
    pub body: Request,
}

/// The operations.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Request {
    /// Set `key` to `value`.
    Put {
        /// Key.
        #[serde(with = "quorate_log::byte_string")]
        key: Vec<u8>,
        /// Value.
        #[serde(with = "quorate_log::byte_string")]
        value: Vec<u8>,
    },
    /// Read `key`.
    Get {
        /// Key.
        #[serde(with = "quorate_log::byte_string")]
        key: Vec<u8>,
        /// Ordering.
        read: ReadConsistency,
    },
    /// Remove `key`.
    Delete {
        /// Key.
        #[serde(with = "quorate_log::byte_string")]
        key: Vec<u8>,
    },
    /// Set `key` to `value` if it holds `expected` (`None`: if it is absent).
    Cas {
        /// Key.
        #[serde(with = "quorate_log::byte_string")]
        key: Vec<u8>,
        /// The required current value.
        #[serde(with = "quorate_log::byte_string::option")]
        expected: Option<Vec<u8>>,
        /// The new value.
        #[serde(with = "quorate_log::byte_string")]
        value: Vec<u8>,
    },
    /// Keys in `[start, end)` (`end: None`: every key from `start`), at most `limit`.
    Scan {
        /// First key.
        #[serde(with = "quorate_log::byte_string")]
        start: Vec<u8>,
        /// Exclusive end.
        #[serde(with = "quorate_log::byte_string::option")]
        end: Option<Vec<u8>>,
        /// Most pairs to return.
        limit: u32,
        /// Ordering.
        read: ReadConsistency,
    },
    /// If every comparison holds, run `success`, else `failure`, atomically.
    Txn(Txn),
    /// This node's status.
    Status,
    /// The members and their addresses.
    MemberList,
    /// Add a node as a learner (admin).
    MemberAdd {
        /// Its id.
        id: NodeId,
        /// Its address (`host:port`).
        addr: String,
    },
    /// Make a learner a voter (admin).
    MemberPromote {
        /// The learner.
        id: NodeId,
    },
    /// Remove a member (admin).
    MemberRemove {
        /// The member.
        id: NodeId,
    },
    /// Hand leadership to `to` (or to the most caught-up voter) (admin).
    LeaderTransfer {
        /// The target.
        to: Option<NodeId>,
    },
    /// Write a snapshot of the state machine to the node's backup directory (admin).
    SnapshotSave,
    /// Allocate a session for exactly-once writes (write).
    OpenSession,
    /// This node's versions: binary, storage format, committed cluster version and the cluster
    /// versions it supports (read). Since 0.2.0; a 0.1.0 node cannot decode it.
    Versions,
    /// Raise the committed cluster version to `version` (admin), through the log. The caller
    /// (`quorate cluster finalize`) first checks that every member supports it; after it
    /// commits, behaviour gated on it is on and binaries that do not support it can no longer
    /// join or open the data. Since 0.2.0.
    Finalize {
        /// The cluster version to commit.
        version: u32,
    },
    /// Delete every key in `[start, end)`, at most [`limits::SCAN_LIMIT_MAX`] keys per request
    /// (2,000 while the multi-version history is recorded; the answer's `more` says whether
    /// keys remain) (write). Needs cluster version 2: refused before `quorate cluster
    /// finalize`. Since 0.2.0.
    DeleteRange {
        /// First key.
        #[serde(with = "quorate_log::byte_string")]
        start: Vec<u8>,
        /// Exclusive end.
        #[serde(with = "quorate_log::byte_string")]
        end: Vec<u8>,
    },
    /// Write the node's flight recording (its consensus core's recent inputs, from the oldest
    /// checkpoint it keeps) into `<data_dir>/flight/` (admin; node-local, not through the log).
    /// Since 0.2.0.
    FlightDump,
    /// One page of the keys in `[start, end)` (`end: None`: every key from `start`): at most
    /// `limit` pairs and at most [`limits::RESULT_BYTES_MAX`] bytes, answered with
    /// [`Response::ScanPage`], whose `next` is where the following page starts. Since 0.2.0
    /// (`quorate/2` connections; a 0.1.0 node cannot decode it).
    ScanPaged {
        /// First key.
        #[serde(with = "quorate_log::byte_string")]
        start: Vec<u8>,
        /// Exclusive end.
        #[serde(with = "quorate_log::byte_string::option")]
        end: Option<Vec<u8>>,
        /// Most pairs to return in this page.
        limit: u32,
        /// Ordering.
        read: ReadConsistency,
    },
    /// A read-only transaction answered in pages of at most [`limits::RESULT_BYTES_MAX`] bytes
    /// ([`Response::TxnPage`]). The first page has `from: 0` and no `revision`; each next one
    /// asks for the results from operation `from` at the `revision` of the first page, and is
    /// answered only while the key-value state is still at that revision (else
    /// [`ApiError::PageExpired`]: run the transaction again), so the pages together are one
    /// atomic read. Linearizable. Since 0.2.0 (`quorate/2` connections).
    TxnPaged {
        /// The transaction; every operation must be a get.
        txn: Txn,
        /// The first operation (of the branch that runs) to answer.
        from: u32,
        /// The revision of the first page (`None` for the first page).
        revision: Option<u64>,
    },
    /// The node's health as an operator acts on it: refusing writes for disk space,
    /// recovering from lost state, free space and database size ([`Response::Health`];
    /// node-local, asked of each node directly). Since 0.2.0: a 0.1.0 node cannot decode it
    /// (`quorate cluster status` shows `-` for such a node).
    Health,
    /// Change the address member `id` is reached at (admin; `quorate member update ID --peer
    /// ADDR`, etcd's `member update`): the leader checks that `id` is a member and that `addr`
    /// resolves, then proposes [`CommandOp::SetMemberAddr`] — the command `member add` records
    /// an address with, which every replica (0.1.0 included) applies by storing the address
    /// and dialing the member there. Since 0.2.0, and refused below cluster version 2 (a 0.1.0
    /// node cannot decode this request).
    MemberUpdate {
        /// The member.
        id: NodeId,
        /// Its new address (`host:port`).
        addr: String,
    },
    /// Start a snapshot save streamed to the caller (admin; `quorate snapshot save FILE`): the
    /// leader confirms its leadership with a ReadIndex round, then takes an image of the state
    /// machine at an applied index at or after the confirmed one (written off the apply thread
    /// into a file of its own), and answers [`Response::SnapshotStreamOpened`]. The caller then
    /// fetches the image with [`Request::SnapshotStreamFetch`]. One stream per node at a time
    /// (a second is refused as busy). Since 0.2.0, refused below cluster version 2.
    SnapshotStreamOpen,
    /// The bytes `[offset, offset + len)` of the image of stream `stream` (admin), answered
    /// with [`Response::SnapshotStreamData`] (no bytes while the image is still being
    /// written). `len: 0` ends the stream: the leader confirms its leadership again with a
    /// ReadIndex round and, only then, answers that the stream is complete (so a leader deposed
    /// during the save never completes one). Since 0.2.0, refused below cluster version 2.
    SnapshotStreamFetch {
        /// The stream, from [`Response::SnapshotStreamOpened`].
        stream: u64,
        /// The first byte.
        offset: u64,
        /// Bytes wanted, at most [`limits::SNAPSHOT_CHUNK_BYTES_MAX`]; 0 ends the stream.
        len: u32,
    },
    /// Read `key` as it was at key-value `revision` (multi-version history): answered with
    /// [`Response::Get`]. [`ApiError::Compacted`] below the compaction revision,
    /// [`ApiError::FutureRevision`] past the current one. Needs cluster version 2 (history is
    /// recorded from the entry that finalized it). Since 0.2.0.
    GetAt {
        /// Key.
        #[serde(with = "quorate_log::byte_string")]
        key: Vec<u8>,
        /// The revision to read at.
        revision: u64,
        /// Ordering (which node's state decides whether `revision` is in the future).
        read: ReadConsistency,
    },
    /// One page of the keys in `[start, end)` as they were at key-value `revision`: answered
    /// with [`Response::ScanPage`]; ask the next page with its `next` as `start` and the same
    /// revision. Errors as [`Request::GetAt`]. Since 0.2.0.
    ScanAt {
        /// First key.
        #[serde(with = "quorate_log::byte_string")]
        start: Vec<u8>,
        /// Exclusive end.
        #[serde(with = "quorate_log::byte_string::option")]
        end: Option<Vec<u8>>,
        /// Most pairs to return in this page.
        limit: u32,
        /// The revision to read at.
        revision: u64,
        /// Ordering.
        read: ReadConsistency,
    },
    /// Forget the history before key-value `revision` (admin), through the log
    /// ([`CommandOp::Compact`]): reads at a revision below it are answered
    /// [`ApiError::Compacted`]. Needs cluster version 2. Since 0.2.0.
    Compact {
        /// The new compaction revision (at most the current revision).
        revision: u64,
    },
    /// This node's multi-version history: compaction revision, entries and bytes kept
    /// ([`Response::History`]; node-local). Since 0.2.0.
    History,
    /// A watch, as a long poll (read): the changes to a key or a prefix from a revision on,
    /// answered from the serving member's applied state with [`Response::Watch`] (events in
    /// revision order, every event of a revision in one answer) or
    /// [`ApiError::Compacted`] when events before `from_revision` are no longer kept. Ask the
    /// next answer from its `complete_to + 1`, on any member. Needs cluster version 2 (events
    /// are recorded from the entry that enabled them). Since 0.2.0.
    Watch(WatchRequest),
    /// Grant a lease of `ttl_ms` (write), through the log ([`CommandOp::LeaseGrant`]), owned by
    /// the principal that asks: answered with [`Response::LeaseGranted`]. `ttl_ms` must be within
    /// [`limits::LEASE_TTL_MS_MIN`]..=[`limits::LEASE_TTL_MS_MAX`]. Needs cluster version 2.
    /// Since 0.2.0.
    LeaseGrant {
        /// Time to live without a keep-alive, ms.
        ttl_ms: u64,
    },
    /// Revoke a lease (write; its owner or an admin), through the log: every key attached to
    /// it is deleted at one revision. Answered with [`Response::LeaseRevoked`]. Since 0.2.0.
    LeaseRevoke {
        /// The lease.
        id: LeaseId,
    },
    /// Keep a lease alive (write; its owner or an admin): the leader gives it its full TTL
    /// again, in its memory (not through the log). Answered with [`Response::LeaseKeptAlive`].
    /// Since 0.2.0.
    LeaseKeepAlive {
        /// The lease.
        id: LeaseId,
    },
    /// The leases of the principal that asks (read; the leader answers, with each lease's
    /// remaining TTL): [`Response::Leases`]. Since 0.2.0.
    LeaseList,
    /// One lease's TTL and, with `keys`, its attached keys (read; its owner or an admin; the
    /// leader answers): [`Response::LeaseTtl`]. Since 0.2.0.
    LeaseTimeToLive {
        /// The lease.
        id: LeaseId,
        /// Whether to list the attached keys.
        keys: bool,
    },
    /// Set `key` to `value` attached to `lease` (write; the lease's owner or an admin):
    /// answered as [`Request::Put`]. A later put without a lease detaches the key. A new
    /// request rather than a field on `Put`, whose 0.1.0 encoding cannot change. Since 0.2.0.
    PutWithLease {
        /// Key.
        #[serde(with = "quorate_log::byte_string")]
        key: Vec<u8>,
        /// Value.
        #[serde(with = "quorate_log::byte_string")]
        value: Vec<u8>,
        /// The lease.
        lease: LeaseId,
    },
}

/// What a [`Request::Watch`] asks for.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct WatchRequest {
    /// The key, or the prefix (`prefix: true`; an empty prefix watches every key).
    #[serde(with = "quorate_log::byte_string")]
    pub key: Vec<u8>,
    /// Whether `key` is a prefix.
    pub prefix: bool,
    /// The first revision whose changes are wanted (at least 1).
    pub from_revision: u64,
    /// Whether each event carries the version it replaced.
    pub prev_kv: bool,
    /// Most events in the answer (1 to [`limits::WATCH_EVENTS_MAX`]); a revision whose events
    /// pass it is answered whole, alone.
    pub max_events: u32,
    /// Most bytes of events in the answer (at most [`limits::WATCH_BYTES_MAX`]; 0: that).
    pub max_bytes: u32,
    /// How long the node may wait for a change at or after `from_revision` before it answers
    /// with no events (at most [`limits::WATCH_WAIT_MS_MAX`]; 0: answer at once).
    pub wait_ms: u32,
}

/// What a change did to a key.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum EventKind {
    /// The key was written (created or replaced).
    Put,
    /// The key was deleted.
    Delete,
}

/// One change of one key at one revision.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct WatchEvent {
    /// Put or delete.
    pub kind: EventKind,
    /// The key as the revision left it (a delete: the key, an empty value, `mod_revision` the
    /// revision of the delete, `create_revision` and `version` 0).
    pub kv: KeyValue,
    /// The version it replaced (asked with `prev_kv`; `None` also when the key was absent).
    pub prev: Option<KeyValue>,
    /// The previous version was asked for but left out: with it, this revision's events would
    /// not fit one answer (read it at `kv.mod_revision - 1`).
    pub prev_omitted: bool,
}

/// The answer to a [`Request::Watch`].
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct WatchAnswer {
    /// The matching events of revisions `from_revision..=complete_to`, in revision order (no
    /// events: a progress notification).
    pub events: Vec<WatchEvent>,
    /// The answer holds every matching event up to this revision; ask the next from
    /// `complete_to + 1` (it is `from_revision - 1` when the node has nothing newer yet).
    pub complete_to: u64,
    /// The node that served it and its applied state.
    pub read: ReadInfo,
}

/// Who may do what; from the role in the client's certificate.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Access {
    /// Reads and status.
    Read,
    /// Writes.
    Write,
    /// Membership, leadership, snapshots.
    Admin,
}

impl Request {
    /// The access a client needs for this request.
    #[must_use]
    pub fn access(&self) -> Access {
        match self {
            Request::Get { .. }
            | Request::Scan { .. }
            | Request::ScanPaged { .. }
            | Request::TxnPaged { .. }
            | Request::Status
            | Request::MemberList
            | Request::Versions
            | Request::Health
            | Request::GetAt { .. }
            | Request::ScanAt { .. }
            | Request::History
            | Request::Watch(_)
            | Request::LeaseList
            | Request::LeaseTimeToLive { .. } => Access::Read,
            Request::Put { .. }
            | Request::Delete { .. }
            | Request::Cas { .. }
            | Request::OpenSession
            | Request::DeleteRange { .. }
            | Request::LeaseGrant { .. }
            | Request::LeaseRevoke { .. }
            | Request::LeaseKeepAlive { .. }
            | Request::PutWithLease { .. } => Access::Write,
            Request::Txn(t) => {
                if t.is_read_only() {
                    Access::Read
                } else {
                    Access::Write
                }
            }
            Request::MemberAdd { .. }
            | Request::MemberUpdate { .. }
            | Request::MemberPromote { .. }
            | Request::MemberRemove { .. }
            | Request::LeaderTransfer { .. }
            | Request::SnapshotSave
            | Request::Finalize { .. }
            | Request::SnapshotStreamOpen
            | Request::SnapshotStreamFetch { .. }
            | Request::Compact { .. }
            | Request::FlightDump => Access::Admin,
        }
    }

    /// Whether the request changes the state machine (goes through the log).
    #[must_use]
    pub fn is_write(&self) -> bool {
        self.access() == Access::Write
    }
}

impl ClientRequest {
    /// Checks every bound. The node calls it on every request it receives and answers a
    /// violation with `ApiError::InvalidRequest` (the decoder itself checks only the encoding).
    pub fn validate(&self) -> Result<(), String> {
        fn key(k: &[u8]) -> Result<(), String> {
            if k.is_empty() {
                return Err("a key may not be empty".into());
            }
            if k.len() > limits::KEY_BYTES_MAX {
                return Err(format!("key of {} bytes exceeds {}", k.len(), limits::KEY_BYTES_MAX));
            }
            Ok(())
        }
        fn value(v: &[u8]) -> Result<(), String> {
            if v.len() > limits::VALUE_BYTES_MAX {
                return Err(format!("value of {} bytes exceeds {}", v.len(), limits::VALUE_BYTES_MAX));
            }
            Ok(())
        }
        fn op(o: &TxnOp) -> Result<(), String> {
            match o {
                TxnOp::Put { key: k, value: v } => key(k).and(value(v)),
                TxnOp::Delete { key: k } | TxnOp::Get { key: k } => key(k),
            }
        }
        fn txn(t: &Txn) -> Result<(), String> {
            if t.compare.len() > limits::TXN_OPS_MAX
                || t.success.len() > limits::TXN_OPS_MAX
                || t.failure.len() > limits::TXN_OPS_MAX
            {
                return Err(format!("a transaction may hold at most {} items per part", limits::TXN_OPS_MAX));
            }
            for c in &t.compare {
                key(&c.key)?;
                if let CompareTarget::Value(Some(v)) = &c.target {
                    value(v)?;
                }
            }
            t.success.iter().chain(&t.failure).try_for_each(op)
        }
        if let Some(s) = self.session
            && s.seq == 0
        {
            return Err("sequence numbers start at 1".into());
        }
        match &self.body {
            Request::Put { key: k, value: v } | Request::PutWithLease { key: k, value: v, .. } => key(k).and(value(v)),
            Request::LeaseGrant { ttl_ms } => {
                if !(limits::LEASE_TTL_MS_MIN..=limits::LEASE_TTL_MS_MAX).contains(ttl_ms) {
                    return Err(format!(
                        "a lease's TTL must be between {} and {} ms",
                        limits::LEASE_TTL_MS_MIN,
                        limits::LEASE_TTL_MS_MAX
                    ));
                }
                Ok(())
            }
            Request::Get { key: k, .. } | Request::Delete { key: k } | Request::GetAt { key: k, .. } => key(k),
            Request::Cas { key: k, expected, value: v } => {
                key(k)?;
                value(v)?;
                expected.as_deref().map_or(Ok(()), value)
            }
            Request::Scan { start, end, limit, .. }
            | Request::ScanPaged { start, end, limit, .. }
            | Request::ScanAt { start, end, limit, .. } => {
                if start.len() > limits::KEY_BYTES_MAX || end.as_ref().is_some_and(|e| e.len() > limits::KEY_BYTES_MAX)
                {
                    return Err("scan bounds exceed the key size limit".into());
                }
                if *limit == 0 || *limit > limits::SCAN_LIMIT_MAX {
                    return Err(format!("scan limit must be between 1 and {}", limits::SCAN_LIMIT_MAX));
                }
                Ok(())
            }
            Request::Txn(t) => txn(t),
            Request::TxnPaged { txn: t, from, revision } => {
                txn(t)?;
                if !t.is_read_only() {
                    return Err("only a read-only transaction (gets only) is answered in pages".into());
                }
                if *from as usize > limits::TXN_OPS_MAX {
                    return Err(format!("a transaction page starts at an operation below {}", limits::TXN_OPS_MAX));
                }
                if (*from == 0) != revision.is_none() {
                    return Err("the first page has no revision; every next page has the first page's".into());
                }
                Ok(())
            }
            Request::MemberAdd { addr, .. } | Request::MemberUpdate { addr, .. } => {
                if addr.is_empty() || addr.len() > limits::TEXT_BYTES_MAX {
                    return Err("a member address must be `host:port`".into());
                }
                Ok(())
            }
            Request::DeleteRange { start, end } => {
                key(start)?;
                key(end)?;
                if start >= end {
                    return Err("delete-range needs start < end".into());
                }
                Ok(())
            }
            Request::SnapshotStreamFetch { len, .. } => {
                if *len as usize > limits::SNAPSHOT_CHUNK_BYTES_MAX {
                    return Err(format!("a snapshot chunk is at most {} bytes", limits::SNAPSHOT_CHUNK_BYTES_MAX));
                }
                Ok(())
            }
            Request::Finalize { version } => {
                if *version < crate::CLUSTER_VERSION_INITIAL {
                    return Err(format!("cluster versions start at {}", crate::CLUSTER_VERSION_INITIAL));
                }
                Ok(())
            }
            Request::Watch(w) => {
                if w.key.len() > limits::KEY_BYTES_MAX {
                    return Err(format!("key of {} bytes exceeds {}", w.key.len(), limits::KEY_BYTES_MAX));
                }
                if w.key.is_empty() && !w.prefix {
                    return Err("a watch names a key, or a prefix (an empty prefix: every key)".into());
                }
                if w.from_revision == 0 {
                    return Err("a watch starts at revision 1 or later".into());
                }
                if w.max_events == 0 || w.max_events as usize > limits::WATCH_EVENTS_MAX {
                    return Err(format!("a watch's max_events must be between 1 and {}", limits::WATCH_EVENTS_MAX));
                }
                if w.max_bytes as usize > limits::WATCH_BYTES_MAX {
                    return Err(format!("a watch's max_bytes is at most {}", limits::WATCH_BYTES_MAX));
                }
                if w.wait_ms > limits::WATCH_WAIT_MS_MAX {
                    return Err(format!("a watch waits at most {} ms", limits::WATCH_WAIT_MS_MAX));
                }
                Ok(())
            }
            Request::Status
            | Request::Versions
            | Request::Health
            | Request::History
            | Request::Compact { .. }
            | Request::MemberList
            | Request::MemberPromote { .. }
            | Request::MemberRemove { .. }
            | Request::LeaderTransfer { .. }
            | Request::SnapshotSave
            | Request::SnapshotStreamOpen
            | Request::FlightDump
            | Request::OpenSession
            | Request::LeaseRevoke { .. }
            | Request::LeaseKeepAlive { .. }
            | Request::LeaseList
            | Request::LeaseTimeToLive { .. } => Ok(()),
        }
    }
}

/// A transaction: `if all(compare) then success else failure`, applied atomically.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Txn {
    /// Conditions, all of which must hold.
    pub compare: Vec<Compare>,
    /// Operations when they hold.
    pub success: Vec<TxnOp>,
    /// Operations otherwise.
    pub failure: Vec<TxnOp>,
}

impl Txn {
    /// Whether no branch writes.
    #[must_use]
    pub fn is_read_only(&self) -> bool {
        self.success.iter().chain(&self.failure).all(|o| matches!(o, TxnOp::Get { .. }))
    }
}

/// One condition of a transaction.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Compare {
    /// The key.
    #[serde(with = "quorate_log::byte_string")]
    pub key: Vec<u8>,
    /// What to compare.
    pub target: CompareTarget,
    /// How.
    pub op: CompareOp,
}

/// What a comparison looks at (an absent key has value `None` and revisions and version 0).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CompareTarget {
    /// The value (`None`: absent). Ordering compares bytes; absent is smallest.
    Value(#[serde(with = "quorate_log::byte_string::option")] Option<Vec<u8>>),
    /// The revision of the last write to the key.
    ModRevision(u64),
    /// The revision that created the key.
    CreateRevision(u64),
    /// Writes since the key was created.
    Version(u64),
}

/// A comparison operator: `actual OP target`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CompareOp {
    /// `==`
    Equal,
    /// `!=`
    NotEqual,
    /// `<`
    Less,
    /// `>`
    Greater,
}

/// An operation inside a transaction.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TxnOp {
    /// Set a key.
    Put {
        /// Key.
        #[serde(with = "quorate_log::byte_string")]
        key: Vec<u8>,
        /// Value.
        #[serde(with = "quorate_log::byte_string")]
        value: Vec<u8>,
    },
    /// Remove a key.
    Delete {
        /// Key.
        #[serde(with = "quorate_log::byte_string")]
        key: Vec<u8>,
    },
    /// Read a key (as of the transaction).
    Get {
        /// Key.
        #[serde(with = "quorate_log::byte_string")]
        key: Vec<u8>,
    },
}

/// A key with its value and revisions.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct KeyValue {
    /// Key.
    #[serde(with = "quorate_log::byte_string")]
    pub key: Vec<u8>,
    /// Value.
    #[serde(with = "quorate_log::byte_string")]
    pub value: Vec<u8>,
    /// The revision that created it.
    pub create_revision: u64,
    /// The revision of its last write.
    pub mod_revision: u64,
    /// Writes since creation (1 after the first).
    pub version: u64,
}

/// The answer to a [`ClientRequest`].
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ClientResponse {
    /// The request's id.
    pub id: u64,
    /// The outcome.
    pub result: Result<Response, ApiError>,
}

/// Successful outcomes.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Response {
    /// A put took effect at `revision`.
    Put {
        /// The global revision after the write.
        revision: u64,
    },
    /// A read.
    Get {
        /// The pair, if present.
        kv: Option<KeyValue>,
        /// Where the read was served.
        read: ReadInfo,
    },
    /// A delete.
    Delete {
        /// Whether the key existed.
        deleted: bool,
        /// The global revision after the write.
        revision: u64,
    },
    /// A compare-and-swap.
    Cas {
        /// Whether the swap happened.
        succeeded: bool,
        /// The pair before the operation.
        previous: Option<KeyValue>,
        /// The global revision after the operation.
        revision: u64,
    },
    /// A scan.
    Scan {
        /// The pairs, in key order.
        kvs: Vec<KeyValue>,
        /// Whether more pairs lie in the range.
        more: bool,
        /// Where the read was served.
        read: ReadInfo,
    },
    /// A transaction.
    Txn {
        /// Whether the comparisons held.
        succeeded: bool,
        /// One result per operation of the branch that ran.
        results: Vec<TxnResult>,
        /// The global revision after the transaction.
        revision: u64,
    },
    /// A node's status.
    Status(NodeStatus),
    /// The members.
    Members(Vec<Member>),
    /// An administrative request was carried out.
    Done,
    /// A snapshot was written.
    SnapshotSaved {
        /// Where, on the node.
        path: String,
        /// The applied index it covers.
        index: LogIndex,
    },
    /// A session was opened.
    Session(SessionId),
    /// A node's versions (the answer to [`Request::Versions`]). Since 0.2.0.
    Versions(VersionInfo),
    /// A range delete (the answer to [`Request::DeleteRange`]). Since 0.2.0.
    DeletedRange {
        /// Keys deleted.
        deleted: u64,
        /// Whether keys may remain in the range (the per-request bound was reached).
        more: bool,
        /// The global revision after the write.
        revision: u64,
    },
    /// A flight recording was written (the answer to [`Request::FlightDump`]). Since 0.2.0.
    FlightDumped {
        /// Where, on the node.
        path: String,
        /// Inputs of the consensus core it holds (after its checkpoint).
        inputs: u64,
    },
    /// One page of a scan (the answer to [`Request::ScanPaged`]). Since 0.2.0.
    ScanPage {
        /// The pairs, in key order.
        kvs: Vec<KeyValue>,
        /// Where the next page starts (ask again with this as `start`); `None`: the range has
        /// no more keys.
        #[serde(with = "quorate_log::byte_string::option")]
        next: Option<Vec<u8>>,
        /// Where the read was served.
        read: ReadInfo,
    },
    /// One page of a read-only transaction (the answer to [`Request::TxnPaged`]). Since 0.2.0.
    TxnPage {
        /// Whether the comparisons held.
        succeeded: bool,
        /// The results of the branch's operations from the page's `from` on.
        results: Vec<TxnResult>,
        /// The key-value revision the transaction read (ask for the next page at it).
        revision: u64,
        /// The operation the next page starts at; `None`: this was the last page.
        next: Option<u32>,
    },
    /// A node's health (the answer to [`Request::Health`]). Since 0.2.0.
    Health(NodeHealth),
    /// A streamed snapshot save started (the answer to [`Request::SnapshotStreamOpen`]).
    /// Since 0.2.0.
    SnapshotStreamOpened {
        /// The stream's id, for [`Request::SnapshotStreamFetch`].
        stream: u64,
        /// The applied index the image is taken at (at or after the confirmed read index).
        index: LogIndex,
        /// The term of the entry at `index`.
        term: Term,
    },
    /// Bytes of a streamed snapshot image (the answer to [`Request::SnapshotStreamFetch`]).
    /// Since 0.2.0.
    SnapshotStreamData {
        /// Where `data` starts.
        offset: u64,
        /// The bytes (empty while the image is still being written, and for the end).
        #[serde(with = "quorate_log::byte_string")]
        data: Vec<u8>,
        /// The image's size once it is written whole (`None`: still being written).
        total: Option<u64>,
        /// Bytes of the image written so far (progress while it is being written).
        prepared: u64,
        /// The answer to the end of the stream (`len: 0`): the leader confirmed it was still
        /// leader after the last byte was served.
        complete: bool,
    },
    /// A compaction was applied (the answer to [`Request::Compact`]). Since 0.2.0.
    Compacted {
        /// The compaction revision now (a request below the current one changes nothing).
        compacted: u64,
    },
    /// A node's multi-version history (the answer to [`Request::History`]). Since 0.2.0.
    History(HistoryInfo),
    /// The answer to a [`Request::Watch`]. Since 0.2.0.
    Watch(WatchAnswer),
    /// A lease was granted (the answer to [`Request::LeaseGrant`]). Since 0.2.0.
    LeaseGranted {
        /// The lease.
        id: LeaseId,
        /// Its TTL, ms.
        ttl_ms: u64,
    },
    /// A lease was revoked (the answer to [`Request::LeaseRevoke`]). Since 0.2.0.
    LeaseRevoked {
        /// Keys deleted with it.
        deleted: u64,
        /// The revision of the deletes (the current one when no key was attached).
        revision: u64,
    },
    /// A lease was kept alive (the answer to [`Request::LeaseKeepAlive`]). Since 0.2.0.
    LeaseKeptAlive {
        /// The lease.
        id: LeaseId,
        /// The TTL it has from now, ms (its full TTL).
        ttl_ms: u64,
    },
    /// The principal's leases (the answer to [`Request::LeaseList`]). Since 0.2.0.
    Leases(Vec<LeaseInfo>),
    /// One lease (the answer to [`Request::LeaseTimeToLive`]). Since 0.2.0.
    LeaseTtl(LeaseInfo),
}

/// A lease as the leader sees it ([`Response::Leases`], [`Response::LeaseTtl`]).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct LeaseInfo {
    /// The lease.
    pub id: LeaseId,
    /// The TTL it was granted, ms.
    pub granted_ttl_ms: u64,
    /// What is left of it on the leader's clock, ms.
    pub remaining_ms: u64,
    /// Keys attached to it.
    pub key_count: u64,
    /// The attached keys (asked with `keys`; empty otherwise).
    pub keys: Vec<ByteKey>,
}

/// A key in a list ([`LeaseInfo::keys`]).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ByteKey(#[serde(with = "quorate_log::byte_string")] pub Vec<u8>);

/// A node's multi-version history, as its state machine holds it (the answer to
/// [`Request::History`]; shown by `quorate cluster status`).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct HistoryInfo {
    /// The node.
    pub id: NodeId,
    /// Whether history is recorded (from the entry that committed cluster version 2).
    pub enabled: bool,
    /// Reads at revisions below this one are refused ([`ApiError::Compacted`]).
    pub compacted: u64,
    /// The node's key-value revision.
    pub revision: u64,
    /// Earlier versions kept, and the records of the event index (watches), which is dropped
    /// with them.
    pub entries: u64,
    /// Their bytes (keys and records).
    pub bytes: u64,
    /// The most entries kept: beyond, the oldest are dropped and the compaction revision rises.
    pub entries_max: u64,
    /// The most bytes kept (the same rule).
    pub bytes_max: u64,
}

/// A node's health, as `quorate cluster status` shows it in its `HEALTH` column (the answer
/// to [`Request::Health`]; since 0.2.0, a new shape rather than new fields of
/// [`NodeStatus`], which 0.1.0 peers and clients decode).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct NodeHealth {
    /// The node.
    pub id: NodeId,
    /// The node refuses client writes for disk space: free space on its data volume is below
    /// its floor, or its store's last write failed for lack of space.
    pub refusing_writes: bool,
    /// The node recovers from lost synced state (it does not campaign, and votes only for
    /// candidates as up to date as its record, until a leader has caught it up).
    pub recovering: bool,
    /// Bytes free on the data volume (`None`: could not be read).
    pub disk_free_bytes: Option<u64>,
    /// The floor below which client writes are refused, bytes (0: none).
    pub disk_floor_bytes: u64,
    /// Bytes of the store's live table files (`None`: could not be read).
    pub db_bytes: Option<u64>,
}

/// The three versions of a node: its binary's, the storage format of its data, and the
/// cluster version committed through the log (the lowest every member supports, raised only
/// by `quorate cluster finalize`).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The node.
    pub id: NodeId,
    /// The binary's version (Cargo package version).
    pub binary_version: String,
    /// The storage format of the node's data on disk.
    pub storage_format: u32,
    /// The newest storage format the binary opens.
    pub storage_format_max: u32,
    /// The cluster version committed in the log as the node has applied it.
    pub cluster_version: u32,
    /// The newest cluster version the binary supports.
    pub cluster_version_max: u32,
}

/// Where and how fresh a read was.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ReadInfo {
    /// The node that served it.
    pub node: NodeId,
    /// The global revision of the state read.
    pub revision: u64,
    /// The applied index of the state read.
    pub applied: LogIndex,
    /// For stale reads: the commit index the node knew (so `commit - applied` entries were
    /// not yet applied) and milliseconds since it last heard from a leader.
    pub staleness: Option<Staleness>,
}

/// How far a stale read may lag.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Staleness {
    /// The commit index the node knew.
    pub known_commit: LogIndex,
    /// Milliseconds since the node last heard from a leader (`None`: never).
    pub since_leader_ms: Option<u64>,
}

/// The result of one transaction operation.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TxnResult {
    /// A put.
    Put,
    /// A delete; whether the key existed.
    Delete(bool),
    /// A get.
    Get(Option<KeyValue>),
}

/// A node's view of the cluster.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node.
    pub id: NodeId,
    /// Its role.
    pub role: RaftRole,
    /// Its term.
    pub term: Term,
    /// The leader it knows.
    pub leader: Option<NodeId>,
    /// Commit index.
    pub commit: LogIndex,
    /// Applied index.
    pub applied: LogIndex,
    /// Last log index.
    pub last_index: LogIndex,
    /// The configuration in force.
    pub config: Configuration,
    /// Its version.
    pub config_version: LogIndex,
    /// Latest snapshot index.
    pub snapshot_index: LogIndex,
    /// The global key-value revision.
    pub revision: u64,
    /// The binary's version.
    pub binary_version: String,
    /// The storage format version.
    pub storage_format: u32,
    /// Settings that weaken safety, by name (empty in production).
    pub danger: Vec<String>,
}

/// A cluster member.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Member {
    /// Its id.
    pub id: NodeId,
    /// Its address, if known.
    pub addr: Option<String>,
    /// Voter, learner, or voter of the outgoing half of a joint configuration.
    pub kind: MemberKind,
}

/// How a member takes part.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MemberKind {
    /// Votes.
    Voter,
    /// Receives the log, does not vote.
    Learner,
    /// Votes in the outgoing configuration of a joint change only.
    OutgoingVoter,
}

/// Why a request failed. Every variant says what to do next.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// Writes (and lease reads) go to the leader: retry there.
    #[error("not the leader; try {}", leader_text(*leader, addr.as_deref()))]
    NotLeader {
        /// The leader this node knows.
        leader: Option<NodeId>,
        /// Its address, if known.
        addr: Option<String>,
    },
    /// The node refused the work before doing any; retry after the delay. Sent by nodes
    /// before admission control; current nodes send [`ApiError::Shed`] instead.
    #[error("overloaded ({reason}); retry after {retry_after_ms} ms")]
    Overloaded {
        /// Which limit was reached.
        reason: String,
        /// When to retry.
        retry_after_ms: u32,
    },
    /// The client's certificate role does not allow this request.
    #[error("not allowed: this request needs the {needed:?} role")]
    Unauthorized {
        /// The role needed.
        needed: Access,
    },
    /// The request is malformed or out of bounds.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The cluster cannot serve the request now (no leader, read not confirmed); retry.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A membership change or leadership transfer was refused.
    #[error("refused: {0}")]
    Refused(String),
    /// The outcome is unknown: the write may or may not have been applied. Retry with the same
    /// session and sequence number to learn it.
    #[error("timed out; the outcome is unknown")]
    Timeout,
    /// The session expired (or never existed); open a new one.
    #[error("session expired; open a new session")]
    SessionExpired,
    /// A failure inside the node (storage); the node stops.
    #[error("internal error: {0}")]
    Internal(String),
    /// Admission control refused the request before any work was done: wait at least
    /// `retry_after_ms`, then retry (counted as a retry), unless the reason is not retryable.
    /// The typed successor of [`ApiError::Overloaded`]; appended last so that every earlier
    /// encoding still decodes.
    #[error("{0}")]
    Shed(Overloaded),
    /// A next page of a paged transaction was asked at `revision`, but the key-value state has
    /// moved on to `current`: the pages would not be one atomic read. Run the transaction
    /// again from its first page. Since 0.2.0 (only in answer to [`Request::TxnPaged`]).
    #[error("the key-value state changed since the first page (revision {revision}, now {current}); read again")]
    PageExpired {
        /// The revision of the first page.
        revision: u64,
        /// The revision now.
        current: u64,
    },
    /// A read at `revision` asked for history that was compacted away: the oldest revision
    /// still readable is `compacted`. Since 0.2.0 (only in answer to reads at a revision).
    #[error("revision {revision} is compacted: the oldest revision kept is {compacted}")]
    Compacted {
        /// The revision asked for.
        revision: u64,
        /// The compaction revision.
        compacted: u64,
    },
    /// A read at `revision`, or a compaction to it, named a revision the key-value state has
    /// not reached (`current`). Since 0.2.0.
    #[error("revision {revision} is in the future: the current revision is {current}")]
    FutureRevision {
        /// The revision asked for.
        revision: u64,
        /// The revision now.
        current: u64,
    },
}

/// A refusal by the node's admission control (`ApiError::Shed`). Its shape never changes
/// within a protocol version.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, thiserror::Error)]
#[error("overloaded ({reason}); retry after {retry_after_ms} ms")]
pub struct Overloaded {
    /// Which limit or signal refused it.
    pub reason: OverloadReason,
    /// The least time to wait before retrying (already jittered by the node).
    pub retry_after_ms: u32,
}

/// Why the node shed a request (append-only: new reasons go at the end).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum OverloadReason {
    /// The node's queue of client requests is at its threshold.
    #[error("request queue full")]
    QueueFull,
    /// Client requests in flight are at the adaptive concurrency limit.
    #[error("concurrency limit reached")]
    ConcurrencyLimit,
    /// This client (certificate principal) has its fair share of the limit in flight.
    #[error("fair share reached for this client")]
    FairShare,
    /// This client is over its request rate.
    #[error("request rate limit for this client")]
    RateLimited,
    /// This client has spent its retry budget.
    #[error("retry budget of this client spent")]
    RetryBudget,
    /// Admitted requests hold the in-flight byte budget already.
    #[error("too many bytes in flight")]
    InFlightBytes,
    /// The request is larger than the in-flight byte budget: retrying does not help.
    #[error("request larger than the in-flight byte budget")]
    RequestTooLarge,
    /// Too many bytes are appended but not yet committed.
    #[error("too many uncommitted bytes")]
    UncommittedBytes,
    /// The state machine is too far behind the commit index.
    #[error("apply lag too large")]
    ApplyLag,
    /// Free disk space is below the floor; clears itself when space returns.
    #[error("disk space below the floor")]
    DiskSpace,
    /// Recent fsync latency is at its threshold.
    #[error("fsync latency too high")]
    FsyncLatency,
    /// The slowest follower has too many bytes in flight.
    #[error("replication backlog")]
    PeerBacklog,
    /// The consensus core holds its most pending linearizable reads.
    #[error("too many pending reads")]
    PendingReads,
    /// This client (certificate principal) has its most requests in flight (admitted and not
    /// yet answered, or answered and not yet read by the client). Since 0.2.0.
    #[error("too many requests in flight for this client")]
    PrincipalRequests,
    /// The answers held for this client (or for all clients) are at their byte budget: answers
    /// not yet read, and the largest answers of requests not yet answered. Since 0.2.0.
    #[error("too many answer bytes held")]
    ResponseBytes,
}

impl OverloadReason {
    /// Whether the same request can succeed later (all but `RequestTooLarge`).
    #[must_use]
    pub const fn is_retryable(self) -> bool {
        !matches!(self, OverloadReason::RequestTooLarge)
    }

    /// A short stable name (metric labels, logs).
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            OverloadReason::QueueFull => "queue_full",
            OverloadReason::ConcurrencyLimit => "concurrency_limit",
            OverloadReason::FairShare => "fair_share",
            OverloadReason::RateLimited => "rate_limited",
            OverloadReason::RetryBudget => "retry_budget",
            OverloadReason::InFlightBytes => "in_flight_bytes",
            OverloadReason::RequestTooLarge => "request_too_large",
            OverloadReason::UncommittedBytes => "uncommitted_bytes",
            OverloadReason::ApplyLag => "apply_lag",
            OverloadReason::DiskSpace => "disk_space",
            OverloadReason::FsyncLatency => "fsync_latency",
            OverloadReason::PeerBacklog => "peer_backlog",
            OverloadReason::PendingReads => "pending_reads",
            OverloadReason::PrincipalRequests => "principal_requests",
            OverloadReason::ResponseBytes => "response_bytes",
        }
    }
}

fn leader_text(leader: Option<NodeId>, addr: Option<&str>) -> String {
    match (leader, addr) {
        (Some(l), Some(a)) => format!("node {l} at {a}"),
        (Some(l), None) => format!("node {l}"),
        _ => "again once a leader is elected".into(),
    }
}

/// What the node writes into a log entry for each write.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Command {
    /// Exactly-once: the session and sequence number, if any.
    pub session: Option<Sequenced>,
    /// The proposing leader's clock (milliseconds), never decreasing along the log: sessions
    /// expire by this log time, identically on every replica.
    pub time_ms: u64,
    /// The operation.
    pub op: CommandOp,
}

/// Operations in the log (append-only).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CommandOp {
    /// Set a key.
    Put {
        /// Key.
        #[serde(with = "quorate_log::byte_string")]
        key: Vec<u8>,
        /// Value.
        #[serde(with = "quorate_log::byte_string")]
        value: Vec<u8>,
    },
    /// Remove a key.
    Delete {
        /// Key.
        #[serde(with = "quorate_log::byte_string")]
        key: Vec<u8>,
    },
    /// Compare-and-swap.
    Cas {
        /// Key.
        #[serde(with = "quorate_log::byte_string")]
        key: Vec<u8>,
        /// Required value (`None`: absent).
        #[serde(with = "quorate_log::byte_string::option")]
        expected: Option<Vec<u8>>,
        /// New value.
        #[serde(with = "quorate_log::byte_string")]
        value: Vec<u8>,
    },
    /// A transaction.
    Txn(Txn),
    /// Allocate a session; its id is the index of this entry.
    OpenSession,
    /// Record a member's address (before it is added as a learner).
    SetMemberAddr {
        /// The member.
        id: NodeId,
        /// Its address.
        addr: String,
    },
    /// Raise the cluster version (`quorate cluster finalize`). A replica whose binary does not
    /// support `version` stops with a clear error instead of applying entries it may not
    /// understand. Since 0.2.0.
    SetClusterVersion {
        /// The new cluster version.
        version: u32,
    },
    /// Delete the keys in `[start, end)`, at most [`limits::SCAN_LIMIT_MAX`]. Applied only at
    /// cluster version 2 or later; below it every replica, old or new, answers
    /// `InvalidRequest` and changes nothing. Since 0.2.0.
    DeleteRange {
        /// First key.
        #[serde(with = "quorate_log::byte_string")]
        start: Vec<u8>,
        /// Exclusive end.
        #[serde(with = "quorate_log::byte_string")]
        end: Vec<u8>,
    },
    /// Open a session that belongs to `principal` (the client certificate that asked); its id
    /// is `nonce`, drawn at random by the proposing leader, so that ids cannot be guessed.
    /// Applied only at cluster version 2 or later (below it: `InvalidRequest`, no change).
    /// Since 0.2.0.
    OpenSessionFor {
        /// The principal the session belongs to.
        principal: String,
        /// The session's id (non-zero).
        nonce: u64,
    },
    /// A key-value operation sent by `principal`: within a session (the command's `session`),
    /// it is applied only if the session belongs to `principal`. Applied only at cluster
    /// version 2 or later (below it: `InvalidRequest`, no change). Since 0.2.0.
    ByPrincipal {
        /// The principal of the client certificate that sent it.
        principal: String,
        /// The operation.
        op: KvOp,
    },
    /// Raise the history's compaction revision to `revision` (`quorate kv compact`, or the
    /// leader's automatic compaction): earlier versions replaced at or before it are dropped.
    /// Applied only at cluster version 2 or later (below it: `InvalidRequest`, no change).
    /// Since 0.2.0.
    Compact {
        /// The new compaction revision.
        revision: u64,
    },
    /// Grant a lease owned by `principal`; its id is this entry's index. Applied only at
    /// cluster version 2 or later (below it: `InvalidRequest`, no change). Since 0.2.0.
    LeaseGrant {
        /// The owner.
        principal: String,
        /// Time to live, ms.
        ttl_ms: u64,
    },
    /// Revoke a lease on behalf of `principal` (its owner, or any principal when `admin`):
    /// its keys are deleted at one revision. Since 0.2.0.
    LeaseRevoke {
        /// Who asks.
        principal: String,
        /// Whether they are an admin.
        admin: bool,
        /// The lease.
        id: LeaseId,
    },
    /// The leader saw the lease's deadline pass: delete it and its keys at one revision (a
    /// lease already gone is a no-op result). Since 0.2.0.
    LeaseExpire {
        /// The lease.
        id: LeaseId,
    },
}

/// The key-value operations a client sends, as carried by [`CommandOp::ByPrincipal`]
/// (append-only). Not recursive: a command cannot nest.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum KvOp {
    /// Set a key.
    Put {
        /// Key.
        #[serde(with = "quorate_log::byte_string")]
        key: Vec<u8>,
        /// Value.
        #[serde(with = "quorate_log::byte_string")]
        value: Vec<u8>,
    },
    /// Remove a key.
    Delete {
        /// Key.
        #[serde(with = "quorate_log::byte_string")]
        key: Vec<u8>,
    },
    /// Compare-and-swap.
    Cas {
        /// Key.
        #[serde(with = "quorate_log::byte_string")]
        key: Vec<u8>,
        /// Required value (`None`: absent).
        #[serde(with = "quorate_log::byte_string::option")]
        expected: Option<Vec<u8>>,
        /// New value.
        #[serde(with = "quorate_log::byte_string")]
        value: Vec<u8>,
    },
    /// A transaction.
    Txn(Txn),
    /// Delete the keys in `[start, end)`.
    DeleteRange {
        /// First key.
        #[serde(with = "quorate_log::byte_string")]
        start: Vec<u8>,
        /// Exclusive end.
        #[serde(with = "quorate_log::byte_string")]
        end: Vec<u8>,
    },
    /// Set a key attached to a lease (the principal of the [`CommandOp::ByPrincipal`] must own
    /// it, unless `admin`). Since 0.2.0.
    PutLeased {
        /// Key.
        #[serde(with = "quorate_log::byte_string")]
        key: Vec<u8>,
        /// Value.
        #[serde(with = "quorate_log::byte_string")]
        value: Vec<u8>,
        /// The lease.
        lease: LeaseId,
        /// Whether the principal is an admin.
        admin: bool,
    },
    /// Grant a lease owned by the principal of the [`CommandOp::ByPrincipal`]: the same as
    /// [`CommandOp::LeaseGrant`], in the principal's session, so that a retry is applied once
    /// and answered with the same lease. Since 0.2.0.
    LeaseGrant {
        /// Time to live, ms.
        ttl_ms: u64,
    },
    /// Revoke a lease (its owner, or an admin): the same as [`CommandOp::LeaseRevoke`], in the
    /// principal's session (a retry is answered with the first revoke's result, not "no such
    /// lease"). Since 0.2.0.
    LeaseRevoke {
        /// The lease.
        id: LeaseId,
        /// Whether the principal is an admin.
        admin: bool,
    },
}

impl KvOp {
    /// The key-value operation of `op`; `Err(op)` for the operations that are not one
    /// (sessions, membership, versions).
    pub fn from_command(op: CommandOp) -> Result<KvOp, CommandOp> {
        Ok(match op {
            CommandOp::Put { key, value } => KvOp::Put { key, value },
            CommandOp::Delete { key } => KvOp::Delete { key },
            CommandOp::Cas { key, expected, value } => KvOp::Cas { key, expected, value },
            CommandOp::Txn(t) => KvOp::Txn(t),
            CommandOp::DeleteRange { start, end } => KvOp::DeleteRange { start, end },
            // The principal goes into the `ByPrincipal` around the operation.
            CommandOp::LeaseGrant { ttl_ms, .. } => KvOp::LeaseGrant { ttl_ms },
            CommandOp::LeaseRevoke { id, admin, .. } => KvOp::LeaseRevoke { id, admin },
            other => return Err(other),
        })
    }

    /// The same operation as a plain [`CommandOp`]. The lease operations have none (they
    /// need their principal): each becomes a [`CommandOp::ByPrincipal`] of the empty
    /// principal, which owns no lease and may grant none, so applying it changes nothing.
    #[must_use]
    pub fn into_command(self) -> CommandOp {
        match self {
            op @ (KvOp::PutLeased { .. } | KvOp::LeaseGrant { .. } | KvOp::LeaseRevoke { .. }) => {
                CommandOp::ByPrincipal { principal: String::new(), op }
            }
            KvOp::Put { key, value } => CommandOp::Put { key, value },
            KvOp::Delete { key } => CommandOp::Delete { key },
            KvOp::Cas { key, expected, value } => CommandOp::Cas { key, expected, value },
            KvOp::Txn(t) => CommandOp::Txn(t),
            KvOp::DeleteRange { start, end } => CommandOp::DeleteRange { start, end },
        }
    }
}

/// A piece of a snapshot stream from a leader to a follower.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// The sender's term.
    pub term: Term,
    /// The snapshot.
    pub meta: SnapshotMeta,
    /// Byte offset of `data` in the snapshot file.
    pub offset: u64,
    /// Total size of the file.
    pub total: u64,
    /// The bytes.
    #[serde(with = "quorate_log::byte_string")]
    pub data: Vec<u8>,
}
