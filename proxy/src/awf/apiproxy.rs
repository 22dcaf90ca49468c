//! AWF's api-proxy sidecar, served in the proxy (`reference/awf.md` §5).
//!
//! In `egressd awf` mode the sandbox reaches `http://api-proxy:<port>` (`172.30.0.30`, which
//! the sandbox's DNS listener answers for `api-proxy`). The kernel redirects those connections
//! here like all TCP; [`Proxy::handle`](crate::Proxy) recognises them by their original
//! destination and hands them to [`serve`] *before* the allowlist is consulted (AWF exempts
//! the sidecar too). Per request, in order:
//!
//! 1. `GET /health` and `GET /reflect` are answered here (§5.4);
//! 2. the port names the provider ([`egressd_config::awf::apiproxy::Provider`]); a provider without a
//!    credential gets AWF's error (`404` for OpenAI, `403 provider_not_configured` otherwise);
//! 3. the client's credential, host, proxy and forwarding headers are removed
//!    ([`STRIPPED`]), `Accept-Encoding` becomes `identity` (the token usage is read from
//!    the response, `usage.rs`), an `x-request-id` is kept (when valid) or added, the provider's
//!    headers are added (Copilot: `Copilot-Integration-Id`, `x-initiator`,
//!    `X-Interaction-Id`; Anthropic: `anthropic-version`), the OpenAI base path `/v1` is
//!    added for `api.openai.com`, and Gemini's `key` query parameters are dropped;
//! 4. the credential comes from the broker and goes in the provider's header;
//! 5. the request goes to the provider over the interception's pooled, verified HTTPS client;
//! 6. the response streams back through a tap that reads the token usage the provider
//!    reports and, when the body ends, writes AWF's `token-usage.jsonl` line (`usage.rs`).
//!
//! Every request yields one audit record: named after the upstream host when forwarded,
//! `api-proxy` when answered here (those are left out of AWF's `access.log`, as Squid never
//! sees them in AWF).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use egressd_config::awf::apiproxy::{ApiProxy, Provider, Route, RouteAuth};
use egressd_config::intercept::AuthScheme;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::Proxy;
use crate::audit::{AuditDecision, Proto, Record};
use crate::body::{PendingRecord, ResBody, strip_hop_by_hop};
use crate::intercept::forward::{self, Compressed, SendError};
use crate::intercept::upstream::{UpBody, Upstream};
use crate::respond;

/// Headers removed from every client request (§5.1), besides hop-by-hop ones and
/// `x-forwarded-*`.
pub(crate) const STRIPPED: &[&str] = &[
    "host",
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "forwarded",
    "via",
];
/// `anthropic-version` added when the client sent none.
const ANTHROPIC_VERSION: &str = "2023-06-01";
/// Longest path written to the audit log.
const MAX_AUDIT_PATH: usize = 1024;
/// Largest request body buffered to sign it with SigV4 (AWF's api-proxy body limit).
const MAX_SIGNED_BODY: usize = 10 * 1024 * 1024;
/// The largest request body the api-proxy forwards, as AWF's (§5.1).
const AWF_MAX_BODY: u64 = 10 * 1024 * 1024;

/// The api-proxy of a proxy: its routes, an upstream client, the broker, the rate limits.
pub(crate) struct Server {
    config: ApiProxy,
    upstream: Upstream,
    broker: crate::token::Broker,
    limiter: Option<ratelimit::Limiter>,
    /// What the run has spent of its budgets (shared with the usage taps).
    spent: Arc<budget::Spent>,
    /// The redaction needles of the providers' keys and tokens.
    needles: crate::intercept::redact::NeedleCache,
}

impl Server {
    pub(crate) fn new(config: ApiProxy, upstream: Upstream, broker: crate::token::Broker) -> Self {
        Self {
            limiter: config.rate_limit.map(ratelimit::Limiter::new),
            spent: Arc::new(budget::Spent::new(config.budget)),
            needles: crate::intercept::redact::NeedleCache::default(),
            config,
            upstream,
            broker,
        }
    }
}

