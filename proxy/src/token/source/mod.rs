//! Token sources: one module per `source` of a `[[credential]]` table.
//!
//! A source knows one wire protocol and nothing about caching: [`Source::mint`] sends one
//! request (two for a client assertion that had expired) and returns the token with its
//! lifetime, measured from when the request was sent. Retry, backoff and single flight are
//! the broker's (`token/mod.rs`, `token/cache.rs`).
//!
//! * `github_oidc.rs`: GitHub Actions OIDC (`reference/tokens.md` §1);
//! * `entra.rs`: Entra client credentials with a client assertion (§2), also each hop of
//!   Agent ID;
//! * `entra_agent.rs`: how an `entra-agent` credential becomes two chained Entra hops (§3);
//! * `static_secret.rs`: a secret from the daemon's environment or a root-only file;
//! * `token_exchange.rs`: RFC 8693 token exchange at Google STS, optionally followed by IAM
//!   Credentials `generateAccessToken` (§6.2, §6.3);
//! * `copilot.rs`: GitHub Copilot, the GitHub token itself or the `/copilot_internal/v2/token`
//!   exchange, with the fallback between them (§4);
//! * `aws_web_identity.rs`: AWS STS `AssumeRoleWithWebIdentity`, temporary keys (§6.1);
//! * `per_actor.rs`: the triggering user's own secret, chosen by the verified `actor_id`.

pub(crate) mod anthropic_wif;
pub(crate) mod aws_web_identity;
pub(crate) mod copilot;
pub(crate) mod entra;
pub(crate) mod entra_agent;
pub(crate) mod github_oidc;
pub(crate) mod per_actor;
pub(crate) mod static_secret;
pub(crate) mod token_exchange;

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::time::Instant;

use self::aws_web_identity::AwsCredentials;
use super::Inner;
use super::error::MintError;
use super::secret::Secret;

/// Where one cache slot's tokens come from.
pub(crate) enum Source {
    /// Anthropic workload identity federation.
    AnthropicWif(anthropic_wif::AnthropicWif),
    /// AWS STS `AssumeRoleWithWebIdentity`.
    AwsWebIdentity(aws_web_identity::AwsWebIdentity),
    /// GitHub Copilot over a GitHub token.
    Copilot(copilot::Copilot),
    /// An Entra token endpoint.
    Entra(entra::Entra),
    /// The GitHub Actions OIDC endpoint.
    GithubOidc(github_oidc::GithubOidc),
    /// The run's user's own credential (another slot), or why they get none (a 403).
    PerActor(Result<Arc<super::Slot>, super::TokenError>),
    /// A secret that never changes while the daemon runs.
    Static(static_secret::Static),
    /// An RFC 8693 token exchange (Google STS), maybe with impersonation.
    TokenExchange(token_exchange::TokenExchange),
    /// Test-only: tokens from a script, for broker tests under paused time.
    #[cfg(test)]
    Scripted(Arc<super::tests::scripted::Script>),
}

/// A freshly minted token.
#[derive(Debug)]
pub(crate) struct Minted {
    /// The bearer token; empty for AWS keys, which are in `aws`.
    pub(crate) secret: Secret,
    /// AWS temporary keys (`aws-web-identity`), which sign requests instead of bearing.
    pub(crate) aws: Option<AwsCredentials>,
    /// When the request that produced it was sent.
    pub(crate) sent: Instant,
    /// Its lifetime from `sent` (`expires_in`).
    pub(crate) ttl: Duration,
    /// The server's advice to refresh after this long (`refresh_in`), if any.
    pub(crate) refresh_in: Option<Duration>,
}

impl Source {
    /// The `source` keyword reported with each token (`Token::source`).
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Source::AnthropicWif(_) => anthropic_wif::LABEL,
            Source::AwsWebIdentity(_) => aws_web_identity::LABEL,
            Source::Copilot(c) => c.label(),
            Source::Entra(e) => e.label(),
            Source::GithubOidc(_) => "github-oidc",
            Source::PerActor(_) => "per-actor",
            Source::Static(s) => s.label(),
            Source::TokenExchange(_) => token_exchange::LABEL,
            #[cfg(test)]
            Source::Scripted(_) => "scripted",
        }
    }

    /// The scheme this source chose for `secret`, for formats that say `{scheme}`; `None`
    /// leaves it to the request's host.
    pub(crate) fn scheme_for(
        &self,
        secret: &Secret,
    ) -> Option<egressd_config::intercept::AuthScheme> {
        match self {
            Source::Copilot(c) => c.scheme_for(secret),
            _ => None,
        }
    }

    /// Mints one token.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe in the sense that a dropped call abandons its request; the broker only
    /// calls it from a spawned task, never from a caller's future.
    pub(crate) async fn mint(&self, broker: &Arc<Inner>) -> Result<Minted, MintError> {
        match self {
            Source::AnthropicWif(a) => a.mint(broker).await,
            Source::AwsWebIdentity(a) => a.mint(broker).await,
            Source::Copilot(c) => c.mint(broker).await,
            Source::Entra(e) => e.mint(broker).await,
            Source::GithubOidc(g) => g.mint(&broker.http).await,
            Source::PerActor(_) => unreachable!("the broker serves the selected slot instead"),
            Source::Static(_) => unreachable!("the broker serves static secrets without minting"),
            Source::TokenExchange(t) => t.mint(broker).await,
            #[cfg(test)]
            Source::Scripted(script) => script.mint().await,
        }
    }
}

