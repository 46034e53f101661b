//! Identities bound to certificates through a URI subject alternative name.
//!
//! * a peer (cluster member): `quorate://<cluster-id>/node/<node-id>`
//! * a client: `quorate://<cluster-id>/client/<principal>?role=<read|write|admin>`
//!
//! Parsing is strict and canonical: `Identity::parse(s)?.to_string() == s`.

use quorate_log::NodeId;
use std::fmt;
use std::str::FromStr;

/// The URI scheme of every Quorate identity.
pub const URI_SCHEME: &str = "quorate://";
/// Longest cluster id.
pub const CLUSTER_ID_BYTES_MAX: usize = 63;
/// Longest client principal.
pub const PRINCIPAL_BYTES_MAX: usize = 128;

/// Why a string is not a valid identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Not a `quorate://` URI.
    #[error("identity URI must start with `quorate://`")]
    Scheme,
    /// A bad cluster id.
    #[error("invalid cluster id: 1..=63 bytes of [a-z0-9-], not starting or ending with `-`")]
    ClusterId,
    /// A bad node id.
    #[error("invalid node id: a decimal u64 without leading zeros, not 0")]
    NodeId,
    /// A bad client principal.
    #[error("invalid principal: 1..=128 bytes of [A-Za-z0-9._-]")]
    Principal,
    /// A bad or missing role.
    #[error("invalid role: expected `?role=read`, `?role=write` or `?role=admin`")]
    Role,
    /// Neither `/node/` nor `/client/`.
    #[error("identity path must be `/node/<id>` or `/client/<principal>?role=<role>`")]
    Path,
}

/// A cluster id: 1 to 63 bytes of lowercase ASCII letters, digits and `-`, not starting or
/// ending with `-` (it is the authority part of the identity URI).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterId(String);

impl ClusterId {
    /// Validates and wraps a cluster id.
    pub fn new(id: &str) -> Result<ClusterId, IdentityError> {
        let ok = !id.is_empty()
            && id.len() <= CLUSTER_ID_BYTES_MAX
            && !id.starts_with('-')
            && !id.ends_with('-')
            && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok { Ok(ClusterId(id.to_owned())) } else { Err(IdentityError::ClusterId) }
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ClusterId {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ClusterId::new(s)
    }
}

/// The name of a client principal: 1 to 128 bytes of `[A-Za-z0-9._-]`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Principal(String);

impl Principal {
    /// Validates and wraps a principal name.
    pub fn new(name: &str) -> Result<Principal, IdentityError> {
        let ok = !name.is_empty()
            && name.len() <= PRINCIPAL_BYTES_MAX
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok { Ok(Principal(name.to_owned())) } else { Err(IdentityError::Principal) }
    }

    /// The name as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a client may do. Ordered: `Read < Write < Admin`, and each role includes the ones
/// below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Role {
    /// Reads only.
    Read,
    /// Reads and writes.
    Write,
    /// Reads, writes and administrative operations (membership, snapshots).
    Admin,
}

impl Role {
    /// The role's name in the identity URI.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }

    /// Whether this role includes `other`.
    #[must_use]
    pub fn allows(self, other: Role) -> bool {
        self >= other
    }
}

impl FromStr for Role {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            _ => Err(IdentityError::Role),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A cluster member's identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    /// The cluster.
    pub cluster: ClusterId,
    /// The node id.
    pub node: NodeId,
}

/// A client's identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientIdentity {
    /// The cluster.
    pub cluster: ClusterId,
    /// Who the client is.
    pub principal: Principal,
    /// What the client may do.
    pub role: Role,
}

/// The identity a certificate names in its `quorate://` URI SAN.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Identity {
    /// A cluster member.
    Peer(PeerIdentity),
    /// A client.
    Client(ClientIdentity),
}

impl Identity {
    /// A peer identity.
    #[must_use]
    pub fn peer(cluster: ClusterId, node: NodeId) -> Identity {
        Identity::Peer(PeerIdentity { cluster, node })
    }