/// Serves one sandbox connection to the api-proxy address until it closes.
pub(crate) async fn serve(
    proxy: Arc<Proxy>,
    stream: TcpStream,
    client: SocketAddr,
    orig: SocketAddr,
) {
    if Provider::for_port(orig.port()).is_none() {
        let mut rec = Record::new(&proxy.sandbox, client, Some(orig), Proto::Unknown);
        rec.name = Some(egressd_config::awf::apiproxy::HOST.to_owned());
        rec.port = Some(orig.port());
        rec.reason = "the api-proxy serves ports 10000-10004 only".to_owned();
        crate::respond::reset(stream);
        rec.duration_ms = 0;
        proxy.audit.record(&rec);
        return;
    }
    let request_head = proxy.config.timeouts.request_head;
    let max_buf = crate::transport::limits::hyper_buf_size(proxy.config.limits.max_header_bytes);
    let service = hyper::service::service_fn(move |req| {
        let proxy = Arc::clone(&proxy);
        async move { Ok::<_, Infallible>(handle(&proxy, client, orig, req).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(request_head)
        .max_buf_size(max_buf)
        .keep_alive(true);
    if let Err(e) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(error = %e, "api-proxy client connection ended with an error");
    }
}

async fn handle(
    proxy: &Proxy,
    client: SocketAddr,
    orig: SocketAddr,
    mut req: Request<Incoming>,
) -> Response<ResBody> {
    let server = proxy
        .api_proxy
        .as_ref()
        .expect("serve is called only when the api-proxy is configured");
    let port = orig.port();
    let provider = Provider::for_port(port).unwrap_or(Provider::OpenAi);
    let route = server.config.route(port);
    let mut rec = Record::new(&proxy.sandbox, client, Some(orig), Proto::Https);
    rec.name = Some(route.map_or_else(
        || provider.default_upstream().to_owned(),
        |r| r.upstream.clone(),
    ));
    rec.port = Some(443);
    rec.rule = Some(format!("api-proxy:{}", provider.name()));
    rec.method = Some(req.method().as_str().to_owned());
    let path = req.uri().path();
    rec.path = Some(path.get(..MAX_AUDIT_PATH).unwrap_or(path).to_owned());
    let mut pending = PendingRecord::new(Arc::clone(&proxy.audit), rec);
    // Routes (and the base path put in front) follow the path as servers read it; a path
    // they read differently is refused, since model SDKs never send one.
    let normal = crate::intercept::path::normalize(req.uri().path())
        .map_err(|bad| bad.to_string())
        .and_then(|normal| {
            if crate::intercept::path::is_ambiguous(&normal) {
                return Err(
                    "ambiguous path: an encoded '/', '\\' or '%' (or a raw '\\') \
                            that servers read differently"
                        .to_owned(),
                );
            }
            Ok((normal != req.uri().path()).then(|| normal.into_owned()))
        });
    match normal {
        Ok(None) => {}
        Ok(Some(path)) => {
            if let Ok(uri) = crate::intercept::path::with_path(req.uri(), &path) {
                *req.uri_mut() = uri;
            }
            pending.rec.path = Some(path.get(..MAX_AUDIT_PATH).unwrap_or(&path).to_owned());
        }
        Err(reason) => {
            pending.rec.reason = format!("api-proxy: {reason}");
            pending.rec.status = Some(400);
            return json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"error": {"message": reason, "type": "invalid_request_error"}}),
            );
        }
    }

    if req.method() == Method::GET && matches!(req.uri().path(), "/health" | "/reflect") {
        pending.rec.name = Some(egressd_config::awf::apiproxy::HOST.to_owned());
        pending.rec.port = Some(port);
        pending.rec.decision = AuditDecision::Allow;
        let (status, body) = if req.uri().path() == "/health" {
            health(&server.config, provider)
        } else {
            (StatusCode::OK, reflect(&server.config))
        };
        pending.rec.status = Some(status.as_u16());
        pending.rec.reason = "api-proxy management endpoint".to_owned();
        return json(status, &body);
    }
    // Copilot BYOK: the model list still comes from the Copilot API (AWF §5.1).
    let models_route;
    let route = match route {
        Some(r)
            if req.method() == Method::GET
                && (req.uri().path() == "/models" || req.uri().path().starts_with("/models/")) =>
        {
            match &r.models_via {
                Some((host, credential)) => {
                    models_route = Route::new(r.provider, host.clone(), Some(credential.clone()));
                    pending.rec.name = Some(host.clone());
                    Some(&models_route)
                }
                None => Some(r),
            }
        }
        other => other,
    };
    let Some((route, credential)) = route.and_then(|r| Some((r, r.credential.as_deref()?))) else {
        pending.rec.name = Some(egressd_config::awf::apiproxy::HOST.to_owned());
        pending.rec.port = Some(port);
        pending.rec.reason = format!("api-proxy: {} is not configured", provider.name());
        let (status, body) = not_configured(provider);
        pending.rec.status = Some(status.as_u16());
        return body;
    };
    pending.rec.credential = Some(credential.to_owned());
    // Model invocations (not `GET`s such as `/models`) spend the run's budgets.
    let invocation = req.method() != Method::GET;
    if invocation && let Err(spent) = server.spent.check() {
        pending.rec.reason = format!("api-proxy budget: {}", spent.message());
        pending.rec.status = Some(403);
        return json(StatusCode::FORBIDDEN, &spent.body());
    }
    if let Some(limiter) = &server.limiter {
        let bytes = req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .unwrap_or(0);
        let now = std::time::Instant::now();
        if let Err(exceeded) = limiter.admit(provider, bytes, now) {
            pending.rec.reason = format!(
                "api-proxy rate limit: {} ({})",
                exceeded.window.name(),
                exceeded.limit
            );
            pending.rec.status = Some(429);
            return rate_limited(provider, &exceeded, limiter.remaining(provider, now));
        }
    }
    // AWF refuses bodies over 10 MiB (§5.1); a lower `limits.max_body_bytes` wins.
    let body_limit = proxy
        .config
        .limits
        .max_body_bytes
        .map_or(AWF_MAX_BODY, |l| l.min(AWF_MAX_BODY));
    if let Some(over) = crate::body::BodyTooLarge::declared(&req, Some(body_limit)) {
        return body_too_large(&mut pending, provider, &over);
    }
    let (mut parts, body) = req.into_parts();
    if let Err(reason) = prepare(&server.config, route, &mut parts) {
        return refuse(
            &mut pending,
            provider,
            StatusCode::BAD_REQUEST,
            &reason,
            "invalid_request",
            false,
        );
    }
    let token = match server.broker.get(credential).await {
        Ok(t) => t,
        Err(e) => {
            return refuse(
                &mut pending,
                provider,
                StatusCode::SERVICE_UNAVAILABLE,
                &e.message,
                "credential_unavailable",
                e.retryable,
            );
        }
    };
    pending.rec.token_source = Some(token.source.to_owned());
    let body: UpBody =
        crate::body::Counted::new(body, Arc::clone(&pending.sent), Some(body_limit)).boxed_unsync();
    if crate::body::may_be_json(&parts)
        && let Some(encoding) = crate::body::content_encoding(&parts.headers)
    {
        let reason = format!(
            "a request body with content-encoding {encoding} cannot be checked for tool URLs; \
             send it uncompressed"
        );
        let resp = refuse(
            &mut pending,
            provider,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &reason,
            "invalid_request",
            false,
        );
        pending.rec.reason = format!("api-proxy: {reason}");
        return resp;
    }
    let body = if crate::body::may_be_json(&parts) {
        // The whole body is held here: bounded in size (the body limit) and in time, so a
        // client dribbling bodies on many connections cannot pin egressd's memory for long.
        let read = tokio::time::timeout(
            proxy.config.timeouts.idle,
            normalise_model(provider, &mut parts.headers, body),
        )
        .await;
        let Ok(read) = read else {
            return refuse(
                &mut pending,
                provider,
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive within timeouts.idle",
                "request_timeout",
                true,
            );
        };
        match read {
            Ok(bytes) => {
                // The provider must not be asked to fetch what the allowlist does not name
                // (intercept/tools.rs).
                if let Err(refusal) = crate::intercept::tools::check_body(
                    &bytes,
                    &proxy.config.policy,
                    egressd_config::intercept::ToolUrls::Allowlist,
                ) {
                    let (status, kind) = if refusal.field.is_empty() {
                        (StatusCode::BAD_REQUEST, "invalid_request")
                    } else {
                        (StatusCode::FORBIDDEN, "tool_url_not_allowed")
                    };
                    let resp = refuse(&mut pending, provider, status, &refusal.reason, kind, false);
                    pending.rec.reason = format!("api-proxy: {}", refusal.reason);
                    return resp;
                }
                Full::new(bytes)
                    .map_err(|never| match never {})
                    .boxed_unsync()
            }
            Err(crate::body::BodyError::TooLarge(over)) => {
                return body_too_large(&mut pending, provider, &over);
            }
            Err(crate::body::BodyError::Client(e)) => {
                return refuse(
                    &mut pending,
                    provider,
                    StatusCode::BAD_REQUEST,
                    &format!("reading the request body: {e}"),
                    "invalid_request",
                    false,
                );
            }
        }
    } else {
        body
    };
    let body = match apply_auth(route, &token, &mut parts, body).await {
        Ok(body) => body,
        Err((status, reason)) => {
            let kind = match status {
                StatusCode::PAYLOAD_TOO_LARGE => "request_too_large",
                StatusCode::BAD_REQUEST => "invalid_request",
                _ => "credential_unavailable",
            };
            return refuse(&mut pending, provider, status, reason, kind, false);
        }
    };
    let tracked = Tracked {
        request_id: header_text(&parts.headers, "x-request-id").unwrap_or_default(),
        x_initiator: header_text(&parts.headers, "x-initiator"),
        path: pending.rec.path.clone().unwrap_or_default(),
        started: std::time::Instant::now(),
    };
    if invocation {
        server.spent.count_run();
    }
    let request = Request::from_parts(parts, body);
    let idle = proxy.config.timeouts.idle;
    let sent = forward::send(
        &server.upstream.auto,
        request,
        idle,
        &pending.sent,
        Some(body_limit),
    );
    let resp = match sent.await {
        Ok(r) => r,
        Err(SendError::TooLarge(over)) => return body_too_large(&mut pending, provider, &over),
        Err(e) => {
            let (status, reason) = (e.status(), e.reason());
            if e.went_ahead() {
                pending.rec.decision = AuditDecision::Allow;
                pending.rec.failed = true;
            }
            return refuse(
                &mut pending,
                provider,
                status,
                &reason,
                "upstream_error",
                true,
            );
        }
    };
    pending.rec.decision = AuditDecision::Allow;
    pending.rec.status = Some(resp.status().as_u16());
    pending.rec.reason = "api-proxy".to_owned();
    let spent = server.spent.enabled().then(|| Arc::clone(&server.spent));
    let resp = track_usage(resp, tracked, provider, Arc::clone(&proxy.audit), spent);
    // The provider must not be able to echo the key back to the sandbox (redact.rs).
    let reflected = match (&route.auth, token.aws.as_ref()) {
        (RouteAuth::SigV4 { .. }, Some(aws)) => aws.session_token.expose().as_bytes().to_vec(),
        _ => token
            .bearer()
            .map(|s| s.expose().as_bytes().to_vec())
            .unwrap_or_default(),
    };
    match forward::answer(resp, server.needles.get(&reflected), pending) {
        Ok(resp) => resp,
        Err(refused) => {
            let Compressed {
                encoding,
                mut pending,
            } = *refused;
            let message = format!(
                "the provider compressed its answer (content-encoding: {encoding}) although \
                 egressd asked for identity; a compressed answer cannot be checked for the key"
            );
            pending.rec.reason = format!("api-proxy: {message}");
            pending.rec.status = Some(502);
            pending.rec.failed = true;
            json(
                StatusCode::BAD_GATEWAY,
                &serde_json::json!({"error": {"message": message, "type": "api_proxy_error"}}),
            )
        }
    }
}

