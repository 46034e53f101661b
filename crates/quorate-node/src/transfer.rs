//! Resumable snapshot transfers between nodes (cluster version 2 on): the node's driver of
//! the runtime's sans-IO protocol ([`quorate_runtime::transfer`]) over its snapshot files
//! and its own wire messages ([`NodeMessage::SnapshotPiece`], [`NodeMessage::SnapshotAck`]).
//!
//! **Leader.** [`send`] runs in a task per follower: it reads the snapshot file's length and
//! CRC-32 once (as a stream), opens the transfer with an empty piece at offset 0 — the
//! follower answers with how much of this image it holds durably — and streams from there,
//! reading each chunk from the file at its offset (never the whole file), within a window of
//! unacknowledged bytes and a token bucket of `limits.snapshot_rate_mb_per_sec`. A window
//! unacknowledged for [`CHUNK_TIMEOUT`] is sent again from the acknowledged offset; a
//! transfer without progress for [`GIVE_UP`] ends, and the core asks again (the next transfer
//! resumes from what the follower holds).
//!
//! **Follower.** One staging worker on a blocking thread ([`spawn_receiver`]) takes the
//! pieces the driver accepted (from the leader of the current term), appends them to
//! `staging/resumable.part` and syncs it before acknowledging the new length; the image's
//! header is in `staging/resumable.header`, so the staging survives a restart and the
//! transfer resumes from its length. The complete file is checked (length and CRC-32) and
//! then verified into the store's snapshot directory ([`crate::server`]'s
//! `verify_and_store`), and installed through the driver, as a streamed one.

use quorate_api::{NodeMessage, SnapshotAck, SnapshotAckStatus, SnapshotPiece};
use quorate_log::{LogIndex, NodeId, SnapshotMeta, Term};
use quorate_runtime::AckStatus;
use quorate_runtime::SnapshotHeader;
use quorate_runtime::transfer::{
    Ack, AckOutcome, Piece, Received, Receiver, SendLimits, Sender, Staging, TokenBucket, TransferStats, Transmit,
};
use quorate_transport::{SendError, Transport};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Bytes per piece.
pub(crate) const CHUNK_BYTES: u64 = 512 * 1024;
/// Most bytes sent beyond what the follower acknowledged.
pub(crate) const WINDOW_BYTES: u64 = 4 << 20;
/// A window unacknowledged this long is sent again from the acknowledged offset.
pub(crate) const CHUNK_TIMEOUT: Duration = Duration::from_secs(2);
/// A transfer without progress this long is given up (the core asks again).
pub(crate) const GIVE_UP: Duration = Duration::from_secs(10);
/// Acknowledgements waiting for a sender task; more are dropped (they are cumulative).
pub(crate) const ACK_QUEUE: usize = 64;
/// Pieces waiting for the staging worker; more are dropped (the leader sends them again).
pub(crate) const PIECE_QUEUE: usize = 16;
/// How long a sender waits before trying again when the peer's snapshot queue is full.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(20);
/// The largest staging header file read back at a restart.
const HEADER_FILE_BYTES_MAX: u64 = 1 << 20;
/// The staged bytes of the transfer being received.
pub(crate) const PART_FILE: &str = "resumable.part";
/// The header of the image staged in [`PART_FILE`].
pub(crate) const HEADER_FILE: &str = "resumable.header";
const _: () = assert!(CHUNK_BYTES as usize <= quorate_api::limits::SNAPSHOT_CHUNK_BYTES_MAX);
const _: () = assert!(WINDOW_BYTES >= CHUNK_BYTES);

fn status_to_wire(s: AckStatus) -> SnapshotAckStatus {
    match s {
        AckStatus::Staging => SnapshotAckStatus::Staging,
        AckStatus::Installed => SnapshotAckStatus::Installed,
        AckStatus::Restart => SnapshotAckStatus::Restart,
        _ => SnapshotAckStatus::Refused,
    }
}

fn status_from_wire(s: SnapshotAckStatus) -> Option<AckStatus> {
    match s {
        SnapshotAckStatus::Staging => Some(AckStatus::Staging),
        SnapshotAckStatus::Installed => Some(AckStatus::Installed),
        SnapshotAckStatus::Refused => Some(AckStatus::Refused),
        SnapshotAckStatus::Restart => Some(AckStatus::Restart),
        _ => None,
    }
}

