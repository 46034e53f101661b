//! `quorate bench`: a closed-loop load generator. Each of N clients (sessions, sharing
//! `--connections` connections, default one each) issues one operation at a time (a read with probability R, else a put) until the duration or the operation cap is
//! reached; the run prints throughput and latency percentiles (`-o json`: one object).

use super::output::{Format, print_json};
use super::{BenchArgs, ConnArgs, Outcome};
use anyhow::bail;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Latencies of one kind of operation, in microseconds.
#[derive(Default)]
pub(crate) struct Samples {
    micros: Vec<u64>,
    errors: u64,
}

impl Samples {
    fn merge(&mut self, other: Samples) {
        self.micros.extend(other.micros);
        self.errors += other.errors;
    }

    /// Latency percentiles in milliseconds: p50, p90, p99, max (`None` without a sample).
    fn percentiles_ms(&mut self) -> Option<[f64; 4]> {
        self.micros.sort_unstable();
        let n = self.micros.len();
        if n == 0 {
            return None;
        }
        let pick = |q: f64| {
            let i = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
            self.micros[i] as f64 / 1000.0
        };
        Some([pick(0.50), pick(0.90), pick(0.99), self.micros[n - 1] as f64 / 1000.0])
    }

    fn rate(&self, elapsed: Duration) -> f64 {
        self.micros.len() as f64 / elapsed.as_secs_f64().max(1e-9)
    }

    /// `label: N ops, E errors, p50 .. p90 .. p99 .. max .. ms`.
    pub(crate) fn summary(&mut self, label: &str, elapsed: Duration) -> String {
        let Some([p50, p90, p99, max]) = self.percentiles_ms() else {
            return format!("{label:<6} 0 ops, {} errors", self.errors);
        };
        format!(
            "{label:<6} {} ops ({:.0}/s), {} errors; latency ms p50 {p50:.2}  p90 {p90:.2}  p99 {p99:.2}  max {max:.2}",
            self.micros.len(),
            self.rate(elapsed),
            self.errors,
        )
    }

    /// As JSON: `ops`, `ops_per_sec`, `errors`, `latency_ms` (`p50`, `p90`, `p99`, `max`;
    /// `null` without a successful operation).
    pub(crate) fn json(&mut self, elapsed: Duration) -> Value {
        let latency =
            self.percentiles_ms().map(|[p50, p90, p99, max]| json!({"p50": p50, "p90": p90, "p99": p99, "max": max}));
        json!({
            "ops": self.micros.len(),
            "ops_per_sec": self.rate(elapsed),
            "errors": self.errors,
            "latency_ms": latency,
        })
    }
}

