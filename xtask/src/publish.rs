//! Ready for crates.io: the checks `cargo xtask release` runs on every publishable crate before
//! it packages them (docs/upgrades.md, "Ready for crates.io").
//!
//! * [`readme_links`]: a crate's README is shown on its crates.io page, where a relative link
//!   (`../../README.md`) leads nowhere; every link must be absolute (`https://…`, `mailto:`) or
//!   an anchor in the same page (`#…`).
//! * [`rust_version`]: every crate inherits `rust-version` from `[workspace.package]`, and the
//!   pinned toolchain (`rust-toolchain.toml`) is that version — so the toolchain every build and
//!   CI run uses is the oldest Rust the crates claim to support.
//! * [`minimal_versions`] (`cargo xtask minimal-versions`): the library crates type-check with
//!   every direct dependency at the lowest version `[workspace.dependencies]` allows.

use crate::run;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// A publishable crate: its package name and its directory.
#[derive(Debug, Clone)]
pub(crate) struct Crate {
    /// The package name.
    pub(crate) name: String,
    /// `crates/<dir>`.
    pub(crate) dir: PathBuf,
}

/// Every `crates/*/Cargo.toml` without `publish = false`, sorted by name.
pub(crate) fn publishable(repo: &Path) -> Result<Vec<Crate>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(repo.join("crates")).context("cannot list crates/")? {
        let dir = e?.path();
        let manifest = dir.join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else { continue };
        if text.lines().any(|l| l.replace(' ', "") == "publish=false") {
            continue;
        }
        let name = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("name = \"").and_then(|r| r.strip_suffix('"')))
            .with_context(|| format!("no package name in {}", manifest.display()))?;
        out.push(Crate { name: name.to_string(), dir });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The value of `key = "…"` in `[section]` of a TOML file's text (the simple one-line form).
fn toml_value(text: &str, section: &str, key: &str) -> Option<String> {
    let mut inside = false;
    for l in text.lines() {
        let t = l.trim();
        if t.starts_with('[') {
            inside = t == format!("[{section}]");
        } else if inside
            && let Some((k, v)) = t.split_once('=')
            && k.trim() == key
        {
            let v = v.trim();
            return Some(v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v).to_string());
        }
    }
    None
}

/// The link targets of a Markdown text that are not absolute (`scheme:…`) and not an anchor in
/// the same page (`#…`), with their line numbers. Inline links `[t](x)` and images `![t](x)`,
/// reference definitions `[t]: x`, and HTML `href="x"` / `src="x"`; fenced code blocks and
/// inline code spans are skipped.
pub(crate) fn relative_links(markdown: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut fenced = false;
    for (n, line) in markdown.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with("```") || t.starts_with("~~~") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Inline code spans out: `a](b)` in backticks is code, not a link.
        let mut text = String::with_capacity(line.len());
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                text.push_str(part);
            }
            text.push(' ');
        }
        let mut targets = Vec::new();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let end = after.find(')').unwrap_or(after.len());
            targets.push(after[..end].split_whitespace().next().unwrap_or("").to_string());
            rest = &after[end..];
        }
        let trimmed = text.trim_start();
        if trimmed.starts_with('[')
            && let Some(close) = trimmed.find("]:")
        {
            targets.push(trimmed[close + 2..].split_whitespace().next().unwrap_or("").to_string());
        }
        for attr in ["href=\"", "src=\""] {
            let mut rest = text.as_str();
            while let Some(at) = rest.find(attr) {
                let after = &rest[at + attr.len()..];
                let end = after.find('"').unwrap_or(after.len());
                targets.push(after[..end].to_string());
                rest = &after[end..];
            }
        }
        for target in targets {
            let target = target.trim_start_matches('<').trim_end_matches('>');
            if !is_absolute_or_anchor(target) {
                out.push((n + 1, target.to_string()));
            }
        }
    }
    out
}

/// `https://…`, `mailto:…` (any `scheme:` before a `/`), or `#anchor`.
fn is_absolute_or_anchor(target: &str) -> bool {
    if target.starts_with('#') {
        return true;
    }
    match target.split_once(':') {
        Some((scheme, _)) => {
            !scheme.is_empty()
                && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
                && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        }
        None => false,
    }
}

