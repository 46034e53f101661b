//! `cargo xtask release <version> [--dry-run] [--repo DIR] [--no-ci]`: cuts a release.
//!
//! Steps, in order (the first failure stops the run):
//! 1. the work tree is clean (`git status --porcelain` prints nothing);
//! 2. `cargo xtask ci` passes in that tree;
//! 3. `cargo semver-checks` against the previous recorded release for every publishable crate
//!    (installed with `cargo install --locked` when missing; skipped when there is no previous
//!    release);
//! 4. the workspace version is bumped (`[workspace.package]` and the `version = ` of every
//!    workspace crate in `[workspace.dependencies]`), and `Cargo.lock` follows;
//! 5. `CHANGELOG.md` gets a section with the commits since the previous release;
//! 6. ready for crates.io (xtask/src/publish.rs): no relative link in a crate's README; every
//!    crate inherits `rust-version` and `rust-toolchain.toml` pins it; the library crates check
//!    with their direct dependencies at their minimal versions (`cargo xtask minimal-versions`);
//!    `cargo publish --dry-run --no-verify` of every publishable crate in one invocation (cargo
//!    orders them by dependency and resolves each against crates.io with the siblings before it
//!    overlaid, as they would be once published; the order is printed); then every crate is
//!    packaged (`cargo package --no-verify`), each `.crate` unpacked into a scratch workspace
//!    that resolves the sibling crates through `[patch.crates-io]` (as crates.io would serve
//!    them) and built there with the `ci` profile in the shared target directory — this build
//!    is the verification that `--no-verify` skips: cargo's own would build every crate with
//!    the dev profile and recompile RocksDB's C++;
//! 7. the release (version, commit, date, tag) is appended to `releases.toml` — tags may not
//!    travel with a clone, this file does;
//! 8. a commit `release X` with those files, and an annotated tag `vX` on it.
//!
//! `--dry-run` runs the checks (1–3, 6) and prints what 4, 5, 7 and 8 would write without
//! writing it. `--repo DIR` releases another work tree of the repository (e.g. a `git worktree`
//! of the commit to release); `--no-ci` skips step 2 and is accepted with `--dry-run` only.

use crate::{PROFILE, cargo, run};
use anyhow::{Context, Result, bail};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The tracked file that records every release.
pub(crate) const RELEASES_FILE: &str = "releases.toml";

/// One recorded release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Release {
    /// `MAJOR.MINOR.PATCH`.
    pub(crate) version: String,
    /// The commit that was tested and released (full hash).
    pub(crate) commit: String,
    /// UTC date and time of the release.
    pub(crate) date: String,
    /// The git tag created for it.
    pub(crate) tag: String,
}

/// Reads `releases.toml` (a list of `[[release]]` tables with string values).
pub(crate) fn read_releases(repo: &Path) -> Result<Vec<Release>> {
    let path = repo.join(RELEASES_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    parse_releases(&text).with_context(|| format!("in {}", path.display()))
}

fn parse_releases(text: &str) -> Result<Vec<Release>> {
    let mut out = Vec::new();
    let mut cur: Option<[Option<String>; 4]> = None;
    let finish = |cur: Option<[Option<String>; 4]>, out: &mut Vec<Release>| -> Result<()> {
        if let Some([Some(version), Some(commit), Some(date), Some(tag)]) = cur {
            out.push(Release { version, commit, date, tag });
        } else if cur.is_some() {
            bail!("a [[release]] table lacks one of version, commit, date, tag");
        }
        Ok(())
    };
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line == "[[release]]" {
            finish(cur.take(), &mut out)?;
            cur = Some([None, None, None, None]);
            continue;
        }
        let Some((k, v)) = line.split_once('=') else { bail!("line {}: expected `key = \"value\"`", n + 1) };
        let v = v.trim();
        let Some(v) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
            bail!("line {}: the value must be a quoted string", n + 1)
        };
        let Some(t) = cur.as_mut() else { bail!("line {}: a key outside a [[release]] table", n + 1) };
        let slot = match k.trim() {
            "version" => 0,
            "commit" => 1,
            "date" => 2,
            "tag" => 3,
            other => bail!("line {}: unknown key `{other}`", n + 1),
        };
        t[slot] = Some(v.to_string());
    }
    finish(cur, &mut out)?;
    Ok(out)
}

