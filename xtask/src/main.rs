//! `cargo xtask`: Quorate's automation. If `cargo xtask ci` passes locally, CI is green.
//!
//! Every cargo invocation made from here uses the `ci` profile (release with debug
//! assertions), so tests, benches and the demo share one build of RocksDB's C++.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

mod alerts;
mod attack;
mod bench_cluster;
mod bench_overload;
mod chaos;
mod cluster;
mod demo;
mod deps;
mod paths;
mod proc_cpu;
mod profile;
mod publish;
mod release;
mod upgrade;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  ci                         everything CI runs: fmt, clippy, tests, dependency rule, README links,
                             rust-version, bounded simulation
  sim [--seeds N] [--seed S] [--steps K] [--set NAME=VALUE]... [--verbose] [--hole NAME]
                             deterministic simulation of clusters; ends with one summary line
                             (docs/verification.md); --hole switches one of issue 16's holes back on
  sim --holes                evidence that each of issue 16's holes, switched back on, is caught
                             (simulator, model checker, core scenarios); fails if one is not
  demo [--smoke]             the main job: a real 3-node cluster on 127.0.0.1; writes, kills the leader
                             (SIGKILL), checks every acknowledged write, restarts it; --smoke: stop and
                             print a verdict instead of running until Ctrl-C
  attack [--only NAMES] [--seed S] [--seconds N] [--rounds R] [--ci]   hostile clients against a 3-node cluster, a verdict per attack
  chaos [--nodes 3|5] [--duration S] [--seed S] [--faults LIST] [--workload mixed|hot-key] [--reads linearizable|lease]
        [--principals per-client|shared] [--target leader|any] [--hold-ms LO-HI]
                             fault testing of a real cluster with checked histories and a per-fault verdict;
                             also `chaos failover`, `chaos regress [NAME|list]`, `chaos ci`, `chaos soak`
                             (see docs/chaos.md)
  model-check [--quick | --quick-reconfig | --quick-learner | --quick-lease | --full] [ARGS]
                             exhaustive exploration of the real core at small bounds
  fuzz [--seconds N]         bounded run of every fuzz target (installs cargo-fuzz if missing)
  mutants [--shard K/N] [--file PATH]... [--timeout S] [--with-sim]
                             mutation testing of quorate-core with cargo-mutants (installed if
                             missing), in a copy of the tree; not part of ci (docs/verification.md)
  bench <api|core|storage|transport>
                             benchmarks; record the figures in docs/benchmarks.md
  bench cluster [--duration S] [--clients 1,16,64,256] [--connections N] [--workloads LIST] [--skip-etcd]
                             a real 3-node cluster (fsync, mTLS) under `quorate bench`, then etcd 3.4
                             in the same run; writes the comparison to docs/benchmarks.md.
                             --workloads (default `put`): put[:BYTES] puts only, mixed[:BYTES] 50 %
                             linearizable gets + 50 % puts (etcd: two load generators at once), values
                             of BYTES (default 256); e.g. `--workloads put,mixed,put:4096`
  bench overload [--secs N] [--multiples 0.5,1,2,5]
                             goodput and p99 against offered load, admission on and off (one node)
  profile [--clients N] [--value-size BYTES] [--read-ratio R] [--duration S] [--record-from S] [--record-for S]
          [--node leader|1|2|3] [--out DIR]
                             a flame graph of one node (the leader by default) of the bench's cluster
                             under `quorate bench`: perf over the middle half of the run (or the window
                             given), folded stacks, flame.svg and the top functions (needs perf;
                             docs/benchmarks.md)
  alerts [--live]            docs/alerts.yml evaluated by promtool against docs/alerts.test.yml, and the
                             scrape configuration for machines checked (unpacks Debian's promtool if
                             missing); --live: a real Prometheus over a real 3-node cluster, every
                             node killed, QuorateQuorumLost must fire (about 1.5 minutes)
  deps                       check the architecture's dependency rule with cargo tree (and that
                             quorate-transport's default features leave out `dev-certs`)
  release <version> [--dry-run] [--repo DIR]
                             cut a release: clean tree, green ci, semver checks, bump, changelog,
                             ready for crates.io (README links, rust-version, minimal versions,
                             `cargo publish --dry-run` in dependency order), package and build every
                             crate, record it in releases.toml, tag (docs/upgrades.md)
  minimal-versions           the library crates (not RocksDB's) checked with their direct
                             dependencies at the lowest versions [workspace.dependencies] allows
                             (nightly resolver, pinned toolchain; a scratch copy of the tree)
  upgrade-check [--from <version>] [--seed S] [--step-seconds N]
                             rolling upgrade from a recorded release to this tree on a real 3-node
                             cluster under checked load: upgrade, roll back, upgrade, finalize
  setup                      find libclang for RocksDB (LIBCLANG_PATH, llvm-config, common paths);
                             only on Debian as root, install it with apt when it is missing
";

/// The cargo profile used for everything: release speed with debug assertions.
pub(crate) const PROFILE: &str = "ci";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r),
        None => {
            eprint!("{USAGE}");
            bail!("no command given");
        }
    };
    if rest.iter().any(|a| a == "--help" || a == "-h") {
        // Every command answers `--help` (anywhere after it) with its own lines of the usage.
        return match usage_of(cmd) {
            Some(u) => {
                print!("usage: cargo xtask {cmd} ...\n\n{u}");
                Ok(())
            }
            None => {
                eprint!("{USAGE}");
                bail!("unknown command `{cmd}`")
            }
        };
    }
    match cmd {
        "ci" => ci(rest),
        "sim" => sim(rest),
        "demo" => demo::demo(rest),
        "chaos" => chaos::chaos(rest),
        "attack" => attack::attack(rest),
        "bench" => bench(rest),
        "profile" => profile::profile(rest),
        "model-check" => model_check(rest),
        "fuzz" => fuzz(rest),
        "mutants" => mutants(rest),
        "deps" => deps::check(&root()),
        "alerts" => alerts::alerts(rest),
        "setup" => setup(),
        "release" => release::release(rest),
        "minimal-versions" => publish::minimal_versions(&root()),
        "upgrade-check" => upgrade::upgrade_check(rest),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        other => {
            eprint!("{USAGE}");
            bail!("unknown command `{other}`")
        }
    }
}

