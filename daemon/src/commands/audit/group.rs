//! `--group-by node|repo|actor`: one row per node, repository or actor, with its counts and
//! its most denied names. Bounded like the other views: at most [`MAX_KEYS`] groups (the
//! rest in an `(other)` row), and the denied names of all groups share one budget of
//! [`MAX_KEYS`] entries (past it, a group's new names count under `(other)`). Records
//! without the key go to a `-` row.

use std::collections::HashMap;

use clap::ValueEnum;
use serde::Serialize;

use super::aggregate::{MAX_KEYS, OTHER, slot};
use super::read::{Rec, format_ms};

/// The most denied names a group row lists.
pub const TOP_DENIED: usize = 3;

/// What `--group-by` groups records by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    /// The node: `k8s.node`, else the log's arm host, else the log file.
    Node,
    /// The repository (from the records' provenance).
    Repo,
    /// The actor (from the records' provenance).
    Actor,
}

impl GroupBy {
    /// The key of `r`, when it has one.
    pub fn key(self, r: &Rec) -> Option<&str> {
        match self {
            GroupBy::Node => r.node.as_deref(),
            GroupBy::Repo => r.repository.as_deref(),
            GroupBy::Actor => r.actor.as_deref(),
        }
    }

    /// The key's name in headings (`node`, `repository`, `actor`).
    pub fn noun(self) -> &'static str {
        match self {
            GroupBy::Node => "node",
            GroupBy::Repo => "repository",
            GroupBy::Actor => "actor",
        }
    }
}

/// One group's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Records (DNS included).
    pub records: u64,
    /// Connections and requests allowed.
    pub allowed: u64,
    /// Connections and requests denied.
    pub denied: u64,
    /// DNS queries refused.
    pub dns_denied: u64,
    /// Bytes client to upstream.
    pub bytes_up: u64,
    /// Bytes upstream to client.
    pub bytes_down: u64,
    /// First record (epoch ms).
    pub first: Option<i64>,
    /// Last record (epoch ms).
    pub last: Option<i64>,
    /// Denials (connections, requests and DNS) per name.
    pub denied_names: HashMap<String, u64>,
}

/// The groups while reading.
#[derive(Debug)]
pub struct Groups {
    /// What they are grouped by.
    pub by: GroupBy,
    /// Per key (`-` for records without one).
    pub rows: HashMap<String, GroupStats>,
    /// Denied-name entries held over all groups (the shared budget).
    names: usize,
}

impl Groups {
    /// No groups yet.
    pub fn new(by: GroupBy) -> Self {
        Self {
            by,
            rows: HashMap::new(),
            names: 0,
        }
    }

    /// Adds a record that stands for `n` records.
    pub fn add(&mut self, r: &Rec, n: u64) {
        let g = slot(&mut self.rows, self.by.key(r).unwrap_or("-"));
        g.records += n;
        match (r.proto == "dns", r.allow) {
            (true, true) => {}
            (true, false) => g.dns_denied += n,
            (false, true) => g.allowed += n,
            (false, false) => g.denied += n,
        }
        g.bytes_up += r.bytes_up;
        g.bytes_down += r.bytes_down;
        if let Some(t) = r.time {
            g.first = Some(g.first.map_or(t, |f| f.min(t)));
            g.last = Some(g.last.map_or(t, |l| l.max(t)));
        }
        if r.allow {
            return;
        }
        let name = r.name.as_deref().unwrap_or("-");
        let name = if self.names < MAX_KEYS || g.denied_names.contains_key(name) {
            name
        } else {
            OTHER
        };
        if let Some(count) = g.denied_names.get_mut(name) {
            *count += n;
        } else {
            self.names += 1;
            g.denied_names.insert(name.to_owned(), n);
        }
    }

    /// The rows, most records first, for the report.
    pub fn report(&self) -> GroupReport {
        let mut rows: Vec<GroupRow> = self.rows.iter().map(|(k, g)| row(k, g)).collect();
        rows.sort_by(|a, b| b.records.cmp(&a.records).then_with(|| a.key.cmp(&b.key)));
        GroupReport { by: self.by, rows }
    }
}

/// The `--group-by` view of the report (JSON `"groups"`).
#[derive(Clone, Debug, Serialize)]
pub struct GroupReport {
    /// What the rows are grouped by (`node`, `repo`, `actor`).
    pub by: GroupBy,
    /// One row per group, most records first.
    pub rows: Vec<GroupRow>,
}

