//! `egressd run --kubernetes` on a simulated node: the real kube-rs client in the agent
//! against a fake API server that speaks list and watch (`FakeKubeApi`), pod cgroups in the
//! kubelet's layout (systemd driver) under a test cgroup, each pod's "pause" process in a
//! network namespace with no route out (the scene's), and containers in cgroups below the
//! pod's. Pods come and go through the API; the agent attaches each runner pod of its node
//! with its scale set's policy and detaches it when it goes.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use egressd_tests::{
    API, EVIL, EgressdCommand, Scene,
    fakes::{FakeKubeApi, kube::pod},
    privileged, read_audit,
};
use serde_json::Value;

use crate::daemon::{Daemon, TestCgroup, curl, hello, in_job, run_command};

const NODE: &str = "node-1";
const SCALE_SET: &str = "actions.github.com/scale-set-name";
const RUNNER: (&str, &str) = ("app.kubernetes.io/component", "runner");

/// A pod's cgroups on the simulated node: the pod cgroup (systemd driver layout) and, once
/// started, its sandbox process's cgroup.
struct PodCgroups {
    sandbox: TestCgroup,
    pod: TestCgroup,
    pause: std::process::Child,
}

impl PodCgroups {
    /// Makes the pod cgroup of `uid` under `root`, and starts its sandbox process ("pause")
    /// in a child cgroup and in the scene's namespace.
    fn start(root: &Path, uid: &str, s: &Scene) -> Self {
        let pod = root
            .join("kubepods.slice/kubepods-besteffort.slice")
            .join(format!(
                "kubepods-besteffort-pod{}.slice",
                uid.replace('-', "_")
            ));
        fs::create_dir_all(&pod).unwrap();
        let sandbox = pod.join("cri-containerd-sandbox.scope");
        fs::create_dir_all(&sandbox).unwrap();
        let sandbox = TestCgroup { path: sandbox };
        // The runtime starts it in the pod's namespace.
        let pause = Command::new("nsenter")
            .arg(format!("--net={}", s.net.netns_path().display()))
            .args(["bash", "-c"])
            .arg(format!(
                "echo $$ > {} && exec sleep 600",
                sandbox.procs().display()
            ))
            .spawn()
            .expect("starting the pod's sandbox process");
        wait_for("the sandbox process in its cgroup", || {
            fs::read_to_string(sandbox.procs()).is_ok_and(|p| !p.trim().is_empty())
        });
        Self {
            sandbox,
            pod: TestCgroup { path: pod },
            pause,
        }
    }

    /// A container cgroup of the pod (made now, after the pod was attached).
    fn container(&self, name: &str) -> TestCgroup {
        let path = self.pod.path.join(format!("cri-containerd-{name}.scope"));
        fs::create_dir_all(&path).unwrap();
        TestCgroup { path }
    }

    /// The runtime tears the pod down: its processes end and its cgroups go.
    fn remove(mut self) {
        drop(self.sandbox);
        drop(self.pod);
        let _ = self.pause.wait();
    }
}

