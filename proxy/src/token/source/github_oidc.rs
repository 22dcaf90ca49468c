//! GitHub Actions OIDC tokens (`reference/tokens.md` §1).
//!
//! `GET {ACTIONS_ID_TOKEN_REQUEST_URL}&audience=<urlencoded>` with
//! `Authorization: Bearer {ACTIONS_ID_TOKEN_REQUEST_TOKEN}` answers `{"count":..,"value":"<JWT>"}`.
//! The request URL is opaque and already has a query (`?api-version=2.0`); it is parsed with
//! [`url::Url`] and any `audience` in it is replaced, so the JWT carries exactly one.
//!
//! The JWT lives 5 minutes (`exp − iat`, read from its payload without verifying it: the
//! signature is for the relying party). When it is a client assertion the broker mints a fresh
//! one for every exchange; cached on its own it is refreshed at half its life.
//!
//! The daemon hands the two variables in as a [`GithubOidcEnv`]; this crate never reads the
//! environment.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hyper::StatusCode;
use serde::Deserialize;
use tokio::time::Instant;
use url::Url;

use super::Minted;
use crate::token::error::{MintError, Retry};
use crate::token::http::TokenHttp;
use crate::token::secret::Secret;

/// The lifetime assumed when the JWT's payload does not say (GitHub's is 300 s).
const DEFAULT_TTL: Duration = Duration::from_mins(5);

/// The two variables of a GitHub Actions step with `permissions: id-token: write`, read by
/// the daemon from its own environment.
#[derive(Debug, Clone)]
pub struct GithubOidcEnv {
    /// `ACTIONS_ID_TOKEN_REQUEST_URL`, as given (it already carries a query).
    pub request_url: String,
    /// `ACTIONS_ID_TOKEN_REQUEST_TOKEN`.
    pub request_token: Secret,
}

/// One `github-oidc` source: the endpoint and the audience.
pub(crate) struct GithubOidc {
    url: Url,
    request_token: Secret,
}

impl GithubOidc {
    /// The source for `audience` (none: GitHub's default, the owner's URL).
    ///
    /// # Errors
    ///
    /// The request URL is not an `https://` URL (plain `http://` only on loopback).
    pub(crate) fn new(env: &GithubOidcEnv, audience: Option<&str>) -> Result<Self, String> {
        Ok(Self {
            url: request_url(&env.request_url, audience)?,
            request_token: env.request_token.clone(),
        })
    }

    /// The cache key (`reference/tokens.md` §7.3): host and path of the request URL, the
    /// audience, and a hash of the request token (several jobs may share a daemon).
    pub(crate) fn cache_key(&self) -> String {
        let audience: String = self
            .url
            .query_pairs()
            .filter(|(k, _)| k == "audience")
            .map(|(_, v)| v.into_owned())
            .collect();
        format!(
            "github-oidc|{}{}|{audience}|{}",
            self.url.host_str().unwrap_or_default(),
            self.url.path(),
            super::super::hash_secret(&self.request_token)
        )
    }

    /// Mints one JWT.
    pub(crate) async fn mint(&self, http: &TokenHttp) -> Result<Minted, MintError> {
        let sent = Instant::now();
        let response = http
            .get_bearer(&self.url, self.request_token.expose())
            .await?;
        let status = response.status;
        if !status.is_success() {
            let message = format!("the GitHub OIDC endpoint answered {status}");
            return Err(match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => MintError::rejected(format!(
                    "{message}: the request token was refused (does the job still run, with \
                     `permissions: id-token: write`?)"
                )),
                StatusCode::TOO_MANY_REQUESTS => MintError {
                    retry: Retry::Backoff(response.retry_after()),
                    ..MintError::unavailable(message)
                },
                s if s.is_server_error() => MintError::unavailable(message),
                _ => MintError::rejected(message),
            });
        }
        #[derive(Deserialize)]
        struct IdToken {
            value: Option<String>,
        }
        let value = serde_json::from_slice::<IdToken>(&response.body)
            .ok()
            .and_then(|t| t.value)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                MintError::malformed("the GitHub OIDC endpoint answered without a `value`")
            })?;
        Ok(Minted {
            ttl: jwt_lifetime(&value).unwrap_or(DEFAULT_TTL),
            secret: Secret::new(value),
            sent,
            aws: None,
            refresh_in: None,
        })
    }
}

/// The request URL with `audience` set (replacing any there).
fn request_url(base: &str, audience: Option<&str>) -> Result<Url, String> {
    let mut url = Url::parse(base).map_err(|e| format!("the OIDC request URL is invalid ({e})"))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    if !(url.scheme() == "https" || url.scheme() == "http" && loopback) {
        return Err("the OIDC request URL is not an https:// URL".to_owned());
    }
    if let Some(audience) = audience {
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| k != "audience")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        url.query_pairs_mut()
            .clear()
            .extend_pairs(kept)
            .append_pair("audience", audience);
    }
    Ok(url)
}

/// `exp − iat` of a JWT, read from its payload without verifying it.
fn jwt_lifetime(jwt: &str) -> Option<Duration> {
    #[derive(Deserialize)]
    struct Times {
        exp: u64,
        iat: u64,
    }
    let payload = jwt.split('.').nth(1)?;
    let times: Times = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    Some(Duration::from_secs(times.exp.checked_sub(times.iat)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audience_is_appended_once_and_encoded() {
        let base = "https://pipelines.example/abc/_apis/idtoken?api-version=2.0";
        let url = request_url(base, Some("api://AzureADTokenExchange")).unwrap();
        assert_eq!(
            url.as_str(),
            "https://pipelines.example/abc/_apis/idtoken?api-version=2.0&audience=api%3A%2F%2FAzureADTokenExchange"
        );
        let again = request_url(url.as_str(), Some("sts.amazonaws.com")).unwrap();
        assert_eq!(
            again.query(),
            Some("api-version=2.0&audience=sts.amazonaws.com")
        );
        assert_eq!(request_url(base, None).unwrap().as_str(), base);
        assert!(request_url("http://pipelines.example/x?a=1", None).is_err());
        assert!(request_url("not a url", None).is_err());
    }

    #[test]
    fn lifetime_comes_from_the_payload() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"iat":1000,"exp":1300,"sub":"x"}"#);
        assert_eq!(
            jwt_lifetime(&format!("h.{payload}.s")),
            Some(Duration::from_secs(300))
        );
        assert_eq!(jwt_lifetime("opaque"), None);
        let backwards = URL_SAFE_NO_PAD.encode(br#"{"iat":1300,"exp":1000}"#);
        assert_eq!(jwt_lifetime(&format!("h.{backwards}.s")), None);
    }
}
