//! Table-driven tests of every row of `shared/reference/awf.md` §3.1 and §3.2, plus the
//! egressd additions (ports, loopback, IP literals, invalid request names).

use super::*;
use crate::defaults;

use Action::{Allow, Deny};
use Reason::*;
use Scheme::{Http, Https};

const FLAG: Origin = Origin::Flag("--allow-domains");
const LOOPBACK_PORTS: &[u16] = &[8080];

fn entry(text: &str, list: List) -> Entry {
    Entry::parse(text, list, FLAG).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

fn policy(allow: &[&str], block: &[&str]) -> Policy {
    let allow = allow.iter().map(|t| entry(t, List::Allow));
    let block = block.iter().map(|t| entry(t, List::Block));
    Policy::new(allow.chain(block), defaults::PORTS, LOOPBACK_PORTS)
}

/// A request: a name, or an IP when written `ip:ADDR`.
fn target(host: &str, port: u16, scheme: Scheme) -> Target<'_> {
    let host = match host.strip_prefix("ip:") {
        Some(ip) => TargetHost::Ip(ip.parse().unwrap()),
        None => TargetHost::Name(host),
    };
    Target { host, port, scheme }
}

struct Row {
    allow: &'static [&'static str],
    block: &'static [&'static str],
    host: &'static str,
    port: u16,
    scheme: Scheme,
    action: Action,
    reason: Reason,
    /// The text of the deciding entry, if one decided.
    rule: Option<&'static str>,
}

#[rustfmt::skip]
#[allow(clippy::too_many_arguments, reason = "one argument per table column")]
const fn row(
    allow: &'static [&'static str], block: &'static [&'static str], host: &'static str,
    port: u16, scheme: Scheme, action: Action, reason: Reason, rule: Option<&'static str>,
) -> Row {
    Row { allow, block, host, port, scheme, action, reason, rule }
}

const NONE: &[&str] = &[];
const GH: &[&str] = &["github.com"];

