//! [`FakeModelApi`]: fake model APIs for the vendor SDK tests (`tests/e2e/sdks.rs`), served
//! inside an [`UpstreamNet`] so that sandboxed SDKs reach them only through egressd.
//!
//! Three vendors, each speaking its real wire format closely enough for the official SDK to
//! parse every byte, and each refusing any request that lacks the credential egressd is
//! supposed to inject (so a test that passes proves the injection, and a control run without
//! it gets the vendor's own refusal):
//!
//! * Azure OpenAI, with API keys disabled ([`FakeModelApi::azure_openai`]):
//!   `POST /openai/deployments/{deployment}/chat/completions?api-version=...` (or the v1 route
//!   `POST /openai/v1/chat/completions`, the deployment in the body's `model`), answered as JSON
//!   or, with `"stream": true`, as server-sent events `data: {chunk}\n\n` ... `data: [DONE]\n\n`
//!   (the first chunk carries only `prompt_filter_results`, as Azure sends it). Only
//!   `Authorization: Bearer <token>` with a token the test's check accepts gets through;
//!   an `api-key` header is `401 AuthenticationTypeDisabled`.
//! * The Claude API ([`FakeModelApi::anthropic`]): `POST /v1/messages`, JSON or, with
//!   `"stream": true`, the SSE events `message_start`, `content_block_start`, `ping`,
//!   `content_block_delta`..., `content_block_stop`, `message_delta`, `message_stop`. It needs
//!   `anthropic-version`, an OAuth bearer token the check accepts together with
//!   `anthropic-beta: oauth-2025-04-20`, and no `x-api-key` (any key is `401 invalid x-api-key`:
//!   the fake knows none).
//! * Bedrock Runtime ([`FakeModelApi::bedrock`]): `POST /model/{modelId}/converse` (JSON) and
//!   `/model/{modelId}/converse-stream` (`application/vnd.amazon.eventstream`: binary messages
//!   with a prelude CRC and a message CRC, headers `:event-type`, `:content-type`,
//!   `:message-type`). Requests must carry a SigV4 `Authorization` for the fake's region and
//!   service `bedrock`, an `x-amz-date` within five minutes, a key id the test's lookup knows
//!   and that key's session token; when the lookup also knows the secret, the signature itself
//!   is recomputed and compared. Failures are the restJson1 errors AWS sends
//!   (`x-amzn-ErrorType` plus `{"message": ...}`).
//!
//! Every request is recorded ([`ModelCall`]): path, credential headers, body, status and why.
//! Streams are produced a chunk at a time, [`CHUNK_GAP`] apart, so a test can tell a stream
//! that arrived as it was produced from one buffered on the way.

use std::{
    convert::Infallible,
    fmt::Write as _,
    fs::File,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::BoxBody};
use hyper::{
    HeaderMap, Method, StatusCode,
    body::{Frame, Incoming},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

use crate::{TestCa, UpstreamNet};

/// Time between two chunks of a streamed answer.
pub const CHUNK_GAP: Duration = Duration::from_millis(200);

/// The headers that carry credentials, recorded in [`ModelCall::credentials`].
const CREDENTIAL_HEADERS: [&str; 7] = [
    "authorization",
    "api-key",
    "x-api-key",
    "proxy-authorization",
    "x-goog-api-key",
    "x-amz-security-token",
    "x-amz-date",
];

/// The beta an Anthropic OAuth bearer token must be sent with.
const ANTHROPIC_OAUTH_BETA: &str = "oauth-2025-04-20";

/// Decides whether a bearer token is one the fake should accept (for example: one that a
/// fake Entra or Anthropic token endpoint issued). Given the token without its scheme.
pub type TokenCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Finds the AWS keys of an access key id, as the real service would look them up: `None`
/// for a key id it never issued (the placeholder of an SDK, for example).
pub type KeyLookup = Arc<dyn Fn(&str) -> Option<AwsKey> + Send + Sync>;

/// What the fake Bedrock knows about an access key id it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsKey {
    /// The session token that must come with it in `x-amz-security-token` (`None` for a
    /// long-term key, which comes without one).
    pub session_token: Option<String>,
    /// The secret access key. When known, the fake recomputes the signature and refuses a
    /// wrong one; when not (keys minted by a fake STS that keeps its secrets), only the
    /// signature's form, scope and freshness are checked.
    pub secret_access_key: Option<String>,
}

