//! `audit --suggest`: the smallest allowlist additions that would have allowed the denied
//! names, each with a verdict, and (with a policy) the entries never hit.
//!
//! Names are grouped by registrable domain, computed without a public suffix list from two
//! small tables: [`SHARED_SUFFIXES`], suffixes under which anyone can register a name (a
//! wildcard over one of them lets an attacker in), and [`MULTI_LABEL_SUFFIXES`], country
//! suffixes of two labels. Three or more denied names under one ordinary registrable domain
//! collapse into one `*.domain` entry (or `domain` when the apex was denied too); under a
//! shared suffix nothing is ever collapsed past one tenant.

use std::collections::BTreeMap;

use egressd_config::{Entry, List, Origin, Policy, Reason, Scheme, Target, TargetHost};
use serde::Serialize;

use super::aggregate::{Aggregate, DomainStats, OTHER};

/// Suffixes anyone can register names under (cloud storage, hosting, pages): never suggest
/// a wildcard over them, and warn on entries that cover them. One table, with why.
pub const SHARED_SUFFIXES: &[(&str, &str)] = &[
    ("blob.core.windows.net", "Azure storage accounts"),
    ("web.core.windows.net", "Azure static websites"),
    ("azurewebsites.net", "Azure App Service apps"),
    ("azureedge.net", "Azure CDN endpoints"),
    ("azurestaticapps.net", "Azure Static Web Apps"),
    ("cloudapp.azure.com", "Azure VM DNS labels"),
    ("trafficmanager.net", "Azure Traffic Manager profiles"),
    ("amazonaws.com", "AWS S3 buckets and endpoints"),
    ("cloudfront.net", "AWS CloudFront distributions"),
    ("github.io", "GitHub Pages sites"),
    ("ghe.com", "GitHub Enterprise Cloud tenants"),
    ("herokuapp.com", "Heroku apps"),
    ("vercel.app", "Vercel deployments"),
    ("netlify.app", "Netlify sites"),
    ("pages.dev", "Cloudflare Pages projects"),
    ("workers.dev", "Cloudflare Workers"),
    ("r2.dev", "Cloudflare R2 buckets"),
    ("appspot.com", "Google App Engine apps"),
    ("storage.googleapis.com", "Google Cloud Storage buckets"),
    ("web.app", "Firebase Hosting sites"),
    ("firebaseapp.com", "Firebase apps"),
    ("gitlab.io", "GitLab Pages sites"),
    ("onrender.com", "Render services"),
    ("fly.dev", "Fly.io apps"),
    ("ngrok.io", "ngrok tunnels"),
    ("ngrok-free.app", "ngrok tunnels"),
    ("blogspot.com", "Blogger blogs"),
];

/// Two-label public suffixes: the registrable domain is three labels under them.
const MULTI_LABEL_SUFFIXES: &[&str] = &[
    "co.uk", "org.uk", "ac.uk", "gov.uk", "com.au", "net.au", "org.au", "co.jp", "ne.jp", "co.nz",
    "com.br", "com.cn", "co.in", "co.kr", "com.mx", "co.za", "com.tr", "com.tw", "com.sg",
    "com.hk",
];

/// Fewer denied names than this under one domain are suggested one by one.
const COLLAPSE_MIN: usize = 3;
/// The most names listed under one suggestion (the rest are counted).
const MAX_COVERED: usize = 10;

/// How safe a suggestion is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// An ordinary domain entry.
    Ok,
    /// Fine, but read the note (a wildcard, an IP, a port rule, one tenant of a shared
    /// suffix).
    Review,
    /// The entry would also admit names anyone can register: do not add it blindly.
    Risky,
    /// Denied on purpose (the blocklist): do not add.
    Never,
}

/// One suggested change.
#[derive(Clone, Debug, Serialize)]
pub struct Suggestion {
    /// What to add: an allowlist entry, or a `[[rule]]` for a port.
    pub add: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Why this verdict.
    pub note: String,
    /// Denied names it covers (first few).
    pub covers: Vec<String>,
    /// How many denied names it covers.
    pub covers_count: usize,
    /// Denied records it would have allowed.
    pub denied: u64,
}

/// An entry of the given policy that no record hit.
#[derive(Clone, Debug, Serialize)]
pub struct Unused {
    /// The entry text.
    pub entry: String,
    /// Where it came from.
    pub origin: String,
    /// Why it can never match, for dead entries.
    pub never_matches: Option<&'static str>,
}

