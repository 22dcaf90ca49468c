//! `egressd-bench run`: the orchestrator. Sets up the namespaces, the CA and the upstream,
//! starts every target, drives each one's client through the workloads while sampling the
//! proxy in `/proc`, stops them, and finally writes the report and the curves.
//!
//! In this order:
//!
//! 1. each target is started and checked with one request (the injected header must arrive
//!    where a target injects one, and only there); its RSS at idle is read;
//! 2. the connection curve, one target at a time: hold 1, 10, 100, 1,000, 10,000 idle
//!    connections (each opened with a TLS handshake and one request), and at each level
//!    read the proxy's RSS and time new connections (setup latency); then release them;
//! 3. `reps` rounds of the throughput workloads (new connections per second, keep-alive
//!    requests per second, request latency on one connection, `bulk_per_round` bulk
//!    transfers with the proxy's CPU time around each), every target once per round, so
//!    that a change in the machine's load touches every target alike. The medians are
//!    reported.
//!
//! Every step has a time limit; a target that fails is stopped and reported as failed, and
//! the run goes on with the others.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;

use crate::{
    netns::BenchNet,
    pki, plot, policy,
    procfs::{self, Measured},
    proto::{Op, Reply, UPSTREAM_NAME},
    report,
    targets::{self, Kind, Running, Setup, Tools},
};

/// Options of `egressd-bench run`.
#[derive(Debug, Clone)]
pub struct Options {
    /// A smoke run of a few seconds per target.
    pub quick: bool,
    /// The targets to run (all when empty).
    pub only: Vec<Kind>,
    /// Repetitions of each throughput figure (the median is reported).
    pub reps: Option<usize>,
    /// Where `results.md`, `results.json`, the PNGs and the logs go.
    pub out: PathBuf,
    /// The egressd binary.
    pub egressd: PathBuf,
    /// The mitmdump program.
    pub mitmdump: Option<PathBuf>,
}

/// How much of everything: the full run or `--quick`.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Repetitions of each throughput workload.
    pub reps: usize,
    /// Duration of one new-connections run.
    pub conn_rate: Duration,
    /// Duration of one keep-alive run.
    pub keep_alive: Duration,
    /// Duration of one single-connection latency run.
    pub latency: Duration,
    /// Workers / connections of the throughput workloads.
    pub concurrency: usize,
    /// Size of the bulk transfer.
    pub bulk_bytes: u64,
    /// Bulk transfers per round (short transfers are noisy: more samples for the median).
    pub bulk_per_round: usize,
    /// Idle connections held at each step of the curve.
    pub hold_levels: Vec<usize>,
    /// Connections opened at once while climbing the curve.
    pub hold_parallel: usize,
    /// Time limit of the whole curve of one target.
    pub hold_budget: Duration,
    /// New connections timed at each step of the curve.
    pub probes: usize,
    /// Allowlist sizes of the decision micro-benchmark.
    pub policy_sizes: Vec<usize>,
    /// Time spent deciding at each size.
    pub policy_time: Duration,
    /// The descriptor limit every process of the run has.
    pub fd_limit: u64,
}

impl Plan {
    /// The full run (six to seven minutes on 2 cores).
    pub fn full() -> Self {
        Self {
            reps: 5,
            conn_rate: Duration::from_secs(2),
            keep_alive: Duration::from_secs(2),
            latency: Duration::from_secs(1),
            concurrency: 4,
            bulk_bytes: 100 << 20,
            bulk_per_round: 3,
            hold_levels: vec![1, 10, 100, 1_000, 10_000],
            hold_parallel: 64,
            hold_budget: Duration::from_secs(90),
            probes: 50,
            policy_sizes: vec![10, 100, 1_000, 10_000, 100_000],
            policy_time: Duration::from_millis(300),
            fd_limit: 0,
        }
    }

    /// Caps the curve's top so that a proxy holding that many connections (two descriptors
    /// each) stays within `fd_limit`; says so when it had to.
    pub fn fit_descriptors(&mut self, fd_limit: u64) -> Option<String> {
        self.fd_limit = fd_limit;
        let fits = usize::try_from(fd_limit.saturating_sub(1000) / 2 / 100 * 100).unwrap_or(0);
        let top = *self.hold_levels.last()?;
        if top <= fits {
            return None;
        }
        self.hold_levels.retain(|&l| l < fits);
        self.hold_levels.push(fits);
        Some(format!(
            "RLIMIT_NOFILE is {fd_limit} and cannot be raised here (no CAP_SYS_RESOURCE): \
             the connection curve stops at {fits} instead of {top} connections"
        ))
    }

