//! `egressd run`: the long-running daemon for runners.
//!
//! Start-up is fail-closed like `exec`: the configuration is validated and the programs are
//! loaded (verifier included) before anything is attached or the control socket opens.
//! Then the daemon serves the control socket (`control.rs` describes the protocol) until
//! SIGTERM or SIGINT, re-reads its configuration on SIGHUP, and on the way out detaches
//! every cgroup it attached and writes a `disarm` record for each. Once set up, it drops the
//! capabilities attach, detach and reload do not use ([`KEEP`]).

mod attachment;
mod daemon;
mod docker_events;
mod kube;
mod server;

use std::sync::Arc;

use anyhow::{Context as _, anyhow};
use egressd_proxy::AuditLog;
use tokio::signal::unix::{SignalKind, signal};

use crate::{Failure, cli::RunArgs, control::Target, loader::Loader, policy};

use self::daemon::Daemon;

/// Worker threads of the daemon's runtime.
const WORKERS: usize = 2;

/// The capabilities the daemon keeps once it is ready; every other one (`CAP_SETUID`,
/// `CAP_SYS_MODULE`, `CAP_SYS_RAWIO`, `CAP_NET_RAW`, `CAP_KILL`, `CAP_CHOWN`, ...) is dropped
/// from every thread and from the bounding set, so a bug in the proxy cannot use them.
const KEEP: &[caps::Capability] = &[
    // Load and attach the cgroup programs, pin links on bpffs, bind-mount namespaces,
    // enter a namespace to listen in it (`attach --netns/--pid`).
    caps::Capability::CAP_SYS_ADMIN,
    caps::Capability::CAP_BPF,
    caps::Capability::CAP_PERFMON,
    // cgroup skb programs and listening sockets inside attached namespaces.
    caps::Capability::CAP_NET_ADMIN,
    // The DNS listener on port 53 in an attached namespace.
    caps::Capability::CAP_NET_BIND_SERVICE,
    // `attach --pid`: another user's /proc/PID/ns/net and cgroup.
    caps::Capability::CAP_SYS_PTRACE,
    // Moving processes between cgroups a runner delegated to its user, and reading
    // credential files that belong to the runner's user.
    caps::Capability::CAP_DAC_OVERRIDE,
    caps::Capability::CAP_DAC_READ_SEARCH,
    // BPF maps on kernels that still charge them to RLIMIT_MEMLOCK (before 5.11).
    caps::Capability::CAP_IPC_LOCK,
];

