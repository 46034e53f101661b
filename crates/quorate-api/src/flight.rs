//! The file format of the reference node's flight recordings (`quorate replay FILE`): the
//! types a recording holds and its decoder, here so that the decoder of these outside bytes
//! is reachable without linking RocksDB (the fuzz target `flight_decode`). The recorder, dumps
//! and replay are the node's (`quorate_node::flight`, which re-exports everything here).
//!
//! ## File format
//!
//! `"QFLT"`, format `u32` LE, the core-image format `u32` LE
//! ([`quorate_core::CORE_IMAGE_FORMAT`] of the build that wrote it), then frames of
//! `length u32 LE | CRC-32 u32 LE | postcard body`: the [`Header`], then
//! `Option<`[`Checkpoint`]`>`, then one frame per [`Input`]; last the marker `"QEND"` and the
//! number of inputs (`u64` LE), so a file cut at a frame boundary is still seen as truncated.
//! This is format 4; format 2 (a window from process start) is still read; format 3 and
//! recordings with core images of another format are refused by name. Reading checks every
//! bound and checksum and never panics: a truncated or damaged file is a [`FlightError`].

use quorate_core::{ConfChange, Config as CoreConfig, Instant, Message, ReadId, ReadLevel};
use quorate_log::{Data, Entry, HardState, LogIndex, NodeId, SnapshotMeta, Term};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Most inputs kept in the ring.
pub const INPUTS_MAX: usize = 1_000_000;
/// Most bytes of recording kept (the node's `limits.flight_recorder_mb` sets a smaller budget).
pub const INPUT_BYTES_MAX: usize = 1024 << 20;
/// Segments per budget: a new one starts every `budget / SEGMENTS` bytes of inputs.
pub const SEGMENTS: usize = 4;
/// Most bytes of log entries in a checkpoint's base (also bounded by half the budget).
pub const BASE_BYTES_MAX: u64 = 1024 << 20;
/// Largest frame accepted when reading a dump.
pub const FRAME_BYTES_MAX: usize = BASE_BYTES_MAX as usize + (1 << 20);
/// Largest dump file accepted.
pub const FILE_BYTES_MAX: u64 = (BASE_BYTES_MAX + INPUT_BYTES_MAX as u64) * 2;

/// The magic every recording starts with.
pub const MAGIC: &[u8; 4] = b"QFLT";
/// The format written: the core-image format, a checkpoint, then inputs.
pub const FORMAT: u32 = 4;
/// The format of quorate 0.1.0: a checkpoint, then inputs, with core images of format 1 and
/// no field saying so. Refused with a clear error.
pub const FORMAT_UNVERSIONED_IMAGE: u32 = 3;
/// The core-image format of every format-3 recording.
pub const FORMAT_3_CORE_IMAGE: u32 = 1;
/// The format before the ring (a window from process start); still read.
pub const FORMAT_WINDOW: u32 = 2;
/// Last bytes of every recording: this marker and the number of inputs (u64, little endian),
/// so that a file cut at a frame boundary is still seen as truncated.
pub const END: &[u8; 4] = b"QEND";
/// Bytes of the trailer: the end marker and the number of inputs.
pub const TRAILER_BYTES: usize = 12;

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
    /// The recording cannot be replayed (no checkpoint was kept).
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
    /// See [`quorate_core::Config`] (core images of format 3 on).
    pub persist_entries_max: u64,
    /// See [`quorate_core::Config`] (core images of format 3 on).
    pub persist_bytes_max: u64,
}

fn ns(d: Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}

impl RecordedConfig {
    /// The recorded form of a core configuration.
    #[must_use]
    pub fn capture(c: &CoreConfig) -> RecordedConfig {
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
            persist_entries_max: c.persist_entries_max,
            persist_bytes_max: c.persist_bytes_max,
        }
    }

    /// The core configuration recorded.
    ///
    /// # Errors
    /// [`FlightError::Format`] for a node id 0 or a count that does not fit in `usize`.
    pub fn to_core(&self) -> Result<CoreConfig, FlightError> {
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
            persist_entries_max: self.persist_entries_max,
            persist_bytes_max: self.persist_bytes_max,
            // Not recorded (the recorded form predates it): a replay from an image carries it
            // in the image's configuration; a replay from the process start (format 2) of a
            // node that was recovering from lost synced state is not faithful.
            recovering: None,
        })
    }
}

