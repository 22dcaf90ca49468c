//! Audit records: one per connection (TLS, loopback, unknown) and one per plain-HTTP request.
//!
//! A [`Record`] is built from the stage results at the end of a connection or request and
//! handed to [`AuditLog::record`] exactly once; stages never log audit lines themselves. The
//! log appends one JSON object per line to an optional file, flushed per record, and keeps an
//! in-memory [`Summary`] for the one line the daemon prints on stderr at exit.
//!
//! Besides traffic records the log carries two lifecycle lines per run, written by the daemon
//! through [`AuditLog::lifecycle`]: `{"event":"arm",...}` once every kernel program is
//! attached and the listeners are serving, and `{"event":"disarm",...}` when the run ends.
//! They prove enforcement (`egressd audit` checks that every record falls between the two) and
//! are never counted in the [`Summary`]. Traffic records have no `event` field.
//!
//! # Provenance
//!
//! Once the daemon has set the run's [`ProvenanceStatus`] ([`AuditLog::with_provenance`]),
//! every line, traffic and lifecycle alike, carries `"provenance"`: the verified GitHub claims
//! of the run (`{"issuer": ..., "actor": "octocat", "actor_id": "583231", "repository": ...,
//! "job_workflow_ref": ..., "run_id": ..., ...}`), or `null` when there are none. Lifecycle
//! lines then also say why in `"provenance_absent"`. Only verified claims are ever written.
//!
//! # Security
//!
//! Records never hold header values, query strings or bodies: `path` is the path only, since
//! query strings often carry secrets.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::provenance::{Provenance, ProvenanceStatus};

mod awf;
pub mod otlp;

pub use awf::{AccessLine, AwfLog, HostField, TOKEN_USAGE_SCHEMA, TokenUsageLine};

/// The most distinct denied names the summary keeps (the rest are only counted).
const MAX_DENIED_NAMES: usize = 64;

/// Identical denials written one by one per second; past this, they are counted and written
/// as one line with `"repeated": N` when the second is over (or the run ends), so that a
/// sandbox retrying in a tight loop cannot fill the disk with the same line.
pub const COALESCE_AFTER: u32 = 10;

/// The most distinct denials [`Coalescer`] tracks in one second (then it starts over).
const COALESCE_KEYS: usize = 4096;

/// A line the [`Coalescer`] can hold: what makes two of them identical, and its count.
trait Coalesced: Clone {
    /// Identical lines have equal keys.
    type Key: std::hash::Hash + Eq;
    fn key(&self) -> Self::Key;
    fn repeated(&mut self) -> &mut Option<u64>;
}

impl Coalesced for Record {
    /// Sandbox, protocol, name, port and reason.
    type Key = (Arc<str>, Proto, Option<String>, Option<u16>, String);
    fn key(&self) -> Self::Key {
        (
            Arc::clone(&self.sandbox),
            self.proto,
            self.name.clone(),
            self.port,
            self.reason.clone(),
        )
    }
    fn repeated(&mut self) -> &mut Option<u64> {
        &mut self.repeated
    }
}

/// Identical denials of the current second: how many were written, and the first one not
/// written with how many it stands for.
#[derive(Debug)]
struct Coalescer<T: Coalesced> {
    since: Option<std::time::Instant>,
    seen: std::collections::HashMap<T::Key, (u32, Option<T>)>,
}

impl<T: Coalesced> Default for Coalescer<T> {
    fn default() -> Self {
        Self {
            since: None,
            seen: std::collections::HashMap::new(),
        }
    }
}

impl<T: Coalesced> Coalescer<T> {
    /// Whether `line` (a denial) is written now; otherwise it is counted. Returns the lines
    /// that stand for the counted denials of a second that is over.
    fn admit(&mut self, line: &T, now: std::time::Instant) -> (bool, Vec<T>) {
        let mut due = Vec::new();
        let over = self
            .since
            .is_none_or(|s| now.duration_since(s) >= std::time::Duration::from_secs(1));
        if over || self.seen.len() >= COALESCE_KEYS {
            due = self.drain();
            self.since = Some(now);
        }
        let (written, held) = self.seen.entry(line.key()).or_default();
        if *written < COALESCE_AFTER {
            *written += 1;
            return (true, due);
        }
        match held {
            Some(first) => *first.repeated().get_or_insert(0) += 1,
            None => {
                let mut first = line.clone();
                *first.repeated() = Some(1);
                *held = Some(first);
            }
        }
        (false, due)
    }

    /// The held lines, and a fresh start.
    fn drain(&mut self) -> Vec<T> {
        self.seen
            .drain()
            .filter_map(|(_, (_, held))| held)
            .collect()
    }
}

/// The protocol a record describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Proto {
    /// A plain-HTTP request.
    Http,
    /// A connection to a loopback destination, relayed without classification.
    Loopback,
    /// A TLS connection (pass-through or refused).
    Tls,
    /// A connection that never said where it was going.
    Unknown,
    /// A DNS query to the sandbox's DNS listener (UDP, or TCP to port 53).
    Dns,
    /// A request on an intercepted (TLS-terminated) connection.
    Https,
}

