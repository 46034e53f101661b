//! Fair scheduling of waiting requests across principals: deficit round robin (DRR) over one
//! bounded FIFO lane per principal, each request charged its estimated cost.

use std::collections::{HashMap, VecDeque};

use crate::class::Principal;
use crate::config::ConfigError;
use crate::queue::{QueueRefusal, Refused};

/// Largest `principals_max` accepted.
pub const FAIR_PRINCIPALS_CEILING: usize = 1 << 16;
/// Largest `count_max` (and `principal_count_max`) accepted.
pub const FAIR_QUEUED_COUNT_CEILING: usize = 1 << 20;
/// Largest `quantum_cost` accepted: costs are plain numbers chosen by the caller (bytes,
/// microseconds); this keeps every sum of them far from overflow.
pub const FAIR_QUANTUM_COST_CEILING: u64 = 1 << 40;

const _: () = assert!((FAIR_QUANTUM_COST_CEILING as u128) * (FAIR_QUEUED_COUNT_CEILING as u128) < u64::MAX as u128);

/// The bounds of a [`FairQueue`]. Every one is a hard cap: a push past it is refused and the
/// item handed back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FairLimits {
    /// Principals with requests waiting at once (each has its own lane).
    pub principals_max: usize,
    /// Requests waiting per principal.
    pub principal_count_max: usize,
    /// Requests waiting in all.
    pub count_max: usize,
    /// Bytes of requests waiting per principal (the sizes the caller passes).
    pub principal_bytes_max: u64,
    /// Bytes of requests waiting in all.
    pub bytes_max: u64,
    /// Cost credited to a principal's lane at each of its turns; a request's cost is clamped
    /// to `1..=quantum_cost`, so that every turn serves at least one request (a pop is O(1)).
    /// A principal whose first request arrives waits for at most one turn of every other
    /// principal with work: less than `2 × quantum_cost` of each one's cost.
    pub quantum_cost: u64,
}

