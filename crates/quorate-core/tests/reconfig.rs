//! Membership changes and snapshots, driven over an in-memory network with manual control.

use quorate_core::{ConfChange, ConfChangeError, Config, Instant, Message, Raft, Role};
use quorate_log::{Configuration, Data, EntryPayload, LogIndex, LogStorage, MemLog, NodeId, SnapshotMeta};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

fn n(i: u64) -> NodeId {
    NodeId::new(i).expect("non-zero")
}

/// A cluster whose nodes persist synchronously and whose network delivers in rounds, with
/// an optional set of cut links.
struct Cluster {
    nodes: BTreeMap<NodeId, Raft<MemLog>>,
    inbox: Vec<Message>,
    cut: BTreeSet<(NodeId, NodeId)>,
    now: Instant,
    /// Entries applied by each node, in order.
    applied: BTreeMap<NodeId, Vec<(LogIndex, EntryPayload)>>,
    /// Snapshots requested and taken: node -> meta.
    snapshots: BTreeMap<NodeId, SnapshotMeta>,
}

fn config(id: NodeId) -> Config {
    let mut c = Config::new(id);
    c.election_timeout_min = Duration::from_millis(100);
    c.heartbeat_interval = Duration::from_millis(20);
    c.promote_lag_entries_max = 5;
    c.snapshot_entries_threshold = 0;
    c
}

impl Cluster {
    fn new(voters: &[u64]) -> Cluster {
        let conf = Configuration::with_voters(voters.iter().map(|i| n(*i))).expect("voters");
        let mut c = Cluster {
            nodes: BTreeMap::new(),
            inbox: Vec::new(),
            cut: BTreeSet::new(),
            now: Instant::ZERO,
            applied: BTreeMap::new(),
            snapshots: BTreeMap::new(),
        };
        for i in voters {
            c.add_node(n(*i), MemLog::new(conf.clone()), config(n(*i)));
        }
        c
    }

    fn add_node(&mut self, id: NodeId, log: MemLog, cfg: Config) {
        self.nodes.insert(id, Raft::new(cfg, log, self.now).expect("valid"));
        self.applied.entry(id).or_default();
    }

    fn node(&mut self, i: u64) -> &mut Raft<MemLog> {
        self.nodes.get_mut(&n(i)).expect("node exists")
    }

    fn partition(&mut self, side: &[u64]) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for a in &ids {
            for b in &ids {
                if side.contains(&a.get()) != side.contains(&b.get()) {
                    self.cut.insert((*a, *b));
                }
            }
        }
    }

    /// One round: deliver, handle readies, persist at once.
    fn round(&mut self) {
        self.now = self.now.saturating_add(Duration::from_millis(1));
        let now = self.now;
        for m in std::mem::take(&mut self.inbox) {
            if self.cut.contains(&(m.from, m.to)) {
                continue;
            }
            if let Some(r) = self.nodes.get_mut(&m.to) {
                r.handle_message(now, m);
            }
        }
        for (id, r) in &mut self.nodes {
            if r.poll_timeout().is_some_and(|t| t <= now) {
                r.handle_timeout(now);
            }
            for _ in 0..8 {
                if !r.has_ready() {
                    break;
                }
                let rd = r.ready();
                if let Some(p) = rd.persist {
                    let s = r.storage_mut();
                    if let Some(m) = p.install.clone().or(p.compact.clone()) {
                        s.apply_snapshot(m);
                    }
                    if let Some(hs) = p.hard_state {
                        s.set_hard_state(hs);
                    }
                    s.append(&p.entries).expect("contiguous");
                    r.persisted(now, p.io);
                }
                self.inbox.extend(rd.messages);
                let log = self.applied.entry(*id).or_default();
                log.extend(rd.committed.into_iter().map(|e| (e.index, e.payload)));
                if let Some(meta) = rd.take_snapshot {
                    self.snapshots.insert(*id, meta.clone());
                    r.snapshot_taken(now, meta);
                }
                assert!(rd.send_snapshots.is_empty(), "no snapshot transfer expected in these tests");
            }
        }
    }

    fn run(&mut self, rounds: usize) {
        for _ in 0..rounds {
            self.round();
        }
    }

    fn run_until(&mut self, what: &str, rounds_max: usize, mut done: impl FnMut(&Cluster) -> bool) {
        for _ in 0..rounds_max {
            if done(self) {
                return;
            }
            self.round();
        }
        panic!("{what}: not reached within {rounds_max} rounds");
    }

    fn leaders(&self) -> Vec<(NodeId, u64)> {
        self.nodes.iter().filter(|(_, r)| r.role() == Role::Leader).map(|(id, r)| (*id, r.term().0)).collect()
    }

    /// Makes node `i` the leader: whoever wins the first election (voters ignore
    /// campaigns for an election timeout after start) hands leadership over to `i`.
    fn elect(&mut self, i: u64) {
        self.run_until("first election", 1000, |c| !c.leaders().is_empty());
        let (leader, _) = self.leaders()[0];
        if leader != n(i) {
            self.run(5);
            let now = self.now;
            self.nodes.get_mut(&leader).expect("leader").transfer_leadership(now, n(i)).expect("transfer");
            self.run_until("transfer", 200, |c| c.nodes[&n(i)].role() == Role::Leader);
        }
        self.run(5);
    }

    fn commit_everywhere(&mut self, ids: &[u64]) {
        self.run_until("replication", 200, |c| {
            let target = c.nodes[&n(ids[0])].last_index();
            ids.iter().all(|i| c.nodes[&n(*i)].commit_index() >= target)
        });
    }
}

