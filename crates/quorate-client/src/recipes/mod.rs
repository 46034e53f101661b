//! Recipes on leases and watches: a distributed [`Lock`] whose fencing token is a revision,
//! and a leader [`Election`] — etcd's `concurrency` package, on Quorate's requests.
//!
//! Both use one design. A participant holds a [`Session`]: a lease kept alive by a task. To
//! take part it puts the key `PREFIX/<lease id>` attached to its lease (`lock/NAME/…`,
//! `election/NAME/…`). The participants are ordered by the **revision that created their
//! keys**; the one with the lowest holds the lock (is the leader). Every other one watches,
//! from the revision of the read that ranked it, for the delete of the key just before its own
//! — no polling, and each delete wakes one waiter only (no thundering herd) — and ranks again.
//! A participant leaves by deleting its key; if it dies, its lease expires and the key goes
//! with it, so the next in line proceeds.
//!
//! # What it guarantees, and what it assumes
//!
//! * **The fencing token** of a holder is the revision that created its key
//!   ([`LockGuard::token`], [`Leadership::revision`]). Tokens only grow across holders: a key
//!   becomes the holder only once every key created before it is gone, a deleted key never
//!   comes back with its old revision, and every key created later has a larger revision.
//! * **A lease is advice.** The leader expires a lease on its own clock; a holder that is
//!   paused (GC, SIGSTOP, a slow disk) or cut off may still believe it holds the lock after
//!   its lease expired and the next waiter took over. [`LockGuard::lost`] tells the holder
//!   when its keep-alive reports the lease lost, but that report can come late (up to a TTL
//!   after the leader stopped hearing from it). What makes the lock safe is that **every
//!   write it protects carries the token and is refused when a larger one was seen**: a
//!   [`Fence`] for resources in Quorate, or the same check in the resource itself. For
//!   writes to Quorate there is also [`LockGuard::owner_compare`], a transaction condition
//!   that holds only while the holder's key exists with its token (etcd's `IsOwner`).
//! * **Retries.** The key name is unique per lease, so a put retried after a leader change
//!   (exactly once in the client's session anyway) or a second acquire with the same session
//!   writes the same key and keeps its creation revision: the place in line is not lost and
//!   no second place is taken.
//! * **Nothing missed between a read and a watch.** A waiter ranks itself with reads at one
//!   revision `R` (the pages of the prefix at `R`) and watches its predecessor from `R + 1`:
//!   a delete after the read is in the watch. If `R` has been compacted meanwhile, it reads
//!   again.
//! * **Bounded memory.** The prefix is read in pages of [`SCAN_PAGE_KEYS`] keys, one page held
//!   at a time; at most [`PARTICIPANTS_MAX`] keys are read per ranking (more participants —
//!   waiters, candidates — and the call fails with [`RecipeError::TooManyParticipants`]).
//!   A ranking costs `O(participants)` reads; it happens once per acquire and once per delete
//!   of the predecessor.
//!
//! Needs cluster version 2 (leases, watches, reads at a revision).
//!
//! ```no_run
//! use quorate_client::Client;
//! use quorate_client::recipes::{Fence, Lock, Session};
//! use std::time::Duration;
//!
//! # async fn demo(client: &Client) -> Result<(), Box<dyn std::error::Error>> {
//! let session = Session::grant(client, 10_000).await?;
//! let guard = Lock::new("jobs")?.acquire(&session, Duration::from_secs(30)).await?;
//! // Every protected write carries the token; a stale holder's is refused.
//! let fence = Fence::new("jobs/fence");
//! let written = fence.put(client, guard.token(), "jobs/state", "running").await?;
//! assert!(written, "a larger token was seen: the lock is someone else's");
//! guard.release(&session).await?;
//! session.close().await?;
//! # Ok(()) }
//! ```

mod election;
mod lock;

pub use election::{Election, Leader, Leadership, Observer};
pub use lock::{Lock, LockGuard};

use crate::{ApiError, EventKind, WatchOptions};
use crate::{Client, ClientError, KeepAlive, KeyValue, Lease, LeaseLost, ReadConsistency, Txn, TxnOp};
use crate::{Compare, CompareOp, CompareTarget};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Keys read per page when a recipe ranks the participants.
pub const SCAN_PAGE_KEYS: u32 = 1_000;
/// Most keys under one lock's or election's prefix that a ranking reads: the hard bound on
/// waiters (candidates) per name. Waiters beyond the node's watch limits (64 per principal,
/// 1,024 per node) wait by retrying with a backoff of up to 2 s: the bound for prompt
/// hand-overs is lower (docs/consistency.md).
pub const PARTICIPANTS_MAX: u64 = 10_000;
/// Longest name of a lock or an election, bytes.
pub const NAME_BYTES_MAX: usize = 1_024;

