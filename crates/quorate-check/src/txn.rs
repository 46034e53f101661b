//! Transactional histories and a serializability checker for them (list-append, after Jepsen's
//! Elle: Kingsbury and Alvaro, "Elle: Inferring Isolation Anomalies from Experimental
//! Observations", VLDB 2020). Our own code; the inference rules are Elle's.
//!
//! # The model
//!
//! Every key holds a list of `u64`s. A transaction ([`Txn`]) is a sequence of micro-operations
//! ([`Mop`]): *append* a value to a key's list, or *read* a key's whole list. Every appended
//! value is unique in the history (per key), so a read names exactly which appends it saw, and
//! in which order. A transaction completes `ok` (committed), `fail` (definitely did not take
//! effect) or `info` (unknown outcome: it may have committed, at any time after its call; its
//! reads are unknown).
//!
//! # What the checker infers ([`check`])
//!
//! * **Version order.** Committed reads of a key must all be prefixes of one another (else
//!   [`AnomalyKind::IncompatibleOrder`]); the longest one is the key's version order.
//! * **Dependency graph** over the committed transactions (`ok`, and `info` ones whose appends
//!   someone read), with four kinds of edge:
//!   * `ww` T1 → T2: T2 appended the version right after T1's, on some key;
//!   * `wr` T1 → T2: T2's read of a key (before T2 itself appended to it) ends with T1's append;
//!   * `rw` T1 → T2 (anti-dependency): T1 read a key up to some version and T2 appended the
//!     next one;
//!   * `rt` T1 → T2 (real time): T1 completed before T2 was called (kept transitively reduced,
//!     as Elle does).
//! * **Cycles**, found per strongly connected component and named by their edges: [`G0`]
//!   (write cycle, ww only), [`G1c`] (ww/wr, at least one wr), [`G-single`] (exactly one rw
//!   edge), [`G2`] (two or more rw edges); each also as a `-realtime` variant when the cycle
//!   needs a real-time edge (a violation of *strict* serializability only).
//! * **Non-cycle anomalies**: [`G1a`] (a committed read saw a value of a failed transaction),
//!   [`G1b`] (a committed read ended on a value its writer later overwrote in the same
//!   transaction), plus malformed observations: duplicate elements in a read, a value nobody
//!   appended, a transaction that does not see its own appends (`internal`), a value appended
//!   twice.
//! * **Lost writes**, which leave no edge to find a cycle with: [`lost-append`] (a committed
//!   append that no committed read ever shows, although a committed read of its key began after
//!   it returned) and [`lost-update`] (two committed transactions read the same version of a key
//!   and both appended to it: in any serial order the second would have seen the first's
//!   append). A committed append missing from a later read that *some* read does show is a stale
//!   read, reported by its cycle (`G-single-realtime`: the read's `rw` edge to the next version's
//!   writer, and real time back).
//!
//! A history with none of these is strictly serializable under list-append's rules: there is a
//! total order of the committed transactions, consistent with real time, in which every read
//! sees exactly the appends ordered before it.
//!
//! # Bounds
//!
//! Everything is bounded ([`Limits`]): the number of transactions, the micro-operations and read
//! elements, the edges of the graph and the steps of the work that is not one pass over the
//! history (finding each transaction's external reads, the cycle search, and the explanation of
//! each cycle found). Past any bound the outcome is [`Verdict::TooLarge`], never unbounded memory
//! or time; [`read_jsonl`] bounds each line it reads.
//!
//! [`G0`]: AnomalyKind::G0
//! [`G1a`]: AnomalyKind::G1a
//! [`G1b`]: AnomalyKind::G1b
//! [`G1c`]: AnomalyKind::G1c
//! [`G-single`]: AnomalyKind::GSingle
//! [`G2`]: AnomalyKind::G2
//! [`lost-append`]: AnomalyKind::LostAppend
//! [`lost-update`]: AnomalyKind::LostUpdate
//!
//! ```
//! use quorate_check::txn::{Mop, Txn, Verdict, check};
//!
//! // T0 appends 1 to x; T1 reads [1] and appends 2; T2 reads [1, 2].
//! let h = vec![
//!     Txn::ok(0, 0, 10, vec![Mop::append("x", 1)]),
//!     Txn::ok(1, 20, 30, vec![Mop::read("x", vec![1]), Mop::append("x", 2)]),
//!     Txn::ok(2, 40, 50, vec![Mop::read("x", vec![1, 2])]),
//! ];
//! let report = check(&h);
//! assert!(matches!(report.verdict, Verdict::Serializable), "{}", report.summary());
//! ```

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::{self, BufRead, Read, Write};

use serde::{Deserialize, Serialize};

/// The most transactions [`check`] accepts by default.
pub const TXNS_MAX: usize = 1_000_000;
/// The most micro-operations plus read elements [`check`] accepts by default.
pub const ELEMENTS_MAX: usize = 20_000_000;
/// The most edges of the dependency graph by default.
pub const EDGES_MAX: usize = 20_000_000;
/// The most steps of the checker's superlinear work by default: operations scanned for external
/// reads and for explanations, nodes and edges visited by the cycle search.
pub const SEARCH_STEPS_MAX: u64 = 200_000_000;
/// The most anomalies of one kind reported (the rest are counted).
pub const ANOMALIES_PER_KIND_MAX: usize = 8;
/// The longest line [`read_jsonl`] accepts, in bytes.
pub const LINE_BYTES_MAX: usize = 1 << 20;

/// How a transaction completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Status {
    /// Committed: acknowledged by the store.
    Ok,
    /// Definitely did not take effect.
    Fail,
    /// Unknown outcome: may have committed, at any time after its call.
    Info,
}

/// One micro-operation of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "lowercase")]
#[non_exhaustive]
pub enum Mop {
    /// Append `value` to the list at `key`.
    Append {
        /// The key.
        key: String,
        /// The value appended (unique per key in the history).
        value: u64,
    },
    /// Read the list at `key`.
    R {
        /// The key.
        key: String,
        /// The list read (an absent key reads as empty); `None` when unknown (a transaction of
        /// unknown outcome, or one that failed).
        value: Option<Vec<u64>>,
    },
}

impl Mop {
    /// An append.
    #[must_use]
    pub fn append(key: impl Into<String>, value: u64) -> Mop {
        Mop::Append { key: key.into(), value }
    }

