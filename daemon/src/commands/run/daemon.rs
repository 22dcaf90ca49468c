//! The daemon's state and the operations the control socket asks for: attach, detach,
//! status, reload. One [`tokio::sync::Mutex`] serialises them; connections never take it.

use std::{
    collections::BTreeMap,
    fs::File,
    os::{fd::OwnedFd, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex as StdMutex},
};

use anyhow::{Context as _, anyhow, bail};
use egressd_config::Config;
use egressd_ebpf_common::{FLAG_REDIRECT_LOOPBACK, SandboxConfig};
use egressd_proxy::{AuditLog, Lifecycle, OrigDstLookup, Proxy, token::Provenance};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::attachment::Attachment;
use crate::{
    cli::RunArgs,
    control::{Response, Status, Target},
    env,
    loader::Loader,
    policy,
    sandbox::{
        cgroup::{self, Cgroup},
        netns::{self, NetnsMode, NetnsSockets},
        trust::TrustBundle,
    },
};

/// The configuration in force and what was built from it.
pub struct Generation {
    /// The compiled configuration.
    pub config: Arc<Config>,
    /// `sha256:<hex>` of its policy entries.
    pub policy_hash: String,
    /// The interception CA and the token broker, when `[[intercept]]` rules exist.
    pub interception: Option<(
        Arc<egressd_proxy::intercept::EphemeralCa>,
        egressd_proxy::token::Broker,
    )>,
    /// The host patterns the CA was made for (its name constraints).
    pub intercept_hosts: Vec<String>,
}

/// Everything the daemon owns.
pub struct Daemon {
    args: RunArgs,
    audit: Arc<AuditLog>,
    loader: StdMutex<Loader>,
    orig: Arc<dyn OrigDstLookup>,
    provenance: Option<Provenance>,
    started: String,
    /// The interception CA's certificate fingerprint, for `arm` records.
    ca_fingerprint: Option<String>,
    /// The trust bundle file (removed on drop).
    bundle: Option<TrustBundle>,
    state: Mutex<State>,
}

/// What control operations change.
struct State {
    generation: Arc<Generation>,
    reloads: u64,
    last_reload_error: Option<String>,
    attachments: BTreeMap<String, Attachment>,
}

impl Daemon {
    /// Builds the daemon from a validated configuration; must run inside the runtime.
    pub fn new(
        args: RunArgs,
        config: Config,
        loader: Loader,
        audit: Arc<AuditLog>,
        provenance: Option<Provenance>,
    ) -> anyhow::Result<Self> {
        let orig = loader.orig_dst();
        let intercept_hosts = config.intercepts.host_patterns();
        let mut bundle = None;
        let mut ca_fingerprint = None;
        let ca = if intercept_hosts.is_empty() {
            None
        } else {
            let ca = Arc::new(
                egressd_proxy::intercept::EphemeralCa::new(&intercept_hosts)
                    .context("creating the interception CA")?,
            );
            let system = egressd_proxy::intercept::find_system_bundle().ok_or_else(|| {
                anyhow!(
                    "no system CA bundle found (looked in {}); install ca-certificates",
                    egressd_proxy::intercept::SYSTEM_BUNDLES.join(", ")
                )
            })?;
            let pem = egressd_proxy::intercept::trust_bundle(system, ca.cert_pem())
                .context("building the trust bundle")?;
            // Left behind by a daemon that was killed (the control socket is ours now).
            let _ =
                std::fs::remove_dir_all(Path::new(crate::sandbox::trust::RUN_DIR).join("daemon"));
            bundle = Some(TrustBundle::write("daemon", &pem, ca.cert_pem())?);
            ca_fingerprint = Some(crate::commands::audit::sha256_hex(ca.cert_der()));
            Some(ca)
        };
        let generation = generation(config, ca, provenance.clone())?;
        Ok(Self {
            args,
            audit,
            loader: StdMutex::new(loader),
            orig,
            provenance,
            started: now(),
            ca_fingerprint,
            bundle,
            state: Mutex::new(State {
                generation: Arc::new(generation),
                reloads: 0,
                last_reload_error: None,
                attachments: BTreeMap::new(),
            }),
        })
    }

