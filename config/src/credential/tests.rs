use std::path::Path;

use super::*;
use crate::{Config, ConfigBuilder};

fn toml(text: &str) -> Result<Config, Error> {
    let mut builder = ConfigBuilder::new();
    let _ = builder.toml_str(text, Path::new("/etc/egressd/egressd.toml"));
    builder.build()
}

fn messages(text: &str) -> Vec<String> {
    let err = toml(text).unwrap_err();
    err.errors().iter().map(ToString::to_string).collect()
}

/// The `toml` example of this module's documentation.
fn documented_example() -> String {
    let doc = include_str!("../credential.rs");
    let start = doc.find("//! ```toml\n").unwrap() + "//! ```toml\n".len();
    let end = start + doc[start..].find("//! ```\n").unwrap();
    doc[start..end]
        .lines()
        .map(|l| l.trim_start_matches("//!").trim_start_matches(' '))
        .fold(String::new(), |text, line| text + line + "\n")
}

#[test]
fn documented_example_builds() {
    let config = toml(&documented_example()).unwrap();
    let names: Vec<_> = config.credentials.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "github-oidc-azure",
            "azure-openai",
            "agent",
            "static-key",
            "file-key"
        ]
    );
    assert_eq!(
        config.credentials[0].source,
        CredentialSource::GithubOidc {
            audience: Some("api://AzureADTokenExchange".into())
        }
    );
    let CredentialSource::Entra(entra) = &config.credentials[1].source else {
        panic!("{:?}", config.credentials[1]);
    };
    assert_eq!(entra.authority, "https://login.microsoftonline.com");
    assert_eq!(entra.assertion, "github-oidc-azure");
    assert_eq!(
        config.credentials[1].refresh_margin,
        Some(Duration::from_mins(5))
    );
    let CredentialSource::EntraAgent(agent) = &config.credentials[2].source else {
        panic!("{:?}", config.credentials[2]);
    };
    assert_eq!(agent.exchange_scope, "api://AzureADTokenExchange/.default");
    assert_eq!(
        agent.agent_client_id,
        "33333333-0000-0000-0000-000000000000"
    );
    assert_eq!(
        config.credentials[3].source,
        CredentialSource::Env {
            var: "AZURE_OPENAI_KEY".into()
        }
    );
    assert_eq!(config.credentials[3].source_name(), "env");
}

#[test]
fn relative_paths_and_test_authorities() {
    let config = toml(
        r#"
[[credential]]
name = "k"
source = "file"
path = "secrets/key"

[[credential]]
name = "gh"
source = "github-oidc"

[[credential]]
name = "e"
source = "entra"
tenant = "contoso.onmicrosoft.com"
client_id = "c"
scope = "api://x/.default"
assertion = "gh"
authority = "http://127.0.0.1:8443/"
"#,
    )
    .unwrap();
    assert_eq!(
        config.credentials[0].source,
        CredentialSource::File {
            path: "/etc/egressd/secrets/key".into()
        }
    );
    assert_eq!(
        config.credentials[1].source,
        CredentialSource::GithubOidc { audience: None }
    );
    let CredentialSource::Entra(entra) = &config.credentials[2].source else {
        panic!()
    };
    assert_eq!(entra.authority, "http://127.0.0.1:8443");
}