/// The decision a record reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum AuditDecision {
    /// Policy allowed the destination (the upstream may still have been unreachable).
    Allow,
    /// egressd refused the traffic.
    Deny,
}

/// One audit line. Field order is the JSON field order.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Record {
    /// RFC 3339, UTC.
    pub time: String,
    pub sandbox: Arc<str>,
    pub client: SocketAddr,
    pub orig_dst: Option<SocketAddr>,
    pub proto: Proto,
    /// The SNI or Host the decision was made on; `None` when there was none.
    pub name: Option<String>,
    pub port: Option<u16>,
    pub decision: AuditDecision,
    /// `false` for a denial that audit-only mode let through (absent otherwise).
    #[serde(skip_serializing_if = "is_true")]
    pub enforced: bool,
    /// The deciding rule (`Entry`'s `Display`), if any.
    pub rule: Option<String>,
    pub reason: String,
    /// The policy's reason as a stable code (`not_allowlisted`, `Reason::code`), when a
    /// policy decision made the record; readers match it rather than the English text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    /// The address actually dialled.
    pub upstream: Option<SocketAddr>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_ms: u64,
    /// Pass-through: how the bytes moved after the decision, `kernel` (the in-kernel relay)
    /// or `splice`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Path only, never the query string.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The ClientHello carried the ECH extension (the name is its outer SNI).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ech: bool,
    /// DNS: the query type (`A`, `AAAA`, `TXT`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qtype: Option<String>,
    /// DNS: how many answer records were sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answers: Option<u32>,
    /// HTTP status sent to the client (intercepted requests).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The credential injected (its name, never its value).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// Where that credential came from (`github-oidc`, `entra`, `env`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_source: Option<String>,
    /// Seconds the injected token had left (absent for static secrets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_expires_in_s: Option<u64>,
    /// SPIFFE rules: the SPIFFE ID of the X.509-SVID egressd presented to the upstream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spiffe_presented: Option<String>,
    /// SPIFFE rules: the upstream's SPIFFE ID, verified against the Workload API's bundle and
    /// allowed by the rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spiffe_verified: Option<String>,
    /// This line stands for this many identical denials (same protocol, name, port and
    /// reason) that came faster than [`COALESCE_AFTER`] a second and were not written one by
    /// one; absent for a line that stands for itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeated: Option<u64>,
    /// Policy let it go ahead, and it failed or ended early: the client went away, the
    /// upstream could not be reached or answered nothing, a token could not be minted. The
    /// exit summary counts these apart from policy denials. Written only when true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub failed: bool,
}

/// For `skip_serializing_if`: `enforced` is written only when it is false.
#[allow(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde passes a reference"
)]
fn is_true(b: &bool) -> bool {
    *b
}

impl Record {
    /// Records that the connection or request went ahead and then failed (see
    /// [`failed`](Self::failed)).
    pub(crate) fn went_ahead_and_failed(&mut self, decision: &egressd_config::Decision) {
        self.went_ahead(decision);
        self.failed = true;
    }

    /// Records the decision of a connection or request that goes ahead: `allow`, or in
    /// audit-only mode a `deny` that was not enforced.
    pub(crate) fn went_ahead(&mut self, decision: &egressd_config::Decision) {
        if decision.action == egressd_config::Action::Deny {
            self.decision = AuditDecision::Deny;
            self.enforced = false;
        } else {
            self.decision = AuditDecision::Allow;
        }
    }

    /// A record stamped now, denied with `reason`, with nothing else known yet.
    pub(crate) fn new(
        sandbox: &Arc<str>,
        client: SocketAddr,
        orig_dst: Option<SocketAddr>,
        proto: Proto,
    ) -> Self {
        Self {
            time: now_rfc3339(),
            sandbox: Arc::clone(sandbox),
            client,
            orig_dst,
            proto,
            name: None,
            port: orig_dst.map(|o| o.port()),
            decision: AuditDecision::Deny,
            enforced: true,
            rule: None,
            reason: String::new(),
            code: None,
            upstream: None,
            bytes_up: 0,
            bytes_down: 0,
            duration_ms: 0,
            relay: None,
            method: None,
            path: None,
            ech: false,
            qtype: None,
            answers: None,
            status: None,
            credential: None,
            token_source: None,
            token_expires_in_s: None,
            spiffe_presented: None,
            spiffe_verified: None,
            repeated: None,
            failed: false,
        }
    }

    /// The name a summary lists for a denial: the name, else the original destination IP.
    fn summary_name(&self) -> std::borrow::Cow<'_, str> {
        match (&self.name, self.orig_dst) {
            (Some(n), _) => n.as_str().into(),
            (None, Some(o)) => o.ip().to_string().into(),
            (None, None) => "unknown destination".into(),
        }
    }
}

