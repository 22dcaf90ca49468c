//! [`EgressdCommand`]: a builder for `egressd exec [OPTIONS] -- COMMAND...`, in the manner of
//! httpjail's `HttpjailCommand`, plus helpers to read what egressd and the command printed.
//!
//! Every run has a deadline (60 s by default): past it egressd gets SIGTERM, then SIGKILL, and
//! the test fails with everything printed so far. Runs default to `--user 65534:65534`, since
//! the tests run as root and egressd refuses root in the sandbox unless told otherwise.

use std::{
    ffi::{OsStr, OsString},
    fmt::{self, Display},
    fs,
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, PoisonError},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// The default deadline of one `egressd exec` run.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Builder for one `egressd exec` invocation.
#[derive(Debug, Clone)]
pub struct EgressdCommand {
    wrapper: Vec<OsString>,
    subcommand: Vec<OsString>,
    options: Vec<OsString>,
    user: Option<String>,
    command: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    audit_log: Option<PathBuf>,
    timeout: Duration,
    echo: bool,
}

/// What a finished run left behind.
#[derive(Debug)]
pub struct Output {
    /// egressd's exit status (the command's, when egressd itself did not fail).
    pub status: ExitStatus,
    /// egressd's stdout: the command's stdout.
    pub stdout: String,
    /// egressd's stderr: the command's stderr plus egressd's own messages and summary.
    pub stderr: String,
    audit_log: Option<PathBuf>,
}

/// A run in progress (from [`EgressdCommand::spawn`]).
#[derive(Debug)]
pub struct Running {
    child: Child,
    shown: String,
    deadline: Instant,
    stdout: Collector,
    stderr: Collector,
    audit_log: Option<PathBuf>,
}

/// Bytes read from one of egressd's pipes by a background thread.
#[derive(Debug)]
struct Collector {
    bytes: Arc<Mutex<Vec<u8>>>,
    thread: thread::JoinHandle<()>,
}

impl EgressdCommand {
    /// `egressd exec` with no policy options yet, as user 65534:65534.
    pub fn new() -> Self {
        Self {
            wrapper: Vec::new(),
            subcommand: vec!["exec".into()],
            options: Vec::new(),
            user: Some("65534:65534".to_owned()),
            command: Vec::new(),
            env: Vec::new(),
            audit_log: None,
            timeout: DEFAULT_TIMEOUT,
            echo: false,
        }
    }

    /// Start egressd through a wrapper command, e.g. `["ip", "netns", "exec", NAME]`: the
    /// wrapper runs with egressd's path and arguments appended.
    pub fn wrapped_in<I, S>(mut self, wrapper: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.wrapper = wrapper.into_iter().map(|s| s.as_ref().to_owned()).collect();
        self
    }

    /// `--allow-domains LIST` (comma-separated, AWF syntax).
    pub fn allow(mut self, list: &str) -> Self {
        self.options.extend(["--allow-domains".into(), list.into()]);
        self
    }

    /// `--block-domains LIST`.
    pub fn block(mut self, list: &str) -> Self {
        self.options.extend(["--block-domains".into(), list.into()]);
        self
    }

    /// `--resolve HOST:ADDR`: the proxy resolves `host` to `addr`.
    pub fn resolve(mut self, host: &str, addr: impl Display) -> Self {
        self.options
            .extend(["--resolve".into(), format!("{host}:{addr}").into()]);
        self
    }

    /// `--audit-log PATH`; [`Output::audit`] then reads it.
    pub fn audit_log(mut self, path: impl AsRef<Path>) -> Self {
        let path = path.as_ref().to_path_buf();
        self.options
            .extend(["--audit-log".into(), path.clone().into()]);
        self.audit_log = Some(path);
        self
    }

