//! Golden fixtures of every message kind, round trips, bounds, and garbage that never panics.
//!
//! `QUORATE_REWRITE_FIXTURES=1` regenerates the fixtures of the current version; review the
//! diff. Fixtures of released versions must never be rewritten.

use quorate_api::*;
use quorate_core::{Append, Message, MessageBody};
use quorate_log::{Configuration, Data, Entry, EntryId, EntryPayload, LogIndex, NodeId, SnapshotMeta, Term};
use quorate_transport::WireMessage;
use std::path::PathBuf;

fn n(i: u64) -> NodeId {
    NodeId::new(i).expect("non-zero")
}

fn samples() -> Vec<(&'static str, NodeMessage)> {
    let entry = Entry { index: LogIndex(7), term: Term(3), payload: EntryPayload::Command(Data::from("cmd")) };
    let conf = Configuration::with_voters([1, 2, 3].map(n)).expect("voters");
    vec![
        (
            "raft_append",
            NodeMessage::Raft(Message {
                from: n(1),
                to: n(2),
                term: Term(3),
                body: MessageBody::Append(Append {
                    prev: EntryId::new(Term(2), LogIndex(6)),
                    entries: vec![entry],
                    commit: LogIndex(5),
                }),
            }),
        ),
        (
            "snapshot_chunk",
            NodeMessage::SnapshotChunk(SnapshotChunk {
                term: Term(3),
                meta: SnapshotMeta { last: EntryId::new(Term(2), LogIndex(100)), config: conf },
                offset: 4096,
                total: 10_000,
                data: vec![1, 2, 3, 4],
            }),
        ),
        (
            "request_put",
            NodeMessage::Request(ClientRequest {
                id: 42,
                session: Some(Sequenced { session: SessionId(9), seq: 3 }),
                body: Request::Put { key: b"k".to_vec(), value: b"v".to_vec() },
            }),
        ),
        (
            "request_txn",
            NodeMessage::Request(ClientRequest {
                id: 43,
                session: None,
                body: Request::Txn(Txn {
                    compare: vec![Compare {
                        key: b"lock".to_vec(),
                        target: CompareTarget::Value(None),
                        op: CompareOp::Equal,
                    }],
                    success: vec![TxnOp::Put { key: b"lock".to_vec(), value: b"me".to_vec() }],
                    failure: vec![TxnOp::Get { key: b"lock".to_vec() }],
                }),
            }),
        ),
        (
            "response_get",
            NodeMessage::Response(ClientResponse {
                id: 44,
                result: Ok(Response::Get {
                    kv: Some(KeyValue {
                        key: b"k".to_vec(),
                        value: b"v".to_vec(),
                        create_revision: 2,
                        mod_revision: 5,
                        version: 3,
                    }),
                    read: ReadInfo { node: n(2), revision: 5, applied: LogIndex(9), staleness: None },
                }),
            }),
        ),
        (
            "response_not_leader",
            NodeMessage::Response(ClientResponse {
                id: 45,
                result: Err(ApiError::NotLeader { leader: Some(n(3)), addr: Some("127.0.0.1:7003".into()) }),
            }),
        ),
        (
            "response_overloaded_text",
            NodeMessage::Response(ClientResponse {
                id: 46,
                result: Err(ApiError::Overloaded { reason: "pending requests".into(), retry_after_ms: 50 }),
            }),
        ),
        (
            "response_shed",
            NodeMessage::Response(ClientResponse {
                id: 47,
                result: Err(ApiError::Shed(Overloaded { reason: OverloadReason::DiskSpace, retry_after_ms: 1500 })),
            }),
        ),
        // Since 0.2.0: paged reads (quorate/2 connections only).
        (
            "request_scan_paged",
            NodeMessage::Request(ClientRequest {
                id: 48,
                session: None,
                body: Request::ScanPaged {
                    start: b"a".to_vec(),
                    end: Some(b"b".to_vec()),
                    limit: 100,
                    read: ReadConsistency::Linearizable,
                },
            }),
        ),
        (
            "response_scan_page",
            NodeMessage::Response(ClientResponse {
                id: 48,
                result: Ok(Response::ScanPage {
                    kvs: vec![KeyValue {
                        key: b"a".to_vec(),
                        value: b"v".to_vec(),
                        create_revision: 1,
                        mod_revision: 2,
                        version: 2,
                    }],
                    next: Some(b"a0".to_vec()),
                    read: ReadInfo { node: n(1), revision: 2, applied: LogIndex(8), staleness: None },
                }),
            }),
        ),
        (
            "request_txn_paged",
            NodeMessage::Request(ClientRequest {
                id: 49,
                session: None,
                body: Request::TxnPaged {
                    txn: Txn { compare: vec![], success: vec![TxnOp::Get { key: b"k".to_vec() }], failure: vec![] },
                    from: 1,
                    revision: Some(7),
                },
            }),
        ),
        (
            "response_txn_page",
            NodeMessage::Response(ClientResponse {
                id: 49,
                result: Ok(Response::TxnPage {
                    succeeded: true,
                    results: vec![TxnResult::Get(None)],
                    revision: 7,
                    next: Some(2),
                }),
            }),
        ),
        (
            "response_page_expired",
            NodeMessage::Response(ClientResponse {
                id: 50,
                result: Err(ApiError::PageExpired { revision: 7, current: 9 }),
            }),
        ),
        (
            "response_shed_response_bytes",
            NodeMessage::Response(ClientResponse {
                id: 51,
                result: Err(ApiError::Shed(Overloaded { reason: OverloadReason::ResponseBytes, retry_after_ms: 20 })),
            }),
        ),
        (
            "disk_status",
            NodeMessage::DiskStatus(DiskStatus { refusing: true, free_bytes: 300 << 20, floor_bytes: 432 << 20 }),
        ),
        // Since 0.2.0: resumable snapshot transfers (cluster version 2).
        (
            "snapshot_piece",
            NodeMessage::SnapshotPiece(SnapshotPiece {
                term: Term(3),
                meta: SnapshotMeta {
                    last: EntryId::new(Term(2), LogIndex(90)),
                    config: Configuration::with_voters([n(1), n(2), n(3)]).expect("voters"),
                },
                total: 10,
                checksum: 0xDEAD_BEEF,
                offset: 6,
                data: b"tail".to_vec(),
                data_crc: 0x1234_5678,
                done: true,
            }),
        ),
        (
            "snapshot_ack",
            NodeMessage::SnapshotAck(SnapshotAck {
                term: Term(3),
                last: EntryId::new(Term(2), LogIndex(90)),
                checksum: 0xDEAD_BEEF,
                offset: 6,
                status: SnapshotAckStatus::Staging,
            }),
        ),
    ]
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(&*std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()))
        .join("tests/fixtures/v1")
        .join(format!("{name}.bin"))
}

