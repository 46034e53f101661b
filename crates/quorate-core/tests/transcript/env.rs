//! The interpreter: N cores over a manual in-memory network, driven one command at a time
//! (after etcd-io/raft's `rafttest.InteractionEnv`).
//!
//! Every core uses [`MemLog`] storage, 100 ms minimum election timeout, 20 ms heartbeats and
//! its id as seed, so output is deterministic. Time is a virtual clock that only `tick` and
//! `tick-all` move. The driver of each node is explicit: `process-ready` calls `ready()`,
//! queues the persist batch (it is written to the node's `MemLog` only by `persist`), queues
//! the messages on the network (dropped if they cross a partition) and records applies and
//! read results; `deliver` hands queued messages to their recipients. `stabilize` repeats
//! all three until nothing happens.
//!
//! Commands (node ids are 1..=N; `FILTER` is `A->B`, `A->*` or `*->B`):
//!
//! * `add-nodes N [learners=K] [pre-vote=B] [check-quorum=B] [lease=B] [uncommitted-max=BYTES]
//!   [msg-bytes-max=BYTES]` — N nodes, all followers at term 0: voters, but the last K are
//!   learners.
//! * `campaign ID` — `campaign_now`.
//! * `tick ID MS` / `tick-all MS` — advance the clock by MS, then call `handle_timeout` on
//!   ID (or on every node) if its `poll_timeout` has passed. Timers of other nodes stay due.
//! * `propose ID DATA...` — one proposal per DATA; `x*N` is `x` repeated N times.
//! * `read ID READ_ID [lease]` — a linearizable (or lease) read.
//! * `transfer ID TARGET` — `transfer_leadership`.
//! * `process-ready ID...`, `persist ID...` — one `ready()`; complete every queued persist
//!   batch (write to the `MemLog`, then `persisted`).
//! * `deliver [FILTER...]`, `drop [FILTER...]` — deliver (or lose) the queued messages.
//! * `stabilize [ID...] [quiet]` — loop: `process-ready`, `persist`, deliver messages addressed
//!   to the nodes (all by default), until quiescent (at most [`STABILIZE_ROUNDS_MAX`] rounds).
//!   `quiet` prints only read results and the nodes' status at the end (for set-up steps).
//! * `partition A B | C ...` / `heal` — drop messages between groups (queued ones too).
//! * `crash ID` — lose queued persist batches, inbound messages and the applied state;
//!   restart from the `MemLog`.
//! * `status [ID...]`, `log ID`.
//!
//! Outputs: messages as `1->2 append term=1 prev=0@0 entries=[1@1 noop] commit=0`; entries as
//! `index@term payload`; `N becomes ROLE term=T leader=L` when role, term or known leader
//! change; `N commit=C` when the commit index moves. The driver also checks two safety
//! properties on the fly and prints a `VIOLATION:` line if they fail: at most one leader per
//! term, and every node applies the same entry at each index.

use quorate_core::{
    AppendResponse, Config, Instant, Message, MessageBody, Persist, Raft, ReadId, ReadLevel, Role, Status,
};
use quorate_log::{Configuration, Data, Entry, EntryPayload, HardState, LogIndex, LogStorage, MemLog, NodeId, Term};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

/// Bound on `stabilize` rounds; a scenario that does not settle within it is reported.
const STABILIZE_ROUNDS_MAX: usize = 64;
/// Most nodes a scenario may add.
const NODES_MAX: u64 = 9;
const NANOS_PER_MS: u64 = 1_000_000;

