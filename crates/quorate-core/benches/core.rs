//! `cargo xtask bench core`: three in-memory cores driven without I/O on one thread.
//!
//! Closed loop: P proposers each keep one 256-byte command in flight; a proposer proposes
//! again as soon as its command is applied on the leader. Every driver round delivers all
//! pending messages and completes all persist batches at once; one round stands for one
//! network hop of 50 µs of simulated time, so the simulated latency is rounds × 50 µs.
//! Reports committed entries per second of wall time, simulated latency (p50/p99) and heap
//! allocations per committed entry (counted by a wrapping global allocator).
//!
//! Options: `--entries N` (committed entries per case, default 1,000,000),
//! `--runs R` (repetitions per case, median reported, default 3), `--proposers a,b,c`.

#![allow(unsafe_code, reason = "a counting global allocator needs `unsafe impl GlobalAlloc`")]
#![allow(missing_docs, reason = "bench binary")]

use quorate_core::{Config, Instant, Message, Raft, Role};
use quorate_log::{Configuration, Data, EntryId, LogIndex, LogStorage, MemLog, NodeId, SnapshotMeta};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[path = "../tests/support/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::ALLOCATIONS;

const HOP_US: u64 = 50;
const COMMAND_BYTES: usize = 256;
/// Entries kept in each in-memory log; older ones are compacted away so memory stays flat.
const LOG_TAIL_KEPT: u64 = 50_000;

struct Cluster {
    nodes: Vec<Raft<MemLog>>,
    inbox: Vec<Message>,
    now: Instant,
}

impl Cluster {
    fn new() -> Cluster {
        let ids: Vec<NodeId> = (1..=3).filter_map(NodeId::new).collect();
        let conf = Configuration::with_voters(ids.iter().copied()).expect("three voters");
        let nodes = ids
            .iter()
            .map(|id| {
                let mut c = Config::new(*id);
                c.inflight_msgs_max = 4096;
                c.inflight_bytes_max = 1 << 30;
                c.msg_bytes_max = 4 << 20;
                c.uncommitted_bytes_max = 1 << 30;
                c.apply_bytes_max = 64 << 20;
                c.check_quorum = false;
                Raft::new(c, MemLog::new(conf.clone()), Instant::ZERO).expect("valid config")
            })
            .collect();
        Cluster { nodes, inbox: Vec::new(), now: Instant::ZERO }
    }

    /// One round: every node hands out its Ready; persist completes at once; messages are
    /// queued for the next round. Returns the entries the leader (node 0) applied.
    fn round(&mut self, applied_on_leader: &mut u64) {
        self.now = self.now.saturating_add(Duration::from_micros(HOP_US));
        let now = self.now;
        for m in std::mem::take(&mut self.inbox) {
            let to = (m.to.get() - 1) as usize;
            self.nodes[to].handle_message(now, m);
        }
        for (i, r) in self.nodes.iter_mut().enumerate() {
            for _ in 0..4 {
                if !r.has_ready() {
                    break;
                }
                let rd = r.ready();
                if let Some(p) = rd.persist {
                    let s = r.storage_mut();
                    if let Some(hs) = p.hard_state {
                        s.set_hard_state(hs);
                    }
                    s.append(&p.entries).expect("contiguous batch");
                    r.persisted(now, p.io);
                }
                self.inbox.extend(rd.messages);
                if i == 0 {
                    *applied_on_leader += rd.committed.len() as u64;
                }
                if let Some(last) = rd.committed.last()
                    && last.index.0 % 8192 < rd.committed.len() as u64
                {
                    compact(r.storage_mut(), last.index);
                }
            }
        }
    }
}

fn compact(log: &mut MemLog, applied: LogIndex) {
    if applied.0 <= LOG_TAIL_KEPT {
        return;
    }
    let to = LogIndex(applied.0 - LOG_TAIL_KEPT);
    if let Ok(term) = log.term(to) {
        let config = log.snapshot_meta().config.clone();
        log.apply_snapshot(SnapshotMeta { last: EntryId::new(term, to), config });
    }
}

struct CaseResult {
    entries_per_s: f64,
    allocs_per_entry: f64,
    p50_us: u64,
    p99_us: u64,
}

fn run_case(proposers: usize, entries: u64) -> CaseResult {
    let mut c = Cluster::new();
    // Elect node 1.
    c.nodes[0].campaign_now(Instant(1));
    let mut sink = 0;
    for _ in 0..20 {
        c.round(&mut sink);
    }
    assert_eq!(c.nodes[0].role(), Role::Leader, "node 1 must lead");
    let payload = vec![7u8; COMMAND_BYTES];
    // Proposals in flight: (index, round proposed), in index order.
    let mut inflight: VecDeque<(LogIndex, u64)> = VecDeque::with_capacity(proposers);
    let mut latencies: Vec<u64> = Vec::with_capacity(entries as usize + proposers);
    let mut idle = proposers;
    let mut applied = 0u64;
    let mut round = 0u64;
    let allocs_before = ALLOCATIONS.load(Ordering::Relaxed);
    let started = std::time::Instant::now();
    while (latencies.len() as u64) < entries {
        let now = c.now;
        while idle > 0 {
            // Each command is a fresh buffer, as a client request would be.
            let id = c.nodes[0].propose(now, Data::copy_from(&payload)).expect("leader accepts");
            inflight.push_back((id.index, round));
            idle -= 1;
        }
        c.round(&mut applied);
        round += 1;
        // Everything up to the leader's commit index was handed out to apply this round
        // (apply_bytes_max is far above one round's worth).
        let commit = c.nodes[0].commit_index();
        while let Some(&(idx, r)) = inflight.front() {
            if idx > commit {
                break;
            }
            inflight.pop_front();
            latencies.push((round - r) * HOP_US);
            idle += 1;
        }
    }
    let elapsed = started.elapsed();
    let allocs = ALLOCATIONS.load(Ordering::Relaxed) - allocs_before;
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
    CaseResult {
        entries_per_s: latencies.len() as f64 / elapsed.as_secs_f64(),
        allocs_per_entry: allocs as f64 / latencies.len() as f64,
        p50_us: pct(0.5),
        p99_us: pct(0.99),
    }
}

fn main() {
    let mut entries = 1_000_000u64;
    let mut runs = 3usize;
    let mut proposers = vec![1usize, 64, 256, 1024];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--entries" => entries = args.next().and_then(|v| v.parse().ok()).unwrap_or(entries),
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).unwrap_or(runs),
            "--proposers" => {
                if let Some(v) = args.next() {
                    proposers = v.split(',').filter_map(|p| p.parse().ok()).collect();
                }
            }
            // `cargo bench` passes `--bench`; ignore it and anything unknown.
            _ => {}
        }
    }
    println!(
        "quorate-core: 3 in-memory cores, one thread, {COMMAND_BYTES}-byte commands, {runs} runs per case (median)"
    );
    println!("{:>10} {:>16} {:>14} {:>12} {:>12}", "proposers", "entries/s", "allocs/entry", "p50 (sim)", "p99 (sim)");
    for p in proposers {
        // One round per proposal at P = 1 makes that case slow to measure: bound it.
        let n = if p == 1 { entries.min(100_000) } else { entries };
        let mut results: Vec<CaseResult> = (0..runs.max(1)).map(|_| run_case(p, n)).collect();
        results.sort_by(|a, b| a.entries_per_s.total_cmp(&b.entries_per_s));
        let m = &results[results.len() / 2];
        println!(
            "{:>10} {:>16.0} {:>14.2} {:>10}µs {:>10}µs",
            p, m.entries_per_s, m.allocs_per_entry, m.p50_us, m.p99_us
        );
    }
}
