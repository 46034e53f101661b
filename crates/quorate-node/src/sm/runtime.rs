//! The key-value state machine as a [`quorate_runtime::StateMachine`]: the first durable
//! state machine of the runtime (issue 19, the step toward the node's driver being replaced
//! by the runtime's replica loop; the node's own driver and apply thread do not use it yet).
//!
//! It **owns its log format** ([`StateMachine::ENVELOPE`] `= false`): every entry holds a
//! `quorate_api` command exactly as the node's own driver writes it (0.1.0's included), and
//! exactly-once is the key-value state's own session table (principal-bound sessions with
//! random ids, `S` keys), not the runtime's — whose sessions are off for it. So a log written
//! by the node's driver applies under the runtime, and the other way round.
//!
//! [`KvMachine`] keeps its state where the node keeps it — the `sm` column family of the
//! [`RocksStore`] that also holds the log (the runtime's `RocksLog` over the same store) — and
//! applies commands with the same functions as the node's apply thread ([`super::apply_entry`]
//! on an [`Overlay`]), so both give the same results on the same log:
//!
//! * **apply** layers each command's writes over the store in memory (`pending`); later
//!   commands read through that layer; nothing is written;
//! * **commit** writes the pending writes and the applied index in one atomic
//!   [`RocksStore::apply`] (the runtime has no records for it: its sessions are off). One command per apply call ([`StateMachine::APPLY_COMMANDS_MAX`])
//!   and [`StateMachine::commit_due`] at [`COMMIT_OPS`] writes or [`COMMIT_BYTES`] bytes keep
//!   that write within the store's [`APPLY_OPS_MAX`];
//! * **restore** goes through the store's install marker ([`RocksStore::begin_sm_install`],
//!   install batches) and its commit finishes it ([`RocksStore::finish_sm_install`]); a crash
//!   in between leaves the marker, which [`StateMachine::interrupted_restore`] reports, and
//!   the runtime restores again;
//! * a store failure while applying is not an output: [`StateMachine::failure`] reports it and
//!   the runtime halts before answering.

use super::{ApplyOutcome, Overlay, SCAN_READ_BYTES_MAX, SmError, SmRead, apply_entry};
use quorate_api::{ApiError, Response};
use quorate_log::{LogIndex, NodeId};
use quorate_runtime::{Committed, RestoreError, RuntimeWrites, StateMachine};
use quorate_storage::{APPLY_OPS_MAX, INSTALL_BATCH_BYTES_MAX, RocksStore, SmOp, SmPair};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

/// Pending writes at which a commit is due: with one command per apply call (at most
/// [`super::COMMAND_WRITES_MAX`] writes), a commit stays within [`APPLY_OPS_MAX`].
pub(crate) const COMMIT_OPS: usize = APPLY_OPS_MAX / 2;
/// Bytes of pending writes at which a commit is due.
pub(crate) const COMMIT_BYTES: usize = 32 << 20;
/// Commands applied since the last commit at which one is due (a bound on one commit's work
/// even when every command's writes fold into keys already pending).
pub(crate) const COMMIT_COMMANDS: usize = 4096;
/// State-machine pairs per write of a restore (the store takes at most [`APPLY_OPS_MAX`]).
const RESTORE_BATCH_PAIRS: usize = APPLY_OPS_MAX / 2;
/// Bytes per write of a restore.
const RESTORE_BATCH_BYTES: usize = INSTALL_BATCH_BYTES_MAX / 2;
/// Pairs read from the store at once when merging it with the pending writes.
const MERGE_PAGE_PAIRS: usize = 1024;

const _: () = assert!(COMMIT_OPS + super::COMMAND_WRITES_MAX + 64 < APPLY_OPS_MAX);

/// What applying one command answers: the client's result and what the node does about it
/// (the same as [`ApplyOutcome`], serializable: the runtime caches it for retries).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub(crate) struct KvOutput {
    /// The client's result.
    pub(crate) result: Result<Response, ApiError>,
    /// A member address the command recorded.
    pub(crate) member_addr: Option<(NodeId, String)>,
    /// The cluster version the command raised the cluster to.
    pub(crate) cluster_version: Option<u32>,
}

impl From<ApplyOutcome> for KvOutput {
    fn from(o: ApplyOutcome) -> KvOutput {
        KvOutput { result: o.result, member_addr: o.member_addr, cluster_version: o.cluster_version }
    }
}

