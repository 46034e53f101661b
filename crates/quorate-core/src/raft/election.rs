//! Elections: pre-vote and vote rounds, the voters' side, the lease a voter grants by
//! acknowledging a leader, and the role changes.

use super::role::{Campaign, Follower, Leader, RoleState};
use super::{CampaignReason, Raft};
use crate::danger::HoleId;
use crate::message::{Message, MessageBody, RequestVote, VoteResponse};
use crate::types::{Instant, ReadError, ReadFailed};
use quorate_log::{ENTRY_OVERHEAD_BYTES, EntryPayload, LogStorage, NodeId, Term};
use std::collections::BTreeMap;

impl<S: LogStorage> Raft<S> {
    /// Starts an election now (pre-vote first if configured), as after an election timeout.
    ///
    /// Inside another leader's lease — check-quorum on, and a leader heard from (or this node
    /// restarted) less than `election_timeout_min` ago — a node never votes for itself: a
    /// leader may be serving lease reads on the strength of this node's promise. The election
    /// is then deferred to the moment that promise runs out (the election timer is set to fire
    /// then, and hearing from the leader before it resets the timer as usual, which cancels
    /// it). With pre-vote on, the pre-vote round still runs at once (it changes nothing on
    /// either side), and the election that follows a won round waits the same way. A node
    /// whose own vote is a quorum (a single voter) is never held back: no other leader can
    /// rest a lease on it. To move leadership at once, ask the leader to transfer it.
    pub fn campaign_now(&mut self, now: Instant) {
        self.advance_clock(now);
        if self.halted.is_none() && !self.is_leader() && self.may_campaign() {
            self.campaign(self.cfg.pre_vote, CampaignReason::Forced);
        }
    }

    /// Until when this node has promised a leader not to help elect another one (with
    /// check-quorum): `election_timeout_min` after it last heard from a leader, or after it
    /// started (it may have made that promise before a crash). A leader's lease rests on a
    /// quorum of such promises; `None` once it has run out.
    pub(super) fn lease_promise_end(&self) -> Option<Instant> {
        if !self.cfg.check_quorum {
            return None;
        }
        let end = self.last_leader_contact?.saturating_add(self.cfg.election_timeout_min);
        (self.now < end).then_some(end)
    }

    /// Whether this node refuses vote and pre-vote requests (other than a leader's transfer):
    /// a leader with check-quorum, or a node inside its lease promise.
    pub(super) fn in_lease(&self) -> bool {
        if self.is_leader() {
            return self.cfg.check_quorum;
        }
        self.lease_promise_end().is_some()
    }

    /// Whether this node may campaign: it is a voter of the configuration in force, or of the
    /// configuration at its commit index while the one in force is not committed yet. A node
    /// outside its own latest configuration may hold the only copy of it (a leader that
    /// removed itself and restarted before the others got the entry): it must still campaign
    /// until that configuration commits (Raft dissertation §4.2.2), and as leader it commits
    /// it and steps down. A node outside a committed configuration never campaigns.
    pub(super) fn may_campaign(&self) -> bool {
        // A node recovering from lost synced state never campaigns (see `recovery`).
        if self.is_recovering() {
            return false;
        }
        let id = self.id;
        self.conf().is_voter(id)
            || (self.membership.uncommitted(self.log.commit).is_some()
                && self.membership.at(self.log.commit).is_voter(id))
    }

    /// Whether this node's own vote alone is a quorum of its configuration.
    fn alone_is_quorum(&self) -> bool {
        let id = self.id;
        self.conf().vote_result(|n| (n == id).then_some(true)) == Some(true)
    }

    /// This follower heard from `from`, the leader of its term.
    pub(super) fn heard_from_leader(&mut self, from: NodeId) {
        debug_assert!(matches!(self.role, RoleState::Follower(_)));
        if let RoleState::Follower(f) = &mut self.role {
            f.leader = Some(from);
        }
        self.last_leader_contact = Some(self.now);
        self.reset_election_deadline();
    }

