//! The async [`Node`] and its [`Handle`]: three replicas on the in-memory network, a fourth
//! joining as a learner and promoted, a leadership transfer, a snapshot on demand, reads at
//! both levels and a graceful shutdown.

use quorate_log::{Configuration, LogIndex, NodeId};
use quorate_runtime::{
    Committed, Config, Error, Handle, MemRouter, MemStorage, Node, ReadLevel, RestoreError, Role, StateMachine,
    SystemClock,
};
use std::time::Duration;

#[derive(Default)]
struct Counter {
    value: u64,
    applied: LogIndex,
}

impl StateMachine for Counter {
    type Output = u64;
    fn apply(&mut self, batch: &[Committed<'_>]) -> Vec<u64> {
        batch
            .iter()
            .map(|c| {
                self.value += c.command.iter().map(|b| u64::from(*b)).sum::<u64>();
                self.applied = c.index;
                self.value
            })
            .collect()
    }
    fn snapshot(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        out.write_all(&self.value.to_le_bytes())
    }
    fn restore(&mut self, applied: LogIndex, image: &mut dyn std::io::Read) -> Result<(), RestoreError> {
        let mut bytes = [0u8; 8];
        image.read_exact(&mut bytes)?;
        *self = Counter { value: u64::from_le_bytes(bytes), applied };
        Ok(())
    }
    fn applied(&self) -> LogIndex {
        self.applied
    }
}

fn nid(i: u64) -> NodeId {
    NodeId::new(i).expect("non-zero")
}

fn start(id: NodeId, conf: Configuration, router: &MemRouter) -> Node<Counter> {
    let mut cfg = Config::new(id);
    cfg.raft.election_timeout_min = Duration::from_millis(100);
    cfg.raft.heartbeat_interval = Duration::from_millis(20);
    let node = Node::start(cfg, MemStorage::new(conf), Counter::default(), router.endpoint(), SystemClock::new())
        .expect("starts");
    router.register(id, node.inbox());
    node
}

const PATIENCE: Duration = Duration::from_secs(20);

/// The handle of the node that reports itself leader (waiting for one).
async fn leader(handles: &[Handle<Counter>]) -> Handle<Counter> {
    tokio::time::timeout(PATIENCE, async {
        loop {
            for h in handles {
                let mut rx = h.status();
                if tokio::time::timeout(Duration::from_millis(50), rx.wait_for(|s| s.role == Role::Leader))
                    .await
                    .is_ok()
                {
                    return h.clone();
                }
            }
        }
    })
    .await
    .expect("a leader within the patience")
}

/// Retries `f` on the current leader while it answers "not the leader" (or is busy
/// catching a learner up).
async fn on_leader<T, F, Fut>(handles: &[Handle<Counter>], mut f: F) -> T
where
    F: FnMut(Handle<Counter>) -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    tokio::time::timeout(PATIENCE, async {
        loop {
            match f(leader(handles).await).await {
                Ok(v) => return v,
                Err(e) => assert!(!matches!(e, Error::Halted(_) | Error::Shutdown), "{e}"),
            }
        }
    })
    .await
    .expect("succeeds on a leader within the patience")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_serves_changes_membership_transfers_snapshots_and_shuts_down() {
    let router = MemRouter::new();
    let voters = Configuration::with_voters([nid(1), nid(2), nid(3)]).expect("valid");
    let mut nodes: Vec<Node<Counter>> = (1..=3).map(|i| start(nid(i), voters.clone(), &router)).collect();
    let mut handles: Vec<Handle<Counter>> = nodes.iter().map(Node::handle).collect();

    assert_eq!(on_leader(&handles, |h| async move { h.propose([4u8]).await }).await, 4);

    // A fourth node joins empty, as a learner, catches up, and is promoted.
    nodes.push(start(nid(4), Configuration::default(), &router));
    handles.push(nodes[3].handle());
    on_leader(&handles, |h| async move { h.add_learner(nid(4)).await }).await;
    on_leader(&handles, |h| async move { h.promote(nid(4)).await }).await;
    let mut s4 = handles[3].status();
    tokio::time::timeout(PATIENCE, s4.wait_for(|s| s.config.is_voter(nid(4)) && s.applied >= LogIndex(1)))
        .await
        .expect("node 4 learns it is a voter")
        .expect("node 4 runs");
    let stale = handles[3].read(ReadLevel::Stale, |c: &Counter| c.value).await.expect("a stale read");
    assert!(stale <= 4);

    // Leadership moves where it is asked to.
    let target = on_leader(&handles, |h| async move {
        let target = if h.status().borrow().id == nid(2) { nid(3) } else { nid(2) };
        h.transfer_leader(target).await.map(|()| target)
    })
    .await;
    let mut st = handles[(target.get() - 1) as usize].status();
    tokio::time::timeout(PATIENCE, st.wait_for(|s| s.role == Role::Leader))
        .await
        .expect("the target becomes leader")
        .expect("it runs");

    // Exactly-once across a retry, then a snapshot on demand.
    let session = on_leader(&handles, |h| async move { h.open_session().await }).await;
    let first = on_leader(&handles, |h| async move { h.propose_in_session(session, 1, [6u8]).await }).await;
    let again = on_leader(&handles, |h| async move { h.propose_in_session(session, 1, [6u8]).await }).await;
    assert_eq!((first, again), (10, 10));
    let at = on_leader(&handles, |h| async move { h.snapshot_now().await }).await;
    assert!(at > LogIndex(0));

    // A linearizable read on the newest member sees every acknowledged write.
    let seen = handles[3].read(ReadLevel::Linearizable, |c: &Counter| c.value).await;
    assert_eq!(seen, Ok(10));

    // Graceful shutdown: afterwards the handle answers `Shutdown`.
    let h4 = handles[3].clone();
    nodes.pop().expect("node 4").shutdown().await;
    assert_eq!(h4.propose([1u8]).await, Err(Error::Shutdown));
    for n in nodes {
        n.shutdown().await;
    }
}

/// A gate a state machine's `apply` waits at while it is closed (at most twice `PATIENCE`,
/// so a failing test cannot hang).
#[derive(Default)]
struct Gate {
    closed: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
}

impl Gate {
    fn set(&self, closed: bool) {
        *self.closed.lock().expect("unpoisoned") = closed;
        self.opened.notify_all();
    }

