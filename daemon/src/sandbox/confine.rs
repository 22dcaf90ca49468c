//! The sandbox's view of the filesystem and its Unix sockets, beyond the network.
//!
//! The daemon plans ([`Confinement::plan`]) and the sandbox's init applies ([`apply`]),
//! as root, in the sandbox's own mount namespace, before it drops to the command's user:
//!
//! - `/run` (and `/var/run` when it is a directory of its own, and `/dev/shm`) becomes an
//!   empty tmpfs, so the host services' sockets that live there (Docker, containerd, D-Bus, systemd,
//!   `$XDG_RUNTIME_DIR`, egressd's control socket) are not in the sandbox's view. What the
//!   sandbox needs from there is bound back: the resolver configuration `/etc/resolv.conf`
//!   points to, egressd's trust bundle, and `allow_unix` sockets.
//! - Every other Unix socket the host has bound to a path (`/proc/net/unix` of the host's
//!   network namespace: an X server in `/tmp/.X11-unix`, an ssh-agent, a tmux server, a
//!   database) is covered by an empty file, unless `allow_unix` names it.
//! - `--hide` paths are covered: a file by an empty read-only file, a directory by an
//!   empty read-only tmpfs.
//! - Abstract Unix sockets are scoped to the sandbox with Landlock (Linux 6.12+); in a
//!   network namespace of its own the sandbox has a private abstract namespace anyway.
//!
//! Mounts made here are locked together when a nested user namespace copies them, so the
//! sandbox cannot unmount them to uncover what they hide (mount_namespaces(7)).

use std::{
    fs,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use egressd_config::sandbox::UnixAllow;
use nix::mount::{MsFlags, mount};
use serde::{Deserialize, Serialize};

/// What the sandbox's init does to its mount namespace; sent as JSON on its command line
/// (paths only, never a secret).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Confinement {
    /// Directories replaced by an empty tmpfs.
    pub private: Vec<PathBuf>,
    /// Host paths under a private directory bound back at the same place.
    pub keep: Vec<PathBuf>,
    /// Host Unix sockets covered by an empty file.
    pub mask: Vec<PathBuf>,
    /// Paths covered at the user's request (`--hide`).
    pub hide: Vec<PathBuf>,
    /// Scope abstract Unix sockets to the sandbox with Landlock.
    pub scope_abstract: bool,
    /// The command's `$XDG_RUNTIME_DIR` when it lies in a private directory: made afresh
    /// (empty, mode 0700) for the command's user, so tools that keep sockets and locks
    /// there work without seeing the host's.
    #[serde(default)]
    pub runtime_dir: Option<RuntimeDir>,
}

/// A directory made in the sandbox for its user.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuntimeDir {
    /// Where.
    pub path: PathBuf,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

impl Confinement {
    /// Makes `$XDG_RUNTIME_DIR` (`dir`) afresh for `uid`/`gid` when it lies in a private
    /// directory.
    #[must_use]
    pub fn with_runtime_dir(mut self, dir: Option<&Path>, uid: u32, gid: u32) -> Self {
        // Only plain components (no `..`, `.`), under a private directory, and not inside
        // anything bound back from the host: init creates it as root.
        let plain = |d: &Path| {
            d.components()
                .skip(1)
                .all(|c| matches!(c, std::path::Component::Normal(_)))
        };
        self.runtime_dir = dir
            .filter(|d| {
                d.is_absolute()
                    && plain(d)
                    && self
                        .private
                        .iter()
                        .any(|p| d.starts_with(p) && *d != p.as_path())
                    && !self
                        .keep
                        .iter()
                        .any(|k| d.starts_with(k) || k.starts_with(d))
            })
            .map(|d| RuntimeDir {
                path: d.to_path_buf(),
                uid,
                gid,
            });
        self
    }
}

/// Where plans wait for the sandbox's init (root only): a file, not an argument, because a
/// host with many sockets makes a plan larger than one argument may be (128 KiB).
const PLAN_DIR: &str = "/run/egressd/plans";

