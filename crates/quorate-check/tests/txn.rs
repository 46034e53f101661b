//! The transactional checker on crafted histories (one per anomaly class, each caught and
//! named), on valid ones, and on seeded serial histories that must always pass.

use quorate_check::txn::{
    AnomalyKind, LINE_BYTES_MAX, Limits, Mop, Status, Txn, Verdict, check, check_with, read_jsonl, write_jsonl,
};
use quorate_core::SplitMix64;
use std::collections::BTreeMap;

fn ap(k: &str, v: u64) -> Mop {
    Mop::append(k, v)
}
fn r(k: &str, l: &[u64]) -> Mop {
    Mop::read(k, l.to_vec())
}
/// A committed transaction that overlaps everything (call 0, return 1000): no real-time edge.
fn conc(client: u64, ops: Vec<Mop>) -> Txn {
    Txn::ok(client, 0, 1000, ops)
}

/// Checks `h` and asserts that exactly the `kinds` were found, each with evidence.
fn expect(h: &[Txn], kinds: &[AnomalyKind]) {
    let report = check(h);
    assert_eq!(report.verdict, Verdict::Anomalies, "{}", report.summary());
    assert_eq!(report.kinds(), kinds.to_vec(), "{}", report.summary());
    for a in &report.anomalies {
        assert!(!a.txns.is_empty() && !a.explanation.is_empty(), "{a}");
        assert!(report.summary().contains(a.kind.name()));
    }
}

fn cycle_of(h: &[Txn], kind: AnomalyKind) -> Vec<(usize, &'static str)> {
    let report = check(h);
    let a = report.anomalies.iter().find(|a| a.kind == kind).unwrap_or_else(|| panic!("{}", report.summary()));
    a.cycle.iter().map(|s| (s.from, s.edge.name())).collect()
}

#[test]
fn a_serial_history_is_strictly_serializable() {
    let h = vec![
        Txn::ok(0, 0, 10, vec![ap("x", 1), ap("y", 1)]),
        Txn::ok(1, 20, 30, vec![r("x", &[1]), r("y", &[1]), ap("x", 2)]),
        Txn::ok(2, 25, 35, vec![r("y", &[1])]),
        Txn::ok(0, 40, 50, vec![r("x", &[1, 2]), ap("y", 3), r("y", &[1, 3])]),
        Txn::fail(1, 60, 70, vec![ap("x", 9)]),
        Txn::info(2, 80, vec![ap("x", 4), Mop::read_unknown("y")]),
        Txn::ok(0, 90, 100, vec![r("x", &[1, 2, 4]), r("y", &[1, 3])]),
    ];
    let report = check(&h);
    assert!(report.pass(), "{}", report.summary());
    assert_eq!((report.txns, report.ok, report.failed, report.info, report.keys), (7, 5, 1, 1, 2));
    assert!(report.summary().starts_with("strictly serializable: 7 txns"), "{}", report.summary());
}

#[test]
fn g0_write_cycle() {
    // x's order says T0 then T1, y's says T1 then T0.
    let h = vec![
        conc(0, vec![ap("x", 1), ap("y", 1)]),
        conc(1, vec![ap("x", 2), ap("y", 2)]),
        conc(2, vec![r("x", &[1, 2])]),
        conc(3, vec![r("y", &[2, 1])]),
    ];
    expect(&h, &[AnomalyKind::G0]);
    let c = cycle_of(&h, AnomalyKind::G0);
    assert_eq!(c.len(), 2);
    assert!(c.iter().all(|(_, e)| *e == "ww"), "{c:?}");
}

#[test]
fn g1a_aborted_read() {
    let h = vec![Txn::fail(0, 0, 10, vec![ap("x", 1)]), Txn::ok(1, 20, 30, vec![r("x", &[1])])];
    expect(&h, &[AnomalyKind::G1a]);
}

#[test]
fn g1b_intermediate_read() {
    let h = vec![conc(0, vec![ap("x", 1), ap("x", 2)]), conc(1, vec![r("x", &[1])]), conc(2, vec![r("x", &[1, 2])])];
    expect(&h, &[AnomalyKind::G1b]);
}

