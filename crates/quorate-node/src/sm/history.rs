//! Multi-version history: the earlier versions of each key, kept back to a compaction
//! revision, so that a key or a range can be read as it was at a past revision.
//!
//! **When.** Recording starts at a point the log decides: the entry that raises the cluster
//! version to [`HISTORY_CLUSTER_VERSION`] (`quorate cluster finalize`, or a new cluster's
//! automatic raise) sets the compaction revision to the revision at that entry. From then on
//! every replica that applied the same entries holds the same history (it lives in the state
//! machine's column family, so it is in every snapshot and in the hash replicas compare).
//! Before it nothing is recorded and a 0.1.0 replica, which cannot read these records, may
//! still be a member; after it no 0.1.0 binary can join or open the data.
//!
//! **What.** Every write that replaces or removes a visible version (put, cas, delete, a
//! transaction's puts and deletes, delete-range) records the version it replaces, keyed by the
//! key and the revision that replaced it (`end`): the version was the key's value at every
//! revision in `[mod_revision, end)`. A version written and replaced by the same transaction
//! was never visible and is not recorded.
//!
//! | key | value |
//! |---|---|
//! | `h` + escaped key + `00 00` + `end` (big endian) | the replaced [`KvRecord`] |
//! | `r` + `end` (big endian) + key | the `h` entry's size in bytes (u64 LE): the index compaction walks, oldest first |
//! | `m/hist_compacted` | the compaction revision (present: history is recorded) |
//! | `m/hist_entries`, `m/hist_bytes` | entries kept and their bytes |
//! | `m/hist_scan_from` | a revision no index entry's `end` is below: where the walks of the index start (absent: 0) |
//!
//! The key is escaped (`00` as `00 ff`, ended by `00 00`) so that the entries of one key are
//! contiguous and keys keep their order: a read at revision `R` is one seek to the key's first
//! entry with `end > R`.
//!
//! **Compaction.** [`CommandOp::Compact`](quorate_api::CommandOp::Compact) raises the
//! compaction revision `C`: entries with `end <= C` serve only reads below `C`, and are
//! dropped — up to [`HISTORY_DROP_PER_COMMAND`] by the compaction itself and as many again
//! by every later write, oldest first, so a command's writes stay bounded. A hard bound keeps
//! the history finite whatever the operator configures: past [`HISTORY_ENTRIES_MAX`] entries
//! (or [`HISTORY_BYTES_MAX`] bytes) a write drops the oldest entries and raises the compaction
//! revision past them — deterministically, the same on every replica.
//!
//! **Where the index walks start.** Every write asks whether anything is due, and RocksDB
//! keeps a dropped key as a tombstone until its own compaction removes it, so a walk from the
//! start of the index would step over every entry dropped lately — a cost per write that grows
//! with the entries compaction drops. Drops are oldest first and an entry's `end` is the
//! revision of the command that records it (never below the compaction revision), so every
//! index entry left has `end` at or above the `end` of the last one dropped: `m/hist_scan_from`
//! keeps that revision and the walks seek from it. The walk is
//! [`super::rev_index`]'s, shared with the event index.

use super::rev_index::RevIndex;
use super::{
    KV, KvRecord, Overlay, PAGE, ScanPage, SmError, SmRead, corrupt, decode, encode, get_kv, kv_key, ov_u64, to_kv,
};
use quorate_api::{ApiError, KeyValue, encoded_len};

/// The cluster version from which history is recorded and reads at a revision, compaction and
/// [`quorate_api::Request::History`] are served.
pub(crate) const HISTORY_CLUSTER_VERSION: u32 = 2;
/// Most history entries kept: a write that brings the count past it drops the oldest ones and
/// raises the compaction revision (the operator's automatic compaction normally keeps the
/// history far below).
pub(crate) const HISTORY_ENTRIES_MAX: u64 = 1_000_000;
/// Most bytes of history kept (the same rule; a command may pass it by what it adds, the next
/// writes bring it back under).
pub(crate) const HISTORY_BYTES_MAX: u64 = 1 << 30;
/// Most history entries one command drops (compaction and the bound together).
pub(crate) const HISTORY_DROP_PER_COMMAND: usize = 2048;
/// Most keys one delete-range removes while history is recorded (each adds two history
/// writes); beyond, it answers `more` and the client asks again.
pub(crate) const HISTORY_RANGE_KEYS_MAX: usize = 2000;
/// Most bytes of replaced versions one delete-range records; beyond, it answers `more`.
pub(crate) const HISTORY_RANGE_BYTES_MAX: usize = 64 << 20;
/// Keys a read at a revision examines per page (a range full of keys deleted before the
/// revision costs work but gives no pairs): past it the page ends with a continuation.
pub(crate) const SCAN_AT_EXAMINED_MAX: usize = 4 * PAGE;

// One command's writes stay within what a command may write: a delete-range's three writes
// per key, the drops' two, and a few for the counters.
const _: () = assert!(3 * HISTORY_RANGE_KEYS_MAX + 2 * HISTORY_DROP_PER_COMMAND + 16 <= super::COMMAND_WRITES_MAX);
// Enough is dropped per command that the entry bound holds after every command.
const _: () = assert!(HISTORY_DROP_PER_COMMAND >= HISTORY_RANGE_KEYS_MAX);
const _: () = assert!(HISTORY_DROP_PER_COMMAND >= 3 * quorate_api::limits::TXN_OPS_MAX);

pub(super) const HIST: u8 = b'h';
pub(super) const HIST_BY_REV: u8 = b'r';
pub(super) const META_HIST_COMPACTED: &[u8] = b"m/hist_compacted";
const META_HIST_ENTRIES: &[u8] = b"m/hist_entries";
const META_HIST_BYTES: &[u8] = b"m/hist_bytes";
const META_HIST_SCAN_FROM: &[u8] = b"m/hist_scan_from";

