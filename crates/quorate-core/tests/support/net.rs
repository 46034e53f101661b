//! A small hand-driven cluster for scenario tests: every node has a queue of persist batches
//! handed out and not yet written (written and reported only when the test says so, and lost
//! at a crash), and the network is a queue the test delivers from, drops from or filters.
//! Nothing happens unless a test step asks for it, so a scenario reads like its description.

#![allow(dead_code, reason = "each test file uses a part of the harness")]

use quorate_core::{Append, Config, Instant, Message, MessageBody, Persist, Raft, Recovering, Role, SendSnapshot};
use quorate_log::{
    Configuration, Data, Entry, EntryId, EntryPayload, HardState, LogIndex, LogStorage, MemLog, NodeId, SnapshotMeta,
    Term,
};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

pub(crate) fn n(i: u64) -> NodeId {
    NodeId::new(i).expect("node ids start at 1")
}

/// 100 ms election timeouts, 20 ms heartbeats, the node id as seed; the rest as `Config::new`.
/// A message from `from` to `to` at `term`.
pub(crate) fn msg(from: u64, to: u64, term: u64, body: MessageBody) -> Message {
    Message { from: n(from), to: n(to), term: Term(term), body }
}

/// A command entry at index `i` and term `t` carrying `s`.
pub(crate) fn cmd(i: u64, t: u64, s: &str) -> Entry {
    Entry { index: LogIndex(i), term: Term(t), payload: EntryPayload::Command(Data::from(s)) }
}

/// An append after `prev` = (index, term), with `entries` and the leader's `commit`.
pub(crate) fn append(prev: (u64, u64), entries: Vec<Entry>, commit: u64) -> MessageBody {
    MessageBody::Append(Append {
        prev: EntryId::new(Term(prev.1), LogIndex(prev.0)),
        entries,
        commit: LogIndex(commit),
    })
}

pub(crate) fn config(id: NodeId) -> Config {
    let mut c = Config::new(id);
    c.election_timeout_min = Duration::from_millis(100);
    c.heartbeat_interval = Duration::from_millis(20);
    c.seed = id.get();
    c
}

/// Writes one persist batch into a `MemLog` the way a store does: install or compact, then
/// truncate and append, then the hard state.
pub(crate) fn write(s: &mut MemLog, p: &Persist) {
    if let Some(m) = p.install.clone().or(p.compact.clone()) {
        s.apply_snapshot(m);
    }
    if let Some(first) = p.entries.first() {
        s.truncate_from(first.index);
    }
    s.append(&p.entries).expect("a contiguous batch");
    if let Some(hs) = p.hard_state {
        s.set_hard_state(hs);
    }
}

pub(crate) struct Node {
    pub(crate) raft: Raft<MemLog>,
    pub(crate) cfg: Config,
    /// Batches handed out, not yet written.
    pub(crate) disk: VecDeque<Persist>,
    /// Entries handed out to apply, in order.
    pub(crate) applied: Vec<Entry>,
    /// Snapshot requests handed out (`Ready::take_snapshot`).
    pub(crate) snapshot_requests: Vec<SnapshotMeta>,
    /// How many `Ready`s reported the end of a recovery from lost state (`Ready::recovered`).
    pub(crate) recovered: usize,
}

/// A hook applied to every core when it is created or restarted (tests that re-introduce a
/// hole pass one).
pub(crate) type Prep = fn(&mut Raft<MemLog>);

pub(crate) struct Net {
    pub(crate) nodes: BTreeMap<NodeId, Node>,
    /// Messages sent and not yet delivered, in send order.
    pub(crate) wire: Vec<Message>,
    /// Every message any node sent, in order.
    pub(crate) sent: Vec<Message>,
    /// Snapshot transfers asked for (`Ready::send_snapshots`): the sender, its term, what.
    pub(crate) snapshots: Vec<(NodeId, Term, SendSnapshot)>,
    /// Messages that left a node at a term its stable storage did not hold yet (pre-vote
    /// requests and responses excepted: their term is one the sender has not adopted).
    pub(crate) early: Vec<String>,
    pub(crate) now: Instant,
    prep: Prep,
}

impl Net {
    pub(crate) fn new(prep: Prep) -> Net {
        Net {
            nodes: BTreeMap::new(),
            wire: Vec::new(),
            sent: Vec::new(),
            snapshots: Vec::new(),
            early: Vec::new(),
            now: Instant::ZERO,
            prep,
        }
    }

