//! Fake upstream servers that run inside an [`UpstreamNet`].
//!
//! Each server is a std thread that `setns`es into the namespace, binds, reports readiness on a
//! channel (no sleeps), then serves on a current-thread tokio runtime until dropped. Every
//! request is answered `200` with the body `hello from <name> via <Host header>`, so a test can
//! tell which upstream answered and which name the request carried, except on these paths
//! (matched on the path's last segments, so `/openai/sse` works under a rule's prefix):
//!
//! * `/redirect-to/<host>`: `302` to `https://<host>/`;
//! * `.../sse?n=N&gap_ms=MS`: server-sent events `data: <i>\n\n` for `i` in `0..N`, each
//!   produced `MS` after the previous one was taken (a streaming body, never buffered here);
//!   `N` at most 100, `MS` at most 5000;
//! * `.../upload`: reads the whole request body, then answers `received N bytes`; each
//!   body read to its end is recorded in [`HttpsUpstream::uploads`] (one cut short is not);
//! * `.../echo-headers`: the request's headers in the body and its credential headers in
//!   `x-echo-<name>` (see `echo_headers` for the forms and framings the query picks);
//! * `.../ws`: a WebSocket (RFC 6455) echo: `101` with `Sec-WebSocket-Accept` (and the
//!   request's credential headers in `x-echo-credentials`), then every text or binary message
//!   is sent back (the text `echo-credentials` is answered with those credentials; at most
//!   16 messages, 10 s), recorded in
//!   [`HttpsUpstream::websocket_messages`].
//!
//! [`HttpsUpstream::start_spiffe`] makes a SPIFFE service instead: its certificate is an
//! X.509-SVID, it requires a client certificate chaining to a SPIFFE CA, answers `403` to a
//! client whose SPIFFE ID it does not allow, records each request's client ID and certificate
//! serial ([`HttpsUpstream::clients`]), and closes every connection after one request (so each
//! request shows the client certificate of that moment).

use std::{
    fs::File,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{
    Request, Response, StatusCode, body::Frame, body::Incoming, server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, handshake::derive_accept_key, protocol::Role},
};

use crate::{TestCa, UpstreamNet};

/// What a server saw, for assertions such as "the denied upstream was never reached".
#[derive(Debug, Default)]
struct Seen {
    connections: AtomicUsize,
    /// `(SNI or "-", Host header)` per request.
    requests: Mutex<Vec<(String, String)>>,
    /// Credential-carrying headers seen, `(request number, name, value)`.
    credentials: Mutex<Vec<(usize, String, String)>>,
    /// When each request arrived, by request number.
    received: Mutex<Vec<Instant>>,
    /// Messages received on WebSocket connections (text, or `<N bytes>` for binary).
    websocket: Mutex<Vec<String>>,
    /// mTLS: `(request number, client SPIFFE ID, client certificate serial)` per request.
    clients: Mutex<Vec<(usize, String, String)>>,
    /// The path and query of each request, by request number.
    paths: Mutex<Vec<String>>,
    /// Sizes of the `/upload` bodies received whole.
    uploads: Mutex<Vec<usize>>,
}

/// How a server treats its clients beyond TLS.
#[derive(Clone, Debug, Default)]
struct Options {
    /// Answer `403` unless the client certificate's SPIFFE ID is one of these.
    allowed_clients: Option<Arc<[String]>>,
    /// Serve these files by path (`404` for any other path) instead of the usual answers.
    files: Option<Arc<std::collections::HashMap<String, Bytes>>>,
    /// Accept connections and then misbehave instead of serving them.
    misbehave: Option<Misbehave>,
    /// Close each connection after one request.
    close_after_each: bool,
}

/// How a [`HttpUpstream::misbehaving`] server treats each connection it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misbehave {
    /// Reset it at once (`SO_LINGER` 0, then close): the peer sees `ECONNRESET`.
    Reset,
    /// Keep it open and never send a byte (a hung server), until the server is dropped.
    Silent,
    /// Complete the TLS handshake, then never answer a request (a hung application).
    SilentAfterHandshake,
}

