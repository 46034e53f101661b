//! A checker for leases recorded against a cluster under faults (issue 22).
//!
//! A lease client grants a lease, attaches keys to it, keeps it alive for a while, then either
//! revokes it or stops keeping it alive and lets it expire; along the way it reads its keys
//! with linearizable gets. Every call is recorded with its invocation and completion times on
//! one monotonic clock (the history's, nanoseconds) — a [`Lease`]. [`check`] holds each lease
//! to what `docs/consistency.md` promises:
//!
//! * **Outlived** ([`ViolationKind::Outlived`]): a read that *began* after the lease's latest
//!   possible expiry ([`Lease::expiry_bound_ns`]) saw an attached key. A linearizable read
//!   takes effect between its invocation and its completion, so the key existed after the
//!   bound.
//! * **Expired early** ([`ViolationKind::ExpiredEarly`]): a read that *completed* before the
//!   promise of an acknowledged keep-alive (or the grant) ran out found an attached key absent,
//!   and the lease had not been revoked before the read. The leader that accepted a keep-alive
//!   did so after it was invoked and gives the lease its full TTL from then, so the key must
//!   exist until invocation + TTL (see the deposed-leader caveat in [`Bound`]).
//! * **Seen after revoke** ([`ViolationKind::SeenAfterRevoke`]): a read that began after an
//!   acknowledged revoke saw an attached key.
//!
//! Only keys whose attach (`put_with_lease`) was acknowledged are checked, and only reads that
//! began after that acknowledgement. Reads that failed are not recorded (they say nothing).
//!
//! # The bound, and what it assumes
//!
//! Let *k* be the last moment a keep-alive (or the grant) may have been accepted: the
//! completion of the last one acknowledged, or of a later one whose outcome is unknown (the
//! client gave up on it: it may have been accepted; the checker assumes a request is not
//! served after its client gave up on it, which a paused leader can break — pauses widen the
//! bound, below). Without a leader change the keys are gone by *k* + TTL + sweep + one commit
//! ([`Bound::sweep_ms`], [`Bound::commit_ms`]). A leader that takes office gives every lease
//! still in its table its full TTL from then — also a lease past its deadline whose expire was
//! not applied yet. Its office is at most one commit and a sweep after its first sighting
//! ([`Office::seen_ns`]; it takes office at its first sweep after applying its term's first
//! entry) and no earlier than its start ([`Office::from_ns`]). So every leader that may take
//! office after *k* (seen less than a sweep and a commit before it, or later) and started
//! before the end of the bound computed so far moves the deadline to its sighting + sweep +
//! commit + TTL, and the end with it; this repeats until no further leader counts. With any leader change in the window the bound is at least the documented
//! single-change bound, *k* + TTL + election time + 1 s + two commits ([`Bound::election_ms`]).
//!
//! Faults that hold the leader or its commits ([`Stall`]: pauses, kills, partitions, full or
//! slow disks, membership changes and transfers — every fault the run injects except clock
//! skew) widen the bound by their whole length when they overlap the window from *k* to the
//! bound: a paused leader neither sweeps nor commits, and a full disk holds the expire entry.
//! Clock-rate faults do **not** widen it: the failpoint skews only the time the node feeds its
//! consensus core (elections, heartbeats, lease reads); the lease clock reads the real
//! monotonic clock ([`Bound`] states this assumption, and the chaos runs' clock fault is that
//! failpoint).
//!
//! The deposed-leader caveat (the documented one): a keep-alive accepted by a leader that was
//! already deposed buys only a full TTL from the new leader's office. So a keep-alive whose
//! window saw a new leader start ([`Office::from_ns`], a lower bound on when that node became
//! leader) promises the key only until that start + TTL. The window runs from its invocation
//! less [`Bound::deposed_ms`] less the lengths of the stalls that overlap
//! [invocation − deposed − the stall's length, invocation] (a stall may have held the old
//! leader, which goes on accepting for up to `deposed_ms` after it), to its completion; stalls
//! elsewhere in the run do not widen it. Nothing else is loosened.
//!
//! # Bounds
//! Each lease's bound takes at most (offices + 1) rounds over the offices and stalls, then one
//! pass over its calls and reads; at most
//! [`VIOLATIONS_MAX`] violations are kept (the count goes on).

use std::collections::BTreeMap;
use std::fmt;

/// Violations kept in a report (the rest are counted).
pub const VIOLATIONS_MAX: usize = 100;

