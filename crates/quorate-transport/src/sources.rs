//! A handshake rate per source address (connection floods).
//!
//! Every connection attempt costs the node its TLS handshake (a signature, a key exchange)
//! before it knows who is asking. [`SourceLimiter`] gives each source a token bucket of
//! handshakes: `burst` attempts at once, then `rate_per_sec`; an attempt beyond is dropped on
//! its first packet, before any TLS work and without an answer. A source is an IPv4 address, or an IPv6 /64 (one
//! host usually holds a whole /64, so counting single IPv6 addresses would bound nothing); an
//! IPv4-mapped IPv6 address counts as its IPv4 address. At most [`HANDSHAKE_SOURCES_MAX`]
//! sources are remembered; beyond, the one seen least recently is forgotten (it starts again
//! with a full bucket: the price of a bounded table).
//!
//! Time is passed in, so the limiter is deterministic and tested without sleeping.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Most sources whose handshake buckets are remembered (least recently seen forgotten beyond).
pub const HANDSHAKE_SOURCES_MAX: usize = 4096;
/// Largest accepted `handshakes_per_source_per_sec` and `handshake_burst_per_source`.
pub const HANDSHAKE_RATE_CEILING: u32 = 1_000_000;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Where a connection attempt comes from, as the limiter counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Source {
    /// An IPv4 address (IPv4-mapped IPv6 addresses included).
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 address.
    V6Prefix([u8; 8]),
}

impl Source {
    /// The source of a remote address.
    pub(crate) fn of(addr: SocketAddr) -> Source {
        match addr.ip() {
            IpAddr::V4(v4) => Source::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4.octets()),
                None => {
                    let o = v6.octets();
                    Source::V6Prefix([o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]])
                }
            },
        }
    }
}

#[derive(Debug)]
struct Slot {
    /// Tokens × 1e9 (nanosecond-exact refill).
    level: u128,
    refilled_at: Instant,
    /// Position in the recency order.
    seen: u64,
}

/// Token buckets of handshakes per source, bounded in the sources they remember.
#[derive(Debug)]
pub(crate) struct SourceLimiter {
    rate_per_sec: u32,
    burst: u32,
    slots: HashMap<Source, Slot>,
    /// Sources by when they were last seen (a counter): the eviction order.
    recency: BTreeMap<u64, Source>,
    next_seen: u64,
    sources_max: usize,
}

impl SourceLimiter {
    /// A limiter of `rate_per_sec` handshakes per second per source after a burst of `burst`,
    /// remembering at most `sources_max` sources.
    ///
    /// # Panics
    /// If a parameter is zero or `rate_per_sec`/`burst` exceed [`HANDSHAKE_RATE_CEILING`]
    /// (`TransportConfig`'s validation refuses those first).
    pub(crate) fn new(rate_per_sec: u32, burst: u32, sources_max: usize) -> SourceLimiter {
        assert!(rate_per_sec > 0 && rate_per_sec <= HANDSHAKE_RATE_CEILING);
        assert!(burst > 0 && burst <= HANDSHAKE_RATE_CEILING);
        assert!(sources_max > 0);
        SourceLimiter {
            rate_per_sec,
            burst,
            slots: HashMap::new(),
            recency: BTreeMap::new(),
            next_seen: 0,
            sources_max,
        }
    }

    fn capacity(&self) -> u128 {
        u128::from(self.burst) * NANOS_PER_SEC
    }

