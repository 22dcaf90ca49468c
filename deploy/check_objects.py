#!/usr/bin/env python3
"""Checks that one set of Kubernetes objects (a rendering of the egressd chart, or
deploy/manifests) is a coherent egressd node-agent installation.

The Kubernetes JSON schemas (kubernetes-validate) check each object's shape; they do not
check enum values, references between objects, or what the agent needs. This does:

  check_objects.py [--policies-out DIR] [--arc-values FILE] FILE...

Exit status 1 on any finding. The policy ConfigMap is the one the DaemonSet mounts at its
--policy-dir; its policies (values) are parsed as TOML and, with --policies-out, written to
DIR/<configmap>.<key>.toml for `egressd allowlist lint`.
"""

import argparse
import re
import sys
from pathlib import Path

import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

# A ConfigMap key the agent accepts as a policy name (it refuses names starting with '.',
# which are also the kubelet's own entries in a mounted ConfigMap).
POLICY_KEY = re.compile(r"^[-_a-zA-Z0-9][-._a-zA-Z0-9]{0,252}$")
READ_VERBS = {"get", "list", "watch"}
PROPAGATION = {"None", "HostToContainer", "Bidirectional"}
OTLP_PROTOCOLS = {"grpc", "http/protobuf"}

errors = []


def error(where, message):
    errors.append(f"{where}: {message}")


class UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a mapping with the same key twice (the API server would
    keep one of them silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load(paths):
    objects = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            try:
                docs = list(yaml.load_all(f, Loader=UniqueKeyLoader))
            except yaml.YAMLError as e:
                error(path, f"not valid YAML: {e}")
                continue
        for doc in docs:
            if doc is None:
                continue
            if not isinstance(doc, dict) or "kind" not in doc:
                error(path, "a document that is not a Kubernetes object")
                continue
            objects.append((path, doc))
    return objects


def only(objects, kind):
    found = [(p, o) for p, o in objects if o["kind"] == kind]
    if len(found) != 1:
        error(kind, f"expected exactly one, found {len(found)}")
        return None, None
    return found[0]


def arg_value(args, flag):
    values = [a.split("=", 1)[1] for a in args if a.startswith(flag + "=")]
    return values[-1] if values else None


def check_daemonset(path, ds, configmaps):
    where = f"{path}: DaemonSet {ds['metadata']['name']}"
    spec = ds["spec"]
    pod = spec["template"]["spec"]
    if spec.get("updateStrategy", {}).get("type", "RollingUpdate") != "RollingUpdate":
        error(where, "updateStrategy must be RollingUpdate")
    for field in ("hostPID", "hostNetwork"):
        if pod.get(field) is not True:
            error(where, f"{field} must be true")
    if pod.get("dnsPolicy") != "ClusterFirstWithHostNet":
        error(where, "dnsPolicy must be ClusterFirstWithHostNet (hostNetwork pods otherwise "
                     "cannot resolve cluster names such as the OTLP collector)")
    containers = [c for c in pod["containers"] if c["name"] == "egressd"]
    if len(containers) != 1:
        error(where, "no container named egressd")
        return None
    c = containers[0]
    if not c.get("securityContext", {}).get("privileged"):
        error(where, "the egressd container must be privileged")

    args = c.get("args", [])
    if args[:2] != ["run", "--kubernetes"]:
        error(where, f"args must start with run --kubernetes, not {args[:2]}")
    if arg_value(args, "--node-name") != "$(NODE_NAME)":
        error(where, "--node-name=$(NODE_NAME) is missing")
    if not arg_value(args, "--pod-selector"):
        error(where, "--pod-selector is missing")
    if not (arg_value(args, "--audit-log") or "").startswith("/var/log/egressd/"):
        error(where, "--audit-log must be under /var/log/egressd/")
    if arg_value(args, "--policy-configmap") is not None:
        error(where, "--policy-configmap: no such flag (the agent reads --policy-dir)")
    policy_dir = arg_value(args, "--policy-dir")
    if not policy_dir:
        error(where, "--policy-dir is missing")
    elif not policy_dir.startswith("/"):
        error(where, f"--policy-dir={policy_dir}: not an absolute path")
    if arg_value(args, "--otlp-endpoint"):
        protocol = arg_value(args, "--otlp-protocol")
        if protocol not in OTLP_PROTOCOLS:
            error(where, f"--otlp-protocol={protocol}: not one of {sorted(OTLP_PROTOCOLS)}")

    env = {e["name"]: e for e in c.get("env", [])}
    for name, field_path in (("NODE_NAME", "spec.nodeName"), ("POD_NAMESPACE", "metadata.namespace")):
        got = env.get(name, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        if got != field_path:
            error(where, f"env {name} must come from the downward API ({field_path})")
    headers = env.get("EGRESSD_OTLP_HEADERS")
    if headers is not None and "secretKeyRef" not in headers.get("valueFrom", {}):
        error(where, "EGRESSD_OTLP_HEADERS must come from a Secret (secretKeyRef)")
    for e in c.get("env", []):
        if "value" in e and re.search(r"(?i)(token|secret|password|authorization|api[-_]?key)", e["name"]):
            error(where, f"env {e['name']} looks like a credential: take it from a Secret")

    probe = c.get("readinessProbe", {}).get("exec", {}).get("command", [])
    if probe[:3] != ["egressd", "status", "--json"]:
        error(where, "the readiness probe must run `egressd status --json`")

    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {}
    for m in c.get("volumeMounts", []):
        mounts[m["mountPath"]] = m
        if m["name"] not in volumes:
            error(where, f"volumeMount {m['name']}: no such volume")
        if m.get("mountPropagation", "None") not in PROPAGATION:
            error(where, f"volumeMount {m['name']}: mountPropagation {m['mountPropagation']!r}")
    for v in volumes.values():
        host_path = v.get("hostPath", {}).get("path")
        if host_path is not None and not host_path.startswith("/"):
            error(where, f"volume {v['name']}: hostPath {host_path!r} is not absolute")

    def need(path, propagation=None, read_only=None, host=True):
        m = mounts.get(path)
        if m is None:
            error(where, f"no mount at {path}")
            return
        if propagation and m.get("mountPropagation", "None") != propagation:
            error(where, f"{path} needs mountPropagation {propagation}")
        if read_only is not None and bool(m.get("readOnly")) != read_only:
            error(where, f"{path} must be {'read-only' if read_only else 'writable'}")
        if host and "hostPath" not in volumes.get(m["name"], {}):
            error(where, f"{path} must be a hostPath volume")

    need("/sys/fs/cgroup")
    need("/sys/fs/bpf", propagation="Bidirectional", read_only=False)
    need("/host/proc", read_only=True)
    need("/var/run/netns", propagation="HostToContainer", read_only=True)
    need("/run/containerd", read_only=True)
    need("/var/log/egressd", read_only=False)
    socket = arg_value(args, "--control-socket") or "/run/egressd/control.sock"
    need(str(Path(socket).parent), read_only=False, host=False)
    return check_policy_mount(where, policy_dir, mounts, volumes, configmaps)


def check_policy_mount(where, policy_dir, mounts, volumes, configmaps):
    """The policy ConfigMap, mounted whole and read-only at --policy-dir; returns its name."""
    if not policy_dir:
        return None
    m = mounts.get(policy_dir.rstrip("/") or "/")
    if m is None:
        error(where, f"--policy-dir={policy_dir}: nothing is mounted there")
        return None
    if not m.get("readOnly"):
        error(where, f"{policy_dir} (the policies) must be mounted read-only")
    for field in ("subPath", "subPathExpr"):
        if m.get(field):
            error(where, f"{policy_dir}: {field} {m[field]!r}: the kubelet never updates a "
                         "subPath mount, so ConfigMap edits would not reach the agent")
    volume = volumes.get(m["name"], {})
    source = volume.get("configMap")
    if source is None:
        error(where, f"{policy_dir}: volume {m['name']} is not a configMap volume")
        return None
    name = source.get("name")
    if source.get("items"):
        error(where, f"volume {m['name']}: items: only the listed keys would be files "
                     "(policies added later would be missing)")
    if source.get("optional"):
        error(where, f"volume {m['name']}: optional: the agent would start without policies")
    if name not in configmaps:
        error(where, f"volume {m['name']}: ConfigMap {name}: no such ConfigMap in {sorted(configmaps)}")
    return name


def check_rbac(objects, sa, ds_namespace):
    _, cr = only(objects, "ClusterRole")
    if cr is not None:
        rules = cr.get("rules", [])
        if len(rules) != 1 or rules[0].get("apiGroups") != [""] or rules[0].get("resources") != ["pods"]:
            error("ClusterRole", "must have exactly one rule, on core pods")
        for r in rules:
            if not set(r.get("verbs", [])) <= READ_VERBS:
                error("ClusterRole", f"verbs {r.get('verbs')} beyond get/list/watch")
            if not READ_VERBS <= set(r.get("verbs", [])):
                error("ClusterRole", f"verbs {r.get('verbs')}: the agent gets, lists and watches pods")
    # The agent reads its policies from a mounted ConfigMap, never through the API.
    for kind in ("Role", "RoleBinding"):
        for _, o in objects:
            if o["kind"] == kind:
                error(f"{kind} {o['metadata'].get('name')}", "the agent needs no namespaced RBAC "
                      "(its policies are a mounted ConfigMap): remove it")
    _, binding = only(objects, "ClusterRoleBinding")
    if binding is None or cr is None:
        return
    ref = binding["roleRef"]
    if ref.get("kind") != "ClusterRole" or ref.get("name") != cr["metadata"]["name"]:
        error("ClusterRoleBinding", f"roleRef {ref} is not the ClusterRole {cr['metadata']['name']}")
    subjects = binding.get("subjects", [])
    if subjects != [{"kind": "ServiceAccount", "name": sa, "namespace": ds_namespace}]:
        error("ClusterRoleBinding", f"subjects {subjects} are not the agent's ServiceAccount {ds_namespace}/{sa}")


def check_policies(path, cm, out_dir):
    name = cm["metadata"]["name"]
    data = cm.get("data") or {}
    if not data:
        error(f"{path}: ConfigMap {name}", "has no policy")
    for key, text in data.items():
        where = f"{path}: ConfigMap {name}, policy {key}"
        if not POLICY_KEY.match(key):
            error(where, "not a policy name the agent accepts (a ConfigMap key of letters, "
                         "digits, '-', '_', '.', not starting with '.')")
        try:
            policy = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            error(where, f"not valid TOML: {e}")
            continue
        if "audit_log" in policy:
            error(where, "audit_log: the agent writes one audit log for every pod (--audit-log)")
        if not policy.get("allow_domains"):
            error(where, "allows no domain")
        if "intercept" in policy:
            error(where, "[[intercept]]: the agent refuses intercept rules in a pod's policy")
        if out_dir:
            (out_dir / f"{name}.{key}.toml").write_text(text, encoding="utf-8")
    # The agent's policy NAME is the file NAME, else NAME.toml.
    names = set(data) | {k[: -len(".toml")] for k in data if k.endswith(".toml")}
    for key in data:
        if key.endswith(".toml") and key[: -len(".toml")] in data:
            error(f"{path}: ConfigMap {name}", f"both {key[: -len('.toml')]} and {key}: "
                  f"the agent reads {key[: -len('.toml')]} only")
    return names


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies-out", type=Path)
    parser.add_argument("--arc-values", type=Path)
    parser.add_argument("files", nargs="+")
    opts = parser.parse_args()
    if opts.policies_out:
        opts.policies_out.mkdir(parents=True, exist_ok=True)

    objects = load(opts.files)
    for path, o in objects:
        meta = o.get("metadata", {})
        if o["kind"] not in {"Namespace", "ClusterRole", "ClusterRoleBinding"} and not meta.get("namespace"):
            error(f"{path}: {o['kind']} {meta.get('name')}", "no namespace")

    ds_path, ds = only(objects, "DaemonSet")
    _, sa = only(objects, "ServiceAccount")
    configmaps = {o["metadata"]["name"]: (p, o) for p, o in objects if o["kind"] == "ConfigMap"}
    policy_keys = set()
    if ds is not None:
        ns = ds["metadata"].get("namespace")
        cm_name = check_daemonset(ds_path, ds, configmaps)
        if sa is not None:
            if sa["metadata"]["name"] != ds["spec"]["template"]["spec"].get("serviceAccountName"):
                error("DaemonSet", "serviceAccountName is not the ServiceAccount")
            if sa["metadata"].get("namespace") != ns:
                error("ServiceAccount", "not in the DaemonSet's namespace")
            check_rbac(objects, sa["metadata"]["name"], ns)
        if cm_name in configmaps:
            p, cm = configmaps[cm_name]
            if cm["metadata"].get("namespace") != ns:
                error(f"ConfigMap {cm_name}", "not in the agent's namespace ($POD_NAMESPACE)")
            policy_keys = check_policies(p, cm, opts.policies_out)

    if opts.arc_values:
        with open(opts.arc_values, encoding="utf-8") as f:
            arc = yaml.load(f, Loader=UniqueKeyLoader)
        annotations = (((arc.get("template") or {}).get("metadata") or {}).get("annotations") or {})
        policy = annotations.get("egressd.io/policy")
        if not policy:
            error(opts.arc_values, "template.metadata.annotations has no egressd.io/policy")
        elif policy not in policy_keys:
            error(opts.arc_values, f"egressd.io/policy: {policy}: no such policy in {sorted(policy_keys)}")
        if "containers" not in (arc.get("template") or {}).get("spec", {}):
            error(opts.arc_values, "template.spec.containers is missing (ARC needs the runner container)")

    for e in errors:
        print(f"ERROR {e}", file=sys.stderr)
    kinds = sorted({o["kind"] for _, o in objects})
    print(f"check_objects: {len(objects)} objects ({', '.join(kinds)}), {len(errors)} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