    /// `--user UID[:GID]` (the default is `65534:65534`).
    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.to_owned());
        self
    }

    /// Pass no `--user` at all (egressd then uses `SUDO_UID`/`SUDO_GID` or refuses).
    pub fn default_user(mut self) -> Self {
        self.user = None;
        self
    }

    /// `--netns new|host|PATH`.
    pub fn netns(mut self, mode: &str) -> Self {
        self.options.extend(["--netns".into(), mode.into()]);
        self
    }

    /// Any other option, verbatim (placed before `--`).
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.options.push(arg.as_ref().to_owned());
        self
    }

    /// Several options, verbatim.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.options
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// The sandboxed command and its arguments (after `--`).
    pub fn command<I, S>(mut self, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command = argv.into_iter().map(|a| a.as_ref().to_owned()).collect();
        self
    }

    /// Shorthand for `.command(["sh", "-c", script])`.
    pub fn sh(self, script: &str) -> Self {
        self.command(["sh", "-c", script])
    }

    /// Set a variable in egressd's own environment (to check what reaches the sandbox).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Change the deadline (default 60 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Also copy egressd's stdout/stderr to ours as they arrive (the demo uses this).
    pub fn echo(mut self, echo: bool) -> Self {
        self.echo = echo;
        self
    }

    /// Run a different egressd subcommand instead of `exec` (`["allowlist", "check"]`).
    /// No `--user` is added and the "command" becomes plain trailing arguments without `--`.
    pub fn subcommand<I, S>(mut self, words: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.subcommand = words.into_iter().map(|a| a.as_ref().to_owned()).collect();
        self.user = None;
        self
    }

    /// The full argument vector egressd gets.
    pub fn argv(&self) -> Vec<OsString> {
        let mut argv = self.subcommand.clone();
        argv.extend(self.options.iter().cloned());
        if let Some(user) = &self.user {
            argv.extend(["--user".into(), user.into()]);
        }
        if self.subcommand.first().is_some_and(|s| s == "exec") {
            argv.push("--".into());
        }
        argv.extend(self.command.iter().cloned());
        argv
    }

    /// Start egressd; wait for it with [`Running::wait`].
    pub fn spawn(&self) -> Running {
        let bin = crate::egressd_bin();
        let argv = self.argv();
        let shown = format!(
            "{} {}",
            bin.display(),
            argv.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        // Hermetic by default: a CI job's own GitHub variables must not widen the policy
        // under test (egressd derives an allowlist from them). Tests set them explicitly.
        for var in [
            "GITHUB_SERVER_URL",
            "GITHUB_API_URL",
            "GITHUB_ACTIONS_RUNNER_FORCE_GHES",
            // Copilot: BYOK becomes an injection rule; run IDs fill injected headers.
            "COPILOT_PROVIDER_BASE_URL",
            "COPILOT_PROVIDER_TYPE",
            "COPILOT_PROVIDER_API_KEY",
            "COPILOT_PROVIDER_BEARER_TOKEN",
            "GITHUB_RUN_ID",
            "GITHUB_RUN_ATTEMPT",
            // Provenance: a CI job's own OIDC variables would make egressd verify the real
            // issuer's token.
            "ACTIONS_ID_TOKEN_REQUEST_URL",
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
        ] {
            command.env_remove(var);
        }
        let mut child = command
            .args(&argv)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting `{shown}`: {e}"));
        let echo = self.echo;
        let out = child.stdout.take().expect("stdout is piped");
        let err = child.stderr.take().expect("stderr is piped");
        Running {
            child,
            shown,
            deadline: Instant::now() + self.timeout,
            stdout: Collector::start(
                out,
                echo.then(|| Box::new(std::io::stdout()) as Box<dyn Write + Send>),
            ),
            stderr: Collector::start(
                err,
                echo.then(|| Box::new(std::io::stderr()) as Box<dyn Write + Send>),
            ),
            audit_log: self.audit_log.clone(),
        }
    }

    /// Run to completion (or the deadline, which fails the test).
    pub fn run(&self) -> Output {
        self.spawn().wait()
    }
}

impl Default for EgressdCommand {
    fn default() -> Self {
        Self::new()
    }
}

