//! `egressd run` and its control commands: a daemon firewalls cgroups it is told about
//! (`attach --cgroup`, `--pid`, `--job`), lets them go (`detach`), and swaps its policy on
//! `reload` or SIGHUP, keeping the old one when the new file is bad.
//!
//! The "job" processes live in a test cgroup and in the scene's upstream namespace, which
//! has no route out: before an attach (and after a detach) their connections to the TEST-NET
//! address fail with "network unreachable", never reaching anything.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use egressd_tests::{
    API, EVIL, EgressdCommand, Output, Running, Scene, privileged, read_audit, shell_words,
};
use serde_json::Value;

/// A cgroup made for one test under `<cgroup2>/egressd-tests/`; emptied and removed on drop.
pub(crate) struct TestCgroup {
    pub(crate) path: PathBuf,
}

impl TestCgroup {
    pub(crate) fn new(tag: &str) -> Self {
        let path = cgroup2_root()
            .join("egressd-tests")
            .join(format!("{tag}-{}", std::process::id()));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self { path }
    }

    pub(crate) fn procs(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = fs::write(self.path.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::read_to_string(self.procs()).is_ok_and(|s| !s.trim().is_empty())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = fs::remove_dir(&self.path);
    }
}

fn cgroup2_root() -> PathBuf {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .expect("a cgroup2 mount")
}

/// A running `egressd run`; stopped with SIGTERM by [`Daemon::stop`].
pub(crate) struct Daemon {
    running: Option<Running>,
    socket: PathBuf,
}

impl Daemon {
    /// Starts `cmd` (an `egressd run` command) and waits until its control socket answers.
    pub(crate) fn start(cmd: &EgressdCommand, socket: &Path) -> Self {
        let running = cmd
            .clone()
            .arg("--control-socket")
            .arg(socket)
            .timeout(Duration::from_secs(120))
            .spawn();
        let daemon = Self {
            running: Some(running),
            socket: socket.to_path_buf(),
        };
        let ready = daemon.control(&["status", "--wait", "30"]);
        assert!(ready.status.success(), "the daemon never answered\n{ready}");
        daemon
    }

    fn pid(&self) -> u32 {
        self.running.as_ref().expect("running").id()
    }

    /// `egressd <words> --control-socket SOCKET`.
    pub(crate) fn control(&self, words: &[&str]) -> Output {
        EgressdCommand::new()
            .subcommand(words)
            .arg("--control-socket")
            .arg(&self.socket)
            .run()
    }

    /// `attach --cgroup CGROUP --netns <the scene's namespace> [--name NAME]`.
    fn attach_in_scene(&self, s: &Scene, cgroup: &TestCgroup, name: Option<&str>) -> Output {
        let netns = s.net.netns_path();
        let mut words = vec![
            "attach",
            "--cgroup",
            cgroup.path.to_str().unwrap(),
            "--netns",
            netns.to_str().unwrap(),
        ];
        if let Some(name) = name {
            words.extend(["--name", name]);
        }
        self.control(&words)
    }

    /// The daemon's state (`status --json`).
    pub(crate) fn status(&self) -> Value {
        let out = self.control(&["status", "--json"]);
        out.assert_success();
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("status JSON: {e}\n{out}"))
    }

    /// SIGTERM, then everything it printed.
    pub(crate) fn stop(mut self) -> Output {
        let running = self.running.take().expect("running");
        signal(running.id(), "TERM");
        running.wait()
    }
}

impl Daemon {
    /// SIGKILL: the daemon gets no chance to clean up.
    fn kill(mut self) {
        let running = self.running.take().expect("running");
        signal(running.id(), "KILL");
        let _ = running.wait();
    }
}

impl Drop for Daemon {
    /// A test that ends without [`Daemon::stop`] still stops it cleanly (its pinned links
    /// are removed).
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            signal(running.id(), "TERM");
            let _ = running.wait();
        }
    }
}

/// `(CapEff, CapPrm, CapBnd)` of every thread of `pid`.
fn thread_caps(pid: u32) -> Vec<(u64, u64, u64)> {
    let mut threads = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(status) = fs::read_to_string(task.unwrap().path().join("status")) else {
            continue; // the thread ended meanwhile
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
                .unwrap()
        };
        threads.push((field("CapEff:"), field("CapPrm:"), field("CapBnd:")));
    }
    threads
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// `egressd run` with the scene's names resolved to its upstreams and its audit log.
pub(crate) fn run_command(s: &Scene) -> EgressdCommand {
    EgressdCommand::new()
        .subcommand(["run"])
        .resolve(API, s.net.addr())
        .resolve(EVIL, s.net.addr2())
        .audit_log(&s.audit_log)
}

/// Runs `argv` as root in `cgroup` and in the scene's upstream namespace (no route out).
/// Through bash, which (unlike dash) passes on variables such as `INPUT_ALLOW-DOMAINS`.
fn job_command(s: &Scene, cgroup: &TestCgroup, argv: &[String]) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!(
            "echo $$ > {} && exec ip netns exec {} \"$@\"",
            cgroup.procs().display(),
            s.net.name()
        ))
        .arg("sh")
        .args(argv);
    cmd
}