/// The index by revision (`r` + `end` + key), and the history's bookkeeping.
const INDEX: RevIndex = RevIndex {
    tag: HIST_BY_REV,
    on: META_HIST_COMPACTED,
    entries: META_HIST_ENTRIES,
    bytes: META_HIST_BYTES,
    scan_from: META_HIST_SCAN_FROM,
    bad_key: "bad index key",
};

/// The history's state in a state machine.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub(crate) struct HistoryState {
    /// Reads below this revision are refused.
    pub(crate) compacted: u64,
    /// Entries kept.
    pub(crate) entries: u64,
    /// Their bytes.
    pub(crate) bytes: u64,
}

/// The history's state in `r` (`None`: not recorded, the cluster is below
/// [`HISTORY_CLUSTER_VERSION`]).
pub(crate) fn history_state(r: &(impl SmRead + ?Sized)) -> Result<Option<HistoryState>, SmError> {
    Ok(INDEX.state(r)?.map(|[compacted, entries, bytes]| HistoryState { compacted, entries, bytes }))
}

fn escaped(key: &[u8], out: &mut Vec<u8>) {
    for &b in key {
        if b == 0 {
            out.extend_from_slice(&[0, 0xff]);
        } else {
            out.push(b);
        }
    }
}

/// `h` + the escaped key, without the terminator: every entry of a key `>= key` sorts at or
/// after it, every entry of a smaller key before.
fn hist_seek(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 12);
    k.push(HIST);
    escaped(key, &mut k);
    k
}

/// The prefix of every entry of `key`.
fn hist_prefix(key: &[u8]) -> Vec<u8> {
    let mut k = hist_seek(key);
    k.extend_from_slice(&[0, 0]);
    k
}

/// Past every entry of `key` (its prefix ends `0 0`; `0 1` follows each of them) and before
/// any other key's.
fn hist_prefix_end(key: &[u8]) -> Vec<u8> {
    let mut k = hist_seek(key);
    k.extend_from_slice(&[0, 1]);
    k
}

pub(super) fn hist_key(key: &[u8], end: u64) -> Vec<u8> {
    let mut k = hist_prefix(key);
    k.extend_from_slice(&end.to_be_bytes());
    k
}

/// The user key of a history entry's key, and its `end`.
fn parse_hist_key(k: &[u8]) -> Result<(Vec<u8>, u64), SmError> {
    let bad = || corrupt(k, "not a history key");
    if k.first() != Some(&HIST) {
        return Err(bad());
    }
    let mut user = Vec::new();
    let mut i = 1;
    loop {
        match (k.get(i), k.get(i + 1)) {
            (Some(0), Some(0)) => break,
            (Some(0), Some(0xff)) => {
                user.push(0);
                i += 2;
            }
            (Some(0), _) | (None, _) => return Err(bad()),
            (Some(&b), _) => {
                user.push(b);
                i += 1;
            }
        }
    }
    let end: [u8; 8] = k.get(i + 2..).and_then(|t| t.try_into().ok()).ok_or_else(bad)?;
    Ok((user, u64::from_be_bytes(end)))
}

/// Turns history on at the current revision (the entry that raised the cluster version to
/// [`HISTORY_CLUSTER_VERSION`]); no change if it is on.
pub(super) fn enable<R: SmRead + ?Sized>(ov: &mut Overlay<'_, R>) -> Result<(), SmError> {
    INDEX.enable(ov)
}

/// Whether history is recorded in the state `ov` sees.
pub(super) fn enabled<R: SmRead + ?Sized>(ov: &Overlay<'_, R>) -> Result<bool, SmError> {
    INDEX.enabled(ov)
}

/// Records `old`, the version of `key` that a write at revision `end` replaces or removes, if
/// history is on and the version was visible (written before `end`). Returns its bytes.
pub(super) fn record<R: SmRead + ?Sized>(
    ov: &mut Overlay<'_, R>,
    key: &[u8],
    old: &KvRecord,
    end: u64,
) -> Result<usize, SmError> {
    if old.mod_revision >= end || !enabled(ov)? {
        return Ok(0);
    }
    let hk = hist_key(key, end);
    let value = encode(old);
    let size = hk.len() + value.len();
    // One entry per key and revision (a second replacement in the same command replaces a
    // version written at `end`, caught above); were one there, it is replaced and counted once.
    let (entries, before) = match ov.get_at_revision(&hk, end)? {
        Some(prev) => (0, (hk.len() + prev.len()) as i64),
        None => (1, 0),
    };
    ov.put(hk, value);
    ov.put(INDEX.key(end, key), (size as u64).to_le_bytes().to_vec());
    INDEX.add_counters(ov, entries, size as i64 - before)?;
    Ok(size)
}

/// Drops, oldest first and at most `budget`, the entries compaction left (`end` at or below
/// the compaction revision) and, while the history is past its bounds, the oldest entries
/// (raising the compaction revision past them). Returns the number dropped.
pub(super) fn maintain<R: SmRead + ?Sized>(ov: &mut Overlay<'_, R>, budget: usize) -> Result<usize, SmError> {
    maintain_within(ov, budget, HISTORY_ENTRIES_MAX, HISTORY_BYTES_MAX)
}

