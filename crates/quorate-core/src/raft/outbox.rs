//! Outgoing messages and when they may leave.
//!
//! **A message leaves only once what it depends on is on stable storage** — the leader's
//! messages included. Every message is classified by what it depends on ([`Dependency::of`],
//! from the message alone, so that no call site can forget it):
//!
//! | dependency | messages | leaves once durable |
//! |---|---|---|
//! | nothing | pre-vote requests, pre-vote grants | at once |
//! | the hard state | everything else: vote requests and answers, appends and heartbeats (the leader's), rejections, heartbeat answers, ReadIndex requests and answers, `TimeoutNow` | the sender's term and vote as they were when the message was made |
//! | the log up to N | append acknowledgements (`Accepted { match_index: N }`) | that hard state, and the log up to N |
//!
//! A pre-vote request carries the term its sender would campaign in and a pre-vote grant the
//! candidate's: neither is a term the sender has adopted, and neither changes state on either
//! side. Every other message is at its sender's own term; if that term (or the vote cast in
//! it) is not durable yet, a crash could bring the sender back at an older term, free to act
//! again in a term it has already spoken in. Hole 1 of issue 16 was exactly that: a leader
//! whose own vote closed the quorum sent appends at its new term before the term was durable,
//! crashed, won the same term again after the restart and proposed different entries at the
//! same indexes. A leader's appends do not wait for its own copy of the entries, only for its
//! term: its own log counts toward the commit quorum only once reported persisted.
//!
//! The dependency becomes the persist batch that makes it durable ([`IoId`]): the batch that
//! carries the current term and vote, or the batch that writes the log up to N
//! ([`RaftLog::durability`](crate::log::RaftLog)); the message is held until that batch is
//! reported. When the term moves, held messages of older terms are dropped: whoever they were
//! for has a newer term to hear about, and a message may always be lost.

use super::Raft;
use crate::danger::HoleId;
use crate::log::Durability;
use crate::message::{AppendResponse, Message, MessageBody, RequestVote, VoteResponse};
use crate::types::IoId;
use quorate_log::{LogIndex, LogStorage, NodeId, Term};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// What an outgoing message depends on (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Dependency {
    /// Nothing durable.
    Nothing,
    /// The sender's term and vote as they are when the message is made.
    HardState,
    /// The hard state, and the sender's log up to this index.
    Log(LogIndex),
}

impl Dependency {
    /// The dependency of `m`, from what it says.
    pub(crate) fn of(m: &Message) -> Dependency {
        match &m.body {
            MessageBody::RequestVote(RequestVote { pre_vote: true, .. })
            | MessageBody::VoteResponse(VoteResponse { pre_vote: true, granted: true }) => Dependency::Nothing,
            MessageBody::AppendResponse(AppendResponse::Accepted { match_index }) => Dependency::Log(*match_index),
            _ => Dependency::HardState,
        }
    }
}

/// A message held until what it depends on is durable.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Held {
    /// It may leave once this batch is reported...
    after: IoId,
    /// ...and, if set, once the log up to this index has been handed out in a batch: that
    /// batch (not merely "the next one": batches are bounded, see
    /// [`RaftLog::hand_out`](crate::log::RaftLog)) then joins `after`.
    log: Option<LogIndex>,
    m: Message,
}

/// Messages made and not yet handed out: those free to leave, and those held until a persist
/// batch is reported.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Outbox {
    /// Free to leave, in the order they were made.
    msgs: Vec<Message>,
    /// Held until what they name is durable, in the order they were made.
    held: VecDeque<Held>,
}

impl Outbox {
    /// Queues `m`, which may leave once batch `after` is reported (`persisted`: the latest
    /// batch reported) and, if `log` is set, the batch that hands out the log up to that
    /// index is reported too.
    pub(crate) fn push(&mut self, after: IoId, log: Option<LogIndex>, persisted: IoId, m: Message) {
        if after <= persisted && log.is_none() {
            self.msgs.push(m);
        } else {
            self.held.push_back(Held { after, log, m });
        }
    }

    /// Batch `io` handed out the log up to `handed`: messages waiting for entries up to there
    /// now wait for `io` (or a later batch they already named).
    pub(crate) fn handed_out(&mut self, io: IoId, handed: LogIndex) {
        for h in &mut self.held {
            if h.log.is_some_and(|i| i <= handed) {
                h.after = h.after.max(io);
                h.log = None;
            }
        }
    }

    /// Batch `persisted` (and every earlier one) was reported: release what waited for it,
    /// in the order it was made.
    pub(crate) fn release(&mut self, persisted: IoId) {
        let due = |h: &Held| h.after <= persisted && h.log.is_none();
        if !self.held.iter().any(due) {
            return;
        }
        let mut kept = VecDeque::with_capacity(self.held.len());
        for h in self.held.drain(..) {
            if due(&h) {
                self.msgs.push(h.m);
            } else {
                kept.push_back(h);
            }
        }
        self.held = kept;
    }

    /// The term moved to `term`: held messages of older terms are dropped.
    pub(crate) fn drop_below(&mut self, term: Term) {
        self.held.retain(|h| h.m.term >= term);
    }

    /// Whether some message is free to leave.
    pub(crate) fn has_ready(&self) -> bool {
        !self.msgs.is_empty()
    }

    /// The messages free to leave.
    pub(crate) fn take(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.msgs)
    }
}

impl<S: LogStorage> Raft<S> {
    /// Sends `body` to `to` at this node's term, once what it depends on is durable.
    pub(super) fn send(&mut self, to: NodeId, body: MessageBody) {
        let m = Message { from: self.id, to, term: self.term, body };
        self.send_message(m);
    }

