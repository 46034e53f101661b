//! Protocol-aware recovery from lost synced state ("Protocol-Aware Recovery for
//! Consensus-Based Storage", Alagappan et al., FAST '18).
//!
//! A node whose storage lost records it had synced — and may have acknowledged to its peers —
//! comes back with an older term or vote, or a shorter log. Acting on that state is unsafe: it
//! could vote twice in one term, or help elect a leader that lacks an entry committed with its
//! own (forgotten) acknowledgement. The storage detects the loss (the durable mark) and the
//! application passes what was recorded as [`Config::recovering`](crate::Config::recovering).
//! The core then, until it has caught up:
//!
//! * takes the recorded term and vote back (its term never goes below the recorded one; its
//!   vote in that term is the recorded vote);
//! * never campaigns (election timeout, `TimeoutNow` and [`Raft::campaign_now`] are all
//!   refused): its log may lack entries it helped commit, so it could win without them;
//! * grants a vote or a pre-vote only to a candidate whose log is at least as up to date as
//!   its own log *and* as the record's last entry — it votes as if its log still ended where
//!   the record says (the usual rules otherwise; with the recorded term and vote taken back,
//!   never a second vote in the recorded term). So a recovering node does not cost the cluster
//!   a voter whenever the others have moved past what it had recorded, which is the usual case
//!   once any write went through after the loss;
//! * still appends the leader's entries and acknowledges them — an acknowledgement reports
//!   what is durable now, which is exactly what a leader may count;
//! * takes no commit index from a heartbeat beyond what a leader of its term has verified its
//!   log to match: heartbeats carry no log-matching proof, and a leader that led across the
//!   loss may still believe the follower holds entries it lost (its match index is stale).
//!   An unverified follower answers a heartbeat (besides the usual answer) with a rejection
//!   whose hint term is [`LOST_STATE_HINT_TERM`], and every rejection it sends carries that
//!   marker: the leader then forgets the follower's match index and probes from the hint, so
//!   the follower's log gets verified and resent. The marker is harmless from a normal
//!   follower: the leader only resends (a lower match index never lowers a commit index);
//!   a leader of quorate 0.1.0 takes the marker for an ordinary hint and may keep its stale
//!   match index, which only delays the recovery until the next leader;
//! * leaves recovery, once its term and vote and the verified entries are durable, when
//!   - **in the recorded term**, the leader of that term has made its log match up to
//!     [`Recovering::target`] (the recorded last index or commit index, whichever is higher); or
//!   - **in a later term**, the leader of the current term has made its log match up to an
//!     entry of the current term (the leader's own entries: at the latest its first entry, the
//!     no-op it appends when elected).
//!
//!   [`Ready::recovered`](crate::Ready::recovered) reports the exit once, so that the
//!   application can drop its evidence of the loss; a crash before it did restarts the
//!   recovery, which is safe.
//!
//! Why the exits are safe. The storage records a term, a vote and a longer log before they
//! are acknowledged (the contract of [`Recovering::last`]), so every acknowledgement this node
//! sent before the loss was sent in a term at most the recorded term, for an entry at most the
//! recorded last index. The danger is an entry `e` committed with one of those forgotten
//! acknowledgements: once the node votes on its own log again, it must hold `e`, or its
//! "up to date" check could help elect a leader without `e`.
//! * In the recorded term there is one leader, which holds every entry this node acknowledged
//!   in that term, and every entry committed in an earlier term (leader completeness); a log
//!   that matches it up to the target holds them all again.
//! * A leader of a later term held `e` when it was elected, below its first entry of its
//!   term. The node had not reached that term before the loss. If it voted for that leader
//!   while recovering, the leader was at least as up to date as the record, and holds `e` by
//!   the argument for votes below. If not, every quorum that committed `e` meets that leader's
//!   election quorum in a node other than this one, whose acknowledgement of `e` preceded its
//!   vote, so the usual proof of leader completeness holds without this node. A log that matches the leader's up to an entry of the current term holds
//!   everything the leader held when it was elected. This exit does not need the target at all:
//!   a record naming entries that no later leader holds (they were never committed) no longer
//!   keeps the node recovering for ever.
//!
//! Why its votes are safe. Let `e` be committed with one of this node's forgotten
//! acknowledgements, through an entry `c` of term `T` (an entry is committed by counting only
//! in its leader's term) at or after `e`. This node's log held `c` when it acknowledged it, and
//! the record's last entry `r` is at or after `c` in that log (the record covers every
//! acknowledgement; a committed entry is never truncated), so `r`'s term is at least `T`. A
//! candidate whose last entry is at least as up to date as `r` either ends in `r`'s term at or
//! after `r`'s index — its entries of that term and this node's came from that term's one
//! leader, so by log matching it holds this node's former log up to `r`, `e` included — or ends
//! in a later term, whose leader held `e` by leader completeness (which this argument, applied
//! term by term, keeps true). This is Raft's own "up to date" argument, with the record standing
//! in for the log this node lost.
//!
//! The recorded vote is kept for the recorded term, and the term never goes back.
//!
//! The cost: a recovering voter does not vote. With a majority of the voters recovering at
//! once no leader can be elected: the cluster is unavailable (and safe) until an operator
//! steps in (docs/operations.md).

