//! `policy-manifest.json` (`shared/reference/awf.md` §6.5): the rules AWF would have generated
//! for the same lists, in AWF's order and with AWF's ids, so `awf logs audit` and the summary's
//! "Policy Rules" block can name the rule behind each line.

use serde::{Deserialize, Serialize};

/// The manifest document.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 1.
    pub version: u32,
    /// RFC 3339.
    pub generated_at: String,
    /// The rules, in evaluation order.
    pub rules: Vec<Rule>,
    /// egressd has no port list of its own: every port that no rule allows is refused.
    pub dangerous_ports: Vec<u16>,
    /// egressd resolves allowed names itself.
    pub dns_servers: Vec<String>,
    /// Always false.
    pub ssl_bump_enabled: bool,
    /// Always false.
    pub dlp_enabled: bool,
    /// Always false.
    pub host_access_enabled: bool,
    /// Always null.
    pub allow_host_ports: Option<String>,
    /// `network.topologyAttach` names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_peers: Vec<String>,
}

/// One rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// `allow-both-plain`, `deny-default`, ...
    pub id: String,
    /// 1-based.
    pub order: u32,
    /// `allow` or `deny`.
    pub action: String,
    /// The Squid ACL AWF would use.
    pub acl_name: String,
    /// `both`, `http`, `https`.
    pub protocol: String,
    /// The entries (without protocol prefixes).
    pub domains: Vec<String>,
    /// What the rule does.
    pub description: String,
}

impl Manifest {
    /// The rules for these lists (AWF's §6.5 order).
    pub fn build(allow: &[String], block: &[String], peers: &[String], now: String) -> Self {
        let mut rules = Vec::new();
        let mut push =
            |id: &str, action: &str, acl: &str, protocol: &str, domains: Vec<String>, d: &str| {
                let order = u32::try_from(rules.len() + 1).unwrap_or(u32::MAX);
                rules.push(Rule {
                    id: id.to_owned(),
                    order,
                    action: action.to_owned(),
                    acl_name: acl.to_owned(),
                    protocol: protocol.to_owned(),
                    domains,
                    description: d.to_owned(),
                });
            };
        for peer in peers {
            push(
                &format!("allow-topology-peer-{peer}"),
                "allow",
                "topology_peer",
                "both",
                vec![peer.clone()],
                "Allow traffic to a topology peer",
            );
        }
        push(
            "deny-raw-ipv4",
            "deny",
            "dst_ipv4",
            "both",
            Vec::new(),
            "Deny direct IPv4 connections (no allowed name)",
        );
        push(
            "deny-raw-ipv6",
            "deny",
            "dst_ipv6",
            "both",
            Vec::new(),
            "Deny direct IPv6 connections (no allowed name)",
        );
        let (block_regex, block_plain) = split(block, |_| true);
        if !block_plain.is_empty() {
            push(
                "deny-blocked-plain",
                "deny",
                "blocked_domains",
                "both",
                block_plain,
                "Deny blocked domains",
            );
        }
        if !block_regex.is_empty() {
            push(
                "deny-blocked-regex",
                "deny",
                "blocked_domains_regex",
                "both",
                block_regex,
                "Deny blocked domain patterns",
            );
        }
        for (protocol, prefix, what) in [
            ("http", Some("http://"), "HTTP only"),
            ("https", Some("https://"), "HTTPS only"),
            ("both", None, "HTTP and HTTPS"),
        ] {
            let (regex, plain) = split(allow, |e| match prefix {
                Some(p) => e.starts_with(p),
                None => !e.starts_with("http://") && !e.starts_with("https://"),
            });
            let id = if protocol == "both" {
                "both".to_owned()
            } else {
                format!("{protocol}-only")
            };
            let acl = if protocol == "both" {
                "allowed_domains".to_owned()
            } else {
                format!("allowed_{protocol}_only")
            };
            if !plain.is_empty() {
                push(
                    &format!("allow-{id}-plain"),
                    "allow",
                    &acl,
                    protocol,
                    plain,
                    &format!("Allow {what} to listed domains"),
                );
            }
            if !regex.is_empty() {
                push(
                    &format!("allow-{id}-regex"),
                    "allow",
                    &format!("{acl}_regex"),
                    protocol,
                    regex,
                    &format!("Allow {what} to wildcard patterns"),
                );
            }
        }
        push(
            "deny-default",
            "deny",
            "all",
            "both",
            Vec::new(),
            "Deny all other traffic",
        );
        Self {
            version: 1,
            generated_at: now,
            rules,
            dangerous_ports: Vec::new(),
            dns_servers: Vec::new(),
            ssl_bump_enabled: false,
            dlp_enabled: false,
            host_access_enabled: false,
            allow_host_ports: None,
            topology_peers: peers.to_vec(),
        }
    }

