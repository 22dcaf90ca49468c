//! Provenance: who triggered the run, from the job's GitHub Actions OIDC token, verified.
//!
//! [`establish`] mints one JWT with a dedicated audience (`[provenance] audience`, default
//! `egressd`) and verifies it as a relying party would (`reference/tokens.md` §1.5):
//!
//! ```text
//!  mint ─► header: alg must be RS256 (none, HS*, ES* refused), kid present
//!       ─► iss (unverified peek) must be the expected issuer, else stop: no request is
//!          made to an issuer we were not told to trust
//!       ─► GET {iss}/.well-known/openid-configuration: `issuer` equal, `jwks_uri` on the
//!          issuer's own scheme, host and port
//!       ─► GET jwks_uri: the key whose kid matches (no other key is tried)
//!       ─► RS256 signature, iss, aud, exp, nbf, iat (60 s leeway, §7.2)
//!       ─► Provenance (the signed claims only)
//! ```
//!
//! The expected issuer is configuration, never the token's say-so: github.com's
//! `https://token.actions.githubusercontent.com`, `https://token.actions.<tenant>.ghe.com`,
//! `https://<host>/_services/token`, or `[provenance] issuer`. Discovery and JWKS are fetched
//! with the token endpoints' client (webpki roots plus `upstream_ca`).
//!
//! # Security
//!
//! A [`Provenance`] can only be built here, from a token whose signature verified: other
//! crates can read it but not make one, so nothing unverified (a header, an environment
//! variable, an unverified claim) can pose as provenance. The JWT itself is never kept,
//! logged or written to the audit log.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use url::Url;

use super::error::{MintError, Retry};
use super::http::TokenHttp;
use super::secret::Secret;
use super::source::github_oidc::{GithubOidc, GithubOidcEnv};
use crate::provenance::Provenance;

/// Leeway on `exp`, `nbf` and `iat` (`reference/tokens.md` §7.2).
pub const LEEWAY: Duration = Duration::from_mins(1);

/// Attempts at minting the provenance token on transient failures (5xx, 429, timeouts).
const MINT_ATTEMPTS: u32 = 3;

/// Why provenance could not be established. Messages are lowercase, name the issuer or the
/// failed check, and never hold the token.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ProvenanceError {
    /// The OIDC endpoint did not give a token (unreachable, refusing the request token).
    #[error("minting the GitHub OIDC token failed: {0}")]
    Mint(String),
    /// The issuer's discovery document or JWKS could not be fetched or used.
    #[error("fetching the issuer's keys failed: {0}")]
    Keys(String),
    /// The token failed verification (signature, algorithm, issuer, audience, times, claims).
    #[error("the GitHub OIDC token did not verify: {0}")]
    Invalid(String),
    /// The extra CA bundle is unusable.
    #[error("upstream CA bundle: {0}")]
    UpstreamCa(String),
}

/// What the verifier expects; built from `[provenance]` and the GitHub deployment.
#[derive(Debug, Clone)]
pub struct Expected {
    /// The exact `iss`, without a trailing slash.
    pub issuer: String,
    /// The `aud` requested and required.
    pub audience: String,
}

/// Mints a JWT for `expected.audience` with the job's OIDC variables and verifies it.
///
/// # Errors
///
/// [`ProvenanceError`] saying which step failed; transient mint failures are retried twice
/// (after 1 s, then 2 s) first.
///
/// # Cancel safety
///
/// Cancel safe: it holds no state beyond its own requests.
pub async fn establish(
    env: &GithubOidcEnv,
    expected: &Expected,
    extra_ca_pem: Option<&[u8]>,
    dns: super::OwnDns,
) -> Result<Provenance, ProvenanceError> {
    let http = TokenHttp::new(extra_ca_pem, Duration::from_secs(10))
        .map_err(ProvenanceError::UpstreamCa)?
        .with_dns(dns);
    let source = GithubOidc::new(env, Some(&expected.audience)).map_err(ProvenanceError::Mint)?;
    let mut attempt = 1;
    let jwt = loop {
        match source.mint(&http).await {
            Ok(minted) => break minted.secret,
            Err(MintError {
                retry: Retry::Backoff(after),
                ..
            }) if attempt < MINT_ATTEMPTS => {
                let delay = Duration::from_secs(1 << (attempt - 1));
                tokio::time::sleep(after.unwrap_or(delay).min(Duration::from_secs(5))).await;
                attempt += 1;
            }
            Err(e) => return Err(ProvenanceError::Mint(e.message)),
        }
    };
    Verifier { http, expected }.verify(&jwt).await
}

