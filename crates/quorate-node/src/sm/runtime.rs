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
use quorate_api::{ApiError, KeyValue, Response};
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
}

impl KvMachine {
    /// The state machine kept in `store`'s `sm` column family (as it is: a new store's is
    /// empty, a node's holds its state and applied index).
    pub(crate) fn new(store: Arc<RocksStore>) -> KvMachine {
        KvMachine { store, pending: BTreeMap::new(), pending_bytes: 0, commands_since_commit: 0, failure: None }
    }

    /// The state as applied (the store merged with the writes not yet committed).
    fn view(&self) -> Layer<'_> {
        Layer { base: &self.store, pending: &self.pending }
    }

    /// A key as applied (a runtime read runs this in its closure).
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, SmError> {
        super::read_get(&self.view(), key)
    }

    /// Up to `limit` keys in `[start, end)` as applied, and whether more remain.
    pub(crate) fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: u32) -> Result<(Vec<KeyValue>, bool), SmError> {
        super::read_scan(&self.view(), start, end, limit)
    }

    /// The global revision as applied.
    pub(crate) fn revision(&self) -> Result<u64, SmError> {
        super::revision(&self.view())
    }

    fn apply_one(&mut self, index: LogIndex, command: &[u8]) -> Result<KvOutput, SmError> {
        let view = Layer { base: &self.store, pending: &self.pending };
        let mut ov = Overlay::new(&view);
        let outcome = apply_entry(&mut ov, index, command)?;
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

    fn snapshot(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let mut out = out;
        super::write_snapshot_data(&self.view(), &mut out).map(|_| ()).map_err(io_error)
    }

    fn restore(&mut self, applied: LogIndex, snapshot: &mut dyn std::io::Read) -> Result<(), RestoreError> {
        self.pending.clear();
        (self.pending_bytes, self.commands_since_commit, self.failure) = (0, 0, None);
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
            return self.store.finish_sm_install(applied).map_err(io_error);
        }
        let ops = self.commit_ops(runtime).map_err(io_error)?;
        self.store.apply(applied, ops).map_err(io_error)
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
        while out.len() < limit && bytes < bytes_max {
            if base_next.is_none() && !base_done {
                base_next = base_page.next();
                if base_next.is_none() {
                    let page = self.base.sm_scan_range(&base_from, end, MERGE_PAGE_PAIRS, SCAN_READ_BYTES_MAX)?;
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
