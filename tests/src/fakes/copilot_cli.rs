//! What GitHub's Copilot CLI (npm `@github/copilot` 1.0.102) needs from the GitHub and
//! Copilot APIs, as captured in `tests/captures/copilot-cli-1.0.102.md`: the answer bodies
//! and streams [`super::FakeCopilot`] and [`super::FakeCopilotApi`] send it.
//!
//! Only shapes live here; [`super`] decides who is answered (tokens, schemes, headers) and
//! records every call.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::StatusCode;
use serde_json::{Value, json};

use super::Response;

/// The text every streamed (and non-streamed `/responses`) answer of the fake Copilot model
/// carries, so a test can find it in the CLI's output. Streams send it in four pieces.
pub const FAKE_MODEL_ANSWER: &str = "Hello from the fake Copilot model";

/// [`FAKE_MODEL_ANSWER`] as the stream sends it, piece by piece.
const PIECES: [&str; 4] = ["Hello ", "from the ", "fake Copilot ", "model"];

/// The model the CLI picks from [`models`]: the CLI only offers models it knows (gpt-4.1 and
/// made-up ids are "not available" to 1.0.102), and gpt-5-mini is one of them.
pub(super) const CLI_MODEL: &str = "gpt-5-mini";

/// `GET /models`: gpt-5-mini in the full catalogue shape (the CLI calls `/responses` because
/// `supported_endpoints` lists it), and gpt-4.1 (chat completions only), which older clients
/// and the existing tests name.
pub(super) fn models() -> Value {
    json!({
        "object": "list",
        "data": [
            {
                "id": CLI_MODEL,
                "name": "GPT-5 mini",
                "object": "model",
                "vendor": "Azure OpenAI",
                "version": CLI_MODEL,
                "preview": false,
                "model_picker_enabled": true,
                "model_picker_category": "lightweight",
                "is_chat_default": true,
                "is_chat_fallback": true,
                "capabilities": {
                    "family": CLI_MODEL,
                    "type": "chat",
                    "object": "model_capabilities",
                    "tokenizer": "o200k_base",
                    "limits": {
                        "max_context_window_tokens": 264_000,
                        "max_output_tokens": 64_000,
                        "max_prompt_tokens": 128_000
                    },
                    "supports": {
                        "streaming": true,
                        "tool_calls": true,
                        "parallel_tool_calls": true,
                        "structured_outputs": true,
                        "vision": true,
                        "reasoning_effort": ["low", "medium", "high"]
                    }
                },
                "policy": {"state": "enabled", "terms": "Enable access to the latest GPT-5 mini model."},
                "billing": {"is_premium": false, "multiplier": 0},
                "supported_endpoints": ["/chat/completions", "/responses"]
            },
            {
                "id": "gpt-4.1",
                "name": "GPT-4.1",
                "object": "model",
                "vendor": "Azure OpenAI",
                "version": "gpt-4.1-2025-04-14",
                "preview": false,
                "model_picker_enabled": true,
                "model_picker_category": "versatile",
                "is_chat_default": false,
                "is_chat_fallback": false,
                "capabilities": {
                    "family": "gpt-4.1",
                    "type": "chat",
                    "object": "model_capabilities",
                    "tokenizer": "o200k_base",
                    "limits": {
                        "max_context_window_tokens": 128_000,
                        "max_output_tokens": 16_384,
                        "max_prompt_tokens": 128_000
                    },
                    "supports": {"streaming": true, "tool_calls": true, "parallel_tool_calls": true}
                },
                "policy": {"state": "enabled", "terms": "Enable access to the latest GPT-4.1 model."},
                "billing": {"is_premium": false, "multiplier": 0},
                "supported_endpoints": ["/chat/completions"]
            }
        ]
    })
}

/// `GET /copilot_internal/user` for a business seat: the fields the CLI reads (`endpoints.api`
/// is where it sends every Copilot API call; `endpoints.telemetry`, when present, where its
/// telemetry goes; `is_mcp_enabled` lets it use MCP servers).
pub(super) fn user(api: &str, telemetry: Option<&str>) -> Value {
    let mut endpoints = json!({"api": api});
    if let Some(telemetry) = telemetry {
        endpoints["telemetry"] = json!(telemetry);
    }
    let quota = |id: &str, entitlement: u32, unlimited: bool| {
        json!({
            "entitlement": entitlement, "overage_count": 0, "overage_permitted": false,
            "percent_remaining": 100.0, "quota_id": id, "quota_remaining": f64::from(entitlement),
            "remaining": entitlement, "unlimited": unlimited,
            "timestamp_utc": "2025-01-01T00:00:00Z"
        })
    };
    json!({
        "login": "octocat",
        "access_type_sku": "copilot_for_business_seat",
        "analytics_tracking_id": "0123456789abcdef0123456789abcdef",
        "assigned_date": "2025-01-01T00:00:00Z",
        "can_signup_for_limited": false,
        "chat_enabled": true,
        "copilot_plan": "business",
        "organization_login_list": ["octo-org"],
        "organization_list": [{"login": "octo-org", "name": "Octo Org"}],
        "is_mcp_enabled": true,
        "restricted_telemetry": false,
        "quota_reset_date": "2099-01-01",
        "quota_snapshots": {
            "chat": quota("chat", 0, true),
            "completions": quota("completions", 0, true),
            "premium_interactions": quota("premium_interactions", 300, false)
        },
        "endpoints": endpoints
    })
}

