//! [`X509Source`]: one `spiffe-x509` credential's SVID, kept current from the Workload API.
//!
//! ```text
//!  start ─► task: fetch_x509_svids ─► each message ─► parse_response ─► state (watch)
//!              ▲   stream ends or fails: keep the SVID (the agent may be restarting),
//!              │   except on PermissionDenied (the identity was taken away): drop it
//!              └── backoff 1 s, 2 s, ... 30 s, then reconnect
//!  requests ─► ready(): the state's SVID if valid now (waits for the first one, bounded)
//! ```
//!
//! Rotation needs nothing from anyone: the agent streams a new response before the SVID
//! expires, the task swaps it in, and the next dial presents it. Connections already open keep
//! the identity they were made with. The task ends when the last [`X509Source`] is dropped.

use std::sync::Arc;
use std::time::Duration;

use egressd_config::defaults;
use egressd_config::spiffe::{SpiffeId, WorkloadEndpoint};
use rustls::crypto::CryptoProvider;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::time::Instant;

use super::svid::{X509Context, parse_response};
use super::workload::{FetchError, fetch_x509_svids};

/// The first delay after the stream failed; it doubles per failure.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The longest delay between reconnects.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The current SVID of one credential; cheap to clone (shared state).
#[derive(Clone)]
pub(crate) struct X509Source {
    shared: Arc<Shared>,
    state: watch::Receiver<State>,
}

struct Shared {
    endpoint: WorkloadEndpoint,
    started: Instant,
    first_wait: Duration,
}

/// What the task last learned.
#[derive(Clone, Default)]
struct State {
    /// The selected SVID and the bundles, from the last usable response.
    context: Option<Arc<X509Context>>,
    /// The last failure (stream or response), for messages; cleared by a usable response.
    last_error: Option<String>,
    /// The Workload API has answered at all (a response, or a refusal such as
    /// `PermissionDenied`); until then requests wait a little for the first SVID.
    answered: bool,
}

/// Why a credential has no SVID to present now.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum Unavailable {
    /// None received yet, or the last response gave none.
    #[error("no X.509-SVID from the Workload API at {endpoint} yet{}", why(.last_error))]
    NoSvid {
        /// The Workload API.
        endpoint: String,
        /// The last failure, if any.
        last_error: Option<String>,
    },
    /// The SVID's `notAfter` has passed and no rotated one arrived.
    #[error(
        "the X.509-SVID {id} expired at {at}: the Workload API at {endpoint} has not rotated it{}",
        why(.last_error)
    )]
    Expired {
        /// Its SPIFFE ID.
        id: SpiffeId,
        /// Its `notAfter` (RFC 3339).
        at: String,
        /// The Workload API.
        endpoint: String,
        /// The last failure, if any.
        last_error: Option<String>,
    },
    /// The SVID's `notBefore` is still ahead (a clock problem on this host or the agent's).
    #[error("the X.509-SVID {id} is not valid before {at}: check this host's clock")]
    NotYetValid {
        /// Its SPIFFE ID.
        id: SpiffeId,
        /// Its `notBefore` (RFC 3339).
        at: String,
    },
}

fn why(last_error: &Option<String>) -> String {
    last_error
        .as_ref()
        .map(|e| format!(" ({e})"))
        .unwrap_or_default()
}

impl X509Source {
    /// Starts following `endpoint` for credential `name`, selecting `want` (the first SVID,
    /// the default identity, when `None`). Must be called inside a tokio runtime: the task is
    /// spawned on it.
    pub(crate) fn start(name: &str, endpoint: WorkloadEndpoint, want: Option<SpiffeId>) -> Self {
        Self::start_with(name, endpoint, want, defaults::SPIFFE_FIRST_SVID_WAIT)
    }

    /// As [`start`](Self::start), with the wait for the first SVID given.
    pub(crate) fn start_with(
        name: &str,
        endpoint: WorkloadEndpoint,
        want: Option<SpiffeId>,
        first_wait: Duration,
    ) -> Self {
        let (tx, rx) = watch::channel(State::default());
        let shared = Arc::new(Shared {
            endpoint: endpoint.clone(),
            started: Instant::now(),
            first_wait,
        });
        tokio::spawn(follow(tx, endpoint, want, name.to_owned()));
        Self { shared, state: rx }
    }

