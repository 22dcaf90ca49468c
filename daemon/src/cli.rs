//! The command line (clap). This module only describes and parses arguments; the work
//! behind each command is in `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
    /// Run as a daemon that firewalls cgroups it is told to attach to (a CI job, a
    /// container), controlled through a root-only Unix socket.
    ///
    /// Example: sudo egressd run --config /etc/egressd.toml
    Run(RunArgs),
    /// Ask the daemon to firewall a cgroup: a path, a process's cgroup (`--pid`), or the
    /// job this command runs in (`--job`).
    ///
    /// Example: sudo egressd attach --job
    Attach(AttachArgs),
    /// Ask the daemon to stop firewalling an attachment (by name, or all of them).
    ///
    /// Example: sudo egressd detach job
    Detach(DetachArgs),
    /// Show the daemon's attachments, policy and counters.
    ///
    /// Example: sudo egressd status --wait 10
    Status(StatusArgs),
    /// Ask the daemon to re-read its configuration (the same as SIGHUP); a bad file is
    /// reported and the running policy kept.
    ///
    /// Example: sudo egressd reload
    Reload(ControlArgs),
    /// Check this host (kernel, BTF, cgroup v2, bpffs, privileges, nftables) and say which
    /// backend egressd will use and why.
    ///
    /// Example: sudo egressd doctor
    Doctor(DoctorArgs),
    /// Explain the allowlist: check or explain a host, show every entry, diff two configs.
    ///
    /// Example: egressd allowlist check -d github.com api.github.com
    #[command(subcommand)]
    Allowlist(AllowlistCommand),
    /// The interception CA of a running sandbox.
    ///
    /// Example: egressd ca export > egressd-ca.pem
    #[command(subcommand)]
    Ca(CaCommand),
    /// Summarise audit logs (egressd's JSONL, AWF's access.log and audit.jsonl): what was
    /// reached, what was refused and why, what to add, and whether enforcement was proven.
    ///
    /// Example: egressd audit --suggest -d github.com /var/log/egressd/audit.jsonl
    Audit(AuditArgs),
    /// Print a shell completion script for SHELL on stdout.
    ///
    /// Example: egressd completions bash > /etc/bash_completion.d/egressd
    Completions(CompletionsArgs),
    /// Print the man page (roff) on stdout.
    ///
    /// Example: egressd man > /usr/local/share/man/man1/egressd.1
    Man,
    /// Drop-in for AWF (gh-aw-firewall): `awf [FLAGS] -- COMMAND` and `awf logs ...`. The
    /// binary also answers to the name `awf` (a symlink).
    ///
    /// Example: sudo egressd awf --allow-domains github.com -- curl https://github.com
    #[command(disable_version_flag = true)]
    Awf(Box<AwfArgs>),
    /// Internal: the sandbox's PID 1 (started by `exec`, not by users).
    #[command(name = "__sandbox-init", hide = true)]
    SandboxInit(SandboxInitArgs),
}

/// Where the allowlist and the proxy settings come from; shared by `exec` and `allowlist`.
#[derive(Clone, Debug, Args, Default)]
pub struct PolicyArgs {
    /// Allowed domains, comma-separated, AWF syntax (`github.com` covers its subdomains,
    /// `*.x.com` does not cover `x.com`, `https://`/`http://` restrict the protocol).
    /// Repeatable.
    #[arg(short = 'd', long = "allow-domains", value_name = "LIST")]
    pub allow_domains: Vec<String>,
    /// Do not derive allowlist entries from the GitHub environment (`GITHUB_SERVER_URL`,
    /// `GITHUB_API_URL`). By default, when those are set, egressd allows what a job needs on
    /// that GitHub: github.com, the GHE.com tenant, or the GHES host.
    #[arg(long = "no-github")]
    pub no_github: bool,
    /// Do not add the Copilot API hosts to the derived GitHub allowlist.
    #[arg(long = "no-copilot")]
    pub no_copilot: bool,
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
    /// Record what the policy would deny, but let it through (audit records say
    /// `"decision": "deny", "enforced": false`). For finding the allowlist a job needs.
    #[arg(long = "audit-only")]
    pub audit_only: bool,
    /// How allowed pass-through connections move their bytes: `auto` relays them inside the
    /// kernel (sockmap) where it can and with splice elsewhere; `kernel` refuses to start
    /// without the in-kernel relay; `splice` never uses it. `egressd doctor` says which
    /// this host gets.
    #[arg(
        long = "relay",
        value_name = "auto|kernel|splice",
        default_value = "auto"
    )]
    pub relay: RelayChoice,
}

