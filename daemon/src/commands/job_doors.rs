//! `attach --job`: the doors an attached job keeps, named on stderr.
//!
//! A job attached to the daemon is already running: egressd did not start it, so it cannot
//! give it a seccomp filter, a pseudo-terminal, a mount namespace, other groups or a scrubbed
//! environment, as `exec` does. The network is firewalled and the container runtime sockets
//! are closed; everything else the job could use to walk around the firewall or take a
//! secret is named here, once, so that nobody mistakes an attached job for an `exec`
//! sandbox. Each check reads the job as the step that asks sees it: the environment and
//! groups of the process that ran `sudo egressd attach --job` (the caller's parent when it
//! is `sudo`), its terminal, and what its user can read on disk.

use std::{
    ffi::OsString,
    os::unix::ffi::OsStringExt as _,
    path::{Path, PathBuf},
};

/// One door the attached job keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Door {
    /// What it is, one line.
    pub what: String,
    /// What to do about it.
    pub fix: &'static str,
}

/// What the job looks like from the attach client.
#[derive(Debug, Default)]
pub struct Job {
    /// The environment of the step that asked (names and values).
    pub env: Vec<(OsString, OsString)>,
    /// The groups of the step's process.
    pub groups: Vec<u32>,
    /// Whether the step has a controlling terminal.
    pub terminal: bool,
    /// Whether the kernel offers `AF_VSOCK` sockets.
    pub vsock: bool,
    /// The credentials its user can read (one line), if any.
    pub credentials: Option<String>,
}

impl Job {
    /// Reads the job from the process that asked: `pid` (the client's parent, `sudo` or
    /// the step's shell), for its user `uid`/`gid`.
    pub fn of(pid: u32, uid: u32, gid: u32) -> Self {
        let proc = PathBuf::from(format!("/proc/{pid}"));
        Self {
            env: environ(&proc.join("environ")),
            groups: groups(&proc.join("status")),
            terminal: controlling_tty(&proc.join("stat")),
            vsock: vsock_available(),
            credentials: crate::sandbox::secrets::readable_credentials(uid, gid, &[]),
        }
    }
}

/// The doors of `job`, in the order they are printed.
pub fn doors(job: &Job) -> Vec<Door> {
    let mut doors = Vec::new();
    let mut secrets: Vec<String> = job
        .env
        .iter()
        .filter_map(|(name, value)| {
            let name = name.to_str()?;
            crate::env::looks_secret(name, value.as_encoded_bytes()).map(|_| name.to_owned())
        })
        .collect();
    secrets.sort();
    secrets.dedup();
    if !secrets.is_empty() {
        doors.push(Door {
            what: format!(
                "variables that look like secrets are in the job's environment: {}",
                secrets.join(", ")
            ),
            fix: "give secrets to the steps that need them (step-level `env:`), or run the \
                  agent step under `egressd exec`, which removes them",
        });
    }
    let privileged: Vec<String> = job
        .groups
        .iter()
        .filter_map(|&g| {
            crate::sandbox::groups::privileged(g).map(|why| {
                let name = crate::sandbox::groups::group_name(g).unwrap_or_else(|| g.to_string());
                format!("{name} ({why})")
            })
        })
        .collect();
    if !privileged.is_empty() {
        doors.push(Door {
            what: format!("the job keeps privileged groups: {}", privileged.join("; ")),
            fix: "the container runtime sockets are closed to the job's user; for other \
                  groups run the agent step under `egressd exec`, which drops them",
        });
    }
    if job.terminal {
        doors.push(Door {
            what: "the job has a terminal, which it can type into (TIOCSTI) where the \
                   kernel allows it"
                .to_owned(),
            fix: "run the agent step under `egressd exec`, which gives it a terminal of its \
                  own, or set dev.tty.legacy_tiocsti=0",
        });
    }
    if job.vsock {
        doors.push(Door {
            what: "AF_VSOCK sockets are available: the job can reach the hypervisor host, \
                   which no firewall on this machine sees"
                .to_owned(),
            fix: "run the agent step under `egressd exec`, whose system-call filter refuses \
                  them",
        });
    }
    if let Some(list) = &job.credentials {
        doors.push(Door {
            what: format!("the job's user can read credentials on disk: {list}"),
            fix: "remove them before the agent runs (`persist-credentials: false` for \
                  actions/checkout), or run the agent under `egressd exec --hide PATH`",
        });
    }
    doors
}

/// The lines `attach --job` prints on stderr, one per door.
pub fn render(doors: &[Door]) -> String {
    doors
        .iter()
        .map(|d| format!("egressd: warning: {}; {}\n", d.what, d.fix))
        .collect()
}

