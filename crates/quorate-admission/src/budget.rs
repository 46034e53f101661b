//! Byte and count budgets with explicit release.

/// A budget was too small for an acquisition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("budget exhausted: wanted {wanted}, {available} of {limit} available")]
pub struct Exhausted {
    /// The amount asked for.
    pub wanted: u64,
    /// What was left.
    pub available: u64,
    /// The budget's limit.
    pub limit: u64,
}

/// A budget of some unit (bytes, requests): `used` never exceeds `limit` through
/// [`Budget::try_acquire`] and never goes negative (releasing more than was acquired is a
/// programmer error and panics).
///
/// Release is explicit, not RAII: the holder of the budget is usually a state machine that
/// outlives the request, and the release happens in a different call (`complete`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    limit: u64,
    used: u64,
}

impl Budget {
    /// A budget of `limit` units, none used.
    pub const fn new(limit: u64) -> Budget {
        Budget { limit, used: 0 }
    }

    /// Takes `amount` units, or refuses without taking anything.
    pub fn try_acquire(&mut self, amount: u64) -> Result<(), Exhausted> {
        let available = self.available();
        if amount > available {
            return Err(Exhausted { wanted: amount, available, limit: self.limit });
        }
        self.used += amount;
        assert!(self.used <= self.limit);
        Ok(())
    }

    /// Returns `amount` units.
    ///
    /// # Panics
    /// If `amount` exceeds what is in use: a double release or a release of something never
    /// acquired.
    pub fn release(&mut self, amount: u64) {
        assert!(amount <= self.used, "budget release of {amount} with only {} in use", self.used);
        self.used -= amount;
    }

    /// Units in use.
    pub const fn used(&self) -> u64 {
        self.used
    }

    /// Units still available (zero if the limit was lowered below what is in use).
    pub const fn available(&self) -> u64 {
        self.limit.saturating_sub(self.used)
    }

    /// The limit.
    pub const fn limit(&self) -> u64 {
        self.limit
    }

    /// Changes the limit. Units already in use stay in use; if they exceed the new limit,
    /// nothing more is granted until enough is released.
    pub fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acquire_until_exhausted_then_release() {
        let mut b = Budget::new(100);
        b.try_acquire(60).unwrap();
        b.try_acquire(40).unwrap();
        assert_eq!(b.try_acquire(1), Err(Exhausted { wanted: 1, available: 0, limit: 100 }));
        b.release(40);
        assert_eq!(b.available(), 40);
        assert!(b.try_acquire(41).is_err(), "a refused acquisition takes nothing");
        assert_eq!(b.used(), 60);
        b.try_acquire(0).unwrap();
    }

    #[test]
    fn lowering_the_limit_below_use_blocks_until_released() {
        let mut b = Budget::new(100);
        b.try_acquire(80).unwrap();
        b.set_limit(50);
        assert_eq!(b.available(), 0);
        assert!(b.try_acquire(1).is_err());
        b.release(40);
        b.try_acquire(10).unwrap();
        assert_eq!(b.used(), 50);
    }

    #[test]
    #[should_panic(expected = "budget release")]
    fn over_release_panics() {
        let mut b = Budget::new(10);
        b.try_acquire(3).unwrap();
        b.release(4);
    }
}
