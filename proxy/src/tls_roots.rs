//! The roots egressd's own TLS clients trust (interception's upstream side, the token
//! broker's HTTP client, provenance's key fetches): webpki's roots plus `--upstream-ca`. A
//! leaf: it imports nothing from the crate.

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
