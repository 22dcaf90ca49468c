//! Text renderings of a [`Report`]: a table for terminals (colour only when asked: a TTY
//! without `NO_COLOR`) and GitHub-flavoured markdown (also the job summary block). JSON is
//! the report serialised as is, in `mod.rs`.

use std::fmt::Write as _;

use super::group::GroupReport;
use super::read::format_ms;
use super::report::{DomainRow, Report};
use super::suggest::Verdict;

/// ANSI colour, or nothing.
#[derive(Clone, Copy, Debug)]
pub struct Paint(pub bool);

impl Paint {
    fn wrap(self, code: &str, s: &str) -> String {
        if self.0 {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }
    fn red(self, s: &str) -> String {
        self.wrap("1;31", s)
    }
    fn green(self, s: &str) -> String {
        self.wrap("32", s)
    }
    fn yellow(self, s: &str) -> String {
        self.wrap("33", s)
    }
    fn bold(self, s: &str) -> String {
        self.wrap("1", s)
    }
}

/// The table rendering; `top` rows per view.
pub fn table(r: &Report, top: usize, paint: Paint) -> String {
    let mut out = String::new();
    let t = &r.totals;
    let _ = writeln!(out, "{}", paint.bold(&headline(r)));
    let verdict = match r.enforcement.status {
        "proven" => paint.green(&r.enforcement.summary),
        "armed" | "not-recorded" => paint.yellow(&r.enforcement.summary),
        _ => paint.red(&r.enforcement.summary),
    };
    let _ = writeln!(out, "enforcement: {verdict}");
    for w in &r.enforcement.windows {
        let _ = writeln!(out, "  {}", window_line(w));
    }
    for e in &r.enforcement.examples {
        let _ = writeln!(out, "  {} {e}", paint.red("outside an armed window:"));
    }
    for w in &r.enforcement.warnings {
        let _ = writeln!(out, "  {} {w}", paint.red("warning:"));
    }
    if t.records == 0 {
        return out;
    }

    let headers = [
        "domain",
        "allowed",
        "denied",
        "dns ok/no",
        "up",
        "down",
        "first seen",
        "last seen",
    ];
    grid_section(&mut out, "Domains", &headers, &r.domains, top, |d| {
        let s = &d.stats;
        vec![
            d.domain.clone(),
            s.allowed.to_string(),
            s.denied.to_string(),
            format!("{}/{}", s.dns_allowed, s.dns_denied),
            bytes(s.bytes_up),
            bytes(s.bytes_down),
            s.first.map(format_ms).unwrap_or_default(),
            s.last.map(format_ms).unwrap_or_default(),
        ]
    });

    let denied = denied_domains(r);
    if !denied.is_empty() {
        section(&mut out, "Denied", denied.len(), top);
        for d in denied.iter().take(top) {
            let reasons: Vec<String> = d
                .stats
                .reasons
                .iter()
                .map(|(r, n)| format!("{r} x{n}"))
                .collect();
            let _ = writeln!(out, "  {}  {}", paint.red(&d.domain), reasons.join("; "));
        }
    }

    if !r.rules.is_empty() {
        let headers = ["rule", "allowed", "denied"];
        grid_section(&mut out, "Rules", &headers, &r.rules, top, |x| {
            vec![x.rule.clone(), x.allowed.to_string(), x.denied.to_string()]
        });
    }
    if !r.credentials.is_empty() {
        let headers = ["credential", "requests", "failures", "sources"];
        grid_section(
            &mut out,
            "Credentials",
            &headers,
            &r.credentials,
            top,
            |c| {
                vec![
                    c.credential.clone(),
                    c.requests.to_string(),
                    c.failures.to_string(),
                    c.sources.join(", "),
                ]
            },
        );
    }
    for (title, rows) in provenance(r) {
        let headers = [title.to_ascii_lowercase(), "records".to_owned()];
        grid_section(&mut out, title, &headers, rows, top, |(k, v)| {
            vec![k.clone(), v.to_string()]
        });
    }
    if let Some(g) = &r.groups {
        let title = format!("By {}", g.by.noun());
        let headers = [
            g.by.noun(),
            "records",
            "allowed",
            "denied",
            "dns refused",
            "up",
            "down",
            "first seen",
            "last seen",
            "top denied",
        ];
        grid_section(&mut out, &title, &headers, &g.rows, top, |x| {
            vec![
                x.key.clone(),
                x.records.to_string(),
                x.allowed.to_string(),
                x.denied.to_string(),
                x.dns_denied.to_string(),
                bytes(x.bytes_up),
                bytes(x.bytes_down),
                x.first_seen.clone().unwrap_or_default(),
                x.last_seen.clone().unwrap_or_default(),
                top_denied(&x.top_denied, " x"),
            ]
        });
    }
    if r.timeline.buckets.len() > 1 {
        let _ = writeln!(
            out,
            "\n{} (per {})",
            paint.bold("Timeline"),
            duration(r.timeline.bucket_seconds)
        );
        let max = r
            .timeline
            .buckets
            .iter()
            .map(|b| b.allowed + b.denied)
            .max()
            .unwrap_or(1)
            .max(1);
        for b in &r.timeline.buckets {
            let bar = |n: u64| {
                let width = usize::try_from(n * 40 / max).unwrap_or(40);
                if n > 0 { width.max(1) } else { 0 }
            };
            let _ = writeln!(
                out,
                "  {}  {:>7} {:>7}  {}{}",
                b.start,
                b.allowed,
                b.denied,
                paint.green(&"#".repeat(bar(b.allowed))),
                paint.red(&"x".repeat(bar(b.denied)))
            );
        }
    }
    if let Some(s) = &r.suggestions {
        section(&mut out, "Suggestions", s.add.len(), top);
        if s.add.is_empty() {
            out.push_str("  nothing to add\n");
        }
        for x in s.add.iter().take(top) {
            let v = verdict_name(x.verdict);
            let v = match x.verdict {
                Verdict::Ok => paint.green(v),
                Verdict::Review => paint.yellow(v),
                Verdict::Risky | Verdict::Never => paint.red(v),
            };
            let _ = writeln!(
                out,
                "  {v:<6}  {}  ({} denied; {})",
                x.add,
                x.denied,
                covers(&x.covers, x.covers_count)
            );
            let _ = writeln!(out, "          {}", x.note);
        }
        if !s.unused.is_empty() {
            section(
                &mut out,
                "Entries never hit (candidates for removal)",
                s.unused.len(),
                top,
            );
            for u in s.unused.iter().take(top) {
                let _ = write!(out, "  {}  (from {})", u.entry, u.origin);
                if let Some(why) = u.never_matches {
                    let _ = write!(out, ": never matches: {why}");
                }
                out.push('\n');
            }
        }
    }
    out
}

/// The markdown rendering (`--format markdown`).
pub fn markdown(r: &Report, top: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## egressd audit\n\n{}\n", headline(r));
    let icon = icon(r.enforcement.status);
    let _ = writeln!(out, "**Enforcement:** {icon} {}\n", r.enforcement.summary);
    for w in &r.enforcement.warnings {
        let _ = writeln!(out, "* ❌ {}", md(w));
    }
    for e in &r.enforcement.examples {
        let _ = writeln!(out, "* ❌ outside an armed window: {}", md(e));
    }
    if !r.enforcement.warnings.is_empty() || !r.enforcement.examples.is_empty() {
        out.push('\n');
    }
    body(&mut out, r, top);
    out
}

/// The job summary block (`--step-summary`): collapsible, headline in the summary line.
pub fn step_summary(r: &Report, top: usize) -> String {
    let icon = icon(r.enforcement.status);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<details>\n<summary>egressd: {} {}</summary>\n",
        md(&headline(r)),
        icon
    );
    let _ = writeln!(out, "**Enforcement:** {}\n", md(&r.enforcement.summary));
    for w in &r.enforcement.warnings {
        let _ = writeln!(out, "* ❌ {}", md(w));
    }
    body(&mut out, r, top);
    out.push_str("</details>\n\n");
    out
}

