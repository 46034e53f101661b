//! The admission decision through the public API.

use std::time::Duration;

use quorate_admission::{Admission, Class, Config, Nanos, Outcome, Permit, Principal, Reason, RequestInfo, Signals};

const MIB: u64 = 1 << 20;

fn request(class: Class, principal: u64) -> RequestInfo {
    RequestInfo { class, principal: Principal(principal), bytes: 100, is_retry: false }
}

fn write(principal: u64) -> RequestInfo {
    request(Class::ClientWrite, principal)
}

/// A limiter pinned at 8 with a reserve of 2, so concurrency checks are exact.
fn fixed_limit_config() -> Config {
    Config {
        concurrency_count_min: 8,
        concurrency_count_initial: 8,
        concurrency_count_max: 8,
        principals_tracked_max: 64,
        ..Config::default()
    }
}

fn reason(admission: &mut Admission, request: &RequestInfo, now: Nanos) -> Reason {
    admission.try_admit(request, now).expect_err("refused").reason
}

#[test]
fn consensus_is_admitted_when_everything_is_red() {
    let mut a = Admission::new(fixed_limit_config(), 1).unwrap();
    let now = Nanos::from_secs(1);
    let mut permits: Vec<Permit> = (0..8).map(|i| a.try_admit(&write(i), now).unwrap()).collect();
    assert_eq!(reason(&mut a, &write(100), now), Reason::ConcurrencyLimit);
    a.set_signals(Signals {
        uncommitted_bytes: u64::MAX,
        apply_lag_entries: u64::MAX,
        proposal_queue_count: u64::MAX,
        peer_in_flight_bytes_max: u64::MAX,
        disk_free_bytes: 0,
        fsync_latency: Duration::from_secs(60),
    });
    for class in Class::ALL.into_iter().skip(1) {
        assert!(a.try_admit(&request(class, 100), now).is_err(), "{class} is refused");
    }
    for i in 0..10_000 {
        let heartbeat = RequestInfo { bytes: 10 * MIB, ..request(Class::Consensus, i % 5) };
        permits.push(a.try_admit(&heartbeat, now).expect("consensus is never refused"));
    }
    assert_eq!(a.in_flight_count(), 8, "consensus is not counted against client budgets");
    for permit in permits {
        a.complete(permit, Outcome::Success, now);
    }
    assert_eq!((a.in_flight_count(), a.in_flight_bytes()), (0, 0));
    assert_eq!(a.stats().admitted_count, [10_000, 8, 0, 0]);
}

#[test]
fn disk_refusal_clears_itself_above_floor_plus_hysteresis() {
    let config = Config { disk_free_bytes_min: 100 * MIB, disk_free_hysteresis_bytes: 20 * MIB, ..Config::default() };
    let mut a = Admission::new(config, 2).unwrap();
    let now = Nanos::from_secs(1);
    let set_free = |a: &mut Admission, free: u64| a.set_signals(Signals { disk_free_bytes: free, ..Signals::HEALTHY });

    set_free(&mut a, 99 * MIB);
    let refusal = a.try_admit(&write(1), now).unwrap_err();
    assert_eq!(refusal.reason, Reason::DiskSpace);
    // Disk space does not come back soon: a hint near the maximum, still jittered.
    let ms_max = a.config().retry_after_ms_max;
    assert!(refusal.retry_after >= Duration::from_millis(ms_max / 2));
    assert!(refusal.retry_after <= Duration::from_millis(ms_max));
    assert!(a.is_refusing_for_disk());
    // Reads do not consume disk: still admitted.
    let read = a.try_admit(&request(Class::ClientRead, 1), now).unwrap();
    a.complete(read, Outcome::Success, now);

    // Back above the floor but inside the hysteresis band: still refusing (no flapping).
    set_free(&mut a, 110 * MIB);
    assert_eq!(reason(&mut a, &write(1), now), Reason::DiskSpace);
    // Above floor + hysteresis: writes resume with no manual disarm.
    set_free(&mut a, 120 * MIB);
    assert!(!a.is_refusing_for_disk());
    let permit = a.try_admit(&write(1), now).unwrap();
    a.complete(permit, Outcome::Success, now);
    // And inside the band coming from above, writes pass: the band only delays recovery.
    set_free(&mut a, 101 * MIB);
    let permit = a.try_admit(&write(1), now).unwrap();
    a.complete(permit, Outcome::Success, now);
    // A write that would itself cross the floor is refused without raising the alarm.
    let big = RequestInfo { bytes: 2 * MIB, ..write(1) };
    assert_eq!(reason(&mut a, &big, now), Reason::DiskSpace);
    assert!(!a.is_refusing_for_disk());
}

