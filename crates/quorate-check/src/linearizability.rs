//! A linearizability checker for key-value histories.
//!
//! [`check`] decides whether a recorded [`history`](crate::history) of puts, gets, deletes and
//! compare-and-sets could have come from a single, atomic key-value store: whether every
//! operation can be given a point in time between its call and its return such that, replayed in
//! that order, every read returns what the store held and every cas succeeds or fails as
//! recorded. Every key starts absent.
//!
//! # Algorithm
//! Each key is an independent register, so the history is partitioned by key and every key is
//! checked on its own (P-compositionality, Horn and Kroening 2015); keys are checked in sorted
//! order and the check stops at the first key that is not linearizable.
//!
//! A key is checked with the Wing–Gong algorithm as improved by Lowe ("Testing for
//! linearizability", 2017): the call and return events of the key's operations form a linked
//! list in time order; a depth-first search repeatedly linearizes a pending operation whose call
//! precedes the earliest return among the operations not yet linearized, applies it to the
//! register model, and backtracks when no such operation is legal. A cache of the configurations
//! already explored — the set of linearized operations (a bitset) and the register value (an
//! interned `u32`) — prunes the search.
//!
//! Operations whose outcome is unknown have no return event (their return is at +∞): they may be
//! linearized at any point after their call, or never. The search succeeds once every operation
//! with a known outcome is linearized. Failed puts and deletes and unknown gets are dropped
//! before the search; a failed cas stays, as a read that saw anything but `expected`.
//!
//! Reductions, each sound and complete (the proofs are on the functions that apply them), keep
//! histories with high concurrency and many unknown outcomes cheap:
//! - values that no get returns and no cas expects are merged into one state;
//! - an unknown put of such a value, or an unknown delete, is linearized only on demand,
//!   right before an operation that is illegal without it;
//! - an unknown write that is the only writer of a value a completed read observed must take
//!   effect before that read returns, and gets that return time;
//! - a read (get or failed cas) that is legal now is linearized at once, without alternatives;
//! - a configuration in which a pending read waits for a value that no remaining operation
//!   writes is abandoned at once;
//! - a read of a value that nobody wrote, or whose every writer was called after the read
//!   returned, is reported before any search.
//!
//! Ties: an operation that returns at the same instant another is called counts as concurrent
//! with it, which never turns a linearizable history into a reported violation.
//!
//! # Limits
//! The search is exponential in the worst case. [`Limits`] bounds the steps and the cache memory
//! spent on one key; a key that exceeds them makes the result [`Outcome::Inconclusive`], never
//! [`Outcome::Linearizable`]. Checking power is best when every value written to a key is
//! unique: the search then rarely backtracks.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

use crate::history::{Completion, OpKind, Operation, ReadCompletion};

/// Default for [`Limits::steps_per_key_max`].
pub const STEPS_PER_KEY_MAX_DEFAULT: u64 = 10_000_000;

/// Default for [`Limits::cache_bytes_per_key_max`].
pub const CACHE_BYTES_PER_KEY_MAX_DEFAULT: usize = 512 << 20;

/// How many operations of one key the checker accepts; a larger key is inconclusive.
pub const OPS_PER_KEY_MAX: usize = 1 << 28;

/// How many operations an evidence text lists at most in each of its lists.
const EVIDENCE_OPS_MAX: usize = 5;

/// How many characters of one operation or value an evidence text shows.
const EVIDENCE_CHARS_MAX: usize = 160;

/// Bounds on the search for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Search steps (operations tried plus backtracks) allowed per key.
    pub steps_per_key_max: u64,
    /// Approximate bytes the configuration cache of one key may use.
    pub cache_bytes_per_key_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            steps_per_key_max: STEPS_PER_KEY_MAX_DEFAULT,
            cache_bytes_per_key_max: CACHE_BYTES_PER_KEY_MAX_DEFAULT,
        }
    }
}

impl Limits {
    /// These limits with [`Limits::steps_per_key_max`] set to `steps`.
    #[must_use]
    pub fn with_steps_per_key_max(mut self, steps: u64) -> Self {
        self.steps_per_key_max = steps;
        self
    }

    /// These limits with [`Limits::cache_bytes_per_key_max`] set to `bytes`.
    #[must_use]
    pub fn with_cache_bytes_per_key_max(mut self, bytes: usize) -> Self {
        self.cache_bytes_per_key_max = bytes;
        self
    }
}

/// The result of [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckResult {
    /// Keys whose check was started (the check stops at the first violation).
    pub keys_checked: usize,
    /// Operations that took part in the check of those keys (after dropping failed puts and
    /// deletes and unknown gets).
    pub ops_checked: usize,
    /// Search steps spent over all keys.
    pub steps: u64,
    /// The verdict.
    pub outcome: Outcome,
}

impl CheckResult {
    /// Whether the history is linearizable (and the check was conclusive).
    #[must_use]
    pub fn is_linearizable(&self) -> bool {
        matches!(self.outcome, Outcome::Linearizable)
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({} keys, {} operations, {} steps)",
            self.outcome, self.keys_checked, self.ops_checked, self.steps
        )
    }
}

