//! The recipes' pure parts: ranking by creation revision, key names, the fence transaction,
//! and the lost-lease flag. (The recipes against real nodes: quorate-node's
//! `tests/recipes.rs`.)

use super::*;
use crate::LeaseId;

fn kv(key: &str, create_revision: u64) -> KeyValue {
    KeyValue { key: key.as_bytes().to_vec(), value: vec![], create_revision, mod_revision: create_revision, version: 1 }
}

/// Ranks `keys` (key, creation revision), fed in `pages`, for the participant created at
/// `mine`: (first, predecessor) keys.
fn check(keys: &[(&str, u64)], page: usize, mine: u64) -> (Option<String>, Option<String>) {
    let mut r = Ranking::new(mine);
    for chunk in keys.chunks(page) {
        for (k, rev) in chunk {
            r.add(&kv(k, *rev));
        }
    }
    assert_eq!(r.seen, keys.len() as u64);
    let name = |kv: Option<KeyValue>| kv.map(|kv| String::from_utf8(kv.key).unwrap());
    (name(r.first), name(r.predecessor))
}

#[test]
fn the_first_in_line_is_the_lowest_creation_revision_not_the_lowest_key() {
    let keys = [("a", 30), ("b", 10), ("c", 20), ("d", 40)];
    for page in 1..=4 {
        assert_eq!(check(&keys, page, 0), (Some("b".into()), None), "page {page}");
        // Each waits for the key created just before its own.
        assert_eq!(check(&keys, page, 10), (Some("b".into()), None));
        assert_eq!(check(&keys, page, 20), (Some("b".into()), Some("b".into())));
        assert_eq!(check(&keys, page, 30), (Some("b".into()), Some("c".into())));
        assert_eq!(check(&keys, page, 40), (Some("b".into()), Some("a".into())));
    }
    assert_eq!(check(&[], 1, 5), (None, None));
}

#[test]
fn waiters_form_a_chain_each_behind_exactly_one_other() {
    // No two waiters watch the same key: a delete wakes one waiter only.
    let keys: Vec<(String, u64)> = (0..50u64).map(|i| (format!("k{:02}", (i * 37) % 50), 100 + i)).collect();
    let borrowed: Vec<(&str, u64)> = keys.iter().map(|(k, r)| (k.as_str(), *r)).collect();
    let mut watched = std::collections::BTreeSet::new();
    for (_, mine) in &borrowed[1..] {
        let (_, p) = check(&borrowed, 7, *mine);
        assert!(watched.insert(p.unwrap()), "two waiters behind one key");
    }
    assert_eq!(watched.len(), 49);
}

#[test]
fn names_are_checked_and_keys_are_unique_per_lease() {
    assert!(matches!(Lock::new(""), Err(RecipeError::InvalidName(_))));
    assert!(matches!(Lock::new("a/b"), Err(RecipeError::InvalidName(_))));
    assert!(matches!(Election::new(&"x".repeat(NAME_BYTES_MAX + 1)), Err(RecipeError::InvalidName(_))));
    assert!(Election::new(&"x".repeat(NAME_BYTES_MAX)).is_ok());
    let lock = Lock::new("jobs").unwrap();
    assert_eq!(lock.prefix(), b"lock/jobs/");
    assert_eq!(Election::new("jobs").unwrap().prefix(), b"election/jobs/");
    let key = participant_key(lock.prefix(), LeaseId(0xab));
    assert_eq!(key, b"lock/jobs/00000000000000ab");
    assert_eq!(participant_key(lock.prefix(), LeaseId(0xab)), key, "one key per lease");
    assert_ne!(participant_key(lock.prefix(), LeaseId(0xac)), key);
    // The scan range covers the prefix and nothing after it.
    let end = prefix_end(lock.prefix());
    assert_eq!(end, b"lock/jobs0");
    assert!(key.as_slice() < end.as_slice() && b"lock/jobs/".as_slice() < end.as_slice());
    assert!(b"lock/jobs0".as_slice() >= end.as_slice());
}

