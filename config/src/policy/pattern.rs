//! Allow and block entries: AWF domain syntax parsed into a [`Pattern`].
//!
//! Parsing follows `shared/reference/awf.md` §3.1 (parse, don't validate): the entry is
//! trimmed, an `https://` or `http://` prefix becomes a [`SchemeFilter`], one trailing `/`
//! is removed, and the rest becomes a [`Pattern`]. Entries AWF keeps but that can never
//! match (a port or a path, a trailing dot) become [`Pattern::Dead`] so that
//! `egressd allowlist show` can flag them. Entries AWF rejects are rejected with an
//! [`EntryError`] that says how to fix them.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::error::{EntryError, ErrorKind};

/// Longest DNS name, in bytes without the trailing dot (RFC 1035).
pub(crate) const MAX_NAME_LEN: usize = 253;

/// One allow or block entry, as the user wrote it and as it was understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The entry as the user wrote it (trimmed).
    pub text: String,
    /// Which list it belongs to.
    pub list: List,
    /// The scheme it is limited to (`https://` / `http://` prefix).
    pub scheme: SchemeFilter,
    /// Destination ports allowed in addition to [`Policy::ports`](crate::Policy::ports)
    /// (from a `[[rule]]`).
    pub ports: Vec<u16>,
    /// The name may resolve to private, loopback or link-local addresses (from a `[[rule]]`).
    ///
    /// # Security
    ///
    /// Without this, the proxy refuses an allowed name whose answer is private (DNS
    /// rebinding towards the runner's network).
    pub allow_private: bool,
    /// The name may resolve to addresses of a private network (RFC 1918, CGNAT, IPv6 ULA),
    /// never loopback, link-local or metadata: derived GHES hosts, which most installations
    /// resolve inside the company network.
    pub private_network: bool,
    /// Where the entry came from.
    pub origin: Origin,
    pattern: Pattern,
}

/// Which resolved addresses an allowed name may be dialled at; ordered from the narrowest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Reach {
    /// Public addresses only: a private answer is DNS rebinding towards the runner's network.
    #[default]
    Public,
    /// Public and private-network addresses (RFC 1918, CGNAT, IPv6 ULA); never loopback,
    /// link-local or metadata.
    PrivateNetwork,
    /// Any address (`[[rule]] allow_private = true`).
    Any,
}

/// The list an [`Entry`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum List {
    /// Names that may be reached.
    Allow,
    /// Names that may never be reached; wins over any allow entry.
    Block,
}

/// The scheme an [`Entry`] is limited to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchemeFilter {
    /// No prefix: TLS and plain HTTP.
    Any,
    /// `https://` prefix: only connections that start with a TLS `ClientHello`.
    HttpsOnly,
    /// `http://` prefix: only plain HTTP/1 requests.
    HttpOnly,
}

