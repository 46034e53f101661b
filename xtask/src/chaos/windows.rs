//! The per-fault verdict: for every fault and admin request, the operations acknowledged
//! while it was in force, the longest time without a leader and the longest time without an
//! acknowledged write that it overlapped, each against a bound. Pure functions over the
//! observer's status samples, the history and the nemesis' records, so that every rule is
//! tested on crafted input (below).
//!
//! * **Leader**: at an instant, an *agreed leader* is a node whose latest status (not older
//!   than [`SAMPLE_STALE`]) says it leads term `T`, and a majority of the voters of its
//!   configuration (itself included) name it leader of `T` in theirs. A node that does not
//!   answer its status probe (killed, paused) counts as not naming anyone. The observer asks
//!   every node every 100 ms with a 300 ms limit, so the resolution is about 0.1–0.4 s.
//! * **Writes**: an acknowledged write is a put or delete with `ok: true` or a cas that
//!   succeeded; a *writeless* interval is the time between two consecutive acknowledgements
//!   (from the start of the workload to its end).
//! * **Attribution**: an interval is charged to every fault whose window
//!   `[start, end + AFTERMATH]` it overlaps, measured from the later of its own start and the
//!   fault's start to its own end — so an outage that outlasts the fault (a resumed node that
//!   stays stuck) is charged in full, and one that began before the fault is charged only
//!   from the fault's start.
//! * **Traffic** (lasting faults): every workload client has an operation in flight during
//!   the fault (the load was offered), and at least 10 operations per second of hold are
//!   acknowledged from its start to `AFTERMATH` after its heal (the load was served through
//!   it or right after; a fault may stop the cluster for its whole hold by design, or within
//!   the time bounds). The table also shows what was acknowledged during the hold itself.

use super::nemesis::{Fault, FaultRecord};
use quorate_check::history::{Completion, OpKind, Operation, ReadCompletion};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

/// A status sample older than this no longer counts (the observer replaces samples every
/// 100–400 ms).
pub(crate) const SAMPLE_STALE: Duration = Duration::from_secs(1);

/// Time after a fault heals during which an outage that begins is still charged to it.
pub(crate) const AFTERMATH: Duration = Duration::from_secs(3);

/// The bounds a run is held to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bounds {
    /// Longest time without an agreed leader charged to one fault (and overall).
    pub(crate) leaderless_max: Duration,
    /// Longest time without an acknowledged write charged to one fault (and overall); a
    /// fault that blocks writes by design ([`super::nemesis::FaultSpec::blocks_writes`]) adds
    /// its hold.
    pub(crate) writeless_max: Duration,
    /// Operations acknowledged per second of a lasting fault's hold, at least, counted from
    /// its start to [`AFTERMATH`] after its heal (a fault may stop the cluster for its whole
    /// hold by design or within the time bounds; the load must be served through it or right
    /// after): a fault without traffic tested nothing.
    pub(crate) ops_per_s_min: f64,
    /// Longest time after the heal until a killed or paused node answers its status probe
    /// again (restarted or resumed).
    pub(crate) answer_after_heal_max: Duration,
    /// The workload's clients: every one must have an operation in flight during each
    /// lasting fault (the load was offered).
    pub(crate) clients: u64,
    /// One voter: the cluster has no leader while its only node is down, so the hold of a
    /// lasting fault is added to both time bounds.
    pub(crate) single_voter: bool,
}

/// The chaos runs' bounds. With election timeouts of 500–1000 ms and pre-vote, a new leader
/// takes about 1–2 s after the old one is gone (a one-way partition makes the old leader
/// step down only after its check-quorum period first); the bounds leave room for a
/// loaded two-core machine and nothing like the 20 s outage of issue 18.
pub(crate) const BOUNDS: Bounds = Bounds {
    leaderless_max: Duration::from_secs(5),
    writeless_max: Duration::from_secs(7),
    ops_per_s_min: 10.0,
    answer_after_heal_max: Duration::from_secs(5),
    clients: 8,
    single_voter: false,
};

/// What one status probe saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Seen {
    /// The node says it is the leader.
    pub(crate) leads: bool,
    pub(crate) term: u64,
    /// The leader it knows of.
    pub(crate) leader: Option<u64>,
    /// The voters of its configuration (both halves of a joint one).
    pub(crate) voters: Vec<u64>,
    /// The learners of its configuration.
    pub(crate) learners: Vec<u64>,
    /// Commit, applied and last log index (for `status.tsv`).
    pub(crate) indexes: (u64, u64, u64),
}

/// One status probe of one node: when it returned (history nanoseconds) and what it said
/// (`None`: no answer in time).
#[derive(Clone, Debug)]
pub(crate) struct Sample {
    pub(crate) node: u64,
    pub(crate) at_ns: u64,
    pub(crate) seen: Option<Seen>,
}

/// A closed interval of history time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Interval {
    pub(crate) from_ns: u64,
    pub(crate) to_ns: u64,
}

impl Interval {
    pub(crate) fn len_ns(self) -> u64 {
        self.to_ns.saturating_sub(self.from_ns)
    }
}

/// Each node's latest status sample: when (history nanoseconds) and what it said.
pub(crate) type Latest = BTreeMap<u64, (u64, Option<Seen>)>;

/// The agreed leader (id, term) given each node's latest sample, at `now`.
pub(crate) fn agreed(latest: &Latest, now: u64, stale_ns: u64) -> Option<(u64, u64)> {
    let fresh: BTreeMap<u64, &Seen> = latest
        .iter()
        .filter(|(_, (at, _))| now.saturating_sub(*at) <= stale_ns)
        .filter_map(|(id, (_, s))| s.as_ref().map(|s| (*id, s)))
        .collect();
    fresh.iter().filter(|(_, s)| s.leads).find_map(|(&id, s)| {
        let agree = s
            .voters
            .iter()
            .filter(|v| **v == id || fresh.get(v).is_some_and(|o| o.term == s.term && o.leader == Some(id)))
            .count();
        (s.voters.contains(&id) && agree * 2 > s.voters.len()).then_some((id, s.term))
    })
}

/// The members (voters and learners) of the configuration the agreed leader reports, with
/// the leader. Only the leader's view counts: a spare that was never added, or a node that
/// was removed, answers with a configuration of its own (empty, or old).
pub(crate) fn leader_members(latest: &Latest, now: u64) -> Option<(u64, BTreeSet<u64>)> {
    let (leader, _) = agreed(latest, now, SAMPLE_STALE.as_nanos() as u64)?;
    let (_, seen) = latest.get(&leader)?;
    let seen = seen.as_ref()?;
    Some((leader, seen.voters.iter().chain(&seen.learners).copied().collect()))
}

