//! `source = "github-oidc"`: a GitHub Actions OIDC token, minted by the proxy with the
//! runner's `ACTIONS_ID_TOKEN_REQUEST_URL`/`_TOKEN`.

use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::SourceTable;
use crate::credential::CredentialSource;
use crate::credential::check::{Checker, check_token};

/// The table's keys besides `name`, `source` and `refresh_margin`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Table {
    /// The `aud` of the minted JWT; without it GitHub uses the repository owner's URL.
    audience: Option<Spanned<String>>,
}

impl SourceTable for Table {
    const NAME: &'static str = "github-oidc";

    fn into_source(self, check: &mut Checker<'_>, _dir: &Path) -> CredentialSource {
        CredentialSource::GithubOidc {
            audience: self
                .audience
                .as_ref()
                .map(|a| check.required(Self::NAME, "audience", Some(a), check_token)),
        }
    }
}
