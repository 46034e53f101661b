//! `quorate snapshot restore`: an offline restore into a new cluster member's data directory;
//! `quorate snapshot status`: what a snapshot file holds, verified offline.

use super::Outcome;
use super::output::{Format, print_json, usage};
use anyhow::Context;
use clap::Args;
use quorate_node::restore;
use serde_json::json;
use std::path::{Path, PathBuf};

/// `quorate snapshot restore --from FILE --data-dir DIR --id N --peers 1=host:port,...`
#[derive(Debug, Args)]
pub(crate) struct RestoreArgs {
    /// The snapshot file written by `quorate snapshot save`.
    #[arg(long)]
    pub(crate) from: PathBuf,
    /// The data directory to create (missing or empty); the node's `data_dir`.
    #[arg(long)]
    pub(crate) data_dir: PathBuf,
    /// This member's node id.
    #[arg(long)]
    pub(crate) id: u64,
    /// Every member of the new cluster: `1=127.0.0.1:7001,2=127.0.0.1:7002,...` (the same list
    /// for every member, and the `peers` of their configurations).
    #[arg(long)]
    pub(crate) peers: String,
}

pub(crate) fn restore(args: &RestoreArgs, format: Format) -> anyhow::Result<Outcome> {
    let peers = restore::parse_peers(&args.peers).map_err(|e| usage(format!("--peers: {e:#}")))?;
    let done = restore::restore(&args.from, &args.data_dir, args.id, &peers)
        .with_context(|| format!("restore of node {} into {} failed", args.id, args.data_dir.display()))?;
    if format == Format::Json {
        print_json(&json!({
            "node": args.id,
            "data_dir": args.data_dir.display().to_string(),
            "index": done.last.index.0,
            "term": done.last.term.0,
            "records": done.records,
            "members": done.members,
        }))?;
        return Ok(Outcome::Ok);
    }
    println!(
        "restored node {} into {}: snapshot at index {} (term {}), {} records; members {:?}. Start every member \
         with these peers.",
        args.id,
        args.data_dir.display(),
        done.last.index,
        done.last.term,
        done.records,
        done.members
    );
    Ok(Outcome::Ok)
}

/// `quorate snapshot status FILE`: verifies the file whole, then prints what it holds.
pub(crate) fn status(file: &Path, format: Format) -> anyhow::Result<Outcome> {
    let info = restore::inspect(file)?;
    if format == Format::Json {
        print_json(&status_json(file, &info))?;
    } else {
        print!("{}", status_table(file, &info));
    }
    Ok(Outcome::Ok)
}

fn ids(set: &std::collections::BTreeSet<quorate_log::NodeId>) -> Vec<u64> {
    set.iter().map(|n| n.get()).collect()
}

/// `-o json`: `file`, `index`, `term`, `members` {`voters`, `voters_outgoing`, `learners`},
/// `addresses` {id: address} (at most `restore::STATUS_ADDRESSES_MAX`, escaped and cut as
/// `restore::printable_address` says), `addresses_omitted` (address records beyond those),
/// `file_bytes`, `data_bytes`, `records`, `keys`, `hash` (`crc32:` and 8 hex digits),
/// `verified` (always true: a file that does not verify is an error).
pub(crate) fn status_json(file: &Path, info: &restore::SnapshotInfo) -> serde_json::Value {
    let c = &info.meta.config;
    let addresses: serde_json::Map<String, serde_json::Value> =
        info.addresses.iter().map(|(id, a)| (id.to_string(), json!(a))).collect();
    json!({
        "file": file.display().to_string(),
        "index": info.meta.last.index.0,
        "term": info.meta.last.term.0,
        "members": {
            "voters": ids(&c.voters),
            "voters_outgoing": ids(&c.voters_outgoing),
            "learners": ids(&c.learners),
        },
        "addresses": addresses,
        "addresses_omitted": info.addresses_omitted,
        "file_bytes": info.file_bytes,
        "data_bytes": info.data_bytes,
        "records": info.records,
        "keys": info.keys,
        "hash": format!("crc32:{:08x}", info.data_crc32),
        "verified": true,
    })
}

