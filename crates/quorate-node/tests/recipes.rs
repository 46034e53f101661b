//! The client's lock and election recipes (`quorate_client::recipes`, `quorate lock`,
//! `quorate elect`) on real 3-node clusters of `quorate` processes on 127.0.0.1 (issue 22):
//! two lockers take turns and every round's increment through the fence counts, with tokens
//! that only grow; a holder whose lease expires (its keep-alive stopped) or is revoked loses
//! the lock to the next waiter within the lease bound, and its stale writes are refused; two
//! candidates, the second elected once the first's process is killed, with an observer seeing
//! both in order; `quorate lock NAME -- COMMAND` runs the command with the lock's key and
//! token in its environment.

use quorate_client::recipes::{Fence, Lock, Session};
use quorate_client::{Client, ClientConfig, ReadConsistency, Txn, TxnOp};
use quorate_log::NodeId;
use quorate_transport::{ClusterId, TlsPaths};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::process::{ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "support/procs.rs"]
mod procs;
use procs::free_base_port;
#[path = "support/cluster.rs"]
mod cluster;
use cluster::Cluster;

/// The shortest lease TTL the test cluster grants (`limits::LEASE_TTL_MS_MIN`; three election
/// timeouts of 1 s).
const SHORT_TTL_MS: u64 = 3_000;
/// Beyond the TTL, how long the next waiter may take after a holder's last keep-alive: the
/// leader's expiry sweep (500 ms), the commit of the expiry, the waiter's watch poll and its
/// ranking reads (docs/consistency.md).
const AFTER_TTL_SLACK: Duration = Duration::from_millis(2_500);
/// Rounds per locker in the mutual-exclusion test.
const ROUNDS: u64 = 8;

fn client(c: &Cluster) -> Client {
    let certs = c.dir.join("certs");
    let members = (0..3u16)
        .map(|i| (NodeId::new(u64::from(i) + 1).unwrap(), format!("127.0.0.1:{}", c.base + i).parse().unwrap()));
    let tls = TlsPaths {
        ca: certs.join("ca.crt"),
        cert: certs.join("client-admin.crt"),
        key: certs.join("client-admin.key"),
    };
    Client::new(ClientConfig::new(ClusterId::new("e2e").unwrap(), members.collect(), tls)).unwrap()
}

fn ready_cluster(tmp: &tempfile::TempDir) -> (Cluster, procs::Nodes) {
    let c = Cluster::create(tmp.path().join("c"), free_base_port());
    let nodes = c.start();
    c.eventually(&["kv", "put", "start", "x"]);
    c.wait_cluster_version(2);
    (c, nodes)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn two_lockers_take_turns_every_increment_through_the_fence_counts_and_tokens_only_grow() {
    let tmp = tempfile::tempdir().unwrap();
    let (c, _nodes) = ready_cluster(&tmp);
    let base = client(&c);
    let tokens = Arc::new(Mutex::new(Vec::new()));
    runtime().block_on(async {
        let lock = Lock::new("counter").unwrap();
        let fence = Fence::new("counter/fence");
        let locker = |name: &'static str| {
            let (lock, fence, tokens) = (lock.clone(), fence.clone(), Arc::clone(&tokens));
            let me = base.session();
            async move {
                let session = Session::grant(&me, 10_000).await.unwrap();
                for round in 0..ROUNDS {
                    let guard = lock.acquire(&session, Duration::from_secs(60)).await.unwrap();
                    tokens.lock().unwrap().push((guard.token(), name));
                    // A read-modify-write that only mutual exclusion makes safe: were the lock
                    // held twice at once, both would read one value and an increment be lost.
                    let got = me.get("counter/value", ReadConsistency::Linearizable).await.unwrap();
                    let n: u64 = got.kv.map_or(0, |kv| String::from_utf8(kv.value).unwrap().parse().unwrap());
                    let written = fence.put(&me, guard.token(), "counter/value", (n + 1).to_string()).await.unwrap();
                    assert!(written, "{name}'s write in round {round} under token {} was fenced off", guard.token());
                    assert!(guard.is_lost().is_none());
                    assert!(guard.release(&session).await.unwrap(), "{name} still held the lock in round {round}");
                }
                session.close().await.unwrap();
            }
        };
        tokio::join!(locker("A"), locker("B"));
        let got = base.get("counter/value", ReadConsistency::Linearizable).await.unwrap();
        assert_eq!(got.kv.map(|kv| kv.value), Some((2 * ROUNDS).to_string().into_bytes()), "an increment was lost");
        // Every key is gone with its release.
        let left = base.scan("lock/counter/", Some(b"lock/counter0"), 100, ReadConsistency::Linearizable).await;
        assert!(left.unwrap().kvs.is_empty());
    });
    let tokens = tokens.lock().unwrap();
    assert_eq!(tokens.len() as u64, 2 * ROUNDS);
    assert!(tokens.windows(2).all(|w| w[0].0 < w[1].0), "tokens did not grow: {tokens:?}");
    assert!(tokens.iter().any(|t| t.1 == "A") && tokens.iter().any(|t| t.1 == "B"));
}

