//! The flight recorder: every input the node gives its consensus core, kept in a bounded
//! buffer, dumped to a file on request or when the node halts on an error, and replayed
//! through a fresh core (`quorate replay FILE`) that must reproduce the recorded outputs.
//!
//! ## What a dump covers
//!
//! A replay needs the core's state where the recording starts. The core's state is rebuilt
//! from storage only when the process starts, so **a recording window starts at process
//! start**: the recorder captures the core's configuration (with its random seed) and what
//! the core can read from storage then — the snapshot metadata, the hard state and every log
//! entry after the snapshot (at most the budget, `limits.flight_recorder_mb`; with a longer log
//! the recorder stays off for this process and says so in the log and in a dump). From then on it keeps every
//! call the driver makes into the core, in order, with its `now`: messages in, timeouts,
//! proposals, reads, leadership transfers, configuration changes, persistence completions and
//! snapshot events, the result of each call, and a digest of every `Ready`. The buffer is
//! bounded ([`INPUTS_MAX`] inputs, the budget in bytes): once full, recording stops and a
//! dump covers the window from process start to that point (it says how many later inputs
//! were not kept). To record a fresh window, restart the node.
//!
//! A replay rebuilds the storage the core saw from the base (an in-memory store) and writes
//! each `Ready`'s persist batch into it when the recorded completion for it arrives, as the
//! node's group committer does. The core reads only entries it was told are persisted, so
//! this reproduces what it read.
//!
//! ## File format
//!
//! `"QFLT"`, format `u32` LE, then frames of `length u32 LE | CRC-32 u32 LE | postcard body`:
//! the first frame is the [`Header`], every other frame one [`Input`]. Reading checks every
//! bound and checksum and never panics: a truncated or damaged file is a [`FlightError`].

use quorate_core::{
    ConfChange, Config as CoreConfig, CoreError, Instant, IoId, Message, Raft, ReadId, ReadLevel, Ready,
};
use quorate_log::{Data, Entry, EntryId, HardState, LogIndex, LogStorage, NodeId, SnapshotMeta, Term};
use quorate_storage::{DurableLog, MemStore, PersistBatch};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Most inputs kept in one recording window.
pub const INPUTS_MAX: usize = 1_000_000;
/// Most bytes of encoded inputs kept in one recording window (the node's
/// `limits.flight_recorder_mb` sets a smaller budget).
pub const INPUT_BYTES_MAX: usize = 1024 << 20;
/// Most bytes of log entries captured as the window's base (also bounded by the budget).
pub const BASE_BYTES_MAX: u64 = 1024 << 20;
/// Largest frame accepted when reading a dump.
pub const FRAME_BYTES_MAX: usize = BASE_BYTES_MAX as usize + (1 << 20);
/// Largest dump file accepted.
pub const FILE_BYTES_MAX: u64 = (BASE_BYTES_MAX + INPUT_BYTES_MAX as u64) * 2;

const MAGIC: &[u8; 4] = b"QFLT";
const FORMAT: u32 = 2;
/// Last bytes of every recording: this marker and the number of inputs (u64, little endian),
/// so that a file cut at a frame boundary is still seen as truncated.
const END: &[u8; 4] = b"QEND";
const TRAILER_BYTES: usize = 12;

fn push_trailer(out: &mut Vec<u8>, inputs: u64) {
    out.extend_from_slice(END);
    out.extend_from_slice(&inputs.to_le_bytes());
}
/// The file a dump request is made with, in the flight directory.
pub const REQUEST_FILE: &str = "dump-request";

/// Why a dump could not be read, written or replayed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlightError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a flight recording, or is damaged or cut short.
    #[error("not a valid flight recording: {0}")]
    Format(String),
    /// The recording cannot be replayed (no base was captured).
    #[error("the recording cannot be replayed: {0}")]
    NotReplayable(String),
    /// The replayed core could not be built or its storage refused a write.
    #[error("replay failed: {0}")]
    Replay(String),
}