#[test]
fn g1c_circular_information_flow() {
    // Each read the other's append.
    let h = vec![conc(0, vec![ap("x", 1), r("y", &[2])]), conc(1, vec![ap("y", 2), r("x", &[1])])];
    expect(&h, &[AnomalyKind::G1c]);
    let mut edges: Vec<_> = cycle_of(&h, AnomalyKind::G1c).into_iter().map(|(_, e)| e).collect();
    edges.sort_unstable();
    assert_eq!(edges, ["wr", "wr"]);
}

#[test]
fn g_single_read_skew() {
    // T0 appends to x and y atomically; T1 sees its y but not its x.
    let h = vec![
        conc(0, vec![ap("x", 1), ap("y", 1)]),
        conc(1, vec![r("x", &[]), r("y", &[1])]),
        conc(2, vec![r("x", &[1])]),
    ];
    expect(&h, &[AnomalyKind::GSingle]);
    let mut c = cycle_of(&h, AnomalyKind::GSingle);
    c.sort_unstable();
    assert_eq!(c, [(0, "wr"), (1, "rw")]);
}

#[test]
fn g_single_with_an_indeterminate_writer() {
    // The writer's outcome is unknown, but a read saw its append: it committed.
    let h = vec![
        Txn::info(0, 0, vec![ap("x", 1), ap("y", 1)]),
        conc(1, vec![r("x", &[]), r("y", &[1])]),
        conc(2, vec![r("x", &[1])]),
    ];
    expect(&h, &[AnomalyKind::GSingle]);
}

#[test]
fn g2_write_skew() {
    let h = vec![
        conc(0, vec![r("x", &[]), ap("y", 1)]),
        conc(1, vec![r("y", &[]), ap("x", 2)]),
        conc(2, vec![r("x", &[2]), r("y", &[1])]),
    ];
    expect(&h, &[AnomalyKind::G2]);
    let edges: Vec<_> = cycle_of(&h, AnomalyKind::G2).into_iter().map(|(_, e)| e).collect();
    assert_eq!(edges, ["rw", "rw"]);
}

#[test]
fn g_single_realtime_stale_read() {
    // T1 starts after T0 committed its append, and does not see it: serializable (T1 first),
    // not strictly serializable.
    let h = vec![
        Txn::ok(0, 0, 10, vec![ap("x", 1)]),
        Txn::ok(1, 20, 30, vec![r("x", &[])]),
        Txn::ok(2, 40, 50, vec![r("x", &[1])]),
    ];
    expect(&h, &[AnomalyKind::GSingleRealtime]);
    assert!(AnomalyKind::GSingleRealtime.realtime_only());
    let mut c = cycle_of(&h, AnomalyKind::GSingleRealtime);
    c.sort_unstable();
    assert_eq!(c, [(0, "rt"), (1, "rw")]);
}

#[test]
fn g0_realtime() {
    // x's order puts T1's append first, though T0 committed before T1 began.
    let h = vec![
        Txn::ok(0, 0, 10, vec![ap("x", 1)]),
        Txn::ok(1, 20, 30, vec![ap("x", 2)]),
        Txn::ok(2, 40, 50, vec![r("x", &[2, 1])]),
    ];
    expect(&h, &[AnomalyKind::G0Realtime]);
}

#[test]
fn g1c_realtime() {
    // T0 read T1's append although it finished before T1 began.
    let h = vec![Txn::ok(0, 0, 10, vec![r("x", &[1])]), Txn::ok(1, 20, 30, vec![ap("x", 1)])];
    expect(&h, &[AnomalyKind::G1cRealtime]);
}

#[test]
fn g2_realtime() {
    // T0 -rw-> T1 -rw-> T2 -rt-> T0.
    let h = vec![
        Txn::ok(0, 20, 30, vec![r("x", &[])]),
        Txn::ok(1, 0, 100, vec![ap("x", 1), r("y", &[])]),
        Txn::ok(2, 0, 10, vec![ap("y", 2)]),
        Txn::ok(3, 200, 210, vec![r("x", &[1]), r("y", &[2])]),
    ];
    expect(&h, &[AnomalyKind::G2Realtime]);
    let c = cycle_of(&h, AnomalyKind::G2Realtime);
    let mut edges: Vec<_> = c.iter().map(|(_, e)| *e).collect();
    edges.sort_unstable();
    assert_eq!(edges, ["rt", "rw", "rw"]);
}