    /// Adds node `id` over `storage`.
    pub(crate) fn add(&mut self, cfg: Config, storage: MemLog) {
        let mut raft = Raft::new(cfg.clone(), storage, self.now).expect("a valid configuration");
        (self.prep)(&mut raft);
        let node =
            Node { raft, cfg, disk: VecDeque::new(), applied: Vec::new(), snapshot_requests: Vec::new(), recovered: 0 };
        self.nodes.insert(node.cfg.id, node);
    }

    /// Nodes `ids`, all starting from the bootstrap configuration `conf`, with `tweak` applied to
    /// each one's settings.
    pub(crate) fn with_nodes(prep: Prep, ids: &[u64], conf: &Configuration, tweak: impl Fn(&mut Config)) -> Net {
        let mut net = Net::new(prep);
        for &i in ids {
            let mut c = config(n(i));
            tweak(&mut c);
            net.add(c, MemLog::new(conf.clone()));
        }
        net
    }

    pub(crate) fn raft(&mut self, i: u64) -> &mut Raft<MemLog> {
        &mut self.nodes.get_mut(&n(i)).expect("node exists").raft
    }

    pub(crate) fn node(&mut self, i: u64) -> &mut Node {
        self.nodes.get_mut(&n(i)).expect("node exists")
    }

    pub(crate) fn advance(&mut self, ms: u64) {
        self.now = self.now.saturating_add(Duration::from_millis(ms));
    }

    /// Calls `handle_timeout` on every node whose timer is due.
    pub(crate) fn tick(&mut self) {
        let now = self.now;
        for node in self.nodes.values_mut() {
            if node.raft.poll_timeout().is_some_and(|t| t <= now) {
                node.raft.handle_timeout(now);
            }
        }
    }

    /// Drains node `i`'s `Ready`s: batches go to its disk queue (unwritten), messages onto
    /// the wire, committed entries to `applied`.
    pub(crate) fn ready(&mut self, i: u64) {
        for _ in 0..16 {
            let node = self.nodes.get_mut(&n(i)).expect("node exists");
            if !node.raft.has_ready() {
                return;
            }
            let rd = node.raft.ready();
            if rd.is_empty() {
                return;
            }
            if let Some(p) = rd.persist {
                node.disk.push_back(p);
            }
            node.applied.extend(rd.committed);
            node.snapshot_requests.extend(rd.take_snapshot);
            if rd.recovered {
                // The application drops its evidence of the loss: the next start is a normal one.
                node.recovered += 1;
                node.cfg.recovering = None;
            }
            let (from, term) = (node.cfg.id, node.raft.term());
            self.snapshots.extend(rd.send_snapshots.into_iter().map(|s| (from, term, s)));
            let durable = node.raft.storage().hard_state().term;
            for m in &rd.messages {
                let pre_vote = matches!(&m.body, MessageBody::RequestVote(v) if v.pre_vote)
                    || matches!(&m.body, MessageBody::VoteResponse(v) if v.pre_vote);
                if !pre_vote && m.term > durable {
                    self.early.push(format!("{m:?} left while term {durable} was durable"));
                }
            }
            self.sent.extend(rd.messages.iter().cloned());
            self.wire.extend(rd.messages);
        }
    }

    /// Writes node `i`'s oldest `count` unwritten batches to its storage, without reporting them.
    pub(crate) fn write(&mut self, i: u64, count: usize) -> Vec<Persist> {
        let node = self.node(i);
        let mut out = Vec::new();
        for _ in 0..count {
            let Some(p) = node.disk.pop_front() else { break };
            write(node.raft.storage_mut(), &p);
            out.push(p);
        }
        out
    }

    /// Writes and reports every batch node `i` handed out.
    pub(crate) fn persist(&mut self, i: u64) {
        let now = self.now;
        let node = self.node(i);
        while let Some(p) = node.disk.pop_front() {
            write(node.raft.storage_mut(), &p);
            node.raft.persisted(now, p.io);
        }
    }

    /// Delivers (and removes) the queued messages `select` picks; returns how many.
    pub(crate) fn deliver(&mut self, mut select: impl FnMut(&Message) -> bool) -> usize {
        let (take, keep): (Vec<Message>, Vec<Message>) =
            std::mem::take(&mut self.wire).into_iter().partition(|m| select(m));
        self.wire = keep;
        let now = self.now;
        let count = take.len();
        for m in take {
            if let Some(node) = self.nodes.get_mut(&m.to) {
                node.raft.handle_message(now, m);
            }
        }
        count
    }

    /// Drops (and returns) the queued messages `select` picks.
    pub(crate) fn drop_where(&mut self, mut select: impl FnMut(&Message) -> bool) -> Vec<Message> {
        let (take, keep): (Vec<Message>, Vec<Message>) =
            std::mem::take(&mut self.wire).into_iter().partition(|m| select(m));
        self.wire = keep;
        take
    }

