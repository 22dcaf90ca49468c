//! The `[sandbox]` table and the sandbox's resource limits (`limits.pids`, `limits.memory`):
//! everything about the sandbox that is not the network.
//!
//! ```toml
//! [sandbox]
//! # Unix sockets outside the sandbox it may connect to: exact socket paths, or directories
//! # (ending in `/`) whose sockets it may reach. Everything else is refused and audited.
//! allow_unix = ["/run/postgresql/.s.PGSQL.5432", "/tmp/.X11-unix/"]
//! # Files or directories the sandbox sees empty (read-only).
//! hide = ["/home/runner/.docker", "/home/runner/work/repo/repo/.env"]
//! # Variables that look like secrets but are passed on anyway (said on stderr).
//! pass_env = ["TOKENIZER_PATH_TOKEN"]
//! # Credentials the sandbox user could read on disk: "warn" (default) or "refuse".
//! secrets = "warn"
//! # The system-call filter: "default", "off", or an OCI (Docker) JSON profile.
//! seccomp = "default"
//! # GitHub Actions' file commands ($GITHUB_ENV, $GITHUB_PATH, $GITHUB_OUTPUT...): "hide"
//! # (default: later steps run outside the sandbox) or "allow".
//! runner_file_commands = "hide"
//! # Container runtime sockets closed to a job attached with `egressd attach --job` (unless
//! # `--allow-docker`): the job's user gets a POSIX ACL entry with no permission on each.
//! runtime_sockets = ["/run/docker.sock", "/run/containerd/containerd.sock"]   # default: RUNTIME_SOCKETS
//!
//! [limits]
//! pids = 8192          # processes and threads in the sandbox
//! memory = "8GiB"      # bytes, or a number with K, M, G (KiB, MiB, GiB) or T
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// The `[sandbox]` table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSandbox {
    /// Unix sockets (paths) and directories (ending in `/`) the sandbox may connect to.
    #[serde(default)]
    pub allow_unix: Vec<Spanned<String>>,
    /// Paths masked in the sandbox's view.
    #[serde(default)]
    pub hide: Vec<Spanned<String>>,
    /// Secret-looking variables passed on anyway.
    #[serde(default)]
    pub pass_env: Vec<Spanned<String>>,
    /// `"warn"` or `"refuse"`.
    pub secrets: Option<Spanned<String>>,
    /// `"default"`, `"off"` or a path.
    pub seccomp: Option<Spanned<String>>,
    /// `"hide"` (default) or `"allow"`: GitHub Actions' file commands.
    pub runner_file_commands: Option<Spanned<String>>,
    /// Container runtime sockets closed to an attached job (default [`RUNTIME_SOCKETS`]).
    pub runtime_sockets: Option<Vec<Spanned<String>>>,
}

/// The container runtime sockets a job attached with `attach --job` cannot use (its user
/// keeps the `docker` group, and `docker run --network host` would leave every firewall):
/// Docker, containerd, `BuildKit`, Podman (rootful), CRI-O.
pub const RUNTIME_SOCKETS: &[&str] = &[
    "/run/docker.sock",
    "/var/run/docker.sock",
    "/run/containerd/containerd.sock",
    "/run/buildkit/buildkitd.sock",
    "/run/podman/podman.sock",
    "/run/crio/crio.sock",
];

/// A memory size as written: a number of bytes, or a string with a unit.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FileSize {
    /// Bytes.
    Bytes(u64),
    /// `"512M"`, `"8GiB"`, ...
    Text(String),
}

/// What to do when the sandbox user can read credentials on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SecretsMode {
    /// Say which files, and run.
    #[default]
    Warn,
    /// Say which files, and refuse to run.
    Refuse,
}

/// The system-call filter of the sandboxed command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Seccomp {
    /// egressd's default profile.
    #[default]
    Default,
    /// No filter.
    Off,
    /// An OCI (Docker) JSON profile.
    File(PathBuf),
}

impl Seccomp {
    /// Parses `default`, `off` or a path (relative to `dir`).
    ///
    /// # Errors
    ///
    /// A sentence saying what to write, for an empty text.
    pub fn parse(text: &str, dir: &Path) -> Result<Self, String> {
        match text {
            "default" => Ok(Self::Default),
            "off" => Ok(Self::Off),
            "" => Err("seccomp: write \"default\", \"off\" or the path of a profile".into()),
            path => Ok(Self::File(dir.join(path))),
        }
    }
}

/// One `allow_unix` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnixAllow {
    /// This socket.
    Socket(PathBuf),
    /// Every socket under this directory.
    Directory(PathBuf),
}

