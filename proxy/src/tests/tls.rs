//! TLS pass-through and refusal, end to end.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Harness, Setup, pki, provider, tls_upstream};
use crate::StaticOrigDst;

fn client(ca: &rustls::pki_types::CertificateDer<'static>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// The client trusts only the test CA that signed the *upstream's* certificate: a completed
/// handshake proves the proxy passed the bytes through untouched. The original destination
/// is a different IP, which the proxy ignores in favour of the name.
#[tokio::test]
async fn allowed_sni_reaches_the_named_upstream_not_the_dialled_ip() {
    let pki = pki(&["upstream.test"]);
    let up = tls_upstream(Arc::clone(&pki.server)).await;
    let forged: SocketAddr = format!("203.0.113.50:{}", up.port()).parse().unwrap();
    let setup = Setup {
        allow: "upstream.test",
        resolve: &["upstream.test:127.0.0.1"],
        ports: &[up.port()],
        ..Setup::default()
    };
    let h = Harness::start(&setup, StaticOrigDst::always(forged)).await;

    let tcp = TcpStream::connect(h.addr).await.unwrap();
    let name = ServerName::try_from("upstream.test").unwrap();
    let mut tls = client(&pki.ca).connect(name, tcp).await.unwrap();
    tls.write_all(b"ping\n").await.unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer, "upstream got ping\n");
    drop(tls);

    let recs = h.records(1).await;
    let r = &recs[0];
    assert_eq!(r["proto"], "tls");
    assert_eq!(r["decision"], "allow");
    assert_eq!(r["name"], "upstream.test");
    assert_eq!(r["orig_dst"], forged.to_string());
    assert_eq!(r["upstream"], up.to_string());
    assert_eq!(r["port"], up.port());
    assert_eq!(r["sandbox"], "sb1");
    assert_eq!(r["reason"], "in the allowlist");
    assert_eq!(r["rule"], "upstream.test (from --allow-domains)");
    assert!(r["bytes_up"].as_u64().unwrap() > 200, "{r}");
    assert!(r["bytes_down"].as_u64().unwrap() > 200, "{r}");
    assert!(r["duration_ms"].is_u64());
    assert!(r["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(h.lookups(), 0, "an override is not a DNS lookup");
    assert_eq!(
        h.audit.summary().to_string(),
        "egressd: 1 connections, 1 allowed, 0 denied"
    );
    h.stop().await;
}

#[tokio::test]
async fn denied_sni_is_reset_without_dns_lookup() {
    let pki = pki(&["evil.test"]);
    let up = tls_upstream(Arc::clone(&pki.server)).await;
    let setup = Setup {
        allow: "upstream.test",
        // Even with an override the denied name must not be "resolved".
        resolve: &["evil.test:127.0.0.1"],
        ports: &[up.port()],
        ..Setup::default()
    };
    let orig: SocketAddr = format!("198.51.100.7:{}", up.port()).parse().unwrap();
    let h = Harness::start(&setup, StaticOrigDst::always(orig)).await;

    let tcp = TcpStream::connect(h.addr).await.unwrap();
    let name = ServerName::try_from("evil.test").unwrap();
    let err = client(&pki.ca).connect(name, tcp).await.unwrap_err();
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
        ),
        "{err:?}"
    );

    let recs = h.records(1).await;
    let r = &recs[0];
    assert_eq!(r["decision"], "deny");
    assert_eq!(r["proto"], "tls");
    assert_eq!(r["name"], "evil.test");
    assert_eq!(r["reason"], "not in the allowlist");
    assert!(r["upstream"].is_null());
    assert!(r["rule"].is_null());
    assert_eq!(r["bytes_up"], 0);
    assert_eq!(h.lookups(), 0);
    let s = h.audit.summary();
    assert_eq!((s.allowed, s.denied), (0, 1));
    assert_eq!(
        s.to_string(),
        "egressd: 1 connections, 0 allowed, 1 denied: evil.test (not in the allowlist) x1"
    );
    h.stop().await;
}

/// rustls sends no SNI when the client dials an IP: only a raw-IP entry could allow it.
#[tokio::test]
async fn tls_without_sni_is_decided_on_the_ip_and_denied() {
    let pki = pki(&["upstream.test"]);
    let up = tls_upstream(Arc::clone(&pki.server)).await;
    let orig: SocketAddr = format!("192.0.2.9:{}", up.port()).parse().unwrap();
    let setup = Setup {
        allow: "upstream.test",
        ports: &[up.port()],
        ..Setup::default()
    };
    let h = Harness::start(&setup, StaticOrigDst::always(orig)).await;

    let tcp = TcpStream::connect(h.addr).await.unwrap();
    let name = ServerName::IpAddress("192.0.2.9".parse::<std::net::IpAddr>().unwrap().into());
    assert!(client(&pki.ca).connect(name, tcp).await.is_err());

    let recs = h.records(1).await;
    let r = &recs[0];
    assert_eq!(r["decision"], "deny");
    assert!(r["name"].is_null());
    assert_eq!(r["reason"], "ip destinations need a raw-ip allow entry");
    assert_eq!(
        h.audit.summary().to_string(),
        "egressd: 1 connections, 0 allowed, 1 denied: 192.0.2.9 (ip destinations need a \
         raw-ip allow entry) x1"
    );
    h.stop().await;
}

/// An allowed name that no override covers is looked up (and fails: no DNS server answers);
/// the connection is refused and the failure audited as an allowed-but-unreachable upstream.
#[tokio::test]
async fn allowed_name_without_answer_is_audited_as_unreachable() {
    let pki = pki(&["nowhere.test"]);
    let setup = Setup {
        allow: "nowhere.test",
        ports: &[443],
        ..Setup::default()
    };
    let h = Harness::start(
        &setup,
        StaticOrigDst::always("203.0.113.1:443".parse().unwrap()),
    )
    .await;
    let tcp = TcpStream::connect(h.addr).await.unwrap();
    let name = ServerName::try_from("nowhere.test").unwrap();
    assert!(client(&pki.ca).connect(name, tcp).await.is_err());
    let recs = h.records(1).await;
    assert_eq!(recs[0]["decision"], "allow");
    assert!(
        recs[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("resolving nowhere.test"),
        "{}",
        recs[0]
    );
    assert!(recs[0]["upstream"].is_null());
    assert_eq!(h.lookups(), 1);
    h.stop().await;
}
