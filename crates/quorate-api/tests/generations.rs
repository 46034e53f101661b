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
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1/response_overloaded_text.bin"),
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
