//! [`FakeOidc`]: a GitHub Actions OIDC issuer (`reference/tokens.md` §1, §8).

use std::{
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hyper::{Method, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use rsa::{RsaPrivateKey, pkcs1::EncodeRsaPrivateKey, traits::PublicKeyParts};
use serde_json::{Map, Value, json};

use super::{Down, FakeServer, Request, Response, json, unix_now};
use crate::TestCa;

/// A fake GitHub Actions OIDC issuer on `https://127.0.0.1:PORT`.
///
/// * `GET /idtoken?api-version=2.0[&audience=A]` with `Authorization: Bearer <request
///   token>` answers `{"count":N,"value":"<JWT>"}`: RS256, header `typ`, `alg`, `kid`, `x5t`;
///   claims `iss`, `sub`, `aud`, `jti`, `iat`, `nbf = iat − 600`, `exp = iat + 300` and the
///   GitHub context claims (string IDs). Without `audience`, `aud` is the owner's URL.
///   Wrong or missing bearer: 401. Missing `api-version`: 400.
/// * `GET /.well-known/openid-configuration` and `GET /.well-known/jwks`.
///
/// The issuer defaults to the server's own URL, so discovery works; set it to
/// `https://token.actions.githubusercontent.com` (or a GHES / GHE.com form) as needed.
pub struct FakeOidc {
    server: FakeServer,
    state: Arc<State>,
}

/// Shared with the handler and with [`FakeEntra`](super::FakeEntra), which verifies the JWTs.
pub(crate) struct State {
    request_token: String,
    base_url: Mutex<String>,
    inner: Mutex<Inner>,
    mints: AtomicUsize,
}

struct Inner {
    issuer: Option<String>,
    subject: String,
    claims: Map<String, Value>,
    lifetime: u64,
    /// Published keys; the last one signs.
    keys: Vec<SigningKey>,
    /// Sign with a key that is not in the JWKS (unknown `kid`).
    unpublished: Option<SigningKey>,
    fail_next: usize,
    audiences: Vec<Option<String>>,
    /// The discovery document's `jwks_uri` instead of the server's own.
    jwks_uri: Option<String>,
}

#[derive(Clone)]
struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    n: String,
    e: String,
}

impl FakeOidc {
    /// Starts an issuer whose JWTs carry `sub = repo:octo-org/octo-repo:ref:refs/heads/main`.
    pub fn start(ca: &TestCa) -> Self {
        let state = Arc::new(State {
            request_token: format!("fake-request-token-{}", hex(&rand::random::<[u8; 16]>())),
            base_url: Mutex::new(String::new()),
            inner: Mutex::new(Inner {
                issuer: None,
                subject: "repo:octo-org/octo-repo:ref:refs/heads/main".to_owned(),
                claims: default_claims(),
                lifetime: 300,
                keys: vec![signing_key(0, "key-0")],
                unpublished: None,
                fail_next: 0,
                audiences: Vec::new(),
                jwks_uri: None,
            }),
            mints: AtomicUsize::new(0),
        });
        let handler_state = Arc::clone(&state);
        let server = FakeServer::start(ca, "oidc", Arc::new(move |req| handler_state.handle(req)));
        *state.base_url.lock().unwrap() = server.base_url();
        Self { server, state }
    }

    /// `ACTIONS_ID_TOKEN_REQUEST_URL`: `https://127.0.0.1:PORT/idtoken?api-version=2.0`.
    pub fn request_url(&self) -> String {
        format!("{}/idtoken?api-version=2.0", self.server.base_url())
    }

    /// `ACTIONS_ID_TOKEN_REQUEST_TOKEN`.
    pub fn request_token(&self) -> &str {
        &self.state.request_token
    }

    /// The `iss` of its JWTs.
    pub fn issuer(&self) -> String {
        self.state.issuer()
    }

    /// Sets the `iss` of the JWTs minted from now on.
    pub fn set_issuer(&self, issuer: &str) {
        self.state.inner.lock().unwrap().issuer = Some(issuer.to_owned());
    }

    /// Sets the `sub` of the JWTs minted from now on.
    pub fn set_subject(&self, subject: &str) {
        self.state.inner.lock().unwrap().subject = subject.to_owned();
    }

    /// Sets (or replaces) a claim of the JWTs minted from now on, such as `actor`.
    pub fn set_claim(&self, name: &str, value: Value) {
        self.state
            .inner
            .lock()
            .unwrap()
            .claims
            .insert(name.to_owned(), value);
    }

    /// Sets `exp − iat` of the JWTs minted from now on (GitHub: 300 s).
    pub fn set_lifetime(&self, lifetime: Duration) {
        self.state.inner.lock().unwrap().lifetime = lifetime.as_secs();
    }

    /// The next `n` token requests answer `503`.
    pub fn fail_next(&self, n: usize) {
        self.state.inner.lock().unwrap().fail_next = n;
    }

    /// Signs with a new key (new `kid`) from now on; the old keys stay in the JWKS.
    pub fn rotate_key(&self) {
        let mut inner = self.state.inner.lock().unwrap();
        let n = inner.keys.len();
        let key = signing_key(n, &format!("key-{n}"));
        inner.keys.push(key);
    }

    /// Signs with a key whose `kid` is not in the JWKS (`true`), or back with the current one.
    pub fn sign_with_unknown_key(&self, unknown: bool) {
        self.state.inner.lock().unwrap().unpublished =
            unknown.then(|| signing_key(2, "unpublished-key"));
    }

    /// Makes the discovery document point `jwks_uri` at `uri` (`None`: its own JWKS).
    pub fn set_jwks_uri(&self, uri: Option<&str>) {
        self.state.inner.lock().unwrap().jwks_uri = uri.map(str::to_owned);
    }

    /// Takes the issuer down, or brings it back up.
    pub fn set_down(&self, down: Option<Down>) {
        self.server.set_down(down);
    }

    /// How many JWTs it minted for requests (not counting [`mint`](Self::mint)).
    pub fn mints(&self) -> usize {
        self.state.mints.load(Ordering::SeqCst)
    }

    /// The `audience` of every successful token request, in order.
    pub fn audiences(&self) -> Vec<Option<String>> {
        self.state.inner.lock().unwrap().audiences.clone()
    }

    /// A JWT for `audience` issued at `iat` (Unix seconds), minted directly (for expired or
    /// future tokens).
    pub fn mint_at(&self, audience: &str, iat: u64) -> String {
        self.state.jwt(Some(audience), iat)
    }

    /// The issuer's state, for a [`FakeEntra`](super::FakeEntra) that trusts it.
    pub(crate) fn state(&self) -> Arc<State> {
        Arc::clone(&self.state)
    }
}

impl State {
    fn issuer(&self) -> String {
        let configured = self.inner.lock().unwrap().issuer.clone();
        configured.unwrap_or_else(|| self.base_url.lock().unwrap().clone())
    }

    fn handle(&self, req: Request) -> Response {
        if req.method != Method::GET {
            return json(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"message": "GET only"}),
            );
        }
        match req.path.as_str() {
            "/idtoken" => self.idtoken(&req),
            "/.well-known/openid-configuration" => {
                let issuer = self.issuer();
                let base = self.base_url.lock().unwrap().clone();
                let jwks_uri = self.inner.lock().unwrap().jwks_uri.clone();
                json(
                    StatusCode::OK,
                    &json!({
                        "issuer": issuer,
                        "jwks_uri": jwks_uri.unwrap_or_else(|| format!("{base}/.well-known/jwks")),
                        "subject_types_supported": ["public", "pairwise"],
                        "response_types_supported": ["id_token"],
                        "claims_supported": ["sub", "aud", "exp", "iat", "iss", "jti", "nbf",
                            "ref", "repository", "repository_id", "repository_owner",
                            "repository_owner_id", "run_id", "run_number", "run_attempt",
                            "actor", "actor_id", "workflow", "workflow_ref", "workflow_sha",
                            "head_ref", "base_ref", "event_name", "ref_type", "environment",
                            "job_workflow_ref", "repository_visibility", "runner_environment"],
                        "id_token_signing_alg_values_supported": ["RS256"],
                        "scopes_supported": ["openid"],
                    }),
                )
            }
            "/.well-known/jwks" => json(StatusCode::OK, &self.jwks()),
            _ => json(StatusCode::NOT_FOUND, &json!({"message": "Not Found"})),
        }
    }

    fn idtoken(&self, req: &Request) -> Response {
        let expected = format!("bearer {}", self.request_token);
        let authorized = req
            .headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.len() == expected.len()
                    && v.eq_ignore_ascii_case(&expected)
                    && v[7..] == expected[7..]
            });
        if !authorized {
            return json(
                StatusCode::UNAUTHORIZED,
                &json!({"message": "Bad credentials"}),
            );
        }
        let query: Vec<(String, String)> =
            url::form_urlencoded::parse(req.query.as_deref().unwrap_or_default().as_bytes())
                .into_owned()
                .collect();
        if !query.iter().any(|(k, v)| k == "api-version" && v == "2.0") {
            return json(
                StatusCode::BAD_REQUEST,
                &json!({"message": "api-version required"}),
            );
        }
        let audiences: Vec<&str> = query
            .iter()
            .filter(|(k, _)| k == "audience")
            .map(|(_, v)| v.as_str())
            .collect();
        if audiences.len() > 1 {
            return json(
                StatusCode::BAD_REQUEST,
                &json!({"message": "one audience only"}),
            );
        }
        {
            let mut inner = self.inner.lock().unwrap();
            if inner.fail_next > 0 {
                inner.fail_next -= 1;
                return json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"message": "unavailable"}),
                );
            }
            inner
                .audiences
                .push(audiences.first().map(|a| (*a).to_owned()));
        }
        let count = self.mints.fetch_add(1, Ordering::SeqCst) + 1;
        let jwt = self.jwt(audiences.first().copied(), unix_now());
        json(StatusCode::OK, &json!({"count": count, "value": jwt}))
    }

    /// A signed JWT for `audience` (default: the owner's URL) issued at `iat`.
    fn jwt(&self, audience: Option<&str>, iat: u64) -> String {
        let issuer = self.issuer();
        let inner = self.inner.lock().unwrap();
        let key = inner
            .unpublished
            .as_ref()
            .unwrap_or_else(|| inner.keys.last().expect("there is always a signing key"));
        let mut claims = inner.claims.clone();
        let owner = claims["repository_owner"]
            .as_str()
            .unwrap_or("octo-org")
            .to_owned();
        let audience =
            audience.map_or_else(|| format!("https://github.com/{owner}"), str::to_owned);
        for (name, value) in [
            ("iss", json!(issuer)),
            ("sub", json!(inner.subject)),
            ("aud", json!(audience)),
            ("jti", json!(hex(&rand::random::<[u8; 16]>()))),
            ("iat", json!(iat)),
            ("nbf", json!(iat.saturating_sub(600))),
            ("exp", json!(iat + inner.lifetime)),
        ] {
            claims.insert(name.to_owned(), value);
        }
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(key.kid.clone());
        header.x5t = Some(URL_SAFE_NO_PAD.encode(key.kid.as_bytes()));
        jsonwebtoken::encode(&header, &claims, &key.encoding).expect("signing a test JWT")
    }

    /// `{"keys": [...]}` with every published key.
    fn jwks(&self) -> Value {
        let inner = self.inner.lock().unwrap();
        let keys: Vec<Value> = inner
            .keys
            .iter()
            .map(|k| {
                json!({"kty": "RSA", "alg": "RS256", "use": "sig", "kid": k.kid, "n": k.n,
                       "e": k.e, "x5t": URL_SAFE_NO_PAD.encode(k.kid.as_bytes())})
            })
            .collect();
        json!({ "keys": keys })
    }

    /// The verification key for `kid`, if published.
    pub(crate) fn decoding_key(&self, kid: &str) -> Option<DecodingKey> {
        let inner = self.inner.lock().unwrap();
        let key = inner.keys.iter().find(|k| k.kid == kid)?;
        DecodingKey::from_rsa_components(&key.n, &key.e).ok()
    }
}

