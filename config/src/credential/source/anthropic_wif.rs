//! `source = "anthropic-wif"`: Anthropic workload identity federation, the job's GitHub OIDC
//! token exchanged for a short-lived Claude API token (`POST /v1/oauth/token`, RFC 7523).

use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::SourceTable;
use crate::credential::CredentialSource;
use crate::credential::check::{Checker, check_authority, check_tagged, check_token, check_uuid};

/// `anthropic-wif`: the token endpoint when `token_url` is not set.
pub const ANTHROPIC_TOKEN_URL: &str = "https://api.anthropic.com/v1/oauth/token";

/// `source = "anthropic-wif"`: `POST {token_url}` with a JSON body, the RFC 7523 `jwt-bearer`
/// grant: another credential's JWT as the `assertion`, and the federation rule, organization,
/// service account and (optionally) workspace it is exchanged under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnthropicWifSource {
    /// The token endpoint, `https://api.anthropic.com/v1/oauth/token` by default.
    pub token_url: String,
    /// The federation rule to evaluate (`fdrl_...`).
    pub federation_rule_id: String,
    /// The organization's UUID.
    pub organization_id: String,
    /// The service account the minted token acts as (`svac_...`).
    pub service_account_id: String,
    /// The workspace to scope the token to (`wrkspc_...` or `default`); `None` lets the
    /// server pick the rule's only workspace.
    pub workspace_id: Option<String>,
    /// The credential supplying the `assertion` (a GitHub OIDC token, normally).
    pub assertion: String,
}

/// The table's keys besides `name`, `source` and `refresh_margin`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Table {
    token_url: Option<Spanned<String>>,
    federation_rule_id: Option<Spanned<String>>,
    organization_id: Option<Spanned<String>>,
    service_account_id: Option<Spanned<String>>,
    workspace_id: Option<Spanned<String>>,
    assertion: Option<Spanned<String>>,
}

impl SourceTable for Table {
    const NAME: &'static str = "anthropic-wif";

    fn into_source(self, check: &mut Checker<'_>, _dir: &Path) -> CredentialSource {
        let n = Self::NAME;
        CredentialSource::AnthropicWif(AnthropicWifSource {
            token_url: check.optional(
                "token_url",
                self.token_url.as_ref(),
                ANTHROPIC_TOKEN_URL,
                check_authority,
            ),
            federation_rule_id: check.required(
                n,
                "federation_rule_id",
                self.federation_rule_id.as_ref(),
                |v| check_tagged(v, "fdrl_"),
            ),
            organization_id: check.required(
                n,
                "organization_id",
                self.organization_id.as_ref(),
                check_uuid,
            ),
            service_account_id: check.required(
                n,
                "service_account_id",
                self.service_account_id.as_ref(),
                |v| check_tagged(v, "svac_"),
            ),
            workspace_id: self.workspace_id.as_ref().map(|w| {
                check.required(n, "workspace_id", Some(w), |v| {
                    if v == "default" {
                        Ok(())
                    } else {
                        check_tagged(v, "wrkspc_")
                    }
                })
            }),
            assertion: check.required(n, "assertion", self.assertion.as_ref(), check_token),
        })
    }
}