#[test]
fn incompatible_orders() {
    let h = vec![
        conc(0, vec![ap("x", 1)]),
        conc(1, vec![ap("x", 2)]),
        conc(2, vec![r("x", &[1])]),
        conc(3, vec![r("x", &[2])]),
    ];
    expect(&h, &[AnomalyKind::IncompatibleOrder]);
}

#[test]
fn malformed_observations() {
    expect(&[conc(0, vec![ap("x", 1)]), conc(1, vec![r("x", &[1, 1])])], &[AnomalyKind::DuplicateElements]);
    expect(&[conc(1, vec![r("x", &[7])])], &[AnomalyKind::GarbageRead]);
    expect(&[conc(0, vec![ap("x", 1), r("x", &[])])], &[AnomalyKind::Internal]);
    expect(&[conc(0, vec![ap("x", 1)]), conc(1, vec![ap("x", 1)])], &[AnomalyKind::DuplicateAppend]);
}

#[test]
fn unread_indeterminate_and_failed_appends_constrain_nothing() {
    let h = vec![
        Txn::info(0, 0, vec![ap("x", 1)]),
        Txn::fail(1, 0, 5, vec![ap("x", 2)]),
        Txn::ok(2, 10, 20, vec![r("x", &[])]),
        Txn::ok(2, 30, 40, vec![ap("x", 3)]),
        Txn::ok(3, 50, 60, vec![r("x", &[3])]),
    ];
    assert!(check(&h).pass(), "{}", check(&h).summary());
}

#[test]
fn limits_give_too_large_not_a_verdict() {
    let h = vec![
        conc(0, vec![ap("x", 1), ap("y", 1)]),
        conc(1, vec![ap("x", 2), ap("y", 2)]),
        conc(2, vec![r("x", &[1, 2])]),
        conc(3, vec![r("y", &[2, 1])]),
    ];
    let small = Limits { txns_max: 3, ..Limits::default() };
    let rep = check_with(&h, small);
    assert!(matches!(&rep.verdict, Verdict::TooLarge { reason } if reason.contains("transactions")), "{rep:?}");
    assert!(rep.summary().starts_with("NOT CHECKED (too large"));
    let tiny = Limits { search_steps_max: 3, ..Limits::default() };
    assert!(matches!(check_with(&h, tiny).verdict, Verdict::TooLarge { .. }));
    // Anomalies found before the search limit stand, marked incomplete.
    let mut more = h.clone();
    more.push(Txn::fail(4, 0, 5, vec![ap("z", 9)]));
    more.push(Txn::ok(5, 10, 20, vec![r("z", &[9])]));
    let rep = check_with(&more, tiny);
    assert_eq!(rep.verdict, Verdict::Anomalies, "{}", rep.summary());
    assert!(rep.incomplete.is_some() && rep.summary().contains("search stopped early"), "{}", rep.summary());
    assert_eq!(rep.kinds(), vec![AnomalyKind::G1a]);
    let few_edges = Limits { edges_max: 1, ..Limits::default() };
    assert!(matches!(check_with(&h, few_edges).verdict, Verdict::TooLarge { .. }));
    let few_elements = Limits { elements_max: 5, ..Limits::default() };
    assert!(matches!(check_with(&h, few_elements).verdict, Verdict::TooLarge { .. }));
}

#[test]
fn jsonl_round_trip_and_refusals() {
    let h = vec![
        Txn::ok(0, 1, 2, vec![r("x", &[1]), ap("x", 2)]),
        Txn::fail(1, 3, 4, vec![ap("y", 1)]),
        Txn::info(2, 5, vec![ap("x", 3), Mop::read_unknown("x")]),
    ];
    let mut buf = Vec::new();
    write_jsonl(&mut buf, &h).unwrap();
    let text = String::from_utf8(buf.clone()).unwrap();
    assert!(text.starts_with(
        r#"{"client":0,"call":1,"return":2,"status":"ok","ops":[{"f":"r","key":"x","value":[1]},{"f":"append","key":"x","value":2}]}"#
    ));
    assert_eq!(read_jsonl(&buf[..], 10).unwrap(), h);
    assert!(read_jsonl(&buf[..], 2).is_err());
    for bad in [
        r#"{"client":0,"call":1,"return":null,"status":"ok","ops":[]}"#,
        r#"{"client":0,"call":5,"return":2,"status":"ok","ops":[]}"#,
        r#"{"client":0,"call":1,"return":2,"status":"info","ops":[]}"#,
        r#"{"client":0,"call":1,"return":2,"status":"ok","ops":[{"f":"cas"}]}"#,
        "not json",
    ] {
        assert!(read_jsonl(bad.as_bytes(), 10).is_err(), "{bad}");
    }
}

