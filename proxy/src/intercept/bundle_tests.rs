//! Trust bundle tests: a generated system bundle, the host's real one, and bad inputs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::{BundleError, EphemeralCa, find_system_bundle, trust_bundle};

/// A directory under the system temp dir, unique per test, removed on drop.
pub(crate) struct TempDir {
    pub(crate) path: PathBuf,
}

impl TempDir {
    pub(crate) fn new(tag: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "egressd-intercept-{tag}-{}-{n}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A system bundle file holding `n` self-signed roots, written the way distributions write
/// them (comment lines between blocks), plus a private key block that must not be copied.
pub(crate) struct SystemBundle {
    pub(crate) path: PathBuf,
    pub(crate) roots: Vec<CertificateDer<'static>>,
    _dir: TempDir,
}

pub(crate) fn system_bundle_with_roots(n: usize) -> SystemBundle {
    let dir = TempDir::new("system");
    let mut text = String::new();
    let mut roots = Vec::new();
    for i in 0..n {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("Test Root {i}"));
        let cert = params.self_signed(&key).unwrap();
        text.push_str(&format!("# Test Root {i}\r\n"));
        text.push_str(&cert.pem().replace('\n', "\r\n"));
        if i == 0 {
            text.push_str(&key.serialize_pem());
        }
        roots.push(cert.der().clone());
    }
    let path = dir.path.join("ca-certificates.crt");
    std::fs::write(&path, text).unwrap();
    SystemBundle {
        path,
        roots,
        _dir: dir,
    }
}

fn parse(bundle: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(bundle.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

fn begin_lines(bundle: &str) -> usize {
    bundle
        .lines()
        .filter(|l| l.starts_with("-----BEGIN"))
        .count()
}

fn ca() -> EphemeralCa {
    EphemeralCa::new(&["example.com".to_owned()]).unwrap()
}

#[test]
fn bundle_is_the_system_roots_then_the_ca() {
    let system = system_bundle_with_roots(3);
    let ca = ca();
    let bundle = trust_bundle(&system.path, ca.cert_pem()).unwrap();

    let certs = parse(&bundle);
    assert_eq!(certs.len(), system.roots.len() + 1);
    assert_eq!(
        begin_lines(&bundle),
        certs.len(),
        "nothing but CERTIFICATE blocks"
    );
    assert_eq!(
        &certs[..3],
        &system.roots[..],
        "system roots first, in order"
    );
    assert_eq!(certs.last().unwrap(), ca.cert_der(), "ends with our CA");
    assert!(bundle.ends_with(&format!("{}\n", ca.cert_pem().trim_end())));
    assert!(
        !bundle.contains("PRIVATE KEY"),
        "the key block in the system file is dropped"
    );
    assert!(!bundle.contains('\r'));
    assert!(!bundle.contains('#'));
}

#[test]
fn bundle_from_this_hosts_system_roots() {
    let Some(path) = find_system_bundle() else {
        eprintln!("skipped: none of SYSTEM_BUNDLES exists on this host");
        return;
    };
    let system_text = std::fs::read_to_string(path).unwrap();
    let system = parse(&system_text);
    let ca = ca();
    let bundle = trust_bundle(path, ca.cert_pem()).unwrap();
    let certs = parse(&bundle);
    assert_eq!(certs.len(), system.len() + 1, "{}", path.display());
    assert_eq!(begin_lines(&bundle), system.len() + 1);
    assert_eq!(certs.last().unwrap(), ca.cert_der());
    assert_eq!(&certs[..system.len()], &system[..]);
}

#[test]
fn missing_system_bundle_names_the_path() {
    let dir = TempDir::new("missing");
    let path = dir.path.join("nope.crt");
    let err = trust_bundle(&path, ca().cert_pem()).unwrap_err();
    assert!(matches!(err, BundleError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains("nope.crt"), "{err}");
}

#[test]
fn system_bundle_without_certificates_is_refused() {
    let dir = TempDir::new("empty");
    let path = dir.path.join("empty.crt");
    let key = rcgen::KeyPair::generate().unwrap();
    std::fs::write(&path, format!("# nothing here\n{}", key.serialize_pem())).unwrap();
    let err = trust_bundle(&path, ca().cert_pem()).unwrap_err();
    assert!(matches!(err, BundleError::NoSystemRoots { .. }), "{err:?}");
    assert!(err.to_string().contains("empty.crt"), "{err}");
}

#[test]
fn malformed_system_bundle_is_refused() {
    let dir = TempDir::new("malformed");
    let path = dir.path.join("bad.crt");
    std::fs::write(
        &path,
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = trust_bundle(&path, ca().cert_pem()).unwrap_err();
    assert!(matches!(err, BundleError::Parse { .. }), "{err:?}");
}

#[test]
fn ca_pem_must_hold_exactly_one_certificate() {
    let system = system_bundle_with_roots(1);
    let ca = ca();
    let two = format!("{}{}", ca.cert_pem(), ca.cert_pem());
    for (pem, found) in [("", 0), (two.as_str(), 2)] {
        match trust_bundle(&system.path, pem) {
            Err(BundleError::Ca { found: f }) => assert_eq!(f, found),
            other => panic!("expected BundleError::Ca, got {other:?}"),
        }
    }
}
