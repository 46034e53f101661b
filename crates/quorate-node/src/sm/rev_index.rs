//! What the history's index by revision (`r` records, [`super::history`]) and the event index
//! (`e` records, [`super::events`]) share: records keyed by a tag byte, a revision (big endian)
//! and a user key; bookkeeping keys that say the index is on (holding the revision it began
//! at) and count what it keeps; and the walk that drops records oldest first.
//!
//! **The drop walk.** It takes what compaction left (a revision at or below the compaction
//! revision) and, while the index is past its bounds, the oldest records at all (raising the
//! compaction revision past them), at most a budget per command. RocksDB keeps a dropped key
//! as a tombstone until its own compaction removes it, so a walk from the start of the index
//! would step over every record dropped lately; drops are oldest first and a record's revision
//! is that of the command that wrote it (never below the compaction revision), so every record
//! left has a revision at or above the last one dropped: a bookkeeping key keeps that revision
//! and the walks seek from it.

use super::{Overlay, SmError, SmRead, corrupt, get_u64, merged_keys, ov_u64};

/// An index of records keyed by [`RevIndex::tag`] + revision (big endian) + user key, and the
/// bookkeeping keys that go with it.
pub(super) struct RevIndex {
    /// The first byte of every record's key.
    pub(super) tag: u8,
    /// Present: the index is on; it holds the revision it was turned on at.
    pub(super) on: &'static [u8],
    /// The records counted (one per record of the index).
    pub(super) entries: &'static [u8],
    /// Their bytes, as the index that owns them counts them.
    pub(super) bytes: &'static [u8],
    /// A revision no record is below: where the drop walks start (absent: 0).
    pub(super) scan_from: &'static [u8],
    /// What a record key that does not parse is called in the error.
    pub(super) bad_key: &'static str,
}

/// What a drop walk did.
#[derive(Clone, Copy, Debug)]
pub(super) struct Dropped {
    /// Records dropped.
    pub(super) count: usize,
    /// The compaction revision after the walk: raised past the records it dropped beyond it.
    pub(super) compacted: u64,
}

impl RevIndex {
    /// The key of the record of `key` at `revision`.
    pub(super) fn key(&self, revision: u64, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(key.len() + 9);
        k.push(self.tag);
        k.extend_from_slice(&revision.to_be_bytes());
        k.extend_from_slice(key);
        k
    }

