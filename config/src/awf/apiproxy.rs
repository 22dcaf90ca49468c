//! AWF's api-proxy sidecar, served by egressd (`reference/awf.md` §5): in `egressd awf` mode
//! the sandbox reaches `http://api-proxy:<port>` (`172.30.0.30`), one port per LLM provider,
//! over plain HTTP; egressd forwards each request to the provider's real API over verified
//! TLS with the credential the daemon holds.
//!
//! This module only describes the routes; the proxy crate serves them.

use std::net::Ipv4Addr;

/// The sidecar's fixed address on AWF's network (§4.1).
pub const IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 30);
/// The sidecar's host name, answered by the sandbox's DNS listener.
pub const HOST: &str = "api-proxy";

/// An LLM provider of the api-proxy, one per port (§5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    /// Port 10000: the `OpenAI` API (also the management port).
    OpenAi,
    /// Port 10001: Anthropic.
    Anthropic,
    /// Port 10002: GitHub Copilot.
    Copilot,
    /// Port 10003: Gemini.
    Gemini,
    /// Port 10004: Vertex AI.
    Vertex,
}

impl Provider {
    /// Every provider, in port order.
    pub const ALL: [Self; 5] = [
        Self::OpenAi,
        Self::Anthropic,
        Self::Copilot,
        Self::Gemini,
        Self::Vertex,
    ];

    /// The sidecar port of this provider.
    #[must_use]
    pub fn port(self) -> u16 {
        match self {
            Self::OpenAi => 10000,
            Self::Anthropic => 10001,
            Self::Copilot => 10002,
            Self::Gemini => 10003,
            Self::Vertex => 10004,
        }
    }

    /// The provider of a sidecar port.
    #[must_use]
    pub fn for_port(port: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.port() == port)
    }

    /// AWF's name for it (`awf-api-proxy-<name>`, `/reflect`'s `provider`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Anthropic => "anthropic",
            Self::Copilot => "copilot",
            Self::Gemini => "gemini",
            Self::Vertex => "vertex",
        }
    }

    /// The upstream API host when nothing else is configured.
    #[must_use]
    pub fn default_upstream(self) -> &'static str {
        match self {
            Self::OpenAi => "api.openai.com",
            Self::Anthropic => "api.anthropic.com",
            Self::Copilot => "api.githubcopilot.com",
            Self::Gemini => "generativelanguage.googleapis.com",
            Self::Vertex => "aiplatform.googleapis.com",
        }
    }

    /// The daemon's environment variable holding this provider's static key (§5.2).
    #[must_use]
    pub fn key_var(self) -> &'static str {
        match self {
            Self::OpenAi => "OPENAI_API_KEY",
            Self::Anthropic => "ANTHROPIC_API_KEY",
            Self::Copilot => "COPILOT_GITHUB_TOKEN",
            Self::Gemini => "GEMINI_API_KEY",
            Self::Vertex => "GOOGLE_API_KEY",
        }
    }
}

/// One provider port: where it goes and with which credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The provider (and so the port).
    pub provider: Provider,
    /// The upstream API authority: a host, or `host:port` (HTTPS).
    pub upstream: String,
    /// A path prefix for every upstream request (`--*-api-base-path`, the path of a BYOK
    /// base URL), without a trailing slash; not added twice.
    pub base_path: Option<String>,
    /// The credential injected; `None`: the provider is not configured (403/404 as AWF).
    pub credential: Option<String>,
    /// How the credential goes upstream.
    pub auth: RouteAuth,
    /// Copilot BYOK: `GET /models` still goes to this Copilot API host with this credential
    /// (the GitHub token), as AWF does.
    pub models_via: Option<(String, String)>,
}

impl Route {
    /// A route to `upstream` with the provider's own header and no base path.
    #[must_use]
    pub fn new(provider: Provider, upstream: String, credential: Option<String>) -> Self {
        Self {
            provider,
            upstream,
            base_path: None,
            credential,
            auth: RouteAuth::Provider,
            models_via: None,
        }
    }
}

