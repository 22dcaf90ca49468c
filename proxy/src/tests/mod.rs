//! End-to-end tests on loopback: a real listener, `Proxy::serve`, rustls and hyper on both
//! sides, a [`StaticOrigDst`] in place of the eBPF map.
//!
//! Upstreams listen on 127.0.0.1 and are reached through `resolve` overrides, which are
//! trusted by design (the address guard applies to resolver answers only).

mod http;
mod limits;
mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use egressd_config::{ConfigBuilder, Limits, Origin, Timeouts};
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{AuditLog, Proxy, StaticOrigDst};

/// A test PKI: a CA and a server config whose leaf it signed.
pub(super) struct Pki {
    pub ca: CertificateDer<'static>,
    pub server: Arc<rustls::ServerConfig>,
}

pub(super) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A fresh CA and a leaf for `names`, signed by it.
pub(super) fn pki(names: &[&str]) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "egressd test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let leaf = rcgen::CertificateParams::new(names)
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
    Pki {
        ca: ca.der().clone(),
        server: Arc::new(server),
    }
}

/// A TLS server that answers each line `L` with `upstream got L`, then closes.
pub(super) async fn tls_upstream(config: Arc<rustls::ServerConfig>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 256];
                let Ok(n) = tls.read(&mut buf).await else {
                    return;
                };
                let line = String::from_utf8_lossy(&buf[..n]).trim().to_owned();
                let _ = tls
                    .write_all(format!("upstream got {line}\n").as_bytes())
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

/// A plain HTTP/1 server answering `hello from upstream: HOST PATH-AND-QUERY`.
pub(super) async fn http_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let host = req
                            .headers()
                            .get(hyper::header::HOST)
                            .and_then(|h| h.to_str().ok())
                            .unwrap_or("-")
                            .to_owned();
                        let body = format!("hello from upstream: {host} {}", req.uri());
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

/// A raw TCP echo server (for loopback relays).
pub(super) async fn echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// What a test configures: allow list, resolve overrides, allowed ports, loopback ports.
#[derive(Default)]
pub(super) struct Setup<'a> {
    pub allow: &'a str,
    pub resolve: &'a [&'a str],
    pub ports: &'a [u16],
    pub loopback_ports: &'a [u16],
    /// Replaces the harness's short timeouts.
    pub timeouts: Option<Timeouts>,
    /// Replaces the default limits.
    pub limits: Option<Limits>,
}

/// A running proxy with its audit log file.
pub(super) struct Harness {
    pub addr: SocketAddr,
    pub proxy: Arc<Proxy>,
    pub audit: Arc<AuditLog>,
    pub audit_path: PathBuf,
    shutdown: CancellationToken,
    serve: tokio::task::JoinHandle<()>,
}

impl Harness {
    pub(super) async fn start(setup: &Setup<'_>, orig: StaticOrigDst) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let mut b = ConfigBuilder::new();
        if !setup.allow.is_empty() {
            b.allow_list(setup.allow, Origin::Flag("--allow-domains"))
                .unwrap();
        }
        for r in setup.resolve {
            b.resolve(r).unwrap();
        }
        if !setup.ports.is_empty() {
            b.ports(setup.ports, Origin::Flag("--ports"));
        }
        b.loopback_ports(setup.loopback_ports, Origin::Flag("--loopback-ports"));
        // Nothing answers on the discard port: a lookup that escapes fails fast.
        b.dns_server("127.0.0.1:9").unwrap();
        b.timeouts(setup.timeouts.unwrap_or(Timeouts {
            classify: Duration::from_secs(5),
            connect: Duration::from_secs(5),
            idle: Duration::from_secs(30),
            resolve: Duration::from_millis(500),
            ..Timeouts::default()
        }));
        if let Some(limits) = setup.limits {
            b.limits(limits);
        }
        let config = Arc::new(b.build().unwrap());
        let dir = std::env::temp_dir().join(format!(
            "egressd-proxy-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let audit_path = dir.join("audit.jsonl");
        let _ = std::fs::remove_file(&audit_path);
        let audit = Arc::new(AuditLog::new(Some(&audit_path)).unwrap());
        let proxy =
            Arc::new(Proxy::new(config, Arc::new(orig), Arc::clone(&audit), "sb1".into()).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let serve = tokio::spawn(Arc::clone(&proxy).serve(listener, shutdown.clone()));
        Self {
            addr,
            proxy,
            audit,
            audit_path,
            shutdown,
            serve,
        }
    }

    /// Waits until `n` records were written, then returns them parsed.
    pub(super) async fn records(&self, n: usize) -> Vec<serde_json::Value> {
        for _ in 0..500 {
            let text = std::fs::read_to_string(&self.audit_path).unwrap_or_default();
            let lines: Vec<serde_json::Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            if lines.len() >= n {
                assert_eq!(
                    lines.len(),
                    n,
                    "more audit records than expected: {lines:#?}"
                );
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "fewer than {n} audit records in {}",
            self.audit_path.display()
        );
    }

    /// Number of DNS lookups the proxy issued so far.
    pub(super) fn lookups(&self) -> u64 {
        self.proxy.connector.lookups.load(Ordering::Relaxed)
    }

    /// Stops the accept loop and waits for `serve` to return.
    pub(super) async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.serve)
            .await
            .unwrap()
            .unwrap();
        if let Some(dir) = self.audit_path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[tokio::test]
async fn connection_without_original_destination_is_refused() {
    let h = Harness::start(
        &Setup {
            allow: "upstream.test",
            ..Setup::default()
        },
        StaticOrigDst::none(),
    )
    .await;
    let mut c = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let mut buf = [0u8; 16];
    // Reset or EOF: either way nothing comes back.
    assert!(matches!(c.read(&mut buf).await, Ok(0) | Err(_)));
    let recs = h.records(1).await;
    assert_eq!(recs[0]["decision"], "deny");
    assert_eq!(recs[0]["reason"], "no original destination recorded");
    assert_eq!(recs[0]["proto"], "unknown");
    assert!(recs[0]["orig_dst"].is_null());
    h.stop().await;
}

#[tokio::test]
async fn loopback_destinations_are_relayed_only_on_listed_ports() {
    let echo = echo_upstream().await;
    let orig = StaticOrigDst::always(echo);
    let setup = Setup {
        allow: "upstream.test",
        loopback_ports: &[echo.port()],
        ..Setup::default()
    };
    let h = Harness::start(&setup, orig).await;
    let mut c = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    // Not TLS, not HTTP: loopback traffic is not classified.
    c.write_all(b"\x00raw bytes").await.unwrap();
    let mut buf = [0u8; 10];
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"\x00raw bytes");
    drop(c);
    let recs = h.records(1).await;
    assert_eq!(recs[0]["proto"], "loopback");
    assert_eq!(recs[0]["decision"], "allow");
    assert_eq!(recs[0]["upstream"], echo.to_string());
    assert_eq!(recs[0]["bytes_up"], 10);
    h.stop().await;

    let other: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let h = Harness::start(&setup, StaticOrigDst::always(other)).await;
    let mut c = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let mut buf = [0u8; 4];
    assert!(matches!(c.read(&mut buf).await, Ok(0) | Err(_)));
    let recs = h.records(1).await;
    assert_eq!(recs[0]["decision"], "deny");
    assert_eq!(
        recs[0]["reason"],
        "the loopback port is not in loopback_ports"
    );
    h.stop().await;
}
