//! The flight recorder: the recent inputs of the node's consensus core, kept in a bounded ring
//! of segments, each starting at a checkpoint; dumped to a file on request (the admin request
//! `FlightDump`, `quorate debug flight-dump`), on a runtime invariant violation, and when the
//! node halts or stops on an error; replayed through a core restored from the checkpoint
//! (`quorate replay FILE`), which must reproduce every recorded output.
//!
//! ## The ring
//!
//! The driver holds the core as a [`Recorded`]: every call that changes the core goes through
//! it and is recorded in order with its `now` — messages in, timeouts, proposals, reads,
//! leadership transfers, configuration changes, persistence completions and snapshot events,
//! the result of each call, and a digest of every `Ready`. Inputs go into the newest
//! *segment*. A segment starts with a [`Checkpoint`] from which a replay can start:
//!
//! * (a) a [`quorate_core::CoreImage`] of the core (every field but its storage);
//! * (b) what the core could read from storage at that moment — the snapshot metadata, the
//!   hard state and the log after the snapshot ([`Base`]);
//! * (c) the persist batches handed out in `Ready`s and not yet reported persisted
//!   ([`Pending`]); a replay writes each into its in-memory store when the recorded completion
//!   arrives, as the node's group committer does.
//!
//! (b) comes from a **mirror**: an in-memory store ([`MemStore`], the one a replay uses) that
//! the recorder updates exactly as a replay does — a `Ready`'s persist batch (log entries,
//! hard state, a snapshot install or a compaction) is written into it when its `Persisted`
//! input is recorded — so a checkpoint is what a replay will have, not a racy read of the
//! node's RocksDB. The mirror is built from the real storage when the process starts. It
//! holds the log after the snapshot, which compaction keeps small. While that log holds more
//! than half the budget, checkpoints are skipped (a dump says so in its note) until a
//! compaction shrinks it; if it outgrows the whole budget the mirror is dropped, and rebuilt
//! from the real storage after a compaction (before one, only once in
//! [`REBUILD_RETRY_SEGMENTS`] segments: the log has most likely only grown, and a rebuild
//! reads up to the whole budget on the driver's thread) at a moment when every persist batch
//! handed out was reported persisted (then the storage holds exactly what the core was told is durable;
//! under continuous load such a moment may be rare). Size the budget so that
//! `raft.snapshot_entries` entries fit in half of it.
//!
//! A new segment starts every `budget / 4` bytes of inputs (or [`INPUTS_MAX`]` / 4` inputs);
//! when the ring holds more than the budget (`limits.flight_recorder_mb`) or [`INPUTS_MAX`]
//! inputs, its oldest segments are dropped, always keeping the two newest. A dump writes the
//! oldest checkpoint the ring still holds and every input after it, so it covers between a
//! quarter of the budget and the whole budget of the most recent inputs.
//!
//! **Memory**: the ring holds at most the budget, or two segments when checkpoints are large
//! (a checkpoint is skipped when it would exceed half the budget, so two segments are at most
//! 1.5 × the budget); the mirror at most the budget; batches in flight are bounded by the
//! node's persist queue. In all, under 2.5 × `limits.flight_recorder_mb` (default 64 MiB).
//!
//! ## File format
//!
//! `"QFLT"`, format `u32` LE, the core-image format `u32` LE
//! ([`quorate_core::CORE_IMAGE_FORMAT`] of the build that wrote it), then frames of
//! `length u32 LE | CRC-32 u32 LE | postcard body`: the [`Header`], then
//! `Option<`[`Checkpoint`]`>`, then one frame per [`Input`]; last the marker `"QEND"` and the
//! number of inputs (`u64` LE), so a file cut at a frame boundary is still seen as truncated.
//! This is format 4. A recording whose checkpoint carries core images of another format is
//! refused by name (postcard is not self-describing: an image of another format would fail to
//! decode or, worse, decode into another state); so is format 3 (the same layout without the
//! core-image format, written by quorate 0.1.0, whose images are of core-image format 1).
//! Format 2 files (written before the ring: a window from process start, the base in the
//! header, no core image) are still read and replayed from a fresh core. Reading checks every
//! bound and checksum and never panics: a truncated or damaged file is a [`FlightError`].

use quorate_core::{
    ConfChange, Config as CoreConfig, CoreError, CoreImage, Instant, IoId, Message, Raft, ReadId, ReadLevel, Ready,
};
use quorate_log::{Data, Entry, EntryId, LogIndex, LogStorage, NodeId, SnapshotMeta, Term};
use quorate_storage::{BATCH_BYTES_MAX, BATCH_ENTRIES_MAX, DurableLog, MemStore, PersistBatch};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::ops::Deref;
use std::path::{Path, PathBuf};

pub use quorate_api::flight::{
    BASE_BYTES_MAX, Base, Checkpoint, Dump, FILE_BYTES_MAX, FRAME_BYTES_MAX, FlightError, Header, INPUT_BYTES_MAX,
    INPUTS_MAX, Input, Origin, Pending, RecordedConfig, SEGMENTS, decode_dump, encode_dump,
};
use quorate_api::flight::{END, FORMAT, MAGIC, push_frame};
#[cfg(test)]
use quorate_api::flight::{FORMAT_WINDOW, TRAILER_BYTES};

/// The batch the node writes for a recorded persist request (as [`persist_batch`]).
#[must_use]
pub(crate) fn pending_batch(p: &Pending) -> PersistBatch {
    PersistBatch {
        hard_state: p.hard_state,
        truncate_from: p.entries.first().map(|e| e.index),
        entries: p.entries.clone(),
        install: p.install.clone(),
        compact: p.compact.clone(),
        skip_fsync: !p.sync,
    }
}

/// Most persist batches in flight the recorder tracks (beyond, the mirror is dropped).
pub(crate) const PENDING_MAX: usize = 65_536;
/// While the mirror is dropped for its size (or a rebuild failed) and no compaction came, a
/// checkpoint tries a rebuild only once in this many segments: a rebuild reads up to the whole
/// budget on the driver's thread, and before a compaction the log has most likely only grown —
/// but a compaction the recorder did not see (handed out in a batch dropped with the mirror)
/// or a transient read error must not stop checkpoints for good.
pub(crate) const REBUILD_RETRY_SEGMENTS: u32 = 16;
/// Dump files kept in the flight directory; older ones are deleted when a new one is written.
pub(crate) const DUMPS_KEPT: usize = 16;
/// Dumps written on invariant violations per process (the first ones matter).
pub(crate) const VIOLATION_DUMPS_MAX: u32 = 4;

