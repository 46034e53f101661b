//! RocksDB's own `ENOSPC` on a real, small file system: a tmpfs of a few MiB mounted in a
//! private mount namespace (`unshare --mount`), so it needs `CAP_SYS_ADMIN` (root, or a
//! container that allows it) and is ignored by default; `cargo xtask ci` (which runs as root)
//! runs it as its own step, as does:
//!
//! ```sh
//! cargo nextest run --cargo-profile ci -p quorate-storage -p quorate-node --run-ignored only -E 'test(enospc)'
//! ```
//!
//! The store runs with no free-space floor, so the disk really fills. The write that meets the
//! full disk (here RocksDB's background flush fails first, which stops writes) fails with
//! [`StoreError::NoSpace`] and changes nothing; the store is not poisoned; it is closed and
//! reopened on the full disk (it opens, or refuses with the out-of-space error); once space is
//! freed, RocksDB resumes by itself (its `SstFileManager` polls free space every five seconds)
//! and the same write goes through; every acknowledged entry survives a reopen.

use quorate_log::{Data, Entry, EntryPayload, HardState, LogIndex, LogStorage, NodeId, Term};
use quorate_storage::{PersistBatch, RocksStore, StoreError, StoreOptions, WRITE_BUFFER_BYTES_MIN};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "QUORATE_ENOSPC_CHILD";
/// Size of the tmpfs.
const FS_MB: u64 = 48;

fn entry(index: u64) -> Entry {
    Entry {
        index: LogIndex(index),
        term: Term(1),
        payload: EntryPayload::Command(Data::from(vec![(index % 251) as u8; 4000])),
    }
}

fn batch(from: u64, n: u64) -> PersistBatch {
    PersistBatch::append((from..from + n).map(entry).collect()).with_hard_state(HardState {
        term: Term(1),
        vote: NodeId::new(1),
        commit: LogIndex(from - 1),
    })
}

fn options() -> StoreOptions {
    let mut o = StoreOptions::default();
    o.free_space_floor_bytes = 0;
    o.write_buffer_bytes = WRITE_BUFFER_BYTES_MIN;
    o
}

/// The child's body, run inside the private mount namespace with the tmpfs at `dir`.
fn child(dir: &Path) {
    let store_dir = dir.join("store");
    let store = RocksStore::open(&store_dir, options()).unwrap();
    // Leave about 3 MiB free.
    let mut filler = std::fs::File::create(dir.join("filler")).unwrap();
    let free = store.free_space_bytes().unwrap();
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..(free.saturating_sub(3 << 20) >> 20) {
        filler.write_all(&chunk).unwrap();
    }
    filler.sync_all().unwrap();
    drop(filler);
    println!("free after filling: {} bytes", store.free_space_bytes().unwrap());

    let mut next = 1u64;
    let failed = loop {
        assert!(next < 100_000, "the disk never filled");
        match store.write(batch(next, 16)) {
            Ok(()) => next += 16,
            Err(e) => break e,
        }
    };
    println!("write at {next} failed: {failed}");
    assert!(matches!(failed, StoreError::NoSpace(_)), "not an out-of-space error: {failed}");
    assert!(failed.is_space() && !failed.is_fatal());
    assert_eq!(store.poisoned(), None, "ENOSPC must not poison the store");
    assert!(store.out_of_space().is_some());
    let acked = next - 1;
    assert_eq!(store.last_index(), LogIndex(acked));

    // The reopen path: closed while RocksDB is stopped, reopened on the still full disk. It
    // opens (RocksDB replays the log into memory) or refuses with the out-of-space error,
    // never with a corruption.
    drop(store);
    let store = match RocksStore::open(&store_dir, options()) {
        Ok(s) => {
            println!("reopened on the full disk");
            s
        }
        Err(e) => {
            println!("reopen on the full disk refused: {e}");
            assert!(e.is_space(), "not an out-of-space error: {e}");
            std::fs::remove_file(dir.join("filler")).unwrap();
            RocksStore::open(&store_dir, options()).expect("reopens once space is freed")
        }
    };
    assert_eq!(store.last_index(), LogIndex(acked));
    let _ = std::fs::remove_file(dir.join("filler"));
    let started = Instant::now();
    loop {
        match store.write(batch(next, 16)) {
            Ok(()) => break,
            Err(e) if e.is_space() => {
                if started.elapsed() > Duration::from_secs(60) {
                    let log = std::fs::read_to_string(store_dir.join("db/LOG")).unwrap_or_default();
                    let lines: Vec<&str> = log
                        .lines()
                        .filter(|l| {
                            l.contains("rror") || l.contains("space") || l.contains("ecover") || l.contains("esume")
                        })
                        .collect();
                    panic!("RocksDB did not resume: {e}\n{}", lines[lines.len().saturating_sub(40)..].join("\n"));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("after space was freed: {e}"),
        }
    }
    println!("resumed after {:?}", started.elapsed());
    next += 16;
    for _ in 0..20 {
        store.write(batch(next, 16)).unwrap();
        next += 16;
    }
    drop(store);
    let store = RocksStore::open(&store_dir, options()).unwrap();
    assert_eq!(store.last_index(), LogIndex(next - 1));
    store.verify().unwrap();
    let es = store.entries(LogIndex(1), LogIndex(acked + 1), u64::MAX).unwrap();
    assert_eq!(es.len() as u64, acked);
    assert!(es.iter().all(|e| *e == entry(e.index.0)));
    println!("child ok: {} entries", next - 1);
}

#[test]
#[ignore = "entry point of the child process of `enospc_on_a_real_file_system_is_retried_and_recovers`"]
fn enospc_child_entry_point() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(Path::new(&dir));
    }
}

#[test]
#[ignore = "needs CAP_SYS_ADMIN: mounts a tmpfs in a private mount namespace"]
fn enospc_on_a_real_file_system_is_retried_and_recovers() {
    let base = std::env::temp_dir().join(format!("quorate-enospc-{}", std::process::id()));
    std::fs::create_dir_all(&base).unwrap();
    let exe = std::env::current_exe().unwrap();
    let script = format!(
        "mount -t tmpfs -o size={FS_MB}m tmpfs '{dir}' && exec '{exe}' enospc_child_entry_point --exact --include-ignored --nocapture --test-threads=1",
        dir = base.display(),
        exe = exe.display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env(CHILD_ENV, &base)
        .output()
        .expect("run unshare");
    let _ = std::fs::remove_dir_all(&base);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stdout.contains("child ok"), "child failed ({}):\n{stdout}\n{stderr}", out.status);
    eprintln!("{stdout}");
}
