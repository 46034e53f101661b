//! `quorate snapshot save FILE`: a snapshot image streamed from the leader to the caller's disk
//! (issue 21).
//!
//! 1. `Request::SnapshotStreamOpen` (admin) reserves this node's one stream slot (a second
//!    save while one runs is refused as busy), then the driver runs a ReadIndex round: only a
//!    leader that a quorum confirms goes on, so the image holds every write acknowledged
//!    before the request.
//! 2. Once the state machine has applied the confirmed index, the apply thread takes a view
//!    of it (a RocksDB snapshot at the applied index, as reads do) and hands it to a read
//!    worker, which writes the image (the ordinary snapshot file format: header, metadata,
//!    data, checksums) into `<data_dir>/backups/stream/<id>/` — not the apply thread, which
//!    goes on applying. The open request is answered at once with the stream id and the index.
//! 3. The caller fetches the image in chunks (`Request::SnapshotStreamFetch`) with a bounded
//!    window of chunks in flight; each chunk is read from the file by a task of its own. A
//!    fetch before the image is written gets no bytes and the progress of the writer.
//! 4. The end (`len: 0`) is confirmed by a second ReadIndex round: the stream is complete only
//!    if this node is still the leader of the term it started in. Whenever the node stops
//!    being that leader, the stream is aborted and its file removed, so a deposed leader
//!    never completes a save; a stream not fetched for [`STREAM_IDLE`] is dropped as well.
//!
//! Cost: one image file on the leader's disk while the stream runs (removed at its end), one
//! read worker while the image is written (reads queue behind it meanwhile, and an install
//! waits for it, as for any read of a view).

use quorate_api::{ApiError, Response};
use quorate_log::{NodeId, SnapshotMeta, Term};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A stream not fetched for this long is dropped (its file removed, the slot freed).
pub(crate) const STREAM_IDLE: Duration = Duration::from_secs(30);

/// How the image of a stream is coming along.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Leadership not yet confirmed, or the image not yet written whole.
    Preparing,
    /// The image is written: its file and size.
    Ready { path: PathBuf, total: u64 },
    /// Writing the image failed.
    Failed(String),
    /// The stream ended (completed, aborted or expired) while the image was being written:
    /// its writer removes what it wrote.
    Ended,
}

/// The image of one stream, shared by the driver, the apply thread and the worker writing it.
#[derive(Debug)]
pub(crate) struct Image {
    /// Bytes written so far.
    prepared: AtomicU64,
    outcome: Mutex<Outcome>,
    /// The stream's own directory.
    pub(crate) dir: PathBuf,
}

