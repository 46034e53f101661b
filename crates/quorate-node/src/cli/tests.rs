//! Argument parsing: every command's flags, defaults, and the usage errors (exit code 2).

use super::*;
use clap::CommandFactory;
use clap::error::ErrorKind;

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("quorate").chain(args.iter().copied()))
}

#[test]
fn the_command_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn node_start_with_overrides() {
    let cli = parse(&["node", "start", "--config", "n1.toml", "--id", "4", "--listen", "127.0.0.1:7004"]).unwrap();
    let Command::Node(NodeCmd::Start(a)) = cli.command else { panic!("not node start") };
    assert_eq!(a.config, PathBuf::from("n1.toml"));
    assert_eq!(a.id, Some(4));
    assert_eq!(a.listen, Some("127.0.0.1:7004".parse().unwrap()));
    assert_eq!(a.data_dir, None);
    assert!(!a.join);
}

#[test]
fn kv_commands() {
    let cli = parse(&["kv", "get", "k", "--consistency", "stale"]).unwrap();
    assert!(matches!(cli.command, Command::Kv(KvCmd::Get { consistency: Consistency::Stale, .. })));
    let cli = parse(&["kv", "get", "k"]).unwrap();
    assert!(matches!(cli.command, Command::Kv(KvCmd::Get { consistency: Consistency::Linearizable, .. })));
    assert!(matches!(parse(&["kv", "put", "k", "v"]).unwrap().command, Command::Kv(KvCmd::Put { .. })));
    assert!(matches!(parse(&["kv", "delete", "k"]).unwrap().command, Command::Kv(KvCmd::Del { .. })));
    let cli = parse(&["kv", "cas", "k", "new", "--expected", "old"]).unwrap();
    assert!(matches!(cli.command, Command::Kv(KvCmd::Cas { expected: Some(_), absent: false, .. })));
    let cli = parse(&["kv", "scan", "--prefix", "user/", "--limit", "5"]).unwrap();
    assert!(matches!(cli.command, Command::Kv(KvCmd::Scan { limit: 5, prefix: Some(_), .. })));
    let cli = parse(&["kv", "txn", "if value(a) == 1; then put a 2"]).unwrap();
    assert!(matches!(cli.command, Command::Kv(KvCmd::Txn { text: Some(_), file: None })));
    let cli = parse(&["kv", "put", "k", "--value-file", "-"]).unwrap();
    assert!(matches!(cli.command, Command::Kv(KvCmd::Put { value: None, value_file: Some(_), .. })));
    let cli = parse(&["kv", "cas", "k", "--value-file", "v.bin", "--absent"]).unwrap();
    assert!(matches!(cli.command, Command::Kv(KvCmd::Cas { value: None, value_file: Some(_), absent: true, .. })));
    let cli = parse(&["kv", "get", "k", "--rev", "7"]).unwrap();
    assert!(matches!(cli.command, Command::Kv(KvCmd::Get { rev: Some(7), .. })));
    let cli = parse(&["kv", "scan", "--prefix", "a", "--rev", "9"]).unwrap();
    assert!(matches!(cli.command, Command::Kv(KvCmd::Scan { rev: Some(9), .. })));
    assert!(matches!(parse(&["kv", "compact", "12"]).unwrap().command, Command::Kv(KvCmd::Compact { rev: 12 })));
    assert!(parse(&["kv", "get", "k", "--rev", "x"]).is_err());
    let cli = parse(&["kv", "put", "k", "v", "--lease", "42"]).unwrap();
    assert!(matches!(cli.command, Command::Kv(KvCmd::Put { lease: Some(42), .. })));
    assert!(parse(&["kv", "put", "k", "v", "--lease", "x"]).is_err());
}

#[test]
fn lease_commands_parse() {
    use super::lease::LeaseCmd;
    let cmd = |args: &[&str]| match parse(args).unwrap().command {
        Command::Lease(c) => c,
        other => panic!("not a lease command: {other:?}"),
    };
    assert!(matches!(cmd(&["lease", "grant", "5000"]), LeaseCmd::Grant { ttl_ms: 5000 }));
    assert!(matches!(
        cmd(&["lease", "keepalive", "7", "--count", "3"]),
        LeaseCmd::Keepalive { id: 7, count: Some(3), duration_ms: None }
    ));
    assert!(matches!(
        cmd(&["lease", "keepalive", "7", "--duration-ms", "900"]),
        LeaseCmd::Keepalive { id: 7, count: None, duration_ms: Some(900) }
    ));
    assert!(matches!(cmd(&["lease", "revoke", "7"]), LeaseCmd::Revoke { id: 7 }));
    assert!(matches!(cmd(&["lease", "list"]), LeaseCmd::List));
    assert!(matches!(cmd(&["lease", "ttl", "7"]), LeaseCmd::Ttl { id: 7 }));
    assert!(parse(&["lease", "grant"]).is_err());
    assert!(parse(&["lease", "keepalive", "7", "--count", "0"]).is_err());
}

