//! [`FakeCopilot`]: the GitHub API's Copilot endpoints (`reference/tokens.md` §4.1, §4.2, §8),
//! and [`FakeCopilotApi`]: a Copilot API (`/models`, `/chat/completions`, `/responses`, MCP).
//!
//! Both share one state, so the API knows which Copilot tokens the exchange issued and which
//! GitHub tokens are real. Both answer what GitHub's Copilot CLI needs to print a streamed
//! answer (`tests/captures/copilot-cli-1.0.102.md`; the shapes are in `copilot_cli.rs`), so
//! the real CLI can run against them: the GitHub API on loopback for egressd's broker, and
//! inside an [`UpstreamNet`] ([`FakeCopilot::serve_github_api`]) for a sandboxed CLI.

#[path = "copilot_cli.rs"]
mod cli;

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use hyper::{Method, StatusCode};
use serde_json::{Value, json};

pub use cli::FAKE_MODEL_ANSWER;

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
    /// The query string, if any.
    pub query: Option<String>,
    /// Every `User-Agent` value received.
    pub user_agent: Vec<String>,
    /// The JSON body's `model`, if any (`/chat/completions`, `/responses`).
    pub model: Option<String>,
    /// Whether the JSON body asked for `"stream": true` (answered with server-sent events).
    pub stream: bool,
    /// The JSON-RPC `method` of an MCP request (`initialize`, `tools/list`...).
    pub rpc_method: Option<String>,
}

/// One request to the GitHub API side (the loopback server or one from
/// [`FakeCopilot::serve_github_api`]), as the fake saw it: which credential reached GitHub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitHubCall {
    /// The `Host` header without a port (`127.0.0.1` for the loopback server,
    /// `api.github.com`... for the ones in the upstream namespace).
    pub host: String,
    /// `GET`, `POST`...
    pub method: String,
    /// The path as received (with the `/api/v3` prefix when one was used).
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// Every `Authorization` value received (`Bearer`, `bearer` and `token` all occur: the
    /// CLI uses each on some endpoint).
    pub authorization: Vec<String>,
    /// Every `User-Agent` value received.
    pub user_agent: Vec<String>,
    /// The status answered.
    pub status: u16,
}

/// The GitHub API side on `https://127.0.0.1:PORT` (path-style prefixes such as `/api/v3`
/// are accepted, as on GHES), and in an [`UpstreamNet`] through
/// [`serve_github_api`](Self::serve_github_api). Every answer carries `X-GitHub-Request-Id`
/// (the CLI takes an error status without one for a proxy's or firewall's).
///
/// * `GET .../copilot_internal/v2/token` with `Authorization: token|Bearer <GitHub token>`:
///   `github_pat_` tokens get `403 "Resource not accessible by personal access token"`, as on
///   data-residency tenants; with [`refuse_exchange`](Self::refuse_exchange) every token gets
///   that status (403 `"Resource not accessible by integration"` or 404), as on a tenant or
///   GHES; unknown tokens get `401 "Bad credentials"`; known ones get
///   `{"token","expires_at","refresh_in","endpoints":{"api":..}, ...}` (1800 s / 1500 s unless
///   set).
/// * `GET .../copilot_internal/user`: the plan, `endpoints.api` (where the CLI sends every
///   Copilot API call) and `endpoints.telemetry`.
/// * `GET .../copilot_internal/managed_settings` and `.../copilot_internal/team_customizations`:
///   `404 Not Found` (no policy, no team customizations: the CLI goes on);
///   `GET .../copilot/mcp_registry`: `{"mcp_registries":[]}`.
/// * `GET .../repos/github/copilot-cli/releases`: `[]` without a token or with a known one
///   (the CLI's release lookup; no update is offered).
/// * GHES technical preview: `GET /_copilot_proxy_config` and
///   `POST /_copilot_proxy/chat/completions` (`COPILOT_PROVIDER_GHES_HOST`).
///
/// On every authenticated route, no `Authorization` gets `401 "Requires authentication"` and
/// an unknown token `401 {"message":"Bad credentials","documentation_url":
/// "https://docs.github.com/rest","status":"401"}`, as GitHub answers. Every request is
/// recorded ([`github_calls`](Self::github_calls)).
pub struct FakeCopilot {
    server: FakeServer,
    state: Arc<State>,
}