impl Image {
    pub(crate) fn outcome(&self) -> Outcome {
        self.outcome.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub(crate) fn prepared(&self) -> u64 {
        self.prepared.load(Ordering::Acquire)
    }

    /// Records how writing the image ended; if the stream ended meanwhile, removes the file.
    pub(crate) fn finish(&self, result: Result<(PathBuf, u64), String>) {
        let mut outcome = self.outcome.lock().unwrap_or_else(PoisonError::into_inner);
        if *outcome == Outcome::Ended {
            remove_dir(&self.dir);
            return;
        }
        *outcome = match result {
            Ok((path, total)) => {
                self.prepared.store(total, Ordering::Release);
                Outcome::Ready { path, total }
            }
            Err(e) => Outcome::Failed(e),
        };
    }

    /// Whether the stream ended (the writer may stop early).
    pub(crate) fn ended(&self) -> bool {
        *self.outcome.lock().unwrap_or_else(PoisonError::into_inner) == Outcome::Ended
    }
}

/// A writer that counts the bytes written into [`Image::prepared`] and stops with an error
/// once the stream has ended (a deposed leader stops writing an image nobody will fetch).
pub(crate) struct Counting<'a, W> {
    pub(crate) inner: W,
    pub(crate) image: &'a Image,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        let before = self.image.prepared.fetch_add(n as u64, Ordering::AcqRel);
        // Checked once per MiB written: the lock is cheap, but not per record.
        if (before >> 20) != ((before + n as u64) >> 20) && self.image.ended() {
            return Err(std::io::Error::other("the snapshot stream ended"));
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn remove_dir(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a snapshot stream's image"),
    }
}

/// Writes the image of `meta` from `sm` (a view of the state machine at `meta.last`) into the
/// stream's directory (the snapshot file format: written to a temporary name, fsynced,
/// renamed); returns its path and size. Both engines' image writers (a read worker of the
/// driver's, a blocking thread of the runtime engine's).
pub(crate) fn write_image<R: crate::sm::SmRead + ?Sized>(
    sm: &R,
    node: NodeId,
    meta: SnapshotMeta,
    image: &Image,
) -> Result<(PathBuf, u64), String> {
    let started = Instant::now();
    std::fs::create_dir_all(&image.dir).map_err(|e| format!("create {}: {e}", image.dir.display()))?;
    let writer = quorate_storage::SnapshotWriter::create(&image.dir, meta).map_err(|e| e.to_string())?;
    let mut counting = Counting { inner: writer, image };
    crate::sm::write_snapshot_data(sm, &mut counting).map_err(|e| e.to_string())?;
    let file = counting.inner.finish().map_err(|e| e.to_string())?;
    let total = std::fs::metadata(&file.path).map_err(|e| e.to_string())?.len();
    tracing::info!(node = %node, bytes = total, elapsed_ms = started.elapsed().as_millis() as u64, "snapshot stream image written");
    Ok((file.path, total))
}

/// The refusal of a fetch, or of the end, of a stream whose node stopped leading the term the
/// stream was opened in.
pub(crate) fn deposed(term: Term) -> ApiError {
    ApiError::Refused(format!(
        "this node stopped being the leader of term {term} during the snapshot save; the file is not complete — \
         run `snapshot save` again"
    ))
}

/// The refusal of the end of a stream whose second quorum round failed.
pub(crate) fn unconfirmed_end() -> ApiError {
    ApiError::Refused(
        "this node could not confirm it was still the leader at the end of the snapshot save; the file is not \
         complete — run `snapshot save` again"
            .into(),
    )
}

/// What a fetch of a stream's image needs of the node ([`Streams::fetch`]).
#[derive(Debug)]
pub(crate) enum Fetch {
    /// The answer, at once.
    Answer(Result<Response, ApiError>),
    /// The end (`len: 0`) of a whole image: the node confirms its leadership with a quorum
    /// round, then answers with [`Streams::end`] — or, if the round fails, frees the slot
    /// ([`Streams::release`]) and refuses ([`unconfirmed_end`]).
    ConfirmEnd,
    /// A chunk of the written image at `path` (`total` bytes): read off the node's loop with
    /// [`Streams::chunk`].
    Chunk { path: PathBuf, total: u64 },
}

/// The stream a node serves (at most one).
struct Slot {
    id: u64,
    term: Term,
    image: Arc<Image>,
    touched: Instant,
}

/// This node's snapshot stream slot.
#[derive(Debug, Default)]
pub(crate) struct Streams {
    slot: Mutex<Option<SlotInfo>>,
    /// The last stream aborted and why (what a fetch of it is told).
    aborted: Mutex<Option<(u64, String)>>,
}

/// [`Slot`] behind the lock (a separate type so that `Streams` derives `Debug`).
struct SlotInfo(Slot);

impl std::fmt::Debug for SlotInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("id", &self.0.id).field("term", &self.0.term).finish_non_exhaustive()
    }
}

/// Where streams put their images: `<backups_dir>/stream/`.
pub(crate) fn streams_dir(backups_dir: &Path) -> PathBuf {
    backups_dir.join("stream")
}

/// At start: removes images a previous process left (no stream outlives its process).
pub(crate) fn clear(backups_dir: &Path) {
    let dir = streams_dir(backups_dir);
    if dir.exists() {
        tracing::info!(dir = %dir.display(), "removing snapshot stream images of a previous run");
        remove_dir(&dir);
    }
}

/// The answer when the stream `id` is not (or no longer) served here.
fn gone(id: u64) -> ApiError {
    ApiError::Refused(format!(
        "no snapshot stream {id} on this node (it ended, expired after {} s without a fetch, or was aborted); run \
         `snapshot save` again",
        STREAM_IDLE.as_secs()
    ))
}

impl Streams {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<SlotInfo>> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The answer to a fetch of stream `id`, which is not (or no longer) served here: why it
    /// was aborted, if it was the last one aborted.
    pub(crate) fn gone(&self, id: u64) -> ApiError {
        match &*self.aborted.lock().unwrap_or_else(PoisonError::into_inner) {
            Some((aborted, why)) if *aborted == id => ApiError::Refused(format!(
                "snapshot stream {id} was aborted: {why}; the file is not complete — run `snapshot save` again"
            )),
            _ => gone(id),
        }
    }

