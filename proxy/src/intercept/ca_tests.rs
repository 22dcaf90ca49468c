//! Tests of the ephemeral CA over real rustls handshakes (client and server connections
//! joined in memory), and of its scope, cache and key hygiene.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use rcgen::SanType;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, ClientConfig, ClientConnection, ServerConfig, ServerConnection};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::*;
use crate::intercept::bundle_tests::{TempDir, system_bundle_with_roots};

fn entries(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

fn ca(names: &[&str]) -> Arc<EphemeralCa> {
    Arc::new(EphemeralCa::new(&entries(names)).unwrap())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The interception server as the caller builds it: resolver plus ALPN h2 and http/1.1.
fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A client that trusts the CA certificate and nothing else.
fn client_config(ca: &CertificateDer<'static>) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// Always presents one leaf, whatever the SNI: serves the leaves the tests mint by hand.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Which side of the handshake failed, and why.
#[derive(Debug)]
enum Failure {
    Client(rustls::Error),
    Server(rustls::Error),
}

/// Runs a full handshake between the two configs, in memory.
fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    name: &str,
) -> Result<(ClientConnection, ServerConnection), Failure> {
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let mut c = ClientConnection::new(client, name).unwrap();
    let mut s = ServerConnection::new(server).unwrap();
    let mut buf = Vec::new();
    for _ in 0..16 {
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok((c, s));
        }
        buf.clear();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        s.read_tls(&mut buf.as_slice()).unwrap();
        s.process_new_packets().map_err(Failure::Server)?;
        buf.clear();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        c.read_tls(&mut buf.as_slice()).unwrap();
        c.process_new_packets().map_err(Failure::Client)?;
    }
    panic!("handshake did not finish");
}

/// The webpki error inside a client's certificate rejection.
fn webpki_error(failure: &Failure) -> webpki::Error {
    match failure {
        Failure::Client(rustls::Error::InvalidCertificate(CertificateError::Other(other))) => other
            .0
            .downcast_ref::<webpki::Error>()
            .cloned()
            .unwrap_or_else(|| panic!("not a webpki error: {other:?}")),
        other => panic!("expected the client to reject the certificate, got {other:?}"),
    }
}

fn dns_san(name: &str) -> SanType {
    SanType::DnsName(name.try_into().unwrap())
}

#[test]
fn client_trusting_only_the_ca_completes_handshake_for_intercepted_name() {
    let ca = ca(&["example.com", "*.githubusercontent.com"]);
    let server = server_config(Arc::new(CaResolver::new(ca.clone())));
    let client = client_config(ca.cert_der());

    for name in [
        "api.example.com",
        "example.com",
        "raw.githubusercontent.com",
    ] {
        let (c, _) = handshake(server.clone(), client.clone(), name)
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(c.alpn_protocol(), Some(&b"h2"[..]));
        let chain = c.peer_certificates().unwrap();
        assert_eq!(chain.len(), 2, "chain is [leaf, CA]");
        assert_eq!(&chain[1], ca.cert_der());

        let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        assert_eq!(san.value.general_names, vec![GeneralName::DNSName(name)]);
        let eku = leaf.extended_key_usage().unwrap().unwrap();
        assert!(eku.value.server_auth);
        assert!(!leaf.is_ca());
        assert!(
            leaf.validity().not_after
                <= X509Certificate::from_der(ca.cert_der())
                    .unwrap()
                    .1
                    .validity()
                    .not_after
        );
    }
}

#[test]
fn leaf_outside_name_constraints_fails_verification() {
    let ca = ca(&["example.com"]);
    let client = client_config(ca.cert_der());

    // Control: the same bypass, for a covered name, verifies; so a failure below is the
    // constraints' doing and not the bypass's.
    let inside = server_config(Arc::new(Fixed(
        ca.danger_mint_unchecked(dns_san("a.example.com")),
    )));
    handshake(inside, client.clone(), "a.example.com").unwrap();

    for outside in ["evil.com", "badexample.com", "example.com.evil.net"] {
        let leaf = ca.danger_mint_unchecked(dns_san(outside));
        let server = server_config(Arc::new(Fixed(leaf)));
        let failure = handshake(server, client.clone(), outside).unwrap_err();
        assert_eq!(
            webpki_error(&failure),
            webpki::Error::NameConstraintViolation,
            "{outside}"
        );
    }
}

#[test]
fn apex_of_wildcard_entry_fails_verification() {
    let ca = ca(&["*.example.com"]);
    let client = client_config(ca.cert_der());

    let sub = server_config(Arc::new(Fixed(
        ca.danger_mint_unchecked(dns_san("a.b.example.com")),
    )));
    handshake(sub, client.clone(), "a.b.example.com").unwrap();

    let apex = server_config(Arc::new(Fixed(
        ca.danger_mint_unchecked(dns_san("example.com")),
    )));
    let failure = handshake(apex, client, "example.com").unwrap_err();
    assert_eq!(
        webpki_error(&failure),
        webpki::Error::NameConstraintViolation
    );
}

#[test]
fn leaf_with_ip_san_fails_verification() {
    let ca = ca(&["example.com"]);
    let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let leaf = ca.danger_mint_unchecked(SanType::IpAddress(ip));
    let server = server_config(Arc::new(Fixed(leaf)));
    let failure = handshake(server, client_config(ca.cert_der()), "10.0.0.1").unwrap_err();
    assert_eq!(
        webpki_error(&failure),
        webpki::Error::NameConstraintViolation
    );
}

#[test]
fn resolver_gives_no_certificate_outside_the_scope() {
    let ca = ca(&["example.com"]);
    let server = server_config(Arc::new(CaResolver::new(ca.clone())));
    let client = client_config(ca.cert_der());

    // An outside SNI, and no SNI at all (a client connecting to an IP literal sends none).
    for name in ["evil.com", "10.0.0.1"] {
        match handshake(server.clone(), client.clone(), name) {
            Err(Failure::Server(rustls::Error::General(m)))
                if m.contains("no server certificate") => {}
            Err(Failure::Server(e)) => panic!("{name}: unexpected server error {e:?}"),
            other => panic!(
                "{name}: expected the server to abort, got {:?}",
                other.err()
            ),
        }
    }
    assert_eq!(ca.cached_leaves(), 0);
}

#[test]
fn leaf_for_refuses_outside_names_and_signs_nothing() {
    let ca = ca(&["example.com", "*.github.io"]);
    for name in [
        "evil.com",
        "badexample.com",
        "github.io",
        "example.com.evil.net",
        "com",
    ] {
        match ca.leaf_for(name) {
            Err(CaError::OutsideScope { name: n }) => assert_eq!(n, name),
            other => panic!("{name}: expected OutsideScope, got {:?}", other.map(|_| ())),
        }
        assert!(!ca.covers(name), "{name}");
    }
    assert_eq!(ca.cached_leaves(), 0);
    let message = ca.leaf_for("evil.com").unwrap_err().to_string();
    assert!(
        message.contains("evil.com") && message.contains("name constraints"),
        "{message}"
    );
}

#[test]
fn wildcard_entry_covers_subdomains_but_not_the_apex() {
    let ca = ca(&["*.example.com"]);
    for name in ["a.example.com", "a.b.example.com"] {
        assert!(ca.covers(name), "{name}");
        ca.leaf_for(name).unwrap();
    }
    for name in ["example.com", "badexample.com", "a.example.org"] {
        assert!(!ca.covers(name), "{name}");
        assert!(
            matches!(ca.leaf_for(name), Err(CaError::OutsideScope { .. })),
            "{name}"
        );
    }
}

#[test]
fn domain_entry_covers_the_apex_and_subdomains() {
    for entry in ["example.com", ".example.com", "Example.COM"] {
        let ca = ca(&[entry]);
        for name in ["example.com", "a.example.com", "a.b.example.com"] {
            assert!(ca.covers(name), "{entry}: {name}");
        }
        for name in ["badexample.com", "example.co", "xample.com"] {
            assert!(!ca.covers(name), "{entry}: {name}");
        }
    }
}

#[test]
fn sni_is_matched_without_case_and_one_trailing_dot() {
    let ca = ca(&["example.com"]);
    let leaf = ca.leaf_for("api.example.com").unwrap();
    for sni in ["API.Example.COM", "api.example.com.", "Api.Example.Com."] {
        assert!(Arc::ptr_eq(&leaf, &ca.leaf_for(sni).unwrap()), "{sni}");
    }
    assert_eq!(ca.cached_leaves(), 1);

    // Over the wire too: rustls sends the SNI as the client spells it.
    let server = server_config(Arc::new(CaResolver::new(ca.clone())));
    handshake(server, client_config(ca.cert_der()), "API.Example.COM").unwrap();
}

#[test]
fn invalid_snis_are_refused() {
    let ca = ca(&["example.com"]);
    for sni in [
        "",
        ".",
        "a..example.com",
        "*.example.com",
        "127.0.0.1",
        "::1",
        "a b.example.com",
    ] {
        assert!(
            matches!(ca.leaf_for(sni), Err(CaError::InvalidName { .. })),
            "{sni:?}"
        );
    }
}

#[test]
fn unsupported_entries_are_refused() {
    assert!(matches!(
        EphemeralCa::new(&[]),
        Err(CaError::NoInterceptedDomains)
    ));
    for entry in [
        "https://example.com",
        "example.com:443",
        "example.com/path",
        "example.com.",
        "api-*.example.com",
        "*.example.*",
        "*",
        "1.2.3.4",
        "[::1]",
        "",
    ] {
        match EphemeralCa::new(&entries(&[entry])) {
            Err(CaError::UnsupportedEntry { entry: e, .. }) => assert_eq!(e, entry),
            other => panic!("{entry:?}: expected UnsupportedEntry, got {other:?}"),
        }
    }
}

#[test]
fn repeat_name_returns_the_same_leaf() {
    let ca = ca(&["example.com"]);
    let first = ca.leaf_for("api.example.com").unwrap();
    let again = ca.leaf_for("api.example.com").unwrap();
    assert!(Arc::ptr_eq(&first, &again));
    let other = ca.leaf_for("example.com").unwrap();
    assert!(!Arc::ptr_eq(&first, &other));
}

#[test]
fn leaf_cache_is_bounded_and_drops_the_oldest() {
    let ca = EphemeralCa::with_capacity(&entries(&["example.com"]), 2).unwrap();
    let a = ca.leaf_for("a.example.com").unwrap();
    let b = ca.leaf_for("b.example.com").unwrap();
    let _c = ca.leaf_for("c.example.com").unwrap();
    assert_eq!(ca.cached_leaves(), 2);
    // b is still cached, a was dropped and is minted anew.
    assert!(Arc::ptr_eq(&b, &ca.leaf_for("b.example.com").unwrap()));
    assert!(!Arc::ptr_eq(&a, &ca.leaf_for("a.example.com").unwrap()));
    assert_eq!(ca.cached_leaves(), 2);
}

#[test]
fn ca_certificate_is_a_short_lived_name_constrained_ca() {
    let ca = ca(&["Example.com", "*.example.org", "example.com"]);
    let (_, cert) = X509Certificate::from_der(ca.cert_der()).unwrap();

    assert!(ca.name().starts_with("egressd ephemeral CA "));
    assert!(cert.subject().to_string().contains(ca.name()));
    assert_eq!(cert.subject(), cert.issuer());

    let basic = cert.basic_constraints().unwrap().unwrap();
    assert!(basic.critical);
    assert!(basic.value.ca);
    assert_eq!(basic.value.path_len_constraint, Some(0));

    let usage = cert.key_usage().unwrap().unwrap().value;
    assert!(usage.key_cert_sign() && usage.crl_sign());
    assert!(!usage.digital_signature());

    let constraints = cert.name_constraints().unwrap().unwrap();
    assert!(
        constraints.critical,
        "RFC 5280: name constraints MUST be critical"
    );
    let permitted: Vec<_> = constraints
        .value
        .permitted_subtrees
        .as_ref()
        .unwrap()
        .iter()
        .map(|subtree| subtree.base.clone())
        .collect();
    assert_eq!(
        permitted,
        vec![
            GeneralName::DNSName("example.com"),
            GeneralName::DNSName(".example.org")
        ]
    );
    let excluded: Vec<_> = constraints
        .value
        .excluded_subtrees
        .as_ref()
        .unwrap()
        .iter()
        .map(|subtree| subtree.base.clone())
        .collect();
    assert_eq!(
        excluded,
        vec![
            GeneralName::IPAddress(&[0; 8]),
            GeneralName::IPAddress(&[0; 32])
        ]
    );

    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let validity = cert.validity();
    let not_before = validity.not_before.timestamp();
    let not_after = validity.not_after.timestamp();
    assert!(
        (now - 3700..=now - 3500).contains(&not_before),
        "back-dated one hour"
    );
    assert!(
        (now + 86_300..=now + 86_500).contains(&not_after),
        "valid for 24 hours"
    );
    assert_eq!(ca.not_after().unix_timestamp(), not_after);
}

#[test]
fn each_ca_has_its_own_key_and_name() {
    let one = ca(&["example.com"]);
    let two = ca(&["example.com"]);
    assert_ne!(one.name(), two.name());
    assert_ne!(one.cert_der(), two.cert_der());
    // A leaf of one does not verify under the other.
    let server = server_config(Arc::new(CaResolver::new(one)));
    let failure = handshake(server, client_config(two.cert_der()), "example.com").unwrap_err();
    assert!(
        matches!(
            failure,
            Failure::Client(rustls::Error::InvalidCertificate(
                CertificateError::BadSignature | CertificateError::UnknownIssuer
            ))
        ),
        "{failure:?}"
    );
}

/// "No CA key on disk", as far as a unit test can show it. What this proves: nothing this
/// module hands out for writing or printing (the certificate PEM, the trust bundle, the
/// leaves' chains, `Debug` of the CA and the resolver) contains the key, in PEM, DER or raw
/// form, and writing those artifacts to a directory leaves no key there. What it cannot
/// prove: that no other code serialises the key; that rests on the API offering no way to
/// get it (the only accessor is `danger_key_der`, compiled in tests only).
#[test]
fn ca_key_appears_in_nothing_written_or_printed() {
    let ca = ca(&["example.com"]);
    let key = ca.danger_key_der();
    let scalar = p256_scalar(&key);
    let leaf = ca.leaf_for("api.example.com").unwrap();

    let system = system_bundle_with_roots(2);
    let bundle = crate::intercept::trust_bundle(&system.path, ca.cert_pem()).unwrap();
    let dir = TempDir::new("no-key");
    std::fs::write(dir.path.join("ca.pem"), ca.cert_pem()).unwrap();
    std::fs::write(dir.path.join("bundle.pem"), &bundle).unwrap();

    let mut outputs: Vec<(String, Vec<u8>)> = vec![
        ("Debug(ca)".into(), format!("{ca:?} {ca:#?}").into_bytes()),
        (
            "Debug(resolver)".into(),
            format!("{:?}", CaResolver::new(ca.clone())).into_bytes(),
        ),
    ];
    for cert in &leaf.cert {
        outputs.push(("leaf chain".into(), cert.to_vec()));
    }
    for entry in std::fs::read_dir(&dir.path).unwrap() {
        let path = entry.unwrap().path();
        outputs.push((path.display().to_string(), std::fs::read(&path).unwrap()));
    }
    assert_eq!(outputs.len(), 6);

    let key_b64 = pem::encode(&pem::Pem::new("X", key.clone()));
    let key_b64_line = key_b64.lines().nth(1).unwrap();
    for (what, bytes) in &outputs {
        let text = String::from_utf8_lossy(bytes);
        assert!(!text.contains("PRIVATE KEY"), "{what}");
        assert!(
            !text.contains(key_b64_line),
            "{what} holds the key in base64"
        );
        assert!(!contains(bytes, &key), "{what} holds the key DER");
        assert!(!contains(bytes, scalar), "{what} holds the private scalar");
    }
}

/// The 32-byte private scalar inside a P-256 PKCS#8 document (the first OCTET STRING of
/// length 32: the ECPrivateKey's privateKey).
fn p256_scalar(pkcs8: &[u8]) -> &[u8] {
    let at = pkcs8
        .windows(3)
        .position(|w| w[0] == 0x02 && w[1] == 0x01 && w[2] == 0x01)
        .and_then(|version| {
            pkcs8[version..]
                .windows(2)
                .position(|w| w == [0x04, 0x20])
                .map(|p| version + p + 2)
        })
        .expect("an ECPrivateKey inside the PKCS#8 document");
    &pkcs8[at..at + 32]
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