/// Which vendor a [`FakeModelApi`] imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    /// Azure OpenAI chat completions.
    AzureOpenAi,
    /// The Claude API's Messages.
    Anthropic,
    /// Bedrock Runtime `Converse` and `ConverseStream`.
    Bedrock,
}

/// One request as the fake saw it, and what it answered.
#[derive(Debug, Clone)]
pub struct ModelCall {
    /// `POST`, ...
    pub method: String,
    /// The path and query, as received.
    pub path: String,
    /// Whether a streamed answer was asked for (`"stream": true`, or `converse-stream`).
    pub stream: bool,
    /// The status answered.
    pub status: u16,
    /// `"ok"`, or the error code and reason of the refusal.
    pub outcome: String,
    /// Credential-carrying headers received, `(lowercase name, value)`.
    pub credentials: Vec<(String, String)>,
    /// Every header received, `(lowercase name, value)`.
    pub headers: Vec<(String, String)>,
    /// The request body as JSON (`null` when it is not JSON).
    pub body: Value,
    /// Bedrock: whether the SigV4 signature was recomputed with the key's secret and matched
    /// (false when the secret was unknown, or for the other vendors).
    pub signature_verified: bool,
}

impl ModelCall {
    /// The values of header `name` (lowercase) the request carried.
    pub fn header(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// A fake model API on `ADDR:443` in an [`UpstreamNet`], with a certificate for one host name
/// from a [`TestCa`]. See the module documentation for what each vendor checks and answers.
pub struct FakeModelApi {
    state: Arc<State>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

/// What decides whether a request is authenticated.
enum Auth {
    Bearer(TokenCheck),
    SigV4 { region: String, keys: KeyLookup },
}

struct State {
    vendor: Vendor,
    auth: Auth,
    calls: Mutex<Vec<ModelCall>>,
}

/// A request with its body read.
struct Req {
    method: Method,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Bytes,
}

/// A response body: whole, or produced a chunk at a time.
type Body = BoxBody<Bytes, Infallible>;

/// The answer to one request and the outcome to record.
struct Answer {
    response: hyper::Response<Body>,
    outcome: String,
    signature_verified: bool,
}

impl Answer {
    fn ok(response: hyper::Response<Body>) -> Self {
        Self {
            response,
            outcome: "ok".to_owned(),
            signature_verified: false,
        }
    }

    fn refused(response: hyper::Response<Body>, outcome: impl Into<String>) -> Self {
        Self {
            response,
            outcome: outcome.into(),
            signature_verified: false,
        }
    }
}

impl FakeModelApi {
    /// An Azure OpenAI resource with API keys disabled, serving `host` on `addr:443` in `net`:
    /// only bearer tokens that `accept` approves get answers (see the module docs).
    pub fn azure_openai(
        ca: &TestCa,
        net: &UpstreamNet,
        addr: impl Into<IpAddr>,
        host: &str,
        accept: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> Self {
        Self::start(
            ca,
            net,
            addr.into(),
            host,
            Vendor::AzureOpenAi,
            Auth::Bearer(Arc::new(accept)),
        )
    }

    /// The Claude API serving `host` on `addr:443` in `net`: only OAuth bearer tokens that
    /// `accept` approves (sent with the OAuth beta) get answers.
    pub fn anthropic(
        ca: &TestCa,
        net: &UpstreamNet,
        addr: impl Into<IpAddr>,
        host: &str,
        accept: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> Self {
        Self::start(
            ca,
            net,
            addr.into(),
            host,
            Vendor::Anthropic,
            Auth::Bearer(Arc::new(accept)),
        )
    }

    /// Bedrock Runtime in `region` serving `host` on `addr:443` in `net`: only requests signed
    /// (SigV4, service `bedrock`) with keys that `keys` knows get answers.
    pub fn bedrock(
        ca: &TestCa,
        net: &UpstreamNet,
        addr: impl Into<IpAddr>,
        host: &str,
        region: &str,
        keys: impl Fn(&str) -> Option<AwsKey> + Send + Sync + 'static,
    ) -> Self {
        let auth = Auth::SigV4 {
            region: region.to_owned(),
            keys: Arc::new(keys),
        };
        Self::start(ca, net, addr.into(), host, Vendor::Bedrock, auth)
    }

    /// The chunks of every answer, in order: what a streaming client must print one by one,
    /// and (joined) the whole text of a non-streamed answer.
    pub fn chunks(&self) -> Vec<String> {
        reply_chunks(self.state.vendor)
    }

    /// The whole answer text (the chunks joined).
    pub fn text(&self) -> String {
        self.chunks().concat()
    }

    /// Every request so far, in order.
    pub fn calls(&self) -> Vec<ModelCall> {
        self.state.calls.lock().unwrap().clone()
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn start(
        ca: &TestCa,
        net: &UpstreamNet,
        ip: IpAddr,
        host: &str,
        vendor: Vendor,
        auth: Auth,
    ) -> Self {
        let addr = SocketAddr::new(ip, 443);
        let leaf = ca.leaf(&[host]);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_single_cert(leaf.cert_chain(), leaf.private_key())
            .expect("the test leaf is a valid certificate and key");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tls = TlsAcceptor::from(Arc::new(config));
        let netns = File::open(net.netns_path())
            .unwrap_or_else(|e| panic!("opening {}: {e}", net.netns_path().display()));
        let state = Arc::new(State {
            vendor,
            auth,
            calls: Mutex::new(Vec::new()),
        });
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let (stop_tx, stop_rx) = oneshot::channel();
        let thread_state = Arc::clone(&state);
        let thread = thread::Builder::new()
            .name(format!("fake model {vendor:?} {addr}"))
            .spawn(move || {
                // This thread only ever lives in the upstream namespace.
                if let Err(e) = nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET) {
                    let _ = ready_tx.send(Err(format!("setns: {e}")));
                    return;
                }
                drop(netns);
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("building a current-thread runtime");
                rt.block_on(serve(addr, tls, thread_state, ready_tx, stop_rx));
            })
            .expect("spawning a fake model thread");
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("fake model {vendor:?} on {addr} failed to start: {e}"),
            Err(e) => panic!("fake model {vendor:?} on {addr} did not report readiness: {e}"),
        }
        Self {
            state,
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for FakeModelApi {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    addr: SocketAddr,
    tls: TlsAcceptor,
    state: Arc<State>,
    ready: mpsc::Sender<Result<(), String>>,
    mut stop: oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(format!("binding {addr}: {e}")));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let (tls, state) = (tls.clone(), Arc::clone(&state));
                tokio::spawn(async move {
                    let Ok(stream) = tls.accept(stream).await else { return };
                    let service = service_fn(move |req: hyper::Request<Incoming>| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(state.answer(req).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
}

impl State {
    async fn answer(&self, req: hyper::Request<Incoming>) -> hyper::Response<Body> {
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, 1 << 20).collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => Bytes::new(),
        };
        let req = Req {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts.headers,
            body,
        };
        let json_body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let stream = match self.vendor {
            Vendor::Bedrock => req.path.ends_with("/converse-stream"),
            _ => json_body["stream"] == true,
        };
        let answer = match self.vendor {
            Vendor::AzureOpenAi => self.azure(&req, &json_body, stream),
            Vendor::Anthropic => self.anthropic(&req, &json_body, stream),
            Vendor::Bedrock => self.bedrock(&req, &json_body, stream),
        };
        let headers: Vec<(String, String)> = req
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let credentials = headers
            .iter()
            .filter(|(n, _)| CREDENTIAL_HEADERS.contains(&n.as_str()))
            .cloned()
            .collect();
        self.calls.lock().unwrap().push(ModelCall {
            method: req.method.as_str().to_owned(),
            path: match &req.query {
                Some(q) => format!("{}?{q}", req.path),
                None => req.path.clone(),
            },
            stream,
            status: answer.response.status().as_u16(),
            outcome: answer.outcome,
            credentials,
            headers,
            body: json_body,
            signature_verified: answer.signature_verified,
        });
        answer.response
    }

    fn bearer_check(&self) -> &TokenCheck {
        match &self.auth {
            Auth::Bearer(check) => check,
            Auth::SigV4 { .. } => unreachable!("bearer vendors are built with a token check"),
        }
    }

    // === Azure OpenAI ===

    fn azure(&self, req: &Req, body: &Value, stream: bool) -> Answer {
        let error = |status: StatusCode, code: &str, message: &str| {
            Answer::refused(
                json_response(
                    status,
                    &json!({"error": {"code": code, "message": message}}),
                ),
                format!("{} {code}", status.as_u16()),
            )
        };
        // The deployment route (with `api-version`), or the v1 route with the deployment in
        // the body's `model` (what the Copilot CLI's Azure provider sends by default).
        let routed = req
            .path
            .strip_prefix("/openai/deployments/")
            .and_then(|rest| rest.strip_suffix("/chat/completions"))
            .filter(|d| !d.is_empty() && !d.contains('/'))
            .filter(|_| query_param(req.query.as_deref(), "api-version").is_some());
        let v1 = (req.path == "/openai/v1/chat/completions")
            .then(|| body["model"].as_str())
            .flatten()
            .filter(|m| !m.is_empty());
        let (Some(deployment), true) = (routed.or(v1), req.method == Method::POST) else {
            return error(StatusCode::NOT_FOUND, "404", "Resource not found");
        };
        if req.headers.contains_key("api-key") {
            return error(
                StatusCode::UNAUTHORIZED,
                "AuthenticationTypeDisabled",
                "Key based authentication is disabled for this resource.",
            );
        }
        let token = bearer(&req.headers);
        if !token.is_some_and(|t| (self.bearer_check())(t)) {
            return error(
                StatusCode::UNAUTHORIZED,
                "401",
                "Unauthorized. Access token is missing, invalid, audience is incorrect \
                 (https://cognitiveservices.azure.com), or have expired.",
            );
        }
        if body["messages"].as_array().is_none_or(|m| m.is_empty()) {
            return error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "'messages' is a required property",
            );
        }
        let model = "gpt-4o-2024-11-20";
        let id = format!("chatcmpl-{}", random_hex(12));
        let created = unix_now();
        let chunks = reply_chunks(Vendor::AzureOpenAi);
        let filters = json!({
            "hate": {"filtered": false, "severity": "safe"},
            "self_harm": {"filtered": false, "severity": "safe"},
            "sexual": {"filtered": false, "severity": "safe"},
            "violence": {"filtered": false, "severity": "safe"},
        });
        let prompt_filters = json!([{"prompt_index": 0, "content_filter_results": filters}]);
        let mut response = if stream {
            let chunk = |choices: Value| {
                sse_data(&json!({
                    "id": id, "object": "chat.completion.chunk", "created": created,
                    "model": model, "system_fingerprint": "fp_fake", "choices": choices,
                }))
            };
            let mut events = vec![sse_data(&json!({
                "id": "", "object": "", "created": 0, "model": "",
                "choices": [], "prompt_filter_results": prompt_filters,
            }))];
            events.push(chunk(json!([{
                "index": 0, "delta": {"role": "assistant", "content": "", "refusal": null},
                "finish_reason": null, "logprobs": null, "content_filter_results": {},
            }])));
            for text in &chunks {
                events.push(chunk(json!([{
                    "index": 0, "delta": {"content": text}, "finish_reason": null,
                    "logprobs": null, "content_filter_results": filters,
                }])));
            }
            events.push(chunk(json!([{
                "index": 0, "delta": {}, "finish_reason": "stop", "logprobs": null,
                "content_filter_results": {},
            }])));
            events.push(Bytes::from_static(b"data: [DONE]\n\n"));
            streamed("text/event-stream; charset=utf-8", events)
        } else {
            json_response(
                StatusCode::OK,
                &json!({
                    "id": id, "object": "chat.completion", "created": created, "model": model,
                    "system_fingerprint": "fp_fake",
                    "prompt_filter_results": prompt_filters,
                    "choices": [{
                        "index": 0, "finish_reason": "stop", "logprobs": null,
                        "message": {"role": "assistant", "content": chunks.concat(), "refusal": null},
                        "content_filter_results": filters,
                    }],
                    "usage": {"prompt_tokens": 12, "completion_tokens": chunks.len(), "total_tokens": 12 + chunks.len()},
                }),
            )
        };
        let headers = response.headers_mut();
        for (name, value) in [
            ("apim-request-id", random_uuid()),
            ("x-request-id", random_uuid()),
            ("x-ms-region", "East US".to_owned()),
            ("x-ms-deployment-name", deployment.to_owned()),
        ] {
            headers.insert(name, value.parse().expect("a valid header value"));
        }
        Answer::ok(response)
    }

    // === Anthropic ===

    fn anthropic(&self, req: &Req, body: &Value, stream: bool) -> Answer {
        let error = |status: StatusCode, kind: &str, message: &str| {
            let mut response = json_response(
                status,
                &json!({
                    "type": "error",
                    "error": {"type": kind, "message": message},
                    "request_id": format!("req_{}", random_hex(12)),
                }),
            );
            response
                .headers_mut()
                .insert("x-should-retry", "false".parse().expect("a header value"));
            Answer::refused(response, format!("{} {kind}: {message}", status.as_u16()))
        };
        if req.method != Method::POST || req.path != "/v1/messages" {
            return error(StatusCode::NOT_FOUND, "not_found_error", "Not found");
        }
        if !req.headers.contains_key("anthropic-version") {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "anthropic-version: header is required",
            );
        }
        if req.headers.contains_key("x-api-key") {
            // The fake knows no API key: any is invalid.
            return error(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid x-api-key",
            );
        }
        let Some(token) = bearer(&req.headers) else {
            return error(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "x-api-key header is required",
            );
        };
        if !(self.bearer_check())(token) {
            return error(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "Invalid bearer token",
            );
        }
        let oauth_beta = req
            .headers
            .get_all("anthropic-beta")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|b| b.trim() == ANTHROPIC_OAUTH_BETA);
        if !oauth_beta {
            return error(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "OAuth authentication is currently not supported.",
            );
        }
        let model = body["model"].as_str().unwrap_or_default();
        if model.is_empty()
            || !body["max_tokens"].is_u64()
            || body["messages"].as_array().is_none_or(|m| m.is_empty())
        {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "model, max_tokens and messages are required",
            );
        }
        let id = format!("msg_{}", random_hex(12));
        let chunks = reply_chunks(Vendor::Anthropic);
        let output_tokens = chunks.len();
        let mut response = if stream {
            let event =
                |name: &str, data: Value| Bytes::from(format!("event: {name}\ndata: {data}\n\n"));
            let mut events = vec![
                event(
                    "message_start",
                    json!({"type": "message_start", "message": {
                        "id": id, "type": "message", "role": "assistant", "model": model,
                        "content": [], "stop_reason": null, "stop_sequence": null,
                        "usage": {"input_tokens": 12, "cache_creation_input_tokens": 0,
                                  "cache_read_input_tokens": 0, "output_tokens": 1},
                    }}),
                ),
                event(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0,
                           "content_block": {"type": "text", "text": ""}}),
                ),
                event("ping", json!({"type": "ping"})),
            ];
            for text in &chunks {
                events.push(event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0,
                           "delta": {"type": "text_delta", "text": text}}),
                ));
            }
            events.push(event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ));
            events.push(event(
                "message_delta",
                json!({"type": "message_delta",
                       "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                       "usage": {"output_tokens": output_tokens}}),
            ));
            events.push(event("message_stop", json!({"type": "message_stop"})));
            streamed("text/event-stream; charset=utf-8", events)
        } else {
            json_response(
                StatusCode::OK,
                &json!({
                    "id": id, "type": "message", "role": "assistant", "model": model,
                    "content": [{"type": "text", "text": chunks.concat()}],
                    "stop_reason": "end_turn", "stop_sequence": null,
                    "usage": {"input_tokens": 12, "cache_creation_input_tokens": 0,
                              "cache_read_input_tokens": 0, "output_tokens": output_tokens},
                }),
            )
        };
        response.headers_mut().insert(
            "request-id",
            format!("req_{}", random_hex(12))
                .parse()
                .expect("a header value"),
        );
        Answer::ok(response)
    }

