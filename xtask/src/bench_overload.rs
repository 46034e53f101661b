//! `cargo xtask bench overload`: goodput and p99 latency against offered load, with admission
//! control on and off, on a real one-node `quorate` process.
//!
//! The load generator is the overload test's (`crates/quorate-node/tests/overload.rs`, the
//! ignored `overload_curves`): for each setting a fresh node, a capacity measurement (128
//! closed-loop writers), then each offered multiple of that capacity from 2000 paced clients of
//! one principal plus a light client of another. This command runs it and prints the result as
//! a markdown table (for docs/benchmarks.md).

use crate::{PROFILE, cargo, root, run};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;

/// Longest run per offered multiple, in seconds.
const SECS_MAX: u64 = 120;
/// Most offered multiples in one run.
const MULTIPLES_MAX: usize = 16;

pub(crate) fn bench_overload(args: &[String]) -> Result<()> {
    let mut secs = 8u64;
    let mut multiples = "0.5,1,2,5".to_string();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--secs" => {
                secs = value.parse().with_context(|| format!("--secs takes whole seconds, got `{value}`"))?;
                if !(1..=SECS_MAX).contains(&secs) {
                    bail!("--secs must be within 1..={SECS_MAX}");
                }
            }
            "--multiples" => {
                let parsed: Vec<f64> = value
                    .split(',')
                    .map(|m| m.trim().parse::<f64>())
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("--multiples takes numbers like 0.5,1,2,5, got `{value}`"))?;
                if parsed.is_empty() || parsed.len() > MULTIPLES_MAX || parsed.iter().any(|m| !(*m > 0.0 && *m <= 20.0))
                {
                    bail!("--multiples: 1 to {MULTIPLES_MAX} numbers, each in (0, 20]");
                }
                multiples = value.clone();
            }
            other => bail!("usage: cargo xtask bench overload [--secs N] [--multiples 0.5,1,2,5]; unknown `{other}`"),
        }
    }
    let out = root().join("target").join("bench-overload.txt");
    std::fs::create_dir_all(out.parent().expect("has a parent"))?;
    let _ = std::fs::remove_file(&out);
    run(cargo()
        .args(["test", "--locked", "--profile", PROFILE, "-p", "quorate-node", "--test", "overload", "--"])
        .args(["--ignored", "--exact", "overload_curves", "--nocapture"])
        .env("QUORATE_OVERLOAD_OUT", &out)
        .env("QUORATE_OVERLOAD_SECS", secs.to_string())
        .env("QUORATE_OVERLOAD_MULTIPLES", &multiples))?;
    let text = std::fs::read_to_string(&out).with_context(|| format!("no results in {}", out.display()))?;
    println!("\n{}", table(&text));
    Ok(())
}

/// The result lines (`OVERLOAD key=value ...`) as a markdown table.
fn table(text: &str) -> String {
    let mut rows = vec![
        "| admission | offered (x capacity) | capacity writes/s | offered/s | goodput/s | goodput / capacity | p50 ms | p99 ms | not accepted | light client ok | node RSS MiB |".to_string(),
        "|---|---|---|---|---|---|---|---|---|---|---|".to_string(),
    ];
    for line in text.lines().filter(|l| l.starts_with("OVERLOAD ")) {
        let kv: BTreeMap<&str, &str> = line.split_whitespace().filter_map(|f| f.split_once('=')).collect();
        let get = |k: &str| kv.get(k).copied().unwrap_or("?");
        let ratio = match (get("goodput_per_s").parse::<f64>(), get("peak_per_s").parse::<f64>()) {
            (Ok(g), Ok(p)) if p > 0.0 => format!("{:.0}%", 100.0 * g / p),
            _ => "?".into(),
        };
        rows.push(format!(
            "| {} | {} | {} | {} | {} | {ratio} | {} | {} | {}% | {}% | {} |",
            get("admission"),
            get("multiple"),
            get("peak_per_s"),
            get("offered_per_s"),
            get("goodput_per_s"),
            get("p50_ms"),
            get("p99_ms"),
            get("not_accepted_pct"),
            get("light_ok_pct"),
            get("rss_mb_max"),
        ));
    }
    rows.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_become_table_rows() {
        let text = "noise\nOVERLOAD admission=on multiple=5.0 peak_per_s=1000 offered_per_s=5000 goodput_per_s=950 \
                    p50_ms=20.0 p99_ms=80.0 not_accepted_pct=81.0 shed=10 unknown=0 unsent=5 light_ok_pct=100.0 \
                    rss_mb_max=90 reasons={}\n";
        let t = table(text);
        assert_eq!(t.lines().count(), 3);
        assert_eq!(
            t.lines().last(),
            Some("| on | 5.0 | 1000 | 5000 | 950 | 95% | 20.0 | 80.0 | 81.0% | 100.0% | 90 |")
        );
    }
}