    /// Sends `m` once what it depends on is durable.
    pub(super) fn send_message(&mut self, m: Message) {
        let (after, log) = if self.danger.on(HoleId::SelfVoteSendsEarly) && self.is_leader() {
            // Hole 1 re-introduced (tests only): the leader's messages go straight out.
            (IoId(0), None)
        } else {
            self.durable_after(Dependency::of(&m))
        };
        self.outbox.push(after, log, self.io_persisted, m);
    }

    /// The persist batch after whose report `dep` is durable (`IoId(0)`: already durable),
    /// and the log index whose batch must be reported too if that batch is not made yet.
    fn durable_after(&self, dep: Dependency) -> (IoId, Option<LogIndex>) {
        let next = IoId(self.io_issued.0 + 1);
        // The term and vote are durable with the batch that carried them, or go out in the
        // next batch if they changed since the last one was made.
        let hard_state =
            if (self.term, self.vote) == (self.handed_hs.term, self.handed_hs.vote) { self.hs_io } else { next };
        match dep {
            Dependency::Nothing => (IoId(0), None),
            Dependency::HardState => (hard_state, None),
            Dependency::Log(index) => match self.log.durability(index) {
                Durability::Durable => (hard_state, None),
                Durability::InBatch(io) => (hard_state.max(io), None),
                // Not handed out yet: the batch that hands it out (found when it is made).
                Durability::Later => (hard_state, Some(index)),
            },
        }
    }

    /// Moves to `term` (higher than the current one): no vote cast in it yet, and messages
    /// held from older terms are dropped.
    pub(super) fn enter_term(&mut self, term: Term) {
        debug_assert!(term > self.term);
        self.term = term;
        self.vote = None;
        self.outbox.drop_below(term);
    }
}

#[cfg(test)]
mod tests {
    use super::{Dependency, Outbox};
    use crate::message::{
        AppendResponse, Heartbeat, HeartbeatResponse, Message, MessageBody, RequestVote, VoteResponse,
    };
    use crate::types::IoId;
    use quorate_log::{EntryId, LogIndex, NodeId, Term};

    fn m(term: u64, body: MessageBody) -> Message {
        let n = |i| NodeId::new(i).expect("non-zero");
        Message { from: n(1), to: n(2), term: Term(term), body }
    }

    #[test]
    fn each_message_is_classified_by_what_it_promises() {
        let rv = |pre_vote| MessageBody::RequestVote(RequestVote { pre_vote, last: EntryId::ZERO, transfer: false });
        let vr = |pre_vote, granted| MessageBody::VoteResponse(VoteResponse { pre_vote, granted });
        assert_eq!(Dependency::of(&m(2, rv(true))), Dependency::Nothing);
        assert_eq!(Dependency::of(&m(2, vr(true, true))), Dependency::Nothing);
        assert_eq!(Dependency::of(&m(1, vr(true, false))), Dependency::HardState, "a refusal is at the voter's term");
        assert_eq!(Dependency::of(&m(2, rv(false))), Dependency::HardState);
        assert_eq!(Dependency::of(&m(2, vr(false, true))), Dependency::HardState);
        let hb = MessageBody::Heartbeat(Heartbeat { commit: LogIndex(3), seq: 1 });
        assert_eq!(Dependency::of(&m(2, hb)), Dependency::HardState);
        let hbr = MessageBody::HeartbeatResponse(HeartbeatResponse { seq: 1 });
        assert_eq!(Dependency::of(&m(2, hbr)), Dependency::HardState);
        let ack = MessageBody::AppendResponse(AppendResponse::Accepted { match_index: LogIndex(7) });
        assert_eq!(Dependency::of(&m(2, ack)), Dependency::Log(LogIndex(7)));
        let nack = MessageBody::AppendResponse(AppendResponse::Rejected { rejected: LogIndex(7), hint: EntryId::ZERO });
        assert_eq!(Dependency::of(&m(2, nack)), Dependency::HardState);
    }

    #[test]
    fn held_messages_leave_in_order_once_their_batch_is_reported_and_older_terms_are_dropped() {
        let hbr = |seq| m(2, MessageBody::HeartbeatResponse(HeartbeatResponse { seq }));
        let mut o = Outbox::default();
        o.push(IoId(0), None, IoId(3), hbr(1));
        o.push(IoId(5), None, IoId(3), hbr(2));
        o.push(IoId(4), None, IoId(3), hbr(3));
        o.push(IoId(5), None, IoId(3), m(1, MessageBody::TimeoutNow));
        assert_eq!(o.take(), vec![hbr(1)]);
        o.release(IoId(4));
        assert_eq!(o.take(), vec![hbr(3)]);
        o.drop_below(Term(2));
        o.release(IoId(5));
        assert_eq!(o.take(), vec![hbr(2)], "the term-1 message was dropped when the term moved");
        assert!(!o.has_ready());
    }

    #[test]
    fn an_acknowledgement_waits_for_the_batch_that_hands_out_its_entries() {
        let ack = |i| m(2, MessageBody::AppendResponse(AppendResponse::Accepted { match_index: LogIndex(i) }));
        let mut o = Outbox::default();
        // Entries up to 17 acknowledged while only batch 4 (up to 2) exists; the hard state
        // is durable with batch 3.
        o.push(IoId(3), Some(LogIndex(17)), IoId(3), ack(17));
        o.release(IoId(4));
        assert!(!o.has_ready(), "batch 4 did not write entry 17");
        o.handed_out(IoId(5), LogIndex(10));
        o.release(IoId(5));
        assert!(!o.has_ready(), "batch 5 stopped at 10");
        o.handed_out(IoId(6), LogIndex(17));
        o.release(IoId(5));
        assert!(!o.has_ready(), "batch 6 holds 17 and is not reported");
        o.release(IoId(6));
        assert_eq!(o.take(), vec![ack(17)]);
    }
}