    // === Bedrock Runtime ===

    fn bedrock(&self, req: &Req, body: &Value, stream: bool) -> Answer {
        let Auth::SigV4 { region, keys } = &self.auth else {
            unreachable!("Bedrock is built with a key lookup");
        };
        let model = req
            .path
            .strip_prefix("/model/")
            .and_then(|rest| {
                rest.strip_suffix("/converse-stream")
                    .or_else(|| rest.strip_suffix("/converse"))
            })
            .filter(|m| !m.is_empty() && !m.contains('/'));
        if req.method != Method::POST || model.is_none() {
            return aws_error(
                StatusCode::NOT_FOUND,
                "UnknownOperationException",
                "Unknown operation",
            );
        }
        let signature_verified = match check_sigv4(req, region, "bedrock", keys.as_ref()) {
            Ok(verified) => verified,
            Err((status, code, message)) => return aws_error(status, code, &message),
        };
        if body["messages"].as_array().is_none_or(|m| m.is_empty()) {
            return aws_error(
                StatusCode::BAD_REQUEST,
                "ValidationException",
                "A conversation must start with a user message.",
            );
        }
        let chunks = reply_chunks(Vendor::Bedrock);
        let usage = json!({"inputTokens": 12, "outputTokens": chunks.len(), "totalTokens": 12 + chunks.len()});
        let mut response = if stream {
            // Bedrock pads every event's payload with "p" (length hiding); clients ignore it.
            let pad = |n: usize| {
                "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[..n].to_owned()
            };
            let mut events = vec![event_message(
                "messageStart",
                &json!({"p": pad(21), "role": "assistant"}),
            )];
            for (i, text) in chunks.iter().enumerate() {
                events.push(event_message(
                    "contentBlockDelta",
                    &json!({"contentBlockIndex": 0, "delta": {"text": text}, "p": pad(10 + i)}),
                ));
            }
            events.push(event_message(
                "contentBlockStop",
                &json!({"contentBlockIndex": 0, "p": pad(30)}),
            ));
            events.push(event_message(
                "messageStop",
                &json!({"p": pad(14), "stopReason": "end_turn"}),
            ));
            events.push(event_message(
                "metadata",
                &json!({"metrics": {"latencyMs": 321}, "p": pad(5), "usage": usage}),
            ));
            streamed("application/vnd.amazon.eventstream", events)
        } else {
            json_response(
                StatusCode::OK,
                &json!({
                    "output": {"message": {"role": "assistant", "content": [{"text": chunks.concat()}]}},
                    "stopReason": "end_turn",
                    "usage": usage,
                    "metrics": {"latencyMs": 321},
                }),
            )
        };
        response.headers_mut().insert(
            "x-amzn-requestid",
            random_uuid().parse().expect("a header value"),
        );
        Answer {
            response,
            outcome: "ok".to_owned(),
            signature_verified,
        }
    }
}

