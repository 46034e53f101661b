//! The node's telemetry: it feeds the metrics named in `quorate_telemetry::names` from the
//! driver and the apply thread, runs the runtime invariant checks ([`crate::invariants`]),
//! traces each proposal (one span from the client request through commit and apply, with
//! term and index), and answers `/livez` and `/readyz`.
//!
//! Hooks: the driver calls [`Observer::observe`] after every `Ready` cycle (cheap getters
//! only), [`Observer::sample`] on its 500 ms sweep (full status: configuration, peers and
//! their round-trip times, certificate expiry, transport counters, the applied-hash exchange
//! of [`crate::hash_exchange`]), [`Observer::hash_samples_from`] when a peer's hash samples
//! arrive, [`Observer::proposed`] when the core accepts a
//! proposal and [`Observer::failed`] when it refuses one; the apply thread calls
//! [`NodeTelemetry::applying`] for each entry and [`NodeTelemetry::applied`] after each
//! batch. Everything is bounded: proposals tracked ([`TRACKED_MAX`]), commit instants
//! ([`COMMITS_MAX`]).

use crate::hash_exchange::{Compared, HASH_EXCHANGE_CLUSTER_VERSION, HashExchange};
use crate::invariants::{AppliedHasher, Invariants, Observed, Violation};
use quorate_core::{CampaignReason, Raft, Role};
use quorate_log::{Entry, EntryId, LogIndex, NodeId};
use quorate_storage::RocksStore;
use quorate_telemetry::http::{Probe, Probes};
use quorate_telemetry::names as n;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

/// Proposals followed from acceptance to apply (the oldest are dropped beyond it).
pub(crate) const TRACKED_MAX: usize = 65_536;
/// Commit instants remembered for the commit-to-apply histogram.
pub(crate) const COMMITS_MAX: usize = 4_096;
/// `/livez` fails when the driver loop has not turned for this long.
pub(crate) const LIVE_STALL_MAX: Duration = Duration::from_secs(5);
/// `/livez` fails when storage has not completed a pending write for this long.
pub(crate) const STORAGE_STALL_MAX: Duration = Duration::from_secs(10);
/// `/readyz` fails when applied lags commit by more than this many entries.
pub(crate) const READY_APPLY_LAG_MAX: u64 = 10_000;
/// A sweep tick later than this after the previous one is a clock jump (or a process pause).
const CLOCK_JUMP_MIN: Duration = Duration::from_secs(5);
/// Wall clock and monotonic clock disagreeing by more than this over one sweep is a wall
/// clock jump.
const WALL_SKEW_MAX: Duration = Duration::from_secs(1);

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Follower => "follower",
        Role::PreCandidate => "pre_candidate",
        Role::Candidate => "candidate",
        Role::Leader => "leader",
        _ => "other",
    }
}

const ROLES: [Role; 4] = [Role::Follower, Role::PreCandidate, Role::Candidate, Role::Leader];

/// The `reason` label of an election, from the core's own record of why it campaigned.
fn campaign_reason(r: CampaignReason) -> &'static str {
    match r {
        CampaignReason::ElectionTimeout => n::election::ELECTION_TIMEOUT,
        CampaignReason::LeaderTimeout => n::election::LEADER_TIMEOUT,
        CampaignReason::Transfer => n::election::TRANSFER,
        CampaignReason::Forced => n::election::FORCED,
        CampaignReason::PreVotePassed => n::election::PRE_VOTE_PASSED,
        _ => "other",
    }
}

/// State shared by the driver, the apply thread and the HTTP endpoint.
#[derive(Debug)]
pub(crate) struct NodeTelemetry {
    epoch: Instant,
    /// Milliseconds since `epoch` when the driver loop last turned.
    driver_tick_ms: AtomicU64,
    /// Milliseconds since `epoch` when storage started to owe a write (0: it owes none).
    storage_owing_since_ms: AtomicU64,
    has_leader: AtomicBool,
    role_leader: AtomicBool,
    commit: AtomicU64,
    applied: AtomicU64,
    disk_ok: AtomicBool,
    stopped: AtomicBool,
    /// Commit instants (index, when) for the commit-to-apply histogram.
    commits: Mutex<VecDeque<(u64, Instant)>>,
    /// Proposal spans waiting for apply.
    spans: Mutex<VecDeque<(u64, tracing::Span)>>,
    hasher: Mutex<AppliedHasher>,
}

impl NodeTelemetry {
    pub(crate) fn new(applied: LogIndex) -> Arc<NodeTelemetry> {
        Arc::new(NodeTelemetry {
            epoch: Instant::now(),
            driver_tick_ms: AtomicU64::new(0),
            storage_owing_since_ms: AtomicU64::new(0),
            has_leader: AtomicBool::new(false),
            role_leader: AtomicBool::new(false),
            commit: AtomicU64::new(applied.0),
            applied: AtomicU64::new(applied.0),
            disk_ok: AtomicBool::new(true),
            stopped: AtomicBool::new(false),
            commits: Mutex::new(VecDeque::new()),
            spans: Mutex::new(VecDeque::new()),
            hasher: Mutex::new(AppliedHasher::default()),
        })
    }