    /// A read that returned `list`.
    #[must_use]
    pub fn read(key: impl Into<String>, list: Vec<u64>) -> Mop {
        Mop::R { key: key.into(), value: Some(list) }
    }

    /// A read whose result is unknown.
    #[must_use]
    pub fn read_unknown(key: impl Into<String>) -> Mop {
        Mop::R { key: key.into(), value: None }
    }

    /// The key addressed.
    #[must_use]
    pub fn key(&self) -> &str {
        match self {
            Mop::Append { key, .. } | Mop::R { key, .. } => key,
        }
    }
}

/// One transaction of a history: who, when, how it completed and its micro-operations.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Txn {
    /// The client (process) that issued it.
    pub client: u64,
    /// When it was called, in nanoseconds on the history's monotonic clock.
    pub call: u64,
    /// When its answer arrived (`None`: no answer, the outcome is unknown).
    #[serde(rename = "return")]
    pub ret: Option<u64>,
    /// How it completed.
    pub status: Status,
    /// Its micro-operations, in order.
    pub ops: Vec<Mop>,
}

impl Txn {
    /// A committed transaction.
    #[must_use]
    pub fn ok(client: u64, call: u64, ret: u64, ops: Vec<Mop>) -> Txn {
        Txn { client, call, ret: Some(ret), status: Status::Ok, ops }
    }

    /// A transaction that definitely did not take effect.
    #[must_use]
    pub fn fail(client: u64, call: u64, ret: u64, ops: Vec<Mop>) -> Txn {
        Txn { client, call, ret: Some(ret), status: Status::Fail, ops }
    }

    /// A transaction of unknown outcome (its reads are ignored).
    #[must_use]
    pub fn info(client: u64, call: u64, ops: Vec<Mop>) -> Txn {
        Txn { client, call, ret: None, status: Status::Info, ops }
    }

    /// Whether it has a read with a known result (as opposed to appends only).
    #[must_use]
    pub fn reads(&self) -> bool {
        self.ops.iter().any(|m| matches!(m, Mop::R { value: Some(_), .. }))
    }
}

/// Why a history could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TxnHistoryError {
    /// Reading failed.
    #[error("cannot read the history: {0}")]
    Io(#[from] io::Error),
    /// A line is not a transaction record, or is inconsistent.
    #[error("line {line}: {detail}")]
    Line {
        /// The line number (1-based).
        line: usize,
        /// What is wrong.
        detail: String,
    },
    /// Over a limit.
    #[error("the history is too large: {0}")]
    TooLarge(String),
}

/// Writes a history as JSON lines, one transaction a line:
/// `{"client":0,"call":1,"return":2,"status":"ok","ops":[{"f":"r","key":"x","value":[1]},{"f":"append","key":"x","value":2}]}`.
pub fn write_jsonl<W: Write>(mut w: W, txns: &[Txn]) -> io::Result<()> {
    for t in txns {
        serde_json::to_writer(&mut w, t)?;
        w.write_all(b"\n")?;
    }
    w.flush()
}

/// Reads a history written by [`write_jsonl`], at most `txns_max` transactions. Never panics;
/// reads at most [`LINE_BYTES_MAX`] bytes (and its line end) of a line before refusing it, so a
/// huge line costs bounded memory.
pub fn read_jsonl<R: BufRead>(mut r: R, txns_max: usize) -> Result<Vec<Txn>, TxnHistoryError> {
    let mut out = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut n = 0usize;
    loop {
        buf.clear();
        // The line, its `\r\n` and one byte more: enough to tell a line that is too long.
        let read_max = LINE_BYTES_MAX as u64 + 3;
        let got = (&mut r).take(read_max).read_until(b'\n', &mut buf)?;
        if got == 0 {
            break;
        }
        n += 1;
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        }
        if buf.len() > LINE_BYTES_MAX {
            return Err(TxnHistoryError::Line { line: n, detail: format!("longer than {LINE_BYTES_MAX} bytes") });
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if out.len() >= txns_max {
            return Err(TxnHistoryError::TooLarge(format!("more than {txns_max} transactions")));
        }
        let t: Txn =
            serde_json::from_slice(&buf).map_err(|e| TxnHistoryError::Line { line: n, detail: e.to_string() })?;
        match (t.status, t.ret) {
            (Status::Info, Some(_)) => {
                return Err(TxnHistoryError::Line { line: n, detail: "an info transaction has no return".into() });
            }
            (Status::Ok | Status::Fail, None) => {
                return Err(TxnHistoryError::Line { line: n, detail: "ok and fail need a return time".into() });
            }
            (_, Some(ret)) if ret < t.call => {
                return Err(TxnHistoryError::Line { line: n, detail: "return before call".into() });
            }
            _ => {}
        }
        out.push(t);
    }
    Ok(out)
}

/// What the checker may spend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most transactions.
    pub txns_max: usize,
    /// Most micro-operations plus read elements.
    pub elements_max: usize,
    /// Most edges of the dependency graph.
    pub edges_max: usize,
    /// Most steps of the work beyond one pass over the history: operations scanned to find
    /// external reads and to explain cycles, nodes and edges visited by the cycle search.
    pub search_steps_max: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            txns_max: TXNS_MAX,
            elements_max: ELEMENTS_MAX,
            edges_max: EDGES_MAX,
            search_steps_max: SEARCH_STEPS_MAX,
        }
    }
}

/// A kind of dependency edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Edge {
    /// Write-write: the second appended the next version.
    Ww,
    /// Write-read: the second read the first's append (as the last element).
    Wr,
    /// Read-write anti-dependency: the second appended the version after the one the first read.
    Rw,
    /// Real time: the first completed before the second was called.
    Rt,
}

impl Edge {
    const ALL: [Edge; 4] = [Edge::Ww, Edge::Wr, Edge::Rw, Edge::Rt];

    fn bit(self) -> u8 {
        match self {
            Edge::Ww => 1,
            Edge::Wr => 2,
            Edge::Rw => 4,
            Edge::Rt => 8,
        }
    }

    /// Its name: `ww`, `wr`, `rw`, `rt`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Edge::Ww => "ww",
            Edge::Wr => "wr",
            Edge::Rw => "rw",
            Edge::Rt => "rt",
        }
    }
}

const WW: u8 = 1;
const WR: u8 = 2;
const RW: u8 = 4;
const RT: u8 = 8;

