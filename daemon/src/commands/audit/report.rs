//! The report: the aggregate turned into sorted rows, one serialisable value that every
//! format renders (JSON is this value as is).

use serde::Serialize;

use super::aggregate::{Aggregate, DomainStats};
use super::enforce::Enforcement;
use super::group::GroupReport;
use super::read::format_ms;
use super::suggest::Suggestions;

/// Everything `egressd audit` prints.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// What was read.
    pub inputs: Vec<Input>,
    /// Headline counts.
    pub totals: Totals,
    /// Proof of enforcement.
    pub enforcement: Enforcement,
    /// Per domain, most records first.
    pub domains: Vec<DomainRow>,
    /// Per deciding rule, most hits first.
    pub rules: Vec<RuleRow>,
    /// Per credential.
    pub credentials: Vec<CredentialRow>,
    /// Per actor, repository, workflow (empty when records carry no provenance).
    pub provenance: Provenance,
    /// `--group-by`: one row per node, repository or actor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<GroupReport>,
    /// Records per time bucket.
    pub timeline: Timeline,
    /// `--suggest`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suggestions: Option<Suggestions>,
}

/// One input file.
#[derive(Clone, Debug, Serialize)]
pub struct Input {
    /// The path (`-` for stdin).
    pub path: String,
    /// Formats seen (`egressd`, `awf-access.log`, `awf-audit.jsonl`).
    pub formats: Vec<&'static str>,
    /// Lines read.
    pub lines: u64,
    /// Lines that matched no format.
    pub malformed: u64,
}

/// Headline counts (after filters).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    /// Records counted.
    pub records: u64,
    /// Connections and requests allowed.
    pub allowed: u64,
    /// Connections and requests denied.
    pub denied: u64,
    /// Connections and requests let through that ended early (counted in `allowed` too).
    pub ended_early: u64,
    /// DNS queries.
    pub dns_queries: u64,
    /// DNS queries refused.
    pub dns_denied: u64,
    /// Distinct domains.
    pub domains: usize,
    /// Bytes up.
    pub bytes_up: u64,
    /// Bytes down.
    pub bytes_down: u64,
    /// First record.
    pub first: Option<String>,
    /// Last record.
    pub last: Option<String>,
}

/// A per-domain row: the aggregate's counters under the domain's name, one flat JSON object.
#[derive(Clone, Debug, Serialize)]
pub struct DomainRow {
    /// The name (or IP).
    pub domain: String,
    /// Its counters (times serialised as text, see [`DomainStats`]).
    #[serde(flatten)]
    pub stats: DomainStats,
}

/// A per-rule row.
#[derive(Clone, Debug, Serialize)]
pub struct RuleRow {
    /// The entry as the records name it.
    pub rule: String,
    /// Records it allowed.
    pub allowed: u64,
    /// Records it denied.
    pub denied: u64,
}

/// A per-credential row.
#[derive(Clone, Debug, Serialize)]
pub struct CredentialRow {
    /// The credential name.
    pub credential: String,
    /// Requests.
    pub requests: u64,
    /// Requests answered 5xx.
    pub failures: u64,
    /// Token sources.
    pub sources: Vec<String>,
}

/// Provenance views.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Provenance {
    /// By actor.
    pub actors: Vec<(String, u64)>,
    /// By repository.
    pub repositories: Vec<(String, u64)>,
    /// By workflow.
    pub workflows: Vec<(String, u64)>,
}

/// The timeline.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timeline {
    /// Bucket width.
    pub bucket_seconds: i64,
    /// Buckets with records, in time order.
    pub buckets: Vec<Bucket>,
}

/// One timeline bucket.
#[derive(Clone, Debug, Serialize)]
pub struct Bucket {
    /// Bucket start.
    pub start: String,
    /// Allowed records (DNS included).
    pub allowed: u64,
    /// Denied records (DNS included).
    pub denied: u64,
}

/// At most this many timeline buckets.
const MAX_BUCKETS: i64 = 48;