    /// The SVID and bundles to dial with now: valid at this moment. Shortly after start,
    /// waits for the first response (at most the first-SVID wait since start).
    ///
    /// # Errors
    ///
    /// [`Unavailable`] saying why there is no usable SVID.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads shared state.
    pub(crate) async fn ready(&self) -> Result<Arc<X509Context>, Unavailable> {
        let deadline = self.shared.started + self.shared.first_wait;
        let mut rx = self.state.clone();
        if !rx.borrow().answered && Instant::now() < deadline {
            // Err: the deadline passed or the task ended; either way judge the state as it is.
            let _ = tokio::time::timeout_at(deadline, rx.wait_for(|s| s.answered)).await;
        }
        self.current()
    }

    /// The SVID and bundles to dial with now, without waiting.
    ///
    /// # Errors
    ///
    /// [`Unavailable`] saying why there is no usable SVID.
    pub(crate) fn current(&self) -> Result<Arc<X509Context>, Unavailable> {
        let state = self.state.borrow().clone();
        let endpoint = self.shared.endpoint.to_string();
        let Some(context) = state.context else {
            return Err(Unavailable::NoSvid {
                endpoint,
                last_error: state.last_error,
            });
        };
        let now = OffsetDateTime::now_utc();
        let svid = &context.svid;
        if now >= svid.not_after {
            return Err(Unavailable::Expired {
                id: svid.id.clone(),
                at: rfc3339(svid.not_after),
                endpoint,
                last_error: state.last_error,
            });
        }
        if now < svid.not_before {
            return Err(Unavailable::NotYetValid {
                id: svid.id.clone(),
                at: rfc3339(svid.not_before),
            });
        }
        Ok(context)
    }
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.to_string())
}

/// The task: follow the stream, reconnect with backoff, until every receiver is gone.
async fn follow(
    tx: watch::Sender<State>,
    endpoint: WorkloadEndpoint,
    want: Option<SpiffeId>,
    name: String,
) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut failures = 0u32;
    loop {
        let ended = tokio::select! {
            () = tx.closed() => return,
            ended = stream(&tx, &endpoint, want.as_ref(), &provider, &name, &mut failures) => ended,
        };
        let (why, denied, answered) = match ended {
            Ok(()) => ("the Workload API closed the stream".to_owned(), false, true),
            Err(e) => (e.to_string(), e.is_denied(), e.is_status()),
        };
        failures = failures.saturating_add(1);
        tracing::warn!(credential = name, error = why, "SPIFFE Workload API stream");
        tx.send_modify(|s| {
            if denied {
                s.context = None;
            }
            s.answered |= answered;
            s.last_error = Some(why);
        });
        let delay = BACKOFF_MIN
            .saturating_mul(1 << failures.saturating_sub(1).min(5))
            .min(BACKOFF_MAX);
        tokio::select! {
            () = tx.closed() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// One stream: every response replaces the state. `Ok` when the server ended it.
async fn stream(
    tx: &watch::Sender<State>,
    endpoint: &WorkloadEndpoint,
    want: Option<&SpiffeId>,
    provider: &CryptoProvider,
    name: &str,
    failures: &mut u32,
) -> Result<(), FetchError> {
    let mut stream = fetch_x509_svids(endpoint, defaults::SPIFFE_CONNECT_TIMEOUT).await?;
    while let Some(response) = stream.message().await? {
        *failures = 0;
        match parse_response(response, want, provider) {
            Ok(context) => {
                tracing::debug!(
                    credential = name,
                    spiffe_id = context.svid.id.as_str(),
                    not_after = rfc3339(context.svid.not_after),
                    "X.509-SVID from the Workload API"
                );
                tx.send_modify(|s| {
                    s.context = Some(Arc::new(context));
                    s.last_error = None;
                    s.answered = true;
                });
            }
            Err(why) => {
                // The response replaces the last one: an unusable one leaves no SVID.
                tracing::warn!(
                    credential = name,
                    error = why,
                    "unusable Workload API response"
                );
                tx.send_modify(|s| {
                    s.context = None;
                    s.last_error = Some(why);
                    s.answered = true;
                });
            }
        }
    }
    Ok(())
}
