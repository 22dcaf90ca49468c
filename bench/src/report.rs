//! The report: Markdown tables with ratios to `direct`, the connection curve, the allowlist
//! curve, and the issue's targets checked one by one against the medians.

use std::fmt::Write as _;

use crate::run::{RunResult, Summary};

/// The whole report as Markdown (printed, and written to `results.md`).
pub fn markdown(run: &RunResult) -> String {
    let mut md = String::new();
    let direct = run
        .targets
        .iter()
        .find(|t| t.id == "direct")
        .map(|t| t.summary.clone())
        .unwrap_or_default();
    let _ = writeln!(
        md,
        "# egressd bench ({} run)\n\n{}; {} round(s), medians shown (bulk: of {} transfers); {:.0} s.\n",
        run.mode,
        run.machine,
        run.plan.reps,
        run.plan.reps * run.plan.bulk_per_round,
        run.secs
    );
    for note in &run.notes {
        let _ = writeln!(md, "Note: {note}.\n");
    }
    let _ = writeln!(
        md,
        "## Throughput and latency\n\n\
         New connections: connect, TLS 1.3 full handshake (ECDSA P-256, no resumption), one \
         `GET` of {} bytes, close; {c} workers. Keep-alive: {c} connections, one request in \
         flight each. Latency: one connection, one request at a time. Bulk: one {} MiB \
         download. MB = 10^6 bytes. CPU µs/conn and µs/req: the whole machine's busy CPU time \
         (client, upstream, proxy and the kernel's work for all three) during the new-connection \
         and keep-alive runs, per connection and per request.\n",
        crate::proto::SMALL_BODY,
        run.plan.bulk_bytes >> 20,
        c = run.plan.concurrency,
    );
    md.push_str(
        "| target | what | new conn/s | × direct | CPU µs/conn | setup p50 / p99 ms | keep-alive req/s | × direct | CPU µs/req | 1-conn req p50 / p99 µs | bulk MB/s | × direct |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for t in &run.targets {
        let s = &t.summary;
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            t.id,
            t.describe,
            num(s.conn_per_s, 0),
            ratio(s.conn_per_s, direct.conn_per_s),
            num(s.conn_cpu_us, 0),
            pair(s.conn_p50_ms, s.conn_p99_ms),
            num(s.req_per_s, 0),
            ratio(s.req_per_s, direct.req_per_s),
            num(s.req_cpu_us, 1),
            micros(s.lat_p50_ms, s.lat_p99_ms),
            num(s.bulk_mb_s, 0),
            ratio(s.bulk_mb_s, direct.bulk_mb_s),
        );
    }
    md.push_str(
        "\n## Proxy resources\n\n\
         CPU: the proxy's own CPU time (all its threads and processes) during the bulk \
         transfer, per 10^9 bytes; machine CPU: every CPU's busy time during it (a relay \
         inside the kernel works in softIRQ and kernel threads no proxy process is charged \
         for, so only this column compares it fairly; `direct` is the endpoints alone). RSS: `VmRSS` summed over the proxy's processes, at idle \
         (after one request) and its peak (`VmHWM`) while holding the most idle connections \
         (each opened with a handshake and one request); per connection: the RSS difference \
         divided by the connections held.\n\n\
         | target | CPU s/GB | machine CPU s/GB | RSS idle MiB | peak RSS MiB | at connections | KiB per idle conn |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for t in &run.targets {
        let s = &t.summary;
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            t.id,
            num(s.cpu_s_per_gb, 2),
            num(s.machine_cpu_s_per_gb, 2),
            num(s.rss_idle_mib, 1),
            num(s.rss_peak_mib, 1),
            s.held.map_or("–".into(), |h| h.to_string()),
            num(s.kib_per_conn, 1),
        );
    }
    curve_table(&mut md, run);
    policy_table(&mut md, run);
    issue18_check(&mut md, run);
    targets_check(&mut md, run);
    md.push_str("\n## Runs\n\n");
    for t in &run.targets {
        let _ = writeln!(
            md,
            "- **{}** ({}): {}",
            t.id,
            t.version.as_deref().unwrap_or("–"),
            t.status
        );
        for note in &t.notes {
            let _ = writeln!(md, "  - {note}");
        }
    }
    md
}

fn curve_table(md: &mut String, run: &RunResult) {
    let levels = &run.plan.hold_levels;
    md.push_str(
        "\n## Cost curve: concurrent connections\n\n\
         Setup latency of a new connection (median ms) and proxy RSS (MiB) while N idle \
         connections are held (`connections.png`, `rss.png`).\n\n| target |",
    );
    for l in levels {
        let _ = write!(md, " N={l} |");
    }
    md.push_str("\n|---|");
    for _ in levels {
        md.push_str("---:|");
    }
    md.push('\n');
    for t in run.targets.iter().filter(|t| !t.curve.is_empty()) {
        let _ = write!(md, "| {} |", t.id);
        for &l in levels {
            match t.curve.iter().find(|p| p.level == l && p.held == l) {
                #[allow(clippy::cast_precision_loss, reason = "KiB counts far below 2^52")]
                Some(p) => {
                    let rss = p
                        .rss_kib
                        .map_or(String::new(), |k| format!(" / {:.1}", k as f64 / 1024.0));
                    let _ = write!(md, " {:.2}{rss} |", p.setup_p50_ms);
                }
                None => md.push_str(" – |"),
            }
        }
        md.push('\n');
    }
}