#[test]
fn golden_fixtures_of_every_kind_decode() {
    let rewrite = std::env::var_os("QUORATE_REWRITE_FIXTURES").is_some();
    let mut kinds = std::collections::BTreeSet::new();
    for (name, msg) in samples() {
        let mut bytes = Vec::new();
        msg.encode(&mut bytes).expect("encodes");
        let path = fixture(name);
        if rewrite {
            std::fs::write(&path, &bytes).expect("write fixture");
        }
        let golden = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(golden, bytes, "{name}: encoding changed; a released version must keep its bytes");
        let decoded = NodeMessage::decode(PROTOCOL_VERSION, msg.kind(), &golden).expect("fixture decodes");
        assert_eq!(decoded, msg, "{name}");
        kinds.insert(msg.kind().0);
    }
    assert_eq!(kinds.len(), 7, "every message kind but hash samples and attempted requests has a fixture");
}

#[test]
fn every_answer_fits_a_message_and_a_transport_frame() {
    // The largest answers the node can give (the limits are compile-time relations; this
    // checks the encoding itself): one pair of the largest key and value, and a page at the
    // result limit.
    let pair = KeyValue {
        key: vec![b'k'; limits::KEY_BYTES_MAX],
        value: vec![b'v'; limits::VALUE_BYTES_MAX],
        create_revision: u64::MAX,
        mod_revision: u64::MAX,
        version: u64::MAX,
    };
    assert!(encoded_len(&pair) <= limits::KEY_VALUE_BYTES_MAX, "{}", encoded_len(&pair));
    let read = ReadInfo {
        node: n(u64::MAX),
        revision: u64::MAX,
        applied: LogIndex(u64::MAX),
        staleness: Some(Staleness { known_commit: LogIndex(u64::MAX), since_leader_ms: Some(u64::MAX) }),
    };
    let page = Response::ScanPage { kvs: vec![pair.clone(); 3], next: Some(vec![b'k'; limits::KEY_BYTES_MAX]), read };
    assert!(encoded_len(&page) <= limits::RESULT_BYTES_MAX);
    let response = NodeMessage::Response(ClientResponse { id: u64::MAX, result: Ok(page) });
    let mut bytes = Vec::new();
    response.encode(&mut bytes).expect("an answer within the result limit encodes");
    assert!(bytes.len() <= limits::MESSAGE_BYTES_MAX);
    assert!(bytes.len() <= quorate_transport::FRAME_PAYLOAD_BYTES_DEFAULT as usize);
    // A put of the largest key and value fits a command, even with a principal.
    let by = Command {
        session: Some(Sequenced { session: SessionId(u64::MAX), seq: u64::MAX }),
        time_ms: u64::MAX,
        op: CommandOp::ByPrincipal {
            principal: "p".repeat(quorate_transport::PRINCIPAL_BYTES_MAX),
            op: KvOp::Put { key: pair.key.clone(), value: pair.value.clone() },
        },
    };
    assert!(encode_command(&by).is_ok());
    // An answer larger than a message is refused by the encoder (the node answers an error).
    let huge = Response::Scan { kvs: vec![pair; 9], more: false, read: page_read() };
    assert!(NodeMessage::Response(ClientResponse { id: 1, result: Ok(huge) }).encode(&mut Vec::new()).is_err());
}

