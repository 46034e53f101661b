//! What both examples share: three node processes on localhost, dev certificates, RocksDB
//! storage and QUIC with mutual TLS. The example's `main` calls [`node_args`] first: in a
//! node process it starts the node and serves requests; otherwise it plays the client and
//! starts the nodes with [`Cluster::launch`].

use quorate_log::{Configuration, NodeId};
use quorate_runtime::quic::{QuicMessage, QuicNetwork, pump};
use quorate_runtime::{Config, Node, RocksLog, StateMachine, SystemClock};
use quorate_storage::StoreOptions;
use quorate_transport::{
    Client, ClientOptions, ClusterId, Credentials, Principal, Request, Role, TlsPaths, Transport, TransportConfig,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;

/// The error type of the examples.
pub(crate) type Error = Box<dyn std::error::Error>;

/// Node `i` (non-zero).
pub(crate) fn nid(i: u64) -> NodeId {
    NodeId::new(i).expect("non-zero")
}

fn tls(dir: &Path, name: &str) -> Result<Credentials, Error> {
    let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    Ok(Credentials::load(TlsPaths { ca: dir.join("ca.crt"), cert, key })?)
}

fn addr(ports: &[u16], id: u64) -> SocketAddr {
    ([127, 0, 0, 1], ports[id as usize - 1]).into()
}

/// A node process's arguments: `node <id> <dir> <port> <port> <port>`.
pub(crate) struct NodeArgs {
    id: u64,
    dir: PathBuf,
    ports: Vec<u16>,
}

/// This process's node arguments, if it was started as a node by [`Cluster::launch`].
pub(crate) fn node_args() -> Result<Option<NodeArgs>, Error> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some("node") || args.len() != 7 {
        return Ok(None);
    }
    let ports = args[4..7].iter().map(|p| p.parse()).collect::<Result<_, _>>()?;
    Ok(Some(NodeArgs { id: args[2].parse()?, dir: PathBuf::from(&args[3]), ports }))
}

impl NodeArgs {
    /// Starts this process's replica of `sm` (storage in `<dir>/node-<id>`, a cluster of three
    /// voters named `cluster`) and returns it with the client requests that reach it.
    pub(crate) async fn start<SM: StateMachine>(
        &self,
        cluster: &str,
        sm: SM,
    ) -> Result<(Node<SM>, tokio::sync::mpsc::Receiver<Request<QuicMessage>>), Error> {
        let voters = Configuration::with_voters((1..=3).map(nid))?;
        let storage = RocksLog::open(self.dir.join(format!("node-{}", self.id)), StoreOptions::with_bootstrap(voters))?;
        let config = TransportConfig::new(ClusterId::new(cluster)?, nid(self.id), addr(&self.ports, self.id));
        let creds = tls(&self.dir, &format!("node-{}", self.id))?;
        let (transport, incoming) = Transport::bind(config, Arc::new(creds)).await?;
        for peer in (1..=3).filter(|p| *p != self.id) {
            transport.add_peer(nid(peer), addr(&self.ports, peer));
        }
        let network = QuicNetwork::new(Arc::new(transport));
        let node = Node::start(Config::new(nid(self.id)), storage, sm, network, SystemClock::new())?;
        let (tx, requests) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(pump(incoming, node.inbox(), tx));
        Ok((node, requests))
    }
}

/// Three node processes (this program, started with [`NodeArgs`]' arguments), stopped on drop.
pub(crate) struct Cluster {
    // Removed (with the nodes' data) once the nodes are stopped.
    _dir: tempfile::TempDir,
    ports: Vec<u16>,
    children: Vec<Child>,
    creds: Credentials,
}

impl Cluster {
    /// Writes dev certificates for nodes 1–3 and a write-role client `demo` to a temporary
    /// directory, picks three free localhost ports and starts the three nodes.
    pub(crate) fn launch(cluster: &str) -> Result<Cluster, Error> {
        let dir = tempfile::tempdir()?;
        let client = (Principal::new("demo")?, Role::Write);
        quorate_transport::dev_certs::generate(
            dir.path(),
            &ClusterId::new(cluster)?,
            &[nid(1), nid(2), nid(3)],
            &[client],
        )?;
        let ports: Vec<u16> = (0..3)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.port()))
            .collect::<Result<_, _>>()?;
        let mut children = Vec::new();
        for id in 1..=3u64 {
            let mut cmd = Command::new(std::env::current_exe()?);
            cmd.arg("node").arg(id.to_string()).arg(dir.path()).args(ports.iter().map(u16::to_string));
            children.push(cmd.spawn()?);
        }
        let creds = tls(dir.path(), "client-demo")?;
        Ok(Cluster { _dir: dir, ports, children, creds })
    }

    /// Connects to node `id` as the client `demo`.
    pub(crate) async fn connect(&self, id: u64) -> Result<Client<QuicMessage>, Error> {
        Ok(Client::connect(&self.creds, nid(id), addr(&self.ports, id), ClientOptions::default()).await?)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