fn body(out: &mut String, r: &Report, top: usize) {
    if r.totals.records == 0 {
        out.push_str("No traffic recorded.\n\n");
    } else {
        let _ = writeln!(
            out,
            "| Domain | Allowed | Denied | DNS ok/refused | Up | Down | Last seen |"
        );
        let _ = writeln!(
            out,
            "|--------|---------|--------|---------------|----|------|-----------|"
        );
        for d in r.domains.iter().take(top) {
            let s = &d.stats;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {}/{} | {} | {} | {} |",
                md(&d.domain),
                s.allowed,
                s.denied,
                s.dns_allowed,
                s.dns_denied,
                bytes(s.bytes_up),
                bytes(s.bytes_down),
                s.last.map(format_ms).unwrap_or_default()
            );
        }
        more(out, r.domains.len(), top);
        let denied = denied_domains(r);
        if !denied.is_empty() {
            out.push_str(
                "\n### Denied\n\n| Name | Denied | Reasons |\n|------|--------|---------|\n",
            );
            for d in denied.iter().take(top) {
                let reasons: Vec<String> = d
                    .stats
                    .reasons
                    .iter()
                    .map(|(r, n)| format!("{} ×{n}", md(r)))
                    .collect();
                let _ = writeln!(
                    out,
                    "| {} | {} | {} |",
                    md(&d.domain),
                    denials(d),
                    reasons.join("; ")
                );
            }
            more(out, denied.len(), top);
        }
        if !r.rules.is_empty() {
            out.push_str(
                "\n### Rules\n\n| Rule | Allowed | Denied |\n|------|---------|--------|\n",
            );
            for x in r.rules.iter().take(top) {
                let _ = writeln!(out, "| {} | {} | {} |", md(&x.rule), x.allowed, x.denied);
            }
            more(out, r.rules.len(), top);
        }
        if !r.credentials.is_empty() {
            out.push_str(
                "\n### Credentials\n\n| Credential | Requests | Failures | Sources |\n|------------|----------|----------|---------|\n",
            );
            for c in r.credentials.iter().take(top) {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} |",
                    md(&c.credential),
                    c.requests,
                    c.failures,
                    md(&c.sources.join(", "))
                );
            }
        }
        for (title, rows) in provenance(r) {
            let _ = writeln!(out, "\n### {title}\n\n| {title} | Records |\n|---|---|");
            for (k, v) in rows.iter().take(top) {
                let _ = writeln!(out, "| {} | {v} |", md(k));
            }
        }
        if let Some(g) = &r.groups {
            groups_markdown(out, g, top);
        }
    }
    if let Some(s) = &r.suggestions {
        out.push_str("\n### Suggested allowlist additions\n\n");
        if s.add.is_empty() {
            out.push_str("Nothing to add.\n");
        } else {
            out.push_str("| Verdict | Add | Covers | Denied | Note |\n|---------|-----|--------|--------|------|\n");
            for x in s.add.iter().take(top) {
                let _ = writeln!(
                    out,
                    "| {} | `{}` | {} | {} | {} |",
                    verdict_name(x.verdict),
                    x.add.replace('`', "'"),
                    md(&covers(&x.covers, x.covers_count)),
                    x.denied,
                    md(&x.note)
                );
            }
            more(out, s.add.len(), top);
        }
        if !s.unused.is_empty() {
            out.push_str("\n### Entries never hit\n\n");
            for u in s.unused.iter().take(top) {
                let _ = write!(out, "* `{}` ({})", u.entry.replace('`', "'"), md(&u.origin));
                if let Some(why) = u.never_matches {
                    let _ = write!(out, ": never matches: {}", md(why));
                }
                out.push('\n');
            }
        }
    }
    out.push('\n');
}

