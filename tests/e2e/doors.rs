//! The doors that are not the network (issue "A sandbox with no side doors"): host Unix
//! sockets (pathname and abstract), the terminal, privileged groups, secrets in the
//! environment and on disk, resource limits. Each test first shows the door open without
//! egressd (the same probe run as the same user outside the sandbox), then closed inside.

use std::os::linux::net::SocketAddrExt as _;
use std::{
    fs,
    os::unix::{fs::PermissionsExt as _, net::UnixListener},
    process::Command,
};

use egressd_tests::{EgressdCommand, Scratch, privileged};

/// `/usr/bin/python3` (the sandbox user cannot reach a pyenv shim under /root).
const PY: &str = "/usr/bin/python3";

/// A Python client: connects to each Unix socket path given (`@name`: abstract) and prints
/// `PATH connected` or `PATH refused ERRNO`; then binds and reaches a socket of its own.
const CONNECT: &str = r#"
import errno, os, socket, sys, tempfile
for p in sys.argv[1:]:
    s = socket.socket(socket.AF_UNIX)
    addr = "\0" + p[1:] if p.startswith("@") else p
    try:
        s.connect(addr); print(p, "connected")
    except OSError as e:
        print(p, "refused", errno.errorcode.get(e.errno, e.errno))
d = tempfile.mkdtemp()
own = os.path.join(d, "own.sock")
srv = socket.socket(socket.AF_UNIX); srv.bind(own); srv.listen()
c = socket.socket(socket.AF_UNIX); c.connect(own); print("own connected")
"#;

/// Runs `argv` as user 65534 outside any sandbox: the door-open control.
fn as_nobody(argv: &[&str]) -> String {
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--",
        ])
        .args(argv)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `script -qec SHELL`: SHELL under a real terminal, with script's stdin kept open and
/// empty (at end-of-file script would type ^D into the terminal). Both pipes are the
/// caller's; dropping stdin ends it. SHELL runs in bash whatever the caller's `$SHELL`
/// (script runs `$SHELL -c`, and dash has no `read -t`).
fn under_terminal(shell: &str) -> std::process::Child {
    Command::new("script")
        .args(["-qec", shell, "/dev/null"])
        .env("SHELL", "/bin/bash")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// [`under_terminal`], run to the end: what the terminal showed.
fn run_under_terminal(shell: &str) -> String {
    let mut child = under_terminal(shell);
    let stdin = child.stdin.take();
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    child.wait().unwrap();
    drop(stdin);
    out
}

/// A listening host socket at `path`, reachable by anyone (mode 0666).
fn host_socket(path: &std::path::Path) -> UnixListener {
    let _ = fs::remove_file(path);
    let l = UnixListener::bind(path).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o666)).unwrap();
    l
}

#[test]
fn host_unix_sockets_are_out_of_reach_unless_allowed() {
    if !privileged() {
        return;
    }
    let scratch = Scratch::new();
    let client = scratch.write("connect.py", CONNECT);
    let in_tmp = scratch.path("service.sock");
    let in_run = std::path::PathBuf::from(format!("/run/egressd-test-{}.sock", std::process::id()));
    let allowed = scratch.path("allowed.sock");
    let _a = host_socket(&in_tmp);
    let _b = host_socket(&in_run);
    let _c = host_socket(&allowed);
    let paths = [
        in_tmp.to_str().unwrap(),
        in_run.to_str().unwrap(),
        allowed.to_str().unwrap(),
    ];
    let mut argv = vec![PY, client.to_str().unwrap()];
    argv.extend(paths);
    // Open without egressd.
    let control = as_nobody(&argv);
    for p in paths {
        assert!(
            control.contains(&format!("{p} connected")),
            "control:\n{control}"
        );
    }
    for netns in ["new", "host"] {
        let out = EgressdCommand::new()
            .netns(netns)
            .args(["--allow-unix", allowed.to_str().unwrap()])
            .command(&argv)
            .run();
        out.assert_success();
        for p in [&in_tmp, &in_run] {
            assert!(
                out.stdout.contains(&format!("{} refused", p.display())),
                "--netns {netns}: {} answered\n{out}",
                p.display()
            );
        }
        assert!(
            out.stdout
                .contains(&format!("{} connected", allowed.display())),
            "--netns {netns}\n{out}"
        );
        assert!(
            out.stdout.contains("own connected"),
            "--netns {netns}: own sockets must work\n{out}"
        );
    }
    let _ = fs::remove_file(&in_run);
}

