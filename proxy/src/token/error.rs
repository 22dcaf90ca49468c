//! Token errors: [`TokenError`] for a failed [`Broker::get`](super::Broker::get),
//! [`BrokerError`] for a broker that cannot be built, and the sources' internal `MintError`
//! with its retry class (`reference/tokens.md` §7.2).
//!
//! Messages are lowercase, without a trailing period, and safe to show the sandboxed agent:
//! they name the credential, the token endpoint's status and error code, never a token, a
//! request token or a key.

use std::path::PathBuf;
use std::time::Duration;

/// A credential could not be had. The interception code turns it into a 503 JSON body
/// (`{"error": message, "credential": credential, "retryable": retryable, ...}`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("credential '{credential}': {message}")]
#[non_exhaustive]
pub struct TokenError {
    /// The credential that was asked for.
    pub credential: String,
    /// The failure class.
    pub kind: TokenErrorKind,
    /// Returns true if and only if trying again later may succeed (the token endpoint was
    /// unreachable, overloaded or not yet consistent); false for configuration problems.
    pub retryable: bool,
    /// What happened, safe to show the agent.
    pub message: String,
}

/// What kind of failure a [`TokenError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenErrorKind {
    /// The credential is withheld from this run: a `per-actor` credential found no entry for
    /// the verified triggering user, or the run has no verified provenance. Not retryable; the
    /// interception answers `403`.
    Forbidden,
    /// The token endpoint answered with something that is not the documented shape.
    Malformed,
    /// The token endpoint refused the request (wrong client ID, scope, federated credential
    /// subject or issuer, request token): the configuration needs fixing.
    Rejected,
    /// The token endpoint could not be reached, timed out, or answered 5xx/429 or a transient
    /// error code; the broker backs off and tries again.
    Unavailable,
    /// No credential of that name is configured.
    UnknownCredential,
}

/// A [`Broker`](super::Broker) could not be built from the configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// A credential cannot work as configured; `why` says how to fix it.
    #[error("credential '{name}': {why}")]
    Credential {
        /// The credential's name.
        name: String,
        /// What is wrong and how to fix it.
        why: String,
    },
    /// The extra CA bundle for token endpoints is unusable.
    #[error("upstream CA bundle {}: {why}", path.display())]
    UpstreamCa {
        /// The file (empty when the PEM was given in memory).
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The resolver for `--dns-server` could not be built.
    #[error("DNS for token endpoints: {0}")]
    Dns(String),
}

/// A source's failure to mint, before the broker names the credential.
#[derive(Debug, Clone)]
pub(crate) struct MintError {
    pub(crate) kind: TokenErrorKind,
    pub(crate) retry: Retry,
    pub(crate) message: String,
}

/// What the broker does after a [`MintError`] (`reference/tokens.md` §7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Retry with backoff, no sooner than the server's `Retry-After` when it gave one.
    Backoff(Option<Duration>),
    /// Do not retry soon: the configuration is wrong.
    Never,
    /// The client assertion had expired: mint a fresh one and retry once.
    Remint,
}

impl MintError {
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self {
            kind: TokenErrorKind::Unavailable,
            retry: Retry::Backoff(None),
            message: message.into(),
        }
    }

    pub(crate) fn rejected(message: impl Into<String>) -> Self {
        Self {
            kind: TokenErrorKind::Rejected,
            retry: Retry::Never,
            message: message.into(),
        }
    }

    pub(crate) fn malformed(message: impl Into<String>) -> Self {
        Self {
            kind: TokenErrorKind::Malformed,
            retry: Retry::Backoff(None),
            message: message.into(),
        }
    }

    /// Prefixes the message with what was being done (`minting assertion 'gh': ...`).
    pub(crate) fn context(mut self, what: &str) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }

    pub(crate) fn for_credential(self, credential: &str) -> TokenError {
        TokenError {
            credential: credential.to_owned(),
            kind: self.kind,
            retryable: self.retry != Retry::Never,
            message: self.message,
        }
    }
}

impl TokenError {
    pub(crate) fn unknown(credential: &str) -> Self {
        TokenError {
            credential: credential.to_owned(),
            kind: TokenErrorKind::UnknownCredential,
            retryable: false,
            message: "no credential of that name is configured".to_owned(),
        }
    }

    /// A credential withheld from this run (see [`TokenErrorKind::Forbidden`]).
    pub(crate) fn forbidden(credential: &str, message: String) -> Self {
        TokenError {
            credential: credential.to_owned(),
            kind: TokenErrorKind::Forbidden,
            retryable: false,
            message,
        }
    }

    /// The same failure, as a [`MintError`] of a credential that depends on this one.
    pub(crate) fn into_mint(self) -> MintError {
        MintError {
            kind: self.kind,
            retry: if self.retryable {
                Retry::Backoff(None)
            } else {
                Retry::Never
            },
            message: format!("credential '{}': {}", self.credential, self.message),
        }
    }
}
