//! Tests of the client-history format and the linearizability checker.

use quorate_check::history::{
    Completion, HistoryError, LINE_BYTES_MAX, Operation, ReadCompletion, read_jsonl, write_jsonl,
};
use quorate_check::linearizability::{CheckResult, Limits, Outcome, check};

// ---------------------------------------------------------------------------------------------
// Builders: times are [call, return]; `_unknown` ops have `"return": null`.

fn put(client: u64, key: &str, value: &str, call: u64, ret: u64) -> Operation {
    Operation::put(client, key, value, call, Completion::Ok { ret })
}

fn put_failed(client: u64, key: &str, value: &str, call: u64, ret: u64) -> Operation {
    Operation::put(client, key, value, call, Completion::Failed { ret })
}

fn put_unknown(client: u64, key: &str, value: &str, call: u64) -> Operation {
    Operation::put(client, key, value, call, Completion::Unknown)
}

fn get(client: u64, key: &str, output: Option<&str>, call: u64, ret: u64) -> Operation {
    let output = output.map(str::to_owned);
    Operation::get(client, key, call, ReadCompletion::Returned { ret, output })
}

fn get_unknown(client: u64, key: &str, call: u64) -> Operation {
    Operation::get(client, key, call, ReadCompletion::Unknown)
}

fn delete(client: u64, key: &str, call: u64, ret: u64) -> Operation {
    Operation::delete(client, key, call, Completion::Ok { ret })
}

fn delete_unknown(client: u64, key: &str, call: u64) -> Operation {
    Operation::delete(client, key, call, Completion::Unknown)
}

fn cas(client: u64, key: &str, expected: &str, value: &str, call: u64, ret: u64) -> Operation {
    Operation::cas(client, key, expected, value, call, Completion::Ok { ret })
}

fn cas_failed(client: u64, key: &str, expected: &str, value: &str, call: u64, ret: u64) -> Operation {
    Operation::cas(client, key, expected, value, call, Completion::Failed { ret })
}

fn cas_unknown(client: u64, key: &str, expected: &str, value: &str, call: u64) -> Operation {
    Operation::cas(client, key, expected, value, call, Completion::Unknown)
}

fn run(history: &[Operation]) -> CheckResult {
    let result = check(history, &Limits::default());
    // The order of the history never matters.
    let reversed: Vec<Operation> = history.iter().rev().cloned().collect();
    let again = check(&reversed, &Limits::default());
    assert_eq!(result.is_linearizable(), again.is_linearizable(), "{result} vs {again}");
    result
}

#[track_caller]
fn assert_linearizable(history: &[Operation]) {
    let result = run(history);
    assert_eq!(result.outcome, Outcome::Linearizable, "{result}");
}