/// A kind of anomaly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum AnomalyKind {
    /// A cycle of ww edges (dirty write).
    G0,
    /// A committed read saw a value appended by a failed transaction (aborted read).
    G1a,
    /// A committed read ended on a value its writer overwrote later in the same transaction
    /// (intermediate read).
    G1b,
    /// A cycle of ww and wr edges with at least one wr (circular information flow).
    G1c,
    /// A cycle with exactly one rw edge, the rest ww/wr (read skew, lost update...).
    GSingle,
    /// A cycle with two or more rw edges, the rest ww/wr (write skew...).
    G2,
    /// [`AnomalyKind::G0`] that needs a real-time edge.
    G0Realtime,
    /// [`AnomalyKind::G1c`] that needs a real-time edge.
    G1cRealtime,
    /// [`AnomalyKind::GSingle`] that needs a real-time edge (e.g. a stale read).
    GSingleRealtime,
    /// [`AnomalyKind::G2`] that needs a real-time edge.
    G2Realtime,
    /// Two committed reads of a key neither of which is a prefix of the other.
    IncompatibleOrder,
    /// A read holds the same value twice.
    DuplicateElements,
    /// A read holds a value no transaction appended.
    GarbageRead,
    /// A transaction's read disagrees with its own earlier reads and appends.
    Internal,
    /// The same value appended to a key twice (a malformed history).
    DuplicateAppend,
    /// A committed append that no committed read shows, although a committed read of its key
    /// began after the append's transaction returned (a lost write).
    LostAppend,
    /// Two committed transactions read the same version of a key and both appended to it.
    LostUpdate,
}

impl AnomalyKind {
    /// Its name, as Elle spells it where Elle has one.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::G0 => "G0",
            AnomalyKind::G1a => "G1a",
            AnomalyKind::G1b => "G1b",
            AnomalyKind::G1c => "G1c",
            AnomalyKind::GSingle => "G-single",
            AnomalyKind::G2 => "G2",
            AnomalyKind::G0Realtime => "G0-realtime",
            AnomalyKind::G1cRealtime => "G1c-realtime",
            AnomalyKind::GSingleRealtime => "G-single-realtime",
            AnomalyKind::G2Realtime => "G2-realtime",
            AnomalyKind::IncompatibleOrder => "incompatible-order",
            AnomalyKind::DuplicateElements => "duplicate-elements",
            AnomalyKind::GarbageRead => "garbage-read",
            AnomalyKind::Internal => "internal",
            AnomalyKind::DuplicateAppend => "duplicate-append",
            AnomalyKind::LostAppend => "lost-append",
            AnomalyKind::LostUpdate => "lost-update",
        }
    }

    /// Whether it only violates *strict* serializability (the history may still be
    /// serializable).
    #[must_use]
    pub fn realtime_only(self) -> bool {
        matches!(
            self,
            AnomalyKind::G0Realtime | AnomalyKind::G1cRealtime | AnomalyKind::GSingleRealtime | AnomalyKind::G2Realtime
        )
    }

    fn of_cycle(rw: usize, wr: usize, rt: usize) -> AnomalyKind {
        match (rw, wr > 0, rt > 0) {
            (0, false, false) => AnomalyKind::G0,
            (0, true, false) => AnomalyKind::G1c,
            (1, _, false) => AnomalyKind::GSingle,
            (_, _, false) => AnomalyKind::G2,
            (0, false, true) => AnomalyKind::G0Realtime,
            (0, true, true) => AnomalyKind::G1cRealtime,
            (1, _, true) => AnomalyKind::GSingleRealtime,
            (_, _, true) => AnomalyKind::G2Realtime,
        }
    }
}

impl fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One step of a cycle: from transaction `from` (its index in the history) along an edge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The transaction, by index in the history.
    pub from: usize,
    /// The edge taken to the next step's transaction.
    pub edge: Edge,
    /// Why the edge exists (key and values).
    pub why: String,
}

/// One anomaly, with its evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anomaly {
    /// What kind.
    pub kind: AnomalyKind,
    /// The cycle (empty for a non-cycle anomaly): each step's edge leads to the next step's
    /// transaction, the last one's back to the first.
    pub cycle: Vec<Step>,
    /// The transactions involved (indexes in the history).
    pub txns: Vec<usize>,
    /// A readable account of the evidence (for a cycle: its edges, each with its key and
    /// values).
    pub explanation: String,
    /// The transactions of the cycle in full (empty for a non-cycle anomaly).
    pub detail: String,
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.explanation)
    }
}

/// The outcome of [`check`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// No anomaly: the committed transactions are strictly serializable.
    Serializable,
    /// Anomalies were found ([`Report::anomalies`]).
    Anomalies,
    /// A limit was reached before the check could finish; nothing is claimed.
    TooLarge {
        /// Which limit.
        reason: String,
    },
}

/// What [`check`] found, with figures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The verdict.
    pub verdict: Verdict,
    /// Transactions in the history.
    pub txns: usize,
    /// Of which committed (`ok`).
    pub ok: usize,
    /// Of which failed.
    pub failed: usize,
    /// Of which of unknown outcome.
    pub info: usize,
    /// Keys addressed.
    pub keys: usize,
    /// Edges of the dependency graph (pairs of transactions; one pair may have several kinds).
    pub edges: usize,
    /// Anomalies found (at most [`ANOMALIES_PER_KIND_MAX`] of each kind).
    pub anomalies: Vec<Anomaly>,
    /// Anomalies per kind, including those not kept.
    pub counts: BTreeMap<AnomalyKind, usize>,
    /// When anomalies were found but a limit stopped the search for more: which limit.
    pub incomplete: Option<String>,
}

impl Report {
    /// A one-line summary: `serializable: N txns, M keys, no cycle`, the anomalies, or the
    /// limit reached.
    #[must_use]
    pub fn summary(&self) -> String {
        let figures = format!(
            "{} txns ({} ok, {} failed, {} unknown), {} keys, {} edges",
            self.txns, self.ok, self.failed, self.info, self.keys, self.edges
        );
        match &self.verdict {
            Verdict::Serializable => format!("strictly serializable: {figures}, no cycle"),
            Verdict::TooLarge { reason } => format!("NOT CHECKED (too large: {reason}): {figures}"),
            Verdict::Anomalies => {
                let kinds: Vec<String> = self.counts.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
                let first = self.anomalies.first().map(ToString::to_string).unwrap_or_default();
                let stopped =
                    self.incomplete.as_ref().map(|r| format!(" (search stopped early: {r})")).unwrap_or_default();
                format!("NOT SERIALIZABLE: {} in {figures}{stopped}; first: {first}", kinds.join(", "))
            }
        }
    }

