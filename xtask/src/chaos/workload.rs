//! Concurrent clients doing put/get/delete/cas with unique values, every call recorded in a
//! [`History`] (the JSON-lines format of `docs/history-format.md`). Reusable by any run that
//! wants checked client traffic against a real cluster (chaos, upgrade checks).
//!
//! Outcomes are recorded conservatively: an acknowledged call is `ok`; a call the client gave
//! up on before any attempt could have been applied (`ClientError::GaveUp`) is a definite
//! failure; anything else (timeout, lost connection, an error after an ambiguous attempt) is
//! unknown (`return: null`), never a failure.

use anyhow::{Context, Result};
use quorate_check::history::{Completion, Operation, ReadCompletion};
use quorate_client::{Client, ClientConfig, ClientError, ReadConsistency};
use quorate_core::SplitMix64;
use quorate_log::NodeId;
use quorate_transport::{ClusterId, TlsPaths};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most operations the workload's clients issue into one history (a bound on memory: ~0.8 KiB
/// an operation in the harness and the checkers; once it is reached they stop issuing and the
/// run ends). The checks' own operations come on top ([`HISTORY_EXTRA_OPS_MAX`]).
pub(crate) const HISTORY_OPS_MAX: usize = 4_000_000;

/// Most operations [`recorded_get`] and [`recorded_put`] may issue past [`HISTORY_OPS_MAX`]: room
/// for the checks' recovery write and final reads (at most 10,000 keys × 10 attempts) after a
/// workload that filled the history.
pub(crate) const HISTORY_EXTRA_OPS_MAX: usize = 200_000;

/// The operations of a run on one monotonic clock (nanoseconds since the history began).
///
/// **Capped at issue, never at record.** A workload client [`History::reserve`]s room before it
/// issues an operation and records it once it completes, whatever the outcome. Dropping
/// completed operations at record time instead would lose a write that a recorded read then
/// returns (a value "nobody wrote": a false violation). So every recorded read's value comes
/// from a recorded write.
pub(crate) struct History {
    origin: Instant,
    /// The wall clock at `origin`, to line the history up with node logs.
    origin_wall: std::time::SystemTime,
    ops: Mutex<Vec<Operation>>,
    /// Most operations the workload may issue ([`HISTORY_OPS_MAX`]).
    cap: usize,
    /// Operations the workload issued (reserved).
    reserved: AtomicUsize,
    /// History time at which the workload first found it full (`u64::MAX` before).
    full_at_ns: std::sync::atomic::AtomicU64,
    full: tokio::sync::Notify,
    /// The workload's writes with their outcomes and revisions, for the watch check (one per
    /// write operation reserved: bounded as the operations are).
    writes: Mutex<Vec<WatchedWrite>>,
}

/// A workload write as the watch check sees it.
pub(crate) type WatchedWrite = quorate_check::watch::Write;

impl History {
    pub(crate) fn new() -> History {
        History::with_cap(HISTORY_OPS_MAX)
    }

    /// A history whose workload may issue at most `cap` operations.
    pub(crate) fn with_cap(cap: usize) -> History {
        History {
            origin: Instant::now(),
            origin_wall: std::time::SystemTime::now(),
            ops: Mutex::new(Vec::new()),
            cap,
            reserved: AtomicUsize::new(0),
            full_at_ns: std::sync::atomic::AtomicU64::new(u64::MAX),
            full: tokio::sync::Notify::new(),
            writes: Mutex::new(Vec::new()),
        }
    }

    /// Room for one more workload operation, taken before it is issued; `false` when the
    /// history is full (the client stops issuing, and the run's verdict says so).
    pub(crate) fn reserve(&self) -> bool {
        self.reserve_within(self.cap)
    }

    /// Room for one more operation of [`recorded_get`] or [`recorded_put`] (the checks' own, or
    /// another harness's), within the cap and [`HISTORY_EXTRA_OPS_MAX`] more.
    fn reserve_extra(&self) -> bool {
        self.reserve_within(self.cap.saturating_add(HISTORY_EXTRA_OPS_MAX))
    }

