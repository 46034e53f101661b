//! The event index: which keys each revision changed, for watches
//! ([`quorate_api::Request::Watch`]).
//!
//! The history ([`super::history`]) indexes a replaced version by the revision that *ended*
//! it, which answers "what was `k` at revision `r`" but not "what changed at revision `r`".
//! This index answers the second question, in revision order, with one small record per key
//! and revision:
//!
//! | key | value |
//! |---|---|
//! | `e` + revision (big endian) + key | one byte: `0` the key was put at that revision, `1` it was deleted |
//! | `m/ev_from` | the revision at which events began to be recorded (present: the index is on) |
//! | `m/ev_entries`, `m/ev_bytes` | records kept and their bytes (counted in the history's size) |
//! | `m/ev_scan_from` | a revision no record is below: where the walks that drop records start (absent: 0) |
//!
//! **No values are copied.** The value a put left is the key's version at that revision
//! (the current one, or the history entry that a later write recorded); the value it replaced
//! is the history entry whose `end` is that revision. Both are kept exactly as long as the
//! record: records with a revision at or below the compaction revision are dropped, and so are
//! the history entries with `end` at or below it.
//!
//! **One record per key and revision**, whatever the command did in between: a transaction
//! that puts a key twice makes one put event; one that creates a key and deletes it makes
//! none (the key was absent before and after); a delete of an absent key makes none.
//!
//! **When.** The index is turned on with the history, by the entry that raises the cluster
//! version to [`HISTORY_CLUSTER_VERSION`](history::HISTORY_CLUSTER_VERSION) (a cluster
//! finalized by a build that recorded history but no events turns it on at the first command
//! applied after: decided by the log, the same on every replica). Events exist from the
//! revision after `m/ev_from`; a watch from before is answered as a compacted one, with
//! `m/ev_from` as the compaction revision. Everything is in the state machine's column family:
//! in every snapshot, identical on every replica that applied the same entries.
//!
//! **Bounds.** Dropping follows compaction, at most [`EVENTS_DROP_PER_COMMAND`] records per
//! command, oldest first; past [`EVENTS_ENTRIES_MAX`] records (or [`EVENTS_BYTES_MAX`] bytes)
//! a write drops the oldest and raises the compaction revision past them, as the history does.

use super::history;
use super::rev_index::RevIndex;
use super::{KvRecord, Overlay, PAGE, SmError, SmRead, corrupt, decode, ov_u64, to_kv};
use quorate_api::{ApiError, EventKind, KeyValue, WatchEvent, WatchRequest, encoded_len, limits};

/// Most event records kept (the history's own bound).
pub(crate) const EVENTS_ENTRIES_MAX: u64 = history::HISTORY_ENTRIES_MAX;
/// Most bytes of event records kept.
pub(crate) const EVENTS_BYTES_MAX: u64 = 256 << 20;
/// Most event records one command drops.
pub(crate) const EVENTS_DROP_PER_COMMAND: usize = history::HISTORY_DROP_PER_COMMAND;
/// Most bytes of keys one delete-range deletes while events are recorded (beyond, it answers
/// `more`): the delete events of one revision then always fit one watch answer.
pub(crate) const EVENTS_RANGE_KEY_BYTES_MAX: usize = 1 << 20;
/// Event records one watch answer examines (matching or not): past it, the answer ends at a
/// revision boundary with what it has and says how far it is complete.
pub(crate) const WATCH_EXAMINED_MAX: usize = 16 * PAGE;

// One command's writes stay within what a command may write: a delete-range's four writes
// per key (the key, two history writes, the event), the history's drops (two each), the
// events' drops (one each), and a few for the counters.
const _: () = assert!(
    4 * history::HISTORY_RANGE_KEYS_MAX + 2 * history::HISTORY_DROP_PER_COMMAND + EVENTS_DROP_PER_COMMAND + 32
        <= super::COMMAND_WRITES_MAX
);
// Enough records are dropped per command that the bound holds after every command.
const _: () = assert!(EVENTS_DROP_PER_COMMAND >= history::HISTORY_RANGE_KEYS_MAX);
// A revision's delete events (keys only) fit one answer.
const _: () = assert!(
    EVENTS_RANGE_KEY_BYTES_MAX + history::HISTORY_RANGE_KEYS_MAX * (limits::KEY_BYTES_MAX + 64)
        <= limits::WATCH_BYTES_MAX
        || EVENTS_RANGE_KEY_BYTES_MAX + history::HISTORY_RANGE_KEYS_MAX * 64 <= limits::WATCH_BYTES_MAX
);

