//! The client's errors: each says which node, what happened, and what to do.

use quorate_api::ApiError;
use quorate_log::NodeId;
use std::time::Duration;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The client configuration is unusable.
    #[error("bad client configuration: {0}")]
    Config(String),
    /// The certificate, key or CA file could not be loaded.
    #[error("cannot load the client's TLS files: {0}; check the --ca, --cert and --key paths (or --certs DIR)")]
    Tls(#[from] quorate_transport::TlsError),
    /// A node answered with an error that retrying will not fix.
    #[error("node {node} refused the request: {error}{}", advice(error))]
    Rejected {
        /// The node that answered.
        node: NodeId,
        /// What it said.
        error: ApiError,
    },
    /// A write may or may not have been applied: the last attempt timed out or its
    /// connection was lost, and no retry could learn the outcome.
    #[error(
        "the outcome of the write is unknown after {attempts} attempts in {:.1}s (last: {last}); \
         read the key to see whether it was applied",
        elapsed.as_secs_f64()
    )]
    OutcomeUnknown {
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// The last failure, with the node it came from.
        last: String,
    },
    /// Every attempt failed before doing anything, and the retry limit, the time limit or the
    /// retry budget ran out.
    #[error(
        "gave up after {attempts} attempts in {:.1}s: {reason} (last: {last}); \
         check that the nodes are running and that the endpoints are right",
        elapsed.as_secs_f64()
    )]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// Which limit ended the retries.
        reason: GiveUpReason,
        /// The last failure, with the node it came from.
        last: String,
    },
    /// The node is not in the client's member list.
    #[error("node {0} is not among the configured endpoints; add it with `--endpoints ID=ADDR`")]
    UnknownNode(NodeId),
    /// The node answered with a response that does not fit the request (a bug or a version
    /// mismatch).
    #[error("node {node} sent an unexpected answer ({what}); are the client and node versions compatible?")]
    Unexpected {
        /// The node.
        node: NodeId,
        /// What arrived.
        what: String,
    },
}

/// Which limit ended the retries of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GiveUpReason {
    /// `ClientConfig::retries_max` attempts were made.
    Retries,
    /// `ClientConfig::total_timeout` passed.
    Deadline,
    /// The retry budget (token bucket) was empty: too many retries recently.
    Budget,
}

impl std::fmt::Display for GiveUpReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GiveUpReason::Retries => "the retry limit was reached",
            GiveUpReason::Deadline => "the time limit was reached",
            GiveUpReason::Budget => "the retry budget is spent (too many retries recently)",
        })
    }
}

fn advice(error: &ApiError) -> &'static str {
    match error {
        ApiError::Unauthorized { .. } => "; use a client certificate with that role",
        ApiError::InvalidRequest(_) => "; fix the request",
        ApiError::Refused(_) => "; check `quorate member list` and `quorate cluster status`",
        ApiError::Internal(_) => "; see the node's log",
        ApiError::SessionExpired => "; the client opens a new session on the next write",
        ApiError::Compacted { .. } => "; read at the compaction revision or later (`quorate cluster status` shows it)",
        ApiError::FutureRevision { .. } => "; read at the current revision or earlier",
        _ => "",
    }
}

impl ClientError {
    /// The API error a node answered with, if that is what failed.
    #[must_use]
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            ClientError::Rejected { error, .. } => Some(error),
            _ => None,
        }
    }
}
