//! Admission control in the node: the sans-IO [`quorate_admission::Admission`] behind a lock,
//! fed with the node's signals, asked before any work is done for a client request.
//!
//! * [`Gate::admit`] runs in the driver for every client request, after the role check and
//!   before the request touches the core or the apply thread. A refusal is answered at once
//!   with [`ApiError::Shed`] (`Overloaded { reason, retry_after_ms }`).
//! * It first takes a *hold* for the request's principal ([`quorate_admission::Admission::try_hold`]):
//!   one of the principal's `principal_requests_max` slots and the most bytes the answer can
//!   take ([`response_bytes_max`]), within the principal's and the node's answer-byte budgets.
//! * A scan or a transaction (an answer of up to [`limits::RESULT_BYTES_MAX`]) is charged its
//!   answer's estimate ([`answer_bytes_charged_at_admission`]) to its principal's answer rate
//!   when it is admitted, before it is served: a principal's large reads cannot all be
//!   admitted at once while its rate is not yet in debt. The estimate is settled against the
//!   real size when it is answered (or given back if it is cancelled).
//! * The [`Ticket`] of an admitted request rides in its `Responder`. Answering the client
//!   charges the answer's bytes to its principal's answer rate
//!   (`admission.principal_answer_bytes_per_sec`; a principal in debt is refused
//!   `response_bytes` until the debt is paid back — while another principal holds a request or
//!   asked within 1 s + `retry_after_ms_max`: the rate is work-conserving, and every client request notes its principal as
//!   asking before its hold is taken), completes its permit (budgets freed,
//!   latency fed to the adaptive limit) and sets its hold to the answer's real size; the hold is released once the answer is written or its write
//!   is given up (`limits.response_write_timeout_ms`). A ticket dropped unanswered counts as
//!   cancelled and releases its hold.
//! * Consensus traffic (Raft messages, snapshot chunks) never reaches the gate.
//! * Retries: a client on a `quorate/2` connection sends a retry as
//!   [`quorate_api::NodeMessage::RequestAttempt`] ([`attempt_of`] unwraps it); a retry is
//!   counted (`quorate_client_retries_total{principal}`, [`note_attempt`]) and admitted as one
//!   (`is_retry`: the principal's retry budget). Principal labels are capped
//!   ([`principal_label`]).
//! * Signals: uncommitted bytes in the core, apply lag (committed − applied), proposals
//!   appended but not committed, the slowest follower's bytes in flight, free disk space
//!   (checked at most every [`DISK_CHECK_INTERVAL`]) and fsync latency (a decaying average of
//!   persist round trips measured by [`FsyncProbe`]).

use crate::config::{AdmissionConfig, NodeConfig};
use quorate_admission::{
    Admission, Class, Config, Hold, Nanos, Outcome, Permit, Principal, Reason, RequestInfo, Signals,
};
use quorate_api::{ApiError, NodeMessage, OverloadReason, Overloaded, Request, Response, Txn, TxnOp, limits};
use quorate_core::Raft;
use quorate_log::{LogIndex, LogStorage};
use quorate_telemetry::names::{PRINCIPAL_LABEL_OTHER, PRINCIPAL_LABELS_MAX};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How often free disk space is measured (a `statvfs` call).
pub(crate) const DISK_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// The fsync latency signal halves for every this much time without a completed persist, so
/// that a refusal for fsync latency cannot outlive the slow disk that caused it (shed writes
/// produce no new samples).
const FSYNC_DECAY_HALF_LIFE: Duration = Duration::from_millis(250);
/// How often the admission state is logged (debug, target `quorate::admission`).
const STATE_LOG_INTERVAL: Duration = Duration::from_secs(1);
/// Fixed overhead counted per written request on top of its keys and values (the command
/// envelope, session, log entry header).
const REQUEST_OVERHEAD_BYTES: u64 = 64;

/// The free space a node keeps, in bytes: `(store floor, client floor)`. Below the store floor
/// — what the storage engine itself may need: every memtable flushed and its largest
/// compaction, which follow from `limits.storage_write_buffer_mb` — the store refuses appends
/// (they wait for space). Client writes are refused (`Overloaded`, disk space) from the client
/// floor on, that need plus `limits.free_space_floor_mb` of headroom, so that what is already
/// accepted fits before the store floor. `limits.free_space_floor_mb = 0` turns both off.
pub(crate) fn space_floors(config: &NodeConfig) -> (u64, u64) {
    if config.limits.free_space_floor_mb == 0 {
        return (0, 0);
    }
    let needed = store_options_space(config);
    (needed, needed.saturating_add(config.limits.free_space_floor_mb.saturating_mul(1 << 20)))
}

/// [`quorate_storage::StoreOptions::space_needed_bytes`] for the node's memtable size.
fn store_options_space(config: &NodeConfig) -> u64 {
    let mut o = quorate_storage::StoreOptions::default();
    o.write_buffer_bytes = config.limits.storage_write_buffer_mb.saturating_mul(1 << 20);
    o.space_needed_bytes()
}

