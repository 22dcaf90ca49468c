//! `source = "aws-web-identity"`: STS `AssumeRoleWithWebIdentity`, temporary keys that sign
//! requests (`SigV4`), with another credential's token as the web identity.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::SourceTable;
use crate::credential::CredentialSource;
use crate::credential::check::{
    Checker, check_authority, check_role_arn, check_session_name, check_token, default_session_name,
};

/// `aws-web-identity`: the STS endpoint when `endpoint` is not set (global).
pub const AWS_STS_URL: &str = "https://sts.amazonaws.com/";
/// `aws-web-identity`: `DurationSeconds` when `duration` is not set.
pub const AWS_DURATION: Duration = Duration::from_hours(1);
/// `aws-web-identity`: the shortest `duration` STS accepts.
pub const AWS_DURATION_MIN: Duration = Duration::from_mins(15);
/// `aws-web-identity`: the longest `duration` STS accepts (a role's maximum may be lower).
pub const AWS_DURATION_MAX: Duration = Duration::from_hours(12);

/// `source = "aws-web-identity"` (`reference/tokens.md` §6.1): STS
/// `AssumeRoleWithWebIdentity`, unsigned, with another credential's token as the web identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsWebIdentitySource {
    /// The STS endpoint, such as `https://sts.amazonaws.com/` or a regional one.
    pub endpoint: String,
    /// `RoleArn`.
    pub role_arn: String,
    /// `RoleSessionName`: 2 to 64 letters, digits and `_+=,.@-`.
    pub role_session_name: String,
    /// `DurationSeconds` (whole seconds, 15 minutes to 12 hours).
    pub duration: Duration,
    /// The credential supplying `WebIdentityToken`.
    pub web_identity_token: String,
}

/// The table's keys besides `name`, `source` and `refresh_margin`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Table {
    endpoint: Option<Spanned<String>>,
    role_arn: Option<Spanned<String>>,
    role_session_name: Option<Spanned<String>>,
    duration: Option<Spanned<String>>,
    web_identity_token: Option<Spanned<String>>,
}

impl SourceTable for Table {
    const NAME: &'static str = "aws-web-identity";

    fn into_source(self, check: &mut Checker<'_>, _dir: &Path) -> CredentialSource {
        let n = Self::NAME;
        let default_session = default_session_name(check.name);
        CredentialSource::AwsWebIdentity(AwsWebIdentitySource {
            endpoint: check.optional(
                "endpoint",
                self.endpoint.as_ref(),
                AWS_STS_URL,
                check_authority,
            ),
            role_arn: check.required(n, "role_arn", self.role_arn.as_ref(), check_role_arn),
            role_session_name: check.optional(
                "role_session_name",
                self.role_session_name.as_ref(),
                &default_session,
                check_session_name,
            ),
            duration: check.seconds(
                "duration",
                self.duration.as_ref(),
                AWS_DURATION,
                (AWS_DURATION_MIN, AWS_DURATION_MAX),
            ),
            web_identity_token: check.required(
                n,
                "web_identity_token",
                self.web_identity_token.as_ref(),
                check_token,
            ),
        })
    }
}