/// How a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Acknowledged. For a keep-alive or a grant, with the TTL it returned (ms): a promise.
    Acked {
        /// The TTL the answer carried (ms; 0 for calls that carry none).
        ttl_ms: u64,
    },
    /// No answer: it may have taken effect.
    Unknown,
    /// Definitely not applied (refused, e.g. the lease is gone).
    Failed,
}

/// One call (grant, keep-alive, revoke), on the history's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    /// When it was issued (ns).
    pub invoked_ns: u64,
    /// When its answer (or the client's giving up) came (ns).
    pub completed_ns: u64,
    /// How it ended.
    pub outcome: Outcome,
}

impl Call {
    /// An acknowledged call with `ttl_ms`.
    #[must_use]
    pub fn acked(invoked_ns: u64, completed_ns: u64, ttl_ms: u64) -> Call {
        Call { invoked_ns, completed_ns, outcome: Outcome::Acked { ttl_ms } }
    }

    /// Whether it was acknowledged.
    #[must_use]
    pub fn is_acked(&self) -> bool {
        matches!(self.outcome, Outcome::Acked { .. })
    }
}

/// A key attached to a lease by an acknowledged `put_with_lease`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    /// The key.
    pub key: String,
    /// When the attach was acknowledged (ns).
    pub attached_ns: u64,
}

/// One linearizable read of an attached key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    /// The key.
    pub key: String,
    /// When it was issued (ns).
    pub invoked_ns: u64,
    /// When it returned (ns).
    pub completed_ns: u64,
    /// Whether the key was there.
    pub present: bool,
}

/// Everything one lease client did with one lease.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    /// The lease's id.
    pub id: u64,
    /// The client that held it (for reports).
    pub client: String,
    /// The TTL it was granted with (ms).
    pub ttl_ms: u64,
    /// The acknowledged grant (the first promise).
    pub grant: Option<Call>,
    /// Every keep-alive, in order.
    pub keep_alives: Vec<Call>,
    /// The keys attached.
    pub keys: Vec<Attached>,
    /// The revoke, if the client revoked it.
    pub revoke: Option<Call>,
    /// Every read of its keys that returned.
    pub reads: Vec<Read>,
}

impl Lease {
    /// The grant and the keep-alives.
    fn promises(&self) -> impl Iterator<Item = &Call> {
        self.grant.iter().chain(&self.keep_alives)
    }

    /// The last moment a keep-alive or the grant may have been accepted (see the module's
    /// notes): completion of the last acknowledged or unknown one.
    #[must_use]
    pub fn last_accepted_ns(&self) -> Option<u64> {
        self.promises().filter(|c| c.outcome != Outcome::Failed).map(|c| c.completed_ns).max()
    }

    /// The latest moment the lease's keys may still exist, against `offices` and `stalls`
    /// under `bound`; `None` without any acknowledged or unknown grant.
    #[must_use]
    pub fn expiry_bound_ns(&self, offices: &[Office], stalls: &[Stall], bound: &Bound) -> Option<u64> {
        let k = self.last_accepted_ns()?;
        let ttl = ms(self.ttl_ms);
        let step = ms(bound.commit_ms + bound.sweep_ms);
        let one_change = k + ttl + ms(bound.election_ms) + ms(1000) + 2 * ms(bound.commit_ms);
        let mut by_start: Vec<&Stall> = stalls.iter().collect();
        by_start.sort_by_key(|s| s.from_ns);
        // The end of the bound for a deadline: a sweep and a commit after it (at least the
        // one-change bound if a leader change counted), widened by every stall overlapping
        // the window from k (each once; a stall that starts inside the widened window widens
        // it again).
        let end_for = |deadline: u64, changed: bool| {
            let mut end = deadline + step;
            if changed {
                end = end.max(one_change);
            }
            for s in &by_start {
                if s.to_ns >= k && s.from_ns <= end {
                    end += s.to_ns.saturating_sub(s.from_ns);
                }
            }
            end
        };
        // A leader that takes office while the lease is still in its table (before the end of
        // the bound computed so far: the expire may not have been applied yet) gives it a full
        // TTL from its office, which is no later than a sweep and a commit after its first
        // sighting and no earlier than its start (`from_ns`). Only an office that may come after
        // k moves anything. Repeat until no further office counts: each round counts at
        // least one more office or stops, so at most `offices.len()` + 1 rounds.
        let mut deadline = k + ttl;
        let mut counted = vec![false; offices.len()];
        let mut changed = false;
        let mut end = end_for(deadline, changed);
        loop {
            let mut more = false;
            for (i, o) in offices.iter().enumerate() {
                if !counted[i] && o.seen_ns + step > k && o.from_ns <= end {
                    counted[i] = true;
                    more = true;
                    changed = true;
                    deadline = deadline.max(o.seen_ns + step + ttl);
                }
            }
            if !more {
                break;
            }
            end = end_for(deadline, changed);
        }
        Some(end)
    }
}

