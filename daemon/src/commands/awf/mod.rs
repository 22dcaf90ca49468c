//! `egressd awf` / `awf`: a drop-in for AWF's command line (`shared/reference/awf.md` §1, §2,
//! §7). The command runs on the host in an egressd sandbox (`exec::run_plan`), not in a
//! container; the proxy writes AWF-format logs besides its own (`egressd_proxy::AwfLog`), and
//! `awf logs ...` reads them back (`logs.rs`).
//!
//! Messages follow AWF: `[INFO]`/`[WARN]`/`[ERROR]`/`[SUCCESS]` lines on stderr, ending with
//! `Process exiting with code: N`. Exit codes: the command's own, 124 on `--agent-timeout`,
//! 1 for any error of ours (validation, configuration, sandbox set-up).

mod apiproxy;
mod config;
mod flags;
pub(crate) mod logs;
mod manifest;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use egressd_proxy::AwfLog;

use super::exec::{self, Plan};
use crate::cli::{AwfArgs, AwfCommand, AwfLogsArgs, AwfLogsView, PolicyArgs};
use crate::sandbox::netns::NetnsMode;
use crate::{Failure, env, policy};

pub use flags::precheck;

/// The AWF version egressd's command line and logs are compatible with (`awf --version`, and
/// `audit/v<version>` in `audit.jsonl` unless the config's `container.imageTag` names one).
pub const AWF_VERSION: &str = "0.28.4";

/// `argv` as `egressd` parses it: `awf ARGS` (invoked through a link named `awf`) becomes
/// `egressd awf ARGS`; also says whether this is an `awf` command line.
pub fn argv_for(mut argv: Vec<OsString>) -> (Vec<OsString>, bool) {
    let invoked_as_awf = argv
        .first()
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|n| n == "awf");
    if invoked_as_awf {
        argv.splice(0..1, ["egressd".into(), "awf".into()]);
    }
    let awf = argv.get(1).is_some_and(|a| a == "awf");
    (argv, awf)
}

/// Runs `awf ...`; returns the exit code (errors are reported here, AWF-style).
pub fn run(args: AwfArgs) -> Result<u8, Failure> {
    if args.version {
        println!("{AWF_VERSION}");
        return Ok(0);
    }
    if let Some(AwfCommand::Logs(logs)) = args.logs {
        return Ok(logs_command(&logs));
    }
    let mut out = Messages::new(args.log_level.as_deref());
    let code = match front_end(args, &mut out) {
        Ok(code) => code,
        Err(message) => {
            out.error(&format!("Fatal error: {message}"));
            1
        }
    };
    eprintln!("Process exiting with code: {code}");
    Ok(code)
}

/// AWF's log lines on stderr, filtered by `--log-level`.
struct Messages {
    level: u8,
}

impl Messages {
    fn new(level: Option<&str>) -> Self {
        let level = match level {
            Some("debug") => 0,
            Some("warn") => 2,
            Some("error") => 3,
            _ => 1,
        };
        Self { level }
    }
    fn info(&self, m: &str) {
        if self.level <= 1 {
            eprintln!("[INFO] {m}");
        }
    }
    fn success(&self, m: &str) {
        if self.level <= 1 {
            eprintln!("[SUCCESS] {m}");
        }
    }
    fn warn(&self, m: &str) {
        if self.level <= 2 {
            eprintln!("[WARN] {m}");
        }
    }
    fn error(&self, m: &str) {
        eprintln!("[ERROR] {m}");
    }
}

/// AWF's rate limits (§5.5): off unless a `--rate-limit-*` flag is given; then the others
/// take their defaults. `--no-rate-limit` turns them off.
fn rate_limit(args: &AwfArgs) -> Option<egressd_config::awf::apiproxy::RateLimit> {
    let any = args.rate_limit_rpm.is_some()
        || args.rate_limit_rph.is_some()
        || args.rate_limit_bytes_pm.is_some();
    if args.no_rate_limit || !any {
        return None;
    }
    let defaults = egressd_config::awf::apiproxy::RateLimit::default();
    Some(egressd_config::awf::apiproxy::RateLimit {
        per_minute: args.rate_limit_rpm.unwrap_or(defaults.per_minute),
        per_hour: args.rate_limit_rph.unwrap_or(defaults.per_hour),
        bytes_per_minute: args
            .rate_limit_bytes_pm
            .unwrap_or(defaults.bytes_per_minute),
    })
}