/// The key-value state machine on a [`RocksStore`], for the runtime (see the module's docs).
#[derive(Debug)]
pub(crate) struct KvMachine {
    store: Arc<RocksStore>,
    /// Writes applied and not yet committed (`None`: deleted).
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    pending_bytes: usize,
    commands_since_commit: usize,
    /// A store failure met while applying: the node halts.
    failure: Option<String>,
    /// The last index applied (committed to the store or not).
    last_applied: LogIndex,
    /// What the node learns from applying, published at every commit.
    effects: Arc<KvApplied>,
    /// What was applied since the last commit and is published with it.
    unpublished: Unpublished,
    /// Folds every committed entry into the applied-entries hash (the node's; tests: none).
    telemetry: Option<Arc<crate::telemetry::NodeTelemetry>>,
}

/// What commands applied since the last commit told the node (published once written).
#[derive(Debug, Default)]
struct Unpublished {
    /// The highest cluster version raised to.
    version: Option<u32>,
    /// Member addresses recorded.
    addrs: Vec<(NodeId, String)>,
    /// Changes to the lease table (for the leader's clock).
    leases: Vec<super::leases::LeaseChange>,
}

/// What a node running the key-value state machine learns as it applies, published at every
/// commit (what is published is in the store): the cluster version, the revision and log time,
/// and the member addresses that commands recorded (for the node to dial).
#[derive(Debug)]
pub(crate) struct KvApplied {
    /// The applied cluster version (never lowered).
    pub(crate) cluster_version: crate::versions::AppliedClusterVersion,
    /// The applied global revision.
    pub(crate) revision: std::sync::atomic::AtomicU64,
    /// The same, for watches waiting on it ([`crate::watches`]).
    pub(crate) revisions: tokio::sync::watch::Sender<u64>,
    /// The log time of the last applied command (the leader's clock for new commands never
    /// goes below it).
    pub(crate) log_time_ms: std::sync::atomic::AtomicU64,
    /// Member addresses recorded since the node last took them.
    addrs: std::sync::Mutex<Vec<(NodeId, String)>>,
    /// Woken when `addrs` gets one.
    pub(crate) addrs_changed: tokio::sync::Notify,
    /// Lease deadlines on the leader's clock ([`crate::leases`]), told what the store holds.
    pub(crate) leases: crate::leases::LeaseClock,
}

impl KvApplied {
    /// As the state machine in `store` holds it.
    pub(crate) fn of(store: &RocksStore) -> Result<KvApplied, SmError> {
        Ok(KvApplied {
            cluster_version: crate::versions::AppliedClusterVersion::new(super::cluster_version(store)?),
            revision: super::revision(store)?.into(),
            revisions: tokio::sync::watch::Sender::new(super::revision(store)?),
            log_time_ms: super::log_time_ms(store)?.into(),
            addrs: std::sync::Mutex::default(),
            addrs_changed: tokio::sync::Notify::new(),
            leases: crate::leases::LeaseClock::default(),
        })
    }

    /// Everything again from `store` (after a start that may have restored a snapshot): the
    /// cluster version (never lowered), revision, log time, and every member address.
    pub(crate) fn refresh(&self, store: &RocksStore) -> Result<(), SmError> {
        self.cluster_version.refresh(store)?;
        self.publish(store, None)?;
        self.publish_addrs(super::member_addrs(store)?.into_iter().collect());
        Ok(())
    }

