//! `source = "entra"`: Entra client credentials with a federated client assertion (another
//! credential's token, minted fresh for every exchange).

use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::SourceTable;
use crate::credential::CredentialSource;
use crate::credential::check::{Checker, check_tenant, check_token};

/// `source = "entra"`: `POST {authority}/{tenant}/oauth2/v2.0/token`, client credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraSource {
    /// Authority URL without a trailing slash, such as `https://login.microsoftonline.com`.
    pub authority: String,
    /// Tenant ID or verified domain.
    pub tenant: String,
    /// The application (client) ID.
    pub client_id: String,
    /// The resource scope.
    pub scope: String,
    /// The credential supplying `client_assertion`.
    pub assertion: String,
}

/// The table's keys besides `name`, `source` and `refresh_margin`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Table {
    tenant: Option<Spanned<String>>,
    client_id: Option<Spanned<String>>,
    scope: Option<Spanned<String>>,
    assertion: Option<Spanned<String>>,
    authority: Option<Spanned<String>>,
}

impl SourceTable for Table {
    const NAME: &'static str = "entra";

    fn into_source(self, check: &mut Checker<'_>, _dir: &Path) -> CredentialSource {
        let n = Self::NAME;
        CredentialSource::Entra(EntraSource {
            tenant: check.required(n, "tenant", self.tenant.as_ref(), check_tenant),
            client_id: check.required(n, "client_id", self.client_id.as_ref(), check_token),
            scope: check.required(n, "scope", self.scope.as_ref(), check_token),
            assertion: check.required(n, "assertion", self.assertion.as_ref(), check_token),
            authority: check.authority(n, self.authority.as_ref()),
        })
    }
}
