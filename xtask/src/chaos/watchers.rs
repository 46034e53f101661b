//! Watcher clients of a chaos run and the watch check (issue 22).
//!
//! [`WATCHERS`] clients watch the prefix the workload's keys share ([`PREFIX`]) from the run's
//! first revision, each starting on another member, through faults: when a member cannot answer
//! (killed, paused, cut off) the client's watch moves to another member from the same position
//! (its resume), and when the client gives up, the watcher starts a new watch from its
//! position after a short pause. Faults alone move a watcher rarely (it polls members 1 and 2,
//! and most faults heal within a poll's retries), so each watcher also hops on its own: after a
//! seeded [`HOP_MS_MIN`]..[`HOP_MS_MAX`] on one member it drops its watch and resumes from its
//! position on the next member — a disconnect and a resume elsewhere, many times per run.
//! Every answer is recorded. After the workload stops, each watcher goes on until it has
//! covered the last revision the workload was told (or [`DRAIN_MAX`] passes). Then
//! [`quorate_check::watch::check`] holds every stream to the
//! workload's writes (docs/chaos.md, "Watches").

use super::workload::{ClientFactory, History, Timeouts};
use anyhow::{Context, Result};
use quorate_check::watch::{self, Batch, Change, Event, Stream};
use quorate_client::{ApiError, ClientError, EventKind, WatchOptions};
use quorate_core::SplitMix64;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Watchers per run.
pub(crate) const WATCHERS: u64 = 2;
/// The watched prefix: every workload key (`chaos/k000`…), nothing else.
pub(crate) const PREFIX: &str = "chaos/k";
/// The watchers' principal (role read).
pub(crate) const WATCHER: &str = "chaos-watcher";
/// How long one poll may wait on the server for an event.
const WAIT: Duration = Duration::from_millis(1000);
/// Answers recorded per stream at most (a bound on memory); a watcher stops there.
const BATCHES_MAX: usize = 200_000;
/// Events recorded per stream at most.
const EVENTS_MAX: usize = 2_000_000;
/// A watcher hops to the next member after at least this long on one member…
const HOP_MS_MIN: u64 = 1_000;
/// …and at most this long.
const HOP_MS_MAX: u64 = 4_000;
/// A run at least this long must see a hop (else its watch check fails): each watcher's first
/// is due [`HOP_MS_MAX`] after it starts (restarts after errors do not postpone it), and
/// comes with the first answer after that.
pub(crate) const HOPS_EXPECTED_AFTER: Duration = Duration::from_secs(10);
/// How long the watchers may take, after the workload stops, to cover its last revision.
pub(crate) const DRAIN_MAX: Duration = Duration::from_secs(60);
/// The watchers' time limits: a poll waits [`WAIT`] on the server, so a request may take that
/// long and more.
const TIMEOUTS: Timeouts = Timeouts {
    request: Duration::from_millis(3000),
    connect: Duration::from_millis(500),
    total: Duration::from_secs(8),
    retries_max: 20,
};

/// When the watchers stop: once set, each covers `target` then stops, or stops at `deadline`.
#[derive(Debug, Default)]
pub(crate) struct Drain {
    target: AtomicU64,
    set: AtomicBool,
    deadline: Mutex<Option<Instant>>,
}

impl Drain {
    /// The watchers are to cover `target`, by `DRAIN_MAX` from now.
    pub(crate) fn start(&self, target: u64) {
        *self.deadline.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now() + DRAIN_MAX);
        self.target.store(target, Ordering::Relaxed);
        self.set.store(true, Ordering::Release);
    }

    /// Whether a watcher whose next revision is `next` is done.
    fn done(&self, next: u64) -> bool {
        if !self.set.load(Ordering::Acquire) {
            return false;
        }
        let past = *self.deadline.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        next > self.target.load(Ordering::Relaxed) || past.is_some_and(|d| Instant::now() >= d)
    }
}

