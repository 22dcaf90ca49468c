//! GitHub Copilot: `source = "copilot"` credentials, the `[copilot]` table that expands into
//! a credential and `[[intercept]]` rules for the job's GitHub deployment, and Copilot BYOK
//! (`COPILOT_PROVIDER_*`) mapped onto an injection rule (`reference/tokens.md` §4,
//! `reference/awf.md` §5.1).
//!
//! ```toml
//! [[credential]]
//! name = "gh"
//! source = "env"
//! var = "COPILOT_GITHUB_TOKEN"   # a GitHub token the daemon holds (gho_, ghu_, github_pat_, ghs_)
//!
//! [copilot]
//! github_token = "gh"            # the credential holding the GitHub token
//! mode = "auto"                  # default; "exchange" or "direct"
//! # scheme = "bearer"            # force `Bearer` or "token"; default per token type and host
//! # integration_id = "agentic-workflows"   # Copilot-Integration-Id (the default)
//! # byok_credential = "azure-openai"       # BYOK: inject this credential at the provider
//! # api_url = "https://api.acme.ghe.com"   # default: the deployment's API (GITHUB_API_URL)
//! ```
//!
//! # What the table expands into
//!
//! * a credential named [`CREDENTIAL`] (`source = "copilot"`) over `github_token`, whose
//!   exchange goes to the deployment's REST API, `GITHUB_API_URL` (never api.github.com for a
//!   tenant or a server);
//! * one `[[intercept]]` rule for the deployment's Copilot API ([`api_hosts`]):
//!   `githubcopilot.com` (apex and every plan host, so whatever `endpoints.api` names is
//!   covered) on github.com, `copilot-api.<tenant>` on GHE.com, and
//!   `api.enterprise.githubcopilot.com` for GHES, which hosts no Copilot (tokens.md §4.4);
//!   the CA's name constraints are exactly these hosts;
//! * on those rules: `Authorization: {scheme} {token}`, `Copilot-Integration-Id` set (the
//!   agent cannot pick the integration), and on `githubcopilot.com` `X-Interaction-Id:
//!   {run_id}-{run_attempt}` and `x-initiator: agent` unless the client sent its own, as AWF
//!   does;
//! * with BYOK in the daemon's environment ([`ByokEnv`]), a rule for the provider's host whose
//!   header follows `COPILOT_PROVIDER_TYPE`, fed by the provider key (an `env` credential named
//!   [`BYOK_CREDENTIAL`]) or by `byok_credential` (an OIDC/Entra token, `Bearer`); the sandbox
//!   gets [`PLACEHOLDER`] in place of the key.
//!
//! # Modes of a `copilot` credential
//!
//! * `direct`: the GitHub token itself goes to the Copilot API (what the Copilot CLI does).
//! * `exchange`: `GET {api_url}/copilot_internal/v2/token` with the GitHub token; the Copilot
//!   token (`Bearer`) is injected and refreshed after `refresh_in`.
//! * `auto` (default): `exchange`, and when the exchange answers 403 or 404 (data-residency
//!   tenants, PATs, GHES), `direct` from then on, logged once with the reason.

use serde::Deserialize;
use toml::Spanned;

use crate::credential::{Credential, CredentialSource};
use crate::error::{Error, ErrorKind, Location};
use crate::github::Deployment;
use crate::intercept::{AuthScheme, DEFAULT_STRIPPED, InterceptRule};
use crate::policy::{Entry, List, Origin};