pub(super) const EVENT: u8 = b'e';
const META_EV_FROM: &[u8] = b"m/ev_from";
const META_EV_ENTRIES: &[u8] = b"m/ev_entries";
const META_EV_BYTES: &[u8] = b"m/ev_bytes";
const META_EV_SCAN_FROM: &[u8] = b"m/ev_scan_from";

/// The records (`e` + revision + key) and their bookkeeping.
const INDEX: RevIndex = RevIndex {
    tag: EVENT,
    on: META_EV_FROM,
    entries: META_EV_ENTRIES,
    bytes: META_EV_BYTES,
    scan_from: META_EV_SCAN_FROM,
    bad_key: "not an event key",
};

const PUT: u8 = 0;
const DELETE: u8 = 1;

/// The event index's state in a state machine.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub(crate) struct EventsState {
    /// Events exist from the revision after this one.
    pub(crate) from: u64,
    /// Records kept.
    pub(crate) entries: u64,
    /// Their bytes.
    pub(crate) bytes: u64,
}

/// The event index's state in `r` (`None`: not recorded).
pub(crate) fn events_state(r: &(impl SmRead + ?Sized)) -> Result<Option<EventsState>, SmError> {
    Ok(INDEX.state(r)?.map(|[from, entries, bytes]| EventsState { from, entries, bytes }))
}

fn ev_key(revision: u64, key: &[u8]) -> Vec<u8> {
    INDEX.key(revision, key)
}

/// The revision and user key of an event record's key.
fn parse_ev_key(k: &[u8]) -> Result<(u64, &[u8]), SmError> {
    INDEX.parse_key(k)
}

/// Turns the index on at the current revision; no change if it is on.
pub(super) fn enable<R: SmRead + ?Sized>(ov: &mut Overlay<'_, R>) -> Result<(), SmError> {
    INDEX.enable(ov)
}

/// Whether events are recorded in the state `ov` sees.
pub(super) fn enabled<R: SmRead + ?Sized>(ov: &Overlay<'_, R>) -> Result<bool, SmError> {
    INDEX.enabled(ov)
}

/// Sets (or, `None`, removes) the record of `key` at `revision`, keeping the counters.
fn set_record<R: SmRead + ?Sized>(
    ov: &mut Overlay<'_, R>,
    key: &[u8],
    revision: u64,
    kind: Option<u8>,
) -> Result<(), SmError> {
    if !enabled(ov)? {
        return Ok(());
    }
    let k = ev_key(revision, key);
    let size = (k.len() + 1) as i64;
    let had = ov.get_at_revision(&k, revision)?.is_some();
    match kind {
        Some(kind) => {
            ov.put(k, vec![kind]);
            if !had {
                INDEX.add_counters(ov, 1, size)?;
            }
        }
        None if had => {
            ov.delete(k);
            INDEX.add_counters(ov, -1, -size)?;
        }
        None => {}
    }
    Ok(())
}

/// Records that `key` was put at `revision` (after the write).
pub(super) fn on_put<R: SmRead + ?Sized>(ov: &mut Overlay<'_, R>, key: &[u8], revision: u64) -> Result<(), SmError> {
    set_record(ov, key, revision, Some(PUT))
}

/// Records that `key`, present, was deleted at `revision` (after the history recorded the
/// version it removes).
pub(super) fn on_delete<R: SmRead + ?Sized>(ov: &mut Overlay<'_, R>, key: &[u8], revision: u64) -> Result<(), SmError> {
    // The key was visible before this revision iff the history recorded the version this
    // revision replaced (it does for every version written before the command); a key that
    // the same command created and now deletes was absent before and after: no event.
    let was_visible = ov.get_at_revision(&history::hist_key(key, revision), revision)?.is_some();
    set_record(ov, key, revision, was_visible.then_some(DELETE))
}

