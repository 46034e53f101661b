//! Helpers shared by the tests that run real `quorate` processes.

// Every test binary includes this file and uses a different part of it.
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::process::Child;
use std::sync::atomic::{AtomicU32, Ordering};

/// The lowest port the tests listen on.
const LISTEN_PORT_MIN: u32 = 10_000;

/// The first port of the kernel's ephemeral range (where port-0 sockets, QUIC clients among
/// them, get their ports).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(32_768)
}

/// `n` consecutive free UDP ports below the kernel's ephemeral range. Nodes listen there so
/// that a port-0 socket (a client's, or another test's) cannot take a stopped node's port
/// before the node restarts. The search starts at a per-process offset and moves on with
/// every call, so that test binaries running at the same time, and two clusters of one test,
/// look in different places; it is bounded.
pub(crate) fn free_ports(n: u16) -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n32 = u32::from(n);
    let high = ephemeral_low().clamp(LISTEN_PORT_MIN + 1_000, 65_535);
    let slots = (high - LISTEN_PORT_MIN) / n32;
    let offset = std::process::id().wrapping_mul(7_919) % slots;
    for _ in 0..slots.min(2_000) {
        let slot = (offset + NEXT.fetch_add(1, Ordering::Relaxed)) % slots;
        let base = u16::try_from(LISTEN_PORT_MIN + slot * n32).expect("below 65536");
        if (0..n).all(|i| UdpSocket::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no {n} consecutive free ports below {high}");
}

/// Three consecutive free UDP ports (see [`free_ports`]).
pub(crate) fn free_base_port() -> u16 {
    free_ports(3)
}

/// One free UDP port on 127.0.0.1 (see [`free_ports`]).
pub(crate) fn free_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_ports(1)))
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