struct Node {
    raft: Raft<MemLog>,
    cfg: Config,
    /// Persist batches handed out by `ready()` and not yet written.
    pending: VecDeque<Persist>,
    /// Last index the application applied.
    applied: LogIndex,
    seen: Observed,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Observed {
    role: Role,
    term: Term,
    leader: Option<NodeId>,
    commit: LogIndex,
}

impl Observed {
    fn of(raft: &Raft<MemLog>) -> Observed {
        Observed { role: raft.role(), term: raft.term(), leader: raft.leader(), commit: raft.commit_index() }
    }
}

/// Which queued messages a `deliver` or `drop` applies to.
#[derive(Clone, Copy)]
struct Filter {
    from: Option<u64>,
    to: Option<u64>,
}

impl Filter {
    fn matches(&self, m: &Message) -> bool {
        self.from.is_none_or(|f| f == m.from.get()) && self.to.is_none_or(|t| t == m.to.get())
    }
}

/// The interpreter's state: nodes, network, clock and the safety checks' memory.
#[derive(Default)]
pub(crate) struct Env {
    now_ms: u64,
    nodes: BTreeMap<u64, Node>,
    /// Messages sent and not yet delivered, in send order.
    net: Vec<Message>,
    /// Partition group of each node, if partitioned.
    groups: Option<BTreeMap<u64, usize>>,
    /// Payload of every entry seen, by (index, term): unique by the log-matching property.
    payloads: BTreeMap<(u64, u64), EntryPayload>,
    /// The entry applied at each index by the first node that applied it.
    applied_by_index: BTreeMap<u64, (Term, EntryPayload)>,
    /// The leader of each term.
    leaders: BTreeMap<Term, u64>,
    out: Vec<String>,
}

impl Env {
    /// Runs one command line, returning its output lines.
    pub(crate) fn run(&mut self, line: &str) -> Result<Vec<String>, String> {
        let toks: Vec<&str> = line.split_whitespace().collect();
        let Some((&cmd, args)) = toks.split_first() else { return Err("empty command".into()) };
        if cmd != "add-nodes" && self.nodes.is_empty() {
            return Err("no nodes: start with add-nodes".into());
        }
        match cmd {
            "add-nodes" => self.add_nodes(args)?,
            "campaign" => {
                let id = self.one_node(args)?;
                let now = self.now();
                self.node(id).raft.campaign_now(now);
                self.observe(id);
            }
            "tick" => {
                let [id, ms] = args else { return Err("usage: tick ID MS".into()) };
                let id = self.node_id(id)?;
                let ms = parse_u64(ms)?;
                self.tick(ms, &[id]);
            }
            "tick-all" => {
                let [ms] = args else { return Err("usage: tick-all MS".into()) };
                let ids: Vec<u64> = self.nodes.keys().copied().collect();
                self.tick(parse_u64(ms)?, &ids);
            }
            "propose" => {
                let Some((id, data)) = args.split_first() else { return Err("usage: propose ID DATA...".into()) };
                let id = self.node_id(id)?;
                if data.is_empty() {
                    return Err("usage: propose ID DATA...".into());
                }
                for d in data {
                    self.propose(id, d)?;
                }
            }
            "read" => self.read(args)?,
            "transfer" => {
                let [id, to] = args else { return Err("usage: transfer ID TARGET".into()) };
                let (id, to) = (self.node_id(id)?, self.node_id(to)?);
                let now = self.now();
                let res = self.node(id).raft.transfer_leadership(now, nid(to));
                self.out.push(match res {
                    Ok(()) => format!("transfer {id} {to} -> ok"),
                    Err(e) => format!("transfer {id} {to} -> error: {e}"),
                });
                self.observe(id);
            }
            "process-ready" => {
                for id in self.node_ids(args)? {
                    self.process_ready(id);
                }
            }
            "persist" => {
                for id in self.node_ids(args)? {
                    self.persist(id);
                }
            }
            "deliver" => {
                let filters = parse_filters(args)?;
                let taken = self.take_messages(|m| filters.iter().any(|f| f.matches(m)));
                if taken.is_empty() {
                    self.out.push("no messages to deliver".into());
                } else {
                    let kinds: Vec<String> = taken.iter().map(short).collect();
                    self.out.push(format!("delivered {}", kinds.join(", ")));
                }
                self.deliver(taken);
            }
            "drop" => {
                let filters = parse_filters(args)?;
                let taken = self.take_messages(|m| filters.iter().any(|f| f.matches(m)));
                for m in taken {
                    self.out.push(format!("dropped {}", fmt_msg(&m)));
                }
            }
            "stabilize" => {
                let (quiet, args) = match args.split_last() {
                    Some((&"quiet", rest)) => (true, rest),
                    _ => (false, args),
                };
                let ids = if args.is_empty() { self.nodes.keys().copied().collect() } else { self.node_ids(args)? };
                let before = self.out.len();
                self.stabilize(&ids)?;
                if quiet {
                    // Keep only read results and safety violations, then show where everything
                    // ended up.
                    let lines = self.out.split_off(before);
                    let keep = |l: &String| l.starts_with("VIOLATION") || l.split(' ').nth(1) == Some("read");
                    self.out.extend(lines.into_iter().filter(keep));
                    for id in ids {
                        self.status(id);
                    }
                }
            }
            "partition" => self.partition(args)?,
            "heal" => {
                self.groups = None;
                self.out.push("healed".into());
            }
            "crash" => {
                let id = self.one_node(args)?;
                self.crash(id)?;
            }
            "status" => {
                let ids = if args.is_empty() { self.nodes.keys().copied().collect() } else { self.node_ids(args)? };
                for id in ids {
                    self.status(id);
                }
            }
            "log" => {
                let id = self.one_node(args)?;
                self.log(id);
            }
            _ => return Err(format!("unknown command `{cmd}`")),
        }
        Ok(std::mem::take(&mut self.out))
    }

