//! [`FakeWorkloadApi`]: a SPIFFE Workload API (the SPIRE agent's socket) issuing short-lived
//! X.509-SVIDs from a [`SpiffeCa`], and rotating them.
//!
//! It speaks the real protocol: gRPC (HTTP/2) over a Unix socket, the `SpiffeWorkloadAPI`
//! service of the SPIFFE `workload.proto` with its `FetchX509SVID` server stream of
//! `X509SVIDResponse`s. As the SPIFFE Workload Endpoint standard requires, a call without the
//! metadata `workload.spiffe.io: true` is refused with `InvalidArgument`; a workload without
//! an identity gets `PermissionDenied`; every other method is `Unimplemented`.
//!
//! The messages are declared here again, by hand, independently of egressd's client: the two
//! definitions check each other on the wire.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    thread,
    time::Duration,
};

use futures_util::Stream;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use tokio::{net::UnixListener, sync::watch};
use tonic::Status;

/// The gRPC path of `FetchX509SVID` (the proto has no package).
const FETCH_X509_SVID: &str = "/SpiffeWorkloadAPI/FetchX509SVID";

/// `X509SVIDRequest` (no fields).
#[derive(Clone, PartialEq, prost::Message)]
pub struct X509SvidRequest {}

/// `X509SVIDResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct X509SvidResponse {
    /// Field 1: the SVIDs, the default identity first.
    #[prost(message, repeated, tag = "1")]
    pub svids: Vec<X509Svid>,
    /// Field 2: CRLs (always empty here).
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub crl: Vec<Vec<u8>>,
    /// Field 3: foreign trust domains' bundles, keyed by `spiffe://<trust domain>`.
    #[prost(map = "string, bytes", tag = "3")]
    pub federated_bundles: HashMap<String, Vec<u8>>,
}

/// `X509SVID`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct X509Svid {
    /// Field 1: the SPIFFE ID.
    #[prost(string, tag = "1")]
    pub spiffe_id: String,
    /// Field 2: the chain, concatenated DER, leaf first.
    #[prost(bytes = "vec", tag = "2")]
    pub x509_svid: Vec<u8>,
    /// Field 3: the key, PKCS#8 DER.
    #[prost(bytes = "vec", tag = "3")]
    pub x509_svid_key: Vec<u8>,
    /// Field 4: the trust domain's CA certificates, concatenated DER.
    #[prost(bytes = "vec", tag = "4")]
    pub bundle: Vec<u8>,
    /// Field 5: a hint.
    #[prost(string, tag = "5")]
    pub hint: String,
}

