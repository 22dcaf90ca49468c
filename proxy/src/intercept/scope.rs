//! [`Scope`]: the intercepted domains, as the policy names them, turned into the exact set of
//! names the ephemeral CA may certify and into the X.509 name constraints that say so.
//!
//! # Mapping
//!
//! The policy's domain syntax is AWF's (`egressd_config` crate doc): `example.com` (or
//! `.example.com`) is the apex and every subdomain, `*.example.com` every subdomain but not
//! the apex. RFC 5280 dNSName constraints, as rustls-webpki, OpenSSL, Go, NSS and current
//! GnuTLS read them, have the two matching forms:
//!
//! | entry            | permitted dNSName subtree | names covered                        |
//! |------------------|---------------------------|--------------------------------------|
//! | `example.com`    | `example.com`             | `example.com`, `*.example.com`, ...  |
//! | `.example.com`   | `example.com`             | same as above (AWF spelling)         |
//! | `*.example.com`  | `.example.com`            | `a.example.com`, `a.b.example.com`   |
//!
//! A constraint without a leading dot matches the name itself and any name that ends in
//! `.` + constraint; one with a leading dot matches only names strictly below it
//! (`presented_id_matches_reference_id` in rustls-webpki's `subject_name/dns_name.rs`).
//! So the constraints cover exactly what [`Scope::covers`] accepts, and a leaf for the
//! apex of a `*.` entry is refused by both.
//!
//! Other wildcard shapes the policy accepts (`api-*.example.com`, `*.example.*`) have no
//! exact name-constraint form and are refused here: an intercepted domain must be named as a
//! domain or a `*.` subtree. IP addresses cannot be intercepted (there is no SNI to mint
//! for), and every IP address is put in the *excluded* subtrees, so a leaf carrying an IP
//! SAN fails verification even though the permitted subtrees only list DNS names (RFC 5280
//! leaves name types without a permitted subtree unconstrained).

use std::net::IpAddr;

use rcgen::{CidrSubnet, GeneralSubtree, NameConstraints};
use rustls::pki_types::DnsName;

use super::ca::CaError;

/// The names one ephemeral CA may certify. Immutable once parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Scope {
    /// In entry order, duplicates removed; every name lowercase, without leading or
    /// trailing dot, and a valid DNS name.
    subtrees: Vec<Subtree>,
}

/// One permitted subtree.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Subtree {
    /// `example.com`: the name and every name below it.
    Domain(String),
    /// `*.example.com`: every name strictly below `example.com`.
    Subdomains(String),
}

impl Scope {
    /// Parses the intercepted entries (see the module doc for the accepted forms).
    ///
    /// # Errors
    ///
    /// [`CaError::NoInterceptedDomains`] for an empty list, [`CaError::UnsupportedEntry`]
    /// for an entry that is not a domain or a `*.` subtree.
    pub(super) fn parse(entries: &[String]) -> Result<Self, CaError> {
        if entries.is_empty() {
            return Err(CaError::NoInterceptedDomains);
        }
        let mut subtrees = Vec::with_capacity(entries.len());
        for entry in entries {
            let subtree = parse_entry(entry).map_err(|why| CaError::UnsupportedEntry {
                entry: entry.clone(),
                why,
            })?;
            if !subtrees.contains(&subtree) {
                subtrees.push(subtree);
            }
        }
        Ok(Self { subtrees })
    }

    /// Returns true if and only if `name` (lowercase, no trailing dot) lies in a permitted
    /// subtree, i.e. the CA's name constraints allow a leaf for it.
    pub(super) fn covers(&self, name: &DnsName<'_>) -> bool {
        let name = name.as_ref();
        self.subtrees.iter().any(|subtree| match subtree {
            Subtree::Domain(domain) => name == domain || is_strictly_below(name, domain),
            Subtree::Subdomains(domain) => is_strictly_below(name, domain),
        })
    }

    /// The NameConstraints extension for the CA certificate: the permitted DNS subtrees of
    /// the module doc's table, and every IPv4 and IPv6 address excluded.
    pub(super) fn name_constraints(&self) -> NameConstraints {
        let permitted_subtrees = self
            .subtrees
            .iter()
            .map(|subtree| match subtree {
                Subtree::Domain(domain) => GeneralSubtree::DnsName(domain.clone()),
                Subtree::Subdomains(domain) => GeneralSubtree::DnsName(format!(".{domain}")),
            })
            .collect();
        NameConstraints {
            permitted_subtrees,
            excluded_subtrees: vec![
                GeneralSubtree::IpAddress(CidrSubnet::V4([0; 4], [0; 4])),
                GeneralSubtree::IpAddress(CidrSubnet::V6([0; 16], [0; 16])),
            ],
        }
    }
}

/// Returns true if and only if `name` ends in `.` + `domain` with at least one label before.
fn is_strictly_below(name: &str, domain: &str) -> bool {
    name.len() > domain.len() + 1
        && name.ends_with(domain)
        && name.as_bytes()[name.len() - domain.len() - 1] == b'.'
}

/// One entry to a [`Subtree`], or why it cannot be one.
fn parse_entry(entry: &str) -> Result<Subtree, &'static str> {
    let text = entry.trim().to_ascii_lowercase();
    if text
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok()
    {
        return Err("IP addresses cannot be intercepted: there is no name to certify");
    }
    if text.contains("://") || text.contains('/') || text.contains(':') {
        return Err("name the domain only: no scheme, port or path");
    }
    if text.ends_with('.') {
        return Err("remove the trailing dot");
    }
    let (wildcard, domain) = match text.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('.').unwrap_or(&text)),
    };
    if domain.contains('*') {
        return Err(
            "only a leading '*.' wildcard can be intercepted (it maps to a \
                    name-constraint subtree); name the domain or '*.domain'",
        );
    }
    if DnsName::try_from(domain).is_err() {
        return Err("it is not a valid dns name");
    }
    let domain = domain.to_owned();
    Ok(if wildcard {
        Subtree::Subdomains(domain)
    } else {
        Subtree::Domain(domain)
    })
}