/// Drops, oldest first and at most `budget`, the records compaction left and, while the index
/// is past its bounds, the oldest records (raising the compaction revision past them).
pub(super) fn maintain<R: SmRead + ?Sized>(ov: &mut Overlay<'_, R>, budget: usize) -> Result<usize, SmError> {
    maintain_within(ov, budget, EVENTS_ENTRIES_MAX, EVENTS_BYTES_MAX)
}

fn maintain_within<R: SmRead + ?Sized>(
    ov: &mut Overlay<'_, R>,
    budget: usize,
    entries_max: u64,
    bytes_max: u64,
) -> Result<usize, SmError> {
    if !enabled(ov)? || ov.get(history::META_HIST_COMPACTED)?.is_none() {
        return Ok(0);
    }
    let compacted = ov_u64(ov, history::META_HIST_COMPACTED)?;
    let dropped = INDEX.drop_oldest(ov, budget, (entries_max, bytes_max), compacted, |ov, k, _| {
        let size = (k.len() + 1) as u64;
        ov.delete(k);
        Ok(Some(size))
    })?;
    if dropped.count > 0 && dropped.compacted > ov_u64(ov, history::META_HIST_COMPACTED)? {
        ov.put(history::META_HIST_COMPACTED.to_vec(), dropped.compacted.to_le_bytes().to_vec());
    }
    Ok(dropped.count)
}

/// One watch answer's events, and the revision up to which it is complete.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct WatchPage {
    /// The events, in revision order.
    pub(crate) events: Vec<WatchEvent>,
    /// Every matching event up to this revision is in `events` (with those asked before).
    pub(crate) complete_to: u64,
}

/// The answer to a watch from the state `r` holds.
///
/// Events of revisions `w.from_revision..` for the key or prefix, in revision order, all
/// events of a revision in one answer: at most `w.max_events` events and `w.max_bytes` bytes
/// (a revision that passes either alone is answered alone; one whose previous values would
/// not fit an answer at all is answered without them, `prev_omitted`), after at most
/// [`WATCH_EXAMINED_MAX`] records examined. `complete_to` says how far the answer goes.
pub(crate) fn read_watch<R: SmRead + ?Sized>(r: &R, w: &WatchRequest) -> Result<Result<WatchPage, ApiError>, SmError> {
    let Some(state) = events_state(r)? else {
        return Ok(Err(history::not_recorded(r, "events are not recorded yet; retry after a write", "a watch")?));
    };
    let watch_compacted =
        |r: &R| -> Result<u64, SmError> { Ok(history::history_state(r)?.map_or(0, |h| h.compacted).max(state.from)) };
    let compacted = watch_compacted(r)?;
    let from = w.from_revision;
    if from <= compacted {
        return Ok(Err(ApiError::Compacted { revision: from, compacted }));
    }
    let current = super::revision(r)?;
    if from > current {
        // Nothing newer here yet (this node may be behind the one that answered before).
        return Ok(Ok(WatchPage { events: Vec::new(), complete_to: from - 1 }));
    }
    let limits = (
        w.max_events.max(1) as usize,
        if w.max_bytes == 0 { limits::WATCH_BYTES_MAX } else { (w.max_bytes as usize).min(limits::WATCH_BYTES_MAX) },
    );
    let matches = |key: &[u8]| if w.prefix { key.starts_with(&w.key) } else { key == w.key.as_slice() };
    let end = ev_key(current.saturating_add(1), b"");
    let mut out = Answer { events: Vec::new(), used: 0 };
    // The revision being read and its matching records.
    let mut group: Option<(u64, Vec<Record>)> = None;
    let mut examined = 0usize;
    let mut cursor = ev_key(from, b"");
    // Where the scan stopped: every record of revisions up to it was read (those of the
    // revision in `group` included, unless it is past it).
    let scanned_to = 'scan: loop {
        let page = r.sm_scan_bounded(&cursor, PAGE, super::SCAN_READ_BYTES_MAX)?;
        // Only an empty page ends the index: a page bounded in bytes may be short.
        let exhausted = page.is_empty();
        for (k, v) in page {
            if k >= end {
                break 'scan current;
            }
            let (rev, key) = parse_ev_key(&k)?;
            if let Some((g, records)) = group.take_if(|(g, _)| *g != rev) {
                if !out.take(r, w, g, &records, limits)? {
                    return finish(r, from, out, g - 1, &watch_compacted);
                }
                if examined >= WATCH_EXAMINED_MAX {
                    return finish(r, from, out, rev - 1, &watch_compacted);
                }
            }
            examined += 1;
            let kind = match v.as_slice() {
                [PUT] => PUT,
                [DELETE] => DELETE,
                _ => return Err(corrupt(&k, "not an event record")),
            };
            let entry = group.get_or_insert_with(|| (rev, Vec::new()));
            if matches(key) {
                entry.1.push((key.to_vec(), kind));
            }
            cursor = k.clone();
            cursor.push(0);
        }
        if exhausted {
            break current;
        }
    };
    if let Some((g, records)) = group
        && !out.take(r, w, g, &records, limits)?
    {
        return finish(r, from, out, g - 1, &watch_compacted);
    }
    finish(r, from, out, scanned_to, &watch_compacted)
}