    /// Attaches to `target`; `caller` is the pid of the process asking (for `Target::Job`).
    pub async fn attach(
        &self,
        target: Target,
        name: Option<String>,
        caller: Option<i32>,
    ) -> anyhow::Result<String> {
        let (cgroup, netns_path, default_name) = match target {
            Target::Cgroup { path, netns } => {
                let name = path
                    .file_name()
                    .map_or_else(|| "cgroup".to_owned(), |n| n.to_string_lossy().into_owned());
                (Cgroup::open(&path)?, netns, name)
            }
            Target::Pid { pid } => (
                Cgroup::of_pid(pid)?,
                Some(PathBuf::from(format!("/proc/{pid}/ns/net"))),
                format!("pid-{pid}"),
            ),
            Target::Job => {
                let pid = caller.ok_or_else(|| anyhow!("the caller's process id is unknown"))?;
                (
                    Cgroup::of_pid(pid)?,
                    Some(PathBuf::from(format!("/proc/{pid}/ns/net"))),
                    "job".to_owned(),
                )
            }
        };
        let name = name.unwrap_or(default_name);
        validate_name(&name)?;
        let mut state = self.state.lock().await;
        if state.attachments.contains_key(&name) {
            bail!("an attachment named {name:?} exists already (pass --name)");
        }
        if cgroup.path() == cgroup::cgroup2_root()? {
            bail!("refusing to attach to the root cgroup: it would firewall egressd itself");
        }
        for other in state.attachments.values() {
            if cgroup.contains(other.cgroup.path()) || other.cgroup.contains(cgroup.path()) {
                bail!(
                    "cgroup {} overlaps attachment {:?} ({}): one attachment per subtree",
                    cgroup.path().display(),
                    other.name,
                    other.cgroup.path().display()
                );
            }
        }
        // The daemon's own connections must not be redirected to itself.
        let own = cgroup::own_path()?;
        if cgroup.contains(&own) {
            let moved = cgroup::move_self_out()?;
            eprintln!(
                "egressd: moved the daemon out of {} into {} before attaching",
                cgroup.path().display(),
                moved.display()
            );
        }
        // The namespace: the daemon's own unless it is another one.
        let netns_path = match netns_path {
            Some(p) if !same_netns(&p)? => Some(p),
            _ => None,
        };
        let mode = match &netns_path {
            Some(p) => NetnsMode::Path(p.clone()),
            None => NetnsMode::Host,
        };
        let net = netns::prepare(&mode)?;
        // The listeners (and the socket thread) keep the namespace alive.
        let netns: Option<OwnedFd> = net.netns;
        let loopback = match &netns {
            Some(fd) => Some(Arc::new(NetnsSockets::start(fd)?)),
            None => None,
        };
        let port = |l: &std::net::TcpListener| l.local_addr().map(|a| a.port());
        let proxy_port = port(&net.listener4)?;
        let proxy_port6 = net.listener6.as_ref().map(port).transpose()?.unwrap_or(0);
        let dns_port = net.dns4.local_addr()?.port();
        let dns_port6 = match &net.dns6 {
            Some(s) => s.local_addr()?.port(),
            None => 0,
        };
        let mut attachment = Attachment {
            name: name.clone(),
            cgroup,
            netns_label: netns_path.map(|p| p.display().to_string()),
            loopback,
            links: None,
            tcp: std::iter::once(net.listener4)
                .chain(net.listener6)
                .collect(),
            udp: std::iter::once(net.dns4).chain(net.dns6).collect(),
            proxy_port,
            dns_port,
            serving: CancellationToken::new(),
            since: now(),
        };
        let generation = Arc::clone(&state.generation);
        let proxy = self.proxy_for(&generation, &attachment)?;
        attachment.serve(&proxy)?;
        let sandbox_config = SandboxConfig {
            proxy_port4: proxy_port.to_be(),
            proxy_port6: proxy_port6.to_be(),
            dns_port: dns_port.to_be(),
            dns_port6: dns_port6.to_be(),
            // The namespace is shared with processes outside the cgroup: loopback goes
            // through policy, as with `exec --netns host`.
            flags: FLAG_REDIRECT_LOOPBACK,
        };
        let (links, programs) = {
            let mut loader = self
                .loader
                .lock()
                .map_err(|_| anyhow!("loader lock poisoned"))?;
            let links = loader.attach(&attachment.cgroup, sandbox_config);
            (links, loader.programs())
        };
        let links = match links {
            Ok(l) => l,
            Err(e) => {
                attachment.serving.cancel();
                return Err(e);
            }
        };
        attachment.links = Some(links);
        self.audit.lifecycle(
            &Lifecycle::arm(&name, "ebpf")
                .programs(programs)
                .cgroup(attachment.cgroup.path().display().to_string())
                .policy_hash(generation.policy_hash.clone())
                .ca_fingerprint(self.ca_fingerprint.clone()),
        );
        let message = format!(
            "attached {name}: cgroup {}{}",
            attachment.cgroup.path().display(),
            attachment
                .netns_label
                .as_ref()
                .map(|n| format!(", network namespace {n}"))
                .unwrap_or_default()
        );
        state.attachments.insert(name, attachment);
        Ok(message)
    }

