use std::path::Path;

use super::check::{check_role_arn, check_session_name};
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

/// The `toml` block of README.md's "Every credential source", which lists every key.
fn documented_example() -> String {
    let doc = include_str!("../../../README.md");
    let section = doc.find("### Every credential source").unwrap();
    let start = section + doc[section..].find("```toml\n").unwrap() + "```toml\n".len();
    let end = start + doc[start..].find("```\n").unwrap();
    doc[start..end].to_owned()
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
            "file-key",
            "github-oidc-gcp",
            "gcp",
            "github-oidc-aws",
            "bedrock",
            "github-oidc-anthropic",
            "claude",
            "copilot-per-user",
            "runner-svid",
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
                 github-oidc, entra, entra-agent, oauth2-token-exchange, aws-web-identity, \
                 anthropic-wif, copilot, env, file, per-actor, spiffe-x509"
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

#[test]
fn documented_exchange_examples() {
    let config = toml(&documented_example()).unwrap();
    let CredentialSource::TokenExchange(gcp) = &config.credentials[6].source else {
        panic!("{:?}", config.credentials[6]);
    };
    assert_eq!(
        *gcp,
        TokenExchangeSource {
            token_url: GOOGLE_STS_URL.into(),
            audience: "//iam.googleapis.com/projects/123456789012/locations/global/\
                       workloadIdentityPools/gh-pool/providers/gh-provider"
                .into(),
            scope: GOOGLE_CLOUD_PLATFORM_SCOPE.into(),
            subject_token: "github-oidc-gcp".into(),
            subject_token_type: "urn:ietf:params:oauth:token-type:jwt".into(),
            requested_token_type: "urn:ietf:params:oauth:token-type:access_token".into(),
            impersonation: Some(Impersonation {
                service_account: "sa@my-project.iam.gserviceaccount.com".into(),
                iam_credentials_url: "https://iamcredentials.googleapis.com".into(),
                lifetime: Duration::from_hours(1),
            }),
        }
    );
    assert_eq!(config.credentials[6].source_name(), "oauth2-token-exchange");
    assert_eq!(config.credentials[6].assertion(), Some("github-oidc-gcp"));
    let CredentialSource::AwsWebIdentity(aws) = &config.credentials[8].source else {
        panic!("{:?}", config.credentials[8]);
    };
    assert_eq!(
        *aws,
        AwsWebIdentitySource {
            endpoint: "https://sts.us-east-1.amazonaws.com/".into(),
            role_arn: "arn:aws:iam::123456789012:role/gha-bedrock".into(),
            role_session_name: "egressd-bedrock".into(),
            duration: Duration::from_hours(1),
            web_identity_token: "github-oidc-aws".into(),
        }
    );
    assert_eq!(config.credentials[8].source_name(), "aws-web-identity");
    assert_eq!(config.credentials[8].assertion(), Some("github-oidc-aws"));
}

#[test]
fn exchange_defaults_and_test_endpoints() {
    let config = toml(
        r#"
[[credential]]
name = "gh"
source = "github-oidc"

[[credential]]
name = "g"
source = "oauth2-token-exchange"
audience = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/x"
subject_token = "gh"
token_url = "https://127.0.0.1:8443/v1/token"
scope = "openid"
subject_token_type = "urn:ietf:params:oauth:token-type:id_token"

[[credential]]
name = "a-very-long-credential-name-that-goes-on-and-on-for-sixty-chr"
source = "aws-web-identity"
role_arn = "arn:aws-us-gov:iam::123456789012:role/path/to/role"
web_identity_token = "gh"
endpoint = "http://127.0.0.1:8080/"
duration = "15m"
"#,
    )
    .unwrap();
    let CredentialSource::TokenExchange(g) = &config.credentials[1].source else {
        panic!()
    };
    assert_eq!(g.token_url, "https://127.0.0.1:8443/v1/token");
    assert_eq!(g.scope, "openid");
    assert_eq!(
        g.subject_token_type,
        "urn:ietf:params:oauth:token-type:id_token"
    );
    assert_eq!(g.requested_token_type, TOKEN_TYPE_ACCESS_TOKEN);
    assert_eq!(g.impersonation, None);
    let CredentialSource::AwsWebIdentity(a) = &config.credentials[2].source else {
        panic!()
    };
    assert_eq!(a.endpoint, "http://127.0.0.1:8080/");
    assert_eq!(a.duration, Duration::from_mins(15));
    assert_eq!(a.role_session_name.len(), 64);
    assert!(a.role_session_name.starts_with("egressd-a-very-long"));
    check_session_name(&a.role_session_name).unwrap();
}

#[test]
fn exchange_errors_point_at_the_value() {
    let lines = messages(
        r#"
[[credential]]
name = "gh"
source = "github-oidc"

[[credential]]
name = "g"
source = "oauth2-token-exchange"
subject_token = "gh"
lifetime = "1h"
token_url = "http://sts.googleapis.com/v1/token"
requested_token_type = "access_token"

[[credential]]
name = "g2"
source = "oauth2-token-exchange"
audience = "//iam.googleapis.com/x"
subject_token = "gh"
service_account = "projects/-/serviceAccounts/sa"
lifetime = "1500ms"

[[credential]]
name = "aws"
source = "aws-web-identity"
role_arn = "arn:aws:iam::1234:user/me"
role_session_name = "my session"
duration = "5m"
web_identity_token = "missing"
audience = "sts.amazonaws.com"
"#,
    );
    let p = "/etc/egressd/egressd.toml";
    assert_eq!(
        lines,
        [
            format!("{p}:7:8: credential 'g': source 'oauth2-token-exchange' needs `audience`"),
            format!(
                "{p}:10:12: credential 'g': `lifetime` applies only with `service_account`: \
                 remove it"
            ),
            format!(
                "{p}:11:13: credential 'g': `token_url`: use https:// (http:// only for loopback \
                 test servers)"
            ),
            format!(
                "{p}:12:24: credential 'g': `requested_token_type`: write a token type URI, such \
                 as urn:ietf:params:oauth:token-type:jwt"
            ),
            format!(
                "{p}:19:19: credential 'g2': `service_account`: write the service account's \
                 email, such as sa@project.iam.gserviceaccount.com"
            ),
            format!(
                "{p}:20:12: credential 'g2': `lifetime`: write whole seconds, such as '3600s' or \
                 '1h'"
            ),
            format!(
                "{p}:25:12: credential 'aws': `role_arn`: write the role's ARN, such as \
                 arn:aws:iam::123456789012:role/gha-bedrock"
            ),
            format!(
                "{p}:26:21: credential 'aws': `role_session_name`: a role session name is 2 to 64 \
                 letters, digits or _+=,.@-"
            ),
            format!("{p}:27:12: credential 'aws': `duration`: it must be between 900s and 43200s"),
            format!(
                "{p}:29:12: credential 'aws': `audience` does not apply to source \
                 'aws-web-identity': remove it"
            ),
        ]
    );
    // References are checked once every table parsed, with the key that names them.
    let lines = messages(
        "[[credential]]\nname = \"aws\"\nsource = \"aws-web-identity\"\n\
         role_arn = \"arn:aws:iam::123456789012:role/r\"\nweb_identity_token = \"gh\"\n",
    );
    assert_eq!(
        lines,
        [
            "/etc/egressd/egressd.toml:2:8: credential 'aws': `web_identity_token` names 'gh', \
             which is not a credential: define a [[credential]] with that name (usually source = \
             \"github-oidc\")"
        ]
    );
}

#[test]
fn aws_names_and_arns() {
    for ok in [
        "arn:aws:iam::123456789012:role/gha-bedrock",
        "arn:aws-cn:iam::123456789012:role/a/b/c",
    ] {
        check_role_arn(ok).unwrap();
    }
    for bad in [
        "arn:aws:iam::123456789012:role/",
        "arn:aws:sts::123456789012:role/x",
        "arn:aws:iam::12345678901x:role/x",
        "role/x",
        "arn:aws:iam::123456789012:role/a b",
    ] {
        assert!(check_role_arn(bad).is_err(), "{bad}");
    }
    for ok in ["ab", "egressd-run_1+x=y,z.w@v", &"a".repeat(64)] {
        check_session_name(ok).unwrap();
    }
    for bad in ["a", "has space", "slash/no", &"a".repeat(65)] {
        assert!(check_session_name(bad).is_err(), "{bad}");
    }
}

#[test]
fn spiffe_x509_names_its_socket_and_svid() {
    use crate::spiffe::{SpiffeId, WorkloadEndpoint};
    let config = toml(
        r#"
[[credential]]
name = "svid"
source = "spiffe-x509"
socket = "unix:///run/spire/agent.sock"
spiffe_id = "spiffe://aim.example.com/github-runner"

[[credential]]
name = "default-svid"
source = "spiffe-x509"
"#,
    )
    .unwrap();
    assert_eq!(
        config.credentials[0].source,
        CredentialSource::SpiffeX509(SpiffeX509Source {
            socket: Some(WorkloadEndpoint::Unix("/run/spire/agent.sock".into())),
            spiffe_id: Some(SpiffeId::parse("spiffe://aim.example.com/github-runner").unwrap()),
        })
    );
    assert!(config.credentials[0].is_x509_identity());
    assert_eq!(config.credentials[0].source_name(), "spiffe-x509");
    assert_eq!(
        config.credentials[1].source,
        CredentialSource::SpiffeX509(SpiffeX509Source {
            socket: None,
            spiffe_id: None,
        })
    );
}

#[test]
fn spiffe_x509_errors_point_at_the_value() {
    let lines = messages(
        r#"
[[credential]]
name = "svid"
source = "spiffe-x509"
socket = "tcp://127.0.0.1:8081"
spiffe_id = "spiffe://Aim.example.com/x"
refresh_margin = "5m"
var = "X"

[[credential]]
name = "ok-svid"
source = "spiffe-x509"

[[credential]]
name = "e"
source = "entra"
tenant = "t"
client_id = "c"
scope = "s"
assertion = "ok-svid"
"#,
    );
    let p = "/etc/egressd/egressd.toml";
    assert_eq!(
        lines,
        [
            format!(
                "{p}:5:10: credential 'svid': `socket`: 'tcp://127.0.0.1:8081': only unix: \
                 Workload API endpoints are supported (the agent identifies its callers \
                 through the Unix socket)"
            ),
            format!(
                "{p}:6:13: credential 'svid': `spiffe_id`: 'spiffe://Aim.example.com/x': a \
                 trust domain is lowercase"
            ),
            format!(
                "{p}:7:18: credential 'svid': `refresh_margin` does not apply to source \
                 'spiffe-x509': the Workload API pushes rotated SVIDs itself; remove it"
            ),
            format!(
                "{p}:8:7: credential 'svid': `var` does not apply to source 'spiffe-x509': \
                 remove it"
            ),
            format!(
                "{p}:15:8: credential 'e': `assertion` names 'ok-svid', an X.509-SVID \
                 (spiffe-x509) with no token to present: name a token credential (usually \
                 source = \"github-oidc\")"
            ),
        ]
    );
}

#[test]
fn anthropic_wif_is_checked_key_by_key() {
    let base = "[[credential]]\nname = \"oidc\"\nsource = \"github-oidc\"\naudience = \"https://api.anthropic.com\"\n\n\
                [[credential]]\nname = \"claude\"\nsource = \"anthropic-wif\"\nassertion = \"oidc\"\n";
    let config = toml(&format!(
        "{base}federation_rule_id = \"fdrl_01Ab\"\norganization_id = \"00000000-0000-0000-0000-00000000000a\"\n\
         service_account_id = \"svac_01Ab\"\nworkspace_id = \"default\"\n"
    ))
    .unwrap();
    let CredentialSource::AnthropicWif(wif) = &config.credentials[1].source else {
        panic!("{:?}", config.credentials[1]);
    };
    assert_eq!(wif.token_url, ANTHROPIC_TOKEN_URL);
    assert_eq!(wif.workspace_id.as_deref(), Some("default"));
    assert_eq!(config.credentials[1].assertion(), Some("oidc"));
    assert_eq!(config.credentials[1].source_name(), "anthropic-wif");

    let errors = messages(&format!(
        "{base}federation_rule_id = \"rule-1\"\norganization_id = \"not-a-uuid\"\n\
         workspace_id = \"ws_1\"\ntenant = \"x\"\n"
    ));
    let all = errors.join("\n");
    assert_eq!(errors.len(), 5, "{all}");
    assert!(all.contains("egressd.toml:10:"), "{all}");
    assert!(
        all.contains(
            "`federation_rule_id`: write the tagged ID from the Claude Console, such as fdrl_01AbCd"
        ),
        "{all}"
    );
    assert!(
        all.contains("`organization_id`: write the organization's UUID"),
        "{all}"
    );
    assert!(
        all.contains(
            "`workspace_id`: write the tagged ID from the Claude Console, such as wrkspc_01AbCd"
        ),
        "{all}"
    );
    assert!(
        all.contains("source 'anthropic-wif' needs `service_account_id`"),
        "{all}"
    );
    assert!(
        all.contains("`tenant` does not apply to source 'anthropic-wif'"),
        "{all}"
    );
}
