//! Client histories: one [`Operation`] record per client call against the key-value store.
//!
//! The deterministic simulator and the real-process chaos tests both record what their clients
//! asked and what came back, and hand the result to
//! [`linearizability::check`](crate::linearizability::check). On disk a history is JSON lines,
//! one operation per line (documented field by field in `docs/history-format.md`):
//!
//! ```text
//! {"client":0,"op":"put","key":"k1","value":"v17","ok":true,"call":1000,"return":2500}
//! {"client":1,"op":"get","key":"k1","output":"v17","call":3000,"return":3100}
//! {"client":2,"op":"cas","key":"k1","expected":"v17","value":"v18","ok":false,"call":3200,"return":3900}
//! {"client":3,"op":"delete","key":"k1","call":4000,"return":null}
//! ```
//!
//! Times are **nanoseconds** read from one monotonic clock shared by every client of the history
//! (virtual time in the simulator). `"return": null` means the outcome is unknown: the operation
//! may or may not have taken effect, at any moment after its call.
//!
//! Parsing follows "parse, don't validate": [`read_jsonl`] either returns typed
//! [`Operation`]s in which contradictory records (an unknown outcome that claims `ok`, a read
//! without an output, a return before the call) cannot be expressed, or a [`HistoryError`] naming
//! the offending line. It never panics, and bounds both the length of a line
//! ([`LINE_BYTES_MAX`]) and the number of operations ([`HISTORY_OPS_MAX`]).

use std::fmt;
use std::io::{self, BufRead, Read, Write};

use serde::{Deserialize, Deserializer, Serialize};

/// The longest line [`read_jsonl`] accepts, in bytes, excluding the line terminator.
pub const LINE_BYTES_MAX: usize = 1 << 20;

/// The most operations [`read_jsonl`] accepts in one history.
pub const HISTORY_OPS_MAX: usize = 10_000_000;

/// One client call against the key-value store: what was asked, when, and what came back.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Operation {
    /// The client (process, session or connection) that issued the call.
    pub client: u64,
    /// The key the operation addresses. Every key is an independent register.
    pub key: String,
    /// The kind of operation, its arguments and its completion.
    pub kind: OpKind,
    /// When the client issued the call, in nanoseconds on the history's monotonic clock.
    pub call: u64,
}

/// The kind of an [`Operation`], with its arguments and how it completed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OpKind {
    /// Set the key to `value`.
    Put {
        /// The value written.
        value: String,
        /// How the put completed.
        completion: Completion,
    },
    /// Read the key.
    Get {
        /// How the read completed, and what it returned.
        completion: ReadCompletion,
    },
    /// Remove the key (it becomes absent; deleting an absent key is allowed).
    Delete {
        /// How the delete completed.
        completion: Completion,
    },
    /// Compare-and-set: set the key to `value` if and only if its current value is `expected`.
    Cas {
        /// The value the key must hold for the swap to happen (an absent key never matches).
        expected: String,
        /// The value written when the comparison succeeds.
        value: String,
        /// How the cas completed; [`Completion::Failed`] means the comparison failed.
        completion: Completion,
    },
}

/// How a put, delete or cas completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Completion {
    /// The client received a success answer at `ret`: the operation took effect exactly once,
    /// somewhere between its call and `ret`.
    Ok {
        /// When the answer arrived, in nanoseconds; never before the call.
        ret: u64,
    },
    /// The client received a definite failure at `ret`: the operation did not take effect.
    /// For a cas this means the comparison failed (the value was not `expected`).
    Failed {
        /// When the answer arrived, in nanoseconds; never before the call.
        ret: u64,
    },
    /// No answer (timeout, crash, lost connection): the operation may have taken effect at any
    /// moment after its call, or never.
    Unknown,
}

/// How a get completed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReadCompletion {
    /// The client received the value at `ret`.
    Returned {
        /// When the answer arrived, in nanoseconds; never before the call.
        ret: u64,
        /// The value read; `None` when the key was absent.
        output: Option<String>,
    },
    /// No answer; such a read constrains nothing and the checker ignores it.
    Unknown,
}

impl Completion {
    /// The return time, or `None` when the outcome is unknown.
    #[must_use]
    pub fn ret(&self) -> Option<u64> {
        match *self {
            Completion::Ok { ret } | Completion::Failed { ret } => Some(ret),
            Completion::Unknown => None,
        }
    }
}

