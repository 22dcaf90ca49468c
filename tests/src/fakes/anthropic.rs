//! [`FakeAnthropicWif`]: the Claude API's workload identity federation token endpoint,
//! `POST /v1/oauth/token` (RFC 7523 `jwt-bearer`, as the Claude docs' WIF reference gives it).

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use super::{FakeOidc, FakeServer, Request, Response, json, jwt, oidc, oidc::hex, unix_now};
use crate::TestCa;

const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The `anthropic-beta` a `jwt-bearer` exchange must carry.
pub const FEDERATION_BETA: &str = "oidc-federation-2026-04-01";
/// The audience the fake's federation rule expects in the identity token.
pub const AUDIENCE: &str = "https://api.anthropic.com";

/// A federation rule of the fake: who may exchange, as whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederationRule {
    /// `fdrl_...`.
    pub id: String,
    /// The organization UUID the request must name.
    pub organization_id: String,
    /// The service account (`svac_...`) tokens act as.
    pub service_account_id: String,
    /// The JWT `sub` the rule matches exactly.
    pub subject: String,
}

/// One exchange, as the fake saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnthropicCall {
    /// The `anthropic-beta` header sent with it.
    pub beta: Option<String>,
    /// The `workspace_id` field, if any.
    pub workspace_id: Option<String>,
    /// `"ok"`, or the status and error code it answered.
    pub outcome: String,
}

/// A fake token endpoint on `https://127.0.0.1:PORT/v1/oauth/token`.
///
/// It checks, in order: `POST` with a JSON body; `anthropic-beta` naming
/// [`FEDERATION_BETA`] (else `400 invalid_request`); `grant_type` jwt-bearer (else `400
/// unsupported_grant_type`); the federation rule, organization and service account of a
/// rule added with [`add_rule`](Self::add_rule) (else `400 invalid_request` or `401
/// invalid_grant`); the `assertion`: a JWT of the trusted [`FakeOidc`] for [`AUDIENCE`] whose
/// `sub` is the rule's (else `401 invalid_grant`). Answers `{"access_token":
/// "sk-ant-oat01-...","token_type":"Bearer","expires_in":3600,"scope":"workspace:developer"}`.
pub struct FakeAnthropicWif {
    server: FakeServer,
    state: Arc<State>,
}

struct State {
    keys: Arc<oidc::State>,
    issuer: String,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    rules: Vec<FederationRule>,
    injected: VecDeque<u16>,
    /// Token → (service account, expiry).
    issued: HashMap<String, (String, u64)>,
    calls: Vec<AnthropicCall>,
}

impl FakeAnthropicWif {
    /// Starts the endpoint, trusting the JWTs of `issuer`.
    pub fn start(ca: &TestCa, issuer: &FakeOidc) -> Self {
        let state = Arc::new(State {
            keys: issuer.state(),
            issuer: issuer.issuer(),
            inner: Mutex::new(Inner::default()),
        });
        let handler_state = Arc::clone(&state);
        let server = FakeServer::start(
            ca,
            "anthropic-wif",
            Arc::new(move |req| handler_state.handle(&req)),
        );
        Self { server, state }
    }

    /// `https://127.0.0.1:PORT/v1/oauth/token`.
    pub fn token_url(&self) -> String {
        format!("{}/v1/oauth/token", self.server.base_url())
    }

    /// Adds a federation rule.
    pub fn add_rule(&self, rule: FederationRule) {
        self.state.inner.lock().unwrap().rules.push(rule);
    }

    /// The next exchange answers this HTTP status (`503`, `429` with `Retry-After: 1`).
    pub fn inject(&self, status: u16) {
        self.state.inner.lock().unwrap().injected.push_back(status);
    }

    /// Every exchange so far, in order.
    pub fn calls(&self) -> Vec<AnthropicCall> {
        self.state.inner.lock().unwrap().calls.clone()
    }

    /// The service account `token` was issued to, if this fake issued it.
    pub fn issued(&self, token: &str) -> Option<String> {
        let inner = self.state.inner.lock().unwrap();
        inner.issued.get(token).map(|(sa, _)| sa.clone())
    }
}