/// The file a dump request is made with, in the flight directory (the fallback of
/// `quorate debug flight-dump --data-dir` when the client API cannot be used).
pub const REQUEST_FILE: &str = "dump-request";

/// CRC-32 of a value's `Debug` text, streamed (no allocation).
fn debug_digest(v: &impl std::fmt::Debug) -> u32 {
    struct H(crc32fast::Hasher);
    impl std::fmt::Write for H {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0.update(s.as_bytes());
            Ok(())
        }
    }
    let mut h = H(crc32fast::Hasher::new());
    let _ = std::fmt::Write::write_fmt(&mut h, format_args!("{v:?}"));
    h.0.finalize()
}

/// A digest of everything a `Ready` asks for. Bulky parts (messages, entries) are hashed in
/// their postcard encoding, the rest as `Debug` text.
fn ready_digest(rd: &Ready, scratch: &mut Vec<u8>) -> u32 {
    let mut h = crc32fast::Hasher::new();
    let mut bulk = |v: &dyn erased::Encode, h: &mut crc32fast::Hasher| {
        scratch.clear();
        v.encode_into(scratch);
        h.update(&(scratch.len() as u64).to_le_bytes());
        h.update(scratch);
    };
    bulk(&rd.messages, &mut h);
    bulk(&rd.committed, &mut h);
    if let Some(p) = &rd.persist {
        h.update(&[1]);
        bulk(&p.entries, &mut h);
        let small = (p.io.0, p.hard_state, p.sync, &p.install, &p.compact);
        h.update(&debug_digest(&small).to_le_bytes());
    }
    let rest = (&rd.reads, &rd.failed_reads, &rd.take_snapshot, &rd.send_snapshots);
    h.update(&debug_digest(&rest).to_le_bytes());
    h.finalize()
}

mod erased {
    /// Postcard encoding behind a trait object (so one closure hashes several types).
    pub(super) trait Encode {
        fn encode_into(&self, out: &mut Vec<u8>);
    }
    impl<T: serde::Serialize> Encode for T {
        fn encode_into(&self, out: &mut Vec<u8>) {
            let buf = std::mem::take(out);
            // Encoding into a Vec cannot fail for these types; an error leaves the buffer
            // empty, which still hashes deterministically.
            *out = postcard::to_extend(self, buf).unwrap_or_default();
        }
    }
}

/// The persist batch the node writes for a `Ready`'s `Persist` (as the driver builds it).
#[must_use]
pub(crate) fn persist_batch(p: &quorate_core::Persist) -> PersistBatch {
    PersistBatch {
        hard_state: p.hard_state,
        truncate_from: p.entries.first().map(|e| e.index),
        entries: p.entries.clone(),
        install: p.install.clone(),
        compact: p.compact.clone(),
        skip_fsync: !p.sync,
    }
}

/// One segment of the ring: a checkpoint (if one could be taken) and the inputs after it.
struct Segment {
    /// The postcard bytes of its [`Checkpoint`].
    checkpoint: Option<Vec<u8>>,
    /// Inputs recorded since process start before its first input.
    first_input: u64,
    /// Its inputs, as frames.
    frames: Vec<u8>,
    inputs: usize,
}

impl Segment {
    fn bytes(&self) -> usize {
        self.frames.len() + self.checkpoint.as_ref().map_or(0, Vec::len)
    }
}

/// The ring, the mirror and the dump bookkeeping.
struct Recorder {
    node: u64,
    config: RecordedConfig,
    start: Instant,
    on: bool,
    budget: usize,
    ring: VecDeque<Segment>,
    ring_bytes: usize,
    ring_inputs: usize,
    /// Inputs recorded since process start.
    next_input: u64,
    /// What a replay's storage holds (see the module docs); `None`: dropped (see `note`).
    mirror: Option<MemStore>,
    mirror_bytes: u64,
    /// Batches handed out, not yet reported persisted (tracked while the mirror is kept).
    pending: VecDeque<Pending>,
    /// The last batch id handed out and the last reported persisted.
    issued_io: u64,
    persisted_io: u64,
    /// Why the last checkpoint could not be taken (empty: it was).
    note: String,
    /// Why the mirror was dropped (while it is).
    mirror_lost: String,
    /// A compaction or snapshot install was handed out since the mirror was dropped (so a
    /// rebuild may now fit).
    compacted: bool,
    /// The mirror was dropped because the log after the snapshot outgrew the budget, or a
    /// rebuild failed: before a compaction, a checkpoint tries a rebuild only once in
    /// [`REBUILD_RETRY_SEGMENTS`] (`rebuild_waits` counts the ones that did not).
    outgrown: bool,
    rebuild_waits: u32,
    /// Checkpoints taken and skipped since the process started.
    taken: u64,
    skipped: u64,
    /// Mirror rebuilds tried (each reads the log after the snapshot from the storage), and
    /// the compactions or installs handed out while the mirror was dropped.
    rebuilds: u64,
    compactions_while_dropped: u64,
    /// Times the log outgrew the mirror (and it was dropped).
    outgrowths: u64,
    dir: Option<PathBuf>,
    dumped_halt: bool,
    violations_seen: u64,
    violation_dumps: u32,
    dumps_written: u64,
    /// A dump requested through the client API is being written (see `answer_dump_request`).
    writing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    scratch: Vec<u8>,
}

impl Recorder {
    /// The mirror is dropped beyond this (the budget).
    fn mirror_max(&self) -> u64 {
        self.budget as u64
    }

    /// Checkpoints are skipped while the mirror holds more than this (half the budget).
    fn checkpoint_base_max(&self) -> u64 {
        (self.budget / 2) as u64
    }