/// The client certificate's SPIFFE ID (its URI SAN) and serial (hex), if any.
type ClientId = Option<(String, String)>;

/// The response body of every fake upstream: whole, or streamed.
type Body = BoxBody<Bytes, std::convert::Infallible>;

/// The headers an injecting proxy adds or must strip; recorded for assertions.
const CREDENTIAL_HEADERS: [&str; 7] = [
    "authorization",
    "api-key",
    "x-api-key",
    "proxy-authorization",
    "x-goog-api-key",
    "x-amz-security-token",
    "x-amz-date",
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

    /// When each request arrived (before it was answered), by request number.
    pub fn received_at(&self) -> Vec<Instant> {
        self.server.seen.received.lock().unwrap().clone()
    }

    /// The messages WebSocket clients sent to `.../ws` (and got back).
    pub fn websocket_messages(&self) -> Vec<String> {
        self.server.seen.websocket.lock().unwrap().clone()
    }

    /// Serve HTTPS on `addr:443` in `net`, presenting a certificate for `names`; the first
    /// name is the one the body reports.
    pub fn start(net: &UpstreamNet, addr: impl Into<IpAddr>, names: &[&str], ca: &TestCa) -> Self {
        Self::start_on(net, SocketAddr::new(addr.into(), 443), names, ca)
    }

    /// The path (and query) of every request it answered, in order.
    pub fn paths(&self) -> Vec<String> {
        self.server.seen.paths.lock().unwrap().clone()
    }

    /// The sizes of the `/upload` request bodies this server received whole.
    pub fn uploads(&self) -> Vec<usize> {
        self.server.seen.uploads.lock().unwrap().clone()
    }

    /// A TLS server for `names` on `addr` in `net` that completes the handshake and then
    /// never answers (a hung application behind a healthy TLS terminator).
    pub fn hung_after_handshake(
        net: &UpstreamNet,
        addr: SocketAddr,
        names: &[&str],
        ca: &TestCa,
    ) -> Self {
        let options = Options {
            misbehave: Some(Misbehave::SilentAfterHandshake),
            ..Options::default()
        };
        let tls = tls_acceptor(names, ca);
        Self {
            server: Server::start(net, addr, names[0], Some(tls), options),
        }
    }

    /// As [`HttpsUpstream::start`], on any address and port.
    pub fn start_on(net: &UpstreamNet, addr: SocketAddr, names: &[&str], ca: &TestCa) -> Self {
        let tls = tls_acceptor(names, ca);
        Self {
            server: Server::start(net, addr, names[0], Some(tls), Options::default()),
        }
    }

    /// A SPIFFE service on `addr:443` in `net`: it presents `svid`, requires a client
    /// certificate from `client_ca` (a SPIFFE CA certificate, DER), and answers only clients
    /// whose SPIFFE ID is in `allowed_clients` (others get `403`). `name` is what the body
    /// reports. Connections close after each request.
    pub fn start_spiffe(
        net: &UpstreamNet,
        addr: impl Into<IpAddr>,
        name: &str,
        svid: &crate::fakes::IssuedSvid,
        client_ca: Vec<u8>,
        allowed_clients: &[&str],
    ) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(client_ca))
            .expect("a valid SPIFFE CA certificate");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&provider),
        )
        .build()
        .expect("a client verifier over the SPIFFE CA");
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(svid.cert_chain(), svid.private_key())
            .expect("the SVID is a valid certificate and key");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let options = Options {
            allowed_clients: Some(allowed_clients.iter().map(|c| (*c).to_owned()).collect()),
            close_after_each: true,
            ..Options::default()
        };
        let addr = SocketAddr::new(addr.into(), 443);
        Self {
            server: Server::start(
                net,
                addr,
                name,
                Some(TlsAcceptor::from(Arc::new(config))),
                options,
            ),
        }
    }

    /// mTLS: `(request number, client SPIFFE ID, client certificate serial in hex)` of every
    /// request, allowed or not.
    pub fn clients(&self) -> Vec<(usize, String, String)> {
        self.server.seen.clients.lock().unwrap().clone()
    }

    /// Serve `files` (path, content) over plain HTTP on `addr` in `net`: a release mirror.
    /// Every other path is `404`. Requests are recorded as usual ([`HttpUpstream::paths`]).
    pub fn files(net: &UpstreamNet, addr: SocketAddr, files: &[(&str, Vec<u8>)]) -> Self {
        let files = files
            .iter()
            .map(|(path, content)| ((*path).to_owned(), Bytes::from(content.clone())))
            .collect();
        let options = Options {
            files: Some(Arc::new(files)),
            ..Options::default()
        };
        Self {
            server: Server::start(net, addr, "files", None, options),
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
    /// A server on `addr` in `net` that accepts TCP connections and then misbehaves as `how`
    /// says (faults tests); [`HttpUpstream::connections`] counts them.
    pub fn misbehaving(net: &UpstreamNet, addr: SocketAddr, how: Misbehave) -> Self {
        let options = Options {
            misbehave: Some(how),
            ..Options::default()
        };
        Self {
            server: Server::start(net, addr, "misbehaving", None, options),
        }
    }

    /// Serve plain HTTP on `addr:80` in `net`; `name` is what the body reports.
    pub fn start(net: &UpstreamNet, addr: impl Into<IpAddr>, name: &str) -> Self {
        let addr = SocketAddr::new(addr.into(), 80);
        Self {
            server: Server::start(net, addr, name, None, Options::default()),
        }
    }

    /// Serve `files` (path, content) over plain HTTP on `addr` in `net`: a release mirror.
    /// Every other path is `404`. Requests are recorded as usual ([`HttpUpstream::paths`]).
    pub fn files(net: &UpstreamNet, addr: SocketAddr, files: &[(&str, Vec<u8>)]) -> Self {
        let files = files
            .iter()
            .map(|(path, content)| ((*path).to_owned(), Bytes::from(content.clone())))
            .collect();
        let options = Options {
            files: Some(Arc::new(files)),
            ..Options::default()
        };
        Self {
            server: Server::start(net, addr, "files", None, options),
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

    /// The path (and query) of every request it answered, in order.
    pub fn paths(&self) -> Vec<String> {
        self.server.seen.paths.lock().unwrap().clone()
    }

    /// `("-", Host)` of every request it answered.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.server.seen.requests.lock().unwrap().clone()
    }
}

/// A TLS acceptor with a leaf for `names` from `ca`, HTTP/1.1 only.
fn tls_acceptor(names: &[&str], ca: &TestCa) -> TlsAcceptor {
    let leaf = ca.leaf(names);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_single_cert(leaf.cert_chain(), leaf.private_key())
        .expect("the test leaf is a valid certificate and key");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

/// The thread, its stop signal and what it saw.
struct Server {
    addr: SocketAddr,
    seen: Arc<Seen>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Server {
    fn start(
        net: &UpstreamNet,
        addr: SocketAddr,
        name: &str,
        tls: Option<TlsAcceptor>,
        options: Options,
    ) -> Self {
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
                rt.block_on(serve(
                    addr,
                    name,
                    tls,
                    options,
                    thread_seen,
                    ready_tx,
                    stop_rx,
                ));
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
    options: Options,
    seen: Arc<Seen>,
    ready: mpsc::Sender<Result<(), String>>,
    mut stop: oneshot::Receiver<()>,
) {
    // A deep accept queue: load tests open thousands of connections at once.
    let bound = (|| {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(65_535)
    })();
    let listener = match bound {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(format!("binding {addr}: {e}")));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let name: Arc<str> = name.into();
    // Silent connections are held here until the server stops.
    let mut held = Vec::new();
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                seen.connections.fetch_add(1, Ordering::SeqCst);
                match options.misbehave {
                    Some(Misbehave::Reset) => {
                        let _ = stream.set_zero_linger();
                        drop(stream);
                        continue;
                    }
                    Some(Misbehave::Silent) => {
                        held.push(stream);
                        continue;
                    }
                    Some(Misbehave::SilentAfterHandshake) | None => {}
                }
                let (name, seen, tls) = (Arc::clone(&name), Arc::clone(&seen), tls.clone());
                let options = options.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else { return };
                            if options.misbehave == Some(Misbehave::SilentAfterHandshake) {
                                // Hold the connection, answer nothing, until the server stops.
                                std::future::pending::<()>().await;
                            }
                            let sni = stream.get_ref().1.server_name().unwrap_or("-").to_owned();
                            let client = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|chain| chain.first())
                                .and_then(|leaf| client_id(leaf));
                            let conn = Conn { name, sni, client, options, seen };
                            serve_http(TokioIo::new(stream), conn).await;
                        }
                        None => {
                            let sni = "-".to_owned();
                            let conn = Conn { name, sni, client: None, options, seen };
                            serve_http(TokioIo::new(stream), conn).await;
                        }
                    }
                });
            }
        }
    }
}

