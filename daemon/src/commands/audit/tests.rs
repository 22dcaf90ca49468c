//! Golden outputs for each format, filters, and the large-log test for `egressd audit`.
//!
//! The expected files live in `daemon/tests/data/audit/`. To regenerate them after an
//! intended change, run `EGRESSD_BLESS=1 cargo test -p egressd audit::tests` and review the
//! diff.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use egressd_config::{ConfigBuilder, Origin, Policy};

use super::render::{self, Paint};
use super::report::Report;
use super::{Filter, State, suggest};
use crate::cli::DecisionFilter;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/audit")
        .join(name)
}

/// The policy the fixture run used (its hash is in the fixture's arm record).
fn fixture_policy() -> Policy {
    let mut b = ConfigBuilder::new();
    b.allow_list(
        "github.com,my-resource.openai.azure.com,unused.example,dead.example:8080",
        Origin::Flag("--allow-domains"),
    )
    .unwrap();
    b.block_list("gist.github.com", Origin::Flag("--block-domains"))
        .unwrap();
    std::sync::Arc::try_unwrap(b.build().unwrap().policy).unwrap()
}

/// Reads `files` (fixture names) with `filter`; the fixture's `POLICY_HASH` placeholder is
/// replaced by the real hash of [`fixture_policy`].
fn report(files: &[&str], filter: Filter, policy: Option<&Policy>, suggest: bool) -> Report {
    let mut state = State::new(filter);
    let hash = fixture_policy().fingerprint();
    for f in files {
        let text = std::fs::read_to_string(data(f))
            .unwrap()
            .replace("POLICY_HASH", &hash);
        let input = state.read(Path::new(f), text.as_bytes()).unwrap();
        state.inputs.push(input);
    }
    let expected = policy.map(egressd_config::Policy::fingerprint);
    let enforcement = state.tracker.finish(expected.as_deref());
    let suggestions = suggest.then(|| suggest::suggest(&state.agg, policy));
    Report::new(state.inputs, &state.agg, enforcement, suggestions)
}

/// Compares `got` with the expected file, or rewrites it when `EGRESSD_BLESS=1`.
#[track_caller]
fn golden(name: &str, got: &str) {
    let path = data(name);
    if std::env::var_os("EGRESSD_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with EGRESSD_BLESS=1 to create it",
            path.display()
        )
    });
    assert!(
        want == got,
        "{} differs (EGRESSD_BLESS=1 regenerates it)\n--- got ---\n{got}",
        path.display()
    );
}

#[test]
fn golden_egressd_run_in_every_format() {
    let policy = fixture_policy();
    let r = report(&["run.jsonl"], Filter::default(), Some(&policy), true);
    assert_eq!(r.enforcement.status, "proven", "{:?}", r.enforcement);
    golden("run.table.txt", &render::table(&r, 20, Paint(false)));
    golden("run.md", &render::markdown(&r, 20));
    golden("run.step-summary.md", &render::step_summary(&r, 20));
    golden(
        "run.json",
        &(serde_json::to_string_pretty(&r).unwrap() + "\n"),
    );
}

#[test]
fn golden_awf_access_log() {
    let r = report(&["awf-access.log"], Filter::default(), None, true);
    assert_eq!(r.enforcement.status, "not-recorded");
    assert_eq!(r.inputs[0].formats, ["awf-access.log"]);
    assert_eq!((r.totals.allowed, r.totals.denied), (2, 3));
    golden("awf.table.txt", &render::table(&r, 20, Paint(false)));
    golden("awf.md", &render::markdown(&r, 20));
}

#[test]
fn filters_narrow_the_views_but_not_the_enforcement_check() {
    let filter = Filter {
        decision: Some(DecisionFilter::Deny),
        domain: Some("example.net".into()),
        since: super::read::parse_rfc3339("2026-11-21T21:58:26Z"),
        ..Filter::default()
    };
    let r = report(&["run.jsonl"], filter, None, false);
    let names: Vec<&str> = r.domains.iter().map(|d| d.domain.as_str()).collect();
    assert_eq!(names, ["b.cdn.example.net", "c.cdn.example.net"]);
    assert_eq!(r.enforcement.status, "proven");
    assert_eq!(r.enforcement.windows[0].records, 14);

    let other = Filter {
        sandbox: Some("egressd-1".into()),
        ..Filter::default()
    };
    let r = report(&["run.jsonl"], other, None, false);
    assert_eq!(
        (r.totals.records, r.enforcement.status),
        (0, "not-recorded")
    );
}

