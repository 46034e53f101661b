//! The paced well-behaved client of `cargo xtask attack`: the one the goodput verdict binds.
//!
//! **Why paced.** The suite runs the cluster, the attacker and the harness on one 2-core
//! machine. A closed-loop client (a new request as soon as the last one is answered) takes all
//! the CPU the nodes can get: unloaded, the nodes use ~1.5 of the 2 cores for it. Under attack
//! any CPU the attacker's own process takes (its TLS, encoding, bookkeeping — on a real network
//! it would run on another machine) comes out of that client's goodput, so the share it
//! keeps measures the attacker's CPU as much as what the attack does to the nodes. A client
//! that offers a fixed rate well below the cluster's capacity (open loop: requests leave on a
//! schedule, whatever the answers do) asks a different question — *is a client with a
//! moderate demand still served?* — which is what denial of service means. The closed-loop
//! figure is still measured and printed, as a report.
//!
//! **What it does.** It offers `rate` operations per second (puts and linearizable gets of its
//! own keys, half each, every call recorded in the attack's history), on a fixed schedule
//! (tick `n` at `n / rate` seconds from its start; a late timer issues every tick that is due).
//! It has [`outstanding_cap`] clients, each with one request in flight at most; a tick that
//! finds them all busy is **not sent and counts as lost** (the demand was there; the cluster
//! did not serve it). A tick's request is charged to the window in which it was issued, and
//! its latency is measured from its scheduled time (a late timer is not hidden).
//!
//! **The verdict.** For each window, the share of offered operations answered successfully
//! ([`Tally::served`]); for each attacked window, that share over the mean of the unloaded
//! windows around it; every attacked window must keep [`super::GOODPUT_MIN`] of it.

use crate::chaos::workload::{History, recorded_get, recorded_put};
use anyhow::Context as _;
use quorate_client::{Client, ReadConsistency};
use quorate_core::SplitMix64;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The share of the unloaded closed-loop goodput (measured at the start of the run) that the
/// paced client offers by default. At half its capacity the cluster has the other half (about
/// 0.75 of a core of the nodes' ~1.5 unloaded) left for whatever the attack makes it do: an
/// attack must cost the nodes more than that, or stall them, to deny the client service.
pub(crate) const PACED_SHARE: f64 = 0.5;

/// The latency the paced client tolerates on average before it loses requests: it has
/// `rate × PACED_LATENCY_BUDGET` clients (Little's law: at that mean latency they are all
/// busy), so a cluster that holds its requests longer than this for a stretch loses the
/// ticks of that stretch — a stall of `PACED_LATENCY_BUDGET + x` loses about `x × rate`
/// ticks. Unloaded its latency is a few milliseconds, but on the shared 2-core machine
/// stalls of 100–150 ms happen in unloaded windows too (another process's burst, a RocksDB
/// flush): 100 ms keeps those from counting as lost, and a 1-s window still loses 10 % of
/// its ticks to one stall of 200 ms.
pub(crate) const PACED_LATENCY_BUDGET: Duration = Duration::from_millis(100);

/// Fewest and most clients (requests in flight) of the paced client.
pub(crate) const PACED_CLIENTS_MIN: usize = 4;
pub(crate) const PACED_CLIENTS_MAX: usize = 128;

/// The highest rate `--paced-rate` accepts, and the lowest a calibration may give.
pub(crate) const PACED_RATE_MAX: f64 = 20_000.0;
pub(crate) const PACED_RATE_MIN: f64 = 10.0;

/// Most latencies kept per kind of window (unloaded, attacked): 8 MiB each.
const LATENCIES_MAX: usize = 2_000_000;

/// Longest a paced client runs (its schedule ends there even if nobody stops it).
const PACED_RUN_MAX: Duration = Duration::from_secs(3600);

/// No window is being measured.
const NO_WINDOW: usize = usize::MAX;

/// The number of clients (requests in flight at most) for `rate` operations per second.
pub(crate) fn outstanding_cap(rate: f64) -> usize {
    let n = (rate * PACED_LATENCY_BUDGET.as_secs_f64()).ceil();
    if n.is_finite() { (n as usize).clamp(PACED_CLIENTS_MIN, PACED_CLIENTS_MAX) } else { PACED_CLIENTS_MAX }
}

