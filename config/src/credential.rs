//! Credentials: where the proxy's token broker gets the tokens it injects.
//!
//! This module owns the `[[credential]]` tables of the TOML file ([`FileCredential`], the serde
//! layer) and their validated form ([`Credential`]). It checks each table on its own (required
//! and applicable keys per `source`, URLs, durations) and, once every source has been read,
//! the references between tables (unique names, `assertion` names an existing credential, no
//! loops). It never reads an environment variable or a secret file: `source = "env"` and
//! `source = "file"` only *name* the secret; the daemon reads its own environment and the
//! proxy reads the file.
//!
//! # Format
//!
//! ```toml
//! # A GitHub Actions OIDC token (ACTIONS_ID_TOKEN_REQUEST_URL / _TOKEN, handed in by the
//! # daemon). `audience` is optional; without it GitHub uses the repository owner's URL.
//! [[credential]]
//! name = "github-oidc-azure"
//! source = "github-oidc"
//! audience = "api://AzureADTokenExchange"
//!
//! # Entra client credentials with a federated credential: another credential's token
//! # (here the GitHub OIDC JWT, minted fresh for every exchange) is the client assertion.
//! [[credential]]
//! name = "azure-openai"
//! source = "entra"
//! tenant = "00000000-0000-0000-0000-0000000000aa"
//! client_id = "11111111-2222-3333-4444-555555555555"
//! scope = "https://cognitiveservices.azure.com/.default"
//! assertion = "github-oidc-azure"
//! authority = "https://login.microsoftonline.com"   # the default; sovereign clouds too
//! refresh_margin = "5m"                             # optional: refresh 5 min before expiry
//!
//! # Entra Agent ID, two hops: the blueprint gets T1 for the agent (`fmi_path`), then the
//! # agent identity exchanges T1 for the resource token.
//! [[credential]]
//! name = "agent"
//! source = "entra-agent"
//! tenant = "00000000-0000-0000-0000-0000000000aa"
//! blueprint_client_id = "22222222-0000-0000-0000-000000000000"
//! agent_client_id = "33333333-0000-0000-0000-000000000000"
//! scope = "https://cognitiveservices.azure.com/.default"
//! assertion = "github-oidc-azure"
//! # exchange_scope = "api://AzureADTokenExchangeUSGov/.default"   # hop 1, national clouds
//!
//! # A static secret from the daemon's own environment ...
//! [[credential]]
//! name = "static-key"
//! source = "env"
//! var = "AZURE_OPENAI_KEY"
//!
//! # ... or from a file only its owner can read (mode 0600 or stricter; relative paths are
//! # relative to this file's directory).
//! [[credential]]
//! name = "file-key"
//! source = "file"
//! path = "/etc/egressd/key"
//!
//! # RFC 8693 token exchange at Google STS (workload identity federation): the subject token
//! # is another credential's token (a GitHub OIDC JWT whose audience the provider allows).
//! [[credential]]
//! name = "github-oidc-gcp"
//! source = "github-oidc"
//! audience = "https://iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/gh-pool/providers/gh-provider"
//!
//! [[credential]]
//! name = "gcp"
//! source = "oauth2-token-exchange"
//! audience = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/gh-pool/providers/gh-provider"
//! subject_token = "github-oidc-gcp"
//! # token_url = "https://sts.googleapis.com/v1/token"                        # the default
//! # scope = "https://www.googleapis.com/auth/cloud-platform"                  # the default
//! # subject_token_type = "urn:ietf:params:oauth:token-type:jwt"               # the default
//! # requested_token_type = "urn:ietf:params:oauth:token-type:access_token"    # the default
//! # Optional: impersonate a service account with the federated token (IAM Credentials
//! # generateAccessToken); `lifetime` and `iam_credentials_url` apply only with it.
//! service_account = "sa@my-project.iam.gserviceaccount.com"
//! lifetime = "3600s"                                   # the default
//! # iam_credentials_url = "https://iamcredentials.googleapis.com"              # the default
//!
//! # AWS STS AssumeRoleWithWebIdentity: temporary keys that sign requests (SigV4).
//! [[credential]]
//! name = "github-oidc-aws"
//! source = "github-oidc"
//! audience = "sts.amazonaws.com"
//!
//! [[credential]]
//! name = "bedrock"
//! source = "aws-web-identity"
//! role_arn = "arn:aws:iam::123456789012:role/gha-bedrock"
//! web_identity_token = "github-oidc-aws"
//! endpoint = "https://sts.us-east-1.amazonaws.com/"   # default https://sts.amazonaws.com/
//! duration = "1h"                                      # the default; 15m to 12h
//! # role_session_name = "egressd-bedrock"              # default: egressd-<credential name>
//!
//! # Anthropic workload identity federation: the job's GitHub OIDC token exchanged for a
//! # short-lived Claude API token (`POST /v1/oauth/token`, RFC 7523 jwt-bearer grant).
//! [[credential]]
//! name = "github-oidc-anthropic"
//! source = "github-oidc"
//! audience = "https://api.anthropic.com"
//!
//! [[credential]]
//! name = "claude"
//! source = "anthropic-wif"
//! assertion = "github-oidc-anthropic"
//! federation_rule_id = "fdrl_01AbCdEf"
//! organization_id = "00000000-0000-0000-0000-000000000000"
//! service_account_id = "svac_01AbCdEf"
//! # workspace_id = "wrkspc_01AbCdEf"    # or "default"; needed when the rule has several
//! # token_url = "https://api.anthropic.com/v1/oauth/token"   # the default
//!
//! # Per-user secrets: the entry for the verified `actor_id` of the run's GitHub OIDC token
//! # (see `[provenance]`). The table is a root-only file (mode 0600) read by the proxy when
//! # it starts; its format is in the proxy crate (`token/source/per_actor.rs`).
//! [[credential]]
//! name = "copilot-per-user"
//! source = "per-actor"
//! table = "/etc/egressd/actors.toml"
//!
//! # An X.509-SVID from the SPIFFE Workload API (the SPIRE agent's socket), kept current as
//! # it rotates. It is not a token: `[[intercept]]` rules name it with `spiffe = "..."` to
//! # present it as the client certificate to the upstream (see `crate::intercept`).
//! [[credential]]
//! name = "runner-svid"
//! source = "spiffe-x509"
//! socket = "unix:///run/spire/agent/public/api.sock"   # default: SPIFFE_ENDPOINT_SOCKET
//! spiffe_id = "spiffe://aim.example.com/github-runner" # optional: which SVID, when several
//! ```
//!
//! Keys that do not apply to a table's `source` are errors, as are unknown keys: a typo must
//! not silently change which token is minted. Authorities must be `https://` URLs; `http://`
//! is accepted only for loopback hosts (test servers).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::defaults;
use crate::error::{Error, ErrorKind, Location};
use crate::file::parse_duration;

