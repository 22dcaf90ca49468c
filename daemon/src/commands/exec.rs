//! `egressd exec`: run a command in a sandbox whose connections go through the allowlist.
//!
//! Order matters and every step before the command starts is fail-closed: configuration
//! is validated first; then the programs are loaded, the cgroup and network namespace
//! created, the listeners bound and the programs attached; only then does the command
//! start, already inside the cgroup. Cleanup (kill what is left in the cgroup, remove it,
//! detach the programs) runs on every exit path, Ctrl-C included.

use std::{ffi::OsString, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context as _, anyhow};
use egressd_ebpf_common::{FLAG_REDIRECT_LOOPBACK, SandboxConfig};
use egressd_proxy::{AuditLog, AwfLog, Lifecycle, Proxy};
use nix::{
    sys::{
        signal::{Signal, kill},
        wait::{WaitStatus, waitpid},
    },
    unistd::Pid,
};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::{
    Failure,
    cli::{Backend, ExecArgs},
    env,
    loader::Loader,
    policy,
    sandbox::{
        cgroup::Cgroup,
        netns::{self, NetnsMode},
        spawn,
        trust::TrustBundle,
    },
};

/// Runs `egressd exec`; returns the command's exit code.
pub fn run(args: ExecArgs) -> Result<u8, Failure> {
    let mut config = policy::build(&args.policy, args.audit_log.clone()).map_err(Failure::usage)?;
    if args.require_provenance {
        config.provenance.required = true;
    }
    apply_sandbox_args(&mut config.sandbox, &args.sandbox).map_err(Failure::usage)?;
    let mode = NetnsMode::parse(&args.netns).map_err(Failure::usage)?;
    let (uid, gid) = target_user(args.user.as_deref(), args.allow_root)?;
    let outcome = run_plan(Plan {
        config,
        mode,
        uid,
        gid,
        command: args.command,
        env: None,
        cwd: None,
        timeout: None,
        awf: None,
        test_proxy_down: args.test_proxy_down,
        backend: args.backend,
        relay: args.policy.relay,
        otlp: args.otlp,
    })?;
    eprintln!("{}", outcome.summary);
    if !outcome.removed_env.is_empty() {
        eprintln!(
            "egressd: removed from the sandbox's environment (they look like secrets; --pass-env NAME keeps one): {}",
            outcome.removed_env.join(", ")
        );
    }
    if !outcome.counters.is_empty() {
        let list: Vec<String> = outcome
            .counters
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        eprintln!("egressd: kernel: {}", list.join(" "));
    }
    Ok(outcome.code)
}

/// Adds the `--allow-unix`, `--hide`, `--pass-env`, `--secrets` and `--seccomp` flags to the
/// `[sandbox]` settings of the configuration.
pub(crate) fn apply_sandbox_args(
    settings: &mut egressd_config::sandbox::SandboxSettings,
    args: &crate::cli::SandboxArgs,
) -> anyhow::Result<()> {
    use egressd_config::sandbox::{self as s, SecretsMode, UnixAllow};
    for path in &args.allow_unix {
        settings
            .allow_unix
            .push(UnixAllow::parse(path).map_err(|e| anyhow!("--allow-unix: {e}"))?);
    }
    for path in &args.hide {
        settings
            .hide
            .push(s::check_hide(path).map_err(|e| anyhow!("--{e}"))?);
    }
    for name in &args.pass_env {
        s::check_env_name(name).map_err(|e| anyhow!("--pass-env: {e}"))?;
        settings.pass_env.push(name.clone());
    }
    match args.secrets.as_deref() {
        None => {}
        Some("warn") => settings.secrets = SecretsMode::Warn,
        Some("refuse") => settings.secrets = SecretsMode::Refuse,
        Some(other) => anyhow::bail!("--secrets {other:?}: write warn or refuse"),
    }
    if let Some(profile) = &args.seccomp {
        let cwd = std::env::current_dir().unwrap_or_default();
        settings.seccomp = s::Seccomp::parse(profile, &cwd).map_err(|e| anyhow!("--{e}"))?;
    }
    Ok(())
}

/// Directories whose sockets belong to the sandbox (it binds them itself): `/tmp` and
/// `/var/tmp` (host sockets there are covered by the mount layer), its private directories
/// ([`PRIVATE_DIRS`](crate::sandbox::confine::PRIVATE_DIRS): `/run`, `/var/run`, `/dev/shm`),
/// and its working directory; then `allow_unix`.
fn unix_allow(
    allow: &[egressd_config::sandbox::UnixAllow],
    workdir: Option<&std::path::Path>,
) -> Vec<crate::loader::UnixAllow> {
    use crate::loader::UnixAllow as Kernel;
    use egressd_config::sandbox::UnixAllow as Config;
    let mut entries: Vec<Kernel> = ["/tmp", "/var/tmp"]
        .iter()
        .chain(crate::sandbox::confine::PRIVATE_DIRS)
        .map(|d| Kernel::Dir(PathBuf::from(format!("{d}/"))))
        .collect();
    // Not "/" itself, which would allow every path.
    if let Some(dir) = workdir.filter(|d| d.components().count() > 1) {
        entries.push(Kernel::Dir(dir.to_path_buf()));
    }
    entries.extend(allow.iter().map(|a| match a {
        Config::Socket(p) => Kernel::Socket(p.clone()),
        Config::Directory(p) => Kernel::Dir(p.clone()),
    }));
    entries
}