#[test]
fn each_signal_refuses_writes_with_its_reason() {
    let config = Config::default();
    let cases: [(Signals, Reason); 5] = [
        (Signals { uncommitted_bytes: config.uncommitted_bytes_max, ..Signals::HEALTHY }, Reason::UncommittedBytes),
        (Signals { apply_lag_entries: config.apply_lag_entries_max, ..Signals::HEALTHY }, Reason::ApplyLag),
        (Signals { proposal_queue_count: config.proposal_queue_count_max, ..Signals::HEALTHY }, Reason::QueueFull),
        (
            Signals { peer_in_flight_bytes_max: config.peer_in_flight_bytes_max, ..Signals::HEALTHY },
            Reason::PeerBacklog,
        ),
        (
            Signals { fsync_latency: Duration::from_millis(config.fsync_latency_ms_max), ..Signals::HEALTHY },
            Reason::FsyncLatency,
        ),
    ];
    for (signals, expected) in cases {
        let mut a = Admission::new(config.clone(), 3).unwrap();
        a.set_signals(signals);
        assert_eq!(reason(&mut a, &write(1), Nanos::ZERO), expected);
        // Only apply lag concerns reads.
        let read = a.try_admit(&request(Class::ClientRead, 1), Nanos::ZERO);
        assert_eq!(read.is_err(), expected == Reason::ApplyLag, "{expected:?}");
        a.set_signals(Signals::HEALTHY);
        let permit = a.try_admit(&write(1), Nanos::ZERO).expect("clears as soon as the signal does");
        a.complete(permit, Outcome::Success, Nanos::ZERO);
    }
}

#[test]
fn nearing_a_limit_sheds_background_first_and_counts_the_request_itself() {
    let config = Config { uncommitted_bytes_max: 1000, background_signal_percent: 50, ..Config::default() };
    let mut a = Admission::new(config, 4).unwrap();
    a.set_signals(Signals { uncommitted_bytes: 600, ..Signals::HEALTHY });
    assert_eq!(reason(&mut a, &request(Class::Background, 1), Nanos::ZERO), Reason::UncommittedBytes);
    let permit = a.try_admit(&write(1), Nanos::ZERO).unwrap();
    a.complete(permit, Outcome::Success, Nanos::ZERO);
    // 600 + 500 bytes would pass 1000: refused before it is proposed.
    let big = RequestInfo { bytes: 500, ..write(1) };
    assert_eq!(reason(&mut a, &big, Nanos::ZERO), Reason::UncommittedBytes);
}

#[test]
fn fair_share_and_light_reserve() {
    let mut a = Admission::new(fixed_limit_config(), 5).unwrap();
    let now = Nanos::ZERO;
    // Heavy principal 1 alone: it can take all but the 2 reserved slots.
    let mut permits: Vec<Permit> = (0..6).map(|_| a.try_admit(&write(1), now).unwrap()).collect();
    assert_eq!(reason(&mut a, &write(1), now), Reason::ConcurrencyLimit);
    // Light principals take the reserve.
    permits.push(a.try_admit(&write(2), now).unwrap());
    permits.push(a.try_admit(&write(3), now).unwrap());
    assert_eq!(reason(&mut a, &write(4), now), Reason::ConcurrencyLimit);
    // Principal 1 is now over its share of 8 / 3 active (at least fair_share_count_min = 2).
    assert_eq!(reason(&mut a, &write(1), now), Reason::FairShare { principal: Principal(1) });
    for permit in permits {
        a.complete(permit, Outcome::Cancelled, now);
    }
    assert_eq!(a.in_flight_count(), 0);
}

