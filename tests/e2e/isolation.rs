//! The sandbox around the command: exit status, environment, user, privileges, processes,
//! interfaces.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    thread,
    time::{Duration, Instant},
};

use egressd_tests::{API, EgressdCommand, Scene, Scratch, privileged};
use nix::{
    sys::signal::{self, Signal},
    unistd::Pid,
};

/// A sandbox with no network policy: these tests only look at the process.
fn sandbox() -> EgressdCommand {
    EgressdCommand::new()
}

#[test]
fn exit_code_of_the_command_is_egressds_exit_code() {
    if !privileged() {
        return;
    }
    let out = sandbox().sh("exit 7").run();
    assert_eq!(out.code(), Some(7), "\n{out}");
}

#[test]
fn command_killed_by_a_signal_gives_128_plus_the_signal() {
    if !privileged() {
        return;
    }
    // The command may be PID 1 of its namespace, which ignores signals sent from inside; so
    // SIGKILL it from here (the host's PID namespace), which always works.
    let running = sandbox().command(["sleep", "30"]).spawn();
    let deadline = Instant::now() + Duration::from_secs(10);
    let sleeper = loop {
        if let Some(pid) = descendants(running.id())
            .into_iter()
            .find(|(_, comm)| comm == "sleep")
        {
            break pid.0;
        }
        assert!(
            Instant::now() < deadline,
            "the sandboxed `sleep` never appeared"
        );
        thread::sleep(Duration::from_millis(20));
    };
    signal::kill(Pid::from_raw(sleeper), Signal::SIGKILL).unwrap();
    let out = running.wait();
    assert_eq!(out.code(), Some(128 + 9), "\n{out}");
}

#[test]
fn credentials_are_scrubbed_from_the_environment() {
    if !privileged() {
        return;
    }
    let out = sandbox()
        .env("GITHUB_TOKEN", "x-github-token")
        .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "y-oidc-request-token")
        .env("ACTIONS_ID_TOKEN_REQUEST_URL", "http://192.0.2.5/oidc")
        .env("COPILOT_GITHUB_TOKEN", "z-copilot-token")
        .command(["env"])
        .run();
    out.assert_success();
    assert!(
        out.stdout.contains("PATH="),
        "`env` printed nothing useful\n{out}"
    );
    for secret in [
        "GITHUB_TOKEN=",
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN=",
        "ACTIONS_ID_TOKEN_REQUEST_URL=",
        "COPILOT_GITHUB_TOKEN=",
    ] {
        assert!(
            !out.stdout.lines().any(|l| l.starts_with(secret)),
            "{secret} reached the sandbox\n{out}"
        );
    }
    for value in ["x-github-token", "y-oidc-request-token", "z-copilot-token"] {
        assert!(
            !out.stdout.contains(value),
            "a secret value reached the sandbox\n{out}"
        );
    }
}

#[test]
fn command_runs_as_the_given_user_with_no_new_privs() {
    if !privileged() {
        return;
    }
    let out = sandbox()
        .user("65534:65534")
        .sh("id -u; id -g; grep '^NoNewPrivs:' /proc/self/status")
        .run();
    out.assert_success();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"65534"), "\n{out}");
    assert_eq!(lines.get(1), Some(&"65534"), "\n{out}");
    assert_eq!(
        lines
            .get(2)
            .map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["NoNewPrivs:", "1"]),
        "\n{out}"
    );
}

#[test]
fn setuid_root_binary_does_not_give_back_root() {
    if !privileged() {
        return;
    }
    let scratch = Scratch::new();
    let flags = nix::sys::statvfs::statvfs(scratch.dir()).unwrap().flags();
    if flags.contains(nix::sys::statvfs::FsFlags::ST_NOSUID) {
        // The check would pass for the wrong reason; NoNewPrivs is still checked above.
        eprintln!("skipping: {} is mounted nosuid", scratch.dir().display());
        return;
    }
    let id = scratch.path("id-setuid");
    fs::copy("/usr/bin/id", &id).expect("copying /usr/bin/id");
    fs::set_permissions(&id, fs::Permissions::from_mode(0o4755)).unwrap();
    let out = sandbox()
        .user("65534:65534")
        .command([id.display().to_string(), "-u".into()])
        .run();
    out.assert_success();
    assert_eq!(
        out.stdout.trim(),
        "65534",
        "a setuid-root binary ran as root in the sandbox\n{out}"
    );
}

#[test]
fn root_in_the_sandbox_is_refused_without_allow_root() {
    if !privileged() {
        return;
    }
    let scratch = Scratch::new();
    let marker = scratch.path("ran");
    let out = sandbox()
        .user("0:0")
        .sh(&format!("touch {}", marker.display()))
        .run();
    assert_eq!(
        out.code(),
        Some(64),
        "root without --allow-root is a usage error\n{out}"
    );
    assert!(!marker.exists(), "the command ran as root anyway\n{out}");
}