/// The chunks each vendor's fake model answers with (the vendor's name in the text, so a
/// test can tell which fake answered).
fn reply_chunks(vendor: Vendor) -> Vec<String> {
    let name = match vendor {
        Vendor::AzureOpenAi => " Azure OpenAI",
        Vendor::Anthropic => " Claude",
        Vendor::Bedrock => " Bedrock",
    };
    ["Hello", " from", " the", " fake", name, " model", "."]
        .map(str::to_owned)
        .to_vec()
}

/// A restJson1 error as AWS services send it: the code in `x-amzn-ErrorType`, the message in
/// the body.
fn aws_error(status: StatusCode, code: &str, message: &str) -> Answer {
    let mut response = json_response(status, &json!({"message": message}));
    let headers = response.headers_mut();
    headers.insert(
        "x-amzn-errortype",
        format!("{code}:http://internal.amazon.com/coral/com.amazon.coral.service/")
            .parse()
            .expect("a header value"),
    );
    headers.insert(
        "x-amzn-requestid",
        random_uuid().parse().expect("a header value"),
    );
    Answer::refused(response, format!("{} {code}: {message}", status.as_u16()))
}

/// The parts of a SigV4 `Authorization` header.
struct SigV4Authorization {
    access_key_id: String,
    date: String,
    region: String,
    service: String,
    signed_headers: Vec<String>,
    signature: String,
}

