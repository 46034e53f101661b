//! The snapshot transfer protocol, sans IO: a [`Sender`] per follower on the leader, a
//! [`Receiver`] on the follower, and the [`TokenBucket`] that limits the rate.
//!
//! Neither reads a clock, a file or a socket. The sender is told the time, the follower's
//! answers ([`Sender::handle_ack`]) and which chunks went out ([`Sender::sent`]); it says what
//! to send next ([`Sender::poll_transmit`]: an opening empty chunk that asks the follower how
//! much it holds, or the byte range to read from the image and send) and when it next needs
//! attention ([`Sender::deadline`]). The receiver is handed a chunk ([`Piece`]) and a
//! [`Staging`] to append to; it says what to answer ([`Received`]), or that the staging is
//! complete and must be checked and installed by the caller. The runtime's [`crate::Replica`]
//! drives both over its [`crate::LogStorage`]; the reference node drives the same code over
//! its snapshot files and its own wire messages.
//!
//! **The protocol.** The leader opens a transfer with an empty chunk at offset 0; the
//! follower answers with how much of this image (the same [`SnapshotHeader`]: what it covers,
//! its length and CRC-32) it holds durably, and the leader streams from there — so a transfer
//! cut by a dropped connection, a restart of either side or a timeout resumes from the last
//! acknowledged byte. At most a window of bytes is sent beyond the acknowledged offset; a
//! window with no acknowledgement within the chunk timeout is sent again from the
//! acknowledged offset, and so is the rest after an acknowledgement that shows a gap. The
//! follower takes a chunk only if it is well formed (bounded, inside the image, its CRC
//! right) and only at the staged offset, acknowledges only after a durable append, and
//! answers anything else with its staged offset. A chunk of another image at offset 0
//! replaces the staging; a piece of an image not staged asks for a restart from 0.

use crate::network::AckStatus;
use crate::storage::SnapshotHeader;
use quorate_core::Instant;
use quorate_log::{EntryId, LogIndex, Term};
use std::time::Duration;

/// The largest snapshot chunk a follower takes (and the most a sender's chunk size is
/// raised to).
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 4 << 20;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Counters of snapshot transfers, both directions, since the counting side started.
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
    /// Snapshots received in chunks (or in a stream) and handed over for installing.
    pub installs: u64,
    /// Of those, snapshots received in a stream ([`crate::TransferFormat::Stream`]).
    pub stream_installs: u64,
    /// Snapshot images opened from the storage to be sent.
    pub images_read: u64,
}

/// A token bucket over the passed-in clock: `rate` bytes a second, at most `burst` at once.
/// Tokens are counted in byte-nanoseconds so that no fraction is lost.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u128,
    capacity: u128,
    tokens: u128,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket (a rate or burst of 0 is raised to 1).
    #[must_use]
    pub fn new(rate: u64, burst: u64, now: Instant) -> TokenBucket {
        let capacity = u128::from(burst.max(1)) * NANOS_PER_SEC;
        TokenBucket { rate: u128::from(rate.max(1)), capacity, tokens: capacity, last: now }
    }

    /// Takes `n` bytes' worth of tokens (`n` at most the burst), or says when they will be
    /// there.
    ///
    /// # Errors
    /// The time at which `n` bytes' worth of tokens will be there.
    pub fn take(&mut self, now: Instant, n: u64) -> Result<(), Instant> {
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

/// How a [`Sender`] paces a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SendLimits {
    /// Bytes per chunk (raised to 1, lowered to [`SNAPSHOT_CHUNK_BYTES_MAX`]).
    pub chunk_bytes: u64,
    /// Most bytes sent beyond the acknowledged offset (raised to one chunk).
    pub window_bytes: u64,
    /// Sent again from the acknowledged offset (or the opening chunk again) after this long
    /// without an answer.
    pub chunk_timeout: Duration,
}

impl SendLimits {
    /// Limits of `chunk_bytes` per chunk, a window of `window_bytes`, resent after
    /// `chunk_timeout`.
    #[must_use]
    pub fn new(chunk_bytes: u64, window_bytes: u64, chunk_timeout: Duration) -> SendLimits {
        let chunk_bytes = chunk_bytes.clamp(1, SNAPSHOT_CHUNK_BYTES_MAX as u64);
        SendLimits { chunk_bytes, window_bytes: window_bytes.max(chunk_bytes), chunk_timeout }
    }
}

