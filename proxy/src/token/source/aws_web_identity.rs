//! AWS STS `AssumeRoleWithWebIdentity` (`reference/tokens.md` §6.1).
//!
//! `POST {endpoint}` with the form `Action=AssumeRoleWithWebIdentity&Version=2011-06-15&
//! RoleArn=..&RoleSessionName=..&WebIdentityToken=..&DurationSeconds=..`. The call is not
//! signed: the web identity token (another credential's, normally a GitHub OIDC JWT with
//! `aud = sts.amazonaws.com`, minted fresh for every call) is the credential. The answer is
//! XML (`AssumeRoleWithWebIdentityResponse/AssumeRoleWithWebIdentityResult/Credentials` with
//! `AccessKeyId`, `SecretAccessKey`, `SessionToken`, `Expiration` in RFC 3339), which is what
//! STS documents and what this source asks for (`Accept: text/xml`). The JSON shape (asked with
//! `Accept: application/json`, where `Expiration` is epoch seconds as a number) is only observed
//! in client fixtures, so it is parsed when it comes but never requested.
//!
//! The result is three [`AwsCredentials`] that sign requests (SigV4, `intercept/sigv4.rs`); they
//! are never a bearer header. Their lifetime is the requested `DurationSeconds` measured from
//! sending, bounded by `Expiration` against the answer's `Date` (§7.2); the broker refreshes
//! them with botocore's windows (`cache::plan_aws`).
//!
//! Errors are `<ErrorResponse><Error><Type/><Code/><Message/></Error><RequestId/></ErrorResponse>`.
//! `ExpiredTokenException` mints a fresh web identity token and retries once;
//! `IDPCommunicationError`, throttling, 5xx and 429 back off and retry; every other code
//! (`AccessDenied`, `InvalidIdentityToken`, `IDPRejectedClaim`, `ValidationError`, ...) is a
//! configuration problem and fails fast. Messages carry the status, the code and a hint; the
//! `Message` (which may quote the token's claims) goes to the log only.

use std::sync::Arc;
use std::time::Duration;

use egressd_config::credential::AwsWebIdentitySource;
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::time::Instant;
use url::Url;

use super::{Minted, bounded_ttl, fingerprint, http_date};
use crate::token::error::{MintError, Retry};
use crate::token::http::Response;
use crate::token::secret::Secret;
use crate::token::{Inner, Slot};

/// The `source` label of tokens from an `aws-web-identity` credential.
pub(crate) const LABEL: &str = "aws-web-identity";

/// STS error codes worth retrying with backoff.
const TRANSIENT: &[&str] = &[
    "IDPCommunicationError",
    "InternalFailure",
    "RequestLimitExceeded",
    "ServiceUnavailable",
    "Throttling",
    "ThrottlingException",
];
/// The STS error code of a web identity token that expired before STS read it.
const TOKEN_EXPIRED: &str = "ExpiredTokenException";

/// Temporary AWS keys from STS. Every part is a [`Secret`] (`Debug` prints `[redacted]`): the
/// access key ID is not secret on its own, but it identifies the session in CloudTrail and
/// there is no reason to log it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AwsCredentials {
    /// `AccessKeyId` (`ASIA...`), the `Credential=` of a SigV4 `Authorization` header.
    pub access_key_id: Secret,
    /// `SecretAccessKey`, the HMAC key SigV4 derives its signing key from; never sent.
    pub secret_access_key: Secret,
    /// `SessionToken`, sent as `X-Amz-Security-Token`.
    pub session_token: Secret,
}

/// One `aws-web-identity` source.
pub(crate) struct AwsWebIdentity {
    endpoint: Url,
    role_arn: String,
    role_session_name: String,
    duration: Duration,
    web_identity: Arc<Slot>,
}

