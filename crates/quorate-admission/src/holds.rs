//! Holds: what each principal keeps in flight — requests, and the bytes of their answers —
//! from admission until the answer has been delivered (or abandoned).
//!
//! An answer that the client does not read stays in the server's memory until it is written
//! or given up; a request not yet answered will produce an answer of up to some known size.
//! Holds cap both per principal and in total, so that one client (one certificate) that stops
//! reading cannot take every request slot or grow the server's memory: its own new requests
//! are refused, everyone else's are not.

use std::collections::BTreeMap;

use crate::class::Principal;

/// The limits of [`Holds`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldLimits {
    /// Requests one principal may hold.
    pub principal_count_max: u64,
    /// Answer bytes (reserved or being written) one principal may hold.
    pub principal_bytes_max: u64,
    /// Requests held by all principals together.
    pub total_count_max: u64,
    /// Answer bytes held by all principals together.
    pub total_bytes_max: u64,
}

/// Why [`Holds::try_hold`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HoldRefusal {
    /// The principal holds `principal_count_max` requests.
    #[error("the principal holds its most requests")]
    PrincipalCount,
    /// The principal's answer bytes would pass `principal_bytes_max`.
    #[error("the principal holds its most answer bytes")]
    PrincipalBytes,
    /// All principals together hold `total_count_max` requests.
    #[error("the most requests are held")]
    TotalCount,
    /// All answer bytes together would pass `total_bytes_max`.
    #[error("the most answer bytes are held")]
    TotalBytes,
}

/// One request's claim: a slot and some answer bytes of its principal. Hand it back to
/// [`Holds::release`] of the instance that issued it, exactly once. Not `Clone`.
#[must_use = "a hold keeps its slot and bytes until it is released"]
#[derive(Debug, PartialEq, Eq)]
pub struct Hold {
    principal: Principal,
    bytes: u64,
}

impl Hold {
    /// Whose it is.
    pub fn principal(&self) -> Principal {
        self.principal
    }

    /// The answer bytes it holds.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    count: u64,
    bytes: u64,
}

/// Requests and answer bytes held, per principal and in total. A principal is tracked only
/// while it holds something, so the table never has more entries than holds outstanding (at
/// most `total_count_max`).
///
/// A principal (and the node) that holds nothing is always granted one hold, however large,
/// so that a request larger than a budget is not refused forever; past that, a hold is granted
/// only within every limit.
#[derive(Clone, Debug)]
pub struct Holds {
    limits: HoldLimits,
    by_principal: BTreeMap<Principal, Usage>,
    total: Usage,
}

impl Holds {
    /// Nothing held.
    pub fn new(limits: HoldLimits) -> Holds {
        Holds { limits, by_principal: BTreeMap::new(), total: Usage::default() }
    }

    /// Takes a slot and `bytes` for `principal`, or says which limit refuses it (and takes
    /// nothing).
    pub fn try_hold(&mut self, principal: Principal, bytes: u64) -> Result<Hold, HoldRefusal> {
        let limits = self.limits;
        let mine = self.by_principal.get(&principal).copied().unwrap_or_default();
        if mine.count >= limits.principal_count_max {
            return Err(HoldRefusal::PrincipalCount);
        }
        if self.total.count >= limits.total_count_max {
            return Err(HoldRefusal::TotalCount);
        }
        if mine.count > 0 && mine.bytes.saturating_add(bytes) > limits.principal_bytes_max {
            return Err(HoldRefusal::PrincipalBytes);
        }
        if self.total.count > 0 && self.total.bytes.saturating_add(bytes) > limits.total_bytes_max {
            return Err(HoldRefusal::TotalBytes);
        }
        let entry = self.by_principal.entry(principal).or_default();
        entry.count += 1;
        entry.bytes = entry.bytes.saturating_add(bytes);
        self.total.count += 1;
        self.total.bytes = self.total.bytes.saturating_add(bytes);
        Ok(Hold { principal, bytes })
    }

    /// Changes the bytes `hold` holds to `bytes` (an answer's real size, once known, in place
    /// of the most it could have been). Never refused: a larger answer already exists; the
    /// principal's next holds wait until it is released.
    pub fn resize(&mut self, hold: &mut Hold, bytes: u64) {
        let entry = self.by_principal.get_mut(&hold.principal).expect("a hold's principal is tracked");
        entry.bytes = entry.bytes - hold.bytes + bytes;
        self.total.bytes = self.total.bytes - hold.bytes + bytes;
        hold.bytes = bytes;
    }

