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
//! * `static_secret.rs`: a secret from the daemon's environment or a root-only file.

pub(crate) mod entra;
pub(crate) mod entra_agent;
pub(crate) mod github_oidc;
pub(crate) mod static_secret;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Inner;
use super::error::MintError;
use super::secret::Secret;

/// Where one cache slot's tokens come from.
pub(crate) enum Source {
    /// An Entra token endpoint.
    Entra(entra::Entra),
    /// The GitHub Actions OIDC endpoint.
    GithubOidc(github_oidc::GithubOidc),
    /// A secret that never changes while the daemon runs.
    Static(static_secret::Static),
    /// Test-only: tokens from a script, for broker tests under paused time.
    #[cfg(test)]
    Scripted(Arc<super::tests::scripted::Script>),
}

/// A freshly minted token.
#[derive(Debug)]
pub(crate) struct Minted {
    pub(crate) secret: Secret,
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
            Source::Entra(e) => e.label(),
            Source::GithubOidc(_) => "github-oidc",
            Source::Static(s) => s.label(),
            #[cfg(test)]
            Source::Scripted(_) => "scripted",
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
            Source::Entra(e) => e.mint(broker).await,
            Source::GithubOidc(g) => g.mint(&broker.http).await,
            Source::Static(_) => unreachable!("the broker serves static secrets without minting"),
            #[cfg(test)]
            Source::Scripted(script) => script.mint().await,
        }
    }
}