/// What the watchers recorded.
#[derive(Debug, Default)]
pub(crate) struct Recorded {
    pub(crate) streams: Vec<Stream>,
    /// Watches started again after the client gave up (errors), across watchers.
    pub(crate) restarts: u64,
    /// Streams ended because their position was compacted (a new stream followed).
    pub(crate) compacted: u64,
    /// Streams that stopped at their recording bound.
    pub(crate) capped: u64,
    /// Watches dropped on purpose and resumed from their position on the next member.
    pub(crate) hops: u64,
}

/// Runs [`WATCHERS`] watchers from revision `from` until `drain` says they are done.
pub(crate) async fn run(factory: ClientFactory, from: u64, seed: u64, drain: Arc<Drain>) -> Result<Recorded> {
    let mut tasks = Vec::new();
    for i in 0..WATCHERS {
        let client = factory.client_as(WATCHER, &factory.workload_members, seed ^ 0x3A7C_0000 ^ i, TIMEOUTS)?;
        let members: Vec<u64> = factory.workload_members.iter().map(|m| m.0).collect();
        let drain = drain.clone();
        let rng = SplitMix64::new(seed ^ 0x3A7C_E000 ^ (i << 8));
        tasks.push(tokio::spawn(async move {
            let r = one(i, &client, &members, rng, from, &drain).await;
            client.close();
            r
        }));
    }
    let mut all = Recorded::default();
    for t in tasks {
        let r = t.await.context("a watcher panicked")?;
        all.streams.extend(r.streams);
        all.restarts += r.restarts;
        all.compacted += r.compacted;
        all.capped += r.capped;
        all.hops += r.hops;
    }
    Ok(all)
}

/// The member after `node` in `members` (the first if `node` is not there any more).
fn next_member(members: &[u64], node: u64) -> Option<u64> {
    let at = members.iter().position(|&m| m == node).map_or(0, |p| p + 1);
    members.get(at % members.len().max(1)).copied()
}

/// The time a watcher stays on one member before it hops.
fn hop_after(rng: &mut SplitMix64) -> Duration {
    Duration::from_millis(HOP_MS_MIN + rng.below(HOP_MS_MAX - HOP_MS_MIN + 1))
}

/// Watcher `i`: its streams (more than one only after a compacted position). It starts on
/// the `i`-th of `members` (round the list) and hops through them.
async fn one(
    i: u64,
    client: &quorate_client::Client,
    members: &[u64],
    mut rng: SplitMix64,
    from: u64,
    drain: &Drain,
) -> Recorded {
    let mut out = Recorded::default();
    let mut stream = Stream { name: format!("watch-{i}"), from, ..Stream::default() };
    let mut events = 0usize;
    let mut next = from;
    let mut node = members.get(i as usize % members.len().max(1)).copied();
    let mut last_node: Option<u64> = None;
    // When this watcher next hops: drawn again only after a hop.
    let mut hop_at = Instant::now() + hop_after(&mut rng);
    'watches: while !drain.done(next) {
        let mut options = WatchOptions::prefix(PREFIX).from_revision(next);
        options.wait = WAIT;
        options.node = node.and_then(|n| super::nid(n).ok());
        let mut w = client.watch(options);
        while !drain.done(next) {
            match w.next().await {
                Ok(b) => {
                    let answered = b.node.get();
                    if last_node.is_some_and(|l| l != answered) {
                        stream.reconnects += 1;
                    }
                    last_node = Some(answered);
                    node = Some(answered);
                    let got: Vec<Event> = b.events.iter().map(event).collect();
                    events += got.len();
                    stream.batches.push(Batch {
                        asked_from: next,
                        complete_to: b.complete_to,
                        node: answered,
                        events: got,
                    });
                    next = next.max(b.complete_to.saturating_add(1));
                    if stream.batches.len() >= BATCHES_MAX || events >= EVENTS_MAX {
                        out.capped += 1;
                        break 'watches;
                    }
                    if members.len() > 1 && Instant::now() >= hop_at {
                        // Drop this watch and resume from the position on the next member.
                        out.hops += 1;
                        node = next_member(members, answered);
                        hop_at = Instant::now() + hop_after(&mut rng);
                        continue 'watches;
                    }
                }
                Err(ClientError::Rejected { error: ApiError::Compacted { compacted, .. }, .. }) => {
                    // A gap nobody can fill: this stream ends, a new one starts after it.
                    out.compacted += 1;
                    let ended = std::mem::replace(
                        &mut stream,
                        Stream {
                            name: format!("watch-{i}.{}", out.compacted),
                            from: compacted + 1,
                            ..Stream::default()
                        },
                    );
                    out.streams.push(ended);
                    next = compacted + 1;
                    continue 'watches;
                }
                Err(_) => {
                    // The client gave up on every member for now: start again from the
                    // position, on another member, after a pause.
                    out.restarts += 1;
                    stream.reconnects += 1;
                    node = None;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue 'watches;
                }
            }
        }
    }
    out.streams.push(stream);
    out
}