impl ReadCompletion {
    /// The return time, or `None` when the outcome is unknown.
    #[must_use]
    pub fn ret(&self) -> Option<u64> {
        match *self {
            ReadCompletion::Returned { ret, .. } => Some(ret),
            ReadCompletion::Unknown => None,
        }
    }
}

impl Operation {
    /// A put of `value` to `key`.
    #[must_use]
    pub fn put(
        client: u64,
        key: impl Into<String>,
        value: impl Into<String>,
        call: u64,
        completion: Completion,
    ) -> Self {
        let kind = OpKind::Put { value: value.into(), completion };
        Operation { client, key: key.into(), kind, call }
    }

    /// A get of `key`.
    #[must_use]
    pub fn get(client: u64, key: impl Into<String>, call: u64, completion: ReadCompletion) -> Self {
        let kind = OpKind::Get { completion };
        Operation { client, key: key.into(), kind, call }
    }

    /// A delete of `key`.
    #[must_use]
    pub fn delete(client: u64, key: impl Into<String>, call: u64, completion: Completion) -> Self {
        let kind = OpKind::Delete { completion };
        Operation { client, key: key.into(), kind, call }
    }

    /// A compare-and-set of `key` from `expected` to `value`.
    #[must_use]
    pub fn cas(
        client: u64,
        key: impl Into<String>,
        expected: impl Into<String>,
        value: impl Into<String>,
        call: u64,
        completion: Completion,
    ) -> Self {
        let kind = OpKind::Cas { expected: expected.into(), value: value.into(), completion };
        Operation { client, key: key.into(), kind, call }
    }

    /// The return time, or `None` when the outcome is unknown.
    #[must_use]
    pub fn ret(&self) -> Option<u64> {
        match &self.kind {
            OpKind::Put { completion, .. } | OpKind::Delete { completion } | OpKind::Cas { completion, .. } => {
                completion.ret()
            }
            OpKind::Get { completion } => completion.ret(),
        }
    }

    /// Whether the outcome is unknown (`"return": null`).
    #[must_use]
    pub fn is_unknown(&self) -> bool {
        self.ret().is_none()
    }

    /// The operation's name in the JSON format: `put`, `get`, `delete` or `cas`.
    #[must_use]
    pub fn op_name(&self) -> &'static str {
        match self.kind {
            OpKind::Put { .. } => "put",
            OpKind::Get { .. } => "get",
            OpKind::Delete { .. } => "delete",
            OpKind::Cas { .. } => "cas",
        }
    }
}

impl fmt::Display for Operation {
    /// A one-line human-readable form, e.g. `client 1 get "k1" -> "v17" [3000, 3100]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} {} {:?}", self.client, self.op_name(), self.key)?;
        let completion = match &self.kind {
            OpKind::Put { value, completion } => {
                write!(f, " {value:?}")?;
                *completion
            }
            OpKind::Delete { completion } => *completion,
            OpKind::Cas { expected, value, completion } => {
                write!(f, " {expected:?} -> {value:?}")?;
                *completion
            }
            OpKind::Get { completion } => {
                return match completion {
                    ReadCompletion::Returned { ret, output: Some(v) } => {
                        write!(f, " -> {v:?} [{}, {ret}]", self.call)
                    }
                    ReadCompletion::Returned { ret, output: None } => {
                        write!(f, " -> absent [{}, {ret}]", self.call)
                    }
                    ReadCompletion::Unknown => write!(f, " -> unknown [{}, never]", self.call),
                };
            }
        };
        match completion {
            Completion::Ok { ret } => write!(f, " ok [{}, {ret}]", self.call),
            Completion::Failed { ret } => write!(f, " failed [{}, {ret}]", self.call),
            Completion::Unknown => write!(f, " unknown [{}, never]", self.call),
        }
    }
}