/// The answer, once the compaction revision is checked again: read from a live store, a
/// compaction could have dropped what was read meanwhile.
fn finish<R: SmRead + ?Sized>(
    r: &R,
    from: u64,
    out: Answer,
    complete_to: u64,
    watch_compacted: &dyn Fn(&R) -> Result<u64, SmError>,
) -> Result<Result<WatchPage, ApiError>, SmError> {
    let compacted = watch_compacted(r)?;
    if from <= compacted {
        return Ok(Err(ApiError::Compacted { revision: from, compacted }));
    }
    Ok(Ok(WatchPage { events: out.events, complete_to }))
}

/// A matching record of the revision being read: the key, put or delete.
type Record = (Vec<u8>, u8);

/// A watch answer being filled.
struct Answer {
    events: Vec<WatchEvent>,
    /// Their encoded bytes.
    used: usize,
}

impl Answer {
    /// Adds the events of revision `rev` (its matching `records`) if they fit what is left of
    /// the answer (always, when it is still empty); false: they do not.
    fn take<R: SmRead + ?Sized>(
        &mut self,
        r: &R,
        w: &WatchRequest,
        rev: u64,
        records: &[Record],
        (max_events, max_bytes): (usize, usize),
    ) -> Result<bool, SmError> {
        if records.is_empty() {
            return Ok(true);
        }
        if !self.events.is_empty() && self.events.len() + records.len() > max_events {
            return Ok(false);
        }
        let mut group = Vec::with_capacity(records.len());
        let mut bytes = 0usize;
        for (key, kind) in records {
            let e = event(r, key, rev, *kind, w.prev_kv)?;
            bytes = bytes.saturating_add(encoded_len(&e));
            group.push(e);
        }
        if !self.events.is_empty() && self.used.saturating_add(bytes) > max_bytes {
            return Ok(false);
        }
        if bytes > limits::WATCH_BYTES_MAX && w.prev_kv {
            // Alone, and still too large with the versions it replaced: without them (the
            // events themselves always fit, bounded by the command that wrote them).
            bytes = 0;
            for e in &mut group {
                e.prev = None;
                e.prev_omitted = true;
                bytes = bytes.saturating_add(encoded_len(&*e));
            }
        }
        self.used = self.used.saturating_add(bytes);
        self.events.extend(group);
        Ok(true)
    }
}

/// The event of `key` at `rev`.
fn event<R: SmRead + ?Sized>(r: &R, key: &[u8], rev: u64, kind: u8, prev_kv: bool) -> Result<WatchEvent, SmError> {
    let bad = || corrupt(&ev_key(rev, key), "an event without the version it names");
    let kv = if kind == PUT {
        let rec = history::version_at(r, key, rev)?.ok_or_else(bad)?;
        if rec.mod_revision != rev {
            return Err(bad());
        }
        to_kv(key, rec)
    } else {
        KeyValue { key: key.to_vec(), value: Vec::new(), create_revision: 0, mod_revision: rev, version: 0 }
    };
    let prev = if prev_kv {
        let hk = history::hist_key(key, rev);
        match r.sm_get(&hk)? {
            Some(v) => Some(to_kv(key, decode::<KvRecord>(&hk, &v)?)),
            None if kind == DELETE => return Err(bad()),
            None => None,
        }
    } else {
        None
    };
    let kind = if kind == PUT { EventKind::Put } else { EventKind::Delete };
    Ok(WatchEvent { kind, kv, prev, prev_omitted: false })
}