    fn record(&mut self, input: &Input) {
        if !self.on {
            return;
        }
        let Some(seg) = self.ring.back_mut() else { return };
        let before = seg.frames.len();
        push_frame(&mut seg.frames, input);
        seg.inputs += 1;
        self.ring_bytes += seg.frames.len() - before;
        self.ring_inputs += 1;
        self.next_input += 1;
    }

    fn segment_full(&self) -> bool {
        self.ring.back().is_some_and(|s| s.frames.len() >= self.budget / SEGMENTS || s.inputs >= INPUTS_MAX / SEGMENTS)
    }

    fn lose_mirror(&mut self, why: String) {
        self.outgrown = false;
        if self.mirror.take().is_some() {
            tracing::warn!(reason = %why, "flight recorder: checkpoints paused");
        }
        // A compaction or install handed out and not yet persisted still shrinks the log.
        let compacts = self.pending.iter().filter(|p| p.compact.is_some() || p.install.is_some()).count() as u64;
        self.compacted |= compacts > 0;
        self.compactions_while_dropped += compacts;
        self.pending.clear();
        self.mirror_bytes = 0;
        self.mirror_lost = why;
    }

    fn on_ready(&mut self, rd: &Ready) {
        let Some(p) = &rd.persist else { return };
        self.issued_io = p.io.0;
        if self.mirror.is_none() {
            let compacts = p.compact.is_some() || p.install.is_some();
            self.compacted |= compacts;
            self.compactions_while_dropped += u64::from(compacts);
            return;
        }
        if self.pending.len() >= PENDING_MAX {
            self.lose_mirror(format!("more than {PENDING_MAX} persist batches in flight"));
            return;
        }
        self.pending.push_back(Pending::of(p));
    }

    /// As a replay does: batches up to `io` are durable, in order.
    fn on_persisted(&mut self, io: u64) {
        self.persisted_io = io;
        let Some(mirror) = &self.mirror else { return };
        let mut measure = false;
        let mut added = 0u64;
        let mut failed = None;
        // Bounded by the pending queue (PENDING_MAX).
        while self.pending.front().is_some_and(|p| p.io <= io) {
            let Some(p) = self.pending.pop_front() else { break };
            let last = mirror.last_index();
            measure |= p.install.is_some() || p.compact.is_some() || p.entries.first().is_some_and(|e| e.index <= last);
            added += p.entries.iter().map(Entry::size_bytes).sum::<u64>();
            if let Err(e) = mirror.write(pending_batch(&p)) {
                failed = Some(format!("the mirror refused persist batch {}: {e}", p.io));
                break;
            }
        }
        if let Some(why) = failed {
            self.lose_mirror(why);
            return;
        }
        self.mirror_bytes = if measure {
            match log_bytes(mirror, self.mirror_max()) {
                Ok(b) => b,
                // Over the budget (the mirror is in memory: nothing else fails here).
                Err(why) => return self.outgrow_mirror(why),
            }
        } else {
            self.mirror_bytes + added
        };
        if self.mirror_bytes > self.mirror_max() {
            let why = format!(
                "the log after the snapshot outgrew the budget ({} bytes): the mirror was dropped, and is \
                 rebuilt after a compaction at a moment with no persist batch in flight",
                self.mirror_max()
            );
            self.outgrow_mirror(why);
        }
    }

    /// Drops the mirror because the log after the snapshot outgrew the budget.
    fn outgrow_mirror(&mut self, why: String) {
        self.lose_mirror(why);
        self.outgrown = true;
        self.outgrowths += 1;
    }

    /// Builds the mirror from the core's storage. Only when nothing is in flight (every batch
    /// handed out was reported persisted): then the storage holds exactly what the core was
    /// told is durable.
    fn rebuild_mirror<S: LogStorage>(&mut self, raft: &Raft<S>) -> Result<(), String> {
        debug_assert!(self.issued_io <= self.persisted_io);
        self.compacted = false;
        self.rebuild_waits = 0;
        self.rebuilds += 1;
        // Until it succeeds, the next try waits (the log too large again, or the storage
        // failing to read it: neither is worth a read at every segment).
        self.outgrown = true;
        let built = capture_base(raft.storage(), self.mirror_max())
            .and_then(|base| store_from_base(&base).map(|m| (base, m)).map_err(|e| e.to_string()));
        let (base, mirror) = match built {
            Ok(b) => b,
            Err(why) => {
                let why = format!("rebuilding the mirror failed: {why}");
                self.mirror_lost.clone_from(&why);
                return Err(why);
            }
        };
        self.mirror_bytes = base.entries.iter().map(Entry::size_bytes).sum();
        self.mirror = Some(mirror);
        self.mirror_lost.clear();
        self.pending.clear();
        self.outgrown = false;
        Ok(())
    }

    /// A checkpoint of `raft` now, as postcard bytes.
    fn checkpoint<S: LogStorage>(&mut self, raft: &Raft<S>) -> Result<Vec<u8>, String> {
        if self.mirror.is_none() {
            if self.outgrown && !self.compacted && self.rebuild_waits < REBUILD_RETRY_SEGMENTS {
                // Most likely the log has only grown since: reading it again (up to the whole
                // budget, on the driver's thread) would fail the same way.
                self.rebuild_waits += 1;
                return Err(self.mirror_lost.clone());
            }
            if self.issued_io > self.persisted_io {
                return Err(format!("{} (persist batches in flight: not now)", self.mirror_lost));
            }
            self.rebuild_mirror(raft)?;
        }
        let Some(mirror) = &self.mirror else { return Err("no mirror".into()) };
        if self.mirror_bytes > self.checkpoint_base_max() {
            return Err(format!(
                "the log after the snapshot holds more than {} bytes (half the budget); checkpoints resume \
                 once it is compacted",
                self.checkpoint_base_max()
            ));
        }
        let base = capture_base(mirror, self.checkpoint_base_max())?;
        let image = postcard::to_allocvec(&raft.image()).map_err(|e| format!("the core image does not encode: {e}"))?;
        let cp = Checkpoint { at: self.next_input, image, base, pending: self.pending.iter().cloned().collect() };
        let bytes = postcard::to_allocvec(&cp).map_err(|e| format!("the checkpoint does not encode: {e}"))?;
        if bytes.len() > self.budget / 2 {
            return Err(format!(
                "a checkpoint of {} bytes exceeds half the budget ({} bytes)",
                bytes.len(),
                self.budget / 2
            ));
        }
        Ok(bytes)
    }

