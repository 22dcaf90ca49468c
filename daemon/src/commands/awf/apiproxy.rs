//! AWF's api-proxy in `egressd awf` (reference/awf.md §5): which providers have a key in the
//! daemon's environment, the credentials the broker reads them through, the routes the proxy
//! serves at `172.30.0.30:10000-10004`, and the placeholders the command sees instead of the
//! keys (§5.3). The real keys stay in the daemon.

use std::time::Duration;

use egressd_config::awf::apiproxy::{ApiProxy, IP, Provider, Route, RouteAuth};
use egressd_config::copilot::{BYOK_BEARER_VAR, BYOK_KEY_VAR, CopilotMode, CopilotSource};
use egressd_config::credential::{
    AnthropicWifSource, AwsWebIdentitySource, EntraSource, Impersonation, TokenExchangeSource,
};
use egressd_config::github::{Deployment, GitHubEnv};
use egressd_config::intercept::RunVars;
use egressd_config::{Config, Credential, CredentialSource};

use crate::env::ApiProxyEnv;

/// The credential names egressd gives each provider's key (and the Copilot exchange).
const COPILOT_GITHUB: &str = "awf-copilot-github-token";
/// The GitHub OIDC token the `AWF_AUTH_*` providers exchange.
const OIDC_GITHUB: &str = "awf-oidc-github";
/// The token an `AWF_AUTH_*` provider mints from it.
const OIDC: &str = "awf-oidc";
/// Copilot BYOK's key or bearer token.
const COPILOT_BYOK: &str = "awf-copilot-byok";

/// AWF's Copilot placeholder: `ghu_` and 36 `a`s.
fn copilot_placeholder() -> String {
    format!("ghu_{}", "a".repeat(36))
}

/// What [`configure`] decided besides `config.api_proxy`.
#[derive(Debug, Default)]
pub struct Configured {
    /// Variables for the command: base URLs and placeholders (§5.3).
    pub placeholders: Vec<(String, String)>,
    /// Explicit targets, added to the allowlist as AWF adds them (`https://<host>`, §2.3).
    pub allow: Vec<String>,
}

/// The explicit targets of `env` as AWF adds them to the allowlist (`https://<host>`, §2.3):
/// `*_API_TARGET` and the host of `COPILOT_PROVIDER_BASE_URL`; default targets are not added.
///
/// # Errors
///
/// As [`configure`], for a target that is not an HTTPS host.
pub fn explicit_targets(env: &ApiProxyEnv) -> Result<Vec<String>, String> {
    let mut scratch = egressd_config::ConfigBuilder::new()
        .build()
        .map_err(|e| e.to_string())?;
    Ok(configure(&mut scratch, env, None, &RunVars::default())?.allow)
}

/// What AWF adds to the allowlist by itself on GHE.com and GHES (§2.3): the tenant's hosts
/// when `GITHUB_SERVER_URL` is a `*.ghe.com` tenant (and a `*.ghe.com` API host), the server's
/// and the Copilot enterprise hosts when `ENGINE_API_TARGET` names a GHES API.
pub fn github_additions(
    github: Option<&GitHubEnv>,
    engine_api_target: Option<&str>,
) -> Vec<String> {
    let host = url_host;
    let mut out = Vec::new();
    let server = github.and_then(|g| g.server_url.as_deref()).map(host);
    if let Some(tenant) = server.as_deref().filter(|h| h.ends_with(".ghe.com")) {
        for prefix in ["", "api.", "copilot-api.", "copilot-telemetry-service."] {
            out.push(format!("{prefix}{tenant}"));
        }
        if let Some(api) = github
            .and_then(|g| g.api_url.as_deref())
            .map(host)
            .filter(|h| h.ends_with(".ghe.com") && !out.contains(h))
        {
            out.push(api);
        }
    } else {
        let ghes = ghes_hosts(github, engine_api_target);
        if ghes.is_empty() {
            return out;
        }
        out.extend(ghes);
        for copilot in [
            "api.githubcopilot.com",
            "api.enterprise.githubcopilot.com",
            "telemetry.enterprise.githubcopilot.com",
        ] {
            out.push(copilot.to_owned());
        }
    }
    out
}

/// The GHES server and API hosts an `ENGINE_API_TARGET` names (`<base>` and `api.<base>`);
/// empty when it names no host, or when `GITHUB_SERVER_URL` is a GHE.com tenant.
pub fn ghes_hosts(github: Option<&GitHubEnv>, engine_api_target: Option<&str>) -> Vec<String> {
    let tenant = github
        .and_then(|g| g.server_url.as_deref())
        .is_some_and(|u| url_host(u).ends_with(".ghe.com"));
    let Some(t) = engine_api_target.filter(|_| !tenant) else {
        return Vec::new();
    };
    let target = url_host(t);
    if target.is_empty() {
        return Vec::new();
    }
    let base = target.strip_prefix("api.").unwrap_or(&target).to_owned();
    vec![base.clone(), format!("api.{base}")]
}

