//! What the agent needs of a pod, and the choices it makes from it (pure): the policy a
//! runner pod gets and the attachment's name.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

/// The annotation a pod names its policy with.
pub const POLICY_ANNOTATION: &str = "egressd.io/policy";
/// ARC's label on a scale set's pods: the scale set's name.
pub const SCALE_SET_LABEL: &str = "actions.github.com/scale-set-name";
/// The policy of a pod that names none and whose scale set has none.
pub const DEFAULT_POLICY: &str = "default";

/// A pod, reduced to what the agent uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    /// `metadata.uid`: the key, and how its cgroup is found.
    pub uid: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
    /// `metadata.deletionTimestamp` is set: the pod is going.
    pub deleting: bool,
    /// `status.phase` is `Succeeded` or `Failed`: its containers are done.
    pub finished: bool,
    /// `spec.hostNetwork`: the pod uses the node's network namespace.
    pub host_network: bool,
}

impl PodView {
    /// The view of `pod`; `None` without a UID or a name (not a stored pod).
    pub fn of(pod: &Pod) -> Option<Self> {
        let meta = &pod.metadata;
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        Some(Self {
            uid: meta.uid.clone()?,
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone()?,
            labels: meta.labels.clone().unwrap_or_default(),
            annotations: meta.annotations.clone().unwrap_or_default(),
            deleting: meta.deletion_timestamp.is_some(),
            finished: matches!(phase, Some("Succeeded" | "Failed")),
            host_network: pod
                .spec
                .as_ref()
                .and_then(|s| s.host_network)
                .unwrap_or(false),
        })
    }

    /// The runner scale set, from ARC's label.
    pub fn scale_set(&self) -> Option<&str> {
        self.labels.get(SCALE_SET_LABEL).map(String::as_str)
    }

    /// The policy: the annotation's, else the one named after the scale set when `exists`
    /// says there is one, else [`DEFAULT_POLICY`].
    pub fn policy(&self, exists: impl Fn(&str) -> bool) -> String {
        if let Some(named) = self.annotations.get(POLICY_ANNOTATION) {
            return named.clone();
        }
        match self.scale_set() {
            Some(set) if exists(set) => set.to_owned(),
            _ => DEFAULT_POLICY.to_owned(),
        }
    }

    /// The attachment's name (the `sandbox` of its audit lines): `NAMESPACE:NAME` when that
    /// fits the 64 characters an attachment name may have, else `pod-UID`.
    pub fn attachment_name(&self) -> String {
        let name = format!("{}:{}", self.namespace, self.name);
        if name.len() <= 64 && !self.namespace.is_empty() {
            name
        } else {
            format!("pod-{}", self.uid)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> PodView {
        let map = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        PodView {
            uid: "0b6f2c1e-4d7a-4c2b-9f3e-2a1b3c4d5e6f".into(),
            namespace: "arc-runners".into(),
            name: "build-abc12-runner-x7k2p".into(),
            labels: map(labels),
            annotations: map(annotations),
            deleting: false,
            finished: false,
            host_network: false,
        }
    }

    #[test]
    fn the_annotation_wins_then_the_scale_set_then_default() {
        let exists = |n: &str| n == "build";
        let annotated = pod(
            &[(SCALE_SET_LABEL, "build")],
            &[(POLICY_ANNOTATION, "strict")],
        );
        assert_eq!(annotated.policy(exists), "strict");
        assert_eq!(
            pod(&[(SCALE_SET_LABEL, "build")], &[]).policy(exists),
            "build"
        );
        assert_eq!(
            pod(&[(SCALE_SET_LABEL, "docs")], &[]).policy(exists),
            "default"
        );
        assert_eq!(pod(&[], &[]).policy(exists), "default");
    }

    #[test]
    fn attachment_names_fit_the_limit() {
        let p = pod(&[], &[]);
        assert_eq!(p.attachment_name(), "arc-runners:build-abc12-runner-x7k2p");
        let mut long = p;
        long.name = "x".repeat(60);
        assert_eq!(
            long.attachment_name(),
            "pod-0b6f2c1e-4d7a-4c2b-9f3e-2a1b3c4d5e6f"
        );
    }

    #[test]
    fn a_pod_without_uid_is_not_viewed() {
        let mut p = Pod::default();
        p.metadata.name = Some("x".into());
        assert!(PodView::of(&p).is_none());
        p.metadata.uid = Some("u".into());
        p.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Succeeded".into()),
            ..Default::default()
        });
        assert!(PodView::of(&p).is_some_and(|v| v.finished));
    }
}
