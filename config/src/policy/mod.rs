//! The allowlist [`Policy`]: compiled, immutable, cheap to share behind an `Arc`.
//!
//! [`Policy::decide`] answers "may this connection go out?" for a [`Target`] (a name or an
//! IP, a port, and the scheme seen on the wire). It is pure and allocation-free: the name
//! is checked and lowercased into a stack buffer, then looked up in the compiled
//! [`matcher`] tables.
//!
//! Decision order (AWF `http_access` order, `shared/reference/awf.md` §3.2):
//!
//! 1. a name that is not a valid DNS name is denied ([`Reason::InvalidName`]); a name that
//!    is an IP literal is decided as that IP;
//! 2. a matching block entry denies ([`Reason::Blocklisted`]); a block entry with a scheme
//!    prefix only blocks that scheme;
//! 3. loopback IPs are allowed only on `loopback_ports`;
//! 4. an empty allowlist denies everything else ([`Reason::EmptyAllowlist`]);
//! 5. the most specific matching allow entry whose scheme and ports fit allows; otherwise
//!    the most specific matching entry is reported with [`Reason::PortNotAllowed`] or
//!    [`Reason::SchemeNotAllowed`];
//! 6. everything else is denied ([`Reason::NotAllowlisted`], or [`Reason::IpLiteral`] for
//!    an IP).
//!
//! # Security
//!
//! This is the decision the sandbox boundary rests on: it fails closed (anything it does not
//! understand is denied) and it never consults DNS.

mod matcher;
mod pattern;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use self::matcher::Matcher;
pub(crate) use self::pattern::canonical_ip as canonical;
use self::pattern::{MAX_NAME_LEN, parse_ip};

pub use self::pattern::{Entry, List, Origin, Pattern, Reach, SchemeFilter};

/// The compiled allowlist and blocklist, with the allowed ports.
#[derive(Debug)]
pub struct Policy {
    entries: Vec<Arc<Entry>>,
    allow: Matcher,
    block: Matcher,
    has_allow_entries: bool,
    ports: Vec<u16>,
    loopback_ports: Vec<u16>,
    audit_only: bool,
}

/// A connection to decide on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    /// The name (SNI or `Host`) or address the client asked for.
    pub host: TargetHost<'a>,
    /// The destination port.
    pub port: u16,
    /// What was seen on the wire.
    pub scheme: Scheme,
}

/// The host part of a [`Target`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetHost<'a> {
    /// A name as the client sent it (any case, maybe a trailing dot, maybe an IP literal).
    Name(&'a str),
    /// An address (no name was seen, e.g. TLS without SNI).
    Ip(IpAddr),
}

/// The protocol seen on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Scheme {
    /// A TLS `ClientHello`.
    Https,
    /// A plain HTTP/1 request.
    Http,
}

/// What [`Policy::decide`] decided, and why.
#[derive(Clone, Debug)]
pub struct Decision {
    /// Allow or deny.
    pub action: Action,
    /// The entry that decided, when one did.
    pub rule: Option<Arc<Entry>>,
    /// Why.
    pub reason: Reason,
}

/// Allow or deny.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Action {
    /// The connection may go out.
    Allow,
    /// The connection must be refused.
    Deny,
}

/// Why a [`Decision`] was made.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Reason {
    /// An allow entry matched, and its scheme and ports fit.
    Allowlisted,
    /// A loopback destination on a port named in `loopback_ports`.
    LoopbackPortAllowed,
    /// A block entry matched (it wins over any allow entry).
    Blocklisted,
    /// No allow entry matched.
    NotAllowlisted,
    /// There are no allow entries at all: everything is denied.
    EmptyAllowlist,
    /// Only an `https://` entry matched plain HTTP, or an `http://` entry matched TLS.
    SchemeNotAllowed,
    /// The name is allowed but the destination port is not (see [`Policy::ports`] and
    /// [`Entry::ports`]).
    PortNotAllowed,
    /// An IP destination with no raw-IP allow entry.
    IpLiteral,
    /// A loopback destination whose port no `loopback_ports` entry names.
    LoopbackPortDenied,
    /// The requested name is not a valid DNS name (empty, bad characters, too long).
    InvalidName,
}

impl Policy {
    /// Audit-only mode (`--audit-only`): decisions are made and recorded as usual, but a
    /// denial is not enforced; the proxy lets the connection through and marks its record.
    #[must_use]
    pub fn with_audit_only(mut self, audit_only: bool) -> Self {
        self.audit_only = audit_only;
        self
    }

    /// Whether denials are recorded but not enforced ([`Policy::with_audit_only`]).
    #[must_use]
    pub fn audit_only(&self) -> bool {
        self.audit_only
    }