    /// Whether the history passed.
    #[must_use]
    pub fn pass(&self) -> bool {
        self.verdict == Verdict::Serializable
    }

    /// The kinds found.
    #[must_use]
    pub fn kinds(&self) -> Vec<AnomalyKind> {
        self.counts.keys().copied().collect()
    }
}

/// Checks `history` with the default [`Limits`].
#[must_use]
pub fn check(history: &[Txn]) -> Report {
    check_with(history, Limits::default())
}

/// Checks `history` within `limits`.
#[must_use]
pub fn check_with(history: &[Txn], limits: Limits) -> Report {
    let mut c = Checker::new(history, limits);
    let mut incomplete = None;
    let verdict = match c.run() {
        Ok(()) if c.counts.is_empty() => Verdict::Serializable,
        Ok(()) => Verdict::Anomalies,
        // What was found stands; the rest of the search was not done.
        Err(TooLarge(reason)) if !c.counts.is_empty() => {
            incomplete = Some(reason);
            Verdict::Anomalies
        }
        Err(TooLarge(reason)) => Verdict::TooLarge { reason },
    };
    Report {
        verdict,
        txns: history.len(),
        ok: history.iter().filter(|t| t.status == Status::Ok).count(),
        failed: history.iter().filter(|t| t.status == Status::Fail).count(),
        info: history.iter().filter(|t| t.status == Status::Info).count(),
        keys: c.keys.len(),
        edges: c.edge_count,
        anomalies: c.anomalies,
        counts: c.counts,
        incomplete,
    }
}

struct TooLarge(String);

/// Where an appended value came from.
#[derive(Clone, Copy)]
struct Writer {
    txn: usize,
    /// Whether it is the writer's last append to that key.
    last: bool,
}

type KeyId = u32;

struct Checker<'h> {
    h: &'h [Txn],
    limits: Limits,
    keys: HashMap<&'h str, KeyId>,
    key_names: Vec<&'h str>,
    /// (key, value) → its writer among transactions that may have committed.
    writers: HashMap<(KeyId, u64), Writer>,
    /// (key, value) → the failed transaction that appended it.
    failed_writes: HashMap<(KeyId, u64), usize>,
    /// Per key, the version order (the longest committed read).
    order: Vec<&'h [u64]>,
    /// Per key, whether its reads were compatible (edges are inferred only then).
    order_ok: Vec<bool>,
    adj: Vec<Vec<(u32, u8)>>,
    edge_count: usize,
    /// Steps spent of [`Limits::search_steps_max`] (a cell: explanations charge from `&self`).
    steps: Cell<u64>,
    anomalies: Vec<Anomaly>,
    counts: BTreeMap<AnomalyKind, usize>,
}

impl<'h> Checker<'h> {
    fn new(h: &'h [Txn], limits: Limits) -> Checker<'h> {
        Checker {
            h,
            limits,
            keys: HashMap::new(),
            key_names: Vec::new(),
            writers: HashMap::new(),
            failed_writes: HashMap::new(),
            order: Vec::new(),
            order_ok: Vec::new(),
            adj: Vec::new(),
            edge_count: 0,
            steps: Cell::new(0),
            anomalies: Vec::new(),
            counts: BTreeMap::new(),
        }
    }

    fn report(&mut self, kind: AnomalyKind, txns: Vec<usize>, cycle: Vec<Step>, explanation: String) {
        self.keep(Anomaly { kind, cycle, txns, explanation, detail: String::new() });
    }

    /// Counts `a`, and keeps it if fewer than [`ANOMALIES_PER_KIND_MAX`] of its kind are kept.
    fn keep(&mut self, a: Anomaly) {
        let n = self.counts.entry(a.kind).or_insert(0);
        *n += 1;
        if *n <= ANOMALIES_PER_KIND_MAX {
            self.anomalies.push(a);
        }
    }

    fn key(&mut self, k: &'h str) -> KeyId {
        if let Some(&id) = self.keys.get(k) {
            return id;
        }
        let id = self.key_names.len() as KeyId;
        self.keys.insert(k, id);
        self.key_names.push(k);
        id
    }

    fn committed_reads(&self) -> impl Iterator<Item = (usize, usize, &'h str, &'h [u64])> + 'h {
        let h = self.h;
        h.iter().enumerate().filter(|(_, t)| t.status == Status::Ok).flat_map(|(i, t)| {
            t.ops.iter().enumerate().filter_map(move |(j, m)| match m {
                Mop::R { key, value: Some(l) } => Some((i, j, key.as_str(), l.as_slice())),
                _ => None,
            })
        })
    }

    fn run(&mut self) -> Result<(), TooLarge> {
        let h = self.h;
        if h.len() > self.limits.txns_max {
            return Err(TooLarge(format!("{} transactions, more than {}", h.len(), self.limits.txns_max)));
        }
        if h.len() > u32::MAX as usize {
            return Err(TooLarge("more than 2^32 transactions".into()));
        }
        let elements: usize = h
            .iter()
            .map(|t| {
                t.ops.len()
                    + t.ops
                        .iter()
                        .map(|m| if let Mop::R { value: Some(l), .. } = m { l.len() } else { 0 })
                        .sum::<usize>()
            })
            .sum();
        if elements > self.limits.elements_max {
            return Err(TooLarge(format!(
                "{elements} micro-operations and read elements, more than {}",
                self.limits.elements_max
            )));
        }
        self.index_writes();
        self.read_anomalies();
        self.internal();
        self.version_orders();
        self.lost_appends();
        self.lost_updates();
        self.build_graph()?;
        self.cycles()
    }

