//! Exactly-once client sessions and the runtime's encoding of log commands and snapshots.
//!
//! Every command the runtime appends is a [`Command`] (postcard, behind a format byte). A
//! session is opened by a committed [`Command::OpenSession`]; its client id is that entry's
//! index, so every replica agrees on it. A session command carries `(client, seq)`: the
//! first time a sequence number commits it is applied and its output cached; a retry of the
//! same number is answered from the cache without applying again. The table is bounded:
//! opening a session beyond [`crate::Config::sessions_max`] evicts the session idle the
//! longest (by the log index of its last command, so every replica evicts the same one), and
//! a command of an evicted or unknown session fails with
//! [`crate::ProposeError::SessionExpired`].

use quorate_log::LogIndex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The first byte of every command and snapshot the runtime writes.
pub(crate) const FORMAT_V1: u8 = 1;

/// Identifies an exactly-once client session: the log index of the entry that opened it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct ClientId(pub u64);

/// A command in the log, as the runtime encodes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Command {
    /// A command outside any session (at-least-once if the caller retries).
    Plain(Vec<u8>),
    /// A command of an exactly-once session.
    Session { client: ClientId, seq: u64, command: Vec<u8> },
    /// Opens a session.
    OpenSession,
}

impl Command {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = vec![FORMAT_V1];
        // Serializing plain data into a Vec cannot fail.
        out.extend(postcard::to_allocvec(self).unwrap_or_default());
        out
    }

    /// `None` for bytes this version cannot read (never panics on log or network bytes).
    pub(crate) fn decode(bytes: &[u8]) -> Option<Command> {
        match bytes.split_first() {
            Some((&FORMAT_V1, rest)) => postcard::from_bytes(rest).ok(),
            _ => None,
        }
    }
}

/// One session's state: the last sequence number applied and its encoded output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Session {
    pub(crate) last_seq: u64,
    /// The postcard-encoded output of `last_seq` (none before the first command).
    pub(crate) last_output: Option<Vec<u8>>,
    /// Index of the last entry of this session (open or command): its age for eviction.
    pub(crate) last_index: LogIndex,
}

/// What a session command should do.
pub(crate) enum SessionCheck {
    /// Apply it (a new sequence number).
    Apply,
    /// A retry of the last applied command: answer with this cached output.
    Cached(Vec<u8>),
    /// Older than the last applied one: its output is gone.
    Stale,
    /// The session is unknown (evicted, or never opened).
    Expired,
}

/// The session table; part of the replicated state (it travels in snapshots).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Sessions {
    pub(crate) clients: BTreeMap<ClientId, Session>,
}

impl Sessions {
    pub(crate) fn open(&mut self, index: LogIndex, max: usize) -> ClientId {
        while self.clients.len() >= max.max(1) {
            let oldest = self.clients.iter().min_by_key(|(id, s)| (s.last_index, **id)).map(|(id, _)| *id);
            match oldest {
                Some(id) => self.clients.remove(&id),
                None => break,
            };
        }
        let id = ClientId(index.0);
        self.clients.insert(id, Session { last_seq: 0, last_output: None, last_index: index });
        id
    }

    pub(crate) fn check(&self, client: ClientId, seq: u64) -> SessionCheck {
        let Some(s) = self.clients.get(&client) else { return SessionCheck::Expired };
        if seq > s.last_seq {
            SessionCheck::Apply
        } else if seq == s.last_seq {
            s.last_output.clone().map_or(SessionCheck::Stale, SessionCheck::Cached)
        } else {
            SessionCheck::Stale
        }
    }

    pub(crate) fn record(&mut self, client: ClientId, seq: u64, index: LogIndex, output: Vec<u8>) {
        if let Some(s) = self.clients.get_mut(&client) {
            s.last_seq = seq;
            s.last_output = Some(output);
            s.last_index = index;
        }
    }
}

/// The runtime's snapshot: the session table and the state machine's own bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapshotImage {
    pub(crate) sessions: Sessions,
    pub(crate) state: Vec<u8>,
}

impl SnapshotImage {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = vec![FORMAT_V1];
        out.extend(postcard::to_allocvec(self).unwrap_or_default());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<SnapshotImage> {
        match bytes.split_first() {
            Some((&FORMAT_V1, rest)) => postcard::from_bytes(rest).ok(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_garbage_is_refused() {
        let c = Command::Session { client: ClientId(7), seq: 3, command: b"x".to_vec() };
        assert_eq!(Command::decode(&c.encode()), Some(c));
        assert_eq!(Command::decode(&[]), None);
        assert_eq!(Command::decode(&[9, 1, 2]), None);
        assert_eq!(Command::decode(&[FORMAT_V1, 200, 200, 200]), None);
    }

    #[test]
    fn retries_are_answered_from_the_cache_and_eviction_is_by_age() {
        let mut s = Sessions::default();
        let a = s.open(LogIndex(1), 2);
        let b = s.open(LogIndex(2), 2);
        assert!(matches!(s.check(a, 1), SessionCheck::Apply));
        s.record(a, 1, LogIndex(3), vec![42]);
        assert!(matches!(s.check(a, 1), SessionCheck::Cached(o) if o == vec![42]));
        assert!(matches!(s.check(a, 0), SessionCheck::Stale));
        // b is idle the longest: a third session evicts it, not a.
        let c = s.open(LogIndex(4), 2);
        assert!(matches!(s.check(b, 1), SessionCheck::Expired));
        assert!(matches!(s.check(a, 2), SessionCheck::Apply));
        assert!(matches!(s.check(c, 1), SessionCheck::Apply));
    }
}
