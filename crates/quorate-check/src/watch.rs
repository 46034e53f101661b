//! A checker for watch streams recorded against a history of writes (issue 22).
//!
//! A watch stream ([`Stream`]) is what one watcher received, answer by answer ([`Batch`]): each
//! answer asked from a revision and says up to which revision it is complete, with the events
//! of that range. The watcher may have moved between members (a reconnect) any number of
//! times; the stream is still one sequence of answers. The writes ([`Write`]) are every put,
//! delete and compare-and-swap the clients issued on the watched keys, each with its outcome:
//! acknowledged with its revision, unknown (it may or may not have been applied), or definitely
//! not applied. Every put writes a value unique in the history, so an event names its write.
//!
//! # What [`check`] verifies
//!
//! For every stream:
//! * **No gap, no overlap between answers**: each answer asks from the revision after the
//!   previous one's `complete_to` (the first from the stream's start), and `complete_to` never
//!   goes back ([`ViolationKind::Gap`], [`ViolationKind::Duplicate`]).
//! * **Order**: every event lies in its answer's range, in revision order within the answer
//!   (so revisions strictly increase from answer to answer and the events of one revision come
//!   together) ([`ViolationKind::OutOfOrder`]); no (revision, key) twice
//!   ([`ViolationKind::Duplicate`]).
//! * **Against the writes**: each acknowledged write whose revision the stream covers (its
//!   start to its last `complete_to`) appears at its revision, once, with its value
//!   ([`ViolationKind::MissingWrite`], [`ViolationKind::WrongValue`]); an event names a write
//!   that was issued on its key ([`ViolationKind::Unwritten`]), not one that definitely failed
//!   ([`ViolationKind::FailedWriteSeen`]), and an acknowledged write at the revision the
//!   client was told ([`ViolationKind::WrongRevision`]).
//!
//! Across streams: where two streams cover the same revision they hold the same events for it
//! ([`ViolationKind::StreamsDiffer`]): every member keeps the same event index, so a write of
//! unknown outcome that appears, appears at one revision everywhere.
//!
//! # Bounds
//! The work is one pass over the streams and the writes plus a map per stream; at most
//! [`VIOLATIONS_MAX`] violations are kept (the count goes on).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// Violations kept in a report (the rest are counted).
pub const VIOLATIONS_MAX: usize = 100;

/// What an event did to its key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Change {
    /// The key was written with this value.
    Put(String),
    /// The key was deleted.
    Delete,
}

/// One event as a watcher received it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Event {
    /// The revision of the change.
    pub revision: u64,
    /// The key.
    pub key: String,
    /// What happened to it.
    pub change: Change,
}

impl Event {
    /// A put of `value` to `key` at `revision`.
    #[must_use]
    pub fn put(revision: u64, key: &str, value: &str) -> Event {
        Event { revision, key: key.to_string(), change: Change::Put(value.to_string()) }
    }

    /// A delete of `key` at `revision`.
    #[must_use]
    pub fn delete(revision: u64, key: &str) -> Event {
        Event { revision, key: key.to_string(), change: Change::Delete }
    }
}

/// One answer of a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// The revision it was asked from.
    pub asked_from: u64,
    /// Every event up to this revision is in it (with those of the answers before).
    pub complete_to: u64,
    /// The member that answered.
    pub node: u64,
    /// Its events, as received.
    pub events: Vec<Event>,
}

/// What one watcher received, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stream {
    /// A name for reports.
    pub name: String,
    /// The first revision it asked for.
    pub from: u64,
    /// Its answers, in the order received.
    pub batches: Vec<Batch>,
    /// Times it moved to another member (after an error, a kill, a partition).
    pub reconnects: u64,
}

/// How a write ended, as its client saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Acknowledged, at this revision. A delete of an absent key or a compare-and-swap whose
    /// comparison failed changes nothing: record it as [`Outcome::Failed`].
    Acked(u64),
    /// No answer: it may have been applied, at a revision nobody was told.
    Unknown,
    /// Definitely not applied.
    Failed,
}

/// One write issued on a watched key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    /// The key.
    pub key: String,
    /// The change it asked for (a put's value is unique in the history).
    pub change: Change,
    /// How it ended.
    pub outcome: Outcome,
}

