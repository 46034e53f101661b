//! Replication: proposals, appends and their answers, heartbeats, commit by counting.

use super::Raft;
use super::recovery::LOST_STATE_HINT_TERM;
use super::role::{HEARTBEAT_ROUNDS_REMEMBERED, Leader, RoleState};
use crate::message::{Append, AppendResponse, Heartbeat, MessageBody};
use crate::progress::ProgressState;
use crate::types::{Instant, ProposeError, TransferError};
use quorate_log::{
    Data, ENTRY_OVERHEAD_BYTES, Entry, EntryId, EntryPayload, LogIndex, LogStorage, NodeId, StorageError, Term,
};

impl<S: LogStorage> Raft<S> {
    /// Proposes a command. On the leader it is appended and will be committed (or lost, if
    /// leadership changes first: then a different entry, or none, appears at the returned
    /// index). Anywhere else it is refused with the leader hint.
    pub fn propose(&mut self, now: Instant, data: Data) -> Result<EntryId, ProposeError> {
        self.advance_clock(now);
        if let Some(h) = &self.halted {
            return Err(ProposeError::Halted(h.clone()));
        }
        let Some(l) = self.leader_state() else {
            return Err(ProposeError::NotLeader { leader_hint: self.leader() });
        };
        if let Some((to, _)) = l.transferee {
            return Err(ProposeError::TransferInProgress(to));
        }
        let size = ENTRY_OVERHEAD_BYTES + data.len() as u64;
        if size > self.cfg.msg_bytes_max {
            return Err(ProposeError::TooLarge { proposal_bytes: size, limit_bytes: self.cfg.msg_bytes_max });
        }
        if l.uncommitted_bytes > 0 && l.uncommitted_bytes + size > self.cfg.uncommitted_bytes_max {
            return Err(ProposeError::UncommittedLimit {
                uncommitted_bytes: l.uncommitted_bytes,
                proposal_bytes: size,
                limit_bytes: self.cfg.uncommitted_bytes_max,
            });
        }
        Ok(self.append_own(EntryPayload::Command(data), size))
    }

    /// Hands leadership to `to`: proposals are refused until the transfer ends; once `to`
    /// is caught up it is told to campaign at once. The transfer is abandoned after an
    /// election timeout.
    pub fn transfer_leadership(&mut self, now: Instant, to: NodeId) -> Result<(), TransferError> {
        self.advance_clock(now);
        if !self.is_leader() || self.halted.is_some() {
            return Err(TransferError::NotLeader);
        }
        if to == self.id {
            return Err(TransferError::AlreadyLeader(to));
        }
        if !self.conf().is_voter(to) {
            return Err(TransferError::NotAVoter(to));
        }
        let until = self.now.saturating_add(self.cfg.election_timeout_min);
        let last = self.log.last_index();
        let Some(l) = self.leader_state_mut() else { return Err(TransferError::NotLeader) };
        l.transferee = Some((to, until));
        if l.peers.get(&to).is_some_and(|p| p.match_index == last) {
            self.send_timeout_now(to);
        }
        Ok(())
    }

    /// Appends an entry of this leader's term.
    pub(super) fn append_own(&mut self, payload: EntryPayload, size: u64) -> EntryId {
        let index = self.log.last_index().next();
        let id = EntryId::new(self.term, index);
        let is_config = if let EntryPayload::Config(c) = &payload {
            self.membership.on_append(index, c);
            true
        } else {
            false
        };
        self.log.push(Entry { index, term: self.term, payload });
        if is_config {
            self.sync_peers();
        }
        if let Some(l) = self.leader_state_mut() {
            l.uncommitted.push_back((index, size));
            l.uncommitted_bytes += size;
        }
        id
    }

