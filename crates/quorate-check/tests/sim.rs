//! The simulator finds nothing wrong with the core, finds real driver bugs when they are
//! injected, and replays a seed exactly.

use quorate_check::invariants::Violation;
use quorate_check::sim::{InjectedBug, run_seed, run_seed_with};

const STEPS: u64 = 200_000;

#[test]
fn a_slice_of_seeds_is_clean_and_exercises_faults() {
    let (mut crashes, mut partitions, mut committed, mut ops) = (0, 0, 0, 0);
    for seed in 0..40 {
        let r = run_seed(seed, STEPS, false);
        assert!(r.violations.is_empty(), "seed {seed}: {:?}", r.violations);
        crashes += r.crashes;
        partitions += r.partitions;
        committed += r.committed;
        ops += r.ops;
    }
    assert!(crashes > 40, "too few crashes injected: {crashes}");
    assert!(partitions > 40, "too few partitions injected: {partitions}");
    assert!(committed > 4_000, "too little committed: {committed}");
    assert!(ops > 4_000, "too few client operations: {ops}");
}

#[test]
fn a_seed_replays_exactly() {
    let a = run_seed(12, STEPS, false);
    let b = run_seed(12, STEPS, false);
    assert_eq!(a.steps, b.steps);
    assert_eq!(a.committed, b.committed);
    assert_eq!(a.history, b.history);
    let c = run_seed(13, STEPS, false);
    assert_ne!(a.history, c.history, "different seeds should differ");
}

#[test]
fn acknowledging_before_persisting_is_caught() {
    let caught = (0..10).any(|seed| {
        run_seed_with(seed, STEPS, false, Some(InjectedBug::AckBeforePersist))
            .violations
            .iter()
            .any(|v| matches!(v, Violation::Durability { .. }))
    });
    assert!(caught, "the durability checker missed acknowledgements sent before persistence");
}

#[test]
fn reads_served_without_read_index_are_caught() {
    let caught = (0..60).any(|seed| {
        run_seed_with(seed, STEPS, false, Some(InjectedBug::LocalReads))
            .violations
            .iter()
            .any(|v| matches!(v, Violation::Linearizability { .. }))
    });
    assert!(caught, "the linearizability checker missed stale local reads in 60 seeds");
}
