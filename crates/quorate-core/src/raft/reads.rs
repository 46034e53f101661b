//! Reads: ReadIndex on the leader and through followers, and lease reads.

use super::{PendingRead, Raft};
use crate::message::{MessageBody, ReadIndexRequest, ReadIndexResponse};
use crate::types::{Instant, ReadError, ReadFailed, ReadId, ReadLevel, ReadReady, Role};
use quorate_log::{LogIndex, LogStorage, NodeId};

impl<S: LogStorage> Raft<S> {
    /// Asks for a read at `level`. The result arrives in a later [`Ready`]: a
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
            if self.role != Role::Leader {
                return Err(ReadError::NotLeader { leader_hint: self.leader });
            }
            if self.lease_valid() && self.committed_in_term() {
                self.reads_ready.push(ReadReady { id, index: self.log.commit });
                return Ok(());
            }
        }
        if self.role == Role::Leader {
            return self.leader_read(id, None);
        }
        let Some(leader) = self.leader else { return Err(ReadError::NoLeader) };
        if self.forwarded_reads.len() >= self.cfg.pending_reads_max {
            return Err(ReadError::TooManyPending(self.cfg.pending_reads_max));
        }
        self.forwarded_reads.push((id, self.now));
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
        if self.role != Role::Leader || self.timeout_now_sent || self.transferee.is_some() {
            return false;
        }
        let id = self.id;
        let now = self.now;
        // The quorum-th most recent send time of an acknowledged heartbeat round.
        let start = self.conf().committed_index(|n| {
            if n == id {
                LogIndex(now.0)
            } else {
                LogIndex(self.peers.get(&n).and_then(|p| p.acked_sent_at).map_or(0, |t| t.0))
            }
        });
        let lease_end = Instant(start.0).saturating_add(self.cfg.election_timeout_min.saturating_sub(drift));
        start.0 > 0 && now < lease_end
    }

    pub(super) fn leader_read(&mut self, id: ReadId, origin: Option<NodeId>) -> Result<(), ReadError> {
        if self.pending_reads.len() + self.reads_awaiting_commit.len() >= self.cfg.pending_reads_max {
            return Err(ReadError::TooManyPending(self.cfg.pending_reads_max));
        }
        if !self.committed_in_term() {
            self.reads_awaiting_commit.push((id, origin));
            return Ok(());
        }
        self.pending_reads.push_back(PendingRead { id, origin, seq: self.hb_seq + 1, index: self.log.commit });
        self.heartbeat_pending = true;
        Ok(())
    }

    pub(super) fn release_reads(&mut self) {
        if self.pending_reads.is_empty() {
            return;
        }
        let id = self.id;
        let peers = &self.peers;
        let quorum_seq = self
            .conf()
            .committed_index(|n| LogIndex(if n == id { u64::MAX } else { peers.get(&n).map_or(0, |p| p.acked_seq) }));
        while let Some(r) = self.pending_reads.front() {
            if r.seq > quorum_seq.0 || r.seq > self.hb_seq {
                break;
            }
            let Some(r) = self.pending_reads.pop_front() else { break };
            match r.origin {
                None => self.reads_ready.push(ReadReady { id: r.id, index: r.index }),
                Some(peer) => {
                    let body = MessageBody::ReadIndexResponse(ReadIndexResponse { id: r.id, index: Some(r.index) });
                    self.send(peer, body);
                }
            }
        }
    }
}