/// Key choice and the read/write mix, from the core's seeded generator.
struct Rng(quorate_core::SplitMix64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Errors printed in full, at most (the rest are counted).
const ERRORS_SHOWN_MAX: u64 = 5;

pub(crate) async fn run(conn: &ConnArgs, args: &BenchArgs, format: Format) -> anyhow::Result<Outcome> {
    if !(0.0..=1.0).contains(&args.read_ratio) {
        bail!("--read-ratio must be between 0 and 1, got {}", args.read_ratio);
    }
    if !(args.duration.is_finite() && args.duration > 0.0 && args.duration <= 86_400.0) {
        bail!("--duration must be between 0 and 86400 seconds");
    }
    let duration = Duration::from_secs_f64(args.duration);
    let connections = args.connections.unwrap_or(args.clients);
    if connections > args.clients {
        bail!("--connections {connections} is more than --clients {}", args.clients);
    }
    let config = conn.client_config()?;
    let mut shared = Vec::new();
    for _ in 0..connections {
        shared.push(quorate_client::Client::new(config.clone())?);
    }
    // Client i: a session of its own over connection i mod N.
    let clients: Vec<quorate_client::Client> =
        (0..args.clients as usize).map(|i| shared[i % shared.len()].session()).collect();
    // Warm up: every client opens its connection and session before the clock starts.
    for c in &clients {
        c.put("bench/warmup", b"").await?;
    }
    let issued = Arc::new(AtomicU64::new(0));
    let errors_shown = Arc::new(AtomicU64::new(0));
    let value = Arc::new(vec![b'x'; args.value_size as usize]);
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, client) in clients.into_iter().enumerate() {
        let (issued, errors_shown, value) = (Arc::clone(&issued), Arc::clone(&errors_shown), Arc::clone(&value));
        let (ops_max, keys, read_ratio, read) = (args.ops_max, args.keys, args.read_ratio, args.consistency.into());
        tasks.spawn(async move {
            let mut rng = Rng(quorate_core::SplitMix64::new(0x5EED ^ (i as u64).wrapping_mul(0x9E37_79B9)));
            let (mut reads, mut writes) = (Samples::default(), Samples::default());
            while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < ops_max {
                let key = format!("bench/{:08}", rng.next() % keys);
                let is_read = rng.unit() < read_ratio;
                let t = Instant::now();
                let result = if is_read {
                    client.get(&key, read).await.map(drop)
                } else {
                    client.put(&key, value.as_slice()).await.map(drop)
                };
                let samples = if is_read { &mut reads } else { &mut writes };
                match result {
                    Ok(()) => samples.micros.push(t.elapsed().as_micros() as u64),
                    Err(e) => {
                        samples.errors += 1;
                        if errors_shown.fetch_add(1, Ordering::Relaxed) < ERRORS_SHOWN_MAX {
                            eprintln!("client {i}: {e}");
                        }
                    }
                }
            }
            (reads, writes)
        });
    }
    let (mut reads, mut writes) = (Samples::default(), Samples::default());
    while let Some(joined) = tasks.join_next().await {
        let (r, w) = joined?;
        reads.merge(r);
        writes.merge(w);
    }
    let elapsed = started.elapsed();
    for c in &shared {
        c.close();
    }
    let mut all = Samples::default();
    all.micros.extend(&reads.micros);
    all.micros.extend(&writes.micros);
    all.errors = reads.errors + writes.errors;
    if format == Format::Json {
        print_json(&json!({
            "clients": args.clients,
            "connections": connections,
            "value_size": args.value_size,
            "read_ratio": args.read_ratio,
            "keys": args.keys,
            "consistency": format!("{:?}", args.consistency).to_lowercase(),
            "elapsed_s": elapsed.as_secs_f64(),
            "all": all.json(elapsed),
            "reads": reads.json(elapsed),
            "writes": writes.json(elapsed),
        }))?;
    } else {
        println!(
            "{} clients over {connections} connections, {} B values, read ratio {:.2}, {:.1} s",
            args.clients,
            args.value_size,
            args.read_ratio,
            elapsed.as_secs_f64()
        );
        println!("{}", all.summary("all", elapsed));
        println!("{}", reads.summary("reads", elapsed));
        println!("{}", writes.summary("writes", elapsed));
    }
    if all.micros.is_empty() {
        bail!("no operation succeeded");
    }
    Ok(Outcome::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_right_ranks() {
        let mut s = Samples { micros: (1..=100).rev().map(|ms| ms * 1000).collect(), errors: 2 };
        let line = s.summary("all", Duration::from_secs(10));
        assert!(line.contains("100 ops (10/s), 2 errors"), "{line}");
        assert!(line.contains("p50 50.00  p90 90.00  p99 99.00  max 100.00"), "{line}");
        let mut empty = Samples::default();
        assert!(empty.summary("reads", Duration::from_secs(1)).contains("0 ops"));
        // The same figures as JSON.
        let j = s.json(Duration::from_secs(10));
        assert_eq!(
            j,
            json!({"ops": 100, "ops_per_sec": 10.0, "errors": 2,
                "latency_ms": {"p50": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0}})
        );
        let j = empty.json(Duration::from_secs(1));
        assert_eq!((j["ops"].clone(), j["latency_ms"].clone()), (json!(0), Value::Null));
    }
}