/// Runs `argv` in the job (see [`job_command`]); returns (exit code, stdout, stderr).
pub(crate) fn in_job(s: &Scene, cgroup: &TestCgroup, argv: &[String]) -> (i32, String, String) {
    let out = job_command(s, cgroup, argv)
        .output()
        .expect("running the job command");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// curl of `https://NAME/` dialled at a TEST-NET address, as the job would.
pub(crate) fn curl(s: &Scene, name: &str) -> Vec<String> {
    s.curl_https(name, "192.0.2.10")
}

pub(crate) fn hello(name: &str) -> String {
    format!("hello from {name} via {name}")
}

#[test]
fn attach_a_cgroup_by_path_then_detach_it() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let cgroup = TestCgroup::new("by-path");
    let daemon = Daemon::start(&run_command(&s).allow(API), &s.scratch.path("ctl.sock"));

    // Not attached yet: the namespace has no route to the TEST-NET address.
    let (code, _, err) = in_job(&s, &cgroup, &curl(&s, API));
    assert_ne!(code, 0, "curl must fail before the attach: {err}");

    let attached = daemon.attach_in_scene(&s, &cgroup, Some("ci-job"));
    attached.assert_success();
    assert!(attached.stdout.contains("attached ci-job"), "{attached}");
    let status = daemon.status();
    assert_eq!(status["status"]["attachments"][0]["name"], "ci-job");
    assert_eq!(
        status["status"]["attachments"][0]["cgroup"],
        cgroup.path.display().to_string()
    );

    let (code, out, err) = in_job(&s, &cgroup, &curl(&s, API));
    assert_eq!((code, out.as_str()), (0, hello(API).as_str()), "{err}");
    let (code, out, _) = in_job(&s, &cgroup, &curl(&s, EVIL));
    assert_ne!(code, 0, "EVIL must be refused, got {out}");

    // Least privilege: the attach above ran after the daemon dropped every capability it
    // does not need, in every thread (the proxy's included) and in the bounding set.
    const KEEP: u64 = 1 << 21 // CAP_SYS_ADMIN
        | 1 << 39 // CAP_BPF
        | 1 << 38 // CAP_PERFMON
        | 1 << 12 // CAP_NET_ADMIN
        | 1 << 10 // CAP_NET_BIND_SERVICE
        | 1 << 19 // CAP_SYS_PTRACE
        | 1 << 1 // CAP_DAC_OVERRIDE
        | 1 << 2 // CAP_DAC_READ_SEARCH
        | 1 << 14; // CAP_IPC_LOCK
    let threads = thread_caps(daemon.pid());
    assert!(threads.len() >= 3, "{threads:x?}");
    for caps in &threads {
        assert_eq!(
            *caps,
            (KEEP, KEEP, KEEP),
            "a thread kept more: {threads:x?}"
        );
    }

    let detached = daemon.control(&["detach", "ci-job"]);
    detached.assert_success();
    let (code, out, err) = in_job(&s, &cgroup, &curl(&s, API));
    assert_ne!(
        code, 0,
        "after detach the job is on its own again: {out} {err}"
    );
    assert_eq!(
        s.api.connections(),
        1,
        "only the attached run reached the upstream"
    );

    let stopped = daemon.stop();
    assert!(stopped.status.success(), "{stopped}");
    let records = read_audit(&s.audit_log);
    let of = |event: &str| {
        records
            .iter()
            .filter(|r| r["event"] == event && r["sandbox"] == "ci-job")
            .count()
    };
    assert_eq!((of("arm"), of("disarm")), (1, 1), "{stopped}");
    let allowed = records
        .iter()
        .find(|r| r["name"] == API && r["decision"] == "allow" && r["sandbox"] == "ci-job");
    // The daemon hands an attached job's TLS pass-through to the in-kernel relay too.
    assert_eq!(
        allowed.map(|r| r["relay"].clone()),
        Some(serde_json::json!("kernel")),
        "{stopped}"
    );
    let allowed = allowed.is_some();
    let denied = records
        .iter()
        .find(|r| r["name"] == EVIL && r["decision"] == "deny")
        .unwrap_or_else(|| panic!("no denial of {EVIL}\n{stopped}"));
    assert!(allowed, "{stopped}");
    assert_eq!(denied["sandbox"], "ci-job");
    assert!(
        denied["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{denied}"
    );
}

#[test]
fn a_pod_attached_at_its_pod_cgroup_covers_containers_created_below_it_later() {
    if !privileged() {
        return;
    }
    // A Kubernetes node's layout (systemd driver): the pod's cgroup, and its containers'
    // cgroups below it, which the runtime creates after the pod is attached.
    let s = Scene::new();
    let kubepods = TestCgroup::new("kubepods.slice");
    let pod = kubepods
        .path
        .join("kubepods-burstable.slice")
        .join("kubepods-burstable-pod0b6f2c1e_4d7a_4c2b_9f3e_2a1b3c4d5e6f.slice");
    fs::create_dir_all(&pod).unwrap();
    let pod = TestCgroup { path: pod };
    let daemon = Daemon::start(&run_command(&s).allow(API), &s.scratch.path("ctl.sock"));
    let attached = daemon.attach_in_scene(&s, &pod, Some("runner-pod"));
    attached.assert_success();

    let container = TestCgroup {
        path: pod.path.join("cri-containerd-4f1c2a.scope"),
    };
    fs::create_dir_all(&container.path).unwrap();
    let (code, out, err) = in_job(&s, &container, &curl(&s, API));
    assert_eq!(
        (code, out.as_str()),
        (0, hello(API).as_str()),
        "a container below the pod goes through the pod's proxy: {err}"
    );
    let (code, out, _) = in_job(&s, &container, &curl(&s, EVIL));
    assert_ne!(code, 0, "EVIL must be refused, got {out}");

    // Control: the same container once the pod is detached is not redirected (its namespace
    // has no route to the TEST-NET address, so curl fails without egressd).
    daemon.control(&["detach", "runner-pod"]).assert_success();
    let (code, _, _) = in_job(&s, &container, &curl(&s, API));
    assert_ne!(code, 0, "after detach nothing redirects the container");
    drop(container);
    let stopped = daemon.stop();
    let records = read_audit(&s.audit_log);
    let denied = records
        .iter()
        .find(|r| r["name"] == EVIL && r["decision"] == "deny")
        .unwrap_or_else(|| panic!("no denial of {EVIL}\n{stopped}"));
    assert_eq!(denied["sandbox"], "runner-pod", "{denied}");
    drop(pod);
    let _ = fs::remove_dir(kubepods.path.join("kubepods-burstable.slice"));
}

#[test]
fn attach_by_pid_covers_a_process_that_is_already_running() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let cgroup = TestCgroup::new("by-pid");
    let daemon = Daemon::start(&run_command(&s).allow(API), &s.scratch.path("ctl.sock"));

    // A process already running in the cgroup and namespace: it waits for a line, then curls.
    let script = format!("read go; {}", shell_words(&curl(&s, API)));
    let mut job: Child = job_command(&s, &cgroup, &["sh".into(), "-c".into(), script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the job");
    let pid = job.id().to_string();
    // `ip netns exec` replaces itself with the shell: wait until the pid is in the namespace.
    let want = fs::metadata(s.net.netns_path()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| {
        use std::os::unix::fs::MetadataExt as _;
        m.ino() == want.ino()
    }) {
        assert!(
            Instant::now() < deadline,
            "the job never entered the namespace"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    let attached = daemon.control(&["attach", "--pid", &pid]);
    attached.assert_success();
    assert!(
        attached.stdout.contains(&format!("attached pid-{pid}")),
        "{attached}"
    );

    job.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = job.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        hello(API),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    daemon.control(&["detach", "--all"]).assert_success();
    assert_eq!(
        daemon.status()["status"]["attachments"],
        Value::Array(vec![])
    );
}

#[test]
fn job_mode_covers_later_steps_and_the_daemon_leaves_the_job_cgroup() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let cgroup = TestCgroup::new("job");
    let socket = s.scratch.path("ctl.sock");
    // The daemon starts the way a workflow step starts it: inside the job's cgroup.
    let daemon = Daemon::start(
        &run_command(&s).allow(API).wrapped_in([
            "sh",
            "-c",
            &format!("echo $$ > {} && exec \"$@\"", cgroup.procs().display()),
            "sh",
        ]),
        &socket,
    );
    let daemon_cgroup = || fs::read_to_string(format!("/proc/{}/cgroup", daemon.pid())).unwrap();
    let job_rel = cgroup
        .path
        .strip_prefix(cgroup2_root())
        .unwrap()
        .display()
        .to_string();
    assert!(daemon_cgroup().contains(&job_rel), "{}", daemon_cgroup());

    // One step attaches the job; the next step (a new process) is covered.
    let egressd = egressd_tests::egressd_bin().display().to_string();
    let step1 = in_job(
        &s,
        &cgroup,
        &[
            egressd.clone(),
            "attach".into(),
            "--job".into(),
            "--control-socket".into(),
            socket.display().to_string(),
        ],
    );
    assert_eq!(step1.0, 0, "attach --job failed: {} {}", step1.1, step1.2);
    assert!(step1.1.contains("attached job"), "{}", step1.1);
    assert!(
        !daemon_cgroup().contains(&job_rel),
        "the daemon must leave the job's cgroup: {}",
        daemon_cgroup()
    );

    let (code, out, err) = in_job(&s, &cgroup, &curl(&s, API));
    assert_eq!((code, out.as_str()), (0, hello(API).as_str()), "{err}");
    let (code, _, _) = in_job(&s, &cgroup, &curl(&s, EVIL));
    assert_ne!(code, 0);
    let stopped = daemon.stop();
    assert!(
        stopped.stderr.contains("moved the daemon out of"),
        "{stopped}"
    );
    let records = read_audit(&s.audit_log);
    assert!(
        records
            .iter()
            .any(|r| r["sandbox"] == "job" && r["name"] == EVIL && r["decision"] == "deny"),
        "{stopped}"
    );
}

#[test]
fn reload_swaps_the_policy_and_a_bad_file_keeps_the_old_one() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let cgroup = TestCgroup::new("reload");
    let config = s
        .scratch
        .write("egressd.toml", format!("allow_domains = [\"{API}\"]\n"));
    let daemon = Daemon::start(
        &run_command(&s).arg("--config").arg(&config),
        &s.scratch.path("ctl.sock"),
    );
    daemon.attach_in_scene(&s, &cgroup, None).assert_success();
    let (code, _, _) = in_job(&s, &cgroup, &curl(&s, EVIL));
    assert_ne!(code, 0, "EVIL is not allowed yet");

    // A new policy through the control socket.
    fs::write(
        &config,
        format!("allow_domains = [\"{API}\", \"{EVIL}\"]\n"),
    )
    .unwrap();
    let reloaded = daemon.control(&["reload"]);
    reloaded.assert_success();
    assert!(
        reloaded.stdout.contains("reloaded: 2 policy entries"),
        "{reloaded}"
    );
    let (code, out, err) = in_job(&s, &cgroup, &curl(&s, EVIL));
    assert_eq!((code, out.as_str()), (0, hello(EVIL).as_str()), "{err}");

    // A broken file: refused with its location, the running policy stays.
    fs::write(&config, "allow_domains = [\"unterminated\n").unwrap();
    let refused = daemon.control(&["reload"]);
    assert_eq!(refused.code(), Some(1), "{refused}");
    assert!(
        refused.stderr.contains("egressd.toml:1"),
        "the error names file:line\n{refused}"
    );
    let status = daemon.status();
    assert!(
        status["status"]["last_reload_error"]
            .as_str()
            .is_some_and(|e| e.contains("egressd.toml:1")),
        "{status}"
    );
    let (code, out, err) = in_job(&s, &cgroup, &curl(&s, EVIL));
    assert_eq!((code, out.as_str()), (0, hello(EVIL).as_str()), "{err}");

    // SIGHUP does the same as `reload`.
    fs::write(&config, format!("allow_domains = [\"{API}\"]\n")).unwrap();
    signal(daemon.pid(), "HUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    while daemon.status()["status"]["reloads"] != 2 {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, _, _) = in_job(&s, &cgroup, &curl(&s, EVIL));
    assert_ne!(code, 0, "EVIL is refused again after SIGHUP");
    let (code, out, err) = in_job(&s, &cgroup, &curl(&s, API));
    assert_eq!((code, out.as_str()), (0, hello(API).as_str()), "{err}");
}

#[test]
fn the_control_socket_is_root_only() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let socket = s.scratch.path("ctl.sock");
    let daemon = Daemon::start(&run_command(&s).allow(API), &socket);
    use std::os::unix::fs::PermissionsExt as _;
    let mode = fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");

    let as_nobody = |words: &[&str]| {
        EgressdCommand::new()
            .subcommand(words)
            .arg("--control-socket")
            .arg(&socket)
            .wrapped_in([
                "setpriv",
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
            ])
            .run()
    };
    let refused = as_nobody(&["status"]);
    assert_eq!(refused.code(), Some(1), "{refused}");
    assert!(refused.stderr.contains("root-only"), "{refused}");

    // Even with the file opened up, the daemon checks who is calling (SO_PEERCRED).
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o666)).unwrap();
    let refused = as_nobody(&["detach", "--all"]);
    assert_eq!(refused.code(), Some(1), "{refused}");
    assert!(
        refused.stderr.contains("for root only"),
        "the daemon itself must refuse\n{refused}"
    );
    // A second daemon on the same socket is refused while the first answers.
    let second = run_command(&s)
        .allow(API)
        .arg("--control-socket")
        .arg(&socket)
        .run();
    assert_ne!(second.code(), Some(0));
    assert!(second.stderr.contains("another egressd daemon"), "{second}");
    drop(daemon);
}