    /// Takes one handshake of `source` at `now`, or says how long until one is available.
    pub(crate) fn try_take(&mut self, source: Source, now: Instant) -> Result<(), Duration> {
        let seen = self.next_seen;
        self.next_seen += 1;
        if !self.slots.contains_key(&source) {
            if self.slots.len() >= self.sources_max {
                let (_, evicted) = self.recency.pop_first().expect("a full table has a least recent source");
                let removed = self.slots.remove(&evicted);
                assert!(removed.is_some(), "every source in the recency order has a slot");
            }
            self.slots.insert(source, Slot { level: self.capacity(), refilled_at: now, seen });
        } else {
            let slot = self.slots.get_mut(&source).expect("checked above");
            let old = self.recency.remove(&slot.seen);
            assert!(old == Some(source));
            slot.seen = seen;
        }
        self.recency.insert(seen, source);
        assert_eq!(self.slots.len(), self.recency.len());
        assert!(self.slots.len() <= self.sources_max);

        let capacity = self.capacity();
        let rate = u128::from(self.rate_per_sec);
        let slot = self.slots.get_mut(&source).expect("inserted above");
        // A clock that goes back adds nothing.
        let elapsed = now.saturating_duration_since(slot.refilled_at).as_nanos();
        slot.level = slot.level.saturating_add(elapsed.saturating_mul(rate)).min(capacity);
        slot.refilled_at = slot.refilled_at.max(now);
        if slot.level >= NANOS_PER_SEC {
            slot.level -= NANOS_PER_SEC;
            return Ok(());
        }
        let wait_ns = (NANOS_PER_SEC - slot.level).div_ceil(rate);
        Err(Duration::from_nanos(u64::try_from(wait_ns).unwrap_or(u64::MAX)))
    }

    /// Sources remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> Source {
        Source::of(format!("{s}:1").parse().unwrap())
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(32, 128, 16);
        let a = v4("127.0.0.1");
        for i in 0..128 {
            assert_eq!(l.try_take(a, t0), Ok(()), "attempt {i} of the burst");
        }
        // One token every 1/32 s.
        assert_eq!(l.try_take(a, t0), Err(Duration::from_nanos(31_250_000)));
        assert_eq!(l.try_take(a, t0 + Duration::from_millis(31)), Err(Duration::from_nanos(250_000)));
        assert_eq!(l.try_take(a, t0 + Duration::from_nanos(31_250_000)), Ok(()));
        // One second later: 32 more, not 33.
        let later = t0 + Duration::from_nanos(1_031_250_000);
        for _ in 0..32 {
            assert_eq!(l.try_take(a, later), Ok(()));
        }
        assert!(l.try_take(a, later).is_err());
        // Another source is not affected.
        assert_eq!(l.try_take(v4("127.0.0.2"), later), Ok(()));
        // A clock going back adds nothing and does not panic.
        assert!(l.try_take(a, t0).is_err());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let of = |s: &str| Source::of(s.parse().unwrap());
        assert_eq!(of("[2001:db8:1:2::1]:5"), of("[2001:db8:1:2:ffff:ffff:ffff:ffff]:6"));
        assert_ne!(of("[2001:db8:1:2::1]:5"), of("[2001:db8:1:3::1]:5"));
        assert_eq!(of("[::ffff:10.0.0.1]:5"), of("10.0.0.1:9"));
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(1, 2, 16);
        assert!(l.try_take(of("[2001:db8::1]:1"), t0).is_ok());
        assert!(l.try_take(of("[2001:db8::2]:1"), t0).is_ok());
        assert!(l.try_take(of("[2001:db8::3]:1"), t0).is_err(), "one /64, one bucket");
        assert!(l.try_take(of("[2001:db9::3]:1"), t0).is_ok());
    }

    #[test]
    fn at_most_sources_max_are_remembered_the_least_recent_forgotten() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(1, 1, 3);
        let (a, b, c, d) = (v4("10.0.0.1"), v4("10.0.0.2"), v4("10.0.0.3"), v4("10.0.0.4"));
        for s in [a, b, c] {
            l.try_take(s, t0).unwrap();
        }
        assert!(l.try_take(a, t0).is_err(), "a is now the most recently seen");
        l.try_take(d, t0).unwrap(); // b, seen least recently, is forgotten.
        assert_eq!(l.len(), 3);
        assert!(l.try_take(a, t0).is_err(), "a is remembered");
        assert!(l.try_take(b, t0).is_ok(), "b was forgotten: a full bucket again");
        assert!(l.try_take(c, t0).is_ok(), "c was forgotten in turn when b came back");
        assert_eq!(l.len(), 3);
        // Many sources never grow the table.
        for i in 0..10_000u32 {
            let _ = l.try_take(Source::V4(i.to_be_bytes()), t0);
        }
        assert_eq!(l.len(), 3);
    }
}
