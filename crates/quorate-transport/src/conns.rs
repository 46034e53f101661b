//! The table of open connections and the byte budgets of inbound frames.
//!
//! * **Connections.** Every authenticated inbound connection is registered with the identity
//!   of its certificate: at most `connections_max` in total (a connection attempt beyond it is
//!   refused before its handshake), at most `client_connections_per_identity_max` per client
//!   identity (the next one is refused) and `peer_connections_per_node_max` per node identity
//!   (the oldest is closed: the newest connection of a restarted node is the live one).
//!   Dialed connections are registered too (without a cap) so that every open connection can
//!   be re-checked when the credentials change or a certificate expires.
//! * **Bytes.** A frame's length is reserved, when its header arrives, from the budget of the
//!   sender's identity (`identity_inbound_bytes_max`) and, for clients, from the budget of all
//!   clients together (`clients_inbound_bytes_max`); the reservation is held until the
//!   application has taken the message (peers) or the request is answered or dropped
//!   (clients). The buffer itself grows as bytes arrive. A reservation is accounting only, so
//!   a header that announces a large frame costs its sender budget, not the node memory.

use crate::identity::Identity;
use crate::tls::{Trust, Usage};
use quinn::{Connection, VarInt};
use rustls::pki_types::{CertificateDer, UnixTime};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes reserved for one inbound frame, released when dropped.
#[derive(Debug)]
pub(crate) struct Held {
    _identity: OwnedSemaphorePermit,
    _clients: Option<OwnedSemaphorePermit>,
}

/// Reserves `bytes` from `identity` and then from `clients` (when given), waiting until both
/// have room.
pub(crate) async fn reserve(identity: &Arc<Semaphore>, clients: Option<&Arc<Semaphore>>, bytes: u32) -> Option<Held> {
    let identity = identity.clone().acquire_many_owned(bytes).await.ok()?;
    let clients = match clients {
        Some(c) => Some(c.clone().acquire_many_owned(bytes).await.ok()?),
        None => None,
    };
    Some(Held { _identity: identity, _clients: clients })
}

struct Entry {
    conn: Connection,
    identity: Identity,
    inbound: bool,
    /// Earliest `notAfter` of the peer's chain (Unix seconds).
    not_after_unix: i64,
}

struct PerIdentity {
    /// Inbound connections, oldest first.
    ids: VecDeque<u64>,
    budget: Arc<Semaphore>,
}

/// Why an inbound connection was not admitted.
pub(crate) enum Refusal {
    /// The node holds `connections_max` connections.
    Total(usize),
    /// The client identity holds its maximum.
    PerIdentity(usize),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Total(n) => write!(f, "the node holds {n} connections, its limit (connections_max)"),
            Refusal::PerIdentity(n) => {
                write!(f, "this identity holds {n} connections, its limit (client_connections_per_identity_max)")
            }
        }
    }
}

/// The limits the table enforces.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TableLimits {
    pub(crate) connections_max: usize,
    pub(crate) client_connections_per_identity_max: usize,
    pub(crate) peer_connections_per_node_max: usize,
    pub(crate) identity_inbound_bytes_max: u32,
}

#[derive(Default)]
struct Inner {
    next: u64,
    entries: HashMap<u64, Entry>,
    identities: HashMap<Identity, PerIdentity>,
    inbound: usize,
}

/// Open connections, by identity.
pub(crate) struct Table {
    limits: TableLimits,
    inner: Mutex<Inner>,
}

/// Removes its connection from the table when dropped.
pub(crate) struct Registered {
    table: Arc<Table>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.table.remove(self.id);
    }
}

/// The certificate chain a connection's peer presented.
fn peer_chain(conn: &Connection) -> Option<Vec<CertificateDer<'static>>> {
    conn.peer_identity().and_then(|c| c.downcast::<Vec<CertificateDer<'static>>>().ok()).map(|c| *c)
}

/// The earliest `notAfter` over a connection's peer chain (`i64::MAX` if unreadable: the
/// handshake verified it, and a re-check after a reload still covers it).
fn not_after_unix(conn: &Connection) -> i64 {
    peer_chain(conn)
        .and_then(|chain| chain.iter().filter_map(|c| crate::der::validity_unix(c).map(|(_, n)| n)).min())
        .unwrap_or(i64::MAX)
}

