//! How CLI commands reach the cluster: endpoints, cluster name and certificate paths, from
//! flags or the environment.

use super::output::{Format, usage};
use anyhow::bail;
use clap::Args;
use quorate_client::{Client, ClientConfig};
use quorate_log::NodeId;
use quorate_transport::{ClusterId, TlsPaths};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Connection settings shared by every client command.
#[derive(Debug, Args, Clone)]
pub(crate) struct ConnArgs {
    /// Members to contact: ID=HOST:PORT, comma-separated.
    #[arg(
        long,
        global = true,
        env = "QUORATE_ENDPOINTS",
        default_value = "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003"
    )]
    pub(crate) endpoints: String,
    /// The cluster's name (must match the certificates).
    #[arg(long, global = true, env = "QUORATE_CLUSTER", default_value = "dev")]
    pub(crate) cluster: String,
    /// A directory from `quorate certs dev`: ca.crt and client-USER.{crt,key} (DIR/certs also works).
    #[arg(long, global = true, env = "QUORATE_CERTS", default_value = "certs")]
    pub(crate) certs: PathBuf,
    /// Which client certificate in --certs to use.
    #[arg(long, global = true, env = "QUORATE_USER", default_value = "admin")]
    pub(crate) user: String,
    /// The cluster CA certificate (overrides --certs).
    #[arg(long = "ca", id = "tls_ca", global = true, env = "QUORATE_CA")]
    pub(crate) ca: Option<PathBuf>,
    /// The client certificate (overrides --certs).
    #[arg(long = "cert", id = "tls_cert", global = true, env = "QUORATE_CERT")]
    pub(crate) cert: Option<PathBuf>,
    /// The client key (overrides --certs).
    #[arg(long = "key", id = "tls_key", global = true, env = "QUORATE_KEY")]
    pub(crate) key: Option<PathBuf>,
    /// Limit on a whole command's request, retries included, in seconds.
    #[arg(long, global = true, env = "QUORATE_TIMEOUT", default_value_t = 15.0)]
    pub(crate) timeout: f64,
    /// Output format: `text` (alias `table`) for people, `json` for scripts (one object; `kv
    /// scan`: one object per line). Not a connection setting, but every command takes it.
    // No environment variable: a global QUORATE_OUTPUT=json would make `node start` refuse.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Format::Text)]
    pub(crate) output: Format,
}

/// `IP:PORT`, or `HOST:PORT` resolved now (the system's resolver: `/etc/hosts`, DNS), its
/// first IPv4 address preferred.
pub(crate) fn resolve_endpoint(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    match quorate_transport::PeerAddr::parse(text).map_err(|e| e.to_string())? {
        quorate_transport::PeerAddr::Socket(sa) => Ok(sa),
        quorate_transport::PeerAddr::Name { host, port } => {
            let found: Vec<SocketAddr> =
                (host.as_str(), port).to_socket_addrs().map_err(|e| format!("cannot resolve {host}: {e}"))?.collect();
            found
                .iter()
                .find(|a| a.is_ipv4())
                .or(found.first())
                .copied()
                .ok_or_else(|| format!("{host} has no address"))
        }
        other => Err(format!("unsupported address {other}")),
    }
}

/// Parses `1=127.0.0.1:7001,2=node-2.example:7002` (names are resolved now).
pub(crate) fn parse_endpoints(text: &str) -> anyhow::Result<Vec<(NodeId, SocketAddr)>> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((id, addr)) = item.split_once('=') else {
            return Err(usage(format!("endpoint `{item}` must look like ID=HOST:PORT, e.g. 1=127.0.0.1:7001")));
        };
        let id: u64 = id.trim().parse().map_err(|_| usage(format!("endpoint `{item}`: `{id}` is not a node id")))?;
        let id = NodeId::new(id).ok_or_else(|| usage(format!("endpoint `{item}`: node ids start at 1")))?;
        let addr = resolve_endpoint(addr.trim()).map_err(|e| usage(format!("endpoint `{item}`: {e}")))?;
        if out.iter().any(|(other, _)| *other == id) {
            return Err(usage(format!("node {id} is listed twice in the endpoints")));
        }
        out.push((id, addr));
    }
    if out.is_empty() {
        return Err(usage("no endpoints: pass --endpoints ID=HOST:PORT,... or set QUORATE_ENDPOINTS"));
    }
    Ok(out)
}

impl ConnArgs {
    /// The certificate directory: `--certs`, or `--certs`/certs when that is where the files are.
    fn certs_dir(&self) -> PathBuf {
        let nested = self.certs.join("certs");
        if !self.certs.join("ca.crt").exists() && nested.join("ca.crt").exists() { nested } else { self.certs.clone() }
    }

    pub(crate) fn tls(&self) -> TlsPaths {
        let dir = self.certs_dir();
        let pick = |given: &Option<PathBuf>, default: &Path| given.clone().unwrap_or_else(|| default.to_path_buf());
        TlsPaths {
            ca: pick(&self.ca, &dir.join("ca.crt")),
            cert: pick(&self.cert, &dir.join(format!("client-{}.crt", self.user))),
            key: pick(&self.key, &dir.join(format!("client-{}.key", self.user))),
        }
    }

    pub(crate) fn client_config(&self) -> anyhow::Result<ClientConfig> {
        let cluster = ClusterId::new(&self.cluster)
            .map_err(|e| usage(format!("--cluster `{}` is not a valid cluster name: {e}", self.cluster)))?;
        let members = parse_endpoints(&self.endpoints)?;
        if !(self.timeout.is_finite() && self.timeout > 0.0 && self.timeout <= 3600.0) {
            return Err(usage("--timeout must be between 0 and 3600 seconds"));
        }
        let tls = self.tls();
        for (what, path) in [("CA certificate", &tls.ca), ("client certificate", &tls.cert), ("client key", &tls.key)] {
            if !path.exists() {
                bail!(
                    "the {what} {} does not exist; create dev certificates with `quorate certs dev --dir DIR` and \
                     pass --certs DIR (or --ca/--cert/--key)",
                    path.display()
                );
            }
        }
        let mut config = ClientConfig::new(cluster, members, tls);
        config.total_timeout = Duration::from_secs_f64(self.timeout);
        config.request_timeout = config.request_timeout.min(config.total_timeout);
        // A handshake takes milliseconds; a node that is down should cost little.
        config.connect_timeout = Duration::from_secs(1).min(config.total_timeout);
        Ok(config)
    }

    pub(crate) fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(self.client_config()?)?)
    }
}
