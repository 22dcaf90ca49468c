//! The accept loop: one task per connection, at most `limits.max_connections` at once, never
//! exits on an accept error, drains on shutdown.
//!
//! Each connection gets a tracing span (client, original destination) and runs
//! `conn::handle` on its own task, tracked by a [`TaskTracker`] so shutdown can wait for
//! in-flight connections, for at most [`SHUTDOWN_GRACE`]. A connection past the limit is
//! accepted, reset and audited (so the sandbox sees a refusal, not a hang). A failed
//! `accept()` (`EMFILE` when the daemon is out of file descriptors, `ENOBUFS`, ...) is logged
//! and retried after an [`AcceptBackoff`] pause that grows while failures last, so the loop
//! neither spins nor gives up.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::Proxy;
use crate::addr::{ClientAddr, OrigDst};

/// How long [`Proxy::serve`] waits for in-flight connections after shutdown is requested.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

impl Proxy {
    /// Accept loop: one task per connection; accept errors are logged and retried after a
    /// growing pause, never exit the loop.
    ///
    /// Returns after `shutdown` is cancelled and in-flight connections finished, or after
    /// they were given [`SHUTDOWN_GRACE`] (connections still running then are left to the
    /// runtime).
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        let local = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "proxy listener has no local address");
                return;
            }
        };
        let tracker = TaskTracker::new();
        let mut backoff = AcceptBackoff::default();
        tracing::debug!(%local, "proxy listening");
        loop {
            // Biased towards accept: after shutdown, connections already queued (a sandbox
            // that connected just before it exited) are still taken and audited; the loop
            // ends once the queue is empty.
            let accepted = tokio::select! {
                biased;
                a = listener.accept() => a,
                () = shutdown.cancelled() => break,
            };
            let (stream, peer) = match accepted {
                Ok(a) => {
                    backoff.reset();
                    a
                }
                Err(e) => {
                    let pause = backoff.next_pause();
                    tracing::warn!(
                        error = %e,
                        retry_in_ms = pause.as_millis(),
                        open = tracker.len(),
                        "accept failed (out of file descriptors?); pending connections wait"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(pause) => continue,
                        () = shutdown.cancelled() => break,
                    }
                }
            };
            let orig = self.orig.lookup(stream.as_fd(), peer, local).map(OrigDst);
            let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
                self.refuse_over_limit(stream, ClientAddr(peer), orig);
                continue;
            };
            let span = tracing::info_span!("conn", client = %peer, orig = ?orig.map(|o| o.0));
            let proxy = Arc::clone(&self);
            tracker.spawn(
                async move {
                    let _slot = slot;
                    proxy.handle(stream, ClientAddr(peer), local, orig).await;
                }
                .instrument(span),
            );
        }
        tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = tracker.len(),
                "connections still open after the shutdown grace period"
            );
        }
    }
}

/// The pause after a failed `accept()`: 5 ms, doubling while failures last, at most 1 s;
/// back to 5 ms after a success (the schedule Go's `net/http` server uses).
///
/// A failing `accept()` usually means the daemon is out of file descriptors (`EMFILE`,
/// `ENFILE`): the connection stays queued in the kernel, and retrying at once would fail
/// again and spin a core. Pausing lets connections in flight finish and free descriptors.
#[derive(Debug, Default)]
pub(crate) struct AcceptBackoff {
    last: Option<Duration>,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);

    /// The pause before the next attempt, after one more failure.
    pub(crate) fn next_pause(&mut self) -> Duration {
        let next = self.last.map_or(Self::FIRST, |d| (d * 2).min(Self::MAX));
        self.last = Some(next);
        next
    }

    /// Forgets past failures (after a successful accept).
    pub(crate) fn reset(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backoff_doubles_up_to_a_second_and_resets() {
        let mut b = AcceptBackoff::default();
        let pauses: Vec<u128> = (0..10).map(|_| b.next_pause().as_millis()).collect();
        assert_eq!(pauses, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_pause(), Duration::from_millis(5));
    }
}
