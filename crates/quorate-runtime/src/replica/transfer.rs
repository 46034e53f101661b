//! Snapshot transfer in chunks, resumable and rate limited.
//!
//! **Leader.** When the core asks to send a snapshot ([`quorate_core::SendSnapshot`]) the
//! replica opens a transfer to that follower (one per follower) and first sends an empty chunk
//! at offset 0: the follower answers with how much of this image it already holds durably, and
//! the leader streams from there — so a transfer cut by a dropped connection, a restart of
//! either side or a timeout resumes from the last acknowledged byte. Chunks are read from the
//! stored image at their offset ([`crate::SnapshotSource::read_at`]): the leader never holds
//! an image in memory, only the chunks in flight. At most
//! `snapshot_window_bytes` are sent beyond the acknowledged offset; a window with no
//! acknowledgement within `snapshot_chunk_timeout` is sent again from the acknowledged offset,
//! and so is the rest after an acknowledgement that shows a gap. Every chunk waits for tokens
//! of one bucket per replica (`snapshot_rate_bytes_per_sec`), refilled by the passed-in clock;
//! the followers take turns at it (each round starts after the one served last).
//! A transfer without progress for the core's `snapshot_send_timeout` is given up (the core
//! probes the follower and asks again, and the next transfer resumes). A transfer that makes
//! progress keeps its image even when the core asks with a newer snapshot meanwhile (it would
//! otherwise restart at 0 with every snapshot and never finish a long transfer): it holds its
//! image open, which keeps it readable after a newer snapshot replaced it. After a refusal no
//! transfer opens to that follower before `snapshot_send_timeout`, and the image opened for
//! sending is kept open until a newer snapshot is saved.
//!
//! **Follower.** A chunk is taken only from the leader of the current term, well formed
//! (bounded, inside the image, its CRC right), and only at the staged offset; anything else is
//! answered with the staged offset or dropped. Staging goes through the storage
//! ([`crate::LogStorage::begin_staging`] …) and each acknowledgement follows a durable append.
//! A chunk of another image at offset 0 replaces the staging (one at a time). The complete
//! image is checked as a stream from the staging (length, CRC, the runtime's part decodes) and
//! handed to the core's `install_snapshot` — also when the staging was already complete when
//! the transfer opened (a crash between the last append and the install). Once the core
//! accepted it, the staging is left alone until the next batch installs it
//! ([`crate::LogStorage::persist`] takes it as the snapshot). A follower that starts an image over (its staging lost, or
//! the whole image failing its CRC) answers `AckStatus::Restart`, and the leader sends from
//! the follower's offset at once.

use super::Replica;
use crate::network::{AckStatus, Network, SnapshotAck, SnapshotChunk, WireMessage};
use crate::sessions::read_image_prefix;
use crate::state_machine::StateMachine;
use crate::storage::{ImageReader, LogStorage, SnapshotHeader, SnapshotSource};
use quorate_core::{Instant, Role, SendSnapshot};
use quorate_log::{Data, LogIndex, NodeId, SnapshotMeta, Term};
use std::ops::Bound;
use std::sync::Arc;

/// The largest snapshot chunk a follower takes (and the most `Config::snapshot_chunk_bytes`
/// is raised to).
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 4 << 20;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Counters of this replica's snapshot transfers, both directions, since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TransferStats {
    /// Transfers opened as leader.
    pub transfers_started: u64,
    /// Transfers whose follower already held part of the image (they resumed past 0).
    pub transfers_resumed: u64,
    /// Transfers given up without progress (or refused by the follower).
    pub transfers_failed: u64,
    /// Non-empty chunks sent.
    pub chunks_sent: u64,
    /// Bytes sent in chunks.
    pub bytes_sent: u64,
    /// Of those, bytes sent again within a transfer (after a loss or a timeout).
    pub bytes_resent: u64,
    /// Chunks staged as follower.
    pub chunks_staged: u64,
    /// Chunks dropped or answered without staging: malformed, corrupt, foreign, of another
    /// term, out of order or duplicated.
    pub chunks_refused: u64,
    /// Snapshots received in chunks and handed to the core for installing.
    pub installs: u64,
    /// Snapshot images opened from the storage to be sent.
    pub images_read: u64,
}

/// A token bucket over the passed-in clock: `rate` bytes a second, at most `burst` at once.
/// Tokens are counted in byte-nanoseconds so that no fraction is lost.
#[derive(Debug)]
pub(super) struct TokenBucket {
    rate: u128,
    capacity: u128,
    tokens: u128,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(super) fn new(rate: u64, burst: u64, now: Instant) -> TokenBucket {
        let capacity = u128::from(burst.max(1)) * NANOS_PER_SEC;
        TokenBucket { rate: u128::from(rate.max(1)), capacity, tokens: capacity, last: now }
    }

