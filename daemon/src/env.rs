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
    // egressd's own: the OTLP collector's headers (an API key).
    "EGRESSD_OTLP_HEADERS",
    // Loader tricks that would outlive the privilege drop.
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "LD_AUDIT",
];

/// Prefixes of variables that are never passed on.
const SCRUBBED_PREFIXES: &[&str] = &["ACTIONS_ID_TOKEN_", "SUDO_"];

/// Whether variable `name` is on the fixed list of variables removed from the sandbox's
/// environment (credentials egressd knows by name, proxy settings, loader tricks).
pub fn is_scrubbed(name: &str) -> bool {
    SCRUBBED.contains(&name) || SCRUBBED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// `EGRESSD_OTLP_HEADERS`, `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_SERVICE_NAME`, for the OTLP
/// export of the audit.
pub fn otlp_env() -> [Option<String>; 3] {
    [
        "EGRESSD_OTLP_HEADERS",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_SERVICE_NAME",
    ]
    .map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
}

/// Words anywhere in a variable's name (upper-cased) that say it holds a secret.
const SECRET_NAME_PARTS: &[&str] = &[
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "CREDENTIAL",
    "CONNECTION_STRING",
    "CONNECTIONSTRING",
    "PRIVATE_KEY",
    "APIKEY",
    "API_KEY",
];

/// `_`-separated segments of a name that say it holds a secret (`NPM_TOKEN`,
/// `STORAGE_SAS_URL`), matched whole so that `MAX_THINKING_TOKENS` or `KAFKA_SASL_MECHANISM`
/// are left alone.
const SECRET_NAME_SEGMENTS: &[&str] = &["TOKEN", "SAS", "PAT", "KEY", "AUTH"];

/// Names that match the patterns above but hold no secret, and that tools need.
const NOT_SECRETS: &[&str] = &["TOKENIZERS_PARALLELISM", "SSH_AUTH_SOCK"];

/// Why a variable looks like a secret: its name says so (unless its value is a number or a
/// yes/no, which no secret is), or its value holds a known token format. `None` when not.
pub fn looks_secret(name: &str, value: &[u8]) -> Option<&'static str> {
    let upper = name.to_ascii_uppercase();
    if NOT_SECRETS.contains(&upper.as_str()) {
        return None;
    }
    if holds_token(value) {
        return Some("value");
    }
    let named = SECRET_NAME_PARTS.iter().any(|p| upper.contains(p))
        || upper
            .split('_')
            .any(|segment| SECRET_NAME_SEGMENTS.contains(&segment));
    (named && !is_setting(value)).then_some("name")
}

/// A number or a yes/no: a setting (`MAX_OUTPUT_TOKENS=8192`, `HF_HUB_DISABLE_IMPLICIT_TOKEN=1`),
/// never a secret.
fn is_setting(value: &[u8]) -> bool {
    let v = String::from_utf8_lossy(value).trim().to_ascii_lowercase();
    v.is_empty()
        || v.chars().all(|c| c.is_ascii_digit())
        || ["true", "false", "yes", "no", "on", "off"].contains(&v.as_str())
}

/// Prefixes of well-known token formats (GitHub, GitLab, Slack, Anthropic, OpenAI, npm,
/// PyPI, Hugging Face) and PEM private keys.
const TOKEN_PREFIXES: &[&str] = &[
    "ghp_",
    "gho_",
    "ghs_",
    "ghu_",
    "ghr_",
    "github_pat_",
    "glpat-",
    "xoxa-",
    "xoxb-",
    "xoxp-",
    "xoxs-",
    "sk-ant-",
    "sk-proj-",
    "npm_",
    "pypi-",
    "hf_",
];

