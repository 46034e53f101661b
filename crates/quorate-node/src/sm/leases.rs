//! Leases as replicated state (from cluster version 2, [`LEASES_CLUSTER_VERSION`]).
//!
//! | key | value |
//! |---|---|
//! | `l` + lease id (big endian) | [`LeaseRecord`]: owner, TTL, and the count and bytes of its keys |
//! | `j` + lease id (big endian) + user key | the attached key's value length (u64, little endian) |
//! | `q` + user key | the lease the key is attached to (u64, big endian) |
//! | `n` + principal | how many leases the principal holds (u64, little endian) |
//! | `m/leases` | how many leases the cluster holds (u64, little endian) |
//!
//! A lease's id is the log index of the entry that granted it: unique, never reused, the same
//! on every replica. Ownership is checked at apply: only the owner (or an admin) may revoke a
//! lease or attach a key to it, so knowing an id gives nothing. A put with a lease attaches the
//! key (detaching it from any other lease); any other write or delete of the key detaches it.
//!
//! Revoke and expiry delete every attached key at **one** revision, recorded in the history
//! and the event index like any delete (watches see them). The bounds
//! ([`limits::LEASE_KEYS_MAX`], [`limits::LEASE_KEY_BYTES_MAX`],
//! [`limits::LEASE_VALUE_BYTES_MAX`]) keep that deletion within one command's writes; an attach
//! past them is refused with an error and changes nothing.
//!
//! **Expiry is decided by the leader** ([`crate::leases`]), in its memory, and applied as
//! [`CommandOp::LeaseExpire`](quorate_api::CommandOp::LeaseExpire): nothing here depends on a
//! clock. An expire of a lease that is gone (revoked, or expired by an earlier leader's
//! command) is a no-op result.

use super::{
    META_REVISION, Overlay, SmError, SmRead, corrupt, decode, encode, events, get_kv, history, kv_key,
    maintain_history, merged_keys, ov_u64,
};
use quorate_api::{ApiError, LeaseId, Response, limits};
use serde::{Deserialize, Serialize};

/// The cluster version that turns leases on.
pub(crate) const LEASES_CLUSTER_VERSION: u32 = 2;

const LEASE: u8 = b'l';
const ATTACHED: u8 = b'j';
const KEY_LEASE: u8 = b'q';
const PRINCIPAL_LEASES: u8 = b'n';
const META_LEASES: &[u8] = b"m/leases";

/// What a lease command answers, and what it did to the lease table.
pub(crate) type LeaseOutcome = (Result<Response, ApiError>, Option<LeaseChange>);

/// A stored lease.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub(crate) struct LeaseRecord {
    /// The principal that granted it.
    pub(crate) owner: String,
    /// Its TTL, ms.
    pub(crate) ttl_ms: u64,
    /// Keys attached.
    pub(crate) keys: u64,
    /// Bytes of the attached keys.
    pub(crate) key_bytes: u64,
    /// Bytes of their values.
    pub(crate) value_bytes: u64,
}

/// What a command did to the lease table (the apply thread tells the leader's clock).
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub(crate) enum LeaseChange {
    /// A lease was granted.
    Granted {
        /// The lease.
        id: LeaseId,
        /// Its owner.
        owner: String,
        /// Its TTL, ms.
        ttl_ms: u64,
    },
    /// A lease is gone (revoked or expired).
    Gone(LeaseId),
}

fn lease_key(id: LeaseId) -> Vec<u8> {
    let mut k = vec![LEASE];
    k.extend_from_slice(&id.0.to_be_bytes());
    k
}

fn attached_prefix(id: LeaseId) -> Vec<u8> {
    let mut k = vec![ATTACHED];
    k.extend_from_slice(&id.0.to_be_bytes());
    k
}

fn attached_key(id: LeaseId, key: &[u8]) -> Vec<u8> {
    let mut k = attached_prefix(id);
    k.extend_from_slice(key);
    k
}

fn key_lease_key(key: &[u8]) -> Vec<u8> {
    let mut k = vec![KEY_LEASE];
    k.extend_from_slice(key);
    k
}

fn principal_key(principal: &str) -> Vec<u8> {
    let mut k = vec![PRINCIPAL_LEASES];
    k.extend_from_slice(principal.as_bytes());
    k
}

fn put_u64<R: SmRead + ?Sized>(ov: &mut Overlay<'_, R>, key: &[u8], v: u64) {
    if v == 0 {
        ov.delete(key.to_vec());
    } else {
        ov.put(key.to_vec(), v.to_le_bytes().to_vec());
    }
}

