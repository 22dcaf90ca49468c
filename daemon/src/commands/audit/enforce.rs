//! Proof of enforcement: the `arm`/`disarm` lifecycle lines egressd writes around each run,
//! checked against the traffic records between them.
//!
//! Records are checked in reading order (file order; by time across several inputs, see
//! [`super::merge`]), per sandbox of each node: a traffic record of sandbox S on node N is
//! inside an armed window when an `arm` of S on N came before it and no `disarm` of S on N
//! since. The node is the one [`super::read::Node`] gives each line (its `k8s.node`, else
//! its input's arm host, else its input's file), so two runners that both name their
//! sandbox `egressd-123` or `job` keep apart windows. The verdict
//! is "enforced from T1 to T2, no gaps" only when there is at least one `arm` and every
//! egressd record is inside a window; a log with records but no `arm` is reported as not
//! proven. AWF logs carry no such lines: their enforcement is reported as not recorded.

use std::collections::HashMap;

use serde::Serialize;

use super::read::{Lifecycle, Rec, Source, format_ms};

/// The most windows kept in detail (the rest are counted).
const MAX_WINDOWS: usize = 1_000;
/// The most out-of-window records kept as examples.
const MAX_EXAMPLES: usize = 5;

/// Streaming state: windows seen so far and records outside them.
#[derive(Debug, Default)]
pub struct Tracker {
    /// Open windows: node, then sandbox, to the index in `windows` (`usize::MAX` when past
    /// [`MAX_WINDOWS`]).
    open: HashMap<String, HashMap<String, usize>>,
    /// The first node seen, and whether any other was seen (windows and examples name
    /// their node only then).
    first_node: Option<String>,
    many_nodes: bool,
    windows: Vec<Window>,
    windows_dropped: u64,
    egressd_records: u64,
    other_records: u64,
    outside: u64,
    examples: Vec<Example>,
}

/// A record outside every armed window, kept as an example.
#[derive(Debug)]
struct Example {
    time: Option<i64>,
    node: String,
    sandbox: String,
    name: String,
}

/// One armed window.
#[derive(Clone, Debug, Serialize)]
pub struct Window {
    /// The sandbox.
    pub sandbox: String,
    /// Its node, when the windows span more than one node (see [`super::read::Node`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// When it was armed (RFC 3339).
    pub armed: Option<String>,
    /// When it was disarmed; `None` while still armed (or when egressd died).
    pub disarmed: Option<String>,
    /// The command's exit code at disarm.
    pub exit_code: Option<u8>,
    /// The backend (`ebpf`).
    pub backend: Option<String>,
    /// How many kernel programs were attached.
    pub programs: usize,
    /// The cgroup.
    pub cgroup: Option<String>,
    /// The policy hash.
    pub policy_hash: Option<String>,
    /// The interception CA fingerprint.
    pub ca_fingerprint: Option<String>,
    /// Traffic records inside this window.
    pub records: u64,
    #[serde(skip)]
    armed_ms: Option<i64>,
    #[serde(skip)]
    disarmed_ms: Option<i64>,
    #[serde(skip)]
    origin: String,
}

impl Window {
    /// The sandbox, and its node when there are several (`job on node-a`).
    pub fn label(&self) -> String {
        label(&self.sandbox, self.node.as_deref())
    }
}

/// `sandbox`, or `sandbox on node`.
fn label(sandbox: &str, node: Option<&str>) -> String {
    match node {
        Some(n) => format!("{sandbox} on {n}"),
        None => sandbox.to_owned(),
    }
}

/// The verdict on enforcement.
#[derive(Clone, Debug, Serialize)]
pub struct Enforcement {
    /// `proven`, `gaps`, `not-proven`, `armed` (no disarm yet) or `not-recorded` (AWF logs
    /// or an empty log).
    pub status: &'static str,
    /// One sentence for people.
    pub summary: String,
    /// The windows.
    pub windows: Vec<Window>,
    /// Traffic records outside every armed window.
    pub records_outside: u64,
    /// A few of them (`time sandbox name`).
    pub examples: Vec<String>,
    /// Problems besides gaps (policy hash differs, no programs listed...).
    pub warnings: Vec<String>,
}

impl Tracker {
    /// Notes the node of a line.
    fn see(&mut self, node: &str) {
        match &self.first_node {
            None => self.first_node = Some(node.to_owned()),
            Some(first) if first != node => self.many_nodes = true,
            Some(_) => {}
        }
    }