#[cfg(test)]
mod tests {
    use super::super::revision;
    use super::super::test_replica::{self, Replica, Workload};
    use super::*;
    use history::HISTORY_CLUSTER_VERSION;
    use quorate_api::{CommandOp, Response, Txn, TxnOp};
    use std::collections::BTreeMap;

    /// A test replica whose states start at revision 0, finalized to the history's cluster
    /// version when `finalized` (the events of revision `r` are the differences between the
    /// states at `r - 1` and `r`).
    fn replica(finalized: bool) -> Replica {
        let mut r = Replica::new(None);
        r.snap();
        if finalized {
            r.run(CommandOp::SetClusterVersion { version: HISTORY_CLUSTER_VERSION });
        }
        r
    }

    impl Replica {
        /// The events the model says revisions `from..` made to keys `matches` accepts.
        fn expected(&self, from: u64, matches: &dyn Fn(&[u8]) -> bool, prev: bool) -> Vec<WatchEvent> {
            let mut out = Vec::new();
            let revs: Vec<u64> = self.states.keys().copied().filter(|&r| r >= from && r > 0).collect();
            for rev in revs {
                let by_key = |r: u64| -> BTreeMap<&Vec<u8>, &KeyValue> {
                    self.states[&r].iter().map(|kv| (&kv.key, kv)).collect()
                };
                let (before, after) = (by_key(rev - 1), by_key(rev));
                let keys: std::collections::BTreeSet<&Vec<u8>> = before.keys().chain(after.keys()).copied().collect();
                for k in keys {
                    if !matches(k) {
                        continue;
                    }
                    let (b, a) = (before.get(k).copied(), after.get(k).copied());
                    let kind = match (b, a) {
                        (_, Some(a)) if a.mod_revision == rev => EventKind::Put,
                        (Some(_), None) => EventKind::Delete,
                        _ => continue,
                    };
                    let kv = a.cloned().unwrap_or_else(|| deleted(k, rev));
                    out.push(WatchEvent { kind, kv, prev: if prev { b.cloned() } else { None }, prev_omitted: false });
                }
            }
            out
        }

        /// Every event from `from` on, asked in answers of at most `max_events`.
        fn watch_all(&self, key: &[u8], prefix: bool, from: u64, prev: bool, max_events: u32) -> Vec<WatchEvent> {
            let current = revision(&self.map).unwrap();
            let mut events = Vec::new();
            let mut next = from;
            for _ in 0..100_000 {
                let w = watch(key, prefix, next, prev, max_events);
                let page = read_watch(&self.map, &w).unwrap().unwrap();
                assert!(page.complete_to >= next - 1 && page.complete_to <= current);
                // All events of a revision together, in revision order, within the range.
                let revs: Vec<u64> = page.events.iter().map(|e| e.kv.mod_revision).collect();
                assert!(revs.windows(2).all(|p| p[0] <= p[1]), "in revision order");
                assert!(revs.iter().all(|&r| r >= next && r <= page.complete_to));
                if page.events.len() > max_events as usize {
                    assert!(revs.iter().all(|&r| r == revs[0]), "only a whole revision passes max_events");
                }
                events.extend(page.events);
                if page.complete_to == current {
                    return events;
                }
                assert!(page.complete_to >= next, "an answer makes progress");
                next = page.complete_to + 1;
            }
            panic!("the watch did not reach the current revision");
        }
    }

    fn deleted(key: &[u8], rev: u64) -> KeyValue {
        KeyValue { key: key.to_vec(), value: Vec::new(), create_revision: 0, mod_revision: rev, version: 0 }
    }

    fn watch(key: &[u8], prefix: bool, from: u64, prev: bool, max_events: u32) -> WatchRequest {
        WatchRequest {
            key: key.to_vec(),
            prefix,
            from_revision: from,
            prev_kv: prev,
            max_events,
            max_bytes: 0,
            wait_ms: 0,
        }
    }

