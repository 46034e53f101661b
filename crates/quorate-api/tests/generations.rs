//! Protocol generations for client traffic: the attempt-numbered request kind of `quorate/2`,
//! and the answers a `quorate/1` (0.1.0) client gets instead of what it cannot decode.

use quorate_api::*;
use quorate_transport::{MessageKind, WireMessage};

fn encode(m: &NodeMessage) -> Vec<u8> {
    let mut out = Vec::new();
    m.encode(&mut out).expect("encodes");
    out
}

fn put() -> ClientRequest {
    ClientRequest { id: 42, session: None, body: Request::Put { key: b"k".to_vec(), value: b"v".to_vec() } }
}

#[test]
fn an_attempted_request_is_the_attempt_then_the_request_bytes() {
    let attempted = NodeMessage::RequestAttempt(AttemptedRequest { attempt: 2, request: put() });
    assert_eq!(attempted.kind(), kinds::REQUEST_ATTEMPT);
    let bytes = encode(&attempted);
    // Pinned: varint attempt, then exactly the bytes of the same request sent alone (REQUEST).
    assert_eq!(bytes, [2, 42, 0, 0, 1, b'k', 1, b'v']);
    assert_eq!(&bytes[1..], &encode(&NodeMessage::Request(put()))[..]);
    assert_eq!(NodeMessage::decode(PROTOCOL_VERSION, kinds::REQUEST_ATTEMPT, &bytes).expect("decodes"), attempted);
    let NodeMessage::RequestAttempt(a) = attempted else { unreachable!() };
    assert!(a.is_retry());
    assert!(!AttemptedRequest { attempt: 0, request: put() }.is_retry());
    // Every truncation and a trailing byte are errors, never panics.
    for cut in 0..bytes.len() {
        assert!(NodeMessage::decode(PROTOCOL_VERSION, kinds::REQUEST_ATTEMPT, &bytes[..cut]).is_err(), "cut {cut}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(NodeMessage::decode(PROTOCOL_VERSION, kinds::REQUEST_ATTEMPT, &longer).is_err());
    // A kind number of its own, in the application range, distinct from every other kind.
    let all: [MessageKind; 5] =
        [kinds::RAFT, kinds::SNAPSHOT_CHUNK, kinds::REQUEST, kinds::RESPONSE, kinds::REQUEST_ATTEMPT];
    let distinct: std::collections::BTreeSet<u16> = all.iter().map(|k| k.0).collect();
    assert_eq!(distinct.len(), all.len());
}

/// The variants of `ApiError` in 0.1.0 (tag v0.1.0, `crates/quorate-api/src/types.rs`), in
/// order: postcard encodes a variant as its index, and 0.1.0 decodes indexes 0..=9 only.
const API_ERROR_VARIANTS_0_1_0: u8 = 10;
/// `ApiError::Overloaded` was the second variant (index 1) of 0.1.0.
const OVERLOADED_INDEX_0_1_0: u8 = 1;

fn every_error() -> Vec<ApiError> {
    let mut errors = vec![
        ApiError::NotLeader { leader: None, addr: None },
        ApiError::Overloaded { reason: "pending requests".into(), retry_after_ms: 50 },
        ApiError::InvalidRequest("x".into()),
        ApiError::Unavailable("x".into()),
        ApiError::Refused("x".into()),
        ApiError::Timeout,
        ApiError::SessionExpired,
        ApiError::Internal("x".into()),
        ApiError::PageExpired { revision: 1, current: 2 },
    ];
    // Every reason there is: the variant indexes that decode (the enum is append-only).
    let reasons: Vec<OverloadReason> = (0u8..=u8::MAX).map_while(|i| postcard::from_bytes(&[i]).ok()).collect();
    assert!(reasons.len() >= 13, "{reasons:?}");
    errors.extend(reasons.into_iter().map(|reason| ApiError::Shed(Overloaded { reason, retry_after_ms: 1500 })));
    errors
}

#[test]
fn a_quorate_1_client_gets_overloaded_never_shed() {
    let shed = ApiError::Shed(Overloaded { reason: OverloadReason::DiskSpace, retry_after_ms: 1500 });
    let response = ClientResponse { id: 47, result: Err(shed.clone()) };
    // quorate/2: unchanged.
    assert_eq!(response.clone().for_generation(PROTOCOL_GENERATION_2), response);
    // quorate/1: the 0.1.0 variant, same hint, the reason in words. Its bytes are those 0.1.0
    // writes for Overloaded: id 47, Err (1), variant 1, the reason string, varint 1500.
    let old = response.for_generation(PROTOCOL_GENERATION_1);
    let reason = "disk space below the floor";
    assert_eq!(
        old.result,
        Err(ApiError::Overloaded { reason: reason.into(), retry_after_ms: 1500 }),
        "the 0.1.0 variant with the same hint"
    );
    let bytes = encode(&NodeMessage::Response(old));
    let mut expected = vec![47, 1, OVERLOADED_INDEX_0_1_0, reason.len() as u8];
    expected.extend_from_slice(reason.as_bytes());
    expected.extend_from_slice(&[0xdc, 0x0b]); // 1500 as a varint
    assert_eq!(bytes, expected);
    // And the same layout as the fixture of the 0.1.0-era Overloaded answer.
    let fixture = std::fs::read(
        std::path::Path::new(
            &*std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
        )
        .join("tests/fixtures/v1/response_overloaded_text.bin"),
    )
    .expect("fixture");
    assert_eq!(fixture[1..3], [1, OVERLOADED_INDEX_0_1_0]);
}

#[test]
fn every_error_sent_to_a_quorate_1_client_is_a_0_1_0_variant() {
    for error in every_error() {
        let response = ClientResponse { id: 1, result: Err(error.clone()) }.for_generation(PROTOCOL_GENERATION_1);
        let bytes = encode(&NodeMessage::Response(response.clone()));
        // id 1, Err, then the variant index.
        assert_eq!(bytes[..2], [1, 1]);
        assert!(bytes[2] < API_ERROR_VARIANTS_0_1_0, "{error:?} encodes as variant {} for quorate/1", bytes[2]);
        if matches!(error, ApiError::Shed(_)) {
            assert_eq!(bytes[2], OVERLOADED_INDEX_0_1_0, "{error:?}");
        } else if matches!(error, ApiError::PageExpired { .. }) {
            // An answer to a quorate/2 request only; never sent to 0.1.0 as itself.
            assert_eq!(response.result, Err(ApiError::InvalidRequest(error.to_string())));
        } else {
            assert_eq!(response.result, Err(error.clone()), "only Shed changes");
        }
        // quorate/2 keeps Shed as it is.
        let unchanged = error.clone().for_generation(PROTOCOL_GENERATION_2);
        assert_eq!(unchanged, error);
    }
}

/// The `Request` variants of 0.1.0 (tag v0.1.0: `Put` .. `OpenSession`), in order: postcard
/// encodes a variant as its index, and a 0.1.0 node decodes indexes 0..=13 only.
const REQUEST_VARIANTS_0_1_0: u8 = 14;

fn every_request() -> Vec<Request> {
    let k = || b"k".to_vec();
    let requests = vec![
        Request::Put { key: k(), value: k() },
        Request::Get { key: k(), read: ReadConsistency::Linearizable },
        Request::Delete { key: k() },
        Request::Cas { key: k(), expected: None, value: k() },
        Request::Scan { start: k(), end: None, limit: 1, read: ReadConsistency::Stale },
        Request::Txn(Txn { compare: vec![], success: vec![], failure: vec![] }),
        Request::Status,
        Request::MemberList,
        Request::MemberAdd { id: quorate_log::NodeId::new(4).expect("id"), addr: "a:1".into() },
        Request::MemberPromote { id: quorate_log::NodeId::new(4).expect("id") },
        Request::MemberRemove { id: quorate_log::NodeId::new(4).expect("id") },
        Request::LeaderTransfer { to: None },
        Request::SnapshotSave,
        Request::OpenSession,
        Request::Versions,
        Request::Finalize { version: 2 },
        Request::DeleteRange { start: k(), end: k() },
        Request::FlightDump,
        Request::ScanPaged { start: k(), end: None, limit: 1, read: ReadConsistency::Linearizable },
        Request::TxnPaged { txn: Txn { compare: vec![], success: vec![], failure: vec![] }, from: 0, revision: None },
        Request::Health,
        Request::MemberUpdate { id: quorate_log::NodeId::new(4).expect("id"), addr: "a:1".into() },
        Request::SnapshotStreamOpen,
        Request::SnapshotStreamFetch { stream: 1, offset: 0, len: 1 },
        Request::GetAt { key: k(), revision: 1, read: ReadConsistency::Linearizable },
        Request::ScanAt { start: k(), end: None, limit: 1, revision: 1, read: ReadConsistency::Linearizable },
        Request::Compact { revision: 1 },
        Request::History,
    ];
    // The list is every variant, in order: its variant indexes are 0, 1, 2, ...
    for (i, r) in requests.iter().enumerate() {
        assert_eq!(variant_index(r), i as u8, "{r:?} out of place");
    }
    requests
}

/// The postcard variant index of `body` in a request with id 42 and no session.
fn variant_index(body: &Request) -> u8 {
    let bytes = encode(&NodeMessage::Request(ClientRequest { id: 42, session: None, body: body.clone() }));
    assert_eq!(&bytes[..2], &[42, 0]);
    bytes[2]
}

#[test]
fn a_client_refuses_to_send_a_0_1_0_node_exactly_what_0_1_0_cannot_decode() {
    let requests = every_request();
    let mut refused = 0;
    for r in &requests {
        assert_eq!(r.refusal_at_generation(PROTOCOL_GENERATION_2), None, "{r:?} goes to quorate/2 nodes");
        let old = r.refusal_at_generation(PROTOCOL_GENERATION_1);
        assert_eq!(old.is_some(), variant_index(r) >= REQUEST_VARIANTS_0_1_0, "{r:?}: {old:?}");
        if let Some(e) = old {
            refused += 1;
            let ApiError::InvalidRequest(text) = e else { panic!("{r:?}: {e:?} is not a refusal") };
            assert!(!text.is_empty());
        }
    }
    assert_eq!(refused, requests.len() - usize::from(REQUEST_VARIANTS_0_1_0));
    // The requests gated on cluster version 2 are refused in the gate's words: a node that
    // speaks quorate/1 means the cluster is not finalized.
    let gate = |r: Request| r.refusal_at_generation(PROTOCOL_GENERATION_1).map(|e| e.to_string()).unwrap_or_default();
    let delete_range = gate(Request::DeleteRange { start: vec![], end: vec![] });
    assert_eq!(delete_range, cluster_version_refusal("delete-range", 2, 1).to_string());
    assert!(delete_range.contains("needs cluster version 2, the cluster is at 1"), "{delete_range}");
    let update = gate(Request::MemberUpdate { id: quorate_log::NodeId::new(2).expect("id"), addr: "h:1".into() });
    assert!(update.contains("member update needs cluster version 2"), "{update}");
    assert!(gate(Request::Health).contains("Quorate 0.1.0"));
}

#[test]
fn a_bounded_staleness_read_level_is_never_sent_to_a_0_1_0_node() {
    let bounded = ReadConsistency::BoundedStale(StalenessBound { max_lag_entries: Some(1), max_since_leader_ms: None });
    let k = || b"k".to_vec();
    for body in [
        Request::Get { key: k(), read: bounded },
        Request::Scan { start: k(), end: None, limit: 1, read: bounded },
        Request::ScanPaged { start: k(), end: None, limit: 1, read: bounded },
    ] {
        let e = body.refusal_at_generation(PROTOCOL_GENERATION_1).expect("refused on quorate/1");
        assert!(e.to_string().contains("a bounded-staleness read needs cluster version 2"), "{e}");
        assert_eq!(body.refusal_at_generation(PROTOCOL_GENERATION_2), None, "sent on quorate/2");
    }
    // 0.1.0's own read levels go to a 0.1.0 node.
    for read in [ReadConsistency::Linearizable, ReadConsistency::Lease, ReadConsistency::Stale] {
        assert_eq!(Request::Get { key: k(), read }.refusal_at_generation(PROTOCOL_GENERATION_1), None);
    }
}
