//! Parsers: one log line in, one [`Line`] out. The format is detected per line, so logs of
//! different kinds can be read together:
//!
//! * egressd's JSONL (`proxy/src/audit.rs`): traffic records, plus `arm`/`disarm` lifecycle
//!   lines (an `event` field);
//! * AWF's `audit.jsonl` (`"event":"http_access"`, `timestamp` or the legacy epoch `ts`);
//! * AWF's Squid `access.log` (`firewall_detailed` format, `shared/reference/awf.md` §6.2),
//!   classified as AWF's own parser does (§6.3).
//!
//! Nothing here keeps state: a parsed line is aggregated and dropped.

use std::borrow::Cow;

use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Where a record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// egressd's own audit log.
    Egressd,
    /// AWF's Squid `access.log`.
    AwfAccess,
    /// AWF's `audit.jsonl`.
    AwfAudit,
}

impl Source {
    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Source::Egressd => "egressd",
            Source::AwfAccess => "awf-access.log",
            Source::AwfAudit => "awf-audit.jsonl",
        }
    }
}

/// One traffic record, reduced to what the views need.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rec {
    /// Milliseconds since the Unix epoch, when the line had a readable time.
    pub time: Option<i64>,
    /// Where it came from (`None` only in `Default`).
    pub source: Option<Source>,
    /// The sandbox (egressd only).
    pub sandbox: Option<String>,
    /// `tls`, `http`, `https`, `dns`, `loopback`, `unknown` (egressd); `connect`/`http` (AWF).
    pub proto: String,
    /// The name (lowercase, no trailing dot), else the original destination IP.
    pub name: Option<String>,
    /// Destination port.
    pub port: Option<u16>,
    /// Allowed (else denied).
    pub allow: bool,
    /// The deciding entry, as egressd writes it (`text (from origin)`).
    pub rule: Option<String>,
    /// Why (egressd's reason, or the Squid result code).
    pub reason: Option<String>,
    /// egressd's policy reason code (`not_allowlisted`), when the line has one.
    pub code: Option<String>,
    /// Bytes client to upstream.
    pub bytes_up: u64,
    /// Bytes upstream to client.
    pub bytes_down: u64,
    /// HTTP status sent to the client, when known.
    pub status: Option<u16>,
    /// Injected credential name.
    pub credential: Option<String>,
    /// Where the credential came from.
    pub token_source: Option<String>,
    /// Provenance, when records carry it: the verified `actor` (login).
    pub actor: Option<String>,
    /// Provenance: repository.
    pub repository: Option<String>,
    /// Provenance: the workflow that ran (`job_workflow_ref`, the reusable workflow of a
    /// `workflow_call`; else `workflow_ref`).
    pub workflow: Option<String>,
    /// egressd's `repeated`: the line stands for this many identical denials (`None`: one).
    pub repeated: Option<u64>,
    /// egressd's `failed`: policy let it through and it ended early (the client left, the
    /// upstream or a token endpoint failed); counted as allowed, and apart.
    pub failed: bool,
    /// The node: as parsed, the line's `k8s.node`; once read from a file (`State`), the
    /// resolved node of [`Node::resolve`]'s rule.
    pub node: Option<String>,
}

/// A lifecycle line (egressd only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lifecycle {
    /// True for `arm`, false for `disarm`.
    pub arm: bool,
    /// Milliseconds since the Unix epoch.
    pub time: Option<i64>,
    /// The sandbox.
    pub sandbox: String,
    /// Arm: backend.
    pub backend: Option<String>,
    /// Arm: how many programs were attached.
    pub programs: usize,
    /// Arm: cgroup path.
    pub cgroup: Option<String>,
    /// Arm: policy hash.
    pub policy_hash: Option<String>,
    /// Arm: CA fingerprint.
    pub ca_fingerprint: Option<String>,
    /// Disarm: exit code.
    pub exit_code: Option<u8>,
    /// Arm: the machine's hostname (`host`), when the line has one.
    pub host: Option<String>,
    /// The node, as for [`Rec::node`].
    pub node: Option<String>,
}

impl Line {
    /// The time of a record or lifecycle line, when it had a readable one.
    pub fn time(&self) -> Option<i64> {
        match self {
            Line::Record(r) => r.time,
            Line::Lifecycle(l) => l.time,
            Line::Skip | Line::Malformed => None,
        }
    }
}