    /// Compiles `entries` (allow and block, in order) with the globally allowed `ports` and
    /// the allowed `loopback_ports`.
    ///
    /// Duplicate entries (same list, scheme, pattern, ports and `allow_private`) are removed,
    /// keeping the first, whose origin is then reported.
    pub fn new(
        entries: impl IntoIterator<Item = Entry>,
        ports: &[u16],
        loopback_ports: &[u16],
    ) -> Policy {
        let mut policy = Policy {
            entries: Vec::new(),
            allow: Matcher::default(),
            block: Matcher::default(),
            has_allow_entries: false,
            ports: sorted_unique(ports),
            loopback_ports: sorted_unique(loopback_ports),
            audit_only: false,
        };
        // Duplicates by key, in one pass (a pairwise check was quadratic: 30 s and more for
        // 100,000 entries).
        let mut seen = std::collections::HashSet::new();
        for entry in entries {
            if !seen.insert(rule_key(&entry)) {
                continue;
            }
            let index = policy.entries.len();
            match entry.list {
                List::Allow => {
                    policy.has_allow_entries = true;
                    policy.allow.insert(index, entry.pattern());
                }
                List::Block => policy.block.insert(index, entry.pattern()),
            }
            policy.entries.push(Arc::new(entry));
        }
        policy
    }

    /// Decides on one connection. Pure, and does not allocate.
    pub fn decide(&self, target: &Target<'_>) -> Decision {
        match target.host {
            TargetHost::Ip(ip) => self.decide_ip(canonical(ip), target),
            TargetHost::Name(name) => {
                let name = name.strip_suffix('.').unwrap_or(name);
                if let Some(ip) = parse_ip(name) {
                    return self.decide_ip(ip, target);
                }
                let mut buffer = [0u8; MAX_NAME_LEN];
                match lowercase_dns_name(name, &mut buffer) {
                    Some(lower) => self.decide_name(lower, target),
                    None => Decision::deny(Reason::InvalidName, None),
                }
            }
        }
    }

    /// Every entry, allow and block, in the order given (duplicates removed).
    pub fn entries(&self) -> &[Arc<Entry>] {
        &self.entries
    }

    /// `sha256:<hex>` of the entries (text and origin, one per line, sorted): what `arm`
    /// records carry and `egressd audit --policy` compares, the same for the same
    /// entries in any order.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest as _;
        use std::fmt::Write as _;
        let mut lines: Vec<String> = self
            .entries()
            .iter()
            .map(|e| format!("{}\t{}\n", e.text, e.origin))
            .collect();
        lines.sort();
        let digest = sha2::Sha256::digest(lines.concat().as_bytes());
        let mut out = String::with_capacity(7 + 64);
        out.push_str("sha256:");
        for b in digest {
            let _ = write!(out, "{b:02x}");
        }
        out
    }

    /// Destination ports every allowed name may use (default `[80, 443]`), sorted.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// Loopback ports that may be reached, sorted.
    pub fn loopback_ports(&self) -> &[u16] {
        &self.loopback_ports
    }

    fn decide_name(&self, name: &str, target: &Target<'_>) -> Decision {
        let mut blocked = Best::default();
        self.block.match_name(name, |index, specificity| {
            if self.entries[index].scheme.admits(target.scheme) {
                blocked.offer(index, specificity, Reach::Public);
            }
        });
        if let Some(index) = blocked.index {
            return Decision::deny(Reason::Blocklisted, Some(&self.entries[index]));
        }
        if !self.has_allow_entries {
            return Decision::deny(Reason::EmptyAllowlist, None);
        }
        let mut candidates = Candidates::default();
        self.allow.match_name(name, |index, specificity| {
            candidates.offer(self, index, specificity, target);
        });
        candidates.decide(self, Reason::NotAllowlisted)
    }

    fn decide_ip(&self, ip: IpAddr, target: &Target<'_>) -> Decision {
        let mut blocked = Best::default();
        self.block.match_ip(ip, |index, specificity| {
            if self.entries[index].scheme.admits(target.scheme) {
                blocked.offer(index, specificity, Reach::Public);
            }
        });
        if let Some(index) = blocked.index {
            return Decision::deny(Reason::Blocklisted, Some(&self.entries[index]));
        }
        if ip.is_loopback() {
            return if self.loopback_ports.binary_search(&target.port).is_ok() {
                Decision {
                    action: Action::Allow,
                    rule: None,
                    reason: Reason::LoopbackPortAllowed,
                }
            } else {
                Decision::deny(Reason::LoopbackPortDenied, None)
            };
        }
        if !self.has_allow_entries {
            return Decision::deny(Reason::EmptyAllowlist, None);
        }
        let mut candidates = Candidates::default();
        self.allow.match_ip(ip, |index, specificity| {
            candidates.offer(self, index, specificity, target);
        });
        candidates.decide(self, Reason::IpLiteral)
    }

    fn port_allowed(&self, entry: &Entry, port: u16) -> bool {
        self.ports.binary_search(&port).is_ok() || entry.ports.contains(&port)
    }
}