/// The claims of a branch push in `octo-org/octo-repo` (§1.4; IDs are strings).
fn default_claims() -> Map<String, Value> {
    let claims = json!({
        "ref": "refs/heads/main",
        "sha": "0123456789abcdef0123456789abcdef01234567",
        "repository": "octo-org/octo-repo",
        "repository_owner": "octo-org",
        "repository_owner_id": "65",
        "repository_id": "74",
        "repository_visibility": "private",
        "run_id": "1234567890",
        "run_number": "10",
        "run_attempt": "1",
        "runner_environment": "github-hosted",
        "actor": "octocat",
        "actor_id": "12",
        "workflow": "ci",
        "workflow_ref": "octo-org/octo-repo/.github/workflows/ci.yml@refs/heads/main",
        "job_workflow_ref": "octo-org/octo-repo/.github/workflows/ci.yml@refs/heads/main",
        "event_name": "push",
        "ref_type": "branch",
        "head_ref": "",
        "base_ref": "",
    });
    match claims {
        Value::Object(map) => map,
        _ => unreachable!("a JSON object literal"),
    }
}

/// RSA keys are slow to generate even optimised: a few per test process, made on demand.
fn signing_key(index: usize, kid: &str) -> SigningKey {
    static KEYS: [OnceLock<RsaPrivateKey>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let key = KEYS[index % KEYS.len()].get_or_init(|| {
        RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("generating an RSA key")
    });
    let der = key.to_pkcs1_der().expect("encoding an RSA key");
    SigningKey {
        kid: kid.to_owned(),
        encoding: EncodingKey::from_rsa_der(der.as_bytes()),
        n: URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
        e: URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