/// What a [`Sender`] asks to send now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transmit {
    /// The opening chunk: empty, at offset 0 (the follower answers with its staged offset).
    Probe,
    /// Bytes `offset..offset + len` of the image: read them, send them, then call
    /// [`Sender::sent`] (a read that fails ends the transfer).
    Chunk {
        /// Where the bytes start in the image.
        offset: u64,
        /// How many bytes.
        len: u64,
    },
}

/// A follower's answer to a piece, as a [`Sender`] takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ack {
    /// The term of the piece answered.
    pub term: Term,
    /// The image's last entry …
    pub last: EntryId,
    /// … and its CRC-32.
    pub checksum: u32,
    /// Bytes of the image the follower holds durably (or where it starts over).
    pub offset: u64,
    /// What the follower did.
    pub status: AckStatus,
}

impl Ack {
    /// The answer in `term` about the image `(last, checksum)`: `offset` bytes held, `status`.
    #[must_use]
    pub fn new(term: Term, image: (EntryId, u32), offset: u64, status: AckStatus) -> Ack {
        Ack { term, last: image.0, checksum: image.1, offset, status }
    }
}

/// What an acknowledgement did to a transfer ([`Sender::handle_ack`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AckOutcome {
    /// Not for this transfer's image, or out of range: ignored.
    Ignored,
    /// The transfer goes on.
    Continue,
    /// The follower installed the image (or needs none): the transfer is over.
    Installed,
    /// The follower refused the image: the transfer is over, failed.
    Refused,
}

/// One transfer from a leader to one follower, in `term`, of the image `header`.
#[derive(Debug, Clone)]
pub struct Sender {
    term: Term,
    header: SnapshotHeader,
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

impl Sender {
    /// A transfer of `header` in `term`, opening at `now` (its first output is the probe).
    /// Counted in `stats.transfers_started`.
    #[must_use]
    pub fn new(term: Term, header: SnapshotHeader, now: Instant, stats: &mut TransferStats) -> Sender {
        stats.transfers_started += 1;
        Sender {
            term,
            header,
            probing: true,
            acked: 0,
            next: 0,
            high: 0,
            recovering: false,
            progress_at: now,
            retry_at: now,
            blocked: None,
        }
    }

    /// The term the transfer was opened in.
    #[must_use]
    pub fn term(&self) -> Term {
        self.term
    }

    /// The image sent.
    #[must_use]
    pub fn header(&self) -> &SnapshotHeader {
        &self.header
    }

    /// Still waiting for the follower's answer to the opening chunk.
    #[must_use]
    pub fn is_probing(&self) -> bool {
        self.probing
    }

    /// Bytes the follower acknowledged.
    #[must_use]
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The last time the follower acknowledged progress (or the transfer opened).
    #[must_use]
    pub fn progress_at(&self) -> Instant {
        self.progress_at
    }

    /// No progress for `give_up` since the last one: the caller gives the transfer up.
    #[must_use]
    pub fn stalled(&self, now: Instant, give_up: Duration) -> bool {
        now.saturating_since(self.progress_at) >= give_up
    }

    /// Sends the opening chunk again at the next poll (the transfer was asked for again
    /// while its opening chunk is unanswered).
    pub fn probe_now(&mut self, now: Instant) {
        if self.probing {
            self.retry_at = now;
        }
    }

    /// Starts a round of [`Sender::poll_transmit`] calls at `now`: a window unacknowledged
    /// for the chunk timeout is sent again from the acknowledged offset.
    pub fn start_round(&mut self, now: Instant) {
        if !self.probing && self.next > self.acked && now >= self.retry_at {
            self.next = self.acked;
            self.recovering = true;
        }
        self.blocked = None;
    }