/// The `--suggest` result.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Suggestions {
    /// Additions, most denied records first.
    pub add: Vec<Suggestion>,
    /// Allow entries never hit (only with a policy): candidates for removal.
    pub unused: Vec<Unused>,
}

/// The registrable domain of `name`: one tenant label plus a shared suffix, three labels
/// under a two-label country suffix, else the last two labels. Also returns the shared
/// suffix when there is one.
pub fn registrable(name: &str) -> (String, Option<&'static (&'static str, &'static str)>) {
    if let Some(shared) = shared_suffix(name) {
        if name == shared.0 {
            return (name.to_owned(), Some(shared));
        }
        let head = &name[..name.len() - shared.0.len() - 1];
        let tenant = head.rsplit('.').next().unwrap_or(head);
        return (format!("{tenant}.{}", shared.0), Some(shared));
    }
    let labels: Vec<&str> = name.split('.').collect();
    let keep = if labels.len() >= 3
        && MULTI_LABEL_SUFFIXES.contains(&labels[labels.len() - 2..].join(".").as_str())
    {
        3
    } else {
        2
    };
    (labels[labels.len().saturating_sub(keep)..].join("."), None)
}

/// The shared suffix `name` is, or is under.
pub fn shared_suffix(name: &str) -> Option<&'static (&'static str, &'static str)> {
    SHARED_SUFFIXES.iter().find(|(s, _)| {
        name == *s
            || (name.len() > s.len()
                && name.ends_with(s)
                && name.as_bytes()[name.len() - s.len() - 1] == b'.')
    })
}

/// Builds the suggestions from the per-domain view; `policy` (optional) refines reasons and
/// finds unused entries.
pub fn suggest(agg: &Aggregate, policy: Option<&Policy>) -> Suggestions {
    let mut add = Vec::new();
    // Denied names that an ordinary allow entry would fix, grouped by registrable domain.
    let mut groups: BTreeMap<String, Vec<(&str, &DomainStats)>> = BTreeMap::new();
    let mut names: Vec<(&String, &DomainStats)> = agg
        .domains
        .iter()
        .filter(|(name, d)| {
            d.denied + d.dns_denied > 0 && name.as_str() != "-" && name.as_str() != OTHER
        })
        .collect();
    names.sort_by(|a, b| a.0.cmp(b.0));
    for (name, d) in names {
        match classify(name, d, policy) {
            Kind::Name => groups
                .entry(registrable(name).0)
                .or_default()
                .push((name, d)),
            Kind::Done(s) => add.push(s),
            Kind::Skip => {}
        }
    }
    for (domain, members) in groups {
        add.extend(group_suggestions(&domain, &members));
    }
    add.sort_by(|a, b| {
        (a.verdict == Verdict::Never)
            .cmp(&(b.verdict == Verdict::Never))
            .then_with(|| b.denied.cmp(&a.denied))
            .then_with(|| a.add.cmp(&b.add))
    });
    let unused = policy.map(|p| unused_entries(agg, p)).unwrap_or_default();
    Suggestions { add, unused }
}

enum Kind {
    /// An ordinary name an allow entry fixes.
    Name,
    /// A suggestion of its own (port rule, IP, blocklisted...).
    Done(Suggestion),
    /// Nothing to suggest (already allowed now, invalid name).
    Skip,
}