/// One accepted connection: what its requests are answered with.
struct Conn {
    name: Arc<str>,
    sni: String,
    client: ClientId,
    options: Options,
    seen: Arc<Seen>,
}

/// The SPIFFE ID (URI SAN) and hex serial of a client certificate.
fn client_id(cert: &[u8]) -> ClientId {
    use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(cert).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let uri = san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(uri) => Some((*uri).to_owned()),
        _ => None,
    })?;
    let serial = cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Some((uri, serial))
}

async fn serve_http<IO>(io: IO, conn: Conn)
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let keep_alive = !conn.options.close_after_each;
    let conn = Arc::new(conn);
    let service = service_fn(move |req: Request<Incoming>| {
        let conn = Arc::clone(&conn);
        async move {
            if req.uri().path().ends_with("/upload") {
                note(&req, &conn);
                return Ok::<_, std::convert::Infallible>(upload(req, &conn.seen).await);
            }
            Ok(answer(req, &conn))
        }
    });
    let _ = http1::Builder::new()
        .keep_alive(keep_alive)
        .serve_connection(io, service)
        .with_upgrades()
        .await;
}

/// `/upload`: reads the body to its end, records its size, answers with it.
async fn upload(req: Request<Incoming>, seen: &Seen) -> Response<Body> {
    match req.into_body().collect().await {
        Ok(body) => {
            let n = body.to_bytes().len();
            seen.uploads.lock().unwrap().push(n);
            Response::new(whole(format!("received {n} bytes")))
        }
        Err(e) => Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body(whole(format!("the body was cut short: {e}")))
            .expect("a valid 400 response"),
    }
}