/// `anthropic-wif`: the token endpoint when `token_url` is not set.
pub const ANTHROPIC_TOKEN_URL: &str = "https://api.anthropic.com/v1/oauth/token";

/// `oauth2-token-exchange`: the token endpoint when `token_url` is not set (Google STS).
pub const GOOGLE_STS_URL: &str = "https://sts.googleapis.com/v1/token";
/// `oauth2-token-exchange`: the scope when `scope` is not set.
pub const GOOGLE_CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// `oauth2-token-exchange`: the IAM Credentials base URL when `iam_credentials_url` is not set.
pub const GOOGLE_IAM_CREDENTIALS_URL: &str = "https://iamcredentials.googleapis.com";
/// `oauth2-token-exchange`: the impersonated token's lifetime when `lifetime` is not set.
pub const GOOGLE_IMPERSONATION_LIFETIME: Duration = Duration::from_hours(1);
/// RFC 8693 token type of a JWT (the default `subject_token_type`).
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// RFC 8693 token type of an access token (the default `requested_token_type`).
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
/// `aws-web-identity`: the STS endpoint when `endpoint` is not set (global).
pub const AWS_STS_URL: &str = "https://sts.amazonaws.com/";
/// `aws-web-identity`: `DurationSeconds` when `duration` is not set.
pub const AWS_DURATION: Duration = Duration::from_hours(1);
/// `aws-web-identity`: the shortest `duration` STS accepts.
pub const AWS_DURATION_MIN: Duration = Duration::from_mins(15);
/// `aws-web-identity`: the longest `duration` STS accepts (a role's maximum may be lower).
pub const AWS_DURATION_MAX: Duration = Duration::from_hours(12);
/// `spiffe-x509`: the variable that names the Workload API when `socket` is not set.
pub const SPIFFE_ENDPOINT_SOCKET: &str = "SPIFFE_ENDPOINT_SOCKET";

/// One `[[credential]]` table, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCredential {
    /// The name rules and other credentials refer to.
    pub name: Spanned<String>,
    /// `github-oidc`, `entra`, `entra-agent`, `oauth2-token-exchange`, `aws-web-identity`,
    /// `env` or `file`.
    pub source: Spanned<String>,
    /// `github-oidc`: the `aud` of the minted JWT; `oauth2-token-exchange`: the `audience`.
    pub audience: Option<Spanned<String>>,
    /// `entra`, `entra-agent`: the tenant ID or verified domain.
    pub tenant: Option<Spanned<String>>,
    /// `entra`: the application (client) ID holding the federated credential.
    pub client_id: Option<Spanned<String>>,
    /// `entra`, `entra-agent`: the resource scope, `<App ID URI>/.default`;
    /// `oauth2-token-exchange`: the requested scope.
    pub scope: Option<Spanned<String>>,
    /// `entra`, `entra-agent`: the credential whose token is the client assertion.
    pub assertion: Option<Spanned<String>>,
    /// `entra`, `entra-agent`: the authority URL (default `https://login.microsoftonline.com`).
    pub authority: Option<Spanned<String>>,
    /// Refresh this long before expiry instead of the broker's default policy.
    pub refresh_margin: Option<Spanned<String>>,
    /// `entra-agent`: the agent identity blueprint's client ID (hop 1).
    pub blueprint_client_id: Option<Spanned<String>>,
    /// `entra-agent`: the agent identity's client ID (`fmi_path` of hop 1, client of hop 2).
    pub agent_client_id: Option<Spanned<String>>,
    /// `entra-agent`: the scope of hop 1 (default `api://AzureADTokenExchange/.default`).
    pub exchange_scope: Option<Spanned<String>>,
    /// `env`: the daemon's environment variable holding the secret.
    pub var: Option<Spanned<String>>,
    /// `file`: the file holding the secret.
    pub path: Option<Spanned<PathBuf>>,
    /// `oauth2-token-exchange`: the token endpoint (default Google STS).
    pub token_url: Option<Spanned<String>>,
    /// `oauth2-token-exchange`: the credential whose token is the `subject_token`.
    pub subject_token: Option<Spanned<String>>,
    /// `oauth2-token-exchange`: `subject_token_type` (default `...:token-type:jwt`).
    pub subject_token_type: Option<Spanned<String>>,
    /// `oauth2-token-exchange`: `requested_token_type` (default `...:token-type:access_token`).
    pub requested_token_type: Option<Spanned<String>>,
    /// `oauth2-token-exchange`: a Google service account to impersonate with the exchanged token.
    pub service_account: Option<Spanned<String>>,
    /// `oauth2-token-exchange` with `service_account`: the IAM Credentials base URL.
    pub iam_credentials_url: Option<Spanned<String>>,
    /// `oauth2-token-exchange` with `service_account`: the impersonated token's lifetime.
    pub lifetime: Option<Spanned<String>>,
    /// `copilot`: the credential holding the GitHub token.
    pub github_token: Option<Spanned<String>>,
    /// `copilot`: `auto` (default), `exchange` or `direct`.
    pub mode: Option<Spanned<String>>,
    /// `copilot`: force `bearer` or `token`.
    pub scheme: Option<Spanned<String>>,
    /// `copilot`: the GitHub REST API base (default: the deployment's `GITHUB_API_URL`).
    pub api_url: Option<Spanned<String>>,
    /// `aws-web-identity`: the role to assume.
    pub role_arn: Option<Spanned<String>>,
    /// `aws-web-identity`: `RoleSessionName` (default `egressd-<credential name>`).
    pub role_session_name: Option<Spanned<String>>,
    /// `aws-web-identity`: `DurationSeconds` (default one hour).
    pub duration: Option<Spanned<String>>,
    /// `aws-web-identity`: the credential whose token is the `WebIdentityToken`.
    pub web_identity_token: Option<Spanned<String>>,
    /// `aws-web-identity`: the STS endpoint (default `https://sts.amazonaws.com/`).
    pub endpoint: Option<Spanned<String>>,
    /// `per-actor`: the table mapping `actor_id` to each user's secret.
    pub table: Option<Spanned<PathBuf>>,
    /// `spiffe-x509`: the Workload API endpoint (default: `SPIFFE_ENDPOINT_SOCKET`).
    pub socket: Option<Spanned<String>>,
    /// `spiffe-x509`: the SPIFFE ID of the SVID to use when the Workload API offers several.
    pub spiffe_id: Option<Spanned<String>>,
    /// `anthropic-wif`: the federation rule (`fdrl_...`).
    pub federation_rule_id: Option<Spanned<String>>,
    /// `anthropic-wif`: the Anthropic organization's UUID.
    pub organization_id: Option<Spanned<String>>,
    /// `anthropic-wif`: the service account the token acts as (`svac_...`).
    pub service_account_id: Option<Spanned<String>>,
    /// `anthropic-wif`: the workspace (`wrkspc_...` or `default`).
    pub workspace_id: Option<Spanned<String>>,
}

