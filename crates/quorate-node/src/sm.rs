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
//! | `s` + session id (big endian) | the session's last sequence number, last use (log time) and last result |
//! | `a` + node id (big endian) | a member's address |
//! | `m/revision` | the global revision: number of applied commands that changed a key |
//! | `m/time` | the log time (ms): the largest `Command::time_ms` applied |
//! | `m/gc` | where the session garbage collector resumes |
//! | `m/cluster_version` | the committed cluster version (absent: [`quorate_api::CLUSTER_VERSION_INITIAL`]) |
//!
//! Sessions expire by **log time**, identically on every replica: a session unused for
//! [`SESSION_TTL_MS`] of log time is gone, and a write in it gets `SessionExpired`.

use quorate_api::{
    ApiError, Command, CommandOp, Compare, CompareOp, CompareTarget, KeyValue, Response, SessionId, Txn, TxnOp,
    TxnResult,
};
use quorate_log::{LogIndex, NodeId};
use quorate_storage::{RocksStore, SM_KEY_BYTES_MAX, SM_VALUE_BYTES_MAX, SmOp, SmPair, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Write};

/// A session unused for this much log time (ms) expires.
pub const SESSION_TTL_MS: u64 = 10 * 60 * 1000;
/// Sessions examined for expiry per `OpenSession`, so the table stays bounded by use.
pub const SESSION_GC_PER_OPEN: usize = 64;

const KV: u8 = b'k';
const SESSION: u8 = b's';
const ADDR: u8 = b'a';
const META_REVISION: &[u8] = b"m/revision";
const META_TIME: &[u8] = b"m/time";
const META_GC: &[u8] = b"m/gc";
const META_CLUSTER_VERSION: &[u8] = b"m/cluster_version";

/// The cluster version that turns [`CommandOp::DeleteRange`] on.
pub const DELETE_RANGE_CLUSTER_VERSION: u32 = 2;

/// Pairs read per page when scanning the state machine.
const PAGE: usize = 4096;

/// A stored key: value, revisions and version.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct KvRecord {
    /// The value.
    pub value: Vec<u8>,
    /// Revision that created the key.
    pub create_revision: u64,
    /// Revision of the last write.
    pub mod_revision: u64,
    /// Writes since creation.
    pub version: u64,
}

/// A stored session.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
struct SessionRecord {
    last_seq: u64,
    last_used_ms: u64,
    result: Option<Result<Response, ApiError>>,
}

/// A state-machine failure: the store failed or holds bytes that do not decode. Fatal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SmError {
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
pub trait SmRead {
    /// The value of `key`.
    fn sm_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, SmError>;
    /// Up to `limit` pairs with keys `>= from`, in key order.
    fn sm_scan(&self, from: &[u8], limit: usize) -> Result<Vec<SmPair>, SmError>;
}

impl SmRead for RocksStore {
    fn sm_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, SmError> {
        Ok(RocksStore::sm_get(self, key)?)
    }
    fn sm_scan(&self, from: &[u8], limit: usize) -> Result<Vec<SmPair>, SmError> {
        Ok(RocksStore::sm_scan(self, from, limit)?)
    }
}

impl SmRead for BTreeMap<Vec<u8>, Vec<u8>> {
    fn sm_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, SmError> {
        Ok(self.get(key).cloned())
    }
    fn sm_scan(&self, from: &[u8], limit: usize) -> Result<Vec<SmPair>, SmError> {
        Ok(self.range(from.to_vec()..).take(limit).map(|(k, v)| (k.clone(), v.clone())).collect())
    }
}

impl<T: SmRead + ?Sized> SmRead for std::sync::Arc<T> {
    fn sm_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, SmError> {
        (**self).sm_get(key)
    }
    fn sm_scan(&self, from: &[u8], limit: usize) -> Result<Vec<SmPair>, SmError> {
        (**self).sm_scan(from, limit)
    }
}

/// Writes not yet stored, layered over the stored state: the apply task accumulates the
/// effects of several entries here and stores them in one batch with the applied index.
#[derive(Debug)]
pub struct Overlay<'a, R: ?Sized> {
    base: &'a R,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    clear: bool,
}