/// The intervals within `[from_ns, to_ns]` without an agreed leader, evaluated at every sample.
pub(crate) fn leaderless(samples: &[Sample], from_ns: u64, to_ns: u64) -> Vec<Interval> {
    let stale_ns = SAMPLE_STALE.as_nanos() as u64;
    let mut sorted: Vec<&Sample> = samples.iter().collect();
    sorted.sort_by_key(|s| s.at_ns);
    let mut latest: Latest = BTreeMap::new();
    let mut out = Vec::new();
    let mut since: Option<u64> = None;
    for s in sorted {
        latest.insert(s.node, (s.at_ns, s.seen.clone()));
        if s.at_ns < from_ns || s.at_ns > to_ns {
            continue;
        }
        match (agreed(&latest, s.at_ns, stale_ns), since) {
            (None, None) => since = Some(s.at_ns),
            (Some(_), Some(start)) => {
                out.push(Interval { from_ns: start, to_ns: s.at_ns });
                since = None;
            }
            _ => {}
        }
    }
    if let Some(start) = since {
        out.push(Interval { from_ns: start, to_ns });
    }
    out
}

/// The agreed leader over time: `(at, Some((leader, term)))` or `(at, None)` at every
/// change, for `leaders.txt`.
pub(crate) fn leader_changes(samples: &[Sample]) -> Vec<(u64, Option<(u64, u64)>)> {
    let stale_ns = SAMPLE_STALE.as_nanos() as u64;
    let mut latest: Latest = BTreeMap::new();
    let mut out: Vec<(u64, Option<(u64, u64)>)> = Vec::new();
    for s in samples {
        latest.insert(s.node, (s.at_ns, s.seen.clone()));
        let now = agreed(&latest, s.at_ns, stale_ns);
        if out.last().is_none_or(|(_, l)| *l != now) {
            out.push((s.at_ns, now));
        }
    }
    out
}

/// The text of `leaders.txt`: one line per change of the agreed leader.
pub(crate) fn leaders_text(samples: &[Sample]) -> String {
    let mut t = String::from("# history time (s), the agreed leader (a majority of its voters name it) or none\n");
    for (at, l) in leader_changes(samples) {
        let _ = match l {
            Some((id, term)) => writeln!(t, "{:9.3} node {id} (term {term})", secs(at)),
            None => writeln!(t, "{:9.3} none", secs(at)),
        };
    }
    t
}

/// The text of `status.tsv`: every status sample (history seconds, node, and what it said
/// or `-` for no answer).
pub(crate) fn status_text(samples: &[Sample]) -> String {
    let mut t = String::from("time_s\tnode\trole\tterm\tleader\tcommit\tapplied\tlast\n");
    for s in samples {
        let _ = match &s.seen {
            Some(x) => writeln!(
                t,
                "{:.3}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                secs(s.at_ns),
                s.node,
                if x.leads { "leader" } else { "-" },
                x.term,
                x.leader.map_or("-".to_string(), |l| l.to_string()),
                x.indexes.0,
                x.indexes.1,
                x.indexes.2
            ),
            None => writeln!(t, "{:.3}\t{}\tno answer", secs(s.at_ns), s.node),
        };
    }
    t
}

/// Every node seen leading each term (more than one in a term is a split brain).
pub(crate) fn leaders_per_term(samples: &[Sample]) -> BTreeMap<u64, BTreeSet<u64>> {
    let mut out: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for s in samples {
        if let Some(seen) = &s.seen
            && seen.leads
        {
            out.entry(seen.term).or_default().insert(s.node);
        }
    }
    out
}

/// Whether an operation is an acknowledged write.
fn acknowledged_write(op: &Operation) -> bool {
    matches!(
        &op.kind,
        OpKind::Put { completion: Completion::Ok { .. }, .. }
            | OpKind::Delete { completion: Completion::Ok { .. } }
            | OpKind::Cas { completion: Completion::Ok { .. }, .. }
    )
}

/// Whether an operation got a definite answer from the cluster: an acknowledged write, a cas
/// whose comparison failed, or a read that returned.
fn acknowledged(op: &Operation) -> bool {
    match &op.kind {
        OpKind::Get { completion, .. } => matches!(completion, ReadCompletion::Returned { .. }),
        OpKind::Cas { completion, .. } => !matches!(completion, Completion::Unknown),
        _ => acknowledged_write(op),
    }
}

/// The intervals within `[from_ns, to_ns]` between consecutive acknowledged writes.
pub(crate) fn writeless(ops: &[Operation], from_ns: u64, to_ns: u64) -> Vec<Interval> {
    let mut acks: Vec<u64> = ops
        .iter()
        .filter(|op| acknowledged_write(op))
        .filter_map(Operation::ret)
        .filter(|&t| t >= from_ns && t <= to_ns)
        .collect();
    acks.sort_unstable();
    let mut out = Vec::new();
    let mut prev = from_ns;
    for t in acks.into_iter().chain(std::iter::once(to_ns)) {
        if t > prev {
            out.push(Interval { from_ns: prev, to_ns: t });
        }
        prev = t;
    }
    out
}

/// The longest of `intervals` charged to a fault in force over `[start, end]`, in ns.
/// `intervals` are in order and do not overlap (as [`leaderless`] and [`writeless`] make them).
fn charged(intervals: &[Interval], start: u64, end: u64) -> u64 {
    let until = end.saturating_add(AFTERMATH.as_nanos() as u64);
    let lo = intervals.partition_point(|i| i.to_ns <= start);
    let hi = intervals.partition_point(|i| i.from_ns <= until).max(lo);
    intervals[lo..hi].iter().map(|i| i.to_ns.saturating_sub(i.from_ns.max(start))).max().unwrap_or(0)
}

/// The longest of the writeless `intervals` charged to a fault in force over `[start, end]`
/// (as [`charged`]), less the part of each that the holds of *other* write-refusing faults
/// (`blocked`: their `[start, end]`) cover: an outage that a later disk-full or slow-disk fault
/// explains is that fault's (held to its own bound, which adds its hold), not the earlier
/// fault's. Found by a soak run: a partition was charged 11 s of a writeless interval of
/// which 9 s were a slow disk that began after it.
fn charged_writeless(intervals: &[Interval], start: u64, end: u64, blocked: &[Interval]) -> u64 {
    let until = end.saturating_add(AFTERMATH.as_nanos() as u64);
    let lo = intervals.partition_point(|i| i.to_ns <= start);
    let hi = intervals.partition_point(|i| i.from_ns <= until).max(lo);
    intervals[lo..hi]
        .iter()
        .map(|i| {
            let span = Interval { from_ns: i.from_ns.max(start), to_ns: i.to_ns };
            span.len_ns().saturating_sub(covered(span, blocked))
        })
        .max()
        .unwrap_or(0)
}