/// What kind of violation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum ViolationKind {
    /// Revisions skipped between answers, or an acknowledged write the stream covers that
    /// is missing.
    Gap,
    /// An event received twice, or answers whose ranges overlap.
    Duplicate,
    /// An event outside its answer's range or out of revision order.
    OutOfOrder,
    /// An acknowledged write the stream covers never appeared.
    MissingWrite,
    /// The event at an acknowledged write's revision and key has another value.
    WrongValue,
    /// An acknowledged write appeared at another revision than the one its client was told.
    WrongRevision,
    /// An event that no write issued on its key explains.
    Unwritten,
    /// An event of a write that definitely failed.
    FailedWriteSeen,
    /// Two streams disagree on the events of a revision both cover.
    StreamsDiffer,
}

impl ViolationKind {
    /// The name reports use.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            ViolationKind::Gap => "gap",
            ViolationKind::Duplicate => "duplicate",
            ViolationKind::OutOfOrder => "out-of-order",
            ViolationKind::MissingWrite => "missing-write",
            ViolationKind::WrongValue => "wrong-value",
            ViolationKind::WrongRevision => "wrong-revision",
            ViolationKind::Unwritten => "unwritten",
            ViolationKind::FailedWriteSeen => "failed-write-seen",
            ViolationKind::StreamsDiffer => "streams-differ",
        }
    }
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One violation, with its evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// What kind.
    pub kind: ViolationKind,
    /// The stream it was found in.
    pub stream: String,
    /// What was seen.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} in {}: {}", self.kind, self.stream, self.detail)
    }
}

/// What [`check`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Streams checked.
    pub streams: usize,
    /// Answers checked.
    pub batches: usize,
    /// Events checked.
    pub events: usize,
    /// Reconnects across the streams.
    pub reconnects: u64,
    /// Acknowledged writes some stream covered, each found in every stream that covers it.
    pub acked_covered: usize,
    /// Violations by kind (all of them, kept or not).
    pub counts: BTreeMap<ViolationKind, usize>,
    /// The first [`VIOLATIONS_MAX`] violations.
    pub violations: Vec<Violation>,
}

impl Report {
    /// Whether no violation was found.
    #[must_use]
    pub fn pass(&self) -> bool {
        self.counts.is_empty()
    }

    /// Whether a violation of `kind` was found.
    #[must_use]
    pub fn found(&self, kind: ViolationKind) -> bool {
        self.counts.contains_key(&kind)
    }

    /// One line: the figures and the violations by kind.
    #[must_use]
    pub fn summary(&self) -> String {
        let figures = format!(
            "{} streams, {} answers, {} events checked, {} reconnects, {} acknowledged writes covered",
            self.streams, self.batches, self.events, self.reconnects, self.acked_covered
        );
        if self.pass() {
            format!("watch streams ok ({figures})")
        } else {
            let kinds: Vec<String> = self.counts.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
            format!("WATCH VIOLATIONS: {} ({figures})", kinds.join(", "))
        }
    }

    fn add(&mut self, kind: ViolationKind, stream: &str, detail: String) {
        *self.counts.entry(kind).or_insert(0) += 1;
        if self.violations.len() < VIOLATIONS_MAX {
            self.violations.push(Violation { kind, stream: stream.to_string(), detail });
        }
    }
}