    /// Entries from `from`, the leader of `term`. The message is checked first: entries that
    /// do not follow `prev` one index after the other, terms that go back, entries (or `prev`)
    /// above the message's term, invalid configurations, and entries that contradict a
    /// committed one are evidence of a broken peer: the node halts with that evidence rather
    /// than panicking or corrupting its log.
    pub(super) fn handle_append(&mut self, from: NodeId, term: Term, a: Append) {
        if let Err(e) = check_append(term, &a) {
            self.halt(format!("append from {from} at term {term}: {e}"));
            return;
        }
        if a.prev.index < self.log.commit {
            // Already committed here: report how far we know the logs match (the entries it
            // overlaps must agree with the committed ones).
            for e in a.entries.iter().take_while(|e| e.index <= self.log.commit) {
                if let Ok(t) = self.log.term(e.index)
                    && t != e.term
                {
                    let commit = self.log.commit;
                    self.halt(format!(
                        "append from {from} at term {term}: entry {}@{} contradicts the committed {}@{t} (commit {commit})",
                        e.index, e.term, e.index
                    ));
                    return;
                }
            }
            let match_index = self.log.commit;
            self.recovery_log_verified(match_index);
            self.send(from, MessageBody::AppendResponse(AppendResponse::Accepted { match_index }));
            return;
        }
        if !self.log.matches(a.prev) {
            let hint = self.rejection_hint(self.log.find_conflict_by_term(a.prev.index, a.prev.term));
            let body = MessageBody::AppendResponse(AppendResponse::Rejected { rejected: a.prev.index, hint });
            self.send(from, body);
            return;
        }
        match self.log.append_after(a.prev, &a.entries) {
            Ok((last_new, written)) => {
                if let Some(from) = written {
                    self.on_log_written(from, &a.entries);
                }
                if let Err(e) = self.log.commit_to(a.commit.min(last_new)) {
                    self.halt(format!("append from {from} at term {term}: {e}"));
                    return;
                }
                self.recovery_log_verified(last_new);
                self.send(from, MessageBody::AppendResponse(AppendResponse::Accepted { match_index: last_new }));
            }
            Err(e) => self.halt(format!("append from {from} at term {term}: {e}")),
        }
    }

    pub(super) fn handle_append_response(&mut self, from: NodeId, r: AppendResponse) {
        let last = self.log.last_index();
        let RoleState::Leader(l) = &mut self.role else { return };
        let Some(pr) = l.peers.get_mut(&from) else { return };
        pr.recent_active = true;
        match r {
            AppendResponse::Accepted { match_index } => {
                if match_index > last {
                    return;
                }
                if pr.ack(match_index) {
                    self.maybe_commit();
                }
                let transfer = self.leader_state().and_then(|l| l.transferee);
                if transfer.is_some_and(|(to, _)| to == from) && match_index == self.log.last_index() {
                    self.send_timeout_now(from);
                }
            }
            AppendResponse::Rejected { rejected, hint } if hint.term == LOST_STATE_HINT_TERM => {
                // The follower lost state it had acknowledged (see `recovery`): what this
                // leader knows of its log is void; probe from its hint.
                pr.forget_match(rejected, hint.index, last);
            }
            AppendResponse::Rejected { rejected, hint } => {
                let guess = if hint.term > Term::ZERO {
                    self.log.find_conflict_by_term(hint.index, hint.term).index
                } else {
                    hint.index
                };
                pr.reject(rejected, guess);
            }
        }
    }

    /// A heartbeat answer: the follower is alive at this term. It promises nothing about the
    /// follower's log, so it neither counts toward commit nor, on its own, says that an append
    /// was lost: a follower whose acknowledgements have not moved for a heartbeat interval
    /// (however many answers arrive meanwhile) gets an empty append ending where the appends
    /// in flight end (or, waiting for a snapshot, at the snapshot's last entry). A follower
    /// that lost an append rejects it and is probed from its match index; a slow one
    /// acknowledges it once its disk has caught up; one that installed the snapshot but whose
    /// acknowledgement was lost acknowledges it again.
    pub(super) fn handle_heartbeat_response(&mut self, from: NodeId, seq: u64) {
        let last = self.log.last_index();
        let now = self.now;
        let interval = self.cfg.heartbeat_interval;
        let RoleState::Leader(l) = &mut self.role else { return };
        let sent_at = l.hb_sent_at.iter().find(|(s, _)| *s == seq).map(|(_, t)| *t);
        let Some(pr) = l.peers.get_mut(&from) else { return };
        pr.recent_active = true;
        if seq > pr.acked_seq {
            pr.acked_seq = seq;
            pr.acked_sent_at = sent_at.or(pr.acked_sent_at);
        }
        let mut probe = None;
        match pr.state {
            ProgressState::Probe if pr.match_index < last => pr.probe_sent = false,
            ProgressState::Probe => {}
            ProgressState::Replicate => {
                if pr.stalled(now, interval) {
                    probe = Some(pr.next_index.prev());
                }
            }
            ProgressState::Snapshot => {
                if pr.stalled(now, interval) {
                    probe = pr.snapshot.map(|(s, _)| s.index);
                }
            }
        }
        if let Some(prev) = probe {
            self.send_probe(from, prev);
        }
        self.release_reads();
    }