    /// Reserves the slot for a new stream of `term` (its image under `backups_dir`); busy if a
    /// stream runs (one fetched within [`STREAM_IDLE`]).
    pub(crate) fn open(&self, id: u64, term: Term, backups_dir: &Path, now: Instant) -> Result<(), ApiError> {
        let mut slot = self.lock();
        if let Some(SlotInfo(s)) = slot.as_ref()
            && now.saturating_duration_since(s.touched) < STREAM_IDLE
        {
            return Err(ApiError::Refused(format!(
                "busy: a snapshot save is already streaming from this node (stream {}); one at a time — retry when \
                 it ends",
                s.id
            )));
        }
        if let Some(SlotInfo(old)) = slot.take() {
            end(&old);
        }
        let dir = streams_dir(backups_dir).join(format!("{id:016x}"));
        let image = Arc::new(Image { prepared: AtomicU64::new(0), outcome: Mutex::new(Outcome::Preparing), dir });
        *slot = Some(SlotInfo(Slot { id, term, image, touched: now }));
        Ok(())
    }

    /// A new stream of `term` ([`Streams::open`]), its id drawn so that nobody can guess it:
    /// the id and the image to write.
    pub(crate) fn begin(&self, term: Term, backups_dir: &Path, now: Instant) -> Result<(u64, Arc<Image>), ApiError> {
        let id = crate::server::session_nonce();
        self.open(id, term, backups_dir, now)?;
        // Just opened, under no other lock: only a check or a release in between ends it.
        self.image(id).map(|image| (id, image)).ok_or_else(|| self.gone(id))
    }

    /// The image of stream `id` and the term it was opened in, marking it fetched now.
    pub(crate) fn touch(&self, id: u64, now: Instant) -> Option<(Term, Arc<Image>)> {
        let mut slot = self.lock();
        let s = &mut slot.as_mut().filter(|s| s.0.id == id)?.0;
        s.touched = now;
        Some((s.term, s.image.clone()))
    }

    /// Ends stream `id` (completed, aborted): its file is removed, the slot freed.
    pub(crate) fn release(&self, id: u64) {
        let mut slot = self.lock();
        if slot.as_ref().is_some_and(|s| s.0.id == id)
            && let Some(SlotInfo(s)) = slot.take()
        {
            end(&s);
        }
    }

    /// Ends the stream if this node is no longer the leader of the term it was opened in, or
    /// if it was not fetched for [`STREAM_IDLE`]. Returns the id of a stream ended.
    pub(crate) fn check(&self, term: Term, leader: bool, now: Instant) -> Option<u64> {
        let mut slot = self.lock();
        let s = &slot.as_ref()?.0;
        let stale = !leader || s.term != term;
        let idle = now.saturating_duration_since(s.touched) >= STREAM_IDLE;
        if !stale && !idle {
            return None;
        }
        let SlotInfo(s) = slot.take()?;
        if stale {
            tracing::info!(stream = s.id, "snapshot stream aborted: no longer leader of its term");
            let why = format!("this node stopped being the leader of term {} during the save", s.term);
            *self.aborted.lock().unwrap_or_else(PoisonError::into_inner) = Some((s.id, why));
        } else {
            tracing::info!(stream = s.id, "snapshot stream dropped: not fetched for {} s", STREAM_IDLE.as_secs());
        }
        end(&s);
        Some(s.id)
    }

    /// The image of stream `id`, if it is the one served.
    pub(crate) fn image(&self, id: u64) -> Option<Arc<Image>> {
        self.lock().as_ref().filter(|s| s.0.id == id).map(|s| s.0.image.clone())
    }

    /// A fetch of `[offset, offset + len)` of stream `stream`'s image (`len: 0`: its end) on a
    /// node in `term`, leader or not (`leader`): marks the stream fetched, and ends it if this
    /// node no longer leads the term it was opened in, or if writing its image failed.
    pub(crate) fn fetch(&self, stream: u64, offset: u64, len: u32, term: Term, leader: bool, now: Instant) -> Fetch {
        let Some((opened_in, image)) = self.touch(stream, now) else {
            return Fetch::Answer(Err(self.gone(stream)));
        };
        if !leader || term != opened_in {
            self.release(stream);
            return Fetch::Answer(Err(deposed(opened_in)));
        }
        match image.outcome() {
            Outcome::Preparing => Fetch::Answer(Ok(Response::SnapshotStreamData {
                offset,
                data: Vec::new(),
                total: None,
                prepared: image.prepared(),
                complete: false,
            })),
            Outcome::Failed(e) => {
                self.release(stream);
                Fetch::Answer(Err(ApiError::Refused(format!("writing the snapshot image failed: {e}"))))
            }
            Outcome::Ended => {
                self.release(stream);
                Fetch::Answer(Err(self.gone(stream)))
            }
            Outcome::Ready { total, .. } if len == 0 && offset != total => Fetch::Answer(Err(
                ApiError::InvalidRequest(format!("the end of a {total}-byte image is at offset {total}")),
            )),
            Outcome::Ready { .. } if len == 0 => Fetch::ConfirmEnd,
            Outcome::Ready { path, total } => Fetch::Chunk { path, total },
        }
    }

