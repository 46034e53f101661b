//! Audit events: one per client write or administrative request answered, on the tracing
//! target [`crate::server::AUDIT_TARGET`] (`quorate::audit`): who (principal and role), what
//! (`op`, a bounded, escaped `key`, a short `detail`), the `session` and `seq` the write was
//! sent in (0 for none), whether the answer came from the session's cache (`cached`: a retry,
//! not applied again) and where it came from (`answered`: [`Answered`]; a replay answered
//! before proposing says `"from the session cache, not proposed"`), the `result` (`ok` or the
//! error's kind, with the error text), and the `term`/`index` of the log entry when known (0
//! otherwise).
//!
//! Cost is bounded: no value bytes are logged, a key is cut at [`AUDIT_KEY_BYTES_MAX`] bytes
//! (its full length is said), and details and error texts at [`AUDIT_TEXT_CHARS_MAX`]
//! characters. Reads are not audited.

use quorate_api::{ApiError, Request, Response, Sequenced, TxnOp};
use quorate_log::EntryId;
use quorate_transport::ClientIdentity;
use std::fmt::Write as _;

/// Key bytes written into an audit event; a longer key is cut and its length is noted.
pub(crate) const AUDIT_KEY_BYTES_MAX: usize = 64;
/// Characters of a detail or an error text in an audit event.
pub(crate) const AUDIT_TEXT_CHARS_MAX: usize = 160;

/// What a request does, for its audit event (computed when it arrives, logged when answered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct What {
    /// `put`, `delete`, `cas`, `txn`, `delete_range`, `open_session`, `member_add`, ...
    pub(crate) op: &'static str,
    /// The key (escaped, bounded), empty when the request has none.
    pub(crate) key: String,
    /// More about the request (bounded), empty when nothing.
    pub(crate) detail: String,
    /// The session and sequence number the request was sent in, if any.
    pub(crate) session: Option<Sequenced>,
}

/// Whether audit events are recorded at all (the log filter may turn the target off); when
/// not, no request pays for its description.
fn enabled() -> bool {
    tracing::enabled!(target: crate::server::AUDIT_TARGET, tracing::Level::INFO)
}

/// The audit description of a request (sent in `session`, if any) when audit events are
/// recorded; `None` for reads (not audited) and while the audit target is filtered out.
pub(crate) fn describe(body: &Request, session: Option<Sequenced>) -> Option<What> {
    if enabled() { what_of(body).map(|w| What { session, ..w }) } else { None }
}

/// The audit description of a request; `None` for reads.
fn what_of(body: &Request) -> Option<What> {
    let what =
        |op, key: &[u8], detail: String| Some(What { op, key: key_text(key), detail: bounded(detail), session: None });
    match body {
        Request::Put { key, value } => what("put", key, format!("value_bytes={}", value.len())),
        Request::Delete { key } => what("delete", key, String::new()),
        Request::Cas { key, expected, value } => what(
            "cas",
            key,
            format!("expected_bytes={} value_bytes={}", expected.as_ref().map_or(-1, |e| e.len() as i64), value.len()),
        ),
        Request::Txn(t) if !t.is_read_only() => {
            let key = t
                .success
                .iter()
                .chain(&t.failure)
                .find_map(|o| match o {
                    TxnOp::Put { key, .. } | TxnOp::Delete { key } => Some(key.as_slice()),
                    _ => None,
                })
                .unwrap_or_default();
            what(
                "txn",
                key,
                format!("compares={} success_ops={} failure_ops={}", t.compare.len(), t.success.len(), t.failure.len()),
            )
        }
        Request::DeleteRange { start, end } => what("delete_range", start, format!("end={}", key_text(end))),
        Request::OpenSession => what("open_session", &[], String::new()),
        Request::MemberAdd { id, addr } => what("member_add", &[], format!("id={id} addr={addr}")),
        Request::MemberUpdate { id, addr } => what("member_update", &[], format!("id={id} addr={addr}")),
        Request::MemberPromote { id } => what("member_promote", &[], format!("id={id}")),
        Request::MemberRemove { id } => what("member_remove", &[], format!("id={id}")),
        Request::LeaderTransfer { to } => {
            what("leader_transfer", &[], to.map_or_else(|| "to=any".to_string(), |t| format!("to={t}")))
        }
        Request::SnapshotSave => what("snapshot_save", &[], String::new()),
        Request::SnapshotStreamOpen => what("snapshot_stream_open", &[], String::new()),
        Request::Finalize { version } => what("finalize", &[], format!("version={version}")),
        Request::PutWithLease { key, value, lease } => {
            what("put", key, format!("value_bytes={} lease={}", value.len(), lease.0))
        }
        Request::LeaseGrant { ttl_ms } => what("lease_grant", &[], format!("ttl_ms={ttl_ms}")),
        Request::LeaseRevoke { id } => what("lease_revoke", &[], format!("id={}", id.0)),
        _ => None,
    }
}

