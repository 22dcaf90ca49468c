//! Streaming aggregation: each record updates per-key counters and is dropped. Memory grows
//! with the number of distinct keys (domains, rules, credentials, minutes), never with the
//! number of records, and every map is capped at [`MAX_KEYS`]: records for keys past the
//! cap are added to an `(other)` row, so even a log of random names stays bounded.

use std::collections::{BTreeMap, HashMap};

use serde::{Serialize, Serializer};

use super::group::Groups;
use super::read::{Rec, format_ms};

/// The most distinct keys one view keeps.
pub const MAX_KEYS: usize = 50_000;
/// The row that takes records past [`MAX_KEYS`].
pub const OTHER: &str = "(other)";
/// The most distinct deny reasons kept per domain.
const MAX_REASONS: usize = 4;
/// The most distinct ports or token sources kept per row.
const MAX_SMALL: usize = 8;

/// Per-domain counters. The report's domain rows are these as they are (see
/// [`super::report::DomainRow`]), so the serde attributes here shape its JSON: times as
/// text, the suggestion-only fields left out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DomainStats {
    /// Connections and requests allowed.
    pub allowed: u64,
    /// Connections and requests denied.
    pub denied: u64,
    /// DNS queries answered.
    pub dns_allowed: u64,
    /// DNS queries refused.
    pub dns_denied: u64,
    /// Bytes client to upstream.
    pub bytes_up: u64,
    /// Bytes upstream to client.
    pub bytes_down: u64,
    /// First record (epoch ms).
    #[serde(rename = "first_seen", serialize_with = "time_text")]
    pub first: Option<i64>,
    /// Last record (epoch ms).
    #[serde(rename = "last_seen", serialize_with = "time_text")]
    pub last: Option<i64>,
    /// Deny reasons with counts (the first few distinct ones).
    pub reasons: Vec<(String, u64)>,
    /// The policy reason codes of its denials (the first few distinct ones).
    #[serde(skip)]
    pub codes: Vec<String>,
    /// Ports of denied connections (the first few distinct ones).
    #[serde(skip)]
    pub denied_ports: Vec<u16>,
}

/// Serialises an epoch-ms time as [`format_ms`] text, as the report shows every time.
fn time_text<S: Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    ms.map(format_ms).serialize(s)
}

/// Per-rule counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleStats {
    /// Records this entry allowed.
    pub allowed: u64,
    /// Records this entry denied (block entries, wrong port or scheme).
    pub denied: u64,
}

/// Per-credential counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CredentialStats {
    /// Requests that carried (or needed) the credential.
    pub requests: u64,
    /// Requests answered 5xx (no token could be had, or the upstream failed).
    pub failures: u64,
    /// Token sources seen.
    pub sources: Vec<String>,
}

/// Everything the views need.
#[derive(Debug, Default)]
pub struct Aggregate {
    /// Records counted (after filters).
    pub records: u64,
    /// Allowed connections/requests.
    pub allowed: u64,
    /// Denied connections/requests.
    pub denied: u64,
    /// DNS queries.
    pub dns_queries: u64,
    /// DNS queries refused.
    pub dns_denied: u64,
    /// Connections and requests let through that ended early (also in `allowed`).
    pub failed: u64,
    /// Bytes up, all records.
    pub bytes_up: u64,
    /// Bytes down, all records.
    pub bytes_down: u64,
    /// First record time.
    pub first: Option<i64>,
    /// Last record time.
    pub last: Option<i64>,
    /// By domain (name, else IP; `-` when neither).
    pub domains: HashMap<String, DomainStats>,
    /// By deciding rule.
    pub rules: HashMap<String, RuleStats>,
    /// By credential.
    pub credentials: HashMap<String, CredentialStats>,
    /// By actor / repository / workflow, when records carry them.
    pub actors: HashMap<String, u64>,
    /// By repository.
    pub repositories: HashMap<String, u64>,
    /// By workflow.
    pub workflows: HashMap<String, u64>,
    /// Per minute (epoch minute): (allowed, denied), DNS included.
    pub minutes: BTreeMap<i64, (u64, u64)>,
    /// `--group-by`: per node, repository or actor (`None` without the option).
    pub groups: Option<Groups>,
}

