//! `cargo xtask profile`: where one node of a real 3-node cluster spends its CPU under
//! `quorate bench` (issue 20), as a flame graph.
//!
//! Starts the benchmark's cluster (fsync, mutual TLS, every default; the same configurations
//! as `cargo xtask bench cluster`), runs `quorate bench` with the chosen clients, value size and
//! read ratio, and records the chosen node (the leader by default) with `perf record
//! --call-graph dwarf` over the middle half of the run. It then folds the stacks (`perf
//! script`) and writes, in the output directory:
//!
//! - `folded.txt`: one line per distinct stack, `thread;outermost;…;innermost count` — the input
//!   of any flame graph tool;
//! - `flame.svg`: the flame graph, drawn here (no outside tool; hover a frame for its share);
//! - `top.txt`: the threads by share of the samples, and the functions by self and by total
//!   share — with the bench's own output, so the profile and its throughput stay together.

use crate::cluster::{Cluster, text};
use crate::demo::{start_cluster_with, step};
use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const USAGE: &str = "usage: cargo xtask profile [--clients N] [--value-size BYTES] [--read-ratio R] [--duration S] \
                     [--record-from S] [--record-for S] [--frequency HZ] [--node leader|1|2|3] [--out DIR]";

/// Sampling frequency per thread by default (a prime, so as not to beat with periodic work).
const FREQUENCY_DEFAULT: u32 = 499;
/// The longest run: the recording is the middle half of it, and dwarf stacks take room.
const DURATION_MAX_S: u64 = 120;
/// Stack bytes perf copies per sample for unwinding (enough for the node's deepest stacks).
const STACK_BYTES: u32 = 16_384;
/// Frames kept per stack at most (deeper ones are cut at the outermost).
const DEPTH_MAX: usize = 128;
/// Lines of each ranking in `top.txt`.
const TOP: usize = 40;
/// The flame graph's width in pixels.
const WIDTH: f64 = 1200.0;
/// One frame's height in pixels.
const FRAME_HEIGHT: f64 = 16.0;
/// Frames narrower than this share of all samples are left out of the drawing (not of the
/// folded stacks): they cannot be seen and would only make the file large.
const DRAW_SHARE_MIN: f64 = 0.0005;

#[derive(Debug, Clone, PartialEq)]
struct Options {
    clients: u32,
    value_size: u32,
    read_ratio: String,
    duration_s: u64,
    /// Seconds into the run the recording starts, and how long it lasts (default: the middle
    /// half of the run).
    record_from_s: Option<u64>,
    record_for_s: Option<u64>,
    frequency: u32,
    node: Option<u64>,
    out: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            clients: 256,
            value_size: 256,
            read_ratio: "0".into(),
            duration_s: 20,
            record_from_s: None,
            record_for_s: None,
            frequency: FREQUENCY_DEFAULT,
            node: None,
            out: None,
        }
    }
}

impl Options {
    /// When the recording starts, after the bench, and how long it lasts.
    fn window(&self) -> (Duration, Duration) {
        let quarter = Duration::from_millis(self.duration_s * 250);
        let from = self.record_from_s.map_or(quarter, Duration::from_secs);
        let len = self.record_for_s.map_or(2 * quarter, Duration::from_secs);
        (from, len)
    }
}

fn parse_args(args: &[String]) -> Result<Options> {
    let mut o = Options::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value\n{USAGE}"));
        match a.as_str() {
            "--clients" => o.clients = value()?.parse().context("--clients: a number")?,
            "--value-size" => o.value_size = value()?.parse().context("--value-size: bytes")?,
            "--read-ratio" => {
                let r = value()?;
                let f: f64 = r.parse().context("--read-ratio: a number from 0 to 1")?;
                if !(0.0..=1.0).contains(&f) {
                    bail!("--read-ratio: a number from 0 to 1, not {r}");
                }
                o.read_ratio = r.clone();
            }
            "--duration" => o.duration_s = value()?.parse().context("--duration: seconds")?,
            "--record-from" => o.record_from_s = Some(value()?.parse().context("--record-from: seconds")?),
            "--record-for" => o.record_for_s = Some(value()?.parse().context("--record-for: seconds")?),
            "--frequency" => o.frequency = value()?.parse().context("--frequency: samples per second")?,
            "--node" => {
                let v = value()?;
                o.node = match v.as_str() {
                    "leader" => None,
                    n => Some(n.parse().ok().filter(|n| (1..=3).contains(n)).context("--node: leader, 1, 2 or 3")?),
                };
            }
            "--out" => o.out = Some(PathBuf::from(value()?)),
            other => bail!("unknown argument `{other}`\n{USAGE}"),
        }
    }
    if o.clients == 0 || o.clients > 1024 {
        bail!("--clients: 1 to 1024");
    }
    if !(4..=DURATION_MAX_S).contains(&o.duration_s) {
        bail!("--duration: 4 to {DURATION_MAX_S} seconds");
    }
    let (from, len) = o.window();
    if len.is_zero() || from + len > Duration::from_secs(o.duration_s) {
        bail!("the recording (--record-from, --record-for) must lie within the run's --duration");
    }
    if !(1..=10_000).contains(&o.frequency) {
        bail!("--frequency: 1 to 10000 samples per second");
    }
    Ok(o)
}