    fn ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The node is stopping: probes fail from now on.
    pub(crate) fn stopped(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// Apply thread: one entry is about to be applied (in index order).
    pub(crate) fn applying(&self, e: &Entry) {
        let sample = self.hasher.lock().unwrap_or_else(PoisonError::into_inner).entry(e);
        if let Some((index, hash)) = sample {
            tracing::debug!(index, hash = format_args!("{hash:012x}"), "applied-entries hash sample");
        }
    }

    /// The applied-entries hash samples kept (oldest first).
    pub(crate) fn hash_samples(&self) -> Vec<(u64, u64)> {
        self.hasher.lock().unwrap_or_else(PoisonError::into_inner).samples().copied().collect()
    }

    /// The state machine was replaced by a snapshot's: the entries before it were not seen
    /// here, so the hash window restarts.
    pub(crate) fn hashes_restart(&self) {
        self.hasher.lock().unwrap_or_else(PoisonError::into_inner).reset();
    }

    /// Apply thread: a snapshot was installed at `index` (the hash window restarts).
    pub(crate) fn installed(&self, index: LogIndex, took: Duration) {
        self.hashes_restart();
        metrics::counter!(n::SNAPSHOTS_INSTALLED_TOTAL).increment(1);
        metrics::histogram!(n::SNAPSHOT_INSTALL_SECONDS).record(took.as_secs_f64());
        self.applied(index);
    }

    /// Apply thread: a snapshot was taken locally.
    pub(crate) fn snapshot_taken(&self, bytes: u64, took: Duration) {
        metrics::counter!(n::SNAPSHOTS_TAKEN_TOTAL).increment(1);
        metrics::counter!(n::SNAPSHOT_TAKEN_BYTES_TOTAL).increment(bytes);
        metrics::histogram!(n::SNAPSHOT_TAKE_SECONDS).record(took.as_secs_f64());
    }

    /// The applied index the node starts from (after a snapshot restored at start): the
    /// baseline of `quorate_proposals_applied_total`, which counts only what applies after.
    pub(crate) fn applied_at_start(&self, index: LogIndex) {
        self.applied.fetch_max(index.0, Ordering::Relaxed);
        metrics::gauge!(n::APPLIED_INDEX).set(self.applied.load(Ordering::Relaxed) as f64);
    }

    /// Apply thread: everything up to `index` is applied.
    pub(crate) fn applied(&self, index: LogIndex) {
        let index = index.0;
        let before = self.applied.fetch_max(index, Ordering::Relaxed);
        if index > before {
            metrics::counter!(n::PROPOSALS_APPLIED_TOTAL).increment(index - before);
            metrics::gauge!(n::APPLIED_INDEX).set(index as f64);
        }
        let now = Instant::now();
        {
            let mut c = self.commits.lock().unwrap_or_else(PoisonError::into_inner);
            while c.front().is_some_and(|(i, _)| *i <= index) {
                if let Some((_, at)) = c.pop_front() {
                    metrics::histogram!(n::COMMIT_APPLY_SECONDS).record(now.duration_since(at).as_secs_f64());
                }
            }
        }
        let mut s = self.spans.lock().unwrap_or_else(PoisonError::into_inner);
        while s.front().is_some_and(|(i, _)| *i <= index) {
            if let Some((i, span)) = s.pop_front() {
                span.in_scope(|| tracing::debug!(index = i, "proposal applied"));
            }
        }
    }

    fn committed(&self, index: u64, at: Instant, spans: Vec<(u64, tracing::Span)>) {
        {
            let mut c = self.commits.lock().unwrap_or_else(PoisonError::into_inner);
            if c.len() == COMMITS_MAX {
                c.pop_front();
            }
            c.push_back((index, at));
        }
        if !spans.is_empty() {
            let mut s = self.spans.lock().unwrap_or_else(PoisonError::into_inner);
            for x in spans {
                if s.len() == TRACKED_MAX {
                    s.pop_front();
                }
                s.push_back(x);
            }
        }
    }
}

impl Probes for NodeTelemetry {
    fn livez(&self) -> Probe {
        if self.stopped.load(Ordering::Relaxed) {
            return Probe::fail("node stopping");
        }
        let now = self.ms();
        let tick = self.driver_tick_ms.load(Ordering::Relaxed);
        if now.saturating_sub(tick) > LIVE_STALL_MAX.as_millis() as u64 {
            return Probe::fail(format!("driver loop has not turned for {} ms", now - tick));
        }
        let owing = self.storage_owing_since_ms.load(Ordering::Relaxed);
        if owing > 0 && now.saturating_sub(owing) > STORAGE_STALL_MAX.as_millis() as u64 {
            return Probe::fail(format!("storage has not completed a write for {} ms", now - owing));
        }
        Probe::ok("driver loop and storage responsive")
    }