#[test]
fn background_uses_only_part_of_the_limit() {
    let config = Config { background_concurrency_percent: 25, ..fixed_limit_config() };
    let mut a = Admission::new(config, 6).unwrap();
    let first = a.try_admit(&request(Class::Background, 1), Nanos::ZERO).unwrap();
    let second = a.try_admit(&request(Class::Background, 2), Nanos::ZERO).unwrap();
    assert_eq!(reason(&mut a, &request(Class::Background, 3), Nanos::ZERO), Reason::ConcurrencyLimit);
    assert_eq!(a.in_flight_class_count(Class::Background), 2);
    a.complete(first, Outcome::Success, Nanos::ZERO);
    a.complete(second, Outcome::Success, Nanos::ZERO);
}

#[test]
fn rate_limit_retry_after_is_the_refill_time_jittered_upwards() {
    let config =
        Config { principal_rate_per_sec: 10, principal_burst_count: 2, retry_jitter_percent: 50, ..Config::default() };
    let mut a = Admission::new(config, 7).unwrap();
    let now = Nanos::from_secs(5);
    for _ in 0..2 {
        let permit = a.try_admit(&write(1), now).unwrap();
        a.complete(permit, Outcome::Success, now);
    }
    let mut hints = Vec::new();
    for _ in 0..50 {
        let refusal = a.try_admit(&write(1), now).unwrap_err();
        assert_eq!(refusal.reason, Reason::RateLimited { principal: Principal(1) });
        hints.push(refusal.retry_after);
    }
    assert!(hints.iter().all(|h| *h >= Duration::from_millis(100) && *h <= Duration::from_millis(150)));
    assert!(hints.iter().any(|h| *h != hints[0]), "jittered");
    // Another principal is not affected; the limited one is admitted once the token is back.
    let permit = a.try_admit(&write(2), now).unwrap();
    a.complete(permit, Outcome::Success, now);
    let permit = a.try_admit(&write(1), now + hints[0]).unwrap();
    a.complete(permit, Outcome::Success, now + hints[0]);
}

#[test]
fn retries_are_limited_to_a_fraction_of_successes_plus_a_floor() {
    let config = Config { retry_ratio_percent: 10, retry_floor_per_sec: 1, retry_burst_count: 3, ..Config::default() };
    let mut a = Admission::new(config, 8).unwrap();
    let now = Nanos::from_secs(1);
    let retry = RequestInfo { is_retry: true, ..write(1) };
    for _ in 0..3 {
        let permit = a.try_admit(&retry, now).unwrap();
        a.complete(permit, Outcome::Failed, now);
    }
    let refusal = a.try_admit(&retry, now).unwrap_err();
    assert_eq!(refusal.reason, Reason::RetryBudget { principal: Principal(1) });
    assert!(refusal.retry_after >= Duration::from_secs(1), "the floor refills one retry per second");
    // First attempts are unaffected, and ten successes earn one retry.
    for _ in 0..10 {
        let permit = a.try_admit(&write(1), now).unwrap();
        a.complete(permit, Outcome::Success, now);
    }
    let permit = a.try_admit(&retry, now).unwrap();
    a.complete(permit, Outcome::Failed, now);
    assert!(a.try_admit(&retry, now).is_err());
    // The floor: one more after a second.
    let permit = a.try_admit(&retry, now + Duration::from_secs(1)).unwrap();
    a.complete(permit, Outcome::Failed, now);
}

#[test]
fn request_too_large_and_in_flight_bytes() {
    let config = Config { in_flight_bytes_max: 1000, ..Config::default() };
    let mut a = Admission::new(config, 9).unwrap();
    let huge = RequestInfo { bytes: 1001, ..write(1) };
    let refusal = a.try_admit(&huge, Nanos::ZERO).unwrap_err();
    assert_eq!(refusal.reason, Reason::RequestTooLarge);
    assert!(!refusal.reason.is_retryable());
    let half = RequestInfo { bytes: 600, ..write(1) };
    let permit = a.try_admit(&half, Nanos::ZERO).unwrap();
    assert_eq!(reason(&mut a, &RequestInfo { principal: Principal(2), ..half }, Nanos::ZERO), Reason::InFlightBytes);
    assert_eq!(a.in_flight_bytes(), 600);
    a.complete(permit, Outcome::Success, Nanos::ZERO);
    assert_eq!(a.in_flight_bytes(), 0);
}