/// A Unix-socket connection or datagram the kernel refused, for [`AuditLog::unix_denied`].
#[derive(Debug, Clone)]
pub struct UnixDenial<'a> {
    /// `connect` or `sendmsg`.
    pub op: &'a str,
    /// The socket path as the process gave it (`@name` for an abstract socket).
    pub path: &'a str,
    /// The calling process (thread-group id, in the host's PID namespace).
    pub pid: u32,
    /// Why it was refused.
    pub reason: &'a str,
    /// The rule that would allow it (`--allow-unix PATH`), when there is one.
    pub suggest: Option<String>,
}

/// The audit line of a refused Unix socket.
#[derive(Debug, Clone, Serialize)]
struct UnixLine {
    time: String,
    sandbox: String,
    proto: &'static str,
    name: String,
    decision: AuditDecision,
    rule: Option<String>,
    reason: String,
    op: String,
    pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    suggest: Option<String>,
    /// As [`Record::repeated`].
    #[serde(skip_serializing_if = "Option::is_none")]
    repeated: Option<u64>,
}

impl Coalesced for UnixLine {
    /// Sandbox, path, operation and reason (not the pid: a retry loop forks).
    type Key = (String, String, String, String);
    fn key(&self) -> Self::Key {
        (
            self.sandbox.clone(),
            self.name.clone(),
            self.op.clone(),
            self.reason.clone(),
        )
    }
    fn repeated(&mut self) -> &mut Option<u64> {
        &mut self.repeated
    }
}

/// The audit log: an optional JSONL file plus an in-memory [`Summary`].
///
/// A line that belongs to a sandbox (its `sandbox` field), so the sandbox's Kubernetes
/// metadata can go on it.
trait OfSandbox {
    fn sandbox(&self) -> &str;
}

impl OfSandbox for Record {
    fn sandbox(&self) -> &str {
        &self.sandbox
    }
}

impl OfSandbox for UnixLine {
    fn sandbox(&self) -> &str {
        &self.sandbox
    }
}

impl OfSandbox for Lifecycle {
    fn sandbox(&self) -> &str {
        &self.sandbox
    }
}

/// Where a sandbox runs on Kubernetes: written as the `k8s` object of every line of that
/// sandbox (and as `k8s.*` attributes over OTLP), set by the node agent per pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct K8sMeta {
    /// The node's name.
    pub node: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The pod's UID.
    pub pod_uid: String,
    /// The runner scale set (ARC's `actions.github.com/scale-set-name` label).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale_set: Option<String>,
    /// The policy the pod got.
    pub policy: String,
}

/// Shared by every connection task (`Arc<AuditLog>`); one record is one `write` call on the
/// file, so lines from concurrent connections never interleave.
#[derive(Debug)]
pub struct AuditLog {
    file: Option<Mutex<LogFile>>,
    summary: Mutex<Summary>,
    /// The run's provenance; `None` until the daemon sets it (then every line carries it).
    provenance: Option<ProvenanceStatus>,
    /// AWF-format `access.log` and `audit.jsonl`, when the run asked for them (`egressd awf`).
    awf: Option<AwfLog>,
    /// Repeated identical denials, written once per second with a count.
    coalescer: Mutex<Coalescer<Record>>,
    /// The same for refused Unix sockets.
    unix_coalescer: Mutex<Coalescer<UnixLine>>,
    /// Every line also goes to an OTLP collector, once the run sets it.
    otlp: std::sync::OnceLock<otlp::OtlpExport>,
    /// Kubernetes metadata by sandbox name (the node agent's pods).
    k8s: std::sync::RwLock<std::collections::HashMap<String, Arc<K8sMeta>>>,
}

impl AuditLog {
    /// Opens (creating, appending) the JSONL file at `path`, or keeps records in memory only
    /// when `path` is `None`.
    ///
    /// # Errors
    ///
    /// Opening the file failed (missing directory, permissions).
    pub fn new(path: Option<&Path>) -> io::Result<Self> {
        let file = match path {
            Some(p) => Some(Mutex::new(LogFile {
                file: OpenOptions::new().create(true).append(true).open(p)?,
                broken: false,
            })),
            None => None,
        };
        Ok(Self {
            file,
            summary: Mutex::new(Summary::default()),
            provenance: None,
            awf: None,
            coalescer: Mutex::new(Coalescer::default()),
            unix_coalescer: Mutex::new(Coalescer::default()),
            otlp: std::sync::OnceLock::new(),
            k8s: std::sync::RwLock::default(),
        })
    }

    /// Puts `meta` on every line of `sandbox` from now on (`None` removes it).
    pub fn set_k8s(&self, sandbox: &str, meta: Option<K8sMeta>) {
        let mut map = self
            .k8s
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match meta {
            Some(meta) => {
                map.insert(sandbox.to_owned(), Arc::new(meta));
            }
            None => {
                map.remove(sandbox);
            }
        }
    }

    /// From now on also sends every line (traffic and lifecycle) to an OTLP collector (see
    /// [`otlp`]); the file, when there is one, stays the source of truth. Only the first
    /// export set is kept.
    pub fn export_to(&self, export: otlp::OtlpExport) {
        let _ = self.otlp.set(export);
    }