/// Where an [`Entry`] (or a loopback port) came from, shown in decisions and audit logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag, such as `--allow-domains`.
    Flag(&'static str),
    /// A line of a file (allow file or TOML file), counting from 1.
    File {
        /// The file, as given to the builder.
        path: PathBuf,
        /// Line number, from 1.
        line: u32,
    },
    /// Built into egressd; the text names what, e.g. `Builtin("default")` shows as
    /// "built-in default".
    Builtin(&'static str),
    /// Derived from the environment egressd runs in, e.g. `github:ghe.com(acme)`.
    Derived(String),
}

/// What an [`Entry`] matches, once parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Pattern {
    /// `github.com` or `.github.com`: the domain and every subdomain. Holds the domain in
    /// lowercase without the leading dot.
    Domain(String),
    /// A pattern with `*`, in lowercase; `*` matches `[a-zA-Z0-9.-]*`, dots included.
    Wildcard(String),
    /// A raw IP address (IPv4-mapped IPv6 stored as IPv4): that address only.
    Ip(IpAddr),
    /// Accepted, as AWF does, but never matches; the text says why and what to do.
    Dead(&'static str),
}

/// Why an entry with a port or a path never matches.
pub(crate) const DEAD_PORT_OR_PATH: &str =
    "ports and paths in domain entries never match; use a [[rule]] with ports";
/// Why an entry with a trailing dot never matches.
pub(crate) const DEAD_TRAILING_DOT: &str =
    "entries with a trailing dot never match (as in AWF); remove the trailing dot";
/// Why an over-long entry never matches.
pub(crate) const DEAD_TOO_LONG: &str =
    "the entry is longer than 253 characters, so no dns name can match it";

impl Entry {
    /// Parses one entry of the given list.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidEntry`] for entries AWF rejects (empty, forbidden characters,
    /// patterns that match (almost) everything, `..`), and
    /// [`ErrorKind::LocalhostKeyword`] for `localhost`.
    pub fn parse(text: &str, list: List, origin: Origin) -> Result<Entry, ErrorKind> {
        let text = text.trim();
        let (scheme, pattern) = parse_pattern(text).map_err(|why| match why {
            Rejected::Entry(why) => ErrorKind::InvalidEntry {
                entry: text.to_owned(),
                why,
            },
            Rejected::Localhost => ErrorKind::LocalhostKeyword {
                entry: text.to_owned(),
            },
        })?;
        Ok(Entry {
            text: text.to_owned(),
            list,
            scheme,
            ports: Vec::new(),
            allow_private: false,
            private_network: false,
            origin,
            pattern,
        })
    }

    /// Which addresses the name may resolve to ([`allow_private`](Self::allow_private) and
    /// [`private_network`](Self::private_network) combined).
    pub fn reach(&self) -> Reach {
        if self.allow_private {
            Reach::Any
        } else if self.private_network {
            Reach::PrivateNetwork
        } else {
            Reach::Public
        }
    }

    /// What the entry matches.
    pub fn pattern(&self) -> &Pattern {
        &self.pattern
    }

    /// True when the entry can never match anything (see [`Entry::dead_reason`]).
    pub fn is_dead(&self) -> bool {
        matches!(self.pattern, Pattern::Dead(_))
    }

    /// Why the entry can never match, and what to write instead; `None` for live entries.
    pub fn dead_reason(&self) -> Option<&'static str> {
        match self.pattern {
            Pattern::Dead(why) => Some(why),
            _ => None,
        }
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (from {})", self.text, self.origin)
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => f.write_str(flag),
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::Builtin(what) => write!(f, "built-in {what}"),
            Origin::Derived(what) => f.write_str(what),
        }
    }
}

impl SchemeFilter {
    /// True when a connection of `scheme` may use an entry with this filter.
    pub fn admits(self, scheme: crate::Scheme) -> bool {
        match self {
            SchemeFilter::Any => true,
            SchemeFilter::HttpsOnly => scheme == crate::Scheme::Https,
            SchemeFilter::HttpOnly => scheme == crate::Scheme::Http,
        }
    }
}

enum Rejected {
    Entry(EntryError),
    Localhost,
}

impl From<EntryError> for Rejected {
    fn from(why: EntryError) -> Self {
        Rejected::Entry(why)
    }
}

/// Parses a trimmed entry into its scheme filter and pattern.
fn parse_pattern(text: &str) -> Result<(SchemeFilter, Pattern), Rejected> {
    if text.chars().any(char::is_whitespace) {
        return Err(EntryError::Whitespace.into());
    }
    if let Some(c) = text
        .chars()
        .find(|c| matches!(c, '\0' | '"' | '\'' | '`' | ';' | '#' | '\\'))
    {
        return Err(EntryError::Forbidden(c).into());
    }
    let (scheme, rest) = strip_scheme(text);
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Err(EntryError::Empty.into());
    }
    if rest.eq_ignore_ascii_case("localhost") {
        return Err(Rejected::Localhost);
    }
    if let Some(ip) = parse_ip(rest) {
        return Ok((scheme, Pattern::Ip(ip)));
    }
    if rest.contains([':', '/']) {
        return Ok((scheme, Pattern::Dead(DEAD_PORT_OR_PATH)));
    }
    if rest == "." {
        return Err(EntryError::LoneDot.into());
    }
    if rest.contains("..") {
        return Err(EntryError::EmptyLabel.into());
    }
    if rest.bytes().all(|b| b == b'*' || b == b'.') {
        return Err(EntryError::MatchesEverything.into());
    }
    if let Some(c) = rest
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '*')))
    {
        return Err(EntryError::InvalidChar(c).into());
    }
    let (stars, others) = rest
        .split('.')
        .filter(|l| !l.is_empty())
        .fold(
            (0, 0),
            |(s, o), l| {
                if l == "*" { (s + 1, o) } else { (s, o + 1) }
            },
        );
    if stars >= 2 && others <= 1 {
        return Err(EntryError::TooBroad.into());
    }
    if rest.ends_with('.') {
        return Ok((scheme, Pattern::Dead(DEAD_TRAILING_DOT)));
    }
    if rest.len() > MAX_NAME_LEN {
        return Ok((scheme, Pattern::Dead(DEAD_TOO_LONG)));
    }
    let lower = rest.to_ascii_lowercase();
    if lower.contains('*') {
        Ok((scheme, Pattern::Wildcard(lower)))
    } else {
        let domain = lower.strip_prefix('.').map(str::to_owned).unwrap_or(lower);
        Ok((scheme, Pattern::Domain(domain)))
    }
}