/// The host of a URL (or of a bare `host[:port][/path]`), lowercase.
fn url_host(url: &str) -> String {
    let t = url.trim();
    let t = t
        .strip_prefix("https://")
        .or_else(|| t.strip_prefix("http://"))
        .unwrap_or(t);
    host_of(t.split('/').next().unwrap_or(t)).to_ascii_lowercase()
}

/// The OIDC credential of `AWF_AUTH_TYPE=github-oidc`, once made.
struct Oidc {
    /// The api-proxy port whose requests it authenticates (when it has no key).
    provider: Provider,
    auth: RouteAuth,
    /// The upstream when no target is given (Bedrock's regional endpoint for AWS).
    default_upstream: Option<String>,
}

/// Sets `config.api_proxy` and adds one credential per provider key found in `env` (and the
/// `AWF_AUTH_*` OIDC exchange, and Copilot BYOK); returns the variables the command gets and
/// the targets to allow.
///
/// # Errors
///
/// A setting that cannot be honoured (an `http://` target, an OIDC provider without its
/// required variables, an unsupported provider), naming the variable.
pub fn configure(
    config: &mut Config,
    env: &ApiProxyEnv,
    github: Option<&GitHubEnv>,
    run: &RunVars,
) -> Result<Configured, String> {
    let var = |name: &str| env.vars.get(name).map(String::as_str);
    let deployment = github.and_then(|g| Deployment::classify(g).ok());
    let mut out = Configured::default();
    let oidc = oidc(config, env)?;
    let mut routes = Vec::new();
    for provider in Provider::ALL {
        let upper = provider.name().to_ascii_uppercase();
        let explicit = match var(&format!("{upper}_API_TARGET"))
            .or_else(|| (provider == Provider::Copilot).then_some(env.copilot_target.as_deref())?)
        {
            Some(t) => {
                let (authority, _) = https_target(t, &format!("{upper}_API_TARGET"))?;
                out.allow.push(format!("https://{}", host_of(&authority)));
                Some(authority)
            }
            None => None,
        };
        let mut route = Route::new(provider, String::new(), None);
        route.base_path = var(&format!("{upper}_API_BASE_PATH")).and_then(base_path);
        let has_key = env.keys.contains(&provider.key_var());
        let name = format!("awf-{}", provider.name());
        match provider {
            Provider::Copilot => {
                let standard = explicit.clone().unwrap_or_else(|| {
                    deployment.as_ref().map_or_else(
                        || provider.default_upstream().to_owned(),
                        Deployment::copilot_api_host,
                    )
                });
                if has_key {
                    // The GitHub token, exchanged for a Copilot token where the deployment
                    // allows it, else sent as is (`mode = "auto"`).
                    let api_url = match (&deployment, github) {
                        (Some(d), Some(g)) => d.api_base(g),
                        _ => "https://api.github.com".to_owned(),
                    };
                    config
                        .credentials
                        .push(env_credential(COPILOT_GITHUB, provider.key_var()));
                    config.credentials.push(Credential {
                        name: name.clone(),
                        source: CredentialSource::Copilot(CopilotSource {
                            github_token: COPILOT_GITHUB.to_owned(),
                            mode: CopilotMode::Auto,
                            scheme: None,
                            api_url: Some(api_url),
                        }),
                        refresh_margin: None,
                    });
                }
                if let Some(base_url) = var("COPILOT_PROVIDER_BASE_URL") {
                    byok(config, env, &oidc, base_url, &mut route, &mut out)?;
                    route.models_via = has_key.then(|| (standard, name.clone()));
                } else {
                    route.upstream = standard;
                    route.credential = has_key.then_some(name);
                }
            }
            p if !has_key && oidc.as_ref().is_some_and(|o| o.provider == p) => {
                let oidc = oidc.as_ref().expect("checked");
                route.upstream = explicit
                    .clone()
                    .or(oidc.default_upstream.clone())
                    .unwrap_or_else(|| provider.default_upstream().to_owned());
                route.credential = Some(OIDC.to_owned());
                route.auth = oidc.auth.clone();
            }
            _ => {
                route.upstream = explicit
                    .clone()
                    .unwrap_or_else(|| provider.default_upstream().to_owned());
                if has_key {
                    config
                        .credentials
                        .push(env_credential(&name, provider.key_var()));
                    route.credential = Some(name);
                    if let Some(header) = var(&format!("AWF_{upper}_AUTH_HEADER")) {
                        route.auth = RouteAuth::Header(header_name(
                            header,
                            &format!("AWF_{upper}_AUTH_HEADER"),
                        )?);
                    }
                }
            }
        }
        if route.credential.is_some() {
            placeholders(provider, env, &mut out.placeholders);
        }
        routes.push(route);
    }
    let interaction_id = run
        .run_id
        .as_deref()
        .map(|id| format!("{id}-{}", run.run_attempt.as_deref().unwrap_or("1")));
    config.api_proxy = Some(ApiProxy {
        routes,
        integration_id: env
            .integration_id
            .clone()
            .unwrap_or_else(|| egressd_config::copilot::DEFAULT_INTEGRATION_ID.to_owned()),
        interaction_id,
        rate_limit: None,
        budget: egressd_config::awf::apiproxy::Budget::default(),
    });
    Ok(out)
}