impl Decision {
    /// True when the connection may go out.
    pub fn is_allow(&self) -> bool {
        self.action == Action::Allow
    }

    /// True when the connection is allowed by a rule that says the name may resolve to
    /// private, loopback or link-local addresses ([`Entry::allow_private`]).
    pub fn allows_private(&self) -> bool {
        self.reach() == Reach::Any
    }

    /// Which addresses the allowed name may be dialled at ([`Entry::reach`] of the deciding
    /// rule; [`Reach::Public`] for a denial).
    pub fn reach(&self) -> Reach {
        match &self.rule {
            Some(rule) if self.is_allow() => rule.reach(),
            _ => Reach::Public,
        }
    }

    /// Shows the decision with its target, e.g. `deny evil.test: not in the allowlist` or
    /// `allow api.github.com (rule github.com from --allow-domains)`.
    pub fn explain<'a>(&'a self, target: &'a Target<'a>) -> impl fmt::Display + 'a {
        Explained {
            decision: self,
            target,
        }
    }

    fn deny(reason: Reason, rule: Option<&Arc<Entry>>) -> Decision {
        Decision {
            action: Action::Deny,
            rule: rule.cloned(),
            reason,
        }
    }
}

impl fmt::Display for Decision {
    /// `allow github.com (--allow-domains)`, `deny gist.github.com (b.toml:3): blocked by the
    /// blocklist`, or `deny: not in the allowlist` when no entry decided.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.action)?;
        if let Some(rule) = &self.rule {
            write!(f, " {} ({})", rule.text, rule.origin)?;
        }
        if self.action == Action::Deny || self.rule.is_none() {
            write!(f, ": {}", self.reason)?;
        }
        Ok(())
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        })
    }
}

impl Reason {
    /// Every reason, for readers that look a code up.
    pub const ALL: [Reason; 10] = [
        Reason::Allowlisted,
        Reason::LoopbackPortAllowed,
        Reason::Blocklisted,
        Reason::NotAllowlisted,
        Reason::EmptyAllowlist,
        Reason::SchemeNotAllowed,
        Reason::PortNotAllowed,
        Reason::IpLiteral,
        Reason::LoopbackPortDenied,
        Reason::InvalidName,
    ];

    /// A stable, machine-readable name (`not_allowlisted`): the audit record's `code`,
    /// beside the English `reason`. Readers match the code, never the text.
    #[must_use]
    pub fn code(self) -> &'static str {
        match self {
            Reason::Allowlisted => "allowlisted",
            Reason::LoopbackPortAllowed => "loopback_port_allowed",
            Reason::Blocklisted => "blocklisted",
            Reason::NotAllowlisted => "not_allowlisted",
            Reason::EmptyAllowlist => "empty_allowlist",
            Reason::SchemeNotAllowed => "scheme_not_allowed",
            Reason::PortNotAllowed => "port_not_allowed",
            Reason::IpLiteral => "ip_literal",
            Reason::LoopbackPortDenied => "loopback_port_denied",
            Reason::InvalidName => "invalid_name",
        }
    }

    /// The reason whose [`code`](Self::code) is `code`.
    #[must_use]
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Allowlisted => "in the allowlist",
            Reason::LoopbackPortAllowed => "the loopback port is in loopback_ports",
            Reason::Blocklisted => "blocked by the blocklist",
            Reason::NotAllowlisted => "not in the allowlist",
            Reason::EmptyAllowlist => "the allowlist is empty",
            Reason::SchemeNotAllowed => "the matching entry does not allow this scheme",
            Reason::PortNotAllowed => "the port is not allowed",
            Reason::IpLiteral => "ip destinations need a raw-ip allow entry",
            Reason::LoopbackPortDenied => "the loopback port is not in loopback_ports",
            Reason::InvalidName => "not a valid dns name",
        })
    }
}

impl fmt::Display for Target<'_> {
    /// `host:port`, with IPv6 addresses in brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host {
            TargetHost::Name(name) => write!(f, "{name}:{}", self.port),
            TargetHost::Ip(ip) => write!(f, "{}", std::net::SocketAddr::new(ip, self.port)),
        }
    }
}

struct Explained<'a> {
    decision: &'a Decision,
    target: &'a Target<'a>,
}