fn render_release(r: &Release) -> String {
    format!(
        "[[release]]\nversion = \"{}\"\ncommit = \"{}\"\ndate = \"{}\"\ntag = \"{}\"\n",
        r.version, r.commit, r.date, r.tag
    )
}

/// `MAJOR.MINOR.PATCH` as numbers.
pub(crate) fn parse_version(v: &str) -> Result<(u64, u64, u64)> {
    let parts: Vec<&str> = v.split('.').collect();
    let [a, b, c] = parts.as_slice() else { bail!("version `{v}` is not MAJOR.MINOR.PATCH") };
    let num = |s: &str| s.parse::<u64>().with_context(|| format!("version `{v}`: `{s}` is not a number"));
    Ok((num(a)?, num(b)?, num(c)?))
}

fn git(repo: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .current_dir(repo)
        .args(args)
        .output()
        .with_context(|| format!("could not run git {}", args.join(" ")))?;
    if !out.status.success() {
        bail!("git {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
}

/// Publishable crates' names: every `crates/*/Cargo.toml` without `publish = false`, sorted.
fn publishable(repo: &Path) -> Result<Vec<String>> {
    Ok(crate::publish::publishable(repo)?.into_iter().map(|c| c.name).collect())
}

/// The workspace version (`[workspace.package] version`).
pub(crate) fn workspace_version(repo: &Path) -> Result<String> {
    let text = std::fs::read_to_string(repo.join("Cargo.toml"))?;
    let mut in_pkg = false;
    for l in text.lines() {
        let t = l.trim();
        if t.starts_with('[') {
            in_pkg = t == "[workspace.package]";
        } else if in_pkg && let Some(v) = t.strip_prefix("version = \"").and_then(|r| r.strip_suffix('"')) {
            return Ok(v.to_string());
        }
    }
    bail!("no version in [workspace.package] of {}", repo.join("Cargo.toml").display())
}

/// The root manifest with the workspace version and the workspace crates' dependency versions
/// set to `new`.
fn bumped_manifest(text: &str, old: &str, new: &str, crates: &[String]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut section = String::new();
    for l in text.lines() {
        let t = l.trim();
        let mut line = l.to_string();
        if t.starts_with('[') {
            section = t.to_string();
        } else if section == "[workspace.package]" && t == format!("version = \"{old}\"") {
            line = l.replace(old, new);
        } else if section == "[workspace.dependencies]"
            && crates.iter().any(|c| t.starts_with(&format!("{c} = ")))
            && t.contains("path = ")
        {
            line = l.replace(&format!("version = \"{old}\""), &format!("version = \"{new}\""));
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

fn now_utc() -> Result<String> {
    let out = Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]).output().context("could not run date")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub(crate) fn release(args: &[String]) -> Result<()> {
    let mut version = None;
    let mut dry_run = false;
    let mut no_ci = false;
    let mut repo = crate::root();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dry-run" => dry_run = true,
            "--no-ci" => no_ci = true,
            "--repo" => repo = PathBuf::from(it.next().context("--repo takes a directory")?),
            v if !v.starts_with('-') && version.is_none() => version = Some(v.to_string()),
            other => bail!("usage: cargo xtask release <version> [--dry-run] [--repo DIR] [--no-ci]; got `{other}`"),
        }
    }
    let Some(version) = version else { bail!("usage: cargo xtask release <version> [--dry-run] [--repo DIR]") };
    if no_ci && !dry_run {
        bail!("--no-ci is for --dry-run only: a release needs a green `cargo xtask ci`");
    }
    let repo = repo.canonicalize().with_context(|| format!("no such directory {}", repo.display()))?;
    let new = parse_version(&version)?;
    let releases = read_releases(&repo)?;
    let previous = releases.last().cloned();
    if let Some(p) = &previous
        && parse_version(&p.version)? >= new
    {
        bail!("version {version} is not above the last release {}", p.version);
    }
    let current = workspace_version(&repo)?;
    let crates = publishable(&repo)?;
    let head = git(&repo, &["rev-parse", "HEAD"])?;
    let tag = format!("v{version}");
    let plan = format!(
        "release {version}{} of {} at {}\n  previous release: {}\n  workspace version: {current} -> {version}\n  crates: {}\n",
        if dry_run { " (dry run)" } else { "" },
        repo.display(),
        &head[..12.min(head.len())],
        previous.as_ref().map_or("none".to_string(), |p| format!(
            "{} ({})",
            p.version,
            &p.commit[..12.min(p.commit.len())]
        )),
        crates.join(", "),
    );
    eprint!("{plan}");

    // 1. A clean tree.
    let dirty = git(&repo, &["status", "--porcelain"])?;
    if !dirty.is_empty() {
        bail!("the work tree {} is not clean:\n{dirty}\ncommit or remove these first", repo.display());
    }
    if git(&repo, &["tag", "--list", &tag])? == tag {
        bail!("tag {tag} already exists");
    }
    eprintln!("release: [1/8] work tree clean");

    // 2. A green CI, in that tree.
    if no_ci {
        eprintln!("release: [2/8] ci skipped (--no-ci, dry run)");
    } else {
        run(cargo().current_dir(&repo).args(["xtask", "ci"])).context("`cargo xtask ci` is not green")?;
        eprintln!("release: [2/8] cargo xtask ci passed");
    }

    // 3. API compatibility against the previous release.
    match &previous {
        None => eprintln!("release: [3/8] semver checks: no previous release, nothing to compare against"),
        Some(p) => {
            let have = cargo().args(["semver-checks", "--version"]).output().is_ok_and(|o| o.status.success());
            if !have {
                run(cargo().args(["install", "--locked", "cargo-semver-checks"]))?;
            }
            for c in &crates {
                run(cargo().current_dir(&repo).args(["semver-checks", "-p", c, "--baseline-rev", &p.commit]))
                    .with_context(|| format!("{c}: the API change is not allowed in {version}"))?;
            }
            eprintln!("release: [3/8] semver checks passed against {}", p.version);
        }
    }

    // 4. The version bump.
    let names: Vec<String> = crates.clone();
    let manifest_path = repo.join("Cargo.toml");
    let manifest = std::fs::read_to_string(&manifest_path)?;
    let bumped = bumped_manifest(&manifest, &current, &version, &names);
    if current == version {
        eprintln!("release: [4/8] workspace already at {version}; no bump");
    } else if dry_run {
        eprintln!("release: [4/8] would bump {current} -> {version} in Cargo.toml and Cargo.lock");
    } else {
        std::fs::write(&manifest_path, &bumped)?;
        run(cargo().current_dir(&repo).args(["update", "--workspace", "--offline"]))?;
        eprintln!("release: [4/8] bumped {current} -> {version}");
    }

    // 5. The changelog.
    let date = now_utc()?;
    let range = previous.as_ref().map_or("HEAD".to_string(), |p| format!("{}..HEAD", p.commit));
    let log = git(&repo, &["log", "--no-merges", "--format=- %s (%h)", &range])?;
    let mut section = format!("## {version} — {}\n\n", &date[..10]);
    match &previous {
        None => section.push_str("The first release. Every change since the start of the project:\n\n"),
        Some(p) => {
            let _ = write!(section, "Changes since {}:\n\n", p.version);
        }
    }
    section.push_str(&log);
    section.push_str("\n\n");
    let changelog_path = repo.join("CHANGELOG.md");
    let old_log = std::fs::read_to_string(&changelog_path).unwrap_or_default();
    let header = "# Changelog\n\nEvery release of the Quorate crates and the `quorate` binary; written by `cargo xtask release`.\n\n";
    let body = old_log.strip_prefix(header).unwrap_or(&old_log);
    let changelog = format!("{header}{section}{body}");
    if dry_run {
        eprintln!("release: [5/8] would add to CHANGELOG.md ({} commits):", log.lines().count());
        for l in section.lines().take(12) {
            eprintln!("    {l}");
        }
    } else {
        std::fs::write(&changelog_path, &changelog)?;
        eprintln!("release: [5/8] CHANGELOG.md: {} commits", log.lines().count());
    }

    // 6. Ready for crates.io, then every crate packaged and built alone.
    crate::publish::readme_links(&repo)?;
    crate::publish::rust_version(&repo)?;
    crate::publish::minimal_versions(&repo)?;
    publish_dry_run(&repo, &crates)?;
    package_and_build(&repo, &crates, if current == version || dry_run { &current } else { &version })?;
    eprintln!("release: [6/8] {} crates packaged and built from their .crate files", crates.len());

    // 7 and 8. Record, commit, tag.
    let entry = Release { version: version.clone(), commit: head.clone(), date, tag: tag.clone() };
    let releases_path = repo.join(RELEASES_FILE);
    let mut releases_text = std::fs::read_to_string(&releases_path).unwrap_or_else(|_| {
        "# Every release: the version, the commit that was tested and released, the date (UTC)\n\
         # and the tag. Written by `cargo xtask release`; read by `cargo xtask upgrade-check`.\n"
            .to_string()
    });
    releases_text.push('\n');
    releases_text.push_str(&render_release(&entry));
    if dry_run {
        eprint!("release: [7/8] would record in {RELEASES_FILE}:\n{}", render_release(&entry));
        eprintln!("release: [8/8] would commit `release {version}` and tag it {tag}");
        eprintln!("release: dry run of {version} passed");
        return Ok(());
    }
    std::fs::write(&releases_path, releases_text)?;
    eprintln!("release: [7/8] recorded in {RELEASES_FILE}");
    let mut paths = vec!["CHANGELOG.md", RELEASES_FILE];
    if current != version {
        paths.extend(["Cargo.toml", "Cargo.lock"]);
    }
    run(Command::new("git").current_dir(&repo).arg("add").args(&paths))?;
    run(Command::new("git").current_dir(&repo).args(["commit", "-q", "-m", &format!("release {version}")]))?;
    run(Command::new("git").current_dir(&repo).args(["tag", "-a", &tag, "-m", &format!("Quorate {version}")]))?;
    let commit = git(&repo, &["rev-parse", "HEAD"])?;
    eprintln!("release: [8/8] committed {} and tagged {tag}", &commit[..12]);
    eprintln!("release: {version} released (tested commit {}, release commit {})", &head[..12], &commit[..12]);
    Ok(())
}

/// `cargo publish --dry-run --no-verify` of every crate in one invocation: cargo puts them in
/// dependency order and resolves each against crates.io with the crates before it overlaid
/// (they are not published); the upload is what a dry run leaves out. Fails unless every
/// crate reached the upload step; prints the order.
fn publish_dry_run(repo: &Path, crates: &[String]) -> Result<()> {
    let mut cmd = cargo();
    cmd.current_dir(repo).args(["publish", "--dry-run", "--no-verify", "--locked", "--allow-dirty"]);
    for c in crates {
        cmd.args(["-p", c]);
    }
    eprintln!("$ {}", crate::show(&cmd));
    let out = cmd.output().context("could not run cargo publish --dry-run")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("`cargo publish --dry-run` failed ({}):\n{stderr}", out.status);
    }
    let order = upload_order(&stderr);
    let missing: Vec<&String> = crates.iter().filter(|c| !order.contains(c)).collect();
    if !missing.is_empty() || order.len() != crates.len() {
        bail!("`cargo publish --dry-run` did not reach the upload of {missing:?}:\n{stderr}");
    }
    eprintln!("publish dry run: {} crates, in dependency order: {}", order.len(), order.join(" → "));
    Ok(())
}

/// The crate names of `Uploading NAME vX (...)` lines, in order.
fn upload_order(cargo_stderr: &str) -> Vec<String> {
    cargo_stderr
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Uploading "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// `cargo package --no-verify` for every crate, then a build of the unpacked `.crate` files as
/// one scratch workspace whose `[patch.crates-io]` points each crate name at its unpacked
/// copy — the dependency resolution crates.io users get, built with the `ci` profile.
fn package_and_build(repo: &Path, crates: &[String], version: &str) -> Result<()> {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo.join("target"), PathBuf::from);
    let mut pkg = cargo();
    pkg.current_dir(repo).args(["package", "--locked", "--no-verify", "--allow-dirty"]);
    for c in crates {
        pkg.args(["-p", c]);
    }
    run(&mut pkg)?;
    let verify = target.join("release-verify").join(version);
    if verify.exists() {
        std::fs::remove_dir_all(&verify).with_context(|| format!("cannot clear {}", verify.display()))?;
    }
    std::fs::create_dir_all(&verify)?;
    let mut members = String::new();
    let mut patch = String::new();
    for c in crates {
        let file = target.join("package").join(format!("{c}-{version}.crate"));
        if !file.exists() {
            bail!("cargo package did not write {}", file.display());
        }
        run(Command::new("tar").current_dir(&verify).arg("xzf").arg(&file))?;
        let _ = writeln!(members, "    \"{c}-{version}\",");
        let _ = writeln!(patch, "{c} = {{ path = \"{c}-{version}\" }}");
    }
    // The same `ci` profile as the repository, so the RocksDB build in the shared target is reused.
    let root_manifest = std::fs::read_to_string(repo.join("Cargo.toml"))?;
    let profile =
        root_manifest.split("\n[").filter(|s| s.starts_with("profile.")).map(|s| format!("[{s}\n")).collect::<String>();
    let manifest = format!(
        "# Written by `cargo xtask release`: the packaged crates, resolved as crates.io would.\n\
         [workspace]\nresolver = \"3\"\nmembers = [\n{members}]\n\n[patch.crates-io]\n{patch}\n{profile}"
    );
    std::fs::write(verify.join("Cargo.toml"), manifest)?;
    // The repository's lock file pins the same third-party versions the tree was tested with.
    std::fs::copy(repo.join("Cargo.lock"), verify.join("Cargo.lock"))?;
    std::fs::copy(repo.join("rust-toolchain.toml"), verify.join("rust-toolchain.toml"))?;
    run(cargo().current_dir(&verify).args(["build", "--workspace", "--profile", PROFILE]))
        .context("a packaged crate does not build on its own")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_round_trip() {
        let r = Release {
            version: "0.1.0".into(),
            commit: "abc".into(),
            date: "2026-11-28T00:00:00Z".into(),
            tag: "v0.1.0".into(),
        };
        let text = format!(
            "# c\n\n{}\n{}",
            render_release(&r),
            render_release(&Release { version: "0.2.0".into(), ..r.clone() })
        );
        let got = parse_releases(&text).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], r);
        assert_eq!(got[1].version, "0.2.0");
        assert!(parse_releases("[[release]]\nversion = \"1.0.0\"\n").is_err());
        assert!(parse_releases("version = \"1.0.0\"\n").is_err());
    }

    #[test]
    fn the_upload_order_is_read_from_cargo_publish() {
        let err = "   Packaging quorate-log v0.1.0 (/x)\n   Uploading quorate-log v0.1.0 (/x)\nwarning: aborting upload due to dry run\n   Uploading quorate-core v0.1.0 (/y)\n";
        assert_eq!(upload_order(err), ["quorate-log", "quorate-core"]);
    }

    #[test]
    fn bump_touches_only_workspace_versions() {
        let m = "[workspace.package]\nversion = \"0.1.0\"\n\n[workspace.dependencies]\nquorate-log = { path = \"crates/quorate-log\", version = \"0.1.0\" }\nfoo = { version = \"0.1.0\" }\n";
        let b = bumped_manifest(m, "0.1.0", "0.2.0", &["quorate-log".into()]);
        assert!(b.contains("[workspace.package]\nversion = \"0.2.0\""));
        assert!(b.contains("quorate-log = { path = \"crates/quorate-log\", version = \"0.2.0\" }"));
        assert!(b.contains("foo = { version = \"0.1.0\" }"));
        assert!(parse_version("0.2.0").unwrap() > parse_version("0.1.9").unwrap());
        assert!(parse_version("0.2").is_err());
    }
}