    // ----- helpers -----

    fn now(&self) -> Instant {
        Instant(self.now_ms * NANOS_PER_MS)
    }

    fn node(&mut self, id: u64) -> &mut Node {
        // Ids are checked by `node_id` when parsed.
        self.nodes.get_mut(&id).expect("a parsed node id exists")
    }

    fn node_id(&self, s: &str) -> Result<u64, String> {
        let id = parse_u64(s)?;
        if self.nodes.contains_key(&id) { Ok(id) } else { Err(format!("no node {id}")) }
    }

    fn one_node(&self, args: &[&str]) -> Result<u64, String> {
        let [id] = args else { return Err("expected one node id".into()) };
        self.node_id(id)
    }

    fn node_ids(&self, args: &[&str]) -> Result<Vec<u64>, String> {
        if args.is_empty() {
            return Err("expected node ids".into());
        }
        args.iter().map(|a| self.node_id(a)).collect()
    }

    fn connected(&self, a: u64, b: u64) -> bool {
        self.groups.as_ref().is_none_or(|g| g.get(&a) == g.get(&b))
    }

    fn remember(&mut self, entries: &[Entry]) {
        for e in entries {
            self.payloads.insert((e.index.0, e.term.0), e.payload.clone());
        }
    }

    /// Prints what changed on `id` since it was last observed, and checks election safety.
    fn observe(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("observed nodes exist");
        let now = Observed::of(&node.raft);
        let was = std::mem::replace(&mut node.seen, now);
        let last = node.raft.last_index();
        if (now.role, now.term, now.leader) != (was.role, was.term, was.leader) {
            self.out.push(format!("{id} becomes {} term={} leader={}", now.role, now.term, fmt_opt(now.leader)));
            if now.role == Role::Leader && was.role != Role::Leader {
                // The new leader's first act is appending its no-op at the end of its log.
                self.payloads.insert((last.0, now.term.0), EntryPayload::Noop);
                let first = *self.leaders.entry(now.term).or_insert(id);
                if first != id {
                    self.out.push(format!("VIOLATION: {id} and {first} are both leaders of term {}", now.term));
                }
            }
        }
        if now.commit != was.commit {
            self.out.push(format!("{id} commit={}", now.commit));
        }
    }

    fn tick(&mut self, ms: u64, ids: &[u64]) {
        self.now_ms += ms;
        self.out.push(format!("time={}ms", self.now_ms));
        let now = self.now();
        for &id in ids {
            let node = self.node(id);
            if node.raft.poll_timeout().is_some_and(|t| t <= now) {
                node.raft.handle_timeout(now);
                self.observe(id);
            }
        }
    }

    // ----- commands -----

