//! The durable mark: a synced record of the last durable Raft position (term, vote, commit
//! index, last log entry), kept in a small file beside the database — outside the RocksDB
//! write-ahead log it protects — and compared with what the database holds at every open.
//!
//! **Why.** RocksDB replays its write-ahead log at open. A damaged record in the middle of a
//! log file is refused by the recovery mode this store uses (`TolerateCorruptedTailRecords`:
//! open fails with a corruption error), but a log that lost its *tail* is indistinguishable
//! from a crash in the middle of a write, and RocksDB opens it silently without the lost
//! records. If those records were synced — acknowledged to a peer — the node would come back
//! with an older term or vote (and could vote twice in one term) or a shorter log (and could
//! help elect a leader that lacks an entry committed on a bare majority): the failure of
//! "Protocol-Aware Recovery for Consensus-Based Storage" (Alagappan et al., FAST '18). The mark
//! turns that silent loss into a refusal to open with evidence
//! ([`StoreError::LostSyncedState`]).
//!
//! **When it is written** (always after the RocksDB write it describes was synced, and before
//! [`RocksStore::write_many`](crate::RocksStore::write_many) returns):
//! * whenever a synced write changes the term, the vote or the log, so that a vote, a term or
//!   an entry is never acknowledged before the mark holds it (a mark that lagged the log by
//!   up to the interval below let a lost tail of acknowledged entries go unnoticed: issue 18,
//!   review finding R2; the cost is one small `pwrite` and `fdatasync` of the mark file per
//!   appending write, about 0.13 ms on the 2-core CI machine);
//! * otherwise (a write that only moves the commit index) at most every
//!   `StoreOptions::durable_mark_interval` of synced writes (zero: after every synced write);
//! * *before* a write that removes log entries the mark covers (a truncation of a conflicting
//!   suffix, a snapshot install that discards the log), the mark is lowered, so that it never
//!   claims more than the disk holds after a crash at any point.
//!
//! **What is compared at open.** The term must not be lower, the vote in the mark's term must
//! be the same, the commit index must not be lower, the log must reach the mark's last index
//! with the same term there (unless that index is now inside the snapshot). A database that
//! did not exist while a mark does is a loss of everything.
//!
//! **Which mark counts.** The mark records the number of the RocksDB MANIFEST of the session
//! that wrote it (the `CURRENT` file names it; every open of the database starts a new one).
//! If the database was opened since by something that does not keep the mark (a release older
//! than 0.2.0 after a rollback, which may have truncated the log legitimately), the mark is
//! stale: it is not compared, and a new one is taken from the data. Before the store opens the
//! database (which starts a new MANIFEST), a mark that counts is rewritten with the number
//! [`OPENING`] (same values): an open that refuses the data, or a crash before the new mark is
//! written, leaves a mark that the next open still compares — without it the second start
//! after a refusal took the mark for stale and opened on the lost state. (The cost: a release
//! older than the mark that opens the database after such a crash leaves a mark that is
//! compared although it may be stale — a false loss, never a missed one.)
//!
//! **Accepting a loss** ([`StoreOptions::accept_lost_state`](crate::StoreOptions::accept_lost_state)).
//! A node that rejoins protocol-aware (issue 18) opens a store that lost synced state instead
//! of refusing it: before anything else changes — before the mark is lowered to the data —
//! the evidence ([`LostStateRecord`]: what the mark recorded, what was lost) is written to
//! [`LOST_STATE_FILE`] beside the mark (a temporary file, fsynced, renamed, directory
//! fsynced). It stays there, through any number of restarts, until the node has caught up and
//! calls [`RocksStore::recovered`](crate::RocksStore::recovered); a crash at any point
//! restarts the recovery (a second loss meanwhile is merged into the record). Without the
//! option a store holding that file refuses to open, as it refuses a fresh loss.
//!
//! **Layout.** Two fixed slots of [`SLOT_BYTES`] in one preallocated file, written alternately
//! with `pwrite` and `fdatasync` (the file never grows, so a full disk cannot refuse it). Each
//! slot: `"QMRK" | format u32 | sequence u64 | length u32 | body (postcard) | CRC-32`. The
//! valid slot with the higher sequence wins; a torn write damages at most the slot being
//! written, and the other still holds an older, weaker mark.