    /// What to send now, if anything: the opening chunk when due, else the next chunk within
    /// the window and the rate (tokens are taken from `bucket` here). Call until `None`
    /// (or a [`Transmit::Probe`], which ends the round) within a round
    /// ([`Sender::start_round`]).
    #[must_use]
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        limits: &SendLimits,
        bucket: Option<&mut TokenBucket>,
    ) -> Option<Transmit> {
        if self.probing {
            if now >= self.retry_at {
                self.retry_at = now.saturating_add(limits.chunk_timeout);
                return Some(Transmit::Probe);
            }
            return None;
        }
        if self.blocked.is_some() {
            return None;
        }
        let total = self.header.total_len;
        if self.next >= total || self.next - self.acked >= limits.window_bytes {
            return None;
        }
        let len = limits.chunk_bytes.min(total - self.next);
        if let Some(bucket) = bucket
            && let Err(at) = bucket.take(now, len)
        {
            self.blocked = Some(at);
            return None;
        }
        if self.next == self.acked {
            self.retry_at = now.saturating_add(limits.chunk_timeout);
        }
        Some(Transmit::Chunk { offset: self.next, len })
    }

    /// The chunk `offset..offset + len` ([`Transmit::Chunk`]) was read and sent.
    pub fn sent(&mut self, offset: u64, len: u64, stats: &mut TransferStats) {
        debug_assert_eq!(offset, self.next, "chunks are sent in the order they were polled");
        stats.chunks_sent += 1;
        stats.bytes_sent += len;
        stats.bytes_resent += self.high.min(offset + len).saturating_sub(offset);
        self.next = offset + len;
        self.high = self.high.max(self.next);
    }

    /// When the transfer next needs attention: to give up (after `give_up` without
    /// progress), to send again, or when rate tokens are there.
    #[must_use]
    pub fn deadline(&self, give_up: Duration) -> Option<Instant> {
        let waiting = self.probing || self.next > self.acked;
        [Some(self.progress_at.saturating_add(give_up)), waiting.then_some(self.retry_at), self.blocked]
            .into_iter()
            .flatten()
            .min()
    }

    /// The follower's answer `ack`. An answer of another term or image, or past the image's
    /// end, is ignored. The caller checked that it comes from this transfer's follower.
    pub fn handle_ack(&mut self, now: Instant, ack: Ack, limits: &SendLimits, stats: &mut TransferStats) -> AckOutcome {
        let Ack { term, last, checksum, offset, status } = ack;
        if term != self.term
            || self.header.meta.last != last
            || self.header.checksum != checksum
            || offset > self.header.total_len
        {
            return AckOutcome::Ignored;
        }
        match status {
            // The core hears of it through the follower's append acknowledgement.
            AckStatus::Installed => AckOutcome::Installed,
            AckStatus::Refused => {
                stats.transfers_failed += 1;
                AckOutcome::Refused
            }
            AckStatus::Restart => {
                // The follower starts this image over at `offset` (its staging was lost, or
                // the complete image failed its check): send from there now. Not progress:
                // a follower that keeps failing still has the transfer given up.
                self.probing = false;
                self.acked = offset;
                self.next = offset;
                self.recovering = false;
                self.retry_at = now.saturating_add(limits.chunk_timeout);
                AckOutcome::Continue
            }
            AckStatus::Staging => {
                if self.probing {
                    self.probing = false;
                    self.acked = offset;
                    self.next = offset;
                    self.high = offset;
                    self.progress_at = now;
                    if offset > 0 {
                        stats.transfers_resumed += 1;
                    }
                } else if offset > self.acked {
                    self.acked = offset;
                    self.next = self.next.max(offset);
                    self.progress_at = now;
                    self.retry_at = now.saturating_add(limits.chunk_timeout);
                    self.recovering = false;
                } else if offset == self.acked && self.next > self.acked && !self.recovering {
                    // A chunk reached the follower out of order: one before it was lost.
                    self.next = self.acked;
                    self.recovering = true;
                }
                // Below `acked`: a late duplicate (acknowledgements only grow), ignored; a
                // follower that lost its staging says so with `AckStatus::Restart`.
                AckOutcome::Continue
            }
        }
    }
}

/// A chunk as a [`Receiver`] sees it.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Piece<'a> {
    /// The image.
    pub header: &'a SnapshotHeader,
    /// Where `data` starts in the image.
    pub offset: u64,
    /// The bytes.
    pub data: &'a [u8],
    /// The CRC-32 (IEEE) the sender computed of `data`.
    pub data_crc: u32,
    /// The sender says this is the last piece.
    pub done: bool,
}