fn parse_sigv4(value: &str) -> Option<SigV4Authorization> {
    let rest = value.strip_prefix("AWS4-HMAC-SHA256 ")?;
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in rest.split(',') {
        let (name, value) = part.trim().split_once('=')?;
        match name {
            "Credential" => credential = Some(value),
            "SignedHeaders" => signed_headers = Some(value),
            "Signature" => signature = Some(value),
            _ => return None,
        }
    }
    let scope: Vec<&str> = credential?.split('/').collect();
    let [key, date, region, service, "aws4_request"] = scope[..] else {
        return None;
    };
    Some(SigV4Authorization {
        access_key_id: key.to_owned(),
        date: date.to_owned(),
        region: region.to_owned(),
        service: service.to_owned(),
        signed_headers: signed_headers?.split(';').map(str::to_owned).collect(),
        signature: signature?.to_owned(),
    })
}

/// Checks a request's SigV4 signature as AWS does. `Ok(true)` when the signature was
/// recomputed with the key's secret and matched, `Ok(false)` when everything else checked out
/// but the secret is unknown to the fake; the AWS error otherwise.
fn check_sigv4(
    req: &Req,
    region: &str,
    service: &str,
    keys: &(dyn Fn(&str) -> Option<AwsKey> + Send + Sync),
) -> Result<bool, (StatusCode, &'static str, String)> {
    let forbidden = StatusCode::FORBIDDEN;
    let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
    let Some(authorization) = header("authorization") else {
        return Err((
            forbidden,
            "MissingAuthenticationTokenException",
            "Missing Authentication Token".to_owned(),
        ));
    };
    let Some(auth) = parse_sigv4(authorization) else {
        return Err((
            forbidden,
            "IncompleteSignatureException",
            format!(
                "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' parameters: {authorization}"
            ),
        ));
    };
    let Some(key) = keys(&auth.access_key_id) else {
        return Err((
            forbidden,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.".to_owned(),
        ));
    };
    if header("x-amz-security-token") != key.session_token.as_deref() {
        return Err((
            forbidden,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.".to_owned(),
        ));
    }
    if auth.region != region {
        return Err((
            forbidden,
            "InvalidSignatureException",
            format!(
                "Credential should be scoped to a valid region, not '{}'.",
                auth.region
            ),
        ));
    }
    if auth.service != service {
        return Err((
            forbidden,
            "InvalidSignatureException",
            format!("Credential should be scoped to correct service: '{service}'."),
        ));
    }
    let amz_date = header("x-amz-date").unwrap_or_default();
    let fresh = parse_amz_date(amz_date).is_some_and(|t| {
        let now = unix_now();
        t.abs_diff(now) <= 300
    });
    if !fresh || !amz_date.starts_with(&auth.date) {
        return Err((
            forbidden,
            "InvalidSignatureException",
            format!("Signature expired or not yet valid: x-amz-date is {amz_date:?}."),
        ));
    }
    for required in ["host", "x-amz-date"].into_iter().chain(
        key.session_token
            .is_some()
            .then_some("x-amz-security-token"),
    ) {
        if !auth.signed_headers.iter().any(|h| h == required) {
            return Err((
                forbidden,
                "InvalidSignatureException",
                format!("'{required}' must be a signed header."),
            ));
        }
    }
    let Some(secret) = &key.secret_access_key else {
        return Ok(false);
    };
    let expected = sigv4_signature(req, &auth, amz_date, secret);
    if expected != auth.signature {
        return Err((
            forbidden,
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method. Consult the service \
             documentation for details."
                .to_owned(),
        ));
    }
    Ok(true)
}

