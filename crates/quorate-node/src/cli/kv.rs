//! `quorate kv ...`

use super::{ConnArgs, KvCmd, Outcome, txn};
use anyhow::Context;
use quorate_client::{KeyValue, TxnResult};
use std::io::{Read, Write};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(kv: &KeyValue) -> String {
    format!(
        "{}={} (created at revision {}, modified at {}, version {})",
        text(&kv.key),
        text(&kv.value),
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

pub(crate) async fn run(conn: &ConnArgs, cmd: KvCmd) -> anyhow::Result<Outcome> {
    // Parse local input before connecting, so that a typo fails fast.
    let txn = match &cmd {
        KvCmd::Txn { text, file } => Some(txn::parse(&match (text, file) {
            (Some(t), _) => t.clone(),
            (None, Some(path)) => {
                let mut s = String::new();
                let reader: Box<dyn Read> = if path.as_os_str() == "-" {
                    Box::new(std::io::stdin())
                } else {
                    Box::new(std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?)
                };
                reader.take(TXN_TEXT_BYTES_MAX).read_to_string(&mut s).context("cannot read the transaction")?;
                s
            }
            (None, None) => anyhow::bail!("give the transaction as text or with --file"),
        })?),
        _ => None,
    };
    let client = conn.client()?;
    let mut out = std::io::stdout().lock();
    let outcome = match cmd {
        KvCmd::Put { key, value } => {
            let revision = client.put(&key, &value).await?;
            writeln!(out, "OK (revision {revision})")?;
            Outcome::Ok
        }
        KvCmd::Get { key, consistency, verbose } => {
            let got = client.get(&key, consistency.into()).await?;
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
            if got.kv.is_some() { Outcome::Ok } else { Outcome::No }
        }
        KvCmd::DelRange { start, end } => {
            let (deleted, more) = client.delete_range(&start, &end).await?;
            writeln!(out, "deleted {deleted} keys{}", if more { "; more remain in the range, run again" } else { "" })?;
            Outcome::Ok
        }
        KvCmd::Del { key } => {
            let d = client.delete(&key).await?;
            if d.existed {
                writeln!(out, "deleted (revision {})", d.revision)?;
            } else {
                writeln!(out, "key `{key}` was not present (revision {})", d.revision)?;
            }
            Outcome::Ok
        }
        KvCmd::Cas { key, value, expected, absent: _ } => {
            let s = client.cas(&key, expected.as_deref().map(str::as_bytes), &value).await?;
            if s.succeeded {
                writeln!(out, "swapped (revision {})", s.revision)?;
                Outcome::Ok
            } else {
                match &s.previous {
                    Some(kv) => eprintln!("not swapped: `{key}` holds {:?}", text(&kv.value)),
                    None => eprintln!("not swapped: `{key}` is absent"),
                }
                Outcome::No
            }
        }
        KvCmd::Scan { start, end, prefix, limit, consistency } => {
            let (start, end) = match prefix {
                Some(p) => (p.clone().into_bytes(), prefix_end(p.as_bytes())),
                None => (start.into_bytes(), end.map(String::into_bytes)),
            };
            // Page by page (each at most `RESULT_BYTES_MAX` bytes), printed as they come: the
            // CLI never holds more than one page.
            let (mut from, mut printed) = (start, 0u32);
            let more = loop {
                let page = client.scan_page(&from, end.as_deref(), limit - printed, consistency.into()).await?;
                for kv in &page.kvs {
                    out.write_all(&kv.key)?;
                    out.write_all(b"=")?;
                    out.write_all(&kv.value)?;
                    writeln!(out)?;
                }
                printed += page.kvs.len() as u32;
                match page.next {
                    Some(next) if printed < limit && !page.kvs.is_empty() => from = next,
                    next => break next.is_some(),
                }
            };
            if more {
                eprintln!("(more keys in the range; raise --limit or scan from the last key)");
            }
            Outcome::Ok
        }
        KvCmd::Txn { .. } => {
            let txn = txn.context("the transaction was not parsed")?;
            let t = client.txn(txn).await?;
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
            Outcome::Ok
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