    /// One round, 1 ms later: timers fire; every node's `Ready` is drained and its batches
    /// written and reported; the messages `select` picks are delivered, the others dropped.
    /// Returns whether anything moved.
    fn round(&mut self, select: &mut impl FnMut(&Message) -> bool) -> bool {
        self.advance(1);
        self.tick();
        let ids: Vec<u64> = self.nodes.keys().map(|id| id.get()).collect();
        for &i in &ids {
            self.ready(i);
            self.persist(i);
            self.ready(i);
        }
        let dropped = self.drop_where(|m| !select(m));
        let delivered = self.deliver(|_| true);
        delivered > 0 || !dropped.is_empty() || self.nodes.values().any(|x| x.raft.has_ready())
    }

    /// Rounds (see [`Net::round`]) until nothing moves, at most `rounds`.
    pub(crate) fn settle(&mut self, rounds: usize, mut select: impl FnMut(&Message) -> bool) {
        for _ in 0..rounds {
            if !self.round(&mut select) {
                return;
            }
        }
    }

    /// Rounds until `done` holds, at most `rounds`; returns whether it did.
    pub(crate) fn run_until(
        &mut self,
        rounds: usize,
        mut select: impl FnMut(&Message) -> bool,
        mut done: impl FnMut(&mut Net) -> bool,
    ) -> bool {
        for _ in 0..rounds {
            if done(self) {
                return true;
            }
            self.round(&mut select);
        }
        done(self)
    }

    /// Crashes node `i`: its unwritten batches and the messages to it are lost; it restarts from
    /// its storage (applied state lost too).
    pub(crate) fn crash(&mut self, i: u64) {
        let storage = self.raft(i).storage().clone();
        self.restart(i, storage);
    }

    /// Node `i` loses synced state: its process crashes and its storage goes back to `older`
    /// (an earlier state of its own storage), while the record of what it had made durable
    /// survives (its storage's hard state and last entry now); it restarts recovering from that
    /// record, which it returns.
    pub(crate) fn lose_state(&mut self, i: u64, older: MemLog) -> Recovering {
        let s = self.raft(i).storage();
        let hs = s.hard_state();
        let last = s.last_index();
        let term = s.term(last).expect("the last entry is readable");
        let record = Recovering { term: hs.term, vote: hs.vote, last: EntryId::new(term, last), commit: hs.commit };
        self.node(i).cfg.recovering = Some(record);
        self.restart(i, older);
        record
    }

    /// Node `i` crashes and restarts over `storage` with its settings (`cfg.recovering`
    /// included); unwritten batches, messages to it and its applied state are lost.
    pub(crate) fn restart(&mut self, i: u64, storage: MemLog) {
        let now = self.now;
        let prep = self.prep;
        let node = self.node(i);
        node.disk.clear();
        let mut cfg = node.cfg.clone();
        cfg.applied = LogIndex::ZERO;
        let mut raft = Raft::new(cfg, storage, now).expect("restarts");
        prep(&mut raft);
        node.raft = raft;
        node.applied.clear();
        self.wire.retain(|m| m.to != n(i));
    }

    /// Makes node `i` the leader of a fresh cluster: past the start-up period in which voters
    /// ignore vote requests, it campaigns; everything is delivered until it has committed its
    /// no-op.
    pub(crate) fn elect(&mut self, i: u64) {
        self.advance(100);
        let now = self.now;
        self.raft(i).campaign_now(now);
        let elected = self.run_until(200, |_| true, |net| net.leaders() == [n(i)] && net.raft(i).commit_index().0 >= 1);
        assert!(elected, "node {i} is elected and commits its no-op");
    }

    pub(crate) fn leaders(&self) -> Vec<NodeId> {
        self.nodes.iter().filter(|(_, x)| x.raft.role() == Role::Leader).map(|(id, _)| *id).collect()
    }
}

/// The entries of node `id`'s log as (index, term), from its core's point of view.
pub(crate) fn log_ids(r: &Raft<MemLog>) -> Vec<(u64, u64)> {
    let first = r.status().first_index.0;
    (first..=r.last_index().0).filter_map(|i| r.entry_term(LogIndex(i)).ok().map(|t| (i, t.0))).collect()
}

/// The durable hard state of a node.
pub(crate) fn durable_hs(r: &Raft<MemLog>) -> HardState {
    r.storage().hard_state()
}

/// The term of the entry at `index` on stable storage.
pub(crate) fn durable_term(r: &Raft<MemLog>, index: u64) -> Option<Term> {
    r.storage().term(LogIndex(index)).ok()
}

pub(crate) fn is_append(m: &Message) -> bool {
    matches!(m.body, MessageBody::Append(_))
}