/// Checks `streams` against `writes` (see the module's notes). Writes on keys no stream
/// watches are allowed in `writes`: only the watched keys' events are looked for, which are
/// the keys `watched` accepts.
#[must_use]
pub fn check(streams: &[Stream], writes: &[Write], watched: &dyn Fn(&str) -> bool) -> Report {
    let mut report = Report { streams: streams.len(), ..Report::default() };
    // Acknowledged writes by revision; every write by key and change.
    let mut acked: BTreeMap<u64, &Write> = BTreeMap::new();
    let mut by_change: HashMap<(&str, &Change), Vec<&Write>> = HashMap::new();
    for w in writes.iter().filter(|w| watched(&w.key)) {
        if let Outcome::Acked(rev) = w.outcome {
            acked.insert(rev, w);
        }
        by_change.entry((w.key.as_str(), &w.change)).or_default().push(w);
    }
    // Each stream's events by revision, and the range it covers.
    let mut covered: Vec<(u64, u64, BTreeMap<u64, Vec<Event>>)> = Vec::new();
    let mut covered_acks = HashSet::new();
    for s in streams {
        report.reconnects += s.reconnects;
        report.batches += s.batches.len();
        let mut by_rev: BTreeMap<u64, Vec<Event>> = BTreeMap::new();
        let mut seen: HashSet<(u64, &str)> = HashSet::new();
        let mut next = s.from;
        for (i, b) in s.batches.iter().enumerate() {
            if b.asked_from > next {
                report.add(
                    ViolationKind::Gap,
                    &s.name,
                    format!(
                        "answer {i} asked from {} after the stream was complete to {}",
                        b.asked_from,
                        next.saturating_sub(1)
                    ),
                );
            } else if b.asked_from < next {
                report.add(
                    ViolationKind::Duplicate,
                    &s.name,
                    format!(
                        "answer {i} asked from {} though the stream was complete to {}",
                        b.asked_from,
                        next.saturating_sub(1)
                    ),
                );
            }
            if b.complete_to.saturating_add(1) < b.asked_from {
                report.add(
                    ViolationKind::OutOfOrder,
                    &s.name,
                    format!("answer {i} asked from {} is complete only to {}", b.asked_from, b.complete_to),
                );
            }
            let mut last = 0;
            for e in &b.events {
                report.events += 1;
                if !seen.insert((e.revision, e.key.as_str())) {
                    report.add(
                        ViolationKind::Duplicate,
                        &s.name,
                        format!("revision {} of {} received again in answer {i} (node {})", e.revision, e.key, b.node),
                    );
                    continue;
                }
                if e.revision < b.asked_from || e.revision > b.complete_to || e.revision < last {
                    report.add(
                        ViolationKind::OutOfOrder,
                        &s.name,
                        format!(
                            "revision {} of {} in answer {i} (asked from {}, complete to {}, after revision {last})",
                            e.revision, e.key, b.asked_from, b.complete_to
                        ),
                    );
                }
                last = last.max(e.revision);
                by_rev.entry(e.revision).or_default().push(e.clone());
                check_event(&mut report, &s.name, e, &acked, &by_change);
            }
            next = next.max(b.complete_to.saturating_add(1));
        }
        let end = next.saturating_sub(1);
        // Every acknowledged write the stream covers, at its revision with its value.
        for (&rev, w) in acked.range(s.from..=end.max(s.from)).filter(|(r, _)| **r <= end) {
            covered_acks.insert(rev);
            let at = by_rev.get(&rev).map(Vec::as_slice).unwrap_or_default();
            match at.iter().find(|e| e.key == w.key) {
                None => report.add(
                    ViolationKind::MissingWrite,
                    &s.name,
                    format!(
                        "{} {:?} acknowledged at revision {rev} (covered: {}..={end}) never appeared",
                        w.key, w.change, s.from
                    ),
                ),
                Some(e) if e.change != w.change => report.add(
                    ViolationKind::WrongValue,
                    &s.name,
                    format!("{} at revision {rev}: {:?} received, {:?} acknowledged", w.key, e.change, w.change),
                ),
                Some(_) => {}
            }
        }
        covered.push((s.from, end, by_rev));
    }
    report.acked_covered = covered_acks.len();
    // Streams agree where they overlap.
    for (i, (from_a, end_a, a)) in covered.iter().enumerate() {
        for (j, (from_b, end_b, b)) in covered.iter().enumerate().skip(i + 1) {
            let (lo, hi) = ((*from_a).max(*from_b), (*end_a).min(*end_b));
            if lo > hi {
                continue;
            }
            let revs: std::collections::BTreeSet<u64> =
                a.range(lo..=hi).map(|(r, _)| *r).chain(b.range(lo..=hi).map(|(r, _)| *r)).collect();
            for r in revs {
                let (mut x, mut y) = (a.get(&r).cloned().unwrap_or_default(), b.get(&r).cloned().unwrap_or_default());
                x.sort();
                y.sort();
                if x != y {
                    report.add(
                        ViolationKind::StreamsDiffer,
                        &format!("{} and {}", streams[i].name, streams[j].name),
                        format!("revision {r}: {x:?} against {y:?}"),
                    );
                }
            }
        }
    }
    report
}

