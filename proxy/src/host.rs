//! Host names as requests name them (`Host` headers, URI authorities, SNI): one type and
//! its parser, shared by classification, interception, the api-proxy and responses. A leaf:
//! it imports nothing from the crate.

use std::net::IpAddr;

/// A host as a request names it: a DNS name or an IP literal.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum HostName {
    /// An IP literal (`192.0.2.1`, `[2001:db8::1]`).
    Ip(IpAddr),
    /// A DNS name: lowercase ASCII, no trailing dot, no port.
    Name(String),
}

impl std::fmt::Display for HostName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ip(ip) => ip.fmt(f),
            Self::Name(n) => f.write_str(n),
        }
    }
}

/// Parses a `Host` header value or URI authority (`name`, `name:port`, `1.2.3.4:80`,
/// `[::1]:80`) into a [`HostName`]: port dropped, name lowercased, one trailing dot removed.
///
/// Returns `None` for anything that is not a plausible host: empty, an empty label (`a..b`,
/// `.a`), userinfo (`a@b`), characters outside letters, digits, `-`, `.` and `_`, or a bad
/// port.
pub(crate) fn normalize_host(value: &str) -> Option<HostName> {
    let value = value.trim();
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let ip: std::net::Ipv6Addr = inside.parse().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        if let Some(p) = port {
            p.parse::<u16>().ok()?;
        }
        return Some(HostName::Ip(IpAddr::V6(ip)));
    } else {
        match value.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (value, None),
        }
    };
    if let Some(p) = port {
        p.parse::<u16>().ok()?;
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    // Empty labels (`a..b`, `.a`, `a..`) are no host name; found by fuzzing: `1..` became
    // the name `1.`, which normalising again changed to `1`.
    if host.split('.').any(str::is_empty)
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return None;
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(HostName::Ip(ip));
    }
    Some(HostName::Name(host.to_ascii_lowercase()))
}
