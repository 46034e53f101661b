//! CPU per byte served: encoding and decoding a get's answer carrying one value (64 KiB and
//! 1 MiB), as the node encodes it for the client and the client decodes it, and the log
//! command of a put of the same value (encoded by the leader, decoded by every replica's
//! apply).
//!
//! `cargo xtask bench api` (= `cargo bench --profile ci -p quorate-api --bench codec`).
//! Bounded: `RUNS` runs per case, each of at least `RUN_TIME` and at most `RUN_ITERATIONS_MAX`
//! iterations. Prints, per case, the median over the runs of the time per operation and its
//! throughput in MiB/s of value.

use quorate_api::{
    ClientResponse, Command, CommandOp, KeyValue, NodeMessage, PROTOCOL_VERSION, ReadInfo, Response, decode_command,
    encode_command, encoded_len, kinds,
};
use quorate_log::{LogIndex, NodeId};
use quorate_transport::WireMessage;
use std::hint::black_box;
use std::time::{Duration, Instant};

const RUNS: usize = 7;
const RUN_TIME: Duration = Duration::from_millis(300);
const RUN_ITERATIONS_MAX: u64 = 1_000_000;
const SIZES: [(usize, &str); 2] = [(64 * 1024, "64 KiB"), (1024 * 1024, "1 MiB")];

/// A value of `len` bytes that no encoder can shortcut.
fn value(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(31) % 251) as u8).collect()
}

fn answer(len: usize) -> ClientResponse {
    let kv =
        KeyValue { key: b"bench/value".to_vec(), value: value(len), create_revision: 7, mod_revision: 9, version: 2 };
    let read =
        ReadInfo { node: NodeId::new(1).expect("non-zero"), revision: 9, applied: LogIndex(12), staleness: None };
    ClientResponse { id: 42, result: Ok(Response::Get { kv: Some(kv), read }) }
}

/// The median over `RUNS` runs of the time one call of `op` takes.
fn measure(mut op: impl FnMut()) -> Duration {
    let mut per_op = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let start = Instant::now();
        let mut n = 0u64;
        while n < RUN_ITERATIONS_MAX && (n == 0 || start.elapsed() < RUN_TIME) {
            op();
            n += 1;
        }
        per_op.push(start.elapsed() / u32::try_from(n).expect("bounded"));
    }
    per_op.sort();
    per_op[RUNS / 2]
}

fn report(case: &str, size: &str, len: usize, t: Duration) {
    let mib_per_s = len as f64 / (1024.0 * 1024.0) / t.as_secs_f64();
    println!("{case:<28} {size:>7}  {:>10.1} µs  {mib_per_s:>9.0} MiB/s", t.as_secs_f64() * 1e6);
}

fn main() {
    println!("{:<28} {:>7}  {:>13}  {:>15}", "case", "value", "per op (med)", "value MiB/s");
    for (len, size) in SIZES {
        let answer = answer(len);
        let msg = NodeMessage::Response(answer.clone());
        let mut buf = Vec::new();
        msg.encode(&mut buf).expect("encodes");
        let bytes = buf.clone();
        assert_eq!(encoded_len(&answer), bytes.len());
        let decoded = NodeMessage::decode(PROTOCOL_VERSION, kinds::RESPONSE, &bytes).expect("decodes");
        assert_eq!(decoded, msg);

        let t = measure(|| {
            buf.clear();
            black_box(&msg).encode(&mut buf).expect("encodes");
            black_box(&buf);
        });
        report("get answer: encode", size, len, t);
        let t = measure(|| {
            black_box(NodeMessage::decode(PROTOCOL_VERSION, kinds::RESPONSE, black_box(&bytes)).expect("decodes"));
        });
        report("get answer: decode", size, len, t);
        let t = measure(|| {
            buf.clear();
            black_box(&msg).encode(&mut buf).expect("encodes");
            black_box(NodeMessage::decode(PROTOCOL_VERSION, kinds::RESPONSE, black_box(&buf)).expect("decodes"));
        });
        report("get answer: encode+decode", size, len, t);
        let t = measure(|| {
            black_box(encoded_len(black_box(&answer)));
        });
        report("get answer: encoded_len", size, len, t);

        let cmd = Command {
            session: None,
            time_ms: 1,
            op: CommandOp::Put { key: b"bench/value".to_vec(), value: value(len) },
        };
        let cmd_bytes = encode_command(&cmd).expect("encodes");
        assert_eq!(decode_command(&cmd_bytes).expect("decodes"), cmd);
        let t = measure(|| {
            black_box(encode_command(black_box(&cmd)).expect("encodes"));
        });
        report("put command: encode", size, len, t);
        let t = measure(|| {
            black_box(decode_command(black_box(&cmd_bytes)).expect("decodes"));
        });
        report("put command: decode", size, len, t);
    }
}
