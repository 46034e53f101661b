//! CPU time of processes, from Linux's `/proc/<pid>/stat`: what a benchmark charges to the
//! processes under test (the nodes), apart from its load generator and anything else sharing
//! the machine.

use anyhow::{Context, Result, bail};
use std::process::Command;

/// Clock ticks per second of `/proc/<pid>/stat`'s times (`getconf CLK_TCK`; 100 on every
/// Linux this runs on, and the value used if `getconf` is missing).
pub(crate) fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<u64>().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// User plus system time, in clock ticks, from the text of `/proc/<pid>/stat`: fields 14
/// (`utime`) and 15 (`stime`). The command name (field 2) is in parentheses and may itself
/// hold spaces and parentheses, so the fields are counted from its last `)`.
pub(crate) fn parse_stat_ticks(stat: &str) -> Result<u64> {
    let close = stat.rfind(')').context("no `)` closing the command name")?;
    // After the name: state (field 3), ppid (4), ..., utime (14), stime (15).
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    if fields.len() < 13 {
        bail!("{} fields after the command name, fewer than 13", fields.len());
    }
    let field = |i: usize, name: &str| -> Result<u64> {
        fields[i].parse::<u64>().with_context(|| format!("{name} `{}` is not a count of ticks", fields[i]))
    };
    let (utime, stime) = (field(11, "utime")?, field(12, "stime")?);
    utime.checked_add(stime).context("utime + stime overflows")
}

/// CPU seconds (user + system) `pid` has used so far.
pub(crate) fn cpu_seconds(pid: u32, ticks_per_second: u64) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let ticks = parse_stat_ticks(&stat).with_context(|| format!("cannot parse {path}"))?;
    Ok(ticks as f64 / ticks_per_second as f64)
}

/// The CPU seconds each of `pids` has used so far (labelled as given).
pub(crate) fn snapshot<L: Clone>(pids: &[(L, u32)], ticks_per_second: u64) -> Result<Vec<(L, f64)>> {
    pids.iter().map(|(l, p)| Ok((l.clone(), cpu_seconds(*p, ticks_per_second)?))).collect()
}

/// What each process used between two snapshots of the same processes (in the same order).
pub(crate) fn used<L: Clone + PartialEq + std::fmt::Debug>(
    before: &[(L, f64)],
    after: &[(L, f64)],
) -> Result<Vec<(L, f64)>> {
    if before.len() != after.len() {
        bail!("{} processes before, {} after", before.len(), after.len());
    }
    before
        .iter()
        .zip(after)
        .map(|((lb, b), (la, a))| {
            if lb != la {
                bail!("process {lb:?} before, {la:?} after");
            }
            Ok((la.clone(), (a - b).max(0.0)))
        })
        .collect()
}

/// Microseconds of CPU per operation (`None` without operations).
pub(crate) fn micros_per_op(cpu_seconds: f64, ops: u64) -> Option<f64> {
    (ops > 0).then(|| cpu_seconds * 1e6 / ops as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real line of a `quorate node start` process (utime 1234, stime 567).
    const STAT: &str = "4242 (quorate) S 4200 4242 4200 0 -1 4194560 12345 0 3 0 1234 567 0 0 20 0 9 0 \
                        98765 1234567890 4321 18446744073709551615 1 1 0 0 0 0 0 4096 17609 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn utime_and_stime_are_fields_14_and_15() {
        assert_eq!(parse_stat_ticks(STAT).unwrap(), 1234 + 567);
    }

    #[test]
    fn a_command_name_with_spaces_and_parentheses_does_not_shift_the_fields() {
        let odd = STAT.replace("(quorate)", "(a (b) c))");
        assert_eq!(parse_stat_ticks(&odd).unwrap(), 1234 + 567);
    }

    #[test]
    fn short_or_garbled_lines_are_errors_not_zeroes() {
        assert!(parse_stat_ticks("").is_err());
        assert!(parse_stat_ticks("4242 quorate S 1 2 3").is_err());
        assert!(parse_stat_ticks("4242 (quorate) S 4200 4242").is_err());
        let garbled = STAT.replace(" 1234 567 ", " 12x4 567 ");
        let e = parse_stat_ticks(&garbled).unwrap_err();
        assert!(format!("{e:#}").contains("utime `12x4`"), "{e:#}");
        let overflow = STAT.replace(" 1234 567 ", " 18446744073709551615 1 ");
        assert!(parse_stat_ticks(&overflow).is_err());
    }

    #[test]
    fn this_process_has_a_cpu_time() {
        let t = clock_ticks_per_second();
        assert!(t > 0);
        let me = cpu_seconds(std::process::id(), t).unwrap();
        assert!(me >= 0.0 && me.is_finite());
        assert!(cpu_seconds(u32::MAX, t).is_err(), "no such process");
    }

    #[test]
    fn use_between_snapshots_is_per_process_and_per_op() {
        let before = vec![(1u64, 1.0), (2, 2.0)];
        let after = vec![(1u64, 1.5), (2, 2.25)];
        assert_eq!(used(&before, &after).unwrap(), vec![(1, 0.5), (2, 0.25)]);
        assert!(used(&before, &after[..1]).is_err());
        assert!(used(&before, &[(2u64, 1.5), (1, 2.25)]).is_err());
        assert_eq!(micros_per_op(0.75, 1000), Some(750.0));
        assert_eq!(micros_per_op(0.75, 0), None);
    }
}
