//! The server side of interception: terminate TLS with a leaf from the run's CA, serve
//! HTTP/1.1 or h2 with hyper, and judge every request on its own.
//!
//! Per request, in order:
//!
//! 0. a head over `limits.max_header_bytes` gets `431` (see `conn/limits.rs`);
//! 1. the `Host` / `:authority` must name the SNI the connection was opened for, else `421`
//!    and nothing is injected (this stops domain fronting and h2 connection reuse across
//!    hosts);
//! 2. `CONNECT` is refused, and so is a body over `limits.max_body_bytes` (`413`: at once
//!    when `Content-Length` says so, else when the streamed body crosses it, before that
//!    chunk is forwarded);
//! 3. the first rule of this host whose credential applies to the method and path is
//!    chosen; the client's credential headers are removed and the minted token is put in
//!    the rule's header and format (a `{scheme}` there is the token's scheme, or the one for
//!    this host: `AuthScheme::for_host`); the rule's `set_headers` replace the client's
//!    values and its `default_headers` fill in those the client did not send. A credential
//!    that cannot be had gives a `503` JSON body, never a request without its credential;
//!    when the host's rules name `spiffe`, its SVID must be valid first (else `503`, before
//!    any token is minted);
//! 4. the request goes to the real upstream over a pooled, verified connection (for a
//!    `spiffe` host: mTLS with the SVID, the upstream's SPIFFE ID checked, else `502`);
//!    redirects are passed to the client, never followed; bodies stream both ways;
//! 5. an HTTP/1.1 upgrade (WebSocket) is relayed once both sides agreed to it.
//!
//! The connection waits at most `timeouts.request_head` for its first request, and is
//! closed once no byte has moved either way for `timeouts.idle` (`idle.rs`).
//!
//! Every request yields one audit record (method, path, status, credential, token source and
//! remaining lifetime, and for a `spiffe` host the SPIFFE IDs presented and verified), never
//! the token.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use egressd_config::InterceptRule;
use egressd_config::intercept::{Apply, AuthScheme, ToolUrls};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HOST, HeaderName, HeaderValue, UPGRADE};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};

use super::forward::{self, Compressed, SendError};
use super::sigv4;
use super::upstream::UpBody;
use crate::Proxy;
use crate::audit::{AuditDecision, Proto, Record};
use crate::body::{BodyTooLarge, Counted, PendingRecord, ResBody, strip_hop_by_hop};
use crate::respond::{self, JsonError};
use crate::spiffe::{DialError, SpiffePeer};
use crate::transport::limits;
use crate::transport::relay::relay;

/// Longest path written to the audit log.
const MAX_AUDIT_PATH: usize = 1024;
/// Largest request body egressd buffers to sign it (SigV4 hashes the payload) or to check
/// the tool URLs of a model request.
const MAX_SIGNED_BODY: usize = 16 << 20;
/// How long an idle connection's graceful shutdown (h2 GOAWAY) may take before it is dropped.
const GRACEFUL_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(2);

