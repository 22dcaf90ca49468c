//! `egressd run --kubernetes`: the node agent. It lists and watches, through the Kubernetes
//! API (kube-rs, `spec.nodeName=<node>` and `--pod-selector`), the runner pods scheduled on
//! this node, and keeps one attachment per pod: at the pod's cgroup (which covers the
//! containers the runtime creates below it, see `maps.rs`' `current_sandbox` in the kernel
//! programs), in the pod's network namespace, under the pod's policy (`pods.rs`). It
//! attaches a pod as soon as its cgroup holds a process in a network namespace other than
//! the node's (the runtime's sandbox, whose namespace the containers join), and lets it go
//! only once nothing of it runs: its cgroup gone, or empty after the API said the pod was
//! deleted or finished. A pod in its termination grace period stays firewalled.
//!
//! The watch is the source of what should be attached; the node's cgroups are looked at on
//! every event and every [`RESCAN`], so that a pod the API announced before the kubelet
//! made its cgroup is attached once it exists. A dropped watch is resumed by kube-rs (with
//! backoff); after a relist, pods that are no longer listed are detached.
//!
//! # Limits
//!
//! The pod is attached once its sandbox process runs: a container that starts and sends
//! within the [`RESCAN`] after that is not yet redirected. A gate that keeps a new pod's
//! network closed until it is attached is not built yet.

mod cgroups;
mod pods;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio_util::sync::CancellationToken;

use self::pods::PodView;
use super::daemon::Daemon;
use crate::cli::KubeArgs;
use crate::control::Target;

/// How often the node's cgroups are looked at for pods waiting to be attached or gone.
pub const RESCAN: Duration = Duration::from_millis(200);

/// Connects to the API server (kube-rs's default: `KUBECONFIG`, else in-cluster) and runs
/// the agent until `stop`.
///
/// # Errors
///
/// No node name, or no API server configuration.
pub async fn run(
    daemon: Arc<Daemon>,
    args: KubeArgs,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let node = args
        .node_name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| anyhow!("--kubernetes needs --node-name (or NODE_NAME)"))?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (KUBECONFIG, or the pod's service account)")?;
    eprintln!(
        "egressd: Kubernetes agent for node {node}: watching pods with {:?}; policies from {}",
        args.pod_selector,
        args.policy_dir.display()
    );
    let api: kube::Api<Pod> = kube::Api::all(client);
    let config = watcher::Config::default()
        .fields(&format!("spec.nodeName={node}"))
        .labels(&args.pod_selector);
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut agent = Agent {
        daemon,
        args,
        node,
        wanted: BTreeMap::new(),
        listing: None,
        attached: BTreeMap::new(),
        errors: BTreeMap::new(),
        policies_seen: None,
    };
    let mut rescan = tokio::time::interval(RESCAN);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            event = events.next() => match event {
                Some(Ok(event)) => agent.on_event(event),
                Some(Err(e)) => tracing::warn!(error = %e, "watching pods (kube-rs retries)"),
                None => break,
            },
            _ = rescan.tick() => {}
        }
        agent.reconcile().await;
    }
    Ok(())
}

/// What the audit says of a pod under `policy`.
fn k8s_meta(node: &str, pod: &PodView, policy: &str) -> egressd_proxy::K8sMeta {
    egressd_proxy::K8sMeta {
        node: node.to_owned(),
        namespace: pod.namespace.clone(),
        pod: pod.name.clone(),
        pod_uid: pod.uid.clone(),
        scale_set: pod.scale_set().map(str::to_owned),
        policy: policy.to_owned(),
    }
}

