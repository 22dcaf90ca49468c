//! [`FakeGoogleSts`]: Google STS token exchange (RFC 8693) and IAM Credentials
//! `generateAccessToken` (`reference/tokens.md` §6.2, §6.3, §8).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use super::{
    FakeOidc, FakeServer, Request, Response, json,
    jwt::{self, JwtProblem},
    oidc,
    oidc::hex,
    unix_now,
};
use crate::TestCa;

const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// A failure the next request (to either endpoint) answers with, instead of validating it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GoogleFailure {
    /// STS: `400 invalid_grant` (for example an attribute condition that refuses the token).
    InvalidGrant,
    /// IAM Credentials: `403 PERMISSION_DENIED`.
    PermissionDenied,
    /// That HTTP status with a JSON error body (`503`, `429` with `Retry-After: 1`...).
    Status(u16),
}

/// One request, as the fake saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoogleCall {
    /// `"sts"` or `"generateAccessToken"`.
    pub endpoint: &'static str,
    /// Whether an STS body was JSON (else a form).
    pub json: bool,
    /// `"ok"`, or the error code / status it answered.
    pub outcome: String,
}

/// A fake Google STS and IAM Credentials on one `https://127.0.0.1:PORT`.
///
/// * `POST /v1/token`, JSON or form body: `grant_type` token-exchange, `subject_token_type`
///   jwt, `requested_token_type` access_token, `audience` the provider's full name (else
///   `400 invalid_target`), `scope`, and `subject_token`: a JWT of the trusted [`FakeOidc`]
///   (published `kid`, its issuer, unexpired, `aud` = `https:` + the provider's name, as
///   google-github-actions/auth sets it; else `400 invalid_grant`). Answers
///   `{"access_token","issued_token_type","token_type":"Bearer","expires_in"}` (3599 s unless
///   [`set_expires_in`](Self::set_expires_in)).
/// * `POST /v1/projects/-/serviceAccounts/{sa}:generateAccessToken` with
///   `Authorization: Bearer <a live STS token of this fake>` (else `401 UNAUTHENTICATED`) for a
///   service account allowed with [`allow_service_account`](Self::allow_service_account)
///   (else `403 PERMISSION_DENIED`), body `{"scope":[..],"lifetime":"Ns"}`; answers
///   `{"accessToken","expireTime"}`.
pub struct FakeGoogleSts {
    server: FakeServer,
    state: Arc<State>,
}

struct State {
    keys: Arc<oidc::State>,
    issuer: String,
    provider: String,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    service_accounts: HashSet<String>,
    injected: VecDeque<GoogleFailure>,
    expires_in: Option<u64>,
    /// Token → (issued to: "federated" or the service account, expiry).
    issued: HashMap<String, (String, u64)>,
    calls: Vec<GoogleCall>,
}

/// An error answer: status and body.
struct Refusal(StatusCode, Value);

impl FakeGoogleSts {
    /// Starts STS for workload identity provider `provider`
    /// (`//iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P/providers/X`),
    /// trusting the JWTs of `issuer`.
    pub fn start(ca: &TestCa, issuer: &FakeOidc, provider: &str) -> Self {
        let state = Arc::new(State {
            keys: issuer.state(),
            issuer: issuer.issuer(),
            provider: provider.to_owned(),
            inner: Mutex::new(Inner::default()),
        });
        let handler_state = Arc::clone(&state);
        let server = FakeServer::start(
            ca,
            "google-sts",
            Arc::new(move |req| handler_state.handle(&req)),
        );
        Self { server, state }
    }

    /// The STS token URL, `https://127.0.0.1:PORT/v1/token`.
    pub fn token_url(&self) -> String {
        format!("{}/v1/token", self.server.base_url())
    }

    /// The IAM Credentials base URL, `https://127.0.0.1:PORT`.
    pub fn iam_credentials_url(&self) -> String {
        self.server.base_url()
    }

    /// The audience a GitHub JWT must carry: `https:` + the provider's name.
    pub fn jwt_audience(&self) -> String {
        format!("https:{}", self.state.provider)
    }