fn classify(name: &str, d: &DomainStats, policy: Option<&Policy>) -> Kind {
    let denied = d.denied + d.dns_denied;
    let one = |add: String, verdict, note: String| {
        Kind::Done(Suggestion {
            add,
            verdict,
            note,
            covers: vec![name.to_owned()],
            covers_count: 1,
            denied,
        })
    };
    let is_ip = name.parse::<std::net::IpAddr>().is_ok();
    // With a policy, decide again for the real reason (AWF logs carry none).
    let reason = match policy {
        Some(p) => {
            let port = d.denied_ports.first().copied().unwrap_or(443);
            let host = if is_ip {
                TargetHost::Ip(name.parse().expect("checked just above"))
            } else {
                TargetHost::Name(name)
            };
            let decision = p.decide(&Target {
                host,
                port,
                scheme: Scheme::Https,
            });
            if decision.is_allow() {
                return Kind::Skip;
            }
            Some(decision.reason)
        }
        // The codes the records carry; logs written before codes: their English text.
        None if !d.codes.is_empty() => DENIALS
            .into_iter()
            .find(|r| d.codes.iter().any(|c| c == r.code())),
        None => DENIALS.into_iter().find(|r| {
            let text = r.to_string();
            d.reasons.iter().any(|(reason, _)| reason.contains(&text))
        }),
    };
    match reason {
        Some(Reason::Blocklisted) => one(
            name.to_owned(),
            Verdict::Never,
            "blocked on purpose by the blocklist; do not add".to_owned(),
        ),
        Some(Reason::InvalidName) => Kind::Skip,
        Some(Reason::LoopbackPortDenied) => {
            let ports: Vec<String> = d.denied_ports.iter().map(u16::to_string).collect();
            one(
                format!("loopback_ports = [{}]", ports.join(", ")),
                Verdict::Review,
                "a loopback service on the runner: allow only if the agent needs it".to_owned(),
            )
        }
        Some(Reason::PortNotAllowed) | None
            if d.denied_ports.iter().any(|p| *p != 443 && *p != 80) && !is_ip =>
        {
            let ports: Vec<String> = d
                .denied_ports
                .iter()
                .filter(|p| **p != 443 && **p != 80)
                .map(u16::to_string)
                .collect();
            one(
                format!(
                    "[[rule]] domain = \"{name}\", ports = [{}]",
                    ports.join(", ")
                ),
                Verdict::Review,
                "a port other than 80/443: a [[rule]] allows it for this name only".to_owned(),
            )
        }
        Some(Reason::SchemeNotAllowed) => one(
            name.to_owned(),
            Verdict::Review,
            "a matching entry is limited to the other scheme (https:// or http://); widen it \
             only if intended"
                .to_owned(),
        ),
        _ if is_ip => one(
            name.to_owned(),
            Verdict::Review,
            "an IP destination: a raw-IP entry; prefer the name the client should use".to_owned(),
        ),
        _ => Kind::Name,
    }
}

/// Suggestions for the denied names under one registrable domain.
fn group_suggestions(domain: &str, members: &[(&str, &DomainStats)]) -> Vec<Suggestion> {
    let total: u64 = members.iter().map(|(_, d)| d.denied + d.dns_denied).sum();
    let names: Vec<String> = members.iter().map(|(n, _)| (*n).to_owned()).collect();
    let apex = names.iter().any(|n| n == domain);
    let shared = shared_suffix(domain);
    let ordinary = shared.is_none() || domain != shared.map_or("", |s| s.0);
    let collapsible = ordinary && (apex || names.len() >= COLLAPSE_MIN);
    if collapsible && names.len() > 1 {
        // The deepest parent all names share (never above the registrable domain).
        let parent = common_parent(&names).filter(|p| p.len() >= domain.len());
        let parent = parent.as_deref().unwrap_or(domain);
        let (add, why) = if names.iter().any(|n| n == parent) {
            (
                parent.to_owned(),
                format!("`{parent}` covers it and its subdomains"),
            )
        } else {
            (
                format!("*.{parent}"),
                format!("one wildcard for {} subdomains of {parent}", names.len()),
            )
        };
        let domain = parent;
        let (verdict, note) = match shared {
            Some((suffix, what)) => (
                Verdict::Review,
                format!(
                    "{why}; limited to one tenant of {suffix} ({what}): never widen it to \
                     *.{suffix}"
                ),
            ),
            None => (
                Verdict::Review,
                format!("{why}; it also allows any other subdomain of {domain}"),
            ),
        };
        return vec![Suggestion {
            add,
            verdict,
            note,
            covers_count: names.len(),
            covers: names.into_iter().take(MAX_COVERED).collect(),
            denied: total,
        }];
    }
    // One entry per name; a name under another denied name is covered by it.
    let mut out: Vec<Suggestion> = Vec::new();
    for (name, d) in members {
        if members
            .iter()
            .any(|(other, _)| other != name && name.ends_with(&format!(".{other}")))
        {
            let parent = out
                .iter_mut()
                .find(|s| name.ends_with(&format!(".{}", s.add)));
            if let Some(p) = parent {
                p.covers.push((*name).to_owned());
                p.covers_count += 1;
                p.denied += d.denied + d.dns_denied;
                continue;
            }
        }
        let (mut verdict, mut note) = verdict_for(name);
        if d.denied == 0 && verdict == Verdict::Ok {
            verdict = Verdict::Review;
            note = "only DNS lookups were refused, no connection was tried: this may be a \
                    probe or DNS exfiltration; add it only if a client needs the name"
                .to_owned();
        }
        out.push(Suggestion {
            add: (*name).to_owned(),
            verdict,
            note,
            covers: vec![(*name).to_owned()],
            covers_count: 1,
            denied: d.denied + d.dns_denied,
        });
    }
    out
}