impl<'a, R: SmRead + ?Sized> Overlay<'a, R> {
    /// An empty overlay over `base`.
    pub fn new(base: &'a R) -> Overlay<'a, R> {
        Overlay { base, writes: BTreeMap::new(), clear: false }
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, SmError> {
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None if self.clear => Ok(None),
            None => self.base.sm_get(key),
        }
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }

    /// Number of pending writes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.writes.len() + usize::from(self.clear)
    }

    /// Whether nothing is pending.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pending writes as store operations.
    #[must_use]
    pub fn into_ops(self) -> Vec<SmOp> {
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

    /// The pending writes, applied to a map (tests and the in-memory model).
    pub fn apply_to(self, map: &mut BTreeMap<Vec<u8>, Vec<u8>>) {
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
pub struct ApplyOutcome {
    /// The client's result.
    pub result: Result<Response, ApiError>,
    /// A member address the command recorded (the node adds the peer to its transport).
    pub member_addr: Option<(NodeId, String)>,
    /// The cluster version the command raised the cluster to (`quorate cluster finalize`).
    pub cluster_version: Option<u32>,
}

impl ApplyOutcome {
    fn result(result: Result<Response, ApiError>) -> ApplyOutcome {
        ApplyOutcome { result, member_addr: None, cluster_version: None }
    }
}

/// The committed cluster version in `r` ([`quorate_api::CLUSTER_VERSION_INITIAL`] if it was
/// never raised).
pub fn cluster_version(r: &(impl SmRead + ?Sized)) -> Result<u32, SmError> {
    let v = get_u64(r, META_CLUSTER_VERSION)?;
    Ok(if v == 0 { quorate_api::CLUSTER_VERSION_INITIAL } else { u32::try_from(v).unwrap_or(u32::MAX) })
}

fn ov_cluster_version<R: SmRead + ?Sized>(ov: &Overlay<'_, R>) -> Result<u32, SmError> {
    let v = ov_u64(ov, META_CLUSTER_VERSION)?;
    Ok(if v == 0 { quorate_api::CLUSTER_VERSION_INITIAL } else { u32::try_from(v).unwrap_or(u32::MAX) })
}

/// Refuses state whose committed cluster version this binary does not support (at start).
pub fn check_cluster_version(r: &(impl SmRead + ?Sized)) -> Result<u32, SmError> {
    let committed = cluster_version(r)?;
    if committed > quorate_api::CLUSTER_VERSION {
        return Err(SmError::ClusterVersionTooNew { committed, supported: quorate_api::CLUSTER_VERSION });
    }
    Ok(committed)
}

/// Applies the command of the entry at `index` (its raw bytes) to `ov`. Undecodable bytes
/// change nothing and give `InvalidRequest` (identically on every replica).
pub fn apply_entry<R: SmRead + ?Sized>(
    ov: &mut Overlay<'_, R>,
    index: LogIndex,
    bytes: &[u8],
) -> Result<ApplyOutcome, SmError> {
    match quorate_api::decode_command(bytes) {
        Ok(cmd) => apply_command(ov, index, &cmd),
        Err(e) => Ok(ApplyOutcome::result(Err(ApiError::InvalidRequest(e.to_string())))),
    }
}

/// Applies one decoded command at `index`.
pub fn apply_command<R: SmRead + ?Sized>(
    ov: &mut Overlay<'_, R>,
    index: LogIndex,
    cmd: &Command,
) -> Result<ApplyOutcome, SmError> {
    let time = ov_u64(ov, META_TIME)?.max(cmd.time_ms);
    ov.put(META_TIME.to_vec(), time.to_le_bytes().to_vec());
    match &cmd.op {
        CommandOp::OpenSession => {
            gc_sessions(ov, time)?;
            let id = SessionId(index.0);
            let rec = SessionRecord { last_seq: 0, last_used_ms: time, result: None };
            ov.put(session_key(id), encode(&rec));
            return Ok(ApplyOutcome::result(Ok(Response::Session(id))));
        }
        CommandOp::SetMemberAddr { id, addr } => {
            ov.put(addr_key(*id), addr.as_bytes().to_vec());
            return Ok(ApplyOutcome {
                result: Ok(Response::Done),
                member_addr: Some((*id, addr.clone())),
                cluster_version: None,
            });
        }
        CommandOp::SetClusterVersion { version } => {
            if *version > quorate_api::CLUSTER_VERSION {
                return Err(SmError::ClusterVersionTooNew {
                    committed: *version,
                    supported: quorate_api::CLUSTER_VERSION,
                });
            }
            // Never lowered; raising twice to the same version is a no-op.
            if *version <= ov_cluster_version(ov)? {
                return Ok(ApplyOutcome::result(Ok(Response::Done)));
            }
            ov.put(META_CLUSTER_VERSION.to_vec(), u64::from(*version).to_le_bytes().to_vec());
            return Ok(ApplyOutcome { result: Ok(Response::Done), member_addr: None, cluster_version: Some(*version) });
        }
        _ => {}
    }
    let Some(seqd) = cmd.session else {
        return Ok(ApplyOutcome::result(apply_op(ov, &cmd.op)?));
    };
    let sk = session_key(seqd.session);
    let Some(bytes) = ov.get(&sk)? else {
        return Ok(ApplyOutcome::result(Err(ApiError::SessionExpired)));
    };
    let mut rec: SessionRecord = decode(&sk, &bytes)?;
    if time.saturating_sub(rec.last_used_ms) > SESSION_TTL_MS {
        ov.delete(sk);
        return Ok(ApplyOutcome::result(Err(ApiError::SessionExpired)));
    }
    rec.last_used_ms = time;
    let result = if seqd.seq == rec.last_seq {
        // A retry: the original answer, applied once.
        rec.result
            .clone()
            .unwrap_or_else(|| Err(ApiError::InvalidRequest("no result recorded for this sequence".into())))
    } else if seqd.seq < rec.last_seq {
        Err(ApiError::InvalidRequest(format!(
            "sequence number {} is older than the session's last one ({}); its result is no longer kept",
            seqd.seq, rec.last_seq
        )))
    } else {
        let r = apply_op(ov, &cmd.op)?;
        rec.last_seq = seqd.seq;
        rec.result = Some(r.clone());
        r
    };
    ov.put(sk, encode(&rec));
    Ok(ApplyOutcome::result(result))
}

/// Drops up to [`SESSION_GC_PER_OPEN`] expired sessions, resuming where the last call stopped.
fn gc_sessions<R: SmRead + ?Sized>(ov: &mut Overlay<'_, R>, time: u64) -> Result<(), SmError> {
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

fn apply_op<R: SmRead + ?Sized>(
    ov: &mut Overlay<'_, R>,
    op: &CommandOp,
) -> Result<Result<Response, ApiError>, SmError> {
    let rev = ov_u64(ov, META_REVISION)?;
    let next = rev + 1;
    let mut changed = false;
    let response = match op {
        CommandOp::Put { key, value } => {
            put(ov, key, value.clone(), next)?;
            changed = true;
            Response::Put { revision: next }
        }
        CommandOp::Delete { key } => {
            let deleted = get_kv(ov, key)?.is_some();
            if deleted {
                ov.delete(kv_key(key));
                changed = true;
            }
            Response::Delete { deleted, revision: if deleted { next } else { rev } }
        }
        CommandOp::Cas { key, expected, value } => {
            let previous = get_kv(ov, key)?;
            let succeeded = previous.as_ref().map(|r| &r.value) == expected.as_ref();
            if succeeded {
                put(ov, key, value.clone(), next)?;
                changed = true;
            }
            Response::Cas {
                succeeded,
                previous: previous.map(|r| to_kv(key, r)),
                revision: if succeeded { next } else { rev },
            }
        }
        CommandOp::Txn(txn) => {
            let (succeeded, results, c) = eval_txn(ov, txn, next)?;
            changed = c;
            Response::Txn { succeeded, results, revision: if c { next } else { rev } }
        }
        CommandOp::DeleteRange { start, end } => {
            let cv = ov_cluster_version(ov)?;
            if cv < DELETE_RANGE_CLUSTER_VERSION {
                // What a 0.1.0 replica answers too (it cannot decode the command): no replica
                // changes anything, so mixed-version replicas stay identical.
                return Ok(Err(ApiError::InvalidRequest(format!(
                    "delete-range needs cluster version {DELETE_RANGE_CLUSTER_VERSION}, the cluster is at {cv}: \
                     upgrade every node, then run `quorate cluster finalize`"
                ))));
            }
            let (keys, more) = range_keys(ov, start, end, quorate_api::limits::SCAN_LIMIT_MAX as usize)?;
            changed = !keys.is_empty();
            let deleted = keys.len() as u64;
            for k in keys {
                ov.delete(k);
            }
            Response::DeletedRange { deleted, more, revision: if changed { next } else { rev } }
        }
        CommandOp::OpenSession | CommandOp::SetMemberAddr { .. } | CommandOp::SetClusterVersion { .. } => {
            return Ok(Err(ApiError::InvalidRequest("not a key-value operation".into())));
        }
        _ => return Ok(Err(ApiError::InvalidRequest("unknown command (newer version?)".into()))),
    };
    if changed {
        ov.put(META_REVISION.to_vec(), next.to_le_bytes().to_vec());
    }
    Ok(Ok(response))
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
    let (lo, hi) = (kv_key(start), kv_key(end));
    let mut keys = std::collections::BTreeSet::new();
    if !ov.clear {
        let mut from = lo.clone();
        // Enough base keys that pending deletes cannot starve the result; bounded by pages.
        let want = limit + 1 + ov.writes.len();
        'pages: while keys.len() < want {
            let page = ov.base.sm_scan(&from, PAGE)?;
            let n = page.len();
            for (k, _) in page {
                if k >= hi {
                    break 'pages;
                }
                from = k.clone();
                from.push(0);
                keys.insert(k);
            }
            if n < PAGE {
                break;
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

fn put<R: SmRead + ?Sized>(ov: &mut Overlay<'_, R>, key: &[u8], value: Vec<u8>, rev: u64) -> Result<(), SmError> {
    let rec = match get_kv(ov, key)? {
        Some(old) => {
            KvRecord { value, create_revision: old.create_revision, mod_revision: rev, version: old.version + 1 }
        }
        None => KvRecord { value, create_revision: rev, mod_revision: rev, version: 1 },
    };
    ov.put(kv_key(key), encode(&rec));
    Ok(())
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

/// Evaluates a transaction at revision `next` (used if it writes): whether the comparisons
/// held, the branch's results, and whether anything changed.
fn eval_txn<R: SmRead + ?Sized>(
    ov: &mut Overlay<'_, R>,
    txn: &Txn,
    next: u64,
) -> Result<(bool, Vec<TxnResult>, bool), SmError> {
    let mut succeeded = true;
    for c in &txn.compare {
        let actual = get_kv(ov, &c.key)?;
        if !compare_holds(actual.as_ref(), c) {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded { &txn.success } else { &txn.failure };
    let mut results = Vec::with_capacity(ops.len());
    let mut changed = false;
    for op in ops {
        results.push(match op {
            TxnOp::Put { key, value } => {
                put(ov, key, value.clone(), next)?;
                changed = true;
                TxnResult::Put
            }
            TxnOp::Delete { key } => {
                let existed = get_kv(ov, key)?.is_some();
                if existed {
                    ov.delete(kv_key(key));
                    changed = true;
                }
                TxnResult::Delete(existed)
            }
            TxnOp::Get { key } => TxnResult::Get(get_kv(ov, key)?.map(|r| to_kv(key, r))),
            _ => return Err(corrupt(b"txn", "unknown transaction operation")),
        });
    }
    Ok((succeeded, results, changed))
}

/// The global revision.
pub fn revision(r: &(impl SmRead + ?Sized)) -> Result<u64, SmError> {
    get_u64(r, META_REVISION)
}

/// The log time (ms) of the last applied command.
pub fn log_time_ms(r: &(impl SmRead + ?Sized)) -> Result<u64, SmError> {
    get_u64(r, META_TIME)
}

/// Reads one key.
pub fn read_get<R: SmRead + ?Sized>(r: &R, key: &[u8]) -> Result<Option<KeyValue>, SmError> {
    let ov = Overlay::new(r);
    Ok(get_kv(&ov, key)?.map(|rec| to_kv(key, rec)))
}

/// Keys in `[start, end)`, at most `limit`; and whether more lie in the range.
pub fn read_scan<R: SmRead + ?Sized>(
    r: &R,
    start: &[u8],
    end: Option<&[u8]>,
    limit: u32,
) -> Result<(Vec<KeyValue>, bool), SmError> {
    let limit = limit as usize;
    let mut out = Vec::new();
    let mut from = kv_key(start);
    loop {
        let want = PAGE.min(limit + 1 - out.len()).max(1);
        let page = r.sm_scan(&from, want)?;
        let n = page.len();
        for (k, v) in page {
            if k.first() != Some(&KV) {
                return Ok((out, false));
            }
            let user = &k[1..];
            if end.is_some_and(|e| user >= e) {
                return Ok((out, false));
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            let rec: KvRecord = decode(&k, &v)?;
            out.push(to_kv(user, rec));
            from = k;
            from.push(0);
        }
        if n < want {
            return Ok((out, false));
        }
    }
}

/// Evaluates a read-only transaction.
pub fn read_txn<R: SmRead + ?Sized>(r: &R, txn: &Txn) -> Result<(bool, Vec<TxnResult>), SmError> {
    let mut ov = Overlay::new(r);
    let (succeeded, results, _) = eval_txn(&mut ov, txn, 0)?;
    Ok((succeeded, results))
}

/// The member addresses recorded through the log.
pub fn member_addrs<R: SmRead + ?Sized>(r: &R) -> Result<BTreeMap<NodeId, String>, SmError> {
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
pub fn member_addr_record(id: NodeId, addr: &str) -> SmPair {
    (addr_key(id), addr.as_bytes().to_vec())
}

/// Whether a state-machine key is a member address record.
#[must_use]
pub fn is_member_addr_key(key: &[u8]) -> bool {
    key.len() == 9 && key[0] == ADDR
}

/// Streams every state-machine pair into `out` (`u32 LE key length | key | u32 LE value
/// length | value`, repeated). Returns the number of pairs.
pub fn write_snapshot_data<R: SmRead + ?Sized>(r: &R, out: &mut impl Write) -> Result<u64, SmError> {
    let io = |e: std::io::Error| SmError::Storage(StoreError::Io(format!("writing snapshot: {e}")));
    let mut from = Vec::new();
    let mut n = 0;
    loop {
        let page = r.sm_scan(&from, PAGE)?;
        let len = page.len();
        for (k, v) in page {
            out.write_all(&(k.len() as u32).to_le_bytes()).map_err(io)?;
            out.write_all(&k).map_err(io)?;
            out.write_all(&(v.len() as u32).to_le_bytes()).map_err(io)?;
            out.write_all(&v).map_err(io)?;
            n += 1;
            from = k;
            from.push(0);
        }
        if len < PAGE {
            return Ok(n);
        }
    }
}

/// Reads pairs written by [`write_snapshot_data`], bounded, calling `f` for each.
pub fn read_snapshot_data(
    input: &mut impl Read,
    mut f: impl FnMut(Vec<u8>, Vec<u8>) -> Result<(), SmError>,
) -> Result<u64, SmError> {
    let bad = |d: String| corrupt(b"snapshot", d);
    let mut n = 0;
    loop {
        let mut len = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            let r = input.read(&mut len[got..]).map_err(|e| bad(e.to_string()))?;
            if r == 0 {
                break;
            }
            got += r;
        }
        if got == 0 {
            return Ok(n);
        }
        if got < 4 {
            return Err(bad("data ends inside a length".into()));
        }
        let klen = u32::from_le_bytes(len) as usize;
        if klen > SM_KEY_BYTES_MAX {
            return Err(bad(format!("key of {klen} bytes exceeds {SM_KEY_BYTES_MAX}")));
        }
        let mut key = vec![0u8; klen];
        input.read_exact(&mut key).map_err(|e| bad(e.to_string()))?;
        input.read_exact(&mut len).map_err(|e| bad(e.to_string()))?;
        let vlen = u32::from_le_bytes(len) as usize;
        if vlen > SM_VALUE_BYTES_MAX {
            return Err(bad(format!("value of {vlen} bytes exceeds {SM_VALUE_BYTES_MAX}")));
        }
        let mut value = vec![0u8; vlen];
        input.read_exact(&mut value).map_err(|e| bad(e.to_string()))?;
        f(key, value)?;
        n += 1;
    }
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
}