/// [`maintain`] with the bounds as arguments (tests use small ones).
fn maintain_within<R: SmRead + ?Sized>(
    ov: &mut Overlay<'_, R>,
    budget: usize,
    entries_max: u64,
    bytes_max: u64,
) -> Result<usize, SmError> {
    if !enabled(ov)? {
        return Ok(0);
    }
    let compacted = ov_u64(ov, META_HIST_COMPACTED)?;
    let dropped = INDEX.drop_oldest(ov, budget, (entries_max, bytes_max), compacted, |ov, rk, end| {
        let Some(size) = ov.get(&rk)? else { return Ok(None) };
        let size: [u8; 8] = size.as_slice().try_into().map_err(|_| corrupt(&rk, "not 8 bytes"))?;
        ov.delete(hist_key(&rk[9..], end));
        ov.delete(rk);
        Ok(Some(u64::from_le_bytes(size)))
    })?;
    if dropped.count > 0 {
        ov.put(META_HIST_COMPACTED.to_vec(), dropped.compacted.to_le_bytes().to_vec());
    }
    Ok(dropped.count)
}

/// Applies a compaction to `revision`: the answer, and the entries it drops.
pub(super) fn compact<R: SmRead + ?Sized>(
    ov: &mut Overlay<'_, R>,
    revision: u64,
) -> Result<Result<u64, ApiError>, SmError> {
    let current = ov_u64(ov, super::META_REVISION)?;
    if revision > current {
        return Ok(Err(ApiError::FutureRevision { revision, current }));
    }
    let compacted = ov_u64(ov, META_HIST_COMPACTED)?;
    if revision > compacted {
        ov.put(META_HIST_COMPACTED.to_vec(), revision.to_le_bytes().to_vec());
    }
    maintain(ov, HISTORY_DROP_PER_COMMAND)?;
    super::events::maintain(ov, super::events::EVENTS_DROP_PER_COMMAND)?;
    Ok(Ok(ov_u64(ov, META_HIST_COMPACTED)?))
}

/// Checks that `revision` can be read in `r`; returns the history's state.
pub(super) fn check_revision(r: &(impl SmRead + ?Sized), revision: u64) -> Result<Result<(), ApiError>, SmError> {
    let Some(state) = history_state(r)? else {
        return Ok(Err(not_recorded(r, "history is not recorded yet; retry after a write", "a read at a revision")?));
    };
    let current = super::revision(r)?;
    if revision > current {
        return Ok(Err(ApiError::FutureRevision { revision, current }));
    }
    if revision < state.compacted {
        return Ok(Err(ApiError::Compacted { revision, compacted: state.compacted }));
    }
    Ok(Ok(()))
}

/// Why `what` cannot be served from `r`, where what it reads is not recorded: below
/// [`HISTORY_CLUSTER_VERSION`] the gate's refusal; at it, `unavailable` — nothing was applied
/// since the cluster version was raised (recording starts at the next command), a state this
/// binary's own finalize never leaves.
pub(super) fn not_recorded(r: &(impl SmRead + ?Sized), unavailable: &str, what: &str) -> Result<ApiError, SmError> {
    let cv = super::cluster_version(r)?;
    if cv >= HISTORY_CLUSTER_VERSION {
        return Ok(ApiError::Unavailable(unavailable.into()));
    }
    Ok(super::gated(what, HISTORY_CLUSTER_VERSION, cv))
}

/// The version of `key` at `revision` (checked readable), `None`: absent then.
pub(super) fn version_at<R: SmRead + ?Sized>(r: &R, key: &[u8], revision: u64) -> Result<Option<KvRecord>, SmError> {
    let ov = Overlay::new(r);
    if let Some(current) = get_kv(&ov, key)?
        && current.mod_revision <= revision
    {
        return Ok(Some(current));
    }
    // The first entry replaced after `revision`: the version it holds was current at
    // `revision` if it had been written by then; otherwise the key was absent.
    // The seek ends with the key's own entries: a key without one after `revision` (created
    // later, or deleted before it and created again) finds nothing at once, rather than going
    // on over every dropped entry of the keys after it.
    let prefix = hist_prefix(key);
    let mut from = prefix.clone();
    from.extend_from_slice(&revision.saturating_add(1).to_be_bytes());
    let end = hist_prefix_end(key);
    let Some((k, v)) = r.sm_scan_range(&from, Some(&end), 1, 1)?.into_iter().next() else { return Ok(None) };
    if !k.starts_with(&prefix) || k.len() != prefix.len() + 8 {
        return Ok(None);
    }
    let rec: KvRecord = decode(&k, &v)?;
    Ok((rec.mod_revision <= revision).then_some(rec))
}

/// `key`'s current version if it was written by `revision`: `key` as it was at `revision` when
/// it has no history entry (every version it replaced was dropped by compaction, at or below
/// the compaction revision, which a read's revision is not below).
fn current_at<R: SmRead + ?Sized>(r: &R, key: &[u8], revision: u64) -> Result<Option<KvRecord>, SmError> {
    Ok(get_kv(&Overlay::new(r), key)?.filter(|c| c.mod_revision <= revision))
}

/// Reads `key` as it was at `revision`.
pub(crate) fn read_get_at<R: SmRead + ?Sized>(
    r: &R,
    key: &[u8],
    revision: u64,
) -> Result<Result<Option<KeyValue>, ApiError>, SmError> {
    if let Err(e) = check_revision(r, revision)? {
        return Ok(Err(e));
    }
    Ok(Ok(version_at(r, key, revision)?.map(|rec| to_kv(key, rec))))
}

/// What a page of a read at a revision has sought so far: for the current keys and for the
/// history's, the first user key at or after the `from` of the last seek (`Some(None)`: none).
/// While `from` has not passed it, it is still the first, and the seek is not made again. A
/// seek passes every deleted entry in its way (tombstones, until a compaction drops them), so
/// one per key examined made a page quadratic over a range of deleted keys (16,384 of them
/// took longer than a client waits) or of keys whose history was dropped.
#[derive(Default)]
struct Seeks {
    live: Option<Option<Vec<u8>>>,
    old: Option<Option<Vec<u8>>>,
}

