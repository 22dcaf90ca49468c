//! egressd's userspace proxy: every TCP connection a sandbox opens ends up here.
//!
//! The kernel redirects each `connect()` of a sandbox to the proxy's listener and remembers
//! where the client was going. For each accepted connection the proxy runs one pipeline,
//! readable top to bottom in `conn/mod.rs`:
//!
//! ```text
//!  accept ─► original dst (OrigDstLookup; recorded, never trusted)   none ─► deny
//!     ▼
//!  route     (conn/mod.rs)        pure, before reading anything:
//!     │   port 53 ─► dns.rs (DNS over TCP)      172.30.0.30 (AWF mode) ─► awf/apiproxy.rs
//!     │   the listener itself ─► deny           loopback ─► decide on the port ─► relay
//!     ▼
//!  classify  (conn/classify.rs)   first bytes, kept for replay, with a timeout
//!     │   TLS ClientHello ─► SNI, ALPN, ECH?        HTTP/1 request head ─► Host
//!     ▼
//!  decide    (conn/decide.rs)     pure: policy on the *name* (no DNS) ─► Verdict
//!     │   Deny ─► reset (TLS) / 403 (HTTP)
//!     │   Intercept (an [[intercept]] rule names the SNI, interception on)
//!     ▼   PassThrough
//!  connect   (transport/connect.rs) resolve the name, refuse internal answers, dial
//!     ▼
//!  relay     (transport/relay.rs) TLS: replay the ClientHello, copy both ways, idle timeout
//!  intercept (intercept/)         TLS for [[intercept]] hosts: terminate, inject a token
//!                                 from token/ (Broker), forward over a verified pool
//!                                 (rules with `spiffe`: mTLS with the Workload API's
//!                                 X.509-SVID, upstream SPIFFE ID checked; spiffe/)
//!  http      (conn/http.rs)       HTTP: hyper server, each request decided on its own Host
//!     ▼
//!  audit     (audit.rs)           one record per connection / per HTTP request
//! ```
//!
//! All client-visible refusals are built in `respond.rs`; stage errors and the
//! [`ErrorKind`] derived from them live in `error.rs`.
//!
//! Modules import downwards only: `conn` (the pipeline) uses `intercept` and `awf` (the api-proxy),
//! which use `transport` (connector, relay, limits), `token` and `audit`; the leaves
//! `host` (host names), `provenance` (the run's verified claims) and `tls_roots` (what
//! egressd's own TLS clients trust) import nothing from the crate.
//!
//! # What this crate does not do
//!
//! * It loads no kernel programs and reads no environment: the daemon wires a
//!   [`egressd_config::Config`], an [`OrigDstLookup`] and an [`AuditLog`] into [`Proxy::new`].
//! * It decrypts TLS only for hosts an `[[intercept]]` rule names, and only when the daemon
//!   turned interception on ([`Proxy::with_interception`]); everything else is passed
//!   through untouched.
//!
//! # Security
//!
//! Decisions rest on the name the client sent, and the proxy connects to that name itself.
//! A denied name is never resolved; an allowed name that resolves to loopback, private,
//! link-local or metadata addresses is refused unless its rule allows private addresses.
//! Malformed input never panics and never lets traffic through (the parsers are fuzzed:
//! `fuzz/`, entry points in `fuzz.rs` behind the `fuzzing` feature).
//!
//! # Limits
//!
//! Every stage that waits on the sandbox is bounded by `config.timeouts` and every buffer by
//! `config.limits`: the first bytes by `classify` (in total, so a slowloris gains nothing by
//! sending slowly), an intercepted TLS handshake by `tls_handshake`, each later request head
//! by `request_head`, a head's size by `max_header_bytes` (`431`), the connections open at
//! once by `max_connections` (`listener.rs`; more are reset). Each refusal is audited with
//! the key that caused it. Accept errors (`EMFILE`) back off instead of spinning.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod addr;
mod audit;
mod awf;
mod body;
mod conn;
mod dns;
mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
mod host;
pub mod intercept;
mod listener;
mod provenance;
mod resolver;
mod respond;
mod spiffe;
mod tls_roots;
pub mod token;
mod transport;

#[cfg(test)]
mod tests;

use std::sync::Arc;

#[cfg(any(test, feature = "test-util"))]
pub use crate::addr::StaticOrigDst;
pub use crate::addr::{ClientAddr, LoopbackSockets, OrigDst, OrigDstLookup};
pub use crate::audit::otlp::{OtlpConfig, OtlpCounts, OtlpExport, OtlpProtocol, parse_otel_list};
pub use crate::audit::{
    AccessLine, AttachedProgram, AuditLog, AwfLog, HostField, K8sMeta, Lifecycle, LifecycleEvent,
    Summary, UnixDenial, host_name,
};
pub use crate::error::{ClassifyError, ConnectError, Error, ErrorKind};
pub use crate::transport::sockmap::{KernelRelay, RelayCounts};

use crate::transport::connect::Connector;

