//! Membership: configuration changes (joint consensus, learners) and the configurations in
//! force at each index of the log.

use super::Raft;
use super::role::RoleState;
use crate::danger::HoleId;
use crate::progress::Progress;
use crate::types::{ConfChange, ConfChangeError, Instant};
use quorate_log::{Configuration, ENTRY_OVERHEAD_BYTES, Entry, EntryId, EntryPayload, LogIndex, LogStorage, NodeId};
use serde::{Deserialize, Serialize};

/// The configuration log: which configuration is in force at each index of the log. A
/// configuration takes effect when its entry is appended (not when it commits), so this
/// follows every change of the log — appends, truncations, compactions, snapshot installs —
/// and is the one place that knows the configuration at an index.
///
/// Invariant: `conf_history` is in strictly increasing index order and every index in it is
/// above `base_index`, the log's floor, where `base_conf` is in force. The base is committed
/// (the floor never passes the commit index).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Membership {
    /// The log's floor.
    base_index: LogIndex,
    /// The configuration in force at the log's floor (bootstrap, compaction or snapshot).
    base_conf: Configuration,
    /// Configuration entries above the log's floor, in index order.
    conf_history: Vec<(LogIndex, Configuration)>,
}

impl Membership {
    /// The configurations of a log whose floor `base_index` has `base` in force and which
    /// holds the configuration entries `history` (in index order) above it.
    pub(crate) fn new(
        base_index: LogIndex,
        base: Configuration,
        history: Vec<(LogIndex, Configuration)>,
    ) -> Membership {
        debug_assert!(history.windows(2).all(|w| w[0].0 < w[1].0) && history.first().is_none_or(|h| h.0 > base_index));
        Membership { base_index, base_conf: base, conf_history: history }
    }

    /// The configuration in force: the last one appended, or the base.
    pub(crate) fn latest(&self) -> &Configuration {
        self.conf_history.last().map_or(&self.base_conf, |(_, c)| c)
    }

    /// The index of the entry that set the configuration in force, or the floor if that
    /// entry is compacted (or the configuration came with a snapshot or the bootstrap): the
    /// configuration version.
    pub(crate) fn latest_index(&self) -> LogIndex {
        self.conf_history.last().map_or(self.base_index, |(i, _)| *i)
    }

    /// The last configuration entry above the floor, if any.
    pub(crate) fn entry_above_floor(&self) -> Option<(LogIndex, &Configuration)> {
        self.conf_history.last().map(|(i, c)| (*i, c))
    }

    /// The configuration in force and the index that set it (the floor for the base).
    pub(crate) fn latest_entry(&self) -> (LogIndex, &Configuration) {
        self.conf_history.last().map_or((self.base_index, &self.base_conf), |(i, c)| (*i, c))
    }

    /// Whether a configuration change is in flight, given the commit index: the configuration
    /// in force is not committed yet, or it is joint (not yet left) — wherever it lives, in an
    /// entry above the floor or only in the base. Returns the index that set it.
    pub(crate) fn change_in_flight(&self, commit: LogIndex) -> Option<LogIndex> {
        let (at, conf) = self.latest_entry();
        (at > commit || conf.is_joint()).then_some(at)
    }

    /// The index of the configuration entry in force if it is not committed yet.
    pub(crate) fn uncommitted(&self, commit: LogIndex) -> Option<LogIndex> {
        let (at, _) = self.latest_entry();
        (at > commit).then_some(at)
    }

    /// The configuration in force at `index` (at or above the floor).
    pub(crate) fn at(&self, index: LogIndex) -> &Configuration {
        self.conf_history.iter().rev().find(|(i, _)| *i <= index).map_or(&self.base_conf, |(_, c)| c)
    }

    /// The configuration in force at `index` if this node knows it: a node that joined with an
    /// empty log learns the configuration only from the first configuration entry (or
    /// snapshot) it receives, and knows none below it (its base is the empty configuration).
    pub(crate) fn known_at(&self, index: LogIndex) -> Option<&Configuration> {
        Some(self.at(index)).filter(|c| !c.voters.is_empty())
    }

    /// A configuration entry was appended at `index` (past every one known).
    pub(crate) fn on_append(&mut self, index: LogIndex, conf: &Configuration) {
        debug_assert!(self.conf_history.last().is_none_or(|(i, _)| *i < index));
        self.conf_history.push((index, conf.clone()));
    }

    /// The log was cut from `from` on (entries at `from` and above are gone) and `entries`
    /// written from there. Returns whether the configuration in force may have changed.
    pub(crate) fn on_write(&mut self, from: LogIndex, entries: &[Entry]) -> bool {
        let before = self.conf_history.len();
        self.conf_history.retain(|(i, _)| *i < from);
        let mut changed = self.conf_history.len() != before;
        for e in entries.iter().filter(|e| e.index >= from) {
            if let EntryPayload::Config(c) = &e.payload {
                self.conf_history.push((e.index, c.clone()));
                changed = true;
            }
        }
        changed
    }

