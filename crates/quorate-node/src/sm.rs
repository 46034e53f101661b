//! The key-value state machine: deterministic functions from the stored state and a log
//! command to a list of state-machine writes and a client result.
//!
//! Everything lives in the store's `sm` column family, so that state, revision, session table
//! and member addresses are written in one atomic batch together with the applied index
//! (`RocksStore::apply`); a restart neither re-applies nor loses an entry.
//!
//! | key | value |
//! |---|---|
//! | `k` + user key | [`KvRecord`]: value, create/mod revision, version |
//! | `s` + session id (big endian) | a session opened before cluster version 2: its last sequence number, last use (log time) and last result |
//! | `p` + session id (big endian) | a session bound to a principal (cluster version 2): the principal, last sequence number, last use and last result |
//! | `a` + node id (big endian) | a member's address |
//! | `m/revision` | the global revision: number of applied commands that changed a key |
//! | `m/time` | the log time (ms): the largest `Command::time_ms` applied |
//! | `m/gc` | where the session garbage collector resumes |
//! | `m/cluster_version` | the committed cluster version (absent: [`quorate_api::CLUSTER_VERSION_INITIAL`]) |
//! | `h`, `r`, `m/hist_*` | the multi-version history, from cluster version 2 (see [`history`]) |
//! | `e`, `m/ev_*` | the event index (what each revision changed, for watches), from cluster version 2 (see [`events`]) |
//! | `l`, `j`, `q`, `n`, `m/leases` | leases and their keys, from cluster version 2 (see [`leases`]) |
//!
//! Sessions expire by **log time**, identically on every replica: a session unused for
//! [`SESSION_TTL_MS`] of log time is gone, and a write in it gets `SessionExpired`.
//!
//! **A committed entry is always applicable.** Applying a command either succeeds or gives
//! that command an error result, identically on every replica, and the replica goes on: every
//! command's writes are checked against the store's limits and its result against
//! [`limits::RESULT_BYTES_MAX`] (from cluster version 2) before they join the batch, and a
//! command that fails a check is undone (the overlay keeps a journal of each command's writes).
//! Only a failure of the store itself (I/O, corrupt bytes) or a cluster version this binary
//! does not support stops the replica.
//!
//! **Sessions belong to principals** (from cluster version 2, [`OWNED_SESSIONS_CLUSTER_VERSION`]):
//! the leader opens a session with [`CommandOp::OpenSessionFor`] (the principal of the client
//! certificate, and a random id drawn by the leader) and wraps every write in a session into
//! [`CommandOp::ByPrincipal`]. A write in a session that belongs to another principal is
//! answered `SessionExpired` — exactly as an absent session, so that nothing can be learnt by
//! probing — and changes nothing. A sequence number more than [`SESSION_SEQ_AHEAD_MAX`] past
//! the session's last one is refused. Sessions opened before cluster version 2 (ids that are log
//! indexes, no principal) are not usable by principal-bound writes: their next write is
//! answered `SessionExpired` and the client opens a new session.

use quorate_api::{
    ApiError, Command, CommandOp, Compare, CompareOp, CompareTarget, KeyValue, KvOp, Response, SessionId, Txn, TxnOp,
    TxnResult, encoded_len, limits,
};
use quorate_log::{LogIndex, NodeId};
use quorate_storage::{APPLY_OPS_MAX, RocksStore, SM_KEY_BYTES_MAX, SM_VALUE_BYTES_MAX, SmOp, SmPair, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Write};

pub(crate) mod events;
pub(crate) mod history;
pub(crate) mod leases;
mod rev_index;
pub(crate) mod runtime;
#[cfg(test)]
pub(crate) mod test_replica;
pub(crate) use events::{events_state, read_watch};
pub(crate) use history::{
    HISTORY_BYTES_MAX, HISTORY_CLUSTER_VERSION, HISTORY_ENTRIES_MAX, history_state, read_get_at, read_scan_at_page,
};

/// A session unused for this much log time (ms) expires.
pub(crate) const SESSION_TTL_MS: u64 = 10 * 60 * 1000;
/// Sessions examined for expiry per `OpenSession`, so the table stays bounded by use.
pub(crate) const SESSION_GC_PER_OPEN: usize = 64;

/// How far past a principal-bound session's last sequence number a new write's may be: a
/// jump beyond (say to `u64::MAX`, which would end the session) is refused.
pub(crate) const SESSION_SEQ_AHEAD_MAX: u64 = 1 << 16;
/// Most state-machine writes one command may make (a range delete makes the most:
/// [`limits::SCAN_LIMIT_MAX`] and a few); the apply task cuts its batches so that a batch
/// plus one command stays within the store's [`APPLY_OPS_MAX`].
pub(crate) const COMMAND_WRITES_MAX: usize = APPLY_OPS_MAX / 4;
/// Bytes of keys and values read from the store per page when scanning the state machine
/// (besides [`PAGE`] pairs), so that a page of large values is never read whole.
pub(crate) const SCAN_READ_BYTES_MAX: usize = 16 << 20;
/// What a scan page's answer adds around its pairs: the continuation key, the read's
/// description, length prefixes and tags.
const PAGE_OVERHEAD_BYTES: usize = limits::KEY_BYTES_MAX + 1024;
/// Result bytes of one scan or transaction page (the rest of [`limits::RESULT_BYTES_MAX`]
/// is for the page's overhead).
pub(crate) const PAGE_RESULT_BYTES_MAX: usize = limits::RESULT_BYTES_MAX - PAGE_OVERHEAD_BYTES;

const _: () = assert!(limits::SCAN_LIMIT_MAX as usize + 16 <= COMMAND_WRITES_MAX);
const _: () = assert!(limits::KEY_VALUE_BYTES_MAX < PAGE_RESULT_BYTES_MAX);
// A principal-bound session's record (its result included) always fits a store value.
const _: () = assert!(limits::RESULT_BYTES_MAX + 1024 < SM_VALUE_BYTES_MAX);

const KV: u8 = b'k';
const SESSION: u8 = b's';
const OWNED_SESSION: u8 = b'p';
const ADDR: u8 = b'a';
const META_REVISION: &[u8] = b"m/revision";
const META_TIME: &[u8] = b"m/time";
const META_GC: &[u8] = b"m/gc";
const META_GC_OWNED: &[u8] = b"m/gc_owned";
const META_CLUSTER_VERSION: &[u8] = b"m/cluster_version";

/// The cluster version that turns [`CommandOp::DeleteRange`] on.
pub(crate) const DELETE_RANGE_CLUSTER_VERSION: u32 = 2;
/// The cluster version that binds sessions to principals ([`CommandOp::OpenSessionFor`],
/// [`CommandOp::ByPrincipal`]).
pub(crate) const OWNED_SESSIONS_CLUSTER_VERSION: u32 = 2;
/// The cluster version from which a command whose result would pass
/// [`limits::RESULT_BYTES_MAX`] is undone and answered with an error (below it, as in 0.1.0,
/// the result is kept; only a session record too large to store undoes the command).
pub(crate) const BOUNDED_RESULTS_CLUSTER_VERSION: u32 = 2;

/// Pairs read per page when scanning the state machine.
const PAGE: usize = 4096;

/// A stored key: value, revisions and version. The value is a byte string
/// ([`quorate_log::byte_string`]): decoded with one copy, and stored as the same bytes as the
/// plain `Vec<u8>` of 0.1.0.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub(crate) struct KvRecord {
    /// The value.
    #[serde(with = "quorate_log::byte_string")]
    pub(crate) value: Vec<u8>,
    /// Revision that created the key.
    pub(crate) create_revision: u64,
    /// Revision of the last write.
    pub(crate) mod_revision: u64,
    /// Writes since creation.
    pub(crate) version: u64,
}

/// A stored session of cluster version 1 (the 0.1.0 record: its shape never changes).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
struct SessionRecord {
    last_seq: u64,
    last_used_ms: u64,
    result: Option<Result<Response, ApiError>>,
}

/// A stored session bound to a principal (cluster version 2).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
struct OwnedSessionRecord {
    principal: String,
    last_seq: u64,
    last_used_ms: u64,
    result: Option<Result<Response, ApiError>>,
}

/// A state-machine failure: the store failed or holds bytes that do not decode. Fatal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum SmError {
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StoreError),
    /// The log committed a cluster version this binary does not support: it must not apply
    /// entries it may not understand.
    #[error(
        "the cluster was finalized at cluster version {committed}, but this binary supports cluster \
         versions up to {supported}: run a newer `quorate` binary on this node (rolling back after \
         `quorate cluster finalize` is not possible)"
    )]
    ClusterVersionTooNew {
        /// The committed cluster version.
        committed: u32,
        /// The newest this binary supports.
        supported: u32,
    },
    /// A stored value does not decode.
    #[error("state machine record {key} is corrupt: {detail}")]
    Corrupt {
        /// The key, escaped.
        key: String,
        /// What is wrong.
        detail: String,
    },
}

fn corrupt(key: &[u8], detail: impl Into<String>) -> SmError {
    SmError::Corrupt { key: key.escape_ascii().to_string(), detail: detail.into() }
}

/// Read access to the state-machine column family.
pub(crate) trait SmRead {
    /// The value of `key`.
    fn sm_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, SmError>;
    /// Up to `limit` pairs with keys `>= from`, in key order.
    fn sm_scan(&self, from: &[u8], limit: usize) -> Result<Vec<SmPair>, SmError>;
    /// As [`SmRead::sm_scan`], stopping also at the pair whose key and value bytes bring the
    /// page to `bytes_max` (so a positive budget gives at least one pair when there is one).
    fn sm_scan_bounded(&self, from: &[u8], limit: usize, bytes_max: usize) -> Result<Vec<SmPair>, SmError> {
        self.sm_scan_range(from, None, limit, bytes_max)
    }
    /// As [`SmRead::sm_scan_bounded`], with keys also `< end` (when given). A store stops at
    /// `end`: a seek that finds nothing in its range does not go on over what lies beyond
    /// (in RocksDB, every deleted key up to the next live one).
    fn sm_scan_range(
        &self,
        from: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        bytes_max: usize,
    ) -> Result<Vec<SmPair>, SmError>;
}

impl SmRead for RocksStore {
    fn sm_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, SmError> {
        Ok(RocksStore::sm_get(self, key)?)
    }
    fn sm_scan(&self, from: &[u8], limit: usize) -> Result<Vec<SmPair>, SmError> {
        Ok(RocksStore::sm_scan(self, from, limit)?)
    }
    fn sm_scan_range(
        &self,
        from: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        bytes_max: usize,
    ) -> Result<Vec<SmPair>, SmError> {
        Ok(RocksStore::sm_scan_range(self, from, end, limit, bytes_max)?)
    }
}

impl SmRead for quorate_storage::SmView<'_> {
    fn sm_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, SmError> {
        Ok(quorate_storage::SmView::sm_get(self, key)?)
    }
    fn sm_scan(&self, from: &[u8], limit: usize) -> Result<Vec<SmPair>, SmError> {
        Ok(quorate_storage::SmView::sm_scan(self, from, limit)?)
    }
    fn sm_scan_range(
        &self,
        from: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        bytes_max: usize,
    ) -> Result<Vec<SmPair>, SmError> {
        Ok(quorate_storage::SmView::sm_scan_range(self, from, end, limit, bytes_max)?)
    }
}

impl SmRead for BTreeMap<Vec<u8>, Vec<u8>> {
    fn sm_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, SmError> {
        Ok(self.get(key).cloned())
    }
    fn sm_scan(&self, from: &[u8], limit: usize) -> Result<Vec<SmPair>, SmError> {
        Ok(self.range(from.to_vec()..).take(limit).map(|(k, v)| (k.clone(), v.clone())).collect())
    }
    fn sm_scan_range(
        &self,
        from: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        bytes_max: usize,
    ) -> Result<Vec<SmPair>, SmError> {
        let mut bytes = 0usize;
        let mut out = Vec::new();
        use std::ops::Bound as B;
        if end.is_some_and(|e| e <= from) {
            return Ok(Vec::new());
        }
        let range = self.range::<[u8], _>((B::Included(from), end.map_or(B::Unbounded, B::Excluded)));
        for (k, v) in range.take(limit) {
            if bytes >= bytes_max {
                break;
            }
            bytes = bytes.saturating_add(k.len() + v.len());
            out.push((k.clone(), v.clone()));
        }
        Ok(out)
    }
}

impl<T: SmRead + ?Sized> SmRead for std::sync::Arc<T> {
    fn sm_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, SmError> {
        (**self).sm_get(key)
    }
    fn sm_scan(&self, from: &[u8], limit: usize) -> Result<Vec<SmPair>, SmError> {
        (**self).sm_scan(from, limit)
    }
    fn sm_scan_range(
        &self,
        from: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        bytes_max: usize,
    ) -> Result<Vec<SmPair>, SmError> {
        (**self).sm_scan_range(from, end, limit, bytes_max)
    }
}

/// A key's entry in the overlay before a write (`None`: the overlay did not hold the key).
type Undo = (Vec<u8>, Option<Option<Vec<u8>>>);

/// The prefix of the state machine's bookkeeping keys (`m/time`, `m/revision`, the history's
/// and the event index's counters, ...): a fixed, small set that every command reads.
const META_PREFIX: &[u8] = b"m/";

/// Most first-key probes ([`Overlay::first_stored_at`]) an overlay remembers.
const PROBES_MAX: usize = 8;

/// The values of bookkeeping keys ([`META_PREFIX`]) as stored, known to the apply thread
/// (`None`: the key is absent). Carried from one apply batch to the next
/// ([`Overlay::with_meta`], [`Overlay::meta_after`]) so that a batch does not read them from
/// the store again; only valid while nothing but those batches writes the state machine.
pub(crate) type MetaCache = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Writes not yet stored, layered over the stored state: the apply task accumulates the
/// effects of several entries here and stores them in one batch with the applied index.
///
/// Every write is journalled with what it replaced, from the start of the current command, so
/// that a command that fails deterministically can be undone ([`Overlay::rollback_to`]) and
/// given an error result instead of stopping the replica.
///
/// The base must not change while an overlay is in use (the apply thread is the only writer of
/// the state machine, and stores an overlay's writes after it is done with it): the overlay
/// remembers what it read of the base's bookkeeping keys and first-key probes, so that the
/// commands of one batch do not each read them again.
#[derive(Debug)]
pub(crate) struct Overlay<'a, R: ?Sized> {
    base: &'a R,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    clear: bool,
    journal: Vec<Undo>,
    bytes: usize,
    /// The base's values of the bookkeeping keys read so far (or seeded).
    meta: std::cell::RefCell<MetaCache>,
    /// The base's first key at or after a key, for the keys probed so far (at most
    /// [`PROBES_MAX`]).
    probes: std::cell::RefCell<BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
}

fn entry_bytes(key: &[u8], value: Option<&Vec<u8>>) -> usize {
    key.len() + value.map_or(0, Vec::len)
}

