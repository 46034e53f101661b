//! Outgoing messages and when they may leave.

use super::Raft;
use crate::message::{Message, MessageBody};
use crate::types::Role;
use quorate_log::{LogStorage, NodeId};

impl<S: LogStorage> Raft<S> {
    pub(super) fn send(&mut self, to: NodeId, body: MessageBody) {
        let m = Message { from: self.id, to, term: self.term, body };
        if self.role == Role::Leader {
            // The leader's term and vote were persisted before any peer granted it a vote;
            // its appends may go out before its own copy is durable (its own persistence
            // counts toward the quorum only once reported).
            self.msgs.push(m);
        } else {
            self.msgs_unpersisted.push(m);
        }
    }
}