    /// Takes `n` bytes' worth of tokens (`n` at most the burst), or says when they will be
    /// there.
    pub(super) fn take(&mut self, now: Instant, n: u64) -> Result<(), Instant> {
        if now.0 > self.last.0 {
            let elapsed = u128::from(now.0 - self.last.0);
            self.tokens = self.tokens.saturating_add(elapsed.saturating_mul(self.rate)).min(self.capacity);
            self.last = now;
        }
        let need = (u128::from(n) * NANOS_PER_SEC).min(self.capacity);
        if self.tokens >= need {
            self.tokens -= need;
            return Ok(());
        }
        let wait = (need - self.tokens).div_ceil(self.rate);
        Err(Instant(self.last.0.saturating_add(u64::try_from(wait).unwrap_or(u64::MAX))))
    }
}

/// A transfer this leader runs to one follower.
#[derive(Debug)]
pub(super) struct Outgoing {
    term: Term,
    header: SnapshotHeader,
    /// The image, read at the offsets sent.
    source: Arc<dyn SnapshotSource>,
    /// Waiting for the answer to the opening empty chunk (the follower's offset).
    probing: bool,
    /// Bytes the follower acknowledged as durably staged.
    acked: u64,
    /// The next byte to send.
    next: u64,
    /// The highest byte sent in this transfer (bytes below it are sent again).
    high: u64,
    /// Sent again from `acked` after a gap; further gap signals are ignored until progress.
    recovering: bool,
    /// The last time the follower acknowledged progress (or the transfer started).
    progress_at: Instant,
    /// When to send again (the opening chunk, or from `acked`) without an answer.
    retry_at: Instant,
    /// Waiting for rate tokens until then.
    blocked: Option<Instant>,
}

impl<SM: StateMachine, L: LogStorage> Replica<SM, L> {
    fn chunk_bytes(&self) -> u64 {
        self.cfg.snapshot_chunk_bytes.clamp(1, SNAPSHOT_CHUNK_BYTES_MAX) as u64
    }

    /// The core asks for a snapshot to be sent: open a transfer, or continue the open one.
    pub(super) fn start_transfer(&mut self, now: Instant, s: SendSnapshot) {
        let term = self.raft.term();
        let give_up = self.cfg.raft.snapshot_send_timeout;
        if let Some(t) = self.outgoing.get_mut(&s.to)
            && t.term == term
        {
            if t.header.meta.last == s.meta.last {
                // Asked again (the core's own timeout, measured from the start, fired during
                // a long transfer): this one goes on; an unanswered opening chunk goes out
                // again now.
                if t.probing {
                    t.retry_at = now;
                }
                return;
            }
            // A newer snapshot, while this transfer still makes progress: it finishes its
            // own image first (it holds the bytes). Reopening at offset 0 with every new
            // snapshot would never finish a transfer longer than the snapshot period; the
            // core asks again after this one installs (or stops progressing).
            if !t.probing && now.saturating_since(t.progress_at) < give_up {
                return;
            }
        }
        if self.refused_until.get(&s.to).is_some_and(|until| now < *until) {
            // The follower refused a snapshot lately: back off until the core's send timeout
            // (it probes and asks again), rather than reopen at every probe.
            return;
        }
        self.refused_until.remove(&s.to);
        let Some(source) = self.snapshot_image(&s.meta) else {
            self.raft.snapshot_send_failed(now, s.to);
            return;
        };
        let header = source.header().clone();
        self.transfer_stats.transfers_started += 1;
        let t = Outgoing {
            term,
            header,
            source,
            probing: true,
            acked: 0,
            next: 0,
            high: 0,
            recovering: false,
            progress_at: now,
            retry_at: now,
            blocked: None,
        };
        self.outgoing.insert(s.to, t);
    }

    /// The stored snapshot for `meta`, opened (once, shared by the transfers).
    fn snapshot_image(&mut self, meta: &SnapshotMeta) -> Option<Arc<dyn SnapshotSource>> {
        if let Some(s) = &self.send_cache
            && s.header().meta.last == meta.last
        {
            return Some(s.clone());
        }
        match self.raft.storage().open_snapshot() {
            Ok(Some(source)) if source.header().meta.last == meta.last && source.header().total_len > 0 => {
                self.transfer_stats.images_read += 1;
                let source: Arc<dyn SnapshotSource> = Arc::from(source);
                self.send_cache = Some(source.clone());
                Some(source)
            }
            _ => None,
        }
    }

