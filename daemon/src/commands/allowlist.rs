//! `egressd allowlist check|show|explain|diff`: explain the allowlist without running
//! anything.

use std::net::IpAddr;
use std::path::Path;

use egressd_config::{
    Config, ConfigBuilder, Entry, List, Pattern, Policy, Reason, Scheme, SchemeFilter, Target,
    TargetHost,
};

use crate::{
    Failure,
    cli::{CheckArgs, DiffArgs, ExplainArgs, ShowArgs},
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
                    "private_network": e.private_network,
                    "origin": e.origin.to_string(),
                    "never_matches": e.dead_reason(),
                })
            })
            .collect();
        let out = serde_json::json!({
            "ports": policy.ports(),
            "loopback_ports": policy.loopback_ports(),
            "github": config.github.as_ref().map(egressd_config::github::Deployment::label),
            "github_notes": config.github_notes,
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
        match e.reach() {
            egressd_config::Reach::Public => {}
            egressd_config::Reach::PrivateNetwork => println!(
                "       may resolve to private-network addresses (never loopback, link-local \
                 or metadata)"
            ),
            egressd_config::Reach::Any => {
                println!("       may resolve to any address, loopback included (allow_private)")
            }
        }
    }
    println!("ports: {:?}", policy.ports());
    if !policy.loopback_ports().is_empty() {
        println!("loopback ports: {:?}", policy.loopback_ports());
    }
    if let Some(github) = &config.github {
        println!("derived for GitHub deployment: {}", github.label());
    }
    for note in &config.github_notes {
        println!("note: {note}");
    }
    Ok(0)
}

/// `allowlist explain HOST[:PORT]`: the decision, then every entry that matched or nearly
/// matched and why. Exit 0 if allowed, 1 if denied.
pub fn explain(args: &ExplainArgs) -> Result<u8, Failure> {
    let config = policy::build(&args.policy, None).map_err(Failure::usage)?;
    let (target, host) = parse_target(&args.target, args.http).map_err(Failure::usage)?;
    let target = Target {
        host: target_host(&host),
        ..target
    };
    let decision = config.policy.decide(&target);
    println!("{}", decision.explain(&target));
    let notes = explain_entries(&config.policy, &target);
    if notes.is_empty() {
        println!("  no entry matches or nearly matches");
    }
    for (entry, note) in &notes {
        let mark = if decision.rule.as_deref() == Some(entry) {
            "=>"
        } else {
            "  "
        };
        println!(
            "{mark} {:<5} {} (from {}): {note}",
            list_name(&entry.list),
            entry.text,
            entry.origin
        );
    }
    if decision.reason == Reason::NotAllowlisted
        && let TargetHost::Name(name) = target.host
    {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let (verdict, why) = super::audit::verdict_for(&name);
        println!("  to allow it: add `{name}` ({why}; verdict: {verdict:?})");
    }
    Ok(if decision.is_allow() { 0 } else { 1 })
}

/// Every entry that matches `target` (or would but for its scheme or ports), or nearly
/// matches it, with a one-line explanation. Uses only the public policy API: each entry is
/// tried alone as a one-entry allowlist.
pub fn explain_entries<'p>(policy: &'p Policy, target: &Target<'_>) -> Vec<(&'p Entry, String)> {
    let name = match target.host {
        TargetHost::Name(n) => Some(n.trim_end_matches('.').to_ascii_lowercase()),
        TargetHost::Ip(_) => None,
    };
    let mut out = Vec::new();
    for entry in policy.entries() {
        let alone = |e: &Entry| {
            let mut e = e.clone();
            e.list = List::Allow;
            Policy::new([e], policy.ports(), policy.loopback_ports()).decide(target)
        };
        let d = alone(entry);
        let verb = if entry.list == List::Block {
            "blocks"
        } else {
            "allows"
        };
        let note = match d.reason {
            Reason::Allowlisted => Some(format!("matches: {verb} it")),
            Reason::PortNotAllowed => {
                let mut ports = policy.ports().to_vec();
                ports.extend(&entry.ports);
                Some(format!(
                    "matches the name, but port {} is not allowed (allowed: {ports:?}; add a \
                     [[rule]] with ports)",
                    target.port
                ))
            }
            Reason::SchemeNotAllowed => Some(format!(
                "matches the name, but only for {}",
                match entry.scheme {
                    SchemeFilter::HttpsOnly => "TLS (https://); this is plain HTTP",
                    SchemeFilter::HttpOnly => "plain HTTP (http://); this is TLS",
                    SchemeFilter::Any => "another scheme",
                }
            )),
            _ => name
                .as_deref()
                .and_then(|n| near_miss(entry, n, target, policy)),
        };
        if let Some(note) = note {
            out.push((&**entry, note));
        }
    }
    out
}