/// The name of the credential a `[copilot]` table defines.
pub const CREDENTIAL: &str = "copilot";
/// The name of the credential holding a BYOK provider key from the daemon's environment.
pub const BYOK_CREDENTIAL: &str = "copilot-byok";
/// `Copilot-Integration-Id` when `integration_id` is not set (AWF's value).
pub const DEFAULT_INTEGRATION_ID: &str = "agentic-workflows";
/// What the sandbox gets in place of a secret the daemon keeps.
pub const PLACEHOLDER: &str = "egressd-placeholder";
/// What the sandbox gets in `COPILOT_GITHUB_TOKEN` with `[copilot]`: shaped like a GitHub
/// user token (`ghu_` and 36 characters, as AWF's), so the Copilot CLI starts; egressd strips
/// it wherever it injects the real one.
pub const GITHUB_TOKEN_PLACEHOLDER: &str = "ghu_egressdplaceholderaaaaaaaaaaaaaaaaaa";
/// [`GITHUB_TOKEN_PLACEHOLDER`] for a daemon holding an Actions token (`ghs_`): the Copilot
/// CLI takes another path for one (no `/copilot_internal/` calls, the public Copilot API), so
/// the placeholder has the same prefix as the token it stands for.
pub const ACTIONS_TOKEN_PLACEHOLDER: &str = "ghs_egressdplaceholderaaaaaaaaaaaaaaaaaa";

/// The placeholder that stands for `token` (the GitHub token the daemon holds).
pub fn placeholder_for(token: &str) -> &'static str {
    if token.starts_with("ghs_") {
        ACTIONS_TOKEN_PLACEHOLDER
    } else {
        GITHUB_TOKEN_PLACEHOLDER
    }
}

/// The variable naming the Copilot CLI's model.
pub const MODEL_VAR: &str = "COPILOT_MODEL";
/// The model the Copilot CLI asks the enterprise Copilot API for on GHES, unless
/// `COPILOT_MODEL` says otherwise.
pub const GHES_DEFAULT_MODEL: &str = "gpt-4.1";

/// The variable the Copilot CLI reads its GitHub token from first.
pub const GITHUB_TOKEN_VAR: &str = "COPILOT_GITHUB_TOKEN";
/// The paths of the deployment's REST API (below its base, `/api/v3` on GHES) where the
/// Copilot CLI needs the GitHub token (`tests/captures/copilot-cli-1.0.102.md`), `GET` only:
/// `/copilot_internal/user` (its plan and endpoints), `/copilot_internal/managed_settings`,
/// `/copilot_internal/team_customizations`, `/copilot/mcp_registry`. Every other path and
/// method of the API host gets no credential: above all the token exchange
/// (`/copilot_internal/v2/token`), whose answer would hand the sandbox a live Copilot token.
pub const API_PATHS: &[&str] = &[
    "/copilot_internal/user",
    "/copilot_internal/managed_settings",
    "/copilot_internal/team_customizations",
    "/copilot/mcp_registry",
];
/// `anthropic-version` added to BYOK Anthropic requests that carry none.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

pub use crate::credential::source::copilot::{CopilotMode, CopilotSource, parse_scheme};

/// The `[copilot]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCopilot {
    /// The credential holding the GitHub token.
    pub github_token: Option<Spanned<String>>,
    /// `auto`, `exchange` or `direct`.
    pub mode: Option<Spanned<String>>,
    /// `bearer` or `token`.
    pub scheme: Option<Spanned<String>>,
    /// `Copilot-Integration-Id`.
    pub integration_id: Option<Spanned<String>>,
    /// The credential injected at the BYOK provider instead of its key.
    pub byok_credential: Option<Spanned<String>>,
    /// The GitHub REST API base (default: the deployment's).
    pub api_url: Option<Spanned<String>>,
}

/// A validated `[copilot]` table, expanded at build time.
#[derive(Debug, Clone)]
pub(crate) struct CopilotTable {
    github_token: Option<(String, Location)>,
    mode: CopilotMode,
    scheme: Option<AuthScheme>,
    integration_id: String,
    byok_credential: Option<(String, Location)>,
    api_url: Option<String>,
    at: Location,
}