/// A key as text: printable ASCII as is, anything else escaped (`\xNN`), cut after
/// [`AUDIT_KEY_BYTES_MAX`] bytes with the full length noted.
pub(crate) fn key_text(key: &[u8]) -> String {
    let mut s = String::new();
    for &b in key.iter().take(AUDIT_KEY_BYTES_MAX) {
        match b {
            b'\\' => s.push_str("\\\\"),
            b'"' => s.push_str("\\\""),
            0x20..=0x7e => s.push(char::from(b)),
            _ => {
                let _ = write!(s, "\\x{b:02x}");
            }
        }
    }
    if key.len() > AUDIT_KEY_BYTES_MAX {
        let _ = write!(s, "...({} bytes)", key.len());
    }
    s
}

fn bounded(mut s: String) -> String {
    if let Some((cut, _)) = s.char_indices().nth(AUDIT_TEXT_CHARS_MAX) {
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// The `result` field: `ok`, or the kind of the error.
pub(crate) fn result_kind(result: &Result<Response, ApiError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(ApiError::NotLeader { .. }) => "not_leader",
        Err(ApiError::Overloaded { .. } | ApiError::Shed(_)) => "overloaded",
        Err(ApiError::Unauthorized { .. }) => "unauthorized",
        Err(ApiError::InvalidRequest(_)) => "invalid_request",
        Err(ApiError::Unavailable(_)) => "unavailable",
        Err(ApiError::Refused(_)) => "refused",
        Err(ApiError::Timeout) => "timeout",
        Err(ApiError::SessionExpired) => "session_expired",
        Err(ApiError::Internal(_)) => "internal",
        Err(_) => "error",
    }
}

/// Where an answer came from (the `answered` field of its audit event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answered {
    /// As any request: applied, refused, or failed (`"normally"`).
    Normally,
    /// A retry of the session's last sequence number met at apply, answered with the original
    /// result and not applied again (`"from the session cache, at apply"`).
    FromCacheAtApply,
    /// A replay of the session's last applied sequence number, answered with the original
    /// result before anything was proposed (`"from the session cache, not proposed"`).
    FromCacheNotProposed,
    /// A replay of an older sequence number than the session's last, refused before anything
    /// was proposed, as apply refuses it (`"from the session table, not proposed"`).
    FromTableNotProposed,
}

impl Answered {
    /// The answer is the cached result of the session's last sequence number.
    pub(crate) fn cached(self) -> bool {
        matches!(self, Answered::FromCacheAtApply | Answered::FromCacheNotProposed)
    }

    /// The `answered` field.
    pub(crate) fn text(self) -> &'static str {
        match self {
            Answered::Normally => "normally",
            Answered::FromCacheAtApply => "from the session cache, at apply",
            Answered::FromCacheNotProposed => "from the session cache, not proposed",
            Answered::FromTableNotProposed => "from the session table, not proposed",
        }
    }
}