#[test]
fn output_format_is_global_with_a_table_alias() {
    assert_eq!(parse(&["member", "list"]).unwrap().conn.output, output::Format::Text);
    assert_eq!(parse(&["-o", "json", "member", "list"]).unwrap().conn.output, output::Format::Json);
    assert_eq!(parse(&["kv", "scan", "--output", "json"]).unwrap().conn.output, output::Format::Json);
    assert_eq!(parse(&["cluster", "status", "-o", "table"]).unwrap().conn.output, output::Format::Text);
    assert_eq!(parse(&["cluster", "status", "-o", "yaml"]).unwrap_err().kind(), ErrorKind::InvalidValue);
}

#[test]
fn json_on_a_command_without_it_is_a_usage_error() {
    let e = run(parse(&["-o", "json", "replay", "f.qflt"]).unwrap()).unwrap_err();
    assert_eq!(output::exit_of(&e), output::Exit::Usage);
    assert!(e.to_string().contains("no JSON output"), "{e}");
}

#[test]
fn values_come_from_files_and_stop_at_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let limit = quorate_api::limits::VALUE_BYTES_MAX;
    let big = dir.path().join("big");
    let bytes: Vec<u8> = (0..limit).map(|i| (i % 251) as u8).collect();
    std::fs::write(&big, &bytes).unwrap();
    assert_eq!(kv::read_value(None, Some(&big)).unwrap(), bytes, "1 MiB, byte for byte");
    let over = dir.path().join("over");
    std::fs::write(&over, vec![0u8; limit + 1]).unwrap();
    let e = kv::read_value(None, Some(&over)).unwrap_err();
    assert_eq!(output::exit_of(&e), output::Exit::Usage);
    assert!(e.to_string().contains("larger than"), "{e}");
    let e = kv::read_value(None, Some(&dir.path().join("missing"))).unwrap_err();
    assert_eq!(output::exit_of(&e), output::Exit::Usage);
    assert_eq!(kv::read_value(Some("v".into()), None).unwrap(), b"v");
}

#[test]
fn usage_errors() {
    let kind = |args: &[&str]| parse(args).unwrap_err().kind();
    assert_eq!(kind(&["kv", "cas", "k", "v"]), ErrorKind::MissingRequiredArgument);
    assert_eq!(kind(&["kv", "cas", "k", "v", "--expected", "a", "--absent"]), ErrorKind::ArgumentConflict);
    assert_eq!(kind(&["kv", "get", "k", "--consistency", "eventual"]), ErrorKind::InvalidValue);
    assert_eq!(kind(&["kv", "scan", "--limit", "0"]), ErrorKind::ValueValidation);
    assert_eq!(kind(&["kv", "txn"]), ErrorKind::MissingRequiredArgument);
    assert_eq!(kind(&["member", "add", "4", "127.0.0.1:7004"]), ErrorKind::MissingRequiredArgument);
    assert_eq!(kind(&["member", "add", "--learner", "4", "nowhere"]), ErrorKind::ValueValidation);
    assert_eq!(kind(&["bench", "--clients", "0"]), ErrorKind::ValueValidation);
    assert_eq!(kind(&["frobnicate"]), ErrorKind::InvalidSubcommand);
    assert_eq!(kind(&["kv", "put", "k"]), ErrorKind::MissingRequiredArgument);
    assert_eq!(kind(&["kv", "put", "k", "v", "--value-file", "f"]), ErrorKind::ArgumentConflict);
    assert_eq!(kind(&["certs", "issue", "node", "4", "--dir", "d", "--days", "0"]), ErrorKind::ValueValidation);
    assert_eq!(kind(&["certs", "issue", "root", "x", "--dir", "d"]), ErrorKind::InvalidValue);
    assert_eq!(kind(&["certs", "dev", "--dir", "d", "--days", "399"]), ErrorKind::ValueValidation);
    // Usage errors exit with 2.
    assert_eq!(parse(&["kv"]).unwrap_err().exit_code(), 2);
}

#[test]
fn connection_flags_are_global_and_have_dev_defaults() {
    let cli = parse(&["cluster", "status", "--endpoints", "1=127.0.0.1:9001", "--certs", "/tmp/c", "--user", "reader"])
        .unwrap();
    assert_eq!(cli.conn.endpoints, "1=127.0.0.1:9001");
    let tls = cli.conn.tls();
    assert_eq!(tls.ca, PathBuf::from("/tmp/c/ca.crt"));
    assert_eq!(tls.cert, PathBuf::from("/tmp/c/client-reader.crt"));
    assert_eq!(tls.key, PathBuf::from("/tmp/c/client-reader.key"));
    let cli = parse(&["--ca", "/x/ca.pem", "member", "list"]).unwrap();
    assert_eq!(cli.conn.tls().ca, PathBuf::from("/x/ca.pem"));
    assert_eq!(cli.conn.cluster, "dev");
    // A positional KEY and the global --key (the TLS key) do not collide.
    let cli = parse(&["kv", "put", "k", "v", "--key", "/x/client.key"]).unwrap();
    assert_eq!(cli.conn.tls().key, PathBuf::from("/x/client.key"));
    assert!(matches!(cli.command, Command::Kv(KvCmd::Put { ref key, .. }) if key == "k"));
}