/// Copilot BYOK, as the daemon read it from its environment (`reference/tokens.md` §4.6).
/// Holds no secret: only which variable holds the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ByokEnv {
    /// `COPILOT_PROVIDER_BASE_URL`.
    pub base_url: String,
    /// `COPILOT_PROVIDER_TYPE` (`openai` when unset).
    pub provider_type: Option<String>,
    /// The variable holding the key: `COPILOT_PROVIDER_BEARER_TOKEN` (which wins) or
    /// `COPILOT_PROVIDER_API_KEY`; `None` for an unauthenticated provider.
    pub key_var: Option<String>,
}

/// `COPILOT_PROVIDER_BEARER_TOKEN`.
pub const BYOK_BEARER_VAR: &str = "COPILOT_PROVIDER_BEARER_TOKEN";
/// `COPILOT_PROVIDER_API_KEY`.
pub const BYOK_KEY_VAR: &str = "COPILOT_PROVIDER_API_KEY";

/// The Copilot API hosts of a deployment, as intercept patterns (AWF syntax).
pub fn api_hosts(deployment: &Deployment) -> Vec<String> {
    match deployment {
        // Apex and every plan host (api., api.individual., api.business., api.enterprise.).
        Deployment::DotCom => vec!["githubcopilot.com".to_owned()],
        Deployment::GheCom { .. } | Deployment::Ghes { .. } => vec![deployment.copilot_api_host()],
    }
}