#[rustfmt::skip]
const ROWS: &[Row] = &[
    // §3.1 `github.com`: apex and every subdomain, any case; not look-alikes.
    row(GH, NONE, "github.com", 443, Https, Allow, Allowlisted, Some("github.com")),
    row(GH, NONE, "api.github.com", 443, Https, Allow, Allowlisted, Some("github.com")),
    row(GH, NONE, "a.b.github.com", 80, Http, Allow, Allowlisted, Some("github.com")),
    row(GH, NONE, "API.GitHub.COM", 443, Https, Allow, Allowlisted, Some("github.com")),
    row(GH, NONE, "GITHUB.COM.", 443, Https, Allow, Allowlisted, Some("github.com")),
    row(GH, NONE, "notgithub.com", 443, Https, Deny, NotAllowlisted, None),
    row(GH, NONE, "github.com.evil.com", 443, Https, Deny, NotAllowlisted, None),
    row(GH, NONE, "com", 443, Https, Deny, NotAllowlisted, None),
    row(&["GitHub.COM"], NONE, "api.github.com", 443, Https, Allow, Allowlisted, Some("GitHub.COM")),
    // `.github.com`: the same as `github.com`.
    row(&[".github.com"], NONE, "github.com", 443, Https, Allow, Allowlisted, Some(".github.com")),
    row(&[".github.com"], NONE, "api.github.com", 443, Https, Allow, Allowlisted, Some(".github.com")),
    row(&[".github.com"], NONE, "notgithub.com", 443, Https, Deny, NotAllowlisted, None),
    // `*.github.com`: subdomains only, at any depth.
    row(&["*.github.com"], NONE, "api.github.com", 443, Https, Allow, Allowlisted, Some("*.github.com")),
    row(&["*.github.com"], NONE, "sub.api.github.com", 443, Https, Allow, Allowlisted, Some("*.github.com")),
    row(&["*.github.com"], NONE, "github.com", 443, Https, Deny, NotAllowlisted, None),
    row(&["*.github.com"], NONE, "github.com.evil.com", 443, Https, Deny, NotAllowlisted, None),
    // `api-*.example.com`: `*` spans dots and may be empty.
    row(&["api-*.example.com"], NONE, "api-v1.example.com", 443, Https, Allow, Allowlisted, Some("api-*.example.com")),
    row(&["api-*.example.com"], NONE, "api-.example.com", 443, Https, Allow, Allowlisted, Some("api-*.example.com")),
    row(&["api-*.example.com"], NONE, "api-x.y.example.com", 443, Https, Allow, Allowlisted, Some("api-*.example.com")),
    row(&["api-*.example.com"], NONE, "api.example.com", 443, Https, Deny, NotAllowlisted, None),
    // `api.*`
    row(&["api.*"], NONE, "api.anything.tld", 443, Https, Allow, Allowlisted, Some("api.*")),
    row(&["api.*"], NONE, "xapi.com", 443, Https, Deny, NotAllowlisted, None),
    // `https://secure.com`: TLS only (any allowed port), never plain HTTP.
    row(&["https://secure.com"], NONE, "secure.com", 443, Https, Allow, Allowlisted, Some("https://secure.com")),
    row(&["https://secure.com"], NONE, "www.secure.com", 80, Https, Allow, Allowlisted, Some("https://secure.com")),
    row(&["https://secure.com"], NONE, "secure.com", 80, Http, Deny, SchemeNotAllowed, Some("https://secure.com")),
    // `http://legacy.com`: plain HTTP only.
    row(&["http://legacy.com"], NONE, "legacy.com", 80, Http, Allow, Allowlisted, Some("http://legacy.com")),
    row(&["http://legacy.com"], NONE, "legacy.com", 443, Https, Deny, SchemeNotAllowed, Some("http://legacy.com")),
    // `https://*.x.com`
    row(&["https://*.x.com"], NONE, "a.x.com", 443, Https, Allow, Allowlisted, Some("https://*.x.com")),
    row(&["https://*.x.com"], NONE, "a.x.com", 80, Http, Deny, SchemeNotAllowed, Some("https://*.x.com")),
    // One trailing '/' is dropped.
    row(&["https://github.com/"], NONE, "github.com", 443, Https, Allow, Allowlisted, Some("https://github.com/")),
    // A port or a path in an entry: kept, matches nothing (AWF's dead ACL).
    row(&["example.com:8080"], NONE, "example.com", 8080, Https, Deny, NotAllowlisted, None),
    row(&["example.com:8080"], NONE, "example.com", 443, Https, Deny, NotAllowlisted, None),
    row(&["https://api.github.com/v3/users"], NONE, "api.github.com", 443, Https, Deny, NotAllowlisted, None),
    // A trailing dot in an entry: kept, matches nothing.
    row(&["github.com."], NONE, "api.github.com", 443, Https, Deny, NotAllowlisted, None),
    row(&["github.com."], NONE, "github.com.", 443, Https, Deny, NotAllowlisted, None),
    // Underscored labels.
    row(&["_dmarc.example.com"], NONE, "_dmarc.example.com", 443, Https, Allow, Allowlisted, Some("_dmarc.example.com")),
    row(&["*.example.com"], NONE, "_dmarc.example.com", 443, Https, Deny, NotAllowlisted, None),
    // Raw IPs allow exactly that IP; other IPs are denied as IP literals.
    row(&["172.30.0.1"], NONE, "ip:172.30.0.1", 443, Https, Allow, Allowlisted, Some("172.30.0.1")),
    row(&["172.30.0.1"], NONE, "172.30.0.1", 80, Http, Allow, Allowlisted, Some("172.30.0.1")),
    row(&["172.30.0.1"], NONE, "ip:::ffff:172.30.0.1", 443, Https, Allow, Allowlisted, Some("172.30.0.1")),
    row(&["172.30.0.1"], NONE, "ip:172.30.0.2", 443, Https, Deny, IpLiteral, None),
    row(&["172.30.0.1"], NONE, "ip:172.30.0.1", 8443, Https, Deny, PortNotAllowed, Some("172.30.0.1")),
    row(&["::ffff:10.0.0.1"], NONE, "ip:10.0.0.1", 443, Https, Allow, Allowlisted, Some("::ffff:10.0.0.1")),
    row(&["2001:db8::1"], NONE, "[2001:db8::1]", 443, Https, Allow, Allowlisted, Some("2001:db8::1")),
    row(GH, NONE, "ip:140.82.112.3", 443, Https, Deny, IpLiteral, None),
    row(GH, NONE, "140.82.112.3", 443, Https, Deny, IpLiteral, None),
    row(GH, NONE, "[2606:50c0::1]", 443, Https, Deny, IpLiteral, None),
    // §3.2 the blocklist covers subdomains and wins over any allow entry.
    row(GH, &["gist.github.com"], "gist.github.com", 443, Https, Deny, Blocklisted, Some("gist.github.com")),
    row(GH, &["gist.github.com"], "x.GIST.github.com.", 443, Https, Deny, Blocklisted, Some("gist.github.com")),
    row(GH, &["gist.github.com"], "api.github.com", 443, Https, Allow, Allowlisted, Some("github.com")),
    row(&["gist.github.com"], &["github.com"], "gist.github.com", 443, Https, Deny, Blocklisted, Some("github.com")),
    row(&["evil.com"], &["*.evil.com"], "a.evil.com", 443, Https, Deny, Blocklisted, Some("*.evil.com")),
    row(&["evil.com"], &["*.evil.com"], "evil.com", 443, Https, Allow, Allowlisted, Some("evil.com")),
    row(GH, &["http://github.com"], "github.com", 80, Http, Deny, Blocklisted, Some("http://github.com")),
    row(GH, &["http://github.com"], "github.com", 443, Https, Allow, Allowlisted, Some("github.com")),
    row(&["1.2.3.4"], &["1.2.3.4"], "ip:1.2.3.4", 443, Https, Deny, Blocklisted, Some("1.2.3.4")),
    row(NONE, &["gist.github.com"], "gist.github.com", 443, Https, Deny, Blocklisted, Some("gist.github.com")),
    row(&["example.com"], &["example.com:443"], "example.com", 443, Https, Allow, Allowlisted, Some("example.com")),
    // Ports: 80 and 443 by default.
    row(GH, NONE, "github.com", 8443, Https, Deny, PortNotAllowed, Some("github.com")),
    row(GH, NONE, "github.com", 22, Http, Deny, PortNotAllowed, Some("github.com")),
    // The most specific entry is reported; the first fitting one allows.
    row(&["github.com", "*.github.com"], NONE, "api.github.com", 443, Https, Allow, Allowlisted, Some("*.github.com")),
    row(&["github.com", "https://api.github.com"], NONE, "api.github.com", 443, Https, Allow, Allowlisted, Some("https://api.github.com")),
    row(&["github.com", "https://api.github.com"], NONE, "api.github.com", 80, Http, Allow, Allowlisted, Some("github.com")),
    row(&["github.com", "github.com"], NONE, "github.com", 443, Https, Allow, Allowlisted, Some("github.com")),
    // Loopback: only the loopback ports, whatever the allowlist says.
    row(GH, NONE, "ip:127.0.0.1", 8080, Http, Allow, LoopbackPortAllowed, None),
    row(GH, NONE, "ip:127.0.0.1", 9090, Http, Deny, LoopbackPortDenied, None),
    row(GH, NONE, "ip:127.9.9.9", 8080, Https, Allow, LoopbackPortAllowed, None),
    row(GH, NONE, "ip:::1", 8080, Https, Allow, LoopbackPortAllowed, None),
    row(GH, NONE, "ip:::1", 443, Https, Deny, LoopbackPortDenied, None),
    row(GH, NONE, "ip:::ffff:127.0.0.1", 8080, Https, Allow, LoopbackPortAllowed, None),
    row(GH, NONE, "ip:::ffff:127.0.0.1", 443, Https, Deny, LoopbackPortDenied, None),
    row(GH, NONE, "127.0.0.1", 8080, Http, Allow, LoopbackPortAllowed, None),
    row(GH, NONE, "[::1]", 9090, Http, Deny, LoopbackPortDenied, None),
    row(&["127.0.0.1"], NONE, "ip:127.0.0.1", 443, Https, Deny, LoopbackPortDenied, None),
    // An empty allowlist denies everything (AWF adds nothing by default).
    row(NONE, NONE, "github.com", 443, Https, Deny, EmptyAllowlist, None),
    row(NONE, NONE, "ip:1.2.3.4", 443, Https, Deny, EmptyAllowlist, None),
    row(NONE, NONE, "ip:127.0.0.1", 8080, Http, Allow, LoopbackPortAllowed, None),
    // Only dead entries: the allowlist is not empty, it just matches nothing.
    row(&["github.com:443"], NONE, "github.com", 443, Https, Deny, NotAllowlisted, None),
    // Invalid request names, whatever the lists say.
    row(GH, NONE, "a..b", 443, Https, Deny, InvalidName, None),
    row(GH, NONE, "", 443, Https, Deny, InvalidName, None),
    row(GH, NONE, ".", 443, Https, Deny, InvalidName, None),
    row(GH, NONE, "github.com..", 443, Https, Deny, InvalidName, None),
    row(GH, NONE, ".github.com", 443, Https, Deny, InvalidName, None),
    row(GH, NONE, "api .github.com", 443, Https, Deny, InvalidName, None),
    row(GH, NONE, "api.github.com ", 443, Https, Deny, InvalidName, None),
    row(GH, NONE, "evil.com/x.github.com", 443, Https, Deny, InvalidName, None),
    row(GH, NONE, "evil.com:443", 443, Https, Deny, InvalidName, None),
    row(GH, NONE, "github.com\0", 443, Https, Deny, InvalidName, None),
    row(GH, NONE, "gïthub.com", 443, Https, Deny, InvalidName, None),
    row(NONE, NONE, "a..b", 443, Https, Deny, InvalidName, None),
];