/// The admission configuration of the node, checked (a wrong `[admission]` setting names
/// its field).
pub(crate) fn admission_config(config: &NodeConfig) -> Result<Config, quorate_config::ConfigError> {
    let a: &AdmissionConfig = &config.admission;
    let floor = space_floors(config).1;
    let c = Config {
        concurrency_count_min: a.concurrency_count_min,
        concurrency_count_max: a.concurrency_count_max,
        concurrency_count_initial: a.concurrency_count_initial,
        latency_target_ms: a.latency_target_ms,
        principal_rate_per_sec: a.principal_rate_per_sec,
        principal_burst_count: a.principal_burst_count,
        in_flight_bytes_max: a.in_flight_bytes_max,
        uncommitted_bytes_max: a.uncommitted_bytes_max,
        apply_lag_entries_max: a.apply_lag_entries_max,
        proposal_queue_count_max: a.proposal_queue_count_max,
        peer_in_flight_bytes_max: a.peer_in_flight_bytes_max,
        // Free space is governed by `space_floors` (0: not checked); the hysteresis is a quarter
        // of the headroom above what the storage engine needs.
        disk_free_bytes_min: floor,
        disk_free_hysteresis_bytes: config.limits.free_space_floor_mb.saturating_mul(1 << 20) / 4,
        fsync_latency_ms_max: a.fsync_latency_ms_max,
        retry_after_ms_min: a.retry_after_ms_min,
        retry_after_ms_max: a.retry_after_ms_max,
        signal_retry_after_ms: a.retry_after_ms_min.max(100).min(a.retry_after_ms_max),
        // A principal never holds more than the node does.
        principal_requests_max: a.principal_requests_max.min(config.limits.pending_requests_max as u64),
        principal_response_bytes_max: a.principal_response_bytes_max,
        requests_max: config.limits.pending_requests_max as u64,
        response_bytes_max: a.response_bytes_max,
        // A principal may be sent twice its per-second answer bytes at once.
        principal_answer_bytes_per_sec: a.principal_answer_bytes_per_sec,
        principal_answer_burst_bytes: a
            .principal_answer_bytes_per_sec
            .saturating_mul(2)
            .min(quorate_admission::BUCKET_BURST_COUNT_MAX),
        ..Config::default()
    };
    c.validate().map_err(|e| quorate_config::ConfigError::Invalid { field: "admission", detail: e.to_string() })?;
    Ok(c)
}

/// A principal from the client certificate's name: a stable 64-bit FNV-1a hash (a collision
/// only merges two clients' fair shares).
pub(crate) fn principal_of(name: &str) -> Principal {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    Principal(h)
}

/// The class of a request: writes and administrative changes are `ClientWrite`, the rest
/// `ClientRead`.
pub(crate) fn class_of(body: &Request) -> Class {
    match body {
        Request::Get { .. }
        | Request::Scan { .. }
        | Request::ScanPaged { .. }
        | Request::TxnPaged { .. }
        | Request::Status
        | Request::MemberList
        // A chunk of a snapshot stream changes nothing: not shed for write pressure (disk
        // space, uncommitted bytes), so a backup can be taken while writes are refused.
        | Request::SnapshotStreamFetch { .. }
        | Request::Watch(_)
        // A keep-alive changes only the leader's memory: not shed for write pressure, which
        // would let leases expire while their owners are alive.
        | Request::LeaseKeepAlive { .. }
        | Request::LeaseList
        | Request::LeaseTimeToLive { .. } => Class::ClientRead,
        Request::Txn(t) if t.is_read_only() => Class::ClientRead,
        _ => Class::ClientWrite,
    }
}

/// An answer too small to matter (a write's revision, a refusal, a status): what a hold keeps
/// for it at least.
const SMALL_ANSWER_BYTES: u64 = 4 * 1024;

/// The most bytes a transaction's answer can take: a result per operation of its larger
/// branch (a get's up to [`limits::KEY_VALUE_BYTES_MAX`]), at most [`limits::RESULT_BYTES_MAX`].
fn txn_answer_bytes_max(t: &Txn) -> u64 {
    let branch = |ops: &[TxnOp]| -> u64 {
        ops.iter()
            .map(|o| match o {
                TxnOp::Get { key } => (key.len() + limits::VALUE_BYTES_MAX + limits::KEY_VALUE_OVERHEAD_BYTES) as u64,
                _ => 8,
            })
            .sum()
    };
    (SMALL_ANSWER_BYTES + branch(&t.success).max(branch(&t.failure))).min(limits::RESULT_BYTES_MAX as u64)
}

