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

/// An attached pod.
struct Attached {
    /// The attachment's name.
    name: String,
    /// Its pod cgroup, as found at the attach.
    cgroup: PathBuf,
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

    /// Attaches what should be and can be; lets go of the pods of which nothing runs.
    async fn reconcile(&mut self) {
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
        self.daemon.audit().set_k8s(
            &name,
            Some(egressd_proxy::K8sMeta {
                node: self.node.clone(),
                namespace: pod.namespace.clone(),
                pod: pod.name.clone(),
                pod_uid: pod.uid.clone(),
                scale_set: pod.scale_set().map(str::to_owned),
                policy: policy.clone(),
            }),
        );
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
                self.attached
                    .insert(pod.uid.clone(), Attached { name, cgroup });
            }
            // Re-armed from a saved state after the daemon died: adopted as it is.
            Err(_) if self.daemon.has_attachment(&name).await => {
                self.attached
                    .insert(pod.uid.clone(), Attached { name, cgroup });
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
