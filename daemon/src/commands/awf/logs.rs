//! `awf logs [summary|stats|audit]` (`shared/reference/awf.md` §2.2, §6.3, §6.4): reads the
//! `access.log` / `audit.jsonl` that `egressd awf` (or AWF itself) wrote, parses lines as AWF's
//! `log-parser.ts` does and aggregates as `log-aggregator.ts` does.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use super::manifest::Manifest;

pub use crate::awf_log::{Entry, parse_access, parse_audit};

/// The entries of a logs directory: `audit.jsonl` when it has any, else `access.log`.
///
/// # Errors
///
/// Neither file could be read.
pub fn load(dir: &Path) -> std::io::Result<Vec<Entry>> {
    if let Ok(text) = std::fs::read_to_string(dir.join("audit.jsonl")) {
        let entries: Vec<Entry> = text.lines().filter_map(parse_audit).collect();
        if !entries.is_empty() {
            return Ok(entries);
        }
    }
    let text = std::fs::read_to_string(dir.join("access.log"))?;
    Ok(text.lines().filter_map(parse_access).collect())
}

/// The logs directory to read (§2.2's discovery, without the running container).
pub fn discover(source: Option<&Path>) -> Option<PathBuf> {
    if let Some(dir) = source {
        return Some(dir.to_path_buf());
    }
    if let Some(dir) = std::env::var_os("AWF_LOGS_DIR").map(PathBuf::from) {
        if dir.join("access.log").exists() {
            return Some(dir);
        }
        if dir.join("squid-logs/access.log").exists() {
            return Some(dir.join("squid-logs"));
        }
    }
    preserved().into_iter().next()
}

/// `$TMPDIR/squid-logs-*` directories with an access.log, newest first.
pub fn preserved() -> Vec<PathBuf> {
    let tmp = std::env::temp_dir();
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&tmp)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("squid-logs-"))
        .filter(|e| e.path().join("access.log").exists())
        .map(|e| {
            let t = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            (t, e.path())
        })
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
    dirs.into_iter().map(|(_, p)| p).collect()
}

/// `policy-manifest.json` for a logs directory: next to it, in `../audit/`, or in
/// `$AWF_AUDIT_DIR`.
pub fn find_manifest(dir: &Path) -> Option<Manifest> {
    let mut candidates = vec![
        dir.join("policy-manifest.json"),
        dir.join("../audit/policy-manifest.json"),
    ];
    if let Some(audit) = std::env::var_os("AWF_AUDIT_DIR") {
        candidates.push(PathBuf::from(audit).join("policy-manifest.json"));
    }
    candidates
        .iter()
        .find_map(|p| serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok())
}

/// Per-domain counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Allowed requests.
    pub allowed: u64,
    /// Denied requests.
    pub denied: u64,
}

/// The aggregate of `log-aggregator.ts`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests counted.
    pub total: u64,
    /// Allowed requests.
    pub allowed: u64,
    /// Denied requests.
    pub denied: u64,
    /// First and last time (ms).
    pub range: Option<(i64, i64)>,
    /// Per domain (`-` included).
    pub by_domain: BTreeMap<String, Counts>,
    /// Per rule id (when a manifest was found): hits.
    pub by_rule: Vec<(String, String, u64, String)>,
}

/// Aggregates `entries`, dropping what AWF drops (§6.3).
pub fn aggregate(entries: &[Entry], manifest: Option<&Manifest>) -> Stats {
    let mut stats = Stats::default();
    let mut hits: BTreeMap<String, u64> = BTreeMap::new();
    let peers: &[String] = manifest.map_or(&[], |m| &m.topology_peers);
    for e in entries {
        if e.url == "error:transaction-end-before-headers" {
            continue;
        }
        let internal = e.domain.starts_with("172.30.0.")
            || (!e.domain.contains('.') && !e.domain.contains(':'))
            || peers.contains(&e.domain);
        if !e.allowed && internal {
            continue;
        }
        stats.total += 1;
        let counts = stats.by_domain.entry(e.domain.clone()).or_default();
        if e.allowed {
            stats.allowed += 1;
            counts.allowed += 1;
        } else {
            stats.denied += 1;
            counts.denied += 1;
        }
        stats.range = Some(match stats.range {
            None => (e.time_ms, e.time_ms),
            Some((a, b)) => (a.min(e.time_ms), b.max(e.time_ms)),
        });
        if let Some(rule) = manifest.and_then(|m| m.rule_for(&e.domain, e.https, e.allowed)) {
            *hits.entry(rule.id.clone()).or_default() += 1;
        }
    }
    if let Some(m) = manifest {
        stats.by_rule = m
            .rules
            .iter()
            .map(|r| {
                let n = hits.get(&r.id).copied().unwrap_or(0);
                (r.id.clone(), r.action.clone(), n, r.description.clone())
            })
            .collect();
    }
    stats
}