/// A leader observed taking a term, on the history's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Office {
    /// Its term.
    pub term: u64,
    /// A lower bound on when it became leader: the last time it was seen *not* leading this
    /// term before it was seen leading it (0 if never).
    pub from_ns: u64,
    /// When it was first seen leading the term.
    pub seen_ns: u64,
}

/// A fault that may hold the leader's sweep or its commits (not a clock-rate fault).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stall {
    /// When it began (ns).
    pub from_ns: u64,
    /// When it was healed (ns).
    pub to_ns: u64,
}

/// The documented expiry bound's terms, in milliseconds.
///
/// Assumes the leader's lease clock runs at real rate (it is the node's real monotonic clock,
/// which the clock-rate failpoint does not touch), that one commit takes at most
/// [`Bound::commit_ms`] outside the faults given as [`Stall`]s, and that a deposed leader stops
/// accepting keep-alives within [`Bound::deposed_ms`] of its successor becoming leader (check-
/// quorum: one election timeout) unless a stall held it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bound {
    /// The leader's sweep period (500 ms in the node).
    pub sweep_ms: u64,
    /// One commit: replicate and apply the expire entry (or the new leader's first entry).
    pub commit_ms: u64,
    /// The election time: 2 × the election timeout + a vote round.
    pub election_ms: u64,
    /// How long a deposed leader may go on accepting keep-alives after its successor became
    /// leader.
    pub deposed_ms: u64,
}

/// What kind of violation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum ViolationKind {
    /// A read that began after the lease's expiry bound saw an attached key.
    Outlived,
    /// An attached key was absent while an acknowledged keep-alive's TTL still ran.
    ExpiredEarly,
    /// A read that began after an acknowledged revoke saw an attached key.
    SeenAfterRevoke,
}

impl ViolationKind {
    /// The name reports use.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            ViolationKind::Outlived => "outlived",
            ViolationKind::ExpiredEarly => "expired-early",
            ViolationKind::SeenAfterRevoke => "seen-after-revoke",
        }
    }
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One violation with its evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// What kind.
    pub kind: ViolationKind,
    /// The lease.
    pub lease: u64,
    /// The key.
    pub key: String,
    /// The times that make it one.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: lease {} key {}: {}", self.kind, self.lease, self.key, self.detail)
    }
}

/// What [`check`] found, with the figures of what it checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Leases checked (granted and acknowledged).
    pub leases: usize,
    /// Attached keys checked (read at least once after the attach).
    pub keys: usize,
    /// Keep-alives acknowledged.
    pub keep_alives: usize,
    /// Reads checked.
    pub reads: usize,
    /// Leases let expire (no revoke issued) whose every key was then read absent.
    pub expiries_observed: usize,
    /// Leases revoked (acknowledged) whose every key was then read absent.
    pub revokes_observed: usize,
    /// Leases let expire whose keys were not all read absent (the client's polling bound ran
    /// out first, or the run ended): no verdict on when they went, only on reads made.
    pub unresolved: usize,
    /// The worst lateness observed (ms), over leases with no revoke issued: from the nominal
    /// deadline (the last accepted keep-alive plus the TTL) to the completion of the first read
    /// that found a key absent; with its lease.
    pub worst_lateness: Option<(u64, u64)>,
    /// The largest expiry bound's excess over the nominal deadline (ms): sweep + one commit
    /// without a fault, more where leader changes and stalls widened it.
    pub widest_bound_ms: u64,
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
        let worst = match self.worst_lateness {
            Some((late, lease)) => format!("worst lateness {late} ms (lease {lease})"),
            None => "no expiry observed".to_string(),
        };
        let figures = format!(
            "{} leases, {} keys, {} keep-alives, {} reads checked; {} expiries and {} revokes observed, {} unresolved; \
             {worst}; expiry bound at most {} ms past the nominal deadline",
            self.leases,
            self.keys,
            self.keep_alives,
            self.reads,
            self.expiries_observed,
            self.revokes_observed,
            self.unresolved,
            self.widest_bound_ms
        );
        if self.pass() {
            format!("leases ok ({figures})")
        } else {
            let kinds: Vec<String> = self.counts.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
            format!("LEASE VIOLATIONS: {} ({figures})", kinds.join(", "))
        }
    }

    fn add(&mut self, kind: ViolationKind, lease: u64, key: &str, detail: String) {
        *self.counts.entry(kind).or_insert(0) += 1;
        if self.violations.len() < VIOLATIONS_MAX {
            self.violations.push(Violation { kind, lease, key: key.to_string(), detail });
        }
    }
}

