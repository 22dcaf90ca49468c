//! `egressd audit`: summarise audit logs (egressd's JSONL, AWF's `access.log` and
//! `audit.jsonl`) in one streaming pass.
//!
//! Pipeline: [`read`] parses each line (several inputs are read as one stream ordered by
//! time, [`merge`]) and gives it its node ([`read::Node`]); lifecycle lines and records go to
//! [`enforce`] (proof of enforcement, checked before the time/decision/domain filters);
//! filtered records go to [`aggregate`] (and [`group`] with `--group-by`) and are dropped;
//! [`report`] sorts the aggregate into rows, [`suggest`] adds `--suggest`, and [`render`]
//! prints a table or markdown (JSON is the report itself). Memory is bounded by the number
//! of distinct keys, capped in [`aggregate`].

mod aggregate;
mod enforce;
mod group;
mod merge;
mod read;
mod render;
mod report;
pub(crate) mod suggest;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal as _, Read, Seek, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow};

pub(crate) use self::group::GroupBy;
pub(crate) use self::suggest::{Verdict, registrable, verdict_for};
use self::{
    aggregate::Aggregate,
    enforce::Tracker,
    group::Groups,
    read::{Line, Node, Rec, Source},
    render::Paint,
    report::{Input, Report},
};
use crate::{
    Failure,
    cli::{AuditArgs, AuditFormat, DecisionFilter, PolicyArgs},
    env, policy,
};

/// The longest line kept when following a file (longer ones count as malformed).
const MAX_LINE: usize = 1 << 20;
/// How often `--follow` looks at the file.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

/// Runs `egressd audit`.
pub fn run(args: &AuditArgs) -> Result<u8, Failure> {
    let policy = if policy_given(&args.policy) {
        Some(policy::build(&args.policy, None).map_err(Failure::usage)?)
    } else {
        None
    };
    let now = time::OffsetDateTime::now_utc();
    let now_ms = i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
    let filter = Filter {
        since: args
            .since
            .as_deref()
            .map(|s| parse_time(s, now_ms))
            .transpose()
            .map_err(Failure::usage)?,
        until: args
            .until
            .as_deref()
            .map(|s| parse_time(s, now_ms))
            .transpose()
            .map_err(Failure::usage)?,
        decision: args.decision,
        domain: args
            .domain
            .as_deref()
            .map(|d| d.trim_end_matches('.').to_ascii_lowercase()),
        sandbox: args.sandbox.clone(),
    };
    let mut state = State::new(filter);
    state.agg.groups = args.group_by.map(Groups::new);
    if args.follow {
        // One file after the other, then the last one as it grows.
        let mut last: Option<Reading> = None;
        for path in &args.logs {
            let reading = state
                .read_all(vec![(path.as_path(), open(path)?)])
                .map_err(|e| read_error(std::slice::from_ref(path), e))?
                .pop();
            if let Some(done) = std::mem::replace(&mut last, reading) {
                state.inputs.push(done.input);
            }
        }
        follow(&mut state, args, last).map_err(Failure::runtime)?;
    } else {
        // Every file at once, as one stream ordered by time.
        let feeds = args
            .logs
            .iter()
            .map(|path| Ok((path.as_path(), open(path)?)))
            .collect::<Result<Vec<_>, Failure>>()?;
        let readings = state
            .read_all(feeds)
            .map_err(|e| read_error(&args.logs, e))?;
        state.inputs.extend(readings.into_iter().map(|r| r.input));
    }

    let expected = policy.as_ref().map(|c| c.policy.fingerprint());
    let enforcement = state.tracker.finish(expected.as_deref());
    let proven = enforcement.is_proven();
    let suggestions = (args.suggest || args.step_summary)
        .then(|| suggest::suggest(&state.agg, policy.as_ref().map(|c| &*c.policy)));
    let report = Report::new(state.inputs, &state.agg, enforcement, suggestions);
    let text = match args.format {
        AuditFormat::Json => {
            let mut s = serde_json::to_string_pretty(&report).map_err(Failure::runtime)?;
            s.push('\n');
            s
        }
        AuditFormat::Markdown => render::markdown(&report, args.top),
        AuditFormat::Table => {
            let colour = io::stdout().is_terminal() && !env::no_color();
            render::table(&report, args.top, Paint(colour))
        }
    };
    write_stdout(&text).map_err(Failure::runtime)?;
    if args.step_summary {
        match env::github_step_summary() {
            Some(path) => append(&path, &render::step_summary(&report, args.top))
                .with_context(|| format!("appending to GITHUB_STEP_SUMMARY ({})", path.display()))
                .map_err(Failure::runtime)?,
            None => eprintln!(
                "egressd: warning: --step-summary: GITHUB_STEP_SUMMARY is not set (not in \
                 GitHub Actions?); nothing appended"
            ),
        }
    }
    if args.require_proof && !proven {
        eprintln!(
            "egressd: enforcement is not proven: {}",
            report.enforcement.summary
        );
        return Ok(1);
    }
    Ok(0)
}