    fn pass(&self) {
        let closed = self.closed.lock().expect("unpoisoned");
        drop(self.opened.wait_timeout_while(closed, 2 * PATIENCE, |c| *c).expect("unpoisoned"));
    }
}

/// A counter whose `apply` waits at its gate.
struct Gated {
    counter: Counter,
    gate: std::sync::Arc<Gate>,
}

impl StateMachine for Gated {
    type Output = u64;
    fn apply(&mut self, batch: &[Committed<'_>]) -> Vec<u64> {
        self.gate.pass();
        self.counter.apply(batch)
    }
    fn snapshot(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        self.counter.snapshot(out)
    }
    fn restore(&mut self, applied: LogIndex, image: &mut dyn std::io::Read) -> Result<(), RestoreError> {
        self.counter.restore(applied, image)
    }
    fn applied(&self) -> LogIndex {
        self.counter.applied
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_acknowledge_and_learn_commits_while_their_state_machines_are_stuck() {
    let router = MemRouter::new();
    let voters = Configuration::with_voters([nid(1), nid(2), nid(3)]).expect("valid");
    let gates: Vec<std::sync::Arc<Gate>> = (0..3).map(|_| std::sync::Arc::default()).collect();
    let nodes: Vec<Node<Gated>> = (1..=3u64)
        .map(|i| {
            let mut cfg = Config::new(nid(i));
            cfg.raft.election_timeout_min = Duration::from_millis(100);
            cfg.raft.heartbeat_interval = Duration::from_millis(20);
            let sm = Gated { counter: Counter::default(), gate: gates[(i - 1) as usize].clone() };
            let node = Node::start(cfg, MemStorage::new(voters.clone()), sm, router.endpoint(), SystemClock::new())
                .expect("starts");
            router.register(nid(i), node.inbox());
            node
        })
        .collect();
    let handles: Vec<Handle<Gated>> = nodes.iter().map(Node::handle).collect();
    let first = tokio::time::timeout(PATIENCE, async {
        loop {
            for h in &handles {
                if let Ok(v) = h.propose([1u8]).await {
                    return (h.clone(), v);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a write within the patience");
    let (leader, value) = first;
    assert_eq!(value, 1);
    let leader_id = leader.status().borrow().id;
    // Both followers' state machines stop applying; their nodes go on replicating.
    let followers: Vec<usize> = (0..3).filter(|i| nid(*i as u64 + 1) != leader_id).collect();
    for f in &followers {
        gates[*f].set(true);
    }
    // Three voters: each commit needs a follower's acknowledgement (and the gates hold
    // longer than this waits).
    tokio::time::timeout(PATIENCE, async {
        for k in 2..=11u64 {
            assert_eq!(leader.propose([1u8]).await, Ok(k), "committed while the followers cannot apply");
        }
    })
    .await
    .expect("ten writes commit while the followers' state machines are stuck");
    let commit = leader.status().borrow().commit;
    for f in &followers {
        let mut st = handles[*f].status();
        let s = tokio::time::timeout(PATIENCE, st.wait_for(|s| s.commit >= commit))
            .await
            .expect("the follower learns the commit index")
            .expect("it runs")
            .clone();
        assert!(s.applied < commit, "node {} applied {} of {commit} behind its gate", f + 1, s.applied);
    }
    for f in &followers {
        gates[*f].set(false);
    }
    for f in &followers {
        let mut st = handles[*f].status();
        tokio::time::timeout(PATIENCE, st.wait_for(|s| s.applied >= commit))
            .await
            .expect("the follower applies once its gate opens")
            .expect("it runs");
        assert_eq!(handles[*f].read(ReadLevel::Stale, |g: &Gated| g.counter.value).await, Ok(11));
    }
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_reaches_its_core_wrapper_in_the_nodes_task() {
    let router = MemRouter::new();
    let voters = Configuration::with_voters([nid(1)]).expect("valid");
    let node = start(nid(1), voters, &router);
    let h = node.handle();
    on_leader(std::slice::from_ref(&h), |h| async move { h.propose([1u8]).await }).await;
    // `Node::start` runs the core as it is: a `Raft` over the node's storage.
    let (term, commit) = h
        .with_core(|raft: &mut quorate_core::Raft<MemStorage>| (raft.term(), raft.commit_index()))
        .await
        .expect("the node's core is a Raft");
    assert!(term.0 >= 1);
    assert_eq!(commit, h.status().borrow().commit);
    assert_eq!(h.with_core(|_: &mut u32| ()).await, Err(Error::CoreType));
    // A panic in the closure may leave the wrapper half-changed: the node halts.
    let panicked = h.with_core(|_: &mut quorate_core::Raft<MemStorage>| -> u8 { panic!("boom in a core closure") });
    assert_eq!(panicked.await, Err(Error::OutcomeUnknown));
    let halted = halted_reason(&h).await;
    assert!(halted.contains("panicked: boom in a core closure"), "{halted:?}");
    node.shutdown().await;
    assert_eq!(h.with_core(|_: &mut u32| ()).await, Err(Error::Shutdown));
}

/// Why the node of `h` halted (waiting for it, within the patience).
async fn halted_reason<SM: StateMachine>(h: &Handle<SM>) -> String {
    let mut st = h.status();
    let status = tokio::time::timeout(PATIENCE, st.wait_for(|s| s.halted.is_some()))
        .await
        .expect("the node halts")
        .expect("its status is published")
        .clone();
    status.halted.unwrap_or_default()
}

/// A counter that panics on the command `[0xFF]`.
struct Fragile(Counter);

impl StateMachine for Fragile {
    type Output = u64;
    fn apply(&mut self, batch: &[Committed<'_>]) -> Vec<u64> {
        assert!(batch.iter().all(|c| c.command != [0xFF]), "boom: a bug in the state machine");
        self.0.apply(batch)
    }
    fn snapshot(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        self.0.snapshot(out)
    }
    fn restore(&mut self, applied: LogIndex, image: &mut dyn std::io::Read) -> Result<(), RestoreError> {
        self.0.restore(applied, image)
    }
    fn applied(&self) -> LogIndex {
        self.0.applied
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_state_machine_halts_the_node_with_its_message() {
    let router = MemRouter::new();
    let mut cfg = Config::new(nid(1));
    cfg.raft.election_timeout_min = Duration::from_millis(100);
    cfg.raft.heartbeat_interval = Duration::from_millis(20);
    let voters = Configuration::with_voters([nid(1)]).expect("valid");
    let node =
        Node::start(cfg, MemStorage::new(voters), Fragile(Counter::default()), router.endpoint(), SystemClock::new())
            .expect("starts");
    let h = node.handle();
    let first = tokio::time::timeout(PATIENCE, async {
        loop {
            match h.propose([2u8]).await {
                Ok(v) => return v,
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
    .await
    .expect("a write within the patience");
    assert_eq!(first, 2);
    let err = h.propose([0xFFu8]).await.expect_err("the state machine panicked on it");
    assert!(err.outcome_unknown(), "{err}");
    let halted = halted_reason(&h).await;
    assert!(halted.contains("panicked") && halted.contains("boom"), "{halted}");
    assert!(matches!(h.propose([1u8]).await, Err(Error::Halted(_))));
    node.shutdown().await;
}