/// The rate the paced client offers from the closed-loop goodput measured unloaded.
pub(crate) fn rate_from_capacity(closed_loop_per_sec: f64) -> f64 {
    (closed_loop_per_sec * PACED_SHARE).clamp(PACED_RATE_MIN, PACED_RATE_MAX)
}

/// Ticks due `elapsed` after the start of a schedule of `rate` per second (tick 0 at once).
pub(crate) fn ticks_due(elapsed: Duration, rate: f64) -> u64 {
    (elapsed.as_secs_f64() * rate).floor() as u64 + 1
}

/// What became of the ticks issued in one window.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Tally {
    /// Ticks issued in the window: the demand.
    pub(crate) offered: u64,
    /// Ticks that found every client busy (not sent: lost).
    pub(crate) unsent: u64,
    /// Requests sent and not answered successfully (an error or no answer).
    pub(crate) failed: u64,
    /// Requests answered successfully.
    pub(crate) ok: u64,
}

impl Tally {
    /// The share of the offered operations answered successfully (0 when none was offered).
    pub(crate) fn served(&self) -> f64 {
        if self.offered == 0 { 0.0 } else { self.ok as f64 / self.offered as f64 }
    }

    fn add(&mut self, o: &Tally) {
        self.offered += o.offered;
        self.unsent += o.unsent;
        self.failed += o.failed;
        self.ok += o.ok;
    }
}

/// The tallies of a paced phase's windows (`U A U A ... A U`) and its latencies.
#[derive(Clone, Debug, Default)]
pub(crate) struct Outcome {
    /// One per window, in order: even indexes unloaded, odd ones attacked.
    pub(crate) windows: Vec<Tally>,
    /// Latencies (µs, from the scheduled time) of the requests answered successfully, issued
    /// in unloaded and in attacked windows (at most [`LATENCIES_MAX`] each).
    pub(crate) latencies_unloaded_us: Vec<u32>,
    pub(crate) latencies_attacked_us: Vec<u32>,
}

impl Outcome {
    /// The first `n` windows only (those measured: a phase that ended early measured fewer).
    pub(crate) fn first_windows(mut self, n: usize) -> Outcome {
        self.windows.truncate(n);
        self
    }

    /// The totals of unloaded and of attacked windows.
    pub(crate) fn totals(&self) -> (Tally, Tally) {
        let (mut u, mut a) = (Tally::default(), Tally::default());
        for (i, t) in self.windows.iter().enumerate() {
            if i.is_multiple_of(2) { u.add(t) } else { a.add(t) }
        }
        (u, a)
    }

    /// The served share of each unloaded and each attacked window, as [`super::Windows`]
    /// holds them.
    pub(crate) fn served(&self) -> (Vec<f64>, Vec<f64>) {
        let (mut u, mut a) = (Vec::new(), Vec::new());
        for (i, t) in self.windows.iter().enumerate() {
            if i.is_multiple_of(2) { u.push(t.served()) } else { a.push(t.served()) }
        }
        (u, a)
    }
}

/// The `q` quantile (0..=1) of `v` in milliseconds (nearest rank; 0 for none).
pub(crate) fn quantile_ms(v: &[u32], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    f64::from(s[rank - 1]) / 1000.0
}

/// Idle clients, taken in turn (first in, first out, so that every one of them keeps its
/// connection warm rather than a few doing all the work).
pub(crate) struct Pool<T> {
    idle: Mutex<VecDeque<T>>,
}

impl<T> Pool<T> {
    pub(crate) fn new(items: impl IntoIterator<Item = T>) -> Pool<T> {
        Pool { idle: Mutex::new(items.into_iter().collect()) }
    }

    pub(crate) fn take(&self) -> Option<T> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop_front()
    }

    pub(crate) fn give_back(&self, t: T) {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).push_back(t);
    }

    pub(crate) fn idle(&self) -> usize {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    fn drain(&self) -> Vec<T> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).drain(..).collect()
    }
}

/// Counts per window, shared by the ticker and the requests.
#[derive(Default)]
struct Shared {
    windows: Vec<Tally>,
    unloaded_us: Vec<u32>,
    attacked_us: Vec<u32>,
}

