//! Memory and CPU of a proxy, read from `/proc`.
//!
//! A proxy is one process (HAProxy, Squid with `-N`, mitmdump, egressd) or a process tree
//! (nginx's master and workers); [`Measured::pids`] names what is counted. RSS is the sum of
//! `VmRSS` (and of `VmHWM` for the peak) over those processes. CPU time is the sum over
//! their threads of the first field of `/proc/<pid>/task/<tid>/schedstat`
//! (nanoseconds on CPU, user and system), because `/proc/<pid>/stat`'s `utime + stime` is
//! counted in 10 ms ticks, too coarse for a transfer that takes a tenth of a second; when
//! schedstat is missing, the ticks are used.

use std::fs;

/// Which processes make up one proxy.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// The process the bench started.
    pub pid: i32,
    /// Count its descendants too (multi-process servers). egressd's descendants are the
    /// sandbox and the client, so for egressd this is false.
    pub tree: bool,
}

impl Measured {
    /// The processes counted now.
    pub fn pids(&self) -> Vec<i32> {
        if self.tree {
            descendants(self.pid)
        } else {
            vec![self.pid]
        }
    }

    /// Resident memory now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.pids().iter().map(|&p| status_kib(p, "VmRSS:")).sum()
    }

    /// Peak resident memory so far, in KiB.
    pub fn hwm_kib(&self) -> u64 {
        self.pids().iter().map(|&p| status_kib(p, "VmHWM:")).sum()
    }

    /// CPU time used so far, in nanoseconds.
    pub fn cpu_ns(&self) -> u64 {
        self.pids().iter().map(|&p| cpu_ns(p)).sum()
    }
}

/// `pid` and every process below it.
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut parents: Vec<(i32, i32)> = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            if let Some(pp) = stat_fields(p).and_then(|f| f.get(1).and_then(|s| s.parse().ok())) {
                parents.push((p, pp));
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    out
}

fn status_kib(pid: i32, key: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn cpu_ns(pid: i32) -> u64 {
    let mut total = 0;
    let mut found = false;
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let path = task.path().join("schedstat");
            if let Some(ns) = fs::read_to_string(path)
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            {
                total += ns;
                found = true;
            }
        }
    }
    if found {
        return total;
    }
    // Fallback: utime + stime in clock ticks (fields 14 and 15 of stat).
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1);
    stat_fields(pid)
        .map(|f| {
            let t = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
            (t(11) + t(12)) * 1_000_000_000 / hz
        })
        .unwrap_or(0)
}

/// The fields of `/proc/<pid>/stat` after the command name: index 0 is the state (field 3),
/// index 1 the parent pid (field 4), index 11 `utime` (field 14).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// CPU time the whole machine spent busy so far (all CPUs: user, nice, system, IRQ, softIRQ
/// and steal time from `/proc/stat`), in nanoseconds; `None` when it cannot be read.
///
/// A relay inside the kernel works in softIRQ and kernel worker threads that belong to no
/// proxy process, so the proxy's own CPU time (`Measured::cpu_ns`) would call it free. The
/// machine's busy time around a workload counts every cycle it cost, the client's and the
/// upstream's included, the same way for every target, `direct` too.
pub fn machine_busy_ns() -> Option<u64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| ticks.get(i).copied().unwrap_or(0))
        .sum();
    // `/proc/stat` counts in USER_HZ, which Linux fixes at 100 for userspace.
    Some(busy * 10_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_measured() {
        let me = Measured {
            pid: i32::try_from(std::process::id()).unwrap(),
            tree: true,
        };
        assert!(me.rss_kib() > 0);
        assert!(me.hwm_kib() >= me.rss_kib());
        assert!(me.pids().contains(&me.pid));
        let before = me.cpu_ns();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        assert!(me.cpu_ns() >= before);
    }
}