/// The files of `dir` with their sizes and modification times, sorted (empty when it cannot
/// be read). The kubelet replaces a mounted ConfigMap by swapping a symbolic link: the
/// times of what the names point at change.
fn policy_files(dir: &std::path::Path) -> Vec<(String, u64, std::time::SystemTime)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let meta = std::fs::metadata(e.path()).ok()?;
                    meta.is_file().then(|| {
                        (
                            e.file_name().to_string_lossy().into_owned(),
                            meta.len(),
                            meta.modified().unwrap_or(std::time::UNIX_EPOCH),
                        )
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// An attached pod.
struct Attached {
    /// The attachment's name.
    name: String,
    /// Its pod cgroup, as found at the attach.
    cgroup: PathBuf,
    /// The policy it runs under.
    policy: String,
}

/// What the agent knows and holds.
struct Agent {
    daemon: Arc<Daemon>,
    args: KubeArgs,
    node: String,
    /// The runner pods the API lists on this node, by UID.
    wanted: BTreeMap<String, PodView>,
    /// During a relist: the UIDs listed so far.
    listing: Option<BTreeSet<String>>,
    /// Attached pods by UID.
    attached: BTreeMap<String, Attached>,
    /// The last attach error of each pod, so that each cause is said once.
    errors: BTreeMap<String, String>,
    /// What `--policy-dir` held at the last look (names, sizes, times), to reload when the
    /// kubelet updates the mounted ConfigMap.
    policies_seen: Option<Vec<(String, u64, std::time::SystemTime)>>,
}

impl Agent {
    fn on_event(&mut self, event: watcher::Event<Pod>) {
        match event {
            watcher::Event::Init => self.listing = Some(BTreeSet::new()),
            watcher::Event::InitApply(pod) => {
                if let Some(view) = PodView::of(&pod) {
                    if let Some(listed) = &mut self.listing {
                        listed.insert(view.uid.clone());
                    }
                    self.wanted.insert(view.uid.clone(), view);
                }
            }
            watcher::Event::InitDone => {
                // Pods that went while the watch was down: no longer listed.
                if let Some(listed) = self.listing.take() {
                    self.wanted.retain(|uid, _| listed.contains(uid));
                }
            }
            watcher::Event::Apply(pod) => {
                if let Some(view) = PodView::of(&pod) {
                    self.wanted.insert(view.uid.clone(), view);
                }
            }
            watcher::Event::Delete(pod) => {
                if let Some(uid) = pod.metadata.uid {
                    self.wanted.remove(&uid);
                }
            }
        }
    }

    /// Attaches what should be and can be; lets go of the pods of which nothing runs; keeps
    /// each pod under the policy it should have now.
    async fn reconcile(&mut self) {
        self.follow_policies().await;
        let gone: Vec<String> = self
            .attached
            .iter()
            .filter(|(uid, attached)| {
                let live = self
                    .wanted
                    .get(*uid)
                    .is_some_and(|p| !p.deleting && !p.finished);
                // A cgroup that cannot be looked at (no descriptors left...) is kept.
                match attached.cgroup.try_exists() {
                    Ok(false) => true,
                    Ok(true) => !live && cgroups::pod_processes(&attached.cgroup).is_empty(),
                    Err(_) => false,
                }
            })
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in gone {
            if let Some(attached) = self.attached.remove(&uid) {
                self.detach(&attached.name).await;
            }
        }
        self.errors.retain(|uid, _| self.wanted.contains_key(uid));
        let waiting: Vec<PodView> = self
            .wanted
            .values()
            .filter(|p| !p.deleting && !p.finished && !self.attached.contains_key(&p.uid))
            .cloned()
            .collect();
        for pod in waiting {
            self.attach(&pod).await;
        }
    }

    /// Reloads when the policy files changed (the kubelet swapped the mounted ConfigMap), and
    /// moves a pod whose policy choice changed (its annotation, or its scale set's policy
    /// appeared or went) under the new one.
    async fn follow_policies(&mut self) {
        let now = policy_files(&self.args.policy_dir);
        if self.policies_seen.as_ref().is_some_and(|seen| *seen != now) {
            // `reload` says what it did, or why the old policies stay.
            let _ = self.daemon.reload().await;
        }
        self.policies_seen = Some(now);
        let dir = self.args.policy_dir.clone();
        let exists = |n: &str| dir.join(n).is_file() || dir.join(format!("{n}.toml")).is_file();
        let moves: Vec<(String, String)> = self
            .attached
            .iter()
            .filter_map(|(uid, attached)| {
                let wanted = self.wanted.get(uid)?.policy(exists);
                (wanted != attached.policy).then(|| (uid.clone(), wanted))
            })
            .collect();
        for (uid, policy) in moves {
            let (Some(attached), Some(pod)) = (self.attached.get_mut(&uid), self.wanted.get(&uid))
            else {
                continue;
            };
            match self.daemon.set_policy(&attached.name, &policy).await {
                Ok(()) => {
                    eprintln!(
                        "egressd: pod {}/{}: now under policy {policy} (was {})",
                        pod.namespace, pod.name, attached.policy
                    );
                    attached.policy = policy;
                    let meta = k8s_meta(&self.node, pod, &attached.policy);
                    self.daemon.audit().set_k8s(&attached.name, Some(meta));
                }
                Err(e) => eprintln!(
                    "egressd: error: pod {}/{}: moving it to policy {policy}: {e:#}",
                    pod.namespace, pod.name
                ),
            }
        }
    }

    async fn attach(&mut self, pod: &PodView) {
        let Some(cgroup) = cgroups::pod_cgroup(&self.args.cgroup_root, &pod.uid) else {
            return; // not created by the kubelet yet
        };
        // A process in the pod's own namespace: the node's namespace holds only processes on
        // their way in, or runtime helpers (CRI-O's conmon), unless the pod uses the node's
        // network. None yet: the sandbox has not started.
        let Some(pid) = cgroups::pod_processes(&cgroup)
            .into_iter()
            .find(|&pid| pod.host_network || cgroups::in_our_netns(pid) == Some(false))
        else {
            return;
        };
        let name = pod.attachment_name();
        let dir = &self.args.policy_dir;
        let policy =
            pod.policy(|n| dir.join(n).is_file() || dir.join(format!("{n}.toml")).is_file());
        let target = Target::Cgroup {
            path: cgroup.clone(),
            netns: Some(PathBuf::from(format!("/proc/{pid}/ns/net"))),
        };
        self.daemon
            .audit()
            .set_k8s(&name, Some(k8s_meta(&self.node, pod, &policy)));
        match self
            .daemon
            .attach_with(target, Some(name.clone()), None, Some(&policy))
            .await
        {
            Ok(message) => {
                eprintln!(
                    "egressd: pod {}/{}: {message} (policy {policy})",
                    pod.namespace, pod.name
                );
                self.errors.remove(&pod.uid);
                let attached = Attached {
                    name,
                    cgroup,
                    policy,
                };
                self.attached.insert(pod.uid.clone(), attached);
            }
            // Re-armed from a saved state after the daemon died: adopted, and moved to the
            // policy it should have if that differs (at the next look).
            Err(_) if self.daemon.has_attachment(&name).await => {
                let policy = self.daemon.policy_of(&name).await.unwrap_or_default();
                let attached = Attached {
                    name,
                    cgroup,
                    policy,
                };
                self.attached.insert(pod.uid.clone(), attached);
            }
            Err(e) => {
                self.daemon.audit().set_k8s(&name, None);
                // Tried again at the next rescan; each cause is said once.
                let why = format!("{e:#}");
                if self.errors.get(&pod.uid) != Some(&why) {
                    eprintln!(
                        "egressd: error: pod {}/{} could not be attached (retrying): {why}",
                        pod.namespace, pod.name
                    );
                    self.errors.insert(pod.uid.clone(), why);
                }
            }
        }
    }

    async fn detach(&self, name: &str) {
        match self.daemon.detach(Some(name), false).await {
            Ok(message) => eprintln!("egressd: {message}"),
            Err(e) => {
                tracing::warn!(attachment = name, error = %format!("{e:#}"), "detaching a pod")
            }
        }
        self.daemon.audit().set_k8s(name, None);
    }
}