/// Which node an input's lines belong to. A line's node is, in this order:
///
/// 1. its own `k8s.node` (runners on Kubernetes);
/// 2. else the `host` of the last `arm` line of the same input that carried one (a VM or a
///    bare-metal runner: one machine per log);
/// 3. else the input's file name, as given on the command line (`-` for stdin).
///
/// The state is per input: the same sandbox name on two nodes stays two sandboxes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    /// The input's path as given (rule 3).
    pub file: String,
    /// The last `arm` host seen (rule 2).
    pub host: Option<String>,
}

impl Node {
    /// The node of a line of this input whose own `k8s.node` is `own`.
    pub fn resolve(&self, own: Option<String>) -> String {
        own.or_else(|| self.host.clone())
            .unwrap_or_else(|| self.file.clone())
    }

    /// Gives `line` its node (and remembers an `arm` line's host first, so the arm line
    /// itself belongs to its host).
    pub fn assign(&mut self, line: &mut Line) {
        match line {
            Line::Record(r) => r.node = Some(self.resolve(r.node.take())),
            Line::Lifecycle(l) => {
                if l.arm
                    && let Some(host) = &l.host
                {
                    self.host = Some(host.clone());
                }
                l.node = Some(self.resolve(l.node.take()));
            }
            Line::Skip | Line::Malformed => {}
        }
    }
}

/// What one line was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    /// A traffic record.
    Record(Rec),
    /// `arm` or `disarm`.
    Lifecycle(Lifecycle),
    /// Blank, or a line the format says to drop (Squid's `error:transaction-end-before-headers`).
    Skip,
    /// Not a line of any known format.
    Malformed,
}

/// Parses one line (without its newline).
pub fn parse(line: &str) -> Line {
    let line = line.trim();
    if line.is_empty() {
        return Line::Skip;
    }
    if line.starts_with('{') {
        return parse_json(line);
    }
    if line.as_bytes()[0].is_ascii_digit() {
        return parse_squid(line);
    }
    Line::Malformed
}

/// Every field of the three JSON shapes; unknown fields are ignored.
#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    event: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "_schema")]
    schema: Option<Cow<'a, str>>,
    #[serde(borrow)]
    time: Option<Cow<'a, str>>,
    #[serde(borrow)]
    sandbox: Option<Cow<'a, str>>,
    #[serde(borrow)]
    orig_dst: Option<Cow<'a, str>>,
    #[serde(borrow)]
    proto: Option<Cow<'a, str>>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    port: Option<u16>,
    #[serde(borrow)]
    decision: Option<Cow<'a, str>>,
    #[serde(borrow)]
    rule: Option<Cow<'a, str>>,
    #[serde(borrow)]
    reason: Option<Cow<'a, str>>,
    #[serde(borrow)]
    code: Option<Cow<'a, str>>,
    bytes_up: Option<u64>,
    bytes_down: Option<u64>,
    repeated: Option<u64>,
    status: Option<u16>,
    #[serde(borrow)]
    credential: Option<Cow<'a, str>>,
    #[serde(borrow)]
    token_source: Option<Cow<'a, str>>,
    #[serde(borrow)]
    actor: Option<Cow<'a, str>>,
    #[serde(borrow)]
    repository: Option<Cow<'a, str>>,
    #[serde(borrow)]
    workflow: Option<Cow<'a, str>>,
    /// egressd's verified provenance object (`proxy/src/audit.rs`); `null` when absent.
    #[serde(borrow)]
    provenance: Option<RawProvenance<'a>>,
    /// Where the runner ran on Kubernetes (traffic and lifecycle lines); `null` when absent.
    #[serde(borrow)]
    k8s: Option<RawK8s<'a>>,
    /// Arm: the machine's hostname.
    #[serde(borrow)]
    host: Option<Cow<'a, str>>,
    // Lifecycle.
    #[serde(borrow)]
    backend: Option<Cow<'a, str>>,
    programs: Option<Vec<serde::de::IgnoredAny>>,
    #[serde(borrow)]
    cgroup: Option<Cow<'a, str>>,
    #[serde(borrow)]
    policy_hash: Option<Cow<'a, str>>,
    #[serde(borrow)]
    ca_fingerprint: Option<Cow<'a, str>>,
    exit_code: Option<u8>,
    failed: Option<bool>,
}

