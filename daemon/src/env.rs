//! The one place that reads the process environment: who invoked `sudo`, and the
//! scrubbed environment the sandboxed command gets.

use std::ffi::OsString;

/// Variables that hold credentials (AWF's exclusion list, reference/awf.md §4.3) or that
/// would steer clients around the transparent proxy. Never passed to the sandbox.
const SCRUBBED: &[&str] = &[
    // GitHub Actions runtime credentials.
    "ACTIONS_RUNTIME_TOKEN",
    "ACTIONS_RESULTS_URL",
    "ACTIONS_CACHE_URL",
    // GitHub tokens.
    "GITHUB_TOKEN",
    "GH_TOKEN",
    "GITHUB_PERSONAL_ACCESS_TOKEN",
    "GITHUB_API_TOKEN",
    "GITHUB_PAT",
    "GH_ACCESS_TOKEN",
    "GH_ENTERPRISE_TOKEN",
    "GITHUB_ENTERPRISE_TOKEN",
    "COPILOT_GITHUB_TOKEN",
    // Model provider keys.
    "OPENAI_API_KEY",
    "OPENAI_KEY",
    "CODEX_API_KEY",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "CLAUDE_API_KEY",
    "COPILOT_PROVIDER_API_KEY",
    "COPILOT_PROVIDER_BEARER_TOKEN",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "AZURE_OPENAI_API_KEY",
    "OPENAI_ENDPOINT_OVERRIDE",
    // Cloud credentials.
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_CLIENT_SECRET",
    "GOOGLE_APPLICATION_CREDENTIALS",
    // Proxy variables: the sandbox is proxied transparently; a forward-proxy setting
    // would only make clients send CONNECT, which egressd refuses.
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "FTP_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "ftp_proxy",
    // Loader tricks that would outlive the privilege drop.
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "LD_AUDIT",
];

/// Prefixes of variables that are never passed on.
const SCRUBBED_PREFIXES: &[&str] = &["ACTIONS_ID_TOKEN_", "SUDO_"];

/// Whether variable `name` is removed from the sandbox's environment.
pub fn is_scrubbed(name: &str) -> bool {
    SCRUBBED.contains(&name) || SCRUBBED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The user who ran `sudo egressd ...`, if any.
pub fn sudo_user() -> Option<(u32, u32)> {
    let uid = std::env::var("SUDO_UID").ok()?.parse().ok()?;
    let gid = std::env::var("SUDO_GID").ok()?.parse().ok()?;
    Some((uid, gid))
}

/// The environment for the sandboxed command: ours minus the scrubbed variables and the
/// variables credential sources read (`also_scrubbed`), plus `set`, with `HOME`, `USER` and
/// `LOGNAME` set for the target user when it has a passwd entry.
pub fn sandbox_env(
    uid: u32,
    also_scrubbed: &[String],
    set: &[(String, String)],
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(name, _)| {
            !name
                .to_str()
                .is_some_and(|n| is_scrubbed(n) || also_scrubbed.iter().any(|s| s == n))
        })
        .filter(|(name, _)| !set.iter().any(|(k, _)| name == k.as_str()))
        .collect();
    env.extend(set.iter().map(|(k, v)| (k.into(), v.into())));
    if let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        let set = |env: &mut Vec<(OsString, OsString)>, k: &str, v: OsString| {
            env.retain(|(name, _)| name != k);
            env.push((k.into(), v));
        };
        set(&mut env, "HOME", user.dir.into_os_string());
        set(&mut env, "USER", user.name.clone().into());
        set(&mut env, "LOGNAME", user.name.into());
    }
    env
}

/// What the token sources read from the daemon's environment: the GitHub Actions OIDC
/// request URL and token, each variable an `env` credential names, and
/// `SPIFFE_ENDPOINT_SOCKET` (the Workload API of `spiffe-x509` credentials without a
/// `socket`). Missing ones are left out; the broker says which credential needs them.
pub fn token_source_env(config: &egressd_config::Config) -> egressd_proxy::token::SourceEnv {
    use egressd_proxy::token::{GithubOidcEnv, Secret, SourceEnv};
    let github_oidc = match (
        std::env::var("ACTIONS_ID_TOKEN_REQUEST_URL"),
        std::env::var("ACTIONS_ID_TOKEN_REQUEST_TOKEN"),
    ) {
        (Ok(request_url), Ok(token)) => Some(GithubOidcEnv {
            request_url,
            request_token: Secret::new(token),
        }),
        _ => None,
    };
    let vars = credential_vars(config)
        .into_iter()
        .filter_map(|var| Some((var.clone(), Secret::new(std::env::var(&var).ok()?))))
        .collect();
    let spiffe_endpoint_socket =
        std::env::var(egressd_config::credential::SPIFFE_ENDPOINT_SOCKET).ok();
    SourceEnv {
        github_oidc,
        vars,
        spiffe_endpoint_socket,
    }
}