    /// Takes a lifecycle line (its node resolved; none counts as one unnamed node).
    pub fn lifecycle(&mut self, l: &Lifecycle) {
        let node = l.node.as_deref().unwrap_or("");
        self.see(node);
        if l.arm {
            let index = if self.windows.len() >= MAX_WINDOWS {
                self.windows_dropped += 1;
                usize::MAX
            } else {
                self.windows.len()
            };
            self.open
                .entry(node.to_owned())
                .or_default()
                .insert(l.sandbox.clone(), index);
            if index == usize::MAX {
                return;
            }
            self.windows.push(Window {
                sandbox: l.sandbox.clone(),
                node: None,
                armed: l.time.map(format_ms),
                disarmed: None,
                exit_code: None,
                backend: l.backend.clone(),
                programs: l.programs,
                cgroup: l.cgroup.clone(),
                policy_hash: l.policy_hash.clone(),
                ca_fingerprint: l.ca_fingerprint.clone(),
                records: 0,
                armed_ms: l.time,
                disarmed_ms: None,
                origin: node.to_owned(),
            });
        } else if let Some(index) = self
            .open
            .get_mut(node)
            .and_then(|sandboxes| sandboxes.remove(&l.sandbox))
            && let Some(w) = self.windows.get_mut(index)
        {
            w.disarmed = l.time.map(format_ms);
            w.disarmed_ms = l.time;
            w.exit_code = l.exit_code;
        }
    }

    /// Takes a traffic record (before any filter other than `--sandbox`).
    pub fn record(&mut self, r: &Rec) {
        if r.source != Some(Source::Egressd) {
            self.other_records += 1;
            return;
        }
        self.egressd_records += 1;
        let node = r.node.as_deref().unwrap_or("");
        self.see(node);
        let sandbox = r.sandbox.as_deref().unwrap_or("");
        match self.open.get(node).and_then(|s| s.get(sandbox)) {
            Some(&index) => {
                if let Some(w) = self.windows.get_mut(index) {
                    w.records += 1;
                }
            }
            None => {
                self.outside += 1;
                if self.examples.len() < MAX_EXAMPLES {
                    self.examples.push(Example {
                        time: r.time,
                        node: node.to_owned(),
                        sandbox: if sandbox.is_empty() { "-" } else { sandbox }.to_owned(),
                        name: r.name.clone().unwrap_or_else(|| "-".to_owned()),
                    });
                }
            }
        }
    }

    /// The verdict; `expected_hash` is the hash of the policy given on the command line.
    pub fn finish(mut self, expected_hash: Option<&str>) -> Enforcement {
        if self.many_nodes {
            for w in &mut self.windows {
                w.node = Some(w.origin.clone());
            }
        }
        let many = self.many_nodes;
        let examples = self
            .examples
            .iter()
            .map(|e| {
                format!(
                    "{} {} {}",
                    e.time.map_or_else(|| "-".to_owned(), format_ms),
                    label(&e.sandbox, many.then_some(e.node.as_str())),
                    e.name
                )
            })
            .collect();
        let mut warnings = Vec::new();
        if self.windows_dropped > 0 {
            warnings.push(format!(
                "{} more armed windows not listed",
                self.windows_dropped
            ));
        }
        for w in &self.windows {
            if w.programs == 0 {
                warnings.push(format!(
                    "{}: the arm record lists no kernel programs",
                    w.label()
                ));
            }
            if let (Some(expected), Some(got)) = (expected_hash, &w.policy_hash)
                && expected != got
            {
                warnings.push(format!(
                    "{}: enforced a different policy than the one given ({got}, given \
                         {expected})",
                    w.label()
                ));
            }
        }
        let first = self.windows.iter().filter_map(|w| w.armed_ms).min();
        let last = self.windows.iter().filter_map(|w| w.disarmed_ms).max();
        let open: Vec<String> = self
            .windows
            .iter()
            .filter(|w| w.disarmed.is_none())
            .map(Window::label)
            .collect();
        let t = |ms: Option<i64>| ms.map_or_else(|| "?".to_owned(), format_ms);
        let (status, summary) = if self.windows.is_empty() && self.egressd_records > 0 {
            (
                "not-proven",
                format!(
                    "ENFORCEMENT NOT PROVEN: {} egressd records but no arm record (an older \
                     egressd, a truncated log, or enforcement never armed)",
                    self.egressd_records
                ),
            )
        } else if self.windows.is_empty() {
            (
                "not-recorded",
                if self.other_records > 0 {
                    "enforcement not recorded: AWF logs carry no arm/disarm records".to_owned()
                } else {
                    "no records".to_owned()
                },
            )
        } else if self.outside > 0 {
            (
                "gaps",
                format!(
                    "ENFORCEMENT GAPS: {} records outside any armed window (armed {} to {})",
                    self.outside,
                    t(first),
                    t(last)
                ),
            )
        } else if !open.is_empty() {
            (
                "armed",
                format!(
                    "enforced from {}, still armed: no disarm record for {} (run in progress, \
                     or egressd was killed)",
                    t(first),
                    open.join(", ")
                ),
            )
        } else {
            let runs = if self.windows.len() > 1 {
                format!(" ({} runs)", self.windows.len())
            } else {
                String::new()
            };
            (
                "proven",
                format!("enforced from {} to {}{runs}, no gaps", t(first), t(last)),
            )
        };
        Enforcement {
            status,
            summary,
            windows: self.windows,
            records_outside: self.outside,
            examples,
            warnings,
        }
    }
}