fn get_lease<R: SmRead + ?Sized>(ov: &Overlay<'_, R>, id: LeaseId) -> Result<Option<LeaseRecord>, SmError> {
    let k = lease_key(id);
    ov.get(&k)?.map(|b| decode(&k, &b)).transpose()
}

fn be_u64(key: &[u8], bytes: &[u8]) -> Result<u64, SmError> {
    let a: [u8; 8] = bytes.try_into().map_err(|_| corrupt(key, "not 8 bytes"))?;
    Ok(u64::from_be_bytes(a))
}

fn le_u64(key: &[u8], bytes: &[u8]) -> Result<u64, SmError> {
    let a: [u8; 8] = bytes.try_into().map_err(|_| corrupt(key, "not 8 bytes"))?;
    Ok(u64::from_le_bytes(a))
}

fn not_found(id: LeaseId) -> ApiError {
    ApiError::InvalidRequest(format!("lease {} not found (revoked, expired, or not yours)", id.0))
}

/// Grants a lease owned by `principal` with id `index` (the granting entry's log index).
pub(crate) fn grant<R: SmRead + ?Sized>(
    ov: &mut Overlay<'_, R>,
    index: u64,
    principal: &str,
    ttl_ms: u64,
) -> Result<LeaseOutcome, SmError> {
    if principal.is_empty() || principal.len() > quorate_transport::PRINCIPAL_BYTES_MAX {
        return Ok((Err(ApiError::InvalidRequest("a lease needs a valid principal".into())), None));
    }
    if !(limits::LEASE_TTL_MS_MIN..=limits::LEASE_TTL_MS_MAX).contains(&ttl_ms) {
        return Ok((
            Err(ApiError::InvalidRequest(format!(
                "a lease's TTL must be between {} and {} ms",
                limits::LEASE_TTL_MS_MIN,
                limits::LEASE_TTL_MS_MAX
            ))),
            None,
        ));
    }
    let total = ov_u64(ov, META_LEASES)?;
    if total >= limits::LEASES_MAX {
        return Ok((
            Err(ApiError::Refused(format!(
                "the cluster holds {} leases, the most it may; revoke some first",
                limits::LEASES_MAX
            ))),
            None,
        ));
    }
    let pk = principal_key(principal);
    let mine = ov_u64(ov, &pk)?;
    if mine >= limits::LEASES_PER_PRINCIPAL_MAX {
        return Ok((
            Err(ApiError::Refused(format!(
                "principal {principal} holds {} leases, the most one principal may; revoke some first",
                limits::LEASES_PER_PRINCIPAL_MAX
            ))),
            None,
        ));
    }
    let id = LeaseId(index);
    let rec = LeaseRecord { owner: principal.to_string(), ttl_ms, keys: 0, key_bytes: 0, value_bytes: 0 };
    ov.put(lease_key(id), encode(&rec));
    put_u64(ov, &pk, mine + 1);
    put_u64(ov, META_LEASES, total + 1);
    Ok((
        Ok(Response::LeaseGranted { id, ttl_ms }),
        Some(LeaseChange::Granted { id, owner: principal.to_string(), ttl_ms }),
    ))
}

/// Revokes `id` on behalf of `principal` (its owner, or anyone when `admin`): its keys are
/// deleted at one revision. Another principal's lease answers as an absent one.
pub(crate) fn revoke<R: SmRead + ?Sized>(
    ov: &mut Overlay<'_, R>,
    principal: &str,
    admin: bool,
    id: LeaseId,
) -> Result<LeaseOutcome, SmError> {
    match get_lease(ov, id)? {
        Some(rec) if admin || rec.owner == principal => {
            let (deleted, revision) = remove(ov, id, &rec)?;
            Ok((Ok(Response::LeaseRevoked { deleted, revision }), Some(LeaseChange::Gone(id))))
        }
        _ => Ok((Err(not_found(id)), None)),
    }
}

/// Expires `id` (the leader saw its deadline pass). A lease already gone is a no-op result,
/// never a failure of the replica.
pub(crate) fn expire<R: SmRead + ?Sized>(ov: &mut Overlay<'_, R>, id: LeaseId) -> Result<LeaseOutcome, SmError> {
    match get_lease(ov, id)? {
        Some(rec) => {
            let (deleted, revision) = remove(ov, id, &rec)?;
            Ok((Ok(Response::LeaseRevoked { deleted, revision }), Some(LeaseChange::Gone(id))))
        }
        // Gone already (revoked, or expired by an earlier command): tell the leader's clock
        // again, so that it stops proposing it.
        None => Ok((Err(not_found(id)), Some(LeaseChange::Gone(id)))),
    }
}

