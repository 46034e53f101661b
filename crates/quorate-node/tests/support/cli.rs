//! Helpers of the tests that drive real `quorate` processes with the CLI: a `certs dev`
//! cluster on 127.0.0.1, the CLI with its environment, and openssl.

// Every test binary includes this file and uses a different part of it.
#![allow(dead_code)]

use super::procs::Nodes;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_quorate");

pub(crate) struct Env {
    pub(crate) dir: PathBuf,
    pub(crate) endpoints: String,
}

impl Env {
    pub(crate) fn cli(&self, args: &[&str]) -> Output {
        self.cli_stdin(args, None)
    }

    /// Runs `quorate ARGS`, with `stdin` as its standard input (none: empty).
    pub(crate) fn cli_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut child = Command::new(BIN)
            .args(args)
            .env("QUORATE_CERTS", self.dir.join("certs"))
            .env("QUORATE_CLUSTER", "e2e")
            .env("QUORATE_ENDPOINTS", &self.endpoints)
            .env("QUORATE_TIMEOUT", "10")
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(bytes) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(bytes).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// `quorate -o json ARGS`, which must succeed and print one JSON object.
    pub(crate) fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        let out = self.ok(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("quorate {args:?} printed no JSON ({e}): {out}"))
    }

    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "quorate {args:?} failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        stdout
    }
}

pub(crate) fn spawn_node(dir: &Path, id: u64) -> std::process::Child {
    let log = std::fs::File::create(dir.join(format!("node-{id}.log"))).unwrap();
    Command::new(BIN)
        .args(["node", "start", "--config"])
        .arg(dir.join(format!("node-{id}.toml")))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

pub(crate) fn start(dir: &Path) -> Nodes {
    Nodes((1..=3).map(|id| spawn_node(dir, id)).collect())
}

/// `certs dev` for three nodes at `base`.. and the environment to reach them.
pub(crate) fn dev_cluster(tmp: &Path, base: u16) -> Env {
    let dir = tmp.join("cluster");
    let env = Env {
        dir: dir.clone(),
        endpoints: (0..3).map(|i| format!("{}=127.0.0.1:{}", i + 1, base + i)).collect::<Vec<_>>().join(","),
    };
    let out = env.cli(&[
        "certs",
        "dev",
        "--dir",
        &dir.to_string_lossy(),
        "--cluster",
        "e2e",
        "--nodes",
        "3",
        "--base-port",
        &base.to_string(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    env
}

/// Waits (bounded) for the first write: it waits for an election.
pub(crate) fn first_write(env: &Env) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = env.cli(&["kv", "put", "greeting", "hello"]);
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "no write succeeded: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether `openssl` can be run here.
pub(crate) fn openssl_available() -> bool {
    Command::new("openssl").arg("version").output().is_ok_and(|o| o.status.success())
}

pub(crate) fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The docs/operations.md recipe: a client certificate issued by `openssl` from the cluster CA.
pub(crate) fn openssl_client(certs: &Path, cluster: &str, name: &str, role: &str) {
    std::fs::write(
        certs.join(format!("{name}.ext")),
        format!(
            "basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n\
             extendedKeyUsage = clientAuth\nsubjectAltName = URI:quorate://{cluster}/client/{name}?role={role}\n"
        ),
    )
    .unwrap();
    let key = format!("client-{name}.key");
    let csr = format!("{name}.csr");
    openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", &key], certs);
    openssl(&["req", "-new", "-key", &key, "-subj", &format!("/CN={name}"), "-out", &csr], certs);
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-sha256",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("client-{name}.crt"),
        ],
        certs,
    );
}