    /// Starts a new segment at a checkpoint of `raft`, then drops what the budget cannot hold.
    fn roll<S: LogStorage>(&mut self, raft: &Raft<S>) {
        let checkpoint = match self.checkpoint(raft) {
            Ok(b) => {
                self.note.clear();
                self.taken += 1;
                Some(b)
            }
            Err(why) => {
                self.skipped += 1;
                if self.note != why {
                    tracing::warn!(reason = %why, "flight recorder: checkpoint skipped");
                }
                self.note = why;
                None
            }
        };
        let seg = Segment { checkpoint, first_input: self.next_input, frames: Vec::new(), inputs: 0 };
        self.ring_bytes += seg.bytes();
        self.ring.push_back(seg);
        // Bounded: each turn removes a segment.
        while self.ring.len() > 2 && (self.ring_bytes > self.budget || self.ring_inputs > INPUTS_MAX) {
            self.pop_oldest();
        }
        // Inputs before the oldest checkpoint cannot be replayed.
        while self.ring.len() > 1
            && self.ring.front().is_some_and(|s| s.checkpoint.is_none())
            && self.ring.iter().any(|s| s.checkpoint.is_some())
        {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some(s) = self.ring.pop_front() {
            self.ring_bytes -= s.bytes();
            self.ring_inputs -= s.inputs;
        }
    }

    /// The segments a dump holds: from the oldest with a checkpoint (all if none has one).
    fn dumped(&self) -> (usize, u64) {
        let from = self.ring.iter().position(|s| s.checkpoint.is_some()).unwrap_or(0);
        let inputs = self.ring.iter().skip(from).map(|s| s.inputs as u64).sum();
        (from, inputs)
    }

    /// Writes the dump: header, the oldest checkpoint, every input after it, the trailer.
    fn write_to(&self, out: &mut impl Write, reason: &str) -> std::io::Result<u64> {
        let (from, inputs) = self.dumped();
        let first = self.ring.get(from);
        let checkpoint = first.and_then(|s| s.checkpoint.as_deref());
        let mut note = self.note.clone();
        if checkpoint.is_none() {
            note = format!("no checkpoint is kept: {}", if note.is_empty() { "recorder off" } else { &note });
        }
        let header = Header {
            node: self.node,
            reason: reason.to_string(),
            config: self.config.clone(),
            start: self.start,
            first_input: first.map_or(self.next_input, |s| s.first_input),
            note,
        };
        out.write_all(MAGIC)?;
        out.write_all(&FORMAT.to_le_bytes())?;
        out.write_all(&quorate_core::CORE_IMAGE_FORMAT.to_le_bytes())?;
        let mut frame = Vec::new();
        push_frame(&mut frame, &header);
        out.write_all(&frame)?;
        // `Option<Checkpoint>` in postcard: a tag byte, then the checkpoint's own bytes.
        let (tag, body): (u8, &[u8]) = match checkpoint {
            Some(b) => (1, b),
            None => (0, &[]),
        };
        let mut crc = crc32fast::Hasher::new();
        crc.update(&[tag]);
        crc.update(body);
        let len = u32::try_from(1 + body.len()).map_err(std::io::Error::other)?;
        out.write_all(&len.to_le_bytes())?;
        out.write_all(&crc.finalize().to_le_bytes())?;
        out.write_all(&[tag])?;
        out.write_all(body)?;
        for s in self.ring.iter().skip(from) {
            out.write_all(&s.frames)?;
        }
        out.write_all(END)?;
        out.write_all(&inputs.to_le_bytes())?;
        Ok(inputs)
    }
}

/// A dump written to a file.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub(crate) struct Dumped {
    /// The file.
    pub(crate) path: PathBuf,
    /// Inputs it holds (after its checkpoint).
    pub(crate) inputs: u64,
}

/// A dump encoded in memory, to be written to the flight directory (off the driver's task).
#[derive(Debug)]
pub(crate) struct PreparedDump {
    dir: PathBuf,
    name: String,
    bytes: Vec<u8>,
    inputs: u64,
}

impl PreparedDump {
    /// Writes the file (fsynced, then renamed into place) and deletes the oldest dumps beyond
    /// [`DUMPS_KEPT`].
    pub(crate) fn write(self) -> Result<Dumped, FlightError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| FlightError::Io { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let path = self.dir.join(&self.name);
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&self.bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        prune_dumps(&self.dir);
        Ok(Dumped { path, inputs: self.inputs })
    }
}

/// Keeps the newest [`DUMPS_KEPT`] `flight-*.qflt` files of `dir` (best effort, bounded).
fn prune_dumps(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let mut dumps: Vec<(std::time::SystemTime, PathBuf)> = rd
        .take(10_000)
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with("flight-") && n.ends_with(".qflt")
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if dumps.len() <= DUMPS_KEPT {
        return;
    }
    dumps.sort();
    for (_, p) in &dumps[..dumps.len() - DUMPS_KEPT] {
        let _ = std::fs::remove_file(p);
    }
}

/// The consensus core with a flight recorder around it: every call that changes the core goes
/// through a method of this type (there is no `DerefMut`), queries go to the core by `Deref`.
pub(crate) struct Recorded<S: LogStorage> {
    raft: Raft<S>,
    rec: Recorder,
}

impl<S: LogStorage> Deref for Recorded<S> {
    type Target = Raft<S>;
    fn deref(&self) -> &Raft<S> {
        &self.raft
    }
}

impl<S: LogStorage> std::fmt::Debug for Recorded<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorded")
            .field("inputs", &self.rec.ring_inputs)
            .field("segments", &self.rec.ring.len())
            .field("on", &self.rec.on)
            .finish_non_exhaustive()
    }
}