use super::Raft;
use crate::message::{AppendResponse, MessageBody};
use quorate_log::{EntryId, LogIndex, LogStorage, NodeId, Term};
use serde::{Deserialize, Serialize};

/// What a node had durably recorded before it lost synced state (its storage's durable mark):
/// the core's input for protocol-aware recovery ([`Config::recovering`](crate::Config::recovering)).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Recovering {
    /// The recorded term.
    pub term: Term,
    /// The recorded vote in that term.
    pub vote: Option<NodeId>,
    /// The recorded last durable log entry. **The recovery is only safe if it covers every
    /// entry the node may have acknowledged before the loss**: the storage must record it
    /// before an acknowledgement above it can be sent (a record that lags the
    /// acknowledgements lets the node leave recovery below an entry committed with its own
    /// forgotten acknowledgement; quorate-storage's durable mark is raised with every synced
    /// write that extends the log).
    pub last: EntryId,
    /// The recorded commit index.
    pub commit: LogIndex,
}

impl Recovering {
    /// The index up to which a leader of the recorded term must have verified the log before
    /// the node leaves recovery in that term: the recorded last index or commit index,
    /// whichever is higher.
    #[must_use]
    pub fn target(&self) -> LogIndex {
        self.last.index.max(self.commit)
    }
}

/// The hint term of an [`AppendResponse::Rejected`] that a follower in recovery sends: no real
/// entry has this term. It tells the leader to forget what it knows of the follower's log
/// (its match index) and to probe from the hint's index.
pub const LOST_STATE_HINT_TERM: Term = Term(u64::MAX);

/// A core in recovery: the record, and how far its log is verified.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Recovery {
    /// What the node had recorded.
    record: Recovering,
    /// The term of the leader that verified the log, and the index up to which this log is
    /// known to match that leader's log.
    verified: Option<(Term, LogIndex)>,
}

impl Recovery {
    pub(crate) fn new(record: Recovering) -> Recovery {
        Recovery { record, verified: None }
    }
}

impl<S: LogStorage> Raft<S> {
    /// What the node had recorded before it lost synced state, while it is recovering from
    /// that loss (see [`Config::recovering`](crate::Config::recovering)); `None` otherwise.
    #[must_use]
    pub fn recovering(&self) -> Option<&Recovering> {
        self.recovery.as_ref().map(|r| &r.record)
    }

    /// Whether this core is recovering from lost synced state.
    pub(super) fn is_recovering(&self) -> bool {
        self.recovery.is_some()
    }

