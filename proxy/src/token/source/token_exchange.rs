//! RFC 8693 token exchange, Google STS shape, with optional service account impersonation
//! (`reference/tokens.md` §6.2, §6.3).
//!
//! Hop 1, `POST {token_url}` (default `https://sts.googleapis.com/v1/token`) with the form
//! fields `grant_type=urn:ietf:params:oauth:grant-type:token-exchange`, `audience`, `scope`,
//! `requested_token_type`, `subject_token_type` and `subject_token` (another credential's token,
//! normally a GitHub OIDC JWT minted fresh for every exchange). RFC 8693 defines the form
//! encoding and Google STS accepts it besides JSON, so one encoding serves both. The answer is
//! `{"access_token":..,"issued_token_type":..,"token_type":"Bearer","expires_in":3599}`; errors
//! are RFC 6749 `{"error":"invalid_grant","error_description":..}`.
//!
//! Hop 2, only with `service_account`: `POST {iam_credentials_url}/v1/projects/-/serviceAccounts/
//! {sa}:generateAccessToken` with `Authorization: Bearer <hop 1 token>` and
//! `{"scope":[scope],"lifetime":"3600s"}`; the answer `{"accessToken":..,"expireTime":RFC 3339}`
//! has no relative lifetime, so the requested `lifetime` is used, bounded by `expireTime`
//! against the answer's `Date` (§7.2). Errors use the Google API envelope
//! `{"error":{"code":403,"message":..,"status":"PERMISSION_DENIED"}}`. The hop 1 token is used
//! once and not cached: a new impersonated token needs both hops again, twice an hour at most.
//!
//! Retry classes (§7.2): 5xx, 429 and the `UNAVAILABLE`/`RESOURCE_EXHAUSTED` statuses back
//! off; every RFC 6749 error (`invalid_grant`, `invalid_request`, `invalid_target`, ...) and
//! every other IAM status is a configuration problem and fails fast. Messages carry the status,
//! the error code and a hint; descriptions (which may quote the token's claims) go to the log.

use std::sync::Arc;
use std::time::Duration;

use egressd_config::credential::TokenExchangeSource;
use hyper::StatusCode;
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

/// The `source` label of tokens from an `oauth2-token-exchange` credential.
pub(crate) const LABEL: &str = "oauth2-token-exchange";

const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// One `oauth2-token-exchange` source.
pub(crate) struct TokenExchange {
    token_url: Url,
    audience: String,
    scope: String,
    subject_token_type: String,
    requested_token_type: String,
    subject: Arc<Slot>,
    impersonate: Option<Impersonate>,
}

/// Hop 2: `generateAccessToken` for a service account.
struct Impersonate {
    url: Url,
    service_account: String,
    lifetime: Duration,
}

impl TokenExchange {
    /// The source for `config`, presenting `subject`'s token.
    ///
    /// # Errors
    ///
    /// A URL does not parse.
    pub(crate) fn new(config: &TokenExchangeSource, subject: Arc<Slot>) -> Result<Self, String> {
        let token_url = Url::parse(&config.token_url)
            .map_err(|e| format!("invalid token URL {} ({e})", config.token_url))?;
        let impersonate = match &config.impersonation {
            None => None,
            Some(i) => {
                let url = format!(
                    "{}/v1/projects/-/serviceAccounts/{}:generateAccessToken",
                    i.iam_credentials_url, i.service_account
                );
                Some(Impersonate {
                    url: Url::parse(&url)
                        .map_err(|e| format!("invalid IAM Credentials URL {url} ({e})"))?,
                    service_account: i.service_account.clone(),
                    lifetime: i.lifetime,
                })
            }
        };
        Ok(Self {
            token_url,
            audience: config.audience.clone(),
            scope: config.scope.clone(),
            subject_token_type: config.subject_token_type.clone(),
            requested_token_type: config.requested_token_type.clone(),
            subject,
            impersonate,
        })
    }

    /// The cache key (`reference/tokens.md` §7.3): `(audience, scope)`, or `(audience,
    /// service_account, scope, lifetime)` when impersonating; plus the endpoint's host and the
    /// requested token type, which change what is issued, and a fingerprint of the subject
    /// token's own key, so two credentials presenting different identities never share tokens.
    pub(crate) fn cache_key(&self) -> String {
        let mut key = format!(
            "oauth2-token-exchange|{}{}|{}|{}|{}|{}",
            self.token_url.host_str().unwrap_or_default(),
            self.token_url.path(),
            self.audience,
            self.scope,
            self.requested_token_type,
            fingerprint(&self.subject.key)
        );
        if let Some(i) = &self.impersonate {
            key.push_str(&format!("|{}|{}", i.service_account, i.lifetime.as_secs()));
        }
        key
    }