/// The proxy of one sandbox: configuration, original-destination lookup, resolver, audit.
///
/// Build it once with [`Proxy::new`], then run [`Proxy::serve`] on each listener (IPv4 and
/// IPv6) with a clone of the `Arc`.
pub struct Proxy {
    config: Arc<egressd_config::Config>,
    orig: Arc<dyn OrigDstLookup>,
    audit: Arc<AuditLog>,
    sandbox: Arc<str>,
    connector: Arc<Connector>,
    interception: Option<intercept::Interception>,
    api_proxy: Option<awf::apiproxy::Server>,
    /// The in-kernel relay for pass-through, when the daemon loaded one.
    kernel_relay: Option<Arc<dyn KernelRelay>>,
    /// The epoll set the in-kernel relay's connections wait on for their ends, made on first
    /// use (it needs the runtime); `None` when it could not be made (then splice).
    relay_ends: std::sync::OnceLock<Option<transport::ends::Ends>>,
    /// One permit per open connection, `config.limits.max_connections` in all: connections
    /// past the limit are reset and audited (`listener.rs`).
    slots: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("sandbox", &self.sandbox)
            .field("connector", &self.connector)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Connections open through this proxy right now (each holds one of the
    /// `limits.max_connections` slots).
    pub fn open_connections(&self) -> usize {
        let max = usize::try_from(self.config.limits.max_connections)
            .unwrap_or(usize::MAX)
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        max.saturating_sub(self.slots.available_permits())
    }

    /// Builds the proxy for sandbox `sandbox` (the name written in every audit record).
    ///
    /// The DNS resolver is built here, from `config.dns_servers`, or from the system
    /// configuration when that list is empty.
    ///
    /// # Errors
    ///
    /// The resolver could not be built (see [`Error`]).
    pub fn new(
        config: Arc<egressd_config::Config>,
        orig: Arc<dyn OrigDstLookup>,
        audit: Arc<AuditLog>,
        sandbox: String,
    ) -> Result<Self, Error> {
        let connector = Arc::new(Connector::new(&config)?);
        let slots = usize::try_from(config.limits.max_connections)
            .unwrap_or(usize::MAX)
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        Ok(Self {
            slots: Arc::new(tokio::sync::Semaphore::new(slots)),
            config,
            orig,
            audit,
            sandbox: sandbox.into(),
            connector,
            interception: None,
            api_proxy: None,
            kernel_relay: None,
            relay_ends: std::sync::OnceLock::new(),
        })
    }

    /// Relays allowed TLS pass-through connections inside the kernel through `relay` (see
    /// [`KernelRelay`]); without it, or when it refuses a connection, bytes move with
    /// `splice(2)`.
    #[must_use]
    pub fn with_kernel_relay(mut self, relay: Arc<dyn KernelRelay>) -> Self {
        self.kernel_relay = Some(relay);
        self
    }

    /// The in-kernel relay and its epoll set, when both are there.
    fn kernel_relay(&self) -> Option<(&dyn KernelRelay, &transport::ends::Ends)> {
        let kernel = self.kernel_relay.as_deref()?;
        let ends = self.relay_ends.get_or_init(|| {
            transport::ends::Ends::new()
                .map_err(|e| tracing::warn!("in-kernel relay off, using splice: {e}"))
                .ok()
        });
        Some((kernel, ends.as_ref()?))
    }

    /// Turns on TLS interception for the hosts of `config.intercepts`: leaves from `ca`,
    /// credentials from `broker`, upstream certificates verified against the webpki roots
    /// and `config.upstream_ca`.
    ///
    /// # Errors
    ///
    /// The upstream CA file cannot be read or holds no certificate.
    pub fn with_interception(
        mut self,
        ca: Arc<intercept::EphemeralCa>,
        broker: token::Broker,
    ) -> Result<Self, Error> {
        let extra = match &self.config.upstream_ca {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                Error::Interception(format!("reading the upstream CA {}: {e}", path.display()))
            })?),
            None => None,
        };
        let interception = intercept::Interception::new(
            ca,
            broker,
            Arc::clone(&self.connector),
            Arc::clone(&self.config.policy),
            extra.as_deref(),
            &self.config.intercepts,
        )
        .map_err(Error::Interception)?;
        self.interception = Some(interception);
        Ok(self)
    }

    /// Serves AWF's api-proxy (`config.api_proxy`) at `172.30.0.30:10000-10004` with
    /// credentials from `broker`, upstream certificates verified against the webpki roots and
    /// `config.upstream_ca`. Without `config.api_proxy` this does nothing.
    ///
    /// # Errors
    ///
    /// The upstream CA file cannot be read or holds no certificate.
    pub fn with_api_proxy(mut self, broker: token::Broker) -> Result<Self, Error> {
        let Some(api) = self.config.api_proxy.clone() else {
            return Ok(self);
        };
        let extra = match &self.config.upstream_ca {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                Error::Interception(format!("reading the upstream CA {}: {e}", path.display()))
            })?),
            None => None,
        };
        let upstream = intercept::upstream::Upstream::new(
            Arc::clone(&self.connector),
            Arc::clone(&self.config.policy),
            extra.as_deref(),
        )
        .map_err(Error::Interception)?;
        self.api_proxy = Some(awf::apiproxy::Server::new(api, upstream, broker));
        Ok(self)
    }

    /// Reaches allowed loopback destinations through `sockets` (sockets made in the
    /// sandbox's network namespace) instead of the proxy's own namespace.
    #[must_use]
    pub fn with_loopback_sockets(self, sockets: Arc<dyn LoopbackSockets>) -> Self {
        self.connector.set_loopback_sockets(sockets);
        self
    }
}