fn page_read() -> ReadInfo {
    ReadInfo { node: n(1), revision: 1, applied: LogIndex(1), staleness: None }
}

#[test]
fn commands_round_trip() {
    let cmd = Command {
        session: Some(Sequenced { session: SessionId(1), seq: 2 }),
        time_ms: 1_700_000,
        op: CommandOp::Cas { key: b"k".to_vec(), expected: None, value: b"v".to_vec() },
    };
    let bytes = encode_command(&cmd).expect("encodes");
    assert_eq!(decode_command(&bytes), Ok(cmd));
    assert!(decode_command(&[0xff; 3]).is_err());
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(decode_command(&trailing).is_err(), "trailing bytes are refused");
}

#[test]
fn out_of_bounds_requests_decode_and_are_refused_by_validate() {
    // The decoder checks the encoding only, so the node can answer a bounds violation with a
    // typed error on the same stream; `validate` (called by the node) names the bound.
    let big = ClientRequest {
        id: 1,
        session: None,
        body: Request::Put { key: vec![b'k'; limits::KEY_BYTES_MAX + 1], value: vec![] },
    };
    let mut bytes = Vec::new();
    NodeMessage::Request(big).encode(&mut bytes).expect("encodes");
    let Ok(NodeMessage::Request(decoded)) = NodeMessage::decode(PROTOCOL_VERSION, kinds::REQUEST, &bytes) else {
        panic!("a well-formed request decodes")
    };
    let err = decoded.validate().unwrap_err();
    assert!(err.contains("key"), "{err}");
    let zero_seq = ClientRequest {
        id: 1,
        session: Some(Sequenced { session: SessionId(1), seq: 0 }),
        body: Request::Delete { key: b"k".to_vec() },
    };
    assert!(zero_seq.validate().is_err());
    let scan = ClientRequest {
        id: 1,
        session: None,
        body: Request::Scan { start: vec![], end: None, limit: 0, read: ReadConsistency::Stale },
    };
    assert!(scan.validate().is_err());
    assert!(NodeMessage::decode(2, kinds::REQUEST, &[]).is_err(), "unknown versions are refused");
}

#[test]
fn garbage_never_panics() {
    // Seeded pseudo-random inputs, plus every fixture truncated and bit-flipped.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let all_kinds = kinds::ALL;
    for _ in 0..20_000 {
        let len = (next() % 64) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let kind = all_kinds[(next() % all_kinds.len() as u64) as usize];
        let _ = NodeMessage::decode(PROTOCOL_VERSION, kind, &bytes);
        let _ = decode_command(&bytes);
    }
    for (_, msg) in samples() {
        let mut bytes = Vec::new();
        msg.encode(&mut bytes).expect("encodes");
        for cut in 0..bytes.len() {
            assert!(NodeMessage::decode(PROTOCOL_VERSION, msg.kind(), &bytes[..cut]).is_err() || cut == bytes.len());
        }
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x55;
            let _ = NodeMessage::decode(PROTOCOL_VERSION, msg.kind(), &flipped);
        }
    }
}

#[test]
fn access_levels() {
    assert_eq!(Request::Get { key: b"k".to_vec(), read: ReadConsistency::Linearizable }.access(), Access::Read);
    assert_eq!(Request::Put { key: b"k".to_vec(), value: vec![] }.access(), Access::Write);
    assert_eq!(Request::MemberRemove { id: n(1) }.access(), Access::Admin);
    let read_only = Txn { compare: vec![], success: vec![TxnOp::Get { key: b"k".to_vec() }], failure: vec![] };
    assert_eq!(Request::Txn(read_only).access(), Access::Read);
    assert!(Access::Admin > Access::Write && Access::Write > Access::Read);
}