#[test]
fn add_learner_then_promote_goes_through_a_joint_configuration() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.add_node(n(4), MemLog::new(Configuration::default()), config(n(4)));
    let now = c.now;
    c.node(1).propose_conf_change(now, ConfChange::AddLearner(n(4))).expect("add learner");
    // A second change while the first is in flight is refused.
    let err = c.node(1).propose_conf_change(now, ConfChange::AddLearner(n(5))).unwrap_err();
    assert!(matches!(err, ConfChangeError::ChangeInFlight(_)), "{err}");
    c.commit_everywhere(&[1, 2, 3, 4]);
    assert!(c.nodes[&n(4)].configuration().is_learner(n(4)), "the learner learns its own configuration");
    assert_ne!(c.nodes[&n(4)].role(), Role::Leader);
    let now = c.now;
    let id = c.node(1).propose_conf_change(now, ConfChange::Promote(n(4))).expect("promote");
    let joint = c.nodes[&n(1)].configuration().clone();
    assert!(joint.is_joint(), "voter changes go through a joint configuration: {joint:?}");
    c.commit_everywhere(&[1, 2, 3, 4]);
    let conf = c.nodes[&n(2)].configuration().clone();
    assert!(!conf.is_joint(), "the joint configuration is left automatically: {conf:?}");
    assert_eq!(conf.voters, [1, 2, 3, 4].map(n).into_iter().collect());
    assert!(c.nodes[&n(2)].config_version() > id.index, "the version moves with each configuration entry");
}

#[test]
fn promoting_a_learner_that_is_far_behind_is_refused() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.add_node(n(4), MemLog::new(Configuration::default()), config(n(4)));
    let now = c.now;
    c.node(1).propose_conf_change(now, ConfChange::AddLearner(n(4))).expect("add learner");
    c.commit_everywhere(&[1, 2, 3, 4]);
    // Cut the learner off, then write more than the allowed lag.
    c.partition(&[4]);
    for k in 0..10 {
        let now = c.now;
        c.node(1).propose(now, Data::from(format!("k{k}").as_str())).expect("leader accepts");
    }
    c.commit_everywhere(&[1, 2, 3]);
    let now = c.now;
    let err = c.node(1).propose_conf_change(now, ConfChange::Promote(n(4))).unwrap_err();
    assert!(matches!(err, ConfChangeError::TooFarBehind { .. }), "{err}");
}

#[test]
fn a_change_without_a_healthy_quorum_is_refused() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.partition(&[1, 2]);
    c.partition(&[1, 3]);
    // Node 1 hears from nobody; after a check-quorum period its peers are not recently active.
    c.run(110);
    let now = c.now;
    let r = c.node(1);
    if r.role() == Role::Leader {
        let err = r.propose_conf_change(now, ConfChange::Remove(n(3))).unwrap_err();
        assert!(matches!(err, ConfChangeError::WouldLoseQuorum), "{err}");
    } else {
        // Check-quorum already stepped it down: also a refusal.
        let err = r.propose_conf_change(now, ConfChange::Remove(n(3))).unwrap_err();
        assert!(matches!(err, ConfChangeError::NotLeader { .. }), "{err}");
    }
}

#[test]
fn removing_the_leader_hands_over_and_steps_down() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    let now = c.now;
    c.node(1).propose_conf_change(now, ConfChange::Remove(n(1))).expect("remove the leader");
    c.run_until("a new leader among the remaining voters", 400, |c| {
        c.leaders().iter().any(|(id, _)| *id == n(2) || *id == n(3))
    });
    c.run(50);
    assert_ne!(c.nodes[&n(1)].role(), Role::Leader, "the removed leader stepped down");
    let conf = c.nodes[&n(2)].configuration().clone();
    assert_eq!(conf.voters, [2, 3].map(n).into_iter().collect(), "{conf:?}");
    let leaders = c.leaders();
    assert_eq!(leaders.len(), 1, "{leaders:?}");
    // The cluster still commits.
    let (l, _) = leaders[0];
    let now = c.now;
    c.nodes.get_mut(&l).expect("leader").propose(now, Data::from("after")).expect("accepts");
    c.commit_everywhere(&[l.get()]);
}

