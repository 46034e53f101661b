//! Snapshots: taking them (and compacting behind them), installing them, sending them to
//! followers that need compacted entries.

use super::Raft;
use super::role::RoleState;
use crate::message::{AppendResponse, MessageBody};
use crate::progress::ProgressState;
use crate::types::{Instant, SendSnapshot};
use quorate_log::{EntryId, LogIndex, LogStorage, NodeId, SnapshotMeta, Term};

impl<S: LogStorage> Raft<S> {
    /// Reports that the application took the snapshot asked for in [`Ready::take_snapshot`](crate::Ready::take_snapshot)
    /// (or one of its own, at an applied index) and persisted it. The core then compacts the
    /// log behind it, keeping `compaction_tail_entries`, and sends this snapshot to
    /// followers that need compacted entries. The configuration it sends with the snapshot is
    /// the one in force at `meta.last` by the core's own log, whatever `meta.config` says.
    pub fn snapshot_taken(&mut self, now: Instant, meta: SnapshotMeta) {
        self.advance_clock(now);
        self.snapshot_requested = false;
        if meta.last.index > self.log.applied || !self.log.matches(meta.last) {
            return;
        }
        // The log is the authority on its configurations (the index matches, so it is at or
        // above the floor). A joiner knows none below its first configuration entry: a
        // snapshot there would carry the empty configuration, which halts whoever installs it.
        let Some(config) = self.membership.known_at(meta.last.index) else { return };
        let meta = SnapshotMeta { last: meta.last, config: config.clone() };
        if self.snapshot.as_ref().is_some_and(|s| s.last.index >= meta.last.index) {
            return;
        }
        self.applied_since_snapshot = self.log.applied.distance_from(meta.last.index);
        // Bytes applied after the snapshot point are not tracked per entry; start afresh.
        self.applied_bytes_since_snapshot = 0;
        let compact_to = LogIndex(meta.last.index.0.saturating_sub(self.cfg.compaction_tail_entries));
        self.snapshot = Some(meta);
        if compact_to > self.log.floor().index && compact_to <= self.log.persisted {
            let Ok(term) = self.log.term(compact_to) else { return };
            let at = EntryId::new(term, compact_to);
            // Never a floor whose configuration is unknown (see above); a later snapshot
            // compacts further.
            let Some(config) = self.membership.known_at(compact_to).cloned() else { return };
            self.membership.on_compact(compact_to);
            self.log.compact(at);
            self.pending_compact = Some(SnapshotMeta { last: at, config });
        }
    }

    /// Installs a snapshot received from the leader `from` of `term`, whose data the
    /// application has received completely, verified and staged. Returns `Ok(true)` if the
    /// snapshot is to be installed (it then appears in the next [`Persist::install`](crate::Persist::install); install
    /// the staged data with it), `Ok(false)` if this node already has everything it covers
    /// (discard the staged data).
    pub fn install_snapshot(
        &mut self,
        now: Instant,
        from: NodeId,
        term: Term,
        meta: SnapshotMeta,
    ) -> Result<bool, crate::types::SnapshotError> {
        self.advance_clock(now);
        if self.halted.is_some() {
            return Err(crate::types::SnapshotError::Halted);
        }
        if term < self.term {
            return Err(crate::types::SnapshotError::StaleTerm { term, current: self.term });
        }
        // The snapshot comes from a peer: check it as such.
        let bad = if meta.last.term > term {
            Some(format!("its last entry {}@{} is above the leader's term", meta.last.index, meta.last.term))
        } else {
            meta.config.validate().err().map(|e| format!("its configuration is invalid: {e}"))
        };
        if let Some(bad) = bad {
            self.halt(format!("snapshot from {from} at term {term}: {bad}"));
            return Err(crate::types::SnapshotError::Halted);
        }
        if term > self.term || !matches!(self.role, RoleState::Follower(_)) {
            self.become_follower(term, Some(from));
        }
        self.heard_from_leader(from);
        if meta.last.index <= self.log.commit {
            let match_index = self.log.commit;
            self.recovery_log_verified(match_index);
            self.send(from, MessageBody::AppendResponse(AppendResponse::Accepted { match_index }));
            return Ok(false);
        }
        let keeps_suffix = self.log.matches(meta.last);
        self.log.install_snapshot(meta.last);
        // A follower by now (see above): no leader state to bring in line with a new
        // configuration.
        debug_assert!(matches!(self.role, RoleState::Follower(_)));
        self.membership.on_install(meta.last.index, &meta.config, keeps_suffix);
        self.applied_since_snapshot = 0;
        self.applied_bytes_since_snapshot = 0;
        self.pending_install = Some(meta.clone());
        self.snapshot = Some(meta.clone());
        let match_index = meta.last.index;
        self.recovery_log_verified(match_index);
        self.send(from, MessageBody::AppendResponse(AppendResponse::Accepted { match_index }));
        Ok(true)
    }

    /// Reports that the application did not take the snapshot asked for in
    /// [`Ready::take_snapshot`](crate::Ready::take_snapshot) (for lack of disk space, say).
    /// The request is dropped; the core asks again once it applies another entry with a
    /// threshold still passed, or when a follower needs compacted entries. Without this
    /// report a skipped request is outstanding for ever and no snapshot is asked for again.
    pub fn snapshot_skipped(&mut self, now: Instant) {
        self.advance_clock(now);
        self.snapshot_requested = false;
    }

    /// Reports that sending a snapshot to `to` failed; the leader probes it again.
    pub fn snapshot_send_failed(&mut self, now: Instant, to: NodeId) {
        self.advance_clock(now);
        if let Some(p) = self.leader_state_mut().and_then(|l| l.peers.get_mut(&to))
            && p.state == ProgressState::Snapshot
        {
            p.become_probe();
        }
    }

    /// A follower needs entries that are compacted: send it the latest snapshot, or ask the
    /// application for one.
    pub(super) fn start_snapshot(&mut self, to: NodeId) {
        let floor = self.log.floor().index;
        match self.snapshot.clone() {
            Some(meta) if meta.last.index >= floor => {
                let now = self.now;
                if let Some(p) = self.leader_state_mut().and_then(|l| l.peers.get_mut(&to)) {
                    p.become_snapshot(meta.last, now);
                }
                self.send_snapshots.push(SendSnapshot { to, meta });
            }
            _ => self.request_snapshot(),
        }
    }

    /// Asks the application for a snapshot; the request goes out at the end of the next
    /// `Ready`, at the index applied by then.
    pub(super) fn request_snapshot(&mut self) {
        if !self.snapshot_requested {
            self.snapshot_wanted = true;
        }
    }

    /// Whether a snapshot is wanted and can be asked for now: something is applied and the
    /// configuration at the applied index is known (a joiner waits until it has applied its
    /// first configuration entry).
    pub(super) fn snapshot_due(&self) -> bool {
        self.snapshot_wanted
            && !self.snapshot_requested
            && self.log.applied > LogIndex::ZERO
            && self.membership.known_at(self.log.applied).is_some()
    }

    pub(super) fn take_snapshot_request(&mut self) -> Option<SnapshotMeta> {
        if !self.snapshot_due() {
            return None;
        }
        let applied = self.log.applied;
        let term = self.log.term(applied).ok()?;
        let config = self.membership.known_at(applied)?.clone();
        self.snapshot_wanted = false;
        self.snapshot_requested = true;
        Some(SnapshotMeta { last: EntryId::new(term, applied), config })
    }
}