/// Deletes the lease and every key attached to it, at one revision (the next one, if any key
/// was present). Returns the keys deleted and the revision of the deletes.
fn remove<R: SmRead + ?Sized>(ov: &mut Overlay<'_, R>, id: LeaseId, rec: &LeaseRecord) -> Result<(u64, u64), SmError> {
    let rev = ov_u64(ov, META_REVISION)?;
    let next = rev + 1;
    let prefix = attached_prefix(id);
    let hi = match id.0.checked_add(1) {
        Some(n) => attached_prefix(LeaseId(n)),
        None => vec![ATTACHED + 1],
    };
    // Bounded by the attach limits; one more to tell a corrupt count.
    let limit = usize::try_from(limits::LEASE_KEYS_MAX).unwrap_or(usize::MAX) + 1;
    let (attached, _) = merged_keys(ov, prefix.clone(), hi, limit)?;
    let mut deleted = 0u64;
    for ak in attached {
        let Some(user) = ak.strip_prefix(prefix.as_slice()) else { continue };
        let user = user.to_vec();
        if let Some(old) = get_kv(ov, &user)? {
            history::record(ov, &user, &old, next)?;
            events::on_delete(ov, &user, next)?;
            ov.delete(kv_key(&user));
            deleted += 1;
        }
        ov.delete(key_lease_key(&user));
        ov.delete(ak);
    }
    ov.delete(lease_key(id));
    let pk = principal_key(&rec.owner);
    let mine = ov_u64(ov, &pk)?;
    put_u64(ov, &pk, mine.saturating_sub(1));
    let total = ov_u64(ov, META_LEASES)?;
    put_u64(ov, META_LEASES, total.saturating_sub(1));
    if deleted > 0 {
        ov.put(META_REVISION.to_vec(), next.to_le_bytes().to_vec());
        maintain_history(ov)?;
        Ok((deleted, next))
    } else {
        Ok((0, rev))
    }
}

/// Detaches `key` from its lease, if it has one (any write or delete of the key but a put
/// with that lease). Costs one read when no lease exists. Returns whether the key was
/// attached: then it wrote up to [`DETACH_WRITES_MAX`] more (a delete-range counts them).
pub(crate) fn detach<R: SmRead + ?Sized>(ov: &mut Overlay<'_, R>, key: &[u8]) -> Result<bool, SmError> {
    if ov_u64(ov, META_LEASES)? == 0 {
        return Ok(false);
    }
    let qk = key_lease_key(key);
    let Some(b) = ov.get(&qk)? else { return Ok(false) };
    let id = LeaseId(be_u64(&qk, &b)?);
    ov.delete(qk);
    let ak = attached_key(id, key);
    let value_len = match ov.get(&ak)? {
        Some(b) => le_u64(&ak, &b)?,
        None => return Ok(true),
    };
    ov.delete(ak);
    if let Some(mut rec) = get_lease(ov, id)? {
        rec.keys = rec.keys.saturating_sub(1);
        rec.key_bytes = rec.key_bytes.saturating_sub(key.len() as u64);
        rec.value_bytes = rec.value_bytes.saturating_sub(value_len);
        ov.put(lease_key(id), encode(&rec));
    }
    Ok(true)
}

/// Most writes [`detach`] makes (the key's lease, its attachment, the lease's record).
pub(crate) const DETACH_WRITES_MAX: usize = 3;

// A delete-range counts a leased key as two keys against `HISTORY_RANGE_KEYS_MAX` (and may pass
// it by one): a leased key's writes (the four of a delete and the detach's) are at most those
// of two keys, so the range's writes stay within the bound `events.rs` checks for one key more.
const _: () = assert!(4 + DETACH_WRITES_MAX <= 2 * 4);
const _: () = assert!(
    4 * (super::history::HISTORY_RANGE_KEYS_MAX + 1)
        + 2 * super::history::HISTORY_DROP_PER_COMMAND
        + super::events::EVENTS_DROP_PER_COMMAND
        + 32
        <= super::COMMAND_WRITES_MAX
);