/// The most bytes the answer to `body` can take, known before any work is done: what its hold
/// keeps until the answer's real size is known. A read of one key can be answered with its
/// largest value; a scan or transaction page with [`limits::RESULT_BYTES_MAX`]; a write with
/// a revision (a compare-and-swap with the previous pair, a writing transaction with its gets).
pub(crate) fn response_bytes_max(body: &Request) -> u64 {
    let pair = |key: &[u8]| (key.len() + limits::VALUE_BYTES_MAX + limits::KEY_VALUE_OVERHEAD_BYTES) as u64;
    let bytes = match body {
        Request::Get { key, .. } | Request::Cas { key, .. } => SMALL_ANSWER_BYTES + pair(key),
        Request::Scan { limit, .. } | Request::ScanPaged { limit, .. } => {
            SMALL_ANSWER_BYTES + u64::from(*limit) * limits::KEY_VALUE_BYTES_MAX as u64
        }
        Request::Txn(t) | Request::TxnPaged { txn: t, .. } => txn_answer_bytes_max(t),
        // A member list names every member with its address.
        Request::MemberList => (quorate_log::MEMBERS_MAX * (limits::TEXT_BYTES_MAX + 32)) as u64,
        Request::SnapshotStreamFetch { len, .. } => SMALL_ANSWER_BYTES + u64::from(*len),
        // A lease's keys, or a principal's leases.
        Request::LeaseTimeToLive { keys: true, .. } => {
            SMALL_ANSWER_BYTES + limits::LEASE_KEY_BYTES_MAX + limits::LEASE_KEYS_MAX * 16
        }
        Request::LeaseList => SMALL_ANSWER_BYTES + limits::LEASES_PER_PRINCIPAL_MAX * 64,
        // A watch answer holds at most its `max_bytes` of events (0: the most there is).
        Request::Watch(w) => {
            let max = if w.max_bytes == 0 { limits::WATCH_BYTES_MAX as u64 } else { u64::from(w.max_bytes) };
            SMALL_ANSWER_BYTES + max.min(limits::WATCH_BYTES_MAX as u64)
        }
        _ => SMALL_ANSWER_BYTES,
    };
    bytes.min(limits::RESULT_BYTES_MAX as u64 + limits::RESPONSE_ENVELOPE_BYTES_MAX as u64)
}

/// The answer bytes charged to a request's principal when it is admitted, before any work is
/// done: the estimate ([`response_bytes_max`]) of a scan or a transaction, whose answer can take
/// up to [`limits::RESULT_BYTES_MAX`]; 0 for the others (a get's answer is at most one value,
/// charged when answered). Settled against the answer's real size when it is answered.
pub(crate) fn answer_bytes_charged_at_admission(body: &Request) -> u64 {
    match body {
        Request::Scan { .. }
        | Request::ScanPaged { .. }
        | Request::Txn(_)
        | Request::TxnPaged { .. }
        | Request::Watch(_) => response_bytes_max(body),
        _ => 0,
    }
}

/// The bytes a request adds to the log (writes) or costs to answer (reads: its keys only).
pub(crate) fn request_bytes(body: &Request) -> u64 {
    let len = |v: &[u8]| v.len() as u64;
    let op = |o: &TxnOp| match o {
        TxnOp::Put { key, value } => len(key) + len(value),
        TxnOp::Delete { key } | TxnOp::Get { key } => len(key),
        _ => 0,
    };
    REQUEST_OVERHEAD_BYTES
        + match body {
            Request::Put { key, value } | Request::PutWithLease { key, value, .. } => len(key) + len(value),
            Request::Cas { key, expected, value } => len(key) + expected.as_deref().map_or(0, len) + len(value),
            Request::Delete { key } | Request::Get { key, .. } => len(key),
            Request::Scan { start, end, .. } | Request::ScanPaged { start, end, .. } => {
                len(start) + end.as_deref().map_or(0, len)
            }
            Request::Txn(t) | Request::TxnPaged { txn: t, .. } => {
                t.compare.iter().map(|c| len(&c.key)).sum::<u64>()
                    + t.success.iter().map(op).sum::<u64>()
                    + t.failure.iter().map(op).sum::<u64>()
            }
            Request::MemberAdd { addr, .. } | Request::MemberUpdate { addr, .. } => addr.len() as u64,
            Request::Watch(w) => len(&w.key),
            _ => 0,
        }
}

/// The wire reason of a refusal.
pub(crate) fn wire_reason(reason: Reason) -> OverloadReason {
    match reason {
        Reason::QueueFull => OverloadReason::QueueFull,
        Reason::ConcurrencyLimit => OverloadReason::ConcurrencyLimit,
        Reason::FairShare { .. } => OverloadReason::FairShare,
        Reason::RateLimited { .. } => OverloadReason::RateLimited,
        Reason::RetryBudget { .. } => OverloadReason::RetryBudget,
        Reason::InFlightBytes => OverloadReason::InFlightBytes,
        Reason::RequestTooLarge => OverloadReason::RequestTooLarge,
        Reason::UncommittedBytes => OverloadReason::UncommittedBytes,
        Reason::ApplyLag => OverloadReason::ApplyLag,
        Reason::DiskSpace => OverloadReason::DiskSpace,
        Reason::FsyncLatency => OverloadReason::FsyncLatency,
        Reason::PeerBacklog => OverloadReason::PeerBacklog,
        Reason::PrincipalRequests { .. } => OverloadReason::PrincipalRequests,
        Reason::ResponseBytes { .. } => OverloadReason::ResponseBytes,
        // `Reason` is non-exhaustive: a new reason reads as the generic limit until the
        // wire type learns it.
        _ => OverloadReason::ConcurrencyLimit,
    }
}

/// A refusal answered to the client; counted (`proposals_shed_total{reason}`).
pub(crate) fn shed(reason: OverloadReason, retry_after: Duration) -> ApiError {
    count_shed(reason);
    let retry_after_ms = u32::try_from(retry_after.as_millis()).unwrap_or(u32::MAX);
    ApiError::Shed(Overloaded { reason, retry_after_ms })
}

/// Counts one shed request by reason (`quorate_proposals_shed_total{reason}`).
fn count_shed(reason: OverloadReason) {
    use quorate_telemetry::names;
    metrics::counter!(names::PROPOSALS_SHED_TOTAL, names::LABEL_REASON => reason.label()).increment(1);
}

