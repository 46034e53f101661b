//! A snapshot file from arbitrary bytes, read as `quorate-storage`'s `SnapshotReader` and the
//! node's snapshot install read it (`quorate_log::snapshot_file`): the header, the metadata,
//! the trailer, the data checksum, then the state-machine pairs. A snapshot reaches a
//! follower as chunks from the leader (their messages are fuzzed by `request_decode`), staged
//! into such a file. An error is fine, a panic is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quorate_log::snapshot_file::{self as layout, HEAD_BYTES, TRAILER_BYTES};

/// The store format the reader is built for (`quorate_storage::FORMAT_VERSION`); other
/// values only exercise the refusal.
const FORMAT: u32 = 1;
/// The node's state-machine limits (kept small here so a claim is refused or read quickly).
const KEY_MAX: usize = 4096;
const VALUE_MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let file_len = data.len() as u64;
    // The data alone, as the pairs reader sees a verified stream.
    let _ = layout::read_pairs(&mut &data[..], KEY_MAX, VALUE_MAX, |e| e, |_, _| Ok(()));
    let Some(head) = data.get(..HEAD_BYTES) else { return };
    let head: [u8; HEAD_BYTES] = head.try_into().expect("length");
    let Ok((meta_len, header_len)) = layout::parse_head(&head, file_len, FORMAT) else { return };
    let Some(m) = data.get(HEAD_BYTES..HEAD_BYTES + meta_len as usize + 4) else {
        panic!("parse_head accepted a file too short for its metadata");
    };
    let Ok(_meta) = layout::parse_meta(m) else { return };
    let t = &data[data.len() - TRAILER_BYTES as usize..];
    let trailer: [u8; TRAILER_BYTES as usize] = t.try_into().expect("length");
    let Ok((data_len, crc)) = layout::parse_trailer(&trailer, file_len, header_len) else { return };
    let body = &data[header_len as usize..(header_len + data_len) as usize];
    if crc32fast::hash(body) != crc {
        return;
    }
    let _ = layout::read_pairs(&mut &body[..], KEY_MAX, VALUE_MAX, |e| e, |_, _| Ok(()));
});
