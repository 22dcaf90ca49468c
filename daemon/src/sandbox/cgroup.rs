//! The sandbox's cgroup v2 directory.
//!
//! egressd never assumes `/sys/fs/cgroup`: it finds the cgroup2 mount in
//! `/proc/self/mountinfo` (hybrid hosts mount it at `/sys/fs/cgroup/unified`), and when
//! there is none (for example under `ip netns exec`, which remounts `/sys`) it mounts its
//! own at `/run/egressd/cgroup2` and says so.

use std::{
    fs::{self, File},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;

/// Where egressd mounts cgroup2 itself when no mount is visible.
const OWN_MOUNT: &str = "/run/egressd/cgroup2";
/// Folder under the cgroup2 root that holds one folder per sandbox.
const PARENT: &str = "egressd";

/// A cgroup v2 directory: one created for a sandbox (removed, after killing whatever is
/// left in it, on drop), or an existing one the daemon attaches to (left alone on drop).
pub struct Cgroup {
    path: PathBuf,
    dir: File,
    id: u64,
    owned: bool,
}

/// `statfs` magic of cgroup v2 (`CGROUP2_SUPER_MAGIC`).
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

impl Cgroup {
    /// Creates `<cgroup2 root>/egressd/<name>`.
    pub fn create(name: &str) -> anyhow::Result<Self> {
        let root = cgroup2_root()?;
        let parent = root.join(PARENT);
        fs::create_dir_all(&parent)
            .with_context(|| format!("creating cgroup {}", parent.display()))?;
        remove_stale(&parent);
        let path = parent.join(name);
        fs::create_dir(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        let dir =
            File::open(&path).with_context(|| format!("opening cgroup {}", path.display()))?;
        let id = dir.metadata()?.ino();
        Ok(Self {
            path,
            dir,
            id,
            owned: true,
        })
    }

    /// Opens an existing cgroup v2 directory (`egressd attach --cgroup PATH`); it is not
    /// emptied or removed on drop.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let dir = File::open(path).with_context(|| format!("opening cgroup {}", path.display()))?;
        let fs = nix::sys::statfs::fstatfs(&dir)
            .with_context(|| format!("statfs of {}", path.display()))?;
        if fs.filesystem_type().0 != CGROUP2_SUPER_MAGIC {
            anyhow::bail!(
                "{} is not a cgroup v2 directory (egressd attaches to cgroup2 only)",
                path.display()
            );
        }
        let id = dir.metadata()?.ino();
        Ok(Self {
            path: path.to_path_buf(),
            dir,
            id,
            owned: false,
        })
    }

    /// The cgroup of process `pid` (`/proc/PID/cgroup`, its `0::` line), opened.
    pub fn of_pid(pid: i32) -> anyhow::Result<Self> {
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .with_context(|| format!("reading /proc/{pid}/cgroup (is process {pid} running?)"))?;
        let rel = unified_path(&text).ok_or_else(|| {
            anyhow::anyhow!(
                "process {pid} is in no cgroup v2 (no `0::` line in /proc/{pid}/cgroup)"
            )
        })?;
        Self::open(&cgroup2_root()?.join(rel.trim_start_matches('/')))
    }

    /// Whether this cgroup is `other` or one of its ancestors (both paths as opened).
    pub fn contains(&self, other: &Path) -> bool {
        other.starts_with(&self.path)
    }

    /// The cgroup's id, as `bpf_get_current_cgroup_id()` returns it (its inode number).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The open directory, which programs are attached to.
    pub fn dir(&self) -> &File {
        &self.dir
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `cgroup.procs` file a process writes its pid to in order to join.
    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// Kills every process left in the cgroup and waits (bounded) until it is empty.
    pub fn kill_all(&self) {
        if fs::write(self.path.join("cgroup.kill"), "1").is_err() {
            // Kernels before 5.14 have no cgroup.kill: signal each process.
            for pid in self.pids() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.pids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.procs_file())
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        self.kill_all();
        if let Err(e) = fs::remove_dir(&self.path) {
            tracing::warn!("could not remove cgroup {}: {e}", self.path.display());
        }
    }
}

/// Removes sandbox cgroups left by an egressd that died without cleaning up, killing
/// anything still inside.
fn remove_stale(parent: &Path) {
    for path in stale(parent) {
        let _ = fs::write(path.join("cgroup.kill"), "1");
        match fs::remove_dir(&path) {
            Ok(()) => tracing::info!("removed stale sandbox cgroup {}", path.display()),
            Err(e) => tracing::warn!(
                "stale sandbox cgroup {} could not be removed: {e}",
                path.display()
            ),
        }
    }
}

/// The sandbox cgroups under `parent` whose egressd no longer runs: their names end in the
/// pid of the egressd that made them (`egressd-<pid>`, `daemon-<pid>`). A live run's cgroup
/// is never among them, even while still empty: its sandbox may be about to join it.
pub fn stale(parent: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = fs::read_dir(parent) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .and_then(|n| {
                    n.strip_prefix("egressd-")
                        .or_else(|| n.strip_prefix("daemon-"))
                })
                .and_then(|p| p.parse::<i32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .map(|entry| entry.path())
        .collect()
}

/// The path of a `/proc/PID/cgroup` text's cgroup v2 entry (`0::/PATH`), relative to the
/// cgroup2 root.
fn unified_path(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// The cgroup of the calling process (`/proc/self/cgroup`), as a path under the root.
pub fn own_path() -> anyhow::Result<PathBuf> {
    let text = fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    let rel = unified_path(&text).ok_or_else(|| anyhow::anyhow!("egressd is in no cgroup v2"))?;
    Ok(cgroup2_root()?.join(rel.trim_start_matches('/')))
}

/// Moves the calling process (every thread) into `<cgroup2 root>/egressd/daemon-<pid>`,
/// created if needed: the daemon leaves a cgroup it firewalls (`attach --job`).
pub fn move_self_out() -> anyhow::Result<PathBuf> {
    let parent = cgroup2_root()?.join(PARENT);
    let path = parent.join(format!("daemon-{}", std::process::id()));
    fs::create_dir_all(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
    fs::write(path.join("cgroup.procs"), std::process::id().to_string())
        .with_context(|| format!("moving egressd into cgroup {}", path.display()))?;
    Ok(path)
}

/// The cgroup2 mount point: from mountinfo, else one egressd mounts itself.
pub fn cgroup2_root() -> anyhow::Result<PathBuf> {
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    if let Some(path) = find_cgroup2(&mountinfo) {
        return Ok(path);
    }
    let own = Path::new(OWN_MOUNT);
    fs::create_dir_all(own).with_context(|| format!("creating {OWN_MOUNT}"))?;
    nix::mount::mount(
        Some("cgroup2"),
        own,
        Some("cgroup2"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .with_context(|| {
        format!(
            "no cgroup2 filesystem is mounted and mounting one at {OWN_MOUNT} failed; \
             egressd needs cgroup v2 (mount it with `mount -t cgroup2 none /sys/fs/cgroup`)"
        )
    })?;
    eprintln!("egressd: no cgroup2 mount was visible; mounted one at {OWN_MOUNT}");
    Ok(own.to_path_buf())
}

/// The mount point of the first cgroup2 filesystem in a mountinfo text.
fn find_cgroup2(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (fields, rest) = line.split_once(" - ")?;
        let fstype = rest.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        let mount_point = fields.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_octal(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_unified_mount_on_a_hybrid_host() {
        let info = "\
25 30 0:22 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755
26 25 0:23 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
27 25 0:24 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
";
        assert_eq!(
            find_cgroup2(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn the_unified_entry_of_proc_pid_cgroup() {
        let text = "12:cpu:/x\n0::/system.slice/runner.service\n";
        assert_eq!(unified_path(text), Some("/system.slice/runner.service"));
        assert_eq!(unified_path("1:name=systemd:/\n"), None);
    }

    #[test]
    fn no_cgroup2_mount_is_none() {
        let info = "26 25 0:23 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(find_cgroup2(info), None);
    }

    #[test]
    fn escaped_mount_points_are_decoded() {
        assert_eq!(unescape_octal(r"/mnt/my\040cgroup"), "/mnt/my cgroup");
    }
}