#[test]
fn field_errors_point_at_the_value() {
    let lines = messages(
        r#"
[[credential]]
name = "gh"
source = "github-oidc"
tenant = "t"

[[credential]]
name = "e"
source = "entra"
tenant = "common"
scope = "a b"
assertion = "gh"
authority = "http://login.example.com"
refresh_margin = "5 minutes"

[[credential]]
name = "bad name!"
source = "vault"
"#,
    );
    let p = "/etc/egressd/egressd.toml";
    assert_eq!(
        lines,
        [
            format!(
                "{p}:5:10: credential 'gh': `tenant` does not apply to source 'github-oidc': \
                 remove it"
            ),
            format!("{p}:8:8: credential 'e': source 'entra' needs `client_id`"),
            format!(
                "{p}:10:10: credential 'e': `tenant`: 'common' cannot issue client-credentials \
                 tokens: write the tenant ID"
            ),
            format!(
                "{p}:11:9: credential 'e': `scope`: it contains whitespace: give exactly one \
                 value"
            ),
            format!(
                "{p}:13:13: credential 'e': `authority`: use https:// (http:// only for \
                 loopback test servers)"
            ),
            format!(
                "{p}:14:18: credential 'e': `refresh_margin`: write a whole number and a unit \
                 (ms, s, m or h), such as '500ms', '10s' or '5m'"
            ),
            format!(
                "{p}:17:8: credential 'bad name!': a name is 1 to 64 letters, digits, '.', '_' \
                 or '-', starting with a letter or digit"
            ),
            format!(
                "{p}:18:10: credential 'bad name!': unknown source 'vault': use one of \
                 github-oidc, entra, entra-agent, env, file"
            ),
        ]
    );
}

#[test]
fn unknown_keys_and_missing_names_are_parser_errors() {
    let lines = messages("[[credential]]\nname = \"x\"\nsource = \"env\"\nvra = \"X\"\n");
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].starts_with("/etc/egressd/egressd.toml:4:1: unknown field `vra`"),
        "{lines:?}"
    );
    let lines = messages("[[credential]]\nsource = \"env\"\nvar = \"X\"\n");
    assert!(lines[0].contains("missing field `name`"), "{lines:?}");
}

#[test]
fn references_must_resolve_and_names_be_unique() {
    let lines = messages(
        r#"
[[credential]]
name = "e"
source = "entra"
tenant = "t"
client_id = "c"
scope = "s/.default"
assertion = "gh"

[[credential]]
name = "k"
source = "env"
var = "K"

[[credential]]
name = "k"
source = "env"
var = "K2"
"#,
    );
    let p = "/etc/egressd/egressd.toml";
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(
        lines[0],
        format!(
            "{p}:16:8: credential 'k': defined twice (first at {p}:11:8): give each credential its own name"
        )
    );
    assert!(
        lines[1].starts_with(&format!(
            "{p}:3:8: credential 'e': `assertion` names 'gh', which is not a credential"
        )),
        "{lines:?}"
    );
}

#[test]
fn assertion_loops_are_reported_once() {
    let entra = |name: &str, assertion: &str| {
        format!(
            "[[credential]]\nname = \"{name}\"\nsource = \"entra\"\ntenant = \"t\"\n\
             client_id = \"c\"\nscope = \"s\"\nassertion = \"{assertion}\"\n\n"
        )
    };
    let text = entra("a", "b") + &entra("b", "c") + &entra("c", "a") + &entra("d", "a");
    let lines = messages(&text);
    assert_eq!(
        lines,
        [
            "/etc/egressd/egressd.toml:2:8: credential 'a': its assertions loop back to it \
          (a -> b -> c -> a): end the chain with a github-oidc, env or file credential"
        ]
    );
    let lines = messages(&entra("self", "self"));
    assert!(lines[0].contains("(self -> self)"), "{lines:?}");
}

#[test]
fn references_resolve_across_files() {
    let mut builder = ConfigBuilder::new();
    builder
        .toml_str(
            "[[credential]]\nname = \"gh\"\nsource = \"github-oidc\"\n",
            Path::new("a.toml"),
        )
        .unwrap();
    builder
        .toml_str(
            "[[credential]]\nname = \"e\"\nsource = \"entra\"\ntenant = \"t\"\n\
             client_id = \"c\"\nscope = \"s\"\nassertion = \"gh\"\n",
            Path::new("b.toml"),
        )
        .unwrap();
    let config = builder.build().unwrap();
    assert_eq!(config.credentials.len(), 2);
    assert_eq!(config.credentials[1].assertion(), Some("gh"));
}