/// Where a Copilot API base sends its telemetry, the way GitHub names the hosts:
/// `https://api.X.githubcopilot.com` -> `https://telemetry.X.githubcopilot.com`,
/// `https://copilot-api.T.ghe.com` -> `https://copilot-telemetry-service.T.ghe.com`.
pub(super) fn telemetry_for(api: &str) -> Option<String> {
    let host = api.strip_prefix("https://")?.trim_end_matches('/');
    if let Some(tenant) = host.strip_prefix("copilot-api.") {
        return Some(format!("https://copilot-telemetry-service.{tenant}"));
    }
    let rest = host.strip_prefix("api.")?;
    Some(format!("https://telemetry.{rest}"))
}

/// `GET https://GHES/_copilot_proxy_config` (the GHES technical preview,
/// `COPILOT_PROVIDER_GHES_HOST`): the smallest configuration the CLI accepts (it then calls
/// `https://GHES/_copilot_proxy/chat/completions`).
pub(super) fn ghes_proxy_config() -> Value {
    json!({"providers": [{}], "models": [{"id": CLI_MODEL}]})
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

/// One `data:` line of a server-sent event stream.
fn data(value: &Value) -> String {
    format!("data: {value}\n\n")
}

/// A `text/event-stream` response with `events` as its body (the whole stream at once: the
/// client parses it event by event as it would a slow one).
pub(super) fn sse(events: String) -> Response {
    let mut response = hyper::Response::new(Full::new(Bytes::from(events)));
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        "text/event-stream".parse().expect("a valid header value"),
    );
    headers.insert(
        hyper::header::CACHE_CONTROL,
        "no-cache".parse().expect("a valid header value"),
    );
    response
}

/// `POST /chat/completions` with `"stream": true`: OpenAI chat-completion chunks (the role,
/// the answer in pieces, `finish_reason: "stop"`, a usage chunk since the CLI asks for
/// `stream_options.include_usage`), then `data: [DONE]`.
pub(super) fn chat_stream(model: &str) -> String {
    let created = now();
    let chunk = |delta: Value, finish: Value| {
        data(&json!({
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
        }))
    };
    let mut out = chunk(json!({"role": "assistant", "content": ""}), Value::Null);
    for piece in PIECES {
        out += &chunk(json!({"content": piece}), Value::Null);
    }
    out += &chunk(json!({}), json!("stop"));
    out += &data(&json!({
        "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created,
        "model": model, "choices": [],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    }));
    out + "data: [DONE]\n\n"
}

/// The finished `/responses` object (also the non-streamed answer).
pub(super) fn responses_json(model: &str) -> Value {
    json!({
        "id": "resp_fake", "object": "response", "created_at": now(), "model": model,
        "status": "completed",
        "output": [{
            "id": "msg_fake", "type": "message", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": FAKE_MODEL_ANSWER, "annotations": []}]
        }],
        "usage": {"input_tokens": 11, "output_tokens": 7, "total_tokens": 18}
    })
}

/// `POST /responses` with `"stream": true`: the OpenAI Responses events, each as
/// `event: TYPE` + `data: {..., "type": TYPE, "sequence_number": N}`, from `response.created`
/// through the text deltas to `response.completed`.
pub(super) fn responses_stream(model: &str) -> String {
    let mut seq = 0;
    let mut out = String::new();
    let mut event = |kind: &str, mut value: Value| {
        value["type"] = json!(kind);
        value["sequence_number"] = json!(seq);
        seq += 1;
        out += &format!("event: {kind}\ndata: {value}\n\n");
    };
    let mut base = responses_json(model);
    let done = base.clone();
    base["status"] = json!("in_progress");
    base["output"] = json!([]);
    base.as_object_mut().expect("an object").remove("usage");
    event("response.created", json!({"response": base}));
    event("response.in_progress", json!({"response": base}));
    let item = json!({"id": "msg_fake", "type": "message", "status": "in_progress",
                      "role": "assistant", "content": []});
    event(
        "response.output_item.added",
        json!({"output_index": 0, "item": item}),
    );
    let at = json!({"item_id": "msg_fake", "output_index": 0, "content_index": 0});
    let with = |extra: Value| {
        let mut v = at.clone();
        for (k, x) in extra.as_object().expect("an object") {
            v[k] = x.clone();
        }
        v
    };
    event(
        "response.content_part.added",
        with(json!({"part": {"type": "output_text", "text": "", "annotations": []}})),
    );
    for piece in PIECES {
        event("response.output_text.delta", with(json!({"delta": piece})));
    }
    event(
        "response.output_text.done",
        with(json!({"text": FAKE_MODEL_ANSWER})),
    );
    let part = done["output"][0]["content"][0].clone();
    event("response.content_part.done", with(json!({"part": part})));
    event(
        "response.output_item.done",
        json!({"output_index": 0, "item": done["output"][0]}),
    );
    event("response.completed", json!({"response": done}));
    out
}

