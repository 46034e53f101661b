//! A fault-injecting UDP proxy between nodes (QUIC runs over UDP).
//!
//! Every node `j` gets a front address `F_j` on the proxy; the other nodes' configurations
//! name `F_j` as `j`'s address. A datagram arriving at `F_j` from source address `S` is sent
//! on to `j`'s real address from an upstream socket dedicated to `(S, j)`, and `j`'s answers
//! arriving on that socket go back to `S` from `F_j` — a tiny NAT. The source address tells
//! which node sent a datagram (every node sends from its listen address), so a rule per
//! directed link (`from → to`) can drop it: symmetric, one-way and majority/minority
//! partitions are sets of blocked links.
//!
//! Datagrams from an address that is not a node (a client that followed a leader hint) are
//! forwarded and never dropped: partitions are between nodes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Largest datagram handled (QUIC datagrams are far smaller).
const DATAGRAM_MAX: usize = 65_536;
/// Most upstream sockets behind one front address (sources seen).
const UPSTREAMS_MAX: usize = 64;
/// Pause after a socket error (ICMP refused from a node that is down), so a loop never spins.
const ERROR_PAUSE: std::time::Duration = std::time::Duration::from_millis(1);

/// Which directed links are cut, and counters.
#[derive(Default)]
struct Shared {
    blocked: RwLock<BTreeSet<(u64, u64)>>,
    /// Real address of each node → its id.
    nodes: BTreeMap<SocketAddr, u64>,
    forwarded: AtomicU64,
    dropped: AtomicU64,
}

impl Shared {
    fn is_blocked(&self, from: Option<u64>, to: u64) -> bool {
        match from {
            Some(from) => self.blocked.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&(from, to)),
            None => false,
        }
    }
}

/// The running proxy; its tasks stop when it is dropped.
pub(crate) struct Proxy {
    shared: Arc<Shared>,
    fronts: BTreeMap<u64, SocketAddr>,
    tasks: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    /// Binds one front address per node of `real` (id → the node's listen address) and starts
    /// forwarding. Must be called within a tokio runtime.
    pub(crate) async fn start(real: &BTreeMap<u64, SocketAddr>) -> anyhow::Result<Proxy> {
        let nodes = real.iter().map(|(id, a)| (*a, *id)).collect();
        let shared = Arc::new(Shared { nodes, ..Shared::default() });
        let tasks = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut fronts = BTreeMap::new();
        for (&id, &target) in real {
            let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
            fronts.insert(id, front.local_addr()?);
            let task = tokio::spawn(front_loop(shared.clone(), tasks.clone(), front, id, target));
            lock(&tasks).push(task);
        }
        Ok(Proxy { shared, fronts, tasks })
    }

    /// The address through which the other nodes reach node `id`.
    pub(crate) fn front(&self, id: u64) -> SocketAddr {
        self.fronts[&id]
    }

    /// Replaces the set of cut links (`(from, to)`: datagrams from `from` to `to` are dropped).
    pub(crate) fn set_blocked(&self, links: BTreeSet<(u64, u64)>) {
        *self.shared.blocked.write().unwrap_or_else(std::sync::PoisonError::into_inner) = links;
    }

    /// Heals every partition.
    pub(crate) fn heal(&self) {
        self.set_blocked(BTreeSet::new());
    }

    /// Datagrams forwarded and dropped so far.
    pub(crate) fn counters(&self) -> (u64, u64) {
        (self.shared.forwarded.load(Ordering::Relaxed), self.shared.dropped.load(Ordering::Relaxed))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Datagrams to node `to` at its front socket: forward each through the upstream socket of
/// its source.
async fn front_loop(
    shared: Arc<Shared>,
    tasks: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
    front: Arc<UdpSocket>,
    to: u64,
    target: SocketAddr,
) {
    let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; DATAGRAM_MAX];
    loop {
        let Ok((n, src)) = front.recv_from(&mut buf).await else {
            tokio::time::sleep(ERROR_PAUSE).await;
            continue;
        };
        let from = shared.nodes.get(&src).copied();
        if shared.is_blocked(from, to) {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let up = match upstreams.get(&src) {
            Some(u) => u.clone(),
            None => {
                if upstreams.len() >= UPSTREAMS_MAX {
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let Ok(sock) = UdpSocket::bind("127.0.0.1:0").await else { continue };
                if sock.connect(target).await.is_err() {
                    continue;
                }
                let sock = Arc::new(sock);
                upstreams.insert(src, sock.clone());
                let back = tokio::spawn(back_loop(shared.clone(), sock.clone(), front.clone(), src, from, to));
                lock(&tasks).push(back);
                sock
            }
        };
        // A send error (the node is down: ICMP refused) is a lost datagram, as on a network.
        if up.send(&buf[..n]).await.is_ok() {
            shared.forwarded.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Answers of node `node` to source `src`: back through the front socket.
async fn back_loop(
    shared: Arc<Shared>,
    up: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    src: SocketAddr,
    src_node: Option<u64>,
    node: u64,
) {
    let mut buf = vec![0u8; DATAGRAM_MAX];
    loop {
        // Errors here are ICMP "connection refused" from a node that is down: keep going.
        let Ok(n) = up.recv(&mut buf).await else {
            tokio::time::sleep(ERROR_PAUSE).await;
            continue;
        };
        if src_node.is_some_and(|s| shared.is_blocked(Some(node), s)) {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if front.send_to(&buf[..n], src).await.is_ok() {
            shared.forwarded.fetch_add(1, Ordering::Relaxed);
        }
    }
}