impl Enforcement {
    /// True when enforcement is proven for every record (`--require-proof`).
    pub fn is_proven(&self) -> bool {
        self.status == "proven" && self.warnings.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::audit::read::{Line, parse};

    fn run(lines: &[&str]) -> Enforcement {
        let mut t = Tracker::default();
        for l in lines {
            match parse(l) {
                Line::Record(r) => t.record(&r),
                Line::Lifecycle(l) => t.lifecycle(&l),
                _ => {}
            }
        }
        t.finish(None)
    }

    const ARM: &str = r#"{"event":"arm","time":"2026-01-01T00:00:00Z","sandbox":"s1","backend":"ebpf","programs":[{"name":"p"}]}"#;
    const REC: &str = r#"{"time":"2026-01-01T00:00:01Z","sandbox":"s1","proto":"tls","name":"a.test","port":443,"decision":"allow"}"#;
    const DISARM: &str =
        r#"{"event":"disarm","time":"2026-01-01T00:00:02Z","sandbox":"s1","exit_code":0}"#;

    #[test]
    fn a_full_window_is_proven() {
        let e = run(&[ARM, REC, DISARM]);
        assert_eq!(e.status, "proven", "{e:?}");
        assert_eq!(
            e.summary,
            "enforced from 2026-01-01T00:00:00.000Z to 2026-01-01T00:00:02.000Z, no gaps"
        );
        assert_eq!(e.windows[0].records, 1);
    }

    #[test]
    fn records_without_arm_are_not_proven_and_records_after_disarm_are_gaps() {
        assert_eq!(run(&[REC]).status, "not-proven");
        let e = run(&[ARM, REC, DISARM, REC]);
        assert_eq!((e.status, e.records_outside), ("gaps", 1));
        assert_eq!(run(&[ARM, REC]).status, "armed");
        assert_eq!(run(&[]).status, "not-recorded");
    }

    /// One line of sandbox `job` on `node` (`arm`, `disarm` or a record) at second `s`.
    fn on(node: &str, what: &str, s: u32) -> String {
        let k8s = format!(r#""k8s":{{"node":"{node}","namespace":"ci","pod":"runner-1"}}"#);
        let time = format!("2026-01-01T00:00:{s:02}Z");
        match what {
            "arm" => format!(
                r#"{{"event":"arm","time":"{time}","sandbox":"job","programs":[{{"name":"p"}}],{k8s}}}"#
            ),
            "disarm" => format!(
                r#"{{"event":"disarm","time":"{time}","sandbox":"job","exit_code":0,{k8s}}}"#
            ),
            _ => format!(
                r#"{{"time":"{time}","sandbox":"job","proto":"tls","name":"{what}","port":443,"decision":"allow",{k8s}}}"#
            ),
        }
    }

    #[test]
    fn the_same_sandbox_name_on_two_nodes_keeps_two_windows() {
        let lines = [
            on("node-a", "arm", 0),
            on("node-b", "arm", 1),
            on("node-a", "disarm", 2),
            // node-a's disarm must not close node-b's window...
            on("node-b", "b.test", 3),
            on("node-b", "disarm", 4),
            // ...and node-a's record after its own disarm is a gap.
            on("node-a", "late.test", 5),
        ];
        let e = run(&lines.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!((e.status, e.records_outside), ("gaps", 1), "{e:?}");
        let w: Vec<(Option<&str>, u64, Option<&str>)> = e
            .windows
            .iter()
            .map(|w| (w.node.as_deref(), w.records, w.disarmed.as_deref()))
            .collect();
        assert_eq!(
            w,
            [
                (Some("node-a"), 0, Some("2026-01-01T00:00:02.000Z")),
                (Some("node-b"), 1, Some("2026-01-01T00:00:04.000Z")),
            ]
        );
        assert_eq!(
            e.examples,
            ["2026-01-01T00:00:05.000Z job on node-a late.test"]
        );

        // Without the last record, both nodes are proven.
        let e = run(&lines[..5].iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(e.status, "proven", "{e:?}");
        assert_eq!(e.windows[0].label(), "job on node-a");
    }
}