impl Running {
    /// egressd's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// What egressd (the command) printed on stdout so far, while it runs.
    pub fn stdout_so_far(&self) -> String {
        let bytes = self
            .stdout
            .bytes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Wait for egressd to exit. Past the deadline it is terminated and the test panics with
    /// the output collected so far.
    pub fn wait(mut self) -> Output {
        let mut timed_out = false;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("waiting for egressd") {
                break status;
            }
            if Instant::now() >= self.deadline {
                timed_out = true;
                terminate(&mut self.child);
                break self
                    .child
                    .wait()
                    .expect("waiting for egressd after killing it");
            }
            thread::sleep(Duration::from_millis(20));
        };
        // A process left in the sandbox could hold the pipes open: give the readers a bounded
        // time to see end-of-file, then take what they have.
        let until = Instant::now() + Duration::from_secs(5);
        let output = Output {
            status,
            stdout: self.stdout.finish(until),
            stderr: self.stderr.finish(until),
            audit_log: self.audit_log,
        };
        assert!(
            !timed_out,
            "`{}` did not finish before its deadline\n{output}",
            self.shown
        );
        output
    }
}

impl Output {
    /// The exit code, if egressd exited normally.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Panic with everything printed unless the run exited 0.
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert!(self.status.success(), "egressd exec failed\n{self}");
        self
    }

    /// The audit records (one JSON value per line of `--audit-log`); empty if it was not set
    /// or not written.
    pub fn audit(&self) -> Vec<Value> {
        self.audit_log
            .as_deref()
            .map(read_audit)
            .unwrap_or_default()
    }

    /// The audit records whose `name` is `name`.
    pub fn audit_for(&self, name: &str) -> Vec<Value> {
        self.audit()
            .into_iter()
            .filter(|r| r["name"] == name)
            .collect()
    }

    /// egressd's own closing lines (every stderr line starting with `egressd:`, joined by
    /// newlines): the summary with the denied names and reasons, plus any counters after it.
    pub fn summary(&self) -> String {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("egressd:"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The JSON lines of stdout (what `egressd-probe` printed); other lines are skipped.
    pub fn json_lines(&self) -> Vec<Value> {
        parse_json_lines(&self.stdout)
    }
}

impl Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "status: {}", self.status)?;
        writeln!(f, "--- stdout ---\n{}", self.stdout.trim_end())?;
        writeln!(f, "--- stderr ---\n{}", self.stderr.trim_end())?;
        if let Some(path) = &self.audit_log {
            let audit = fs::read_to_string(path).unwrap_or_else(|e| format!("(unreadable: {e})"));
            writeln!(
                f,
                "--- audit log {} ---\n{}",
                path.display(),
                audit.trim_end()
            )?;
        }
        Ok(())
    }
}

/// Read an audit log (JSONL): one value per non-empty line. A missing file reads as empty; a
/// line that is not JSON fails the test.
pub fn read_audit(path: &Path) -> Vec<Value> {
    let Ok(text) = fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {l}"))
        })
        .collect()
}

/// Every line of `text` that parses as a JSON object.
pub fn parse_json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .filter(Value::is_object)
        .collect()
}

impl Collector {
    fn start(
        mut from: impl Read + Send + 'static,
        mut echo: Option<Box<dyn Write + Send>>,
    ) -> Self {
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&bytes);
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        sink.lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .extend_from_slice(&buf[..n]);
                        if let Some(out) = echo.as_mut() {
                            let _ = out.write_all(&buf[..n]);
                            let _ = out.flush();
                        }
                    }
                }
            }
        });
        Self { bytes, thread }
    }

    /// Wait until end-of-file or `until`, whichever comes first; return what was read.
    fn finish(self, until: Instant) -> String {
        while !self.thread.is_finished() && Instant::now() < until {
            thread::sleep(Duration::from_millis(10));
        }
        let bytes = self.bytes.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// SIGTERM (so egressd can tear its sandbox down), then SIGKILL after 5 s.
fn terminate(child: &mut Child) {
    use nix::{sys::signal, unistd::Pid};
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pids fit in i32"));
    let _ = signal::kill(pid, signal::Signal::SIGTERM);
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
}