/// Runs the daemon until it is told to stop; returns its exit code.
pub fn run(args: RunArgs) -> Result<u8, Failure> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Failure::setup(anyhow!(
            "egressd run needs root: it loads eBPF programs and attaches them to cgroups"
        )));
    }
    let mut config = policy::build(&args.policy, args.audit_log.clone()).map_err(Failure::usage)?;
    if args.require_provenance {
        config.provenance.required = true;
    }
    if config.policy.audit_only() {
        eprintln!("egressd: audit-only mode: what the policy denies is recorded but NOT blocked");
    }
    let provenance = crate::provenance::establish(&config)?;
    let audit = AuditLog::new(config.audit_log.as_deref())
        .map_err(|e| Failure::usage(anyhow!(e).context("opening the audit log")))?
        .with_provenance(provenance.clone());
    let audit = Arc::new(audit);
    crate::otlp::start(&args.otlp, &audit, provenance.verified()).map_err(Failure::usage)?;
    let flush = crate::otlp::FlushOnDrop(Arc::clone(&audit));
    let loader = Loader::load().map_err(Failure::setup)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()
        .context("starting the async runtime")
        .map_err(Failure::setup)?;
    let kube_args = args.kube.clone();
    let set_up = runtime.block_on(async move {
        let socket = server::bind(&args.control_socket).map_err(Failure::setup)?;
        let startup = args.attach_cgroup.clone();
        let socket_path = args.control_socket.clone();
        let state_file = socket_path.with_extension("state");
        let pins = match crate::sandbox::bpffs::root() {
            Ok(root) => Some(root.join("egressd").join(daemon_id(&socket_path))),
            Err(e) => {
                eprintln!(
                    "egressd: warning: no bpffs ({e:#}); links are not pinned, so if the daemon \
                     dies the cgroups it firewalls are released"
                );
                None
            }
        };
        let daemon = Arc::new(
            Daemon::new(
                args,
                config,
                loader,
                audit,
                provenance.verified().cloned(),
                pins,
                state_file,
            )
            .map_err(Failure::setup)?,
        );
        for message in daemon.rearm().await {
            eprintln!("egressd: {message}");
        }
        for path in startup {
            let target = Target::Cgroup { path, netns: None };
            match daemon.attach(target, None, None).await {
                Ok(message) => eprintln!("egressd: {message}"),
                Err(e) => {
                    daemon.shutdown().await;
                    let _ = std::fs::remove_file(&socket_path);
                    return Err(Failure::setup(e));
                }
            }
        }
        let signals = Signals::new().map_err(Failure::setup)?;
        Ok((daemon, socket, signals, socket_path))
    });
    let (daemon, socket, signals, socket_path) = match set_up {
        Ok(set_up) => set_up,
        Err(failure) => {
            runtime.shutdown_timeout(std::time::Duration::from_secs(2));
            return Err(failure);
        }
    };
    // Set-up is over: every thread keeps only what attach, detach and reload use.
    if let Err(e) = crate::sandbox::privilege::drop_everywhere(&runtime, WORKERS, KEEP) {
        tracing::warn!("dropping capabilities after set-up: {e:#}");
    }
    let code = runtime.block_on(async move {
        eprintln!(
            "egressd: daemon ready (pid {}), control socket {}",
            std::process::id(),
            socket_path.display()
        );
        // The Kubernetes agent, when asked for: it ends with the daemon, and the daemon
        // with it if it cannot run (no API server).
        let stop_agent = tokio_util::sync::CancellationToken::new();
        let mut agent = kube_args.kubernetes.then(|| {
            tokio::spawn(kube::run(
                Arc::clone(&daemon),
                kube_args.clone(),
                stop_agent.clone(),
            ))
        });
        let mut code = 0;
        tokio::select! {
            () = serve(&daemon, socket, signals) => {}
            ended = async { agent.as_mut().expect("checked").await }, if agent.is_some() => {
                agent = None;
                let why = match ended {
                    Ok(Ok(())) => "the pod watch ended".to_owned(),
                    Ok(Err(e)) => format!("{e:#}"),
                    Err(e) => format!("it panicked: {e}"),
                };
                eprintln!("egressd: error: the Kubernetes agent stopped: {why}");
                code = crate::EXIT_SETUP;
            }
        }
        stop_agent.cancel();
        if let Some(agent) = agent {
            let _ = agent.await;
        }
        let _ = std::fs::remove_file(&socket_path);
        if kube_args.kubernetes {
            // An agent being replaced leaves its pods closed for the next one to re-arm.
            daemon.leave().await;
            eprintln!(
                "egressd: agent stopped; its pods stay closed until the next agent re-arms them"
            );
        } else {
            daemon.shutdown().await;
            eprintln!("egressd: daemon stopped; every attachment was released");
        }
        Ok(code)
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    // The last lines (every attachment's disarm) go out, and what became of them is said.
    flush.0.finish_export(crate::otlp::FLUSH_AT_EXIT);
    if let Some(otlp) = flush.0.summary().otlp {
        eprintln!("{otlp}");
    }
    code
}

/// A short, stable name for the daemon behind `socket` (its pins live under it).
fn daemon_id(socket: &std::path::Path) -> String {
    use sha2::{Digest as _, Sha256};
    let digest = Sha256::digest(socket.as_os_str().as_encoded_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("daemon-{hex}")
}

/// The signals the daemon acts on.
struct Signals {
    hangup: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            hangup: signal(SignalKind::hangup()).context("listening for SIGHUP")?,
            terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
        })
    }
}

/// Serves control requests and signals until SIGTERM or SIGINT.
async fn serve(daemon: &Arc<Daemon>, socket: tokio::net::UnixListener, mut signals: Signals) {
    loop {
        tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(server::handle(Arc::clone(daemon), stream));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = signals.hangup.recv() => {
                let _ = daemon.reload().await;
            }
            _ = signals.terminate.recv() => break,
            _ = signals.interrupt.recv() => break,
        }
    }
}
