//! `egressd`: egress firewall for CI runners and AI-agent sandboxes.
//!
//! `main` only parses the command line, runs the command and turns its result into an
//! exit code: the command's own for `exec`, 64 for usage and configuration errors, 125
//! when the sandbox could not be set up, 1 for other failures.

mod awf_log;
mod cli;
mod commands;
mod control;
mod digest;
mod env;
mod loader;
mod otlp;
mod policy;
mod provenance;
mod sandbox;
mod stats;

use std::process::ExitCode;

use clap::Parser as _;

/// Exit code for usage and configuration errors (sysexits `EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;
/// Exit code when `exec` could not set up the sandbox (as `docker run` and `env` use 125).
pub const EXIT_SETUP: u8 = 125;

/// An error that already knows its exit code.
#[derive(Debug)]
pub struct Failure {
    /// Process exit code.
    pub code: u8,
    /// What went wrong, with its chain of causes.
    pub error: anyhow::Error,
}

impl Failure {
    /// A usage or configuration error (exit 64).
    pub fn usage(error: impl Into<anyhow::Error>) -> Self {
        Self {
            code: EXIT_USAGE,
            error: error.into(),
        }
    }
    /// A sandbox set-up failure (exit 125).
    pub fn setup(error: impl Into<anyhow::Error>) -> Self {
        Self {
            code: EXIT_SETUP,
            error: error.into(),
        }
    }
    /// Any other runtime failure (exit 1).
    pub fn runtime(error: impl Into<anyhow::Error>) -> Self {
        Self {
            code: 1,
            error: error.into(),
        }
    }
}

fn main() -> ExitCode {
    // `awf ...` (a symlink named awf) is `egressd awf ...`.
    let (argv, awf) = commands::argv_for(std::env::args_os().collect());
    let cli = if awf {
        // AWF's conventions: errors on stderr, exit 1; flags that need Docker named.
        if let Err(message) = commands::awf_precheck(&argv[2..]) {
            eprintln!("[ERROR] {message}");
            return ExitCode::from(1);
        }
        match cli::Cli::try_parse_from(&argv) {
            Ok(cli) => cli,
            Err(e) if e.use_stderr() => {
                eprint!("{e}");
                return ExitCode::from(1);
            }
            Err(e) => {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
        }
    } else {
        cli::Cli::parse_from(argv)
    };
    if let cli::Command::SandboxInit(args) = &cli.command {
        // The sandbox's PID 1: no logging set-up, no runtime, nothing shared.
        return sandbox::init::run(args);
    }
    cli::init_logging(cli.verbose);
    raise_nofile_limit();
    match commands::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(Failure { code, error }) => {
            eprintln!("egressd: error: {error:#}");
            ExitCode::from(code)
        }
    }
}

/// Each proxied connection holds two descriptors (client and upstream): lift the limit on
/// open files (as root, up to the kernel's `fs.nr_open`, at most 2^20; else the soft limit to
/// the hard one), so the connection limit (`limits.max_connections`) is what bounds a
/// sandbox, not a default of 1024 descriptors.
fn raise_nofile_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes a valid rlimit into `limit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<libc::rlim_t>().ok())
        .unwrap_or(0)
        .min(1 << 20);
    if nr_open > limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: nr_open,
            rlim_max: nr_open,
        };
        // SAFETY: setrlimit reads a valid, initialised rlimit struct. Needs root; when it
        // fails, the soft limit is raised to the hard one below.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return;
        }
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit reads a valid, initialised rlimit struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            tracing::debug!(
                "could not raise RLIMIT_NOFILE: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}