/// Why a history could not be read. Line numbers start at 1.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// The reader failed.
    #[error("line {line}: read error: {source}")]
    Io {
        /// The line being read.
        line: usize,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A line is longer than [`LINE_BYTES_MAX`].
    #[error("line {line}: longer than {max_bytes} bytes")]
    LineTooLong {
        /// The offending line.
        line: usize,
        /// The limit, [`LINE_BYTES_MAX`].
        max_bytes: usize,
    },
    /// A line is not a JSON object of the expected shape (syntax, types, unknown fields,
    /// invalid UTF-8, an unknown `op`).
    #[error("line {line}: malformed operation: {source}")]
    Json {
        /// The offending line.
        line: usize,
        /// The JSON decoder's explanation.
        #[source]
        source: serde_json::Error,
    },
    /// A line is well-formed JSON but not a valid operation (a field missing or meaningless for
    /// its `op`, a return before the call, ...).
    #[error("line {line}: invalid operation: {reason}")]
    Invalid {
        /// The offending line.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The history holds more than [`HISTORY_OPS_MAX`] operations.
    #[error("more than {max} operations in one history")]
    TooManyOperations {
        /// The limit, [`HISTORY_OPS_MAX`].
        max: usize,
    },
}

impl HistoryError {
    /// The 1-based line the error is about, if it is about one line.
    #[must_use]
    pub fn line(&self) -> Option<usize> {
        match *self {
            HistoryError::Io { line, .. }
            | HistoryError::LineTooLong { line, .. }
            | HistoryError::Json { line, .. }
            | HistoryError::Invalid { line, .. } => Some(line),
            HistoryError::TooManyOperations { .. } => None,
        }
    }
}

/// The `op` field.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum OpName {
    Put,
    Get,
    Delete,
    Cas,
}

/// One line as it appears on the wire, before its fields are checked against its `op`.
///
/// Fields that may be `null` with a meaning distinct from "absent" are `Option<Option<_>>`:
/// the outer `None` means the field is missing, `Some(None)` means it is `null`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireIn {
    client: u64,
    op: OpName,
    key: String,
    #[serde(default)]
    expected: Option<String>,
    #[serde(default)]
    value: Option<String>,
    #[serde(default, deserialize_with = "present")]
    output: Option<Option<String>>,
    #[serde(default)]
    ok: Option<bool>,
    call: u64,
    #[serde(rename = "return", default, deserialize_with = "present")]
    ret: Option<Option<u64>>,
}

/// Deserializes a field that is present (possibly `null`) as `Some(_)`; a missing field falls
/// back to `#[serde(default)]`, i.e. `None`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// One line as written; the field order matches the documented examples.
#[derive(Serialize)]
struct WireOut<'a> {
    client: u64,
    op: OpName,
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    expected: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ok: Option<bool>,
    call: u64,
    #[serde(rename = "return")]
    ret: Option<u64>,
}

impl WireIn {
    /// Turns a decoded line into an [`Operation`], rejecting field combinations that are
    /// meaningless for the line's `op`.
    fn into_operation(self) -> Result<Operation, &'static str> {
        let ret = self.ret.ok_or("missing field `return` (use null for an unknown outcome)")?;
        if let Some(ret) = ret
            && ret < self.call
        {
            return Err("`return` is earlier than `call`");
        }
        let completion = |ok: Option<bool>| -> Result<Completion, &'static str> {
            match (ret, ok) {
                (Some(ret), Some(true)) => Ok(Completion::Ok { ret }),
                (Some(ret), Some(false)) => Ok(Completion::Failed { ret }),
                (Some(_), None) => Err("missing field `ok` on an operation that returned"),
                (None, None) => Ok(Completion::Unknown),
                (None, Some(_)) => Err("`ok` given on an operation whose `return` is null"),
            }
        };
        let kind = match self.op {
            OpName::Put => {
                if self.expected.is_some() || self.output.is_some() {
                    return Err("`expected` and `output` are not fields of a put");
                }
                let value = self.value.ok_or("missing field `value` on a put")?;
                OpKind::Put { value, completion: completion(self.ok)? }
            }
            OpName::Delete => {
                if self.expected.is_some() || self.value.is_some() || self.output.is_some() {
                    return Err("`expected`, `value` and `output` are not fields of a delete");
                }
                OpKind::Delete { completion: completion(self.ok)? }
            }
            OpName::Cas => {
                if self.output.is_some() {
                    return Err("`output` is not a field of a cas");
                }
                let expected = self.expected.ok_or("missing field `expected` on a cas")?;
                let value = self.value.ok_or("missing field `value` on a cas")?;
                OpKind::Cas { expected, value, completion: completion(self.ok)? }
            }
            OpName::Get => {
                if self.expected.is_some() || self.value.is_some() || self.ok.is_some() {
                    return Err("`expected`, `value` and `ok` are not fields of a get");
                }
                let completion = match (ret, self.output) {
                    (Some(ret), Some(output)) => ReadCompletion::Returned { ret, output },
                    (Some(_), None) => {
                        return Err("missing field `output` on a get that returned \
                                    (use null for an absent key)");
                    }
                    (None, None | Some(None)) => ReadCompletion::Unknown,
                    (None, Some(Some(_))) => {
                        return Err("`output` given on a get whose `return` is null");
                    }
                };
                OpKind::Get { completion }
            }
        };
        Ok(Operation { client: self.client, key: self.key, kind, call: self.call })
    }
}