/// A history executed serially (each transaction atomically at a point inside its interval),
/// with concurrency, failures and unknown outcomes; `seed` chooses everything.
fn serial_history(seed: u64, txns: u64, keys: u64, clients: u64) -> Vec<Txn> {
    let mut rng = SplitMix64::new(seed);
    let mut state: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut next_value = 1u64;
    let mut out = Vec::new();
    for n in 0..txns {
        let point = 100 * (n + 1);
        let call = point - rng.below(250).min(point);
        let ret = point + rng.below(250);
        let client = rng.below(clients);
        let mut ops = Vec::new();
        for _ in 0..1 + rng.below(4) {
            let key = format!("k{}", rng.below(keys));
            if rng.chance(0.5) {
                ops.push(Mop::append(key, next_value));
                next_value += 1;
            } else {
                ops.push(Mop::read_unknown(key));
            }
        }
        let status = match rng.below(10) {
            0 => Status::Fail,
            1 => Status::Info,
            _ => Status::Ok,
        };
        // An unknown outcome took effect or not.
        let applied = status == Status::Ok || (status == Status::Info && rng.chance(0.5));
        if applied {
            for m in &mut ops {
                match m {
                    Mop::Append { key, value } => state.entry(key.clone()).or_default().push(*value),
                    Mop::R { key, value } => *value = Some(state.get(key.as_str()).cloned().unwrap_or_default()),
                    _ => unreachable!("only appends and reads are generated"),
                }
            }
        }
        if status != Status::Ok {
            for m in &mut ops {
                if let Mop::R { value, .. } = m {
                    *value = None;
                }
            }
        }
        out.push(match status {
            Status::Ok => Txn::ok(client, call, ret, ops),
            Status::Fail => Txn::fail(client, call, ret, ops),
            _ => Txn::info(client, call, ops),
        });
    }
    out
}

#[test]
fn seeded_serial_histories_always_pass() {
    for seed in 0..300 {
        let h = serial_history(seed, 60, 1 + seed % 5, 1 + seed % 7);
        let report = check(&h);
        assert!(report.pass(), "seed {seed}: {}", report.summary());
    }
    // One large history: the search stays cheap on a valid history.
    let h = serial_history(7, 20_000, 40, 16);
    let report = check(&h);
    assert!(report.pass(), "{}", report.summary());
    assert!(report.edges > 20_000, "{}", report.summary());
}