/// Two columns: what and its value.
pub(crate) fn status_table(file: &Path, info: &restore::SnapshotInfo) -> String {
    // The addresses come escaped and bounded from `inspect`: nothing from the file reaches
    // the terminal as a control byte.
    let mut addresses = if info.addresses.is_empty() {
        "-".to_string()
    } else {
        info.addresses.iter().map(|(id, a)| format!("{id}={a}")).collect::<Vec<_>>().join(",")
    };
    if info.addresses_omitted > 0 {
        addresses.push_str(&format!(" (and {} more address records, not shown)", info.addresses_omitted));
    }
    let rows = [
        ("FILE", file.display().to_string()),
        ("VERIFIED", "yes (header, metadata and data checksums, records)".to_string()),
        ("INDEX", info.meta.last.index.0.to_string()),
        ("TERM", info.meta.last.term.0.to_string()),
        ("MEMBERS", super::cluster::describe_config(&info.meta.config)),
        ("ADDRESSES", addresses),
        ("SIZE", format!("{} bytes ({} of data)", info.file_bytes, info.data_bytes)),
        ("KEYS", info.keys.to_string()),
        ("RECORDS", info.records.to_string()),
        ("HASH", format!("crc32:{:08x}", info.data_crc32)),
    ];
    rows.iter().map(|(k, v)| format!("{k:<10}{v}\n")).collect()
}

/// The temporary name a streamed save writes to before it is verified: `FILE.part`.
pub(crate) fn part_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().map(std::ffi::OsStr::to_os_string).unwrap_or_default();
    name.push(".part");
    file.with_file_name(name)
}

/// The temporary file of a streamed save: removed when dropped unless it was renamed into
/// place, so a save that fails for any reason (a deposed leader, a cut stream, a file that
/// does not verify) leaves nothing at FILE, and no `FILE.part` either.
struct Part {
    path: PathBuf,
    kept: bool,
}

impl Drop for Part {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Progress on standard error, at most every [`PROGRESS_EVERY`] and once at the end.
struct Progress {
    show: bool,
    last: Option<std::time::Instant>,
}

const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

impl Progress {
    fn report(&mut self, p: &quorate_client::SaveProgress) {
        if !self.show {
            return;
        }
        let done = p.total == Some(p.bytes);
        if !done && self.last.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
            return;
        }
        self.last = Some(std::time::Instant::now());
        let line = match p.total {
            Some(total) => {
                let pct = (p.bytes.saturating_mul(100)).checked_div(total).unwrap_or(100);
                format!("progress: {}/{total} bytes ({pct}%) from node {} at index {}", p.bytes, p.node, p.index)
            }
            None => {
                format!(
                    "progress: node {} is writing the image at index {}: {} bytes so far",
                    p.node, p.index, p.prepared
                )
            }
        };
        eprintln!("{line}");
    }
}

/// Verifies the received file `part` whole (as `snapshot status` does) against the index and
/// size the leader announced, then renames it to `file` and fsyncs the directory. On any
/// failure `part` is removed (dropped) and nothing is at `file`.
fn keep_verified(
    mut part: Part,
    file: &Path,
    index: quorate_log::LogIndex,
    bytes: u64,
) -> anyhow::Result<restore::SnapshotInfo> {
    let info = restore::inspect(&part.path).context("the snapshot received does not verify; nothing was kept")?;
    anyhow::ensure!(
        info.meta.last.index == index && info.file_bytes == bytes,
        "the snapshot received is not the one the leader announced (index {} of {} bytes, announced {} of {}); \
         nothing was kept",
        info.meta.last.index,
        info.file_bytes,
        index,
        bytes
    );
    std::fs::rename(&part.path, file).with_context(|| format!("cannot rename into {}", file.display()))?;
    part.kept = true;
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("fsync {}", dir.display()))?;
    Ok(info)
}

