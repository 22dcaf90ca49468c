//! One audit line (the JSON object written to the audit log) as an OTLP `LogRecord`, and the
//! run's resource.
//!
//! Names follow OpenTelemetry's semantic conventions where one exists (`server.address`,
//! `client.address`, `http.request.method`, `k8s.pod.name`, `vcs.repository.url.full`,
//! `user.name`, ...) and `egressd.*` otherwise. Every field of the line is kept: the ones with
//! a convention under its name, the rest as `egressd.<field>`; nested objects become
//! `egressd.<field>.<key>`. The verified provenance goes on the resource, not on each record.
//! Severity is INFO for an allowed record and a lifecycle line, WARN for a denial or a
//! connection that ended early.

use serde_json::{Map, Value as Json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::proto::{
    AnyValue, ArrayValue, KeyValue, KeyValueList, LogRecord, Resource, Value, severity,
};
use crate::provenance::Provenance;

/// `line` (one JSON object, with or without its newline) as a log record observed at
/// `observed_ns`; `None` when it is not a JSON object.
pub(crate) fn log_record(line: &[u8], observed_ns: u64) -> Option<LogRecord> {
    let Ok(Json::Object(fields)) = serde_json::from_slice::<Json>(line) else {
        return None;
    };
    let time_unix_nano = fields
        .get("time")
        .and_then(Json::as_str)
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
        .and_then(|t| u64::try_from(t.unix_timestamp_nanos()).ok())
        .unwrap_or(observed_ns);
    let event = fields.get("event").and_then(Json::as_str);
    let warn = fields.get("decision").and_then(Json::as_str) == Some("deny")
        || fields.get("failed").and_then(Json::as_bool) == Some(true);
    let (severity_number, severity_text) = if warn {
        (severity::WARN, "WARN")
    } else {
        (severity::INFO, "INFO")
    };
    let mut attributes = Vec::with_capacity(fields.len() + 4);
    for (key, value) in &fields {
        attribute(&fields, key, value, &mut attributes);
    }
    Some(LogRecord {
        time_unix_nano,
        observed_time_unix_nano: observed_ns,
        severity_number,
        severity_text: severity_text.to_owned(),
        body: Some(AnyValue::string(body(&fields, event))),
        attributes,
        event_name: event_name(&fields, event).to_owned(),
    })
}

/// `egressd.connection`, `egressd.request`, `egressd.dns`, `egressd.unix`, `egressd.arm`,
/// `egressd.disarm` (and `egressd.<event>` for other lifecycle lines).
fn event_name(fields: &Map<String, Json>, event: Option<&str>) -> String {
    if let Some(event) = event {
        return format!("egressd.{event}");
    }
    match fields.get("proto").and_then(Json::as_str) {
        Some("http" | "https") => "egressd.request",
        Some("dns") => "egressd.dns",
        Some("unix") => "egressd.unix",
        _ => "egressd.connection",
    }
    .to_owned()
}

/// A short human line: `deny tls evil.test:443: not in the allowlist`.
fn body(fields: &Map<String, Json>, event: Option<&str>) -> String {
    let text = |k: &str| fields.get(k).and_then(Json::as_str).unwrap_or_default();
    if let Some(event) = event {
        return format!("{event} {}", text("sandbox"));
    }
    let mut out = format!("{} {} {}", text("decision"), text("proto"), text("name"));
    if let Some(port) = fields.get("port").and_then(Json::as_u64) {
        out.push_str(&format!(":{port}"));
    }
    let reason = text("reason");
    if !reason.is_empty() {
        out.push_str(": ");
        out.push_str(reason);
    }
    out
}

/// The attributes of one top-level field.
fn attribute(fields: &Map<String, Json>, key: &str, value: &Json, out: &mut Vec<KeyValue>) {
    let dns = fields.get("proto").and_then(Json::as_str) == Some("dns");
    match (key, value) {
        // On the resource, once per run; in the body and the event name.
        ("provenance" | "time" | "event", _) | (_, Json::Null) => {}
        ("name", Json::String(name)) if dns => push(out, "dns.question.name", value_of(value)),
        ("name", Json::String(_)) if fields.get("proto").and_then(Json::as_str) == Some("unix") => {
            push(out, "egressd.unix.path", value_of(value));
        }
        ("name", _) => push(out, "server.address", value_of(value)),
        ("port", _) => push(out, "server.port", value_of(value)),
        ("client", Json::String(addr)) => address(out, "client", addr),
        ("orig_dst", Json::String(addr)) => address(out, "destination", addr),
        ("upstream", Json::String(addr)) => address(out, "network.peer", addr),
        ("method", _) => push(out, "http.request.method", value_of(value)),
        ("path", _) => push(out, "url.path", value_of(value)),
        ("status", _) => push(out, "http.response.status_code", value_of(value)),
        ("pid", _) => push(out, "process.pid", value_of(value)),
        ("exit_code", _) => push(out, "process.exit.code", value_of(value)),
        ("code", _) => push(out, "egressd.reason_code", value_of(value)),
        ("k8s", Json::Object(k8s)) => {
            for (k, v) in k8s {
                let name = match k.as_str() {
                    "node" => "k8s.node.name".to_owned(),
                    "namespace" => "k8s.namespace.name".to_owned(),
                    "pod" => "k8s.pod.name".to_owned(),
                    "pod_uid" => "k8s.pod.uid".to_owned(),
                    other => format!("egressd.k8s.{other}"),
                };
                push(out, &name, value_of(v));
            }
        }
        ("host", _) => push(out, "host.name", value_of(value)),
        (_, Json::Object(inner)) => {
            for (k, v) in inner {
                push(out, &format!("egressd.{key}.{k}"), value_of(v));
            }
        }
        _ => push(out, &format!("egressd.{key}"), value_of(value)),
    }
}

/// `prefix.address` and `prefix.port` of `ip:port` (`[v6]:port`), else `prefix.address`.
fn address(out: &mut Vec<KeyValue>, prefix: &str, addr: &str) {
    match addr.parse::<std::net::SocketAddr>() {
        Ok(a) => {
            push(
                out,
                &format!("{prefix}.address"),
                Value::String(a.ip().to_string()),
            );
            push(
                out,
                &format!("{prefix}.port"),
                Value::Int(i64::from(a.port())),
            );
        }
        Err(_) => push(
            out,
            &format!("{prefix}.address"),
            Value::String(addr.to_owned()),
        ),
    }
}

fn push(out: &mut Vec<KeyValue>, key: &str, value: Value) {
    out.push(KeyValue::new(key, value));
}

/// A JSON value as an OTLP value (objects as key-value lists, `null` as an empty string).
fn value_of(value: &Json) -> Value {
    match value {
        Json::Null => Value::String(String::new()),
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => n
            .as_i64()
            .map(Value::Int)
            .or_else(|| n.as_f64().map(Value::Double))
            .unwrap_or_else(|| Value::String(n.to_string())),
        Json::String(s) => Value::String(s.clone()),
        Json::Array(items) => Value::Array(ArrayValue {
            values: items
                .iter()
                .map(|v| AnyValue {
                    value: Some(value_of(v)),
                })
                .collect(),
        }),
        Json::Object(fields) => Value::Kvlist(KeyValueList {
            values: fields
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), value_of(v)))
                .collect(),
        }),
    }
}

