//! Audit lines as OpenTelemetry log records over OTLP, for fleets whose audit goes to a
//! collector or a SIEM rather than to per-job files.
//!
//! The audit log file stays the source of truth: every line written there is also offered
//! to [`OtlpExport`], which never blocks the connection that wrote it. A bounded queue feeds
//! one task that sends batches ([`MAX_BATCH`] records, or what arrived within
//! [`BATCH_DELAY`]) as one `ExportLogsServiceRequest` each, and sends a batch again, with
//! exponential backoff and jitter, while the collector is down or busy. Nothing is lost
//! silently: every record ends up in exactly one of [`OtlpCounts`]'s counters (exported,
//! dropped because the queue was full, refused by the collector, rejected in a partial
//! success, or unsent when the run ended), the first loss is printed on stderr at once, and
//! the exit summary gives the counts.
//!
//! The record mapping is `map.rs`, the wire `send.rs`, the messages `proto.rs`. egressd
//! writes the OTLP messages itself rather than through the OpenTelemetry SDK: the SDK's batch
//! processor keeps its count of dropped records private and logs export failures without
//! counting them, which is the one thing an audit trail cannot have.

mod map;
mod proto;
mod send;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use self::map::parse_otel_list;
use self::proto::{
    ExportLogsServiceRequest, InstrumentationScope, LogRecord, Resource, ResourceLogs, ScopeLogs,
};
pub use self::send::OtlpProtocol;
use self::send::{Collector, Sent};
use crate::provenance::Provenance;

/// The most records in one export request.
pub const MAX_BATCH: usize = 512;
/// How long the first record of a batch waits for others.
pub const BATCH_DELAY: Duration = Duration::from_millis(500);
/// The first wait before sending a batch again.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest wait between two tries (the collector's own `Retry-After` may ask for more).
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What `--otlp-*` asked for.
#[derive(Clone)]
pub struct OtlpConfig {
    /// `http://host:4317` (gRPC) or `https://host:4318` (HTTP; `/v1/logs` is added to a
    /// URI without a path).
    pub endpoint: String,
    /// gRPC or HTTP with protobuf.
    pub protocol: OtlpProtocol,
    /// Headers sent with every request (an API key: never printed).
    pub headers: Vec<(String, String)>,
    /// Extra CA certificates (PEM) for an `https://` collector.
    pub ca_pem: Option<Vec<u8>>,
    /// Records held while the collector is slow or down: this many queued, and at most this
    /// many in the batch being sent.
    pub queue: usize,
    /// How long one request may take.
    pub timeout: Duration,
    /// `host.name` of the resource.
    pub host: Option<String>,
    /// `OTEL_RESOURCE_ATTRIBUTES`: more resource attributes (`k8s.node.name=...`).
    pub resource_attributes: Option<String>,
    /// `OTEL_SERVICE_NAME` (default `egressd`).
    pub service_name: Option<String>,
}

impl fmt::Debug for OtlpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpConfig")
            .field("endpoint", &self.endpoint)
            .field("protocol", &self.protocol)
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

/// Where every record offered went, so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OtlpCounts {
    /// The collector's address (for messages).
    pub endpoint: String,
    /// Records the collector took.
    pub exported: u64,
    /// Records dropped because the queue was full (the collector was down too long).
    pub dropped: u64,
    /// Records in requests the collector refused for good (bad request, unauthenticated).
    pub refused: u64,
    /// Records the collector rejected in a partial success.
    pub rejected: u64,
    /// Records still queued or being sent when the run ended.
    pub unsent: u64,
    /// The last error, for the summary.
    pub last_error: Option<String>,
}

impl OtlpCounts {
    /// Records that did not reach the collector.
    pub fn lost(&self) -> u64 {
        self.dropped + self.refused + self.rejected + self.unsent
    }
}

impl fmt::Display for OtlpCounts {
    /// `egressd: OTLP: N audit lines sent to URL`, and an error line with each count when
    /// any line did not reach the collector.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "egressd: OTLP: {} audit lines sent to {}",
            self.exported, self.endpoint
        )?;
        if self.lost() > 0 {
            write!(
                f,
                "\negressd: error: {} audit lines did NOT reach the OTLP collector: {} dropped \
                 (queue full), {} refused, {} rejected by the collector, {} unsent at exit \
                 (last error: {}); an audit log file (--audit-log) keeps every line",
                self.lost(),
                self.dropped,
                self.refused,
                self.rejected,
                self.unsent,
                self.last_error.as_deref().unwrap_or("none")
            )?;
        }
        Ok(())
    }
}

/// The counters the worker and the offering side share.
#[derive(Default)]
struct Shared {
    exported: AtomicU64,
    dropped: AtomicU64,
    refused: AtomicU64,
    rejected: AtomicU64,
    unsent: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// The first loss was printed.
    told: AtomicBool,
    /// When the worker must be done, once asked to stop.
    stop_by: Mutex<Option<Instant>>,
}