/// Whether `value` holds a credential: a known token prefix followed by token characters
/// anywhere in it (`https://x-access-token:ghs_...@github.com` too), an AWS access key id, a
/// PEM private key, or is a JWT.
fn holds_token(value: &[u8]) -> bool {
    let Ok(v) = std::str::from_utf8(value) else {
        return false;
    };
    let v = v.trim();
    let token_char = |c: char| c.is_ascii_alphanumeric() || "-_".contains(c);
    if v.contains("-----BEGIN") && v.contains("PRIVATE KEY") {
        return true;
    }
    for prefix in TOKEN_PREFIXES {
        for (at, _) in v.match_indices(prefix) {
            // At the start of a word, followed by at least 16 token characters.
            let starts_word = v[..at].chars().next_back().is_none_or(|c| !token_char(c));
            let rest = v[at + prefix.len()..]
                .chars()
                .take_while(|c| token_char(*c))
                .count();
            if starts_word && rest >= 16 {
                return true;
            }
        }
    }
    // AWS access key ids: AKIA/ASIA and 16 upper-case letters or digits.
    let aws = |w: &str| {
        w.len() == 20
            && (w.starts_with("AKIA") || w.starts_with("ASIA"))
            && w[4..]
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
    };
    if v.split(|c: char| !c.is_ascii_alphanumeric()).any(aws) {
        return true;
    }
    // JWTs: three base64url parts, the first a JSON object (`eyJ` is `{"`).
    let parts: Vec<&str> = v.split('.').collect();
    parts.len() == 3
        && v.starts_with("eyJ")
        && parts[..2].iter().all(|p| p.len() >= 8)
        && parts.iter().all(|p| {
            p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_=".contains(c))
        })
}

/// The user who ran `sudo egressd ...`, if any.
pub fn sudo_user() -> Option<(u32, u32)> {
    let uid = std::env::var("SUDO_UID").ok()?.parse().ok()?;
    let gid = std::env::var("SUDO_GID").ok()?.parse().ok()?;
    Some((uid, gid))
}

/// The sandboxed command's environment, and the names of the variables removed from it
/// because they looked like secrets (never their values), for the exit summary.
#[derive(Debug, Default)]
pub struct SandboxEnv {
    /// Every variable the command gets.
    pub vars: Vec<(OsString, OsString)>,
    /// Names removed by pattern (the fixed list is removed silently, as always).
    pub removed: Vec<String>,
}