/// The header of a piece's image.
pub(crate) fn header_of(p: &SnapshotPiece) -> SnapshotHeader {
    SnapshotHeader::new(p.meta.clone(), p.total, p.checksum)
}

/// Length and CRC-32 of `file` read as a stream from its start, in 64 KiB reads.
fn crc_of(file: &mut File) -> std::io::Result<(u64, u32)> {
    file.seek(SeekFrom::Start(0))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((len, hasher.finalize()));
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
}

/// Adds what `now` counted since `published` to the node's metrics.
fn publish(published: &mut TransferStats, now: &TransferStats) {
    crate::telemetry::snapshot_transfer(published, now);
    *published = now.clone();
}

/// A sender's outcome when the follower refused the snapshot.
const REFUSED: &str = "the follower refused the snapshot";

/// What a sender task needs.
pub(crate) struct SendJob {
    pub(crate) transport: Arc<Transport<NodeMessage>>,
    pub(crate) to: NodeId,
    pub(crate) term: Term,
    pub(crate) meta: SnapshotMeta,
    pub(crate) path: PathBuf,
    pub(crate) rate_bytes_per_sec: u64,
    pub(crate) acks: mpsc::Receiver<SnapshotAck>,
}

/// Runs one transfer of the snapshot file `job.path` to `job.to` until the follower
/// installed it, refused it, or made no progress for [`GIVE_UP`].
pub(crate) async fn send(job: SendJob) -> Result<(), String> {
    let SendJob { transport, to, term, meta, path, rate_bytes_per_sec, mut acks } = job;
    let open = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<(File, u64, u32)> {
            let mut f = File::open(&path)?;
            let (len, crc) = crc_of(&mut f)?;
            Ok((f, len, crc))
        })
    };
    let (file, total, checksum) =
        open.await.map_err(|e| e.to_string())?.map_err(|e| format!("read {}: {e}", path.display()))?;
    if total == 0 {
        return Err(format!("{} is empty", path.display()));
    }
    let header = SnapshotHeader::new(meta.clone(), total, checksum);
    let mut file = Some(file);
    let origin = tokio::time::Instant::now();
    let clock = || quorate_core::Instant(origin.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64);
    let limits = SendLimits::new(CHUNK_BYTES, WINDOW_BYTES, CHUNK_TIMEOUT);
    let (mut stats, mut published) = (TransferStats::default(), TransferStats::default());
    let mut sender = Sender::new(term, header, clock(), &mut stats);
    let mut bucket = TokenBucket::new(rate_bytes_per_sec, CHUNK_BYTES, clock());
    let piece = |offset: u64, data: Vec<u8>| {
        let data_crc = crc32fast::hash(&data);
        let done = offset + data.len() as u64 == total;
        NodeMessage::SnapshotPiece(SnapshotPiece {
            term,
            meta: meta.clone(),
            total,
            checksum,
            offset,
            data,
            data_crc,
            done,
        })
    };
    let outcome = loop {
        let now = clock();
        if sender.stalled(now, GIVE_UP) {
            break Err(format!("no progress for {} s (follower holds {} bytes)", GIVE_UP.as_secs(), sender.acked()));
        }
        sender.start_round(now);
        let mut queue_full = false;
        while let Some(t) = sender.poll_transmit(now, &limits, Some(&mut bucket)) {
            let (offset, len) = match t {
                Transmit::Probe => {
                    // A lost opening piece is sent again after the chunk timeout.
                    let _ = transport.try_send_snapshot(to, piece(0, Vec::new()));
                    break;
                }
                Transmit::Chunk { offset, len } => (offset, len),
                _ => break,
            };
            // Read off the async workers; the file goes to the blocking thread and back.
            let mut f = file.take().ok_or("the snapshot file was lost by a failed read")?;
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; len as usize];
                let r = f.seek(SeekFrom::Start(offset)).and_then(|_| f.read_exact(&mut buf));
                (f, r.map(|()| buf))
            })
            .await
            .map_err(|e| e.to_string())?;
            file = Some(read.0);
            let data = read.1.map_err(|e| format!("read {} at {offset}: {e}", path.display()))?;
            match transport.try_send_snapshot(to, piece(offset, data)) {
                Ok(()) => sender.sent(offset, len, &mut stats),
                Err(SendError::QueueFull) => {
                    // Not sent: the same chunk is polled again after a short wait.
                    queue_full = true;
                    break;
                }
                // Not connected or shutting down: as lost (sent again after the timeout).
                Err(_) => sender.sent(offset, len, &mut stats),
            }
        }
        publish(&mut published, &stats);
        let wake = if queue_full {
            now.saturating_add(QUEUE_FULL_BACKOFF)
        } else {
            sender.deadline(GIVE_UP).unwrap_or(now.saturating_add(GIVE_UP))
        };
        let sleep = tokio::time::sleep_until(origin + Duration::from_nanos(wake.0));
        tokio::select! {
            a = acks.recv() => {
                let Some(a) = a else { break Err("the transfer was dropped".to_owned()) };
                let Some(status) = status_from_wire(a.status) else { continue };
                let ack = Ack::new(a.term, (a.last, a.checksum), a.offset, status);
                match sender.handle_ack(clock(), ack, &limits, &mut stats) {
                    AckOutcome::Installed => break Ok(()),
                    // Counted as failed by the sender.
                    AckOutcome::Refused => break Err(REFUSED.to_owned()),
                    _ => {}
                }
            }
            () = sleep => {}
        }
    };
    if outcome.as_ref().is_err_and(|e| e != REFUSED) {
        stats.transfers_failed += 1;
    }
    publish(&mut published, &stats);
    outcome
}

