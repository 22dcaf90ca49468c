//! The sandbox's trust bundle: the host's system roots followed by the run's CA, as one PEM
//! text. The daemon writes it into the sandbox and points `SSL_CERT_FILE`,
//! `NODE_EXTRA_CA_CERTS`, `REQUESTS_CA_BUNDLE`, `CURL_CA_BUNDLE`, `GIT_SSL_CAINFO`, `AWS_CA_BUNDLE` and
//! `CARGO_HTTP_CAINFO` at it.
//!
//! The system bundle is read from a path the caller gives ([`find_system_bundle`] probes the
//! usual places). This module reads no environment variable: `SSL_CERT_FILE` in the daemon's
//! own environment is the daemon's business (and rustls-native-certs, which honours it, is
//! therefore not used here).
//!
//! # Security
//!
//! The bundle is rebuilt from parsed certificates, never copied: only `CERTIFICATE` blocks
//! come out, so a private key (or anything else) that sits in the system file or in the
//! CA text passed in cannot reach the sandbox through it.

use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Where Linux distributions keep their PEM bundle of system roots, most common first
/// (the same list Go's `crypto/x509` probes).
pub const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt", // Debian, Ubuntu, Gentoo, Arch
    "/etc/pki/tls/certs/ca-bundle.crt",   // Fedora, RHEL 6
    "/etc/ssl/ca-bundle.pem",             // openSUSE
    "/etc/pki/tls/cacert.pem",            // OpenELEC
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", // CentOS, RHEL 7
    "/etc/ssl/cert.pem",                  // Alpine
];

/// Why the trust bundle could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// The CA text holds no certificate, or more than one. Pass
    /// [`EphemeralCa::cert_pem`](super::EphemeralCa::cert_pem).
    #[error("the CA PEM must hold exactly one certificate, it holds {found}")]
    Ca {
        /// How many certificates it holds.
        found: usize,
    },
    /// The system bundle holds no certificate, so the sandbox would trust nothing but the
    /// CA and every pass-through connection would fail. Pass the distribution's bundle path.
    #[error("{} holds no certificate: it is not a bundle of system roots", path.display())]
    NoSystemRoots {
        /// The file.
        path: PathBuf,
    },
    /// A PEM block of a file is malformed (bad base64, missing end line).
    #[error("parsing {}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The PEM error.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The system bundle could not be read: it does not exist or is not readable. Pass the
    /// distribution's bundle path.
    #[error("reading the system roots {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// The first of [`SYSTEM_BUNDLES`] that exists on this host, if any.
pub fn find_system_bundle() -> Option<&'static Path> {
    SYSTEM_BUNDLES
        .iter()
        .map(Path::new)
        .find(|path| path.is_file())
}

/// The trust bundle for a sandbox: every certificate of `system_bundle`, in order, then the
/// one certificate in `ca_pem`; LF line endings, nothing but `CERTIFICATE` blocks.
///
/// # Errors
///
/// [`BundleError::Read`] or [`BundleError::Parse`] if the system bundle cannot be read or
/// parsed, [`BundleError::NoSystemRoots`] if it holds no certificate, [`BundleError::Ca`]
/// if `ca_pem` does not hold exactly one certificate.
pub fn trust_bundle(system_bundle: &Path, ca_pem: &str) -> Result<String, BundleError> {
    let system = std::fs::read(system_bundle).map_err(|source| BundleError::Read {
        path: system_bundle.to_owned(),
        source,
    })?;
    let roots = certificates(&system, system_bundle)?;
    if roots.is_empty() {
        return Err(BundleError::NoSystemRoots {
            path: system_bundle.to_owned(),
        });
    }
    let ca = certificates(ca_pem.as_bytes(), Path::new("<CA certificate>"))?;
    let [ca] = ca.as_slice() else {
        return Err(BundleError::Ca { found: ca.len() });
    };

    let lf = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    let mut bundle = String::new();
    for cert in roots.iter().chain([ca]) {
        bundle.push_str(&pem::encode_config(
            &pem::Pem::new("CERTIFICATE", cert.as_ref()),
            lf,
        ));
    }
    Ok(bundle)
}

/// Every `CERTIFICATE` block of `pem` (other block kinds are skipped).
fn certificates(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, BundleError> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| BundleError::Parse {
            path: path.to_owned(),
            source,
        })
}
