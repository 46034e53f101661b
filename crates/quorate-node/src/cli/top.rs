//! `quorate top`: a live terminal view of every node — role, term, leader, commit, applied,
//! apply lag, commit throughput — refreshed every second (plain ANSI, no TUI framework).
//! `--once` prints a single frame without escape codes (scripts and tests). Without it, the
//! screen is cleared between frames and the leader coloured only on a terminal, and colour is
//! never used when `NO_COLOR` is set (<https://no-color.org>). With `-o json`, one JSON
//! object per frame, one per line (JSON lines), and never an escape code.

use super::output::{Format, print_json};
use super::{ConnArgs, Outcome};
use quorate_client::NodeStatus;
use quorate_log::NodeId;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Largest number of frames one `quorate top` draws (about a day at one per second).
pub(crate) const FRAMES_MAX: u64 = 100_000;

/// Arguments of `quorate top`.
#[derive(Debug, clap::Args)]
pub(crate) struct TopArgs {
    /// Print one frame and exit.
    #[arg(long)]
    pub(crate) once: bool,
    /// Refresh interval in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub(crate) interval_ms: u64,
    /// Stop after this many frames (default: until interrupted, at most 100000).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=FRAMES_MAX))]
    pub(crate) frames: Option<u64>,
}

/// What a frame shows of one node's status.
#[derive(Debug, Clone, Copy)]
struct View {
    role: quorate_core::Role,
    term: u64,
    leader: Option<NodeId>,
    commit: u64,
    applied: u64,
}

impl From<&NodeStatus> for View {
    fn from(s: &NodeStatus) -> View {
        View { role: s.role, term: s.term.0, leader: s.leader, commit: s.commit.0, applied: s.applied.0 }
    }
}

/// One node's row.
struct Row {
    id: NodeId,
    status: Result<View, String>,
    /// Committed entries per second since the previous frame (None on the first).
    rate: Option<f64>,
}

/// The highest commit index a leader of the frame reports.
fn leader_commit(rows: &[Row]) -> Option<u64> {
    rows.iter()
        .filter_map(|r| r.status.as_ref().ok())
        .filter(|s| s.role == quorate_core::Role::Leader)
        .map(|s| s.commit)
        .max()
}

/// Entries node `s` still has to apply to reach the leader's commit (its own without one).
fn lag(s: &View, leader_commit: Option<u64>) -> u64 {
    leader_commit.unwrap_or(s.commit).max(s.commit).saturating_sub(s.applied)
}

/// One frame as JSON: `frame` (from 1), `interval_ms`, and `nodes`: `id`, `reachable`, and
/// `role`, `term`, `leader`, `commit`, `applied`, `lag`, `commits_per_sec` (`null` on the
/// first frame), `error` (`null` when it answered).
fn frame_json(rows: &[Row], frame: u64, interval_ms: u64) -> Value {
    let leader_commit = leader_commit(rows);
    let nodes: Vec<Value> = rows
        .iter()
        .map(|r| match &r.status {
            Ok(s) => json!({
                "id": r.id.get(),
                "reachable": true,
                "role": s.role.to_string(),
                "term": s.term,
                "leader": s.leader.map(NodeId::get),
                "commit": s.commit,
                "applied": s.applied,
                "lag": lag(s, leader_commit),
                "commits_per_sec": r.rate,
                "error": null,
            }),
            Err(e) => json!({
                "id": r.id.get(),
                "reachable": false,
                "role": null,
                "term": null,
                "leader": null,
                "commit": null,
                "applied": null,
                "lag": null,
                "commits_per_sec": null,
                "error": e,
            }),
        })
        .collect();
    json!({"frame": frame, "interval_ms": interval_ms, "nodes": nodes})
}