/// The first user key at or after `from` that `slot` remembers, or else that `seek` finds.
fn sought(
    slot: &mut Option<Option<Vec<u8>>>,
    from: &[u8],
    seek: impl FnOnce() -> Result<Option<Vec<u8>>, SmError>,
) -> Result<Option<Vec<u8>>, SmError> {
    let known = match slot {
        Some(Some(k)) => k.as_slice() >= from,
        Some(None) => true,
        None => false,
    };
    if !known {
        *slot = Some(seek()?);
    }
    Ok(slot.clone().flatten())
}

/// The smallest user key `>= from` (and `< end`) that has a current version or a history
/// entry; `from` grows from one call to the next within a page.
fn next_candidate<R: SmRead + ?Sized>(
    r: &R,
    from: &[u8],
    end: Option<&[u8]>,
    seeks: &mut Seeks,
) -> Result<Option<Vec<u8>>, SmError> {
    // Each seek ends at the range's end (or its family's): past it, it would step over every
    // deleted key up to the next live one of no interest.
    let live = sought(&mut seeks.live, from, || {
        let end = end.map_or_else(|| vec![KV + 1], kv_key);
        Ok(r.sm_scan_range(&kv_key(from), Some(&end), 1, 1)?
            .into_iter()
            .next()
            .filter(|(k, _)| k.first() == Some(&KV))
            .map(|(k, _)| k[1..].to_vec()))
    })?;
    let old = sought(&mut seeks.old, from, || {
        let end = end.map_or_else(|| vec![HIST + 1], hist_seek);
        match r.sm_scan_range(&hist_seek(from), Some(&end), 1, 1)?.into_iter().next() {
            Some((k, _)) if k.first() == Some(&HIST) => Ok(Some(parse_hist_key(&k)?.0)),
            _ => Ok(None),
        }
    })?;
    let next = match (live, old) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok(next.filter(|k| end.is_none_or(|e| k.as_slice() < e)))
}

/// One page of the keys in `[start, end)` as they were at `revision`: at most `limit` pairs
/// within `result_bytes_max` (the first always), ending early (with a continuation) after
/// [`SCAN_AT_EXAMINED_MAX`] keys examined.
pub(crate) fn read_scan_at_page<R: SmRead + ?Sized>(
    r: &R,
    start: &[u8],
    end: Option<&[u8]>,
    limit: u32,
    revision: u64,
    result_bytes_max: usize,
) -> Result<Result<ScanPage, ApiError>, SmError> {
    if let Err(e) = check_revision(r, revision)? {
        return Ok(Err(e));
    }
    let limit = limit as usize;
    let mut kvs = Vec::new();
    let mut used = 0usize;
    let mut from = start.to_vec();
    let mut seeks = Seeks::default();
    for _ in 0..SCAN_AT_EXAMINED_MAX {
        let Some(key) = next_candidate(r, &from, end, &mut seeks)? else { return Ok(Ok(ScanPage { kvs, next: None })) };
        // A key that is not the first history key the page found has no history entry: nothing
        // older than its current version, and no seek of its history (which, with no entry of
        // its own to stop at, would run on over every dropped entry to the next key's).
        let has_history = seeks.old.as_ref().is_some_and(|o| o.as_deref() == Some(key.as_slice()));
        let rec = if has_history { version_at(r, &key, revision)? } else { current_at(r, &key, revision)? };
        if let Some(rec) = rec {
            if kvs.len() == limit {
                return Ok(Ok(ScanPage { kvs, next: Some(key) }));
            }
            let kv = to_kv(&key, rec);
            let len = encoded_len(&kv);
            if !kvs.is_empty() && used.saturating_add(len) > result_bytes_max {
                return Ok(Ok(ScanPage { kvs, next: Some(key) }));
            }
            used = used.saturating_add(len);
            kvs.push(kv);
        }
        from = key;
        from.push(0);
    }
    Ok(Ok(ScanPage { kvs, next: Some(from) }))
}

#[cfg(test)]
mod tests {
    use super::super::test_replica::{self, Map, Replica, Workload};
    use super::super::{Overlay, apply_command, read_scan_page, revision, write_snapshot_data};
    use super::*;
    use quorate_api::{Command, CommandOp, Response, Txn, TxnOp};
    use quorate_log::LogIndex;

    /// A test replica, finalized to the history's cluster version when `finalized`.
    fn replica(finalized: bool) -> Replica {
        Replica::new(finalized.then_some(HISTORY_CLUSTER_VERSION))
    }

    impl Replica {
        fn entries(&self) -> u64 {
            history_state(&self.map).unwrap().map_or(0, |s| s.entries)
        }

        /// Every read at every revision from `from` agrees with the model.
        fn check_reads_from(&self, from: u64) {
            let current = revision(&self.map).unwrap();
            for (&rev, kvs) in self.states.range(from..) {
                let scan = read_scan_at_page(&self.map, b"", None, 100_000, rev, usize::MAX).unwrap().unwrap();
                assert_eq!(&scan.kvs, kvs, "scan at revision {rev}");
                assert_eq!(scan.next, None);
                for kv in kvs {
                    let got = read_get_at(&self.map, &kv.key, rev).unwrap().unwrap();
                    assert_eq!(got.as_ref(), Some(kv), "get {:?} at {rev}", kv.key.escape_ascii().to_string());
                }
                // Keys absent at `rev` but present at some revision read as absent.
                for later in self.states.values().flatten() {
                    if !kvs.iter().any(|kv| kv.key == later.key) {
                        assert_eq!(read_get_at(&self.map, &later.key, rev).unwrap().unwrap(), None, "at {rev}");
                    }
                }
                // Pages of two: the same pairs in order.
                let mut paged = Vec::new();
                let mut start = Vec::new();
                loop {
                    let p = read_scan_at_page(&self.map, &start, None, 2, rev, usize::MAX).unwrap().unwrap();
                    paged.extend(p.kvs);
                    match p.next {
                        Some(n) => start = n,
                        None => break,
                    }
                }
                assert_eq!(&paged, kvs, "paged scan at {rev}");
            }
            let future = read_get_at(&self.map, b"a", current + 1).unwrap();
            assert_eq!(future, Err(ApiError::FutureRevision { revision: current + 1, current }));
        }
    }