/// A piece the driver accepted from the leader of its current term.
pub(crate) struct Incoming {
    pub(crate) from: NodeId,
    pub(crate) piece: SnapshotPiece,
}

/// Where the staging worker hands a verified, stored snapshot to the driver.
pub(crate) type OnStored = Box<dyn Fn(NodeId, Term, SnapshotMeta, PathBuf) + Send>;

/// What the staging worker needs.
pub(crate) struct ReceiveJob {
    pub(crate) dir: PathBuf,
    pub(crate) store: Arc<quorate_storage::RocksStore>,
    pub(crate) transport: Arc<Transport<NodeMessage>>,
    /// Largest image staged (`limits.snapshot_staging_mb`).
    pub(crate) staging_bytes_max: u64,
    /// Free space kept above twice an image's size (`limits.free_space_floor_mb`).
    pub(crate) floor_bytes: u64,
    pub(crate) on_stored: OnStored,
}

/// The staging files in `dir`, as the receiver's [`Staging`]: the header written and synced
/// at the start, the bytes appended and synced before each acknowledgement.
struct FileStaging {
    dir: PathBuf,
    floor_bytes: u64,
    part: Option<File>,
    /// The last `begin` was refused for free disk space.
    short_of_space: bool,
}

impl FileStaging {
    fn remove(&mut self) {
        self.part = None;
        for name in [PART_FILE, HEADER_FILE] {
            match std::fs::remove_file(self.dir.join(name)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(file = name, error = %e, "cannot remove a snapshot staging file"),
            }
        }
    }

    /// The staging a previous run left (header, durable length), if it reads back whole.
    fn found(&mut self) -> Option<(SnapshotHeader, u64)> {
        if !self.dir.join(HEADER_FILE).exists() {
            self.remove();
            return None;
        }
        let read = || -> Result<(SnapshotHeader, u64), String> {
            let path = self.dir.join(HEADER_FILE);
            let mut bytes = Vec::new();
            File::open(&path)
                .and_then(|f| f.take(HEADER_FILE_BYTES_MAX).read_to_end(&mut bytes))
                .map_err(|e| e.to_string())?;
            let h: SnapshotHeader = postcard::from_bytes(&bytes).map_err(|e| e.to_string())?;
            let len = std::fs::metadata(self.dir.join(PART_FILE)).map_err(|e| e.to_string())?.len();
            if len > h.total_len {
                return Err(format!("{len} bytes staged of an image of {}", h.total_len));
            }
            Ok((h, len))
        };
        match read() {
            Ok(found) => Some(found),
            Err(e) => {
                tracing::warn!(error = %e, "snapshot staging left by the previous run is unreadable; discarded");
                self.remove();
                None
            }
        }
    }
}