/// Why `entry` nearly matches `name`, if it does.
fn near_miss(entry: &Entry, name: &str, target: &Target<'_>, policy: &Policy) -> Option<String> {
    match entry.pattern() {
        Pattern::Dead(why) => {
            let repaired = repair(&entry.text)?;
            let mut e = Entry::parse(&repaired, List::Allow, entry.origin.clone()).ok()?;
            e.scheme = SchemeFilter::Any;
            let d = Policy::new([e], policy.ports(), policy.loopback_ports()).decide(target);
            (d.reason == Reason::Allowlisted || d.reason == Reason::PortNotAllowed)
                .then(|| format!("dead entry: never matches ({why}); `{repaired}` would match"))
        }
        Pattern::Wildcard(w) => {
            if let Some(base) = w.strip_prefix("*.")
                && base == name
            {
                return Some(format!(
                    "near miss: `{w}` needs a subdomain and does not cover `{base}` itself; \
                         add `{base}` (it covers both)"
                ));
            }
            same_registrable(w.trim_start_matches("*.").trim_start_matches('*'), name)
        }
        Pattern::Domain(d) => {
            if name.ends_with(&format!(".{d}")) || name == d {
                return None;
            }
            if d.ends_with(&format!(".{name}")) {
                return Some(format!(
                    "near miss: covers `{d}` and its subdomains, not its parent `{name}`"
                ));
            }
            same_registrable(d, name)
        }
        _ => None,
    }
}

fn same_registrable(pattern: &str, name: &str) -> Option<String> {
    let (r, _) = super::audit::registrable(name);
    let (p, _) = super::audit::registrable(pattern);
    (r == p && !r.is_empty()).then(|| {
        format!("near miss: same registrable domain `{r}`, but covers only `{pattern}` and below")
    })
}

/// A dead entry's text with the scheme, path, port and trailing dot removed.
fn repair(text: &str) -> Option<String> {
    let rest = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
        .unwrap_or(text);
    let rest = rest.split('/').next()?;
    let rest = match rest.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => rest,
    };
    let rest = rest.trim_end_matches('.');
    (!rest.is_empty() && rest != text).then(|| rest.to_owned())
}