    /// The member addresses recorded since the last call.
    pub(crate) fn take_addrs(&self) -> Vec<(NodeId, String)> {
        std::mem::take(&mut *self.addrs.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn publish_addrs(&self, addrs: Vec<(NodeId, String)>) {
        if addrs.is_empty() {
            return;
        }
        self.addrs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(addrs);
        self.addrs_changed.notify_one();
    }

    /// After a commit: the store's revision and log time; a cluster version raised to 2 or
    /// more stamps the store's format first (older binaries then refuse the data).
    fn publish(&self, store: &RocksStore, version: Option<u32>) -> Result<(), SmError> {
        if let Some(v) = version {
            crate::versions::sync_format(store)?;
            self.cluster_version.raise(v);
        }
        use std::sync::atomic::Ordering;
        let revision = super::revision(store)?;
        self.revision.store(revision, Ordering::Release);
        // Watchers wake only when it moved.
        self.revisions.send_if_modified(|r| std::mem::replace(r, revision) != revision);
        self.log_time_ms.fetch_max(super::log_time_ms(store)?, Ordering::AcqRel);
        Ok(())
    }
}

impl KvMachine {
    /// The state machine kept in `store`'s `sm` column family (as it is: a new store's is
    /// empty, a node's holds its state and applied index).
    #[cfg(test)]
    pub(crate) fn new(store: Arc<RocksStore>) -> KvMachine {
        let effects = match KvApplied::of(&store) {
            Ok(e) => e,
            // A damaged record: the node's start reads the same and refuses; a test's empty
            // store never gets here.
            Err(_) => KvApplied {
                cluster_version: crate::versions::AppliedClusterVersion::new(quorate_api::CLUSTER_VERSION_INITIAL),
                revision: 0.into(),
                revisions: tokio::sync::watch::Sender::new(0),
                log_time_ms: 0.into(),
                addrs: std::sync::Mutex::default(),
                addrs_changed: tokio::sync::Notify::new(),
                leases: crate::leases::LeaseClock::default(),
            },
        };
        KvMachine::with_effects(store, Arc::new(effects), None)
    }

    /// The state machine in `store`, publishing what it applies to `effects`; every committed
    /// entry is folded into `telemetry`'s applied-entries hash (exchanged with the other
    /// members, [`crate::hash_exchange`]).
    pub(crate) fn with_effects(
        store: Arc<RocksStore>,
        effects: Arc<KvApplied>,
        telemetry: Option<Arc<crate::telemetry::NodeTelemetry>>,
    ) -> KvMachine {
        let last_applied = store.applied_index();
        KvMachine {
            store,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            commands_since_commit: 0,
            failure: None,
            last_applied,
            effects,
            unpublished: Unpublished::default(),
            telemetry,
        }
    }

    /// The last index applied (a read's closure asks it: the node then reads the store once
    /// it has written that far).
    pub(crate) fn last_applied(&self) -> LogIndex {
        self.last_applied
    }

    /// The state as applied (the store merged with the writes not yet committed).
    fn view(&self) -> Layer<'_> {
        Layer { base: &self.store, pending: &self.pending }
    }

    /// A key as applied (a runtime read runs this in its closure).
    #[cfg(test)]
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<quorate_api::KeyValue>, SmError> {
        super::read_get(&self.view(), key)
    }

    /// Up to `limit` keys in `[start, end)` as applied, and whether more remain.
    #[cfg(test)]
    pub(crate) fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: u32,
    ) -> Result<(Vec<quorate_api::KeyValue>, bool), SmError> {
        super::read_scan(&self.view(), start, end, limit)
    }

    /// The global revision as applied.
    #[cfg(test)]
    pub(crate) fn revision(&self) -> Result<u64, SmError> {
        super::revision(&self.view())
    }

    fn apply_one(&mut self, index: LogIndex, command: &[u8]) -> Result<KvOutput, SmError> {
        let view = Layer { base: &self.store, pending: &self.pending };
        let mut ov = Overlay::new(&view);
        let mut outcome = apply_entry(&mut ov, index, command)?;
        self.last_applied = index;
        if let Some(v) = outcome.cluster_version {
            self.unpublished.version = Some(self.unpublished.version.map_or(v, |u| u.max(v)));
        }
        if let Some(addr) = &outcome.member_addr {
            self.unpublished.addrs.push(addr.clone());
        }
        if let Some(change) = outcome.lease.take() {
            self.unpublished.leases.push(change);
        }
        let ops = ov.into_ops();
        for op in ops {
            let (key, value) = match op {
                SmOp::Put { key, value } => (key, Some(value)),
                SmOp::Delete { key } => (key, None),
                // Only an install clears the state machine; a command never does.
                SmOp::Clear => {
                    return Err(SmError::Storage(quorate_storage::StoreError::InvalidBatch(
                        "a command cleared the state machine".into(),
                    )));
                }
                _ => {
                    return Err(SmError::Storage(quorate_storage::StoreError::InvalidBatch(
                        "a state-machine operation this build does not know".into(),
                    )));
                }
            };
            self.pending_bytes = self.pending_bytes.saturating_add(key.len() + value.as_ref().map_or(0, Vec::len));
            self.pending.insert(key, value);
        }
        self.commands_since_commit += 1;
        Ok(outcome.into())
    }