    fn put(k: &[u8], v: &[u8]) -> CommandOp {
        CommandOp::Put { key: k.to_vec(), value: v.to_vec() }
    }

    const WORKLOAD: Workload =
        Workload { keys: [b"a", b"a\0", b"ab", b"abc", b"b", b"ba", b"\0"], puts: 4, txn_ops: 4 };

    fn random_ops(seed: u64, count: usize) -> Vec<CommandOp> {
        test_replica::random_ops(seed, count, &WORKLOAD)
    }

    #[test]
    fn events_are_the_changes_between_consecutive_revisions_for_keys_and_prefixes() {
        for seed in 1..=12u64 {
            let mut r = replica(true);
            let start = revision(&r.map).unwrap() + 1;
            for op in random_ops(seed * 7919, 150) {
                let _ = r.try_run(op);
            }
            for prev in [false, true] {
                let all = r.expected(start, &|_| true, prev);
                assert!(!all.is_empty(), "seed {seed}");
                for max_events in [1, 3, 10_000] {
                    assert_eq!(r.watch_all(b"", true, start, prev, max_events), all, "seed {seed} max {max_events}");
                }
                assert_eq!(r.watch_all(b"a", true, start, prev, 4), r.expected(start, &|k| k.starts_with(b"a"), prev));
                assert_eq!(r.watch_all(b"ab", false, start, prev, 4), r.expected(start, &|k| k == b"ab", prev));
                let mid = start + 40;
                assert_eq!(r.watch_all(b"", true, mid, prev, 7), r.expected(mid, &|_| true, prev), "from {mid}");
            }
        }
    }

    #[test]
    fn replicas_that_batch_the_log_differently_store_identical_bytes() {
        for seed in 1..=8u64 {
            let ops = random_ops(seed * 31, 120);
            let mut one = replica(true);
            for op in ops.clone() {
                let _ = one.try_run(op);
            }
            let mut batched = replica(true);
            for chunk in ops.chunks(9) {
                batched.run_all(chunk.to_vec());
            }
            assert_eq!(batched.map, one.map, "seed {seed}");
            assert!(one.map.keys().any(|k| k.first() == Some(&EVENT)), "events recorded");
        }
    }

