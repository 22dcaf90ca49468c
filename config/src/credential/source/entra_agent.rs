//! `source = "entra-agent"`: Entra Agent ID in two hops: the blueprint gets T1 for the
//! agent (`fmi_path`), then the agent identity exchanges T1 for the resource token.

use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::SourceTable;
use crate::credential::CredentialSource;
use crate::credential::check::{Checker, check_tenant, check_token};
use crate::defaults;

/// `source = "entra-agent"`: blueprint hop with `fmi_path`, then the agent identity hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraAgentSource {
    /// Authority URL without a trailing slash.
    pub authority: String,
    /// The agent identity's home tenant.
    pub tenant: String,
    /// The agent identity blueprint's client ID (hop 1).
    pub blueprint_client_id: String,
    /// The agent identity's client ID (`fmi_path` of hop 1, `client_id` of hop 2).
    pub agent_client_id: String,
    /// The resource scope (hop 2).
    pub scope: String,
    /// The scope of hop 1, `api://AzureADTokenExchange/.default` by default.
    pub exchange_scope: String,
    /// The credential supplying hop 1's `client_assertion`.
    pub assertion: String,
}

/// The table's keys besides `name`, `source` and `refresh_margin`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Table {
    tenant: Option<Spanned<String>>,
    blueprint_client_id: Option<Spanned<String>>,
    agent_client_id: Option<Spanned<String>>,
    scope: Option<Spanned<String>>,
    exchange_scope: Option<Spanned<String>>,
    assertion: Option<Spanned<String>>,
    authority: Option<Spanned<String>>,
}

impl SourceTable for Table {
    const NAME: &'static str = "entra-agent";

    fn into_source(self, check: &mut Checker<'_>, _dir: &Path) -> CredentialSource {
        let n = Self::NAME;
        CredentialSource::EntraAgent(EntraAgentSource {
            tenant: check.required(n, "tenant", self.tenant.as_ref(), check_tenant),
            blueprint_client_id: check.required(
                n,
                "blueprint_client_id",
                self.blueprint_client_id.as_ref(),
                check_token,
            ),
            agent_client_id: check.required(
                n,
                "agent_client_id",
                self.agent_client_id.as_ref(),
                check_token,
            ),
            scope: check.required(n, "scope", self.scope.as_ref(), check_token),
            exchange_scope: self.exchange_scope.as_ref().map_or_else(
                || defaults::ENTRA_EXCHANGE_SCOPE.to_owned(),
                |s| check.required(n, "exchange_scope", Some(s), check_token),
            ),
            assertion: check.required(n, "assertion", self.assertion.as_ref(), check_token),
            authority: check.authority(n, self.authority.as_ref()),
        })
    }
}
