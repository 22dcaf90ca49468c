//! AWF-format logs: Squid's `firewall_detailed` `access.log` and AWF's `audit.jsonl`
//! (`shared/reference/awf.md` §6.2), written from the same [`Record`]s as egressd's JSONL so
//! that gh-aw's parsers (§6.3) and `awf logs` read egressd's runs as they read AWF's.
//!
//! Mapping (Squid without SSL bump sees one `CONNECT` per HTTPS connection):
//!
//! * `tls` (and `unknown`, which never named a host): `CONNECT host:port`; allowed is
//!   `200 TCP_TUNNEL:HIER_DIRECT` with the dialled address, or `503 TCP_TUNNEL:HIER_NONE` when
//!   the upstream could not be reached; denied is `403 TCP_DENIED:HIER_NONE` with dest `-:-`.
//! * `http`: the request's method, the `Host` (no port) and the absolute URL; allowed is
//!   `TCP_MISS:HIER_DIRECT` (status 200 when the record has none), denied `403 TCP_DENIED`.
//! * `https` (a request on an intercepted connection): as `http`, with an `https://` URL, the
//!   way Squid logs bumped requests.
//! * `dns` and `loopback`: not written (Squid never sees DNS; AWF excludes local health checks).
//!
//! The User-Agent field is `"-"`: egressd never keeps header values.
//!
//! Each line is formatted into one reused buffer under the file's lock and written with one
//! `write` call, flushed, so lines from concurrent connections never interleave.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::Path;
use std::sync::Mutex;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{AuditDecision, Proto, Record, lock};

/// The two AWF log files of a run.
#[derive(Debug)]
pub struct AwfLog {
    /// `access.log` (`firewall_detailed`) and its line buffer.
    access: Mutex<(File, String)>,
    /// `audit.jsonl` and its line buffer.
    audit: Mutex<(File, String)>,
    /// The AWF version in each `audit.jsonl` line's `_schema` (`audit/v<version>`).
    version: String,
    /// `api-proxy-logs/token-usage.jsonl`: one line per api-proxy response that reported
    /// token usage (§5.7).
    token_usage: Mutex<File>,
}

/// The `_schema` of each `token-usage.jsonl` line.
pub const TOKEN_USAGE_SCHEMA: &str = "token-usage/v1.0.0";

/// One line of `token-usage.jsonl` (`reference/awf.md` §5.7): the required fields, and the
/// optional `x_initiator` and `reasoning_tokens` when known.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenUsageLine<'a> {
    /// Always [`TOKEN_USAGE_SCHEMA`].
    #[serde(rename = "_schema")]
    pub schema: &'static str,
    /// RFC 3339, when the response ended.
    pub timestamp: String,
    /// Always `token_usage`.
    pub event: &'static str,
    /// The `x-request-id` the api-proxy sent upstream.
    pub request_id: &'a str,
    /// `openai`, `anthropic`, `copilot`, `gemini`, `vertex`.
    pub provider: &'a str,
    /// The model the provider says answered (`unknown` when it did not say).
    pub model: &'a str,
    /// The request path as the agent sent it.
    pub path: &'a str,
    /// The upstream's status.
    pub status: u16,
    /// Whether the response was an event stream.
    pub streaming: bool,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    /// From the request to the end of the response.
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x_initiator: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
}

impl AwfLog {
    /// Opens (creating, appending, mode 0644) `access.log` and `audit.jsonl` in `dir`, and
    /// `api-proxy-logs/token-usage.jsonl` under it.
    ///
    /// # Errors
    ///
    /// Opening either file failed (missing directory, permissions).
    pub fn open(dir: &Path, version: &str) -> io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let open = |name: &str| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o644)
                .open(dir.join(name))
        };
        std::fs::create_dir_all(dir.join("api-proxy-logs"))?;
        Ok(Self {
            access: Mutex::new((open("access.log")?, String::with_capacity(256))),
            audit: Mutex::new((open("audit.jsonl")?, String::with_capacity(256))),
            version: version.to_owned(),
            token_usage: Mutex::new(open("api-proxy-logs/token-usage.jsonl")?),
        })
    }

    /// Writes one `token-usage.jsonl` line.
    pub(crate) fn token_usage(&self, line: &TokenUsageLine<'_>) {
        let Ok(mut text) = serde_json::to_string(line) else {
            return;
        };
        text.push('\n');
        write_out(&mut lock(&self.token_usage), &text, "token-usage.jsonl");
    }

    /// Writes the lines for `record` (none for DNS and loopback records).
    pub(crate) fn record(&self, record: &Record) {
        let Some(line) = AccessLine::from_record(record) else {
            return;
        };
        {
            let mut guard = lock(&self.access);
            let (file, buf) = &mut *guard;
            buf.clear();
            line.write_access(buf);
            write_out(file, buf, "access.log");
        }
        let mut guard = lock(&self.audit);
        let (file, buf) = &mut *guard;
        buf.clear();
        line.write_audit(buf, &self.version);
        write_out(file, buf, "audit.jsonl");
    }
}

