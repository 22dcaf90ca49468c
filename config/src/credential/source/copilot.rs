//! `source = "copilot"`: GitHub Copilot over another credential's GitHub token (the
//! `[copilot]` table, `crate::copilot`, writes one of these for you).

use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::SourceTable;
use crate::auth_scheme::AuthScheme;
use crate::credential::CredentialSource;
use crate::credential::check::{Checker, check_authority, check_token};

/// How a `copilot` credential gets the token it injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CopilotMode {
    /// The GitHub token itself.
    Direct,
    /// The `/copilot_internal/v2/token` exchange, always.
    Exchange,
    /// The exchange; on 403/404, the GitHub token itself from then on.
    #[default]
    Auto,
}

impl CopilotMode {
    /// Parses `direct`, `exchange` or `auto`.
    ///
    /// # Errors
    ///
    /// Any other word, with the choices.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "direct" => Ok(Self::Direct),
            "exchange" => Ok(Self::Exchange),
            "auto" => Ok(Self::Auto),
            other => Err(format!(
                "mode {other:?}: use \"auto\" (the default), \"exchange\" or \"direct\""
            )),
        }
    }
}

/// Parses a `scheme` override: `bearer` or `token` (any case).
///
/// # Errors
///
/// Any other word.
pub fn parse_scheme(text: &str) -> Result<AuthScheme, String> {
    match text.to_ascii_lowercase().as_str() {
        "bearer" => Ok(AuthScheme::Bearer),
        "token" => Ok(AuthScheme::Token),
        _ => Err(format!("scheme {text:?}: use \"bearer\" or \"token\"")),
    }
}

/// `source = "copilot"`: a Copilot credential over another credential's GitHub token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopilotSource {
    /// The credential holding the GitHub token.
    pub github_token: String,
    /// Direct, exchange or auto.
    pub mode: CopilotMode,
    /// Forces the scheme of every token; `None` chooses per token type and host.
    pub scheme: Option<AuthScheme>,
    /// The GitHub REST API base the exchange goes to (`https://api.github.com`,
    /// `https://api.acme.ghe.com`, `https://ghes.example/api/v3`), without a trailing slash.
    /// `None` as written; [`ConfigBuilder::build`](crate::ConfigBuilder::build) fills it with
    /// the deployment's API base.
    pub api_url: Option<String>,
}

/// The table's keys besides `name`, `source` and `refresh_margin`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Table {
    github_token: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    scheme: Option<Spanned<String>>,
    api_url: Option<Spanned<String>>,
}

impl SourceTable for Table {
    const NAME: &'static str = "copilot";

    fn into_source(self, check: &mut Checker<'_>, _dir: &Path) -> CredentialSource {
        let n = Self::NAME;
        let mode = self.mode.as_ref().map_or(CopilotMode::Auto, |m| {
            CopilotMode::parse(m.get_ref()).unwrap_or_else(|why| {
                check.fail(m.span().start, why);
                CopilotMode::Auto
            })
        });
        let scheme = self.scheme.as_ref().and_then(|s| {
            parse_scheme(s.get_ref())
                .map_err(|why| check.fail(s.span().start, why))
                .ok()
        });
        CredentialSource::Copilot(CopilotSource {
            github_token: check.required(
                n,
                "github_token",
                self.github_token.as_ref(),
                check_token,
            ),
            mode,
            scheme,
            api_url: self.api_url.as_ref().map(|u| {
                check
                    .required(n, "api_url", Some(u), check_authority)
                    .trim_end_matches('/')
                    .to_owned()
            }),
        })
    }
}