impl Shared {
    /// Counts `n` lost records in `counter`, printing the first loss loudly.
    fn lose(&self, counter: &AtomicU64, n: u64, why: &str, endpoint: &str) {
        counter.fetch_add(n, Ordering::Relaxed);
        *lock(&self.last_error) = Some(why.to_owned());
        if !self.told.swap(true, Ordering::Relaxed) {
            eprintln!(
                "egressd: error: audit records are not reaching the OTLP collector at \
                 {endpoint} ({why}); they are being counted, and an audit log file \
                 (--audit-log) keeps every line"
            );
        }
    }
}

/// The export: audit lines go in with [`offer`](Self::offer); [`finish`](Self::finish)
/// sends what is queued and stops. The sending runs on a thread of its own (with a
/// single-threaded runtime), so that it outlives the proxy's runtime: the last lifecycle
/// line of a run is written after that runtime has stopped.
pub struct OtlpExport {
    tx: mpsc::Sender<Bytes>,
    shared: Arc<Shared>,
    endpoint: String,
    stop: CancellationToken,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl fmt::Debug for OtlpExport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpExport")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl OtlpExport {
    /// Starts the export thread, with `provenance` on the resource. `thread_setup` runs
    /// first on that thread (the daemon drops the thread's capabilities there: sending
    /// needs none); if it fails, nothing is sent and every record counts as refused.
    ///
    /// # Errors
    ///
    /// The endpoint, a header or the CA file is not usable, or the thread cannot start.
    pub fn start(
        config: &OtlpConfig,
        provenance: Option<&Provenance>,
        thread_setup: Box<dyn FnOnce() -> Result<(), String> + Send>,
    ) -> Result<Self, String> {
        let collector = Collector::new(
            &config.endpoint,
            config.protocol,
            &config.headers,
            config.ca_pem.as_deref(),
            config.timeout,
        )?;
        let endpoint = collector.endpoint();
        let resource = map::resource(
            provenance,
            config.host.as_deref(),
            config.resource_attributes.as_deref(),
            config.service_name.as_deref(),
        );
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let shared = Arc::new(Shared::default());
        let stop = CancellationToken::new();
        let worker = Worker {
            batch_limit: config.queue.clamp(1, MAX_BATCH),
            rx,
            collector,
            resource,
            shared: Arc::clone(&shared),
            stop: stop.clone(),
            endpoint: endpoint.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("egressd-otlp".to_owned())
            .spawn(move || {
                let runtime = match thread_setup().and_then(|()| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| format!("starting its runtime: {e}"))
                }) {
                    Ok(r) => r,
                    Err(e) => return worker.refuse_all(&format!("the OTLP export failed: {e}")),
                };
                runtime.block_on(worker.run());
            })
            .map_err(|e| format!("starting the OTLP export thread: {e}"))?;
        Ok(Self {
            tx,
            shared,
            endpoint,
            stop,
            worker: Mutex::new(Some(handle)),
        })
    }

    /// Queues one audit line (a JSON object); never waits. A full queue drops the line and
    /// counts it.
    pub(crate) fn offer(&self, line: Bytes) {
        if self.tx.try_send(line).is_err() {
            self.shared.lose(
                &self.shared.dropped,
                1,
                "the queue is full: the collector is down or too slow",
                &self.endpoint,
            );
        }
    }

    /// Where every record went so far.
    pub fn counts(&self) -> OtlpCounts {
        let s = &self.shared;
        OtlpCounts {
            endpoint: self.endpoint.clone(),
            exported: s.exported.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            refused: s.refused.load(Ordering::Relaxed),
            rejected: s.rejected.load(Ordering::Relaxed),
            unsent: s.unsent.load(Ordering::Relaxed),
            last_error: lock(&s.last_error).clone(),
        }
    }

    /// Sends what is queued, trying for at most `within` (blocking the caller meanwhile),
    /// then stops; what could not be sent by then is counted as unsent. Later offers are
    /// dropped and counted.
    pub fn finish(&self, within: Duration) {
        *lock(&self.shared.stop_by) = Some(Instant::now() + within);
        self.stop.cancel();
        let handle = lock(&self.worker).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

/// The task that batches and sends.
struct Worker {
    /// The most records in one request.
    batch_limit: usize,
    rx: mpsc::Receiver<Bytes>,
    collector: Collector,
    resource: Resource,
    shared: Arc<Shared>,
    stop: CancellationToken,
    endpoint: String,
}

impl Worker {
    /// Takes every record offered and counts it refused (the thread could not be set up),
    /// until asked to stop.
    fn refuse_all(mut self, why: &str) {
        self.shared
            .lose(&self.shared.refused, 0, why, &self.endpoint);
        loop {
            match self.rx.try_recv() {
                Ok(_line) => {
                    self.shared.refused.fetch_add(1, Ordering::Relaxed);
                }
                Err(mpsc::error::TryRecvError::Empty) if !self.stop.is_cancelled() => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(_) => break,
            }
        }
    }

    async fn run(mut self) {
        let mut batch: Vec<LogRecord> = Vec::with_capacity(self.batch_limit);
        while self.fill(&mut batch).await {
            if !batch.is_empty() {
                self.deliver(&mut batch).await;
            }
            if self.past_deadline() {
                break;
            }
        }
        // Stopped: whatever is still queued is not going out.
        self.rx.close();
        let mut left = batch.len() as u64;
        while self.rx.try_recv().is_ok() {
            left += 1;
        }
        if left > 0 {
            let why = "the run ended before they could be sent";
            self.shared
                .lose(&self.shared.unsent, left, why, &self.endpoint);
        }
    }

    /// Fills `batch`; false once there is nothing more to do (stopped and drained).
    async fn fill(&mut self, batch: &mut Vec<LogRecord>) -> bool {
        let stopping = self.stop.is_cancelled();
        let first = if stopping {
            match self.rx.try_recv() {
                Ok(line) => line,
                Err(_) => return false,
            }
        } else {
            tokio::select! {
                line = self.rx.recv() => match line {
                    Some(line) => line,
                    None => return false,
                },
                () = self.stop.cancelled() => return true,
            }
        };
        self.push(batch, &first);
        let until = tokio::time::Instant::now() + BATCH_DELAY;
        while batch.len() < self.batch_limit {
            if self.stop.is_cancelled() {
                match self.rx.try_recv() {
                    Ok(line) => self.push(batch, &line),
                    Err(_) => break,
                }
                continue;
            }
            tokio::select! {
                line = self.rx.recv() => match line {
                    Some(line) => self.push(batch, &line),
                    None => break,
                },
                () = tokio::time::sleep_until(until) => break,
                () = self.stop.cancelled() => {}
            }
        }
        true
    }

    fn push(&self, batch: &mut Vec<LogRecord>, line: &[u8]) {
        match map::log_record(line, now_ns()) {
            Some(record) => batch.push(record),
            // Only the audit log's own JSON objects are offered: this is a bug, but still
            // a record that did not go out.
            None => self.shared.lose(
                &self.shared.refused,
                1,
                "an audit line was not a JSON object",
                &self.endpoint,
            ),
        }
    }

    /// Sends `batch` until the collector takes or refuses it, or the deadline passes.
    async fn deliver(&mut self, batch: &mut Vec<LogRecord>) {
        let n = batch.len() as u64;
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(self.resource.clone()),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: "egressd.audit".to_owned(),
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                    }),
                    log_records: std::mem::take(batch),
                }],
                schema_url: String::new(),
            }],
        };
        let mut backoff = FIRST_BACKOFF;
        let mut down_since: Option<Instant> = None;
        loop {
            // Once stopping, no request outlives the deadline.
            let left = if self.stop.is_cancelled() {
                let stop_by = *lock(&self.shared.stop_by);
                stop_by.map(|by| by.saturating_duration_since(Instant::now()))
            } else {
                None
            };
            if left.is_some_and(|l| l.is_zero()) {
                let why = "the run ended before they could be sent";
                self.shared
                    .lose(&self.shared.unsent, n, why, &self.endpoint);
                return;
            }
            match self.collector.export(&request, left).await {
                Sent::Taken { rejected, message } => {
                    let rejected = rejected.min(n);
                    self.shared
                        .exported
                        .fetch_add(n - rejected, Ordering::Relaxed);
                    if rejected > 0 {
                        let why = format!("the collector rejected {rejected} records: {message}");
                        self.shared
                            .lose(&self.shared.rejected, rejected, &why, &self.endpoint);
                    }
                    if let Some(since) = down_since {
                        tracing::info!(
                            endpoint = %self.endpoint,
                            after_ms = since.elapsed().as_millis() as u64,
                            "the OTLP collector takes audit records again"
                        );
                    }
                    return;
                }
                Sent::Refused(why) => {
                    self.shared
                        .lose(&self.shared.refused, n, &why, &self.endpoint);
                    return;
                }
                Sent::Retry { why, after } => {
                    if down_since.is_none() {
                        down_since = Some(Instant::now());
                        tracing::warn!(
                            endpoint = %self.endpoint,
                            error = %why,
                            "the OTLP collector is not taking audit records; retrying (they queue meanwhile)"
                        );
                    }
                    *lock(&self.shared.last_error) = Some(why);
                    let wait = after.unwrap_or_else(|| jitter(backoff));
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    if self.stop.is_cancelled() {
                        let stop_by = *lock(&self.shared.stop_by);
                        if stop_by.is_none_or(|by| Instant::now() + wait >= by) {
                            let why = "the run ended while the collector was unreachable";
                            self.shared
                                .lose(&self.shared.unsent, n, why, &self.endpoint);
                            return;
                        }
                        tokio::time::sleep(wait).await;
                    } else {
                        tokio::select! {
                            () = tokio::time::sleep(wait) => {}
                            // Asked to stop: try again now, then by the deadline.
                            () = self.stop.cancelled() => {}
                        }
                    }
                }
            }
        }
    }

    fn past_deadline(&self) -> bool {
        self.stop.is_cancelled() && lock(&self.shared.stop_by).is_none_or(|by| Instant::now() >= by)
    }
}

/// `d` ± 20%.
fn jitter(d: Duration) -> Duration {
    let factor = 0.8 + rand::random::<f64>() * 0.4;
    d.mul_f64(factor)
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