    /// The revision and user key of a record's key.
    pub(super) fn parse_key<'k>(&self, k: &'k [u8]) -> Result<(u64, &'k [u8]), SmError> {
        if k.first() != Some(&self.tag) || k.len() < 9 {
            return Err(corrupt(k, self.bad_key));
        }
        let rev: [u8; 8] = k[1..9].try_into().map_err(|_| corrupt(k, self.bad_key))?;
        Ok((u64::from_be_bytes(rev), &k[9..]))
    }

    /// The index's bookkeeping in `r`: the revision it began at, the records and their bytes
    /// (`None`: the index is off).
    pub(super) fn state(&self, r: &(impl SmRead + ?Sized)) -> Result<Option<[u64; 3]>, SmError> {
        if r.sm_get(self.on)?.is_none() {
            return Ok(None);
        }
        Ok(Some([get_u64(r, self.on)?, get_u64(r, self.entries)?, get_u64(r, self.bytes)?]))
    }

    /// Turns the index on at the current revision; no change if it is on.
    pub(super) fn enable<R: SmRead + ?Sized>(&self, ov: &mut Overlay<'_, R>) -> Result<(), SmError> {
        if self.enabled(ov)? {
            return Ok(());
        }
        let revision = ov_u64(ov, super::META_REVISION)?;
        ov.put(self.on.to_vec(), revision.to_le_bytes().to_vec());
        ov.put(self.entries.to_vec(), 0u64.to_le_bytes().to_vec());
        ov.put(self.bytes.to_vec(), 0u64.to_le_bytes().to_vec());
        Ok(())
    }

    /// Whether the index is on in the state `ov` sees.
    pub(super) fn enabled<R: SmRead + ?Sized>(&self, ov: &Overlay<'_, R>) -> Result<bool, SmError> {
        Ok(ov.get(self.on)?.is_some())
    }

    /// Adds `entries` and `bytes` (either may be negative) to the counters.
    pub(super) fn add_counters<R: SmRead + ?Sized>(
        &self,
        ov: &mut Overlay<'_, R>,
        entries: i64,
        bytes: i64,
    ) -> Result<(), SmError> {
        let e = ov_u64(ov, self.entries)?.saturating_add_signed(entries);
        let b = ov_u64(ov, self.bytes)?.saturating_add_signed(bytes);
        ov.put(self.entries.to_vec(), e.to_le_bytes().to_vec());
        ov.put(self.bytes.to_vec(), b.to_le_bytes().to_vec());
        Ok(())
    }

    /// The drop walk (see the module's notes): drops, oldest first and at most `budget`, the
    /// records at or below `compacted` and, while the counters pass `entries_max` or
    /// `bytes_max`, the oldest records at all. `drop_record` deletes a record (its key and
    /// revision) with what goes with it and returns the bytes it counted (`None`: nothing
    /// there, not counted). Keeps the counters and where the walks start; the caller stores
    /// the compaction revision it returns.
    pub(super) fn drop_oldest<'a, R: SmRead + ?Sized>(
        &self,
        ov: &mut Overlay<'a, R>,
        budget: usize,
        (entries_max, bytes_max): (u64, u64),
        mut compacted: u64,
        mut drop_record: impl FnMut(&mut Overlay<'a, R>, Vec<u8>, u64) -> Result<Option<u64>, SmError>,
    ) -> Result<Dropped, SmError> {
        let nothing = Dropped { count: 0, compacted };
        let (mut entries, mut bytes) = (ov_u64(ov, self.entries)?, ov_u64(ov, self.bytes)?);
        if entries == 0 {
            return Ok(nothing);
        }
        let over = |entries: u64, bytes: u64| entries > entries_max || bytes > bytes_max;
        // The oldest candidates: everything compaction left, or (past the bounds) the oldest at all.
        let hi = if over(entries, bytes) { vec![self.tag + 1] } else { self.key(compacted.saturating_add(1), b"") };
        // Past the dropped records' tombstones (no record is below it, stored or pending).
        let scan_from = ov_u64(ov, self.scan_from)?;
        let lo = self.key(scan_from, b"");
        // Nearly always nothing is due: one pair read says so (every write calls this).
        let first_stored = ov.first_stored_at(&lo)?;
        let stored_due = !ov.clear && first_stored.is_some_and(|k| k.first() == Some(&self.tag) && k < hi);
        let pending_due = ov.writes.range(lo.clone()..hi.clone()).any(|(_, v)| v.is_some());
        if !stored_due && !pending_due {
            return Ok(nothing);
        }
        let (keys, _) = merged_keys(ov, lo, hi, budget)?;
        let mut last = scan_from;
        let mut dropped = 0usize;
        let mut dropped_bytes = 0u64;
        for k in keys {
            let (rev, _) = self.parse_key(&k)?;
            if rev > compacted {
                if !over(entries, bytes) {
                    break;
                }
                // Reads and watches below `rev` may have needed this record: refused from now on.
                compacted = rev;
            }
            let Some(size) = drop_record(ov, k, rev)? else { continue };
            debug_assert!(rev >= last, "the index is walked in order");
            last = rev;
            entries = entries.saturating_sub(1);
            bytes = bytes.saturating_sub(size);
            dropped += 1;
            dropped_bytes += size;
        }
        if dropped > 0 {
            self.add_counters(ov, -(dropped as i64), -(dropped_bytes as i64))?;
            ov.put(self.scan_from.to_vec(), last.to_le_bytes().to_vec());
        }
        Ok(Dropped { count: dropped, compacted })
    }
}