use crate::error::StoreError;
use quorate_log::{EntryId, HardState, LogIndex, NodeId, Term};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The mark's file name, in the store's directory (beside `db/`).
pub const MARK_FILE: &str = "durable-mark";
/// Bytes of one slot.
pub(crate) const SLOT_BYTES: u64 = 512;
/// The MANIFEST number of a mark rewritten just before an open of the database: it counts
/// whatever the MANIFEST is (see "Which mark counts").
pub(crate) const OPENING: u64 = u64::MAX;
const MAGIC: &[u8; 4] = b"QMRK";
const MARK_FORMAT: u32 = 1;
/// Header bytes of a slot before the body: magic, format, sequence, length.
const HEAD_BYTES: usize = 4 + 4 + 8 + 4;
/// The longest body a slot can hold.
const BODY_BYTES_MAX: usize = SLOT_BYTES as usize - HEAD_BYTES - 4;

/// The durable Raft position recorded by the mark.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Mark {
    /// The term.
    pub term: Term,
    /// The vote in that term.
    pub vote: Option<NodeId>,
    /// The commit index.
    pub commit: LogIndex,
    /// The last log entry.
    pub last: EntryId,
    /// The number of the RocksDB MANIFEST of the session that wrote the mark.
    pub manifest: u64,
    /// Wall-clock time of the write, milliseconds since the Unix epoch (evidence only).
    pub written_unix_ms: u64,
}

impl Mark {
    /// The mark of a hard state and a last entry.
    pub(crate) fn of(hard: HardState, last: EntryId, manifest: u64) -> Mark {
        Mark { term: hard.term, vote: hard.vote, commit: hard.commit, last, manifest, written_unix_ms: unix_ms() }
    }

    pub(crate) fn describe(&self) -> String {
        format!(
            "term {}, {}, commit index {}, log up to index {} (term {})",
            self.term,
            match self.vote {
                Some(v) => format!("vote for node {v}"),
                None => "no vote".into(),
            },
            self.commit,
            self.last.index,
            self.last.term
        )
    }
}

pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// What the database holds, for comparison with a mark.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Found {
    pub(crate) hard: HardState,
    pub(crate) last: EntryId,
    pub(crate) snapshot: EntryId,
    /// The term of the entry at the mark's last index, when the log holds that entry.
    pub(crate) term_at_mark: Option<Term>,
    /// The database was created by this open.
    pub(crate) created: bool,
}

/// Evidence of lost synced state: what the mark recorded, what the database holds, what is
/// missing, and what to do.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub struct LostState {
    /// The mark file.
    pub mark_file: PathBuf,
    /// What the mark recorded.
    pub mark: Mark,
    /// What the database holds, in words.
    pub found: String,
    /// Each loss, in words (`term 7 -> 5`, `entries 1202..=1350`, ...).
    pub lost: Vec<String>,
}

impl std::fmt::Display for LostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "lost synced state: the durable mark {} (written at {} ms since the Unix epoch) records {}, but the \
             database holds {}; lost: {}. Records that were synced and acknowledged to other nodes are gone from \
             the write-ahead log (a damaged or lying disk), so this node could vote twice in a term or help elect a \
             leader without an entry a majority committed; it refuses to open. To recover: remove this node from the \
             cluster (`quorate member remove <id>` on a healthy member), move its data directory aside (keep it as \
             evidence), and add it back as a new member (`join = true`, `quorate member add`, then `member promote` \
             once it has caught up). Only if you know that no other member relied on the lost state, delete the mark \
             file to accept the data as it is",
            self.mark_file.display(),
            self.mark.written_unix_ms,
            self.mark.describe(),
            self.found,
            self.lost.join("; ")
        )
    }
}