    /// Mints one token: the exchange, then the impersonation when configured.
    pub(crate) async fn mint(&self, broker: &Arc<Inner>) -> Result<Minted, MintError> {
        let subject = broker
            .assertion(&self.subject, false)
            .await
            .map_err(|e| e.into_mint().context("getting the subject token"))?;
        let fields = [
            ("grant_type", GRANT_TYPE),
            ("audience", self.audience.as_str()),
            ("scope", self.scope.as_str()),
            ("requested_token_type", self.requested_token_type.as_str()),
            ("subject_token_type", self.subject_token_type.as_str()),
            ("subject_token", subject.expose()),
        ];
        let sent = Instant::now();
        let response = broker.http.post_form(&self.token_url, &fields).await?;
        let exchanged = parse_exchange(&response, sent)?;
        let Some(impersonate) = &self.impersonate else {
            return Ok(exchanged);
        };
        let body = serde_json::json!({
            "scope": [self.scope],
            "lifetime": format!("{}s", impersonate.lifetime.as_secs()),
        });
        let (sent, wall) = (Instant::now(), OffsetDateTime::now_utc());
        let response = broker
            .http
            .post_json_bearer(&impersonate.url, exchanged.secret.expose(), &body)
            .await?;
        parse_generated(&response, sent, wall, impersonate.lifetime)
    }
}

/// A success or error answer of the token exchange (hop 1).
fn parse_exchange(response: &Response, sent: Instant) -> Result<Minted, MintError> {
    if !response.status.is_success() {
        return Err(classify_oauth(response));
    }
    #[derive(Deserialize)]
    struct Success {
        access_token: Option<String>,
        token_type: Option<String>,
        expires_in: Option<u64>,
    }
    let success: Success = serde_json::from_slice(&response.body).map_err(|_| {
        MintError::malformed("the token exchange answered 200 with a body that is not JSON")
    })?;
    let secret = success
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            MintError::malformed("the token exchange answered without an access_token")
        })?;
    // RFC 8693 §2.2.1: `token_type` is "N_A" when the issued token is not an access token.
    if let Some(kind) = success
        .token_type
        .filter(|t| !t.eq_ignore_ascii_case("bearer"))
    {
        return Err(MintError::malformed(format!(
            "the token exchange issued a '{kind}' token; only Bearer tokens are supported"
        )));
    }
    let ttl = success
        .expires_in
        .map(Duration::from_secs)
        .ok_or_else(|| MintError::malformed("the token exchange answered without expires_in"))?;
    Ok(Minted {
        secret: Secret::new(secret),
        aws: None,
        sent,
        ttl,
        refresh_in: None,
    })
}

/// A success or error answer of `generateAccessToken` (hop 2).
fn parse_generated(
    response: &Response,
    sent: Instant,
    wall: OffsetDateTime,
    lifetime: Duration,
) -> Result<Minted, MintError> {
    if !response.status.is_success() {
        return Err(classify_google(response));
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Generated {
        access_token: Option<String>,
        expire_time: Option<String>,
    }
    let generated: Generated = serde_json::from_slice(&response.body).map_err(|_| {
        MintError::malformed("IAM Credentials answered 200 with a body that is not JSON")
    })?;
    let secret = generated
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| MintError::malformed("IAM Credentials answered without an accessToken"))?;
    let expire_time = generated
        .expire_time
        .as_deref()
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
        .ok_or_else(|| {
            MintError::malformed("IAM Credentials answered without a valid expireTime")
        })?;
    Ok(Minted {
        secret: Secret::new(secret),
        aws: None,
        sent,
        ttl: bounded_ttl(
            lifetime,
            Some(expire_time),
            http_date(&response.headers),
            wall,
        ),
        refresh_in: None,
    })
}

/// The [`MintError`] of an RFC 6749 error answer of the token exchange.
fn classify_oauth(response: &Response) -> MintError {
    #[derive(Deserialize, Default)]
    struct ErrorBody {
        error: Option<String>,
        error_description: Option<String>,
    }
    let status = response.status;
    let body: ErrorBody = serde_json::from_slice(&response.body).unwrap_or_default();
    tracing::warn!(
        %status,
        error = body.error.as_deref().unwrap_or("-"),
        description = body.error_description.as_deref().unwrap_or("-"),
        "the token exchange was refused"
    );
    let mut message = format!("the token exchange answered {status}");
    if let Some(error) = body.error.as_deref() {
        message.push_str(&format!(" {}", super::printable(error)));
        let hint = match error {
            "invalid_grant" => Some(
                "the subject token was refused: check that the provider allows its issuer and \
                 audience and that its attribute condition accepts its claims",
            ),
            "invalid_target" => {
                Some("the audience names no provider that exists: check `audience`")
            }
            "invalid_scope" => Some("the scope is invalid: check `scope`"),
            "invalid_request" => Some("a field is missing or invalid: check the token types"),
            _ => None,
        };
        if let Some(hint) = hint {
            message.push_str(&format!(": {hint}"));
        }
    }
    super::refusal(response, message, None)
}