/// A validated credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// Unique among the credentials; letters, digits, `.`, `_` and `-`.
    pub name: String,
    /// Where its token comes from.
    pub source: CredentialSource,
    /// Refresh this long before expiry; `None` for the broker's default policy.
    pub refresh_margin: Option<Duration>,
}

/// Where a credential's token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CredentialSource {
    /// Anthropic workload identity federation (`source = "anthropic-wif"`).
    AnthropicWif(AnthropicWifSource),
    /// AWS STS `AssumeRoleWithWebIdentity` (`source = "aws-web-identity"`).
    AwsWebIdentity(AwsWebIdentitySource),
    /// GitHub Copilot over another credential's GitHub token (`source = "copilot"`, see
    /// [`crate::copilot`]).
    Copilot(crate::copilot::CopilotSource),
    /// Entra client credentials with a client assertion (`source = "entra"`).
    Entra(EntraSource),
    /// Entra Agent ID, two hops (`source = "entra-agent"`).
    EntraAgent(EntraAgentSource),
    /// A variable of the daemon's own environment (`source = "env"`).
    Env {
        /// The variable's name.
        var: String,
    },
    /// A file only its owner can read (`source = "file"`).
    File {
        /// The file (relative paths resolved against the config file's directory).
        path: PathBuf,
    },
    /// A GitHub Actions OIDC token (`source = "github-oidc"`).
    GithubOidc {
        /// The requested `aud`; `None` lets GitHub pick the owner's URL.
        audience: Option<String>,
    },
    /// The triggering user's own secret, chosen by the verified `actor_id` of the run's
    /// provenance from a root-only table (`source = "per-actor"`).
    PerActor {
        /// The table (relative paths resolved against the config file's directory).
        table: PathBuf,
    },
    /// An X.509-SVID from the SPIFFE Workload API (`source = "spiffe-x509"`): a client
    /// certificate for mTLS, not a token.
    SpiffeX509(SpiffeX509Source),
    /// An RFC 8693 token exchange, Google STS by default (`source = "oauth2-token-exchange"`).
    TokenExchange(TokenExchangeSource),
}

/// `source = "anthropic-wif"`: `POST {token_url}` with a JSON body, the RFC 7523 `jwt-bearer`
/// grant: another credential's JWT as the `assertion`, and the federation rule, organization,
/// service account and (optionally) workspace it is exchanged under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnthropicWifSource {
    /// The token endpoint, `https://api.anthropic.com/v1/oauth/token` by default.
    pub token_url: String,
    /// The federation rule to evaluate (`fdrl_...`).
    pub federation_rule_id: String,
    /// The organization's UUID.
    pub organization_id: String,
    /// The service account the minted token acts as (`svac_...`).
    pub service_account_id: String,
    /// The workspace to scope the token to (`wrkspc_...` or `default`); `None` lets the
    /// server pick the rule's only workspace.
    pub workspace_id: Option<String>,
    /// The credential supplying the `assertion` (a GitHub OIDC token, normally).
    pub assertion: String,
}

/// `source = "spiffe-x509"`: X.509-SVIDs and trust bundles streamed by the SPIFFE Workload API
/// (`FetchX509SVID`), kept current as they rotate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeX509Source {
    /// The Workload API; `None` for the daemon's `SPIFFE_ENDPOINT_SOCKET`.
    pub socket: Option<crate::spiffe::WorkloadEndpoint>,
    /// The SVID to present; `None` for the first one offered (the default identity).
    pub spiffe_id: Option<crate::spiffe::SpiffeId>,
}