impl<'a> Piece<'a> {
    /// A piece of `header` at `offset`.
    #[must_use]
    pub fn new(header: &'a SnapshotHeader, offset: u64, data: &'a [u8], data_crc: u32, done: bool) -> Piece<'a> {
        Piece { header, offset, data, data_crc, done }
    }

    /// Bounded ([`SNAPSHOT_CHUNK_BYTES_MAX`]), of a non-empty image of a non-zero index,
    /// inside it, `done` exactly at its end, and its CRC right.
    #[must_use]
    pub fn well_formed(&self) -> bool {
        let h = self.header;
        let end = self.offset.checked_add(self.data.len() as u64);
        self.data.len() <= SNAPSHOT_CHUNK_BYTES_MAX
            && h.total_len > 0
            && h.meta.last.index > LogIndex::ZERO
            && end.is_some_and(|e| e <= h.total_len)
            && self.done == (end == Some(h.total_len))
            && crc32fast::hash(self.data) == self.data_crc
    }
}

/// Where a [`Receiver`] stages an image: one at a time, a durable prefix.
pub trait Staging {
    /// Why staging failed.
    type Error;

    /// Discards any staging and starts an empty one for `header`.
    ///
    /// # Errors
    /// The staging cannot be started (the receiver refuses the image).
    fn begin(&mut self, header: &SnapshotHeader) -> Result<(), Self::Error>;

    /// Appends `bytes` at `offset` (the staged length); returns once they are durable.
    ///
    /// # Errors
    /// The bytes cannot be written or made durable (the receiver refuses the image).
    fn append(&mut self, offset: u64, bytes: &[u8]) -> Result<(), Self::Error>;

    /// Discards the staging (best effort).
    fn abort(&mut self);
}

/// What a [`Receiver`] did with a piece.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Received {
    /// Answer the leader: `offset` bytes held, `status`.
    Ack {
        /// Bytes of the image staged durably (or where to start over).
        offset: u64,
        /// What the receiver did.
        status: AckStatus,
    },
    /// The staging is complete: check the whole image, then install it (answer
    /// [`AckStatus::Installed`]) or [`Receiver::abort`] it and answer as the check says.
    Complete,
}

/// The follower's side: the staging it mirrors (header, durable length).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Receiver {
    staging: Option<(SnapshotHeader, u64)>,
}

impl Receiver {
    /// A receiver over a staging that holds `staged` (header, durable length) — what a
    /// restart found — or nothing.
    #[must_use]
    pub fn new(staged: Option<(SnapshotHeader, u64)>) -> Receiver {
        Receiver { staging: staged }
    }

    /// The staging: its image and durable length.
    #[must_use]
    pub fn staging(&self) -> Option<&(SnapshotHeader, u64)> {
        self.staging.as_ref()
    }

    /// The staging was taken over (installed): the receiver holds none.
    pub fn forget(&mut self) {
        self.staging = None;
    }

    /// Discards the staging.
    pub fn abort<S: Staging + ?Sized>(&mut self, stage: &mut S) {
        self.staging = None;
        stage.abort();
    }

