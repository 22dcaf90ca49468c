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

use super::attachment::{AttachedLinks, Attachment};
use crate::{
    cli::{PolicyArgs, RunArgs},
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
    /// The in-kernel relay every proxy hands pass-through to, when this kernel has one.
    kernel_relay: Option<Arc<dyn egressd_proxy::KernelRelay>>,
    provenance: Option<Provenance>,
    started: String,
    /// The interception CA's certificate fingerprint, for `arm` records.
    ca_fingerprint: Option<String>,
    /// The trust bundle file (removed on drop).
    bundle: Option<TrustBundle>,
    /// Where links are pinned (`<bpffs>/egressd/<daemon id>`), when bpffs is available.
    pins: Option<PathBuf>,
    /// Where the attachments are saved for a restarted daemon.
    state_file: PathBuf,
    state: Mutex<State>,
}

/// What control operations change.
struct State {
    generation: Arc<Generation>,
    reloads: u64,
    last_reload_error: Option<String>,
    attachments: BTreeMap<String, Attachment>,
    /// The named policies in use (`--policy-dir`), built on first use, rebuilt on reload.
    named: BTreeMap<String, Arc<Generation>>,
    /// Attachments of a daemon that died which could not be re-armed: their pinned links
    /// keep the cgroup closed until `detach NAME`.
    orphans: BTreeMap<String, Saved>,
}

/// An attachment as saved for a restarted daemon (`<control socket>.state`, root-only).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Saved {
    /// The attachment's name.
    pub name: String,
    /// The cgroup directory.
    pub cgroup: PathBuf,
    /// A path to its network namespace, when not the daemon's.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// The bpffs directory of its pinned links.
    #[serde(default)]
    pub pins: Option<PathBuf>,
    /// Container runtime sockets closed to its job, with their original ACLs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub closed: Vec<crate::sandbox::runtime_acl::Closed>,
    /// The named policy it ran under (`--policy-dir`), re-armed with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

