//! Persist batches are bounded (`Config::persist_entries_max`, `persist_bytes_max`), and a
//! skipped snapshot is asked for again. Found by `cargo xtask chaos soak` (issue 18): a
//! learner added late in a long run received 69,865 entries in one `Ready` and its store
//! refused the batch (its limit is 65,536 entries), which stopped the node; splitting the
//! batch then carried a commit index past the entries written, which the store refused too.

mod support;

use quorate_core::{AppendResponse, MessageBody};
use quorate_log::{LogIndex, LogStorage};
use support::holes::conf;
use support::net::{Net, Prep, append, cmd, msg, n};

const NONE: Prep = |_| {};

/// A follower handed 10 entries at once with `persist_entries_max = 3`: four batches of at
/// most three entries, each carrying a commit index no higher than the last entry written so
/// far; the acknowledgement of all 10 leaves only once the batch that wrote entry 10 is
/// reported.
#[test]
fn a_follower_far_behind_persists_in_batches_within_the_limits() {
    let voters = conf(&[1, 2, 3], &[], &[]);
    let mut net = Net::with_nodes(NONE, &[2], &voters, |c| c.persist_entries_max = 3);
    net.advance(200);
    let entries: Vec<_> = (1..=10).map(|i| cmd(i, 1, "x")).collect();
    net.wire.push(msg(1, 2, 1, append((0, 0), entries, 10)));
    net.deliver(|_| true);
    net.ready(2);
    let sizes: Vec<usize> = net.node(2).disk.iter().map(|p| p.entries.len()).collect();
    assert_eq!(sizes, [3, 3, 3, 1], "10 entries in batches of at most 3");
    let mut last = 0;
    for p in &net.node(2).disk {
        last = p.entries.last().map_or(last, |e| e.index.0);
        if let Some(hs) = p.hard_state {
            assert!(hs.commit.0 <= last, "batch {:?} carries commit {} past its last entry {last}", p.io, hs.commit);
        }
    }
    let acks = |net: &Net| {
        net.wire
            .iter()
            .filter_map(|m| match &m.body {
                MessageBody::AppendResponse(AppendResponse::Accepted { match_index }) => Some(match_index.0),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    // Write and report the first three batches: entry 10 is not durable, nothing acknowledges it.
    let now = net.now;
    for p in net.write(2, 3) {
        net.raft(2).persisted(now, p.io);
    }
    net.ready(2);
    assert!(acks(&net).iter().all(|&m| m <= 9), "an acknowledgement past the durable log: {:?}", acks(&net));
    net.persist(2);
    net.ready(2);
    assert!(acks(&net).contains(&10), "the acknowledgement of 10 leaves once it is durable: {:?}", acks(&net));
    assert_eq!(net.raft(2).storage().last_index(), LogIndex(10));
    assert_eq!(net.raft(2).storage().hard_state().commit, LogIndex(10));
}

/// The byte limit: batches of at most `persist_bytes_max` bytes, but never an empty one.
#[test]
fn the_byte_limit_splits_batches_but_always_writes_one_entry() {
    let voters = conf(&[1, 2, 3], &[], &[]);
    let mut net = Net::with_nodes(NONE, &[2], &voters, |c| c.persist_bytes_max = 1);
    net.advance(200);
    let entries: Vec<_> = (1..=4).map(|i| cmd(i, 1, "value")).collect();
    net.wire.push(msg(1, 2, 1, append((0, 0), entries, 4)));
    net.deliver(|_| true);
    net.ready(2);
    let sizes: Vec<usize> = net.node(2).disk.iter().map(|p| p.entries.len()).collect();
    assert_eq!(sizes, [1, 1, 1, 1], "one entry per batch when each is over the byte limit");
}

/// A snapshot request the application skipped (no disk space) is asked for again after the
/// next applied entry; before `snapshot_skipped` existed the request stayed outstanding and
/// a node without an earlier snapshot was never asked again.
#[test]
fn a_skipped_snapshot_is_asked_for_again() {
    let voters = conf(&[1, 2, 3], &[], &[]);
    let mut net = Net::with_nodes(NONE, &[1, 2, 3], &voters, |c| c.snapshot_entries_threshold = 2);
    net.elect(1);
    let propose = |net: &mut Net, k: &str| {
        let now = net.now;
        net.raft(1).propose(now, quorate_log::Data::from(k)).expect("accepted");
        net.settle(50, |_| true);
    };
    propose(&mut net, "a");
    propose(&mut net, "b");
    assert_eq!(net.node(1).snapshot_requests.len(), 1, "asked once the threshold is passed");
    propose(&mut net, "c");
    assert_eq!(net.node(1).snapshot_requests.len(), 1, "still outstanding: not asked twice");
    let now = net.now;
    net.raft(1).snapshot_skipped(now);
    propose(&mut net, "d");
    assert_eq!(net.node(1).snapshot_requests.len(), 2, "asked again after a skip");
}

/// A node whose state machine survives restarts (the node's, in RocksDB: `Config::applied`)
/// counts the entries applied since its last snapshot across a restart. Before, the count
/// started at 0 at every start: in `cargo xtask chaos soak` (issue 18; 30 minutes, every node
/// killed or crashed every minute or two) no node ever applied `snapshot_entries` (100,000)
/// entries within one run of its process, so none took a snapshot or compacted its log; the
/// log grew to 800,000 entries, and each start read all of it (1.2 s and growing).
#[test]
fn entries_applied_before_a_restart_count_toward_the_snapshot_threshold() {
    let requests =
        across_a_restart(|c| c.snapshot_entries_threshold = 10, |i| quorate_log::Data::from(format!("k{i}").as_str()));
    assert_eq!(
        requests,
        (0, 1),
        "due only after the restart: 10 entries applied since the (absent) snapshot, 3 since the restart"
    );
}

/// The same for the byte threshold: 1,000-byte commands, a snapshot due after 7,000 bytes.
#[test]
fn bytes_applied_before_a_restart_count_toward_the_snapshot_threshold() {
    let tune = |c: &mut quorate_core::Config| {
        c.snapshot_entries_threshold = 0;
        c.snapshot_bytes_threshold = 7_000;
    };
    let requests = across_a_restart(tune, |_| quorate_log::Data::from(vec![7u8; 1000]));
    // 6,192 bytes (6 commands and the no-op, 24 bytes of overhead each) before the restart;
    // 2,072 after it, 8,264 since the start of the log.
    assert_eq!(requests, (0, 1), "due only after the restart: 8,264 bytes applied since the (absent) snapshot");
}

/// Node 1 leads and applies 6 commands (7 entries with its no-op), restarts with its state
/// machine intact (applied through 7), and applies 3 more entries (a new leader's no-op and
/// 2 commands). Node 1's snapshot requests before and after the restart.
fn across_a_restart(
    tune: fn(&mut quorate_core::Config),
    command: impl Fn(usize) -> quorate_log::Data,
) -> (usize, usize) {
    let voters = conf(&[1, 2, 3], &[], &[]);
    let mut net = Net::with_nodes(NONE, &[1, 2, 3], &voters, tune);
    net.elect(1);
    for i in 0..6 {
        let now = net.now;
        net.raft(1).propose(now, command(i)).expect("accepted");
        net.settle(50, |_| true);
    }
    let before = net.node(1).snapshot_requests.len();
    let applied = net.raft(1).commit_index();
    assert_eq!(applied, LogIndex(7));
    let (now, storage) = (net.now, net.raft(1).storage().clone());
    let node = net.node(1);
    node.cfg.applied = applied;
    node.disk.clear();
    node.applied.clear();
    node.raft = quorate_core::Raft::new(node.cfg.clone(), storage, now).expect("restarts");
    net.wire.retain(|m| m.to != n(1));
    let led = net.run_until(
        500,
        |_| true,
        |net| net.leaders().len() == 1 && net.nodes.values().all(|x| x.raft.commit_index() >= LogIndex(8)),
    );
    assert!(led, "a new leader commits its no-op");
    let leader = net.leaders()[0].get();
    for i in 6..8 {
        let now = net.now;
        net.raft(leader).propose(now, command(i)).expect("accepted");
        net.settle(50, |_| true);
    }
    let last = net.node(1).applied.last().map(|e| e.index);
    assert_eq!(last, Some(LogIndex(10)), "node 1 applied through 10");
    (before, net.node(1).snapshot_requests.len())
}