/// The [`MintError`] of a Google API error answer of `generateAccessToken`.
fn classify_google(response: &Response) -> MintError {
    #[derive(Deserialize, Default)]
    struct Envelope {
        error: Option<Detail>,
    }
    #[derive(Deserialize, Default)]
    struct Detail {
        message: Option<String>,
        status: Option<String>,
    }
    let status = response.status;
    let detail = serde_json::from_slice::<Envelope>(&response.body)
        .ok()
        .and_then(|e| e.error)
        .unwrap_or_default();
    tracing::warn!(
        %status,
        error = detail.status.as_deref().unwrap_or("-"),
        message = detail.message.as_deref().unwrap_or("-"),
        "IAM Credentials refused generateAccessToken"
    );
    let mut message = format!("IAM Credentials answered {status}");
    if let Some(google) = detail.status.as_deref() {
        message.push_str(&format!(" {}", super::printable(google)));
    }
    if status == StatusCode::FORBIDDEN || status == StatusCode::UNAUTHORIZED {
        message.push_str(
            ": the federated identity may not impersonate the service account: grant it \
             roles/iam.workloadIdentityUser (or serviceAccountTokenCreator) on it",
        );
    } else if status == StatusCode::NOT_FOUND {
        message.push_str(": the service account does not exist: check `service_account`");
    }
    let transient = matches!(
        detail.status.as_deref(),
        Some("UNAVAILABLE" | "RESOURCE_EXHAUSTED")
    );
    super::refusal(
        response,
        message,
        transient.then(|| Retry::Backoff(response.retry_after())),
    )
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderMap;
    use time::macros::datetime;

    use super::*;
    use crate::token::TokenErrorKind;

    fn response(status: u16, body: &str) -> Response {
        Response {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: body.to_owned().into(),
        }
    }

    #[test]
    fn exchange_success_and_malformed_answers() {
        let ok = r#"{"access_token":"ya29.d.EXAMPLE","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":3599}"#;
        let minted = parse_exchange(&response(200, ok), Instant::now()).unwrap();
        assert_eq!(minted.secret.expose(), "ya29.d.EXAMPLE");
        assert_eq!(minted.ttl, Duration::from_secs(3599));
        assert!(minted.aws.is_none());
        for bad in [
            "nope",
            r#"{"token_type":"Bearer","expires_in":60}"#,
            r#"{"access_token":"a","token_type":"Bearer"}"#,
            r#"{"access_token":"a","token_type":"N_A","expires_in":60}"#,
        ] {
            let e = parse_exchange(&response(200, bad), Instant::now()).unwrap_err();
            assert_eq!(e.kind, TokenErrorKind::Malformed, "{bad}");
        }
    }

    #[test]
    fn generated_token_lifetime_is_bounded_by_expire_time() {
        let wall = datetime!(2026-01-01 00:00:00 UTC);
        let body = r#"{"accessToken":"ya29.c.EXAMPLE","expireTime":"2026-01-01T00:20:00Z"}"#;
        let hour = Duration::from_hours(1);
        let mut answer = response(200, body);
        answer
            .headers
            .insert("date", "Thu, 01 Jan 2026 00:00:00 GMT".parse().unwrap());
        let minted = parse_generated(&answer, Instant::now(), wall, hour).unwrap();
        assert_eq!(minted.secret.expose(), "ya29.c.EXAMPLE");
        assert_eq!(minted.ttl, Duration::from_mins(20));
        let short = Duration::from_mins(5);
        let minted = parse_generated(&answer, Instant::now(), wall, short).unwrap();
        assert_eq!(minted.ttl, short);
        let e = parse_generated(
            &response(200, r#"{"accessToken":"a","expireTime":"soon"}"#),
            Instant::now(),
            wall,
            hour,
        )
        .unwrap_err();
        assert_eq!(e.kind, TokenErrorKind::Malformed);
    }

    #[test]
    fn errors_are_classified_per_the_reference() {
        let e = classify_oauth(&response(
            400,
            r#"{"error":"invalid_grant","error_description":"trace-marker: The audience in ID Token does not match"}"#,
        ));
        assert_eq!(e.retry, Retry::Never);
        assert!(
            e.message.starts_with(
                "the token exchange answered 400 Bad Request invalid_grant: the subject token \
                 was refused"
            ),
            "{}",
            e.message
        );
        assert!(!e.message.contains("trace-marker"));
        for error in [
            "invalid_request",
            "invalid_target",
            "invalid_scope",
            "unauthorized_client",
        ] {
            let body = format!(r#"{{"error":"{error}"}}"#);
            assert_eq!(classify_oauth(&response(400, &body)).retry, Retry::Never);
        }
        assert_eq!(
            classify_oauth(&response(503, "")).retry,
            Retry::Backoff(None)
        );
        let denied =
            r#"{"error":{"code":403,"message":"trace-marker","status":"PERMISSION_DENIED"}}"#;
        let e = classify_google(&response(403, denied));
        assert_eq!(e.retry, Retry::Never);
        assert!(e.message.contains("PERMISSION_DENIED"), "{}", e.message);
        assert!(!e.message.contains("trace-marker"));
        let busy = r#"{"error":{"code":429,"message":"m","status":"RESOURCE_EXHAUSTED"}}"#;
        assert_eq!(
            classify_google(&response(429, busy)).retry,
            Retry::Backoff(None)
        );
        let unavailable = r#"{"error":{"code":503,"message":"m","status":"UNAVAILABLE"}}"#;
        assert_eq!(
            classify_google(&response(503, unavailable)).retry,
            Retry::Backoff(None)
        );
    }
}
