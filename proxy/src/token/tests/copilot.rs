//! The `copilot` source against the fake GitHub API of `egressd-tests` over real HTTPS on
//! loopback: the v2 exchange, `refresh_in`, the 403/404 fallback of `auto` (logged once),
//! direct mode and the scheme each token gets.

use std::path::Path;

use egressd_config::ConfigBuilder;
use egressd_config::github::GitHubEnv;
use egressd_config::intercept::AuthScheme;
use egressd_tests::TestCa;
use egressd_tests::fakes::FakeCopilot;

use super::super::source::Source;
use super::super::*;

const OAUTH: &str = "gho_0000000000000000000000000000000000000";
const PAT: &str = "github_pat_11AAAAAAA0000000000000000000000000000000000";

struct Setup {
    ca: TestCa,
    fake: FakeCopilot,
}

impl Setup {
    fn start() -> Self {
        let ca = TestCa::new();
        let fake = FakeCopilot::start(&ca);
        fake.add_github_token(OAUTH);
        fake.add_github_token(PAT);
        Self { ca, fake }
    }

    /// A broker with `gh` holding `token` and `cp` = copilot over it with `extra` keys.
    fn broker(&self, token: &str, extra: &str) -> Broker {
        let toml = format!(
            r#"
[[credential]]
name = "gh"
source = "env"
var = "GH_TOKEN"

[[credential]]
name = "cp"
source = "copilot"
github_token = "gh"
api_url = "{api}"
{extra}
"#,
            api = self.fake.api_url()
        );
        let mut builder = ConfigBuilder::new();
        builder.toml_str(&toml, Path::new("egressd.toml")).unwrap();
        let credentials = builder.build().unwrap().credentials;
        Broker::with_options(&credentials, self.env(token), self.options()).unwrap()
    }

    fn env(&self, token: &str) -> SourceEnv {
        SourceEnv {
            spiffe_endpoint_socket: None,
            github_oidc: None,
            vars: HashMap::from([("GH_TOKEN".to_owned(), Secret::new(token))]),
        }
    }

    fn options(&self) -> BrokerOptions {
        BrokerOptions {
            extra_ca_pem: Some(self.ca.cert_pem().as_bytes().to_vec()),
            backoff_min: Duration::from_millis(100),
            ..BrokerOptions::default()
        }
    }
}

fn copilot_source<'a>(broker: &'a Broker, name: &str) -> &'a source::copilot::Copilot {
    match &broker.inner.named[name].source {
        Source::Copilot(c) => c,
        _ => panic!("{name} is not a copilot source"),
    }
}

#[tokio::test]
async fn the_exchange_sends_the_documented_request_and_injects_a_bearer_copilot_token() {
    let s = Setup::start();
    s.fake
        .set_api_endpoint("https://api.business.githubcopilot.com");
    let broker = s.broker(OAUTH, "mode = \"exchange\"");
    let token = broker.get("cp").await.unwrap();
    assert!(
        s.fake.issued(token.secret.expose()),
        "not an issued Copilot token"
    );
    assert_eq!(token.source, "copilot");
    assert_eq!(token.scheme, Some(AuthScheme::Bearer));
    // refresh_in 1500 + 60 s (VS Code's rule), bounded by expires_at (1800 s).
    let secs = token.expires_in.as_secs();
    assert!((1500..=1560).contains(&secs), "{secs}");
    let calls = s.fake.exchanges();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].path, "/copilot_internal/v2/token");
    assert_eq!(calls[0].scheme, "token");
    assert_eq!(calls[0].api_version.as_deref(), Some("2025-04-01"));
    assert_eq!(
        copilot_source(&broker, "cp").api_endpoint().as_deref(),
        Some("https://api.business.githubcopilot.com")
    );
    // Cached.
    let again = broker.get("cp").await.unwrap();
    assert_eq!(again.secret.expose(), token.secret.expose());
    assert_eq!(s.fake.exchanges().len(), 1);
    assert!(!format!("{token:?}").contains(token.secret.expose()));
}

#[tokio::test]
async fn refresh_in_decides_when_the_copilot_token_is_refreshed() {
    let s = Setup::start();
    s.fake.set_lifetimes(1800, 1);
    let broker = s.broker(OAUTH, "");
    let first = broker.get("cp").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // Past refresh_in: still served, and one refresh starts in the background.
    let served = broker.get("cp").await.unwrap();
    assert_eq!(served.secret.expose(), first.secret.expose());
    let mut refreshed = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = broker.get("cp").await.unwrap();
        if t.secret.expose() != first.secret.expose() {
            refreshed = Some(t);
            break;
        }
    }
    let refreshed = refreshed.expect("the token was not refreshed after refresh_in");
    assert!(s.fake.issued(refreshed.secret.expose()));
    assert!(s.fake.exchanges().len() >= 2);
}