    /// The store operations of a commit: the pending writes. The runtime hands over no
    /// records (its sessions are off for a state machine that owns its format); any would be
    /// a broken contract, refused rather than dropped.
    fn commit_ops(&mut self, runtime: &RuntimeWrites) -> Result<Vec<SmOp>, SmError> {
        if !runtime.put.is_empty() || !runtime.delete.is_empty() {
            return Err(SmError::Storage(quorate_storage::StoreError::InvalidBatch(
                "runtime session records for a state machine that keeps its own sessions".into(),
            )));
        }
        let mut ops = Vec::with_capacity(self.pending.len());
        for (key, value) in std::mem::take(&mut self.pending) {
            ops.push(match value {
                Some(value) => SmOp::Put { key, value },
                None => SmOp::Delete { key },
            });
        }
        Ok(ops)
    }
}

fn io_error(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl StateMachine for KvMachine {
    type Output = KvOutput;
    const DURABLE: bool = true;
    const ENVELOPE: bool = false;
    const APPLY_COMMANDS_MAX: usize = 1;

    fn apply(&mut self, batch: &[Committed<'_>]) -> Vec<KvOutput> {
        let mut out = Vec::with_capacity(batch.len());
        for c in batch {
            if self.failure.is_none() {
                match self.apply_one(c.index, c.command) {
                    Ok(o) => {
                        out.push(o);
                        continue;
                    }
                    Err(e) => self.failure = Some(format!("applying {}: {e}", c.index)),
                }
            }
            // Never answered: the runtime halts on `failure()` first.
            out.push(KvOutput {
                result: Err(ApiError::Unavailable("the state machine failed".into())),
                member_addr: None,
                cluster_version: None,
            });
        }
        out
    }

    fn failure(&self) -> Option<String> {
        self.failure.clone()
    }

    /// As the driver's apply thread does before applying an entry: folded into the hash of
    /// the applied entries, compared between members (the same bytes under both engines).
    fn observe_entry(&mut self, entry: &quorate_log::Entry) {
        if let Some(t) = &self.telemetry {
            t.applying(entry);
        }
    }

    fn snapshot(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let mut out = out;
        super::write_snapshot_data(&self.view(), &mut out).map(|_| ()).map_err(io_error)
    }

    fn restore(&mut self, applied: LogIndex, snapshot: &mut dyn std::io::Read) -> Result<(), RestoreError> {
        if let Some(t) = &self.telemetry {
            t.hashes_restart();
        }
        self.pending.clear();
        (self.pending_bytes, self.commands_since_commit, self.failure) = (0, 0, None);
        self.unpublished = Unpublished::default();
        self.last_applied = applied;
        let store = &self.store;
        // Over an interrupted install, or back to or below the applied index (a start that
        // restores again): the reinstall, which may go back.
        let begun = if store.sm_install_pending().is_some() || applied <= store.applied_index() {
            store.begin_sm_reinstall(applied)
        } else {
            store.begin_sm_install(applied)
        };
        begun.map_err(|e| RestoreError(e.to_string()))?;
        let mut batch: Vec<SmPair> = Vec::new();
        let mut bytes = 0usize;
        let mut snapshot = snapshot;
        super::read_snapshot_data(&mut snapshot, |key, value| {
            bytes += key.len() + value.len();
            batch.push((key, value));
            if batch.len() >= RESTORE_BATCH_PAIRS || bytes >= RESTORE_BATCH_BYTES {
                store.write_sm_install_batch(std::mem::take(&mut batch))?;
                bytes = 0;
            }
            Ok(())
        })
        .map_err(|e| RestoreError(e.to_string()))?;
        if !batch.is_empty() {
            store.write_sm_install_batch(batch).map_err(|e| RestoreError(e.to_string()))?;
        }
        // Finished by the commit that follows.
        Ok(())
    }

    fn applied(&self) -> LogIndex {
        self.store.applied_index()
    }

    fn commit(&mut self, applied: LogIndex, runtime: &RuntimeWrites) -> std::io::Result<()> {
        (self.pending_bytes, self.commands_since_commit) = (0, 0);
        if let Some(target) = self.store.sm_install_pending() {
            // The commit of a restore: the install ends here.
            if !self.pending.is_empty() || target != applied || !runtime.put.is_empty() {
                return Err(io_error(format!(
                    "the commit at {applied} of a restore at {target} carries {} applied writes and {} runtime records",
                    self.pending.len(),
                    runtime.put.len()
                )));
            }
            self.store.finish_sm_install(applied).map_err(io_error)?;
            // A whole new state: its version, and every member address it records.
            let version = super::cluster_version(&*self.store).map_err(io_error)?;
            self.effects.publish(&self.store, Some(version)).map_err(io_error)?;
            self.effects.publish_addrs(super::member_addrs(&*self.store).map_err(io_error)?.into_iter().collect());
            // The lease table was replaced: the leader's clock reloads it.
            self.effects.leases.invalidate();
            return Ok(());
        }
        let ops = self.commit_ops(runtime).map_err(io_error)?;
        self.store.apply(applied, ops).map_err(io_error)?;
        let Unpublished { version, addrs, leases } = std::mem::take(&mut self.unpublished);
        // Written: the leader's clock may count on them (before anything below can fail).
        let now = std::time::Instant::now();
        for change in &leases {
            self.effects.leases.applied(change, now);
        }
        self.effects.publish(&self.store, version).map_err(io_error)?;
        self.effects.publish_addrs(addrs);
        Ok(())
    }

    fn commit_due(&self) -> bool {
        self.pending.len() >= COMMIT_OPS
            || self.pending_bytes >= COMMIT_BYTES
            || self.commands_since_commit >= COMMIT_COMMANDS
    }

    fn interrupted_restore(&self) -> Option<LogIndex> {
        self.store.sm_install_pending()
    }
}

/// The store's `sm` column family with writes not yet stored laid over it.
struct Layer<'a> {
    base: &'a RocksStore,
    pending: &'a BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl SmRead for Layer<'_> {
    fn sm_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, SmError> {
        match self.pending.get(key) {
            Some(v) => Ok(v.clone()),
            None => Ok(self.base.sm_get(key)?),
        }
    }

    fn sm_scan(&self, from: &[u8], limit: usize) -> Result<Vec<SmPair>, SmError> {
        self.sm_scan_bounded(from, limit, usize::MAX)
    }

    fn sm_scan_range(
        &self,
        from: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        bytes_max: usize,
    ) -> Result<Vec<SmPair>, SmError> {
        if end.is_some_and(|e| e <= from) {
            return Ok(Vec::new());
        }
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        let mut pending = self.pending.range::<[u8], _>((Bound::Included(from), upper)).peekable();
        let mut base_from = from.to_vec();
        let mut base_page = Vec::new().into_iter();
        let mut base_done = false;
        let mut base_next: Option<SmPair> = None;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        // The store is read in pages that start at what the caller asked for (one more, for a
        // pair a pending write replaces) and double up to MERGE_PAGE_PAIRS: a probe for the
        // first key at or after a point (a limit of 1, at every put) reads two pairs, not a
        // thousand.
        let mut page_pairs = limit.saturating_add(1).clamp(2, MERGE_PAGE_PAIRS);
        while out.len() < limit && bytes < bytes_max {
            if base_next.is_none() && !base_done {
                base_next = base_page.next();
                if base_next.is_none() {
                    let page = self.base.sm_scan_range(&base_from, end, page_pairs, SCAN_READ_BYTES_MAX)?;
                    page_pairs = page_pairs.saturating_mul(2).min(MERGE_PAGE_PAIRS);
                    match page.last() {
                        None => base_done = true,
                        Some((last, _)) => {
                            base_from = [last.as_slice(), &[0]].concat();
                            base_page = page.into_iter();
                            base_next = base_page.next();
                        }
                    }
                }
            }
            let take_pending = match (pending.peek(), &base_next) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((pk, _)), Some((bk, _))) => pk.as_slice() <= bk.as_slice(),
            };
            let (key, value) = if take_pending {
                let Some((key, value)) = pending.next() else { break };
                // The pending write replaces the stored pair of its key.
                if base_next.as_ref().is_some_and(|(bk, _)| bk == key) {
                    base_next = None;
                }
                let Some(value) = value else { continue };
                (key.clone(), value.clone())
            } else {
                let Some(pair) = base_next.take() else { break };
                pair
            };
            bytes = bytes.saturating_add(key.len() + value.len());
            out.push((key, value));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