    /// A client identity.
    #[must_use]
    pub fn client(cluster: ClusterId, principal: Principal, role: Role) -> Identity {
        Identity::Client(ClientIdentity { cluster, principal, role })
    }

    /// Parses a canonical identity URI.
    pub fn parse(uri: &str) -> Result<Identity, IdentityError> {
        let rest = uri.strip_prefix(URI_SCHEME).ok_or(IdentityError::Scheme)?;
        let (cluster, path) = rest.split_once('/').ok_or(IdentityError::Path)?;
        let cluster = ClusterId::new(cluster)?;
        if let Some(id) = path.strip_prefix("node/") {
            Ok(Identity::peer(cluster, parse_node_id(id)?))
        } else if let Some(client) = path.strip_prefix("client/") {
            let (principal, query) = client.split_once('?').ok_or(IdentityError::Role)?;
            let role = query.strip_prefix("role=").ok_or(IdentityError::Role)?;
            Ok(Identity::client(cluster, Principal::new(principal)?, role.parse()?))
        } else {
            Err(IdentityError::Path)
        }
    }

    /// The cluster the identity belongs to.
    #[must_use]
    pub fn cluster(&self) -> &ClusterId {
        match self {
            Identity::Peer(p) => &p.cluster,
            Identity::Client(c) => &c.cluster,
        }
    }

    /// The node id, for a peer.
    #[must_use]
    pub fn node(&self) -> Option<NodeId> {
        match self {
            Identity::Peer(p) => Some(p.node),
            Identity::Client(_) => None,
        }
    }
}

fn parse_node_id(s: &str) -> Result<NodeId, IdentityError> {
    let canonical = !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()) && !s.starts_with('0');
    if !canonical {
        return Err(IdentityError::NodeId);
    }
    s.parse::<u64>().ok().and_then(NodeId::new).ok_or(IdentityError::NodeId)
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Peer(p) => write!(f, "{URI_SCHEME}{}/node/{}", p.cluster, p.node),
            Identity::Client(c) => write!(f, "{URI_SCHEME}{}/client/{}?role={}", c.cluster, c.principal, c.role),
        }
    }
}

impl FromStr for Identity {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Identity::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(uri: &str, expect: Result<(), IdentityError>) {
        match (Identity::parse(uri), expect) {
            (Ok(id), Ok(())) => assert_eq!(id.to_string(), uri, "canonical round trip"),
            (Err(e), Err(want)) => assert_eq!(e, want, "{uri}"),
            (got, want) => panic!("{uri}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn identities() {
        check("quorate://alpha/node/1", Ok(()));
        check("quorate://a-1/node/18446744073709551615", Ok(()));
        check("quorate://alpha/client/ops.bot_1?role=admin", Ok(()));
        check("quorate://alpha/client/x?role=read", Ok(()));
        check("https://alpha/node/1", Err(IdentityError::Scheme));
        check("quorate://Alpha/node/1", Err(IdentityError::ClusterId));
        check("quorate://-a/node/1", Err(IdentityError::ClusterId));
        check("quorate:///node/1", Err(IdentityError::ClusterId));
        check("quorate://alpha/node/0", Err(IdentityError::NodeId));
        check("quorate://alpha/node/01", Err(IdentityError::NodeId));
        check("quorate://alpha/node/+1", Err(IdentityError::NodeId));
        check("quorate://alpha/node/18446744073709551616", Err(IdentityError::NodeId));
        check("quorate://alpha/node/1/x", Err(IdentityError::NodeId));
        check("quorate://alpha/client/x", Err(IdentityError::Role));
        check("quorate://alpha/client/x?role=root", Err(IdentityError::Role));
        check("quorate://alpha/client/a b?role=read", Err(IdentityError::Principal));
        check("quorate://alpha/admin/1", Err(IdentityError::Path));
        check("quorate://alpha", Err(IdentityError::Path));
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin.allows(Role::Write));
        assert!(!Role::Read.allows(Role::Write));
    }
}