/// Reads a JSON request body (bounded by the body limit) and strips a redundant
/// `<provider>/` prefix from its `model` (`copilot/auto` becomes `auto`), as AWF does for
/// harnesses that name models the LiteLLM way; other bodies go on byte for byte.
async fn normalise_model(
    provider: Provider,
    headers: &mut HeaderMap,
    body: UpBody,
) -> Result<Bytes, crate::body::BodyError> {
    let bytes = body.collect().await?.to_bytes();
    let bytes = match strip_provider_prefix(&bytes, provider) {
        Some(rewritten) => {
            headers.insert(
                hyper::header::CONTENT_LENGTH,
                HeaderValue::from(rewritten.len()),
            );
            Bytes::from(rewritten)
        }
        None => bytes,
    };
    Ok(bytes)
}

/// The body with `"model": "<provider>/<name>"` turned into `"model": "<name>"`, or `None`
/// when there is nothing to change (not a JSON object, no such prefix).
pub(crate) fn strip_provider_prefix(body: &[u8], provider: Provider) -> Option<Vec<u8>> {
    let mut value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let model = value.get("model")?.as_str()?;
    let (prefix, name) = model.split_once('/')?;
    if !prefix.eq_ignore_ascii_case(provider.name()) || name.is_empty() {
        return None;
    }
    value["model"] = serde_json::Value::String(name.to_owned());
    serde_json::to_vec(&value).ok()
}

