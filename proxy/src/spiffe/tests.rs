//! Unit tests of the SPIFFE module: response parsing and SVID selection, peer verification,
//! and the source against the fake Workload API of `egressd-tests` (real gRPC on a Unix
//! socket).

use std::sync::Arc;
use std::time::Duration;

use egressd_config::spiffe::{PeerAuthorization, SpiffeId, TrustDomain, WorkloadEndpoint};
use egressd_tests::Scratch;
use egressd_tests::fakes::{self, FakeWorkloadApi, IssuedSvid, SpiffeCa};
use prost::Message as _;
use rustls::pki_types::{CertificateDer, UnixTime};

use super::svid::{Bundles, X509Context, parse_response, split_der};
use super::verify::{PeerRejected, verify_peer};
use super::workload::X509SvidResponse;
use super::{Unavailable, X509Source};

const TD: &str = "aim.example.com";
const RUNNER: &str = "spiffe://aim.example.com/github-runner";
const OTHER: &str = "spiffe://aim.example.com/other-workload";
const BACKEND: &str = "spiffe://aim.example.com/budget-backend";

fn id(text: &str) -> SpiffeId {
    SpiffeId::parse(text).unwrap()
}

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The fake's message for `svids`, decoded by egressd's own message types: the two
/// hand-written definitions must agree on the wire.
fn response(ca: &SpiffeCa, svids: &[&IssuedSvid]) -> X509SvidResponse {
    let theirs = fakes::X509SvidResponse {
        svids: svids
            .iter()
            .map(|s| fakes::X509Svid {
                spiffe_id: s.id.clone(),
                x509_svid: s.cert_chain()[0].to_vec(),
                x509_svid_key: s.private_key().secret_der().to_vec(),
                bundle: ca.cert_der(),
                hint: String::new(),
            })
            .collect(),
        ..Default::default()
    };
    X509SvidResponse::decode(theirs.encode_to_vec().as_slice()).unwrap()
}

fn leaf(svid: &IssuedSvid) -> CertificateDer<'static> {
    svid.cert_chain().remove(0)
}

fn bundles(cas: &[&SpiffeCa]) -> Bundles {
    cas.iter()
        .map(|ca| {
            let der = CertificateDer::from(ca.cert_der());
            let anchor = webpki::anchor_from_trusted_cert(&der).unwrap().to_owned();
            (ca.trust_domain().to_owned(), Arc::from(vec![anchor]))
        })
        .collect()
}

fn verify(
    svid: &IssuedSvid,
    bundles: &Bundles,
    peer: &PeerAuthorization,
) -> Result<SpiffeId, PeerRejected> {
    let algorithms = provider().signature_verification_algorithms;
    verify_peer(
        &leaf(svid),
        &[],
        bundles,
        peer,
        UnixTime::now(),
        &algorithms,
    )
}

#[test]
fn concatenated_der_is_split_and_junk_refused() {
    let ca = SpiffeCa::new(TD);
    let a = ca.svid(RUNNER, Duration::from_secs(60));
    let mut both = leaf(&a).to_vec();
    both.extend_from_slice(&ca.cert_der());
    let split = split_der(&both).unwrap();
    assert_eq!(split.len(), 2);
    assert_eq!(split[0], leaf(&a));
    assert_eq!(split[1].as_ref(), ca.cert_der().as_slice());
    assert!(split_der(&[]).is_err());
    assert!(
        split_der(&both[..both.len() - 1]).is_err(),
        "a truncated certificate"
    );
    assert!(split_der(b"not der").is_err());
}

#[test]
fn the_svid_named_by_spiffe_id_is_chosen_and_the_first_by_default() {
    let ca = SpiffeCa::new(TD);
    let runner = ca.svid(RUNNER, Duration::from_secs(60));
    let other = ca.svid(OTHER, Duration::from_secs(60));
    let provider = provider();
    let first = parse_response(response(&ca, &[&other, &runner]), None, &provider).unwrap();
    assert_eq!(first.svid.id, id(OTHER));
    let chosen = parse_response(
        response(&ca, &[&other, &runner]),
        Some(&id(RUNNER)),
        &provider,
    )
    .unwrap();
    assert_eq!(chosen.svid.id, id(RUNNER));
    assert_eq!(chosen.svid.certified.cert[0], leaf(&runner));
    assert!(chosen.svid.not_after > time::OffsetDateTime::now_utc());
    assert!(chosen.bundles.contains_key(TD));
    let debug = format!("{:?}", chosen.svid);
    assert!(debug.contains(RUNNER), "{debug}");

    let err = parse_response(response(&ca, &[&other]), Some(&id(RUNNER)), &provider).unwrap_err();
    assert_eq!(
        err,
        format!("the Workload API offers no X.509-SVID for {RUNNER} (it offers: {OTHER})")
    );
    let err = parse_response(response(&ca, &[]), None, &provider).unwrap_err();
    assert_eq!(err, "the Workload API sent no X.509-SVID");
}