/// The signature AWS computes for `req` (non-S3 rules: path segments encoded twice).
fn sigv4_signature(req: &Req, auth: &SigV4Authorization, amz_date: &str, secret: &str) -> String {
    let canonical_uri = if req.path.is_empty() {
        "/".to_owned()
    } else {
        req.path
            .split('/')
            .map(|segment| uri_encode(segment.as_bytes()))
            .collect::<Vec<_>>()
            .join("/")
    };
    let mut query: Vec<(String, String)> = req
        .query
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
            (
                uri_encode(&percent_decode(n)),
                uri_encode(&percent_decode(v)),
            )
        })
        .collect();
    query.sort();
    let canonical_query = query
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut canonical_headers = String::new();
    for name in &auth.signed_headers {
        let values: Vec<String> = req
            .headers
            .get_all(name.as_str())
            .iter()
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        let _ = writeln!(canonical_headers, "{name}:{}", values.join(","));
    }
    let payload_hash = req
        .headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| hex(&sha256(&req.body)), str::to_owned);
    let canonical_request = format!(
        "{}\n{canonical_uri}\n{canonical_query}\n{canonical_headers}\n{}\n{payload_hash}",
        req.method,
        auth.signed_headers.join(";"),
    );
    let scope = format!(
        "{}/{}/{}/aws4_request",
        auth.date, auth.region, auth.service
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&sha256(canonical_request.as_bytes()))
    );
    let k_date = hmac_sha256(format!("AWS4{secret}").as_bytes(), auth.date.as_bytes());
    let k_region = hmac_sha256(&k_date, auth.region.as_bytes());
    let k_service = hmac_sha256(&k_region, auth.service.as_bytes());
    let k_signing = hmac_sha256(&k_service, b"aws4_request");
    hex(&hmac_sha256(&k_signing, string_to_sign.as_bytes()))
}