/// The core's configuration, as recorded.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RecordedConfig {
    /// Node id.
    pub id: u64,
    /// Fields of [`quorate_core::Config`], durations in nanoseconds.
    pub election_timeout_min_ns: u64,
    /// See [`quorate_core::Config`].
    pub heartbeat_interval_ns: u64,
    /// See [`quorate_core::Config`].
    pub pre_vote: bool,
    /// See [`quorate_core::Config`].
    pub check_quorum: bool,
    /// See [`quorate_core::Config`].
    pub lease_clock_drift_max_ns: Option<u64>,
    /// See [`quorate_core::Config`].
    pub msg_bytes_max: u64,
    /// See [`quorate_core::Config`].
    pub inflight_msgs_max: u64,
    /// See [`quorate_core::Config`].
    pub inflight_bytes_max: u64,
    /// See [`quorate_core::Config`].
    pub uncommitted_bytes_max: u64,
    /// See [`quorate_core::Config`].
    pub apply_bytes_max: u64,
    /// See [`quorate_core::Config`].
    pub pending_reads_max: u64,
    /// See [`quorate_core::Config`].
    pub applied: LogIndex,
    /// See [`quorate_core::Config`].
    pub seed: u64,
    /// See [`quorate_core::Config`].
    pub snapshot_entries_threshold: u64,
    /// See [`quorate_core::Config`].
    pub snapshot_bytes_threshold: u64,
    /// See [`quorate_core::Config`].
    pub compaction_tail_entries: u64,
    /// See [`quorate_core::Config`].
    pub promote_lag_entries_max: u64,
    /// See [`quorate_core::Config`].
    pub auto_leave_joint: bool,
    /// See [`quorate_core::Config`].
    pub snapshot_send_timeout_ns: u64,
    /// See [`quorate_core::Config`].
    pub snapshot: Option<SnapshotMeta>,
}

fn ns(d: Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}

impl RecordedConfig {
    fn capture(c: &CoreConfig) -> RecordedConfig {
        RecordedConfig {
            id: c.id.get(),
            election_timeout_min_ns: ns(c.election_timeout_min),
            heartbeat_interval_ns: ns(c.heartbeat_interval),
            pre_vote: c.pre_vote,
            check_quorum: c.check_quorum,
            lease_clock_drift_max_ns: c.lease_clock_drift_max.map(ns),
            msg_bytes_max: c.msg_bytes_max,
            inflight_msgs_max: c.inflight_msgs_max as u64,
            inflight_bytes_max: c.inflight_bytes_max,
            uncommitted_bytes_max: c.uncommitted_bytes_max,
            apply_bytes_max: c.apply_bytes_max,
            pending_reads_max: c.pending_reads_max as u64,
            applied: c.applied,
            seed: c.seed,
            snapshot_entries_threshold: c.snapshot_entries_threshold,
            snapshot_bytes_threshold: c.snapshot_bytes_threshold,
            compaction_tail_entries: c.compaction_tail_entries,
            promote_lag_entries_max: c.promote_lag_entries_max,
            auto_leave_joint: c.auto_leave_joint,
            snapshot_send_timeout_ns: ns(c.snapshot_send_timeout),
            snapshot: c.snapshot.clone(),
        }
    }