/// A client message and its attempt number: an attempt-numbered request is unwrapped into the
/// plain request it carries; anything else is attempt 0.
pub(crate) fn attempt_of(message: NodeMessage) -> (u32, NodeMessage) {
    match message {
        NodeMessage::RequestAttempt(a) => (a.attempt, NodeMessage::Request(a.request)),
        other => (0, other),
    }
}

/// Counts a retry (attempt 1 or later) of `principal` (`quorate_client_retries_total`).
pub(crate) fn note_attempt(principal: &str, attempt: u32) {
    use quorate_telemetry::names;
    if attempt > 0 {
        metrics::counter!(names::CLIENT_RETRIES_TOTAL, names::LABEL_PRINCIPAL => principal_label(principal))
            .increment(1);
    }
}

/// Principal names seen as metric labels so far (at most [`PRINCIPAL_LABELS_MAX`]).
static PRINCIPAL_LABELS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// The `principal` label for a client principal: its name while fewer than
/// [`PRINCIPAL_LABELS_MAX`] names are labelled, else [`PRINCIPAL_LABEL_OTHER`], so that many
/// client certificates cannot grow `/metrics` without bound.
pub(crate) fn principal_label(principal: &str) -> String {
    let mut seen = PRINCIPAL_LABELS.lock().unwrap_or_else(PoisonError::into_inner);
    if seen.contains(principal) {
        return principal.to_string();
    }
    if seen.len() < PRINCIPAL_LABELS_MAX && principal != PRINCIPAL_LABEL_OTHER {
        seen.insert(principal.to_string());
        return principal.to_string();
    }
    PRINCIPAL_LABEL_OTHER.to_string()
}

/// How an answer ends an admitted request, for the adaptive limit.
fn outcome_of(result: &Result<Response, ApiError>) -> Outcome {
    match result {
        // A long poll's latency is mostly its wait for a change, not the node's speed: no
        // sample for the adaptive limit (a watch would otherwise shrink it for everyone).
        Ok(Response::Watch(_)) => Outcome::Cancelled,
        Ok(_) => Outcome::Success,
        // Timed out, not confirmed, or shed further down: congestion.
        Err(ApiError::Timeout | ApiError::Unavailable(_) | ApiError::Shed(_) | ApiError::Overloaded { .. }) => {
            Outcome::Dropped
        }
        // Work done, application-level failure.
        Err(ApiError::Refused(_) | ApiError::SessionExpired) => Outcome::Failed,
        // Answered without the work (redirect, bad request, node halting): no latency sample.
        Err(_) => Outcome::Cancelled,
    }
}

/// Measures persist round trips (submit to durable) as an exponentially weighted average.
#[derive(Debug)]
pub(crate) struct FsyncProbe {
    start: Instant,
    ewma_ns: AtomicU64,
    last_sample_ns: AtomicU64,
}

impl FsyncProbe {
    fn new(start: Instant) -> FsyncProbe {
        FsyncProbe { start, ewma_ns: AtomicU64::new(0), last_sample_ns: AtomicU64::new(0) }
    }

    /// Records one persist that took `latency` (called on the committer's thread).
    pub(crate) fn record(&self, latency: Duration) {
        self.record_at(latency, Instant::now());
    }

    /// Records one persist that took `latency`, completed at `now`. The average it folds the
    /// sample into is the decayed one ([`FsyncProbe::current`]): folding into the stored
    /// average undid the decay, so after a slow disk every write admitted once the signal had
    /// decayed pushed it back up, and the refusals outlived the slow disk by seconds.
    fn record_at(&self, latency: Duration, now: Instant) {
        let sample = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        // Races between two writers lose a sample at worst: one writer thread calls this.
        let old = u64::try_from(self.current(now).as_nanos()).unwrap_or(u64::MAX);
        let new = if old == 0 { sample } else { old - old / 8 + sample / 8 };
        self.ewma_ns.store(new, Ordering::Relaxed);
        let at = u64::try_from(now.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX);
        self.last_sample_ns.store(at, Ordering::Relaxed);
    }

    /// The average, halved for every [`FSYNC_DECAY_HALF_LIFE`] since the last sample.
    fn current(&self, now: Instant) -> Duration {
        let ewma = self.ewma_ns.load(Ordering::Relaxed);
        let last = Duration::from_nanos(self.last_sample_ns.load(Ordering::Relaxed));
        let idle = now.saturating_duration_since(self.start).saturating_sub(last);
        let halvings = (idle.as_nanos() / FSYNC_DECAY_HALF_LIFE.as_nanos()).min(63) as u32;
        Duration::from_nanos(ewma >> halvings)
    }
}

/// What the driver measures for [`Gate::admit`], besides disk and fsync which the gate reads.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CoreSignals {
    /// Bytes appended but not committed (leader).
    pub(crate) uncommitted_bytes: u64,
    /// Committed minus applied entries.
    pub(crate) apply_lag_entries: u64,
    /// Entries appended but not committed: the proposal queue.
    pub(crate) proposal_queue_count: u64,
    /// The most bytes in flight to one follower.
    pub(crate) peer_in_flight_bytes_max: u64,
}