/// The run's resource: the verified provenance, `service.*`, `host.name` and what
/// `OTEL_RESOURCE_ATTRIBUTES` names (the Kubernetes downward API fills it in a pod spec). The
/// provenance goes in first and the first value of a key wins, so the environment cannot
/// forge `vcs.*` or `user.*` over verified claims.
pub(crate) fn resource(
    provenance: Option<&Provenance>,
    host: Option<&str>,
    env_attributes: Option<&str>,
    service_name: Option<&str>,
) -> Resource {
    let mut attributes: Vec<KeyValue> = Vec::new();
    let mut add = |key: &str, value: String| {
        if !attributes.iter().any(|a| a.key == key) {
            attributes.push(KeyValue::new(key, Value::String(value)));
        }
    };
    if let Some(p) = provenance {
        for (key, value) in provenance_attributes(p) {
            add(key, value);
        }
    }
    add("service.name", service_name.unwrap_or("egressd").to_owned());
    add("service.version", env!("CARGO_PKG_VERSION").to_owned());
    if let Some(host) = host {
        add("host.name", host.to_owned());
    }
    // The environment may describe where egressd runs, never who ran what: those names
    // come from verified provenance only.
    for (key, value) in env_attributes.map(parse_otel_list).unwrap_or_default() {
        if !RESERVED_PREFIXES.iter().any(|p| key.starts_with(p)) {
            add(&key, value);
        }
    }
    Resource { attributes }
}

/// Resource attribute names `OTEL_RESOURCE_ATTRIBUTES` may not set.
const RESERVED_PREFIXES: &[&str] = &["user.", "vcs.", "cicd.", "egressd."];

