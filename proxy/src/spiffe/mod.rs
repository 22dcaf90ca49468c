//! SPIFFE workload identity on upstream connections: egressd, not the agent, is the workload
//! that talks to the SPIRE agent.
//!
//! ```text
//!  spiffe-x509 credential ─► X509Source (source.rs) ─► FetchX509SVID stream (workload.rs)
//!                              │ each response: pick the SVID, check it, load its key (svid.rs)
//!                              ▼
//!  request to a rule with `spiffe` ─► ready(): an SVID valid now, or 503 (no SVID, expired)
//!     ─► Dialer::handshake: rustls with the SVID as client certificate; the upstream's
//!        certificate verified against the Workload API's bundle and its SPIFFE ID against
//!        the rule (verify.rs), not web PKI ─► 502 naming the ID when it is refused
//!     ─► SpiffePeer (presented and verified IDs) on every response, for the audit record
//! ```
//!
//! The credential's certificates change under running requests: each dial takes the SVID of
//! that moment, and open (pooled) connections keep the identity they were made with.
//!
//! # What this module does not do
//!
//! * It reads no environment: the daemon passes `SPIFFE_ENDPOINT_SOCKET` through the token
//!   broker's `SourceEnv`, and the configuration names the socket otherwise.
//! * It does not fetch JWT-SVIDs, and it ignores CRLs (the Workload API of SPIRE sends none).
//!
//! # Security
//!
//! Private keys stay in memory, in rustls's signing keys; the raw bytes from the Workload API
//! are zeroed once loaded, and nothing here prints them. A dial never falls back to web PKI
//! or to no client certificate: without a valid SVID it fails.

mod source;
mod svid;
mod verify;
mod workload;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use egressd_config::spiffe::{PeerAuthorization, SpiffeId};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub(crate) use self::source::{Unavailable, X509Source};
use self::verify::PeerRejected;

/// The identities of one SPIFFE connection, for audit records. hyper attaches it to every
/// response that comes over that connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SpiffePeer {
    /// The SVID egressd presented.
    pub(crate) presented: SpiffeId,
    /// The upstream's SPIFFE ID, verified against the bundle and allowed by the rule.
    pub(crate) verified: SpiffeId,
}

/// Why a dial to a SPIFFE rule's upstream failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DialError {
    /// No SVID valid now.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// The upstream's certificate was refused (not an SVID, bad chain, ID not allowed).
    #[error("{why}")]
    Rejected {
        /// The SVID egressd presented.
        presented: SpiffeId,
        /// What was wrong with the upstream's.
        why: PeerRejected,
    },
    /// The handshake failed otherwise (the upstream refused our SVID, or spoke no TLS).
    #[error("the TLS handshake failed (egressd presented {presented}): {why}")]
    Handshake {
        /// The SVID egressd presented.
        presented: SpiffeId,
        /// The TLS error.
        why: String,
    },
}

impl DialError {
    /// The SVID egressd presented, when it got that far.
    pub(crate) fn presented(&self) -> Option<&SpiffeId> {
        match self {
            Self::Unavailable(_) => None,
            Self::Rejected { presented, .. } | Self::Handshake { presented, .. } => Some(presented),
        }
    }

    /// Whether trying again may work: not for an upstream whose identity is wrong.
    pub(crate) fn retryable(&self) -> bool {
        !matches!(self, Self::Rejected { .. })
    }
}

/// Dials the upstreams of one SPIFFE rule: TLS with the current SVID, SPIFFE verification.
pub(crate) struct Dialer {
    source: X509Source,
    peer: Arc<PeerAuthorization>,
    provider: Arc<CryptoProvider>,
    alpn: Vec<Vec<u8>>,
}

impl Dialer {
    /// A dialer presenting `source`'s SVID, accepting upstreams `peer` allows, offering
    /// `alpn`.
    pub(crate) fn new(source: X509Source, peer: PeerAuthorization, alpn: &[&[u8]]) -> Self {
        Self {
            source,
            peer: Arc::new(peer),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            alpn: alpn.iter().map(|p| p.to_vec()).collect(),
        }
    }

    /// TLS over `tcp` to `name`, presenting the SVID of this moment.
    ///
    /// # Errors
    ///
    /// [`DialError`]: no valid SVID, the upstream refused, or refused by us.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping it drops the connection being set up.
    pub(crate) async fn handshake(
        &self,
        name: ServerName<'static>,
        tcp: TcpStream,
    ) -> Result<(TlsStream<TcpStream>, SpiffePeer), DialError> {
        let context = self.source.ready().await?;
        let presented = context.svid.id.clone();
        let handshake_error = |why: String| DialError::Handshake {
            presented: presented.clone(),
            why,
        };
        let tls = verify::client_config(&context, &self.peer, &self.provider, &self.alpn)
            .map_err(|e| handshake_error(e.to_string()))?;
        let stream = match TlsConnector::from(Arc::new(tls)).connect(name, tcp).await {
            Ok(stream) => stream,
            Err(io) => {
                let tls_error = io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
                return Err(match tls_error.and_then(verify::rejection) {
                    Some(why) => DialError::Rejected {
                        presented,
                        why: why.clone(),
                    },
                    None => handshake_error(
                        tls_error.map_or_else(|| io.to_string(), ToString::to_string),
                    ),
                });
            }
        };
        // The verifier accepted the leaf, so it has a valid ID; read it again to record it.
        let verified = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| svid::spiffe_id_of(leaf))
            .ok_or_else(|| handshake_error("the upstream presented no certificate".into()))?
            .map_err(handshake_error)?;
        Ok((
            stream,
            SpiffePeer {
                presented,
                verified,
            },
        ))
    }

    /// The credential whose SVID this dialer presents.
    pub(crate) fn source(&self) -> &X509Source {
        &self.source
    }
}