    /// Sends what the transfers may send now: opening chunks, chunks within the window and
    /// the rate, again from the acknowledged offset after a timeout. Gives up stalled ones.
    pub(super) fn pump_transfers(&mut self, now: Instant, net: &mut impl Network) {
        if self.raft.role() != Role::Leader {
            self.outgoing.clear();
            self.refused_until.clear();
            // Only a leader sends: free the image. (A leader keeps it until a new snapshot
            // is saved, so that asking again does not read and hash it again.)
            self.send_cache = None;
        }
        if self.outgoing.is_empty() {
            return;
        }
        let term = self.raft.term();
        let me = self.raft.id();
        let chunk = self.chunk_bytes();
        let window = self.cfg.snapshot_window_bytes.max(chunk);
        let retry = self.cfg.snapshot_chunk_timeout;
        let give_up = self.cfg.raft.snapshot_send_timeout;
        let mut failed: Vec<(NodeId, bool)> = Vec::new();
        let mut unreadable = false;
        let stats = &mut self.transfer_stats;
        // One bucket for all: each round starts after the follower served last, so that
        // every follower gets its turn at the tokens (not the lowest id all of them).
        let order: Vec<NodeId> = match self.pump_cursor {
            Some(c) => self
                .outgoing
                .range((Bound::Excluded(c), Bound::Unbounded))
                .chain(self.outgoing.range(..=c))
                .map(|(&to, _)| to)
                .collect(),
            None => self.outgoing.keys().copied().collect(),
        };
        for to in order {
            let Some(t) = self.outgoing.get_mut(&to) else { continue };
            if t.term != term {
                failed.push((to, false));
                continue;
            }
            if now.saturating_since(t.progress_at) >= give_up {
                failed.push((to, true));
                continue;
            }
            if t.probing {
                if now >= t.retry_at {
                    let c = SnapshotChunk::new(me, to, term, t.header.clone(), 0, Data::from(Vec::new()));
                    net.send(WireMessage::SnapshotChunk(c));
                    t.retry_at = now.saturating_add(retry);
                }
                continue;
            }
            if t.next > t.acked && now >= t.retry_at {
                t.next = t.acked;
                t.recovering = true;
            }
            t.blocked = None;
            let total = t.header.total_len;
            while t.next < total && t.next - t.acked < window {
                let n = chunk.min(total - t.next);
                if let Some(bucket) = &mut self.bucket
                    && let Err(at) = bucket.take(now, n)
                {
                    t.blocked = Some(at);
                    break;
                }
                if t.next == t.acked {
                    t.retry_at = now.saturating_add(retry);
                }
                let mut buf = vec![0u8; n as usize];
                if !matches!(t.source.read_at(t.next, &mut buf), Ok(got) if got as u64 == n) {
                    // The image cannot be read: give this transfer up (the core asks again,
                    // and the image is opened again).
                    failed.push((to, true));
                    unreadable = true;
                    break;
                }
                let data = Data::from(buf);
                net.send(WireMessage::SnapshotChunk(SnapshotChunk::new(me, to, term, t.header.clone(), t.next, data)));
                self.pump_cursor = Some(to);
                stats.chunks_sent += 1;
                stats.bytes_sent += n;
                stats.bytes_resent += t.high.min(t.next + n).saturating_sub(t.next);
                t.next += n;
                t.high = t.high.max(t.next);
            }
        }
        if unreadable {
            self.send_cache = None;
        }
        for (to, stalled) in failed {
            self.outgoing.remove(&to);
            if stalled {
                self.transfer_stats.transfers_failed += 1;
                self.raft.snapshot_send_failed(now, to);
            }
        }
    }

    /// When a transfer next needs the replica's attention.
    pub(super) fn transfer_deadline(&self) -> Option<Instant> {
        let give_up = self.cfg.raft.snapshot_send_timeout;
        self.outgoing
            .values()
            .flat_map(|t| {
                let waiting = t.probing || t.next > t.acked;
                [Some(t.progress_at.saturating_add(give_up)), waiting.then_some(t.retry_at), t.blocked]
            })
            .flatten()
            .min()
    }

