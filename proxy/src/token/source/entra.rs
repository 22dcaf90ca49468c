//! Entra client credentials with a client assertion (`reference/tokens.md` §2).
//!
//! `POST {authority}/{tenant}/oauth2/v2.0/token`, form fields `grant_type=client_credentials`,
//! `client_id`, `scope`, `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`,
//! `client_assertion` (another credential's token), plus `fmi_path` on the blueprint hop of
//! Agent ID (§3). Success is `{"token_type":"Bearer","expires_in":..,"access_token":..}`
//! (`expires_in` may be a string; `refresh_in` is honoured when present); errors are
//! `{"error":..,"error_description":"AADSTS70021: ..","error_codes":[70021],..}`.
//!
//! Retry classes (§2.4, §7.2): 5xx, 429 and AADSTS 70021 (federated credential not yet
//! replicated), 90006, 90024, 90033 back off and retry; AADSTS700024 (assertion outside its
//! validity) mints a fresh assertion and retries once; every other error is a configuration
//! problem and fails fast. Messages carry the status, the `error` and the AADSTS code with a
//! hint; the `error_description` (which names the assertion's subject) goes to the log only.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;
use url::Url;

use super::Minted;
use crate::token::error::{MintError, Retry};
use crate::token::http::Response;
use crate::token::secret::Secret;
use crate::token::{Inner, Slot};

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// AADSTS codes worth retrying with backoff.
const TRANSIENT: &[u64] = &[70021, 90006, 90024, 90033];
/// AADSTS code of a client assertion outside its validity window.
const ASSERTION_EXPIRED: u64 = 700_024;

/// One Entra client-credentials exchange.
pub(crate) struct Entra {
    label: &'static str,
    token_url: Url,
    tenant: String,
    client_id: String,
    scope: String,
    fmi_path: Option<String>,
    assertion: Arc<Slot>,
}

impl Entra {
    /// An exchange at `{authority}/{tenant}/oauth2/v2.0/token` whose client assertion is
    /// `assertion`'s token. `label` is the `source` reported with the tokens.
    ///
    /// # Errors
    ///
    /// The resulting URL does not parse.
    pub(crate) fn new(
        label: &'static str,
        authority: &str,
        tenant: &str,
        client_id: &str,
        scope: &str,
        fmi_path: Option<&str>,
        assertion: Arc<Slot>,
    ) -> Result<Self, String> {
        let url = format!(
            "{}/{tenant}/oauth2/v2.0/token",
            authority.trim_end_matches('/')
        );
        let token_url = Url::parse(&url).map_err(|e| format!("invalid token URL {url} ({e})"))?;
        Ok(Self {
            label,
            token_url,
            tenant: tenant.to_owned(),
            client_id: client_id.to_owned(),
            scope: scope.to_owned(),
            fmi_path: fmi_path.map(str::to_owned),
            assertion,
        })
    }

    pub(crate) fn label(&self) -> &'static str {
        self.label
    }

    /// The cache key (`reference/tokens.md` §7.3): authority host, tenant, client, scope and,
    /// for a blueprint hop, `fmi_path`.
    pub(crate) fn cache_key(&self) -> String {
        format!(
            "entra|{}|{}|{}|{}|{}",
            self.token_url.host_str().unwrap_or_default(),
            self.tenant,
            self.client_id,
            self.scope,
            self.fmi_path.as_deref().unwrap_or_default()
        )
    }

    /// Mints one token; on an expired assertion, mints a fresh assertion and tries once more.
    pub(crate) async fn mint(&self, broker: &Arc<Inner>) -> Result<Minted, MintError> {
        let mut fresh = false;
        loop {
            let assertion = broker
                .assertion(&self.assertion, fresh)
                .await
                .map_err(|e| e.into_mint().context("getting the client assertion"))?;
            let mut fields = vec![
                ("grant_type", "client_credentials"),
                ("client_id", self.client_id.as_str()),
                ("scope", self.scope.as_str()),
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", assertion.expose()),
            ];
            if let Some(fmi_path) = &self.fmi_path {
                fields.push(("fmi_path", fmi_path));
            }
            let sent = Instant::now();
            let response = broker.http.post_form(&self.token_url, &fields).await?;
            match parse(&response, sent) {
                Err(e) if e.retry == Retry::Remint && !fresh => {
                    tracing::info!(
                        client_id = self.client_id,
                        "client assertion expired in transit: minting a fresh one"
                    );
                    fresh = true;
                }
                result => return result,
            }
        }
    }
}