/// The `--*-api-target`, `--*-api-base-path` and `--*-api-auth-header` flags given, as the
/// environment variables they stand for (reference §2.1).
fn api_target_flags(args: &AwfArgs) -> Vec<(&'static str, &String)> {
    [
        ("OPENAI_API_TARGET", &args.openai_api_target),
        ("OPENAI_API_BASE_PATH", &args.openai_api_base_path),
        ("AWF_OPENAI_AUTH_HEADER", &args.openai_api_auth_header),
        ("ANTHROPIC_API_TARGET", &args.anthropic_api_target),
        ("ANTHROPIC_API_BASE_PATH", &args.anthropic_api_base_path),
        ("AWF_ANTHROPIC_AUTH_HEADER", &args.anthropic_api_auth_header),
        ("COPILOT_API_TARGET", &args.copilot_api_target),
        ("GEMINI_API_TARGET", &args.gemini_api_target),
        ("GEMINI_API_BASE_PATH", &args.gemini_api_base_path),
        ("VERTEX_API_TARGET", &args.vertex_api_target),
        ("VERTEX_API_BASE_PATH", &args.vertex_api_base_path),
    ]
    .into_iter()
    .filter_map(|(var, value)| Some((var, value.as_ref()?)))
    .collect()
}

/// Validates everything, runs the command, reports; `Err` is a fatal error of ours.
fn front_end(args: AwfArgs, out: &mut Messages) -> Result<u8, String> {
    let file = match &args.config {
        Some(path) => read_config(path)?,
        None => config::AwfConfig::default(),
    };
    if args.log_level.is_none()
        && let Some(level) = &file.log_level
    {
        *out = Messages::new(Some(level));
    }
    if let Some(level) = &args.log_level
        && !["debug", "info", "warn", "error"].contains(&level.as_str())
    {
        return Err(format!(
            "--log-level {level}: expected debug, info, warn or error"
        ));
    }
    for w in &file.warnings {
        out.warn(w);
    }
    if args.no_network_isolation {
        out.warn("--no-network-isolation is ignored: the sandbox is always isolated");
    }
    if args.command.is_empty() {
        return Err("no command given: awf [options] -- <command>".to_owned());
    }
    // Explicit flags win over the file (AWF's precedence); topology peers are added.
    let mut allow = if args.allow_domains.is_empty() {
        file.allow_domains.clone()
    } else {
        split_lists(&args.allow_domains)
    };
    allow.extend(file.topology_attach.iter().cloned());
    // The api-proxy's settings: our environment, then the flags (which win).
    let mut api_env = env::api_proxy_env();
    for (var, value) in api_target_flags(&args) {
        api_env.vars.insert(var.to_owned(), value.clone());
        if var == "COPILOT_API_TARGET" {
            api_env.copilot_target = Some(value.clone());
        }
    }
    // What AWF adds by itself: explicit api-proxy targets, GHE.com tenant hosts, GHES hosts
    // named by ENGINE_API_TARGET (reference §2.3).
    let github = env::github_env();
    let mut added = apiproxy::explicit_targets(&api_env)?;
    added.extend(apiproxy::github_additions(
        github.as_ref(),
        api_env.vars.get("ENGINE_API_TARGET").map(String::as_str),
    ));
    added.retain(|d| !allow.contains(d));
    added.dedup();
    if !added.is_empty() {
        out.info(&format!(
            "Added to the allowlist (API targets, GitHub deployment): {}",
            added.join(", ")
        ));
        allow.extend(added);
    }
    let block = if args.block_domains.is_empty() {
        file.block_domains.clone()
    } else {
        split_lists(&args.block_domains)
    };
    let policy_args = PolicyArgs {
        allow_domains: vec![allow.join(",")]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect(),
        allow_domains_file: args.allow_domains_file.clone(),
        block_domains: vec![block.join(",")]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect(),
        block_domains_file: args.block_domains_file.clone(),
        // AWF adds nothing by itself (reference §3.3): no GitHub derivation.
        no_github: true,
        no_copilot: true,
        resolve: args.resolve.clone(),
        dns_server: args.dns_server.clone(),
        upstream_ca: args.upstream_ca.clone(),
        ..PolicyArgs::default()
    };
    // GHES hosts usually resolve inside the company network: they may be dialled at
    // private-network addresses (never loopback, link-local or metadata).
    let ghes = apiproxy::ghes_hosts(
        github.as_ref(),
        api_env.vars.get("ENGINE_API_TARGET").map(String::as_str),
    )
    .into_iter()
    .map(|host| {
        let mut entry = egressd_config::Entry::parse(
            &host,
            egressd_config::List::Allow,
            egressd_config::Origin::Derived("awf:ENGINE_API_TARGET".to_owned()),
        )
        .map_err(|e| format!("ENGINE_API_TARGET: {e}"))?;
        entry.private_network = true;
        Ok(entry)
    })
    .collect::<Result<Vec<_>, String>>()?;
    let mut config = policy::build_with(&policy_args, args.audit_log.clone(), ghes)
        .map_err(|e| format!("{e:#}"))?;
    // The api-proxy (172.30.0.30:10000-10004): provider keys from our environment become
    // credentials; the command gets base URLs and placeholders (reference §5.2, §5.3).
    let configured =
        apiproxy::configure(&mut config, &api_env, github.as_ref(), &env::github_run())?;
    config.placeholders.extend(configured.placeholders);
    if let Some(api) = config.api_proxy.as_mut() {
        api.rate_limit = rate_limit(&args);
        api.budget = file.budget;
    }
    check_mounts(&args.mount, out)?;
    let cwd = match &args.container_workdir {
        Some(dir) => Some(
            std::fs::canonicalize(dir)
                .map_err(|e| format!("--container-workdir {}: {e}", dir.display()))?,
        ),
        None => None,
    };
    let (uid, gid) =
        exec::target_user(args.user.as_deref(), false).map_err(|f| format!("{:#}", f.error))?;
    let env = command_env(&args, uid, &config, out)?;

    let stamp = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    let tmp = std::env::temp_dir();
    let logs_dir = args
        .proxy_logs_dir
        .clone()
        .or(file.proxy_logs_dir.clone())
        .unwrap_or_else(|| tmp.join(format!("squid-logs-{stamp}")));
    let audit_dir = args
        .audit_dir
        .clone()
        .or(file.audit_dir.clone())
        .unwrap_or_else(|| tmp.join(format!("awf-{stamp}")).join("audit"));
    let logs_dir = make_dir(&logs_dir)?;
    let audit_dir = make_dir(&audit_dir)?;
    let manifest = manifest::Manifest::build(
        &allow,
        &block,
        &file.topology_attach,
        time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    );
    write_world_readable(
        &audit_dir.join("policy-manifest.json"),
        &serde_json::to_vec_pretty(&manifest).unwrap_or_default(),
    )?;
    let version = file.version.as_deref().unwrap_or(AWF_VERSION);
    let awf_log = AwfLog::open(&logs_dir, version)
        .map_err(|e| format!("opening the logs in {}: {e}", logs_dir.display()))?;

    if allow.is_empty() {
        out.info("Allowed domains: (none: all egress is denied)");
    } else {
        out.info(&format!("Allowed domains: {}", allow.join(", ")));
    }
    if !block.is_empty() {
        out.info(&format!("Blocked domains: {}", block.join(", ")));
    }
    out.info(&format!("Proxy logs: {}", logs_dir.display()));
    out.info(&format!("Audit artifacts: {}", audit_dir.display()));
    if let Some(api) = &config.api_proxy {
        let configured: Vec<&str> = api
            .routes
            .iter()
            .filter(|r| r.credential.is_some())
            .map(|r| r.provider.name())
            .collect();
        out.info(&format!(
            "API proxy at api-proxy (172.30.0.30) ports 10000-10004; providers with a key: {}",
            if configured.is_empty() {
                "none".to_owned()
            } else {
                configured.join(", ")
            }
        ));
    }
    out.info("Running the command in an egressd sandbox (on the host, no containers)");

    let outcome = exec::run_plan(Plan {
        config,
        mode: NetnsMode::parse("new").map_err(|e| format!("{e:#}"))?,
        uid,
        gid,
        command: shell_command(&args.command),
        env: Some(env),
        cwd,
        timeout: args.agent_timeout.map(|m| Duration::from_secs(m * 60)),
        awf: Some(awf_log),
        test_proxy_down: false,
        backend: crate::cli::Backend::Auto,
        relay: crate::cli::RelayChoice::Auto,
        otlp: crate::cli::OtlpArgs::default(),
    })
    .map_err(|f| format!("{:#}", f.error))?;

    let code = outcome.code;
    if outcome.timed_out {
        out.warn(&format!(
            "Agent timed out after {} minutes",
            args.agent_timeout.unwrap_or(0)
        ));
    }
    if code != 0 {
        report_blocked(&logs_dir, &allow, out);
    }
    if code == 0 {
        out.success("Command completed successfully");
    } else {
        out.warn(&format!("Command completed with exit code: {code}"));
    }
    Ok(code)
}