/// The verdict of [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Every key has a linearization.
    Linearizable,
    /// `key` has no linearization.
    NotLinearizable {
        /// The key whose operations cannot be linearized.
        key: String,
        /// Index, in the checked slice, of the operation the explanation centres on: the one
        /// that could not take effect before it returned.
        op_index: usize,
        /// A short human-readable explanation.
        evidence: String,
    },
    /// The search of `key` ran out of its [`Limits`]; no key checked so far was found
    /// non-linearizable, but the history is not known to be linearizable either.
    Inconclusive {
        /// The first key whose search ran out of budget.
        key: String,
        /// Which limit ran out.
        reason: String,
    },
    /// The history itself is malformed (an operation returns before its call); nothing was
    /// checked.
    InvalidHistory {
        /// Index of the offending operation in the checked slice.
        op_index: usize,
        /// What is wrong with it.
        reason: String,
    },
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Linearizable => write!(f, "linearizable"),
            Outcome::NotLinearizable { key, evidence, .. } => {
                write!(f, "not linearizable on key {key:?}: {evidence}")
            }
            Outcome::Inconclusive { key, reason } => {
                write!(f, "inconclusive on key {key:?}: {reason}")
            }
            Outcome::InvalidHistory { op_index, reason } => {
                write!(f, "invalid history at operation #{op_index}: {reason}")
            }
        }
    }
}

/// Checks `history` for linearizability, key by key, within `limits`.
///
/// The order of `history` does not matter. Never panics; a definite verdict is only
/// [`Outcome::Linearizable`] when every key's search finished.
#[must_use]
pub fn check(history: &[Operation], limits: &Limits) -> CheckResult {
    let mut result = CheckResult { keys_checked: 0, ops_checked: 0, steps: 0, outcome: Outcome::Linearizable };
    for (op_index, op) in history.iter().enumerate() {
        if let Some(ret) = op.ret()
            && ret < op.call
        {
            let reason = format!("returns at {ret}, before its call at {}", op.call);
            result.outcome = Outcome::InvalidHistory { op_index, reason };
            return result;
        }
    }
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, op) in history.iter().enumerate() {
        by_key.entry(op.key.as_str()).or_default().push(index);
    }
    let mut inconclusive = None;
    for (key, indices) in by_key {
        result.keys_checked += 1;
        match check_key(history, &indices, limits) {
            KeyVerdict::Linearizable { ops, steps } => {
                result.ops_checked += ops;
                result.steps += steps;
            }
            KeyVerdict::Violation { ops, steps, op_index, evidence } => {
                result.ops_checked += ops;
                result.steps += steps;
                let key = key.to_owned();
                result.outcome = Outcome::NotLinearizable { key, op_index, evidence };
                return result;
            }
            KeyVerdict::Inconclusive { ops, steps, reason } => {
                result.ops_checked += ops;
                result.steps += steps;
                if inconclusive.is_none() {
                    inconclusive = Some(Outcome::Inconclusive { key: key.to_owned(), reason });
                }
            }
        }
    }
    if let Some(outcome) = inconclusive {
        result.outcome = outcome;
    }
    result
}

/// The register value: [`ABSENT`] or an interned value id (from 1).
type State = u32;

/// The state of an absent key.
const ABSENT: State = 0;

/// "No node" in the event list and "no entry" in the cache chains.
const NIL: u32 = u32::MAX;

/// What an operation does to the register, with values interned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Put(State),
    Delete,
    Get(State),
    /// A cas that succeeded, or whose outcome is unknown (linearized only when it succeeds).
    Cas {
        expected: State,
        value: State,
    },
    /// A cas whose comparison failed.
    CasFailed {
        expected: State,
    },
}

impl Action {
    /// The state after applying `self` to `state`, or `None` when it cannot happen there.
    fn apply(self, state: State) -> Option<State> {
        match self {
            Action::Put(value) => Some(value),
            Action::Delete => Some(ABSENT),
            Action::Get(output) => (state == output).then_some(state),
            Action::Cas { expected, value } => (state == expected).then_some(value),
            Action::CasFailed { expected } => (state != expected).then_some(state),
        }
    }

    /// The value a linearized operation with this action observes, if any.
    fn observed(self) -> Option<State> {
        match self {
            Action::Get(output) => Some(output),
            Action::Cas { expected, .. } => Some(expected),
            Action::Put(_) | Action::Delete | Action::CasFailed { .. } => None,
        }
    }

    /// The value this action may write, if any.
    fn written(self) -> Option<State> {
        match self {
            Action::Put(value) | Action::Cas { value, .. } => Some(value),
            Action::Delete => Some(ABSENT),
            Action::Get(_) | Action::CasFailed { .. } => None,
        }
    }
}

/// One operation of the key being checked.
#[derive(Debug, Clone, Copy)]
struct KeyOp {
    /// Index in the checked history.
    index: usize,
    call: u64,
    /// The return time; `None` for an optional (unknown) operation.
    ret: Option<u64>,
    /// Whether `ret` was derived from a read of the value only this unknown write wrote.
    derived_ret: bool,
    /// For an unknown write that is only linearized on demand: the index of its pool.
    pool: Option<u8>,
    action: Action,
}

enum KeyVerdict {
    Linearizable { ops: usize, steps: u64 },
    Violation { ops: usize, steps: u64, op_index: usize, evidence: String },
    Inconclusive { ops: usize, steps: u64, reason: String },
}