/// A client that opens one TLS connection to `https://NAME/` (dialled at the TEST-NET
/// address), makes a request, waits for a line on stdin, then makes a second request on the
/// same connection; prints each status line.
const KEEPALIVE_CLIENT: &str = r#"
import socket, ssl, sys
name, cafile = sys.argv[1], sys.argv[2]
ctx = ssl.create_default_context(cafile=cafile)
conn = ctx.wrap_socket(socket.create_connection(("192.0.2.10", 443), timeout=10), server_hostname=name)
def get():
    conn.sendall(("GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % name).encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(4096)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    while len(body) < length:
        body += conn.recv(4096)
    print(head.split(b"\r\n")[0].decode(), body.decode(), flush=True)
get()
sys.stdin.readline()
get()
"#;

#[test]
fn a_reload_drops_no_connection_in_flight() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let cgroup = TestCgroup::new("inflight");
    let config = s
        .scratch
        .write("egressd.toml", format!("allow_domains = [\"{API}\"]\n"));
    let daemon = Daemon::start(
        &run_command(&s).arg("--config").arg(&config),
        &s.scratch.path("ctl.sock"),
    );
    daemon.attach_in_scene(&s, &cgroup, None).assert_success();
    let script = s.scratch.write("keepalive.py", KEEPALIVE_CLIENT);
    let mut client = job_command(
        &s,
        &cgroup,
        &[
            "python3".into(),
            script.display().to_string(),
            API.into(),
            s.ca_pem.display().to_string(),
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("starting the client");
    let mut stdout = std::io::BufReader::new(client.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    assert!(
        first.starts_with("HTTP/1.1 200"),
        "first request: {first:?}"
    );

    // The new policy no longer allows API: new connections are refused, the open one lives.
    fs::write(&config, format!("allow_domains = [\"{EVIL}\"]\n")).unwrap();
    daemon.control(&["reload"]).assert_success();
    let (code, _, _) = in_job(&s, &cgroup, &curl(&s, API));
    assert_ne!(
        code, 0,
        "a new connection to API is refused after the reload"
    );

    client.stdin.take().unwrap().write_all(b"\n").unwrap();
    let mut second = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut second).unwrap();
    let out = client.wait_with_output().unwrap();
    assert!(
        second.starts_with("HTTP/1.1 200"),
        "the connection opened before the reload still works: {second:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        s.api.connections(),
        1,
        "one connection carried both requests"
    );
}

/// The repository root (the action and the systemd unit live there).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn the_systemd_unit_verifies() {
    let s = egressd_tests::Scratch::new();
    let unit = fs::read_to_string(repo_root().join("dist/systemd/egressd.service")).unwrap();
    assert!(
        unit.contains("ExecReload=/bin/kill -HUP $MAINPID"),
        "reload is SIGHUP"
    );
    let bin = egressd_tests::egressd_bin().display().to_string();
    let unit = unit
        .replace("/usr/local/bin/egressd", &bin)
        .replace("Documentation=man:egressd(1)\n", "");
    let path = s.write("egressd.service", unit);
    let out = Command::new("systemd-analyze")
        .args(["verify", path.to_str().unwrap()])
        .output()
        .expect("systemd-analyze (Debian's systemd package)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}

/// The variables a runner passes the action (inputs as `INPUT_<NAME>`, files for env,
/// state, outputs and the job summary), pointing into `dir`.
fn action_env(dir: &Path) -> Vec<(String, String)> {
    [
        "GITHUB_ENV",
        "GITHUB_STATE",
        "GITHUB_OUTPUT",
        "GITHUB_STEP_SUMMARY",
    ]
    .iter()
    .map(|v| {
        let file = dir.join(v.to_lowercase());
        fs::write(&file, "").unwrap();
        ((*v).to_owned(), file.display().to_string())
    })
    .chain([("RUNNER_TEMP".to_owned(), dir.display().to_string())])
    .collect()
}

/// `key=value` lines of a runner file.
fn kv_file(path: &str) -> Vec<(String, String)> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn the_github_action_firewalls_the_rest_of_the_job_and_summarises_it() {
    if privileged() {
        action_run("block", false);
    }
}

#[test]
fn the_github_action_in_audit_only_mode_records_without_blocking() {
    if privileged() {
        action_run("audit-only", false);
    }
}

/// The Action without `binary`: it downloads the release asset `cargo xtask dist` names for
/// this machine, checks its SHA-256 and installs it root-owned, then runs as usual.
#[test]
fn the_github_action_installs_the_release_asset_after_checking_its_hash() {
    if privileged() {
        action_run("block", true);
    }
}

/// The release assets of a fake mirror: the binary under test as this machine's asset, and
/// its `.sha256` as `sha256sum` writes it (or a wrong one, when `tampered`).
fn release_files(tampered: bool) -> Vec<(String, Vec<u8>)> {
    let asset = format!("egressd-{}-linux", std::env::consts::ARCH);
    let binary = fs::read(egressd_tests::egressd_bin()).unwrap();
    let out = Command::new("sha256sum")
        .arg(egressd_tests::egressd_bin())
        .output()
        .unwrap();
    let mut hash = String::from_utf8(out.stdout).unwrap()[..64].to_owned();
    if tampered {
        hash = hash.replace(|c: char| c != '0', "0");
    }
    vec![
        (format!("/releases/v9/{asset}"), binary),
        (
            format!("/releases/v9/{asset}.sha256"),
            format!("{hash}  {asset}\n").into_bytes(),
        ),
    ]
}

/// Serves [`release_files`] inside the scene's namespace (where the job runs), on port 8080.
fn release_mirror(s: &Scene, tampered: bool) -> (egressd_tests::HttpUpstream, String) {
    let files = release_files(tampered);
    let files: Vec<(&str, Vec<u8>)> = files.iter().map(|(p, c)| (p.as_str(), c.clone())).collect();
    let addr = std::net::SocketAddr::new(s.net.addr3().into(), 8080);
    let mirror = egressd_tests::HttpUpstream::files(&s.net, addr, &files);
    (mirror, format!("http://{addr}/releases/v9/"))
}

/// A release whose `.sha256` does not match the binary: the main step fails, saying so, and
/// installs and starts nothing.
#[test]
fn the_github_action_refuses_a_release_asset_with_the_wrong_hash() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let cgroup = TestCgroup::new("action-tampered");
    let env = action_env(s.scratch.dir());
    let (mirror, url) = release_mirror(&s, true);
    let install_dir = s.scratch.path("bin");
    fs::create_dir_all(&install_dir).unwrap();
    let socket = s.scratch.path("ctl.sock");
    let out = job_command(
        &s,
        &cgroup,
        &[
            "node".into(),
            repo_root().join("action/main.js").display().to_string(),
        ],
    )
    .envs(env.iter().cloned())
    .env("INPUT_RELEASE-URL", &url)
    .env("INPUT_INSTALL-DIR", &install_dir)
    .env("INPUT_CONTROL-SOCKET", &socket)
    .env("INPUT_GITHUB", "false")
    .output()
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("::error title=egressd::")
            && text.contains("does not match the release's 0000")
            && text.contains("not installed"),
        "{text}"
    );
    assert_eq!(fs::read_dir(&install_dir).unwrap().count(), 0, "{text}");
    assert!(!socket.exists(), "no daemon was started\n{text}");
    assert_eq!(
        mirror.paths().len(),
        2,
        "the binary and its hash were fetched"
    );
}

/// The Action's main step, two later steps (an allowed and a denied host), and its post step,
/// as a runner runs them, in `mode`; with `release`, the binary comes from a release mirror
/// instead of the `binary` input.
fn action_run(mode: &str, release: bool) {
    let s = Scene::new();
    let cgroup = TestCgroup::new(&format!("action-{mode}-{release}"));
    let env = action_env(s.scratch.dir());
    let file = |name: &str| env.iter().find(|(k, _)| k == name).unwrap().1.clone();
    let socket = s.scratch.path("ctl.sock");
    let install_dir = s.scratch.path("bin");
    fs::create_dir_all(&install_dir).unwrap();
    let mirror = release.then(|| release_mirror(&s, false));
    let (install_key, install_value) = match &mirror {
        Some((_, url)) => ("INPUT_RELEASE-URL", url.clone()),
        None => (
            "INPUT_BINARY",
            egressd_tests::egressd_bin().display().to_string(),
        ),
    };
    let inputs = [
        (install_key, install_value),
        ("INPUT_INSTALL-DIR", install_dir.display().to_string()),
        ("INPUT_ALLOW-DOMAINS", API.to_owned()),
        ("INPUT_GITHUB", "false".to_owned()),
        ("INPUT_MODE", mode.to_owned()),
        ("INPUT_CONTROL-SOCKET", socket.display().to_string()),
        (
            "INPUT_ARGS",
            format!(
                "--resolve {API}:{}\n--resolve {EVIL}:{}",
                s.net.addr(),
                s.net.addr2()
            ),
        ),
    ];
    let node = |script: &str, extra: &[(String, String)]| {
        let mut cmd = job_command(
            &s,
            &cgroup,
            &[
                "node".into(),
                repo_root()
                    .join("action")
                    .join(script)
                    .display()
                    .to_string(),
            ],
        );
        cmd.envs(env.iter().cloned())
            .envs(extra.iter().cloned())
            .env_remove("GITHUB_SERVER_URL")
            .env_remove("GITHUB_API_URL");
        let out = cmd.output().expect("running node");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && !text.contains("::error"),
            "{script}:\n{text}"
        );
        text
    };
    let main = node(
        "main.js",
        &inputs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect::<Vec<_>>(),
    );
    assert!(main.contains("attached job"), "{main}");
    if release {
        let installed = install_dir.join("egressd");
        let meta = fs::metadata(&installed).unwrap();
        assert_eq!(
            meta.len(),
            fs::metadata(egressd_tests::egressd_bin()).unwrap().len(),
            "{main}"
        );
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0, "root-owned");
        assert!(
            main.contains(&format!(
                "installed egressd-{}-linux (sha256 ",
                std::env::consts::ARCH
            )),
            "{main}"
        );
        assert!(
            kv_file(&file("GITHUB_STATE"))
                .iter()
                .any(|(k, v)| k == "bin" && Path::new(v) == installed),
            "the daemon runs from the installed binary"
        );
    }

    // Later steps of the job.
    let (code, out, err) = in_job(&s, &cgroup, &curl(&s, API));
    assert_eq!(
        (code, out.as_str()),
        (0, hello(API).as_str()),
        "{err}\n{main}"
    );
    let (code, out, _) = in_job(&s, &cgroup, &curl(&s, EVIL));
    if mode == "block" {
        assert_ne!(code, 0, "EVIL is refused");
    } else {
        assert_eq!(
            (code, out.as_str()),
            (0, hello(EVIL).as_str()),
            "audit-only lets it through"
        );
    }

    // The runner hands the saved state to the post step as STATE_<key>.
    let state: Vec<(String, String)> = kv_file(&file("GITHUB_STATE"))
        .into_iter()
        .map(|(k, v)| (format!("STATE_{k}"), v))
        .collect();
    let pid = state
        .iter()
        .find(|(k, _)| k == "STATE_pid")
        .unwrap()
        .1
        .clone();
    let post = node("post.js", &state);
    assert!(!post.contains("::warning"), "{post}");
    let summary = fs::read_to_string(file("GITHUB_STEP_SUMMARY")).unwrap();
    assert!(
        summary.contains(EVIL),
        "the job summary names the refused host\n{summary}"
    );
    if mode == "audit-only" {
        assert!(
            summary.to_ascii_lowercase().contains("suggest"),
            "audit-only adds the allowlist suggestions\n{summary}"
        );
    }
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the daemon stopped\n{post}"
    );
    let outputs = kv_file(&file("GITHUB_OUTPUT"));
    assert!(
        outputs
            .iter()
            .any(|(k, v)| k == "audit-log" && v.ends_with("audit.jsonl")),
        "{outputs:?}"
    );
    // After the post step the job is no longer firewalled (and the namespace has no route).
    let (code, _, _) = in_job(&s, &cgroup, &curl(&s, API));
    assert_ne!(code, 0);
}

