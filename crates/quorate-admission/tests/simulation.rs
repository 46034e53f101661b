//! Deterministic, seeded simulations of a node behind `Admission`: virtual time, no sleeps.
//!
//! The server here is a model — a FIFO queue in front of a fixed service rate, so latency
//! grows with the work in flight — not the Quorate node. It shows the shape of the behaviour
//! (goodput holds, latency stays bounded, a light client gets through a flood); the real
//! overload test runs against the node.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use quorate_admission::{Admission, Class, Config, Nanos, Outcome, Permit, Principal, RequestInfo};

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;

/// SplitMix64, the test's own seeded generator.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Exponential inter-arrival time for `rate_per_sec` (a Poisson process).
    fn exponential_ns(&mut self, rate_per_sec: f64) -> u64 {
        let u = ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        (-u.ln() / rate_per_sec * SEC as f64) as u64
    }
}

/// A server that completes `capacity_per_sec` requests per second in FIFO order, plus a
/// fixed `base_latency`: a request's latency is its wait behind everything admitted before it.
struct Server {
    service_ns: u64,
    base_latency_ns: u64,
    free_at_ns: u64,
}

impl Server {
    fn new(capacity_per_sec: u64, base_latency_ns: u64) -> Server {
        Server { service_ns: SEC / capacity_per_sec, base_latency_ns, free_at_ns: 0 }
    }

    /// Accepts a request at `now_ns`; returns when it completes.
    fn accept(&mut self, now_ns: u64) -> u64 {
        let start = self.free_at_ns.max(now_ns);
        self.free_at_ns = start + self.service_ns;
        self.free_at_ns + self.base_latency_ns
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A client (worker) sends; `attempt` 0 is a first attempt.
    Send { client: usize, attempt: u32 },
    /// The server finishes the request in `slot`.
    Done { slot: usize },
}

/// Time-ordered events; `seq` breaks ties in insertion order, so a run replays exactly.
#[derive(Default)]
struct Events {
    heap: BinaryHeap<Reverse<(u64, u64, Event)>>,
    seq: u64,
}

impl Events {
    fn push(&mut self, at_ns: u64, event: Event) {
        self.seq += 1;
        self.heap.push(Reverse((at_ns, self.seq, event)));
    }

    fn pop(&mut self) -> Option<(u64, Event)> {
        self.heap.pop().map(|Reverse((at, _, event))| (at, event))
    }
}

/// In-flight requests: the permit (None with admission off), admission time, the client.
#[derive(Default)]
struct Slots {
    slots: Vec<Option<(Option<Permit>, u64, usize)>>,
    free: Vec<usize>,
}

impl Slots {
    fn insert(&mut self, value: (Option<Permit>, u64, usize)) -> usize {
        match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(value);
                slot
            }
            None => {
                self.slots.push(Some(value));
                self.slots.len() - 1
            }
        }
    }

    fn remove(&mut self, slot: usize) -> (Option<Permit>, u64, usize) {
        self.free.push(slot);
        self.slots[slot].take().expect("a slot completes once")
    }
}

// ---------------------------------------------------------------------------------------------
// Goodput versus offered load
// ---------------------------------------------------------------------------------------------

const CAPACITY_PER_SEC: u64 = 1000;
const BASE_LATENCY_NS: u64 = 5 * MS;
const LATENCY_TARGET_MS: u64 = 25;
/// A client gives up on a request after this long; a later answer is wasted work.
const CLIENT_TIMEOUT_NS: u64 = 1000 * MS;
const RUN_NS: u64 = 30 * SEC;
/// Measurements start after the limit has had time to settle.
const WARMUP_NS: u64 = 10 * SEC;
const PRINCIPALS_COUNT: usize = 64;
const ATTEMPTS_MAX: u32 = 3;

#[derive(Debug)]
struct LoadRun {
    /// Requests admitted (and so completed) per second of the measured window.
    accepted_per_sec: f64,
    /// Requests completed within the client timeout per second of the measured window.
    goodput_per_sec: f64,
    p99_latency_ms: f64,
    /// Latency of the last request completed in the run.
    last_latency_ms: f64,
    /// Latency of the first request completed in the measured window.
    first_latency_ms: f64,
}

