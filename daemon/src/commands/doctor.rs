//! `egressd doctor`: checks what this host offers egressd (kernel, BTF, cgroup v2, bpffs,
//! privileges, nftables, network namespaces), loads the kernel programs through the verifier,
//! and says which backend `exec --backend auto` will use and why.

use std::fmt::Write as _;

use serde::Serialize;

use crate::{Failure, cli::DoctorArgs, loader::Loader, sandbox};

/// One check.
#[derive(Debug, Serialize)]
struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

/// The report.
#[derive(Debug, Serialize)]
struct Report {
    checks: Vec<Check>,
    backend: Option<&'static str>,
    reason: String,
}

/// Runs `egressd doctor`; exit 0 when a backend is usable, 1 otherwise.
pub fn run(args: &DoctorArgs) -> Result<u8, Failure> {
    let report = examine();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", render(&report));
    }
    Ok(u8::from(report.backend.is_none()))
}

fn examine() -> Report {
    let mut checks = Vec::new();
    let mut check = |name, result: Result<String, String>| {
        let ok = result.is_ok();
        let detail = result.unwrap_or_else(|e| e);
        checks.push(Check { name, ok, detail });
        ok
    };
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    check("kernel", kernel_ok(&release));
    check(
        "btf",
        if std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
            Ok("/sys/kernel/btf/vmlinux".to_owned())
        } else {
            Err(
                "no /sys/kernel/btf/vmlinux (kernel built without CONFIG_DEBUG_INFO_BTF)"
                    .to_owned(),
            )
        },
    );
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let cgroup2 = check(
        "cgroup2",
        mount_of(&mountinfo, "cgroup2").ok_or_else(|| {
            "no cgroup2 mount visible (egressd mounts its own at /run/egressd/cgroup2 when it can)"
                .to_owned()
        }),
    );
    check(
        "bpffs",
        mount_of(&mountinfo, "bpf").ok_or_else(|| {
            "no bpffs mounted (the daemon mounts /sys/fs/bpf to pin its links)".to_owned()
        }),
    );
    let root = check("privileges", privileges());
    let netns = check("netns", netns_ok());
    let loaded = (root && cgroup2).then(Loader::load);
    let ebpf = match &loaded {
        Some(result) => check(
            "ebpf-load",
            result
                .as_ref()
                .map(|l| format!("{} programs verified and loaded", l.programs().len()))
                .map_err(|e| format!("{e:#}")),
        ),
        None => false,
    };
    check(
        "unix-hooks",
        match &loaded {
            Some(Ok(loader)) => loader
                .unix_hooks()
                .map(|()| {
                    "connect_unix/sendmsg_unix: host Unix sockets outside allow_unix are refused and audited"
                        .to_owned()
                })
                .map_err(|why| format!("{why}: only the mount layer keeps host Unix sockets out")),
            _ => Err("the eBPF programs did not load: only the mount layer keeps host Unix sockets out".to_owned()),
        },
    );
    check(
        "relay",
        match &loaded {
            Some(Ok(loader)) => loader
                .kernel_relay()
                .map(|_| {
                    "in the kernel (sockmap stream verdict): allowed TLS pass-through bytes never \
                     wake the proxy; loopback destinations and --relay splice use splice(2)"
                        .to_owned()
                })
                .map_err(|why| format!("{why}: pass-through relays with splice(2)")),
            _ => {
                Err("the eBPF programs did not load: pass-through relays with splice(2)".to_owned())
            }
        },
    );
    check(
        "seccomp",
        match sandbox::seccomp::compile(&sandbox::seccomp::Profile::Default) {
            Ok(Some(p)) => Ok(format!(
                "default profile: {} BPF instructions",
                p.instructions()
            )),
            Ok(None) => Err("no default profile".to_owned()),
            Err(e) => Err(format!(
                "{e}: the command runs without a system-call filter"
            )),
        },
    );
    let nft = check("nftables", sandbox::nft::available());
    // The layers beyond the network (they never decide the backend).
    check(
        "landlock",
        if sandbox::confine::landlock_scopes_abstract() {
            Ok("abstract Unix sockets are scoped to the sandbox (Landlock ABI 6+)".to_owned())
        } else {
            Err(
                "Landlock cannot scope abstract Unix sockets here (Linux 6.12+): with \
                 --netns host the eBPF Unix hooks refuse them instead, or they stay open"
                    .to_owned(),
            )
        },
    );
    check(
        "pty",
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/ptmx")
            .map(|_| "a terminal on egressd's stdio is relayed through a new pseudo-terminal".to_owned())
            .map_err(|e| format!("/dev/ptmx: {e}: the sandbox gets no terminal of its own (setsid still keeps it off egressd's)")),
    );
    check("limits", limits_available(&mountinfo));
    check(
        "groups",
        Ok(format!(
            "never kept by the sandbox: {}",
            sandbox::groups::privileged_here().join(", ")
        )),
    );
    check(
        "mounts",
        Ok(
            "private /run, host Unix sockets covered, --hide paths masked (every kernel)"
                .to_owned(),
        ),
    );
    let (backend, reason) = if ebpf {
        (
            Some("ebpf"),
            "cgroup BPF works: every backend feature is available".to_owned(),
        )
    } else if nft && netns && root {
        (
            Some("nftables"),
            "cgroup BPF is not usable; nftables firewalls the sandbox's own namespace \
             (`--netns new` only; `egressd run` needs eBPF)"
                .to_owned(),
        )
    } else {
        (
            None,
            "neither cgroup BPF nor nftables is usable: see the failed checks".to_owned(),
        )
    };
    Report {
        checks,
        backend,
        reason,
    }
}