impl Shared {
    fn answered(&mut self, w: usize, ok: bool, latency: Duration) {
        let Some(t) = self.windows.get_mut(w) else { return };
        if !ok {
            t.failed += 1;
            return;
        }
        t.ok += 1;
        let us = latency.as_micros().min(u128::from(u32::MAX)) as u32;
        let v = if w.is_multiple_of(2) { &mut self.unloaded_us } else { &mut self.attacked_us };
        if v.len() < LATENCIES_MAX {
            v.push(us);
        }
    }
}

/// The paced client's clients, each `(history id, client)`: kept from one attack to the next
/// (see [`Paced::finish`]), so that their connections and sessions are made once per cluster,
/// not from the attacker's source address in every attack's first moments.
pub(crate) type Clients = Vec<(u64, Arc<Client>)>;

/// A running paced client.
pub(crate) struct Paced {
    rate: f64,
    cap: usize,
    /// Clients whose warm-up write was acknowledged.
    warmed: usize,
    pool: Arc<Pool<(u64, Arc<Client>)>>,
    shared: Arc<Mutex<Shared>>,
    window: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    ticker: tokio::task::JoinHandle<()>,
}

impl Paced {
    /// Starts offering `rate` operations a second on keys `key(0..keys)` with `clients`
    /// (values `p{tag}-...`, `tag` unique to the run and attack). First it writes every key
    /// once (recorded: so that no get of this history reads a value written before it began;
    /// an error if one is not acknowledged), then each client writes once (recorded; so that
    /// none connects or opens its session during a window).
    /// `windows`: how many windows will be measured.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn start(
        clients: Clients,
        rate: f64,
        windows: usize,
        history: Arc<History>,
        keys: u64,
        key: fn(u64) -> String,
        seed: u64,
        tag: String,
    ) -> anyhow::Result<Paced> {
        let cap = clients.len();
        let (first_id, first) = clients.first().map(|(id, c)| (*id, c.clone())).context("no clients")?;
        for k in 0..keys {
            if !recorded_put(&history, &first, first_id, &key(k), &format!("p{tag}-init-{k}")).await {
                anyhow::bail!("the paced client's first write of {} was not acknowledged", key(k));
            }
        }
        let warmed = warm_up(&clients, &history, keys, key, &tag).await;
        let pool = Arc::new(Pool::new(clients));
        let shared = Arc::new(Mutex::new(Shared { windows: vec![Tally::default(); windows], ..Shared::default() }));
        let window = Arc::new(AtomicUsize::new(NO_WINDOW));
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let (pool, shared, window, stop) = (pool.clone(), shared.clone(), window.clone(), stop.clone());
            tokio::spawn(async move {
                let mut rng = SplitMix64::new(seed);
                let t0 = Instant::now();
                let max = (PACED_RUN_MAX.as_secs_f64() * rate) as u64;
                let mut issued = 0u64;
                while !stop.load(Ordering::Relaxed) && issued < max {
                    let due = ticks_due(t0.elapsed(), rate).min(max);
                    while issued < due {
                        let n = issued;
                        issued += 1;
                        let scheduled = t0 + Duration::from_secs_f64(n as f64 / rate);
                        let w = window.load(Ordering::Relaxed);
                        let k = key(rng.below(keys));
                        let put = rng.below(2) == 0;
                        {
                            let mut s = shared.lock().unwrap_or_else(PoisonError::into_inner);
                            if let Some(t) = s.windows.get_mut(w) {
                                t.offered += 1;
                            }
                        }
                        let Some((id, client)) = pool.take() else {
                            let mut s = shared.lock().unwrap_or_else(PoisonError::into_inner);
                            if let Some(t) = s.windows.get_mut(w) {
                                t.unsent += 1;
                            }
                            continue;
                        };
                        let (pool, shared, history, tag) = (pool.clone(), shared.clone(), history.clone(), tag.clone());
                        tokio::spawn(async move {
                            let ok = if put {
                                recorded_put(&history, &client, id, &k, &format!("p{tag}-{n}")).await
                            } else {
                                recorded_get(&history, &client, id, &k, ReadConsistency::Linearizable).await.is_some()
                            };
                            let latency = scheduled.elapsed();
                            shared.lock().unwrap_or_else(PoisonError::into_inner).answered(w, ok, latency);
                            pool.give_back((id, client));
                        });
                    }
                    let next = t0 + Duration::from_secs_f64(issued as f64 / rate);
                    tokio::time::sleep_until(next.into()).await;
                }
            })
        };
        Ok(Paced { rate, cap, warmed, pool, shared, window, stop, ticker })
    }

    pub(crate) fn rate(&self) -> f64 {
        self.rate
    }

    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    /// Clients whose warm-up write was acknowledged before the schedule started.
    pub(crate) fn warmed(&self) -> usize {
        self.warmed
    }

    /// Charges the ticks issued from now on to window `w` (`None`: to no window).
    pub(crate) fn set_window(&self, w: Option<usize>) {
        self.window.store(w.unwrap_or(NO_WINDOW), Ordering::Relaxed);
    }

    /// Stops the schedule, waits (up to `within`) for the requests in flight, and returns the
    /// tallies and the clients (for the next attack; a client whose request is still
    /// unanswered then is not returned, and its request counts as failed).
    pub(crate) async fn finish(self, within: Duration) -> (Outcome, Clients) {
        self.set_window(None);
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.ticker.await;
        let deadline = Instant::now() + within;
        while self.pool.idle() < self.cap && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let clients = self.pool.drain();
        // Whatever is still in flight has not been answered: it counts as failed.
        let counted = std::mem::take(&mut *self.shared.lock().unwrap_or_else(PoisonError::into_inner));
        let mut windows = counted.windows;
        for t in &mut windows {
            t.failed = t.offered.saturating_sub(t.unsent + t.ok);
        }
        let outcome =
            Outcome { windows, latencies_unloaded_us: counted.unloaded_us, latencies_attacked_us: counted.attacked_us };
        (outcome, clients)
    }
}