impl<'a, R: SmRead + ?Sized> Overlay<'a, R> {
    /// An empty overlay over `base`.
    pub(crate) fn new(base: &'a R) -> Overlay<'a, R> {
        Overlay::with_meta(base, MetaCache::new())
    }

    /// An empty overlay over `base`, whose bookkeeping keys hold `meta` where it says (what
    /// [`Overlay::meta_after`] of the previous batch over the same store returned).
    pub(crate) fn with_meta(base: &'a R, meta: MetaCache) -> Overlay<'a, R> {
        debug_assert!(meta.keys().all(|k| k.starts_with(META_PREFIX)));
        Overlay {
            base,
            writes: BTreeMap::new(),
            clear: false,
            journal: Vec::new(),
            bytes: 0,
            meta: std::cell::RefCell::new(meta),
            probes: std::cell::RefCell::new(BTreeMap::new()),
        }
    }

    /// The bookkeeping keys this overlay knows, as the base will hold them once its writes are
    /// stored: to seed the next batch's overlay ([`Overlay::with_meta`]).
    pub(crate) fn meta_after(&self) -> MetaCache {
        let mut meta = if self.clear { MetaCache::new() } else { self.meta.borrow().clone() };
        for (k, v) in self.writes.range(META_PREFIX.to_vec()..).take_while(|(k, _)| k.starts_with(META_PREFIX)) {
            meta.insert(k.clone(), v.clone());
        }
        meta
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, SmError> {
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None if self.clear => Ok(None),
            None if key.starts_with(META_PREFIX) => {
                if let Some(v) = self.meta.borrow().get(key) {
                    return Ok(v.clone());
                }
                let v = self.base.sm_get(key)?;
                self.meta.borrow_mut().insert(key.to_vec(), v.clone());
                Ok(v)
            }
            None => self.base.sm_get(key),
        }
    }

    /// The value of `key`, a key named by `revision` (a history entry or an event record),
    /// when `revision` is above the revision this overlay sees — the revision of the command
    /// being applied: only this overlay's writes can hold it. Such keys are written only with
    /// the revision of the command that writes them, which becomes the stored revision with
    /// them, so the store holds none above its revision, and the overlay's revision is never
    /// below the store's. Not reading the store for them saves a put two or three point reads
    /// that always miss (issue 20). Should `revision` not be above, this is [`Overlay::get`].
    fn get_at_revision(&self, key: &[u8], revision: u64) -> Result<Option<Vec<u8>>, SmError> {
        if let Some(v) = self.writes.get(key) {
            return Ok(v.clone());
        }
        if self.clear {
            return Ok(None);
        }
        if revision > ov_u64(self, META_REVISION)? {
            // The invariant, checked on one lookup in 64 of each thread (the first included)
            // in builds with debug assertions (CI's tests, the chaos runs and the benchmarks'
            // `ci` profile).
            thread_local!(static LOOKUPS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) });
            let n = LOOKUPS.with(|c| c.replace(c.get().wrapping_add(1)));
            if cfg!(debug_assertions) && n.is_multiple_of(64) {
                debug_assert!(
                    self.base.sm_get(key)?.is_none(),
                    "the store holds {} above its revision",
                    key.escape_ascii()
                );
            }
            return Ok(None);
        }
        self.base.sm_get(key)
    }

    /// The base's first key at or after `from` (not the overlay's writes), remembered for the
    /// overlay's life.
    fn first_stored_at(&self, from: &[u8]) -> Result<Option<Vec<u8>>, SmError> {
        if let Some(k) = self.probes.borrow().get(from) {
            return Ok(k.clone());
        }
        let first = self.base.sm_scan_bounded(from, 1, 1)?.into_iter().next().map(|(k, _)| k);
        let mut probes = self.probes.borrow_mut();
        if probes.len() < PROBES_MAX {
            probes.insert(from.to_vec(), first.clone());
        }
        Ok(first)
    }

    fn set(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.bytes += entry_bytes(&key, value.as_ref());
        let old = self.writes.insert(key.clone(), value);
        if let Some(o) = &old {
            self.bytes -= entry_bytes(&key, o.as_ref());
        }
        self.journal.push((key, old));
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.set(key, Some(value));
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.set(key, None);
    }

    /// A point to roll back to: the writes made after it can be undone.
    fn mark(&self) -> usize {
        self.journal.len()
    }

    /// Undoes every write made since `mark`, newest first.
    fn rollback_to(&mut self, mark: usize) {
        while self.journal.len() > mark {
            let Some((key, old)) = self.journal.pop() else { break };
            if let Some(now) = self.writes.remove(&key) {
                self.bytes -= entry_bytes(&key, now.as_ref());
            }
            if let Some(o) = old {
                self.bytes += entry_bytes(&key, o.as_ref());
                self.writes.insert(key, o);
            }
        }
    }

    /// Forgets the journal (a command is complete: it will not be undone).
    fn commit(&mut self) {
        self.journal.clear();
    }

    /// Whether the writes since `mark` stay within what the store accepts: key and value
    /// sizes, and at most [`COMMAND_WRITES_MAX`] writes.
    fn check_since(&self, mark: usize) -> Result<(), String> {
        let journal = &self.journal[mark.min(self.journal.len())..];
        if journal.len() > COMMAND_WRITES_MAX {
            let keys: std::collections::BTreeSet<&[u8]> = journal.iter().map(|(k, _)| k.as_slice()).collect();
            if keys.len() > COMMAND_WRITES_MAX {
                return Err(format!("the command makes {} writes, more than {COMMAND_WRITES_MAX}", keys.len()));
            }
        }
        for (key, _) in journal {
            if key.len() > SM_KEY_BYTES_MAX {
                return Err(format!("a state-machine key of {} bytes, more than {SM_KEY_BYTES_MAX}", key.len()));
            }
            if let Some(Some(v)) = self.writes.get(key)
                && v.len() > SM_VALUE_BYTES_MAX
            {
                return Err(format!("a state-machine value of {} bytes, more than {SM_VALUE_BYTES_MAX}", v.len()));
            }
        }
        Ok(())
    }

    /// Number of pending writes.
    #[must_use]
    pub(crate) fn len(&self) -> usize {
        self.writes.len() + usize::from(self.clear)
    }

    /// Bytes of the keys and values pending.
    #[must_use]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The pending writes as store operations.
    #[must_use]
    pub(crate) fn into_ops(self) -> Vec<SmOp> {
        let mut ops = Vec::with_capacity(self.len());
        if self.clear {
            ops.push(SmOp::Clear);
        }
        for (key, v) in self.writes {
            ops.push(match v {
                Some(value) => SmOp::Put { key, value },
                None => SmOp::Delete { key },
            });
        }
        ops
    }

    /// The pending writes, applied to a map (tests).
    #[cfg(test)]
    pub(crate) fn apply_to(self, map: &mut BTreeMap<Vec<u8>, Vec<u8>>) {
        if self.clear {
            map.clear();
        }
        for (k, v) in self.writes {
            match v {
                Some(v) => {
                    map.insert(k, v);
                }
                None => {
                    map.remove(&k);
                }
            }
        }
    }
}

fn kv_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(KV);
    k.extend_from_slice(key);
    k
}

fn session_key(id: SessionId) -> Vec<u8> {
    let mut k = vec![SESSION];
    k.extend_from_slice(&id.0.to_be_bytes());
    k
}

fn owned_session_key(id: SessionId) -> Vec<u8> {
    let mut k = vec![OWNED_SESSION];
    k.extend_from_slice(&id.0.to_be_bytes());
    k
}

fn addr_key(id: NodeId) -> Vec<u8> {
    let mut k = vec![ADDR];
    k.extend_from_slice(&id.get().to_be_bytes());
    k
}

fn decode<T: serde::de::DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, SmError> {
    let (v, rest) = postcard::take_from_bytes(bytes).map_err(|e| corrupt(key, e.to_string()))?;
    if !rest.is_empty() {
        return Err(corrupt(key, format!("{} trailing bytes", rest.len())));
    }
    Ok(v)
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Encoding plain data into a Vec cannot fail.
    postcard::to_allocvec(v).unwrap_or_default()
}

fn get_u64(r: &(impl SmRead + ?Sized), key: &[u8]) -> Result<u64, SmError> {
    match r.sm_get(key)? {
        None => Ok(0),
        Some(b) => {
            let a: [u8; 8] = b.as_slice().try_into().map_err(|_| corrupt(key, "not 8 bytes"))?;
            Ok(u64::from_le_bytes(a))
        }
    }
}

fn ov_u64<R: SmRead + ?Sized>(ov: &Overlay<'_, R>, key: &[u8]) -> Result<u64, SmError> {
    match ov.get(key)? {
        None => Ok(0),
        Some(b) => {
            let a: [u8; 8] = b.as_slice().try_into().map_err(|_| corrupt(key, "not 8 bytes"))?;
            Ok(u64::from_le_bytes(a))
        }
    }
}

fn get_kv<R: SmRead + ?Sized>(ov: &Overlay<'_, R>, key: &[u8]) -> Result<Option<KvRecord>, SmError> {
    let k = kv_key(key);
    ov.get(&k)?.map(|b| decode(&k, &b)).transpose()
}

fn to_kv(key: &[u8], r: KvRecord) -> KeyValue {
    KeyValue {
        key: key.to_vec(),
        value: r.value,
        create_revision: r.create_revision,
        mod_revision: r.mod_revision,
        version: r.version,
    }
}

/// What applying one command produced.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub(crate) struct ApplyOutcome {
    /// The client's result.
    pub(crate) result: Result<Response, ApiError>,
    /// A member address the command recorded (the node adds the peer to its transport).
    pub(crate) member_addr: Option<(NodeId, String)>,
    /// The cluster version the command raised the cluster to (`quorate cluster finalize`).
    pub(crate) cluster_version: Option<u32>,
    /// The result came from the session's cache: a retry of the session's last sequence
    /// number, answered with the original result and not applied again.
    pub(crate) cached: bool,
    /// A write in a principal-bound session: the session, its principal and the session's
    /// last sequence number once this command was applied (a node answers replays of it and
    /// of older ones without proposing them: [`replay_answer`]).
    pub(crate) in_session: Option<InSession>,
    /// What the command did to the lease table (for the leader's clock, [`crate::leases`]).
    pub(crate) lease: Option<leases::LeaseChange>,
}

/// Where a write in a principal-bound session left its session ([`ApplyOutcome::in_session`]).
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub(crate) struct InSession {
    /// The session.
    pub(crate) session: SessionId,
    /// The principal it belongs to.
    pub(crate) principal: String,
    /// Its last sequence number after the command.
    pub(crate) last_seq: u64,
}

impl ApplyOutcome {
    fn result(result: Result<Response, ApiError>) -> ApplyOutcome {
        ApplyOutcome { result, member_addr: None, cluster_version: None, cached: false, in_session: None, lease: None }
    }
}

/// An answer from a session's table without applying: the result, and whether it is the
/// cached result of the session's last sequence number (else the refusal of an older one).
pub(crate) type ReplayAnswer = (Result<Response, ApiError>, bool);

/// What a write at sequence number `seq` gets from a principal-bound session `rec` (its
/// owner's, live) without being applied: the cached result for the session's last sequence
/// number (`cached`), an error for an older one; `None` for a newer one (to apply). One
/// function for apply and for the answer before proposing ([`replay_answer`]), so that both
/// say the same.
fn owned_replay(rec: &OwnedSessionRecord, seq: u64) -> Option<ReplayAnswer> {
    if seq == rec.last_seq {
        let result = rec
            .result
            .clone()
            .unwrap_or_else(|| Err(ApiError::InvalidRequest("no result recorded for this sequence".into())));
        Some((result, true))
    } else if seq < rec.last_seq {
        Some((
            Err(ApiError::InvalidRequest(format!(
                "sequence number {seq} is older than the session's last one ({}); its result is no longer kept",
                rec.last_seq
            ))),
            false,
        ))
    } else {
        None
    }
}

/// The answer to a replay, read from the applied session table `r` before anything is
/// proposed: a write by `principal` in its session `session` at sequence number `seq`, at or
/// below the session's last applied one, while the session is live at log time `now_ms`.
/// `Some((answer, cached))` is what applying the write would answer now — the original
/// result of the session's last sequence number (`cached`), or the error of an older one —
/// and it is final: the session's record moves only forward, and an applied entry is
/// committed. `None` in every other case (no such session, one of cluster version 1, another
/// principal's, expired by `now_ms`, a sequence number not applied yet): the write goes
/// through the log, and apply answers it, exactly as without this function — in particular
/// another principal's session is never read here for an answer, so its replies cannot be
/// told from an absent session's.
pub(crate) fn replay_answer(
    r: &(impl SmRead + ?Sized),
    session: SessionId,
    seq: u64,
    principal: &str,
    now_ms: u64,
) -> Result<Option<ReplayAnswer>, SmError> {
    let pk = owned_session_key(session);
    let Some(bytes) = r.sm_get(&pk)? else { return Ok(None) };
    let rec: OwnedSessionRecord = decode(&pk, &bytes)?;
    if rec.principal != principal || now_ms.saturating_sub(rec.last_used_ms) > SESSION_TTL_MS {
        return Ok(None);
    }
    Ok(owned_replay(&rec, seq))
}

/// The committed cluster version in `r` ([`quorate_api::CLUSTER_VERSION_INITIAL`] if it was
/// never raised).
pub(crate) fn cluster_version(r: &(impl SmRead + ?Sized)) -> Result<u32, SmError> {
    let v = get_u64(r, META_CLUSTER_VERSION)?;
    Ok(if v == 0 { quorate_api::CLUSTER_VERSION_INITIAL } else { u32::try_from(v).unwrap_or(u32::MAX) })
}

fn ov_cluster_version<R: SmRead + ?Sized>(ov: &Overlay<'_, R>) -> Result<u32, SmError> {
    let v = ov_u64(ov, META_CLUSTER_VERSION)?;
    Ok(if v == 0 { quorate_api::CLUSTER_VERSION_INITIAL } else { u32::try_from(v).unwrap_or(u32::MAX) })
}

/// Refuses state whose committed cluster version this binary does not support (at start).
pub(crate) fn check_cluster_version(r: &(impl SmRead + ?Sized)) -> Result<u32, SmError> {
    let committed = cluster_version(r)?;
    if committed > quorate_api::CLUSTER_VERSION {
        return Err(SmError::ClusterVersionTooNew { committed, supported: quorate_api::CLUSTER_VERSION });
    }
    Ok(committed)
}

/// Applies the command of the entry at `index` (its raw bytes) to `ov`. Undecodable bytes
/// change nothing and give `InvalidRequest` (identically on every replica).
pub(crate) fn apply_entry<R: SmRead + ?Sized>(
    ov: &mut Overlay<'_, R>,
    index: LogIndex,
    bytes: &[u8],
) -> Result<ApplyOutcome, SmError> {
    match quorate_api::decode_command(bytes) {
        Ok(cmd) => apply_command(ov, index, &cmd),
        Err(e) => Ok(ApplyOutcome::result(Err(ApiError::InvalidRequest(e.to_string())))),
    }
}

/// The answer to a command gated on a cluster version the cluster has not reached: what a
/// 0.1.0 replica answers too (it cannot decode the command), and nothing changes.
fn gated(what: &str, needed: u32, cv: u32) -> ApiError {
    quorate_api::cluster_version_refusal(what, needed, cv)
}