    /// A well-formed piece ([`Piece::well_formed`]) from the current leader, of an image not
    /// covered by what this follower committed (the caller checked all three). Images over
    /// `staging_bytes_max` are refused.
    pub fn receive<S: Staging + ?Sized>(
        &mut self,
        piece: Piece<'_>,
        staging_bytes_max: u64,
        stage: &mut S,
        stats: &mut TransferStats,
    ) -> Received {
        let h = piece.header;
        let len = piece.data.len() as u64;
        if h.total_len > staging_bytes_max {
            stats.chunks_refused += 1;
            return Received::Ack { offset: 0, status: AckStatus::Refused };
        }
        let staged = match &self.staging {
            Some((s, at)) if s == h => *at,
            // The start of another image: it replaces the staging.
            _ if piece.offset == 0 => match stage.begin(h) {
                Ok(()) => {
                    self.staging = Some((h.clone(), 0));
                    0
                }
                Err(_) => {
                    self.abort(stage);
                    return Received::Ack { offset: 0, status: AckStatus::Refused };
                }
            },
            // A piece of an image not staged here (lost, or replaced): start it from 0.
            _ => {
                stats.chunks_refused += 1;
                return Received::Ack { offset: 0, status: AckStatus::Restart };
            }
        };
        // A staging already complete (a crash between its last durable append and its
        // install) goes straight to the check: answering "all staged" would leave the
        // leader with nothing to send, for ever.
        if staged < h.total_len {
            if piece.offset != staged || len == 0 {
                if piece.offset != staged {
                    stats.chunks_refused += 1;
                }
                return Received::Ack { offset: staged, status: AckStatus::Staging };
            }
            if stage.append(staged, piece.data).is_err() {
                self.abort(stage);
                return Received::Ack { offset: 0, status: AckStatus::Refused };
            }
            let at = staged + len;
            self.staging = Some((h.clone(), at));
            stats.chunks_staged += 1;
            if at < h.total_len {
                return Received::Ack { offset: at, status: AckStatus::Staging };
            }
        }
        Received::Complete
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorate_log::{Configuration, EntryId, SnapshotMeta};

    fn ms(n: u64) -> Instant {
        Instant(n * 1_000_000)
    }

    fn image(len: usize) -> (SnapshotHeader, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        let meta = SnapshotMeta { last: EntryId::new(Term(2), LogIndex(40)), config: Configuration::default() };
        (SnapshotHeader::of(meta, &data), data)
    }

    /// A staging in memory that can be told to fail its appends.
    #[derive(Default)]
    struct Mem {
        header: Option<SnapshotHeader>,
        bytes: Vec<u8>,
        fail: bool,
    }

    impl Staging for Mem {
        type Error = ();
        fn begin(&mut self, header: &SnapshotHeader) -> Result<(), ()> {
            self.header = Some(header.clone());
            self.bytes.clear();
            Ok(())
        }
        fn append(&mut self, offset: u64, bytes: &[u8]) -> Result<(), ()> {
            if self.fail || offset != self.bytes.len() as u64 {
                return Err(());
            }
            self.bytes.extend_from_slice(bytes);
            Ok(())
        }
        fn abort(&mut self) {
            self.header = None;
            self.bytes.clear();
        }
    }

    fn limits() -> SendLimits {
        SendLimits::new(10, 30, Duration::from_millis(100))
    }

    /// Every chunk the sender has to send now (a round), with the bytes read from `data`.
    fn round(s: &mut Sender, now: Instant, data: &[u8], stats: &mut TransferStats) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        s.start_round(now);
        while let Some(t) = s.poll_transmit(now, &limits(), None) {
            match t {
                Transmit::Probe => {
                    out.push((0, Vec::new()));
                    break;
                }
                Transmit::Chunk { offset, len } => {
                    let bytes = data[offset as usize..(offset + len) as usize].to_vec();
                    s.sent(offset, len, stats);
                    out.push((offset, bytes));
                }
            }
            assert!(out.len() <= 100, "a round is bounded by the window");
        }
        out
    }

    fn deliver(r: &mut Receiver, h: &SnapshotHeader, stage: &mut Mem, offset: u64, bytes: &[u8]) -> Received {
        let done = offset + bytes.len() as u64 == h.total_len;
        let piece = Piece::new(h, offset, bytes, crc32fast::hash(bytes), done);
        assert!(piece.well_formed());
        r.receive(piece, u64::MAX, stage, &mut TransferStats::default())
    }

    fn ack(s: &mut Sender, now: Instant, got: Received, stats: &mut TransferStats) -> AckOutcome {
        let Received::Ack { offset, status } = got else { return AckOutcome::Ignored };
        let h = s.header().clone();
        s.handle_ack(now, Ack::new(s.term(), (h.meta.last, h.checksum), offset, status), &limits(), stats)
    }