/// Copilot BYOK through port 10002 (`COPILOT_PROVIDER_BASE_URL`, reference/tokens.md §4.6):
/// the provider's host and base path, its key (`api-key` for Azure, `x-api-key` for
/// Anthropic, `Bearer` otherwise), its bearer token, or the OIDC exchange.
fn byok(
    config: &mut Config,
    env: &ApiProxyEnv,
    oidc: &Option<Oidc>,
    base_url: &str,
    route: &mut Route,
    out: &mut Configured,
) -> Result<(), String> {
    let (authority, path) = https_target(base_url, "COPILOT_PROVIDER_BASE_URL")?;
    out.allow.push(format!("https://{}", host_of(&authority)));
    route.upstream = authority;
    route.base_path = path.as_deref().and_then(base_path);
    let kind = env
        .vars
        .get("COPILOT_PROVIDER_TYPE")
        .map_or_else(|| "openai".to_owned(), |t| t.to_ascii_lowercase());
    if env.byok_bearer_set {
        config
            .credentials
            .push(env_credential(COPILOT_BYOK, BYOK_BEARER_VAR));
        route.credential = Some(COPILOT_BYOK.to_owned());
        route.auth = RouteAuth::Bearer;
    } else if env.byok_key_set {
        config
            .credentials
            .push(env_credential(COPILOT_BYOK, BYOK_KEY_VAR));
        route.credential = Some(COPILOT_BYOK.to_owned());
        route.auth = match kind.as_str() {
            "azure" => RouteAuth::AzureKey,
            "anthropic" => RouteAuth::Header("x-api-key".to_owned()),
            _ => RouteAuth::Bearer,
        };
    } else if let Some(oidc) = oidc {
        route.credential = Some(OIDC.to_owned());
        route.auth = oidc.auth.clone();
    } else {
        return Err(format!(
            "COPILOT_PROVIDER_BASE_URL is set but there is no {BYOK_KEY_VAR}, \
             {BYOK_BEARER_VAR} or AWF_AUTH_TYPE=github-oidc to authenticate to {}",
            route.upstream
        ));
    }
    Ok(())
}