/// Before a put of `key` (`value_len` bytes) with `lease` by `principal`: checks the lease
/// and its bounds. `Err(answer)`: refused, nothing to change.
pub(crate) fn check_attach<R: SmRead + ?Sized>(
    ov: &Overlay<'_, R>,
    principal: &str,
    admin: bool,
    lease: LeaseId,
    key: &[u8],
    value_len: usize,
) -> Result<Result<(), ApiError>, SmError> {
    let rec = match get_lease(ov, lease)? {
        Some(rec) if admin || rec.owner == principal => rec,
        _ => return Ok(Err(not_found(lease))),
    };
    // What the key adds (it may be attached already, with another value).
    let ak = attached_key(lease, key);
    let (keys, key_bytes, value_bytes) = match ov.get(&ak)? {
        Some(b) => (rec.keys, rec.key_bytes, rec.value_bytes.saturating_sub(le_u64(&ak, &b)?)),
        None => (rec.keys + 1, rec.key_bytes + key.len() as u64, rec.value_bytes),
    };
    let value_bytes = value_bytes + value_len as u64;
    if keys > limits::LEASE_KEYS_MAX {
        return Ok(Err(ApiError::Refused(format!(
            "lease {} has {} keys attached, the most one lease may; attach to another lease",
            lease.0,
            limits::LEASE_KEYS_MAX
        ))));
    }
    if key_bytes > limits::LEASE_KEY_BYTES_MAX || value_bytes > limits::LEASE_VALUE_BYTES_MAX {
        return Ok(Err(ApiError::Refused(format!(
            "lease {} would hold {key_bytes} bytes of keys and {value_bytes} bytes of values, more than the {} and {} \
             one lease may; attach to another lease",
            lease.0,
            limits::LEASE_KEY_BYTES_MAX,
            limits::LEASE_VALUE_BYTES_MAX
        ))));
    }
    Ok(Ok(()))
}

/// After the put of `key` (checked with [`check_attach`], and detached from any lease by the
/// put): attaches it to `lease`.
pub(crate) fn attach<R: SmRead + ?Sized>(
    ov: &mut Overlay<'_, R>,
    lease: LeaseId,
    key: &[u8],
    value_len: usize,
) -> Result<(), SmError> {
    let Some(mut rec) = get_lease(ov, lease)? else { return Ok(()) };
    rec.keys += 1;
    rec.key_bytes += key.len() as u64;
    rec.value_bytes += value_len as u64;
    ov.put(lease_key(lease), encode(&rec));
    ov.put(attached_key(lease, key), (value_len as u64).to_le_bytes().to_vec());
    ov.put(key_lease_key(key), lease.0.to_be_bytes().to_vec());
    Ok(())
}

/// Every lease in `r`: id, owner and TTL (the leader's clock loads them when it takes office
/// or after an install). Bounded by [`limits::LEASES_MAX`], read in pages.
pub(crate) fn all_leases(r: &(impl SmRead + ?Sized)) -> Result<Vec<(LeaseId, String, u64)>, SmError> {
    let mut out = Vec::new();
    let mut from = vec![LEASE];
    let max = usize::try_from(limits::LEASES_MAX).unwrap_or(usize::MAX);
    'pages: while out.len() < max {
        let page = r.sm_scan(&from, super::PAGE)?;
        if page.is_empty() {
            break;
        }
        for (k, v) in page {
            if k.first() != Some(&LEASE) {
                break 'pages;
            }
            from = k.clone();
            from.push(0);
            if k.len() != 9 {
                continue;
            }
            let rec: LeaseRecord = decode(&k, &v)?;
            out.push((LeaseId(be_u64(&k, &k[1..])?), rec.owner, rec.ttl_ms));
        }
    }
    Ok(out)
}

/// A stored lease and its attached keys ([`lease_info`]).
pub(crate) type StoredLease = (LeaseRecord, Vec<Vec<u8>>);

/// One lease as stored, and up to [`limits::LEASE_KEYS_MAX`] of its attached keys (with `keys`).
pub(crate) fn lease_info(r: &(impl SmRead + ?Sized), id: LeaseId, keys: bool) -> Result<Option<StoredLease>, SmError> {
    let k = lease_key(id);
    let Some(b) = r.sm_get(&k)? else { return Ok(None) };
    let rec: LeaseRecord = decode(&k, &b)?;
    let mut list = Vec::new();
    if keys {
        let prefix = attached_prefix(id);
        let page = r.sm_scan(&prefix, usize::try_from(limits::LEASE_KEYS_MAX).unwrap_or(usize::MAX))?;
        for (ak, _) in page {
            let Some(user) = ak.strip_prefix(prefix.as_slice()) else { break };
            list.push(user.to_vec());
        }
    }
    Ok(Some((rec, list)))
}