    /// Indexes every append by (key, value).
    fn index_writes(&mut self) {
        let h = self.h;
        for (i, t) in h.iter().enumerate() {
            let mut per_key_last: HashMap<&str, usize> = HashMap::new();
            for (j, m) in t.ops.iter().enumerate() {
                if let Mop::Append { key, .. } = m {
                    per_key_last.insert(key.as_str(), j);
                }
            }
            for (j, m) in t.ops.iter().enumerate() {
                let Mop::Append { key, value } = m else { continue };
                let k = self.key(key);
                let dup = self.writers.contains_key(&(k, *value)) || self.failed_writes.contains_key(&(k, *value));
                if dup {
                    self.report(
                        AnomalyKind::DuplicateAppend,
                        vec![i],
                        Vec::new(),
                        format!("T{i} appends {value} to {key}, which another append already used"),
                    );
                    continue;
                }
                if t.status == Status::Fail {
                    self.failed_writes.insert((k, *value), i);
                } else {
                    self.writers
                        .insert((k, *value), Writer { txn: i, last: per_key_last.get(key.as_str()) == Some(&j) });
                }
            }
            for m in &t.ops {
                self.key(m.key());
            }
        }
    }

    /// G1a, G1b, duplicate elements and garbage reads, from every committed read.
    fn read_anomalies(&mut self) {
        let reads: Vec<_> = self.committed_reads().collect();
        for (i, _, key, list) in reads {
            let k = self.keys[key];
            let mut seen = HashSet::with_capacity(list.len());
            for &v in list {
                if !seen.insert(v) {
                    self.report(
                        AnomalyKind::DuplicateElements,
                        vec![i],
                        Vec::new(),
                        format!("T{i} read {key} = {} with {v} twice", show_list(list)),
                    );
                    break;
                }
            }
            for &v in list {
                if let Some(&w) = self.failed_writes.get(&(k, v)) {
                    self.report(
                        AnomalyKind::G1a,
                        vec![w, i],
                        Vec::new(),
                        format!("T{i} read {key} = {}, which holds {v}, appended by T{w} that failed", show_list(list)),
                    );
                } else if !self.writers.contains_key(&(k, v)) {
                    self.report(
                        AnomalyKind::GarbageRead,
                        vec![i],
                        Vec::new(),
                        format!(
                            "T{i} read {key} = {}, which holds {v}, which no transaction appended",
                            show_list(list)
                        ),
                    );
                }
            }
            if let Some(&v) = list.last()
                && let Some(w) = self.writers.get(&(k, v)).copied()
                && w.txn != i
                && !w.last
            {
                self.report(
                    AnomalyKind::G1b,
                    vec![w.txn, i],
                    Vec::new(),
                    format!(
                        "T{i} read {key} = {}, ending on {v}, an intermediate append of T{} (which appended to {key} again after it)",
                        show_list(list),
                        w.txn
                    ),
                );
            }
        }
    }

    /// Each committed transaction's reads agree with its own earlier reads and appends.
    fn internal(&mut self) {
        let h = self.h;
        for (i, t) in h.iter().enumerate().filter(|(_, t)| t.status == Status::Ok) {
            // Per key: the known list (true) or only the suffix appended so far (false).
            let mut state: HashMap<&str, (bool, Vec<u64>)> = HashMap::new();
            for m in &t.ops {
                match m {
                    Mop::Append { key, value } => {
                        state.entry(key.as_str()).or_insert((false, Vec::new())).1.push(*value)
                    }
                    Mop::R { key, value: Some(l) } => {
                        if let Some((full, expect)) = state.get(key.as_str()) {
                            let fine = if *full { l == expect } else { l.ends_with(expect) };
                            if !fine {
                                let what = if *full { "exactly" } else { "ending with" };
                                self.report(
                                    AnomalyKind::Internal,
                                    vec![i],
                                    Vec::new(),
                                    format!(
                                        "T{i} read {key} = {}, but its own earlier reads and appends imply {what} {}",
                                        show_list(l),
                                        show_list(expect)
                                    ),
                                );
                            }
                        }
                        state.insert(key.as_str(), (true, l.clone()));
                    }
                    Mop::R { value: None, .. } => {}
                }
            }
        }
    }

    /// The version order of each key: the longest committed read, which every other read must
    /// be a prefix of.
    fn version_orders(&mut self) {
        let n = self.key_names.len();
        self.order = vec![&[][..]; n];
        self.order_ok = vec![true; n];
        let reads: Vec<_> = self.committed_reads().collect();
        // Per key: the transaction whose read is the order (for the evidence, without a search).
        let mut longest_by: Vec<Option<usize>> = vec![None; n];
        for &(i, _, key, list) in &reads {
            let k = self.keys[key] as usize;
            if list.len() > self.order[k].len() {
                self.order[k] = list;
                longest_by[k] = Some(i);
            }
        }
        let mut reported: HashSet<KeyId> = HashSet::new();
        for &(i, _, key, list) in &reads {
            let k = self.keys[key];
            let longest = self.order[k as usize];
            if !longest.starts_with(list) {
                self.order_ok[k as usize] = false;
                if reported.insert(k) {
                    let j = longest_by[k as usize].unwrap_or(i);
                    self.report(
                        AnomalyKind::IncompatibleOrder,
                        vec![i, j],
                        Vec::new(),
                        format!(
                            "T{i} read {key} = {} and T{j} read {key} = {}: neither is a prefix of the other",
                            show_list(list),
                            show_list(longest)
                        ),
                    );
                }
            }
        }
    }