/// Applies one decoded command at `index`. Every outcome but a store failure (or a cluster
/// version this binary does not support) is a result for the client, identical on every
/// replica: a command that cannot be applied is undone and answered with an error.
pub(crate) fn apply_command<R: SmRead + ?Sized>(
    ov: &mut Overlay<'_, R>,
    index: LogIndex,
    cmd: &Command,
) -> Result<ApplyOutcome, SmError> {
    ov.commit();
    let time = ov_u64(ov, META_TIME)?.max(cmd.time_ms);
    ov.put(META_TIME.to_vec(), time.to_le_bytes().to_vec());
    let cv = ov_cluster_version(ov)?;
    if cv >= HISTORY_CLUSTER_VERSION && !history::enabled(ov)? {
        // A cluster finalized by a build before history existed: history starts at the first
        // command applied after it (decided by the log, so the same on every replica).
        history::enable(ov)?;
    }
    if cv >= HISTORY_CLUSTER_VERSION && !events::enabled(ov)? {
        // A cluster finalized by a build that recorded history but no events: events start
        // at the first command applied after it (decided by the log).
        events::enable(ov)?;
    }
    let out = match &cmd.op {
        CommandOp::Compact { revision } => {
            if cv < HISTORY_CLUSTER_VERSION {
                ApplyOutcome::result(Err(gated("compact", HISTORY_CLUSTER_VERSION, cv)))
            } else {
                let mark = ov.mark();
                let r = history::compact(ov, *revision)?.map(|compacted| Response::Compacted { compacted });
                if let Err(why) = ov.check_since(mark) {
                    ov.rollback_to(mark);
                    ApplyOutcome::result(Err(ApiError::InvalidRequest(format!("{why}; nothing was changed"))))
                } else {
                    ApplyOutcome::result(r)
                }
            }
        }
        CommandOp::LeaseGrant { principal, ttl_ms } => {
            lease_command(ov, cv, |ov| leases::grant(ov, index.0, principal, *ttl_ms))?
        }
        CommandOp::LeaseRevoke { principal, admin, id } => {
            lease_command(ov, cv, |ov| leases::revoke(ov, principal, *admin, *id))?
        }
        CommandOp::LeaseExpire { id } => lease_command(ov, cv, |ov| leases::expire(ov, *id))?,
        CommandOp::OpenSession => {
            gc_sessions(ov, time, cv)?;
            let id = SessionId(index.0);
            let rec = SessionRecord { last_seq: 0, last_used_ms: time, result: None };
            ov.put(session_key(id), encode(&rec));
            ApplyOutcome::result(Ok(Response::Session(id)))
        }
        CommandOp::OpenSessionFor { principal, nonce } => open_owned_session(ov, cv, time, principal, *nonce)?,
        CommandOp::SetMemberAddr { id, addr } => {
            ov.put(addr_key(*id), addr.as_bytes().to_vec());
            ApplyOutcome { member_addr: Some((*id, addr.clone())), ..ApplyOutcome::result(Ok(Response::Done)) }
        }
        CommandOp::SetClusterVersion { version } => {
            if *version > quorate_api::CLUSTER_VERSION {
                // Not a deterministic failure: a binary that supports the version applies it.
                // This one must not apply entries it may not understand.
                return Err(SmError::ClusterVersionTooNew {
                    committed: *version,
                    supported: quorate_api::CLUSTER_VERSION,
                });
            }
            // Never lowered; raising twice to the same version is a no-op.
            if *version <= cv {
                ApplyOutcome::result(Ok(Response::Done))
            } else {
                ov.put(META_CLUSTER_VERSION.to_vec(), u64::from(*version).to_le_bytes().to_vec());
                if *version >= HISTORY_CLUSTER_VERSION {
                    // History and events start here, at this entry's revision, on every replica.
                    history::enable(ov)?;
                    events::enable(ov)?;
                }
                ApplyOutcome { cluster_version: Some(*version), ..ApplyOutcome::result(Ok(Response::Done)) }
            }
        }
        CommandOp::ByPrincipal { principal, op } => {
            if cv < OWNED_SESSIONS_CLUSTER_VERSION {
                ApplyOutcome::result(Err(gated("a principal-bound write", OWNED_SESSIONS_CLUSTER_VERSION, cv)))
            } else {
                match op {
                    // Lease writes in the principal's session: applied once, a retry answered
                    // from the session like any other write.
                    KvOp::LeaseGrant { ttl_ms } => in_session(ov, cmd.session, Some(principal), cv, time, |ov, _| {
                        lease_apply(ov, cv, |ov| leases::grant(ov, index.0, principal, *ttl_ms))
                    })?,
                    KvOp::LeaseRevoke { id, admin } => {
                        in_session(ov, cmd.session, Some(principal), cv, time, |ov, _| {
                            lease_apply(ov, cv, |ov| leases::revoke(ov, principal, *admin, *id))
                        })?
                    }
                    op => in_session(ov, cmd.session, Some(principal), cv, time, |ov, bound| {
                        Ok((apply_op_checked(ov, OpRef::of_kv(op, principal), bound)?, None))
                    })?,
                }
            }
        }
        op => in_session(ov, cmd.session, None, cv, time, |ov, bound| {
            Ok((apply_op_checked(ov, OpRef::of(op), bound)?, None))
        })?,
    };
    ov.commit();
    Ok(out)
}