impl<S: LogStorage> Recorded<S> {
    /// Builds the core from `storage` (as [`Raft::new`]) and starts the ring with a first
    /// checkpoint. `dir` is where dumps go (`None`: only [`Recorded::dump_bytes`]).
    ///
    /// `budget` bounds the bytes the ring keeps (inputs and checkpoints; see the module docs
    /// for the whole memory bound); 0 turns recording off.
    pub(crate) fn new(
        cfg: CoreConfig,
        storage: S,
        now: Instant,
        dir: Option<PathBuf>,
        budget: usize,
    ) -> Result<Recorded<S>, CoreError> {
        let config = RecordedConfig::capture(&cfg);
        let node = cfg.id.get();
        let budget = budget.min(INPUT_BYTES_MAX);
        let raft = Raft::new(cfg, storage, now)?;
        let on = budget > 0;
        let rec = Recorder {
            node,
            config,
            start: now,
            on,
            budget,
            ring: VecDeque::new(),
            ring_bytes: 0,
            ring_inputs: 0,
            next_input: 0,
            mirror: None,
            mirror_bytes: 0,
            pending: VecDeque::new(),
            issued_io: 0,
            persisted_io: 0,
            note: if on { String::new() } else { "turned off (limits.flight_recorder_mb = 0)".into() },
            compacted: false,
            outgrown: false,
            rebuild_waits: 0,
            rebuilds: 0,
            compactions_while_dropped: 0,
            outgrowths: 0,
            mirror_lost: String::new(),
            taken: 0,
            skipped: 0,
            dir,
            dumped_halt: false,
            violations_seen: 0,
            violation_dumps: 0,
            dumps_written: 0,
            writing: std::sync::Arc::default(),
            scratch: Vec::new(),
        };
        let mut r = Recorded { raft, rec };
        if on {
            r.rec.roll(&r.raft);
        }
        Ok(r)
    }

    /// Inputs the ring holds now.
    #[cfg(test)]
    #[must_use]
    pub(crate) fn recorded_inputs(&self) -> usize {
        self.rec.ring_inputs
    }

    /// Inputs recorded since the process started (kept or not).
    #[cfg(test)]
    #[must_use]
    pub(crate) fn inputs_total(&self) -> u64 {
        self.rec.next_input
    }

    /// Segments in the ring, and how many of them start with a checkpoint.
    #[cfg(test)]
    #[must_use]
    pub(crate) fn segments(&self) -> (usize, usize) {
        (self.rec.ring.len(), self.rec.ring.iter().filter(|s| s.checkpoint.is_some()).count())
    }

    /// Checkpoints taken and skipped since the process started.
    #[cfg(test)]
    #[must_use]
    pub(crate) fn checkpoints(&self) -> (u64, u64) {
        (self.rec.taken, self.rec.skipped)
    }

    /// Mirror rebuilds tried since the process started (the first builds it), the
    /// compactions or snapshot installs handed out while the mirror was dropped, and the times
    /// the log outgrew the mirror.
    #[cfg(test)]
    #[must_use]
    pub(crate) fn mirror_rebuilds(&self) -> (u64, u64, u64) {
        (self.rec.rebuilds, self.rec.compactions_while_dropped, self.rec.outgrowths)
    }

    /// Bytes the ring holds (inputs and checkpoints).
    #[cfg(test)]
    #[must_use]
    pub(crate) fn ring_bytes(&self) -> usize {
        self.rec.ring_bytes
    }

    fn after(&mut self, input: Input) {
        self.rec.record(&input);
        if self.rec.on && self.rec.segment_full() {
            self.rec.roll(&self.raft);
        }
        if let Some(h) = self.raft.halted() {
            let reason = format!("halt: {h}");
            self.dump_on_halt(&reason);
        }
    }