/// The staging a previous run left, unless the state this node applied already covers its
/// image (it caught up past it through the log or another transfer before it stopped): such a
/// partial image would otherwise sit on disk until the next resumable transfer begins.
fn kept_staging(stage: &mut FileStaging, applied: LogIndex) -> Option<(SnapshotHeader, u64)> {
    let (h, len) = stage.found()?;
    if h.meta.last.index <= applied {
        tracing::info!(index = %h.meta.last.index, %applied, staged = len,
            "snapshot staging kept from the previous run is covered by the applied state; removed");
        stage.remove();
        return None;
    }
    Some((h, len))
}

impl Staging for FileStaging {
    type Error = std::io::Error;

    fn begin(&mut self, header: &SnapshotHeader) -> std::io::Result<()> {
        self.remove();
        // The staged file and its copy into the store, above the floor.
        let needed = header.total_len.saturating_mul(2).saturating_add(self.floor_bytes);
        let free = quorate_storage::free_space_bytes(&self.dir).map_err(|e| std::io::Error::other(e.to_string()))?;
        self.short_of_space = free < needed;
        if free < needed {
            tracing::warn!(bytes = header.total_len, free, needed, "not enough free disk space to receive a snapshot");
            return Err(std::io::Error::other("not enough free disk space"));
        }
        let bytes = postcard::to_allocvec(header).map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut h = File::create(self.dir.join(HEADER_FILE))?;
        h.write_all(&bytes)?;
        h.sync_all()?;
        let part = File::create(self.dir.join(PART_FILE))?;
        File::open(&self.dir)?.sync_all()?;
        self.part = Some(part);
        Ok(())
    }

    fn append(&mut self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        if self.part.is_none() {
            // Resumed after a restart.
            self.part = Some(File::options().write(true).open(self.dir.join(PART_FILE))?);
        }
        let part = self.part.as_mut().ok_or_else(|| std::io::Error::other("no staging"))?;
        part.seek(SeekFrom::Start(offset))?;
        part.write_all(bytes)?;
        part.sync_data()
    }

    fn abort(&mut self) {
        self.remove();
    }
}

/// Starts the staging worker; it runs until the returned sender is dropped.
pub(crate) fn spawn_receiver(job: ReceiveJob) -> mpsc::Sender<Incoming> {
    let (tx, rx) = mpsc::channel(PIECE_QUEUE);
    tokio::task::spawn_blocking(move || receive_loop(job, rx));
    tx
}

fn receive_loop(job: ReceiveJob, mut rx: mpsc::Receiver<Incoming>) {
    let mut stage =
        FileStaging { dir: job.dir.clone(), floor_bytes: job.floor_bytes, part: None, short_of_space: false };
    let found = kept_staging(&mut stage, job.store.applied_index());
    if let Some((h, len)) = &found {
        tracing::info!(index = %h.meta.last.index, staged = len, total = h.total_len,
            "snapshot staging kept from the previous run; a transfer of it resumes there");
    }
    // Counted once the leader continues the kept staging past byte 0.
    let mut kept = found.as_ref().map(|(h, len)| (h.clone(), *len)).filter(|(_, len)| *len > 0);
    let mut receiver = Receiver::new(found);
    let (mut stats, mut published) = (TransferStats::default(), TransferStats::default());
    while let Some(Incoming { from, piece }) = rx.blocking_recv() {
        let header = header_of(&piece);
        let ack = |offset: u64, status: AckStatus| {
            let a = SnapshotAck {
                term: piece.term,
                last: header.meta.last,
                checksum: header.checksum,
                offset,
                status: status_to_wire(status),
            };
            // A lost answer is answered again at the leader's next piece.
            let _ = job.transport.try_send(from, NodeMessage::SnapshotAck(a));
        };
        let p = Piece::new(&header, piece.offset, &piece.data, piece.data_crc, piece.done);
        if !p.well_formed() {
            stats.chunks_refused += 1;
            tracing::warn!(peer = %from, offset = piece.offset, "malformed or corrupt snapshot piece dropped");
            publish(&mut published, &stats);
            continue;
        }
        let got = receiver.receive(p, job.staging_bytes_max, &mut stage, &mut stats);
        if let Some((h, len)) = &kept
            && *h == header
            && piece.offset == *len
            && !piece.data.is_empty()
            && matches!(got, Received::Ack { status: AckStatus::Staging, .. } | Received::Complete)
        {
            tracing::info!(peer = %from, offset = len, total = h.total_len,
                "snapshot transfer resumed from the staging kept across a restart");
            stats.transfers_resumed += 1;
            kept = None;
        }
        match got {
            Received::Ack { offset, status } => {
                if status == AckStatus::Refused {
                    // Counted as the 0.1.0 stream's refusals are (`snapshot_too_large`).
                    use quorate_telemetry::names::peer_refused::SNAPSHOT_TOO_LARGE;
                    if header.total_len > job.staging_bytes_max {
                        crate::server::refused_peer(from, SNAPSHOT_TOO_LARGE, "snapshot over the staging limit");
                    } else if std::mem::take(&mut stage.short_of_space) {
                        crate::server::refused_peer(from, SNAPSHOT_TOO_LARGE, "snapshot over the free disk space");
                    }
                    tracing::warn!(peer = %from, bytes = header.total_len, "snapshot refused (over the staging limit, \
                        the free disk space, or the staging failed)");
                }
                ack(offset, status);
            }
            Received::Complete => {
                let (offset, status) = finish(&job, &mut stage, &header, from, piece.term, &mut stats);
                receiver.forget();
                ack(offset, status);
            }
            _ => {}
        }
        publish(&mut published, &stats);
    }
}

