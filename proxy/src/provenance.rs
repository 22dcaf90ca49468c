//! The run's provenance: the GitHub claims egressd verified (`token/provenance.rs` does the
//! verifying) and which every audit record carries. Plain data, a leaf: the audit log, the
//! broker and the daemon share it without importing the token machinery.

use serde::Serialize;

/// The signed GitHub claims of the run (`reference/tokens.md` §1.4). IDs are strings, as
/// GitHub writes them. Serialised as the `provenance` object of every audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Provenance {
    /// `iss`: the issuer that signed the claims.
    pub issuer: String,
    /// `actor`: the login of the user who triggered the run (informational: logins change).
    pub actor: String,
    /// `actor_id`: that user's numeric ID; what per-actor credentials select on.
    pub actor_id: String,
    /// `repository`: `owner/name` of the repository the run belongs to.
    pub repository: String,
    /// `repository_id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository_id: Option<String>,
    /// `job_workflow_ref`: the workflow file this job runs (the reusable one for
    /// `workflow_call`), `owner/repo/path@ref`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_workflow_ref: Option<String>,
    /// `workflow_ref`: the run's top-level workflow, `owner/repo/path@ref`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow_ref: Option<String>,
    /// `ref`: the git ref of the run.
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// `sha`: the commit of the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha: Option<String>,
    /// `run_id`.
    pub run_id: String,
    /// `run_attempt`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_attempt: Option<String>,
    /// `event_name`: what triggered the run (`push`, `issue_comment`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_name: Option<String>,
}

/// What `token::provenance::establish` found: verified provenance, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProvenanceStatus {
    /// No provenance; the reason, for the arm record and the warning.
    Absent(String),
    /// The verified claims.
    Verified(Box<Provenance>),
}

impl ProvenanceStatus {
    /// The verified provenance, if any.
    pub fn verified(&self) -> Option<&Provenance> {
        match self {
            Self::Verified(p) => Some(p),
            Self::Absent(_) => None,
        }
    }
}

#[cfg(test)]
impl Provenance {
    /// Test-only: provenance for `actor` (`actor_id`) without a token.
    pub(crate) fn for_tests(actor: &str, actor_id: &str) -> Self {
        Self {
            issuer: "https://token.actions.githubusercontent.com".to_owned(),
            actor: actor.to_owned(),
            actor_id: actor_id.to_owned(),
            repository: "octo-org/octo-repo".to_owned(),
            repository_id: Some("74".to_owned()),
            job_workflow_ref: None,
            workflow_ref: None,
            git_ref: None,
            sha: None,
            run_id: "1234567890".to_owned(),
            run_attempt: None,
            event_name: None,
        }
    }
}