/// The lost-state evidence file's name, in the store's directory (beside the mark).
pub const LOST_STATE_FILE: &str = "lost-state";
const LOST_MAGIC: &[u8; 4] = b"QLST";
const LOST_FORMAT: u32 = 1;
/// The longest evidence file read back.
const LOST_BYTES_MAX: usize = 64 << 10;
/// The most loss descriptions a record keeps (a store that keeps losing state).
const LOST_LINES_MAX: usize = 32;

/// Evidence of a loss of synced state that a store was opened with (see
/// [`StoreOptions::accept_lost_state`](crate::StoreOptions::accept_lost_state)): what the
/// durable mark had recorded before the loss — the node's recovery input (its consensus core's
/// `Config::recovering`) — and what was lost.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LostStateRecord {
    /// The recorded term.
    pub term: Term,
    /// The recorded vote in that term.
    pub vote: Option<NodeId>,
    /// The recorded last log entry.
    pub last: EntryId,
    /// The recorded commit index.
    pub commit: LogIndex,
    /// When the loss was first detected, milliseconds since the Unix epoch.
    pub detected_unix_ms: u64,
    /// Each loss, in words (as in [`LostState::lost`]).
    pub lost: Vec<String>,
}

impl LostStateRecord {
    /// The record of a loss just detected.
    pub(crate) fn of(lost: &LostState) -> LostStateRecord {
        let m = &lost.mark;
        LostStateRecord {
            term: m.term,
            vote: m.vote,
            last: m.last,
            commit: m.commit,
            detected_unix_ms: unix_ms(),
            lost: lost.lost.iter().take(LOST_LINES_MAX).cloned().collect(),
        }
    }

    /// This record and a later loss `next` in one: the higher term (with its vote; in one
    /// term, a vote either holds), the more up-to-date last entry — by term, then index, as
    /// Raft compares logs (`EntryId`'s order), not the longer log: an entry of a later term
    /// at a lower index replaced the longer log's tail, which therefore never committed, and
    /// may itself have committed with this node's acknowledgement —, the higher commit index,
    /// both descriptions.
    pub(crate) fn merge(self, next: LostStateRecord) -> LostStateRecord {
        let (term, vote) = match self.term.cmp(&next.term) {
            std::cmp::Ordering::Greater => (self.term, self.vote),
            std::cmp::Ordering::Equal => (next.term, next.vote.or(self.vote)),
            std::cmp::Ordering::Less => (next.term, next.vote),
        };
        let last = self.last.max(next.last);
        let mut lost = self.lost;
        lost.extend(next.lost);
        lost.truncate(LOST_LINES_MAX);
        LostStateRecord {
            term,
            vote,
            last,
            commit: self.commit.max(next.commit),
            detected_unix_ms: self.detected_unix_ms,
            lost,
        }
    }

    /// The record in words.
    #[must_use]
    pub fn describe(&self) -> String {
        format!(
            "term {}, {}, commit index {}, log up to index {} (term {}); lost: {}",
            self.term,
            match self.vote {
                Some(v) => format!("vote for node {v}"),
                None => "no vote".into(),
            },
            self.commit,
            self.last.index,
            self.last.term,
            self.lost.join("; ")
        )
    }
}