    /// Sends the lines still queued for the OTLP collector, for at most `within` (blocking),
    /// and stops the export: what is left is counted as unsent. Call after the last line.
    pub fn finish_export(&self, within: std::time::Duration) {
        if let Some(export) = self.otlp.get() {
            export.finish(within);
        }
    }

    /// Stamps every line from now on with the run's provenance (see the module docs).
    #[must_use]
    pub fn with_provenance(mut self, status: ProvenanceStatus) -> Self {
        self.provenance = Some(status);
        self
    }

    /// Also writes every traffic record to AWF's `access.log` and `audit.jsonl` (see
    /// [`AwfLog`]); lifecycle lines are not written there.
    #[must_use]
    pub fn with_awf(mut self, awf: AwfLog) -> Self {
        self.awf = Some(awf);
        self
    }

    /// Whether [`token_usage`](Self::token_usage) writes anywhere (the run keeps AWF logs).
    pub(crate) fn keeps_token_usage(&self) -> bool {
        self.awf.is_some()
    }

    /// Writes a `token-usage.jsonl` line when the run keeps AWF logs (else nothing).
    pub(crate) fn token_usage(&self, line: &awf::TokenUsageLine<'_>) {
        if let Some(awf) = &self.awf {
            awf.token_usage(line);
        }
    }

    /// A snapshot of the counts so far.
    pub fn summary(&self) -> Summary {
        let mut summary = lock(&self.summary).clone();
        summary.otlp = self.otlp.get().map(otlp::OtlpExport::counts);
        summary
    }

    /// Writes `record` as one line and counts it. A failed write is logged, never fatal: the
    /// traffic decision has already been enforced.
    pub(crate) fn record(&self, record: &Record) {
        match record.decision {
            AuditDecision::Allow => tracing::debug!(
                name = record.name.as_deref(),
                port = record.port,
                upstream = ?record.upstream,
                "allowed"
            ),
            AuditDecision::Deny => tracing::info!(
                name = record.name.as_deref(),
                port = record.port,
                reason = %record.reason,
                "denied"
            ),
        }
        lock(&self.summary).add(record);
        if record.decision == AuditDecision::Deny {
            let (write, due) = lock(&self.coalescer).admit(record, std::time::Instant::now());
            for held in &due {
                self.write_line(held, false);
            }
            if !write {
                return;
            }
        }
        self.write_line(record, false);
        if let Some(awf) = &self.awf {
            awf.record(record);
        }
    }

    /// Writes and counts a Unix-socket connection the kernel refused (the eBPF
    /// `connect_unix`/`sendmsg_unix` hooks): `{"proto":"unix","name":"unix:/run/x.sock",
    /// "decision":"deny","op":"connect","pid":...,"reason":...,"suggest":...}`.
    pub fn unix_denied(&self, sandbox: &str, denial: &UnixDenial<'_>) {
        let line = UnixLine {
            time: now_rfc3339(),
            sandbox: sandbox.to_owned(),
            proto: "unix",
            name: format!("unix:{}", denial.path),
            decision: AuditDecision::Deny,
            rule: None,
            reason: denial.reason.to_owned(),
            op: denial.op.to_owned(),
            pid: denial.pid,
            suggest: denial.suggest.clone(),
            repeated: None,
        };
        tracing::info!(path = denial.path, pid = denial.pid, "Unix socket refused");
        {
            let mut summary = lock(&self.summary);
            summary.denied += 1;
            summary.name_denial(&line.name, &line.reason);
        }
        let (write, due) = lock(&self.unix_coalescer).admit(&line, std::time::Instant::now());
        for held in &due {
            self.write_line(held, false);
        }
        if write {
            self.write_line(&line, false);
        }
    }

    /// Writes a lifecycle line (`arm`/`disarm`), stamped now unless `event.time` is set. Not
    /// counted in the [`Summary`]; a failed write is logged, never fatal.
    pub fn lifecycle(&self, event: &Lifecycle) {
        // The counted denials go out before the run's end is recorded.
        let held = lock(&self.coalescer).drain();
        for record in &held {
            self.write_line(record, false);
        }
        let held = lock(&self.unix_coalescer).drain();
        for line in &held {
            self.write_line(line, false);
        }
        if event.time.is_empty() {
            let mut stamped = event.clone();
            stamped.time = now_rfc3339();
            self.write_line(&stamped, true);
        } else {
            self.write_line(event, true);
        }
    }

