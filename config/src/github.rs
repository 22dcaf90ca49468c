//! Allowlist entries derived from the GitHub deployment a job runs on
//! (`shared/reference/tokens.md` §5): github.com, a GHE.com tenant with data residency, or
//! GitHub Enterprise Server.
//!
//! The daemon reads `GITHUB_SERVER_URL` and `GITHUB_API_URL` and hands them over as a
//! [`GitHubEnv`]; this module never reads the environment. Every derived entry's origin says
//! where it came from (`github:github.com`, `github:ghe.com(acme)`, `github:copilot`...), so
//! `egressd allowlist show` can explain it.
//!
//! # Security
//!
//! * A tenant is allowed as itself (`acme.ghe.com` covers `api.acme.ghe.com`,
//!   `copilot-api.acme.ghe.com`, ...), never as `*.ghe.com`: every other tenant is
//!   somebody else's.
//! * Hosts that cannot be derived are reported in [`Derived::notes`], not guessed: GHES
//!   artifact storage is whatever the administrator configured, and GHE.com's
//!   `*.blob.core.windows.net` is open to anyone who creates a storage account, so it is
//!   not added as a wildcard.
//! * The token endpoints egressd itself talks to (the OIDC request URL, Entra, STS) are not
//!   added: the sandbox has no credential to use there, and egressd's own connections do
//!   not go through the sandbox's allowlist.

use crate::error::ErrorKind;
use crate::policy::{Entry, List, Origin};

/// The GitHub variables of the job, as the daemon read them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GitHubEnv {
    /// `GITHUB_SERVER_URL`, e.g. `https://github.com` or `https://acme.ghe.com`.
    pub server_url: Option<String>,
    /// `GITHUB_API_URL`, e.g. `https://api.acme.ghe.com` or `https://ghes.example/api/v3`.
    pub api_url: Option<String>,
    /// `GITHUB_ACTIONS_RUNNER_FORCE_GHES=1`: treat any host as GHES.
    pub force_ghes: bool,
}

/// Which GitHub the job runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deployment {
    /// github.com.
    DotCom,
    /// A GHE.com tenant (data residency).
    GheCom {
        /// `acme.ghe.com`.
        host: String,
        /// `acme`.
        subdomain: String,
    },
    /// GitHub Enterprise Server at `host` (API path-style under `/api/v3`).
    Ghes {
        /// The server's host name.
        host: String,
    },
}

impl Deployment {
    /// Classifies the deployment from the server URL (`https://github.com` when unset), as
    /// the Actions runner does.
    ///
    /// # Errors
    ///
    /// The server URL is not an `https://` (or `http://`) URL with a host.
    pub fn classify(env: &GitHubEnv) -> Result<Self, ErrorKind> {
        let url = env.server_url.as_deref().unwrap_or("https://github.com");
        let host = url_host(url).ok_or_else(|| {
            ErrorKind::InvalidValue(format!(
                "GITHUB_SERVER_URL {url:?} is not a URL with a host, such as https://github.com"
            ))
        })?;
        if env.force_ghes {
            return Ok(Self::Ghes { host });
        }
        if host == "github.com" {
            return Ok(Self::DotCom);
        }
        if let Some(subdomain) = host.strip_suffix(".ghe.com")
            && !subdomain.is_empty()
            && !subdomain.contains('.')
        {
            return Ok(Self::GheCom {
                subdomain: subdomain.to_owned(),
                host,
            });
        }
        Ok(Self::Ghes { host })
    }

    /// The label used in origins: `github.com`, `ghe.com(acme)`, `ghes(host)`.
    pub fn label(&self) -> String {
        match self {
            Self::DotCom => "github.com".to_owned(),
            Self::GheCom { subdomain, .. } => format!("ghe.com({subdomain})"),
            Self::Ghes { host } => format!("ghes({host})"),
        }
    }