/// How a route's credential is put on the upstream request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RouteAuth {
    /// The provider's own header (§5.1): `Authorization: Bearer` (`OpenAI`), `x-api-key`
    /// (Anthropic), `Authorization: <token|Bearer>` (Copilot), `x-goog-api-key` (Google).
    #[default]
    Provider,
    /// The raw secret in this header (`--openai-api-auth-header`, `AWF_*_AUTH_HEADER`).
    Header(String),
    /// `Authorization: Bearer <token>` (OIDC-minted tokens, BYOK bearer tokens).
    Bearer,
    /// `api-key: <key>` (Azure `OpenAI` BYOK with a static key).
    AzureKey,
    /// AWS `SigV4` over the request (Bedrock with `AssumeRoleWithWebIdentity` keys).
    SigV4 {
        /// The signing region.
        region: String,
        /// The signing service (`bedrock`).
        service: String,
    },
}

/// The api-proxy of an `egressd awf` run: one route per provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiProxy {
    /// The routes, one per provider.
    pub routes: Vec<Route>,
    /// `Copilot-Integration-Id` on Copilot requests.
    pub integration_id: String,
    /// `X-Interaction-Id` on Copilot requests without one (`<run_id>-<attempt>`).
    pub interaction_id: Option<String>,
    /// Per-provider request limits (`--rate-limit-*`); `None`: no limit (AWF's default).
    pub rate_limit: Option<RateLimit>,
    /// Run-wide budgets over all providers (`apiProxy.maxRuns`, `maxEffectiveTokens`).
    pub budget: Budget,
}

/// AWF's budget guards (§5.6) that egressd enforces: past one, every further model request
/// gets a terminal `403` and goes nowhere.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budget {
    /// Most model invocations (requests other than `GET` sent to a provider).
    pub max_runs: Option<u64>,
    /// Most effective tokens: input + 0.1 x cache reads + 4 x (output + reasoning), summed
    /// over the responses' reported usage.
    pub max_effective_tokens: Option<u64>,
}

/// AWF's per-provider rate limits (§5.5): once any is given, the others take these
/// defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests per minute.
    pub per_minute: u32,
    /// Requests per hour.
    pub per_hour: u32,
    /// Request body bytes per minute.
    pub bytes_per_minute: u64,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            per_minute: 600,
            per_hour: 10_000,
            bytes_per_minute: 52_428_800,
        }
    }
}

impl ApiProxy {
    /// The route of `port`, if it is a provider port.
    #[must_use]
    pub fn route(&self, port: u16) -> Option<&Route> {
        let provider = Provider::for_port(port)?;
        self.routes.iter().find(|r| r.provider == provider)
    }

    /// Whether `provider` has a credential.
    #[must_use]
    pub fn configured(&self, provider: Provider) -> bool {
        self.routes
            .iter()
            .any(|r| r.provider == provider && r.credential.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_map_to_providers() {
        assert_eq!(Provider::for_port(10000), Some(Provider::OpenAi));
        assert_eq!(Provider::for_port(10004), Some(Provider::Vertex));
        assert_eq!(Provider::for_port(10005), None);
        for p in Provider::ALL {
            assert_eq!(Provider::for_port(p.port()), Some(p));
        }
    }

    #[test]
    fn routes_by_port() {
        let proxy = ApiProxy {
            routes: vec![Route::new(
                Provider::Anthropic,
                "api.anthropic.com".into(),
                Some("k".into()),
            )],
            integration_id: "agentic-workflows".into(),
            interaction_id: None,
            rate_limit: None,
            budget: Budget::default(),
        };
        assert_eq!(proxy.route(10001).unwrap().upstream, "api.anthropic.com");
        assert!(proxy.route(10000).is_none());
        assert!(proxy.configured(Provider::Anthropic));
        assert!(!proxy.configured(Provider::OpenAi));
    }
}
