//! The transport's DER reader (a peer certificate's validity period) and the identity parser
//! (a certificate's `quorate://` URI SAN) from arbitrary bytes: `None` or an error is fine, a
//! panic is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quorate_transport::Identity;
use quorate_transport::der::validity_unix;

fuzz_target!(|data: &[u8]| {
    if let Some((not_before, not_after)) = validity_unix(data) {
        // Times are computed, not trusted: any order is possible, but no overflow.
        let _ = not_after.checked_sub(not_before);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Identity::parse(text);
    }
});
