//! Cross-replica comparison of applied-entries hashes, inside the node.
//!
//! Every replica hashes the entries it applies per window ([`crate::invariants::AppliedHasher`]).
//! Every [`EXCHANGE_EVERY`] the driver sends its latest [`SAMPLES_SENT_MAX`] samples to each
//! member of the configuration ([`quorate_api::NodeMessage::HashSamples`], consensus lane), and
//! compares the samples it receives with its own at the same index: equal samples count in
//! `quorate_applied_hash_checks_total{peer}`, a difference is a violation of the invariant
//! `cross_replica_hash` (two replicas applied different entries in that window).
//!
//! **Gate.** The samples are sent only while the committed cluster version is at least
//! [`HASH_EXCHANGE_CLUSTER_VERSION`] (after `quorate cluster finalize`): a 0.1.0 node does not
//! know the message kind and would close the consensus stream on it, and from that cluster
//! version on every member runs a binary that decodes it and `quorate/1` connections are
//! refused. (The ALPN of one connection is not a safe gate: the connection can be replaced,
//! by a rolled-back binary, between the check and the send.)
//!
//! **Bounds.** At most [`SAMPLES_SENT_MAX`] samples per message; per peer at most
//! [`PENDING_PER_PEER_MAX`] samples wait for this node to reach their index; at most
//! [`PEERS_MAX`] peers are tracked. A sample that can no longer be compared (this node skipped
//! that window after a restart or a snapshot install, or no longer keeps it) is dropped.

use crate::invariants::Violation;
use quorate_api::{HashSample, HashSamples};
use quorate_log::NodeId;
use quorate_telemetry::names::invariant;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// How often a node sends its samples to its peers.
pub(crate) const EXCHANGE_EVERY: Duration = Duration::from_secs(2);
/// Samples per message (the latest ones).
pub(crate) const SAMPLES_SENT_MAX: usize = 4;
/// Samples of one peer waiting for this node to reach their index.
pub(crate) const PENDING_PER_PEER_MAX: usize = 16;
/// Peers tracked (members of the configuration; far above any real cluster).
pub(crate) const PEERS_MAX: usize = 64;
/// The cluster version from which samples are sent.
pub(crate) const HASH_EXCHANGE_CLUSTER_VERSION: u32 = 2;

const _: () = assert!(SAMPLES_SENT_MAX <= quorate_api::HASH_SAMPLES_MAX);

/// The result of comparing samples.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Compared {
    /// Samples that matched this node's own, per peer.
    pub(crate) matched: Vec<(NodeId, u64)>,
    /// Samples that differed.
    pub(crate) violations: Vec<Violation>,
}

/// One node's side of the exchange.
#[derive(Debug, Default)]
pub(crate) struct HashExchange {
    last_sent: Option<Instant>,
    /// Per peer: samples at indexes this node has not reached yet.
    pending: BTreeMap<NodeId, VecDeque<HashSample>>,
    /// Per peer: the highest index already compared (a sample is compared once).
    compared: BTreeMap<NodeId, u64>,
}

impl HashExchange {
    /// The samples to send now, if it is time (and records that they were sent): the latest
    /// [`SAMPLES_SENT_MAX`] of `own` (oldest first). `None` when not due or nothing to send.
    pub(crate) fn due(&mut self, now: Instant, own: &[(u64, u64)]) -> Option<HashSamples> {
        if self.last_sent.is_some_and(|t| now.saturating_duration_since(t) < EXCHANGE_EVERY) || own.is_empty() {
            return None;
        }
        self.last_sent = Some(now);
        let from = own.len().saturating_sub(SAMPLES_SENT_MAX);
        Some(HashSamples { samples: own[from..].iter().map(|&(index, hash)| HashSample { index, hash }).collect() })
    }

    /// Samples received from `peer`, compared with `own` (this node's samples, oldest first).
    /// `me` names this node in the evidence.
    pub(crate) fn received(&mut self, me: NodeId, peer: NodeId, theirs: &HashSamples, own: &[(u64, u64)]) -> Compared {
        let mut out = Compared::default();
        if peer == me || (!self.compared.contains_key(&peer) && self.compared.len() >= PEERS_MAX) {
            return out;
        }
        self.compared.entry(peer).or_insert(0);
        for s in theirs.samples.iter().take(quorate_api::HASH_SAMPLES_MAX) {
            self.consider(me, peer, *s, own, &mut out);
        }
        out
    }

    /// Compares the samples still waiting with `own` (call when this node may have applied
    /// more).
    pub(crate) fn recheck(&mut self, me: NodeId, own: &[(u64, u64)]) -> Compared {
        let mut out = Compared::default();
        let peers: Vec<NodeId> = self.pending.keys().copied().collect();
        for peer in peers {
            let waiting = self.pending.remove(&peer).unwrap_or_default();
            for s in waiting {
                self.consider(me, peer, s, own, &mut out);
            }
        }
        out
    }

