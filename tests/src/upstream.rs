//! Fake upstream servers that run inside an [`UpstreamNet`].
//!
//! Each server is a std thread that `setns`es into the namespace, binds, reports readiness on a
//! channel (no sleeps), then serves on a current-thread tokio runtime until dropped. Every
//! request is answered `200` with the body `hello from <name> via <Host header>`, so a test can
//! tell which upstream answered and which name the request carried.

use std::{
    fs::File,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    thread,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::oneshot};
use tokio_rustls::TlsAcceptor;

use crate::{TestCa, UpstreamNet};

/// What a server saw, for assertions such as "the denied upstream was never reached".
#[derive(Debug, Default)]
struct Seen {
    connections: AtomicUsize,
    /// `(SNI or "-", Host header)` per request.
    requests: Mutex<Vec<(String, String)>>,
    /// Credential-carrying headers seen, `(request number, name, value)`.
    credentials: Mutex<Vec<(usize, String, String)>>,
}

/// The headers an injecting proxy adds or must strip; recorded for assertions.
const CREDENTIAL_HEADERS: [&str; 5] = [
    "authorization",
    "api-key",
    "x-api-key",
    "proxy-authorization",
    "x-goog-api-key",
];

/// An HTTPS server on `ADDR:443` inside a netns, with a leaf from a [`TestCa`].
pub struct HttpsUpstream {
    server: Server,
}

/// A plain HTTP server on `ADDR:80` inside a netns.
pub struct HttpUpstream {
    server: Server,
}

impl HttpsUpstream {
    /// Credential-carrying headers the server received, `(request number, name, value)`.
    pub fn credentials(&self) -> Vec<(usize, String, String)> {
        self.server.seen.credentials.lock().unwrap().clone()
    }

    /// Serve HTTPS on `addr:443` in `net`, presenting a certificate for `names`; the first
    /// name is the one the body reports.
    pub fn start(net: &UpstreamNet, addr: impl Into<IpAddr>, names: &[&str], ca: &TestCa) -> Self {
        Self::start_on(net, SocketAddr::new(addr.into(), 443), names, ca)
    }

    /// As [`HttpsUpstream::start`], on any address and port.
    pub fn start_on(net: &UpstreamNet, addr: SocketAddr, names: &[&str], ca: &TestCa) -> Self {
        let leaf = ca.leaf(names);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_single_cert(leaf.cert_chain(), leaf.private_key())
            .expect("the test leaf is a valid certificate and key");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tls = TlsAcceptor::from(Arc::new(config));
        Self {
            server: Server::start(net, addr, names[0], Some(tls)),
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// How many TCP connections it accepted.
    pub fn connections(&self) -> usize {
        self.server.seen.connections.load(Ordering::SeqCst)
    }

    /// `(SNI, Host)` of every request it answered.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.server.seen.requests.lock().unwrap().clone()
    }
}

impl HttpUpstream {
    /// Serve plain HTTP on `addr:80` in `net`; `name` is what the body reports.
    pub fn start(net: &UpstreamNet, addr: impl Into<IpAddr>, name: &str) -> Self {
        let addr = SocketAddr::new(addr.into(), 80);
        Self {
            server: Server::start(net, addr, name, None),
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// How many TCP connections it accepted.
    pub fn connections(&self) -> usize {
        self.server.seen.connections.load(Ordering::SeqCst)
    }

    /// `("-", Host)` of every request it answered.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.server.seen.requests.lock().unwrap().clone()
    }
}

/// The thread, its stop signal and what it saw.
struct Server {
    addr: SocketAddr,
    seen: Arc<Seen>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Server {
    fn start(net: &UpstreamNet, addr: SocketAddr, name: &str, tls: Option<TlsAcceptor>) -> Self {
        let netns = File::open(net.netns_path())
            .unwrap_or_else(|e| panic!("opening {}: {e}", net.netns_path().display()));
        let seen = Arc::new(Seen::default());
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let (stop_tx, stop_rx) = oneshot::channel();
        let name = name.to_owned();
        let thread_seen = Arc::clone(&seen);
        let thread = thread::Builder::new()
            .name(format!("upstream {addr}"))
            .spawn(move || {
                // This thread only ever lives in the upstream namespace.
                if let Err(e) = nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET) {
                    let _ = ready_tx.send(Err(format!("setns: {e}")));
                    return;
                }
                drop(netns);
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("building a current-thread runtime");
                rt.block_on(serve(addr, name, tls, thread_seen, ready_tx, stop_rx));
            })
            .expect("spawning an upstream thread");
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("upstream {addr} failed to start: {e}"),
            Err(e) => panic!("upstream {addr} did not report readiness: {e}"),
        }
        Self {
            addr,
            seen,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    addr: SocketAddr,
    name: String,
    tls: Option<TlsAcceptor>,
    seen: Arc<Seen>,
    ready: mpsc::Sender<Result<(), String>>,
    mut stop: oneshot::Receiver<()>,
) {
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(format!("binding {addr}: {e}")));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let name: Arc<str> = name.into();
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                seen.connections.fetch_add(1, Ordering::SeqCst);
                let (name, seen, tls) = (Arc::clone(&name), Arc::clone(&seen), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else { return };
                            let sni = stream.get_ref().1.server_name().unwrap_or("-").to_owned();
                            serve_http(TokioIo::new(stream), name, sni, seen).await;
                        }
                        None => serve_http(TokioIo::new(stream), name, "-".to_owned(), seen).await,
                    }
                });
            }
        }
    }
}

async fn serve_http<IO>(io: IO, name: Arc<str>, sni: String, seen: Arc<Seen>)
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let host = req
            .headers()
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        let number = {
            let mut requests = seen.requests.lock().unwrap();
            requests.push((sni.clone(), host.clone()));
            requests.len() - 1
        };
        for name in CREDENTIAL_HEADERS {
            for value in req.headers().get_all(name) {
                seen.credentials.lock().unwrap().push((
                    number,
                    name.to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                ));
            }
        }
        // `/redirect-to/<host>` answers 302 to `https://<host>/` (redirect tests).
        if let Some(target) = req.uri().path().strip_prefix("/redirect-to/") {
            let resp = Response::builder()
                .status(302)
                .header("location", format!("https://{target}/"))
                .body(Full::new(Bytes::from_static(b"moved")))
                .expect("a valid redirect response");
            return std::future::ready(Ok::<_, std::convert::Infallible>(resp));
        }
        let body = format!("hello from {name} via {host}");
        std::future::ready(Ok::<_, std::convert::Infallible>(Response::new(Full::new(
            Bytes::from(body),
        ))))
    });
    let _ = http1::Builder::new().serve_connection(io, service).await;
}
