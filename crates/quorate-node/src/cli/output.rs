//! What the CLI prints and how it ends: the output format (`-o text|json`), binary-safe
//! renderings of keys and values, and the exit codes (docs/operations.md, "Scripting the
//! CLI").

use clap::ValueEnum;
use quorate_client::{ClientError, KeyValue};
use serde_json::{Map, Value, json};

/// How a command prints its result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// For people: sentences and aligned tables.
    #[default]
    #[value(alias = "table")]
    Text,
    /// For scripts: one JSON object on one line (`kv scan`: one object per line).
    Json,
}

/// The exit codes of `quorate`, distinct per kind of ending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Exit {
    /// The command did what it was asked.
    Ok = 0,
    /// Any other failure (a local file, a node's internal error, an unexpected answer).
    Failure = 1,
    /// The command line or its input is wrong (clap's own code).
    Usage = 2,
    /// `kv get`: the key is absent.
    NotFound = 3,
    /// `kv cas` did not swap; `kv txn` ran its `else` branch (a comparison was false).
    CompareFailed = 4,
    /// No node could serve the request in time (down, unreachable, no leader, overloaded);
    /// nothing was done, retrying later may work.
    Unavailable = 5,
    /// The cluster refused the request: the certificate's role does not allow it, the request
    /// is invalid (too large, out of bounds), or a membership change was refused.
    Refused = 6,
    /// A write may or may not have been applied (its answer was lost): read before retrying.
    OutcomeUnknown = 7,
    /// `lock`: not acquired in time; `elect`: not elected in time.
    NotAcquired = 8,
}

impl Exit {
    /// The process exit code.
    pub(crate) fn code(self) -> u8 {
        self as u8
    }
}

/// An error in the command line or its input that clap could not see (an endpoint list, a
/// transaction text, a value file): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub(crate) String);

/// No node answered at all (exit code 5), for commands that ask every node themselves.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UnavailableError(pub(crate) String);

/// A usage error with `message`, as an `anyhow::Error`.
pub(crate) fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}

/// The exit code for an error: the first error in its chain that says what kind it is.
pub(crate) fn exit_of(error: &anyhow::Error) -> Exit {
    use quorate_api::ApiError;
    for cause in error.chain() {
        if cause.downcast_ref::<UsageError>().is_some() {
            return Exit::Usage;
        }
        if cause.downcast_ref::<UnavailableError>().is_some() {
            return Exit::Unavailable;
        }
        if let Some(e) = cause.downcast_ref::<quorate_client::recipes::RecipeError>() {
            use quorate_client::recipes::RecipeError;
            match e {
                RecipeError::Timeout { .. } => return Exit::NotAcquired,
                RecipeError::InvalidName(_) => return Exit::Usage,
                RecipeError::TooManyParticipants { .. } => return Exit::Refused,
                // A client error is in the chain after it.
                RecipeError::Client(_) => {}
                _ => return Exit::Failure,
            }
        }
        if let Some(e) = cause.downcast_ref::<ClientError>() {
            return match e {
                ClientError::Rejected { error, .. } => match error {
                    ApiError::Unauthorized { .. }
                    | ApiError::Refused(_)
                    | ApiError::InvalidRequest(_)
                    | ApiError::Compacted { .. }
                    | ApiError::FutureRevision { .. } => Exit::Refused,
                    ApiError::Timeout => Exit::OutcomeUnknown,
                    ApiError::Internal(_) => Exit::Failure,
                    _ => Exit::Unavailable,
                },
                ClientError::OutcomeUnknown { .. } => Exit::OutcomeUnknown,
                ClientError::GaveUp { .. } => Exit::Unavailable,
                ClientError::Config(_) | ClientError::UnknownNode(_) => Exit::Usage,
                _ => Exit::Failure,
            };
        }
    }
    Exit::Failure
}

/// Standard base64 (RFC 4648, with padding).
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            out.push(if i <= chunk.len() { char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]) } else { '=' });
        }
    }
    out
}

/// Puts `bytes` into `map` as `name` (a string) when they are UTF-8 text, else as
/// `name_base64` (standard base64): a reader checks which of the two is present.
pub(crate) fn put_bytes(map: &mut Map<String, Value>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => map.insert(name.to_string(), Value::String(text.to_string())),
        Err(_) => map.insert(format!("{name}_base64"), Value::String(base64(bytes))),
    };
}