impl Table {
    pub(crate) fn new(limits: TableLimits) -> Arc<Table> {
        Arc::new(Table { limits, inner: Mutex::new(Inner::default()) })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Established inbound connections.
    pub(crate) fn inbound(&self) -> usize {
        self.lock().inbound
    }

    /// Whether one more inbound connection may start its handshake.
    pub(crate) fn has_room(&self) -> Result<(), Refusal> {
        let n = self.lock().inbound;
        if n >= self.limits.connections_max { Err(Refusal::Total(n)) } else { Ok(()) }
    }

    /// Admits an authenticated inbound connection: its registration and its identity's byte
    /// budget. A node identity over its maximum has its oldest connections closed.
    pub(crate) fn admit(
        self: &Arc<Table>,
        conn: &Connection,
        identity: &Identity,
    ) -> Result<(Registered, Arc<Semaphore>), Refusal> {
        let mut inner = self.lock();
        if inner.inbound >= self.limits.connections_max {
            return Err(Refusal::Total(inner.inbound));
        }
        let per = inner.identities.get(identity).map_or(0, |p| p.ids.len());
        let mut replaced = Vec::new();
        match identity {
            Identity::Client(_) if per >= self.limits.client_connections_per_identity_max => {
                return Err(Refusal::PerIdentity(per));
            }
            Identity::Peer(_) if per >= self.limits.peer_connections_per_node_max => {
                let excess = per + 1 - self.limits.peer_connections_per_node_max.max(1);
                for _ in 0..excess {
                    let Some(old) = inner.identities.get_mut(identity).and_then(|p| p.ids.pop_front()) else { break };
                    if let Some(e) = inner.entries.remove(&old) {
                        inner.inbound -= 1;
                        replaced.push(e.conn);
                    }
                }
            }
            _ => {}
        }
        let id = inner.next;
        inner.next += 1;
        let entry = Entry {
            conn: conn.clone(),
            identity: identity.clone(),
            inbound: true,
            not_after_unix: not_after_unix(conn),
        };
        inner.entries.insert(id, entry);
        inner.inbound += 1;
        let bytes = self.limits.identity_inbound_bytes_max as usize;
        let per = inner
            .identities
            .entry(identity.clone())
            .or_insert_with(|| PerIdentity { ids: VecDeque::new(), budget: Arc::new(Semaphore::new(bytes)) });
        per.ids.push_back(id);
        let budget = per.budget.clone();
        drop(inner);
        for old in replaced {
            old.close(VarInt::from_u32(crate::transport::codes::SHUTDOWN), b"replaced by a newer connection");
        }
        Ok((Registered { table: self.clone(), id }, budget))
    }

    /// Registers a dialed connection (no cap), so that it is re-checked like the others.
    pub(crate) fn dialed(self: &Arc<Table>, conn: &Connection, identity: &Identity) -> Registered {
        let mut inner = self.lock();
        let id = inner.next;
        inner.next += 1;
        let entry = Entry {
            conn: conn.clone(),
            identity: identity.clone(),
            inbound: false,
            not_after_unix: not_after_unix(conn),
        };
        inner.entries.insert(id, entry);
        Registered { table: self.clone(), id }
    }

    fn remove(&self, id: u64) {
        let mut inner = self.lock();
        let Some(e) = inner.entries.remove(&id) else { return };
        if !e.inbound {
            return;
        }
        inner.inbound -= 1;
        if let Some(p) = inner.identities.get_mut(&e.identity) {
            p.ids.retain(|i| *i != id);
        }
        // An identity without connections is forgotten once nothing holds its budget (a
        // message still waiting in the inbox or a request not yet answered keeps it).
        inner.identities.retain(|_, p| !p.ids.is_empty() || Arc::strong_count(&p.budget) > 1);
    }

    /// The open connections (identity, connection, how its peer authenticated).
    fn snapshot(&self) -> Vec<(Identity, Connection, Usage, i64)> {
        self.lock()
            .entries
            .values()
            .map(|e| {
                // An inbound peer authenticated as a TLS client; a dialed one as a server.
                let usage = if e.inbound { Usage::Client } else { Usage::Server };
                (e.identity.clone(), e.conn.clone(), usage, e.not_after_unix)
            })
            .collect()
    }

    /// Closes every connection whose peer certificate chain no longer verifies against
    /// `trust` at `now` (revoked, expired, or from a CA no longer trusted). Returns the
    /// identities closed, with why.
    pub(crate) fn recheck(&self, trust: &Trust, now: UnixTime) -> Vec<(Identity, String)> {
        let mut closed = Vec::new();
        for (identity, conn, usage, _) in self.snapshot() {
            let verdict = match peer_chain(&conn) {
                Some(chain) => trust.verify(&chain, usage, now).map_err(|e| e.to_string()),
                None => Err("no peer certificate".to_string()),
            };
            if let Err(reason) = verdict {
                conn.close(VarInt::from_u32(crate::transport::codes::REFUSED), b"certificate no longer valid");
                closed.push((identity, reason));
            }
        }
        closed
    }

    /// Closes every connection whose peer's chain has expired by `now_unix` (cheap: no
    /// signature check). Returns the identities closed.
    pub(crate) fn expire(&self, now_unix: i64) -> Vec<Identity> {
        let mut closed = Vec::new();
        for (identity, conn, _, not_after) in self.snapshot() {
            if not_after < now_unix {
                conn.close(VarInt::from_u32(crate::transport::codes::REFUSED), b"certificate expired");
                closed.push(identity);
            }
        }
        closed
    }
}