/// The Copilot API inside an [`UpstreamNet`], on `ADDR:443` with a certificate for its names.
///
/// `GET .../models`, `POST .../chat/completions` and `POST .../responses`: `400 missing
/// required Copilot-Integration-Id header` without that header. On those and on the other
/// authenticated routes (MCP, `/agents/...`), a Copilot token of the exchange must be
/// `Bearer`; a GitHub token must carry the scheme its type and this host require
/// (`github_pat_`, `ghs_`: `Bearer`; `gho_`, `ghu_`: `token` on
/// `api.enterprise.githubcopilot.com`, `api.business.githubcopilot.com` and
/// `copilot-api.*.ghe.com`, `Bearer` elsewhere), else `400 Authorization header is badly
/// formatted`; any other token gets `401`. (The real CLI itself sends `Bearer` everywhere;
/// the scheme check judges what egressd injects.)
///
/// Answers, as the CLI needs them: `/models` the catalogue of `copilot_cli.rs` (gpt-5-mini,
/// which the CLI picks, and gpt-4.1); `/chat/completions` and `/responses` with
/// `"stream": true` server-sent events carrying [`FAKE_MODEL_ANSWER`] (without: one JSON
/// answer); `/mcp/readonly` a minimal MCP server with no tools (`GET` 405, `DELETE` 200);
/// `/agents/swe/internal/memory/v0/enabled` `{"enabled":false}`; `POST /telemetry` (no
/// credential needed) `200`. Everything else is `404`. Every request is recorded
/// ([`calls`](Self::calls)).
pub struct FakeCopilotApi {
    server: FakeServer,
    state: Arc<State>,
}

/// The GitHub API of [`FakeCopilot`] served in an [`UpstreamNet`] on `ADDR:443` with a
/// certificate for its names (`api.github.com`, `api.acme.ghe.com`, `git.corp`...), so that
/// a sandboxed client reaches it through egressd. Same state and answers as the loopback
/// server.
pub struct FakeGitHubApi {
    server: FakeServer,
    state: Arc<State>,
    names: Vec<String>,
}

struct State {
    inner: Mutex<Inner>,
    /// Numbers the `X-GitHub-Request-Id` of each answer.
    requests: AtomicU64,
}