/// Writes `record` to `path` durably: a temporary file, fsynced, renamed over `path`, the
/// directory fsynced.
pub(crate) fn write_lost_state(path: &Path, record: &LostStateRecord) -> Result<(), StoreError> {
    let body = postcard::to_allocvec(record)
        .map_err(|e| StoreError::Io(format!("cannot encode the lost-state record: {e}")))?;
    if body.len() + 16 > LOST_BYTES_MAX {
        return Err(StoreError::Io(format!("a lost-state record of {} bytes is too long", body.len())));
    }
    let mut bytes = Vec::with_capacity(body.len() + 16);
    bytes.extend_from_slice(LOST_MAGIC);
    bytes.extend_from_slice(&LOST_FORMAT.to_le_bytes());
    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&body);
    let crc = crc32fast::hash(&bytes[4..]);
    bytes.extend_from_slice(&crc.to_le_bytes());
    let dir = path.parent().ok_or_else(|| StoreError::Io(format!("{} has no directory", path.display())))?;
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Reads the lost-state record at `path`: `Ok(None)` if there is none; a damaged file is an
/// error (the recovery's input cannot be known).
pub(crate) fn read_lost_state(path: &Path) -> Result<Option<LostStateRecord>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(lost_corrupt(path, format!("cannot be read: {e}"))),
    };
    decode_lost_state(&bytes).map(Some).map_err(|d| lost_corrupt(path, d))
}

fn decode_lost_state(bytes: &[u8]) -> Result<LostStateRecord, String> {
    if bytes.len() < 16 || bytes.len() > LOST_BYTES_MAX || &bytes[..4] != LOST_MAGIC {
        return Err(format!("{} bytes without the lost-state magic", bytes.len()));
    }
    let word = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let (format, len) = (word(4), word(8) as usize);
    if format != LOST_FORMAT {
        return Err(format!("format {format}; this build reads format {LOST_FORMAT}"));
    }
    if len + 16 != bytes.len() {
        return Err(format!("a body of {len} bytes in a file of {}", bytes.len()));
    }
    if crc32fast::hash(&bytes[4..12 + len]) != word(12 + len) {
        return Err("checksum mismatch".into());
    }
    match postcard::take_from_bytes::<LostStateRecord>(&bytes[12..12 + len]) {
        Ok((r, [])) => Ok(r),
        Ok(_) => Err("trailing bytes".into()),
        Err(e) => Err(format!("cannot decode: {e}")),
    }
}

fn lost_corrupt(path: &Path, detail: String) -> StoreError {
    StoreError::Corrupt {
        key: format!("lost-state file {}", path.display()),
        detail: format!(
            "{detail}; this node lost synced state and is recovering from it, but what it had recorded cannot be \
             read, so the store does not open (remove the node and add it back: docs/operations.md)"
        ),
    }
}

