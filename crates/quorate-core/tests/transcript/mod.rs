//! The transcript file format and runner.
//!
//! A file is a sequence of cases. Each case is any number of `#` comment (or blank) lines, one
//! command line, a line `----`, and the expected output: the lines up to the next blank line
//! (or the end of the file). Commands run in order against one [`env::Env`], so a file is one
//! scenario. With `rewrite`, the file is written back with the actual output in place of the
//! expected one, keeping comments and commands as they are.

mod env;

use std::path::Path;

/// Most mismatching cases reported per file; the first one usually explains the rest.
const MISMATCHES_REPORTED_MAX: usize = 3;

struct Case {
    /// Comment and blank lines before the command, kept verbatim.
    preamble: Vec<String>,
    command: String,
    /// 1-based line number of the command.
    line: usize,
    expected: Vec<String>,
}

struct Script {
    cases: Vec<Case>,
    /// Comment and blank lines after the last case.
    trailer: Vec<String>,
}

fn parse(name: &str, text: &str) -> Result<Script, String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut cases = Vec::new();
    let mut preamble = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        if l.trim().is_empty() || l.starts_with('#') {
            preamble.push(l.to_owned());
            i += 1;
            continue;
        }
        let line = i + 1;
        if lines.get(i + 1).copied() != Some("----") {
            return Err(format!("{name}:{line}: expected a line `----` after the command `{l}`"));
        }
        i += 2;
        let mut expected = Vec::new();
        while i < lines.len() && !lines[i].trim().is_empty() {
            expected.push(lines[i].to_owned());
            i += 1;
        }
        i += 1; // the blank line ending the output
        cases.push(Case { preamble: std::mem::take(&mut preamble), command: l.to_owned(), line, expected });
    }
    Ok(Script { cases, trailer: preamble })
}

fn render(script: &Script, outputs: &[Vec<String>]) -> String {
    let mut s = String::new();
    for (case, out) in script.cases.iter().zip(outputs) {
        for l in &case.preamble {
            s.push_str(l);
            s.push('\n');
        }
        s.push_str(&case.command);
        s.push_str("\n----\n");
        for l in out {
            s.push_str(l);
            s.push('\n');
        }
        s.push('\n');
    }
    for l in &script.trailer {
        s.push_str(l);
        s.push('\n');
    }
    s
}

/// Runs one transcript file. Returns a report of what went wrong, if anything.
pub(crate) fn run_file(path: &Path, rewrite: bool) -> Result<(), String> {
    let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    let text = std::fs::read_to_string(path).map_err(|e| format!("{name}: {e}"))?;
    let script = parse(&name, &text)?;
    let mut env = env::Env::default();
    let mut outputs = Vec::with_capacity(script.cases.len());
    let mut mismatches = Vec::new();
    for case in &script.cases {
        let mut out = env.run(&case.command).map_err(|e| format!("{name}:{}: `{}`: {e}", case.line, case.command))?;
        if out.is_empty() {
            out.push("ok".to_owned());
        }
        assert!(out.iter().all(|l| !l.trim().is_empty()), "a blank output line would end the case early");
        if out != case.expected {
            mismatches.push(format!(
                "{name}:{}: `{}`: output differs (-expected +actual):\n{}",
                case.line,
                case.command,
                diff(&case.expected, &out)
            ));
        }
        outputs.push(out);
    }
    if rewrite {
        let new = render(&script, &outputs);
        if new != text {
            std::fs::write(path, new).map_err(|e| format!("{name}: writing: {e}"))?;
        }
        return Ok(());
    }
    if mismatches.is_empty() {
        return Ok(());
    }
    let more = mismatches.len().saturating_sub(MISMATCHES_REPORTED_MAX);
    mismatches.truncate(MISMATCHES_REPORTED_MAX);
    if more > 0 {
        mismatches.push(format!("{name}: ... and {more} more mismatching commands"));
    }
    Err(mismatches.join("\n"))
}

/// A line diff by longest common subsequence: ` ` kept, `-` expected only, `+` actual only.
fn diff(expected: &[String], actual: &[String]) -> String {
    let (n, m) = (expected.len(), actual.len());
    // lcs[i][j]: length of the LCS of expected[i..] and actual[j..].
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if expected[i] == actual[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let mut out = String::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && expected[i] == actual[j] {
            out.push_str(&format!("   {}\n", expected[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push_str(&format!("  -{}\n", expected[i]));
            i += 1;
        } else {
            out.push_str(&format!("  +{}\n", actual[j]));
            j += 1;
        }
    }
    out
}