    /// Starts recovery from `record` (at construction): the recorded term and vote are taken
    /// back; they go out in the first persist batch, before any message at that term.
    pub(super) fn start_recovery(&mut self, record: Recovering) {
        if record.term > self.term {
            self.term = record.term;
            self.vote = record.vote;
        } else if record.term == self.term && record.vote.is_some() {
            // The storage has the term but not (or not this) vote: the record wins, it is the
            // later state (a vote is never taken back within a term).
            self.vote = record.vote;
        }
        self.recovery = Some(Recovery::new(record));
    }

    /// The index up to which a leader of the current term has verified this log, while
    /// recovering (`None`: not verified in this term, or not recovering).
    pub(super) fn recovery_verified(&self) -> Option<LogIndex> {
        let (term, index) = self.recovery.as_ref()?.verified?;
        (term == self.term).then_some(index)
    }

    /// The leader of the current term has shown that this log matches its own up to `index`
    /// (it accepted an append or a snapshot from it).
    pub(super) fn recovery_log_verified(&mut self, index: LogIndex) {
        let term = self.term;
        let Some(r) = self.recovery.as_mut() else { return };
        r.verified = match r.verified {
            Some((t, v)) if t == term => Some((t, v.max(index))),
            _ => Some((term, index)),
        };
        self.maybe_leave_recovery();
    }

    /// A heartbeat from `from`, the leader of the current term, reached a recovering node
    /// whose log is not verified in this term: ask the leader to resend (see the module docs).
    /// The rejection names the index after this log's last one (nothing there matches) and
    /// hints at the last one.
    pub(super) fn reject_unverified(&mut self, from: NodeId) {
        let last = self.log.last_index();
        let hint = EntryId::new(LOST_STATE_HINT_TERM, last);
        self.send(from, MessageBody::AppendResponse(AppendResponse::Rejected { rejected: last.next(), hint }));
    }

    /// Whether a candidate whose last entry is `last` is at least as up to date as the record
    /// (always, when not recovering): a recovering node votes as if its log still ended at
    /// the recorded last entry.
    pub(super) fn recovery_allows_vote(&self, last: EntryId) -> bool {
        let Some(r) = &self.recovery else { return true };
        (last.term, last.index) >= (r.record.last.term, r.record.last.index)
    }

    /// The hint of a rejection this node sends: marked while it is recovering.
    pub(super) fn rejection_hint(&self, hint: EntryId) -> EntryId {
        if self.is_recovering() { EntryId::new(LOST_STATE_HINT_TERM, hint.index) } else { hint }
    }

    /// Leaves recovery if the log is verified far enough (see the module docs: up to the
    /// target in the recorded term; up to an entry of the current term in a later term) and
    /// durable that far, and the term and vote are durable; the exit is reported in the next
    /// `Ready`.
    pub(super) fn maybe_leave_recovery(&mut self) {
        let Some(r) = &self.recovery else { return };
        let Some(verified) = self.recovery_verified() else { return };
        let upto = if self.term > r.record.term {
            // The verified prefix must reach an entry of the current term. Terms never
            // decrease along a log, so that is the term at the verified index itself.
            if self.log.term(verified).ok() != Some(self.term) {
                return;
            }
            verified
        } else {
            let target = r.record.target();
            if verified < target {
                return;
            }
            target
        };
        let durable = self.log.persisted >= upto
            && (self.term, self.vote) == (self.handed_hs.term, self.handed_hs.vote)
            && self.hs_io <= self.io_persisted;
        if durable {
            self.recovery = None;
            self.recovered_unreported = true;
        }
    }

    /// Switches the lost-state hole back on (tests only): the node acts as if nothing was lost,
    /// with what its storage holds. Called right after construction, before any input.
    #[cfg(feature = "danger-reintroduce-holes")]
    pub(super) fn danger_ignore_lost_state(&mut self) {
        debug_assert!(self.danger.on(crate::danger::HoleId::LostStateIgnored));
        debug_assert_eq!(self.io_issued.0, 0, "the hole is switched on before the first Ready");
        if self.recovery.take().is_some() {
            self.term = self.handed_hs.term;
            self.vote = self.handed_hs.vote;
        }
    }
}