/// A lease command ([`leases`]) outside a session: see [`lease_apply`].
fn lease_command<R: SmRead + ?Sized>(
    ov: &mut Overlay<'_, R>,
    cv: u32,
    f: impl FnOnce(&mut Overlay<'_, R>) -> Result<leases::LeaseOutcome, SmError>,
) -> Result<ApplyOutcome, SmError> {
    let (result, lease) = lease_apply(ov, cv, f)?;
    Ok(ApplyOutcome { lease, ..ApplyOutcome::result(result) })
}

/// Applies a lease operation: gated on [`leases::LEASES_CLUSTER_VERSION`], its writes checked
/// against the store's limits (undone and answered with an error if they fail).
fn lease_apply<R: SmRead + ?Sized>(
    ov: &mut Overlay<'_, R>,
    cv: u32,
    f: impl FnOnce(&mut Overlay<'_, R>) -> Result<leases::LeaseOutcome, SmError>,
) -> Result<leases::LeaseOutcome, SmError> {
    if cv < leases::LEASES_CLUSTER_VERSION {
        return Ok((Err(gated("a lease", leases::LEASES_CLUSTER_VERSION, cv)), None));
    }
    let mark = ov.mark();
    let (result, lease) = f(ov)?;
    if let Err(why) = ov.check_since(mark) {
        ov.rollback_to(mark);
        return Ok((Err(ApiError::InvalidRequest(format!("{why}; nothing was changed"))), None));
    }
    Ok((result, lease))
}

/// Opens a session bound to `principal` with id `nonce` (drawn by the leader).
fn open_owned_session<R: SmRead + ?Sized>(
    ov: &mut Overlay<'_, R>,
    cv: u32,
    time: u64,
    principal: &str,
    nonce: u64,
) -> Result<ApplyOutcome, SmError> {
    if cv < OWNED_SESSIONS_CLUSTER_VERSION {
        return Ok(ApplyOutcome::result(Err(gated("a principal-bound session", OWNED_SESSIONS_CLUSTER_VERSION, cv))));
    }
    if principal.is_empty() || principal.len() > quorate_transport::PRINCIPAL_BYTES_MAX {
        return Ok(ApplyOutcome::result(Err(ApiError::InvalidRequest("a session needs a valid principal".into()))));
    }
    gc_sessions(ov, time, cv)?;
    let id = SessionId(nonce);
    let (owned, legacy) = (owned_session_key(id), session_key(id));
    if nonce == 0 || ov.get(&owned)?.is_some() || ov.get(&legacy)?.is_some() {
        // Drawn at random from 2^64: a collision is for the client to retry, like any other
        // refusal before work.
        return Ok(ApplyOutcome::result(Err(ApiError::Unavailable(
            "the drawn session id is taken; open a session again".into(),
        ))));
    }
    let rec = OwnedSessionRecord { principal: principal.to_string(), last_seq: 0, last_used_ms: time, result: None };
    ov.put(owned, encode(&rec));
    Ok(ApplyOutcome::result(Ok(Response::Session(id))))
}

/// A key-value operation in its session (if any), on behalf of `principal` (if the command
/// names one).
fn in_session<R: SmRead + ?Sized>(
    ov: &mut Overlay<'_, R>,
    session: Option<quorate_api::Sequenced>,
    principal: Option<&str>,
    cv: u32,
    time: u64,
    apply: impl FnOnce(&mut Overlay<'_, R>, Bound) -> Result<leases::LeaseOutcome, SmError>,
) -> Result<ApplyOutcome, SmError> {
    let Some(seqd) = session else {
        let bound = if cv >= BOUNDED_RESULTS_CLUSTER_VERSION { Bound::Result } else { Bound::LegacyAnswer };
        let (result, lease) = apply(ov, bound)?;
        return Ok(ApplyOutcome { lease, ..ApplyOutcome::result(result) });
    };
    let pk = owned_session_key(seqd.session);
    if let Some(bytes) = ov.get(&pk)? {
        let mut rec: OwnedSessionRecord = decode(&pk, &bytes)?;
        let Some(principal) = principal else {
            // Proposed by a leader that had not yet applied cluster version 2, after the
            // session was opened. Nothing is applied; the client's retry carries its principal.
            return Ok(ApplyOutcome::result(Err(ApiError::Unavailable(
                "the cluster version changed while this write was proposed; retry".into(),
            ))));
        };
        if principal != rec.principal {
            // Exactly what an absent session gets: another principal learns nothing.
            return Ok(ApplyOutcome::result(Err(ApiError::SessionExpired)));
        }
        if time.saturating_sub(rec.last_used_ms) > SESSION_TTL_MS {
            ov.delete(pk);
            return Ok(ApplyOutcome::result(Err(ApiError::SessionExpired)));
        }
        rec.last_used_ms = time;
        let mut cached = false;
        let mut lease = None;
        let result = if let Some((result, from_cache)) = owned_replay(&rec, seqd.seq) {
            cached = from_cache;
            result
        } else if seqd.seq - rec.last_seq > SESSION_SEQ_AHEAD_MAX {
            Err(ApiError::InvalidRequest(format!(
                "sequence number {} is more than {SESSION_SEQ_AHEAD_MAX} past the session's last one ({})",
                seqd.seq, rec.last_seq
            )))
        } else {
            let (r, change) = apply(ov, Bound::Result)?;
            lease = change;
            rec.last_seq = seqd.seq;
            rec.result = Some(r.clone());
            r
        };
        let in_session = InSession { session: seqd.session, principal: rec.principal.clone(), last_seq: rec.last_seq };
        ov.put(pk, encode(&rec));
        return Ok(ApplyOutcome { cached, in_session: Some(in_session), lease, ..ApplyOutcome::result(result) });
    }
    let sk = session_key(seqd.session);
    let Some(bytes) = ov.get(&sk)? else {
        return Ok(ApplyOutcome::result(Err(ApiError::SessionExpired)));
    };
    if principal.is_some() {
        // A session opened before cluster version 2 has no owner: a principal-bound write
        // cannot use it (the client opens a new session).
        return Ok(ApplyOutcome::result(Err(ApiError::SessionExpired)));
    }
    let mut rec: SessionRecord = decode(&sk, &bytes)?;
    if time.saturating_sub(rec.last_used_ms) > SESSION_TTL_MS {
        ov.delete(sk);
        return Ok(ApplyOutcome::result(Err(ApiError::SessionExpired)));
    }
    rec.last_used_ms = time;
    let mut cached = false;
    let result = if seqd.seq == rec.last_seq {
        // A retry: the original answer, applied once.
        cached = true;
        rec.result
            .clone()
            .unwrap_or_else(|| Err(ApiError::InvalidRequest("no result recorded for this sequence".into())))
    } else if seqd.seq < rec.last_seq {
        Err(ApiError::InvalidRequest(format!(
            "sequence number {} is older than the session's last one ({}); its result is no longer kept",
            seqd.seq, rec.last_seq
        )))
    } else {
        let mark = ov.mark();
        let bound = if cv >= BOUNDED_RESULTS_CLUSTER_VERSION { Bound::Result } else { Bound::LegacySession };
        // Only principal-bound writes carry lease operations, and they never reach an
        // unowned session (refused above): no lease change here.
        let (mut r, _) = apply(ov, bound)?;
        rec.last_seq = seqd.seq;
        rec.result = Some(r.clone());
        let len = encoded_len(&rec);
        if len > SM_VALUE_BYTES_MAX {
            // 0.1.0 stopped here, on every replica and at every restart. Undo the write and
            // keep the (small) error instead.
            ov.rollback_to(mark);
            r = Err(ApiError::InvalidRequest(format!(
                "the result of this write would make its session record {len} bytes, more than the \
                 {SM_VALUE_BYTES_MAX} a state-machine value may hold; nothing was changed"
            )));
            rec.result = Some(r.clone());
        }
        r
    };
    ov.put(sk, encode(&rec));
    Ok(ApplyOutcome { cached, ..ApplyOutcome::result(result) })
}

/// Drops up to [`SESSION_GC_PER_OPEN`] expired sessions of each kind, resuming where the last
/// call stopped.
fn gc_sessions<R: SmRead + ?Sized>(ov: &mut Overlay<'_, R>, time: u64, cv: u32) -> Result<(), SmError> {
    if cv < OWNED_SESSIONS_CLUSTER_VERSION {
        return gc_legacy_sessions(ov, time);
    }
    gc_session_page(ov, time, SESSION, META_GC)?;
    gc_session_page(ov, time, OWNED_SESSION, META_GC_OWNED)
}

/// The session collector of 0.1.0, kept exactly below cluster version 2 (a 0.1.0 replica
/// may apply the same entries).
fn gc_legacy_sessions<R: SmRead + ?Sized>(ov: &mut Overlay<'_, R>, time: u64) -> Result<(), SmError> {
    let cursor = ov_u64(ov, META_GC)?;
    let from = session_key(SessionId(cursor));
    // Read through the overlay's base; pending writes in this batch only add fresh sessions.
    let page = ov.base.sm_scan(&from, SESSION_GC_PER_OPEN)?;
    let mut next = 0;
    for (k, _) in page.iter().take_while(|(k, _)| k.first() == Some(&SESSION) && k.len() == 9) {
        let Some(v) = ov.get(k)? else { continue };
        let rec: SessionRecord = decode(k, &v)?;
        if time.saturating_sub(rec.last_used_ms) > SESSION_TTL_MS {
            ov.delete(k.clone());
        }
        let mut a = [0u8; 8];
        a.copy_from_slice(&k[1..]);
        next = u64::from_be_bytes(a).saturating_add(1);
    }
    let full = page.len() == SESSION_GC_PER_OPEN && page.iter().all(|(k, _)| k.first() == Some(&SESSION));
    let cursor = if full { next } else { 0 };
    ov.put(META_GC.to_vec(), cursor.to_le_bytes().to_vec());
    Ok(())
}

/// From cluster version 2: one page of the sessions under `prefix` as the overlay sees them
/// (stored state and the writes pending in this batch, so that the outcome does not depend
/// on how entries were grouped into batches), read in bounded pages; the cursor is kept under
/// `cursor_key`.
fn gc_session_page<R: SmRead + ?Sized>(
    ov: &mut Overlay<'_, R>,
    time: u64,
    prefix: u8,
    cursor_key: &[u8],
) -> Result<(), SmError> {
    let cursor = ov_u64(ov, cursor_key)?;
    let mut lo = vec![prefix];
    lo.extend_from_slice(&cursor.to_be_bytes());
    let (keys, more) = merged_keys(ov, lo, vec![prefix + 1], SESSION_GC_PER_OPEN)?;
    let mut next = 0;
    for k in keys {
        if k.len() != 9 {
            continue;
        }
        let Some(v) = ov.get(&k)? else { continue };
        let last_used_ms = if prefix == SESSION {
            decode::<SessionRecord>(&k, &v)?.last_used_ms
        } else {
            decode::<OwnedSessionRecord>(&k, &v)?.last_used_ms
        };
        let mut a = [0u8; 8];
        a.copy_from_slice(&k[1..]);
        next = u64::from_be_bytes(a).saturating_add(1);
        if time.saturating_sub(last_used_ms) > SESSION_TTL_MS {
            ov.delete(k);
        }
    }
    let cursor = if more { next } else { 0 };
    ov.put(cursor_key.to_vec(), cursor.to_le_bytes().to_vec());
    Ok(())
}

/// How a command's result is bounded ([`apply_op_checked`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Bound {
    /// Cluster version 2 or later: a result over [`limits::RESULT_BYTES_MAX`] undoes the
    /// command, which is answered with an error.
    Result,
    /// Before it, outside a session: as in 0.1.0 the writes stay (a 0.1.0 replica keeps them);
    /// only the answer is an error.
    LegacyAnswer,
    /// Before it, in a session: the result is kept in the session record as in 0.1.0, as long
    /// as the record fits a state-machine value (0.1.0 stopped beyond).
    LegacySession,
}

/// What [`apply_op`] did.
enum Applied {
    /// The operation's result.
    Done(Result<Response, ApiError>),
    /// The result would pass the budget (it was not kept); the writes were made.
    TooLarge,
    /// The operation cannot be applied; undo its writes.
    Undo(String),
}

fn too_large() -> ApiError {
    ApiError::InvalidRequest(format!(
        "the results of this transaction would take more than {} bytes; nothing was changed: read large values \
         with separate (paged) reads",
        limits::RESULT_BYTES_MAX
    ))
}

/// Applies `op` and checks what it did: its writes against the store's limits and its result
/// against `bound`. A check that fails undoes the operation's writes and gives an error result,
/// the same on every replica.
fn apply_op_checked<R: SmRead + ?Sized>(
    ov: &mut Overlay<'_, R>,
    op: OpRef<'_>,
    bound: Bound,
) -> Result<Result<Response, ApiError>, SmError> {
    let mark = ov.mark();
    let budget = match bound {
        Bound::Result | Bound::LegacyAnswer => limits::RESULT_BYTES_MAX,
        Bound::LegacySession => SM_VALUE_BYTES_MAX,
    };
    let applied = apply_op(ov, op, budget)?;
    if let Err(why) = ov.check_since(mark) {
        ov.rollback_to(mark);
        return Ok(Err(ApiError::InvalidRequest(format!("{why}; nothing was changed"))));
    }
    let result = match applied {
        Applied::Done(r) => r,
        Applied::Undo(why) => {
            ov.rollback_to(mark);
            return Ok(Err(ApiError::InvalidRequest(format!("{why}; nothing was changed"))));
        }
        Applied::TooLarge => {
            return Ok(Err(match bound {
                Bound::LegacyAnswer => ApiError::InvalidRequest(format!(
                    "the transaction was applied, but its results take more than {} bytes and cannot be sent \
                     (cluster version 1: finalize the cluster to have such a transaction refused instead)",
                    limits::RESULT_BYTES_MAX
                )),
                Bound::LegacySession => {
                    // 0.1.0 stopped here, on every replica and at every restart.
                    ov.rollback_to(mark);
                    ApiError::InvalidRequest(format!(
                        "the result of this write would make its session record more than the {SM_VALUE_BYTES_MAX} \
                         bytes a state-machine value may hold; nothing was changed"
                    ))
                }
                Bound::Result => {
                    ov.rollback_to(mark);
                    too_large()
                }
            }));
        }
    };
    if bound == Bound::Result && encoded_len(&result) > limits::RESULT_BYTES_MAX {
        ov.rollback_to(mark);
        return Ok(Err(too_large()));
    }
    Ok(result)
}

/// A borrowed view of a key-value operation, from a plain [`CommandOp`] or a [`KvOp`].
#[derive(Clone, Copy, Debug)]
enum OpRef<'a> {
    Put {
        key: &'a [u8],
        value: &'a [u8],
    },
    Delete {
        key: &'a [u8],
    },
    Cas {
        key: &'a [u8],
        expected: Option<&'a [u8]>,
        value: &'a [u8],
    },
    Txn(&'a Txn),
    DeleteRange {
        start: &'a [u8],
        end: &'a [u8],
    },
    PutLeased {
        key: &'a [u8],
        value: &'a [u8],
        lease: quorate_api::LeaseId,
        principal: &'a str,
        admin: bool,
    },
    /// Not a key-value operation (`known`), or one this build does not know.
    Other {
        known: bool,
    },
}

impl<'a> OpRef<'a> {
    fn of(op: &'a CommandOp) -> OpRef<'a> {
        match op {
            CommandOp::Put { key, value } => OpRef::Put { key, value },
            CommandOp::Delete { key } => OpRef::Delete { key },
            CommandOp::Cas { key, expected, value } => OpRef::Cas { key, expected: expected.as_deref(), value },
            CommandOp::Txn(t) => OpRef::Txn(t),
            CommandOp::DeleteRange { start, end } => OpRef::DeleteRange { start, end },
            CommandOp::OpenSession
            | CommandOp::SetMemberAddr { .. }
            | CommandOp::SetClusterVersion { .. }
            | CommandOp::OpenSessionFor { .. }
            | CommandOp::Compact { .. }
            | CommandOp::ByPrincipal { .. }
            | CommandOp::LeaseGrant { .. }
            | CommandOp::LeaseRevoke { .. }
            | CommandOp::LeaseExpire { .. } => OpRef::Other { known: true },
            _ => OpRef::Other { known: false },
        }
    }

    fn of_kv(op: &'a KvOp, principal: &'a str) -> OpRef<'a> {
        match op {
            KvOp::Put { key, value } => OpRef::Put { key, value },
            KvOp::Delete { key } => OpRef::Delete { key },
            KvOp::Cas { key, expected, value } => OpRef::Cas { key, expected: expected.as_deref(), value },
            KvOp::Txn(t) => OpRef::Txn(t),
            KvOp::DeleteRange { start, end } => OpRef::DeleteRange { start, end },
            KvOp::PutLeased { key, value, lease, admin } => {
                OpRef::PutLeased { key, value, lease: *lease, principal, admin: *admin }
            }
            _ => OpRef::Other { known: false },
        }
    }
}

fn apply_op<R: SmRead + ?Sized>(ov: &mut Overlay<'_, R>, op: OpRef<'_>, budget: usize) -> Result<Applied, SmError> {
    let rev = ov_u64(ov, META_REVISION)?;
    let next = rev + 1;
    let mut changed = false;
    let response = match op {
        OpRef::Put { key, value } => {
            put(ov, key, value.to_vec(), next)?;
            changed = true;
            Response::Put { revision: next }
        }
        OpRef::PutLeased { key, value, lease, principal, admin } => {
            let cv = ov_cluster_version(ov)?;
            if cv < leases::LEASES_CLUSTER_VERSION {
                return Ok(Applied::Done(Err(gated("a put with a lease", leases::LEASES_CLUSTER_VERSION, cv))));
            }
            if let Err(e) = leases::check_attach(ov, principal, admin, lease, key, value.len())? {
                return Ok(Applied::Done(Err(e)));
            }
            put(ov, key, value.to_vec(), next)?;
            leases::attach(ov, lease, key, value.len())?;
            changed = true;
            Response::Put { revision: next }
        }
        OpRef::Delete { key } => {
            let old = get_kv(ov, key)?;
            let deleted = old.is_some();
            if let Some(old) = old {
                history::record(ov, key, &old, next)?;
                events::on_delete(ov, key, next)?;
                ov.delete(kv_key(key));
                leases::detach(ov, key)?;
                changed = true;
            }
            Response::Delete { deleted, revision: if deleted { next } else { rev } }
        }
        OpRef::Cas { key, expected, value } => {
            let previous = get_kv(ov, key)?;
            let succeeded = previous.as_ref().map(|r| r.value.as_slice()) == expected;
            if succeeded {
                put(ov, key, value.to_vec(), next)?;
                changed = true;
            }
            Response::Cas {
                succeeded,
                previous: previous.map(|r| to_kv(key, r)),
                revision: if succeeded { next } else { rev },
            }
        }
        OpRef::Txn(txn) => {
            let eval = eval_txn(ov, txn, next, 0, budget)?;
            if let Some(why) = eval.invalid {
                return Ok(Applied::Undo(why));
            }
            if eval.changed {
                ov.put(META_REVISION.to_vec(), next.to_le_bytes().to_vec());
                maintain_history(ov)?;
            }
            if eval.next.is_some() {
                return Ok(Applied::TooLarge);
            }
            return Ok(Applied::Done(Ok(Response::Txn {
                succeeded: eval.succeeded,
                results: eval.results,
                revision: if eval.changed { next } else { rev },
            })));
        }
        OpRef::DeleteRange { start, end } => {
            let cv = ov_cluster_version(ov)?;
            if cv < DELETE_RANGE_CLUSTER_VERSION {
                // What a 0.1.0 replica answers too (it cannot decode the command): no replica
                // changes anything, so mixed-version replicas stay identical.
                return Ok(Applied::Done(Err(gated("delete-range", DELETE_RANGE_CLUSTER_VERSION, cv))));
            }
            if history::enabled(ov)? {
                let (keys, mut more) = range_keys(ov, start, end, history::HISTORY_RANGE_KEYS_MAX)?;
                let (mut deleted, mut bytes, mut key_bytes) = (0u64, 0usize, 0usize);
                // A leased key's detach writes up to three more (leases::DETACH_WRITES_MAX, at
                // most the four a delete makes): it counts as two keys against
                // HISTORY_RANGE_KEYS_MAX, so the command stays within COMMAND_WRITES_MAX.
                // Without leases the count is the keys deleted, as before.
                let mut weight = 0usize;
                let with_events = events::enabled(ov)?;
                for k in &keys {
                    if bytes >= history::HISTORY_RANGE_BYTES_MAX
                        || (with_events && key_bytes >= events::EVENTS_RANGE_KEY_BYTES_MAX)
                        || weight >= history::HISTORY_RANGE_KEYS_MAX
                    {
                        more = true;
                        break;
                    }
                    let user = &k[1..];
                    if let Some(old) = get_kv(ov, user)? {
                        bytes = bytes.saturating_add(history::record(ov, user, &old, next)?);
                        events::on_delete(ov, user, next)?;
                        if leases::detach(ov, user)? {
                            weight += 1;
                        }
                        key_bytes = key_bytes.saturating_add(user.len());
                    }
                    ov.delete(k.clone());
                    deleted += 1;
                    weight += 1;
                }
                changed = deleted > 0;
                Response::DeletedRange { deleted, more, revision: if changed { next } else { rev } }
            } else {
                let (keys, more) = range_keys(ov, start, end, limits::SCAN_LIMIT_MAX as usize)?;
                changed = !keys.is_empty();
                let deleted = keys.len() as u64;
                for k in keys {
                    ov.delete(k);
                }
                Response::DeletedRange { deleted, more, revision: if changed { next } else { rev } }
            }
        }
        OpRef::Other { known: true } => {
            return Ok(Applied::Done(Err(ApiError::InvalidRequest("not a key-value operation".into()))));
        }
        OpRef::Other { known: false } => {
            return Ok(Applied::Done(Err(ApiError::InvalidRequest("unknown command (newer version?)".into()))));
        }
    };
    if changed {
        ov.put(META_REVISION.to_vec(), next.to_le_bytes().to_vec());
        maintain_history(ov)?;
    }
    Ok(Applied::Done(Ok(response)))
}

/// The stored keys (prefixed) of the user keys in `[start, end)` as `ov` sees them — the base
/// merged with the writes pending in this batch, so the result does not depend on how entries
/// were grouped into batches — at most `limit`, and whether more remain.
fn range_keys<R: SmRead + ?Sized>(
    ov: &Overlay<'_, R>,
    start: &[u8],
    end: &[u8],
    limit: usize,
) -> Result<(Vec<Vec<u8>>, bool), SmError> {
    merged_keys(ov, kv_key(start), kv_key(end), limit)
}

/// The state-machine keys in `[lo, hi)` as `ov` sees them (the base merged with the pending
/// writes), at most `limit`, and whether more remain. The base is read in pages bounded in
/// pairs and bytes; values are not kept.
fn merged_keys<R: SmRead + ?Sized>(
    ov: &Overlay<'_, R>,
    lo: Vec<u8>,
    hi: Vec<u8>,
    limit: usize,
) -> Result<(Vec<Vec<u8>>, bool), SmError> {
    let mut keys = std::collections::BTreeSet::new();
    if !ov.clear {
        let mut from = lo.clone();
        // Enough base keys that pending deletes in the range cannot starve the result.
        let want = limit + 1 + ov.writes.range(lo.clone()..hi.clone()).count();
        'pages: while keys.len() < want {
            // No more pairs than could be kept: the result is the same, the reads fewer.
            let page = ov.base.sm_scan_bounded(&from, PAGE.min(want - keys.len()), SCAN_READ_BYTES_MAX)?;
            if page.is_empty() {
                break;
            }
            for (k, _) in page {
                if k >= hi {
                    break 'pages;
                }
                from = k.clone();
                from.push(0);
                keys.insert(k);
            }
        }
    }
    for (k, v) in ov.writes.range(lo..hi) {
        if v.is_some() {
            keys.insert(k.clone());
        } else {
            keys.remove(k);
        }
    }
    let more = keys.len() > limit;
    Ok((keys.into_iter().take(limit).collect(), more))
}

/// After a command's writes: drops what compaction (or the bounds) left in the history and the
/// event index, a bounded number each.
fn maintain_history<R: SmRead + ?Sized>(ov: &mut Overlay<'_, R>) -> Result<(), SmError> {
    history::maintain(ov, history::HISTORY_DROP_PER_COMMAND)?;
    events::maintain(ov, events::EVENTS_DROP_PER_COMMAND)?;
    Ok(())
}

fn put<R: SmRead + ?Sized>(ov: &mut Overlay<'_, R>, key: &[u8], value: Vec<u8>, rev: u64) -> Result<(), SmError> {
    // A put detaches the key from its lease (a put with a lease attaches it again after).
    leases::detach(ov, key)?;
    let rec = match get_kv(ov, key)? {
        Some(old) => {
            history::record(ov, key, &old, rev)?;
            KvRecord { value, create_revision: old.create_revision, mod_revision: rev, version: old.version + 1 }
        }
        None => KvRecord { value, create_revision: rev, mod_revision: rev, version: 1 },
    };
    ov.put(kv_key(key), encode(&rec));
    events::on_put(ov, key, rev)
}

fn compare_holds(actual: Option<&KvRecord>, c: &Compare) -> bool {
    use std::cmp::Ordering;
    let ord = match &c.target {
        CompareTarget::Value(v) => actual.map(|r| &r.value).cmp(&v.as_ref()),
        CompareTarget::ModRevision(n) => actual.map_or(0, |r| r.mod_revision).cmp(n),
        CompareTarget::CreateRevision(n) => actual.map_or(0, |r| r.create_revision).cmp(n),
        CompareTarget::Version(n) => actual.map_or(0, |r| r.version).cmp(n),
        _ => return false,
    };
    match c.op {
        CompareOp::Equal => ord == Ordering::Equal,
        CompareOp::NotEqual => ord != Ordering::Equal,
        CompareOp::Less => ord == Ordering::Less,
        CompareOp::Greater => ord == Ordering::Greater,
        _ => false,
    }
}

/// What evaluating a transaction gave.
struct TxnEval {
    /// Whether the comparisons held.
    succeeded: bool,
    /// The results kept, from the first operation asked for.
    results: Vec<TxnResult>,
    /// Whether anything was written.
    changed: bool,
    /// The first operation whose result did not fit the budget (its result and the later
    /// ones were not kept; the later writes were made all the same).
    next: Option<usize>,
    /// Why the transaction cannot be applied (an operation this build does not know).
    invalid: Option<String>,
}

/// Evaluates a transaction at revision `next_rev` (used if it writes): the comparisons, then
/// the branch's operations, keeping the results from operation `from` on while their encoded
/// size stays within `result_bytes_max` (the first one kept always).
fn eval_txn<R: SmRead + ?Sized>(
    ov: &mut Overlay<'_, R>,
    txn: &Txn,
    next_rev: u64,
    from: usize,
    result_bytes_max: usize,
) -> Result<TxnEval, SmError> {
    let mut succeeded = true;
    for c in &txn.compare {
        let actual = get_kv(ov, &c.key)?;
        if !compare_holds(actual.as_ref(), c) {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded { &txn.success } else { &txn.failure };
    let mut eval = TxnEval { succeeded, results: Vec::new(), changed: false, next: None, invalid: None };
    let mut used = 0usize;
    for (i, op) in ops.iter().enumerate() {
        let result = match op {
            TxnOp::Put { key, value } => {
                put(ov, key, value.clone(), next_rev)?;
                eval.changed = true;
                TxnResult::Put
            }
            TxnOp::Delete { key } => {
                let old = get_kv(ov, key)?;
                let existed = old.is_some();
                if let Some(old) = old {
                    history::record(ov, key, &old, next_rev)?;
                    events::on_delete(ov, key, next_rev)?;
                    ov.delete(kv_key(key));
                    leases::detach(ov, key)?;
                    eval.changed = true;
                }
                TxnResult::Delete(existed)
            }
            // A result not kept is not read.
            TxnOp::Get { .. } if i < from || eval.next.is_some() => continue,
            TxnOp::Get { key } => TxnResult::Get(get_kv(ov, key)?.map(|r| to_kv(key, r))),
            _ => {
                eval.invalid = Some("unknown transaction operation (newer version?)".into());
                return Ok(eval);
            }
        };
        if i < from || eval.next.is_some() {
            continue;
        }
        let len = encoded_len(&result);
        if !eval.results.is_empty() && used.saturating_add(len) > result_bytes_max {
            eval.next = Some(i);
            continue;
        }
        used = used.saturating_add(len);
        eval.results.push(result);
    }
    Ok(eval)
}

/// A lower bound of the encoded size of the results `txn` would get if it were applied to the
/// state `r` holds now: the keys and values its gets would read (each get sees the
/// transaction's own earlier puts and deletes, as [`eval_txn`] does), for the smaller of its
/// two branches when it has comparisons (which branch runs is decided at apply; without
/// comparisons the success branch runs). The leader refuses a writing transaction
/// whose bound passes [`limits::RESULT_BYTES_MAX`] before proposing it, with the error apply
/// would give it ([`txn_results_too_large`]): such a transaction is then never logged, and
/// costs no replica its reads. The state may change before the transaction would have been
/// applied (a value shrunk or deleted in between); apply's own check stays, and decides then.
#[cfg(test)]
pub(crate) fn txn_result_bytes_min<R: SmRead + ?Sized>(r: &R, txn: &Txn) -> Result<u64, SmError> {
    Ok(txn_bound(r, txn)?.result_bytes_min)
}

/// What bounding a transaction's results found ([`txn_bound`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TxnBound {
    /// The lower bound of its results ([`txn_result_bytes_min`]).
    pub(crate) result_bytes_min: u64,
    /// The bytes of the stored values read to find it (each key read once): what bounding
    /// it cost, charged to its principal when it is refused.
    pub(crate) read_bytes: u64,
}

/// [`txn_result_bytes_min`], with the bytes read to find it.
pub(crate) fn txn_bound<R: SmRead + ?Sized>(r: &R, txn: &Txn) -> Result<TxnBound, SmError> {
    // Stored sizes by key (0: absent), each key read once.
    let mut stored: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    let mut branch = |ops: &[TxnOp]| -> Result<u64, SmError> {
        let mut own: BTreeMap<&[u8], u64> = BTreeMap::new();
        let mut total = 0u64;
        for op in ops {
            match op {
                TxnOp::Put { key, value } => {
                    own.insert(key.as_slice(), (key.len() + value.len()) as u64);
                }
                TxnOp::Delete { key } => {
                    own.insert(key.as_slice(), 0);
                }
                TxnOp::Get { key } => {
                    let bytes = match own.get(key.as_slice()) {
                        Some(b) => *b,
                        None => match stored.get(key.as_slice()) {
                            Some(b) => *b,
                            None => {
                                let b = stored_value_bytes(r, key)?.map_or(0, |v| (key.len() + v) as u64);
                                stored.insert(key.clone(), b);
                                b
                            }
                        },
                    };
                    total = total.saturating_add(bytes);
                }
                // An operation this build does not know reads nothing it can count.
                _ => {}
            }
        }
        Ok(total)
    };
    let success = branch(&txn.success)?;
    // Without a comparison the success branch runs.
    let result_bytes_min = if txn.compare.is_empty() { success } else { success.min(branch(&txn.failure)?) };
    let read_bytes = stored.values().sum();
    Ok(TxnBound { result_bytes_min, read_bytes })
}

/// A stored key's record with its value borrowed, not copied: [`KvRecord`]'s encoding.
#[derive(Deserialize)]
struct KvRecordRef<'a> {
    #[serde(borrow)]
    value: &'a [u8],
    _create_revision: u64,
    _mod_revision: u64,
    _version: u64,
}

/// The size of the value stored under `key` (`None`: absent), read without a second copy of
/// the value. The record is checked as [`decode`] checks it.
fn stored_value_bytes<R: SmRead + ?Sized>(r: &R, key: &[u8]) -> Result<Option<usize>, SmError> {
    let k = kv_key(key);
    let Some(bytes) = r.sm_get(&k)? else { return Ok(None) };
    let (rec, rest): (KvRecordRef<'_>, _) =
        postcard::take_from_bytes(&bytes).map_err(|e| corrupt(&k, e.to_string()))?;
    if !rest.is_empty() {
        return Err(corrupt(&k, format!("{} trailing bytes", rest.len())));
    }
    Ok(Some(rec.value.len()))
}

/// The error of a transaction whose results cannot fit an answer: apply's own (after undoing
/// it, from cluster version 2), and the leader's when it refuses one before proposing it.
pub(crate) fn txn_results_too_large() -> ApiError {
    too_large()
}

/// The global revision in the state `ov` sees.
pub(crate) fn ov_revision<R: SmRead + ?Sized>(ov: &Overlay<'_, R>) -> Result<u64, SmError> {
    ov_u64(ov, META_REVISION)
}

/// The log time (ms) in the state `ov` sees.
pub(crate) fn ov_log_time_ms<R: SmRead + ?Sized>(ov: &Overlay<'_, R>) -> Result<u64, SmError> {
    ov_u64(ov, META_TIME)
}

/// The revision in `r`.
pub(crate) fn revision(r: &(impl SmRead + ?Sized)) -> Result<u64, SmError> {
    get_u64(r, META_REVISION)
}

/// The log time (ms) of the last applied command.
pub(crate) fn log_time_ms(r: &(impl SmRead + ?Sized)) -> Result<u64, SmError> {
    get_u64(r, META_TIME)
}

/// Reads one key.
pub(crate) fn read_get<R: SmRead + ?Sized>(r: &R, key: &[u8]) -> Result<Option<KeyValue>, SmError> {
    let ov = Overlay::new(r);
    Ok(get_kv(&ov, key)?.map(|rec| to_kv(key, rec)))
}

/// One page of a scan.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub(crate) struct ScanPage {
    /// The pairs, in key order.
    pub(crate) kvs: Vec<KeyValue>,
    /// The key the next page starts at (a key of the range that this page did not hold);
    /// `None`: the range holds no more keys.
    pub(crate) next: Option<Vec<u8>>,
}

/// Keys in `[start, end)`: at most `limit` pairs whose encoded size stays within
/// `result_bytes_max` (the first pair always), and where the next page starts. The store is
/// read in pages bounded in pairs and bytes.
pub(crate) fn read_scan_page<R: SmRead + ?Sized>(
    r: &R,
    start: &[u8],
    end: Option<&[u8]>,
    limit: u32,
    result_bytes_max: usize,
) -> Result<ScanPage, SmError> {
    let limit = limit as usize;
    let mut kvs = Vec::new();
    let mut used = 0usize;
    let mut from = kv_key(start);
    loop {
        let want = PAGE.min(limit + 1 - kvs.len()).max(1);
        let budget = result_bytes_max.saturating_sub(used).clamp(1, SCAN_READ_BYTES_MAX);
        let page = r.sm_scan_bounded(&from, want, budget)?;
        if page.is_empty() {
            return Ok(ScanPage { kvs, next: None });
        }
        for (k, v) in page {
            if k.first() != Some(&KV) {
                return Ok(ScanPage { kvs, next: None });
            }
            let user = &k[1..];
            if end.is_some_and(|e| user >= e) {
                return Ok(ScanPage { kvs, next: None });
            }
            if kvs.len() == limit {
                return Ok(ScanPage { kvs, next: Some(user.to_vec()) });
            }
            let rec: KvRecord = decode(&k, &v)?;
            let kv = to_kv(user, rec);
            let len = encoded_len(&kv);
            if !kvs.is_empty() && used.saturating_add(len) > result_bytes_max {
                return Ok(ScanPage { kvs, next: Some(user.to_vec()) });
            }
            used = used.saturating_add(len);
            kvs.push(kv);
            from = k;
            from.push(0);
        }
    }
}

/// Keys in `[start, end)`, at most `limit` and at most [`PAGE_RESULT_BYTES_MAX`] bytes of them;
/// and whether more lie in the range.
#[cfg(test)]
pub(crate) fn read_scan<R: SmRead + ?Sized>(
    r: &R,
    start: &[u8],
    end: Option<&[u8]>,
    limit: u32,
) -> Result<(Vec<KeyValue>, bool), SmError> {
    let page = read_scan_page(r, start, end, limit, PAGE_RESULT_BYTES_MAX)?;
    let more = page.next.is_some();
    Ok((page.kvs, more))
}

/// One page of a read-only transaction.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub(crate) struct TxnPage {
    /// Whether the comparisons held.
    pub(crate) succeeded: bool,
    /// The results from the page's first operation on.
    pub(crate) results: Vec<TxnResult>,
    /// The operation the next page starts at; `None`: this was the last page.
    pub(crate) next: Option<u32>,
}