    /// Reads the chunk [`Fetch::Chunk`] asked for (blocking: a read of the file).
    pub(crate) fn chunk(
        &self,
        stream: u64,
        path: &Path,
        offset: u64,
        len: u32,
        total: u64,
    ) -> Result<Response, ApiError> {
        read_chunk(path, offset, len, total)
            .map(|data| Response::SnapshotStreamData {
                offset,
                data,
                total: Some(total),
                prepared: total,
                complete: false,
            })
            .map_err(|e| match self.image(stream) {
                Some(_) => ApiError::InvalidRequest(format!("snapshot stream: {e}")),
                // The stream ended while this chunk was read (its file is gone).
                None => self.gone(stream),
            })
    }

    /// The end of stream `stream`, its quorum round done, on a node now in `term`, leader or
    /// not: complete if this node still leads the term the stream was opened in. The stream
    /// ends either way.
    pub(crate) fn end(&self, stream: u64, term: Term, leader: bool, now: Instant) -> Result<Response, ApiError> {
        let touched = self.touch(stream, now);
        self.release(stream);
        let Some((opened_in, image)) = touched else {
            return Err(self.gone(stream));
        };
        if !leader || term != opened_in {
            return Err(deposed(opened_in));
        }
        let total = image.prepared();
        tracing::info!(stream, bytes = total, "snapshot stream complete");
        Ok(Response::SnapshotStreamData {
            offset: total,
            data: Vec::new(),
            total: Some(total),
            prepared: total,
            complete: true,
        })
    }

    /// Whether a stream runs (cheap check for the driver's loop).
    pub(crate) fn active(&self) -> bool {
        self.lock().is_some()
    }
}

fn end(s: &Slot) {
    let mut outcome = s.image.outcome.lock().unwrap_or_else(PoisonError::into_inner);
    let writing = *outcome == Outcome::Preparing && s.image.prepared() > 0;
    *outcome = Outcome::Ended;
    drop(outcome);
    // A writer still at work removes the directory itself when it stops; otherwise do it now.
    if !writing {
        remove_dir(&s.image.dir);
    }
}