fn strip_scheme(text: &str) -> (SchemeFilter, &str) {
    for (prefix, scheme) in [
        ("https://", SchemeFilter::HttpsOnly),
        ("http://", SchemeFilter::HttpOnly),
    ] {
        // `get`: the text is arbitrary UTF-8, and byte `prefix.len()` may fall inside a
        // character (found by fuzzing: `http:/э...` panicked here).
        if let (Some(head), Some(rest)) = (text.get(..prefix.len()), text.get(prefix.len()..))
            && head.eq_ignore_ascii_case(prefix)
        {
            return (scheme, rest);
        }
    }
    (SchemeFilter::Any, text)
}

/// Parses `1.2.3.4`, `::1` or `[::1]`; IPv4-mapped IPv6 becomes IPv4.
pub(crate) fn parse_ip(text: &str) -> Option<IpAddr> {
    let ip = match text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        Some(inner) => IpAddr::V6(inner.parse().ok()?),
        None => text.parse().ok()?,
    };
    Some(canonical_ip(ip))
}

/// IPv4-mapped IPv6 addresses as their IPv4 form; everything else unchanged.
pub(crate) fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Entry, ErrorKind> {
        Entry::parse(text, List::Allow, Origin::Flag("--allow-domains"))
    }

    fn why(text: &str) -> EntryError {
        match parse(text) {
            Err(ErrorKind::InvalidEntry { why, .. }) => why,
            other => panic!("{text:?}: expected an invalid entry, got {other:?}"),
        }
    }

    /// Found by fuzzing (`fuzz/fuzz_targets/config_toml.rs`): a multi-byte character across
    /// the length of `https://` panicked while looking for the scheme.
    #[test]
    fn non_ascii_where_a_scheme_could_be_does_not_panic() {
        for text in [
            "http:/эegccy.example",
            "http:эa",
            "httpsэ//a",
            "э",
            "HTTP://é.test",
        ] {
            let _ = parse(text);
        }
        assert_eq!(strip_scheme("http:/эa"), (SchemeFilter::Any, "http:/эa"));
        assert_eq!(strip_scheme("HTTP://é"), (SchemeFilter::HttpOnly, "é"));
    }

    #[test]
    fn forms_parse_as_awf_does() {
        let cases: &[(&str, SchemeFilter, Pattern)] = &[
            (
                "github.com",
                SchemeFilter::Any,
                Pattern::Domain("github.com".into()),
            ),
            (
                ".github.com",
                SchemeFilter::Any,
                Pattern::Domain("github.com".into()),
            ),
            (
                "  GitHub.COM  ",
                SchemeFilter::Any,
                Pattern::Domain("github.com".into()),
            ),
            (
                "*.github.com",
                SchemeFilter::Any,
                Pattern::Wildcard("*.github.com".into()),
            ),
            (
                "api.*",
                SchemeFilter::Any,
                Pattern::Wildcard("api.*".into()),
            ),
            (
                "https://secure.com",
                SchemeFilter::HttpsOnly,
                Pattern::Domain("secure.com".into()),
            ),
            (
                "http://legacy.com/",
                SchemeFilter::HttpOnly,
                Pattern::Domain("legacy.com".into()),
            ),
            (
                "https://*.x.com",
                SchemeFilter::HttpsOnly,
                Pattern::Wildcard("*.x.com".into()),
            ),
            (
                "_dmarc.example.com",
                SchemeFilter::Any,
                Pattern::Domain("_dmarc.example.com".into()),
            ),
            (
                "example.com:8080",
                SchemeFilter::Any,
                Pattern::Dead(DEAD_PORT_OR_PATH),
            ),
            (
                "https://api.github.com/v3/users",
                SchemeFilter::HttpsOnly,
                Pattern::Dead(DEAD_PORT_OR_PATH),
            ),
            (
                "github.com.",
                SchemeFilter::Any,
                Pattern::Dead(DEAD_TRAILING_DOT),
            ),
            (
                "172.30.0.1",
                SchemeFilter::Any,
                Pattern::Ip("172.30.0.1".parse().unwrap()),
            ),
            (
                "[2001:db8::1]",
                SchemeFilter::Any,
                Pattern::Ip("2001:db8::1".parse().unwrap()),
            ),
            (
                "::ffff:10.0.0.1",
                SchemeFilter::Any,
                Pattern::Ip("10.0.0.1".parse().unwrap()),
            ),
        ];
        for (text, scheme, pattern) in cases {
            let entry = parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(
                (entry.scheme, &entry.pattern),
                (*scheme, pattern),
                "{text:?}"
            );
            assert_eq!(entry.text, text.trim());
        }
    }

    #[test]
    fn awf_rejections() {
        let cases: &[(&str, EntryError)] = &[
            ("", EntryError::Empty),
            ("   ", EntryError::Empty),
            ("https://", EntryError::Empty),
            ("a b.com", EntryError::Whitespace),
            ("a\tb.com", EntryError::Whitespace),
            ("a\0b.com", EntryError::Forbidden('\0')),
            ("\"a.com\"", EntryError::Forbidden('"')),
            ("'a.com'", EntryError::Forbidden('\'')),
            ("`a.com`", EntryError::Forbidden('`')),
            ("a.com;", EntryError::Forbidden(';')),
            ("a.com#x", EntryError::Forbidden('#')),
            ("a\\.com", EntryError::Forbidden('\\')),
            ("*", EntryError::MatchesEverything),
            ("*.*", EntryError::MatchesEverything),
            ("*.", EntryError::MatchesEverything),
            ("**..", EntryError::EmptyLabel),
            (".*", EntryError::MatchesEverything),
            ("..", EntryError::EmptyLabel),
            ("a..com", EntryError::EmptyLabel),
            (".", EntryError::LoneDot),
            ("*.*.com", EntryError::TooBroad),
            ("*.*.*", EntryError::MatchesEverything),
            ("https://*.*.com", EntryError::TooBroad),
            ("exa$mple.com", EntryError::InvalidChar('$')),
        ];
        for (text, expected) in cases {
            assert_eq!(why(text), *expected, "{text:?}");
        }
        // Two bare '*' labels are fine when at least two other labels remain.
        assert!(parse("*.*.example.com").is_ok());
    }

    #[test]
    fn localhost_keyword_is_rejected_with_the_alternative() {
        for text in ["localhost", "http://localhost", "https://LOCALHOST"] {
            let err = parse(text).unwrap_err();
            assert!(matches!(err, ErrorKind::LocalhostKeyword { .. }), "{text}");
            assert!(err.to_string().contains("loopback_ports"), "{err}");
        }
    }

    #[test]
    fn dead_entries_say_why() {
        let entry = parse("example.com:8080").unwrap();
        assert!(entry.is_dead());
        assert!(entry.dead_reason().unwrap().contains("[[rule]] with ports"));
        assert!(!parse("example.com").unwrap().is_dead());
        let long = format!("{}.com", "a".repeat(260));
        assert_eq!(parse(&long).unwrap().dead_reason(), Some(DEAD_TOO_LONG));
    }

    #[test]
    fn display_names_the_origin() {
        let entry = parse("github.com").unwrap();
        assert_eq!(entry.to_string(), "github.com (from --allow-domains)");
        let file = Origin::File {
            path: "domains.txt".into(),
            line: 3,
        };
        assert_eq!(file.to_string(), "domains.txt:3");
        assert_eq!(Origin::Builtin("default").to_string(), "built-in default");
    }
}