impl UnixAllow {
    /// Parses an absolute path; one ending in `/` names a directory.
    ///
    /// # Errors
    ///
    /// A sentence naming the entry, for a relative path, `..`, or a path too long.
    pub fn parse(text: &str) -> Result<Self, String> {
        if !text.starts_with('/') {
            return Err(format!(
                "allow_unix {text:?}: write an absolute path (a socket, or a directory ending in /)"
            ));
        }
        if text.split('/').any(|part| part == "..") {
            return Err(format!(
                "allow_unix {text:?}: `..` is not allowed in the path"
            ));
        }
        if text.len() > 107 {
            return Err(format!(
                "allow_unix {text:?}: longer than a Unix socket path can be (107 bytes)"
            ));
        }
        Ok(if text.ends_with('/') {
            Self::Directory(PathBuf::from(text))
        } else {
            Self::Socket(PathBuf::from(text))
        })
    }

    /// The path as written (directories end in `/`).
    pub fn path(&self) -> &Path {
        match self {
            Self::Socket(p) | Self::Directory(p) => p,
        }
    }

    /// Whether this entry lets the sandbox reach the socket at `path`.
    pub fn covers(&self, path: &Path) -> bool {
        match self {
            Self::Socket(p) => p == path,
            Self::Directory(d) => path.starts_with(d),
        }
    }
}

/// The sandbox's settings beyond the network, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxSettings {
    /// Unix sockets outside the sandbox it may reach.
    pub allow_unix: Vec<UnixAllow>,
    /// Paths masked in the sandbox (absolute).
    pub hide: Vec<PathBuf>,
    /// Secret-looking variables passed on anyway.
    pub pass_env: Vec<String>,
    /// Readable credentials on disk: warn or refuse.
    pub secrets: SecretsMode,
    /// The system-call filter.
    pub seccomp: Seccomp,
    /// `pids.max` of the sandbox cgroup (`None`: the default).
    pub pids: Option<u64>,
    /// `memory.max` of the sandbox cgroup in bytes (`None`: the default).
    pub memory: Option<u64>,
    /// Let the command write GitHub Actions' file commands (`$GITHUB_ENV`, `$GITHUB_PATH`,
    /// `$GITHUB_OUTPUT`, `$GITHUB_STATE`, `$GITHUB_STEP_SUMMARY`). Off by default: the
    /// runner applies them to the *later* steps of the job, which run outside the sandbox.
    pub runner_file_commands: bool,
    /// Container runtime sockets closed to an attached job; `None`: [`RUNTIME_SOCKETS`].
    pub runtime_sockets: Option<Vec<PathBuf>>,
}

impl SandboxSettings {
    /// The container runtime sockets closed to an attached job.
    pub fn runtime_sockets(&self) -> Vec<PathBuf> {
        match &self.runtime_sockets {
            Some(list) => list.clone(),
            None => RUNTIME_SOCKETS.iter().map(PathBuf::from).collect(),
        }
    }
}

/// Parses a memory size: bytes, or a number with `K`, `M`, `G`, `T` (powers of 1024, with
/// or without `i`/`B`).
///
/// # Errors
///
/// A sentence saying what to write, for a malformed or overflowing size.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let help = || {
        format!("{text:?}: write a number of bytes, or a number with K, M, G or T, such as \"8G\"")
    };
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: u64 = number.parse().map_err(|_| help())?;
    let unit = unit
        .trim()
        .trim_end_matches(['B', 'b'])
        .trim_end_matches('i');
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(help()),
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Checks a variable name for `pass_env`.
///
/// # Errors
///
/// A sentence naming the text, when it is not a variable name.
pub fn check_env_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!("pass_env {name:?}: not a variable name"))
    }
}

/// Checks a path for `hide`.
///
/// # Errors
///
/// A sentence naming the path, when it is relative or `/`.
pub fn check_hide(path: &str) -> Result<PathBuf, String> {
    if !path.starts_with('/') || path == "/" {
        return Err(format!(
            "hide {path:?}: write an absolute path of a file or directory (not /)"
        ));
    }
    Ok(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("8G").unwrap(), 8 << 30);
        assert_eq!(parse_size("8GiB").unwrap(), 8 << 30);
        assert_eq!(parse_size("100M").unwrap(), 100 << 20);
        assert!(parse_size("8X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn unix_entries() {
        let dir = UnixAllow::parse("/tmp/.X11-unix/").unwrap();
        assert!(dir.covers(Path::new("/tmp/.X11-unix/X0")));
        assert!(!dir.covers(Path::new("/tmp/other")));
        let sock = UnixAllow::parse("/run/x.sock").unwrap();
        assert!(sock.covers(Path::new("/run/x.sock")));
        assert!(!sock.covers(Path::new("/run/x.sock2")));
        assert!(UnixAllow::parse("x.sock").is_err());
        assert!(UnixAllow::parse("/a/../b").is_err());
    }
}