    fn add_nodes(&mut self, args: &[&str]) -> Result<(), String> {
        if !self.nodes.is_empty() {
            return Err("nodes were already added".into());
        }
        let Some((n, opts)) = args.split_first() else { return Err("usage: add-nodes N [OPTION=VALUE...]".into()) };
        let n = parse_u64(n)?;
        if n == 0 || n > NODES_MAX {
            return Err(format!("between 1 and {NODES_MAX} nodes"));
        }
        let ids: Vec<NodeId> = (1..=n).map(nid).collect();
        let mut learners = 0;
        let mut base = Config::new(nid(1));
        base.election_timeout_min = Duration::from_millis(100);
        base.heartbeat_interval = Duration::from_millis(20);
        let mut settings = Vec::new();
        for opt in opts {
            let Some((k, v)) = opt.split_once('=') else { return Err(format!("expected KEY=VALUE, got `{opt}`")) };
            match k {
                "learners" => learners = parse_u64(v)?,
                "pre-vote" => base.pre_vote = parse_bool(v)?,
                "check-quorum" => base.check_quorum = parse_bool(v)?,
                "lease" => base.lease_clock_drift_max = parse_bool(v)?.then_some(Duration::from_millis(10)),
                "uncommitted-max" => base.uncommitted_bytes_max = parse_u64(v)?,
                "msg-bytes-max" => base.msg_bytes_max = parse_u64(v)?,
                _ => return Err(format!("unknown option `{k}`")),
            }
            settings.push(*opt);
        }
        if learners >= n {
            return Err("at least one voter".into());
        }
        let (voters, learner_ids) = ids.split_at((n - learners) as usize);
        let mut conf = Configuration::with_voters(voters.iter().copied()).map_err(|e| e.to_string())?;
        conf.learners = learner_ids.iter().copied().collect();
        let members =
            if learners == 0 { format!("{n} voters") } else { format!("{} voters, {learners} learners", n - learners) };
        self.out.push(format!(
            "{members}: election-timeout=100ms..200ms heartbeat=20ms pre-vote={} check-quorum={}{}{}",
            base.pre_vote,
            base.check_quorum,
            if base.lease_clock_drift_max.is_some() { " lease=true (clock drift < 10ms)" } else { "" },
            settings
                .iter()
                .filter(|o| {
                    !o.starts_with("pre-vote")
                        && !o.starts_with("check-quorum")
                        && !o.starts_with("lease")
                        && !o.starts_with("learners")
                })
                .map(|o| format!(" {o}"))
                .collect::<String>(),
        ));
        let now = self.now();
        for id in ids {
            let mut cfg = base.clone();
            cfg.id = id;
            cfg.seed = id.get();
            let raft = Raft::new(cfg.clone(), MemLog::new(conf.clone()), now).map_err(|e| e.to_string())?;
            let seen = Observed::of(&raft);
            self.out.push(format!("{id} follower term=0 election-timer={}", fmt_deadline(raft.poll_timeout())));
            self.nodes.insert(id.get(), Node { raft, cfg, pending: VecDeque::new(), applied: LogIndex::ZERO, seen });
        }
        Ok(())
    }

    fn propose(&mut self, id: u64, spec: &str) -> Result<(), String> {
        let data = match spec.rsplit_once('*') {
            Some((s, n)) => Data::from(s.repeat(parse_u64(n)? as usize).as_str()),
            None => Data::from(spec),
        };
        let now = self.now();
        let res = self.node(id).raft.propose(now, data.clone());
        match res {
            Ok(e) => {
                self.payloads.insert((e.index.0, e.term.0), EntryPayload::Command(data));
                self.out.push(format!("propose {id} {spec} -> {}@{}", e.index, e.term));
            }
            Err(e) => self.out.push(format!("propose {id} {spec} -> error: {e}")),
        }
        self.observe(id);
        Ok(())
    }

    fn read(&mut self, args: &[&str]) -> Result<(), String> {
        let (id, rid, level) = match args {
            [id, rid] => (id, rid, ReadLevel::Linearizable),
            [id, rid, "lease"] => (id, rid, ReadLevel::Lease),
            _ => return Err("usage: read ID READ_ID [lease]".into()),
        };
        let id = self.node_id(id)?;
        let rid = parse_u64(rid)?;
        let now = self.now();
        let res = self.node(id).raft.read(now, ReadId(rid), level);
        let lease = if level == ReadLevel::Lease { " lease" } else { "" };
        self.out.push(match res {
            Ok(()) => format!("read {id} {rid}{lease} -> accepted"),
            Err(e) => format!("read {id} {rid}{lease} -> error: {e}"),
        });
        self.observe(id);
        Ok(())
    }

