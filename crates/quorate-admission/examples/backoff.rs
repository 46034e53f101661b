//! A node's admission loop in miniature: client writes are admitted until the disk runs low,
//! refused with a reason and a retry hint while it is, and admitted again once space is back
//! above the floor plus the hysteresis; consensus traffic passes throughout. A client backs
//! off by at least `retry_after` (already jittered) each time it is refused.
//!
//! Run it: `cargo run -p quorate-admission --example backoff`.

use std::time::Duration;

use quorate_admission::{Admission, Class, Config, Nanos, Outcome, Principal, RequestInfo, Signals};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const MIB: u64 = 1 << 20;
    let config = Config { disk_free_bytes_min: 100 * MIB, disk_free_hysteresis_bytes: 50 * MIB, ..Config::default() };
    // The seed makes the jitter reproducible; a node would seed from its id and start time.
    let mut admission = Admission::new(config, 2024)?;
    // Free disk space over time, as the node would measure it: it drops, then compaction frees.
    let disk_free_mib = [500, 300, 120, 90, 80, 110, 140, 160, 400];

    let mut now = Nanos::ZERO;
    let mut is_retry = false;
    for free_mib in disk_free_mib {
        admission.set_signals(Signals { disk_free_bytes: free_mib * MIB, ..Signals::HEALTHY });

        let heartbeat = RequestInfo { class: Class::Consensus, principal: Principal(0), bytes: 0, is_retry: false };
        let permit = admission.try_admit(&heartbeat, now).expect("consensus is never refused");
        admission.complete(permit, Outcome::Success, now);

        let write = RequestInfo { class: Class::ClientWrite, principal: Principal(7), bytes: 4096, is_retry };
        match admission.try_admit(&write, now) {
            Ok(permit) => {
                println!("{now}  free {free_mib:>3} MiB  write admitted");
                admission.complete(permit, Outcome::Success, now + Duration::from_millis(2));
                is_retry = false;
                now = now + Duration::from_secs(1);
            }
            Err(refused) => {
                println!(
                    "{now}  free {free_mib:>3} MiB  write refused: {} (client waits {} ms)",
                    refused.reason,
                    refused.retry_after.as_millis()
                );
                is_retry = true;
                now = now + refused.retry_after;
            }
        }
    }
    let stats = admission.stats();
    println!(
        "admitted {:?}, refused {:?} (by class: consensus, client_write, client_read, background)",
        stats.admitted_count, stats.refused_count
    );
    Ok(())
}