/// Writes one audit record per Unix socket the kernel refused in this sandbox (cgroup
/// `cgroup_id`), until the run ends.
async fn audit_unix_denials(
    mut events: crate::loader::UnixEvents,
    cgroup_id: u64,
    audit: Arc<AuditLog>,
    sandbox: String,
) {
    while let Ok(event) = events.next().await {
        if event.cgroup_id != cgroup_id {
            continue;
        }
        let (reason, suggest) = if event.is_abstract {
            ("abstract Unix socket outside the sandbox", None)
        } else if event.path.split('/').any(|p| p == "..") {
            ("Unix socket path with a `..` segment", None)
        } else {
            (
                "Unix socket outside the sandbox, not in allow_unix",
                Some(format!("--allow-unix {}", event.path)),
            )
        };
        audit.unix_denied(
            &sandbox,
            &egressd_proxy::UnixDenial {
                op: &event.kind.to_string(),
                path: &event.path,
                pid: event.pid,
                reason,
                suggest,
            },
        );
    }
}

/// The variables naming GitHub Actions' file commands.
const RUNNER_FILE_COMMANDS: [&str; 5] = [
    "GITHUB_ENV",
    "GITHUB_PATH",
    "GITHUB_OUTPUT",
    "GITHUB_STATE",
    "GITHUB_STEP_SUMMARY",
];

/// The directories holding the job's file commands that exist here: where the variables
/// point, and `_runner_file_commands` under `$RUNNER_TEMP` or next to the workspace (the
/// command could find it there even when `sudo` dropped the variables).
fn runner_file_command_dirs() -> Vec<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let mut dirs: Vec<PathBuf> = RUNNER_FILE_COMMANDS
        .iter()
        .filter_map(|v| var(v)?.parent().map(std::path::Path::to_path_buf))
        .collect();
    dirs.extend(var("RUNNER_TEMP").map(|t| t.join("_runner_file_commands")));
    // <work>/<repo>/<repo> is GITHUB_WORKSPACE; <work>/_temp is RUNNER_TEMP.
    dirs.extend(var("GITHUB_WORKSPACE").and_then(|w| {
        w.parent()?
            .parent()
            .map(|work| work.join("_temp/_runner_file_commands"))
    }));
    // Only the runner's own directory: a variable set by hand to /tmp/x must not hide /tmp.
    dirs.retain(|d| {
        d.is_absolute() && d.is_dir() && d.file_name().is_some_and(|n| n == "_runner_file_commands")
    });
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Compiles the `seccomp` setting: `None` for `off`, and for the default profile on an
/// architecture it has no table for (said on stderr); an error for a bad FILE.
fn seccomp_filter(
    setting: &egressd_config::sandbox::Seccomp,
) -> Result<Option<crate::sandbox::seccomp::Program>, Failure> {
    use crate::sandbox::seccomp::{self, Error, Profile};
    let profile = match setting {
        egressd_config::sandbox::Seccomp::Default => Profile::Default,
        egressd_config::sandbox::Seccomp::Off => Profile::Off,
        egressd_config::sandbox::Seccomp::File(path) => Profile::Oci(path.clone()),
    };
    match seccomp::compile(&profile) {
        Ok(program) => {
            for warning in program.iter().flat_map(|p| p.warnings()) {
                eprintln!("egressd: warning: seccomp: {warning}");
            }
            Ok(program)
        }
        Err(e @ Error::UnsupportedArch(_)) if profile == Profile::Default => {
            eprintln!("egressd: warning: the command runs without a seccomp filter: {e}");
            Ok(None)
        }
        Err(e) => Err(Failure::usage(anyhow!("--seccomp: {e}"))),
    }
}

