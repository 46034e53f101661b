//! Bounds on everything a request, command or response may carry: one consistent set with the
//! transport's frame limit, checked when decoding, before a write is proposed and at apply.
//!
//! The relations between them are compile-time assertions (below): every message the API
//! accepts fits a transport frame, every result the node computes fits a message, the largest
//! value a client may write fits a command, and one pair always fits a result (so a read of
//! one key, and the first page of a scan, can always be answered).

use quorate_transport::FRAME_PAYLOAD_BYTES_DEFAULT;

/// Largest key, in bytes.
pub const KEY_BYTES_MAX: usize = 4 * 1024;
/// Largest value, in bytes.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;
/// Most comparisons or operations in one branch of a transaction.
pub const TXN_OPS_MAX: usize = 128;
/// Most key-value pairs a scan may return.
pub const SCAN_LIMIT_MAX: u32 = 10_000;
/// Largest encoded message: the transport's frame payload limit, so that what the API encodes
/// the transport carries (a larger answer used to be computed, then dropped by the transport).
pub const MESSAGE_BYTES_MAX: usize = FRAME_PAYLOAD_BYTES_DEFAULT as usize;
/// Largest result of one request: the encoded [`crate::Response`] (or error). Scans and
/// read-only transactions are answered in pages of at most this size, with a continuation; a
/// write whose result would be larger is answered with an error, identically on every replica,
/// and changes nothing.
pub const RESULT_BYTES_MAX: usize = 4 * 1024 * 1024;
/// What a [`crate::ClientResponse`] adds around its result: the request id (a varint) and the
/// result's tag.
pub const RESPONSE_ENVELOPE_BYTES_MAX: usize = 16;
/// What one key-value pair adds to a result besides its key and value: two length prefixes
/// and three revisions (varints), rounded up.
pub const KEY_VALUE_OVERHEAD_BYTES: usize = 64;
/// The most one key-value pair adds to a result.
pub const KEY_VALUE_BYTES_MAX: usize = KEY_BYTES_MAX + VALUE_BYTES_MAX + KEY_VALUE_OVERHEAD_BYTES;
/// Largest encoded log command.
pub const COMMAND_BYTES_MAX: usize = 2 * 1024 * 1024;
/// What a command adds around a put's key and value: session, log time, operation tag,
/// length prefixes and (since cluster version 2) the principal and its tag.
pub const COMMAND_OVERHEAD_BYTES_MAX: usize = 64 + quorate_transport::PRINCIPAL_BYTES_MAX;
/// Largest snapshot chunk payload.
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 1024 * 1024;
/// Longest free-text field (addresses, error details).
pub const TEXT_BYTES_MAX: usize = 4 * 1024;

/// Most events one watch answer carries.
pub const WATCH_EVENTS_MAX: usize = 10_000;
/// Most bytes of events one watch answer carries (a revision's events without their previous
/// versions always fit: they are bounded by the command that wrote them).
pub const WATCH_BYTES_MAX: usize = RESULT_BYTES_MAX - 64 * 1024;
/// Longest a watch waits for a change before it answers with no events, ms.
pub const WATCH_WAIT_MS_MAX: u32 = 60_000;

/// Shortest lease TTL, ms: a few election timeouts at the default `raft.election_timeout_ms`
/// (1 s), so that a leader change alone does not expire a lease kept alive (a leader also
/// refuses a TTL below three of its own election timeouts).
pub const LEASE_TTL_MS_MIN: u64 = 3_000;
/// Longest lease TTL, ms (30 days).
pub const LEASE_TTL_MS_MAX: u64 = 30 * 24 * 3600 * 1000;
/// Most leases one principal may hold.
pub const LEASES_PER_PRINCIPAL_MAX: u64 = 1_024;
/// Most leases in the cluster.
pub const LEASES_MAX: u64 = 100_000;
/// Most keys attached to one lease: an attach beyond is refused. With
/// [`LEASE_KEY_BYTES_MAX`] and [`LEASE_VALUE_BYTES_MAX`] it keeps the deletion of a lease's
/// keys (at one revision, in one command) within what one apply may write.
pub const LEASE_KEYS_MAX: u64 = 1_024;
/// Most bytes of keys attached to one lease.
pub const LEASE_KEY_BYTES_MAX: u64 = 512 * 1024;
/// Most bytes of values of the keys attached to one lease (each is kept in the history when
/// the lease's keys are deleted).
pub const LEASE_VALUE_BYTES_MAX: u64 = 32 * 1024 * 1024;

// A lease's attached keys always fit one answer.
const _: () = assert!(LEASE_KEY_BYTES_MAX as usize + LEASE_KEYS_MAX as usize * 16 + 1024 <= RESULT_BYTES_MAX);

// Every answer fits a message, every message a transport frame.
const _: () = assert!(RESULT_BYTES_MAX + RESPONSE_ENVELOPE_BYTES_MAX <= MESSAGE_BYTES_MAX);
const _: () = assert!(MESSAGE_BYTES_MAX <= FRAME_PAYLOAD_BYTES_DEFAULT as usize);
// A read of one key, a compare-and-swap's previous pair and a page of one pair always fit.
const _: () = assert!(KEY_VALUE_BYTES_MAX + 1024 <= RESULT_BYTES_MAX);
// A put of the largest key and value fits a command (and the command a message).
const _: () = assert!(KEY_BYTES_MAX + VALUE_BYTES_MAX + COMMAND_OVERHEAD_BYTES_MAX <= COMMAND_BYTES_MAX);
const _: () = assert!(COMMAND_BYTES_MAX + RESPONSE_ENVELOPE_BYTES_MAX <= MESSAGE_BYTES_MAX);