impl FairLimits {
    /// Checks every field, naming the wrong one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let checks: [(&'static str, u64, u64); 6] = [
            ("principals_max", self.principals_max as u64, FAIR_PRINCIPALS_CEILING as u64),
            ("principal_count_max", self.principal_count_max as u64, FAIR_QUEUED_COUNT_CEILING as u64),
            ("count_max", self.count_max as u64, FAIR_QUEUED_COUNT_CEILING as u64),
            ("principal_bytes_max", self.principal_bytes_max, u64::MAX / 2),
            ("bytes_max", self.bytes_max, u64::MAX / 2),
            ("quantum_cost", self.quantum_cost, FAIR_QUANTUM_COST_CEILING),
        ];
        for (field, value, ceiling) in checks {
            if value == 0 {
                return Err(ConfigError::Zero { field });
            }
            if value > ceiling {
                return Err(ConfigError::AboveCeiling { field, value, ceiling });
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct Queued<T> {
    cost: u64,
    bytes: u64,
    item: T,
}

#[derive(Debug, Clone)]
struct Lane<T> {
    principal: Principal,
    items: VecDeque<Queued<T>>,
    bytes: u64,
    /// Cost this lane may still be served in its current turn (DRR's deficit counter).
    deficit: u64,
}

/// Requests waiting to be served, one FIFO lane per [`Principal`], served by deficit round
/// robin: lanes with work take turns; at its turn a lane is credited `quantum_cost` and
/// serves its oldest requests while their costs fit its credit; what is left over carries to
/// its next turn, and a lane that empties loses it (no saving up while idle).
///
/// What it guarantees, whatever the arrival order:
/// * **Share by cost, not by count.** Between any two principals that both have requests
///   waiting, the cost served to one never runs ahead of the other's by more than
///   `2 × quantum_cost + cost_max` (`cost_max ≤ quantum_cost`): a principal sending many cheap
///   requests and one sending few expensive ones get the same cost of service.
/// * **No starvation.** A principal's first request waits for at most one turn of each other
///   principal with work (less than `2 × quantum_cost` of each one's cost: a quantum and what
///   was left of its previous turn), however deep their backlogs.
/// * **Bounded.** At most `principals_max` lanes, `principal_count_max` requests and
///   `principal_bytes_max` bytes per principal, `count_max` and `bytes_max` in all; a push
///   past a bound hands the item back ([`Refused`]) and the caller answers it (a shed).
/// * **O(1).** A push or a pop does a constant amount of work (a hash lookup and at most two
///   lanes visited); memory grows only with what waits.
///
/// Sans-IO: nothing here knows time; the caller decides how many to pop and when.
#[derive(Debug, Clone)]
pub struct FairQueue<T> {
    limits: FairLimits,
    /// Lanes by slot; `None` for a free slot.
    lanes: Vec<Option<Lane<T>>>,
    free: Vec<usize>,
    slot_of: HashMap<Principal, usize>,
    /// Slots of the lanes with work, in turn order; the front one is being served.
    turns: VecDeque<usize>,
    /// Whether the front lane has been credited for its current turn.
    in_turn: bool,
    count: usize,
    bytes: u64,
}

impl<T> FairQueue<T> {
    /// An empty queue with these bounds.
    pub fn new(limits: FairLimits) -> Result<FairQueue<T>, ConfigError> {
        limits.validate()?;
        Ok(FairQueue {
            limits,
            lanes: Vec::new(),
            free: Vec::new(),
            slot_of: HashMap::new(),
            turns: VecDeque::new(),
            in_turn: false,
            count: 0,
            bytes: 0,
        })
    }

    /// The bounds.
    pub fn limits(&self) -> &FairLimits {
        &self.limits
    }

    /// Queues `item` of `principal`, charged `cost` (clamped to `1..=quantum_cost`) when it is
    /// served and counted as `bytes` against the byte bounds; or hands it back with the bound
    /// it would break.
    pub fn try_push(&mut self, principal: Principal, cost: u64, bytes: u64, item: T) -> Result<(), Refused<T>> {
        let l = self.limits;
        let refuse = |item, reason| Err(Refused { item, reason });
        if self.count >= l.count_max {
            return refuse(item, QueueRefusal::Full { capacity_count: l.count_max });
        }
        if self.bytes.saturating_add(bytes) > l.bytes_max {
            return refuse(item, QueueRefusal::Bytes { capacity_bytes: l.bytes_max });
        }
        let slot = match self.slot_of.get(&principal) {
            Some(&slot) => {
                let lane = self.lanes[slot].as_ref().expect("a mapped slot holds a lane");
                if lane.items.len() >= l.principal_count_max {
                    return refuse(item, QueueRefusal::PrincipalFull { capacity_count: l.principal_count_max });
                }
                if lane.bytes.saturating_add(bytes) > l.principal_bytes_max {
                    return refuse(item, QueueRefusal::PrincipalBytes { capacity_bytes: l.principal_bytes_max });
                }
                slot
            }
            None => {
                if self.slot_of.len() >= l.principals_max {
                    return refuse(item, QueueRefusal::Principals { capacity_count: l.principals_max });
                }
                if bytes > l.principal_bytes_max {
                    return refuse(item, QueueRefusal::PrincipalBytes { capacity_bytes: l.principal_bytes_max });
                }
                let lane = Lane { principal, items: VecDeque::new(), bytes: 0, deficit: 0 };
                let slot = match self.free.pop() {
                    Some(slot) => {
                        self.lanes[slot] = Some(lane);
                        slot
                    }
                    None => {
                        self.lanes.push(Some(lane));
                        self.lanes.len() - 1
                    }
                };
                self.slot_of.insert(principal, slot);
                // A new lane waits for its turn behind the lanes already taking turns.
                self.turns.push_back(slot);
                slot
            }
        };
        let lane = self.lanes[slot].as_mut().expect("the slot was just found or filled");
        let cost = cost.clamp(1, l.quantum_cost);
        lane.items.push_back(Queued { cost, bytes, item });
        lane.bytes += bytes;
        self.count += 1;
        self.bytes += bytes;
        debug_assert!(self.count <= l.count_max && self.bytes <= l.bytes_max);
        debug_assert!(self.slot_of.len() == self.turns.len() && self.turns.len() <= l.principals_max);
        Ok(())
    }

    /// The next request by deficit round robin, with its principal and the cost charged.
    pub fn pop(&mut self) -> Option<(Principal, u64, T)> {
        // A lane at the start of its turn is credited a quantum, which covers any one cost:
        // at most one lane ends its turn before one serves.
        for _ in 0..2 {
            let slot = *self.turns.front()?;
            let lane = self.lanes[slot].as_mut().expect("a lane taking turns exists");
            if !self.in_turn {
                lane.deficit = lane.deficit.saturating_add(self.limits.quantum_cost);
                self.in_turn = true;
            }
            let front_cost = lane.items.front().expect("a lane taking turns has work").cost;
            if lane.deficit < front_cost {
                // Its credit is spent: the next lane's turn; the rest carries over.
                self.turns.rotate_left(1);
                self.in_turn = false;
                continue;
            }
            let q = lane.items.pop_front().expect("checked above");
            lane.deficit -= q.cost;
            lane.bytes -= q.bytes;
            self.count -= 1;
            self.bytes -= q.bytes;
            let principal = lane.principal;
            if lane.items.is_empty() {
                // An emptied lane leaves the turns and forgets its credit.
                debug_assert_eq!(lane.bytes, 0);
                self.lanes[slot] = None;
                self.free.push(slot);
                self.slot_of.remove(&principal);
                self.turns.pop_front();
                self.in_turn = false;
            }
            return Some((principal, q.cost, q.item));
        }
        unreachable!("a lane credited a quantum serves at least one request of cost at most the quantum")
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of the requests waiting.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Principals with requests waiting.
    pub fn principal_count(&self) -> usize {
        self.slot_of.len()
    }

    /// Requests of `principal` waiting.
    pub fn principal_len(&self, principal: Principal) -> usize {
        self.slot_of.get(&principal).and_then(|&s| self.lanes[s].as_ref()).map_or(0, |l| l.items.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn limits(quantum_cost: u64) -> FairLimits {
        FairLimits {
            principals_max: 64,
            principal_count_max: 1024,
            count_max: 8192,
            principal_bytes_max: 1 << 30,
            bytes_max: 1 << 32,
            quantum_cost,
        }
    }

    #[test]
    fn one_principal_is_served_in_arrival_order() {
        let mut q = FairQueue::new(limits(10)).unwrap();
        for i in 0..5 {
            q.try_push(Principal(1), 1 + i % 3 * 4, 1, i).unwrap();
        }
        let order: Vec<u64> = std::iter::from_fn(|| q.pop().map(|(_, _, i)| i)).collect();
        assert_eq!(order, [0, 1, 2, 3, 4]);
        assert!(q.is_empty());
        assert_eq!((q.bytes(), q.principal_count()), (0, 0));
    }

    #[test]
    fn a_cheap_request_waits_one_turn_not_a_backlog() {
        // Principal 1 has 1,000 requests of the largest cost waiting; principal 2's one cheap
        // request is served after at most one turn of principal 1 (one quantum of its cost).
        let mut q = FairQueue::new(limits(100)).unwrap();
        for i in 0..1000 {
            q.try_push(Principal(1), 100, 10, i).unwrap();
        }
        q.try_push(Principal(2), 1, 10, 9999).unwrap();
        let position = std::iter::from_fn(|| q.pop()).position(|(p, _, _)| p == Principal(2)).unwrap();
        assert!(position <= 1, "served after {position} requests of the backlog");
    }

    #[test]
    fn shares_follow_cost_not_count() {
        // 1 sends requests of cost 1, 2 sends requests of cost 50: over 10,000 cost units
        // served while both are backlogged, each gets half of the cost.
        let mut q = FairQueue::new(limits(50)).unwrap();
        for i in 0..1000 {
            q.try_push(Principal(1), 1, 0, i).unwrap();
        }
        for i in 0..1000 {
            q.try_push(Principal(2), 50, 0, i).unwrap();
        }
        let mut served = [0u64; 2];
        while served.iter().sum::<u64>() < 1000 {
            let (p, cost, _) = q.pop().unwrap();
            served[(p.0 - 1) as usize] += cost;
        }
        assert!(served[0].abs_diff(served[1]) <= 150, "{served:?}");
    }

    #[test]
    fn every_bound_refuses_and_hands_the_item_back() {
        let l = FairLimits {
            principals_max: 2,
            principal_count_max: 2,
            count_max: 3,
            principal_bytes_max: 100,
            bytes_max: 150,
            quantum_cost: 10,
        };
        let mut q = FairQueue::new(l).unwrap();
        q.try_push(Principal(1), 1, 60, 'a').unwrap();
        let r = q.try_push(Principal(1), 1, 41, 'b').unwrap_err();
        assert_eq!((r.item, r.reason), ('b', QueueRefusal::PrincipalBytes { capacity_bytes: 100 }));
        q.try_push(Principal(1), 1, 40, 'b').unwrap();
        let r = q.try_push(Principal(1), 1, 0, 'c').unwrap_err();
        assert_eq!(r.reason, QueueRefusal::PrincipalFull { capacity_count: 2 });
        let r = q.try_push(Principal(2), 1, 51, 'c').unwrap_err();
        assert_eq!(r.reason, QueueRefusal::Bytes { capacity_bytes: 150 });
        q.try_push(Principal(2), 1, 50, 'c').unwrap();
        let r = q.try_push(Principal(3), 1, 0, 'd').unwrap_err();
        assert_eq!(r.reason, QueueRefusal::Full { capacity_count: 3 });
        assert_eq!(q.pop().map(|(_, _, i)| i), Some('a'));
        let r = q.try_push(Principal(3), 1, 0, 'd').unwrap_err();
        assert_eq!(r.reason, QueueRefusal::Principals { capacity_count: 2 });
        assert_eq!(r.to_string(), "too many principals waiting (2)");
        assert_eq!((q.len(), q.bytes(), q.principal_len(Principal(1))), (2, 90, 1));
    }

    #[test]
    fn limits_are_checked() {
        let mut l = limits(10);
        l.quantum_cost = 0;
        assert_eq!(FairQueue::<u8>::new(l).unwrap_err(), ConfigError::Zero { field: "quantum_cost" });
        l.quantum_cost = 10;
        l.principals_max = FAIR_PRINCIPALS_CEILING + 1;
        assert!(matches!(FairQueue::<u8>::new(l), Err(ConfigError::AboveCeiling { field: "principals_max", .. })));
    }

    /// Property: for random arrival sequences (principals, costs, bursts, pops interleaved), the
    /// cost served to any two principals that were both backlogged all along an interval
    /// differs by at most `2 × quantum + cost_max` over that interval; every request is served
    /// once; each principal's requests in arrival order; no principal's first request waits
    /// more than one turn of each other principal.
    #[test]
    fn shares_stay_within_the_bound_for_random_arrivals() {
        for seed in 0..300u64 {
            let mut rng = SplitMix64::new(seed);
            let quantum = 1 + rng.below(64);
            let principals = 2 + rng.below(6) as usize;
            let mut q = FairQueue::new(limits(quantum)).unwrap();
            let mut next_id = vec![0u64; principals];
            let mut served_next = vec![0u64; principals];
            // Cost served to each principal since both members of a pair were last not backlogged.
            let mut since = vec![vec![(0u64, 0u64); principals]; principals];
            for _step in 0..2000 {
                if rng.below(3) > 0 {
                    let p = rng.below(principals as u64) as usize;
                    for _ in 0..1 + rng.below(8) {
                        let cost = 1 + rng.below(quantum);
                        if q.try_push(Principal(p as u64), cost, 0, (p, next_id[p], cost)).is_ok() {
                            next_id[p] += 1;
                        }
                    }
                }
                for _ in 0..rng.below(4) {
                    let Some((who, charged, (p, id, cost))) = q.pop() else { break };
                    assert_eq!((who, charged), (Principal(p as u64), cost), "seed {seed}");
                    assert_eq!(id, served_next[p], "seed {seed}: a principal's requests are served in order");
                    served_next[p] += 1;
                    for (other, pair) in since[p].iter_mut().enumerate() {
                        if other != p {
                            pair.0 += cost;
                        }
                    }
                    for (other, row) in since.iter_mut().enumerate() {
                        if other != p {
                            row[p].1 += cost;
                        }
                    }
                    for (i, row) in since.iter_mut().enumerate() {
                        for (j, pair) in row.iter_mut().enumerate() {
                            let both =
                                q.principal_len(Principal(i as u64)) > 0 && q.principal_len(Principal(j as u64)) > 0;
                            if i != j && both {
                                assert!(
                                    pair.0.abs_diff(pair.1) <= 3 * quantum,
                                    "seed {seed}: {i} and {j} served {pair:?} with a quantum of {quantum}"
                                );
                            } else {
                                *pair = (0, 0);
                            }
                        }
                    }
                }
            }
            while let Some((_, _, (p, id, _))) = q.pop() {
                assert_eq!(id, served_next[p]);
                served_next[p] += 1;
            }
            assert_eq!(served_next, next_id, "seed {seed}: every request served once");
            assert_eq!((q.len(), q.bytes(), q.principal_count()), (0, 0, 0));
        }
    }

    /// Property: a principal arriving with one request behind random backlogs of `n` others is
    /// served after at most one turn of each: less than `2 × n × quantum` cost of theirs.
    #[test]
    fn a_newcomer_waits_at_most_one_turn_of_each_other_principal() {
        for seed in 0..300u64 {
            let mut rng = SplitMix64::new(seed);
            let quantum = 1 + rng.below(100);
            let others = 1 + rng.below(10);
            let mut q = FairQueue::new(limits(quantum)).unwrap();
            for _ in 0..rng.below(500) + others {
                let p = rng.below(others);
                let _ = q.try_push(Principal(p), 1 + rng.below(quantum), 0, p);
            }
            // Some turns already under way.
            for _ in 0..rng.below(20) {
                let _ = q.pop();
            }
            q.try_push(Principal(u64::MAX), 1 + rng.below(quantum), 0, u64::MAX).unwrap();
            let mut before = 0;
            loop {
                let (p, cost, _) = q.pop().unwrap();
                if p == Principal(u64::MAX) {
                    break;
                }
                before += cost;
            }
            assert!(
                before < 2 * others * quantum,
                "seed {seed}: {before} served first (quantum {quantum}, {others} others)"
            );
        }
    }
}