    fn reserve_within(&self, max: usize) -> bool {
        let taken = self.reserved.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < max).then_some(n + 1));
        if taken.is_err() {
            let first = self.full_at_ns.compare_exchange(u64::MAX, self.now(), Ordering::Relaxed, Ordering::Relaxed);
            if first.is_ok() {
                self.full.notify_waiters();
            }
        }
        taken.is_ok()
    }

    /// History time at which the history filled, if it did.
    pub(crate) fn full_at_ns(&self) -> Option<u64> {
        Some(self.full_at_ns.load(Ordering::Relaxed)).filter(|t| *t != u64::MAX)
    }

    /// Returns once the history is full (never if it does not fill): the run ends then, since
    /// faults after it would run without load.
    pub(crate) async fn filled(&self) {
        loop {
            let notified = self.full.notified();
            if self.full_at_ns().is_some() {
                return;
            }
            notified.await;
        }
    }

    /// The wall-clock time of history time 0, as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
    pub(crate) fn origin_utc(&self) -> String {
        let d = self.origin_wall.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let (secs, ms) = (d.as_secs(), d.subsec_millis());
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (y, m, dd) = civil_from_days(days as i64);
        format!("{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{ms:03}Z", rem / 3600, rem % 3600 / 60, rem % 60)
    }

    /// Nanoseconds on the history's clock.
    pub(crate) fn now(&self) -> u64 {
        self.origin.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64
    }

    /// Records one completed operation, [`History::reserve`]d before it was issued (or one of a
    /// harness's own, bounded by its loop).
    pub(crate) fn record(&self, op: Operation) {
        self.ops.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(op);
    }

    /// Records a workload write's outcome (with its revision when acknowledged).
    pub(crate) fn record_write(&self, key: &str, change: quorate_check::watch::Change, outcome: WriteOutcome) {
        let w = WatchedWrite { key: key.to_string(), change, outcome };
        self.writes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(w);
    }

    /// The workload's writes recorded so far.
    pub(crate) fn writes(&self) -> Vec<WatchedWrite> {
        self.writes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub(crate) fn len(&self) -> usize {
        self.ops.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }

    /// A copy of the operations, in the order recorded.
    pub(crate) fn snapshot(&self) -> Vec<Operation> {
        self.ops.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Writes the history as JSON lines.
    pub(crate) fn write(&self, path: &Path) -> Result<()> {
        let file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        quorate_check::history::write_jsonl(std::io::BufWriter::new(file), &self.snapshot())
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

/// Year, month, day of a count of days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Which keys the clients address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyChoice {
    /// Uniform over the keys.
    Mixed,
    /// 80% of operations on the first 2 keys, the rest uniform.
    HotKey,
}

/// Whose certificates the workload's clients use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Principals {
    /// Client `i` is the principal `chaos-c<i>` (role write): admission's per-principal
    /// budgets (rate, retries, fair share) apply to each client on its own, as they would to
    /// independent applications.
    PerClient,
    /// Every client is the one principal [`SHARED`] (role write), on purpose: one principal's
    /// budgets are shared by all of them (docs/chaos.md, "Principals").
    Shared,
}

impl Principals {
    /// The principal of workload client `i`.
    pub(crate) fn of(self, i: u64) -> String {
        match self {
            Principals::PerClient => format!("chaos-c{i}"),
            Principals::Shared => SHARED.to_string(),
        }
    }

    /// `quorate certs dev --clients` entries for `clients` workload clients.
    pub(crate) fn certs(self, clients: u64) -> Vec<String> {
        match self {
            Principals::PerClient => (0..clients).map(|i| format!("{}:write", self.of(i))).collect(),
            Principals::Shared => vec![format!("{SHARED}:write")],
        }
    }
}

/// The nemesis' and the replica check's principal (role admin).
pub(crate) const ADMIN: &str = "admin";
/// The principal every workload client shares with [`Principals::Shared`].
pub(crate) const SHARED: &str = "chaos-shared";
/// The checker's principal (recovery write, final reads; role write).
pub(crate) const CHECKER: &str = "chaos-checker";
/// The leader observer's principal (status polls; role read).
pub(crate) const OBSERVER: &str = "chaos-observer";

/// What the clients do.
#[derive(Clone, Debug)]
pub(crate) struct WorkloadSpec {
    pub(crate) clients: u64,
    pub(crate) keys: u64,
    pub(crate) choice: KeyChoice,
    pub(crate) reads: ReadConsistency,
    pub(crate) principals: Principals,
    pub(crate) seed: u64,
    /// Operations per client, at most.
    pub(crate) ops_per_client_max: u64,
}

/// A client's time limits and retries.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    pub(crate) request: Duration,
    pub(crate) connect: Duration,
    pub(crate) total: Duration,
    pub(crate) retries_max: u32,
}

