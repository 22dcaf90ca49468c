//! `egressd allowlist lint`: entries that let in more than their author meant, or nothing.
//!
//! Findings, by severity:
//!
//! * **error**: an entry that covers a suffix anyone can register names under (the table
//!   is `audit::suggest::SHARED_SUFFIXES`): `*.blob.core.windows.net` lets in every storage
//!   account in the world, `*.ghe.com` every GHE.com tenant;
//! * **warning**: an entry that can never match (a port or path inside it, a trailing dot);
//! * **note**: `*.x` without `x` (the apex is not covered: AWF semantics), and entries that
//!   another entry already covers (shadowed) or that repeat one.

use egressd_config::{Entry, List, Pattern, SchemeFilter};
use serde::Serialize;

use super::audit::suggest::shared_suffix;
use crate::{Failure, cli::LintArgs, policy};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing.
    Note,
    /// Does nothing, or not what it says.
    Warning,
    /// Lets in parties nobody vetted.
    Error,
}

/// One finding about one entry.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// How bad it is.
    pub severity: Severity,
    /// The entry as written.
    pub entry: String,
    /// Where it came from.
    pub origin: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// Runs the lint; exit 0 when clean (or only notes without --strict), 1 otherwise.
pub fn run(args: &LintArgs) -> Result<u8, Failure> {
    let config = policy::build(&args.policy, None).map_err(Failure::usage)?;
    let findings = lint(config.policy.entries());
    if args.json {
        let text = serde_json::to_string_pretty(&findings).map_err(Failure::runtime)?;
        println!("{text}");
    } else if findings.is_empty() {
        println!("no findings in {} entries", config.policy.entries().len());
    } else {
        for f in &findings {
            let label = match f.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
                Severity::Note => "note",
            };
            println!("{label}: {} (from {}): {}", f.entry, f.origin, f.message);
        }
    }
    let threshold = if args.strict {
        Severity::Note
    } else {
        Severity::Warning
    };
    Ok(u8::from(findings.iter().any(|f| f.severity >= threshold)))
}

/// Every finding about `entries`, most severe first.
pub fn lint(entries: &[std::sync::Arc<Entry>]) -> Vec<Finding> {
    let mut findings = Vec::new();
    let allow: Vec<&Entry> = entries
        .iter()
        .map(AsRef::as_ref)
        .filter(|e| matches!(e.list, List::Allow))
        .collect();
    for e in &allow {
        let finding = |severity, message: String| Finding {
            severity,
            entry: e.text.clone(),
            origin: e.origin.to_string(),
            message,
        };
        if let Some(why) = e.dead_reason() {
            findings.push(finding(Severity::Warning, format!("never matches: {why}")));
            continue;
        }
        let (domain, wildcard) = match e.pattern() {
            Pattern::Domain(d) => (d.as_str(), false),
            Pattern::Wildcard(w) => match w.strip_prefix("*.") {
                Some(rest) if !rest.contains('*') => (rest, true),
                _ => continue,
            },
            _ => continue,
        };
        if let Some(shared) = covers_shared_suffix(domain) {
            let (suffix, what) = shared;
            findings.push(finding(
                Severity::Error,
                format!(
                    "covers every name under {suffix} ({what}): anyone can register one; \
                     list the exact hosts you use instead"
                ),
            ));
            continue;
        }
        if wildcard && !allow.iter().any(|o| covers(o, domain)) {
            findings.push(finding(
                Severity::Note,
                format!(
                    "does not cover {domain} itself (AWF semantics); write `{domain}` to cover \
                     both"
                ),
            ));
        }
        if let Some(parent) = allow
            .iter()
            .find(|o| !std::ptr::eq(**o, *e) && o.text != e.text && shadows(o, e, domain, wildcard))
        {
            findings.push(finding(
                Severity::Note,
                format!(
                    "already covered by {} (from {}); this entry changes nothing",
                    parent.text, parent.origin
                ),
            ));
        }
    }
    findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.entry.cmp(&b.entry)));
    findings
}

/// The shared suffix `domain` covers: it is one, or a parent of one (`windows.net`).
fn covers_shared_suffix(domain: &str) -> Option<(&'static str, &'static str)> {
    if let Some((suffix, what)) = shared_suffix(domain)
        && domain.len() <= suffix.len()
    {
        return Some((suffix, what));
    }
    super::audit::suggest::SHARED_SUFFIXES
        .iter()
        .find(|(suffix, _)| suffix.ends_with(&format!(".{domain}")))
        .copied()
}

/// Whether plain entry `o` covers `name` (itself or a subdomain).
fn covers(o: &Entry, name: &str) -> bool {
    match o.pattern() {
        Pattern::Domain(d) => name == d || name.ends_with(&format!(".{d}")),
        _ => false,
    }
}

/// Whether `o` makes `e` (whose domain part is `domain`) redundant: a plain parent with a
/// scheme filter at least as wide, and ports at least as wide.
fn shadows(o: &Entry, e: &Entry, domain: &str, wildcard: bool) -> bool {
    let scheme_ok = o.scheme == SchemeFilter::Any || o.scheme == e.scheme;
    let ports_ok = e.ports.iter().all(|p| o.ports.contains(p)) && o.reach() >= e.reach();
    let covered = match o.pattern() {
        Pattern::Domain(d) => {
            // `x.com` covers `*.x.com` and every `a.x.com`.
            domain == d.as_str() && wildcard || domain.ends_with(&format!(".{d}"))
        }
        _ => false,
    };
    covered && scheme_ok && ports_ok
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use egressd_config::{Entry, List, Origin};

    use super::*;

    fn entries(list: &[&str]) -> Vec<Arc<Entry>> {
        list.iter()
            .map(|t| {
                Arc::new(Entry::parse(t, List::Allow, Origin::Flag("--allow-domains")).unwrap())
            })
            .collect()
    }

    fn found(list: &[&str]) -> Vec<(Severity, String)> {
        lint(&entries(list))
            .into_iter()
            .map(|f| (f.severity, f.entry))
            .collect()
    }

    #[test]
    fn attacker_registrable_suffixes_are_errors() {
        for risky in [
            "*.blob.core.windows.net",
            "blob.core.windows.net",
            "windows.net",
            "*.ghe.com",
            "*.github.io",
            "amazonaws.com",
            "*.azurewebsites.net",
        ] {
            assert_eq!(
                found(&[risky]),
                vec![(Severity::Error, risky.to_owned())],
                "{risky}"
            );
        }
        // One tenant of a shared suffix is fine.
        assert!(found(&["acme.ghe.com", "productionresultssa0.blob.core.windows.net"]).is_empty());
    }

    #[test]
    fn dead_entries_are_warnings() {
        assert_eq!(
            found(&["example.com:8080"]),
            vec![(Severity::Warning, "example.com:8080".to_owned())]
        );
    }

    #[test]
    fn apex_confusion_and_shadowing_are_notes() {
        assert_eq!(
            found(&["*.example.com"]),
            vec![(Severity::Note, "*.example.com".to_owned())]
        );
        let shadowed = found(&["github.com", "api.github.com", "*.github.com"]);
        assert_eq!(
            shadowed,
            vec![
                (Severity::Note, "*.github.com".to_owned()),
                (Severity::Note, "api.github.com".to_owned()),
            ]
        );
        // Different schemes do not shadow.
        assert!(found(&["https://github.com", "http://api.github.com"]).is_empty());
    }
}
