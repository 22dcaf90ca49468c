//! The allowlist micro-benchmark: [`egressd_config::Policy::decide`] on allowlists of 10 to
//! 100,000 entries, in process (no proxy, no I/O), for the cost curve and the "a 10,000-entry
//! allowlist decides in under 1 µs" target.
//!
//! Two shapes per size: only plain domains (looked up in a hash map, label by label), and
//! the same with 1% `*.` wildcards (tried one by one). The names decided are half hits
//! (a subdomain of a listed domain, or a name under a wildcard) and half misses, in a fixed
//! pseudo-random order. Building the policy is timed too.

use std::{hint::black_box, time::Duration, time::Instant};

use egressd_config::{Entry, List, Origin, Policy, Scheme, Target, TargetHost};
use serde::Serialize;

/// One size and shape.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Allow entries.
    pub entries: usize,
    /// Share of wildcard entries (0 or 0.01).
    pub wildcard_share: f64,
    /// Time to build the policy, ms.
    pub build_ms: f64,
    /// Mean time of one decision, ns.
    pub decide_ns: f64,
    /// Decisions timed.
    pub decisions: u64,
}

/// Largest allowlist measured with wildcards: `Policy::new` removes duplicates by comparing
/// every entry with every earlier one, so building 100,000 entries takes half a minute, and
/// each wildcard adds its own match to every decision; the linear trend is plain by 10,000.
const MAX_WILDCARD_SIZE: usize = 10_000;

/// Measures each size in `sizes` for both shapes, deciding for about `time` each.
pub fn curve(sizes: &[usize], time: Duration) -> Vec<Point> {
    let mut points = Vec::new();
    for wildcards in [false, true] {
        for &n in sizes {
            if wildcards && n > MAX_WILDCARD_SIZE {
                continue;
            }
            points.push(measure(n, wildcards, time));
        }
    }
    points
}

fn measure(n: usize, wildcards: bool, time: Duration) -> Point {
    let entries: Vec<Entry> = (0..n).map(|i| entry(i, wildcards)).collect();
    let start = Instant::now();
    let policy = Policy::new(entries, &[443], &[]);
    let build = start.elapsed();

    let mut rng = Lcg(0x2545_f491_4f6c_dd1d);
    let names: Vec<String> = (0..1024)
        .map(|k| {
            let i = rng.below(n);
            if k % 2 == 1 {
                format!("api.x{i}.{}.unlisted.example", i % 7)
            } else if wildcards && i.is_multiple_of(100) {
                format!("api.w{i}.bench-{}.example", i % 7)
            } else {
                format!("api.d{i}.bench-{}.example", i % 7)
            }
        })
        .collect();
    let targets: Vec<Target<'_>> = names
        .iter()
        .map(|name| Target {
            host: TargetHost::Name(name),
            port: 443,
            scheme: Scheme::Https,
        })
        .collect();
    let mut decisions = 0u64;
    let start = Instant::now();
    while start.elapsed() < time || decisions == 0 {
        for target in &targets {
            black_box(policy.decide(black_box(target)));
        }
        decisions += targets.len() as u64;
    }
    let took = start.elapsed();
    #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    Point {
        entries: n,
        wildcard_share: if wildcards { 0.01 } else { 0.0 },
        build_ms: build.as_secs_f64() * 1e3,
        decide_ns: took.as_secs_f64() * 1e9 / decisions as f64,
        decisions,
    }
}

/// Entry `i`: `d<i>.bench-<i mod 7>.example`, or every 100th `*.w<i>.bench-<i mod 7>.example`.
fn entry(i: usize, wildcards: bool) -> Entry {
    let text = if wildcards && i.is_multiple_of(100) {
        format!("*.w{i}.bench-{}.example", i % 7)
    } else {
        format!("d{i}.bench-{}.example", i % 7)
    };
    Entry::parse(&text, List::Allow, Origin::Builtin("bench"))
        .expect("generated entries are valid AWF domain entries")
}

/// A small deterministic generator, so every run decides the same names.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        usize::try_from((self.0 >> 33) % (n.max(1) as u64)).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use egressd_config::Action;

    use super::*;

    #[test]
    fn generated_names_hit_and_miss_as_intended() {
        let policy = Policy::new((0..300).map(|i| entry(i, true)), &[443], &[]);
        let decide = |name: &str| {
            policy
                .decide(&Target {
                    host: TargetHost::Name(name),
                    port: 443,
                    scheme: Scheme::Https,
                })
                .action
        };
        assert_eq!(decide("api.d7.bench-0.example"), Action::Allow);
        assert_eq!(decide("api.w200.bench-4.example"), Action::Allow);
        assert_eq!(decide("w200.bench-4.example"), Action::Deny);
        assert_eq!(decide("api.x7.0.unlisted.example"), Action::Deny);
    }

    #[test]
    fn a_point_is_measured() {
        let p = measure(100, true, Duration::from_millis(1));
        assert_eq!(p.entries, 100);
        assert!(p.decisions >= 1024);
        assert!(p.decide_ns > 0.0);
    }
}