    #[test]
    fn a_transfer_cut_midway_resumes_from_the_acknowledged_offset() {
        let (h, data) = image(95);
        let mut stage = Mem::default();
        let mut rx = Receiver::default();
        let mut stats = TransferStats::default();
        let mut tx = Sender::new(Term(3), h.clone(), ms(0), &mut stats);
        // Probe, answered with 0; then the window (30 bytes) goes out and is staged.
        let probe = round(&mut tx, ms(0), &data, &mut stats);
        assert_eq!(probe, vec![(0, Vec::new())]);
        let got = deliver(&mut rx, &h, &mut stage, 0, &[]);
        assert_eq!(got, Received::Ack { offset: 0, status: AckStatus::Staging });
        assert_eq!(ack(&mut tx, ms(1), got, &mut stats), AckOutcome::Continue);
        for (offset, bytes) in round(&mut tx, ms(1), &data, &mut stats) {
            let got = deliver(&mut rx, &h, &mut stage, offset, &bytes);
            ack(&mut tx, ms(2), got, &mut stats);
        }
        assert_eq!(rx.staging().map(|s| s.1), Some(30));
        // The connection drops with the next window in flight: the leader restarts (a new
        // sender), the follower restarts from what it staged durably.
        let _lost = round(&mut tx, ms(2), &data, &mut stats);
        let mut rx = Receiver::new(Some((h.clone(), stage.bytes.len() as u64)));
        let mut stats = TransferStats::default();
        let mut tx = Sender::new(Term(3), h.clone(), ms(10), &mut stats);
        let _probe = round(&mut tx, ms(10), &data, &mut stats);
        let got = deliver(&mut rx, &h, &mut stage, 0, &[]);
        assert_eq!(got, Received::Ack { offset: 30, status: AckStatus::Staging }, "the follower holds 30 bytes");
        ack(&mut tx, ms(11), got, &mut stats);
        assert_eq!(stats.transfers_resumed, 1);
        let mut complete = false;
        for _ in 0..10 {
            for (offset, bytes) in round(&mut tx, ms(12), &data, &mut stats) {
                assert!(offset >= 30, "nothing below the acknowledged offset is sent again");
                match deliver(&mut rx, &h, &mut stage, offset, &bytes) {
                    Received::Complete => complete = true,
                    got => {
                        ack(&mut tx, ms(12), got, &mut stats);
                    }
                }
            }
        }
        assert!(complete);
        assert_eq!(stage.bytes, data);
        assert_eq!(stats.bytes_sent, 65);
        assert_eq!(stats.bytes_resent, 0);
    }

    #[test]
    fn a_gap_is_answered_with_the_staged_offset_and_resent_from_there() {
        let (h, data) = image(50);
        let mut stage = Mem::default();
        let mut rx = Receiver::default();
        let mut stats = TransferStats::default();
        let mut tx = Sender::new(Term(3), h.clone(), ms(0), &mut stats);
        let _ = round(&mut tx, ms(0), &data, &mut stats);
        let got = deliver(&mut rx, &h, &mut stage, 0, &[]);
        ack(&mut tx, ms(0), got, &mut stats);
        let sent = round(&mut tx, ms(0), &data, &mut stats);
        assert_eq!(sent.iter().map(|c| c.0).collect::<Vec<_>>(), vec![0, 10, 20]);
        // The chunk at 0 is lost: the one at 10 is a gap, answered with 0.
        let got = deliver(&mut rx, &h, &mut stage, 10, &sent[1].1);
        assert_eq!(got, Received::Ack { offset: 0, status: AckStatus::Staging });
        assert_eq!(ack(&mut tx, ms(1), got, &mut stats), AckOutcome::Continue);
        // The sender goes back to 0 at once (no timeout), and counts the resent bytes.
        let again = round(&mut tx, ms(1), &data, &mut stats);
        assert_eq!(again.first().map(|c| c.0), Some(0));
        assert_eq!(stats.bytes_resent, 30);
        // Without any answer, the window is sent again after the chunk timeout only.
        assert!(round(&mut tx, ms(50), &data, &mut stats).is_empty());
        assert_eq!(round(&mut tx, ms(101), &data, &mut stats).first().map(|c| c.0), Some(0));
    }