/// The `AWF_AUTH_TYPE=github-oidc` credentials (a GitHub OIDC token exchanged with the
/// `AWF_AUTH_PROVIDER`: Entra, AWS STS or Google STS), added to `config`.
fn oidc(config: &mut Config, env: &ApiProxyEnv) -> Result<Option<Oidc>, String> {
    let var = |name: &str| env.vars.get(name).map(String::as_str);
    match var("AWF_AUTH_TYPE").map(str::to_ascii_lowercase).as_deref() {
        None | Some("api-key") => return Ok(None),
        Some("github-oidc") => {}
        Some(other) => {
            return Err(format!(
                "AWF_AUTH_TYPE={other}: expected github-oidc or api-key"
            ));
        }
    }
    let required = |name: &str| {
        var(name)
            .map(str::to_owned)
            .ok_or_else(|| format!("AWF_AUTH_TYPE=github-oidc with this provider needs {name}"))
    };
    let provider =
        var("AWF_AUTH_PROVIDER").map_or_else(|| "azure".to_owned(), str::to_ascii_lowercase);
    let audience = |default: String| var("AWF_AUTH_OIDC_AUDIENCE").map_or(default, str::to_owned);
    let (source, oidc_audience, oidc) = match provider.as_str() {
        "azure" => {
            let authority = match var("AWF_AUTH_AZURE_AUTHORITY") {
                Some(a) => a.trim_end_matches('/').to_owned(),
                None => match var("AWF_AUTH_AZURE_CLOUD").unwrap_or("public") {
                    "public" => "https://login.microsoftonline.com".to_owned(),
                    "usgovernment" => "https://login.microsoftonline.us".to_owned(),
                    "china" => "https://login.chinacloudapi.cn".to_owned(),
                    other => {
                        return Err(format!(
                            "AWF_AUTH_AZURE_CLOUD={other}: expected public, usgovernment or china"
                        ));
                    }
                },
            };
            let source = CredentialSource::Entra(EntraSource {
                authority,
                tenant: required("AWF_AUTH_AZURE_TENANT_ID")?,
                client_id: required("AWF_AUTH_AZURE_CLIENT_ID")?,
                scope: var("AWF_AUTH_AZURE_SCOPE")
                    .unwrap_or("https://cognitiveservices.azure.com/.default")
                    .to_owned(),
                assertion: OIDC_GITHUB.to_owned(),
            });
            let oidc = Oidc {
                provider: Provider::OpenAi,
                auth: RouteAuth::Bearer,
                default_upstream: None,
            };
            (
                source,
                audience("api://AzureADTokenExchange".to_owned()),
                oidc,
            )
        }
        "aws" => {
            let region = required("AWF_AUTH_AWS_REGION")?;
            let source = CredentialSource::AwsWebIdentity(AwsWebIdentitySource {
                endpoint: var("AWF_AUTH_AWS_STS_ENDPOINT").map_or_else(
                    || format!("https://sts.{region}.amazonaws.com/"),
                    str::to_owned,
                ),
                role_arn: required("AWF_AUTH_AWS_ROLE_ARN")?,
                role_session_name: var("AWF_AUTH_AWS_ROLE_SESSION_NAME")
                    .unwrap_or("awf-oidc-session")
                    .to_owned(),
                duration: Duration::from_secs(3600),
                web_identity_token: OIDC_GITHUB.to_owned(),
            });
            let oidc = Oidc {
                provider: Provider::OpenAi,
                auth: RouteAuth::SigV4 {
                    region: region.clone(),
                    service: "bedrock".to_owned(),
                },
                default_upstream: Some(format!("bedrock-runtime.{region}.amazonaws.com")),
            };
            (source, audience("sts.amazonaws.com".to_owned()), oidc)
        }
        "gcp" => {
            let wip = required("AWF_AUTH_GCP_WORKLOAD_IDENTITY_PROVIDER")?;
            let path = wip
                .trim_start_matches("https:")
                .trim_start_matches("//iam.googleapis.com/")
                .trim_start_matches('/')
                .to_owned();
            let source = CredentialSource::TokenExchange(TokenExchangeSource {
                token_url: var("AWF_AUTH_GCP_STS_URL")
                    .unwrap_or("https://sts.googleapis.com/v1/token")
                    .to_owned(),
                audience: format!("//iam.googleapis.com/{path}"),
                scope: var("AWF_AUTH_GCP_SCOPE")
                    .unwrap_or("https://www.googleapis.com/auth/cloud-platform")
                    .to_owned(),
                subject_token: OIDC_GITHUB.to_owned(),
                subject_token_type: "urn:ietf:params:oauth:token-type:jwt".to_owned(),
                requested_token_type: "urn:ietf:params:oauth:token-type:access_token".to_owned(),
                impersonation: var("AWF_AUTH_GCP_SERVICE_ACCOUNT").map(|sa| Impersonation {
                    service_account: sa.to_owned(),
                    iam_credentials_url: var("AWF_AUTH_GCP_IAM_CREDENTIALS_URL")
                        .unwrap_or("https://iamcredentials.googleapis.com")
                        .trim_end_matches('/')
                        .to_owned(),
                    lifetime: Duration::from_secs(3600),
                }),
            });
            let oidc = Oidc {
                provider: Provider::OpenAi,
                auth: RouteAuth::Bearer,
                default_upstream: None,
            };
            (
                source,
                audience(format!("https://iam.googleapis.com/{path}")),
                oidc,
            )
        }
        "anthropic" => {
            // AWF's AWF_AUTH_ANTHROPIC_* names, or the Anthropic SDKs' own variables.
            let either = |awf: &str, sdk: &str| {
                var(awf)
                    .or_else(|| var(sdk))
                    .map(str::to_owned)
                    .ok_or_else(|| format!("AWF_AUTH_PROVIDER=anthropic needs {awf} (or {sdk})"))
            };
            let source = CredentialSource::AnthropicWif(AnthropicWifSource {
                token_url: var("AWF_AUTH_ANTHROPIC_TOKEN_URL")
                    .unwrap_or(egressd_config::credential::ANTHROPIC_TOKEN_URL)
                    .to_owned(),
                federation_rule_id: either(
                    "AWF_AUTH_ANTHROPIC_FEDERATION_RULE_ID",
                    "ANTHROPIC_FEDERATION_RULE_ID",
                )?,
                organization_id: either(
                    "AWF_AUTH_ANTHROPIC_ORGANIZATION_ID",
                    "ANTHROPIC_ORGANIZATION_ID",
                )?,
                service_account_id: either(
                    "AWF_AUTH_ANTHROPIC_SERVICE_ACCOUNT_ID",
                    "ANTHROPIC_SERVICE_ACCOUNT_ID",
                )?,
                workspace_id: var("AWF_AUTH_ANTHROPIC_WORKSPACE_ID")
                    .or_else(|| var("ANTHROPIC_WORKSPACE_ID"))
                    .map(str::to_owned),
                assertion: OIDC_GITHUB.to_owned(),
            });
            let oidc = Oidc {
                provider: Provider::Anthropic,
                auth: RouteAuth::Bearer,
                default_upstream: None,
            };
            (
                source,
                audience("https://api.anthropic.com".to_owned()),
                oidc,
            )
        }
        other => {
            return Err(format!(
                "AWF_AUTH_PROVIDER={other}: expected azure, aws, gcp or anthropic"
            ));
        }
    };
    config.credentials.push(Credential {
        name: OIDC_GITHUB.to_owned(),
        source: CredentialSource::GithubOidc {
            audience: Some(oidc_audience),
        },
        refresh_margin: None,
    });
    config.credentials.push(Credential {
        name: OIDC.to_owned(),
        source,
        refresh_margin: None,
    });
    Ok(Some(oidc))
}