    /// Dumps the recording once, on the first halt (the core's, or its driver's).
    fn dump_on_halt(&mut self, reason: &str) {
        if self.rec.dumped_halt {
            return;
        }
        self.rec.dumped_halt = true;
        match self.dump(reason) {
            Ok(Some(d)) => tracing::error!(path = %d.path.display(), "halted; flight recording dumped"),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "halted; flight recording could not be dumped"),
        }
    }

    /// The recording (from the oldest checkpoint kept), as a dump file's bytes.
    #[must_use]
    pub(crate) fn dump_bytes(&self, reason: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.rec.ring_bytes + 256);
        // Writing into a Vec cannot fail.
        let _ = self.rec.write_to(&mut out, reason);
        out
    }

    /// Encodes a dump for [`PreparedDump::write`] (`None` without a flight directory).
    pub(crate) fn prepare_dump(&mut self, reason: &str) -> Option<PreparedDump> {
        let dir = self.rec.dir.clone()?;
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        self.rec.dumps_written += 1;
        let name = format!("flight-{}-{stamp}-{}.qflt", self.rec.node, self.rec.dumps_written);
        let bytes = self.dump_bytes(reason);
        let inputs = self.rec.dumped().1;
        Some(PreparedDump { dir, name, bytes, inputs })
    }

    /// Writes the recording into the flight directory; returns its path and input count
    /// (`None` without a directory).
    pub(crate) fn dump(&mut self, reason: &str) -> Result<Option<Dumped>, FlightError> {
        self.prepare_dump(reason).map(PreparedDump::write).transpose()
    }

    /// Dumps the recording when `violations_total` (the process's runtime invariant
    /// violations so far) grew since the last call: at most [`VIOLATION_DUMPS_MAX`] times.
    pub(crate) fn dump_on_violations(&mut self, violations_total: u64) {
        if violations_total <= self.rec.violations_seen {
            return;
        }
        self.rec.violations_seen = violations_total;
        if self.rec.violation_dumps >= VIOLATION_DUMPS_MAX {
            return;
        }
        self.rec.violation_dumps += 1;
        match self.dump("invariant violation") {
            Ok(Some(d)) => tracing::error!(path = %d.path.display(), "invariant violated; flight recording dumped"),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "invariant violated; flight recording could not be dumped"),
        }
    }

    /// Answers a dump request left in the flight directory by `quorate debug flight-dump
    /// --data-dir` (called from the node's periodic sweep): writes the dump and names it in
    /// `dump-request.done`.
    pub(crate) fn poll_dump_request(&mut self) {
        let Some(dir) = self.rec.dir.clone() else { return };
        let req = dir.join(REQUEST_FILE);
        if !req.exists() {
            return;
        }
        let _ = std::fs::remove_file(&req);
        let answer = match self.dump("request") {
            Ok(Some(d)) => d.path.display().to_string(),
            Ok(None) => "error: no flight directory".into(),
            Err(e) => format!("error: {e}"),
        };
        let done = dir.join(format!("{REQUEST_FILE}.done"));
        let tmp = dir.join(format!("{REQUEST_FILE}.done.tmp"));
        if std::fs::write(&tmp, answer).and_then(|()| std::fs::rename(&tmp, &done)).is_err() {
            tracing::warn!("cannot answer a flight dump request");
        }
    }

    /// [`Raft::handle_message`], recorded.
    pub(crate) fn handle_message(&mut self, now: Instant, m: Message) {
        let input = self.rec.on.then(|| Input::Message { now, m: m.clone() });
        self.raft.handle_message(now, m);
        if let Some(i) = input {
            self.after(i);
        }
    }

    /// [`Raft::handle_timeout`], recorded.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        self.raft.handle_timeout(now);
        self.after(Input::Timeout { now });
    }

    /// [`Raft::propose`], recorded.
    pub(crate) fn propose(&mut self, now: Instant, data: Data) -> Result<EntryId, quorate_core::ProposeError> {
        let kept = self.rec.on.then(|| data.clone());
        let r = self.raft.propose(now, data);
        if let Some(data) = kept {
            self.after(Input::Propose { now, data, out: debug_digest(&r) });
        }
        r
    }

    /// [`Raft::read`], recorded.
    pub(crate) fn read(&mut self, now: Instant, id: ReadId, level: ReadLevel) -> Result<(), quorate_core::ReadError> {
        let r = self.raft.read(now, id, level);
        self.after(Input::Read { now, id, level, out: debug_digest(&r) });
        r
    }

    /// [`Raft::transfer_leadership`], recorded.
    pub(crate) fn transfer_leadership(&mut self, now: Instant, to: NodeId) -> Result<(), quorate_core::TransferError> {
        let r = self.raft.transfer_leadership(now, to);
        self.after(Input::Transfer { now, to, out: debug_digest(&r) });
        r
    }

    /// [`Raft::propose_conf_change`], recorded.
    pub(crate) fn propose_conf_change(
        &mut self,
        now: Instant,
        change: ConfChange,
    ) -> Result<EntryId, quorate_core::ConfChangeError> {
        let kept = self.rec.on.then(|| change.clone());
        let r = self.raft.propose_conf_change(now, change);
        if let Some(change) = kept {
            self.after(Input::ConfChange { now, change, out: debug_digest(&r) });
        }
        r
    }

    /// [`Raft::snapshot_taken`], recorded.
    pub(crate) fn snapshot_taken(&mut self, now: Instant, meta: SnapshotMeta) {
        let kept = self.rec.on.then(|| meta.clone());
        self.raft.snapshot_taken(now, meta);
        if let Some(meta) = kept {
            self.after(Input::SnapshotTaken { now, meta });
        }
    }

    /// [`Raft::snapshot_skipped`], recorded.
    pub(crate) fn snapshot_skipped(&mut self, now: Instant) {
        self.raft.snapshot_skipped(now);
        self.after(Input::SnapshotSkipped { now });
    }

    /// [`Raft::install_snapshot`], recorded.
    pub(crate) fn install_snapshot(
        &mut self,
        now: Instant,
        from: NodeId,
        term: Term,
        meta: SnapshotMeta,
    ) -> Result<bool, quorate_core::SnapshotError> {
        let kept = self.rec.on.then(|| meta.clone());
        let r = self.raft.install_snapshot(now, from, term, meta);
        if let Some(meta) = kept {
            self.after(Input::InstallSnapshot { now, from, term, meta, out: debug_digest(&r) });
        }
        r
    }

    /// [`Raft::snapshot_send_failed`], recorded.
    pub(crate) fn snapshot_send_failed(&mut self, now: Instant, to: NodeId) {
        self.raft.snapshot_send_failed(now, to);
        self.after(Input::SnapshotSendFailed { now, to });
    }

    /// [`Raft::persisted`], recorded.
    pub(crate) fn persisted(&mut self, now: Instant, io: IoId) {
        self.raft.persisted(now, io);
        if self.rec.on {
            self.rec.on_persisted(io.0);
            // The mirror was dropped (the log outgrew it) and the log was compacted since:
            // rebuild it as soon as nothing is in flight, so that checkpoints resume.
            if self.rec.mirror.is_none() && self.rec.compacted && self.rec.issued_io <= io.0 {
                match self.rec.rebuild_mirror(&self.raft) {
                    Ok(()) => tracing::info!("flight recorder: checkpoints resume"),
                    Err(why) => self.rec.note = why,
                }
            }
        }
        self.after(Input::Persisted { now, io: io.0 });
    }

    /// [`Raft::ready`], recorded as a digest of what it returned.
    pub(crate) fn ready(&mut self) -> Ready {
        let rd = self.raft.ready();
        if self.rec.on {
            let mut scratch = std::mem::take(&mut self.rec.scratch);
            let digest = ready_digest(&rd, &mut scratch);
            scratch.clear();
            self.rec.scratch = scratch;
            self.rec.on_ready(&rd);
            self.after(Input::Ready { digest });
        }
        rd
    }
}