/// Everything a sandboxed run needs, validated by the caller (`exec`, `awf`).
pub(crate) struct Plan {
    /// The compiled configuration (policy, credentials, audit log path).
    pub config: egressd_config::Config,
    /// Which network namespace the command gets.
    pub mode: NetnsMode,
    /// User the command runs as (see [`target_user`]).
    pub uid: u32,
    /// Group the command runs as.
    pub gid: u32,
    /// The command and its arguments.
    pub command: Vec<String>,
    /// The command's environment before the trust bundle and placeholders are added;
    /// `None`: ours, scrubbed ([`env::sandbox_env`]).
    pub env: Option<Vec<(OsString, OsString)>>,
    /// The command's working directory (`None`: egressd's). Must be absolute.
    pub cwd: Option<PathBuf>,
    /// Kill the command after this long (SIGTERM, SIGKILL 10 s later) and return 124.
    pub timeout: Option<Duration>,
    /// AWF-format logs to write besides egressd's own.
    pub awf: Option<AwfLog>,
    /// Testing only: see `ExecArgs::test_proxy_down`.
    pub test_proxy_down: bool,
    /// How connections are sent to the proxy.
    pub backend: Backend,
    /// Where audit lines also go (`--otlp-*`).
    pub otlp: crate::cli::OtlpArgs,
    /// How allowed pass-through connections move their bytes.
    pub relay: crate::cli::RelayChoice,
}

/// The backend chosen for a run, with what it holds.
enum Armed {
    Ebpf(Box<Loader>),
    Nftables,
}

/// Picks the backend: loads the programs for eBPF (fail closed on error unless `auto` can
/// fall back to nftables).
fn choose(backend: Backend, mode: &NetnsMode) -> Result<Armed, Failure> {
    let nftables = || -> Result<Armed, Failure> {
        if *mode != NetnsMode::New {
            return Err(Failure::usage(anyhow!(
                "the nftables backend firewalls a whole network namespace: it needs --netns new"
            )));
        }
        crate::sandbox::nft::available()
            .map_err(|e| Failure::setup(anyhow!("the nftables backend is not available: {e}")))?;
        Ok(Armed::Nftables)
    };
    match backend {
        Backend::Ebpf => Ok(Armed::Ebpf(Box::new(
            Loader::load().map_err(Failure::setup)?,
        ))),
        Backend::Nftables => nftables(),
        Backend::Auto => match Loader::load() {
            Ok(loader) => Ok(Armed::Ebpf(Box::new(loader))),
            Err(e) if *mode == NetnsMode::New && crate::sandbox::nft::available().is_ok() => {
                eprintln!(
                    "egressd: cgroup BPF is not usable here ({e:#}); using the nftables backend"
                );
                Ok(Armed::Nftables)
            }
            Err(e) => Err(Failure::setup(e)),
        },
    }
}