/// Reads `[offset, offset + len)` of the image file (fewer bytes at its end, none from its end
/// on: a caller that fetches a window of chunks before it knows the image's size asks past a
/// small image's end, and is told the size with no bytes).
pub(crate) fn read_chunk(path: &Path, offset: u64, len: u32, total: u64) -> Result<Vec<u8>, String> {
    use std::io::{Read, Seek, SeekFrom};
    if offset >= total {
        return Ok(Vec::new());
    }
    let want = u64::from(len).min(total - offset);
    let mut file = std::fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    file.seek(SeekFrom::Start(offset)).map_err(|e| e.to_string())?;
    let mut data = vec![0u8; usize::try_from(want).map_err(|e| e.to_string())?];
    file.read_exact(&mut data).map_err(|e| e.to_string())?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_stream_at_a_time_and_a_deposed_or_idle_one_ends() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Streams::default();
        let t0 = Instant::now();
        s.open(1, Term(3), tmp.path(), t0).unwrap();
        let busy = s.open(2, Term(3), tmp.path(), t0).unwrap_err();
        assert!(busy.to_string().contains("busy"), "{busy}");
        assert!(s.touch(2, t0).is_none(), "only the stream served is known");
        let (term, image) = s.touch(1, t0).unwrap();
        assert_eq!(term, Term(3));
        std::fs::create_dir_all(&image.dir).unwrap();
        std::fs::write(image.dir.join("x"), b"image").unwrap();
        image.finish(Ok((image.dir.join("x"), 5)));
        assert_eq!(image.outcome(), Outcome::Ready { path: image.dir.join("x"), total: 5 });
        assert_eq!(read_chunk(&image.dir.join("x"), 1, 100, 5).unwrap(), b"mage");
        // Past the end (a window of fetches sent before the size was known): no bytes, no error.
        assert_eq!(read_chunk(&image.dir.join("x"), 5, 100, 5).unwrap(), b"");
        assert_eq!(read_chunk(&image.dir.join("x"), 524_288, 100, 5).unwrap(), b"");
        // Still leader of term 3: nothing ends. A new term: the stream ends, its file goes.
        assert_eq!(s.check(Term(3), true, t0), None);
        assert_eq!(s.check(Term(4), true, t0), Some(1));
        assert!(s.gone(1).to_string().contains("stopped being the leader of term 3"), "{}", s.gone(1));
        assert!(s.gone(9).to_string().contains("no snapshot stream 9"));
        assert!(!image.dir.exists(), "a deposed leader's image is removed");
        assert!(s.touch(1, t0).is_none());
        // Idle: dropped after STREAM_IDLE, and then a new one may start.
        s.open(5, Term(4), tmp.path(), t0).unwrap();
        assert_eq!(s.check(Term(4), true, t0 + STREAM_IDLE), Some(5));
        s.open(6, Term(4), tmp.path(), t0 + STREAM_IDLE).unwrap();
        // A writer still at work when the stream ends removes what it wrote.
        let (_, image) = s.touch(6, t0 + STREAM_IDLE).unwrap();
        std::fs::create_dir_all(&image.dir).unwrap();
        let mut w = Counting { inner: Vec::new(), image: &image };
        w.write_all(&[0u8; 10]).unwrap();
        s.release(6);
        assert!(image.dir.exists(), "the writer removes it");
        image.finish(Ok((image.dir.join("y"), 10)));
        assert!(!image.dir.exists());
        assert_eq!(image.outcome(), Outcome::Ended);
    }

    #[test]
    fn fetches_see_the_image_being_written_then_chunks_then_an_end_only_its_leader_completes() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Streams::default();
        let t0 = Instant::now();
        let (id, image) = s.begin(Term(2), tmp.path(), t0).unwrap();
        let preparing = s.fetch(id, 0, 4, Term(2), true, t0);
        assert!(
            matches!(preparing, Fetch::Answer(Ok(Response::SnapshotStreamData { total: None, .. }))),
            "{preparing:?}"
        );
        std::fs::create_dir_all(&image.dir).unwrap();
        let path = image.dir.join("img");
        std::fs::write(&path, b"0123456789").unwrap();
        image.finish(Ok((path.clone(), 10)));
        let Fetch::Chunk { path: at, total: 10 } = s.fetch(id, 8, 4, Term(2), true, t0) else { panic!("a chunk") };
        assert_eq!(at, path);
        let Ok(Response::SnapshotStreamData { data, total: Some(10), complete: false, .. }) =
            s.chunk(id, &at, 8, 4, 10)
        else {
            panic!("a chunk's bytes")
        };
        assert_eq!(data, b"89");
        // The end is at the image's size, and needs a confirmation first.
        assert!(matches!(s.fetch(id, 4, 0, Term(2), true, t0), Fetch::Answer(Err(ApiError::InvalidRequest(_)))));
        assert!(matches!(s.fetch(id, 10, 0, Term(2), true, t0), Fetch::ConfirmEnd));
        // Confirmed, but the node leads a later term now: not complete, and the stream ends.
        let late = s.end(id, Term(3), true, t0).unwrap_err();
        assert!(late.to_string().contains("stopped being the leader of term 2"), "{late}");
        assert!(!image.dir.exists());
        assert!(matches!(s.fetch(id, 0, 4, Term(2), true, t0), Fetch::Answer(Err(ApiError::Refused(_)))));

        // Completed by the leader of its term; a fetch by a node that no longer leads ends it.
        let (id, image) = s.begin(Term(3), tmp.path(), t0).unwrap();
        std::fs::create_dir_all(&image.dir).unwrap();
        std::fs::write(image.dir.join("img"), b"abc").unwrap();
        image.finish(Ok((image.dir.join("img"), 3)));
        let done = s.end(id, Term(3), true, t0).unwrap();
        assert!(matches!(done, Response::SnapshotStreamData { complete: true, total: Some(3), .. }), "{done:?}");
        assert!(!s.active(), "the slot is free once the stream completed");
        let (id, _) = s.begin(Term(3), tmp.path(), t0).unwrap();
        let deposed = s.fetch(id, 0, 4, Term(3), false, t0);
        assert!(
            matches!(&deposed, Fetch::Answer(Err(ApiError::Refused(why))) if why.contains("stopped being the leader"))
        );
        assert!(!s.active());
    }
}