    /// Becomes a follower of `term` (at least the current one) and of `leader`, if known.
    /// A follower that keeps its leader keeps its state (the reads it forwarded).
    pub(super) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if term > self.term {
            self.enter_term(term);
        }
        match &self.role {
            RoleState::Follower(f) if f.leader == leader => {}
            _ => self.set_role(RoleState::Follower(Follower { leader, forwarded_reads: Vec::new() })),
        }
        if leader.is_some() {
            self.last_leader_contact = Some(self.now);
        }
        self.reset_election_deadline();
    }

    /// Replaces the role and its state as a whole; what the old role still owed is settled:
    /// a leader's reads and a follower's forwarded reads fail (leadership changed).
    pub(super) fn set_role(&mut self, role: RoleState) {
        match std::mem::replace(&mut self.role, role) {
            RoleState::Leader(mut l) => {
                for (id, origin) in l.take_reads() {
                    self.fail_read(id, origin);
                }
            }
            RoleState::Follower(f) => {
                for (id, _) in f.forwarded_reads {
                    self.reads_failed.push(ReadFailed { id, error: ReadError::LeadershipLost });
                }
            }
            RoleState::PreCandidate(_) | RoleState::Candidate(_) => {}
        }
    }

    pub(super) fn campaign(&mut self, pre_vote: bool, reason: CampaignReason) {
        debug_assert!(!self.is_recovering(), "every way to a campaign asks may_campaign first");
        let transfer = reason == CampaignReason::Transfer;
        if !pre_vote
            && !transfer
            && !self.danger.on(HoleId::LeaseVoteAfterTermMove)
            && let Some(end) = self.lease_promise_end()
            && !self.alone_is_quorum()
        {
            // Inside a leader's lease this node does not vote for itself (see `campaign_now`):
            // the election waits until the promise runs out.
            self.election_deadline = end;
            return;
        }
        let seq = self.last_campaign.map_or(0, |(n, _)| n) + 1;
        self.last_campaign = Some((seq, reason));
        let campaign = Campaign { votes: BTreeMap::from([(self.id, true)]) };
        let term = if pre_vote {
            self.set_role(RoleState::PreCandidate(campaign));
            self.term.next()
        } else {
            self.enter_term(self.term.next());
            self.vote = Some(self.id);
            self.set_role(RoleState::Candidate(campaign));
            self.term
        };
        self.reset_election_deadline();
        if self.tally() == Some(true) {
            self.won_election(pre_vote);
            return;
        }
        let last = self.log.last_id();
        let voters: Vec<NodeId> = self.conf().all_voters().filter(|n| *n != self.id).collect();
        for to in voters {
            let body = MessageBody::RequestVote(RequestVote { pre_vote, last, transfer });
            self.send_message(Message { from: self.id, to, term, body });
        }
    }

    /// The outcome of this (pre-)candidate's campaign so far.
    pub(super) fn tally(&self) -> Option<bool> {
        let (RoleState::PreCandidate(c) | RoleState::Candidate(c)) = &self.role else { return None };
        self.conf().vote_result(|n| c.votes.get(&n).copied())
    }

    pub(super) fn won_election(&mut self, pre_vote: bool) {
        if pre_vote {
            self.campaign(false, CampaignReason::PreVotePassed);
        } else {
            self.become_leader();
        }
    }

    pub(super) fn handle_request_vote(&mut self, from: NodeId, term: Term, rv: &RequestVote) {
        // While recovering, its log may lack entries it helped commit: the candidate must also
        // be at least as up to date as the record, which covers every entry this node
        // acknowledged (see `recovery`). The recorded term and vote were taken back, so the
        // rules below never grant a second vote in the recorded term.
        let up_to_date = self.log.is_up_to_date(rv.last) && self.recovery_allows_vote(rv.last);
        // Inside a leader's lease, refuse at any term (a higher-term request is not even
        // answered, see `handle_message`), unless the leader itself handed over: this node's
        // term may have moved since it acknowledged the leader, through any message. A vote
        // already cast for this candidate in this term is repeated (it promises nothing new).
        let lease = !rv.transfer && self.in_lease() && self.vote != Some(from);
        // Hole 4 re-introduced (tests only): only a higher term met the lease check.
        let lease = lease && !self.danger.on(HoleId::LeaseVoteAfterTermMove);
        if rv.pre_vote {
            // Grant if the candidate's term is ahead of ours (or we could vote for it now),
            // its log is at least as up to date, and we have not heard from a leader
            // recently.
            let could_vote = term > self.term || self.vote.is_none_or(|v| v == from) && self.leader().is_none();
            let granted = could_vote && up_to_date && !lease;
            let reply_term = if granted { term } else { self.term };
            let body = MessageBody::VoteResponse(VoteResponse { pre_vote: true, granted });
            self.send_message(Message { from: self.id, to: from, term: reply_term, body });
            return;
        }
        let can_vote = self.vote == Some(from) || (self.vote.is_none() && self.leader().is_none());
        let granted = can_vote && up_to_date && !lease;
        if granted {
            self.vote = Some(from);
            self.reset_election_deadline();
        }
        self.send(from, MessageBody::VoteResponse(VoteResponse { pre_vote: false, granted }));
    }

    pub(super) fn handle_vote_response(&mut self, from: NodeId, term: Term, vr: &VoteResponse) {
        let expected = match &self.role {
            // Grants come at the term the pre-candidate would campaign in; refusals at the
            // voter's own term, which is usually the pre-candidate's current one.
            RoleState::PreCandidate(_) => {
                vr.pre_vote && (term == self.term.next() || (!vr.granted && term == self.term))
            }
            RoleState::Candidate(_) => !vr.pre_vote && term == self.term,
            _ => false,
        };
        if !expected || !self.conf().is_voter(from) {
            return;
        }
        if let RoleState::PreCandidate(c) | RoleState::Candidate(c) = &mut self.role {
            c.votes.insert(from, vr.granted);
        }
        match self.tally() {
            Some(true) => self.won_election(vr.pre_vote),
            Some(false) => {
                let t = self.term;
                self.become_follower(t, None);
            }
            None => {}
        }
    }

    pub(super) fn become_leader(&mut self) {
        debug_assert!(matches!(self.role, RoleState::Candidate(_)));
        let leader = Leader::new(self.now, self.cfg.heartbeat_interval, self.cfg.election_timeout_min);
        self.set_role(RoleState::Leader(Box::new(leader)));
        self.sync_peers();
        // A leader may only commit entries of its own term by counting; the no-op gives it
        // one at once.
        self.append_own(EntryPayload::Noop, ENTRY_OVERHEAD_BYTES);
    }
}
