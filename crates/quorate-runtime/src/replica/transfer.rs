//! Snapshot transfer in chunks, resumable and rate limited: the replica's driver of the
//! sans-IO protocol in [`crate::transfer`] ([`Sender`] per follower, [`Receiver`] over the
//! storage's staging).
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
//!
//! **Streams** ([`TransferFormat::Stream`], for members that take nothing else). The leader
//! runs the same [`Sender`] and answers it itself: its opening at offset 0, and each piece the
//! network took ([`Network::send`] returned true; a refused one is offered again 5 ms later).
//! Answers from the follower never reach a stream (any that arrive are stale). A round sends
//! at most `snapshot_window_bytes` to one follower and asks to be woken at once for the next;
//! a stream sent to its end is done (the core hears of the install from the follower, or
//! asks again). The follower stages a stream's pieces in order from a piece at 0 through the
//! same [`Receiver`], with a placeholder checksum, computing the CRC-32 as they arrive; any
//! other piece (a gap, another image, a stream whose start it did not see) drops the stream.
//! The complete staging is sealed with its CRC ([`LogStorage::seal_staging`]), then checked
//! and installed as above; nothing is answered.

use super::Replica;
use crate::driver::Core;
use crate::network::{AckStatus, Network, SnapshotAck, SnapshotChunk, StreamChunk, TransferFormat, WireMessage};
use crate::sessions::read_image_prefix;
use crate::state_machine::StateMachine;
use crate::storage::{ImageReader, LogStorage, SnapshotHeader, SnapshotSource, content_reader};
use crate::transfer::{
    Ack, AckOutcome, Piece, Received, SNAPSHOT_CHUNK_BYTES_MAX, SendLimits, Sender, Staging, Transmit,
};
use quorate_core::{Instant, Role, SendSnapshot};
use quorate_log::{Data, NodeId, SnapshotMeta, StorageError, Term};
use std::ops::Bound;
use std::sync::Arc;

/// The storage's staging, as the receiver's [`Staging`].
struct StorageStaging<'a, L: LogStorage>(&'a mut L);

impl<L: LogStorage> Staging for StorageStaging<'_, L> {
    type Error = StorageError;
    fn begin(&mut self, header: &SnapshotHeader) -> Result<(), StorageError> {
        self.0.begin_staging(header)
    }
    fn append(&mut self, offset: u64, bytes: &[u8]) -> Result<(), StorageError> {
        self.0.append_staging(offset, bytes)
    }
    fn abort(&mut self) {
        // Best effort: a failure leaves it to be replaced later.
        let _ = self.0.abort_staging();
    }
}

/// How long a leader waits before offering a stream piece again that the network refused.
const STREAM_REFUSED_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

impl<SM: StateMachine, L: LogStorage, C: Core<L>> Replica<SM, L, C> {
    fn send_limits(&self) -> SendLimits {
        SendLimits::new(
            self.cfg.snapshot_chunk_bytes as u64,
            self.cfg.snapshot_window_bytes,
            self.cfg.snapshot_chunk_timeout,
        )
    }