    /// Lost appends: every committed append must be in each committed read of its key called
    /// after the append's transaction returned. An append that some read shows but a later
    /// read misses is a stale read, which the cycle search reports (the read's `rw` edge to
    /// the writer of the next version, real time back); here, the appends that no read shows
    /// at all although a read of the key began after they returned, which leave no edge. One
    /// pass over the history (bounded by [`Limits::elements_max`]) and a binary search per
    /// append. Keys whose reads are incompatible are skipped (reported as such).
    fn lost_appends(&mut self) {
        let h = self.h;
        // Per key: the values of its version order, and its committed reads by call time.
        let mut shown: HashSet<(KeyId, u64)> = HashSet::new();
        for (k, order) in self.order.iter().enumerate() {
            shown.extend(order.iter().map(|&v| (k as KeyId, v)));
        }
        let mut reads: Vec<Vec<(u64, usize, &'h [u64])>> = vec![Vec::new(); self.key_names.len()];
        for (i, _, key, list) in self.committed_reads() {
            reads[self.keys[key] as usize].push((h[i].call, i, list));
        }
        for r in &mut reads {
            r.sort_by_key(|&(call, i, _)| (call, i));
        }
        for (i, t) in h.iter().enumerate().filter(|(_, t)| t.status == Status::Ok) {
            let Some(ret) = t.ret else { continue };
            for m in &t.ops {
                let Mop::Append { key, value } = m else { continue };
                let k = self.keys[key.as_str()];
                if !self.order_ok[k as usize] || shown.contains(&(k, *value)) {
                    continue;
                }
                let rs = &reads[k as usize];
                let first_after = rs.partition_point(|&(call, _, _)| call <= ret);
                if let Some(&(call, j, list)) = rs.get(first_after) {
                    self.report(
                        AnomalyKind::LostAppend,
                        vec![i, j],
                        Vec::new(),
                        format!(
                            "T{i} appended {value} to {key} and returned at {ret}; T{j}, called at {call}, read {key} = {} \
                             without it, and no committed read shows it",
                            show_list(list)
                        ),
                    );
                }
            }
        }
    }

    /// Lost updates: two committed transactions whose external reads of a key return the same
    /// list and which both append to it (in any serial order the later one would have read the
    /// earlier one's append). Hashes each external read once: one pass over the history.
    fn lost_updates(&mut self) {
        let h = self.h;
        let mut by_version: HashMap<(KeyId, &'h [u64]), usize> = HashMap::new();
        let mut found: Vec<(usize, usize, &'h str, &'h [u64])> = Vec::new();
        for (i, t) in h.iter().enumerate().filter(|(_, t)| t.status == Status::Ok) {
            // Per key: the external read, if the transaction then appends to the key.
            let mut external: HashMap<&'h str, Option<&'h [u64]>> = HashMap::new();
            let mut appended: Vec<(&'h str, &'h [u64])> = Vec::new();
            for m in &t.ops {
                match m {
                    Mop::R { key, value: Some(l) } => {
                        external.entry(key.as_str()).or_insert(Some(l.as_slice()));
                    }
                    Mop::Append { key, .. } => {
                        if let Some(Some(l)) = external.insert(key.as_str(), None) {
                            appended.push((key.as_str(), l));
                        }
                    }
                    Mop::R { value: None, .. } => {}
                }
            }
            for (key, l) in appended {
                let k = self.keys[key];
                match by_version.get(&(k, l)) {
                    Some(&first) => found.push((first, i, key, l)),
                    None => {
                        by_version.insert((k, l), i);
                    }
                }
            }
        }
        for (a, b, key, l) in found {
            self.report(
                AnomalyKind::LostUpdate,
                vec![a, b],
                Vec::new(),
                format!("T{a} and T{b} both read {key} = {} and both appended to it", show_list(l)),
            );
        }
    }

    /// The first read of `key` in transaction `i` before it appends to `key`, charging the
    /// micro-operations scanned to the step budget.
    fn external_read(&self, i: usize, key: &str) -> Result<Option<&'h [u64]>, TooLarge> {
        let mut scanned = 0u64;
        let mut found = None;
        for m in &self.h[i].ops {
            scanned += 1;
            match m {
                Mop::Append { key: k, .. } if k == key => break,
                Mop::R { key: k, value: Some(l) } if k == key => {
                    found = Some(l.as_slice());
                    break;
                }
                _ => {}
            }
        }
        self.step(scanned)?;
        Ok(found)
    }

    fn writer_of(&self, k: KeyId, v: u64) -> Option<usize> {
        self.writers.get(&(k, v)).map(|w| w.txn)
    }

    fn build_graph(&mut self) -> Result<(), TooLarge> {
        let h = self.h;
        let mut edges: HashMap<(u32, u32), u8> = HashMap::new();
        let edges_max = self.limits.edges_max;
        let add = |edges: &mut HashMap<(u32, u32), u8>, a: usize, b: usize, bit: u8| -> Result<(), TooLarge> {
            if a == b {
                return Ok(());
            }
            *edges.entry((a as u32, b as u32)).or_insert(0) |= bit;
            if edges.len() > edges_max {
                return Err(TooLarge(format!("more than {edges_max} edges in the dependency graph")));
            }
            Ok(())
        };
        // ww: consecutive versions.
        for k in 0..self.order.len() {
            if !self.order_ok[k] {
                continue;
            }
            let order = self.order[k];
            for pair in order.windows(2) {
                if let (Some(a), Some(b)) = (self.writer_of(k as KeyId, pair[0]), self.writer_of(k as KeyId, pair[1])) {
                    add(&mut edges, a, b, WW)?;
                }
            }
        }
        // wr and rw: each committed transaction's external reads.
        for (i, t) in h.iter().enumerate().filter(|(_, t)| t.status == Status::Ok) {
            let mut done: HashSet<&str> = HashSet::new();
            for m in &t.ops {
                let Mop::R { key, value: Some(_) } = m else { continue };
                if !done.insert(key.as_str()) {
                    continue;
                }
                let Some(list) = self.external_read(i, key)? else { continue };
                let k = self.keys[key.as_str()];
                if !self.order_ok[k as usize] {
                    continue;
                }
                if let Some(&last) = list.last()
                    && let Some(w) = self.writer_of(k, last)
                {
                    add(&mut edges, w, i, WR)?;
                }
                let order = self.order[k as usize];
                // The next version's writer, unless it also wrote the version read (an
                // intermediate read, G1b, reported on its own).
                let read_from = list.last().and_then(|&v| self.writer_of(k, v));
                if let Some(&next) = order.get(list.len())
                    && let Some(w) = self.writer_of(k, next)
                    && read_from != Some(w)
                {
                    add(&mut edges, i, w, RW)?;
                }
            }
        }
        // rt: Elle's transitive reduction. Events in time order, calls before returns at the
        // same instant (no edge between them); the frontier holds completed transactions not
        // yet known to precede a later completed one.
        let in_graph = |t: &Txn| t.status != Status::Fail;
        let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(h.len() * 2);
        for (i, t) in h.iter().enumerate().filter(|(_, t)| in_graph(t)) {
            events.push((t.call, 0, i));
            if t.status == Status::Ok
                && let Some(r) = t.ret
            {
                events.push((r, 1, i));
            }
        }
        events.sort_unstable();
        let mut frontier: Vec<usize> = Vec::new();
        let mut preds: HashMap<usize, Vec<usize>> = HashMap::new();
        for (_, kind, i) in events {
            if kind == 0 {
                for &p in &frontier {
                    add(&mut edges, p, i, RT)?;
                }
                if h[i].status == Status::Ok {
                    preds.insert(i, frontier.clone());
                }
            } else {
                let before = preds.remove(&i).unwrap_or_default();
                if !before.is_empty() {
                    let before: HashSet<usize> = before.into_iter().collect();
                    frontier.retain(|p| !before.contains(p));
                }
                frontier.push(i);
            }
        }
        self.edge_count = edges.len();
        let mut adj: Vec<Vec<(u32, u8)>> = vec![Vec::new(); h.len()];
        for ((a, b), m) in edges {
            adj[a as usize].push((b, m));
        }
        for l in &mut adj {
            l.sort_unstable();
        }
        self.adj = adj;
        Ok(())
    }

    fn step(&self, n: u64) -> Result<(), TooLarge> {
        let steps = self.steps.get().saturating_add(n);
        self.steps.set(steps);
        if steps > self.limits.search_steps_max {
            return Err(TooLarge(format!(
                "the checker passed {} steps (external reads, cycle search, explanations)",
                self.limits.search_steps_max
            )));
        }
        Ok(())
    }

    /// Strongly connected components (iterative Tarjan) of the nodes in `nodes`, using edges
    /// whose kinds meet `mask` and whose ends are both in `nodes` (marked by `member`). Only
    /// the components of two or more nodes are returned.
    fn sccs(&mut self, nodes: &[u32], member: &[bool], mask: u8) -> Result<Vec<Vec<u32>>, TooLarge> {
        const UNSEEN: u32 = u32::MAX;
        // Local numbering: the arrays are as large as `nodes`, not the whole graph.
        let local: HashMap<u32, usize> = nodes.iter().enumerate().map(|(i, &v)| (v, i)).collect();
        let at = |v: u32| local.get(&v).copied();
        let mut index = vec![UNSEEN; nodes.len()];
        let mut low = vec![0u32; nodes.len()];
        let mut on_stack = vec![false; nodes.len()];
        let mut stack: Vec<u32> = Vec::new();
        let mut out = Vec::new();
        let mut next = 0u32;
        for (r, &root) in nodes.iter().enumerate() {
            if index[r] != UNSEEN {
                continue;
            }
            // (node, its local number, position in its adjacency)
            let mut call: Vec<(u32, usize, usize)> = vec![(root, r, 0)];
            index[r] = next;
            low[r] = next;
            next += 1;
            stack.push(root);
            on_stack[r] = true;
            while let Some(&(v, lv, pos)) = call.last() {
                let adj = &self.adj[v as usize];
                let mut i = pos;
                let mut descend = None;
                while i < adj.len() {
                    let (w, m) = adj[i];
                    i += 1;
                    if m & mask == 0 || !member[w as usize] {
                        continue;
                    }
                    let Some(lw) = at(w) else { continue };
                    if index[lw] == UNSEEN {
                        descend = Some((w, lw));
                        break;
                    } else if on_stack[lw] {
                        low[lv] = low[lv].min(index[lw]);
                    }
                }
                if let Some(top) = call.last_mut() {
                    top.2 = i;
                }
                if let Some((w, lw)) = descend {
                    index[lw] = next;
                    low[lw] = next;
                    next += 1;
                    stack.push(w);
                    on_stack[lw] = true;
                    call.push((w, lw, 0));
                    continue;
                }
                let steps = adj.len() as u64 + 1;
                call.pop();
                if let Some(&(_, lp, _)) = call.last() {
                    low[lp] = low[lp].min(low[lv]);
                }
                if low[lv] == index[lv] {
                    let mut comp = Vec::new();
                    while let Some(w) = stack.pop() {
                        if let Some(lw) = at(w) {
                            on_stack[lw] = false;
                        }
                        comp.push(w);
                        if w == v {
                            break;
                        }
                    }
                    if comp.len() > 1 {
                        out.push(comp);
                    }
                }
                self.step(steps)?;
            }
        }
        Ok(out)
    }

    /// The shortest path from `from` to `to` within `member` along edges meeting `mask`.
    fn path(&mut self, from: u32, to: u32, member: &[bool], mask: u8) -> Result<Option<Vec<u32>>, TooLarge> {
        let mut parent: HashMap<u32, u32> = HashMap::new();
        let mut queue = std::collections::VecDeque::new();
        parent.insert(from, from);
        queue.push_back(from);
        while let Some(v) = queue.pop_front() {
            if v == to {
                let mut p = vec![to];
                let mut c = to;
                while c != from {
                    c = parent[&c];
                    p.push(c);
                }
                p.reverse();
                return Ok(Some(p));
            }
            let adj = &self.adj[v as usize];
            let steps = adj.len() as u64 + 1;
            for &(w, m) in adj {
                if m & mask != 0 && member[w as usize] && !parent.contains_key(&w) {
                    parent.insert(w, v);
                    queue.push_back(w);
                }
            }
            self.step(steps)?;
        }
        Ok(None)
    }

    fn mask_of(&self, a: u32, b: u32) -> u8 {
        let adj = &self.adj[a as usize];
        match adj.binary_search_by_key(&b, |&(w, _)| w) {
            Ok(i) => adj[i].1,
            Err(_) => 0,
        }
    }

    fn cycles(&mut self) -> Result<(), TooLarge> {
        let all: Vec<u32> = (0..self.adj.len() as u32).collect();
        let everyone = vec![true; self.adj.len()];
        let comps = self.sccs(&all, &everyone, WW | WR | RW | RT)?;
        // (first edge, the rest): searched in order, one cycle of each kind per component.
        const SEARCHES: [(u8, u8); 8] = [
            (WW, WW),
            (WR, WW | WR),
            (RW, WW | WR),
            (RW, WW | WR | RW),
            (RT, WW | RT),
            (RT, WW | WR | RT),
            (RW, WW | WR | RT),
            (RT, WW | WR | RW | RT),
        ];
        let mut member = vec![false; self.adj.len()];
        let mut sub_member = vec![false; self.adj.len()];
        for comp in comps {
            for &v in &comp {
                member[v as usize] = true;
            }
            let mut found: HashSet<AnomalyKind> = HashSet::new();
            for (first, rest) in SEARCHES {
                let subs = self.sccs(&comp, &member, first | rest)?;
                for sub in subs {
                    for &v in &sub {
                        sub_member[v as usize] = true;
                    }
                    let cycle = self.cycle_in(&sub, &sub_member, first, rest);
                    for &v in &sub {
                        sub_member[v as usize] = false;
                    }
                    if let Some(cycle) = cycle? {
                        let (anomaly, spent) = self.explain_cycle(&cycle, first | rest);
                        if found.insert(anomaly.kind) {
                            self.keep(anomaly);
                        }
                        // The cycle stands, unexplained past the budget; the search stops.
                        if let Some(spent) = spent {
                            return Err(spent);
                        }
                        break;
                    }
                }
            }
            for &v in &comp {
                member[v as usize] = false;
            }
        }
        Ok(())
    }

    /// A cycle within `sub` (marked in `member`) whose first edge has a kind of `first` and
    /// the others kinds of `rest`: `[a, b, …, a]`.
    fn cycle_in(&mut self, sub: &[u32], member: &[bool], first: u8, rest: u8) -> Result<Option<Vec<u32>>, TooLarge> {
        for &a in sub {
            let targets: Vec<u32> = self.adj[a as usize]
                .iter()
                .filter(|&&(b, m)| m & first != 0 && member[b as usize])
                .map(|&(b, _)| b)
                .collect();
            for b in targets {
                if let Some(p) = self.path(b, a, member, rest)? {
                    let mut cycle = vec![a];
                    cycle.extend(p);
                    return Ok(Some(cycle));
                }
            }
        }
        Ok(None)
    }

    /// Names a cycle (`cycle[0] == cycle[last]`) by its edges: each labelled with the first of
    /// ww, wr, rw, rt it has among `allowed` (the weakest claim the edge supports), and explained
    /// within the step budget: once it is spent, the remaining edges are named but not explained,
    /// and the limit is returned with the anomaly.
    fn explain_cycle(&self, cycle: &[u32], allowed: u8) -> (Anomaly, Option<TooLarge>) {
        let mut spent: Option<TooLarge> = None;
        let mut steps = Vec::new();
        let (mut rw, mut wr, mut rt) = (0, 0, 0);
        for pair in cycle.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let m = self.mask_of(a, b) & allowed;
            let edge = Edge::ALL.into_iter().find(|e| m & e.bit() != 0).unwrap_or(Edge::Rt);
            match edge {
                Edge::Rw => rw += 1,
                Edge::Wr => wr += 1,
                Edge::Rt => rt += 1,
                Edge::Ww => {}
            }
            let why = if spent.is_some() {
                NOT_EXPLAINED.to_string()
            } else {
                self.why(a as usize, b as usize, edge).unwrap_or_else(|e| {
                    spent = Some(e);
                    NOT_EXPLAINED.to_string()
                })
            };
            steps.push(Step { from: a as usize, edge, why });
        }
        let kind = AnomalyKind::of_cycle(rw, wr, rt);
        let mut text = String::new();
        for s in &steps {
            text.push_str(&format!("T{} -{}[{}]-> ", s.from, s.edge.name(), s.why));
        }
        text.push_str(&format!("T{}", cycle[0]));
        let txns: Vec<usize> = steps.iter().map(|s| s.from).collect();
        let shown: Vec<String> = txns.iter().map(|&i| format!("T{i} = {}", show_txn(&self.h[i]))).collect();
        (Anomaly { kind, cycle: steps, txns, explanation: text, detail: shown.join("\n") }, spent)
    }