/// `--otlp-*`: every audit line (traffic and lifecycle) also as an OpenTelemetry log record
/// over OTLP. The audit log file stays the source of truth; what does not reach the
/// collector is counted in the exit summary and `status`, never dropped silently.
#[derive(Clone, Debug, Default, Args)]
pub struct OtlpArgs {
    /// The collector: `http://HOST:4317` (gRPC, h2c), `https://HOST:4317` (gRPC over TLS), or
    /// with `--otlp-protocol http/protobuf` `http(s)://HOST:4318` (`/v1/logs` is added to a
    /// URL without a path).
    #[arg(long = "otlp-endpoint", value_name = "URL")]
    pub endpoint: Option<String>,
    /// How to speak to it.
    #[arg(
        long = "otlp-protocol",
        value_name = "PROTOCOL",
        default_value = "grpc",
        requires = "endpoint"
    )]
    pub protocol: OtlpProtocolArg,
    /// A header sent with every request, `NAME=VALUE` (repeatable). Keep API keys out of the
    /// process list: put them in `EGRESSD_OTLP_HEADERS` (`name=value,name2=value2`, values
    /// percent-encoded), which egressd reads and never passes to a sandbox.
    #[arg(long = "otlp-header", value_name = "NAME=VALUE", requires = "endpoint")]
    pub headers: Vec<String>,
    /// Extra CA certificates (PEM) trusted for an `https://` collector.
    #[arg(long = "otlp-ca", value_name = "FILE", requires = "endpoint")]
    pub ca: Option<PathBuf>,
    /// Records queued while the collector is slow or down; past this, records are dropped
    /// from the export (and counted).
    #[arg(
        long = "otlp-queue",
        value_name = "RECORDS",
        default_value_t = 65_536,
        requires = "endpoint"
    )]
    pub queue: usize,
}

/// `--kubernetes`: the node agent of a Kubernetes node running GitHub's
/// actions-runner-controller. It watches the pods scheduled on this node that match
/// `--pod-selector` and attaches each, at its pod cgroup and in its network namespace, with
/// the policy its `egressd.io/policy` annotation names, else the one named after its runner
/// scale set, else `default`, read from `--policy-dir` (a ConfigMap mounted as a volume);
/// detaches it when it goes.
#[derive(Clone, Debug, Default, Args)]
pub struct KubeArgs {
    /// Be the node agent (needs `--node-name`; the API server is found as kube-rs finds it:
    /// `KUBECONFIG`, else the pod's service account).
    #[arg(long = "kubernetes")]
    pub kubernetes: bool,
    /// This node's name (the DaemonSet passes `spec.nodeName`).
    // No `requires`: a NODE_NAME set for something else must not stop a plain `egressd run`.
    #[arg(long = "node-name", value_name = "NAME", env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// The runner pods: a Kubernetes label selector. ARC's listener pods carry the scale-set
    /// label too, and need the API: the default picks runner pods only.
    #[arg(
        long = "pod-selector",
        value_name = "SELECTOR",
        default_value = "actions.github.com/scale-set-name,app.kubernetes.io/component=runner",
        requires = "kubernetes"
    )]
    pub pod_selector: String,
    /// One policy file per name (a ConfigMap mounted here: key = file name, value = egressd
    /// TOML); read when a pod first needs it, and again whenever the files change (the
    /// kubelet updates a mounted ConfigMap) or on `egressd reload` (SIGHUP).
    #[arg(
        long = "policy-dir",
        value_name = "DIR",
        default_value = "/etc/egressd/policies",
        requires = "kubernetes"
    )]
    pub policy_dir: std::path::PathBuf,
    /// Where pod cgroups are looked for (`kubepods.slice` or `kubepods` below it).
    #[arg(
        long = "cgroup-root",
        value_name = "DIR",
        default_value = "/sys/fs/cgroup",
        requires = "kubernetes"
    )]
    pub cgroup_root: std::path::PathBuf,
}