/// The command's variables for a configured provider (§5.3).
fn placeholders(provider: Provider, env: &ApiProxyEnv, vars: &mut Vec<(String, String)>) {
    let mut set = |k: &str, v: &str| vars.push((k.to_owned(), v.to_owned()));
    let base = format!("http://{IP}:{}", provider.port());
    match provider {
        Provider::OpenAi => {
            set("OPENAI_BASE_URL", &base);
            set("OPENAI_API_KEY", "sk-placeholder-for-api-proxy");
            set("CODEX_API_KEY", "sk-placeholder-for-api-proxy");
        }
        Provider::Anthropic => {
            set("ANTHROPIC_BASE_URL", &base);
            set(
                "ANTHROPIC_AUTH_TOKEN",
                "sk-ant-placeholder-key-for-credential-isolation",
            );
        }
        Provider::Copilot => {
            let placeholder = copilot_placeholder();
            set("COPILOT_API_URL", &base);
            set("COPILOT_PROVIDER_BASE_URL", &base);
            set("COPILOT_TOKEN", &placeholder);
            if env.keys.contains(&provider.key_var()) {
                set("COPILOT_GITHUB_TOKEN", &placeholder);
            }
            if env.byok_key_set {
                set(BYOK_KEY_VAR, &placeholder);
            }
            if env.byok_bearer_set
                || (!env.byok_key_set && env.vars.contains_key("COPILOT_PROVIDER_BASE_URL"))
            {
                // With the OIDC exchange the provider's token is minted here: the CLI still
                // needs a credential to send (without one, its Azure provider asks the
                // instance metadata service for a managed identity).
                set(BYOK_BEARER_VAR, &placeholder);
            }
            set("COPILOT_OFFLINE", "true");
        }
        Provider::Gemini => {
            set("GOOGLE_GEMINI_BASE_URL", &base);
            set("GEMINI_API_BASE_URL", &base);
            set(
                "GEMINI_API_KEY",
                "gemini-api-key-placeholder-for-credential-isolation",
            );
        }
        Provider::Vertex => {
            set("GOOGLE_VERTEX_BASE_URL", &base);
            set(
                "GOOGLE_API_KEY",
                "google-api-key-placeholder-for-credential-isolation",
            );
        }
    }
}

fn env_credential(name: &str, var: &str) -> Credential {
    Credential {
        name: name.to_owned(),
        source: CredentialSource::Env {
            var: var.to_owned(),
        },
        refresh_margin: None,
    }
}

/// The authority (`host` or `host:port`, lowercase) and path of an HTTPS target given as
/// `host`, `host:port` or `https://host[:port][/path]`. `http://` is refused: the api-proxy
/// forwards over verified HTTPS only.
fn https_target(target: &str, what: &str) -> Result<(String, Option<String>), String> {
    let t = target.trim();
    if t.starts_with("http://") {
        return Err(format!(
            "{what}={t}: egressd's api-proxy forwards over HTTPS only (http:// targets are not \
             supported)"
        ));
    }
    let t = t.strip_prefix("https://").unwrap_or(t);
    let (authority, path) = match t.find('/') {
        Some(i) => (&t[..i], Some(t[i..].to_owned())),
        None => (t, None),
    };
    let authority = authority.to_ascii_lowercase();
    let host = host_of(&authority);
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
    {
        return Err(format!("{what}={target}: not a host name"));
    }
    Ok((authority, path))
}

