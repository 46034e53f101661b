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

/// The first byte of every command the runtime writes (and of the first snapshot format, no
/// longer written or read: the runtime is pre-release).
pub(crate) const FORMAT_V1: u8 = 1;
/// The first byte of every snapshot image the runtime writes: the streaming layout
/// (see [`write_image_prefix`]).
pub(crate) const IMAGE_V2: u8 = 2;

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
    /// Opens the session of the entry at `index`; returns its id and the sessions evicted.
    pub(crate) fn open(&mut self, index: LogIndex, max: usize) -> (ClientId, Vec<ClientId>) {
        let mut evicted = Vec::new();
        while self.clients.len() >= max.max(1) {
            let oldest = self.clients.iter().min_by_key(|(id, s)| (s.last_index, **id)).map(|(id, _)| *id);
            match oldest {
                Some(id) => {
                    self.clients.remove(&id);
                    evicted.push(id);
                }
                None => break,
            };
        }
        let id = ClientId(index.0);
        self.clients.insert(id, Session { last_seq: 0, last_output: None, last_index: index });
        (id, evicted)
    }

    /// The record a durable state machine keeps for `client` (`None`: delete it).
    pub(crate) fn record_of(&self, client: ClientId) -> Option<Vec<u8>> {
        self.clients.get(&client).map(|s| postcard::to_allocvec(s).unwrap_or_default())
    }

    /// Every session as records (after a restore, they replace a durable state machine's).
    pub(crate) fn records(&self) -> Vec<(u64, Vec<u8>)> {
        self.clients.iter().map(|(id, s)| (id.0, postcard::to_allocvec(s).unwrap_or_default())).collect()
    }

    /// The table a durable state machine kept, from its records.
    pub(crate) fn from_records(records: Vec<(u64, Vec<u8>)>) -> Result<Sessions, String> {
        let mut clients = BTreeMap::new();
        for (id, bytes) in records {
            let s: Session =
                postcard::from_bytes(&bytes).map_err(|e| format!("the runtime record of session {id}: {e}"))?;
            clients.insert(ClientId(id), s);
        }
        Ok(Sessions { clients })
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

/// Writes the runtime's part of a snapshot image, which the state machine's own bytes follow:
///
/// ```text
/// IMAGE_V2 (1 byte) | sessions_len (u64 LE) | sessions (postcard, sessions_len bytes) | state machine bytes …
/// ```
pub(crate) fn write_image_prefix(out: &mut dyn std::io::Write, sessions: &Sessions) -> std::io::Result<()> {
    let table = postcard::to_allocvec(sessions).map_err(std::io::Error::other)?;
    out.write_all(&[IMAGE_V2])?;
    out.write_all(&(table.len() as u64).to_le_bytes())?;
    out.write_all(&table)
}

/// Reads the runtime's part of an image of `total_len` bytes (see [`write_image_prefix`]),
/// leaving `input` at the state machine's bytes. Never panics and never allocates more than
/// the image holds.
pub(crate) fn read_image_prefix(input: &mut dyn std::io::Read, total_len: u64) -> Result<Sessions, String> {
    let mut head = [0u8; 9];
    input.read_exact(&mut head).map_err(|e| format!("snapshot image header: {e}"))?;
    if head[0] != IMAGE_V2 {
        return Err(format!("snapshot image of format {}, this version reads {IMAGE_V2}", head[0]));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&head[1..]);
    let len = u64::from_le_bytes(len);
    if len > total_len.saturating_sub(9) {
        return Err(format!("snapshot image claims {len} bytes of sessions in {total_len} bytes"));
    }
    let mut table = vec![0u8; usize::try_from(len).map_err(|_| "session table too large".to_owned())?];
    input.read_exact(&mut table).map_err(|e| format!("snapshot image sessions: {e}"))?;
    postcard::from_bytes(&table).map_err(|e| format!("snapshot image sessions: {e}"))
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
        let (a, _) = s.open(LogIndex(1), 2);
        let (b, _) = s.open(LogIndex(2), 2);
        assert!(matches!(s.check(a, 1), SessionCheck::Apply));
        s.record(a, 1, LogIndex(3), vec![42]);
        assert!(matches!(s.check(a, 1), SessionCheck::Cached(o) if o == vec![42]));
        assert!(matches!(s.check(a, 0), SessionCheck::Stale));
        // b is idle the longest: a third session evicts it, not a.
        let (c, evicted) = s.open(LogIndex(4), 2);
        assert_eq!(evicted, vec![b]);
        assert!(matches!(s.check(b, 1), SessionCheck::Expired));
        assert!(matches!(s.check(a, 2), SessionCheck::Apply));
        assert!(matches!(s.check(c, 1), SessionCheck::Apply));
        // The records a durable state machine keeps give the same table back.
        assert_eq!(Sessions::from_records(s.records()), Ok(s.clone()));
        assert_eq!(s.record_of(b), None);
    }

    #[test]
    fn an_image_prefix_round_trips_and_garbage_is_refused_without_a_panic() {
        let mut s = Sessions::default();
        let (a, _) = s.open(LogIndex(3), 8);
        s.record(a, 1, LogIndex(4), vec![1, 2]);
        let mut image = Vec::new();
        write_image_prefix(&mut image, &s).expect("writes");
        image.extend_from_slice(b"state");
        let total = image.len() as u64;
        let mut input = &image[..];
        assert_eq!(read_image_prefix(&mut input, total), Ok(s));
        assert_eq!(input, b"state", "left at the state machine's bytes");
        // Another format, a length beyond the image, a cut image: errors, no allocation.
        let mut other = image.clone();
        other[0] = FORMAT_V1;
        assert!(read_image_prefix(&mut &other[..], total).is_err());
        let mut huge = image.clone();
        huge[1..9].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(read_image_prefix(&mut &huge[..], total).is_err());
        assert!(read_image_prefix(&mut &image[..5], 5).is_err());
    }
}
