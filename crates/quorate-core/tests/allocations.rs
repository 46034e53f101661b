//! The hot path allocates at most 2 times per committed entry at 256 concurrent proposers
//! (the command buffer itself is one). Allocation counts are deterministic for a given build,
//! so this is a test, unlike throughput, which lives in `cargo xtask bench core`.

#![allow(unsafe_code, reason = "a counting global allocator needs `unsafe impl GlobalAlloc`")]

use quorate_core::{Config, Instant, Message, Raft, Role};
use quorate_log::{Configuration, Data, LogIndex, MemLog, NodeId};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[path = "support/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::ALLOCATIONS;

const PROPOSERS: usize = 256;
const ENTRIES: usize = 100_000;
const ALLOCATIONS_PER_ENTRY_MAX: f64 = 2.0;

#[test]
fn at_most_two_allocations_per_committed_entry() {
    let ids: Vec<NodeId> = (1..=3).filter_map(NodeId::new).collect();
    let conf = Configuration::with_voters(ids.iter().copied()).expect("three voters");
    let mut nodes: Vec<Raft<MemLog>> = ids
        .iter()
        .map(|id| {
            let mut c = Config::new(*id);
            c.inflight_msgs_max = 4096;
            c.inflight_bytes_max = 1 << 30;
            c.msg_bytes_max = 4 << 20;
            c.uncommitted_bytes_max = 1 << 30;
            c.apply_bytes_max = 64 << 20;
            c.check_quorum = false;
            c.snapshot_entries_threshold = 0;
            Raft::new(c, MemLog::new(conf.clone()), Instant::ZERO).expect("valid")
        })
        .collect();
    let mut inbox: Vec<Message> = Vec::new();
    let mut now = Instant::ZERO;
    let round = |nodes: &mut Vec<Raft<MemLog>>, inbox: &mut Vec<Message>, now: Instant| {
        for m in std::mem::take(inbox) {
            let to = (m.to.get() - 1) as usize;
            nodes[to].handle_message(now, m);
        }
        for r in nodes.iter_mut() {
            for _ in 0..4 {
                if !r.has_ready() {
                    break;
                }
                let rd = r.ready();
                if let Some(p) = rd.persist {
                    if let Some(hs) = p.hard_state {
                        r.storage_mut().set_hard_state(hs);
                    }
                    r.storage_mut().append(&p.entries).expect("contiguous");
                    r.persisted(now, p.io);
                }
                inbox.extend(rd.messages);
            }
        }
    };
    nodes[0].campaign_now(Instant(1));
    for _ in 0..20 {
        now = now.saturating_add(Duration::from_micros(50));
        round(&mut nodes, &mut inbox, now);
    }
    assert_eq!(nodes[0].role(), Role::Leader);
    let payload = vec![7u8; 256];
    let mut inflight: VecDeque<LogIndex> = VecDeque::with_capacity(PROPOSERS);
    let mut done = 0usize;
    // Warm up the buffers, then count.
    let mut before = None;
    while done < ENTRIES {
        if done >= ENTRIES / 10 && before.is_none() {
            before = Some((ALLOCATIONS.load(Ordering::Relaxed), done));
        }
        while inflight.len() < PROPOSERS {
            let id = nodes[0].propose(now, Data::copy_from(&payload)).expect("leader accepts");
            inflight.push_back(id.index);
        }
        now = now.saturating_add(Duration::from_micros(50));
        round(&mut nodes, &mut inbox, now);
        let commit = nodes[0].commit_index();
        while inflight.front().is_some_and(|i| *i <= commit) {
            inflight.pop_front();
            done += 1;
        }
    }
    let (allocs_before, done_before) = before.expect("warm-up finished");
    let per_entry = (ALLOCATIONS.load(Ordering::Relaxed) - allocs_before) as f64 / (done - done_before) as f64;
    assert!(
        per_entry <= ALLOCATIONS_PER_ENTRY_MAX,
        "{per_entry:.2} allocations per committed entry (at most {ALLOCATIONS_PER_ENTRY_MAX})"
    );
}