/// `--otlp-protocol`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OtlpProtocolArg {
    /// OTLP/gRPC.
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

/// `--relay`: the pass-through relay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum RelayChoice {
    /// The in-kernel relay where it loads, else splice.
    #[default]
    Auto,
    /// The in-kernel relay, or refuse to start.
    Kernel,
    /// Always splice.
    Splice,
}

impl RelayChoice {
    /// The relay the proxies get from what the loader offers (`Err`: why the kernel has none):
    /// `Ok(None)` means splice; an error means `kernel` was asked for and is not there.
    pub fn pick<T>(self, offered: Result<T, String>) -> anyhow::Result<Option<T>> {
        match (self, offered) {
            (Self::Splice, _) => Ok(None),
            (Self::Auto, offered) => Ok(offered.ok()),
            (Self::Kernel, Ok(relay)) => Ok(Some(relay)),
            (Self::Kernel, Err(why)) => Err(anyhow::anyhow!(
                "--relay kernel: this kernel cannot relay inside the kernel ({why}); use \
                 --relay auto or splice"
            )),
        }
    }
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
    /// Audit lines also to an OpenTelemetry collector.
    #[command(flatten)]
    pub otlp: OtlpArgs,
    /// Run COMMAND as this user (numeric). Default: the user who ran sudo
    /// (SUDO_UID/SUDO_GID).
    #[arg(long = "user", value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// Refuse to start unless the job's GitHub OIDC token can be minted and verified, so
    /// that every audit record names who triggered the run (same as `[provenance]
    /// required = true`).
    #[arg(long = "require-provenance")]
    pub require_provenance: bool,
    /// Allow COMMAND to run as root. Root can leave the sandbox, so this is reported as
    /// not enforceable.
    #[arg(long = "allow-root")]
    pub allow_root: bool,
    /// Network namespace for COMMAND: `new` (default: only loopback and egressd's
    /// listeners, no route out), `host` (the host's; loopback goes through policy), or a
    /// path such as /run/netns/NAME.
    #[arg(long = "netns", value_name = "new|host|PATH", default_value = "new")]
    pub netns: String,
    /// How connections reach the proxy: `ebpf` (cgroup BPF), `nftables` (rules in the
    /// sandbox's own namespace; `--netns new` only), or `auto` (eBPF, else nftables).
    /// `egressd doctor` says which one this host supports.
    #[arg(long = "backend", value_enum, default_value = "auto")]
    pub backend: Backend,
    /// The sandbox beyond the network: Unix sockets, hidden paths, secrets, seccomp.
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// Testing only: close the proxy's listeners before COMMAND starts, as if the proxy had
    /// died, with the kernel programs still attached. Proves that connections then fail
    /// instead of going out. Makes the sandbox stricter, never looser.
    #[arg(long = "test-proxy-down", hide = true)]
    pub test_proxy_down: bool,
    /// The command to run, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// What the sandbox may reach besides the network (`[sandbox]` in the config file; these
/// flags add to it, or replace its single values).
#[derive(Debug, Args, Default)]
pub struct SandboxArgs {
    /// A Unix socket outside the sandbox it may connect to (an X server, an ssh-agent, a
    /// database); a path ending in `/` allows the sockets under that directory. Repeatable.
    /// Every other host socket is out of the sandbox's reach.
    #[arg(long = "allow-unix", value_name = "PATH")]
    pub allow_unix: Vec<String>,
    /// Show PATH (a file or a directory) empty and read-only in the sandbox, for
    /// credentials on disk the command must not read. Repeatable.
    #[arg(long = "hide", value_name = "PATH")]
    pub hide: Vec<String>,
    /// Pass variable NAME to the sandbox although its name or value looks like a secret
    /// (said on stderr). Repeatable.
    #[arg(long = "pass-env", value_name = "NAME")]
    pub pass_env: Vec<String>,
    /// Credentials on disk the sandbox user can read: `warn` (name each file) or `refuse`
    /// (and do not start).
    #[arg(long = "secrets", value_name = "warn|refuse")]
    pub secrets: Option<String>,
    /// The command's system-call filter: `default` (egressd's profile), `off`, or the path
    /// of an OCI (Docker) JSON profile.
    #[arg(long = "seccomp", value_name = "default|off|FILE")]
    pub seccomp: Option<String>,
}

/// `egressd run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The allowlist and proxy settings (re-read on `reload` and SIGHUP).
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Append one JSON record per connection and per plain-HTTP request to FILE.
    #[arg(long = "audit-log", value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// Audit lines also to an OpenTelemetry collector.
    #[command(flatten)]
    pub otlp: OtlpArgs,
    /// The Kubernetes node agent.
    #[command(flatten)]
    pub kube: KubeArgs,
    /// The control socket (created root-only; requests are checked with SO_PEERCRED).
    #[arg(long = "control-socket", value_name = "PATH", default_value = DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
    /// Attach to this cgroup at start-up, before the socket opens. Repeatable.
    #[arg(long = "attach-cgroup", value_name = "PATH")]
    pub attach_cgroup: Vec<PathBuf>,
    /// Refuse to start unless the job's GitHub OIDC token can be minted and verified.
    #[arg(long = "require-provenance")]
    pub require_provenance: bool,
}

