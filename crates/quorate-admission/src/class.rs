//! Priority classes and principals.

use std::fmt;

/// The priority class of a request. The order of the variants is the order of priority.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// Votes, heartbeats, appends, snapshot chunks: the traffic that keeps the cluster alive.
    /// Never refused by this crate, never queued behind client traffic, never counted against
    /// client budgets. Shedding it would turn overload into elections and unavailability.
    Consensus,
    /// Client writes (proposals). Guarded by every signal.
    ClientWrite,
    /// Client reads. Guarded by apply lag and the concurrency limit, not by disk or log signals.
    ClientRead,
    /// Compaction, scans, repairs: shed first, at a fraction of every threshold.
    Background,
}

impl Class {
    /// Every class, highest priority first.
    pub const ALL: [Class; 4] = [Class::Consensus, Class::ClientWrite, Class::ClientRead, Class::Background];

    /// A short lowercase name, stable for metric labels.
    pub const fn label(self) -> &'static str {
        match self {
            Class::Consensus => "consensus",
            Class::ClientWrite => "client_write",
            Class::ClientRead => "client_read",
            Class::Background => "background",
        }
    }

    /// Position in [`Class::ALL`].
    pub const fn index(self) -> usize {
        match self {
            Class::Consensus => 0,
            Class::ClientWrite => 1,
            Class::ClientRead => 2,
            Class::Background => 3,
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Who a request is accounted to: a client identity, a tenant, a connection. The caller maps
/// its notion of identity to a `u64` (for example a hash of the certificate subject).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Principal(pub u64);

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "principal-{}", self.0)
    }
}