/// `source = "entra"`: `POST {authority}/{tenant}/oauth2/v2.0/token`, client credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraSource {
    /// Authority URL without a trailing slash, such as `https://login.microsoftonline.com`.
    pub authority: String,
    /// Tenant ID or verified domain.
    pub tenant: String,
    /// The application (client) ID.
    pub client_id: String,
    /// The resource scope.
    pub scope: String,
    /// The credential supplying `client_assertion`.
    pub assertion: String,
}

/// `source = "entra-agent"`: blueprint hop with `fmi_path`, then the agent identity hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraAgentSource {
    /// Authority URL without a trailing slash.
    pub authority: String,
    /// The agent identity's home tenant.
    pub tenant: String,
    /// The agent identity blueprint's client ID (hop 1).
    pub blueprint_client_id: String,
    /// The agent identity's client ID (`fmi_path` of hop 1, `client_id` of hop 2).
    pub agent_client_id: String,
    /// The resource scope (hop 2).
    pub scope: String,
    /// The scope of hop 1, `api://AzureADTokenExchange/.default` by default.
    pub exchange_scope: String,
    /// The credential supplying hop 1's `client_assertion`.
    pub assertion: String,
}

/// `source = "oauth2-token-exchange"` (`reference/tokens.md` §6.2, §6.3): `POST {token_url}`
/// with `grant_type=urn:ietf:params:oauth:grant-type:token-exchange`, then optionally IAM
/// Credentials `generateAccessToken` for a service account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenExchangeSource {
    /// The token endpoint, such as `https://sts.googleapis.com/v1/token`.
    pub token_url: String,
    /// `audience`: for Google, the workload identity provider's full resource name
    /// (`//iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P/providers/X`).
    pub audience: String,
    /// `scope`, such as `https://www.googleapis.com/auth/cloud-platform`.
    pub scope: String,
    /// The credential supplying `subject_token`.
    pub subject_token: String,
    /// `subject_token_type`, a token type URI.
    pub subject_token_type: String,
    /// `requested_token_type`, a token type URI.
    pub requested_token_type: String,
    /// Service account impersonation with the exchanged token, if configured.
    pub impersonation: Option<Impersonation>,
}

/// Google service account impersonation: `POST {iam_credentials_url}/v1/projects/-/
/// serviceAccounts/{service_account}:generateAccessToken` with the exchanged token as bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Impersonation {
    /// The service account's email.
    pub service_account: String,
    /// The IAM Credentials base URL without a trailing slash.
    pub iam_credentials_url: String,
    /// The requested lifetime (whole seconds).
    pub lifetime: Duration,
}

/// `source = "aws-web-identity"` (`reference/tokens.md` §6.1): STS
/// `AssumeRoleWithWebIdentity`, unsigned, with another credential's token as the web identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsWebIdentitySource {
    /// The STS endpoint, such as `https://sts.amazonaws.com/` or a regional one.
    pub endpoint: String,
    /// `RoleArn`.
    pub role_arn: String,
    /// `RoleSessionName`: 2 to 64 letters, digits and `_+=,.@-`.
    pub role_session_name: String,
    /// `DurationSeconds` (whole seconds, 15 minutes to 12 hours).
    pub duration: Duration,
    /// The credential supplying `WebIdentityToken`.
    pub web_identity_token: String,
}

impl Credential {
    /// The credential whose token this one presents (client assertion, subject token or web
    /// identity token), if any.
    pub fn assertion(&self) -> Option<&str> {
        self.assertion_key().map(|(_, name)| name)
    }

    /// The key naming the credential this one presents, and its value.
    fn assertion_key(&self) -> Option<(&'static str, &str)> {
        match &self.source {
            CredentialSource::AnthropicWif(a) => Some(("assertion", &a.assertion)),
            CredentialSource::AwsWebIdentity(a) => {
                Some(("web_identity_token", &a.web_identity_token))
            }
            CredentialSource::Copilot(c) => Some(("github_token", &c.github_token)),
            CredentialSource::Entra(e) => Some(("assertion", &e.assertion)),
            CredentialSource::EntraAgent(e) => Some(("assertion", &e.assertion)),
            CredentialSource::TokenExchange(t) => Some(("subject_token", &t.subject_token)),
            _ => None,
        }
    }

    /// The `source` keyword, such as `"entra"`.
    pub fn source_name(&self) -> &'static str {
        match &self.source {
            CredentialSource::AnthropicWif(_) => "anthropic-wif",
            CredentialSource::AwsWebIdentity(_) => "aws-web-identity",
            CredentialSource::Copilot(_) => "copilot",
            CredentialSource::Entra(_) => "entra",
            CredentialSource::EntraAgent(_) => "entra-agent",
            CredentialSource::Env { .. } => "env",
            CredentialSource::File { .. } => "file",
            CredentialSource::GithubOidc { .. } => "github-oidc",
            CredentialSource::PerActor { .. } => "per-actor",
            CredentialSource::SpiffeX509(_) => "spiffe-x509",
            CredentialSource::TokenExchange(_) => "oauth2-token-exchange",
        }
    }

    /// Whether this credential is an X.509 identity (`spiffe-x509`), which rules present as
    /// their client certificate (`spiffe = ...`) rather than inject as a token.
    pub fn is_x509_identity(&self) -> bool {
        matches!(self.source, CredentialSource::SpiffeX509(_))
    }
}