/// The fields of egressd's `provenance` object the views use.
#[derive(Deserialize)]
struct RawProvenance<'a> {
    #[serde(borrow)]
    actor: Option<Cow<'a, str>>,
    #[serde(borrow)]
    repository: Option<Cow<'a, str>>,
    #[serde(borrow)]
    job_workflow_ref: Option<Cow<'a, str>>,
    #[serde(borrow)]
    workflow_ref: Option<Cow<'a, str>>,
}

/// The fields of the `k8s` object the views use (`namespace`, `pod`, `pod_uid` and
/// `scale_set` are ignored for now).
#[derive(Deserialize)]
struct RawK8s<'a> {
    #[serde(borrow)]
    node: Option<Cow<'a, str>>,
}

fn parse_json(line: &str) -> Line {
    let Ok(raw) = serde_json::from_str::<Raw<'_>>(line) else {
        return Line::Malformed;
    };
    let own = |c: &Option<Cow<'_, str>>| c.as_deref().map(str::to_owned);
    let node = raw
        .k8s
        .as_ref()
        .and_then(|k| own(&k.node))
        .filter(|n| !n.is_empty());
    match raw.event.as_deref() {
        Some(kind @ ("arm" | "disarm")) => {
            return Line::Lifecycle(Lifecycle {
                arm: kind == "arm",
                time: raw.time.as_deref().and_then(parse_rfc3339),
                sandbox: own(&raw.sandbox).unwrap_or_default(),
                backend: own(&raw.backend),
                programs: raw.programs.map_or(0, |p| p.len()),
                cgroup: own(&raw.cgroup),
                policy_hash: own(&raw.policy_hash),
                ca_fingerprint: own(&raw.ca_fingerprint),
                exit_code: raw.exit_code,
                host: own(&raw.host).filter(|h| kind == "arm" && !h.is_empty()),
                node,
            });
        }
        Some("http_access") => return awf_audit(line),
        Some(_) => return Line::Skip,
        None if raw.schema.is_some() => return awf_audit(line),
        None => {}
    }
    let Some(decision) = raw.decision.as_deref() else {
        return Line::Malformed;
    };
    let name = raw.name.as_deref().map(normalise).or_else(|| {
        raw.orig_dst
            .as_deref()
            .and_then(|o| o.parse::<std::net::SocketAddr>().ok())
            .map(|o| o.ip().to_string())
    });
    Line::Record(Rec {
        time: raw.time.as_deref().and_then(parse_rfc3339),
        source: Some(Source::Egressd),
        repeated: raw.repeated,
        sandbox: own(&raw.sandbox),
        proto: own(&raw.proto).unwrap_or_else(|| "unknown".to_owned()),
        name,
        port: raw.port,
        // A record that ended early was let through by policy, whatever its decision says.
        allow: decision == "allow" || raw.failed == Some(true),
        failed: raw.failed == Some(true),
        rule: own(&raw.rule),
        reason: own(&raw.reason).filter(|r| !r.is_empty()),
        code: own(&raw.code),
        bytes_up: raw.bytes_up.unwrap_or(0),
        bytes_down: raw.bytes_down.unwrap_or(0),
        status: raw.status,
        credential: own(&raw.credential),
        token_source: own(&raw.token_source),
        actor: raw
            .provenance
            .as_ref()
            .and_then(|p| own(&p.actor))
            .or_else(|| own(&raw.actor)),
        repository: raw
            .provenance
            .as_ref()
            .and_then(|p| own(&p.repository))
            .or_else(|| own(&raw.repository)),
        workflow: raw
            .provenance
            .as_ref()
            .and_then(|p| own(&p.job_workflow_ref).or_else(|| own(&p.workflow_ref)))
            .or_else(|| own(&raw.workflow)),
        node,
    })
}

/// AWF `audit.jsonl`: `host` is `name:port` (CONNECT) or the Host header.
/// An AWF `audit.jsonl` access line, through `awf logs`' parser.
fn awf_audit(line: &str) -> Line {
    match crate::awf_log::parse_audit(line) {
        Some(entry) => awf_record(Source::AwfAudit, &entry),
        None => Line::Malformed,
    }
}

/// A Squid `firewall_detailed` line, through `awf logs`' parser.
fn parse_squid(line: &str) -> Line {
    match crate::awf_log::parse_access(line) {
        Some(entry) => awf_record(Source::AwfAccess, &entry),
        None => Line::Malformed,
    }
}