impl<'a> WireOut<'a> {
    fn new(op: &'a Operation) -> Self {
        let mut out = WireOut {
            client: op.client,
            op: OpName::Get,
            key: &op.key,
            expected: None,
            value: None,
            output: None,
            ok: None,
            call: op.call,
            ret: op.ret(),
        };
        let completion = match &op.kind {
            OpKind::Put { value, completion } => {
                out.op = OpName::Put;
                out.value = Some(value);
                completion
            }
            OpKind::Delete { completion } => {
                out.op = OpName::Delete;
                completion
            }
            OpKind::Cas { expected, value, completion } => {
                out.op = OpName::Cas;
                out.expected = Some(expected);
                out.value = Some(value);
                completion
            }
            OpKind::Get { completion } => {
                if let ReadCompletion::Returned { output, .. } = completion {
                    out.output = Some(output.as_deref());
                }
                return out;
            }
        };
        out.ok = match completion {
            Completion::Ok { .. } => Some(true),
            Completion::Failed { .. } => Some(false),
            Completion::Unknown => None,
        };
        out
    }
}

/// Parses one line (without its terminator) of the JSON-lines format.
///
/// `line` is the 1-based line number used in errors.
///
/// # Errors
/// [`HistoryError::Json`] or [`HistoryError::Invalid`] when the line is not a valid operation,
/// [`HistoryError::LineTooLong`] when it exceeds [`LINE_BYTES_MAX`].
pub fn parse_line(bytes: &[u8], line: usize) -> Result<Operation, HistoryError> {
    if bytes.len() > LINE_BYTES_MAX {
        return Err(HistoryError::LineTooLong { line, max_bytes: LINE_BYTES_MAX });
    }
    let wire: WireIn = serde_json::from_slice(bytes).map_err(|source| HistoryError::Json { line, source })?;
    wire.into_operation().map_err(|reason| HistoryError::Invalid { line, reason })
}

/// Reads a history in the JSON-lines format, one operation per line.
///
/// Blank lines (only whitespace) are skipped; `\n` and `\r\n` terminators are accepted. The
/// operations are returned in file order; the checker does not depend on that order.
///
/// # Errors
/// The first malformed line, with its 1-based number; a read error; more than
/// [`HISTORY_OPS_MAX`] operations.
pub fn read_jsonl<R: BufRead>(mut reader: R) -> Result<Vec<Operation>, HistoryError> {
    let mut ops = Vec::new();
    let mut buf = Vec::new();
    let mut line = 0usize;
    loop {
        line += 1;
        buf.clear();
        // One byte more than a maximal line plus "\r\n" tells a too-long line from a full one.
        let limit = (LINE_BYTES_MAX + 3) as u64;
        let n = (&mut reader)
            .take(limit)
            .read_until(b'\n', &mut buf)
            .map_err(|source| HistoryError::Io { line, source })?;
        if n == 0 {
            return Ok(ops);
        }
        let mut content = buf.as_slice();
        let terminated = content.last() == Some(&b'\n');
        if terminated {
            content = &content[..content.len() - 1];
        }
        if content.last() == Some(&b'\r') {
            content = &content[..content.len() - 1];
        }
        if content.len() > LINE_BYTES_MAX || (!terminated && n as u64 == limit) {
            return Err(HistoryError::LineTooLong { line, max_bytes: LINE_BYTES_MAX });
        }
        if content.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if ops.len() == HISTORY_OPS_MAX {
            return Err(HistoryError::TooManyOperations { max: HISTORY_OPS_MAX });
        }
        ops.push(parse_line(content, line)?);
    }
}

/// Writes `ops` in the JSON-lines format, one operation per line, in slice order.
///
/// The output is read back by [`read_jsonl`] as exactly `ops`. Pass a buffered writer.
///
/// # Errors
/// The writer's errors.
pub fn write_jsonl<W: Write>(mut writer: W, ops: &[Operation]) -> io::Result<()> {
    for op in ops {
        serde_json::to_writer(&mut writer, &WireOut::new(op))?;
        writer.write_all(b"\n")?;
    }
    writer.flush()
}