/// One recorded put by every client at once (client `i` of `keys` writes `key(i % keys)`;
/// each bounded by the client's own total timeout: a recorded call is never cancelled, or the
/// history would miss a write that may have been applied); how many were acknowledged.
async fn warm_up(
    clients: &[(u64, Arc<Client>)],
    history: &Arc<History>,
    keys: u64,
    key: fn(u64) -> String,
    tag: &str,
) -> usize {
    let mut set = tokio::task::JoinSet::new();
    for (i, (id, c)) in clients.iter().enumerate() {
        let (id, c, history) = (*id, c.clone(), history.clone());
        let (k, value) = (key(i as u64 % keys.max(1)), format!("p{tag}-warm-{id}"));
        set.spawn(async move { recorded_put(&history, &c, id, &k, &value).await });
    }
    let mut acknowledged = 0;
    while let Some(r) = set.join_next().await {
        if matches!(r, Ok(true)) {
            acknowledged += 1;
        }
    }
    acknowledged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_not_sent_is_lost_goodput() {
        // 150 ticks found every client busy: 85 % of the demand served, not 100 % of what was sent.
        let t = Tally { offered: 1000, unsent: 150, failed: 0, ok: 850 };
        assert!((t.served() - 0.85).abs() < 1e-12);
        assert_eq!(Tally::default().served(), 0.0);
    }

    #[test]
    fn clients_follow_the_rate_and_the_latency_budget() {
        // Little's law: rate × budget requests in flight at the budget's mean latency.
        assert_eq!(outstanding_cap(1000.0), 100);
        assert_eq!(outstanding_cap(716.0), 72);
        assert_eq!(outstanding_cap(1.0), PACED_CLIENTS_MIN);
        assert_eq!(outstanding_cap(1e9), PACED_CLIENTS_MAX);
        assert_eq!(outstanding_cap(f64::NAN), PACED_CLIENTS_MAX);
        assert_eq!(rate_from_capacity(2000.0), 1000.0);
        assert_eq!(rate_from_capacity(0.0), PACED_RATE_MIN);
        assert_eq!(rate_from_capacity(1e9), PACED_RATE_MAX);
    }

    #[test]
    fn the_schedule_is_fixed_whatever_the_timer_does() {
        assert_eq!(ticks_due(Duration::ZERO, 1000.0), 1);
        assert_eq!(ticks_due(Duration::from_micros(999), 1000.0), 1);
        assert_eq!(ticks_due(Duration::from_millis(1), 1000.0), 2);
        // A timer 250 ms late finds every tick of those 250 ms due at once.
        assert_eq!(ticks_due(Duration::from_millis(250), 1000.0), 251);
        assert_eq!(ticks_due(Duration::from_secs(3), 716.0), 2149);
    }

    #[test]
    fn quantiles_are_nearest_rank_in_milliseconds() {
        let v: Vec<u32> = (1..=1000).map(|i| i * 1000).collect();
        assert_eq!(quantile_ms(&v, 0.99), 990.0);
        assert_eq!(quantile_ms(&v, 0.5), 500.0);
        assert_eq!(quantile_ms(&v, 1.0), 1000.0);
        assert_eq!(quantile_ms(&[7_500], 0.99), 7.5);
        assert_eq!(quantile_ms(&[], 0.99), 0.0);
    }

    #[test]
    fn totals_and_shares_split_unloaded_from_attacked_windows() {
        let t = |offered, unsent, ok| Tally { offered, unsent, failed: offered - unsent - ok, ok };
        let o = Outcome {
            windows: vec![t(100, 0, 100), t(100, 20, 70), t(100, 0, 99), t(100, 0, 90), t(100, 0, 100)],
            ..Outcome::default()
        };
        let (u, a) = o.totals();
        assert_eq!(u, Tally { offered: 300, unsent: 0, failed: 1, ok: 299 });
        assert_eq!(a, Tally { offered: 200, unsent: 20, failed: 20, ok: 160 });
        assert_eq!(o.served(), (vec![1.0, 0.99, 1.0], vec![0.7, 0.9]));
        // A phase that stopped early measured its first windows only.
        assert_eq!(o.first_windows(2).served(), (vec![1.0], vec![0.7]));
    }

    /// The paced client against a simulated cluster whose every request takes `latency(t)`
    /// seconds when sent at `t`: the same schedule ([`ticks_due`]) and pool of clients as the
    /// real one, in simulated time; the tally of each window of `window` seconds.
    fn simulate(rate: f64, windows: usize, window: f64, latency: impl Fn(f64) -> f64) -> Vec<Tally> {
        let cap = outstanding_cap(rate);
        let pool = Pool::new(0..cap);
        let mut busy: Vec<(f64, usize)> = Vec::new();
        let mut out = vec![Tally::default(); windows];
        let end = windows as f64 * window;
        let total = ticks_due(Duration::from_secs_f64(end), rate) - 1;
        for n in 0..total {
            let t = n as f64 / rate;
            // Requests answered by now give their client back.
            busy.retain(|&(done, c)| {
                if done <= t {
                    pool.give_back(c);
                }
                done > t
            });
            let w = &mut out[((t / window) as usize).min(windows - 1)];
            w.offered += 1;
            match pool.take() {
                Some(c) => {
                    w.ok += 1;
                    busy.push((t + latency(t), c));
                }
                None => w.unsent += 1,
            }
        }
        out
    }

    #[test]
    fn a_stall_longer_than_the_budget_loses_its_ticks() {
        let budget = PACED_LATENCY_BUDGET.as_secs_f64();
        // Steady latency under the budget: every tick is sent.
        let steady = simulate(1000.0, 3, 1.0, |_| 0.8 * budget);
        assert!(steady.iter().all(|w| w.unsent == 0 && w.served() == 1.0), "{steady:?}");
        // The cluster holds every request sent in [1.2 s, 1.5 s) until 1.5 s: a 300 ms stall in
        // the second window. The clients are all busy from 1.2 s + budget to 1.5 s, so about
        // (300 ms - budget) × rate ticks are lost: 20 % of that window.
        let stalled = simulate(1000.0, 3, 1.0, |t| if (1.2..1.5).contains(&t) { 1.5 - t } else { 0.002 });
        let lost = stalled[1].unsent as f64 / stalled[1].offered as f64;
        assert!((lost - (0.3 - budget)).abs() < 0.01, "{stalled:?}");
        assert!(stalled[1].served() < super::super::GOODPUT_MIN, "{stalled:?}");
        assert_eq!((stalled[0].unsent, stalled[2].unsent), (0, 0));
    }
}