/// Where `egressd run` listens and the control commands connect by default.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/egressd/control.sock";

/// The control socket, for the commands that talk to a running daemon.
#[derive(Debug, Args, Clone)]
pub struct ControlArgs {
    /// The daemon's control socket.
    #[arg(long = "control-socket", value_name = "PATH", default_value = DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
    /// Print the daemon's answer as JSON.
    #[arg(long = "json")]
    pub json: bool,
}

/// `egressd attach`: exactly one of `--cgroup`, `--pid`, `--job`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["cgroup", "pid", "job"])))]
pub struct AttachArgs {
    /// The daemon's control socket.
    #[command(flatten)]
    pub control: ControlArgs,
    /// A cgroup v2 directory, e.g. /sys/fs/cgroup/system.slice/docker-ID.scope.
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// The network namespace the cgroup's processes use (default: the daemon's own).
    #[arg(long = "netns", value_name = "PATH", requires = "cgroup")]
    pub netns: Option<PathBuf>,
    /// The cgroup and network namespace of process PID (a container's init process).
    #[arg(long = "pid", value_name = "PID")]
    pub pid: Option<i32>,
    /// The cgroup and network namespace of the caller: the CI job this step belongs to.
    /// Every later step (and everything they start) is covered; the daemon moves itself
    /// out of that cgroup first.
    #[arg(long = "job")]
    pub job: bool,
    /// With `--job`: leave the container runtime sockets (`[sandbox] runtime_sockets`, Docker's
    /// among them) open to the job's user. By default they are closed to it for as long as
    /// the job is attached, since `docker run --network host` would leave the firewall.
    #[arg(long = "allow-docker", requires = "job")]
    pub allow_docker: bool,
    /// The attachment's name in status and audit records (default: derived from the target).
    #[arg(long = "name", value_name = "NAME")]
    pub name: Option<String>,
}

/// `egressd detach`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["name", "all"])))]
pub struct DetachArgs {
    /// The daemon's control socket.
    #[command(flatten)]
    pub control: ControlArgs,
    /// The attachment to release (as `egressd status` names it).
    #[arg(value_name = "NAME")]
    pub name: Option<String>,
    /// Release every attachment.
    #[arg(long = "all")]
    pub all: bool,
}

/// `egressd doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print the checks as JSON.
    #[arg(long = "json")]
    pub json: bool,
}

/// `egressd status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The daemon's control socket.
    #[command(flatten)]
    pub control: ControlArgs,
    /// Wait up to SECONDS for the daemon to answer (for scripts that just started it).
    #[arg(long = "wait", value_name = "SECONDS")]
    pub wait: Option<u64>,
}

