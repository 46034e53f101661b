//! The wire of every released version stays decodable, byte for byte.
//!
//! The fixtures below were released with 0.1.0 (tag `v0.1.0`, commit 243e49c); their sizes and
//! FNV-1a hashes are pinned here, so `QUORATE_REWRITE_FIXTURES=1` can never silently change a
//! released fixture, and every later build must still decode them — while a 0.2.0 message
//! (new kinds of request and command) decodes alongside.

use quorate_api::*;
use quorate_transport::{MessageKind, WireMessage};

/// (fixture, message kind, length, FNV-1a 64) as released in 0.1.0.
const RELEASED_0_1_0: &[(&str, MessageKind, usize, u64)] = &[
    ("raft_append", kinds::RAFT, 15, 0xe47b_a567_9bd5_e4a5),
    ("request_put", kinds::REQUEST, 9, 0xcbee_e373_282d_9c23),
    ("request_txn", kinds::REQUEST, 29, 0x7c61_3784_72ee_8f0d),
    ("response_get", kinds::RESPONSE, 15, 0x500e_c2a0_2377_69fe),
    ("response_not_leader", kinds::RESPONSE, 21, 0xd44f_d1d4_92d7_7ca1),
    ("snapshot_chunk", kinds::SNAPSHOT_CHUNK, 18, 0x0726_6ce0_8c6f_493b),
];

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