    /// `--quick`: every workload once, briefly, small counts.
    pub fn quick() -> Self {
        Self {
            reps: 1,
            conn_rate: Duration::from_millis(300),
            keep_alive: Duration::from_millis(300),
            latency: Duration::from_millis(200),
            concurrency: 2,
            bulk_bytes: 8 << 20,
            bulk_per_round: 1,
            hold_levels: vec![1, 10, 100],
            hold_parallel: 16,
            hold_budget: Duration::from_secs(20),
            probes: 5,
            policy_sizes: vec![10, 100, 1_000],
            policy_time: Duration::from_millis(30),
            fd_limit: 0,
        }
    }
}

/// One throughput/latency sample.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Rate {
    /// Operations per second.
    pub per_s: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Failed operations.
    pub errors: u64,
    /// The whole machine's busy CPU time per operation, microseconds (client, upstream,
    /// proxy and kernel together; see `procfs::machine_busy_ns`).
    pub machine_cpu_us: Option<f64>,
}

/// One bulk transfer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Bulk {
    /// Throughput, 10^6 bytes per second.
    pub mb_per_s: f64,
    /// The proxy's CPU seconds per 10^9 bytes (none for `direct`).
    pub cpu_s_per_gb: Option<f64>,
    /// The whole machine's busy CPU seconds per 10^9 bytes (every target, `direct` too).
    pub machine_cpu_s_per_gb: Option<f64>,
}

/// RSS sample of the proxy.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Mem {
    /// Resident now, KiB.
    pub rss_kib: u64,
    /// Peak resident so far, KiB.
    pub hwm_kib: u64,
}

/// One step of the connection curve.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CurvePoint {
    /// Connections asked for.
    pub level: usize,
    /// Connections actually held.
    pub held: usize,
    /// Proxy RSS while holding them, KiB.
    pub rss_kib: Option<u64>,
    /// Setup latency (connect, handshake, first answer) of a new connection, median, ms.
    pub setup_p50_ms: f64,
    /// Same, 99th percentile (of few samples: read it as the worst), ms.
    pub setup_p99_ms: f64,
}

/// Everything measured for one target.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TargetResult {
    /// [`Kind::id`].
    pub id: String,
    /// [`Kind::describe`].
    pub describe: String,
    /// What the program reports as its version.
    pub version: Option<String>,
    /// `ok`, `skipped: why` or `failed: why`.
    pub status: String,
    /// Remarks (a level not reached, errors seen).
    pub notes: Vec<String>,
    /// New connections per second, per repetition.
    pub conn_rate: Vec<Rate>,
    /// Keep-alive requests per second, per repetition.
    pub keep_alive: Vec<Rate>,
    /// Requests on one connection, one at a time, per repetition.
    pub latency: Vec<Rate>,
    /// Bulk transfers, per repetition.
    pub bulk: Vec<Bulk>,
    /// Proxy memory at idle (after one request).
    pub idle: Option<Mem>,
    /// Proxy memory at the top of the curve.
    pub loaded: Option<Mem>,
    /// The connection curve.
    pub curve: Vec<CurvePoint>,
    /// Medians.
    pub summary: Summary,
}

/// The medians of a [`TargetResult`], as the table shows them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// New TLS connections per second.
    pub conn_per_s: Option<f64>,
    /// Their setup latency, median, ms.
    pub conn_p50_ms: Option<f64>,
    /// Their setup latency, 99th percentile, ms.
    pub conn_p99_ms: Option<f64>,
    /// Keep-alive requests per second.
    pub req_per_s: Option<f64>,
    /// Request latency on one connection, median, ms.
    pub lat_p50_ms: Option<f64>,
    /// Request latency on one connection, 99th percentile, ms.
    pub lat_p99_ms: Option<f64>,
    /// Bulk throughput, MB/s.
    pub bulk_mb_s: Option<f64>,
    /// Proxy CPU seconds per GB of bulk transfer.
    pub cpu_s_per_gb: Option<f64>,
    /// Machine CPU seconds per GB of bulk transfer.
    pub machine_cpu_s_per_gb: Option<f64>,
    /// Machine CPU microseconds per keep-alive request.
    pub req_cpu_us: Option<f64>,
    /// Machine CPU microseconds per new connection.
    pub conn_cpu_us: Option<f64>,
    /// Proxy RSS at idle, MiB.
    pub rss_idle_mib: Option<f64>,
    /// Proxy peak RSS with the most connections held, MiB.
    pub rss_peak_mib: Option<f64>,
    /// Connections held at that peak.
    pub held: Option<usize>,
    /// Proxy memory per idle connection, KiB (from the RSS difference).
    pub kib_per_conn: Option<f64>,
}