/// Writes the audit event of an answered request, `answered` as it says.
pub(crate) fn emit(
    from: &ClientIdentity,
    what: &What,
    result: &Result<Response, ApiError>,
    at: Option<EntryId>,
    answered: Answered,
) {
    let (term, index) = at.map_or((0, 0), |a| (a.term.0, a.index.0));
    let (session, seq) = match (what.session, result) {
        (Some(s), _) => (s.session.0, s.seq),
        // The session a request opened.
        (None, Ok(Response::Session(id))) => (id.0, 0),
        (None, _) => (0, 0),
    };
    let error = match result {
        Ok(_) => String::new(),
        Err(e) => bounded(e.to_string()),
    };
    tracing::info!(
        target: crate::server::AUDIT_TARGET,
        principal = %from.principal.as_str(),
        role = %from.role,
        op = what.op,
        key = %what.key,
        detail = %what.detail,
        session,
        seq,
        cached = answered.cached(),
        answered = answered.text(),
        result = result_kind(result),
        error = %error,
        term,
        index,
        "client write"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorate_api::{Compare, Txn};
    use quorate_log::NodeId;

    #[test]
    fn writes_and_admin_requests_are_described_reads_are_not() {
        let put = Request::Put { key: b"user/1".to_vec(), value: vec![0; 1000] };
        assert_eq!(
            what_of(&put),
            Some(What { op: "put", key: "user/1".into(), detail: "value_bytes=1000".into(), session: None }),
            "the value's size, never its bytes"
        );
        assert_eq!(what_of(&Request::Delete { key: b"k".to_vec() }).map(|w| w.op), Some("delete"));
        let cas = Request::Cas { key: b"k".to_vec(), expected: None, value: b"v".to_vec() };
        assert_eq!(what_of(&cas).map(|w| w.detail), Some("expected_bytes=-1 value_bytes=1".into()));
        let txn = Txn {
            compare: Vec::<Compare>::new(),
            success: vec![TxnOp::Get { key: b"a".to_vec() }, TxnOp::Put { key: b"b".to_vec(), value: b"x".to_vec() }],
            failure: vec![],
        };
        let w = what_of(&Request::Txn(txn)).expect("a writing txn is audited");
        assert_eq!((w.op, w.key.as_str()), ("txn", "b"));
        let read_txn = Txn { compare: vec![], success: vec![TxnOp::Get { key: b"a".to_vec() }], failure: vec![] };
        assert_eq!(what_of(&Request::Txn(read_txn)), None);
        assert_eq!(what_of(&Request::Status), None);
        let dr = Request::DeleteRange { start: b"a".to_vec(), end: b"b".to_vec() };
        assert_eq!(what_of(&dr).map(|w| (w.op, w.key, w.detail)), Some(("delete_range", "a".into(), "end=b".into())));
        let add = Request::MemberAdd { id: NodeId::new(4).expect("id"), addr: "127.0.0.1:7004".into() };
        assert_eq!(what_of(&add).map(|w| w.detail), Some("id=4 addr=127.0.0.1:7004".into()));
        assert_eq!(what_of(&Request::Finalize { version: 2 }).map(|w| w.op), Some("finalize"));
        assert_eq!(what_of(&Request::SnapshotSave).map(|w| w.op), Some("snapshot_save"));
        assert_eq!(what_of(&Request::LeaderTransfer { to: None }).map(|w| w.detail), Some("to=any".into()));
    }

    #[test]
    fn keys_are_escaped_and_bounded() {
        assert_eq!(key_text(b"plain/key-1"), "plain/key-1");
        assert_eq!(key_text(b"a\"b\\c\n\x00\xff"), "a\\\"b\\\\c\\x0a\\x00\\xff");
        let long = vec![b'k'; 1000];
        let t = key_text(&long);
        assert!(t.starts_with(&"k".repeat(AUDIT_KEY_BYTES_MAX)) && t.ends_with("...(1000 bytes)"), "{t}");
        assert!(t.len() < AUDIT_KEY_BYTES_MAX + 20);
        // A long address in a detail is cut too.
        let add = Request::MemberAdd { id: NodeId::new(4).expect("id"), addr: "x".repeat(5000) };
        assert!(what_of(&add).expect("admin").detail.len() <= AUDIT_TEXT_CHARS_MAX + 3);
    }

    #[test]
    fn answers_from_the_session_cache_are_said_so() {
        assert_eq!((Answered::Normally.cached(), Answered::Normally.text()), (false, "normally"));
        assert!(Answered::FromCacheAtApply.cached() && Answered::FromCacheNotProposed.cached());
        assert!(!Answered::FromTableNotProposed.cached(), "an older sequence number is refused, not cached");
        assert_eq!(Answered::FromCacheNotProposed.text(), "from the session cache, not proposed");
    }

    #[test]
    fn results_are_named_by_kind() {
        assert_eq!(result_kind(&Ok(Response::Done)), "ok");
        assert_eq!(result_kind(&Err(ApiError::Timeout)), "timeout");
        assert_eq!(result_kind(&Err(ApiError::NotLeader { leader: None, addr: None })), "not_leader");
        assert_eq!(result_kind(&Err(ApiError::InvalidRequest("x".into()))), "invalid_request");
    }
}