#[test]
fn fixtures_released_with_0_1_0_are_unchanged_and_decode() {
    let dir = std::path::Path::new(
        &*std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("tests/fixtures/v1");
    for &(name, kind, len, hash) in RELEASED_0_1_0 {
        let bytes = std::fs::read(dir.join(format!("{name}.bin"))).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((bytes.len(), fnv1a(&bytes)), (len, hash), "{name}: a fixture released with 0.1.0 changed");
        let msg = NodeMessage::decode(1, kind, &bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(msg.kind(), kind, "{name}");
        let mut again = Vec::new();
        msg.encode(&mut again).expect("encodes");
        assert_eq!(again, bytes, "{name}: re-encoding a 0.1.0 message must give its 0.1.0 bytes");
    }
}

#[test]
fn messages_added_after_0_1_0_are_appended_variants() {
    // Appended variants keep every 0.1.0 variant index; the new ones round-trip.
    let new = [
        Request::Versions,
        Request::Finalize { version: 2 },
        Request::DeleteRange { start: b"a".to_vec(), end: b"b".to_vec() },
        Request::FlightDump,
        Request::ScanPaged { start: b"a".to_vec(), end: None, limit: 1, read: ReadConsistency::Stale },
        Request::TxnPaged { txn: Txn::default(), from: 0, revision: None },
        Request::Health,
        Request::MemberUpdate { id: quorate_log::NodeId::new(3).expect("non-zero"), addr: "n3:7003".into() },
    ];
    for body in new {
        let msg = NodeMessage::Request(ClientRequest { id: 9, session: None, body });
        let mut bytes = Vec::new();
        msg.encode(&mut bytes).expect("encodes");
        assert_eq!(NodeMessage::decode(PROTOCOL_VERSION, kinds::REQUEST, &bytes).expect("decodes"), msg);
    }
    let cmd = Command { session: None, time_ms: 1, op: CommandOp::SetClusterVersion { version: 2 } };
    assert_eq!(decode_command(&encode_command(&cmd).expect("encodes")).expect("decodes"), cmd);
    // A bad range is refused by the decoder's validation.
    let bad =
        ClientRequest { id: 1, session: None, body: Request::DeleteRange { start: b"b".to_vec(), end: b"a".to_vec() } };
    assert!(bad.validate().is_err());
    const { assert!(CLUSTER_VERSION > CLUSTER_VERSION_INITIAL) };
}

#[test]
fn commands_of_cluster_version_2_are_appended_variants() {
    // Principal-bound sessions: two command kinds after every 0.1.0 one (Put 0 .. OpenSession
    // 4, SetMemberAddr 5, then 0.2.0's SetClusterVersion 6, DeleteRange 7), pinned byte for
    // byte: the log outlives binaries.
    let open =
        Command { session: None, time_ms: 5, op: CommandOp::OpenSessionFor { principal: "al".into(), nonce: 3 } };
    assert_eq!(encode_command(&open).expect("encodes"), [0, 5, 8, 2, b'a', b'l', 3]);
    let by = Command {
        session: Some(Sequenced { session: SessionId(3), seq: 1 }),
        time_ms: 5,
        op: CommandOp::ByPrincipal { principal: "al".into(), op: KvOp::Delete { key: b"k".to_vec() } },
    };
    let bytes = encode_command(&by).expect("encodes");
    assert_eq!(bytes, [1, 3, 1, 5, 9, 2, b'a', b'l', 1, 1, b'k']);
    assert_eq!(decode_command(&bytes).expect("decodes"), by);
    // Every key-value operation converts both ways; the others are not key-value operations.
    for op in [
        CommandOp::Put { key: b"k".to_vec(), value: b"v".to_vec() },
        CommandOp::Delete { key: b"k".to_vec() },
        CommandOp::Cas { key: b"k".to_vec(), expected: None, value: b"v".to_vec() },
        CommandOp::Txn(Txn::default()),
        CommandOp::DeleteRange { start: b"a".to_vec(), end: b"b".to_vec() },
    ] {
        assert_eq!(KvOp::from_command(op.clone()).expect("a key-value operation").into_command(), op);
    }
    assert!(KvOp::from_command(CommandOp::OpenSession).is_err());
    // Lease writes in a session (after PutLeased 5: LeaseGrant 6, LeaseRevoke 7); from the
    // plain commands they drop the principal, which the `ByPrincipal` around them carries.
    let in_session = |op| Command {
        session: Some(Sequenced { session: SessionId(3), seq: 1 }),
        time_ms: 5,
        op: CommandOp::ByPrincipal { principal: "al".into(), op },
    };
    let grant = in_session(KvOp::LeaseGrant { ttl_ms: 5_000 });
    let bytes = encode_command(&grant).expect("encodes");
    assert_eq!(bytes, [1, 3, 1, 5, 9, 2, b'a', b'l', 6, 0x88, 0x27]);
    assert_eq!(decode_command(&bytes).expect("decodes"), grant);
    let revoke = in_session(KvOp::LeaseRevoke { id: LeaseId(7), admin: false });
    let bytes = encode_command(&revoke).expect("encodes");
    assert_eq!(bytes, [1, 3, 1, 5, 9, 2, b'a', b'l', 7, 7, 0]);
    assert_eq!(decode_command(&bytes).expect("decodes"), revoke);
    assert_eq!(
        KvOp::from_command(CommandOp::LeaseGrant { principal: "al".into(), ttl_ms: 5_000 }),
        Ok(KvOp::LeaseGrant { ttl_ms: 5_000 })
    );
    assert_eq!(
        KvOp::from_command(CommandOp::LeaseRevoke { principal: "al".into(), admin: true, id: LeaseId(7) }),
        Ok(KvOp::LeaseRevoke { id: LeaseId(7), admin: true })
    );
    // Without its principal a lease write belongs to nobody (refused at apply).
    assert_eq!(
        KvOp::LeaseGrant { ttl_ms: 5_000 }.into_command(),
        CommandOp::ByPrincipal { principal: String::new(), op: KvOp::LeaseGrant { ttl_ms: 5_000 } }
    );
    // A nested command cannot be written: `KvOp` has no variant that holds one.
    assert!(decode_command(&[0, 5, 9, 0, 9, 0, 9]).is_err());
}

#[test]
fn log_commands_of_0_1_0_keep_their_bytes() {
    // The log outlives binaries: entries written by 0.1.0 are applied by every later release,
    // and entries a later leader writes before finalize are applied by 0.1.0 replicas. These
    // are the postcard bytes 0.1.0 writes (session none, time 5, then the operation).
    let put = CommandOp::Put { key: b"k".to_vec(), value: b"v".to_vec() };
    let cases: [(CommandOp, &[u8]); 4] = [
        (put, &[0, 5, 0, 1, b'k', 1, b'v']),
        (CommandOp::Delete { key: b"k".to_vec() }, &[0, 5, 1, 1, b'k']),
        (CommandOp::Cas { key: b"k".to_vec(), expected: None, value: b"v".to_vec() }, &[0, 5, 2, 1, b'k', 0, 1, b'v']),
        (CommandOp::OpenSession, &[0, 5, 4]),
    ];
    for (op, bytes) in cases {
        let cmd = Command { session: None, time_ms: 5, op };
        assert_eq!(encode_command(&cmd).expect("encodes"), bytes, "{cmd:?}: the log format of 0.1.0 changed");
        assert_eq!(decode_command(bytes).expect("decodes"), cmd);
    }
}

#[test]
fn health_is_a_new_request_and_answer_and_status_keeps_its_0_1_0_shape() {
    // `cluster status` learns "refusing writes" and "recovering" through a request and an
    // answer appended after every other variant: `NodeStatus`, which 0.1.0 decodes (and
    // sends), keeps its shape, and a 0.1.0 node that cannot decode `Health` still answers
    // `Status`. The bytes are pinned: the variant indexes are part of the wire.
    let health = NodeHealth {
        id: quorate_log::NodeId::new(1).expect("non-zero"),
        refusing_writes: true,
        recovering: false,
        disk_free_bytes: Some(5),
        disk_floor_bytes: 3,
        db_bytes: None,
    };
    let answer = NodeMessage::Response(ClientResponse { id: 9, result: Ok(Response::Health(health)) });
    let mut bytes = Vec::new();
    answer.encode(&mut bytes).expect("encodes");
    assert_eq!(bytes, [9, 0, 16, 1, 1, 0, 1, 5, 3, 0]);
    assert_eq!(NodeMessage::decode(PROTOCOL_VERSION, kinds::RESPONSE, &bytes).expect("decodes"), answer);
    let ask = NodeMessage::Request(ClientRequest { id: 9, session: None, body: Request::Health });
    let mut bytes = Vec::new();
    ask.encode(&mut bytes).expect("encodes");
    assert_eq!(bytes, [9, 0, 20]);
    assert_eq!(Request::Health.access(), Access::Read);
}

#[test]
fn snapshot_streams_and_bounded_staleness_are_appended_variants() {
    // Request variants 22 (SnapshotStreamOpen) and 23 (SnapshotStreamFetch), answer variants
    // 17 and 18, ReadConsistency variant 3: after every earlier one, pinned byte for byte.
    let open = NodeMessage::Request(ClientRequest { id: 9, session: None, body: Request::SnapshotStreamOpen });
    let mut bytes = Vec::new();
    open.encode(&mut bytes).expect("encodes");
    assert_eq!(bytes, [9, 0, 22]);
    let fetch = Request::SnapshotStreamFetch { stream: 7, offset: 300, len: 2 };
    let fetch = NodeMessage::Request(ClientRequest { id: 9, session: None, body: fetch });
    let mut bytes = Vec::new();
    fetch.encode(&mut bytes).expect("encodes");
    assert_eq!(bytes, [9, 0, 23, 7, 0xac, 0x02, 2]);
    assert_eq!(NodeMessage::decode(PROTOCOL_VERSION, kinds::REQUEST, &bytes).expect("decodes"), fetch);
    let data = Response::SnapshotStreamData { offset: 1, data: vec![5], total: Some(2), prepared: 2, complete: false };
    let answer = NodeMessage::Response(ClientResponse { id: 9, result: Ok(data) });
    let mut bytes = Vec::new();
    answer.encode(&mut bytes).expect("encodes");
    assert_eq!(bytes, [9, 0, 18, 1, 1, 5, 1, 2, 2, 0]);
    assert_eq!(NodeMessage::decode(PROTOCOL_VERSION, kinds::RESPONSE, &bytes).expect("decodes"), answer);
    let bounded = ReadConsistency::BoundedStale(StalenessBound { max_lag_entries: Some(3), max_since_leader_ms: None });
    let get = Request::Get { key: b"k".to_vec(), read: bounded };
    let get = NodeMessage::Request(ClientRequest { id: 9, session: None, body: get });
    let mut bytes = Vec::new();
    get.encode(&mut bytes).expect("encodes");
    assert_eq!(bytes, [9, 0, 1, 1, b'k', 3, 1, 3, 0]);
    assert_eq!(NodeMessage::decode(PROTOCOL_VERSION, kinds::REQUEST, &bytes).expect("decodes"), get);
    // Admin only; an oversized chunk is refused by validation.
    assert_eq!(Request::SnapshotStreamOpen.access(), Access::Admin);
    let big = Request::SnapshotStreamFetch { stream: 1, offset: 0, len: limits::SNAPSHOT_CHUNK_BYTES_MAX as u32 + 1 };
    assert!(ClientRequest { id: 1, session: None, body: big }.validate().is_err());
}

#[test]
fn a_staleness_bound_refuses_a_replica_further_behind() {
    let b = StalenessBound { max_lag_entries: Some(10), max_since_leader_ms: Some(500) };
    assert_eq!(b.violation(110, 100, Some(500)), None, "at the bound: served");
    assert!(b.violation(111, 100, Some(0)).unwrap().contains("11 committed entries"));
    assert!(b.violation(100, 100, Some(501)).unwrap().contains("501 ms"));
    assert!(b.violation(100, 100, None).unwrap().contains("not heard from a leader"));
    assert_eq!(StalenessBound::default().violation(1_000, 0, None), None, "no bound: a plain stale read");
}
