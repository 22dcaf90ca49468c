//! Fake token endpoints that speak the exact wire protocols of `shared/reference/tokens.md`
//! (§1 GitHub Actions OIDC, §2 Entra, §3 Agent ID, §8 the checklist).
//!
//! Each fake is an HTTPS server on `127.0.0.1` with a leaf from a [`TestCa`] (IP SAN
//! `127.0.0.1`), on its own thread and current-thread runtime, so it works the same under
//! any test runtime. Each can be switched down ([`Down`]: connections refused, or 503) and
//! back up on the same port, counts what it was asked, and takes injected failures.
//!
//! * [`FakeOidc`]: `GET /idtoken?api-version=2.0&audience=..` with the bearer request token,
//!   RS256 JWTs with GitHub's claims, discovery and JWKS, key rotation.
//! * [`FakeEntra`]: `POST /{tenant}/oauth2/v2.0/token`, client credentials with a client
//!   assertion verified against a [`FakeOidc`]'s keys and a table of federated credentials
//!   ([`Fic`]), the AADSTS errors of §2.4, and the two Agent ID hops.
//! * [`FakeGoogleSts`]: Google STS (RFC 8693, §6.2) verifying the subject token against a
//!   [`FakeOidc`]'s keys, and IAM Credentials `generateAccessToken`.
//! * [`FakeAwsSts`]: AWS STS `AssumeRoleWithWebIdentity` (§6.1), XML or JSON, role trust
//!   policies, the XML `ErrorResponse` codes.
//! * [`FakeCopilot`]: the GitHub API's `/copilot_internal/v2/token` exchange and
//!   `/copilot_internal/user` (§4.1, §4.2), and a Copilot API ([`FakeCopilotApi`], inside an
//!   [`UpstreamNet`](crate::UpstreamNet) so sandboxes reach it through egressd) that checks
//!   the `Authorization` scheme per host and `Copilot-Integration-Id`.
//! * [`FakeAnthropicWif`]: the Claude API's workload identity federation token endpoint
//!   (`POST /v1/oauth/token`, RFC 7523 `jwt-bearer`), verifying the assertion against a
//!   [`FakeOidc`]'s keys and a table of federation rules.
//! * [`FakeDocker`]: the Docker Engine API's events and container inspection on a Unix
//!   socket, for the containers an attached job starts.
//! * [`FakeWorkloadApi`]: the SPIFFE Workload API on a Unix socket (gRPC, `FetchX509SVID`),
//!   issuing short-lived X.509-SVIDs from a [`SpiffeCa`] and rotating them. Not HTTPS on
//!   127.0.0.1 like the others: the real one is a SPIRE agent's socket.

mod anthropic;
mod aws_sts;
mod copilot;
mod docker;
mod entra;
mod google_sts;
mod jwt;
pub mod kube;
mod models;
mod oidc;
mod workload_api;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, mpsc},
    thread,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    HeaderMap, Method, StatusCode, body::Incoming, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::Notify};
use tokio_rustls::TlsAcceptor;

pub use anthropic::{AnthropicCall, FakeAnthropicWif, FederationRule};
pub use aws_sts::{AwsCall, AwsFailure, FakeAwsSts};
pub use copilot::{ApiCall, ExchangeCall, FakeCopilot, FakeCopilotApi};
pub use copilot::{FAKE_MODEL_ANSWER, FakeGitHubApi, GitHubCall};
pub use docker::FakeDocker;
pub use entra::{EntraCall, Failure, FakeEntra, Fic};
pub use google_sts::{FakeGoogleSts, GoogleCall, GoogleFailure};
pub use kube::{FakeKubeApi, KubeRequest};
pub use models::{AwsKey, CHUNK_GAP, FakeModelApi, KeyLookup, ModelCall, TokenCheck, Vendor};
pub use oidc::FakeOidc;
pub use workload_api::{
    FakeWorkloadApi, IssuedSvid, SpiffeCa, X509Svid, X509SvidRequest, X509SvidResponse,
};

use crate::TestCa;

/// How a fake behaves while it is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Down {
    /// The port is closed: connections are refused.
    Refuse,
    /// Every request is answered `503 Service Unavailable`.
    Unavailable,
}

/// A request as the handlers see it: the body already read.
pub(crate) struct Request {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) query: Option<String>,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

pub(crate) type Response = hyper::Response<Full<Bytes>>;

type Handler = Arc<dyn Fn(Request) -> Response + Send + Sync>;

/// A JSON response.
pub(crate) fn json(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut response = hyper::Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        "application/json; charset=utf-8"
            .parse()
            .expect("a valid header value"),
    );
    response
}

/// Seconds since the Unix epoch (JWT times).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

