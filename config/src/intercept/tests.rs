use super::*;

fn rule(host: &str, prefix: Option<&str>, methods: &[&str]) -> InterceptRule {
    InterceptRule {
        host: Arc::new(Entry::parse(host, List::Allow, Origin::Builtin("test")).unwrap()),
        credential: Some("c".into()),
        header: "authorization".into(),
        format: "Bearer {token}".into(),
        path_prefix: prefix.map(str::to_owned),
        methods: methods.iter().map(|m| (*m).to_owned()).collect(),
        strip: vec![],
        apply: Apply::Header,
        set_headers: vec![],
        default_headers: vec![],
        spiffe: None,
        tool_urls: crate::intercept::ToolUrls::default(),
    }
}

#[test]
fn hosts_match_with_awf_semantics() {
    let set = Intercepts::new(vec![
        rule("api.example.com", None, &[]),
        rule("*.openai.azure.com", Some("/openai/"), &["POST"]),
    ]);
    assert_eq!(set.for_host("api.example.com").len(), 1);
    assert_eq!(set.for_host("v2.api.example.com").len(), 1);
    assert_eq!(set.for_host("res.openai.azure.com").len(), 1);
    assert!(set.for_host("openai.azure.com").is_empty());
    assert!(set.for_host("example.com").is_empty());
    assert_eq!(
        set.host_patterns(),
        vec!["*.openai.azure.com", "api.example.com"]
    );
}

#[test]
fn path_and_method_narrow_injection() {
    let r = rule("x.test", Some("/openai/"), &["POST"]);
    assert!(r.applies_to("POST", "/openai/deployments/x/chat/completions"));
    assert!(!r.applies_to("GET", "/openai/models"));
    assert!(!r.applies_to("POST", "/other"));
    // A prefix without a trailing slash ends at a segment boundary.
    let r = rule("api.example.com", Some("/v1/files"), &[]);
    assert!(r.applies_to("GET", "/v1/files"));
    assert!(r.applies_to("GET", "/v1/files/abc"));
    assert!(!r.applies_to("GET", "/v1/filesX"));
    assert_eq!(r.header_value("t0k"), "Bearer t0k");
}

#[test]
fn schemes_follow_the_token_type_then_the_host() {
    assert_eq!(
        AuthScheme::for_github_token("github_pat_11AAA"),
        Some(AuthScheme::Bearer)
    );
    assert_eq!(
        AuthScheme::for_github_token("ghs_abc"),
        Some(AuthScheme::Bearer)
    );
    assert_eq!(AuthScheme::for_github_token("gho_abc"), None);
    assert_eq!(AuthScheme::for_github_token("ghu_abc"), None);
    for host in [
        "api.enterprise.githubcopilot.com",
        "api.business.githubcopilot.com",
        "copilot-api.acme.ghe.com",
        "COPILOT-API.acme.ghe.com.",
    ] {
        assert_eq!(AuthScheme::for_host(host), AuthScheme::Token, "{host}");
    }
    for host in [
        "api.githubcopilot.com",
        "api.individual.githubcopilot.com",
        "copilot-api.a.b.ghe.com",
        "res.openai.azure.com",
    ] {
        assert_eq!(AuthScheme::for_host(host), AuthScheme::Bearer, "{host}");
    }
    let mut r = rule("x.test", None, &[]);
    r.format = "{scheme} {token}".into();
    assert!(r.wants_scheme());
    assert_eq!(r.header_value_with("t", AuthScheme::Token), "token t");
    assert_eq!(
        r.header_value_with("{scheme}", AuthScheme::Bearer),
        "Bearer {scheme}"
    );
}

#[test]
fn header_templates_are_filled_or_dropped() {
    let mut r = rule("x.test", None, &[]);
    r.set_headers = vec![
        ("copilot-integration-id".into(), "agentic-workflows".into()),
        ("x-interaction-id".into(), "{run_id}-{run_attempt}".into()),
    ];
    let mut with = r.clone();
    with.fill_headers(&RunVars {
        run_id: Some("42".into()),
        run_attempt: None,
    });
    assert_eq!(with.set_headers[1].1, "42-1");
    r.fill_headers(&RunVars::default());
    assert_eq!(r.set_headers.len(), 1, "{:?}", r.set_headers);
}

fn build(text: &str) -> Result<crate::Config, crate::Error> {
    let mut builder = crate::ConfigBuilder::new();
    let _ = builder.toml_str(text, std::path::Path::new("/e.toml"));
    builder.build()
}

const SPIFFE_CREDENTIALS: &str = r#"
[[credential]]
name = "runner-svid"
source = "spiffe-x509"

[[credential]]
name = "key"
source = "env"
var = "K"
"#;