/// One `firewall_detailed` line, borrowed from a [`Record`].
#[derive(Debug, Clone)]
pub struct AccessLine<'a> {
    /// Start time, milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// The client (`%>a:%>p`).
    pub client: std::net::SocketAddr,
    /// The `Host` field: `name:port` for CONNECT, the name for requests.
    pub host: HostField<'a>,
    /// The address dialled (`%<a:%<p`), `-:-` when none.
    pub dest: Option<std::net::SocketAddr>,
    /// `CONNECT`, `GET`, ...
    pub method: &'a str,
    /// The status sent.
    pub status: u16,
    /// `TCP_TUNNEL`, `TCP_MISS`, `TCP_DENIED`.
    pub code: &'static str,
    /// `HIER_DIRECT` or `HIER_NONE`.
    pub hier: &'static str,
    /// `https://` or `http://` for requests, `None` for CONNECT (`host:port`).
    pub scheme: Option<&'static str>,
    /// The request path (requests only).
    pub path: &'a str,
}

/// The host a line names: a name or an IP, with the port for CONNECT.
#[derive(Debug, Clone, Copy)]
pub struct HostField<'a> {
    /// The SNI/Host name, else `None` (then `ip` is used).
    pub name: Option<&'a str>,
    /// The original destination IP, when there is no name.
    pub ip: Option<std::net::IpAddr>,
    /// The destination port.
    pub port: u16,
}

impl<'a> AccessLine<'a> {
    /// The line for `r`, or `None` for records Squid would not log.
    pub(crate) fn from_record(r: &'a Record) -> Option<Self> {
        // Requests the api-proxy answered itself never reach Squid in AWF (the agent talks
        // to the sidecar directly); the ones it forwards are logged under the provider's host.
        if r.name.as_deref() == Some(egressd_config::awf::apiproxy::HOST)
            && r.orig_dst.map(|o| o.ip()) == Some(egressd_config::awf::apiproxy::IP.into())
        {
            return None;
        }
        let allow = r.decision == AuditDecision::Allow;
        let port = r.port.or(r.orig_dst.map(|o| o.port())).unwrap_or(0);
        let host = HostField {
            name: r.name.as_deref(),
            ip: r.orig_dst.map(|o| o.ip()),
            port,
        };
        let time_ms = parse_ms(&r.time);
        let (method, scheme, status, code, hier, dest) = match r.proto {
            Proto::Dns | Proto::Loopback => return None,
            Proto::Tls | Proto::Unknown => match (allow, r.upstream) {
                (true, Some(up)) => ("CONNECT", None, 200, "TCP_TUNNEL", "HIER_DIRECT", Some(up)),
                (true, None) => ("CONNECT", None, 503, "TCP_TUNNEL", "HIER_NONE", None),
                (false, _) => ("CONNECT", None, 403, "TCP_DENIED", "HIER_NONE", None),
            },
            Proto::Http | Proto::Https => {
                let method = r.method.as_deref().unwrap_or("GET");
                let scheme = Some(if r.proto == Proto::Http {
                    "http://"
                } else {
                    "https://"
                });
                if allow {
                    let status = r.status.unwrap_or(200);
                    (
                        method,
                        scheme,
                        status,
                        "TCP_MISS",
                        "HIER_DIRECT",
                        r.upstream,
                    )
                } else {
                    (method, scheme, 403, "TCP_DENIED", "HIER_NONE", None)
                }
            }
        };
        Some(Self {
            time_ms,
            client: r.client,
            host,
            dest,
            method,
            status,
            code,
            hier,
            scheme,
            path: r.path.as_deref().unwrap_or("/"),
        })
    }