fn policy_table(md: &mut String, run: &RunResult) {
    md.push_str(
        "\n## Cost curve: allowlist size\n\n\
         `Policy::decide` in process, half hits and half misses (`policy.png`); build is \
         `Policy::new`.\n\n\
         | entries | ns/decision (domains) | build ms | ns/decision (1% wildcards) | build ms |\n\
         |---:|---:|---:|---:|---:|\n",
    );
    let plain: Vec<_> = run
        .policy
        .iter()
        .filter(|p| p.wildcard_share == 0.0)
        .collect();
    for p in plain {
        let w = run
            .policy
            .iter()
            .find(|q| q.wildcard_share > 0.0 && q.entries == p.entries);
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.1} | {} | {} |",
            p.entries,
            p.decide_ns,
            p.build_ms,
            w.map_or("–".into(), |w| format!("{:.0}", w.decide_ns)),
            w.map_or("–".into(), |w| format!("{:.1}", w.build_ms)),
        );
    }
}

/// Issue 18's targets (the in-kernel relay), each with the measured figures and whether it
/// is met. Ratios are within this run, so the machine's load touches both sides alike.
fn issue18_check(md: &mut String, run: &RunResult) {
    let s = |id: &str| summary(run, id);
    let (direct, haproxy, squid) = (s("direct"), s("haproxy"), s("squid"));
    let (pass, icpt) = (s("egressd-pass"), s("egressd-intercept"));
    let mut row = verdict_table(md, "Issue 18 targets");
    let v = Versus::new(pass.req_per_s, direct.req_per_s, 0);
    row(
        "pass-through keep-alive req/s ≥ 0.9 × direct",
        format!("{} vs {} ({})", v.a, v.b, v.ratio),
        v.met(|a, b| a >= 0.9 * b),
    );
    let v = Versus::new(pass.bulk_mb_s, direct.bulk_mb_s, 0);
    row(
        "pass-through bulk ≥ 0.95 × direct",
        format!("{} vs {} MB/s ({})", v.a, v.b, v.ratio),
        v.met(|a, b| a >= 0.95 * b),
    );
    let v = Versus::new(pass.conn_per_s, haproxy.conn_per_s, 0);
    row(
        "pass-through new conn/s ≥ 1.1 × HAProxy's",
        format!("{} vs {} ({})", v.a, v.b, v.ratio),
        v.met(|a, b| a >= 1.1 * b),
    );
    let v = Versus::new(
        pass.lat_p99_ms.map(|x| x * 1e3),
        direct.lat_p99_ms.map(|x| x * 1e3),
        0,
    );
    row(
        "pass-through p99 added latency ≤ 50 µs (one request, warm connection)",
        format!("p99 {} µs vs direct {} µs", v.a, v.b),
        v.met(|a, b| a - b <= 50.0),
    );
    let v = Versus::new(icpt.req_per_s, squid.req_per_s, 0);
    row(
        "intercept keep-alive req/s ≥ Squid's CONNECT",
        format!("{} vs {} ({})", v.a, v.b, v.ratio),
        v.met(|a, b| a >= b),
    );
    let v = Versus::new(icpt.conn_per_s, direct.conn_per_s, 0);
    row(
        "intercept new conn/s ≥ 0.9 × direct",
        format!("{} vs {} ({})", v.a, v.b, v.ratio),
        v.met(|a, b| a >= 0.9 * b),
    );
    row(
        "< 8 KiB per idle pass-through connection",
        format!(
            "{} KiB ({} connections)",
            num(pass.kib_per_conn, 1),
            pass.held.map_or("–".into(), |h| h.to_string())
        ),
        pass.kib_per_conn.map(|k| k < 8.0),
    );
    row(
        "idle RSS < 20 MiB",
        format!("{} MiB", num(pass.rss_idle_mib, 1)),
        pass.rss_idle_mib.map(|m| m < 20.0),
    );
}

/// The summary of target `id` when it ran, else an empty one (its rows say "not measured").
fn summary(run: &RunResult, id: &str) -> Summary {
    run.targets
        .iter()
        .find(|t| t.id == id && t.status == "ok")
        .map(|t| t.summary.clone())
        .unwrap_or_default()
}

/// Starts a table of targets under `title`; returns the function that writes one row:
/// what, the figures measured, and whether it is met (`None`: not measured).
fn verdict_table<'m>(
    md: &'m mut String,
    title: &str,
) -> impl FnMut(&str, String, Option<bool>) + 'm {
    let _ = write!(
        md,
        "\n## {title}\n\n| target | measured | verdict |\n|---|---|---|\n"
    );
    move |what, measured, met| {
        let verdict = match met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "not measured",
        };
        let _ = writeln!(md, "| {what} | {measured} | {verdict} |");
    }
}