/// Polls `ready` (the daemon's status, a cgroup) for up to 30 s.
fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The attachments in the daemon's status, by name, with their policy.
fn attachments(daemon: &Daemon) -> Vec<(String, Option<String>)> {
    let status = daemon.status();
    status["status"]["attachments"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|a| {
                    (
                        a["name"].as_str().unwrap_or_default().to_owned(),
                        a["policy"].as_str().map(str::to_owned),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A simulated node: the fake API server and a kubeconfig for it, the policy directory (the
/// mounted ConfigMap; `default` allows API), and the test cgroup the kubelet's layout goes
/// under. The layout's QoS levels are removed on drop (the pods' cgroups first, by the test).
struct SimNode {
    api: FakeKubeApi,
    kubeconfig: PathBuf,
    policies: PathBuf,
    cgroups: TestCgroup,
}

impl SimNode {
    fn new(s: &Scene, tag: &str) -> Self {
        let api = FakeKubeApi::start();
        let kubeconfig = s.scratch.path("kubeconfig");
        api.write_kubeconfig(&kubeconfig);
        let policies = s.scratch.path("policies");
        fs::create_dir_all(&policies).unwrap();
        let node = Self {
            api,
            kubeconfig,
            policies,
            cgroups: TestCgroup::new(tag),
        };
        node.policy("default", API);
        node
    }

    /// Writes policy file `file` allowing `name` only.
    fn policy(&self, file: &str, name: &str) {
        fs::write(
            self.policies.join(file),
            format!("allow_domains = [\"{name}\"]\n"),
        )
        .unwrap();
    }

    /// `egressd run --kubernetes` for this node.
    fn agent(&self, s: &Scene) -> EgressdCommand {
        run_command(s)
            .args(["--kubernetes", "--node-name", NODE])
            .arg("--policy-dir")
            .arg(&self.policies)
            .arg("--cgroup-root")
            .arg(&self.cgroups.path)
            .env("KUBECONFIG", &self.kubeconfig)
    }

    /// The kubelet starts `pod` on this node (see [`PodCgroups::start`]).
    fn start(&self, pod: &Value, s: &Scene) -> PodCgroups {
        PodCgroups::start(&self.cgroups.path, &uid_of(pod), s)
    }
}

impl Drop for SimNode {
    fn drop(&mut self) {
        let layout = self.cgroups.path.join("kubepods.slice");
        let _ = fs::remove_dir(layout.join("kubepods-besteffort.slice"));
        let _ = fs::remove_dir(layout);
    }
}

fn uid_of(pod: &Value) -> String {
    pod["metadata"]["uid"].as_str().expect("a uid").to_owned()
}

#[test]
fn a_node_agent_attaches_runner_pods_with_their_policy_and_lets_them_go() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    // Policies as the ConfigMap mounted as a volume: the `build` scale set may reach EVIL
    // only; everything else gets `default` (API only); `broken` does not parse.
    let node = SimNode::new(&s, "kube-node");
    let api = &node.api;
    node.policy("build.toml", EVIL);
    fs::write(node.policies.join("broken"), "allow_domains = [\n").unwrap();

    let daemon = Daemon::start(&node.agent(&s), &s.scratch.path("ctl.sock"));
    assert!(
        api.wait_for_watchers(1, Duration::from_secs(30)),
        "the agent never watched pods"
    );

    // A runner pod of the `build` scale set, announced before its cgroup exists (as the
    // scheduler does before the kubelet starts it).
    let build = pod(
        "arc-runners",
        "build-abc-runner-1",
        NODE,
        &[(SCALE_SET, "build"), RUNNER],
        &[],
    );
    // The kubelet starts the pod before the agent hears of it: its init container's probe
    // (what `deploy/examples` puts first in a runner pod) does not resolve, so the runner's
    // containers would not start yet.
    let build_cgroups = node.start(&build, &s);
    let init = build_cgroups.container("init");
    let probe = ["getent", "hosts", "attached.egressd.invalid"].map(str::to_owned);
    let (code, out, _) = in_job(&s, &init, &probe);
    assert_ne!(
        code, 0,
        "the probe resolved before the pod was attached: {out}"
    );
    // Not this agent's, though running on this node's cgroups: another node's runner (as
    // the API would never list it for this node) and a listener pod (no runner label).
    let other_node = pod(
        "arc-runners",
        "build-abc-runner-2",
        "node-2",
        &[(SCALE_SET, "build"), RUNNER],
        &[],
    );
    let listener = pod(
        "arc-systems",
        "build-abc-listener",
        NODE,
        &[(SCALE_SET, "build")],
        &[],
    );
    let other_cgroups = node.start(&other_node, &s);
    let listener_cgroups = node.start(&listener, &s);
    api.apply_pod(other_node);
    api.apply_pod(listener);
    api.apply_pod(build.clone());
    wait_for("the build pod attached", || {
        attachments(&daemon)
            .iter()
            .any(|(n, _)| n == "arc-runners:build-abc-runner-1")
    });
    assert_eq!(
        attachments(&daemon),
        vec![(
            "arc-runners:build-abc-runner-1".to_owned(),
            Some("build".to_owned())
        )],
        "only this node's runner pod, under its scale set's policy"
    );

    // Attached: the probe resolves (to loopback), the init container ends, the runner's
    // containers start. One the runtime starts in the pod now goes through the pod's proxy,
    // under the pod's policy.
    let (code, out, err) = in_job(&s, &init, &probe);
    assert_eq!(code, 0, "the probe must resolve once attached: {err}");
    assert!(out.starts_with("127.0.0.1"), "{out}");
    drop(init);
    let app = build_cgroups.container("app");
    let (code, out, err) = in_job(&s, &app, &curl(&s, EVIL));
    assert_eq!((code, out.as_str()), (0, hello(EVIL).as_str()), "{err}");
    let (code, _, _) = in_job(&s, &app, &curl(&s, API));
    assert_ne!(code, 0, "the build policy does not allow {API}");

    // A second runner pod, whose scale set has no policy: `default`; and one annotated with
    // a policy that does not parse: closed.
    let docs = pod(
        "arc-runners",
        "docs-xyz-runner-1",
        NODE,
        &[(SCALE_SET, "docs"), RUNNER],
        &[],
    );
    let broken = pod(
        "arc-runners",
        "docs-xyz-runner-2",
        NODE,
        &[(SCALE_SET, "docs"), RUNNER],
        &[("egressd.io/policy", "broken")],
    );
    api.apply_pod(docs.clone());
    api.apply_pod(broken.clone());
    let docs_cgroups = node.start(&docs, &s);
    let broken_cgroups = node.start(&broken, &s);
    wait_for("three pods attached", || attachments(&daemon).len() == 3);
    let docs_app = docs_cgroups.container("app");
    let (code, out, err) = in_job(&s, &docs_app, &curl(&s, API));
    assert_eq!(
        (code, out.as_str()),
        (0, hello(API).as_str()),
        "{err}\n{:#}",
        daemon.status()
    );
    let broken_app = broken_cgroups.container("app");
    for name in [API, EVIL] {
        let (code, _, _) = in_job(&s, &broken_app, &curl(&s, name));
        assert_ne!(
            code, 0,
            "a pod whose policy is broken reaches nothing ({name})"
        );
    }

    // The ConfigMap gains a `docs` policy (the kubelet updates the mounted files): the agent
    // reloads, and moves the docs pod under it, without a restart or a reload by hand.
    node.policy("docs", EVIL);
    wait_for("the docs pod moved to its scale set's new policy", || {
        attachments(&daemon)
            .iter()
            .any(|(n, p)| n == "arc-runners:docs-xyz-runner-1" && p.as_deref() == Some("docs"))
    });
    let (code, out, err) = in_job(&s, &docs_app, &curl(&s, EVIL));
    assert_eq!((code, out.as_str()), (0, hello(EVIL).as_str()), "{err}");
    let (code, _, _) = in_job(&s, &docs_app, &curl(&s, API));
    assert_ne!(code, 0, "the docs policy does not allow {API}");

    // The watch drops; a pod that comes after is seen once kube-rs watches again.
    api.drop_watches();
    let late = pod(
        "arc-runners",
        "docs-xyz-runner-3",
        NODE,
        &[(SCALE_SET, "docs"), RUNNER],
        &[],
    );
    api.apply_pod(late.clone());
    let late_cgroups = node.start(&late, &s);
    wait_for("the pod that came after the dropped watch attached", || {
        attachments(&daemon)
            .iter()
            .any(|(n, _)| n == "arc-runners:docs-xyz-runner-3")
    });
    // The API expires the watch (410) and kube-rs lists again; the pod is deleted meanwhile.
    // It stays firewalled while its sandbox runs, and is let go once the runtime tore it
    // down.
    assert!(api.wait_for_watchers(1, Duration::from_secs(30)));
    api.expire_watches();
    api.delete_pod("arc-runners", "docs-xyz-runner-3");
    assert!(api.wait_for_watchers(1, Duration::from_secs(30)));
    assert!(
        attachments(&daemon)
            .iter()
            .any(|(n, _)| n == "arc-runners:docs-xyz-runner-3"),
        "a deleted pod whose sandbox still runs stays attached"
    );
    late_cgroups.remove();
    wait_for("the deleted pod let go once torn down", || {
        !attachments(&daemon)
            .iter()
            .any(|(n, _)| n == "arc-runners:docs-xyz-runner-3")
    });

    // The build pod is deleted: through its grace period, while its containers run, it stays
    // firewalled; once the runtime has torn it down it is let go.
    api.delete_pod("arc-runners", "build-abc-runner-1");
    let (code, out, err) = in_job(&s, &app, &curl(&s, EVIL));
    assert_eq!(
        (code, out.as_str()),
        (0, hello(EVIL).as_str()),
        "a deleted pod's running container still goes through its proxy: {err}"
    );
    drop(app);
    build_cgroups.remove();
    wait_for("the build pod detached", || {
        !attachments(&daemon)
            .iter()
            .any(|(n, _)| n == "arc-runners:build-abc-runner-1")
    });

    // The docs pod's cgroup goes (the runtime tore it down) before the API says so.
    drop(docs_app);
    docs_cgroups.remove();
    wait_for("the docs pod detached", || {
        !attachments(&daemon)
            .iter()
            .any(|(n, _)| n == "arc-runners:docs-xyz-runner-1")
    });
    drop(broken_app);
    broken_cgroups.remove();

    // Every request carried the service account's token, and every list and watch asked
    // for this node's runners only.
    let requests = api.requests();
    assert!(!requests.is_empty());
    for r in &requests {
        assert!(r.authorized, "{r:?}");
        if r.path.ends_with("/pods") {
            assert_eq!(
                r.param("fieldSelector"),
                Some("spec.nodeName=node-1"),
                "{r:?}"
            );
            assert!(
                r.param("labelSelector")
                    .is_some_and(|l| l.contains(SCALE_SET) && l.contains(RUNNER.0)),
                "{r:?}"
            );
        }
    }
    assert!(
        !attachments(&daemon)
            .iter()
            .any(|(n, _)| n == "arc-runners:build-abc-runner-2"
                || n == "arc-systems:build-abc-listener"),
        "another node's pod or a listener pod was attached"
    );
    other_cgroups.remove();
    listener_cgroups.remove();
    wait_for("every pod let go", || attachments(&daemon).is_empty());

    let stopped = daemon.stop();
    assert!(stopped.status.success(), "{stopped}");
    // The audit says which pod, node, scale set and policy each line is about.
    let records = read_audit(&s.audit_log);
    let allowed = records
        .iter()
        .find(|r| r["name"] == EVIL && r["decision"] == "allow")
        .unwrap_or_else(|| panic!("no allowed record for {EVIL}\n{stopped}"));
    assert_eq!(allowed["sandbox"], "arc-runners:build-abc-runner-1");
    assert_eq!(allowed["k8s"]["node"], NODE, "{allowed}");
    assert_eq!(allowed["k8s"]["pod"], "build-abc-runner-1", "{allowed}");
    assert_eq!(allowed["k8s"]["namespace"], "arc-runners", "{allowed}");
    assert_eq!(allowed["k8s"]["scale_set"], "build", "{allowed}");
    assert_eq!(allowed["k8s"]["policy"], "build", "{allowed}");
    assert_eq!(
        allowed["k8s"]["pod_uid"],
        uid_of(&build).as_str(),
        "{allowed}"
    );
    let arms = records
        .iter()
        .filter(|r| r["event"] == "arm" && r["k8s"]["node"] == NODE)
        .count();
    let disarms = records
        .iter()
        .filter(|r| r["event"] == "disarm" && r["k8s"]["node"] == NODE)
        .count();
    assert_eq!((arms, disarms), (4, 4), "{stopped}");
    assert!(
        stopped.stderr.contains("policy \"broken\""),
        "the broken policy is named\n{stopped}"
    );
}

/// `bash`'s `/dev/tcp` connect from `cgroup`: its error says whether the connection was
/// refused (redirected to a listener that is gone: closed) or had no route (not redirected).
fn connect_error(s: &Scene, cgroup: &TestCgroup) -> String {
    let (_, _, err) = in_job(
        s,
        cgroup,
        &["bash", "-c", "exec 3<>/dev/tcp/192.0.2.10/443"].map(str::to_owned),
    );
    err
}

#[test]
fn an_agent_replaced_leaves_its_pods_closed_and_the_next_one_re_arms_them() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let node = SimNode::new(&s, "kube-node-upgrade");
    let api = &node.api;
    let agent = || node.agent(&s);
    let socket = s.scratch.path("ctl.sock");
    let runner = pod("arc-runners", "r-1", NODE, &[(SCALE_SET, "r"), RUNNER], &[]);
    let cgroups = node.start(&runner, &s);
    let app = cgroups.container("app");
    // Control: not attached, the container's connection has no route.
    assert!(
        connect_error(&s, &app).contains("unreachable"),
        "{}",
        connect_error(&s, &app)
    );
    api.apply_pod(runner);
    let daemon = Daemon::start(&agent(), &socket);
    wait_for("the pod attached", || attachments(&daemon).len() == 1);
    let (code, out, err) = in_job(&s, &app, &curl(&s, API));
    assert_eq!((code, out.as_str()), (0, hello(API).as_str()), "{err}");

    // The agent is replaced (SIGTERM, as a rolling update does): the pod stays closed.
    let stopped = daemon.stop();
    assert!(stopped.status.success(), "{stopped}");
    let closed = connect_error(&s, &app);
    assert!(
        closed.contains("refused"),
        "between two agents the pod's connections must be refused, not let through: {closed}"
    );

    // The next agent re-arms it from the saved state and adopts it.
    let daemon = Daemon::start(&agent(), &socket);
    wait_for("the pod attached again", || {
        attachments(&daemon)
            .iter()
            .any(|(n, p)| n == "arc-runners:r-1" && p.as_deref() == Some("default"))
    });
    let (code, out, err) = in_job(&s, &app, &curl(&s, API));
    assert_eq!((code, out.as_str()), (0, hello(API).as_str()), "{err}");
    let (code, _, _) = in_job(&s, &app, &curl(&s, EVIL));
    assert_ne!(code, 0, "still under its policy");
    drop(app);
    cgroups.remove();
    wait_for("the pod let go", || attachments(&daemon).is_empty());
    let _ = daemon.stop();
}
