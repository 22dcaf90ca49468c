//! Tool URLs in model requests: a request body can ask the provider to fetch URLs itself (the
//! Anthropic MCP connector and web fetch, OpenAI Responses MCP and web search tools, Gemini's
//! URL context and search grounding). The provider then carries data to hosts the allowlist
//! never named, from outside the sandbox. [`check`] reads the known fields of those request
//! schemas and says which one names a host the policy does not allow.
//!
//! Fields read (`[i]` is any element):
//!
//! * `mcp_servers[i].url` (Anthropic MCP connector): its host must be allowed;
//! * `tools[i].server_url` (OpenAI Responses `mcp` tools): its host must be allowed;
//! * `tools[i]` of a `web_fetch*` or `web_search*` type (Anthropic, OpenAI): the provider
//!   fetches what the model picks, so `allowed_domains` (Anthropic) or
//!   `filters.allowed_domains` (OpenAI) must be present and every domain allowed;
//! * `tools[i].url_context`, `tools[i].google_search`, `tools[i].googleSearch`,
//!   `tools[i].urlContext` (Gemini): no domain filter exists, so they are refused.
//!
//! `allow` skips the check, `deny` refuses any of these fields, `allowlist` (the default)
//! refuses only what names a host outside the allowlist.

use egressd_config::intercept::ToolUrls;
use egressd_config::{Policy, Scheme, Target, TargetHost};
use serde_json::Value;

/// A tool field that would make the provider reach outside the allowlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The JSON path of the field, e.g. `tools[1].server_url`.
    pub field: String,
    /// The host it names, if it names one.
    pub host: Option<String>,
    /// Why, for the client and the audit log.
    pub reason: String,
}

/// Checks `body` (a model request) under `mode` against `policy`.
///
/// # Errors
///
/// The first field that names what the policy does not allow.
pub(crate) fn check(body: &Value, policy: &Policy, mode: ToolUrls) -> Result<(), Refusal> {
    if mode == ToolUrls::Allow {
        return Ok(());
    }
    let allowed = |host: &str| {
        mode == ToolUrls::Allowlist
            && policy
                .decide(&Target {
                    host: TargetHost::Name(host),
                    port: 443,
                    scheme: Scheme::Https,
                })
                .is_allow()
    };
    let refuse = |field: String, host: Option<&str>, why: &str| Refusal {
        reason: match host {
            Some(h) => format!("{field} names {h}, {why}"),
            None => format!("{field}: {why}"),
        },
        field,
        host: host.map(str::to_owned),
    };
    let outside = if mode == ToolUrls::Deny {
        "and tool URLs are denied on this rule (tool_urls = \"deny\")"
    } else {
        "which is not in the allowlist: the provider would reach it from outside the sandbox \
         (add the host to the allowlist if the provider may reach it)"
    };
    let url_field = |field: String, url: &Value| -> Result<(), Refusal> {
        let Some(text) = url.as_str() else {
            return Ok(());
        };
        match host_of(text) {
            Some(host) if allowed(&host) => Ok(()),
            Some(host) => Err(refuse(field, Some(&host), outside)),
            None => Err(refuse(field, None, "not a URL with a host")),
        }
    };
    // Tool lists may be nested (a batch's `requests[i].params`, a realtime `session`):
    // every object of the body is read.
    let mut nodes = Vec::new();
    objects(body, Path::default(), &mut nodes);
    for (at, node) in nodes {
        for (i, server) in array(node, "mcp_servers").enumerate() {
            url_field(
                at.join(format!("mcp_servers[{i}].url")),
                get(server, "url").unwrap_or(&Value::Null),
            )?;
        }
        for (i, tool) in array(node, "tools").enumerate() {
            if let Some(url) = get(tool, "server_url") {
                url_field(at.join(format!("tools[{i}].server_url")), url)?;
            }
            let kind = get(tool, "type")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_ascii_lowercase();
            if kind.starts_with("web_fetch") || kind.starts_with("web_search") {
                let (domains, field) = match get(tool, "allowed_domains") {
                    Some(d) => (d, at.join(format!("tools[{i}].allowed_domains"))),
                    None => (
                        get(tool, "filters")
                            .and_then(|f| get(f, "allowed_domains"))
                            .unwrap_or(&Value::Null),
                        at.join(format!("tools[{i}].filters.allowed_domains")),
                    ),
                };
                let Some(domains) = domains.as_array().filter(|d| !d.is_empty()) else {
                    return Err(refuse(
                        at.join(format!("tools[{i}]")),
                        None,
                        &format!(
                            "a {kind} tool lets the provider fetch what the model picks; list the \
                             hosts in {field} (each must be allowed), or set tool_urls = \"allow\""
                        ),
                    ));
                };
                for (j, domain) in domains.iter().enumerate() {
                    let host = domain.as_str().unwrap_or_default().trim_start_matches("*.");
                    if !allowed(host) {
                        return Err(refuse(format!("{field}[{j}]"), Some(host), outside));
                    }
                }
            }
            for key in [
                "url_context",
                "urlContext",
                "google_search",
                "googleSearch",
                "google_search_retrieval",
                "googleSearchRetrieval",
                "enterprise_web_search",
                "enterpriseWebSearch",
            ] {
                if get(tool, key).is_some() {
                    return Err(refuse(
                        at.join(format!("tools[{i}].{key}")),
                        None,
                        "a Gemini tool that fetches what the model picks, with no domain filter; \
                         set tool_urls = \"allow\" on this rule to permit it",
                    ));
                }
            }
        }
    }
    Ok(())
}

