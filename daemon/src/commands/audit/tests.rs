//! Golden outputs for each format, filters, and the large-log test for `egressd audit`.
//!
//! The expected files live in `daemon/tests/data/audit/`. To regenerate them after an
//! intended change, run `EGRESSD_BLESS=1 cargo test -p egressd audit::tests` and review the
//! diff.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use egressd_config::{ConfigBuilder, Origin, Policy};

use super::group::{GroupBy, Groups};
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

/// A line of a fleet log at second `s`: `arm`, `disarm`, or a record for `name` (`!name`:
/// denied, `?name`: a refused DNS query). `extra` is appended to the object (`k8s`, `host`).
fn fleet_line(sandbox: &str, what: &str, s: u32, extra: &str) -> String {
    let time = format!("2026-11-21T22:00:{s:02}Z");
    let line = match what {
        "arm" => format!(
            r#"{{"event":"arm","time":"{time}","sandbox":"{sandbox}","backend":"ebpf","programs":[{{"name":"egressd_connect4","id":1}}]{extra}}}"#
        ),
        "disarm" => format!(
            r#"{{"event":"disarm","time":"{time}","sandbox":"{sandbox}","exit_code":0{extra}}}"#
        ),
        _ => {
            let (proto, decision, name) = match (what.strip_prefix('!'), what.strip_prefix('?')) {
                (Some(n), _) => ("tls", "deny", n),
                (_, Some(n)) => ("dns", "deny", n),
                _ => ("tls", "allow", what),
            };
            format!(
                r#"{{"time":"{time}","sandbox":"{sandbox}","proto":"{proto}","name":"{name}","port":443,"decision":"{decision}","bytes_up":10,"bytes_down":100{extra}}}"#
            )
        }
    };
    line + "\n"
}

/// Two Kubernetes nodes whose runners both name their sandbox `job`, interleaved in time,
/// and a VM whose arm line names its host: read as one stream, grouped by node.
#[test]
fn three_fleet_logs_merge_by_time_and_group_by_node() {
    let dir = std::env::temp_dir().join(format!("egressd-audit-fleet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let k8s = |node: &str| {
        format!(
            r#","k8s":{{"node":"{node}","namespace":"ci","pod":"runner-{node}","pod_uid":"u","scale_set":"arc"}}"#
        )
    };
    let (a, b) = (k8s("node-a"), k8s("node-b"));
    let vm = r#","host":"vm-1""#;
    let files = [
        (
            "node-a.jsonl",
            [
                fleet_line("job", "arm", 0, &a),
                fleet_line("job", "github.com", 2, &a),
                fleet_line("job", "!evil.test", 4, &a),
                fleet_line("job", "disarm", 6, &a),
            ]
            .concat(),
        ),
        (
            "node-b.jsonl",
            [
                fleet_line("job", "arm", 1, &b),
                fleet_line("job", "!evil.test", 3, &b),
                fleet_line("job", "?evil.test", 5, &b),
                fleet_line("job", "!other.test", 6, &b),
                fleet_line("job", "disarm", 7, &b),
            ]
            .concat(),
        ),
        (
            "vm.jsonl",
            [
                fleet_line("egressd-123", "arm", 1, vm),
                fleet_line("egressd-123", "github.com", 2, ""),
                fleet_line("egressd-123", "disarm", 9, ""),
            ]
            .concat(),
        ),
    ];
    let paths: Vec<PathBuf> = files
        .iter()
        .map(|(name, text)| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect();

    let json = |group_by: Option<GroupBy>| {
        let mut state = State::new(Filter::default());
        state.agg.groups = group_by.map(Groups::new);
        let feeds = paths
            .iter()
            .map(|p| (p.as_path(), super::open(p).unwrap()))
            .collect();
        let readings = state.read_all(feeds).unwrap();
        state.inputs.extend(readings.into_iter().map(|r| r.input));
        let enforcement = state.tracker.finish(None);
        let r = Report::new(state.inputs, &state.agg, enforcement, None);
        let (table, markdown) = (
            render::table(&r, 20, Paint(false)),
            render::markdown(&r, 20),
        );
        assert_eq!(table.contains("\nBy node\n"), group_by.is_some(), "{table}");
        assert_eq!(markdown.contains("\n### By node\n"), group_by.is_some());
        serde_json::to_value(&r).unwrap()
    };
    let without = json(None);
    let j = json(Some(GroupBy::Node));
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(without.get("groups").is_none());

    // Each node's `job` keeps its own window (the merged order interleaves them).
    let e = &j["enforcement"];
    assert_eq!(e["status"], "proven", "{e:#}");
    let windows: Vec<(&str, &str, u64, &str)> = e["windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["node"].as_str().unwrap(),
                w["sandbox"].as_str().unwrap(),
                w["records"].as_u64().unwrap(),
                w["disarmed"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        windows,
        [
            ("node-a", "job", 2, "2026-11-21T22:00:06.000Z"),
            ("node-b", "job", 3, "2026-11-21T22:00:07.000Z"),
            ("vm-1", "egressd-123", 1, "2026-11-21T22:00:09.000Z"),
        ]
    );
    assert_eq!(j["inputs"].as_array().unwrap().len(), 3);
    assert_eq!(j["totals"]["records"], 6);

    let g = &j["groups"];
    assert_eq!(g["by"], "node");
    let rows: Vec<(&str, u64, u64, u64, u64)> = g["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap(),
                r["records"].as_u64().unwrap(),
                r["allowed"].as_u64().unwrap(),
                r["denied"].as_u64().unwrap(),
                r["dns_denied"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("node-b", 3, 0, 2, 1),
            ("node-a", 2, 1, 1, 0),
            ("vm-1", 1, 1, 0, 0),
        ]
    );
    let b = &g["rows"][0];
    assert_eq!(
        b["top_denied"],
        serde_json::json!([["evil.test", 2], ["other.test", 1]])
    );
    assert_eq!(
        (b["first_seen"].as_str(), b["last_seen"].as_str()),
        (
            Some("2026-11-21T22:00:03.000Z"),
            Some("2026-11-21T22:00:06.000Z")
        )
    );
    assert_eq!(
        (b["bytes_up"].as_u64(), b["bytes_down"].as_u64()),
        (Some(30), Some(300))
    );
}
