//! The command line (clap). This module only describes and parses arguments; the work
//! behind each command is in `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Egress firewall for CI runners and AI-agent sandboxes.
///
/// The kernel sends every outbound connection of a sandbox to egressd's proxy, which lets
/// through only allowlisted names and tells you why it refused the rest.
#[derive(Debug, Parser)]
#[command(name = "egressd", version, max_term_width = 100)]
pub struct Cli {
    /// More log output on stderr (-v: debug, -vv: trace). EGRESSD_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command in a sandbox whose outbound connections go through the allowlist.
    ///
    /// Example: sudo egressd exec -d github.com,api.example.com -- ./agent.sh
    Exec(ExecArgs),
    /// Explain the allowlist: check a host against it, or show every entry.
    #[command(subcommand)]
    Allowlist(AllowlistCommand),
    /// The interception CA of a running sandbox.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Internal: the sandbox's PID 1 (started by `exec`, not by users).
    #[command(name = "__sandbox-init", hide = true)]
    SandboxInit(SandboxInitArgs),
}

/// Where the allowlist and the proxy settings come from; shared by `exec` and `allowlist`.
#[derive(Debug, Args, Default)]
pub struct PolicyArgs {
    /// Allowed domains, comma-separated, AWF syntax (`github.com` covers its subdomains,
    /// `*.x.com` does not cover `x.com`, `https://`/`http://` restrict the protocol).
    /// Repeatable.
    #[arg(short = 'd', long = "allow-domains", value_name = "LIST")]
    pub allow_domains: Vec<String>,
    /// File of allowed domains: one or more per line, `#` starts a comment. Repeatable.
    #[arg(long = "allow-domains-file", value_name = "FILE")]
    pub allow_domains_file: Vec<PathBuf>,
    /// Blocked domains, comma-separated; they win over any allow entry. Repeatable.
    #[arg(long = "block-domains", value_name = "LIST")]
    pub block_domains: Vec<String>,
    /// File of blocked domains, same format as --allow-domains-file. Repeatable.
    #[arg(long = "block-domains-file", value_name = "FILE")]
    pub block_domains_file: Vec<PathBuf>,
    /// TOML configuration file (see README: allow_domains, block_domains, ports, rules...).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Resolve HOST to ADDR in the proxy instead of asking DNS (trusted: ADDR may be
    /// private or loopback). Repeatable; IPv6 in brackets: `h.example:[fd00::2]`.
    #[arg(long = "resolve", value_name = "HOST:ADDR")]
    pub resolve: Vec<String>,
    /// DNS server the proxy resolves allowed names with (default: /etc/resolv.conf).
    /// Repeatable.
    #[arg(long = "dns-server", value_name = "ADDR[:PORT]")]
    pub dns_server: Vec<String>,
    /// Extra CA certificates (PEM) to trust for upstream TLS when egressd terminates TLS.
    #[arg(long = "upstream-ca", value_name = "FILE")]
    pub upstream_ca: Option<PathBuf>,
    /// Loopback port the sandbox may reach when it shares the host's network namespace
    /// (`--netns host`). Repeatable.
    #[arg(long = "allow-loopback-port", value_name = "PORT")]
    pub allow_loopback_port: Vec<u16>,
}

/// `egressd exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The allowlist and proxy settings.
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Append one JSON record per connection and per plain-HTTP request to FILE.
    #[arg(long = "audit-log", value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// Run COMMAND as this user (numeric). Default: the user who ran sudo
    /// (SUDO_UID/SUDO_GID).
    #[arg(long = "user", value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// Allow COMMAND to run as root. Root can leave the sandbox, so this is reported as
    /// not enforceable.
    #[arg(long = "allow-root")]
    pub allow_root: bool,
    /// Network namespace for COMMAND: `new` (default: only loopback and egressd's
    /// listeners, no route out), `host` (the host's; loopback goes through policy), or a
    /// path such as /run/netns/NAME.
    #[arg(long = "netns", value_name = "new|host|PATH", default_value = "new")]
    pub netns: String,
    /// Testing only: close the proxy's listeners before COMMAND starts, as if the proxy had
    /// died, with the kernel programs still attached. Proves that connections then fail
    /// instead of going out. Makes the sandbox stricter, never looser.
    #[arg(long = "test-proxy-down", hide = true)]
    pub test_proxy_down: bool,
    /// The command to run, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `egressd ca ...`.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Print the PEM certificate of a running sandbox's interception CA (each `exec` with
    /// `[[intercept]]` rules makes its own; the private key never leaves memory).
    ///
    /// Example: egressd ca export > egressd-ca.pem
    Export(CaExportArgs),
}

/// `egressd ca export`.
#[derive(Debug, Args)]
pub struct CaExportArgs {
    /// The sandbox (`egressd-<pid>`); may be left out when only one is running.
    #[arg(value_name = "SANDBOX")]
    pub sandbox: Option<String>,
}

/// `egressd allowlist ...`.
#[derive(Debug, Subcommand)]
pub enum AllowlistCommand {
    /// Check HOST[:PORT] against the allowlist: exit 0 if allowed, 1 if denied; print the
    /// deciding entry and where it came from.
    ///
    /// Example: egressd allowlist check -d github.com api.github.com:443
    Check(CheckArgs),
    /// Print every entry with its origin, and warn about entries that can never match.
    ///
    /// Example: egressd allowlist show -c egressd.toml
    Show(ShowArgs),
}

/// `egressd allowlist check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The allowlist.
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Decide as plain HTTP instead of HTTPS (TLS).
    #[arg(long = "http")]
    pub http: bool,
    /// The host (name or IP) and optional port (default 443, or 80 with --http).
    #[arg(value_name = "HOST[:PORT]")]
    pub target: String,
}

/// `egressd allowlist show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The allowlist.
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Print JSON instead of a table.
    #[arg(long = "json")]
    pub json: bool,
}

/// Arguments of the hidden sandbox init.
#[derive(Debug, Args)]
pub struct SandboxInitArgs {
    /// User id to run the command as.
    #[arg(long)]
    pub uid: u32,
    /// Group id to run the command as.
    #[arg(long)]
    pub gid: u32,
    /// The command.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Sets up `tracing` on stderr. `EGRESSD_LOG` (an env-filter directive) wins over `-v`.
pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = crate::env::log_filter()
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