/// Reads `--config` (`-`: stdin). JSON only for now.
fn read_config(path: &Path) -> Result<config::AwfConfig, String> {
    let shown = path.display();
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).map_err(|e| format!("reading stdin: {e}"))?
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("--config {shown}: {e}"))?
    };
    // JSON or YAML by extension, as AWF chooses (stdin is JSON). YAML is read into the same
    // tree, so the closed-world checks are the same.
    let text = if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
        yaml_to_json(&text).map_err(|e| format!("--config {shown}: {e}"))?
    } else {
        text
    };
    config::parse(&text).map_err(|e| format!("--config {shown}: {e}"))
}

/// A YAML document as JSON text; errors say where (`line L column C`).
fn yaml_to_json(text: &str) -> Result<String, String> {
    let value: serde_json::Value =
        serde_norway::from_str(text).map_err(|e| format!("invalid YAML: {e}"))?;
    serde_json::to_string(&value).map_err(|e| format!("invalid YAML: {e}"))
}

fn split_lists(lists: &[String]) -> Vec<String> {
    lists
        .iter()
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `--mount host:container[:ro|rw]`: the command runs on the host, so only mounts that map a
/// path to itself (or to `/host<path>`, AWF's chroot view of the same path) can be honoured.
fn check_mounts(mounts: &[String], out: &Messages) -> Result<(), String> {
    for m in mounts {
        let mut parts = m.splitn(3, ':');
        let (host, container, mode) = (parts.next(), parts.next(), parts.next());
        let (Some(host), Some(container)) = (host, container) else {
            return Err(format!("--mount {m}: expected host:container[:ro|rw]"));
        };
        if !matches!(mode, None | Some("ro" | "rw")) {
            return Err(format!("--mount {m}: the mode must be ro or rw"));
        }
        let same = container == host || container.strip_prefix("/host") == Some(host);
        if !same {
            return Err(format!(
                "--mount {m} cannot be honoured: egressd runs the command on the host, where \
                 {host} is not at {container}; use the host path in the command instead"
            ));
        }
        if mode == Some("ro") {
            out.warn(&format!(
                "--mount {m}: the command sees the host path itself; read-only is not \
                 enforced beyond file permissions"
            ));
        }
    }
    Ok(())
}

/// The command's environment (reference §2.1, §4.3): `--env-all` passes ours minus the
/// credentials egressd always removes and `--exclude-env`; without it only the basics pass.
/// Then `--env-file`, then `--env` (highest precedence).
fn command_env(
    args: &AwfArgs,
    uid: u32,
    config: &egressd_config::Config,
    out: &Messages,
) -> Result<Vec<(OsString, OsString)>, String> {
    const BASICS: &[&str] = &[
        "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "TERM", "TZ", "TMPDIR", "CI",
    ];
    let scrubbed = env::sandbox_env(
        uid,
        &env::credential_vars(config),
        &[],
        &config.sandbox.pass_env,
    );
    // Said once, names only: with --env-all the agent would otherwise have had them.
    if args.env_all && !scrubbed.removed.is_empty() {
        out.warn(&format!(
            "Not passed to the agent (they look like secrets; pass one with --env NAME=value): {}",
            scrubbed.removed.join(", ")
        ));
    }
    let mut env = scrubbed.vars;
    env.retain(|(k, _)| {
        let k = k.to_string_lossy();
        if args.exclude_env.iter().any(|x| *x == k) {
            return false;
        }
        args.env_all
            || BASICS.contains(&k.as_ref())
            || k.starts_with("LC_")
            || k.starts_with("GITHUB_")
            || k.starts_with("RUNNER_")
    });
    let mut set = Vec::new();
    if let Some(path) = &args.env_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--env-file {}: {e}", path.display()))?;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            set.push(parse_kv(line, "--env-file")?);
        }
    }
    for kv in &args.env {
        set.push(parse_kv(kv, "--env")?);
    }
    // GH_HOST names a GHE.com or GHES server for `gh` (as AWF sets it, reference §2.3);
    // on github.com it is removed. An explicit --env/--env-file value wins.
    env.retain(|(k, _)| k != "GH_HOST");
    if let Some(host) = env::gh_host(env::github_env().as_ref()) {
        env.push(("GH_HOST".into(), host.into()));
    }
    for (k, v) in set {
        env.retain(|(name, _)| *name != *k);
        env.push((k.into(), v.into()));
    }
    Ok(env)
}