/// Why a recipe call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecipeError {
    /// A request failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The session's lease was lost (revoked, expired, or no keep-alive acknowledged for a
    /// TTL): the lock or leadership may be someone else's.
    #[error("the session's lease {lease} is lost: {why}")]
    LeaseLost {
        /// The lease.
        lease: u64,
        /// Why.
        why: LeaseLost,
    },
    /// The key of this participant is gone (its lease expired or was revoked, or it was
    /// deleted), so it no longer takes part.
    #[error("the key {key} is gone (its lease expired or was revoked, or it was deleted)")]
    KeyGone {
        /// The key, escaped.
        key: String,
    },
    /// Not acquired (elected) within the time given; the participant's key was deleted.
    #[error("not acquired within {waited_ms} ms (another participant holds it)")]
    Timeout {
        /// How long it waited.
        waited_ms: u64,
    },
    /// More keys under the prefix than a ranking reads.
    #[error("more than {max} participants under {prefix}; wait for some to leave")]
    TooManyParticipants {
        /// The prefix, escaped.
        prefix: String,
        /// [`PARTICIPANTS_MAX`].
        max: u64,
    },
    /// The name is empty, too long, or holds a `/`.
    #[error("bad name: {0}")]
    InvalidName(String),
    /// The participant no longer holds the leadership (for [`Leadership::proclaim`]).
    #[error("no longer the leader: {0}")]
    NotLeader(String),
    /// A lock guard or a leadership was handed a session other than the one it was won with
    /// (release, resign and proclaim act with the session whose lease holds the key).
    #[error(
        "the lock or leadership is held on lease {held}, not on the session's lease {given}; pass the session it was won with"
    )]
    WrongSession {
        /// The lease it is held on.
        held: u64,
        /// The lease of the session given.
        given: u64,
    },
}

/// Refuses a session whose lease is not `held`, the one a guard or leadership was won with.
fn same_lease(held: crate::LeaseId, session: &Session) -> Result<(), RecipeError> {
    check_lease(held, session.lease().id)
}

fn check_lease(held: crate::LeaseId, given: crate::LeaseId) -> Result<(), RecipeError> {
    if held == given { Ok(()) } else { Err(RecipeError::WrongSession { held: held.0, given: given.0 }) }
}

/// A lease kept alive for as long as the session lives: what a lock holder or a candidate
/// stands on (etcd's `concurrency.Session`). Its keys go when it is closed, or when its
/// keep-alives stop for a TTL (the process died, or was cut off).
#[derive(Debug)]
pub struct Session {
    client: Client,
    lease: Lease,
    keep: Option<KeepAlive>,
    lost: watch::Receiver<Option<LeaseLost>>,
}

impl Session {
    /// Grants a lease of `ttl_ms` and keeps it alive (over `client`'s connections).
    pub async fn grant(client: &Client, ttl_ms: u64) -> Result<Session, RecipeError> {
        let lease = client.lease_grant(ttl_ms).await?;
        Ok(Session::with_lease(client, lease))
    }

    /// Keeps `lease` (granted earlier) alive and builds on it.
    #[must_use]
    pub fn with_lease(client: &Client, lease: Lease) -> Session {
        let client = client.session();
        let keep = client.keep_alive(lease);
        let lost = keep.lost_receiver();
        Session { client, lease, keep: Some(keep), lost }
    }

    /// The lease.
    #[must_use]
    pub fn lease(&self) -> Lease {
        self.lease
    }

    /// The client the session writes with (a [`Client::session`] of the one it was made from).
    #[must_use]
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Why the lease was lost, if it was (also once the keep-alive was stopped).
    #[must_use]
    pub fn is_lost(&self) -> Option<LeaseLost> {
        lost_now(&self.lost)
    }

    /// Waits until the lease is lost, and says why.
    pub async fn lost(&self) -> LeaseLost {
        wait_lost(self.lost.clone()).await
    }

    /// Stops renewing the lease, without revoking it: it expires after its TTL, and with it
    /// every key of the session (what a paused or dead process does; for tests and
    /// demonstrations). From here on the session counts as lost.
    pub fn stop_keep_alive(&mut self) {
        self.keep = None;
    }

