//! The transaction workload: list-append transactions (Elle's design) encoded in Quorate's
//! `txn` request, recorded as a [`quorate_check::txn`] history and checked for strict
//! serializability after the run (`docs/chaos.md`, "Transactions").
//!
//! **Encoding.** A list is a key whose value is its elements as comma-separated decimal
//! `u64`s (`"3,17,42"`); an absent key is the empty list. Keys are `chaos/txn/<slot>/<gen>`:
//! [`TxnSpec::slots`] slots, each moving to a fresh key (the next generation) once its list
//! holds [`LIST_LEN_MAX`] elements, so lists stay short and the checker's work linear.
//!
//! A client picks 1 to 3 slots and either
//! * **reads** them: one read-only transaction of gets (linearizable, served by the leader),
//!   recorded as `[r k1 [..], r k2 [..]]`; or
//! * **appends** to them, optimistically: one transaction
//!   `if value(k) == last seen for every k then [get k.., put k (seen + v)..] else [get k..]`.
//!   When the comparisons hold, the gets (evaluated in the same atomic step, before the puts)
//!   return the lists the transaction appended to, and the history gets
//!   `[r k1 seen1, r k2 seen2, append k1 v1, append k2 v2]`; when they fail, the failure branch
//!   is a committed read-only transaction `[r k1 .., r k2 ..]` whose lists the client uses
//!   next time. Appended values are unique in the run.
//!
//! Outcomes follow the KV workload: acknowledged is `ok`; `ClientError::GaveUp` (no attempt
//! could have been applied) is `fail`; any other error is `info` (may have committed, reads
//! unknown).

use super::workload::{ClientFactory, History, Timeouts, write_completion};
use anyhow::{Context, Result};
use quorate_check::history::Completion;
use quorate_check::txn::{Mop, Txn as HTxn};
use quorate_client::{Client, ClientError, Compare, CompareOp, CompareTarget, Txn, TxnOp, TxnResult};
use quorate_core::SplitMix64;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// A slot moves to a new key once its list holds this many elements.
pub(crate) const LIST_LEN_MAX: usize = 32;

/// Most transactions the clients issue into one history (a bound on memory; once it is reached
/// they stop issuing, and the verdict says so). The final reads come on top: one per 128 keys.
pub(crate) const TXNS_MAX: usize = 200_000;

/// Most slots a transaction touches.
const SLOTS_PER_TXN_MAX: u64 = 3;

/// The principal of transaction client `i` (role write).
pub(crate) fn principal(i: u64) -> String {
    format!("chaos-t{i}")
}

/// What the transaction clients do.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TxnSpec {
    pub(crate) clients: u64,
    pub(crate) slots: u64,
    pub(crate) seed: u64,
}

/// The transactions of a run, capped at issue as the KV history is ([`History`]): a client
/// [`TxnHistory::reserve`]s room before it issues a transaction and records it however it ends.
/// A cap at record time dropped completed transactions, and a recorded read of a dropped
/// append was then a false `garbage-read`.
pub(crate) struct TxnHistory {
    txns: Mutex<Vec<HTxn>>,
    /// Most transactions the clients may issue ([`TXNS_MAX`]).
    cap: usize,
    reserved: AtomicUsize,
    capped: AtomicBool,
}

impl TxnHistory {
    pub(crate) fn new() -> TxnHistory {
        TxnHistory::with_cap(TXNS_MAX)
    }

    /// A history whose clients may issue at most `cap` transactions.
    pub(crate) fn with_cap(cap: usize) -> TxnHistory {
        TxnHistory { txns: Mutex::new(Vec::new()), cap, reserved: AtomicUsize::new(0), capped: AtomicBool::new(false) }
    }