/// Everything a run produced.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// `full` or `quick`.
    pub mode: String,
    /// What was run.
    pub plan: Plan,
    /// Machine facts: CPUs, kernel.
    pub machine: String,
    /// Remarks about the whole run (limits of this machine).
    pub notes: Vec<String>,
    /// Per target.
    pub targets: Vec<TargetResult>,
    /// The allowlist micro-benchmark.
    pub policy: Vec<policy::Point>,
    /// Seconds the run took.
    pub secs: f64,
}

/// Runs the bench.
///
/// # Errors
///
/// Not root, or the namespaces, certificates or upstream could not be set up. A failing
/// target is reported in the results, not returned.
pub fn main(opts: &Options) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "the bench needs root (network namespaces, egressd)"
    );
    let fd_limit = crate::raise_nofile_limit();
    let started = Instant::now();
    let mut plan = if opts.quick {
        Plan::quick()
    } else {
        let mut plan = Plan::full();
        if let Some(reps) = opts.reps {
            plan.reps = reps.max(1);
        }
        plan
    };
    let mut notes = Vec::new();
    if let Some(note) = plan.fit_descriptors(fd_limit) {
        say(&note);
        notes.push(note);
    }
    let kinds: Vec<Kind> = if opts.only.is_empty() {
        Kind::ALL.to_vec()
    } else {
        opts.only.clone()
    };
    let logs = opts.out.join("logs");
    // Logs (egressd's audit logs append) are this run's only.
    let _ = fs::remove_dir_all(&logs);
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;

    let work = WorkDir::create()?;
    let bench = work.path().join("egressd-bench");
    fs::copy(std::env::current_exe()?, &bench).context("copying the bench binary")?;
    let pki = pki::generate(work.path(), UPSTREAM_NAME)?;
    let tools = Tools::find(opts.egressd.clone(), opts.mitmdump.clone());
    say(&format!(
        "{} run: {} target(s), {} repetition(s) each; logs in {}",
        if opts.quick { "quick" } else { "full" },
        kinds.len(),
        plan.reps,
        logs.display()
    ));

    let net = BenchNet::create().context("creating the bench namespaces")?;
    let mut upstream = start_upstream(&net, &bench, &pki, &logs)?;
    let setup = Setup {
        net: &net,
        work: work.path(),
        logs: &logs,
        bench: &bench,
        ca: &pki.ca,
        tools: &tools,
        fd_limit,
    };
    let load_before = load_average();
    let mut slots: Vec<Slot> = kinds.into_iter().map(|k| Slot::start(k, &setup)).collect();

    // Memory first, one target at a time, each on a proxy that has served one request.
    for slot in &mut slots {
        if slot.kind.requests_only() {
            continue;
        }
        let t = Instant::now();
        slot.step(|_, running, result| curve(running, &plan, result));
        say(&format!(
            "{}: connection curve {} ({:.0} s)",
            slot.kind,
            slot.state(),
            t.elapsed().as_secs_f64()
        ));
    }
    // Then the throughput workloads in rounds: every target once per round, so that a
    // change in the machine's load during the run touches every target alike.
    for round in 1..=plan.reps {
        let t = Instant::now();
        for slot in &mut slots {
            slot.step(|kind, running, result| workloads(kind, running, &plan, result));
        }
        say(&format!(
            "round {round}/{}: done ({:.0} s)",
            plan.reps,
            t.elapsed().as_secs_f64()
        ));
    }
    let load_after = load_average();
    let results: Vec<TargetResult> = slots.into_iter().map(Slot::finish).collect();
    // SAFETY: kill(2) on the upstream we started.
    unsafe { libc::kill(pid(&upstream), libc::SIGKILL) };
    let _ = upstream.wait();
    drop(net);

    say("allowlist decision micro-benchmark");
    let policy = policy::curve(&plan.policy_sizes, plan.policy_time);

    let run = RunResult {
        mode: if opts.quick { "quick" } else { "full" }.into(),
        plan,
        machine: format!(
            "{}; load average {load_before} before the targets ran, {load_after} after",
            machine()
        ),
        notes,
        targets: results,
        policy,
        secs: started.elapsed().as_secs_f64(),
    };
    let markdown = report::markdown(&run);
    fs::write(opts.out.join("results.md"), &markdown)?;
    fs::write(
        opts.out.join("results.json"),
        serde_json::to_string_pretty(&run)?,
    )?;
    let pngs = plot::all(&run, &opts.out)?;
    println!("{markdown}");
    say(&format!(
        "wrote {} and results.json, {} ({:.0} s in all)",
        opts.out.join("results.md").display(),
        pngs.join(", "),
        run.secs
    ));
    Ok(())
}