#[test]
fn host_abstract_sockets_are_out_of_reach_with_the_hosts_network_namespace() {
    if !privileged() {
        return;
    }
    let scratch = Scratch::new();
    let client = scratch.write("connect.py", CONNECT);
    let name = format!("egressd-test-abstract-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let _listener = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    let at = format!("@{name}");
    let argv = [PY, client.to_str().unwrap(), at.as_str()];
    let control = as_nobody(&argv);
    assert!(
        control.contains(&format!("{at} connected")),
        "control:\n{control}"
    );
    for netns in ["host", "new"] {
        let out = EgressdCommand::new().netns(netns).command(argv).run();
        out.assert_success();
        assert!(
            out.stdout.contains(&format!("{at} refused")),
            "--netns {netns}\n{out}"
        );
        assert!(
            out.stdout.contains("own connected"),
            "--netns {netns}\n{out}"
        );
    }
}

#[test]
fn the_sandbox_never_keeps_a_root_equivalent_group() {
    if !privileged() {
        return;
    }
    // `disk` (gid 6 on Debian and Ubuntu) stands for docker, sudo...: a file only it can read.
    let scratch = Scratch::new();
    let file = scratch.write("disk-only", "raw-disk-bytes");
    nix::unistd::chown(
        &file,
        Some(nix::unistd::Uid::from_raw(0)),
        Some(nix::unistd::Gid::from_raw(6)),
    )
    .unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
    let control = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "6", "--clear-groups", "cat"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&control.stdout), "raw-disk-bytes");
    let script = format!("id -g; id -G; cat {} || echo unreadable", file.display());
    for out in [
        EgressdCommand::new().user("65534:6").sh(&script).run(),
        // sudo's primary group (SUDO_GID), as `sudo egressd exec` on a runner gives it.
        EgressdCommand::new()
            .default_user()
            .env("SUDO_UID", "65534")
            .env("SUDO_GID", "6")
            .sh(&script)
            .run(),
    ] {
        out.assert_success();
        assert!(out.stdout.contains("unreadable"), "\n{out}");
        assert!(
            !out.stdout
                .lines()
                .any(|l| l.split_whitespace().any(|g| g == "6")),
            "\n{out}"
        );
        assert!(
            out.stderr.contains("not disk (6)"),
            "the change is said\n{out}"
        );
    }
}

#[test]
fn secret_looking_variables_are_removed_and_named() {
    if !privileged() {
        return;
    }
    let vars = [
        ("NPM_TOKEN", "npm-secret-1"),
        ("CARGO_REGISTRY_TOKEN", "cargo-secret-2"),
        (
            "AZURE_STORAGE_CONNECTION_STRING",
            "DefaultEndpointsProtocol=https;AccountKey=k3",
        ),
        ("MY_SERVICE_API_KEY", "service-secret-4"),
        ("DB_PASSWORD", "db-secret-5"),
        (
            "INNOCENT_LOOKING",
            "ghp_0123456789abcdefABCDEF0123456789abcd",
        ),
        ("KEEP_THIS_TOKEN", "kept-on-purpose"),
        ("PLAIN_SETTING", "plain-value"),
    ];
    // Open without egressd: a command started with this environment sees every value.
    let control = Command::new("env")
        .envs(vars)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap();
    for (k, v) in vars {
        assert!(control.contains(&format!("{k}={v}")), "control: {k}");
    }
    let mut cmd = EgressdCommand::new()
        .args(["--pass-env", "KEEP_THIS_TOKEN"])
        .command(["env"]);
    for (k, v) in vars {
        cmd = cmd.env(k, v);
    }
    let out = cmd.run();
    out.assert_success();
    for (k, v) in &vars[..6] {
        assert!(!out.stdout.contains(v), "{k} reached the sandbox\n{out}");
        assert!(
            out.stderr.contains(k),
            "{k} is not named in the summary\n{out}"
        );
    }
    assert!(
        out.stdout.contains("KEEP_THIS_TOKEN=kept-on-purpose"),
        "\n{out}"
    );
    assert!(out.stderr.contains("passing KEEP_THIS_TOKEN"), "\n{out}");
    assert!(out.stdout.contains("PLAIN_SETTING=plain-value"), "\n{out}");
    for (_, v) in vars {
        assert!(!out.stderr.contains(v), "a value was printed\n{out}");
    }
}