/// Domains sorted by total, descending (then by name), without `-`.
fn sorted_domains(stats: &Stats) -> Vec<(&String, &Counts)> {
    let mut rows: Vec<_> = stats.by_domain.iter().filter(|(d, _)| *d != "-").collect();
    rows.sort_by(|a, b| {
        (b.1.allowed + b.1.denied)
            .cmp(&(a.1.allowed + a.1.denied))
            .then(a.0.cmp(b.0))
    });
    rows
}

fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// The markdown summary of §6.4, exactly.
pub fn markdown(stats: &Stats) -> String {
    if stats.total == 0 {
        return "No firewall activity detected.\n".to_owned();
    }
    let unique = stats.by_domain.len() as u64;
    let valid = stats.by_domain.keys().filter(|d| *d != "-").count();
    let domains = if stats.by_domain.contains_key("-") {
        format!("{} ({valid} valid)", plural(unique, "unique domain"))
    } else {
        plural(unique, "unique domain")
    };
    let mut out = String::new();
    let _ = write!(
        out,
        "<details>\n<summary>Firewall Activity</summary>\n\n▼ {} | {} allowed | {} blocked | \
         {domains}\n\n| Domain | Allowed | Denied |\n|--------|---------|--------|\n",
        plural(stats.total, "request"),
        stats.allowed,
        stats.denied,
    );
    for (domain, c) in sorted_domains(stats) {
        let _ = writeln!(out, "| {domain} | {} | {} |", c.allowed, c.denied);
    }
    if !stats.by_rule.is_empty() {
        out.push_str(
            "\n<details>\n<summary>Policy Rules</summary>\n\n| Rule | Action | Hits | \
             Description |\n|------|--------|------|-------------|\n",
        );
        for (id, action, hits, description) in &stats.by_rule {
            let action = if action == "allow" {
                "✅ allow"
            } else {
                "🚫 deny"
            };
            let _ = writeln!(out, "| {id} | {action} | {hits} | {description} |");
        }
        out.push_str("\n</details>\n");
    }
    out.push_str("\n</details>\n\n");
    out
}