#[test]
fn sandbox_cannot_see_host_processes() {
    if !privileged() {
        return;
    }
    let out = sandbox()
        .sh("echo $$; ls /proc | grep -c '^[0-9][0-9]*$'")
        .run();
    out.assert_success();
    let mut lines = out
        .stdout
        .lines()
        .map(|l| l.trim().parse::<u32>().unwrap_or(u32::MAX));
    let (pid, count) = (
        lines.next().unwrap_or(u32::MAX),
        lines.next().unwrap_or(u32::MAX),
    );
    assert!(
        pid <= 3,
        "the shell's pid is {pid}: no new PID namespace?\n{out}"
    );
    assert!(
        count <= 10,
        "the sandbox sees {count} processes in /proc\n{out}"
    );
}

#[test]
fn sandbox_network_namespace_has_only_loopback() {
    if !privileged() {
        return;
    }
    // /proc/net/dev is the reading process's own netns.
    let out = sandbox().command(["cat", "/proc/net/dev"]).run();
    out.assert_success();
    let ifaces: Vec<&str> = out
        .stdout
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(ifaces, ["lo"], "\n{out}");
}

/// `(pid, comm)` of every process below `root` (pids as the host sees them).
fn descendants(root: u32) -> Vec<(i32, String)> {
    let procs: Vec<(i32, i32, String)> = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // pid (comm) state ppid ...; comm may contain spaces and parentheses.
            let (head, tail) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1.to_owned();
            let ppid = tail.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid, comm))
        })
        .collect();
    let mut found = vec![i32::try_from(root).unwrap()];
    let mut out = Vec::new();
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        for (pid, ppid, comm) in &procs {
            if *ppid == parent && !found.contains(pid) {
                found.push(*pid);
                out.push((*pid, comm.clone()));
            }
        }
        i += 1;
    }
    out
}

#[test]
fn sigterm_to_egressd_reaches_the_command_and_cleanup_follows() {
    if !privileged() {
        return;
    }
    use std::io::{BufRead as _, BufReader, Read as _};
    let argv = sandbox()
        .sh("trap 'echo got-term; exit 42' TERM; echo ready; while :; do sleep 0.05; done")
        .argv();
    let mut child = std::process::Command::new(egressd_tests::egressd_bin())
        .args(&argv)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting egressd");
    let pid = child.id();
    let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("reading the first line");
    assert_eq!(line, "ready\n");
    let cgroup = sandbox_cgroup(pid);
    assert!(
        cgroup.is_dir(),
        "the sandbox cgroup {} should exist",
        cgroup.display()
    );

    signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    let status = child.wait().expect("waiting for egressd");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "got-term\n", "the command did not get SIGTERM");
    assert_eq!(
        status.code(),
        Some(42),
        "egressd should exit with the command's code"
    );
    assert!(
        !cgroup.exists(),
        "the sandbox cgroup {} was left behind",
        cgroup.display()
    );
}

/// `<cgroup2 mount>/egressd/egressd-<pid>`, where egressd keeps a sandbox's cgroup.
fn sandbox_cgroup(egressd_pid: u32) -> std::path::PathBuf {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mount = info
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(str::to_owned))?
        })
        .expect("a cgroup2 mount");
    std::path::Path::new(&mount)
        .join("egressd")
        .join(format!("egressd-{egressd_pid}"))
}

/// Issue 9, least privilege: once the sandbox runs, every thread of the egressd that runs it
/// holds only `CAP_KILL` (to signal the sandbox), not the capabilities it set up with.
#[test]
fn egressd_drops_its_capabilities_once_the_sandbox_runs() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let flags = s.scratch.path("flags");
    fs::create_dir_all(&flags).unwrap();
    fs::set_permissions(&flags, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let started = flags.join("started");
    let running = s
        .egressd()
        .allow(API)
        .sh(&format!("touch {}; sleep 3", started.display()))
        .spawn();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !started.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the sandbox never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let mut threads = Vec::new();
    for task in fs::read_dir(format!("/proc/{}/task", running.id())).unwrap() {
        let status = fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
                .unwrap()
        };
        threads.push((field("CapEff:"), field("CapPrm:"), field("CapBnd:")));
    }
    let out = running.wait();
    out.assert_success();
    const CAP_KILL: u64 = 1 << 5;
    assert!(threads.len() >= 3, "{threads:?}");
    for (eff, prm, bnd) in &threads {
        assert_eq!(
            (*eff, *prm, *bnd),
            (CAP_KILL, CAP_KILL, CAP_KILL),
            "a thread kept capabilities: {threads:x?}"
        );
    }
}
