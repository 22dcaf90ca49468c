use std::path::Path;

use super::*;
use crate::github::GitHubEnv;
use crate::intercept::RunVars;
use crate::{Config, ConfigBuilder};

const FIVE_LINES: &str = r#"
[[credential]]
name = "gh"
source = "env"
var = "COPILOT_GITHUB_TOKEN"

[copilot]
github_token = "gh"
"#;

fn env(server: &str, api: &str) -> GitHubEnv {
    GitHubEnv {
        server_url: Some(server.to_owned()),
        api_url: Some(api.to_owned()),
        force_ghes: false,
    }
}

fn build(toml: &str, github: Option<&GitHubEnv>, byok: Option<ByokEnv>) -> Config {
    try_build(toml, github, byok).unwrap()
}

fn try_build(
    toml: &str,
    github: Option<&GitHubEnv>,
    byok: Option<ByokEnv>,
) -> Result<Config, crate::Error> {
    let mut b = ConfigBuilder::new();
    if let Some(github) = github {
        b.github(github, true)?;
    }
    b.github_run(RunVars {
        run_id: Some("4242".into()),
        run_attempt: Some("3".into()),
    });
    if let Some(byok) = byok {
        b.copilot_byok(byok);
    }
    b.toml_str(toml, Path::new("egressd.toml"))?;
    b.build()
}