#[test]
fn endpoints_parse_and_say_what_is_wrong() {
    let e = conn::parse_endpoints("1=127.0.0.1:7001, 2=127.0.0.1:7002").unwrap();
    assert_eq!(e.len(), 2);
    assert_eq!(e[1].0.get(), 2);
    let msg = |s: &str| format!("{:#}", conn::parse_endpoints(s).unwrap_err());
    assert!(msg("127.0.0.1:7001").contains("ID=HOST:PORT"));
    assert!(msg("0=127.0.0.1:7001").contains("start at 1"));
    assert!(msg("1=localhost").contains("is not HOST:PORT"), "{}", msg("1=localhost"));
    assert!(msg("1=no-such-host.invalid:7001").contains("cannot resolve no-such-host.invalid"));
    // A name is resolved (here from /etc/hosts).
    let named = conn::parse_endpoints("1=localhost:7001").unwrap();
    assert_eq!(named[0].1.port(), 7001);
    assert!(named[0].1.ip().is_loopback());
    assert!(msg("1=127.0.0.1:1,1=127.0.0.1:2").contains("twice"));
    assert!(msg("").contains("no endpoints"));
    let e = conn::parse_endpoints("1=localhost").unwrap_err();
    assert_eq!(output::exit_of(&e), output::Exit::Usage);
}

#[test]
fn leader_snapshot_certs_and_bench() {
    let cli = parse(&["leader", "transfer", "--to", "2"]).unwrap();
    assert!(matches!(cli.command, Command::Leader(LeaderCmd::Transfer { to: Some(2) })));
    let cli =
        parse(&["snapshot", "restore", "--from", "s.snap", "--data-dir", "d", "--id", "1", "--peers", "1=127.0.0.1:1"])
            .unwrap();
    assert!(matches!(cli.command, Command::Snapshot(SnapshotCmd::Restore(ref a)) if a.id == 1));
    assert!(parse(&["snapshot", "restore", "--from", "s.snap", "--data-dir", "d"]).is_err(), "members are required");
    assert!(matches!(parse(&["replay", "f.qflt"]).unwrap().command, Command::Replay(_)));
    let cli = parse(&["debug", "flight-dump", "--data-dir", "d", "--out", "f.qflt"]).unwrap();
    assert!(matches!(cli.command, Command::Debug(super::flight::DebugCmd::FlightDump { wait: 10, .. })));
    let cli = parse(&["debug", "flight-dump", "--node", "2"]).unwrap();
    assert!(matches!(cli.command, Command::Debug(super::flight::DebugCmd::FlightDump { node: Some(2), .. })));
    assert!(parse(&["debug", "flight-dump"]).is_err(), "--node or --data-dir is required");
    assert!(parse(&["debug", "flight-dump", "--node", "2", "--data-dir", "d"]).is_err(), "not both");
    let cli =
        parse(&["certs", "dev", "--dir", "d", "--cluster", "prod", "--nodes", "5", "--clients", "a,b:read"]).unwrap();
    assert_eq!(cli.conn.cluster, "prod");
    let Command::Certs(CertsCmd::Dev(a)) = cli.command else { panic!("not certs dev") };
    assert_eq!((a.nodes, a.clients.clone()), (5, vec!["a".to_string(), "b:read".to_string()]));
    let cli =
        parse(&["bench", "--clients", "4", "--value-size", "100", "--duration", "2", "--read-ratio", "0.9"]).unwrap();
    let Command::Bench(b) = cli.command else { panic!("not bench") };
    assert_eq!((b.clients, b.value_size, b.ops_max), (4, 100, 1_000_000));
}

#[test]
fn client_specs() {
    let (p, r) = certs::parse_client("writer:write").unwrap();
    assert_eq!((p.as_str(), r), ("writer", quorate_transport::Role::Write));
    assert_eq!(certs::parse_client("admin").unwrap().1, quorate_transport::Role::Admin);
    assert!(certs::parse_client("x:root").is_err());
}

#[test]
fn dev_configs_load_back_and_validate() {
    let dir = tempfile::tempdir().unwrap();
    let c = certs::node_config(dir.path(), "dev", 2, 3, 7001).unwrap();
    assert_eq!(c.listen, "127.0.0.1:7002".parse().unwrap());
    assert_eq!(c.peers.len(), 3);
    let path = certs::config_path(dir.path(), 2);
    std::fs::write(&path, c.to_toml().unwrap()).unwrap();
    let back = quorate_node::config::NodeConfig::load(&path).unwrap();
    assert_eq!(back, c);
    back.validate().unwrap();
    assert!(certs::node_config(dir.path(), "dev", 3, 3, 65534).is_err());
}