#[test]
fn a_credential_file_the_sandbox_user_can_read_is_refused() {
    if !privileged() {
        return;
    }
    let scratch = Scratch::new();
    let secret = scratch.write("token", "file-secret");
    nix::unistd::chown(&secret, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let config = scratch.write(
        "c.toml",
        format!(
            "[[credential]]\nname = \"k\"\nsource = \"file\"\npath = \"{}\"\n\n[[intercept]]\nhost = \"api.example.com\"\ncredential = \"k\"\n",
            secret.display()
        ),
    );
    // The door: the sandbox user reads it.
    assert_eq!(as_nobody(&["cat", secret.to_str().unwrap()]), "file-secret");
    let out = EgressdCommand::new()
        .arg("-c")
        .arg(&config)
        .command(["true"])
        .run();
    assert_ne!(out.code(), Some(0), "\n{out}");
    assert!(
        out.stderr.contains(secret.to_str().unwrap()),
        "the file is named\n{out}"
    );
    // Owned by root, 0600: accepted.
    nix::unistd::chown(&secret, Some(nix::unistd::Uid::from_raw(0)), None).unwrap();
    let out = EgressdCommand::new()
        .arg("-c")
        .arg(&config)
        .sh(&format!("cat {} || echo unreadable", secret.display()))
        .run();
    out.assert_success();
    assert!(out.stdout.contains("unreadable"), "\n{out}");
}

#[test]
fn readable_credentials_on_disk_are_named_hidden_or_fatal() {
    if !privileged() {
        return;
    }
    let scratch = Scratch::new();
    let git = scratch.path(".git");
    fs::create_dir_all(&git).unwrap();
    fs::set_permissions(&git, fs::Permissions::from_mode(0o755)).unwrap();
    let config = scratch.write(
        ".git/config",
        "[http \"https://github.com/\"]\n\textraheader = AUTHORIZATION: basic eC1hY2Nlc3MtdG9rZW46Z2hzX3NlY3JldA==\n",
    );
    assert!(as_nobody(&["cat", config.to_str().unwrap()]).contains("extraheader"));
    let read = format!(
        "cat {} 2>&1 | head -c 200; echo; echo done",
        config.display()
    );
    let ws = scratch.dir().to_str().unwrap();
    // Named.
    let out = EgressdCommand::new()
        .env("GITHUB_WORKSPACE", ws)
        .sh(&read)
        .run();
    out.assert_success();
    assert!(out.stderr.contains(config.to_str().unwrap()), "\n{out}");
    // Hidden: the file reads empty, and is no longer reported.
    let out = EgressdCommand::new()
        .env("GITHUB_WORKSPACE", ws)
        .args(["--hide", config.to_str().unwrap()])
        .sh(&read)
        .run();
    out.assert_success();
    assert!(!out.stdout.contains("extraheader"), "\n{out}");
    assert!(!out.stderr.contains("can read credentials"), "\n{out}");
    // Fatal on request.
    let out = EgressdCommand::new()
        .env("GITHUB_WORKSPACE", ws)
        .args(["--secrets", "refuse"])
        .sh("echo ran")
        .run();
    assert_ne!(out.code(), Some(0), "\n{out}");
    assert!(!out.stdout.contains("ran"), "\n{out}");
}

#[test]
fn a_fork_bomb_and_a_memory_hog_stay_inside_the_limits() {
    if !privileged() {
        return;
    }
    let scratch = Scratch::new();
    let config = scratch.write("limits.toml", "[limits]\npids = 40\nmemory = \"64M\"\n");
    // Bounded "bomb": 100 sleepers, each printed once started.
    let bomb =
        "i=0; while [ $i -lt 100 ]; do sleep 5 & i=$((i+1)); echo $i; done; echo all-started";
    let control = as_nobody(&["sh", "-c", &format!("{bomb}; kill $(jobs -p) 2>/dev/null")]);
    assert!(control.contains("all-started"), "control:\n{control}");
    let out = EgressdCommand::new().arg("-c").arg(&config).sh(bomb).run();
    assert!(!out.stdout.contains("all-started"), "\n{out}");
    let started: u32 = out
        .stdout
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .max()
        .unwrap_or(0);
    assert!(started < 40, "{started} processes started\n{out}");
    let hog = [
        PY,
        "-c",
        "x = bytearray(256 * 1024 * 1024); x[::4096] = b'x' * len(x[::4096]); print('allocated')",
    ];
    assert!(as_nobody(&hog).contains("allocated"));
    let out = EgressdCommand::new()
        .arg("-c")
        .arg(&config)
        .command(hog)
        .run();
    assert!(!out.stdout.contains("allocated"), "\n{out}");
    assert_eq!(out.code(), Some(128 + 9), "killed by the OOM killer\n{out}");
}

#[test]
fn keystrokes_pushed_with_tiocsti_never_reach_the_invoking_terminal() {
    if !privileged() {
        return;
    }
    let scratch = Scratch::new();
    let inject = scratch.write(
        "inject.py",
        "import fcntl, termios\nfor c in b'echo PWNED\\n':\n    try:\n        fcntl.ioctl(0, termios.TIOCSTI, bytes([c]))\n    except OSError as e:\n        print('tiocsti', e.errno); break\n",
    );
    let egressd = egressd_tests::egressd_bin();
    // Under `script`, stdin is a terminal; after the injector, the invoking shell reads a
    // line from it: that is where pushed keystrokes would run.
    let run =
        |inner: String| run_under_terminal(&format!("{inner}; read -t 2 line; echo \"got:$line\""));
    let control = run(format!(
        "setpriv --reuid 65534 --regid 65534 --clear-groups {PY} {}",
        inject.display()
    ));
    assert!(control.contains("got:echo PWNED"), "control:\n{control}");
    let sandboxed = run(format!(
        "{} exec --user 65534:65534 -- {PY} {}",
        egressd.display(),
        inject.display()
    ));
    assert!(sandboxed.contains("got:"), "\n{sandboxed}");
    assert!(!sandboxed.contains("got:echo PWNED"), "\n{sandboxed}");
}

/// Runs the probe (copied into `scratch`) with `args` as user 65534 outside any sandbox.
fn probe_as_nobody(scratch: &Scratch, args: &[&str]) -> Vec<serde_json::Value> {
    let probe = scratch.install_probe();
    let mut argv = vec![probe.to_str().unwrap()];
    argv.extend(args);
    egressd_tests::parse_json_lines(&as_nobody(&argv))
}

/// The line of `action` among a probe's JSON lines.
fn line<'a>(lines: &'a [serde_json::Value], action: &str) -> &'a serde_json::Value {
    lines
        .iter()
        .find(|l| l["action"] == action)
        .unwrap_or_else(|| panic!("no {action} line in {lines:?}"))
}