/// `YYYYMMDDTHHMMSSZ` as seconds since the epoch.
fn parse_amz_date(text: &str) -> Option<u64> {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let parsed = time::PrimitiveDateTime::parse(text, format).ok()?;
    u64::try_from(parsed.assume_utc().unix_timestamp()).ok()
}

/// The TLS 1.3 suite whose SHA-256 and HMAC the signature checks borrow from rustls (ring).
fn sha256_suite() -> &'static rustls::Tls13CipherSuite {
    rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .expect("a TLS 1.3 suite")
}

fn sha256(data: &[u8]) -> Vec<u8> {
    sha256_suite()
        .common
        .hash_provider
        .hash(data)
        .as_ref()
        .to_vec()
}

/// HMAC-SHA256 (keys here are at most 64 bytes: `AWS4` + a 40-byte secret, or a digest).
fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    sha256_suite()
        .hkdf_provider
        .hmac_sign(&rustls::crypto::tls13::OkmBlock::new(key), data)
        .as_ref()
        .to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Percent-encodes every byte but RFC 3986's unreserved characters (SigV4's `UriEncode`).
fn uri_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn percent_decode(text: &str) -> Vec<u8> {
    url::form_urlencoded::parse(format!("x={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned().into_bytes())
        .unwrap_or_default()
}

/// One message of the AWS event stream encoding (`application/vnd.amazon.eventstream`):
/// prelude (total length, headers length, CRC32 of those 8 bytes), headers (name length,
/// name, type 7 = string, value length, value), payload, CRC32 of everything before it.
fn event_message(event_type: &str, payload: &Value) -> Bytes {
    let mut headers = Vec::new();
    for (name, value) in [
        (":event-type", event_type),
        (":content-type", "application/json"),
        (":message-type", "event"),
    ] {
        headers.push(u8::try_from(name.len()).expect("a short header name"));
        headers.extend_from_slice(name.as_bytes());
        headers.push(7);
        headers.extend_from_slice(
            &u16::try_from(value.len())
                .expect("a short header value")
                .to_be_bytes(),
        );
        headers.extend_from_slice(value.as_bytes());
    }
    let payload = payload.to_string().into_bytes();
    let total = 12 + headers.len() + payload.len() + 4;
    let mut message = Vec::with_capacity(total);
    message.extend_from_slice(&u32::try_from(total).expect("a short message").to_be_bytes());
    message.extend_from_slice(
        &u32::try_from(headers.len())
            .expect("short headers")
            .to_be_bytes(),
    );
    let prelude_crc = crc32(&message);
    message.extend_from_slice(&prelude_crc.to_be_bytes());
    message.extend_from_slice(&headers);
    message.extend_from_slice(&payload);
    let message_crc = crc32(&message);
    message.extend_from_slice(&message_crc.to_be_bytes());
    Bytes::from(message)
}

/// CRC-32 (IEEE 802.3, reflected polynomial `0xEDB88320`): the checksum of zlib and of the
/// AWS event stream.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// `data: <json>\n\n`.
fn sse_data(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

/// A response whose body is `parts`, the first at once and each next one [`CHUNK_GAP`]
/// after the previous was taken.
fn streamed(content_type: &str, parts: Vec<Bytes>) -> hyper::Response<Body> {
    let stream =
        futures_util::stream::unfold((parts.into_iter(), true), |(mut parts, first)| async move {
            let part = parts.next()?;
            if !first {
                tokio::time::sleep(CHUNK_GAP).await;
            }
            Some((Ok::<_, Infallible>(Frame::data(part)), (parts, false)))
        });
    hyper::Response::builder()
        .header("content-type", content_type)
        .header("cache-control", "no-cache")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("a valid streamed response")
}

fn json_response(status: StatusCode, body: &Value) -> hyper::Response<Body> {
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .expect("a valid JSON response")
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

fn random_hex(bytes: usize) -> String {
    hex(&(0..bytes).map(|_| rand::random::<u8>()).collect::<Vec<_>>())
}

fn random_uuid() -> String {
    let h = random_hex(16);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}