#[test]
fn certs_dev_writes_certificates_and_configs() {
    let dir = tempfile::tempdir().unwrap();
    let args = CertsDevArgs {
        dir: dir.path().join("c"),
        nodes: 3,
        clients: vec!["admin".into(), "reader:read".into()],
        expired_clients: vec!["old:write".into()],
        days: 30,
        ca_days: 365,
        base_port: 7101,
        force: false,
    };
    certs::dev("dev", &args, output::Format::Text).unwrap();
    for f in [
        "certs/ca.crt",
        "certs/node-3.key",
        "certs/client-reader.crt",
        "certs/client-old.crt",
        "node-1.toml",
        "node-3.toml",
    ] {
        assert!(args.dir.join(f).exists(), "{f} missing");
    }
    // An empty revocation list, which every node's configuration names.
    let crl = std::fs::canonicalize(args.dir.join("certs/ca.crl")).unwrap();
    let config = quorate_node::config::NodeConfig::load(&args.dir.join("node-2.toml")).unwrap();
    assert_eq!(config.tls.crls, vec![crl]);
    let creds = quorate_transport::Credentials::load_with_crls(
        quorate_transport::TlsPaths { ca: config.tls.ca.clone(), cert: config.tls.cert.clone(), key: config.tls.key },
        config.tls.crls,
    )
    .unwrap();
    creds.check_usable().unwrap();
    let again = certs::dev("dev", &args, output::Format::Text).unwrap_err();
    assert!(again.to_string().contains("--force"), "{again}");
}

fn dev_ca(dir: &std::path::Path, days: u64, ca_days: u64) -> PathBuf {
    let args = CertsDevArgs {
        dir: dir.to_path_buf(),
        nodes: 3,
        clients: vec!["admin".into()],
        expired_clients: vec![],
        days,
        ca_days,
        base_port: 7101,
        force: false,
    };
    certs::dev("prod", &args, output::Format::Text).unwrap();
    dir.join("certs")
}

fn issue_args(kind: IssueKind, name: &str, dir: &std::path::Path, days: u64) -> CertsIssueArgs {
    CertsIssueArgs {
        kind,
        name: name.into(),
        ca: CaArgs { dir: dir.to_path_buf(), ca_cert: None, ca_key: None },
        out: None,
        days,
        force: false,
    }
}

/// Seconds from now until the end of the leaf certificate `name` in `certs`.
fn seconds_left(certs: &std::path::Path, name: &str) -> i64 {
    let paths = quorate_transport::TlsPaths {
        ca: certs.join("ca.crt"),
        cert: certs.join(format!("{name}.crt")),
        key: certs.join(format!("{name}.key")),
    };
    quorate_transport::Credentials::load(paths).unwrap().seconds_until_earliest_expiry()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[test]
fn certs_dev_honours_days_and_ca_days() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dev_ca(dir.path(), 7, 90);
    let day = 86_400;
    assert!((7 * day - 60..=7 * day).contains(&seconds_left(&certs, "node-1")));
    let ca = quorate_transport::dev_certs::DevCa::load(&certs.join("ca.crt"), &certs.join("ca.key")).unwrap();
    assert!((90 * day - 60..=90 * day).contains(&(ca.validity_unix().1 - unix_now())));
    let args = CertsDevArgs {
        dir: dir.path().join("other"),
        nodes: 1,
        clients: vec![],
        expired_clients: vec![],
        days: 30,
        ca_days: 10,
        base_port: 7101,
        force: false,
    };
    let e = certs::dev("prod", &args, output::Format::Text).unwrap_err();
    assert_eq!(output::exit_of(&e), output::Exit::Usage);
    assert!(e.to_string().contains("outlive"), "{e}");
}

#[test]
fn certs_issue_adds_a_node_and_a_client_from_the_same_ca_without_touching_it() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dev_ca(dir.path(), 30, 365);
    let ca_before = (std::fs::read(certs.join("ca.crt")).unwrap(), std::fs::read(certs.join("ca.key")).unwrap());
    // DIR or DIR/certs both work.
    certs::issue("prod", &issue_args(IssueKind::Node, "4", dir.path(), 45), output::Format::Text).unwrap();
    certs::issue("prod", &issue_args(IssueKind::Client, "app:write", &certs, 10), output::Format::Json).unwrap();
    let ca_after = (std::fs::read(certs.join("ca.crt")).unwrap(), std::fs::read(certs.join("ca.key")).unwrap());
    assert_eq!(ca_before, ca_after, "the CA is only read");
    for (name, days) in [("node-4", 45), ("client-app", 10)] {
        let paths = quorate_transport::TlsPaths {
            ca: certs.join("ca.crt"),
            cert: certs.join(format!("{name}.crt")),
            key: certs.join(format!("{name}.key")),
        };
        let creds = quorate_transport::Credentials::load(paths).unwrap();
        creds.check_usable().unwrap();
        let left = seconds_left(&certs, name);
        assert!((days * 86_400 - 60..=days * 86_400).contains(&left), "{name}: {left}");
    }
    let node4 = quorate_transport::Credentials::load(quorate_transport::TlsPaths {
        ca: certs.join("ca.crt"),
        cert: certs.join("node-4.crt"),
        key: certs.join("node-4.key"),
    })
    .unwrap();
    assert_eq!(node4.identity().to_string(), "quorate://prod/node/4");
    // No leftovers of the temporary names.
    let pending: Vec<_> = std::fs::read_dir(&certs)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.contains("pending"))
        .collect();
    assert!(pending.is_empty(), "{pending:?}");
    // An existing certificate is kept unless --force.
    let e = certs::issue("prod", &issue_args(IssueKind::Node, "4", &certs, 30), output::Format::Text).unwrap_err();
    assert!(e.to_string().contains("--force"), "{e}");
    let mut forced = issue_args(IssueKind::Node, "4", &certs, 30);
    forced.force = true;
    certs::issue("prod", &forced, output::Format::Text).unwrap();
    assert!(seconds_left(&certs, "node-4") <= 30 * 86_400);
}