    /// An empty append after `prev` (the end of what `to` was sent), answered by an
    /// acknowledgement or a rejection; not counted in the in-flight window. When `prev` was
    /// compacted meanwhile (and is not the snapshot being sent), `to` is sent a snapshot.
    fn send_probe(&mut self, to: NodeId, prev: LogIndex) {
        let term = match self.log.term(prev) {
            Ok(t) => t,
            // Compacted meanwhile (or a snapshot point): use the snapshot being sent, if it is
            // the one.
            Err(_) => match self.leader_state().and_then(|l| l.peers.get(&to)).and_then(|p| p.snapshot) {
                Some((s, _)) if s.index == prev => s.term,
                // The follower needs entries that are gone: only a snapshot can catch it up
                // (a probe that is never sent would leave a stalled window full for good).
                _ => {
                    self.start_snapshot(to);
                    return;
                }
            },
        };
        let commit = self.log.commit;
        let body = MessageBody::Append(Append { prev: EntryId::new(term, prev), entries: Vec::new(), commit });
        self.send(to, body);
    }

    /// The protocol step of [`Raft::ready`], taken before it collects anything: the leader
    /// turns what its inputs since the previous `Ready` decided into messages — a heartbeat
    /// round if one is due (its timer fired, or a read waits for confirmation), then to each
    /// follower the appends its window allows (new entries, a commit index it has not been
    /// sent, a probe). Inputs only record that these are due (`has_ready` reports it), so that
    /// everything an input burst produced goes out batched, once per `Ready`. Nothing for a
    /// non-leader.
    pub(super) fn flush(&mut self) {
        let Some(l) = self.leader_state() else { return };
        if l.heartbeat_pending {
            self.broadcast_heartbeat();
        }
        let ids: Vec<NodeId> = self.leader_state().map(|l| l.peers.keys().copied().collect()).unwrap_or_default();
        for id in ids {
            while self.send_append(id) {}
        }
    }

    /// Whether leader `l` (this node) has appends to send.
    pub(super) fn leader_has_sends(&self, l: &Leader) -> bool {
        let last = self.log.last_index();
        l.peers.values().any(|p| {
            (p.next_index <= last && p.can_send(self.cfg.inflight_msgs_max, self.cfg.inflight_bytes_max))
                || p.commit_sent < self.log.commit
        })
    }

    /// Sends one append to `to` if there is something to send and the window allows.
    pub(super) fn send_append(&mut self, to: NodeId) -> bool {
        let last = self.log.last_index();
        let commit = self.log.commit;
        let Some(pr) = self.leader_state().and_then(|l| l.peers.get(&to)) else { return false };
        if !pr.can_send(self.cfg.inflight_msgs_max, self.cfg.inflight_bytes_max) {
            return false;
        }
        let next = pr.next_index;
        let probing = pr.state == ProgressState::Probe;
        let commit_behind = pr.commit_sent < commit;
        if next > last && !probing && !commit_behind {
            return false;
        }
        if next > last && probing && pr.match_index == last && !commit_behind {
            return false;
        }
        let prev_index = next.prev();
        let prev_term = match self.log.term(prev_index) {
            Ok(t) => t,
            Err(StorageError::Compacted(_)) => {
                self.start_snapshot(to);
                return false;
            }
            Err(e) => {
                self.halt(format!("reading term at {prev_index}: {e}"));
                return false;
            }
        };
        let entries = match self.log.entries(next, last.next(), self.cfg.msg_bytes_max) {
            Ok(e) => e,
            Err(StorageError::Compacted(_)) => {
                self.start_snapshot(to);
                return false;
            }
            Err(e) => {
                self.halt(format!("reading entries from {next}: {e}"));
                return false;
            }
        };
        let bytes: u64 = entries.iter().map(Entry::size_bytes).sum();
        let last_sent = entries.last().map(|e| e.index);
        if let Some(pr) = self.leader_state_mut().and_then(|l| l.peers.get_mut(&to)) {
            pr.sent(last_sent, bytes);
            pr.commit_sent = commit;
        }
        let body = MessageBody::Append(Append { prev: EntryId::new(prev_term, prev_index), entries, commit });
        self.send(to, body);
        // In replicate state keep going while there are entries; a lone commit update or a
        // probe is one message.
        last_sent.is_some() && !probing
    }