/// One group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GroupRow {
    /// The node, repository or actor (`-`: records without one; `(other)`: past the cap).
    pub key: String,
    /// Records (DNS included).
    pub records: u64,
    /// Connections and requests allowed.
    pub allowed: u64,
    /// Connections and requests denied.
    pub denied: u64,
    /// DNS queries refused.
    pub dns_denied: u64,
    /// Bytes client to upstream.
    pub bytes_up: u64,
    /// Bytes upstream to client.
    pub bytes_down: u64,
    /// First record.
    pub first_seen: Option<String>,
    /// Last record.
    pub last_seen: Option<String>,
    /// The most denied names (at most [`TOP_DENIED`]) with their denials.
    pub top_denied: Vec<(String, u64)>,
}

fn row(key: &str, g: &GroupStats) -> GroupRow {
    let mut names: Vec<(&String, &u64)> = g.denied_names.iter().collect();
    names.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    GroupRow {
        key: key.to_owned(),
        records: g.records,
        allowed: g.allowed,
        denied: g.denied,
        dns_denied: g.dns_denied,
        bytes_up: g.bytes_up,
        bytes_down: g.bytes_down,
        first_seen: g.first.map(format_ms),
        last_seen: g.last.map(format_ms),
        top_denied: names
            .into_iter()
            .take(TOP_DENIED)
            .map(|(n, c)| (n.clone(), *c))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(node: Option<&str>, name: &str, allow: bool, proto: &str, second: i64) -> Rec {
        Rec {
            time: Some(second * 1_000),
            proto: proto.to_owned(),
            name: Some(name.to_owned()),
            allow,
            bytes_up: 1,
            bytes_down: 2,
            node: node.map(str::to_owned),
            repository: Some("org/repo".to_owned()),
            ..Rec::default()
        }
    }

    #[test]
    fn one_row_per_node_with_its_top_denied_names() {
        let mut g = Groups::new(GroupBy::Node);
        let a = Some("node-a");
        for (name, times) in [
            ("d1.test", 1),
            ("d2.test", 4),
            ("d3.test", 2),
            ("d4.test", 3),
        ] {
            for _ in 0..times {
                g.add(&rec(a, name, false, "tls", 5), 1);
            }
        }
        g.add(&rec(a, "ok.test", true, "tls", 1), 1);
        g.add(&rec(a, "d1.test", false, "dns", 9), 5);
        g.add(&rec(Some("node-b"), "ok.test", true, "dns", 3), 1);
        g.add(&rec(None, "ok.test", true, "tls", 3), 1);
        let r = g.report();
        assert_eq!(r.by, GroupBy::Node);
        let keys: Vec<&str> = r.rows.iter().map(|x| x.key.as_str()).collect();
        assert_eq!(keys, ["node-a", "-", "node-b"]);
        let a = &r.rows[0];
        assert_eq!(
            (a.records, a.allowed, a.denied, a.dns_denied),
            (16, 1, 10, 5)
        );
        assert_eq!((a.bytes_up, a.bytes_down), (12, 24));
        assert_eq!(a.first_seen.as_deref(), Some("1970-01-01T00:00:01.000Z"));
        assert_eq!(a.last_seen.as_deref(), Some("1970-01-01T00:00:09.000Z"));
        let top: Vec<(&str, u64)> = a.top_denied.iter().map(|(n, c)| (n.as_str(), *c)).collect();
        assert_eq!(top, [("d1.test", 6), ("d2.test", 4), ("d4.test", 3)]);
        let b = &r.rows[2];
        assert_eq!((b.records, b.allowed, b.denied, b.dns_denied), (1, 0, 0, 0));
        assert!(b.top_denied.is_empty());

        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["by"], "node");
        assert_eq!(json["rows"][0]["top_denied"][0][0], "d1.test");
    }

    #[test]
    fn repo_and_actor_keys_and_the_bounds() {
        let mut g = Groups::new(GroupBy::Repo);
        g.add(&rec(None, "x.test", true, "tls", 1), 1);
        assert_eq!(g.report().rows[0].key, "org/repo");
        let mut g = Groups::new(GroupBy::Actor);
        g.add(&rec(None, "x.test", true, "tls", 1), 1);
        assert_eq!(g.report().rows[0].key, "-");

        let mut g = Groups::new(GroupBy::Node);
        for i in 0..MAX_KEYS + 5 {
            g.add(
                &rec(
                    Some(&format!("n{i}")),
                    &format!("d{i}.test"),
                    false,
                    "tls",
                    1,
                ),
                1,
            );
        }
        assert_eq!(g.rows.len(), MAX_KEYS + 1);
        assert_eq!(g.rows[OTHER].records, 5);
        // The names' budget is spent too: the (other) group counts its names as (other).
        assert_eq!(g.rows[OTHER].denied_names[OTHER], 5);
        assert!(g.names <= MAX_KEYS + 1);
    }
}
