//! The free-space status members send each other ([`DiskStatus`]), and the leader's refusal
//! of writes while too few voters have room: a write accepted then would grow the logs of
//! nodes about to refuse appends, and stall. Both engines keep one [`PeerDisks`].

use quorate_api::DiskStatus;
use quorate_log::{Configuration, NodeId};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often a node sends the other members its free-space status.
pub(crate) const DISK_STATUS_EVERY: Duration = Duration::from_secs(1);
/// A member's free-space status counts for this long after it was received (a member that
/// stops reporting — stopped, partitioned — stops counting as short of space).
pub(crate) const DISK_STATUS_TTL: Duration = Duration::from_secs(3);
/// The cluster version from which nodes send [`quorate_api::NodeMessage::DiskStatus`] (a
/// 0.1.0 node would close the consensus stream on the new message kind).
pub(crate) const DISK_STATUS_CLUSTER_VERSION: u32 = 2;

/// The other members' free-space status as last received, and when this node last sent its
/// own.
#[derive(Debug, Default)]
pub(crate) struct PeerDisks {
    /// At most one entry per member of the configuration (others are not recorded).
    peers: HashMap<NodeId, (Instant, DiskStatus)>,
    sent: Option<Instant>,
    /// The voters that were short of space at the last refusal (for logging the changes).
    short: Vec<NodeId>,
}

impl PeerDisks {
    /// A member's status arrived (from another member of `config`; anything else is ignored,
    /// so the map stays bounded by the configuration).
    pub(crate) fn received(&mut self, me: NodeId, from: NodeId, config: &Configuration, s: DiskStatus, now: Instant) {
        if from != me && config.members().any(|m| m == from) {
            self.peers.insert(from, (now, s));
        }
    }

    /// Whether this node's own status is due (every [`DISK_STATUS_EVERY`], from cluster
    /// version [`DISK_STATUS_CLUSTER_VERSION`]); when it is, the time is noted and statuses
    /// past [`DISK_STATUS_TTL`] are dropped.
    pub(crate) fn send_due(&mut self, cluster_version: u32, now: Instant) -> bool {
        if self.sent.is_some_and(|t| now.saturating_duration_since(t) < DISK_STATUS_EVERY)
            || cluster_version < DISK_STATUS_CLUSTER_VERSION
        {
            return false;
        }
        self.sent = Some(now);
        self.peers.retain(|_, (t, _)| now.saturating_duration_since(*t) < DISK_STATUS_TTL);
        true
    }

    /// The voters of `config` that report being short of space, if too few others are left
    /// to commit a write (the leader's own space is checked apart: `me` never counts as
    /// short here). `None`: a quorum has room. Logs when the answer changes.
    pub(crate) fn voters_short_of_space(
        &mut self,
        me: NodeId,
        config: &Configuration,
        now: Instant,
    ) -> Option<Vec<NodeId>> {
        let short = |id: NodeId| {
            id != me
                && self
                    .peers
                    .get(&id)
                    .is_some_and(|(t, s)| s.refusing && now.saturating_duration_since(*t) < DISK_STATUS_TTL)
        };
        if config.has_quorum(|id| !short(id)) {
            if !self.short.is_empty() {
                tracing::info!("enough voters have free space again; accepting writes");
                self.short.clear();
            }
            return None;
        }
        let voters: Vec<NodeId> = config.all_voters().filter(|&id| short(id)).collect();
        if voters != self.short {
            tracing::warn!(voters = ?voters, "too few voters have free space for new writes; refusing writes");
            self.short.clone_from(&voters);
        }
        Some(voters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> NodeId {
        NodeId::new(n).expect("non-zero")
    }

    fn refusing() -> DiskStatus {
        DiskStatus { refusing: true, free_bytes: 1, floor_bytes: 2 }
    }

    #[test]
    fn writes_are_refused_only_while_too_few_voters_have_room_and_reports_expire() {
        let config = Configuration::with_voters([id(1), id(2), id(3)]).expect("valid");
        let t0 = Instant::now();
        let mut d = PeerDisks::default();
        // One voter short: a quorum (1 and 3) still has room.
        d.received(id(1), id(2), &config, refusing(), t0);
        assert_eq!(d.voters_short_of_space(id(1), &config, t0), None);
        // Two short: refused, naming both.
        d.received(id(1), id(3), &config, refusing(), t0);
        assert_eq!(d.voters_short_of_space(id(1), &config, t0), Some(vec![id(2), id(3)]));
        // One recovers.
        d.received(id(1), id(3), &config, DiskStatus { refusing: false, ..refusing() }, t0);
        assert_eq!(d.voters_short_of_space(id(1), &config, t0), None);
        // A report counts for the TTL only.
        d.received(id(1), id(3), &config, refusing(), t0);
        assert!(d.voters_short_of_space(id(1), &config, t0 + DISK_STATUS_TTL / 2).is_some());
        assert_eq!(d.voters_short_of_space(id(1), &config, t0 + DISK_STATUS_TTL), None);
        // This node's own report, and non-members', are not recorded.
        let mut d = PeerDisks::default();
        for from in [id(1), id(9)] {
            d.received(id(1), from, &config, refusing(), t0);
        }
        d.received(id(1), id(2), &config, refusing(), t0);
        assert_eq!(d.voters_short_of_space(id(1), &config, t0), None);
        assert_eq!(d.peers.len(), 1);
    }

    #[test]
    fn the_status_is_sent_once_a_second_from_cluster_version_2_and_old_reports_are_dropped() {
        let config = Configuration::with_voters([id(1), id(2)]).expect("valid");
        let t0 = Instant::now();
        let mut d = PeerDisks::default();
        assert!(!d.send_due(DISK_STATUS_CLUSTER_VERSION - 1, t0), "a 0.1.0 peer would close the stream");
        assert!(d.send_due(DISK_STATUS_CLUSTER_VERSION, t0));
        assert!(!d.send_due(DISK_STATUS_CLUSTER_VERSION, t0 + DISK_STATUS_EVERY / 2));
        d.received(id(1), id(2), &config, refusing(), t0);
        assert!(d.send_due(DISK_STATUS_CLUSTER_VERSION, t0 + DISK_STATUS_EVERY));
        assert_eq!(d.peers.len(), 1);
        assert!(d.send_due(DISK_STATUS_CLUSTER_VERSION, t0 + DISK_STATUS_TTL));
        assert!(d.peers.is_empty());
    }
}