    /// A follower's answer to a chunk.
    pub(super) fn on_ack(&mut self, now: Instant, a: SnapshotAck) {
        if a.to != self.raft.id() || a.term != self.raft.term() || self.raft.role() != Role::Leader {
            return;
        }
        let retry = self.cfg.snapshot_chunk_timeout;
        let Some(t) = self.outgoing.get_mut(&a.from) else { return };
        if t.header.meta.last != a.last || t.header.checksum != a.checksum || a.offset > t.header.total_len {
            return;
        }
        match a.status {
            AckStatus::Installed => {
                // The core hears of it through the follower's append acknowledgement.
                self.outgoing.remove(&a.from);
            }
            AckStatus::Refused => {
                self.outgoing.remove(&a.from);
                self.transfer_stats.transfers_failed += 1;
                let until = now.saturating_add(self.cfg.raft.snapshot_send_timeout);
                self.refused_until.insert(a.from, until);
                self.raft.snapshot_send_failed(now, a.from);
            }
            AckStatus::Restart => {
                // The follower starts this image over at `offset` (its staging was lost, or
                // the complete image failed its check): send from there now. Not progress:
                // a follower that keeps failing still has the transfer given up.
                t.probing = false;
                t.acked = a.offset;
                t.next = a.offset;
                t.recovering = false;
                t.retry_at = now.saturating_add(retry);
            }
            AckStatus::Staging => {
                if t.probing {
                    t.probing = false;
                    t.acked = a.offset;
                    t.next = a.offset;
                    t.high = a.offset;
                    t.progress_at = now;
                    if a.offset > 0 {
                        self.transfer_stats.transfers_resumed += 1;
                    }
                } else if a.offset > t.acked {
                    t.acked = a.offset;
                    t.next = t.next.max(a.offset);
                    t.progress_at = now;
                    t.retry_at = now.saturating_add(retry);
                    t.recovering = false;
                } else if a.offset == t.acked && t.next > t.acked && !t.recovering {
                    // A chunk reached the follower out of order: one before it was lost.
                    t.next = t.acked;
                    t.recovering = true;
                }
                // Below `acked`: a late duplicate (acknowledgements only grow), ignored; a
                // follower that lost its staging says so with `AckStatus::Restart`.
            }
        }
    }

    /// A chunk from the leader.
    pub(super) fn on_chunk(&mut self, now: Instant, c: SnapshotChunk) {
        let me = self.raft.id();
        let from_leader = c.to == me
            && c.term == self.raft.term()
            && self.raft.leader() == Some(c.from)
            && self.raft.role() != Role::Leader;
        let len = c.data.len() as u64;
        let h = &c.header;
        let end = c.offset.checked_add(len);
        let well_formed = c.data.len() <= SNAPSHOT_CHUNK_BYTES_MAX
            && h.total_len > 0
            && h.meta.last.index > LogIndex::ZERO
            && end.is_some_and(|e| e <= h.total_len)
            && c.done == (end == Some(h.total_len))
            && crc32fast::hash(&c.data) == c.data_crc;
        // An image the core accepted waits for the next batch to install it: its staging is
        // not touched until then.
        if !from_leader || !well_formed || self.staged.is_some() {
            self.transfer_stats.chunks_refused += 1;
            return;
        }
        let ack = |offset: u64, status: AckStatus| {
            WireMessage::SnapshotAck(SnapshotAck {
                from: me,
                to: c.from,
                term: c.term,
                last: h.meta.last,
                checksum: h.checksum,
                offset,
                status,
            })
        };
        // Everything it covers is committed here already: nothing to stage (the core answers
        // the leader with an append acknowledgement).
        if h.meta.last.index <= self.raft.commit_index() {
            if self.staging.as_ref().is_some_and(|(s, _)| s == h) {
                self.drop_staging();
            }
            let _ = self.raft.install_snapshot(now, c.from, c.term, h.meta.clone());
            self.outbox.push(ack(h.total_len, AckStatus::Installed));
            return;
        }
        if h.total_len > self.cfg.snapshot_staging_bytes_max {
            self.transfer_stats.chunks_refused += 1;
            self.outbox.push(ack(0, AckStatus::Refused));
            return;
        }
        let staged = match &self.staging {
            Some((s, at)) if s == h => *at,
            // The start of another image: it replaces the staging.
            _ if c.offset == 0 => match self.raft.storage_mut().begin_staging(h) {
                Ok(()) => {
                    self.staging = Some((h.clone(), 0));
                    0
                }
                Err(_) => {
                    self.drop_staging();
                    self.outbox.push(ack(0, AckStatus::Refused));
                    return;
                }
            },
            // A piece of an image not staged here (lost, or replaced): start it from 0.
            _ => {
                self.transfer_stats.chunks_refused += 1;
                self.outbox.push(ack(0, AckStatus::Restart));
                return;
            }
        };
        // A staging already complete (a crash between its last durable append and its
        // finishing) goes straight to the check and install below: answering "all staged"
        // would leave the leader with nothing to send, for ever.
        if staged < h.total_len {
            if c.offset != staged || len == 0 {
                if c.offset != staged {
                    self.transfer_stats.chunks_refused += 1;
                }
                self.outbox.push(ack(staged, AckStatus::Staging));
                return;
            }
            if self.raft.storage_mut().append_staging(staged, &c.data).is_err() {
                self.drop_staging();
                self.outbox.push(ack(0, AckStatus::Refused));
                return;
            }
            let at = staged + len;
            self.staging = Some((h.clone(), at));
            self.transfer_stats.chunks_staged += 1;
            if at < h.total_len {
                self.outbox.push(ack(at, AckStatus::Staging));
                return;
            }
        }
        // Complete: check the whole image (streamed from the staging) before the core hears
        // of it.
        if let Err((offset, status)) = self.check_staging(h) {
            // Damaged at rest or assembled wrongly (`Restart`: start over, and tell the
            // leader), unreadable or not an image of this runtime (`Refused`).
            self.drop_staging();
            self.outbox.push(ack(offset, status));
            return;
        }
        match self.raft.install_snapshot(now, c.from, c.term, h.meta.clone()) {
            Ok(true) => {
                self.staged = Some(h.meta.clone());
                self.transfer_stats.installs += 1;
                self.outbox.push(ack(h.total_len, AckStatus::Installed));
            }
            Ok(false) => {
                self.drop_staging();
                self.outbox.push(ack(h.total_len, AckStatus::Installed));
            }
            // A stale term or a halted core: nothing to answer.
            Err(_) => self.drop_staging(),
        }
    }