    fn put(k: &[u8], v: &[u8]) -> CommandOp {
        CommandOp::Put { key: k.to_vec(), value: v.to_vec() }
    }

    /// A page of a read at a revision seeks each of the current keys and the history's once,
    /// not once per key examined: a seek passes every tombstone in its way (a range of deleted
    /// keys, or of keys whose history was dropped), and repeating it per key made a page
    /// quadratic. Over 300 current keys without history, and over 300 keys deleted (history
    /// only), the page makes at most one seek per key and a few more.
    #[test]
    fn a_page_at_a_revision_seeks_once_per_key_at_most() {
        let mut r = replica(true);
        r.track = false;
        let n = 300;
        for i in 0..n {
            r.run(CommandOp::Put { key: format!("live/{i:04}").into_bytes(), value: b"v".to_vec() });
            r.run(CommandOp::Put { key: format!("gone/{i:04}").into_bytes(), value: b"v".to_vec() });
        }
        for i in 0..n {
            r.run(CommandOp::Delete { key: format!("gone/{i:04}").into_bytes() });
        }
        let at = revision(&r.map).unwrap();
        for (start, end, pairs) in [(&b"live/"[..], &b"live0"[..], n), (b"gone/", b"gone0", 0)] {
            let store = Tombstoned::new(&r.map, &NO_TOMBSTONES);
            let page = read_scan_at_page(&store, start, Some(end), 100_000, at, usize::MAX).unwrap().unwrap();
            assert_eq!((page.kvs.len(), page.next), (pairs, None));
            // One seek per key in the page's own walk, one for a version older than the current
            // (the deleted keys' history), and the other family's once.
            let seeks = store.seeks.get();
            assert!(seeks <= 2 * n + 4 && (pairs == 0 || seeks <= n + 4), "{seeks} seeks for {n} keys from {start:?}");
        }
    }

    /// Keys created after the revision read absent, and a page over them seeks no history for
    /// them: a key without a history entry has nothing older than its current version. (The
    /// seek from the key's own history position has no upper bound: past a range of dropped
    /// history it passed every tombstone, once per such key — a read-role client's scans at an
    /// older revision over keys written since cost a page N × T; found by review.)
    #[test]
    fn a_page_at_a_revision_seeks_no_history_for_keys_created_after_it() {
        let mut r = replica(true);
        r.track = false;
        let at = revision(&r.map).unwrap();
        let n = 300;
        for i in 0..n {
            r.run(CommandOp::Put { key: format!("new/{i:04}").into_bytes(), value: b"v".to_vec() });
        }
        let store = Tombstoned::new(&r.map, &NO_TOMBSTONES);
        let page = read_scan_at_page(&store, b"new/", Some(b"new0"), 100_000, at, usize::MAX).unwrap().unwrap();
        assert_eq!((page.kvs.len(), page.next), (0, None));
        let seeks = store.seeks.get();
        assert!(seeks <= n + 4, "{seeks} seeks for {n} keys created after the revision");
    }

    #[test]
    fn every_write_kind_records_what_it_replaces_and_reads_at_each_revision_see_it() {
        let mut r = replica(true);
        let start = revision(&r.map).unwrap();
        assert_eq!(history_state(&r.map).unwrap().map(|s| (s.compacted, s.entries)), Some((start, 0)));
        r.run(put(b"a", b"1"));
        assert_eq!(r.entries(), 0, "a new key replaces nothing");
        r.run(put(b"a", b"2"));
        assert_eq!(r.entries(), 1, "put");
        r.run(CommandOp::Cas { key: b"a".to_vec(), expected: Some(b"2".to_vec()), value: b"3".to_vec() });
        assert_eq!(r.entries(), 2, "cas");
        r.run(CommandOp::Cas { key: b"a".to_vec(), expected: Some(b"x".to_vec()), value: b"4".to_vec() });
        assert_eq!(r.entries(), 2, "a failed cas replaces nothing");
        r.run(CommandOp::Delete { key: b"a".to_vec() });
        assert_eq!(r.entries(), 3, "delete");
        r.run(CommandOp::Delete { key: b"a".to_vec() });
        assert_eq!(r.entries(), 3, "deleting an absent key");
        r.run(put(b"b", b"1"));
        r.run(put(b"c", b"1"));
        // A transaction: a put over b, a delete of c, a put of a written twice (the first
        // version of a is never visible: not recorded).
        let txn = Txn {
            compare: vec![],
            success: vec![
                TxnOp::Put { key: b"b".to_vec(), value: b"2".to_vec() },
                TxnOp::Delete { key: b"c".to_vec() },
                TxnOp::Put { key: b"a".to_vec(), value: b"5".to_vec() },
                TxnOp::Put { key: b"a".to_vec(), value: b"6".to_vec() },
                TxnOp::Get { key: b"a".to_vec() },
            ],
            failure: vec![],
        };
        r.run(CommandOp::Txn(txn));
        assert_eq!(r.entries(), 5, "txn: b's and c's old versions");
        r.run(put(b"d", b"1"));
        let dr = r.try_run(CommandOp::DeleteRange { start: b"a".to_vec(), end: b"c".to_vec() });
        assert!(matches!(dr, Ok(Response::DeletedRange { deleted: 2, more: false, .. })), "{dr:?}");
        assert_eq!(r.entries(), 7, "delete-range");
        r.run(put(b"a", b"7"));
        r.check_reads_from(start);
    }