#[test]
fn certs_issue_refuses_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dev_ca(dir.path(), 30, 60);
    let issue = |args: &CertsIssueArgs| certs::issue("prod", args, output::Format::Text).unwrap_err();
    // Names and roles: usage errors.
    for (kind, name) in [(IssueKind::Node, "0"), (IssueKind::Node, "four"), (IssueKind::Client, "app:root")] {
        let e = issue(&issue_args(kind, name, &certs, 30));
        assert_eq!(output::exit_of(&e), output::Exit::Usage, "{name}: {e:#}");
    }
    let e = certs::issue("Bad Name", &issue_args(IssueKind::Node, "4", &certs, 30), output::Format::Text).unwrap_err();
    assert_eq!(output::exit_of(&e), output::Exit::Usage);
    // Longer than the CA.
    let e = issue(&issue_args(IssueKind::Node, "4", &certs, 61));
    let m = format!("{e:#}");
    assert!(m.contains("would outlive it"), "{m}");
    assert!(m.contains("pass --days 60 or less") || m.contains("pass --days 59 or less"), "{m}");
    // A missing CA, a garbled CA, a key that is not the CA's.
    let e = issue(&issue_args(IssueKind::Node, "4", &dir.path().join("nowhere"), 30));
    assert!(format!("{e:#}").contains("ca.crt") && format!("{e:#}").contains("cannot read"), "{e:#}");
    let garbled = dir.path().join("garbled");
    std::fs::create_dir_all(&garbled).unwrap();
    std::fs::write(
        garbled.join("ca.crt"),
        "-----BEGIN CERTIFICATE-----
MIIB
-----END CERTIFICATE-----
",
    )
    .unwrap();
    std::fs::copy(certs.join("ca.key"), garbled.join("ca.key")).unwrap();
    let e = issue(&issue_args(IssueKind::Node, "4", &garbled, 30));
    assert!(format!("{e:#}").contains("garbled"), "{e:#}");
    let mut wrong_key = issue_args(IssueKind::Node, "4", &certs, 30);
    wrong_key.ca.ca_key = Some(certs.join("node-1.key"));
    let e = issue(&wrong_key);
    assert!(format!("{e:#}").contains("not the private key"), "{e:#}");
    // A leaf certificate is not a CA.
    let mut leaf = issue_args(IssueKind::Node, "4", &certs, 1);
    leaf.ca.ca_cert = Some(certs.join("node-1.crt"));
    leaf.ca.ca_key = Some(certs.join("node-1.key"));
    let e = issue(&leaf);
    assert!(format!("{e:#}").contains("not a CA"), "{e:#}");
    assert!(!certs.join("node-4.crt").exists(), "nothing written on refusal");
}

#[test]
fn status_json_names_every_field() {
    use quorate_log::{Configuration, LogIndex, Term};
    let id = |n| NodeId::new(n).unwrap();
    let status = quorate_client::NodeStatus {
        id: id(1),
        role: quorate_core::Role::Leader,
        term: Term(3),
        leader: Some(id(1)),
        commit: LogIndex(10),
        applied: LogIndex(9),
        last_index: LogIndex(10),
        config: Configuration::with_voters([id(1), id(2)]).unwrap(),
        config_version: LogIndex(1),
        snapshot_index: LogIndex(4),
        revision: 7,
        binary_version: "0.2.0".into(),
        storage_format: 2,
        danger: vec![],
    };
    let versions = vec![(
        id(1),
        Ok(quorate_client::VersionInfo {
            id: id(1),
            binary_version: "0.2.0".into(),
            storage_format: 2,
            storage_format_max: 2,
            cluster_version: 2,
            cluster_version_max: 2,
        }),
    )];
    let j = cluster::status_json(
        &[
            (id(1), "127.0.0.1:7001".into(), Ok(status)),
            (id(2), "127.0.0.1:7002".into(), Err("connection refused".into())),
        ],
        &versions,
        &[(
            id(1),
            Ok(quorate_client::NodeHealth {
                id: id(1),
                refusing_writes: true,
                recovering: false,
                disk_free_bytes: Some(10),
                disk_floor_bytes: 64,
                db_bytes: Some(4096),
            }),
        )],
    );
    let n1 = &j["nodes"][0];
    assert_eq!(n1["id"], 1);
    assert_eq!(n1["reachable"], true);
    assert_eq!(n1["error"], serde_json::Value::Null);
    assert_eq!(n1["role"], "leader");
    assert_eq!((n1["term"].as_u64(), n1["commit"].as_u64(), n1["applied"].as_u64()), (Some(3), Some(10), Some(9)));
    assert_eq!(n1["config"]["voters"], serde_json::json!([1, 2]));
    assert_eq!(n1["versions"]["cluster_version"], 2);
    assert_eq!(
        n1["health"],
        serde_json::json!({"refusing_writes": true, "recovering": false, "disk_free_bytes": 10,
            "disk_floor_bytes": 64, "db_bytes": 4096})
    );
    let n2 = &j["nodes"][1];
    assert_eq!(n2["health"], serde_json::Value::Null, "no answer: health unknown");
    assert_eq!((n2["reachable"].as_bool(), n2["error"].as_str()), (Some(false), Some("connection refused")));
    assert!(n2.get("role").is_none());
    assert_eq!(j["cluster_version"], 2);
    assert_eq!(j["cluster_version_supported"], 2, "the lowest maximum of the members that answered");
}