impl Timeouts {
    /// The workload's: 1 s per attempt, 5 s per call, 20 retries, so that faults show up as
    /// unknown outcomes quickly instead of stalling the workload.
    pub(crate) const WORKLOAD: Timeouts = Timeouts {
        request: Duration::from_millis(1000),
        connect: Duration::from_millis(500),
        total: Duration::from_secs(5),
        retries_max: 20,
    };
    /// Status probes: one attempt of 300 ms (a paused node must not slow the observer down).
    pub(crate) const PROBE: Timeouts = Timeouts {
        request: Duration::from_millis(300),
        connect: Duration::from_millis(300),
        total: Duration::from_millis(300),
        retries_max: 0,
    };
}

/// How clients reach the cluster: its name, the certificates, the members' addresses.
#[derive(Clone, Debug)]
pub(crate) struct ClientFactory {
    pub(crate) cluster: String,
    pub(crate) certs: PathBuf,
    /// Every node id with its client address (bootstrap voters and spares): admin, probe and
    /// checker clients, which must reach any member and ask every node for its status.
    pub(crate) members: Vec<(u64, SocketAddr)>,
    /// The workload's clients know only these (the bootstrap voters, which stay members: only
    /// spares are removed); they reach a spare that leads through its leader hint. A spare
    /// not started yet would only cost them timeouts.
    pub(crate) workload_members: Vec<(u64, SocketAddr)>,
}

impl ClientFactory {
    /// An [`ADMIN`] client with the workload's limits ([`Timeouts::WORKLOAD`]).
    pub(crate) fn client(&self, seed: u64) -> Result<Client> {
        self.client_to(&self.members, seed)
    }

    /// An [`ADMIN`] client that knows only `members`.
    pub(crate) fn client_to(&self, members: &[(u64, SocketAddr)], seed: u64) -> Result<Client> {
        self.client_as(ADMIN, members, seed, Timeouts::WORKLOAD)
    }

    /// A client with the certificate of `principal` (`client-<principal>.crt`, made by
    /// `quorate certs dev --clients`).
    pub(crate) fn client_as(
        &self,
        principal: &str,
        members: &[(u64, SocketAddr)],
        seed: u64,
        t: Timeouts,
    ) -> Result<Client> {
        let tls = TlsPaths {
            ca: self.certs.join("ca.crt"),
            cert: self.certs.join(format!("client-{principal}.crt")),
            key: self.certs.join(format!("client-{principal}.key")),
        };
        let members = members
            .iter()
            .map(|(id, a)| Ok((NodeId::new(*id).context("node ids start at 1")?, *a)))
            .collect::<Result<_>>()?;
        let mut config = ClientConfig::new(ClusterId::new(&self.cluster)?, members, tls);
        config.request_timeout = t.request;
        config.connect_timeout = t.connect;
        config.total_timeout = t.total;
        config.retries_max = t.retries_max;
        config.seed = Some(seed);
        Client::new(config).with_context(|| format!("cannot make a client for principal {principal}"))
    }
}

/// The key of index `i`.
pub(crate) fn key_name(i: u64) -> String {
    format!("chaos/k{i:03}")
}

fn pick_key(rng: &mut SplitMix64, spec: &WorkloadSpec) -> u64 {
    match spec.choice {
        KeyChoice::HotKey if spec.keys > 2 && rng.chance(0.8) => rng.below(2),
        _ => rng.below(spec.keys.max(1)),
    }
}

use quorate_check::watch::{Change, Outcome as WriteOutcome};