fn event(e: &quorate_client::WatchEvent) -> Event {
    let key = String::from_utf8_lossy(&e.kv.key).into_owned();
    let change = match e.kind {
        EventKind::Delete => Change::Delete,
        _ => Change::Put(String::from_utf8_lossy(&e.kv.value).into_owned()),
    };
    Event { revision: e.kv.mod_revision, key, change }
}

/// The watch check of a run: the streams against the workload's writes. Whether it passed,
/// its summary line, and the report (written to `watch.txt` in `dir` with the violations).
pub(crate) async fn check(
    recorded: Recorded,
    history: &History,
    dir: &std::path::Path,
) -> Result<(bool, String, watch::Report)> {
    let writes = history.writes();
    let streams = recorded.streams;
    let t = Instant::now();
    let report = tokio::task::spawn_blocking(move || watch::check(&streams, &writes, &|k: &str| k.starts_with(PREFIX)))
        .await
        .context("the watch checker panicked")?;
    let took = t.elapsed().as_secs_f64();
    let mut line = report.summary();
    line.push_str(&format!("; {} hops to another member", recorded.hops));
    if recorded.restarts > 0 || recorded.compacted > 0 || recorded.capped > 0 {
        line.push_str(&format!(
            "; {} restarts after errors, {} streams ended by compaction, {} stopped at their bound",
            recorded.restarts, recorded.compacted, recorded.capped
        ));
    }
    let mut text = format!("{line}\nchecked in {took:.2}s\n");
    for v in &report.violations {
        text.push_str(&format!("{v}\n"));
    }
    std::fs::write(dir.join("watch.txt"), text)?;
    println!("watches: {line} (checked in {took:.2}s)");
    Ok((report.pass(), line, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hop_goes_to_the_next_member_round_the_list_and_from_a_removed_one_to_the_first() {
        assert_eq!(next_member(&[1, 2, 3], 1), Some(2));
        assert_eq!(next_member(&[1, 2, 3], 3), Some(1));
        assert_eq!(next_member(&[1, 2, 3], 7), Some(1));
        assert_eq!(next_member(&[], 1), None);
    }

    #[test]
    fn hop_times_stay_in_their_bounds_and_vary() {
        let mut rng = SplitMix64::new(5);
        let times: Vec<Duration> = (0..1000).map(|_| hop_after(&mut rng)).collect();
        assert!(times.iter().all(|t| (HOP_MS_MIN..=HOP_MS_MAX).contains(&(t.as_millis() as u64))));
        assert!(times.iter().any(|t| t.as_millis() < 1_500) && times.iter().any(|t| t.as_millis() > 3_500));
        assert!(HOPS_EXPECTED_AFTER.as_millis() as u64 >= HOP_MS_MAX);
    }
}