#[test]
fn txn_json_has_one_result_per_operation() {
    use quorate_client::{KeyValue, TxnResult};
    let kv = KeyValue { key: b"k".to_vec(), value: vec![0xff], create_revision: 2, mod_revision: 3, version: 2 };
    let results = [TxnResult::Put, TxnResult::Delete(true), TxnResult::Get(Some(kv)), TxnResult::Get(None)];
    let j = kv::txn_json(false, 9, &results);
    assert_eq!(
        j,
        serde_json::json!({"succeeded": false, "revision": 9, "results": [
            {"op": "put"},
            {"op": "delete", "deleted": true},
            {"op": "get", "found": true, "key": "k", "value_base64": "/w==", "create_revision": 2, "mod_revision": 3, "version": 2},
            {"op": "get", "found": false},
        ]})
    );
}

#[test]
fn status_table_lines_up_and_marks_unreachable_nodes() {
    use quorate_log::{Configuration, LogIndex, Term};
    let id = |n| NodeId::new(n).unwrap();
    let status = quorate_client::NodeStatus {
        id: id(1),
        role: quorate_core::Role::Leader,
        term: Term(3),
        leader: Some(id(1)),
        commit: LogIndex(10),
        applied: LogIndex(9),
        last_index: LogIndex(10),
        config: Configuration::with_voters([id(1), id(2)]).unwrap(),
        config_version: LogIndex(1),
        snapshot_index: LogIndex(4),
        revision: 7,
        binary_version: "0.1.0".into(),
        storage_format: 1,
        danger: vec![],
    };
    let health = quorate_client::NodeHealth {
        id: id(1),
        refusing_writes: false,
        recovering: true,
        disk_free_bytes: None,
        disk_floor_bytes: 0,
        db_bytes: None,
    };
    let rows = [
        (id(1), "127.0.0.1:7001".into(), Ok(status)),
        (id(2), "127.0.0.1:7002".into(), Err("connection refused".into())),
    ];
    let table = cluster::status_table(&rows, &[(id(1), Ok(health.clone()))]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID  ADDRESS"), "{table}");
    assert!(lines[0].ends_with("CONFIG-INDEX  HEALTH      CONFIG"), "{table}");
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row, ["1", "127.0.0.1:7001", "leader", "3", "1", "10", "9", "10", "4", "1", "recovering", "voters=1,2"]);
    // A node that cannot tell (0.1.0) shows `-`; both conditions at once are joined.
    let table = cluster::status_table(&rows, &[]);
    assert_eq!(table.lines().nth(1).unwrap().split_whitespace().nth(10), Some("-"), "{table}");
    let both = quorate_client::NodeHealth { refusing_writes: true, ..health.clone() };
    assert_eq!(cluster::health_cell(Some(&both)), "refusing-writes+recovering");
    let fine = quorate_client::NodeHealth { recovering: false, ..health };
    assert_eq!(cluster::health_cell(Some(&fine)), "ok");
    let row: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(&row[..3], ["2", "127.0.0.1:7002", "unreachable"]);
    assert_eq!(lines[3], "node 2 at 127.0.0.1:7002: connection refused");
}

use quorate_log::NodeId;

#[test]
fn completions_endpoint_health_and_snapshot_status_parse() {
    let cli = parse(&["completions", "bash"]).unwrap();
    assert!(matches!(cli.command, Command::Completions { shell: clap_complete::Shell::Bash }));
    for shell in ["zsh", "fish"] {
        assert!(matches!(parse(&["completions", shell]).unwrap().command, Command::Completions { .. }));
    }
    assert_eq!(parse(&["completions", "tcsh"]).unwrap_err().kind(), ErrorKind::InvalidValue);
    assert_eq!(parse(&["completions"]).unwrap_err().kind(), ErrorKind::MissingRequiredArgument);
    let cli = parse(&["-o", "json", "endpoint", "health"]).unwrap();
    assert!(matches!(cli.command, Command::Endpoint(EndpointCmd::Health)));
    assert_eq!(cli.conn.output, output::Format::Json);
    let cli = parse(&["snapshot", "status", "/backups/snap.qsnap"]).unwrap();
    let Command::Snapshot(SnapshotCmd::Status { file }) = cli.command else { panic!("not snapshot status") };
    assert_eq!(file, PathBuf::from("/backups/snap.qsnap"));
    assert_eq!(parse(&["snapshot", "status"]).unwrap_err().kind(), ErrorKind::MissingRequiredArgument);
    // A completion script is not data: `-o json` on it is a usage error (exit 2), as on `top`.
    let err = run(parse(&["-o", "json", "completions", "bash"]).unwrap()).unwrap_err();
    assert_eq!(output::exit_of(&err), output::Exit::Usage);
}

