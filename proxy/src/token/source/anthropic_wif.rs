//! Anthropic workload identity federation: another credential's JWT (the job's GitHub OIDC
//! token, normally with `aud` `https://api.anthropic.com`) exchanged for a short-lived Claude
//! API token.
//!
//! `POST {token_url}` (default `https://api.anthropic.com/v1/oauth/token`) with
//! `anthropic-beta: oidc-federation-2026-04-01` and a JSON body, the RFC 7523 `jwt-bearer`
//! grant:
//!
//! ```json
//! {"grant_type":"urn:ietf:params:oauth:grant-type:jwt-bearer","assertion":"<JWT>",
//!  "federation_rule_id":"fdrl_..","organization_id":"<uuid>","service_account_id":"svac_..",
//!  "workspace_id":"wrkspc_.."}
//! ```
//!
//! The answer is an RFC 6749 token response, `{"access_token":"sk-ant-oat01-..",
//! "token_type":"Bearer","expires_in":3600,"scope":".."}`; errors are RFC 6749
//! `{"error":"invalid_grant","error_description":..}` (or the API's own envelope
//! `{"type":"error","error":{"type":..,"message":..}}`, which is read too). The token goes
//! upstream as `Authorization: Bearer` with `anthropic-beta: oauth-2025-04-20` merged into the
//! request's betas ([`OAUTH_BETA`]).
//!
//! Retry classes: 5xx and 429 back off; every 4xx is a configuration problem and fails fast.
//! Messages carry the status, the error code and a hint; descriptions go to the log only
//! (they may quote the assertion's claims).

use std::sync::Arc;
use std::time::Duration;

use egressd_config::credential::AnthropicWifSource;
use serde::Deserialize;
use tokio::time::Instant;
use url::Url;

use super::{Minted, fingerprint};
use super::{printable, refusal};
use crate::token::error::MintError;
use crate::token::http::Response;
use crate::token::secret::Secret;
use crate::token::{Inner, Slot};

/// The `source` label of tokens from an `anthropic-wif` credential.
pub(crate) const LABEL: &str = "anthropic-wif";

/// The `anthropic-beta` value the token endpoint needs on a `jwt-bearer` exchange.
pub(crate) const FEDERATION_BETA: &str = "oidc-federation-2026-04-01";

/// The `anthropic-beta` value every API request with a federated (OAuth) token needs.
pub(crate) const OAUTH_BETA: &str = "oauth-2025-04-20";

