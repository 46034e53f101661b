//! Membership: configuration changes (joint consensus, learners) and the configurations in
//! force at each index of the log.

use super::Raft;
use crate::progress::Progress;
use crate::types::{ConfChange, ConfChangeError, Instant, Role};
use quorate_log::{Configuration, ENTRY_OVERHEAD_BYTES, Entry, EntryId, EntryPayload, LogIndex, LogStorage, NodeId};

impl<S: LogStorage> Raft<S> {
    /// Proposes a membership change (leader only). At most one change is in flight: the
    /// previous one must be committed (and a joint configuration left) first. Voter changes
    /// go through a joint configuration; the configuration takes effect as soon as its entry
    /// is appended, on every node.
    pub fn propose_conf_change(&mut self, now: Instant, change: ConfChange) -> Result<EntryId, ConfChangeError> {
        self.advance_clock(now);
        if self.halted.is_some() {
            return Err(ConfChangeError::Halted);
        }
        if self.role != Role::Leader {
            return Err(ConfChangeError::NotLeader { leader_hint: self.leader });
        }
        if self.transferee.is_some() {
            return Err(ConfChangeError::TransferInProgress);
        }
        if let Some(at) = self.conf_change_in_flight() {
            return Err(ConfChangeError::ChangeInFlight(at));
        }
        let old = &self.conf;
        let mut new = old.clone();
        let last = self.log.last_index();
        let max_lag = self.cfg.promote_lag_entries_max;
        // A learner may become a voter only once it is nearly caught up.
        let caught_up = |n: NodeId| {
            let behind = last.distance_from(self.peers.get(&n).map_or(LogIndex::ZERO, |p| p.match_index));
            if behind > max_lag { Err(ConfChangeError::TooFarBehind { node: n, behind, max: max_lag }) } else { Ok(()) }
        };
        match change {
            ConfChange::AddLearner(n) => {
                if old.is_voter(n) || old.is_learner(n) {
                    return Err(ConfChangeError::AlreadyMember(n));
                }
                new.learners.insert(n);
            }
            ConfChange::Promote(n) => {
                if old.is_voter(n) {
                    return Err(ConfChangeError::AlreadyMember(n));
                }
                if !old.is_learner(n) {
                    return Err(ConfChangeError::NotMember(n));
                }
                caught_up(n)?;
                new.learners.remove(&n);
                new.voters.insert(n);
            }
            ConfChange::Remove(n) => {
                if old.is_learner(n) {
                    new.learners.remove(&n);
                } else if old.voters.contains(&n) {
                    new.voters.remove(&n);
                } else {
                    return Err(ConfChangeError::NotMember(n));
                }
            }
            ConfChange::Replace { old: out, new: incoming } => {
                if !old.voters.contains(&out) {
                    return Err(ConfChangeError::NotMember(out));
                }
                if !old.is_learner(incoming) {
                    return Err(ConfChangeError::NotMember(incoming));
                }
                caught_up(incoming)?;
                new.voters.remove(&out);
                new.learners.remove(&incoming);
                new.voters.insert(incoming);
            }
        }
        new.validate().map_err(|e| ConfChangeError::Invalid(e.to_string()))?;
        if new.voters != old.voters {
            new.voters_outgoing = old.voters.clone();
        }
        // The new configuration must be able to form a quorum with the nodes that answered
        // recently (a caught-up newcomer counts).
        let id = self.id;
        let healthy = |n: NodeId| {
            n == id
                || self.peers.get(&n).is_some_and(|p| p.recent_active && last.distance_from(p.match_index) <= max_lag)
        };
        if !new.has_quorum(healthy) {
            return Err(ConfChangeError::WouldLoseQuorum);
        }
        let size = ENTRY_OVERHEAD_BYTES + new.size_bytes();
        Ok(self.append_own(EntryPayload::Config(new), size))
    }