    /// Keys that are prefixes of each other and hold 0 bytes: the escaping keeps them apart.
    const WORKLOAD: Workload =
        Workload { keys: [b"a", b"a\0", b"a\0b", b"a\0\0", b"ab", b"b", b"\0"], puts: 5, txn_ops: 3 };

    fn random_ops(seed: u64, count: usize) -> Vec<CommandOp> {
        test_replica::random_ops(seed, count, &WORKLOAD)
    }

    #[test]
    fn seeded_workloads_read_right_at_every_revision_however_they_are_batched() {
        for seed in 1..=20u64 {
            let ops = random_ops(seed * 7919, 120);
            let mut one = replica(true);
            let start = revision(&one.map).unwrap();
            for op in ops.clone() {
                one.run(op);
            }
            one.check_reads_from(start);
            // The same log in batches of 7: the same state, history included.
            let mut batched = replica(true);
            for chunk in ops.chunks(7) {
                assert!(batched.run_all(chunk.to_vec()).iter().all(Result::is_ok));
            }
            assert_eq!(batched.map, one.map, "seed {seed}");
        }
    }

    #[test]
    fn compaction_drops_exactly_the_versions_replaced_at_or_before_it() {
        let mut r = replica(true);
        let start = revision(&r.map).unwrap();
        for op in random_ops(42, 200) {
            r.run(op);
        }
        let current = revision(&r.map).unwrap();
        let c = start + (current - start) / 2;
        // What must remain: the entries whose version was replaced after `c`.
        let ends: Vec<u64> =
            r.map.keys().filter(|k| k.first() == Some(&HIST)).map(|k| parse_hist_key(k).unwrap().1).collect();
        let keep = ends.iter().filter(|&&e| e > c).count() as u64;
        assert!(keep > 0 && keep < ends.len() as u64, "a compaction that drops some and keeps some");
        assert_eq!(r.try_run(CommandOp::Compact { revision: c }), Ok(Response::Compacted { compacted: c }));
        let state = history_state(&r.map).unwrap().unwrap();
        assert_eq!((state.compacted, state.entries), (c, keep));
        let bytes: u64 =
            r.map.iter().filter(|(k, _)| k.first() == Some(&HIST)).map(|(k, v)| (k.len() + v.len()) as u64).sum();
        assert_eq!(state.bytes, bytes, "the byte count follows the entries");
        assert_eq!(r.map.keys().filter(|k| k.first() == Some(&HIST_BY_REV)).count() as u64, keep, "the index too");
        // Below `c`: refused; from `c` on: as before.
        for rev in [start, c - 1] {
            assert_eq!(
                read_get_at(&r.map, b"a", rev).unwrap(),
                Err(ApiError::Compacted { revision: rev, compacted: c })
            );
            let scan = read_scan_at_page(&r.map, b"", None, 10, rev, usize::MAX).unwrap();
            assert_eq!(scan, Err(ApiError::Compacted { revision: rev, compacted: c }));
        }
        r.check_reads_from(c);
        // Lower again: no change; past the current revision: refused.
        assert_eq!(r.try_run(CommandOp::Compact { revision: start }), Ok(Response::Compacted { compacted: c }));
        let now = revision(&r.map).unwrap();
        assert_eq!(
            r.try_run(CommandOp::Compact { revision: now + 1 }),
            Err(ApiError::FutureRevision { revision: now + 1, current: now })
        );
        // To the current revision: nothing is left, the latest versions still read.
        r.run(CommandOp::Compact { revision: now });
        assert_eq!(r.entries(), 0);
        r.check_reads_from(now);
    }

    #[test]
    fn compaction_of_more_than_one_command_drops_is_finished_by_later_writes() {
        let mut r = replica(true);
        r.track = false;
        for i in 0..(HISTORY_DROP_PER_COMMAND + 500) {
            r.run(put(b"k", format!("{i}").as_bytes()));
        }
        let before = r.entries();
        let now = revision(&r.map).unwrap();
        r.run(CommandOp::Compact { revision: now });
        assert_eq!(r.entries(), before - HISTORY_DROP_PER_COMMAND as u64, "one command drops a bounded number");
        assert_eq!(
            read_get_at(&r.map, b"k", now - 1).unwrap(),
            Err(ApiError::Compacted { revision: now - 1, compacted: now })
        );
        r.run(put(b"other", b"v"));
        assert_eq!(r.entries(), 0, "the next write drops the rest");
    }

    #[test]
    fn past_its_bounds_the_history_drops_its_oldest_entries_and_raises_the_compaction_revision() {
        let mut r = replica(true);
        for i in 0..50 {
            r.run(put(format!("k{}", i % 5).as_bytes(), b"v"));
        }
        assert_eq!(r.entries(), 45);
        let base = r.map.clone();
        let mut ov = Overlay::new(&base);
        assert_eq!(maintain_within(&mut ov, HISTORY_DROP_PER_COMMAND, 10, u64::MAX).unwrap(), 35);
        ov.apply_to(&mut r.map);
        let state = history_state(&r.map).unwrap().unwrap();
        assert_eq!(state.entries, 10);
        // The oldest entry kept was replaced after the new compaction revision.
        let oldest = r.map.keys().filter(|k| k.first() == Some(&HIST)).map(|k| parse_hist_key(k).unwrap().1).min();
        assert!(oldest.unwrap() > state.compacted);
        r.check_reads_from(state.compacted);
        // By bytes too.
        let base = r.map.clone();
        let mut ov = Overlay::new(&base);
        maintain_within(&mut ov, HISTORY_DROP_PER_COMMAND, u64::MAX, state.bytes / 2).unwrap();
        ov.apply_to(&mut r.map);
        assert!(history_state(&r.map).unwrap().unwrap().bytes <= state.bytes / 2);
        let compacted = history_state(&r.map).unwrap().unwrap().compacted;
        r.check_reads_from(compacted);
    }