/// A trust domain's CA (ECDSA P-256), issuing X.509-SVIDs.
pub struct SpiffeCa {
    trust_domain: String,
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

/// An X.509-SVID a [`SpiffeCa`] issued.
#[derive(Clone, Debug)]
pub struct IssuedSvid {
    /// Its SPIFFE ID.
    pub id: String,
    /// Its serial number, lowercase hex (tells rotated SVIDs apart).
    pub serial: String,
    /// Its `notAfter`.
    pub not_after: OffsetDateTime,
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
}

impl SpiffeCa {
    /// A CA for `trust_domain` (such as `aim.example.com`), with the trust domain's SPIFFE ID
    /// as its URI SAN.
    pub fn new(trust_domain: &str) -> Self {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("generating a CA key");
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{trust_domain} test SPIFFE CA"));
        params.distinguished_name = dn;
        params.subject_alt_names = vec![uri(&format!("spiffe://{trust_domain}"))];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-signing the CA");
        Self {
            trust_domain: trust_domain.to_owned(),
            cert_der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The trust domain's name.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The CA certificate, DER (the trust bundle).
    pub fn cert_der(&self) -> Vec<u8> {
        self.cert_der.clone()
    }

    /// An X.509-SVID for `id` (in any trust domain: this CA signs what it is asked to, so
    /// tests can forge IDs of other domains), valid from a second ago for `lifetime`, for
    /// client and server authentication.
    pub fn svid(&self, id: &str, lifetime: Duration) -> IssuedSvid {
        let now = OffsetDateTime::now_utc();
        self.svid_between(id, now - Duration::from_secs(1), now + lifetime)
    }

    /// An X.509-SVID for `id` valid from `not_before` to `not_after`.
    pub fn svid_between(
        &self,
        id: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> IssuedSvid {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("generating an SVID key");
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![uri(id)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyAgreement,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = not_before;
        params.not_after = not_after;
        let serial: [u8; 16] = rand::random();
        // A positive serial in its shortest DER form (as the peer reads it back): the top
        // bit clear, and the first byte never zero (DER would drop it).
        let mut serial = serial.to_vec();
        serial[0] = serial[0] % 0x7f + 1;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("signing an SVID");
        IssuedSvid {
            id: id.to_owned(),
            serial: hex(&serial),
            not_after,
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        }
    }
}

impl IssuedSvid {
    /// The certificate chain for a rustls server or client.
    pub fn cert_chain(&self) -> Vec<CertificateDer<'static>> {
        vec![CertificateDer::from(self.cert_der.clone())]
    }

    /// The private key for rustls.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// As the Workload API sends it, with `bundle` (concatenated DER).
    fn message(&self, bundle: &[u8]) -> X509Svid {
        X509Svid {
            spiffe_id: self.id.clone(),
            x509_svid: self.cert_der.clone(),
            x509_svid_key: self.key_der.clone(),
            bundle: bundle.to_vec(),
            hint: String::new(),
        }
    }
}

/// What the fake serves and what it saw.
struct State {
    ca: SpiffeCa,
    inner: Mutex<Inner>,
    /// Bumped on every change; each open stream sends the new response.
    generation: watch::Sender<u64>,
    /// `FetchX509SVID` calls accepted (streams opened).
    streams: AtomicUsize,
    /// Calls refused for lacking the security header.
    refused: AtomicUsize,
}

#[derive(Default)]
struct Inner {
    /// The identities served, in order, with their lifetime.
    ids: Vec<String>,
    lifetime: Duration,
    /// The SVIDs currently served (one per identity).
    current: Vec<IssuedSvid>,
    /// Every SVID ever issued, in order.
    issued: Vec<IssuedSvid>,
    /// Extra SVIDs to serve as they are (expired ones, foreign IDs).
    fixed: Vec<IssuedSvid>,
    federated: HashMap<String, Vec<u8>>,
    /// Answer `PermissionDenied` (no identity) instead of SVIDs.
    denied: bool,
    /// Rotate every this long (a period of the serving thread's runtime).
    rotate_every: Option<Duration>,
}

/// A fake SPIFFE Workload API on a Unix socket.
///
/// Serves `FetchX509SVID` only: the first response at once, then one per change (rotation,
/// new identities, denial). Without identities (and until [`set_identities`]) a call gets
/// `PermissionDenied`, as SPIRE answers a workload no registration entry matches.
///
/// [`set_identities`]: Self::set_identities
pub struct FakeWorkloadApi {
    socket: PathBuf,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FakeWorkloadApi {
    /// Serves on a new Unix socket at `socket` (removed first if it exists), signing with
    /// `ca`. No identity yet: see [`set_identities`](Self::set_identities).
    pub fn start(socket: &Path, ca: SpiffeCa) -> Self {
        let _ = std::fs::remove_file(socket);
        let (generation, _) = watch::channel(0);
        let state = Arc::new(State {
            ca,
            inner: Mutex::new(Inner::default()),
            generation,
            streams: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
        });
        let std_listener = std::os::unix::net::UnixListener::bind(socket)
            .unwrap_or_else(|e| panic!("binding {}: {e}", socket.display()));
        std_listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread_state = Arc::clone(&state);
        let thread = thread::Builder::new()
            .name("fake workload api".to_owned())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("building a current-thread runtime");
                rt.block_on(async move {
                    let listener =
                        UnixListener::from_std(std_listener).expect("registering the listener");
                    let _ = ready_tx.send(());
                    tokio::spawn(rotate(Arc::clone(&thread_state)));
                    let incoming = futures_util::stream::unfold(listener, |l| async move {
                        let accepted = l.accept().await.map(|(stream, _)| stream);
                        Some((accepted, l))
                    });
                    let serving = tonic::transport::Server::builder()
                        .serve_with_incoming(Service(thread_state), incoming);
                    // Not a graceful shutdown: a client's open stream would hold it up (and
                    // the client may be waiting for this thread). Dropping the runtime closes
                    // every connection.
                    tokio::select! {
                        _ = serving => {}
                        _ = stop_rx => {}
                    }
                });
            })
            .expect("spawning the fake Workload API thread");
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the fake Workload API reports readiness");
        Self {
            socket: socket.to_owned(),
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// The socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The endpoint as `SPIFFE_ENDPOINT_SOCKET` writes it: `unix:///path`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The CA.
    pub fn ca(&self) -> &SpiffeCa {
        &self.state.ca
    }

    /// Serves fresh SVIDs for `ids` (the first is the default identity), each valid for
    /// `lifetime`; open streams get them at once.
    pub fn set_identities(&self, ids: &[&str], lifetime: Duration) {
        let mut inner = self.state.inner.lock().unwrap();
        inner.ids = ids.iter().map(|id| (*id).to_owned()).collect();
        inner.lifetime = lifetime;
        inner.denied = false;
        reissue(&self.state.ca, &mut inner);
        drop(inner);
        self.state.generation.send_modify(|g| *g += 1);
    }

    /// Re-issues every identity with a new certificate and key (what SPIRE does at half
    /// life); open streams get them at once.
    pub fn rotate(&self) {
        rotate_now(&self.state);
    }

    /// Rotates every `period` from now on (`None` stops it).
    pub fn rotate_every(&self, period: Option<Duration>) {
        self.state.inner.lock().unwrap().rotate_every = period;
        self.state.generation.send_modify(|g| *g += 1);
    }

    /// Also serves `svid` as it is, after the issued ones (an expired SVID, another domain).
    pub fn serve_fixed(&self, svid: IssuedSvid) {
        self.state.inner.lock().unwrap().fixed.push(svid);
        self.state.generation.send_modify(|g| *g += 1);
    }

    /// Adds a foreign trust domain's bundle (its CA certificate, DER).
    pub fn federate(&self, trust_domain: &str, ca_der: Vec<u8>) {
        self.state
            .inner
            .lock()
            .unwrap()
            .federated
            .insert(format!("spiffe://{trust_domain}"), ca_der);
        self.state.generation.send_modify(|g| *g += 1);
    }

    /// Takes every identity away: open streams end with `PermissionDenied`, new calls too.
    pub fn deny(&self) {
        self.state.inner.lock().unwrap().denied = true;
        self.state.generation.send_modify(|g| *g += 1);
    }

    /// Every SVID issued so far, in order.
    pub fn issued(&self) -> Vec<IssuedSvid> {
        self.state.inner.lock().unwrap().issued.clone()
    }

    /// `FetchX509SVID` streams opened so far.
    pub fn streams(&self) -> usize {
        self.state.streams.load(Ordering::SeqCst)
    }

    /// Calls refused because they lacked `workload.spiffe.io: true`.
    pub fn refused_without_header(&self) -> usize {
        self.state.refused.load(Ordering::SeqCst)
    }
}

impl Drop for FakeWorkloadApi {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

// === the service ===

/// The `SpiffeWorkloadAPI` service, written as tonic's code generator would.
#[derive(Clone)]
struct Service(Arc<State>);

impl tonic::server::NamedService for Service {
    const NAME: &'static str = "SpiffeWorkloadAPI";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type ResponseStream = Pin<Box<dyn Stream<Item = Result<X509SvidResponse, Status>> + Send>>;

impl tower_service::Service<hyper::Request<tonic::body::Body>> for Service {
    type Response = hyper::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: hyper::Request<tonic::body::Body>) -> Self::Future {
        let state = Arc::clone(&self.0);
        Box::pin(async move {
            if req.uri().path() != FETCH_X509_SVID {
                let status = Status::unimplemented(format!("{} is not served", req.uri().path()));
                return Ok(status.into_http());
            }
            let codec = tonic_prost::ProstCodec::<X509SvidResponse, X509SvidRequest>::default();
            let mut grpc = tonic::server::Grpc::new(codec);
            Ok(grpc.server_streaming(FetchX509Svid(state), req).await)
        })
    }
}

struct FetchX509Svid(Arc<State>);

impl tonic::server::ServerStreamingService<X509SvidRequest> for FetchX509Svid {
    type Response = X509SvidResponse;
    type ResponseStream = ResponseStream;
    type Future = BoxFuture<Result<tonic::Response<ResponseStream>, Status>>;

    fn call(&mut self, request: tonic::Request<X509SvidRequest>) -> Self::Future {
        let state = Arc::clone(&self.0);
        Box::pin(async move {
            let header = request.metadata().get("workload.spiffe.io");
            if header.and_then(|v| v.to_str().ok()) != Some("true") {
                state.refused.fetch_add(1, Ordering::SeqCst);
                return Err(Status::invalid_argument(
                    "security header missing from request",
                ));
            }
            response(&state)?;
            state.streams.fetch_add(1, Ordering::SeqCst);
            let changes = state.generation.subscribe();
            // The first response at once, then one per change; a denial ends the stream.
            let stream = futures_util::stream::unfold(
                (state, changes, true, false),
                |(state, mut changes, first, done)| async move {
                    if done {
                        return None;
                    }
                    if !first && changes.changed().await.is_err() {
                        return None;
                    }
                    let item = response(&state);
                    let done = item.is_err();
                    Some((item, (state, changes, false, done)))
                },
            );
            let stream: ResponseStream = Box::pin(stream);
            Ok(tonic::Response::new(stream))
        })
    }
}

/// The response for the current state, or `PermissionDenied`.
fn response(state: &State) -> Result<X509SvidResponse, Status> {
    let inner = state.inner.lock().unwrap();
    let svids: Vec<&IssuedSvid> = inner.current.iter().chain(&inner.fixed).collect();
    if inner.denied || svids.is_empty() {
        return Err(Status::permission_denied("no identity issued"));
    }
    let bundle = state.ca.cert_der();
    Ok(X509SvidResponse {
        svids: svids.into_iter().map(|s| s.message(&bundle)).collect(),
        crl: Vec::new(),
        federated_bundles: inner.federated.clone(),
    })
}

/// New SVIDs for every identity.
fn reissue(ca: &SpiffeCa, inner: &mut Inner) {
    let fresh: Vec<IssuedSvid> = inner
        .ids
        .iter()
        .map(|id| ca.svid(id, inner.lifetime))
        .collect();
    inner.issued.extend(fresh.iter().cloned());
    inner.current = fresh;
}

fn rotate_now(state: &State) {
    reissue(&state.ca, &mut state.inner.lock().unwrap());
    state.generation.send_modify(|g| *g += 1);
}

/// The rotation timer: re-issues every `rotate_every` while it is set.
async fn rotate(state: Arc<State>) {
    let mut changes = state.generation.subscribe();
    loop {
        let period = state.inner.lock().unwrap().rotate_every;
        match period {
            Some(period) => {
                tokio::select! {
                    () = tokio::time::sleep(period) => rotate_now(&state),
                    changed = changes.changed() => if changed.is_err() { return },
                }
            }
            None => {
                if changes.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

fn uri(text: &str) -> SanType {
    SanType::URI(text.try_into().expect("an IA5 URI"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