/// How a write call ended, for the watch check: acknowledged at `revision` (`changed`: it
/// changed the key), definitely not applied (`GaveUp`), or unknown.
fn write_outcome<T>(r: &Result<T, ClientError>, changed: impl Fn(&T) -> Option<u64>) -> WriteOutcome {
    match r {
        Ok(t) => changed(t).map_or(WriteOutcome::Failed, WriteOutcome::Acked),
        Err(ClientError::GaveUp { .. }) => WriteOutcome::Failed,
        Err(_) => WriteOutcome::Unknown,
    }
}

/// How a put or delete call ended, for the history: `GaveUp` (no attempt could have been
/// applied) is a definite failure, any other error unknown.
pub(crate) fn write_completion<T>(r: &Result<T, ClientError>, ret: u64) -> Completion {
    match r {
        Ok(_) => Completion::Ok { ret },
        Err(ClientError::GaveUp { .. }) => Completion::Failed { ret },
        Err(_) => Completion::Unknown,
    }
}

/// A get through `client`, recorded; `None` when it had no answer, or was not issued because
/// the history is full ([`HISTORY_EXTRA_OPS_MAX`] past the cap).
pub(crate) async fn recorded_get(
    history: &History,
    client: &Client,
    id: u64,
    key: &str,
    reads: ReadConsistency,
) -> Option<Option<String>> {
    if !history.reserve_extra() {
        return None;
    }
    let call = history.now();
    let r = client.get(key, reads).await;
    let ret = history.now();
    let completion = match &r {
        Ok(got) => ReadCompletion::Returned {
            ret,
            output: got.kv.as_ref().map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
        },
        Err(_) => ReadCompletion::Unknown,
    };
    let out = match &completion {
        ReadCompletion::Returned { output, .. } => Some(output.clone()),
        _ => None,
    };
    history.record(Operation::get(id, key, call, completion));
    out
}

/// A put through `client`, recorded; whether it was acknowledged (`false` without issuing it
/// when the history is full, [`HISTORY_EXTRA_OPS_MAX`] past the cap).
pub(crate) async fn recorded_put(history: &History, client: &Client, id: u64, key: &str, value: &str) -> bool {
    if !history.reserve_extra() {
        return false;
    }
    let call = history.now();
    let r = client.put(key, value).await;
    let c = write_completion(&r, history.now());
    history.record(Operation::put(id, key, value, call, c));
    r.is_ok()
}

/// Counts of what the clients did.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counts {
    pub(crate) ok: u64,
    pub(crate) failed: u64,
    pub(crate) unknown: u64,
}

