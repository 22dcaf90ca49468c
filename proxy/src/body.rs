//! Bodies and audit bookkeeping shared by the plain-HTTP and intercepted request paths.
//!
//! A request's [`PendingRecord`] is written exactly once, when it is dropped: normally
//! inside the [`AuditedBody`] of its response, so the record carries the byte counts of both
//! bodies and the time until the response body ended.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{CONNECTION, HeaderMap, HeaderName};
use tokio::time::Instant;

use crate::audit::{AuditLog, Record};

/// Response body type of the request handlers.
pub(crate) type ResBody = UnsyncBoxBody<Bytes, hyper::Error>;

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

/// A request body that counts the bytes it yields.
pub(crate) struct Counted {
    inner: Incoming,
    counter: Arc<AtomicU64>,
}

impl Body for Counted {
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
            self.counter.fetch_add(d.len() as u64, Ordering::Relaxed);
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

impl Counted {
    /// Counts `inner`'s bytes into `counter`.
    pub(crate) fn new(inner: Incoming, counter: Arc<AtomicU64>) -> Self {
        Self { inner, counter }
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
    pub(crate) bytes_up: Arc<AtomicU64>,
    bytes_down: u64,
}

impl PendingRecord {
    /// Counts bytes relayed after an upgrade (WebSocket) into the record.
    pub(crate) fn add_relayed(&mut self, up: u64, down: u64) {
        self.bytes_up.fetch_add(up, Ordering::Relaxed);
        self.bytes_down += down;
    }

    /// Starts timing `rec`; it is written to `audit` on drop.
    pub(crate) fn new(audit: Arc<AuditLog>, rec: Record) -> Self {
        Self {
            rec,
            audit,
            started: Instant::now(),
            bytes_up: Arc::new(AtomicU64::new(0)),
            bytes_down: 0,
        }
    }
}

impl Drop for PendingRecord {
    fn drop(&mut self) {
        self.rec.bytes_up = self.bytes_up.load(Ordering::Relaxed);
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