/// The lease `key` is attached to, if any (tests).
#[cfg(test)]
pub(crate) fn lease_of(r: &(impl SmRead + ?Sized), key: &[u8]) -> Result<Option<LeaseId>, SmError> {
    let qk = key_lease_key(key);
    r.sm_get(&qk)?.map(|b| be_u64(&qk, &b).map(LeaseId)).transpose()
}

#[cfg(test)]
mod tests {
    use super::super::test_replica::{Map, Replica};
    use super::super::{read_get, read_watch, revision};
    use super::*;
    use quorate_api::{CommandOp, EventKind, KvOp, Txn, TxnOp, WatchRequest};

    /// A test replica, finalized to the leases' cluster version when `finalized`.
    fn replica(finalized: bool) -> Replica {
        let mut r = Replica::new(finalized.then_some(LEASES_CLUSTER_VERSION));
        r.track = false;
        r
    }

    impl Replica {
        fn grant(&mut self, who: &str, ttl_ms: u64) -> LeaseId {
            match self.run(CommandOp::LeaseGrant { principal: who.into(), ttl_ms }) {
                Response::LeaseGranted { id, .. } => id,
                other => panic!("not a grant: {other:?}"),
            }
        }

        fn put_leased(&mut self, who: &str, key: &str, value: &str, lease: LeaseId) -> Result<Response, ApiError> {
            let op = KvOp::PutLeased { key: key.into(), value: value.into(), lease, admin: false };
            self.try_run(CommandOp::ByPrincipal { principal: who.into(), op })
        }

        fn has(&self, key: &str) -> bool {
            read_get(&self.map, key.as_bytes()).unwrap().is_some()
        }
    }

    fn put(k: &str, v: &str) -> CommandOp {
        CommandOp::Put { key: k.into(), value: v.into() }
    }

    fn watch_all(map: &Map, from: u64) -> Vec<(EventKind, Vec<u8>, u64)> {
        let w = WatchRequest {
            key: Vec::new(),
            prefix: true,
            from_revision: from,
            prev_kv: false,
            max_events: 1000,
            max_bytes: 0,
            wait_ms: 0,
        };
        let page = read_watch(map, &w).unwrap().unwrap();
        page.events.into_iter().map(|e| (e.kind, e.kv.key, e.kv.mod_revision)).collect()
    }

    #[test]
    fn a_grant_and_a_revoke_in_a_session_are_applied_once_and_their_retries_answered_alike() {
        // A client retries a write whose answer it lost with the same (session, sequence
        // number). A grant retried must not grant a second lease (an orphan that lives a TTL
        // and counts against the principal's limit), and a revoke retried must be answered with
        // the first revoke's result, not "no such lease".
        let mut r = replica(true);
        let session = r.open_session("alice");
        let seq = |n| quorate_api::Sequenced { session, seq: n };
        let grant = || CommandOp::ByPrincipal { principal: "alice".into(), op: KvOp::LeaseGrant { ttl_ms: 5_000 } };
        let first = r.out_in(seq(1), grant());
        let Ok(Response::LeaseGranted { id, ttl_ms: 5_000 }) = first.result else { panic!("{:?}", first.result) };
        assert!(matches!(first.lease, Some(LeaseChange::Granted { id: g, .. }) if g == id), "{:?}", first.lease);
        let retry = r.out_in(seq(1), grant());
        assert_eq!(retry.result, first.result, "the retry is answered with the same lease");
        assert!(retry.cached && retry.lease.is_none(), "and applied once: {retry:?}");
        assert_eq!(all_leases(&r.map).unwrap().len(), 1, "one lease granted");

        r.put_leased("alice", "k", "v", id).unwrap();
        let revoke =
            || CommandOp::ByPrincipal { principal: "alice".into(), op: KvOp::LeaseRevoke { id, admin: false } };
        let first = r.out_in(seq(2), revoke());
        assert!(matches!(first.result, Ok(Response::LeaseRevoked { deleted: 1, .. })), "{:?}", first.result);
        assert!(first.lease.is_some());
        let retry = r.out_in(seq(2), revoke());
        assert_eq!(retry.result, first.result, "the retry is answered with the first revoke's result");
        assert!(retry.cached && retry.lease.is_none());
        assert!(all_leases(&r.map).unwrap().is_empty() && !r.has("k"));

        // Another principal's session cannot grant in alice's name or revoke her lease.
        let id2 = r.grant("alice", 5_000);
        let bob = r.open_session("bob");
        let out = r.out_in(
            quorate_api::Sequenced { session: bob, seq: 1 },
            CommandOp::ByPrincipal { principal: "bob".into(), op: KvOp::LeaseRevoke { id: id2, admin: false } },
        );
        assert!(out.result.is_err(), "{:?}", out.result);
        assert_eq!(all_leases(&r.map).unwrap().len(), 1);
        // Below cluster version 2 nothing of it applies.
        let mut old = replica(false);
        let out = old.out_in(quorate_api::Sequenced { session: quorate_api::SessionId(1), seq: 1 }, grant());
        assert!(out.result.is_err() && out.lease.is_none(), "{out:?}");
        assert!(all_leases(&old.map).unwrap().is_empty());
    }

