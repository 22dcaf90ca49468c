//! AWF's api-proxy in `egressd awf` (reference/awf.md §5): which providers have a key in the
//! daemon's environment, the credentials the broker reads them through, the routes the proxy
//! serves at `172.30.0.30:10000-10004`, and the placeholders the command sees instead of the
//! keys (§5.3). The real keys stay in the daemon.

use egressd_config::apiproxy::{ApiProxy, IP, Provider, Route};
use egressd_config::copilot::{CopilotMode, CopilotSource};
use egressd_config::github::{Deployment, GitHubEnv};
use egressd_config::intercept::RunVars;
use egressd_config::{Config, Credential, CredentialSource};

use crate::env::ApiProxyEnv;

/// The credential names egressd gives each provider's key (and the Copilot exchange).
const COPILOT_GITHUB: &str = "awf-copilot-github-token";
/// AWF's Copilot placeholder: `ghu_` and 36 `a`s.
fn copilot_placeholder() -> String {
    format!("ghu_{}", "a".repeat(36))
}

/// Sets `config.api_proxy` and adds one credential per provider key found in `env`; returns
/// the variables the command gets (base URLs and placeholders) for the configured providers.
pub fn configure(
    config: &mut Config,
    env: &ApiProxyEnv,
    github: Option<&GitHubEnv>,
    run: &RunVars,
) -> Vec<(String, String)> {
    let deployment = github.and_then(|g| Deployment::classify(g).ok());
    let mut routes = Vec::new();
    let mut vars: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| vars.push((k.to_owned(), v.to_owned()));
    for provider in Provider::ALL {
        let has_key = env.keys.contains(&provider.key_var());
        let upstream = match provider {
            Provider::Copilot => env
                .copilot_target
                .as_deref()
                .map(target_host)
                .or_else(|| deployment.as_ref().map(Deployment::copilot_api_host))
                .unwrap_or_else(|| provider.default_upstream().to_owned()),
            _ => provider.default_upstream().to_owned(),
        };
        let credential = has_key.then(|| format!("awf-{}", provider.name()));
        if let Some(name) = &credential {
            if provider == Provider::Copilot {
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
            } else {
                config
                    .credentials
                    .push(env_credential(name, provider.key_var()));
            }
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
                    set("COPILOT_GITHUB_TOKEN", &placeholder);
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
        routes.push(Route {
            provider,
            upstream,
            credential,
        });
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
    });
    vars
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

/// The host of `COPILOT_API_TARGET` (`api.x.com`, `https://api.x.com/`).
fn target_host(target: &str) -> String {
    let t = target.trim();
    let t = t
        .strip_prefix("https://")
        .or_else(|| t.strip_prefix("http://"))
        .unwrap_or(t);
    t.split('/').next().unwrap_or(t).to_ascii_lowercase()
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
            copilot_target: None,
            integration_id: None,
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
        let vars = configure(&mut config, &env, Some(&github), &run);
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
            keys: vec![],
            copilot_target: Some("https://api.business.githubcopilot.com/".into()),
            integration_id: Some("x".into()),
        };
        let vars = configure(&mut config, &env, None, &RunVars::default());
        assert!(vars.is_empty());
        let api = config.api_proxy.unwrap();
        assert_eq!(
            api.route(10002).unwrap().upstream,
            "api.business.githubcopilot.com"
        );
        assert_eq!(api.integration_id, "x");
        assert!(config.credentials.is_empty());
    }
}
