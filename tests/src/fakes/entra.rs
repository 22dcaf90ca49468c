//! [`FakeEntra`]: an Entra token endpoint with federated credentials and Agent ID
//! (`reference/tokens.md` §2, §3, §8).

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hyper::{Method, StatusCode};
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Value, json};

use super::{Down, FakeOidc, FakeServer, Request, Response, json, oidc, oidc::hex, unix_now};
use crate::TestCa;

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The scope of Agent ID hop 1 (public cloud).
const EXCHANGE_SCOPE: &str = "api://AzureADTokenExchange/.default";

/// A federated identity credential: the assertion's `iss`, `sub` and `aud` must match exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fic {
    /// Expected `iss`.
    pub issuer: String,
    /// Expected `sub` (case-sensitive).
    pub subject: String,
    /// Expected `aud`, normally `api://AzureADTokenExchange`.
    pub audience: String,
}

/// A failure the next token request answers with, instead of validating it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// `400 invalid_client`, AADSTS700024: client assertion outside its validity window.
    AssertionExpired,
    /// `400 invalid_request`, AADSTS70021: no matching federated identity record (replication).
    FicNotReplicated,
    /// `401 invalid_client`, AADSTS7000215: invalid client secret / assertion.
    InvalidClient,
    /// `400 invalid_scope`, AADSTS70011.
    InvalidScope,
    /// That HTTP status with a JSON error body (`503`, `429` with `Retry-After: 1`...).
    Status(u16),
    /// `400 invalid_client`, AADSTS700213: no FIC matches the subject.
    SubjectMismatch,
}

/// One token request, as the fake saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraCall {
    /// The `client_id` field.
    pub client_id: String,
    /// The `scope` field.
    pub scope: String,
    /// The `fmi_path` field (Agent ID hop 1).
    pub fmi_path: Option<String>,
    /// `"ok"`, or the AADSTS code / status it answered.
    pub outcome: String,
}

/// A fake Entra token endpoint on `https://127.0.0.1:PORT` (the authority) for one tenant.
///
/// `POST /{tenant}/oauth2/v2.0/token` with form fields `grant_type=client_credentials`,
/// `client_id`, `scope` (one `<resource>/.default`), `client_assertion_type` (jwt-bearer),
/// `client_assertion`, and `fmi_path` on Agent ID hop 1. It checks, in order: tenant, form,
/// grant type, client, assertion type, scope, an injected [`Failure`], then the assertion:
///
/// * plain apps and blueprints: a JWT of the trusted [`FakeOidc`], RS256 with a published
///   `kid` (else AADSTS700027), not expired (else 700024), matching one of the client's
///   [`Fic`]s by issuer (else 700211), subject (else 700213) and audience (else 700212);
///   the first calls after [`add_fic_with_lag`](Self::add_fic_with_lag) answer 70021;
/// * hop 1 (`fmi_path`): the client is a blueprint, `fmi_path` one of its agents, the scope
///   `api://AzureADTokenExchange/.default`;
/// * hop 2 (client is an agent identity): the assertion is a T1 this fake issued, unexpired
///   (else 700024), to the agent's parent blueprint for this agent (`fmi_path`) with the
///   exchange scope.
///
/// Success: `{"token_type":"Bearer","expires_in":E,"ext_expires_in":E,"access_token":..}`,
/// `E` random in 3600–5400 unless [`set_expires_in`](Self::set_expires_in). Access tokens are
/// opaque; [`issued`](Self::issued) says to whom one was issued.
pub struct FakeEntra {
    server: FakeServer,
    state: Arc<State>,
}

struct State {
    tenant: String,
    issuer: Arc<oidc::State>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    apps: HashMap<String, App>,
    injected: VecDeque<Failure>,
    expires_in: Option<u64>,
    issued: HashMap<String, Issued>,
    calls: Vec<EntraCall>,
}