/// A success or error response of the token endpoint.
fn parse(response: &Response, sent: Instant) -> Result<Minted, MintError> {
    if !response.status.is_success() {
        return Err(classify(response));
    }
    #[derive(Deserialize)]
    struct Success {
        access_token: Option<String>,
        token_type: Option<String>,
        expires_in: Option<serde_json::Value>,
        refresh_in: Option<serde_json::Value>,
    }
    let success: Success = serde_json::from_slice(&response.body)
        .map_err(|_| MintError::malformed("Entra answered 200 with a body that is not JSON"))?;
    let secret = success
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| MintError::malformed("Entra answered 200 without an access_token"))?;
    if let Some(kind) = success
        .token_type
        .filter(|t| !t.eq_ignore_ascii_case("bearer"))
    {
        return Err(MintError::malformed(format!(
            "Entra issued a '{kind}' token; only Bearer tokens are supported"
        )));
    }
    let ttl = success
        .expires_in
        .as_ref()
        .and_then(seconds)
        .ok_or_else(|| MintError::malformed("Entra answered 200 without a valid expires_in"))?;
    Ok(Minted {
        secret: Secret::new(secret),
        sent,
        ttl,
        aws: None,
        refresh_in: success.refresh_in.as_ref().and_then(seconds),
    })
}

