//! The `quorate` command line: argument definitions (clap) and dispatch.

mod bench;
mod certs;
mod cluster;
mod conn;
mod endpoint;
mod flight;
mod kv;
pub(crate) mod lease;
pub(crate) mod output;
mod recipes;
mod recover;
mod snapshot;
mod top;
mod txn;
mod watch;

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

pub(crate) use conn::ConnArgs;

/// What a command ended with, besides an error (the command already said what happened).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Exit 0.
    Ok,
    /// `kv get`: the key is absent (exit 3).
    NotFound,
    /// `kv cas` did not swap, `kv txn` ran its `else` branch (exit 4).
    CompareFailed,
    /// The command printed why it failed (`replay`: the outputs diverged): exit 1.
    Failed,
    /// `lock -- COMMAND`: the command's own exit code.
    Code(u8),
}

impl Outcome {
    /// The process exit code.
    pub(crate) fn exit(self) -> output::Exit {
        match self {
            Outcome::Ok => output::Exit::Ok,
            Outcome::NotFound => output::Exit::NotFound,
            Outcome::CompareFailed => output::Exit::CompareFailed,
            Outcome::Failed | Outcome::Code(_) => output::Exit::Failure,
        }
    }

    /// The process exit code: [`Outcome::exit`]'s, or a command's own.
    pub(crate) fn code(self) -> u8 {
        match self {
            Outcome::Code(c) => c,
            other => other.exit().code(),
        }
    }
}