    /// Revokes the lease: every key of the session (locks held, candidacies) is deleted.
    pub async fn close(mut self) -> Result<(), RecipeError> {
        self.keep = None;
        match self.client.lease_revoke(self.lease.id).await {
            Ok(_) => Ok(()),
            // Already gone (expired): nothing left to delete.
            Err(e) if matches!(e.api_error(), Some(crate::ApiError::InvalidRequest(_))) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn lost_receiver(&self) -> watch::Receiver<Option<LeaseLost>> {
        self.lost.clone()
    }

    /// Puts this session's key under `prefix` with `value` and waits (at most `timeout`, and
    /// while the lease lives) until it is first in line; returns the key and its creation
    /// revision. On a timeout or an error the key is deleted again (best effort: else the
    /// lease takes it along when it ends).
    async fn queue_up(&self, prefix: &[u8], value: &[u8], timeout: Duration) -> Result<(Vec<u8>, u64), RecipeError> {
        let started = Instant::now();
        if let Some(why) = self.is_lost() {
            return Err(self.lost_error(why));
        }
        let key = participant_key(prefix, self.lease.id);
        // Exactly once in this client's session; a second call with the same session writes
        // the same key and keeps its creation revision (its place in line).
        self.client.put_with_lease(&key, value, self.lease.id).await?;
        let outcome = tokio::select! {
            r = tokio::time::timeout(timeout, wait_first(&self.client, prefix, &key)) => r,
            why = self.lost() => return Err(self.lost_error(why)),
        };
        let error = match outcome {
            Ok(Ok(token)) => return Ok((key, token)),
            Ok(Err(e)) => e,
            Err(_) => RecipeError::Timeout { waited_ms: started.elapsed().as_millis() as u64 },
        };
        if !matches!(error, RecipeError::KeyGone { .. })
            && let Err(e) = self.client.delete(&key).await
        {
            tracing::debug!(target: "quorate::client", key = %escaped(&key), "leaving the line failed: {e}");
        }
        Err(error)
    }

    fn lost_error(&self, why: LeaseLost) -> RecipeError {
        RecipeError::LeaseLost { lease: self.lease.id.0, why }
    }
}

fn lost_now(rx: &watch::Receiver<Option<LeaseLost>>) -> Option<LeaseLost> {
    match rx.has_changed() {
        // The keep-alive task is gone (stopped or dropped) without a verdict.
        Err(_) if rx.borrow().is_none() => Some(stopped()),
        _ => rx.borrow().clone(),
    }
}

fn stopped() -> LeaseLost {
    LeaseLost::Stopped
}

async fn wait_lost(mut rx: watch::Receiver<Option<LeaseLost>>) -> LeaseLost {
    loop {
        if let Some(l) = rx.borrow_and_update().clone() {
            return l;
        }
        if rx.changed().await.is_err() {
            return rx.borrow().clone().unwrap_or_else(stopped);
        }
    }
}

/// Checks a lock's or an election's name: 1 to [`NAME_BYTES_MAX`] bytes, no `/`.
fn check_name(name: &str) -> Result<(), RecipeError> {
    if name.is_empty() {
        return Err(RecipeError::InvalidName("the name is empty".into()));
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(RecipeError::InvalidName(format!("{} bytes, at most {NAME_BYTES_MAX}", name.len())));
    }
    if name.contains('/') {
        return Err(RecipeError::InvalidName(format!("`{name}` holds a `/`")));
    }
    Ok(())
}

/// The key of the participant with `lease` under `prefix` (which ends with `/`): fixed-width
/// hexadecimal, so one lease has one key per name.
fn participant_key(prefix: &[u8], lease: crate::LeaseId) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(format!("{:016x}", lease.0).as_bytes());
    key
}

fn escaped(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Where one participant stands among the keys of a prefix, built page by page without
/// holding more than a page: the first key in line, and the last key in line before `mine`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Ranking {
    /// The creation revision of the participant ranked (0: rank nobody, only find the first).
    mine: u64,
    /// The key with the lowest creation revision.
    first: Option<KeyValue>,
    /// The key with the highest creation revision below `mine`.
    predecessor: Option<KeyValue>,
    /// Keys seen.
    seen: u64,
}

impl Ranking {
    fn new(mine: u64) -> Ranking {
        Ranking { mine, ..Ranking::default() }
    }