    /// One JSON line, one `write` call, flushed; with the provenance fields once set.
    fn write_line<T: Serialize + OfSandbox>(&self, value: &T, lifecycle: bool) {
        /// `value`'s fields followed by the sandbox's Kubernetes metadata and the provenance
        /// fields.
        #[derive(Serialize)]
        struct Stamped<'a, T> {
            #[serde(flatten)]
            value: &'a T,
            #[serde(skip_serializing_if = "Option::is_none")]
            k8s: Option<&'a K8sMeta>,
            provenance: Option<&'a Provenance>,
            #[serde(skip_serializing_if = "Option::is_none")]
            provenance_absent: Option<&'a str>,
        }
        /// `value`'s fields followed by the sandbox's Kubernetes metadata.
        #[derive(Serialize)]
        struct Placed<'a, T> {
            #[serde(flatten)]
            value: &'a T,
            #[serde(skip_serializing_if = "Option::is_none")]
            k8s: Option<&'a K8sMeta>,
        }
        if self.file.is_none() && self.otlp.get().is_none() {
            return;
        }
        let meta = {
            let map = self
                .k8s
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (!map.is_empty())
                .then(|| map.get(value.sandbox()).cloned())
                .flatten()
        };
        let k8s = meta.as_deref();
        let serialised = match &self.provenance {
            None if k8s.is_none() => serde_json::to_vec(value),
            None => serde_json::to_vec(&Placed { value, k8s }),
            Some(status) => serde_json::to_vec(&Stamped {
                value,
                k8s,
                provenance: status.verified(),
                provenance_absent: match status {
                    ProvenanceStatus::Absent(why) if lifecycle => Some(why),
                    _ => None,
                },
            }),
        };
        let mut line = match serialised {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "serialising an audit record");
                return;
            }
        };
        line.push(b'\n');
        if let Some(file) = &self.file {
            self.write_file(file, &line);
        }
        if let Some(export) = self.otlp.get() {
            export.offer(bytes::Bytes::from(line));
        }
    }

    /// Appends one serialised line to the file; a failure is counted, never fatal.
    fn write_file(&self, file: &Mutex<LogFile>, line: &[u8]) {
        let mut f = lock(file);
        // After a failed write (disk full) the file may end in half a line: end it first, so
        // the records written once there is room again are each a line of their own.
        let result = if f.broken {
            f.file
                .write_all(b"\n")
                .and_then(|()| f.file.write_all(line))
        } else {
            f.file.write_all(line)
        }
        .and_then(|()| f.file.flush());
        match result {
            Ok(()) => f.broken = false,
            Err(e) => {
                f.broken = true;
                drop(f);
                let mut summary = lock(&self.summary);
                if summary.unwritten == 0 {
                    // Once, loudly: from here on the summary counts what was lost.
                    eprintln!(
                        "egressd: error: writing the audit log failed ({e}); records are being \
                         lost and counted"
                    );
                }
                summary.unwritten += 1;
                summary.unwritten_error = Some(e.to_string());
            }
        }
    }
}

/// The audit log file and whether its last write failed.
#[derive(Debug)]
struct LogFile {
    file: File,
    broken: bool,
}

/// A lifecycle line: what was enforced and when (see the module docs).
///
/// Serialised as one JSON object whose `event` is `arm` or `disarm`; fields that do not apply
/// to the event are left out.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct Lifecycle {
    /// `arm` or `disarm`.
    pub event: LifecycleEvent,
    /// RFC 3339, UTC; stamped by [`AuditLog::lifecycle`] when empty.
    pub time: String,
    /// The sandbox (`egressd-<pid>`), as in the traffic records.
    pub sandbox: String,
    /// Arm: the enforcement backend (`ebpf`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Arm: the attached kernel programs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub programs: Vec<AttachedProgram>,
    /// Arm: the cgroup the programs are attached to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// Arm: `sha256:<hex>` of the policy entries (see `egressd audit`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_hash: Option<String>,
    /// Arm, with TLS interception: `sha256:<hex>` of the interception CA certificate (DER).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_fingerprint: Option<String>,
    /// Disarm: the command's exit code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<u8>,
    /// Arm: the machine's host name, so that logs gathered from many machines say whose
    /// they are (`egressd audit --group-by node`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// The two lifecycle events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum LifecycleEvent {
    /// Enforcement starts: every program is attached, the listeners serve.
    Arm,
    /// Enforcement ends: the command has exited.
    Disarm,
}

/// A kernel program attached for the run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AttachedProgram {
    /// The program's name in the object (`egressd_connect4`).
    pub name: String,
    /// The kernel's program id, when it could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
}

impl Lifecycle {
    /// An `arm` line for `sandbox`; fill the other fields with the builder methods.
    pub fn arm(sandbox: &str, backend: &str) -> Self {
        Self {
            event: LifecycleEvent::Arm,
            time: String::new(),
            sandbox: sandbox.to_owned(),
            backend: Some(backend.to_owned()),
            programs: Vec::new(),
            cgroup: None,
            policy_hash: None,
            ca_fingerprint: None,
            exit_code: None,
            host: host_name(),
        }
    }

    /// A `disarm` line for `sandbox` with the command's exit code.
    pub fn disarm(sandbox: &str, exit_code: u8) -> Self {
        Self {
            event: LifecycleEvent::Disarm,
            time: String::new(),
            sandbox: sandbox.to_owned(),
            backend: None,
            programs: Vec::new(),
            cgroup: None,
            policy_hash: None,
            ca_fingerprint: None,
            exit_code: Some(exit_code),
            host: None,
        }
    }

