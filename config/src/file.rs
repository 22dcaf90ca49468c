//! The TOML configuration file: serde types that mirror it, and nothing more.
//!
//! This is the low-level layer: [`File`] holds what the file says, with the byte span of
//! every value ([`toml::Spanned`]) so that errors and entry origins point at
//! `path:line:column`. Turning it into a [`Config`](crate::Config) is the job of
//! [`ConfigBuilder::toml_file`](crate::ConfigBuilder::toml_file) /
//! [`ConfigBuilder::toml_str`](crate::ConfigBuilder::toml_str).
//!
//! # Format
//!
//! Every key is optional; unknown keys are errors (a typo must not silently drop a rule).
//!
//! ```toml
//! # Allowed and blocked names, in AWF syntax: `github.com` covers the apex and all
//! # subdomains, `*.github.com` only subdomains, `https://` / `http://` limit the scheme.
//! allow_domains = ["github.com", "*.githubusercontent.com"]
//! block_domains = ["gist.github.com"]
//! # Destination ports every allowed name may use (replaces the default [80, 443]).
//! ports = [80, 443]
//! # Loopback ports the sandbox may reach (there is no `localhost` domain keyword).
//! loopback_ports = [8080]
//! # Upstream DNS servers, ADDR or ADDR:PORT or [v6]:PORT (default port 53);
//! # none = the system's resolv.conf.
//! dns_servers = ["10.0.0.2:53"]
//! # Fixed answers, HOST:ADDR (IPv6 in brackets); the same host may repeat.
//! resolve = ["api.example.com:10.200.1.2"]
//! # Relative paths are relative to this file's directory.
//! upstream_ca = "/etc/egressd/upstream-ca.pem"
//! audit_log = "/var/log/egressd/audit.jsonl"
//!
//! [dns]
//! denied = "nxdomain"   # the sandbox's answer for a denied name; or "refused"
//!
//! [timeouts]
//! classify = "10s"       # a whole number and a unit: ms, s, m or h; never zero
//! tls_handshake = "10s"
//! request_head = "30s"
//! connect = "10s"
//! idle = "5m"
//! resolve = "5s"
//!
//! [limits]
//! max_connections = 4096     # open at once, per sandbox
//! max_header_bytes = 65536   # request line and headers, 1024 to 1048576
//! max_body_bytes = 104857600  # request bodies (no limit when missing); more: 413
//! pids = 8192                # processes and threads in the sandbox
//! memory = "8G"              # the sandbox's memory (default: 80% of the machine's)
//!
//! # An allow entry with more to say: extra ports, and permission for the name to
//! # resolve to private or loopback addresses.
//! [[rule]]
//! domain = "internal.example.com"
//! ports = [8443]
//! allow_private = true
//! ```
//!
//! `[[credential]]` tables name token sources; their format is in [`crate::credential`].
//! The `[provenance]` table is in [`crate::provenance`], the `[sandbox]` table in
//! [`crate::sandbox`].

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// Allow entries (AWF syntax).
    #[serde(default)]
    pub allow_domains: Vec<Spanned<String>>,
    /// Block entries (AWF syntax); they win over any allow entry.
    #[serde(default)]
    pub block_domains: Vec<Spanned<String>>,
    /// Destination ports every allowed name may use; replaces the default `[80, 443]`.
    pub ports: Option<Vec<Spanned<u16>>>,
    /// Loopback ports the sandbox may reach.
    #[serde(default)]
    pub loopback_ports: Vec<Spanned<u16>>,
    /// Upstream DNS servers (`ADDR`, `ADDR:PORT`, `[v6]:PORT`).
    #[serde(default)]
    pub dns_servers: Vec<Spanned<String>>,
    /// Fixed answers (`HOST:ADDR`).
    #[serde(default)]
    pub resolve: Vec<Spanned<String>>,
    /// Extra CA certificates (PEM) trusted for upstream connections.
    pub upstream_ca: Option<Spanned<PathBuf>>,
    /// Where the JSONL audit log goes.
    pub audit_log: Option<Spanned<PathBuf>>,
    /// Timeouts; missing keys keep their defaults.
    #[serde(default)]
    pub timeouts: FileTimeouts,
    /// Limits; missing keys keep their defaults.
    #[serde(default)]
    pub limits: FileLimits,
    /// `[[rule]]` tables: allow entries with extra ports or `allow_private`.
    #[serde(default, rename = "rule")]
    pub rules: Vec<FileRule>,
    /// `[[credential]]` tables (see [`crate::credential`]).
    #[serde(default, rename = "credential")]
    pub credentials: Vec<serde::de::IgnoredAny>,
    /// The `[dns]` table: how the sandbox's DNS listener answers.
    #[serde(default)]
    pub dns: FileDns,
    /// `[[intercept]]` tables (see [`crate::intercept`]).
    #[serde(default, rename = "intercept")]
    pub intercepts: Vec<crate::intercept::FileIntercept>,
    /// The `[copilot]` table (see [`crate::copilot`]).
    pub copilot: Option<Spanned<crate::copilot::FileCopilot>>,
    /// The `[provenance]` table (see [`crate::provenance`]).
    pub provenance: Option<crate::provenance::FileProvenance>,
    /// The `[sandbox]` table (see [`crate::sandbox`]).
    #[serde(default)]
    pub sandbox: crate::sandbox::FileSandbox,
}