/// Removes the lost-state record at `path` durably (the directory is fsynced).
pub(crate) fn remove_lost_state(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    let dir = path.parent().ok_or_else(|| StoreError::Io(format!("{} has no directory", path.display())))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Compares `mark` with what the database holds; `Some` lists the losses.
pub(crate) fn compare(mark: &Mark, found: &Found, mark_file: &Path) -> Option<LostState> {
    let mut lost = Vec::new();
    let empty = mark.term == Term(0) && mark.vote.is_none() && mark.last.index == LogIndex::ZERO;
    if found.created && !empty {
        lost.push("the whole database (it did not exist when opened, but the mark says it held data)".to_string());
    }
    if found.hard.term < mark.term {
        lost.push(format!("term {} -> {}", mark.term, found.hard.term));
    } else if found.hard.term == mark.term && mark.vote.is_some() && found.hard.vote != mark.vote {
        lost.push(format!(
            "the vote of term {} (for node {}, now {})",
            mark.term,
            mark.vote.map_or(0, NodeId::get),
            found.hard.vote.map_or_else(|| "none".to_string(), |v| format!("for node {v}"))
        ));
    }
    if found.hard.commit < mark.commit {
        lost.push(format!("commit index {} -> {}", mark.commit, found.hard.commit));
    }
    if mark.last.index > found.snapshot.index {
        if found.last.index < mark.last.index {
            lost.push(format!("log entries {}..={}", found.last.index.next(), mark.last.index));
        } else if found.term_at_mark != Some(mark.last.term) {
            lost.push(format!(
                "the entry at index {} (term {} recorded, term {} found)",
                mark.last.index,
                mark.last.term,
                found.term_at_mark.map_or_else(|| "unreadable".to_string(), |t| t.to_string())
            ));
        }
    }
    if lost.is_empty() {
        return None;
    }
    let found_text = format!(
        "term {}, {}, commit index {}, log up to index {} (term {}), snapshot at {}",
        found.hard.term,
        match found.hard.vote {
            Some(v) => format!("vote for node {v}"),
            None => "no vote".into(),
        },
        found.hard.commit,
        found.last.index,
        found.last.term,
        found.snapshot.index
    );
    Some(LostState { mark_file: mark_file.to_path_buf(), mark: *mark, found: found_text, lost })
}

fn corrupt(path: &Path, detail: String) -> StoreError {
    StoreError::Corrupt {
        key: format!("mark file {}", path.display()),
        detail: format!(
            "{detail}; the durable state cannot be verified, so the store does not open (delete the file only if \
             you accept the data as it is)"
        ),
    }
}

fn encode_slot(seq: u64, mark: &Mark) -> Result<[u8; SLOT_BYTES as usize], StoreError> {
    let body = postcard::to_allocvec(mark).map_err(|e| StoreError::Io(format!("cannot encode the mark: {e}")))?;
    if body.len() > BODY_BYTES_MAX {
        return Err(StoreError::Io(format!("a mark of {} bytes does not fit its slot", body.len())));
    }
    let mut slot = [0u8; SLOT_BYTES as usize];
    slot[..4].copy_from_slice(MAGIC);
    slot[4..8].copy_from_slice(&MARK_FORMAT.to_le_bytes());
    slot[8..16].copy_from_slice(&seq.to_le_bytes());
    slot[16..20].copy_from_slice(&(body.len() as u32).to_le_bytes());
    slot[HEAD_BYTES..HEAD_BYTES + body.len()].copy_from_slice(&body);
    let crc = crc32fast::hash(&slot[4..HEAD_BYTES + body.len()]);
    slot[HEAD_BYTES + body.len()..HEAD_BYTES + body.len() + 4].copy_from_slice(&crc.to_le_bytes());
    Ok(slot)
}

/// The sequence and mark of a slot, or `None` if it is empty, torn or damaged.
fn decode_slot(slot: &[u8]) -> Option<(u64, Mark)> {
    if slot.len() != SLOT_BYTES as usize || &slot[..4] != MAGIC {
        return None;
    }
    let format = u32::from_le_bytes(slot[4..8].try_into().ok()?);
    let seq = u64::from_le_bytes(slot[8..16].try_into().ok()?);
    let len = u32::from_le_bytes(slot[16..20].try_into().ok()?) as usize;
    if format != MARK_FORMAT || len > BODY_BYTES_MAX {
        return None;
    }
    let crc = u32::from_le_bytes(slot[HEAD_BYTES + len..HEAD_BYTES + len + 4].try_into().ok()?);
    if crc32fast::hash(&slot[4..HEAD_BYTES + len]) != crc {
        return None;
    }
    let (mark, rest) = postcard::take_from_bytes::<Mark>(&slot[HEAD_BYTES..HEAD_BYTES + len]).ok()?;
    rest.is_empty().then_some((seq, mark))
}

/// Reads the mark file at `path`: `Ok(None)` if there is none. Both slots damaged is an error.
pub(crate) fn read(path: &Path) -> Result<Option<(u64, Mark)>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(corrupt(path, format!("cannot be read: {e}"))),
    };
    if bytes.len() as u64 != 2 * SLOT_BYTES {
        return Err(corrupt(path, format!("{} bytes instead of {}", bytes.len(), 2 * SLOT_BYTES)));
    }
    let (a, b) = bytes.split_at(SLOT_BYTES as usize);
    match (decode_slot(a), decode_slot(b)) {
        (Some(x), Some(y)) => Ok(Some(if x.0 >= y.0 { x } else { y })),
        (Some(x), None) | (None, Some(x)) => Ok(Some(x)),
        (None, None) => Err(corrupt(path, "neither of its two slots is intact".into())),
    }
}