/// Why a credential could not be applied to a request.
#[derive(Debug)]
enum InjectError {
    /// The broker has no token (503; retryable as the broker says), or withholds it from
    /// this run's user (403, `TokenErrorKind::Forbidden`).
    Token(crate::token::TokenError),
    /// The token or rule cannot produce a request (503, not retryable).
    Unusable(&'static str),
    /// The body is too large to buffer for signing, or over `limits.max_body_bytes` (413;
    /// the message says which).
    BodyTooLarge(String),
    /// The client's body failed while it was read for signing (400).
    BodyFailed(String),
    /// The request cannot be signed (400).
    Sign(String),
}

impl InjectError {
    /// The status, message and retryability the client gets.
    fn response(self) -> (StatusCode, String, bool) {
        match self {
            Self::Token(e) if e.kind == crate::token::TokenErrorKind::Forbidden => {
                (StatusCode::FORBIDDEN, e.message, false)
            }
            Self::Token(e) => (StatusCode::SERVICE_UNAVAILABLE, e.message, e.retryable),
            Self::Unusable(why) => (StatusCode::SERVICE_UNAVAILABLE, why.to_owned(), false),
            Self::BodyTooLarge(why) => (StatusCode::PAYLOAD_TOO_LARGE, why, false),
            Self::BodyFailed(why) => (StatusCode::BAD_REQUEST, why, false),
            Self::Sign(why) => (
                StatusCode::BAD_REQUEST,
                format!("cannot sign the request: {why}"),
                false,
            ),
        }
    }
}

/// One intercepted connection's context, shared by its requests.
struct Conn {
    proxy: Arc<Proxy>,
    sni: String,
    client: SocketAddr,
    orig: SocketAddr,
    rules: Vec<InterceptRule>,
}

/// Terminates TLS on `io` (the ClientHello replayed) and serves its requests until the
/// client is done.
pub(crate) async fn serve<IO>(
    proxy: Arc<Proxy>,
    io: IO,
    sni: String,
    client: SocketAddr,
    orig: SocketAddr,
    rules: Vec<InterceptRule>,
) -> Result<(), String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(interception) = proxy.interception.as_ref() else {
        return Err("interception is not configured".to_owned());
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&interception.tls));
    let tls = tokio::time::timeout(proxy.config.timeouts.tls_handshake, acceptor.accept(io))
        .await
        .map_err(|_| "TLS handshake timed out (timeouts.tls_handshake)".to_owned())?
        .map_err(|e| format!("TLS handshake with the client failed: {e}"))?;
    let conn = Arc::new(Conn {
        proxy: Arc::clone(&proxy),
        sni,
        client,
        orig,
        rules,
    });
    // Set by the first request: until then the connection runs under `request_head`.
    let first_request = Arc::new(tokio::sync::Notify::new());
    // Requests waiting for their response head: the idle timer leaves the connection alone
    // meanwhile (each wait has its own bound, `timeouts.idle`, see `handle`).
    let waiting = Arc::new(AtomicUsize::new(0));
    let service = {
        let (first_request, waiting) = (Arc::clone(&first_request), Arc::clone(&waiting));
        hyper::service::service_fn(move |req| {
            first_request.notify_one();
            let conn = Arc::clone(&conn);
            let waiting = Arc::clone(&waiting);
            async move {
                waiting.fetch_add(1, Ordering::Relaxed);
                let _done = Waiting(waiting);
                Ok::<_, Infallible>(conn.handle(req).await)
            }
        })
    };
    let timeouts = &proxy.config.timeouts;
    let limit = proxy.config.limits.max_header_bytes;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.request_head)
        .max_buf_size(limits::hyper_buf_size(limit))
        .max_headers(limits::HYPER_MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits::hyper_buf_size(limit)).unwrap_or(u32::MAX));
    let idle = super::idle::Idle::new();
    let tls = super::idle::Activity::new(tls, Arc::clone(&idle));
    let served = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
    tokio::pin!(served);
    // hyper's HTTP/1 header timer starts only once it knows the protocol, and HTTP/2 has
    // none: bound the wait for the first request here (a client that finishes the TLS
    // handshake and then sends nothing, or dribbles its first request).
    tokio::select! {
        result = &mut served => {
            return result.map_err(|e| served_error(&*e, limit));
        }
        () = first_request.notified() => {}
        () = tokio::time::sleep(timeouts.request_head) => {
            return Err("no request within the request head timeout (timeouts.request_head)".to_owned());
        }
    }
    // Then the connection lives as long as bytes move: silent for `idle`, it is closed
    // (h2 with a GOAWAY), as a relayed connection is.
    loop {
        tokio::select! {
            result = &mut served => return result.map_err(|e| served_error(&*e, limit)),
            () = tokio::time::sleep_until(idle.deadline(timeouts.idle)) => {
                if waiting.load(Ordering::Relaxed) > 0 {
                    // Not idle: a request waits for its upstream. Look again later.
                    idle.touch();
                } else if idle.expired(timeouts.idle) {
                    break;
                }
            }
        }
    }
    served.as_mut().graceful_shutdown();
    // Nothing is in flight on a silent connection, so this ends at once unless the client
    // stalls the shutdown itself.
    let _ = tokio::time::timeout(GRACEFUL_SHUTDOWN, served).await;
    tracing::debug!(%client, "intercepted connection closed after the idle timeout");
    Ok(())
}