#[test]
fn the_default_seccomp_profile_closes_vsock_other_families_keyrings_bpf_and_io_uring() {
    if !privileged() {
        return;
    }
    let scratch = Scratch::new();
    let probe = scratch.install_probe();
    // socket() only: nothing is ever sent to the hypervisor.
    let args = [
        "socket",
        "vsock",
        "socket",
        "packet",
        "socket",
        "alg",
        "socket",
        "inet6",
        "socket",
        "netlink",
        "keyctl",
        "bpf",
        "io-uring-connect",
        "127.0.0.1:9",
    ];
    // Open without egressd: the families exist, the user may use its keyring, io_uring works.
    let control = probe_as_nobody(&scratch, &args);
    // (AF_ALG may be missing from a kernel: it is refused inside either way.)
    for target in ["vsock", "inet6", "netlink"] {
        let l = control
            .iter()
            .find(|l| l["action"] == "socket" && l["target"] == target)
            .unwrap();
        assert_eq!(l["result"], "ok", "control: {l}");
    }
    assert_eq!(
        line(&control, "keyctl")["result"],
        "ok",
        "control: {control:?}"
    );
    assert_ne!(
        line(&control, "io-uring-connect")["code"],
        38,
        "control: {control:?}"
    );

    let mut argv = vec![probe.to_str().unwrap()];
    argv.extend(args);
    let out = EgressdCommand::new().command(&argv).run();
    out.assert_success();
    let lines = egressd_tests::parse_json_lines(&out.stdout);
    let socket = |target: &str| {
        lines
            .iter()
            .find(|l| l["action"] == "socket" && l["target"] == target)
            .unwrap_or_else(|| panic!("no socket {target}\n{out}"))
            .clone()
    };
    for target in ["vsock", "packet", "alg"] {
        assert_eq!(socket(target)["errno"], "EAFNOSUPPORT", "{target}\n{out}");
    }
    for target in ["inet6", "netlink"] {
        assert_eq!(socket(target)["result"], "ok", "{target}\n{out}");
    }
    assert_eq!(line(&lines, "keyctl")["errno"], "EPERM", "\n{out}");
    assert_eq!(line(&lines, "bpf")["errno"], "EPERM", "\n{out}");
    // ENOSYS (38): the probe's errno table has no name for it.
    assert_eq!(line(&lines, "io-uring-connect")["code"], 38, "\n{out}");

    // --seccomp off: the filter was what refused them.
    let out = EgressdCommand::new()
        .args(["--seccomp", "off"])
        .command([probe.to_str().unwrap(), "socket", "vsock"])
        .run();
    assert_eq!(
        line(&egressd_tests::parse_json_lines(&out.stdout), "socket")["result"],
        "ok",
        "\n{out}"
    );
}