    fn readyz(&self) -> Probe {
        if let Probe { ok: false, reason } = self.livez() {
            return Probe::fail(format!("not live: {reason}"));
        }
        if !self.has_leader.load(Ordering::Relaxed) {
            return Probe::fail("no leader known");
        }
        let (commit, applied) = (self.commit.load(Ordering::Relaxed), self.applied.load(Ordering::Relaxed));
        let lag = commit.saturating_sub(applied);
        if lag > READY_APPLY_LAG_MAX {
            return Probe::fail(format!("applied index {applied} lags commit index {commit} by {lag} entries"));
        }
        if !self.disk_ok.load(Ordering::Relaxed) {
            return Probe::fail("free disk space below the floor: refusing writes");
        }
        let role = if self.role_leader.load(Ordering::Relaxed) { "leader" } else { "follower" };
        Probe::ok(format!("{role}, leader known, applied {applied} of commit {commit}"))
    }

    fn before_scrape(&self) {
        let (commit, applied) = (self.commit.load(Ordering::Relaxed), self.applied.load(Ordering::Relaxed));
        metrics::gauge!(n::APPLIED_INDEX).set(applied as f64);
        metrics::gauge!(n::COMMIT_INDEX).set(commit as f64);
    }
}

/// The driver's side: what it saw last, the invariant checks, proposals in flight.
pub(crate) struct Observer {
    tel: Arc<NodeTelemetry>,
    inv: Invariants,
    halt: bool,
    term: u64,
    role: Option<Role>,
    leader: Option<NodeId>,
    commit: u64,
    /// Proposals accepted by this node as leader: index → (when, span).
    proposals: BTreeMap<u64, (Instant, tracing::Span)>,
    received: metrics::Counter,
    committed_total: metrics::Counter,
    commit_latency: metrics::Histogram,
    last_sweep: Option<(Instant, SystemTime)>,
    drops: BTreeMap<NodeId, u64>,
    refusals: u64,
    /// Certificate reloads refused, as last exported.
    tls_reload_failures: u64,
    /// Storage progress: (persisted index, when it last moved while behind).
    persisted: (u64, Instant),
    /// Trace one proposal in this many (by index).
    trace_every: u64,
    /// Campaigns of the core counted so far ([`Raft::last_campaign`]).
    campaigns: u64,
    /// The applied-hash exchange with the peers.
    hashes: HashExchange,
    /// A violation found outside [`Observer::observe`] that must stop the node (with halt on).
    halt_pending: Option<String>,
}

impl Observer {
    pub(crate) fn new(tel: Arc<NodeTelemetry>, term: u64, commit: u64, halt: bool) -> Observer {
        for reason in n::election::ALL {
            metrics::counter!(n::ELECTIONS_TOTAL, n::LABEL_REASON => *reason).increment(0);
        }
        for reason in n::peer_refused::ALL {
            metrics::counter!(n::PEER_MESSAGES_REFUSED_TOTAL, n::LABEL_REASON => *reason).increment(0);
        }
        metrics::counter!(n::TLS_RELOAD_FAILURES_TOTAL).increment(0);
        metrics::counter!(n::APPLY_BACKLOG_WAITS_TOTAL).increment(0);
        Observer {
            tel,
            inv: Invariants::new(term, commit),
            halt,
            term,
            role: None,
            leader: None,
            commit,
            proposals: BTreeMap::new(),
            received: metrics::counter!(n::PROPOSALS_RECEIVED_TOTAL),
            committed_total: metrics::counter!(n::PROPOSALS_COMMITTED_TOTAL),
            commit_latency: metrics::histogram!(n::PROPOSAL_COMMIT_SECONDS),
            last_sweep: None,
            drops: BTreeMap::new(),
            refusals: 0,
            tls_reload_failures: 0,
            persisted: (0, Instant::now()),
            trace_every: 1,
            campaigns: 0,
            hashes: HashExchange::default(),
            halt_pending: None,
        }
    }

    /// Counts matches and reports violations of the hash exchange.
    fn compared(&mut self, c: Compared) {
        for (peer, _) in c.matched {
            metrics::counter!(n::APPLIED_HASH_CHECKS_TOTAL, n::LABEL_PEER => peer.get().to_string()).increment(1);
        }
        for v in &c.violations {
            crate::invariants::report(v);
            if self.halt && self.halt_pending.is_none() {
                self.halt_pending = Some(format!(
                    "invariant violated (telemetry.halt_on_invariant_violation): {}: {}",
                    v.invariant, v.evidence
                ));
            }
        }
        self.inv.violations += c.violations.len() as u64;
    }

    /// A peer's applied-entries hash samples arrived: compared with this node's own.
    pub(crate) fn hash_samples_from(&mut self, me: NodeId, from: NodeId, samples: &quorate_api::HashSamples) {
        let own = self.tel.hash_samples();
        let c = self.hashes.received(me, from, samples, &own);
        self.compared(c);
    }