impl CoreSignals {
    /// Reads the signals from the consensus core; `applied` is the state machine's index.
    pub(crate) fn measure<S: LogStorage>(raft: &Raft<S>, applied: LogIndex) -> CoreSignals {
        let commit = raft.commit_index();
        CoreSignals {
            uncommitted_bytes: raft.uncommitted_bytes(),
            apply_lag_entries: commit.0.saturating_sub(applied.0),
            proposal_queue_count: raft.last_index().0.saturating_sub(commit.0),
            peer_in_flight_bytes_max: raft.peer_inflight_bytes_max(),
        }
    }
}

struct Inner {
    admission: Admission,
    disk_checked: Option<Instant>,
    disk_free_bytes: u64,
    logged: Option<Instant>,
}

/// The node's admission gate, shared by the driver (admit) and whoever answers (complete).
pub(crate) struct Gate {
    inner: Mutex<Inner>,
    enabled: bool,
    start: Instant,
    fsync: Arc<FsyncProbe>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate").field("enabled", &self.enabled).finish_non_exhaustive()
    }
}

impl Gate {
    /// A gate for `config`; `seed` jitters the retry hints.
    pub(crate) fn new(config: &NodeConfig, seed: u64) -> Result<Arc<Gate>, quorate_config::ConfigError> {
        let admission = Admission::new(admission_config(config)?, seed)
            .map_err(|e| quorate_config::ConfigError::Invalid { field: "admission", detail: e.to_string() })?;
        let start = Instant::now();
        Ok(Arc::new(Gate {
            inner: Mutex::new(Inner { admission, disk_checked: None, disk_free_bytes: u64::MAX, logged: None }),
            enabled: !config.admission.danger_admission_disabled,
            start,
            fsync: Arc::new(FsyncProbe::new(start)),
        }))
    }

    /// The probe the persist path records fsync latency into.
    pub(crate) fn fsync_probe(&self) -> Arc<FsyncProbe> {
        self.fsync.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now(&self, at: Instant) -> Nanos {
        Nanos(u64::try_from(at.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX))
    }

    /// Decides on a client request before any work is done. `Ok(None)`: admission is
    /// disabled (danger setting). `Err`: answer the client with it and do nothing else.
    pub(crate) fn admit(
        self: &Arc<Self>,
        body: &Request,
        principal: Principal,
        is_retry: bool,
        core: CoreSignals,
        data_dir: &Path,
    ) -> Result<Option<Ticket>, ApiError> {
        if !self.enabled {
            return Ok(None);
        }
        let at = Instant::now();
        let now = self.now(at);
        let info = RequestInfo { class: class_of(body), principal, bytes: request_bytes(body), is_retry };
        let reserve = response_bytes_max(body);
        let estimate = answer_bytes_charged_at_admission(body);
        let mut inner = self.lock();
        let floor = inner.admission.config().disk_free_bytes_min;
        if floor > 0 && inner.disk_checked.is_none_or(|t| at.saturating_duration_since(t) >= DISK_CHECK_INTERVAL) {
            // An error reading free space reads as "unknown": the store's own floor remains.
            inner.disk_free_bytes = quorate_storage::free_space_bytes(data_dir).unwrap_or(u64::MAX);
            inner.disk_checked = Some(at);
        }
        let signals = Signals {
            uncommitted_bytes: core.uncommitted_bytes,
            apply_lag_entries: core.apply_lag_entries,
            proposal_queue_count: core.proposal_queue_count,
            peer_in_flight_bytes_max: core.peer_in_flight_bytes_max,
            disk_free_bytes: if floor > 0 { inner.disk_free_bytes } else { u64::MAX },
            fsync_latency: self.fsync.current(at),
        };
        inner.admission.set_signals(signals);
        if inner.logged.is_none_or(|t| at.saturating_duration_since(t) >= STATE_LOG_INTERVAL) {
            inner.logged = Some(at);
            let a = &inner.admission;
            let stats = a.stats();
            tracing::debug!(
                target: "quorate::admission",
                limit = a.concurrency_limit_count(),
                in_flight = a.in_flight_count(),
                admitted = stats.admitted_count.iter().sum::<u64>(),
                refused = stats.refused_count.iter().sum::<u64>(),
                ?signals,
                "admission state"
            );
        }
        // The principal's slot and answer bytes first: a client that keeps its answers unread
        // is refused here, before it can take a concurrency slot from anyone. Refused here
        // or not, it asked: the answer-byte rate of others holds while it does.
        if info.class != Class::Consensus {
            inner.admission.asked(principal, now);
        }
        let hold = match inner.admission.try_hold(info.class, principal, reserve) {
            Ok(hold) => hold,
            Err(o) => {
                drop(inner);
                return Err(shed(wire_reason(o.reason), o.retry_after));
            }
        };
        match inner.admission.try_admit(&info, now) {
            Ok(permit) => {
                // A large read's estimate is charged now, before it is served (settled when it
                // is answered): large reads admitted together are paid for together.
                // What was taken, not the estimate: alone, a principal at zero is charged
                // nothing now, and owes its whole answer if another principal arrives first.
                let precharged = if estimate > 0 { inner.admission.charge_answer(principal, estimate, now) } else { 0 };
                Ok(Some(Ticket { gate: self.clone(), permit: Some(permit), hold: Some(hold), precharged }))
            }
            Err(o) => {
                inner.admission.release_hold(hold);
                drop(inner);
                Err(shed(wire_reason(o.reason), o.retry_after))
            }
        }
    }

    /// An admitted request was dropped unanswered: the estimate charged at admission goes
    /// back to its principal and its permit completes as cancelled.
    fn cancel(&self, permit: Permit, precharged: u64) {
        let now = self.now(Instant::now());
        let mut inner = self.lock();
        if precharged > 0 {
            inner.admission.refund_answer(permit.principal(), precharged, now);
        }
        inner.admission.complete(permit, Outcome::Cancelled, now);
    }

    /// Charges `bytes` to `principal`'s answer rate.
    fn charge_answer(&self, principal: Principal, bytes: u64) {
        let now = self.now(Instant::now());
        self.lock().admission.charge_answer(principal, bytes, now);
    }

    /// An admitted request was answered with `bytes`: the bytes are charged to its principal's
    /// answer rate, less the estimate charged at admission (`precharged`; an estimate above the
    /// answer is given back), before its permit completes, while the principal is surely
    /// tracked; the permit completes, and the hold keeps the answer's real size.
    fn answered(&self, permit: Option<Permit>, outcome: Outcome, hold: Option<&mut Hold>, bytes: u64, precharged: u64) {
        let now = self.now(Instant::now());
        let mut inner = self.lock();
        if let Some(p) = permit {
            if bytes >= precharged {
                inner.admission.charge_answer(p.principal(), bytes - precharged, now);
            } else {
                inner.admission.refund_answer(p.principal(), precharged - bytes, now);
            }
            inner.admission.complete(p, outcome, now);
        }
        if let Some(h) = hold {
            inner.admission.resize_hold(h, bytes);
        }
    }

    fn release_hold(&self, hold: Hold) {
        self.lock().admission.release_hold(hold);
    }

    /// Requests and answer bytes held for `principal` (tests, status hooks).
    #[allow(dead_code, reason = "read by tests")]
    pub(crate) fn held(&self, principal: Principal) -> (u64, u64) {
        let inner = self.lock();
        let holds = inner.admission.holds();
        (holds.principal_count(principal), holds.principal_bytes(principal))
    }

    /// Admission's current concurrency limit and the requests it holds admitted (gauges).
    pub(crate) fn concurrency(&self) -> (u32, u64) {
        let inner = self.lock();
        (inner.admission.concurrency_limit_count(), inner.admission.in_flight_count())
    }

    /// Whether writes are refused for disk space now (status, tests).
    #[allow(dead_code, reason = "read by tests and status hooks")]
    pub(crate) fn is_refusing_for_disk(&self) -> bool {
        self.lock().admission.is_refusing_for_disk()
    }
}

/// An admitted request's claim on the gate: its admission permit, completed when the client
/// is answered, and its hold, released when the ticket is dropped — after the answer has been
/// written (or its write given up). Dropped unanswered, the permit counts as cancelled.
#[derive(Debug)]
pub(crate) struct Ticket {
    gate: Arc<Gate>,
    permit: Option<Permit>,
    hold: Option<Hold>,
    /// Answer bytes charged to the principal at admission ([`answer_bytes_charged_at_admission`]).
    precharged: u64,
}

impl Ticket {
    /// The principal the request was admitted for (`None` before admission).
    pub(crate) fn principal(&self) -> Option<quorate_admission::Principal> {
        self.permit.as_ref().map(|p| p.principal())
    }

