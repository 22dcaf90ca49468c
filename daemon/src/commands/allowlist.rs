//! `egressd allowlist check|show`: explain the allowlist without running anything.

use std::net::IpAddr;

use egressd_config::{List, Policy, Scheme, SchemeFilter, Target, TargetHost};

use crate::{
    Failure,
    cli::{CheckArgs, ShowArgs},
    policy,
};

/// `allowlist check HOST[:PORT]`: exit 0 if allowed, 1 if denied.
pub fn check(args: &CheckArgs) -> Result<u8, Failure> {
    let config = policy::build(&args.policy, None).map_err(Failure::usage)?;
    let scheme = if args.http {
        Scheme::Http
    } else {
        Scheme::Https
    };
    let default_port = if args.http { 80 } else { 443 };
    let (host, port) = split_host_port(&args.target, default_port).map_err(Failure::usage)?;
    let host = match host.parse::<IpAddr>() {
        Ok(ip) => TargetHost::Ip(ip),
        Err(_) => TargetHost::Name(host),
    };
    let target = Target { host, port, scheme };
    let decision = config.policy.decide(&target);
    println!("{}", decision.explain(&target));
    match &decision.rule {
        Some(rule) => println!("  deciding entry: {} (from {})", rule.text, rule.origin),
        None => println!("  deciding entry: none"),
    }
    Ok(if decision.is_allow() { 0 } else { 1 })
}

/// `allowlist show`: every entry with its origin, and a warning for entries that never match.
pub fn show(args: &ShowArgs) -> Result<u8, Failure> {
    let config = policy::build(&args.policy, None).map_err(Failure::usage)?;
    let policy: &Policy = &config.policy;
    if args.json {
        let entries: Vec<serde_json::Value> = policy
            .entries()
            .iter()
            .map(|e| {
                serde_json::json!({
                    "entry": e.text,
                    "list": list_name(&e.list),
                    "scheme": scheme_name(&e.scheme),
                    "ports": if e.ports.is_empty() { policy.ports().to_vec() } else { e.ports.clone() },
                    "allow_private": e.allow_private,
                    "origin": e.origin.to_string(),
                    "never_matches": e.dead_reason(),
                })
            })
            .collect();
        let out = serde_json::json!({
            "ports": policy.ports(),
            "loopback_ports": policy.loopback_ports(),
            "entries": entries,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&out).map_err(Failure::runtime)?
        );
        return Ok(0);
    }
    if policy.entries().is_empty() {
        println!("the allowlist is empty: every destination is denied");
    }
    println!("{:<6} {:<6} {:<40} origin", "list", "scheme", "entry");
    for e in policy.entries() {
        println!(
            "{:<6} {:<6} {:<40} {}",
            list_name(&e.list),
            scheme_name(&e.scheme),
            e.text,
            e.origin
        );
        if let Some(why) = e.dead_reason() {
            println!("       warning: this entry never matches: {why}");
        }
    }
    println!("ports: {:?}", policy.ports());
    if !policy.loopback_ports().is_empty() {
        println!("loopback ports: {:?}", policy.loopback_ports());
    }
    Ok(0)
}

fn list_name(list: &List) -> &'static str {
    match list {
        List::Allow => "allow",
        List::Block => "block",
    }
}

fn scheme_name(scheme: &SchemeFilter) -> &'static str {
    match scheme {
        SchemeFilter::Any => "any",
        SchemeFilter::HttpsOnly => "https",
        SchemeFilter::HttpOnly => "http",
    }
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(s: &str, default_port: u16) -> anyhow::Result<(&str, u16)> {
    let bad_port = |p: &str| anyhow::anyhow!("{s:?}: port {p:?} is not a number from 1 to 65535");
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| anyhow::anyhow!("{s:?}: missing `]` after an IPv6 address"))?;
        return match after.strip_prefix(':') {
            Some(p) => Ok((
                host,
                p.parse()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| bad_port(p))?,
            )),
            None if after.is_empty() => Ok((host, default_port)),
            None => Err(anyhow::anyhow!("{s:?}: unexpected text after `]`")),
        };
    }
    match s.rsplit_once(':') {
        Some((host, p)) if !host.contains(':') => Ok((
            host,
            p.parse()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| bad_port(p))?,
        )),
        _ => Ok((s, default_port)),
    }
}

#[cfg(test)]
mod tests {
    use super::split_host_port;

    #[test]
    fn host_port_forms() {
        assert_eq!(
            split_host_port("github.com", 443).unwrap(),
            ("github.com", 443)
        );
        assert_eq!(
            split_host_port("github.com:80", 443).unwrap(),
            ("github.com", 80)
        );
        assert_eq!(split_host_port("[::1]:8080", 443).unwrap(), ("::1", 8080));
        assert_eq!(
            split_host_port("[2001:db8::1]", 443).unwrap(),
            ("2001:db8::1", 443)
        );
        assert_eq!(
            split_host_port("2001:db8::1", 443).unwrap(),
            ("2001:db8::1", 443)
        );
        assert!(split_host_port("github.com:x", 443).is_err());
        assert!(split_host_port("github.com:0", 443).is_err());
    }
}