/// One target through the run: its result so far and, while it works, its processes.
struct Slot {
    kind: Kind,
    running: Option<Running>,
    result: TargetResult,
}

impl Slot {
    /// Starts the target and checks it: one request through it (with the injected header
    /// where it injects one), then its memory at idle.
    fn start(kind: Kind, setup: &Setup<'_>) -> Self {
        let mut slot = Slot {
            kind,
            running: None,
            result: TargetResult {
                id: kind.id().into(),
                describe: kind.describe().into(),
                version: setup.tools.version(kind),
                status: "ok".into(),
                ..TargetResult::default()
            },
        };
        if let Some(why) = setup.tools.missing(kind) {
            slot.result.status = format!("skipped: {why}");
            say(&format!("{kind}: {}", slot.result.status));
            return slot;
        }
        match targets::start(kind, setup) {
            Ok(running) => slot.running = Some(running),
            Err(e) => slot.result.status = format!("failed: {e:#}"),
        }
        slot.step(ready);
        say(&format!("{kind}: {} ({})", kind.describe(), slot.state()));
        slot
    }

    /// Runs `work` if the target is still running; a failure stops it and is recorded.
    fn step(&mut self, work: impl FnOnce(Kind, &mut Running, &mut TargetResult) -> Result<()>) {
        let Some(running) = self.running.as_mut() else {
            return;
        };
        if let Err(e) = work(self.kind, running, &mut self.result) {
            self.result.status = format!("failed: {e:#}");
            if let Some(running) = self.running.take() {
                running.stop();
            }
        }
    }

    fn state(&self) -> &str {
        &self.result.status
    }

    fn finish(mut self) -> TargetResult {
        if let Some(running) = self.running.take() {
            running.stop();
        }
        self.result.summary = summarize(&self.result);
        self.result
    }
}

fn ready(kind: Kind, running: &mut Running, result: &mut TargetResult) -> Result<()> {
    let ready = running
        .driver
        .call(&Op::Ready { timeout_ms: 30_000 }, Duration::from_secs(45))?;
    if !ready.ok {
        bail!("{}", ready.error.unwrap_or_default());
    }
    if kind.injects() && !ready.token_seen {
        bail!("the upstream did not receive the injected header");
    }
    if !kind.injects() && ready.token_seen {
        bail!("the upstream received a token header that nobody should have injected");
    }
    thread::sleep(Duration::from_millis(500));
    result.idle = running.measured.map(mem);
    Ok(())
}