    fn add(&mut self, kv: &KeyValue) {
        self.seen += 1;
        if self.first.as_ref().is_none_or(|f| kv.create_revision < f.create_revision) {
            self.first = Some(kv.clone());
        }
        if kv.create_revision < self.mine
            && self.predecessor.as_ref().is_none_or(|p| kv.create_revision > p.create_revision)
        {
            self.predecessor = Some(kv.clone());
        }
    }
}

/// Ranks the keys under `prefix` as they were at `revision` (`None`: a linearizable read now,
/// whose revision is returned), page by page.
async fn rank(client: &Client, prefix: &[u8], mine: u64, revision: Option<u64>) -> Result<(Ranking, u64), RecipeError> {
    let end = prefix_end(prefix);
    let mut ranking = Ranking::new(mine);
    // Every key under the prefix must be seen: a ranking that stopped early could find no one
    // ahead of a waiter while the holder holds. A read at a revision examines a bounded number
    // of keys per page, so a page may hold no pair and still go on (keys deleted before the
    // revision: a busy lock leaves many in the history); the pages are followed as long as
    // they move on (the cursor's checks). At most PARTICIPANTS_MAX / SCAN_PAGE_KEYS + 1 pages
    // with pairs (the count check below). Without a revision, the first page's is that of
    // the rest: the pages are one read.
    let mut cursor = crate::pages::Cursor::new(prefix, u32::MAX, SCAN_PAGE_KEYS);
    let (mut page, at) = match revision {
        Some(r) => {
            (client.scan_at_page(prefix, Some(&end), SCAN_PAGE_KEYS, r, ReadConsistency::Linearizable).await?, r)
        }
        None => {
            let p = client.scan_page(prefix, Some(&end), SCAN_PAGE_KEYS, ReadConsistency::Linearizable).await?;
            let at = p.read.revision;
            (p, at)
        }
    };
    loop {
        cursor.took(&page)?;
        for kv in &page.kvs {
            ranking.add(kv);
        }
        if ranking.seen > PARTICIPANTS_MAX {
            return Err(RecipeError::TooManyParticipants { prefix: escaped(prefix), max: PARTICIPANTS_MAX });
        }
        let Some((from, want)) = cursor.next_page() else { return Ok((ranking, at)) };
        page = client.scan_at_page(from, Some(&end), want, at, ReadConsistency::Linearizable).await?;
    }
}

/// The backoff between the retries of a waiter's reads and watches after a transient error
/// (a node shedding load, no quorum for a while, the client's own retries given up): from
/// 50 ms up to 2 s, jittered, until the caller's deadline.
const WAIT_BACKOFF: crate::Backoff = crate::Backoff { initial: Duration::from_millis(50), max: Duration::from_secs(2) };

/// Whether a waiter's read or watch that failed with `e` is retried (until the deadline): a
/// node that is overloaded, unavailable or without a leader, a request that timed out, the
/// client's retries given up, a watch after [`crate::WATCH_FAILURES_MAX`] failed polls. Not:
/// a refused or invalid request, a key or lease gone, too many participants.
fn retryable(e: &RecipeError) -> bool {
    match e {
        RecipeError::Client(ClientError::GaveUp { .. } | ClientError::OutcomeUnknown { .. }) => true,
        RecipeError::Client(ClientError::Rejected { error, .. }) => matches!(
            error,
            ApiError::Unavailable(_)
                | ApiError::Shed(_)
                | ApiError::Overloaded { .. }
                | ApiError::Timeout
                | ApiError::NotLeader { .. }
                | ApiError::SessionExpired
                | ApiError::PageExpired { .. }
        ),
        _ => false,
    }
}

/// Jitter for the `attempt`th retry of the waiter of `key`: a hash of both (waiters retry at
/// different times; deterministic for one key).
fn jitter(key: &[u8], attempt: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ u64::from(attempt);
    for b in key {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// One step of a waiter.
enum Step {
    /// First in line, with the key's creation revision.
    First(u64),
    /// The predecessor was deleted (or the watch's start compacted): rank again.
    Again,
    /// The ranking did not see the waiter's own key (cannot happen at one revision): read
    /// again after a backoff.
    NotSeen,
}

/// Waits until `key` (under `prefix`) is first in line; returns its creation revision.
/// Transient errors are retried with a backoff (the caller bounds the wait): a waiter keeps
/// its place in line through a partition or an overloaded node.
async fn wait_first(client: &Client, prefix: &[u8], key: &[u8]) -> Result<u64, RecipeError> {
    let mut retries = 0u32;
    loop {
        match wait_step(client, prefix, key).await {
            Ok(Step::First(revision)) => return Ok(revision),
            Ok(Step::Again) => retries = 0,
            Ok(Step::NotSeen) => {
                tracing::debug!(target: "quorate::client", key = %escaped(key), "own key not in the ranking; reading again");
                tokio::time::sleep(WAIT_BACKOFF.delay(retries, jitter(key, retries))).await;
                retries = retries.saturating_add(1);
            }
            Err(e) if retryable(&e) => {
                tracing::debug!(target: "quorate::client", key = %escaped(key), retries, "waiting in line: {e}; retrying");
                tokio::time::sleep(WAIT_BACKOFF.delay(retries, jitter(key, retries))).await;
                retries = retries.saturating_add(1);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads `key`'s place in line and, if it is not first, waits for its predecessor's delete.
async fn wait_step(client: &Client, prefix: &[u8], key: &[u8]) -> Result<Step, RecipeError> {
    // The key's creation revision, and the revision of that read: the ranking reads the
    // prefix at that same revision, and the watch starts right after it.
    let got = client.get(key, ReadConsistency::Linearizable).await?;
    let Some(me) = got.kv else {
        return Err(RecipeError::KeyGone { key: escaped(key) });
    };
    let at = got.read.revision;
    let ranking = match rank(client, prefix, me.create_revision, Some(at)).await {
        Ok((r, _)) => r,
        // Compacted between the two reads: read again.
        Err(RecipeError::Client(e)) if matches!(e.api_error(), Some(ApiError::Compacted { .. })) => {
            return Ok(Step::Again);
        }
        Err(e) => return Err(e),
    };
    match ranking.predecessor {
        None if ranking.first.as_ref().is_some_and(|f| f.key == key) => Ok(Step::First(me.create_revision)),
        None => Ok(Step::NotSeen),
        Some(p) => {
            wait_deleted(client, &p.key, at + 1).await?;
            Ok(Step::Again)
        }
    }
}

/// Waits for a delete of `key` at or after revision `from` (also returns when `from` has
/// been compacted: the caller ranks again either way).
async fn wait_deleted(client: &Client, key: &[u8], from: u64) -> Result<(), RecipeError> {
    let mut watch = client.watch(WatchOptions::key(key).from_revision(from));
    loop {
        match watch.next().await {
            Ok(batch) if batch.events.iter().any(|e| e.kind == EventKind::Delete) => return Ok(()),
            Ok(_) => {}
            Err(e) if matches!(e.api_error(), Some(ApiError::Compacted { .. })) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// The first key after every key that starts with `prefix` (`prefix` is never empty here and
/// ends with `/`, so incrementing its last byte is enough).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// A fence: a key that records the largest fencing token that wrote through it. A write
/// through the fence runs only if its token is at least the recorded one, and records it — so
/// once a newer holder wrote, an older holder's writes are refused, whatever it believes.
/// (The same check belongs in any resource outside Quorate that a lock protects.) Keep the
/// fence's key out of the lock's prefix (`lock/NAME/`): every key there counts as a contender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    key: Vec<u8>,
}

impl Fence {
    /// The fence kept at `key`.
    #[must_use]
    pub fn new(key: impl AsRef<[u8]>) -> Fence {
        Fence { key: key.as_ref().to_vec() }
    }

    /// The key that holds the fence.
    #[must_use]
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The transaction that runs `ops` under `token`: its `failure` branch (taken when the
    /// recorded token is *not* greater) raises the fence to `token` and runs `ops`; its
    /// `success` branch (a greater token is recorded) writes nothing. Tokens are stored as 20
    /// zero-padded decimal digits, so byte order is numeric order, and an absent fence is the
    /// smallest.
    #[must_use]
    pub fn txn(&self, token: u64, ops: Vec<TxnOp>) -> Txn {
        let encoded = format!("{token:020}").into_bytes();
        let mut failure = vec![TxnOp::Put { key: self.key.clone(), value: encoded.clone() }];
        failure.extend(ops);
        Txn {
            compare: vec![Compare {
                key: self.key.clone(),
                target: CompareTarget::Value(Some(encoded)),
                op: CompareOp::Greater,
            }],
            success: vec![],
            failure,
        }
    }

    /// Runs `ops` under `token`; whether they ran (`false`: a greater token was recorded).
    pub async fn write(&self, client: &Client, token: u64, ops: Vec<TxnOp>) -> Result<bool, ClientError> {
        Ok(!client.txn(self.txn(token, ops)).await?.succeeded)
    }

    /// Sets `key` to `value` under `token`; whether it was written.
    pub async fn put(
        &self,
        client: &Client,
        token: u64,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<bool, ClientError> {
        let op = TxnOp::Put { key: key.as_ref().to_vec(), value: value.as_ref().to_vec() };
        self.write(client, token, vec![op]).await
    }
}

#[cfg(test)]
mod tests;