// === verification ===

/// Verifies JWTs of one issuer for one audience.
pub(crate) struct Verifier<'a> {
    pub(crate) http: TokenHttp,
    pub(crate) expected: &'a Expected,
}

/// The registered claims checked here besides what `jsonwebtoken` checks, and the GitHub
/// claims kept. Unknown claims are ignored.
#[derive(Deserialize)]
struct Claims {
    iss: String,
    iat: u64,
    actor: Option<String>,
    actor_id: Option<String>,
    repository: Option<String>,
    repository_id: Option<String>,
    job_workflow_ref: Option<String>,
    workflow_ref: Option<String>,
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    sha: Option<String>,
    run_id: Option<String>,
    run_attempt: Option<String>,
    event_name: Option<String>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<serde_json::Value>,
}

impl Verifier<'_> {
    /// Verifies `jwt` and returns its claims as [`Provenance`].
    pub(crate) async fn verify(&self, jwt: &Secret) -> Result<Provenance, ProvenanceError> {
        let jwt = jwt.expose();
        let invalid = ProvenanceError::Invalid;
        // 1. The header: RS256 only, with a kid. `alg: none` does not even parse.
        let header = jsonwebtoken::decode_header(jwt)
            .map_err(|e| invalid(format!("it is not a JWT with a supported header ({e})")))?;
        if header.alg != Algorithm::RS256 {
            return Err(invalid(format!(
                "it is signed with {:?}; GitHub signs with RS256 and nothing else is accepted",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| invalid("its header has no `kid`".to_owned()))?;
        // 2. The issuer it claims, before anything is fetched from it.
        let claimed = peek_issuer(jwt).ok_or_else(|| invalid("it has no `iss`".to_owned()))?;
        if claimed != self.expected.issuer {
            return Err(invalid(format!(
                "it was issued by {claimed}, not by the expected {} (set [provenance] issuer \
                 for an enterprise-specific issuer)",
                self.expected.issuer
            )));
        }
        // 3. The issuer's key for this kid.
        let key = self.key(&kid).await?;
        // 4. Signature and registered claims.
        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = LEEWAY.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.expected.issuer]);
        validation.set_audience(&[&self.expected.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud"]);
        let claims = jsonwebtoken::decode::<Claims>(jwt, &key, &validation)
            .map_err(|e| invalid(self.explain(e.kind())))?
            .claims;
        let now = jsonwebtoken::get_current_timestamp();
        if claims.iat > now + LEEWAY.as_secs() {
            return Err(invalid(format!(
                "it was issued {} s in the future (iat; more than the {} s leeway)",
                claims.iat - now,
                LEEWAY.as_secs()
            )));
        }
        if claims.iss != self.expected.issuer {
            return Err(invalid("its `iss` changed under verification".to_owned()));
        }
        provenance(claims)
    }

    /// The decoding key for `kid` from the issuer's JWKS, found through its discovery document.
    async fn key(&self, kid: &str) -> Result<DecodingKey, ProvenanceError> {
        let issuer = Url::parse(&self.expected.issuer)
            .map_err(|e| ProvenanceError::Keys(format!("the issuer is not a URL ({e})")))?;
        let discovery_url = Url::parse(&format!(
            "{}/.well-known/openid-configuration",
            self.expected.issuer
        ))
        .map_err(|e| ProvenanceError::Keys(format!("the discovery URL is invalid ({e})")))?;
        let discovery: Discovery = self.get_json(&discovery_url, "discovery document").await?;
        if discovery.issuer.trim_end_matches('/') != self.expected.issuer {
            return Err(ProvenanceError::Keys(format!(
                "the discovery document names issuer {}, not {}",
                discovery.issuer, self.expected.issuer
            )));
        }
        let jwks_url = Url::parse(&discovery.jwks_uri)
            .map_err(|e| ProvenanceError::Keys(format!("jwks_uri is not a URL ({e})")))?;
        let same_origin = jwks_url.scheme() == issuer.scheme()
            && jwks_url.host_str() == issuer.host_str()
            && jwks_url.port_or_known_default() == issuer.port_or_known_default();
        if !same_origin {
            return Err(ProvenanceError::Keys(format!(
                "jwks_uri points to {}, away from the issuer's host: refused",
                &jwks_url[..url::Position::BeforePath]
            )));
        }
        let jwks: Jwks = self.get_json(&jwks_url, "JWKS").await?;
        let jwk = jwks
            .keys
            .into_iter()
            .find(|k| k.get("kid").and_then(serde_json::Value::as_str) == Some(kid))
            .ok_or_else(|| {
                ProvenanceError::Invalid(format!(
                    "it is signed with key {kid:?}, which the issuer does not publish"
                ))
            })?;
        if jwk.get("kty").and_then(serde_json::Value::as_str) != Some("RSA") {
            return Err(ProvenanceError::Keys(format!(
                "the issuer's key {kid:?} is not an RSA key"
            )));
        }
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk)
            .map_err(|e| ProvenanceError::Keys(format!("the issuer's key {kid:?}: {e}")))?;
        DecodingKey::from_jwk(&jwk)
            .map_err(|e| ProvenanceError::Keys(format!("the issuer's key {kid:?}: {e}")))
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &Url,
        what: &str,
    ) -> Result<T, ProvenanceError> {
        let response = self
            .http
            .get(url)
            .await
            .map_err(|e| ProvenanceError::Keys(format!("{what}: {}", e.message)))?;
        if !response.status.is_success() {
            return Err(ProvenanceError::Keys(format!(
                "{what}: {} answered {}",
                &url[..url::Position::BeforePath],
                response.status
            )));
        }
        serde_json::from_slice(&response.body)
            .map_err(|e| ProvenanceError::Keys(format!("{what}: not the documented JSON ({e})")))
    }

    fn explain(&self, kind: &JwtErrorKind) -> String {
        let leeway = LEEWAY.as_secs();
        match kind {
            JwtErrorKind::InvalidSignature => {
                "its signature does not verify with the issuer's key".to_owned()
            }
            JwtErrorKind::ExpiredSignature => {
                format!("it has expired (exp, beyond the {leeway} s leeway)")
            }
            JwtErrorKind::ImmatureSignature => {
                format!("it is not valid yet (nbf, beyond the {leeway} s leeway)")
            }
            JwtErrorKind::InvalidAudience => format!(
                "its audience is not {:?} (the [provenance] audience)",
                self.expected.audience
            ),
            JwtErrorKind::InvalidIssuer => {
                format!("it was not issued by {}", self.expected.issuer)
            }
            JwtErrorKind::InvalidAlgorithm => "its algorithm is not RS256".to_owned(),
            JwtErrorKind::MissingRequiredClaim(claim) => format!("it has no `{claim}`"),
            other => format!("{other:?}"),
        }
    }
}

/// The `iss` of a JWT's payload, read without verifying it (only to refuse early).
fn peek_issuer(jwt: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Iss {
        iss: String,
    }
    let payload = jwt.split('.').nth(1)?;
    let iss: Iss = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    Some(iss.iss.trim_end_matches('/').to_owned())
}

/// The [`Provenance`] of verified claims; `actor`, `actor_id`, `repository` and `run_id` are
/// required (GitHub always sets them).
fn provenance(claims: Claims) -> Result<Provenance, ProvenanceError> {
    let required = |value: Option<String>, name: &str| {
        value
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ProvenanceError::Invalid(format!("it has no `{name}` claim")))
    };
    let actor_id = required(claims.actor_id, "actor_id")?;
    if !actor_id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ProvenanceError::Invalid(format!(
            "its `actor_id` {actor_id:?} is not a numeric ID"
        )));
    }
    Ok(Provenance {
        issuer: claims.iss,
        actor: required(claims.actor, "actor")?,
        actor_id,
        repository: required(claims.repository, "repository")?,
        repository_id: claims.repository_id,
        job_workflow_ref: claims.job_workflow_ref,
        workflow_ref: claims.workflow_ref,
        git_ref: claims.git_ref,
        sha: claims.sha,
        run_id: required(claims.run_id, "run_id")?,
        run_attempt: claims.run_attempt,
        event_name: claims.event_name,
    })
}