    /// Why edge `a → b` of kind `e` exists; the micro-operations and version-order elements it
    /// scans are charged to the step budget.
    fn why(&self, a: usize, b: usize, e: Edge) -> Result<String, TooLarge> {
        let (ta, tb) = (&self.h[a], &self.h[b]);
        Ok(match e {
            Edge::Rt => format!("T{a} returned at {} before T{b} was called at {}", ta.ret.unwrap_or(0), tb.call),
            Edge::Ww => {
                for m in &tb.ops {
                    self.step(1)?;
                    let Mop::Append { key, value } = m else { continue };
                    let k = self.keys[key.as_str()];
                    let order = self.order[k as usize];
                    let position = order.iter().position(|v| v == value);
                    self.step(position.map_or(order.len(), |p| p + 1) as u64)?;
                    if let Some(p) = position
                        && p > 0
                        && self.writer_of(k, order[p - 1]) == Some(a)
                    {
                        return Ok(format!("{key}: {} then {value}", order[p - 1]));
                    }
                }
                "ww".into()
            }
            Edge::Wr => {
                for m in &tb.ops {
                    self.step(1)?;
                    let Mop::R { key, .. } = m else { continue };
                    if let Some(list) = self.external_read(b, key)?
                        && let Some(&last) = list.last()
                        && self.writer_of(self.keys[key.as_str()], last) == Some(a)
                    {
                        return Ok(format!("{key}: read {}", show_list(list)));
                    }
                }
                "wr".into()
            }
            Edge::Rw => {
                for m in &ta.ops {
                    self.step(1)?;
                    let Mop::R { key, .. } = m else { continue };
                    let k = self.keys[key.as_str()];
                    if let Some(list) = self.external_read(a, key)?
                        && let Some(&next) = self.order[k as usize].get(list.len())
                        && self.writer_of(k, next) == Some(b)
                    {
                        return Ok(format!("{key}: read {}, {next} appended next", show_list(list)));
                    }
                }
                "rw".into()
            }
        })
    }
}

/// What an edge's explanation says once the step budget is spent.
const NOT_EXPLAINED: &str = "not explained: step budget spent";

fn show_list(l: &[u64]) -> String {
    const SHOWN: usize = 6;
    if l.len() <= SHOWN {
        format!("{l:?}")
    } else {
        let tail: Vec<String> = l[l.len() - SHOWN..].iter().map(ToString::to_string).collect();
        format!("[…{} more, {}]", l.len() - SHOWN, tail.join(", "))
    }
}

fn show_txn(t: &Txn) -> String {
    let ops: Vec<String> = t
        .ops
        .iter()
        .map(|m| match m {
            Mop::Append { key, value } => format!("append {key} {value}"),
            Mop::R { key, value: Some(l) } => format!("r {key} {}", show_list(l)),
            Mop::R { key, value: None } => format!("r {key} ?"),
        })
        .collect();
    let status = match t.status {
        Status::Ok => "ok",
        Status::Fail => "fail",
        Status::Info => "info",
    };
    format!("client {} {status} [{}]", t.client, ops.join(", "))
}