#[test]
fn the_fence_writes_only_when_no_greater_token_is_recorded() {
    let fence = Fence::new("f");
    let op = TxnOp::Put { key: b"r".to_vec(), value: b"v".to_vec() };
    let txn = fence.txn(42, vec![op.clone()]);
    let token = b"00000000000000000042".to_vec();
    assert_eq!(
        txn.compare,
        vec![Compare { key: b"f".to_vec(), target: CompareTarget::Value(Some(token.clone())), op: CompareOp::Greater }]
    );
    assert!(txn.success.is_empty(), "a greater token recorded: nothing written");
    assert_eq!(txn.failure, vec![TxnOp::Put { key: b"f".to_vec(), value: token }, op]);
    // Byte order of the encoded tokens is numeric order (what the comparison relies on).
    let enc = |t: u64| format!("{t:020}");
    for (a, b) in [(9u64, 10u64), (99, 100), (1, u64::MAX), (0, 1)] {
        assert!(enc(a) < enc(b), "{a} {b}");
    }
}

#[tokio::test]
async fn a_stopped_keep_alive_counts_as_a_lost_lease() {
    let (tx, rx) = watch::channel(None::<LeaseLost>);
    assert_eq!(lost_now(&rx), None);
    tx.send_replace(Some(LeaseLost::Gone("revoked".into())));
    assert_eq!(lost_now(&rx), Some(LeaseLost::Gone("revoked".into())));
    assert_eq!(wait_lost(rx.clone()).await, LeaseLost::Gone("revoked".into()));

    let (tx, rx) = watch::channel(None::<LeaseLost>);
    let waiting = tokio::spawn(wait_lost(rx.clone()));
    drop(tx);
    assert_eq!(lost_now(&rx), Some(LeaseLost::Stopped));
    assert_eq!(waiting.await.unwrap(), LeaseLost::Stopped);
}

fn rejected(error: ApiError) -> RecipeError {
    RecipeError::Client(ClientError::Rejected { node: quorate_log::NodeId::new(1).unwrap(), error })
}

#[test]
fn a_waiter_retries_transient_errors_and_stops_on_the_others() {
    let transient = [
        rejected(ApiError::Overloaded { reason: "watches".into(), retry_after_ms: 100 }),
        rejected(ApiError::Unavailable("no quorum".into())),
        rejected(ApiError::Timeout),
        rejected(ApiError::NotLeader { leader: None, addr: None }),
        RecipeError::Client(ClientError::GaveUp {
            attempts: 8,
            elapsed: Duration::from_secs(5),
            reason: crate::GiveUpReason::Deadline,
            last: "node 2: timed out".into(),
        }),
    ];
    for e in &transient {
        assert!(retryable(e), "{e} is retried");
    }
    let fatal = [
        rejected(ApiError::Refused("not a member".into())),
        rejected(ApiError::InvalidRequest("bad key".into())),
        RecipeError::KeyGone { key: "lock/a/1".into() },
        RecipeError::LeaseLost { lease: 1, why: LeaseLost::Stopped },
        RecipeError::TooManyParticipants { prefix: "lock/a/".into(), max: PARTICIPANTS_MAX },
        RecipeError::Client(ClientError::Config("no endpoints".into())),
    ];
    for e in &fatal {
        assert!(!retryable(e), "{e} ends the wait");
    }
}

#[test]
fn a_waiters_backoff_grows_to_its_bound_and_differs_between_waiters() {
    let mut last = Duration::ZERO;
    for attempt in 0..64 {
        let d = WAIT_BACKOFF.delay(attempt, jitter(b"lock/a/1", attempt));
        assert!(d <= Duration::from_secs(2), "attempt {attempt}: {d:?}");
        assert!(d >= WAIT_BACKOFF.cap(attempt) / 2, "attempt {attempt}: {d:?}");
        last = d;
    }
    assert!(last >= Duration::from_secs(1), "the backoff reaches its bound: {last:?}");
    assert_ne!(jitter(b"lock/a/1", 3), jitter(b"lock/a/2", 3));
}

#[test]
fn a_guard_refuses_a_session_on_another_lease() {
    assert!(check_lease(LeaseId(7), LeaseId(7)).is_ok());
    let e = check_lease(LeaseId(7), LeaseId(8)).unwrap_err();
    assert!(matches!(e, RecipeError::WrongSession { held: 7, given: 8 }), "{e}");
    assert!(e.to_string().contains("pass the session it was won with"), "{e}");
}