#[test]
fn a_docker_seccomp_profile_is_installed_and_a_bad_one_is_refused_with_its_place() {
    if !privileged() {
        return;
    }
    let scratch = Scratch::new();
    let profile = scratch.write(
        "profile.json",
        r#"{
  "defaultAction": "SCMP_ACT_ALLOW",
  "syscalls": [
    { "names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1 }
  ]
}"#,
    );
    // Without the profile the same user makes directories there.
    let made = scratch.path("made-by-nobody");
    fs::set_permissions(scratch.dir(), fs::Permissions::from_mode(0o777)).unwrap();
    as_nobody(&["mkdir", made.to_str().unwrap()]);
    assert!(made.is_dir(), "control: mkdir failed without the profile");
    let out = EgressdCommand::new()
        .arg("--seccomp")
        .arg(&profile)
        .sh("mkdir /tmp/egressd-seccomp-$$ 2>&1 || echo refused")
        .run();
    out.assert_success();
    assert!(out.stdout.contains("refused"), "\n{out}");
    let bad = scratch.write("bad.json", "{\n  \"defaultAction\": \"SCMP_ACT_ALLOW\",\n  \"syscalls\": [ { \"names\": [\"mkdir\"], \"action\": \"SCMP_ACT_NOPE\" } ]\n}\n");
    let out = EgressdCommand::new()
        .arg("--seccomp")
        .arg(&bad)
        .command(["true"])
        .run();
    assert_eq!(out.code(), Some(64), "\n{out}");
    assert!(
        out.stderr.contains(bad.to_str().unwrap()),
        "the file is named\n{out}"
    );
}