/// Fails on a relative link in the README of any publishable crate (the file its manifest's
/// `readme` names; `README.md` by default).
pub(crate) fn readme_links(repo: &Path) -> Result<()> {
    let mut bad = Vec::new();
    let crates = publishable(repo)?;
    for c in &crates {
        let manifest = std::fs::read_to_string(c.dir.join("Cargo.toml"))?;
        let readme = toml_value(&manifest, "package", "readme").unwrap_or_else(|| "README.md".to_string());
        if readme == "false" {
            continue;
        }
        let path = c.dir.join(&readme);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{}: its README {} cannot be read", c.name, path.display()))?;
        for (line, target) in relative_links(&text) {
            bad.push(format!("{}:{line}: `{target}`", path.strip_prefix(repo).unwrap_or(&path).display()));
        }
    }
    if !bad.is_empty() {
        bail!(
            "relative links in crate READMEs (they lead nowhere on crates.io; use the repository's \
             absolute URL):\n  {}",
            bad.join("\n  ")
        );
    }
    eprintln!("readme links: {} crate READMEs, every link absolute or an anchor", crates.len());
    Ok(())
}

/// Fails unless `[workspace.package] rust-version` is set, every crate under `crates/` and
/// `xtask/` inherits it (`rust-version.workspace = true`), and `rust-toolchain.toml` pins that
/// version (`1.95` or `1.95.0` for `rust-version = "1.95"`).
pub(crate) fn rust_version(repo: &Path) -> Result<String> {
    let root = std::fs::read_to_string(repo.join("Cargo.toml"))?;
    let Some(msrv) = toml_value(&root, "workspace.package", "rust-version") else {
        bail!("[workspace.package] has no rust-version")
    };
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(repo.join("crates"))?
        .flatten()
        .map(|e| e.path().join("Cargo.toml"))
        .filter(|p| p.exists())
        .collect();
    manifests.push(repo.join("xtask/Cargo.toml"));
    manifests.sort();
    let mut bad = Vec::new();
    for m in &manifests {
        let text = std::fs::read_to_string(m)?;
        let inherits = text.lines().any(|l| l.replace(' ', "") == "rust-version.workspace=true");
        if !inherits {
            bad.push(m.strip_prefix(repo).unwrap_or(m).display().to_string());
        }
    }
    if !bad.is_empty() {
        bail!("these manifests do not inherit the workspace's rust-version ({msrv}): {}", bad.join(", "));
    }
    let toolchain = std::fs::read_to_string(repo.join("rust-toolchain.toml")).context("no rust-toolchain.toml")?;
    let Some(channel) = toml_value(&toolchain, "toolchain", "channel") else {
        bail!("rust-toolchain.toml has no [toolchain] channel")
    };
    if !same_version(&channel, &msrv) {
        bail!(
            "rust-toolchain.toml pins {channel} but rust-version is {msrv}: the pinned toolchain must be the \
             oldest supported Rust, so that every build checks it"
        );
    }
    eprintln!("rust-version: {} manifests inherit {msrv}; rust-toolchain.toml pins {channel}", manifests.len());
    Ok(msrv)
}

/// `1.95` and `1.95.0` are the same version; `1.95.1` or `stable` is not `1.95`.
fn same_version(channel: &str, rust_version: &str) -> bool {
    let parts = |v: &str| -> Option<Vec<u64>> {
        let mut p: Vec<u64> = v.split('.').map(|x| x.parse().ok()).collect::<Option<_>>()?;
        while p.len() < 3 {
            p.push(0);
        }
        Some(p)
    };
    matches!((parts(channel), parts(rust_version)), (Some(a), Some(b)) if a == b)
}

/// The library crates the minimal-versions build covers, and the features it turns on: every
/// publishable crate except the two that link RocksDB (`quorate-storage`, `quorate-node`),
/// whose C++ build at another librocksdb-sys version would take ~20 minutes on its own.
const MINIMAL_CRATES: &[&str] = &[
    "quorate-log",
    "quorate-core",
    "quorate-check",
    "quorate-admission",
    "quorate-api",
    "quorate-config",
    "quorate-transport",
    "quorate-client",
    "quorate-telemetry",
    "quorate-runtime",
];
const MINIMAL_FEATURES: &str = "quorate-transport/dev-certs,quorate-telemetry/otlp,quorate-runtime/quic";