fn ms(v: u64) -> u64 {
    v.saturating_mul(1_000_000)
}

fn secs(ns: u64) -> String {
    format!("{:.3}s", ns as f64 / 1e9)
}

/// Where the deposed-leader window of a keep-alive invoked at `invoked_ns` begins: a new leader
/// that started from then on may have deposed the leader that accepted it. Check-quorum steps a
/// deposed leader down within [`Bound::deposed_ms`] of its successor's start unless a stall held
/// it: each stall `s` overlapping `[invoked − deposed − len(s), invoked]` (it may have held that
/// leader) moves the window's start back by its length (the lengths add up: one leader may be
/// held by several). Stalls elsewhere in the run change nothing.
fn deposed_window_from(invoked_ns: u64, stalls: &[Stall], bound: &Bound) -> u64 {
    let deposed = ms(bound.deposed_ms);
    let held: u64 = stalls
        .iter()
        .map(|s| (s, s.to_ns.saturating_sub(s.from_ns)))
        .filter(|&(s, len)| s.from_ns <= invoked_ns && s.to_ns >= invoked_ns.saturating_sub(deposed + len))
        .map(|(_, len)| len)
        .sum();
    invoked_ns.saturating_sub(deposed + held)
}

/// Checks `leases` against the observed `offices` and the run's `stalls` under `bound` (see
/// the module's notes).
#[must_use]
pub fn check(leases: &[Lease], offices: &[Office], stalls: &[Stall], bound: &Bound) -> Report {
    let mut report = Report::default();
    for l in leases {
        if !l.grant.is_some_and(|g| g.is_acked()) {
            continue;
        }
        report.leases += 1;
        // Keys that at least one checked read looked at.
        report.keys +=
            l.keys.iter().filter(|k| l.reads.iter().any(|r| r.key == k.key && r.invoked_ns >= k.attached_ns)).count();
        report.keep_alives += l.keep_alives.iter().filter(|c| c.is_acked()).count();
        let revoked_at = l.revoke.filter(Call::is_acked).map(|c| c.completed_ns);
        let revoke_issued = l.revoke.map(|c| c.invoked_ns);
        let bound_ns = l.expiry_bound_ns(offices, stalls, bound);
        let nominal = l.last_accepted_ns().map(|k| k + ms(l.ttl_ms));
        if let (Some(b), Some(n)) = (bound_ns, nominal) {
            report.widest_bound_ms = report.widest_bound_ms.max(b.saturating_sub(n) / 1_000_000);
        }
        // The promise of each acknowledged keep-alive (and the grant): until when the keys must
        // be there, lowered where a new leader may have started around it (the deposed-leader
        // caveat).
        let promises: Vec<(u64, u64)> = l
            .promises()
            .filter_map(|c| match c.outcome {
                Outcome::Acked { ttl_ms } => {
                    let window_from = deposed_window_from(c.invoked_ns, stalls, bound);
                    let start = offices
                        .iter()
                        .filter(|o| o.from_ns >= window_from && o.from_ns <= c.completed_ns)
                        .map(|o| o.from_ns)
                        .fold(c.invoked_ns, u64::min);
                    Some((c.invoked_ns, start + ms(ttl_ms)))
                }
                _ => None,
            })
            .collect();
        let mut all_absent = true;
        for key in &l.keys {
            let mut first_absent: Option<u64> = None;
            for r in l.reads.iter().filter(|r| r.key == key.key && r.invoked_ns >= key.attached_ns) {
                report.reads += 1;
                if r.present {
                    // A read begun after an acknowledged revoke is held to the revoke instead.
                    if let Some(b) = bound_ns
                        && r.invoked_ns > b
                        && revoked_at.is_none_or(|rv| r.invoked_ns <= rv)
                    {
                        report.add(
                            ViolationKind::Outlived,
                            l.id,
                            &key.key,
                            format!(
                                "a read begun at {} saw it; last keep-alive possibly accepted at {}, TTL {} ms, \
                                 expiry bound {} ({} ms past the nominal deadline)",
                                secs(r.invoked_ns),
                                secs(l.last_accepted_ns().unwrap_or(0)),
                                l.ttl_ms,
                                secs(b),
                                b.saturating_sub(nominal.unwrap_or(b)) / 1_000_000
                            ),
                        );
                    }
                    if let Some(rv) = revoked_at
                        && r.invoked_ns > rv
                    {
                        report.add(
                            ViolationKind::SeenAfterRevoke,
                            l.id,
                            &key.key,
                            format!(
                                "a read begun at {} saw it; revoke acknowledged at {}",
                                secs(r.invoked_ns),
                                secs(rv)
                            ),
                        );
                    }
                } else {
                    let before_revoke = revoke_issued.is_none_or(|rv| r.completed_ns < rv);
                    if before_revoke
                        && let Some((ka, until)) =
                            promises.iter().copied().filter(|(_, until)| r.completed_ns < *until).max_by_key(|p| p.1)
                    {
                        report.add(
                            ViolationKind::ExpiredEarly,
                            l.id,
                            &key.key,
                            format!(
                                "a read completed at {} found it absent; a keep-alive issued at {} promised it until {} \
                                 (TTL {} ms; {} ms early)",
                                secs(r.completed_ns),
                                secs(ka),
                                secs(until),
                                l.ttl_ms,
                                (until - r.completed_ns) / 1_000_000
                            ),
                        );
                    }
                    first_absent = Some(first_absent.map_or(r.completed_ns, |f: u64| f.min(r.completed_ns)));
                }
            }
            if first_absent.is_none() {
                all_absent = false;
            } else if revoke_issued.is_none()
                && let (Some(f), Some(n)) = (first_absent, nominal)
            {
                let late = f.saturating_sub(n) / 1_000_000;
                if report.worst_lateness.is_none_or(|(w, _)| late > w) {
                    report.worst_lateness = Some((late, l.id));
                }
            }
        }
        match (revoked_at, all_absent) {
            // No key attached: nothing to observe.
            _ if l.keys.is_empty() => {}
            (Some(_), true) => report.revokes_observed += 1,
            // A revoke of unknown outcome (or refused) may have removed them: no expiry seen.
            (None, true) if revoke_issued.is_some() => {}
            (None, true) => report.expiries_observed += 1,
            (None, false) => report.unresolved += 1,
            (Some(_), false) => {}
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;

    const BOUND: Bound = Bound { sweep_ms: 500, commit_ms: 1000, election_ms: 1100, deposed_ms: 1000 };

    fn read(key: &str, at: u64, present: bool) -> Read {
        Read { key: key.into(), invoked_ns: at, completed_ns: at + 10 * MS, present }
    }

    /// Lease 7, TTL 3 s: granted at 1 s, key `a` attached at 1.1 s, kept alive at 2, 3 and
    /// 4 s (each answered in 20 ms), then let expire: nominal deadline 4.02 + 3 = 7.02 s,
    /// bound without faults 7.02 + 1.5 = 8.52 s; read present while kept alive, absent at 8 s.
    fn good() -> Lease {
        Lease {
            id: 7,
            client: "c0".into(),
            ttl_ms: 3000,
            grant: Some(Call::acked(S, S + 20 * MS, 3000)),
            keep_alives: (2..=4).map(|t| Call::acked(t * S, t * S + 20 * MS, 3000)).collect(),
            keys: vec![Attached { key: "a".into(), attached_ns: S + 100 * MS }],
            revoke: None,
            reads: vec![
                read("a", 2 * S + 500 * MS, true),
                read("a", 5 * S, true),
                read("a", 7 * S, true),
                read("a", 8 * S, false),
            ],
        }
    }

    fn kinds(r: &Report) -> Vec<ViolationKind> {
        r.counts.keys().copied().collect()
    }

    #[test]
    fn a_clean_lease_passes_and_is_counted() {
        let r = check(&[good()], &[], &[], &BOUND);
        assert!(r.pass(), "{}", r.summary());
        assert_eq!((r.leases, r.keys, r.keep_alives, r.reads, r.expiries_observed), (1, 1, 3, 4, 1));
        // First absent read completed at 8.01 s, nominal deadline 7.02 s.
        assert_eq!(r.worst_lateness, Some((990, 7)));
        assert_eq!(r.widest_bound_ms, 1500);
        assert_eq!(good().expiry_bound_ns(&[], &[], &BOUND), Some(8_520 * MS));
    }

    #[test]
    fn a_key_seen_after_the_bound_outlived_its_lease_and_at_the_bound_it_did_not() {
        let mut l = good();
        l.reads[3] = read("a", 8_520 * MS, true);
        let r = check(&[l.clone()], &[], &[], &BOUND);
        assert!(r.pass(), "a read begun exactly at the bound may still see it: {}", r.summary());
        assert_eq!(r.unresolved, 1);
        l.reads[3] = read("a", 8_520 * MS + 1, true);
        let r = check(&[l], &[], &[], &BOUND);
        assert_eq!(kinds(&r), vec![ViolationKind::Outlived], "{}", r.summary());
        assert!(r.violations[0].detail.contains("8.520s"), "{}", r.violations[0]);
    }

    #[test]
    fn a_keep_alive_of_unknown_outcome_counts_as_accepted_when_the_client_gave_up() {
        let mut l = good();
        l.keep_alives.push(Call { invoked_ns: 5 * S, completed_ns: 6 * S, outcome: Outcome::Unknown });
        l.keep_alives.push(Call { invoked_ns: 6 * S, completed_ns: 7 * S, outcome: Outcome::Failed });
        l.reads.push(read("a", 10 * S, true));
        // Bound: 6 + 3 + 1.5 = 10.5 s: the read at 10 s is fine, one at 10.6 s is not.
        assert!(check(&[l.clone()], &[], &[], &BOUND).pass());
        l.reads.push(read("a", 10_600 * MS, true));
        assert_eq!(kinds(&check(&[l], &[], &[], &BOUND)), vec![ViolationKind::Outlived]);
    }

    #[test]
    fn leader_changes_and_stalls_widen_the_bound_and_nothing_else_does() {
        let mut l = good();
        l.reads.push(read("a", 11 * S, true));
        assert!(!check(&[l.clone()], &[], &[], &BOUND).pass());
        // A leader seen at 6 s (before the 7.02 s deadline) takes office by 7.5 s and gives a
        // full TTL: deadline 10.5 s, bound 12 s.
        let office = Office { term: 3, from_ns: 5_800 * MS, seen_ns: 6 * S };
        assert_eq!(l.expiry_bound_ns(&[office], &[], &BOUND), Some(12 * S));
        assert!(check(&[l.clone()], &[office], &[], &BOUND).pass());
        // A leader seen after the deadline but started before the end of the bound (the
        // expire may not have been applied yet) renews it too: office by 9.1 s, bound 13.6 s.
        let late = Office { term: 3, from_ns: 7_500 * MS, seen_ns: 7_600 * MS };
        assert_eq!(l.expiry_bound_ns(&[late], &[], &BOUND), Some(13_600 * MS));
        // One started after the end of the bound changes nothing (the keys are gone by then),
        // and neither does one that took office before the last keep-alive (seen more than a
        // sweep and a commit before it).
        let after = Office { term: 3, from_ns: 8_600 * MS, seen_ns: 8_700 * MS };
        let early = Office { term: 2, from_ns: 0, seen_ns: 2 * S };
        assert_eq!(l.expiry_bound_ns(&[after, early], &[], &BOUND), Some(8_520 * MS));
        // A chain of leaders each started before the moved end of the bound, the second after
        // the moved deadline (10.5 s) but before its end (12 s).
        let next = Office { term: 4, from_ns: 11 * S, seen_ns: 11_500 * MS };
        assert_eq!(l.expiry_bound_ns(&[next, office], &[], &BOUND), Some(17_500 * MS));
        // One leader change: at least the documented bound, TTL + election + 1 s + two commits.
        let soon = Office { term: 3, from_ns: 4 * S, seen_ns: 4_100 * MS };
        assert_eq!(l.expiry_bound_ns(&[soon], &[], &BOUND), Some((4_020 + 3_000 + 1_100 + 1_000 + 2_000) * MS));
        // A 2.5 s pause overlapping the window widens the bound by its length.
        let pause = Stall { from_ns: 5 * S, to_ns: 7_500 * MS };
        assert_eq!(l.expiry_bound_ns(&[], &[pause], &BOUND), Some(11_020 * MS));
        assert!(check(&[l.clone()], &[], &[pause], &BOUND).pass());
        // One before the last keep-alive does not.
        let before = Stall { from_ns: S, to_ns: 3 * S };
        assert_eq!(l.expiry_bound_ns(&[], &[before], &BOUND), Some(8_520 * MS));
    }

    #[test]
    fn a_leader_taking_office_after_the_deadline_but_before_the_expire_applied_renews_the_lease() {
        // Deadline 7.02 s; the leader is killed at 7.12 s (a 2 s stall) before its sweep
        // proposed the expire; a new leader, seen at 8.02 s, takes office by 9.52 s and gives
        // the lease a full TTL: its keys may live until 12.52 s (then sweep + commit).
        let mut l = good();
        l.reads[3] = read("a", 11 * S, true);
        let kill = Stall { from_ns: 7_120 * MS, to_ns: 9_120 * MS };
        let office = Office { term: 3, from_ns: 7_900 * MS, seen_ns: 8_020 * MS };
        assert_eq!(l.expiry_bound_ns(&[office], &[kill], &BOUND), Some((12_520 + 1_500 + 2_000) * MS));
        let r = check(&[l.clone()], &[office], &[kill], &BOUND);
        assert!(r.pass(), "{}", r.summary());
        // Past that bound it outlived the lease.
        l.reads.push(read("a", 16_100 * MS, true));
        assert_eq!(kinds(&check(&[l], &[office], &[kill], &BOUND)), vec![ViolationKind::Outlived]);
    }

    #[test]
    fn a_leader_seen_just_before_the_last_keep_alive_may_take_office_after_it() {
        // Seen at 3.9 s, before the last keep-alive's completion (4.02 s), it takes office as
        // late as 5.4 s: deadline 8.4 s, bound 9.9 s (at least the one-change bound 11.12 s).
        let mut l = good();
        l.reads[3] = read("a", 9_500 * MS, true);
        let office = Office { term: 3, from_ns: 3_800 * MS, seen_ns: 3_900 * MS };
        assert_eq!(l.expiry_bound_ns(&[office], &[], &BOUND), Some(11_120 * MS));
        assert!(check(&[l.clone()], &[office], &[], &BOUND).pass());
        // Seen more than a sweep and a commit before it: it took office before it, no change.
        let early = Office { term: 3, from_ns: 2_400 * MS, seen_ns: 2_500 * MS };
        assert_eq!(l.expiry_bound_ns(&[early], &[], &BOUND), Some(8_520 * MS));
    }

    #[test]
    fn a_key_absent_while_a_keep_alive_still_promised_it_expired_early() {
        let mut l = good();
        // The keep-alive issued at 4 s promised it until 7 s: a read completing at 6.99 s
        // must see it.
        l.reads[2] = Read { key: "a".into(), invoked_ns: 6_900 * MS, completed_ns: 6_990 * MS, present: false };
        let r = check(&[l.clone()], &[], &[], &BOUND);
        assert_eq!(kinds(&r), vec![ViolationKind::ExpiredEarly], "{}", r.summary());
        assert!(r.violations[0].detail.contains("until 7.000s"), "{}", r.violations[0]);
        // Completing exactly at the promise is fine.
        l.reads[2].completed_ns = 7 * S;
        assert!(check(&[l.clone()], &[], &[], &BOUND).pass());
        // Absent while kept alive, mid-way: caught.
        let mut l = good();
        l.reads[1].present = false;
        assert_eq!(kinds(&check(&[l], &[], &[], &BOUND)), vec![ViolationKind::ExpiredEarly]);
    }

    #[test]
    fn a_keep_alive_around_a_new_leader_promises_only_from_that_leader_start() {
        let mut l = good();
        l.reads[2] = Read { key: "a".into(), invoked_ns: 6_500 * MS, completed_ns: 6_600 * MS, present: false };
        // A new leader started at 3.5 s (after the keep-alive at 3 s, within the deposed window
        // of the one at 4 s): the 4 s keep-alive may have been a deposed leader's, so it
        // promises only until 6.5 s; the read at 6.6 s finding it gone is allowed.
        let office = Office { term: 3, from_ns: 3_500 * MS, seen_ns: 3_700 * MS };
        assert!(check(&[l.clone()], &[office], &[], &BOUND).pass());
        // A leader that started long before (outside the window) lowers nothing.
        let old = Office { term: 2, from_ns: 2_500 * MS, seen_ns: 2_700 * MS };
        assert_eq!(kinds(&check(&[l], &[old], &[], &BOUND)), vec![ViolationKind::ExpiredEarly]);
    }

    #[test]
    fn only_stalls_around_a_keep_alive_widen_its_deposed_leader_window() {
        let mut l = good();
        l.reads[2] = Read { key: "a".into(), invoked_ns: 6_500 * MS, completed_ns: 6_600 * MS, present: false };
        // A leader started at 1.5 s, outside the 4 s keep-alive's deposed window (from 3 s).
        let office = Office { term: 3, from_ns: 1_500 * MS, seen_ns: 1_700 * MS };
        // A 10 s stall long after the keep-alive does not widen that window.
        let later = Stall { from_ns: 50 * S, to_ns: 60 * S };
        assert_eq!(kinds(&check(&[l.clone()], &[office], &[later], &BOUND)), vec![ViolationKind::ExpiredEarly]);
        // A 1.5 s stall ending within the window (the old leader paused, then accepting for up
        // to a deposed window after) widens it by its length, to 1.5 s: the promise is lowered.
        let pause = Stall { from_ns: 2 * S, to_ns: 3_500 * MS };
        assert!(check(&[l], &[office], &[pause, later], &BOUND).pass());
    }

    #[test]
    fn figures_count_only_what_was_checked_and_reads_before_an_acknowledged_revoke_are_held_to_the_bound() {
        // A key never read is not counted as checked.
        let mut l = good();
        l.keys.push(Attached { key: "b".into(), attached_ns: S + 200 * MS });
        let r = check(&[l], &[], &[], &BOUND);
        assert_eq!((r.keys, r.unresolved, r.expiries_observed), (1, 1, 0), "{}", r.summary());
        // A revoke of unknown outcome: the keys going is no observed expiry (nor a lateness).
        let mut l = good();
        l.revoke = Some(Call { invoked_ns: 7_500 * MS, completed_ns: 7_900 * MS, outcome: Outcome::Unknown });
        let r = check(&[l], &[], &[], &BOUND);
        assert!(r.pass(), "{}", r.summary());
        assert_eq!((r.expiries_observed, r.revokes_observed, r.worst_lateness), (0, 0, None));
        // A revoke acknowledged late does not excuse a read begun past the bound before it.
        let mut l = good();
        l.reads[3] = read("a", 10 * S, true);
        l.revoke = Some(Call::acked(11 * S, 11_100 * MS, 0));
        l.reads.push(read("a", 12 * S, false));
        assert_eq!(kinds(&check(&[l], &[], &[], &BOUND)), vec![ViolationKind::Outlived]);
    }

    #[test]
    fn a_key_seen_after_an_acknowledged_revoke_is_reported_and_absence_after_it_is_fine() {
        let mut l = good();
        l.revoke = Some(Call::acked(4_500 * MS, 4_600 * MS, 0));
        l.reads = vec![read("a", 4_200 * MS, true), read("a", 4_700 * MS, false)];
        let r = check(&[l.clone()], &[], &[], &BOUND);
        assert!(r.pass(), "{}", r.summary());
        assert_eq!((r.revokes_observed, r.expiries_observed, r.worst_lateness), (1, 0, None));
        // A read begun during the revoke may see either.
        l.reads.push(read("a", 4_550 * MS, true));
        assert!(check(&[l.clone()], &[], &[], &BOUND).pass());
        l.reads.push(read("a", 4_800 * MS, true));
        assert_eq!(kinds(&check(&[l], &[], &[], &BOUND)), vec![ViolationKind::SeenAfterRevoke]);
    }

    #[test]
    fn reads_before_the_attach_and_leases_never_granted_are_not_checked_and_violations_are_bounded() {
        let mut l = good();
        l.reads.insert(0, read("a", S, false));
        assert!(check(&[l], &[], &[], &BOUND).pass());
        let mut never = good();
        never.grant = Some(Call { invoked_ns: S, completed_ns: 2 * S, outcome: Outcome::Unknown });
        never.reads.push(read("a", 60 * S, true));
        let r = check(&[never], &[], &[], &BOUND);
        assert!(r.pass() && r.leases == 0, "{}", r.summary());
        // A lease whose attaches all failed is checked (its grant) but observes nothing.
        let mut keyless = good();
        keyless.keys.clear();
        let r = check(&[keyless], &[], &[], &BOUND);
        assert!(r.pass(), "{}", r.summary());
        assert_eq!((r.leases, r.keys, r.reads, r.expiries_observed, r.unresolved), (1, 0, 0, 0, 0));
        let mut many = good();
        many.reads = (0..2 * VIOLATIONS_MAX as u64).map(|i| read("a", 20 * S + i * MS, true)).collect();
        let r = check(&[many], &[], &[], &BOUND);
        assert_eq!(r.counts[&ViolationKind::Outlived], 2 * VIOLATIONS_MAX);
        assert_eq!(r.violations.len(), VIOLATIONS_MAX);
    }
}
