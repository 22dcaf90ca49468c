//! The bench's own throw-away CA and the upstream's certificate (ECDSA P-256, as most public
//! sites serve), generated at every run and written to the work directory.

use std::{fs, os::unix::fs::PermissionsExt, path::Path};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};

/// Where the generated files are.
#[derive(Debug, Clone)]
pub struct Files {
    /// The CA certificate (PEM), trusted by the clients and by the TLS-terminating proxies.
    pub ca: std::path::PathBuf,
    /// The upstream's certificate (PEM).
    pub cert: std::path::PathBuf,
    /// The upstream's key (PKCS#8 PEM).
    pub key: std::path::PathBuf,
}

/// Generates a CA and a leaf for `name` into `dir` (`ca.pem` world-readable, so that the
/// sandboxed client can read it; the key only for root).
///
/// # Errors
///
/// Key generation or signing failed, or a file could not be written.
pub fn generate(dir: &Path, name: &str) -> Result<Files> {
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "egressd bench CA");
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut leaf = CertificateParams::new(vec![name.to_owned()])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    leaf.distinguished_name = dn;
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = leaf.signed_by(&key, &issuer)?;

    let files = Files {
        ca: dir.join("ca.pem"),
        cert: dir.join("upstream.pem"),
        key: dir.join("upstream.key"),
    };
    write(&files.ca, &ca_cert.pem(), 0o644)?;
    write(&files.cert, &cert.pem(), 0o644)?;
    write(&files.key, &key.serialize_pem(), 0o600)?;
    Ok(files)
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}
