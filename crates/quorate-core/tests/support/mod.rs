//! Shared helpers of the integration tests that declare `mod support;`.

#![allow(dead_code, reason = "each test file uses a part of the helpers")]

pub(crate) mod holes;
pub(crate) mod net;
pub(crate) mod recovery;