impl Daemon {
    /// Builds the daemon from a validated configuration; must run inside the runtime.
    pub fn new(
        args: RunArgs,
        config: Config,
        loader: Loader,
        audit: Arc<AuditLog>,
        provenance: Option<Provenance>,
        pins: Option<PathBuf>,
        state_file: PathBuf,
    ) -> anyhow::Result<Self> {
        let orig = loader.orig_dst();
        let kernel_relay = args.policy.relay.pick(loader.kernel_relay())?;
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
            ca_fingerprint = Some(crate::digest::sha256_hex(ca.cert_der()));
            Some(ca)
        };
        let generation = generation(config, ca, provenance.clone())?;
        Ok(Self {
            args,
            audit,
            loader: StdMutex::new(loader),
            orig,
            kernel_relay,
            provenance,
            started: now(),
            ca_fingerprint,
            bundle,
            pins,
            state_file,
            state: Mutex::new(State {
                generation: Arc::new(generation),
                reloads: 0,
                last_reload_error: None,
                attachments: BTreeMap::new(),
                named: BTreeMap::new(),
                orphans: BTreeMap::new(),
            }),
        })
    }

    /// Puts attachment `name` under the named policy `policy` (the Kubernetes agent, when a
    /// pod's annotation changes or its scale set's policy appears): its proxy is rebuilt and
    /// swapped; the programs stay.
    pub async fn set_policy(&self, name: &str, policy: &str) -> anyhow::Result<()> {
        let mut state = self.state.lock().await;
        let generation = self.named_or_closed(&mut state, policy)?;
        let attachment = state
            .attachments
            .get(name)
            .ok_or_else(|| anyhow!("no attachment named {name:?}"))?;
        let proxy = self.proxy_for(&generation, attachment)?;
        let attachment = state
            .attachments
            .get_mut(name)
            .ok_or_else(|| anyhow!("no attachment named {name:?}"))?;
        attachment.serve(&proxy)?;
        attachment.policy = Some(policy.to_owned());
        self.save(&state);
        Ok(())
    }

    /// The named policy attachment `name` runs under, if any.
    pub async fn policy_of(&self, name: &str) -> Option<String> {
        self.state
            .lock()
            .await
            .attachments
            .get(name)
            .and_then(|a| a.policy.clone())
    }

    /// Whether an attachment named `name` exists.
    pub async fn has_attachment(&self, name: &str) -> bool {
        self.state.lock().await.attachments.contains_key(name)
    }

    /// The audit log every attachment writes to.
    pub fn audit(&self) -> &Arc<AuditLog> {
        &self.audit
    }

    /// Attaches to `target`; `caller` is the pid of the process asking (for `Target::Job`).
    pub async fn attach(
        &self,
        target: Target,
        name: Option<String>,
        caller: Option<i32>,
    ) -> anyhow::Result<String> {
        self.attach_with(target, name, caller, None).await
    }

    /// [`attach`](Self::attach) under the named policy `policy` of `--policy-dir` (the
    /// Kubernetes agent's pods), else the daemon's own.
    pub async fn attach_with(
        &self,
        target: Target,
        name: Option<String>,
        caller: Option<i32>,
        policy: Option<&str>,
    ) -> anyhow::Result<String> {
        // `attach --job`: the job's user, whom the container runtime sockets are closed to.
        let close_runtime_for = match &target {
            Target::Job {
                user: Some(uid),
                allow_docker: false,
            } => Some(*uid),
            _ => None,
        };
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
            Target::Job { .. } => {
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
        let generation = match policy {
            Some(policy) => self.named_or_closed(&mut state, policy)?,
            None => Arc::clone(&state.generation),
        };
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
        let netns_fd_for_pin = match &netns {
            Some(fd) => Some(fd.try_clone()?),
            None => None,
        };
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
            netns_pin: None,
            tcp: std::iter::once(net.listener4)
                .chain(net.listener6)
                .collect(),
            udp: std::iter::once(net.dns4).chain(net.dns6).collect(),
            proxy_port,
            dns_port,
            serving: CancellationToken::new(),
            since: now(),
            closed: Vec::new(),
            docker_watch: None,
            policy: policy.map(str::to_owned),
        };
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
        let links = links.and_then(|links| match &self.pins {
            Some(root) => {
                // bpffs refuses names with a dot.
                let dir = root.join(format!("{}-{}", name.replace('.', "_"), std::process::id()));
                let mut loader = self
                    .loader
                    .lock()
                    .map_err(|_| anyhow!("loader lock poisoned"))?;
                Ok(AttachedLinks::Pinned(loader.pin(links, &dir)?))
            }
            None => Ok(AttachedLinks::Plain(links)),
        });
        let links = match links {
            Ok(l) => l,
            Err(e) => {
                attachment.serving.cancel();
                return Err(e);
            }
        };
        attachment.links = Some(links);
        attachment.netns_pin = match (&netns_fd_for_pin, &attachment.netns_label) {
            (Some(fd), Some(_)) => match pin_netns(fd, &name) {
                Ok(path) => Some(path),
                Err(e) => {
                    tracing::warn!(
                        "keeping the namespace of {name} findable after a restart: {e:#}"
                    );
                    None
                }
            },
            _ => None,
        };
        self.audit.lifecycle(
            &Lifecycle::arm(&name, "ebpf")
                .programs(programs)
                .cgroup(attachment.cgroup.path().display().to_string())
                .policy_hash(generation.policy_hash.clone())
                .ca_fingerprint(self.ca_fingerprint.clone()),
        );
        let mut message = format!(
            "attached {name}: cgroup {}{}",
            attachment.cgroup.path().display(),
            attachment
                .netns_label
                .as_ref()
                .map(|n| format!(", network namespace {n}"))
                .unwrap_or_default()
        );
        match close_runtime_for {
            Some(0) => message.push_str(
                "; the job runs as root, so the container runtime sockets stay open to it",
            ),
            Some(uid) => {
                let sockets = state.generation.config.sandbox.runtime_sockets();
                let (closed, failures) = crate::sandbox::runtime_acl::close(uid, &sockets);
                for c in &closed {
                    message.push_str(&format!(
                        "; closed {} to uid {uid} (the job's user; --allow-docker keeps it open)",
                        c.path.display()
                    ));
                }
                for why in failures {
                    message.push_str(&format!("; warning: could not close {why}"));
                }
                attachment.closed = closed;
            }
            None => {}
        }
        state.attachments.insert(name, attachment);
        self.save(&state);
        Ok(message)
    }

    /// For a job attached with `--allow-docker`: follows Docker's events (on the first
    /// existing `docker.sock` of `[sandbox] runtime_sockets`) and attaches the containers the
    /// job starts (`docker_events.rs`). Returns what to tell the caller.
    pub async fn watch_docker(self: &Arc<Self>, job: &str) -> String {
        let mut state = self.state.lock().await;
        let socket = state
            .generation
            .config
            .sandbox
            .runtime_sockets()
            .into_iter()
            .find(|p| p.file_name().is_some_and(|n| n == "docker.sock") && p.exists());
        let Some(socket) = socket else {
            return "no Docker socket here: the containers it starts are not followed".to_owned();
        };
        let Some(attachment) = state.attachments.get_mut(job) else {
            return String::new();
        };
        let stop = CancellationToken::new();
        attachment.docker_watch = Some(stop.clone());
        tokio::spawn(super::docker_events::watch(
            Arc::clone(self),
            socket.clone(),
            job.to_owned(),
            stop,
        ));
        format!(
            "following Docker's events at {}: every container {job} starts is attached as \
             {}",
            socket.display(),
            super::docker_events::container_name(job, "<id>")
        )
    }

    /// Detaches one attachment, or all of them.
    pub async fn detach(&self, name: Option<&str>, all: bool) -> anyhow::Result<String> {
        let mut state = self.state.lock().await;
        let names: Vec<String> = if all {
            state
                .attachments
                .keys()
                .chain(state.orphans.keys())
                .cloned()
                .collect()
        } else {
            let name = name.ok_or_else(|| anyhow!("detach needs a name or --all"))?;
            if !state.attachments.contains_key(name) && !state.orphans.contains_key(name) {
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
        // A job's containers (`attach --job --allow-docker`) go with it.
        let mut names = names;
        for name in names.clone() {
            if state
                .attachments
                .get(&name)
                .is_some_and(|a| a.docker_watch.is_some())
            {
                let prefix = format!("{name}-docker-");
                names.extend(
                    state
                        .attachments
                        .keys()
                        .filter(|k| k.starts_with(&prefix))
                        .cloned(),
                );
            }
        }
        for name in &names {
            if let Some(attachment) = state.attachments.remove(name) {
                self.release(attachment);
            }
            if let Some(orphan) = state.orphans.remove(name) {
                release_saved(&orphan);
            }
        }
        self.save(&state);
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
            match links {
                AttachedLinks::Plain(links) => loader.detach(links),
                AttachedLinks::Pinned(pinned) => loader.release(pinned),
            }
        }
        if let Some(path) = attachment.netns_pin.take() {
            unpin_netns(&path);
        }
        for why in crate::sandbox::runtime_acl::reopen(&attachment.closed) {
            eprintln!("egressd: warning: could not reopen {why}");
        }
        if let Some(watch) = attachment.docker_watch.take() {
            watch.cancel();
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
        // The named policies are read again too, each once.
        let previous_named = std::mem::take(&mut state.named);
        let rebuilt = self.rebuild_proxies(state, &generation);
        if rebuilt.is_err() {
            state.named = previous_named;
        }
        let proxies = rebuilt?;
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

    /// Every attachment's proxy under `generation` (or its named policy, read again), built
    /// before any is switched, so that a failure switches none.
    fn rebuild_proxies(
        &self,
        state: &mut State,
        generation: &Arc<Generation>,
    ) -> anyhow::Result<Vec<Arc<Proxy>>> {
        let policies: Vec<Option<String>> = state
            .attachments
            .values()
            .map(|a| a.policy.clone())
            .collect();
        let mut generations = Vec::new();
        for policy in &policies {
            generations.push(match policy {
                Some(name) => self.named_or_closed(state, name)?,
                None => Arc::clone(generation),
            });
        }
        state
            .attachments
            .values()
            .zip(&generations)
            .map(|(attachment, generation)| self.proxy_for(generation, attachment))
            .collect()
    }

    /// [`named_generation`](Self::named_generation), or, when that policy cannot be used
    /// (missing, invalid, with `[[intercept]]` rules), one that allows nothing: a pod whose
    /// policy is broken is closed, not left open. Said on stderr; the next reload tries the
    /// named policy again.
    fn named_or_closed(&self, state: &mut State, name: &str) -> anyhow::Result<Arc<Generation>> {
        match self.named_generation(state, name) {
            Ok(generation) => Ok(generation),
            Err(e) => {
                eprintln!(
                    "egressd: error: {e:#}; the pods under policy {name:?} get one that allows \
                     nothing until it is fixed and reloaded"
                );
                let closed = PolicyArgs {
                    no_github: true,
                    ..PolicyArgs::default()
                };
                let config = policy::build(&closed, self.args.audit_log.clone())
                    .map_err(|e| anyhow!("building the closed policy: {e}"))?;
                let closed = Arc::new(generation(config, None, self.provenance.clone())?);
                state.named.insert(name.to_owned(), Arc::clone(&closed));
                Ok(closed)
            }
        }
    }

    /// The generation of the policy named `name` in `--policy-dir` (the file `name`, else
    /// `name.toml`), with the command line's policy flags; built once until the next reload.
    fn named_generation(&self, state: &mut State, name: &str) -> anyhow::Result<Arc<Generation>> {
        if let Some(generation) = state.named.get(name) {
            return Ok(Arc::clone(generation));
        }
        let valid = !name.is_empty()
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            bail!(
                "policy name {name:?}: a ConfigMap key (letters, digits, '-', '_', '.') expected"
            );
        }
        let dir = &self.args.kube.policy_dir;
        let path = [dir.join(name), dir.join(format!("{name}.toml"))]
            .into_iter()
            .find(|p| p.is_file())
            .ok_or_else(|| anyhow!("no policy {name:?} in {}", dir.display()))?;
        let mut args = self.args.policy.clone();
        args.config = Some(path.clone());
        let config = policy::build(&args, self.args.audit_log.clone())
            .map_err(|e| anyhow!("policy {name:?} ({}): {e}", path.display()))?;
        if !config.intercepts.host_patterns().is_empty() {
            bail!(
                "policy {name:?} has [[intercept]] rules: per-pod policies cannot intercept TLS \
                 yet (the interception CA is made for the daemon's own policy)"
            );
        }
        let built = Arc::new(generation(config, None, self.provenance.clone())?);
        state.named.insert(name.to_owned(), Arc::clone(&built));
        Ok(built)
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
            audit_unwritten: summary.unwritten,
            otlp: summary.otlp.map(Into::into),
            attachments: state.attachments.values().map(Attachment::info).collect(),
            orphans: state.orphans.keys().cloned().collect(),
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

    /// Releases every attachment (shutdown). Orphans stay closed (and saved).
    pub async fn shutdown(&self) {
        let mut state = self.state.lock().await;
        let attachments = std::mem::take(&mut state.attachments);
        for (_, attachment) in attachments {
            self.release(attachment);
        }
        self.save(&state);
        if let Some(pins) = &self.pins {
            // Only when empty: orphans' pins stay.
            let _ = std::fs::remove_dir(pins);
        }
    }

    /// The Kubernetes agent's way out (SIGTERM: an upgrade, an eviction): stops serving but
    /// leaves each pinned attachment's programs and the saved state, so that its pod stays
    /// closed (its connections go to listeners that are gone, and are refused) until the next
    /// agent re-arms it ([`rearm`](Self::rearm)). Attachments that are not pinned are
    /// released as at [`shutdown`](Self::shutdown).
    pub async fn leave(&self) {
        let mut state = self.state.lock().await;
        let attachments = std::mem::take(&mut state.attachments);
        for (_, mut attachment) in attachments {
            if matches!(attachment.links, Some(AttachedLinks::Pinned(_))) {
                attachment.serving.cancel();
                // The pins stay in bpffs; dropping the handles closes only our descriptors.
                drop(attachment.links.take());
                attachment.netns_pin = None;
            } else {
                self.release(attachment);
            }
        }
    }

    /// Re-arms the attachments a previous daemon on this socket left pinned (it died):
    /// each is attached again, then the old pins are removed. One that cannot be re-armed
    /// stays closed by its old pins and is reported.
    pub async fn rearm(&self) -> Vec<String> {
        let saved: Vec<Saved> = match std::fs::read(&self.state_file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                eprintln!("egressd: ignoring {}: {e}", self.state_file.display());
                Vec::new()
            }),
            Err(_) => return Vec::new(),
        };
        let mut messages = Vec::new();
        for old in saved {
            if !old.cgroup.exists() {
                release_saved(&old);
                messages.push(format!(
                    "released {}: its cgroup {} is gone",
                    old.name,
                    old.cgroup.display()
                ));
                continue;
            }
            let target = Target::Cgroup {
                path: old.cgroup.clone(),
                netns: old.netns.clone(),
            };
            let policy = old.policy.as_deref();
            match self
                .attach_with(target, Some(old.name.clone()), None, policy)
                .await
            {
                Ok(_) => {
                    // The sockets stay closed; the new attachment reopens them when detached.
                    let mut state = self.state.lock().await;
                    if let Some(a) = state.attachments.get_mut(&old.name) {
                        a.closed.clone_from(&old.closed);
                    }
                    self.save(&state);
                    drop(state);
                    release_saved(&Saved {
                        closed: Vec::new(),
                        ..old.clone()
                    });
                    messages.push(format!(
                        "re-armed {} (cgroup {}) left by a previous daemon",
                        old.name,
                        old.cgroup.display()
                    ));
                }
                Err(e) => {
                    messages.push(format!(
                        "could not re-arm {} (cgroup {}), it stays closed until `egressd detach {}`: {e:#}",
                        old.name,
                        old.cgroup.display(),
                        old.name
                    ));
                    let mut state = self.state.lock().await;
                    state.orphans.insert(old.name.clone(), old);
                    self.save(&state);
                }
            }
        }
        messages
    }

    /// Writes the attachments (and orphans) for a restarted daemon; removes the file when
    /// there are none.
    fn save(&self, state: &State) {
        let saved: Vec<Saved> = state
            .attachments
            .values()
            .filter_map(|a| match &a.links {
                Some(AttachedLinks::Pinned(p)) => Some(Saved {
                    name: a.name.clone(),
                    cgroup: a.cgroup.path().to_path_buf(),
                    netns: a.netns_pin.clone(),
                    pins: Some(p.dir().to_path_buf()),
                    closed: a.closed.clone(),
                    policy: a.policy.clone(),
                }),
                _ => None,
            })
            .chain(state.orphans.values().cloned())
            .collect();
        let result = if saved.is_empty() {
            match std::fs::remove_file(&self.state_file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        } else {
            write_private(
                &self.state_file,
                &serde_json::to_vec_pretty(&saved).unwrap_or_default(),
            )
        };
        if let Err(e) = result {
            tracing::warn!("saving {}: {e}", self.state_file.display());
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
        let proxy = match &self.kernel_relay {
            Some(relay) => proxy.with_kernel_relay(Arc::clone(relay)),
            None => proxy,
        };
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
        policy_hash: config.policy.fingerprint(),
        config: Arc::new(config),
        interception,
        intercept_hosts,
    })
}

/// Removes what a saved attachment left: its pinned links (detaching its programs) and
/// its namespace bind mount.
fn release_saved(saved: &Saved) {
    if let Some(pins) = &saved.pins
        && pins.exists()
        && let Err(e) = crate::loader::unpin_dir(pins)
    {
        eprintln!("egressd: releasing {}: {e:#}", saved.name);
    }
    if let Some(netns) = &saved.netns
        && netns.starts_with(NETNS_DIR)
    {
        unpin_netns(netns);
    }
    for why in crate::sandbox::runtime_acl::reopen(&saved.closed) {
        eprintln!("egressd: releasing {}: could not reopen {why}", saved.name);
    }
}

/// Writes `bytes` to `path` (mode 0600), replacing it atomically.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Where namespaces of attachments are bind-mounted (as `ip netns add` does).
const NETNS_DIR: &str = "/run/egressd/netns";

/// Bind-mounts the namespace `fd` at `/run/egressd/netns/<name>.<pid>`.
fn pin_netns(fd: &OwnedFd, name: &str) -> anyhow::Result<PathBuf> {
    use std::os::fd::AsRawFd as _;
    std::fs::create_dir_all(NETNS_DIR).with_context(|| format!("creating {NETNS_DIR}"))?;
    let path = Path::new(NETNS_DIR).join(format!("{name}.{}", std::process::id()));
    File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let source = format!("/proc/self/fd/{}", fd.as_raw_fd());
    nix::mount::mount(
        Some(source.as_str()),
        &path,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .with_context(|| format!("bind-mounting the namespace at {}", path.display()))?;
    Ok(path)
}

/// Undoes [`pin_netns`].
fn unpin_netns(path: &Path) {
    let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_file(path);
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