    /// One `ready()` of `id`, handled. Returns whether it held anything.
    fn process_ready(&mut self, id: u64) -> bool {
        let rd = self.node(id).raft.ready();
        if rd.is_empty() {
            return false;
        }
        if let Some(p) = rd.persist {
            self.remember(&p.entries);
            self.out.push(format!("{id} {}", fmt_persist(&p)));
            self.node(id).pending.push_back(p);
        }
        for m in rd.messages {
            if let MessageBody::Append(a) = &m.body {
                self.remember(&a.entries);
            }
            if self.connected(m.from.get(), m.to.get()) {
                self.out.push(fmt_msg(&m));
                self.net.push(m);
            } else {
                self.out.push(format!("{} (dropped: partitioned)", fmt_msg(&m)));
            }
        }
        if !rd.committed.is_empty() {
            self.out.push(format!("{id} apply {}", join(rd.committed.iter().map(fmt_entry))));
            self.check_applied(id, &rd.committed);
        }
        for r in rd.reads {
            let applied = self.node(id).applied;
            self.out.push(format!("{id} read {} ready index={} (applied={applied})", r.id.0, r.index));
        }
        for f in rd.failed_reads {
            self.out.push(format!("{id} read {} failed: {}", f.id.0, f.error));
        }
        self.observe(id);
        true
    }

    /// Checks that `id` applies `entries` in order and that they agree with what every other
    /// node applied at the same indexes (state machine safety).
    fn check_applied(&mut self, id: u64, entries: &[Entry]) {
        for e in entries {
            let node = self.node(id);
            if e.index != node.applied.next() {
                let expected = node.applied.next();
                self.out.push(format!("VIOLATION: {id} applies {} after {}", e.index, expected.prev()));
            }
            self.node(id).applied = e.index;
            let first = self.applied_by_index.entry(e.index.0).or_insert((e.term, e.payload.clone()));
            if *first != (e.term, e.payload.clone()) {
                let other = format!("{}@{} {}", e.index, first.0, fmt_payload(&first.1));
                self.out.push(format!("VIOLATION: {id} applies {} but {other} was applied before", fmt_entry(e)));
            }
        }
    }

    fn persist(&mut self, id: u64) -> bool {
        let now = self.now();
        let mut any = false;
        while let Some(p) = self.node(id).pending.pop_front() {
            any = true;
            let node = self.node(id);
            if let Some(hs) = p.hard_state {
                node.raft.storage_mut().set_hard_state(hs);
            }
            if let Err(e) = node.raft.storage_mut().append(&p.entries) {
                // Not reported to the core: it waits for this batch forever.
                self.out.push(format!("{id} persist io={} failed: {e}", p.io.0));
                continue;
            }
            node.raft.persisted(now, p.io);
            self.out.push(format!("{id} persisted io={}", p.io.0));
            self.observe(id);
        }
        any
    }

    fn take_messages(&mut self, mut select: impl FnMut(&Message) -> bool) -> Vec<Message> {
        let (taken, kept) = std::mem::take(&mut self.net).into_iter().partition(|m| select(m));
        self.net = kept;
        taken
    }

    fn deliver(&mut self, msgs: Vec<Message>) {
        let now = self.now();
        for m in msgs {
            let to = m.to.get();
            self.node(to).raft.handle_message(now, m);
            self.observe(to);
        }
    }

    fn stabilize(&mut self, ids: &[u64]) -> Result<(), String> {
        let set: BTreeSet<u64> = ids.iter().copied().collect();
        for _ in 0..STABILIZE_ROUNDS_MAX {
            let mut busy = false;
            for &id in ids {
                busy |= self.process_ready(id);
            }
            for &id in ids {
                busy |= self.persist(id);
            }
            let msgs = self.take_messages(|m| set.contains(&m.to.get()));
            busy |= !msgs.is_empty();
            self.deliver(msgs);
            if !busy {
                return Ok(());
            }
        }
        Err(format!("not quiescent after {STABILIZE_ROUNDS_MAX} rounds:\n{}", self.out.join("\n")))
    }