/// What a token-usage line needs from the request.
struct Tracked {
    request_id: String,
    x_initiator: Option<String>,
    path: String,
    started: std::time::Instant,
}

/// A header's value as text, if it has one.
fn header_text(headers: &hyper::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Taps the response body for the provider's token usage; when it ends, one line goes to
/// AWF's `token-usage.jsonl` (only when the provider reported usage) and the usage is
/// counted against the budgets. Without either reader the body is passed on untapped.
fn track_usage(
    resp: Response<Incoming>,
    tracked: Tracked,
    provider: Provider,
    audit: Arc<crate::audit::AuditLog>,
    spent: Option<Arc<budget::Spent>>,
) -> Response<ResBody> {
    if spent.is_none() && !audit.keeps_token_usage() {
        return resp.map(BodyExt::boxed_unsync);
    }
    let streaming = resp
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/event-stream"));
    let status = resp.status().as_u16();
    resp.map(|body| {
        usage::UsageTap::new(
            body.boxed_unsync(),
            streaming,
            move |usage: usage::Usage| {
                if !usage.found {
                    return;
                }
                if let Some(spent) = &spent {
                    spent.add_usage(&usage);
                }
                audit.token_usage(&crate::audit::TokenUsageLine {
                    schema: crate::audit::TOKEN_USAGE_SCHEMA,
                    timestamp: time::OffsetDateTime::now_utc()
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                    event: "token_usage",
                    request_id: &tracked.request_id,
                    provider: provider.name(),
                    model: usage.model.as_deref().unwrap_or("unknown"),
                    path: &tracked.path,
                    status,
                    streaming,
                    input_tokens: usage.input_tokens,
                    output_tokens: usage.output_tokens,
                    cache_read_tokens: usage.cache_read_tokens,
                    cache_write_tokens: usage.cache_write_tokens,
                    duration_ms: u64::try_from(tracked.started.elapsed().as_millis())
                        .unwrap_or(u64::MAX),
                    x_initiator: tracked.x_initiator.as_deref(),
                    reasoning_tokens: usage.reasoning_tokens,
                });
            },
        )
        .boxed_unsync()
    })
}

/// `413` in the provider's error shape for a body over `limits.max_body_bytes`.
fn body_too_large(
    pending: &mut PendingRecord,
    provider: Provider,
    over: &crate::body::BodyTooLarge,
) -> Response<ResBody> {
    refuse(
        pending,
        provider,
        StatusCode::PAYLOAD_TOO_LARGE,
        &over.to_string(),
        "request_too_large",
        false,
    )
}

/// An [`error`] answer that the request's audit record also tells: `message` becomes its
/// reason and `status` its status (a caller that logs a different reason sets it after).
fn refuse(
    pending: &mut PendingRecord,
    provider: Provider,
    status: StatusCode,
    message: &str,
    kind: &str,
    retryable: bool,
) -> Response<ResBody> {
    message.clone_into(&mut pending.rec.reason);
    pending.rec.status = Some(status.as_u16());
    error(status, provider, message, kind, retryable)
}

/// Turns the client's request into the upstream one, without the credential: target,
/// stripped headers, request id and the provider's extra headers.
pub(crate) fn prepare(
    config: &ApiProxy,
    route: &Route,
    parts: &mut hyper::http::request::Parts,
) -> Result<(), String> {
    let pq = upstream_path(route, &parts.uri);
    parts.uri = Uri::builder()
        .scheme("https")
        .authority(route.upstream.as_str())
        .path_and_query(pq)
        .build()
        .map_err(|e| format!("bad request target: {e}"))?;
    parts.version = hyper::Version::HTTP_11;
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    for name in STRIPPED {
        headers.remove(*name);
    }
    let forwarded: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-forwarded-"))
        .cloned()
        .collect();
    for name in forwarded {
        headers.remove(name);
    }
    let id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_request_id(v))
        .map(str::to_owned)
        .unwrap_or_else(new_request_id);
    headers.remove("x-request-id");
    headers.insert("x-request-id", header(&id));
    // AWF narrows Accept-Encoding to what its token tracker decodes; egressd's reads only
    // plain bodies (usage.rs), so it asks for those.
    headers.insert(
        hyper::header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    match route.provider {
        Provider::Anthropic => {
            if !headers.contains_key("anthropic-version") {
                headers.insert("anthropic-version", header(ANTHROPIC_VERSION));
            }
        }
        Provider::Copilot => {
            headers.remove("copilot-integration-id");
            headers.insert("copilot-integration-id", header(&config.integration_id));
            let host = route.upstream.to_ascii_lowercase();
            if host == "githubcopilot.com" || host.ends_with(".githubcopilot.com") {
                if headers.get("x-initiator").is_none_or(HeaderValue::is_empty) {
                    headers.insert("x-initiator", header("agent"));
                }
                let client_id = headers
                    .get_all("x-interaction-id")
                    .iter()
                    .find(|v| !v.is_empty())
                    .cloned();
                headers.remove("x-interaction-id");
                let id = client_id.or_else(|| config.interaction_id.as_deref().map(header));
                if let Some(id) = id {
                    headers.insert("x-interaction-id", id);
                }
            }
        }
        Provider::OpenAi | Provider::Gemini | Provider::Vertex => {}
    }
    Ok(())
}

/// Puts the credential on the request as the route says; returns the body to send (buffered
/// when SigV4 signs it).
async fn apply_auth(
    route: &Route,
    token: &crate::token::Token,
    parts: &mut hyper::http::request::Parts,
    body: UpBody,
) -> Result<UpBody, (StatusCode, &'static str)> {
    let unusable = (
        StatusCode::SERVICE_UNAVAILABLE,
        "the credential does not fit the route (a token for a header, AWS keys for SigV4)",
    );
    let bad_value = (
        StatusCode::SERVICE_UNAVAILABLE,
        "the token is not a valid header value",
    );
    if let RouteAuth::SigV4 { region, service } = &route.auth {
        let aws = token.aws.as_ref().ok_or(unusable)?;
        let bytes = http_body_util::Limited::new(body, MAX_SIGNED_BODY)
            .collect()
            .await
            .map_err(|e| match e.downcast_ref() {
                Some(crate::body::BodyError::TooLarge(_)) => (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body larger than limits.max_body_bytes",
                ),
                Some(crate::body::BodyError::Client(_)) => (
                    StatusCode::BAD_REQUEST,
                    "the request body could not be read",
                ),
                None => (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the request body is over 10 MiB",
                ),
            })?
            .to_bytes();
        let keys = crate::intercept::sigv4::Keys {
            access_key_id: aws.access_key_id.expose(),
            secret_access_key: aws.secret_access_key.expose(),
            session_token: Some(aws.session_token.expose()),
        };
        let scope = crate::intercept::sigv4::Scope {
            region,
            service,
            now: time::OffsetDateTime::now_utc(),
            content_sha256: false,
        };
        crate::intercept::sigv4::sign(
            parts.method.as_str(),
            &parts.uri,
            &mut parts.headers,
            &crate::intercept::sigv4::sha256_hex(&bytes),
            keys,
            scope,
        )
        .map_err(|_| {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the request could not be signed",
            )
        })?;
        return Ok(Full::new(bytes)
            .map_err(|never| match never {})
            .boxed_unsync());
    }
    let secret = token.bearer().ok_or(unusable)?;
    let secret = secret.expose();
    let (name, value) = match &route.auth {
        RouteAuth::Provider => {
            let scheme = token
                .scheme
                .unwrap_or_else(|| AuthScheme::for_host(&route.upstream));
            auth(route.provider, secret, scheme, &mut parts.headers).map_err(|()| bad_value)?;
            return Ok(body);
        }
        RouteAuth::Header(name) => (
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad_value)?,
            secret.to_owned(),
        ),
        RouteAuth::Bearer => (hyper::header::AUTHORIZATION, format!("Bearer {secret}")),
        RouteAuth::AzureKey => (HeaderName::from_static("api-key"), secret.to_owned()),
        RouteAuth::SigV4 { .. } => unreachable!("handled above"),
    };
    let mut value = HeaderValue::from_str(&value).map_err(|_| bad_value)?;
    value.set_sensitive(true);
    parts.headers.insert(name, value);
    token.add_required_headers(&mut parts.headers);
    Ok(body)
}