/// The web address of the GitHub deployment that issued `issuer`'s tokens, from the
/// verified issuer only (`https://token.actions.githubusercontent.com` is github.com,
/// `https://token.actions.<tenant>.ghe.com` a GHE.com tenant, `https://<host>/_services/token`
/// a GHES server).
fn server_of(issuer: &str) -> Option<String> {
    let host = issuer.strip_prefix("https://")?;
    if host == "token.actions.githubusercontent.com" {
        return Some("https://github.com".to_owned());
    }
    if let Some(tenant) = host.strip_prefix("token.actions.")
        && tenant.ends_with(".ghe.com")
    {
        return Some(format!("https://{tenant}"));
    }
    host.strip_suffix("/_services/token")
        .map(|h| format!("https://{h}"))
}

/// The semantic-convention attributes of verified provenance.
fn provenance_attributes(p: &Provenance) -> Vec<(&'static str, String)> {
    let mut out = vec![
        ("user.name", p.actor.clone()),
        ("user.id", p.actor_id.clone()),
        ("cicd.pipeline.run.id", p.run_id.clone()),
        ("vcs.provider.name", "github".to_owned()),
        ("egressd.provenance.issuer", p.issuer.clone()),
        ("egressd.provenance.repository", p.repository.clone()),
    ];
    if let Some((owner, name)) = p.repository.split_once('/') {
        out.push(("vcs.owner.name", owner.to_owned()));
        out.push(("vcs.repository.name", name.to_owned()));
    }
    if let Some(server) = server_of(&p.issuer) {
        out.push((
            "vcs.repository.url.full",
            format!("{server}/{}", p.repository),
        ));
        let attempt = p.run_attempt.as_deref().unwrap_or("1");
        out.push((
            "cicd.pipeline.run.url.full",
            format!(
                "{server}/{}/actions/runs/{}/attempts/{attempt}",
                p.repository, p.run_id
            ),
        ));
    }
    if let Some(workflow) = p.workflow_ref.as_deref().or(p.job_workflow_ref.as_deref()) {
        out.push(("cicd.pipeline.name", workflow.to_owned()));
    }
    if let Some(r) = &p.git_ref {
        let (name, kind) = match (r.strip_prefix("refs/heads/"), r.strip_prefix("refs/tags/")) {
            (Some(branch), _) => (branch, Some("branch")),
            (_, Some(tag)) => (tag, Some("tag")),
            _ => (r.as_str(), None),
        };
        out.push(("vcs.ref.head.name", name.to_owned()));
        if let Some(kind) = kind {
            out.push(("vcs.ref.head.type", kind.to_owned()));
        }
    }
    if let Some(sha) = &p.sha {
        out.push(("vcs.ref.head.revision", sha.clone()));
    }
    for (key, value) in [
        ("egressd.provenance.repository_id", &p.repository_id),
        ("egressd.provenance.job_workflow_ref", &p.job_workflow_ref),
        ("egressd.provenance.run_attempt", &p.run_attempt),
        ("egressd.provenance.event_name", &p.event_name),
    ] {
        if let Some(v) = value {
            out.push((key, v.clone()));
        }
    }
    out
}

