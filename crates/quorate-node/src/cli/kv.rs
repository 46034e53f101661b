//! `quorate kv ...`

use super::output::{Format, escape, kv_json, print_json, put_bytes, usage};
use super::{ConnArgs, KvCmd, Outcome, txn};
use anyhow::Context;
use quorate_client::{KeyValue, ReadInfo, TxnResult};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(kv: &KeyValue) -> String {
    format!(
        "{}={} (created at revision {}, modified at {}, version {})",
        escape(&kv.key, true),
        escape(&kv.value, false),
        kv.create_revision,
        kv.mod_revision,
        kv.version
    )
}

/// The end of a prefix range: the prefix with its last byte incremented (`None`: unbounded).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Reads at most this much transaction text.
const TXN_TEXT_BYTES_MAX: u64 = 1024 * 1024;

/// The value given on the command line, or read from `--value-file` (`-`: standard input),
/// byte for byte; more than [`quorate_api::limits::VALUE_BYTES_MAX`] bytes is a usage error.
pub(crate) fn read_value(value: Option<String>, file: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    const LIMIT: usize = quorate_api::limits::VALUE_BYTES_MAX;
    let path = match (value, file) {
        (Some(v), None) => return Ok(v.into_bytes()),
        (None, Some(path)) => path,
        _ => return Err(usage("give the value as an argument or with --value-file, not both")),
    };
    let reader: Box<dyn Read> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?)
    };
    let mut bytes = Vec::new();
    reader
        .take(LIMIT as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| usage(format!("cannot read the value from {}: {e}", path.display())))?;
    if bytes.len() > LIMIT {
        return Err(usage(format!("the value in {} is larger than {LIMIT} bytes, the limit", path.display())));
    }
    Ok(bytes)
}