    /// The applied-hash exchange, on every sample: samples of peers that waited for this node
    /// to catch up are compared now, then this node's latest samples go to every other member
    /// of `config` when due (from cluster version [`HASH_EXCHANGE_CLUSTER_VERSION`]; a 0.1.0
    /// node would close the stream). `corrupt` is the failpoint that flips a bit of every
    /// sample sent.
    pub(crate) fn exchange_hashes(
        &mut self,
        me: NodeId,
        config: &quorate_log::Configuration,
        cluster_version: u32,
        corrupt: bool,
        transport: &quorate_transport::Transport<quorate_api::NodeMessage>,
    ) {
        let own = self.tel.hash_samples();
        let c = self.hashes.recheck(me, &own);
        self.compared(c);
        let Some(mut msg) = self.hashes.due(Instant::now(), &own) else { return };
        if cluster_version < HASH_EXCHANGE_CLUSTER_VERSION {
            return;
        }
        if corrupt {
            msg.samples.iter_mut().for_each(|s| s.hash ^= 1);
        }
        for peer in config.members().filter(|p| *p != me) {
            let m = quorate_api::NodeMessage::HashSamples(msg.clone());
            if let Err(e) = transport.try_send(peer, m) {
                tracing::trace!(peer = %peer, error = %e, "hash samples dropped");
            }
        }
    }

    /// Traces one proposal in `every` (by log index; at least 1).
    pub(crate) fn trace_every(&mut self, every: u64) {
        self.trace_every = every.max(1);
    }

    /// The core accepted a proposal at `at`: one span follows it to commit and apply.
    pub(crate) fn proposed(&mut self, at: EntryId) {
        self.received.increment(1);
        let span = if at.index.0.is_multiple_of(self.trace_every) {
            let span = tracing::info_span!("proposal", term = at.term.0, index = at.index.0);
            span.in_scope(|| tracing::debug!("proposal accepted"));
            span
        } else {
            tracing::Span::none()
        };
        if self.proposals.len() >= TRACKED_MAX {
            self.proposals.pop_first();
        }
        self.proposals.insert(at.index.0, (Instant::now(), span));
    }

    /// The core refused a proposal (or a client write failed before it), by reason.
    pub(crate) fn failed(&self, reason: &'static str) {
        self.received.increment(1);
        metrics::counter!(n::PROPOSALS_FAILED_TOTAL, n::LABEL_REASON => reason).increment(1);
    }

    /// After every `Ready` cycle: cheap getters, invariant checks, change-driven metrics.
    /// `Err` (with the evidence) when a check failed and the node is configured to halt.
    pub(crate) fn observe<S: quorate_log::LogStorage>(&mut self, raft: &Raft<S>) -> Result<(), String> {
        if let Some(e) = self.halt_pending.take() {
            return Err(e);
        }
        let tel = &*self.tel;
        tel.driver_tick_ms.store(tel.ms(), Ordering::Relaxed);
        if let Some((seq, why)) = raft.last_campaign()
            && seq > self.campaigns
        {
            // Between two observations the core may start more than one campaign (rarely):
            // they are counted under the latest one's reason.
            metrics::counter!(n::ELECTIONS_TOTAL, n::LABEL_REASON => campaign_reason(why))
                .increment(seq - self.campaigns);
            self.campaigns = seq;
        }
        let (term, role, leader, commit) = (raft.term().0, raft.role(), raft.leader(), raft.commit_index().0);
        let applied = tel.applied.load(Ordering::Relaxed);
        let o = Observed { term, commit, applied, last_index: raft.last_index().0, is_leader: role == Role::Leader };
        let violations: Vec<Violation> = self.inv.check(o);

        if term != self.term {
            metrics::gauge!(n::TERM).set(term as f64);
            if term > self.term {
                // Proposals of older terms: whether they commit is up to the new leader.
                for (_, (_, span)) in std::mem::take(&mut self.proposals) {
                    span.in_scope(|| tracing::debug!(new_term = term, "leadership changed"));
                    metrics::counter!(n::PROPOSALS_FAILED_TOTAL, n::LABEL_REASON => "leadership_changed").increment(1);
                }
            }
            self.term = term;
        }
        if self.role != Some(role) {
            for r in ROLES {
                metrics::gauge!(n::ROLE, n::LABEL_ROLE => role_name(r)).set(if r == role { 1.0 } else { 0.0 });
            }
            tracing::debug!(role = role_name(role), term, "role changed");
            self.role = Some(role);
            tel.role_leader.store(role == Role::Leader, Ordering::Relaxed);
        }
        if self.leader != leader {
            metrics::counter!(n::LEADER_CHANGES_TOTAL).increment(1);
            metrics::gauge!(n::LEADER_ID).set(leader.map_or(0.0, |l| l.get() as f64));
            metrics::gauge!(n::HAS_LEADER).set(if leader.is_some() { 1.0 } else { 0.0 });
            tracing::info!(leader = ?leader.map(|l| l.get()), term, "leader changed");
            self.leader = leader;
            tel.has_leader.store(leader.is_some(), Ordering::Relaxed);
        }
        if commit > self.commit {
            let now = Instant::now();
            let mut spans = Vec::new();
            while let Some(e) = self.proposals.first_entry() {
                if *e.key() > commit {
                    break;
                }
                let (index, (at, span)) = e.remove_entry();
                self.committed_total.increment(1);
                self.commit_latency.record(now.duration_since(at).as_secs_f64());
                span.in_scope(|| tracing::debug!(commit, "proposal committed"));
                spans.push((index, span));
            }
            tel.committed(commit, now, spans);
            metrics::gauge!(n::COMMIT_INDEX).set(commit as f64);
            tel.commit.store(commit, Ordering::Relaxed);
            self.commit = commit;
        }
        if self.halt && !violations.is_empty() {
            let v: Vec<String> = violations.iter().map(|v| format!("{}: {}", v.invariant, v.evidence)).collect();
            return Err(format!("invariant violated (telemetry.halt_on_invariant_violation): {}", v.join("; ")));
        }
        Ok(())
    }