    #[test]
    fn a_revoke_deletes_every_attached_key_at_one_revision_with_delete_events() {
        let mut r = replica(true);
        let lease = r.grant("alice", 5_000);
        assert_eq!(lease, LeaseId(r.index), "a lease's id is its grant's log index");
        r.put_leased("alice", "a", "1", lease).unwrap();
        r.put_leased("alice", "b", "2", lease).unwrap();
        r.run(put("c", "3"));
        // A put without the lease detaches the key; a delete too.
        r.put_leased("alice", "d", "4", lease).unwrap();
        r.run(put("d", "5"));
        r.put_leased("alice", "e", "6", lease).unwrap();
        r.run(CommandOp::Delete { key: "e".into() });
        assert_eq!(lease_of(&r.map, b"d").unwrap(), None);
        assert_eq!(lease_info(&r.map, lease, true).unwrap().unwrap().1, vec![b"a".to_vec(), b"b".to_vec()]);
        let before = revision(&r.map).unwrap();
        // Another principal can neither revoke nor attach.
        assert!(r.try_run(CommandOp::LeaseRevoke { principal: "bob".into(), admin: false, id: lease }).is_err());
        assert!(r.put_leased("bob", "x", "1", lease).is_err());
        assert!(!r.has("x"));
        assert_eq!(revision(&r.map).unwrap(), before);
        let out = r.out(CommandOp::LeaseRevoke { principal: "alice".into(), admin: false, id: lease });
        assert_eq!(out.result, Ok(Response::LeaseRevoked { deleted: 2, revision: before + 1 }));
        assert_eq!(out.lease, Some(LeaseChange::Gone(lease)));
        assert!(!r.has("a") && !r.has("b") && r.has("c") && r.has("d"));
        assert_eq!(
            watch_all(&r.map, before + 1),
            vec![(EventKind::Delete, b"a".to_vec(), before + 1), (EventKind::Delete, b"b".to_vec(), before + 1)]
        );
        // Nothing of the lease is left, and the counters are back to zero (absent).
        assert!(r.map.keys().all(|k| ![LEASE, ATTACHED, KEY_LEASE, PRINCIPAL_LEASES].contains(&k[0])));
        assert!(!r.map.contains_key(META_LEASES));
    }

    #[test]
    fn an_expire_deletes_the_keys_and_a_stale_expire_is_a_no_op() {
        let mut r = replica(true);
        let lease = r.grant("alice", 5_000);
        r.put_leased("alice", "a", "1", lease).unwrap();
        let before = revision(&r.map).unwrap();
        let out = r.out(CommandOp::LeaseExpire { id: lease });
        assert_eq!(out.result, Ok(Response::LeaseRevoked { deleted: 1, revision: before + 1 }));
        assert!(!r.has("a"));
        assert_eq!(watch_all(&r.map, before + 1), vec![(EventKind::Delete, b"a".to_vec(), before + 1)]);
        // Again, or after a revoke, or of a lease never granted: an error result, nothing changes.
        let state = r.map.clone();
        for id in [lease, LeaseId(12_345)] {
            let out = r.out(CommandOp::LeaseExpire { id });
            assert!(out.result.is_err());
            assert_eq!(out.lease, Some(LeaseChange::Gone(id)));
        }
        let mut without_time = r.map.clone();
        without_time.remove(super::super::META_TIME);
        let mut state = state;
        state.remove(super::super::META_TIME);
        assert_eq!(without_time, state);
        // An expired lease takes no key.
        assert!(r.put_leased("alice", "z", "1", lease).is_err());
        assert!(!r.has("z"));
    }