/// Evaluates a read-only transaction: the results of the branch's operations from `from` on,
/// while their encoded size stays within `result_bytes_max` (the first one always). A
/// transaction this build cannot evaluate is the client's error, not the store's.
pub(crate) fn read_txn_page<R: SmRead + ?Sized>(
    r: &R,
    txn: &Txn,
    from: u32,
    result_bytes_max: usize,
) -> Result<Result<TxnPage, ApiError>, SmError> {
    let mut ov = Overlay::new(r);
    let eval = eval_txn(&mut ov, txn, 0, from as usize, result_bytes_max)?;
    if let Some(why) = eval.invalid {
        return Ok(Err(ApiError::InvalidRequest(why)));
    }
    Ok(Ok(TxnPage { succeeded: eval.succeeded, results: eval.results, next: eval.next.map(|n| n as u32) }))
}

/// Evaluates a read-only transaction whole (tests).
#[cfg(test)]
pub(crate) fn read_txn<R: SmRead + ?Sized>(r: &R, txn: &Txn) -> Result<(bool, Vec<TxnResult>), SmError> {
    match read_txn_page(r, txn, 0, usize::MAX)? {
        Ok(page) => Ok((page.succeeded, page.results)),
        Err(e) => Err(corrupt(b"txn", e.to_string())),
    }
}

/// The member addresses recorded through the log.
pub(crate) fn member_addrs<R: SmRead + ?Sized>(r: &R) -> Result<BTreeMap<NodeId, String>, SmError> {
    let mut out = BTreeMap::new();
    for (k, v) in r.sm_scan(&[ADDR], quorate_log::MEMBERS_MAX * 4)? {
        if k.first() != Some(&ADDR) {
            break;
        }
        let a: [u8; 8] = k[1..].try_into().map_err(|_| corrupt(&k, "bad member key"))?;
        let Some(id) = NodeId::new(u64::from_be_bytes(a)) else { continue };
        out.insert(id, String::from_utf8(v).map_err(|_| corrupt(&k, "address is not UTF-8"))?);
    }
    Ok(out)
}

/// The state-machine record of a member address (what a membership change records), for
/// tools that rewrite membership offline (`quorate snapshot restore`).
#[must_use]
pub(crate) fn member_addr_record(id: NodeId, addr: &str) -> SmPair {
    (addr_key(id), addr.as_bytes().to_vec())
}

/// Whether a state-machine key is a member address record.
#[must_use]
pub(crate) fn is_member_addr_key(key: &[u8]) -> bool {
    key.len() == 9 && key[0] == ADDR
}

/// Whether a state-machine key is a client key-value pair (what `kv scan` sees), as opposed
/// to sessions, member addresses and metadata.
#[must_use]
pub(crate) fn is_kv_key(key: &[u8]) -> bool {
    key.first() == Some(&KV)
}

/// The member id and address of a member address record, if `(key, value)` is one.
#[must_use]
pub(crate) fn member_addr_of(key: &[u8], value: &[u8]) -> Option<(u64, String)> {
    if !is_member_addr_key(key) {
        return None;
    }
    let id = u64::from_be_bytes(key[1..].try_into().ok()?);
    Some((id, String::from_utf8_lossy(value).into_owned()))
}