    /// Room for one more transaction, taken before it is issued; `false` when the history is
    /// full (the client stops issuing).
    fn reserve(&self) -> bool {
        let taken =
            self.reserved.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < self.cap).then_some(n + 1));
        if taken.is_err() {
            self.capped.store(true, Ordering::Relaxed);
        }
        taken.is_ok()
    }

    /// Whether the clients reached the cap (stopped issuing before the run's end).
    pub(crate) fn capped(&self) -> bool {
        self.capped.load(Ordering::Relaxed)
    }

    /// The cap.
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    /// Records one completed transaction: one [`TxnHistory::reserve`]d before it was issued, or
    /// a final read (one per 128 keys the history touched).
    fn record(&self, t: HTxn) {
        self.txns.lock().unwrap_or_else(PoisonError::into_inner).push(t);
    }

    pub(crate) fn snapshot(&self) -> Vec<HTxn> {
        self.txns.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Writes the history as JSON lines.
    pub(crate) fn write(&self, path: &Path) -> Result<()> {
        let file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        quorate_check::txn::write_jsonl(std::io::BufWriter::new(file), &self.snapshot())
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

/// The key of `slot` at generation `generation`.
fn key_of(slot: u64, generation: u64) -> String {
    format!("chaos/txn/{slot:02}/{generation:05}")
}

/// A list as stored: comma-separated decimals.
pub(crate) fn encode(list: &[u64]) -> Vec<u8> {
    list.iter().map(u64::to_string).collect::<Vec<_>>().join(",").into_bytes()
}

/// A stored list; a value that is not one reads as `[u64::MAX]` (a value nobody appended,
/// which the checker reports as a garbage read).
pub(crate) fn decode(value: Option<&[u8]>) -> Vec<u64> {
    let Some(v) = value else { return Vec::new() };
    if v.is_empty() {
        return Vec::new();
    }
    let parsed: Option<Vec<u64>> =
        std::str::from_utf8(v).ok().and_then(|s| s.split(',').map(|e| e.parse().ok()).collect());
    parsed.unwrap_or_else(|| vec![u64::MAX])
}

/// Shared by the clients: each slot's generation and the next value to append.
struct Shared {
    generations: Vec<AtomicU64>,
    next_value: AtomicU64,
}

/// Runs `spec.clients` transaction clients until `stop` is set; how many transactions ended
/// `ok`, `fail`, `info`.
pub(crate) async fn run_clients(
    spec: TxnSpec,
    factory: ClientFactory,
    history: Arc<History>,
    txns: Arc<TxnHistory>,
    stop: Arc<AtomicBool>,
) -> Result<(u64, u64, u64)> {
    let shared = Arc::new(Shared {
        generations: (0..spec.slots.max(1)).map(|_| AtomicU64::new(0)).collect(),
        next_value: AtomicU64::new(1),
    });
    let mut tasks = Vec::new();
    for c in 0..spec.clients {
        let seed = spec.seed ^ 0x7458_0000 ^ (c + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let client = factory.client_as(&principal(c), &factory.workload_members, seed, Timeouts::WORKLOAD)?;
        let (history, txns, stop, shared) = (history.clone(), txns.clone(), stop.clone(), shared.clone());
        tasks.push(tokio::spawn(async move { one_client(c, client, seed, history, txns, stop, shared).await }));
    }
    let mut total = (0, 0, 0);
    for t in tasks {
        let (ok, failed, info) = t.await.context("a transaction client panicked")?;
        total = (total.0 + ok, total.1 + failed, total.2 + info);
    }
    Ok(total)
}

/// The lists a branch's gets returned, in order.
fn lists_of(results: &[TxnResult]) -> Vec<Vec<u64>> {
    results
        .iter()
        .filter_map(|r| match r {
            TxnResult::Get(kv) => Some(decode(kv.as_ref().map(|kv| kv.value.as_slice()))),
            _ => None,
        })
        .collect()
}

async fn one_client(
    id: u64,
    client: Client,
    seed: u64,
    history: Arc<History>,
    txns: Arc<TxnHistory>,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
) -> (u64, u64, u64) {
    let mut rng = SplitMix64::new(seed);
    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let (mut ok, mut failed, mut info) = (0, 0, 0);
    let slots = shared.generations.len() as u64;
    // Room in the history first: a transaction issued is always recorded.
    while !stop.load(Ordering::Relaxed) && txns.reserve() {
        let want = 1 + rng.below(SLOTS_PER_TXN_MAX.min(slots));
        let mut chosen: Vec<u64> = Vec::new();
        while (chosen.len() as u64) < want {
            let s = rng.below(slots);
            if !chosen.contains(&s) {
                chosen.push(s);
            }
        }
        let keyed: Vec<(u64, u64, String)> = chosen
            .iter()
            .map(|&s| {
                let g = shared.generations[s as usize].load(Ordering::Relaxed);
                (s, g, key_of(s, g))
            })
            .collect();
        let keys: Vec<String> = keyed.iter().map(|k| k.2.clone()).collect();
        let gets: Vec<TxnOp> = keys.iter().map(|k| TxnOp::Get { key: k.clone().into_bytes() }).collect();
        let read_only = rng.chance(0.3);
        let call = history.now();
        let recorded = if read_only {
            let r = client.txn(Txn { compare: Vec::new(), success: gets, failure: Vec::new() }).await;
            let ret = history.now();
            match r {
                Ok(out) => {
                    let lists = lists_of(&out.results);
                    let ops = keys.iter().zip(&lists).map(|(k, l)| Mop::read(k.clone(), l.clone())).collect();
                    for (k, l) in keys.iter().zip(lists) {
                        seen.insert(k.clone(), l);
                    }
                    ok += 1;
                    HTxn::ok(id, call, ret, ops)
                }
                Err(e) => {
                    let ops = keys.iter().map(|k| Mop::read_unknown(k.clone())).collect();
                    if matches!(e, ClientError::GaveUp { .. }) {
                        failed += 1;
                        HTxn::fail(id, call, ret, ops)
                    } else {
                        info += 1;
                        HTxn::info(id, call, ops)
                    }
                }
            }
        } else {
            let appends: Vec<(String, u64)> = keys
                .iter()
                .enumerate()
                .filter(|(i, _)| *i == 0 || rng.chance(0.7))
                .map(|(_, k)| (k.clone(), shared.next_value.fetch_add(1, Ordering::Relaxed)))
                .collect();
            let compare = keys
                .iter()
                .map(|k| {
                    let value = seen.get(k).filter(|l| !l.is_empty()).map(|l| encode(l));
                    Compare { key: k.clone().into_bytes(), target: CompareTarget::Value(value), op: CompareOp::Equal }
                })
                .collect();
            let mut success = gets.clone();
            for (k, v) in &appends {
                let mut l = seen.get(k).cloned().unwrap_or_default();
                l.push(*v);
                success.push(TxnOp::Put { key: k.clone().into_bytes(), value: encode(&l) });
            }
            let r = client.txn(Txn { compare, success, failure: gets }).await;
            let ret = history.now();
            match &r {
                Ok(out) => {
                    let lists = lists_of(&out.results);
                    let mut ops: Vec<Mop> =
                        keys.iter().zip(&lists).map(|(k, l)| Mop::read(k.clone(), l.clone())).collect();
                    for (k, l) in keys.iter().zip(&lists) {
                        seen.insert(k.clone(), l.clone());
                    }
                    if out.succeeded {
                        for (k, v) in &appends {
                            ops.push(Mop::append(k.clone(), *v));
                            seen.entry(k.clone()).or_default().push(*v);
                        }
                    }
                    ok += 1;
                    HTxn::ok(id, call, ret, ops)
                }
                Err(_) => {
                    let mut ops: Vec<Mop> = keys.iter().map(|k| Mop::read_unknown(k.clone())).collect();
                    ops.extend(appends.iter().map(|(k, v)| Mop::append(k.clone(), *v)));
                    // The KV workload's rule: gave up before any attempt → fail, else unknown.
                    match write_completion(&r, ret) {
                        Completion::Failed { .. } => {
                            failed += 1;
                            HTxn::fail(id, call, ret, ops)
                        }
                        _ => {
                            info += 1;
                            HTxn::info(id, call, ops)
                        }
                    }
                }
            }
        };
        // A slot whose list is long moves on to a fresh key.
        for (s, g, k) in &keyed {
            if seen.get(k).is_some_and(|l| l.len() >= LIST_LEN_MAX) {
                let _ =
                    shared.generations[*s as usize].compare_exchange(*g, g + 1, Ordering::Relaxed, Ordering::Relaxed);
                seen.remove(k);
            }
        }
        txns.record(recorded);
    }
    client.close();
    (ok, failed, info)
}

/// After healing: read-only transactions of every key the history touched (so the last
/// appends are observed and placed in each key's version order), each retried a few times;
/// recorded as client `client_id`. Whether every key was read.
pub(crate) async fn final_reads(client: &Client, client_id: u64, history: &History, txns: &TxnHistory) -> bool {
    let known: Vec<String> = {
        let mut keys: Vec<String> = txns
            .snapshot()
            .iter()
            .flat_map(|t| t.ops.iter().map(|m| m.key().to_string()).collect::<Vec<_>>())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    };
    let mut all_read = true;
    for chunk in known.chunks(quorate_api::limits::TXN_OPS_MAX) {
        let gets: Vec<TxnOp> = chunk.iter().map(|k| TxnOp::Get { key: k.clone().into_bytes() }).collect();
        let mut done = false;
        for _ in 0..5 {
            let call = history.now();
            let r = client.txn(Txn { compare: Vec::new(), success: gets.clone(), failure: Vec::new() }).await;
            let ret = history.now();
            if let Ok(out) = r {
                let lists = lists_of(&out.results);
                let ops = chunk.iter().zip(lists).map(|(k, l)| Mop::read(k.clone(), l)).collect();
                txns.record(HTxn::ok(client_id, call, ret, ops));
                done = true;
                break;
            }
        }
        all_read &= done;
    }
    all_read
}

#[cfg(test)]
mod tests {
    use super::{HTxn, Mop, TxnHistory, decode, encode};
    use quorate_check::txn::{AnomalyKind, check};

    #[test]
    fn a_full_history_stops_issuing_and_keeps_every_issued_transaction() {
        // Client A's append and client B's read are issued before the history is full; B
        // returns first, having read A's append (A's answer is slow). Both are recorded; a
        // third transaction is never issued.
        let h = TxnHistory::with_cap(2);
        assert!(h.reserve() && h.reserve());
        assert!(!h.reserve() && h.capped());
        let read = HTxn::ok(1, 20, 30, vec![Mop::read("k", vec![1])]);
        h.record(read.clone());
        h.record(HTxn::ok(0, 10, 40, vec![Mop::append("k", 1)]));
        // The final reads are recorded past the cap.
        h.record(HTxn::ok(2, 50, 60, vec![Mop::read("k", vec![1])]));
        assert_eq!(h.snapshot().len(), 3);
        let report = check(&h.snapshot());
        assert!(report.pass(), "{}", report.summary());
        // What a cap at record time did: A's completed append dropped, B's read of it kept, and
        // the checker reports a value nobody appended.
        assert_eq!(check(&[read]).kinds(), vec![AnomalyKind::GarbageRead]);
    }

    #[test]
    fn lists_round_trip() {
        assert_eq!(encode(&[3, 17, 42]), b"3,17,42");
        assert_eq!(decode(Some(b"3,17,42")), vec![3, 17, 42]);
        assert_eq!(decode(None), Vec::<u64>::new());
        assert_eq!(decode(Some(b"")), Vec::<u64>::new());
        assert_eq!(decode(Some(b"3,x")), vec![u64::MAX]);
    }
}