    /// Lets federated identities impersonate `service_account`.
    pub fn allow_service_account(&self, service_account: &str) {
        self.state
            .inner
            .lock()
            .unwrap()
            .service_accounts
            .insert(service_account.to_owned());
    }

    /// The next request answers `failure` (queued after earlier injections).
    pub fn inject(&self, failure: GoogleFailure) {
        self.state.inner.lock().unwrap().injected.push_back(failure);
    }

    /// Every token issued from now on (both endpoints) lives `expires_in`.
    pub fn set_expires_in(&self, expires_in: Duration) {
        self.state.inner.lock().unwrap().expires_in = Some(expires_in.as_secs());
    }

    /// Takes the endpoints down, or brings them back up.
    pub fn set_down(&self, down: Option<super::Down>) {
        self.server.set_down(down);
    }

    /// Every request so far, in order.
    pub fn calls(&self) -> Vec<GoogleCall> {
        self.state.inner.lock().unwrap().calls.clone()
    }

    /// To whom `token` was issued: `"federated"` (STS) or the service account's email.
    pub fn issued(&self, token: &str) -> Option<String> {
        let inner = self.state.inner.lock().unwrap();
        inner.issued.get(token).map(|(to, _)| to.clone())
    }
}

impl State {
    fn handle(&self, req: &Request) -> Response {
        if req.method != Method::POST {
            return json(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": "invalid_request"}),
            );
        }
        let (endpoint, is_json, result) = if req.path == "/v1/token" {
            let is_json = content_type(req).starts_with("application/json");
            ("sts", is_json, self.exchange(req, is_json))
        } else if let Some(sa) = req
            .path
            .strip_prefix("/v1/projects/-/serviceAccounts/")
            .and_then(|rest| rest.strip_suffix(":generateAccessToken"))
        {
            ("generateAccessToken", true, self.generate(req, sa))
        } else {
            return json(StatusCode::NOT_FOUND, &json!({"error": "not_found"}));
        };
        let (response, outcome) = match result {
            Ok(body) => (json(StatusCode::OK, &body), "ok".to_owned()),
            Err(Refusal(status, body)) => {
                let outcome = body["error"]
                    .as_str()
                    .or_else(|| body["error"]["status"].as_str())
                    .unwrap_or_default()
                    .to_owned();
                let mut response = json(status, &body);
                if status == StatusCode::TOO_MANY_REQUESTS {
                    response
                        .headers_mut()
                        .insert("retry-after", "1".parse().expect("a header value"));
                }
                (response, format!("{} {outcome}", status.as_u16()))
            }
        };
        let mut inner = self.inner.lock().unwrap();
        inner.calls.push(GoogleCall {
            endpoint,
            json: is_json,
            outcome,
        });
        response
    }

    /// `POST /v1/token`.
    fn exchange(&self, req: &Request, is_json: bool) -> Result<Value, Refusal> {
        let fields: HashMap<String, String> = if is_json {
            let body: Value = serde_json::from_slice(&req.body)
                .map_err(|_| oauth_error("invalid_request", "The body is not JSON."))?;
            body.as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        } else if content_type(req).starts_with("application/x-www-form-urlencoded") {
            url::form_urlencoded::parse(&req.body)
                .into_owned()
                .collect()
        } else {
            return Err(oauth_error("invalid_request", "Unsupported content type."));
        };
        let field = |name: &str| fields.get(name).map(String::as_str).unwrap_or_default();
        if field("grant_type") != GRANT_TYPE {
            return Err(oauth_error(
                "unsupported_grant_type",
                "Unsupported grant type.",
            ));
        }
        if field("subject_token_type") != JWT_TYPE {
            return Err(oauth_error(
                "invalid_request",
                "Unsupported subject_token_type.",
            ));
        }
        if field("requested_token_type") != ACCESS_TOKEN_TYPE {
            return Err(oauth_error(
                "invalid_request",
                "Unsupported requested_token_type.",
            ));
        }
        if field("scope").is_empty() {
            return Err(oauth_error("invalid_scope", "Scope is required."));
        }
        if field("audience") != self.provider {
            return Err(oauth_error(
                "invalid_target",
                "The target service indicated by the \"audience\" parameters is invalid.",
            ));
        }
        let mut inner = self.inner.lock().unwrap();
        if let Some(failure) = inner.injected.pop_front() {
            return Err(refusal(failure));
        }
        jwt::verify(
            &self.keys,
            &self.issuer,
            field("subject_token"),
            &format!("https:{}", self.provider),
        )
        .map_err(|problem| {
            let description = match problem {
                JwtProblem::Invalid => "Invalid JWT signature.",
                JwtProblem::Expired => "The token has expired.",
                JwtProblem::Issuer => "The issuer in ID Token does not match the provider.",
                JwtProblem::Audience => {
                    "The audience in ID Token does not match the expected audience."
                }
            };
            oauth_error("invalid_grant", description)
        })?;
        let expires_in = inner.expires_in.unwrap_or(3599);
        let token = format!("fake-sts-{}", hex(&rand::random::<[u8; 24]>()));
        inner.issued.insert(
            token.clone(),
            ("federated".to_owned(), unix_now() + expires_in),
        );
        Ok(json!({
            "access_token": token,
            "issued_token_type": ACCESS_TOKEN_TYPE,
            "token_type": "Bearer",
            "expires_in": expires_in,
        }))
    }

