//! Bodies and audit bookkeeping shared by the plain-HTTP and intercepted request paths.
//!
//! A request's [`PendingRecord`] is written exactly once, when it is dropped: normally
//! inside the [`AuditedBody`] of its response, so the record carries the byte counts of both
//! bodies and the time until the response body ended.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{CONNECTION, HeaderMap, HeaderName};
use tokio::time::Instant;

use crate::audit::{AuditDecision, AuditLog, Record};

/// Response body type of the request handlers.
pub(crate) type ResBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// Why a request body sent upstream ended early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// The client's connection failed.
    #[error(transparent)]
    Client(#[from] hyper::Error),
    /// The body crossed `limits.max_body_bytes`.
    #[error(transparent)]
    TooLarge(#[from] BodyTooLarge),
}

/// A request body went over `limits.max_body_bytes`: the upstream request is aborted
/// before the byte past the limit is forwarded.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than {limit} bytes (limits.max_body_bytes)")]
pub(crate) struct BodyTooLarge {
    /// The configured limit.
    pub(crate) limit: u64,
}

impl BodyTooLarge {
    /// The refusal for a request that declares (`Content-Length`) a body over `limit`, so
    /// it is refused before anything is forwarded; `None` when `limit` is `None` or the
    /// declared length fits (a body without a length is checked as it streams).
    pub(crate) fn declared<B>(req: &hyper::Request<B>, limit: Option<u64>) -> Option<Self> {
        let limit = limit?;
        let declared = req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)?
            .to_str()
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()?;
        (declared > limit).then_some(Self { limit })
    }
}

/// What a request body has sent upstream so far, shared by the body and its audit record.
#[derive(Debug, Default)]
pub(crate) struct Sent {
    bytes: AtomicU64,
    over_limit: AtomicBool,
}

impl Sent {
    /// Bytes forwarded.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Counts `n` more bytes (relayed after an upgrade).
    pub(crate) fn add(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Whether the body was cut at `limits.max_body_bytes`.
    pub(crate) fn over_limit(&self) -> bool {
        self.over_limit.load(Ordering::Relaxed)
    }
}

/// Headers that describe one hop and are never forwarded (RFC 9110 §7.6.1), plus the
/// proxy-era ones clients still send.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, including those the `Connection` header lists.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// A request body on its way upstream: counts the bytes it yields and ends with
/// [`BodyTooLarge`] instead of yielding the chunk that would cross the limit (so the
/// upstream sees an aborted request, never a truncated one that looks complete).
pub(crate) struct Counted {
    inner: Incoming,
    sent: Arc<Sent>,
    limit: Option<u64>,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.sent.over_limit() {
            return Poll::Ready(None);
        }
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame
            && let Some(d) = f.data_ref()
        {
            let len = d.len() as u64;
            if let Some(limit) = self.limit
                && self.sent.bytes().saturating_add(len) > limit
            {
                self.sent.over_limit.store(true, Ordering::Relaxed);
                return Poll::Ready(Some(Err(BodyTooLarge { limit }.into())));
            }
            self.sent.add(len);
        }
        Poll::Ready(frame.map(|f| f.map_err(BodyError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Counted {
    /// Counts `inner`'s bytes into `sent`, up to `limit` (`limits.max_body_bytes`).
    pub(crate) fn new(inner: Incoming, sent: Arc<Sent>, limit: Option<u64>) -> Self {
        Self { inner, sent, limit }
    }
}

/// The audit record of one request, written exactly once: when it is dropped, which is when
/// the response body finished (or the client went away, or the handler was cancelled).
pub(crate) struct PendingRecord {
    /// The record, completed by the handler.
    pub(crate) rec: Record,
    audit: Arc<AuditLog>,
    started: Instant,
    /// Request body bytes, counted by [`Counted`].
    pub(crate) sent: Arc<Sent>,
    bytes_down: u64,
}

impl PendingRecord {
    /// Counts bytes relayed after an upgrade (WebSocket) into the record.
    pub(crate) fn add_relayed(&mut self, up: u64, down: u64) {
        self.sent.add(up);
        self.bytes_down += down;
    }

    /// Starts timing `rec`; it is written to `audit` on drop.
    pub(crate) fn new(audit: Arc<AuditLog>, rec: Record) -> Self {
        Self {
            rec,
            audit,
            started: Instant::now(),
            sent: Arc::new(Sent::default()),
            bytes_down: 0,
        }
    }
}

impl Drop for PendingRecord {
    fn drop(&mut self) {
        if self.rec.reason.is_empty() {
            // The handler was dropped before it answered: the client went away first. Policy
            // had let the request in (refusals always say why): it ended early, it was not
            // denied.
            "the client closed the connection before the response".clone_into(&mut self.rec.reason);
            self.rec.decision = AuditDecision::Allow;
            self.rec.failed = true;
        } else if self.rec.decision == AuditDecision::Deny
            && self.rec.status.is_some_and(|s| s >= 500)
        {
            // egressd's own 5xx: the upstream or a token endpoint failed, not policy.
            self.rec.failed = true;
        } else if self.rec.decision == AuditDecision::Allow && self.rec.status.is_none() {
            // Let through, and no answer was ever given: the client went away first.
            self.rec.failed = true;
            self.rec
                .reason
                .push_str("; the client closed the connection before the response");
        }
        if self.sent.over_limit() && !self.rec.reason.contains("limits.max_body_bytes") {
            // The upstream answered before the body crossed the limit; the rest was not sent.
            self.rec
                .reason
                .push_str("; request body cut at limits.max_body_bytes");
        }
        self.rec.bytes_up = self.sent.bytes();
        self.rec.bytes_down = self.bytes_down;
        self.rec.duration_ms =
            u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.audit.record(&self.rec);
    }
}

/// A response body that counts what it yields and owns its request's [`PendingRecord`].
pub(crate) struct AuditedBody {
    inner: ResBody,
    pending: PendingRecord,
}

impl Body for AuditedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame
            && let Some(d) = f.data_ref()
        {
            self.pending.bytes_down += d.len() as u64;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl AuditedBody {
    /// A body that counts `inner`'s bytes into `pending` and writes it when done.
    pub(crate) fn new(inner: ResBody, pending: PendingRecord) -> Self {
        Self { inner, pending }
    }
}

/// Whether a request's body may be read as JSON by the server: a body-carrying method and a
/// JSON, `text/plain` or missing content type (frameworks parse those as JSON too).
pub(crate) fn may_be_json(parts: &hyper::http::request::Parts) -> bool {
    let body_method = matches!(parts.method.as_str(), "POST" | "PUT" | "PATCH");
    let kind = parts
        .headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    body_method
        && kind
            .as_deref()
            .is_none_or(|t| t.contains("json") || t.starts_with("text/plain"))
}

/// The request's content coding, unless it is `identity` (or absent).
pub(crate) fn content_encoding(headers: &hyper::HeaderMap) -> Option<String> {
    let coding = headers.get(hyper::header::CONTENT_ENCODING)?;
    let coding = coding.to_str().unwrap_or("(not text)").trim();
    (!coding.is_empty() && !coding.eq_ignore_ascii_case("identity")).then(|| coding.to_owned())
}
