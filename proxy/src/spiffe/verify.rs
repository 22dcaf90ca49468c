//! SPIFFE authentication of an upstream: its X.509-SVID chains to the Workload API's bundle
//! for its trust domain, and its SPIFFE ID is one the rule allows.
//!
//! This replaces web PKI for SPIFFE rules, as the SPIFFE X.509-SVID standard (§5) describes:
//! the peer's identity is its SPIFFE ID, not a DNS name, so the server name is not checked;
//! the chain is verified with webpki against the bundle of the trust domain the peer's ID
//! names (a federated bundle for a foreign domain), for the server-auth usage, at the
//! handshake's time. [`client_config`] builds the rustls configuration of one dial: this
//! verifier, the current SVID as the client certificate, and no session resumption (a resumed
//! session would skip both checks).

use std::fmt;
use std::sync::Arc;

use egressd_config::spiffe::{PeerAuthorization, SpiffeId};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};

use super::svid::{Bundles, X509Context, spiffe_id_of};

/// Why an upstream's certificate was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum PeerRejected {
    /// The certificate is not an X.509-SVID (no single `spiffe://` URI SAN).
    #[error("the upstream's certificate is not an X.509-SVID: {0}")]
    NotSvid(String),
    /// No bundle for the peer's trust domain came from the Workload API.
    #[error(
        "the upstream presented {id}, but the Workload API has no bundle for trust domain {}",
        id.trust_domain()
    )]
    UnknownTrustDomain {
        /// The ID it presented.
        id: SpiffeId,
    },
    /// The chain does not verify against the bundle of its trust domain.
    #[error("the upstream's X.509-SVID {id} does not verify against its trust bundle: {why}")]
    Chain {
        /// The ID it presented (not to be trusted: the chain failed).
        id: SpiffeId,
        /// webpki's error.
        why: String,
    },
    /// A valid SVID whose ID the rule does not allow.
    #[error("{0}")]
    NotAllowed(String),
}

/// Verifies the upstream's chain against `bundles`, then its SPIFFE ID against `peer`.
///
/// # Errors
///
/// [`PeerRejected`] naming the presented ID where there is one.
pub(crate) fn verify_peer(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    bundles: &Bundles,
    peer: &PeerAuthorization,
    now: UnixTime,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<SpiffeId, PeerRejected> {
    let id = spiffe_id_of(end_entity).map_err(PeerRejected::NotSvid)?;
    let anchors = bundles
        .get(id.trust_domain())
        .ok_or_else(|| PeerRejected::UnknownTrustDomain { id: id.clone() })?;
    let chain_error = |why: String| PeerRejected::Chain {
        id: id.clone(),
        why,
    };
    let cert =
        webpki::EndEntityCert::try_from(end_entity).map_err(|e| chain_error(e.to_string()))?;
    cert.verify_for_usage(
        algorithms.all,
        anchors,
        intermediates,
        now,
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .map_err(|e| chain_error(e.to_string()))?;
    peer.authorize(&id).map_err(PeerRejected::NotAllowed)?;
    Ok(id)
}

/// The rustls client configuration of one dial: `context`'s SVID as the client certificate,
/// upstreams verified by [`verify_peer`], ALPN `alpn`, no resumption.
///
/// # Errors
///
/// The provider does not support the default protocol versions (never with ring).
pub(crate) fn client_config(
    context: &Arc<X509Context>,
    peer: &Arc<PeerAuthorization>,
    provider: &Arc<CryptoProvider>,
    alpn: &[Vec<u8>],
) -> Result<rustls::ClientConfig, rustls::Error> {
    let verifier = PeerVerifier {
        context: Arc::clone(context),
        peer: Arc::clone(peer),
        provider: Arc::clone(provider),
    };
    // `dangerous()` is rustls's name for "a verifier of your own": this one is the SPIFFE
    // check in full (chain, usage, validity, ID), never a weaker one.
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::clone(provider))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(Present(Arc::clone(&context.svid.certified))));
    tls.resumption = Resumption::disabled();
    tls.alpn_protocols = alpn.to_vec();
    Ok(tls)
}

/// The [`PeerRejected`] inside a rustls handshake error, if our verifier refused the peer.
pub(crate) fn rejection(error: &rustls::Error) -> Option<&PeerRejected> {
    match error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            inner.downcast_ref::<PeerRejected>()
        }
        _ => None,
    }
}

/// Checks the upstream with one context's bundles.
struct PeerVerifier {
    context: Arc<X509Context>,
    peer: Arc<PeerAuthorization>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for PeerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerVerifier")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        verify_peer(
            end_entity,
            intermediates,
            &self.context.bundles,
            &self.peer,
            now,
            &self.provider.signature_verification_algorithms,
        )
        .map(|_| ServerCertVerified::assertion())
        .map_err(|e| {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
        })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Always presents one SVID.
#[derive(Debug)]
struct Present(Arc<CertifiedKey>);

impl ResolvesClientCert for Present {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}