/// An RFC 6749 error answer.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> (StatusCode, Value) {
    (
        status,
        json!({"error": error, "error_description": description}),
    )
}

impl State {
    fn handle(&self, req: &Request) -> Response {
        if req.method != Method::POST || req.path != "/v1/oauth/token" {
            return json(StatusCode::NOT_FOUND, &json!({"error": "not_found"}));
        }
        let beta = req
            .headers
            .get("anthropic-beta")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let workspace_id = body["workspace_id"].as_str().map(str::to_owned);
        let (status, answer) = match self.exchange(req, &body, beta.as_deref()) {
            Ok(answer) => (StatusCode::OK, answer),
            Err(refusal) => refusal,
        };
        let outcome = if status == StatusCode::OK {
            "ok".to_owned()
        } else {
            format!(
                "{} {}",
                status.as_u16(),
                answer["error"].as_str().unwrap_or_default()
            )
        };
        self.inner.lock().unwrap().calls.push(AnthropicCall {
            beta,
            workspace_id,
            outcome,
        });
        let mut response = json(status, &answer);
        if status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert("retry-after", "1".parse().expect("a header value"));
        }
        response
    }

    fn exchange(
        &self,
        req: &Request,
        body: &Value,
        beta: Option<&str>,
    ) -> Result<Value, (StatusCode, Value)> {
        let bad = StatusCode::BAD_REQUEST;
        let content_type = req
            .headers
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !content_type.starts_with("application/json") || !body.is_object() {
            return Err(oauth_error(bad, "invalid_request", "Expected a JSON body."));
        }
        if !beta.is_some_and(|b| b.split(',').any(|b| b.trim() == FEDERATION_BETA)) {
            return Err(oauth_error(
                bad,
                "invalid_request",
                "Missing the federation beta header.",
            ));
        }
        let field = |name: &str| body[name].as_str().unwrap_or_default();
        if field("grant_type") != GRANT_TYPE {
            return Err(oauth_error(
                bad,
                "unsupported_grant_type",
                "Unsupported grant type.",
            ));
        }
        for name in [
            "assertion",
            "federation_rule_id",
            "organization_id",
            "service_account_id",
        ] {
            if field(name).is_empty() {
                return Err(oauth_error(
                    bad,
                    "invalid_request",
                    &format!("Missing required field: {name}."),
                ));
            }
        }
        let mut inner = self.inner.lock().unwrap();
        if let Some(status) = inner.injected.pop_front() {
            let status = StatusCode::from_u16(status).expect("a valid status");
            return Err(oauth_error(
                status,
                "temporarily_unavailable",
                "Try again later.",
            ));
        }
        let unauthorized = StatusCode::UNAUTHORIZED;
        let rule = inner
            .rules
            .iter()
            .find(|r| r.id == field("federation_rule_id"))
            .cloned()
            .ok_or_else(|| {
                oauth_error(unauthorized, "invalid_grant", "Unknown federation rule.")
            })?;
        if rule.organization_id != field("organization_id")
            || rule.service_account_id != field("service_account_id")
        {
            return Err(oauth_error(
                unauthorized,
                "invalid_grant",
                "The rule does not target this organization or service account.",
            ));
        }
        let claims = jwt::verify(&self.keys, &self.issuer, field("assertion"), AUDIENCE).map_err(
            |problem| {
                oauth_error(
                    unauthorized,
                    "invalid_grant",
                    &format!("The identity token was rejected ({problem:?})."),
                )
            },
        )?;
        if claims["sub"].as_str() != Some(rule.subject.as_str()) {
            return Err(oauth_error(
                unauthorized,
                "invalid_grant",
                "The identity token does not match the federation rule.",
            ));
        }
        let token = format!("sk-ant-oat01-{}", hex(&rand::random::<[u8; 24]>()));
        inner.issued.insert(
            token.clone(),
            (rule.service_account_id.clone(), unix_now() + 3600),
        );
        Ok(json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": 3600,
            "scope": "workspace:developer",
        }))
    }
}