    #[test]
    fn below_the_cluster_version_nothing_is_recorded_and_history_is_refused_with_the_gate() {
        let mut r = replica(false);
        for op in random_ops(3, 60) {
            let _ = r.try_run(op);
        }
        assert!(r.map.keys().all(|k| !matches!(k.first(), Some(&HIST) | Some(&HIST_BY_REV))), "nothing recorded");
        assert_eq!(history_state(&r.map).unwrap(), None);
        let gate = |e: Result<(), ApiError>| matches!(e, Err(ApiError::InvalidRequest(w)) if w.contains("needs cluster version 2"));
        assert!(gate(r.try_run(CommandOp::Compact { revision: 1 }).map(|_| ())));
        assert!(gate(read_get_at(&r.map, b"a", 1).unwrap().map(|_| ())));
        assert!(gate(read_scan_at_page(&r.map, b"", None, 1, 1, usize::MAX).unwrap().map(|_| ())));
        // Finalizing starts the history at that entry's revision.
        let at = revision(&r.map).unwrap();
        r.run(CommandOp::SetClusterVersion { version: HISTORY_CLUSTER_VERSION });
        assert_eq!(history_state(&r.map).unwrap().map(|s| s.compacted), Some(at));
        let rev = at.saturating_sub(1);
        if at > 0 {
            assert_eq!(
                read_get_at(&r.map, b"a", rev).unwrap(),
                Err(ApiError::Compacted { revision: rev, compacted: at })
            );
        }
        r.states.clear();
        r.states.insert(at, read_scan_page(&r.map, b"", None, 100_000, usize::MAX).unwrap().kvs);
        for op in random_ops(4, 60) {
            r.run(op);
        }
        r.check_reads_from(at);
    }

    #[test]
    fn a_snapshot_carries_the_history_and_the_compaction_revision() {
        let mut r = replica(true);
        for op in random_ops(11, 150) {
            r.run(op);
        }
        let c = revision(&r.map).unwrap() - 40;
        r.run(CommandOp::Compact { revision: c });
        let mut bytes = Vec::new();
        write_snapshot_data(&r.map, &mut bytes).unwrap();
        let mut installed = Map::new();
        super::super::read_snapshot_data(&mut bytes.as_slice(), |k, v| {
            installed.insert(k, v);
            Ok(())
        })
        .unwrap();
        assert_eq!(installed, r.map);
        assert_eq!(history_state(&installed).unwrap(), history_state(&r.map).unwrap());
        let copy = Replica { map: installed, index: r.index, states: r.states.clone(), track: true };
        copy.check_reads_from(c);
        assert!(matches!(read_get_at(&copy.map, b"a", c - 1).unwrap(), Err(ApiError::Compacted { .. })));
    }

    #[test]
    fn a_delete_range_is_bounded_in_keys_while_history_is_recorded() {
        let mut r = replica(true);
        r.track = false;
        let keys: Vec<CommandOp> =
            (0..HISTORY_RANGE_KEYS_MAX + 10).map(|i| put(format!("r{i:05}").as_bytes(), b"v")).collect();
        assert!(r.run_all(keys).iter().all(Result::is_ok));
        let dr = CommandOp::DeleteRange { start: b"r".to_vec(), end: b"s".to_vec() };
        let first = r.try_run(dr.clone());
        assert!(
            matches!(first, Ok(Response::DeletedRange { deleted, more: true, .. }) if deleted == HISTORY_RANGE_KEYS_MAX as u64),
            "{first:?}"
        );
        let second = r.try_run(dr);
        assert!(matches!(second, Ok(Response::DeletedRange { deleted: 10, more: false, .. })), "{second:?}");
        assert_eq!(r.entries(), HISTORY_RANGE_KEYS_MAX as u64 + 10);
        let now = revision(&r.map).unwrap();
        let page = |rev| read_scan_at_page(&r.map, b"", None, 100_000, rev, usize::MAX).unwrap().unwrap().kvs.len();
        assert_eq!((page(now - 2), page(now - 1), page(now)), (HISTORY_RANGE_KEYS_MAX + 10, 10, 0));
    }