/// The GitHub MCP server at `POST .../mcp/readonly` (streamable HTTP, JSON answers): the
/// 2026 `server/discover` is an unknown method (so the CLI falls back to `initialize`),
/// `initialize` answers with a session id, notifications get `202`, `tools/list` an empty
/// list. Returns the status, the body (none for `202`), and the session id to send.
pub(super) fn mcp(body: &[u8]) -> (StatusCode, Option<Value>, Option<&'static str>) {
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return (
            StatusCode::BAD_REQUEST,
            Some(json!({"jsonrpc": "2.0", "id": null,
                        "error": {"code": -32700, "message": "Parse error"}})),
            None,
        );
    };
    let Some(method) = request["method"].as_str() else {
        return (
            StatusCode::BAD_REQUEST,
            Some(json!({"jsonrpc": "2.0", "id": null,
                        "error": {"code": -32600, "message": "Invalid Request"}})),
            None,
        );
    };
    let id = request["id"].clone();
    if id.is_null() {
        return (StatusCode::ACCEPTED, None, None);
    }
    let answer = match method {
        "initialize" => json!({"jsonrpc": "2.0", "id": id, "result": {
            "protocolVersion": request["params"]["protocolVersion"].as_str().unwrap_or("2025-06-18"),
            "capabilities": {"tools": {"listChanged": false}},
            "serverInfo": {"name": "github-mcp-server", "version": "fake"}
        }}),
        "tools/list" => json!({"jsonrpc": "2.0", "id": id, "result": {"tools": []}}),
        other => json!({"jsonrpc": "2.0", "id": id,
                        "error": {"code": -32601, "message": format!("Method not found: {other}")}}),
    };
    let session = (method == "initialize").then_some("fake-mcp-session");
    (StatusCode::OK, Some(answer), session)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text a client would assemble from a stream's deltas.
    fn assembled(stream: &str, field: &str) -> String {
        stream
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str::<Value>(d).unwrap())
            .filter_map(|v| {
                let piece = if field == "chat" {
                    v["choices"][0]["delta"]["content"].as_str()
                } else if v["type"] == "response.output_text.delta" {
                    v["delta"].as_str()
                } else {
                    None
                };
                piece.map(str::to_owned)
            })
            .collect()
    }

    #[test]
    fn streams_carry_the_answer() {
        let chat = chat_stream(CLI_MODEL);
        assert_eq!(assembled(&chat, "chat"), FAKE_MODEL_ANSWER);
        assert!(chat.ends_with("data: [DONE]\n\n"));
        let responses = responses_stream(CLI_MODEL);
        assert_eq!(assembled(&responses, "responses"), FAKE_MODEL_ANSWER);
        assert!(responses.contains("event: response.completed\n"));
    }

    #[test]
    fn telemetry_hosts_follow_the_api_host() {
        assert_eq!(
            telemetry_for("https://api.business.githubcopilot.com").as_deref(),
            Some("https://telemetry.business.githubcopilot.com")
        );
        assert_eq!(
            telemetry_for("https://copilot-api.acme.ghe.com").as_deref(),
            Some("https://copilot-telemetry-service.acme.ghe.com")
        );
        assert_eq!(telemetry_for("http://127.0.0.1:9"), None);
    }

    #[test]
    fn mcp_discover_is_unknown_and_initialize_opens_a_session() {
        let (status, body, _) = mcp(br#"{"jsonrpc":"2.0","id":0,"method":"server/discover"}"#);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.unwrap()["error"]["code"], -32601);
        let (_, body, session) = mcp(
            br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25"}}"#,
        );
        assert_eq!(body.unwrap()["result"]["protocolVersion"], "2025-11-25");
        assert_eq!(session, Some("fake-mcp-session"));
        let (status, body, _) = mcp(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        assert_eq!((status, body), (StatusCode::ACCEPTED, None));
    }
}
