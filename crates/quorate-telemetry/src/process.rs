//! Process metrics read from `/proc/self` at each scrape (Linux; elsewhere nothing is
//! exported): CPU seconds, resident memory, open and allowed file descriptors, under the
//! names the Prometheus client libraries use ([`names::PROCESS_CPU_SECONDS_TOTAL`]…), so
//! that the usual dashboards and alerts find them. No new dependency: three small text files
//! and one directory listing.

use crate::names;
use std::fmt::Write as _;

/// Clock ticks per second of the CPU times in `/proc/self/stat`: `USER_HZ`, which Linux fixes
/// at 100 in its user-space ABI on every architecture the node builds for.
const USER_HZ: f64 = 100.0;
/// The most `/proc/self/fd` entries counted (a bound on the work of one scrape).
const FDS_COUNTED_MAX: usize = 1 << 20;

/// One reading of the process's resources; a field is `None` when it could not be read.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessSample {
    /// User and system CPU time, seconds.
    pub cpu_seconds: Option<f64>,
    /// Resident memory, bytes.
    pub resident_bytes: Option<u64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// The soft limit on open file descriptors.
    pub max_fds: Option<u64>,
}

impl ProcessSample {
    /// Reads `/proc/self` (every field `None` where it does not exist).
    #[must_use]
    pub fn read() -> ProcessSample {
        let proc = std::path::Path::new("/proc/self");
        ProcessSample {
            cpu_seconds: std::fs::read_to_string(proc.join("stat")).ok().as_deref().and_then(cpu_seconds),
            resident_bytes: std::fs::read_to_string(proc.join("status")).ok().as_deref().and_then(resident_bytes),
            open_fds: std::fs::read_dir(proc.join("fd")).ok().map(|d| d.take(FDS_COUNTED_MAX).count() as u64),
            max_fds: std::fs::read_to_string(proc.join("limits")).ok().as_deref().and_then(max_fds),
        }
    }

    /// Appends the sample in the Prometheus text format (nothing for a field not read).
    pub fn render(&self, out: &mut String) {
        let mut one = |name: &str, kind: &str, value: Option<String>| {
            let Some(value) = value else { return };
            if let Some(d) = names::ALL.iter().find(|d| d.name == name) {
                let _ = writeln!(out, "# HELP {name} {}", d.help);
            }
            let _ = writeln!(out, "# TYPE {name} {kind}\n{name} {value}");
        };
        one(names::PROCESS_CPU_SECONDS_TOTAL, "counter", self.cpu_seconds.map(|v| format!("{v}")));
        one(names::PROCESS_MAX_FDS, "gauge", self.max_fds.map(|v| v.to_string()));
        one(names::PROCESS_OPEN_FDS, "gauge", self.open_fds.map(|v| v.to_string()));
        one(names::PROCESS_RESIDENT_MEMORY_BYTES, "gauge", self.resident_bytes.map(|v| v.to_string()));
    }
}

/// User plus system time from the text of `/proc/<pid>/stat`: fields 14 and 15, counted after
/// the command name in parentheses (which may itself hold spaces and parentheses).
fn cpu_seconds(stat: &str) -> Option<f64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // `after` starts at field 3 (the state): utime is field 14, the 12th here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime.saturating_add(stime) as f64 / USER_HZ)
}

/// `VmRSS` of `/proc/<pid>/status`, in bytes (the file gives kB).
fn resident_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line["VmRSS:".len()..].split_whitespace().next()?.parse().ok()?;
    kb.checked_mul(1024)
}

/// The soft limit of "Max open files" in `/proc/<pid>/limits` (`None` when unlimited).
fn max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse_including_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (quorate (x) y) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 9 0 100 1 2";
        assert_eq!(cpu_seconds(stat), Some(3.25));
        assert_eq!(cpu_seconds("garbage"), None);
        assert_eq!(cpu_seconds("1 (x) S 1 2"), None, "too few fields");
        let status = "Name:\tquorate\nVmPeak:\t  9000 kB\nVmRSS:\t   2048 kB\nThreads:\t9\n";
        assert_eq!(resident_bytes(status), Some(2048 * 1024));
        assert_eq!(resident_bytes("Name:\tx\n"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            65536                524288               files     \n";
        assert_eq!(max_fds(limits), Some(65_536));
        assert_eq!(max_fds("Max open files            unlimited            unlimited            files\n"), None);
    }

    #[test]
    fn this_process_is_read_on_linux_and_rendered() {
        let s = ProcessSample::read();
        let mut text = String::new();
        s.render(&mut text);
        if cfg!(target_os = "linux") {
            assert!(s.cpu_seconds.is_some() && s.resident_bytes.is_some_and(|b| b > 0), "{s:?}");
            assert!(s.open_fds.is_some_and(|n| n >= 1) && s.max_fds.is_some(), "{s:?}");
            assert!(text.contains("# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total "), "{text}");
            assert!(text.contains("\nprocess_open_fds "), "{text}");
        } else {
            assert_eq!(s, ProcessSample::default());
            assert!(text.is_empty());
        }
    }
}