    fn consider(&mut self, me: NodeId, peer: NodeId, s: HashSample, own: &[(u64, u64)], out: &mut Compared) {
        let done = self.compared.get(&peer).copied().unwrap_or(0);
        if s.index <= done {
            return;
        }
        if let Some(&(_, mine)) = own.iter().find(|(i, _)| *i == s.index) {
            self.compared.insert(peer, s.index);
            if mine == s.hash {
                out.matched.push((peer, s.index));
            } else {
                out.violations.push(Violation {
                    invariant: invariant::CROSS_REPLICA_HASH,
                    evidence: format!(
                        "applied-entries hash of the window ending at index {}: node {me} has {mine:012x}, \
                         peer {peer} has {:012x} (the replicas applied different entries in that window)",
                        s.index, s.hash
                    ),
                });
            }
        } else if own.last().is_none_or(|(i, _)| *i < s.index) {
            // This node has not reached that index yet: keep it for later (bounded).
            let q = self.pending.entry(peer).or_default();
            if !q.iter().any(|p| p.index == s.index) {
                if q.len() == PENDING_PER_PEER_MAX {
                    q.pop_front();
                }
                q.push_back(s);
            }
        }
        // Otherwise this node skipped or no longer keeps that window: nothing to compare.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> NodeId {
        NodeId::new(n).expect("non-zero")
    }

    fn samples(s: &[(u64, u64)]) -> HashSamples {
        HashSamples { samples: s.iter().map(|&(index, hash)| HashSample { index, hash }).collect() }
    }

    #[test]
    fn equal_samples_match_once_and_a_differing_sample_is_a_violation() {
        let own = [(1024, 0xaa), (2048, 0xbb), (3072, 0xcc)];
        let mut x = HashExchange::default();
        let c = x.received(id(1), id(2), &samples(&[(2048, 0xbb), (3072, 0xcc)]), &own);
        assert_eq!(c.matched, [(id(2), 2048), (id(2), 3072)]);
        assert!(c.violations.is_empty());
        // The same samples again are not counted twice.
        assert_eq!(x.received(id(1), id(2), &samples(&[(3072, 0xcc)]), &own), Compared::default());
        // Another peer differs at 3072: a violation naming both samples and the peer.
        let c = x.received(id(1), id(3), &samples(&[(3072, 0xcd)]), &own);
        assert!(c.matched.is_empty());
        assert_eq!(c.violations.len(), 1);
        let v = &c.violations[0];
        assert_eq!(v.invariant, invariant::CROSS_REPLICA_HASH);
        assert!(v.evidence.contains("index 3072"), "{}", v.evidence);
        assert!(v.evidence.contains("0000000000cc") && v.evidence.contains("0000000000cd"), "{}", v.evidence);
        assert!(v.evidence.contains("peer 3"), "{}", v.evidence);
    }

    #[test]
    fn samples_ahead_wait_until_this_node_reaches_them_and_skipped_windows_are_dropped() {
        let mut x = HashExchange::default();
        // This node is at 1024; the peer is at 3072. 2048 and 3072 wait.
        let own = vec![(1024, 1)];
        let c = x.received(id(1), id(2), &samples(&[(1024, 1), (2048, 2), (3072, 3)]), &own);
        assert_eq!(c.matched, [(id(2), 1024)]);
        // This node skipped the window ending at 2048 (a restart), then reached 3072 with a
        // different hash: 2048 is dropped, 3072 is a violation.
        let own = vec![(1024, 1), (3072, 4)];
        let c = x.recheck(id(1), &own);
        assert!(c.matched.is_empty());
        assert_eq!(c.violations.len(), 1);
        assert!(x.recheck(id(1), &own).violations.is_empty(), "compared once");
        assert!(x.pending.values().all(VecDeque::is_empty));
    }

    #[test]
    fn pending_samples_and_peers_are_bounded_and_sending_is_periodic() {
        let mut x = HashExchange::default();
        let far: Vec<(u64, u64)> = (1..=40).map(|i| (i * 1024, i)).collect();
        for chunk in far.chunks(quorate_api::HASH_SAMPLES_MAX) {
            let _ = x.received(id(1), id(2), &samples(chunk), &[]);
        }
        assert_eq!(x.pending[&id(2)].len(), PENDING_PER_PEER_MAX);
        for p in 2..(PEERS_MAX as u64 + 10) {
            let _ = x.received(id(1), id(p), &samples(&[(1024, 1)]), &[]);
        }
        assert_eq!(x.compared.len(), PEERS_MAX);
        // Our own samples are ignored.
        assert_eq!(x.received(id(1), id(1), &samples(&[(1024, 9)]), &[(1024, 1)]), Compared::default());

        let own: Vec<(u64, u64)> = (1..=10).map(|i| (i * 1024, i)).collect();
        let t0 = Instant::now();
        let first = x.due(t0, &own).expect("due at first");
        assert_eq!(first.samples.len(), SAMPLES_SENT_MAX);
        assert_eq!(first.samples.last().map(|s| s.index), Some(10 * 1024));
        assert!(x.due(t0 + EXCHANGE_EVERY / 2, &own).is_none());
        assert!(x.due(t0 + EXCHANGE_EVERY, &own).is_some());
        assert!(HashExchange::default().due(t0, &[]).is_none(), "nothing to send yet");
    }
}
