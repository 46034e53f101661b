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
    assert!(msg("1=localhost").contains("not an IP:PORT"));
    assert!(msg("1=127.0.0.1:1,1=127.0.0.1:2").contains("twice"));
    assert!(msg("").contains("no endpoints"));
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
        base_port: 7101,
        force: false,
    };
    certs::dev("dev", &args).unwrap();
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
    let again = certs::dev("dev", &args).unwrap_err();
    assert!(again.to_string().contains("--force"), "{again}");
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
    let table = cluster::status_table(&[
        (id(1), "127.0.0.1:7001".into(), Ok(status)),
        (id(2), "127.0.0.1:7002".into(), Err("connection refused".into())),
    ]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID  ADDRESS"), "{table}");
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row, ["1", "127.0.0.1:7001", "leader", "3", "1", "10", "9", "10", "4", "1", "voters=1,2"]);
    let row: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(&row[..3], ["2", "127.0.0.1:7002", "unreachable"]);
    assert_eq!(lines[3], "node 2 at 127.0.0.1:7002: connection refused");
}

use quorate_log::NodeId;