impl AwsWebIdentity {
    /// The source for `config`, presenting `web_identity`'s token.
    ///
    /// # Errors
    ///
    /// The endpoint does not parse.
    pub(crate) fn new(
        config: &AwsWebIdentitySource,
        web_identity: Arc<Slot>,
    ) -> Result<Self, String> {
        let endpoint = Url::parse(&config.endpoint)
            .map_err(|e| format!("invalid STS endpoint {} ({e})", config.endpoint))?;
        Ok(Self {
            endpoint,
            role_arn: config.role_arn.clone(),
            role_session_name: config.role_session_name.clone(),
            duration: config.duration,
            web_identity,
        })
    }

    /// The cache key (`reference/tokens.md` §7.3): STS host, role, session name, duration (no
    /// session policy is sent, so no policy hash), and a fingerprint of the web identity
    /// token's own key, so two credentials presenting different identities never share keys.
    pub(crate) fn cache_key(&self) -> String {
        format!(
            "aws-web-identity|{}|{}|{}|{}|{}",
            host_port(&self.endpoint),
            self.role_arn,
            self.role_session_name,
            self.duration.as_secs(),
            fingerprint(&self.web_identity.key)
        )
    }

    /// Mints one set of keys; on `ExpiredTokenException`, mints a fresh web identity token and
    /// tries once more.
    pub(crate) async fn mint(&self, broker: &Arc<Inner>) -> Result<Minted, MintError> {
        let duration = self.duration.as_secs().to_string();
        let mut fresh = false;
        loop {
            let token = broker
                .assertion(&self.web_identity, fresh)
                .await
                .map_err(|e| e.into_mint().context("getting the web identity token"))?;
            let fields = [
                ("Action", "AssumeRoleWithWebIdentity"),
                ("Version", "2011-06-15"),
                ("RoleArn", self.role_arn.as_str()),
                ("RoleSessionName", self.role_session_name.as_str()),
                ("DurationSeconds", duration.as_str()),
                ("WebIdentityToken", token.expose()),
            ];
            let (sent, wall) = (Instant::now(), OffsetDateTime::now_utc());
            let response = broker
                .http
                .post_form_accepting(&self.endpoint, &fields, "text/xml")
                .await?;
            match parse(&response, sent, wall, self.duration) {
                Err(e) if e.retry == Retry::Remint && !fresh => {
                    tracing::info!(
                        role_arn = self.role_arn,
                        "web identity token expired in transit: minting a fresh one"
                    );
                    fresh = true;
                }
                result => return result,
            }
        }
    }
}

/// `host[:port]` of `url`.
fn host_port(url: &Url) -> String {
    match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    }
}

// === wire shapes ===

/// `Credentials`; `Expiration` `E` is RFC 3339 text in XML, and in JSON epoch seconds as a
/// number (or, from some fakes, text): a [`serde_json::Value`].
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Credentials<E> {
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    session_token: Option<String>,
    expiration: Option<E>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ResultXml<E> {
    credentials: Option<Credentials<E>>,
}

/// The XML document's root is `AssumeRoleWithWebIdentityResponse` (its name is not checked);
/// the JSON document's is its value.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ResponseXml<E> {
    assume_role_with_web_identity_result: Option<ResultXml<E>>,
}

/// The JSON document: `{"AssumeRoleWithWebIdentityResponse": {...}}`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ResponseJson {
    assume_role_with_web_identity_response: Option<ResponseXml<serde_json::Value>>,
}

impl ResponseXml<String> {
    /// The same answer with `Expiration` as a JSON string.
    fn into_json(self) -> ResponseXml<serde_json::Value> {
        let result = self
            .assume_role_with_web_identity_result
            .map(|r| ResultXml {
                credentials: r.credentials.map(|c| Credentials {
                    access_key_id: c.access_key_id,
                    secret_access_key: c.secret_access_key,
                    session_token: c.session_token,
                    expiration: c.expiration.map(serde_json::Value::String),
                }),
            });
        ResponseXml {
            assume_role_with_web_identity_result: result,
        }
    }
}

