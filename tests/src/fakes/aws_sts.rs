//! [`FakeAwsSts`]: AWS STS `AssumeRoleWithWebIdentity` (`reference/tokens.md` §6.1, §8).

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, StatusCode};
use serde_json::json;

use super::{
    FakeOidc, FakeServer, Request, Response, json,
    jwt::{self, JwtProblem},
    oidc,
    oidc::hex,
    unix_now,
};
use crate::TestCa;

/// A failure the next call answers with, instead of validating it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AwsFailure {
    /// `403 AccessDenied`: the trust policy does not match.
    AccessDenied,
    /// `400 ExpiredTokenException`: the web identity token expired.
    ExpiredToken,
    /// `400 IDPCommunicationError`: STS could not reach the issuer.
    IdpCommunicationError,
    /// `400 InvalidIdentityToken`.
    InvalidIdentityToken,
    /// That HTTP status with an XML `InternalFailure`/`Throttling` error.
    Status(u16),
}

/// One call, as the fake saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsCall {
    /// `RoleArn`.
    pub role_arn: String,
    /// `RoleSessionName`.
    pub role_session_name: String,
    /// `DurationSeconds`, if sent.
    pub duration_seconds: Option<u64>,
    /// Whether the answer was JSON (`Accept: application/json`).
    pub json: bool,
    /// `"ok"`, or the error code / status it answered.
    pub outcome: String,
}

/// A fake STS endpoint on `https://127.0.0.1:PORT/`.
///
/// `POST /` with a form body, or `GET /?...`, of `Action=AssumeRoleWithWebIdentity`,
/// `Version=2011-06-15`, `RoleArn`, `RoleSessionName` (2–64 of `[\w+=,.@-]`),
/// `WebIdentityToken` and optional `DurationSeconds` (900–43200, default 3600). It checks, in
/// order: action and version, parameters (`ValidationError`), an injected [`AwsFailure`], the
/// token: RS256 with a published `kid` of the trusted [`FakeOidc`] and its issuer (else
/// `InvalidIdentityToken`), unexpired (else `ExpiredTokenException`), `aud` the configured
/// audience (else `InvalidIdentityToken`); then the role's trust policy: the role exists and,
/// when it names a subject, `sub` equals it (else `403 AccessDenied`).
///
/// Success is the XML of §6.1, or with `Accept: application/json` the JSON shape with
/// `Expiration` as epoch seconds (a JSON number). Errors are the XML `ErrorResponse`.
/// Credentials are random; [`issued`](Self::issued) tells which role a key belongs to.
pub struct FakeAwsSts {
    server: FakeServer,
    state: Arc<State>,
}

struct State {
    keys: Arc<oidc::State>,
    issuer: String,
    audience: String,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Trust policies: role ARN → the required `sub`, if any.
    roles: HashMap<String, Option<String>>,
    injected: VecDeque<AwsFailure>,
    expires_in: Option<u64>,
    issued: HashMap<String, Issued>,
    calls: Vec<AwsCall>,
}

/// Keys this fake issued.
#[derive(Debug, Clone)]
struct Issued {
    role_arn: String,
    secret_access_key: String,
    session_token: String,
}

