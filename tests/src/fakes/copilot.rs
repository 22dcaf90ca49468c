//! [`FakeCopilot`]: the GitHub API's Copilot endpoints (`reference/tokens.md` §4.1, §4.2, §8),
//! and [`FakeCopilotApi`]: a Copilot API (`/models`, `/chat/completions`).
//!
//! Both share one state, so the API knows which Copilot tokens the exchange issued and which
//! GitHub tokens are real.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use super::{FakeServer, Request, Response, json, unix_now};
use crate::{TestCa, UpstreamNet};

/// One request to `/copilot_internal/v2/token`, as the fake saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeCall {
    /// The request path (`/copilot_internal/v2/token`, `/api/v3/...` on GHES).
    pub path: String,
    /// `token` or `Bearer` as sent (empty without `Authorization`).
    pub scheme: String,
    /// `X-GitHub-Api-Version`, if sent.
    pub api_version: Option<String>,
    /// The status answered.
    pub status: u16,
}

/// One request to the Copilot API, as the fake saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiCall {
    /// The `Host` header, without a port.
    pub host: String,
    /// `GET`, `POST`...
    pub method: String,
    /// The request path.
    pub path: String,
    /// Every `Authorization` value received.
    pub authorization: Vec<String>,
    /// Every `Copilot-Integration-Id` value received.
    pub integration_id: Vec<String>,
    /// Every `X-Interaction-Id` value received.
    pub interaction_id: Vec<String>,
    /// Every `x-initiator` value received.
    pub initiator: Vec<String>,
    /// The status answered.
    pub status: u16,
    /// What the token was: `"copilot"` (issued by the exchange), `"github"`, or `""`.
    pub token_kind: String,
}

/// The GitHub API side on `https://127.0.0.1:PORT` (path-style prefixes such as `/api/v3`
/// are accepted, as on GHES).
///
/// * `GET .../copilot_internal/v2/token` with `Authorization: token|Bearer <GitHub token>`:
///   `github_pat_` tokens get `403 "Resource not accessible by personal access token"`, as on
///   data-residency tenants; with [`refuse_exchange`](Self::refuse_exchange) every token gets
///   that status (403 `"Resource not accessible by integration"` or 404), as on a tenant or
///   GHES; unknown tokens get `401 "Bad credentials"`; known ones get
///   `{"token","expires_at","refresh_in","endpoints":{"api":..}, ...}` (1800 s / 1500 s unless
///   set).
/// * `GET .../copilot_internal/user` with a known GitHub token: the plan and `endpoints.api`.
pub struct FakeCopilot {
    server: FakeServer,
    state: Arc<State>,
}

/// The Copilot API inside an [`UpstreamNet`], on `ADDR:443` with a certificate for its names.
///
/// `GET .../models` and `POST .../chat/completions`: `400 missing required
/// Copilot-Integration-Id header` without that header; a Copilot token of the exchange must be
/// `Bearer`; a GitHub token must carry the scheme its type and this host require
/// (`github_pat_`, `ghs_`: `Bearer`; `gho_`, `ghu_`: `token` on
/// `api.enterprise.githubcopilot.com`, `api.business.githubcopilot.com` and
/// `copilot-api.*.ghe.com`, `Bearer` elsewhere), else `400 Authorization header is badly
/// formatted`; any other token gets `401`.
pub struct FakeCopilotApi {
    server: FakeServer,
    state: Arc<State>,
}

struct State {
    inner: Mutex<Inner>,
}

struct Inner {
    github_tokens: HashSet<String>,
    refusal: Option<u16>,
    expires_in: u64,
    refresh_in: u64,
    api_endpoint: String,
    /// Copilot token -> expires_at.
    issued: HashMap<String, u64>,
    exchanges: Vec<ExchangeCall>,
    api_calls: Vec<ApiCall>,
    user_calls: usize,
}

impl FakeCopilot {
    /// Starts the GitHub API side; `endpoints.api` is `https://api.individual.githubcopilot.com`
    /// until [`set_api_endpoint`](Self::set_api_endpoint).
    pub fn start(ca: &TestCa) -> Self {
        let state = Arc::new(State {
            inner: Mutex::new(Inner {
                github_tokens: HashSet::new(),
                refusal: None,
                expires_in: 1800,
                refresh_in: 1500,
                api_endpoint: "https://api.individual.githubcopilot.com".to_owned(),
                issued: HashMap::new(),
                exchanges: Vec::new(),
                api_calls: Vec::new(),
                user_calls: 0,
            }),
        });
        let handler_state = Arc::clone(&state);
        let server = FakeServer::start(
            ca,
            "github-api",
            Arc::new(move |req| handler_state.github_api(&req)),
        );
        Self { server, state }
    }