/// The writer of the mark file: keeps it open, writes the slots alternately.
#[derive(Debug)]
pub(crate) struct MarkWriter {
    file: File,
    path: PathBuf,
    seq: u64,
    current: Mark,
    written_at: std::time::Instant,
}

impl MarkWriter {
    /// Opens the mark file at `path` (creating it, durably, if missing) and records `mark`.
    pub(crate) fn create_or_open(path: &Path, seq: u64, mark: Mark) -> Result<MarkWriter, StoreError> {
        if !path.exists() {
            let dir = path.parent().ok_or_else(|| StoreError::Io(format!("{} has no directory", path.display())))?;
            let tmp = path.with_extension("tmp");
            let mut f = File::create(&tmp)?;
            f.write_all(&[0u8; 2 * SLOT_BYTES as usize])?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, path)?;
            File::open(dir)?.sync_all()?;
        }
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let len = file.metadata()?.len();
        if len != 2 * SLOT_BYTES {
            return Err(corrupt(path, format!("{len} bytes instead of {}", 2 * SLOT_BYTES)));
        }
        let mut w =
            MarkWriter { file, path: path.to_path_buf(), seq, current: mark, written_at: std::time::Instant::now() };
        w.write(mark)?;
        Ok(w)
    }

    /// The mark last written.
    pub(crate) fn current(&self) -> Mark {
        self.current
    }

    /// Time since the last write.
    pub(crate) fn age(&self) -> std::time::Duration {
        self.written_at.elapsed()
    }

    /// The mark file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `mark` into the older slot and syncs it.
    pub(crate) fn write(&mut self, mark: Mark) -> Result<(), StoreError> {
        let seq = self.seq + 1;
        let slot = encode_slot(seq, &mark)?;
        self.file.write_all_at(&slot, (seq % 2) * SLOT_BYTES)?;
        self.file.sync_data()?;
        self.seq = seq;
        self.current = mark;
        self.written_at = std::time::Instant::now();
        Ok(())
    }
}