    /// Leaves a committed joint configuration (when `auto_leave_joint` is off).
    pub fn leave_joint(&mut self, now: Instant) -> Result<EntryId, ConfChangeError> {
        self.advance_clock(now);
        if self.role != Role::Leader || self.halted.is_some() {
            return Err(ConfChangeError::NotLeader { leader_hint: self.leader });
        }
        if !self.conf.is_joint() {
            return Err(ConfChangeError::Invalid("the configuration is not joint".into()));
        }
        if let Some(at) = self.conf_change_in_flight() {
            return Err(ConfChangeError::ChangeInFlight(at));
        }
        Ok(self.append_leave_joint())
    }

    /// The index of an uncommitted configuration entry, or of a joint configuration not yet
    /// left: a new change must wait.
    pub(super) fn conf_change_in_flight(&self) -> Option<LogIndex> {
        let (at, conf) = self.conf_history.last()?;
        (*at > self.log.commit || conf.is_joint()).then_some(*at)
    }

    pub(super) fn append_leave_joint(&mut self) -> EntryId {
        let new = Configuration {
            voters: self.conf.voters.clone(),
            voters_outgoing: Default::default(),
            learners: self.conf.learners.clone(),
        };
        let size = ENTRY_OVERHEAD_BYTES + new.size_bytes();
        self.append_own(EntryPayload::Config(new), size)
    }

    /// The configuration in force at `index`.
    pub(super) fn conf_at(&self, index: LogIndex) -> Configuration {
        self.conf_history
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .map_or_else(|| self.base_conf.clone(), |(_, c)| c.clone())
    }

    /// The log's floor moves to `index`, where `config` is in force.
    pub(super) fn rebase_configs(&mut self, index: LogIndex, config: Configuration) {
        self.conf_history.retain(|(i, _)| *i > index);
        self.base_conf = config;
    }

    pub(super) fn refresh_conf(&mut self) {
        let latest = self.conf_history.last().map_or(&self.base_conf, |(_, c)| c);
        if *latest == self.conf {
            // The common case, on every append: no allocation.
            return;
        }
        self.conf = latest.clone();
        if self.role == Role::Leader {
            self.sync_peers();
        }
    }

    /// Entries were written to the log from index `from` on (a truncated suffix is gone):
    /// configurations take effect when appended.
    pub(super) fn on_log_written(&mut self, from: LogIndex, entries: &[Entry]) {
        self.conf_history.retain(|(i, _)| *i < from);
        for e in entries.iter().filter(|e| e.index >= from) {
            if let EntryPayload::Config(c) = &e.payload {
                self.conf_history.push((e.index, c.clone()));
            }
        }
        self.refresh_conf();
    }

    /// The leader tracks exactly the members of its configuration.
    pub(super) fn sync_peers(&mut self) {
        let next = self.log.last_index().next();
        let members: Vec<NodeId> = self.conf.members().filter(|n| *n != self.id).collect();
        self.peers.retain(|id, _| members.contains(id));
        for m in members {
            self.peers.entry(m).or_insert_with(|| Progress::new(next));
        }
    }

    /// Once a configuration entry commits: leave a joint configuration (if automatic), and a
    /// leader that is no longer a voter hands over and steps down.
    pub(super) fn after_config_commit(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let Some((at, conf)) = self.conf_history.last() else { return };
        if *at > self.log.commit {
            return;
        }
        if conf.is_joint() {
            if self.cfg.auto_leave_joint {
                self.append_leave_joint();
            }
            return;
        }
        if !conf.is_voter(self.id) {
            // Hand over to the most caught-up voter, then step down.
            let best = self
                .peers
                .iter()
                .filter(|(n, _)| conf.is_voter(**n))
                .max_by_key(|(_, p)| p.match_index)
                .map(|(n, p)| (*n, p.match_index));
            if let Some((to, m)) = best
                && m == self.log.last_index()
            {
                self.send_timeout_now(to);
            }
            let term = self.term;
            self.become_follower(term, None);
        }
    }
}