/// Checks the operations `indices` of `history`, which all address one key.
fn check_key(history: &[Operation], indices: &[usize], limits: &Limits) -> KeyVerdict {
    let key = Key::prepare(history, indices);
    let ops = key.ops.len();
    if let Some((op_index, evidence)) = key.impossible_read(history) {
        return KeyVerdict::Violation { ops, steps: 0, op_index, evidence };
    }
    if ops > OPS_PER_KEY_MAX {
        let reason = format!("{ops} operations on one key, more than {OPS_PER_KEY_MAX}");
        return KeyVerdict::Inconclusive { ops, steps: 0, reason };
    }
    let mut search = Search::new(&key.ops, &key.pool_states, key.values.len());
    match search.run(limits) {
        SearchEnd::Linearizable => KeyVerdict::Linearizable { ops, steps: search.steps },
        SearchEnd::OutOfBudget(reason) => KeyVerdict::Inconclusive { ops, steps: search.steps, reason },
        SearchEnd::Stuck => {
            let (op_index, evidence) = key.explain(history, &search.best);
            KeyVerdict::Violation { ops, steps: search.steps, op_index, evidence }
        }
    }
}

/// The operations of one key, ready for the search.
struct Key<'h> {
    ops: Vec<KeyOp>,
    /// `values[id]` is the value with id `id`; `values[ABSENT]` is unused.
    values: Vec<&'h str>,
    /// The state every value that no operation observes is mapped to.
    junk: State,
    /// The state each pool of on-demand writes leaves the register in.
    pool_states: Vec<State>,
}