/// The recorded core as the runtime's core: a `quorate_runtime::Replica` started with
/// `Replica::with_core` and [`Recorded::new`] records every input of its core, as the node's
/// own driver does (the flight recorder under the runtime, issue 19). Each method is the
/// recorded one of the same name; storage writes are not inputs.
impl<S: LogStorage + Send> quorate_runtime::Core<S> for Recorded<S> {
    fn raft(&self) -> &Raft<S> {
        &self.raft
    }
    fn storage_mut(&mut self) -> &mut S {
        self.raft.storage_mut()
    }
    fn handle_message(&mut self, now: Instant, m: Message) {
        Recorded::handle_message(self, now, m);
    }
    fn handle_timeout(&mut self, now: Instant) {
        Recorded::handle_timeout(self, now);
    }
    fn propose(&mut self, now: Instant, data: Data) -> Result<EntryId, quorate_core::ProposeError> {
        Recorded::propose(self, now, data)
    }
    fn propose_conf_change(
        &mut self,
        now: Instant,
        change: quorate_core::ConfChange,
    ) -> Result<EntryId, quorate_core::ConfChangeError> {
        Recorded::propose_conf_change(self, now, change)
    }
    fn read(
        &mut self,
        now: Instant,
        id: quorate_core::ReadId,
        level: quorate_core::ReadLevel,
    ) -> Result<(), quorate_core::ReadError> {
        Recorded::read(self, now, id, level)
    }
    fn transfer_leadership(&mut self, now: Instant, to: NodeId) -> Result<(), quorate_core::TransferError> {
        Recorded::transfer_leadership(self, now, to)
    }
    fn snapshot_taken(&mut self, now: Instant, meta: SnapshotMeta) {
        Recorded::snapshot_taken(self, now, meta);
    }
    fn snapshot_skipped(&mut self, now: Instant) {
        Recorded::snapshot_skipped(self, now);
    }
    fn install_snapshot(
        &mut self,
        now: Instant,
        from: NodeId,
        term: Term,
        meta: SnapshotMeta,
    ) -> Result<bool, quorate_core::SnapshotError> {
        Recorded::install_snapshot(self, now, from, term, meta)
    }
    fn snapshot_send_failed(&mut self, now: Instant, to: NodeId) {
        Recorded::snapshot_send_failed(self, now, to);
    }
    fn persisted(&mut self, now: Instant, io: quorate_core::IoId) {
        Recorded::persisted(self, now, io);
    }
    fn replica_halted(&mut self, reason: &str) {
        self.dump_on_halt(&format!("halt: {reason}"));
    }
    fn ready(&mut self) -> Ready {
        Recorded::ready(self)
    }
}

/// Answers the admin request `FlightDump`: the dump is encoded here (the driver's task, so it
/// is consistent), written and fsynced on a blocking thread, and answered from there.
pub(crate) fn answer_dump_request<S: LogStorage>(core: &mut Recorded<S>, responder: crate::server::Responder) {
    use quorate_api::{ApiError, Response};
    if !core.rec.on {
        let e = ApiError::Refused("the flight recorder is off (limits.flight_recorder_mb = 0)".into());
        responder.send(Err(e), None);
        return;
    }
    // One dump written at a time: each holds a copy of the ring in memory until written.
    let writing = core.rec.writing.clone();
    if writing.swap(true, std::sync::atomic::Ordering::AcqRel) {
        let e = ApiError::Refused("a flight dump is being written; ask again in a moment".into());
        responder.send(Err(e), None);
        return;
    }
    let Some(prepared) = core.prepare_dump("request") else {
        writing.store(false, std::sync::atomic::Ordering::Release);
        responder.send(Err(ApiError::Unavailable("this node has no flight directory".into())), None);
        return;
    };
    tokio::task::spawn_blocking(move || {
        let written = prepared.write();
        writing.store(false, std::sync::atomic::Ordering::Release);
        let result = written
            .map(|d| Response::FlightDumped { path: d.path.display().to_string(), inputs: d.inputs })
            .map_err(|e| ApiError::Internal(format!("flight dump: {e}")));
        responder.send(result, None);
    });
}

/// Bytes of the log entries after the snapshot, failing beyond `budget`.
fn log_bytes<S: LogStorage>(storage: &S, budget: u64) -> Result<u64, String> {
    capture(storage, budget, false).map(|(_, bytes)| bytes)
}

/// What the core can read from `storage`: snapshot metadata, hard state and every log entry
/// after the snapshot (at most `budget` bytes of entries).
fn capture_base<S: LogStorage>(storage: &S, budget: u64) -> Result<Base, String> {
    let (entries, _) = capture(storage, budget, true)?;
    let snapshot = storage.snapshot_meta().map_err(|e| format!("cannot read the snapshot metadata: {e}"))?;
    let hard_state = storage.initial_state().map_err(|e| format!("cannot read the initial state: {e}"))?.hard_state;
    Ok(Base { snapshot, hard_state, entries })
}

fn capture<S: LogStorage>(storage: &S, budget: u64, keep: bool) -> Result<(Vec<Entry>, u64), String> {
    let budget = budget.min(BASE_BYTES_MAX);
    let floor = storage.snapshot_last().index;
    let last = storage.last_index();
    let mut entries = Vec::new();
    let mut next = floor.next();
    let mut bytes = 0u64;
    // Bounded: each call returns at least one entry or fails; the byte budget ends the loop.
    while next <= last {
        let chunk = storage
            .entries(next, last.next(), 4 << 20)
            .map_err(|e| format!("cannot read log entries from {next}: {e}"))?;
        let Some(end) = chunk.last().map(|e| e.index) else {
            return Err(format!("the log returned no entry at {next}"));
        };
        bytes += chunk.iter().map(Entry::size_bytes).sum::<u64>();
        if bytes > budget {
            return Err(format!(
                "the log after the snapshot holds more than {budget} bytes ({} entries); no checkpoint",
                last.0.saturating_sub(floor.0)
            ));
        }
        if keep {
            entries.extend(chunk);
        }
        next = end.next();
    }
    Ok((entries, bytes))
}

/// An in-memory store holding `base`, as a replay starts from.
fn store_from_base(base: &Base) -> Result<MemStore, FlightError> {
    let store = MemStore::new(base.snapshot.config.clone());
    if base.snapshot.last.index > LogIndex::ZERO {
        store
            .write(PersistBatch { install: Some(base.snapshot.clone()), ..PersistBatch::default() })
            .map_err(|e| FlightError::Replay(format!("base snapshot: {e}")))?;
    }
    // In batches the store takes (a log after the snapshot may hold more entries than one
    // batch), the hard state last: its commit index may be past the first batches' entries.
    let mut rest = base.entries.as_slice();
    loop {
        let mut n = 0;
        let mut bytes = 0u64;
        while n < rest.len() && n < BATCH_ENTRIES_MAX {
            let b = rest[n].size_bytes();
            if n > 0 && bytes + b > BATCH_BYTES_MAX / 2 {
                break;
            }
            bytes += b;
            n += 1;
        }
        let (chunk, after) = rest.split_at(n);
        rest = after;
        let last = rest.is_empty();
        store
            .write(PersistBatch {
                entries: chunk.to_vec(),
                hard_state: last.then_some(base.hard_state),
                ..PersistBatch::default()
            })
            .map_err(|e| FlightError::Replay(format!("base log: {e}")))?;
        if last {
            return Ok(store);
        }
    }
}