    #[test]
    fn a_transaction_makes_one_event_per_key_at_its_revision_and_absent_keys_make_none() {
        let mut r = replica(true);
        r.run(put(b"a", b"1"));
        r.run(put(b"b", b"1"));
        let before = revision(&r.map).unwrap();
        // Deleting an absent key changes nothing: no event, no revision.
        assert!(matches!(r.run(CommandOp::Delete { key: b"nope".to_vec() }), Response::Delete { deleted: false, .. }));
        assert_eq!(revision(&r.map).unwrap(), before);
        let txn = Txn {
            compare: vec![],
            success: vec![
                TxnOp::Put { key: b"a".to_vec(), value: b"2".to_vec() },
                TxnOp::Put { key: b"a".to_vec(), value: b"3".to_vec() },
                TxnOp::Delete { key: b"b".to_vec() },
                TxnOp::Put { key: b"c".to_vec(), value: b"1".to_vec() },
                TxnOp::Put { key: b"new".to_vec(), value: b"x".to_vec() },
                TxnOp::Delete { key: b"new".to_vec() },
                TxnOp::Delete { key: b"absent".to_vec() },
            ],
            failure: vec![],
        };
        r.run(CommandOp::Txn(txn));
        let rev = before + 1;
        let page = read_watch(&r.map, &watch(b"", true, rev, true, 100)).unwrap().unwrap();
        assert_eq!(page.complete_to, rev);
        type Seen<'a> = (EventKind, &'a [u8], &'a [u8], Option<&'a [u8]>);
        let got: Vec<Seen<'_>> = page
            .events
            .iter()
            .map(|e| (e.kind, &e.kv.key[..], &e.kv.value[..], e.prev.as_ref().map(|p| &p.value[..])))
            .collect();
        assert_eq!(
            got,
            vec![
                (EventKind::Put, &b"a"[..], &b"3"[..], Some(&b"1"[..])),
                (EventKind::Delete, b"b", b"", Some(b"1")),
                (EventKind::Put, b"c", b"1", None),
            ],
            "one event per key, the last value, the version before the transaction"
        );
        assert!(page.events.iter().all(|e| e.kv.mod_revision == rev));
        assert_eq!(events_state(&r.map).unwrap().map(|s| s.entries), Some(5), "2 puts before, 3 events in the txn");
    }

    #[test]
    fn compaction_drops_the_events_and_a_watch_from_before_it_is_answered_compacted() {
        let mut r = replica(true);
        let start = revision(&r.map).unwrap() + 1;
        for op in random_ops(5, 200) {
            let _ = r.try_run(op);
        }
        let current = revision(&r.map).unwrap();
        let c = start + (current - start) / 2;
        let keep = r.map.keys().filter(|k| k.first() == Some(&EVENT) && parse_ev_key(k).unwrap().0 > c).count() as u64;
        r.run(CommandOp::Compact { revision: c });
        let left: Vec<u64> =
            r.map.keys().filter(|k| k.first() == Some(&EVENT)).map(|k| parse_ev_key(k).unwrap().0).collect();
        assert!(left.iter().all(|&rev| rev > c), "every event at or below the compaction revision is dropped");
        let state = events_state(&r.map).unwrap().unwrap();
        assert_eq!(state.entries, keep);
        let bytes: u64 =
            r.map.iter().filter(|(k, _)| k.first() == Some(&EVENT)).map(|(k, v)| (k.len() + v.len()) as u64).sum();
        assert_eq!(state.bytes, bytes);
        for from in [start, c] {
            assert_eq!(
                read_watch(&r.map, &watch(b"", true, from, false, 10)).unwrap(),
                Err(ApiError::Compacted { revision: from, compacted: c })
            );
        }
        // From the revision after it: every later event, previous values included.
        assert_eq!(r.watch_all(b"", true, c + 1, true, 5), r.expected(c + 1, &|_| true, true));
    }

    #[test]
    fn events_begin_where_the_cluster_version_enabled_them_and_before_is_refused_in_the_gates_words() {
        let mut r = replica(false);
        for op in random_ops(9, 30) {
            let _ = r.try_run(op);
        }
        assert!(r.map.keys().all(|k| k.first() != Some(&EVENT)), "nothing recorded below cluster version 2");
        let gate = read_watch(&r.map, &watch(b"", true, 1, false, 10)).unwrap();
        assert!(matches!(&gate, Err(ApiError::InvalidRequest(w)) if w.contains("needs cluster version 2")), "{gate:?}");
        let at = revision(&r.map).unwrap();
        r.run(CommandOp::SetClusterVersion { version: HISTORY_CLUSTER_VERSION });
        assert_eq!(events_state(&r.map).unwrap().map(|s| s.from), Some(at));
        r.run(put(b"k", b"v"));
        assert_eq!(
            read_watch(&r.map, &watch(b"", true, 1, false, 10)).unwrap(),
            Err(ApiError::Compacted { revision: 1, compacted: at }),
            "a watch from before the index began is answered as a compacted one"
        );
        let page = read_watch(&r.map, &watch(b"", true, at + 1, false, 10)).unwrap().unwrap();
        assert_eq!(page.events.len(), 1);
        assert_eq!(page.complete_to, at + 1);
        // Ahead of the node: nothing yet, and no progress claimed past what was asked.
        let ahead = read_watch(&r.map, &watch(b"", true, at + 5, false, 10)).unwrap().unwrap();
        assert_eq!((ahead.events.len(), ahead.complete_to), (0, at + 4));
    }

    #[test]
    fn past_its_bounds_the_index_drops_its_oldest_records_and_raises_the_compaction_revision() {
        let mut r = replica(true);
        for i in 0..60 {
            r.run(put(format!("k{i}").as_bytes(), b"v"));
        }
        let base = r.map.clone();
        let mut ov = Overlay::new(&base);
        assert_eq!(maintain_within(&mut ov, EVENTS_DROP_PER_COMMAND, 20, u64::MAX).unwrap(), 40);
        ov.apply_to(&mut r.map);
        let state = events_state(&r.map).unwrap().unwrap();
        assert_eq!(state.entries, 20);
        let compacted = history::history_state(&r.map).unwrap().unwrap().compacted;
        let oldest = r.map.keys().filter(|k| k.first() == Some(&EVENT)).map(|k| parse_ev_key(k).unwrap().0).min();
        assert_eq!(oldest, Some(compacted + 1), "the compaction revision rose to the last record dropped");
        assert_eq!(r.watch_all(b"", true, compacted + 1, true, 7), r.expected(compacted + 1, &|_| true, true));
    }

    #[test]
    fn a_large_revision_is_answered_whole_without_its_previous_values_when_they_would_not_fit() {
        let mut r = replica(true);
        let big = vec![7u8; 900 * 1024];
        for k in [b"a", b"b", b"c", b"d", b"e"] {
            r.run(put(k, &big));
        }
        let dr = r.try_run(CommandOp::DeleteRange { start: b"a".to_vec(), end: b"z".to_vec() });
        assert!(matches!(dr, Ok(Response::DeletedRange { deleted: 5, .. })), "{dr:?}");
        let rev = revision(&r.map).unwrap();
        let page = read_watch(&r.map, &watch(b"", true, rev, true, 100)).unwrap().unwrap();
        assert_eq!(page.events.len(), 5);
        assert!(page.events.iter().all(|e| e.prev.is_none() && e.prev_omitted), "{:?}", page.events.len());
        // Within 2 MiB: two of the puts, then the answer ends at a revision boundary.
        let mut w = watch(b"", true, rev - 3, false, 100);
        w.max_bytes = 2 << 20;
        let page = read_watch(&r.map, &w).unwrap().unwrap();
        assert_eq!((page.events.len(), page.complete_to), (2, rev - 2));
        // One put larger than max_bytes is answered alone, whole.
        w.max_bytes = 1024;
        let page = read_watch(&r.map, &w).unwrap().unwrap();
        assert_eq!((page.events.len(), page.complete_to), (1, rev - 3));
    }
}