/// `Error` of an `ErrorResponse` (XML) or of the JSON error document.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ErrorDetail {
    code: Option<String>,
    message: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ErrorResponse {
    error: Option<ErrorDetail>,
}

/// Whether `body` looks like JSON rather than XML.
fn is_json(body: &[u8]) -> bool {
    body.iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'{')
}

/// A success or error answer of STS. `sent` and `wall` are when the request was sent (the
/// monotonic and the wall clock); `requested` is `DurationSeconds`.
fn parse(
    response: &Response,
    sent: Instant,
    wall: OffsetDateTime,
    requested: Duration,
) -> Result<Minted, MintError> {
    if !response.status.is_success() {
        return Err(classify(response));
    }
    let malformed = || MintError::malformed("AWS STS answered 200 without credentials");
    let body = std::str::from_utf8(&response.body).map_err(|_| malformed())?;
    let result = if is_json(response.body.as_ref()) {
        serde_json::from_str::<ResponseJson>(body)
            .ok()
            .and_then(|r| r.assume_role_with_web_identity_response)
    } else {
        quick_xml::de::from_str::<ResponseXml<String>>(body)
            .ok()
            .map(ResponseXml::into_json)
    };
    let credentials = result
        .and_then(|r| r.assume_role_with_web_identity_result)
        .and_then(|r| r.credentials)
        .ok_or_else(malformed)?;
    let part = |value: Option<String>| {
        value
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .map(Secret::new)
            .ok_or_else(malformed)
    };
    let aws = AwsCredentials {
        access_key_id: part(credentials.access_key_id)?,
        secret_access_key: part(credentials.secret_access_key)?,
        session_token: part(credentials.session_token)?,
    };
    let expiration = match credentials.expiration {
        None => None,
        Some(value) => Some(
            match &value {
                serde_json::Value::String(text) => {
                    OffsetDateTime::parse(text.trim(), &Rfc3339).ok()
                }
                serde_json::Value::Number(n) => n.as_f64().and_then(epoch),
                _ => None,
            }
            .ok_or_else(|| MintError::malformed("AWS STS answered an invalid Expiration"))?,
        ),
    };
    let ttl = bounded_ttl(requested, expiration, http_date(&response.headers), wall);
    Ok(Minted {
        secret: Secret::new(String::new()),
        aws: Some(aws),
        sent,
        ttl,
        refresh_in: None,
    })
}

/// The instant `secs` seconds after the Unix epoch (JSON answers give floats such as `1.79E9`).
fn epoch(secs: f64) -> Option<OffsetDateTime> {
    if !secs.is_finite() || !(0.0..=1e11).contains(&secs) {
        return None;
    }
    // Bounded above: the whole seconds fit an i64 exactly.
    #[allow(
        clippy::cast_possible_truncation,
        reason = "checked to be within 0..1e11"
    )]
    let whole = secs.trunc() as i64;
    OffsetDateTime::from_unix_timestamp(whole).ok()
}

/// The [`MintError`] of an error answer.
fn classify(response: &Response) -> MintError {
    let status = response.status;
    let detail = std::str::from_utf8(&response.body)
        .ok()
        .and_then(|body| {
            if is_json(body.as_bytes()) {
                serde_json::from_str::<ErrorResponse>(body).ok()
            } else {
                quick_xml::de::from_str::<ErrorResponse>(body).ok()
            }
        })
        .and_then(|e| e.error)
        .unwrap_or_default();
    tracing::warn!(
        %status,
        code = detail.code.as_deref().unwrap_or("-"),
        message = detail.message.as_deref().unwrap_or("-"),
        "AWS STS refused AssumeRoleWithWebIdentity"
    );
    let code = detail.code.as_deref();
    let mut message = format!("AWS STS answered {status}");
    if let Some(code) = code {
        // The code is an identifier; keep it printable and short whatever the server sent.
        let code: String = code
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(64)
            .collect();
        message.push_str(&format!(" {code}"));
    }
    if let Some(hint) = code.and_then(hint) {
        message.push_str(&format!(": {hint}"));
    }
    let by_code = match code {
        Some(TOKEN_EXPIRED) => Some(Retry::Remint),
        Some(c) if TRANSIENT.contains(&c) => Some(Retry::Backoff(response.retry_after())),
        _ => None,
    };
    super::refusal(response, message, by_code)
}

