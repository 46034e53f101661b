//! # quorate-log
//!
//! The vocabulary of the Quorate replicated log, shared by the consensus core, the storage
//! engines, the transport and the simulator:
//!
//! * identifier newtypes — [`NodeId`], [`Term`], [`LogIndex`], [`EntryId`] — so that a term
//!   can never be passed where an index is expected;
//! * [`Entry`] and its [`EntryPayload`] (command, no-op, configuration);
//! * [`Configuration`] with the quorum rules of plain and joint configurations;
//! * [`HardState`], [`SnapshotMeta`] and the read-only [`LogStorage`] trait the core reads
//!   through, with [`MemLog`], an in-memory implementation;
//! * the log-matching helpers [`find_conflict`] and [`limit_bytes`];
//! * [`byte_string`], for `Vec<u8>` fields encoded as byte strings (one copy, not one
//!   visitor call per byte; postcard's bytes are those of a plain `Vec<u8>`).
//!
//! This crate does no I/O and depends only on `serde` and `thiserror`.
//!
//! ```
//! use quorate_log::{Configuration, Data, Entry, EntryPayload, LogIndex, LogStorage, MemLog, NodeId, Term};
//!
//! let voters = [1, 2, 3].map(|i| NodeId::new(i).expect("non-zero"));
//! let mut log = MemLog::new(Configuration::with_voters(voters)?);
//! log.append(&[Entry { index: LogIndex(1), term: Term(1), payload: EntryPayload::Command(Data::from("x=1")) }])?;
//! assert_eq!(log.last_index(), LogIndex(1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

pub mod byte_string;
mod config;
mod entry;
mod ids;
pub mod record;
pub mod snapshot_file;
mod storage;

pub use config::{Configuration, ConfigurationError, MEMBERS_MAX};
pub use entry::{Data, ENTRY_OVERHEAD_BYTES, Entry, EntryPayload};
pub use ids::{EntryId, LogIndex, NodeId, Term};
pub use storage::{HardState, InitialState, LogStorage, MemLog, SnapshotMeta, StorageError, limit_bytes};

/// The first entry of `entries` that conflicts with `log` (same index, different term), or
/// `None` if every entry that `log` holds matches. Entries past the end of `log` never
/// conflict; entries already compacted are taken to match (they were committed).
pub fn find_conflict(log: &impl LogStorage, entries: &[Entry]) -> Option<LogIndex> {
    let last = log.last_index();
    entries
        .iter()
        .take_while(|e| e.index <= last)
        .find(|e| match log.term(e.index) {
            Ok(t) => t != e.term,
            Err(StorageError::Compacted(_)) => false,
            Err(_) => true,
        })
        .map(|e| e.index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(index: u64, term: u64) -> Entry {
        Entry { index: LogIndex(index), term: Term(term), payload: EntryPayload::Noop }
    }

    #[test]
    fn conflict_detection() {
        let mut log = MemLog::default();
        log.append(&[e(1, 1), e(2, 1), e(3, 2)]).unwrap();
        assert_eq!(find_conflict(&log, &[e(2, 1), e(3, 2), e(4, 2)]), None);
        assert_eq!(find_conflict(&log, &[e(2, 1), e(3, 3)]), Some(LogIndex(3)));
        assert_eq!(find_conflict(&log, &[e(5, 3)]), None);
    }
}