/// `egressd awf` (AWF's command line, `shared/reference/awf.md` §2). Flags AWF has that need
/// Docker are refused by name before parsing (`commands/awf/flags.rs`).
#[derive(Debug, Args)]
#[command(subcommand_negates_reqs = true, args_conflicts_with_subcommands = true)]
pub struct AwfArgs {
    /// `awf logs ...`.
    #[command(subcommand)]
    pub logs: Option<AwfCommand>,
    /// AWF configuration file (JSON; `-` for stdin): network.allowDomains, blockDomains,
    /// logging.proxyLogsDir, auditDir...
    #[arg(long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Allowed domains, comma-separated (AWF syntax). Repeatable.
    #[arg(short = 'd', long = "allow-domains", value_name = "LIST")]
    pub allow_domains: Vec<String>,
    /// File of allowed domains. Repeatable.
    #[arg(long = "allow-domains-file", value_name = "FILE")]
    pub allow_domains_file: Vec<PathBuf>,
    /// Blocked domains, comma-separated. Repeatable.
    #[arg(long = "block-domains", value_name = "LIST")]
    pub block_domains: Vec<String>,
    /// File of blocked domains. Repeatable.
    #[arg(long = "block-domains-file", value_name = "FILE")]
    pub block_domains_file: Vec<PathBuf>,
    /// Set KEY=VALUE in the command's environment. Repeatable.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Pass egressd's environment through (credentials and proxy settings are still removed).
    #[arg(long = "env-all")]
    pub env_all: bool,
    /// Do not pass NAME (with --env-all). Repeatable.
    #[arg(long = "exclude-env", value_name = "NAME")]
    pub exclude_env: Vec<String>,
    /// File of KEY=VALUE lines for the command's environment.
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Option<PathBuf>,
    /// host:container[:ro|rw]; only identity mappings (the command runs on the host).
    /// (AWF's `-v` short form is egressd's `--verbose`.)
    #[arg(long = "mount", value_name = "HOST:CONTAINER[:MODE]")]
    pub mount: Vec<String>,
    /// The command's working directory.
    #[arg(long = "container-workdir", value_name = "DIR")]
    pub container_workdir: Option<PathBuf>,
    /// debug, info, warn or error.
    #[arg(long = "log-level", value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Where access.log and audit.jsonl go (default: $TMPDIR/squid-logs-<ms>).
    #[arg(long = "proxy-logs-dir", value_name = "DIR")]
    pub proxy_logs_dir: Option<PathBuf>,
    /// Where policy-manifest.json goes (default: $TMPDIR/awf-<ms>/audit; env AWF_AUDIT_DIR).
    #[arg(long = "audit-dir", value_name = "DIR", env = "AWF_AUDIT_DIR")]
    pub audit_dir: Option<PathBuf>,
    /// Kill the command after this many minutes (exit 124).
    #[arg(long = "agent-timeout", value_name = "MINUTES")]
    pub agent_timeout: Option<u64>,
    /// api-proxy: the `OpenAI` upstream host (env `OPENAI_API_TARGET`); added to the allowlist.
    #[arg(long = "openai-api-target", value_name = "HOST")]
    pub openai_api_target: Option<String>,
    /// api-proxy: path prefix for `OpenAI` requests (env `OPENAI_API_BASE_PATH`).
    #[arg(long = "openai-api-base-path", value_name = "PATH")]
    pub openai_api_base_path: Option<String>,
    /// api-proxy: header carrying the raw `OpenAI` key (env `AWF_OPENAI_AUTH_HEADER`).
    #[arg(long = "openai-api-auth-header", value_name = "NAME")]
    pub openai_api_auth_header: Option<String>,
    /// api-proxy: the Anthropic upstream host (env `ANTHROPIC_API_TARGET`).
    #[arg(long = "anthropic-api-target", value_name = "HOST")]
    pub anthropic_api_target: Option<String>,
    /// api-proxy: path prefix for Anthropic requests (env `ANTHROPIC_API_BASE_PATH`).
    #[arg(long = "anthropic-api-base-path", value_name = "PATH")]
    pub anthropic_api_base_path: Option<String>,
    /// api-proxy: header carrying the raw Anthropic key (env `AWF_ANTHROPIC_AUTH_HEADER`).
    #[arg(long = "anthropic-api-auth-header", value_name = "NAME")]
    pub anthropic_api_auth_header: Option<String>,
    /// api-proxy: the Copilot API host (env `COPILOT_API_TARGET`; default from
    /// `GITHUB_SERVER_URL`).
    #[arg(long = "copilot-api-target", value_name = "HOST")]
    pub copilot_api_target: Option<String>,
    /// api-proxy: the Gemini upstream host (env `GEMINI_API_TARGET`).
    #[arg(long = "gemini-api-target", value_name = "HOST")]
    pub gemini_api_target: Option<String>,
    /// api-proxy: path prefix for Gemini requests (env `GEMINI_API_BASE_PATH`).
    #[arg(long = "gemini-api-base-path", value_name = "PATH")]
    pub gemini_api_base_path: Option<String>,
    /// api-proxy: the Vertex AI upstream host (env `VERTEX_API_TARGET`).
    #[arg(long = "vertex-api-target", value_name = "HOST")]
    pub vertex_api_target: Option<String>,
    /// api-proxy: path prefix for Vertex AI requests (env `VERTEX_API_BASE_PATH`).
    #[arg(long = "vertex-api-base-path", value_name = "PATH")]
    pub vertex_api_base_path: Option<String>,
    /// api-proxy: requests per minute per provider (429 beyond; turns rate limiting on, the
    /// other limits then default to 10000/h and 52428800 bytes/min).
    #[arg(long = "rate-limit-rpm", value_name = "N")]
    pub rate_limit_rpm: Option<u32>,
    /// api-proxy: requests per hour per provider (default 10000 once limiting is on).
    #[arg(long = "rate-limit-rph", value_name = "N")]
    pub rate_limit_rph: Option<u32>,
    /// api-proxy: request bytes per minute per provider (default 52428800 once limiting is on).
    #[arg(long = "rate-limit-bytes-pm", value_name = "N")]
    pub rate_limit_bytes_pm: Option<u64>,
    /// api-proxy: no rate limits (the default; wins over the other rate-limit flags).
    #[arg(long = "no-rate-limit")]
    pub no_rate_limit: bool,
    /// Accepted, no effect: egressd uses no images.
    #[arg(long = "skip-pull")]
    pub skip_pull: bool,
    /// Accepted: the command already shares egressd's terminal.
    #[arg(long = "tty")]
    pub tty: bool,
    /// Deprecated in AWF (the api-proxy is always on); accepted, no effect.
    #[arg(long = "enable-api-proxy", hide = true)]
    pub enable_api_proxy: bool,
    /// Isolation is always on; accepted, no effect.
    #[arg(long = "network-isolation", hide = true)]
    pub network_isolation: bool,
    /// Ignored with a warning, as AWF does without --legacy-security.
    #[arg(long = "no-network-isolation", hide = true)]
    pub no_network_isolation: bool,
    /// Print the AWF version egressd is compatible with.
    #[arg(short = 'V', long = "version")]
    pub version: bool,
    /// egressd extension: the proxy resolves HOST to ADDR. Repeatable.
    #[arg(long = "resolve", value_name = "HOST:ADDR")]
    pub resolve: Vec<String>,
    /// egressd extension: DNS server for allowed names. Repeatable.
    #[arg(long = "dns-server", value_name = "ADDR[:PORT]")]
    pub dns_server: Vec<String>,
    /// egressd extension: extra CA certificates (PEM) trusted for the api-proxy's upstreams.
    #[arg(long = "upstream-ca", value_name = "FILE")]
    pub upstream_ca: Option<PathBuf>,
    /// egressd extension: run the command as UID[:GID] (default: the user who ran sudo).
    #[arg(long = "user", value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// egressd extension: also write egressd's own JSONL audit log to FILE.
    #[arg(long = "audit-log", value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// The command, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `awf logs`.
#[derive(Debug, Subcommand)]
pub enum AwfCommand {
    /// Show the proxy's log (`awf logs [summary|stats|audit]`).
    ///
    /// Example: egressd awf logs --source /tmp/gh-aw/sandbox/firewall/logs --format json
    Logs(AwfLogsArgs),
}

/// `awf logs [summary|stats|audit]`.
#[derive(Debug, Args)]
pub struct AwfLogsArgs {
    /// summary, stats or audit; none: the log lines.
    #[command(subcommand)]
    pub view: Option<AwfLogsView>,
    /// raw, pretty or json.
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,
    /// A directory holding access.log / audit.jsonl (default: $AWF_LOGS_DIR, then the newest
    /// $TMPDIR/squid-logs-*).
    #[arg(long, value_name = "DIR", global = true)]
    pub source: Option<PathBuf>,
    /// List the log sources found.
    #[arg(long)]
    pub list: bool,
    /// Keep printing lines as they are appended (until Ctrl-C), like `tail -f`.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// AWF shows the process of each request with -f; egressd's logs do not carry it.
    #[arg(long = "with-pid", requires = "follow")]
    pub with_pid: bool,
}

/// The views of `awf logs`.
#[derive(Debug, Subcommand)]
pub enum AwfLogsView {
    /// Counts per domain (default format pretty).
    ///
    /// Example: egressd awf logs stats --format json
    Stats(AwfViewArgs),
    /// Same as stats, markdown by default (for $GITHUB_STEP_SUMMARY).
    ///
    /// Example: egressd awf logs summary >> "$GITHUB_STEP_SUMMARY"
    Summary(AwfViewArgs),
    /// Each request with the policy rule that decided it (needs policy-manifest.json).
    ///
    /// Example: egressd awf logs audit --decision denied --format json
    Audit(AwfAuditArgs),
}

/// `--format` of `awf logs stats|summary`.
#[derive(Debug, Args)]
pub struct AwfViewArgs {
    /// json, markdown or pretty.
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,
}

/// `awf logs audit`.
#[derive(Debug, Args)]
pub struct AwfAuditArgs {
    /// json or pretty.
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,
    /// Only entries decided by this rule id.
    #[arg(long, value_name = "ID")]
    pub rule: Option<String>,
    /// Only entries for this domain.
    #[arg(long, value_name = "DOMAIN")]
    pub domain: Option<String>,
    /// allowed or denied.
    #[arg(long, value_name = "DECISION")]
    pub decision: Option<String>,
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
    /// Explain HOST[:PORT]: every entry that matched or nearly matched (same registrable
    /// domain, wrong scheme or port, a wildcard that needs a subdomain, a dead entry) and why
    /// the decision came out as it did. Exit 0 if allowed, 1 if denied.
    ///
    /// Example: egressd allowlist explain -d '*.github.com' github.com
    Explain(ExplainArgs),
    /// Compare two configurations: entries added and removed, and for each --host whether
    /// its decision changes. Exit 0 when nothing differs, 1 otherwise.
    ///
    /// Example: egressd allowlist diff old.toml new.toml --host api.github.com
    Diff(DiffArgs),
    /// Find risky or useless entries: wildcards over suffixes anyone can register under
    /// (`*.blob.core.windows.net`, `*.ghe.com`, `*.github.io`...), apex/wildcard confusion,
    /// entries that can never match, entries another entry already covers. Exit 1 when a
    /// finding is a warning or an error (or any finding, with --strict).
    ///
    /// Example: egressd allowlist lint -c egressd.toml
    Lint(LintArgs),
}

/// `egressd allowlist lint`.
#[derive(Debug, Args)]
pub struct LintArgs {
    /// The allowlist.
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Print JSON instead of text.
    #[arg(long = "json")]
    pub json: bool,
    /// Fail on notes too, not only on warnings and errors.
    #[arg(long = "strict")]
    pub strict: bool,
}

/// `egressd audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Audit logs to read (format detected per line: egressd JSONL, AWF access.log or AWF
    /// audit.jsonl); `-` for stdin.
    #[arg(value_name = "LOG", required = true)]
    pub logs: Vec<PathBuf>,
    /// The policy the run used (optional): entries never hit, policy-hash check, better
    /// suggestions. Same options as `exec`.
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Only records at or after this time: RFC 3339 (`2026-11-21T21:58:00Z`) or relative to
    /// now (`30m`, `2h`, `1d`).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only records before this time (same forms as --since).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Only records with this decision.
    #[arg(long, value_name = "allow|deny")]
    pub decision: Option<DecisionFilter>,
    /// Only records for this domain and its subdomains.
    #[arg(long, value_name = "DOMAIN")]
    pub domain: Option<String>,
    /// Only records of this sandbox (`egressd-<pid>`).
    #[arg(long, value_name = "SANDBOX")]
    pub sandbox: Option<String>,
    /// Output format (default: table).
    #[arg(long, value_name = "FORMAT", default_value = "table")]
    pub format: AuditFormat,
    /// Suggest the smallest allowlist additions covering the denied names, each with a
    /// verdict, and (with a policy) entries never hit.
    #[arg(long)]
    pub suggest: bool,
    /// Also append the markdown report to $GITHUB_STEP_SUMMARY (GitHub Actions job summary).
    #[arg(long = "step-summary")]
    pub step_summary: bool,
    /// Keep reading the log as it grows and print each new record; stops at the run's
    /// disarm record (or Ctrl-C), then prints the report.
    #[arg(long)]
    pub follow: bool,
    /// Exit 1 unless enforcement is proven (an arm record, no records outside armed windows).
    #[arg(long = "require-proof")]
    pub require_proof: bool,
    /// Rows per view in table and markdown output (JSON has every row).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,
    /// Add a view with one row per node (`k8s.node`, else the log's arm host, else the log
    /// file), repository or actor: counts, bytes, first/last seen, top denied names.
    #[arg(long = "group-by", value_name = "node|repo|actor")]
    pub group_by: Option<crate::commands::audit::GroupBy>,
}