    fn partition(&mut self, args: &[&str]) -> Result<(), String> {
        let mut groups = BTreeMap::new();
        let mut g = 0;
        for a in args {
            if *a == "|" {
                g += 1;
            } else if groups.insert(self.node_id(a)?, g).is_some() {
                return Err(format!("node {a} is in two groups"));
            }
        }
        // Nodes not named are each cut off on their own.
        for id in self.nodes.keys() {
            if !groups.contains_key(id) {
                g += 1;
                groups.insert(*id, g);
            }
        }
        let cut = self.take_messages(|m| groups.get(&m.from.get()) != groups.get(&m.to.get()));
        self.groups = Some(groups);
        let names: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        self.out.push(format!("partitioned {}", names.join(" ")));
        for m in cut {
            self.out.push(format!("dropped {}", fmt_msg(&m)));
        }
        Ok(())
    }

    fn crash(&mut self, id: u64) -> Result<(), String> {
        let now = self.now();
        let node = self.node(id);
        let lost: Vec<Persist> = node.pending.drain(..).collect();
        let storage = node.raft.storage().clone();
        let mut cfg = node.cfg.clone();
        // The in-memory state machine is lost too: it is rebuilt by applying from the start.
        cfg.applied = LogIndex::ZERO;
        let raft = Raft::new(cfg, storage, now).map_err(|e| e.to_string())?;
        node.seen = Observed::of(&raft);
        node.raft = raft;
        node.applied = LogIndex::ZERO;
        for p in &lost {
            self.out.push(format!("{id} lost {}", fmt_persist(p)));
        }
        for m in self.take_messages(|m| m.to.get() == id) {
            self.out.push(format!("dropped {}", fmt_msg(&m)));
        }
        self.out.push(format!("{id} restarted"));
        self.status(id);
        Ok(())
    }

    fn status(&mut self, id: u64) {
        let node = self.node(id);
        let s: Status = node.raft.status();
        let timer = fmt_deadline(node.raft.poll_timeout());
        let mut line = format!(
            "{id} {} term={} vote={} leader={} commit={} applied={} last={} persisted={} timer={timer}",
            s.role,
            s.term,
            fmt_opt(s.vote),
            fmt_opt(s.leader),
            s.commit,
            s.applied,
            s.last_index,
            s.persisted_index,
        );
        if s.role == Role::Leader {
            line.push_str(&format!(" uncommitted-bytes={}", s.uncommitted_bytes));
        }
        if let Some(h) = &s.halted {
            line.push_str(&format!(" halted={h:?}"));
        }
        self.out.push(line);
        for (peer, p) in &s.peers {
            self.out.push(format!(
                "  peer {peer} {} match={} next={} inflight={}{}",
                format!("{:?}", p.state).to_lowercase(),
                p.match_index,
                p.next_index,
                p.inflight_msgs,
                if p.recent_active { " active" } else { "" }
            ));
        }
    }