/// The probe's `tcp` result from inside the job: `ok`, or the errno name.
fn tcp_probe(s: &Scene, cgroup: &TestCgroup) -> String {
    let (_, out, err) = in_job(
        s,
        cgroup,
        &[
            s.probe.display().to_string(),
            "tcp".into(),
            "192.0.2.10:443".into(),
        ],
    );
    let line: Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("probe output {out:?} ({e}): {err}"));
    match line["result"].as_str() {
        Some("ok") => "ok".to_owned(),
        _ => line["errno"].as_str().unwrap_or("?").to_owned(),
    }
}

#[test]
fn a_killed_daemon_leaves_the_job_closed_and_a_restart_re_arms_it() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let cgroup = TestCgroup::new("restart");
    let socket = s.scratch.path("ctl.sock");
    let daemon = Daemon::start(&run_command(&s).allow(API), &socket);
    daemon
        .attach_in_scene(&s, &cgroup, Some("ci"))
        .assert_success();
    assert_eq!(tcp_probe(&s, &cgroup), "ok");

    // SIGKILL: no cleanup runs. The pinned programs still redirect the job's connections,
    // now to a listener that is gone: refused, never sent out.
    daemon.kill();
    assert_eq!(tcp_probe(&s, &cgroup), "ECONNREFUSED");
    let (code, _, _) = in_job(&s, &cgroup, &curl(&s, API));
    assert_ne!(code, 0);

    // A new daemon on the same socket re-arms the job from the saved state.
    let restarted = Daemon::start(&run_command(&s).allow(API), &socket);
    let status = restarted.status();
    assert_eq!(status["status"]["attachments"][0]["name"], "ci", "{status}");
    let (code, out, err) = in_job(&s, &cgroup, &curl(&s, API));
    assert_eq!((code, out.as_str()), (0, hello(API).as_str()), "{err}");

    // A clean detach releases everything: the namespace's own lack of a route shows.
    restarted.control(&["detach", "ci"]).assert_success();
    assert_eq!(tcp_probe(&s, &cgroup), "ENETUNREACH");
    let stopped = restarted.stop();
    assert!(stopped.stderr.contains("re-armed ci"), "{stopped}");
    assert!(
        !socket.with_extension("state").exists(),
        "nothing left to re-arm after a clean stop"
    );
}