/// `--decision`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DecisionFilter {
    /// Allowed records.
    Allow,
    /// Denied records.
    Deny,
}

/// `--format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AuditFormat {
    /// A readable table (colour on a terminal unless NO_COLOR is set).
    Table,
    /// One JSON document.
    Json,
    /// GitHub-flavoured markdown.
    Markdown,
}

/// `egressd completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

/// `egressd allowlist explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
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

/// `egressd allowlist diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The old configuration: a TOML file (`.toml`) or a domains file (one entry per line).
    #[arg(value_name = "A")]
    pub old: PathBuf,
    /// The new configuration, same forms.
    #[arg(value_name = "B")]
    pub new: PathBuf,
    /// A host (`HOST[:PORT]`) whose decision to compare; repeatable.
    #[arg(long = "host", value_name = "HOST[:PORT]")]
    pub hosts: Vec<String>,
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
    /// The file holding the filesystem and socket confinement (`sandbox::confine::PlanFile`).
    #[arg(long)]
    pub confine: Option<PathBuf>,
    /// Make a terminal of the sandbox's own and install it as these standard descriptors
    /// (`0,1,2`); its master goes to egressd over descriptor 3 (`sandbox::pty`).
    #[arg(long)]
    pub pty: Option<String>,
    /// The compiled seccomp filter (`sandbox::seccomp::Program::to_arg`), installed in the
    /// command's process right before `execve`.
    #[arg(long = "seccomp-bpf")]
    pub seccomp_bpf: Option<String>,
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

/// How the kernel sends a sandbox's connections to the proxy (`--backend`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// eBPF if the kernel allows it, else nftables (with `--netns new`), saying so.
    #[default]
    Auto,
    /// cgroup BPF programs (the default where available).
    Ebpf,
    /// nftables rules in the sandbox's own network namespace (`--netns new` only).
    Nftables,
}

#[cfg(test)]
mod tests {
    use super::RelayChoice;

    #[test]
    fn relay_choice_takes_what_the_kernel_offers_or_says_why_not() {
        let offered: Result<u8, String> = Ok(1);
        let refused: Result<u8, String> = Err("no sockmap".to_owned());
        assert_eq!(RelayChoice::Auto.pick(offered.clone()).unwrap(), Some(1));
        assert_eq!(RelayChoice::Auto.pick(refused.clone()).unwrap(), None);
        assert_eq!(RelayChoice::Kernel.pick(offered.clone()).unwrap(), Some(1));
        let err = RelayChoice::Kernel
            .pick(refused.clone())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no sockmap") && err.contains("--relay kernel"),
            "{err}"
        );
        assert_eq!(RelayChoice::Splice.pick(offered).unwrap(), None);
        assert_eq!(RelayChoice::Splice.pick(refused).unwrap(), None);
    }
}