#[test]
fn malformed_svids_are_refused_with_the_reason() {
    let ca = SpiffeCa::new(TD);
    let runner = ca.svid(RUNNER, Duration::from_secs(60));
    let provider = provider();
    // The message names one ID, the certificate another.
    let mut lying = response(&ca, &[&runner]);
    lying.svids[0].spiffe_id = OTHER.to_owned();
    let err = parse_response(lying, None, &provider).unwrap_err();
    assert!(
        err.contains(&format!("its certificate names {RUNNER}")),
        "{err}"
    );
    // A key that is not the certificate's.
    let mut mismatched = response(&ca, &[&runner]);
    let stranger = ca.svid(RUNNER, Duration::from_secs(60));
    mismatched.svids[0].x509_svid_key = stranger.private_key().secret_der().to_vec();
    let err = parse_response(mismatched, None, &provider).unwrap_err();
    assert!(err.contains("private key is unusable"), "{err}");
    // No bundle.
    let mut unbundled = response(&ca, &[&runner]);
    unbundled.svids[0].bundle.clear();
    let err = parse_response(unbundled, None, &provider).unwrap_err();
    assert!(
        err.contains("the bundle of trust domain aim.example.com"),
        "{err}"
    );
    // An invalid SPIFFE ID.
    let mut invalid = response(&ca, &[&runner]);
    invalid.svids[0].spiffe_id = "spiffe://AIM/x".to_owned();
    let err = parse_response(invalid, None, &provider).unwrap_err();
    assert!(err.contains("invalid SPIFFE ID"), "{err}");
}