/// The host of an authority (`host:port`).
fn host_of(authority: &str) -> &str {
    authority.split(':').next().unwrap_or(authority)
}

/// A base path as `/a/b` (leading slash, no trailing one); `None` for `/` or empty.
fn base_path(path: &str) -> Option<String> {
    let trimmed = path.trim().trim_matches('/');
    (!trimmed.is_empty()).then(|| format!("/{trimmed}"))
}

/// A header name from `AWF_*_AUTH_HEADER` (an RFC 9110 token), lowercased.
fn header_name(name: &str, what: &str) -> Result<String, String> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c));
    if ok {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(format!("{what}={name}: not a valid header name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty_config() -> Config {
        egressd_config::ConfigBuilder::new().build().unwrap()
    }

    fn get<'a>(vars: &'a [(String, String)], k: &str) -> Option<&'a str> {
        vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn keys_become_credentials_routes_and_placeholders() {
        let mut config = empty_config();
        let env = ApiProxyEnv {
            keys: vec!["OPENAI_API_KEY", "COPILOT_GITHUB_TOKEN"],
            ..ApiProxyEnv::default()
        };
        let run = RunVars {
            run_id: Some("7".into()),
            run_attempt: None,
        };
        let github = GitHubEnv {
            server_url: Some("https://acme.ghe.com".into()),
            api_url: None,
            force_ghes: false,
        };
        let vars = configure(&mut config, &env, Some(&github), &run)
            .unwrap()
            .placeholders;
        let api = config.api_proxy.as_ref().unwrap();
        assert!(api.configured(Provider::OpenAi));
        assert!(api.configured(Provider::Copilot));
        assert!(!api.configured(Provider::Anthropic));
        assert_eq!(
            api.route(10002).unwrap().upstream,
            "copilot-api.acme.ghe.com"
        );
        assert_eq!(api.interaction_id.as_deref(), Some("7-1"));
        assert_eq!(api.integration_id, "agentic-workflows");
        assert_eq!(
            get(&vars, "OPENAI_BASE_URL"),
            Some("http://172.30.0.30:10000")
        );
        assert_eq!(
            get(&vars, "OPENAI_API_KEY"),
            Some("sk-placeholder-for-api-proxy")
        );
        assert_eq!(
            get(&vars, "COPILOT_GITHUB_TOKEN"),
            Some("ghu_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
        );
        assert_eq!(get(&vars, "ANTHROPIC_BASE_URL"), None);
        let vars = crate::env::credential_vars(&config);
        assert!(vars.contains(&"OPENAI_API_KEY".to_owned()));
        assert!(vars.contains(&"COPILOT_GITHUB_TOKEN".to_owned()));
    }

    #[test]
    fn copilot_target_wins() {
        let mut config = empty_config();
        let env = ApiProxyEnv {
            copilot_target: Some("https://api.business.githubcopilot.com/".into()),
            integration_id: Some("x".into()),
            ..ApiProxyEnv::default()
        };
        let out = configure(&mut config, &env, None, &RunVars::default()).unwrap();
        assert!(out.placeholders.is_empty());
        assert_eq!(out.allow, vec!["https://api.business.githubcopilot.com"]);
        let api = config.api_proxy.unwrap();
        assert_eq!(
            api.route(10002).unwrap().upstream,
            "api.business.githubcopilot.com"
        );
        assert_eq!(api.integration_id, "x");
        assert!(config.credentials.is_empty());
    }

    fn env_with(keys: Vec<&'static str>, vars: &[(&str, &str)]) -> ApiProxyEnv {
        ApiProxyEnv {
            keys,
            vars: vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..ApiProxyEnv::default()
        }
    }

    #[test]
    fn targets_base_paths_and_auth_headers() {
        let mut config = empty_config();
        let env = env_with(
            vec!["OPENAI_API_KEY", "ANTHROPIC_API_KEY"],
            &[
                ("OPENAI_API_TARGET", "https://gateway.corp.example/"),
                ("OPENAI_API_BASE_PATH", "/openai/v1/"),
                ("AWF_OPENAI_AUTH_HEADER", "X-Gateway-Key"),
                ("ANTHROPIC_API_TARGET", "llm.corp.example:8443"),
            ],
        );
        let out = configure(&mut config, &env, None, &RunVars::default()).unwrap();
        assert_eq!(
            out.allow,
            vec!["https://gateway.corp.example", "https://llm.corp.example"]
        );
        let api = config.api_proxy.unwrap();
        let openai = api.route(10000).unwrap();
        assert_eq!(openai.upstream, "gateway.corp.example");
        assert_eq!(openai.base_path.as_deref(), Some("/openai/v1"));
        assert_eq!(openai.auth, RouteAuth::Header("x-gateway-key".into()));
        assert_eq!(api.route(10001).unwrap().upstream, "llm.corp.example:8443");

        let env = env_with(vec![], &[("OPENAI_API_TARGET", "http://plain.example")]);
        let err = configure(&mut empty_config(), &env, None, &RunVars::default()).unwrap_err();
        assert!(err.contains("HTTPS only"), "{err}");
    }

    #[test]
    fn copilot_byok_azure_key_keeps_models_on_copilot() {
        let mut config = empty_config();
        let mut env = env_with(
            vec!["COPILOT_GITHUB_TOKEN"],
            &[
                (
                    "COPILOT_PROVIDER_BASE_URL",
                    "https://res.openai.azure.com/openai/deployments/gpt-4o",
                ),
                ("COPILOT_PROVIDER_TYPE", "azure"),
            ],
        );
        env.byok_key_set = true;
        let out = configure(&mut config, &env, None, &RunVars::default()).unwrap();
        assert_eq!(out.allow, vec!["https://res.openai.azure.com"]);
        let copilot = config
            .api_proxy
            .as_ref()
            .unwrap()
            .route(10002)
            .unwrap()
            .clone();
        assert_eq!(copilot.upstream, "res.openai.azure.com");
        assert_eq!(
            copilot.base_path.as_deref(),
            Some("/openai/deployments/gpt-4o")
        );
        assert_eq!(copilot.auth, RouteAuth::AzureKey);
        assert_eq!(copilot.credential.as_deref(), Some("awf-copilot-byok"));
        assert_eq!(
            copilot.models_via,
            Some(("api.githubcopilot.com".into(), "awf-copilot".into()))
        );
        assert_eq!(
            get(&out.placeholders, "COPILOT_PROVIDER_API_KEY"),
            Some("ghu_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
        );
        let scrubbed = crate::env::credential_vars(&config);
        assert!(scrubbed.contains(&"COPILOT_PROVIDER_API_KEY".to_owned()));
    }

    #[test]
    fn oidc_providers_become_broker_credentials() {
        // Azure: Entra over the job's OIDC token, bearer on the OpenAI port.
        let mut config = empty_config();
        let env = env_with(
            vec![],
            &[
                ("AWF_AUTH_TYPE", "github-oidc"),
                ("AWF_AUTH_AZURE_TENANT_ID", "t"),
                ("AWF_AUTH_AZURE_CLIENT_ID", "c"),
                ("OPENAI_API_TARGET", "res.openai.azure.com"),
            ],
        );
        configure(&mut config, &env, None, &RunVars::default()).unwrap();
        let openai = config
            .api_proxy
            .as_ref()
            .unwrap()
            .route(10000)
            .unwrap()
            .clone();
        assert_eq!(openai.credential.as_deref(), Some("awf-oidc"));
        assert_eq!(openai.auth, RouteAuth::Bearer);
        let oidc = config
            .credentials
            .iter()
            .find(|c| c.name == "awf-oidc-github")
            .unwrap();
        assert_eq!(
            oidc.source,
            CredentialSource::GithubOidc {
                audience: Some("api://AzureADTokenExchange".into())
            }
        );
        let CredentialSource::Entra(entra) = &config
            .credentials
            .iter()
            .find(|c| c.name == "awf-oidc")
            .unwrap()
            .source
        else {
            panic!("not entra");
        };
        assert_eq!(entra.authority, "https://login.microsoftonline.com");
        assert_eq!(entra.scope, "https://cognitiveservices.azure.com/.default");

        // AWS: STS web identity, SigV4 to Bedrock's regional endpoint.
        let mut config = empty_config();
        let env = env_with(
            vec![],
            &[
                ("AWF_AUTH_TYPE", "github-oidc"),
                ("AWF_AUTH_PROVIDER", "aws"),
                ("AWF_AUTH_AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
                ("AWF_AUTH_AWS_REGION", "us-east-1"),
            ],
        );
        configure(&mut config, &env, None, &RunVars::default()).unwrap();
        let openai = config
            .api_proxy
            .as_ref()
            .unwrap()
            .route(10000)
            .unwrap()
            .clone();
        assert_eq!(openai.upstream, "bedrock-runtime.us-east-1.amazonaws.com");
        assert!(
            matches!(openai.auth, RouteAuth::SigV4 { ref service, .. } if service == "bedrock")
        );

        // Missing settings and unsupported providers are errors that name the variable.
        let env = env_with(vec![], &[("AWF_AUTH_TYPE", "github-oidc")]);
        let err = configure(&mut empty_config(), &env, None, &RunVars::default()).unwrap_err();
        assert!(err.contains("AWF_AUTH_AZURE_TENANT_ID"), "{err}");
        let env = env_with(
            vec![],
            &[
                ("AWF_AUTH_TYPE", "github-oidc"),
                ("AWF_AUTH_PROVIDER", "anthropic"),
            ],
        );
        let err = configure(&mut empty_config(), &env, None, &RunVars::default()).unwrap_err();
        assert!(
            err.contains("AWF_AUTH_ANTHROPIC_FEDERATION_RULE_ID (or ANTHROPIC_FEDERATION_RULE_ID)"),
            "{err}"
        );
        let env = env_with(
            vec![],
            &[
                ("AWF_AUTH_TYPE", "github-oidc"),
                ("AWF_AUTH_PROVIDER", "vertex"),
            ],
        );
        let err = configure(&mut empty_config(), &env, None, &RunVars::default()).unwrap_err();
        assert!(
            err.contains("expected azure, aws, gcp or anthropic"),
            "{err}"
        );
    }

    #[test]
    fn anthropic_wif_authenticates_the_anthropic_port() {
        let mut config = empty_config();
        let env = env_with(
            vec![],
            &[
                ("AWF_AUTH_TYPE", "github-oidc"),
                ("AWF_AUTH_PROVIDER", "anthropic"),
                ("ANTHROPIC_FEDERATION_RULE_ID", "fdrl_sdk"),
                ("AWF_AUTH_ANTHROPIC_FEDERATION_RULE_ID", "fdrl_awf"),
                (
                    "ANTHROPIC_ORGANIZATION_ID",
                    "00000000-0000-0000-0000-000000000001",
                ),
                ("ANTHROPIC_SERVICE_ACCOUNT_ID", "svac_1"),
            ],
        );
        let out = configure(&mut config, &env, None, &RunVars::default()).unwrap();
        let proxy = config.api_proxy.as_ref().unwrap();
        let anthropic = proxy.route(10001).unwrap();
        assert_eq!(anthropic.credential.as_deref(), Some("awf-oidc"));
        assert_eq!(anthropic.auth, RouteAuth::Bearer);
        assert_eq!(anthropic.upstream, "api.anthropic.com");
        assert_eq!(
            proxy.route(10000).unwrap().credential,
            None,
            "OpenAI has no key"
        );
        let find = |name: &str| {
            config
                .credentials
                .iter()
                .find(|c| c.name == name)
                .unwrap()
                .source
                .clone()
        };
        assert_eq!(
            find("awf-oidc-github"),
            CredentialSource::GithubOidc {
                audience: Some("https://api.anthropic.com".into())
            }
        );
        let CredentialSource::AnthropicWif(wif) = find("awf-oidc") else {
            panic!("not anthropic-wif");
        };
        assert_eq!(wif.federation_rule_id, "fdrl_awf", "AWF's name wins");
        assert_eq!(wif.service_account_id, "svac_1");
        assert_eq!(wif.workspace_id, None);
        assert_eq!(wif.token_url, "https://api.anthropic.com/v1/oauth/token");
        assert!(
            out.placeholders
                .iter()
                .any(|(k, v)| k == "ANTHROPIC_BASE_URL" && v.ends_with(":10001")),
            "{:?}",
            out.placeholders
        );
    }

    #[test]
    fn ghe_com_and_ghes_additions_follow_awf() {
        let ghec = GitHubEnv {
            server_url: Some("https://acme.ghe.com".into()),
            api_url: Some("https://api.acme.ghe.com".into()),
            force_ghes: false,
        };
        assert_eq!(
            github_additions(Some(&ghec), None),
            vec![
                "acme.ghe.com",
                "api.acme.ghe.com",
                "copilot-api.acme.ghe.com",
                "copilot-telemetry-service.acme.ghe.com"
            ]
        );
        let ghes = GitHubEnv {
            server_url: Some("https://github.corp.com".into()),
            api_url: Some("https://github.corp.com/api/v3".into()),
            force_ghes: false,
        };
        assert!(
            github_additions(Some(&ghes), None).is_empty(),
            "GHES needs ENGINE_API_TARGET"
        );
        assert_eq!(
            github_additions(Some(&ghes), Some("https://api.github.corp.com")),
            vec![
                "github.corp.com",
                "api.github.corp.com",
                "api.githubcopilot.com",
                "api.enterprise.githubcopilot.com",
                "telemetry.enterprise.githubcopilot.com"
            ]
        );
        assert!(github_additions(None, None).is_empty());
    }
}
