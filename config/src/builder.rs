//! [`ConfigBuilder`]: collects sources in order and builds a validated [`Config`].
//!
//! Sources are flags (`--allow-domains`, `--resolve`, ...), allow files and TOML files.
//! Each method checks its own input at once and returns that input's errors, and also keeps
//! them: [`ConfigBuilder::build`] reports every error of every source in one
//! [`Error::Partial`]. A caller that wants all problems at once may ignore the per-source
//! results and rely on `build`.
//!
//! Lists accumulate across sources; single values (`ports`, `upstream_ca`, `audit_log`,
//! each timeout) are replaced by later sources.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::addr::{parse_dns_server, parse_resolve};
use crate::credential::{self, Credential};
use crate::defaults;
use crate::error::{Error, ErrorKind, Location, line_column};
use crate::file::{File, parse_duration};
use crate::policy::{Entry, List, Origin, Policy};

/// Everything a sandbox run needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// The compiled allowlist.
    pub policy: Arc<Policy>,
    /// `--resolve HOST:ADDR` overrides. Trusted: the user named the address, so the
    /// private-address guard does not apply to them.
    pub resolve: Vec<ResolveOverride>,
    /// Upstream DNS servers; empty means the system's `resolv.conf`.
    pub dns_servers: Vec<SocketAddr>,
    /// Extra CA certificates (PEM) trusted for upstream connections.
    pub upstream_ca: Option<PathBuf>,
    /// Where the JSONL audit log goes; `None` for no audit file.
    pub audit_log: Option<PathBuf>,
    /// Proxy timeouts.
    pub timeouts: Timeouts,
    /// Per-sandbox limits of the proxy.
    pub limits: Limits,
    /// Token sources, in the order given; names are unique and references resolve.
    pub credentials: Vec<Credential>,
    /// The hosts egressd terminates TLS for (their hosts are allowed implicitly).
    pub intercepts: crate::intercept::Intercepts,
    /// What the sandbox's DNS listener answers for a denied name.
    pub dns_denied: DnsDenied,
    /// The GitHub deployment the allowlist was derived for, if any.
    pub github: Option<crate::github::Deployment>,
    /// Hosts the GitHub derivation could not derive, with what to do about them.
    pub github_notes: Vec<String>,
    /// Variables the sandbox gets in place of secrets the daemon keeps (Copilot BYOK keys:
    /// `COPILOT_PROVIDER_API_KEY=egressd-placeholder`).
    pub placeholders: Vec<(String, String)>,
    /// The `[provenance]` settings (defaults when the table is absent).
    pub provenance: crate::provenance::ProvenanceConfig,
    /// AWF's api-proxy, served by egressd (`egressd awf` only; see [`crate::awf::apiproxy`]).
    pub api_proxy: Option<crate::awf::apiproxy::ApiProxy>,
    /// The sandbox beyond the network: Unix sockets, hidden paths, secrets, seccomp,
    /// resource limits (see [`crate::sandbox`]).
    pub sandbox: crate::sandbox::SandboxSettings,
}

/// The sandbox DNS listener's answer for a name the allowlist does not cover.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DnsDenied {
    /// `NXDOMAIN`: the name does not exist (the default; resolvers stop at once).
    #[default]
    NxDomain,
    /// `REFUSED`: the server will not answer (some resolvers then try the next server).
    Refused,
}

/// Proxy timeouts; the defaults are in [`defaults`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Waiting for the first bytes (`ClientHello` or HTTP request head), in total: the
    /// handshake (slowloris) timeout.
    pub classify: Duration,
    /// An intercepted client finishing its TLS handshake with egressd.
    pub tls_handshake: Duration,
    /// The whole head of each later request on a kept-alive HTTP/1 connection (plain or
    /// intercepted), counted from the previous response.
    pub request_head: Duration,
    /// Connecting to an upstream.
    pub connect: Duration,
    /// Silence in both directions on a relayed connection (not a total time).
    pub idle: Duration,
    /// A DNS resolution.
    pub resolve: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            classify: defaults::CLASSIFY_TIMEOUT,
            tls_handshake: defaults::TLS_HANDSHAKE_TIMEOUT,
            request_head: defaults::REQUEST_HEAD_TIMEOUT,
            connect: defaults::CONNECT_TIMEOUT,
            idle: defaults::IDLE_TIMEOUT,
            resolve: defaults::RESOLVE_TIMEOUT,
        }
    }
}