/// The `[dns]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDns {
    /// The answer for a denied name: `"nxdomain"` (default) or `"refused"`.
    pub denied: Option<Spanned<String>>,
}

/// The `[timeouts]` table; durations are strings such as `"500ms"`, `"10s"` or `"5m"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTimeouts {
    /// Waiting for the first bytes of a connection (in total: the slowloris guard).
    pub classify: Option<Spanned<String>>,
    /// An intercepted client finishing its TLS handshake.
    pub tls_handshake: Option<Spanned<String>>,
    /// The head of each later request on a kept-alive HTTP/1 connection.
    pub request_head: Option<Spanned<String>>,
    /// Connecting to an upstream.
    pub connect: Option<Spanned<String>>,
    /// Silence on a relayed connection.
    pub idle: Option<Spanned<String>>,
    /// A DNS resolution.
    pub resolve: Option<Spanned<String>>,
}

/// The `[limits]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    /// Connections open through the proxy at once, per sandbox.
    pub max_connections: Option<Spanned<u32>>,
    /// Largest HTTP request head in bytes.
    pub max_header_bytes: Option<Spanned<u32>>,
    /// Largest HTTP request body in bytes (no limit when missing).
    pub max_body_bytes: Option<Spanned<u64>>,
    /// `pids.max` of the sandbox cgroup.
    pub pids: Option<Spanned<u64>>,
    /// `memory.max` of the sandbox cgroup.
    pub memory: Option<Spanned<crate::sandbox::FileSize>>,
}

/// One `[[rule]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRule {
    /// The entry, in AWF syntax.
    pub domain: Spanned<String>,
    /// Ports allowed for this entry in addition to the global `ports`.
    #[serde(default)]
    pub ports: Vec<Spanned<u16>>,
    /// The name may resolve to private, loopback or link-local addresses.
    #[serde(default)]
    pub allow_private: bool,
}

impl File {
    /// Parses the text of a file.
    ///
    /// # Errors
    ///
    /// The parser's error for invalid TOML, unknown keys and values of the wrong type;
    /// [`toml::de::Error::span`] says where.
    pub fn parse(text: &str) -> Result<File, toml::de::Error> {
        toml::from_str(text)
    }
}

pub use crate::duration::parse_duration;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_mins(5)));
        assert_eq!(parse_duration("2 h"), Ok(Duration::from_hours(2)));
        for bad in [
            "",
            "10",
            "s",
            "1.5s",
            "-1s",
            "10 sec",
            "0s",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn documented_example_parses() {
        let doc = include_str!("file.rs");
        let start = doc.find("//! ```toml\n").unwrap() + "//! ```toml\n".len();
        let end = start + doc[start..].find("//! ```\n").unwrap();
        let example: String = doc[start..end]
            .lines()
            .map(|l| l.trim_start_matches("//!").trim_start_matches(' '))
            .fold(String::new(), |text, line| text + line + "\n");
        let file = File::parse(&example).unwrap();
        assert_eq!(file.allow_domains.len(), 2);
        assert_eq!(file.rules.len(), 1);
        assert!(file.rules[0].allow_private);
        assert_eq!(
            file.timeouts.idle.as_ref().map(|s| s.get_ref().as_str()),
            Some("5m")
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = File::parse("alow_domains = [\"x.com\"]").unwrap_err();
        assert!(err.message().contains("unknown field"), "{}", err.message());
        assert!(File::parse("[timeouts]\nidel = \"1s\"").is_err());
        assert!(File::parse("[[rule]]\ndomain = \"a.com\"\nport = [1]").is_err());
    }
}