#[test]
fn the_bash_completion_names_every_subcommand() {
    let mut script = Vec::new();
    completions(clap_complete::Shell::Bash, &mut script).unwrap();
    let script = String::from_utf8(script).unwrap();
    assert!(script.contains("complete -F _quorate"), "a bash completion function for quorate");
    // Every top-level command and the nested ones an operator types most.
    let top: Vec<String> = Cli::command().get_subcommands().map(|c| c.get_name().to_string()).collect();
    for name in ["node", "kv", "cluster", "member", "leader", "snapshot", "certs", "endpoint", "completions"] {
        assert!(top.iter().any(|t| t == name), "{name} is a subcommand");
    }
    for name in top.iter().map(String::as_str).chain(["health", "status", "restore", "put", "get", "scan", "finalize"])
    {
        assert!(script.contains(name), "the bash completion names {name}");
    }
    // Flags complete too.
    assert!(script.contains("--endpoints") && script.contains("--output"), "global flags");
    for shell in [clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
        let mut s = Vec::new();
        completions(shell, &mut s).unwrap();
        let s = String::from_utf8(s).unwrap();
        assert!(s.contains("endpoint") && s.contains("snapshot"), "{shell}: {}", &s[..s.len().min(200)]);
    }
}

#[test]
fn member_update_takes_an_id_and_a_peer_address() {
    let cli = parse(&["member", "update", "3", "--peer", "10.0.0.33:7003"]).unwrap();
    let Command::Member(MemberCmd::Update { id, peer }) = cli.command else { panic!("not member update") };
    assert_eq!((id, peer.to_string()), (3, "10.0.0.33:7003".to_string()));
    let cli = parse(&["member", "update", "3", "--peer", "node-3.quorate.svc:7003"]).unwrap();
    let Command::Member(MemberCmd::Update { peer, .. }) = cli.command else { panic!("not member update") };
    assert_eq!(peer.to_string(), "node-3.quorate.svc:7003", "a name is kept as a name");
    assert_eq!(parse(&["member", "update", "3"]).unwrap_err().kind(), ErrorKind::MissingRequiredArgument);
    assert!(parse(&["member", "update", "3", "--peer", "no-port"]).is_err());
}

#[test]
fn snapshot_save_to_a_file_and_bounded_stale_reads_parse() {
    let cli = parse(&["snapshot", "save", "b.qsnap", "--progress", "--idle-timeout", "5"]).unwrap();
    let Command::Snapshot(SnapshotCmd::Save(a)) = cli.command else { panic!("not snapshot save") };
    assert_eq!((a.file, a.progress, a.idle_timeout), (Some(PathBuf::from("b.qsnap")), true, 5));
    let cli = parse(&["snapshot", "save"]).unwrap();
    let Command::Snapshot(SnapshotCmd::Save(a)) = cli.command else { panic!("not snapshot save") };
    assert_eq!((a.file, a.progress, a.idle_timeout), (None, false, 30), "without FILE: on the leader's disk");
    assert!(parse(&["snapshot", "save", "--progress"]).is_err(), "--progress goes with FILE");
    assert!(parse(&["snapshot", "save", "b", "--idle-timeout", "0"]).is_err());
    assert_eq!(snapshot::part_path(std::path::Path::new("/b/s.qsnap")), PathBuf::from("/b/s.qsnap.part"));

    let cli = parse(&["kv", "get", "k", "--consistency", "stale", "--max-staleness-ms", "250"]).unwrap();
    let Command::Kv(KvCmd::Get { consistency, bound, .. }) = cli.command else { panic!("not kv get") };
    let bounded = quorate_client::ReadConsistency::BoundedStale(quorate_client::StalenessBound {
        max_lag_entries: None,
        max_since_leader_ms: Some(250),
    });
    assert_eq!(bound.level(consistency).unwrap(), bounded);
    let cli = parse(&["kv", "scan", "--consistency", "stale", "--max-lag-entries", "9"]).unwrap();
    let Command::Kv(KvCmd::Scan { consistency, bound, .. }) = cli.command else { panic!("not kv scan") };
    assert!(matches!(
        bound.level(consistency).unwrap(),
        quorate_client::ReadConsistency::BoundedStale(b) if b.max_lag_entries == Some(9)
    ));
    // A bound without `--consistency stale` is refused; no bound is the plain level.
    let cli = parse(&["kv", "get", "k", "--max-lag-entries", "1"]).unwrap();
    let Command::Kv(KvCmd::Get { consistency, bound, .. }) = cli.command else { panic!("not kv get") };
    assert!(bound.level(consistency).is_err());
    assert_eq!(StalenessArgs::default().level(Consistency::Stale).unwrap(), quorate_client::ReadConsistency::Stale);
}