/// Per-sandbox limits of the proxy; the defaults are in [`defaults`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most connections open through the proxy at once; more are reset and audited.
    pub max_connections: u32,
    /// Largest HTTP request head (request line and headers) in bytes; larger ones get `431`.
    pub max_header_bytes: u32,
    /// Largest HTTP request body in bytes on plain-HTTP, intercepted and api-proxy requests;
    /// a larger one gets `413` and nothing more of it is forwarded. `None`: no limit (bodies
    /// are streamed, never buffered, so size costs no memory).
    pub max_body_bytes: Option<u64>,
}

impl Limits {
    /// The smallest `max_header_bytes` accepted: below it ordinary requests would fail.
    pub const MIN_HEADER_BYTES: u32 = 1024;
    /// The largest `max_header_bytes` accepted.
    pub const MAX_HEADER_BYTES: u32 = 1024 * 1024;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: defaults::MAX_CONNECTIONS,
            max_header_bytes: defaults::MAX_HEADER_BYTES,
            max_body_bytes: defaults::MAX_BODY_BYTES,
        }
    }
}

/// A fixed answer for a host name (`--resolve HOST:ADDR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveOverride {
    /// The host, lowercase, without a trailing dot.
    pub host: String,
    /// Its addresses, in the order given, without duplicates (IPv4-mapped IPv6 as IPv4).
    pub addrs: Vec<IpAddr>,
}

/// Collects configuration sources in order and builds a validated [`Config`].
///
/// Each method checks its own input at once and returns that input's errors, and also
/// keeps them: [`build`](Self::build) reports every error of every source together. A caller
/// that wants all problems at once may ignore the per-source results and rely on `build`.
/// Lists accumulate across sources; single values (`ports`, `upstream_ca`, `audit_log`,
/// each timeout) are replaced by later sources.
#[derive(Debug, Default)]
pub struct ConfigBuilder {
    entries: Vec<Entry>,
    ports: Option<Vec<u16>>,
    loopback_ports: Vec<u16>,
    resolve: Vec<ResolveOverride>,
    dns_servers: Vec<SocketAddr>,
    upstream_ca: Option<PathBuf>,
    audit_log: Option<PathBuf>,
    timeouts: Timeouts,
    limits: Limits,
    credentials: Vec<(Credential, Location)>,
    intercepts: Vec<crate::intercept::InterceptRule>,
    dns_denied: DnsDenied,
    github: Option<crate::github::Derived>,
    /// The GitHub variables, also when derivation is off (Copilot's API base).
    github_env: Option<crate::github::GitHubEnv>,
    /// `{run_id}` / `{run_attempt}` for header templates.
    run: crate::intercept::RunVars,
    /// Copilot BYOK from the daemon's environment.
    byok: Option<crate::copilot::ByokEnv>,
    /// The `[copilot]` table, expanded by `build`.
    copilot: Option<crate::copilot::CopilotTable>,
    provenance: crate::provenance::ProvenanceConfig,
    sandbox: crate::sandbox::SandboxSettings,
    errors: Vec<Error>,
    audit_only: bool,
}

impl ConfigBuilder {
    /// Audit-only mode: denials are recorded, not enforced (see
    /// [`Policy::with_audit_only`](crate::Policy::with_audit_only)).
    pub fn audit_only(&mut self, audit_only: bool) {
        self.audit_only = audit_only;
    }

    /// Adds the entries derived from the GitHub deployment in `env` (and its Copilot hosts
    /// when `copilot`), each with a `github:...` origin.
    ///
    /// # Errors
    ///
    /// `GITHUB_SERVER_URL` is not a usable URL.
    pub fn github(&mut self, env: &crate::github::GitHubEnv, copilot: bool) -> Result<(), Error> {
        self.github_env = Some(env.clone());
        match crate::github::derive(env, copilot) {
            Ok(derived) => {
                self.github = Some(derived);
                Ok(())
            }
            Err(kind) => self.record(vec![Error::at(
                Location::Builtin("the GitHub environment"),
                kind,
            )]),
        }
    }

    /// Names the GitHub deployment without deriving allowlist entries (`--no-github`): Copilot
    /// still needs its API base and hosts.
    pub fn github_deployment(&mut self, env: &crate::github::GitHubEnv) {
        self.github_env = Some(env.clone());
    }

