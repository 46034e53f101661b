//! Every `cargo xtask` command answers `--help` (and `-h`) with its usage and exit code 0,
//! without doing anything else.

use std::process::Command;

fn xtask(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask")).args(args).output().expect("xtask runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The command names the general usage lists.
fn commands() -> Vec<String> {
    let (ok, usage, _) = xtask(&["help"]);
    assert!(ok && usage.starts_with("usage: cargo xtask"), "{usage}");
    let mut names: Vec<String> = usage
        .lines()
        .filter_map(|l| l.strip_prefix("  ").filter(|r| !r.starts_with(' ')))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    names.dedup();
    names
}

#[test]
fn every_command_answers_help_with_its_usage() {
    let names = commands();
    for want in ["ci", "sim", "demo", "chaos", "bench", "release", "upgrade-check", "setup", "deps"] {
        assert!(names.iter().any(|n| n == want), "the usage lists {want}: {names:?}");
    }
    for name in &names {
        for flag in ["--help", "-h"] {
            let (ok, out, err) = xtask(&[name, flag]);
            assert!(ok, "`cargo xtask {name} {flag}` exits 0: {err}");
            assert!(out.starts_with(&format!("usage: cargo xtask {name}")), "{name} {flag}: {out}");
            assert!(out.lines().skip(2).all(|l| l.starts_with("  ")), "{name}: only its own lines: {out}");
            assert!(out.contains(&format!("  {name}")), "{name}: its usage line: {out}");
        }
    }
    // Deeper: a sub-command's --help is its command's.
    for args in [["bench", "cluster", "--help"], ["chaos", "failover", "--help"], ["release", "0.9.0", "--help"]] {
        let (ok, out, err) = xtask(&args);
        assert!(ok && out.contains(&format!("  {}", args[0])), "{args:?}: {out}{err}");
    }
    // An unknown command is an error, with the general usage.
    let (ok, _, err) = xtask(&["no-such-command", "--help"]);
    assert!(!ok && err.contains("unknown command"), "{err}");
}