    fn to_core(&self) -> Result<CoreConfig, FlightError> {
        let id = NodeId::new(self.id).ok_or_else(|| FlightError::Format("node id 0".into()))?;
        let size = |v: u64| usize::try_from(v).map_err(|_| FlightError::Format(format!("{v} does not fit")));
        Ok(CoreConfig {
            id,
            election_timeout_min: Duration::from_nanos(self.election_timeout_min_ns),
            heartbeat_interval: Duration::from_nanos(self.heartbeat_interval_ns),
            pre_vote: self.pre_vote,
            check_quorum: self.check_quorum,
            lease_clock_drift_max: self.lease_clock_drift_max_ns.map(Duration::from_nanos),
            msg_bytes_max: self.msg_bytes_max,
            inflight_msgs_max: size(self.inflight_msgs_max)?,
            inflight_bytes_max: self.inflight_bytes_max,
            uncommitted_bytes_max: self.uncommitted_bytes_max,
            apply_bytes_max: self.apply_bytes_max,
            pending_reads_max: size(self.pending_reads_max)?,
            applied: self.applied,
            seed: self.seed,
            snapshot_entries_threshold: self.snapshot_entries_threshold,
            snapshot_bytes_threshold: self.snapshot_bytes_threshold,
            compaction_tail_entries: self.compaction_tail_entries,
            promote_lag_entries_max: self.promote_lag_entries_max,
            auto_leave_joint: self.auto_leave_joint,
            snapshot_send_timeout: Duration::from_nanos(self.snapshot_send_timeout_ns),
            snapshot: self.snapshot.clone(),
        })
    }
}

/// What the core could read from storage when the window started.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Base {
    /// The snapshot the log starts after (its configuration included).
    pub snapshot: SnapshotMeta,
    /// The hard state.
    pub hard_state: HardState,
    /// Every entry after the snapshot.
    pub entries: Vec<Entry>,
}

/// The first frame of a dump.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Header {
    /// The node.
    pub node: u64,
    /// Why the dump was written (`request`, `halt: ...`, `error: ...`).
    pub reason: String,
    /// The core's configuration at the window start.
    pub config: RecordedConfig,
    /// The core's `now` at the window start.
    pub start: Instant,
    /// The storage state at the window start (`None`: not captured, see `note`).
    pub base: Option<Base>,
    /// Inputs after the buffer filled, not kept.
    pub dropped: u64,
    /// Anything a reader should know (why there is no base, ...).
    pub note: String,
}

/// One call into the core, with its result (a digest of its `Debug` text) where it has one.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Input {
    /// `handle_message`.
    Message {
        /// Time.
        now: Instant,
        /// The message.
        m: Message,
    },
    /// `handle_timeout`.
    Timeout {
        /// Time.
        now: Instant,
    },
    /// `campaign_now`.
    Campaign {
        /// Time.
        now: Instant,
    },
    /// `propose`.
    Propose {
        /// Time.
        now: Instant,
        /// The command.
        data: Data,
        /// Digest of the result.
        out: u32,
    },
    /// `read`.
    Read {
        /// Time.
        now: Instant,
        /// Read id.
        id: ReadId,
        /// Level.
        level: ReadLevel,
        /// Digest of the result.
        out: u32,
    },
    /// `transfer_leadership`.
    Transfer {
        /// Time.
        now: Instant,
        /// Target.
        to: NodeId,
        /// Digest of the result.
        out: u32,
    },
    /// `propose_conf_change`.
    ConfChange {
        /// Time.
        now: Instant,
        /// The change.
        change: ConfChange,
        /// Digest of the result.
        out: u32,
    },
    /// `leave_joint`.
    LeaveJoint {
        /// Time.
        now: Instant,
        /// Digest of the result.
        out: u32,
    },
    /// `snapshot_taken`.
    SnapshotTaken {
        /// Time.
        now: Instant,
        /// The snapshot.
        meta: SnapshotMeta,
    },
    /// `install_snapshot`.
    InstallSnapshot {
        /// Time.
        now: Instant,
        /// Sender.
        from: NodeId,
        /// Sender's term.
        term: Term,
        /// The snapshot.
        meta: SnapshotMeta,
        /// Digest of the result.
        out: u32,
    },
    /// `snapshot_send_failed`.
    SnapshotSendFailed {
        /// Time.
        now: Instant,
        /// The follower.
        to: NodeId,
    },
    /// `persisted`.
    Persisted {
        /// Time.
        now: Instant,
        /// The batch id.
        io: u64,
    },
    /// `ready`: the digest of what it returned.
    Ready {
        /// Digest.
        digest: u32,
    },
}