fn parse_kv(kv: &str, flag: &str) -> Result<(String, String), String> {
    match kv.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{flag} {kv:?}: expected KEY=VALUE")),
    }
}

/// AWF passes one argument to the shell unmodified and shell-quotes several.
fn shell_command(command: &[String]) -> Vec<String> {
    let script = if let [one] = command {
        one.clone()
    } else {
        command
            .iter()
            .map(|a| {
                if !a.is_empty()
                    && a.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
                {
                    a.clone()
                } else {
                    format!("'{}'", a.replace('\'', r"'\''"))
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let shell = if Path::new("/bin/bash").exists() {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    vec![shell.to_owned(), "-c".to_owned(), script]
}

/// Creates `dir` (mode 0755, world-readable as AWF makes its artifacts); its absolute path.
fn make_dir(dir: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))
}

fn write_world_readable(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, bytes).map_err(|e| format!("writing {}: {e}", path.display()))?;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644));
    Ok(())
}

/// AWF's `reportBlockedDomains` (reference §7), from the access.log just written.
fn report_blocked(logs_dir: &Path, allow: &[String], out: &Messages) {
    let Ok(text) = std::fs::read_to_string(logs_dir.join("access.log")) else {
        return;
    };
    let mut blocked: Vec<(String, String)> = Vec::new();
    for e in text.lines().filter_map(logs::parse_access) {
        if e.allowed || e.domain == "-" {
            continue;
        }
        let target = if e.https {
            e.url.clone()
        } else {
            format!("{}:80", e.domain)
        };
        let port = target.rsplit_once(':').map_or("", |(_, p)| p).to_owned();
        let why = if port == "80" || port == "443" {
            "domain not in allowlist".to_owned()
        } else {
            format!("port {port} not allowed, only 80 and 443 are permitted")
        };
        if !blocked.iter().any(|(t, _)| *t == target) {
            blocked.push((target, why));
        }
    }
    if blocked.is_empty() {
        return;
    }
    out.warn("Firewall blocked domains:");
    for (target, why) in &blocked {
        out.warn(&format!("  - Blocked: {target} ({why})"));
    }
    if !allow.is_empty() {
        out.warn("Allowed domains:");
        for a in allow {
            out.warn(&format!("  - Allowed: {a}"));
        }
    }
    let mut suggested: Vec<String> = allow.to_vec();
    for (target, _) in &blocked {
        let domain = target
            .rsplit_once(':')
            .map_or(target.as_str(), |(d, _)| d)
            .to_owned();
        if !suggested.contains(&domain) {
            suggested.push(domain);
        }
    }
    out.warn(&format!(
        "To fix domain issues: --allow-domains \"{}\"",
        suggested.join(",")
    ));
}