    #[test]
    fn answers_of_another_term_or_image_are_ignored() {
        let (h, data) = image(50);
        let mut stats = TransferStats::default();
        let mut tx = Sender::new(Term(3), h.clone(), ms(0), &mut stats);
        let _ = round(&mut tx, ms(0), &data, &mut stats);
        let img = (h.meta.last, h.checksum);
        let l = limits();
        let old_term = tx.handle_ack(ms(1), Ack::new(Term(2), img, 20, AckStatus::Staging), &l, &mut stats);
        assert_eq!(old_term, AckOutcome::Ignored);
        let other = tx.handle_ack(
            ms(1),
            Ack::new(Term(3), (h.meta.last, h.checksum ^ 1), 20, AckStatus::Installed),
            &l,
            &mut stats,
        );
        assert_eq!(other, AckOutcome::Ignored);
        let past_end = tx.handle_ack(ms(1), Ack::new(Term(3), img, 51, AckStatus::Staging), &l, &mut stats);
        assert_eq!(past_end, AckOutcome::Ignored);
        assert!(tx.is_probing(), "no ignored answer opened the transfer");
        assert_eq!(
            tx.handle_ack(ms(1), Ack::new(Term(3), img, 20, AckStatus::Staging), &l, &mut stats),
            AckOutcome::Continue
        );
        assert_eq!(tx.acked(), 20);
        assert_eq!(stats.transfers_resumed, 1);
        // Stalled once no progress came for the give-up time.
        assert!(!tx.stalled(ms(500), Duration::from_secs(1)));
        assert!(tx.stalled(ms(1001), Duration::from_secs(1)));
    }

    #[test]
    fn a_corrupt_or_malformed_piece_is_not_well_formed() {
        let (h, data) = image(50);
        let good = Piece::new(&h, 10, &data[10..20], crc32fast::hash(&data[10..20]), false);
        assert!(good.well_formed());
        let bad_crc = Piece::new(&h, 10, &data[10..20], crc32fast::hash(&data[10..20]) ^ 1, false);
        assert!(!bad_crc.well_formed());
        let past_end = Piece::new(&h, 45, &data[10..20], crc32fast::hash(&data[10..20]), false);
        assert!(!past_end.well_formed());
        let wrong_done = Piece::new(&h, 40, &data[40..50], crc32fast::hash(&data[40..50]), false);
        assert!(!wrong_done.well_formed());
        let overflow = Piece::new(&h, u64::MAX - 2, &data[10..20], crc32fast::hash(&data[10..20]), false);
        assert!(!overflow.well_formed());
    }

    #[test]
    fn the_receiver_restarts_foreign_pieces_refuses_large_images_and_failed_appends() {
        let (h, data) = image(50);
        let (other, _) = image(60);
        let mut stage = Mem::default();
        let mut rx = Receiver::default();
        let mut stats = TransferStats::default();
        // A piece of an image not staged, past 0: start over.
        let p = Piece::new(&h, 10, &data[10..20], crc32fast::hash(&data[10..20]), false);
        assert_eq!(
            rx.receive(p, u64::MAX, &mut stage, &mut stats),
            Received::Ack { offset: 0, status: AckStatus::Restart }
        );
        // Over the staging limit: refused.
        let p = Piece::new(&h, 0, &data[..10], crc32fast::hash(&data[..10]), false);
        assert_eq!(rx.receive(p, 49, &mut stage, &mut stats), Received::Ack { offset: 0, status: AckStatus::Refused });
        // Staged, then another image at 0 replaces it.
        assert_eq!(rx.receive(p, 50, &mut stage, &mut stats), Received::Ack { offset: 10, status: AckStatus::Staging });
        let q = Piece::new(&other, 0, &[], crc32fast::hash(&[]), false);
        assert_eq!(rx.receive(q, 100, &mut stage, &mut stats), Received::Ack { offset: 0, status: AckStatus::Staging });
        assert_eq!(rx.staging(), Some(&(other.clone(), 0)));
        // A failed durable append refuses the image and discards the staging.
        stage.fail = true;
        let r = Piece::new(&other, 0, &data[..10], crc32fast::hash(&data[..10]), false);
        assert_eq!(rx.receive(r, 100, &mut stage, &mut stats), Received::Ack { offset: 0, status: AckStatus::Refused });
        assert_eq!(rx.staging(), None);
        assert_eq!(stats.chunks_refused, 2);
    }

    #[test]
    fn the_bucket_holds_one_burst_and_refills_at_the_rate() {
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