/// The `--group-by` table in markdown.
fn groups_markdown(out: &mut String, g: &GroupReport, top: usize) {
    let noun = g.by.noun();
    let mut title = noun.to_owned();
    if let Some(first) = title.get_mut(..1) {
        first.make_ascii_uppercase();
    }
    let _ = writeln!(
        out,
        "\n### By {noun}\n\n| {title} | Records | Allowed | Denied | DNS refused | Up | Down | First seen | Last seen | Top denied |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for x in g.rows.iter().take(top) {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            md(&x.key),
            x.records,
            x.allowed,
            x.denied,
            x.dns_denied,
            bytes(x.bytes_up),
            bytes(x.bytes_down),
            x.first_seen.as_deref().unwrap_or(""),
            x.last_seen.as_deref().unwrap_or(""),
            md(&top_denied(&x.top_denied, " ×"))
        );
    }
    more(out, g.rows.len(), top);
}

/// `a.test x3, b.test x1` (`times` is the separator before the count).
fn top_denied(names: &[(String, u64)], times: &str) -> String {
    names
        .iter()
        .map(|(n, c)| format!("{n}{times}{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `N records: A allowed, D denied; Q DNS queries, R refused; K domains; T1 to T2`.
pub fn headline(r: &Report) -> String {
    let t = &r.totals;
    let mut s = format!(
        "{} {}: {} allowed, {} denied",
        t.records,
        plural(t.records, "record", "records"),
        t.allowed,
        t.denied
    );
    if t.ended_early > 0 {
        let _ = write!(s, " ({} ended early)", t.ended_early);
    }
    if t.dns_queries > 0 {
        let _ = write!(
            s,
            "; {} DNS {}, {} refused",
            t.dns_queries,
            plural(t.dns_queries, "query", "queries"),
            t.dns_denied
        );
    }
    let _ = write!(
        s,
        "; {} {}",
        t.domains,
        plural(t.domains as u64, "domain", "domains")
    );
    if let (Some(a), Some(b)) = (&t.first, &t.last) {
        let _ = write!(s, "; {a} to {b}");
    }
    s
}

fn window_line(w: &super::enforce::Window) -> String {
    let mut s = format!("{}: armed {}", w.label(), w.armed.as_deref().unwrap_or("?"));
    let mut what = vec![
        w.backend.clone().unwrap_or_else(|| "?".to_owned()),
        format!("{} programs", w.programs),
    ];
    if let Some(c) = &w.cgroup {
        what.push(format!("cgroup {c}"));
    }
    if let Some(h) = &w.policy_hash {
        what.push(format!("policy {}", short(h)));
    }
    if let Some(f) = &w.ca_fingerprint {
        what.push(format!("CA {}", short(f)));
    }
    let _ = write!(s, " ({})", what.join(", "));
    match (&w.disarmed, w.exit_code) {
        (Some(d), Some(code)) => {
            let _ = write!(s, ", disarmed {d} (exit {code})");
        }
        (Some(d), None) => {
            let _ = write!(s, ", disarmed {d}");
        }
        (None, _) => s.push_str(", not disarmed"),
    }
    let _ = write!(s, ", {} records", w.records);
    s
}

fn short(hash: &str) -> String {
    hash.chars().take(7 + 12).collect()
}

fn provenance(r: &Report) -> Vec<(&'static str, &Vec<(String, u64)>)> {
    [
        ("Actors", &r.provenance.actors),
        ("Repositories", &r.provenance.repositories),
        ("Workflows", &r.provenance.workflows),
    ]
    .into_iter()
    .filter(|(_, rows)| !rows.is_empty())
    .collect()
}

/// The icon the markdown renderings put before the enforcement verdict.
fn icon(status: &str) -> &'static str {
    match status {
        "proven" => "✅",
        "armed" | "not-recorded" => "⚠️",
        _ => "❌",
    }
}

/// Connections, requests and DNS queries denied for one domain.
fn denials(d: &DomainRow) -> u64 {
    d.stats.denied + d.stats.dns_denied
}

/// The domains with at least one denial, in report order (the "Denied" views).
fn denied_domains(r: &Report) -> Vec<&DomainRow> {
    r.domains.iter().filter(|d| denials(d) > 0).collect()
}

/// A titled [`grid`] of the first `top` of `items`, one row each by `row` (the table's
/// views all have this form).
fn grid_section<T, H: AsRef<str>>(
    out: &mut String,
    title: &str,
    headers: &[H],
    items: &[T],
    top: usize,
    row: impl Fn(&T) -> Vec<String>,
) {
    section(out, title, items.len(), top);
    let rows: Vec<Vec<String>> = items.iter().take(top).map(row).collect();
    let headers: Vec<&str> = headers.iter().map(AsRef::as_ref).collect();
    out.push_str(&grid(&headers, &rows));
}

fn section(out: &mut String, title: &str, count: usize, top: usize) {
    if count > top {
        let _ = writeln!(out, "\n{title} (top {top} of {count})");
    } else {
        let _ = writeln!(out, "\n{title}");
    }
}

fn more(out: &mut String, count: usize, top: usize) {
    if count > top {
        let _ = writeln!(
            out,
            "\n…and {} more (`--top N` or `--format json` for all)",
            count - top
        );
    }
}

/// Left-aligned first column, right-aligned others, two-space gaps.
fn grid(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        out.push(' ');
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i == 0 {
                let _ = write!(out, " {cell:<w$}");
            } else {
                let _ = write!(out, "  {cell:>w$}");
            }
        }
        let trimmed = out.trim_end().len();
        out.truncate(trimmed);
        out.push('\n');
    };
    line(&mut out, &mut headers.iter().copied());
    for row in rows {
        line(&mut out, &mut row.iter().map(String::as_str));
    }
    out
}

fn covers(names: &[String], count: usize) -> String {
    let mut s = names.join(", ");
    if count > names.len() {
        let _ = write!(s, " and {} more", count - names.len());
    }
    s
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Ok => "ok",
        Verdict::Review => "review",
        Verdict::Risky => "risky",
        Verdict::Never => "never",
    }
}

/// `1.2 MB`-style sizes.
fn bytes(n: u64) -> String {
    #[allow(clippy::cast_precision_loss, reason = "display only")]
    let f = n as f64;
    match n {
        0..1_000 => format!("{n} B"),
        1_000..1_000_000 => format!("{:.1} kB", f / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", f / 1e6),
        _ => format!("{:.1} GB", f / 1e9),
    }
}

fn duration(seconds: i64) -> String {
    match seconds {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s => format!("{}m", s / 60),
    }
}

fn plural(n: u64, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}

/// Escapes what would break a table cell or start markup.
fn md(s: &str) -> String {
    s.replace('|', "\\|")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