/// `allowlist diff A B`: entries added and removed, ports changed, and decisions that change
/// for the `--host` samples. Exit 0 when nothing differs, 1 otherwise.
pub fn diff(args: &DiffArgs) -> Result<u8, Failure> {
    let old = load(&args.old).map_err(Failure::usage)?;
    let new = load(&args.new).map_err(Failure::usage)?;
    let key = |e: &Entry| {
        format!(
            "{} {} ports={:?} reach={:?}",
            list_name(&e.list),
            e.text,
            e.ports,
            e.reach()
        )
    };
    let old_keys: Vec<String> = old.policy.entries().iter().map(|e| key(e)).collect();
    let new_keys: Vec<String> = new.policy.entries().iter().map(|e| key(e)).collect();
    let mut changed = false;
    for (e, k) in old.policy.entries().iter().zip(&old_keys) {
        if !new_keys.contains(k) {
            changed = true;
            println!("- {:<5} {} (from {})", list_name(&e.list), e.text, e.origin);
        }
    }
    for (e, k) in new.policy.entries().iter().zip(&new_keys) {
        if !old_keys.contains(k) {
            changed = true;
            let (verdict, why) = super::audit::verdict_for(e.text.trim_start_matches("*."));
            let warn = if e.list == List::Allow && verdict > super::audit::Verdict::Review {
                format!("  [{verdict:?}: {why}]")
            } else {
                String::new()
            };
            println!(
                "+ {:<5} {} (from {}){warn}",
                list_name(&e.list),
                e.text,
                e.origin
            );
        }
    }
    if old.policy.ports() != new.policy.ports() {
        changed = true;
        println!(
            "~ ports {:?} -> {:?}",
            old.policy.ports(),
            new.policy.ports()
        );
    }
    if old.policy.loopback_ports() != new.policy.loopback_ports() {
        changed = true;
        println!(
            "~ loopback ports {:?} -> {:?}",
            old.policy.loopback_ports(),
            new.policy.loopback_ports()
        );
    }
    for spec in &args.hosts {
        let (target, host) = parse_target(spec, false).map_err(Failure::usage)?;
        let target = Target {
            host: target_host(&host),
            ..target
        };
        let a = old.policy.decide(&target);
        let b = new.policy.decide(&target);
        if a.action == b.action && a.reason == b.reason {
            println!("= {spec}: {} (unchanged)", a.explain(&target));
        } else {
            changed = true;
            println!(
                "! {spec}: {}  ->  {}",
                a.explain(&target),
                b.explain(&target)
            );
        }
    }
    if !changed {
        println!("no differences");
    }
    Ok(u8::from(changed))
}

/// A TOML configuration (`.toml`) or a domains file.
fn load(path: &Path) -> anyhow::Result<Config> {
    let mut b = ConfigBuilder::new();
    if path.extension().is_some_and(|e| e == "toml") {
        b.toml_file(path)?;
    } else {
        b.allow_file(path)?;
    }
    Ok(b.build()?)
}

/// `HOST[:PORT]` → a target (host filled in by the caller) and the host text.
fn parse_target(spec: &str, http: bool) -> anyhow::Result<(Target<'static>, String)> {
    let scheme = if http { Scheme::Http } else { Scheme::Https };
    let (host, port) = split_host_port(spec, if http { 80 } else { 443 })?;
    Ok((
        Target {
            host: TargetHost::Name(""),
            port,
            scheme,
        },
        host.to_owned(),
    ))
}

fn target_host(host: &str) -> TargetHost<'_> {
    match host.parse::<IpAddr>() {
        Ok(ip) => TargetHost::Ip(ip),
        Err(_) => TargetHost::Name(host),
    }
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
    use egressd_config::{Origin, Scheme, Target, TargetHost};

    use super::{explain_entries, split_host_port};

    fn notes(list: &str, host: &str) -> Vec<String> {
        let mut b = egressd_config::ConfigBuilder::new();
        b.allow_list(list, Origin::Flag("--allow-domains")).unwrap();
        let config = b.build().unwrap();
        let target = Target {
            host: TargetHost::Name(host),
            port: 443,
            scheme: Scheme::Https,
        };
        explain_entries(&config.policy, &target)
            .into_iter()
            .map(|(e, n)| format!("{}: {n}", e.text))
            .collect()
    }

    #[test]
    fn explain_finds_matches_and_near_misses() {
        let n = notes(
            "*.github.com,github.com:443,http://github.com,docs.github.com",
            "github.com",
        );
        assert!(n.iter().any(|n| n.starts_with("*.github.com: near miss: `*.github.com` needs a subdomain")), "{n:?}");
        assert!(
            n.iter()
                .any(|n| n.starts_with("github.com:443: dead entry")),
            "{n:?}"
        );
        assert!(
            n.iter()
                .any(|n| n
                    .starts_with("http://github.com: matches the name, but only for plain HTTP")),
            "{n:?}"
        );
        assert!(
            n.iter()
                .any(|n| n.starts_with("docs.github.com: near miss: covers `docs.github.com`")),
            "{n:?}"
        );
        let n = notes("api.example.com,other.test", "www.example.com");
        assert_eq!(
            n,
            [
                "api.example.com: near miss: same registrable domain `example.com`, but covers only `api.example.com` and below"
            ]
        );
        let n = notes("example.com", "a.example.com");
        assert_eq!(n, ["example.com: matches: allows it"]);
    }

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