impl Input {
    fn kind(&self) -> &'static str {
        match self {
            Input::Message { .. } => "message",
            Input::Timeout { .. } => "timeout",
            Input::Campaign { .. } => "campaign",
            Input::Propose { .. } => "propose",
            Input::Read { .. } => "read",
            Input::Transfer { .. } => "transfer",
            Input::ConfChange { .. } => "conf change",
            Input::LeaveJoint { .. } => "leave joint",
            Input::SnapshotTaken { .. } => "snapshot taken",
            Input::InstallSnapshot { .. } => "install snapshot",
            Input::SnapshotSendFailed { .. } => "snapshot send failed",
            Input::Persisted { .. } => "persisted",
            Input::Ready { .. } => "ready",
        }
    }
}

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
pub fn persist_batch(p: &quorate_core::Persist) -> PersistBatch {
    PersistBatch {
        hard_state: p.hard_state,
        truncate_from: p.entries.first().map(|e| e.index),
        entries: p.entries.clone(),
        install: p.install.clone(),
        compact: p.compact.clone(),
        skip_fsync: !p.sync,
    }
}

/// The recording buffer of one window.
struct Recorder {
    header: Header,
    frames: Vec<u8>,
    inputs: usize,
    on: bool,
    budget: usize,
    dir: Option<PathBuf>,
    dumped_halt: bool,
    scratch: Vec<u8>,
}

impl Recorder {
    fn record(&mut self, input: &Input) {
        if !self.on {
            return;
        }
        if self.inputs >= INPUTS_MAX || self.frames.len() >= self.budget {
            self.header.dropped += 1;
            return;
        }
        push_frame(&mut self.frames, input);
        self.inputs += 1;
    }

    fn encode(&self, reason: &str) -> Vec<u8> {
        let mut header = self.header.clone();
        header.reason = reason.to_string();
        let mut out = Vec::with_capacity(self.frames.len() + 64);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT.to_le_bytes());
        push_frame(&mut out, &header);
        out.extend_from_slice(&self.frames);
        push_trailer(&mut out, self.inputs as u64);
        out
    }
}