    pub(super) fn broadcast_heartbeat(&mut self) {
        let now = self.now;
        let commit = self.log.commit;
        let Some(l) = self.leader_state_mut() else { return };
        l.heartbeat_pending = false;
        l.hb_seq += 1;
        let seq = l.hb_seq;
        if l.hb_sent_at.len() == HEARTBEAT_ROUNDS_REMEMBERED {
            l.hb_sent_at.pop_front();
        }
        l.hb_sent_at.push_back((seq, now));
        let targets: Vec<(NodeId, LogIndex)> = l.peers.iter().map(|(id, p)| (*id, commit.min(p.match_index))).collect();
        for (to, c) in targets {
            self.send(to, MessageBody::Heartbeat(Heartbeat { commit: c, seq }));
        }
        // A single-voter cluster confirms reads by itself.
        self.release_reads();
    }

    pub(super) fn send_timeout_now(&mut self, to: NodeId) {
        if let Some(l) = self.leader_state_mut() {
            l.timeout_now_sent = true;
        }
        self.send(to, MessageBody::TimeoutNow);
    }

    pub(super) fn maybe_commit(&mut self) {
        let id = self.id;
        let persisted = self.log.persisted;
        let RoleState::Leader(l) = &self.role else { return };
        let peers = &l.peers;
        let idx = self.membership.latest().committed_index(|n| {
            if n == id { persisted } else { peers.get(&n).map_or(LogIndex::ZERO, |p| p.match_index) }
        });
        if idx <= self.log.commit || idx > self.log.last_index() {
            return;
        }
        // Only entries of the current term are committed by counting (Raft §5.4.2).
        if self.log.term(idx).ok() != Some(self.term) {
            return;
        }
        let first_in_term = !self.committed_in_term();
        if let Err(e) = self.log.commit_to(idx) {
            self.halt(format!("committing by count: {e}"));
            return;
        }
        if let Some(l) = self.leader_state_mut() {
            while let Some(&(i, size)) = l.uncommitted.front() {
                if i > idx {
                    break;
                }
                l.uncommitted.pop_front();
                l.uncommitted_bytes -= size;
            }
        }
        self.after_config_commit();
        if first_in_term {
            let waiting =
                self.leader_state_mut().map(|l| std::mem::take(&mut l.reads_awaiting_commit)).unwrap_or_default();
            for (rid, origin) in waiting {
                if self.leader_read(rid, origin).is_err() {
                    self.fail_read(rid, origin);
                }
            }
        }
    }
}

/// Checks an append from the leader of `term` on its own (see `Raft::handle_append`).
fn check_append(term: Term, a: &Append) -> Result<(), String> {
    if a.prev.term > term {
        return Err(format!("prev {}@{} is above the message's term", a.prev.index, a.prev.term));
    }
    let mut expected = a.prev.index.next();
    let mut last_term = a.prev.term;
    for e in &a.entries {
        if e.index != expected {
            return Err(format!(
                "entry at {} where {expected} was due: entries do not follow prev {}@{} one after the other",
                e.index, a.prev.index, a.prev.term
            ));
        }
        if e.term < last_term {
            return Err(format!("the term goes back from {last_term} to {} at {}", e.term, e.index));
        }
        if e.term > term {
            return Err(format!("entry {}@{} is above the message's term", e.index, e.term));
        }
        if let EntryPayload::Config(c) = &e.payload
            && let Err(err) = c.validate()
        {
            return Err(format!("invalid configuration at {}: {err}", e.index));
        }
        expected = expected.next();
        last_term = e.term;
    }
    Ok(())
}