    #[test]
    fn an_admin_may_revoke_and_attach_and_an_empty_lease_revokes_at_the_current_revision() {
        let mut r = replica(true);
        let lease = r.grant("alice", 5_000);
        let op = KvOp::PutLeased { key: "k".into(), value: "v".into(), lease, admin: true };
        r.run(CommandOp::ByPrincipal { principal: "root".into(), op });
        assert_eq!(lease_of(&r.map, b"k").unwrap(), Some(lease));
        let rev = revision(&r.map).unwrap();
        let r2 = r.grant("alice", 5_000);
        assert_eq!(
            r.run(CommandOp::LeaseRevoke { principal: "alice".into(), admin: false, id: r2 }),
            Response::LeaseRevoked { deleted: 0, revision: rev }
        );
        assert_eq!(
            r.run(CommandOp::LeaseRevoke { principal: "root".into(), admin: true, id: lease }),
            Response::LeaseRevoked { deleted: 1, revision: rev + 1 }
        );
    }

    #[test]
    fn moving_a_key_to_another_lease_detaches_it_from_the_first() {
        let mut r = replica(true);
        let (l1, l2) = (r.grant("alice", 5_000), r.grant("alice", 5_000));
        r.put_leased("alice", "k", "1", l1).unwrap();
        r.put_leased("alice", "k", "2", l2).unwrap();
        // A transaction's put detaches too.
        r.put_leased("alice", "t", "1", l1).unwrap();
        let txn =
            Txn { compare: vec![], success: vec![TxnOp::Put { key: "t".into(), value: "2".into() }], failure: vec![] };
        r.run(CommandOp::Txn(txn));
        assert_eq!(lease_info(&r.map, l1, true).unwrap().unwrap().0.keys, 0);
        r.run(CommandOp::LeaseRevoke { principal: "alice".into(), admin: false, id: l1 });
        assert!(r.has("k") && r.has("t"));
        r.run(CommandOp::LeaseRevoke { principal: "alice".into(), admin: false, id: l2 });
        assert!(!r.has("k"));
    }

    #[test]
    fn limits_are_refused_with_a_clear_error() {
        let mut r = replica(true);
        // TTL bounds.
        for ttl in [0, limits::LEASE_TTL_MS_MIN - 1, limits::LEASE_TTL_MS_MAX + 1] {
            assert!(r.try_run(CommandOp::LeaseGrant { principal: "alice".into(), ttl_ms: ttl }).is_err());
        }
        assert!(r.try_run(CommandOp::LeaseGrant { principal: String::new(), ttl_ms: 5_000 }).is_err());
        // Keys per lease.
        let lease = r.grant("alice", 5_000);
        for i in 0..limits::LEASE_KEYS_MAX {
            r.put_leased("alice", &format!("k{i:05}"), "v", lease).unwrap();
        }
        // Writing an attached key again stays within the bound.
        r.put_leased("alice", "k00000", "w", lease).unwrap();
        let e = r.put_leased("alice", "one-more", "v", lease).unwrap_err();
        assert!(e.to_string().contains("the most one lease may"), "{e}");
        assert!(!r.has("one-more"));
        // Its deletion fits one command.
        let out = r.out(CommandOp::LeaseRevoke { principal: "alice".into(), admin: false, id: lease });
        assert!(matches!(out.result, Ok(Response::LeaseRevoked { deleted, .. }) if deleted == limits::LEASE_KEYS_MAX));
        // Value bytes per lease.
        let lease = r.grant("alice", 5_000);
        let big = "x".repeat(limits::VALUE_BYTES_MAX);
        let fit = limits::LEASE_VALUE_BYTES_MAX as usize / limits::VALUE_BYTES_MAX;
        for i in 0..fit {
            r.put_leased("alice", &format!("big{i}"), &big, lease).unwrap();
        }
        assert!(r.put_leased("alice", "big-more", &big, lease).is_err());
        r.run(CommandOp::LeaseRevoke { principal: "alice".into(), admin: false, id: lease });
        // Leases per principal.
        for _ in 0..limits::LEASES_PER_PRINCIPAL_MAX {
            r.grant("alice", 5_000);
        }
        let e = r.try_run(CommandOp::LeaseGrant { principal: "alice".into(), ttl_ms: 5_000 }).unwrap_err();
        assert!(e.to_string().contains("the most one principal may"), "{e}");
        r.grant("bob", 5_000);
        assert_eq!(all_leases(&r.map).unwrap().len() as u64, limits::LEASES_PER_PRINCIPAL_MAX + 1);
    }