/// An error answer: status, code, message.
struct Refusal(StatusCode, &'static str, String);

impl FakeAwsSts {
    /// Starts STS trusting the JWTs of `issuer` whose `aud` is `audience`
    /// (GitHub's convention: `sts.amazonaws.com`).
    pub fn start(ca: &TestCa, issuer: &FakeOidc, audience: &str) -> Self {
        let state = Arc::new(State {
            keys: issuer.state(),
            issuer: issuer.issuer(),
            audience: audience.to_owned(),
            inner: Mutex::new(Inner::default()),
        });
        let handler_state = Arc::clone(&state);
        let server = FakeServer::start(
            ca,
            "aws-sts",
            Arc::new(move |req| handler_state.handle(&req)),
        );
        Self { server, state }
    }

    /// The endpoint, `https://127.0.0.1:PORT/`.
    pub fn endpoint(&self) -> String {
        format!("{}/", self.server.base_url())
    }

    /// Adds role `role_arn` whose trust policy accepts tokens with `sub = subject` (any
    /// subject of the trusted issuer when `None`).
    pub fn add_role(&self, role_arn: &str, subject: Option<&str>) {
        self.state
            .inner
            .lock()
            .unwrap()
            .roles
            .insert(role_arn.to_owned(), subject.map(str::to_owned));
    }

    /// The next call answers `failure` (queued after earlier injections).
    pub fn inject(&self, failure: AwsFailure) {
        self.state.inner.lock().unwrap().injected.push_back(failure);
    }

    /// Keys issued from now on expire after `expires_in` (whatever `DurationSeconds` said).
    pub fn set_expires_in(&self, expires_in: Duration) {
        self.state.inner.lock().unwrap().expires_in = Some(expires_in.as_secs());
    }

    /// Takes the endpoint down, or brings it back up.
    pub fn set_down(&self, down: Option<super::Down>) {
        self.server.set_down(down);
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<AwsCall> {
        self.state.inner.lock().unwrap().calls.clone()
    }

    /// Successful calls so far.
    pub fn successes(&self) -> usize {
        self.calls().iter().filter(|c| c.outcome == "ok").count()
    }

    /// The secret of `access_key_id`, if this fake issued it: what AWS itself uses to verify a
    /// request's signature.
    pub fn secret_of(&self, access_key_id: &str) -> Option<String> {
        let inner = self.state.inner.lock().unwrap();
        Some(inner.issued.get(access_key_id)?.secret_access_key.clone())
    }

    /// The role and session token of the keys with `access_key_id`, if this fake issued them
    /// (what an AWS service sees: the key id in the signature, the token in a header).
    pub fn session_of(&self, access_key_id: &str) -> Option<(String, String)> {
        let inner = self.state.inner.lock().unwrap();
        let issued = inner.issued.get(access_key_id)?;
        Some((issued.role_arn.clone(), issued.session_token.clone()))
    }

    /// Returns the role `access_key_id` was issued for if, and only if, this fake issued it
    /// with exactly this secret and session token.
    pub fn issued(&self, access_key_id: &str, secret: &str, session_token: &str) -> Option<String> {
        let inner = self.state.inner.lock().unwrap();
        let issued = inner.issued.get(access_key_id)?;
        (issued.secret_access_key == secret && issued.session_token == session_token)
            .then(|| issued.role_arn.clone())
    }
}

impl State {
    fn handle(&self, req: &Request) -> Response {
        let params: Vec<(String, String)> = match req.method {
            Method::POST => url::form_urlencoded::parse(&req.body)
                .into_owned()
                .collect(),
            Method::GET => {
                url::form_urlencoded::parse(req.query.as_deref().unwrap_or_default().as_bytes())
                    .into_owned()
                    .collect()
            }
            _ => {
                return xml_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "InvalidAction",
                    "GET or POST",
                );
            }
        };
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let json_wanted = req
            .headers
            .get(hyper::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("application/json"));
        let mut call = AwsCall {
            role_arn: param("RoleArn").unwrap_or_default(),
            role_session_name: param("RoleSessionName").unwrap_or_default(),
            duration_seconds: param("DurationSeconds").and_then(|d| d.parse().ok()),
            json: json_wanted,
            outcome: String::new(),
        };
        let result = self.assume(&param, &call);
        let mut inner = self.inner.lock().unwrap();
        let response = match result {
            Ok((key_id, issued, expiration)) => {
                call.outcome = "ok".to_owned();
                let response = if json_wanted {
                    success_json(&key_id, &issued, expiration, &call)
                } else {
                    success_xml(&key_id, &issued, expiration, &call)
                };
                inner.issued.insert(key_id, issued);
                response
            }
            Err(Refusal(status, code, message)) => {
                call.outcome = code.to_owned();
                let mut response = xml_error(status, code, &message);
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

    fn assume(
        &self,
        param: &dyn Fn(&str) -> Option<String>,
        call: &AwsCall,
    ) -> Result<(String, Issued, u64), Refusal> {
        let invalid = |message: &str| {
            Err(Refusal(
                StatusCode::BAD_REQUEST,
                "ValidationError",
                message.to_owned(),
            ))
        };
        if param("Action").as_deref() != Some("AssumeRoleWithWebIdentity") {
            return Err(Refusal(
                StatusCode::BAD_REQUEST,
                "InvalidAction",
                "Could not find operation".to_owned(),
            ));
        }
        if param("Version").as_deref() != Some("2011-06-15") {
            return invalid("Version must be 2011-06-15");
        }
        let session = &call.role_session_name;
        let session_ok = (2..=64).contains(&session.len())
            && session.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '=' | ',' | '.' | '@' | '-')
            });
        if !session_ok {
            return invalid(
                "1 validation error detected: Value at 'roleSessionName' failed to satisfy constraint",
            );
        }
        if call.role_arn.len() < 20 {
            return invalid(
                "1 validation error detected: Value at 'roleArn' failed to satisfy constraint",
            );
        }
        let duration = match param("DurationSeconds") {
            None => 3600,
            Some(d) => match d.parse::<u64>() {
                Ok(d) if (900..=43_200).contains(&d) => d,
                _ => return invalid("The requested DurationSeconds is out of range"),
            },
        };
        let mut guard = self.inner.lock().unwrap();
        let inner = &mut *guard;
        if let Some(failure) = inner.injected.pop_front() {
            return Err(refusal(failure));
        }
        let token = param("WebIdentityToken").unwrap_or_default();
        let claims =
            jwt::verify(&self.keys, &self.issuer, &token, &self.audience).map_err(|problem| {
                match problem {
                    JwtProblem::Expired => refusal(AwsFailure::ExpiredToken),
                    JwtProblem::Audience => Refusal(
                        StatusCode::BAD_REQUEST,
                        "InvalidIdentityToken",
                        "Incorrect token audience".to_owned(),
                    ),
                    JwtProblem::Invalid | JwtProblem::Issuer => {
                        refusal(AwsFailure::InvalidIdentityToken)
                    }
                }
            })?;
        let sub = claims["sub"].as_str().unwrap_or_default();
        let trusted = match inner.roles.get(&call.role_arn) {
            Some(Some(required)) => required == sub,
            Some(None) => true,
            None => false,
        };
        if !trusted {
            return Err(Refusal(
                StatusCode::FORBIDDEN,
                "AccessDenied",
                format!("Not authorized to perform sts:AssumeRoleWithWebIdentity (sub {sub})"),
            ));
        }
        let lifetime = inner.expires_in.unwrap_or(duration);
        let key_id = format!("ASIA{}", hex(&rand::random::<[u8; 8]>()).to_uppercase());
        let issued = Issued {
            role_arn: call.role_arn.clone(),
            secret_access_key: format!("fake-secret-{}", hex(&rand::random::<[u8; 20]>())),
            session_token: format!("fake-session-{}", hex(&rand::random::<[u8; 32]>())),
        };
        Ok((key_id, issued, unix_now() + lifetime))
    }
}

fn refusal(failure: AwsFailure) -> Refusal {
    let (status, code, message) = match failure {
        AwsFailure::AccessDenied => (
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "Not authorized to perform sts:AssumeRoleWithWebIdentity",
        ),
        AwsFailure::ExpiredToken => (
            StatusCode::BAD_REQUEST,
            "ExpiredTokenException",
            "Token expired",
        ),
        AwsFailure::IdpCommunicationError => (
            StatusCode::BAD_REQUEST,
            "IDPCommunicationError",
            "Couldn't retrieve verification key from your identity provider",
        ),
        AwsFailure::InvalidIdentityToken => (
            StatusCode::BAD_REQUEST,
            "InvalidIdentityToken",
            "Couldn't verify the token's signature",
        ),
        AwsFailure::Status(429) => (StatusCode::TOO_MANY_REQUESTS, "Throttling", "Rate exceeded"),
        AwsFailure::Status(status) => (
            StatusCode::from_u16(status).expect("a valid injected status"),
            "InternalFailure",
            "An internal error occurred",
        ),
    };
    Refusal(status, code, message.to_owned())
}

/// Escapes text for an XML element.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn xml(status: StatusCode, body: String) -> Response {
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        "text/xml".parse().expect("a valid header value"),
    );
    response
}