struct Inner {
    github_tokens: HashSet<String>,
    refusal: Option<u16>,
    expires_in: u64,
    refresh_in: u64,
    api_endpoint: String,
    /// `endpoints.telemetry` of `/copilot_internal/user`: `None` derives it from
    /// `api_endpoint`, `Some(None)` leaves it out.
    telemetry_endpoint: Option<Option<String>>,
    /// GitHub tokens are also accepted with `Bearer` where their type asks for `token`.
    bearer_everywhere: bool,
    /// Copilot token -> expires_at.
    issued: HashMap<String, u64>,
    exchanges: Vec<ExchangeCall>,
    api_calls: Vec<ApiCall>,
    github_calls: Vec<GitHubCall>,
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
                telemetry_endpoint: None,
                bearer_everywhere: false,
                issued: HashMap::new(),
                exchanges: Vec::new(),
                api_calls: Vec::new(),
                github_calls: Vec::new(),
                user_calls: 0,
            }),
            requests: AtomicU64::new(0),
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

    /// Serves this GitHub API (same tokens, same records) on `addr:443` in `net` too, with a
    /// certificate for `names` (`api.github.com`; `api.acme.ghe.com` for a GHE.com tenant;
    /// `git.corp` for GHES, whose API is under `/api/v3`), for a sandboxed Copilot CLI that
    /// reaches GitHub through egressd (give egressd `--resolve NAME:ADDR` for each name).
    pub fn serve_github_api(
        &self,
        ca: &TestCa,
        net: &UpstreamNet,
        addr: impl Into<IpAddr>,
        names: &[&str],
    ) -> FakeGitHubApi {
        let handler_state = Arc::clone(&self.state);
        let server = FakeServer::start_in_net(
            ca,
            "github-api-net",
            Arc::new(move |req| handler_state.github_api(&req)),
            net,
            SocketAddr::new(addr.into(), 443),
            names,
        );
        FakeGitHubApi {
            server,
            state: Arc::clone(&self.state),
            names: names.iter().map(|n| n.to_ascii_lowercase()).collect(),
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

    /// The `endpoints.telemetry` of `/copilot_internal/user` from now on: `None` leaves it
    /// out (the CLI then sends no telemetry). Until this is called it follows
    /// `endpoints.api` the way GitHub names its hosts (`https://api.X.githubcopilot.com` ->
    /// `https://telemetry.X.githubcopilot.com`, `https://copilot-api.T.ghe.com` ->
    /// `https://copilot-telemetry-service.T.ghe.com`).
    pub fn set_telemetry_endpoint(&self, url: Option<&str>) {
        self.lock().telemetry_endpoint = Some(url.map(str::to_owned));
    }

    /// With `true`, the Copilot API also accepts a GitHub token with `Bearer` on the hosts
    /// where its type otherwise needs `token` (`gho_`/`ghu_` on
    /// `api.business.githubcopilot.com`, `api.enterprise.githubcopilot.com`,
    /// `copilot-api.*.ghe.com`): the real Copilot CLI sends `Bearer` everywhere, so a control
    /// run of the CLI straight against the fakes (no egressd choosing the scheme) needs this.
    pub fn accept_bearer_everywhere(&self, on: bool) {
        self.lock().bearer_everywhere = on;
    }

    /// Every exchange request so far.
    pub fn exchanges(&self) -> Vec<ExchangeCall> {
        self.lock().exchanges.clone()
    }

    /// Whether `token` is a Copilot token the exchange issued.
    pub fn issued(&self, token: &str) -> bool {
        self.lock().issued.contains_key(token)
    }

    /// How many `/copilot_internal/user` requests were answered `200`.
    pub fn user_calls(&self) -> usize {
        self.lock().user_calls
    }

    /// Every request the GitHub API side received (loopback and in-namespace servers), in
    /// order: which `Authorization` values reached GitHub.
    pub fn github_calls(&self) -> Vec<GitHubCall> {
        self.lock().github_calls.clone()
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

impl FakeGitHubApi {
    /// The requests that reached this server (their `Host` is one of its names), in order.
    pub fn calls(&self) -> Vec<GitHubCall> {
        let inner = self.state.inner.lock().unwrap();
        inner
            .github_calls
            .iter()
            .filter(|c| self.names.contains(&c.host))
            .cloned()
            .collect()
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

/// The `Host` header, lower case, without a port.
fn host(req: &Request) -> String {
    let host = req
        .headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    host.split(':')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
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

/// Who calls the GitHub API.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// A GitHub token the fake knows.
    Known,
    /// No `Authorization`.
    Anonymous,
    /// Any other credential.
    Unknown,
}

/// What a Copilot API request asks for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Models,
    Chat,
    Responses,
    Mcp,
    Memory,
    Telemetry,
    Unknown,
}

impl Route {
    fn of(req: &Request) -> Self {
        let (method, path) = (&req.method, req.path.as_str());
        if *method == Method::GET && path.ends_with("/models") {
            Self::Models
        } else if *method == Method::POST && path.ends_with("/chat/completions") {
            Self::Chat
        } else if *method == Method::POST && path.ends_with("/responses") {
            Self::Responses
        } else if path.ends_with("/mcp/readonly") {
            Self::Mcp
        } else if *method == Method::GET && path.ends_with("/agents/swe/internal/memory/v0/enabled")
        {
            Self::Memory
        } else if *method == Method::POST && path.ends_with("/telemetry") {
            Self::Telemetry
        } else {
            Self::Unknown
        }
    }

    /// Model routes require `Copilot-Integration-Id`.
    fn needs_integration_id(self) -> bool {
        matches!(self, Self::Models | Self::Chat | Self::Responses)
    }
}

/// The JSON body's `model` and `stream`.
fn model_and_stream(req: &Request) -> (Option<String>, bool) {
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    (
        body["model"].as_str().map(str::to_owned),
        body["stream"].as_bool().unwrap_or(false),
    )
}

/// The answer of a model route (`Chat`, `Responses`); `host` names the non-streamed chat
/// answer ("hello from HOST").
fn model_answer(route: Route, req: &Request, host: &str) -> Response {
    let (model, stream) = model_and_stream(req);
    match (route, stream) {
        (Route::Chat, true) => {
            cli::sse(cli::chat_stream(model.as_deref().unwrap_or(cli::CLI_MODEL)))
        }
        (Route::Responses, true) => cli::sse(cli::responses_stream(
            model.as_deref().unwrap_or(cli::CLI_MODEL),
        )),
        (Route::Responses, false) => json(
            StatusCode::OK,
            &cli::responses_json(model.as_deref().unwrap_or(cli::CLI_MODEL)),
        ),
        _ => json(
            StatusCode::OK,
            &json!({
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "model": "gpt-4.1",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("hello from {host}")}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14,
                          "prompt_tokens_details": {"cached_tokens": 2}},
            }),
        ),
    }
}

/// The GitHub API path without a GHES `/api/v3` prefix.
fn rest_path(path: &str) -> &str {
    path.strip_prefix("/api/v3").unwrap_or(path)
}

impl State {
    /// Adds `X-GitHub-Request-Id`, as every GitHub and Copilot API answer has.
    fn stamp(&self, mut response: Response) -> Response {
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        response.headers_mut().insert(
            "x-github-request-id",
            format!("FAKE:{n:08X}")
                .parse()
                .expect("a valid header value"),
        );
        response
    }

    fn github_api(&self, req: &Request) -> Response {
        let response = self.github_route(req);
        self.inner.lock().unwrap().github_calls.push(GitHubCall {
            host: host(req),
            method: req.method.to_string(),
            path: req.path.clone(),
            query: req.query.clone(),
            authorization: all(req, "authorization"),
            user_agent: all(req, "user-agent"),
            status: response.status().as_u16(),
        });
        self.stamp(response)
    }

    fn github_route(&self, req: &Request) -> Response {
        let path = rest_path(&req.path);
        if req.method == Method::GET && path.ends_with("/copilot_internal/v2/token") {
            return self.exchange(req);
        }
        let caller = self.caller(req);
        // The release lookup of the CLI's updater: public, so no token is fine; a bad one is
        // not (GitHub checks any token it is given).
        if req.method == Method::GET && path.starts_with("/repos/github/copilot-cli/releases") {
            return match caller {
                Caller::Unknown => message(StatusCode::UNAUTHORIZED, "Bad credentials"),
                Caller::Known | Caller::Anonymous => json(StatusCode::OK, &json!([])),
            };
        }
        let known = |answer: &dyn Fn() -> Response| match caller {
            Caller::Known => answer(),
            Caller::Anonymous => message(StatusCode::UNAUTHORIZED, "Requires authentication"),
            Caller::Unknown => message(StatusCode::UNAUTHORIZED, "Bad credentials"),
        };
        match (&req.method, path) {
            (&Method::GET, p) if p.ends_with("/copilot_internal/user") => known(&|| {
                let mut inner = self.inner.lock().unwrap();
                inner.user_calls += 1;
                let telemetry = match &inner.telemetry_endpoint {
                    Some(set) => set.clone(),
                    None => cli::telemetry_for(&inner.api_endpoint),
                };
                json(
                    StatusCode::OK,
                    &cli::user(&inner.api_endpoint, telemetry.as_deref()),
                )
            }),
            (&Method::GET, p)
                if p.ends_with("/copilot_internal/managed_settings")
                    || p.ends_with("/copilot_internal/team_customizations") =>
            {
                known(&|| message(StatusCode::NOT_FOUND, "Not Found"))
            }
            (&Method::GET, p) if p.ends_with("/copilot/mcp_registry") => {
                known(&|| json(StatusCode::OK, &json!({"mcp_registries": []})))
            }
            (&Method::GET, "/_copilot_proxy_config") => {
                known(&|| json(StatusCode::OK, &cli::ghes_proxy_config()))
            }
            (&Method::POST, "/_copilot_proxy/chat/completions") => {
                known(&|| model_answer(Route::Chat, req, &host(req)))
            }
            _ => message(StatusCode::NOT_FOUND, "Not Found"),
        }
    }

    /// Whether the request carries a GitHub token the fake knows (scheme `token` or
    /// `Bearer`, any case, as GitHub accepts).
    fn caller(&self, req: &Request) -> Caller {
        let Some((scheme, token)) = authorization(req) else {
            return if req.headers.contains_key("authorization") {
                Caller::Unknown
            } else {
                Caller::Anonymous
            };
        };
        let known = (scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer"))
            && self.inner.lock().unwrap().github_tokens.contains(&token);
        if known {
            Caller::Known
        } else {
            Caller::Unknown
        }
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
        let host = host(req);
        let route = Route::of(req);
        let (model, stream) = model_and_stream(req);
        let rpc_method = (route == Route::Mcp)
            .then(|| serde_json::from_slice::<Value>(&req.body).ok())
            .flatten()
            .and_then(|b| b["method"].as_str().map(str::to_owned));
        let mut inner = self.inner.lock().unwrap();
        let (response, token_kind) = match route {
            Route::Unknown => (
                json(StatusCode::NOT_FOUND, &json!({"message": "Not Found"})),
                "",
            ),
            Route::Telemetry => (
                json(
                    StatusCode::OK,
                    &json!({"itemsReceived": 1, "itemsAccepted": 1, "errors": []}),
                ),
                "",
            ),
            _ => match Self::judge(&inner, req, route, &host) {
                Err((status, text, kind)) => (json(status, &json!({"message": text})), kind),
                Ok(kind) => (Self::answer(route, req, &host), kind),
            },
        };
        inner.api_calls.push(ApiCall {
            host,
            method: req.method.to_string(),
            path: req.path.clone(),
            authorization: all(req, "authorization"),
            integration_id: all(req, "copilot-integration-id"),
            interaction_id: all(req, "x-interaction-id"),
            initiator: all(req, "x-initiator"),
            status: response.status().as_u16(),
            token_kind: token_kind.to_owned(),
            query: req.query.clone(),
            user_agent: all(req, "user-agent"),
            model,
            stream,
            rpc_method,
        });
        drop(inner);
        self.stamp(response)
    }

    /// Who may call an authenticated route: `Ok(token kind)`, or the refusal
    /// `(status, message, token kind)`.
    fn judge(
        inner: &Inner,
        req: &Request,
        route: Route,
        host: &str,
    ) -> Result<&'static str, (StatusCode, &'static str, &'static str)> {
        if route.needs_integration_id() && req.headers.get("copilot-integration-id").is_none() {
            return Err((
                StatusCode::BAD_REQUEST,
                "missing required Copilot-Integration-Id header",
                "",
            ));
        }
        let Some((scheme, token)) = authorization(req) else {
            return Err((StatusCode::UNAUTHORIZED, "unauthorized", ""));
        };
        let scheme = scheme.to_ascii_lowercase();
        if let Some(&expires_at) = inner.issued.get(&token) {
            if expires_at <= unix_now() {
                return Err((StatusCode::UNAUTHORIZED, "token expired", "copilot"));
            }
            if scheme != "bearer" {
                return Err((
                    StatusCode::BAD_REQUEST,
                    "Authorization header is badly formatted",
                    "copilot",
                ));
            }
            Ok("copilot")
        } else if inner.github_tokens.contains(&token) {
            let lenient = inner.bearer_everywhere && scheme == "bearer";
            if scheme != required_scheme(&token, host) && !lenient {
                return Err((
                    StatusCode::BAD_REQUEST,
                    "Authorization header is badly formatted",
                    "github",
                ));
            }
            Ok("github")
        } else {
            Err((StatusCode::UNAUTHORIZED, "unauthorized", ""))
        }
    }

    /// The answer of an authenticated route the caller may use.
    fn answer(route: Route, req: &Request, host: &str) -> Response {
        match route {
            Route::Models => json(StatusCode::OK, &cli::models()),
            Route::Chat | Route::Responses => model_answer(route, req, host),
            Route::Memory => json(StatusCode::OK, &json!({"enabled": false})),
            Route::Mcp if req.method == Method::POST => {
                let (status, body, session) = cli::mcp(&req.body);
                let mut response = match body {
                    Some(body) => json(status, &body),
                    None => {
                        let mut r = json(status, &Value::Null);
                        *r.body_mut() = http_body_util::Full::new(bytes::Bytes::new());
                        r.headers_mut().remove(hyper::header::CONTENT_TYPE);
                        r
                    }
                };
                if let Some(session) = session {
                    response.headers_mut().insert(
                        "mcp-session-id",
                        session.parse().expect("a valid header value"),
                    );
                }
                response
            }
            // The session ends.
            Route::Mcp if req.method == Method::DELETE => json(StatusCode::OK, &json!({})),
            // GET: no server-initiated event stream (the MCP specification's answer is 405).
            Route::Mcp => {
                let mut r = json(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &json!({"message": "Method Not Allowed"}),
                );
                r.headers_mut().insert(
                    hyper::header::ALLOW,
                    "POST, DELETE".parse().expect("a valid header value"),
                );
                r
            }
            Route::Telemetry | Route::Unknown => {
                json(StatusCode::NOT_FOUND, &json!({"message": "Not Found"}))
            }
        }
    }
}
