//! Bounds on everything a request or command may carry. Checked when decoding.

/// Largest key, in bytes.
pub const KEY_BYTES_MAX: usize = 4 * 1024;
/// Largest value, in bytes.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;
/// Most comparisons or operations in one branch of a transaction.
pub const TXN_OPS_MAX: usize = 128;
/// Most key-value pairs a scan may return.
pub const SCAN_LIMIT_MAX: u32 = 10_000;
/// Largest encoded message.
pub const MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Largest encoded log command.
pub const COMMAND_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Largest snapshot chunk payload.
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 1024 * 1024;
/// Longest free-text field (addresses, error details).
pub const TEXT_BYTES_MAX: usize = 4 * 1024;