/// How a run ended.
pub(crate) struct RunOutcome {
    /// The command's exit code (128+N when killed by signal N; 124 on timeout).
    pub code: u8,
    /// The run was ended by `Plan::timeout`.
    pub timed_out: bool,
    /// The audit summary.
    pub summary: egressd_proxy::Summary,
    /// The kernel-side counters.
    pub counters: Vec<(&'static str, u64)>,
    /// Variables removed from the command's environment because they looked like secrets.
    pub removed_env: Vec<String>,
}

/// The proxy's worker threads.
const WORKERS: usize = 2;

/// Exit code when the command was killed by `Plan::timeout` (as `timeout(1)`, AWF).
pub(crate) const EXIT_TIMEOUT: u8 = 124;

/// Sets up the sandbox, runs `plan.command` in it, and tears it all down.
pub(crate) fn run_plan(plan: Plan) -> Result<RunOutcome, Failure> {
    let Plan {
        config,
        mode,
        uid,
        gid,
        command,
        env: base_env,
        cwd,
        timeout,
        awf,
        test_proxy_down,
        backend,
        relay,
        otlp,
    } = plan;
    if !nix::unistd::geteuid().is_root() {
        return Err(Failure::setup(anyhow!(
            "egressd exec needs root: it loads eBPF programs, creates a cgroup and a network \
             namespace; run it with sudo (the command still runs as you)"
        )));
    }
    // Never a group that grants root (docker, sudo, disk...): the user's own, or nogroup.
    let (gid, group_note) = crate::sandbox::groups::sandbox_gid(uid, gid);
    if let Some(note) = group_note {
        eprintln!("{note}");
    }
    if uid == 0 {
        eprintln!(
            "egressd: warning: the command runs as root (--allow-root); root can leave the \
             sandbox, so this confinement is NOT enforceable"
        );
    }
    if config.policy.audit_only() {
        eprintln!("egressd: audit-only mode: what the policy denies is recorded but NOT blocked");
    }
    // The command's system-call filter, compiled (and a FILE checked) before anything starts.
    let seccomp = seccomp_filter(&config.sandbox.seccomp)?;
    // Secrets on disk: egressd's own credential files out of the sandbox user's reach, and
    // credentials other tools left readable named (or fatal with `secrets = "refuse"`).
    crate::sandbox::secrets::check_credential_files(&config, uid, gid)
        .map_err(|e| Failure::usage(anyhow!(e)))?;
    if let Some(list) =
        crate::sandbox::secrets::readable_credentials(uid, gid, &config.sandbox.hide)
    {
        let refuse = config.sandbox.secrets == egressd_config::sandbox::SecretsMode::Refuse;
        let message = format!(
            "the sandbox's user can read credentials on disk: {list}; hide each with --hide \
             PATH (or [sandbox] hide), or remove it"
        );
        if refuse {
            return Err(Failure::usage(anyhow!("{message} (secrets = \"refuse\")")));
        }
        eprintln!("egressd: warning: {message}");
    }
    // Who triggered the run, verified, before anything is set up (`[provenance]`).
    let provenance = crate::provenance::establish(&config)?;
    let audit = AuditLog::new(config.audit_log.as_deref())
        .map_err(|e| Failure::usage(anyhow!(e).context("opening the audit log")))?
        .with_provenance(provenance.clone());
    let audit = Arc::new(match awf {
        Some(awf) => audit.with_awf(awf),
        None => audit,
    });
    crate::otlp::start(&otlp, &audit, provenance.verified()).map_err(Failure::usage)?;
    // Whatever way this returns, the queued audit lines get their chance to go out.
    let _flush = crate::otlp::FlushOnDrop(Arc::clone(&audit));
    let sandbox = format!("egressd-{}", std::process::id());

    // Declared before the cgroup so that it is dropped after it: the cgroup is emptied
    // before the programs are detached.
    let mut armed = choose(backend, &mode)?;
    let cgroup = Cgroup::create(&sandbox).map_err(Failure::setup)?;
    // pids.max and memory.max: a fork bomb or a runaway build stays in the sandbox.
    let limits = {
        let pids = config
            .sandbox
            .pids
            .unwrap_or(crate::sandbox::limits::DEFAULT_PIDS);
        let memory = config
            .sandbox
            .memory
            .or_else(crate::sandbox::limits::default_memory)
            .unwrap_or(u64::MAX);
        let limits = match crate::sandbox::limits::apply(&cgroup, &sandbox, pids, memory) {
            Ok(limits) => limits,
            Err(e) if config.sandbox.pids.is_some() || config.sandbox.memory.is_some() => {
                return Err(Failure::setup(
                    e.context("setting the sandbox's resource limits"),
                ));
            }
            Err(e) => {
                eprintln!("egressd: warning: the sandbox has no resource limits: {e:#}");
                crate::sandbox::limits::Limits::default()
            }
        };
        for missing in &limits.missing {
            let asked = match *missing {
                "pids" => config.sandbox.pids.is_some(),
                _ => config.sandbox.memory.is_some(),
            };
            if asked {
                return Err(Failure::setup(anyhow!(
                    "limits.{missing} was asked for, but the {missing} controller is neither \
                     enabled on cgroup v2 nor mounted as v1 here (`egressd doctor` shows the \
                     limits line); enable it, or remove limits.{missing} to run without it"
                )));
            }
            eprintln!(
                "egressd: warning: the sandbox has no {missing} limit: the {missing} controller \
                 is neither enabled on cgroup v2 nor mounted as v1"
            );
        }
        limits
    };
    let net = netns::prepare(&mode).map_err(Failure::setup)?;
    let port4 = net.listener4.local_addr().map_err(Failure::setup)?.port();
    let port6 = match &net.listener6 {
        Some(l) => l.local_addr().map_err(Failure::setup)?.port(),
        None => 0,
    };
    let dns_port4 = net.dns4.local_addr().map_err(Failure::setup)?.port();
    let dns_port6 = match &net.dns6 {
        Some(s) => s.local_addr().map_err(Failure::setup)?.port(),
        None => 0,
    };
    // Unix-socket rules in the kernel (Linux 6.7+): host sockets not in allow_unix refused
    // and audited, abstract ones too unless the sandbox has its own (network namespace or
    // Landlock scope).
    let unix_rules = match &armed {
        Armed::Ebpf(loader) => match loader.unix_hooks() {
            Ok(()) => true,
            Err(why) => {
                tracing::info!("Unix-socket hooks not available: {why}");
                false
            }
        },
        Armed::Nftables => false,
    };
    let mut flags = if mode.redirects_loopback() {
        FLAG_REDIRECT_LOOPBACK
    } else {
        0
    };
    // Abstract Unix sockets are the sandbox's own in a network namespace of its own;
    // sharing one, Landlock scopes them where the kernel can (else the hooks refuse them).
    let scope_abstract =
        mode != NetnsMode::New && crate::sandbox::confine::landlock_scopes_abstract();
    if unix_rules {
        flags |= egressd_ebpf_common::FLAG_UNIX_RULES;
        if mode == NetnsMode::New || scope_abstract {
            flags |= egressd_ebpf_common::FLAG_UNIX_ABSTRACT_ALLOW;
        }
    }
    let sandbox_config = SandboxConfig {
        proxy_port4: port4.to_be(),
        proxy_port6: port6.to_be(),
        dns_port: dns_port4.to_be(),
        dns_port6: dns_port6.to_be(),
        flags,
    };
    let kernel_relay = match &armed {
        Armed::Ebpf(loader) => loader.kernel_relay(),
        Armed::Nftables => Err("the nftables backend has no eBPF programs".to_owned()),
    };
    let kernel_relay = relay.pick(kernel_relay).map_err(Failure::setup)?;
    let orig: Arc<dyn egressd_proxy::OrigDstLookup> = match &mut armed {
        Armed::Ebpf(loader) => {
            // The links stay attached until the loader is dropped, after the cgroup is
            // emptied.
            let _links = loader
                .attach(&cgroup, sandbox_config)
                .map_err(Failure::setup)?;
            if unix_rules {
                let workdir = cwd.clone().or_else(|| std::env::current_dir().ok());
                let entries = unix_allow(&config.sandbox.allow_unix, workdir.as_deref());
                loader
                    .set_unix_allow(cgroup.id(), &entries)
                    .context("writing the sandbox's Unix-socket rules")
                    .map_err(Failure::setup)?;
            }
            loader.orig_dst()
        }
        Armed::Nftables => {
            let netns = net.netns.as_ref().ok_or_else(|| {
                Failure::setup(anyhow!("the nftables backend needs its own namespace"))
            })?;
            crate::sandbox::nft::arm(
                netns,
                crate::sandbox::nft::Ports {
                    proxy4: port4,
                    proxy6: port6,
                    dns4: dns_port4,
                    dns6: dns_port6,
                },
            )
            .map_err(Failure::setup)?;
            Arc::new(crate::sandbox::nft::OriginalDst)
        }
    };
    tracing::debug!(cgroup = %cgroup.path().display(), port4, port6, "programs attached");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()
        .context("starting the async runtime")
        .map_err(Failure::setup)?;

    // Refused Unix sockets, from the kernel's ring buffer into the audit log.
    if unix_rules && let Armed::Ebpf(loader) = &mut armed {
        let _guard = runtime.enter();
        let events = loader
            .unix_events()
            .context("reading the Unix-socket refusals")
            .map_err(Failure::setup)?;
        runtime.spawn(audit_unix_denials(
            events,
            cgroup.id(),
            Arc::clone(&audit),
            sandbox.clone(),
        ));
    }
    let policy_hash = config.policy.fingerprint();
    let config = Arc::new(config);
    let config_intercepts = config.intercepts.host_patterns();
    let config_for_broker = Arc::clone(&config);
    let proxy = {
        let _guard = runtime.enter();
        let proxy = Proxy::new(config, orig, audit.clone(), sandbox.clone())
            .map_err(|e| Failure::setup(anyhow!(e).context("starting the proxy")))?;
        let proxy = match kernel_relay {
            Some(relay) => proxy.with_kernel_relay(relay),
            None => proxy,
        };
        match (&mode, &net.netns) {
            // The sandbox's loopback is not ours: reach it from inside its namespace.
            (NetnsMode::Path(_), Some(netns)) => proxy.with_loopback_sockets(Arc::new(
                netns::NetnsSockets::start(netns).map_err(Failure::setup)?,
            )),
            _ => proxy,
        }
    };
    // TLS interception, when a rule asks for it: the run's CA, the broker, the bundle.
    let mut bundle = None;
    let mut ca_fingerprint = None;
    let proxy = if config_intercepts.is_empty() {
        proxy
    } else {
        let (with, written, fingerprint) = intercepting(
            proxy,
            &config_for_broker,
            &sandbox,
            &runtime,
            provenance.verified().cloned(),
        )
        .map_err(Failure::setup)?;
        bundle = Some(written);
        ca_fingerprint = Some(fingerprint);
        with
    };
    // AWF's api-proxy (`egressd awf`): routes per provider port, keys through the broker.
    let proxy = if config_for_broker.api_proxy.is_some() {
        let _guard = runtime.enter();
        let broker = egressd_proxy::token::Broker::with_provenance(
            &config_for_broker,
            env::token_source_env(&config_for_broker),
            provenance.verified().cloned(),
        )
        .context("setting up the api-proxy credentials")
        .map_err(Failure::setup)?;
        proxy
            .with_api_proxy(broker)
            .map_err(|e| Failure::setup(anyhow!(e).context("starting the api-proxy")))?
    } else {
        proxy
    };
    let proxy = Arc::new(proxy);
    let shutdown = CancellationToken::new();
    let mut servers = Vec::new();
    {
        let _guard = runtime.enter();
        let listeners = std::iter::once(net.listener4).chain(net.listener6);
        // --test-proxy-down: the listeners are dropped (closed) here, unserved.
        for listener in listeners.filter(|_| !test_proxy_down) {
            let listener = tokio::net::TcpListener::from_std(listener)
                .context("registering the proxy listener")
                .map_err(Failure::setup)?;
            servers.push(runtime.spawn(proxy.clone().serve(listener, shutdown.clone())));
        }
        let dns_sockets = std::iter::once(net.dns4).chain(net.dns6);
        for socket in dns_sockets.filter(|_| !test_proxy_down) {
            let socket = tokio::net::UdpSocket::from_std(socket)
                .context("registering the DNS listener")
                .map_err(Failure::setup)?;
            servers.push(runtime.spawn(proxy.clone().serve_dns(socket, shutdown.clone())));
        }
    }

    // Everything is attached and serving: the audit log's proof of enforcement starts here.
    audit.lifecycle(
        &Lifecycle::arm(
            &sandbox,
            match &armed {
                Armed::Ebpf(_) => "ebpf",
                Armed::Nftables => "nftables",
            },
        )
        .programs(match &armed {
            Armed::Ebpf(loader) => loader.programs(),
            Armed::Nftables => Vec::new(),
        })
        .cgroup(cgroup.path().display().to_string())
        .policy_hash(policy_hash)
        .ca_fingerprint(ca_fingerprint),
    );
    // Start the command from this (the main) thread: the parent-death signal follows the
    // thread that created the child.
    let gh_host = env::gh_host(env::github_env().as_ref()).map(|h| ("GH_HOST".to_owned(), h));
    let extra = [
        bundle.as_ref().map(TrustBundle::env).unwrap_or_default(),
        env::placeholders(&config_for_broker),
        gh_host.into_iter().collect(),
    ]
    .concat();
    let (mut env, removed_env) = match base_env {
        // The trust bundle, and placeholders for keys the daemon keeps (Copilot BYOK).
        None => {
            let scrubbed = env::sandbox_env(
                uid,
                &env::credential_vars(&config_for_broker),
                &extra,
                &config_for_broker.sandbox.pass_env,
            );
            (scrubbed.vars, scrubbed.removed)
        }
        Some(mut given) => {
            given.retain(|(k, _)| !extra.iter().any(|(e, _)| k == e.as_str()));
            given.extend(extra.into_iter().map(|(k, v)| (k.into(), v.into())));
            (given, Vec::new())
        }
    };
    for name in &config_for_broker.sandbox.pass_env {
        if std::env::var_os(name).is_some() {
            eprintln!(
                "egressd: passing {name} to the sandbox although it looks like a secret (--pass-env)"
            );
        }
    }
    // GitHub Actions' file commands: the runner applies what is written there to the later
    // steps of the job, outside the sandbox (`NODE_OPTIONS` through $GITHUB_ENV, a directory
    // first in $PATH): hidden, and their variables removed, unless allowed.
    let mut hide = config_for_broker.sandbox.hide.clone();
    if !config_for_broker.sandbox.runner_file_commands {
        let dirs = runner_file_command_dirs();
        env.retain(|(k, _)| !RUNNER_FILE_COMMANDS.iter().any(|v| k == *v));
        if !dirs.is_empty() {
            eprintln!(
                "egressd: GitHub Actions file commands ({}) are out of the command's reach: the \
                 runner would apply them to later steps, outside the sandbox \
                 ([sandbox] runner_file_commands = \"allow\" lets it write them)",
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        hide.extend(dirs);
    }
    // The sandbox's view of the filesystem: private /run, host sockets covered, --hide.
    let keep: Vec<PathBuf> = bundle
        .as_ref()
        .and_then(|b| b.file().parent().map(std::path::Path::to_path_buf))
        .into_iter()
        .collect();
    let runtime_dir = env
        .iter()
        .find(|(k, _)| k == "XDG_RUNTIME_DIR")
        .map(|(_, v)| PathBuf::from(v));
    let confinement = crate::sandbox::confine::Confinement::plan(
        &config_for_broker.sandbox.allow_unix,
        &keep,
        &hide,
        scope_abstract,
    )
    .with_runtime_dir(runtime_dir.as_deref(), uid, gid);
    let plan_file = crate::sandbox::confine::PlanFile::write(&confinement, &sandbox)
        .context("writing the confinement plan")
        .map_err(Failure::setup)?;
    // A terminal of its own, relayed, when egressd was given one.
    let pending_pty = crate::sandbox::pty::Pending::prepare().map_err(Failure::setup)?;
    // The child inherits the working directory: set it only around the spawn.
    let previous_cwd = match &cwd {
        Some(dir) => {
            let previous = std::env::current_dir().ok();
            std::env::set_current_dir(dir)
                .with_context(|| format!("changing to the working directory {}", dir.display()))
                .map_err(Failure::setup)?;
            previous
        }
        None => None,
    };
    let spawned = spawn::spawn(spawn::Spec {
        cgroup_procs: &cgroup.procs_file(),
        extra_procs: &limits.extra_procs,
        netns: net.netns.as_ref(),
        uid,
        gid,
        command: &command,
        env,
        pty: pending_pty
            .as_ref()
            .map(|p| (p.init_socket(), p.stdio_arg())),
        confine: Some(plan_file.path()),
        seccomp: seccomp
            .as_ref()
            .map(crate::sandbox::seccomp::Program::to_arg),
    });
    if let Some(previous) = previous_cwd {
        let _ = std::env::set_current_dir(previous);
    }
    let child = match spawned {
        Ok(child) => child,
        Err(e) => {
            audit.lifecycle(&Lifecycle::disarm(&sandbox, crate::EXIT_SETUP));
            audit.finish_export(crate::otlp::FLUSH_AT_EXIT);
            return Err(Failure::setup(e));
        }
    };
    let relay = match pending_pty.map(crate::sandbox::pty::Pending::connect) {
        None => None,
        Some(Ok(relay)) => Some(relay),
        Some(Err(e)) => {
            let _ = kill(child, Signal::SIGKILL);
            return Err(Failure::setup(e));
        }
    };

    // Set-up is over: from here on egressd only signals the sandbox (CAP_KILL) and, with
    // nftables, reads its counter in the sandbox's namespace.
    let mut keep = vec![caps::Capability::CAP_KILL];
    if matches!(armed, Armed::Nftables) {
        keep.extend([
            caps::Capability::CAP_NET_ADMIN,
            caps::Capability::CAP_SYS_ADMIN,
        ]);
    }
    // Secrets read from files at mint time may belong to another user (the runner's).
    if config_for_broker.credentials.iter().any(|c| {
        matches!(
            c.source,
            egressd_config::CredentialSource::File { .. }
                | egressd_config::CredentialSource::PerActor { .. }
        )
    }) {
        keep.push(caps::Capability::CAP_DAC_READ_SEARCH);
    }
    if let Err(e) = crate::sandbox::privilege::drop_everywhere(&runtime, WORKERS, &keep) {
        tracing::warn!("dropping capabilities after set-up: {e:#}");
    }
    let (code, timed_out) = runtime.block_on(async {
        let stats = {
            let (proxy, audit) = (Arc::clone(&proxy), Arc::clone(&audit));
            move || crate::stats::line(proxy.open_connections(), &audit.summary())
        };
        let ended = wait_forwarding_signals(child, timeout, stats).await;
        shutdown.cancel();
        for server in servers {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(3), server).await;
        }
        ended
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    audit.lifecycle(&Lifecycle::disarm(&sandbox, code));
    audit.finish_export(crate::otlp::FLUSH_AT_EXIT);

    let net_netns_dropped = match (&armed, &net.netns) {
        (Armed::Nftables, Some(fd)) => crate::sandbox::nft::dropped(fd)
            .filter(|n| *n > 0)
            .map(|n| vec![("nft_dropped", n)])
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    // The invoking terminal back in its own mode before anything more is printed.
    drop(relay);
    let outcome = RunOutcome {
        removed_env,
        code,
        timed_out,
        summary: audit.summary(),
        counters: match &armed {
            Armed::Ebpf(loader) => loader.counters(),
            Armed::Nftables => net_netns_dropped,
        },
    };
    drop(cgroup);
    drop(limits);
    drop(armed);
    drop(bundle);
    Ok(outcome)
}

/// Adds TLS interception to `proxy`: a CA for the intercepted hosts (key in memory), the
/// token broker fed from the daemon's environment (and the run's verified provenance, for
/// `per-actor` credentials), and the sandbox's trust bundle; also returns the CA
/// certificate's fingerprint (`sha256:<hex>` of the DER) for the audit log.
fn intercepting(
    proxy: Proxy,
    config: &egressd_config::Config,
    sandbox: &str,
    runtime: &tokio::runtime::Runtime,
    provenance: Option<egressd_proxy::token::Provenance>,
) -> anyhow::Result<(Proxy, TrustBundle, String)> {
    let hosts = config.intercepts.host_patterns();
    let ca = Arc::new(
        egressd_proxy::intercept::EphemeralCa::new(&hosts)
            .context("creating the interception CA")?,
    );
    let broker = {
        let _guard = runtime.enter();
        egressd_proxy::token::Broker::with_provenance(
            config,
            env::token_source_env(config),
            provenance,
        )
        .context("setting up the credentials")?
    };
    let system = egressd_proxy::intercept::find_system_bundle().ok_or_else(|| {
        anyhow!(
            "no system CA bundle found (looked in {}); install ca-certificates",
            egressd_proxy::intercept::SYSTEM_BUNDLES.join(", ")
        )
    })?;
    let pem = egressd_proxy::intercept::trust_bundle(system, ca.cert_pem())
        .context("building the sandbox's trust bundle")?;
    let bundle = TrustBundle::write(sandbox, &pem, ca.cert_pem())?;
    let fingerprint = crate::digest::sha256_hex(ca.cert_der());
    tracing::debug!(hosts = ?hosts, "intercepting TLS");
    let proxy = {
        let _guard = runtime.enter();
        proxy
            .with_interception(ca, broker)
            .context("starting TLS interception")?
    };
    Ok((proxy, bundle, fingerprint))
}

/// The user the command runs as: `--user`, else the one who ran sudo; root only with
/// `--allow-root`.
pub(crate) fn target_user(user: Option<&str>, allow_root: bool) -> Result<(u32, u32), Failure> {
    let (uid, gid) = if let Some(spec) = user {
        parse_user(spec).map_err(Failure::usage)?
    } else if let Some(ids) = env::sudo_user() {
        ids
    } else {
        (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
    };
    if uid == 0 && !allow_root {
        return Err(Failure::usage(anyhow!(
            "refusing to run the command as root: root could leave the sandbox; run egressd \
             through sudo from your own account, pass --user UID[:GID], or accept the risk \
             with --allow-root"
        )));
    }
    Ok((uid, gid))
}

/// Parses `UID` or `UID:GID` (numeric). Without a GID, the user's primary group from the
/// passwd database, or the UID itself.
fn parse_user(spec: &str) -> anyhow::Result<(u32, u32)> {
    let bad =
        || anyhow!("--user {spec:?}: expected a numeric UID or UID:GID, e.g. --user 1001:1001");
    let (uid, gid) = match spec.split_once(':') {
        Some((u, g)) => (
            u.parse().map_err(|_| bad())?,
            Some(g.parse().map_err(|_| bad())?),
        ),
        None => (spec.parse().map_err(|_| bad())?, None),
    };
    let gid = gid.unwrap_or_else(|| {
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map_or(uid, |u| u.gid.as_raw())
    });
    Ok((uid, gid))
}

/// Waits for the sandbox's PID 1, passing on SIGINT/SIGTERM/SIGHUP/SIGQUIT; returns its
/// exit code (128+signal when killed) and whether `timeout` ended it ([`EXIT_TIMEOUT`]).
/// SIGUSR1 is egressd's own: it prints the `stats` line to stderr.
async fn wait_forwarding_signals(
    child: Pid,
    timeout: Option<Duration>,
    stats: impl Fn() -> String,
) -> (u8, bool) {
    let mut usr1 = signal(SignalKind::user_defined1()).ok();
    let mut wait = tokio::task::spawn_blocking(move || {
        loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => return code as u8,
                Ok(WaitStatus::Signaled(_, sig, _)) => return 128u8.wrapping_add(sig as u8),
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return crate::EXIT_SETUP,
            }
        }
    });
    let kinds = [
        (SignalKind::interrupt(), Signal::SIGINT),
        (SignalKind::terminate(), Signal::SIGTERM),
        (SignalKind::hangup(), Signal::SIGHUP),
        (SignalKind::quit(), Signal::SIGQUIT),
    ];
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (kind, sig) in kinds {
        if let Ok(mut stream) = signal(kind) {
            let tx = tx.clone();
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    if tx.send(sig).is_err() {
                        break;
                    }
                }
            });
        }
    }
    // Far enough away to never fire when there is no timeout.
    let deadline = tokio::time::sleep(timeout.unwrap_or(Duration::from_secs(100 * 365 * 86_400)));
    tokio::pin!(deadline);
    let mut timed_out = false;
    loop {
        tokio::select! {
            result = &mut wait => {
                let code = result.unwrap_or(crate::EXIT_SETUP);
                return if timed_out { (EXIT_TIMEOUT, true) } else { (code, false) };
            }
            Some(sig) = rx.recv() => {
                let _ = kill(child, sig);
            }
            Some(()) = async { usr1.as_mut()?.recv().await } => {
                eprintln!("{}", stats());
            }
            () = &mut deadline, if timeout.is_some() && !timed_out => {
                timed_out = true;
                let _ = kill(child, Signal::SIGTERM);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    let _ = kill(child, Signal::SIGKILL);
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_user;

    #[test]
    fn user_specs() {
        assert_eq!(parse_user("1001:1002").unwrap(), (1001, 1002));
        assert_eq!(parse_user("65534:65534").unwrap(), (65534, 65534));
        assert!(parse_user("alice").is_err());
        assert!(parse_user("1:x").is_err());
    }
}
