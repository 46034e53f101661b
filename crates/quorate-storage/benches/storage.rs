//! Storage benchmark: raw fsync rate of the disk versus durable appends through
//! `RocksStore::write` and the `GroupCommitter`.
//!
//! Run with `cargo xtask bench storage`. Each case runs for `QUORATE_BENCH_SECS` seconds
//! (default 3) or its iteration bound, whichever comes first, `QUORATE_BENCH_RUNS` times
//! (default 5), round-robin over the cases; the table shows medians and ranges. Files go to a temporary directory under the target
//! directory (or the system's), removed at the end.

use quorate_log::{Data, Entry, EntryPayload, LogIndex, LogStorage, Term};
use quorate_storage::{GroupCommitter, GroupOptions, PersistBatch, RocksStore, StoreOptions};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PAYLOAD_BYTES: usize = 256;
const RAW_WRITE_BYTES: usize = 4096;
/// Upper bound on iterations of one timed run (batches written, or fsyncs).
const ITERATIONS_MAX: u64 = 1_000_000;

struct Config {
    secs: f64,
    runs: usize,
    dir: PathBuf,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn bench_root() -> PathBuf {
    // `cargo bench` runs from the package directory; the target directory is the natural
    // place for scratch files on the same disk as the build.
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    base.join(format!("quorate-storage-bench-{}", std::process::id()))
}

/// The median (upper median for an even count); NaN if any value is NaN.
fn median(mut v: Vec<f64>) -> f64 {
    if v.iter().any(|x| x.is_nan()) {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A timed loop: calls `step` until the time or iteration bound; returns (iterations, seconds).
fn timed(secs: f64, mut step: impl FnMut(u64)) -> (u64, f64) {
    let limit = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut n = 0;
    while n < ITERATIONS_MAX && start.elapsed() < limit {
        step(n);
        n += 1;
    }
    (n, start.elapsed().as_secs_f64())
}

fn raw_fsync_rate(cfg: &Config, run: usize) -> f64 {
    let path = cfg.dir.join(format!("raw-fsync-{run}"));
    let mut f =
        OpenOptions::new().create(true).truncate(true).write(true).open(&path).expect("create the raw fsync file");
    let block = [0x5au8; RAW_WRITE_BYTES];
    let (n, secs) = timed(cfg.secs, |_| {
        f.write_all(&block).expect("write");
        f.sync_data().expect("fdatasync");
    });
    drop(f);
    let _ = std::fs::remove_file(&path);
    n as f64 / secs
}

/// Like [`raw_fsync_rate`], but overwriting 4 KiB blocks of a preallocated, already-synced
/// 16 MiB file in turn, so that `fdatasync` has no file-size metadata to write: the best case
/// for the device.
fn raw_overwrite_fsync_rate(cfg: &Config, run: usize) -> f64 {
    use std::os::unix::fs::FileExt;
    const FILE_BYTES: u64 = 16 << 20;
    let path = cfg.dir.join(format!("raw-overwrite-{run}"));
    let mut f =
        OpenOptions::new().create(true).truncate(true).write(true).open(&path).expect("create the raw fsync file");
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..FILE_BYTES / (1 << 20) {
        f.write_all(&zeros).expect("preallocate");
    }
    f.sync_all().expect("fsync");
    let block = [0x5au8; RAW_WRITE_BYTES];
    let blocks = FILE_BYTES / RAW_WRITE_BYTES as u64;
    let (n, secs) = timed(cfg.secs, |i| {
        f.write_all_at(&block, (i % blocks) * RAW_WRITE_BYTES as u64).expect("write");
        f.sync_data().expect("fdatasync");
    });
    drop(f);
    let _ = std::fs::remove_file(&path);
    n as f64 / secs
}

fn entry(index: u64) -> Entry {
    Entry {
        index: LogIndex(index),
        term: Term(1),
        payload: EntryPayload::Command(Data::from(vec![(index % 251) as u8; PAYLOAD_BYTES])),
    }
}

fn open_store(dir: &Path) -> RocksStore {
    let _ = std::fs::remove_dir_all(dir);
    let mut o = StoreOptions::default();
    o.free_space_floor_bytes = 0;
    RocksStore::open(dir, o).expect("open the store")
}

/// Entries per second through `RocksStore::write`, `batch` entries per fsynced write.
fn store_rate(cfg: &Config, run: usize, batch: u64) -> (f64, f64) {
    let dir = cfg.dir.join(format!("store-{batch}-{run}"));
    let store = open_store(&dir);
    let mut next = 1u64;
    let (n, secs) = timed(cfg.secs, |_| {
        let entries = (next..next + batch).map(entry).collect();
        store.write(PersistBatch::append(entries)).expect("durable write");
        next += batch;
    });
    assert_eq!(store.last_index(), LogIndex(next - 1));
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    (n as f64 * batch as f64 / secs, n as f64 / secs)
}

/// Entries per second with `threads` submitters each waiting for its own one-entry batch.
fn group_rate(cfg: &Config, run: usize, threads: usize) -> f64 {
    let dir = cfg.dir.join(format!("group-{threads}-{run}"));
    let store = Arc::new(open_store(&dir));
    let g = Arc::new(GroupCommitter::new(Arc::clone(&store), GroupOptions::default()).unwrap());
    // Index allocation and submission happen under one lock so that batches arrive in order.
    let next = Arc::new(Mutex::new(1u64));
    let start = Instant::now();
    let limit = Duration::from_secs_f64(cfg.secs);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let g = Arc::clone(&g);
            let next = Arc::clone(&next);
            std::thread::spawn(move || {
                let mut done = 0u64;
                while done < ITERATIONS_MAX && start.elapsed() < limit {
                    let c = {
                        let mut n = next.lock().unwrap();
                        let c = g.submit(PersistBatch::append(vec![entry(*n)])).unwrap();
                        *n += 1;
                        c
                    };
                    c.wait().expect("durable write");
                    done += 1;
                }
                done
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let secs = start.elapsed().as_secs_f64();
    drop(g);
    assert_eq!(store.last_index(), LogIndex(total));
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    total as f64 / secs
}

fn main() {
    // `cargo bench` passes `--bench`; there are no other arguments to honour.
    let cfg = Config {
        secs: env_or("QUORATE_BENCH_SECS", 3.0),
        runs: env_or("QUORATE_BENCH_RUNS", 5usize).max(1),
        dir: bench_root(),
    };
    std::fs::create_dir_all(&cfg.dir).expect("create the bench directory");
    println!(
        "quorate-storage bench: {} run(s) of {:.1} s per case, {PAYLOAD_BYTES}-byte entries, dir {}",
        cfg.runs,
        cfg.secs,
        cfg.dir.display()
    );

    // Cases run round-robin (every case once per round), so that a change in the machine's
    // load during the benchmark affects all cases alike; the ratios are taken per round.
    let names = [
        "raw: append 4 KiB + fdatasync",
        "raw: overwrite 4 KiB of a preallocated file + fdatasync",
        "write, batch 1",
        "write, batch 16",
        "write, batch 256",
        "group commit, 4 submitters x 1 entry",
        "group commit, 16 submitters x 1 entry",
    ];
    // Per case and round: (entries/s, fsyncs/s); NaN where it does not apply.
    let mut results: Vec<Vec<(f64, f64)>> = vec![Vec::new(); names.len()];
    for r in 0..cfg.runs {
        results[0].push((f64::NAN, raw_fsync_rate(&cfg, r)));
        results[1].push((f64::NAN, raw_overwrite_fsync_rate(&cfg, r)));
        for (k, batch) in [(2, 1u64), (3, 16), (4, 256)] {
            results[k].push(store_rate(&cfg, r, batch));
        }
        for (k, threads) in [(5, 4usize), (6, 16)] {
            results[k].push((group_rate(&cfg, r, threads), f64::NAN));
        }
    }
    let _ = std::fs::remove_dir_all(&cfg.dir);

    let fmt = |x: f64| if x.is_nan() { "-".to_owned() } else { format!("{x:.0}") };
    println!();
    println!("| case | entries/s (median) | entries/s (min-max) | MB/s of payload | fsyncs/s |");
    println!("|---|---:|---:|---:|---:|");
    for (name, rs) in names.iter().zip(&results) {
        let eps = median(rs.iter().map(|r| r.0).collect());
        let lo = rs.iter().map(|r| r.0).fold(f64::INFINITY, f64::min);
        let hi = rs.iter().map(|r| r.0).fold(f64::NEG_INFINITY, f64::max);
        let range = if eps.is_nan() { "-".to_owned() } else { format!("{lo:.0}-{hi:.0}") };
        let mbps = if eps.is_nan() { "-".to_owned() } else { format!("{:.1}", eps * PAYLOAD_BYTES as f64 / 1e6) };
        let fps = median(rs.iter().map(|r| r.1).collect());
        println!("| {name} | {} | {range} | {mbps} | {} |", fmt(eps), fmt(fps));
    }

    let ratio = |k: usize, base: usize| median(results[k].iter().zip(&results[base]).map(|(a, b)| a.1 / b.1).collect());
    let b1_append = ratio(2, 0);
    let b1_overwrite = ratio(2, 1);
    let b256 = median(results[4].iter().map(|r| r.0).collect());
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!();
    println!(
        "target batch 1 >= 80% of the raw fsync rate (append 4 KiB): {:.0}% (median of per-round ratios) -> {}",
        100.0 * b1_append,
        verdict(b1_append >= 0.8)
    );
    println!(
        "  against the preallocated-overwrite rate: {:.0}% -> {}",
        100.0 * b1_overwrite,
        verdict(b1_overwrite >= 0.8)
    );
    println!("target batch 256 >= 150000 entries/s: {b256:.0} -> {}", verdict(b256 >= 150_000.0));
}