#[tokio::test]
async fn auto_falls_back_to_the_github_token_on_403_and_logs_it_once() {
    let s = Setup::start();
    s.fake.refuse_exchange(Some(403)); // a data-residency tenant
    let broker = s.broker(OAUTH, "");
    let (a, b) = tokio::join!(broker.get("cp"), broker.get("cp"));
    for token in [a.unwrap(), b.unwrap(), broker.get("cp").await.unwrap()] {
        assert_eq!(token.secret.expose(), OAUTH);
        assert_eq!(token.source, "copilot-direct");
        // An OAuth token: the host decides between `token` and `Bearer`.
        assert_eq!(token.scheme, None);
    }
    assert_eq!(s.fake.exchanges().len(), 1, "the exchange is not retried");
    assert_eq!(copilot_source(&broker, "cp").fallback_logs(), 1);
}

#[tokio::test]
async fn a_pat_is_refused_by_the_exchange_and_goes_direct_as_bearer_in_auto_mode() {
    let s = Setup::start();
    let broker = s.broker(PAT, "");
    let token = broker.get("cp").await.unwrap();
    assert_eq!(token.secret.expose(), PAT);
    assert_eq!(token.scheme, Some(AuthScheme::Bearer));
    assert_eq!(s.fake.exchanges()[0].status, 403);
    // Exchange mode: the refusal is a configuration error, not retried.
    let broker = s.broker(PAT, "mode = \"exchange\"");
    let err = broker.get("cp").await.unwrap_err();
    assert_eq!(err.kind, TokenErrorKind::Rejected);
    assert!(!err.retryable);
    assert!(
        err.message
            .contains("Resource not accessible by personal access token"),
        "{err}"
    );
    assert!(!err.message.contains(PAT), "{err}");
}

#[tokio::test]
async fn ghes_answers_404_on_its_path_style_api_and_auto_goes_direct() {
    let s = Setup::start();
    s.fake.refuse_exchange(Some(404));
    let toml_api = format!("{}/api/v3", s.fake.api_url());
    let broker = {
        let toml = "[[credential]]\nname = \"gh\"\nsource = \"env\"\nvar = \"GH_TOKEN\"\n\n[copilot]\ngithub_token = \"gh\"\n";
        let mut builder = ConfigBuilder::new();
        builder
            .github(
                &GitHubEnv {
                    server_url: Some("https://git.corp.example".into()),
                    api_url: Some(toml_api.clone()),
                    force_ghes: false,
                },
                true,
            )
            .unwrap();
        builder.toml_str(toml, Path::new("egressd.toml")).unwrap();
        let config = builder.build().unwrap();
        Broker::with_options(&config.credentials, s.env(OAUTH), s.options()).unwrap()
    };
    let token = broker.get("copilot").await.unwrap();
    assert_eq!(token.secret.expose(), OAUTH);
    let calls = s.fake.exchanges();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].path, "/api/v3/copilot_internal/v2/token");
    assert_eq!(calls[0].status, 404);
}

#[tokio::test]
async fn the_exchange_goes_to_the_tenants_api_from_the_github_environment() {
    // The user report: the exchange went to api.github.com instead of api.<tenant>.ghe.com.
    // Here GITHUB_API_URL names the fake; api.github.com is unreachable from the test.
    let s = Setup::start();
    let mut builder = ConfigBuilder::new();
    builder
        .github(
            &GitHubEnv {
                server_url: Some("https://acme.ghe.com".into()),
                api_url: Some(s.fake.api_url()),
                force_ghes: false,
            },
            true,
        )
        .unwrap();
    builder
        .toml_str(
            "[[credential]]\nname = \"gh\"\nsource = \"env\"\nvar = \"GH_TOKEN\"\n[copilot]\ngithub_token = \"gh\"\nmode = \"exchange\"\n",
            Path::new("egressd.toml"),
        )
        .unwrap();
    let config = builder.build().unwrap();
    let broker = Broker::with_options(&config.credentials, s.env(OAUTH), s.options()).unwrap();
    let token = broker.get("copilot").await.unwrap();
    assert!(s.fake.issued(token.secret.expose()));
    assert_eq!(s.fake.exchanges().len(), 1);
}

#[tokio::test]
async fn direct_mode_never_exchanges_and_the_override_wins() {
    let s = Setup::start();
    let broker = s.broker(OAUTH, "mode = \"direct\"\nscheme = \"token\"");
    let token = broker.get("cp").await.unwrap();
    assert_eq!(token.secret.expose(), OAUTH);
    assert_eq!(token.source, "copilot-direct");
    assert_eq!(token.scheme, Some(AuthScheme::Token));
    assert_eq!(token.expires_in, Duration::MAX, "a static GitHub token");
    assert!(s.fake.exchanges().is_empty());
}

#[tokio::test]
async fn an_unknown_github_token_is_rejected_not_fallen_back() {
    let s = Setup::start();
    let broker = s.broker("gho_unknown", "");
    let err = broker.get("cp").await.unwrap_err();
    assert_eq!(err.kind, TokenErrorKind::Rejected, "{err}");
    assert!(err.message.contains("401"), "{err}");
    assert!(!copilot_source(&broker, "cp").is_direct());
}