    /// On the driver's sweep tick: the full status, transport counters, clocks, storage,
    /// resources. `corrupt_hashes` is the failpoint that flips a bit of every applied-hash
    /// sample sent.
    pub(crate) fn sample(
        &mut self,
        raft: &Raft<Arc<RocksStore>>,
        shared: &crate::server::Shared,
        resources: Resources,
        corrupt_hashes: bool,
    ) {
        let tel = Arc::clone(&self.tel);
        tel.disk_ok.store(resources.disk_ok, Ordering::Relaxed);
        resources.export(&shared.store);
        let s = raft.status();
        metrics::gauge!(n::LAST_LOG_INDEX).set(s.last_index.0 as f64);
        metrics::gauge!(n::SNAPSHOT_INDEX).set(s.snapshot_index.0 as f64);
        metrics::gauge!(n::CONFIG_VERSION_INDEX).set(s.config_version.0 as f64);
        metrics::gauge!(n::CONFIG_JOINT).set(if s.config.is_joint() { 1.0 } else { 0.0 });
        metrics::gauge!(n::CONFIG_VOTERS_COUNT).set(s.config.voters.len() as f64);
        metrics::gauge!(n::CONFIG_LEARNERS_COUNT).set(s.config.learners.len() as f64);
        metrics::gauge!(n::TERM).set(s.term.0 as f64);
        metrics::gauge!(n::HAS_LEADER).set(if s.leader.is_some() { 1.0 } else { 0.0 });
        metrics::gauge!(n::LEADER_ID).set(s.leader.map_or(0.0, |l| l.get() as f64));
        metrics::gauge!(n::RECOVERING).set(if raft.recovering().is_some() { 1.0 } else { 0.0 });
        for (peer, p) in &s.peers {
            if *peer == s.id {
                continue;
            }
            let label = peer.get().to_string();
            metrics::gauge!(n::PEER_MATCH_INDEX, n::LABEL_PEER => label.clone()).set(p.match_index.0 as f64);
            metrics::gauge!(n::PEER_INFLIGHT_MESSAGES, n::LABEL_PEER => label.clone()).set(p.inflight_msgs as f64);
            metrics::gauge!(n::PEER_INFLIGHT_BYTES, n::LABEL_PEER => label).set(p.inflight_bytes as f64);
        }
        for peer in s.config.members() {
            if peer == s.id {
                continue;
            }
            if let Some(st) = shared.transport.peer_stats(peer) {
                // The last value stays while the peer is disconnected.
                if let Some(rtt) = st.rtt {
                    metrics::gauge!(n::PEER_RTT_SECONDS, n::LABEL_PEER => peer.get().to_string())
                        .set(rtt.as_secs_f64());
                }
                let before = self.drops.insert(peer, st.dropped).unwrap_or(0);
                if st.dropped > before {
                    metrics::counter!(n::PEER_SEND_DROPS_TOTAL, n::LABEL_PEER => peer.get().to_string())
                        .increment(st.dropped - before);
                }
            }
        }
        let refusals = shared.transport.refusals();
        if refusals > self.refusals {
            metrics::counter!(n::AUTH_REFUSALS_TOTAL, n::LABEL_REASON => "transport_handshake")
                .increment(refusals - self.refusals);
            self.refusals = refusals;
        }
        let cluster_version = crate::versions::cluster_version(shared);
        metrics::gauge!(n::CLUSTER_VERSION).set(f64::from(cluster_version));
        metrics::gauge!(n::WATCHES_IN_FLIGHT).set(shared.watches.in_flight() as f64);
        if let Ok(Some(h)) = crate::sm::history_state(&*shared.store) {
            // The event index (watches) is part of the history's size.
            let ev = crate::sm::events_state(&*shared.store).ok().flatten();
            let (ev_entries, ev_bytes) = ev.map_or((0, 0), |e| (e.entries, e.bytes));
            metrics::gauge!(n::HISTORY_ENTRIES).set(h.entries.saturating_add(ev_entries) as f64);
            metrics::gauge!(n::HISTORY_BYTES).set(h.bytes.saturating_add(ev_bytes) as f64);
            metrics::gauge!(n::HISTORY_COMPACTED_REVISION).set(h.compacted as f64);
        }
        self.exchange_hashes(s.id, &s.config, cluster_version, corrupt_hashes, &shared.transport);
        let credentials = shared.transport.credentials();
        metrics::gauge!(n::CERT_EXPIRY_SECONDS).set(credentials.seconds_until_earliest_expiry() as f64);
        let failures = credentials.reload_failures();
        if failures > self.tls_reload_failures {
            metrics::counter!(n::TLS_RELOAD_FAILURES_TOTAL).increment(failures - self.tls_reload_failures);
            self.tls_reload_failures = failures;
        }
        metrics::gauge!(n::TRANSPORT_CONNECTIONS).set(shared.transport.connections() as f64);

        // Storage: does it owe a write (persisted behind the log) without progress?
        let now = Instant::now();
        let p = s.persisted_index.0;
        if p >= s.last_index.0 {
            tel.storage_owing_since_ms.store(0, Ordering::Relaxed);
            self.persisted = (p, now);
        } else if p != self.persisted.0 || tel.storage_owing_since_ms.load(Ordering::Relaxed) == 0 {
            self.persisted = (p, now);
            tel.storage_owing_since_ms.store(tel.ms().max(1), Ordering::Relaxed);
        }

        // Clocks: the sweep ticks every 500 ms; a much later tick is a jump (or a pause),
        // no movement at all a stall; the wall clock drifting from the monotonic one by more
        // than a second within one tick is a wall-clock jump.
        let wall = SystemTime::now();
        if let Some((mono0, wall0)) = self.last_sweep {
            let mono = now.duration_since(mono0);
            let kind = if mono.is_zero() {
                Some("monotonic_stall")
            } else if mono > CLOCK_JUMP_MIN {
                Some("monotonic_jump")
            } else {
                match wall.duration_since(wall0) {
                    Ok(w) if w.abs_diff(mono) > WALL_SKEW_MAX => Some("wall_jump"),
                    Err(_) => Some("wall_jump"),
                    Ok(_) => None,
                }
            };
            if let Some(kind) = kind {
                metrics::counter!(n::CLOCK_DISCONTINUITIES_TOTAL, n::LABEL_KIND => kind).increment(1);
                tracing::warn!(kind, monotonic_ms = mono.as_millis() as u64, "clock discontinuity");
            }
        }
        self.last_sweep = Some((now, wall));
    }
}

/// What the driver's sweep knows of the node's resources, for their gauges.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Resources {
    /// Free space is above the floor for client writes (the last check).
    pub(crate) disk_ok: bool,
    /// The floor for client writes, bytes (0: none).
    pub(crate) floor_bytes: u64,
    /// Admission's concurrency limit and the requests it holds admitted.
    pub(crate) admission: (u32, u64),
    /// The fair queue before dispatch: requests, bytes and principals waiting.
    pub(crate) waiting: (usize, u64, usize),
}