const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Adds [`OAUTH_BETA`] to the request's `anthropic-beta` list (one header, values
/// comma-separated), keeping the betas the client asked for. A federated token without it is
/// refused by the API.
pub(crate) fn add_oauth_beta(headers: &mut hyper::HeaderMap) {
    let name = hyper::header::HeaderName::from_static("anthropic-beta");
    let mut betas: Vec<String> = headers
        .get_all(&name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .map(str::to_owned)
        .collect();
    if !betas.iter().any(|b| b == OAUTH_BETA) {
        betas.push(OAUTH_BETA.to_owned());
    }
    if let Ok(value) = hyper::header::HeaderValue::from_str(&betas.join(",")) {
        headers.insert(name, value);
    }
}

/// One `anthropic-wif` source.
pub(crate) struct AnthropicWif {
    token_url: Url,
    federation_rule_id: String,
    organization_id: String,
    service_account_id: String,
    workspace_id: Option<String>,
    assertion: Arc<Slot>,
}

impl AnthropicWif {
    /// The source for `config`, presenting `assertion`'s token.
    ///
    /// # Errors
    ///
    /// The token URL does not parse.
    pub(crate) fn new(config: &AnthropicWifSource, assertion: Arc<Slot>) -> Result<Self, String> {
        let token_url = Url::parse(&config.token_url)
            .map_err(|e| format!("invalid token URL {} ({e})", config.token_url))?;
        Ok(Self {
            token_url,
            federation_rule_id: config.federation_rule_id.clone(),
            organization_id: config.organization_id.clone(),
            service_account_id: config.service_account_id.clone(),
            workspace_id: config.workspace_id.clone(),
            assertion,
        })
    }

    /// The cache key: everything that changes what is issued (endpoint, rule, organization,
    /// service account, workspace) and a fingerprint of the assertion's own key.
    pub(crate) fn cache_key(&self) -> String {
        format!(
            "anthropic-wif|{}{}|{}|{}|{}|{}|{}",
            self.token_url.host_str().unwrap_or_default(),
            self.token_url.path(),
            self.federation_rule_id,
            self.organization_id,
            self.service_account_id,
            self.workspace_id.as_deref().unwrap_or("-"),
            fingerprint(&self.assertion.key)
        )
    }

    /// Mints one token: a fresh assertion, then the exchange.
    pub(crate) async fn mint(&self, broker: &Arc<Inner>) -> Result<Minted, MintError> {
        let assertion = broker
            .assertion(&self.assertion, false)
            .await
            .map_err(|e| e.into_mint().context("getting the identity token"))?;
        let mut body = serde_json::json!({
            "grant_type": GRANT_TYPE,
            "assertion": assertion.expose(),
            "federation_rule_id": self.federation_rule_id,
            "organization_id": self.organization_id,
            "service_account_id": self.service_account_id,
        });
        if let Some(workspace) = &self.workspace_id {
            body["workspace_id"] = serde_json::Value::String(workspace.clone());
        }
        let sent = Instant::now();
        let response = broker
            .http
            .post_json(
                &self.token_url,
                &[("anthropic-beta", FEDERATION_BETA)],
                &body,
            )
            .await?;
        parse(&response, sent)
    }
}

/// A success or error answer of the token endpoint.
fn parse(response: &Response, sent: Instant) -> Result<Minted, MintError> {
    if !response.status.is_success() {
        return Err(classify(response));
    }
    #[derive(Deserialize)]
    struct Success {
        access_token: Option<String>,
        token_type: Option<String>,
        expires_in: Option<u64>,
    }
    let success: Success = serde_json::from_slice(&response.body).map_err(|_| {
        MintError::malformed(
            "the Anthropic token endpoint answered 200 with a body that is not JSON",
        )
    })?;
    let secret = success
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            MintError::malformed("the Anthropic token endpoint answered without an access_token")
        })?;
    if let Some(kind) = success
        .token_type
        .filter(|t| !t.eq_ignore_ascii_case("bearer"))
    {
        return Err(MintError::malformed(format!(
            "the Anthropic token endpoint issued a '{}' token; only Bearer tokens are supported",
            printable(&kind)
        )));
    }
    let ttl = success.expires_in.map(Duration::from_secs).ok_or_else(|| {
        MintError::malformed("the Anthropic token endpoint answered without expires_in")
    })?;
    Ok(Minted {
        secret: Secret::new(secret),
        aws: None,
        sent,
        ttl,
        refresh_in: None,
    })
}

/// The [`MintError`] of an error answer: RFC 6749 `error`, or the API's error envelope.
fn classify(response: &Response) -> MintError {
    #[derive(Deserialize, Default)]
    struct ErrorBody {
        error: Option<serde_json::Value>,
        error_description: Option<String>,
    }
    let status = response.status;
    let body: ErrorBody = serde_json::from_slice(&response.body).unwrap_or_default();
    // `"error": "invalid_grant"` (RFC 6749) or `"error": {"type": .., "message": ..}`.
    let (code, description) = match &body.error {
        Some(serde_json::Value::String(code)) => {
            (Some(code.clone()), body.error_description.clone())
        }
        Some(serde_json::Value::Object(envelope)) => (
            envelope
                .get("type")
                .and_then(|t| t.as_str())
                .map(str::to_owned),
            envelope
                .get("message")
                .and_then(|m| m.as_str())
                .map(str::to_owned),
        ),
        _ => (None, None),
    };
    tracing::warn!(
        %status,
        error = code.as_deref().unwrap_or("-"),
        description = description.as_deref().unwrap_or("-"),
        "the Anthropic token endpoint refused the exchange"
    );
    let mut message = format!("the Anthropic token endpoint answered {status}");
    if let Some(code) = code.as_deref() {
        message.push_str(&format!(" {}", printable(code)));
        let hint = match code {
            "invalid_grant" | "authentication_error" => Some(
                "the identity token was refused: check that the federation rule's issuer, \
                 audience (https://api.anthropic.com by default) and subject match the job",
            ),
            "invalid_request" | "invalid_request_error" => Some(
                "a field is missing or invalid: check federation_rule_id, organization_id, \
                 service_account_id and workspace_id",
            ),
            "unauthorized_client" | "permission_error" => Some(
                "the rule does not allow this service account or workspace: check \
                 service_account_id and workspace_id",
            ),
            _ => None,
        };
        if let Some(hint) = hint {
            message.push_str(&format!(": {hint}"));
        }
    }
    refusal(response, message, None)
}