impl Aggregate {
    /// Adds one record.
    pub fn add(&mut self, r: &Rec) {
        // A coalesced line (`"repeated": N`) stands for N records.
        let n = r.repeated.unwrap_or(1).max(1);
        self.records += n;
        let dns = r.proto == "dns";
        if r.failed && !dns {
            self.failed += n;
        }
        match (dns, r.allow) {
            (true, true) => self.dns_queries += n,
            (true, false) => {
                self.dns_queries += n;
                self.dns_denied += n;
            }
            (false, true) => self.allowed += n,
            (false, false) => self.denied += n,
        }
        self.bytes_up += r.bytes_up;
        self.bytes_down += r.bytes_down;
        if let Some(groups) = &mut self.groups {
            groups.add(r, n);
        }
        if let Some(t) = r.time {
            self.first = Some(self.first.map_or(t, |f| f.min(t)));
            self.last = Some(self.last.map_or(t, |l| l.max(t)));
            let minute = t.div_euclid(60_000);
            if self.minutes.len() < MAX_KEYS || self.minutes.contains_key(&minute) {
                let slot = self.minutes.entry(minute).or_default();
                if r.allow {
                    slot.0 += n;
                } else {
                    slot.1 += n;
                }
            }
        }

        let d = slot(&mut self.domains, r.name.as_deref().unwrap_or("-"));
        match (dns, r.allow) {
            (true, true) => d.dns_allowed += n,
            (true, false) => d.dns_denied += n,
            (false, true) => d.allowed += n,
            (false, false) => d.denied += n,
        }
        d.bytes_up += r.bytes_up;
        d.bytes_down += r.bytes_down;
        if let Some(t) = r.time {
            d.first = Some(d.first.map_or(t, |f| f.min(t)));
            d.last = Some(d.last.map_or(t, |l| l.max(t)));
        }
        if !r.allow {
            let reason = r.reason.as_deref().unwrap_or("denied");
            if let Some(e) = d.reasons.iter_mut().find(|e| e.0 == reason) {
                e.1 += n;
            } else if d.reasons.len() < MAX_REASONS {
                d.reasons.push((reason.to_owned(), n));
            }
            if let Some(code) = &r.code
                && !d.codes.contains(code)
                && d.codes.len() < MAX_REASONS
            {
                d.codes.push(code.clone());
            }
            if let Some(port) = r.port.filter(|_| !dns)
                && !d.denied_ports.contains(&port)
                && d.denied_ports.len() < MAX_SMALL
            {
                d.denied_ports.push(port);
            }
        }

        if let Some(rule) = &r.rule {
            let s = slot(&mut self.rules, rule);
            if r.allow {
                s.allowed += n;
            } else {
                s.denied += n;
            }
        }
        if let Some(credential) = &r.credential {
            let c = slot(&mut self.credentials, credential);
            c.requests += n;
            if r.status.is_some_and(|s| s >= 500) {
                c.failures += n;
            }
            if let Some(source) = &r.token_source
                && !c.sources.contains(source)
                && c.sources.len() < MAX_SMALL
            {
                c.sources.push(source.clone());
            }
        }
        for (map, value) in [
            (&mut self.actors, &r.actor),
            (&mut self.repositories, &r.repository),
            (&mut self.workflows, &r.workflow),
        ] {
            if let Some(v) = value {
                *slot(map, v) += n;
            }
        }
    }

    /// The largest number of keys any view holds (for the bounded-memory test).
    #[cfg(test)]
    pub fn max_keys(&self) -> usize {
        [
            self.domains.len(),
            self.rules.len(),
            self.credentials.len(),
            self.actors.len(),
            self.repositories.len(),
            self.workflows.len(),
            self.minutes.len(),
            self.groups.as_ref().map_or(0, |g| g.rows.len()),
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
    }
}

/// The counters for `key`, or for [`OTHER`] once the map is full.
pub fn slot<'m, V: Default>(map: &'m mut HashMap<String, V>, key: &str) -> &'m mut V {
    let key = if map.len() < MAX_KEYS || map.contains_key(key) {
        key
    } else {
        OTHER
    };
    // `get_mut` first: no allocation for keys already present (the common case).
    if map.contains_key(key) {
        return map.get_mut(key).expect("the key was just found");
    }
    map.entry(key.to_owned()).or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, allow: bool, proto: &str) -> Rec {
        Rec {
            time: Some(60_000),
            proto: proto.to_owned(),
            name: Some(name.to_owned()),
            port: Some(443),
            allow,
            reason: (!allow).then(|| "not in the allowlist".to_owned()),
            bytes_up: 10,
            bytes_down: 20,
            ..Rec::default()
        }
    }

    #[test]
    fn counts_per_domain_with_dns_apart() {
        let mut a = Aggregate::default();
        a.add(&rec("a.test", true, "tls"));
        a.add(&rec("a.test", true, "tls"));
        a.add(&rec("b.test", false, "tls"));
        a.add(&rec("b.test", false, "dns"));
        assert_eq!(
            (a.allowed, a.denied, a.dns_queries, a.dns_denied),
            (2, 1, 1, 1)
        );
        let b = &a.domains["b.test"];
        assert_eq!((b.denied, b.dns_denied), (1, 1));
        assert_eq!(b.reasons, vec![("not in the allowlist".to_owned(), 2)]);
        assert_eq!(b.denied_ports, vec![443]);
        assert_eq!(a.domains["a.test"].bytes_down, 40);
        assert_eq!(a.minutes[&1], (2, 2));
    }

    #[test]
    fn a_coalesced_line_counts_for_every_denial_it_stands_for() {
        let mut a = Aggregate::default();
        a.add(&rec("evil.test", false, "tls"));
        a.add(&Rec {
            repeated: Some(40),
            ..rec("evil.test", false, "tls")
        });
        assert_eq!(a.denied, 41);
        assert_eq!(a.domains["evil.test"].denied, 41);
        assert_eq!(
            a.domains["evil.test"].reasons,
            vec![("not in the allowlist".to_owned(), 41)]
        );
    }

    #[test]
    fn maps_are_capped_with_an_other_row() {
        let mut a = Aggregate::default();
        for i in 0..MAX_KEYS + 10 {
            a.add(&rec(&format!("n{i}.test"), false, "tls"));
        }
        assert_eq!(a.domains.len(), MAX_KEYS + 1);
        assert_eq!(a.domains[OTHER].denied, 10);
    }
}