    /// The log's floor moves up to `index` (a compaction, or a snapshot that keeps the log
    /// after it): the configuration in force there becomes the base.
    pub(crate) fn on_compact(&mut self, index: LogIndex) {
        if index <= self.base_index {
            return;
        }
        self.base_conf = self.at(index).clone();
        self.base_index = index;
        self.conf_history.retain(|(i, _)| *i > index);
    }

    /// A snapshot ending at `index` with `config` in force was installed; the log after it is
    /// kept if `keeps_suffix`, and discarded otherwise.
    pub(crate) fn on_install(&mut self, index: LogIndex, config: &Configuration, keeps_suffix: bool) {
        if keeps_suffix {
            self.conf_history.retain(|(i, _)| *i > index);
        } else {
            self.conf_history.clear();
        }
        self.base_index = index;
        self.base_conf = config.clone();
    }
}

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
        let Some(l) = self.leader_state() else {
            return Err(ConfChangeError::NotLeader { leader_hint: self.leader() });
        };
        if l.transferee.is_some() {
            return Err(ConfChangeError::TransferInProgress);
        }
        let peers = &l.peers;
        if let Some(at) = self.change_in_flight() {
            return Err(ConfChangeError::ChangeInFlight(at));
        }
        let old = self.conf();
        let mut new = old.clone();
        let last = self.log.last_index();
        let max_lag = self.cfg.promote_lag_entries_max;
        // A learner may become a voter only once it is nearly caught up.
        let caught_up = |n: NodeId| {
            let behind = last.distance_from(peers.get(&n).map_or(LogIndex::ZERO, |p| p.match_index));
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
        // recently (a caught-up newcomer counts): since the last check-quorum round, or a
        // heartbeat sent within the last election timeout (the round forgets every follower,
        // and a change proposed before their next answers was refused on a healthy cluster).
        let id = self.id;
        let now = self.now;
        let window = self.cfg.election_timeout_min;
        let heard = |p: &crate::progress::Progress| {
            p.recent_active || p.acked_sent_at.is_some_and(|sent| now.saturating_since(sent) < window)
        };
        let healthy = |n: NodeId| {
            n == id || peers.get(&n).is_some_and(|p| heard(p) && last.distance_from(p.match_index) <= max_lag)
        };
        if !new.has_quorum(healthy) {
            return Err(ConfChangeError::WouldLoseQuorum);
        }
        let size = ENTRY_OVERHEAD_BYTES + new.size_bytes();
        Ok(self.append_own(EntryPayload::Config(new), size))
    }

    /// Leaves a committed joint configuration (when `auto_leave_joint` is off). Refused
    /// while the joint configuration's entry is not committed yet.
    pub fn leave_joint(&mut self, now: Instant) -> Result<EntryId, ConfChangeError> {
        self.advance_clock(now);
        if !self.is_leader() || self.halted.is_some() {
            return Err(ConfChangeError::NotLeader { leader_hint: self.leader() });
        }
        if !self.conf().is_joint() {
            return Err(ConfChangeError::Invalid("the configuration is not joint".into()));
        }
        if let Some(at) = self.membership.uncommitted(self.log.commit) {
            return Err(ConfChangeError::ChangeInFlight(at));
        }
        Ok(self.append_leave_joint())
    }

    pub(super) fn append_leave_joint(&mut self) -> EntryId {
        let new = Configuration {
            voters: self.conf().voters.clone(),
            voters_outgoing: Default::default(),
            learners: self.conf().learners.clone(),
        };
        let size = ENTRY_OVERHEAD_BYTES + new.size_bytes();
        self.append_own(EntryPayload::Config(new), size)
    }

    /// The configuration in force and the index that set it (the floor if it lives only in
    /// the base). With hole 2 re-introduced (tests only), only an entry above the floor, as
    /// before issue 16.
    fn conf_entry(&self) -> Option<(LogIndex, &Configuration)> {
        if self.danger.on(HoleId::JointOnlyInBase) {
            return self.membership.entry_above_floor();
        }
        Some(self.membership.latest_entry())
    }

    /// Whether a configuration change is in flight (see [`Membership::change_in_flight`]).
    pub(super) fn change_in_flight(&self) -> Option<LogIndex> {
        if self.danger.on(HoleId::JointOnlyInBase) {
            // Hole 2 re-introduced (tests only): the code before issue 16.
            let (at, conf) = self.membership.entry_above_floor()?;
            return (at > self.log.commit || conf.is_joint()).then_some(at);
        }
        self.membership.change_in_flight(self.log.commit)
    }

    /// The configuration in force.
    pub(super) fn conf(&self) -> &Configuration {
        self.membership.latest()
    }

    /// Entries were written to the log from index `from` on (a truncated suffix is gone):
    /// configurations take effect when appended.
    pub(super) fn on_log_written(&mut self, from: LogIndex, entries: &[Entry]) {
        if self.membership.on_write(from, entries) && self.is_leader() {
            self.sync_peers();
        }
    }

    /// The leader tracks exactly the members of its configuration.
    pub(super) fn sync_peers(&mut self) {
        let next = self.log.last_index().next();
        let id = self.id;
        let RoleState::Leader(l) = &mut self.role else { return };
        let members: Vec<NodeId> = self.membership.latest().members().filter(|n| *n != id).collect();
        l.peers.retain(|id, _| members.contains(id));
        for m in members {
            l.peers.entry(m).or_insert_with(|| Progress::new(next));
        }
    }

    /// Once the configuration in force is committed (its entry, or the base, which is
    /// committed by definition): leave it if it is joint (if automatic), and a leader that is
    /// no longer a voter hands over and steps down.
    pub(super) fn after_config_commit(&mut self) {
        let RoleState::Leader(l) = &self.role else { return };
        let Some((at, conf)) = self.conf_entry() else { return };
        if at > self.log.commit {
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
            let best = l
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

#[cfg(test)]
mod tests {
    use super::Membership;
    use quorate_log::{Configuration, Entry, EntryPayload, LogIndex, NodeId, Term};

    fn voters(ids: &[u64]) -> Configuration {
        Configuration::with_voters(ids.iter().filter_map(|i| NodeId::new(*i))).expect("voters")
    }

    fn config_entry(i: u64, c: &Configuration) -> Entry {
        Entry { index: LogIndex(i), term: Term(1), payload: EntryPayload::Config(c.clone()) }
    }

    #[test]
    fn each_index_sees_the_configuration_appended_last_at_or_below_it() {
        let (a, b, c) = (voters(&[1]), voters(&[1, 2]), voters(&[1, 2, 3]));
        let mut m = Membership::new(LogIndex(0), a.clone(), Vec::new());
        m.on_append(LogIndex(3), &b);
        m.on_append(LogIndex(7), &c);
        assert_eq!(m.latest(), &c);
        assert_eq!(m.latest_index(), LogIndex(7));
        assert_eq!(m.at(LogIndex(2)), &a);
        assert_eq!(m.at(LogIndex(3)), &b);
        assert_eq!(m.at(LogIndex(6)), &b);
        assert_eq!(m.at(LogIndex(9)), &c);
        // A truncation from 5 drops the entry at 7; a rewrite brings another one at 6.
        assert!(m.on_write(LogIndex(5), &[config_entry(6, &a)]));
        assert_eq!(m.latest(), &a);
        assert_eq!(m.at(LogIndex(5)), &b);
        // Writing entries without configurations above every one known changes nothing.
        let noop = Entry { index: LogIndex(8), term: Term(1), payload: EntryPayload::Noop };
        assert!(!m.on_write(LogIndex(8), &[noop]));
    }

    #[test]
    fn compaction_and_install_move_the_base() {
        let (a, b, c) = (voters(&[1]), voters(&[1, 2]), voters(&[1, 2, 3]));
        let mut m = Membership::new(LogIndex(0), a, vec![(LogIndex(3), b.clone()), (LogIndex(7), c.clone())]);
        m.on_compact(LogIndex(5));
        assert_eq!(m.at(LogIndex(5)), &b, "the configuration at the new floor is the base");
        assert_eq!(m.latest_index(), LogIndex(7));
        m.on_compact(LogIndex(8));
        assert_eq!(m.latest(), &c);
        assert_eq!(m.latest_index(), LogIndex(8), "it now lives only in the base: the version is the floor");
        let d = voters(&[2, 3]);
        m.on_install(LogIndex(20), &d, false);
        assert_eq!((m.latest(), m.latest_index()), (&d, LogIndex(20)));
    }

    #[test]
    fn a_joint_configuration_is_in_flight_until_left_wherever_it_lives() {
        let a = voters(&[1, 2, 3]);
        let mut joint = voters(&[2, 3]);
        joint.voters_outgoing = a.voters.clone();
        let mut m = Membership::new(LogIndex(0), a, Vec::new());
        assert_eq!(m.change_in_flight(LogIndex(0)), None);
        m.on_append(LogIndex(2), &joint);
        assert_eq!(m.change_in_flight(LogIndex(1)), Some(LogIndex(2)), "uncommitted");
        assert_eq!(m.uncommitted(LogIndex(1)), Some(LogIndex(2)));
        assert_eq!(m.change_in_flight(LogIndex(2)), Some(LogIndex(2)), "committed but joint");
        assert_eq!(m.uncommitted(LogIndex(2)), None);
        // Compacted at the joint entry: it lives only in the base, and is still in flight.
        m.on_compact(LogIndex(2));
        assert_eq!(m.change_in_flight(LogIndex(2)), Some(LogIndex(2)));
        // The same after a snapshot install that carries it.
        let mut m = Membership::new(LogIndex(0), voters(&[1]), Vec::new());
        m.on_install(LogIndex(9), &joint, false);
        assert_eq!(m.change_in_flight(LogIndex(9)), Some(LogIndex(9)));
        // Left: nothing in flight once the leave entry commits.
        m.on_append(LogIndex(10), &voters(&[2, 3]));
        assert_eq!(m.change_in_flight(LogIndex(9)), Some(LogIndex(10)));
        assert_eq!(m.change_in_flight(LogIndex(10)), None);
    }
}