#[test]
fn spiffe_rules_present_an_svid_and_authorize_the_upstream() {
    use crate::spiffe::{PeerAuthorization, SpiffeId, TrustDomain};
    let config = build(&format!(
        r#"{SPIFFE_CREDENTIALS}
[[intercept]]
host = "budget-backend.internal"
credential = "key"
spiffe = "runner-svid"
upstream_spiffe_ids = ["spiffe://aim.example.com/budget-backend"]

[[intercept]]
host = "budget-backend.internal"
path_prefix = "/admin/"
spiffe = "runner-svid"
upstream_spiffe_ids = ["spiffe://aim.example.com/budget-backend"]

[[intercept]]
host = "ledger.internal"
spiffe = "runner-svid"
upstream_trust_domain = "spiffe://aim.example.com"
"#
    ))
    .unwrap();
    let rules = config.intercepts.rules();
    assert_eq!(rules[0].credential.as_deref(), Some("key"));
    assert_eq!(
        rules[0].spiffe,
        Some(SpiffeUpstream {
            svid: "runner-svid".into(),
            peer: PeerAuthorization::Ids(vec![
                SpiffeId::parse("spiffe://aim.example.com/budget-backend").unwrap()
            ]),
        })
    );
    assert_eq!(
        rules[2].spiffe.as_ref().map(|s| &s.peer),
        Some(&PeerAuthorization::TrustDomain(
            TrustDomain::parse("aim.example.com").unwrap()
        ))
    );
}

#[test]
fn spiffe_errors_name_the_fix() {
    let err = build(&format!(
        r#"{SPIFFE_CREDENTIALS}
[[intercept]]
host = "a.example"
credential = "runner-svid"

[[intercept]]
host = "b.example"
spiffe = "key"
upstream_trust_domain = "aim.example.com"

[[intercept]]
host = "c.example"
spiffe = "runner-svid"

[[intercept]]
host = "d.example"
spiffe = "runner-svid"
upstream_spiffe_ids = ["spiffe://aim.example.com/x"]
upstream_trust_domain = "aim.example.com"

[[intercept]]
host = "e.example"
upstream_spiffe_ids = ["spiffe://aim.example.com/x"]

[[intercept]]
host = "f.example"
spiffe = "runner-svid"
upstream_spiffe_ids = ["spiffe://aim.example.com/x/"]

[[intercept]]
host = "g.example"
spiffe = "nope"
upstream_trust_domain = "aim.example.com"
"#
    ))
    .unwrap_err();
    let lines: Vec<String> = err.errors().iter().map(ToString::to_string).collect();
    let expected = [
        "/e.toml:13:14: 'runner-svid' is an X.509-SVID, not a token: name it with `spiffe = \"runner-svid\"`",
        "/e.toml:17:10: `spiffe` names 'key', a env credential: name a spiffe-x509 credential",
        "/e.toml:22:10: `spiffe` needs `upstream_spiffe_ids` or `upstream_trust_domain`",
        "/e.toml:28:25: give `upstream_spiffe_ids` or `upstream_trust_domain`, not both",
        "/e.toml:32:24: `upstream_spiffe_ids` applies only with `spiffe`",
        "/e.toml:37:24: `upstream_spiffe_ids`: 'spiffe://aim.example.com/x/': the path has an empty segment",
        "/e.toml:41:10: no [[credential]] named 'nope': define one with source = \"spiffe-x509\"",
    ];
    assert_eq!(lines.len(), expected.len(), "{lines:#?}");
    for (line, want) in lines.iter().zip(expected) {
        assert!(
            line.starts_with(want),
            "{line}\n  does not start with\n{want}"
        );
    }
}

#[test]
fn rules_for_one_host_cannot_disagree_on_spiffe() {
    let err = build(&format!(
        r#"{SPIFFE_CREDENTIALS}
[[intercept]]
host = "budget-backend.internal"
spiffe = "runner-svid"
upstream_trust_domain = "aim.example.com"

[[intercept]]
host = "budget-backend.internal"
credential = "key"

[[intercept]]
host = "budget-backend.internal"
spiffe = "runner-svid"
upstream_trust_domain = "other.example.com"
"#
    ))
    .unwrap_err();
    let lines: Vec<String> = err.errors().iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
            lines[0].starts_with(
                "/e.toml:21:8: another [[intercept]] for 'budget-backend.internal' names different SPIFFE settings"
            ),
            "{}",
            lines[0]
        );
}

#[test]
fn header_tokens() {
    assert!(is_token("api-key"));
    assert!(is_token("Authorization"));
    assert!(!is_token("bad header"));
    assert!(!is_token(""));
}
