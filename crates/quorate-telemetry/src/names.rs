//! The names of Quorate's metrics, each defined once, with its unit last in the name
//! (`_seconds`, `_bytes`, `_index`, `_total` for counters), and the label keys and values they
//! use. [`ALL`] lists every metric with its kind and help text (the node describes them to
//! the registry at start, and the docs' "Reading the metrics" table follows it).
//!
//! Library crates record through the `metrics` facade with these constants; only the node
//! chooses an exporter (see [`crate::Metrics`]).

/// What kind of series a metric is (its Prometheus `# TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kind {
    /// Only goes up (until the process restarts); name ends in `_total`.
    Counter,
    /// A value that moves both ways.
    Gauge,
    /// Observations in fixed buckets (see [`MetricDef::buckets`]).
    Histogram,
}

/// One metric: its name, kind, help text and label keys.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    /// The full Prometheus name.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// One line for `# HELP` and the docs.
    pub help: &'static str,
    /// Label keys the metric carries (may be empty).
    pub labels: &'static [&'static str],
}

impl MetricDef {
    /// Bucket upper bounds of a histogram (seconds for every histogram here); empty for
    /// counters and gauges.
    pub fn buckets(&self) -> &'static [f64] {
        match self.kind {
            Kind::Histogram if self.name == FSYNC_SECONDS => FSYNC_BUCKETS_SECONDS,
            Kind::Histogram
                if self.name == SNAPSHOT_SEND_SECONDS
                    || self.name == SNAPSHOT_INSTALL_SECONDS
                    || self.name == SNAPSHOT_TAKE_SECONDS =>
            {
                SLOW_BUCKETS_SECONDS
            }
            Kind::Histogram => LATENCY_BUCKETS_SECONDS,
            _ => &[],
        }
    }
}

/// Buckets of the fsync latency histogram: 50 µs to 5 s.
pub const FSYNC_BUCKETS_SECONDS: &[f64] =
    &[0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];