impl<'h> Key<'h> {
    fn prepare(history: &'h [Operation], indices: &[usize]) -> Self {
        let mut ids: HashMap<&'h str, State> = HashMap::new();
        let mut values: Vec<&'h str> = vec![""];
        let mut intern = |value: &'h str| -> State {
            *ids.entry(value).or_insert_with(|| {
                values.push(value);
                (values.len() - 1) as State
            })
        };
        let mut ops = Vec::with_capacity(indices.len());
        for &index in indices {
            let Some(op) = history.get(index) else { continue };
            let (action, ret) = match &op.kind {
                OpKind::Put { completion: Completion::Failed { .. }, .. }
                | OpKind::Delete { completion: Completion::Failed { .. } }
                | OpKind::Get { completion: ReadCompletion::Unknown } => continue,
                OpKind::Put { value, completion } => (Action::Put(intern(value)), completion.ret()),
                OpKind::Delete { completion } => (Action::Delete, completion.ret()),
                OpKind::Cas { expected, completion: Completion::Failed { ret }, .. } => {
                    (Action::CasFailed { expected: intern(expected) }, Some(*ret))
                }
                OpKind::Cas { expected, value, completion } => {
                    let action = Action::Cas { expected: intern(expected), value: intern(value) };
                    (action, completion.ret())
                }
                OpKind::Get { completion: ReadCompletion::Returned { ret, output } } => {
                    let output = output.as_deref().map_or(ABSENT, &mut intern);
                    (Action::Get(output), Some(*ret))
                }
            };
            ops.push(KeyOp { index, call: op.call, ret, derived_ret: false, pool: None, action });
        }
        let mut key = Key { ops, values, junk: ABSENT, pool_states: Vec::new() };
        key.merge_unobserved_values();
        key.pool_unknown_blind_writes();
        key.bound_sole_unknown_writers();
        key
    }

    /// For every state, whether some operation can observe the register holding it.
    fn observed(&self) -> Vec<bool> {
        let mut observed = vec![false; self.values.len()];
        for op in &self.ops {
            let seen = match op.action {
                Action::Get(output) => output,
                Action::Cas { expected, .. } | Action::CasFailed { expected } => expected,
                Action::Put(_) | Action::Delete => continue,
            };
            if let Some(slot) = observed.get_mut(seen as usize) {
                *slot = true;
            }
        }
        observed
    }

    /// Maps every written value that no operation observes (no get returns it, no cas expects
    /// it) to one state, [`Key::junk`]: no operation can tell such values apart. When no get
    /// returns "absent", absence is indistinguishable from them too and `junk` is [`ABSENT`].
    fn merge_unobserved_values(&mut self) {
        let observed = self.observed();
        let is_observed = |v: State| observed.get(v as usize).copied().unwrap_or(false);
        if is_observed(ABSENT) {
            self.values.push("");
            self.junk = (self.values.len() - 1) as State;
        }
        let junk = self.junk;
        for op in &mut self.ops {
            if let Action::Put(v) | Action::Cas { value: v, .. } = &mut op.action
                && !is_observed(*v)
            {
                *v = junk;
            }
        }
    }

    /// Puts unknown blind writes — puts of [`Key::junk`] and deletes — into pools whose members
    /// the search linearizes only on demand.
    ///
    /// Sound and complete: in any linearization, an unknown write `u` is followed by
    /// non-mutating operations (gets, failed cas) up to the next write. `u` can be moved later,
    /// past those that are also legal without it, to just before the first one that is not
    /// (it has no return, so moving it later respects real time); if there is none, it can be
    /// dropped, because the next write is a put or delete (no cas expects junk or absence).
    /// So `u` is only needed right before an operation that is illegal in the current state
    /// and legal in the state `u` leaves; and members of one pool leave the same state
    /// unconditionally, so which callable member is used does not matter.
    fn pool_unknown_blind_writes(&mut self) {
        let junk = self.junk;
        self.pool_states = if junk == ABSENT { vec![ABSENT] } else { vec![junk, ABSENT] };
        let absent_pool = (self.pool_states.len() - 1) as u8;
        for op in &mut self.ops {
            if op.ret.is_some() {
                continue;
            }
            op.pool = match op.action {
                Action::Put(v) if v == junk => Some(0),
                Action::Delete => Some(absent_pool),
                _ => None,
            };
        }
    }

    /// Gives an unknown write that is the only writer of a value the return time of the first
    /// completed operation that observes that value.
    ///
    /// Sound: the observer needs the register to hold the value, so the sole writer must be
    /// linearized, and before the observer, hence before the observer's return.
    fn bound_sole_unknown_writers(&mut self) {
        let n = self.values.len();
        let mut writers = vec![0u32; n];
        let mut writer = vec![NIL; n];
        let mut first_observed_ret = vec![u64::MAX; n];
        for (i, op) in self.ops.iter().enumerate() {
            if let Some(v) = op.action.written()
                && let Some(count) = writers.get_mut(v as usize)
            {
                *count = count.saturating_add(1);
                if let Some(w) = writer.get_mut(v as usize) {
                    *w = i as u32;
                }
            }
            let seen = match op.action {
                Action::Get(output) => output,
                Action::Cas { expected, .. } => expected,
                _ => continue,
            };
            if let (Some(ret), Some(first)) = (op.ret, first_observed_ret.get_mut(seen as usize)) {
                *first = (*first).min(ret);
            }
        }
        for v in 1..n {
            let (Some(&1), Some(&w), Some(&bound)) = (writers.get(v), writer.get(v), first_observed_ret.get(v)) else {
                continue;
            };
            if bound == u64::MAX {
                continue;
            }
            if let Some(op) = self.ops.get_mut(w as usize)
                && op.ret.is_none()
                && op.pool.is_none()
                && op.call <= bound
            {
                op.ret = Some(bound);
                op.derived_ret = true;
            }
        }
    }

    /// Finds a completed operation that observes a value no write could have put there in time:
    /// a value never written (failed writes do not count), or one whose every writer was
    /// called after the observer returned. Returns its history index and an explanation.
    fn impossible_read(&self, history: &[Operation]) -> Option<(usize, String)> {
        let mut first_write_call = vec![u64::MAX; self.values.len()];
        let mut first_writer = vec![usize::MAX; self.values.len()];
        for op in &self.ops {
            if let Some(v) = op.action.written()
                && let Some(call) = first_write_call.get_mut(v as usize)
                && op.call < *call
            {
                *call = op.call;
                if let Some(w) = first_writer.get_mut(v as usize) {
                    *w = op.index;
                }
            }
        }
        for op in &self.ops {
            let seen = match op.action {
                Action::Get(output) if output != ABSENT => output,
                Action::Cas { expected, .. } => expected,
                _ => continue,
            };
            let (Some(ret), Some(&call)) = (op.ret, first_write_call.get(seen as usize)) else {
                continue;
            };
            if op.derived_ret {
                continue;
            }
            let value = self.value(seen);
            let this = describe(history, op.index);
            if call == u64::MAX {
                return Some((
                    op.index,
                    format!(
                        "{this} observes {value}, which no successful or unknown put or cas of \
                         this key writes"
                    ),
                ));
            }
            if call > ret {
                let writer = first_writer
                    .get(seen as usize)
                    .map_or_else(String::new, |&w| format!(" (the earliest is {})", describe(history, w)));
                return Some((
                    op.index,
                    format!(
                        "{this} observes {value}, but every write of it was called after this \
                         operation returned{writer}"
                    ),
                ));
            }
        }
        None
    }

    /// A short, quoted form of a state.
    fn value(&self, state: State) -> String {
        if state == ABSENT {
            return "absent".to_owned();
        }
        if state == self.junk {
            return "a value no operation observes".to_owned();
        }
        let value = self.values.get(state as usize).copied().unwrap_or("?");
        truncate(format!("{value:?}"))
    }

    /// Explains why the search got stuck, from its deepest configuration.
    fn explain(&self, history: &[Operation], best: &Best) -> (usize, String) {
        let linearized = |i: usize| best.bits.get(i / 64).is_some_and(|w| w >> (i % 64) & 1 == 1);
        let pending = |i: usize| !linearized(i);
        // The operation that had to take effect next: the pending one that returns first.
        let blocking = self
            .ops
            .iter()
            .enumerate()
            .filter(|&(i, op)| pending(i) && op.ret.is_some())
            .min_by_key(|&(_, op)| (op.ret, op.derived_ret, op.call));
        let Some((_, blocking)) = blocking else {
            let text = "the search failed without a pending operation (checker bug)".to_owned();
            return (self.ops.first().map_or(0, |op| op.index), text);
        };
        let deadline = blocking.ret.unwrap_or(u64::MAX);
        let candidates: Vec<usize> = (0..self.ops.len())
            .filter(|&i| pending(i) && self.ops[i].pool.is_none() && self.ops[i].call <= deadline)
            .collect();
        let mut text = format!(
            "no order of the {} operations on this key is legal. The longest linearizable prefix found has {} \
             operation(s)",
            self.ops.len(),
            best.depth
        );
        if !best.tail.is_empty() {
            text.push_str(", ending with:");
            if best.depth > best.tail.len() {
                text.push_str(" ...");
            }
            let tail: Vec<usize> =
                best.tail.iter().filter_map(|&i| self.ops.get(i as usize)).map(|op| op.index).collect();
            text.push(' ');
            text.push_str(&list(history, &tail));
        }
        text.push_str(&format!(
            ". The key is then {}. Next, {} must take effect by {deadline}",
            self.value(best.state),
            describe(history, blocking.index)
        ));
        let mut centre = blocking.index;
        let starvation = self.starvation(&candidates, &pending, best.state);
        if let Some((candidate, starved, value)) = starvation {
            centre = self.ops[starved].index;
            let after = if self.ops[candidate].index == blocking.index {
                "then".to_owned()
            } else {
                format!("after {}", describe(history, self.ops[candidate].index))
            };
            text.push_str(&format!(
                ", but {after} the key could never again hold {}, which {} observes: no remaining operation writes it",
                self.value(value),
                describe(history, centre)
            ));
        }
        if starvation.is_none() || candidates.len() > 1 {
            let candidates: Vec<usize> = candidates.iter().map(|&i| self.ops[i].index).collect();
            text.push_str(". No pending operation can be linearized next: ");
            text.push_str(&list(history, &candidates));
        }
        (centre, text)
    }

    /// Among `candidates` (positions in `ops`), finds one whose linearization in `state`
    /// leaves a pending required operation unable to ever observe the value it observed:
    /// `(candidate, starved operation, value)`.
    fn starvation(
        &self,
        candidates: &[usize],
        pending: &dyn Fn(usize) -> bool,
        state: State,
    ) -> Option<(usize, usize, State)> {
        let mut writers_left = vec![0u32; self.values.len()];
        for (i, op) in self.ops.iter().enumerate() {
            if let Some(slot) = op.action.written().and_then(|v| writers_left.get_mut(v as usize))
                && pending(i)
            {
                *slot += 1;
            }
        }
        candidates.iter().find_map(|&c| {
            let op = self.ops.get(c)?;
            let after = op.action.apply(state)?;
            [Some(state), op.action.written()].into_iter().flatten().find_map(|v| {
                let written_by_c = u32::from(op.action.written() == Some(v));
                let writers = writers_left.get(v as usize)?.saturating_sub(written_by_c);
                if v == after || writers > 0 {
                    return None;
                }
                let starved = (0..self.ops.len()).filter(|&o| o != c && pending(o)).find(|&o| {
                    let other = &self.ops[o];
                    other.ret.is_some() && other.action.observed() == Some(v)
                })?;
                Some((c, starved, v))
            })
        })
    }
}

