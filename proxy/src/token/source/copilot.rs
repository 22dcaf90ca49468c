//! GitHub Copilot credentials (`reference/tokens.md` §4): the GitHub token itself, or the
//! Copilot token of the `/copilot_internal/v2/token` exchange.
//!
//! The GitHub token is another credential's (`github_token`, usually `env` or `file`). Modes:
//!
//! * `direct`: the GitHub token is the token; the broker serves it without minting
//!   ([`Copilot::direct`]), with the underlying credential's lifetime.
//! * `exchange`: `GET {api_url}/copilot_internal/v2/token` at the deployment's REST API (the
//!   host of `GITHUB_API_URL`, path-style `/api/v3` on GHES), with
//!   `Authorization: token <GitHub token>`, `X-GitHub-Api-Version: 2025-04-01` and
//!   `Accept: application/json`. The answer's `token` is the Copilot token; its lifetime is
//!   `refresh_in + 60 s` as VS Code counts it (clocks drift), bounded by `expires_at` against
//!   the answer's `Date`, and the broker refreshes it after `refresh_in`. `endpoints.api` is
//!   where inference goes: kept ([`Copilot::api_endpoint`]) when it is `https://`, ignored
//!   with a warning otherwise.
//! * `auto`: `exchange`, until the exchange answers 403 or 404 (data-residency tenants, PATs,
//!   GHES, which hosts no Copilot): then `direct` for the rest of the run, logged once with the
//!   status and GitHub's message. A 403 that is rate limiting ("API rate limit exceeded") is
//!   retried instead.
//!
//! Schemes ([`AuthScheme`]): an exchanged token is `Bearer`; a GitHub token's own type decides
//! where it can (`github_pat_`, `ghs_`: `Bearer`), and otherwise (`gho_`, `ghu_`) the rule's
//! host does, at injection. The credential's `scheme` overrides both.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use egressd_config::copilot::{CopilotMode, CopilotSource};
use egressd_config::intercept::AuthScheme;
use hyper::StatusCode;
use serde::Deserialize;
use time::OffsetDateTime;
use tokio::time::Instant;
use url::Url;

use super::{Minted, bounded_ttl, fingerprint, http_date};
use crate::token::error::{MintError, Retry, TokenError};
use crate::token::http::Response;
use crate::token::secret::Secret;
use crate::token::{Inner, Slot, Token};

/// The `source` label of exchanged Copilot tokens.
pub(crate) const LABEL: &str = "copilot";
/// The `source` label when the GitHub token itself is sent (`direct`, or `auto` after the
/// exchange was refused).
pub(crate) const LABEL_DIRECT: &str = "copilot-direct";
/// `X-GitHub-Api-Version` of the exchange (tokens.md §4.1).
const API_VERSION: &str = "2025-04-01";
/// How long a fallen-back GitHub token is cached by the mint that discovered the refusal;
/// later requests take the direct path and do not use that entry.
const FALLBACK_TTL: Duration = Duration::from_hours(1);

/// One `copilot` source.
pub(crate) struct Copilot {
    github: Arc<Slot>,
    mode: CopilotMode,
    scheme: Option<AuthScheme>,
    /// `{api_url}/copilot_internal/v2/token`; `None` in direct mode.
    exchange_url: Option<Url>,
    /// `auto` only: set when the exchange was refused; from then on the token is direct.
    fell_back: AtomicBool,
    /// How many times the fallback was logged (once), for tests.
    fallback_logs: AtomicU32,
    /// The latest `endpoints.api`.
    api_endpoint: Mutex<Option<String>>,
}

impl Copilot {
    /// The source for `config`, presenting `github`'s token.
    ///
    /// # Errors
    ///
    /// No API URL for an exchange, or one that does not parse.
    pub(crate) fn new(config: &CopilotSource, github: Arc<Slot>) -> Result<Self, String> {
        let exchange_url = match (config.mode, &config.api_url) {
            (CopilotMode::Direct, _) => None,
            (_, None) => {
                return Err("the Copilot token exchange needs the GitHub API URL: set \
                            GITHUB_API_URL for egressd or `api_url` in the credential"
                    .to_owned());
            }
            (_, Some(api)) => {
                let url = format!("{}/copilot_internal/v2/token", api.trim_end_matches('/'));
                Some(Url::parse(&url).map_err(|e| format!("invalid API URL {api} ({e})"))?)
            }
        };
        Ok(Self {
            github,
            mode: config.mode,
            scheme: config.scheme,
            exchange_url,
            fell_back: AtomicBool::new(false),
            fallback_logs: AtomicU32::new(0),
            api_endpoint: Mutex::new(None),
        })
    }