/// Buckets of request-path latencies (proposal to commit, commit to apply, compaction):
/// 100 µs to 10 s.
pub const LATENCY_BUCKETS_SECONDS: &[f64] =
    &[0.000_1, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
/// Buckets of slow operations (snapshots): 10 ms to 10 minutes.
pub const SLOW_BUCKETS_SECONDS: &[f64] = &[0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0];

// ---- label keys -------------------------------------------------------------------------

/// Label key: why (elections, failures, sheds, refusals, clock discontinuities).
pub const LABEL_REASON: &str = "reason";
/// Label key: the peer's node id (per-peer replication metrics).
pub const LABEL_PEER: &str = "peer";
/// Label key: the node's role (`follower`, `candidate`, `leader`, `learner`, ...).
pub const LABEL_ROLE: &str = "role";
/// Label key: which invariant was violated.
pub const LABEL_INVARIANT: &str = "invariant";
/// Label key: the client principal (certificate identity). At most [`PRINCIPAL_LABELS_MAX`]
/// distinct values per node; later principals are labelled [`PRINCIPAL_LABEL_OTHER`].
pub const LABEL_PRINCIPAL: &str = "principal";
/// Most distinct `principal` label values a node exports (bounded cardinality).
pub const PRINCIPAL_LABELS_MAX: usize = 64;
/// The `principal` label of every principal beyond the first [`PRINCIPAL_LABELS_MAX`].
pub const PRINCIPAL_LABEL_OTHER: &str = "other";
/// Label key: the binary's version (build info).
pub const LABEL_VERSION: &str = "version";
/// Label key: the kind of a clock discontinuity (`jump` or `stall`).
pub const LABEL_KIND: &str = "kind";

// ---- protocol state (gauges) ------------------------------------------------------------

/// Gauge: the node's current term.
pub const TERM: &str = "quorate_raft_term";
/// Gauge per `role` label: 1 for the node's current role, 0 for the others.
pub const ROLE: &str = "quorate_raft_role";
/// Gauge: the node id of the leader this node knows, 0 when none.
pub const LEADER_ID: &str = "quorate_raft_leader_id";
/// Gauge: 1 when the node knows a leader for its term, else 0.
pub const HAS_LEADER: &str = "quorate_raft_has_leader";
/// Gauge: 1 while the node recovers from lost synced state (it does not campaign and votes
/// only for candidates at least as up to date as its record until a leader has caught it
/// up), else 0.
pub const RECOVERING: &str = "quorate_recovering";
/// Gauge: the commit index this node knows.
pub const COMMIT_INDEX: &str = "quorate_raft_commit_index";
/// Gauge: the index applied to the state machine.
pub const APPLIED_INDEX: &str = "quorate_raft_applied_index";
/// Gauge: the index of the last entry in the local log.
pub const LAST_LOG_INDEX: &str = "quorate_raft_last_log_index";
/// Gauge: the index of the latest snapshot (entries at or below it may be compacted).
pub const SNAPSHOT_INDEX: &str = "quorate_raft_snapshot_index";
/// Gauge: the configuration's version (the log index of the entry that set it).
pub const CONFIG_VERSION_INDEX: &str = "quorate_raft_config_version_index";
/// Gauge: 1 while the configuration is joint (a membership change in flight).
pub const CONFIG_JOINT: &str = "quorate_raft_config_joint";
/// Gauge: the number of voters in the (incoming) configuration.
pub const CONFIG_VOTERS_COUNT: &str = "quorate_raft_config_voters_count";
/// Gauge: the number of learners.
pub const CONFIG_LEARNERS_COUNT: &str = "quorate_raft_config_learners_count";
/// Gauge: the committed cluster version (the newest wire behaviour every member accepts).
pub const CLUSTER_VERSION: &str = "quorate_cluster_version";
/// Gauge (always 1) with the binary's `version` label.
pub const BUILD_INFO: &str = "quorate_build_info";
/// Gauge: earlier versions of keys kept by the multi-version history.
pub const HISTORY_ENTRIES: &str = "quorate_history_entries";
/// Gauge: bytes of the earlier versions kept.
pub const HISTORY_BYTES: &str = "quorate_history_bytes";
/// Gauge: the history's compaction revision (reads below it are refused).
pub const HISTORY_COMPACTED_REVISION: &str = "quorate_history_compacted_revision";
/// Gauge: watches waiting or being read on the node (long polls in flight).
pub const WATCHES_IN_FLIGHT: &str = "quorate_watches_in_flight";

// ---- replication, per peer ----------------------------------------------------------------

/// Gauge per `peer`: the highest index known replicated on the peer (leader only).
pub const PEER_MATCH_INDEX: &str = "quorate_peer_match_index";
/// Gauge per `peer`: append messages sent and not yet acknowledged.
pub const PEER_INFLIGHT_MESSAGES: &str = "quorate_peer_inflight_messages";
/// Gauge per `peer`: bytes of entries sent and not yet acknowledged.
pub const PEER_INFLIGHT_BYTES: &str = "quorate_peer_inflight_bytes";
/// Gauge per `peer`: the transport's smoothed round-trip time.
pub const PEER_RTT_SECONDS: &str = "quorate_peer_rtt_seconds";
/// Counter per `peer`: messages dropped because the peer's send queue was full.
pub const PEER_SEND_DROPS_TOTAL: &str = "quorate_peer_send_drops_total";

// ---- elections and proposals ------------------------------------------------------------

/// Counter: times the known leader changed (including to "no leader").
pub const LEADER_CHANGES_TOTAL: &str = "quorate_raft_leader_changes_total";
/// Counter per `reason`: campaigns this node started — pre-vote rounds and elections — by
/// the reason the consensus core gives ([`election`]).
pub const ELECTIONS_TOTAL: &str = "quorate_raft_elections_total";
/// Counter: client proposals (writes and membership changes) received.
pub const PROPOSALS_RECEIVED_TOTAL: &str = "quorate_proposals_received_total";
/// Counter: proposals of this node that committed.
pub const PROPOSALS_COMMITTED_TOTAL: &str = "quorate_proposals_committed_total";
/// Counter: entries applied to the state machine (on every node).
pub const PROPOSALS_APPLIED_TOTAL: &str = "quorate_proposals_applied_total";
/// Counter per `reason`: proposals refused or lost (`not_leader`, `timeout`, ...).
pub const PROPOSALS_FAILED_TOTAL: &str = "quorate_proposals_failed_total";
/// Counter per `reason`: requests shed by admission control before any work was done.
pub const PROPOSALS_SHED_TOTAL: &str = "quorate_proposals_shed_total";
/// Histogram: proposal accepted by the leader until committed.
pub const PROPOSAL_COMMIT_SECONDS: &str = "quorate_proposal_commit_seconds";
/// Histogram: entry committed until applied to the state machine.
pub const COMMIT_APPLY_SECONDS: &str = "quorate_commit_apply_seconds";

// ---- storage ------------------------------------------------------------------------------

/// Histogram: duration of one durable write (a group-commit batch with its fsync).
pub const FSYNC_SECONDS: &str = "quorate_storage_fsync_seconds";
/// Histogram: duration of one log compaction.
pub const COMPACTION_SECONDS: &str = "quorate_storage_compaction_seconds";
/// Counter: snapshots taken locally.
pub const SNAPSHOTS_TAKEN_TOTAL: &str = "quorate_snapshots_taken_total";
/// Counter: snapshots streamed to a follower (completed).
pub const SNAPSHOTS_SENT_TOTAL: &str = "quorate_snapshots_sent_total";
/// Counter: snapshots received and installed.
pub const SNAPSHOTS_INSTALLED_TOTAL: &str = "quorate_snapshots_installed_total";
/// Counter: bytes of snapshot files written locally.
pub const SNAPSHOT_TAKEN_BYTES_TOTAL: &str = "quorate_snapshot_taken_bytes_total";
/// Counter: bytes of snapshot streamed to followers.
pub const SNAPSHOT_SENT_BYTES_TOTAL: &str = "quorate_snapshot_sent_bytes_total";
/// Counter: bytes of snapshot received from a leader.
pub const SNAPSHOT_RECEIVED_BYTES_TOTAL: &str = "quorate_snapshot_received_bytes_total";
/// Counter: resumable snapshot transfers opened as leader.
pub const SNAPSHOT_TRANSFERS_STARTED_TOTAL: &str = "quorate_snapshot_transfers_started_total";
/// Counter: resumable snapshot transfers that went on past byte 0 from what the follower
/// already held (as leader: the follower's answer to the opening piece; as follower: a
/// staging kept across a restart, continued).
pub const SNAPSHOT_TRANSFERS_RESUMED_TOTAL: &str = "quorate_snapshot_transfers_resumed_total";
/// Counter: resumable snapshot transfers given up as leader (no progress, refused, unreadable).
pub const SNAPSHOT_TRANSFERS_FAILED_TOTAL: &str = "quorate_snapshot_transfers_failed_total";
/// Counter: bytes of snapshot sent again within a resumable transfer (after a loss or a
/// timeout).
pub const SNAPSHOT_RESENT_BYTES_TOTAL: &str = "quorate_snapshot_resent_bytes_total";
/// Counter: pieces of resumable snapshot transfers staged durably as follower.
pub const SNAPSHOT_PIECES_STAGED_TOTAL: &str = "quorate_snapshot_pieces_staged_total";
/// Counter: pieces of resumable snapshot transfers not staged as follower (malformed,
/// corrupt, out of order, duplicated, refused).
pub const SNAPSHOT_PIECES_REFUSED_TOTAL: &str = "quorate_snapshot_pieces_refused_total";
/// Histogram: time to write a local snapshot.
pub const SNAPSHOT_TAKE_SECONDS: &str = "quorate_snapshot_take_seconds";
/// Histogram: time to stream a snapshot to a follower.
pub const SNAPSHOT_SEND_SECONDS: &str = "quorate_snapshot_send_seconds";
/// Histogram: time to install a received snapshot into the state machine.
pub const SNAPSHOT_INSTALL_SECONDS: &str = "quorate_snapshot_install_seconds";

// ---- security, clients, clocks, invariants ------------------------------------------------

/// Gauge: seconds until this node's TLS certificate expires (negative once expired).
pub const CERT_EXPIRY_SECONDS: &str = "quorate_tls_cert_expiry_seconds";
/// Counter per `reason`: peers or clients refused by authentication or authorisation.
pub const AUTH_REFUSALS_TOTAL: &str = "quorate_auth_refusals_total";
/// Counter: certificate reloads refused (the certificates in use stayed in force).
pub const TLS_RELOAD_FAILURES_TOTAL: &str = "quorate_tls_reload_failures_total";
/// Gauge: authenticated inbound QUIC connections (peers and clients).
pub const TRANSPORT_CONNECTIONS: &str = "quorate_transport_connections";
/// Counter per `reason`: messages from peers dropped by the node (sender not a member, a
/// snapshot chunk not from the current leader, a snapshot over the limit...).
pub const PEER_MESSAGES_REFUSED_TOTAL: &str = "quorate_peer_messages_refused_total";
/// Counter: times the driver waited for the apply thread because its backlog of messages
/// for it was full (the last resort; admission should shed load long before).
pub const APPLY_BACKLOG_WAITS_TOTAL: &str = "quorate_apply_backlog_waits_total";
/// Counter per `principal`: client requests marked as retries.
pub const CLIENT_RETRIES_TOTAL: &str = "quorate_client_retries_total";
/// Counter per `principal`: client requests answered with a timeout.
pub const CLIENT_TIMEOUTS_TOTAL: &str = "quorate_client_timeouts_total";
/// Counter per `principal`: answers not taken by the client within the response write
/// timeout (`limits.response_write_timeout_ms`), dropped to free what they held.
pub const RESPONSE_WRITE_TIMEOUTS_TOTAL: &str = "quorate_response_write_timeouts_total";
/// Counter per `principal`: writing transactions the leader refused before proposing them,
/// because the values their gets would read cannot fit an answer (nothing was logged, no
/// replica read them).
pub const TXNS_REFUSED_UNPROPOSED_TOTAL: &str = "quorate_txns_refused_unproposed_total";
/// Counter per `principal`: writes in a session answered from the applied session table
/// before anything was proposed — replays of the session's last applied sequence number (its
/// cached result) or of an older one (refused as apply refuses it) — on any member.
pub const SESSION_REPLAYS_ANSWERED_TOTAL: &str = "quorate_session_replays_answered_total";
/// Counter per `kind` (`jump`, `stall`): the monotonic clock moved by more than a bound
/// between two driver ticks, or not at all.
pub const CLOCK_DISCONTINUITIES_TOTAL: &str = "quorate_clock_discontinuities_total";
/// Counter per `invariant`: runtime invariant checks that failed. Any value above zero is
/// a bug to report with the node's logs.
pub const INVARIANT_VIOLATIONS_TOTAL: &str = "quorate_invariant_violations_total";

/// Gauge: the last index at which this node completed an applied-entries hash window
/// (a multiple of the window size; see the node's invariants module).
pub const APPLIED_HASH_INDEX: &str = "quorate_applied_hash_index";
/// Gauge: the 48-bit hash of the applied entries of the window ending at
/// [`APPLIED_HASH_INDEX`]. Replicas with the same index must show the same value.
pub const APPLIED_HASH_VALUE: &str = "quorate_applied_hash_value";
/// Counter per `peer`: applied-entries hash samples of a peer compared with this node's own
/// at the same index (inside the node; a mismatch is an `invariant="cross_replica_hash"`
/// violation instead).
pub const APPLIED_HASH_CHECKS_TOTAL: &str = "quorate_applied_hash_checks_total";

// ---- resources: disk, admission, process ---------------------------------------------------

/// Gauge: bytes of the store's live table files (the database's size on disk, without its
/// write-ahead log and snapshot files).
pub const DB_BYTES: &str = "quorate_storage_db_bytes";
/// Gauge: bytes free on the data directory's file system.
pub const DISK_FREE_BYTES: &str = "quorate_storage_disk_free_bytes";
/// Gauge: the free-space floor below which the node refuses client writes (bytes; 0: no
/// floor).
pub const DISK_FLOOR_BYTES: &str = "quorate_storage_disk_floor_bytes";
/// Gauge: 1 while the node refuses client writes because free disk space is below its floor,
/// else 0.
pub const REFUSING_WRITES: &str = "quorate_refusing_writes";
/// Gauge: admission control's current concurrency limit (requests admitted at once; adaptive
/// between `admission.concurrency_count_min` and `_max`).
pub const ADMISSION_CONCURRENCY_LIMIT: &str = "quorate_admission_concurrency_limit_count";
/// Gauge: requests admission control holds admitted now (against the limit above).
pub const ADMISSION_IN_FLIGHT: &str = "quorate_admission_in_flight_count";
/// Gauge: client requests read from the transport and waiting in their principals' lanes
/// for dispatch (the fair queue in front of admission).
pub const REQUESTS_WAITING: &str = "quorate_requests_waiting_count";
/// Gauge: bytes of the client requests waiting for dispatch.
pub const REQUESTS_WAITING_BYTES: &str = "quorate_requests_waiting_bytes";
/// Gauge: principals with client requests waiting for dispatch.
pub const REQUESTS_WAITING_PRINCIPALS: &str = "quorate_requests_waiting_principals_count";
/// Counter: CPU time (user and system) the process used, in seconds (from `/proc/self/stat`;
/// the Prometheus client libraries' standard name).
pub const PROCESS_CPU_SECONDS_TOTAL: &str = "process_cpu_seconds_total";
/// Gauge: the process's resident memory (`VmRSS` of `/proc/self/status`).
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "process_resident_memory_bytes";
/// Gauge: file descriptors the process has open (entries of `/proc/self/fd`).
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
/// Gauge: the process's limit on open file descriptors (soft `RLIMIT_NOFILE`).
pub const PROCESS_MAX_FDS: &str = "process_max_fds";

/// Every metric above, with kind, help and label keys.
pub const ALL: &[MetricDef] = &[
    g(TERM, "The node's current term.", &[]),
    g(ROLE, "1 for the node's current role, 0 for the others.", &[LABEL_ROLE]),
    g(LEADER_ID, "The node id of the known leader, 0 when none.", &[]),
    g(HAS_LEADER, "1 when the node knows a leader for its term.", &[]),
    g(
        RECOVERING,
        "1 while the node recovers from lost synced state (no campaign, and votes only as up to date as its record, until caught up).",
        &[],
    ),
    g(COMMIT_INDEX, "The commit index this node knows.", &[]),
    g(APPLIED_INDEX, "The index applied to the state machine.", &[]),
    g(LAST_LOG_INDEX, "The index of the last entry in the local log.", &[]),
    g(SNAPSHOT_INDEX, "The index of the latest snapshot.", &[]),
    g(CONFIG_VERSION_INDEX, "The log index of the entry that set the configuration.", &[]),
    g(CONFIG_JOINT, "1 while a membership change is in flight (joint configuration).", &[]),
    g(CONFIG_VOTERS_COUNT, "Voters in the configuration.", &[]),
    g(CONFIG_LEARNERS_COUNT, "Learners in the configuration.", &[]),
    g(CLUSTER_VERSION, "The committed cluster version.", &[]),
    g(BUILD_INFO, "Always 1; the binary's version is in the label.", &[LABEL_VERSION]),
    g(HISTORY_ENTRIES, "Earlier versions of keys kept by the multi-version history.", &[]),
    g(HISTORY_BYTES, "Bytes of the earlier versions kept.", &[]),
    g(WATCHES_IN_FLIGHT, "Watches waiting or being read on the node.", &[]),
    g(HISTORY_COMPACTED_REVISION, "The history's compaction revision: reads at a revision below it are refused.", &[]),
    g(PEER_MATCH_INDEX, "Highest index known replicated on the peer (leader only).", &[LABEL_PEER]),
    g(PEER_INFLIGHT_MESSAGES, "Append messages sent to the peer and not yet acknowledged.", &[LABEL_PEER]),
    g(PEER_INFLIGHT_BYTES, "Entry bytes sent to the peer and not yet acknowledged.", &[LABEL_PEER]),
    g(PEER_RTT_SECONDS, "Smoothed round-trip time to the peer.", &[LABEL_PEER]),
    c(PEER_SEND_DROPS_TOTAL, "Messages dropped because the peer's send queue was full.", &[LABEL_PEER]),
    c(LEADER_CHANGES_TOTAL, "Times the known leader changed.", &[]),
    c(ELECTIONS_TOTAL, "Campaigns (pre-vote rounds and elections) this node started, by reason.", &[LABEL_REASON]),
    c(PROPOSALS_RECEIVED_TOTAL, "Client proposals received.", &[]),
    c(PROPOSALS_COMMITTED_TOTAL, "Proposals of this node that committed.", &[]),
    c(PROPOSALS_APPLIED_TOTAL, "Entries applied to the state machine.", &[]),
    c(PROPOSALS_FAILED_TOTAL, "Proposals refused or lost, by reason.", &[LABEL_REASON]),
    c(PROPOSALS_SHED_TOTAL, "Requests shed by admission control, by reason.", &[LABEL_REASON]),
    h(PROPOSAL_COMMIT_SECONDS, "Proposal accepted by the leader until committed."),
    h(COMMIT_APPLY_SECONDS, "Entry committed until applied."),
    h(FSYNC_SECONDS, "One durable write (group-commit batch and fsync)."),
    h(COMPACTION_SECONDS, "One log compaction."),
    c(SNAPSHOTS_TAKEN_TOTAL, "Snapshots taken locally.", &[]),
    c(SNAPSHOTS_SENT_TOTAL, "Snapshots streamed to a follower.", &[]),
    c(SNAPSHOTS_INSTALLED_TOTAL, "Snapshots received and installed.", &[]),
    c(SNAPSHOT_TAKEN_BYTES_TOTAL, "Bytes of snapshots written locally.", &[]),
    c(SNAPSHOT_SENT_BYTES_TOTAL, "Bytes of snapshots streamed to followers.", &[]),
    c(SNAPSHOT_RECEIVED_BYTES_TOTAL, "Bytes of snapshots received from a leader.", &[]),
    c(SNAPSHOT_TRANSFERS_STARTED_TOTAL, "Resumable snapshot transfers opened as leader.", &[]),
    c(
        SNAPSHOT_TRANSFERS_RESUMED_TOTAL,
        "Resumable snapshot transfers that went on past byte 0 from what the follower already held.",
        &[],
    ),
    c(SNAPSHOT_TRANSFERS_FAILED_TOTAL, "Resumable snapshot transfers given up as leader.", &[]),
    c(SNAPSHOT_RESENT_BYTES_TOTAL, "Bytes of snapshot sent again within a resumable transfer.", &[]),
    c(SNAPSHOT_PIECES_STAGED_TOTAL, "Pieces of resumable snapshot transfers staged durably.", &[]),
    c(SNAPSHOT_PIECES_REFUSED_TOTAL, "Pieces of resumable snapshot transfers not staged.", &[]),
    h(SNAPSHOT_TAKE_SECONDS, "Time to write a local snapshot."),
    h(SNAPSHOT_SEND_SECONDS, "Time to stream a snapshot to a follower."),
    h(SNAPSHOT_INSTALL_SECONDS, "Time to install a received snapshot."),
    g(CERT_EXPIRY_SECONDS, "Seconds until this node's TLS certificate expires.", &[]),
    c(AUTH_REFUSALS_TOTAL, "Peers or clients refused by authentication or authorisation, by reason.", &[LABEL_REASON]),
    c(TLS_RELOAD_FAILURES_TOTAL, "Certificate reloads refused; the certificates in use stayed in force.", &[]),
    g(TRANSPORT_CONNECTIONS, "Authenticated inbound QUIC connections, peers and clients.", &[]),
    c(
        PEER_MESSAGES_REFUSED_TOTAL,
        "Messages from peers dropped (not a member, snapshot chunk not from the leader...), by reason.",
        &[LABEL_REASON],
    ),
    c(APPLY_BACKLOG_WAITS_TOTAL, "Times the driver waited for the apply thread (its backlog was full).", &[]),
    c(CLIENT_RETRIES_TOTAL, "Client requests marked as retries, by principal.", &[LABEL_PRINCIPAL]),
    c(CLIENT_TIMEOUTS_TOTAL, "Client requests answered with a timeout, by principal.", &[LABEL_PRINCIPAL]),
    c(
        RESPONSE_WRITE_TIMEOUTS_TOTAL,
        "Answers a client did not take within the response write timeout, by principal.",
        &[LABEL_PRINCIPAL],
    ),
    c(
        TXNS_REFUSED_UNPROPOSED_TOTAL,
        "Writing transactions refused before being proposed (their results cannot fit), by principal.",
        &[LABEL_PRINCIPAL],
    ),
    c(
        SESSION_REPLAYS_ANSWERED_TOTAL,
        "Session writes answered from the session table without being proposed (replays of applied sequence numbers), by principal.",
        &[LABEL_PRINCIPAL],
    ),
    c(CLOCK_DISCONTINUITIES_TOTAL, "Monotonic clock jumps or stalls beyond a bound.", &[LABEL_KIND]),
    c(INVARIANT_VIOLATIONS_TOTAL, "Runtime invariant checks that failed, by invariant.", &[LABEL_INVARIANT]),
    g(APPLIED_HASH_INDEX, "Last index of a complete applied-entries hash window.", &[]),
    g(APPLIED_HASH_VALUE, "48-bit hash of the applied entries of that window.", &[]),
    c(APPLIED_HASH_CHECKS_TOTAL, "Peer hash samples that matched this node's own at the same index.", &[LABEL_PEER]),
    g(DB_BYTES, "Bytes of the store's live table files (the database's size on disk).", &[]),
    g(DISK_FREE_BYTES, "Bytes free on the data directory's file system.", &[]),
    g(DISK_FLOOR_BYTES, "Free-space floor below which client writes are refused (0: none).", &[]),
    g(REFUSING_WRITES, "1 while the node refuses client writes for disk space.", &[]),
    g(ADMISSION_CONCURRENCY_LIMIT, "Admission control's current (adaptive) concurrency limit.", &[]),
    g(ADMISSION_IN_FLIGHT, "Requests admitted and not yet answered.", &[]),
    g(REQUESTS_WAITING, "Client requests waiting in their principals' lanes for dispatch.", &[]),
    g(REQUESTS_WAITING_BYTES, "Bytes of the client requests waiting for dispatch.", &[]),
    g(REQUESTS_WAITING_PRINCIPALS, "Principals with client requests waiting for dispatch.", &[]),
    c(PROCESS_CPU_SECONDS_TOTAL, "CPU time (user and system) the process used, in seconds.", &[]),
    g(PROCESS_RESIDENT_MEMORY_BYTES, "Resident memory of the process.", &[]),
    g(PROCESS_OPEN_FDS, "File descriptors the process has open.", &[]),
    g(PROCESS_MAX_FDS, "The process's limit on open file descriptors.", &[]),
];

const fn g(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> MetricDef {
    MetricDef { name, kind: Kind::Gauge, help, labels }
}
const fn c(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> MetricDef {
    MetricDef { name, kind: Kind::Counter, help, labels }
}
const fn h(name: &'static str, help: &'static str) -> MetricDef {
    MetricDef { name, kind: Kind::Histogram, help, labels: &[] }
}

/// Values of the `reason` label of [`PEER_MESSAGES_REFUSED_TOTAL`].
pub mod peer_refused {
    /// The sender is not a member of this node's configuration (nor its leader).
    pub const NOT_MEMBER: &str = "not_member";
    /// A `TimeoutNow`, or a snapshot chunk, not from the current leader in its term.
    pub const NOT_LEADER: &str = "not_leader";
    /// A snapshot larger than `limits.snapshot_staging_mb`, or more than the free disk space.
    pub const SNAPSHOT_TOO_LARGE: &str = "snapshot_too_large";
    /// A snapshot chunk that does not continue the transfer in progress.
    pub const SNAPSHOT_OUT_OF_ORDER: &str = "snapshot_out_of_order";
    /// Every value.
    pub const ALL: &[&str] = &[NOT_MEMBER, NOT_LEADER, SNAPSHOT_TOO_LARGE, SNAPSHOT_OUT_OF_ORDER];
}

/// Values of the `reason` label of [`ELECTIONS_TOTAL`], one per reason the consensus core
/// records when a campaign starts (`quorate_core::CampaignReason`).
pub mod election {
    /// The election timer fired while the node knew no leader for its term.
    pub const ELECTION_TIMEOUT: &str = "election_timeout";
    /// The election timer fired while the node still knew a leader: the leader went silent
    /// (crashed, partitioned, or stepped down by check-quorum).
    pub const LEADER_TIMEOUT: &str = "leader_timeout";
    /// The leader handed leadership over (`TimeoutNow`).
    pub const TRANSFER: &str = "transfer";
    /// Asked for explicitly (`Raft::campaign_now`).
    pub const FORCED: &str = "forced";
    /// A pre-vote round won: the real election that follows it.
    pub const PRE_VOTE_PASSED: &str = "pre_vote_passed";

    /// Every value above.
    pub const ALL: &[&str] = &[ELECTION_TIMEOUT, LEADER_TIMEOUT, TRANSFER, FORCED, PRE_VOTE_PASSED];
}

/// Values of the `invariant` label of [`INVARIANT_VIOLATIONS_TOTAL`].
pub mod invariant {
    /// The commit index went down.
    pub const COMMIT_MONOTONIC: &str = "commit_monotonic";
    /// The applied index passed the commit index.
    pub const APPLIED_LE_COMMITTED: &str = "applied_le_committed";
    /// The term went down.
    pub const TERM_MONOTONIC: &str = "term_monotonic";
    /// A leader's log does not contain its commit index.
    pub const LEADER_HAS_COMMITTED: &str = "leader_log_has_commit";
    /// Two replicas hashed different applied entries at the same index (found by a node
    /// comparing a peer's hash sample with its own).
    pub const CROSS_REPLICA_HASH: &str = "cross_replica_hash";
    /// The applied index went down.
    pub const APPLIED_MONOTONIC: &str = "applied_monotonic";

    /// Every value above: a node exports each series at zero from its start, so a scrape that
    /// finds none of them is itself a sign of trouble, not a clean bill of health.
    pub const ALL: &[&str] = &[
        COMMIT_MONOTONIC,
        APPLIED_LE_COMMITTED,
        TERM_MONOTONIC,
        LEADER_HAS_COMMITTED,
        CROSS_REPLICA_HASH,
        APPLIED_MONOTONIC,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_prefixed_and_carry_units() {
        let mut seen = std::collections::BTreeSet::new();
        for m in ALL {
            assert!(seen.insert(m.name), "duplicate metric name {}", m.name);
            // The process metrics keep the Prometheus client libraries' standard names.
            assert!(m.name.starts_with("quorate_") || m.name.starts_with("process_"), "{}", m.name);
            assert!(m.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{}", m.name);
            match m.kind {
                Kind::Counter => assert!(m.name.ends_with("_total"), "counter {} must end in _total", m.name),
                Kind::Histogram => assert!(m.name.ends_with("_seconds"), "histogram {} must end in _seconds", m.name),
                Kind::Gauge => assert!(!m.name.ends_with("_total"), "gauge {} must not end in _total", m.name),
            }
            let b = m.buckets();
            assert_eq!(b.is_empty(), m.kind != Kind::Histogram, "{}", m.name);
            assert!(b.windows(2).all(|w| w[0] < w[1]), "buckets of {} must increase", m.name);
        }
        assert_eq!(seen.len(), 79);
    }
}