/// A key-value pair as JSON: `key`/`key_base64`, `value`/`value_base64`, `create_revision`,
/// `mod_revision`, `version`.
pub(crate) fn kv_json(kv: &KeyValue) -> Map<String, Value> {
    let mut m = Map::new();
    put_bytes(&mut m, "key", &kv.key);
    put_bytes(&mut m, "value", &kv.value);
    m.insert("create_revision".into(), json!(kv.create_revision));
    m.insert("mod_revision".into(), json!(kv.mod_revision));
    m.insert("version".into(), json!(kv.version));
    m
}

/// Bytes as one line of text, unambiguously: UTF-8 text as is, except `\` as `\\`, newline,
/// carriage return and tab as `\n`, `\r`, `\t`, every other control character and every byte
/// that is not UTF-8 as `\xNN`, and (with `escape_equals`, for keys) `=` as `\x3d`. So in
/// `kv scan`'s `KEY=VALUE` lines the first `=` ends the key.
pub(crate) fn escape(bytes: &[u8], escape_equals: bool) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '=' if escape_equals => out.push_str("\\x3d"),
                c if c.is_control() => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        out.push_str(&format!("\\x{b:02x}"));
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Prints `value` as one line of JSON on standard output.
pub(crate) fn print_json(value: &Value) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648() {
        let cases: [(&[u8], &str); 7] = [
            (b"", ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"\xff\x00\xfe", "/wD+"),
        ];
        for (input, want) in cases {
            assert_eq!(base64(input), want, "{input:?}");
        }
    }

    #[test]
    fn bytes_are_text_or_base64_under_a_different_name() {
        let mut m = Map::new();
        put_bytes(&mut m, "key", b"user/1");
        put_bytes(&mut m, "value", b"\xff\x00");
        assert_eq!(Value::Object(m), json!({"key": "user/1", "value_base64": "/wA="}));
    }

    #[test]
    fn escapes_make_scan_lines_unambiguous() {
        assert_eq!(escape(b"plain/key", true), "plain/key");
        assert_eq!(escape("caf\u{e9}".as_bytes(), true), "caf\u{e9}");
        assert_eq!(escape(b"a=b", true), "a\\x3db");
        assert_eq!(escape(b"a=b", false), "a=b");
        assert_eq!(escape(b"line\nnext\\\t\r", false), "line\\nnext\\\\\\t\\r");
        assert_eq!(escape(b"\x00\xff\x1b", false), "\\x00\\xff\\x1b");
        // Two different keys never print the same.
        assert_ne!(escape(b"\\x3d", true), escape(b"=", true));
    }

    #[test]
    fn errors_map_to_distinct_exit_codes() {
        use quorate_api::ApiError;
        use quorate_log::NodeId;
        let node = NodeId::new(1).unwrap();
        let rejected = |error| anyhow::Error::new(ClientError::Rejected { node, error });
        assert_eq!(exit_of(&usage("bad endpoints")), Exit::Usage);
        assert_eq!(exit_of(&rejected(ApiError::Unauthorized { needed: quorate_api::Access::Write })), Exit::Refused);
        assert_eq!(exit_of(&rejected(ApiError::Refused("no".into()))), Exit::Refused);
        assert_eq!(exit_of(&rejected(ApiError::Compacted { revision: 1, compacted: 2 })), Exit::Refused);
        assert_eq!(exit_of(&rejected(ApiError::FutureRevision { revision: 9, current: 2 })), Exit::Refused);
        assert_eq!(exit_of(&rejected(ApiError::Unavailable("no leader".into()))), Exit::Unavailable);
        assert_eq!(exit_of(&rejected(ApiError::Internal("disk".into()))), Exit::Failure);
        let gave_up = ClientError::GaveUp {
            attempts: 3,
            elapsed: std::time::Duration::from_secs(1),
            reason: quorate_client::GiveUpReason::Deadline,
            last: "connection refused".into(),
        };
        // Found through context too.
        assert_eq!(exit_of(&anyhow::Error::new(gave_up).context("cannot list the members")), Exit::Unavailable);
        let unknown = ClientError::OutcomeUnknown {
            attempts: 1,
            elapsed: std::time::Duration::from_secs(1),
            last: "timed out".into(),
        };
        assert_eq!(exit_of(&anyhow::Error::new(unknown)), Exit::OutcomeUnknown);
        assert_eq!(exit_of(&anyhow::anyhow!("cannot read a file")), Exit::Failure);
        let codes = [
            Exit::Ok,
            Exit::Failure,
            Exit::Usage,
            Exit::NotFound,
            Exit::CompareFailed,
            Exit::Unavailable,
            Exit::Refused,
            Exit::OutcomeUnknown,
        ]
        .map(Exit::code);
        assert_eq!(codes, [0, 1, 2, 3, 4, 5, 6, 7]);
    }
}
