//! No tracked file names one machine's absolute paths (issue 21: the etcd-bench scripts are
//! found from the repository root, worktrees in the docs are relative). A step of `cargo xtask
//! ci` ([`check`]) and a test, both over `git ls-files`, fail when such a path comes back.

use std::path::Path;

/// Prefixes of paths that exist on one machine only (home and work folders), as they would be
/// written in code or docs.
const MACHINE_PREFIXES: [&str; 3] = ["/work/", "/root/", "/home/"];

/// The lines of `text` that name a machine path: `(line number, line)`. A prefix counts only at
/// the start of a path (after a space, quote, backtick, `(`, `=` or at the line's start), so
/// `a/work/b` or a URL's path does not.
pub(crate) fn machine_paths(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let hit = MACHINE_PREFIXES.iter().any(|p| {
            line.match_indices(p).any(|(at, _)| {
                at == 0 || matches!(line.as_bytes()[at - 1], b' ' | b'"' | b'\'' | b'`' | b'(' | b'=' | b'\t' | b':')
            })
        });
        if hit {
            found.push((i + 1, line.to_string()));
        }
    }
    found
}

/// Every tracked text file of the repository at `root` with its machine paths.
pub(crate) fn tracked_machine_paths(root: &Path) -> anyhow::Result<Vec<String>> {
    let out = std::process::Command::new("git").arg("-C").arg(root).args(["ls-files", "-z"]).output()?;
    anyhow::ensure!(out.status.success(), "git ls-files failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut report = Vec::new();
    for name in out.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        // This file lists the prefixes themselves.
        if name == "xtask/src/paths.rs" {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(root.join(&name)) else { continue };
        for (line, what) in machine_paths(&text) {
            report.push(format!("{name}:{line}: {}", what.trim()));
        }
    }
    Ok(report)
}

/// The CI step: fails naming every tracked line with a machine path.
pub(crate) fn check(root: &Path) -> anyhow::Result<()> {
    let report = tracked_machine_paths(root)?;
    anyhow::ensure!(
        report.is_empty(),
        "machine paths in tracked files (use paths relative to the repository):\n  {}",
        report.join("\n  ")
    );
    eprintln!("machine paths: none in the tracked files");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_machine_path_is_found_where_a_path_starts() {
        assert_eq!(machine_paths("const X: &str = \"/work/shared/tools\";").len(), 1);
        assert_eq!(machine_paths("git worktree add /work/wt-release 243e49c").len(), 1);
        assert_eq!(machine_paths("kept in `/root/notes`").len(), 1);
        assert_eq!(machine_paths("/home/me/x at the start").len(), 1);
        // Not a machine path: inside another path, a relative one, or a URL's path.
        assert!(machine_paths("see ../shared/tools/etcd-bench and a/work/b").is_empty());
        assert!(machine_paths("https://example.invalid/work/x").is_empty());
        assert_eq!(machine_paths("a\nb /work/x\nc").first().map(|f| f.0), Some(2));
    }

    #[test]
    fn no_tracked_file_names_a_machine_path() {
        let report = tracked_machine_paths(&crate::root()).expect("git ls-files");
        assert!(report.is_empty(), "machine paths in tracked files:\n{}", report.join("\n"));
    }
}