    /// Sets the values of `{run_id}` / `{run_attempt}` in header templates (`GITHUB_RUN_ID`,
    /// `GITHUB_RUN_ATTEMPT`); values that are not a plain word are ignored.
    pub fn github_run(&mut self, run: crate::intercept::RunVars) {
        let word = |v: Option<String>| {
            v.filter(|v| {
                !v.is_empty()
                    && v.len() <= 64
                    && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            })
        };
        self.run = crate::intercept::RunVars {
            run_id: word(run.run_id),
            run_attempt: word(run.run_attempt),
        };
    }

    /// Maps Copilot BYOK (`COPILOT_PROVIDER_*` of the daemon's environment) onto an injection
    /// rule at build time (see [`crate::copilot`]).
    pub fn copilot_byok(&mut self, byok: crate::copilot::ByokEnv) {
        self.byok = Some(byok);
    }

    /// An empty builder: no entries (so everything is denied), default ports and timeouts.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds allow entries from a comma- or whitespace-separated list (`--allow-domains`).
    ///
    /// # Errors
    ///
    /// Every invalid entry of the list, located at `origin`.
    pub fn allow_list(&mut self, list: &str, origin: Origin) -> Result<(), Error> {
        self.list(list, List::Allow, origin)
    }

    /// Adds block entries from a comma- or whitespace-separated list (`--block-domains`).
    ///
    /// # Errors
    ///
    /// Every invalid entry of the list, located at `origin`.
    pub fn block_list(&mut self, list: &str, origin: Origin) -> Result<(), Error> {
        self.list(list, List::Block, origin)
    }

    /// Adds allow entries from a file: entries separated by commas or whitespace, any number
    /// per line, `#` starts a comment, blank lines are skipped.
    ///
    /// # Errors
    ///
    /// [`Error::Read`] when the file cannot be read; every invalid entry at `path:line:column`.
    pub fn allow_file(&mut self, path: &Path) -> Result<(), Error> {
        self.list_file(path, List::Allow)
    }

    /// Adds block entries from a file in the [`allow_file`](Self::allow_file) format.
    ///
    /// # Errors
    ///
    /// As [`allow_file`](Self::allow_file).
    pub fn block_file(&mut self, path: &Path) -> Result<(), Error> {
        self.list_file(path, List::Block)
    }

    /// Reads a TOML file in the [`file`](crate::file) format.
    ///
    /// # Errors
    ///
    /// [`Error::Read`] when the file cannot be read; otherwise as [`toml_str`](Self::toml_str).
    pub fn toml_file(&mut self, path: &Path) -> Result<(), Error> {
        match std::fs::read_to_string(path) {
            Ok(text) => self.toml_str(&text, path),
            Err(io) => self.record(vec![Error::Read {
                path: path.into(),
                io: Arc::new(io),
            }]),
        }
    }

    /// Adds the TOML text of a file at `path` (used in messages, origins, and to resolve
    /// relative paths).
    ///
    /// # Errors
    ///
    /// A TOML syntax error, unknown key or wrong type (one error: the parser stops there), or
    /// every invalid value of the file, each at `path:line:column`.
    pub fn toml_str(&mut self, text: &str, path: &Path) -> Result<(), Error> {
        let file = match File::parse(text) {
            Ok(file) => file,
            Err(e) => {
                let at = Location::in_text(path, text, e.span().map_or(0, |s| s.start));
                let message = e.message().trim().trim_end_matches('.').to_owned();
                return self.record(vec![Error::at(at, ErrorKind::Toml { message })]);
            }
        };
        let errors = FileContext { path, text }.apply(file, self);
        self.record(errors)
    }

    /// Adds a `HOST:ADDR` override (`--resolve`); the same host may be given several times.
    ///
    /// # Errors
    ///
    /// A malformed value; a bare IPv6 address (write `host:[::1]`).
    pub fn resolve(&mut self, spec: &str) -> Result<(), Error> {
        let errors = self.add_resolve(spec, Location::Flag("--resolve")).err();
        self.record(errors.into_iter().collect())
    }

    /// Adds an upstream DNS server, `ADDR`, `ADDR:PORT` or `[v6]:PORT` (`--dns-server`).
    ///
    /// # Errors
    ///
    /// A malformed address, a name instead of an address, or port 0.
    pub fn dns_server(&mut self, spec: &str) -> Result<(), Error> {
        let errors = self
            .add_dns_server(spec, Location::Flag("--dns-server"))
            .err();
        self.record(errors.into_iter().collect())
    }