/// `#index op`, truncated.
fn describe(history: &[Operation], index: usize) -> String {
    match history.get(index) {
        Some(op) => truncate(format!("#{index} ({op})")),
        None => format!("#{index}"),
    }
}

/// A bounded list of operations.
fn list(history: &[Operation], indices: &[usize]) -> String {
    let mut text = indices.iter().take(EVIDENCE_OPS_MAX).map(|&i| describe(history, i)).collect::<Vec<_>>().join("; ");
    if indices.len() > EVIDENCE_OPS_MAX {
        text.push_str(&format!("; and {} more", indices.len() - EVIDENCE_OPS_MAX));
    }
    text
}

fn truncate(mut text: String) -> String {
    if let Some((cut, _)) = text.char_indices().nth(EVIDENCE_CHARS_MAX) {
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

/// The deepest configuration the search reached, for the explanation of a failure.
#[derive(Debug, Default)]
struct Best {
    depth: usize,
    bits: Vec<u64>,
    state: State,
    /// The last few operations of the linearized prefix (positions in `Key::ops`).
    tail: Vec<u32>,
}

enum SearchEnd {
    Linearizable,
    Stuck,
    OutOfBudget(String),
}

/// The Wing–Gong–Lowe search over the operations of one key.
struct Search<'k> {
    ops: &'k [KeyOp],
    /// Event list: node 0 is the head sentinel, node `e + 1` is event `e`.
    next: Vec<u32>,
    prev: Vec<u32>,
    /// The operation of each node, whether the node is its call, and its time.
    node_op: Vec<u32>,
    node_is_call: Vec<bool>,
    node_time: Vec<u64>,
    call_node: Vec<u32>,
    ret_node: Vec<u32>,
    /// Per pool: the state its members leave, and its members in order of call.
    pools: Vec<(State, Vec<u32>)>,
    /// Per state: operations not yet linearized that may still write it.
    writers_left: Vec<u32>,
    /// Per state: operations not yet linearized that must be linearized and observe it.
    observers_left: Vec<u32>,
    /// Random 64-bit code of each operation; a configuration's hash is their XOR.
    zobrist: Vec<u64>,
    cache: Cache,
    steps: u64,
    best: Best,
}

/// One linearized operation on the search stack.
#[derive(Debug, Clone, Copy)]
struct Frame {
    op: u32,
    /// The state before this frame.
    before: State,
    /// The pooled write linearized just before `op` in the same step, or [`NIL`].
    pooled: u32,
    /// How `op` was linearized: 0 directly, `p + 1` after a member of pool `p`.
    alternative: usize,
    /// Whether `op` is a read linearized without alternatives (see
    /// [`Search::legal_read_in_window`]).
    forced: bool,
}

impl<'k> Search<'k> {
    fn new(ops: &'k [KeyOp], pool_states: &[State], states: usize) -> Self {
        let mut events: Vec<(u64, bool, u32)> = Vec::with_capacity(ops.len() * 2);
        let mut pools: Vec<(State, Vec<u32>)> = pool_states.iter().map(|&state| (state, Vec::new())).collect();
        for (i, op) in ops.iter().enumerate() {
            if let Some(pool) = op.pool.and_then(|p| pools.get_mut(p as usize)) {
                pool.1.push(i as u32);
                continue;
            }
            // `false` sorts first: at equal times calls precede returns (concurrent).
            events.push((op.call, false, i as u32));
            if let Some(ret) = op.ret {
                events.push((ret, true, i as u32));
            }
        }
        events.sort_unstable();
        for (_, members) in &mut pools {
            members.sort_unstable_by_key(|&i| (ops[i as usize].call, i));
        }
        let nodes = events.len() + 1;
        let mut search = Search {
            ops,
            next: Vec::with_capacity(nodes),
            prev: Vec::with_capacity(nodes),
            node_op: Vec::with_capacity(nodes),
            node_is_call: Vec::with_capacity(nodes),
            node_time: Vec::with_capacity(nodes),
            call_node: vec![NIL; ops.len()],
            ret_node: vec![NIL; ops.len()],
            pools,
            writers_left: vec![0; states],
            observers_left: vec![0; states],
            zobrist: (0..ops.len() as u64).map(|i| splitmix64(i ^ 0x5157_4f52_4154_4521)).collect(),
            cache: Cache::new(ops.len().div_ceil(64)),
            steps: 0,
            best: Best::default(),
        };
        for i in 0..ops.len() as u32 {
            search.count(i, 1);
        }
        search.next.push(if events.is_empty() { NIL } else { 1 });
        search.prev.push(NIL);
        search.node_op.push(NIL);
        search.node_is_call.push(false);
        search.node_time.push(0);
        for (e, &(time, is_ret, op)) in events.iter().enumerate() {
            let node = (e + 1) as u32;
            search.next.push(if e + 1 < events.len() { node + 1 } else { NIL });
            search.prev.push(node - 1);
            search.node_op.push(op);
            search.node_is_call.push(!is_ret);
            search.node_time.push(time);
            let slot = if is_ret { &mut search.ret_node } else { &mut search.call_node };
            if let Some(s) = slot.get_mut(op as usize) {
                *s = node;
            }
        }
        search
    }

    fn unlink(&mut self, node: u32) {
        let (n, p) = (self.next[node as usize], self.prev[node as usize]);
        self.next[p as usize] = n;
        if n != NIL {
            self.prev[n as usize] = p;
        }
    }

    fn relink(&mut self, node: u32) {
        let (n, p) = (self.next[node as usize], self.prev[node as usize]);
        self.next[p as usize] = node;
        if n != NIL {
            self.prev[n as usize] = node;
        }
    }

    /// Removes an operation's events from the list.
    fn lift(&mut self, op: u32) {
        self.unlink(self.call_node[op as usize]);
        let ret = self.ret_node[op as usize];
        if ret != NIL {
            self.unlink(ret);
        }
    }

    /// Restores what [`Search::lift`] removed (in reverse order, as dancing links require).
    fn unlift(&mut self, op: u32) {
        let ret = self.ret_node[op as usize];
        if ret != NIL {
            self.relink(ret);
        }
        self.relink(self.call_node[op as usize]);
    }

    /// Adds `delta` (+1 or -1 as `u32` wrapping) to the writer and observer counts of `op`.
    fn count(&mut self, op: u32, delta: u32) {
        let Some(kop) = self.ops.get(op as usize) else { return };
        if let Some(w) = kop.action.written().and_then(|w| self.writers_left.get_mut(w as usize)) {
            *w = w.wrapping_add(delta);
        }
        if kop.ret.is_some()
            && let Some(o) = kop.action.observed().and_then(|v| self.observers_left.get_mut(v as usize))
        {
            *o = o.wrapping_add(delta);
        }
    }

    /// Whether, in `state`, some required operation still waits to observe `value` although
    /// no operation that could write it is left.
    fn starves(&self, value: State, state: State) -> bool {
        value != state
            && self.observers_left.get(value as usize).is_some_and(|&n| n > 0)
            && self.writers_left.get(value as usize).is_some_and(|&n| n == 0)
    }

    /// Whether linearizing `op` (after `pooled`, if not [`NIL`]) from state `before` into
    /// `after` leaves a configuration from which no linearization can exist. The counts must
    /// already exclude `op` and `pooled`; only values whose counts or state changed can newly
    /// starve, since the configuration before was not dead.
    fn dead_end(&self, op: u32, pooled: u32, before: State, after: State) -> bool {
        let written = |o: u32| self.ops.get(o as usize).and_then(|k| k.action.written());
        let mut changed = [Some(before), written(op), None];
        if pooled != NIL {
            changed[2] = written(pooled);
        }
        changed.into_iter().flatten().any(|v| self.starves(v, after))
    }

    /// The first way, from `alternative` on, to linearize `op` (whose call node is `entry`) in
    /// `state`: `(alternative, pooled member or NIL, state after)`. Alternative 0 applies `op`
    /// directly; alternative `p + 1` applies a callable member of pool `p` first, and is only
    /// considered when `op` is illegal in `state` (a pooled write is needed only then).
    fn next_alternative(
        &self,
        op: u32,
        entry: u32,
        state: State,
        alternative: usize,
        bits: &[u64],
    ) -> Option<(usize, u32, State)> {
        let action = self.ops.get(op as usize)?.action;
        let direct = action.apply(state);
        if alternative == 0
            && let Some(after) = direct
        {
            return Some((0, NIL, after));
        }
        if direct.is_some() {
            return None;
        }
        for (pool, &(pool_state, _)) in self.pools.iter().enumerate().skip(alternative.saturating_sub(1)) {
            if let Some(after) = action.apply(pool_state)
                && let Some(member) = self.callable_pool_member(pool, entry, bits)
            {
                return Some((pool + 1, member, after));
            }
        }
        None
    }

    /// A member of pool `pool` that is not linearized and was called no later than the first
    /// return event at or after `entry` (the end of the current window).
    fn callable_pool_member(&self, pool: usize, entry: u32, bits: &[u64]) -> Option<u32> {
        let mut node = entry;
        while node != NIL && self.node_is_call[node as usize] {
            node = self.next[node as usize];
        }
        let window_end = if node == NIL { u64::MAX } else { self.node_time[node as usize] };
        let (_, members) = self.pools.get(pool)?;
        members
            .iter()
            .copied()
            .take_while(|&m| self.ops[m as usize].call <= window_end)
            .find(|&m| bits[m as usize / 64] & (1u64 << (m % 64)) == 0)
    }

    /// A read-only operation (get or failed cas) in the current window that is legal in
    /// `state`, if any.
    ///
    /// Linearizing it at once never loses a linearization: in any linearization of the rest it
    /// can be moved to the front, since it does not change the state and no pending operation
    /// returned before it was called. So it is linearized without trying alternatives.
    fn legal_read_in_window(&self, state: State) -> Option<u32> {
        let mut node = self.next[0];
        while node != NIL && self.node_is_call[node as usize] {
            let op = self.node_op[node as usize];
            if let Some(kop) = self.ops.get(op as usize)
                && matches!(kop.action, Action::Get(_) | Action::CasFailed { .. })
                && kop.action.apply(state).is_some()
            {
                return Some(op);
            }
            node = self.next[node as usize];
        }
        None
    }

    fn run(&mut self, limits: &Limits) -> SearchEnd {
        let ops = self.ops;
        let mut required_left = ops.iter().filter(|op| op.ret.is_some()).count();
        let mut bits = vec![0u64; ops.len().div_ceil(64)];
        let mut hash = 0u64;
        let mut state = ABSENT;
        let mut stack: Vec<Frame> = Vec::new();
        // Whether `stack` is deeper than `self.best` records.
        let mut deeper = false;
        let mut entry = self.next[0];
        // Which way of linearizing `entry` to try next: 0 directly, `p + 1` after a member of
        // pool `p`.
        let mut alternative = 0usize;
        // Whether the configuration was just entered (then a legal read goes first).
        let mut fresh = true;
        loop {
            if required_left == 0 {
                return SearchEnd::Linearizable;
            }
            if self.steps >= limits.steps_per_key_max {
                return SearchEnd::OutOfBudget(format!("the search took more than {} steps", limits.steps_per_key_max));
            }
            self.steps += 1;
            let mut choice = None;
            if fresh {
                fresh = false;
                choice = self.legal_read_in_window(state).map(|op| Frame {
                    op,
                    before: state,
                    pooled: NIL,
                    alternative: 0,
                    forced: true,
                });
            }
            if choice.is_none() && entry != NIL && self.node_is_call[entry as usize] {
                let op = self.node_op[entry as usize];
                let Some((taken, pooled, _)) = self.next_alternative(op, entry, state, alternative, &bits) else {
                    entry = self.next[entry as usize];
                    alternative = 0;
                    continue;
                };
                alternative = taken;
                choice = Some(Frame { op, before: state, pooled, alternative: taken, forced: false });
            }
            if let Some(frame) = choice {
                let after = self.after(&frame);
                self.flip(&frame, &mut bits, &mut hash);
                let inserted = if self.dead_end(frame.op, frame.pooled, state, after) {
                    Ok(false)
                } else {
                    self.cache.insert(hash, after, &bits, limits)
                };
                match inserted {
                    Err(reason) => return SearchEnd::OutOfBudget(reason),
                    Ok(true) => {
                        stack.push(frame);
                        state = after;
                        if ops[frame.op as usize].ret.is_some() {
                            required_left -= 1;
                        }
                        self.lift(frame.op);
                        if stack.len() > self.best.depth {
                            self.best.depth = stack.len();
                            deeper = true;
                        }
                        entry = self.next[0];
                        alternative = 0;
                        fresh = true;
                        continue;
                    }
                    Ok(false) => {
                        self.flip(&frame, &mut bits, &mut hash);
                        if !frame.forced {
                            alternative += 1;
                            continue;
                        }
                        // The configuration after a forced read was explored and failed, so
                        // this one fails too.
                    }
                }
            }
            // A return event, the end of the list or a failed forced read: no linearization
            // extends this configuration, so undo the last choice.
            if deeper {
                deeper = false;
                self.best.bits.clone_from(&bits);
                self.best.state = state;
                let mut tail: Vec<u32> = Vec::new();
                for frame in stack.iter().rev() {
                    if tail.len() >= EVIDENCE_OPS_MAX {
                        break;
                    }
                    tail.push(frame.op);
                    if frame.pooled != NIL {
                        tail.push(frame.pooled);
                    }
                }
                tail.truncate(EVIDENCE_OPS_MAX);
                tail.reverse();
                self.best.tail = tail;
            }
            let Some(frame) = stack.pop() else {
                return SearchEnd::Stuck;
            };
            state = frame.before;
            self.flip(&frame, &mut bits, &mut hash);
            if ops[frame.op as usize].ret.is_some() {
                required_left += 1;
            }
            self.unlift(frame.op);
            if frame.forced {
                // A forced read was the only choice tried in its configuration.
                entry = NIL;
            } else {
                entry = self.call_node[frame.op as usize];
                alternative = frame.alternative + 1;
            }
        }
    }

    /// The state after `frame`'s operations, which must be legal.
    fn after(&self, frame: &Frame) -> State {
        let mut state = frame.before;
        if frame.pooled != NIL {
            state = self.pools.get(frame.alternative.wrapping_sub(1)).map_or(ABSENT, |p| p.0);
        }
        self.ops.get(frame.op as usize).and_then(|op| op.action.apply(state)).unwrap_or(state)
    }

    /// Adds or removes `frame`'s operations to or from the linearized set, its hash and the
    /// writer and observer counts.
    fn flip(&mut self, frame: &Frame, bits: &mut [u64], hash: &mut u64) {
        let adding = bits.get(frame.op as usize / 64).is_some_and(|w| w >> (frame.op % 64) & 1 == 0);
        let delta = if adding { u32::MAX } else { 1 };
        for op in [frame.op, frame.pooled] {
            if op != NIL {
                toggle(bits, hash, &self.zobrist, op);
                self.count(op, delta);
            }
        }
    }
}

/// Flips `op` in the linearized set and in its hash.
fn toggle(bits: &mut [u64], hash: &mut u64, zobrist: &[u64], op: u32) {
    if let Some(word) = bits.get_mut(op as usize / 64) {
        *word ^= 1u64 << (op % 64);
    }
    *hash ^= zobrist.get(op as usize).copied().unwrap_or(0);
}

/// The set of explored configurations (linearized set, state), with the bitsets stored in one
/// arena and colliding entries chained.
struct Cache {
    words: usize,
    /// (configuration hash, state) → first entry of its chain.
    heads: HashMap<(u64, State), u32, BuildHasherDefault<FxHasher>>,
    /// Next entry in the chain, or [`NIL`].
    chain: Vec<u32>,
    /// `words` words per entry.
    arena: Vec<u64>,
}

impl Cache {
    /// Approximate bytes per entry besides the bitset: chain link and hash-map slot.
    const ENTRY_OVERHEAD_BYTES: usize = 4 + 24;

    fn new(words: usize) -> Self {
        Cache { words, heads: HashMap::default(), chain: Vec::new(), arena: Vec::new() }
    }

    /// Inserts a configuration; `Ok(false)` when it was already there.
    fn insert(&mut self, hash: u64, state: State, bits: &[u64], limits: &Limits) -> Result<bool, String> {
        let words = self.words;
        let first = match self.heads.entry((hash, state)) {
            Entry::Occupied(head) => {
                let mut i = *head.get();
                let mut chain_len = 0usize;
                while i != NIL && chain_len <= self.chain.len() {
                    let start = i as usize * words;
                    if self.arena.get(start..start + words) == Some(bits) {
                        return Ok(false);
                    }
                    i = self.chain.get(i as usize).copied().unwrap_or(NIL);
                    chain_len += 1;
                }
                *head.get()
            }
            Entry::Vacant(_) => NIL,
        };
        let entries = self.chain.len();
        let bytes = (entries + 1).saturating_mul(words * 8 + Self::ENTRY_OVERHEAD_BYTES);
        if bytes > limits.cache_bytes_per_key_max || entries >= (NIL - 1) as usize {
            return Err(format!("the configuration cache outgrew {} bytes", limits.cache_bytes_per_key_max));
        }
        self.arena.extend_from_slice(bits);
        self.chain.push(first);
        self.heads.insert((hash, state), entries as u32);
        Ok(true)
    }
}

/// The multiply-rotate hash of rustc (FxHash); the configuration hash is already well mixed.
#[derive(Default)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// One step of the SplitMix64 generator, used as a mixing function.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