/// Quorate: a replicated, linearizable key-value store.
#[derive(Debug, Parser)]
#[command(name = "quorate", version = quorate_node::VERSION, propagate_version = true, disable_help_subcommand = true)]
#[command(after_help = "Exit codes: 0 success, 1 failure, 2 usage error, 3 key not found, 4 comparison \
false (cas, txn), 5 cluster unavailable (nothing done), 6 refused (role, invalid request, revision compacted or in the future), 7 outcome of a write \
unknown, 8 lock not acquired or leader not elected in time (`lock -- COMMAND`: the command's own code). `-o json` prints one JSON object (`kv scan`, `top`: one per line); see docs/operations.md.")]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run a node.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Read and write keys.
    #[command(subcommand)]
    Kv(KvCmd),
    /// The cluster as a whole.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Membership changes.
    #[command(subcommand)]
    Member(MemberCmd),
    /// Leadership.
    #[command(subcommand)]
    Leader(LeaderCmd),
    /// Snapshots and backups.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Certificates.
    #[command(subcommand)]
    Certs(CertsCmd),
    /// A closed-loop load generator: throughput and latency percentiles (`-o json`: the
    /// summary as one JSON object).
    Bench(BenchArgs),
    /// Re-run a flight recording through a fresh consensus core and compare its outputs.
    Replay(flight::ReplayArgs),
    /// Debugging tools.
    #[command(subcommand)]
    Debug(flight::DebugCmd),
    /// A live view of every node: role, term, commit, applied, lag, throughput (`-o json`:
    /// one JSON object per refresh, one per line).
    Top(top::TopArgs),
    /// Every member's health, each asked directly.
    #[command(subcommand)]
    Endpoint(EndpointCmd),
    /// The changes to a key or a prefix, one line per event as they are applied (`-o json`:
    /// one JSON object per line). Served by any member, in revision order; it goes on at
    /// another member, without a gap or a duplicate, when the one asked cannot answer. Stop it
    /// with --count and --duration-ms in scripts. Needs cluster version 2.
    Watch(watch::WatchArgs),
    /// Leases: keys attached to a lease (`kv put --lease ID`) are deleted when it is revoked
    /// or expires (not kept alive for its TTL). Needs cluster version 2.
    #[command(subcommand)]
    Lease(lease::LeaseCmd),
    /// Take a lock (held on a lease, like `etcdctl lock`): print its key and fencing token
    /// once acquired, then run COMMAND (after `--`) with QUORATE_LOCK_KEY and
    /// QUORATE_LOCK_TOKEN in its environment and release the lock when it exits (exit with its
    /// code; if the lease is lost meanwhile, the command is killed and the exit is 1). Without
    /// a command, hold the lock until SIGINT, the end of standard input, or --hold-ms. Exit 8
    /// if not acquired within --wait-ms. The token grows with every holder: pass it with the
    /// writes the lock protects, and refuse smaller ones (docs/consistency.md). Needs cluster
    /// version 2.
    Lock(recipes::LockArgs),
    /// Campaign in an election (like `etcdctl elect`): print the leader's key, value and
    /// revision once this process is elected, hold the leadership until SIGINT, the end of
    /// standard input or --duration-ms, then resign (exit 1 if the lease is lost meanwhile; 8
    /// if not elected within --duration-ms). With --listen, print the leader and every change
    /// of leader instead. Needs cluster version 2.
    Elect(recipes::ElectArgs),
    /// Print a shell completion script: `quorate completions bash > /etc/bash_completion.d/quorate`.
    Completions {
        /// The shell: bash, zsh, fish (also elvish, powershell).
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum EndpointCmd {
    /// Ask every member of the cluster (from the cluster's member list; the --endpoints when
    /// it cannot be read) for its health and status: a table, or `-o json`. Healthy: it
    /// serves a linearizable read (a quorum round through it), accepts writes (free disk
    /// space above its floor) and is not recovering. Exit 0 when every member is healthy; 1
    /// when one is not or does not answer (or the member list cannot be read) while a majority
    /// of the voters is healthy; 5 when no majority of the voters is healthy (no quorum), none
    /// answering included.
    Health,
}

#[derive(Debug, Subcommand)]
pub(crate) enum NodeCmd {
    /// Start a node and run it until SIGINT or SIGTERM.
    Start(NodeStartArgs),
    /// UNSAFE, offline: after losing quorum, make this stopped node the only voter of its
    /// cluster, keeping its whole log (see docs/operations.md, "Recovering from a lost quorum").
    ForceNewCluster(recover::ForceArgs),
}

#[derive(Debug, Args)]
pub(crate) struct NodeStartArgs {
    /// The node's configuration file (TOML).
    #[arg(long, short = 'c', env = "QUORATE_CONFIG", default_value = "quorate.toml")]
    pub(crate) config: PathBuf,
    /// Override the node id.
    #[arg(long)]
    pub(crate) id: Option<u64>,
    /// Override the listen address (`host:port`).
    #[arg(long)]
    pub(crate) listen: Option<SocketAddr>,
    /// Override the data directory.
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Override the metrics/health listen address.
    #[arg(long)]
    pub(crate) metrics_listen: Option<SocketAddr>,
    /// Start empty and wait to be added to an existing cluster.
    #[arg(long)]
    pub(crate) join: bool,
}

/// Read levels, as named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Consistency {
    /// Sees every write acknowledged before the read started (ReadIndex).
    Linearizable,
    /// Leader lease: no quorum round trip; relies on bounded clock drift.
    Lease,
    /// Local to the node asked; may lag (says how far).
    Stale,
}

/// `--max-staleness-ms` and `--max-lag-entries`: a stale read refused (exit 5, retryable)
/// when the node asked is further behind (needs cluster version 2).
#[derive(Clone, Copy, Debug, Default, Args)]
pub(crate) struct StalenessArgs {
    /// With `--consistency stale`: refuse the read if the node last heard from a leader more
    /// than MS milliseconds ago (a leader: 0).
    #[arg(long, value_name = "MS")]
    pub(crate) max_staleness_ms: Option<u64>,
    /// With `--consistency stale`: refuse the read if the node knows more than N committed
    /// entries it has not applied yet.
    #[arg(long, value_name = "N")]
    pub(crate) max_lag_entries: Option<u64>,
}

impl StalenessArgs {
    /// The read level of `consistency` with these bounds.
    pub(crate) fn level(self, consistency: Consistency) -> anyhow::Result<quorate_client::ReadConsistency> {
        if self.max_staleness_ms.is_none() && self.max_lag_entries.is_none() {
            return Ok(consistency.into());
        }
        anyhow::ensure!(
            consistency == Consistency::Stale,
            "--max-staleness-ms and --max-lag-entries bound a stale read: add --consistency stale"
        );
        Ok(quorate_client::ReadConsistency::BoundedStale(quorate_client::StalenessBound {
            max_lag_entries: self.max_lag_entries,
            max_since_leader_ms: self.max_staleness_ms,
        }))
    }
}

impl From<Consistency> for quorate_client::ReadConsistency {
    fn from(c: Consistency) -> Self {
        match c {
            Consistency::Linearizable => quorate_client::ReadConsistency::Linearizable,
            Consistency::Lease => quorate_client::ReadConsistency::Lease,
            Consistency::Stale => quorate_client::ReadConsistency::Stale,
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum KvCmd {
    /// Set KEY to VALUE (or to the contents of --value-file).
    Put {
        /// The key.
        key: String,
        /// The value (omit with --value-file).
        #[arg(required_unless_present = "value_file")]
        value: Option<String>,
        /// Read the value from FILE (`-`: standard input), byte for byte, up to 1 MiB.
        #[arg(long, value_name = "FILE", conflicts_with = "value")]
        value_file: Option<PathBuf>,
        /// Attach the key to lease ID (`quorate lease grant`): it is deleted with the lease.
        #[arg(long, value_name = "ID")]
        lease: Option<u64>,
    },
    /// Print the value of KEY (exit 3 if it is absent).
    Get {
        /// The key.
        key: String,
        /// How the read is ordered.
        #[arg(long, value_enum, default_value_t = Consistency::Linearizable)]
        consistency: Consistency,
        /// Bounds on a stale read.
        #[command(flatten)]
        bound: StalenessArgs,
        /// Also print revisions and which node served the read.
        #[arg(long, short = 'v')]
        verbose: bool,
        /// Read the key as it was at revision N (the history kept back to the compaction
        /// revision; needs cluster version 2).
        #[arg(long, value_name = "N")]
        rev: Option<u64>,
    },
    /// Remove KEY.
    #[command(alias = "delete")]
    Del {
        /// The key.
        key: String,
    },
    /// Remove every key in [START, END) (at most 2,000 per call while history is recorded —
    /// 10,000 before; needs cluster version 2: a new cluster has it, an upgraded one after
    /// `quorate cluster finalize`).
    DelRange {
        /// First key.
        start: String,
        /// Exclusive end.
        end: String,
    },
    /// Set KEY to VALUE only if it now holds EXPECTED (or is absent, with --absent); exit 4 if
    /// it did not.
    Cas {
        /// The key.
        key: String,
        /// The new value (omit with --value-file).
        #[arg(required_unless_present = "value_file")]
        value: Option<String>,
        /// Read the new value from FILE (`-`: standard input), byte for byte, up to 1 MiB.
        #[arg(long, value_name = "FILE", conflicts_with = "value")]
        value_file: Option<PathBuf>,
        /// The value the key must hold now.
        #[arg(long, required_unless_present = "absent", conflicts_with = "absent")]
        expected: Option<String>,
        /// The key must be absent now.
        #[arg(long)]
        absent: bool,
    },
    /// Print the pairs with keys in [START, END), one `KEY=VALUE` per line (escaped: `\\`,
    /// `\n`, `\r`, `\t`, `\xNN` for other control characters and bytes that are not UTF-8, and
    /// `\x3d` for `=` in keys), or one JSON object per line with `-o json`.
    Scan {
        /// First key (default: the very first).
        #[arg(default_value = "")]
        start: String,
        /// Exclusive end (default: to the last key).
        #[arg(long)]
        end: Option<String>,
        /// Keys sharing this prefix (instead of START and --end).
        #[arg(long, conflicts_with_all = ["start", "end"])]
        prefix: Option<String>,
        /// Most pairs to print.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
        /// How the read is ordered.
        #[arg(long, value_enum, default_value_t = Consistency::Linearizable)]
        consistency: Consistency,
        /// Bounds on a stale read.
        #[command(flatten)]
        bound: StalenessArgs,
        /// Print the pairs as they were at revision N (needs cluster version 2).
        #[arg(long, value_name = "N")]
        rev: Option<u64>,
    },
    /// Forget the history before revision REV (admin): reads at an earlier revision are refused
    /// from then on. Through the log; the leader also compacts on its own (`[history]`).
    Compact {
        /// The new compaction revision (at most the current revision).
        rev: u64,
    },
    /// Run a transaction: `if` conditions, `then` operations, `else` operations. Exit 4 when a
    /// condition was false (the `else` branch ran).
    ///
    /// Text: one clause per line or separated by `;`, e.g.
    /// `if value(a) == 1; if version(b) > 0; then put a 2; then del b; else get a`.
    /// Conditions: value|mod|create|version (KEY) ==|!=|<|> OPERAND (`absent` for no value).
    /// Operations: put KEY VALUE, del KEY, get KEY. Quote with "..." for spaces.
    /// JSON (input starting with `{`):
    /// {"compare":[{"key":"a","value":"1","op":"=="}],"success":[{"put":{"key":"a","value":"2"}}],"failure":[]}
    #[command(verbatim_doc_comment)]
    Txn {
        /// The transaction (text or JSON); omit to use --file.
        #[arg(required_unless_present = "file")]
        text: Option<String>,
        /// Read the transaction from FILE (`-`: standard input).
        #[arg(long, short = 'f', conflicts_with = "text")]
        file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCmd {
    /// A table of every member's view: id, role, term, leader, commit, applied, config; then
    /// every member's versions (binary, storage format, cluster version).
    Status,
    /// Commit the newest cluster version every member supports, through the log: turns on
    /// what the new release gates on it; afterwards older binaries can no longer join, so
    /// rolling back is no longer possible. Refused unless every member answers and supports it.
    Finalize {
        /// The cluster version to commit (default: the lowest maximum of every member).
        // Not `version`: clap's own `--version` owns that argument id.
        #[arg(long, value_name = "CLUSTER_VERSION")]
        to: Option<u32>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum MemberCmd {
    /// The members, their kinds and addresses.
    List,
    /// Add a node (as a learner; promote it once it has caught up).
    Add {
        /// Add as a learner (the only way to add a node; voters come from `promote`).
        #[arg(long, required = true)]
        learner: bool,
        /// The new node's id.
        id: u64,
        /// Its address (`host:port`).
        addr: quorate_transport::PeerAddr,
    },
    /// Change the address a member is reached at (etcd's `member update`): through the log,
    /// so every member dials it there once applied. Restart the member listening there (its
    /// `listen`/`advertise`). Needs cluster version 2.
    Update {
        /// The member's id.
        id: u64,
        /// Its new peer address (`host:port`).
        #[arg(long)]
        peer: quorate_transport::PeerAddr,
    },
    /// Make a learner a voter.
    Promote {
        /// The learner's id.
        id: u64,
    },
    /// Remove a member.
    Remove {
        /// The member's id.
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum LeaderCmd {
    /// Hand leadership to another voter.
    Transfer {
        /// The new leader (default: the most caught-up voter).
        #[arg(long)]
        to: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum SnapshotCmd {
    /// Save a snapshot of the state machine. With FILE: streamed from the leader into FILE on
    /// this machine (written to FILE.part, fsynced, verified, then renamed; needs cluster
    /// version 2). Without FILE: written into the leader's own backup directory (a follower
    /// asked redirects to the leader); prints the path there, the index and the node.
    Save(SaveArgs),
    /// Create a NEW cluster member's data directory from a file written by `snapshot save`
    /// (offline, like `etcdutl snapshot restore`); run it for every member, then start them.
    Restore(snapshot::RestoreArgs),
    /// Verify a snapshot file offline (no cluster): its header, metadata and data checksums
    /// and its records; print its index, term, members, size, key count and hash (CRC-32 of
    /// the data). A damaged or truncated file is an error (exit 1) that says what is wrong.
    Status {
        /// The snapshot file (written by `quorate snapshot save`).
        file: PathBuf,
    },
}

/// `quorate snapshot save [FILE] [--progress] [--idle-timeout SECS]`.
#[derive(Debug, Args)]
pub(crate) struct SaveArgs {
    /// Where to write the snapshot on this machine (streamed from the leader). Omit to have the
    /// leader write it into its own backup directory.
    pub(crate) file: Option<PathBuf>,
    /// Print progress (bytes received of the total) on standard error even when it is not a
    /// terminal (on a terminal it is printed anyway).
    #[arg(long, requires = "file")]
    pub(crate) progress: bool,
    /// Give up when no byte (nor any progress of the leader writing the image) arrives for
    /// this many seconds. There is no limit on the whole save.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) idle_timeout: u64,
}

#[derive(Debug, Subcommand)]
pub(crate) enum CertsCmd {
    /// Write a local CA, node and client certificates, and node configurations for a local
    /// cluster (ports BASE-PORT.., data under DIR/data). For development only.
    Dev(CertsDevArgs),
    /// Issue one node or client certificate from an existing CA (its ca.crt and ca.key are only
    /// read): `certs issue node 4 --dir DIR`, `certs issue client app:write --dir DIR`. The
    /// cluster's name is the global `--cluster`.
    Issue(CertsIssueArgs),
    /// Revoke certificates: write the CA's revocation list (CRL) with the certificates it
    /// already lists plus CERT... and --serial; a new list when the file does not exist, an
    /// empty one with nothing to add. Give the file to every node (`tls.crls`); nodes re-read
    /// it within 2 s and close the revoked peers' and clients' connections.
    Revoke(CertsRevokeArgs),
}

/// Where an existing CA's files are (`certs issue`, `certs revoke`); they are only read.
#[derive(Debug, Args)]
pub(crate) struct CaArgs {
    /// The CA directory: its ca.crt and ca.key (DIR/certs also works, as `certs dev` writes).
    #[arg(long)]
    pub(crate) dir: PathBuf,
    /// The CA certificate (default: ca.crt in --dir). The first certificate of the file signs.
    #[arg(long)]
    pub(crate) ca_cert: Option<PathBuf>,
    /// The CA's private key (default: ca.key in --dir).
    #[arg(long)]
    pub(crate) ca_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct CertsRevokeArgs {
    /// Certificates to revoke (PEM files issued by this CA).
    pub(crate) certs: Vec<PathBuf>,
    /// A serial number to revoke, in hex as `openssl x509 -noout -serial` prints it (when the
    /// certificate's file is gone). Repeatable.
    #[arg(long, value_name = "HEX")]
    pub(crate) serial: Vec<String>,
    #[command(flatten)]
    pub(crate) ca: CaArgs,
    /// The revocation list to update or create (default: ca.crl in the CA directory, which
    /// `certs dev` configures every node with).
    #[arg(long, value_name = "FILE")]
    pub(crate) crl: Option<PathBuf>,
    /// Days until the list's next update (nodes keep using it after; other verifiers may not).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=398))]
    pub(crate) days: u64,
}

/// What `certs issue` issues a certificate for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum IssueKind {
    /// A cluster member: NAME is its node id.
    Node,
    /// A client: NAME is NAME[:ROLE], ROLE read, write or admin (default admin).
    Client,
}

#[derive(Debug, Args)]
pub(crate) struct CertsIssueArgs {
    /// `node` or `client`.
    #[arg(value_enum)]
    pub(crate) kind: IssueKind,
    /// The node id (`node`), or NAME[:ROLE] (`client`).
    pub(crate) name: String,
    #[command(flatten)]
    pub(crate) ca: CaArgs,
    /// Where to write node-ID.{crt,key} or client-NAME.{crt,key} (default: the CA directory).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// Days the certificate is valid (it must not outlive the CA).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=398))]
    pub(crate) days: u64,
    /// Overwrite an existing certificate and key of that name.
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CertsDevArgs {
    /// Where to write (certificates go to DIR/certs, configurations to DIR/node-N.toml). The
    /// cluster's name is the global `--cluster`.
    #[arg(long)]
    pub(crate) dir: PathBuf,
    /// How many nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub(crate) nodes: u64,
    /// Client certificates, comma-separated: NAME or NAME:ROLE, ROLE being read, write or admin
    /// (default admin).
    #[arg(long, default_value = "admin,writer:write,reader:read", value_delimiter = ',')]
    pub(crate) clients: Vec<String>,
    /// Client certificates that have already expired (valid from two hours ago to one hour
    /// ago), comma-separated NAME:ROLE: for tests and the attack suite (`cargo xtask attack`),
    /// never for use.
    #[arg(long, value_delimiter = ',')]
    pub(crate) expired_clients: Vec<String>,
    /// Days the node and client certificates are valid.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=398))]
    pub(crate) days: u64,
    /// Days the CA is valid (at least --days; `certs issue` can issue from it until then).
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u64).range(1..=3653))]
    pub(crate) ca_days: u64,
    /// Port of node 1; node N listens on BASE-PORT + N - 1 at 127.0.0.1.
    #[arg(long, default_value_t = 7001)]
    pub(crate) base_port: u16,
    /// Overwrite existing certificates and configurations.
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Concurrent clients, each with its own session and one operation in flight.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) clients: u32,
    /// Connections the clients share (client i uses connection i mod N, as a stream of it);
    /// default: one per client. A node takes 64 concurrent requests per connection, so fewer
    /// than clients/64 connections make clients wait for a stream.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) connections: Option<u32>,
    /// Bytes per written value.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(0..=1_048_576))]
    pub(crate) value_size: u32,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// Share of operations that are reads (0.0 to 1.0).
    #[arg(long, default_value_t = 0.5)]
    pub(crate) read_ratio: f64,
    /// Most operations in all (the run stops at whichever comes first).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub(crate) ops_max: u64,
    /// Distinct keys.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub(crate) keys: u64,
    /// Read level of the reads.
    #[arg(long, value_enum, default_value_t = Consistency::Linearizable)]
    pub(crate) consistency: Consistency,
}

/// Runs a parsed command line.
pub(crate) fn run(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Node(NodeCmd::Start(_)) | Command::Replay(_) | Command::Debug(_) | Command::Completions { .. }
            if cli.conn.output == output::Format::Json =>
        {
            Err(output::usage("this command has no JSON output; leave out -o json"))
        }
        Command::Node(NodeCmd::Start(args)) => node_start(args),
        Command::Node(NodeCmd::ForceNewCluster(args)) => recover::force_new_cluster(&args, cli.conn.output),
        Command::Certs(CertsCmd::Dev(args)) => certs::dev(&cli.conn.cluster, &args, cli.conn.output),
        Command::Certs(CertsCmd::Issue(args)) => certs::issue(&cli.conn.cluster, &args, cli.conn.output),
        Command::Certs(CertsCmd::Revoke(args)) => certs::revoke(&args, cli.conn.output),
        Command::Snapshot(SnapshotCmd::Restore(args)) => snapshot::restore(&args, cli.conn.output),
        Command::Snapshot(SnapshotCmd::Status { file }) => snapshot::status(&file, cli.conn.output),
        Command::Completions { shell } => {
            completions(shell, &mut std::io::stdout().lock())?;
            Ok(Outcome::Ok)
        }
        Command::Endpoint(EndpointCmd::Health) => block_on(endpoint::health(&cli.conn)),
        Command::Replay(args) => flight::replay(&args),
        Command::Debug(cmd) => flight::debug(&cli.conn, &cmd),
        Command::Kv(cmd) => block_on(kv::run(&cli.conn, cmd)),
        Command::Watch(args) => block_on(watch::run(&cli.conn, args)),
        Command::Lease(cmd) => block_on(lease::run(&cli.conn, cmd)),
        Command::Lock(args) => block_on(recipes::lock(&cli.conn, args)),
        Command::Elect(args) => block_on(recipes::elect(&cli.conn, args)),
        Command::Cluster(ClusterCmd::Status) => block_on(cluster::status(&cli.conn)),
        Command::Cluster(ClusterCmd::Finalize { to }) => block_on(cluster::finalize(&cli.conn, to)),
        Command::Member(cmd) => block_on(cluster::member(&cli.conn, cmd)),
        Command::Leader(LeaderCmd::Transfer { to }) => block_on(cluster::transfer(&cli.conn, to)),
        Command::Snapshot(SnapshotCmd::Save(args)) => match &args.file {
            Some(_) => block_on(snapshot::save_to_file(&cli.conn, &args)),
            None => block_on(cluster::snapshot_save(&cli.conn)),
        },
        Command::Top(args) => block_on(top::run(&cli.conn, &args, cli.conn.output)),
        Command::Bench(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(bench::run(&cli.conn, &args, cli.conn.output))
        }
    }
}

/// Writes the completion script of `shell` for the `quorate` command line.
pub(crate) fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    use clap::CommandFactory;
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "quorate", &mut buf);
    out.write_all(&buf)?;
    Ok(())
}

fn block_on<F: std::future::Future<Output = anyhow::Result<Outcome>>>(f: F) -> anyhow::Result<Outcome> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(f)
}

fn node_start(args: NodeStartArgs) -> anyhow::Result<Outcome> {
    use anyhow::Context;
    use quorate_node::config::{ConfigFlags, NodeConfig};
    let mut config = NodeConfig::load(&args.config).with_context(|| {
        format!(
            "cannot start the node; write a configuration with `quorate certs dev --dir DIR` or pass --config \
             (was {})",
            args.config.display()
        )
    })?;
    let mut flags = ConfigFlags::default();
    flags.id = args.id;
    flags.listen = args.listen;
    flags.data_dir = args.data_dir;
    flags.metrics_listen = args.metrics_listen;
    flags.join = args.join.then_some(true);
    config.apply_flags(&flags);
    config.validate().with_context(|| format!("the configuration in {} is not usable", args.config.display()))?;
    let id = config.id;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start tokio")?;
    rt.block_on(quorate_node::server::run(config)).with_context(|| format!("node {id} stopped with an error"))?;
    Ok(Outcome::Ok)
}

#[cfg(test)]
mod tests;