// ----- reading and replaying -----

/// Reads and checks a dump file.
pub fn read_dump(path: &Path) -> Result<Dump, FlightError> {
    let io = |source| FlightError::Io { path: path.to_path_buf(), source };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > FILE_BYTES_MAX {
        return Err(FlightError::Format(format!("file of {len} bytes exceeds {FILE_BYTES_MAX}")));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path).map_err(io)?.take(FILE_BYTES_MAX).read_to_end(&mut bytes).map_err(io)?;
    decode_dump(&bytes)
}

/// Where a replay first differed from the recording.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub struct Divergence {
    /// The input's position (0-based) in the recording.
    pub at: usize,
    /// Its kind.
    pub kind: &'static str,
    /// The recorded digest.
    pub recorded: u32,
    /// The replayed digest.
    pub replayed: u32,
}

/// What a replay found.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub struct ReplayReport {
    /// Inputs replayed.
    pub inputs: usize,
    /// `Ready` outputs compared.
    pub readies: usize,
    /// Outputs compared in all (results and `Ready`s).
    pub compared: usize,
    /// The first difference, if any (the replay stops there).
    pub divergence: Option<Divergence>,
    /// Inputs since the process started before the recording's first (not in the file).
    pub first_input: u64,
}

/// Re-runs a dump's inputs through a core restored from its checkpoint (format 2: a fresh
/// core built from its base) and compares every recorded output. Deterministic: the same dump
/// always gives the same report.
pub fn replay(dump: &Dump) -> Result<ReplayReport, FlightError> {
    let h = &dump.header;
    let (mut raft, mut pending) = match &dump.origin {
        None => return Err(FlightError::NotReplayable(format!("no checkpoint: {}", h.note))),
        Some(Origin::Start(base)) => {
            let raft = Raft::new(h.config.to_core()?, store_from_base(base)?, h.start)
                .map_err(|e| FlightError::Replay(format!("core: {e}")))?;
            (raft, VecDeque::new())
        }
        Some(Origin::Checkpoint(cp)) => {
            let image: CoreImage = postcard::from_bytes(&cp.image)
                .map_err(|e| FlightError::Format(format!("the checkpoint's core image does not decode: {e}")))?;
            if image.id().get() != h.node {
                return Err(FlightError::Format(format!("the core image is of node {}, not {}", image.id(), h.node)));
            }
            if cp.pending.len() > PENDING_MAX {
                return Err(FlightError::Format(format!("more than {PENDING_MAX} batches in flight")));
            }
            let raft = Raft::from_image(image, store_from_base(&cp.base)?)
                .map_err(|e| FlightError::Replay(format!("core image: {e}")))?;
            (raft, cp.pending.iter().map(|p| (p.io, pending_batch(p))).collect::<VecDeque<_>>())
        }
        Some(_) => return Err(FlightError::NotReplayable("an origin this build does not know".into())),
    };
    let mut scratch = Vec::new();
    let mut report = ReplayReport { inputs: 0, readies: 0, compared: 0, divergence: None, first_input: h.first_input };
    for (at, input) in dump.inputs.iter().enumerate() {
        let check = |recorded: u32, replayed: u32, report: &mut ReplayReport| {
            report.compared += 1;
            if recorded != replayed && report.divergence.is_none() {
                report.divergence = Some(Divergence { at, kind: input.kind(), recorded, replayed });
            }
        };
        match input.clone() {
            Input::Message { now, m } => raft.handle_message(now, m),
            Input::Timeout { now } => raft.handle_timeout(now),
            Input::Campaign { now } => raft.campaign_now(now),
            Input::Propose { now, data, out } => {
                let r = raft.propose(now, data);
                check(out, debug_digest(&r), &mut report);
            }
            Input::Read { now, id, level, out } => {
                let r = raft.read(now, id, level);
                check(out, debug_digest(&r), &mut report);
            }
            Input::Transfer { now, to, out } => {
                let r = raft.transfer_leadership(now, to);
                check(out, debug_digest(&r), &mut report);
            }
            Input::ConfChange { now, change, out } => {
                let r = raft.propose_conf_change(now, change);
                check(out, debug_digest(&r), &mut report);
            }
            Input::LeaveJoint { now, out } => {
                let r = raft.leave_joint(now);
                check(out, debug_digest(&r), &mut report);
            }
            Input::SnapshotTaken { now, meta } => raft.snapshot_taken(now, meta),
            Input::SnapshotSkipped { now } => raft.snapshot_skipped(now),
            Input::InstallSnapshot { now, from, term, meta, out } => {
                let r = raft.install_snapshot(now, from, term, meta);
                check(out, debug_digest(&r), &mut report);
            }
            Input::SnapshotSendFailed { now, to } => raft.snapshot_send_failed(now, to),
            Input::Persisted { now, io } => {
                // The group committer writes batches in order; all up to `io` are durable.
                while pending.front().is_some_and(|(id, _)| *id <= io) {
                    let Some((id, batch)) = pending.pop_front() else { break };
                    raft.storage()
                        .write(batch)
                        .map_err(|e| FlightError::Replay(format!("persist batch {id} at input {at}: {e}")))?;
                }
                raft.persisted(now, IoId(io));
            }
            Input::Ready { digest } => {
                let rd = raft.ready();
                report.readies += 1;
                check(digest, ready_digest(&rd, &mut scratch), &mut report);
                if let Some(p) = &rd.persist {
                    if pending.len() >= PENDING_MAX {
                        return Err(FlightError::Replay("too many unpersisted batches".into()));
                    }
                    pending.push_back((p.io.0, persist_batch(p)));
                }
            }
            other => {
                return Err(FlightError::Replay(format!(
                    "input {at} ({}) is of a kind this build cannot replay",
                    other.kind()
                )));
            }
        }
        report.inputs += 1;
        if report.divergence.is_some() {
            break;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests;