/// Issue 8's targets not repeated in issue 18's, each with the measured figures and whether
/// it is met.
fn targets_check(md: &mut String, run: &RunResult) {
    let s = |id: &str| summary(run, id);
    let (direct, haproxy, mitm) = (s("direct"), s("haproxy"), s("mitmproxy"));
    let (pass, icpt, strict) = (
        s("egressd-pass"),
        s("egressd-intercept"),
        s("egressd-strict"),
    );
    let mut row = verdict_table(md, "Issue 8 targets");
    let v = Versus::new(pass.conn_per_s, haproxy.conn_per_s, 0);
    row(
        "pass-through new conn/s ≥ HAProxy's",
        format!("{} vs {}", v.a, v.b),
        v.met(|a, b| a >= b),
    );
    // The machine's CPU, not the proxy's: the kernel relay's work is charged to no process.
    let v = Versus::new(pass.machine_cpu_s_per_gb, haproxy.machine_cpu_s_per_gb, 2);
    row(
        "pass-through CPU per GB below HAProxy's (whole machine)",
        format!("{} vs {} s/GB", v.a, v.b),
        v.met(|a, b| a < b),
    );
    let v = Versus::new(icpt.req_per_s, mitm.req_per_s, 0);
    row(
        "intercept req/s ≥ 10 × mitmproxy's",
        format!("{} vs {} ({})", v.a, v.b, v.ratio),
        v.met(|a, b| a >= 10.0 * b),
    );
    let v = Versus::new(icpt.lat_p99_ms, direct.lat_p99_ms, 3);
    row(
        "intercept adds < 1 ms p99 per request",
        format!("p99 {} ms vs direct {} ms", v.a, v.b),
        v.met(|a, b| a - b < 1.0),
    );
    row(
        "under 30 MiB RSS idle",
        format!("{} MiB", num(pass.rss_idle_mib, 1)),
        pass.rss_idle_mib.map(|m| m < 30.0),
    );
    row(
        "under 16 KiB per idle pass-through connection",
        format!(
            "{} KiB ({} connections)",
            num(pass.kib_per_conn, 1),
            pass.held.map_or("–".into(), |h| h.to_string())
        ),
        pass.kib_per_conn.map(|k| k < 16.0),
    );
    let (p50, p99) = (
        Versus::new(icpt.lat_p50_ms, strict.lat_p50_ms, 3),
        Versus::new(icpt.lat_p99_ms, strict.lat_p99_ms, 3),
    );
    row(
        "token broker: cached path adds no measurable latency",
        format!(
            "p50 {} / p99 {} ms with the credential, {} / {} ms without",
            p50.a, p99.a, p50.b, p99.b
        ),
        // "Not measurable": within 20% or 0.05 ms of the run without a credential.
        p50.met(|a, b| a - b < (0.2 * b).max(0.05)),
    );
    let at_10k = run
        .policy
        .iter()
        .find(|p| p.entries == 10_000 && p.wildcard_share == 0.0);
    row(
        "a 10,000-entry allowlist decides in < 1 µs",
        at_10k.map_or("–".into(), |p| format!("{:.0} ns", p.decide_ns)),
        at_10k.map(|p| p.decide_ns < 1000.0),
    );
}

/// Two figures a target compares, egressd's (`a`) and the reference (`b`), formatted once
/// for the measured text and kept for the verdict.
struct Versus {
    /// `a` to the given decimals (`–` when not measured).
    a: String,
    /// `b` likewise.
    b: String,
    /// `a / b` (`–` when either is missing).
    ratio: String,
    /// Both figures, when both were measured.
    both: Option<(f64, f64)>,
}

impl Versus {
    fn new(a: Option<f64>, b: Option<f64>, decimals: usize) -> Self {
        Self {
            a: num(a, decimals),
            b: num(b, decimals),
            ratio: ratio(a, b),
            both: a.zip(b),
        }
    }

    /// Whether the target is met by `met(a, b)`; `None` when a figure is missing.
    fn met(&self, met: impl Fn(f64, f64) -> bool) -> Option<bool> {
        self.both.map(|(a, b)| met(a, b))
    }
}

fn num(v: Option<f64>, decimals: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.decimals$}"))
}

/// Two latencies given in ms, shown in µs.
fn micros(p50_ms: Option<f64>, p99_ms: Option<f64>) -> String {
    match (p50_ms, p99_ms) {
        (Some(a), Some(b)) => format!("{:.0} / {:.0}", a * 1e3, b * 1e3),
        _ => "–".into(),
    }
}

fn pair(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format!("{a:.2} / {b:.2}"),
        _ => "–".into(),
    }
}

fn ratio(v: Option<f64>, base: Option<f64>) -> String {
    match (v, base) {
        (Some(v), Some(b)) if b > 0.0 => format!("{:.2}", v / b),
        _ => "–".into(),
    }
}