fn render(report: &Report) -> String {
    let mut out = String::new();
    for c in &report.checks {
        let _ = writeln!(
            out,
            "{:<5} {:<11} {}",
            if c.ok { "ok" } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    let _ = writeln!(
        out,
        "\nbackend: {} ({})",
        report.backend.unwrap_or("none"),
        report.reason
    );
    out
}

/// Kernels from 5.15 have every hook egressd uses (BPF links, sockops, cgroup sock_addr
/// hooks for getpeername and recvmsg, `SO_NETNS_COOKIE`).
fn kernel_ok(release: &str) -> Result<String, String> {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if version >= (5, 15) {
        Ok(release.to_owned())
    } else {
        Err(format!(
            "{release}: egressd's eBPF backend needs Linux 5.15 or newer"
        ))
    }
}

/// Where `pids.max` and `memory.max` can be set: cgroup v2 controllers, or v1 hierarchies.
fn limits_available(mountinfo: &str) -> Result<String, String> {
    let v2 = mount_of(mountinfo, "cgroup2")
        .and_then(|m| std::fs::read_to_string(format!("{m}/cgroup.controllers")).ok())
        .unwrap_or_default();
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for c in ["pids", "memory"] {
        if v2.split_whitespace().any(|x| x == c) {
            found.push(format!("{c} (cgroup v2)"));
        } else if sandbox::limits::v1_mount(c).is_some() {
            found.push(format!("{c} (cgroup v1)"));
        } else {
            missing.push(c);
        }
    }
    if missing.is_empty() {
        Ok(format!("sandbox resource limits: {}", found.join(", ")))
    } else {
        Err(format!(
            "no {} controller: the sandbox runs without that limit",
            missing.join(" or ")
        ))
    }
}

/// The first mount point of file system type `fstype` in a mountinfo text.
fn mount_of(mountinfo: &str, fstype: &str) -> Option<String> {
    mountinfo.lines().find_map(|line| {
        let (fields, rest) = line.split_once(" - ")?;
        (rest.split_whitespace().next()? == fstype)
            .then(|| fields.split_whitespace().nth(4).map(str::to_owned))?
    })
}

/// Root, or the capabilities egressd uses (`CapEff` in /proc/self/status).
fn privileges() -> Result<String, String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let needed = [
        (21, "CAP_SYS_ADMIN"),
        (12, "CAP_NET_ADMIN"),
        (39, "CAP_BPF"),
        (38, "CAP_PERFMON"),
    ];
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(bit, _)| eff & (1u64 << bit) == 0)
        .map(|(_, name)| *name)
        .collect();
    if missing.is_empty() && nix::unistd::geteuid().is_root() {
        Ok("root with CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF, CAP_PERFMON".to_owned())
    } else if missing.is_empty() {
        Ok("not root, but with the capabilities egressd needs".to_owned())
    } else {
        Err(format!(
            "missing {} (run egressd with sudo)",
            missing.join(", ")
        ))
    }
}

/// Whether a network namespace can be created (in a thread, which then ends).
fn netns_ok() -> Result<String, String> {
    std::thread::spawn(|| nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET))
        .join()
        .map_err(|_| "the check panicked".to_owned())?
        .map(|()| "network namespaces can be created".to_owned())
        .map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions() {
        assert!(kernel_ok("6.18.44-fc-v595").is_ok());
        assert!(kernel_ok("5.15.0-1051-azure").is_ok());
        assert!(kernel_ok("5.4.0-150-generic").is_err());
    }

    #[test]
    fn mounts() {
        let info = "40 22 0:33 / /sys/fs/bpf rw - bpf bpf rw\n27 25 0:24 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(mount_of(info, "bpf").as_deref(), Some("/sys/fs/bpf"));
        assert_eq!(mount_of(info, "cgroup2").as_deref(), Some("/sys/fs/cgroup"));
        assert_eq!(mount_of(info, "tmpfs"), None);
    }
}