    /// `POST /v1/projects/-/serviceAccounts/{sa}:generateAccessToken`.
    fn generate(&self, req: &Request, sa: &str) -> Result<Value, Refusal> {
        let mut inner = self.inner.lock().unwrap();
        if let Some(failure) = inner.injected.pop_front() {
            return Err(refusal(failure));
        }
        let bearer = req
            .headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        let live = inner
            .issued
            .get(bearer)
            .is_some_and(|(to, exp)| to == "federated" && *exp > unix_now());
        if !live {
            return Err(google_error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials.",
            ));
        }
        if !inner.service_accounts.contains(sa) {
            return Err(refusal(GoogleFailure::PermissionDenied));
        }
        let body: Value = serde_json::from_slice(&req.body)
            .map_err(|_| google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload."))?;
        let scopes_ok = body["scope"]
            .as_array()
            .is_some_and(|s| !s.is_empty() && s.iter().all(Value::is_string));
        let lifetime = body["lifetime"]
            .as_str()
            .and_then(|l| l.strip_suffix('s'))
            .and_then(|l| l.parse::<u64>().ok());
        let (true, Some(lifetime)) = (scopes_ok, lifetime) else {
            return Err(google_error(
                400,
                "INVALID_ARGUMENT",
                "scope and lifetime are required.",
            ));
        };
        let lifetime = inner.expires_in.unwrap_or(lifetime);
        let expires = unix_now() + lifetime;
        let token = format!("fake-gcp-sa-{}", hex(&rand::random::<[u8; 24]>()));
        inner.issued.insert(token.clone(), (sa.to_owned(), expires));
        Ok(json!({"accessToken": token, "expireTime": jwt::rfc3339(expires)}))
    }
}

fn content_type(req: &Request) -> &str {
    req.headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn oauth_error(error: &str, description: &str) -> Refusal {
    Refusal(
        StatusCode::BAD_REQUEST,
        json!({"error": error, "error_description": description}),
    )
}

fn google_error(code: u16, status: &str, message: &str) -> Refusal {
    Refusal(
        StatusCode::from_u16(code).expect("a valid status"),
        json!({"error": {"code": code, "message": message, "status": status}}),
    )
}

fn refusal(failure: GoogleFailure) -> Refusal {
    match failure {
        GoogleFailure::InvalidGrant => oauth_error(
            "invalid_grant",
            "The given credential is rejected by the attribute condition.",
        ),
        GoogleFailure::PermissionDenied => google_error(
            403,
            "PERMISSION_DENIED",
            "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).",
        ),
        GoogleFailure::Status(status) => {
            let (code, name) = if status == 429 {
                (429, "RESOURCE_EXHAUSTED")
            } else {
                (status, "UNAVAILABLE")
            };
            google_error(code, name, "The service is currently unavailable.")
        }
    }
}