    /// Gives back the slot and bytes of `hold`.
    ///
    /// # Panics
    /// If `hold` was not issued by this instance (the counters would go negative).
    pub fn release(&mut self, hold: Hold) {
        let entry = self.by_principal.get_mut(&hold.principal).expect("a hold's principal is tracked");
        assert!(entry.count > 0 && entry.bytes >= hold.bytes, "foreign hold");
        entry.count -= 1;
        entry.bytes -= hold.bytes;
        if entry.count == 0 {
            debug_assert_eq!(entry.bytes, 0);
            self.by_principal.remove(&hold.principal);
        }
        self.total.count -= 1;
        self.total.bytes -= hold.bytes;
    }

    /// Requests `principal` holds.
    pub fn principal_count(&self, principal: Principal) -> u64 {
        self.by_principal.get(&principal).map_or(0, |u| u.count)
    }

    /// Answer bytes `principal` holds.
    pub fn principal_bytes(&self, principal: Principal) -> u64 {
        self.by_principal.get(&principal).map_or(0, |u| u.bytes)
    }

    /// Requests held in total.
    pub fn total_count(&self) -> u64 {
        self.total.count
    }

    /// Answer bytes held in total.
    pub fn total_bytes(&self) -> u64 {
        self.total.bytes
    }

    /// Principals holding something.
    pub fn principals_count(&self) -> usize {
        self.by_principal.len()
    }

    /// The limits in force.
    pub fn limits(&self) -> HoldLimits {
        self.limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HoldLimits =
        HoldLimits { principal_count_max: 3, principal_bytes_max: 100, total_count_max: 5, total_bytes_max: 150 };

    #[test]
    fn each_limit_refuses_and_a_release_gives_back() {
        let (a, b, c) = (Principal(1), Principal(2), Principal(3));
        let mut h = Holds::new(LIMITS);
        let a1 = h.try_hold(a, 10).unwrap();
        let a2 = h.try_hold(a, 10).unwrap();
        let a3 = h.try_hold(a, 10).unwrap();
        assert_eq!(h.try_hold(a, 1), Err(HoldRefusal::PrincipalCount));
        // Another principal is not affected by a's count.
        let mut b1 = h.try_hold(b, 90).unwrap();
        assert_eq!(h.try_hold(b, 20), Err(HoldRefusal::PrincipalBytes));
        assert_eq!(h.try_hold(c, 40), Err(HoldRefusal::TotalBytes), "120 held, 150 in total");
        // The answer turned out small: room again.
        h.resize(&mut b1, 5);
        let c1 = h.try_hold(c, 40).unwrap();
        assert_eq!(h.try_hold(c, 1), Err(HoldRefusal::TotalCount));
        assert_eq!((h.total_count(), h.total_bytes(), h.principals_count()), (5, 75, 3));
        for hold in [a1, a2, a3, b1, c1] {
            h.release(hold);
        }
        assert_eq!((h.total_count(), h.total_bytes(), h.principals_count()), (0, 0, 0));
    }

    #[test]
    fn a_principal_that_holds_nothing_gets_one_hold_of_any_size() {
        let mut h = Holds::new(LIMITS);
        let big = h.try_hold(Principal(1), 1_000).unwrap();
        assert_eq!(h.try_hold(Principal(1), 1), Err(HoldRefusal::PrincipalBytes));
        assert_eq!(h.try_hold(Principal(2), 1), Err(HoldRefusal::TotalBytes));
        h.release(big);
        let _ = h.try_hold(Principal(2), 1).unwrap();
    }

    #[test]
    fn a_grown_answer_refuses_the_next_holds_until_released() {
        let mut h = Holds::new(LIMITS);
        let mut one = h.try_hold(Principal(1), 10).unwrap();
        h.resize(&mut one, 120);
        assert_eq!(h.principal_bytes(Principal(1)), 120);
        assert_eq!(h.try_hold(Principal(1), 1), Err(HoldRefusal::PrincipalBytes));
        h.release(one);
        assert_eq!(h.principal_count(Principal(1)), 0);
        let _ = h.try_hold(Principal(1), 1).unwrap();
    }
}