fn goodput_config() -> Config {
    Config {
        concurrency_count_min: 4,
        concurrency_count_initial: 16,
        concurrency_count_max: 512,
        latency_target_ms: LATENCY_TARGET_MS,
        principals_tracked_max: 1024,
        principal_rate_per_sec: 1_000_000,
        principal_burst_count: 1_000_000,
        ..Config::default()
    }
}

/// Open-loop Poisson arrivals at `load_percent` of capacity from 64 principals; a refused
/// request is retried (marked as a retry, after `retry_after`) up to `ATTEMPTS_MAX` attempts.
fn run_load(load_percent: u64, admission_on: bool, seed: u64) -> LoadRun {
    let mut rng = Rng(seed);
    let mut admission = Admission::new(goodput_config(), seed).unwrap();
    let mut server = Server::new(CAPACITY_PER_SEC, BASE_LATENCY_NS);
    let mut events = Events::default();
    let mut slots = Slots::default();
    let rate_per_sec = (CAPACITY_PER_SEC * load_percent) as f64 / 100.0;
    // Client `i` is one request: its principal is i % PRINCIPALS_COUNT.
    let mut next_client = 0usize;
    events.push(rng.exponential_ns(rate_per_sec), Event::Send { client: next_client, attempt: 0 });
    let (mut completed_count, mut good_count) = (0u64, 0u64);
    let mut latencies_ms = Vec::new();
    let (mut first_latency_ms, mut last_latency_ms) = (None, 0.0);
    while let Some((now_ns, event)) = events.pop() {
        if now_ns > RUN_NS {
            break;
        }
        match event {
            Event::Send { client, attempt } => {
                if attempt == 0 {
                    next_client += 1;
                    events.push(
                        now_ns + rng.exponential_ns(rate_per_sec),
                        Event::Send { client: next_client, attempt: 0 },
                    );
                }
                let request = RequestInfo {
                    class: Class::ClientWrite,
                    principal: Principal((client % PRINCIPALS_COUNT) as u64),
                    bytes: 256,
                    is_retry: attempt > 0,
                };
                let permit = if admission_on {
                    match admission.try_admit(&request, Nanos(now_ns)) {
                        Ok(permit) => Some(permit),
                        Err(refused) => {
                            if attempt + 1 < ATTEMPTS_MAX {
                                let retry_at = now_ns + refused.retry_after.as_nanos() as u64;
                                events.push(retry_at, Event::Send { client, attempt: attempt + 1 });
                            }
                            continue;
                        }
                    }
                } else {
                    None
                };
                let done_ns = server.accept(now_ns);
                let slot = slots.insert((permit, now_ns, client));
                events.push(done_ns, Event::Done { slot });
            }
            Event::Done { slot } => {
                let (permit, admitted_ns, _) = slots.remove(slot);
                let latency_ns = now_ns - admitted_ns;
                if let Some(permit) = permit {
                    let outcome = if latency_ns > CLIENT_TIMEOUT_NS { Outcome::Dropped } else { Outcome::Success };
                    admission.complete(permit, outcome, Nanos(now_ns));
                }
                let latency_ms = latency_ns as f64 / MS as f64;
                last_latency_ms = latency_ms;
                if now_ns >= WARMUP_NS {
                    first_latency_ms.get_or_insert(latency_ms);
                    completed_count += 1;
                    good_count += u64::from(latency_ns <= CLIENT_TIMEOUT_NS);
                    latencies_ms.push(latency_ms);
                }
            }
        }
    }
    latencies_ms.sort_by(f64::total_cmp);
    let window_sec = (RUN_NS - WARMUP_NS) as f64 / SEC as f64;
    LoadRun {
        accepted_per_sec: completed_count as f64 / window_sec,
        goodput_per_sec: good_count as f64 / window_sec,
        p99_latency_ms: latencies_ms.get(latencies_ms.len() * 99 / 100).copied().unwrap_or(0.0),
        last_latency_ms,
        first_latency_ms: first_latency_ms.unwrap_or(0.0),
    }
}

