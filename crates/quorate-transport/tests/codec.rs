//! The frame codec without the network: golden byte fixtures of every frame this crate itself
//! defines, and a seeded storm of random inputs through the decoder.
//!
//! Regenerate the fixtures with `QUORATE_REWRITE_FIXTURES=1 cargo nextest run -p
//! quorate-transport --cargo-profile ci -E 'binary(codec)'` and review the diff: a released
//! version's fixtures must never change.

use quorate_log::NodeId;
use quorate_transport::{
    ClusterId, FrameError, Hello, Lane, MessageKind, RawMessage, decode_frame, decode_message, encode_message,
};
use std::path::PathBuf;

const REWRITE: &str = "QUORATE_REWRITE_FIXTURES";

fn fixture_dir() -> PathBuf {
    PathBuf::from(&*std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()))
        .join("tests/fixtures/v1")
}

fn hello(lane: Lane) -> Hello {
    Hello::new(ClusterId::new("alpha").unwrap(), NodeId::new(1).unwrap(), NodeId::new(258).unwrap(), lane)
}

/// Every frame kind the transport defines, with the fixture it must match.
fn cases() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, lane) in [("hello_consensus", Lane::Consensus), ("hello_snapshot", Lane::Snapshot)] {
        let mut bytes = Vec::new();
        hello(lane).encode_frame(&mut bytes).unwrap();
        out.push((name, bytes));
    }
    let mut bytes = Vec::new();
    let raw = RawMessage { kind: MessageKind(0x0100), payload: b"quorate".to_vec() };
    encode_message(&raw, 1024, &mut bytes).unwrap();
    out.push(("envelope_raw_0x0100", bytes));
    out
}

#[test]
fn golden_fixtures_decode_and_match() {
    let rewrite = std::env::var_os(REWRITE).is_some();
    for (name, bytes) in cases() {
        let path = fixture_dir().join(format!("{name}.bin"));
        if rewrite {
            std::fs::create_dir_all(fixture_dir()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        let golden =
            std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (set {REWRITE}=1 to create)", path.display()));
        assert_eq!(golden, bytes, "{name}: encoding changed; old decoders would break");
        let (frame, used) = decode_frame(&golden, 1024).unwrap().expect("complete frame");
        assert_eq!(used, golden.len());
        if name.starts_with("hello") {
            let lane = if name.ends_with("snapshot") { Lane::Snapshot } else { Lane::Consensus };
            assert_eq!(Hello::decode(&frame).unwrap(), hello(lane));
        } else {
            let m: RawMessage = decode_message(&frame).unwrap();
            assert_eq!(m.payload, b"quorate");
        }
    }
}

#[test]
fn random_inputs_never_panic() {
    let mut x = 0x0123_4567_89ab_cdef_u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let valid = cases();
    let mut errors = 0;
    for i in 0..20_000 {
        let mut input = if i % 2 == 0 {
            valid[i % valid.len()].1.clone()
        } else {
            (0..next() % 64).map(|_| next() as u8).collect()
        };
        // Flip, truncate or extend some bytes.
        for _ in 0..(next() % 4) {
            if input.is_empty() {
                break;
            }
            let at = (next() as usize) % input.len();
            input[at] ^= next() as u8;
        }
        if next() % 3 == 0 {
            let len = (next() as usize) % (input.len() + 1);
            input.truncate(len);
        }
        match decode_frame(&input, 1024) {
            Ok(Some((frame, used))) => {
                assert!(used <= input.len());
                let _ = Hello::decode(&frame);
                let _: Result<RawMessage, _> = decode_message(&frame);
            }
            Ok(None) => {}
            Err(FrameError::TooLarge { .. } | FrameError::UnsupportedVersion(_) | FrameError::ReservedKind) => {
                errors += 1
            }
            Err(e) => panic!("unexpected error from the header decoder: {e}"),
        }
    }
    assert!(errors > 1000, "the storm should hit the error paths ({errors})");
}