#[test]
fn a_holder_whose_lease_expires_or_is_revoked_loses_the_lock_to_the_next_waiter_within_the_lease_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let (c, _nodes) = ready_cluster(&tmp);
    let (a, b, d) = (client(&c), client(&c), client(&c));
    runtime().block_on(async {
        let lock = Lock::new("expiry").unwrap();
        let fence = Fence::new("expiry/fence");
        let mut session_a = Session::grant(&a, SHORT_TTL_MS).await.unwrap();
        let held_a = lock.acquire(&session_a, Duration::from_secs(30)).await.unwrap();
        assert!(fence.put(&a, held_a.token(), "expiry/resource", "A").await.unwrap());

        // B waits in line; A stops renewing (a paused process): B holds within the bound.
        let session_b = Session::grant(&b, 10_000).await.unwrap();
        session_a.stop_keep_alive();
        let stopped = Instant::now();
        let held_b = lock.acquire(&session_b, Duration::from_secs(30)).await.unwrap();
        let took = stopped.elapsed();
        let bound = Duration::from_millis(SHORT_TTL_MS) + AFTER_TTL_SLACK;
        assert!(took <= bound, "B waited {took:?} after A's last keep-alive, more than {bound:?}");
        assert!(held_b.token() > held_a.token(), "{} then {}", held_a.token(), held_b.token());
        // The loss as the cluster sees it: A's key went with its expired lease.
        let a_key = a.get(held_a.key(), ReadConsistency::Linearizable).await.unwrap();
        assert!(a_key.kv.is_none(), "A's key outlived its lease: {:?}", a_key.kv);
        assert!(fence.put(&b, held_b.token(), "expiry/resource", "B").await.unwrap());
        // A's stale writes are refused: by the fence, and by the owner condition.
        assert!(!fence.put(&a, held_a.token(), "expiry/resource", "stale A").await.unwrap());
        let owned = Txn {
            compare: vec![held_a.owner_compare()],
            success: vec![TxnOp::Put { key: b"expiry/resource".to_vec(), value: b"stale A".to_vec() }],
            failure: vec![],
        };
        assert!(!a.txn(owned).await.unwrap().succeeded);
        let now = a.get("expiry/resource", ReadConsistency::Linearizable).await.unwrap();
        assert_eq!(now.kv.map(|kv| kv.value), Some(b"B".to_vec()));

        // D waits; B's lease is revoked: D holds at once, B's handle shows it.
        let session_d = Session::grant(&d, 10_000).await.unwrap();
        let waiting = tokio::spawn(async move {
            let held = lock.acquire(&session_d, Duration::from_secs(30)).await.unwrap();
            (held.token(), Instant::now(), session_d)
        });
        // D is in line once its key exists (two keys under the prefix).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let keys = b.scan("lock/expiry/", Some(b"lock/expiry0"), 10, ReadConsistency::Linearizable).await;
            if keys.unwrap().kvs.len() == 2 {
                break;
            }
            assert!(Instant::now() < deadline, "D never queued up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let revoked = Instant::now();
        b.lease_revoke(session_b.lease().id).await.unwrap();
        let (token_d, at, session_d) = waiting.await.unwrap();
        assert!(token_d > held_b.token());
        assert!(at.duration_since(revoked) < Duration::from_secs(5), "D took {:?}", at.duration_since(revoked));
        let deadline = Instant::now() + Duration::from_secs(10);
        while held_b.is_lost().is_none() {
            assert!(Instant::now() < deadline, "B's handle never showed the revoked lease");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        session_d.close().await.unwrap();
        eprintln!("B acquired {took:?} after A's keep-alive stopped (TTL {SHORT_TTL_MS} ms)");
    });
}

/// More keys deleted under the prefix than a read at a revision examines per page
/// (`SCAN_AT_EXAMINED_MAX`, 4 × 4,096), all sorting before the live lock keys — what a busy
/// lock leaves in the history (lease ids, the keys' suffixes, only grow). A waiter whose
/// predecessor gives up ranks the prefix again at a revision; that read's first page holds no
/// pair and a continuation. The ranking stopped there, found no one ahead and took the lock
/// while its holder still held it; it must read on and keep waiting.
#[test]
fn a_waiter_ranking_past_many_deleted_keys_still_waits_for_the_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let (c, _nodes) = ready_cluster(&tmp);
    let (a, b, d) = (client(&c), client(&c), client(&c));
    runtime().block_on(async {
        // 16,512 keys under lock/busy/ that sort before every lease id's key, then deleted.
        let junk = |i: usize| format!("lock/busy/0000000000000000-{i:06}").into_bytes();
        const JUNK: usize = 4 * 4096 + 128;
        for chunk in (0..JUNK).collect::<Vec<_>>().chunks(128) {
            let success = chunk.iter().map(|&i| TxnOp::Put { key: junk(i), value: b"j".to_vec() }).collect();
            assert!(a.txn(Txn { compare: vec![], success, failure: vec![] }).await.unwrap().succeeded);
        }
        let mut deleted = 0;
        loop {
            let (n, more) = a.delete_range(junk(0), "lock/busy/0000000000000000.").await.unwrap();
            deleted += n;
            if !more {
                break;
            }
        }
        assert_eq!(deleted, JUNK as u64);

        let lock = Lock::new("busy").unwrap();
        let session_a = Session::grant(&a, 10_000).await.unwrap();
        let held_a = lock.acquire(&session_a, Duration::from_secs(30)).await.unwrap();
        // B queues behind A and gives up after 10 s (its key is deleted); D queues behind B
        // before that (the loops below wait for each within the 30 s deadline; a slow machine
        // takes seconds for the 2 keys' scans, far less than 10 s).
        let session_b = Session::grant(&b, 10_000).await.unwrap();
        let lock_b = lock.clone();
        let b_waits = tokio::spawn(async move { lock_b.acquire(&session_b, Duration::from_secs(10)).await.err() });
        let deadline = Instant::now() + Duration::from_secs(30);
        let live = |n: usize| {
            let a = a.session();
            async move {
                let kvs = a.scan("lock/busy/0000000000000001", Some(b"lock/busy0"), 10, ReadConsistency::Linearizable);
                kvs.await.unwrap().kvs.len() == n
            }
        };
        while !live(2).await {
            assert!(Instant::now() < deadline, "B never queued up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let session_d = Session::grant(&d, 10_000).await.unwrap();
        let lock_d = lock.clone();
        let d_waits = tokio::spawn(async move {
            let held = lock_d.acquire(&session_d, Duration::from_secs(60)).await.unwrap();
            (held.token(), Instant::now(), session_d)
        });
        while !live(3).await {
            assert!(Instant::now() < deadline, "D never queued up while B waited");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let gave_up = b_waits.await.unwrap();
        assert!(matches!(gave_up, Some(quorate_client::recipes::RecipeError::Timeout { .. })), "{gave_up:?}");
        // D ranks again once B's key is gone (its watch wakes it at once): A still holds, so
        // D must still be waiting 3 s later.
        let mut d_waits = d_waits;
        let early = tokio::time::timeout(Duration::from_secs(3), &mut d_waits).await;
        assert!(early.is_err(), "D took the lock while A held it (A's token {})", held_a.token());
        assert!(held_a.is_lost().is_none());
        let (token_a, released) = (held_a.token(), Instant::now());
        assert!(held_a.release(&session_a).await.unwrap());
        let (token_d, at, session_d) = d_waits.await.unwrap();
        assert!(token_d > token_a);
        assert!(at >= released);
        session_d.close().await.unwrap();
    });
}

/// An observer whose ranking read fails after it saw the leader's key go returns the error,
/// and its next call still reports the change: the watch batch that held the change was
/// consumed, so the observer ranks anew rather than wait for another change of a key that is
/// gone (it did: the leader's resignation was never reported — review finding B). The ranking
/// is made to fail by more than `PARTICIPANTS_MAX` keys under the election's prefix.
#[test]
fn an_observer_whose_ranking_fails_reports_the_leader_change_on_its_next_call() {
    use quorate_client::recipes::{Election, PARTICIPANTS_MAX, RecipeError};
    let tmp = tempfile::tempdir().unwrap();
    let (c, _nodes) = ready_cluster(&tmp);
    let (writer, watcher) = (client(&c), client(&c));
    runtime().block_on(async {
        let election = Election::new("busy").unwrap();
        let prefix = election.prefix().to_vec();
        let key = |tail: &str| [prefix.as_slice(), tail.as_bytes()].concat();
        writer.put(key("leader"), "L").await.unwrap();
        // The observer calls `next` once for each call asked of it, and sends what it got.
        let (seen, mut results) = tokio::sync::mpsc::unbounded_channel();
        let (call, mut calls) = tokio::sync::mpsc::unbounded_channel::<()>();
        let observing = election.clone();
        let observer = tokio::spawn(async move {
            let mut observer = observing.observe(&watcher);
            while calls.recv().await.is_some() {
                if seen.send(observer.next().await.map(|l| l.map(|l| l.value))).is_err() {
                    return;
                }
            }
        });
        let mut next = async |what: &str| {
            call.send(()).unwrap();
            let r = tokio::time::timeout(Duration::from_secs(30), results.recv()).await;
            r.unwrap_or_else(|_| panic!("the observer reports {what} within 30 s")).expect("the observer ended")
        };
        assert_eq!(next("L").await.unwrap(), Some(b"L".to_vec()), "the first call: the current leader");
        // Keys behind the leader (created later): no change, and more than a ranking reads.
        let junk = |i: u64| key(&format!("junk/{i:06}"));
        let all: Vec<u64> = (0..=PARTICIPANTS_MAX).collect();
        for chunk in all.chunks(128) {
            let success = chunk.iter().map(|&i| TxnOp::Put { key: junk(i), value: b"j".to_vec() }).collect();
            assert!(writer.txn(Txn { compare: vec![], success, failure: vec![] }).await.unwrap().succeeded);
        }
        writer.delete(key("leader")).await.unwrap();
        let failed = next("the failed ranking").await;
        assert!(matches!(failed, Err(RecipeError::TooManyParticipants { .. })), "{failed:?}");
        // The ranking works again: the leader is gone and no candidate is left.
        loop {
            let (_, more) = writer.delete_range(junk(0), key("junk0")).await.unwrap();
            if !more {
                break;
            }
        }
        assert_eq!(next("no leader").await.unwrap(), None, "the next call reports that no one leads");
        observer.abort();
    });
}

/// Reads the next line of a child's stdout, within `limit`.
fn line(lines: &std::sync::mpsc::Receiver<String>, limit: Duration, what: &str) -> String {
    lines.recv_timeout(limit).unwrap_or_else(|_| panic!("no line from {what} within {limit:?}"))
}

fn lines_of(stdout: ChildStdout) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            let Ok(l) = l else { return };
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    rx
}

#[test]
fn the_second_candidate_leads_once_the_first_process_is_killed_and_an_observer_sees_both_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let (c, _nodes) = ready_cluster(&tmp);
    let ttl = SHORT_TTL_MS.to_string();
    let candidate = |value: &str| {
        c.command(&["-o", "json", "elect", "e", value, "--ttl-ms", &ttl])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = candidate("A");
    let first_lines = lines_of(first.stdout.take().unwrap());
    let a: Value = serde_json::from_str(&line(&first_lines, Duration::from_secs(30), "A")).unwrap();
    assert_eq!(a["leader"]["value"], "A", "{a}");
    let mut second = candidate("B");
    let second_lines = lines_of(second.stdout.take().unwrap());
    let mut listener = c
        .command(&["-o", "json", "elect", "e", "--listen", "--count", "2", "--duration-ms", "60000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let listened = lines_of(listener.stdout.take().unwrap());
    let seen_a: Value = serde_json::from_str(&line(&listened, Duration::from_secs(30), "the listener")).unwrap();
    assert_eq!(seen_a, a, "the observer starts with the current leader");
    // B is not elected while A lives.
    assert!(second_lines.try_recv().is_err());

    first.kill().unwrap();
    first.wait().unwrap();
    let killed = Instant::now();
    let b: Value = serde_json::from_str(&line(&second_lines, Duration::from_secs(30), "B")).unwrap();
    let took = killed.elapsed();
    assert_eq!(b["leader"]["value"], "B", "{b}");
    assert!(b["leader"]["revision"].as_u64() > a["leader"]["revision"].as_u64(), "{a} then {b}");
    let bound = Duration::from_millis(SHORT_TTL_MS) + AFTER_TTL_SLACK;
    assert!(took <= bound, "B was elected {took:?} after A's kill, more than {bound:?}");
    let seen_b: Value = serde_json::from_str(&line(&listened, Duration::from_secs(30), "the listener")).unwrap();
    assert_eq!(seen_b, b, "the observer sees the second leader after the first");
    let out = listener.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The end of B's standard input: it resigns and exits 0; no leader is left.
    drop(second.stdin.take());
    let out = second.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let after = c.json(&["elect", "e", "--listen", "--count", "1", "--duration-ms", "30000"]);
    assert_eq!(after, serde_json::json!({"leader": null}));
    eprintln!("B elected {took:?} after A's process was killed (TTL {SHORT_TTL_MS} ms)");
}

#[test]
fn quorate_lock_runs_the_command_with_the_key_and_token_and_a_second_locker_waits_or_gives_up() {
    let tmp = tempfile::tempdir().unwrap();
    let (c, _nodes) = ready_cluster(&tmp);
    // A holder without a command: holds until its standard input ends.
    let mut holder = c
        .command(&["-o", "json", "lock", "job"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let held = lines_of(holder.stdout.take().unwrap());
    let first: Value = serde_json::from_str(&line(&held, Duration::from_secs(30), "the holder")).unwrap();
    assert!(first["key"].as_str().unwrap().starts_with("lock/job/"), "{first}");
    // Held: another locker gives up after its wait, exit 8, in clear words.
    let out = c.cli(&["lock", "job", "--wait-ms", "1000", "--", "true"]);
    assert_eq!(out.status.code(), Some(8), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not acquired within"));
    // A bad name is a usage error.
    assert_eq!(c.cli(&["lock", "a/b"]).status.code(), Some(2));

    holder.stdin.take().unwrap().flush().unwrap();
    let out = holder.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let file = tmp.path().join("ran");
    let script = format!("echo \"$QUORATE_LOCK_KEY $QUORATE_LOCK_TOKEN\" > {}; exit 7", file.display());
    let out = c.cli(&["-o", "json", "lock", "job", "--", "sh", "-c", &script]);
    assert_eq!(out.status.code(), Some(7), "the command's exit code: {}", String::from_utf8_lossy(&out.stderr));
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ran = std::fs::read_to_string(&file).unwrap();
    assert_eq!(ran.trim(), format!("{} {}", printed["key"].as_str().unwrap(), printed["token"]));
    assert!(printed["token"].as_u64() > first["token"].as_u64(), "{first} then {printed}");
    // Released when the command ended.
    let left = c.ok(&["kv", "scan", "--prefix", "lock/job/"]);
    assert!(left.trim().is_empty(), "{left}");
}

/// Waits (with a deadline) until `path` holds a line, and returns it.
fn wait_for_file(path: &std::path::Path, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && s.ends_with('\n')
        {
            return s.trim().to_string();
        }
        assert!(Instant::now() < deadline, "{} not written within {limit:?}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the process `pid` is gone (or a zombie: ended, not yet reaped).
fn process_gone(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // "pid (comm) S ...": the state follows the last `)`.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Waits (with a deadline) until the process `pid` is gone.
fn wait_gone(pid: &str, limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    while !process_gone(pid) {
        assert!(Instant::now() < deadline, "{what} (pid {pid}) still runs after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn quorate_lock_forwards_sigterm_to_the_command_waits_for_it_and_releases_the_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let (c, _nodes) = ready_cluster(&tmp);
    let pid_file = tmp.path().join("pid");
    let trapped = tmp.path().join("trapped");
    // The command traps SIGTERM (it must get it, from quorate) and has a background
    // grandchild (which must get it too: the whole process group).
    let script = format!(
        "trap 'echo term > {}; exit 3' TERM; sleep 1000 & echo $! > {}; wait",
        trapped.display(),
        pid_file.display()
    );
    // A long TTL: a lock left behind would stay for a minute, far beyond the checks below.
    let locker = c
        .command(&["-o", "json", "lock", "job", "--ttl-ms", "60000", "--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let grandchild = wait_for_file(&pid_file, Duration::from_secs(30));
    let status = Command::new("kill").args(["-TERM", &locker.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = locker.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "quorate lock passes on the code of the command that trapped SIGTERM: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&trapped).unwrap().trim(), "term", "the command got SIGTERM");
    wait_gone(&grandchild, Duration::from_secs(10), "the command's background sleep");
    // Released at once, not after the lease's TTL.
    let left = c.ok(&["kv", "scan", "--prefix", "lock/job/"]);
    assert!(left.trim().is_empty(), "the lock was not released: {left}");
}

#[test]
fn quorate_lock_kills_the_commands_whole_process_group_when_the_lease_is_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let (c, _nodes) = ready_cluster(&tmp);
    let pid_file = tmp.path().join("pid");
    let script = format!("sleep 1000 & echo $! > {}; wait", pid_file.display());
    let mut locker = c
        .command(&["-o", "json", "lock", "job", "--ttl-ms", "60000", "--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let printed = lines_of(locker.stdout.take().unwrap());
    let held: Value = serde_json::from_str(&line(&printed, Duration::from_secs(30), "the locker")).unwrap();
    let grandchild = wait_for_file(&pid_file, Duration::from_secs(30));
    // Revoke the holder's lease (as its expiry would): the lock may be someone else's now.
    let lease = held["lease"].as_u64().unwrap().to_string();
    c.ok(&["lease", "revoke", &lease]);
    wait_gone(&grandchild, Duration::from_secs(30), "the command's background sleep (a grandchild)");
    let status = locker.wait().unwrap();
    assert_eq!(status.code(), Some(1), "exit 1 after a lost lease: {status:?}");
}