/// `awf logs -f`: prints the lines of `path` in `format`, then each line appended to it, until
/// the process is interrupted. A file that shrinks (rotated, truncated) is read again from
/// its start.
fn follow(path: &Path, format: &str) -> std::io::Result<()> {
    use std::io::{BufRead as _, Seek as _, Write as _};
    let mut file = std::fs::File::open(path)?;
    let mut reader = std::io::BufReader::new(file.try_clone()?);
    let mut offset = 0u64;
    let mut pending = String::new();
    let stdout = std::io::stdout();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line)?;
        if n > 0 {
            offset += n as u64;
            pending.push_str(&line);
            if !pending.ends_with('\n') {
                continue; // a line still being written
            }
            let text = std::mem::take(&mut pending);
            let text = text.trim_end_matches('\n');
            let mut out = stdout.lock();
            match format {
                "raw" => writeln!(out, "{text}")?,
                "json" => {
                    if let Some(e) = logs::parse_access(text) {
                        writeln!(out, "{}", logs::json_line(&e))?;
                    }
                }
                _ => {
                    if let Some(e) = logs::parse_access(text) {
                        writeln!(out, "{}", logs::pretty_line(&e))?;
                    }
                }
            }
            out.flush()?;
            continue;
        }
        // At the end: wait for more (as `tail -f` does), start over if the file shrank.
        std::thread::sleep(std::time::Duration::from_millis(200));
        if file.metadata()?.len() < offset {
            file = std::fs::File::open(path)?;
            file.rewind()?;
            reader = std::io::BufReader::new(file.try_clone()?);
            offset = 0;
            pending.clear();
        }
    }
}