/// A number of seconds, as a JSON number or a string (AAD v1-style endpoints).
fn seconds(value: &serde_json::Value) -> Option<Duration> {
    match value {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .map(Duration::from_secs)
}

/// The [`MintError`] of an error response.
fn classify(response: &Response) -> MintError {
    #[derive(Deserialize, Default)]
    struct ErrorBody {
        error: Option<String>,
        error_description: Option<String>,
        #[serde(default)]
        error_codes: Vec<u64>,
    }
    let status = response.status;
    let body: ErrorBody = serde_json::from_slice(&response.body).unwrap_or_default();
    let code = body.error_codes.first().copied().or_else(|| {
        // Older answers carry the code only in the description ("AADSTS70021: ...").
        let d = body.error_description.as_deref()?;
        let digits: String = d
            .strip_prefix("AADSTS")?
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    });
    tracing::warn!(
        %status,
        error = body.error.as_deref().unwrap_or("-"),
        description = body.error_description.as_deref().unwrap_or("-"),
        "Entra refused a token request"
    );
    let mut message = format!("Entra answered {status}");
    if let Some(error) = &body.error {
        message.push_str(&format!(" {error}"));
    }
    if let Some(code) = code {
        message.push_str(&format!(" (AADSTS{code})"));
    }
    if let Some(hint) = code.and_then(hint) {
        message.push_str(&format!(": {hint}"));
    }
    let by_code = match code {
        Some(c) if TRANSIENT.contains(&c) => Some(Retry::Backoff(response.retry_after())),
        Some(ASSERTION_EXPIRED) => Some(Retry::Remint),
        _ => None,
    };
    super::refusal(response, message, by_code)
}

/// What an AADSTS code usually means, and the fix.
fn hint(code: u64) -> Option<&'static str> {
    Some(match code {
        70011 => "the scope is invalid: use '<resource App ID URI>/.default'",
        70021 => {
            "no federated identity credential matches the assertion (a new one takes a few \
             minutes to replicate)"
        }
        90002 => "the tenant does not exist: check `tenant`",
        500_011 => "the resource's service principal is not in the tenant: check `scope`",
        700_011 | 700_016 => "the application is not in the tenant: check the client ID",
        700_024 => "the client assertion is expired or not yet valid (clock skew?)",
        700_211 => "no federated credential matches the assertion's issuer",
        700_212 => "no federated credential matches the assertion's audience",
        700_213 => {
            "no federated credential matches the assertion's subject (case-sensitive; \
             immutable subjects use owner@id/repo@id)"
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use hyper::StatusCode;
    use hyper::header::HeaderMap;

    use super::*;

    fn response(status: u16, body: &str) -> Response {
        Response {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: body.to_owned().into(),
        }
    }

    fn error(status: u16, error: &str, code: u64) -> MintError {
        let body = format!(
            r#"{{"error":"{error}","error_description":"AADSTS{code}: trace-marker","error_codes":[{code}]}}"#
        );
        parse(&response(status, &body), Instant::now()).unwrap_err()
    }

    #[test]
    fn success_with_numeric_or_string_lifetimes() {
        let ok = r#"{"token_type":"Bearer","expires_in":4799,"ext_expires_in":4799,"access_token":"at"}"#;
        let minted = parse(&response(200, ok), Instant::now()).unwrap();
        assert_eq!(minted.secret.expose(), "at");
        assert_eq!(minted.ttl, Duration::from_secs(4799));
        let v1 = r#"{"token_type":"Bearer","expires_in":"3599","refresh_in":"1800","access_token":"at"}"#;
        let minted = parse(&response(200, v1), Instant::now()).unwrap();
        assert_eq!(minted.ttl, Duration::from_secs(3599));
        assert_eq!(minted.refresh_in, Some(Duration::from_secs(1800)));
        for bad in [
            "not json",
            r#"{"token_type":"Bearer","expires_in":60}"#,
            r#"{"token_type":"Bearer","access_token":"at"}"#,
            r#"{"token_type":"pop","expires_in":60,"access_token":"at"}"#,
        ] {
            let e = parse(&response(200, bad), Instant::now()).unwrap_err();
            assert_eq!(e.kind, crate::token::TokenErrorKind::Malformed, "{bad}");
        }
    }

    #[test]
    fn errors_are_classified_per_the_reference() {
        assert_eq!(
            error(400, "invalid_request", 70021).retry,
            Retry::Backoff(None)
        );
        assert_eq!(
            error(400, "invalid_request", 90033).retry,
            Retry::Backoff(None)
        );
        assert_eq!(error(400, "invalid_client", 700_024).retry, Retry::Remint);
        for (status, e, code) in [
            (400, "invalid_scope", 70011),
            (401, "invalid_client", 700_213),
            (400, "invalid_client", 700_211),
            (400, "invalid_request", 700_212),
            (400, "unauthorized_client", 700_016),
        ] {
            assert_eq!(error(status, e, code).retry, Retry::Never, "{code}");
        }
        let e = error(401, "invalid_client", 700_213);
        assert!(
            e.message.starts_with(
                "Entra answered 401 Unauthorized invalid_client (AADSTS700213): no federated \
                 credential matches the assertion's subject"
            ),
            "{}",
            e.message
        );
        assert!(
            !e.message.contains("trace-marker"),
            "the description stays in the log: {}",
            e.message
        );
        // Status-only failures.
        let mut busy = response(429, "");
        busy.headers.insert("retry-after", "7".parse().unwrap());
        assert_eq!(
            classify(&busy).retry,
            Retry::Backoff(Some(Duration::from_secs(7)))
        );
        assert_eq!(
            classify(&response(503, "<html>")).retry,
            Retry::Backoff(None)
        );
        assert_eq!(classify(&response(404, "")).retry, Retry::Never);
        // A code only in the description.
        let old = response(
            400,
            r#"{"error":"invalid_request","error_description":"AADSTS70021: no match"}"#,
        );
        assert_eq!(classify(&old).retry, Retry::Backoff(None));
    }
}