/// The daemon variables `env` credentials, `per-actor` tables and `spiffe-x509` credentials
/// read: never passed to the sandbox (the sandbox is not the workload the SPIRE agent serves;
/// egressd is).
pub fn credential_vars(config: &egressd_config::Config) -> Vec<String> {
    let mut vars: Vec<String> = config
        .credentials
        .iter()
        .filter_map(|c| match &c.source {
            egressd_config::CredentialSource::Env { var } => Some(var.clone()),
            _ => None,
        })
        .collect();
    vars.extend(egressd_proxy::token::per_actor_vars(&config.credentials));
    if config
        .credentials
        .iter()
        .any(egressd_config::Credential::is_x509_identity)
    {
        vars.push(egressd_config::credential::SPIFFE_ENDPOINT_SOCKET.to_owned());
    }
    vars
}

/// `GITHUB_STEP_SUMMARY`: the job summary file `audit --step-summary` appends to, if set.
pub fn github_step_summary() -> Option<std::path::PathBuf> {
    std::env::var_os("GITHUB_STEP_SUMMARY")
        .filter(|v| !v.is_empty())
        .map(Into::into)
}

/// True when `NO_COLOR` is set to anything non-empty (<https://no-color.org>).
pub fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// The GitHub deployment variables, when the job runs in GitHub Actions (either URL set).
pub fn github_env() -> Option<egressd_config::github::GitHubEnv> {
    let server_url = std::env::var("GITHUB_SERVER_URL")
        .ok()
        .filter(|v| !v.is_empty());
    let api_url = std::env::var("GITHUB_API_URL")
        .ok()
        .filter(|v| !v.is_empty());
    if server_url.is_none() && api_url.is_none() {
        return None;
    }
    Some(egressd_config::github::GitHubEnv {
        server_url,
        api_url,
        force_ghes: std::env::var("GITHUB_ACTIONS_RUNNER_FORCE_GHES").is_ok_and(|v| v == "1"),
    })
}

/// `GITHUB_RUN_ID` / `GITHUB_RUN_ATTEMPT`, for `{run_id}`/`{run_attempt}` in injected headers
/// (Copilot's `X-Interaction-Id`).
pub fn github_run() -> egressd_config::intercept::RunVars {
    let var = |name| std::env::var(name).ok().filter(|v| !v.is_empty());
    egressd_config::intercept::RunVars {
        run_id: var("GITHUB_RUN_ID"),
        run_attempt: var("GITHUB_RUN_ATTEMPT"),
    }
}

/// What `egressd awf`'s api-proxy reads from the daemon's environment (reference/awf.md
/// §5.2): which provider key variables are set (names only; the broker reads the values
/// through `env` credentials), and the non-secret settings: targets, base paths, auth header
/// names, Copilot BYOK and `AWF_AUTH_*` (OIDC) variables.
#[derive(Debug, Clone, Default)]
pub struct ApiProxyEnv {
    /// The set (non-empty) variables among the providers' key variables.
    pub keys: Vec<&'static str>,
    /// `COPILOT_API_TARGET`: the Copilot API host (or URL).
    pub copilot_target: Option<String>,
    /// `COPILOT_INTEGRATION_ID`.
    pub integration_id: Option<String>,
    /// The settings below, by variable name (only those set and non-empty). Secrets are
    /// never read here: key variables are only checked for presence, in `keys` and
    /// `byok_*_set`.
    pub vars: std::collections::BTreeMap<String, String>,
    /// `COPILOT_PROVIDER_API_KEY` is set.
    pub byok_key_set: bool,
    /// `COPILOT_PROVIDER_BEARER_TOKEN` is set.
    pub byok_bearer_set: bool,
}