/// Opens a log (`-`: stdin) for reading.
fn open(path: &Path) -> Result<Box<dyn BufRead>, Failure> {
    if path == Path::new("-") {
        return Ok(Box::new(io::stdin().lock()));
    }
    let file = File::open(path)
        .with_context(|| format!("opening {}", path.display()))
        .map_err(Failure::usage)?;
    Ok(Box::new(BufReader::with_capacity(1 << 16, file)))
}

/// A read error, naming the log it came from.
fn read_error(logs: &[PathBuf], e: merge::MergeError) -> Failure {
    let path = logs
        .get(e.input)
        .map_or_else(|| "-".to_owned(), |p| p.display().to_string());
    Failure::runtime(anyhow::Error::new(e.error).context(format!("reading {path}")))
}

/// The record filters.
#[derive(Debug, Default)]
struct Filter {
    since: Option<i64>,
    until: Option<i64>,
    decision: Option<DecisionFilter>,
    domain: Option<String>,
    sandbox: Option<String>,
}

impl Filter {
    /// True when `r` passes the `--sandbox` filter (applied before enforcement checks).
    fn sandbox_ok(&self, sandbox: Option<&str>) -> bool {
        self.sandbox.as_deref().is_none_or(|s| sandbox == Some(s))
    }

    /// True when `r` passes every other filter.
    fn keeps(&self, r: &Rec) -> bool {
        if self.since.is_some() || self.until.is_some() {
            let Some(t) = r.time else { return false };
            if self.since.is_some_and(|s| t < s) || self.until.is_some_and(|u| t >= u) {
                return false;
            }
        }
        match self.decision {
            Some(DecisionFilter::Allow) if !r.allow => return false,
            Some(DecisionFilter::Deny) if r.allow => return false,
            _ => {}
        }
        if let Some(d) = &self.domain {
            let Some(name) = &r.name else { return false };
            if name != d
                && !(name.ends_with(d.as_str()) && name[..name.len() - d.len()].ends_with('.'))
            {
                return false;
            }
        }
        true
    }
}

/// Everything accumulated while reading.
struct State {
    filter: Filter,
    agg: Aggregate,
    tracker: Tracker,
    inputs: Vec<Input>,
}

impl State {
    fn new(filter: Filter) -> Self {
        Self {
            filter,
            agg: Aggregate::default(),
            tracker: Tracker::default(),
            inputs: Vec::new(),
        }
    }

    /// Reads a whole stream, line by line; returns what was read.
    #[cfg(test)]
    fn read(&mut self, path: &Path, reader: impl BufRead) -> io::Result<Input> {
        let mut readings = self.read_all(vec![(path, reader)]).map_err(|e| e.error)?;
        Ok(readings
            .pop()
            .map_or_else(|| Reading::new(path).input, |r| r.input))
    }

    /// Reads whole streams as one, ordered by time ([`merge`]); returns what was read of
    /// each, in the order given.
    fn read_all<R: BufRead>(
        &mut self,
        feeds: Vec<(&Path, R)>,
    ) -> Result<Vec<Reading>, merge::MergeError> {
        let (mut readings, readers): (Vec<Reading>, Vec<R>) = feeds
            .into_iter()
            .map(|(path, reader)| (Reading::new(path), reader))
            .unzip();
        merge::merge(readers, |i, line| {
            if let Some(reading) = readings.get_mut(i) {
                self.take(line, reading, |_| {});
            }
        })?;
        Ok(readings)
    }

    /// Takes one line of bytes (`--follow`).
    fn line(&mut self, bytes: &[u8], reading: &mut Reading, each: impl FnMut(&Line)) {
        let text = String::from_utf8_lossy(bytes);
        self.take(read::parse(&text), reading, each);
    }

    /// Takes one parsed line of `reading`'s input: gives it its node, then passes it on;
    /// `each` sees every record kept and every lifecycle line (for `--follow`).
    fn take(&mut self, mut line: Line, reading: &mut Reading, mut each: impl FnMut(&Line)) {
        reading.node.assign(&mut line);
        let input = &mut reading.input;
        input.lines += 1;
        match &line {
            Line::Record(r) => {
                note_format(input, r.source.unwrap_or(Source::Egressd));
                if !self.filter.sandbox_ok(r.sandbox.as_deref()) {
                    return;
                }
                self.tracker.record(r);
                if self.filter.keeps(r) {
                    self.agg.add(r);
                    each(&line);
                }
            }
            Line::Lifecycle(l) => {
                note_format(input, Source::Egressd);
                if self.filter.sandbox_ok(Some(&l.sandbox)) {
                    self.tracker.lifecycle(l);
                    each(&line);
                }
            }
            Line::Skip => {}
            Line::Malformed => input.malformed += 1,
        }
    }
}

