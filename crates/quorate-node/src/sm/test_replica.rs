//! A replica for the state machine's unit tests: a `BTreeMap` as the store, commands applied
//! through an [`Overlay`] exactly as the apply thread applies them, and (when `track` is on) the
//! whole state recorded at every revision, to check reads at a revision and watch events
//! against. Shared by the tests of `sm/history.rs`, `sm/events.rs` and `sm/leases.rs`.

use super::{ApplyOutcome, Overlay, apply_command, read_scan_page, revision};
use quorate_api::{ApiError, Command, CommandOp, KeyValue, Response, Sequenced, SessionId, Txn, TxnOp};
use quorate_log::LogIndex;
use std::collections::BTreeMap;

/// The store of a test replica.
pub(crate) type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// A test replica: its store, the index of the last command applied, and the state at every
/// revision since tracking began.
pub(crate) struct Replica {
    pub(crate) map: Map,
    pub(crate) index: u64,
    /// The pairs present at each revision (sorted by key), recorded while `track` is on.
    pub(crate) states: BTreeMap<u64, Vec<KeyValue>>,
    /// Whether `states` is kept (a full scan per command).
    pub(crate) track: bool,
}

impl Replica {
    /// An empty replica; with `version`, the cluster is finalized to it by its first command.
    pub(crate) fn new(version: Option<u32>) -> Replica {
        let mut r = Replica { map: Map::new(), index: 0, states: BTreeMap::new(), track: true };
        if let Some(version) = version {
            r.run(CommandOp::SetClusterVersion { version });
        }
        r
    }

    /// Records the current state under the current revision.
    pub(crate) fn snap(&mut self) {
        let kvs = read_scan_page(&self.map, b"", None, 100_000, usize::MAX).unwrap().kvs;
        self.states.insert(revision(&self.map).unwrap(), kvs);
    }

    /// Applies `ops` in one batch (one overlay), as the apply thread does, and returns each
    /// command's whole outcome.
    pub(crate) fn outcomes(&mut self, ops: Vec<CommandOp>) -> Vec<ApplyOutcome> {
        self.outcomes_in(ops.into_iter().map(|op| (None, op)).collect())
    }

    /// Applies `ops`, each in its session (if any), in one batch.
    pub(crate) fn outcomes_in(&mut self, ops: Vec<(Option<Sequenced>, CommandOp)>) -> Vec<ApplyOutcome> {
        let base = self.map.clone();
        let mut ov = Overlay::new(&base);
        let mut out = Vec::new();
        let mut states = Vec::new();
        for (session, op) in ops {
            self.index += 1;
            let cmd = Command { session, time_ms: self.index, op };
            out.push(apply_command(&mut ov, LogIndex(self.index), &cmd).unwrap());
            if !self.track {
                continue;
            }
            // The state as of this command: the overlay's writes so far over the base.
            let mut now = base.clone();
            for (k, v) in &ov.writes {
                match v {
                    Some(v) => now.insert(k.clone(), v.clone()),
                    None => now.remove(k),
                };
            }
            states.push((revision(&now).unwrap(), read_scan_page(&now, b"", None, 100_000, usize::MAX).unwrap().kvs));
        }
        ov.apply_to(&mut self.map);
        self.states.extend(states);
        out
    }

    /// Applies `op` alone and returns its whole outcome.
    pub(crate) fn out(&mut self, op: CommandOp) -> ApplyOutcome {
        self.outcomes(vec![op]).pop().unwrap()
    }

    /// Applies `op` in `session` and returns its whole outcome.
    pub(crate) fn out_in(&mut self, session: Sequenced, op: CommandOp) -> ApplyOutcome {
        self.outcomes_in(vec![(Some(session), op)]).pop().unwrap()
    }

    /// Opens a session owned by `principal`.
    pub(crate) fn open_session(&mut self, principal: &str) -> SessionId {
        let nonce = 0x5eed_0000 + self.index;
        match self.run(CommandOp::OpenSessionFor { principal: principal.into(), nonce }) {
            Response::Session(id) => id,
            other => panic!("not a session: {other:?}"),
        }
    }

    /// Applies `ops` in one batch and returns each command's result.
    pub(crate) fn run_all(&mut self, ops: Vec<CommandOp>) -> Vec<Result<Response, ApiError>> {
        self.outcomes(ops).into_iter().map(|o| o.result).collect()
    }

    /// Applies `op` and returns its result.
    pub(crate) fn try_run(&mut self, op: CommandOp) -> Result<Response, ApiError> {
        self.out(op).result
    }

    /// Applies `op`, which must succeed.
    pub(crate) fn run(&mut self, op: CommandOp) -> Response {
        self.try_run(op).unwrap()
    }
}

/// A little deterministic generator (no dependency): xorshift.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    /// The next number below `n`.
    pub(crate) fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The mix of a seeded workload ([`random_ops`]).
pub(crate) struct Workload {
    /// The keys it writes.
    pub(crate) keys: [&'static [u8]; 7],
    /// Of ten draws, how many are puts (at most six); the rest up to six are deletes, then a
    /// cas, a transaction, a delete-range and a put of `z`.
    pub(crate) puts: u64,
    /// A transaction's operations (at most [`TXN_OPS`]): put, delete, put, delete.
    pub(crate) txn_ops: usize,
}

/// Most operations of a [`Workload`]'s transactions.
pub(crate) const TXN_OPS: usize = 4;

/// `count` commands drawn from `seed` as `w` mixes them.
pub(crate) fn random_ops(seed: u64, count: usize, w: &Workload) -> Vec<CommandOp> {
    assert!(w.puts <= 6 && w.txn_ops <= TXN_OPS, "a workload within its bounds");
    let mut rng = Rng(seed | 1);
    let keys = w.keys;
    let key = |rng: &mut Rng| keys[rng.next(keys.len() as u64) as usize].to_vec();
    (0..count)
        .map(|i| match rng.next(10) {
            d if d < w.puts => CommandOp::Put { key: key(&mut rng), value: format!("v{i}").into_bytes() },
            0..=5 => CommandOp::Delete { key: key(&mut rng) },
            6 => CommandOp::Cas { key: key(&mut rng), expected: None, value: format!("c{i}").into_bytes() },
            7 => CommandOp::Txn(Txn {
                compare: vec![],
                success: (0..w.txn_ops)
                    .map(|j| match j {
                        0 => TxnOp::Put { key: key(&mut rng), value: format!("t{i}").into_bytes() },
                        2 => TxnOp::Put { key: key(&mut rng), value: format!("u{i}").into_bytes() },
                        _ => TxnOp::Delete { key: key(&mut rng) },
                    })
                    .collect(),
                failure: vec![],
            }),
            8 => {
                let (a, b) = (key(&mut rng), key(&mut rng));
                if a < b { CommandOp::DeleteRange { start: a, end: b } } else { CommandOp::Delete { key: a } }
            }
            _ => CommandOp::Put { key: b"z".to_vec(), value: format!("z{i}").into_bytes() },
        })
        .collect()
}