impl Report {
    /// Builds the report.
    pub fn new(
        inputs: Vec<Input>,
        agg: &Aggregate,
        enforcement: Enforcement,
        suggestions: Option<Suggestions>,
    ) -> Self {
        let mut domains: Vec<DomainRow> = agg
            .domains
            .iter()
            .map(|(name, d)| DomainRow {
                domain: name.clone(),
                stats: d.clone(),
            })
            .collect();
        let total = |r: &DomainRow| {
            let d = &r.stats;
            d.allowed + d.denied + d.dns_allowed + d.dns_denied
        };
        domains.sort_by(|a, b| {
            total(b)
                .cmp(&total(a))
                .then_with(|| a.domain.cmp(&b.domain))
        });
        let mut rules: Vec<RuleRow> = agg
            .rules
            .iter()
            .map(|(rule, s)| RuleRow {
                rule: rule.clone(),
                allowed: s.allowed,
                denied: s.denied,
            })
            .collect();
        rules.sort_by(|a, b| {
            (b.allowed + b.denied)
                .cmp(&(a.allowed + a.denied))
                .then_with(|| a.rule.cmp(&b.rule))
        });
        let mut credentials: Vec<CredentialRow> = agg
            .credentials
            .iter()
            .map(|(name, c)| CredentialRow {
                credential: name.clone(),
                requests: c.requests,
                failures: c.failures,
                sources: c.sources.clone(),
            })
            .collect();
        credentials.sort_by(|a, b| a.credential.cmp(&b.credential));
        let sorted = |m: &std::collections::HashMap<String, u64>| {
            let mut v: Vec<(String, u64)> = m.iter().map(|(k, v)| (k.clone(), *v)).collect();
            v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            v
        };
        Report {
            inputs,
            totals: Totals {
                records: agg.records,
                allowed: agg.allowed,
                denied: agg.denied,
                ended_early: agg.failed,
                dns_queries: agg.dns_queries,
                dns_denied: agg.dns_denied,
                domains: agg.domains.len(),
                bytes_up: agg.bytes_up,
                bytes_down: agg.bytes_down,
                first: agg.first.map(format_ms),
                last: agg.last.map(format_ms),
            },
            enforcement,
            domains,
            rules,
            credentials,
            provenance: Provenance {
                actors: sorted(&agg.actors),
                repositories: sorted(&agg.repositories),
                workflows: sorted(&agg.workflows),
            },
            groups: agg.groups.as_ref().map(super::group::Groups::report),
            timeline: timeline(agg),
            suggestions,
        }
    }
}

/// Re-buckets the per-minute counts into at most [`MAX_BUCKETS`] buckets of a round width.
fn timeline(agg: &Aggregate) -> Timeline {
    let (Some((&first, _)), Some((&last, _))) =
        (agg.minutes.first_key_value(), agg.minutes.last_key_value())
    else {
        return Timeline::default();
    };
    let span = last - first + 1;
    let widths = [1, 5, 15, 60, 360, 1440, 10_080];
    let width = widths
        .into_iter()
        .find(|w| span.div_euclid(*w) < MAX_BUCKETS)
        .unwrap_or_else(|| span.div_euclid(MAX_BUCKETS - 1) + 1);
    let mut buckets: Vec<Bucket> = Vec::new();
    let mut current: Option<(i64, u64, u64)> = None;
    for (&minute, &(allowed, denied)) in &agg.minutes {
        let start = minute - minute.rem_euclid(width);
        match &mut current {
            Some((s, a, d)) if *s == start => {
                *a += allowed;
                *d += denied;
            }
            _ => {
                if let Some((s, a, d)) = current.take() {
                    buckets.push(bucket(s, a, d));
                }
                current = Some((start, allowed, denied));
            }
        }
    }
    if let Some((s, a, d)) = current {
        buckets.push(bucket(s, a, d));
    }
    Timeline {
        bucket_seconds: width * 60,
        buckets,
    }
}

fn bucket(minute: i64, allowed: u64, denied: u64) -> Bucket {
    Bucket {
        start: format_ms(minute * 60_000),
        allowed,
        denied,
    }
}