/// Records the request (host, path, time, credential headers); returns its number.
fn note(req: &Request<Incoming>, conn: &Conn) -> usize {
    let (sni, seen) = (conn.sni.as_str(), &conn.seen);
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let number = {
        let mut requests = seen.requests.lock().unwrap();
        seen.received.lock().unwrap().push(Instant::now());
        requests.push((sni.to_owned(), host.clone()));
        seen.paths.lock().unwrap().push(
            req.uri()
                .path_and_query()
                .map_or_else(|| "/".to_owned(), ToString::to_string),
        );
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
    number
}

/// Records the request, then answers it (see the module documentation for the paths).
fn answer(mut req: Request<Incoming>, conn: &Conn) -> Response<Body> {
    let (name, seen) = (&*conn.name, &conn.seen);
    let number = note(&req, conn);
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    if let Some(allowed) = &conn.options.allowed_clients {
        let (id, serial) = conn.client.clone().unwrap_or_default();
        seen.clients
            .lock()
            .unwrap()
            .push((number, id.clone(), serial));
        if !allowed.contains(&id) {
            return Response::builder()
                .status(StatusCode::FORBIDDEN)
                .body(whole(format!("client SPIFFE ID {id:?} is not allowed")))
                .expect("a valid 403 response");
        }
    }
    let path = req.uri().path().to_owned();
    if let Some(files) = &conn.options.files {
        return match files.get(&path) {
            Some(content) => Response::new(whole(content.clone())),
            None => Response::builder()
                .status(StatusCode::NOT_FOUND)
                .body(whole("not found"))
                .expect("a valid 404 response"),
        };
    }
    // `/redirect-to/<host>` answers 302 to `https://<host>/` (redirect tests).
    if let Some(target) = path.strip_prefix("/redirect-to/") {
        return Response::builder()
            .status(302)
            .header("location", format!("https://{target}/"))
            .body(whole("moved"))
            .expect("a valid redirect response");
    }
    // `/echo-headers`: the request's headers, in the body and reflected in a response header
    // (an echo endpoint, for credential-reflection tests).
    if path == "/echo-headers" || path.ends_with("/echo-headers") {
        return echo_headers(&req);
    }
    if path == "/sse" || path.ends_with("/sse") {
        return sse(req.uri().query().unwrap_or_default());
    }
    if path == "/ws" || path.ends_with("/ws") {
        return websocket(&mut req, Arc::clone(seen));
    }
    Response::new(whole(format!("hello from {name} via {host}")))
}

/// `/echo-headers`: an echo endpoint, for credential-reflection tests. The body lists every
/// request header (`name: value`); the credential headers' values also come back in
/// `x-echo-<name>` response headers. The query picks more forms and framings:
///
/// * `forms`: each credential (the last word of each credential header) also URL-encoded,
///   JSON-escaped (`\/`) and as the base64 of `user:<credential>` (an echoed Basic
///   credential);
/// * `chunked`: the body streamed 5 bytes at a time (a credential split across chunks);
/// * `sse`: the body as server-sent events, one per line;
/// * `gzip=always`: gzip-encoded whatever the client accepts (otherwise only when it accepts
///   gzip, as most servers do).
fn echo_headers(req: &Request<Incoming>) -> Response<Body> {
    let query = req.uri().query().unwrap_or_default();
    let has = |flag: &str| query.split('&').any(|kv| kv == flag);
    let mut text = String::new();
    for (name, value) in req.headers() {
        text.push_str(&format!(
            "{name}: {}\n",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    let credentials: Vec<(&str, String)> = CREDENTIAL_HEADERS
        .iter()
        .flat_map(|name| req.headers().get_all(*name).iter().map(move |v| (*name, v)))
        .map(|(name, v)| (name, String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    if has("forms") {
        for (_, value) in &credentials {
            let v = value.split_whitespace().last().unwrap_or_default();
            let url: String = url::form_urlencoded::byte_serialize(v.as_bytes()).collect();
            let json = serde_json::to_string(v)
                .unwrap_or_default()
                .replace('/', "\\/");
            let basic = base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                format!("user:{v}"),
            );
            text.push_str(&format!("url: {url}\njson: {json}\nbasic: {basic}\n"));
        }
    }
    let accepts_gzip = req
        .headers()
        .get_all("accept-encoding")
        .iter()
        .any(|v| String::from_utf8_lossy(v.as_bytes()).contains("gzip"));
    let mut resp = if accepts_gzip || has("gzip=always") {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut encoder, text.as_bytes()).expect("gzip in memory");
        let mut resp = Response::new(whole(encoder.finish().expect("gzip in memory")));
        resp.headers_mut().insert(
            "content-encoding",
            hyper::header::HeaderValue::from_static("gzip"),
        );
        resp
    } else if has("sse") {
        let events: Vec<Bytes> = text
            .lines()
            .map(|l| Bytes::from(format!("data: {l}\n\n")))
            .collect();
        let mut resp = Response::new(stream_of(events));
        resp.headers_mut().insert(
            "content-type",
            hyper::header::HeaderValue::from_static("text/event-stream"),
        );
        resp
    } else if has("chunked") {
        let chunks: Vec<Bytes> = text
            .as_bytes()
            .chunks(5)
            .map(Bytes::copy_from_slice)
            .collect();
        Response::new(stream_of(chunks))
    } else {
        Response::new(whole(text))
    };
    for (name, value) in &credentials {
        if let Ok(v) = hyper::header::HeaderValue::from_str(value) {
            resp.headers_mut().append(
                hyper::header::HeaderName::from_bytes(format!("x-echo-{name}").as_bytes())
                    .expect("a valid header name"),
                v,
            );
        }
    }
    resp
}

/// A streamed body of `frames`, each sent as its own data frame.
fn stream_of(frames: Vec<Bytes>) -> Body {
    let stream = futures_util::stream::iter(
        frames
            .into_iter()
            .map(|b| Ok::<_, std::convert::Infallible>(Frame::data(b))),
    );
    BodyExt::boxed(StreamBody::new(stream))
}

fn whole(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

/// `text/event-stream` of `data: <i>\n\n` for `i` in `0..n`, event `i > 0` produced `gap_ms`
/// after event `i - 1` was taken by hyper.
fn sse(query: &str) -> Response<Body> {
    let param = |key: &str, default: u64, max: u64| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .unwrap_or(default)
            .min(max)
    };
    let (n, gap) = (
        param("n", 5, 100),
        Duration::from_millis(param("gap_ms", 300, 5000)),
    );
    let events = futures_util::stream::unfold(0u64, move |i| async move {
        if i >= n {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(gap).await;
        }
        let frame = Frame::data(Bytes::from(format!("data: {i}\n\n")));
        Some((Ok::<_, std::convert::Infallible>(frame), i + 1))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(BodyExt::boxed(StreamBody::new(events)))
        .expect("a valid event-stream response")
}

/// The RFC 6455 server handshake; once hyper hands over the connection, a bounded echo.
fn websocket(req: &mut Request<Incoming>, seen: Arc<Seen>) -> Response<Body> {
    let headers = req.headers();
    let has_token = |name: hyper::header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let key = headers
        .get("sec-websocket-key")
        .map(|k| k.as_bytes().to_vec());
    let version_ok = headers
        .get("sec-websocket-version")
        .is_some_and(|v| v == "13");
    let (Some(key), true, true, true) = (
        key,
        version_ok,
        has_token(hyper::header::CONNECTION, "upgrade"),
        has_token(hyper::header::UPGRADE, "websocket"),
    ) else {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body(whole("not a WebSocket upgrade request"))
            .expect("a valid response");
    };
    // What an echo service would hand back: the upgrade request's credentials, in the 101's
    // headers and (for the text message `echo-credentials`) in a message.
    let credentials: Vec<String> = CREDENTIAL_HEADERS
        .iter()
        .flat_map(|name| headers.get_all(*name).iter())
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    let echoed_in_101 = credentials.join(", ");
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let echo = async {
            for _ in 0..16 {
                let Some(Ok(msg)) = ws.next().await else {
                    break;
                };
                let seen_as = match &msg {
                    Message::Text(text) => text.to_string(),
                    Message::Binary(data) => format!("<{} bytes>", data.len()),
                    Message::Close(_) => break,
                    _ => continue,
                };
                seen.websocket.lock().unwrap().push(seen_as);
                let msg = match &msg {
                    Message::Text(text) if text.as_str() == "echo-credentials" => {
                        Message::text(format!("credentials: {}", credentials.join(", ")))
                    }
                    _ => msg,
                };
                if ws.send(msg).await.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), echo).await;
        let _ = ws.close(None).await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(hyper::header::CONNECTION, "upgrade")
        .header(hyper::header::UPGRADE, "websocket")
        .header("sec-websocket-accept", derive_accept_key(&key))
        .header(
            "x-echo-credentials",
            hyper::header::HeaderValue::from_str(&echoed_in_101)
                .unwrap_or(hyper::header::HeaderValue::from_static("")),
        )
        .body(whole(Bytes::new()))
        .expect("a valid 101 response")
}