/// The json format of §6.4.
pub fn json(stats: &Stats) -> serde_json::Value {
    let by_domain: serde_json::Map<String, serde_json::Value> = stats
        .by_domain
        .iter()
        .map(|(d, c)| {
            let v = serde_json::json!({"allowed": c.allowed, "denied": c.denied,
                "total": c.allowed + c.denied});
            (d.clone(), v)
        })
        .collect();
    let mut v = serde_json::json!({
        "totalRequests": stats.total,
        "allowedRequests": stats.allowed,
        "deniedRequests": stats.denied,
        "uniqueDomains": stats.by_domain.len(),
        "timeRange": stats.range.map(|(s, e)| serde_json::json!({"start": s, "end": e})),
        "byDomain": by_domain,
    });
    if !stats.by_rule.is_empty() {
        v["byRule"] = stats
            .by_rule
            .iter()
            .map(|(id, action, hits, _)| {
                (
                    id.clone(),
                    serde_json::json!({"action": action, "hits": hits}),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    v
}

/// The pretty format of §6.4.
pub fn pretty(stats: &Stats) -> String {
    let pct = |n: u64| {
        if stats.total == 0 {
            0.0
        } else {
            n as f64 * 100.0 / stats.total as f64
        }
    };
    let mut out = String::from("Firewall Statistics\n\n");
    let _ = writeln!(out, "Total Requests: {}", stats.total);
    let _ = writeln!(
        out,
        "Allowed: {} ({:.1}%)",
        stats.allowed,
        pct(stats.allowed)
    );
    let _ = writeln!(out, "Denied: {} ({:.1}%)", stats.denied, pct(stats.denied));
    let _ = writeln!(out, "Unique Domains: {}", stats.by_domain.len());
    match stats.range {
        Some((s, e)) => {
            let _ = writeln!(out, "Time Range: {} - {}", clock(s), clock(e));
        }
        None => out.push_str("Time Range: N/A\n"),
    }
    out.push('\n');
    for (domain, c) in sorted_domains(stats) {
        let _ = writeln!(
            out,
            "  {domain}  {} allowed, {} denied",
            c.allowed, c.denied
        );
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS.mmm` (UTC).
pub fn clock(ms: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        ms.rem_euclid(1000)
    )
}

/// One line of `awf logs` in the pretty format.
pub fn pretty_line(e: &Entry) -> String {
    let target = if e.https {
        e.url.clone()
    } else {
        e.host.clone()
    };
    let verdict = if e.allowed { "ALLOWED" } else { "DENIED" };
    let ua = if e.user_agent.is_empty() || e.user_agent == "-" {
        String::new()
    } else {
        format!(" [{}]", e.user_agent)
    };
    format!(
        "[{}] {} {target} → {} ({verdict}){ua}",
        clock(e.time_ms),
        e.method,
        e.status
    )
}

/// One line of `awf logs --format json` (`ParsedLogEntry`).
pub fn json_line(e: &Entry) -> serde_json::Value {
    serde_json::json!({
        "timestamp": e.time_ms as f64 / 1000.0,
        "clientIp": e.client_ip,
        "clientPort": e.client_port,
        "host": e.host,
        "destIp": e.dest_ip,
        "destPort": e.dest_port,
        "protocol": e.protocol,
        "method": e.method,
        "statusCode": e.status,
        "decision": e.decision,
        "url": e.url,
        "userAgent": e.user_agent,
        "domain": e.domain,
        "isAllowed": e.allowed,
        "isHttps": e.https,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The §6.2 sample lines.
    const SAMPLE: &str = "\
1774290908.910 172.30.0.20:55872 api.github.com:443 140.82.116.5:443 1.1 CONNECT 200 TCP_TUNNEL:HIER_DIRECT api.github.com:443 \"curl/7.81.0\"
1774290909.186 172.30.0.20:55890 evil.example.com:443 -:- 1.1 CONNECT 403 TCP_DENIED:HIER_NONE evil.example.com:443 \"curl/7.81.0\"
1760994429.358 172.30.0.20:36274 github.com:8443 -:- 1.1 CONNECT 403 TCP_DENIED:HIER_NONE github.com:8443 \"curl/7.81.0\"
1773003472.027 ::1:52010 - -:- 0.0 - 0 NONE_NONE:HIER_NONE error:transaction-end-before-headers \"-\"
";

    #[test]
    fn sample_lines_parse_as_awf_does() {
        let e: Vec<Entry> = SAMPLE.lines().filter_map(parse_access).collect();
        assert_eq!(e.len(), 4);
        assert_eq!(e[0].domain, "api.github.com");
        assert!(e[0].allowed && e[0].https);
        assert_eq!(e[0].time_ms, 1_774_290_908_910);
        assert_eq!(e[0].user_agent, "curl/7.81.0");
        assert!(!e[1].allowed);
        assert_eq!(e[2].domain, "github.com");
        assert_eq!(e[3].client_ip, "::1");
        assert!(!e[3].allowed);
    }

    #[test]
    fn summary_markdown_is_byte_for_byte_awf() {
        let line = "1774290908.910 172.30.0.20:55872 api.github.com:443 140.82.116.5:443 1.1 \
                    CONNECT 200 TCP_TUNNEL:HIER_DIRECT api.github.com:443 \"-\"";
        let e = vec![parse_access(line).unwrap(), parse_access(line).unwrap()];
        assert_eq!(
            markdown(&aggregate(&e, None)),
            "<details>\n<summary>Firewall Activity</summary>\n\n▼ 2 requests | 2 allowed | 0 \
             blocked | 1 unique domain\n\n| Domain | Allowed | Denied |\n|--------|---------|\
             --------|\n| api.github.com | 2 | 0 |\n\n</details>\n\n"
        );
    }

    #[test]
    fn summary_golden_with_denials_and_aggregation_drops() {
        let e: Vec<Entry> = SAMPLE.lines().filter_map(parse_access).collect();
        let stats = aggregate(&e, None);
        assert_eq!(stats.total, 3, "the transaction-end line is dropped");
        assert_eq!(
            markdown(&stats),
            "<details>\n<summary>Firewall Activity</summary>\n\n▼ 3 requests | 1 allowed | 2 \
             blocked | 3 unique domains\n\n| Domain | Allowed | Denied |\n|--------|---------|\
             --------|\n| api.github.com | 1 | 0 |\n| evil.example.com | 0 | 1 |\n| github.com \
             | 0 | 1 |\n\n</details>\n\n"
        );
        assert_eq!(
            markdown(&Stats::default()),
            "No firewall activity detected.\n"
        );
        let j = json(&stats);
        assert_eq!(j["totalRequests"], 3);
        assert_eq!(j["byDomain"]["github.com"]["denied"], 1);
    }

    #[test]
    fn audit_jsonl_lines_parse() {
        let e = parse_audit(
            r#"{"_schema":"audit/v0.23.1","timestamp":"2026-03-23T18:35:08.910Z","event":"http_access","client":"172.30.0.20","host":"api.github.com:443","dest":"140.82.116.5:443","method":"CONNECT","status":200,"decision":"TCP_TUNNEL","url":"api.github.com:443"}"#,
        )
        .unwrap();
        assert_eq!(e.domain, "api.github.com");
        assert!(e.allowed);
        assert_eq!(e.time_ms, 1_774_290_908_910);
    }
}