/// A plan written for the sandbox's init; removed on drop.
#[derive(Debug)]
pub struct PlanFile {
    path: PathBuf,
}

impl PlanFile {
    /// Writes `plan` to a root-only file named for `sandbox`.
    pub fn write(plan: &Confinement, sandbox: &str) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(PLAN_DIR)
            .with_context(|| format!("creating {PLAN_DIR}"))?;
        let path = Path::new(PLAN_DIR).join(format!("{sandbox}.json"));
        let _ = fs::remove_file(&path);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        serde_json::to_writer(&mut file, plan)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Self { path })
    }

    /// The file, for the init's `--confine`.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PlanFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Reads the plan the daemon wrote (in the sandbox's init, as root).
pub fn read_plan(path: &Path) -> Result<Confinement, String> {
    let text = fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("reading {}: {e}", path.display()))
}

/// Directories made private in the sandbox when they exist as directories of their own.
/// `/dev/shm` too: POSIX shared memory and semaphores of the host's processes live there, and
/// what the sandbox leaves there goes with its mount namespace.
pub const PRIVATE_DIRS: &[&str] = &["/run", "/var/run", "/dev/shm"];

impl Confinement {
    /// Plans the sandbox's view: `allow` names the host sockets it may still reach, `keep`
    /// host paths it must still see (egressd's trust bundle), `hide` what the user masks.
    /// `scope_abstract`: the sandbox shares a network namespace (so its abstract sockets are
    /// not its own) and Landlock can scope them ([`landlock_scopes_abstract`]).
    pub fn plan(
        allow: &[UnixAllow],
        keep: &[PathBuf],
        hide: &[PathBuf],
        scope_abstract: bool,
    ) -> Self {
        let private: Vec<PathBuf> = PRIVATE_DIRS
            .iter()
            .map(PathBuf::from)
            // /var/run is usually a symlink to /run, covered by /run itself.
            .filter(|p| fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()))
            .collect();
        let under_private = |p: &Path| private.iter().any(|d| p.starts_with(d));
        let mut kept: Vec<PathBuf> = keep.to_vec();
        // The resolver configuration, where /etc/resolv.conf leads (systemd-resolved's stub
        // file lives in /run).
        // The file alone: its directory may hold a resolver's socket (systemd-resolved's
        // varlink `io.systemd.Resolve`), a way to resolve names around egressd's DNS.
        if let Ok(real) = fs::canonicalize("/etc/resolv.conf")
            && under_private(&real)
        {
            kept.push(real);
        }
        for entry in allow {
            let path = entry.path();
            if under_private(path) && path.exists() {
                kept.push(path.to_path_buf());
            }
        }
        kept.sort();
        kept.dedup();
        let mask = host_sockets()
            .into_iter()
            .filter(|p| !under_private(p))
            .filter(|p| !allow.iter().any(|a| a.covers(p)))
            .collect();
        Self {
            private,
            keep: kept,
            mask,
            hide: hide.to_vec(),
            scope_abstract,
            runtime_dir: None,
        }
    }
}

/// The paths of the Unix sockets bound in this network namespace that still exist as
/// sockets (`/proc/net/unix`), without duplicates.
pub fn host_sockets() -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string("/proc/net/unix") else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = parse_proc_net_unix(&text)
        .into_iter()
        .filter(|p| fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The absolute paths in a `/proc/net/unix` text (abstract names start with `@` there and
/// are left out).
fn parse_proc_net_unix(text: &str) -> Vec<PathBuf> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            // Num RefCount Protocol Flags Type St Inode [Path]; the path is the rest of the
            // line, spaces included.
            let mut rest = line.trim_start();
            for _ in 0..7 {
                let end = rest.find(char::is_whitespace)?;
                rest = rest[end..].trim_start();
            }
            rest.starts_with('/').then(|| PathBuf::from(rest))
        })
        .collect()
}

