//! The leader's lease clock: each lease's deadline on the leader's monotonic clock.
//!
//! Leases are replicated state ([`crate::sm::leases`]); their deadlines are not. Every node's
//! apply thread tells this clock what the log granted and removed ([`LeaseClock::applied`]);
//! only the leader uses the deadlines:
//!
//! * when a node takes office as leader (the first sweep of its term after it has applied an
//!   entry of the term, so every earlier term's entry in its log is applied), it loads the lease
//!   table if it must (a bounded scan, at most [`quorate_api::limits::LEASES_MAX`] leases) and
//!   gives **every** lease its full TTL from that moment: a keep-alive the previous leader
//!   accepted is not known here, so the remaining TTL becomes the full TTL;
//! * a keep-alive ([`LeaseClock::keep_alive`]) moves the deadline to now + TTL, in memory only
//!   (like etcd: keep-alives are not replicated);
//! * each sweep, the leases whose deadline passed are proposed as
//!   [`CommandOp::LeaseExpire`](quorate_api::CommandOp::LeaseExpire) ([`LeaseClock::due`]); an
//!   expire applied after a revoke (or twice) is a no-op result. The leases are kept in order
//!   of when the sweep must next look at each (its deadline, or the retry time of a proposed
//!   expire), so a sweep costs O(due · log n), not a walk of every lease.
//!
//! Nothing assumes a clock rate beyond the leader's own monotonic clock: the deadlines are
//! `Instant`s on the leader, never compared across nodes.

use crate::sm::leases::LeaseChange;
use crate::sm::{SmError, SmRead};
use quorate_api::{ApiError, LeaseId};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long the leader waits for a proposed expire to be applied before proposing it again
/// (the proposal may have been lost with a leadership change and regained).
pub(crate) const EXPIRE_RETRY: Duration = Duration::from_secs(2);
/// Most expires proposed per sweep (the rest in the next ones).
pub(crate) const EXPIRES_PER_SWEEP: usize = 256;

#[derive(Debug)]
struct Tracked {
    owner: String,
    ttl_ms: u64,
    deadline: Instant,
    expire_proposed: Option<Instant>,
    /// Its place in [`Inner::queue`]: the deadline, or once an expire is proposed the time of
    /// its retry.
    next: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    leases: HashMap<LeaseId, Tracked>,
    /// The ids in `leases` by owner: a principal's list is read without walking every lease.
    by_owner: HashMap<String, BTreeSet<LeaseId>>,
    /// Every lease in `leases` once, by its `next`: a sweep takes the due ones from the front.
    queue: BTreeSet<(Instant, LeaseId)>,
    /// The table reflects the applied state machine (false at start and after an install).
    loaded: bool,
    /// The term in which this node took office as leader and gave every lease its full TTL.
    office: Option<u64>,
}

impl Inner {
    fn track(&mut self, id: LeaseId, owner: String, ttl_ms: u64, deadline: Instant) {
        self.by_owner.entry(owner.clone()).or_default().insert(id);
        let tracked = Tracked { owner, ttl_ms, deadline, expire_proposed: None, next: deadline };
        if let Some(old) = self.leases.insert(id, tracked) {
            self.queue.remove(&(old.next, id));
        }
        self.queue.insert((deadline, id));
    }

    /// Moves lease `id`'s place in the queue to `next`.
    fn requeue(&mut self, id: LeaseId, next: Instant) {
        if let Some(t) = self.leases.get_mut(&id) {
            self.queue.remove(&(t.next, id));
            t.next = next;
            self.queue.insert((next, id));
        }
    }
}

/// The lease deadlines (shared by the apply thread and the driver).
#[derive(Debug, Default)]
pub(crate) struct LeaseClock(Mutex<Inner>);

