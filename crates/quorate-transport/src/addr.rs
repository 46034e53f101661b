//! Where a peer is reached: an IP socket address, or a `host:port` name that is resolved
//! again before every dial, so that a member that comes back on a new address (a replaced VM,
//! a rescheduled Kubernetes pod behind a stable name) is found by its name.

use std::fmt;
use std::net::SocketAddr;

/// Longest `host:port` accepted (a DNS name is at most 253 bytes; the rest is slack for the
/// port and IPv6 brackets).
pub const PEER_ADDR_BYTES_MAX: usize = 300;

/// A peer's address: an IP socket address, or a host name and port resolved at every dial.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PeerAddr {
    /// An IP address and port (`10.0.0.1:7001`, `[::1]:7001`): dialed as is.
    Socket(SocketAddr),
    /// A host name and port (`node-1.quorate:7001`): resolved before every dial.
    Name {
        /// The host name (no port).
        host: String,
        /// The port.
        port: u16,
    },
}

/// Why a text is not a peer address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerAddrError {
    /// Not `host:port`.
    #[error("`{0}` is not HOST:PORT (a host name or IP address, a colon, a port)")]
    Shape(String),
    /// Longer than [`PEER_ADDR_BYTES_MAX`].
    #[error("a peer address of {0} bytes is over the limit of {PEER_ADDR_BYTES_MAX}")]
    TooLong(usize),
    /// The port is not a number from 1 to 65535.
    #[error("`{0}`: the port must be a number from 1 to 65535")]
    Port(String),
    /// The host is not a host name (letters, digits, `-`, `_` and `.`, labels of 1–63 bytes).
    #[error("`{0}`: the host must be an IP address or a host name (letters, digits, '-', '_' and '.')")]
    Host(String),
}

impl PeerAddr {
    /// Parses `IP:PORT`, `[IPv6]:PORT` or `NAME:PORT`.
    ///
    /// # Errors
    /// [`PeerAddrError`] naming what is wrong.
    pub fn parse(text: &str) -> Result<PeerAddr, PeerAddrError> {
        if text.len() > PEER_ADDR_BYTES_MAX {
            return Err(PeerAddrError::TooLong(text.len()));
        }
        if let Ok(sa) = text.parse::<SocketAddr>() {
            if sa.port() == 0 {
                return Err(PeerAddrError::Port(text.to_string()));
            }
            return Ok(PeerAddr::Socket(sa));
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(PeerAddrError::Shape(text.to_string()));
        };
        let port: u16 = match port.parse() {
            Ok(p) if p > 0 => p,
            _ => return Err(PeerAddrError::Port(text.to_string())),
        };
        if !is_dns_name(host) {
            return Err(PeerAddrError::Host(text.to_string()));
        }
        Ok(PeerAddr::Name { host: host.to_ascii_lowercase(), port })
    }

    /// The socket address, if this is one (no resolution needed).
    #[must_use]
    pub fn socket(&self) -> Option<SocketAddr> {
        match self {
            PeerAddr::Socket(sa) => Some(*sa),
            PeerAddr::Name { .. } => None,
        }
    }
}

impl From<SocketAddr> for PeerAddr {
    fn from(sa: SocketAddr) -> PeerAddr {
        PeerAddr::Socket(sa)
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Socket(sa) => write!(f, "{sa}"),
            PeerAddr::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl std::str::FromStr for PeerAddr {
    type Err = PeerAddrError;
    fn from_str(s: &str) -> Result<PeerAddr, PeerAddrError> {
        PeerAddr::parse(s)
    }
}

/// A host name: labels of 1–63 ASCII letters, digits, `-` (not at either end) and `_` (not a
/// DNS host name's, but container runtimes name services so and resolve them), separated by
/// dots (one trailing dot allowed), at most 253 bytes; not all digits and dots (that would be
/// a malformed IPv4 address).
fn is_dns_name(host: &str) -> bool {
    let h = host.strip_suffix('.').unwrap_or(host);
    if h.is_empty() || h.len() > 253 || h.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return false;
    }
    h.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ips_and_names() {
        assert_eq!(PeerAddr::parse("10.0.0.1:7001").unwrap(), PeerAddr::Socket("10.0.0.1:7001".parse().unwrap()));
        assert_eq!(PeerAddr::parse("[::1]:7001").unwrap(), PeerAddr::Socket("[::1]:7001".parse().unwrap()));
        assert_eq!(
            PeerAddr::parse("Node-1.Quorate.svc:7001").unwrap(),
            PeerAddr::Name { host: "node-1.quorate.svc".into(), port: 7001 }
        );
        assert_eq!(PeerAddr::parse("localhost:1").unwrap().to_string(), "localhost:1");
        assert_eq!(PeerAddr::parse("node.:7001").unwrap().to_string(), "node.:7001");
        assert_eq!(PeerAddr::parse("my_service:7001").unwrap().to_string(), "my_service:7001");
    }

    #[test]
    fn refuses_what_is_not_host_port() {
        for bad in ["", "node", ":7001", "node:", "node:0", "node:65536", "node:x", "1.2.3:7001", "-a:1", "a-:1"] {
            assert!(PeerAddr::parse(bad).is_err(), "{bad:?} was accepted");
        }
        for bad in ["a b:1", "a/b:1", "a..b:1", "[::1:7001", "10.0.0.1:0", "ü.example:1"] {
            assert!(PeerAddr::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let long = format!("{}:1", "a.".repeat(200));
        assert!(matches!(PeerAddr::parse(&long), Err(PeerAddrError::TooLong(_))));
        let label = format!("{}:1", "a".repeat(64));
        assert!(matches!(PeerAddr::parse(&label), Err(PeerAddrError::Host(_))));
    }
}