    /// Starts the Copilot API on `addr:443` in `net`, with a certificate for `names`.
    pub fn serve_api(
        &self,
        ca: &TestCa,
        net: &UpstreamNet,
        addr: impl Into<IpAddr>,
        names: &[&str],
    ) -> FakeCopilotApi {
        let handler_state = Arc::clone(&self.state);
        let server = FakeServer::start_in_net(
            ca,
            "copilot-api",
            Arc::new(move |req| handler_state.copilot_api(&req)),
            net,
            SocketAddr::new(addr.into(), 443),
            names,
        );
        FakeCopilotApi {
            server,
            state: Arc::clone(&self.state),
        }
    }

    /// `https://127.0.0.1:PORT` (what `GITHUB_API_URL` or `api_url` should say).
    pub fn api_url(&self) -> String {
        self.server.base_url()
    }

    /// A GitHub token the fake accepts.
    pub fn add_github_token(&self, token: &str) {
        self.lock().github_tokens.insert(token.to_owned());
    }

    /// Every exchange answers `status` (403 or 404), like a data-residency tenant or GHES;
    /// `None` for normal service.
    pub fn refuse_exchange(&self, status: Option<u16>) {
        self.lock().refusal = status;
    }

    /// Lifetimes of tokens issued from now on.
    pub fn set_lifetimes(&self, expires_in: u64, refresh_in: u64) {
        let mut inner = self.lock();
        inner.expires_in = expires_in;
        inner.refresh_in = refresh_in;
    }

    /// The `endpoints.api` of answers from now on.
    pub fn set_api_endpoint(&self, url: &str) {
        url.clone_into(&mut self.lock().api_endpoint);
    }

    /// Every exchange request so far.
    pub fn exchanges(&self) -> Vec<ExchangeCall> {
        self.lock().exchanges.clone()
    }

    /// Whether `token` is a Copilot token the exchange issued.
    pub fn issued(&self, token: &str) -> bool {
        self.lock().issued.contains_key(token)
    }

    /// How many `/copilot_internal/user` requests were answered.
    pub fn user_calls(&self) -> usize {
        self.lock().user_calls
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.state.inner.lock().unwrap()
    }
}

impl FakeCopilotApi {
    /// Every request the Copilot API received, in order.
    pub fn calls(&self) -> Vec<ApiCall> {
        self.state.inner.lock().unwrap().api_calls.clone()
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }
}

/// `(scheme, token)` of an `Authorization` value.
fn authorization(req: &Request) -> Option<(String, String)> {
    let value = req.headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    Some((scheme.to_owned(), token.trim().to_owned()))
}

fn message(status: StatusCode, text: &str) -> Response {
    json(
        status,
        &json!({"message": text, "documentation_url": "https://docs.github.com/rest", "status": status.as_u16().to_string()}),
    )
}

fn all(req: &Request, name: &str) -> Vec<String> {
    req.headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

/// The scheme a GitHub token needs at `host` (tokens.md §4.5, both reported behaviours).
fn required_scheme(token: &str, host: &str) -> &'static str {
    if token.starts_with("github_pat_") || token.starts_with("ghs_") {
        return "bearer";
    }
    let tenant = host
        .strip_prefix("copilot-api.")
        .is_some_and(|t| t.ends_with(".ghe.com"));
    if tenant
        || host == "api.enterprise.githubcopilot.com"
        || host == "api.business.githubcopilot.com"
    {
        "token"
    } else {
        "bearer"
    }
}

impl State {
    fn github_api(&self, req: &Request) -> Response {
        if req.method != Method::GET {
            return message(StatusCode::NOT_FOUND, "Not Found");
        }
        if req.path.ends_with("/copilot_internal/v2/token") {
            return self.exchange(req);
        }
        if req.path.ends_with("/copilot_internal/user") {
            let mut inner = self.inner.lock().unwrap();
            let known = authorization(req).is_some_and(|(_, t)| inner.github_tokens.contains(&t));
            if !known {
                return message(StatusCode::UNAUTHORIZED, "Bad credentials");
            }
            inner.user_calls += 1;
            return json(
                StatusCode::OK,
                &json!({
                    "copilot_plan": "business",
                    "chat_enabled": true,
                    "organization_login_list": ["octo-org"],
                    "endpoints": {"api": inner.api_endpoint},
                }),
            );
        }
        message(StatusCode::NOT_FOUND, "Not Found")
    }