/// The credential in the provider's header (§5.1).
pub(crate) fn auth(
    provider: Provider,
    secret: &str,
    scheme: AuthScheme,
    headers: &mut HeaderMap,
) -> Result<(), ()> {
    let (name, value) = match provider {
        Provider::OpenAi => ("authorization", format!("Bearer {secret}")),
        Provider::Copilot => ("authorization", format!("{} {secret}", scheme.as_str())),
        Provider::Anthropic => ("x-api-key", secret.to_owned()),
        Provider::Gemini | Provider::Vertex => ("x-goog-api-key", secret.to_owned()),
    };
    let mut value = HeaderValue::from_str(&value).map_err(|_| ())?;
    value.set_sensitive(true);
    headers.insert(name, value);
    Ok(())
}

/// Base path + request path (OpenAI's `/v1` on api.openai.com, not doubled); Gemini's key
/// query parameters dropped.
fn upstream_path(route: &Route, uri: &Uri) -> String {
    let path = uri.path();
    let path = if let Some(base) = route.base_path.as_deref().filter(|b| !b.is_empty()) {
        if path == base
            || path.starts_with(&format!("{base}/"))
            || (base.starts_with("/openai/") && path.starts_with("/openai/"))
        {
            // Already below the base, or an Azure OpenAI path of its own (the Copilot CLI's
            // Azure provider sends `/openai/v1/...` for a base of `/openai/deployments/X`).
            path.to_owned()
        } else if path == "/" {
            base.to_owned()
        } else {
            format!("{base}{path}")
        }
    } else if route.provider == Provider::OpenAi
        && route.upstream.eq_ignore_ascii_case("api.openai.com")
        && path != "/v1"
        && !path.starts_with("/v1/")
    {
        format!("/v1{path}")
    } else {
        path.to_owned()
    };
    let query = uri.query().map(|q| {
        if route.provider == Provider::Gemini {
            q.split('&')
                .filter(|kv| {
                    let k = kv.split('=').next().unwrap_or("");
                    !matches!(k, "key" | "apiKey" | "api_key")
                })
                .collect::<Vec<_>>()
                .join("&")
        } else {
            q.to_owned()
        }
    });
    match query {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path,
    }
}