    fn log(&mut self, id: u64) {
        let node = self.node(id);
        let hs = node.raft.storage().hard_state();
        let durable_last = node.raft.storage().last_index();
        let persisted = node.raft.status().persisted_index;
        let last = node.raft.last_index();
        let terms: Vec<(u64, Option<Term>)> =
            (1..=last.0).map(|i| (i, node.raft.entry_term(LogIndex(i)).ok())).collect();
        self.out.push(format!("{id} durable: hs={} last={durable_last}", fmt_hs(&hs)));
        for (i, t) in terms {
            let Some(t) = t else {
                self.out.push(format!("{i}@? (unreadable)"));
                continue;
            };
            let payload = self.payloads.get(&(i, t.0)).map_or_else(|| "?".to_owned(), fmt_payload);
            let mark = if i > persisted.0 { " (unpersisted)" } else { "" };
            self.out.push(format!("{i}@{t} {payload}{mark}"));
        }
    }
}

// ----- parsing -----

fn nid(id: u64) -> NodeId {
    NodeId::new(id).expect("node ids start at 1")
}

fn parse_u64(s: &str) -> Result<u64, String> {
    s.parse().map_err(|_| format!("expected a number, got `{s}`"))
}

fn parse_bool(s: &str) -> Result<bool, String> {
    s.parse().map_err(|_| format!("expected true or false, got `{s}`"))
}

fn parse_filters(args: &[&str]) -> Result<Vec<Filter>, String> {
    if args.is_empty() {
        return Ok(vec![Filter { from: None, to: None }]);
    }
    let side = |s: &str| if s == "*" { Ok(None) } else { parse_u64(s).map(Some) };
    args.iter()
        .map(|a| {
            let (f, t) = a.split_once("->").ok_or_else(|| format!("expected FROM->TO, got `{a}`"))?;
            Ok(Filter { from: side(f)?, to: side(t)? })
        })
        .collect()
}

// ----- formatting -----

fn fmt_opt(n: Option<NodeId>) -> String {
    n.map_or_else(|| "none".to_owned(), |n| n.to_string())
}

/// The first whole millisecond at which a timer is due.
fn fmt_deadline(t: Option<Instant>) -> String {
    t.map_or_else(|| "none".to_owned(), |t| format!("{}ms", t.0.div_ceil(NANOS_PER_MS)))
}

fn fmt_hs(hs: &HardState) -> String {
    format!("term:{},vote:{},commit:{}", hs.term, fmt_opt(hs.vote), hs.commit)
}

fn fmt_payload(p: &EntryPayload) -> String {
    match p {
        EntryPayload::Noop => "noop".to_owned(),
        // Long runs of one byte (from `x*N`) are shown the way they were written.
        EntryPayload::Command(d) if d.len() > 8 && d.iter().all(|b| *b == d[0] && b.is_ascii_graphic()) => {
            format!("\"{}\"*{}", char::from(d[0]), d.len())
        }
        EntryPayload::Command(d) => format!("{d:?}"),
        EntryPayload::Config(_) => "config".to_owned(),
        other => format!("{other:?}"),
    }
}

fn fmt_entry(e: &Entry) -> String {
    format!("{}@{} {}", e.index, e.term, fmt_payload(&e.payload))
}

fn join(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

fn fmt_entries(es: &[Entry]) -> String {
    format!("[{}]", join(es.iter().map(fmt_entry)))
}

fn fmt_persist(p: &Persist) -> String {
    let mut s = format!("persist io={}", p.io.0);
    if let Some(hs) = &p.hard_state {
        s.push_str(&format!(" hs={}", fmt_hs(hs)));
    }
    if !p.entries.is_empty() {
        s.push_str(&format!(" entries={}", fmt_entries(&p.entries)));
    }
    if !p.sync {
        s.push_str(" (no sync)");
    }
    s
}

fn short(m: &Message) -> String {
    format!("{}->{} {}", m.from, m.to, m.body.kind())
}

fn fmt_msg(m: &Message) -> String {
    let detail = match &m.body {
        MessageBody::Append(a) => {
            format!(" prev={}@{} entries={} commit={}", a.prev.index, a.prev.term, fmt_entries(&a.entries), a.commit)
        }
        MessageBody::AppendResponse(AppendResponse::Accepted { match_index }) => format!(" match={match_index}"),
        MessageBody::AppendResponse(AppendResponse::Rejected { rejected, hint }) => {
            format!(" rejected={rejected} hint={}@{}", hint.index, hint.term)
        }
        MessageBody::Heartbeat(h) => format!(" commit={} seq={}", h.commit, h.seq),
        MessageBody::HeartbeatResponse(h) => format!(" seq={}", h.seq),
        MessageBody::RequestVote(v) => {
            format!(" last={}@{}{}", v.last.index, v.last.term, if v.transfer { " transfer" } else { "" })
        }
        MessageBody::VoteResponse(v) => (if v.granted { " granted" } else { " rejected" }).to_owned(),
        MessageBody::TimeoutNow => String::new(),
        MessageBody::ReadIndex(r) => format!(" id={}", r.id.0),
        MessageBody::ReadIndexResponse(r) => {
            format!(" id={} index={}", r.id.0, r.index.map_or_else(|| "none".to_owned(), |i| i.to_string()))
        }
        other => format!(" {other:?}"),
    };
    format!("{} term={}{detail}", short(m), m.term)
}