/// A lease as the leader's clock sees it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct Seen {
    pub(crate) id: LeaseId,
    pub(crate) owner: String,
    pub(crate) ttl_ms: u64,
    pub(crate) remaining_ms: u64,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl LeaseClock {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What an applied command did to the lease table (apply thread, after the batch is
    /// written). Idempotent, so that a reload racing with it gives the same table.
    pub(crate) fn applied(&self, change: &LeaseChange, now: Instant) {
        let mut inner = self.inner();
        match change {
            LeaseChange::Granted { id, owner, ttl_ms } => {
                if !inner.leases.contains_key(id) {
                    inner.track(*id, owner.clone(), *ttl_ms, now + Duration::from_millis(*ttl_ms));
                }
            }
            LeaseChange::Gone(id) => {
                if let Some(t) = inner.leases.remove(id) {
                    inner.queue.remove(&(t.next, *id));
                    if let Some(ids) = inner.by_owner.get_mut(&t.owner) {
                        ids.remove(id);
                        if ids.is_empty() {
                            inner.by_owner.remove(&t.owner);
                        }
                    }
                }
            }
        }
    }

    /// The state machine was replaced (snapshot install, repair): reload before using it.
    pub(crate) fn invalidate(&self) {
        let mut inner = self.inner();
        inner.loaded = false;
        inner.office = None;
    }

    /// This node is not the leader (or not at the lease cluster version): the next time it is,
    /// it takes office anew.
    pub(crate) fn step_down(&self) {
        self.inner().office = None;
    }

    /// The leader of `term`, whose applied state machine is at an entry of `applied_term`: on
    /// the first call of the term once it has applied an entry of the term (its no-op), loads
    /// the table if it must and gives every lease its full TTL from `now`. Returns whether it
    /// took office now.
    pub(crate) fn take_office(
        &self,
        term: u64,
        applied_term: u64,
        now: Instant,
        store: &(impl SmRead + ?Sized),
    ) -> Result<bool, SmError> {
        let mut inner = self.inner();
        if inner.office == Some(term) && inner.loaded {
            return Ok(false);
        }
        if applied_term < term {
            // The previous terms' entries in this leader's log (a revoke, a grant, an expire
            // a deposed leader proposed) are committed by its own term's first entry and
            // applied before it: until then its table may hold a lease the log has removed,
            // and its deadlines may be an earlier term's. Not in office: no keep-alive is
            // answered and no expiry proposed.
            return Ok(false);
        }
        if !inner.loaded {
            // Under the lock: the apply thread's changes after this scan are applied on top.
            let all = crate::sm::leases::all_leases(store)?;
            inner.leases.clear();
            inner.by_owner.clear();
            inner.queue.clear();
            for (id, owner, ttl_ms) in all {
                inner.track(id, owner, ttl_ms, now);
            }
            inner.loaded = true;
        }
        let Inner { leases, queue, .. } = &mut *inner;
        queue.clear();
        for (id, t) in leases.iter_mut() {
            t.deadline = now + Duration::from_millis(t.ttl_ms);
            t.expire_proposed = None;
            t.next = t.deadline;
            queue.insert((t.next, *id));
        }
        inner.office = Some(term);
        Ok(true)
    }

    /// Whether this node holds office in `term` (its deadlines are meaningful).
    pub(crate) fn in_office(&self, term: u64) -> bool {
        let inner = self.inner();
        inner.loaded && inner.office == Some(term)
    }

    /// Leases whose deadline passed and whose expire was not proposed in the last
    /// [`EXPIRE_RETRY`]: marked as proposed, at most `max`, the earliest first (returned by
    /// id). Takes them from the front of the queue: O(due · log n).
    pub(crate) fn due(&self, now: Instant, max: usize) -> Vec<LeaseId> {
        let mut inner = self.inner();
        debug_assert_eq!(inner.queue.len(), inner.leases.len(), "every lease queued once");
        let mut out = Vec::new();
        while out.len() < max {
            let Some(&(next, id)) = inner.queue.first() else { break };
            if next > now {
                break;
            }
            let known = match inner.leases.get_mut(&id) {
                Some(t) => {
                    debug_assert!(t.deadline <= now, "a queued time is never before the deadline");
                    t.expire_proposed = Some(now);
                    true
                }
                None => false,
            };
            if !known {
                // Not reachable: a lease leaves the queue with the table.
                inner.queue.pop_first();
                continue;
            }
            inner.requeue(id, now + EXPIRE_RETRY);
            out.push(id);
        }
        out.sort();
        out
    }

    /// A keep-alive by `principal` (an admin if `admin`): the lease gets its full TTL from
    /// `now`. Refused for a lease this leader does not know, another principal's (answered as
    /// an absent one), or one whose expiry is already proposed.
    pub(crate) fn keep_alive(&self, id: LeaseId, principal: &str, admin: bool, now: Instant) -> Result<u64, ApiError> {
        let mut inner = self.inner();
        let gone = || ApiError::InvalidRequest(format!("lease {} not found (revoked, expired, or not yours)", id.0));
        let t = inner.leases.get_mut(&id).ok_or_else(gone)?;
        if !admin && t.owner != principal {
            return Err(gone());
        }
        if t.expire_proposed.is_some() {
            return Err(ApiError::InvalidRequest(format!("lease {} expired", id.0)));
        }
        t.deadline = now + Duration::from_millis(t.ttl_ms);
        let (deadline, ttl_ms) = (t.deadline, t.ttl_ms);
        inner.requeue(id, deadline);
        Ok(ttl_ms)
    }

    /// One lease, if `principal` (or an admin) may see it.
    pub(crate) fn get(&self, id: LeaseId, principal: &str, admin: bool, now: Instant) -> Option<Seen> {
        let inner = self.inner();
        let t = inner.leases.get(&id)?;
        (admin || t.owner == principal).then(|| Seen {
            id,
            owner: t.owner.clone(),
            ttl_ms: t.ttl_ms,
            remaining_ms: ms(t.deadline.saturating_duration_since(now)),
        })
    }

    /// The leases of `principal`, by id (at most [`quorate_api::limits::LEASES_PER_PRINCIPAL_MAX`]).
    pub(crate) fn list(&self, principal: &str, now: Instant) -> Vec<Seen> {
        let inner = self.inner();
        let Some(ids) = inner.by_owner.get(principal) else { return Vec::new() };
        let max = usize::try_from(quorate_api::limits::LEASES_PER_PRINCIPAL_MAX).unwrap_or(usize::MAX);
        ids.iter()
            .take(max)
            .filter_map(|id| inner.leases.get(id).map(|t| (id, t)))
            .map(|(id, t)| Seen {
                id: *id,
                owner: t.owner.clone(),
                ttl_ms: t.ttl_ms,
                remaining_ms: ms(t.deadline.saturating_duration_since(now)),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn granted(id: u64, owner: &str, ttl_ms: u64) -> LeaseChange {
        LeaseChange::Granted { id: LeaseId(id), owner: owner.into(), ttl_ms }
    }

    #[test]
    fn a_new_leader_gives_every_lease_its_full_ttl_and_expires_it_after() {
        let store: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let clock = LeaseClock::default();
        let t0 = Instant::now();
        clock.applied(&granted(7, "alice", 3_000), t0);
        assert!(clock.take_office(1, 1, t0, &store).unwrap());
        // The empty store replaced what the apply thread said before the load.
        assert!(clock.get(LeaseId(7), "alice", false, t0).is_none());
        clock.applied(&granted(7, "alice", 3_000), t0);
        assert!(!clock.take_office(1, 1, t0, &store).unwrap());
        let t1 = t0 + Duration::from_millis(2_000);
        assert!(clock.due(t1, 10).is_empty());
        // A keep-alive by another principal is refused; the owner's moves the deadline.
        assert!(clock.keep_alive(LeaseId(7), "bob", false, t1).is_err());
        assert_eq!(clock.keep_alive(LeaseId(7), "alice", false, t1), Ok(3_000));
        let t2 = t0 + Duration::from_millis(4_000);
        assert!(clock.due(t2, 10).is_empty());
        // A leader change: the next term's leader gives it its full TTL again.
        clock.step_down();
        let t3 = t0 + Duration::from_millis(4_900);
        assert!(clock.take_office(2, 2, t3, &store).unwrap());
        assert_eq!(clock.get(LeaseId(7), "alice", false, t3).unwrap().remaining_ms, 3_000);
        assert!(clock.due(t3 + Duration::from_millis(2_999), 10).is_empty());
        let t4 = t3 + Duration::from_millis(3_000);
        assert_eq!(clock.due(t4, 10), vec![LeaseId(7)]);
        // Proposed once per retry period; a keep-alive after it is refused.
        assert!(clock.due(t4, 10).is_empty());
        assert!(clock.keep_alive(LeaseId(7), "alice", false, t4).is_err());
        assert_eq!(clock.due(t4 + EXPIRE_RETRY, 10), vec![LeaseId(7)]);
        clock.applied(&LeaseChange::Gone(LeaseId(7)), t4);
        assert!(clock.due(t4 + EXPIRE_RETRY * 2, 10).is_empty());
    }

    #[test]
    fn a_sweep_takes_only_the_due_leases_earliest_first_and_each_again_only_after_the_retry() {
        let store: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let clock = LeaseClock::default();
        let t0 = Instant::now();
        assert!(clock.take_office(1, 1, t0, &store).unwrap());
        // 1,000 leases: lease 10,000 − i has a TTL of 3 s + 10·i ms (ids in reverse order of
        // deadline).
        for i in 0..1_000u64 {
            clock.applied(&granted(10_000 - i, "alice", 3_000 + 10 * i), t0);
        }
        let ms = Duration::from_millis;
        let ids = |r: std::ops::RangeInclusive<u64>| r.map(LeaseId).collect::<Vec<_>>();
        assert!(clock.due(t0 + ms(2_999), 100).is_empty());
        // At 3.04 s five are due: the five earliest, returned by id.
        assert_eq!(clock.due(t0 + ms(3_040), 100), ids(9_996..=10_000));
        // At most `max` per sweep, the earliest first.
        assert_eq!(clock.due(t0 + ms(3_100), 3), ids(9_993..=9_995));
        // A keep-alive moves a lease back in the queue; a revoked one leaves it.
        assert_eq!(clock.keep_alive(LeaseId(9_992), "alice", false, t0 + ms(3_000)), Ok(3_080));
        clock.applied(&LeaseChange::Gone(LeaseId(9_991)), t0);
        assert_eq!(clock.due(t0 + ms(3_110), 100), ids(9_989..=9_990));
        // Each proposed once: nothing more is due at the same time.
        assert!(clock.due(t0 + ms(3_110), 100).is_empty());
        // At 5.04 s: the five proposed at 3.04 s again (the retry period passed), not those
        // proposed later, and every lease whose deadline passed meanwhile (i = 12..=204).
        let again = clock.due(t0 + ms(5_040), 2_000);
        assert_eq!(again.len(), 5 + 193, "{again:?}");
        assert!(again.contains(&LeaseId(10_000)) && !again.contains(&LeaseId(9_993)));
        assert!(!again.contains(&LeaseId(9_992)), "kept alive until 6.08 s");
        // A new term gives every lease its full TTL again: nothing due until then, then the
        // 100 leases with a TTL up to 4 s (one of the 101 is gone).
        clock.step_down();
        let t1 = t0 + ms(10_000);
        assert!(clock.take_office(2, 2, t1, &store).unwrap());
        assert!(clock.due(t1 + ms(2_999), 2_000).is_empty());
        assert_eq!(clock.due(t1 + ms(4_000), 2_000).len(), 100);
    }

    #[test]
    fn a_principal_lists_its_own_leases_by_id_through_the_index_by_owner() {
        let mut store = BTreeMap::new();
        applied_at(&mut store, 1, quorate_api::CommandOp::SetClusterVersion { version: 2 });
        applied_at(&mut store, 2, quorate_api::CommandOp::LeaseGrant { principal: "bob".into(), ttl_ms: 4_000 });
        let clock = LeaseClock::default();
        let t0 = Instant::now();
        // Loaded from the store at office: the index holds bob's lease.
        assert!(clock.take_office(1, 1, t0, &store).unwrap());
        let ids = |who: &str| clock.list(who, t0).into_iter().map(|s| s.id.0).collect::<Vec<_>>();
        assert_eq!(ids("bob"), vec![2]);
        for (id, owner) in [(9, "alice"), (5, "alice"), (7, "bob"), (6, "alice")] {
            clock.applied(&granted(id, owner, 3_000), t0);
        }
        // A grant told twice (a reload racing with the apply thread) is listed once.
        clock.applied(&granted(5, "alice", 3_000), t0);
        assert_eq!(ids("alice"), vec![5, 6, 9]);
        assert_eq!(ids("bob"), vec![2, 7]);
        assert!(ids("carol").is_empty());
        let seen = &clock.list("alice", t0)[0];
        assert_eq!((seen.owner.as_str(), seen.ttl_ms, seen.remaining_ms), ("alice", 3_000, 3_000));
        clock.applied(&LeaseChange::Gone(LeaseId(6)), t0);
        clock.applied(&LeaseChange::Gone(LeaseId(2)), t0);
        assert_eq!(ids("alice"), vec![5, 9]);
        assert_eq!(ids("bob"), vec![7]);
        // An install: reloaded from the store, which holds only bob's lease 2.
        clock.invalidate();
        assert!(clock.take_office(1, 1, t0, &store).unwrap());
        assert_eq!(ids("bob"), vec![2]);
        assert!(ids("alice").is_empty());
    }

    /// `store` after applying `op` at `index` (cluster version 2 set at index 1).
    fn applied_at(store: &mut BTreeMap<Vec<u8>, Vec<u8>>, index: u64, op: quorate_api::CommandOp) {
        let ops = {
            let mut ov = crate::sm::Overlay::new(&*store);
            let cmd = quorate_api::Command { session: None, time_ms: index, op };
            let out = crate::sm::apply_command(&mut ov, quorate_log::LogIndex(index), &cmd).unwrap();
            assert!(out.result.is_ok(), "{:?}", out.result);
            ov.into_ops()
        };
        for op in ops {
            match op {
                quorate_storage::SmOp::Put { key, value } => {
                    store.insert(key, value);
                }
                quorate_storage::SmOp::Delete { key } => {
                    store.remove(&key);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn a_new_leader_takes_office_only_once_it_has_applied_an_entry_of_its_term() {
        // Term 1: lease 2 granted (applied everywhere), then revoked at index 3 — committed by
        // the term-2 leader's no-op, which it has not applied yet when its first sweep runs.
        let mut store = BTreeMap::new();
        applied_at(&mut store, 1, quorate_api::CommandOp::SetClusterVersion { version: 2 });
        applied_at(&mut store, 2, quorate_api::CommandOp::LeaseGrant { principal: "alice".into(), ttl_ms: 3_000 });
        let clock = LeaseClock::default();
        let t0 = Instant::now();
        // Its state machine is at a term-1 entry: not in office, so no keep-alive is answered
        // from a table that still holds the revoked lease, and no deadline is used.
        assert!(!clock.take_office(2, 1, t0, &store).unwrap());
        assert!(!clock.in_office(2));
        // The revoke (and the no-op) applied: in office, and the lease is gone.
        let revoke = quorate_api::CommandOp::LeaseRevoke { principal: "alice".into(), admin: false, id: LeaseId(2) };
        applied_at(&mut store, 3, revoke);
        clock.applied(&LeaseChange::Gone(LeaseId(2)), t0);
        assert!(clock.take_office(2, 2, t0, &store).unwrap());
        assert!(clock.in_office(2));
        assert!(clock.keep_alive(LeaseId(2), "alice", false, t0).is_err());
    }
}