#[test]
fn goodput_holds_under_overload_with_admission_and_collapses_without() {
    const LOADS_PERCENT: [u64; 7] = [50, 100, 150, 200, 300, 400, 500];
    let on: Vec<LoadRun> = LOADS_PERCENT.iter().map(|&load| run_load(load, true, 0xA11CE + load)).collect();
    let off: Vec<LoadRun> = LOADS_PERCENT.iter().map(|&load| run_load(load, false, 0xA11CE + load)).collect();
    println!("capacity {CAPACITY_PER_SEC}/s, base latency 5 ms, target {LATENCY_TARGET_MS} ms, timeout 1 s");
    println!("load   | on: accepted/s goodput/s p99 ms | off: accepted/s goodput/s p99 ms  first→last ms");
    for ((load, on), off) in LOADS_PERCENT.iter().zip(&on).zip(&off) {
        println!(
            "{:>4}%  | {:>8.0} {:>9.0} {:>7.1}      | {:>8.0} {:>9.0} {:>9.0}  {:.0}→{:.0}",
            load,
            on.accepted_per_sec,
            on.goodput_per_sec,
            on.p99_latency_ms,
            off.accepted_per_sec,
            off.goodput_per_sec,
            off.p99_latency_ms,
            off.first_latency_ms,
            off.last_latency_ms
        );
    }
    let peak = on.iter().map(|run| run.goodput_per_sec).fold(0.0, f64::max);
    assert!(peak >= 0.9 * CAPACITY_PER_SEC as f64, "peak goodput {peak}");
    for (load, run) in LOADS_PERCENT.iter().zip(&on) {
        if *load >= 100 {
            assert!(run.goodput_per_sec >= 0.9 * peak, "admission on at {load}%: {run:?}, peak {peak}");
        }
        // Bounded: a few times the target, whatever the offered load.
        assert!(run.p99_latency_ms <= 4.0 * LATENCY_TARGET_MS as f64, "admission on at {load}%: {run:?}");
    }
    for (load, (on, off)) in LOADS_PERCENT.iter().zip(on.iter().zip(&off)) {
        if *load >= 150 {
            // Without admission every request is accepted and the queue grows for the whole
            // run: latency keeps growing, and past the client timeout the work is wasted.
            assert!(off.last_latency_ms > 2.0 * off.first_latency_ms, "admission off at {load}%: {off:?}");
            assert!(off.p99_latency_ms > 50.0 * on.p99_latency_ms, "at {load}%: on {on:?}, off {off:?}");
            assert!(off.goodput_per_sec < 0.5 * on.goodput_per_sec, "at {load}%: on {on:?}, off {off:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fairness and consensus under a flood
// ---------------------------------------------------------------------------------------------

const HEAVY_PRINCIPALS_COUNT: usize = 10;
const HEAVY_WORKERS_COUNT: usize = 25;
/// A refused heavy worker tries again after this, ignoring `retry_after` (a misbehaving
/// client). With about 100 of the 250 heavy workers in flight, the other 150 offer about
/// 150 000 requests per second: over 100 × capacity.
const HEAVY_RESEND_NS: u64 = MS;
/// The light principal sends one request 100 ms after the previous one completed and
/// honours `retry_after`.
const LIGHT_THINK_NS: u64 = 100 * MS;
const FLOOD_RUN_NS: u64 = 10 * SEC;
const PEERS_COUNT: usize = 4;
const HEARTBEAT_NS: u64 = 10 * MS;

#[test]
fn flood_never_refuses_consensus_and_light_principal_gets_through() {
    let config = Config {
        concurrency_count_min: 4,
        concurrency_count_initial: 32,
        concurrency_count_max: 512,
        latency_target_ms: 100,
        principals_tracked_max: 1024,
        principal_rate_per_sec: 1_000_000,
        principal_burst_count: 1_000_000,
        ..Config::default()
    };
    let mut admission = Admission::new(config, 99).unwrap();
    let mut server = Server::new(CAPACITY_PER_SEC, 50 * MS);
    let mut events = Events::default();
    let mut slots = Slots::default();
    // Clients: heavy workers first, then the light one, then the peers (consensus).
    let heavy_count = HEAVY_PRINCIPALS_COUNT * HEAVY_WORKERS_COUNT;
    let light = heavy_count;
    let peers = light + 1..light + 1 + PEERS_COUNT;
    for client in 0..=light + PEERS_COUNT {
        events.push(client as u64 * 1000, Event::Send { client, attempt: 0 });
    }
    let (mut light_attempt_count, mut light_admitted_count) = (0u64, 0u64);
    let (mut heavy_attempt_count, mut heavy_admitted_count) = (0u64, 0u64);
    let mut consensus_count = 0u64;
    let mut light_latency_max_ns = 0u64;
    while let Some((now_ns, event)) = events.pop() {
        if now_ns > FLOOD_RUN_NS {
            break;
        }
        match event {
            Event::Send { client, attempt } if peers.contains(&client) => {
                // A heartbeat or append from a peer: admitted regardless of client load, and
                // handled outside the client queue (the server model is client work only).
                let request = RequestInfo {
                    class: Class::Consensus,
                    principal: Principal(1_000_000 + client as u64),
                    bytes: 64 * 1024,
                    is_retry: false,
                };
                let permit = admission.try_admit(&request, Nanos(now_ns)).expect("consensus is never refused");
                consensus_count += 1;
                admission.complete(permit, Outcome::Success, Nanos(now_ns + MS));
                events.push(now_ns + HEARTBEAT_NS, Event::Send { client, attempt });
            }
            Event::Send { client, attempt } => {
                let is_light = client == light;
                let principal = if is_light { 0 } else { 1 + (client / HEAVY_WORKERS_COUNT) as u64 };
                let request = RequestInfo {
                    class: Class::ClientWrite,
                    principal: Principal(principal),
                    bytes: 128,
                    is_retry: attempt > 0,
                };
                if is_light {
                    light_attempt_count += 1;
                } else {
                    heavy_attempt_count += 1;
                }
                match admission.try_admit(&request, Nanos(now_ns)) {
                    Ok(permit) => {
                        if is_light {
                            light_admitted_count += 1;
                        } else {
                            heavy_admitted_count += 1;
                        }
                        let done_ns = server.accept(now_ns);
                        let slot = slots.insert((Some(permit), now_ns, client));
                        events.push(done_ns, Event::Done { slot });
                    }
                    Err(refused) if is_light => {
                        events.push(now_ns + refused.retry_after.as_nanos() as u64, Event::Send { client, attempt: 1 });
                    }
                    Err(_) => events.push(now_ns + HEAVY_RESEND_NS, Event::Send { client, attempt: 0 }),
                }
            }
            Event::Done { slot } => {
                let (permit, admitted_ns, client) = slots.remove(slot);
                admission.complete(permit.expect("admission is on"), Outcome::Success, Nanos(now_ns));
                // Closed loop: heavy workers send again at once, the light one after thinking.
                if client == light {
                    light_latency_max_ns = light_latency_max_ns.max(now_ns - admitted_ns);
                    events.push(now_ns + LIGHT_THINK_NS, Event::Send { client, attempt: 0 });
                } else {
                    events.push(now_ns, Event::Send { client, attempt: 0 });
                }
            }
        }
    }
    let light_ratio = light_admitted_count as f64 / light_attempt_count as f64;
    let heavy_ratio = heavy_admitted_count as f64 / heavy_attempt_count as f64;
    println!(
        "light: {light_admitted_count}/{light_attempt_count} admitted ({:.1}%), latency max {} ms; heavy: \
         {heavy_admitted_count}/{heavy_attempt_count} ({:.2}%); consensus admitted {consensus_count}; final limit {}",
        light_ratio * 100.0,
        light_latency_max_ns / MS,
        heavy_ratio * 100.0,
        admission.concurrency_limit_count()
    );
    let offered_per_sec = heavy_attempt_count * SEC / FLOOD_RUN_NS;
    assert!(offered_per_sec >= 100 * CAPACITY_PER_SEC, "the heavy load is a flood: {offered_per_sec}/s");
    assert!(light_attempt_count >= 40);
    assert!(light_ratio >= 0.9, "light principal admitted {:.1}%", light_ratio * 100.0);
    assert_eq!(consensus_count, (FLOOD_RUN_NS / HEARTBEAT_NS) * PEERS_COUNT as u64);
}

// ---------------------------------------------------------------------------------------------
// The node's overload workload: paced clients of one heavy principal, one light principal, and
// a server that commits in groups (its throughput rises with concurrency)
// ---------------------------------------------------------------------------------------------

/// Every batch costs one fsync…
const GC_FSYNC_NS: u64 = 2 * MS;
/// …plus this per request: at most 10 000 requests per second, reached only with large
/// batches, so throughput keeps rising with concurrency (as on the real node).
const GC_REQUEST_NS: u64 = 100_000;
const GC_BATCH_MAX: usize = 4096;
/// Heavy clients, all of one principal, each one request at a time at its share of the rate.
const GC_CLIENTS: usize = 1000;
/// The light principal's one client sends every 50 ms (20 per second).
const GC_LIGHT_INTERVAL_NS: u64 = 50 * MS;
const GC_RUN_NS: u64 = 12 * SEC;
const GC_WARMUP_NS: u64 = 2 * SEC;
/// Closed-loop writers of the capacity measurement (as in the node's overload test).
const GC_CALIBRATION_WORKERS: usize = 128;
const GC_LATENCY_TARGET_MS: u64 = 100;

/// The node's defaults (`[admission]` in quorate-config).
fn node_like_config() -> Config {
    Config {
        concurrency_count_min: 16,
        concurrency_count_initial: 256,
        concurrency_count_max: 1024,
        latency_target_ms: GC_LATENCY_TARGET_MS,
        principal_rate_per_sec: 100_000,
        principal_burst_count: 10_000,
        retry_after_ms_max: 5_000,
        ..Config::default()
    }
}

#[derive(Debug, Default)]
struct PacedRun {
    goodput_per_sec: f64,
    refused_count: u64,
    p99_latency_ms: f64,
    light_ok_count: u64,
    light_total_count: u64,
    final_limit: u32,
}

/// A group-commit server: requests queue FIFO; when idle it takes everything queued (up to
/// [`GC_BATCH_MAX`]) as one batch, done after one fsync plus the per-request cost.
#[derive(Default)]
struct GroupCommit {
    queue: std::collections::VecDeque<usize>,
    batch: Vec<usize>,
}

impl GroupCommit {
    /// Starts a batch if idle and work is queued; returns when it will be done.
    fn start(&mut self, now_ns: u64) -> Option<u64> {
        if !self.batch.is_empty() || self.queue.is_empty() {
            return None;
        }
        let n = self.queue.len().min(GC_BATCH_MAX);
        self.batch.extend(self.queue.drain(..n));
        Some(now_ns + GC_FSYNC_NS + n as u64 * GC_REQUEST_NS)
    }
}

/// Offers `offered_per_sec` from [`GC_CLIENTS`] paced heavy clients plus the light client (or,
/// with `closed_loop`, runs [`GC_CALIBRATION_WORKERS`] closed-loop writers and no light
/// client). A refused client waits at least `retry_after`; slots it misses are not made up.
fn run_paced(offered_per_sec: f64, closed_loop: bool, seed: u64) -> PacedRun {
    let mut admission = Admission::new(node_like_config(), seed).unwrap();
    let mut server = GroupCommit::default();
    let mut events = Events::default();
    let heavy_count = if closed_loop { GC_CALIBRATION_WORKERS } else { GC_CLIENTS };
    let light = heavy_count;
    let interval_ns = if closed_loop { 0 } else { (heavy_count as f64 * SEC as f64 / offered_per_sec) as u64 };
    let interval_of = |client: usize| if client == light { GC_LIGHT_INTERVAL_NS } else { interval_ns };
    let clients = if closed_loop { heavy_count } else { heavy_count + 1 };
    let mut next_ns: Vec<u64> = (0..clients).map(|c| interval_of(c) * c as u64 / clients as u64).collect();
    // Per client (one request at a time): its permit and when it was admitted.
    let mut in_flight: Vec<Option<(Permit, u64)>> = (0..clients).map(|_| None).collect();
    for (client, at) in next_ns.iter().enumerate() {
        events.push(*at, Event::Send { client, attempt: 0 });
    }
    let mut run = PacedRun::default();
    let mut good_count = 0u64;
    let mut latencies_ns = Vec::new();
    // After an answer at `now_ns`, the client's next slot (missed slots are not made up).
    let advance = |next: &mut u64, now_ns: u64, interval: u64, floor_ns: u64| {
        *next += interval;
        *next = (*next).max(floor_ns);
        if *next + interval < now_ns {
            *next = now_ns;
        }
        *next = (*next).max(now_ns);
    };
    while let Some((now_ns, event)) = events.pop() {
        if now_ns > GC_RUN_NS {
            break;
        }
        match event {
            Event::Send { client, .. } => {
                let is_light = client == light && !closed_loop;
                let request = RequestInfo {
                    class: Class::ClientWrite,
                    principal: Principal(if is_light { 2 } else { 1 }),
                    bytes: 164,
                    is_retry: false,
                };
                if is_light && now_ns >= GC_WARMUP_NS {
                    run.light_total_count += 1;
                }
                match admission.try_admit(&request, Nanos(now_ns)) {
                    Ok(permit) => {
                        in_flight[client] = Some((permit, now_ns));
                        server.queue.push_back(client);
                        if let Some(done_ns) = server.start(now_ns) {
                            events.push(done_ns, Event::Done { slot: 0 });
                        }
                    }
                    Err(refused) => {
                        if now_ns >= GC_WARMUP_NS {
                            run.refused_count += 1;
                        }
                        let floor = now_ns + refused.retry_after.as_nanos() as u64;
                        advance(&mut next_ns[client], now_ns, interval_of(client), floor);
                        events.push(next_ns[client], Event::Send { client, attempt: 1 });
                    }
                }
            }
            Event::Done { .. } => {
                for client in std::mem::take(&mut server.batch) {
                    let (permit, admitted_ns) = in_flight[client].take().expect("one request per client");
                    admission.complete(permit, Outcome::Success, Nanos(now_ns));
                    if admitted_ns >= GC_WARMUP_NS {
                        if client == light && !closed_loop {
                            run.light_ok_count += 1;
                        } else {
                            good_count += 1;
                            latencies_ns.push(now_ns - admitted_ns);
                        }
                    }
                    advance(&mut next_ns[client], now_ns, interval_of(client), now_ns);
                    events.push(next_ns[client], Event::Send { client, attempt: 0 });
                }
                if let Some(done_ns) = server.start(now_ns) {
                    events.push(done_ns, Event::Done { slot: 0 });
                }
            }
        }
    }
    latencies_ns.sort_unstable();
    run.goodput_per_sec = good_count as f64 * SEC as f64 / (GC_RUN_NS - GC_WARMUP_NS) as f64;
    run.p99_latency_ms = latencies_ns.get(latencies_ns.len() * 99 / 100).map_or(0.0, |ns| *ns as f64 / MS as f64);
    run.final_limit = admission.concurrency_limit_count();
    run
}

#[test]
fn one_heavy_principal_keeps_goodput_at_1x_2x_5x_and_the_light_one_gets_through() {
    let capacity = run_paced(0.0, true, 0xCA11).goodput_per_sec;
    println!("group commit (fsync 2 ms + 0.1 ms per request), capacity at 128 closed-loop writers: {capacity:.0}/s");
    assert!(capacity > 7000.0 && capacity < 10_000.0, "the model's capacity: {capacity}");
    for multiple in [1.0, 2.0, 5.0] {
        let run = run_paced(multiple * capacity, false, 0xBEEF + multiple as u64);
        let light = run.light_ok_count as f64 / run.light_total_count.max(1) as f64;
        println!(
            "{multiple}x: goodput {:.0}/s ({:.0}% of capacity), refused {}, p99 {:.1} ms, light {}/{}, limit {}",
            run.goodput_per_sec,
            100.0 * run.goodput_per_sec / capacity,
            run.refused_count,
            run.p99_latency_ms,
            run.light_ok_count,
            run.light_total_count,
            run.final_limit
        );
        assert!(run.goodput_per_sec >= 0.9 * capacity, "{multiple}x: {run:?}, capacity {capacity}");
        assert!(run.light_total_count >= 50, "{multiple}x: the light client ran: {run:?}");
        assert!(light >= 0.9, "{multiple}x: light principal starved: {run:?}");
        assert!(run.p99_latency_ms <= 3.0 * GC_LATENCY_TARGET_MS as f64, "{multiple}x: {run:?}");
    }
}