#[derive(Default)]
struct App {
    fics: Vec<Fic>,
    /// Calls still to answer 70021 (replication lag of a new FIC).
    lag: usize,
    /// Agent identities of a blueprint.
    agents: Vec<String>,
    /// The parent blueprint of an agent identity.
    parent: Option<String>,
}

/// An access token this fake issued.
#[derive(Debug, Clone)]
struct Issued {
    client_id: String,
    scope: String,
    fmi_path: Option<String>,
    expires_at: u64,
    /// The same expiry on this process's monotonic clock (sub-second, for
    /// [`FakeEntra::expires_at`]).
    expires: Instant,
}

impl FakeEntra {
    /// Starts the endpoint for `tenant`, trusting the JWTs of `issuer`.
    pub fn start(ca: &TestCa, issuer: &FakeOidc, tenant: &str) -> Self {
        let state = Arc::new(State {
            tenant: tenant.to_owned(),
            issuer: issuer.state(),
            inner: Mutex::new(Inner::default()),
        });
        let handler_state = Arc::clone(&state);
        let server =
            FakeServer::start(ca, "entra", Arc::new(move |req| handler_state.handle(&req)));
        Self { server, state }
    }

    /// The authority URL, `https://127.0.0.1:PORT`.
    pub fn authority(&self) -> String {
        self.server.base_url()
    }

    /// Registers application `client_id` with federated credential `fic`.
    pub fn add_app(&self, client_id: &str, fic: Fic) {
        self.add_fic_with_lag(client_id, fic, 0);
    }

    /// Registers `fic` on `client_id`; the next `lag` exchanges by that client answer
    /// AADSTS70021, as while a new FIC replicates.
    pub fn add_fic_with_lag(&self, client_id: &str, fic: Fic, lag: usize) {
        let mut inner = self.state.inner.lock().unwrap();
        let app = inner.apps.entry(client_id.to_owned()).or_default();
        app.fics.push(fic);
        app.lag += lag;
    }

    /// Registers agent identity `agent_id` under blueprint `blueprint_id` (which needs its
    /// own FIC, [`add_app`](Self::add_app)).
    pub fn add_agent(&self, blueprint_id: &str, agent_id: &str) {
        let mut inner = self.state.inner.lock().unwrap();
        inner
            .apps
            .entry(blueprint_id.to_owned())
            .or_default()
            .agents
            .push(agent_id.to_owned());
        inner.apps.entry(agent_id.to_owned()).or_default().parent = Some(blueprint_id.to_owned());
    }

    /// The next token request answers `failure` (queued after earlier injections).
    pub fn inject(&self, failure: Failure) {
        self.state.inner.lock().unwrap().injected.push_back(failure);
    }

    /// Every token issued from now on lives `expires_in`.
    pub fn set_expires_in(&self, expires_in: Duration) {
        self.state.inner.lock().unwrap().expires_in = Some(expires_in.as_secs());
    }

    /// Takes the endpoint down, or brings it back up.
    pub fn set_down(&self, down: Option<Down>) {
        self.server.set_down(down);
    }

    /// Every token request so far, in order.
    pub fn calls(&self) -> Vec<EntraCall> {
        self.state.inner.lock().unwrap().calls.clone()
    }

    /// Token requests by `client_id` that succeeded.
    pub fn successes(&self, client_id: &str) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.client_id == client_id && c.outcome == "ok")
            .count()
    }

    /// To whom `token` was issued: `(client_id, scope)`.
    pub fn issued(&self, token: &str) -> Option<(String, String)> {
        let inner = self.state.inner.lock().unwrap();
        let issued = inner.issued.get(token)?;
        Some((issued.client_id.clone(), issued.scope.clone()))
    }

    /// When `token`, an access token this fake issued, expires (issue instant + `expires_in`),
    /// on the monotonic clock the other fixtures record times with; `None` if not issued here.
    pub fn expires_at(&self, token: &str) -> Option<Instant> {
        let inner = self.state.inner.lock().unwrap();
        inner.issued.get(token).map(|issued| issued.expires)
    }

    /// Makes every token issued so far expired (a T1 presented later answers 700024).
    pub fn expire_issued(&self) {
        let mut inner = self.state.inner.lock().unwrap();
        let now = Instant::now();
        for issued in inner.issued.values_mut() {
            issued.expires_at = 0;
            issued.expires = now;
        }
    }
}