    /// The rule that decided a request for `domain` (`https`: a CONNECT), given its decision.
    pub fn rule_for(&self, domain: &str, https: bool, allowed: bool) -> Option<&Rule> {
        let ip = domain.parse::<std::net::IpAddr>().ok();
        self.rules.iter().find(|r| {
            let protocol_ok = match r.protocol.as_str() {
                "http" => !https,
                "https" => https,
                _ => true,
            };
            match (r.action.as_str(), r.id.as_str()) {
                (_, "deny-default") => !allowed,
                (_, "deny-raw-ipv4") => !allowed && matches!(ip, Some(std::net::IpAddr::V4(_))),
                (_, "deny-raw-ipv6") => !allowed && matches!(ip, Some(std::net::IpAddr::V6(_))),
                ("allow", _) => {
                    allowed && protocol_ok && r.domains.iter().any(|d| matches(d, domain))
                }
                _ => !allowed && r.domains.iter().any(|d| matches(d, domain)),
            }
        })
    }
}

/// Splits `list` (entries selected by `keep`, protocol prefixes removed) into wildcard and plain.
fn split(list: &[String], keep: impl Fn(&str) -> bool) -> (Vec<String>, Vec<String>) {
    let mut regex = Vec::new();
    let mut plain = Vec::new();
    for entry in list.iter().filter(|e| keep(e)) {
        let bare = entry
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        if bare.contains('*') {
            regex.push(bare);
        } else {
            plain.push(bare);
        }
    }
    (regex, plain)
}

/// AWF matching: a plain entry covers its subdomains; `*` matches any run of name characters.
fn matches(entry: &str, domain: &str) -> bool {
    let entry = entry.trim_start_matches('.').to_ascii_lowercase();
    let domain = domain.to_ascii_lowercase();
    if !entry.contains('*') {
        return domain == entry || domain.ends_with(&format!(".{entry}"));
    }
    glob(entry.as_bytes(), domain.as_bytes())
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        Some((c, rest)) => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_follow_awf_order_and_match_like_squid() {
        let m = Manifest::build(
            &[
                "github.com".into(),
                "*.example.com".into(),
                "https://secure.test".into(),
            ],
            &["gist.github.com".into()],
            &[],
            "2026-01-01T00:00:00Z".into(),
        );
        let ids: Vec<&str> = m.rules.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "deny-raw-ipv4",
                "deny-raw-ipv6",
                "deny-blocked-plain",
                "allow-https-only-plain",
                "allow-both-plain",
                "allow-both-regex",
                "deny-default"
            ]
        );
        assert_eq!(
            m.rule_for("api.github.com", true, true).unwrap().id,
            "allow-both-plain"
        );
        assert_eq!(
            m.rule_for("gist.github.com", true, false).unwrap().id,
            "deny-blocked-plain"
        );
        assert_eq!(
            m.rule_for("a.example.com", true, true).unwrap().id,
            "allow-both-regex"
        );
        assert_eq!(
            m.rule_for("evil.test", true, false).unwrap().id,
            "deny-default"
        );
        assert_eq!(
            m.rule_for("192.0.2.1", true, false).unwrap().id,
            "deny-raw-ipv4"
        );
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["version"], 1);
        assert_eq!(json["rules"][0]["aclName"], "dst_ipv4");
    }
}