#[test]
fn upstreams_verify_against_their_trust_domains_bundle_and_the_rule() {
    let ca = SpiffeCa::new(TD);
    let backend = ca.svid(BACKEND, Duration::from_secs(60));
    let impostor = ca.svid(OTHER, Duration::from_secs(60));
    let only_backend = PeerAuthorization::Ids(vec![id(BACKEND)]);
    let own = bundles(&[&ca]);
    assert_eq!(verify(&backend, &own, &only_backend).unwrap(), id(BACKEND));
    match verify(&impostor, &own, &only_backend) {
        Err(PeerRejected::NotAllowed(why)) => assert_eq!(
            why,
            format!("the upstream's SPIFFE ID {OTHER} is not allowed (allowed: {BACKEND})")
        ),
        other => panic!("{other:?}"),
    }
    let domain = PeerAuthorization::TrustDomain(TrustDomain::parse(TD).unwrap());
    assert_eq!(verify(&impostor, &own, &domain).unwrap(), id(OTHER));

    // A certificate for the right ID from a CA outside the bundle.
    let rogue = SpiffeCa::new(TD).svid(BACKEND, Duration::from_secs(60));
    match verify(&rogue, &own, &only_backend) {
        Err(PeerRejected::Chain { id: named, why }) => {
            assert_eq!(named, id(BACKEND));
            // Same CA name, other key: webpki finds the issuer by name, then the signature fails.
            assert!(why.contains("InvalidSignatureForPublicKey"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    // Another trust domain: refused without its bundle, verified with it (federation).
    let partner = SpiffeCa::new("partner.example");
    let foreign = partner.svid("spiffe://partner.example/api", Duration::from_secs(60));
    let foreign_ok = PeerAuthorization::Ids(vec![id("spiffe://partner.example/api")]);
    let err = verify(&foreign, &own, &foreign_ok).unwrap_err();
    assert!(
        err.to_string()
            .contains("has no bundle for trust domain partner.example"),
        "{err}"
    );
    let federated = bundles(&[&ca, &partner]);
    assert!(verify(&foreign, &federated, &foreign_ok).is_ok());
    // Expired.
    let now = time::OffsetDateTime::now_utc();
    let expired = ca.svid_between(
        BACKEND,
        now - Duration::from_secs(120),
        now - Duration::from_secs(60),
    );
    let err = verify(&expired, &own, &only_backend).unwrap_err();
    assert!(err.to_string().contains("CertExpired"), "{err}");
    // Not an SVID at all (a web PKI certificate).
    let web = egressd_tests::TestCa::new().leaf(&["budget-backend.example"]);
    let algorithms = provider().signature_verification_algorithms;
    let err = verify_peer(
        &web.cert_chain()[0],
        &[],
        &own,
        &only_backend,
        UnixTime::now(),
        &algorithms,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("is not an X.509-SVID: it has no URI SAN"),
        "{err}"
    );
}

// === the source, against the fake Workload API ===

fn endpoint(api: &FakeWorkloadApi) -> WorkloadEndpoint {
    WorkloadEndpoint::parse(&api.endpoint()).unwrap()
}

/// Polls `source` until `done` holds for its current state (at most 10 s).
async fn until(
    source: &X509Source,
    what: &str,
    done: impl Fn(&Result<Arc<X509Context>, Unavailable>) -> bool,
) {
    for _ in 0..200 {
        if done(&source.current()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{what}: still {:?}",
        source.current().map(|c| c.svid.id.clone())
    );
}

#[tokio::test]
async fn the_source_follows_rotations_and_drops_a_withdrawn_identity() {
    let scratch = Scratch::new();
    let api = FakeWorkloadApi::start(&scratch.path("agent.sock"), SpiffeCa::new(TD));
    api.set_identities(&[OTHER, RUNNER], Duration::from_secs(60));
    let source = X509Source::start("runner-svid", endpoint(&api), Some(id(RUNNER)));
    let first = source.ready().await.unwrap();
    assert_eq!(first.svid.id, id(RUNNER));
    let first_leaf = first.svid.certified.cert[0].clone();
    assert_eq!(api.streams(), 1);

    api.rotate();
    until(&source, "a rotated SVID", |c| {
        c.as_ref()
            .is_ok_and(|c| c.svid.certified.cert[0] != first_leaf)
    })
    .await;
    assert_eq!(api.streams(), 1, "a rotation arrives on the open stream");
    assert_eq!(api.refused_without_header(), 0);

    api.deny();
    until(&source, "no SVID after PermissionDenied", |c| {
        matches!(c, Err(Unavailable::NoSvid { .. }))
    })
    .await;
    let err = source.current().unwrap_err().to_string();
    assert!(
        err.contains("PermissionDenied") && err.contains("no identity issued"),
        "{err}"
    );
}

#[tokio::test]
async fn an_expired_svid_that_is_not_rotated_is_unavailable() {
    let scratch = Scratch::new();
    let api = FakeWorkloadApi::start(&scratch.path("agent.sock"), SpiffeCa::new(TD));
    let now = time::OffsetDateTime::now_utc();
    let stale = api.ca().svid_between(
        RUNNER,
        now - Duration::from_secs(600),
        now - Duration::from_secs(1),
    );
    api.serve_fixed(stale);
    let source = X509Source::start("runner-svid", endpoint(&api), None);
    let err = source.ready().await.unwrap_err();
    assert!(matches!(err, Unavailable::Expired { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("the X.509-SVID {RUNNER} expired at "))
            && text.contains("has not rotated it"),
        "{text}"
    );
}

#[tokio::test]
async fn without_an_agent_requests_wait_briefly_then_say_why() {
    let scratch = Scratch::new();
    let missing = WorkloadEndpoint::Unix(scratch.path("no-agent.sock"));
    let source = X509Source::start_with("svid", missing, None, Duration::from_millis(300));
    let started = tokio::time::Instant::now();
    let err = source.ready().await.unwrap_err().to_string();
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "it did not wait"
    );
    assert!(
        err.starts_with("no X.509-SVID from the Workload API at unix://")
            && err.contains("cannot connect"),
        "{err}"
    );
}

#[tokio::test]
async fn a_call_without_the_security_header_is_refused_by_the_fake() {
    use hyper::http::uri::PathAndQuery;
    let scratch = Scratch::new();
    let api = FakeWorkloadApi::start(&scratch.path("agent.sock"), SpiffeCa::new(TD));
    api.set_identities(&[RUNNER], Duration::from_secs(60));
    // egressd's own client always sends the header; call without it by hand.
    let path = api.socket().to_owned();
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(super::workload::UnixConnector(path))
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec =
        tonic_prost::ProstCodec::<super::workload::X509SvidRequest, X509SvidResponse>::default();
    let status = grpc
        .server_streaming(
            tonic::Request::new(super::workload::X509SvidRequest {}),
            PathAndQuery::from_static(super::workload::FETCH_X509_SVID),
            codec,
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(api.refused_without_header(), 1);
    assert_eq!(api.streams(), 0);
}