/// Renders one frame. `color`: ANSI colours (leader green, unreachable red).
fn frame(rows: &[Row], color: bool) -> String {
    let leader_commit = leader_commit(rows);
    let header = ["NODE", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAG", "COMMITS/S"];
    let mut table: Vec<(Vec<String>, Option<&str>)> = vec![(header.iter().map(|s| (*s).to_string()).collect(), None)];
    for r in rows {
        match &r.status {
            Ok(s) => {
                let lag = lag(s, leader_commit);
                let hue = if s.role == quorate_core::Role::Leader { Some("\x1b[1;32m") } else { None };
                table.push((
                    vec![
                        r.id.to_string(),
                        s.role.to_string(),
                        s.term.to_string(),
                        s.leader.map_or("-".into(), |l| l.to_string()),
                        s.commit.to_string(),
                        s.applied.to_string(),
                        lag.to_string(),
                        r.rate.map_or("-".into(), |x| format!("{x:.0}")),
                    ],
                    hue,
                ));
            }
            Err(e) => {
                let mut cells = vec![r.id.to_string(), "unreachable".into()];
                cells.extend(std::iter::repeat_n("-".to_string(), header.len() - 3));
                cells.push(e.chars().take(60).collect());
                table.push((cells, Some("\x1b[31m")));
            }
        }
    }
    let widths: Vec<usize> =
        (0..header.len()).map(|c| table.iter().map(|(r, _)| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for (row, hue) in &table {
        let line: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        let line = line.join("  ");
        match hue {
            Some(h) if color => out.push_str(&format!("{h}{}\x1b[0m", line.trim_end())),
            _ => out.push_str(line.trim_end()),
        }
        out.push('\n');
    }
    out
}

/// Runs `quorate top`.
pub(crate) async fn run(conn: &ConnArgs, args: &TopArgs, format: Format) -> anyhow::Result<Outcome> {
    let client = conn.client()?;
    let frames = if args.once { 1 } else { args.frames.unwrap_or(FRAMES_MAX) };
    let mut previous: BTreeMap<NodeId, (u64, Instant)> = BTreeMap::new();
    let interval = Duration::from_millis(args.interval_ms);
    let mut answered_once = false;
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let color = quorate_telemetry::color_allowed(terminal, std::env::var_os("NO_COLOR").as_deref());
    for n in 0..frames {
        let started = Instant::now();
        let statuses = client.statuses().await;
        let now = Instant::now();
        let rows: Vec<Row> = statuses
            .into_iter()
            .map(|(id, s)| {
                let status = s.as_ref().map(View::from).map_err(|e| e.to_string());
                let rate = status.as_ref().ok().and_then(|s| {
                    let (c0, t0) = previous.insert(id, (s.commit, now))?;
                    let dt = now.duration_since(t0).as_secs_f64();
                    (dt > 0.0).then(|| s.commit.saturating_sub(c0) as f64 / dt)
                });
                Row { id, status, rate }
            })
            .collect();
        answered_once |= rows.iter().any(|r| r.status.is_ok());
        if format == Format::Json {
            print_json(&frame_json(&rows, n + 1, args.interval_ms))?;
        } else if args.once {
            print!("{}", frame(&rows, false));
        } else {
            // On a terminal: clear the screen, home the cursor, draw (in colour unless
            // NO_COLOR). Elsewhere (a pipe, a file): plain frames one after the other.
            let clear = if terminal { "\x1b[2J\x1b[H" } else { "" };
            println!(
                "{clear}{}  (frame {}, every {} ms; Ctrl-C to quit)",
                frame(&rows, color),
                n + 1,
                args.interval_ms
            );
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        if n + 1 < frames {
            tokio::time::sleep(interval.saturating_sub(started.elapsed())).await;
        }
    }
    client.close();
    if !answered_once {
        anyhow::bail!("no node answered; check that the nodes run and that --endpoints is right");
    }
    Ok(Outcome::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(role: quorate_core::Role, commit: u64, applied: u64) -> View {
        View { role, term: 4, leader: NodeId::new(1), commit, applied }
    }

    #[test]
    fn a_frame_shows_roles_lag_and_rate() {
        use quorate_core::Role;
        let rows = vec![
            Row { id: NodeId::new(1).expect("id"), status: Ok(status(Role::Leader, 120, 118)), rate: Some(40.0) },
            Row { id: NodeId::new(2).expect("id"), status: Ok(status(Role::Follower, 100, 90)), rate: None },
            Row { id: NodeId::new(3).expect("id"), status: Err("timed out".into()), rate: None },
        ];
        let f = frame(&rows, false);
        let lines: Vec<&str> = f.lines().collect();
        assert_eq!(lines.len(), 4, "{f}");
        assert!(lines[0].starts_with("NODE  ROLE"), "{f}");
        let cells = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        assert_eq!(cells(lines[1]), ["1", "leader", "4", "1", "120", "118", "2", "40"]);
        // The follower's lag is measured against the leader's commit.
        assert_eq!(cells(lines[2]), ["2", "follower", "4", "1", "100", "90", "30", "-"]);
        assert!(lines[3].contains("unreachable") && lines[3].contains("timed out"), "{f}");
        assert!(!f.contains('\x1b'), "no escape codes without colour");
        assert!(frame(&rows, true).contains("\x1b[1;32m1 "), "the leader is highlighted");

        // The same frame as one JSON object on one line.
        let line = serde_json::to_string(&frame_json(&rows, 7, 500)).unwrap();
        assert!(!line.contains('\n') && !line.contains('\x1b'), "{line}");
        let j: Value = serde_json::from_str(&line).unwrap();
        assert_eq!((j["frame"].clone(), j["interval_ms"].clone()), (json!(7), json!(500)));
        let nodes = j["nodes"].as_array().unwrap();
        assert_eq!(
            nodes[0],
            json!({"id": 1, "reachable": true, "role": "leader", "term": 4, "leader": 1, "commit": 120,
                "applied": 118, "lag": 2, "commits_per_sec": 40.0, "error": null})
        );
        assert_eq!((nodes[1]["lag"].clone(), nodes[1]["commits_per_sec"].clone()), (json!(30), Value::Null));
        assert_eq!((nodes[2]["reachable"].clone(), nodes[2]["error"].clone()), (json!(false), json!("timed out")));
        assert_eq!(nodes[2]["commit"], Value::Null);
    }
}