/// `attach --job` closes the container runtime sockets (`[sandbox] runtime_sockets`) to the
/// job's user, through their inode (a symlink does not help), and `detach` opens them again;
/// `--allow-docker` leaves them open. The socket here is a stand-in in the scratch directory
/// (no Docker engine runs on this machine), reachable by the job's group as Docker's is.
#[test]
fn the_container_runtime_socket_is_closed_to_an_attached_jobs_user_until_detach() {
    if !privileged() {
        return;
    }
    use std::os::unix::fs::PermissionsExt as _;
    let s = Scene::new();
    let runtime = s.scratch.path("docker.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&runtime).unwrap();
    std::os::unix::fs::chown(&runtime, Some(0), Some(65534)).unwrap();
    fs::set_permissions(&runtime, fs::Permissions::from_mode(0o660)).unwrap();
    let link = s.scratch.path("innocent.sock");
    std::os::unix::fs::symlink(&runtime, &link).unwrap();
    let config = s.scratch.write(
        "daemon.toml",
        format!("[sandbox]\nruntime_sockets = [\"{}\"]\n", runtime.display()),
    );
    // As the job's user (nobody, whose group owns the socket, as `docker` owns Docker's).
    let connect = |path: &Path| {
        let out = Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "--"])
            .args([
                "/usr/bin/python3",
                "-c",
                "import socket, sys\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect(sys.argv[1]); print('connected')\nexcept OSError as e:\n    print('refused', e.errno)",
            ])
            .arg(path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(connect(&runtime), "connected", "control: the door is open");
    let cgroup = TestCgroup::new("job-docker");
    let socket = s.scratch.path("ctl.sock");
    let daemon = Daemon::start(
        &run_command(&s).allow(API).arg("--config").arg(&config),
        &socket,
    );
    let egressd = egressd_tests::egressd_bin().display().to_string();
    let attach = |extra: &[&str]| {
        let mut argv = vec![
            "env".to_owned(),
            "SUDO_UID=65534".to_owned(),
            "SUDO_GID=65534".to_owned(),
            egressd.clone(),
            "attach".into(),
            "--job".into(),
            "--control-socket".into(),
            socket.display().to_string(),
        ];
        argv.extend(extra.iter().map(|a| (*a).to_owned()));
        in_job(&s, &cgroup, &argv)
    };
    let (code, out, err) = attach(&[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("closed {} to uid 65534", runtime.display())),
        "{out}"
    );
    assert!(
        connect(&runtime).starts_with("refused 13"),
        "{}",
        connect(&runtime)
    );
    assert!(
        connect(&link).starts_with("refused 13"),
        "through a symlink"
    );
    // A daemon that dies leaves the socket closed; a restarted one re-arms the job from its
    // state file and reopens the socket when the job is detached.
    daemon.kill();
    assert!(connect(&runtime).starts_with("refused 13"), "after a kill");
    let daemon = Daemon::start(
        &run_command(&s).allow(API).arg("--config").arg(&config),
        &socket,
    );
    assert!(
        connect(&runtime).starts_with("refused 13"),
        "after a restart"
    );
    daemon.control(&["detach", "job"]).assert_success();
    assert_eq!(connect(&runtime), "connected", "reopened on detach");
    // With --allow-docker the socket stays open.
    let (code, out, err) = attach(&["--allow-docker"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("closed"), "{out}");
    assert_eq!(connect(&runtime), "connected");
    daemon.control(&["detach", "job"]).assert_success();
    daemon.stop();
}

/// `attach --job --allow-docker`: the job keeps the Docker socket, and every container it
/// starts is attached with the job's policy (Docker's events API; here a stand-in, since no
/// Docker engine runs on this machine), then detached when it dies. The "container" is a
/// process of the test in a cgroup of its own and in the scene's namespace, where the
/// upstreams are directly reachable: without the attachment it reaches the forbidden host.
#[test]
fn containers_a_job_starts_with_docker_allowed_are_attached_with_its_policy() {
    if !privileged() {
        return;
    }
    use egressd_tests::fakes::FakeDocker;
    const ID: &str = "4f3c2b1a0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b";
    let s = Scene::new();
    let docker_sock = s.scratch.path("docker.sock");
    let docker = FakeDocker::start(&docker_sock);
    let config = s.scratch.write(
        "daemon.toml",
        format!(
            "[sandbox]\nruntime_sockets = [\"{}\"]\n",
            docker_sock.display()
        ),
    );
    let job = TestCgroup::new("job-with-docker");
    let container = TestCgroup::new("ctr");
    let socket = s.scratch.path("ctl.sock");
    let daemon = Daemon::start(
        &run_command(&s).allow(API).arg("--config").arg(&config),
        &socket,
    );
    // The container's init process: in its own cgroup and the scene's namespace.
    let mut init = job_command(&s, &container, &["sleep".into(), "60".into()])
        .spawn()
        .unwrap();
    // The forbidden host at its real address in the namespace: a container's direct path.
    let direct_evil: Vec<String> = [
        "curl",
        "-sS",
        "--max-time",
        "5",
        "--cacert",
        s.ca_pem.to_str().unwrap(),
        "--resolve",
        &format!("{EVIL}:443:{}", s.net.addr2()),
        &format!("https://{EVIL}/"),
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .collect();
    // Control: nothing firewalls it yet, so the forbidden host answers.
    let (code, out, _) = in_job(&s, &container, &direct_evil);
    assert_eq!((code, out.as_str()), (0, hello(EVIL).as_str()), "control");

    let egressd = egressd_tests::egressd_bin().display().to_string();
    let (code, out, err) = in_job(
        &s,
        &job,
        &[
            egressd,
            "attach".into(),
            "--job".into(),
            "--allow-docker".into(),
            "--control-socket".into(),
            socket.display().to_string(),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("following Docker's events"), "{out}");
    // Ready when the daemon follows the events.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while docker.subscribers() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon never followed the events"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    docker.add_container(ID, init.id());
    docker.start_event(ID);
    let name = format!("job-docker-{}", &ID[..12]);
    let attached = |daemon: &Daemon| {
        daemon.status()["status"]["attachments"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["name"] == name.as_str()))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !attached(&daemon) {
        assert!(
            std::time::Instant::now() < deadline,
            "the container was never attached"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Now the container is firewalled with the job's policy.
    let (code, out, err) = in_job(&s, &container, &curl(&s, API));
    assert_eq!((code, out.as_str()), (0, hello(API).as_str()), "{err}");
    let (code, _, _) = in_job(&s, &container, &direct_evil);
    assert_ne!(code, 0, "the container reached the forbidden host");
    // It dies: released.
    docker.die_event(ID);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while attached(&daemon) {
        assert!(
            std::time::Instant::now() < deadline,
            "the container was never detached"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon.control(&["detach", "job"]).assert_success();
    let _ = init.kill();
    let _ = init.wait();
    let stopped = daemon.stop();
    let records = read_audit(&s.audit_log);
    assert!(
        records
            .iter()
            .any(|r| r["sandbox"] == name.as_str() && r["name"] == EVIL && r["decision"] == "deny"),
        "{stopped}"
    );
}

/// `attach --job` cannot give a running job what `exec` gives its command (a system-call
/// filter, a terminal of its own, other groups, a scrubbed environment): it names each door
/// the job keeps, read from the step that asked, and a clean step hears nothing.
#[test]
fn attach_job_names_the_doors_a_running_job_keeps() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let cgroup = TestCgroup::new("job-doors");
    let socket = s.scratch.path("ctl.sock");
    let daemon = Daemon::start(&run_command(&s).allow(API), &socket);
    let egressd = egressd_tests::egressd_bin().display().to_string();
    // The step: bash with exactly this environment, running attach as a child (so that
    // egressd's parent is the step, as `sudo` is on a runner).
    let step = |env: &[&str], wrap_in_terminal: bool| {
        let attach = format!(
            "{egressd} attach --job --control-socket {}; echo attached=$?",
            socket.display()
        );
        let mut argv: Vec<String> = vec!["env".into(), "-i".into()];
        argv.extend(env.iter().map(|e| (*e).to_owned()));
        argv.extend([
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin".into(),
            "SHELL=/bin/bash".into(),
        ]);
        if wrap_in_terminal {
            // `script` gives the step a controlling terminal.
            argv.extend(["script".into(), "-qec".into(), attach, "/dev/null".into()]);
        } else {
            argv.extend(["bash".into(), "-c".into(), attach]);
        }
        let (code, out, err) = in_job(&s, &cgroup, &argv);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("attached=0"), "{out}{err}");
        daemon.control(&["detach", "job"]).assert_success();
        // `script` copies the terminal's output (stderr included) to stdout.
        format!("{out}{err}")
    };
    let vsock = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import socket\ntry:\n    socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM); print('yes')\nexcept OSError:\n    print('no')",
        ])
        .output()
        .unwrap();
    let vsock = String::from_utf8_lossy(&vsock.stdout).trim() == "yes";

    let clean = step(&[], false);
    assert!(!clean.contains("look like secrets"), "{clean}");
    assert!(!clean.contains("TIOCSTI"), "{clean}");
    assert_eq!(clean.contains("AF_VSOCK"), vsock, "{clean}");

    let secrets = step(
        &[
            "NPM_TOKEN=npm_0123456789abcdefghij",
            "DB_PASSWORD=hunter2hunter2",
            "MAX_OUTPUT_TOKENS=8192",
        ],
        false,
    );
    assert!(
        secrets.contains("look like secrets are in the job's environment: DB_PASSWORD, NPM_TOKEN"),
        "{secrets}"
    );
    assert!(
        !secrets.contains("npm_0123") && !secrets.contains("hunter2"),
        "values never printed: {secrets}"
    );
    assert!(!secrets.contains("MAX_OUTPUT_TOKENS"), "{secrets}");

    let terminal = step(&[], true);
    assert!(terminal.contains("the job has a terminal"), "{terminal}");
}
