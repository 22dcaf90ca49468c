use egressd_config::awf::apiproxy::{ApiProxy, Provider, Route};
use egressd_config::intercept::AuthScheme;
use hyper::Request;

use super::{auth, health, prepare, strip_provider_prefix, valid_request_id};

fn config() -> ApiProxy {
    ApiProxy {
        routes: vec![
            route(Provider::OpenAi, "api.openai.com"),
            route(Provider::Anthropic, "api.anthropic.com"),
            route(Provider::Copilot, "api.githubcopilot.com"),
            route(Provider::Gemini, "generativelanguage.googleapis.com"),
        ],
        integration_id: "agentic-workflows".into(),
        interaction_id: Some("42-1".into()),
        rate_limit: None,
        budget: egressd_config::awf::apiproxy::Budget::default(),
    }
}

fn route(provider: Provider, host: &str) -> Route {
    Route::new(provider, host.into(), Some(provider.name().into()))
}

fn parts(uri: &str, headers: &[(&str, &str)]) -> hyper::http::request::Parts {
    let mut b = Request::builder().method("POST").uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn prepared(
    provider: Provider,
    uri: &str,
    headers: &[(&str, &str)],
) -> hyper::http::request::Parts {
    let config = config();
    let route = config.route(provider.port()).unwrap().clone();
    let mut p = parts(uri, headers);
    prepare(&config, &route, &mut p).unwrap();
    p
}

#[test]
fn openai_gets_its_base_path_once() {
    let p = prepared(Provider::OpenAi, "/chat/completions", &[]);
    assert_eq!(
        p.uri.to_string(),
        "https://api.openai.com/v1/chat/completions"
    );
    let p = prepared(Provider::OpenAi, "/v1/chat/completions?x=1", &[]);
    assert_eq!(
        p.uri.to_string(),
        "https://api.openai.com/v1/chat/completions?x=1"
    );
}

#[test]
fn other_hosts_get_no_base_path() {
    let mut config = config();
    config.routes[0].upstream = "openai.example.com".into();
    let route = config.routes[0].clone();
    let mut p = parts("/responses", &[]);
    prepare(&config, &route, &mut p).unwrap();
    assert_eq!(p.uri.to_string(), "https://openai.example.com/responses");
}

#[test]
fn a_base_path_is_put_in_front_unless_the_client_names_the_apis_root() {
    let mut config = config();
    config.routes[0].upstream = "res.openai.azure.com".into();
    config.routes[0].base_path = Some("/openai/deployments/gpt-4o".into());
    let route = config.routes[0].clone();
    for (asked, sent) in [
        (
            "/chat/completions",
            "/openai/deployments/gpt-4o/chat/completions",
        ),
        (
            "/openai/deployments/gpt-4o/chat/completions",
            "/openai/deployments/gpt-4o/chat/completions",
        ),
        // The Copilot CLI's Azure provider: the v1 route, the deployment in the body.
        ("/openai/v1/chat/completions", "/openai/v1/chat/completions"),
    ] {
        let mut p = parts(asked, &[]);
        prepare(&config, &route, &mut p).unwrap();
        assert_eq!(
            p.uri.to_string(),
            format!("https://res.openai.azure.com{sent}"),
            "{asked}"
        );
    }
}

#[test]
fn client_credentials_and_forwarding_headers_are_stripped() {
    let p = prepared(
        Provider::OpenAi,
        "/v1/models",
        &[
            ("host", "api-proxy:10000"),
            ("authorization", "Bearer sk-placeholder-for-api-proxy"),
            ("x-api-key", "x"),
            ("x-goog-api-key", "x"),
            ("proxy-authorization", "x"),
            ("forwarded", "for=1.2.3.4"),
            ("via", "1.1 squid"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-host", "h"),
            ("content-type", "application/json"),
        ],
    );
    for gone in [
        "host",
        "authorization",
        "x-api-key",
        "x-goog-api-key",
        "proxy-authorization",
        "forwarded",
        "via",
        "x-forwarded-for",
        "x-forwarded-host",
    ] {
        assert!(!p.headers.contains_key(gone), "{gone} kept");
    }
    assert_eq!(p.headers["content-type"], "application/json");
    let id = p.headers["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 36, "{id}");
}

#[test]
fn a_valid_request_id_is_kept() {
    let p = prepared(Provider::OpenAi, "/v1/x", &[("x-request-id", "abc-1.2_3")]);
    assert_eq!(p.headers["x-request-id"], "abc-1.2_3");
    let p = prepared(Provider::OpenAi, "/v1/x", &[("x-request-id", "a b")]);
    assert_ne!(p.headers["x-request-id"], "a b");
    assert!(valid_request_id("A.b-c_9"));
    assert!(!valid_request_id(&"a".repeat(129)));
}

#[test]
fn anthropic_version_is_added_only_when_missing() {
    let p = prepared(Provider::Anthropic, "/v1/messages", &[]);
    assert_eq!(p.headers["anthropic-version"], "2023-06-01");
    let p = prepared(
        Provider::Anthropic,
        "/v1/messages",
        &[("anthropic-version", "2024-01-01")],
    );
    assert_eq!(p.headers["anthropic-version"], "2024-01-01");
}

#[test]
fn copilot_headers() {
    let p = prepared(
        Provider::Copilot,
        "/chat/completions",
        &[("copilot-integration-id", "mine"), ("x-interaction-id", "")],
    );
    let all = |n: &str| p.headers.get_all(n).iter().count();
    assert_eq!(p.headers["copilot-integration-id"], "agentic-workflows");
    assert_eq!(all("copilot-integration-id"), 1);
    assert_eq!(p.headers["x-initiator"], "agent");
    assert_eq!(p.headers["x-interaction-id"], "42-1");
    assert_eq!(all("x-interaction-id"), 1);
    let p = prepared(
        Provider::Copilot,
        "/chat/completions",
        &[("x-initiator", "user"), ("x-interaction-id", "session")],
    );
    assert_eq!(p.headers["x-initiator"], "user");
    assert_eq!(p.headers["x-interaction-id"], "session");
}

#[test]
fn gemini_key_parameters_are_dropped() {
    let p = prepared(
        Provider::Gemini,
        "/v1beta/models/m:generateContent?key=k&alt=sse&apiKey=x&api_key=y",
        &[],
    );
    assert_eq!(
        p.uri.to_string(),
        "https://generativelanguage.googleapis.com/v1beta/models/m:generateContent?alt=sse"
    );
}

#[test]
fn credentials_go_in_the_provider_header() {
    let mut h = hyper::HeaderMap::new();
    auth(Provider::OpenAi, "sk-real", AuthScheme::Token, &mut h).unwrap();
    assert_eq!(h["authorization"], "Bearer sk-real");
    let mut h = hyper::HeaderMap::new();
    auth(Provider::Copilot, "gho_x", AuthScheme::Token, &mut h).unwrap();
    assert_eq!(h["authorization"], "token gho_x");
    let mut h = hyper::HeaderMap::new();
    auth(Provider::Anthropic, "sk-ant", AuthScheme::Bearer, &mut h).unwrap();
    assert_eq!(h["x-api-key"], "sk-ant");
    assert!(!h.contains_key("authorization"));
    let mut h = hyper::HeaderMap::new();
    auth(Provider::Vertex, "g", AuthScheme::Bearer, &mut h).unwrap();
    assert_eq!(h["x-goog-api-key"], "g");
    assert!(auth(Provider::OpenAi, "bad\nkey", AuthScheme::Bearer, &mut h).is_err());
}

#[test]
fn health_follows_awf() {
    let config = config();
    let (status, body) = health(&config, Provider::Anthropic);
    assert_eq!(status, 200);
    assert_eq!(body["service"], "awf-api-proxy-anthropic");
    let (status, body) = health(&config, Provider::Vertex);
    assert_eq!(status, 503);
    assert_eq!(body["status"], "not_configured");
    let (status, body) = health(&config, Provider::OpenAi);
    assert_eq!(status, 200);
    assert_eq!(body["providers"]["openai"], true);
    assert_eq!(body["providers"]["vertex"], false);
}

#[test]
fn a_redundant_provider_prefix_is_stripped_from_the_model() {
    let body = br#"{"model":"copilot/auto","messages":[]}"#;
    let out = strip_provider_prefix(body, Provider::Copilot).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["model"], "auto");
    assert_eq!(v["messages"], serde_json::json!([]));
    // Another provider's prefix, no prefix, a non-object, no model: untouched.
    assert!(strip_provider_prefix(body, Provider::OpenAi).is_none());
    assert!(strip_provider_prefix(br#"{"model":"gpt-4o"}"#, Provider::OpenAi).is_none());
    assert!(strip_provider_prefix(br#"{"model":"openai/"}"#, Provider::OpenAi).is_none());
    assert!(strip_provider_prefix(b"[1]", Provider::OpenAi).is_none());
    assert!(strip_provider_prefix(b"not json", Provider::OpenAi).is_none());
    let v: serde_json::Value = serde_json::from_slice(
        &strip_provider_prefix(br#"{"model":"Anthropic/claude-x"}"#, Provider::Anthropic).unwrap(),
    )
    .unwrap();
    assert_eq!(v["model"], "claude-x");
}