#[test]
fn certs_revoke_takes_certificates_serials_and_a_list() {
    let cli = parse(&["certs", "revoke", "a.crt", "b.crt", "--serial", "1A:2B", "--dir", "ca", "--days", "7"]).unwrap();
    let Command::Certs(CertsCmd::Revoke(a)) = cli.command else { panic!("not certs revoke") };
    assert_eq!(a.certs, vec![PathBuf::from("a.crt"), PathBuf::from("b.crt")]);
    assert_eq!((a.serial.clone(), a.days, a.crl.clone()), (vec!["1A:2B".to_string()], 7, None));
    assert!(parse(&["certs", "revoke", "--dir", "ca"]).is_ok(), "nothing to add: an empty or refreshed list");
    assert_eq!(parse(&["certs", "revoke", "a.crt"]).unwrap_err().kind(), ErrorKind::MissingRequiredArgument);
    assert_eq!(
        parse(&["certs", "revoke", "--dir", "ca", "--days", "0"]).unwrap_err().kind(),
        ErrorKind::ValueValidation
    );
}

#[test]
fn certs_revoke_adds_to_the_list_and_refuses_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dev_ca(&dir.path().join("ca"), 30, 365);
    let root = certs.clone();
    let args = |certs_: Vec<PathBuf>, serial: Vec<String>| CertsRevokeArgs {
        certs: certs_,
        serial,
        ca: CaArgs { dir: root.clone(), ca_cert: None, ca_key: None },
        crl: None,
        days: 30,
    };
    let node2 = certs.join("node-2.crt");
    certs::revoke(&args(vec![node2.clone()], vec![]), output::Format::Text).unwrap();
    let paths =
        quorate_transport::TlsPaths { ca: certs.join("ca.crt"), cert: node2.clone(), key: certs.join("node-2.key") };
    let creds = quorate_transport::Credentials::load_with_crls(paths, vec![certs.join("ca.crl")]).unwrap();
    let e = creds.check_usable().unwrap_err().to_string();
    assert!(e.to_lowercase().contains("revoked"), "{e}");
    // A serial that is not hex is a usage error; a missing certificate says which.
    let err = certs::revoke(&args(vec![], vec!["0xZZ".into()]), output::Format::Text).unwrap_err();
    assert_eq!(output::exit_of(&err), output::Exit::Usage, "{err:#}");
    let err = certs::revoke(&args(vec![certs.join("nope.crt")], vec![]), output::Format::Text).unwrap_err();
    assert!(format!("{err:#}").contains("nope.crt"), "{err:#}");
    let before = std::fs::read(certs.join("ca.crl")).unwrap();
    // A CA directory without a key: nothing written.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::copy(certs.join("ca.crt"), elsewhere.join("ca.crt")).unwrap();
    let mut a = args(vec![], vec![]);
    a.ca.dir = elsewhere;
    a.crl = Some(certs.join("ca.crl"));
    let err = certs::revoke(&a, output::Format::Text).unwrap_err();
    assert!(format!("{err:#}").contains("ca.key"), "{err:#}");
    assert_eq!(std::fs::read(certs.join("ca.crl")).unwrap(), before);
}

#[test]
fn endpoint_health_help_states_the_exit_codes_the_code_uses() {
    let mut cmd = Cli::command();
    let help = cmd.find_subcommand_mut("endpoint").unwrap().find_subcommand_mut("health").unwrap().render_long_help();
    let help = help.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        help.contains("5 when no majority of the voters is healthy (no quorum), none answering included"),
        "{help}"
    );
    assert!(!help.contains("5 when none answers"), "{help}");
}

#[test]
fn lock_takes_a_command_after_a_double_dash_and_elect_a_value_or_listen() {
    let Command::Lock(l) = parse(&["lock", "job", "--ttl-ms", "5000", "--", "sh", "-c", "echo --x"]).unwrap().command
    else {
        panic!("not a lock")
    };
    assert_eq!((l.name.as_str(), l.ttl_ms, l.wait_ms, l.hold_ms), ("job", 5000, 60_000, None));
    assert_eq!(l.command, ["sh", "-c", "echo --x"]);
    let Command::Lock(l) = parse(&["lock", "job", "--hold-ms", "10"]).unwrap().command else { panic!("not a lock") };
    assert!(l.command.is_empty() && l.hold_ms == Some(10));
    assert!(parse(&["lock"]).is_err());
    assert!(parse(&["lock", "job", "--wait-ms", "0"]).is_err());
    let Command::Elect(e) = parse(&["elect", "e", "--listen", "--count", "2"]).unwrap().command else {
        panic!("not an elect")
    };
    assert!(e.listen && e.value.is_none() && e.count == Some(2));
    let Command::Elect(e) = parse(&["elect", "e", "node-a"]).unwrap().command else { panic!("not an elect") };
    assert_eq!(e.value.as_deref(), Some("node-a"));
    // A command's own exit code passes through; the others map as before.
    assert_eq!(Outcome::Code(7).code(), 7);
    assert_eq!(Outcome::NotFound.code(), 3);
    assert_eq!(output::Exit::NotAcquired.code(), 8);
}