    fn exchange(&self, req: &Request) -> Response {
        let mut inner = self.inner.lock().unwrap();
        let auth = authorization(req);
        let (response, status) = match &auth {
            None => (
                message(StatusCode::UNAUTHORIZED, "Requires authentication"),
                401,
            ),
            Some((scheme, _))
                if !scheme.eq_ignore_ascii_case("token")
                    && !scheme.eq_ignore_ascii_case("bearer") =>
            {
                (message(StatusCode::UNAUTHORIZED, "Bad credentials"), 401)
            }
            Some((_, token)) if token.starts_with("github_pat_") => (
                message(
                    StatusCode::FORBIDDEN,
                    "Resource not accessible by personal access token",
                ),
                403,
            ),
            Some(_) if inner.refusal == Some(404) => {
                (message(StatusCode::NOT_FOUND, "Not Found"), 404)
            }
            Some(_) if inner.refusal.is_some() => (
                message(
                    StatusCode::FORBIDDEN,
                    "Resource not accessible by integration",
                ),
                403,
            ),
            Some((_, token)) if !inner.github_tokens.contains(token) => {
                (message(StatusCode::UNAUTHORIZED, "Bad credentials"), 401)
            }
            Some(_) => {
                let now = unix_now();
                let expires_at = now + inner.expires_in;
                let n = inner.issued.len();
                let token = format!(
                    "tid=fake{n:04};exp={expires_at};sku=copilot_enterprise_seat;proxy-ep=proxy.enterprise.githubcopilot.com:{:016x}",
                    (n as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
                );
                inner.issued.insert(token.clone(), expires_at);
                let body: Value = json!({
                    "token": token,
                    "expires_at": expires_at,
                    "refresh_in": inner.refresh_in,
                    "sku": "copilot_enterprise_seat",
                    "individual": false,
                    "chat_enabled": true,
                    "endpoints": {
                        "api": inner.api_endpoint,
                        "proxy": "https://proxy.enterprise.githubcopilot.com",
                    },
                });
                (json(StatusCode::OK, &body), 200)
            }
        };
        inner.exchanges.push(ExchangeCall {
            path: req.path.clone(),
            scheme: auth.map(|(s, _)| s).unwrap_or_default(),
            api_version: req
                .headers
                .get("x-github-api-version")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            status,
        });
        response
    }

    fn copilot_api(&self, req: &Request) -> Response {
        let host = req
            .headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        let host = host
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let mut inner = self.inner.lock().unwrap();
        let (status, body, token_kind) = Self::judge(&inner, req, &host);
        inner.api_calls.push(ApiCall {
            host,
            method: req.method.to_string(),
            path: req.path.clone(),
            authorization: all(req, "authorization"),
            integration_id: all(req, "copilot-integration-id"),
            interaction_id: all(req, "x-interaction-id"),
            initiator: all(req, "x-initiator"),
            status: status.as_u16(),
            token_kind: token_kind.to_owned(),
        });
        json(status, &body)
    }

    fn judge(inner: &Inner, req: &Request, host: &str) -> (StatusCode, Value, &'static str) {
        let bad = |text: &str| json!({"message": text});
        let route = if req.method == Method::GET && req.path.ends_with("/models") {
            "models"
        } else if req.method == Method::POST && req.path.ends_with("/chat/completions") {
            "chat"
        } else {
            return (StatusCode::NOT_FOUND, bad("Not Found"), "");
        };
        if req.headers.get("copilot-integration-id").is_none() {
            return (
                StatusCode::BAD_REQUEST,
                bad("missing required Copilot-Integration-Id header"),
                "",
            );
        }
        let Some((scheme, token)) = authorization(req) else {
            return (StatusCode::UNAUTHORIZED, bad("unauthorized"), "");
        };
        let scheme = scheme.to_ascii_lowercase();
        let kind = if let Some(&expires_at) = inner.issued.get(&token) {
            if expires_at <= unix_now() {
                return (StatusCode::UNAUTHORIZED, bad("token expired"), "copilot");
            }
            if scheme != "bearer" {
                return (
                    StatusCode::BAD_REQUEST,
                    bad("Authorization header is badly formatted"),
                    "copilot",
                );
            }
            "copilot"
        } else if inner.github_tokens.contains(&token) {
            if scheme != required_scheme(&token, host) {
                return (
                    StatusCode::BAD_REQUEST,
                    bad("Authorization header is badly formatted"),
                    "github",
                );
            }
            "github"
        } else {
            return (StatusCode::UNAUTHORIZED, bad("unauthorized"), "");
        };
        let body = match route {
            "models" => json!({"object": "list", "data": [{"id": "gpt-4.1", "object": "model"}]}),
            _ => json!({
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "model": "gpt-4.1",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("hello from {host}")}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14,
                          "prompt_tokens_details": {"cached_tokens": 2}},
            }),
        };
        (StatusCode::OK, body, kind)
    }
}