#[test]
fn a_different_policy_is_flagged() {
    let mut b = ConfigBuilder::new();
    b.allow_list("github.com", Origin::Flag("--allow-domains"))
        .unwrap();
    let other = b.build().unwrap().policy;
    let r = report(&["run.jsonl"], Filter::default(), Some(&other), false);
    assert!(!r.enforcement.is_proven());
    assert!(
        r.enforcement.warnings[0].contains("different policy"),
        "{:?}",
        r.enforcement.warnings
    );
}

#[test]
fn relative_times() {
    assert_eq!(
        super::parse_time("30m", 10_000_000).unwrap(),
        10_000_000 - 1_800_000
    );
    assert_eq!(
        super::parse_time("1d", 100_000_000).unwrap(),
        100_000_000 - 86_400_000
    );
    assert_eq!(
        super::parse_time("2026-11-21T21:58:24.887Z", 0).unwrap(),
        1_795_298_304_887
    );
    assert!(super::parse_time("yesterday", 0).is_err());
}

/// A synthetic egressd log, generated as it is read (never held in memory): an arm line,
/// `n` records over 5,000 names (one in ten denied), a disarm line.
struct Synthetic {
    i: u64,
    n: u64,
    line: Vec<u8>,
    pos: usize,
}

impl Read for Synthetic {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.line.len() {
            self.line.clear();
            self.pos = 0;
            let i = self.i;
            self.i += 1;
            if i == 0 {
                self.line.extend_from_slice(br#"{"event":"arm","time":"2026-11-21T00:00:00Z","sandbox":"egressd-1","backend":"ebpf","programs":[{"name":"egressd_connect4","id":1}],"policy_hash":"sha256:00"}"#);
            } else if i <= self.n {
                let (decision, reason) = if i.is_multiple_of(10) {
                    ("deny", "not in the allowlist")
                } else {
                    ("allow", "in the allowlist")
                };
                let secs = i / 100;
                self.line.extend_from_slice(
                    format!(
                        r#"{{"time":"2026-11-21T{:02}:{:02}:{:02}.{:03}Z","sandbox":"egressd-1","client":"127.0.0.1:{}","orig_dst":"192.0.2.7:443","proto":"tls","name":"host{}.example{}.test","port":443,"decision":"{decision}","rule":null,"reason":"{reason}","upstream":null,"bytes_up":{},"bytes_down":{},"duration_ms":3}}"#,
                        (secs / 3600) % 24,
                        (secs / 60) % 60,
                        secs % 60,
                        i % 1000,
                        1024 + i % 60_000,
                        i % 5_000,
                        i % 50,
                        i % 1500,
                        i % 65_000
                    )
                    .as_bytes(),
                );
            } else if i == self.n + 1 {
                self.line.extend_from_slice(br#"{"event":"disarm","time":"2026-11-21T23:59:59Z","sandbox":"egressd-1","exit_code":0}"#);
            } else {
                return Ok(0);
            }
            self.line.push(b'\n');
        }
        let n = out.len().min(self.line.len() - self.pos);
        out[..n].copy_from_slice(&self.line[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// 1,000,000 records in one streaming pass. The bound is generous for CI: a few seconds in a
/// release build; an unoptimised (debug) build is ~10x slower, so its bound is wider. Memory
/// is bounded by construction (per-key counters, capped maps); the test checks the key counts.
#[test]
fn a_million_records_are_summarised_in_seconds_with_bounded_state() {
    const N: u64 = 1_000_000;
    let started = Instant::now();
    let mut state = State::new(Filter::default());
    let reader = BufReader::with_capacity(
        1 << 16,
        Synthetic {
            i: 0,
            n: N,
            line: Vec::new(),
            pos: 0,
        },
    );
    let input = state.read(Path::new("synthetic"), reader).unwrap();
    let elapsed = started.elapsed();
    assert_eq!(input.lines, N + 2);
    assert_eq!(state.agg.records, N);
    assert_eq!(state.agg.denied, N / 10);
    assert_eq!(state.agg.domains.len(), 5_000);
    assert!(state.agg.max_keys() <= super::aggregate::MAX_KEYS + 1);
    let enforcement = state.tracker.finish(None);
    assert_eq!(enforcement.status, "proven", "{enforcement:?}");
    let bound = if cfg!(debug_assertions) { 120 } else { 15 };
    eprintln!("1,000,000 records in {elapsed:?} (bound {bound} s)");
    assert!(
        elapsed.as_secs() < bound,
        "1,000,000 records took {elapsed:?} (bound {bound} s)"
    );
}