fn copilot_source(config: &Config) -> &CopilotSource {
    config
        .credentials
        .iter()
        .find_map(|c| match &c.source {
            CredentialSource::Copilot(s) if c.name == CREDENTIAL => Some(s),
            _ => None,
        })
        .expect("a copilot credential")
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn github_com_intercepts_every_plan_host_and_exchanges_at_api_github_com() {
    let config = build(FIVE_LINES, Some(&GitHubEnv::default()), None);
    let source = copilot_source(&config);
    assert_eq!(source.github_token, "gh");
    assert_eq!(source.mode, CopilotMode::Auto);
    assert_eq!(source.api_url.as_deref(), Some("https://api.github.com"));
    assert_eq!(
        config.intercepts.host_patterns(),
        ["api.github.com", "githubcopilot.com"]
    );
    for host in [
        "api.githubcopilot.com",
        "api.individual.githubcopilot.com",
        "api.business.githubcopilot.com",
        "api.enterprise.githubcopilot.com",
    ] {
        assert_eq!(config.intercepts.for_host(host).len(), 1, "{host}");
    }
    let rule = copilot_rule(&config);
    assert_eq!(rule.credential.as_deref(), Some(CREDENTIAL));
    assert!(rule.wants_scheme());
    assert_eq!(
        header(&rule.set_headers, "copilot-integration-id"),
        Some(DEFAULT_INTEGRATION_ID)
    );
    assert_eq!(
        header(&rule.default_headers, "x-interaction-id"),
        Some("4242-3")
    );
    assert_eq!(header(&rule.default_headers, "x-initiator"), Some("agent"));
    // The Copilot CLI's calls to the REST API get the GitHub token there, and only there.
    let api = config.intercepts.for_host("api.github.com");
    assert_eq!(api.len(), API_PATHS.len());
    assert!(api.iter().all(|r| r.credential.as_deref() == Some("gh")));
    let covered = |method: &str, path: &str| api.iter().any(|r| r.applies_to(method, path));
    assert!(covered("GET", "/copilot_internal/user"));
    assert!(covered("GET", "/copilot/mcp_registry"));
    assert!(!covered("POST", "/copilot_internal/user"));
    assert!(!covered("GET", "/user"));
    assert!(!covered("GET", "/repos/github/copilot-cli/releases"));
    // The exchange's answer is a live Copilot token: never with the daemon's GitHub token.
    assert!(!covered("GET", "/copilot_internal/v2/token"));
    assert_eq!(
        config.placeholders,
        [(
            GITHUB_TOKEN_VAR.to_owned(),
            GITHUB_TOKEN_PLACEHOLDER.to_owned()
        )]
    );
}

/// The rule injecting the `copilot` credential (not the REST API's).
fn copilot_rule(config: &Config) -> &crate::InterceptRule {
    config
        .intercepts
        .rules()
        .iter()
        .find(|r| r.credential.as_deref() == Some(CREDENTIAL))
        .expect("a rule for the Copilot API")
}

#[test]
fn a_ghe_com_tenant_exchanges_at_its_own_api_never_api_github_com() {
    // The user reports: the exchange went to api.github.com instead of the tenant.
    let tenant = env("https://acme.ghe.com", "https://api.acme.ghe.com");
    let config = build(FIVE_LINES, Some(&tenant), None);
    assert_eq!(
        copilot_source(&config).api_url.as_deref(),
        Some("https://api.acme.ghe.com")
    );
    assert_eq!(
        config.intercepts.host_patterns(),
        ["api.acme.ghe.com", "copilot-api.acme.ghe.com"]
    );
    assert!(
        config
            .intercepts
            .for_host("copilot-api.other.ghe.com")
            .is_empty()
    );
    let rule = copilot_rule(&config);
    // X-Interaction-Id and x-initiator are for *.githubcopilot.com only.
    assert!(
        rule.default_headers.is_empty(),
        "{:?}",
        rule.default_headers
    );
    // Derivation off (--no-github): the API base still follows GITHUB_API_URL.
    let mut b = ConfigBuilder::new();
    b.github_deployment(&tenant);
    b.toml_str(FIVE_LINES, Path::new("egressd.toml")).unwrap();
    let config = b.build().unwrap();
    assert_eq!(
        copilot_source(&config).api_url.as_deref(),
        Some("https://api.acme.ghe.com")
    );
}

#[test]
fn ghes_exchanges_at_its_path_style_api_and_uses_the_enterprise_copilot_host() {
    let server = env(
        "https://git.corp.example",
        "https://git.corp.example/api/v3/",
    );
    let toml = format!(
        "{FIVE_LINES}mode = \"exchange\"\nscheme = \"token\"\nintegration_id = \"my-app\"\n"
    );
    let config = build(&toml, Some(&server), None);
    let source = copilot_source(&config);
    assert_eq!(
        source.api_url.as_deref(),
        Some("https://git.corp.example/api/v3")
    );
    assert_eq!(source.mode, CopilotMode::Exchange);
    assert_eq!(source.scheme, Some(AuthScheme::Token));
    // The server (also the git host) is not intercepted: the CLI never calls it.
    assert_eq!(
        config.intercepts.host_patterns(),
        ["api.enterprise.githubcopilot.com"]
    );
    // The CLI cannot use a GHES server for Copilot: it is pointed at the enterprise Copilot
    // API as a provider, with a placeholder key and a model.
    let var = |name: &str| {
        config
            .placeholders
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(var("COPILOT_OFFLINE"), Some("true"));
    assert_eq!(
        var("COPILOT_PROVIDER_BASE_URL"),
        Some("https://api.enterprise.githubcopilot.com")
    );
    assert_eq!(var(BYOK_KEY_VAR), Some(PLACEHOLDER));
    assert_eq!(var(MODEL_VAR), Some(GHES_DEFAULT_MODEL));
    let rule = copilot_rule(&config);
    assert_eq!(
        header(&rule.set_headers, "copilot-integration-id"),
        Some("my-app")
    );
}

#[test]
fn a_copilot_credential_gets_the_deployments_api_unless_it_names_one() {
    let toml = r#"
[[credential]]
name = "gh"
source = "file"
path = "/etc/egressd/gh"

[[credential]]
name = "cp"
source = "copilot"
github_token = "gh"
mode = "direct"

[[credential]]
name = "cp-test"
source = "copilot"
github_token = "gh"
api_url = "https://127.0.0.1:8443/"
"#;
    let config = build(
        toml,
        Some(&env("https://acme.ghe.com", "https://api.acme.ghe.com")),
        None,
    );
    let api = |name: &str| {
        config
            .credentials
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| match &c.source {
                CredentialSource::Copilot(s) => s.api_url.clone(),
                _ => None,
            })
    };
    assert_eq!(api("cp").as_deref(), Some("https://api.acme.ghe.com"));
    assert_eq!(api("cp-test").as_deref(), Some("https://127.0.0.1:8443"));
}

#[test]
fn mistakes_are_reported_at_their_place() {
    let cases = [
        (
            "[copilot]\ngithub_token = \"missing\"\n",
            "names 'missing', which is not a credential",
        ),
        (
            "[copilot]\nmode = \"sometimes\"\ngithub_token = \"x\"\n",
            "mode \"sometimes\"",
        ),
        (
            "[copilot]\nscheme = \"basic\"\ngithub_token = \"x\"\n",
            "scheme \"basic\"",
        ),
        (
            "[copilot]\n",
            "name the credential holding the GitHub token",
        ),
        ("[copilot]\ngithub = \"x\"\n", "unknown field"),
        (
            "[[credential]]\nname = \"copilot\"\nsource = \"env\"\nvar = \"X\"\n[copilot]\ngithub_token = \"copilot\"\n",
            "rename yours",
        ),
        (
            "[[credential]]\nname = \"a\"\nsource = \"env\"\nvar = \"X\"\n[copilot]\nbyok_credential = \"a\"\n",
            "needs COPILOT_PROVIDER_BASE_URL",
        ),
        (
            "[[credential]]\nname = \"c\"\nsource = \"copilot\"\nvar = \"X\"\ngithub_token = \"c\"\n",
            "`var` does not apply to source 'copilot'",
        ),
    ];
    for (toml, expected) in cases {
        let err = try_build(toml, None, None).unwrap_err().to_string();
        assert!(err.contains(expected), "{toml}\n=> {err}");
    }
}

fn byok(url: &str, kind: Option<&str>, var: Option<&str>) -> ByokEnv {
    ByokEnv {
        base_url: url.to_owned(),
        provider_type: kind.map(str::to_owned),
        key_var: var.map(str::to_owned),
    }
}

#[test]
fn byok_maps_the_provider_type_onto_the_header_and_leaves_a_placeholder() {
    let cases = [
        (None, BYOK_KEY_VAR, "authorization", "Bearer {token}"),
        (Some("azure"), BYOK_KEY_VAR, "api-key", "{token}"),
        (
            Some("azure"),
            BYOK_BEARER_VAR,
            "authorization",
            "Bearer {token}",
        ),
        (Some("anthropic"), BYOK_KEY_VAR, "x-api-key", "{token}"),
        (
            Some("anthropic"),
            BYOK_BEARER_VAR,
            "authorization",
            "Bearer {token}",
        ),
    ];
    for (kind, var, header_name, format) in cases {
        let config = build(
            "",
            None,
            Some(byok(
                "https://res.openai.azure.com/openai/deployments/gpt/",
                kind,
                Some(var),
            )),
        );
        let rule = &config.intercepts.rules()[0];
        assert_eq!(rule.host.text, "res.openai.azure.com");
        assert_eq!(
            (rule.header.as_str(), rule.format.as_str()),
            (header_name, format),
            "{kind:?} {var}"
        );
        // Azure: the whole resource's OpenAI API (the CLI drops the deployment for v1 routes).
        let prefix = if kind == Some("azure") {
            "/openai/"
        } else {
            "/openai/deployments/gpt"
        };
        assert_eq!(rule.path_prefix.as_deref(), Some(prefix), "{kind:?}");
        assert_eq!(rule.credential.as_deref(), Some(BYOK_CREDENTIAL));
        let credential = config
            .credentials
            .iter()
            .find(|c| c.name == BYOK_CREDENTIAL)
            .unwrap();
        assert_eq!(
            credential.source,
            CredentialSource::Env {
                var: var.to_owned()
            }
        );
        assert_eq!(
            config.placeholders,
            [(var.to_owned(), PLACEHOLDER.to_owned())]
        );
        let anthropic_key = kind == Some("anthropic") && var == BYOK_KEY_VAR;
        assert_eq!(
            header(&rule.default_headers, "anthropic-version").is_some(),
            anthropic_key
        );
    }
}

#[test]
fn byok_can_use_an_entra_credential_instead_of_a_key() {
    let toml = r#"
[[credential]]
name = "github"
source = "github-oidc"
audience = "api://AzureADTokenExchange"

[[credential]]
name = "azure-openai"
source = "entra"
tenant = "00000000-0000-0000-0000-0000000000aa"
client_id = "11111111-2222-3333-4444-555555555555"
scope = "https://cognitiveservices.azure.com/.default"
assertion = "github"

[copilot]
byok_credential = "azure-openai"
"#;
    let config = build(
        toml,
        None,
        Some(byok(
            "https://res.openai.azure.com/openai",
            Some("azure"),
            None,
        )),
    );
    assert_eq!(
        config.intercepts.rules().len(),
        1,
        "BYOK only, no Copilot rule"
    );
    let rule = &config.intercepts.rules()[0];
    assert_eq!(rule.credential.as_deref(), Some("azure-openai"));
    assert_eq!(rule.format, "Bearer {token}");
    assert!(config.credentials.iter().all(|c| c.name != BYOK_CREDENTIAL));
    assert_eq!(
        config.placeholders,
        [(BYOK_BEARER_VAR.to_owned(), PLACEHOLDER.to_owned())]
    );
}

#[test]
fn byok_without_a_key_injects_nothing_and_plain_http_with_a_key_is_refused() {
    let config = build("", None, Some(byok("http://localhost:11434", None, None)));
    assert!(config.intercepts.is_empty());
    let err = try_build(
        "",
        None,
        Some(byok("http://10.0.0.5:8080/v1", None, Some(BYOK_KEY_VAR))),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("not https://"), "{err}");
    let err = try_build(
        "",
        None,
        Some(byok(
            "https://x.example",
            Some("gemini"),
            Some(BYOK_KEY_VAR),
        )),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("openai, azure and anthropic"), "{err}");
}
