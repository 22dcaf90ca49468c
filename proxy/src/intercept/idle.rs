//! The idle timeout of intercepted connections: a connection on which no byte moved either
//! way for `timeouts.idle` is closed, as a relayed one is.
//!
//! hyper bounds only the wait for an HTTP/1 request head (`timeouts.request_head`); an h2
//! connection that has served its requests, or any connection whose response stalls, would
//! otherwise stay open for as long as the client likes. [`Activity`] wraps the client's
//! TLS stream and stamps the time of every read or write that moved bytes; [`Idle`] says
//! when the connection has been silent for the timeout.
//!
//! The stamp is one relaxed atomic store per I/O call (no lock, no allocation), in
//! milliseconds since the connection started.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// When a connection last moved bytes, shared by its stream and its watchdog.
#[derive(Debug)]
pub(crate) struct Idle {
    started: Instant,
    /// Milliseconds after `started` of the last read or write that moved bytes.
    last_ms: AtomicU64,
}

impl Idle {
    /// A clock for a connection that starts now.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    /// Stamps now as the last activity.
    pub(crate) fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// The moment the connection will have been silent for `timeout`, if nothing moves
    /// before then.
    pub(crate) fn deadline(&self, timeout: Duration) -> Instant {
        self.started + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + timeout
    }

    /// Whether nothing moved for `timeout`.
    pub(crate) fn expired(&self, timeout: Duration) -> bool {
        Instant::now() >= self.deadline(timeout)
    }
}

/// A stream that stamps its [`Idle`] clock whenever bytes move.
pub(crate) struct Activity<S> {
    inner: S,
    idle: Arc<Idle>,
}

impl<S> Activity<S> {
    /// Wraps `inner`, stamping `idle`.
    pub(crate) fn new(inner: S, idle: Arc<Idle>) -> Self {
        Self { inner, idle }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Activity<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.idle.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Activity<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.idle.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.idle.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn reads_and_writes_push_the_deadline_back() {
        let idle = Idle::new();
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = Activity::new(a, Arc::clone(&idle));
        let timeout = Duration::from_secs(10);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(!idle.expired(timeout));
        a.write_all(b"x").await.unwrap();
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(
            !idle.expired(timeout),
            "the write at 6 s moved the deadline to 16 s"
        );
        b.write_all(b"y").await.unwrap();
        let mut byte = [0u8; 1];
        a.read_exact(&mut byte).await.unwrap();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!idle.expired(timeout), "the read at 12 s moved it to 22 s");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(idle.expired(timeout));
    }
}
