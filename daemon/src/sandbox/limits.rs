//! Resource limits of the sandbox: `pids.max` and `memory.max`, so that a fork bomb or a
//! runaway build stays inside the sandbox and cannot take the runner, or egressd, down.
//!
//! On a pure cgroup v2 host (GitHub's Ubuntu runners) the limits go on the sandbox cgroup
//! itself, with the controllers enabled on the way down. On hybrid hosts, where `pids` and
//! `memory` are still v1 hierarchies (the v2 mount holds no controller), egressd makes a
//! sibling cgroup in each v1 hierarchy and the sandbox joins those too.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::cgroup::Cgroup;

/// Processes and threads in one sandbox, when the configuration does not say.
pub const DEFAULT_PIDS: u64 = 8192;

/// The share of the machine's memory a sandbox may use, when the configuration does not
/// say: enough for any build, with room left for the runner and egressd.
const DEFAULT_MEMORY_PERCENT: u64 = 80;

/// The default `memory.max`: [`DEFAULT_MEMORY_PERCENT`] of `MemTotal`.
pub fn default_memory() -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024 / 100 * DEFAULT_MEMORY_PERCENT)
}

/// The limits in force for one sandbox; removes the v1 cgroups it made on drop.
#[derive(Debug, Default)]
pub struct Limits {
    /// `cgroup.procs` files (v1) the sandbox's first process joins besides its v2 cgroup.
    pub extra_procs: Vec<PathBuf>,
    /// v1 cgroups made for the sandbox.
    v1_dirs: Vec<PathBuf>,
    /// What is in force, for `doctor`-like notes: `pids=8192 (v2)`.
    pub described: Vec<String>,
    /// Controllers found neither on cgroup v2 nor as v1 (`pids`, `memory`): no such limit.
    pub missing: Vec<&'static str>,
}

/// Sets `pids.max` and `memory.max` for the sandbox in `cgroup` (named `name`), each where
/// its controller is; [`Limits::missing`] names a controller found nowhere (the caller says
/// so and decides). Fails when a limit cannot be written where its controller is.
pub fn apply(cgroup: &Cgroup, name: &str, pids: u64, memory: u64) -> anyhow::Result<Limits> {
    let mut limits = Limits::default();
    let v2 = enable_v2(cgroup);
    for (controller, file, value) in [("pids", "pids.max", pids), ("memory", "memory.max", memory)]
    {
        if v2.iter().any(|c| c == controller) {
            fs::write(cgroup.path().join(file), value.to_string())
                .with_context(|| format!("setting {file} of {}", cgroup.path().display()))?;
            if controller == "memory" {
                // No swap on top: past memory.max the sandbox is OOM-killed, not left
                // thrashing the runner's disk (the file exists where swap is accounted).
                let _ = fs::write(cgroup.path().join("memory.swap.max"), "0");
            }
            limits
                .described
                .push(format!("{controller}={value} (cgroup v2)"));
            continue;
        }
        let Some(mount) = v1_mount(controller) else {
            limits.missing.push(controller);
            continue;
        };
        remove_stale(&mount.join("egressd"));
        let dir = mount.join("egressd").join(name);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        limits.v1_dirs.push(dir.clone());
        let v1_file = if controller == "memory" {
            "memory.limit_in_bytes"
        } else {
            file
        };
        fs::write(dir.join(v1_file), value.to_string())
            .with_context(|| format!("setting {}", dir.join(v1_file).display()))?;
        if controller == "memory" {
            // Memory and swap together no more than memory alone (where swap is accounted).
            let _ = fs::write(dir.join("memory.memsw.limit_in_bytes"), value.to_string());
        }
        limits.extra_procs.push(dir.join("cgroup.procs"));
        limits
            .described
            .push(format!("{controller}={value} (cgroup v1)"));
    }
    Ok(limits)
}

/// Removes the v1 cgroups of runs whose egressd is gone (a run killed before its cleanup
/// leaves them behind; the v2 cgroup's removal killed what was inside).
fn remove_stale(parent: &Path) {
    for path in super::cgroup::stale(parent) {
        let _ = fs::remove_dir(path);
    }
}

/// Enables `pids` and `memory` from the cgroup2 root down to `cgroup`'s parent; returns
/// the controllers `cgroup` then has.
fn enable_v2(cgroup: &Cgroup) -> Vec<String> {
    let path = cgroup.path();
    let mut chain: Vec<&Path> = path.ancestors().skip(1).collect();
    chain.reverse();
    for dir in chain {
        let control = dir.join("cgroup.subtree_control");
        if !control.exists() {
            continue;
        }
        for controller in ["+pids", "+memory"] {
            let _ = fs::write(&control, controller);
        }
    }
    fs::read_to_string(path.join("cgroup.controllers"))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// The mount point of the v1 hierarchy holding `controller` (`pids`, `memory`), if any.
pub fn v1_mount(controller: &str) -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (fields, rest) = line.split_once(" - ")?;
        let mut rest = rest.split_whitespace();
        if rest.next()? != "cgroup" {
            return None;
        }
        let options = rest.nth(1)?;
        options
            .split(',')
            .any(|o| o == controller)
            .then(|| fields.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

impl Drop for Limits {
    fn drop(&mut self) {
        // The v2 cgroup's drop has killed every process; a v1 cgroup empties a moment later.
        for dir in &self.v1_dirs {
            let deadline = Instant::now() + Duration::from_secs(5);
            while fs::remove_dir(dir).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_memory_is_most_of_the_machine() {
        let m = super::default_memory().unwrap();
        assert!(m > 64 << 20, "{m}");
    }
}