/// One round of the throughput workloads.
fn workloads(
    kind: Kind,
    running: &mut Running,
    plan: &Plan,
    result: &mut TargetResult,
) -> Result<()> {
    let measured = running.measured;
    let driver = &mut running.driver;
    if !kind.requests_only() {
        let op = Op::ConnRate {
            concurrency: plan.concurrency,
            duration_ms: millis(plan.conn_rate),
        };
        let rate = measured_rate(driver, &op, plan.conn_rate, "new connections", result)?;
        result.conn_rate.push(rate);
    }
    let op = Op::KeepAlive {
        concurrency: plan.concurrency,
        duration_ms: millis(plan.keep_alive),
    };
    let keep_alive = measured_rate(driver, &op, plan.keep_alive, "keep-alive", result)?;
    result.keep_alive.push(keep_alive);
    let r = driver.call(
        &Op::KeepAlive {
            concurrency: 1,
            duration_ms: millis(plan.latency),
        },
        plan.latency + Duration::from_secs(30),
    )?;
    result.latency.push(rate(&r, "latency", &mut result.notes)?);
    if kind.requests_only() {
        return Ok(());
    }
    for _ in 0..plan.bulk_per_round {
        let cpu_before = measured.map(|m| m.cpu_ns());
        let busy_before = procfs::machine_busy_ns();
        let r = driver.call(
            &Op::Bulk {
                bytes: plan.bulk_bytes,
                timeout_ms: 120_000,
            },
            Duration::from_secs(150),
        )?;
        let cpu = measured.zip(cpu_before).map(|(m, b)| m.cpu_ns() - b);
        let busy = busy_before
            .zip(procfs::machine_busy_ns())
            .map(|(b, a)| a.saturating_sub(b));
        if !r.ok || r.secs <= 0.0 {
            bail!("bulk transfer: {}", r.error.unwrap_or_default());
        }
        #[allow(clippy::cast_precision_loss, reason = "byte counts far below 2^52")]
        let bytes = r.bytes as f64;
        result.bulk.push(Bulk {
            mb_per_s: bytes / r.secs / 1e6,
            #[allow(clippy::cast_precision_loss, reason = "nanoseconds far below 2^52")]
            cpu_s_per_gb: cpu.map(|ns| ns as f64 / 1e9 / (bytes / 1e9)),
            #[allow(clippy::cast_precision_loss, reason = "nanoseconds far below 2^52")]
            machine_cpu_s_per_gb: busy.map(|ns| ns as f64 / 1e9 / (bytes / 1e9)),
        });
    }
    Ok(())
}

/// Runs `op` (which lasts `length`) and returns its rate with the whole machine's busy CPU
/// time per operation.
fn measured_rate(
    driver: &mut targets::Driver,
    op: &Op,
    length: Duration,
    what: &str,
    result: &mut TargetResult,
) -> Result<Rate> {
    let busy_before = procfs::machine_busy_ns();
    let r = driver.call(op, length + Duration::from_secs(30))?;
    let busy = busy_before
        .zip(procfs::machine_busy_ns())
        .map(|(b, a)| a.saturating_sub(b));
    let mut rate = rate(&r, what, &mut result.notes)?;
    #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    {
        rate.machine_cpu_us = busy
            .filter(|_| r.ops > 0)
            .map(|ns| ns as f64 / 1e3 / r.ops as f64);
    }
    Ok(rate)
}

/// Climbs the connection curve, then releases the connections.
fn curve(running: &mut Running, plan: &Plan, result: &mut TargetResult) -> Result<()> {
    let measured = running.measured;
    let driver = &mut running.driver;
    let deadline = Instant::now() + plan.hold_budget;
    for &level in &plan.hold_levels {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            result.notes.push(format!(
                "curve stopped before {level} connections: over its {:?} budget",
                plan.hold_budget
            ));
            break;
        }
        let held = driver.call(
            &Op::Hold {
                total: level,
                parallel: plan.hold_parallel,
                timeout_ms: millis(left),
            },
            left + Duration::from_secs(60),
        )?;
        thread::sleep(Duration::from_millis(if level >= 1000 {
            1000
        } else {
            200
        }));
        let sample = measured.map(mem);
        let probe = driver.call(&Op::Probe { count: plan.probes }, Duration::from_secs(120))?;
        result.curve.push(CurvePoint {
            level,
            held: held.held,
            rss_kib: sample.map(|m| m.rss_kib),
            setup_p50_ms: probe.p50_us / 1000.0,
            setup_p99_ms: probe.p99_us / 1000.0,
        });
        result.loaded = sample.or(result.loaded);
        if held.held < level {
            result.notes.push(format!(
                "held {} of {level} connections ({} errors{})",
                held.held,
                held.errors,
                held.error
                    .map(|e| format!(", first: {e}"))
                    .unwrap_or_default()
            ));
            break;
        }
    }
    // The peak is read after the highest level; RSS there is already in `loaded`.
    if let (Some(m), Some(loaded)) = (measured, result.loaded.as_mut()) {
        loaded.hwm_kib = m.hwm_kib();
    }
    driver.call(&Op::Release, Duration::from_secs(60))?;
    // Let the proxy close its upstream sides before the next workload.
    thread::sleep(Duration::from_secs(2));
    Ok(())
}

