//! The accept loop: one task per connection, never exits on an accept error, drains on
//! shutdown.
//!
//! Each connection gets a tracing span (client, original destination) and runs
//! `conn::handle` on its own task, tracked by a [`TaskTracker`] so shutdown can wait for
//! in-flight connections, for at most [`SHUTDOWN_GRACE`].

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

/// Pause after a failed `accept()` (for example `EMFILE`), so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

impl Proxy {
    /// Accept loop: one task per connection; accept errors are logged and skipped, never exit
    /// the loop.
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
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            };
            let orig = self.orig.lookup(stream.as_fd(), peer, local).map(OrigDst);
            let span = tracing::info_span!("conn", client = %peer, orig = ?orig.map(|o| o.0));
            let proxy = Arc::clone(&self);
            tracker.spawn(
                async move { proxy.handle(stream, ClientAddr(peer), local, orig).await }
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