fn read_txn(text: &Option<String>, file: &Option<PathBuf>) -> anyhow::Result<quorate_client::Txn> {
    let input = match (text, file) {
        (Some(t), _) => t.clone(),
        (None, Some(path)) => {
            let mut s = String::new();
            let reader: Box<dyn Read> = if path.as_os_str() == "-" {
                Box::new(std::io::stdin())
            } else {
                Box::new(std::fs::File::open(path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?)
            };
            // One byte past the limit tells a file at the limit from a longer one, which is
            // refused whole: a transaction cut short could still parse, and run without its end.
            reader
                .take(TXN_TEXT_BYTES_MAX + 1)
                .read_to_string(&mut s)
                .map_err(|e| usage(format!("cannot read the transaction: {e}")))?;
            if s.len() as u64 > TXN_TEXT_BYTES_MAX {
                let from = if path.as_os_str() == "-" { "standard input".into() } else { path.display().to_string() };
                return Err(usage(format!(
                    "the transaction in {from} is larger than {TXN_TEXT_BYTES_MAX} bytes, the limit"
                )));
            }
            s
        }
        (None, None) => return Err(usage("give the transaction as text or with --file")),
    };
    txn::parse(&input).map_err(|e| usage(format!("{e:#}")))
}

/// How a read was served, as JSON: `node`, `revision`, `applied`, and `stale` (`null`, or
/// `known_commit` and `since_leader_ms` for a stale read).
fn read_json(r: &ReadInfo) -> Value {
    json!({
        "node": r.node.get(),
        "revision": r.revision,
        "applied": r.applied.0,
        "stale": r.staleness.as_ref().map(|s| json!({
            "known_commit": s.known_commit.0,
            "since_leader_ms": s.since_leader_ms,
        })),
    })
}

/// A transaction's outcome as JSON: `succeeded`, `revision`, and `results`, one per operation
/// of the branch that ran: `{"op":"put"}`, `{"op":"delete","deleted":BOOL}`,
/// `{"op":"get","found":BOOL, ...pair}`.
pub(crate) fn txn_json(succeeded: bool, revision: u64, results: &[TxnResult]) -> Value {
    let results: Vec<Value> = results
        .iter()
        .map(|r| match r {
            TxnResult::Put => json!({"op": "put"}),
            TxnResult::Delete(existed) => json!({"op": "delete", "deleted": existed}),
            TxnResult::Get(kv) => {
                let mut m = kv.as_ref().map(kv_json).unwrap_or_default();
                m.insert("op".into(), json!("get"));
                m.insert("found".into(), json!(kv.is_some()));
                Value::Object(m)
            }
            other => json!({"op": format!("{other:?}")}),
        })
        .collect();
    json!({"succeeded": succeeded, "revision": revision, "results": results})
}

pub(crate) async fn run(conn: &ConnArgs, cmd: KvCmd) -> anyhow::Result<Outcome> {
    let as_json = conn.output == Format::Json;
    // Read and parse local input before connecting, so that a mistake fails fast.
    let txn = match &cmd {
        KvCmd::Txn { text, file } => Some(read_txn(text, file)?),
        _ => None,
    };
    let value = match &cmd {
        KvCmd::Put { value, value_file, .. } | KvCmd::Cas { value, value_file, .. } => {
            Some(read_value(value.clone(), value_file.as_deref())?)
        }
        _ => None,
    };
    let client = conn.client()?;
    let mut out = std::io::stdout().lock();
    let outcome = match cmd {
        KvCmd::Put { key, lease, .. } => {
            let value = value.unwrap_or_default();
            let revision = match lease {
                Some(id) => client.put_with_lease(&key, value, quorate_client::LeaseId(id)).await?,
                None => client.put(&key, value).await?,
            };
            if as_json {
                print_json(&json!({"revision": revision}))?;
            } else {
                writeln!(out, "OK (revision {revision})")?;
            }
            Outcome::Ok
        }
        KvCmd::Get { key, consistency, bound, verbose, rev } => {
            let read = bound.level(consistency)?;
            let got = match rev {
                Some(rev) => client.get_at(&key, rev, read).await?,
                None => client.get(&key, read).await?,
            };
            if as_json {
                let mut m = got.kv.as_ref().map(kv_json).unwrap_or_else(|| {
                    let mut m = serde_json::Map::new();
                    put_bytes(&mut m, "key", key.as_bytes());
                    m
                });
                m.insert("found".into(), json!(got.kv.is_some()));
                m.insert("read".into(), read_json(&got.read));
                print_json(&Value::Object(m))?;
            } else {
                match (&got.kv, verbose) {
                    (Some(kv), false) => {
                        out.write_all(&kv.value)?;
                        writeln!(out)?;
                    }
                    (Some(kv), true) => writeln!(out, "{}", describe(kv))?,
                    (None, _) => eprintln!("key `{key}` not found"),
                }
                if verbose {
                    let r = &got.read;
                    write!(out, "served by node {} at revision {}, applied index {}", r.node, r.revision, r.applied)?;
                    if let Some(s) = &r.staleness {
                        let since = s.since_leader_ms.map_or("never heard from a leader".into(), |ms| {
                            format!("last heard from a leader {ms} ms ago")
                        });
                        write!(
                            out,
                            "; stale: {} entries committed but not applied, {since}",
                            s.known_commit.0.saturating_sub(r.applied.0)
                        )?;
                    }
                    writeln!(out)?;
                }
            }
            if got.kv.is_some() { Outcome::Ok } else { Outcome::NotFound }
        }
        KvCmd::DelRange { start, end } => {
            let (deleted, more) = client.delete_range(&start, &end).await?;
            if as_json {
                print_json(&json!({"deleted": deleted, "more": more}))?;
            } else {
                writeln!(
                    out,
                    "deleted {deleted} keys{}",
                    if more { "; more remain in the range, run again" } else { "" }
                )?;
            }
            Outcome::Ok
        }
        KvCmd::Del { key } => {
            let d = client.delete(&key).await?;
            if as_json {
                print_json(&json!({"deleted": d.existed, "revision": d.revision}))?;
            } else if d.existed {
                writeln!(out, "deleted (revision {})", d.revision)?;
            } else {
                writeln!(out, "key `{key}` was not present (revision {})", d.revision)?;
            }
            Outcome::Ok
        }
        KvCmd::Cas { key, expected, absent: _, .. } => {
            let s = client.cas(&key, expected.as_deref().map(str::as_bytes), value.unwrap_or_default()).await?;
            if as_json {
                let previous = s.previous.as_ref().map(|kv| Value::Object(kv_json(kv)));
                print_json(&json!({"succeeded": s.succeeded, "revision": s.revision, "previous": previous}))?;
            } else if s.succeeded {
                writeln!(out, "swapped (revision {})", s.revision)?;
            } else {
                match &s.previous {
                    Some(kv) => eprintln!("not swapped: `{key}` holds {:?}", text(&kv.value)),
                    None => eprintln!("not swapped: `{key}` is absent"),
                }
            }
            if s.succeeded { Outcome::Ok } else { Outcome::CompareFailed }
        }
        KvCmd::Compact { rev } => {
            let compacted = client.compact(rev).await?;
            if as_json {
                print_json(&json!({"compacted": compacted}))?;
            } else {
                writeln!(out, "compacted: revisions before {compacted} are no longer kept")?;
            }
            Outcome::Ok
        }
        KvCmd::Scan { start, end, prefix, limit, consistency, bound, rev } => {
            let read = bound.level(consistency)?;
            let (start, end) = match prefix {
                Some(p) => (p.clone().into_bytes(), prefix_end(p.as_bytes())),
                None => (start.into_bytes(), end.map(String::into_bytes)),
            };
            // Page by page (each at most `RESULT_BYTES_MAX` bytes), printed as they come: the
            // CLI never holds more than one page. The client checks that the pages move on (a
            // read at a revision may give pages without a pair that still go on).
            let mut pages = client.scan_pages(&start, end.as_deref(), limit, rev, read);
            while let Some(page) = pages.next().await? {
                for kv in &page.kvs {
                    if as_json {
                        serde_json::to_writer(&mut out, &Value::Object(kv_json(kv)))?;
                        writeln!(out)?;
                    } else {
                        writeln!(out, "{}={}", escape(&kv.key, true), escape(&kv.value, false))?;
                    }
                }
            }
            if let Some(next) = pages.more() {
                if as_json {
                    let mut m = serde_json::Map::new();
                    m.insert("more".into(), json!(true));
                    put_bytes(&mut m, "next_key", next);
                    serde_json::to_writer(&mut out, &Value::Object(m))?;
                    writeln!(out)?;
                }
                eprintln!("(more keys in the range; raise --limit or scan from the last key)");
            }
            Outcome::Ok
        }
        KvCmd::Txn { .. } => {
            let txn = txn.context("the transaction was not parsed")?;
            let t = client.txn(txn).await?;
            if as_json {
                print_json(&txn_json(t.succeeded, t.revision, &t.results))?;
            } else {
                writeln!(out, "{} (revision {})", if t.succeeded { "succeeded" } else { "failed" }, t.revision)?;
                for r in &t.results {
                    match r {
                        TxnResult::Put => writeln!(out, "put: OK")?,
                        TxnResult::Delete(existed) => {
                            writeln!(out, "del: {}", if *existed { "deleted" } else { "not present" })?;
                        }
                        TxnResult::Get(Some(kv)) => writeln!(out, "get: {}", describe(kv))?,
                        TxnResult::Get(None) => writeln!(out, "get: not found")?,
                        other => writeln!(out, "{other:?}")?,
                    }
                }
            }
            if t.succeeded { Outcome::Ok } else { Outcome::CompareFailed }
        }
    };
    client.close();
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}