/// The lifetime of a token asked to live `relative` (STS `DurationSeconds`, Google `lifetime`)
/// whose answer gives an absolute `expires_at` (`reference/tokens.md` §7.2).
///
/// The absolute time is only an upper bound. It is compared with the answer's HTTP `Date`
/// (`server_date`, the same clock, so skew does not matter) when there is one; otherwise with
/// this host's clock at sending (`local_now`), and when that disagrees by more than a minute the
/// clocks are skewed: the relative lifetime is trusted and the skew logged.
pub(crate) fn bounded_ttl(
    relative: Duration,
    expires_at: Option<OffsetDateTime>,
    server_date: Option<OffsetDateTime>,
    local_now: OffsetDateTime,
) -> Duration {
    let Some(expires_at) = expires_at else {
        return relative;
    };
    let left = |from: OffsetDateTime| Duration::try_from(expires_at - from).unwrap_or_default();
    if let Some(date) = server_date {
        return relative.min(left(date));
    }
    let local = left(local_now);
    if local + Duration::from_mins(1) < relative {
        tracing::warn!(
            expires_in_by_local_clock = local.as_secs(),
            requested = relative.as_secs(),
            "the token's expiry disagrees with this host's clock by over a minute (clock skew?): \
             using the requested lifetime"
        );
        return relative;
    }
    relative.min(local)
}

/// A short fingerprint of another slot's cache key, for keys that depend on which credential
/// is presented (cache keys hold no secret, but need not be repeated whole).
pub(crate) fn fingerprint(key: &str) -> String {
    super::hash_secret(&Secret::new(key))
}

/// The HTTP `Date` header of a response (`Sun, 06 Nov 1994 08:49:37 GMT`), if valid.
pub(crate) fn http_date(headers: &hyper::HeaderMap) -> Option<OffsetDateTime> {
    let text = headers.get(hyper::header::DATE)?.to_str().ok()?;
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc2822).ok()
}

/// The error for a token endpoint's refusal (`response`, said in `message`): `by_code` when
/// the endpoint's own error code decides (re-mint with a fresh assertion, back off), else by
/// status: `429` and `5xx` back off as the server asks, anything else is final.
pub(super) fn refusal(
    response: &super::http::Response,
    message: String,
    by_code: Option<super::error::Retry>,
) -> MintError {
    use super::error::Retry;
    let status = response.status;
    let retry = by_code.unwrap_or_else(|| {
        if status == hyper::StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            Retry::Backoff(response.retry_after())
        } else {
            Retry::Never
        }
    });
    let mut error = if retry == Retry::Never {
        MintError::rejected(message)
    } else {
        MintError::unavailable(message)
    };
    error.retry = retry;
    error
}

/// An error code as shown: alphanumerics and `_` only, at most 64 characters.
pub(super) fn printable(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(64)
        .collect()
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn absolute_expiry_is_an_upper_bound_measured_by_the_servers_clock() {
        let hour = Duration::from_hours(1);
        let exp = Some(datetime!(2026-01-01 01:00:00 UTC));
        let date = Some(datetime!(2026-01-01 00:59:55 UTC));
        // The server's Date says 5 s are left, whatever this host's clock says.
        let skewed = datetime!(2025-12-31 12:00:00 UTC);
        assert_eq!(bounded_ttl(hour, exp, date, skewed), Duration::from_secs(5));
        // Without Date: this host's clock, if it agrees within a minute.
        let now = datetime!(2026-01-01 00:00:30 UTC);
        assert_eq!(bounded_ttl(hour, exp, None, now), Duration::from_secs(3570));
        // A clock 10 minutes fast: skew, the requested lifetime wins.
        let fast = datetime!(2026-01-01 00:10:00 UTC);
        assert_eq!(bounded_ttl(hour, exp, None, fast), hour);
        // Already past by the server's clock, or no absolute time at all.
        let late = Some(datetime!(2026-01-01 02:00:00 UTC));
        assert_eq!(bounded_ttl(hour, exp, late, now), Duration::ZERO);
        assert_eq!(bounded_ttl(hour, None, date, now), hour);
    }

    #[test]
    fn http_dates_parse() {
        let mut headers = hyper::HeaderMap::new();
        headers.insert("date", "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap());
        assert_eq!(
            http_date(&headers),
            Some(datetime!(1994-11-06 08:49:37 UTC))
        );
        headers.insert("date", "yesterday".parse().unwrap());
        assert_eq!(http_date(&headers), None);
    }
}