/// What the core could read from storage at a checkpoint (or, in format 2, at process start).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Base {
    /// The snapshot the log starts after (its configuration included).
    pub snapshot: SnapshotMeta,
    /// The hard state.
    pub hard_state: HardState,
    /// Every entry after the snapshot.
    pub entries: Vec<Entry>,
}

/// A persist batch handed out in a `Ready` and not yet reported persisted.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Pending {
    /// Its id (`Persist::io`).
    pub io: u64,
    /// See [`quorate_core::Persist`].
    pub hard_state: Option<HardState>,
    /// See [`quorate_core::Persist`].
    pub entries: Vec<Entry>,
    /// See [`quorate_core::Persist`].
    pub sync: bool,
    /// See [`quorate_core::Persist`].
    pub install: Option<SnapshotMeta>,
    /// See [`quorate_core::Persist`].
    pub compact: Option<SnapshotMeta>,
}

impl Pending {
    /// The recorded form of a `Ready`'s persist request.
    #[must_use]
    pub fn of(p: &quorate_core::Persist) -> Pending {
        Pending {
            io: p.io.0,
            hard_state: p.hard_state,
            entries: p.entries.clone(),
            sync: p.sync,
            install: p.install.clone(),
            compact: p.compact.clone(),
        }
    }
}

/// Where a replay starts: the core's state, what it could read, what was in flight.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Inputs recorded since the process started before this checkpoint.
    pub at: u64,
    /// The core's image (postcard bytes of a [`quorate_core::CoreImage`]).
    #[serde(with = "quorate_log::byte_string")]
    pub image: Vec<u8>,
    /// What the core could read from storage.
    pub base: Base,
    /// Persist batches handed out and not yet reported persisted, in order.
    pub pending: Vec<Pending>,
}

/// The first frame of a dump.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Header {
    /// The node.
    pub node: u64,
    /// Why the dump was written (`request`, `invariant violation`, `halt: ...`, `error: ...`).
    pub reason: String,
    /// The core's configuration when the process started (the checkpoint's image holds the
    /// configuration a replay uses).
    pub config: RecordedConfig,
    /// The core's `now` when the process started.
    pub start: Instant,
    /// Inputs recorded since the process started before the first input of this file (no
    /// longer kept, or before its checkpoint).
    pub first_input: u64,
    /// Anything a reader should know (why there is no checkpoint, ...).
    pub note: String,
}

/// The first frame of a format-2 dump.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
struct HeaderWindow {
    node: u64,
    reason: String,
    config: RecordedConfig,
    start: Instant,
    base: Option<Base>,
    dropped: u64,
    note: String,
}

/// Where a dump's replay starts.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Origin {
    /// A checkpoint (format 4).
    Checkpoint(Checkpoint),
    /// A fresh core built with the header's configuration at its `start` over this storage
    /// (format 2: a window from process start).
    Start(Base),
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
    /// `snapshot_skipped` (appended: recordings of earlier builds never hold it).
    SnapshotSkipped {
        /// Time.
        now: Instant,
    },
}

impl Input {
    /// A short name of the kind of input.
    #[must_use]
    pub fn kind(&self) -> &'static str {
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
            Input::SnapshotSkipped { .. } => "snapshot skipped",
        }
    }
}

/// Appends one frame (`length u32 LE | CRC-32 u32 LE | postcard body`) of `v` to `out`.
pub fn push_frame(out: &mut Vec<u8>, v: &impl Serialize) {
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

/// A dump read back.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Dump {
    /// Its header.
    pub header: Header,
    /// Where a replay starts (`None`: no checkpoint was kept; the header's note says why).
    pub origin: Option<Origin>,
    /// The inputs after it, in order.
    pub inputs: Vec<Input>,
}