fn xml_error(status: StatusCode, code: &str, message: &str) -> Response {
    let kind = if status.is_server_error() {
        "Receiver"
    } else {
        "Sender"
    };
    xml(
        status,
        format!(
            "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\n  <Error>\n    \
             <Type>{kind}</Type>\n    <Code>{}</Code>\n    <Message>{}</Message>\n  </Error>\n  \
             <RequestId>{}</RequestId>\n</ErrorResponse>\n",
            escape(code),
            escape(message),
            request_id()
        ),
    )
}

fn success_xml(key_id: &str, issued: &Issued, expiration: u64, call: &AwsCall) -> Response {
    let assumed = assumed_role(call);
    xml(
        StatusCode::OK,
        format!(
            r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>repo:octo-org/octo-repo:ref:refs/heads/main</SubjectFromWebIdentityToken>
    <Audience>sts.amazonaws.com</Audience>
    <AssumedRoleUser>
      <Arn>{}</Arn>
      <AssumedRoleId>AROAEXAMPLEID:{}</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <AccessKeyId>{key_id}</AccessKeyId>
      <SecretAccessKey>{}</SecretAccessKey>
      <SessionToken>{}</SessionToken>
      <Expiration>{}</Expiration>
    </Credentials>
    <Provider>arn:aws:iam::123456789012:oidc-provider/token.actions.githubusercontent.com</Provider>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata>
    <RequestId>{}</RequestId>
  </ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>
"#,
            escape(&assumed),
            escape(&call.role_session_name),
            issued.secret_access_key,
            issued.session_token,
            jwt::rfc3339(expiration),
            request_id()
        ),
    )
}