/// Validates one table. `dir` resolves relative paths; `place` turns a byte offset of the
/// file into a location. Returns the credential and the location of its name.
pub(crate) fn parse(
    table: &FileCredential,
    dir: &Path,
    place: &dyn Fn(usize) -> Location,
) -> Result<(Credential, Location), Vec<Error>> {
    let mut check = Checker {
        name: table.name.get_ref(),
        at_table: table.name.span().start,
        place,
        errors: Vec::new(),
    };
    if let Err(why) = check_name(check.name) {
        check.fail(table.name.span().start, why);
    }
    let source = table.source.get_ref().as_str();
    let Some(allowed) = keys_of(source) else {
        check.fail(
            table.source.span().start,
            format!(
                "unknown source '{source}': use one of github-oidc, entra, entra-agent, \
                 oauth2-token-exchange, aws-web-identity, anthropic-wif, copilot, env, file, \
                 per-actor, spiffe-x509"
            ),
        );
        return Err(check.errors);
    };
    for (key, offset) in present_keys(table) {
        if !allowed.contains(&key) {
            check.fail(
                offset,
                format!("`{key}` does not apply to source '{source}': remove it"),
            );
        }
    }
    if let (Some(margin), "spiffe-x509") = (&table.refresh_margin, source) {
        check.fail(
            margin.span().start,
            "`refresh_margin` does not apply to source 'spiffe-x509': the Workload API \
             pushes rotated SVIDs itself; remove it"
                .to_owned(),
        );
    }
    let source = check.source(source, table, dir);
    let refresh_margin = table.refresh_margin.as_ref().and_then(|text| {
        parse_duration(text.get_ref())
            .map_err(|why| check.fail(text.span().start, format!("`refresh_margin`: {why}")))
            .ok()
    });
    if !check.errors.is_empty() {
        return Err(check.errors);
    }
    Ok((
        Credential {
            name: check.name.to_owned(),
            source,
            refresh_margin,
        },
        place(table.name.span().start),
    ))
}

/// Collects the errors of one table.
struct Checker<'a> {
    name: &'a str,
    /// Offset of the table's `name` value, where "missing key" errors point.
    at_table: usize,
    place: &'a dyn Fn(usize) -> Location,
    errors: Vec<Error>,
}

impl Checker<'_> {
    fn fail(&mut self, offset: usize, why: String) {
        self.errors.push(Error::at(
            (self.place)(offset),
            ErrorKind::Credential {
                name: self.name.to_owned(),
                why,
            },
        ));
    }

    /// A required key's value, checked by `check`; records an error and yields "" when bad.
    fn required(
        &mut self,
        source: &str,
        key: &'static str,
        value: Option<&Spanned<String>>,
        check: fn(&str) -> Result<(), String>,
    ) -> String {
        let Some(value) = value else {
            self.fail(self.at_table, format!("source '{source}' needs `{key}`"));
            return String::new();
        };
        match check(value.get_ref()) {
            Ok(()) => value.get_ref().clone(),
            Err(why) => {
                self.fail(value.span().start, format!("`{key}`: {why}"));
                String::new()
            }
        }
    }

    /// The authority URL, checked and without a trailing slash (the default when absent).
    fn authority(&mut self, source: &str, value: Option<&Spanned<String>>) -> String {
        if value.is_none() {
            return defaults::ENTRA_AUTHORITY.to_owned();
        }
        self.required(source, "authority", value, check_authority)
            .trim_end_matches('/')
            .to_owned()
    }

    /// The [`CredentialSource`] of a table whose `source` is one of [`keys_of`]'s.
    fn source(&mut self, source: &str, t: &FileCredential, dir: &Path) -> CredentialSource {
        match source {
            "github-oidc" => CredentialSource::GithubOidc {
                audience: t
                    .audience
                    .as_ref()
                    .map(|a| self.required(source, "audience", Some(a), check_token)),
            },
            "entra" => CredentialSource::Entra(EntraSource {
                tenant: self.required(source, "tenant", t.tenant.as_ref(), check_tenant),
                client_id: self.required(source, "client_id", t.client_id.as_ref(), check_token),
                scope: self.required(source, "scope", t.scope.as_ref(), check_token),
                assertion: self.required(source, "assertion", t.assertion.as_ref(), check_token),
                authority: self.authority(source, t.authority.as_ref()),
            }),
            "entra-agent" => CredentialSource::EntraAgent(EntraAgentSource {
                tenant: self.required(source, "tenant", t.tenant.as_ref(), check_tenant),
                blueprint_client_id: self.required(
                    source,
                    "blueprint_client_id",
                    t.blueprint_client_id.as_ref(),
                    check_token,
                ),
                agent_client_id: self.required(
                    source,
                    "agent_client_id",
                    t.agent_client_id.as_ref(),
                    check_token,
                ),
                scope: self.required(source, "scope", t.scope.as_ref(), check_token),
                exchange_scope: t.exchange_scope.as_ref().map_or_else(
                    || defaults::ENTRA_EXCHANGE_SCOPE.to_owned(),
                    |s| self.required(source, "exchange_scope", Some(s), check_token),
                ),
                assertion: self.required(source, "assertion", t.assertion.as_ref(), check_token),
                authority: self.authority(source, t.authority.as_ref()),
            }),
            "oauth2-token-exchange" => CredentialSource::TokenExchange(self.token_exchange(t)),
            "aws-web-identity" => CredentialSource::AwsWebIdentity(self.aws_web_identity(t)),
            "anthropic-wif" => CredentialSource::AnthropicWif(self.anthropic_wif(t)),
            "env" => CredentialSource::Env {
                var: self.required(source, "var", t.var.as_ref(), check_var),
            },
            "copilot" => CredentialSource::Copilot(self.copilot(t)),
            "spiffe-x509" => CredentialSource::SpiffeX509(self.spiffe_x509(t)),
            "per-actor" => {
                if t.table.is_none() {
                    self.fail(self.at_table, "source 'per-actor' needs `table`".to_owned());
                }
                CredentialSource::PerActor {
                    table: t
                        .table
                        .as_ref()
                        .map_or_else(PathBuf::new, |p| dir.join(p.get_ref())),
                }
            }
            _ => {
                let path = t
                    .path
                    .as_ref()
                    .map_or_else(PathBuf::new, |p| dir.join(p.get_ref()));
                if t.path.is_none() {
                    self.fail(self.at_table, "source 'file' needs `path`".to_owned());
                }
                CredentialSource::File { path }
            }
        }
    }
}