/// `KEY=value` pairs of an `environ` file (NUL-separated); empty when unreadable.
fn environ(path: &Path) -> Vec<(OsString, OsString)> {
    let bytes = std::fs::read(path).unwrap_or_default();
    bytes
        .split(|&b| b == 0)
        .filter_map(|entry| {
            let at = entry.iter().position(|&b| b == b'=')?;
            (at > 0).then(|| {
                (
                    OsString::from_vec(entry[..at].to_vec()),
                    OsString::from_vec(entry[at + 1..].to_vec()),
                )
            })
        })
        .collect()
}

/// The supplementary groups and the primary group (`Groups:` and `Gid:` of a `status`
/// file); empty when unreadable.
fn groups(path: &Path) -> Vec<u32> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut groups: Vec<u32> = text
        .lines()
        .filter_map(|l| {
            l.strip_prefix("Groups:").or_else(|| {
                l.strip_prefix("Gid:")
                    .map(|r| r.split_whitespace().next().unwrap_or(""))
            })
        })
        .flat_map(|rest| rest.split_whitespace().filter_map(|g| g.parse().ok()))
        .collect();
    groups.sort_unstable();
    groups.dedup();
    groups
}

/// Whether the process of a `stat` file has a controlling terminal (`tty_nr`, the 7th
/// field, counted after the command name, which may hold spaces and parentheses).
fn controlling_tty(path: &Path) -> bool {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(4))
        .and_then(|tty| tty.parse::<i64>().ok())
        .is_some_and(|tty| tty != 0)
}

/// Whether this kernel makes `AF_VSOCK` sockets.
fn vsock_available() -> bool {
    // SAFETY: plain system calls; the descriptor is closed at once.
    unsafe {
        let fd = libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return false;
        }
        libc::close(fd);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job::default()
    }

    #[test]
    fn a_clean_job_has_no_doors() {
        assert!(doors(&job()).is_empty());
    }

    #[test]
    fn secret_variables_are_named_without_their_values() {
        let mut j = job();
        j.env = vec![
            ("NPM_TOKEN".into(), "npm_abcdefabcdef".into()),
            ("PATH".into(), "/usr/bin".into()),
            ("MAX_TOKENS".into(), "8192".into()),
            ("SUDO_USER".into(), "runner".into()),
            ("LD_LIBRARY_PATH".into(), "/opt/lib".into()),
            ("GITHUB_TOKEN".into(), "ghs_aaaaaaaaaaaaaaaaaaaa".into()),
        ];
        let text = render(&doors(&j));
        assert!(text.contains("GITHUB_TOKEN, NPM_TOKEN"), "{text}");
        assert!(
            !text.contains("npm_abc") && !text.contains("ghs_"),
            "{text}"
        );
        assert!(
            !text.contains("MAX_TOKENS") && !text.contains("SUDO_USER"),
            "{text}"
        );
        assert!(!text.contains("LD_LIBRARY_PATH"), "not a secret: {text}");
    }

    #[test]
    fn a_terminal_and_vsock_are_doors() {
        let mut j = job();
        j.terminal = true;
        j.vsock = true;
        let d = doors(&j);
        assert_eq!(d.len(), 2);
        assert!(d[0].what.contains("TIOCSTI"));
        assert!(d[1].what.contains("AF_VSOCK"));
    }

    #[test]
    fn group_zero_is_privileged() {
        let mut j = job();
        j.groups = vec![0];
        assert!(doors(&j)[0].what.contains("privileged groups"));
    }

    #[test]
    fn proc_files_are_read_as_the_kernel_writes_them() {
        let dir = std::env::temp_dir().join(format!("egressd-job-doors-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let stat = dir.join("stat");
        std::fs::write(&stat, "42 (a) b (c)) S 1 42 42 34816 42 4194560 0 0").unwrap();
        assert!(controlling_tty(&stat));
        std::fs::write(&stat, "42 (sh) S 1 42 42 0 -1 4194560 0 0").unwrap();
        assert!(!controlling_tty(&stat));
        let status = dir.join("status");
        std::fs::write(
            &status,
            "Name:\tsh\nGid:\t121\t121\t121\t121\nGroups:\t4 24 121 \n",
        )
        .unwrap();
        assert_eq!(groups(&status), vec![4, 24, 121]);
        let env = dir.join("environ");
        std::fs::write(&env, b"A=1\0B=x=y\0=z\0noequals\0").unwrap();
        assert_eq!(
            environ(&env),
            vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