pub(crate) fn profile(args: &[String]) -> Result<()> {
    let o = parse_args(args)?;
    if Command::new("perf").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        bail!("perf is not installed (Debian: apt-get install linux-perf)");
    }
    let out = o.out.clone().unwrap_or_else(|| crate::cluster::target_dir().join("profile"));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let (mut cluster, leader) = start_cluster_with("profile-cluster", Some(crate::cluster::LOOPBACK_HANDSHAKES))?;
    let result = record(&o, &mut cluster, leader, &out);
    cluster.stop_all();
    let (bench_out, node) = result?;
    step("folding the stacks (perf script)");
    // Read as it comes: a long recording's script output can be far larger than its folds.
    let mut script = Command::new("perf")
        .args(["script", "--no-inline", "-F", "comm,tid,ip,sym", "-i"])
        .arg(out.join("perf.data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot run perf script")?;
    let folded = fold(std::io::BufReader::new(script.stdout.take().context("perf script's output")?));
    if !script.wait().context("perf script")?.success() {
        bail!("perf script failed");
    }
    if folded.is_empty() {
        bail!("perf recorded no sample of node {node}");
    }
    let (from, len) = o.window();
    let title = format!(
        "node {node}{} — quorate bench, {} clients, {} B values, read ratio {}; recorded {}–{} s of {} s",
        if o.node.is_none() { " (leader)" } else { "" },
        o.clients,
        o.value_size,
        o.read_ratio,
        from.as_secs_f64(),
        (from + len).as_secs_f64(),
        o.duration_s
    );
    std::fs::write(out.join("folded.txt"), folded_text(&folded))?;
    std::fs::write(out.join("flame.svg"), svg(&folded, &title))?;
    let top = format!("{title}\n\n{}\n{}", bench_out.trim_end(), top_text(&folded));
    std::fs::write(out.join("top.txt"), &top)?;
    println!("{top}");
    println!("wrote flame.svg, folded.txt and top.txt in {}", out.display());
    Ok(())
}