/// An AWF entry as a record: allowed or not as AWF classifies it (awf.md §6.3); the name
/// and port from the URL for CONNECT, else from the Host header (the port by the URL's
/// scheme when it has none). Squid's lines for transactions that ended before any headers
/// (`error:...` URLs) are skipped, as AWF's summary drops them.
fn awf_record(source: Source, e: &crate::awf_log::Entry) -> Line {
    if e.url.starts_with("error:") {
        return Line::Skip;
    }
    let (name, port) = if e.https {
        split_port(&e.url)
    } else {
        let (name, port) = split_port(&e.host);
        let default = if e.url.starts_with("https://") {
            443
        } else {
            80
        };
        (name, port.or(Some(default)))
    };
    let name = (!name.is_empty() && name != "-").then(|| normalise(name));
    let status = (e.status != 0).then_some(e.status);
    let decision = e.decision.split(':').next().unwrap_or("");
    Line::Record(Rec {
        time: Some(e.time_ms),
        source: Some(source),
        proto: if e.https { "connect" } else { "http" }.to_owned(),
        name,
        port,
        allow: e.allowed,
        reason: (!e.allowed).then(|| match status {
            Some(s) => format!("squid {decision} {s}"),
            None => format!("squid {decision}"),
        }),
        status,
        ..Rec::default()
    })
}

/// `name:port` → (`name`, port); IPv6 in brackets; no port → `None`.
fn split_port(s: &str) -> (&str, Option<u16>) {
    if let Some(rest) = s.strip_prefix('[')
        && let Some((ip, after)) = rest.split_once(']')
    {
        return (ip, after.strip_prefix(':').and_then(|p| p.parse().ok()));
    }
    match s.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => match port.parse() {
            Ok(p) => (name, Some(p)),
            Err(_) => (s, None),
        },
        _ => (s, None),
    }
}