/// etcd-io/raft#456: a node that applied configurations late campaigned with the old one
/// and won with a quorum of it while the new configuration had a leader. Here a
/// configuration takes effect when it is appended, so a node never campaigns with a
/// configuration older than its log.
#[test]
fn a_node_never_campaigns_with_a_configuration_older_than_its_log() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    // Remove node 3 while it is cut off: nodes 1 and 2 append and commit the joint and the
    // final configuration; node 3 keeps the old one.
    c.partition(&[3]);
    let now = c.now;
    c.node(1).propose_conf_change(now, ConfChange::Remove(n(3))).expect("remove 3");
    c.commit_everywhere(&[1, 2]);
    let conf2 = c.nodes[&n(2)].configuration().clone();
    assert_eq!(conf2.voters, [1, 2].map(n).into_iter().collect(), "node 2 uses what it appended: {conf2:?}");
    // Node 1 (the leader) is now cut off from everyone; node 3 rejoins node 2.
    c.cut.clear();
    c.partition(&[1]);
    // Node 2 needs both 1 and 2 (its configuration); node 3 needs two of {1,2,3} but node
    // 2's log is ahead of it. Nobody may win; in particular no two leaders of one term.
    let mut seen: BTreeMap<u64, NodeId> = BTreeMap::new();
    for _ in 0..600 {
        c.round();
        for (id, term) in c.leaders() {
            let prev = seen.insert(term, id);
            assert!(prev.is_none_or(|p| p == id), "two leaders in term {term}: {prev:?} and {id}");
            assert_eq!(id, n(1), "only the old leader of the new configuration may lead, got {id} in term {term}");
        }
    }
}

#[test]
fn snapshots_compact_the_log_and_keep_a_tail() {
    let mut c = Cluster::new(&[1, 2, 3]);
    // Rebuild with snapshot thresholds on.
    let conf = Configuration::with_voters([1, 2, 3].map(n)).expect("voters");
    c.nodes.clear();
    for i in 1..=3 {
        let mut cfg = config(n(i));
        cfg.snapshot_entries_threshold = 20;
        cfg.compaction_tail_entries = 5;
        c.add_node(n(i), MemLog::new(conf.clone()), cfg);
    }
    c.elect(1);
    for k in 0..60 {
        let now = c.now;
        c.node(1).propose(now, Data::from(format!("k{k}").as_str())).expect("accepts");
        c.round();
    }
    c.commit_everywhere(&[1, 2, 3]);
    let status = c.nodes[&n(1)].status();
    let snap = c.snapshots.get(&n(1)).expect("node 1 took a snapshot");
    assert!(status.snapshot_index >= LogIndex(20), "{status:?}");
    assert_eq!(status.snapshot_index, snap.last.index);
    assert_eq!(status.first_index, LogIndex(snap.last.index.0 - 5 + 1), "a tail of 5 entries is kept");
    assert!(c.nodes[&n(1)].storage().first_index() == status.first_index);
}

#[test]
fn a_snapshot_is_asked_for_by_bytes_too() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let conf = Configuration::with_voters([1, 2, 3].map(n)).expect("voters");
    c.nodes.clear();
    for i in 1..=3 {
        let mut cfg = config(n(i));
        cfg.snapshot_entries_threshold = 0;
        // Each command entry below is charged 24 + 100 bytes.
        cfg.snapshot_bytes_threshold = 30 * 124;
        cfg.compaction_tail_entries = 0;
        c.add_node(n(i), MemLog::new(conf.clone()), cfg);
    }
    c.elect(1);
    for _ in 0..20 {
        let now = c.now;
        c.node(1).propose(now, Data::from(vec![b'x'; 100])).expect("accepts");
    }
    c.commit_everywhere(&[1, 2, 3]);
    assert!(c.snapshots.is_empty(), "20 entries of 124 bytes stay below the byte threshold");
    for _ in 0..20 {
        let now = c.now;
        c.node(1).propose(now, Data::from(vec![b'x'; 100])).expect("accepts");
    }
    c.commit_everywhere(&[1, 2, 3]);
    let snap = c.snapshots.get(&n(1)).expect("the byte threshold asked for a snapshot");
    assert!(snap.last.index >= LogIndex(30), "{snap:?}");
}