#[test]
fn limit_follows_latency() {
    let config = Config { latency_target_ms: 10, concurrency_count_initial: 32, ..Config::default() };
    let mut a = Admission::new(config, 10).unwrap();
    let mut now = Nanos::ZERO;
    // Full windows of completions averaging 50 ms against a 10 ms target: the limit falls to
    // the minimum.
    let full_round = |a: &mut Admission, now: &mut Nanos, in_flight: u64, latency_ms: u64, dropped: bool| {
        let permits: Vec<Permit> = (0..in_flight).map(|p| a.try_admit(&write(p), *now).unwrap()).collect();
        *now = *now + Duration::from_millis(latency_ms);
        for (i, permit) in permits.into_iter().enumerate() {
            let outcome = if dropped && i == 0 { Outcome::Dropped } else { Outcome::Success };
            a.complete(permit, outcome, *now);
        }
    };
    for _ in 0..100 {
        let in_flight = u64::from(a.concurrency_limit_count());
        full_round(&mut a, &mut now, in_flight, 50, false);
    }
    assert_eq!(a.concurrency_limit_count(), a.config().concurrency_count_min);
    // Fast completions with 6 in flight: it grows again, but only to about twice what is used
    // (unused headroom says nothing about capacity).
    for _ in 0..300 {
        full_round(&mut a, &mut now, 6, 1, false);
    }
    assert!((12..=13).contains(&a.concurrency_limit_count()), "{}", a.concurrency_limit_count());
    // A window with a dropped request is congestion too: the limit backs off (to 90 %).
    let before = a.concurrency_limit_count();
    for _ in 0..3 {
        full_round(&mut a, &mut now, 6, 1, true);
    }
    assert!(a.concurrency_limit_count() < before);
}

#[test]
fn same_seed_same_answers() {
    let run = |seed: u64| {
        let config = Config { principal_rate_per_sec: 1, principal_burst_count: 1, ..Config::default() };
        let mut a = Admission::new(config, seed).unwrap();
        let permit = a.try_admit(&write(1), Nanos::ZERO).unwrap();
        a.complete(permit, Outcome::Success, Nanos::ZERO);
        (0..20).map(|i| a.try_admit(&write(1), Nanos(i)).unwrap_err().retry_after).collect::<Vec<_>>()
    };
    assert_eq!(run(11), run(11));
    assert_ne!(run(11), run(12));
}

#[test]
#[should_panic(expected = "foreign permit")]
fn a_permit_from_another_instance_panics() {
    let mut a = Admission::new(Config::default(), 1).unwrap();
    let mut b = Admission::new(Config::default(), 1).unwrap();
    let permit = a.try_admit(&write(1), Nanos::ZERO).unwrap();
    b.complete(permit, Outcome::Success, Nanos::ZERO);
}

#[test]
fn overloaded_displays_reason_and_hint() {
    let mut a = Admission::new(Config::default(), 1).unwrap();
    a.set_signals(Signals { disk_free_bytes: 0, ..Signals::HEALTHY });
    let refusal = a.try_admit(&write(1), Nanos::ZERO).unwrap_err();
    let hint_ms = refusal.retry_after.as_millis();
    assert_eq!(refusal.to_string(), format!("overloaded (disk space below the floor); retry after {hint_ms} ms"));
    assert_eq!(refusal.reason.label(), "disk_space");
}

#[test]
fn fair_share_is_work_conserving() {
    let config = Config {
        concurrency_count_min: 16,
        concurrency_count_initial: 16,
        concurrency_count_max: 16,
        light_reserve_count: 2,
        ..Config::default()
    };
    let mut a = Admission::new(config, 9).unwrap();
    let now = Nanos::ZERO;
    // A light principal holds one slot: the heavy one's share is 16 / 2 = 8, but nobody else
    // wants the capacity, so it may take every slot but the light reserve (13 more).
    let light = a.try_admit(&write(2), now).unwrap();
    let mut permits: Vec<Permit> = (0..13).map(|_| a.try_admit(&write(1), now).unwrap()).collect();
    assert_eq!(a.in_flight_count(), 14);
    assert_eq!(reason(&mut a, &write(1), now), Reason::FairShare { principal: Principal(1) });
    // The light principal is below its share: it gets the reserved slots.
    permits.push(a.try_admit(&write(2), now).unwrap());
    permits.push(a.try_admit(&write(3), now).unwrap());
    assert_eq!(reason(&mut a, &write(4), now), Reason::ConcurrencyLimit);
    permits.push(light);
    for permit in permits {
        a.complete(permit, Outcome::Cancelled, now);
    }
    assert_eq!(a.in_flight_count(), 0);
}