/// `quorate snapshot save FILE`: streamed from the leader into `FILE.part`, fsynced, verified
/// whole (header, metadata and data checksums, as `snapshot status` does), renamed to FILE and
/// the directory fsynced. Any failure leaves nothing at FILE.
pub(crate) async fn save_to_file(conn: &super::conn::ConnArgs, args: &super::SaveArgs) -> anyhow::Result<Outcome> {
    use std::io::{IsTerminal, Write};
    let Some(file) = args.file.as_deref() else { return Err(usage("snapshot save: FILE is required here")) };
    let client = conn.client()?;
    let part = Part { path: part_path(file), kept: false };
    let handle = std::fs::File::create(&part.path).with_context(|| format!("cannot create {}", part.path.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, handle);
    let mut progress = Progress { show: args.progress || std::io::stderr().is_terminal(), last: None };
    let idle = std::time::Duration::from_secs(args.idle_timeout);
    let saved = client.snapshot_stream(&mut out, idle, |p| progress.report(p)).await;
    client.close();
    let saved = saved.context("snapshot save failed; nothing was written at the file's name")?;
    out.flush()?;
    let handle = out.into_inner().map_err(|e| anyhow::anyhow!("writing {}: {}", part.path.display(), e.error()))?;
    handle.sync_all().with_context(|| format!("fsync {}", part.path.display()))?;
    drop(handle);
    let info = keep_verified(part, file, saved.index, saved.bytes)?;
    if conn.output == Format::Json {
        let mut j = status_json(file, &info);
        j["node"] = json!(saved.node.get());
        print_json(&j)?;
    } else {
        println!(
            "snapshot at index {} (term {}) streamed from node {} into {}: {} bytes, {} keys, crc32:{:08x}, verified",
            saved.index,
            saved.term,
            saved.node,
            file.display(),
            saved.bytes,
            info.keys,
            info.data_crc32
        );
    }
    Ok(Outcome::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorate_log::{Configuration, EntryId, LogIndex, SnapshotMeta, Term};
    use std::io::Write;

    fn received(dir: &Path) -> (PathBuf, u64) {
        let meta = SnapshotMeta { last: EntryId::new(Term(2), LogIndex(9)), config: Configuration::default() };
        let mut w = quorate_storage::SnapshotWriter::create(dir, meta).unwrap();
        for (k, v) in [(&b"kuser/a"[..], &b"1"[..]), (b"kuser/b", b"2")] {
            w.write_all(&(k.len() as u32).to_le_bytes()).unwrap();
            w.write_all(k).unwrap();
            w.write_all(&(v.len() as u32).to_le_bytes()).unwrap();
            w.write_all(v).unwrap();
        }
        let path = w.finish().unwrap().path;
        let len = std::fs::metadata(&path).unwrap().len();
        (path, len)
    }

    #[test]
    fn a_received_file_is_kept_only_whole_and_as_announced() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("backup.qsnap");
        let (good, len) = received(tmp.path());
        let bytes = std::fs::read(&good).unwrap();
        // A truncated stream: refused, nothing at FILE, no FILE.part left.
        let part = part_path(&file);
        std::fs::write(&part, &bytes[..bytes.len() - 7]).unwrap();
        let e = keep_verified(Part { path: part.clone(), kept: false }, &file, LogIndex(9), len).unwrap_err();
        assert!(format!("{e:#}").contains("does not verify"), "{e:#}");
        assert!(!file.exists() && !part.exists());
        // Whole, but not what the leader announced: refused too.
        std::fs::write(&part, &bytes).unwrap();
        let e = keep_verified(Part { path: part.clone(), kept: false }, &file, LogIndex(10), len).unwrap_err();
        assert!(format!("{e:#}").contains("not the one the leader announced"), "{e:#}");
        assert!(!file.exists() && !part.exists());
        // Whole and as announced: renamed into place.
        std::fs::write(&part, &bytes).unwrap();
        let info = keep_verified(Part { path: part.clone(), kept: false }, &file, LogIndex(9), len).unwrap();
        assert_eq!((info.keys, info.meta.last.index), (2, LogIndex(9)));
        assert_eq!(std::fs::read(&file).unwrap(), bytes);
        assert!(!part.exists());
    }
}