    /// Sets the extra CA bundle trusted for upstream connections.
    pub fn upstream_ca(&mut self, path: PathBuf) {
        self.upstream_ca = Some(path);
    }

    /// Sets the audit log path.
    pub fn audit_log(&mut self, path: PathBuf) {
        self.audit_log = Some(path);
    }

    /// Allows loopback destinations on `ports`. Port 0 is an error reported by
    /// [`build`](Self::build).
    #[allow(
        clippy::needless_pass_by_value,
        reason = "same shape as the list methods"
    )]
    pub fn loopback_ports(&mut self, ports: &[u16], origin: Origin) {
        if ports.contains(&0) {
            self.errors
                .push(Error::at(origin_location(&origin), ErrorKind::PortZero));
        }
        self.loopback_ports
            .extend(ports.iter().filter(|&&p| p != 0));
    }

    /// Replaces the destination ports every allowed name may use (default `[80, 443]`).
    /// Port 0 is an error reported by [`build`](Self::build).
    #[allow(
        clippy::needless_pass_by_value,
        reason = "same shape as the list methods"
    )]
    pub fn ports(&mut self, ports: &[u16], origin: Origin) {
        if ports.contains(&0) {
            self.errors
                .push(Error::at(origin_location(&origin), ErrorKind::PortZero));
        }
        self.ports = Some(ports.iter().copied().filter(|&p| p != 0).collect());
    }

    /// Replaces all timeouts.
    pub fn timeouts(&mut self, timeouts: Timeouts) {
        self.timeouts = timeouts;
    }

    /// Replaces all limits. Out-of-range values are reported by [`build`](Self::build).
    pub fn limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Adds an already parsed entry (for entries egressd derives itself, with an
    /// [`Origin::Builtin`]).
    pub fn entry(&mut self, entry: Entry) {
        self.entries.push(entry);
    }

    /// Validates everything and compiles the policy.
    ///
    /// # Errors
    ///
    /// Every error recorded by every source, in order: the single error when there is one,
    /// [`Error::Partial`] otherwise.
    pub fn build(mut self) -> Result<Config, Error> {
        let mut errors = std::mem::take(&mut self.errors);
        let placeholders = match self.expand_copilot() {
            Ok(placeholders) => placeholders,
            Err(e) => {
                errors.extend(e);
                Vec::new()
            }
        };
        for rule in &mut self.intercepts {
            rule.fill_headers(&self.run);
        }
        errors.extend(credential::check_references(&self.credentials));
        errors.extend(check_limits(self.limits));
        if let Some(error) = Error::from_many(errors) {
            return Err(error);
        }
        let ports = self.ports.as_deref().unwrap_or(defaults::PORTS);
        // An intercepted host is allowed: its rule is its allow entry.
        let mut entries = self.entries;
        if let Some(github) = &self.github {
            entries.extend(github.entries.iter().cloned());
        }
        entries.extend(self.intercepts.iter().map(|r| (*r.host).clone()));
        Ok(Config {
            policy: Arc::new(
                Policy::new(entries, ports, &self.loopback_ports).with_audit_only(self.audit_only),
            ),
            resolve: self.resolve,
            dns_servers: self.dns_servers,
            upstream_ca: self.upstream_ca,
            audit_log: self.audit_log,
            timeouts: self.timeouts,
            limits: self.limits,
            credentials: self.credentials.into_iter().map(|(c, _)| c).collect(),
            intercepts: crate::intercept::Intercepts::new(self.intercepts),
            dns_denied: self.dns_denied,
            github_notes: self
                .github
                .as_ref()
                .map(|g| g.notes.clone())
                .unwrap_or_default(),
            github: self.github.and_then(|g| g.deployment),
            placeholders,
            provenance: self.provenance,
            api_proxy: None,
            sandbox: self.sandbox,
        })
    }

    // === helpers ===

    /// Adds what `[copilot]` and BYOK expand into for the deployment, and fills the API base
    /// of `copilot` credentials that do not name one. Returns the sandbox's placeholders.
    fn expand_copilot(&mut self) -> Result<Vec<(String, String)>, Vec<Error>> {
        use crate::github::Deployment;
        let env = self.github_env.clone().unwrap_or_default();
        // The runner's rule: no GITHUB_SERVER_URL means github.com.
        let deployment = self
            .github
            .as_ref()
            .and_then(|g| g.deployment.clone())
            .or_else(|| Deployment::classify(&env).ok())
            .unwrap_or(Deployment::DotCom);
        let api_base = deployment.api_base(&env);
        for (credential, _) in &mut self.credentials {
            if let crate::CredentialSource::Copilot(c) = &mut credential.source
                && c.api_url.is_none()
            {
                c.api_url = Some(api_base.clone());
            }
        }
        if self.copilot.is_none() && self.byok.is_none() {
            return Ok(Vec::new());
        }
        let expanded = crate::copilot::expand(
            self.copilot.as_ref(),
            self.byok.as_ref(),
            &deployment,
            &api_base,
            &self.credentials,
        )?;
        self.credentials.extend(expanded.credentials);
        self.intercepts.extend(expanded.rules);
        Ok(expanded.placeholders)
    }

    fn record(&mut self, errors: Vec<Error>) -> Result<(), Error> {
        self.errors.extend(errors.iter().cloned());
        Error::from_many(errors).map_or(Ok(()), Err)
    }

    #[allow(clippy::needless_pass_by_value, reason = "cloned into each entry")]
    fn list(&mut self, list: &str, which: List, origin: Origin) -> Result<(), Error> {
        let at = origin_location(&origin);
        let errors = tokens(list)
            .filter_map(|(_, token)| {
                self.add_entry(token, which, origin.clone(), at.clone())
                    .err()
            })
            .collect();
        self.record(errors)
    }

    fn list_file(&mut self, path: &Path, which: List) -> Result<(), Error> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(io) => {
                return self.record(vec![Error::Read {
                    path: path.into(),
                    io: Arc::new(io),
                }]);
            }
        };
        let mut errors = Vec::new();
        let mut line_start = 0;
        for (number, line) in (1u32..).zip(text.split('\n')) {
            let content = line.split('#').next().unwrap_or_default();
            for (offset, token) in tokens(content) {
                let origin = Origin::File {
                    path: path.into(),
                    line: number,
                };
                let at = Location::in_text(path, &text, line_start + offset);
                if let Err(e) = self.add_entry(token, which, origin, at) {
                    errors.push(e);
                }
            }
            line_start += line.len() + 1;
        }
        self.record(errors)
    }

    fn add_entry(
        &mut self,
        text: &str,
        list: List,
        origin: Origin,
        at: Location,
    ) -> Result<(), Error> {
        let entry = Entry::parse(text, list, origin).map_err(|kind| Error::at(at, kind))?;
        self.entries.push(entry);
        Ok(())
    }

    fn add_resolve(&mut self, spec: &str, at: Location) -> Result<(), Error> {
        let (host, ip) = parse_resolve(spec).map_err(|why| {
            Error::at(
                at,
                ErrorKind::InvalidResolve {
                    spec: spec.to_owned(),
                    why,
                },
            )
        })?;
        match self.resolve.iter_mut().find(|o| o.host == host) {
            Some(existing) if existing.addrs.contains(&ip) => {}
            Some(existing) => existing.addrs.push(ip),
            None => self.resolve.push(ResolveOverride {
                host,
                addrs: vec![ip],
            }),
        }
        Ok(())
    }

    fn add_dns_server(&mut self, spec: &str, at: Location) -> Result<(), Error> {
        let addr = parse_dns_server(spec).map_err(|why| {
            Error::at(
                at,
                ErrorKind::InvalidDnsServer {
                    spec: spec.to_owned(),
                    why,
                },
            )
        })?;
        if !self.dns_servers.contains(&addr) {
            self.dns_servers.push(addr);
        }
        Ok(())
    }
}