impl Checker<'_> {
    /// An optional key's value checked by `check`, or `default` when absent.
    fn optional(
        &mut self,
        key: &'static str,
        value: Option<&Spanned<String>>,
        default: &str,
        check: fn(&str) -> Result<(), String>,
    ) -> String {
        match value {
            None => default.to_owned(),
            Some(v) => self.required("", key, Some(v), check),
        }
    }

    /// A duration key in whole seconds within `min..=max`, or `default` when absent.
    fn seconds(
        &mut self,
        key: &'static str,
        value: Option<&Spanned<String>>,
        default: Duration,
        (min, max): (Duration, Duration),
    ) -> Duration {
        let Some(value) = value else {
            return default;
        };
        let checked = parse_duration(value.get_ref())
            .map_err(str::to_owned)
            .and_then(|d| {
                if d.subsec_nanos() != 0 {
                    Err("write whole seconds, such as '3600s' or '1h'".to_owned())
                } else if d < min || d > max {
                    Err(format!(
                        "it must be between {}s and {}s",
                        min.as_secs(),
                        max.as_secs()
                    ))
                } else {
                    Ok(d)
                }
            });
        checked.unwrap_or_else(|why| {
            self.fail(value.span().start, format!("`{key}`: {why}"));
            default
        })
    }

    fn anthropic_wif(&mut self, t: &FileCredential) -> AnthropicWifSource {
        let source = "anthropic-wif";
        AnthropicWifSource {
            token_url: self.optional(
                "token_url",
                t.token_url.as_ref(),
                ANTHROPIC_TOKEN_URL,
                check_authority,
            ),
            federation_rule_id: self.required(
                source,
                "federation_rule_id",
                t.federation_rule_id.as_ref(),
                |v| check_tagged(v, "fdrl_"),
            ),
            organization_id: self.required(
                source,
                "organization_id",
                t.organization_id.as_ref(),
                check_uuid,
            ),
            service_account_id: self.required(
                source,
                "service_account_id",
                t.service_account_id.as_ref(),
                |v| check_tagged(v, "svac_"),
            ),
            workspace_id: t.workspace_id.as_ref().map(|w| {
                self.required(source, "workspace_id", Some(w), |v| {
                    if v == "default" {
                        Ok(())
                    } else {
                        check_tagged(v, "wrkspc_")
                    }
                })
            }),
            assertion: self.required(source, "assertion", t.assertion.as_ref(), check_token),
        }
    }

    fn token_exchange(&mut self, t: &FileCredential) -> TokenExchangeSource {
        let source = "oauth2-token-exchange";
        let impersonation = if let Some(sa) = &t.service_account {
            Some(Impersonation {
                service_account: self.required(source, "service_account", Some(sa), check_email),
                iam_credentials_url: self
                    .optional(
                        "iam_credentials_url",
                        t.iam_credentials_url.as_ref(),
                        GOOGLE_IAM_CREDENTIALS_URL,
                        check_authority,
                    )
                    .trim_end_matches('/')
                    .to_owned(),
                lifetime: self.seconds(
                    "lifetime",
                    t.lifetime.as_ref(),
                    GOOGLE_IMPERSONATION_LIFETIME,
                    (Duration::from_secs(1), Duration::from_hours(12)),
                ),
            })
        } else {
            for (key, value) in [
                ("iam_credentials_url", &t.iam_credentials_url),
                ("lifetime", &t.lifetime),
            ] {
                if let Some(value) = value {
                    self.fail(
                        value.span().start,
                        format!("`{key}` applies only with `service_account`: remove it"),
                    );
                }
            }
            None
        };
        TokenExchangeSource {
            token_url: self.optional(
                "token_url",
                t.token_url.as_ref(),
                GOOGLE_STS_URL,
                check_authority,
            ),
            audience: self.required(source, "audience", t.audience.as_ref(), check_token),
            scope: self.optional(
                "scope",
                t.scope.as_ref(),
                GOOGLE_CLOUD_PLATFORM_SCOPE,
                check_token,
            ),
            subject_token: self.required(
                source,
                "subject_token",
                t.subject_token.as_ref(),
                check_token,
            ),
            subject_token_type: self.optional(
                "subject_token_type",
                t.subject_token_type.as_ref(),
                TOKEN_TYPE_JWT,
                check_token_type,
            ),
            requested_token_type: self.optional(
                "requested_token_type",
                t.requested_token_type.as_ref(),
                TOKEN_TYPE_ACCESS_TOKEN,
                check_token_type,
            ),
            impersonation,
        }
    }

    fn copilot(&mut self, t: &FileCredential) -> crate::copilot::CopilotSource {
        use crate::copilot::{CopilotMode, CopilotSource, parse_scheme};
        let mode = t.mode.as_ref().map_or(CopilotMode::Auto, |m| {
            CopilotMode::parse(m.get_ref()).unwrap_or_else(|why| {
                self.fail(m.span().start, why);
                CopilotMode::Auto
            })
        });
        let scheme = t.scheme.as_ref().and_then(|s| {
            parse_scheme(s.get_ref())
                .map_err(|why| self.fail(s.span().start, why))
                .ok()
        });
        CopilotSource {
            github_token: self.required(
                "copilot",
                "github_token",
                t.github_token.as_ref(),
                check_token,
            ),
            mode,
            scheme,
            api_url: t.api_url.as_ref().map(|u| {
                self.required("copilot", "api_url", Some(u), check_authority)
                    .trim_end_matches('/')
                    .to_owned()
            }),
        }
    }

    fn spiffe_x509(&mut self, t: &FileCredential) -> SpiffeX509Source {
        use crate::spiffe::{SpiffeId, WorkloadEndpoint};
        let socket = t.socket.as_ref().and_then(|s| {
            WorkloadEndpoint::parse(s.get_ref())
                .map_err(|why| self.fail(s.span().start, format!("`socket`: {why}")))
                .ok()
        });
        let spiffe_id = t.spiffe_id.as_ref().and_then(|s| {
            SpiffeId::parse(s.get_ref())
                .map_err(|why| self.fail(s.span().start, format!("`spiffe_id`: {why}")))
                .ok()
        });
        SpiffeX509Source { socket, spiffe_id }
    }

    fn aws_web_identity(&mut self, t: &FileCredential) -> AwsWebIdentitySource {
        let source = "aws-web-identity";
        let default_session = default_session_name(self.name);
        AwsWebIdentitySource {
            endpoint: self.optional(
                "endpoint",
                t.endpoint.as_ref(),
                AWS_STS_URL,
                check_authority,
            ),
            role_arn: self.required(source, "role_arn", t.role_arn.as_ref(), check_role_arn),
            role_session_name: self.optional(
                "role_session_name",
                t.role_session_name.as_ref(),
                &default_session,
                check_session_name,
            ),
            duration: self.seconds(
                "duration",
                t.duration.as_ref(),
                AWS_DURATION,
                (AWS_DURATION_MIN, AWS_DURATION_MAX),
            ),
            web_identity_token: self.required(
                source,
                "web_identity_token",
                t.web_identity_token.as_ref(),
                check_token,
            ),
        }
    }
}