    /// The REST API base URL: `GITHUB_API_URL` when set, else the deployment's default
    /// (`https://api.github.com`, `https://api.<tenant>`, `https://<host>/api/v3`). Token
    /// exchanges go to this host, never to api.github.com for another deployment.
    pub fn api_base(&self, env: &GitHubEnv) -> String {
        if let Some(api) = env.api_url.as_deref().filter(|a| url_host(a).is_some()) {
            return api.trim_end_matches('/').to_owned();
        }
        match self {
            Self::DotCom => "https://api.github.com".to_owned(),
            Self::GheCom { host, .. } => format!("https://api.{host}"),
            Self::Ghes { host } => format!("https://{host}/api/v3"),
        }
    }

    /// The Copilot API host of this deployment (tokens.md §4.4/§4.5).
    pub fn copilot_api_host(&self) -> String {
        match self {
            Self::DotCom => "api.githubcopilot.com".to_owned(),
            Self::GheCom { host, .. } => format!("copilot-api.{host}"),
            // No Copilot service on GHES: licences live on github.com or GHE.com.
            Self::Ghes { .. } => "api.enterprise.githubcopilot.com".to_owned(),
        }
    }
}

/// What the derivation adds, and what it could not.
#[derive(Debug, Clone, Default)]
pub struct Derived {
    /// The deployment found.
    pub deployment: Option<Deployment>,
    /// Allow entries, each with a `github:...` origin.
    pub entries: Vec<Entry>,
    /// Hosts the job may need that cannot be derived, with what to do about them.
    pub notes: Vec<String>,
}

