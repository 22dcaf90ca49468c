//! Parsing of `--resolve HOST:ADDR` overrides and `--dns-server ADDR[:PORT]` values.
//!
//! Both return a plain `String` reason on failure; the builder wraps it with the place the
//! value came from ([`ErrorKind::InvalidResolve`](crate::ErrorKind::InvalidResolve),
//! [`ErrorKind::InvalidDnsServer`](crate::ErrorKind::InvalidDnsServer)).

use std::net::{IpAddr, SocketAddr};

use crate::defaults;
use crate::policy::is_dns_name;

/// Parses `HOST:ADDR` into a lowercase host (no trailing dot) and an address.
///
/// `ADDR` is an IPv4 address or an IPv6 address in brackets (`host:[::1]`); a bare IPv6
/// address (`host:::1`) is refused because the split is ambiguous to a reader.
pub(crate) fn parse_resolve(spec: &str) -> Result<(String, IpAddr), String> {
    let spec = spec.trim();
    let Some((host, addr)) = spec.split_once(':') else {
        return Err("expected HOST:ADDR, such as 'api.example.com:10.0.0.2'".into());
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if !is_dns_name(host) {
        return Err(format!(
            "'{host}' is not a valid dns name: write a host name such as 'api.example.com' \
             (no wildcards, no scheme)"
        ));
    }
    let ip = if let Some(inner) = addr.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or("missing ']' after the IPv6 address")?;
        inner
            .parse::<std::net::Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| format!("'{inner}' is not an IPv6 address"))?
    } else {
        match addr.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => IpAddr::V4(v4),
            Ok(IpAddr::V6(_)) => {
                return Err(format!(
                    "write IPv6 addresses in brackets, as in '{host}:[{addr}]'"
                ));
            }
            Err(_) => {
                return Err(format!(
                    "'{addr}' is not an IP address: write an IPv4 address or an IPv6 address \
                     in brackets, such as '{host}:10.0.0.2' or '{host}:[fd00::2]'"
                ));
            }
        }
    };
    Ok((host.to_ascii_lowercase(), crate::policy::canonical(ip)))
}

/// Parses `ADDR`, `ADDR:PORT`, `[v6]` or `[v6]:PORT` (port 53 when absent).
pub(crate) fn parse_dns_server(spec: &str) -> Result<SocketAddr, String> {
    let spec = spec.trim();
    let addr = if let Ok(addr) = spec.parse::<SocketAddr>() {
        addr
    } else if let Ok(ip) = spec.parse::<IpAddr>() {
        SocketAddr::new(ip, defaults::DNS_PORT)
    } else if let Some(ip) = spec
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .and_then(|s| s.parse::<std::net::Ipv6Addr>().ok())
    {
        SocketAddr::new(IpAddr::V6(ip), defaults::DNS_PORT)
    } else {
        return Err(
            "expected an IP address with an optional port, such as '10.0.0.2', \
                    '10.0.0.2:5353' or '[fd00::2]:53' (names are not accepted)"
                .into(),
        );
    };
    if addr.port() == 0 {
        return Err(
            "port 0 is not a valid port: use a port from 1 to 65535, or none for 53".into(),
        );
    }
    Ok(SocketAddr::new(
        crate::policy::canonical(addr.ip()),
        addr.port(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_overrides() {
        let ok: &[(&str, &str, &str)] = &[
            (
                "api.example.com:10.200.1.2",
                "api.example.com",
                "10.200.1.2",
            ),
            ("API.Example.COM.:10.0.0.1", "api.example.com", "10.0.0.1"),
            ("h:[::1]", "h", "::1"),
            ("h:[::ffff:10.0.0.1]", "h", "10.0.0.1"),
        ];
        for (spec, host, ip) in ok {
            assert_eq!(
                parse_resolve(spec),
                Ok(((*host).into(), ip.parse().unwrap())),
                "{spec}"
            );
        }
        for (spec, needle) in [
            ("h:::1", "brackets"),
            ("noaddr", "HOST:ADDR"),
            ("*.x.com:1.2.3.4", "not a valid dns name"),
            (":1.2.3.4", "not a valid dns name"),
            ("h:[::1", "missing ']'"),
            ("h:example.com", "not an IP address"),
            ("a..b:1.2.3.4", "not a valid dns name"),
        ] {
            let err = parse_resolve(spec).unwrap_err();
            assert!(err.contains(needle), "{spec}: {err}");
        }
    }

    #[test]
    fn dns_servers() {
        let ok: &[(&str, &str)] = &[
            ("10.0.0.2", "10.0.0.2:53"),
            ("10.0.0.2:5353", "10.0.0.2:5353"),
            ("::1", "[::1]:53"),
            ("[fd00::2]", "[fd00::2]:53"),
            ("[fd00::2]:54", "[fd00::2]:54"),
        ];
        for (spec, addr) in ok {
            assert_eq!(parse_dns_server(spec), Ok(addr.parse().unwrap()), "{spec}");
        }
        for spec in ["dns.google", "10.0.0.2:0", "10.0.0.2:99999", "", "[fd00::2"] {
            assert!(parse_dns_server(spec).is_err(), "{spec}");
        }
    }
}