/// Asserts a violation on `key` centred on `history[op_index]`; returns the evidence.
#[track_caller]
fn assert_violation(history: &[Operation], key: &str, op_index: usize) -> String {
    let result = run(history);
    match result.outcome {
        Outcome::NotLinearizable { key: k, op_index: i, evidence } => {
            assert_eq!((k.as_str(), i), (key, op_index), "{evidence}");
            assert!(!evidence.is_empty());
            evidence
        }
        other => panic!("expected a violation on {key:?}, got {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Linearizable histories.

#[test]
fn empty_history_is_linearizable() {
    let result = check(&[], &Limits::default());
    assert_eq!(result.outcome, Outcome::Linearizable);
    assert_eq!((result.keys_checked, result.ops_checked), (0, 0));
}

#[test]
fn sequential_put_then_get() {
    assert_linearizable(&[put(0, "k", "v1", 0, 10), get(1, "k", Some("v1"), 20, 30)]);
}

#[test]
fn key_starts_absent() {
    assert_linearizable(&[get(0, "k", None, 0, 5), put(0, "k", "v1", 10, 20)]);
}

#[test]
fn read_concurrent_with_put_sees_old_value() {
    let h = [put(0, "k", "v1", 0, 10), put(0, "k", "v2", 20, 60), get(1, "k", Some("v1"), 30, 40)];
    assert_linearizable(&h);
}

#[test]
fn read_concurrent_with_put_sees_new_value() {
    let h = [put(0, "k", "v1", 0, 10), put(0, "k", "v2", 20, 60), get(1, "k", Some("v2"), 30, 40)];
    assert_linearizable(&h);
}

#[test]
fn overlapping_reads_may_see_new_then_old() {
    // B (old) may be linearized before the put and A (new) after it, because A and B overlap.
    let h = [
        put(0, "k", "v1", 0, 10),
        put(0, "k", "v2", 20, 100),
        get(1, "k", Some("v2"), 30, 70),
        get(2, "k", Some("v1"), 40, 80),
    ];
    assert_linearizable(&h);
}

#[test]
fn touching_intervals_count_as_concurrent() {
    // The get returns at 10, the instant the put is called: treated as concurrent.
    assert_linearizable(&[get(1, "k", Some("v1"), 0, 10), put(0, "k", "v1", 10, 20)]);
}

#[test]
fn cas_chain() {
    let h = [
        put(0, "k", "v1", 0, 10),
        cas(1, "k", "v1", "v2", 20, 30),
        cas_failed(2, "k", "v1", "v3", 40, 50),
        cas(1, "k", "v2", "v3", 60, 70),
        get(3, "k", Some("v3"), 80, 90),
    ];
    assert_linearizable(&h);
}

#[test]
fn concurrent_cas_one_wins() {
    let h = [
        put(0, "k", "v1", 0, 10),
        cas(1, "k", "v1", "v2", 20, 50),
        cas_failed(2, "k", "v1", "v3", 25, 45),
        get(3, "k", Some("v2"), 60, 70),
    ];
    assert_linearizable(&h);
}

#[test]
fn deletes() {
    let h = [
        put(0, "k", "v1", 0, 10),
        delete(1, "k", 20, 30),
        get(2, "k", None, 40, 50),
        cas_failed(2, "k", "v1", "v2", 60, 70),
        delete(1, "k", 80, 90),
        put(0, "k", "v2", 100, 110),
        get(2, "k", Some("v2"), 120, 130),
    ];
    assert_linearizable(&h);
}

#[test]
fn unknown_put_that_took_effect() {
    let h = [
        put(0, "k", "v1", 0, 10),
        put_unknown(1, "k", "v2", 20),
        get(2, "k", Some("v2"), 100, 110),
        get(3, "k", Some("v2"), 120, 130),
    ];
    assert_linearizable(&h);
}

#[test]
fn unknown_put_that_did_not_take_effect() {
    let h = [
        put(0, "k", "v1", 0, 10),
        put_unknown(1, "k", "v2", 20),
        get(2, "k", Some("v1"), 100, 110),
        get(2, "k", Some("v1"), 1000, 1100),
    ];
    assert_linearizable(&h);
}

#[test]
fn unknown_put_that_took_effect_long_after_its_call() {
    let h = [
        put(0, "k", "v1", 0, 10),
        put_unknown(1, "k", "v2", 20),
        get(2, "k", Some("v1"), 100, 110),
        get(2, "k", Some("v2"), 200, 210),
    ];
    assert_linearizable(&h);
}

#[test]
fn unknown_cas_and_delete_that_took_effect() {
    let h = [
        put(0, "k", "v1", 0, 10),
        cas_unknown(1, "k", "v1", "v2", 20),
        get(2, "k", Some("v2"), 50, 60),
        delete_unknown(3, "k", 70),
        get(2, "k", None, 80, 90),
    ];
    assert_linearizable(&h);
}

#[test]
fn unknown_ops_with_failed_cas_on_the_key() {
    // With a failed cas present no unknown write is dropped early; the search must still pass.
    let h = [
        put(0, "k", "v1", 0, 10),
        put_unknown(1, "k", "v2", 20),
        delete_unknown(2, "k", 25),
        cas_failed(3, "k", "v1", "v9", 40, 50),
        get(3, "k", Some("v2"), 60, 70),
    ];
    assert_linearizable(&h);
}

#[test]
fn failed_put_and_unknown_get_are_ignored() {
    let h = [
        put(0, "k", "v1", 0, 10),
        put_failed(1, "k", "v2", 20, 30),
        get_unknown(2, "k", 25),
        get(2, "k", Some("v1"), 40, 50),
    ];
    assert_linearizable(&h);
}

#[test]
fn repeated_values_are_allowed() {
    let h =
        [put(0, "k", "a", 0, 10), put(0, "k", "b", 20, 30), put(0, "k", "a", 40, 50), get(1, "k", Some("a"), 60, 70)];
    assert_linearizable(&h);
}

#[test]
fn keys_are_independent() {
    let h = [
        put(0, "a", "1", 0, 10),
        put(0, "b", "1", 5, 15),
        get(1, "a", Some("1"), 20, 30),
        get(1, "b", Some("1"), 20, 30),
        put(0, "b", "2", 40, 50),
        get(1, "a", Some("1"), 60, 70),
    ];
    let result = run(&h);
    assert_eq!(result.outcome, Outcome::Linearizable);
    assert_eq!((result.keys_checked, result.ops_checked), (2, 6));
}

// ---------------------------------------------------------------------------------------------
// Violations.

#[test]
fn stale_read_after_completed_write() {
    let h = [put(0, "k", "v1", 0, 10), put(0, "k", "v2", 20, 30), get(1, "k", Some("v1"), 40, 50)];
    let evidence = assert_violation(&h, "k", 2);
    assert!(evidence.contains("longest linearizable prefix"), "{evidence}");
    assert!(evidence.contains("#2 (client 1 get"), "{evidence}");
}

#[test]
fn absent_read_after_completed_write() {
    assert_violation(&[put(0, "k", "v1", 0, 10), get(1, "k", None, 20, 30)], "k", 1);
}

#[test]
fn read_of_a_value_never_written() {
    let h = [put(0, "k", "v1", 0, 10), get(1, "k", Some("v9"), 20, 30)];
    let evidence = assert_violation(&h, "k", 1);
    assert!(evidence.contains("\"v9\""), "{evidence}");
}

#[test]
fn read_of_a_failed_put() {
    assert_violation(&[put_failed(0, "k", "v1", 0, 10), get(1, "k", Some("v1"), 20, 30)], "k", 1);
}

#[test]
fn read_from_the_future() {
    assert_violation(&[get(1, "k", Some("v1"), 0, 10), put(0, "k", "v1", 20, 30)], "k", 0);
    assert_violation(&[get(1, "k", Some("v1"), 0, 10), put_unknown(0, "k", "v1", 20)], "k", 0);
}

#[test]
fn lost_acknowledged_write() {
    // v2 was acknowledged, then a read sees the older v1; the unknown v3 cannot excuse it.
    let h = [
        put(0, "k", "v1", 0, 10),
        put(0, "k", "v2", 20, 30),
        put_unknown(2, "k", "v3", 25),
        get(1, "k", Some("v1"), 40, 50),
        get(1, "k", Some("v3"), 60, 70),
    ];
    assert_violation(&h, "k", 3);
}

#[test]
fn read_after_delete_sees_old_value() {
    let h = [put(0, "k", "v1", 0, 10), delete(0, "k", 20, 30), get(1, "k", Some("v1"), 40, 50)];
    assert_violation(&h, "k", 2);
}

#[test]
fn cas_succeeds_against_the_wrong_value() {
    let h = [put(0, "k", "v0", 0, 10), put(0, "k", "v1", 20, 30), cas(1, "k", "v0", "v2", 40, 50)];
    assert_violation(&h, "k", 2);
}

#[test]
fn cas_fails_although_the_value_matched() {
    let h = [put(0, "k", "v1", 0, 10), cas_failed(1, "k", "v1", "v2", 20, 30)];
    assert_violation(&h, "k", 1);
}

#[test]
fn two_cas_succeed_from_the_same_expected_value() {
    let h = [put(0, "k", "v1", 0, 10), cas(1, "k", "v1", "v2", 20, 30), cas(2, "k", "v1", "v3", 40, 50)];
    assert_violation(&h, "k", 2);
}

#[test]
fn read_goes_back_in_time() {
    let h = [
        put(0, "k", "v1", 0, 10),
        put(0, "k", "v2", 20, 100),
        get(1, "k", Some("v2"), 30, 40),
        get(2, "k", Some("v1"), 50, 60),
    ];
    assert_violation(&h, "k", 3);
}

#[test]
fn unknown_put_cannot_take_effect_before_its_call() {
    let h = [put(0, "k", "v1", 0, 10), get(1, "k", Some("v2"), 20, 30), put_unknown(2, "k", "v2", 25)];
    // Concurrent with the read: fine.
    assert_linearizable(&h);
    let h = [put(0, "k", "v1", 0, 10), get(1, "k", Some("v2"), 20, 30), put_unknown(2, "k", "v2", 31)];
    assert_violation(&h, "k", 1);
}

#[test]
fn violation_names_the_right_key_among_many() {
    let mut h = Vec::new();
    for k in 0..20u64 {
        let key = format!("k{k:02}");
        h.push(put(k, &key, "a", 0, 10));
        h.push(get(k, &key, Some("a"), 20, 30));
    }
    h.push(put(99, "k13", "b", 40, 50));
    h.push(get(99, "k13", Some("a"), 60, 70));
    let index = h.len() - 1;
    assert_violation(&h, "k13", index);
}

#[test]
fn return_before_call_is_an_invalid_history() {
    let h = [put(0, "k", "v1", 0, 10), get(1, "k", Some("v1"), 30, 20)];
    let result = check(&h, &Limits::default());
    assert!(matches!(result.outcome, Outcome::InvalidHistory { op_index: 1, .. }), "{}", result.outcome);
}

#[test]
fn exhausted_budget_is_inconclusive_never_linearizable() {
    // Ten concurrent unknown writes observed by reads force some search.
    let mut h = vec![put(0, "k", "v0", 0, 10)];
    for i in 1..=10u64 {
        h.push(put_unknown(i, "k", &format!("v{i}"), 20));
    }
    for i in 1..=10u64 {
        h.push(get(100 + i, "k", Some(&format!("v{i}")), 100 + 20 * i, 110 + 20 * i));
    }
    assert_linearizable(&h);
    let tiny = Limits::default().with_steps_per_key_max(5);
    let result = check(&h, &tiny);
    assert!(matches!(&result.outcome, Outcome::Inconclusive { key, .. } if key == "k"), "{result}");
    let tiny_cache = Limits::default().with_cache_bytes_per_key_max(64);
    let result = check(&h, &tiny_cache);
    assert!(matches!(result.outcome, Outcome::Inconclusive { .. }), "{result}");
    // A broken history under a tiny budget is inconclusive or a violation, never linearizable.
    h.push(get(200, "k", Some("v3"), 1000, 1010));
    for steps in [1, 5, 50, 10_000] {
        let result = check(&h, &Limits::default().with_steps_per_key_max(steps));
        assert!(!result.is_linearizable(), "{result}");
    }
    assert!(matches!(run(&h).outcome, Outcome::NotLinearizable { .. }));
}

// ---------------------------------------------------------------------------------------------
// Generated histories: a real atomic register, with random overlaps and unknown outcomes.

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Plan {
    Put,
    Get,
    Delete,
    Cas,
}

struct Planned {
    client: u64,
    key: String,
    plan: Plan,
    value: String,
    call: u64,
    ret: u64,
    /// When the operation takes effect in the simulated store; `None` = never.
    effect: Option<u64>,
    unknown: bool,
}

/// Simulates `clients` sequential clients against one atomic store of `keys` keys and records
/// the history. Every written value is unique.
fn generate(seed: u64, clients: u64, keys: u64, ops_per_client: u64) -> Vec<Operation> {
    let mut rng = Rng(seed);
    let mut planned = Vec::new();
    let mut counter = 0u64;
    for client in 0..clients {
        let mut t = rng.below(20);
        for _ in 0..ops_per_client {
            let call = t + rng.below(10);
            let duration = 1 + rng.below(40);
            let ret = call + duration;
            let plan = match rng.below(100) {
                0..40 => Plan::Put,
                40..75 => Plan::Get,
                75..82 => Plan::Delete,
                _ => Plan::Cas,
            };
            let unknown = rng.percent(8);
            let failed = !unknown && matches!(plan, Plan::Put | Plan::Delete) && rng.percent(5);
            let effect = if failed || (unknown && rng.percent(50)) {
                None
            } else if unknown {
                Some(call + rng.below(4 * duration + 1))
            } else {
                Some(call + rng.below(duration + 1))
            };
            counter += 1;
            planned.push(Planned {
                client,
                key: format!("key{}", rng.below(keys)),
                plan,
                value: format!("s{seed}-v{counter}"),
                call,
                ret,
                effect,
                unknown,
            });
            t = ret;
        }
    }
    let mut order: Vec<usize> = (0..planned.len()).collect();
    order.sort_by_key(|&i| (planned[i].effect.unwrap_or(u64::MAX), i));
    let mut store: std::collections::HashMap<String, String> = Default::default();
    let mut written: Vec<String> = Vec::new();
    let mut history: Vec<Option<Operation>> = (0..planned.len()).map(|_| None).collect();
    for i in order {
        let p = &planned[i];
        let took_effect = p.effect.is_some();
        let done = |ok: bool| match (p.unknown, ok) {
            (true, _) => Completion::Unknown,
            (false, true) => Completion::Ok { ret: p.ret },
            (false, false) => Completion::Failed { ret: p.ret },
        };
        let op = match p.plan {
            Plan::Put => {
                if took_effect {
                    store.insert(p.key.clone(), p.value.clone());
                    written.push(p.value.clone());
                }
                Operation::put(p.client, &p.key, &p.value, p.call, done(took_effect))
            }
            Plan::Delete => {
                if took_effect {
                    store.remove(&p.key);
                }
                Operation::delete(p.client, &p.key, p.call, done(took_effect))
            }
            Plan::Get => {
                let completion = if p.unknown {
                    ReadCompletion::Unknown
                } else {
                    ReadCompletion::Returned { ret: p.ret, output: store.get(&p.key).cloned() }
                };
                Operation::get(p.client, &p.key, p.call, completion)
            }
            Plan::Cas => {
                let current = store.get(&p.key).cloned();
                let expected = match current {
                    Some(v) if took_effect && rng.percent(60) => v,
                    _ if !written.is_empty() && rng.percent(80) => {
                        written[rng.below(written.len() as u64) as usize].clone()
                    }
                    _ => format!("s{seed}-never"),
                };
                let swapped = took_effect && store.get(&p.key) == Some(&expected);
                if swapped {
                    store.insert(p.key.clone(), p.value.clone());
                    written.push(p.value.clone());
                }
                // A known cas always compared; an unknown one may have swapped or not.
                let completion = if p.unknown || took_effect { done(swapped) } else { Completion::Unknown };
                Operation::cas(p.client, &p.key, expected, &p.value, p.call, completion)
            }
        };
        history[i] = Some(op);
    }
    history.into_iter().flatten().collect()
}

fn returned_gets(history: &[Operation]) -> Vec<usize> {
    (0..history.len())
        .filter(|&i| {
            matches!(
                history[i].kind,
                quorate_check::history::OpKind::Get { completion: ReadCompletion::Returned { .. } }
            )
        })
        .collect()
}

fn set_output(op: &mut Operation, value: &str) {
    let ret = op.ret().unwrap_or(op.call);
    *op = Operation::get(
        op.client,
        op.key.clone(),
        op.call,
        ReadCompletion::Returned { ret, output: Some(value.to_owned()) },
    );
}

const SEEDS: u64 = 300;

fn shape(seed: u64) -> (u64, u64, u64) {
    let clients = 2 + seed % 5;
    let keys = 1 + seed % 4;
    let ops_per_client = 5 + (seed * 7) % 40;
    (clients, keys, ops_per_client)
}

#[test]
fn generated_histories_are_linearizable() {
    let mut unknown = 0;
    for seed in 0..SEEDS {
        let (clients, keys, ops) = shape(seed);
        let h = generate(seed, clients, keys, ops);
        unknown += h.iter().filter(|op| op.is_unknown()).count();
        let result = check(&h, &Limits::default());
        assert_eq!(result.outcome, Outcome::Linearizable, "seed {seed}: {result}");
    }
    assert!(unknown > 100, "the generator should produce unknown outcomes ({unknown})");
}

#[test]
fn generated_histories_with_a_never_written_read_are_caught() {
    let mut mutated = 0;
    for seed in 0..SEEDS {
        let (clients, keys, ops) = shape(seed);
        let mut h = generate(seed, clients, keys, ops);
        let gets = returned_gets(&h);
        if gets.is_empty() {
            continue;
        }
        let target = gets[Rng(seed).below(gets.len() as u64) as usize];
        set_output(&mut h[target], "never-written");
        let key = h[target].key.clone();
        match check(&h, &Limits::default()).outcome {
            Outcome::NotLinearizable { key: k, .. } => assert_eq!(k, key, "seed {seed}"),
            other => panic!("seed {seed}: mutation not caught: {other}"),
        }
        mutated += 1;
    }
    assert!(mutated > SEEDS / 2);
}

/// Mutates a read to return a value that was provably overwritten before the read was called:
/// a put of `old` returned before a put of `new` was called, which returned before the read was
/// called. Values are unique, so nothing else writes `old`.
#[test]
fn generated_histories_with_an_overwritten_read_are_caught() {
    let mut mutated = 0;
    for seed in 0..SEEDS {
        let (clients, keys, ops) = shape(seed);
        let mut h = generate(seed, clients, keys, ops);
        let acked_put = |op: &Operation| -> Option<(String, u64)> {
            match &op.kind {
                quorate_check::history::OpKind::Put { value, completion: Completion::Ok { ret } } => {
                    Some((value.clone(), *ret))
                }
                _ => None,
            }
        };
        let mut found = None;
        'search: for g in returned_gets(&h) {
            for n in 0..h.len() {
                let Some((_, new_ret)) = acked_put(&h[n]) else { continue };
                if h[n].key != h[g].key || new_ret >= h[g].call {
                    continue;
                }
                for o in 0..h.len() {
                    let Some((old, old_ret)) = acked_put(&h[o]) else { continue };
                    if h[o].key == h[g].key && old_ret < h[n].call {
                        found = Some((g, old));
                        break 'search;
                    }
                }
            }
        }
        let Some((g, old)) = found else { continue };
        set_output(&mut h[g], &old);
        match check(&h, &Limits::default()).outcome {
            Outcome::NotLinearizable { key, .. } => assert_eq!(key, h[g].key, "seed {seed}"),
            other => panic!("seed {seed}: overwritten read not caught: {other}"),
        }
        mutated += 1;
    }
    assert!(mutated > SEEDS / 2, "{mutated}");
}

#[test]
fn large_generated_histories_are_linearizable() {
    // Many keys: 20 000 operations over 200 keys.
    let h = generate(7, 50, 200, 400);
    let result = check(&h, &Limits::default());
    assert_eq!(result.outcome, Outcome::Linearizable, "{result}");
    assert_eq!(result.keys_checked, 200);
    // One hot key: 4 000 operations.
    let h = generate(8, 8, 1, 500);
    let result = check(&h, &Limits::default());
    assert_eq!(result.outcome, Outcome::Linearizable, "{result}");
}

// ---------------------------------------------------------------------------------------------
// The JSON-lines format.

#[test]
fn writes_the_documented_format() {
    let h = [
        put(0, "k1", "v17", 1000, 2500),
        get(1, "k1", Some("v17"), 3000, 3100),
        cas_failed(2, "k1", "v17", "v18", 3200, 3900),
        delete_unknown(3, "k1", 4000),
        get(1, "k2", None, 4100, 4200),
        get_unknown(1, "k2", 4300),
        put_failed(4, "k2", "x", 4400, 4500),
        delete(4, "k2", 4600, 4700),
    ];
    let mut out = Vec::new();
    write_jsonl(&mut out, &h).expect("writing to a Vec cannot fail");
    let expected = r#"{"client":0,"op":"put","key":"k1","value":"v17","ok":true,"call":1000,"return":2500}
{"client":1,"op":"get","key":"k1","output":"v17","call":3000,"return":3100}
{"client":2,"op":"cas","key":"k1","expected":"v17","value":"v18","ok":false,"call":3200,"return":3900}
{"client":3,"op":"delete","key":"k1","call":4000,"return":null}
{"client":1,"op":"get","key":"k2","output":null,"call":4100,"return":4200}
{"client":1,"op":"get","key":"k2","call":4300,"return":null}
{"client":4,"op":"put","key":"k2","value":"x","ok":false,"call":4400,"return":4500}
{"client":4,"op":"delete","key":"k2","ok":true,"call":4600,"return":4700}
"#;
    assert_eq!(String::from_utf8(out).expect("JSON is UTF-8"), expected);
    let back = read_jsonl(expected.as_bytes()).expect("the documented examples parse");
    assert_eq!(back, h);
}

#[test]
fn generated_histories_round_trip_through_json() {
    for seed in 0..20 {
        let mut h = generate(seed, 4, 3, 30);
        h.push(put(9, "quote\"and\\slash\n", "välue ✓", 1, 2));
        let mut out = Vec::new();
        write_jsonl(&mut out, &h).expect("writing to a Vec cannot fail");
        let back = read_jsonl(out.as_slice()).expect("own output parses");
        assert_eq!(back, h, "seed {seed}");
    }
}

#[test]
fn accepts_blank_lines_crlf_and_a_missing_final_newline() {
    let text = "\n{\"client\":0,\"op\":\"delete\",\"key\":\"k\",\"call\":1,\"return\":null}\r\n  \n\
                {\"client\":0,\"op\":\"get\",\"key\":\"k\",\"output\":null,\"call\":1,\"return\":1}";
    let ops = read_jsonl(text.as_bytes()).expect("valid");
    assert_eq!(ops, [delete_unknown(0, "k", 1), get(0, "k", None, 1, 1)]);
}

#[track_caller]
fn assert_bad_line(text: &str, line: usize) -> HistoryError {
    let good = r#"{"client":0,"op":"put","key":"k","value":"v","ok":true,"call":1,"return":2}"#;
    let mut input = String::new();
    for _ in 1..line {
        input.push_str(good);
        input.push('\n');
    }
    input.push_str(text);
    input.push('\n');
    input.push_str(good);
    let err = read_jsonl(input.as_bytes()).expect_err(text);
    assert_eq!(err.line(), Some(line), "{err}");
    assert!(err.to_string().starts_with(&format!("line {line}:")), "{err}");
    err
}

#[test]
fn malformed_lines_are_reported_with_their_number() {
    let json = |e: HistoryError| assert!(matches!(e, HistoryError::Json { .. }), "{e}");
    let invalid = |e: HistoryError| assert!(matches!(e, HistoryError::Invalid { .. }), "{e}");
    json(assert_bad_line("not json", 1));
    json(assert_bad_line(r#"{"client":0,"op":"put","key":"k""#, 3));
    json(assert_bad_line(r#"[1,2,3]"#, 2));
    json(assert_bad_line(r#"{"client":0,"op":"rename","key":"k","call":1,"return":2}"#, 4));
    json(assert_bad_line(r#"{"client":-1,"op":"get","key":"k","output":null,"call":1,"return":2}"#, 2));
    json(assert_bad_line(r#"{"client":0,"op":"get","key":"k","output":null,"call":1.5,"return":2}"#, 2));
    json(assert_bad_line(r#"{"client":0,"op":"get","key":"k","output":7,"call":1,"return":2}"#, 2));
    json(assert_bad_line(r#"{"client":0,"op":"get","key":"k","output":null,"call":1,"return":2,"x":1}"#, 2));
    json(assert_bad_line(r#"{"client":0,"op":"get","key":"k","key":"j","output":null,"call":1,"return":2}"#, 2));
    json(assert_bad_line(r#"{"op":"get","key":"k","output":null,"call":1,"return":2}"#, 5));
    invalid(assert_bad_line(r#"{"client":0,"op":"get","key":"k","output":null,"call":1}"#, 2));
    invalid(assert_bad_line(r#"{"client":0,"op":"get","key":"k","call":1,"return":2}"#, 2));
    invalid(assert_bad_line(r#"{"client":0,"op":"get","key":"k","output":"v","call":1,"return":null}"#, 2));
    invalid(assert_bad_line(r#"{"client":0,"op":"get","key":"k","output":null,"ok":true,"call":1,"return":2}"#, 2));
    invalid(assert_bad_line(r#"{"client":0,"op":"put","key":"k","value":"v","call":1,"return":2}"#, 2));
    invalid(assert_bad_line(r#"{"client":0,"op":"put","key":"k","ok":true,"call":1,"return":2}"#, 2));
    invalid(assert_bad_line(r#"{"client":0,"op":"put","key":"k","value":"v","ok":true,"call":1,"return":null}"#, 2));
    invalid(assert_bad_line(r#"{"client":0,"op":"put","key":"k","value":"v","ok":true,"call":3,"return":2}"#, 2));
    invalid(assert_bad_line(r#"{"client":0,"op":"cas","key":"k","value":"v","ok":true,"call":1,"return":2}"#, 2));
    invalid(assert_bad_line(r#"{"client":0,"op":"delete","key":"k","value":"v","ok":true,"call":1,"return":2}"#, 2));
}

#[test]
fn invalid_utf8_is_an_error_not_a_panic() {
    let mut input = br#"{"client":0,"op":"delete","key":"k","call":1,"return":null}"#.to_vec();
    input.extend_from_slice(b"\n{\"client\":0,\"op\":\"delete\",\"key\":\"\xff\xfe\",\"call\":1,\"return\":null}\n");
    let err = read_jsonl(input.as_slice()).expect_err("invalid UTF-8");
    assert_eq!(err.line(), Some(2), "{err}");
}

#[test]
fn overlong_lines_are_rejected() {
    let long_value = "x".repeat(LINE_BYTES_MAX);
    let line = format!(r#"{{"client":0,"op":"put","key":"k","value":"{long_value}","ok":true,"call":1,"return":2}}"#);
    let input = format!("{}\n{line}\n", r#"{"client":0,"op":"delete","key":"k","call":1,"return":null}"#);
    let err = read_jsonl(input.as_bytes()).expect_err("too long");
    assert!(matches!(err, HistoryError::LineTooLong { line: 2, .. }), "{err}");
    // Without a trailing newline too.
    let err = read_jsonl(line.as_bytes()).expect_err("too long");
    assert!(matches!(err, HistoryError::LineTooLong { line: 1, .. }), "{err}");
    // A long line within the limit is fine.
    let ok_value = "y".repeat(LINE_BYTES_MAX - 200);
    let line = format!(r#"{{"client":0,"op":"put","key":"k","value":"{ok_value}","ok":true,"call":1,"return":2}}"#);
    assert_eq!(read_jsonl(line.as_bytes()).expect("within the limit").len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Fixtures.

fn fixture(bytes: &[u8]) -> Vec<Operation> {
    read_jsonl(bytes).expect("fixture parses")
}

#[test]
fn fixture_linearizable() {
    let h = fixture(include_bytes!("fixtures/linearizable.jsonl"));
    assert_eq!(h.len(), 16);
    let result = run(&h);
    assert_eq!(result.outcome, Outcome::Linearizable, "{result}");
    assert_eq!(result.keys_checked, 2);
}

#[test]
fn fixture_stale_read() {
    let h = fixture(include_bytes!("fixtures/stale-read.jsonl"));
    assert_violation(&h, "k1", 4);
}

#[test]
fn fixture_cas_double_success() {
    let h = fixture(include_bytes!("fixtures/cas-double-success.jsonl"));
    assert_violation(&h, "lock", 2);
}

// ---------------------------------------------------------------------------------------------
// Differential test against a brute-force search over all orders, on small random histories
// with few distinct (repeated) values, so that both verdicts occur often.

/// The effect of an operation in the brute-force model: `Err(())` when it cannot happen.
fn brute_apply(op: &Operation, state: &Option<String>) -> Option<Result<Option<String>, ()>> {
    use quorate_check::history::OpKind;
    Some(match &op.kind {
        OpKind::Put { completion: Completion::Failed { .. }, .. }
        | OpKind::Delete { completion: Completion::Failed { .. } }
        | OpKind::Get { completion: ReadCompletion::Unknown } => return None,
        OpKind::Put { value, .. } => Ok(Some(value.clone())),
        OpKind::Delete { .. } => Ok(None),
        OpKind::Get { completion: ReadCompletion::Returned { output, .. } } => {
            if output == state {
                Ok(state.clone())
            } else {
                Err(())
            }
        }
        OpKind::Cas { expected, completion: Completion::Failed { .. }, .. } => {
            if state.as_ref() != Some(expected) {
                Ok(state.clone())
            } else {
                Err(())
            }
        }
        OpKind::Cas { expected, value, .. } => {
            if state.as_ref() == Some(expected) {
                Ok(Some(value.clone()))
            } else {
                Err(())
            }
        }
        _ => return None,
    })
}

fn brute_force(ops: &[Operation], placed: u32, state: &Option<String>) -> bool {
    let pending = |i: usize| placed & (1 << i) == 0 && brute_apply(&ops[i], &None).is_some();
    if !(0..ops.len()).any(|i| pending(i) && !ops[i].is_unknown()) {
        return true;
    }
    (0..ops.len()).filter(|&i| pending(i)).any(|i| {
        // Every pending known op that returned before `i` was called must come first.
        let blocked = (0..ops.len()).any(|j| j != i && pending(j) && ops[j].ret().is_some_and(|r| r < ops[i].call));
        if blocked {
            return false;
        }
        match brute_apply(&ops[i], state) {
            Some(Ok(next)) => brute_force(ops, placed | (1 << i), &next),
            _ => false,
        }
    })
}

fn random_small_history(rng: &mut Rng) -> Vec<Operation> {
    let values = ["a", "b", "c"];
    let n = 1 + rng.below(7);
    (0..n)
        .map(|i| {
            let call = rng.below(30);
            let ret = call + rng.below(15);
            let value = values[rng.below(3) as usize];
            let other = values[rng.below(3) as usize];
            let completion = match rng.below(10) {
                0..6 => Completion::Ok { ret },
                6..8 => Completion::Failed { ret },
                _ => Completion::Unknown,
            };
            match rng.below(4) {
                0 => Operation::put(i, "k", value, call, completion),
                1 => Operation::delete(i, "k", call, completion),
                2 => Operation::cas(i, "k", other, value, call, completion),
                _ => {
                    let output = (!rng.percent(25)).then(|| value.to_owned());
                    let completion = if rng.percent(15) {
                        ReadCompletion::Unknown
                    } else {
                        ReadCompletion::Returned { ret, output }
                    };
                    Operation::get(i, "k", call, completion)
                }
            }
        })
        .collect()
}

#[test]
fn agrees_with_brute_force_on_small_random_histories() {
    let mut rng = Rng(42);
    let (mut yes, mut no) = (0, 0);
    for round in 0..20_000 {
        let h = random_small_history(&mut rng);
        let expected = brute_force(&h, 0, &None);
        let result = check(&h, &Limits::default());
        match (&result.outcome, expected) {
            (Outcome::Linearizable, true) => yes += 1,
            (Outcome::NotLinearizable { .. }, false) => no += 1,
            _ => panic!("round {round}: checker says {result}, brute force says {expected}: {h:#?}"),
        }
    }
    assert!(yes > 2_000 && no > 2_000, "{yes} linearizable, {no} not");
}

#[test]
fn extreme_times_and_empty_strings() {
    let h = [
        put(0, "", "", 0, u64::MAX),
        get(1, "", Some(""), u64::MAX, u64::MAX),
        get(2, "", None, 0, 0),
        put_unknown(3, "", "x", u64::MAX),
    ];
    assert_linearizable(&h);
    let mut out = Vec::new();
    write_jsonl(&mut out, &h).expect("writing to a Vec cannot fail");
    assert_eq!(read_jsonl(out.as_slice()).expect("round trip"), h);
    let h = [put(0, "", "", 0, 1), get(1, "", None, u64::MAX, u64::MAX)];
    assert_violation(&h, "", 1);
}