/// An error answer: status, `error`, AADSTS code, description.
struct Refusal(StatusCode, &'static str, u64, String);

impl State {
    fn handle(&self, req: &Request) -> Response {
        let segments: Vec<&str> = req.path.split('/').collect();
        let ["", tenant, "oauth2", "v2.0", "token"] = segments[..] else {
            return json(StatusCode::NOT_FOUND, &json!({"error": "not_found"}));
        };
        if req.method != Method::POST {
            return json(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": "invalid_request"}),
            );
        }
        let form: Vec<(String, String)> = url::form_urlencoded::parse(&req.body)
            .into_owned()
            .collect();
        let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let mut call = EntraCall {
            client_id: field("client_id").unwrap_or_default(),
            scope: field("scope").unwrap_or_default(),
            fmi_path: field("fmi_path"),
            outcome: String::new(),
        };
        let result = self.exchange(tenant, req, &form, &call);
        let mut inner = self.inner.lock().unwrap();
        let response = match result {
            Ok(body) => {
                call.outcome = "ok".to_owned();
                json(StatusCode::OK, &body)
            }
            Err(Refusal(status, error, code, description)) => {
                call.outcome = if code == 0 {
                    status.as_u16().to_string()
                } else {
                    format!("AADSTS{code}")
                };
                let mut response = json(status, &error_body(error, code, &description));
                if status == StatusCode::TOO_MANY_REQUESTS {
                    response
                        .headers_mut()
                        .insert("retry-after", "1".parse().expect("a header value"));
                }
                response
            }
        };
        inner.calls.push(call);
        response
    }

    fn exchange(
        &self,
        tenant: &str,
        req: &Request,
        form: &[(String, String)],
        call: &EntraCall,
    ) -> Result<Value, Refusal> {
        let bad = |error, code, description: &str| {
            Err(Refusal(
                StatusCode::BAD_REQUEST,
                error,
                code,
                description.to_owned(),
            ))
        };
        if tenant != self.tenant {
            return bad(
                "invalid_request",
                90002,
                &format!("Tenant '{tenant}' not found."),
            );
        }
        let form_type = req
            .headers
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if !form_type {
            return bad(
                "invalid_request",
                900_144,
                "The request body must be form-encoded.",
            );
        }
        let mut names: Vec<&str> = form.iter().map(|(k, _)| k.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return bad("invalid_request", 90014, "A field appears more than once.");
        }
        let field = |name: &str| {
            form.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        for required in [
            "grant_type",
            "client_id",
            "scope",
            "client_assertion_type",
            "client_assertion",
        ] {
            if field(required).is_none_or(str::is_empty) {
                return bad(
                    "invalid_request",
                    900_144,
                    &format!(
                        "The request body must contain the following parameter: '{required}'."
                    ),
                );
            }
        }
        if field("grant_type") != Some("client_credentials") {
            return bad(
                "unsupported_grant_type",
                70003,
                "The app requested an unsupported grant type.",
            );
        }
        let mut guard = self.inner.lock().unwrap();
        let inner = &mut *guard;
        let Some(app) = inner.apps.get(&call.client_id) else {
            return bad(
                "unauthorized_client",
                700_016,
                &format!(
                    "Application with identifier '{}' was not found in the directory.",
                    call.client_id
                ),
            );
        };
        if field("client_assertion_type") != Some(ASSERTION_TYPE) {
            return bad("invalid_request", 700_023, "Invalid client_assertion_type.");
        }
        if call.scope.contains(' ') || !call.scope.ends_with("/.default") {
            return bad(
                "invalid_scope",
                70011,
                "The provided value for scope is not valid.",
            );
        }
        let (agents, parent) = (app.agents.clone(), app.parent.clone());
        if let Some(failure) = inner.injected.pop_front() {
            return Err(refusal(failure));
        }
        let assertion = field("client_assertion").unwrap_or_default();
        if let Some(fmi_path) = &call.fmi_path {
            if !agents.contains(fmi_path) {
                return bad(
                    "invalid_request",
                    700_016,
                    &format!("fmi_path '{fmi_path}' is not an agent identity of this blueprint."),
                );
            }
            if call.scope != EXCHANGE_SCOPE {
                return bad(
                    "invalid_scope",
                    70011,
                    "Hop 1 must request api://AzureADTokenExchange/.default.",
                );
            }
        }
        if let Some(parent) = parent {
            self.check_t1(inner, assertion, &parent, &call.client_id)?;
        } else {
            let claims = self.check_jwt(assertion)?;
            let app = inner
                .apps
                .get_mut(&call.client_id)
                .expect("looked up above");
            check_fics(app, &claims)?;
            if app.lag > 0 {
                app.lag -= 1;
                return bad(
                    "invalid_request",
                    70021,
                    "No matching federated identity record found for presented assertion.",
                );
            }
        }
        let expires_in = inner
            .expires_in
            .unwrap_or_else(|| rand::random_range(3600..=5400));
        let token = format!("fake-entra-at-{}", hex(&rand::random::<[u8; 24]>()));
        inner.issued.insert(
            token.clone(),
            Issued {
                client_id: call.client_id.clone(),
                scope: call.scope.clone(),
                fmi_path: call.fmi_path.clone(),
                expires_at: unix_now() + expires_in,
                expires: Instant::now() + Duration::from_secs(expires_in),
            },
        );
        Ok(json!({
            "token_type": "Bearer",
            "expires_in": expires_in,
            "ext_expires_in": expires_in,
            "access_token": token,
        }))
    }

    /// Verifies a GitHub JWT against the trusted issuer's published keys; returns its claims.
    fn check_jwt(&self, jwt: &str) -> Result<Value, Refusal> {
        let invalid = |code, description: &str| {
            Refusal(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                code,
                description.to_owned(),
            )
        };
        let header = jsonwebtoken::decode_header(jwt)
            .map_err(|_| invalid(50027, "JWT token is invalid or malformed."))?;
        if header.alg != Algorithm::RS256 {
            return Err(invalid(
                700_027,
                "Client assertion must be signed with RS256.",
            ));
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.issuer.decoding_key(kid))
            .ok_or_else(|| {
                invalid(
                    700_027,
                    "Client assertion failed signature validation: unknown key.",
                )
            })?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.validate_exp = false; // checked below, to answer 700024
        validation.validate_aud = false; // matched against the FICs
        validation.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<Value>(jwt, &key, &validation)
            .map_err(|_| invalid(700_027, "Client assertion failed signature validation."))?;
        let claims = data.claims;
        let now = unix_now();
        let exp = claims["exp"].as_u64().unwrap_or(0);
        let nbf = claims["nbf"].as_u64().unwrap_or(0);
        if exp <= now || nbf > now + 60 {
            return Err(Refusal(
                StatusCode::BAD_REQUEST,
                "invalid_client",
                700_024,
                "Client assertion is not within its valid time range.".to_owned(),
            ));
        }
        Ok(claims)
    }

    /// Hop 2: `assertion` must be a live T1 issued to `parent` for `agent`.
    fn check_t1(
        &self,
        inner: &Inner,
        assertion: &str,
        parent: &str,
        agent: &str,
    ) -> Result<(), Refusal> {
        let refuse = |status, error, code, description: &str| {
            Err(Refusal(status, error, code, description.to_owned()))
        };
        let Some(t1) = inner.issued.get(assertion) else {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                700_027,
                "Client assertion failed signature validation.",
            );
        };
        if t1.expires_at <= unix_now() {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_client",
                700_024,
                "Client assertion is not within its valid time range.",
            );
        }
        if t1.scope != EXCHANGE_SCOPE {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_client",
                700_212,
                "The assertion's audience is not the token exchange audience.",
            );
        }
        if t1.client_id != parent {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_client",
                700_211,
                "The assertion was not issued to this agent's blueprint.",
            );
        }
        if t1.fmi_path.as_deref() != Some(agent) {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_client",
                700_213,
                "The assertion was issued for another agent identity.",
            );
        }
        Ok(())
    }
}