/// `cargo xtask minimal-versions`: copies the tracked tree (`git ls-files`) to
/// `$CARGO_TARGET_DIR/minimal-versions/src`, resolves it with
/// `cargo +nightly -Z direct-minimal-versions generate-lockfile` (every direct dependency at
/// the lowest version its requirement allows, the rest at the newest compatible), and
/// type-checks the library crates there with the pinned toolchain (`cargo check --locked
/// --lib`), in `$CARGO_TARGET_DIR/minimal-versions/target`.
pub(crate) fn minimal_versions(repo: &Path) -> Result<()> {
    let started = Instant::now();
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo.join("target"), PathBuf::from);
    let base = target.join("minimal-versions");
    let src = base.join("src");
    if src.exists() {
        std::fs::remove_dir_all(&src).with_context(|| format!("cannot clear {}", src.display()))?;
    }
    std::fs::create_dir_all(&src)?;
    let files = Command::new("git").current_dir(repo).args(["ls-files", "-z"]).output().context("git ls-files")?;
    if !files.status.success() {
        bail!("git ls-files failed in {}", repo.display());
    }
    for f in files.stdout.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        let rel = Path::new(std::str::from_utf8(f).context("a non-UTF-8 path")?);
        let (from, to) = (repo.join(rel), src.join(rel));
        if !from.is_file() {
            continue; // deleted in the work tree
        }
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(&from, &to).with_context(|| format!("cannot copy {}", from.display()))?;
    }
    run(Command::new("cargo").current_dir(&src).args([
        "+nightly",
        "-Z",
        "direct-minimal-versions",
        "generate-lockfile",
    ]))
    .context("nightly cargo could not resolve the minimal versions")?;
    // The pinned toolchain (rust-toolchain.toml in the copy), not `cargo` from the environment:
    // `CARGO` may point at the toolchain xtask itself was built with.
    let mut check = Command::new("cargo");
    check.current_dir(&src).env("CARGO_TARGET_DIR", base.join("target")).env_remove("RUSTUP_TOOLCHAIN");
    check.args(["check", "--locked", "--lib", "--features", MINIMAL_FEATURES]);
    for c in MINIMAL_CRATES {
        check.args(["-p", c]);
    }
    run(&mut check).context(
        "a library crate does not build with its direct dependencies at their lowest allowed versions: raise the \
         lower bound in [workspace.dependencies]",
    )?;
    eprintln!(
        "minimal-versions: {} library crates check with direct dependencies at their minimal versions ({:.0}s)",
        MINIMAL_CRATES.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_links_are_found_and_absolute_ones_pass() {
        let md = "# T\n\
                  Part of [Quorate](../../README.md) and [docs](https://example.invalid/q/blob/main/docs/a.md).\n\
                  See [below](#features), ![logo](img/logo.png) and <a href=\"docs/x.md\">x</a>.\n\
                  [ref]: ../CHANGELOG.md\n\
                  [ok]: https://crates.io/crates/quorate-core\n\
                  Mail [us](mailto:a@b.c). Code `v[..](x)` is not a link.\n\
                  ```rust\nlet a = b[0](c); // [x](y)\n```\n";
        let got = relative_links(md);
        let targets: Vec<&str> = got.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(targets, ["../../README.md", "img/logo.png", "docs/x.md", "../CHANGELOG.md"]);
        assert_eq!(got[0].0, 2);
        assert_eq!(got[3].0, 4);
    }

    #[test]
    fn every_crate_readme_in_this_repository_passes() {
        readme_links(&crate::root()).unwrap();
    }

    #[test]
    fn toolchain_and_rust_version_compare_as_versions() {
        assert!(same_version("1.95.0", "1.95"));
        assert!(same_version("1.95", "1.95.0"));
        assert!(!same_version("1.95.1", "1.95"));
        assert!(!same_version("stable", "1.95"));
        assert!(!same_version("1.96.0", "1.95"));
        assert_eq!(
            toml_value("[toolchain]\nchannel = \"1.95.0\"\n", "toolchain", "channel").as_deref(),
            Some("1.95.0")
        );
        assert_eq!(
            toml_value(
                "[workspace]\nx = 1\n[workspace.package]\nrust-version = \"1.95\"\n",
                "workspace.package",
                "rust-version"
            )
            .as_deref(),
            Some("1.95")
        );
    }

    #[test]
    fn this_repository_pins_its_rust_version() {
        assert_eq!(rust_version(&crate::root()).unwrap(), "1.95");
    }
}