    /// Sets the attached programs.
    #[must_use]
    pub fn programs(mut self, programs: Vec<AttachedProgram>) -> Self {
        self.programs = programs;
        self
    }

    /// Sets the cgroup path.
    #[must_use]
    pub fn cgroup(mut self, cgroup: String) -> Self {
        self.cgroup = Some(cgroup);
        self
    }

    /// Sets the policy hash (`sha256:<hex>`).
    #[must_use]
    pub fn policy_hash(mut self, hash: String) -> Self {
        self.policy_hash = Some(hash);
        self
    }

    /// Sets the interception CA fingerprint (`sha256:<hex>`), when there is a CA.
    #[must_use]
    pub fn ca_fingerprint(mut self, fingerprint: Option<String>) -> Self {
        self.ca_fingerprint = fingerprint;
        self
    }
}

/// Counts of the records so far, for the exit line on stderr.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Summary {
    /// Connection and HTTP request records with decision `allow`.
    pub allowed: u64,
    /// Connection and HTTP request records with decision `deny`.
    pub denied: u64,
    /// Connections and requests that policy let go ahead and that failed or ended early
    /// (client gone, upstream unreachable or failing, no token): in neither count above.
    pub failed: u64,
    /// DNS queries answered (allowed or refused); not counted in `allowed`/`denied`.
    pub dns_queries: u64,
    /// DNS queries refused (NXDOMAIN and the like).
    pub dns_refused: u64,
    /// Distinct denied names (or IPs when there was no name), in first-seen order, with the
    /// first reason seen and how many times each was denied.
    pub denied_names: Vec<(String, String, u64)>,
    /// Denials (connections, requests and DNS queries) that audit-only mode let through.
    pub not_enforced: u64,
    /// Audit lines (records and lifecycle lines) that could not be written (disk full...).
    pub unwritten: u64,
    /// The last error writing the audit log.
    pub unwritten_error: Option<String>,
    /// Where the lines sent to an OTLP collector went, when the run sends them.
    pub otlp: Option<otlp::OtlpCounts>,
}

impl Summary {
    fn add(&mut self, r: &Record) {
        let dns = r.proto == Proto::Dns;
        if dns {
            self.dns_queries += 1;
        }
        if r.failed && !dns {
            // Policy let it go ahead (or audit-only did), and it ended early.
            if r.decision == AuditDecision::Deny && !r.enforced {
                self.not_enforced += 1;
            }
            self.failed += 1;
            return;
        }
        match r.decision {
            AuditDecision::Allow if dns => {}
            AuditDecision::Allow => self.allowed += 1,
            AuditDecision::Deny => {
                if !r.enforced {
                    self.not_enforced += 1;
                }
                if dns {
                    self.dns_refused += 1;
                } else {
                    self.denied += 1;
                }
                self.name_denial(&r.summary_name(), &r.reason);
            }
        }
    }

    /// Counts one denial of `name` in `denied_names` (a new name keeps its first reason).
    fn name_denial(&mut self, name: &str, reason: &str) {
        if let Some(e) = self.denied_names.iter_mut().find(|e| e.0 == name) {
            e.2 += 1;
        } else if self.denied_names.len() < MAX_DENIED_NAMES {
            self.denied_names
                .push((name.to_owned(), reason.to_owned(), 1));
        }
    }
}

impl fmt::Display for Summary {
    /// One line: `egressd: 7 connections, 5 allowed, 2 denied: evil.test (not in the
    /// allowlist) x1, ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "egressd: {} connections, {} allowed, {} denied",
            self.allowed + self.denied + self.failed,
            self.allowed,
            self.denied
        )?;
        if self.failed > 0 {
            write!(
                f,
                ", {} ended early (allowed; the client went away or the upstream failed)",
                self.failed
            )?;
        }
        if self.dns_queries > 0 {
            write!(
                f,
                "; {} DNS queries, {} refused",
                self.dns_queries, self.dns_refused
            )?;
        }
        if self.not_enforced > 0 {
            write!(
                f,
                " (audit-only: {} not enforced, let through)",
                self.not_enforced
            )?;
        }
        for (i, (name, reason, count)) in self.denied_names.iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { ", " })?;
            write!(f, "{name} ({reason}) x{count}")?;
        }
        if self.unwritten > 0 {
            write!(
                f,
                "\negressd: error: {} audit lines could NOT be written to the audit log ({})",
                self.unwritten,
                self.unwritten_error.as_deref().unwrap_or("unknown error")
            )?;
        }
        if let Some(o) = &self.otlp {
            write!(f, "\n{o}")?;
        }
        Ok(())
    }
}

/// The kernel's host name (of this UTS namespace), when it can be read.
pub fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