/// The longest dot-aligned suffix every name in `names` ends with (a name itself counts).
fn common_parent(names: &[String]) -> Option<String> {
    let first: Vec<&str> = names.first()?.split('.').collect();
    let mut keep = first.len();
    for n in &names[1..] {
        let labels: Vec<&str> = n.split('.').collect();
        let same = first
            .iter()
            .rev()
            .zip(labels.iter().rev())
            .take_while(|(a, b)| a == b)
            .count();
        keep = keep.min(same);
    }
    (keep > 0).then(|| first[first.len() - keep..].join("."))
}

/// The verdict on a plain domain entry for `name` (which also covers its subdomains).
pub fn verdict_for(name: &str) -> (Verdict, String) {
    if let Err(e) = Entry::parse(name, List::Allow, Origin::Builtin("suggestion")) {
        return (Verdict::Never, format!("not a valid entry: {e}"));
    }
    match shared_suffix(name) {
        Some((suffix, what)) if name == *suffix => (
            Verdict::Risky,
            format!(
                "{suffix} is a shared suffix ({what}): this entry admits every name anyone \
                 registers under it"
            ),
        ),
        Some((suffix, what)) => {
            let (tenant, _) = registrable(name);
            if tenant == name {
                (
                    Verdict::Review,
                    format!("one tenant of the shared suffix {suffix} ({what}); check it is yours"),
                )
            } else {
                (
                    Verdict::Risky,
                    format!(
                        "under the shared suffix {suffix} ({what}) but above a tenant: it may \
                         admit names others register"
                    ),
                )
            }
        }
        None => (Verdict::Ok, "covers the name and its subdomains".to_owned()),
    }
}

/// Allow entries of `policy` that no record hit, by the records' `rule` field or (for
/// records without one, such as AWF's) by deciding the allowed names again.
fn unused_entries(agg: &Aggregate, policy: &Policy) -> Vec<Unused> {
    let mut hit = vec![false; policy.entries().len()];
    let index_of = |text: &str| {
        policy
            .entries()
            .iter()
            .position(|e| text == e.to_string() || text.starts_with(&format!("{} (from ", e.text)))
    };
    for rule in agg.rules.keys() {
        if let Some(i) = index_of(rule) {
            hit[i] = true;
        }
    }
    for (name, d) in &agg.domains {
        if d.allowed + d.dns_allowed == 0 || name == "-" || name == OTHER {
            continue;
        }
        let host = match name.parse() {
            Ok(ip) => TargetHost::Ip(ip),
            Err(_) => TargetHost::Name(name),
        };
        for scheme in [Scheme::Https, Scheme::Http] {
            let decision = policy.decide(&Target {
                host,
                port: if scheme == Scheme::Https { 443 } else { 80 },
                scheme,
            });
            let allowed = decision.is_allow();
            if let Some(rule) = decision.rule.filter(|_| allowed)
                && let Some(i) = policy.entries().iter().position(|e| **e == *rule)
            {
                hit[i] = true;
            }
        }
    }
    policy
        .entries()
        .iter()
        .zip(hit)
        .filter(|(e, hit)| !hit && e.list == List::Allow)
        .map(|(e, _)| Unused {
            entry: e.text.clone(),
            origin: e.origin.to_string(),
            never_matches: e.dead_reason(),
        })
        .collect()
}