fn valid_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

/// A random UUID (version 4).
fn new_request_id() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn header(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// `GET /health` (§5.4): the aggregate on port 10000, the provider's state elsewhere.
fn health(config: &ApiProxy, provider: Provider) -> (StatusCode, serde_json::Value) {
    if provider == Provider::OpenAi {
        let providers: serde_json::Map<String, serde_json::Value> = Provider::ALL
            .into_iter()
            .map(|p| (p.name().to_owned(), config.configured(p).into()))
            .collect();
        return (
            StatusCode::OK,
            serde_json::json!({
                "status": "healthy",
                "service": "awf-api-proxy",
                "squid_proxy": "egressd",
                "providers": providers,
                "key_validation": {},
                "models_fetch_complete": true,
                "model_fallback": null,
                "metrics_summary": {},
                "rate_limits": {},
            }),
        );
    }
    let service = format!("awf-api-proxy-{}", provider.name());
    if config.configured(provider) {
        (
            StatusCode::OK,
            serde_json::json!({"status": "healthy", "service": service}),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "not_configured", "service": service}),
        )
    }
}

/// `GET /reflect` (§5.4): the endpoints and whether each is configured.
fn reflect(config: &ApiProxy) -> serde_json::Value {
    let endpoints: Vec<serde_json::Value> = Provider::ALL
        .into_iter()
        .map(|p| {
            serde_json::json!({
                "provider": p.name(),
                "port": p.port(),
                "base_url": format!("http://{}:{}", egressd_config::awf::apiproxy::HOST, p.port()),
                "configured": config.configured(p),
                "models": null,
                "models_url": null,
            })
        })
        .collect();
    serde_json::json!({"endpoints": endpoints, "models_fetch_complete": true})
}