/// What an STS error code usually means, and the fix.
fn hint(code: &str) -> Option<&'static str> {
    Some(match code {
        "AccessDenied" => {
            "the role's trust policy does not accept this token: check its `:aud` and `:sub` \
             conditions (repository, branch, environment) and the role ARN"
        }
        "ExpiredTokenException" => "the web identity token had expired (clock skew?)",
        "IDPCommunicationError" => "STS could not reach the token's issuer to verify it",
        "IDPRejectedClaim" => "the issuer's token was refused for one of its claims",
        "InvalidIdentityToken" => {
            "STS refused the web identity token: does the account have an OIDC identity \
             provider for its issuer, listing its audience (usually sts.amazonaws.com)?"
        }
        "RegionDisabledException" => {
            "STS is not activated in this endpoint's region: activate it or use another endpoint"
        }
        "ValidationError" => {
            "STS refused a parameter: check role_arn, role_session_name, and that duration is \
             within the role's maximum session duration"
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use hyper::StatusCode;
    use hyper::header::HeaderMap;
    use time::macros::datetime;

    use super::*;
    use crate::token::TokenErrorKind;

    const XML_OK: &str = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>repo:octo-org/octo-repo:ref:refs/heads/main</SubjectFromWebIdentityToken>
    <Audience>sts.amazonaws.com</Audience>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::123456789012:assumed-role/gha-bedrock/awf-oidc-session</Arn>
      <AssumedRoleId>AROAEXAMPLEID:awf-oidc-session</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <AccessKeyId>ASIAEXAMPLEEXAMPLE</AccessKeyId>
      <SecretAccessKey>wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY</SecretAccessKey>
      <SessionToken>IQoJb3JpZ2luX2VjEXAMPLE</SessionToken>
      <Expiration>2026-01-01T01:00:00Z</Expiration>
    </Credentials>
    <Provider>arn:aws:iam::123456789012:oidc-provider/token.actions.githubusercontent.com</Provider>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>"#;

    const HOUR: Duration = Duration::from_hours(1);

    fn response(status: u16, body: &str, date: Option<&str>) -> Response {
        let mut headers = HeaderMap::new();
        if let Some(date) = date {
            headers.insert("date", date.parse().unwrap());
        }
        Response {
            status: StatusCode::from_u16(status).unwrap(),
            headers,
            body: body.to_owned().into(),
        }
    }

    fn parsed(body: &str, date: Option<&str>) -> Result<Minted, MintError> {
        let wall = datetime!(2026-01-01 00:00:00 UTC);
        parse(&response(200, body, date), Instant::now(), wall, HOUR)
    }

    fn error(status: u16, code: &str) -> MintError {
        let body = format!(
            "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error>\
             <Type>Sender</Type><Code>{code}</Code><Message>trace-marker sub=repo:x</Message>\
             </Error><RequestId>r</RequestId></ErrorResponse>"
        );
        classify(&response(status, &body, None))
    }

    #[test]
    fn xml_credentials_with_expiration_as_an_upper_bound() {
        let minted = parsed(XML_OK, None).unwrap();
        let aws = minted.aws.as_ref().unwrap();
        assert_eq!(aws.access_key_id.expose(), "ASIAEXAMPLEEXAMPLE");
        assert_eq!(
            aws.secret_access_key.expose(),
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
        );
        assert_eq!(aws.session_token.expose(), "IQoJb3JpZ2luX2VjEXAMPLE");
        assert_eq!(minted.secret.expose(), "", "no bearer value");
        assert_eq!(minted.ttl, HOUR);
        // The answer's Date says 10 minutes are left: that bounds the lifetime.
        let minted = parsed(XML_OK, Some("Thu, 01 Jan 2026 00:50:00 GMT")).unwrap();
        assert_eq!(minted.ttl, Duration::from_mins(10));
        // Nothing secret in Debug.
        let shown = format!("{minted:?}");
        assert!(
            !shown.contains("EXAMPLEKEY") && !shown.contains("ASIA"),
            "{shown}"
        );
    }

    #[test]
    fn json_credentials_with_epoch_expiration() {
        // 2026-01-01T00:30:00Z = 1767227400.
        let body = r#"{"AssumeRoleWithWebIdentityResponse":{"AssumeRoleWithWebIdentityResult":
            {"Credentials":{"AccessKeyId":"ASIAJ","SecretAccessKey":"sk","SessionToken":"st",
            "Expiration":1.7672274E9},"Audience":"sts.amazonaws.com"},
            "ResponseMetadata":{"RequestId":"r"}}}"#;
        let date = Some("Thu, 01 Jan 2026 00:00:00 GMT");
        let minted = parsed(body, date).unwrap();
        assert_eq!(minted.aws.unwrap().session_token.expose(), "st");
        assert_eq!(minted.ttl, Duration::from_mins(30));
        // An ISO string in JSON (as AWF's fake sends) works too.
        let body = body.replace("1.7672274E9", "\"2026-01-01T00:45:00Z\"");
        assert_eq!(parsed(&body, date).unwrap().ttl, Duration::from_mins(45));
        // Without a Date, a clock 30 minutes off is skew: the requested hour is trusted.
        assert_eq!(parsed(&body, None).unwrap().ttl, HOUR);
    }

    #[test]
    fn incomplete_answers_are_malformed() {
        for bad in [
            "not xml",
            "<AssumeRoleWithWebIdentityResponse/>",
            &XML_OK.replace("<SessionToken>IQoJb3JpZ2luX2VjEXAMPLE</SessionToken>", ""),
            &XML_OK.replace("2026-01-01T01:00:00Z", "tomorrow"),
            r#"{"AssumeRoleWithWebIdentityResponse":{}}"#,
        ] {
            let e = parsed(bad, None).unwrap_err();
            assert_eq!(e.kind, TokenErrorKind::Malformed, "{bad}");
        }
    }

    #[test]
    fn errors_are_classified_per_the_reference() {
        assert_eq!(error(400, "ExpiredTokenException").retry, Retry::Remint);
        assert_eq!(
            error(400, "IDPCommunicationError").retry,
            Retry::Backoff(None)
        );
        assert_eq!(error(400, "Throttling").retry, Retry::Backoff(None));
        for code in [
            "AccessDenied",
            "InvalidIdentityToken",
            "IDPRejectedClaim",
            "ValidationError",
            "RegionDisabledException",
        ] {
            assert_eq!(error(403, code).retry, Retry::Never, "{code}");
        }
        let e = error(403, "AccessDenied");
        assert!(
            e.message.starts_with(
                "AWS STS answered 403 Forbidden AccessDenied: the role's trust policy"
            ),
            "{}",
            e.message
        );
        assert!(
            !e.message.contains("trace-marker"),
            "the Message stays in the log"
        );
        // Status-only failures, and a JSON error document.
        let mut busy = response(429, "", None);
        busy.headers.insert("retry-after", "3".parse().unwrap());
        assert_eq!(
            classify(&busy).retry,
            Retry::Backoff(Some(Duration::from_secs(3)))
        );
        assert_eq!(
            classify(&response(503, "<html>", None)).retry,
            Retry::Backoff(None)
        );
        assert_eq!(classify(&response(404, "", None)).retry, Retry::Never);
        let json = r#"{"Error":{"Code":"InvalidIdentityToken","Message":"m","Type":"Sender"}}"#;
        let e = classify(&response(400, json, None));
        assert_eq!(e.retry, Retry::Never);
        assert!(e.message.contains("InvalidIdentityToken"), "{}", e.message);
    }
}