impl Resources {
    /// Sets the resource gauges: DB size, free disk, floor, refusing writes, admission, the
    /// queue before dispatch.
    /// A size that cannot be read leaves its gauge at its last value.
    pub(crate) fn export(&self, store: &RocksStore) {
        if let Ok(bytes) = store.live_files_bytes() {
            metrics::gauge!(n::DB_BYTES).set(bytes as f64);
        }
        if let Ok(free) = store.free_space_bytes() {
            metrics::gauge!(n::DISK_FREE_BYTES).set(free as f64);
        }
        metrics::gauge!(n::DISK_FLOOR_BYTES).set(self.floor_bytes as f64);
        metrics::gauge!(n::REFUSING_WRITES).set(if self.disk_ok { 0.0 } else { 1.0 });
        metrics::gauge!(n::ADMISSION_CONCURRENCY_LIMIT).set(f64::from(self.admission.0));
        metrics::gauge!(n::ADMISSION_IN_FLIGHT).set(self.admission.1 as f64);
        metrics::gauge!(n::REQUESTS_WAITING).set(self.waiting.0 as f64);
        metrics::gauge!(n::REQUESTS_WAITING_BYTES).set(self.waiting.1 as f64);
        metrics::gauge!(n::REQUESTS_WAITING_PRINCIPALS).set(self.waiting.2 as f64);
    }
}