/// Checks the references between credentials from every source: unique names, assertions
/// that name an existing credential, and no loops. One error per problem, at the credential.
pub(crate) fn check_references(credentials: &[(Credential, Location)]) -> Vec<Error> {
    let mut errors = Vec::new();
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    let error = |at: &Location, name: &str, why: String| {
        Error::at(
            at.clone(),
            ErrorKind::Credential {
                name: name.to_owned(),
                why,
            },
        )
    };
    for (i, (credential, at)) in credentials.iter().enumerate() {
        if let Some(&first) = by_name.get(credential.name.as_str()) {
            let why = format!(
                "defined twice (first at {}): give each credential its own name",
                credentials[first].1
            );
            errors.push(error(at, &credential.name, why));
        } else {
            by_name.insert(&credential.name, i);
        }
    }
    let mut in_reported_loop = vec![false; credentials.len()];
    for (i, (credential, at)) in credentials.iter().enumerate() {
        let Some((key, target)) = credential.assertion_key() else {
            continue;
        };
        if !by_name.contains_key(target) {
            let why = format!(
                "`{key}` names '{target}', which is not a credential: define a \
                 [[credential]] with that name (usually source = \"github-oidc\")"
            );
            errors.push(error(at, &credential.name, why));
            continue;
        }
        if credentials[by_name[target]].0.is_x509_identity() {
            let why = format!(
                "`{key}` names '{target}', an X.509-SVID (spiffe-x509) with no token to \
                 present: name a token credential (usually source = \"github-oidc\")"
            );
            errors.push(error(at, &credential.name, why));
            continue;
        }
        // Each credential has at most one assertion, so the chain is a path; follow it.
        let mut chain = vec![i];
        let mut next = by_name.get(target).copied();
        while let Some(j) = next {
            if j == i {
                if !in_reported_loop[i] {
                    for &k in &chain {
                        in_reported_loop[k] = true;
                    }
                    let names: Vec<&str> = chain
                        .iter()
                        .chain([&i])
                        .map(|&k| credentials[k].0.name.as_str())
                        .collect();
                    let why = format!(
                        "its assertions loop back to it ({}): end the chain with a \
                         github-oidc, env or file credential",
                        names.join(" -> ")
                    );
                    errors.push(error(at, &credential.name, why));
                }
                break;
            }
            if chain.contains(&j) {
                break; // a loop further down the chain, reported at its own members
            }
            chain.push(j);
            next = credentials[j]
                .0
                .assertion()
                .and_then(|t| by_name.get(t).copied());
        }
    }
    errors
}

// === helpers ===

/// The keys a source accepts besides `name`, `source` and `refresh_margin`; `None` for an
/// unknown source.
fn keys_of(source: &str) -> Option<&'static [&'static str]> {
    Some(match source {
        "github-oidc" => &["audience"],
        "entra" => &["tenant", "client_id", "scope", "assertion", "authority"],
        "entra-agent" => &[
            "tenant",
            "blueprint_client_id",
            "agent_client_id",
            "scope",
            "exchange_scope",
            "assertion",
            "authority",
        ],
        "oauth2-token-exchange" => &[
            "token_url",
            "audience",
            "scope",
            "subject_token",
            "subject_token_type",
            "requested_token_type",
            "service_account",
            "iam_credentials_url",
            "lifetime",
        ],
        "aws-web-identity" => &[
            "endpoint",
            "role_arn",
            "role_session_name",
            "duration",
            "web_identity_token",
        ],
        "anthropic-wif" => &[
            "token_url",
            "federation_rule_id",
            "organization_id",
            "service_account_id",
            "workspace_id",
            "assertion",
        ],
        "copilot" => &["github_token", "mode", "scheme", "api_url"],
        "env" => &["var"],
        "file" => &["path"],
        "per-actor" => &["table"],
        "spiffe-x509" => &["socket", "spiffe_id"],
        _ => return None,
    })
}