/// Applies `plan` in the current (the sandbox's, private) mount namespace. Runs as root in
/// the sandbox's init, before the privilege drop. Returns notes for stderr (paths that could
/// not be hidden), or an error when the sandbox must not start.
pub fn apply(plan: &Confinement) -> Result<Vec<String>, String> {
    let mut notes = Vec::new();
    // Open what must stay visible before the tmpfs covers it.
    let kept: Vec<(PathBuf, fs::File)> = plan
        .keep
        .iter()
        .filter_map(|p| {
            nix::fcntl::open(
                p.as_path(),
                nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .ok()
            .map(|fd| (p.clone(), fs::File::from(fd)))
        })
        .collect();
    for dir in &plan.private {
        let meta = fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // /run holds small files; /dev/shm keeps the kernel's default size (half the RAM,
        // charged to the sandbox's memory limit), which browsers and data loaders need.
        let opts = if dir.starts_with("/dev") {
            format!("mode={:o}", meta.mode() & 0o7777)
        } else {
            format!("mode={:o},size=64m", meta.mode() & 0o7777)
        };
        mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(opts.as_str()),
        )
        .map_err(|e| format!("mounting a private {}: {e}", dir.display()))?;
    }
    // POSIX message queues of the sandbox's own IPC namespace only.
    if Path::new("/dev/mqueue").is_dir() {
        mount(
            Some("mqueue"),
            "/dev/mqueue",
            Some("mqueue"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(|e| format!("mounting the sandbox's /dev/mqueue: {e}"))?;
    }
    for (path, file) in &kept {
        let source = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(file));
        let is_dir = file.metadata().is_ok_and(|m| m.is_dir());
        if let Some(parent) = path.parent() {
            let _ = fs::create_dir_all(parent);
        }
        if is_dir {
            let _ = fs::create_dir_all(path);
        } else if fs::symlink_metadata(path).is_err() {
            let _ = fs::File::create(path);
        }
        mount(
            Some(source.as_str()),
            path,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| format!("keeping {} in the sandbox: {e}", path.display()))?;
    }
    drop(kept);
    if let Some(dir) = &plan.runtime_dir {
        make_runtime_dir(&dir.path)?;
        nix::unistd::chown(
            &dir.path,
            Some(nix::unistd::Uid::from_raw(dir.uid)),
            Some(nix::unistd::Gid::from_raw(dir.gid)),
        )
        .map_err(|e| format!("{}: {e}", dir.path.display()))?;
        fs::set_permissions(&dir.path, fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("{}: {e}", dir.path.display()))?;
    }
    // An empty file and an empty directory to cover things with.
    let empty_file = Path::new("/run/.egressd-empty");
    let empty_dir = Path::new("/run/.egressd-empty.d");
    let staging_ok = plan.private.iter().any(|p| p == Path::new("/run"));
    if !staging_ok && (!plan.mask.is_empty() || !plan.hide.is_empty()) {
        return Err("no private /run to stage the masks in".into());
    }
    if !plan.mask.is_empty() || !plan.hide.is_empty() {
        fs::write(empty_file, b"").map_err(|e| format!("{}: {e}", empty_file.display()))?;
        fs::set_permissions(empty_file, fs::Permissions::from_mode(0o444))
            .map_err(|e| format!("{}: {e}", empty_file.display()))?;
        fs::create_dir_all(empty_dir).map_err(|e| format!("{}: {e}", empty_dir.display()))?;
        fs::set_permissions(empty_dir, fs::Permissions::from_mode(0o555))
            .map_err(|e| format!("{}: {e}", empty_dir.display()))?;
    }
    for socket in &plan.mask {
        // Gone since the plan was made, or no longer a socket: nothing to cover.
        if !fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket()) {
            continue;
        }
        cover(empty_file, socket)
            .map_err(|e| format!("covering the host socket {}: {e}", socket.display()))?;
    }
    for path in &plan.hide {
        let Ok(meta) = fs::symlink_metadata(path) else {
            notes.push(format!(
                "--hide {}: no such file or directory",
                path.display()
            ));
            continue;
        };
        let source = if meta.is_dir() { empty_dir } else { empty_file };
        cover(source, path).map_err(|e| format!("hiding {}: {e}", path.display()))?;
    }
    Ok(notes)
}

