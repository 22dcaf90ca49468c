//! `source = "oauth2-token-exchange"`: an RFC 8693 token exchange (Google STS by default),
//! optionally followed by service account impersonation (IAM Credentials).

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::SourceTable;
use crate::credential::CredentialSource;
use crate::credential::check::{
    Checker, check_authority, check_email, check_token, check_token_type,
};

/// `oauth2-token-exchange`: the token endpoint when `token_url` is not set (Google STS).
pub const GOOGLE_STS_URL: &str = "https://sts.googleapis.com/v1/token";
/// `oauth2-token-exchange`: the scope when `scope` is not set.
pub const GOOGLE_CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// `oauth2-token-exchange`: the IAM Credentials base URL when `iam_credentials_url` is not set.
pub const GOOGLE_IAM_CREDENTIALS_URL: &str = "https://iamcredentials.googleapis.com";
/// `oauth2-token-exchange`: the impersonated token's lifetime when `lifetime` is not set.
pub const GOOGLE_IMPERSONATION_LIFETIME: Duration = Duration::from_hours(1);
/// RFC 8693 token type of a JWT (the default `subject_token_type`).
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// RFC 8693 token type of an access token (the default `requested_token_type`).
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// `source = "oauth2-token-exchange"` (`reference/tokens.md` §6.2, §6.3): `POST {token_url}`
/// with `grant_type=urn:ietf:params:oauth:grant-type:token-exchange`, then optionally IAM
/// Credentials `generateAccessToken` for a service account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenExchangeSource {
    /// The token endpoint, such as `https://sts.googleapis.com/v1/token`.
    pub token_url: String,
    /// `audience`: for Google, the workload identity provider's full resource name
    /// (`//iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P/providers/X`).
    pub audience: String,
    /// `scope`, such as `https://www.googleapis.com/auth/cloud-platform`.
    pub scope: String,
    /// The credential supplying `subject_token`.
    pub subject_token: String,
    /// `subject_token_type`, a token type URI.
    pub subject_token_type: String,
    /// `requested_token_type`, a token type URI.
    pub requested_token_type: String,
    /// Service account impersonation with the exchanged token, if configured.
    pub impersonation: Option<Impersonation>,
}

/// Google service account impersonation: `POST {iam_credentials_url}/v1/projects/-/
/// serviceAccounts/{service_account}:generateAccessToken` with the exchanged token as bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Impersonation {
    /// The service account's email.
    pub service_account: String,
    /// The IAM Credentials base URL without a trailing slash.
    pub iam_credentials_url: String,
    /// The requested lifetime (whole seconds).
    pub lifetime: Duration,
}

/// The table's keys besides `name`, `source` and `refresh_margin`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Table {
    token_url: Option<Spanned<String>>,
    audience: Option<Spanned<String>>,
    scope: Option<Spanned<String>>,
    subject_token: Option<Spanned<String>>,
    subject_token_type: Option<Spanned<String>>,
    requested_token_type: Option<Spanned<String>>,
    service_account: Option<Spanned<String>>,
    iam_credentials_url: Option<Spanned<String>>,
    lifetime: Option<Spanned<String>>,
}

impl SourceTable for Table {
    const NAME: &'static str = "oauth2-token-exchange";

    fn into_source(self, check: &mut Checker<'_>, _dir: &Path) -> CredentialSource {
        let n = Self::NAME;
        let impersonation = if let Some(sa) = &self.service_account {
            Some(Impersonation {
                service_account: check.required(n, "service_account", Some(sa), check_email),
                iam_credentials_url: check
                    .optional(
                        "iam_credentials_url",
                        self.iam_credentials_url.as_ref(),
                        GOOGLE_IAM_CREDENTIALS_URL,
                        check_authority,
                    )
                    .trim_end_matches('/')
                    .to_owned(),
                lifetime: check.seconds(
                    "lifetime",
                    self.lifetime.as_ref(),
                    GOOGLE_IMPERSONATION_LIFETIME,
                    (Duration::from_secs(1), Duration::from_hours(12)),
                ),
            })
        } else {
            for (key, value) in [
                ("iam_credentials_url", &self.iam_credentials_url),
                ("lifetime", &self.lifetime),
            ] {
                if let Some(value) = value {
                    check.fail(
                        value.span().start,
                        format!("`{key}` applies only with `service_account`: remove it"),
                    );
                }
            }
            None
        };
        CredentialSource::TokenExchange(TokenExchangeSource {
            token_url: check.optional(
                "token_url",
                self.token_url.as_ref(),
                GOOGLE_STS_URL,
                check_authority,
            ),
            audience: check.required(n, "audience", self.audience.as_ref(), check_token),
            scope: check.optional(
                "scope",
                self.scope.as_ref(),
                GOOGLE_CLOUD_PLATFORM_SCOPE,
                check_token,
            ),
            subject_token: check.required(
                n,
                "subject_token",
                self.subject_token.as_ref(),
                check_token,
            ),
            subject_token_type: check.optional(
                "subject_token_type",
                self.subject_token_type.as_ref(),
                TOKEN_TYPE_JWT,
                check_token_type,
            ),
            requested_token_type: check.optional(
                "requested_token_type",
                self.requested_token_type.as_ref(),
                TOKEN_TYPE_ACCESS_TOKEN,
                check_token_type,
            ),
            impersonation,
        })
    }
}