/// AWF's answer for a provider without a credential: plain `404` on OpenAI's port, `403
/// provider_not_configured` elsewhere.
fn not_configured(provider: Provider) -> (StatusCode, Response<ResBody>) {
    if provider == Provider::OpenAi {
        let mut resp = Response::new(full(Bytes::from_static(b"Not Found")));
        *resp.status_mut() = StatusCode::NOT_FOUND;
        return (StatusCode::NOT_FOUND, resp);
    }
    let message = format!(
        "The {} provider is not configured in the api-proxy (egressd holds no credential for it)",
        provider.name()
    );
    (
        StatusCode::FORBIDDEN,
        error(
            StatusCode::FORBIDDEN,
            provider,
            &message,
            "provider_not_configured",
            false,
        ),
    )
}

/// AWF's error answer (§5.4), rendered in `respond.rs`.
fn error(
    status: StatusCode,
    provider: Provider,
    message: &str,
    kind: &str,
    retryable: bool,
) -> Response<ResBody> {
    let awf = respond::AwfError {
        message,
        kind,
        provider: provider.name(),
        port: provider.port(),
        retryable,
    };
    respond::boxed(respond::awf_error(status, &awf))
}

/// AWF's `429` (§5.5): `Retry-After`, `X-RateLimit-*`, `X-Request-ID` and a
/// `rate_limit_error` body.
fn rate_limited(
    provider: Provider,
    exceeded: &ratelimit::Exceeded,
    remaining: u64,
) -> Response<ResBody> {
    let window = exceeded.window.name();
    let mut resp = json(
        StatusCode::TOO_MANY_REQUESTS,
        &serde_json::json!({"error": {
            "type": "rate_limit_error",
            "message": format!(
                "Rate limit exceeded for {}: {} {window}. Retry after {} seconds.",
                provider.name(),
                exceeded.limit,
                exceeded.retry_after
            ),
            "provider": provider.name(),
            "limit": exceeded.limit,
            "window": window,
            "retry_after": exceeded.retry_after,
        }}),
    );
    let headers = resp.headers_mut();
    headers.insert("retry-after", HeaderValue::from(exceeded.retry_after));
    headers.insert("x-ratelimit-limit", HeaderValue::from(exceeded.limit));
    headers.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
    headers.insert("x-ratelimit-reset", HeaderValue::from(exceeded.retry_after));
    headers.insert("x-request-id", header(&new_request_id()));
    resp
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<ResBody> {
    respond::boxed(respond::json(status, value))
}

fn full(bytes: Bytes) -> ResBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

mod budget;
mod ratelimit;
#[cfg(test)]
mod tests;
mod usage;
