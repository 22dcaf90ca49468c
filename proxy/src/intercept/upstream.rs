//! The client side of interception: pooled HTTPS connections to the real upstream, with
//! real certificate verification: webpki roots plus `--upstream-ca` ([`Upstream::new`]), or,
//! for a rule with `spiffe`, SPIFFE mTLS with the Workload API's SVID and bundle
//! ([`Upstream::spiffe`], see `crate::spiffe`). A SPIFFE connection tells hyper which
//! identities it carries ([`SpiffePeer`] on every response, for the audit record).
//!
//! Connections go through the proxy's own [`Connector`]: the upstream *name* is resolved by
//! egressd, answers pointing inside (loopback, private, metadata) are refused unless the
//! allowlist says otherwise, and the checked address is dialled. There is no way to turn
//! verification off outside tests.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use egressd_config::{Policy, Scheme, Target, TargetHost};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::host::HostName;
use crate::spiffe::{Dialer, SpiffePeer, X509Source};
use crate::transport::connect::Connector;

/// Request body the upstream client sends.
pub(crate) type UpBody = UnsyncBoxBody<Bytes, crate::body::BodyError>;

/// The pooled clients: one that may speak h2 (most requests), one HTTP/1.1-only (upgrades,
/// which need an HTTP/1.1 connection).
#[derive(Clone)]
pub(crate) struct Upstream {
    /// ALPN h2 and http/1.1.
    pub(crate) auto: Client<UpstreamConnector, UpBody>,
    /// ALPN http/1.1 only.
    pub(crate) http1: Client<UpstreamConnector, UpBody>,
}

impl Upstream {
    /// Builds both clients over `connector`, trusting the webpki roots and `extra_ca_pem`.
    ///
    /// # Errors
    ///
    /// `extra_ca_pem` holds no usable certificate.
    pub(crate) fn new(
        connector: Arc<Connector>,
        policy: Arc<Policy>,
        extra_ca_pem: Option<&[u8]>,
    ) -> Result<Self, String> {
        let roots = crate::tls_roots::client_roots(extra_ca_pem)?;
        let make = |alpn: &[&[u8]]| -> Result<Client<UpstreamConnector, UpBody>, String> {
            let tls = crate::tls_roots::client_config(roots.clone(), alpn)?;
            let connector = UpstreamConnector {
                connector: Arc::clone(&connector),
                policy: Arc::clone(&policy),
                tls: Tls::WebPki(TlsConnector::from(tls)),
            };
            Ok(Client::builder(TokioExecutor::new()).build(connector))
        };
        Ok(Self {
            auto: make(&[b"h2", b"http/1.1"])?,
            http1: make(&[b"http/1.1"])?,
        })
    }

    /// Both clients for a SPIFFE rule: `source`'s SVID as the client certificate, upstreams
    /// verified against its bundle and allowed by `peer`. Their pools are their own, so a
    /// connection made with an SVID never serves a request of a web-PKI rule.
    pub(crate) fn spiffe(
        connector: Arc<Connector>,
        policy: Arc<Policy>,
        source: X509Source,
        peer: &egressd_config::spiffe::PeerAuthorization,
    ) -> Self {
        let make = |alpn: &[&[u8]]| {
            let connector = UpstreamConnector {
                connector: Arc::clone(&connector),
                policy: Arc::clone(&policy),
                tls: Tls::Spiffe(Arc::new(Dialer::new(source.clone(), peer.clone(), alpn))),
            };
            Client::builder(TokioExecutor::new()).build(connector)
        };
        Self {
            auto: make(&[b"h2", b"http/1.1"]),
            http1: make(&[b"http/1.1"]),
        }
    }
}

/// An upstream that did not answer in time: the client gets `504`, not `502`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UpstreamTimeout(pub(crate) &'static str);

/// Dials `https://host[:port]` URIs through the proxy's [`Connector`], then TLS; the TLS
/// handshake is bounded by `timeouts.connect` like the TCP connect before it.
#[derive(Clone)]
pub(crate) struct UpstreamConnector {
    connector: Arc<Connector>,
    policy: Arc<Policy>,
    tls: Tls,
}

/// How an upstream is authenticated.
#[derive(Clone)]
enum Tls {
    /// Web PKI: the name checked against webpki roots plus `--upstream-ca`.
    WebPki(TlsConnector),
    /// SPIFFE: the current SVID presented, the upstream's ID checked (`crate::spiffe`).
    Spiffe(Arc<Dialer>),
}

impl tower_service::Service<Uri> for UpstreamConnector {
    type Response = UpstreamIo;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamIo, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (connector, tls) = (Arc::clone(&self.connector), self.tls.clone());
        let policy = Arc::clone(&self.policy);
        Box::pin(async move {
            let host = uri.host().ok_or("upstream URI without a host")?.to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let name = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let target = match name.parse() {
                Ok(ip) => HostName::Ip(ip),
                Err(_) => HostName::Name(name.clone()),
            };
            // Intercepted hosts are ordinary allowlisted names: private answers only where
            // the allowlist says so.
            let reach = policy
                .decide(&Target {
                    host: TargetHost::Name(&name),
                    port,
                    scheme: Scheme::Https,
                })
                .reach();
            if let Tls::Spiffe(dialer) = &tls {
                // Before dialling: no connection is made without an SVID to present.
                dialer
                    .source()
                    .ready()
                    .await
                    .map_err(crate::spiffe::DialError::from)?;
            }
            let up = connector.connect(&target, port, reach).await?;
            let server_name = ServerName::try_from(name)?;
            let timed_out =
                || UpstreamTimeout("the upstream's TLS handshake timed out (timeouts.connect)");
            let within = connector.connect_timeout();
            match tls {
                Tls::WebPki(tls) => {
                    let stream = tokio::time::timeout(within, tls.connect(server_name, up.stream))
                        .await
                        .map_err(|_| timed_out())??;
                    Ok(UpstreamIo(TokioIo::new(stream), None))
                }
                Tls::Spiffe(dialer) => {
                    let handshake = dialer.handshake(server_name, up.stream);
                    let (stream, peer) = tokio::time::timeout(within, handshake)
                        .await
                        .map_err(|_| timed_out())??;
                    Ok(UpstreamIo(TokioIo::new(stream), Some(peer)))
                }
            }
        })
    }
}

/// A TLS connection to an upstream, telling hyper whether h2 was negotiated and, for SPIFFE,
/// which identities it carries.
pub(crate) struct UpstreamIo(TokioIo<TlsStream<TcpStream>>, Option<SpiffePeer>);

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        let h2 = self.0.inner().get_ref().1.alpn_protocol() == Some(b"h2");
        let connected = if h2 {
            Connected::new().negotiated_h2()
        } else {
            Connected::new()
        };
        match &self.1 {
            Some(peer) => connected.extra(peer.clone()),
            None => connected,
        }
    }
}

impl hyper::rt::Read for UpstreamIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for UpstreamIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