impl fmt::Display for Explained<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Decision {
            action,
            rule,
            reason,
        } = self.decision;
        match self.target.host {
            TargetHost::Name(name) => write!(f, "{action} {name}")?,
            TargetHost::Ip(ip) => write!(f, "{action} {ip}")?,
        }
        match reason {
            Reason::Allowlisted => {}
            Reason::PortNotAllowed => write!(f, ": port {} is not allowed", self.target.port)?,
            Reason::LoopbackPortAllowed | Reason::LoopbackPortDenied => {
                write!(f, ": port {}: {reason}", self.target.port)?;
            }
            other => write!(f, ": {other}")?,
        }
        if let Some(rule) = rule {
            write!(f, " (rule {} from {})", rule.text, rule.origin)?;
        }
        Ok(())
    }
}

/// The most specific entry offered so far; at equal specificity the first one stays,
/// unless a later one reaches further (a `[[rule]]` with `allow_private`, a derived GHES host:
/// entries saying more about the name).
#[derive(Default)]
struct Best {
    index: Option<usize>,
    specificity: usize,
    reach: Reach,
}

impl Best {
    fn offer(&mut self, index: usize, specificity: usize, reach: Reach) {
        let better = match self.index {
            None => true,
            Some(_) => {
                specificity > self.specificity
                    || (specificity == self.specificity && reach > self.reach)
            }
        };
        if better {
            *self = Best {
                index: Some(index),
                specificity,
                reach,
            };
        }
    }
}

/// Matching allow entries, sorted by what they would decide.
#[derive(Default)]
struct Candidates {
    allowed: Best,
    wrong_port: Best,
    wrong_scheme: Best,
}

impl Candidates {
    fn offer(&mut self, policy: &Policy, index: usize, specificity: usize, target: &Target<'_>) {
        let entry = &policy.entries[index];
        let slot = if !entry.scheme.admits(target.scheme) {
            &mut self.wrong_scheme
        } else if !policy.port_allowed(entry, target.port) {
            &mut self.wrong_port
        } else {
            &mut self.allowed
        };
        slot.offer(index, specificity, entry.reach());
    }

    fn decide(self, policy: &Policy, no_match: Reason) -> Decision {
        let rule = |index: usize| Some(Arc::clone(&policy.entries[index]));
        if let Some(index) = self.allowed.index {
            Decision {
                action: Action::Allow,
                rule: rule(index),
                reason: Reason::Allowlisted,
            }
        } else if let Some(index) = self.wrong_port.index {
            Decision::deny(Reason::PortNotAllowed, Some(&policy.entries[index]))
        } else if let Some(index) = self.wrong_scheme.index {
            Decision::deny(Reason::SchemeNotAllowed, Some(&policy.entries[index]))
        } else {
            Decision::deny(no_match, None)
        }
    }
}

/// Checks that `name` (no trailing dot) is a valid DNS name — labels of 1 to 63 bytes of
/// `[A-Za-z0-9_-]`, at most 253 bytes in all — and writes it lowercased into `buffer`.
fn lowercase_dns_name<'b>(name: &str, buffer: &'b mut [u8; MAX_NAME_LEN]) -> Option<&'b str> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_NAME_LEN {
        return None;
    }
    let mut label_len = 0;
    for (slot, &byte) in buffer.iter_mut().zip(bytes) {
        if byte == b'.' {
            if label_len == 0 {
                return None;
            }
            label_len = 0;
        } else if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            label_len += 1;
            if label_len > 63 {
                return None;
            }
        } else {
            return None;
        }
        *slot = byte.to_ascii_lowercase();
    }
    if label_len == 0 {
        return None;
    }
    std::str::from_utf8(&buffer[..bytes.len()]).ok()
}

/// True for a valid DNS name without a trailing dot (see [`lowercase_dns_name`]).
pub(crate) fn is_dns_name(name: &str) -> bool {
    lowercase_dns_name(name, &mut [0; MAX_NAME_LEN]).is_some()
}

fn sorted_unique(ports: &[u16]) -> Vec<u16> {
    let mut ports = ports.to_vec();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// What makes two entries the same rule: list, scheme, pattern, ports, reach (and, for dead
/// patterns, which match nothing, their text).
fn rule_key(e: &Entry) -> String {
    format!(
        "{:?}\u{0}{:?}\u{0}{:?}\u{0}{:?}\u{0}{:?}\u{0}{}",
        e.list,
        e.scheme,
        e.pattern(),
        e.ports,
        e.reach(),
        if e.is_dead() { e.text.as_str() } else { "" }
    )
}

#[cfg(test)]
mod tests;