    /// Detaches one attachment, or all of them.
    pub async fn detach(&self, name: Option<&str>, all: bool) -> anyhow::Result<String> {
        let mut state = self.state.lock().await;
        let names: Vec<String> = if all {
            state.attachments.keys().cloned().collect()
        } else {
            let name = name.ok_or_else(|| anyhow!("detach needs a name or --all"))?;
            if !state.attachments.contains_key(name) {
                let known: Vec<&str> = state.attachments.keys().map(String::as_str).collect();
                bail!(
                    "no attachment named {name:?} (attached: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                );
            }
            vec![name.to_owned()]
        };
        for name in &names {
            if let Some(attachment) = state.attachments.remove(name) {
                self.release(attachment);
            }
        }
        Ok(if names.is_empty() {
            "nothing was attached".to_owned()
        } else {
            format!("detached {}", names.join(", "))
        })
    }

    /// Detaches the programs first (the cgroup's processes then connect directly, as before
    /// the attach), then stops serving.
    fn release(&self, mut attachment: Attachment) {
        if let Some(links) = attachment.links.take()
            && let Ok(mut loader) = self.loader.lock()
        {
            loader.detach(links);
        }
        attachment.serving.cancel();
        self.audit
            .lifecycle(&Lifecycle::disarm(&attachment.name, 0));
    }

    /// Re-reads the configuration; on error the running one stays and the error is kept
    /// for `status`.
    pub async fn reload(&self) -> anyhow::Result<String> {
        let mut state = self.state.lock().await;
        let result = self.reload_locked(&mut state);
        match &result {
            Ok(message) => {
                state.reloads += 1;
                state.last_reload_error = None;
                eprintln!("egressd: {message}");
            }
            Err(e) => {
                state.last_reload_error = Some(format!("{e:#}"));
                eprintln!("egressd: reload failed, the running policy stays: {e:#}");
            }
        }
        result
    }

    fn reload_locked(&self, state: &mut State) -> anyhow::Result<String> {
        let config = policy::build(&self.args.policy, self.args.audit_log.clone())
            .map_err(|e| anyhow!("{e}"))?;
        let hosts = config.intercepts.host_patterns();
        if hosts != state.generation.intercept_hosts {
            bail!(
                "the [[intercept]] hosts changed ({:?} -> {:?}); the interception CA is made \
                 for the hosts at start-up, so this change needs a restart",
                state.generation.intercept_hosts,
                hosts
            );
        }
        let ca = state
            .generation
            .interception
            .as_ref()
            .map(|(ca, _)| Arc::clone(ca));
        let generation = Arc::new(generation(config, ca, self.provenance.clone())?);
        // Build every proxy before switching any, so a failure switches none.
        let mut proxies = Vec::new();
        for attachment in state.attachments.values() {
            proxies.push(self.proxy_for(&generation, attachment)?);
        }
        for (attachment, proxy) in state.attachments.values_mut().zip(&proxies) {
            attachment.serve(proxy)?;
        }
        let message = format!(
            "reloaded: {} policy entries, {}",
            generation.config.policy.entries().len(),
            generation.policy_hash
        );
        state.generation = generation;
        Ok(message)
    }

    /// The daemon's state.
    pub async fn status(&self) -> Status {
        let state = self.state.lock().await;
        let summary = self.audit.summary();
        Status {
            pid: std::process::id(),
            started: self.started.clone(),
            policy_hash: state.generation.policy_hash.clone(),
            policy_entries: state.generation.config.policy.entries().len(),
            reloads: state.reloads,
            last_reload_error: state.last_reload_error.clone(),
            ca_bundle: self.bundle.as_ref().map(|b| b.file().display().to_string()),
            audit_log: self
                .args
                .audit_log
                .as_ref()
                .map(|p| p.display().to_string()),
            allowed: summary.allowed,
            denied: summary.denied,
            attachments: state.attachments.values().map(Attachment::info).collect(),
        }
    }

    /// A response carrying `result` and the current status.
    pub async fn respond(&self, result: anyhow::Result<String>) -> Response {
        let status = Some(self.status().await);
        match result {
            Ok(message) => Response {
                ok: true,
                error: None,
                message: Some(message),
                status,
            },
            Err(e) => Response {
                status,
                ..Response::failed(format!("{e:#}"))
            },
        }
    }

    /// Releases every attachment (shutdown).
    pub async fn shutdown(&self) {
        let mut state = self.state.lock().await;
        let attachments = std::mem::take(&mut state.attachments);
        for (_, attachment) in attachments {
            self.release(attachment);
        }
    }

    /// The proxy one attachment serves with under `generation`.
    fn proxy_for(
        &self,
        generation: &Generation,
        attachment: &Attachment,
    ) -> anyhow::Result<Arc<Proxy>> {
        let proxy = Proxy::new(
            Arc::clone(&generation.config),
            Arc::clone(&self.orig),
            Arc::clone(&self.audit),
            attachment.name.clone(),
        )
        .context("starting the proxy")?;
        let proxy = match &attachment.loopback {
            Some(sockets) => proxy.with_loopback_sockets(sockets.clone()),
            None => proxy,
        };
        let proxy = match &generation.interception {
            Some((ca, broker)) => proxy
                .with_interception(Arc::clone(ca), broker.clone())
                .context("starting TLS interception")?,
            None => proxy,
        };
        Ok(Arc::new(proxy))
    }
}

/// Builds a generation: the policy hash and, with a CA, a broker for the credentials.
fn generation(
    config: Config,
    ca: Option<Arc<egressd_proxy::intercept::EphemeralCa>>,
    provenance: Option<Provenance>,
) -> anyhow::Result<Generation> {
    let intercept_hosts = config.intercepts.host_patterns();
    let interception = match ca {
        Some(ca) => {
            let broker = egressd_proxy::token::Broker::with_provenance(
                &config,
                env::token_source_env(&config),
                provenance,
            )
            .context("setting up the credentials")?;
            Some((ca, broker))
        }
        None => None,
    };
    Ok(Generation {
        policy_hash: crate::commands::audit::policy_hash(&config.policy),
        config: Arc::new(config),
        interception,
        intercept_hosts,
    })
}

/// Attachment names appear in audit records and status tables: keep them plain.
fn validate_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | ':'));
    if ok {
        Ok(())
    } else {
        bail!("attachment name {name:?}: use 1-64 letters, digits, '-', '_', '.', '@' or ':'")
    }
}

/// Whether the namespace file `path` is the daemon's own network namespace.
fn same_netns(path: &Path) -> anyhow::Result<bool> {
    let theirs = File::open(path)
        .and_then(|f| f.metadata())
        .with_context(|| format!("opening network namespace {}", path.display()))?;
    let ours = std::fs::metadata("/proc/self/ns/net").context("reading /proc/self/ns/net")?;
    Ok(theirs.ino() == ours.ino() && theirs.dev() == ours.dev())
}

/// Now, RFC 3339 UTC.
fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