/// Streams every state-machine pair into `out` (`u32 LE key length | key | u32 LE value
/// length | value`, repeated). Returns the number of pairs.
pub(crate) fn write_snapshot_data<R: SmRead + ?Sized>(r: &R, out: &mut impl Write) -> Result<u64, SmError> {
    let io = |e: std::io::Error| SmError::Storage(StoreError::Io(format!("writing snapshot: {e}")));
    let mut from = Vec::new();
    let mut n = 0;
    loop {
        // Bounded in bytes too: a page of large values is never held whole.
        let page = r.sm_scan_bounded(&from, PAGE, SCAN_READ_BYTES_MAX)?;
        if page.is_empty() {
            return Ok(n);
        }
        for (k, v) in page {
            out.write_all(&(k.len() as u32).to_le_bytes()).map_err(io)?;
            out.write_all(&k).map_err(io)?;
            out.write_all(&(v.len() as u32).to_le_bytes()).map_err(io)?;
            out.write_all(&v).map_err(io)?;
            n += 1;
            from = k;
            from.push(0);
        }
    }
}

/// Reads pairs written by [`write_snapshot_data`], bounded, calling `f` for each.
pub(crate) fn read_snapshot_data(
    input: &mut impl Read,
    f: impl FnMut(Vec<u8>, Vec<u8>) -> Result<(), SmError>,
) -> Result<u64, SmError> {
    quorate_log::snapshot_file::read_pairs(
        input,
        SM_KEY_BYTES_MAX,
        SM_VALUE_BYTES_MAX,
        |d: String| corrupt(b"snapshot", d),
        f,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorate_api::Sequenced;

    type Map = BTreeMap<Vec<u8>, Vec<u8>>;

    fn run(map: &mut Map, index: u64, time_ms: u64, session: Option<Sequenced>, op: CommandOp) -> ApplyOutcome {
        let snapshot = map.clone();
        let mut ov = Overlay::new(&snapshot);
        let out = apply_command(&mut ov, LogIndex(index), &Command { session, time_ms, op }).unwrap();
        ov.apply_to(map);
        out
    }

    fn put(k: &str, v: &str) -> CommandOp {
        CommandOp::Put { key: k.into(), value: v.into() }
    }

    /// The stored record as 0.1.0 declared it: the value a plain `Vec<u8>`.
    #[derive(PartialEq, Eq, Debug, Serialize, Deserialize)]
    struct KvRecord010 {
        value: Vec<u8>,
        create_revision: u64,
        mod_revision: u64,
        version: u64,
    }

    #[test]
    fn a_kv_record_is_stored_as_0_1_0_stored_it() {
        // Pinned: value "v", revisions 1 and 300, version 2.
        let small = KvRecord { value: b"v".to_vec(), create_revision: 1, mod_revision: 300, version: 2 };
        assert_eq!(encode(&small), [1, b'v', 1, 0xac, 0x02, 2]);
        for len in [0usize, 1, 127, 128, 64 * 1024, limits::VALUE_BYTES_MAX] {
            let value: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let now = KvRecord { value: value.clone(), create_revision: 3, mod_revision: 9, version: 4 };
            let old = KvRecord010 { value, create_revision: 3, mod_revision: 9, version: 4 };
            let bytes = encode(&now);
            assert_eq!(bytes, postcard::to_allocvec(&old).unwrap(), "a value of {len} bytes");
            // Each reads what the other wrote.
            assert_eq!(decode::<KvRecord>(b"k", &bytes).unwrap(), now);
            assert_eq!(decode::<KvRecord010>(b"k", &bytes).unwrap(), old);
        }
    }

    #[test]
    fn revisions_and_versions() {
        let mut m = Map::new();
        assert_eq!(run(&mut m, 1, 0, None, put("a", "1")).result, Ok(Response::Put { revision: 1 }));
        assert_eq!(run(&mut m, 2, 0, None, put("b", "1")).result, Ok(Response::Put { revision: 2 }));
        assert_eq!(run(&mut m, 3, 0, None, put("a", "2")).result, Ok(Response::Put { revision: 3 }));
        let a = read_get(&m, b"a").unwrap().unwrap();
        assert_eq!((a.value.as_slice(), a.create_revision, a.mod_revision, a.version), (&b"2"[..], 1, 3, 2));
        // Deleting a missing key changes nothing.
        let r = run(&mut m, 4, 0, None, CommandOp::Delete { key: "zz".into() }).result;
        assert_eq!(r, Ok(Response::Delete { deleted: false, revision: 3 }));
        let r = run(&mut m, 5, 0, None, CommandOp::Delete { key: "a".into() }).result;
        assert_eq!(r, Ok(Response::Delete { deleted: true, revision: 4 }));
        run(&mut m, 6, 0, None, put("a", "3"));
        let a = read_get(&m, b"a").unwrap().unwrap();
        assert_eq!((a.create_revision, a.version), (5, 1));
        assert_eq!(revision(&m).unwrap(), 5);
        // CAS.
        let r =
            run(&mut m, 7, 0, None, CommandOp::Cas { key: "a".into(), expected: Some("x".into()), value: "y".into() });
        assert!(matches!(r.result, Ok(Response::Cas { succeeded: false, revision: 5, .. })));
        let r =
            run(&mut m, 8, 0, None, CommandOp::Cas { key: "a".into(), expected: Some("3".into()), value: "4".into() });
        assert!(matches!(r.result, Ok(Response::Cas { succeeded: true, revision: 6, .. })));
        let r = run(&mut m, 9, 0, None, CommandOp::Cas { key: "new".into(), expected: None, value: "1".into() });
        assert!(matches!(r.result, Ok(Response::Cas { succeeded: true, revision: 7, .. })));
        // Scan.
        let (kvs, more) = read_scan(&m, b"", None, 2).unwrap();
        assert_eq!(kvs.iter().map(|k| k.key.clone()).collect::<Vec<_>>(), vec![b"a".to_vec(), b"b".to_vec()]);
        assert!(more);
        let (kvs, more) = read_scan(&m, b"b", Some(b"n"), 10).unwrap();
        assert_eq!(kvs.len(), 1);
        assert!(!more);
        let (kvs, more) = read_scan(&m, b"", None, 3).unwrap();
        assert_eq!(kvs.len(), 3);
        assert!(!more);
    }

    #[test]
    fn txn_semantics() {
        let mut m = Map::new();
        run(&mut m, 1, 0, None, put("a", "1"));
        let txn = |v: &str| Txn {
            compare: vec![
                Compare { key: "a".into(), target: CompareTarget::Value(Some(v.into())), op: CompareOp::Equal },
                Compare { key: "b".into(), target: CompareTarget::Version(0), op: CompareOp::Equal },
            ],
            success: vec![TxnOp::Put { key: "b".into(), value: "x".into() }, TxnOp::Get { key: "b".into() }],
            failure: vec![TxnOp::Delete { key: "a".into() }, TxnOp::Get { key: "a".into() }],
        };
        let r = run(&mut m, 2, 0, None, CommandOp::Txn(txn("1"))).result.unwrap();
        let Response::Txn { succeeded: true, results, revision: 2 } = r else { panic!("{r:?}") };
        assert_eq!(results[0], TxnResult::Put);
        assert!(matches!(&results[1], TxnResult::Get(Some(kv)) if kv.value == b"x" && kv.mod_revision == 2));
        // b now exists: the comparison fails, the failure branch runs.
        let r = run(&mut m, 3, 0, None, CommandOp::Txn(txn("1"))).result.unwrap();
        assert_eq!(
            r,
            Response::Txn {
                succeeded: false,
                results: vec![TxnResult::Delete(true), TxnResult::Get(None)],
                revision: 3
            }
        );
        // Read-only transaction and a comparison on an absent key's revisions.
        let ro = Txn {
            compare: vec![Compare { key: "a".into(), target: CompareTarget::ModRevision(1), op: CompareOp::Less }],
            success: vec![TxnOp::Get { key: "b".into() }],
            failure: vec![],
        };
        let (ok, res) = read_txn(&m, &ro).unwrap();
        assert!(ok);
        assert!(matches!(&res[0], TxnResult::Get(Some(_))));
    }

    #[test]
    fn sessions_are_exactly_once_and_expire_by_log_time() {
        let mut m = Map::new();
        let r = run(&mut m, 10, 1_000, None, CommandOp::OpenSession).result;
        assert_eq!(r, Ok(Response::Session(SessionId(10))));
        let s = |seq| Some(Sequenced { session: SessionId(10), seq });
        let first = run(&mut m, 11, 2_000, s(1), put("k", "v")).result;
        assert_eq!(first, Ok(Response::Put { revision: 1 }));
        // A retry: same answer, not applied again.
        let again = run(&mut m, 12, 3_000, s(1), put("k", "v")).result;
        assert_eq!(again, first);
        assert_eq!(revision(&m).unwrap(), 1);
        assert_eq!(read_get(&m, b"k").unwrap().unwrap().version, 1);
        assert_eq!(run(&mut m, 13, 3_000, s(2), put("k", "w")).result, Ok(Response::Put { revision: 2 }));
        assert!(matches!(run(&mut m, 14, 3_000, s(1), put("k", "v")).result, Err(ApiError::InvalidRequest(_))));
        // Unknown session.
        let other = Some(Sequenced { session: SessionId(99), seq: 1 });
        assert_eq!(run(&mut m, 15, 3_000, other, put("k", "v")).result, Err(ApiError::SessionExpired));
        // Log time passes (a wall clock never matters): the session expires.
        run(&mut m, 16, 3_000 + SESSION_TTL_MS + 1, None, put("x", "1"));
        assert_eq!(run(&mut m, 17, 0, s(3), put("k", "z")).result, Err(ApiError::SessionExpired));
        assert_eq!(read_get(&m, b"k").unwrap().unwrap().value, b"w");
        // Log time never goes back.
        assert_eq!(log_time_ms(&m).unwrap(), 3_000 + SESSION_TTL_MS + 1);
    }

    #[test]
    fn session_gc_drops_expired_sessions() {
        let mut m = Map::new();
        run(&mut m, 1, 0, None, CommandOp::OpenSession);
        run(&mut m, 2, 0, None, CommandOp::OpenSession);
        run(&mut m, 3, SESSION_TTL_MS + 10, None, CommandOp::OpenSession);
        let sessions = m.keys().filter(|k| k.first() == Some(&SESSION)).count();
        assert_eq!(sessions, 1);
    }

    #[test]
    fn snapshot_data_round_trips_and_rejects_garbage() {
        let mut m = Map::new();
        for i in 0..10 {
            run(&mut m, i + 1, 0, None, put(&format!("k{i}"), "v"));
        }
        let mut buf = Vec::new();
        let n = write_snapshot_data(&m, &mut buf).unwrap();
        assert_eq!(n as usize, m.len());
        let mut back = Map::new();
        read_snapshot_data(&mut buf.as_slice(), |k, v| {
            back.insert(k, v);
            Ok(())
        })
        .unwrap();
        assert_eq!(back, m);
        let cut = &buf[..buf.len() - 1];
        assert!(read_snapshot_data(&mut &cut[..], |_, _| Ok(())).is_err());
        let huge = u32::MAX.to_le_bytes();
        assert!(read_snapshot_data(&mut &huge[..], |_, _| Ok(())).is_err());
    }

    #[test]
    fn member_addresses_through_the_log() {
        let mut m = Map::new();
        let id = NodeId::new(4).unwrap();
        let out = run(&mut m, 1, 0, None, CommandOp::SetMemberAddr { id, addr: "h:1".into() });
        assert_eq!(out.member_addr, Some((id, "h:1".into())));
        assert_eq!(member_addrs(&m).unwrap().get(&id).map(String::as_str), Some("h:1"));
        assert!(apply_entry(&mut Overlay::new(&m), LogIndex(2), b"\xff\xff").unwrap().result.is_err());
    }

    #[test]
    fn delete_range_is_gated_on_the_committed_cluster_version() {
        let mut m = Map::new();
        for (i, k) in ["a", "b", "c", "d"].iter().enumerate() {
            run(&mut m, i as u64 + 1, 0, None, put(k, "v"));
        }
        let dr = || CommandOp::DeleteRange { start: b"b".to_vec(), end: b"d".to_vec() };
        // Before finalize: refused, nothing changes (what a 0.1.0 replica does too).
        let before = m.clone();
        assert!(matches!(run(&mut m, 5, 0, None, dr()).result, Err(ApiError::InvalidRequest(_))));
        assert_eq!(m, before);
        assert_eq!(cluster_version(&m).unwrap(), quorate_api::CLUSTER_VERSION_INITIAL);
        // Finalize: raised once, never lowered.
        let out = run(&mut m, 6, 0, None, CommandOp::SetClusterVersion { version: 2 });
        assert_eq!(out.cluster_version, Some(2));
        assert_eq!(run(&mut m, 7, 0, None, CommandOp::SetClusterVersion { version: 1 }).cluster_version, None);
        assert_eq!(cluster_version(&m).unwrap(), 2);
        assert_eq!(check_cluster_version(&m).unwrap(), 2);
        // After: b and c go, a and d stay, one new revision.
        let out = run(&mut m, 8, 0, None, dr());
        assert_eq!(out.result, Ok(Response::DeletedRange { deleted: 2, more: false, revision: 5 }));
        assert!(read_get(&m, b"b").unwrap().is_none() && read_get(&m, b"c").unwrap().is_none());
        assert!(read_get(&m, b"a").unwrap().is_some() && read_get(&m, b"d").unwrap().is_some());
        // An empty range changes nothing.
        let out = run(&mut m, 9, 0, None, dr());
        assert_eq!(out.result, Ok(Response::DeletedRange { deleted: 0, more: false, revision: 5 }));
    }

    #[test]
    fn delete_range_sees_writes_pending_in_the_same_batch() {
        let mut m = Map::new();
        run(&mut m, 1, 0, None, CommandOp::SetClusterVersion { version: 2 });
        run(&mut m, 2, 0, None, put("b", "stored"));
        // One batch: put c, delete b, then delete-range [a, z): the result must not depend on
        // how entries were grouped into batches.
        let base = m.clone();
        let mut ov = Overlay::new(&base);
        let cmd = |op| Command { session: None, time_ms: 0, op };
        apply_command(&mut ov, LogIndex(3), &cmd(put("c", "pending"))).unwrap();
        apply_command(&mut ov, LogIndex(4), &cmd(CommandOp::Delete { key: b"b".to_vec() })).unwrap();
        let out = apply_command(
            &mut ov,
            LogIndex(5),
            &cmd(CommandOp::DeleteRange { start: b"a".to_vec(), end: b"z".to_vec() }),
        )
        .unwrap();
        assert!(matches!(out.result, Ok(Response::DeletedRange { deleted: 1, .. })));
        ov.apply_to(&mut m);
        assert!(read_scan(&m, b"a", None, 10).unwrap().0.is_empty());
    }

    /// The store's limits, checked on what a batch would write.
    fn assert_storable(ov: &Overlay<'_, Map>) {
        assert!(ov.len() <= APPLY_OPS_MAX);
        for (k, v) in &ov.writes {
            assert!(k.len() <= SM_KEY_BYTES_MAX, "key of {} bytes", k.len());
            if let Some(v) = v {
                assert!(v.len() <= SM_VALUE_BYTES_MAX, "value of {} bytes under {}", v.len(), k.escape_ascii());
            }
        }
    }

    /// Applies `op` in a batch of its own; the outcome and what the batch stores must be fine.
    fn applicable(map: &mut Map, index: u64, session: Option<Sequenced>, op: CommandOp) -> ApplyOutcome {
        let snapshot = map.clone();
        let mut ov = Overlay::new(&snapshot);
        let out = apply_command(&mut ov, LogIndex(index), &Command { session, time_ms: index, op })
            .expect("a committed entry is always applicable");
        assert_storable(&ov);
        assert!(quorate_api::encoded_len(&out.result) <= limits::RESULT_BYTES_MAX, "result of {:?}", out.result);
        ov.apply_to(map);
        out
    }

    fn finalized() -> Map {
        let mut m = Map::new();
        run(&mut m, 1, 0, None, CommandOp::SetClusterVersion { version: 2 });
        m
    }

    fn big_gets(n: usize) -> Txn {
        let mut ops = vec![TxnOp::Put { key: b"x".to_vec(), value: b"y".to_vec() }];
        ops.extend((0..n).map(|_| TxnOp::Get { key: b"big".to_vec() }));
        Txn { compare: vec![], success: ops, failure: vec![] }
    }

    fn kv(op: CommandOp) -> KvOp {
        KvOp::from_command(op).unwrap()
    }

    /// The leader's bound before proposing a writing transaction: never above what apply
    /// makes of it, and above `RESULT_BYTES_MAX` for the transaction that stopped 0.1.0.
    #[test]
    fn txn_result_bytes_min_is_a_lower_bound_of_what_apply_answers() {
        let mut m = finalized();
        run(&mut m, 2, 0, None, CommandOp::Put { key: b"big".to_vec(), value: vec![1; 1_000_000] });
        run(&mut m, 3, 0, None, put("small", "0123456789"));
        let max = limits::RESULT_BYTES_MAX as u64;
        // 17 gets of 1 MB: refused up front, with apply's own error.
        let txn = big_gets(17);
        assert_eq!(txn_result_bytes_min(&m, &txn).unwrap(), 17 * 1_000_003);
        // Its one value was read once.
        assert_eq!(txn_bound(&m, &txn).unwrap().read_bytes, 1_000_003);
        assert!(txn_result_bytes_min(&m, &txn).unwrap() > max);
        let applied = run(&mut m, 4, 0, None, CommandOp::Txn(txn)).result;
        assert_eq!(applied, Err(txn_results_too_large()));
        // Gets follow the transaction's own writes: a delete first reads nothing, a put first
        // reads the put value.
        let mut ops = vec![TxnOp::Delete { key: b"big".to_vec() }];
        ops.extend((0..17).map(|_| TxnOp::Get { key: b"big".to_vec() }));
        let deleted = Txn { compare: vec![], success: ops, failure: vec![] };
        assert_eq!(txn_result_bytes_min(&m, &deleted).unwrap(), 0);
        let mut ops = vec![TxnOp::Put { key: b"big".to_vec(), value: b"tiny".to_vec() }];
        ops.extend((0..17).map(|_| TxnOp::Get { key: b"big".to_vec() }));
        let shrunk = Txn { compare: vec![], success: ops, failure: vec![] };
        assert_eq!(txn_result_bytes_min(&m, &shrunk).unwrap(), 17 * 7);
        // A conditional transaction: the smaller branch counts (either may run).
        let both = Txn {
            compare: vec![Compare { key: "small".into(), target: CompareTarget::Version(99), op: CompareOp::Equal }],
            success: big_gets(17).success,
            failure: vec![TxnOp::Put { key: "x".into(), value: "y".into() }, TxnOp::Get { key: "small".into() }],
        };
        assert_eq!(txn_result_bytes_min(&m, &both).unwrap(), 15);
        // Absent keys read nothing.
        let absent = Txn { compare: vec![], success: vec![TxnOp::Get { key: "nope".into() }], failure: vec![] };
        assert_eq!(txn_result_bytes_min(&m, &absent).unwrap(), 0);
        // The borrowed read of a record agrees with the owned one.
        assert_eq!(stored_value_bytes(&m, b"big").unwrap(), read_get(&m, b"big").unwrap().map(|kv| kv.value.len()));
        assert_eq!(stored_value_bytes(&m, b"nope").unwrap(), None);
        // Without a comparison only the success branch runs: an empty failure branch does
        // not make the bound zero.
        assert_eq!(big_gets(17).failure, vec![]);
        // The bound never exceeds the encoded results of what apply does.
        for (i, txn) in [deleted, shrunk, both, absent, big_gets(3)].into_iter().enumerate() {
            let bound = txn_result_bytes_min(&m, &txn).unwrap();
            let result = run(&mut m, 10 + i as u64, 0, None, CommandOp::Txn(txn)).result;
            assert!(result.is_ok(), "{result:?}");
            assert!(bound <= encoded_len(&result) as u64, "bound {bound} over {}", encoded_len(&result));
        }
    }

    #[test]
    fn every_kind_of_command_is_applicable_whatever_its_size() {
        let key = vec![b'k'; limits::KEY_BYTES_MAX];
        let value = vec![b'v'; limits::VALUE_BYTES_MAX];
        for cv in [1, 2] {
            let mut m = if cv == 2 { finalized() } else { Map::new() };
            let mut i = 10;
            let mut next = || {
                i += 1;
                i
            };
            // Plain operations at their largest.
            let r = applicable(&mut m, next(), None, CommandOp::Put { key: key.clone(), value: value.clone() });
            assert!(r.result.is_ok());
            applicable(&mut m, next(), None, CommandOp::Put { key: b"big".to_vec(), value: vec![1; 1_000_000] });
            let cas = CommandOp::Cas { key: key.clone(), expected: Some(value.clone()), value: value.clone() };
            assert!(matches!(applicable(&mut m, next(), None, cas).result, Ok(Response::Cas { succeeded: true, .. })));
            assert!(applicable(&mut m, next(), None, CommandOp::Delete { key: key.clone() }).result.is_ok());
            // A transaction of 17 gets of 1 MB: an error result, the put undone (from cluster
            // version 2; before it, as 0.1.0, the put stays and only the answer is an error).
            let before = revision(&m).unwrap();
            let r = applicable(&mut m, next(), None, CommandOp::Txn(big_gets(17)));
            assert!(matches!(&r.result, Err(ApiError::InvalidRequest(_))), "{:?}", r.result);
            assert_eq!(read_get(&m, b"x").unwrap().is_some(), cv == 1, "cluster version {cv}");
            assert_eq!(revision(&m).unwrap(), before + u64::from(cv == 1));
            let gets = Txn {
                compare: vec![],
                success: (0..limits::TXN_OPS_MAX).map(|_| TxnOp::Get { key: b"big".to_vec() }).collect(),
                failure: vec![],
            };
            assert!(applicable(&mut m, next(), None, CommandOp::Txn(gets)).result.is_err());
            // A range delete of many keys.
            for k in 0..100 {
                run(&mut m, next(), 0, None, put(&format!("r{k:03}"), "v"));
            }
            let dr = CommandOp::DeleteRange { start: b"r".to_vec(), end: b"s".to_vec() };
            let r = applicable(&mut m, next(), None, dr);
            assert_eq!(r.result.is_ok(), cv == 2, "{:?}", r.result);
            // Sessions, both kinds.
            let Ok(Response::Session(legacy)) = applicable(&mut m, next(), None, CommandOp::OpenSession).result else {
                panic!()
            };
            let s = Some(Sequenced { session: legacy, seq: 1 });
            assert!(applicable(&mut m, next(), s, CommandOp::Txn(big_gets(17))).result.is_err());
            let open = CommandOp::OpenSessionFor { principal: "alice".into(), nonce: 0xfeed_beef_0000 + cv as u64 };
            let r = applicable(&mut m, next(), None, open);
            assert_eq!(matches!(r.result, Ok(Response::Session(_))), cv == 2, "{:?}", r.result);
            for bad in [
                CommandOp::OpenSessionFor { principal: String::new(), nonce: 7 },
                CommandOp::OpenSessionFor { principal: "p".repeat(10_000), nonce: 8 },
                CommandOp::OpenSessionFor { principal: "alice".into(), nonce: 0 },
            ] {
                assert!(applicable(&mut m, next(), None, bad).result.is_err());
            }
            let owned = Some(Sequenced { session: SessionId(0xfeed_beef_0002), seq: 1 });
            for op in [
                CommandOp::Put { key: key.clone(), value: value.clone() },
                CommandOp::Delete { key: key.clone() },
                CommandOp::Cas { key: key.clone(), expected: None, value: value.clone() },
                CommandOp::Txn(big_gets(17)),
                CommandOp::DeleteRange { start: b"a".to_vec(), end: b"b".to_vec() },
            ] {
                let by = CommandOp::ByPrincipal { principal: "alice".into(), op: kv(op.clone()) };
                let r = applicable(&mut m, next(), owned, by.clone());
                if cv == 1 {
                    assert!(matches!(&r.result, Err(ApiError::InvalidRequest(w)) if w.contains("cluster version")));
                }
                applicable(&mut m, next(), None, by);
                applicable(&mut m, next(), owned.map(|s| Sequenced { seq: 2, ..s }), op);
            }
            // Membership and versions.
            let addr = CommandOp::SetMemberAddr { id: NodeId::new(9).unwrap(), addr: "h".repeat(100_000) };
            assert!(applicable(&mut m, next(), None, addr).result.is_ok());
            assert!(applicable(&mut m, next(), None, CommandOp::SetClusterVersion { version: 2 }).result.is_ok());
            // Bytes that are no command at all.
            let mut ov = Overlay::new(&m);
            assert!(apply_entry(&mut ov, LogIndex(next()), &[0xff; 64]).unwrap().result.is_err());
        }
    }

    #[test]
    fn before_cluster_version_2_a_session_record_too_large_is_undone_and_a_fitting_one_kept() {
        let mut m = Map::new();
        run(&mut m, 1, 0, None, CommandOp::Put { key: b"big".to_vec(), value: vec![1; 1_000_000] });
        let Ok(Response::Session(id)) = run(&mut m, 2, 0, None, CommandOp::OpenSession).result else { panic!() };
        // 17 MB of results: 0.1.0 stopped on every replica here. Undone, answered, remembered.
        let s1 = Some(Sequenced { session: id, seq: 1 });
        let r = applicable(&mut m, 3, s1, CommandOp::Txn(big_gets(17)));
        assert!(matches!(&r.result, Err(ApiError::InvalidRequest(w)) if w.contains("session record")), "{r:?}");
        assert!(read_get(&m, b"x").unwrap().is_none());
        let again = applicable(&mut m, 4, s1, CommandOp::Txn(big_gets(17)));
        assert_eq!((again.result, again.cached), (r.result, true));
        // 5 MB fits a record: kept whole, as a 0.1.0 replica keeps it.
        let s2 = Some(Sequenced { session: id, seq: 2 });
        let r = run(&mut m, 5, 5, s2, CommandOp::Txn(big_gets(5)));
        let Ok(Response::Txn { results, .. }) = &r.result else { panic!("{:?}", r.result) };
        assert_eq!(results.len(), 6);
        assert!(read_get(&m, b"x").unwrap().is_some());
    }

    #[test]
    fn owned_sessions_refuse_other_principals_jumps_and_unbound_writes() {
        let mut m = finalized();
        let open = CommandOp::OpenSessionFor { principal: "alice".into(), nonce: 77 };
        assert_eq!(run(&mut m, 2, 10, None, open.clone()).result, Ok(Response::Session(SessionId(77))));
        // The same id again: taken.
        assert!(matches!(run(&mut m, 3, 10, None, open).result, Err(ApiError::Unavailable(_))));
        let by = |who: &str, k: &str| CommandOp::ByPrincipal { principal: who.into(), op: kv(put(k, who)) };
        let s = |seq| Some(Sequenced { session: SessionId(77), seq });
        assert_eq!(run(&mut m, 4, 10, s(1), by("alice", "k")).result, Ok(Response::Put { revision: 1 }));
        // Bob: the answer an absent session gets, and nothing changes (not even the record).
        let before = m.clone();
        for (index, seq) in [(5, 1), (6, 2)] {
            assert_eq!(run(&mut m, index, 10, s(seq), by("bob", "b")).result, Err(ApiError::SessionExpired));
        }
        assert_eq!(m, before);
        // A write without a principal (a leader that had not applied the cluster version yet).
        assert!(matches!(run(&mut m, 7, 10, s(2), put("k", "u")).result, Err(ApiError::Unavailable(_))));
        // A jump past the window is refused; the next number still works.
        let jump = run(&mut m, 8, 10, s(2 + SESSION_SEQ_AHEAD_MAX), by("alice", "k")).result;
        assert!(matches!(jump, Err(ApiError::InvalidRequest(ref w)) if w.contains("past")), "{jump:?}");
        assert!(matches!(run(&mut m, 9, 10, s(u64::MAX), by("alice", "k")).result, Err(ApiError::InvalidRequest(_))));
        let r = run(&mut m, 10, 10, s(2), by("alice", "k"));
        assert_eq!((r.result.clone(), r.cached), (Ok(Response::Put { revision: 2 }), false));
        // Its retry: from the cache.
        let again = run(&mut m, 11, 10, s(2), by("alice", "k"));
        assert_eq!((again.result, again.cached), (r.result, true));
        assert_eq!(read_get(&m, b"k").unwrap().unwrap().version, 2);
        // A session opened before cluster version 2 cannot be used by a principal-bound write.
        let mut legacy_map = Map::new();
        let Ok(Response::Session(old)) = run(&mut legacy_map, 1, 0, None, CommandOp::OpenSession).result else {
            panic!()
        };
        run(&mut legacy_map, 2, 0, None, CommandOp::SetClusterVersion { version: 2 });
        let old_s = Some(Sequenced { session: old, seq: 1 });
        assert_eq!(run(&mut legacy_map, 3, 0, old_s, by("alice", "k")).result, Err(ApiError::SessionExpired));
        // Owned sessions expire by log time, and unused ones are collected.
        run(&mut m, 12, 10, None, CommandOp::OpenSessionFor { principal: "dave".into(), nonce: 88 });
        let later = 10 + SESSION_TTL_MS + 1;
        assert_eq!(run(&mut m, 13, later, s(3), by("alice", "k")).result, Err(ApiError::SessionExpired));
        assert!(m.contains_key(&owned_session_key(SessionId(88))));
        run(&mut m, 14, later, None, CommandOp::OpenSessionFor { principal: "carol".into(), nonce: 5 });
        assert!(!m.contains_key(&owned_session_key(SessionId(88))));
        assert!(m.contains_key(&owned_session_key(SessionId(5))));
    }

    #[test]
    fn replays_are_answered_from_the_session_table_as_apply_answers_them() {
        let mut m = finalized();
        run(&mut m, 2, 10, None, CommandOp::OpenSessionFor { principal: "alice".into(), nonce: 77 });
        let by = |who: &str, v: &str| CommandOp::ByPrincipal { principal: who.into(), op: kv(put("k", v)) };
        let s = |seq| Some(Sequenced { session: SessionId(77), seq });
        let answer = |m: &Map, who: &str, seq: u64, now: u64| replay_answer(m, SessionId(77), seq, who, now).unwrap();
        // Opened, nothing applied in it: a write at 1 is new (proposed).
        assert_eq!(answer(&m, "alice", 1, 10), None);
        let first = run(&mut m, 3, 10, s(1), by("alice", "1"));
        assert_eq!(
            first.in_session.as_ref().map(|i| (i.session, i.principal.as_str(), i.last_seq)),
            Some((SessionId(77), "alice", 1))
        );
        let second = run(&mut m, 4, 20, s(2), by("alice", "2"));
        // The last sequence number: its original result, from the cache — what apply answers.
        let before = m.clone();
        assert_eq!(answer(&m, "alice", 2, 30), Some((second.result.clone(), true)));
        let applied = run(&mut m, 5, 30, s(2), by("alice", "other"));
        assert_eq!((applied.result, applied.cached), (second.result.clone(), true));
        // An older one: apply's refusal, word for word.
        let older = answer(&before, "alice", 1, 30);
        let applied = run(&mut m, 6, 30, s(1), by("alice", "1"));
        assert_eq!(older, Some((applied.result.clone(), false)));
        assert!(matches!(applied.result, Err(ApiError::InvalidRequest(ref w)) if w.contains("older")));
        // A newer one is proposed; so are another principal's writes (apply refuses them as an
        // absent session), an absent session, and an expired one.
        assert_eq!(answer(&m, "alice", 3, 30), None);
        assert_eq!(answer(&m, "bob", 2, 30), None);
        assert_eq!(answer(&m, "bob", 1, 30), None);
        assert_eq!(replay_answer(&m, SessionId(78), 1, "alice", 30).unwrap(), None);
        let expired = 30 + SESSION_TTL_MS + 1;
        assert_eq!(answer(&m, "alice", 2, expired), None);
        assert_eq!(run(&mut m, 7, expired, s(2), by("alice", "2")).result, Err(ApiError::SessionExpired));
        assert_eq!(answer(&m, "alice", 2, expired), None, "expired and removed");
        assert_eq!(read_get(&m, b"k").unwrap().unwrap().value, b"2".to_vec(), "each write applied once");
        // A session of cluster version 1 is never answered here (it has no owner).
        let mut legacy = Map::new();
        let Ok(Response::Session(old)) = run(&mut legacy, 1, 0, None, CommandOp::OpenSession).result else { panic!() };
        run(&mut legacy, 2, 0, Some(Sequenced { session: old, seq: 1 }), put("k", "v"));
        assert_eq!(replay_answer(&legacy, old, 1, "alice", 0).unwrap(), None);
        assert_eq!(replay_answer(&legacy, old, 1, "", 0).unwrap(), None);
    }

    #[test]
    fn a_rollback_restores_the_overlay_exactly() {
        let base = Map::new();
        let mut ov = Overlay::new(&base);
        ov.put(b"a".to_vec(), b"1".to_vec());
        ov.delete(b"b".to_vec());
        let (writes, bytes) = (ov.writes.clone(), ov.bytes());
        let mark = ov.mark();
        ov.put(b"a".to_vec(), vec![0; 100]);
        ov.put(b"b".to_vec(), b"2".to_vec());
        ov.delete(b"a".to_vec());
        ov.put(b"c".to_vec(), b"3".to_vec());
        assert_ne!(ov.writes, writes);
        ov.rollback_to(mark);
        assert_eq!((ov.writes.clone(), ov.bytes()), (writes, bytes));
        assert_eq!(bytes, 2 + 1);
        // Over the store's limits: refused by the check, before the batch.
        let mark = ov.mark();
        ov.put(vec![b'k'; SM_KEY_BYTES_MAX + 1], vec![]);
        assert!(ov.check_since(mark).is_err());
        ov.rollback_to(mark);
        ov.put(b"v".to_vec(), vec![0; SM_VALUE_BYTES_MAX + 1]);
        assert!(ov.check_since(mark).unwrap_err().contains("value"));
    }

    #[test]
    fn outcomes_and_state_do_not_depend_on_how_entries_are_batched() {
        // Sessions of both kinds opened, used and expired, range deletes and transactions:
        // applied one entry per batch, three per batch and all in one batch, the results and
        // the stored state are the same.
        let mut cmds = vec![Command { session: None, time_ms: 0, op: CommandOp::SetClusterVersion { version: 2 } }];
        let mut t = 0;
        for i in 0..40u64 {
            t += if i % 7 == 0 { SESSION_TTL_MS / 3 } else { 10 };
            let op = match i % 5 {
                0 => CommandOp::OpenSessionFor { principal: "p".into(), nonce: 1000 + i },
                1 => CommandOp::OpenSession,
                2 => CommandOp::ByPrincipal { principal: "p".into(), op: kv(put(&format!("k{i}"), "v")) },
                3 => CommandOp::DeleteRange { start: b"k".to_vec(), end: format!("k{}", i / 2).into_bytes() },
                _ => CommandOp::Txn(big_gets(2)),
            };
            let session = (i % 5 == 2).then_some(Sequenced { session: SessionId(1000 + i - 2), seq: 1 });
            cmds.push(Command { session, time_ms: t, op });
        }
        let apply_in = |per_batch: usize| {
            let mut m = Map::new();
            let mut results = Vec::new();
            for (b, chunk) in cmds.chunks(per_batch).enumerate() {
                let snapshot = m.clone();
                let mut ov = Overlay::new(&snapshot);
                for (j, cmd) in chunk.iter().enumerate() {
                    let index = LogIndex((b * per_batch + j + 1) as u64);
                    results.push(apply_command(&mut ov, index, cmd).unwrap());
                }
                ov.apply_to(&mut m);
            }
            (m, results)
        };
        let one = apply_in(1);
        assert_eq!(apply_in(3), one);
        assert_eq!(apply_in(cmds.len()), one);
        assert!(one.0.keys().any(|k| k.first() == Some(&OWNED_SESSION)));
    }

    #[test]
    fn scan_and_transaction_pages_stay_within_their_byte_budget() {
        let mut m = Map::new();
        for i in 0..10 {
            run(&mut m, i + 1, 0, None, CommandOp::Put { key: format!("k{i}").into_bytes(), value: vec![0; 1000] });
        }
        // About 1 KiB per pair: a 3,500-byte page holds 3 of them.
        let page = read_scan_page(&m, b"", None, 100, 3_500).unwrap();
        assert_eq!(page.kvs.len(), 3);
        assert_eq!(page.next.as_deref(), Some(&b"k3"[..]));
        let rest = read_scan_page(&m, b"k3", None, 100, usize::MAX).unwrap();
        assert_eq!((rest.kvs.len(), rest.next), (7, None));
        // The limit cuts too, and a tiny budget still gives one pair.
        assert_eq!(read_scan_page(&m, b"", None, 2, usize::MAX).unwrap().next.as_deref(), Some(&b"k2"[..]));
        assert_eq!(read_scan_page(&m, b"", None, 100, 1).unwrap().kvs.len(), 1);
        let txn = Txn {
            compare: vec![],
            success: (0..10).map(|i| TxnOp::Get { key: format!("k{i}").into_bytes() }).collect(),
            failure: vec![],
        };
        let first = read_txn_page(&m, &txn, 0, 3_500).unwrap().unwrap();
        assert_eq!((first.results.len(), first.next), (3, Some(3)));
        let second = read_txn_page(&m, &txn, 3, 3_500).unwrap().unwrap();
        assert_eq!((second.results.len(), second.next), (3, Some(6)));
        assert_eq!(second.results[0], first_result(&m, "k3"));
    }

    fn first_result(m: &Map, k: &str) -> TxnResult {
        TxnResult::Get(read_get(m, k.as_bytes()).unwrap())
    }

    #[test]
    fn a_cluster_version_beyond_this_binary_stops_the_replica() {
        let mut m = Map::new();
        let snapshot = m.clone();
        let mut ov = Overlay::new(&snapshot);
        let cmd = Command {
            session: None,
            time_ms: 0,
            op: CommandOp::SetClusterVersion { version: quorate_api::CLUSTER_VERSION + 1 },
        };
        let err = apply_command(&mut ov, LogIndex(1), &cmd).unwrap_err();
        assert!(err.to_string().contains("run a newer `quorate` binary"), "{err}");
        m.insert(META_CLUSTER_VERSION.to_vec(), u64::from(quorate_api::CLUSTER_VERSION + 1).to_le_bytes().to_vec());
        assert!(matches!(check_cluster_version(&m), Err(SmError::ClusterVersionTooNew { .. })));
    }

    /// A map that counts what is read of it (the store's stand-in).
    struct Counting {
        map: Map,
        meta_gets: std::cell::RefCell<Vec<Vec<u8>>>,
        scans: std::cell::Cell<usize>,
        /// Point reads of keys other than the bookkeeping keys.
        other_gets: std::cell::RefCell<Vec<Vec<u8>>>,
    }

    impl Counting {
        fn new(map: Map) -> Counting {
            Counting {
                map,
                meta_gets: std::cell::RefCell::new(Vec::new()),
                scans: std::cell::Cell::new(0),
                other_gets: std::cell::RefCell::new(Vec::new()),
            }
        }
    }

    impl SmRead for Counting {
        fn sm_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, SmError> {
            if key.starts_with(META_PREFIX) {
                self.meta_gets.borrow_mut().push(key.to_vec());
            } else {
                self.other_gets.borrow_mut().push(key.to_vec());
            }
            self.map.sm_get(key)
        }
        fn sm_scan(&self, from: &[u8], limit: usize) -> Result<Vec<SmPair>, SmError> {
            self.scans.set(self.scans.get() + 1);
            self.map.sm_scan(from, limit)
        }
        fn sm_scan_range(
            &self,
            from: &[u8],
            end: Option<&[u8]>,
            limit: usize,
            bytes_max: usize,
        ) -> Result<Vec<SmPair>, SmError> {
            self.scans.set(self.scans.get() + 1);
            self.map.sm_scan_range(from, end, limit, bytes_max)
        }
    }

    #[test]
    fn bookkeeping_carried_from_batch_to_batch_is_not_read_again_and_stores_the_same_bytes() {
        // Every kind of command that touches the bookkeeping: the cluster version raised
        // (history and events start), puts over a key (history recorded), deletes, a
        // compaction (entries dropped, the scan start moved), both kinds of session, and a
        // command that is undone.
        let mut cmds = vec![CommandOp::SetClusterVersion { version: 2 }, CommandOp::OpenSession];
        cmds.push(CommandOp::OpenSessionFor { principal: "alice".into(), nonce: 0xfeed_beef_0001 });
        for i in 0..60u64 {
            cmds.push(put(&format!("k{}", i % 7), &format!("v{i}")));
            if i % 9 == 4 {
                cmds.push(CommandOp::Delete { key: format!("k{}", i % 7).into() });
            }
            if i % 20 == 19 {
                cmds.push(CommandOp::Compact { revision: i });
            }
            if i % 13 == 0 {
                cmds.push(CommandOp::Put { key: Vec::new(), value: b"x".to_vec() });
            }
        }
        let legacy = SessionId(2);
        let owned = SessionId(0xfeed_beef_0001);
        let session_of = |n: usize, op: &CommandOp| -> (Option<Sequenced>, CommandOp) {
            match (n % 3, op) {
                (1, CommandOp::Put { .. }) => (Some(Sequenced { session: legacy, seq: n as u64 }), op.clone()),
                (2, CommandOp::Put { .. }) => (
                    Some(Sequenced { session: owned, seq: n as u64 }),
                    CommandOp::ByPrincipal { principal: "alice".into(), op: kv(op.clone()) },
                ),
                _ => (None, op.clone()),
            }
        };
        for batch in [1usize, 3, 8, 64] {
            let (mut fresh, mut carried) = (Map::new(), Map::new());
            let mut meta = MetaCache::new();
            // Each bookkeeping key is read from the store once in the whole run, the first time
            // a command needs it; after that it is carried.
            let mut read = std::collections::BTreeSet::new();
            for (b, chunk) in cmds.chunks(batch).enumerate() {
                let first = b * batch;
                let base = Counting::new(carried.clone());
                let snapshot = fresh.clone();
                let (mut ovf, mut ovc) =
                    (Overlay::new(&snapshot), Overlay::with_meta(&base, std::mem::take(&mut meta)));
                for (i, op) in chunk.iter().enumerate() {
                    let n = first + i;
                    let (session, op) = session_of(n, op);
                    let cmd = Command { session, time_ms: n as u64 * 10, op };
                    let index = LogIndex(n as u64 + 1);
                    let (a, c) =
                        (apply_command(&mut ovf, index, &cmd).unwrap(), apply_command(&mut ovc, index, &cmd).unwrap());
                    assert_eq!(a.result, c.result, "command {n}, batches of {batch}");
                }
                assert_eq!(ov_revision(&ovc).unwrap(), ov_revision(&ovf).unwrap());
                assert_eq!(ov_log_time_ms(&ovc).unwrap(), ov_log_time_ms(&ovf).unwrap());
                meta = ovc.meta_after();
                assert!(meta.keys().all(|k| k.starts_with(META_PREFIX)) && meta.len() <= 16, "{meta:?}");
                for k in base.meta_gets.take() {
                    assert!(read.insert(k.clone()), "batch {b} of {batch} read {} again", k.escape_ascii());
                }
                assert!(base.scans.get() <= 2 + 4 * chunk.len(), "{} scans", base.scans.get());
                ovf.apply_to(&mut fresh);
                ovc.apply_to(&mut carried);
                assert_eq!(carried, fresh, "batch {b} of {batch}");
                // What it carries is what is stored.
                for (k, v) in &meta {
                    assert_eq!(carried.get(k), v.as_ref(), "{}", k.escape_ascii());
                }
            }
            assert!(
                history::enabled(&Overlay::new(&fresh)).unwrap() && events::enabled(&Overlay::new(&fresh)).unwrap()
            );
        }
    }

    /// Issue 20 (apply thread): a put or a delete reads the store once, for the key's current
    /// record. The history entry and the event record it writes are named by the command's
    /// revision, above every revision stored, so the store cannot hold them: looking them up
    /// there (two or three point reads that always miss, each a memtable search and a probe of
    /// every level) was most of a follower's apply time in a profile at 256 clients.
    #[test]
    fn a_put_or_a_delete_reads_the_store_once_for_the_keys_record() {
        let mut m = Map::new();
        run(&mut m, 1, 0, None, CommandOp::SetClusterVersion { version: quorate_api::CLUSTER_VERSION });
        run(&mut m, 2, 0, None, put("k", "v1"));
        let mut index = 3;
        let mut measured = |m: &mut Map, op: CommandOp| -> Vec<Vec<u8>> {
            let base = Counting::new(m.clone());
            let mut ov = Overlay::new(&base);
            let out = apply_command(&mut ov, LogIndex(index), &Command { session: None, time_ms: 0, op }).unwrap();
            assert!(out.result.is_ok(), "{:?}", out.result);
            ov.apply_to(m);
            index += 1;
            base.other_gets.take()
        };
        for (what, op) in [
            ("a put over a key", put("k", "v2")),
            ("a put of a new key", put("n", "v")),
            ("a delete", CommandOp::Delete { key: b"k".to_vec() }),
            ("a put of a deleted key", put("k", "v3")),
        ] {
            let gets = measured(&mut m, op);
            let shown: Vec<String> = gets.iter().map(|k| k.escape_ascii().to_string()).collect();
            assert_eq!(gets.len(), 1, "{what} read {shown:?}");
        }
        // The history and the event index saw every change all the same.
        let ov = Overlay::new(&m);
        assert!(history::enabled(&ov).unwrap() && events::enabled(&ov).unwrap());
    }
}