#[test]
fn shed_is_the_last_error_variant_and_every_reason_round_trips() {
    // postcard encodes a variant by its index: `Shed` was appended after `Internal` (index 8),
    // so every earlier encoding keeps its meaning.
    let internal = postcard::to_allocvec(&ApiError::Internal(String::new())).expect("encodes");
    assert_eq!(internal[0], 8);
    let reasons = [
        OverloadReason::QueueFull,
        OverloadReason::ConcurrencyLimit,
        OverloadReason::FairShare,
        OverloadReason::RateLimited,
        OverloadReason::RetryBudget,
        OverloadReason::InFlightBytes,
        OverloadReason::RequestTooLarge,
        OverloadReason::UncommittedBytes,
        OverloadReason::ApplyLag,
        OverloadReason::DiskSpace,
        OverloadReason::FsyncLatency,
        OverloadReason::PeerBacklog,
        OverloadReason::PendingReads,
        OverloadReason::PrincipalRequests,
        OverloadReason::ResponseBytes,
    ];
    let mut labels = std::collections::BTreeSet::new();
    for (i, reason) in reasons.into_iter().enumerate() {
        let error = ApiError::Shed(Overloaded { reason, retry_after_ms: 250 });
        let bytes = postcard::to_allocvec(&error).expect("encodes");
        assert_eq!(bytes[..2], [9, i as u8], "{reason:?}");
        assert_eq!(postcard::from_bytes::<ApiError>(&bytes).expect("decodes"), error);
        assert!(labels.insert(reason.label()));
        assert_eq!(reason.is_retryable(), reason != OverloadReason::RequestTooLarge);
    }
    let shown = ApiError::Shed(Overloaded { reason: OverloadReason::DiskSpace, retry_after_ms: 1500 }).to_string();
    assert_eq!(shown, "overloaded (disk space below the floor); retry after 1500 ms");
}

#[test]
fn snapshot_pieces_out_of_bounds_are_refused_by_the_decoder_and_the_encoder() {
    use quorate_transport::MessageError;
    let good = SnapshotPiece {
        term: Term(3),
        meta: SnapshotMeta { last: EntryId::new(Term(2), LogIndex(90)), config: Configuration::default() },
        total: 10,
        checksum: 7,
        offset: 6,
        data: b"tail".to_vec(),
        data_crc: 9,
        done: true,
    };
    let bad = [
        SnapshotPiece { offset: 7, ..good.clone() },
        SnapshotPiece { offset: u64::MAX - 1, ..good.clone() },
        SnapshotPiece { done: false, ..good.clone() },
        SnapshotPiece { offset: 0, done: true, ..good.clone() },
        SnapshotPiece {
            data: vec![0; quorate_api::limits::SNAPSHOT_CHUNK_BYTES_MAX + 1],
            total: u64::MAX,
            offset: 0,
            done: false,
            ..good.clone()
        },
    ];
    let mut out = Vec::new();
    NodeMessage::SnapshotPiece(good.clone()).encode(&mut out).expect("in bounds");
    assert_eq!(
        NodeMessage::decode(PROTOCOL_VERSION, kinds::SNAPSHOT_PIECE, &out).ok(),
        Some(NodeMessage::SnapshotPiece(good))
    );
    for p in bad {
        let raw = postcard::to_allocvec(&p).expect("postcard");
        let decoded = NodeMessage::decode(PROTOCOL_VERSION, kinds::SNAPSHOT_PIECE, &raw);
        assert!(
            matches!(decoded, Err(MessageError::Malformed { .. })),
            "{:?} decoded",
            (p.offset, p.data.len(), p.done)
        );
        assert!(NodeMessage::SnapshotPiece(p).encode(&mut Vec::new()).is_err());
    }
    // An acknowledgement with a status this build does not know is an error, not a panic.
    let ack = SnapshotAck {
        term: Term(3),
        last: EntryId::new(Term(2), LogIndex(90)),
        checksum: 7,
        offset: 4,
        status: SnapshotAckStatus::Restart,
    };
    let mut raw = postcard::to_allocvec(&ack).expect("postcard");
    *raw.last_mut().expect("a status byte") = 9;
    assert!(NodeMessage::decode(PROTOCOL_VERSION, kinds::SNAPSHOT_ACK, &raw).is_err());
}