/// The environment for the sandboxed command: ours minus the scrubbed variables, the
/// variables credential sources read (`also_scrubbed`) and every variable that looks like
/// a secret ([`looks_secret`]) unless `pass` names it, plus `set`, with `HOME`, `USER` and
/// `LOGNAME` set for the target user when it has a passwd entry.
pub fn sandbox_env(
    uid: u32,
    also_scrubbed: &[String],
    set: &[(String, String)],
    pass: &[String],
) -> SandboxEnv {
    let mut removed = Vec::new();
    let mut env: Vec<(OsString, OsString)> = Vec::new();
    for (name, value) in std::env::vars_os() {
        if set.iter().any(|(k, _)| name == k.as_str()) {
            continue;
        }
        let Some(n) = name.to_str() else {
            // A name that is not UTF-8 is nobody's setting: drop it.
            continue;
        };
        if is_scrubbed(n) || also_scrubbed.iter().any(|s| s == n) {
            continue;
        }
        if !pass.iter().any(|p| p == n) && looks_secret(n, value.as_encoded_bytes()).is_some() {
            removed.push(n.to_owned());
            continue;
        }
        env.push((name, value));
    }
    removed.sort();
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
    SandboxEnv { vars: env, removed }
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

/// The configuration's placeholders (and other variables it sets for the sandbox), the
/// Copilot CLI's GitHub token placeholder shaped like the token the daemon holds (an Actions
/// `ghs_` token makes the CLI take another path, so its placeholder must look like one too;
/// see `copilot::placeholder_for`), and a `COPILOT_MODEL` of egressd's environment kept.
pub fn placeholders(config: &egressd_config::Config) -> Vec<(String, String)> {
    use egressd_config::{CredentialSource, copilot};
    let held = || {
        let github_token = config.credentials.iter().find_map(|c| match &c.source {
            CredentialSource::Copilot(s) if c.name == copilot::CREDENTIAL => {
                Some(s.github_token.as_str())
            }
            _ => None,
        })?;
        match &config
            .credentials
            .iter()
            .find(|c| c.name == github_token)?
            .source
        {
            CredentialSource::Env { var } => std::env::var(var).ok(),
            _ => None,
        }
    };
    config
        .placeholders
        .iter()
        // The user's own choice of model stays (it is no secret).
        .filter(|(name, _)| name != copilot::MODEL_VAR || std::env::var_os(name).is_none())
        .map(|(name, value)| {
            if name == copilot::GITHUB_TOKEN_VAR && value == copilot::GITHUB_TOKEN_PLACEHOLDER {
                let token = held().unwrap_or_default();
                (name.clone(), copilot::placeholder_for(&token).to_owned())
            } else {
                (name.clone(), value.clone())
            }
        })
        .collect()
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
        keys: egressd_config::awf::apiproxy::Provider::ALL
            .into_iter()
            .map(egressd_config::awf::apiproxy::Provider::key_var)
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

/// The host (port dropped) of `GITHUB_SERVER_URL`, unless it is github.com: `GH_HOST` for
/// `gh` and the Copilot CLI on a GHE.com tenant or a GHES server (as AWF sets it), which
/// otherwise ask api.github.com.
pub fn gh_host(github: Option<&egressd_config::github::GitHubEnv>) -> Option<String> {
    let url = github?.server_url.as_deref()?.trim();
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url);
    let host = rest
        .split('/')
        .next()?
        .split(':')
        .next()?
        .to_ascii_lowercase();
    (!host.is_empty() && host != "github.com").then_some(host)
}

#[cfg(test)]
mod tests {
    use super::{is_scrubbed, looks_secret};

    #[test]
    fn secret_looking_names_and_values_are_found() {
        for name in [
            "NPM_TOKEN",
            "NODE_AUTH_TOKEN",
            "CARGO_REGISTRY_TOKEN",
            "HF_TOKEN",
            "CLAUDE_CODE_OAUTH_TOKEN",
            "AWS_BEARER_TOKEN_BEDROCK",
            "ARM_CLIENT_SECRET",
            "AZURE_STORAGE_CONNECTION_STRING",
            "GH_AW_GITHUB_TOKEN",
            "GITHUB_MCP_SERVER_TOKEN",
            "MY_SERVICE_API_KEY",
            "DB_PASSWORD",
            "PGPASSWD",
            "STORAGE_SAS_URL",
            "DEPLOY_PAT",
            "gcp_credentials",
            "SIGNING_KEY",
            "GH_PAT",
            "BASIC_AUTH",
        ] {
            assert_eq!(looks_secret(name, b"x"), Some("name"), "{name}");
        }
        for value in [
            "ghp_0123456789abcdefABCDEF0123456789abcd",
            "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
            "glpat-0123456789abcdefghij",
            "xoxb-1234567890-1234567890123-abcdefghijklmnop",
            "sk-ant-api03-abcdefghijklmnopqrstuvwxyz",
            "AKIAIOSFODNN7EXAMPLE",
            "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyZXBvIn0.c2lnbmF0dXJlLWJ5dGVz",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----",
            "https://x-access-token:ghs_0123456789abcdefABCDEF0123@github.com/o/r",
            "key=AKIAIOSFODNN7EXAMPLE",
        ] {
            assert_eq!(
                looks_secret("SOME_SETTING", value.as_bytes()),
                Some("value"),
                "{value}"
            );
        }
        for (name, value) in [
            ("PATH", "/usr/bin:/bin"),
            ("HOME", "/home/runner"),
            ("GITHUB_REPOSITORY", "octo/repo"),
            ("TOKENIZERS_PARALLELISM", "false"),
            ("SSH_AUTH_SOCK", "/tmp/ssh-x/agent.1"),
            ("KEYMAP", "us"),
            ("GITHUB_SHA", "0123456789abcdef0123456789abcdef01234567"),
            ("LANG", "C.UTF-8"),
            ("RUNNER_TEMP", "/home/runner/work/_temp"),
            ("MAX_THINKING_TOKENS", "1024"),
            ("CLAUDE_CODE_MAX_OUTPUT_TOKENS", "32000"),
            ("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1"),
            ("KAFKA_SASL_MECHANISM", "PLAIN"),
            ("GITHUB_TOKEN_PERMISSIONS", "true"),
            ("PATH_PREFIX", "/opt"),
        ] {
            assert_eq!(looks_secret(name, value.as_bytes()), None, "{name}");
        }
    }

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