/// Source-specific keys present in the table, with the byte offset of their value.
fn present_keys(t: &FileCredential) -> Vec<(&'static str, usize)> {
    let strings = [
        ("audience", &t.audience),
        ("tenant", &t.tenant),
        ("client_id", &t.client_id),
        ("scope", &t.scope),
        ("assertion", &t.assertion),
        ("authority", &t.authority),
        ("blueprint_client_id", &t.blueprint_client_id),
        ("agent_client_id", &t.agent_client_id),
        ("exchange_scope", &t.exchange_scope),
        ("var", &t.var),
        ("token_url", &t.token_url),
        ("subject_token", &t.subject_token),
        ("subject_token_type", &t.subject_token_type),
        ("requested_token_type", &t.requested_token_type),
        ("service_account", &t.service_account),
        ("iam_credentials_url", &t.iam_credentials_url),
        ("lifetime", &t.lifetime),
        ("role_arn", &t.role_arn),
        ("role_session_name", &t.role_session_name),
        ("duration", &t.duration),
        ("web_identity_token", &t.web_identity_token),
        ("endpoint", &t.endpoint),
        ("github_token", &t.github_token),
        ("mode", &t.mode),
        ("scheme", &t.scheme),
        ("api_url", &t.api_url),
        ("socket", &t.socket),
        ("spiffe_id", &t.spiffe_id),
        ("federation_rule_id", &t.federation_rule_id),
        ("organization_id", &t.organization_id),
        ("service_account_id", &t.service_account_id),
        ("workspace_id", &t.workspace_id),
    ];
    let mut keys: Vec<_> = strings
        .into_iter()
        .filter_map(|(key, value)| value.as_ref().map(|v| (key, v.span().start)))
        .collect();
    if let Some(path) = &t.path {
        keys.push(("path", path.span().start));
    }
    if let Some(table) = &t.table {
        keys.push(("table", table.span().start));
    }
    keys
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(
            "a name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or \
             digit"
                .to_owned(),
        )
    }
}

/// A single value without whitespace: client IDs, scopes, audiences, references.
fn check_token(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("it is empty".to_owned());
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("it contains whitespace: give exactly one value".to_owned());
    }
    Ok(())
}

/// An Anthropic tagged ID: `prefix` then letters, digits, `_` or `-`.
fn check_tagged(value: &str, prefix: &str) -> Result<(), String> {
    let ok = value.strip_prefix(prefix).is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "write the tagged ID from the Claude Console, such as {prefix}01AbCd"
        ))
    }
}

/// A UUID in its 8-4-4-4-12 hex form.
fn check_uuid(value: &str) -> Result<(), String> {
    let groups: Vec<&str> = value.split('-').collect();
    let ok = groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err("write the organization's UUID, such as 00000000-0000-0000-0000-000000000000".into())
    }
}

/// A token type URI (RFC 8693 §3), such as `urn:ietf:params:oauth:token-type:jwt`.
fn check_token_type(value: &str) -> Result<(), String> {
    check_token(value)?;
    if !value.contains(':') {
        return Err("write a token type URI, such as urn:ietf:params:oauth:token-type:jwt".into());
    }
    Ok(())
}

/// A service account email; it goes into a URL path, so only `[A-Za-z0-9@._-]`.
fn check_email(value: &str) -> Result<(), String> {
    let ok = value.split_once('@').is_some_and(|(user, domain)| {
        !user.is_empty() && domain.contains('.') && !domain.contains('@')
    }) && value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '@' | '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err("write the service account's email, such as sa@project.iam.gserviceaccount.com".into())
    }
}

/// An IAM role ARN: `arn:PARTITION:iam::ACCOUNT:role/NAME` (AWS allows 20 to 2048 chars).
fn check_role_arn(value: &str) -> Result<(), String> {
    let help = "write the role's ARN, such as arn:aws:iam::123456789012:role/gha-bedrock";
    let parts: Vec<&str> = value.splitn(6, ':').collect();
    let ok = (20..=2048).contains(&value.len())
        && parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "iam"
        && parts[3].is_empty()
        && parts[4].len() == 12
        && parts[4].chars().all(|c| c.is_ascii_digit())
        && parts[5]
            .strip_prefix("role/")
            .is_some_and(|r| !r.is_empty())
        && !value.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok { Ok(()) } else { Err(help.to_owned()) }
}

/// An STS `RoleSessionName`: 2 to 64 characters of `[\w+=,.@-]`.
fn check_session_name(value: &str) -> Result<(), String> {
    let ok = (2..=64).contains(&value.len())
        && value.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '=' | ',' | '.' | '@' | '-')
        });
    if ok {
        Ok(())
    } else {
        Err("a role session name is 2 to 64 letters, digits or _+=,.@-".to_owned())
    }
}

/// `egressd-<credential name>`, cut to 64 characters (names are already valid characters).
fn default_session_name(credential: &str) -> String {
    let mut name = format!("egressd-{credential}");
    name.truncate(64);
    name
}

fn check_tenant(tenant: &str) -> Result<(), String> {
    check_token(tenant)?;
    if !tenant
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
    {
        return Err("write the tenant ID (a GUID) or a verified domain".to_owned());
    }
    if ["common", "organizations", "consumers"].contains(&tenant.to_ascii_lowercase().as_str()) {
        return Err(format!(
            "'{tenant}' cannot issue client-credentials tokens: write the tenant ID"
        ));
    }
    Ok(())
}

fn check_var(var: &str) -> Result<(), String> {
    let ok = var.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err("an environment variable name is letters, digits and '_'".to_owned())
    }
}

/// An `https://` URL without query, fragment or user info; `http://` only on loopback.
pub(crate) fn check_authority(text: &str) -> Result<(), String> {
    let url = url::Url::parse(text).map_err(|e| format!("not a URL ({e})"))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => return Err("the URL has no host".to_owned()),
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => return Err("use https:// (http:// only for loopback test servers)".into()),
        other => return Err(format!("scheme '{other}' is not https")),
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("remove the query or fragment: write only scheme, host and path".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("remove the user name or password from the URL".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