/// Checks the complete staging (length, CRC-32), verifies it into the store and hands it to
/// the driver; the staging files are removed whatever happens. The answer to the leader.
fn finish(
    job: &ReceiveJob,
    stage: &mut FileStaging,
    header: &SnapshotHeader,
    from: NodeId,
    term: Term,
    stats: &mut TransferStats,
) -> (u64, AckStatus) {
    let part = job.dir.join(PART_FILE);
    let checked = File::open(&part).and_then(|mut f| crc_of(&mut f));
    let answer = match checked {
        Ok((len, crc)) if len == header.total_len && crc == header.checksum => {
            match crate::server::verify_and_store(&job.store, &part, &header.meta) {
                Ok(path) => {
                    tracing::debug!(peer = %from, index = %header.meta.last.index, "received snapshot verified");
                    stats.installs += 1;
                    (job.on_stored)(from, term, header.meta.clone(), path);
                    (header.total_len, AckStatus::Installed)
                }
                Err(e) => {
                    tracing::warn!(peer = %from, error = %e, "received snapshot does not verify; refused");
                    (header.total_len, AckStatus::Refused)
                }
            }
        }
        Ok((len, _)) => {
            tracing::warn!(peer = %from, staged = len, "staged snapshot fails its checksum; starting it over");
            (0, AckStatus::Restart)
        }
        Err(e) => {
            tracing::warn!(peer = %from, error = %e, "staged snapshot unreadable; refused");
            (0, AckStatus::Refused)
        }
    };
    stage.abort();
    answer
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorate_log::EntryId;
    use std::path::Path;

    fn staging(dir: &Path) -> FileStaging {
        FileStaging { dir: dir.to_path_buf(), floor_bytes: 0, part: None, short_of_space: false }
    }

    /// A staging kept across a restart resumes only while it is ahead of the applied state.
    #[test]
    fn a_kept_staging_the_applied_state_covers_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let meta = SnapshotMeta { last: EntryId::new(Term(2), LogIndex(10)), config: Default::default() };
        let header = SnapshotHeader::new(meta, 100, 7);
        let mut s = staging(dir.path());
        s.begin(&header).unwrap();
        s.append(0, &[1; 40]).unwrap();
        drop(s);
        assert_eq!(kept_staging(&mut staging(dir.path()), LogIndex(9)), Some((header.clone(), 40)), "ahead: kept");
        assert!(dir.path().join(PART_FILE).exists() && dir.path().join(HEADER_FILE).exists());
        assert_eq!(kept_staging(&mut staging(dir.path()), LogIndex(10)), None, "covered: dropped");
        assert!(!dir.path().join(PART_FILE).exists() && !dir.path().join(HEADER_FILE).exists(), "files removed");
    }
}