#[test]
fn busy_refusals_queue_their_returns_at_the_rate_slots_free() {
    let config = Config { retry_jitter_percent: 0, retry_after_ms_max: 10_000, ..fixed_limit_config() };
    let mut a = Admission::new(config, 10).unwrap();
    let now = Nanos::ZERO;
    let permits: Vec<Permit> = (0..6).map(|_| a.try_admit(&write(1), now).unwrap()).collect();
    // No completion yet: the latency estimate is the target (50 ms by default); a slot frees
    // every 50 / 8 = 6.25 ms. The first refusals wait one latency, then the queue shows.
    let hints: Vec<Duration> = (0..400).map(|_| a.try_admit(&write(1), now).unwrap_err().retry_after).collect();
    assert_eq!(hints[0], Duration::from_millis(50));
    assert!(hints.windows(2).all(|w| w[0] <= w[1]), "later refusals come back later");
    // The 400th is booked 400 turns of 6.25 ms ahead: 2.5 s.
    assert_eq!(hints[399], Duration::from_millis(2500));
    // The queue drains with time: a second later the next refusal is booked after the last.
    let later = a.try_admit(&write(1), Nanos::from_secs(1)).unwrap_err().retry_after;
    assert_eq!(later, Duration::from_millis(1506), "2.5 s + 6.25 ms - 1 s, in whole ms");
    // It never books further ahead than retry_after_ms_max, however many ignore their hints.
    let last = (0..10_000).map(|_| a.try_admit(&write(1), Nanos::from_secs(1)).unwrap_err().retry_after).last();
    assert_eq!(last, Some(Duration::from_millis(10_000)));
    // A light principal is not queued behind them.
    assert!(a.try_admit(&write(2), Nanos::from_secs(1)).is_ok_and(|p| {
        a.complete(p, Outcome::Cancelled, Nanos::from_secs(1));
        true
    }));
    for permit in permits {
        a.complete(permit, Outcome::Success, now);
    }
}

#[test]
fn holds_cap_a_principal_that_keeps_its_answers_and_no_one_else() {
    let config = Config {
        principal_requests_max: 3,
        principal_response_bytes_max: 10 * MIB,
        requests_max: 5,
        response_bytes_max: 16 * MIB,
        ..fixed_limit_config()
    };
    let mut a = Admission::new(config, 1).unwrap();
    let now = Nanos::from_secs(1);
    let (slow, other) = (Principal(1), Principal(2));
    // The slow principal's answers are never delivered: its holds stay after completion.
    let mut held = Vec::new();
    for _ in 0..3 {
        let hold = a.try_hold(Class::ClientRead, slow, MIB).unwrap();
        let permit = a.try_admit(&request(Class::ClientRead, 1), now).unwrap();
        a.complete(permit, Outcome::Success, now);
        held.push(hold);
    }
    let refusal = a.try_hold(Class::ClientRead, slow, MIB).unwrap_err();
    assert_eq!(refusal.reason, Reason::PrincipalRequests { principal: slow });
    assert!(refusal.retry_after >= Duration::from_millis(a.config().retry_after_ms_min));
    // Everyone else is admitted: the concurrency limit is free (the answers were given).
    let hold = a.try_hold(Class::ClientRead, other, MIB).unwrap();
    // Bytes: the answers turned out large.
    for h in &mut held {
        a.resize_hold(h, 4 * MIB);
    }
    assert_eq!(a.holds().principal_bytes(slow), 12 * MIB);
    assert_eq!(
        a.try_hold(Class::ClientRead, other, 4 * MIB).unwrap_err().reason,
        Reason::ResponseBytes { principal: other }
    );
    a.release_hold(hold);
    for h in held {
        a.release_hold(h);
    }
    assert_eq!((a.holds().total_count(), a.holds().total_bytes()), (0, 0));
    let again = a.try_hold(Class::ClientRead, slow, MIB).unwrap();
    a.release_hold(again);
    // Refusals are counted like any other.
    assert_eq!(a.stats().refused_count[Class::ClientRead.index()], 2);
}

#[test]
fn hold_limits_are_validated() {
    let bad = Config { principal_requests_max: 20_000, ..Config::default() };
    assert!(bad.validate().unwrap_err().to_string().contains("principal_requests_max"));
    let bad = Config { principal_response_bytes_max: 0, ..Config::default() };
    assert!(Admission::new(bad, 1).is_err());
}