/// How much of `span` the union of `by` covers, in ns.
fn covered(span: Interval, by: &[Interval]) -> u64 {
    let mut parts: Vec<(u64, u64)> =
        by.iter().map(|b| (b.from_ns.max(span.from_ns), b.to_ns.min(span.to_ns))).filter(|(a, b)| a < b).collect();
    parts.sort_unstable();
    let (mut total, mut reach) = (0, span.from_ns);
    for (a, b) in parts {
        let a = a.max(reach);
        if b > a {
            total += b - a;
            reach = b;
        }
    }
    total
}

/// What one fault saw, and what is wrong with it.
#[derive(Clone, Debug)]
pub(crate) struct FaultStats {
    pub(crate) n: usize,
    pub(crate) fault: Fault,
    pub(crate) what: String,
    pub(crate) start_ns: u64,
    pub(crate) end_ns: u64,
    /// Operations acknowledged (answered definitely) in `[start, end]`.
    pub(crate) ops: u64,
    /// Of which acknowledged writes.
    pub(crate) writes: u64,
    pub(crate) leaderless_ns: u64,
    pub(crate) leaderless_max_ns: u64,
    pub(crate) writeless_ns: u64,
    pub(crate) writeless_max_ns: u64,
    /// Operations acknowledged from the start to [`AFTERMATH`] after the end.
    pub(crate) ops_around: u64,
    /// Workload clients with an operation in flight at some moment of `[start, end]` (any
    /// outcome): the load offered.
    pub(crate) calls: u64,
    /// Only lasting faults are held to traffic minimums: `(ops_around, calls)`.
    pub(crate) ops_min: Option<(u64, u64)>,
    /// For a stopped node (killed, paused, crashed by a failpoint): how it answered its
    /// status probe after the heal.
    pub(crate) answered_after_ns: Option<Answer>,
    pub(crate) problems: Vec<String>,
}

/// How a stopped node answered its status probe after its fault's heal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Its first answer came this many nanoseconds after the heal.
    After(u64),
    /// It never answered within the observation.
    Never,
    /// Fault `by` stopped it again `after_ns` after the heal, before it had answered: the
    /// later fault's own clause holds it to the bound from that fault's heal.
    Cut { by: usize, after_ns: u64 },
}