#[cfg(test)]
mod tests {
    use hyper::StatusCode;
    use hyper::header::HeaderMap;

    use crate::token::error::Retry;

    use super::*;

    fn response(status: u16, body: &str) -> Response {
        Response {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: body.as_bytes().to_vec().into(),
        }
    }

    #[test]
    fn the_oauth_beta_joins_the_clients_betas_once() {
        let mut headers = HeaderMap::new();
        add_oauth_beta(&mut headers);
        assert_eq!(headers["anthropic-beta"], "oauth-2025-04-20");
        let mut headers = HeaderMap::new();
        headers.append(
            "anthropic-beta",
            "prompt-caching-2024-07-31, x".parse().unwrap(),
        );
        headers.append("anthropic-beta", "oauth-2025-04-20".parse().unwrap());
        add_oauth_beta(&mut headers);
        assert_eq!(
            headers.get_all("anthropic-beta").iter().collect::<Vec<_>>(),
            ["prompt-caching-2024-07-31,x,oauth-2025-04-20"]
        );
    }

    #[test]
    fn a_token_response_becomes_a_bearer_token() {
        let minted = parse(
            &response(
                200,
                r#"{"access_token":"sk-ant-oat01-abc","token_type":"Bearer","expires_in":3600,"scope":"workspace:developer"}"#,
            ),
            Instant::now(),
        )
        .unwrap();
        assert_eq!(minted.secret.expose(), "sk-ant-oat01-abc");
        assert_eq!(minted.ttl, Duration::from_secs(3600));
    }

    #[test]
    fn malformed_answers_are_refused() {
        for body in [
            "not json",
            r#"{"token_type":"Bearer","expires_in":60}"#,
            r#"{"access_token":"x","token_type":"mac","expires_in":60}"#,
            r#"{"access_token":"x","token_type":"Bearer"}"#,
        ] {
            assert!(
                parse(&response(200, body), Instant::now()).is_err(),
                "{body}"
            );
        }
    }

    #[test]
    fn errors_fail_fast_or_back_off_by_status_with_a_hint() {
        let e = classify(&response(
            400,
            r#"{"error":"invalid_grant","error_description":"sub repo:evil/x does not match"}"#,
        ));
        assert!(matches!(e.retry, Retry::Never), "{e:?}");
        assert!(
            e.message
                .contains("400 Bad Request invalid_grant: the identity token")
        );
        assert!(
            !e.message.contains("repo:evil"),
            "descriptions stay in the log"
        );

        let e = classify(&response(
            403,
            r#"{"type":"error","error":{"type":"permission_error","message":"no"}}"#,
        ));
        assert!(
            e.message
                .contains("permission_error: the rule does not allow"),
            "{e:?}"
        );

        let e = classify(&response(503, "upstream down"));
        assert!(matches!(e.retry, Retry::Backoff(_)), "{e:?}");
        let e = classify(&response(429, r#"{"error":"rate_limited"}"#));
        assert!(matches!(e.retry, Retry::Backoff(_)), "{e:?}");
    }
}
