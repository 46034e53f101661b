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
//! forwarded and never dropped: partitions are between nodes. Clients open a new socket for
//! every connection, so a front sees many sources over a run: past [`UPSTREAMS_MAX`] the
//! least recently used client source gives its upstream up (it once refused every new source
//! for good instead, and late in long runs new client connections through a front failed).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Largest datagram handled (QUIC datagrams are far smaller).
const DATAGRAM_MAX: usize = 65_536;
/// Most upstream sockets behind one front address (sources at once; the least recently
/// used client source makes room for a new one).
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
    /// Client sources whose upstream socket was given up for a newer source.
    evicted: AtomicU64,
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
            let task = tokio::spawn(front_loop(shared.clone(), front, id, target));
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

    /// Datagrams forwarded and dropped so far, and client sources evicted.
    pub(crate) fn counters(&self) -> (u64, u64, u64) {
        (
            self.shared.forwarded.load(Ordering::Relaxed),
            self.shared.dropped.load(Ordering::Relaxed),
            self.shared.evicted.load(Ordering::Relaxed),
        )
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

/// One source's way to the node behind a front: its upstream socket, the task that carries
/// the answers back, and when it was last used.
struct Upstream {
    socket: Arc<UdpSocket>,
    back: JoinHandle<()>,
    used: std::time::Instant,
}

impl Drop for Upstream {
    /// The answer task ends with its upstream (evicted, or its front loop aborted).
    fn drop(&mut self) {
        self.back.abort();
    }
}

/// Datagrams to node `to` at its front socket: forward each through the upstream socket of
/// its source. Past [`UPSTREAMS_MAX`] sources, the least recently used source that is not a
/// node gives its upstream up (clients open a new socket, so a new source, for every
/// connection: a long run sends a front far more sources than it keeps).
async fn front_loop(shared: Arc<Shared>, front: Arc<UdpSocket>, to: u64, target: SocketAddr) {
    let mut upstreams: HashMap<SocketAddr, Upstream> = HashMap::new();
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
        let up = match upstreams.get_mut(&src) {
            Some(u) => {
                u.used = std::time::Instant::now();
                u.socket.clone()
            }
            None => {
                if upstreams.len() >= UPSTREAMS_MAX {
                    let oldest = upstreams
                        .iter()
                        .filter(|(a, _)| !shared.nodes.contains_key(a))
                        .min_by_key(|(_, u)| u.used)
                        .map(|(a, _)| *a);
                    match oldest.and_then(|a| upstreams.remove(&a)) {
                        Some(_evicted) => {
                            shared.evicted.fetch_add(1, Ordering::Relaxed);
                        }
                        None => {
                            shared.dropped.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                }
                let Ok(sock) = UdpSocket::bind("127.0.0.1:0").await else { continue };
                if sock.connect(target).await.is_err() {
                    continue;
                }
                let sock = Arc::new(sock);
                let back = tokio::spawn(back_loop(shared.clone(), sock.clone(), front.clone(), src, from, to));
                upstreams.insert(src, Upstream { socket: sock.clone(), back, used: std::time::Instant::now() });
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A UDP echo server standing in for a node.
    async fn echo() -> SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let _ = sock.send_to(&buf[..n], from).await;
            }
        });
        addr
    }

    async fn ask(front: SocketAddr, what: &[u8]) -> Option<Vec<u8>> {
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        c.send_to(what, front).await.unwrap();
        let mut buf = vec![0u8; 2048];
        let n = tokio::time::timeout(Duration::from_secs(2), c.recv(&mut buf)).await.ok()?.ok()?;
        Some(buf[..n].to_vec())
    }

    /// Clients make a new socket (a new source port) for every connection, so a long run
    /// sends each front many more sources than it keeps upstream sockets for. The proxy
    /// refused every source after the 64th for good, so late in a long run new client
    /// connections through a front (every leader hint names one) went nowhere.
    #[test]
    fn a_front_serves_more_sources_than_it_keeps_upstreams_for() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let node = echo().await;
            let proxy = Proxy::start(&[(1, node)].into_iter().collect()).await.unwrap();
            for i in 0..(UPSTREAMS_MAX as u64 * 3) {
                let msg = i.to_be_bytes();
                assert_eq!(ask(proxy.front(1), &msg).await.as_deref(), Some(&msg[..]), "source {i}");
            }
        });
    }
}