fn push_frame(out: &mut Vec<u8>, v: &impl Serialize) {
    let at = out.len();
    out.extend_from_slice(&[0u8; 8]);
    let buf = std::mem::take(out);
    *out = match postcard::to_extend(v, buf) {
        Ok(b) => b,
        Err(_) => return, // cannot happen for these types; nothing is recorded
    };
    let len = (out.len() - at - 8) as u32;
    let crc = crc32fast::hash(&out[at + 8..]);
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    out[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The consensus core with a flight recorder around it: every call that changes the core goes
/// through a method of this type (there is no `DerefMut`), queries go to the core by `Deref`.
pub struct Recorded<S: LogStorage> {
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
        f.debug_struct("Recorded").field("inputs", &self.rec.inputs).field("on", &self.rec.on).finish_non_exhaustive()
    }
}

impl<S: LogStorage> Recorded<S> {
    /// Builds the core from `storage` (as [`Raft::new`]) and starts a recording window:
    /// captures the configuration and what the core can read from storage. `dir` is where
    /// dumps go (`None`: only [`Recorded::dump_bytes`]).
    ///
    /// `budget` bounds the bytes of recorded inputs and, separately, of the captured base
    /// log; 0 turns recording off.
    pub fn new(
        cfg: CoreConfig,
        storage: S,
        now: Instant,
        dir: Option<PathBuf>,
        budget: usize,
    ) -> Result<Recorded<S>, CoreError> {
        let config = RecordedConfig::capture(&cfg);
        let node = cfg.id.get();
        let budget = budget.min(INPUT_BYTES_MAX).min(BASE_BYTES_MAX as usize);
        let captured = if budget == 0 {
            Err("turned off (limits.flight_recorder_mb = 0)".to_string())
        } else {
            capture_base(&storage, budget as u64)
        };
        let (base, note) = match captured {
            Ok(b) => (Some(b), String::new()),
            Err(why) => {
                tracing::warn!(reason = %why, "flight recorder off for this process");
                (None, why)
            }
        };
        let on = base.is_some();
        let raft = Raft::new(cfg, storage, now)?;
        let header = Header { node, reason: String::new(), config, start: now, base, dropped: 0, note };
        let rec = Recorder {
            header,
            frames: Vec::new(),
            inputs: 0,
            on,
            budget,
            dir,
            dumped_halt: false,
            scratch: Vec::new(),
        };
        Ok(Recorded { raft, rec })
    }

    /// The underlying core's storage, mutably (for tests and tools; not an input).
    pub fn storage_mut(&mut self) -> &mut S {
        self.raft.storage_mut()
    }

    /// Inputs recorded in this window.
    #[must_use]
    pub fn recorded_inputs(&self) -> usize {
        self.rec.inputs
    }

    fn after(&mut self, input: Input) {
        self.rec.record(&input);
        if let Some(h) = self.raft.halted()
            && !self.rec.dumped_halt
        {
            self.rec.dumped_halt = true;
            let reason = format!("halt: {h}");
            match self.dump(&reason) {
                Ok(Some(path)) => tracing::error!(path = %path.display(), "core halted; flight recording dumped"),
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "core halted; flight recording could not be dumped"),
            }
        }
    }

    /// The recording so far, as a dump file's bytes.
    #[must_use]
    pub fn dump_bytes(&self, reason: &str) -> Vec<u8> {
        self.rec.encode(reason)
    }

    /// Writes the recording so far into the flight directory; returns its path (`None`
    /// without a directory).
    pub fn dump(&self, reason: &str) -> Result<Option<PathBuf>, FlightError> {
        let Some(dir) = &self.rec.dir else { return Ok(None) };
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| FlightError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let path = dir.join(format!("flight-{}-{stamp}.qflt", self.rec.header.node));
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&self.dump_bytes(reason)).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        Ok(Some(path))
    }

    /// Answers a dump request left in the flight directory by `quorate debug flight-dump`
    /// (called from the node's periodic sweep): writes the dump and names it in
    /// `dump-request.done`.
    pub fn poll_dump_request(&self) {
        let Some(dir) = &self.rec.dir else { return };
        let req = dir.join(REQUEST_FILE);
        if !req.exists() {
            return;
        }
        let _ = std::fs::remove_file(&req);
        let answer = match self.dump("request") {
            Ok(Some(p)) => p.display().to_string(),
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
    pub fn handle_message(&mut self, now: Instant, m: Message) {
        let input = self.rec.on.then(|| Input::Message { now, m: m.clone() });
        self.raft.handle_message(now, m);
        if let Some(i) = input {
            self.after(i);
        }
    }

    /// [`Raft::handle_timeout`], recorded.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.raft.handle_timeout(now);
        self.after(Input::Timeout { now });
    }

    /// [`Raft::campaign_now`], recorded.
    pub fn campaign_now(&mut self, now: Instant) {
        self.raft.campaign_now(now);
        self.after(Input::Campaign { now });
    }

    /// [`Raft::propose`], recorded.
    pub fn propose(&mut self, now: Instant, data: Data) -> Result<EntryId, quorate_core::ProposeError> {
        let kept = self.rec.on.then(|| data.clone());
        let r = self.raft.propose(now, data);
        if let Some(data) = kept {
            self.after(Input::Propose { now, data, out: debug_digest(&r) });
        }
        r
    }

    /// [`Raft::read`], recorded.
    pub fn read(&mut self, now: Instant, id: ReadId, level: ReadLevel) -> Result<(), quorate_core::ReadError> {
        let r = self.raft.read(now, id, level);
        self.after(Input::Read { now, id, level, out: debug_digest(&r) });
        r
    }

    /// [`Raft::transfer_leadership`], recorded.
    pub fn transfer_leadership(&mut self, now: Instant, to: NodeId) -> Result<(), quorate_core::TransferError> {
        let r = self.raft.transfer_leadership(now, to);
        self.after(Input::Transfer { now, to, out: debug_digest(&r) });
        r
    }

    /// [`Raft::propose_conf_change`], recorded.
    pub fn propose_conf_change(
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

    /// [`Raft::leave_joint`], recorded.
    pub fn leave_joint(&mut self, now: Instant) -> Result<EntryId, quorate_core::ConfChangeError> {
        let r = self.raft.leave_joint(now);
        self.after(Input::LeaveJoint { now, out: debug_digest(&r) });
        r
    }

    /// [`Raft::snapshot_taken`], recorded.
    pub fn snapshot_taken(&mut self, now: Instant, meta: SnapshotMeta) {
        let kept = self.rec.on.then(|| meta.clone());
        self.raft.snapshot_taken(now, meta);
        if let Some(meta) = kept {
            self.after(Input::SnapshotTaken { now, meta });
        }
    }

    /// [`Raft::install_snapshot`], recorded.
    pub fn install_snapshot(
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
    pub fn snapshot_send_failed(&mut self, now: Instant, to: NodeId) {
        self.raft.snapshot_send_failed(now, to);
        self.after(Input::SnapshotSendFailed { now, to });
    }

    /// [`Raft::persisted`], recorded.
    pub fn persisted(&mut self, now: Instant, io: IoId) {
        self.raft.persisted(now, io);
        self.after(Input::Persisted { now, io: io.0 });
    }

    /// [`Raft::ready`], recorded as a digest of what it returned.
    pub fn ready(&mut self) -> Ready {
        let rd = self.raft.ready();
        if self.rec.on {
            let mut scratch = std::mem::take(&mut self.rec.scratch);
            let digest = ready_digest(&rd, &mut scratch);
            scratch.clear();
            self.rec.scratch = scratch;
            self.after(Input::Ready { digest });
        }
        rd
    }
}

fn capture_base<S: LogStorage>(storage: &S, budget: u64) -> Result<Base, String> {
    let snapshot = storage.snapshot_meta().map_err(|e| format!("cannot read the snapshot metadata: {e}"))?;
    let hard_state = storage.initial_state().map_err(|e| format!("cannot read the initial state: {e}"))?.hard_state;
    let last = storage.last_index();
    let mut entries = Vec::new();
    let mut next = snapshot.last.index.next();
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
                "the log after the snapshot holds more than {budget} bytes ({} entries); \
                 a window could not be replayed from its start",
                last.0 - snapshot.last.index.0
            ));
        }
        entries.extend(chunk);
        next = end.next();
    }
    Ok(Base { snapshot, hard_state, entries })
}