/// Matches the JWT's claims against the app's FICs: issuer, then subject, then audience.
fn check_fics(app: &App, claims: &Value) -> Result<(), Refusal> {
    let (iss, sub) = (
        claims["iss"].as_str().unwrap_or(""),
        claims["sub"].as_str().unwrap_or(""),
    );
    let aud: Vec<&str> = match &claims["aud"] {
        Value::String(a) => vec![a.as_str()],
        Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let fail = |code, description: String| {
        Err(Refusal(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            code,
            description,
        ))
    };
    let by_issuer: Vec<&Fic> = app.fics.iter().filter(|f| f.issuer == iss).collect();
    if by_issuer.is_empty() {
        return fail(
            700_211,
            format!(
                "No matching federated identity record found for presented assertion issuer '{iss}'."
            ),
        );
    }
    let by_subject: Vec<&Fic> = by_issuer.into_iter().filter(|f| f.subject == sub).collect();
    if by_subject.is_empty() {
        return fail(
            700_213,
            format!(
                "No matching federated identity record found for presented assertion subject '{sub}'."
            ),
        );
    }
    if !by_subject
        .iter()
        .any(|f| aud.contains(&f.audience.as_str()))
    {
        return fail(
            700_212,
            format!(
                "No matching federated identity record found for presented assertion audience '{}'.",
                aud.join(",")
            ),
        );
    }
    Ok(())
}

fn refusal(failure: Failure) -> Refusal {
    let (status, error, code, description) = match failure {
        Failure::AssertionExpired => (
            400,
            "invalid_client",
            700_024,
            "Client assertion is not within its valid time range.",
        ),
        Failure::FicNotReplicated => (
            400,
            "invalid_request",
            70021,
            "No matching federated identity record found for presented assertion.",
        ),
        Failure::InvalidClient => (
            401,
            "invalid_client",
            7_000_215,
            "Invalid client secret provided.",
        ),
        Failure::InvalidScope => (
            400,
            "invalid_scope",
            70011,
            "The provided value for scope is not valid.",
        ),
        Failure::Status(status) => (
            status,
            "temporarily_unavailable",
            0,
            "The service is temporarily unavailable.",
        ),
        Failure::SubjectMismatch => (
            400,
            "invalid_client",
            700_213,
            "No matching federated identity record found for presented assertion subject.",
        ),
    };
    let status = StatusCode::from_u16(status).expect("a valid injected status");
    Refusal(status, error, code, description.to_owned())
}

/// The error JSON of §2.4.
fn error_body(error: &str, code: u64, description: &str) -> Value {
    let trace = "0000aaaa-11bb-cccc-dd33-eeeeee333333";
    let correlation = "aaaa0000-bb11-2222-33cc-444444dddddd";
    let prefix = if code == 0 {
        String::new()
    } else {
        format!("AADSTS{code}: ")
    };
    json!({
        "error": error,
        "error_description": format!("{prefix}{description} Trace ID: {trace} Correlation ID: {correlation} Timestamp: 2026-01-01 00:00:00Z"),
        "error_codes": if code == 0 { json!([]) } else { json!([code]) },
        "timestamp": "2026-01-01 00:00:00Z",
        "trace_id": trace,
        "correlation_id": correlation,
        "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
    })
}