/// One input while it is read: what was read, and its node rule.
struct Reading {
    input: Input,
    node: Node,
}

impl Reading {
    fn new(path: &Path) -> Self {
        let path = path.display().to_string();
        Self {
            input: Input {
                path: path.clone(),
                formats: Vec::new(),
                lines: 0,
                malformed: 0,
            },
            node: Node {
                file: path,
                host: None,
            },
        }
    }
}

fn note_format(input: &mut Input, source: Source) {
    if !input.formats.contains(&source.name()) {
        input.formats.push(source.name());
    }
}

/// `--follow`: keep reading the last file as it grows (polling), print each new record,
/// stop when a `disarm` arrives. Bounded: one partial line of at most [`MAX_LINE`] bytes.
/// `reading` is what was read of it so far.
fn follow(state: &mut State, args: &AuditArgs, reading: Option<Reading>) -> anyhow::Result<()> {
    let path = args
        .logs
        .last()
        .filter(|p| *p != Path::new("-"))
        .ok_or_else(|| anyhow!("--follow needs a file, not stdin"))?;
    let mut reading = reading.unwrap_or_else(|| Reading::new(path));
    let mut offset = std::fs::metadata(path)?.len();
    let mut partial: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    eprintln!("egressd: following {} (Ctrl-C to stop)", path.display());
    let mut done = false;
    while !done {
        let len = match std::fs::metadata(path) {
            Ok(m) => m.len(),
            Err(_) => {
                std::thread::sleep(FOLLOW_POLL);
                continue;
            }
        };
        if len < offset {
            // Truncated or replaced: start over from its beginning.
            offset = 0;
            partial.clear();
        }
        if len == offset {
            std::thread::sleep(FOLLOW_POLL);
            continue;
        }
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        let n = file.read(&mut chunk)?;
        offset += n as u64;
        for &b in &chunk[..n] {
            if b != b'\n' {
                if partial.len() < MAX_LINE {
                    partial.push(b);
                }
                continue;
            }
            let line = std::mem::take(&mut partial);
            state.line(&line, &mut reading, |l| match l {
                Line::Record(r) => println!("{}", live_line(r)),
                Line::Lifecycle(l) if l.arm => {
                    println!(
                        "{} ARMED {} ({} programs)",
                        time_of(l.time),
                        l.sandbox,
                        l.programs
                    );
                }
                Line::Lifecycle(l) => {
                    println!(
                        "{} DISARMED {} (exit {})",
                        time_of(l.time),
                        l.sandbox,
                        l.exit_code
                            .map_or_else(|| "?".to_owned(), |c| c.to_string())
                    );
                    done = true;
                }
                _ => {}
            });
        }
        let _ = io::stdout().flush();
    }
    println!();
    state.inputs.push(reading.input);
    Ok(())
}

fn live_line(r: &Rec) -> String {
    let target = match (&r.name, r.port) {
        (Some(n), Some(p)) if r.proto != "dns" => format!("{n}:{p}"),
        (Some(n), _) => n.clone(),
        (None, _) => "-".to_owned(),
    };
    let mut s = format!(
        "{} {} {} {}",
        time_of(r.time),
        if r.allow { "allow" } else { "DENY " },
        r.proto,
        target
    );
    if let Some(rule) = &r.rule {
        s.push_str(&format!(" (rule {rule})"));
    }
    if !r.allow
        && let Some(reason) = &r.reason
    {
        s.push_str(&format!(": {reason}"));
    }
    s
}

fn time_of(t: Option<i64>) -> String {
    t.map_or_else(|| "-".to_owned(), read::format_ms)
}

/// RFC 3339, or a duration before `now_ms`: `90s`, `30m`, `2h`, `1d`, `1w`.
fn parse_time(s: &str, now_ms: i64) -> anyhow::Result<i64> {
    if let Some(t) = read::parse_rfc3339(s) {
        return Ok(t);
    }
    let bad = || {
        anyhow!("{s:?}: expected RFC 3339 (2026-11-21T21:58:00Z) or a duration such as 30m, 2h, 1d")
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: i64 = n.parse().map_err(|_| bad())?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 604_800_000,
        _ => return Err(bad()),
    };
    Ok(now_ms - n.saturating_mul(unit_ms))
}

fn policy_given(p: &PolicyArgs) -> bool {
    !(p.allow_domains.is_empty()
        && p.allow_domains_file.is_empty()
        && p.block_domains.is_empty()
        && p.block_domains_file.is_empty()
        && p.config.is_none())
}

fn write_stdout(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

fn append(path: &Path, text: &str) -> io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(text.as_bytes())
}