// ----- reading and replaying -----

/// A dump read back.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Dump {
    /// Its header.
    pub header: Header,
    /// The inputs, in order.
    pub inputs: Vec<Input>,
}

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

/// Decodes a dump from its bytes.
pub fn decode_dump(bytes: &[u8]) -> Result<Dump, FlightError> {
    let bad = |s: String| FlightError::Format(s);
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(bad("it does not start with the flight recording magic \"QFLT\"".into()));
    }
    let format = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if format != FORMAT {
        return Err(bad(format!("format {format}; this build reads format {FORMAT}")));
    }
    let Some(body_end) = bytes.len().checked_sub(TRAILER_BYTES).filter(|&e| e >= 8 && &bytes[e..e + 4] == END) else {
        return Err(bad("it does not end with the end marker \"QEND\" (a truncated file)".into()));
    };
    let mut count = [0u8; 8];
    count.copy_from_slice(&bytes[body_end + 4..]);
    let expected = u64::from_le_bytes(count);
    let bytes = &bytes[..body_end];
    let mut at = 8usize;
    let mut frame = |n: usize| -> Result<Option<&[u8]>, FlightError> {
        if at == bytes.len() {
            return Ok(None);
        }
        let Some(head) = bytes.get(at..at + 8) else {
            return Err(bad(format!("frame {n} is cut short at byte {at} (a truncated file)")));
        };
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len > FRAME_BYTES_MAX {
            return Err(bad(format!("frame {n} at byte {at} claims {len} bytes, more than {FRAME_BYTES_MAX}")));
        }
        let Some(body) = bytes.get(at + 8..at + 8 + len) else {
            return Err(bad(format!("frame {n} at byte {at} is cut short (a truncated file)")));
        };
        if crc32fast::hash(body) != crc {
            return Err(bad(format!("frame {n} at byte {at} fails its checksum (a damaged file)")));
        }
        at += 8 + len;
        Ok(Some(body))
    };
    let decode_err = |n: usize, e: postcard::Error| bad(format!("frame {n} does not decode: {e}"));
    let header_bytes = frame(0)?.ok_or_else(|| bad("no header".into()))?;
    let header: Header = postcard::from_bytes(header_bytes).map_err(|e| decode_err(0, e))?;
    let mut inputs = Vec::new();
    let mut n = 1;
    while let Some(body) = frame(n)? {
        if inputs.len() >= INPUTS_MAX {
            return Err(bad(format!("more than {INPUTS_MAX} inputs")));
        }
        inputs.push(postcard::from_bytes(body).map_err(|e| decode_err(n, e))?);
        n += 1;
    }
    if inputs.len() as u64 != expected {
        return Err(bad(format!("{} inputs where the end marker says {expected} (a damaged file)", inputs.len())));
    }
    Ok(Dump { header, inputs })
}

