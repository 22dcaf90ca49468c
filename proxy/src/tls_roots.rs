//! The roots and the client configuration of egressd's own TLS clients (interception's
//! upstream side, the token broker's HTTP client, provenance's key fetches, the OTLP
//! export): webpki's roots plus `--upstream-ca` (or `--otlp-ca`). A leaf: it imports
//! nothing from the crate.

use rustls::pki_types::CertificateDer;

/// The webpki roots plus every certificate in `extra_ca_pem`.
///
/// # Errors
///
/// `extra_ca_pem` is not PEM or holds no certificate.
pub(crate) fn client_roots(extra_ca_pem: Option<&[u8]>) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(pem) = extra_ca_pem {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("invalid PEM: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("invalid certificate: {e}"))?;
            added += 1;
        }
        if added == 0 {
            return Err("no PEM certificate in it".to_owned());
        }
    }
    Ok(roots)
}

/// A TLS client configuration (ring, TLS 1.2 and 1.3) trusting `roots` and offering `alpn`:
/// the one shape every client of egressd's own uses.
///
/// # Errors
///
/// The provider supports none of the protocol versions (cannot happen with ring).
pub(crate) fn client_config(
    roots: rustls::RootCertStore,
    alpn: &[&[u8]],
) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(std::sync::Arc::new(config))
}