/// Decodes a dump from its bytes (format 4, or format 2 from before the ring). A recording
/// whose core images are of another format than this build's
/// ([`quorate_core::CORE_IMAGE_FORMAT`]) is refused, format 3 (quorate 0.1.0) included.
pub fn decode_dump(bytes: &[u8]) -> Result<Dump, FlightError> {
    let bad = |s: String| FlightError::Format(s);
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(bad("it does not start with the flight recording magic \"QFLT\"".into()));
    }
    let format = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let ours = quorate_core::CORE_IMAGE_FORMAT;
    let other_images = |images: u32| {
        bad(format!(
            "format {format} with core images of format {images}; this build reads core images of format {ours} \
             only (replay the recording with the quorate build that wrote it)"
        ))
    };
    if format == FORMAT_UNVERSIONED_IMAGE {
        return Err(other_images(FORMAT_3_CORE_IMAGE));
    }
    if format != FORMAT && format != FORMAT_WINDOW {
        return Err(bad(format!("format {format}; this build reads formats {FORMAT_WINDOW} and {FORMAT}")));
    }
    let mut at = 8usize;
    if format == FORMAT {
        let Some(v) = bytes.get(8..12) else {
            return Err(bad("it ends before its core-image format (a truncated file)".into()));
        };
        let images = u32::from_le_bytes([v[0], v[1], v[2], v[3]]);
        if images != ours {
            return Err(other_images(images));
        }
        at = 12;
    }
    let Some(body_end) = bytes.len().checked_sub(TRAILER_BYTES).filter(|&e| e >= at && &bytes[e..e + 4] == END) else {
        return Err(bad("it does not end with the end marker \"QEND\" (a truncated file)".into()));
    };
    let mut count = [0u8; 8];
    count.copy_from_slice(&bytes[body_end + 4..]);
    let expected = u64::from_le_bytes(count);
    let bytes = &bytes[..body_end];
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
    let (header, origin, first) = if format == FORMAT_WINDOW {
        let h: HeaderWindow = postcard::from_bytes(header_bytes).map_err(|e| decode_err(0, e))?;
        let mut note = h.note;
        if h.dropped > 0 {
            note = format!(
                "{note}{}{} later inputs were not kept (format 2: the buffer filled)",
                if note.is_empty() { "" } else { "; " },
                h.dropped
            );
        }
        let header = Header { node: h.node, reason: h.reason, config: h.config, start: h.start, first_input: 0, note };
        (header, h.base.map(Origin::Start), 1)
    } else {
        let header: Header = postcard::from_bytes(header_bytes).map_err(|e| decode_err(0, e))?;
        let cp_bytes = frame(1)?.ok_or_else(|| bad("no checkpoint frame".into()))?;
        let cp: Option<Checkpoint> = postcard::from_bytes(cp_bytes).map_err(|e| decode_err(1, e))?;
        (header, cp.map(Origin::Checkpoint), 2)
    };
    let mut inputs = Vec::new();
    let mut n = first;
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
    Ok(Dump { header, origin, inputs })
}

/// Encodes a dump (for tools and tests that edit one): format 4 (with this build's
/// core-image format), or format 2 for an [`Origin::Start`].
#[must_use]
pub fn encode_dump(dump: &Dump) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    let h = &dump.header;
    match &dump.origin {
        Some(Origin::Start(base)) => {
            out.extend_from_slice(&FORMAT_WINDOW.to_le_bytes());
            let hw = HeaderWindow {
                node: h.node,
                reason: h.reason.clone(),
                config: h.config.clone(),
                start: h.start,
                base: Some(base.clone()),
                dropped: 0,
                note: h.note.clone(),
            };
            push_frame(&mut out, &hw);
        }
        other => {
            out.extend_from_slice(&FORMAT.to_le_bytes());
            out.extend_from_slice(&quorate_core::CORE_IMAGE_FORMAT.to_le_bytes());
            push_frame(&mut out, h);
            let cp = match other {
                Some(Origin::Checkpoint(c)) => Some(c),
                _ => None,
            };
            push_frame(&mut out, &cp);
        }
    }
    for i in &dump.inputs {
        push_frame(&mut out, i);
    }
    out.extend_from_slice(END);
    out.extend_from_slice(&(dump.inputs.len() as u64).to_le_bytes());
    out
}