/// Encodes a dump (for tools and tests that edit one).
#[must_use]
pub fn encode_dump(dump: &Dump) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    push_frame(&mut out, &dump.header);
    for i in &dump.inputs {
        push_frame(&mut out, i);
    }
    push_trailer(&mut out, dump.inputs.len() as u64);
    out
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
    /// Inputs the node did not keep after its buffer filled.
    pub dropped: u64,
}

/// Re-runs a dump's inputs through a fresh core built from its base and compares every
/// recorded output. Deterministic: the same dump always gives the same report.
pub fn replay(dump: &Dump) -> Result<ReplayReport, FlightError> {
    let h = &dump.header;
    let Some(base) = &h.base else {
        return Err(FlightError::NotReplayable(format!("no base state was captured: {}", h.note)));
    };
    let store = MemStore::new(base.snapshot.config.clone());
    if base.snapshot.last.index > LogIndex::ZERO {
        store
            .write(PersistBatch { install: Some(base.snapshot.clone()), ..PersistBatch::default() })
            .map_err(|e| FlightError::Replay(format!("base snapshot: {e}")))?;
    }
    store
        .write(PersistBatch {
            entries: base.entries.clone(),
            hard_state: Some(base.hard_state),
            ..PersistBatch::default()
        })
        .map_err(|e| FlightError::Replay(format!("base log: {e}")))?;
    let mut raft =
        Raft::new(h.config.to_core()?, store, h.start).map_err(|e| FlightError::Replay(format!("core: {e}")))?;
    let mut pending: VecDeque<(u64, PersistBatch)> = VecDeque::new();
    let mut scratch = Vec::new();
    let mut report =
        ReplayReport { inputs: 0, readies: 0, compared: 0, divergence: None, dropped: dump.header.dropped };
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
                    if pending.len() >= INPUTS_MAX {
                        return Err(FlightError::Replay("too many unpersisted batches".into()));
                    }
                    pending.push_back((p.io.0, persist_batch(p)));
                }
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