/// Checks one received event against the writes.
fn check_event(
    report: &mut Report,
    stream: &str,
    e: &Event,
    acked: &BTreeMap<u64, &Write>,
    by_change: &HashMap<(&str, &Change), Vec<&Write>>,
) {
    if let Some(w) = acked.get(&e.revision)
        && w.key == e.key
    {
        if w.change != e.change {
            report.add(
                ViolationKind::WrongValue,
                stream,
                format!("{} at revision {}: {:?} received, {:?} acknowledged", e.key, e.revision, e.change, w.change),
            );
        }
        return;
    }
    let Some(candidates) = by_change.get(&(e.key.as_str(), &e.change)) else {
        report.add(
            ViolationKind::Unwritten,
            stream,
            format!("{} {:?} at revision {}: no such write was issued", e.key, e.change, e.revision),
        );
        return;
    };
    if candidates.iter().any(|w| w.outcome == Outcome::Unknown) {
        return;
    }
    if let Some(rev) = candidates.iter().find_map(|w| match w.outcome {
        Outcome::Acked(r) => Some(r),
        _ => None,
    }) {
        report.add(
            ViolationKind::WrongRevision,
            stream,
            format!("{} {:?} received at revision {}, acknowledged at {rev}", e.key, e.change, e.revision),
        );
    } else {
        report.add(
            ViolationKind::FailedWriteSeen,
            stream,
            format!("{} {:?} at revision {}: its write definitely failed", e.key, e.change, e.revision),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(_: &str) -> bool {
        true
    }

    fn put(key: &str, value: &str, outcome: Outcome) -> Write {
        Write { key: key.into(), change: Change::Put(value.into()), outcome }
    }

    fn batch(asked_from: u64, complete_to: u64, events: Vec<Event>) -> Batch {
        Batch { asked_from, complete_to, node: 1, events }
    }

    fn stream(name: &str, from: u64, batches: Vec<Batch>) -> Stream {
        Stream { name: name.into(), from, batches, reconnects: 0 }
    }

    /// Writes at revisions 3 (a=1), 4 (b=2), 6 (a deleted), 7 (a=3, unknown outcome).
    fn writes() -> Vec<Write> {
        vec![
            put("a", "1", Outcome::Acked(3)),
            put("b", "2", Outcome::Acked(4)),
            Write { key: "a".into(), change: Change::Delete, outcome: Outcome::Acked(6) },
            put("a", "3", Outcome::Unknown),
            put("b", "never", Outcome::Failed),
        ]
    }

    fn good() -> Stream {
        stream(
            "w0",
            2,
            vec![
                batch(2, 3, vec![Event::put(3, "a", "1")]),
                batch(4, 5, vec![Event::put(4, "b", "2")]),
                batch(6, 6, vec![Event::delete(6, "a")]),
                batch(7, 9, vec![Event::put(8, "a", "3")]),
            ],
        )
    }

    fn kinds(r: &Report) -> Vec<ViolationKind> {
        r.counts.keys().copied().collect()
    }

    #[test]
    fn a_correct_stream_passes_and_is_counted() {
        let mut second = good();
        second.name = "w1".into();
        second.reconnects = 2;
        let r = check(&[good(), second], &writes(), &all);
        assert!(r.pass(), "{}", r.summary());
        assert_eq!((r.streams, r.batches, r.events, r.reconnects, r.acked_covered), (2, 8, 8, 2, 3));
        // A stream that covers nothing yet (an empty progress answer) passes too.
        let r = check(&[stream("w2", 2, vec![batch(2, 1, vec![])])], &writes(), &all);
        assert!(r.pass(), "{}", r.summary());
    }

    #[test]
    fn a_gap_between_answers_is_reported() {
        let mut s = good();
        s.batches[1].asked_from = 5;
        let r = check(&[s], &writes(), &all);
        assert!(r.found(ViolationKind::Gap), "{}", r.summary());
    }

    #[test]
    fn a_duplicate_event_is_reported() {
        let mut s = good();
        s.batches[1].events.push(Event::put(4, "b", "2"));
        let r = check(&[s], &writes(), &all);
        assert_eq!(kinds(&r), vec![ViolationKind::Duplicate], "{}", r.summary());
        // And an answer repeating a range already delivered.
        let mut s = good();
        s.batches.insert(2, batch(4, 5, vec![Event::put(4, "b", "2")]));
        let r = check(&[s], &writes(), &all);
        assert!(r.found(ViolationKind::Duplicate), "{}", r.summary());
    }

    #[test]
    fn events_out_of_order_are_reported() {
        let mut s = good();
        s.batches[1] = batch(4, 6, vec![Event::delete(6, "a"), Event::put(4, "b", "2")]);
        s.batches.remove(2);
        let r = check(&[s], &writes(), &all);
        assert_eq!(kinds(&r), vec![ViolationKind::OutOfOrder], "{}", r.summary());
        // An event outside its answer's range.
        let mut s = good();
        s.batches[0].complete_to = 2;
        s.batches[1].asked_from = 3;
        let r = check(&[s], &writes(), &all);
        assert!(r.found(ViolationKind::OutOfOrder), "{}", r.summary());
    }

    #[test]
    fn a_missing_acknowledged_write_is_reported() {
        let mut s = good();
        s.batches[1].events.clear();
        let r = check(&[s], &writes(), &all);
        assert_eq!(kinds(&r), vec![ViolationKind::MissingWrite], "{}", r.summary());
        // Not covered yet: not missing.
        let mut s = good();
        s.batches.truncate(1);
        assert!(check(&[s], &writes(), &all).pass());
    }

    #[test]
    fn a_wrong_value_is_reported() {
        let mut s = good();
        s.batches[0].events[0] = Event::put(3, "a", "2");
        let r = check(&[s], &writes(), &all);
        assert!(r.found(ViolationKind::WrongValue), "{}", r.summary());
    }

    #[test]
    fn a_write_at_another_revision_unwritten_values_and_failed_writes_are_reported() {
        let mut s = good();
        s.batches[3].events.push(Event::put(9, "b", "2"));
        let r = check(&[s], &writes(), &all);
        assert_eq!(kinds(&r), vec![ViolationKind::WrongRevision], "{}", r.summary());
        let mut s = good();
        s.batches[3].events.push(Event::put(9, "b", "nobody"));
        assert_eq!(kinds(&check(&[s], &writes(), &all)), vec![ViolationKind::Unwritten]);
        let mut s = good();
        s.batches[3].events.push(Event::put(9, "b", "never"));
        assert_eq!(kinds(&check(&[s], &writes(), &all)), vec![ViolationKind::FailedWriteSeen]);
    }

    #[test]
    fn streams_that_disagree_on_a_write_of_unknown_outcome_are_reported() {
        let mut other = good();
        other.name = "w1".into();
        other.batches[3].events[0].revision = 9;
        let r = check(&[good(), other], &writes(), &all);
        assert_eq!(kinds(&r), vec![ViolationKind::StreamsDiffer], "{}", r.summary());
        assert!(r.violations[0].stream.contains("w0") && r.violations[0].stream.contains("w1"), "{:?}", r.violations);
    }

    #[test]
    fn keys_outside_the_watch_are_ignored_and_violations_are_bounded() {
        let mut w = writes();
        w.push(put("other", "x", Outcome::Acked(5)));
        let r = check(&[good()], &w, &|k: &str| k != "other");
        assert!(r.pass(), "{}", r.summary());
        let events: Vec<Event> = (10..10 + 2 * VIOLATIONS_MAX as u64).map(|r| Event::put(r, "a", "x")).collect();
        let s = stream("w0", 10, vec![batch(10, 10 + 2 * VIOLATIONS_MAX as u64, events)]);
        let r = check(&[s], &writes(), &all);
        assert_eq!(r.counts[&ViolationKind::Unwritten], 2 * VIOLATIONS_MAX);
        assert_eq!(r.violations.len(), VIOLATIONS_MAX);
    }
}