/// Runs `spec.clients` clients until `stop` is set or each has done its operations.
pub(crate) async fn run_clients(
    spec: WorkloadSpec,
    factory: ClientFactory,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
) -> Result<Counts> {
    let mut tasks = Vec::new();
    for c in 0..spec.clients {
        let seed = spec.seed ^ (c + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let client = factory.client_as(&spec.principals.of(c), &factory.workload_members, seed, Timeouts::WORKLOAD)?;
        let (spec, history, stop) = (spec.clone(), history.clone(), stop.clone());
        tasks.push(tokio::spawn(async move { one_client(c, client, spec, history, stop).await }));
    }
    let mut total = Counts::default();
    for t in tasks {
        let c = t.await.context("a client task panicked")?;
        total.ok += c.ok;
        total.failed += c.failed;
        total.unknown += c.unknown;
    }
    Ok(total)
}

async fn one_client(
    id: u64,
    client: Client,
    spec: WorkloadSpec,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
) -> Counts {
    let mut rng = SplitMix64::new(spec.seed.wrapping_add(id.wrapping_mul(0xA24B_AED4_963E_E407)));
    let mut seen: BTreeMap<u64, String> = BTreeMap::new();
    let mut counts = Counts::default();
    let mut count = |op: &Operation| {
        match op.ret() {
            None => counts.unknown += 1,
            Some(_) if op_ok(op) => counts.ok += 1,
            Some(_) => counts.failed += 1,
        };
    };
    for n in 0..spec.ops_per_client_max {
        // Room in the history first: an operation issued is always recorded.
        if stop.load(Ordering::Relaxed) || !history.reserve() {
            break;
        }
        let k = pick_key(&mut rng, &spec);
        let key = key_name(k);
        let value = format!("c{id}-{n}");
        let roll = rng.below(100);
        let call = history.now();
        let op = if roll < 40 {
            let r = client.get(&key, spec.reads).await;
            let ret = history.now();
            let completion = match r {
                Ok(got) => {
                    let output = got.kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
                    match &output {
                        Some(v) => seen.insert(k, v.clone()),
                        None => seen.remove(&k),
                    };
                    ReadCompletion::Returned { ret, output }
                }
                Err(_) => ReadCompletion::Unknown,
            };
            Operation::get(id, &key, call, completion)
        } else if roll < 65 || (roll >= 75 && !seen.contains_key(&k)) {
            let r = client.put(&key, &value).await;
            let c = write_completion(&r, history.now());
            history.record_write(&key, Change::Put(value.clone()), write_outcome(&r, |rev| Some(*rev)));
            if r.is_ok() {
                seen.insert(k, value.clone());
            }
            Operation::put(id, &key, &value, call, c)
        } else if roll < 75 {
            let r = client.delete(&key).await;
            let c = write_completion(&r, history.now());
            history.record_write(&key, Change::Delete, write_outcome(&r, |d| d.existed.then_some(d.revision)));
            if r.is_ok() {
                seen.remove(&k);
            }
            Operation::delete(id, &key, call, c)
        } else {
            let expected = seen.get(&k).cloned().unwrap_or_default();
            let r = client.cas(&key, Some(expected.as_bytes()), &value).await;
            // A cas the client gave up on was never compared: unknown, not `ok: false`.
            let c = match &r {
                Ok(s) if s.succeeded => Completion::Ok { ret: history.now() },
                Ok(_) => Completion::Failed { ret: history.now() },
                Err(_) => Completion::Unknown,
            };
            history.record_write(
                &key,
                Change::Put(value.clone()),
                write_outcome(&r, |s| s.succeeded.then_some(s.revision)),
            );
            match &r {
                Ok(s) if s.succeeded => {
                    seen.insert(k, value.clone());
                }
                _ => {
                    seen.remove(&k);
                }
            }
            Operation::cas(id, &key, expected, &value, call, c)
        };
        count(&op);
        history.record(op);
    }
    client.close();
    counts
}

fn op_ok(op: &Operation) -> bool {
    use quorate_check::history::OpKind;
    match &op.kind {
        OpKind::Get { .. } => true,
        OpKind::Put { completion, .. } | OpKind::Delete { completion } | OpKind::Cas { completion, .. } => {
            matches!(completion, Completion::Ok { .. })
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::History;
    use quorate_check::history::{Completion, Operation, ReadCompletion};
    use quorate_check::linearizability::{Limits, check};

    #[test]
    fn a_full_history_stops_issuing_and_keeps_every_issued_operation() {
        // Client A's put and client B's get are issued before the history is full; B's get
        // returns first with A's value (A's answer is slow). Both are recorded, so the value
        // B read has its write; a third operation is never issued.
        let h = History::with_cap(2);
        assert!(h.reserve() && h.reserve());
        assert!(!h.reserve() && h.full_at_ns().is_some());
        let full_at = h.full_at_ns().expect("full");
        assert!(full_at <= h.now());
        // The run waiting on the history wakes at once.
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
        rt.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(5), h.filled()).await })
            .expect("filled");
        let read = Operation::get(1, "k", 20, ReadCompletion::Returned { ret: 30, output: Some("a".into()) });
        let put = Operation::put(0, "k", "a", 10, Completion::Ok { ret: 40 });
        h.record(read.clone());
        h.record(put);
        // The checks' final read is recorded past the cap.
        h.record(Operation::get(2, "k", 50, ReadCompletion::Returned { ret: 60, output: Some("a".into()) }));
        assert_eq!(h.len(), 3);
        assert!(check(&h.snapshot(), &Limits::default()).is_linearizable());
        // What a cap at record time did: A's completed put dropped, B's read of it kept, and the
        // history is not linearizable though the store was.
        assert!(!check(&[read], &Limits::default()).is_linearizable());
    }

    #[test]
    fn civil_dates() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(20_791), (2026, 12, 4));
        assert_eq!(super::civil_from_days(11_016), (2000, 2, 29));
    }
}
