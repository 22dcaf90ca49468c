//! AWF's log lines, parsed as AWF's `log-parser.ts` does (`shared/reference/awf.md` §6.3):
//! Squid's `firewall_detailed` `access.log` and `audit.jsonl`. The one parser of these lines,
//! shared by `awf logs` (`commands/awf/logs.rs`) and `egressd audit`
//! (`commands/audit/read.rs`), and fuzzed (`fuzz/`): self-contained, it uses only serde_json
//! and time.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// One parsed line (AWF's `ParsedLogEntry`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Milliseconds since the epoch.
    pub time_ms: i64,
    /// `%>a`.
    pub client_ip: String,
    /// `%>p`.
    pub client_port: String,
    /// `%{Host}>h`.
    pub host: String,
    /// `%<a`.
    pub dest_ip: String,
    /// `%<p`.
    pub dest_port: String,
    /// `%rv`.
    pub protocol: String,
    /// `%rm`.
    pub method: String,
    /// `%>Hs`.
    pub status: u16,
    /// `%Ss:%Sh` (or `%Ss` from audit.jsonl).
    pub decision: String,
    /// `%ru`.
    pub url: String,
    /// The User-Agent.
    pub user_agent: String,
    /// The URL host for CONNECT, else the Host header; without the port.
    pub domain: String,
    /// Not `TCP_DENIED*`, not `NONE*`.
    pub allowed: bool,
    /// A CONNECT.
    pub https: bool,
}

/// Parses one `firewall_detailed` line (§6.3's regex, field by field); the quoted user
/// agent at the end may be missing. The one parser of Squid lines: `egressd audit` reads
/// them through it too.
pub fn parse_access(line: &str) -> Option<Entry> {
    let (head, user_agent) = match line.split_once(" \"") {
        Some((head, ua)) => (head, ua.strip_suffix('"').unwrap_or(ua).to_owned()),
        None => (line, "-".to_owned()),
    };
    let f: Vec<&str> = head.split_whitespace().collect();
    let [
        ts,
        client,
        host,
        dest,
        protocol,
        method,
        status,
        decision,
        url,
    ] = f[..]
    else {
        return None;
    };
    let time_ms = epoch_ms(ts.parse::<f64>().ok()?);
    let (client_ip, client_port) = client.rsplit_once(':')?;
    let (dest_ip, dest_port) = dest.split_once(':')?;
    Some(entry(
        time_ms,
        client_ip,
        client_port,
        host,
        dest_ip,
        dest_port,
        protocol,
        method,
        status.parse().ok()?,
        decision,
        url,
        user_agent,
    ))
}

/// Epoch seconds (with a fraction) to milliseconds.
fn epoch_ms(seconds: f64) -> i64 {
    #[allow(
        clippy::cast_possible_truncation,
        reason = "epoch milliseconds fit an i64 for any real timestamp"
    )]
    let ms = (seconds * 1000.0).round() as i64;
    ms
}

/// Parses one AWF `audit.jsonl` access line (`timestamp` or the legacy epoch `ts`); the one
/// parser of these lines, `egressd audit` included.
pub fn parse_audit(line: &str) -> Option<Entry> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    // Older AWF versions wrote no `event`, only `_schema`.
    let access = v["event"] == "http_access" || (v["event"].is_null() && v["_schema"].is_string());
    if !access {
        return None;
    }
    let time_ms = match (&v["timestamp"], &v["ts"]) {
        (serde_json::Value::String(t), _) => OffsetDateTime::parse(t, &Rfc3339)
            .ok()
            .map(|t| i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))?,
        (_, serde_json::Value::Number(n)) => epoch_ms(n.as_f64()?),
        _ => return None,
    };
    let s = |k: &str| v[k].as_str().unwrap_or("-").to_owned();
    let dest = s("dest");
    let (dest_ip, dest_port) = dest.split_once(':').unwrap_or(("-", "-"));
    Some(entry(
        time_ms,
        &s("client"),
        "-",
        &s("host"),
        dest_ip,
        dest_port,
        "-",
        &s("method"),
        u16::try_from(v["status"].as_u64().unwrap_or(0)).unwrap_or(0),
        &s("decision"),
        &s("url"),
        "-".to_owned(),
    ))
}

#[allow(clippy::too_many_arguments, reason = "one argument per log field")]
fn entry(
    time_ms: i64,
    client_ip: &str,
    client_port: &str,
    host: &str,
    dest_ip: &str,
    dest_port: &str,
    protocol: &str,
    method: &str,
    status: u16,
    decision: &str,
    url: &str,
    user_agent: String,
) -> Entry {
    let https = method == "CONNECT";
    let name = if https { url } else { host };
    let domain = strip_port(name).to_owned();
    let allowed = !decision.is_empty()
        && !decision.starts_with("TCP_DENIED")
        && !decision.starts_with("NONE");
    Entry {
        time_ms,
        client_ip: client_ip.to_owned(),
        client_port: client_port.to_owned(),
        host: host.to_owned(),
        dest_ip: dest_ip.to_owned(),
        dest_port: dest_port.to_owned(),
        protocol: protocol.to_owned(),
        method: method.to_owned(),
        status,
        decision: decision.to_owned(),
        url: url.to_owned(),
        user_agent,
        domain,
        allowed,
        https,
    }
}

fn strip_port(s: &str) -> &str {
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match s.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !h.contains(':') => h,
        _ => s,
    }
}
