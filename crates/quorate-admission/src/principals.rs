//! A bounded table of per-principal state with oldest-idle eviction.

use std::collections::{BTreeMap, BTreeSet};

use crate::class::Principal;
use crate::time::Nanos;

/// Largest `principals_tracked_max` a table accepts.
pub const PRINCIPALS_TRACKED_CEILING: usize = 1 << 20;

/// Every tracked principal is pinned (has work in flight); nothing can be evicted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("all {principals_tracked_max} tracked principals have work in flight")]
pub struct TableFull {
    /// The table's capacity.
    pub principals_tracked_max: usize,
}

#[derive(Clone, Debug)]
struct Slot<V> {
    value: V,
    pins_count: u32,
    idle_since: Nanos,
}

/// Per-principal state for at most `principals_tracked_max` principals.
///
/// A principal is *pinned* while it has work in flight and is never evicted then (its state
/// is needed to release that work). When the table is full, inserting a new principal evicts
/// the principal that has been idle the longest. Evicting forgets its state: a rate-limit
/// bucket that was not yet full is forgiven. That is the price of a bounded table; keep the
/// bound well above the number of principals active at once.
///
/// Ordered maps rather than hash maps: no per-process random hash seed, so a run replays
/// exactly, and every operation is `O(log n)` with `n` bounded.
#[derive(Clone, Debug)]
pub struct PrincipalTable<V> {
    slots: BTreeMap<Principal, Slot<V>>,
    /// Unpinned principals by the time they became idle: the eviction order.
    idle: BTreeSet<(Nanos, Principal)>,
    principals_tracked_max: usize,
}

impl<V> PrincipalTable<V> {
    /// An empty table.
    ///
    /// # Panics
    /// If `principals_tracked_max` is zero or above [`PRINCIPALS_TRACKED_CEILING`].
    pub fn new(principals_tracked_max: usize) -> PrincipalTable<V> {
        assert!(principals_tracked_max > 0 && principals_tracked_max <= PRINCIPALS_TRACKED_CEILING);
        PrincipalTable { slots: BTreeMap::new(), idle: BTreeSet::new(), principals_tracked_max }
    }

    /// The state of `principal`, if tracked.
    pub fn get(&self, principal: Principal) -> Option<&V> {
        self.slots.get(&principal).map(|slot| &slot.value)
    }

    /// The state of `principal`, if tracked.
    pub fn get_mut(&mut self, principal: Principal) -> Option<&mut V> {
        self.slots.get_mut(&principal).map(|slot| &mut slot.value)
    }

    /// The state of `principal`, inserting `make()` (idle since `now`) if it is not tracked,
    /// after evicting the longest-idle principal if the table is full.
    pub fn get_or_insert_with(
        &mut self,
        principal: Principal,
        now: Nanos,
        make: impl FnOnce() -> V,
    ) -> Result<&mut V, TableFull> {
        if !self.slots.contains_key(&principal) {
            if self.slots.len() >= self.principals_tracked_max {
                let Some((_, evicted)) = self.idle.pop_first() else {
                    return Err(TableFull { principals_tracked_max: self.principals_tracked_max });
                };
                let slot = self.slots.remove(&evicted).expect("every idle principal has a slot");
                assert_eq!(slot.pins_count, 0);
            }
            self.slots.insert(principal, Slot { value: make(), pins_count: 0, idle_since: now });
            self.idle.insert((now, principal));
        }
        assert!(self.slots.len() <= self.principals_tracked_max);
        Ok(&mut self.slots.get_mut(&principal).expect("inserted above").value)
    }

    /// Marks one more unit of work in flight for `principal`, which must be tracked.
    pub fn pin(&mut self, principal: Principal) {
        let slot = self.slots.get_mut(&principal).expect("pin of an untracked principal");
        if slot.pins_count == 0 {
            let removed = self.idle.remove(&(slot.idle_since, principal));
            assert!(removed);
        }
        slot.pins_count = slot.pins_count.checked_add(1).expect("pins bounded by the concurrency limit");
    }

    /// Marks one unit of work of `principal` done at `now`.
    ///
    /// # Panics
    /// If `principal` is not pinned: a double release.
    pub fn unpin(&mut self, principal: Principal, now: Nanos) {
        let slot = self.slots.get_mut(&principal).expect("a pinned principal is never evicted");
        assert!(slot.pins_count > 0, "unpin of {principal} with nothing in flight");
        slot.pins_count -= 1;
        if slot.pins_count == 0 {
            slot.idle_since = now;
            self.idle.insert((now, principal));
        }
    }

    /// Work in flight for `principal` (zero if not tracked).
    pub fn pins_count(&self, principal: Principal) -> u32 {
        self.slots.get(&principal).map_or(0, |slot| slot.pins_count)
    }

    /// Principals with work in flight.
    pub fn active_count(&self) -> usize {
        assert!(self.idle.len() <= self.slots.len());
        self.slots.len() - self.idle.len()
    }

    /// Principals tracked.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no principal is tracked.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: u64) -> Principal {
        Principal(n)
    }

    #[test]
    fn evicts_the_longest_idle_never_a_pinned_one() {
        let mut t = PrincipalTable::new(3);
        for (i, at) in [(1, 10), (2, 20), (3, 30)] {
            *t.get_or_insert_with(p(i), Nanos(at), || 0).unwrap() = i;
        }
        t.pin(p(1)); // 1 is the oldest but busy.
        t.get_or_insert_with(p(4), Nanos(40), || 4).unwrap();
        assert!(t.get(p(2)).is_none(), "2 was idle the longest");
        assert_eq!(t.get(p(1)), Some(&1));
        assert_eq!(t.len(), 3);
        assert_eq!(t.active_count(), 1);
        // Once 1 is done it becomes the most recently idle.
        t.unpin(p(1), Nanos(50));
        t.get_or_insert_with(p(5), Nanos(60), || 5).unwrap();
        assert!(t.get(p(3)).is_none());
        assert!(t.get(p(1)).is_some());
    }

    #[test]
    fn full_of_pinned_principals_refuses() {
        let mut t = PrincipalTable::new(2);
        for i in 1..=2 {
            t.get_or_insert_with(p(i), Nanos(i), || ()).unwrap();
            t.pin(p(i));
            t.pin(p(i));
        }
        assert_eq!(t.get_or_insert_with(p(3), Nanos(9), || ()), Err(TableFull { principals_tracked_max: 2 }));
        assert_eq!(t.pins_count(p(1)), 2);
        t.unpin(p(1), Nanos(10));
        assert_eq!(t.active_count(), 2);
        t.unpin(p(1), Nanos(11));
        assert_eq!(t.active_count(), 1);
        t.get_or_insert_with(p(3), Nanos(12), || ()).unwrap();
        assert!(t.get(p(1)).is_none());
    }

    #[test]
    #[should_panic(expected = "nothing in flight")]
    fn double_unpin_panics() {
        let mut t = PrincipalTable::new(2);
        t.get_or_insert_with(p(1), Nanos(1), || ()).unwrap();
        t.pin(p(1));
        t.unpin(p(1), Nanos(2));
        t.unpin(p(1), Nanos(3));
    }
}