    /// Reads the complete staging of `h` once, as a stream: its length and CRC-32 must match
    /// the header and the runtime's part of the image must decode. The answer to send if not.
    fn check_staging(&self, h: &SnapshotHeader) -> Result<(), (u64, AckStatus)> {
        let source = match self.raft.storage().open_staging() {
            Ok(Some(s)) if s.header() == h => s,
            _ => return Err((0, AckStatus::Refused)),
        };
        let mut reader = ImageReader::new(source.as_ref());
        let prefix = read_image_prefix(&mut reader, h.total_len);
        match reader.finish() {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof) => {
                return Err((0, AckStatus::Restart));
            }
            Err(_) => return Err((0, AckStatus::Refused)),
        }
        match prefix {
            Ok(_) => Ok(()),
            Err(_) => Err((h.total_len, AckStatus::Refused)),
        }
    }

    /// Discards the staging (best effort: a failure leaves it to be replaced later).
    fn drop_staging(&mut self) {
        self.staging = None;
        let _ = self.raft.storage_mut().abort_staging();
    }

    /// A staging no longer needed — this node leads, or has committed past it — is
    /// discarded; then the follower's answers go out.
    pub(super) fn finish_turn(&mut self, net: &mut impl Network) {
        if let Some((h, _)) = &self.staging
            && self.staged.is_none()
            && (self.raft.role() == Role::Leader || h.meta.last.index <= self.raft.commit_index())
        {
            self.drop_staging();
        }
        for m in self.outbox.drain(..) {
            net.send(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_holds_one_burst_and_refills_at_the_rate() {
        let ms = |n: u64| Instant(n * 1_000_000);
        // 1,000 bytes a second, a burst of 100.
        let mut b = TokenBucket::new(1_000, 100, ms(0));
        assert_eq!(b.take(ms(0), 100), Ok(()), "full at the start");
        // 10 bytes take 10 ms to come back.
        assert_eq!(b.take(ms(0), 10), Err(ms(10)));
        assert_eq!(b.take(ms(5), 10), Err(ms(10)));
        assert_eq!(b.take(ms(10), 10), Ok(()));
        // Idle for long: never more than the burst.
        assert_eq!(b.take(ms(10_000), 100), Ok(()));
        assert_eq!(b.take(ms(10_000), 1), Err(Instant(10_000 * 1_000_000 + 1_000_000)));
        // A request above the burst waits for a full bucket, not for ever.
        assert_eq!(b.take(ms(10_100), 1_000), Ok(()));
        // A clock that goes back changes nothing.
        assert!(b.take(ms(5), 1).is_err());
        // Zero rate or burst are raised to one.
        let mut z = TokenBucket::new(0, 0, ms(0));
        assert_eq!(z.take(ms(0), 1), Ok(()));
        assert_eq!(z.take(ms(0), 1), Err(ms(1_000)));
    }
}
