//! Builds an in-memory log, appends, overwrites a conflicting suffix and reads a bounded slice.

use quorate_log::{
    Configuration, Data, Entry, EntryPayload, LogIndex, LogStorage, MemLog, NodeId, Term, find_conflict,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let voters = [1, 2, 3].map(|i| NodeId::new(i).expect("non-zero"));
    let mut log = MemLog::new(Configuration::with_voters(voters)?);
    let cmd = |i: u64, t: u64| Entry {
        index: LogIndex(i),
        term: Term(t),
        payload: EntryPayload::Command(Data::from(format!("set k{i}").into_bytes())),
    };
    log.append(&[cmd(1, 1), cmd(2, 1), cmd(3, 1)])?;
    // A new leader in term 2 overwrote index 3.
    let incoming = [cmd(3, 2), cmd(4, 2)];
    if let Some(at) = find_conflict(&log, &incoming) {
        println!("conflict at {at}: truncating and appending");
    }
    log.append(&incoming)?;
    let slice = log.entries(LogIndex(1), log.last_index().next(), 64)?;
    println!("last index {}, first slice of at most 64 bytes holds {} entries", log.last_index(), slice.len());
    Ok(())
}
