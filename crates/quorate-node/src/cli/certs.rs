//! `quorate certs dev`: a local CA, certificates and node configurations for a local cluster.

use super::{CertsDevArgs, Outcome};
use anyhow::{Context, bail};
use quorate_log::NodeId;
use quorate_node::config::{LimitsConfig, NodeConfig, RaftConfig, TlsConfig};
use quorate_transport::{ClusterId, Principal, Role, dev_certs};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Parses `NAME[:ROLE]` (default role: admin).
pub(crate) fn parse_client(spec: &str) -> anyhow::Result<(Principal, Role)> {
    let (name, role) = spec.trim().split_once(':').unwrap_or((spec.trim(), "admin"));
    let principal = Principal::new(name).map_err(|e| anyhow::anyhow!("client name `{name}`: {e}"))?;
    let role: Role =
        role.parse().map_err(|_| anyhow::anyhow!("client `{name}`: role `{role}` must be read, write or admin"))?;
    Ok((principal, role))
}

/// The configuration file of node `id` in a local cluster under `dir`.
pub(crate) fn config_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("node-{id}.toml"))
}

/// The configuration of node `id` of an `n`-node local cluster rooted at `dir` (absolute).
pub(crate) fn node_config(dir: &Path, cluster: &str, id: u64, n: u64, base_port: u16) -> anyhow::Result<NodeConfig> {
    let addr = |i: u64| -> anyhow::Result<SocketAddr> {
        let port =
            u16::try_from(u64::from(base_port) + i - 1).ok().context("the ports run past 65535; lower --base-port")?;
        Ok(SocketAddr::from(([127, 0, 0, 1], port)))
    };
    let certs = dir.join("certs");
    let mut peers = BTreeMap::new();
    for i in 1..=n {
        peers.insert(i, addr(i)?.to_string());
    }
    Ok(NodeConfig {
        id,
        cluster: cluster.to_string(),
        listen: addr(id)?,
        data_dir: dir.join("data").join(format!("node-{id}")),
        join: false,
        metrics_listen: None,
        peers,
        tls: TlsConfig {
            ca: certs.join("ca.crt"),
            cert: certs.join(format!("node-{id}.crt")),
            key: certs.join(format!("node-{id}.key")),
            crls: Vec::new(),
        },
        raft: RaftConfig::default(),
        limits: LimitsConfig::default(),
        telemetry: Default::default(),
        admission: Default::default(),
    })
}

pub(crate) fn dev(cluster: &str, args: &CertsDevArgs) -> anyhow::Result<Outcome> {
    let cluster_id = ClusterId::new(cluster).map_err(|e| anyhow::anyhow!("--cluster `{cluster}`: {e}"))?;
    let clients =
        args.clients.iter().filter(|c| !c.trim().is_empty()).map(|c| parse_client(c)).collect::<Result<Vec<_>, _>>()?;
    let expired = args
        .expired_clients
        .iter()
        .filter(|c| !c.trim().is_empty())
        .map(|c| parse_client(c))
        .collect::<Result<Vec<_>, _>>()?;
    let nodes: Vec<NodeId> = (1..=args.nodes).filter_map(NodeId::new).collect();
    std::fs::create_dir_all(&args.dir).with_context(|| format!("cannot create {}", args.dir.display()))?;
    let dir = std::fs::canonicalize(&args.dir).with_context(|| format!("cannot resolve {}", args.dir.display()))?;
    let certs_dir = dir.join("certs");
    if !args.force {
        let existing = std::iter::once(certs_dir.join("ca.crt"))
            .chain((1..=args.nodes).map(|i| config_path(&dir, i)))
            .find(|p| p.exists());
        if let Some(p) = existing {
            bail!(
                "{} already exists; pass --force to overwrite (running nodes keep the old certificates)",
                p.display()
            );
        }
    }
    // Check every configuration before writing anything.
    let configs = (1..=args.nodes)
        .map(|i| {
            let c = node_config(&dir, cluster, i, args.nodes, args.base_port)?;
            c.validate().with_context(|| format!("the configuration of node {i}"))?;
            Ok(c)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let written = dev_certs::generate(&certs_dir, &cluster_id, &nodes, &clients)
        .with_context(|| format!("cannot write certificates into {}", certs_dir.display()))?;
    let now = std::time::SystemTime::now();
    let hour = std::time::Duration::from_secs(3600);
    let past = dev_certs::Validity { not_before: now - 2 * hour, not_after: now - hour };
    for (principal, role) in &expired {
        let identity = quorate_transport::Identity::client(cluster_id.clone(), principal.clone(), *role);
        let paths = written
            .authority
            .issue(&identity, past, &certs_dir, &format!("client-{principal}"), &written.ca)
            .with_context(|| format!("cannot write the expired certificate of {principal}"))?;
        println!("client {principal} (EXPIRED an hour ago, for tests): {}", paths.cert.display());
    }
    for c in &configs {
        let path = config_path(&dir, c.id);
        std::fs::write(&path, c.to_toml()?).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!(
        "cluster `{cluster}`: CA, {} node and {} client certificates in {}",
        nodes.len(),
        clients.len(),
        certs_dir.display()
    );
    for c in &configs {
        println!(
            "node {}: {} (listens on {}, data in {})",
            c.id,
            config_path(&dir, c.id).display(),
            c.listen,
            c.data_dir.display()
        );
    }
    for (principal, paths) in &written.clients {
        println!("client {principal}: {}", paths.cert.display());
    }
    let endpoints: Vec<String> = configs.iter().map(|c| format!("{}={}", c.id, c.listen)).collect();
    println!();
    println!("start each node:    quorate node start --config {}", config_path(&dir, 1).display());
    println!(
        "then point clients: export QUORATE_CERTS={} QUORATE_CLUSTER={cluster} QUORATE_ENDPOINTS={}",
        certs_dir.display(),
        endpoints.join(",")
    );
    Ok(Outcome::Ok)
}
