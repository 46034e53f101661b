//! `quorate certs dev`: a local CA, certificates and node configurations for a local cluster.
//! `quorate certs issue`: one more node or client certificate from an existing CA.
//! `quorate certs revoke`: the CA's certificate revocation list, updated.

use super::output::{Format, print_json, usage};
use super::{CaArgs, CertsDevArgs, CertsIssueArgs, CertsRevokeArgs, IssueKind, Outcome};
use anyhow::{Context, bail};
use quorate_log::NodeId;
use quorate_node::config::{LimitsConfig, NodeConfig, RaftConfig, TlsConfig};
use quorate_transport::dev_certs::{DevCa, Validity};
use quorate_transport::{ClusterId, Credentials, Identity, Principal, Role, TlsPaths, dev_certs};
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

const DAY: Duration = Duration::from_secs(86_400);
/// The revocation list `certs dev` writes (empty) and configures, and `certs revoke` updates.
const CRL_FILE: &str = "ca.crl";
/// Issued certificates start this long before now, for clocks that are a little behind.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);

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
        advertise: None,
        peers,
        tls: TlsConfig {
            ca: certs.join("ca.crt"),
            cert: certs.join(format!("node-{id}.crt")),
            key: certs.join(format!("node-{id}.key")),
            crls: vec![certs.join(CRL_FILE)],
        },
        raft: RaftConfig::default(),
        limits: LimitsConfig::default(),
        telemetry: Default::default(),
        admission: Default::default(),
        history: Default::default(),
        engine: Default::default(),
    })
}

