//! # quorate-core
//!
//! A sans-IO Raft consensus core. It does no I/O, reads no clock and draws no OS randomness:
//! the caller passes `now` with every input, randomness comes from a seed, and every effect
//! is handed back as data. The same state machine is driven by the reference node's tokio
//! loop and by the deterministic simulator in `quorate-check`.
//!
//! ## Shape
//!
//! Inputs: [`Raft::handle_message`], [`Raft::handle_timeout`], [`Raft::propose`],
//! [`Raft::read`], [`Raft::transfer_leadership`], [`Raft::persisted`].
//! Output: [`Raft::ready`] returns a [`Ready`] — state to persist (with an [`IoId`]),
//! messages to send, committed entries to apply, reads that are confirmed. Every message is
//! held inside the core until what it depends on is durable — nothing (pre-vote requests and
//! grants), the sender's term and vote (every other message, a leader's appends included), or
//! that and the sender's log up to an index (append acknowledgements) — so a `Ready`'s
//! messages can always be sent at once. The leader replicates while it writes its own copy;
//! its own log counts toward the commit quorum only once reported persisted.
//!
//! ## Protocol features
//!
//! Randomized election timeouts, pre-vote, check-quorum (the leader steps down without a
//! quorum; voters ignore vote requests while they hear from a leader), a no-op at the start
//! of each term, commit of current-term entries only, fast backtracking with conflict hints,
//! per-follower probe/replicate progress with an in-flight window bounded in messages and
//! bytes, batched and pipelined appends, an uncommitted-bytes limit, leader transfer
//! (`TimeoutNow`), ReadIndex reads on the leader and through followers, and opt-in lease
//! reads (only with check-quorum and a clock-drift bound).
//!
//! ```
//! use quorate_core::{Config, Instant, Raft, Role};
//! use quorate_log::{Configuration, MemLog, NodeId};
//!
//! let id = NodeId::new(1).expect("non-zero");
//! let storage = MemLog::new(Configuration::with_voters([id])?);
//! let mut raft = Raft::new(Config::new(id), storage, Instant::ZERO)?;
//! // Drive time forward until the election timeout fires.
//! let deadline = raft.poll_timeout().expect("a follower has an election timer");
//! raft.handle_timeout(deadline);
//! assert_eq!(raft.role(), Role::Leader); // a single voter elects itself
//! let ready = raft.ready();
//! let persist = ready.persist.expect("term, vote and the leader's no-op must be persisted");
//! raft.storage_mut().set_hard_state(persist.hard_state.expect("a new term"));
//! raft.storage_mut().append(&persist.entries)?;
//! raft.persisted(deadline, persist.io);
//! assert_eq!(raft.commit_index().0, 1); // the no-op commits once it is durable
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

mod config;
mod danger;
mod log;
mod message;
mod progress;
mod raft;
mod rng;
mod types;

pub use config::Config;
#[cfg(feature = "danger-reintroduce-holes")]
pub use danger::Hole;
pub use message::{
    Append, AppendResponse, Heartbeat, HeartbeatResponse, Message, MessageBody, ReadIndexRequest, ReadIndexResponse,
    RequestVote, VoteResponse,
};
pub use progress::{PeerProgress, ProgressState};
pub use raft::image::{CORE_IMAGE_FORMAT, CoreImage, CoreImageRef, Detachable, Detached};
pub use raft::recovery::{LOST_STATE_HINT_TERM, Recovering};
pub use raft::{CampaignReason, Persist, Raft, Ready, Status};
pub use rng::SplitMix64;
pub use types::{
    ConfChange, ConfChangeError, CoreError, Instant, IoId, ProposeError, ReadError, ReadFailed, ReadId, ReadLevel,
    ReadReady, Role, SendSnapshot, SnapshotError, TransferError,
};