#[test]
fn a_stale_read_inserted_into_a_serial_history_is_caught() {
    // Evidence that the generator's histories are not vacuous: make one committed read miss
    // the last element it saw, an append whose transaction returned before the read was
    // called (so the read is stale in real time, not merely ordered earlier), and the checker
    // objects for every seed, with a stale read's evidence only: its rw edge to the element's
    // writer in a cycle (G-single-realtime through real time; G-single when the read also saw
    // that writer's append to another key; G2 variants when the cycle found has two rw edges),
    // or a lost append when no other read shows the element.
    let stale_kinds = [
        AnomalyKind::GSingle,
        AnomalyKind::G2,
        AnomalyKind::GSingleRealtime,
        AnomalyKind::G2Realtime,
        AnomalyKind::LostAppend,
    ];
    let mut caught = 0;
    for seed in 0..50 {
        let mut h = serial_history(seed, 60, 2, 4);
        // (transaction, micro-operation) of the last read that qualifies: it is the only
        // micro-operation on its key in its transaction (so no internal inconsistency is made),
        // and its last element's writer committed and returned before the read was called.
        let mut victim = None;
        for (i, t) in h.iter().enumerate() {
            if t.status != Status::Ok {
                continue;
            }
            for (j, m) in t.ops.iter().enumerate() {
                let Mop::R { key, value: Some(l) } = m else { continue };
                let Some(&last) = l.last() else { continue };
                if t.ops.iter().filter(|o| o.key() == key).count() != 1 {
                    continue;
                }
                let writer_of = |v: u64| {
                    h.iter().position(|w| {
                        w.ops.iter().any(|o| matches!(o, Mop::Append { key: k, value } if k == key && *value == v))
                    })
                };
                let Some(w) = writer_of(last) else { continue };
                // Not an intermediate read once cut: the element before `last` has another writer.
                let before = l.len().checked_sub(2).map(|p| writer_of(l[p]));
                if h[w].status == Status::Ok && h[w].ret.is_some_and(|r| r < t.call) && before != Some(Some(w)) {
                    victim = Some((i, j));
                }
            }
        }
        let Some((i, j)) = victim else { continue };
        if let Mop::R { value: Some(l), .. } = &mut h[i].ops[j] {
            l.pop();
        }
        let report = check(&h);
        assert!(!report.pass(), "seed {seed}: {}", report.summary());
        let kinds = report.kinds();
        assert!(kinds.iter().all(|k| stale_kinds.contains(k)), "seed {seed}: {}", report.summary());
        caught += 1;
    }
    assert!(caught > 40, "{caught}");
}

#[test]
fn lost_append_never_read_again() {
    // T0 committed an append before T1 began; T1 (and everyone after) reads x without it.
    let h = vec![
        Txn::ok(0, 0, 10, vec![ap("x", 1)]),
        Txn::ok(1, 20, 30, vec![r("x", &[])]),
        Txn::ok(2, 40, 50, vec![r("x", &[])]),
    ];
    expect(&h, &[AnomalyKind::LostAppend]);
    let report = check(&h);
    let a = &report.anomalies[0];
    assert_eq!(a.txns, vec![0, 1], "{a}");
    assert!(a.explanation.contains("appended 1 to x"), "{a}");
}

#[test]
fn lost_append_overwritten_by_later_appends() {
    // The append of 1 is gone; later appends are read without it (a write lost in a crash,
    // or a comparison ignored).
    let h = vec![
        Txn::ok(0, 0, 10, vec![ap("x", 1)]),
        Txn::ok(1, 20, 30, vec![ap("x", 2)]),
        Txn::ok(2, 40, 50, vec![r("x", &[2])]),
    ];
    expect(&h, &[AnomalyKind::LostAppend]);
}

#[test]
fn an_append_only_concurrent_reads_miss_is_not_lost() {
    // T1 began before T0 returned: it may be ordered first. Unknown and failed appends are
    // never required.
    let h = vec![
        Txn::ok(0, 0, 10, vec![ap("x", 1)]),
        Txn::ok(1, 5, 30, vec![r("x", &[])]),
        Txn::info(2, 0, vec![ap("x", 2)]),
        Txn::fail(3, 0, 5, vec![ap("x", 3)]),
        Txn::ok(4, 40, 50, vec![ap("y", 4)]),
    ];
    let report = check(&h);
    assert!(report.pass(), "{}", report.summary());
}

#[test]
fn lost_update_is_named() {
    // T1 and T2 both read x = [1] and both append: one of the two appends is lost.
    let base = vec![
        Txn::ok(0, 0, 10, vec![ap("x", 1)]),
        Txn::ok(1, 20, 30, vec![r("x", &[1]), ap("x", 2)]),
        Txn::ok(2, 20, 30, vec![r("x", &[1]), ap("x", 3)]),
    ];
    // Later reads show T1's append only: T2's is lost as well.
    let mut h = base.clone();
    h.push(Txn::ok(3, 40, 50, vec![r("x", &[1, 2])]));
    expect(&h, &[AnomalyKind::LostAppend, AnomalyKind::LostUpdate]);
    let report = check(&h);
    let lu = report.anomalies.iter().find(|a| a.kind == AnomalyKind::LostUpdate).unwrap();
    assert_eq!(lu.txns, vec![1, 2], "{lu}");
    assert!(lu.explanation.contains("x = [1]"), "{lu}");
    // Later reads show both (the store appended one after the other, though each transaction
    // read [1]): the lost update is named, and the cycle it makes is G-single.
    let mut h = base.clone();
    h.push(Txn::ok(3, 40, 50, vec![r("x", &[1, 2, 3])]));
    expect(&h, &[AnomalyKind::GSingle, AnomalyKind::LostUpdate]);
    // Reads disagree: incompatible orders, and the lost update.
    let mut h = base;
    h.push(Txn::ok(3, 40, 50, vec![r("x", &[1, 2])]));
    h.push(Txn::ok(4, 40, 50, vec![r("x", &[1, 3])]));
    expect(&h, &[AnomalyKind::IncompatibleOrder, AnomalyKind::LostUpdate]);
}

