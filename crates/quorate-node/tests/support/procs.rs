//! Helpers shared by the tests that run real `quorate` processes.

use std::net::UdpSocket;
use std::process::Child;

/// Three consecutive free UDP ports, searched (bounded) from `range_start` plus a per-process
/// offset, so that test binaries running at the same time look in different places.
pub(crate) fn free_base_port(range_start: u16) -> u16 {
    let start = range_start + (std::process::id() % 1_000) as u16 * 10;
    for base in (start..start + 2_000).step_by(3) {
        if (0..3).all(|i| UdpSocket::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no three free ports near {start}");
}

/// The node processes of a test; every one is killed on every path, panics included.
pub(crate) struct Nodes(pub(crate) Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