fn success_json(key_id: &str, issued: &Issued, expiration: u64, call: &AwsCall) -> Response {
    #[allow(
        clippy::cast_precision_loss,
        reason = "epoch seconds fit an f64 exactly"
    )]
    let epoch = expiration as f64;
    json(
        StatusCode::OK,
        &json!({"AssumeRoleWithWebIdentityResponse": {
            "AssumeRoleWithWebIdentityResult": {
                "AssumedRoleUser": {"Arn": assumed_role(call),
                                    "AssumedRoleId": format!("AROAEXAMPLEID:{}", call.role_session_name)},
                "Audience": "sts.amazonaws.com",
                "Credentials": {
                    "AccessKeyId": key_id,
                    "SecretAccessKey": issued.secret_access_key,
                    "SessionToken": issued.session_token,
                    "Expiration": epoch,
                },
                "PackedPolicySize": null,
                "Provider": "arn:aws:iam::123456789012:oidc-provider/token.actions.githubusercontent.com",
                "SubjectFromWebIdentityToken": "repo:octo-org/octo-repo:ref:refs/heads/main",
            },
            "ResponseMetadata": {"RequestId": request_id()},
        }}),
    )
}

/// `arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION`.
fn assumed_role(call: &AwsCall) -> String {
    let account = call.role_arn.split(':').nth(4).unwrap_or("123456789012");
    let role = call.role_arn.rsplit('/').next().unwrap_or_default();
    format!(
        "arn:aws:sts::{account}:assumed-role/{role}/{}",
        call.role_session_name
    )
}

fn request_id() -> String {
    let h = hex(&rand::random::<[u8; 16]>());
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}