#[cfg(test)]
mod short_pages {
    use super::super::{SmPair, apply_command, revision};
    use super::*;
    use history::HISTORY_CLUSTER_VERSION;
    use quorate_api::{Command, CommandOp};
    use quorate_log::LogIndex;
    use std::collections::BTreeMap;

    /// A store whose scans stop short of their limit, as a scan bounded in bytes does when the
    /// pairs are large (16 MiB of 4 KiB event keys is one page of 4,096).
    struct Short<'a>(&'a BTreeMap<Vec<u8>, Vec<u8>>);

    impl SmRead for Short<'_> {
        fn sm_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, SmError> {
            self.0.sm_get(key)
        }
        fn sm_scan(&self, from: &[u8], limit: usize) -> Result<Vec<SmPair>, SmError> {
            self.0.sm_scan(from, limit.min(2))
        }
        fn sm_scan_range(
            &self,
            from: &[u8],
            end: Option<&[u8]>,
            limit: usize,
            bytes_max: usize,
        ) -> Result<Vec<SmPair>, SmError> {
            self.0.sm_scan_range(from, end, limit.min(2), bytes_max)
        }
    }

    #[test]
    fn a_scan_page_shorter_than_asked_is_not_the_end_of_the_index() {
        let mut map = BTreeMap::new();
        let mut run = |index: u64, op: CommandOp| {
            let base = map.clone();
            let mut ov = super::super::Overlay::new(&base);
            apply_command(&mut ov, LogIndex(index), &Command { session: None, time_ms: index, op }).unwrap();
            ov.apply_to(&mut map);
        };
        run(1, CommandOp::SetClusterVersion { version: HISTORY_CLUSTER_VERSION });
        for i in 0..10u64 {
            run(2 + i, CommandOp::Put { key: format!("k{i}").into_bytes(), value: b"v".to_vec() });
        }
        let current = revision(&map).unwrap();
        let w = WatchRequest {
            key: Vec::new(),
            prefix: true,
            from_revision: 1,
            prev_kv: false,
            max_events: 100,
            max_bytes: 0,
            wait_ms: 0,
        };
        let page = read_watch(&Short(&map), &w).unwrap().unwrap();
        assert_eq!((page.events.len(), page.complete_to), (10, current), "every event, complete to the end");
    }
}