    /// A store whose deleted keys stay behind as tombstones, as RocksDB's do until a compaction
    /// removes them: a scan that starts before them steps over each one up to its first pair
    /// or its end, and counts it. Its seeks (scans) are counted too.
    struct Tombstoned<'a> {
        map: &'a Map,
        tombstones: &'a std::collections::BTreeSet<Vec<u8>>,
        stepped_over: std::cell::Cell<usize>,
        seeks: std::cell::Cell<usize>,
    }

    /// No tombstones: a store that counts its seeks.
    static NO_TOMBSTONES: std::collections::BTreeSet<Vec<u8>> = std::collections::BTreeSet::new();

    impl<'a> Tombstoned<'a> {
        fn new(map: &'a Map, tombstones: &'a std::collections::BTreeSet<Vec<u8>>) -> Tombstoned<'a> {
            Tombstoned { map, tombstones, stepped_over: std::cell::Cell::new(0), seeks: std::cell::Cell::new(0) }
        }
    }

    impl SmRead for Tombstoned<'_> {
        fn sm_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, SmError> {
            self.map.sm_get(key)
        }
        fn sm_scan(&self, from: &[u8], limit: usize) -> Result<Vec<super::super::SmPair>, SmError> {
            self.sm_scan_bounded(from, limit, usize::MAX)
        }
        fn sm_scan_range(
            &self,
            from: &[u8],
            end: Option<&[u8]>,
            limit: usize,
            bytes_max: usize,
        ) -> Result<Vec<super::super::SmPair>, SmError> {
            self.seeks.set(self.seeks.get() + 1);
            let page = self.map.sm_scan_range(from, end, limit, bytes_max)?;
            // The tombstones between `from` and the last pair returned (or the scan's end).
            use std::ops::Bound as B;
            let upper = match (page.last(), end) {
                (Some((last, _)), _) => B::Excluded(last.as_slice()),
                (None, Some(end)) => B::Excluded(end),
                (None, None) => B::Unbounded,
            };
            let stepped = self.tombstones.range::<[u8], _>((B::Included(from), upper)).count();
            self.stepped_over.set(self.stepped_over.get() + stepped);
            Ok(page)
        }
    }

    /// 3,000 puts over 7 keys, then a compaction to now that drops every history entry (and a
    /// put that lets maintenance finish): the keys gone, as the tombstones a RocksDB store
    /// would keep of them.
    fn long_history_compacted(r: &mut Replica) -> std::collections::BTreeSet<Vec<u8>> {
        for i in 0..3000 {
            r.run(put(format!("k{}", i % 7).as_bytes(), format!("{i}").as_bytes()));
        }
        let before = r.map.clone();
        let now = revision(&r.map).unwrap();
        r.run(CommandOp::Compact { revision: now });
        r.run(put(b"other", b"v"));
        assert_eq!(r.entries(), 0, "every entry dropped");
        let tombstones: std::collections::BTreeSet<Vec<u8>> =
            before.keys().filter(|k| !r.map.contains_key(*k)).cloned().collect();
        assert!(tombstones.len() >= 2 * 2990, "the dropped entries and their index keys");
        tombstones
    }

    #[test]
    fn maintenance_seeks_past_the_dropped_index_entries() {
        // A long-running cluster: compaction has dropped thousands of entries, whose index
        // keys RocksDB keeps as tombstones at the start of the index for a while. The check
        // every write makes ("is anything due?") must not step over them: it did, and each
        // write's cost grew with the entries dropped (the attack slice's goodput fell from
        // 2,500/s to under 300/s once automatic compaction ran).
        let mut r = replica(true);
        r.track = false;
        let tombstones = long_history_compacted(&mut r);
        // The next writes: one replaces a version (records an entry), one does not.
        for op in [put(b"other", b"w"), put(b"fresh", b"v")] {
            let store = Tombstoned::new(&r.map, &tombstones);
            let mut ov = Overlay::new(&store);
            r.index += 1;
            let cmd = Command { session: None, time_ms: r.index, op };
            apply_command(&mut ov, LogIndex(r.index), &cmd).unwrap().result.unwrap();
            // Only the tombstones of the dropped index keys are at issue (the `h` ones lie
            // behind live keys no write seeks from the start of).
            let index_tombstones = tombstones.iter().filter(|k| k.first() == Some(&HIST_BY_REV)).count();
            assert!(
                store.stepped_over.get() < 16,
                "a write stepped over {} tombstones ({} of them the index's)",
                store.stepped_over.get(),
                index_tombstones
            );
            let mut next = r.map.clone();
            ov.apply_to(&mut next);
            r.map = next;
        }
    }

    /// A get at a revision of a key written after it (created later, or deleted before it and
    /// created again) looks for the key's own history entries only: its seek stops at the end
    /// of the key's history. Unbounded, it went on past every dropped entry of the keys after
    /// it (RocksDB's tombstones) to the next live one — once per such get (found by review).
    #[test]
    fn a_get_at_a_revision_of_a_key_written_after_it_does_not_step_over_other_keys_dropped_history() {
        let mut r = replica(true);
        r.track = false;
        r.run(put(b"again", b"old"));
        r.run(CommandOp::Delete { key: b"again".to_vec() });
        let tombstones = long_history_compacted(&mut r);
        let at = revision(&r.map).unwrap();
        r.run(put(b"again", b"new"));
        r.run(put(b"first", b"v"));
        for key in [&b"again"[..], b"first"] {
            let store = Tombstoned::new(&r.map, &tombstones);
            assert_eq!(read_get_at(&store, key, at).unwrap().unwrap(), None, "{key:?} is absent at {at}");
            let stepped = store.stepped_over.get();
            assert!(
                stepped < 16,
                "a get of {:?} at {at} stepped over {stepped} tombstones",
                key.escape_ascii().to_string()
            );
        }
    }

    #[test]
    fn history_keys_parse_back_and_keep_the_order_of_their_keys() {
        let keys: [&[u8]; 6] = [b"\0", b"a", b"a\0", b"a\0\0", b"a\0b", b"ab"];
        let mut encoded: Vec<Vec<u8>> = keys.iter().map(|k| hist_key(k, 7)).collect();
        for (k, e) in keys.iter().zip(&encoded) {
            assert_eq!(parse_hist_key(e).unwrap(), (k.to_vec(), 7));
            assert!(e.as_slice() >= hist_seek(k).as_slice());
        }
        let sorted = encoded.clone();
        encoded.sort();
        assert_eq!(encoded, sorted, "sorted keys give sorted history keys");
        for bad in [&b"h"[..], b"ha", b"ha\0", b"ha\0\x01", b"ha\0\0\0\0"] {
            assert!(parse_hist_key(bad).is_err(), "{bad:?}");
        }
    }
}