/// Lowercase, one trailing dot removed.
fn normalise(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// RFC 3339 to epoch milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Epoch milliseconds to RFC 3339 UTC with milliseconds (`2026-11-21T21:58:24.887Z`).
pub fn format_ms(ms: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(line: &str) -> Rec {
        match parse(line) {
            Line::Record(r) => r,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn a_record_that_ended_early_is_allowed_and_marked() {
        let r = record(
            r#"{"time":"2026-11-21T21:58:24Z","sandbox":"s","client":"127.0.0.1:1","orig_dst":null,"proto":"https","name":"api.example.test","port":443,"decision":"deny","rule":null,"reason":"upstream request failed","upstream":null,"bytes_up":0,"bytes_down":0,"duration_ms":3,"status":502,"failed":true}"#,
        );
        assert!(r.allow && r.failed, "{r:?}");
        let mut agg = super::super::aggregate::Aggregate::default();
        agg.add(&r);
        assert_eq!((agg.allowed, agg.denied, agg.failed), (1, 0, 1));
    }

    #[test]
    fn egressd_records_with_and_without_optional_fields() {
        let r = record(
            r#"{"time":"2026-11-21T21:58:24.887Z","sandbox":"egressd-21548","client":"127.0.0.1:47408","orig_dst":"192.0.2.7:443","proto":"tls","name":"API.Example.test.","port":443,"decision":"allow","rule":"api.example.test (from --allow-domains)","reason":"in the allowlist","upstream":"10.200.250.2:443","bytes_up":723,"bytes_down":6529,"duration_ms":14}"#,
        );
        assert_eq!(r.name.as_deref(), Some("api.example.test"));
        assert_eq!(r.time, Some(1_795_298_304_887));
        assert!(r.allow);
        assert_eq!((r.bytes_up, r.bytes_down), (723, 6529));
        assert_eq!(r.source, Some(Source::Egressd));
        assert_eq!(format_ms(r.time.unwrap()), "2026-11-21T21:58:24.887Z");

        // No name: the original destination's IP stands in; unknown fields are ignored.
        let r = record(
            r#"{"time":"2026-11-21T21:58:25Z","sandbox":"s","client":"127.0.0.1:1","orig_dst":"[2001:db8::1]:443","proto":"unknown","name":null,"port":443,"decision":"deny","rule":null,"reason":"ip destinations need a raw-ip allow entry","upstream":null,"bytes_up":0,"bytes_down":0,"duration_ms":0,"future_field":{"x":1}}"#,
        );
        assert_eq!(r.name.as_deref(), Some("2001:db8::1"));
        assert!(!r.allow);

        let r = record(
            r#"{"time":"2026-11-21T21:58:26Z","sandbox":"s","client":"127.0.0.1:2","orig_dst":null,"proto":"https","name":"my.openai.azure.com","port":443,"decision":"allow","rule":null,"reason":"in the allowlist","upstream":null,"bytes_up":1,"bytes_down":2,"duration_ms":3,"method":"POST","path":"/openai/x","status":503,"credential":"azure-openai","token_source":"entra","actor":"octocat","repository":"o/r","workflow":"ci"}"#,
        );
        assert_eq!(r.credential.as_deref(), Some("azure-openai"));
        assert_eq!(r.status, Some(503));
        assert_eq!(r.actor.as_deref(), Some("octocat"));

        // The nested, verified provenance egressd writes; `null` when absent.
        let r = record(
            r#"{"time":"2026-11-21T21:58:27Z","sandbox":"s","client":"127.0.0.1:3","orig_dst":"192.0.2.7:443","proto":"tls","name":"a.example","port":443,"decision":"allow","rule":null,"reason":"in the allowlist","upstream":null,"bytes_up":0,"bytes_down":0,"duration_ms":0,"provenance":{"issuer":"https://token.actions.githubusercontent.com","actor":"octocat","actor_id":"583231","repository":"org/consumer","job_workflow_ref":"org/platform/.github/workflows/agent.yml@refs/heads/main","workflow_ref":"org/consumer/.github/workflows/caller.yml@refs/heads/main","run_id":"9"}}"#,
        );
        assert_eq!(r.actor.as_deref(), Some("octocat"));
        assert_eq!(r.repository.as_deref(), Some("org/consumer"));
        assert_eq!(
            r.workflow.as_deref(),
            Some("org/platform/.github/workflows/agent.yml@refs/heads/main")
        );
        let r = record(
            r#"{"time":"2026-11-21T21:58:28Z","sandbox":"s","client":"127.0.0.1:4","orig_dst":null,"proto":"dns","name":"a.example","port":53,"decision":"deny","rule":null,"reason":"x","upstream":null,"bytes_up":0,"bytes_down":0,"duration_ms":0,"provenance":null}"#,
        );
        assert_eq!((r.actor, r.repository, r.workflow), (None, None, None));
    }

    #[test]
    fn lifecycle_lines() {
        let Line::Lifecycle(l) = parse(
            r#"{"event":"arm","time":"2026-11-21T21:58:24Z","sandbox":"egressd-1","backend":"ebpf","programs":[{"name":"egressd_connect4","id":9}],"cgroup":"/sys/fs/cgroup/egressd-1","policy_hash":"sha256:ab"}"#,
        ) else {
            panic!()
        };
        assert!(l.arm);
        assert_eq!(l.programs, 1);
        let Line::Lifecycle(l) = parse(
            r#"{"event":"disarm","time":"2026-11-21T21:58:30Z","sandbox":"egressd-1","exit_code":0}"#,
        ) else {
            panic!()
        };
        assert!(!l.arm);
        assert_eq!(l.exit_code, Some(0));
    }

    #[test]
    fn the_node_rule_k8s_node_then_arm_host_then_file() {
        let mut node = Node {
            file: "logs/vm.jsonl".to_owned(),
            host: None,
        };
        let mut of = |line: &str| {
            let mut l = parse(line);
            node.assign(&mut l);
            match l {
                Line::Record(r) => r.node,
                Line::Lifecycle(l) => l.node,
                _ => None,
            }
        };
        let rec = |k8s: &str| {
            format!(
                r#"{{"time":"2026-01-01T00:00:01Z","sandbox":"s","proto":"tls","name":"a.test","port":443,"decision":"allow"{k8s}}}"#
            )
        };
        let k8s = r#","k8s":{"node":"aks-pool-0","namespace":"ci","pod":"runner-x","pod_uid":"u","scale_set":"arc"}"#;
        // No k8s, no arm yet: the file.
        assert_eq!(of(&rec("")).as_deref(), Some("logs/vm.jsonl"));
        assert_eq!(of(&rec(k8s)).as_deref(), Some("aks-pool-0"));
        assert_eq!(of(&rec(r#","k8s":null"#)).as_deref(), Some("logs/vm.jsonl"));
        // An arm with a host: the arm line itself and what follows belong to it.
        let arm = r#"{"event":"arm","time":"2026-01-01T00:00:00Z","sandbox":"s","programs":[],"host":"vm-1"}"#;
        assert_eq!(of(arm).as_deref(), Some("vm-1"));
        assert_eq!(of(&rec("")).as_deref(), Some("vm-1"));
        assert_eq!(of(&rec(k8s)).as_deref(), Some("aks-pool-0"));
        // A later arm without a host keeps the last host; a disarm's host is not read.
        let arm2 = r#"{"event":"arm","time":"2026-01-01T00:00:02Z","sandbox":"t","programs":[]}"#;
        assert_eq!(of(arm2).as_deref(), Some("vm-1"));
        let disarm =
            r#"{"event":"disarm","time":"2026-01-01T00:00:03Z","sandbox":"t","host":"other"}"#;
        assert_eq!(of(disarm).as_deref(), Some("vm-1"));
        assert_eq!(
            of(&rec(k8s.replace("aks-pool-0", "").as_str())).as_deref(),
            Some("vm-1")
        );
        // As parsed (no input yet), only the line's own k8s.node.
        let Line::Lifecycle(l) = parse(&format!(
            r#"{{"event":"arm","time":"2026-01-01T00:00:00Z","sandbox":"s","host":"vm-2"{k8s}}}"#
        )) else {
            panic!()
        };
        assert_eq!(
            (l.host.as_deref(), l.node.as_deref()),
            (Some("vm-2"), Some("aks-pool-0"))
        );
    }

    /// The real lines of awf.md §6.2.
    #[test]
    fn squid_access_log_lines_classify_as_awf_does() {
        let r = record(
            r#"1774290908.910 172.30.0.20:55872 api.github.com:443 140.82.116.5:443 1.1 CONNECT 200 TCP_TUNNEL:HIER_DIRECT api.github.com:443 "curl/7.81.0""#,
        );
        assert_eq!(
            (r.name.as_deref(), r.port, r.allow),
            (Some("api.github.com"), Some(443), true)
        );
        assert_eq!(r.time, Some(1_774_290_908_910));
        let r = record(
            r#"1774290909.186 172.30.0.20:55890 evil.example.com:443 -:- 1.1 CONNECT 403 TCP_DENIED:HIER_NONE evil.example.com:443 "curl/7.81.0""#,
        );
        assert_eq!(
            (r.name.as_deref(), r.allow),
            (Some("evil.example.com"), false)
        );
        assert_eq!(r.reason.as_deref(), Some("squid TCP_DENIED 403"));
        let r = record(
            r#"1760994429.358 172.30.0.20:36274 github.com:8443 -:- 1.1 CONNECT 403 TCP_DENIED:HIER_NONE github.com:8443 "curl/7.81.0""#,
        );
        assert_eq!(
            (r.name.as_deref(), r.port),
            (Some("github.com"), Some(8443))
        );
        assert_eq!(
            parse(
                r#"1773003472.027 ::1:52010 - -:- 0.0 - 0 NONE_NONE:HIER_NONE error:transaction-end-before-headers "-""#
            ),
            Line::Skip
        );
        // Plain HTTP: the Host header, the origin's status.
        let r = record(
            r#"1774290910.000 172.30.0.20:55900 legacy.example 93.184.216.34:80 1.1 GET 200 TCP_MISS:HIER_DIRECT http://legacy.example/x "curl/7.81.0""#,
        );
        assert_eq!(
            (r.name.as_deref(), r.port, r.allow, r.proto.as_str()),
            (Some("legacy.example"), Some(80), true, "http")
        );
        assert_eq!(parse("not a log line"), Line::Malformed);
    }

    #[test]
    fn awf_audit_jsonl_both_time_forms() {
        let r = record(
            r#"{"_schema":"audit/v0.23.1","timestamp":"2026-03-23T18:35:08.910Z","event":"http_access","client":"172.30.0.20","host":"api.github.com:443","dest":"140.82.116.5:443","method":"CONNECT","status":200,"decision":"TCP_TUNNEL","url":"api.github.com:443"}"#,
        );
        assert_eq!(
            (r.name.as_deref(), r.allow, r.source),
            (Some("api.github.com"), true, Some(Source::AwfAudit))
        );
        let r = record(
            r#"{"_schema":"audit/v0.20.0","ts":1774290909.186,"event":"http_access","client":"172.30.0.20","host":"evil.example.com:443","dest":"-:-","method":"CONNECT","status":403,"decision":"TCP_DENIED","url":"evil.example.com:443"}"#,
        );
        assert_eq!((r.allow, r.time), (false, Some(1_774_290_909_186)));
    }
}
