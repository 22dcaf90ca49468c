//! `egressd-bench`: egressd side by side with HAProxy, nginx, Squid and mitmproxy on the same
//! workloads, plus its cost curves. `cargo xtask bench` installs the peers, builds egressd in
//! release mode and runs `egressd-bench run`; see the README's "Performance".
//!
//! One binary, three roles: `run` (the orchestrator, [`run`]), `upstream` (the TLS server
//! every target ends at, [`upstream`]) and `client` (the workload client, [`client`]), the
//! last two started by `run` inside the network namespaces it creates ([`netns`]). Nothing
//! leaves those namespaces (`shared/TOOLCHAIN.md`, the network rule).

mod client;
mod http1;
mod netns;
mod pki;
mod plot;
mod policy;
mod procfs;
mod proto;
mod report;
mod run;
mod targets;
mod upstream;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::targets::Kind;

/// Benchmarks egressd against HAProxy, nginx, Squid and mitmproxy (needs root).
#[derive(Debug, Parser)]
#[command(name = "egressd-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the comparison and the cost curves; write results.md, results.json and PNGs.
    Run {
        /// A smoke run of a few seconds per target (one repetition, small counts).
        #[arg(long)]
        quick: bool,
        /// Only these targets, comma-separated: direct, haproxy, nginx, squid, mitmproxy,
        /// egressd-pass, egressd-intercept, egressd-strict.
        #[arg(long, value_delimiter = ',', value_parser = parse_kind)]
        only: Vec<Kind>,
        /// Repetitions of each figure in a full run (the median is reported; default 3).
        #[arg(long)]
        reps: Option<usize>,
        /// Output folder.
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
        /// The egressd binary (a release build).
        #[arg(long, default_value = "target/release/egressd")]
        egressd: PathBuf,
        /// mitmproxy's `mitmdump` (default: `target/bench/venv/bin/mitmdump`, then `PATH`).
        #[arg(long)]
        mitmdump: Option<PathBuf>,
    },
    /// Only the allowlist decision micro-benchmark (no root needed); prints a table.
    Policy {
        /// Allowlist sizes, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "10,100,1000,10000,100000"
        )]
        sizes: Vec<usize>,
        /// Milliseconds of deciding per size.
        #[arg(long, default_value_t = 300)]
        millis: u64,
    },
    /// The TLS upstream (started by `run` in its namespace).
    Upstream {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// Certificate chain, PEM.
        #[arg(long)]
        cert: PathBuf,
        /// Private key, PEM.
        #[arg(long)]
        key: PathBuf,
    },
    /// The workload client (started by `run`; ops on stdin, replies on stdout).
    Client {
        /// Where to open TCP connections.
        #[arg(long)]
        connect: SocketAddr,
        /// Send `CONNECT bench.test:443` first (explicit proxies).
        #[arg(long)]
        via_connect: bool,
        /// CA certificates to trust (PEM); `$SSL_CERT_FILE` is added when set.
        #[arg(long)]
        ca: Vec<PathBuf>,
    },
}

fn parse_kind(s: &str) -> Result<Kind, String> {
    Kind::from_id(s.trim()).ok_or_else(|| {
        let all: Vec<&str> = Kind::ALL.iter().map(|k| k.id()).collect();
        format!("unknown target {s:?}; one of {}", all.join(", "))
    })
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Run {
            quick,
            only,
            reps,
            out,
            egressd,
            mitmdump,
        } => run::main(&run::Options {
            quick,
            only,
            reps,
            mitmdump: mitmdump.or_else(|| Some(out.join("venv/bin/mitmdump"))),
            out,
            egressd,
        }),
        Command::Policy { sizes, millis } => {
            for p in policy::curve(&sizes, std::time::Duration::from_millis(millis)) {
                println!(
                    "{:>7} entries, {:>4.0}% wildcards: {:>9.0} ns/decision, built in {:>9.1} ms",
                    p.entries,
                    p.wildcard_share * 100.0,
                    p.decide_ns,
                    p.build_ms
                );
            }
            Ok(())
        }
        Command::Upstream { listen, cert, key } => upstream::main(listen, &cert, &key),
        Command::Client {
            connect,
            via_connect,
            ca,
        } => client::main(client::Target {
            connect,
            via_connect,
            ca,
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("egressd-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Raises `RLIMIT_NOFILE` to 65,536 (soft and hard): 10,000 held connections take two
/// descriptors each in a proxy. Children inherit it. Raising the hard limit needs
/// `CAP_SYS_RESOURCE`; without it the soft limit goes up to the hard one.
/// Returns the soft limit in force afterwards.
pub fn raise_nofile_limit() -> u64 {
    const WANT: libc::rlim_t = 65_536;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) } != 0 {
        return 1024;
    }
    let raised = libc::rlimit {
        rlim_cur: WANT.max(lim.rlim_cur),
        rlim_max: WANT.max(lim.rlim_max),
    };
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } == 0 {
        return raised.rlim_cur;
    }
    let soft = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const soft) } == 0 {
        return soft.rlim_cur;
    }
    lim.rlim_cur
}