    /// Appends the `firewall_detailed` line (with its newline) to `out`:
    /// `%ts.%03tu %>a:%>p %{Host}>h %<a:%<p %rv %rm %>Hs %Ss:%Sh %ru "%{User-Agent}>h"`.
    pub fn write_access(&self, out: &mut String) {
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "{}.{:03} {}:{} ",
            self.time_ms.div_euclid(1000),
            self.time_ms.rem_euclid(1000),
            self.client.ip(),
            self.client.port()
        );
        self.write_host(out);
        out.push(' ');
        self.write_dest(out);
        let _ = write!(
            out,
            " 1.1 {} {} {}:{} ",
            self.method, self.status, self.code, self.hier
        );
        self.write_url(out);
        out.push_str(" \"-\"\n");
    }

    /// Appends the `audit_jsonl` line (with its newline) to `out`.
    pub fn write_audit(&self, out: &mut String, version: &str) {
        out.push_str("{\"_schema\":\"audit/v");
        push_json_str(out, version);
        out.push_str("\",\"timestamp\":\"");
        let stamp = OffsetDateTime::from_unix_timestamp(self.time_ms.div_euclid(1000))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let _ = write!(
            out,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            stamp.year(),
            u8::from(stamp.month()),
            stamp.day(),
            stamp.hour(),
            stamp.minute(),
            stamp.second(),
            self.time_ms.rem_euclid(1000)
        );
        let _ = write!(
            out,
            "\",\"event\":\"http_access\",\"client\":\"{}\",\"host\":\"",
            self.client.ip()
        );
        let mut field = String::new();
        self.write_host(&mut field);
        push_json_str(out, &field);
        out.push_str("\",\"dest\":\"");
        self.write_dest(out);
        out.push_str("\",\"method\":\"");
        push_json_str(out, self.method);
        let _ = write!(
            out,
            "\",\"status\":{},\"decision\":\"{}\",\"url\":\"",
            self.status, self.code
        );
        field.clear();
        self.write_url(&mut field);
        push_json_str(out, &field);
        out.push_str("\"}\n");
    }

    fn write_host(&self, out: &mut String) {
        self.write_name(out);
        if self.scheme.is_none() {
            let _ = write!(out, ":{}", self.host.port);
        }
    }

    fn write_name(&self, out: &mut String) {
        match (self.host.name, self.host.ip) {
            (Some(name), _) => push_field(out, name),
            (None, Some(std::net::IpAddr::V6(ip))) => {
                let _ = write!(out, "[{ip}]");
            }
            (None, Some(ip)) => {
                let _ = write!(out, "{ip}");
            }
            (None, None) => out.push('-'),
        }
    }

    fn write_dest(&self, out: &mut String) {
        match self.dest {
            Some(d) => {
                let _ = write!(out, "{}:{}", d.ip(), d.port());
            }
            None => out.push_str("-:-"),
        }
    }

    fn write_url(&self, out: &mut String) {
        match self.scheme {
            None => self.write_host(out),
            Some(scheme) => {
                out.push_str(scheme);
                self.write_name(out);
                let default = if scheme == "http://" { 80 } else { 443 };
                if self.host.port != default && self.host.port != 0 {
                    let _ = write!(out, ":{}", self.host.port);
                }
                push_field(out, self.path);
            }
        }
    }
}

/// Appends `s` with whitespace and quotes replaced, so a line always keeps its 10 fields.
fn push_field(out: &mut String, s: &str) {
    for c in s.chars() {
        out.push(if c.is_whitespace() || c == '"' || c.is_control() {
            '_'
        } else {
            c
        });
    }
}