#[test]
fn a_principal_sent_more_answer_bytes_than_its_rate_is_refused_until_its_debt_is_paid() {
    let config = Config {
        principal_answer_bytes_per_sec: 4 * MIB,
        principal_answer_burst_bytes: 8 * MIB,
        retry_jitter_percent: 0,
        ..fixed_limit_config()
    };
    let mut a = Admission::new(config, 7).unwrap();
    let (reader, other) = (1, 2);
    let read = |p| request(Class::ClientRead, p);
    let t0 = Nanos::from_secs(1);
    // The reader shares the node (alone, the rate does not hold: the test below).
    a.asked(Principal(other), t0);
    // Two answers of 4 MiB: the burst. The principal is at zero, not in debt.
    for _ in 0..2 {
        let permit = a.try_admit(&read(reader), t0).unwrap();
        a.charge_answer(Principal(reader), 4 * MIB, t0);
        a.complete(permit, Outcome::Success, t0);
    }
    assert_eq!(a.answer_bytes_level(Principal(reader), t0), Some(0));
    // A third: 3 MiB into debt, which takes 750 ms to pay back at 4 MiB/s.
    let permit = a.try_admit(&read(reader), t0).unwrap();
    a.charge_answer(Principal(reader), 3 * MIB, t0);
    a.complete(permit, Outcome::Success, t0);
    let refusal = a.try_admit(&read(reader), t0).unwrap_err();
    assert_eq!(refusal.reason, Reason::ResponseBytes { principal: Principal(reader) });
    assert_eq!(refusal.reason.label(), "response_bytes");
    assert_eq!(refusal.retry_after, Duration::from_millis(750), "the time the debt takes, not a guess");
    // Writes of the same principal too: the rate is the principal's.
    assert!(a.try_admit(&write(reader), t0 + Duration::from_millis(500)).is_err());
    // Nobody else is affected.
    let permit = a.try_admit(&read(other), t0).unwrap();
    a.complete(permit, Outcome::Success, t0);
    // Paid back at exactly the hinted time.
    let back = t0 + Duration::from_millis(750);
    let permit = a.try_admit(&read(reader), back).unwrap();
    a.complete(permit, Outcome::Success, back);
    // An enormous answer cannot lock its principal out for more than ANSWER_DEBT_SECONDS_MAX.
    a.charge_answer(Principal(reader), u64::MAX, back);
    let refusal = a.try_admit(&read(reader), back).unwrap_err();
    let debt_s = quorate_admission::ANSWER_DEBT_SECONDS_MAX;
    assert!(refusal.retry_after <= Duration::from_secs(debt_s), "{refusal:?}");
    let free = back + Duration::from_secs(debt_s);
    a.asked(Principal(other), free);
    assert!(a.try_admit(&read(reader), free).is_ok());
}