/// Decrements a connection's count of requests waiting for their response head when the
/// request's handler finishes or is dropped.
struct Waiting(Arc<AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The audit reason for a connection hyper ended with an error.
fn served_error(e: &(dyn std::error::Error + Send + Sync + 'static), limit: u32) -> String {
    match e.downcast_ref::<hyper::Error>() {
        Some(h) if h.is_parse_too_large() => limits::too_large_reason(limit),
        _ => format!("serving intercepted HTTP: {e}"),
    }
}

impl Conn {
    async fn handle(&self, mut req: Request<Incoming>) -> Response<ResBody> {
        let mut pending = PendingRecord::new(Arc::clone(&self.proxy.audit), self.record(&req));
        let limit = self.proxy.config.limits.max_header_bytes;
        if let Some(reason) = limits::head_too_large(&req, limit) {
            let status = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
            return self.refuse(pending, status, &reason, None, false);
        }
        if let Err(authority) = self.check_authority(&req) {
            let reason = format!(
                "misdirected request: this connection is for {}, the request names {authority}",
                self.sni
            );
            return self.refuse(
                pending,
                StatusCode::MISDIRECTED_REQUEST,
                &reason,
                None,
                false,
            );
        }
        if req.method() == Method::CONNECT {
            let reason = "CONNECT is not allowed on an intercepted connection";
            return self.refuse(pending, StatusCode::METHOD_NOT_ALLOWED, reason, None, false);
        }
        // The path as the server will read it (the upstream is sent that path); the
        // credential follows it, and an ambiguous one must get the same credential whichever
        // way the server reads it. A path already normal is not copied.
        let normalised = match super::path::normalize(req.uri().path()) {
            Ok(std::borrow::Cow::Borrowed(_)) => None,
            Ok(std::borrow::Cow::Owned(path)) => Some(path),
            Err(bad) => {
                let status = StatusCode::BAD_REQUEST;
                return self.refuse(pending, status, &bad.to_string(), None, false);
            }
        };
        if let Some(path) = normalised {
            match super::path::with_path(req.uri(), &path) {
                Ok(uri) => *req.uri_mut() = uri,
                Err(reason) => {
                    return self.refuse(pending, StatusCode::BAD_REQUEST, &reason, None, false);
                }
            }
            pending.rec.path = Some(path.get(..MAX_AUDIT_PATH).unwrap_or(&path).to_owned());
        }
        let path = req.uri().path();
        let method = req.method().as_str();
        let rule_for = |path: &str| {
            self.rules
                .iter()
                .find(|r| r.credential.is_some() && r.applies_to(method, path))
        };
        let rule = rule_for(path);
        if super::path::is_ambiguous(path)
            && super::path::readings(path)
                .iter()
                .any(|reading| !same_rule(rule, rule_for(reading)))
        {
            let reason = "ambiguous path: an encoded '/', '\\' or '%' (or a raw '\\' or a \
                          ';parameter') that servers read differently would decide whether the \
                          credential is sent; send the path without them";
            return self.refuse(pending, StatusCode::BAD_REQUEST, reason, None, false);
        }
        if let Some(reason) = method_override(&req, &self.rules) {
            return self.refuse(pending, StatusCode::BAD_REQUEST, &reason, None, false);
        }
        // mTLS is per connection: a host whose rules name `spiffe` uses it for every request.
        let spiffe = self.rules.iter().find_map(|r| {
            r.spiffe.as_ref()?;
            Some((r, self.interception().spiffe.get(&r.host.text)?))
        });
        pending.rec.rule = rule.or(spiffe.map(|(r, _)| r)).map(|r| r.host.to_string());
        let body_limit = self.proxy.config.limits.max_body_bytes;
        if let Some(over) = BodyTooLarge::declared(&req, body_limit) {
            let status = StatusCode::PAYLOAD_TOO_LARGE;
            return self.refuse(pending, status, &over.to_string(), None, false);
        }
        if let Some((_, route)) = spiffe
            && let Err(unavailable) = route.source.ready().await
        {
            let reason = unavailable.to_string();
            let status = StatusCode::SERVICE_UNAVAILABLE;
            return self.refuse(pending, status, &reason, Some(&route.credential), true);
        }
        let upgrade = is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        parts.uri = match self.upstream_uri(&parts.uri) {
            Ok(uri) => uri,
            Err(reason) => {
                return self.refuse(pending, StatusCode::BAD_REQUEST, &reason, None, false);
            }
        };
        let mut body: UpBody =
            Counted::new(body, Arc::clone(&pending.sent), body_limit).boxed_unsync();
        let upgrade_headers = upgrade.is_some().then(|| {
            (
                parts.headers.get(UPGRADE).cloned(),
                parts.headers.get(CONNECTION).cloned(),
            )
        });
        strip_hop_by_hop(&mut parts.headers);
        if let Some((Some(up), conn)) = upgrade_headers {
            parts.headers.insert(UPGRADE, up);
            parts.headers.insert(
                CONNECTION,
                conn.unwrap_or(HeaderValue::from_static("upgrade")),
            );
        }
        parts.headers.remove(HOST);
        // The client's HTTP version says nothing about the upstream connection: the pooled
        // client speaks h2 where the upstream negotiated it, HTTP/1.1 otherwise.
        parts.version = hyper::Version::HTTP_11;
        let mut reflected = None;
        if let Some(rule) = rule {
            for name in &rule.strip {
                parts.headers.remove(name.as_str());
            }
            let credential = rule.credential.as_deref().unwrap_or_default();
            pending.rec.credential = Some(credential.to_owned());
            if rule.tool_urls != ToolUrls::Allow && crate::body::may_be_json(&parts) {
                // A model request may ask the provider to fetch URLs itself (tools.rs): read
                // (bounded in size and time) and checked before any credential is had. A body
                // egressd cannot read as JSON is refused: the provider might.
                if let Some(encoding) = crate::body::content_encoding(&parts.headers) {
                    let reason = format!(
                        "a request body with content-encoding {encoding} cannot be checked \
                         for tool URLs; send it uncompressed"
                    );
                    let status = StatusCode::UNSUPPORTED_MEDIA_TYPE;
                    return self.refuse(pending, status, &reason, Some(credential), false);
                }
                let idle = self.proxy.config.timeouts.idle;
                let read =
                    tokio::time::timeout(idle, Limited::new(body, MAX_SIGNED_BODY).collect());
                let bytes = match read.await {
                    Ok(Ok(collected)) => collected.to_bytes(),
                    Ok(Err(e)) => {
                        let (status, message, retryable) = signing_body_error(&*e).response();
                        return self.refuse(pending, status, &message, Some(credential), retryable);
                    }
                    Err(_) => {
                        let reason = "the request body did not arrive within timeouts.idle";
                        let status = StatusCode::REQUEST_TIMEOUT;
                        return self.refuse(pending, status, reason, Some(credential), true);
                    }
                };
                if let Err(refusal) =
                    super::tools::check_body(&bytes, &self.proxy.config.policy, rule.tool_urls)
                {
                    let status = if refusal.host.is_some() || !refusal.field.is_empty() {
                        StatusCode::FORBIDDEN
                    } else {
                        StatusCode::BAD_REQUEST
                    };
                    return self.refuse(pending, status, &refusal.reason, Some(credential), false);
                }
                body = Full::new(bytes)
                    .map_err(|never| match never {})
                    .boxed_unsync();
            }
            match self.inject(rule, credential, &mut parts, body).await {
                Ok((source, expires_in, injected, secret)) => {
                    pending.rec.token_source = Some(source.to_owned());
                    pending.rec.token_expires_in_s = expires_in;
                    body = injected;
                    reflected = Some(secret);
                    set_headers(rule, &mut parts.headers);
                    // Redaction reads what the agent will read: an uncompressed answer, and
                    // WebSocket frames without a compression extension.
                    parts.headers.insert(
                        hyper::header::ACCEPT_ENCODING,
                        HeaderValue::from_static("identity"),
                    );
                    parts
                        .headers
                        .remove(hyper::header::SEC_WEBSOCKET_EXTENSIONS);
                    // A stored echo fetched in byte ranges would reach the sandbox a piece at
                    // a time, no piece holding a whole form of the token.
                    parts.headers.remove(hyper::header::RANGE);
                    parts.headers.remove(hyper::header::IF_RANGE);
                }
                Err(e) => {
                    let (status, message, retryable) = e.response();
                    return self.refuse(pending, status, &message, Some(credential), retryable);
                }
            }
        } else {
            // A path or method no rule covers, on a host where egressd injects: it gets no
            // credential, and the agent's own (or its placeholder) is not forwarded either.
            for name in self
                .rules
                .iter()
                .filter(|r| r.credential.is_some())
                .flat_map(|r| &r.strip)
            {
                parts.headers.remove(name.as_str());
            }
        }
        if reflected.is_some()
            && upgrade.is_some()
            && !parts
                .headers
                .get(UPGRADE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
        {
            let reason = "only WebSocket upgrades are allowed where a credential is injected \
                          (another protocol could not be checked for the token)";
            let credential = pending.rec.credential.clone();
            return self.refuse(
                pending,
                StatusCode::BAD_REQUEST,
                reason,
                credential.as_deref(),
                false,
            );
        }
        let upstream = match spiffe {
            Some((_, route)) => &route.upstream,
            None => &self.interception().upstream,
        };
        let client = if upgrade.is_some() {
            &upstream.http1
        } else {
            &upstream.auto
        };
        let idle = self.proxy.config.timeouts.idle;
        let request = Request::from_parts(parts, body);
        let sent = forward::send(client, request, idle, &pending.sent, body_limit).await;
        let mut resp = match sent {
            Ok(resp) => resp,
            Err(SendError::Failed(ref e))
                if let (Some((_, route)), Some(dial)) =
                    (spiffe, crate::error::find_cause::<DialError>(e)) =>
            {
                let status = match dial {
                    DialError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::BAD_GATEWAY,
                };
                pending.rec.spiffe_presented = dial.presented().map(ToString::to_string);
                let (reason, retryable) = (dial.to_string(), dial.retryable());
                return self.refuse(pending, status, &reason, Some(&route.credential), retryable);
            }
            Err(e) => {
                let credential = pending.rec.credential.clone();
                let (status, reason) = (e.status(), e.reason());
                return self.refuse(
                    pending,
                    status,
                    &reason,
                    credential.as_deref(),
                    e.retryable(),
                );
            }
        };
        pending.rec.decision = AuditDecision::Allow;
        pending.rec.status = Some(resp.status().as_u16());
        if let Some(peer) = resp.extensions().get::<SpiffePeer>() {
            pending.rec.spiffe_presented = Some(peer.presented.to_string());
            pending.rec.spiffe_verified = Some(peer.verified.to_string());
        }
        pending.rec.reason = "intercepted".to_owned();
        if let Some(client_side) = upgrade
            && resp.status() == StatusCode::SWITCHING_PROTOCOLS
        {
            // The record follows the upgraded connection: written when the relay ends, with
            // its bytes and duration. The relay stops after the idle timeout like any other.
            // With a credential injected, the 101's headers and the server's frames are
            // scrubbed of the token too (ws.rs).
            let needles = reflected
                .as_ref()
                .and_then(|s| self.interception().needles.get(s.expose().as_bytes()));
            if let Some(needles) = &needles {
                super::redact::headers(resp.headers_mut(), needles);
            }
            let upstream_side = hyper::upgrade::on(&mut resp);
            let idle = self.proxy.config.timeouts.idle;
            tokio::spawn(async move {
                let mut pending = pending;
                let (Ok(client_io), Ok(upstream_io)) = (client_side.await, upstream_side.await)
                else {
                    pending.rec.reason = "the upgrade did not complete".to_owned();
                    return;
                };
                let mut client_io = TokioIo::new(client_io);
                let out = match needles {
                    Some(needles) => {
                        let mut upstream_io =
                            super::ws::ScrubbedWs::new(TokioIo::new(upstream_io), needles);
                        relay(&mut client_io, &mut upstream_io, &[], idle).await
                    }
                    None => relay(&mut client_io, &mut TokioIo::new(upstream_io), &[], idle).await,
                };
                pending.add_relayed(out.bytes_up, out.bytes_down);
                if let Some(end) = out.end.describe() {
                    pending.rec.reason = format!("intercepted upgrade; {end}");
                }
            });
            return resp.map(|body| body.boxed_unsync());
        }
        let needles =
            reflected.and_then(|s| self.interception().needles.get(s.expose().as_bytes()));
        match forward::answer(resp, needles, pending) {
            Ok(resp) => resp,
            Err(refused) => {
                let Compressed { encoding, pending } = *refused;
                // An upstream echoing the request must not hand the sandbox the token, and a
                // compressed answer cannot be searched for it (identity was asked for).
                let reason = format!(
                    "the upstream compressed its answer (content-encoding: {encoding}) although \
                     egressd asked for identity; a compressed answer cannot be checked for the \
                     injected token"
                );
                let credential = pending.rec.credential.clone();
                self.refuse(
                    pending,
                    StatusCode::BAD_GATEWAY,
                    &reason,
                    credential.as_deref(),
                    false,
                )
            }
        }
    }

    fn interception(&self) -> &super::Interception {
        self.proxy
            .interception
            .as_ref()
            .expect("a Conn exists only when interception is configured")
    }

    /// Mints (or reuses) the credential and puts it in the rule's header.
    /// Gets the rule's credential and applies it: a header with the token, or an AWS
    /// SigV4 signature over the (then buffered) body. Returns the token's source, its
    /// remaining seconds (`None` for static secrets) and the body to send.
    async fn inject(
        &self,
        rule: &InterceptRule,
        credential: &str,
        parts: &mut hyper::http::request::Parts,
        body: UpBody,
    ) -> Result<(&'static str, Option<u64>, UpBody, crate::token::Secret), InjectError> {
        let token = self
            .interception()
            .broker
            .get(credential)
            .await
            .map_err(InjectError::Token)?;
        let expires =
            (token.expires_in != std::time::Duration::MAX).then_some(token.expires_in.as_secs());
        let body = match (&rule.apply, token.bearer(), token.aws.as_ref()) {
            (Apply::Header, Some(secret), _) => {
                let scheme = token
                    .scheme
                    .unwrap_or_else(|| AuthScheme::for_host(&self.sni));
                let mut value =
                    HeaderValue::from_str(&rule.header_value_with(secret.expose(), scheme))
                        .map_err(|_| {
                            InjectError::Unusable("the token is not a valid header value")
                        })?;
                value.set_sensitive(true);
                let name = HeaderName::from_bytes(rule.header.as_bytes())
                    .map_err(|_| InjectError::Unusable("the rule's header name is invalid"))?;
                parts.headers.insert(name, value);
                token.add_required_headers(&mut parts.headers);
                body
            }
            (Apply::AwsSigV4 { region, service }, _, Some(aws)) => {
                // SigV4 covers the payload: the body is buffered (bounded) to hash it.
                let bytes = Limited::new(body, MAX_SIGNED_BODY)
                    .collect()
                    .await
                    .map_err(|e| signing_body_error(&*e))?
                    .to_bytes();
                for name in [
                    "authorization",
                    "x-amz-date",
                    "x-amz-security-token",
                    "x-amz-content-sha256",
                ] {
                    parts.headers.remove(name);
                }
                let keys = sigv4::Keys {
                    access_key_id: aws.access_key_id.expose(),
                    secret_access_key: aws.secret_access_key.expose(),
                    session_token: Some(aws.session_token.expose()),
                };
                let scope = sigv4::Scope {
                    region,
                    service,
                    now: time::OffsetDateTime::now_utc(),
                    content_sha256: service == "s3",
                };
                sigv4::sign(
                    parts.method.as_str(),
                    &parts.uri,
                    &mut parts.headers,
                    &sigv4::sha256_hex(&bytes),
                    keys,
                    scope,
                )
                .map_err(|e| InjectError::Sign(e.to_string()))?;
                Full::new(bytes)
                    .map_err(|never| match never {})
                    .boxed_unsync()
            }
            _ => {
                return Err(InjectError::Unusable(
                    "the credential's kind does not fit the rule (AWS keys need sign = \"aws-sigv4\")",
                ));
            }
        };
        // What the upstream must not be able to hand back to the sandbox (redact.rs): the
        // bearer token, or for SigV4 the session token sent in `x-amz-security-token`.
        let reflected = match (&rule.apply, token.bearer(), token.aws.as_ref()) {
            (Apply::AwsSigV4 { .. }, _, Some(aws)) => aws.session_token.clone(),
            (_, Some(secret), _) => secret.clone(),
            _ => token.secret.clone(),
        };
        Ok((token.source, expires, body, reflected))
    }

    /// `Ok` when the request names this connection's host; `Err(what it names)` otherwise.
    fn check_authority(&self, req: &Request<Incoming>) -> Result<(), String> {
        let named = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                req.headers()
                    .get(HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            })
            .ok_or_else(|| "no host".to_owned())?;
        let host = strip_port(&named);
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.eq_ignore_ascii_case(&self.sni) {
            Ok(())
        } else {
            Err(named)
        }
    }

    /// `https://<sni>[:port]<path and query>`.
    fn upstream_uri(&self, uri: &Uri) -> Result<Uri, String> {
        let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let authority = if self.orig.port() == 443 {
            self.sni.clone()
        } else {
            format!("{}:{}", self.sni, self.orig.port())
        };
        Uri::builder()
            .scheme("https")
            .authority(authority)
            .path_and_query(pq)
            .build()
            .map_err(|e| format!("bad request target: {e}"))
    }

    fn record(&self, req: &Request<Incoming>) -> Record {
        let mut rec = Record::new(
            &self.proxy.sandbox,
            self.client,
            Some(self.orig),
            Proto::Https,
        );
        rec.name = Some(self.sni.clone());
        rec.port = Some(self.orig.port());
        rec.method = Some(req.method().as_str().to_owned());
        let path = req.uri().path();
        rec.path = Some(path.get(..MAX_AUDIT_PATH).unwrap_or(path).to_owned());
        rec
    }

    /// Answers with a JSON error and finishes the record as a denial.
    fn refuse(
        &self,
        mut pending: PendingRecord,
        status: StatusCode,
        reason: &str,
        credential: Option<&str>,
        retryable: bool,
    ) -> Response<ResBody> {
        pending.rec.reason = reason.to_owned();
        pending.rec.status = Some(status.as_u16());
        let resp = respond::json_error(
            status,
            &JsonError {
                error: reason,
                host: &self.sni,
                rule: pending.rec.rule.as_deref(),
                credential,
                retryable,
            },
        );
        drop(pending);
        respond::boxed(resp)
    }
}

/// Whether two lookups found the same rule (or both none).
fn same_rule(a: Option<&InterceptRule>, b: Option<&InterceptRule>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => std::ptr::eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// Headers with which a client asks the server to run another method than the request line's.
const METHOD_OVERRIDES: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Why a method-override header is refused: on a host whose credential rules are limited to
/// `methods`, a `POST` carrying `X-HTTP-Method-Override: DELETE` would get the credential for
/// a method the rule never named.
fn method_override<B>(req: &Request<B>, rules: &[InterceptRule]) -> Option<String> {
    let limited = rules
        .iter()
        .any(|r| r.credential.is_some() && !r.methods.is_empty());
    if !limited {
        return None;
    }
    // Rails, Laravel and Express's method-override read `_method` from the query too.
    let in_query = req.uri().query().is_some_and(|q| {
        q.split('&').any(|kv| {
            kv.split('=')
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case("_method"))
        })
    });
    let what = match METHOD_OVERRIDES
        .iter()
        .find(|h| req.headers().contains_key(**h))
    {
        Some(header) => (*header).to_owned(),
        None if in_query => "a _method query parameter".to_owned(),
        None => return None,
    };
    Some(format!(
        "{what} is refused on a host whose credential is limited to methods: send the method \
         itself"
    ))
}

/// Why a body read to be signed could not be had: over a limit (413) or the client failed.
fn signing_body_error(e: &(dyn std::error::Error + 'static)) -> InjectError {
    if let Some(crate::body::BodyError::TooLarge(over)) = e.downcast_ref() {
        InjectError::BodyTooLarge(over.to_string())
    } else if e.is::<http_body_util::LengthLimitError>() {
        InjectError::BodyTooLarge(format!(
            "request bodies egressd reads (to sign them with SigV4, to check tool URLs) are \
             limited to {MAX_SIGNED_BODY} bytes"
        ))
    } else {
        InjectError::BodyFailed(format!("reading the request body: {e}"))
    }
}

/// Applies the rule's `set_headers` (replacing the client's values) and `default_headers`
/// (only where the client sent none, or an empty value). Names and values were validated
/// with the configuration.
fn set_headers(rule: &InterceptRule, headers: &mut hyper::HeaderMap) {
    let pairs = rule
        .set_headers
        .iter()
        .map(|h| (h, true))
        .chain(rule.default_headers.iter().map(|h| (h, false)));
    for ((name, value), replace) in pairs {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) else {
            continue;
        };
        let client_has_one = headers.get(&name).is_some_and(|v| !v.is_empty());
        if replace || !client_has_one {
            headers.insert(name, value);
        }
    }
}

/// Whether the request asks for an HTTP/1.1 protocol upgrade (WebSocket).
fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(UPGRADE)
        && req
            .headers()
            .get(CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// `host` from `host`, `host:port`, `[v6]` or `[v6]:port`.
fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::{method_override, set_headers, strip_port};

    #[test]
    fn method_overrides_are_refused_where_a_credential_is_limited_to_methods() {
        let rules = |methods: &str| {
            let mut b = egressd_config::ConfigBuilder::new();
            b.toml_str(
                &format!(
                    "[[credential]]\nname = \"k\"\nsource = \"env\"\nvar = \"K\"\n\n\
                     [[intercept]]\nhost = \"api.example.com\"\ncredential = \"k\"\n{methods}"
                ),
                std::path::Path::new("t.toml"),
            )
            .unwrap();
            b.build().unwrap().intercepts.rules().to_vec()
        };
        let post = |header: Option<&str>| {
            let mut b = hyper::Request::post("/x");
            if let Some(h) = header {
                b = b.header(h, "DELETE");
            }
            b.body(()).unwrap()
        };
        let limited = rules("methods = [\"POST\"]\n");
        for h in [
            "X-HTTP-Method-Override",
            "x-http-method",
            "X-Method-Override",
        ] {
            let why = method_override(&post(Some(h)), &limited).expect(h);
            assert!(why.contains(&h.to_ascii_lowercase()), "{why}");
        }
        assert_eq!(method_override(&post(None), &limited), None);
        let query = hyper::Request::post("/x?a=1&_method=DELETE")
            .body(())
            .unwrap();
        assert!(method_override(&query, &limited).is_some());
        assert_eq!(
            method_override(&post(Some("X-HTTP-Method-Override")), &rules("")),
            None
        );
    }

    #[test]
    fn set_headers_replace_and_default_headers_fill_in() {
        let mut rule = egressd_config::ConfigBuilder::new();
        rule.toml_str(
            r#"
[[intercept]]
host = "api.githubcopilot.com"
set_headers = { "Copilot-Integration-Id" = "agentic-workflows" }
default_headers = { "X-Initiator" = "agent", "X-Interaction-Id" = "run" }
"#,
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        let config = rule.build().unwrap();
        let rule = &config.intercepts.rules()[0];
        let mut headers = hyper::HeaderMap::new();
        headers.append("copilot-integration-id", "a".parse().unwrap());
        headers.append("copilot-integration-id", "b".parse().unwrap());
        headers.insert("x-interaction-id", "client-session".parse().unwrap());
        headers.insert("x-initiator", "".parse().unwrap());
        set_headers(rule, &mut headers);
        let all = |name: &str| {
            headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(all("copilot-integration-id"), ["agentic-workflows"]);
        assert_eq!(all("x-interaction-id"), ["client-session"]);
        assert_eq!(
            all("x-initiator"),
            ["agent"],
            "an empty value counts as none"
        );
    }

    #[test]
    fn ports_are_stripped_from_authorities() {
        assert_eq!(strip_port("api.example.com"), "api.example.com");
        assert_eq!(strip_port("api.example.com:443"), "api.example.com");
        assert_eq!(strip_port("[2001:db8::1]:443"), "2001:db8::1");
    }
}