/// Runs the bench and records the node meanwhile: the bench's output and the node recorded.
fn record(o: &Options, cluster: &mut Cluster, leader: u64, out: &Path) -> Result<(String, u64)> {
    let node = o.node.unwrap_or(leader);
    let pid = cluster.pids().into_iter().find(|(id, _)| *id == node).map(|(_, p)| p).context("no such node")?;
    let duration = o.duration_s.to_string();
    let (clients, value) = (o.clients.to_string(), o.value_size.to_string());
    step(&format!(
        "quorate bench: {} clients, {} B values, read ratio {}, {duration} s; recording node {node} (pid {pid})",
        o.clients, o.value_size, o.read_ratio
    ));
    let mut bench = cluster
        .quorate_command(
            &[
                "bench",
                "--clients",
                &clients,
                "--value-size",
                &value,
                "--duration",
                &duration,
                "--read-ratio",
                &o.read_ratio,
                "--ops-max",
                "10000000",
                "--keys",
                "100000",
                "--consistency",
                "linearizable",
            ],
            &Cluster::endpoints(|_| true),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start quorate bench")?;
    // By default the middle half of the run: after the clients have connected and the log
    // has warmed.
    let (from, len) = o.window();
    std::thread::sleep(from);
    let recorded = Command::new("perf")
        .args(["record", "-q", "-F", &o.frequency.to_string(), "--call-graph", &format!("dwarf,{STACK_BYTES}")])
        .args(["-p", &pid.to_string(), "-o"])
        .arg(out.join("perf.data"))
        .args(["--", "sleep", &format!("{:.1}", len.as_secs_f64())])
        .stdout(Stdio::null())
        .status();
    let recorded = match recorded {
        Ok(r) if r.success() => r,
        other => {
            // No recording: stop the bench now rather than wait for it.
            let _ = bench.kill();
            let _ = bench.wait();
            match other {
                Ok(r) => bail!("perf record failed ({r})"),
                Err(e) => return Err(e).context("cannot run perf record"),
            }
        }
    };
    let bench = bench.wait_with_output().context("quorate bench")?;
    let bench_out = text(&bench.stdout);
    if !bench.status.success() {
        cluster.check_running()?;
        bail!("`quorate bench` failed: {}", text(&bench.stderr).trim());
    }
    debug_assert!(recorded.success());
    Ok((bench_out, node))
}

/// Folded stacks: `thread;outermost;…;innermost` → samples.
type Folded = BTreeMap<String, u64>;

/// Folds `perf script -F comm,tid,ip,sym` output: a header line (`comm tid`) per sample, then
/// its frames innermost first (`addr symbol`), then a blank line. A stack deeper than
/// [`DEPTH_MAX`] keeps its innermost frames (where the samples' own time is).
fn fold(script: impl std::io::BufRead) -> Folded {
    let mut out = Folded::new();
    let mut thread: Option<String> = None;
    let mut frames: Vec<String> = Vec::new();
    let mut flush = |thread: &mut Option<String>, frames: &mut Vec<String>| {
        if let Some(t) = thread.take() {
            let mut stack = t;
            for f in frames.iter().take(DEPTH_MAX).rev() {
                stack.push(';');
                stack.push_str(f);
            }
            *out.entry(stack).or_insert(0) += 1;
        }
        frames.clear();
    };
    for line in script.lines() {
        // A line that is not text (it should not happen) is skipped, not fatal.
        let Ok(line) = line else { continue };
        let line = line.as_str();
        if line.trim().is_empty() {
            flush(&mut thread, &mut frames);
        } else if line.starts_with(char::is_whitespace) {
            if thread.is_some() {
                frames.push(frame_name(line.trim()));
            }
        } else {
            flush(&mut thread, &mut frames);
            thread = Some(thread_name(line.trim()));
        }
    }
    flush(&mut thread, &mut frames);
    out
}

/// A sample header's thread: `comm tid` without the tid, and without a trailing worker
/// number (`quorate-read-3` → `quorate-read-*`), so that a pool's threads add up.
fn thread_name(header: &str) -> String {
    let comm = match header.rsplit_once(char::is_whitespace) {
        Some((comm, tid)) if tid.chars().all(|c| c.is_ascii_digit() || c == '/') => comm.trim_end(),
        _ => header,
    };
    let base = comm.trim_end_matches(|c: char| c.is_ascii_digit());
    let name =
        if base.len() < comm.len() && base.ends_with(['-', '_']) { format!("{base}*") } else { comm.to_string() };
    name.replace(';', ":")
}

/// A frame's function: `addr symbol` (perf prints no offset or object for these fields) →
/// `symbol`, without a Rust hash (`::h…`), an offset `+0x…` if there is one.
fn frame_name(frame: &str) -> String {
    let sym = frame.split_once(char::is_whitespace).map_or("[unknown]", |(_, s)| s.trim());
    let sym = match sym.rfind("+0x") {
        Some(i) if sym[i + 3..].chars().all(|c| c.is_ascii_hexdigit()) => &sym[..i],
        _ => sym,
    };
    let sym = match sym.rfind("::h") {
        Some(i) if sym.len() - i == 19 && sym[i + 3..].chars().all(|c| c.is_ascii_hexdigit()) => &sym[..i],
        _ => sym,
    };
    let sym = if sym.is_empty() { "[unknown]" } else { sym };
    sym.replace(';', ":")
}

fn folded_text(folded: &Folded) -> String {
    let mut s = String::new();
    for (stack, n) in folded {
        let _ = writeln!(s, "{stack} {n}");
    }
    s
}

/// Threads by share; functions by self share (innermost frame) and total share (anywhere in
/// the stack, once per stack).
fn top_text(folded: &Folded) -> String {
    let total: u64 = folded.values().sum();
    let mut threads: HashMap<&str, u64> = HashMap::new();
    let mut own: HashMap<&str, u64> = HashMap::new();
    let mut all: HashMap<&str, u64> = HashMap::new();
    for (stack, &n) in folded {
        let mut parts = stack.split(';');
        let thread = parts.next().unwrap_or("");
        *threads.entry(thread).or_insert(0) += n;
        let frames: Vec<&str> = parts.collect();
        if let Some(leaf) = frames.last() {
            *own.entry(leaf).or_insert(0) += n;
        }
        for f in frames.iter().copied().collect::<BTreeSet<&str>>() {
            *all.entry(f).or_insert(0) += n;
        }
    }
    let mut s = format!("{total} samples\n");
    for (title, map) in [("threads", &threads), ("self", &own), ("total", &all)] {
        let mut v: Vec<(&str, u64)> = map.iter().map(|(k, v)| (*k, *v)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let _ = writeln!(s, "\n{title} (share of samples):");
        for (name, n) in v.into_iter().take(TOP) {
            let _ = writeln!(s, "{:6.2} %  {name}", pct(n, total));
        }
    }
    s
}

fn pct(n: u64, total: u64) -> f64 {
    if total == 0 { 0.0 } else { n as f64 * 100.0 / total as f64 }
}

/// A node of the call tree: samples through it and its callees by name.
#[derive(Default)]
struct Tree {
    samples: u64,
    children: BTreeMap<String, Tree>,
}

fn tree(folded: &Folded) -> Tree {
    let mut root = Tree::default();
    for (stack, &n) in folded {
        root.samples += n;
        let mut at = &mut root;
        for f in stack.split(';') {
            at = at.children.entry(f.to_string()).or_default();
            at.samples += n;
        }
    }
    root
}

fn depth(t: &Tree) -> usize {
    t.children.values().map(|c| 1 + depth(c)).max().unwrap_or(0)
}

/// The flame graph: the threads at the bottom, callees above their callers, each frame as wide
/// as its share of the samples, siblings in name order.
fn svg(folded: &Folded, title: &str) -> String {
    let root = tree(folded);
    let rows = depth(&root) + 1;
    let height = rows as f64 * FRAME_HEIGHT + 50.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<?xml version="1.0" standalone="no"?>
<svg version="1.1" width="{w}" height="{height}" viewBox="0 0 {w} {height}" xmlns="http://www.w3.org/2000/svg" font-family="Verdana, sans-serif" font-size="11">
<rect x="0" y="0" width="{w}" height="{height}" fill="#f8f8f0"/>
<text x="{cx}" y="20" text-anchor="middle" font-size="15">{t}</text>
<text x="10" y="{foot}" font-size="10">{n} samples; hover a frame for its share. Made by cargo xtask profile.</text>"##,
        w = WIDTH + 20.0,
        cx = (WIDTH + 20.0) / 2.0,
        t = escape(title),
        n = root.samples,
        foot = height - 6.0,
    );
    let bottom = height - 30.0;
    draw(&mut s, &root, "all", 10.0, 0, root.samples.max(1), bottom);
    s.push_str("</svg>\n");
    s
}

fn draw(s: &mut String, t: &Tree, name: &str, x: f64, level: usize, total: u64, bottom: f64) {
    let share = t.samples as f64 / total as f64;
    if share < DRAW_SHARE_MIN {
        return;
    }
    let w = share * WIDTH;
    let y = bottom - (level as f64 + 1.0) * FRAME_HEIGHT;
    let label = format!("{name} ({} samples, {:.2} %)", t.samples, share * 100.0);
    let _ = writeln!(
        s,
        r#"<g><title>{}</title><rect x="{x:.2}" y="{y:.1}" width="{:.2}" height="{:.1}" fill="{}" rx="2"/>"#,
        escape(&label),
        w.max(0.1),
        FRAME_HEIGHT - 1.0,
        color(name)
    );
    // About 6.5 px per character at this size.
    let fits = ((w - 6.0) / 6.5).floor();
    if fits >= 3.0 {
        let chars = fits as usize;
        let shown: String = if name.chars().count() <= chars {
            name.to_string()
        } else {
            name.chars().take(chars.saturating_sub(2)).chain("..".chars()).collect()
        };
        let _ = writeln!(s, r#"<text x="{:.2}" y="{:.1}">{}</text>"#, x + 3.0, y + FRAME_HEIGHT - 4.5, escape(&shown));
    }
    s.push_str("</g>\n");
    let mut cx = x;
    for (child, c) in &t.children {
        draw(s, c, child, cx, level + 1, total, bottom);
        cx += c.samples as f64 / total as f64 * WIDTH;
    }
}

/// A warm colour chosen by the name, the same in every graph.
fn color(name: &str) -> String {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let (r, g, b) = (205 + h % 50, 60 + (h >> 8) % 170, (h >> 16) % 60);
    format!("rgb({r},{g},{b})")
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = "quorate-apply  8673 \n\
        \tffffffff82239937 clear_page_erms\n\
        \t55d3f1a2b3c4 rocksdb::DBImpl::GetImpl+0x1f\n\
        \t55d3f1a2b3c5 quorate_node::sm::apply::h0123456789abcdef\n\
        \n\
        quorate-read-3 9000/9001\n\
        \t4760 [unknown]\n\
        \n\
        quorate-apply  8673 \n\
        \tffffffff82239937 clear_page_erms\n\
        \t55d3f1a2b3c4 rocksdb::DBImpl::GetImpl+0x2a\n\
        \t55d3f1a2b3c5 quorate_node::sm::apply::h0123456789abcdef\n\
        \n\
        quorate-read-11 9002\n\
        \t4760 a<b>&c;d\n";

    #[test]
    fn perf_script_output_folds_into_stacks_outermost_first_with_offsets_hashes_and_tids_gone() {
        let f = fold(SCRIPT.as_bytes());
        let lines = folded_text(&f);
        assert_eq!(
            lines,
            "quorate-apply;quorate_node::sm::apply;rocksdb::DBImpl::GetImpl;clear_page_erms 2\n\
             quorate-read-*;[unknown] 1\n\
             quorate-read-*;a<b>&c:d 1\n"
        );
    }

    #[test]
    fn cpp_names_keep_their_parentheses_and_deep_stacks_keep_their_innermost_frames() {
        assert_eq!(
            frame_name("7f12 std::function<void ()>::operator()() const"),
            "std::function<void ()>::operator()() const"
        );
        let mut script = String::from("t 1\n");
        for i in 0..DEPTH_MAX + 10 {
            script.push_str(&format!("\t{i:x} f{i}\n"));
        }
        let f = fold(script.as_bytes());
        let (stack, n) = f.iter().next().unwrap();
        assert_eq!(*n, 1);
        let frames: Vec<&str> = stack.split(';').collect();
        assert_eq!(frames.len(), 1 + DEPTH_MAX);
        assert_eq!(frames.last(), Some(&"f0"), "the innermost frame is kept");
        assert_eq!(frames[1], format!("f{}", DEPTH_MAX - 1), "the outermost frames are cut");
    }

    #[test]
    fn the_rankings_count_self_at_the_innermost_frame_and_total_once_per_stack() {
        let mut f = Folded::new();
        f.insert("t1;main;work;work".into(), 3);
        f.insert("t2;main;idle".into(), 1);
        let top = top_text(&f);
        assert!(top.starts_with("4 samples\n"), "{top}");
        let section = |name: &str| -> Vec<String> {
            top.split(&format!("\n{name} (share of samples):\n"))
                .nth(1)
                .unwrap()
                .split("\n\n")
                .next()
                .unwrap()
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect()
        };
        assert_eq!(section("threads"), ["75.00 % t1", "25.00 % t2"]);
        assert_eq!(section("self"), ["75.00 % work", "25.00 % idle"]);
        // `work` twice in one stack counts once.
        assert_eq!(section("total"), ["100.00 % main", "75.00 % work", "25.00 % idle"]);
    }

    #[test]
    fn the_flame_graph_draws_each_visible_frame_once_escaped_and_leaves_out_the_invisible() {
        let mut f = fold(SCRIPT.as_bytes());
        f.insert("tiny;x".into(), 0);
        let svg = svg(&f, "t <1>");
        // all, 2 threads, apply's 3 frames, read's 2 leaves.
        assert_eq!(svg.matches("<g><title>").count(), 1 + 2 + 3 + 2, "{svg}");
        assert!(svg.contains("a&lt;b&gt;&amp;c:d") && svg.contains("t &lt;1&gt;") && !svg.contains("a<b>"));
        assert!(svg.contains("all (4 samples, 100.00 %)"));
        assert!(!svg.contains("tiny"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn arguments_parse_and_bad_ones_are_refused() {
        let a = |v: &[&str]| parse_args(&v.iter().map(|s| (*s).to_string()).collect::<Vec<_>>());
        assert_eq!(a(&[]).unwrap(), Options::default());
        let o = a(&["--clients", "64", "--value-size", "4096", "--node", "2", "--read-ratio", "0.5"]).unwrap();
        assert_eq!((o.clients, o.value_size, o.node, o.read_ratio.as_str()), (64, 4096, Some(2), "0.5"));
        assert_eq!(o.window(), (Duration::from_secs(5), Duration::from_secs(10)), "the middle half of 20 s");
        let late = a(&["--duration", "40", "--record-from", "25", "--record-for", "10"]).unwrap();
        assert_eq!(late.window(), (Duration::from_secs(25), Duration::from_secs(10)));
        for bad in [
            &["--clients", "0"][..],
            &["--node", "4"],
            &["--read-ratio", "2"],
            &["--duration", "1"],
            &["--frequency", "0"],
            &["--duration", "20", "--record-from", "15", "--record-for", "10"],
            &["--record-for", "0"],
            &["--clients"],
            &["--what"],
        ] {
            assert!(a(bad).is_err(), "{bad:?}");
        }
    }
}