/// Appends `s` escaped for a JSON string.
fn push_json_str(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

/// Milliseconds since the epoch of an RFC 3339 time (0 when unreadable).
fn parse_ms(time: &str) -> i64 {
    OffsetDateTime::parse(time, &Rfc3339)
        .map(|t| i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
        .unwrap_or(0)
}

fn write_out(file: &mut File, line: &str, what: &str) {
    if let Err(e) = file.write_all(line.as_bytes()).and_then(|()| file.flush()) {
        tracing::warn!(error = %e, file = what, "writing the AWF log");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(proto: Proto, name: Option<&str>, port: u16, allow: bool) -> Record {
        let mut r = Record::new(
            &std::sync::Arc::from("egressd-1"),
            "172.30.0.20:55872".parse().unwrap(),
            Some(format!("192.0.2.10:{port}").parse().unwrap()),
            proto,
        );
        r.time = "2026-03-23T18:35:08.910123Z".to_owned();
        r.name = name.map(str::to_owned);
        if allow {
            r.decision = AuditDecision::Allow;
            r.upstream = Some(format!("140.82.116.5:{port}").parse().unwrap());
        }
        r
    }

    #[test]
    fn what_the_api_proxy_answers_itself_is_not_logged() {
        let mut r = rec(Proto::Https, Some("api-proxy"), 10000, true);
        r.orig_dst = Some("172.30.0.30:10000".parse().unwrap());
        assert!(AccessLine::from_record(&r).is_none());
        r.name = Some("api.openai.com".to_owned());
        assert!(AccessLine::from_record(&r).is_some());
    }

    fn access(r: &Record) -> String {
        let mut s = String::new();
        AccessLine::from_record(r).unwrap().write_access(&mut s);
        s
    }

    #[test]
    fn tls_lines_match_squid_connect_lines() {
        let allowed = rec(Proto::Tls, Some("api.github.com"), 443, true);
        assert_eq!(
            access(&allowed),
            "1774290908.910 172.30.0.20:55872 api.github.com:443 140.82.116.5:443 1.1 CONNECT \
             200 TCP_TUNNEL:HIER_DIRECT api.github.com:443 \"-\"\n"
        );
        let denied = rec(Proto::Tls, Some("github.com"), 8443, false);
        assert_eq!(
            access(&denied),
            "1774290908.910 172.30.0.20:55872 github.com:8443 -:- 1.1 CONNECT 403 \
             TCP_DENIED:HIER_NONE github.com:8443 \"-\"\n"
        );
    }

    #[test]
    fn http_lines_have_host_without_port_and_absolute_url() {
        let mut r = rec(Proto::Http, Some("evil.example"), 80, false);
        r.method = Some("GET".to_owned());
        r.path = Some("/x".to_owned());
        assert_eq!(
            access(&r),
            "1774290908.910 172.30.0.20:55872 evil.example -:- 1.1 GET 403 \
             TCP_DENIED:HIER_NONE http://evil.example/x \"-\"\n"
        );
        let mut r = rec(Proto::Http, Some("api.example"), 8080, true);
        r.method = Some("POST".to_owned());
        r.path = Some("/".to_owned());
        assert!(access(&r).contains(" POST 200 TCP_MISS:HIER_DIRECT http://api.example:8080/ "));
    }

    #[test]
    fn dns_and_loopback_are_not_logged_and_nameless_uses_the_ip() {
        assert!(AccessLine::from_record(&rec(Proto::Dns, Some("a.b"), 53, true)).is_none());
        assert!(AccessLine::from_record(&rec(Proto::Loopback, None, 5432, true)).is_none());
        assert!(access(&rec(Proto::Tls, None, 443, false)).contains(" 192.0.2.10:443 -:- "));
    }

    #[test]
    fn audit_jsonl_matches_awf_schema() {
        let mut s = String::new();
        AccessLine::from_record(&rec(Proto::Tls, Some("api.github.com"), 443, true))
            .unwrap()
            .write_audit(&mut s, "0.28.4");
        assert_eq!(
            s,
            "{\"_schema\":\"audit/v0.28.4\",\"timestamp\":\"2026-03-23T18:35:08.910Z\",\
             \"event\":\"http_access\",\"client\":\"172.30.0.20\",\"host\":\"api.github.com:443\",\
             \"dest\":\"140.82.116.5:443\",\"method\":\"CONNECT\",\"status\":200,\
             \"decision\":\"TCP_TUNNEL\",\"url\":\"api.github.com:443\"}\n"
        );
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["status"], 200);
    }
}