/// `awf logs [summary|stats|audit]`; returns the exit code.
fn logs_command(args: &AwfLogsArgs) -> u8 {
    if args.list {
        println!("Available log sources:");
        if let Some(dir) = std::env::var_os("AWF_LOGS_DIR") {
            println!("  [AWF_LOGS_DIR] {}", PathBuf::from(dir).display());
        }
        for dir in logs::preserved() {
            println!("  [preserved] {}", dir.display());
        }
        return 0;
    }
    if args.source.as_deref() == Some(Path::new("running")) {
        eprintln!("[ERROR] egressd has no running proxy container; give --source <dir>");
        return 1;
    }
    let Some(dir) = logs::discover(args.source.as_deref()) else {
        eprintln!("[ERROR] No log sources found. Set AWF_LOGS_DIR or use --source <dir>");
        return 1;
    };
    let entries = match logs::load(&dir) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("[ERROR] reading logs in {}: {e}", dir.display());
            return 1;
        }
    };
    let manifest = logs::find_manifest(&dir);
    if args.with_pid {
        eprintln!(
            "[ERROR] --with-pid is not supported: egressd's access.log carries no process ids"
        );
        return 1;
    }
    match &args.view {
        None if args.follow => {
            let format = args.format.as_deref().unwrap_or("pretty").to_owned();
            match follow(&dir.join("access.log"), &format) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!(
                        "[ERROR] following {}: {e}",
                        dir.join("access.log").display()
                    );
                    1
                }
            }
        }
        None => {
            let format = args.format.as_deref().unwrap_or("pretty");
            if format == "raw" {
                if let Ok(text) = std::fs::read_to_string(dir.join("access.log")) {
                    print!("{text}");
                }
                return 0;
            }
            for e in &entries {
                match format {
                    "json" => println!("{}", logs::json_line(e)),
                    _ => println!("{}", logs::pretty_line(e)),
                }
            }
            0
        }
        Some(AwfLogsView::Stats(v) | AwfLogsView::Summary(v)) => {
            let default = if matches!(args.view, Some(AwfLogsView::Summary(_))) {
                "markdown"
            } else {
                "pretty"
            };
            let stats = logs::aggregate(&entries, manifest.as_ref());
            match v.format.as_deref().unwrap_or(default) {
                "json" => println!("{}", logs::json(&stats)),
                "markdown" => print!("{}", logs::markdown(&stats)),
                "pretty" => print!("{}", logs::pretty(&stats)),
                other => {
                    eprintln!("[ERROR] unknown format {other}: expected json, markdown or pretty");
                    return 1;
                }
            }
            0
        }
        Some(AwfLogsView::Audit(a)) => {
            let Some(manifest) = manifest else {
                eprintln!(
                    "[ERROR] policy-manifest.json not found (next to the logs, in ../audit/ or \
                     $AWF_AUDIT_DIR)"
                );
                return 1;
            };
            let rows: Vec<serde_json::Value> = entries
                .iter()
                .filter(|e| a.domain.as_ref().is_none_or(|d| *d == e.domain))
                .filter(|e| match a.decision.as_deref() {
                    Some("allowed") => e.allowed,
                    Some("denied") => !e.allowed,
                    _ => true,
                })
                .filter_map(|e| {
                    let rule = manifest.rule_for(&e.domain, e.https, e.allowed);
                    let id = rule.map(|r| r.id.clone());
                    if a.rule.is_some() && a.rule != id {
                        return None;
                    }
                    Some(serde_json::json!({
                        "timestamp": e.time_ms as f64 / 1000.0,
                        "domain": e.domain,
                        "method": e.method,
                        "status": e.status,
                        "decision": if e.allowed { "allowed" } else { "denied" },
                        "matchedRule": id,
                        "matchReason": rule.map(|r| r.description.clone()),
                        "url": e.url,
                    }))
                })
                .collect();
            if a.format.as_deref() == Some("json") {
                println!("{}", serde_json::Value::Array(rows));
            } else {
                for r in &rows {
                    println!(
                        "[{}] {} {} → {} ({}) rule: {}",
                        logs::clock((r["timestamp"].as_f64().unwrap_or(0.0) * 1000.0) as i64),
                        r["method"].as_str().unwrap_or("-"),
                        r["domain"].as_str().unwrap_or("-"),
                        r["status"],
                        r["decision"].as_str().unwrap_or("-"),
                        r["matchedRule"].as_str().unwrap_or("-"),
                    );
                }
            }
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invoked_as_awf_becomes_egressd_awf() {
        let (argv, awf) = argv_for(vec!["/usr/local/bin/awf".into(), "--version".into()]);
        assert!(awf);
        assert_eq!(argv, ["egressd", "awf", "--version"]);
        let (argv, awf) = argv_for(vec!["egressd".into(), "exec".into()]);
        assert!(!awf);
        assert_eq!(argv, ["egressd", "exec"]);
        assert!(argv_for(vec!["egressd".into(), "awf".into()]).1);
    }

    #[test]
    fn mounts_only_identity_mappings() {
        let out = Messages::new(Some("error"));
        assert!(check_mounts(&["/tmp/gh-aw:/tmp/gh-aw:rw".into()], &out).is_ok());
        assert!(check_mounts(&["/r/gh-aw:/host/r/gh-aw:ro".into()], &out).is_ok());
        let e = check_mounts(&["/a:/b".into()], &out).unwrap_err();
        assert!(e.starts_with("--mount /a:/b cannot be honoured"), "{e}");
        assert!(check_mounts(&["/a:/a:rx".into()], &out).is_err());
    }

    #[test]
    fn commands_go_through_the_shell_like_awf() {
        assert_eq!(shell_command(&["echo $HOME".into()])[2], "echo $HOME");
        assert_eq!(
            shell_command(&["curl".into(), "-s".into(), "a b".into()])[2],
            "curl -s 'a b'"
        );
    }

    #[test]
    fn yaml_configs_read_like_json() {
        let json = super::yaml_to_json(
            "$schema: x\nnetwork:\n  allowDomains:\n    - github.com\n    - api.example.com\n",
        )
        .unwrap();
        let config = super::config::parse(&json).unwrap();
        assert_eq!(config.allow_domains, vec!["github.com", "api.example.com"]);
        let err = super::yaml_to_json("network:\n  allowDomains: [a.com\n").unwrap_err();
        assert!(
            err.contains("invalid YAML") && err.contains("line"),
            "{err}"
        );
        // Unknown keys are refused as in JSON.
        let json = super::yaml_to_json("network:\n  allowDomainz: [a.com]\n").unwrap();
        let err = super::config::parse(&json).unwrap_err();
        assert!(err.contains("network.allowDomainz"), "{err}");
    }

    #[test]
    fn gh_host_is_the_servers_host_unless_github_com() {
        let env = |url: &str| egressd_config::github::GitHubEnv {
            server_url: Some(url.into()),
            api_url: None,
            force_ghes: false,
        };
        assert_eq!(crate::env::gh_host(Some(&env("https://github.com"))), None);
        assert_eq!(
            crate::env::gh_host(Some(&env("https://acme.ghe.com/"))).as_deref(),
            Some("acme.ghe.com")
        );
        assert_eq!(
            crate::env::gh_host(Some(&env("https://git.corp.example:8443"))).as_deref(),
            Some("git.corp.example")
        );
        assert_eq!(crate::env::gh_host(None), None);
    }

    #[test]
    fn env_lines() {
        assert_eq!(
            parse_kv("A=b=c", "--env").unwrap(),
            ("A".into(), "b=c".into())
        );
        assert!(parse_kv("=x", "--env").is_err());
        assert!(parse_kv("novalue", "--env").is_err());
    }
}