#[test]
fn a_host_socket_created_after_the_start_is_refused_in_the_kernel_and_audited() {
    if !privileged() {
        return;
    }
    if !egressd_tests::kernel_at_least(6, 7) {
        // README: before 6.7 only the mount layer applies, and this door stays open.
        eprintln!("kernel before 6.7: no cgroup Unix-socket hooks; nothing to test");
        return;
    }
    // Outside /tmp, /run and the working directory: the kernel hooks' case (the mount layer
    // only covers sockets that exist at the start).
    let dir = std::path::PathBuf::from(format!("/var/lib/egressd-tests-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Remove(dir.clone());
    let socket = dir.join("late.sock");
    let scratch = Scratch::new();
    let client = scratch.write("connect.py", CONNECT);
    let audit = scratch.path("audit.jsonl");
    let script = format!(
        "echo ready; i=0; while [ ! -S {s} ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; {PY} {c} {s}",
        s = socket.display(),
        c = client.display()
    );
    let running = EgressdCommand::new()
        .netns("host")
        .audit_log(&audit)
        .sh(&script)
        .spawn();
    // The socket appears once the sandbox runs (it printed `ready`).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !running.stdout_so_far().contains("ready") {
        assert!(
            std::time::Instant::now() < deadline,
            "the sandbox never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _listener = host_socket(&socket);
    let out = running.wait();
    out.assert_success();
    assert!(
        out.stdout
            .contains(&format!("{} refused EPERM", socket.display())),
        "\n{out}"
    );
    assert!(out.stdout.contains("own connected"), "\n{out}");
    let records = egressd_tests::read_audit(&audit);
    let record = records
        .iter()
        .find(|r| r["proto"] == "unix")
        .unwrap_or_else(|| panic!("no unix record in {records:?}\n{out}"));
    assert_eq!(record["name"], format!("unix:{}", socket.display()));
    assert_eq!(record["decision"], "deny");
    assert_eq!(record["op"], "connect");
    assert_eq!(
        record["suggest"],
        format!("--allow-unix {}", socket.display())
    );
    // The door was open: the same client as the same user outside the sandbox.
    let control = as_nobody(&[PY, client.to_str().unwrap(), socket.to_str().unwrap()]);
    assert!(
        control.contains(&format!("{} connected", socket.display())),
        "control:\n{control}"
    );
}

#[test]
fn a_denial_repeated_in_a_tight_loop_is_coalesced_in_the_audit_log() {
    if !privileged() {
        return;
    }
    let scratch = Scratch::new();
    let audit = scratch.path("audit.jsonl");
    // 200 plain-HTTP requests for a name the allowlist does not cover, as fast as it goes.
    let hammer = scratch.write(
        "hammer.py",
        "import socket\nfor _ in range(200):\n    s = socket.create_connection(('192.0.2.80', 80))\n    s.sendall(b'GET / HTTP/1.1\\r\\nHost: evil.test\\r\\nConnection: close\\r\\n\\r\\n')\n    s.recv(4096)\n    s.close()\nprint('done')\n",
    );
    let out = EgressdCommand::new()
        .audit_log(&audit)
        .command([PY, hammer.to_str().unwrap()])
        .run();
    out.assert_success();
    assert!(out.stdout.contains("done"), "\n{out}");
    assert!(
        out.stderr.contains("200 denied"),
        "the summary counts every one\n{out}"
    );
    let records = egressd_tests::read_audit(&audit);
    let denials: Vec<_> = records
        .iter()
        .filter(|r| r["name"] == "evil.test")
        .collect();
    let total: u64 = denials
        .iter()
        .map(|r| r["repeated"].as_u64().unwrap_or(1))
        .sum();
    assert_eq!(total, 200, "every denial is accounted for\n{out}");
    assert!(
        denials.len() < 100,
        "{} lines for 200 identical denials\n{out}",
        denials.len()
    );
    // `egressd audit` counts a coalesced line for every denial it stands for.
    let report = EgressdCommand::new()
        .subcommand(["audit", "--format", "json"])
        .command([audit.as_os_str()])
        .run();
    let report: serde_json::Value = serde_json::from_str(&report.stdout).unwrap();
    let row = report["domains"]
        .as_array()
        .and_then(|d| d.iter().find(|r| r["domain"] == "evil.test").cloned())
        .unwrap_or_else(|| panic!("{report:#}"));
    assert_eq!(row["denied"], 200, "{row}");
}

#[test]
fn an_interactive_command_gets_a_terminal_of_its_own_with_the_callers_size() {
    if !privileged() {
        return;
    }
    let egressd = egressd_tests::egressd_bin();
    let shell = format!(
        "stty cols 97 rows 31; echo outer=$(stat -c %d $(tty)); {} exec --user 65534:65534 -- sh -c 'echo inner=$(stat -c %d $(tty)); echo size=$(stty size); echo owner=$(stat -c %U $(tty)); echo ptys=$(ls /dev/pts | tr \"\\n\" \" \")'",
        egressd.display()
    );
    let out = run_under_terminal(&shell);
    let value = |key: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no {key} in\n{out}"))
    };
    // The terminal's file system: a devpts instance of the sandbox's own, holding only its
    // terminal (the invoking user's other terminals are not there to open).
    let (outer, inner) = (value("outer="), value("inner="));
    assert_ne!(
        outer, inner,
        "the command's terminal is on the host's devpts\n{out}"
    );
    assert_eq!(value("ptys=").trim(), "0 ptmx", "\n{out}");
    assert_eq!(value("size="), "31 97", "the window size follows\n{out}");
    assert_eq!(
        value("owner="),
        "nobody",
        "the terminal is the command user's\n{out}"
    );
}

#[test]
fn everyday_tools_run_without_unix_socket_noise_and_with_a_private_runtime_dir() {
    if !privileged() {
        return;
    }
    // glibc's user lookups try nscd's socket under /var/run; the sandbox's own runtime
    // directory is made afresh for its user.
    let out = EgressdCommand::new()
        .env("XDG_RUNTIME_DIR", "/run/user/4242")
        .sh("id; getent passwd root >/dev/null; ls -l / >/dev/null; stat -c '%U %a' $XDG_RUNTIME_DIR; touch $XDG_RUNTIME_DIR/lock && echo runtime-writable")
        .run();
    out.assert_success();
    assert!(out.stderr.contains("0 denied"), "\n{out}");
    assert!(out.stdout.contains("nobody 700"), "\n{out}");
    assert!(out.stdout.contains("runtime-writable"), "\n{out}");
}

#[test]
fn the_hosts_shared_memory_is_out_of_reach() {
    if !privileged() {
        return;
    }
    // A SysV segment and a POSIX shared-memory file of the host, readable by anyone.
    let made = Command::new("ipcmk")
        .args(["-M", "4096", "-p", "0644"])
        .output()
        .unwrap();
    let made = String::from_utf8_lossy(&made.stdout).into_owned();
    let id = made
        .split_whitespace()
        .last()
        .and_then(|w| w.parse::<i64>().ok())
        .unwrap_or_else(|| panic!("ipcmk said {made:?}"));
    struct Remove(i64, std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = Command::new("ipcrm")
                .args(["-m", &self.0.to_string()])
                .status();
            let _ = fs::remove_file(&self.1);
        }
    }
    let shm_file =
        std::path::PathBuf::from(format!("/dev/shm/egressd-test-{}", std::process::id()));
    fs::write(&shm_file, "host-shared-bytes").unwrap();
    fs::set_permissions(&shm_file, fs::Permissions::from_mode(0o644)).unwrap();
    let _cleanup = Remove(id, shm_file.clone());
    let script = format!(
        "ipcs -m | awk '{{print $2}}' | grep -qx {id} && echo sysv-visible || echo sysv-hidden; cat {} 2>/dev/null || echo shm-hidden",
        shm_file.display()
    );
    let control = as_nobody(&["sh", "-c", &script]);
    assert!(
        control.contains("sysv-visible") && control.contains("host-shared-bytes"),
        "control:\n{control}"
    );
    let out = EgressdCommand::new().sh(&script).run();
    out.assert_success();
    assert!(out.stdout.contains("sysv-hidden"), "\n{out}");
    assert!(out.stdout.contains("shm-hidden"), "\n{out}");
}

#[test]
fn github_actions_file_commands_are_out_of_reach_unless_allowed() {
    if !privileged() {
        return;
    }
    // A runner's layout: $RUNNER_TEMP/_runner_file_commands/set_env_<id>, writable by the job.
    let scratch = Scratch::new();
    let dir = scratch.path("_runner_file_commands");
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let set_env = dir.join("set_env_42");
    fs::write(&set_env, "").unwrap();
    fs::set_permissions(&set_env, fs::Permissions::from_mode(0o666)).unwrap();
    // What a later step would pick up: NODE_OPTIONS running the agent's code, unsandboxed.
    let script = format!(
        "echo NODE_OPTIONS=--require=/tmp/x.js >> {} 2>/dev/null && echo wrote || echo refused; env | grep -c '^GITHUB_ENV=' || true",
        set_env.display()
    );
    let control = as_nobody(&["sh", "-c", &script]);
    assert!(control.contains("wrote"), "control:\n{control}");
    fs::write(&set_env, "").unwrap();
    let run = |allow: bool| {
        let mut cmd = EgressdCommand::new()
            .env("GITHUB_ENV", &set_env)
            .env("RUNNER_TEMP", scratch.dir());
        if allow {
            let config = scratch.write(
                "allow.toml",
                "[sandbox]\nrunner_file_commands = \"allow\"\n",
            );
            cmd = cmd.arg("-c").arg(config);
        }
        cmd.sh(&script).run()
    };
    let out = run(false);
    out.assert_success();
    assert!(out.stdout.contains("refused"), "\n{out}");
    assert!(
        out.stdout.lines().any(|l| l.trim() == "0"),
        "GITHUB_ENV reached the command\n{out}"
    );
    assert_eq!(
        fs::read_to_string(&set_env).unwrap(),
        "",
        "the file was written"
    );
    assert!(
        out.stderr.contains("_runner_file_commands"),
        "said on stderr\n{out}"
    );
    let out = run(true);
    out.assert_success();
    assert!(out.stdout.contains("wrote"), "allowed on request\n{out}");
}

#[test]
fn ctrl_z_on_the_sandboxs_terminal_does_not_hang_the_run() {
    if !privileged() {
        return;
    }
    use std::io::{Read as _, Write as _};
    let egressd = egressd_tests::egressd_bin();
    let shell = format!(
        "{} exec --user 65534:65534 -- sh -c 'echo ready; sleep 2; echo after-sleep'; echo rc=$?",
        egressd.display()
    );
    let mut child = under_terminal(&shell);
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    // Ctrl-Z once the command runs, then everything until the shell reports egressd's exit.
    let mut sent = false;
    while !seen.contains("rc=") {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(chunk) = rx.recv_timeout(left) else {
            let _ = child.kill();
            panic!("the run hung after Ctrl-Z:\n{seen}");
        };
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if !sent && seen.contains("ready") {
            stdin.write_all(b"\x1a").unwrap();
            stdin.flush().unwrap();
            sent = true;
        }
    }
    drop(stdin);
    child.wait().unwrap();
    reader.join().unwrap();
    assert!(sent, "\n{seen}");
    assert!(seen.contains("after-sleep"), "the command went on\n{seen}");
    assert!(seen.contains("rc=0"), "\n{seen}");
}