    #[test]
    fn leases_are_refused_below_cluster_version_2_and_change_nothing() {
        let mut r = replica(false);
        r.run(put("a", "1"));
        let state = r.map.clone();
        assert!(r.try_run(CommandOp::LeaseGrant { principal: "alice".into(), ttl_ms: 5_000 }).is_err());
        assert!(r.try_run(CommandOp::LeaseExpire { id: LeaseId(1) }).is_err());
        assert!(r.try_run(CommandOp::LeaseRevoke { principal: "a".into(), admin: true, id: LeaseId(1) }).is_err());
        let mut now = r.map.clone();
        now.remove(super::super::META_TIME);
        let mut state = state;
        state.remove(super::super::META_TIME);
        assert_eq!(now, state);
    }

    #[test]
    fn replicas_that_batch_differently_write_identical_bytes() {
        // A seeded mix of lease and key-value commands, applied one per batch on one replica
        // and in batches of several on another.
        let mut rng = 0x2200_u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut ops = vec![CommandOp::SetClusterVersion { version: LEASES_CLUSTER_VERSION }];
        let mut granted = Vec::new();
        for i in 2..400u64 {
            let op = match next() % 7 {
                0 => {
                    granted.push(LeaseId(i));
                    CommandOp::LeaseGrant { principal: format!("p{}", next() % 3), ttl_ms: 5_000 }
                }
                1 | 2 if !granted.is_empty() => {
                    let lease = granted[(next() as usize) % granted.len()];
                    let op = KvOp::PutLeased {
                        key: format!("k{}", next() % 30).into(),
                        value: b"v".to_vec(),
                        lease,
                        admin: false,
                    };
                    CommandOp::ByPrincipal { principal: format!("p{}", next() % 3), op }
                }
                3 if !granted.is_empty() => CommandOp::LeaseExpire { id: granted[(next() as usize) % granted.len()] },
                4 if !granted.is_empty() => CommandOp::LeaseRevoke {
                    principal: format!("p{}", next() % 3),
                    admin: false,
                    id: granted[(next() as usize) % granted.len()],
                },
                5 => CommandOp::Delete { key: format!("k{}", next() % 30).into() },
                _ => put(&format!("k{}", next() % 30), "w"),
            };
            ops.push(op);
        }
        let apply = |per_batch: usize| {
            let mut r = replica(false);
            let mut results = Vec::new();
            for chunk in ops.chunks(per_batch) {
                results.extend(r.run_all(chunk.to_vec()));
            }
            (r.map, results)
        };
        let (one, r1) = apply(1);
        let (many, r2) = apply(17);
        assert_eq!(r1, r2);
        assert_eq!(one, many);
        assert!(r1.iter().any(|r| matches!(r, Ok(Response::LeaseRevoked { deleted, .. }) if *deleted > 0)));
    }

    #[test]
    fn a_delete_range_of_leased_keys_stays_within_one_commands_writes() {
        // A delete-range detaches every leased key it deletes (two more writes each, and the
        // lease's record) in the same command as the history and the event index drop what
        // a compaction left (two writes and one per record): it must still fit one command's
        // writes, answering `more` if need be, never be refused.
        let mut r = replica(true);
        let per_lease = 1_000;
        for l in 0..2 {
            let lease = r.grant("alice", 5_000);
            for i in 0..per_lease {
                r.put_leased("alice", &format!("r{:05}", l * per_lease + i), "v", lease).unwrap();
            }
        }
        // Versions and events for the compaction to leave behind (it drops at most
        // HISTORY_DROP_PER_COMMAND itself; the next commands drop the rest).
        for i in 0..(2 * super::super::history::HISTORY_DROP_PER_COMMAND + 100) {
            r.run(put("w", &i.to_string()));
        }
        let current = revision(&r.map).unwrap();
        r.run(CommandOp::Compact { revision: current });
        let mut deleted = 0;
        loop {
            match r.try_run(CommandOp::DeleteRange { start: b"r".to_vec(), end: b"s".to_vec() }) {
                Ok(Response::DeletedRange { deleted: d, more, .. }) => {
                    deleted += d;
                    if !more {
                        break;
                    }
                }
                other => panic!("a delete-range of leased keys: {other:?}"),
            }
        }
        assert_eq!(deleted, 2 * per_lease);
        assert!(!r.has("r00000") && !r.has("r01999"));
        assert_eq!(lease_of(&r.map, b"r01999").unwrap(), None);
    }
}