#[test]
fn awf_rows() {
    let mut failures = Vec::new();
    for (i, r) in ROWS.iter().enumerate() {
        let policy = policy(r.allow, r.block);
        let decision = policy.decide(&target(r.host, r.port, r.scheme));
        let got = (
            decision.action,
            decision.reason,
            decision.rule.as_ref().map(|e| e.text.as_str()),
        );
        let want = (r.action, r.reason, r.rule);
        if got != want {
            failures.push(format!(
                "row {i}: allow {:?} block {:?} {} {} {:?}: got {got:?}, want {want:?}",
                r.allow, r.block, r.host, r.port, r.scheme
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn long_and_odd_request_names() {
    let policy = policy(&["example.com", "*.wild.com"], NONE);
    let decide = |name: &str| {
        let decision = policy.decide(&target(name, 443, Https));
        (decision.action, decision.reason)
    };
    let label63 = "a".repeat(63);
    let label64 = "a".repeat(64);
    assert_eq!(
        decide(&format!("{label63}.example.com")),
        (Allow, Allowlisted)
    );
    assert_eq!(
        decide(&format!("{label64}.example.com")),
        (Deny, InvalidName)
    );
    // 253 bytes is the longest name; 300 is refused (with and without a trailing dot).
    let name253 = format!("{}example.com", "a.".repeat(121));
    assert_eq!(name253.len(), 253);
    assert_eq!(decide(&name253), (Allow, Allowlisted));
    assert_eq!(decide(&format!("{name253}.")), (Allow, Allowlisted));
    let name300 = format!("{}example.com", "ab.".repeat(96));
    assert!(name300.len() > 253);
    assert_eq!(decide(&name300), (Deny, InvalidName));
    assert_eq!(
        decide(&format!("{}wild.com", "a.".repeat(121))),
        (Allow, Allowlisted)
    );
    assert_eq!(
        decide(&format!("{}.wild.com", "x".repeat(300))),
        (Deny, InvalidName)
    );
}

#[test]
fn rule_ports_and_allow_private() {
    let mut rule = entry("internal.example.com", List::Allow);
    rule.ports = vec![8443];
    rule.allow_private = true;
    let plain = entry("example.com", List::Allow);
    let policy = Policy::new([plain, rule], &[443], LOOPBACK_PORTS);
    assert_eq!(policy.ports(), [443]);

    let d = policy.decide(&target("internal.example.com", 8443, Https));
    assert_eq!((d.action, d.reason), (Allow, Allowlisted));
    assert!(d.allows_private());
    // Port 443 fits both entries; the more specific rule decides, so private is allowed.
    let d = policy.decide(&target("api.internal.example.com", 443, Https));
    assert_eq!(d.rule.as_ref().unwrap().text, "internal.example.com");
    assert!(d.allows_private());
    // The rule's extra port is for its own names only.
    let d = policy.decide(&target("www.example.com", 8443, Https));
    assert_eq!((d.action, d.reason), (Deny, PortNotAllowed));
    assert!(!d.allows_private());
    let d = policy.decide(&target("www.example.com", 443, Https));
    assert!(d.is_allow() && !d.allows_private());
    // Port 80 is no longer global.
    let d = policy.decide(&target("example.com", 80, Http));
    assert_eq!((d.action, d.reason), (Deny, PortNotAllowed));
}

#[test]
fn equal_specificity_prefers_the_rule_that_allows_private() {
    let mut rule = entry("github.com", List::Allow);
    rule.allow_private = true;
    let policy = Policy::new(
        [entry("github.com", List::Allow), rule],
        defaults::PORTS,
        &[],
    );
    assert_eq!(policy.entries().len(), 2);
    assert!(
        policy
            .decide(&target("github.com", 443, Https))
            .allows_private()
    );
}

#[test]
fn equal_specificity_prefers_the_entry_that_reaches_further() {
    let mut network = entry("git.corp", List::Allow);
    network.private_network = true;
    let policy = Policy::new(
        [entry("git.corp", List::Allow), network.clone()],
        defaults::PORTS,
        &[],
    );
    let reach = |p: &Policy| p.decide(&target("api.git.corp", 443, Https)).reach();
    assert_eq!(reach(&policy), Reach::PrivateNetwork);
    let mut any = entry("git.corp", List::Allow);
    any.allow_private = true;
    let policy = Policy::new([network, any], defaults::PORTS, &[]);
    assert_eq!(reach(&policy), Reach::Any);
    let policy = Policy::new([entry("git.corp", List::Allow)], defaults::PORTS, &[]);
    assert_eq!(reach(&policy), Reach::Public);
    assert_eq!(
        policy.decide(&target("other.example", 443, Https)).reach(),
        Reach::Public
    );
}

#[test]
fn duplicates_are_removed_keeping_the_first_origin() {
    let file = Origin::File {
        path: "domains.txt".into(),
        line: 3,
    };
    let entries = [
        entry("github.com", List::Allow),
        Entry::parse(".GitHub.com", List::Allow, file.clone()).unwrap(),
        Entry::parse("github.com", List::Block, file).unwrap(),
    ];
    let policy = Policy::new(entries, defaults::PORTS, &[]);
    let texts: Vec<_> = policy
        .entries()
        .iter()
        .map(|e| (e.text.as_str(), e.list))
        .collect();
    assert_eq!(
        texts,
        [("github.com", List::Allow), ("github.com", List::Block)]
    );
}

#[test]
fn decisions_display_rule_and_origin() {
    let file = Origin::File {
        path: "domains.txt".into(),
        line: 3,
    };
    let entries = [
        entry("github.com", List::Allow),
        Entry::parse("gist.github.com", List::Block, file).unwrap(),
        Entry::parse("example.org", List::Allow, Origin::Builtin("default")).unwrap(),
    ];
    let policy = Policy::new(entries, defaults::PORTS, &[8080]);
    let show = |host: &str, port: u16| {
        let t = target(host, port, Https);
        let d = policy.decide(&t);
        (d.to_string(), d.explain(&t).to_string())
    };
    assert_eq!(
        show("api.github.com", 443),
        (
            "allow github.com (--allow-domains)".into(),
            "allow api.github.com (rule github.com from --allow-domains)".into()
        )
    );
    assert_eq!(
        show("gist.github.com", 443),
        (
            "deny gist.github.com (domains.txt:3): blocked by the blocklist".into(),
            "deny gist.github.com: blocked by the blocklist (rule gist.github.com from domains.txt:3)"
                .into()
        )
    );
    assert_eq!(
        show("example.org", 443).0,
        "allow example.org (built-in default)"
    );
    assert_eq!(
        show("evil.test", 443),
        (
            "deny: not in the allowlist".into(),
            "deny evil.test: not in the allowlist".into()
        )
    );
    assert_eq!(
        show("github.com", 8443).1,
        "deny github.com: port 8443 is not allowed (rule github.com from --allow-domains)"
    );
    assert_eq!(
        show("ip:127.0.0.1", 8080).0,
        "allow: the loopback port is in loopback_ports"
    );
    assert_eq!(
        show("ip:::1", 22).1,
        "deny ::1: port 22: the loopback port is not in loopback_ports"
    );
}

#[test]
fn policy_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Policy>();
    assert_send_sync::<Decision>();
}

#[test]
fn fingerprint_is_order_independent_and_changes_with_entries() {
    let policy = |list: &str| {
        let mut b = crate::ConfigBuilder::new();
        b.allow_list(list, crate::Origin::Flag("--allow-domains"))
            .unwrap();
        b.build().unwrap().policy
    };
    let a = policy("a.test,b.test").fingerprint();
    assert_eq!(a, policy("b.test,a.test").fingerprint());
    assert_ne!(a, policy("a.test").fingerprint());
    assert!(a.starts_with("sha256:") && a.len() == 71);
}

#[test]
fn reason_codes_round_trip_and_are_distinct() {
    let codes: std::collections::BTreeSet<&str> = Reason::ALL.iter().map(|r| r.code()).collect();
    assert_eq!(codes.len(), Reason::ALL.len());
    for r in Reason::ALL {
        assert_eq!(Reason::from_code(r.code()), Some(r));
    }
    assert_eq!(Reason::from_code("not in the allowlist"), None);
}
