//! The architecture's dependency rule, checked with `cargo tree`: the pure crates (log, core,
//! admission, check) never pull in an async runtime, a network or TLS stack, RocksDB or
//! OpenTelemetry; and the network crates' default features leave out the development CA
//! (`dev-certs`, rcgen), which a crates.io user enables only if they want it.

use anyhow::{Context, Result, bail};
use std::path::Path;

/// Crates that must stay pure (no I/O stack in their normal dependency tree).
const PURE: &[&str] =
    &["quorate-log", "quorate-core", "quorate-check", "quorate-admission", "quorate-api", "quorate-config"];

/// Crate names (prefixes) that must not appear below a pure crate.
const FORBIDDEN: &[&str] = &["tokio", "quinn", "rustls", "rocksdb", "librocksdb-sys", "opentelemetry", "mio"];

/// Crates whose default build must not compile the development CA (`quorate-transport`'s
/// feature `dev-certs`: rcgen). The node and the tests turn it on explicitly.
const NO_DEV_CERTS: &[&str] = &["quorate-transport", "quorate-client"];

/// Runs the check for every pure crate that exists in the workspace.
pub(crate) fn check(root: &Path) -> Result<()> {
    let mut checked = 0;
    for krate in PURE {
        if !root.join("crates").join(krate).join("Cargo.toml").exists() {
            continue;
        }
        let tree = normal_tree(root, krate)?;
        let bad = violations(&tree, FORBIDDEN);
        if !bad.is_empty() {
            bail!("dependency rule broken: {krate} depends on {}", bad.join(", "));
        }
        checked += 1;
    }
    if checked == 0 {
        bail!("dependency rule: no pure crate found under crates/ — is this the workspace root?");
    }
    eprintln!("deps: {checked} pure crates free of {}", FORBIDDEN.join(", "));
    for krate in NO_DEV_CERTS {
        let bad = violations(&normal_tree(root, krate)?, &["rcgen"]);
        if !bad.is_empty() {
            bail!(
                "{krate}'s default features compile the development CA ({}): `dev-certs` must stay opt-in",
                bad.join(", ")
            );
        }
    }
    eprintln!("deps: {} without the development CA (rcgen) in their default features", NO_DEV_CERTS.join(", "));
    Ok(())
}

/// `cargo tree -e normal` of `krate` alone, with its default features: one `name vX` a line.
fn normal_tree(root: &Path, krate: &str) -> Result<String> {
    let out = crate::cargo()
        .current_dir(root)
        .args(["tree", "--locked", "-e", "normal", "--prefix", "none", "--format", "{p}", "-p", krate])
        .output()
        .with_context(|| format!("could not run cargo tree for {krate}"))?;
    if !out.status.success() {
        bail!("cargo tree -p {krate} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8(out.stdout).context("cargo tree printed non-UTF-8")
}

/// The packages of `forbidden` (or `name-…` of one) named in `cargo tree --prefix none
/// --format {p}` output.
fn violations(tree: &str, forbidden: &[&str]) -> Vec<String> {
    let mut bad: Vec<String> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| forbidden.iter().any(|f| name == f || name.starts_with(&format!("{f}-"))))
        .map(str::to_owned)
        .collect();
    bad.sort();
    bad.dedup();
    bad
}

#[cfg(test)]
mod tests {
    use super::{FORBIDDEN, violations};

    #[test]
    fn finds_forbidden_crates_in_tree_output() {
        let tree = "quorate-core v0.1.0 (/x)\nquorate-log v0.1.0 (/y)\nserde v1.0.0\ntokio v1.40.0\ntokio-util v0.7.0\nrustls v0.23.0\n";
        assert_eq!(violations(tree, FORBIDDEN), ["rustls", "tokio", "tokio-util"]);
        assert_eq!(violations("quorate-transport v0.1.0 (/x)\nrcgen v0.14.10\n", &["rcgen"]), ["rcgen"]);
    }

    #[test]
    fn clean_tree_passes() {
        let tree = "quorate-core v0.1.0 (/x)\nserde v1.0.0\nthiserror v2.0.0\n";
        assert!(violations(tree, FORBIDDEN).is_empty());
    }
}