#[test]
fn the_answer_byte_rate_divides_the_node_among_principals_and_holds_none_back_alone() {
    // Work-conserving, as fair share is: a principal beside which no other has asked within
    // the window (ANSWER_CONTENTION_WINDOW_MS plus retry_after_ms_max) and none holds a request
    // is not held to its answer-byte rate (one application with many connections reading
    // 4 KiB values would otherwise be capped at about 1,000 gets/s by the 4 MiB/s default);
    // once another asks, the rate holds.
    let config = Config {
        principal_answer_bytes_per_sec: 4 * MIB,
        principal_answer_burst_bytes: 8 * MIB,
        retry_jitter_percent: 0,
        ..fixed_limit_config()
    };
    // The window: a second, plus the longest retry hint the node gives (a client told to come
    // back later is still waiting for the node).
    let window = Duration::from_millis(quorate_admission::ANSWER_CONTENTION_WINDOW_MS + config.retry_after_ms_max);
    let mut a = Admission::new(config, 7).unwrap();
    let (reader, other) = (1, 2);
    let read = |p| request(Class::ClientRead, p);
    let t0 = Nanos::from_secs(1);
    // Alone: 64 answers of 4 MiB at one instant, 32 times the burst, all admitted, and no
    // debt left behind to be refused for later.
    for _ in 0..64 {
        let permit = a.try_admit(&read(reader), t0).unwrap();
        a.charge_answer(Principal(reader), 4 * MIB, t0);
        a.complete(permit, Outcome::Success, t0);
    }
    assert_eq!(a.answer_bytes_level(Principal(reader), t0), Some(0));
    // Another principal asks: the reader's next answers go into debt, and it is refused.
    let t1 = t0;
    let permit = a.try_admit(&read(other), t1).unwrap();
    a.complete(permit, Outcome::Success, t1);
    let permit = a.try_admit(&read(reader), t1).unwrap();
    assert_eq!(a.charge_answer(Principal(reader), 100 * MIB, t1), 100 * MIB, "taken in full, into debt");
    a.complete(permit, Outcome::Success, t1);
    assert_eq!(a.answer_bytes_level(Principal(reader), t1), Some(-100 * MIB as i64));
    let refusal = a.try_admit(&read(reader), t1).unwrap_err();
    assert_eq!(refusal.reason, Reason::ResponseBytes { principal: Principal(reader) });
    assert_eq!(refusal.retry_after, Duration::from_secs(10), "25 s of debt; a hint is at most retry_after_ms_max");
    // Still refused while the other principal asked within the window...
    let t2 = t1 + (window - Duration::from_millis(1));
    assert_eq!(reason(&mut a, &read(reader), t2), Reason::ResponseBytes { principal: Principal(reader) });
    // ...the other is never refused for the reader's bytes...
    let permit = a.try_admit(&read(other), t2).unwrap();
    a.complete(permit, Outcome::Success, t2);
    // ...and once the other has not asked for a whole window, the reader is alone again:
    // admitted, its debt forgiven (no one is waiting for the bytes it would be refused for).
    let t3 = t2 + window + Duration::from_millis(1);
    let permit = a.try_admit(&read(reader), t3).unwrap();
    a.complete(permit, Outcome::Success, t3);
    assert_eq!(a.answer_bytes_level(Principal(reader), t3), Some(0));
    // A principal that holds a request (in flight, or its answer being delivered) shares the
    // node, however long ago it asked.
    let held = a.try_hold(Class::ClientRead, Principal(other), MIB).unwrap();
    assert_eq!(a.charge_answer(Principal(reader), 12 * MIB, t3), 12 * MIB);
    assert_eq!(a.answer_bytes_level(Principal(reader), t3), Some(-12 * MIB as i64));
    assert_eq!(reason(&mut a, &read(reader), t3), Reason::ResponseBytes { principal: Principal(reader) });
    a.release_hold(held);
    let t4 = t3 + Duration::from_millis(1);
    let permit = a.try_admit(&read(reader), t4).unwrap();
    a.complete(permit, Outcome::Success, t4);
    // Alone, a charge takes only what the bucket holds, and says how much: an estimate
    // charged in advance is settled against what was taken, not what was asked.
    assert_eq!(a.charge_answer(Principal(reader), 4 * MIB, t4), 0);
    assert_eq!(a.answer_bytes_level(Principal(reader), t4), Some(0));
    // A principal refused before admission (its hold, say) still asked: noted, it makes the
    // reader's answers count again.
    a.asked(Principal(other), t4);
    assert_eq!(a.charge_answer(Principal(reader), 12 * MIB, t4), 12 * MIB);
    assert_eq!(a.answer_bytes_level(Principal(reader), t4), Some(-12 * MIB as i64));
    assert_eq!(reason(&mut a, &read(reader), t4), Reason::ResponseBytes { principal: Principal(reader) });
}

#[test]
fn answer_rates_are_validated() {
    for (edit, field) in [
        ((|c: &mut Config| c.principal_answer_bytes_per_sec = 0) as fn(&mut Config), "principal_answer_bytes_per_sec"),
        (|c: &mut Config| c.principal_answer_burst_bytes = 0, "principal_answer_burst_bytes"),
        (|c: &mut Config| c.principal_answer_burst_bytes = 2_000_000_000, "principal_answer_burst_bytes"),
    ] {
        let mut c = Config::default();
        edit(&mut c);
        let e = Admission::new(c, 1).unwrap_err().to_string();
        assert!(e.contains(field), "{e}");
    }
    let c = Config::default();
    assert_eq!((c.principal_answer_bytes_per_sec, c.principal_answer_burst_bytes), (4 * MIB, 8 * MIB));
}