/// The HTTPS server under each fake: a thread, a port, and the up/down switch.
pub(crate) struct FakeServer {
    addr: SocketAddr,
    control: Arc<Control>,
    thread: Option<thread::JoinHandle<()>>,
}

struct Control {
    down: Mutex<Option<Down>>,
    stop: Mutex<bool>,
    changed: Notify,
}

impl FakeServer {
    /// Serves `handler` over HTTPS on a free port of 127.0.0.1.
    pub(crate) fn start(ca: &TestCa, name: &str, handler: Handler) -> Self {
        let leaf = ca.leaf(&["127.0.0.1", "localhost"]);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_single_cert(leaf.cert_chain(), leaf.private_key())
            .expect("the test leaf is a valid certificate and key");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tls = TlsAcceptor::from(Arc::new(config));
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        std_listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = std_listener.local_addr().expect("a bound address");
        let control = Arc::new(Control {
            down: Mutex::new(None),
            stop: Mutex::new(false),
            changed: Notify::new(),
        });
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread_control = Arc::clone(&control);
        let thread = thread::Builder::new()
            .name(format!("fake {name} {addr}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("building a current-thread runtime");
                rt.block_on(async move {
                    let listener =
                        TcpListener::from_std(std_listener).expect("registering the listener");
                    let _ = ready_tx.send(());
                    serve(listener, addr, tls, handler, thread_control).await;
                });
            })
            .expect("spawning a fake server thread");
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the fake server reports readiness");
        Self {
            addr,
            control,
            thread: Some(thread),
        }
    }

    /// Serves `handler` over HTTPS on `addr` inside `net` (a certificate for `names`), for
    /// fakes that sandboxed clients reach through egressd.
    pub(crate) fn start_in_net(
        ca: &TestCa,
        name: &str,
        handler: Handler,
        net: &crate::UpstreamNet,
        addr: SocketAddr,
        names: &[&str],
    ) -> Self {
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
        let netns = std::fs::File::open(net.netns_path())
            .unwrap_or_else(|e| panic!("opening {}: {e}", net.netns_path().display()));
        let control = Arc::new(Control {
            down: Mutex::new(None),
            stop: Mutex::new(false),
            changed: Notify::new(),
        });
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let thread_control = Arc::clone(&control);
        let thread = thread::Builder::new()
            .name(format!("fake {name} {addr}"))
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
                rt.block_on(async move {
                    let listener = match TcpListener::bind(addr).await {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("binding {addr}: {e}")));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    serve(listener, addr, tls, handler, thread_control).await;
                });
            })
            .expect("spawning a fake server thread");
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("fake {name} failed to start: {e}"),
            Err(e) => panic!("fake {name} did not report readiness: {e}"),
        }
        Self {
            addr,
            control,
            thread: Some(thread),
        }
    }

    /// `https://127.0.0.1:PORT`.
    pub(crate) fn base_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Takes the server down (`Some`) or brings it back up (`None`), on the same port.
    pub(crate) fn set_down(&self, down: Option<Down>) {
        *self.control.down.lock().unwrap() = down;
        self.control.changed.notify_one();
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        *self.control.stop.lock().unwrap() = true;
        self.control.changed.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    listener: TcpListener,
    addr: SocketAddr,
    tls: TlsAcceptor,
    handler: Handler,
    control: Arc<Control>,
) {
    let mut listener = Some(listener);
    loop {
        if *control.stop.lock().unwrap() {
            return;
        }
        let refusing = *control.down.lock().unwrap() == Some(Down::Refuse);
        if refusing {
            listener = None; // closes the port
            control.changed.notified().await;
            continue;
        }
        let Some(current) = &listener else {
            // Back up: rebind the same port (SO_REUSEADDR is set by tokio on Unix).
            match TcpListener::bind(addr).await {
                Ok(l) => listener = Some(l),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
            continue;
        };
        tokio::select! {
            () = control.changed.notified() => {}
            accepted = current.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let (tls, handler, control) = (tls.clone(), Arc::clone(&handler), Arc::clone(&control));
                tokio::spawn(async move {
                    let Ok(stream) = tls.accept(stream).await else { return };
                    let service = service_fn(move |req: hyper::Request<Incoming>| {
                        let (handler, control) = (Arc::clone(&handler), Arc::clone(&control));
                        async move { Ok::<_, std::convert::Infallible>(answer(req, &handler, &control).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
}

async fn answer(req: hyper::Request<Incoming>, handler: &Handler, control: &Control) -> Response {
    if *control.down.lock().unwrap() == Some(Down::Unavailable) {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"error": "temporarily_unavailable"}),
        );
    }
    let (parts, body) = req.into_parts();
    let Ok(body) = Limited::new(body, 1 << 20).collect().await else {
        return json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"error": "body"}),
        );
    };
    handler(Request {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body: body.to_bytes(),
    })
}