/// Derives the allowlist entries for `env`'s deployment, plus the Copilot set when
/// `copilot` is true.
///
/// # Errors
///
/// The server URL is unusable (see [`Deployment::classify`]).
pub fn derive(env: &GitHubEnv, copilot: bool) -> Result<Derived, ErrorKind> {
    let deployment = Deployment::classify(env)?;
    let label = deployment.label();
    let mut hosts: Vec<(String, String)> = Vec::new();
    let mut add = |list: &[&str], origin: &str| {
        hosts.extend(
            list.iter()
                .map(|h| ((*h).to_owned(), format!("github:{origin}"))),
        );
    };
    let mut notes = Vec::new();
    match &deployment {
        Deployment::DotCom => {
            add(DOTCOM, &label);
            add(DOTCOM_RESULTS, &label);
            if copilot {
                add(DOTCOM_COPILOT, "copilot");
            }
        }
        Deployment::GheCom { host, .. } => {
            add(&[host.as_str()], &label);
            add(GHECOM_SHARED, &label);
            if copilot {
                // copilot-api.<tenant> is inside the tenant entry already.
                add(&["origin-tracker.githubusercontent.com"], "copilot");
            }
            notes.push(format!(
                "{label}: artifacts, caches and logs live in the region's Azure storage \
                 accounts (*.blob.core.windows.net is not allowed: anyone can create one); \
                 add your region's accounts, e.g. prodweu01resultssa0.blob.core.windows.net"
            ));
        }
        Deployment::Ghes { host } => {
            add(&[host.as_str()], &label);
            notes.push(format!(
                "{label}: artifact and cache storage is whatever the administrator configured \
                 (Azure Blob, S3, GCS); it cannot be derived: add it to the allowlist"
            ));
            if let Some(api) = env.api_url.as_deref().and_then(url_host)
                && api != *host
            {
                add(&[api.as_str()], &label);
            }
        }
    }
    // A GHES server (and its API host) usually resolves inside the company network.
    let ghes = matches!(deployment, Deployment::Ghes { .. });
    let entries = hosts
        .into_iter()
        .map(|(host, origin)| {
            let mut entry =
                Entry::parse(&host, List::Allow, Origin::Derived(origin)).map_err(|kind| {
                    ErrorKind::InvalidValue(format!(
                        "the GitHub environment names host {host:?}, which is not a valid domain: {kind}"
                    ))
                })?;
            entry.private_network = ghes;
            Ok(entry)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Derived {
        deployment: Some(deployment),
        entries,
        notes,
    })
}

/// github.com essentials (tokens.md §5.2). Plain entries cover subdomains (AWF semantics):
/// `github.com` covers `api.`, `codeload.`, `uploads.`, `lfs.` and `*.pkg.github.com`.
const DOTCOM: &[&str] = &[
    "github.com",
    "actions.githubusercontent.com",
    "objects.githubusercontent.com",
    "objects-origin.githubusercontent.com",
    "github-releases.githubusercontent.com",
    "github-registry-files.githubusercontent.com",
    "release-assets.githubusercontent.com",
    "raw.githubusercontent.com",
    "avatars.githubusercontent.com",
    "github-cloud.githubusercontent.com",
    "github.githubassets.com",
    "ghcr.io",
    "github-cloud.s3.amazonaws.com",
];

/// The Actions results storage accounts of github.com, instead of `*.blob.core.windows.net`.
const DOTCOM_RESULTS: &[&str] = &[
    "productionresultssa0.blob.core.windows.net",
    "productionresultssa1.blob.core.windows.net",
    "productionresultssa2.blob.core.windows.net",
    "productionresultssa3.blob.core.windows.net",
    "productionresultssa4.blob.core.windows.net",
    "productionresultssa5.blob.core.windows.net",
    "productionresultssa6.blob.core.windows.net",
    "productionresultssa7.blob.core.windows.net",
    "productionresultssa8.blob.core.windows.net",
    "productionresultssa9.blob.core.windows.net",
    "productionresultssa10.blob.core.windows.net",
    "productionresultssa11.blob.core.windows.net",
    "productionresultssa12.blob.core.windows.net",
    "productionresultssa13.blob.core.windows.net",
    "productionresultssa14.blob.core.windows.net",
    "productionresultssa15.blob.core.windows.net",
    "productionresultssa16.blob.core.windows.net",
    "productionresultssa17.blob.core.windows.net",
    "productionresultssa18.blob.core.windows.net",
    "productionresultssa19.blob.core.windows.net",
];

/// Copilot on github.com (tokens.md §4.4): every plan's API host is under githubcopilot.com.
const DOTCOM_COPILOT: &[&str] = &[
    "githubcopilot.com",
    "copilot-proxy.githubusercontent.com",
    "origin-tracker.githubusercontent.com",
    "copilot-telemetry.githubusercontent.com",
];

/// Hosts every GHE.com tenant shares (tokens.md §5.3).
const GHECOM_SHARED: &[&str] = &["githubassets.com", "githubusercontent.com", "auth.ghe.com"];

/// The lowercase host of an `http(s)://host[:port][/path]` URL.
fn url_host(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = host.split(':').next()?.trim_end_matches('.');
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Policy, Scheme, Target, TargetHost};

    fn env(server: &str, api: &str) -> GitHubEnv {
        GitHubEnv {
            server_url: Some(server.to_owned()),
            api_url: (!api.is_empty()).then(|| api.to_owned()),
            force_ghes: false,
        }
    }

    fn allows(derived: &Derived, host: &str) -> bool {
        let policy = Policy::new(derived.entries.clone(), &[443], &[]);
        policy
            .decide(&Target {
                host: TargetHost::Name(host),
                port: 443,
                scheme: Scheme::Https,
            })
            .is_allow()
    }

    #[test]
    fn deployments_are_classified_like_the_runner_does() {
        assert_eq!(
            Deployment::classify(&GitHubEnv::default()).unwrap(),
            Deployment::DotCom
        );
        assert_eq!(
            Deployment::classify(&env("https://acme.ghe.com", "")).unwrap(),
            Deployment::GheCom {
                host: "acme.ghe.com".into(),
                subdomain: "acme".into()
            }
        );
        assert_eq!(
            Deployment::classify(&env("https://git.corp.example/", "")).unwrap(),
            Deployment::Ghes {
                host: "git.corp.example".into()
            }
        );
        let mut forced = env("https://acme.ghe.com", "");
        forced.force_ghes = true;
        assert!(matches!(
            Deployment::classify(&forced).unwrap(),
            Deployment::Ghes { .. }
        ));
        assert!(Deployment::classify(&env("github.com", "")).is_err());
    }

    #[test]
    fn token_exchanges_go_to_the_deployments_own_api() {
        let tenant = env("https://acme.ghe.com", "https://api.acme.ghe.com");
        let d = Deployment::classify(&tenant).unwrap();
        assert_eq!(d.api_base(&tenant), "https://api.acme.ghe.com");
        assert_eq!(d.copilot_api_host(), "copilot-api.acme.ghe.com");
        let server = env("https://git.corp.example", "");
        let d = Deployment::classify(&server).unwrap();
        assert_eq!(d.api_base(&server), "https://git.corp.example/api/v3");
        let dotcom = GitHubEnv::default();
        assert_eq!(
            Deployment::DotCom.api_base(&dotcom),
            "https://api.github.com"
        );
    }

    #[test]
    fn a_tenant_gets_its_own_domains_and_no_other_tenant() {
        let derived = derive(
            &env("https://acme.ghe.com", "https://api.acme.ghe.com"),
            true,
        )
        .unwrap();
        for host in [
            "acme.ghe.com",
            "api.acme.ghe.com",
            "copilot-api.acme.ghe.com",
            "uploads.acme.ghe.com",
            "token.actions.acme.ghe.com",
            "auth.ghe.com",
        ] {
            assert!(allows(&derived, host), "{host} should be allowed");
        }
        for host in [
            "other.ghe.com",
            "api.other.ghe.com",
            "ghe.com",
            "evil.blob.core.windows.net",
        ] {
            assert!(!allows(&derived, host), "{host} must not be allowed");
        }
        assert!(
            derived
                .notes
                .iter()
                .any(|n| n.contains("blob.core.windows.net"))
        );
        let origin = derived.entries[0].origin.to_string();
        assert_eq!(origin, "github:ghe.com(acme)");
    }

    #[test]
    fn dotcom_gets_its_essentials_and_copilot_but_not_open_storage() {
        let derived = derive(&GitHubEnv::default(), true).unwrap();
        for host in [
            "github.com",
            "api.github.com",
            "codeload.github.com",
            "token.actions.githubusercontent.com",
            "results-receiver.actions.githubusercontent.com",
            "productionresultssa7.blob.core.windows.net",
            "api.githubcopilot.com",
            "api.business.githubcopilot.com",
            "ghcr.io",
        ] {
            assert!(allows(&derived, host), "{host} should be allowed");
        }
        for host in [
            "attacker.blob.core.windows.net",
            "evil.github.io",
            "acme.ghe.com",
        ] {
            assert!(!allows(&derived, host), "{host} must not be allowed");
        }
        let without = derive(&GitHubEnv::default(), false).unwrap();
        assert!(!allows(&without, "api.githubcopilot.com"));
    }

    #[test]
    fn ghes_gets_its_host_and_a_note_about_storage() {
        let derived = derive(
            &env(
                "https://git.corp.example",
                "https://git.corp.example/api/v3",
            ),
            true,
        )
        .unwrap();
        assert!(allows(&derived, "git.corp.example"));
        assert!(allows(&derived, "uploads.git.corp.example"));
        assert!(!allows(&derived, "github.com"));
        // Most GHES installations resolve inside the company network.
        assert!(derived.entries.iter().all(|e| e.private_network));
        let dotcom = derive(&GitHubEnv::default(), true).unwrap();
        assert!(dotcom.entries.iter().all(|e| !e.private_network));
        assert!(
            derived
                .notes
                .iter()
                .any(|n| n.contains("cannot be derived"))
        );
    }

    #[test]
    fn url_hosts() {
        assert_eq!(
            url_host("https://API.GitHub.com/").as_deref(),
            Some("api.github.com")
        );
        assert_eq!(
            url_host("https://h.example:8443/api/v3").as_deref(),
            Some("h.example")
        );
        assert_eq!(url_host("ftp://x"), None);
        assert_eq!(url_host("https://"), None);
    }
}