/// Creates `path` in the fresh private tmpfs, one plain component at a time, never through
/// a symlink (`O_NOFOLLOW` on each directory opened).
fn make_runtime_dir(path: &Path) -> Result<(), String> {
    use nix::{
        fcntl::{OFlag, open, openat},
        sys::stat::{Mode, mkdirat},
    };
    let fail = |e: nix::Error| format!("making {}: {e}", path.display());
    let mut dir = open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(fail)?;
    for part in path.components().skip(1) {
        let std::path::Component::Normal(name) = part else {
            return Err(format!("{}: not a plain path", path.display()));
        };
        match mkdirat(&dir, name, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(e) => return Err(fail(e)),
        }
        dir = openat(
            &dir,
            name,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(fail)?;
    }
    Ok(())
}

/// Bind-mounts `source` read-only over `target`.
fn cover(source: &Path, target: &Path) -> nix::Result<()> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )?;
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV,
        None::<&str>,
    )
}

/// Scopes abstract Unix sockets to the calling process and its descendants (Landlock ABI
/// 6, Linux 6.12). Returns whether the kernel enforces it.
pub fn scope_abstract_sockets() -> bool {
    use landlock::{CompatLevel, Compatible as _, Ruleset, RulesetAttr as _, RulesetStatus, Scope};
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .scope(Scope::AbstractUnixSocket)
        .and_then(|r| r.create())
        .and_then(|r| r.restrict_self());
    matches!(
        status,
        Ok(s) if s.ruleset == RulesetStatus::FullyEnforced
    )
}

/// Whether this kernel can scope abstract Unix sockets with Landlock (for `doctor` and for
/// choosing what the eBPF hooks must refuse).
pub fn landlock_scopes_abstract() -> bool {
    // SAFETY: landlock_create_ruleset with LANDLOCK_CREATE_RULESET_VERSION only returns the ABI.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32, // LANDLOCK_CREATE_RULESET_VERSION
        )
    };
    abi >= 6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_dir_is_made_only_at_a_plain_private_place() {
        let plan = Confinement {
            private: vec![PathBuf::from("/run")],
            keep: vec![PathBuf::from("/run/egressd/sb")],
            ..Confinement::default()
        };
        let made = |dir: &str| {
            plan.clone()
                .with_runtime_dir(Some(Path::new(dir)), 1000, 1000)
                .runtime_dir
                .map(|d| d.path)
        };
        assert_eq!(
            made("/run/user/1000"),
            Some(PathBuf::from("/run/user/1000"))
        );
        for refused in [
            "/run/../etc",
            "/run/user/../../etc",
            "/run",
            "/etc/xdg",
            "run/user/1000",
            "/run/egressd/sb/x",
            "/run/egressd",
        ] {
            assert_eq!(made(refused), None, "{refused}");
        }
    }

    #[test]
    fn reads_socket_paths_from_proc_net_unix() {
        let text = "\
Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 23456 /run/docker.sock
0000000000000000: 00000002 00000000 00010000 0001 01 23457 @/tmp/.X11-unix/X0
0000000000000000: 00000003 00000000 00000000 0001 03 23458
0000000000000000: 00000002 00000000 00010000 0001 01 23459 /tmp/.X11-unix/X0
0000000000000000: 00000002 00000000 00010000 0001 01     7 /tmp/a dir/with spaces.sock
";
        assert_eq!(
            parse_proc_net_unix(text),
            vec![
                PathBuf::from("/run/docker.sock"),
                PathBuf::from("/tmp/.X11-unix/X0"),
                PathBuf::from("/tmp/a dir/with spaces.sock"),
            ]
        );
    }
}
