//! The BPF filesystem where the daemon pins its links, so that a cgroup it firewalls stays
//! redirected (to listeners that are gone: connections are refused) if the daemon dies,
//! until a restarted daemon re-arms it.
//!
//! Found in `/proc/self/mountinfo` like cgroup2; when none is mounted, one is mounted at
//! `/sys/fs/bpf` (what systemd does at boot).

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

/// Where bpffs is mounted when it is not yet.
const DEFAULT_MOUNT: &str = "/sys/fs/bpf";

/// The bpffs mount point, mounting one when needed.
pub fn root() -> anyhow::Result<PathBuf> {
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    if let Some(path) = find(&mountinfo) {
        return Ok(path);
    }
    let path = Path::new(DEFAULT_MOUNT);
    fs::create_dir_all(path).with_context(|| format!("creating {DEFAULT_MOUNT}"))?;
    nix::mount::mount(
        Some("bpf"),
        path,
        Some("bpf"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        Some("mode=0700"),
    )
    .with_context(|| format!("no bpffs is mounted and mounting one at {DEFAULT_MOUNT} failed"))?;
    eprintln!("egressd: no bpffs mount was visible; mounted one at {DEFAULT_MOUNT}");
    Ok(path.to_path_buf())
}

/// The mount point of the first bpffs in a mountinfo text.
fn find(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (fields, rest) = line.split_once(" - ")?;
        (rest.split_whitespace().next()? == "bpf")
            .then(|| fields.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_bpffs() {
        let info = "\
27 25 0:24 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
40 22 0:33 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime - bpf bpf rw,mode=700
";
        assert_eq!(find(info), Some(PathBuf::from("/sys/fs/bpf")));
        assert_eq!(find("27 25 0:24 / /x rw - cgroup2 cgroup2 rw\n"), None);
    }
}
