//! Reads: ReadIndex on the leader and through followers, and lease reads.

use super::Raft;
use super::role::{PendingRead, RoleState};
use crate::message::{MessageBody, ReadIndexRequest, ReadIndexResponse};
use crate::types::{Instant, ReadError, ReadFailed, ReadId, ReadLevel, ReadReady};
use quorate_log::{LogIndex, LogStorage, NodeId};

impl<S: LogStorage> Raft<S> {
    /// Asks for a read at `level`. The result arrives in a later [`Ready`](crate::Ready): a
    /// [`ReadReady`] (serve once applied ≥ its index) or a [`ReadFailed`].
    pub fn read(&mut self, now: Instant, id: ReadId, level: ReadLevel) -> Result<(), ReadError> {
        self.advance_clock(now);
        if self.halted.is_some() {
            return Err(ReadError::Halted);
        }
        if level == ReadLevel::Lease {
            if self.cfg.lease_clock_drift_max.is_none() {
                return Err(ReadError::LeaseDisabled);
            }
            if !self.is_leader() {
                return Err(ReadError::NotLeader { leader_hint: self.leader() });
            }
            if self.lease_valid() && self.committed_in_term() {
                self.reads_ready.push(ReadReady { id, index: self.log.commit });
                return Ok(());
            }
        }
        if self.is_leader() {
            return self.leader_read(id, None);
        }
        // A (pre-)candidate knows no leader.
        let RoleState::Follower(f) = &mut self.role else { return Err(ReadError::NoLeader) };
        let Some(leader) = f.leader else { return Err(ReadError::NoLeader) };
        if f.forwarded_reads.len() >= self.cfg.pending_reads_max {
            return Err(ReadError::TooManyPending(self.cfg.pending_reads_max));
        }
        f.forwarded_reads.push((id, self.now));
        self.send(leader, MessageBody::ReadIndex(ReadIndexRequest { id }));
        Ok(())
    }

    pub(super) fn fail_read(&mut self, id: ReadId, origin: Option<NodeId>) {
        match origin {
            None => self.reads_failed.push(ReadFailed { id, error: ReadError::LeadershipLost }),
            Some(peer) => self.send(peer, MessageBody::ReadIndexResponse(ReadIndexResponse { id, index: None })),
        }
    }

    pub(super) fn committed_in_term(&self) -> bool {
        self.log.term(self.log.commit).ok() == Some(self.term)
    }

    pub(super) fn lease_valid(&self) -> bool {
        let Some(drift) = self.cfg.lease_clock_drift_max else { return false };
        let Some(l) = self.leader_state() else { return false };
        if l.timeout_now_sent || l.transferee.is_some() {
            return false;
        }
        let id = self.id;
        let now = self.now;
        // The quorum-th most recent send time of an acknowledged heartbeat round.
        let start = self.conf().committed_index(|n| {
            if n == id {
                LogIndex(now.0)
            } else {
                LogIndex(l.peers.get(&n).and_then(|p| p.acked_sent_at).map_or(0, |t| t.0))
            }
        });
        let lease_end = Instant(start.0).saturating_add(self.cfg.election_timeout_min.saturating_sub(drift));
        start.0 > 0 && now < lease_end
    }

    /// A read on the leader: confirmed once a heartbeat round sent after it reaches a quorum
    /// (and, before that, once the leader has committed an entry of its term).
    pub(super) fn leader_read(&mut self, id: ReadId, origin: Option<NodeId>) -> Result<(), ReadError> {
        let committed_in_term = self.committed_in_term();
        let commit = self.log.commit;
        let max = self.cfg.pending_reads_max;
        let Some(l) = self.leader_state_mut() else { return Err(ReadError::LeadershipLost) };
        if l.pending_reads.len() + l.reads_awaiting_commit.len() >= max {
            return Err(ReadError::TooManyPending(max));
        }
        if !committed_in_term {
            l.reads_awaiting_commit.push((id, origin));
            return Ok(());
        }
        l.pending_reads.push_back(PendingRead { id, origin, seq: l.hb_seq + 1, index: commit });
        l.heartbeat_pending = true;
        Ok(())
    }

    /// Releases the reads whose heartbeat round a quorum acknowledged.
    pub(super) fn release_reads(&mut self) {
        let id = self.id;
        let RoleState::Leader(l) = &mut self.role else { return };
        if l.pending_reads.is_empty() {
            return;
        }
        let peers = &l.peers;
        let quorum_seq = self
            .membership
            .latest()
            .committed_index(|n| LogIndex(if n == id { u64::MAX } else { peers.get(&n).map_or(0, |p| p.acked_seq) }));
        let mut forwarded = Vec::new();
        while let Some(r) = l.pending_reads.front() {
            if r.seq > quorum_seq.0 || r.seq > l.hb_seq {
                break;
            }
            let Some(r) = l.pending_reads.pop_front() else { break };
            match r.origin {
                None => self.reads_ready.push(ReadReady { id: r.id, index: r.index }),
                Some(peer) => forwarded.push((peer, r.id, r.index)),
            }
        }
        for (peer, id, index) in forwarded {
            self.send(peer, MessageBody::ReadIndexResponse(ReadIndexResponse { id, index: Some(index) }));
        }
    }
}
