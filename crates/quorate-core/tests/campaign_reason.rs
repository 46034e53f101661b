//! The core records why each campaign started (`Raft::last_campaign`): forced, pre-vote
//! passed, leadership transfer, an election timeout with and without a known leader.

use quorate_core::{CampaignReason, Config, Instant, Message, Raft, Role};
use quorate_log::{Configuration, MemLog, NodeId};
use std::time::Duration;

struct Cluster {
    nodes: Vec<Raft<MemLog>>,
    inbox: Vec<Message>,
    now: Instant,
    /// Nodes whose messages are dropped (both ways).
    cut: Vec<NodeId>,
}

fn id(n: u64) -> NodeId {
    NodeId::new(n).expect("non-zero")
}

impl Cluster {
    fn new(pre_vote: bool) -> Cluster {
        let ids: Vec<NodeId> = (1..=3).map(id).collect();
        let conf = Configuration::with_voters(ids.iter().copied()).expect("three voters");
        let nodes = ids
            .iter()
            .map(|n| {
                let mut c = Config::new(*n);
                c.pre_vote = pre_vote;
                c.check_quorum = false;
                c.seed = n.get();
                Raft::new(c, MemLog::new(conf.clone()), Instant::ZERO).expect("valid")
            })
            .collect();
        Cluster { nodes, inbox: Vec::new(), now: Instant::ZERO, cut: Vec::new() }
    }

    fn node(&mut self, n: u64) -> &mut Raft<MemLog> {
        &mut self.nodes[(n - 1) as usize]
    }

    /// Delivers messages and persists everything, for a bounded number of rounds.
    fn settle(&mut self) {
        for _ in 0..50 {
            self.now = self.now.saturating_add(Duration::from_millis(1));
            let now = self.now;
            for m in std::mem::take(&mut self.inbox) {
                if self.cut.contains(&m.from) || self.cut.contains(&m.to) {
                    continue;
                }
                self.nodes[(m.to.get() - 1) as usize].handle_message(now, m);
            }
            for r in &mut self.nodes {
                for _ in 0..8 {
                    if !r.has_ready() {
                        break;
                    }
                    let rd = r.ready();
                    if let Some(p) = rd.persist {
                        if let Some(hs) = p.hard_state {
                            r.storage_mut().set_hard_state(hs);
                        }
                        r.storage_mut().append(&p.entries).expect("contiguous");
                        r.persisted(now, p.io);
                    }
                    self.inbox.extend(rd.messages);
                }
            }
        }
    }

    /// Moves time past every election timeout and fires the timers of `nodes`.
    fn time_out(&mut self, nodes: &[u64]) {
        self.now = self.now.saturating_add(Duration::from_secs(10));
        let now = self.now;
        for &n in nodes {
            self.node(n).handle_timeout(now);
        }
    }

    fn leader(&self) -> Option<u64> {
        let leaders: Vec<u64> =
            self.nodes.iter().filter(|r| r.role() == Role::Leader).map(|r| r.status().id.get()).collect();
        (leaders.len() == 1).then(|| leaders[0])
    }
}

fn reason(r: &Raft<MemLog>) -> Option<CampaignReason> {
    r.last_campaign().map(|(_, why)| why)
}

#[test]
fn forced_then_pre_vote_passed_then_transfer_then_leader_timeout() {
    let mut c = Cluster::new(true);
    assert_eq!(c.node(1).last_campaign(), None, "no campaign before the first");

    // Forced: a pre-vote round first, then the real election after the pre-vote passed.
    let now = c.now;
    c.node(1).campaign_now(now);
    assert_eq!(c.node(1).role(), Role::PreCandidate);
    assert_eq!(c.node(1).last_campaign(), Some((1, CampaignReason::Forced)));
    c.settle();
    assert_eq!(c.leader(), Some(1));
    assert_eq!(c.node(1).last_campaign(), Some((2, CampaignReason::PreVotePassed)));
    assert_eq!(c.node(2).last_campaign(), None, "followers did not campaign");

    // Leadership transfer: node 2 campaigns on TimeoutNow, without a pre-vote round.
    let now = c.now;
    c.node(1).transfer_leadership(now, id(2)).expect("transfer starts");
    c.settle();
    assert_eq!(c.leader(), Some(2));
    assert_eq!(c.node(2).last_campaign(), Some((1, CampaignReason::Transfer)));

    // The leader goes silent: node 3 still knows it when its timer fires.
    c.cut.push(id(2));
    c.time_out(&[3]);
    assert_eq!(reason(c.node(3)), Some(CampaignReason::LeaderTimeout));
}

#[test]
fn an_election_timeout_without_a_leader_is_its_own_reason() {
    let mut c = Cluster::new(false);
    c.time_out(&[2]);
    assert_eq!(c.node(2).role(), Role::Candidate, "without pre-vote the timeout starts an election");
    assert_eq!(c.node(2).last_campaign(), Some((1, CampaignReason::ElectionTimeout)));
    // Another timeout while still a candidate: a second campaign, counted.
    c.time_out(&[2]);
    assert_eq!(c.node(2).last_campaign(), Some((2, CampaignReason::ElectionTimeout)));
}