fn rate(r: &Reply, what: &str, notes: &mut Vec<String>) -> Result<Rate> {
    if !r.ok {
        bail!(
            "{what}: no operation succeeded: {}",
            r.error.clone().unwrap_or_default()
        );
    }
    if r.errors > 0 {
        notes.push(format!(
            "{what}: {} errors (first: {})",
            r.errors,
            r.error.clone().unwrap_or_default()
        ));
    }
    #[allow(
        clippy::cast_precision_loss,
        reason = "operation counts far below 2^52"
    )]
    let ops = r.ops as f64;
    Ok(Rate {
        per_s: ops / r.secs.max(1e-9),
        p50_ms: r.p50_us / 1000.0,
        p99_ms: r.p99_us / 1000.0,
        errors: r.errors,
        machine_cpu_us: None,
    })
}

fn mem(m: Measured) -> Mem {
    Mem {
        rss_kib: m.rss_kib(),
        hwm_kib: m.hwm_kib(),
    }
}

/// The median of each figure over the repetitions.
fn summarize(r: &TargetResult) -> Summary {
    #[allow(clippy::cast_precision_loss, reason = "KiB counts far below 2^52")]
    let mib = |kib: u64| kib as f64 / 1024.0;
    let held = r.curve.last().map(|p| p.held);
    Summary {
        conn_per_s: median(r.conn_rate.iter().map(|x| x.per_s)),
        conn_p50_ms: median(r.conn_rate.iter().map(|x| x.p50_ms)),
        conn_p99_ms: median(r.conn_rate.iter().map(|x| x.p99_ms)),
        req_per_s: median(r.keep_alive.iter().map(|x| x.per_s)),
        lat_p50_ms: median(r.latency.iter().map(|x| x.p50_ms)),
        lat_p99_ms: median(r.latency.iter().map(|x| x.p99_ms)),
        bulk_mb_s: median(r.bulk.iter().map(|x| x.mb_per_s)),
        cpu_s_per_gb: median(r.bulk.iter().filter_map(|x| x.cpu_s_per_gb)),
        machine_cpu_s_per_gb: median(r.bulk.iter().filter_map(|x| x.machine_cpu_s_per_gb)),
        req_cpu_us: median(r.keep_alive.iter().filter_map(|x| x.machine_cpu_us)),
        conn_cpu_us: median(r.conn_rate.iter().filter_map(|x| x.machine_cpu_us)),
        rss_idle_mib: r.idle.map(|m| mib(m.rss_kib)),
        rss_peak_mib: r.loaded.map(|m| mib(m.hwm_kib.max(m.rss_kib))),
        held,
        kib_per_conn: match (r.idle, r.loaded, held) {
            #[allow(clippy::cast_precision_loss, reason = "small counts")]
            (Some(idle), Some(loaded), Some(n)) if n >= 100 => {
                Some((loaded.rss_kib.saturating_sub(idle.rss_kib)) as f64 / n as f64)
            }
            _ => None,
        },
    }
}

/// The median of `values` (mean of the middle two for an even count).
pub fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn start_upstream(net: &BenchNet, bench: &Path, pki: &pki::Files, logs: &Path) -> Result<Child> {
    let log = fs::File::create(logs.join("upstream.log"))?;
    let mut child = net
        .in_upstream()
        .arg(bench)
        .arg("upstream")
        .arg("--listen")
        .arg(BenchNet::upstream_addr().to_string())
        .arg("--cert")
        .arg(&pki.cert)
        .arg("--key")
        .arg(&pki.key)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .context("starting the upstream")?;
    let stdout = child.stdout.take().context("upstream stdout")?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(15)) {
        Ok(line) if line.trim() == "ready" => Ok(child),
        other => {
            // SAFETY: kill(2) on the child we just started.
            unsafe { libc::kill(pid(&child), libc::SIGKILL) };
            let _ = child.wait();
            bail!(
                "the upstream did not start ({other:?}); see {}",
                logs.join("upstream.log").display()
            )
        }
    }
}

fn pid(child: &Child) -> i32 {
    i32::try_from(child.id()).expect("pids fit in i32")
}

fn machine() -> String {
    let cpus = thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} CPUs ({model}), Linux {}", kernel.trim())
}

/// The one-minute load average, from `/proc/loadavg`.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// A private, world-readable scratch folder (`/tmp/egressd-bench-<pid>`): the sandboxed
/// client runs as an unprivileged user and must read the binary and the CA, wherever the
/// checkout lives. Removed on drop.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create() -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("egressd-bench-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn say(msg: &str) {
    eprintln!("bench: {msg}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), Some(2.0));
        assert_eq!(median([4.0, 1.0, 2.0, 3.0].into_iter()), Some(2.5));
        assert_eq!(median(std::iter::empty()), None);
    }
}