/// [`check`] on a request body: an empty one passes; one that is not JSON egressd can read
/// (a lone surrogate, a byte-order mark, UTF-16) is refused, since the provider's parser might
/// read it; keys given twice are refused (parsers disagree on which one wins).
///
/// # Errors
///
/// The refusal; `field` is empty when the body itself is refused.
pub(crate) fn check_body(body: &[u8], policy: &Policy, mode: ToolUrls) -> Result<(), Refusal> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let unreadable = |why: String| Refusal {
        field: String::new(),
        host: None,
        reason: format!(
            "the request body is not JSON egressd can read ({why}), and tool URLs are checked \
             on this rule"
        ),
    };
    // One pass: parsed and checked for keys given twice together.
    let Strict(value) = serde_json::from_slice(body).map_err(|e| unreadable(e.to_string()))?;
    check(&value, policy, mode)
}

/// A JSON value parsed with every object's keys distinct (without regard to case):
/// parsers disagree on which of two equal keys wins, so a body that has them is refused.
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{MapAccess, SeqAccess, Visitor};
        struct StrictVisitor;
        impl<'de> Visitor<'de> for StrictVisitor {
            type Value = Strict;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
                let mut out = serde_json::Map::new();
                let mut seen = std::collections::HashSet::new();
                while let Some(key) = map.next_key::<String>()? {
                    if !seen.insert(key.to_ascii_lowercase()) {
                        return Err(serde::de::Error::custom(format!(
                            "an object has the key {key:?} twice"
                        )));
                    }
                    let Strict(value) = map.next_value()?;
                    out.insert(key, value);
                }
                Ok(Strict(Value::Object(out)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
                let mut out = Vec::new();
                while let Some(Strict(value)) = seq.next_element()? {
                    out.push(value);
                }
                Ok(Strict(Value::Array(out)))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Strict, E> {
                Ok(Strict(Value::Bool(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Strict, E> {
                Ok(Strict(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Strict, E> {
                Ok(Strict(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Strict, E> {
                Ok(Strict(v.into()))
            }
            fn visit_str<E>(self, v: &str) -> Result<Strict, E> {
                Ok(Strict(Value::String(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Strict, E> {
                Ok(Strict(Value::String(v)))
            }
            fn visit_unit<E>(self) -> Result<Strict, E> {
                Ok(Strict(Value::Null))
            }
        }
        d.deserialize_any(StrictVisitor)
    }
}

/// Where an object sits in the body, for field names (`requests[0].params`).
#[derive(Debug, Clone, Default)]
struct Path(String);

impl Path {
    /// `field` below this object.
    fn join(&self, field: String) -> String {
        if self.0.is_empty() {
            field
        } else {
            format!("{}.{field}", self.0)
        }
    }
}

/// The deepest nesting read (a body deeper than this is not a model request).
const MAX_DEPTH: usize = 32;

/// Every object in `value`, with where it sits.
fn objects<'a>(value: &'a Value, at: Path, out: &mut Vec<(Path, &'a Value)>) {
    fn walk<'a>(value: &'a Value, at: Path, depth: usize, out: &mut Vec<(Path, &'a Value)>) {
        if depth > MAX_DEPTH {
            return;
        }
        match value {
            Value::Object(map) => {
                out.push((at.clone(), value));
                for (key, child) in map {
                    walk(child, Path(at.join(key.clone())), depth + 1, out);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(child, Path(format!("{}[{i}]", at.0)), depth + 1, out);
                }
            }
            _ => {}
        }
    }
    walk(value, at, 0, out);
}

/// The elements of `body[key]` (the key matched without regard to case, as some servers'
/// JSON binders do) when it is an array.
fn array<'a>(body: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    get(body, key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// `value[key]`, the key matched without regard to case.
fn get<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    value
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

/// The host of an absolute URL, lowercase.
fn host_of(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    Some(
        parsed
            .host_str()?
            .trim_end_matches('.')
            .to_ascii_lowercase(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy() -> std::sync::Arc<Policy> {
        let mut b = egressd_config::ConfigBuilder::new();
        b.allow_list(
            "api.allowed.example,mcp.allowed.example",
            egressd_config::Origin::Flag("-d"),
        )
        .unwrap();
        b.build().unwrap().policy
    }

    #[test]
    fn tool_urls_outside_the_allowlist_are_refused_with_their_field() {
        let p = policy();
        let cases = [
            (
                json!({"mcp_servers": [{"type": "url", "url": "https://evil.example/sse"}]}),
                "mcp_servers[0].url",
                Some("evil.example"),
            ),
            (
                json!({"tools": [{"type": "function"}, {"type": "mcp", "server_url": "https://evil.example/mcp"}]}),
                "tools[1].server_url",
                Some("evil.example"),
            ),
            (
                json!({"tools": [{"type": "web_fetch_20250910", "name": "web_fetch"}]}),
                "tools[0]",
                None,
            ),
            (
                json!({"tools": [{"type": "web_search", "filters": {"allowed_domains": ["api.allowed.example", "evil.example"]}}]}),
                "tools[0].filters.allowed_domains[1]",
                Some("evil.example"),
            ),
            (
                json!({"tools": [{"url_context": {}}]}),
                "tools[0].url_context",
                None,
            ),
        ];
        for (body, field, host) in cases {
            let refusal = check(&body, &p, ToolUrls::Allowlist).unwrap_err();
            assert_eq!(refusal.field, field, "{body}");
            assert_eq!(refusal.host.as_deref(), host, "{body}");
            assert_eq!(check(&body, &p, ToolUrls::Allow), Ok(()));
        }
    }

    #[test]
    fn bodies_that_cannot_be_read_the_way_a_provider_would_are_refused() {
        let p = policy();
        let refused = |body: &[u8]| check_body(body, &p, ToolUrls::Allowlist).unwrap_err();
        assert_eq!(refused(br#"{"messages": "\ud800"}"#).field, "");
        assert_eq!(refused(b"\xef\xbb\xbf{}").field, "");
        assert_eq!(
            refused(br#"{"tools": [], "tools": [{"type": "mcp", "server_url": "https://evil.example"}]}"#).field,
            ""
        );
        assert_eq!(
            refused(br#"{"TOOLS": [{"Type": "mcp", "Server_URL": "https://evil.example"}]}"#).field,
            "tools[0].server_url"
        );
        assert_eq!(check_body(b"  ", &p, ToolUrls::Allowlist), Ok(()));
        // A batch nests its requests.
        assert_eq!(
            refused(br#"{"requests": [{"params": {"mcp_servers": [{"url": "https://evil.example"}]}}]}"#)
                .field,
            "requests[0].params.mcp_servers[0].url"
        );
        assert_eq!(
            check_body(br#"{"a": {"b": [1, 2]}}"#, &p, ToolUrls::Allowlist),
            Ok(())
        );
    }

    #[test]
    fn allowed_tool_urls_pass_unless_the_rule_denies_them() {
        let p = policy();
        let body = json!({
            "model": "claude",
            "messages": [{"role": "user", "content": "https://evil.example in a prompt is not a tool"}],
            "mcp_servers": [{"url": "https://mcp.allowed.example/sse"}],
            "tools": [
                {"type": "web_fetch_20250910", "allowed_domains": ["api.allowed.example"]},
                {"type": "mcp", "server_url": "https://MCP.allowed.example./mcp"},
                {"type": "function", "function": {"name": "f"}}
            ]
        });
        assert_eq!(check(&body, &p, ToolUrls::Allowlist), Ok(()));
        let refusal = check(&body, &p, ToolUrls::Deny).unwrap_err();
        assert_eq!(refusal.field, "mcp_servers[0].url");
        assert_eq!(check(&json!({"messages": []}), &p, ToolUrls::Deny), Ok(()));
        assert_eq!(
            check(&json!("not an object"), &p, ToolUrls::Allowlist),
            Ok(())
        );
    }
}