/// Locks `m`, ignoring poisoning: a panic elsewhere must not stop auditing.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: Option<&str>, decision: AuditDecision, reason: &str) -> Record {
        let mut r = Record::new(
            &Arc::from("sb"),
            "127.0.0.1:5000".parse().unwrap(),
            Some("192.0.2.9:443".parse().unwrap()),
            Proto::Tls,
        );
        r.name = name.map(str::to_owned);
        r.decision = decision;
        r.reason = reason.to_owned();
        r
    }

    #[test]
    fn repeated_identical_denials_are_written_once_a_second_with_a_count() {
        let start = std::time::Instant::now();
        let mut c = Coalescer::default();
        let denied = rec(
            Some("evil.test"),
            AuditDecision::Deny,
            "not in the allowlist",
        );
        let other = rec(
            Some("other.test"),
            AuditDecision::Deny,
            "not in the allowlist",
        );
        let mut written = 0;
        for _ in 0..1000 {
            let (write, due) = c.admit(&denied, start);
            assert!(due.is_empty());
            written += u32::from(write);
        }
        assert_eq!(written, COALESCE_AFTER);
        // Another name is counted on its own.
        assert!(c.admit(&other, start).0);
        // A second later: the held line stands for the 990 not written.
        let (write, due) = c.admit(&denied, start + std::time::Duration::from_secs(1));
        assert!(write);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].repeated, Some(1000 - u64::from(COALESCE_AFTER)));
        assert_eq!(due[0].name.as_deref(), Some("evil.test"));
        assert!(c.drain().is_empty(), "nothing held after a fresh start");
    }

    #[test]
    fn the_summary_counts_coalesced_denials_and_the_log_holds_them_all() {
        let dir = std::env::temp_dir().join(format!("egressd-coalesce-{}", std::process::id()));
        let log = AuditLog::new(Some(&dir)).unwrap();
        for _ in 0..50 {
            log.record(&rec(
                Some("evil.test"),
                AuditDecision::Deny,
                "not in the allowlist",
            ));
        }
        log.lifecycle(&Lifecycle::disarm("sb", 0));
        assert_eq!(log.summary().denied, 50);
        let text = std::fs::read_to_string(&dir).unwrap();
        let _ = std::fs::remove_file(&dir);
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        // Ten lines, then one standing for forty, then the disarm line.
        assert_eq!(
            lines.len(),
            usize::try_from(COALESCE_AFTER).unwrap() + 2,
            "{text}"
        );
        let total: u64 = lines
            .iter()
            .filter(|l| l["decision"] == "deny")
            .map(|l| l["repeated"].as_u64().unwrap_or(1))
            .sum();
        assert_eq!(total, 50, "{text}");
        assert_eq!(lines.last().unwrap()["event"], "disarm");
    }

    #[test]
    fn refused_unix_sockets_in_a_loop_are_coalesced_too() {
        let path =
            std::env::temp_dir().join(format!("egressd-unix-coalesce-{}", std::process::id()));
        let log = AuditLog::new(Some(&path)).unwrap();
        for pid in 0..50 {
            log.unix_denied(
                "sb",
                &UnixDenial {
                    op: "connect",
                    path: "/etc/x.sock",
                    pid,
                    reason: "Unix socket outside the sandbox, not in allow_unix",
                    suggest: Some("--allow-unix /etc/x.sock".into()),
                },
            );
        }
        log.lifecycle(&Lifecycle::disarm("sb", 0));
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let unix: Vec<&serde_json::Value> = lines.iter().filter(|l| l["proto"] == "unix").collect();
        assert_eq!(
            unix.len(),
            usize::try_from(COALESCE_AFTER).unwrap() + 1,
            "{text}"
        );
        let total: u64 = unix
            .iter()
            .map(|l| l["repeated"].as_u64().unwrap_or(1))
            .sum();
        assert_eq!(total, 50);
        assert_eq!(log.summary().denied, 50);
    }

    #[test]
    fn requests_that_ended_early_are_not_counted_as_denied() {
        let log = AuditLog::new(None).unwrap();
        log.record(&rec(Some("ok.test"), AuditDecision::Allow, "intercepted"));
        let mut gone = rec(
            Some("ok.test"),
            AuditDecision::Allow,
            "the client closed the connection before the response",
        );
        gone.failed = true;
        log.record(&gone);
        let mut upstream = rec(
            Some("ok.test"),
            AuditDecision::Deny,
            "upstream request failed",
        );
        upstream.failed = true;
        log.record(&upstream);
        let s = log.summary();
        assert_eq!((s.allowed, s.denied, s.failed), (1, 0, 2));
        assert!(s.denied_names.is_empty());
        assert_eq!(
            s.to_string(),
            "egressd: 3 connections, 1 allowed, 0 denied, 2 ended early (allowed; the client \
             went away or the upstream failed)"
        );
    }

    #[test]
    fn summary_display_lists_denied_names_with_counts() {
        let log = AuditLog::new(None).unwrap();
        for _ in 0..5 {
            log.record(&rec(
                Some("ok.test"),
                AuditDecision::Allow,
                "allowed by ok.test",
            ));
        }
        log.record(&rec(
            Some("evil.test"),
            AuditDecision::Deny,
            "not in the allowlist",
        ));
        log.record(&rec(None, AuditDecision::Deny, "ip literal"));
        log.record(&rec(
            Some("evil.test"),
            AuditDecision::Deny,
            "not in the allowlist",
        ));
        let s = log.summary();
        assert_eq!((s.allowed, s.denied), (5, 3));
        assert_eq!(
            s.to_string(),
            "egressd: 8 connections, 5 allowed, 3 denied: evil.test (not in the allowlist) x2, \
             192.0.2.9 (ip literal) x1"
        );
        assert_eq!(
            Summary::default().to_string(),
            "egressd: 0 connections, 0 allowed, 0 denied"
        );
    }

    #[test]
    fn file_gets_one_json_line_per_record() {
        let dir = std::env::temp_dir().join(format!("egressd-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        let _ = std::fs::remove_file(&path);
        let log = AuditLog::new(Some(&path)).unwrap();
        let mut r = rec(Some("a.test"), AuditDecision::Allow, "allowed");
        r.proto = Proto::Http;
        r.method = Some("GET".into());
        r.path = Some("/x".into());
        log.record(&r);
        log.record(&rec(Some("b.test"), AuditDecision::Deny, "nope"));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["proto"], "http");
        assert_eq!(lines[0]["method"], "GET");
        assert_eq!(lines[0]["decision"], "allow");
        assert_eq!(lines[1]["decision"], "deny");
        assert!(lines[1].get("method").is_none());
        assert!(lines[1]["upstream"].is_null());
        assert!(lines[0]["time"].as_str().unwrap().ends_with('Z'));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn lifecycle_lines_are_written_and_never_counted() {
        let dir = std::env::temp_dir().join(format!("egressd-lifecycle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        let _ = std::fs::remove_file(&path);
        let log = AuditLog::new(Some(&path)).unwrap();
        let arm = Lifecycle::arm("sb", "ebpf")
            .programs(vec![AttachedProgram {
                name: "egressd_connect4".into(),
                id: Some(7),
            }])
            .cgroup("/sys/fs/cgroup/sb".into())
            .policy_hash("sha256:00".into())
            .ca_fingerprint(None);
        log.lifecycle(&arm);
        log.record(&rec(Some("a.test"), AuditDecision::Allow, "allowed"));
        log.lifecycle(&Lifecycle::disarm("sb", 3));
        assert_eq!(log.summary().allowed + log.summary().denied, 1);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["event"], "arm");
        assert_eq!(lines[0]["backend"], "ebpf");
        assert_eq!(lines[0]["programs"][0]["id"], 7);
        assert!(lines[0].get("ca_fingerprint").is_none());
        assert!(lines[0]["time"].as_str().unwrap().ends_with('Z'));
        assert!(lines[1].get("event").is_none());
        assert_eq!(lines[2]["event"], "disarm");
        assert_eq!(lines[2]["exit_code"], 3);
        assert!(lines.iter().all(|l| l.get("provenance").is_none()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn provenance_is_on_every_line_once_set() {
        let dir = std::env::temp_dir().join(format!("egressd-provenance-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (verified, absent) = (dir.join("verified.jsonl"), dir.join("absent.jsonl"));
        let status =
            ProvenanceStatus::Verified(Box::new(Provenance::for_tests("octocat", "583231")));
        let log = AuditLog::new(Some(&verified))
            .unwrap()
            .with_provenance(status);
        log.lifecycle(&Lifecycle::arm("sb", "ebpf"));
        log.record(&rec(Some("a.test"), AuditDecision::Allow, "allowed"));
        let mut dns = rec(Some("b.test"), AuditDecision::Deny, "not in the allowlist");
        dns.proto = Proto::Dns;
        log.record(&dns);
        let lines = read_jsonl(&verified);
        assert_eq!(lines.len(), 3);
        for line in &lines {
            assert_eq!(line["provenance"]["actor"], "octocat", "{line}");
            assert_eq!(line["provenance"]["actor_id"], "583231", "{line}");
            assert_eq!(line["provenance"]["repository"], "octo-org/octo-repo");
            assert_eq!(line["provenance"]["run_id"], "1234567890");
            assert!(line.get("provenance_absent").is_none());
        }
        assert_eq!(lines[1]["name"], "a.test", "the record's own fields stay");
        assert_eq!(lines[2]["proto"], "dns");

        let log = AuditLog::new(Some(&absent))
            .unwrap()
            .with_provenance(ProvenanceStatus::Absent("no token".into()));
        log.lifecycle(&Lifecycle::arm("sb", "ebpf"));
        log.record(&rec(Some("a.test"), AuditDecision::Allow, "allowed"));
        let lines = read_jsonl(&absent);
        assert!(lines[0]["provenance"].is_null());
        assert_eq!(lines[0]["provenance_absent"], "no token");
        assert!(lines[1]["provenance"].is_null());
        assert!(lines[1].get("provenance_absent").is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