/// Why a proposal was refused, as a label value.
pub(crate) fn propose_error_reason(e: &quorate_core::ProposeError) -> &'static str {
    use quorate_core::ProposeError as E;
    match e {
        E::NotLeader { .. } => "not_leader",
        E::UncommittedLimit { .. } => "uncommitted_limit",
        E::TooLarge { .. } => "too_large",
        E::TransferInProgress(_) => "transfer_in_progress",
        E::Halted(_) => "halted",
        _ => "other",
    }
}

/// The metrics and health endpoint while the node runs: aborted (and the probes fail) when
/// dropped.
pub(crate) struct Endpoint {
    task: Option<tokio::task::JoinHandle<()>>,
    tel: Arc<NodeTelemetry>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.tel.stopped();
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Installs the process's metrics registry and serves `/metrics`, `/livez` and `/readyz` on
/// `addr` when configured (nothing is recorded or served otherwise). Call before the
/// [`Observer`] is made: it caches handles from the registry.
pub(crate) async fn serve(addr: Option<std::net::SocketAddr>, tel: &Arc<NodeTelemetry>) -> Result<Endpoint, String> {
    let Some(addr) = addr else { return Ok(Endpoint { task: None, tel: tel.clone() }) };
    let registry = quorate_telemetry::Metrics::global().map_err(|e| e.to_string())?;
    metrics::gauge!(n::BUILD_INFO, n::LABEL_VERSION => crate::VERSION).set(1.0);
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("cannot listen for metrics on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(addr = %local, "serving /metrics, /livez and /readyz");
    let task = tokio::spawn(quorate_telemetry::http::serve(
        listener,
        registry,
        tel.clone(),
        quorate_telemetry::http::HttpLimits::default(),
    ));
    Ok(Endpoint { task: Some(task), tel: tel.clone() })
}

/// Installs the tracing subscriber the configuration asks for (format, filter, OTLP
/// export). A subscriber installed already (tests, embedding) is kept.
pub(crate) fn init_tracing(config: &crate::config::NodeConfig) -> Result<quorate_telemetry::TracingGuard, String> {
    use quorate_telemetry::{LogFormat, OtlpConfig, TelemetryError, TracingConfig};
    let t = &config.telemetry;
    let format: LogFormat = t.log_format.parse()?;
    // One `service.name` for every node (`quorate` unless OTEL_SERVICE_NAME says otherwise),
    // the node id as `service.instance.id`; the standard OTEL_* variables override the
    // configured endpoint (docs/operations.md, "Logs, traces and audit").
    let otlp = OtlpConfig::from_env(&t.otlp_endpoint, "", |k| std::env::var(k).ok()).map_err(|e| e.to_string())?.map(
        |mut o| {
            o.service_instance_id = Some(config.id.to_string());
            o.service_version = Some(crate::VERSION.to_string());
            if !o.resource_attributes.iter().any(|(k, _)| k == "quorate.cluster") {
                o.resource_attributes.push(("quorate.cluster".into(), config.cluster.clone()));
            }
            o
        },
    );
    let filter = (!t.log_filter.is_empty()).then(|| t.log_filter.clone());
    match quorate_telemetry::init_tracing(&TracingConfig { format, filter, otlp }) {
        Ok(g) => Ok(g),
        Err(TelemetryError::SubscriberInstalled) => Ok(quorate_telemetry::TracingGuard::default()),
        Err(e) => Err(e.to_string()),
    }
}

/// A client or peer was refused by authentication or authorisation.
pub(crate) fn refused(reason: &'static str) {
    metrics::counter!(n::AUTH_REFUSALS_TOTAL, n::LABEL_REASON => reason).increment(1);
}

/// A client request is answered: timeouts are counted per principal.
pub(crate) fn answered(principal: &str, result: &Result<quorate_api::Response, quorate_api::ApiError>) {
    if matches!(result, Err(quorate_api::ApiError::Timeout)) {
        let label = crate::admission::principal_label(principal);
        metrics::counter!(n::CLIENT_TIMEOUTS_TOTAL, n::LABEL_PRINCIPAL => label).increment(1);
    }
}

/// An answer was not taken by the client within the response write timeout.
pub(crate) fn response_write_timed_out(principal: &str) {
    let label = crate::admission::principal_label(principal);
    metrics::counter!(n::RESPONSE_WRITE_TIMEOUTS_TOTAL, n::LABEL_PRINCIPAL => label).increment(1);
}

/// A writing transaction was refused before it was proposed: its results cannot fit.
pub(crate) fn txn_refused_unproposed(principal: &str) {
    let label = crate::admission::principal_label(principal);
    metrics::counter!(n::TXNS_REFUSED_UNPROPOSED_TOTAL, n::LABEL_PRINCIPAL => label).increment(1);
}

/// A session write was answered from the session table before anything was proposed (a
/// replay of an applied sequence number).
pub(crate) fn replay_answered(principal: &str) {
    let label = crate::admission::principal_label(principal);
    metrics::counter!(n::SESSION_REPLAYS_ANSWERED_TOTAL, n::LABEL_PRINCIPAL => label).increment(1);
}

/// A snapshot stream to a follower completed.
pub(crate) fn snapshot_sent() {
    metrics::counter!(n::SNAPSHOTS_SENT_TOTAL).increment(1);
}

/// What a resumable snapshot transfer counted since `before` (`now` counts on from it).
pub(crate) fn snapshot_transfer(
    before: &quorate_runtime::transfer::TransferStats,
    now: &quorate_runtime::transfer::TransferStats,
) {
    let add = |name: &'static str, b: u64, a: u64| {
        if a > b {
            metrics::counter!(name).increment(a - b);
        }
    };
    add(n::SNAPSHOT_TRANSFERS_STARTED_TOTAL, before.transfers_started, now.transfers_started);
    add(n::SNAPSHOT_TRANSFERS_RESUMED_TOTAL, before.transfers_resumed, now.transfers_resumed);
    add(n::SNAPSHOT_TRANSFERS_FAILED_TOTAL, before.transfers_failed, now.transfers_failed);
    add(n::SNAPSHOT_SENT_BYTES_TOTAL, before.bytes_sent, now.bytes_sent);
    add(n::SNAPSHOT_RESENT_BYTES_TOTAL, before.bytes_resent, now.bytes_resent);
    add(n::SNAPSHOT_PIECES_STAGED_TOTAL, before.chunks_staged, now.chunks_staged);
    add(n::SNAPSHOT_PIECES_REFUSED_TOTAL, before.chunks_refused, now.chunks_refused);
}

/// A snapshot file of `bytes` was streamed to a follower in `took`.
pub(crate) fn snapshot_streamed(bytes: u64, took: Duration) {
    metrics::counter!(n::SNAPSHOT_SENT_BYTES_TOTAL).increment(bytes);
    metrics::histogram!(n::SNAPSHOT_SEND_SECONDS).record(took.as_secs_f64());
}

/// Times one durable write from submission to completion: the fsync histogram (batches that
/// sync) and the compaction histogram (batches that drop a log prefix after a snapshot; the
/// compaction is written in the same batch, so its duration is the batch's).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FsyncTimer {
    start: Instant,
    synced: bool,
    compacts: bool,
}