/// An OpenTelemetry list variable (`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`):
/// `key1=value1,key2=value2`, values percent-decoded (the SDK environment specification);
/// malformed pairs are skipped.
pub fn parse_otel_list(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_owned(), percent_decode(v.trim())))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr<'a>(r: &'a LogRecord, key: &str) -> Option<&'a Value> {
        r.attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_ref()?.value.as_ref())
    }

    #[test]
    fn a_denial_maps_to_warn_with_conventional_attributes() {
        let line = br#"{"time":"2026-12-08T01:00:02.5Z","sandbox":"job","proto":"tls","client":"10.0.0.2:40000","orig_dst":"203.0.113.9:443","name":"evil.test","port":443,"decision":"deny","enforced":true,"rule":null,"reason":"not in the allowlist","code":"not_allowlisted","bytes_up":0,"provenance":{"actor":"octocat"},"k8s":{"node":"n1","pod":"runner-x","scale_set":"build"}}"#;
        let r = log_record(line, 7).unwrap();
        assert_eq!(r.severity_number, severity::WARN);
        assert_eq!(r.event_name, "egressd.connection");
        assert_eq!(r.time_unix_nano, 1_796_691_602_500_000_000);
        assert_eq!(r.observed_time_unix_nano, 7);
        assert_eq!(
            r.body,
            Some(AnyValue::string(
                "deny tls evil.test:443: not in the allowlist"
            ))
        );
        assert_eq!(
            attr(&r, "server.address"),
            Some(&Value::String("evil.test".into()))
        );
        assert_eq!(attr(&r, "server.port"), Some(&Value::Int(443)));
        assert_eq!(attr(&r, "client.port"), Some(&Value::Int(40000)));
        assert_eq!(
            attr(&r, "destination.address"),
            Some(&Value::String("203.0.113.9".into()))
        );
        assert_eq!(
            attr(&r, "egressd.reason_code"),
            Some(&Value::String("not_allowlisted".into()))
        );
        assert_eq!(attr(&r, "egressd.enforced"), Some(&Value::Bool(true)));
        assert_eq!(
            attr(&r, "k8s.pod.name"),
            Some(&Value::String("runner-x".into()))
        );
        assert_eq!(
            attr(&r, "egressd.k8s.scale_set"),
            Some(&Value::String("build".into()))
        );
        // Provenance is the resource's; nulls are left out.
        assert!(r.attributes.iter().all(|a| !a.key.contains("provenance")));
        assert!(attr(&r, "egressd.rule").is_none());
    }

    #[test]
    fn requests_dns_and_lifecycle_lines_get_their_event_names() {
        let req = log_record(
            br#"{"time":"x","proto":"https","name":"api.test","decision":"allow","method":"GET","path":"/v1","status":200}"#,
            5,
        )
        .unwrap();
        assert_eq!(req.event_name, "egressd.request");
        assert_eq!(req.severity_number, severity::INFO);
        assert_eq!(
            req.time_unix_nano, 5,
            "an unreadable time is the observed one"
        );
        assert_eq!(
            attr(&req, "http.request.method"),
            Some(&Value::String("GET".into()))
        );
        assert_eq!(
            attr(&req, "http.response.status_code"),
            Some(&Value::Int(200))
        );
        let dns = log_record(br#"{"proto":"dns","name":"a.test","decision":"deny"}"#, 0).unwrap();
        assert_eq!(dns.event_name, "egressd.dns");
        assert!(attr(&dns, "dns.question.name").is_some());
        let arm = log_record(
            br#"{"event":"arm","sandbox":"job","programs":["connect4"]}"#,
            0,
        )
        .unwrap();
        assert_eq!(arm.event_name, "egressd.arm");
        assert!(matches!(
            attr(&arm, "egressd.programs"),
            Some(Value::Array(_))
        ));
        assert!(log_record(b"not json", 0).is_none());
        assert!(log_record(b"[1,2]", 0).is_none());
    }

    #[test]
    fn the_resource_puts_verified_provenance_first() {
        let mut p = Provenance::for_tests("octocat", "583231");
        p.git_ref = Some("refs/heads/main".to_owned());
        p.workflow_ref = Some("octo-org/octo-repo/.github/workflows/ci.yml@refs/heads/main".into());
        let r = resource(
            Some(&p),
            Some("node-1"),
            Some("k8s.pod.name=runner%2C1,user.name=mallory,vcs.owner.name=evil,bad"),
            None,
        );
        let get = |k: &str| {
            r.attributes.iter().find(|a| a.key == k).and_then(|a| {
                match a.value.as_ref()?.value.as_ref()? {
                    Value::String(s) => Some(s.clone()),
                    _ => None,
                }
            })
        };
        assert_eq!(
            get("user.name").as_deref(),
            Some("octocat"),
            "env cannot forge it"
        );
        assert_eq!(get("k8s.pod.name").as_deref(), Some("runner,1"));
        assert_eq!(get("service.name").as_deref(), Some("egressd"));
        assert_eq!(get("host.name").as_deref(), Some("node-1"));
        assert_eq!(
            get("vcs.repository.url.full").as_deref(),
            Some("https://github.com/octo-org/octo-repo")
        );
        assert_eq!(
            get("cicd.pipeline.run.url.full").as_deref(),
            Some("https://github.com/octo-org/octo-repo/actions/runs/1234567890/attempts/1")
        );
        assert_eq!(get("vcs.ref.head.name").as_deref(), Some("main"));
        assert_eq!(get("vcs.ref.head.type").as_deref(), Some("branch"));
        assert_eq!(get("vcs.owner.name").as_deref(), Some("octo-org"));
        let without = resource(
            None,
            None,
            Some("user.name=mallory,cicd.pipeline.run.id=1"),
            None,
        );
        assert!(
            without
                .attributes
                .iter()
                .all(|a| !a.key.starts_with("user.") && !a.key.starts_with("cicd.")),
            "without provenance the environment still cannot claim an actor or a run"
        );
        let keys: Vec<_> = r.attributes.iter().map(|a| a.key.as_str()).collect();
        let unique: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(keys.len(), unique.len(), "no key twice: {keys:?}");
    }

    #[test]
    fn servers_come_from_the_verified_issuer() {
        assert_eq!(
            server_of("https://token.actions.octo.ghe.com").as_deref(),
            Some("https://octo.ghe.com")
        );
        assert_eq!(
            server_of("https://ghes.example/_services/token").as_deref(),
            Some("https://ghes.example")
        );
        assert_eq!(
            server_of("http://token.actions.githubusercontent.com"),
            None
        );
    }
}