/// A TOML file being applied: its path and text, to turn spans into locations.
struct FileContext<'a> {
    path: &'a Path,
    text: &'a str,
}

impl FileContext<'_> {
    /// Applies `file` to `builder`, returning every error (not yet recorded).
    #[allow(
        clippy::too_many_lines,
        reason = "a flat list with one short block per key or table of the file"
    )]
    fn apply(&self, file: File, builder: &mut ConfigBuilder) -> Vec<Error> {
        let mut errors = Vec::new();
        for (items, list) in [
            (file.allow_domains, List::Allow),
            (file.block_domains, List::Block),
        ] {
            for item in items {
                let (origin, at) = self.place(item.span().start);
                errors.extend(builder.add_entry(item.get_ref(), list, origin, at).err());
            }
        }
        for rule in file.rules {
            let (origin, at) = self.place(rule.domain.span().start);
            match Entry::parse(rule.domain.get_ref(), List::Allow, origin) {
                Ok(mut entry) => {
                    entry.ports = self.ports(&rule.ports, &mut errors);
                    entry.allow_private = rule.allow_private;
                    builder.entries.push(entry);
                }
                Err(kind) => errors.push(Error::at(at, kind)),
            }
        }
        if let Some(ports) = &file.ports {
            builder.ports = Some(self.ports(ports, &mut errors));
        }
        let loopback = self.ports(&file.loopback_ports, &mut errors);
        builder.loopback_ports.extend(loopback);
        for spec in &file.dns_servers {
            let at = self.place(spec.span().start).1;
            errors.extend(builder.add_dns_server(spec.get_ref(), at).err());
        }
        for spec in &file.resolve {
            let at = self.place(spec.span().start).1;
            errors.extend(builder.add_resolve(spec.get_ref(), at).err());
        }
        let dir = self.path.parent().unwrap_or(Path::new(""));
        if let Some(path) = file.upstream_ca {
            builder.upstream_ca = Some(dir.join(path.into_inner()));
        }
        if let Some(path) = file.audit_log {
            builder.audit_log = Some(dir.join(path.into_inner()));
        }
        for table in credential::tables(self.text) {
            let place = |offset| self.place(offset).1;
            match credential::parse(table, dir, &place) {
                Ok(parsed) => builder.credentials.push(parsed),
                Err(e) => errors.extend(e),
            }
        }
        let credentials: Vec<Credential> =
            builder.credentials.iter().map(|(c, _)| c.clone()).collect();
        for table in &file.intercepts {
            match crate::intercept::parse(table, &|offset| self.place(offset), &credentials) {
                Ok(rule) => match crate::intercept::spiffe_conflict(&builder.intercepts, &rule) {
                    Some(why) => errors.push(Error::at(
                        self.place(table.host.span().start).1,
                        ErrorKind::InvalidValue(why),
                    )),
                    None => builder.intercepts.push(rule),
                },
                Err(e) => errors.extend(e),
            }
        }
        if let Some(table) = &file.provenance {
            match crate::provenance::parse(table, &|offset| self.place(offset).1) {
                Ok(provenance) => builder.provenance = provenance,
                Err(e) => errors.extend(e),
            }
        }
        errors.extend(self.copilot(file.copilot.as_ref(), builder));
        errors.extend(self.sandbox(&file.sandbox, dir, builder));
        if let Some(denied) = &file.dns.denied {
            match denied.get_ref().to_ascii_lowercase().as_str() {
                "nxdomain" => builder.dns_denied = DnsDenied::NxDomain,
                "refused" => builder.dns_denied = DnsDenied::Refused,
                other => errors.push(Error::at(
                    self.place(denied.span().start).1,
                    ErrorKind::InvalidValue(format!(
                        "dns.denied = {other:?}: expected \"nxdomain\" or \"refused\""
                    )),
                )),
            }
        }
        let t = &mut builder.timeouts;
        let timeouts = file.timeouts;
        for (key, value, slot) in [
            ("timeouts.classify", timeouts.classify, &mut t.classify),
            (
                "timeouts.tls_handshake",
                timeouts.tls_handshake,
                &mut t.tls_handshake,
            ),
            (
                "timeouts.request_head",
                timeouts.request_head,
                &mut t.request_head,
            ),
            ("timeouts.connect", timeouts.connect, &mut t.connect),
            ("timeouts.idle", timeouts.idle, &mut t.idle),
            ("timeouts.resolve", timeouts.resolve, &mut t.resolve),
        ] {
            let Some(value) = value else { continue };
            match parse_duration(value.get_ref()) {
                Ok(duration) => *slot = duration,
                Err(why) => {
                    let kind = ErrorKind::InvalidDuration {
                        key: key.into(),
                        text: value.get_ref().clone(),
                        why,
                    };
                    errors.push(Error::at(self.place(value.span().start).1, kind));
                }
            }
        }
        let limits = file.limits;
        let l = &mut builder.limits;
        for (key, value, slot) in [
            (
                "limits.max_connections",
                limits.max_connections,
                &mut l.max_connections,
            ),
            (
                "limits.max_header_bytes",
                limits.max_header_bytes,
                &mut l.max_header_bytes,
            ),
        ] {
            let Some(value) = value else { continue };
            if let Some(why) = limit_error(key, *value.get_ref()) {
                let at = self.place(value.span().start).1;
                errors.push(Error::at(at, ErrorKind::InvalidValue(why)));
            } else {
                *slot = *value.get_ref();
            }
        }
        if let Some(value) = limits.pids {
            match *value.get_ref() {
                0 => errors.push(Error::at(
                    self.place(value.span().start).1,
                    ErrorKind::InvalidValue(
                        "limits.pids = 0: use a number of processes from 1 up".into(),
                    ),
                )),
                n => builder.sandbox.pids = Some(n),
            }
        }
        if let Some(value) = &limits.memory {
            let parsed = match value.get_ref() {
                crate::sandbox::FileSize::Bytes(n) => Ok(*n),
                crate::sandbox::FileSize::Text(t) => crate::sandbox::parse_size(t),
            };
            match parsed {
                Ok(n) if n >= 16 << 20 => builder.sandbox.memory = Some(n),
                Ok(_) => errors.push(Error::at(
                    self.place(value.span().start).1,
                    ErrorKind::InvalidValue(
                        "limits.memory: less than 16M leaves no room to run anything".into(),
                    ),
                )),
                Err(why) => errors.push(Error::at(
                    self.place(value.span().start).1,
                    ErrorKind::InvalidValue(format!("limits.memory {why}")),
                )),
            }
        }
        if let Some(value) = limits.max_body_bytes {
            match body_limit_error(*value.get_ref()) {
                Some(why) => {
                    let at = self.place(value.span().start).1;
                    errors.push(Error::at(at, ErrorKind::InvalidValue(why)));
                }
                None => l.max_body_bytes = Some(*value.get_ref()),
            }
        }
        errors.sort_by_key(|e| match e.location() {
            Some(Location::File { line, column, .. }) => (*line, *column),
            _ => (0, 0),
        });
        errors
    }

    /// Validates the `[sandbox]` table into `builder`; returns its errors.
    fn sandbox(
        &self,
        table: &crate::sandbox::FileSandbox,
        dir: &Path,
        builder: &mut ConfigBuilder,
    ) -> Vec<Error> {
        use crate::sandbox::{SecretsMode, UnixAllow, check_env_name, check_hide};
        let mut errors = Vec::new();
        let mut error = |offset: usize, why: String| {
            errors.push(Error::at(
                self.place(offset).1,
                ErrorKind::InvalidValue(why),
            ));
        };
        let s = &mut builder.sandbox;
        for entry in &table.allow_unix {
            match UnixAllow::parse(entry.get_ref()) {
                Ok(allow) => s.allow_unix.push(allow),
                Err(why) => error(entry.span().start, why),
            }
        }
        for entry in &table.hide {
            match check_hide(entry.get_ref()) {
                Ok(path) => s.hide.push(path),
                Err(why) => error(entry.span().start, why),
            }
        }
        for entry in &table.pass_env {
            match check_env_name(entry.get_ref()) {
                Ok(()) => s.pass_env.push(entry.get_ref().clone()),
                Err(why) => error(entry.span().start, why),
            }
        }
        if let Some(mode) = &table.secrets {
            match mode.get_ref().as_str() {
                "warn" => s.secrets = SecretsMode::Warn,
                "refuse" => s.secrets = SecretsMode::Refuse,
                other => error(
                    mode.span().start,
                    format!("secrets = {other:?}: write \"warn\" or \"refuse\""),
                ),
            }
        }
        if let Some(mode) = &table.runner_file_commands {
            match mode.get_ref().as_str() {
                "hide" => s.runner_file_commands = false,
                "allow" => s.runner_file_commands = true,
                other => error(
                    mode.span().start,
                    format!("runner_file_commands = {other:?}: write \"hide\" or \"allow\""),
                ),
            }
        }
        if let Some(list) = &table.runtime_sockets {
            let mut paths = Vec::new();
            for entry in list {
                let path = PathBuf::from(entry.get_ref());
                if path.is_absolute() {
                    paths.push(path);
                } else {
                    error(
                        entry.span().start,
                        format!(
                            "runtime_sockets: {:?} is not an absolute path",
                            entry.get_ref()
                        ),
                    );
                }
            }
            s.runtime_sockets = Some(paths);
        }
        if let Some(profile) = &table.seccomp {
            match crate::sandbox::Seccomp::parse(profile.get_ref(), dir) {
                Ok(p) => s.seccomp = p,
                Err(why) => error(profile.span().start, why),
            }
        }
        errors
    }

    /// Validates the `[copilot]` table into `builder`; returns its errors.
    fn copilot(
        &self,
        table: Option<&toml::Spanned<crate::copilot::FileCopilot>>,
        builder: &mut ConfigBuilder,
    ) -> Vec<Error> {
        let Some(table) = table else {
            return Vec::new();
        };
        let at = self.place(table.span().start).1;
        match crate::copilot::parse_table(table.get_ref(), &|offset| self.place(offset).1, at) {
            Ok(copilot) => {
                builder.copilot = Some(copilot);
                Vec::new()
            }
            Err(e) => e,
        }
    }

    /// The ports of a list, with an error for each port 0.
    fn ports(&self, ports: &[toml::Spanned<u16>], errors: &mut Vec<Error>) -> Vec<u16> {
        let mut out = Vec::new();
        for port in ports {
            if *port.get_ref() == 0 {
                errors.push(Error::at(
                    self.place(port.span().start).1,
                    ErrorKind::PortZero,
                ));
            } else {
                out.push(*port.get_ref());
            }
        }
        out
    }

    fn place(&self, offset: usize) -> (Origin, Location) {
        let (line, column) = line_column(self.text, offset);
        let path = self.path.to_path_buf();
        (
            Origin::File {
                path: path.clone(),
                line,
            },
            Location::File { path, line, column },
        )
    }
}