    /// The cache key: the exchange endpoint, the mode and the GitHub token's own key.
    pub(crate) fn cache_key(&self) -> String {
        let endpoint = self.exchange_url.as_ref().map_or_else(String::new, |u| {
            format!("{}{}", u.host_str().unwrap_or_default(), u.path())
        });
        format!(
            "copilot|{endpoint}|{:?}|{:?}|{}",
            self.mode,
            self.scheme,
            fingerprint(&self.github.key)
        )
    }

    /// Returns true if and only if the GitHub token itself is served (`direct`, or `auto`
    /// after the exchange was refused).
    pub(crate) fn is_direct(&self) -> bool {
        self.mode == CopilotMode::Direct || self.fell_back.load(Ordering::Acquire)
    }

    /// `copilot` or `copilot-direct`.
    pub(crate) fn label(&self) -> &'static str {
        if self.is_direct() {
            LABEL_DIRECT
        } else {
            LABEL
        }
    }

    /// The scheme for `secret`: the override; `Bearer` for an exchanged token; for a GitHub
    /// token, what its type says, or `None` (the host decides).
    pub(crate) fn scheme_for(&self, secret: &Secret) -> Option<AuthScheme> {
        if self.scheme.is_some() {
            return self.scheme;
        }
        if self.is_direct() {
            AuthScheme::for_github_token(secret.expose())
        } else {
            Some(AuthScheme::Bearer)
        }
    }

    /// The `endpoints.api` of the latest exchange, if it was `https://`.
    #[cfg(test)]
    pub(crate) fn api_endpoint(&self) -> Option<String> {
        self.api_endpoint
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many times the fallback to the GitHub token was logged.
    #[cfg(test)]
    pub(crate) fn fallback_logs(&self) -> u32 {
        self.fallback_logs.load(Ordering::Acquire)
    }

    /// The GitHub token as the token (direct mode), with its credential's lifetime.
    pub(crate) async fn direct(&self, broker: &Arc<Inner>) -> Result<Token, TokenError> {
        // Boxed: the broker's `get` calls this, and this calls `get` for the GitHub token.
        let github = Box::pin(broker.get(&self.github)).await?;
        Ok(Token {
            scheme: self.scheme_for(&github.secret),
            secret: github.secret,
            aws: None,
            expires_in: github.expires_in,
            source: LABEL_DIRECT,
        })
    }

    /// One exchange; in `auto` mode a 403/404 answer switches to direct and yields the
    /// GitHub token.
    pub(crate) async fn mint(&self, broker: &Arc<Inner>) -> Result<Minted, MintError> {
        let github = broker
            .assertion(&self.github, false)
            .await
            .map_err(|e| e.into_mint().context("getting the GitHub token"))?;
        let Some(url) = &self.exchange_url else {
            // Direct mode never mints (the broker serves it directly); be safe anyway.
            return Ok(fallback(github));
        };
        let (sent, wall) = (Instant::now(), OffsetDateTime::now_utc());
        let authorization = format!("token {}", github.expose());
        let response = broker
            .http
            .get_with_headers(
                url,
                &[
                    ("authorization", authorization.as_str()),
                    ("x-github-api-version", API_VERSION),
                    ("accept", "application/json"),
                ],
            )
            .await?;
        if response.status.is_success() {
            return self.parse(&response, sent, wall);
        }
        let refusal = refusal(&response);
        let refused = matches!(
            response.status,
            StatusCode::FORBIDDEN | StatusCode::NOT_FOUND
        ) && !refusal.rate_limited;
        if self.mode == CopilotMode::Auto && refused {
            if !self.fell_back.swap(true, Ordering::AcqRel) {
                self.fallback_logs.fetch_add(1, Ordering::AcqRel);
                tracing::warn!(
                    endpoint = %endpoint(url),
                    status = response.status.as_u16(),
                    reason = refusal.describe(),
                    "the Copilot token exchange was refused (as on GHE.com data-residency \
                     tenants and for PATs): sending the GitHub token to the Copilot API \
                     directly from now on"
                );
            }
            return Ok(fallback(github));
        }
        Err(classify(&response, &refusal))
    }

    fn parse(
        &self,
        response: &Response,
        sent: Instant,
        wall: OffsetDateTime,
    ) -> Result<Minted, MintError> {
        #[derive(Deserialize)]
        struct Envelope {
            token: Option<String>,
            expires_at: Option<i64>,
            refresh_in: Option<u64>,
            endpoints: Option<Endpoints>,
        }
        #[derive(Deserialize)]
        struct Endpoints {
            api: Option<String>,
        }
        let envelope: Envelope = serde_json::from_slice(&response.body).map_err(|_| {
            MintError::malformed(
                "the Copilot token exchange answered 200 with a body that is not JSON",
            )
        })?;
        let missing = |field: &str| {
            MintError::malformed(format!(
                "the Copilot token exchange answered without `{field}`"
            ))
        };
        let token = envelope
            .token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| missing("token"))?;
        let expires_at = envelope.expires_at.ok_or_else(|| missing("expires_at"))?;
        let refresh_in = envelope.refresh_in.ok_or_else(|| missing("refresh_in"))?;
        let expires_at = OffsetDateTime::from_unix_timestamp(expires_at).ok();
        let ttl = bounded_ttl(
            Duration::from_secs(refresh_in.saturating_add(60)),
            expires_at,
            http_date(&response.headers),
            wall,
        );
        let api = envelope.endpoints.and_then(|e| e.api);
        match api {
            Some(api) if api.starts_with("https://") => {
                tracing::debug!(endpoint = api, "Copilot API endpoint");
                *self
                    .api_endpoint
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(api);
            }
            Some(api) => tracing::warn!(
                endpoint = api,
                "ignoring the exchange's endpoints.api: it is not https://"
            ),
            None => {}
        }
        Ok(Minted {
            secret: Secret::new(token),
            aws: None,
            sent,
            ttl,
            refresh_in: Some(Duration::from_secs(refresh_in)),
        })
    }
}