/// Validates the `[copilot]` table; `place` turns an offset into a location.
pub(crate) fn parse_table(
    table: &FileCopilot,
    place: &dyn Fn(usize) -> Location,
    at_table: Location,
) -> Result<CopilotTable, Vec<Error>> {
    let mut errors = Vec::new();
    let mut fail = |offset: usize, why: String| {
        errors.push(Error::at(
            place(offset),
            ErrorKind::InvalidValue(format!("[copilot]: {why}")),
        ));
    };
    let reference = |v: &Spanned<String>| (v.get_ref().clone(), place(v.span().start));
    let mode = match &table.mode {
        None => CopilotMode::Auto,
        Some(m) => CopilotMode::parse(m.get_ref()).unwrap_or_else(|why| {
            fail(m.span().start, why);
            CopilotMode::Auto
        }),
    };
    let scheme = table.scheme.as_ref().and_then(|s| {
        parse_scheme(s.get_ref())
            .map_err(|why| fail(s.span().start, why))
            .ok()
    });
    let integration_id = match &table.integration_id {
        None => DEFAULT_INTEGRATION_ID.to_owned(),
        Some(i) if is_header_word(i.get_ref()) => i.get_ref().clone(),
        Some(i) => {
            fail(
                i.span().start,
                "integration_id must be one word of letters, digits, '.', '_' or '-'".into(),
            );
            String::new()
        }
    };
    let api_url = table.api_url.as_ref().and_then(|u| {
        crate::authority::check_authority(u.get_ref())
            .map(|()| u.get_ref().trim_end_matches('/').to_owned())
            .map_err(|why| fail(u.span().start, format!("api_url: {why}")))
            .ok()
    });
    if table.github_token.is_none() && table.byok_credential.is_none() {
        errors.push(Error::at(
            at_table.clone(),
            ErrorKind::InvalidValue(
                "[copilot]: name the credential holding the GitHub token \
                 (`github_token = \"...\"`), or a BYOK credential (`byok_credential`)"
                    .to_owned(),
            ),
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(CopilotTable {
        github_token: table.github_token.as_ref().map(reference),
        mode,
        scheme,
        integration_id,
        byok_credential: table.byok_credential.as_ref().map(reference),
        api_url,
        at: at_table,
    })
}

/// What the expansion adds to the configuration.
#[derive(Debug, Default)]
pub(crate) struct Expanded {
    pub(crate) credentials: Vec<(Credential, Location)>,
    pub(crate) rules: Vec<InterceptRule>,
    /// Variables the sandbox gets in place of secrets the daemon keeps.
    pub(crate) placeholders: Vec<(String, String)>,
}

/// Expands `[copilot]` (if any) and BYOK (if any) for `deployment`, whose REST API is
/// `api_base`. `credentials` are the configured ones (for references and name clashes).
pub(crate) fn expand(
    table: Option<&CopilotTable>,
    byok: Option<&ByokEnv>,
    deployment: &Deployment,
    api_base: &str,
    credentials: &[(Credential, Location)],
) -> Result<Expanded, Vec<Error>> {
    let mut out = Expanded::default();
    let mut errors = Vec::new();
    let exists = |name: &str| credentials.iter().any(|(c, _)| c.name == name);
    let error = |at: &Location, why: String| {
        Error::at(
            at.clone(),
            ErrorKind::InvalidValue(format!("[copilot]: {why}")),
        )
    };
    if let Some(table) = table {
        expand_table(table, deployment, api_base, &exists, &mut out, &mut errors);
        if table.github_token.is_some()
            && byok.is_none()
            && matches!(deployment, Deployment::Ghes { .. })
        {
            // GHES hosts no Copilot, and the Copilot CLI's GH_HOST path asks `api.<host>`,
            // which a GHES server does not have: the CLI talks to the enterprise Copilot API
            // as a provider instead, where egressd injects the Copilot credential.
            out.placeholders.extend(
                [
                    ("COPILOT_OFFLINE", "true"),
                    (
                        "COPILOT_PROVIDER_BASE_URL",
                        "https://api.enterprise.githubcopilot.com",
                    ),
                    ("COPILOT_PROVIDER_TYPE", "openai"),
                    (BYOK_KEY_VAR, PLACEHOLDER),
                    // A provider needs an explicit model; `COPILOT_MODEL` in egressd's
                    // environment wins.
                    (MODEL_VAR, GHES_DEFAULT_MODEL),
                ]
                .map(|(k, v)| (k.to_owned(), v.to_owned())),
            );
        }
    }
    let byok_credential = table.and_then(|t| t.byok_credential.as_ref());
    if let Some((name, at)) = byok_credential
        && !exists(name)
    {
        errors.push(error(
            at,
            format!("byok_credential names '{name}', which is not a credential"),
        ));
    }
    match (byok, byok_credential) {
        (Some(env), _) => match byok_rule(env, byok_credential.map(|(n, _)| n.as_str())) {
            Ok((rule, credential, placeholders)) => {
                if let Some(credential) = credential {
                    if exists(BYOK_CREDENTIAL) {
                        errors.push(error(
                            &Location::Builtin("COPILOT_PROVIDER_*"),
                            format!(
                                "BYOK defines the credential '{BYOK_CREDENTIAL}', and a \
                                 [[credential]] has that name too: rename yours"
                            ),
                        ));
                    }
                    out.credentials
                        .push((credential, Location::Builtin("COPILOT_PROVIDER_*")));
                }
                out.rules.extend(rule);
                out.placeholders.extend(placeholders);
            }
            Err(why) => errors.push(Error::at(
                Location::Builtin("COPILOT_PROVIDER_*"),
                ErrorKind::InvalidValue(why),
            )),
        },
        (None, Some((_, at))) => errors.push(error(
            at,
            "byok_credential needs COPILOT_PROVIDER_BASE_URL in egressd's environment (the \
             provider the credential is for)"
                .to_owned(),
        )),
        (None, None) => {}
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The Copilot credential and rules of a `[copilot]` table that names a GitHub token.
fn expand_table(
    table: &CopilotTable,
    deployment: &Deployment,
    api_base: &str,
    exists: &dyn Fn(&str) -> bool,
    out: &mut Expanded,
    errors: &mut Vec<Error>,
) {
    let error = |at: &Location, why: String| {
        Error::at(
            at.clone(),
            ErrorKind::InvalidValue(format!("[copilot]: {why}")),
        )
    };
    let Some((github_token, _)) = &table.github_token else {
        return;
    };
    {
        // That `github_token` names a credential is checked with the other references.
        if exists(CREDENTIAL) {
            errors.push(error(
                &table.at,
                format!(
                    "[copilot] defines the credential '{CREDENTIAL}', and a [[credential]] has \
                     that name too: rename yours"
                ),
            ));
        }
        out.credentials.push((
            Credential {
                name: CREDENTIAL.to_owned(),
                source: CredentialSource::Copilot(CopilotSource {
                    github_token: github_token.clone(),
                    mode: table.mode,
                    scheme: table.scheme,
                    api_url: Some(table.api_url.clone().unwrap_or_else(|| api_base.to_owned())),
                }),
                refresh_margin: None,
            },
            table.at.clone(),
        ));
        // The deployment's REST API, for the paths the Copilot CLI calls with its GitHub
        // token: the daemon's token, in place of the sandbox's placeholder.
        // Not on GHES: the CLI runs there as a provider client of the enterprise Copilot API
        // (below) and never calls the server's API, whose host is also the git host.
        if !matches!(deployment, Deployment::Ghes { .. }) {
            let api = table.api_url.as_deref().unwrap_or(api_base);
            match api_rules(api, github_token) {
                Ok(rules) => out.rules.extend(rules),
                Err(why) => errors.push(error(&table.at, why)),
            }
        }
        out.placeholders.push((
            GITHUB_TOKEN_VAR.to_owned(),
            GITHUB_TOKEN_PLACEHOLDER.to_owned(),
        ));
        for host in api_hosts(deployment) {
            let on_copilot_com =
                host == "githubcopilot.com" || host.ends_with(".githubcopilot.com");
            let mut default_headers = Vec::new();
            if on_copilot_com {
                default_headers.push((
                    "x-interaction-id".to_owned(),
                    "{run_id}-{run_attempt}".to_owned(),
                ));
                default_headers.push(("x-initiator".to_owned(), "agent".to_owned()));
            }
            match rule(&host, CREDENTIAL, "authorization", "{scheme} {token}") {
                Ok(mut r) => {
                    r.set_headers = vec![(
                        "copilot-integration-id".to_owned(),
                        table.integration_id.clone(),
                    )];
                    r.default_headers = default_headers;
                    out.rules.push(r);
                }
                Err(why) => errors.push(error(&table.at, why)),
            }
        }
    }
}

/// The BYOK rule (none for an unauthenticated provider), the credential holding its key (none
/// with `byok_credential`), and the sandbox's placeholders.
#[allow(
    clippy::type_complexity,
    reason = "a private triple, named at its one caller"
)]
fn byok_rule(
    env: &ByokEnv,
    byok_credential: Option<&str>,
) -> Result<
    (
        Option<InterceptRule>,
        Option<Credential>,
        Vec<(String, String)>,
    ),
    String,
> {
    let url = url::Url::parse(&env.base_url)
        .map_err(|e| format!("COPILOT_PROVIDER_BASE_URL is not a URL ({e})"))?;
    let host = url
        .host_str()
        .ok_or("COPILOT_PROVIDER_BASE_URL has no host")?
        .to_ascii_lowercase();
    let placeholders: Vec<(String, String)> = match (&env.key_var, byok_credential) {
        (Some(var), _) => vec![(var.clone(), PLACEHOLDER.to_owned())],
        // The client needs something to send; egressd replaces it.
        (None, Some(_)) => vec![(BYOK_BEARER_VAR.to_owned(), PLACEHOLDER.to_owned())],
        (None, None) => Vec::new(),
    };
    if env.key_var.is_none() && byok_credential.is_none() {
        return Ok((None, None, placeholders)); // e.g. a local Ollama: nothing to inject
    }
    if url.scheme() != "https" {
        return Err(format!(
            "COPILOT_PROVIDER_BASE_URL {} is not https://: egressd injects the provider's key \
             only over TLS",
            env.base_url
        ));
    }
    let kind = env.provider_type.as_deref().unwrap_or("openai");
    let bearer = byok_credential.is_some() || env.key_var.as_deref() == Some(BYOK_BEARER_VAR);
    let (header, format, defaults) = match (kind, bearer) {
        ("openai", _) | ("azure" | "anthropic", true) => {
            ("authorization", "Bearer {token}", vec![])
        }
        ("azure", false) => ("api-key", "{token}", vec![]),
        ("anthropic", false) => (
            "x-api-key",
            "{token}",
            vec![("anthropic-version".to_owned(), ANTHROPIC_VERSION.to_owned())],
        ),
        (other, _) => {
            return Err(format!(
                "COPILOT_PROVIDER_TYPE {other:?}: egressd knows openai, azure and anthropic"
            ));
        }
    };
    let credential_name = byok_credential.unwrap_or(BYOK_CREDENTIAL);
    let mut r = rule(&host, credential_name, header, format)?;
    r.default_headers = defaults;
    let path = url.path().trim_end_matches('/');
    if kind == "azure" && (path == "/openai" || path.starts_with("/openai/")) {
        // The Copilot CLI drops a deployment's path for Azure's v1 routes
        // (`/openai/v1/chat/completions`, the deployment in the body's `model`): the key
        // belongs to the whole resource's OpenAI API.
        r.path_prefix = Some("/openai/".to_owned());
    } else if !path.is_empty() {
        r.path_prefix = Some(path.to_owned());
    }
    let credential = match (byok_credential, &env.key_var) {
        (None, Some(var)) => Some(Credential {
            name: BYOK_CREDENTIAL.to_owned(),
            source: CredentialSource::Env { var: var.clone() },
            refresh_margin: None,
        }),
        _ => None,
    };
    Ok((Some(r), credential, placeholders))
}

/// A header rule for `host` with `credential`, origin `github:copilot`.
fn rule(host: &str, credential: &str, header: &str, format: &str) -> Result<InterceptRule, String> {
    let entry = Entry::parse(
        host,
        List::Allow,
        Origin::Derived("github:copilot".to_owned()),
    )
    .map_err(|kind| format!("the Copilot host {host:?} is not a valid domain: {kind}"))?;
    Ok(InterceptRule {
        host: std::sync::Arc::new(entry),
        credential: Some(credential.to_owned()),
        header: header.to_owned(),
        format: format.to_owned(),
        path_prefix: None,
        methods: Vec::new(),
        strip: DEFAULT_STRIPPED.iter().map(|s| (*s).to_owned()).collect(),
        apply: crate::intercept::Apply::Header,
        set_headers: Vec::new(),
        default_headers: Vec::new(),
        spiffe: None,
        tool_urls: crate::intercept::ToolUrls::default(),
    })
}

/// The rules injecting `credential` (a GitHub token) on the REST API at `api_base` for
/// [`API_PATHS`]: `Authorization: Bearer <token>` (the REST API takes `Bearer` for every token
/// type).
fn api_rules(api_base: &str, credential: &str) -> Result<Vec<InterceptRule>, String> {
    let url = url::Url::parse(api_base)
        .ok()
        .filter(|u| u.scheme() == "https")
        .ok_or_else(|| {
            format!("the GitHub API base {api_base:?} is not an https:// URL: fix GITHUB_API_URL or [copilot] api_url")
        })?;
    let Some(url::Host::Domain(host)) = url.host() else {
        // An API named by its address (a test server): no TLS name to intercept.
        return Ok(Vec::new());
    };
    let base_path = url.path().trim_end_matches('/');
    API_PATHS
        .iter()
        .map(|path| {
            let mut r = rule(host, credential, "authorization", "Bearer {token}")?;
            r.methods = vec!["GET".to_owned()];
            // GitHub's REST API is no model API: its bodies are not read for tool URLs.
            r.tool_urls = crate::intercept::ToolUrls::Allow;
            r.path_prefix = Some(format!("{base_path}{path}"));
            Ok(r)
        })
        .collect()
}

/// A header value that is one word (`agentic-workflows`, `vscode-chat`).
fn is_header_word(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests;