/// The number of the MANIFEST named by the database's `CURRENT` file, if it can be read.
pub(crate) fn current_manifest(db_dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(db_dir.join("CURRENT")).ok()?;
    text.trim().strip_prefix("MANIFEST-")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TestDir;

    fn mark(term: u64, last: u64) -> Mark {
        Mark {
            term: Term(term),
            vote: NodeId::new(2),
            commit: LogIndex(last / 2),
            last: EntryId::new(Term(term), LogIndex(last)),
            manifest: 9,
            written_unix_ms: 1,
        }
    }

    #[test]
    fn slots_alternate_and_the_newest_intact_one_wins() {
        let d = TestDir::new("mark");
        let path = d.path().join(MARK_FILE);
        assert_eq!(read(&path).unwrap(), None);
        let mut w = MarkWriter::create_or_open(&path, 0, mark(1, 10)).unwrap();
        assert_eq!(read(&path).unwrap().unwrap().1, mark(1, 10));
        w.write(mark(2, 20)).unwrap();
        assert_eq!(read(&path).unwrap(), Some((2, mark(2, 20))));
        // A torn write of the next slot leaves the previous one.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[SLOT_BYTES as usize + 30] ^= 0xff; // slot 1 holds sequence 1 (older)
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read(&path).unwrap(), Some((2, mark(2, 20))));
        bytes[30] ^= 0xff; // slot 0 (sequence 2) too: nothing intact
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(read(&path), Err(StoreError::Corrupt { .. })));
        std::fs::write(&path, &bytes[..100]).unwrap();
        assert!(matches!(read(&path), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn the_lost_state_record_round_trips_merges_and_refuses_damage() {
        let d = TestDir::new("loststate");
        let path = d.path().join(LOST_STATE_FILE);
        assert_eq!(read_lost_state(&path).unwrap(), None);
        let a = LostStateRecord {
            term: Term(5),
            vote: NodeId::new(2),
            last: EntryId::new(Term(5), LogIndex(100)),
            commit: LogIndex(90),
            detected_unix_ms: 7,
            lost: vec!["term 5 -> 4".into()],
        };
        write_lost_state(&path, &a).unwrap();
        assert_eq!(read_lost_state(&path).unwrap(), Some(a.clone()));
        let b = LostStateRecord {
            term: Term(6),
            vote: None,
            last: EntryId::new(Term(6), LogIndex(80)),
            commit: LogIndex(95),
            detected_unix_ms: 9,
            lost: vec!["log entries 70..=80".into()],
        };
        let m = a.clone().merge(b.clone());
        // The last entry is the more up to date one (by term, then index), not the longer
        // log: a term-6 leader overwrote index 80 onwards, so a's entries past 79 never
        // committed, while (6, 80) may have with this node's acknowledgement.
        assert_eq!(
            (m.term, m.vote, m.last, m.commit, m.detected_unix_ms),
            (Term(6), None, EntryId::new(Term(6), LogIndex(80)), LogIndex(95), 7)
        );
        assert_eq!(m.lost.len(), 2);
        // The other way round: the same.
        let m = b.clone().merge(a.clone());
        assert_eq!((m.term, m.last), (Term(6), EntryId::new(Term(6), LogIndex(80))));
        // In one term, the longer log; a vote either record holds is kept.
        let c = LostStateRecord { last: EntryId::new(Term(6), LogIndex(85)), vote: NodeId::new(3), ..b.clone() };
        let m = c.merge(b);
        assert_eq!((m.last, m.vote), (EntryId::new(Term(6), LogIndex(85)), NodeId::new(3)));
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 6] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(read_lost_state(&path), Err(StoreError::Corrupt { .. })));
        std::fs::write(&path, &bytes[..10]).unwrap();
        assert!(matches!(read_lost_state(&path), Err(StoreError::Corrupt { .. })));
        remove_lost_state(&path).unwrap();
        remove_lost_state(&path).unwrap();
        assert_eq!(read_lost_state(&path).unwrap(), None);
    }

    #[test]
    fn every_kind_of_loss_is_named() {
        let m = mark(5, 100);
        let ok = Found {
            hard: HardState { term: Term(5), vote: NodeId::new(2), commit: LogIndex(50) },
            last: EntryId::new(Term(5), LogIndex(100)),
            snapshot: EntryId::new(Term(1), LogIndex(10)),
            term_at_mark: Some(Term(5)),
            created: false,
        };
        let p = Path::new("m");
        assert_eq!(compare(&m, &ok, p), None);
        let more = Found {
            hard: HardState { term: Term(6), vote: None, commit: LogIndex(60) },
            last: EntryId::new(Term(6), LogIndex(120)),
            ..ok
        };
        assert_eq!(compare(&m, &more, p), None);
        let cases = [
            (Found { hard: HardState { term: Term(4), ..ok.hard }, ..ok }, "term 5 -> 4"),
            (Found { hard: HardState { vote: NodeId::new(3), ..ok.hard }, ..ok }, "the vote of term 5"),
            (Found { hard: HardState { commit: LogIndex(40), ..ok.hard }, ..ok }, "commit index 50 -> 40"),
            (Found { last: EntryId::new(Term(5), LogIndex(90)), ..ok }, "log entries 91..=100"),
            (Found { term_at_mark: Some(Term(4)), ..ok }, "the entry at index 100"),
            (Found { created: true, ..ok }, "the whole database"),
        ];
        for (found, want) in cases {
            let lost = compare(&m, &found, p).expect(want);
            assert!(lost.lost.iter().any(|l| l.contains(want)), "{want}: {lost}");
            assert!(lost.to_string().contains("member remove"), "{lost}");
        }
        // An index now inside the snapshot is not compared.
        let compacted = Found {
            snapshot: EntryId::new(Term(5), LogIndex(150)),
            last: EntryId::new(Term(5), LogIndex(150)),
            term_at_mark: None,
            ..ok
        };
        assert_eq!(compare(&m, &compacted, p), None);
    }
}