/// The non-secret api-proxy settings [`api_proxy_env`] reads into `vars`.
pub const API_PROXY_SETTINGS: &[&str] = &[
    "OPENAI_API_TARGET",
    "OPENAI_API_BASE_PATH",
    "AWF_OPENAI_AUTH_HEADER",
    "ANTHROPIC_API_TARGET",
    "ANTHROPIC_API_BASE_PATH",
    "AWF_ANTHROPIC_AUTH_HEADER",
    "COPILOT_API_TARGET",
    "COPILOT_API_BASE_PATH",
    "GEMINI_API_TARGET",
    "GEMINI_API_BASE_PATH",
    "AWF_GEMINI_AUTH_HEADER",
    "VERTEX_API_TARGET",
    "VERTEX_API_BASE_PATH",
    "AWF_VERTEX_AUTH_HEADER",
    "COPILOT_PROVIDER_BASE_URL",
    "COPILOT_PROVIDER_TYPE",
    "ENGINE_API_TARGET",
    "AWF_AUTH_TYPE",
    "AWF_AUTH_PROVIDER",
    "AWF_AUTH_OIDC_AUDIENCE",
    "AWF_AUTH_AZURE_TENANT_ID",
    "AWF_AUTH_AZURE_CLIENT_ID",
    "AWF_AUTH_AZURE_SCOPE",
    "AWF_AUTH_AZURE_CLOUD",
    "AWF_AUTH_AZURE_AUTHORITY",
    "AWF_AUTH_AWS_ROLE_ARN",
    "AWF_AUTH_AWS_REGION",
    "AWF_AUTH_AWS_ROLE_SESSION_NAME",
    "AWF_AUTH_AWS_STS_ENDPOINT",
    "AWF_AUTH_GCP_WORKLOAD_IDENTITY_PROVIDER",
    "AWF_AUTH_GCP_SERVICE_ACCOUNT",
    "AWF_AUTH_GCP_SCOPE",
    "AWF_AUTH_GCP_STS_URL",
    "AWF_AUTH_GCP_IAM_CREDENTIALS_URL",
    "AWF_AUTH_ANTHROPIC_FEDERATION_RULE_ID",
    "AWF_AUTH_ANTHROPIC_ORGANIZATION_ID",
    "AWF_AUTH_ANTHROPIC_SERVICE_ACCOUNT_ID",
    "AWF_AUTH_ANTHROPIC_WORKSPACE_ID",
    "AWF_AUTH_ANTHROPIC_TOKEN_URL",
    "ANTHROPIC_FEDERATION_RULE_ID",
    "ANTHROPIC_ORGANIZATION_ID",
    "ANTHROPIC_SERVICE_ACCOUNT_ID",
    "ANTHROPIC_WORKSPACE_ID",
];

/// Reads [`ApiProxyEnv`].
pub fn api_proxy_env() -> ApiProxyEnv {
    let set = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    ApiProxyEnv {
        keys: egressd_config::apiproxy::Provider::ALL
            .into_iter()
            .map(egressd_config::apiproxy::Provider::key_var)
            .filter(|v| set(v).is_some())
            .collect(),
        copilot_target: set("COPILOT_API_TARGET"),
        integration_id: set("COPILOT_INTEGRATION_ID"),
        vars: API_PROXY_SETTINGS
            .iter()
            .filter_map(|name| set(name).map(|v| ((*name).to_owned(), v)))
            .collect(),
        byok_key_set: set(egressd_config::copilot::BYOK_KEY_VAR).is_some(),
        byok_bearer_set: set(egressd_config::copilot::BYOK_BEARER_VAR).is_some(),
    }
}

/// Copilot BYOK (`COPILOT_PROVIDER_BASE_URL` and which key variable is set), when egressd's
/// environment has a base URL. Only the variable's name is passed on: the broker reads the
/// key through the `env` credential the configuration makes of it, and the sandbox gets a
/// placeholder.
pub fn copilot_byok() -> Option<egressd_config::copilot::ByokEnv> {
    use egressd_config::copilot::{BYOK_BEARER_VAR, BYOK_KEY_VAR, ByokEnv};
    let set = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let base_url = set("COPILOT_PROVIDER_BASE_URL")?;
    // The bearer token takes precedence over the key (reference/tokens.md §4.6).
    let key_var = [BYOK_BEARER_VAR, BYOK_KEY_VAR]
        .into_iter()
        .find(|v| set(v).is_some())
        .map(str::to_owned);
    Some(ByokEnv {
        base_url,
        provider_type: set("COPILOT_PROVIDER_TYPE").map(|t| t.to_ascii_lowercase()),
        key_var,
    })
}

/// `EGRESSD_LOG`, the log filter directive, if set.
pub fn log_filter() -> Option<String> {
    std::env::var("EGRESSD_LOG").ok()
}

#[cfg(test)]
mod tests {
    use super::is_scrubbed;

    #[test]
    fn credentials_and_proxies_are_scrubbed() {
        for name in [
            "GITHUB_TOKEN",
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
            "ACTIONS_ID_TOKEN_REQUEST_URL",
            "COPILOT_GITHUB_TOKEN",
            "OPENAI_API_KEY",
            "https_proxy",
            "SUDO_UID",
            "LD_PRELOAD",
        ] {
            assert!(is_scrubbed(name), "{name} must be scrubbed");
        }
        for name in [
            "PATH",
            "HOME",
            "GITHUB_REPOSITORY",
            "GITHUB_SERVER_URL",
            "LANG",
        ] {
            assert!(!is_scrubbed(name), "{name} must be kept");
        }
    }
}
