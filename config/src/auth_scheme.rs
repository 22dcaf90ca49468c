//! The word before a token in `Authorization` (`Bearer`, GitHub's `token`), shared by
//! `[[intercept]]` formats and `copilot` credentials. A leaf: it imports nothing from the
//! crate.

/// The word before a token in `Authorization`, for formats that say `{scheme}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthScheme {
    /// `Bearer <token>` (RFC 6750).
    Bearer,
    /// `token <token>`, GitHub's historical scheme.
    Token,
}

impl AuthScheme {
    /// `"Bearer"` or `"token"`, as written in the header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bearer => "Bearer",
            Self::Token => "token",
        }
    }

    /// The scheme a GitHub OAuth token (`gho_`, `ghu_`) needs on `host` (tokens.md §4.5, AWF's
    /// auth matrix): `token` on the enterprise and business Copilot hosts and on GHE.com
    /// tenants' `copilot-api.*.ghe.com`, which answer `400 Authorization header is badly
    /// formatted` to `Bearer`; `Bearer` everywhere else (`api.githubcopilot.com`, BYOK, OIDC).
    pub fn for_host(host: &str) -> Self {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let tenant_api = host
            .strip_prefix("copilot-api.")
            .and_then(|t| t.strip_suffix(".ghe.com"))
            .is_some_and(|t| !t.is_empty() && !t.contains('.'));
        if tenant_api
            || host == "api.enterprise.githubcopilot.com"
            || host == "api.business.githubcopilot.com"
        {
            Self::Token
        } else {
            Self::Bearer
        }
    }

    /// The scheme a GitHub token's type decides by itself (tokens.md §4.5): `Bearer` for
    /// fine-grained PATs (`github_pat_`) and installation tokens (`ghs_`, the Actions
    /// `GITHUB_TOKEN`), which tenants refuse with `token`; `None` for OAuth tokens (`gho_`,
    /// `ghu_`) and anything else, whose scheme depends on the host ([`for_host`](Self::for_host)).
    pub fn for_github_token(token: &str) -> Option<Self> {
        (token.starts_with("github_pat_") || token.starts_with("ghs_")).then_some(Self::Bearer)
    }
}