pub(crate) fn dev(cluster: &str, args: &CertsDevArgs, format: Format) -> anyhow::Result<Outcome> {
    let cluster_id = ClusterId::new(cluster).map_err(|e| usage(format!("--cluster `{cluster}`: {e}")))?;
    let parse = |specs: &[String]| {
        specs
            .iter()
            .filter(|c| !c.trim().is_empty())
            .map(|c| parse_client(c).map_err(|e| usage(format!("{e:#}"))))
            .collect::<Result<Vec<_>, _>>()
    };
    let clients = parse(&args.clients)?;
    let expired = parse(&args.expired_clients)?;
    if args.ca_days < args.days {
        return Err(usage(format!(
            "--ca-days {} is shorter than --days {}: certificates cannot outlive their CA",
            args.ca_days, args.days
        )));
    }
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
    let now = SystemTime::now();
    let from_now = |days: u64| Validity { not_before: now - CLOCK_SKEW, not_after: now + DAY * days as u32 };
    let written = dev_certs::generate_with_validity(
        &certs_dir,
        &cluster_id,
        &nodes,
        &clients,
        from_now(args.ca_days),
        from_now(args.days),
    )
    .with_context(|| format!("cannot write certificates into {}", certs_dir.display()))?;
    // An empty revocation list, named by every node's `tls.crls`: `certs revoke` fills it.
    // (A list of an earlier CA there, with --force, would not be this CA's: replaced.)
    let crl = certs_dir.join(CRL_FILE);
    match std::fs::remove_file(&crl) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot replace {}", crl.display()));
        }
        _ => {}
    }
    written
        .authority
        .update_revocation_list(&crl, &[], &[], DAY * args.ca_days as u32)
        .with_context(|| format!("cannot write {}", crl.display()))?;
    let hour = Duration::from_secs(3600);
    let past = Validity { not_before: now - 2 * hour, not_after: now - hour };
    let mut expired_paths = Vec::new();
    for (principal, role) in &expired {
        let identity = Identity::client(cluster_id.clone(), principal.clone(), *role);
        let paths = written
            .authority
            .issue(&identity, past, &certs_dir, &format!("client-{principal}"), &written.ca)
            .with_context(|| format!("cannot write the expired certificate of {principal}"))?;
        if format == Format::Text {
            println!("client {principal} (EXPIRED an hour ago, for tests): {}", paths.cert.display());
        }
        expired_paths.push((principal.clone(), paths));
    }
    for c in &configs {
        let path = config_path(&dir, c.id);
        std::fs::write(&path, c.to_toml()?).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let endpoints: Vec<String> = configs.iter().map(|c| format!("{}={}", c.id, c.listen)).collect();
    if format == Format::Json {
        let files = |p: &TlsPaths| json!({"cert": p.cert.display().to_string(), "key": p.key.display().to_string()});
        let nodes: Vec<_> = configs
            .iter()
            .map(|c| {
                json!({
                    "id": c.id,
                    "config": config_path(&dir, c.id).display().to_string(),
                    "listen": c.listen.to_string(),
                    "data_dir": c.data_dir.display().to_string(),
                    "cert": c.tls.cert.display().to_string(),
                    "key": c.tls.key.display().to_string(),
                })
            })
            .collect();
        let clients: serde_json::Map<String, serde_json::Value> =
            written.clients.iter().map(|(p, paths)| (p.to_string(), files(paths))).collect();
        let expired: serde_json::Map<String, serde_json::Value> =
            expired_paths.iter().map(|(p, paths)| (p.to_string(), files(paths))).collect();
        print_json(&json!({
            "cluster": cluster,
            "ca": written.ca.display().to_string(),
            "ca_not_after_unix": written.authority.validity_unix().1,
            "not_after_unix": unix(now + DAY * args.days as u32),
            "nodes": nodes,
            "clients": clients,
            "expired_clients": expired,
            "crl": crl.display().to_string(),
            "endpoints": endpoints.join(","),
        }))?;
        return Ok(Outcome::Ok);
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
    println!("revocation list (empty; `quorate certs revoke CERT --dir DIR` adds to it): {}", crl.display());
    println!(
        "certificates valid for {} days (until {}), the CA for {} days; issue more with `quorate certs issue`",
        args.days,
        utc(unix(now + DAY * args.days as u32)),
        args.ca_days
    );
    println!();
    println!("start each node:    quorate node start --config {}", config_path(&dir, 1).display());
    println!(
        "then point clients: export QUORATE_CERTS={} QUORATE_CLUSTER={cluster} QUORATE_ENDPOINTS={}",
        certs_dir.display(),
        endpoints.join(",")
    );
    Ok(Outcome::Ok)
}

/// Unix seconds of `t` (negative before 1970).
fn unix(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC` (Howard Hinnant's civil-from-days).
pub(crate) fn utc(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// The CA directory of `certs issue`: DIR, or DIR/certs when that is where ca.crt is.
impl CaArgs {
    /// The CA directory, its certificate and its key, defaults filled in.
    fn paths(&self) -> (PathBuf, PathBuf, PathBuf) {
        let dir = ca_dir(&self.dir);
        let cert = self.ca_cert.clone().unwrap_or_else(|| dir.join("ca.crt"));
        let key = self.ca_key.clone().unwrap_or_else(|| dir.join("ca.key"));
        (dir, cert, key)
    }
}

fn ca_dir(dir: &Path) -> PathBuf {
    let nested = dir.join("certs");
    if !dir.join("ca.crt").exists() && nested.join("ca.crt").exists() { nested } else { dir.to_path_buf() }
}

/// `quorate certs issue node N | client NAME[:ROLE]`: one certificate and key from an existing
/// CA, checked (it must verify against the CA certificate for its usages) before it replaces
/// anything. The CA files are only read.
pub(crate) fn issue(cluster: &str, args: &CertsIssueArgs, format: Format) -> anyhow::Result<Outcome> {
    let cluster_id = ClusterId::new(cluster).map_err(|e| usage(format!("--cluster `{cluster}`: {e}")))?;
    let (identity, name) = match args.kind {
        IssueKind::Node => {
            let id = args.name.trim().parse::<u64>().ok().and_then(NodeId::new).ok_or_else(|| {
                usage(format!("node id `{}` must be a whole number from 1 (e.g. `certs issue node 4`)", args.name))
            })?;
            (Identity::peer(cluster_id, id), format!("node-{id}"))
        }
        IssueKind::Client => {
            let (principal, role) = parse_client(&args.name).map_err(|e| usage(format!("{e:#}")))?;
            let name = format!("client-{principal}");
            (Identity::client(cluster_id, principal, role), name)
        }
    };
    let (dir, ca_cert, ca_key) = args.ca.paths();
    let out = args.out.clone().unwrap_or_else(|| dir.clone());
    let cert_path = out.join(format!("{name}.crt"));
    let key_path = out.join(format!("{name}.key"));
    if !args.force
        && let Some(p) = [&cert_path, &key_path].into_iter().find(|p| p.exists())
    {
        bail!(
            "{} already exists; pass --force to replace it (nodes reload certificates when they change)",
            p.display()
        );
    }
    let ca = DevCa::load(&ca_cert, &ca_key).context("cannot issue from this CA")?;
    let now = SystemTime::now();
    let not_after = now + DAY * args.days as u32;
    let (ca_start, ca_end) = ca.validity_unix();
    if unix(not_after) > ca_end {
        bail!(
            "the CA {} expires at {} ({} days from now); a certificate valid for {} days would outlive it: pass \
             --days {} or less, or renew the CA",
            ca_cert.display(),
            utc(ca_end),
            (ca_end - unix(now)) / 86_400,
            args.days,
            ((ca_end - unix(now)) / 86_400).max(0)
        );
    }
    let earliest = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(ca_start).unwrap_or(0));
    let validity = Validity { not_before: (now - CLOCK_SKEW).max(earliest), not_after };
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    // Written under a temporary name, checked, then renamed over the final names: a node that
    // watches its files never sees a certificate that does not verify.
    let pending = ca
        .issue(&identity, validity, &out, &format!(".{name}.pending"), &ca_cert)
        .with_context(|| format!("cannot write the certificate into {}", out.display()))?;
    let checked = Credentials::load(pending.clone()).and_then(|c| c.check_usable());
    if let Err(e) = checked {
        let _ = std::fs::remove_file(&pending.cert);
        let _ = std::fs::remove_file(&pending.key);
        bail!(
            "the certificate issued with {} does not verify against {}: {e}; is it a CA certificate (basic \
             constraints CA:TRUE) and is the key its own?",
            ca_key.display(),
            ca_cert.display()
        );
    }
    std::fs::rename(&pending.key, &key_path).with_context(|| format!("cannot write {}", key_path.display()))?;
    std::fs::rename(&pending.cert, &cert_path).with_context(|| format!("cannot write {}", cert_path.display()))?;
    if format == Format::Json {
        print_json(&json!({
            "identity": identity.to_string(),
            "cert": cert_path.display().to_string(),
            "key": key_path.display().to_string(),
            "ca": ca_cert.display().to_string(),
            "days": args.days,
            "not_after_unix": unix(not_after),
        }))?;
    } else {
        println!(
            "issued {identity} by {}, valid for {} days (until {})",
            ca_cert.display(),
            args.days,
            utc(unix(not_after))
        );
        println!("certificate: {}", cert_path.display());
        println!("key:         {}", key_path.display());
    }
    Ok(Outcome::Ok)
}

/// A serial number in hex (`2678365C8B...`, `0x1A`, `1a:2b`), as bytes.
fn parse_serial(text: &str) -> anyhow::Result<Vec<u8>> {
    let t = text.trim();
    let t = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")).unwrap_or(t);
    let digits: String = t.chars().filter(|c| *c != ':').collect();
    // A serial number is at most 20 octets (RFC 5280 4.1.2.2); a little slack for zeros.
    if digits.is_empty() || digits.len() > 64 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("--serial `{text}` is not a serial number in hex (e.g. 2678365C8B79443422F3)");
    }
    let padded = if digits.len() % 2 == 1 { format!("0{digits}") } else { digits };
    (0..padded.len()).step_by(2).map(|i| u8::from_str_radix(&padded[i..i + 2], 16).context("hex")).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// `quorate certs revoke [CERT...] [--serial HEX...] --dir DIR`: the CA's revocation list with
/// the entries it has plus these, signed by the CA (whose files are only read).
pub(crate) fn revoke(args: &CertsRevokeArgs, format: Format) -> anyhow::Result<Outcome> {
    let serials = args
        .serial
        .iter()
        .map(|s| parse_serial(s).map_err(|e| usage(format!("{e:#}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let (dir, ca_cert, ca_key) = args.ca.paths();
    let crl = args.crl.clone().unwrap_or_else(|| dir.join(CRL_FILE));
    let ca = DevCa::load(&ca_cert, &ca_key).context("cannot sign a revocation list with this CA")?;
    let certs: Vec<&Path> = args.certs.iter().map(PathBuf::as_path).collect();
    let list =
        ca.update_revocation_list(&crl, &certs, &serials, DAY * args.days as u32).context("nothing was written")?;
    if format == Format::Json {
        let revoked: Vec<_> =
            list.revoked.iter().map(|r| json!({"serial": hex(&r.serial), "revoked_unix": r.revoked_unix})).collect();
        print_json(&json!({
            "crl": crl.display().to_string(),
            "ca": ca_cert.display().to_string(),
            "revoked": revoked,
            "added": list.added.iter().map(|s| hex(s)).collect::<Vec<_>>(),
            "next_update_unix": list.next_update_unix,
        }))?;
        return Ok(Outcome::Ok);
    }
    for serial in &list.added {
        println!("revoked serial {}", hex(serial));
    }
    println!(
        "{}: {} certificates revoked ({} added), signed by {}, next update {}",
        crl.display(),
        list.revoked.len(),
        list.added.len(),
        ca_cert.display(),
        utc(list.next_update_unix)
    );
    println!("give this file to every node (tls.crls); they re-read it within 2 s");
    Ok(Outcome::Ok)
}