/// The verdict's per-fault part.
#[derive(Clone, Debug)]
pub(crate) struct FaultVerdict {
    pub(crate) faults: Vec<FaultStats>,
    /// The longest leaderless and writeless intervals of the whole workload.
    pub(crate) leaderless_ns: u64,
    pub(crate) writeless_ns: u64,
    pub(crate) problems: Vec<String>,
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Holds every record to the bounds. `asked`: the kinds the run asked for; the workload ran
/// over `[begin_ns, stop_ns]`.
pub(crate) fn judge(
    records: &[FaultRecord],
    asked: &[Fault],
    ops: &[Operation],
    samples: &[Sample],
    (begin_ns, stop_ns): (u64, u64),
    bounds: &Bounds,
) -> FaultVerdict {
    let leaderless = leaderless(samples, begin_ns, stop_ns);
    let writeless = writeless(ops, begin_ns, stop_ns);
    let mut answered: Vec<(u64, bool)> =
        ops.iter().filter(|op| acknowledged(op)).filter_map(|op| Some((op.ret()?, acknowledged_write(op)))).collect();
    answered.sort_unstable();
    // Each workload client's operations, (call, return or never), in call order.
    let mut by_client: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
    for op in ops.iter().filter(|op| op.client < bounds.clients) {
        by_client.entry(op.client).or_default().push((op.call, op.ret().unwrap_or(u64::MAX)));
    }
    for v in by_client.values_mut() {
        v.sort_unstable();
    }
    let mut sorted_samples: Vec<&Sample> = samples.iter().collect();
    sorted_samples.sort_by_key(|s| s.at_ns);
    let samples = sorted_samples;
    let holds = |r: &FaultRecord| Interval { from_ns: r.start_ns, to_ns: r.end_ns.unwrap_or(stop_ns).max(r.start_ns) };
    let mut faults = Vec::new();
    for r in records {
        let blocked: Vec<Interval> = records
            .iter()
            .filter(|o| o.n != r.n && o.fault.spec().blocks_writes && o.start_ns >= r.start_ns)
            .map(holds)
            .collect();
        let lasting = r.fault.lasting();
        let end_ns = r.end_ns.unwrap_or(stop_ns).max(r.start_ns);
        let hold_ns = end_ns - r.start_ns;
        let window_end = end_ns.min(stop_ns);
        let count = |from: u64, to: u64| {
            let lo = answered.partition_point(|(t, _)| *t < from);
            let hi = answered.partition_point(|(t, _)| *t <= to).max(lo);
            (&answered[lo..hi], (hi - lo) as u64)
        };
        let (during, ops_n) = count(r.start_ns, window_end);
        let writes_n = during.iter().filter(|(_, w)| *w).count() as u64;
        let (_, ops_around) = count(r.start_ns, end_ns.saturating_add(AFTERMATH.as_nanos() as u64).min(stop_ns));
        let extra_ns = if lasting && bounds.single_voter { hold_ns } else { 0 };
        let leaderless_max_ns = bounds.leaderless_max.as_nanos() as u64 + extra_ns;
        let writes_blocked_ns = if r.fault.spec().blocks_writes { hold_ns } else { 0 };
        let writeless_max_ns = bounds.writeless_max.as_nanos() as u64 + extra_ns.max(writes_blocked_ns);
        let leaderless_ns = charged(&leaderless, r.start_ns, end_ns);
        let writeless_ns = charged_writeless(&writeless, r.start_ns, end_ns.min(stop_ns), &blocked);
        // A client's operations follow one another: it called during the window if its last
        // operation called before the window's end had not returned before its start.
        let calls = by_client
            .values()
            .filter(|v| {
                let i = v.partition_point(|(call, _)| *call <= window_end);
                i > 0 && v[i - 1].1 >= r.start_ns
            })
            .count() as u64;
        let ops_min = lasting.then(|| {
            let acked = ((bounds.ops_per_s_min * secs(window_end.saturating_sub(r.start_ns))).ceil() as u64).max(1);
            (acked, bounds.clients)
        });
        // Until the next fault that stops the same node again, or one that still holds it
        // at this heal: its answers after that are the later heal's (a node killed again
        // while it restarts, or killed while paused, answers only after the later heal).
        let answered_after_ns = r.stopped.map(|id| {
            let again = records
                .iter()
                .filter(|o| o.n != r.n && o.stopped == Some(id) && o.end_ns.is_none_or(|e| e > end_ns))
                .min_by_key(|o| o.start_ns);
            let from = samples.partition_point(|s| s.at_ns < end_ns);
            let until = again.map_or(u64::MAX, |o| o.start_ns);
            let first =
                samples[from..].iter().take_while(|s| s.at_ns < until).find(|s| s.node == id && s.seen.is_some());
            match (first, again) {
                (Some(s), _) => Answer::After(s.at_ns - end_ns),
                (None, Some(o)) => Answer::Cut { by: o.n, after_ns: o.start_ns.saturating_sub(end_ns) },
                (None, None) => Answer::Never,
            }
        });
        let mut problems = Vec::new();
        let answer_max_ns = bounds.answer_after_heal_max.as_nanos() as u64;
        match (answered_after_ns, r.stopped) {
            (Some(Answer::Never), Some(id)) => problems.push(format!("node {id} never answered after the heal")),
            (Some(Answer::After(ns)), Some(id)) if ns > answer_max_ns => problems.push(format!(
                "node {id} answered only {:.1}s after the heal (bound {:.1}s)",
                secs(ns),
                secs(answer_max_ns)
            )),
            (Some(Answer::Cut { by, after_ns }), Some(id)) if after_ns > answer_max_ns => problems.push(format!(
                "node {id} did not answer in the {:.1}s between the heal and #{by} (bound {:.1}s)",
                secs(after_ns),
                secs(answer_max_ns)
            )),
            _ => {}
        }
        if let Some((acked_min, calls_min)) = ops_min {
            if calls < calls_min {
                problems.push(format!("only {calls} of {calls_min} clients called during it"));
            }
            if ops_around < acked_min {
                problems.push(format!(
                    "only {ops_around} operations acknowledged during it and the {}s after (at least {acked_min} needed)",
                    AFTERMATH.as_secs()
                ));
            }
        }
        if leaderless_ns > leaderless_max_ns {
            problems.push(format!("no leader for {:.1}s (bound {:.1}s)", secs(leaderless_ns), secs(leaderless_max_ns)));
        }
        if writeless_ns > writeless_max_ns {
            problems.push(format!(
                "no acknowledged write for {:.1}s (bound {:.1}s)",
                secs(writeless_ns),
                secs(writeless_max_ns)
            ));
        }
        faults.push(FaultStats {
            n: r.n,
            fault: r.fault,
            what: r.what.clone(),
            start_ns: r.start_ns,
            end_ns,
            ops: ops_n,
            ops_around,
            writes: writes_n,
            calls,
            leaderless_ns,
            leaderless_max_ns,
            writeless_ns,
            writeless_max_ns,
            ops_min,
            answered_after_ns,
            problems,
        });
    }
    let leaderless_ns = leaderless.iter().map(|i| i.len_ns()).max().unwrap_or(0);
    let writeless_ns = writeless.iter().map(|i| i.len_ns()).max().unwrap_or(0);
    let injected: BTreeSet<Fault> = records.iter().map(|r| r.fault).collect();
    let never_injected: Vec<Fault> = asked.iter().copied().filter(|f| !injected.contains(f)).collect();
    let mut problems: Vec<String> = faults
        .iter()
        .filter(|f| !f.problems.is_empty())
        .map(|f| format!("#{} {} ({}): {}", f.n, f.fault.name(), f.what, f.problems.join(", ")))
        .collect();
    if !never_injected.is_empty() {
        problems.push(format!("never injected: {}", Fault::names(&never_injected)));
    }
    // Outages outside every fault's window are findings too; so is a run without a single
    // leader sample (the observer saw nothing: the bound could not be checked).
    let overall_leaderless_max =
        faults.iter().map(|f| f.leaderless_max_ns).chain([bounds.leaderless_max.as_nanos() as u64]).max().unwrap_or(0);
    if leaderless_ns > overall_leaderless_max {
        problems.push(format!(
            "no leader for {:.1}s during the workload (bound {:.1}s)",
            secs(leaderless_ns),
            secs(overall_leaderless_max)
        ));
    }
    let overall_writeless_max =
        faults.iter().map(|f| f.writeless_max_ns).chain([bounds.writeless_max.as_nanos() as u64]).max().unwrap_or(0);
    if writeless_ns > overall_writeless_max {
        problems.push(format!(
            "no acknowledged write for {:.1}s during the workload (bound {:.1}s)",
            secs(writeless_ns),
            secs(overall_writeless_max)
        ));
    }
    if !samples.iter().any(|s| s.seen.is_some()) {
        problems.push("the leader observer got no status answer at all".into());
    }
    FaultVerdict { faults, leaderless_ns, writeless_ns, problems }
}

impl FaultVerdict {
    pub(crate) fn pass(&self) -> bool {
        self.problems.is_empty()
    }

    /// One clause of the verdict line.
    pub(crate) fn summary(&self) -> String {
        let lasting: Vec<&FaultStats> = self.faults.iter().filter(|f| f.ops_min.is_some()).collect();
        let admin = self.faults.len() - lasting.len();
        let acked_min = lasting.iter().map(|f| f.ops_around).min();
        let calls_min = lasting.iter().map(|f| f.calls).min();
        let worst = |get: fn(&FaultStats) -> (u64, u64)| {
            self.faults
                .iter()
                .map(get)
                .max_by(|a, b| (a.0 as f64 / a.1.max(1) as f64).total_cmp(&(b.0 as f64 / b.1.max(1) as f64)))
        };
        let leaderless = worst(|f| (f.leaderless_ns, f.leaderless_max_ns));
        let writeless = worst(|f| (f.writeless_ns, f.writeless_max_ns));
        let traffic_ok = !self.faults.iter().any(|f| f.problems.iter().any(|p| p.starts_with("only ")));
        let under_load = match (traffic_ok, acked_min, calls_min) {
            (false, _, _) => "NOT all under load".to_string(),
            (true, Some(a), Some(c)) => format!(
                "every one under load ({c} clients calling during each; at least {a} operations acknowledged during each and the {}s after)",
                AFTERMATH.as_secs()
            ),
            _ => "every one under load".to_string(),
        };
        let mut s = format!(
            "{} faults and {admin} admin requests, {under_load}; per fault, longest without a leader {:.1}s (bound {:.1}s), without an acknowledged write {:.1}s (bound {:.1}s)",
            lasting.len(),
            leaderless.map_or(0.0, |l| secs(l.0)),
            leaderless.map_or(0.0, |l| secs(l.1)),
            writeless.map_or(0.0, |w| secs(w.0)),
            writeless.map_or(0.0, |w| secs(w.1)),
        );
        if !self.problems.is_empty() {
            s = format!("FAULT WINDOWS: {}; {s}", self.problems.join("; "));
        }
        s
    }

