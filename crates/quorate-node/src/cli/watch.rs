//! `quorate watch KEY`: the changes to a key or a prefix, as they are applied.

use super::output::{Format, escape, kv_json, usage};
use super::{ConnArgs, Outcome};
use clap::Args;
use quorate_client::{ApiError, ClientError, EventKind, WatchEvent, WatchOptions};
use serde_json::{Value, json};
use std::io::Write;
use std::time::Duration;

/// `quorate watch`.
#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// The key (with --prefix: every key that starts with it; "" with --prefix: every key).
    pub(crate) key: String,
    /// Watch every key that starts with KEY.
    #[arg(long)]
    pub(crate) prefix: bool,
    /// Start at this revision, its changes included (default: the next revision of the member
    /// asked). Below the compaction revision the watch is refused (exit 6).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) rev: Option<u64>,
    /// Show the version each change replaced.
    #[arg(long)]
    pub(crate) prev_kv: bool,
    /// Stop after N events (exit 0); with --duration-ms, exit 1 if fewer came in time.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) count: Option<u64>,
    /// Stop after MS milliseconds (exit 0, or 1 if --count events did not all come). (The
    /// global --timeout bounds each poll, in seconds, as it bounds every other call.)
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) duration_ms: Option<u64>,
    /// Ask this member first (default: any; the watch moves to another when it cannot answer).
    #[arg(long, value_name = "ID")]
    pub(crate) node: Option<u64>,
}

/// An event as JSON: `type` (`put`, `delete`), `revision`, `kv` (the pair a put left; a
/// delete's key) and `prev` (the pair replaced, with --prev-kv; else `null`).
fn event_json(e: &WatchEvent) -> Value {
    let kind = match e.kind {
        EventKind::Put => "put",
        EventKind::Delete => "delete",
        _ => "unknown",
    };
    json!({
        "type": kind,
        "revision": e.kv.mod_revision,
        "kv": Value::Object(kv_json(&e.kv)),
        "prev": e.prev.as_ref().map(|p| Value::Object(kv_json(p))),
        "prev_omitted": e.prev_omitted,
    })
}

fn event_text(e: &WatchEvent, prev_kv: bool) -> String {
    let mut line = match e.kind {
        EventKind::Put => format!("PUT {}={}", escape(&e.kv.key, true), escape(&e.kv.value, false)),
        _ => format!("DELETE {}", escape(&e.kv.key, true)),
    };
    line.push_str(&format!(" (revision {})", e.kv.mod_revision));
    if prev_kv {
        match (&e.prev, e.prev_omitted) {
            (Some(p), _) => line.push_str(&format!(" was {}", escape(&p.value, false))),
            (None, true) => line.push_str(" (previous value left out: too large for one answer)"),
            (None, false) => line.push_str(" (new key)"),
        }
    }
    line
}

pub(crate) async fn run(conn: &ConnArgs, args: WatchArgs) -> anyhow::Result<Outcome> {
    if args.key.is_empty() && !args.prefix {
        return Err(usage("give a key, or --prefix (an empty prefix watches every key)"));
    }
    let node = args
        .node
        .map(|n| quorate_log::NodeId::new(n).ok_or_else(|| usage("--node: node ids start at 1")))
        .transpose()?;
    let client = conn.client()?;
    let mut options = if args.prefix { WatchOptions::prefix(&args.key) } else { WatchOptions::key(&args.key) };
    options = options.prev_kv(args.prev_kv).from_revision(args.rev.unwrap_or(0));
    if let Some(n) = node {
        options = options.on(n);
    }
    if let Some(c) = args.count {
        options.max_events = u32::try_from(c).unwrap_or(u32::MAX).min(1000);
    }
    let deadline = args.duration_ms.map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
    let mut watch = client.watch(options);
    let mut seen = 0u64;
    let mut out = std::io::stdout().lock();
    loop {
        let next = watch.next();
        let batch = match deadline {
            Some(d) => match tokio::time::timeout_at(d, next).await {
                Ok(b) => b,
                Err(_) => {
                    return Ok(match args.count {
                        Some(c) => {
                            eprintln!("{seen} of {c} events seen within {} ms", args.duration_ms.unwrap_or(0));
                            Outcome::Failed
                        }
                        None => Outcome::Ok,
                    });
                }
            },
            None => next.await,
        };
        let batch = batch.map_err(explain)?;
        for e in &batch.events {
            if conn.output == Format::Json {
                writeln!(out, "{}", event_json(e))?;
            } else {
                writeln!(out, "{}", event_text(e, args.prev_kv))?;
            }
            seen += 1;
            if args.count.is_some_and(|c| seen >= c) {
                out.flush()?;
                return Ok(Outcome::Ok);
            }
        }
        out.flush()?;
    }
}

/// A watch refused for a compacted start says what to do.
fn explain(e: ClientError) -> anyhow::Error {
    if let Some(ApiError::Compacted { revision, compacted }) = e.api_error() {
        let (revision, compacted) = (*revision, *compacted);
        return anyhow::Error::new(e).context(format!(
            "the changes from revision {revision} are not kept: events exist only after revision {compacted} (it \
             was compacted, or events were first recorded then); read the state at {compacted} (`quorate kv get \
             --rev {compacted}`, `kv scan --rev {compacted}`) and watch from --rev {}",
            compacted + 1
        ));
    }
    e.into()
}
