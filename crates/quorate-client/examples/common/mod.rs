//! What the examples share: a client configured from the environment.

use quorate_client::{Client, ClientConfig};
use quorate_log::NodeId;
use quorate_transport::{ClusterId, TlsPaths};
use std::path::PathBuf;

/// The examples' error type.
pub(crate) type Error = Box<dyn std::error::Error>;

/// A client of the cluster named by `QUORATE_CERTS` (a `quorate certs dev` directory, default
/// `certs`), `QUORATE_CLUSTER` (default `dev`) and `QUORATE_ENDPOINTS` (`ID=HOST:PORT,...`,
/// default the dev cluster's three ports), with the admin certificate.
pub(crate) fn client_from_env() -> Result<Client, Error> {
    let certs = PathBuf::from(std::env::var("QUORATE_CERTS").unwrap_or_else(|_| "certs".into()));
    let cluster = std::env::var("QUORATE_CLUSTER").unwrap_or_else(|_| "dev".into());
    let endpoints = std::env::var("QUORATE_ENDPOINTS")
        .unwrap_or_else(|_| "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003".into());
    let mut members = Vec::new();
    for e in endpoints.split(',').filter(|e| !e.is_empty()) {
        let (id, addr) = e.split_once('=').ok_or_else(|| format!("endpoint `{e}` is not ID=HOST:PORT"))?;
        let id = NodeId::new(id.trim().parse()?).ok_or("node ids start at 1")?;
        members.push((id, addr.trim().parse()?));
    }
    let tls = TlsPaths {
        ca: certs.join("ca.crt"),
        cert: certs.join("client-admin.crt"),
        key: certs.join("client-admin.key"),
    };
    Ok(Client::new(ClientConfig::new(ClusterId::new(&cluster)?, members, tls))?)
}