/// The denial reasons a suggestion depends on, in order of precedence.
const DENIALS: [Reason; 4] = [
    Reason::Blocklisted,
    Reason::PortNotAllowed,
    Reason::SchemeNotAllowed,
    Reason::InvalidName,
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::audit::read::Rec;

    fn denied(agg: &mut Aggregate, name: &str, port: u16, reason: &str) {
        agg.add(&Rec {
            proto: "tls".into(),
            name: Some(name.into()),
            port: Some(port),
            reason: Some(reason.into()),
            ..Rec::default()
        });
    }

    fn adds(s: &Suggestions) -> Vec<(String, Verdict)> {
        s.add.iter().map(|s| (s.add.clone(), s.verdict)).collect()
    }

    #[test]
    fn registrable_domains() {
        assert_eq!(registrable("a.b.example.com").0, "example.com");
        assert_eq!(registrable("www.bbc.co.uk").0, "bbc.co.uk");
        assert_eq!(
            registrable("x.acct.blob.core.windows.net").0,
            "acct.blob.core.windows.net"
        );
        assert_eq!(registrable("example.com").0, "example.com");
        assert!(shared_suffix("notgithub.io").is_none());
        assert!(shared_suffix("me.github.io").is_some());
    }

    #[test]
    fn many_subdomains_collapse_but_never_over_a_shared_suffix() {
        let mut agg = Aggregate::default();
        for n in ["a.cdn.example", "b.cdn.example", "c.cdn.example"] {
            denied(&mut agg, n, 443, "not in the allowlist");
        }
        for n in [
            "one.blob.core.windows.net",
            "two.blob.core.windows.net",
            "three.blob.core.windows.net",
        ] {
            denied(&mut agg, n, 443, "not in the allowlist");
        }
        denied(&mut agg, "solo.example.org", 443, "not in the allowlist");
        let s = suggest(&agg, None);
        let got = adds(&s);
        assert!(
            got.contains(&("*.cdn.example".into(), Verdict::Review)),
            "{got:?}"
        );
        assert!(
            got.contains(&("solo.example.org".into(), Verdict::Ok)),
            "{got:?}"
        );
        for tenant in ["one", "two", "three"] {
            assert!(
                got.contains(&(format!("{tenant}.blob.core.windows.net"), Verdict::Review)),
                "{got:?}"
            );
        }
        assert!(
            got.iter()
                .all(|(a, _)| !a.contains("*.blob") && !a.contains("*.core")),
            "{got:?}"
        );
    }

    #[test]
    fn apex_covers_subdomains_and_shared_suffix_itself_is_risky() {
        let mut agg = Aggregate::default();
        denied(&mut agg, "example.net", 443, "not in the allowlist");
        denied(&mut agg, "api.example.net", 443, "not in the allowlist");
        denied(&mut agg, "github.io", 443, "not in the allowlist");
        denied(&mut agg, "gist.github.com", 443, "blocked by the blocklist");
        denied(&mut agg, "db.example.com", 5432, "the port is not allowed");
        let got = adds(&suggest(&agg, None));
        assert!(
            got.contains(&("example.net".into(), Verdict::Review)),
            "{got:?}"
        );
        assert!(
            got.contains(&("github.io".into(), Verdict::Risky)),
            "{got:?}"
        );
        assert!(
            got.contains(&("gist.github.com".into(), Verdict::Never)),
            "{got:?}"
        );
        assert!(
            got.contains(&(
                "[[rule]] domain = \"db.example.com\", ports = [5432]".into(),
                Verdict::Review
            )),
            "{got:?}"
        );
    }

    #[test]
    fn reason_codes_decide_over_the_english_text() {
        // A record's code says what the policy decided; its text is only for people.
        let mut agg = Aggregate::default();
        agg.add(&Rec {
            proto: "tls".into(),
            name: Some("gist.github.com".into()),
            port: Some(443),
            reason: Some("some other wording".into()),
            code: Some("blocklisted".into()),
            ..Rec::default()
        });
        agg.add(&Rec {
            proto: "tls".into(),
            name: Some("db.example.com".into()),
            port: Some(5432),
            reason: Some("blocked by the blocklist (worded as an older version did)".into()),
            code: Some("port_not_allowed".into()),
            ..Rec::default()
        });
        let got = adds(&suggest(&agg, None));
        assert!(
            got.contains(&("gist.github.com".into(), Verdict::Never)),
            "{got:?}"
        );
        assert!(
            got.contains(&(
                "[[rule]] domain = \"db.example.com\", ports = [5432]".into(),
                Verdict::Review
            )),
            "{got:?}"
        );
    }

    #[test]
    fn unused_entries_with_a_policy() {
        let mut b = egressd_config::ConfigBuilder::new();
        b.allow_list(
            "used.example,unused.example,dead.example:8080",
            Origin::Flag("--allow-domains"),
        )
        .unwrap();
        let policy = b.build().unwrap().policy;
        let mut agg = Aggregate::default();
        agg.add(&Rec {
            proto: "connect".into(),
            name: Some("api.used.example".into()),
            allow: true,
            ..Rec::default()
        });
        let s = suggest(&agg, Some(&policy));
        let unused: Vec<&str> = s.unused.iter().map(|u| u.entry.as_str()).collect();
        assert_eq!(unused, ["unused.example", "dead.example:8080"]);
        assert!(s.unused[1].never_matches.is_some());
    }
}