/// The lines of [`USAGE`] about `cmd`: each line that names it and the indented lines that
/// continue it (`None`: no such command).
fn usage_of(cmd: &str) -> Option<String> {
    let mut out = String::new();
    let mut inside = false;
    for line in USAGE.lines() {
        if let Some(rest) = line.strip_prefix("  ").filter(|r| !r.starts_with(' ')) {
            inside = rest == cmd || rest.starts_with(&format!("{cmd} "));
        } else if !line.starts_with("   ") {
            inside = false;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The workspace root (the parent of this crate's directory). The directory `cargo run` and
/// `cargo test` name at run time comes first: a binary built in another checkout of the same
/// sources (a shared target directory) would otherwise work on that checkout's files.
pub(crate) fn root() -> PathBuf {
    let here = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .filter(|d| d.file_name().is_some_and(|n| n == "xtask") && d.join("Cargo.toml").is_file())
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    here.parent().expect("xtask lives one level below the workspace root").to_path_buf()
}

/// Runs a command in the workspace root, echoing it, failing on a non-zero exit.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    if cmd.get_current_dir().is_none() {
        cmd.current_dir(root());
    }
    eprintln!("$ {}", show(cmd));
    let started = Instant::now();
    let status = cmd.status().with_context(|| format!("could not start `{}`", show(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", show(cmd));
    }
    eprintln!("  ({:.1}s)", started.elapsed().as_secs_f64());
    Ok(())
}

pub(crate) fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

pub(crate) fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Directories where a libclang is commonly installed, in order (Debian and Ubuntu's
/// versioned LLVM directories come first, newest first; then multiarch, Fedora/RHEL, `/usr/local`,
/// Homebrew and Xcode's command line tools).
fn libclang_candidates() -> Vec<PathBuf> {
    let mut llvm: Vec<PathBuf> = ["/usr/lib", "/usr/lib64"]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .filter(|d| d.file_name().to_string_lossy().starts_with("llvm"))
        .map(|d| d.path().join("lib"))
        .collect();
    // `llvm-19` before `llvm-14`: by the number after the dash.
    let version = |p: &PathBuf| -> u32 {
        p.parent()
            .and_then(|d| d.file_name())
            .and_then(|n| n.to_string_lossy().rsplit('-').next().and_then(|v| v.parse().ok()))
            .unwrap_or(0)
    };
    llvm.sort_by_key(|p| std::cmp::Reverse(version(p)));
    llvm.extend(
        [
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
            "/usr/lib64",
            "/usr/lib",
            "/usr/local/lib",
            "/usr/local/llvm/lib",
            "/opt/homebrew/opt/llvm/lib",
            "/usr/local/opt/llvm/lib",
            "/Library/Developer/CommandLineTools/usr/lib",
        ]
        .map(PathBuf::from),
    );
    llvm
}

/// Whether `dir` holds a libclang shared library (`libclang.so`, `libclang.so.18`,
/// `libclang-18.so`, `libclang.dylib`).
fn has_libclang(dir: &Path) -> bool {
    std::fs::read_dir(dir).into_iter().flatten().flatten().any(|e| {
        let n = e.file_name().to_string_lossy().into_owned();
        n.starts_with("libclang")
            && (n.contains(".so") || n.ends_with(".dylib"))
            && !n.starts_with("libclang_rt")
            && !n.starts_with("libclang-cpp")
            && !n.starts_with("libclangBasic")
    })
}

/// Finds libclang: `LIBCLANG_PATH` (a directory, or the library file itself), then
/// `llvm-config --libdir`, then `candidates`. `Err` names every place looked at.
fn find_libclang(
    env_path: Option<&str>,
    llvm_config_libdir: Option<PathBuf>,
    candidates: &[PathBuf],
) -> std::result::Result<PathBuf, Vec<PathBuf>> {
    let mut looked = Vec::new();
    if let Some(p) = env_path.filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        let dir = if p.is_file() { p.parent().map(Path::to_path_buf).unwrap_or_default() } else { p };
        if has_libclang(&dir) {
            return Ok(dir);
        }
        looked.push(dir);
    }
    for dir in llvm_config_libdir.into_iter().chain(candidates.iter().cloned()) {
        if has_libclang(&dir) {
            return Ok(dir);
        }
        looked.push(dir);
    }
    Err(looked)
}

/// `llvm-config --libdir` (a versioned `llvm-config-N` is not guessed: set `LIBCLANG_PATH`).
fn llvm_config_libdir() -> Option<PathBuf> {
    let out = Command::new("llvm-config").arg("--libdir").output().ok()?;
    let dir = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !dir.trim().is_empty()).then(|| PathBuf::from(dir.trim()))
}

/// Makes sure libclang (bindgen, for RocksDB) can be found: `LIBCLANG_PATH`,
/// `llvm-config --libdir`, common install paths; only when none has it, and only on Debian or
/// Ubuntu as root, installs `libclang-dev` with apt. Elsewhere it stops with what to do.
fn setup() -> Result<()> {
    let env_path = std::env::var("LIBCLANG_PATH").ok();
    let found = find_libclang(env_path.as_deref(), llvm_config_libdir(), &libclang_candidates());
    let looked = match found {
        Ok(dir) => {
            // Not exported as LIBCLANG_PATH: bindgen (clang-sys) searches the same places, and
            // a changed variable would rebuild RocksDB's bindings.
            eprintln!("setup: libclang found in {}", dir.display());
            return Ok(());
        }
        Err(looked) => looked,
    };
    let debian = Path::new("/etc/debian_version").exists();
    let root_user = Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
    if !debian || !root_user {
        let looked: Vec<String> = looked.iter().map(|p| p.display().to_string()).collect();
        bail!(
            "libclang (needed by bindgen to build RocksDB) was not found in LIBCLANG_PATH, `llvm-config --libdir` \
             or {}; install clang's development files (Debian/Ubuntu: `apt-get install libclang-dev`, Fedora: \
             `dnf install clang-devel`, macOS: `brew install llvm`) or set LIBCLANG_PATH to the directory \
             holding libclang, and run again",
            looked.join(", ")
        );
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get").args(["install", "-y", "-qq", "libclang-dev"]).env("DEBIAN_FRONTEND", "noninteractive"))
}

fn ci(args: &[String]) -> Result<()> {
    if let Some(a) = args.first() {
        bail!("`ci` takes no arguments, got `{a}`");
    }
    let started = Instant::now();
    setup()?;
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--profile",
        PROFILE,
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo().args(["nextest", "run", "--workspace", "--locked", "--cargo-profile", PROFILE, "--no-fail-fast"]))?;
    run(cargo().args(["test", "--workspace", "--doc", "--locked", "--profile", PROFILE]))?;
    // quorate-runtime's adapters (features `rocksdb`, `quic`): their clippy, the RocksDB restart
    // test and the three-process counter example. With quorate-node in the package set so
    // RocksDB keeps the features of the workspace build; only the runtime's targets are named.
    let runtime_targets =
        ["--lib", "--example", "counter", "--example", "lock", "--test", "rocks", "--test", "examples"];
    let runtime_features =
        ["-p", "quorate-node", "-p", "quorate-runtime", "--features", "quorate-runtime/rocksdb,quorate-runtime/quic"];
    run(cargo()
        .args(["clippy", "--locked", "--profile", PROFILE])
        .args(runtime_features)
        .args(runtime_targets)
        .args(["--", "-D", "warnings"]))?;
    // The examples test runs the example binaries from `target/<profile>/examples`: build them
    // first (a test-target selection does not build them, and nextest builds an `--example` as
    // a test harness in `deps`).
    run(cargo().args(["build", "--locked", "--profile", PROFILE]).args(runtime_features).args([
        "--example",
        "counter",
        "--example",
        "lock",
    ]))?;
    run(cargo()
        .args(["nextest", "run", "--locked", "--cargo-profile", PROFILE, "--no-fail-fast"])
        .args(runtime_features)
        .args(["--test", "rocks", "--test", "examples"]))?;
    // ENOSPC from a real (tmpfs) file system: ignored by default because it mounts in a
    // private mount namespace (CAP_SYS_ADMIN); CI and the README's command run as root. Run
    // with quorate-node in the package set so RocksDB keeps the features of the workspace build.
    run(cargo().args([
        "nextest",
        "run",
        "--locked",
        "--cargo-profile",
        PROFILE,
        "-p",
        "quorate-storage",
        "-p",
        "quorate-node",
        "--run-ignored",
        "only",
        "-E",
        "test(=enospc_on_a_real_file_system_is_retried_and_recovers)",
    ]))?;
    deps::check(&root())?;
    publish::readme_links(&root())?;
    publish::rust_version(&root())?;
    paths::check(&root())?;
    alerts::alerts(&["--live".into()])?;
    demo::demo(&["--smoke".into()])?;
    chaos::chaos(&["ci".into()])?;
    // The hostile-client suite's slice, every attack (about 4 minutes): the paced client's 5
    // attacked windows of 1 s between 6 unloaded ones, then the saturating client's 2 between
    // 3. Every verdict column fails the run — nodes up, no election, RSS, the checked history,
    // each attack's own check, and the paced client's goodput: the attacked windows together
    // serve at least 90 % of the share of its offered operations that the unloaded windows
    // around them served, no attacked window under 50 %, no unloaded one under half the
    // median (it offers half the cluster's measured capacity, so the figure measures denial
    // of service, not the attacker's own CPU on the shared machine; docs/security.md). The
    // saturating client's share is printed, not bound.
    attack::attack(&["--ci".into()])?;
    sim(&["--seeds".into(), "500".into()])?;
    sim(&["--holes".into()])?;
    model_check(&["--quick".into()])?;
    model_check(&["--quick-reconfig".into()])?;
    model_check(&["--quick-learner".into()])?;
    model_check(&["--quick-lease".into()])?;
    // Seven targets: 10 s each keeps the step near a minute and a half after the build.
    fuzz(&["--seconds".into(), "10".into()])?;
    eprintln!("ci: all steps passed in {:.0}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// `cargo xtask sim [ARGS]`: `quorate-sim` with ARGS. With `--hole NAME` or `--holes` it is
/// built with the feature `reintroduce-holes` (issue 16's holes switched back on; only
/// quorate-core and quorate-check are rebuilt for it); `--holes` also runs quorate-core's
/// scenario tests with each hole switched on (`tests/holes_reintroduced.rs`), the evidence
/// for the hole the simulator does not reach, and the model checker's presets that reach a
/// hole (`--quick-learner --hole self-vote-sends-early`).
fn sim(args: &[String]) -> Result<()> {
    let holes = args.iter().any(|a| a == "--hole" || a == "--holes");
    let mut cmd = cargo();
    cmd.args(["run", "--quiet", "--locked", "--profile", PROFILE, "-p", "quorate-check"]);
    if holes {
        cmd.args(["--features", "reintroduce-holes"]);
    }
    run(cmd.args(["--bin", "quorate-sim", "--"]).args(args))?;
    if args.iter().any(|a| a == "--holes") {
        // The model checker's state space reaches hole 1 (one voter and a learner); it must
        // find it. Holes 2–4 lie beyond its bounds (docs/verification.md).
        model_must_catch(&["--quick-learner", "--hole", "self-vote-sends-early"])?;
        run(cargo().args([
            "nextest",
            "run",
            "--locked",
            "--cargo-profile",
            PROFILE,
            "-p",
            "quorate-core",
            "--features",
            "danger-reintroduce-holes",
            "-E",
            "binary(holes_reintroduced)",
        ]))?;
    }
    Ok(())
}

/// Runs `quorate-model ARGS` built with the holes feature and requires it to report a
/// violation (exit status 1 and a `result: VIOLATION` line).
fn model_must_catch(args: &[&str]) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["run", "--quiet", "--locked", "--profile", PROFILE, "-p", "quorate-check", "--features"]);
    cmd.args(["reintroduce-holes", "--bin", "quorate-model", "--"]).args(args).current_dir(root());
    eprintln!("$ {} (must report a violation)", show(&cmd));
    let out = cmd.output().with_context(|| format!("could not start `{}`", show(&cmd)))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout.lines().find(|l| l.starts_with("model-check:")).unwrap_or("");
    eprintln!("  {summary}");
    if out.status.code() != Some(1) || !summary.contains("result: VIOLATION") {
        bail!(
            "`{}` did not catch the re-introduced hole ({}): {stdout}{}",
            show(&cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn model_check(args: &[String]) -> Result<()> {
    run(cargo()
        .args([
            "run",
            "--quiet",
            "--locked",
            "--profile",
            PROFILE,
            "-p",
            "quorate-check",
            "--bin",
            "quorate-model",
            "--",
        ])
        .args(args))
}

/// Fuzz targets and the crate directory that holds each (decoders live in crates that do not
/// link RocksDB, so a sanitizer build stays small).
const FUZZ_TARGETS: &[(&str, &str)] = &[
    ("fuzz", "frame_decode"),
    ("fuzz", "request_decode"),
    ("fuzz", "config_decode"),
    ("fuzz", "record_decode"),
    ("fuzz", "snapshot_decode"),
    ("fuzz", "flight_decode"),
    ("fuzz", "der_decode"),
];

fn fuzz(args: &[String]) -> Result<()> {
    let seconds: u64 = match args {
        [] => 20,
        [flag, n] if flag == "--seconds" => {
            n.parse().with_context(|| format!("--seconds takes a whole number, got `{n}`"))?
        }
        _ => bail!("usage: cargo xtask fuzz [--seconds N]"),
    };
    let have = Command::new("cargo").args(["+nightly", "fuzz", "--version"]).output().is_ok_and(|o| o.status.success());
    if !have {
        run(cargo().args(["install", "--locked", "cargo-fuzz"]))?;
    }
    // One sanitizer build of every target first (they share their dependencies), then a
    // bounded run of each.
    let mut built = std::collections::BTreeSet::new();
    for (dir, _) in FUZZ_TARGETS {
        if built.insert(*dir) {
            run(Command::new("cargo")
                .env_remove("CARGO_TARGET_DIR")
                .current_dir(root().join(dir))
                .args(["+nightly", "fuzz", "build"]))?;
        }
    }
    for (dir, target) in FUZZ_TARGETS {
        let fuzz_dir = root().join(dir);
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        // cargo-fuzz keeps its own target directory under the fuzz crate. The working corpus
        // (not checked in) comes first, so new inputs land there; the checked-in inputs that
        // once failed (`fuzz/regressions/<target>/`) are replayed by every run.
        let mut cmd = Command::new("cargo");
        cmd.env_remove("CARGO_TARGET_DIR").current_dir(&fuzz_dir).args(["+nightly", "fuzz", "run", target]);
        cmd.arg(&corpus);
        let regressions = fuzz_dir.join("regressions").join(target);
        if regressions.is_dir() {
            cmd.arg(&regressions);
        }
        run(cmd.args(["--", &format!("-max_total_time={seconds}"), "-rss_limit_mb=2048"]))?;
    }
    Ok(())
}

/// `cargo xtask mutants`: mutation testing of quorate-core. cargo-mutants (installed from
/// crates.io when missing) builds each mutant in a copy of the tree (never in place), under
/// its own target directory, and runs quorate-core's tests on it with nextest (with
/// `--with-sim`, also the simulator's seed slices of quorate-check, which rebuilds that crate
/// for every mutant). Bounded: a per-mutant test timeout, and `--shard K/N` (round robin) and
/// `--file PATH` to run a part of the mutants on a shared machine. The results go to
/// `target/mutants/mutants.out` (`caught.txt`, `missed.txt`, `timeout.txt`, `unviable.txt`).
fn mutants(args: &[String]) -> Result<()> {
    let usage = "usage: cargo xtask mutants [--shard K/N] [--file PATH]... [--timeout S] [--with-sim]";
    let mut shard = None;
    let mut files = Vec::new();
    let mut timeout: u64 = 120;
    let mut with_sim = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--shard" => shard = Some(it.next().context(usage)?.clone()),
            "--file" => files.push(it.next().context(usage)?.clone()),
            "--timeout" => {
                let v = it.next().context(usage)?;
                timeout = v.parse().with_context(|| format!("--timeout takes whole seconds, got `{v}`"))?;
            }
            "--with-sim" => with_sim = true,
            other => bail!("unknown argument `{other}`\n{usage}"),
        }
    }
    let have = Command::new("cargo").args(["mutants", "--version"]).output().is_ok_and(|o| o.status.success());
    if !have {
        run(cargo().args(["install", "--locked", "cargo-mutants"]))?;
    }
    let out = root().join("target").join("mutants");
    std::fs::create_dir_all(&out)?;
    let mut cmd = Command::new("cargo");
    // Each copy builds under its own target directory: a mutated core must never land in the
    // shared one.
    cmd.env_remove("CARGO_TARGET_DIR");
    // With the holes feature, so that the scenarios of `tests/holes_reintroduced.rs` run too
    // and the switches' own code is tested (a normal build compiles it out).
    cmd.args(["mutants", "-p", "quorate-core", "--test-tool", "nextest", "--profile", PROFILE, "--jobs", "1"]);
    cmd.args(["--features", "quorate-core/danger-reintroduce-holes"]);
    cmd.args(["--timeout", &timeout.to_string(), "--build-timeout", "900", "--no-shuffle"]);
    cmd.arg("--output").arg(&out);
    if let Some(s) = &shard {
        cmd.args(["--shard", s, "--sharding", "round-robin"]);
    }
    for f in &files {
        cmd.args(["--file", f]);
    }
    if with_sim {
        // The core's own tests and the simulator's slices over seeds (a few seconds each).
        cmd.args(["--test-package", "quorate-core", "--test-package", "quorate-check"]);
        cmd.args(["--", "-E", "package(quorate-core) | (package(quorate-check) & binary(sim) & test(/seeds/))"]);
    } else {
        cmd.args(["--test-package", "quorate-core"]);
    }
    // cargo-mutants exits non-zero when a mutant survives: that is a finding to read in
    // `missed.txt`, not a failure of this command.
    eprintln!("$ {}", show(&cmd));
    let status = cmd.current_dir(root()).status().context("could not start cargo mutants")?;
    eprintln!("mutants: cargo-mutants exited with {status}; results in {}", out.join("mutants.out").display());
    for name in ["caught.txt", "missed.txt", "timeout.txt", "unviable.txt"] {
        let n = std::fs::read_to_string(out.join("mutants.out").join(name)).map_or(0, |s| s.lines().count());
        eprintln!("  {name}: {n}");
    }
    match status.code() {
        // 0: every mutant caught; 2: some missed; 3: some timed out.
        Some(0 | 2 | 3) => Ok(()),
        _ => bail!("cargo mutants failed ({status})"),
    }
}

/// `cargo xtask bench NAME`: each benchmark is a `harness = false` bench target that prints
/// its figures; this table says where each one lives.
fn bench(args: &[String]) -> Result<()> {
    const BENCHES: &[(&str, &str, &str)] = &[
        ("api", "quorate-api", "codec"),
        ("core", "quorate-core", "core"),
        ("storage", "quorate-storage", "storage"),
        ("transport", "quorate-transport", "transport"),
    ];
    let Some((name, rest)) = args.split_first() else {
        bail!("usage: cargo xtask bench <{}|cluster>", BENCHES.iter().map(|b| b.0).collect::<Vec<_>>().join("|"));
    };
    if name == "cluster" {
        return bench_cluster::bench_cluster(rest);
    }
    if name == "overload" {
        return bench_overload::bench_overload(rest);
    }
    let Some((_, package, target)) = BENCHES.iter().find(|b| b.0 == name) else {
        bail!("unknown bench `{name}`; known: {}", BENCHES.iter().map(|b| b.0).collect::<Vec<_>>().join(", "));
    };
    run(cargo().args(["bench", "--locked", "--profile", PROFILE, "-p", package, "--bench", target, "--"]).args(rest))
}

#[cfg(test)]
mod libclang_tests {
    use super::*;

    #[test]
    fn libclang_is_found_through_the_env_then_llvm_config_then_common_paths() {
        let base = std::env::temp_dir().join(format!("xtask-libclang-{}", std::process::id()));
        let (env_dir, llvm_dir, common, decoy) =
            (base.join("env"), base.join("llvm"), base.join("common"), base.join("decoy"));
        for d in [&env_dir, &llvm_dir, &common, &decoy] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(env_dir.join("libclang.so.18"), b"").expect("write");
        std::fs::write(llvm_dir.join("libclang-17.so"), b"").expect("write");
        std::fs::write(common.join("libclang.dylib"), b"").expect("write");
        // Other clang libraries are not libclang.
        std::fs::write(decoy.join("libclang-cpp.so.18"), b"").expect("write");
        std::fs::write(decoy.join("libclang_rt.asan.so"), b"").expect("write");
        let all = [decoy.clone(), common.clone()];

        let env = env_dir.to_str().expect("utf-8");
        assert_eq!(find_libclang(Some(env), Some(llvm_dir.clone()), &all), Ok(env_dir.clone()));
        // LIBCLANG_PATH naming the file itself.
        let file = env_dir.join("libclang.so.18");
        assert_eq!(find_libclang(file.to_str(), None, &[]), Ok(env_dir.clone()));
        // No (or an empty) LIBCLANG_PATH: llvm-config's directory, then the common paths in order.
        assert_eq!(find_libclang(None, Some(llvm_dir.clone()), &all), Ok(llvm_dir.clone()));
        assert_eq!(find_libclang(Some(""), None, &all), Ok(common.clone()));
        // Nowhere: every place looked at is named.
        let missing = base.join("missing");
        assert_eq!(
            find_libclang(missing.to_str(), Some(decoy.clone()), std::slice::from_ref(&decoy)),
            Err(vec![missing, decoy.clone(), decoy])
        );
        std::fs::remove_dir_all(&base).expect("cleanup");
    }

    #[test]
    fn usage_of_a_command_is_its_own_lines() {
        let sim = usage_of("sim").expect("sim");
        assert!(sim.contains("sim --holes") && sim.contains("--hole NAME") && !sim.contains("demo"), "{sim}");
        assert!(usage_of("bench").expect("bench").contains("bench overload"));
        assert!(usage_of("setup").expect("setup").contains("libclang"));
        assert_eq!(usage_of("nope"), None);
    }
}
