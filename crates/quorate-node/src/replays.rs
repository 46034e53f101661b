//! Replays answered before proposing: which writes in a session may be answered from the
//! applied session table without going through the log.
//!
//! A write in a principal-bound session at a sequence number the session has already applied
//! (a client's retry of a write whose answer it lost, or a replay) has a final answer on every
//! member that applied it: the original result of the session's last sequence number, an
//! error for an older one ([`crate::sm::replay_answer`]). Proposing it would cost a log entry,
//! its replication and a synced write on every replica, only for apply to answer from the
//! session table. The node answers it from the table instead (`Driver::answer_replay`).
//!
//! Reading the table is a store read, which the driver does not make: [`ReplayHints`] tells it,
//! from memory, which writes may be replays — a table the apply thread fills with each
//! session's last applied sequence number, per principal — and only those are read, off the
//! driver, on a blocking thread; the others are proposed as before. A hint is only a hint:
//! the answer is decided by the stored record alone, so a hint that is stale (a session that
//! expired, a table slot another session took, a store replaced by a snapshot) costs a read or
//! a log write, never a wrong answer.

use std::sync::atomic::{AtomicU64, Ordering};

/// Slots of the hint table (a power of two): sessions whose ids share a slot take it from each
/// other, and the one that lost it is proposed as before.
pub(crate) const HINT_SLOTS: usize = 1 << 14;

/// From memory: the last sequence number each (recently written) principal-bound session
/// applied on this node. Session ids are drawn at random, so the low bits of an id index a
/// slot; a slot holds a fingerprint of the session and its principal, and the sequence
/// number. The two words of a slot are written apart: a reader may see a fingerprint with
/// another session's sequence number, which is harmless (see the module's documentation).
pub(crate) struct ReplayHints {
    slots: Box<[(AtomicU64, AtomicU64)]>,
}

impl Default for ReplayHints {
    fn default() -> ReplayHints {
        ReplayHints { slots: (0..HINT_SLOTS).map(|_| (AtomicU64::new(0), AtomicU64::new(0))).collect() }
    }
}

/// FNV-1a of the session id and the principal's name, never 0 (an empty slot).
fn fingerprint(session: u64, principal: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in session.to_le_bytes().iter().chain(principal.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}

impl ReplayHints {
    fn slot(&self, session: u64) -> &(AtomicU64, AtomicU64) {
        &self.slots[(session as usize) & (HINT_SLOTS - 1)]
    }

    /// The apply thread applied a write in `session` of `principal`: its last sequence number
    /// is now `last_seq` (stored: called after the batch is written).
    pub(crate) fn applied(&self, session: u64, principal: &str, last_seq: u64) {
        let (fp, seq) = self.slot(session);
        fp.store(fingerprint(session, principal), Ordering::Release);
        seq.store(last_seq, Ordering::Release);
    }

    /// Whether a write of `principal` in `session` at `seq` may be a replay of an applied
    /// write: the session's record is then worth reading. False for another principal's
    /// session (it is proposed exactly as a write in an absent session is).
    pub(crate) fn may_be_replay(&self, session: u64, principal: &str, seq: u64) -> bool {
        let (fp, last) = self.slot(session);
        fp.load(Ordering::Acquire) == fingerprint(session, principal) && seq <= last.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_owners_writes_at_applied_sequence_numbers_may_be_replays() {
        let h = ReplayHints::default();
        assert!(!h.may_be_replay(7, "alice", 0), "nothing applied yet");
        h.applied(7, "alice", 3);
        assert!(h.may_be_replay(7, "alice", 3) && h.may_be_replay(7, "alice", 1));
        assert!(!h.may_be_replay(7, "alice", 4), "a sequence number not applied yet is proposed");
        assert!(!h.may_be_replay(7, "bob", 3), "another principal's write in alice's session is proposed");
        assert!(!h.may_be_replay(8, "alice", 3), "another session");
        // A session whose id shares the slot takes it: the first one's replays are proposed.
        h.applied(7 + HINT_SLOTS as u64, "carol", 1);
        assert!(!h.may_be_replay(7, "alice", 3));
        assert!(h.may_be_replay(7 + HINT_SLOTS as u64, "carol", 1));
    }
}