    /// The per-fault table (`faults.txt`).
    pub(crate) fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "{:>3} {:<15} {:>9} {:>7} {:>6} {:>6} {:>6} {:>7} {:>10} {:>13} {:>13} {:>8}  what",
            "#",
            "fault",
            "start s",
            "held s",
            "ops",
            "writes",
            "calls",
            "ops+3s",
            "min",
            "leaderless s",
            "writeless s",
            "answer s"
        );
        for f in &self.faults {
            let _ = writeln!(
                t,
                "{:>3} {:<15} {:>9.3} {:>7.2} {:>6} {:>6} {:>6} {:>7} {:>10} {:>6.2}≤{:<6.1} {:>6.2}≤{:<6.1} {:>8}  {}{}",
                f.n,
                f.fault.name(),
                secs(f.start_ns),
                secs(f.end_ns - f.start_ns),
                f.ops,
                f.writes,
                f.calls,
                f.ops_around,
                f.ops_min.map_or("-".to_string(), |(a, c)| format!("{a}/{c}c")),
                secs(f.leaderless_ns),
                secs(f.leaderless_max_ns),
                secs(f.writeless_ns),
                secs(f.writeless_max_ns),
                match f.answered_after_ns {
                    None => "-".to_string(),
                    Some(Answer::Never) => "never".to_string(),
                    Some(Answer::After(ns)) => format!("{:.2}", secs(ns)),
                    Some(Answer::Cut { by, .. }) => format!("cut#{by}"),
                },
                f.what,
                if f.problems.is_empty() { String::new() } else { format!("  FAIL: {}", f.problems.join(", ")) }
            );
        }
        let _ = writeln!(
            t,
            "whole workload: longest without a leader {:.2}s, without an acknowledged write {:.2}s",
            secs(self.leaderless_ns),
            secs(self.writeless_ns)
        );
        for p in &self.problems {
            let _ = writeln!(t, "FAIL: {p}");
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn seen(leads: bool, term: u64, leader: Option<u64>) -> Option<Seen> {
        Some(Seen { leads, term, leader, voters: vec![1, 2, 3], learners: Vec::new(), indexes: (0, 0, 0) })
    }

    /// Node 1 leads term 1 with everyone agreeing, every 100 ms over `[from, to)` seconds ×10.
    fn healthy(from_ds: u64, to_ds: u64, nodes: &[u64]) -> Vec<Sample> {
        let mut v = Vec::new();
        for ds in from_ds..to_ds {
            for &n in nodes {
                v.push(Sample { node: n, at_ns: ds * S / 10 + n, seen: seen(n == 1, 1, Some(1)) });
            }
        }
        v
    }

    #[test]
    fn an_agreed_leader_needs_a_majority_naming_it() {
        let mut latest = BTreeMap::new();
        latest.insert(1, (0, seen(true, 2, Some(1))));
        assert_eq!(agreed(&latest, 0, S), None, "a leader alone is not agreed on in a 3-voter cluster");
        latest.insert(2, (0, seen(false, 2, Some(1))));
        assert_eq!(agreed(&latest, 0, S), Some((1, 2)));
        // A follower of an older term does not count.
        latest.insert(2, (0, seen(false, 1, Some(1))));
        assert_eq!(agreed(&latest, 0, S), None);
        // Stale samples do not count.
        latest.insert(2, (0, seen(false, 2, Some(1))));
        assert_eq!(agreed(&latest, 2 * S, S), None);
        // A node that stopped answering does not count.
        latest.insert(2, (0, None));
        assert_eq!(agreed(&latest, 0, S), None);
    }

    #[test]
    fn the_members_are_the_leaders_configuration_not_any_nodes() {
        // Nodes 1-3 agree that 1 leads, with learner 5; spare 5 (added, not caught up) and
        // spare 6 (never added) answer with configurations of their own.
        let mut latest: Latest = BTreeMap::new();
        let with = |leads, leader, voters: &[u64], learners: &[u64]| {
            Some(Seen {
                leads,
                term: 4,
                leader,
                voters: voters.to_vec(),
                learners: learners.to_vec(),
                indexes: (0, 0, 0),
            })
        };
        latest.insert(5, (0, with(false, None, &[], &[])));
        latest.insert(6, (0, with(false, None, &[], &[])));
        assert_eq!(leader_members(&latest, 0), None, "no leader, no member set (never an empty one)");
        latest.insert(1, (0, with(true, Some(1), &[1, 2, 3], &[5])));
        latest.insert(2, (0, with(false, Some(1), &[1, 2, 3], &[5])));
        let (leader, members) = leader_members(&latest, 0).unwrap();
        assert_eq!(leader, 1);
        assert_eq!(members.into_iter().collect::<Vec<_>>(), vec![1, 2, 3, 5]);
    }

    #[test]
    fn a_leader_pause_is_a_leaderless_interval() {
        let mut samples = healthy(0, 10, &[1, 2, 3]);
        // 1.0–3.0 s: node 1 does not answer; nodes 2 and 3 still name it, then elect 2 at 2.5 s.
        for ds in 10..30 {
            let t = ds * S / 10;
            samples.push(Sample { node: 1, at_ns: t + 1, seen: None });
            let (term, leader) = if ds < 25 { (1, Some(1)) } else { (2, Some(2)) };
            samples.push(Sample { node: 2, at_ns: t + 2, seen: seen(ds >= 25, term, leader) });
            samples.push(Sample { node: 3, at_ns: t + 3, seen: seen(false, term, leader) });
        }
        // From the first complete round of samples on.
        let gaps = leaderless(&samples, S / 10, 3 * S);
        assert_eq!(gaps.len(), 1, "{gaps:?}");
        let g = gaps[0];
        assert!((S..S + S / 10).contains(&g.from_ns), "{g:?}");
        assert!((25 * S / 10..26 * S / 10).contains(&g.to_ns), "{g:?}");
        // A run that ends leaderless is leaderless until its end.
        let cut: Vec<Sample> = samples.iter().filter(|s| s.at_ns < 25 * S / 10).cloned().collect();
        let gaps = leaderless(&cut, S / 10, 5 * S);
        assert_eq!(gaps.last().unwrap().to_ns, 5 * S);
    }

    #[test]
    fn two_leaders_in_a_term_are_seen() {
        let mut samples = healthy(0, 3, &[1, 2, 3]);
        samples.push(Sample { node: 2, at_ns: 5, seen: seen(true, 1, Some(2)) });
        let terms = leaders_per_term(&samples);
        assert_eq!(terms[&1].len(), 2);
    }

    fn put(at: u64, ret: Option<u64>) -> Operation {
        let c = match ret {
            Some(r) => Completion::Ok { ret: r },
            None => Completion::Unknown,
        };
        Operation::put(0, "k", format!("v{at}"), at, c)
    }

    fn get(at: u64, ret: u64) -> Operation {
        Operation::get(1, "k", at, ReadCompletion::Returned { ret, output: None })
    }

    fn record(n: usize, fault: Fault, start_s: f64, end_s: f64) -> FaultRecord {
        FaultRecord {
            n,
            fault,
            what: format!("test fault {n}"),
            stopped: None,
            start_ns: (start_s * 1e9) as u64,
            end_ns: Some((end_s * 1e9) as u64),
            outcome: None,
        }
    }

    /// Writes and reads acknowledged every 10 ms over `[from, to)` seconds, by 8 clients in
    /// turn.
    fn traffic(from_s: f64, to_s: f64) -> Vec<Operation> {
        let mut ops = Vec::new();
        let mut t = (from_s * 1e9) as u64;
        while t < (to_s * 1e9) as u64 {
            let client = t / 10_000_000 % 8;
            let mut p = put(t, Some(t + 1_000_000));
            let mut g = get(t, t + 2_000_000);
            (p.client, g.client) = (client, client);
            ops.push(p);
            ops.push(g);
            t += 10_000_000;
        }
        ops
    }

    /// Each of 8 clients in one call from `from_s` (after its last operation of [`traffic`]:
    /// a client's operations follow one another) that returns at `to_s` (or never).
    fn waiting(from_s: f64, to_s: Option<f64>) -> Vec<Operation> {
        (0..8)
            .map(|c| {
                let done = to_s.map_or(Completion::Unknown, |t| Completion::Ok { ret: (t * 1e9) as u64 });
                Operation::put(c, "k", format!("w{c}"), (from_s * 1e9) as u64, done)
            })
            .collect()
    }

    #[test]
    fn unacknowledged_writes_leave_a_writeless_interval() {
        let mut ops = traffic(0.0, 1.0);
        ops.push(put(S, None));
        ops.extend(traffic(4.0, 5.0));
        let gaps = writeless(&ops, 0, 5 * S);
        let longest = gaps.iter().map(|g| g.len_ns()).max().unwrap();
        assert!((3 * S..31 * S / 10).contains(&longest), "{longest}");
    }

    #[test]
    fn a_healthy_run_passes_every_bound() {
        let ops = traffic(0.0, 10.0);
        let samples = healthy(0, 100, &[1, 2, 3]);
        let records = vec![record(1, Fault::PARTITION, 2.0, 4.0), record(2, Fault::LEADER_TRANSFER, 5.0, 5.1)];
        let v = judge(&records, &[Fault::PARTITION, Fault::LEADER_TRANSFER], &ops, &samples, (0, 10 * S), &BOUNDS);
        assert!(v.pass(), "{}", v.table());
        assert_eq!(v.faults[0].ops, 400);
        assert_eq!(v.faults[0].writes, 200);
        assert_eq!(v.faults[0].calls, 8);
        assert_eq!(v.faults[1].ops_min, None, "admin requests have no traffic minimum");
        assert!(v.summary().contains("1 faults and 1 admin requests"), "{}", v.summary());
    }

    #[test]
    fn a_fault_without_traffic_fails_the_run() {
        // Traffic stops at 2 s; a fault from 3 s to 5 s runs without any.
        let ops = traffic(0.0, 2.0);
        let samples = healthy(0, 100, &[1, 2, 3]);
        let v = judge(&[record(1, Fault::CLOCK, 3.0, 5.0)], &[Fault::CLOCK], &ops, &samples, (0, 2 * S), &BOUNDS);
        assert!(!v.pass());
        assert!(v.problems[0].contains("only 0 of 8 clients called during it"), "{:?}", v.problems);
        assert!(
            v.problems[0].contains("only 0 operations acknowledged during it and the 3s after (at least 1"),
            "{:?}",
            v.problems
        );
    }

    #[test]
    fn an_outage_that_outlasts_the_fault_is_charged_to_it() {
        // A pause from 2 to 4 s; no leader and no write from 2 s until 15 s.
        let mut ops = traffic(0.0, 2.0);
        ops.extend(traffic(15.0, 20.0));
        let mut samples = healthy(0, 20, &[1, 2, 3]);
        for ds in 20..150 {
            for n in [1, 2, 3] {
                samples.push(Sample { node: n, at_ns: ds * S / 10 + n, seen: seen(false, 2, None) });
            }
        }
        samples.extend(healthy(150, 200, &[1, 2, 3]).into_iter().map(|mut s| {
            if let Some(x) = s.seen.as_mut() {
                x.term = 3;
            }
            s
        }));
        let v = judge(&[record(1, Fault::PAUSE, 2.0, 4.0)], &[Fault::PAUSE], &ops, &samples, (0, 20 * S), &BOUNDS);
        assert!(!v.pass());
        let f = &v.faults[0];
        assert!(f.leaderless_ns > 12 * S, "{}", v.table());
        assert!(f.writeless_ns > 12 * S, "{}", v.table());
        assert!(f.problems.iter().any(|p| p.starts_with("no leader for 13.0s (bound 5.0s)")), "{:?}", f.problems);
        assert!(v.summary().starts_with("FAULT WINDOWS: #1 pause"), "{}", v.summary());
    }

    #[test]
    fn a_node_that_stays_silent_after_its_heal_fails_the_run() {
        let ops = traffic(0.0, 20.0);
        // Node 3 is paused from 2 s to 4 s and answers again only at 12 s; nodes 1 and 2 lead.
        let mut samples = Vec::new();
        for ds in 0..200 {
            let t = ds * S / 10;
            samples.push(Sample { node: 1, at_ns: t + 1, seen: seen(true, 1, Some(1)) });
            samples.push(Sample { node: 2, at_ns: t + 2, seen: seen(false, 1, Some(1)) });
            let silent = (20..120).contains(&ds);
            samples.push(Sample { node: 3, at_ns: t + 3, seen: if silent { None } else { seen(false, 1, Some(1)) } });
        }
        let mut r = record(1, Fault::PAUSE, 2.0, 4.0);
        r.stopped = Some(3);
        let v = judge(&[r.clone()], &[Fault::PAUSE], &ops, &samples, (0, 20 * S), &BOUNDS);
        assert!(!v.pass());
        assert!(v.faults[0].problems[0].starts_with("node 3 answered only 8.0s after the heal"), "{}", v.table());
        // Answering 1 s after the heal is fine; never answering is not.
        let quick: Vec<Sample> = samples
            .iter()
            .cloned()
            .map(|mut s| {
                if s.node == 3 && (50..120).contains(&(s.at_ns / (S / 10))) {
                    s.seen = seen(false, 1, Some(1));
                }
                s
            })
            .collect();
        assert!(judge(&[r.clone()], &[Fault::PAUSE], &ops, &quick, (0, 20 * S), &BOUNDS).pass());
        let never: Vec<Sample> = samples.iter().filter(|s| s.node != 3 || s.at_ns < 2 * S).cloned().collect();
        let v = judge(&[r], &[Fault::PAUSE], &ops, &never, (0, 20 * S), &BOUNDS);
        assert!(v.faults[0].problems[0].contains("never answered"), "{}", v.table());
    }

    /// Soak seed 9 (30 min, 5 nodes): `lost-wal` #885 on node 4 healed (restart) at 1720.41 s,
    /// and `kill` #887 stopped node 4 again 0.68 s later, while it was still opening its store;
    /// it answered 1.49 s after #887's heal, which the verdict charged to #885 as "answered
    /// only 5.2s after the heal" (the same for #532 `lost-wal` and #534 `pause` on node 5). A
    /// node stopped again before it could answer is held to the bound by the later fault; the
    /// earlier one is cut short, and fails only if the node stayed silent past the bound before
    /// the later fault.
    #[test]
    fn a_node_stopped_again_before_it_answers_is_charged_to_the_later_fault() {
        let ops = traffic(0.0, 20.0);
        // Node 3: lost-wal from 2.0 s to 4.2 s, killed again from 4.9 s to 7.9 s, answers
        // from 9.4 s (5.2 s after the first heal, 1.5 s after the second).
        let answers_from = |ds: u64| {
            let mut samples = Vec::new();
            for d in 0..200 {
                let t = d * S / 10;
                samples.push(Sample { node: 1, at_ns: t + 1, seen: seen(true, 1, Some(1)) });
                samples.push(Sample { node: 2, at_ns: t + 2, seen: seen(false, 1, Some(1)) });
                let silent = (20..ds).contains(&d);
                samples.push(Sample {
                    node: 3,
                    at_ns: t + 3,
                    seen: if silent { None } else { seen(false, 1, Some(1)) },
                });
            }
            samples
        };
        let mut lost = record(1, Fault::LOST_WAL, 2.0, 4.2);
        lost.stopped = Some(3);
        let mut kill = record(2, Fault::KILL, 4.9, 7.9);
        kill.stopped = Some(3);
        let (cut_after, kill_heal) = (kill.start_ns - lost.end_ns.unwrap_or(0), kill.end_ns.unwrap_or(0));
        let records = [lost.clone(), kill];
        let asked = [Fault::LOST_WAL, Fault::KILL];
        let v = judge(&records, &asked, &ops, &answers_from(94), (0, 20 * S), &BOUNDS);
        assert!(v.pass(), "{}", v.table());
        assert_eq!(v.faults[0].answered_after_ns, Some(Answer::Cut { by: 2, after_ns: cut_after }), "{}", v.table());
        assert_eq!(v.faults[1].answered_after_ns, Some(Answer::After(94 * S / 10 + 3 - kill_heal)), "{}", v.table());
        assert!(v.table().contains("cut#2"), "{}", v.table());
        // The later fault still holds the node to the bound.
        let v = judge(&records, &asked, &ops, &answers_from(140), (0, 20 * S), &BOUNDS);
        assert!(!v.pass());
        assert!(v.faults[0].problems.is_empty(), "{}", v.table());
        assert!(v.faults[1].problems[0].starts_with("node 3 answered only 6.1s after the heal"), "{}", v.table());
        // Silent past the bound before the later fault: the earlier fault fails.
        let mut kill = record(2, Fault::KILL, 10.0, 11.0);
        kill.stopped = Some(3);
        let v = judge(&[lost, kill], &asked, &ops, &answers_from(120), (0, 20 * S), &BOUNDS);
        assert!(
            v.faults[0].problems[0].starts_with("node 3 did not answer in the 5.8s between the heal and #2"),
            "{}",
            v.table()
        );
        assert!(v.faults[1].problems.is_empty(), "{}", v.table());
    }

    /// A fault that stops a node while another fault already holds it (a kill of a paused
    /// node, say) overlaps the earlier one's heal: the node cannot answer after the earlier
    /// heal until the later fault heals, so the earlier fault's answer is cut at once and
    /// the later one is held to the bound.
    #[test]
    fn a_node_still_held_by_an_overlapping_fault_at_the_heal_is_charged_to_that_fault() {
        let ops = traffic(0.0, 20.0);
        // Node 3: paused from 2.0 s to 4.0 s, killed from 3.5 s (inside the pause) to 8.0 s,
        // answers from 8.5 s (4.5 s after the pause's heal, 0.5 s after the kill's).
        let mut samples = Vec::new();
        for d in 0..200 {
            let t = d * S / 10;
            samples.push(Sample { node: 1, at_ns: t + 1, seen: seen(true, 1, Some(1)) });
            samples.push(Sample { node: 2, at_ns: t + 2, seen: seen(false, 1, Some(1)) });
            let silent = (20..85).contains(&d);
            samples.push(Sample { node: 3, at_ns: t + 3, seen: if silent { None } else { seen(false, 1, Some(1)) } });
        }
        let mut pause = record(1, Fault::PAUSE, 2.0, 4.0);
        pause.stopped = Some(3);
        let mut kill = record(2, Fault::KILL, 3.5, 8.0);
        kill.stopped = Some(3);
        let v = judge(&[pause, kill], &[Fault::PAUSE, Fault::KILL], &ops, &samples, (0, 20 * S), &BOUNDS);
        assert!(v.pass(), "{}", v.table());
        assert_eq!(v.faults[0].answered_after_ns, Some(Answer::Cut { by: 2, after_ns: 0 }), "{}", v.table());
        assert!(matches!(v.faults[1].answered_after_ns, Some(Answer::After(ns)) if ns < S), "{}", v.table());
    }

    #[test]
    fn an_outage_before_a_fault_is_charged_from_its_start() {
        // No writes from 1 s to 6 s; a fault from 5 s to 7 s is charged 1 s of it.
        let mut ops = traffic(0.0, 1.0);
        ops.extend(traffic(6.0, 10.0));
        let gaps = writeless(&ops, 0, 10 * S);
        let c = charged(&gaps, 5 * S, 7 * S);
        assert!((S..S + S / 50).contains(&c), "{c}");
    }

    #[test]
    fn a_disk_full_fault_may_block_writes_for_its_hold() {
        // Reads go on; writes stop at 2 s and resume at 9.5 s, after a 4 s hold from 2 s.
        let mut ops = traffic(0.0, 2.0);
        ops.extend(traffic(2.0, 9.5).into_iter().filter(|o| matches!(o.kind, OpKind::Get { .. })));
        ops.extend(traffic(9.5, 14.0));
        let samples = healthy(0, 140, &[1, 2, 3]);
        let v =
            judge(&[record(1, Fault::DISK_FULL, 2.0, 6.0)], &[Fault::DISK_FULL], &ops, &samples, (0, 14 * S), &BOUNDS);
        assert!(v.pass(), "{}", v.table());
        assert_eq!(v.faults[0].writeless_max_ns, 11 * S);
        assert_eq!(v.faults[0].writes, 0);
        // The same gap for a fault that does not block writes is a failure.
        let v = judge(&[record(1, Fault::CLOCK, 2.0, 6.0)], &[Fault::CLOCK], &ops, &samples, (0, 14 * S), &BOUNDS);
        assert!(!v.pass(), "{}", v.table());
        assert!(v.faults[0].problems[0].starts_with("no acknowledged write for 7.5s (bound 7.0s)"), "{}", v.table());
    }

    #[test]
    fn a_fault_that_stops_the_cluster_is_held_to_the_traffic_around_it() {
        // Writes refused (or no leader) from 2 s to 6 s: every client waits in one call, and
        // traffic resumes 0.6 s after the heal.
        let mut ops = traffic(0.0, 2.0);
        ops.extend(traffic(6.6, 10.0));
        let samples = healthy(0, 100, &[1, 2, 3]);
        let record = [record(1, Fault::SLOW_DISK, 2.0, 6.0)];
        let mut all = ops.clone();
        all.extend(waiting(1.995, Some(6.5)));
        let v = judge(&record, &[Fault::SLOW_DISK], &all, &samples, (0, 10 * S), &BOUNDS);
        assert!(v.pass(), "{}", v.table());
        assert_eq!((v.faults[0].ops, v.faults[0].calls), (0, 8));
        assert!(v.faults[0].ops_around > 40, "{}", v.table());
        // Only three clients calling: the load was not offered.
        let mut few = ops.clone();
        few.extend(waiting(1.995, Some(6.5)).into_iter().take(3));
        let v = judge(&record, &[Fault::SLOW_DISK], &few, &samples, (0, 10 * S), &BOUNDS);
        assert!(!v.pass());
        assert!(v.faults[0].problems[0].starts_with("only 3 of 8 clients called during it"), "{}", v.table());
        assert!(v.summary().contains("NOT all under load"), "{}", v.summary());
        // Clients calling, but nothing served through the fault or in the 3 s after it.
        let mut stuck = traffic(0.0, 2.0);
        stuck.extend(waiting(1.995, None));
        let v = judge(&record, &[Fault::SLOW_DISK], &stuck, &samples, (0, 10 * S), &BOUNDS);
        assert!(
            v.faults[0]
                .problems
                .iter()
                .any(|p| p.starts_with("only 0 operations acknowledged during it and the 3s after")),
            "{}",
            v.table()
        );
    }

    #[test]
    fn a_kind_never_injected_fails_the_run() {
        let ops = traffic(0.0, 10.0);
        let samples = healthy(0, 100, &[1, 2, 3]);
        let v = judge(
            &[record(1, Fault::KILL, 2.0, 4.0)],
            &[Fault::KILL, Fault::CLOCK],
            &ops,
            &samples,
            (0, 10 * S),
            &BOUNDS,
        );
        assert!(!v.pass());
        assert!(v.summary().contains("never injected: clock"), "{}", v.summary());
    }

    #[test]
    fn a_blind_observer_fails_the_run() {
        let ops = traffic(0.0, 10.0);
        let samples: Vec<Sample> = (0..100).map(|ds| Sample { node: 1, at_ns: ds * S / 10, seen: None }).collect();
        let v = judge(&[], &[], &ops, &samples, (0, 10 * S), &BOUNDS);
        assert!(!v.pass());
        assert!(v.problems.iter().any(|p| p.contains("no status answer")), "{:?}", v.problems);
        assert!(v.problems.iter().any(|p| p.contains("no leader for 10.0s during the workload")), "{:?}", v.problems);
    }

    #[test]
    fn a_single_voter_is_allowed_its_hold_without_a_leader() {
        let mut ops = traffic(0.0, 2.0);
        ops.extend(waiting(1.995, Some(7.4)));
        ops.extend(traffic(7.5, 10.0));
        let mut samples: Vec<Sample> = healthy(0, 20, &[1]);
        for s in &mut samples {
            if let Some(x) = s.seen.as_mut() {
                x.voters = vec![1];
            }
        }
        samples.extend((20..75).map(|ds| Sample { node: 1, at_ns: ds * S / 10, seen: None }));
        samples.extend(healthy(75, 100, &[1]).into_iter().map(|mut s| {
            if let Some(x) = s.seen.as_mut() {
                x.voters = vec![1];
            }
            s
        }));
        let single = Bounds { single_voter: true, ..BOUNDS };
        let records = [record(1, Fault::KILL, 2.0, 6.0)];
        let v = judge(&records, &[Fault::KILL], &ops, &samples, (0, 10 * S), &single);
        assert!(v.pass(), "{}", v.table());
        let v = judge(&records, &[Fault::KILL], &ops, &samples, (0, 10 * S), &BOUNDS);
        assert!(!v.pass(), "{}", v.table());
    }

    #[test]
    fn an_outage_explained_by_later_write_refusing_faults_is_not_charged_to_an_earlier_one() {
        // Writes stop at 2 s and resume at 14 s; a partition holds 2–4 s, a slow disk (which
        // refuses writes by design) 4–13 s. The partition is charged 2 s of the outage (plus
        // what the slow disk does not cover: 13–14 s), not 12 s; the slow disk's own bound adds
        // its hold.
        let mut ops = traffic(0.0, 2.0);
        ops.extend(traffic(14.0, 16.0));
        let samples = healthy(0, 160, &[1, 2, 3]);
        let records = vec![record(1, Fault::PARTITION, 2.0, 4.0), record(2, Fault::SLOW_DISK, 4.0, 13.0)];
        let v = judge(&records, &[Fault::PARTITION, Fault::SLOW_DISK], &ops, &samples, (0, 16 * S), &BOUNDS);
        let partition = &v.faults[0];
        assert!((3 * S..31 * S / 10).contains(&partition.writeless_ns), "{}", v.table());
        assert!(!partition.problems.iter().any(|p| p.contains("no acknowledged write")), "{}", v.table());
        // The same outage with nothing to explain it fails the partition.
        let v = judge(&records[..1], &[Fault::PARTITION], &ops, &samples, (0, 16 * S), &BOUNDS);
        assert!(v.faults[0].problems.iter().any(|p| p.contains("no acknowledged write for 12.0s")), "{}", v.table());
        // Coverage is a union: overlapping holds are not counted twice.
        let span = Interval { from_ns: 0, to_ns: 10 * S };
        let by = [Interval { from_ns: S, to_ns: 5 * S }, Interval { from_ns: 3 * S, to_ns: 6 * S }];
        assert_eq!(covered(span, &by), 5 * S);
    }
}