impl FsyncTimer {
    pub(crate) fn start(synced: bool, compacts: bool) -> FsyncTimer {
        FsyncTimer { start: Instant::now(), synced, compacts }
    }

    /// Called on the committer's thread when the batch is durable.
    pub(crate) fn done(self) {
        FsyncTimer::record(self.start.elapsed(), self.synced, self.compacts);
    }

    /// A batch that took `took` from its submission until durable.
    pub(crate) fn record(took: Duration, synced: bool, compacts: bool) {
        let took = took.as_secs_f64();
        if synced {
            metrics::histogram!(n::FSYNC_SECONDS).record(took);
        }
        if compacts {
            metrics::histogram!(n::COMPACTION_SECONDS).record(took);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invariants::HASH_WINDOW_ENTRIES;
    use quorate_api::{HashSample, HashSamples};
    use quorate_log::{Data, EntryPayload, Term};

    fn id(n: u64) -> NodeId {
        NodeId::new(n).expect("non-zero")
    }

    #[test]
    fn a_differing_peer_sample_is_a_cross_replica_violation_and_halts_when_configured() {
        let registry = quorate_telemetry::Metrics::new();
        metrics::with_local_recorder(&registry, || {
            let tel = NodeTelemetry::new(LogIndex(0));
            for i in 1..=HASH_WINDOW_ENTRIES {
                let payload = EntryPayload::Command(Data::copy_from(format!("cmd-{i}").as_bytes()));
                tel.applying(&Entry { term: Term(1), index: LogIndex(i), payload });
            }
            let own = tel.hash_samples();
            assert_eq!(own.len(), 1, "one complete window");
            let (index, hash) = own[0];
            let mut obs = Observer::new(tel.clone(), 1, 0, true);

            // Peer 2 applied the same entries: a match, counted, no violation.
            obs.hash_samples_from(id(1), id(2), &HashSamples { samples: vec![HashSample { index, hash }] });
            assert!(obs.halt_pending.is_none());
            // Peer 3 applied something else in that window: a violation, and (halt on) a halt.
            let other = HashSamples { samples: vec![HashSample { index, hash: hash ^ 1 }] };
            obs.hash_samples_from(id(1), id(3), &other);
            let text = registry.render();
            assert!(text.contains(&format!("{}{{peer=\"2\"}} 1", n::APPLIED_HASH_CHECKS_TOTAL)), "{text}");
            let violations =
                format!("{}{{invariant=\"{}\"}} 1", n::INVARIANT_VIOLATIONS_TOTAL, n::invariant::CROSS_REPLICA_HASH);
            assert!(text.contains(&violations), "{text}");
            let halt = obs.halt_pending.as_deref().expect("halt requested");
            assert!(halt.contains("cross_replica_hash") && halt.contains("peer 3"), "{halt}");
        });
    }
}