    /// Charges `bytes` read for this request (beyond its answer) to its principal's answer
    /// rate: a writing transaction refused before it was proposed costs the leader the values
    /// it read to decide.
    pub(crate) fn charge_reads(&self, bytes: u64) {
        if let Some(p) = self.permit.as_ref() {
            self.gate.charge_answer(p.principal(), bytes);
        }
    }

    /// The request was answered with `result`, an answer of `bytes` bytes: the permit is
    /// complete, and the hold keeps the answer's real size until the ticket is dropped.
    /// The answer's bytes are charged to the principal's answer rate
    /// (`admission.principal_answer_bytes_per_sec`): a principal sent more is refused
    /// (`response_bytes`) until its debt is paid back.
    pub(crate) fn answered(&mut self, result: &Result<Response, ApiError>, bytes: u64) {
        let permit = self.permit.take();
        self.gate.answered(permit, outcome_of(result), self.hold.as_mut(), bytes, self.precharged);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            self.gate.cancel(p, self.precharged);
        }
        if let Some(h) = self.hold.take() {
            self.gate.release_hold(h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorate_api::{ReadConsistency, Txn};

    #[test]
    fn a_watch_answer_is_no_latency_sample_and_a_watch_is_a_read_charged_its_answer_bytes() {
        let read = quorate_api::ReadInfo {
            node: quorate_log::NodeId::new(1).unwrap(),
            revision: 1,
            applied: quorate_log::LogIndex(1),
            staleness: None,
        };
        let answer = Response::Watch(quorate_api::WatchAnswer { events: Vec::new(), complete_to: 1, read });
        assert_eq!(outcome_of(&Ok(answer)), Outcome::Cancelled);
        let w = quorate_api::WatchRequest {
            key: b"k".to_vec(),
            prefix: false,
            from_revision: 1,
            prev_kv: false,
            max_events: 10,
            max_bytes: 1000,
            wait_ms: 1000,
        };
        assert_eq!(class_of(&Request::Watch(w.clone())), Class::ClientRead);
        assert_eq!(answer_bytes_charged_at_admission(&Request::Watch(w)), SMALL_ANSWER_BYTES + 1000);
    }

    #[test]
    fn classes_and_sizes() {
        let put = Request::Put { key: b"k".to_vec(), value: vec![0; 100] };
        assert_eq!(class_of(&put), Class::ClientWrite);
        assert_eq!(request_bytes(&put), REQUEST_OVERHEAD_BYTES + 101);
        let get = Request::Get { key: b"key".to_vec(), read: ReadConsistency::Stale };
        assert_eq!(class_of(&get), Class::ClientRead);
        assert_eq!(request_bytes(&get), REQUEST_OVERHEAD_BYTES + 3);
        let read_txn =
            Request::Txn(Txn { compare: vec![], success: vec![TxnOp::Get { key: b"a".to_vec() }], failure: vec![] });
        assert_eq!(class_of(&read_txn), Class::ClientRead);
        assert_eq!(class_of(&Request::Status), Class::ClientRead);
        assert_eq!(class_of(&Request::SnapshotSave), Class::ClientWrite);
    }

    /// A gate with default settings but `answer_bytes_per_sec` (burst: twice that).
    fn gate(answer_bytes_per_sec: u64) -> Arc<Gate> {
        let text = "id = 1\ncluster = \"dev\"\nlisten = \"127.0.0.1:7001\"\ndata_dir = \"n1\"\n[peers]\n1 = \"127.0.0.1:7001\"\n[tls]\nca = \"ca.pem\"\ncert = \"node-1.pem\"\nkey = \"node-1.key\"\n";
        let mut config = NodeConfig::from_toml(text).expect("config");
        config.admission.principal_answer_bytes_per_sec = answer_bytes_per_sec;
        Gate::new(&config, 1).expect("gate")
    }

    /// `who`'s request `body` at `gate`, with healthy signals.
    fn admit(gate: &Arc<Gate>, body: &Request, who: &str) -> Result<Option<Ticket>, ApiError> {
        gate.admit(body, principal_of(who), false, CoreSignals::default(), &std::env::temp_dir())
    }

    /// A scan whose answer estimate is charged at admission.
    fn large_scan() -> Request {
        Request::Scan { start: b"a".to_vec(), end: None, limit: 10_000, read: ReadConsistency::Linearizable }
    }

    fn refused_for_answer_bytes(r: &Result<Option<Ticket>, ApiError>) -> bool {
        matches!(r, Err(ApiError::Shed(o)) if o.reason == OverloadReason::ResponseBytes)
    }

    #[test]
    fn a_large_read_is_charged_when_it_is_admitted() {
        const MIB: u64 = 1 << 20;
        // 1 MiB/s, a burst of 2 MiB: what time refills during the test is negligible.
        let gate = gate(MIB);
        let admit = |body: &Request, who: &str| admit(&gate, body, who);
        let scan = large_scan();
        let txn = Request::Txn(Txn {
            compare: vec![],
            success: (0..128).map(|i| TxnOp::Get { key: format!("k{i}").into_bytes() }).collect(),
            failure: vec![],
        });
        assert!(answer_bytes_charged_at_admission(&scan) >= 4 * MIB, "a scan page's estimate");
        assert_eq!(answer_bytes_charged_at_admission(&txn), 4 * MIB, "a transaction page's estimate");
        let get = Request::Get { key: b"k".to_vec(), read: ReadConsistency::Stale };
        assert_eq!(answer_bytes_charged_at_admission(&get), 0, "a get is charged when answered");
        // The answer rate holds while another principal uses the node (work-conserving).
        drop(admit(&get, "writer").expect("the writer's get is admitted"));
        // A large read admitted and not yet answered has paid its 4 MiB estimate: its principal
        // is 2 MiB in debt, so its next large read is refused before anything is read.
        let mut first = admit(&scan, "reader").expect("admitted").expect("admission is on");
        assert!(refused_for_answer_bytes(&admit(&txn, "reader")), "a second large read was admitted");
        // Another principal is not refused.
        drop(admit(&scan, "writer").expect("another principal is admitted"));
        // An answer of 1 KiB settles the estimate: the reader is out of debt again.
        first.answered(&Ok(Response::Done), 1024);
        drop(first);
        let again = admit(&txn, "reader").expect("admitted once the answer settled").expect("on");
        // A large read dropped unanswered gives its estimate back.
        drop(again);
        let held = admit(&scan, "reader").expect("admitted after a cancelled read");
        assert!(refused_for_answer_bytes(&admit(&scan, "reader")));
        drop(held);
    }

    #[test]
    fn an_estimate_charged_alone_is_settled_against_what_was_taken() {
        const MIB: u64 = 1 << 20;
        // 1 MiB/s, a burst of 2 MiB.
        let gate = gate(MIB);
        let admit = |body: &Request, who: &str| admit(&gate, body, who);
        let scan = large_scan();
        let get = Request::Get { key: b"k".to_vec(), read: ReadConsistency::Stale };
        // Alone, the reader spends its burst on a 4 MiB answer (not held to the rate alone).
        let mut first = admit(&scan, "reader").expect("admitted").expect("admission is on");
        first.answered(&Ok(Response::Done), 4 * MIB);
        drop(first);
        // Alone at zero, the next large read's estimate takes nothing; another principal
        // arrives before it is answered: its whole answer is owed, and the reader is refused.
        // (Settled against the 4 MiB estimate as if it had been taken, it owed nothing.)
        let mut second = admit(&scan, "reader").expect("admitted alone").expect("on");
        drop(admit(&get, "writer").expect("the writer's get is admitted"));
        second.answered(&Ok(Response::Done), 4 * MIB);
        drop(second);
        assert!(refused_for_answer_bytes(&admit(&scan, "reader")), "the answer after the writer came was not charged");
    }

    #[test]
    fn principals_are_stable_and_distinct() {
        assert_eq!(principal_of("writer"), principal_of("writer"));
        assert_ne!(principal_of("writer"), principal_of("reader"));
        // FNV-1a of the empty string is its offset basis.
        assert_eq!(principal_of(""), Principal(0xcbf2_9ce4_8422_2325));
    }

    #[test]
    fn every_reason_maps_to_a_distinct_wire_reason() {
        let p = Principal(1);
        let reasons = [
            Reason::QueueFull,
            Reason::ConcurrencyLimit,
            Reason::FairShare { principal: p },
            Reason::RateLimited { principal: p },
            Reason::RetryBudget { principal: p },
            Reason::InFlightBytes,
            Reason::RequestTooLarge,
            Reason::UncommittedBytes,
            Reason::ApplyLag,
            Reason::DiskSpace,
            Reason::FsyncLatency,
            Reason::PeerBacklog,
            Reason::PrincipalRequests { principal: p },
            Reason::ResponseBytes { principal: p },
        ];
        let wire: std::collections::BTreeSet<&str> = reasons.iter().map(|r| wire_reason(*r).label()).collect();
        assert_eq!(wire.len(), reasons.len());
        for r in reasons {
            assert_eq!(wire_reason(r).label(), r.label(), "labels agree");
            assert_eq!(wire_reason(r).is_retryable(), r.is_retryable());
        }
    }

    #[test]
    fn fsync_signal_decays_without_samples() {
        let start = Instant::now();
        let probe = FsyncProbe::new(start);
        assert_eq!(probe.current(start), Duration::ZERO);
        probe.record(Duration::from_millis(400));
        let sampled = start + Duration::from_nanos(probe.last_sample_ns.load(Ordering::Relaxed));
        assert_eq!(probe.current(sampled), Duration::from_millis(400));
        assert_eq!(probe.current(sampled + FSYNC_DECAY_HALF_LIFE), Duration::from_millis(200));
        assert_eq!(probe.current(sampled + FSYNC_DECAY_HALF_LIFE * 100), Duration::ZERO);
        probe.record(Duration::from_millis(0));
        assert_eq!(probe.current(start + Duration::from_secs(3600)), Duration::ZERO);
    }

    #[test]
    fn a_sample_after_a_quiet_spell_starts_from_the_decayed_average() {
        let start = Instant::now();
        let probe = FsyncProbe::new(start);
        probe.record_at(Duration::from_millis(400), start);
        // One second without a sample: 400 ms halves four times, to 25 ms.
        let later = start + Duration::from_secs(1);
        assert_eq!(probe.current(later), Duration::from_millis(25));
        // A fast fsync then must not bring the 400 ms back (seen in chaos runs: writes were
        // refused for fsync latency for seconds after a slow-disk fault was cleared).
        probe.record_at(Duration::from_millis(5), later);
        assert!(probe.current(later) < Duration::from_millis(30), "{:?}", probe.current(later));
    }

    #[test]
    fn attempts_unwrap_and_principal_labels_are_capped() {
        let request = quorate_api::ClientRequest { id: 1, session: None, body: Request::Status };
        let attempted =
            NodeMessage::RequestAttempt(quorate_api::AttemptedRequest { attempt: 3, request: request.clone() });
        assert_eq!(attempt_of(attempted), (3, NodeMessage::Request(request.clone())));
        assert_eq!(attempt_of(NodeMessage::Request(request.clone())), (0, NodeMessage::Request(request)));
        // Names beyond the cap fold into `other` (the set is process-wide: other tests may
        // have added names, so fill it first).
        for i in 0..PRINCIPAL_LABELS_MAX {
            let _ = principal_label(&format!("label-test-{i}"));
        }
        assert_eq!(principal_label("label-test-0"), "label-test-0", "a labelled name keeps its label");
        assert_eq!(principal_label("label-test-one-too-many"), PRINCIPAL_LABEL_OTHER);
        assert_eq!(PRINCIPAL_LABELS.lock().unwrap().len(), PRINCIPAL_LABELS_MAX);
    }

    #[test]
    fn outcomes() {
        assert_eq!(outcome_of(&Ok(Response::Done)), Outcome::Success);
        assert_eq!(outcome_of(&Err(ApiError::Timeout)), Outcome::Dropped);
        assert_eq!(outcome_of(&Err(ApiError::NotLeader { leader: None, addr: None })), Outcome::Cancelled);
        assert_eq!(outcome_of(&Err(ApiError::Refused("x".into()))), Outcome::Failed);
    }
}