/// The GitHub token as a minted token (the mint that discovered the refusal).
fn fallback(github: Secret) -> Minted {
    Minted {
        secret: github,
        aws: None,
        sent: Instant::now(),
        ttl: FALLBACK_TTL,
        refresh_in: None,
    }
}

/// What an error answer says (tokens.md §4.1 error shapes).
struct Refusal {
    message: Option<String>,
    notification_id: Option<String>,
    rate_limited: bool,
}

impl Refusal {
    fn describe(&self) -> String {
        match (&self.message, &self.notification_id) {
            (Some(m), Some(n)) => format!("{m} ({n})"),
            (Some(m), None) => m.clone(),
            (None, Some(n)) => n.clone(),
            (None, None) => "no message".to_owned(),
        }
    }
}

fn refusal(response: &Response) -> Refusal {
    #[derive(Deserialize)]
    struct Body {
        message: Option<String>,
        error_details: Option<Details>,
    }
    #[derive(Deserialize)]
    struct Details {
        notification_id: Option<String>,
    }
    let body: Option<Body> = serde_json::from_slice(&response.body).ok();
    let message = body
        .as_ref()
        .and_then(|b| b.message.clone())
        .map(|m| m.chars().take(200).collect::<String>());
    let notification_id = body
        .and_then(|b| b.error_details)
        .and_then(|d| d.notification_id);
    let rate_limited = message
        .as_deref()
        .is_some_and(|m| m.starts_with("API rate limit exceeded"));
    Refusal {
        message,
        notification_id,
        rate_limited,
    }
}

/// The retry class of an error answer.
fn classify(response: &Response, refusal: &Refusal) -> MintError {
    let status = response.status;
    let what = format!(
        "the Copilot token exchange answered {}: {}",
        status.as_u16(),
        refusal.describe()
    );
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS || refusal.rate_limited {
        let mut e = MintError::unavailable(what);
        e.retry = Retry::Backoff(response.retry_after());
        return e;
    }
    let hint = match status {
        StatusCode::UNAUTHORIZED => "; the GitHub token is invalid or expired",
        StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => {
            "; this GitHub token or deployment cannot use the exchange: use mode = \"auto\" or \
             \"direct\""
        }
        _ => "",
    };
    MintError::rejected(format!("{what}{hint}"))
}

/// `scheme://host[:port]` of `url`, for the log.
fn endpoint(url: &Url) -> String {
    url[..url::Position::BeforePath].to_owned()
}