#[test]
fn the_step_budget_covers_external_reads() {
    // One transaction reads 300 keys: finding each read's place among its micro-operations is
    // quadratic work, with only two transactions and one edge for the cycle search.
    let keys: Vec<String> = (0..300).map(|i| format!("k{i}")).collect();
    let h = vec![
        Txn::ok(0, 0, 10, keys.iter().map(|k| ap(k, 1)).collect()),
        Txn::ok(1, 20, 30, keys.iter().map(|k| r(k, &[1])).collect()),
    ];
    assert!(check(&h).pass(), "{}", check(&h).summary());
    let small = Limits { search_steps_max: 1_000, ..Limits::default() };
    let rep = check_with(&h, small);
    assert!(matches!(&rep.verdict, Verdict::TooLarge { reason } if reason.contains("steps")), "{}", rep.summary());
}

#[test]
fn the_step_budget_covers_explanations() {
    // A G0 cycle whose explanation scans 1,000 appends of T1 before it finds the one on x.
    let mut t1: Vec<Mop> = (0..1_000).map(|i| ap(&format!("b{i}"), 1)).collect();
    t1.extend([ap("x", 2), ap("y", 2)]);
    let h = vec![
        conc(0, vec![ap("x", 1), ap("y", 1)]),
        conc(1, t1),
        conc(2, vec![r("x", &[1, 2])]),
        conc(3, vec![r("y", &[2, 1])]),
    ];
    let full = check(&h);
    assert_eq!(full.kinds(), vec![AnomalyKind::G0], "{}", full.summary());
    assert!(full.incomplete.is_none() && full.anomalies[0].explanation.contains("1 then 2"), "{}", full.summary());
    // Within a budget the search fits in but the explanation does not: the cycle stands,
    // unexplained, and the search is marked incomplete.
    let rep = check_with(&h, Limits { search_steps_max: 500, ..Limits::default() });
    assert_eq!(rep.kinds(), vec![AnomalyKind::G0], "{}", rep.summary());
    assert!(rep.incomplete.as_deref().is_some_and(|r| r.contains("steps")), "{}", rep.summary());
    assert!(rep.anomalies[0].explanation.contains("not explained"), "{}", rep.anomalies[0]);
}

/// A reader of `len` bytes of `x` then a line end, counting what was taken from it.
struct Counted {
    left: usize,
    taken: std::rc::Rc<std::cell::Cell<usize>>,
}

impl std::io::Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let n = buf.len().min(self.left);
        buf[..n].fill(b'x');
        if n == self.left {
            buf[n - 1] = b'\n';
        }
        self.left -= n;
        self.taken.set(self.taken.get() + n);
        Ok(n)
    }
}

#[test]
fn read_jsonl_bounds_a_huge_line() {
    let taken = std::rc::Rc::new(std::cell::Cell::new(0));
    let huge = Counted { left: 64 << 20, taken: taken.clone() };
    let err = read_jsonl(std::io::BufReader::new(huge), 10).unwrap_err();
    assert!(err.to_string().contains("longer than"), "{err}");
    // The line was refused after at most the limit and one buffer, not read whole.
    assert!(taken.get() <= LINE_BYTES_MAX + 3 + 8192, "{} bytes read", taken.get());
    // A line at the limit is read (and refused as not JSON, not as too long).
    let at_limit = Counted { left: LINE_BYTES_MAX + 1, taken: taken.clone() };
    let err = read_jsonl(std::io::BufReader::new(at_limit), 10).unwrap_err();
    assert!(!err.to_string().contains("longer than"), "{err}");
}