/// The errors of limits set through [`ConfigBuilder::limits`] (file values are checked as
/// they are read, where their line is known).
fn check_limits(limits: Limits) -> Vec<Error> {
    [
        ("limits.max_connections", limits.max_connections),
        ("limits.max_header_bytes", limits.max_header_bytes),
    ]
    .into_iter()
    .filter_map(|(key, value)| limit_error(key, value))
    .chain(limits.max_body_bytes.and_then(body_limit_error))
    .map(|why| Error::at(Location::Builtin("limits"), ErrorKind::InvalidValue(why)))
    .collect()
}

/// What is wrong with `value` for `limits.max_body_bytes`, if anything (0 would refuse every
/// body, even an empty POST's declared length of 0 is fine, so the floor is 1).
fn body_limit_error(value: u64) -> Option<String> {
    (value == 0).then(|| {
        "limits.max_body_bytes = 0: use a number of bytes from 1 up, or leave it out for no limit"
            .to_owned()
    })
}

/// What is wrong with `value` for the limit `key`, if anything.
fn limit_error(key: &str, value: u32) -> Option<String> {
    let (min, max) = match key {
        "limits.max_header_bytes" => (Limits::MIN_HEADER_BYTES, Limits::MAX_HEADER_BYTES),
        _ => (1, u32::MAX),
    };
    (!(min..=max).contains(&value))
        .then(|| format!("{key} = {value}: use a number from {min} to {max}"))
}

/// Splits a list on commas and whitespace, skipping empty pieces; yields byte offsets.
fn tokens(list: &str) -> impl Iterator<Item = (usize, &str)> {
    let is_separator = |c: char| c == ',' || c.is_whitespace();
    let mut rest = 0;
    std::iter::from_fn(move || {
        let start = rest + list[rest..].find(|c: char| !is_separator(c))?;
        let end = list[start..]
            .find(is_separator)
            .map_or(list.len(), |i| start + i);
        rest = end;
        Some((start, &list[start..end]))
    })
}

/// Where an error about a value from `origin` is (column 1 for a file line).
fn origin_location(origin: &Origin) -> Location {
    match origin {
        Origin::Flag(flag) => Location::Flag(flag),
        Origin::File { path, line } => Location::File {
            path: path.clone(),
            line: *line,
            column: 1,
        },
        Origin::Builtin(what) => Location::Builtin(what),
        Origin::Derived(_) => Location::Builtin("the GitHub environment"),
    }
}

#[cfg(test)]
mod tests;