    /// The core asks for a snapshot to be sent: open a transfer, or continue the open one.
    pub(super) fn start_transfer(&mut self, now: Instant, s: SendSnapshot) {
        let term = self.core.raft().term();
        let give_up = self.cfg.raft.snapshot_send_timeout;
        let stream = self.cfg.snapshot_transfer == TransferFormat::Stream;
        if let Some((t, _, was_stream)) = self.outgoing.get_mut(&s.to)
            && t.term() == term
        {
            // A transfer still waiting for its first answer in the other format than the
            // one configured now is opened again in this one (a member that takes only
            // streams never answers a chunk).
            let same_format = *was_stream == stream || !t.is_probing();
            if t.header().meta.last == s.meta.last && same_format {
                // Asked again (the core's own timeout, measured from the start, fired during
                // a long transfer): this one goes on; an unanswered opening chunk goes out
                // again now.
                t.probe_now(now);
                return;
            }
            // A newer snapshot, while this transfer still makes progress: it finishes its
            // own image first (it holds the bytes). Reopening at offset 0 with every new
            // snapshot would never finish a transfer longer than the snapshot period; the
            // core asks again after this one installs (or stops progressing).
            if !t.is_probing() && !t.stalled(now, give_up) {
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
            self.core.snapshot_send_failed(now, s.to);
            return;
        };
        let header = source.header().clone();
        let t = Sender::new(term, header, now, &mut self.transfer_stats);
        self.outgoing.insert(s.to, (t, source, stream));
    }

    /// The stored snapshot for `meta`, opened (once, shared by the transfers).
    fn snapshot_image(&mut self, meta: &SnapshotMeta) -> Option<Arc<dyn SnapshotSource>> {
        if let Some(s) = &self.send_cache
            && s.header().meta.last == meta.last
        {
            return Some(s.clone());
        }
        match self.core.raft().storage().open_snapshot() {
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
        if self.core.raft().role() != Role::Leader {
            self.outgoing.clear();
            self.refused_until.clear();
            // Only a leader sends: free the image. (A leader keeps it until a new snapshot
            // is saved, so that asking again does not read and hash it again.)
            self.send_cache = None;
        }
        self.stream_wake = None;
        if self.outgoing.is_empty() {
            return;
        }
        let term = self.core.raft().term();
        let me = self.core.raft().id();
        let limits = self.send_limits();
        let give_up = self.cfg.raft.snapshot_send_timeout;
        let mut failed: Vec<(NodeId, bool)> = Vec::new();
        let mut streamed: Vec<NodeId> = Vec::new();
        let mut wake: Option<Instant> = None;
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
            let Some((t, source, stream)) = self.outgoing.get_mut(&to) else { continue };
            let stream = *stream;
            if t.term() != term {
                failed.push((to, false));
                continue;
            }
            if t.stalled(now, give_up) {
                failed.push((to, true));
                continue;
            }
            t.start_round(now);
            // A stream is not answered: the leader acknowledges each piece the network took,
            // so only the rate and this budget per round (a window's worth) bound a round.
            let mut budget = limits.window_bytes;
            while let Some(out) = t.poll_transmit(now, &limits, self.bucket.as_mut()) {
                let (offset, len) = match out {
                    Transmit::Probe if stream => {
                        // A stream always starts at 0: the leader answers its own opening.
                        let h = t.header();
                        let open = Ack::new(term, (h.meta.last, h.checksum), 0, AckStatus::Staging);
                        let _ = t.handle_ack(now, open, &limits, stats);
                        continue;
                    }
                    Transmit::Probe => {
                        let c = SnapshotChunk::new(me, to, term, t.header().clone(), 0, Data::from(Vec::new()));
                        net.send(WireMessage::SnapshotChunk(c));
                        break;
                    }
                    Transmit::Chunk { offset, len } => (offset, len),
                };
                let mut buf = vec![0u8; len as usize];
                if !matches!(source.read_at(offset, &mut buf), Ok(got) if got as u64 == len) {
                    // The image cannot be read: give this transfer up (the core asks again,
                    // and the image is opened again).
                    failed.push((to, true));
                    unreadable = true;
                    break;
                }
                let data = Data::from(buf);
                if stream {
                    let h = t.header();
                    let total = h.total_len;
                    let (meta, image) = (h.meta.clone(), (h.meta.last, h.checksum));
                    let piece = StreamChunk::new(me, to, term, meta, offset, total, data);
                    if !net.send(WireMessage::SnapshotStream(piece)) {
                        // Not taken: this piece goes again in a later round (a gap would
                        // break the stream), after the network had a moment to drain.
                        let at = now.saturating_add(STREAM_REFUSED_PAUSE);
                        wake = Some(wake.map_or(at, |w| w.min(at)));
                        break;
                    }
                    self.pump_cursor = Some(to);
                    t.sent(offset, len, stats);
                    let _ = t.handle_ack(now, Ack::new(term, image, offset + len, AckStatus::Staging), &limits, stats);
                    if offset + len == total {
                        streamed.push(to);
                        break;
                    }
                    budget = budget.saturating_sub(len);
                    if budget == 0 {
                        // The next round goes on at once, in the host's next turn.
                        wake = Some(now);
                        break;
                    }
                    continue;
                }
                net.send(WireMessage::SnapshotChunk(SnapshotChunk::new(
                    me,
                    to,
                    term,
                    t.header().clone(),
                    offset,
                    data,
                )));
                self.pump_cursor = Some(to);
                t.sent(offset, len, stats);
            }
        }
        if unreadable {
            self.send_cache = None;
        }
        // A stream sent to its end: the core hears of the install through the follower's
        // append acknowledgement, or asks again after its timeout.
        for to in streamed {
            self.outgoing.remove(&to);
        }
        self.stream_wake = wake;
        for (to, stalled) in failed {
            self.outgoing.remove(&to);
            if stalled {
                self.transfer_stats.transfers_failed += 1;
                self.core.snapshot_send_failed(now, to);
            }
        }
    }

    /// When a transfer next needs the replica's attention.
    pub(super) fn transfer_deadline(&self) -> Option<Instant> {
        let give_up = self.cfg.raft.snapshot_send_timeout;
        let transfers = self.outgoing.values().filter_map(|(t, _, _)| t.deadline(give_up)).min();
        [transfers, self.stream_wake].into_iter().flatten().min()
    }

    /// A follower's answer to a chunk.
    pub(super) fn on_ack(&mut self, now: Instant, a: SnapshotAck) {
        if a.to != self.core.raft().id() || a.term != self.core.raft().term() || self.core.raft().role() != Role::Leader
        {
            return;
        }
        let limits = self.send_limits();
        // A stream is never answered: an answer to it is a stale one of an earlier chunked
        // transfer, and would move it past what the follower staged.
        let Some((t, _, false)) = self.outgoing.get_mut(&a.from) else { return };
        let ack = Ack::new(a.term, (a.last, a.checksum), a.offset, a.status);
        match t.handle_ack(now, ack, &limits, &mut self.transfer_stats) {
            AckOutcome::Installed => {
                // The core hears of it through the follower's append acknowledgement.
                self.outgoing.remove(&a.from);
            }
            AckOutcome::Refused => {
                self.outgoing.remove(&a.from);
                let until = now.saturating_add(self.cfg.raft.snapshot_send_timeout);
                self.refused_until.insert(a.from, until);
                self.core.snapshot_send_failed(now, a.from);
            }
            _ => {}
        }
    }

    /// Whether a transfer message `from` → `to` at `term` comes from this follower's leader
    /// of its current term, to it.
    fn sent_by_leader(&self, from: NodeId, to: NodeId, term: Term) -> bool {
        let raft = self.core.raft();
        to == raft.id() && term == raft.term() && raft.leader() == Some(from) && raft.role() != Role::Leader
    }

    /// A chunk from the leader.
    pub(super) fn on_chunk(&mut self, now: Instant, c: SnapshotChunk) {
        let from_leader = self.sent_by_leader(c.from, c.to, c.term);
        let h = &c.header;
        let piece = Piece::new(h, c.offset, &c.data, c.data_crc, c.done);
        // An image the core accepted waits for the next batch to install it: its staging is
        // not touched until then.
        if !from_leader || !piece.well_formed() || self.staged.is_some() {
            self.transfer_stats.chunks_refused += 1;
            return;
        }
        let ack = |offset: u64, status: AckStatus| {
            WireMessage::SnapshotAck(SnapshotAck {
                from: c.to,
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
        if h.meta.last.index <= self.core.raft().commit_index() {
            if self.receiver.staging().is_some_and(|(s, _)| s == h) {
                self.drop_staging();
            }
            let _ = self.core.install_snapshot(now, c.from, c.term, h.meta.clone());
            self.outbox.push(ack(h.total_len, AckStatus::Installed));
            return;
        }
        // An acknowledged transfer that starts replaces a stream being received.
        if c.offset == 0 {
            self.stream_in = None;
        }
        let max = self.cfg.snapshot_staging_bytes_max;
        let mut stage = StorageStaging(self.core.storage_mut());
        match self.receiver.receive(piece, max, &mut stage, &mut self.transfer_stats) {
            Received::Ack { offset, status } => {
                self.outbox.push(ack(offset, status));
                return;
            }
            Received::Complete => {}
        }
        if let Some((offset, status)) = self.install_staging(now, c.from, c.term, h) {
            self.outbox.push(ack(offset, status));
        }
    }

    /// A complete staging of `h`: checks the whole image (streamed from the staging) before
    /// the core hears of it, and offers it to the core. The answer for the leader, if any.
    fn install_staging(
        &mut self,
        now: Instant,
        from: NodeId,
        term: Term,
        h: &SnapshotHeader,
    ) -> Option<(u64, AckStatus)> {
        if let Err((offset, status)) = self.check_staging(h) {
            // Damaged at rest or assembled wrongly (`Restart`: start over, and tell the
            // leader), unreadable or not an image of this runtime (`Refused`).
            self.drop_staging();
            return Some((offset, status));
        }
        match self.core.install_snapshot(now, from, term, h.meta.clone()) {
            Ok(true) => {
                self.staged = Some(h.meta.clone());
                self.transfer_stats.installs += 1;
                Some((h.total_len, AckStatus::Installed))
            }
            Ok(false) => {
                self.drop_staging();
                Some((h.total_len, AckStatus::Installed))
            }
            // A stale term or a halted core: nothing to answer.
            Err(_) => {
                self.drop_staging();
                None
            }
        }
    }

    /// A piece of a snapshot stream from the leader ([`TransferFormat::Stream`]): staged
    /// only in order from offset 0 (a piece at 0 starts the stream over; one at any other
    /// offset than the staged length drops the stream until the leader starts it again), and
    /// never answered. The image's checksum is computed as the pieces are staged; the
    /// complete staging gets it ([`LogStorage::seal_staging`]) and is then checked and
    /// installed like a chunked one.
    pub(super) fn on_stream(&mut self, now: Instant, c: StreamChunk) {
        let from_leader = self.sent_by_leader(c.from, c.to, c.term);
        let len = c.data.len() as u64;
        let end = c.offset.checked_add(len);
        let well_formed = !c.data.is_empty()
            && c.data.len() <= SNAPSHOT_CHUNK_BYTES_MAX
            && c.meta.last.index > quorate_log::LogIndex::ZERO
            && end.is_some_and(|e| e <= c.total);
        if !from_leader || !well_formed || self.staged.is_some() || c.total > self.cfg.snapshot_staging_bytes_max {
            self.transfer_stats.chunks_refused += 1;
            return;
        }
        // The stream's image as the staging knows it until its end (checksum unknown).
        let open = SnapshotHeader::new(c.meta.clone(), c.total, 0);
        if c.meta.last.index <= self.core.raft().commit_index() {
            // Everything it covers is committed here already: nothing to stage. At the
            // stream's start the core answers the leader with an append acknowledgement.
            if c.offset == 0 {
                if self.stream_in.is_some() {
                    self.stream_in = None;
                    self.drop_staging();
                }
                let _ = self.core.install_snapshot(now, c.from, c.term, c.meta.clone());
            }
            return;
        }
        let continues = matches!(&self.stream_in, Some((f, t, _)) if *f == c.from && *t == c.term)
            && self.receiver.staging().is_some_and(|(h, at)| *h == open && *at == c.offset);
        if c.offset == 0 {
            // The leader starts (or starts again) a stream: whatever is staged goes.
            if self.receiver.staging().is_some() {
                self.drop_staging();
            }
            self.stream_in = Some((c.from, c.term, crc32fast::Hasher::new()));
        } else if !continues {
            // A gap (a piece lost, or a stream this follower did not see start): the stream
            // is broken; the leader sends it again from 0 when its core asks again.
            self.transfer_stats.chunks_refused += 1;
            if self.stream_in.take().is_some() {
                self.drop_staging();
            }
            return;
        }
        let done = end == Some(c.total);
        let piece = Piece::new(&open, c.offset, &c.data, crc32fast::hash(&c.data), done);
        let max = self.cfg.snapshot_staging_bytes_max;
        let mut stage = StorageStaging(self.core.storage_mut());
        let received = self.receiver.receive(piece, max, &mut stage, &mut self.transfer_stats);
        let staged = match received {
            Received::Ack { offset, status: AckStatus::Staging } => offset == end.unwrap_or(0),
            Received::Complete => true,
            _ => false,
        };
        if !staged {
            // Over the staging limit, or the staging failed: drop the stream.
            self.stream_in = None;
            self.drop_staging();
            return;
        }
        let Some((_, _, crc)) = self.stream_in.as_mut() else { return };
        crc.update(&c.data);
        if !done {
            return;
        }
        let checksum = crc.clone().finalize();
        self.stream_in = None;
        let header = SnapshotHeader::new(c.meta.clone(), c.total, checksum);
        if self.core.storage_mut().seal_staging(&header).is_err() {
            self.drop_staging();
            return;
        }
        self.receiver = crate::transfer::Receiver::new(Some((header.clone(), c.total)));
        let _ = self.install_staging(now, c.from, c.term, &header);
        if self.staged.as_ref() == Some(&header.meta) {
            self.transfer_stats.stream_installs += 1;
        }
    }

    /// Reads the complete staging of `h` once, as a stream: its length and CRC-32 must match
    /// the header and the runtime's part of the image (if the state machine does not own its
    /// format) must decode. The answer to send if not.
    fn check_staging(&self, h: &SnapshotHeader) -> Result<(), (u64, AckStatus)> {
        let source = match self.core.raft().storage().open_staging() {
            Ok(Some(s)) if s.header() == h => s,
            _ => return Err((0, AckStatus::Refused)),
        };
        let content = source.content();
        let mut reader = ImageReader::new(source.as_ref());
        let prefix = match content_reader(&mut reader, &content) {
            Ok(mut body) if SM::ENVELOPE => {
                read_image_prefix(&mut body, content.end.saturating_sub(content.start)).map(|_| ())
            }
            Ok(_) => Ok(()),
            // Unreadable up to the content: `finish` says how.
            Err(e) => Err(e.to_string()),
        };
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

    /// Discards the staging (best effort: a failure leaves it to be replaced later), and any
    /// stream being received into it.
    fn drop_staging(&mut self) {
        self.stream_in = None;
        let mut stage = StorageStaging(self.core.storage_mut());
        self.receiver.abort(&mut stage);
    }

    /// A staging no longer needed — this node leads, or has committed past it — is
    /// discarded; then the follower's answers go out.
    pub(super) fn finish_turn(&mut self, net: &mut impl Network) {
        if let Some((h, _)) = self.receiver.staging()
            && self.staged.is_none()
            && (self.core.raft().role() == Role::Leader || h.meta.last.index <= self.core.raft().commit_index())
        {
            self.drop_staging();
        }
        for m in self.outbox.drain(..) {
            net.send(m);
        }
    }
}
