//! The broker against the fake GitHub OIDC issuer and the fake Entra endpoint of
//! `egressd-tests`, over real HTTPS on loopback. Real time: lifetimes are seconds long and
//! the longest test runs about 6 s.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::Engine;
use egressd_config::ConfigBuilder;
use egressd_tests::TestCa;
use egressd_tests::fakes::{Down, Failure, FakeEntra, FakeOidc, Fic};

use super::super::*;

const TENANT: &str = "00000000-0000-0000-0000-0000000000aa";
const APP: &str = "11111111-2222-3333-4444-555555555555";
const LAGGING_APP: &str = "11111111-0000-0000-0000-00000000001a";
const BLUEPRINT: &str = "22222222-0000-0000-0000-000000000000";
const AGENT: &str = "33333333-0000-0000-0000-000000000000";
const SCOPE: &str = "https://cognitiveservices.azure.com/.default";
const EXCHANGE_SCOPE: &str = "api://AzureADTokenExchange/.default";
const SUBJECT: &str = "repo:octo-org/octo-repo:ref:refs/heads/main";

struct Fakes {
    ca: TestCa,
    oidc: FakeOidc,
    entra: FakeEntra,
}

impl Fakes {
    /// An issuer and an Entra tenant with a plain app, a lagging app, a blueprint and its agent.
    fn start() -> Self {
        let ca = TestCa::new();
        let oidc = FakeOidc::start(&ca);
        let entra = FakeEntra::start(&ca, &oidc, TENANT);
        let fic = Fic {
            issuer: oidc.issuer(),
            subject: SUBJECT.into(),
            audience: "api://AzureADTokenExchange".into(),
        };
        entra.add_app(APP, fic.clone());
        entra.add_fic_with_lag(LAGGING_APP, fic.clone(), 2);
        entra.add_app(BLUEPRINT, fic);
        entra.add_agent(BLUEPRINT, AGENT);
        Self { ca, oidc, entra }
    }

    fn config(&self) -> String {
        let authority = self.entra.authority();
        format!(
            r#"
[[credential]]
name = "gh"
source = "github-oidc"
audience = "api://AzureADTokenExchange"

[[credential]]
name = "azure-openai"
source = "entra"
tenant = "{TENANT}"
client_id = "{APP}"
scope = "{SCOPE}"
assertion = "gh"
authority = "{authority}"

[[credential]]
name = "lagging"
source = "entra"
tenant = "{TENANT}"
client_id = "{LAGGING_APP}"
scope = "{SCOPE}"
assertion = "gh"
authority = "{authority}"

[[credential]]
name = "agent"
source = "entra-agent"
tenant = "{TENANT}"
blueprint_client_id = "{BLUEPRINT}"
agent_client_id = "{AGENT}"
scope = "{SCOPE}"
assertion = "gh"
authority = "{authority}"

[[credential]]
name = "static-key"
source = "env"
var = "AZURE_OPENAI_KEY"
"#
        )
    }

    fn env(&self) -> SourceEnv {
        SourceEnv {
            spiffe_endpoint_socket: None,
            github_oidc: Some(GithubOidcEnv {
                request_url: self.oidc.request_url(),
                request_token: Secret::new(self.oidc.request_token()),
            }),
            vars: HashMap::from([(
                "AZURE_OPENAI_KEY".to_owned(),
                Secret::new("static-key-value\n"),
            )]),
        }
    }

    fn options(&self) -> BrokerOptions {
        BrokerOptions {
            extra_ca_pem: Some(self.ca.cert_pem().as_bytes().to_vec()),
            backoff_min: Duration::from_millis(200),
            ..BrokerOptions::default()
        }
    }

    fn broker(&self) -> Broker {
        self.broker_with(self.options())
    }

    fn broker_with(&self, options: BrokerOptions) -> Broker {
        let credentials = credentials(&self.config());
        Broker::with_options(&credentials, self.env(), options).unwrap()
    }

    fn outcomes(&self) -> Vec<(String, String)> {
        self.entra
            .calls()
            .into_iter()
            .map(|c| (c.client_id, c.outcome))
            .collect()
    }
}

fn credentials(toml: &str) -> Vec<Credential> {
    let mut builder = ConfigBuilder::new();
    builder.toml_str(toml, Path::new("egressd.toml")).unwrap();
    builder.build().unwrap().credentials
}

fn call(client: &str, outcome: &str) -> (String, String) {
    (client.to_owned(), outcome.to_owned())
}

/// The JSON payload of a JWT (not verified).
fn jwt_claims(jwt: &str) -> serde_json::Value {
    let payload = jwt.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn github_oidc_to_entra_for_azure_openai() {
    let fakes = Fakes::start();
    let broker = fakes.broker();
    let token = broker.get("azure-openai").await.unwrap();
    assert_eq!(token.source, "entra");
    assert_eq!(
        fakes.entra.issued(token.secret.expose()),
        Some((APP.to_owned(), SCOPE.to_owned()))
    );
    assert!(token.expires_in > Duration::from_secs(3500), "{token:?}");
    assert_eq!(
        fakes.oidc.audiences(),
        [Some("api://AzureADTokenExchange".to_owned())]
    );
    // Cached: no second exchange, no second JWT.
    let again = broker.get("azure-openai").await.unwrap();
    assert_eq!(again.secret.expose(), token.secret.expose());
    assert_eq!(fakes.entra.successes(APP), 1);
    assert_eq!(fakes.oidc.mints(), 1);
    // The token never shows in Debug.
    assert!(!format!("{token:?}").contains(token.secret.expose()));
}

#[tokio::test]
async fn github_oidc_to_blueprint_to_agent_identity() {
    let fakes = Fakes::start();
    let broker = fakes.broker();
    let token = broker.get("agent").await.unwrap();
    assert_eq!(token.source, "entra-agent");
    assert_eq!(
        fakes.entra.issued(token.secret.expose()),
        Some((AGENT.to_owned(), SCOPE.to_owned()))
    );
    let calls = fakes.entra.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(
        (calls[0].client_id.as_str(), calls[0].scope.as_str()),
        (BLUEPRINT, EXCHANGE_SCOPE)
    );
    assert_eq!(calls[0].fmi_path.as_deref(), Some(AGENT));
    assert_eq!(
        (calls[1].client_id.as_str(), calls[1].scope.as_str()),
        (AGENT, SCOPE)
    );
    assert_eq!(calls[1].fmi_path, None);
    assert!(calls.iter().all(|c| c.outcome == "ok"), "{calls:?}");
}

#[tokio::test]
async fn github_oidc_alone_gives_a_fresh_jwt() {
    let fakes = Fakes::start();
    let token = fakes.broker().get("gh").await.unwrap();
    assert_eq!(token.source, "github-oidc");
    assert!(token.expires_in <= Duration::from_secs(300));
    let claims = jwt_claims(token.secret.expose());
    assert_eq!(claims["aud"], "api://AzureADTokenExchange");
    assert_eq!(claims["sub"], SUBJECT);
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        300
    );
    assert_eq!(
        claims["iat"].as_u64().unwrap() - claims["nbf"].as_u64().unwrap(),
        600
    );
    assert_eq!(claims["repository_id"], "74", "IDs are strings");
}

#[tokio::test]
async fn concurrent_gets_at_expiry_cause_one_mint() {
    let fakes = Fakes::start();
    // 2 s tokens: refresh at ~1 s, never handed out after 1.5 s.
    fakes.entra.set_expires_in(Duration::from_secs(2));
    let broker = fakes.broker();
    let first = broker.get("azure-openai").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let gets: Vec<_> = (0..200)
        .map(|_| {
            let broker = broker.clone();
            tokio::spawn(async move { broker.get("azure-openai").await })
        })
        .collect();
    let mut secrets = Vec::new();
    for get in gets {
        secrets.push(get.await.unwrap().unwrap().secret.expose().to_owned());
    }
    secrets.dedup();
    assert_eq!(secrets.len(), 1, "every caller got the same new token");
    assert_ne!(secrets[0], first.secret.expose());
    assert_eq!(fakes.entra.successes(APP), 2);
    assert_eq!(fakes.oidc.mints(), 2, "a fresh JWT per exchange");
}

#[tokio::test]
async fn five_second_tokens_are_refreshed_early_and_never_expired() {
    let fakes = Fakes::start();
    fakes.entra.set_expires_in(Duration::from_secs(5));
    let broker = fakes.broker();
    let start = Instant::now();
    let mut seen: Vec<String> = Vec::new();
    while start.elapsed() < Duration::from_secs(6) {
        let token = broker.get("azure-openai").await.unwrap();
        assert!(token.expires_in >= Duration::from_millis(1200), "{token:?}");
        if seen.last().map(String::as_str) != Some(token.secret.expose()) {
            seen.push(token.secret.expose().to_owned());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Refreshed in the background at ~2.5 s and ~5 s: three tokens.
    assert!((3..=4).contains(&seen.len()), "{} tokens", seen.len());
    assert_eq!(fakes.entra.successes(APP), seen.len());
}

#[tokio::test]
async fn endpoint_down_fails_promptly_and_recovers() {
    let fakes = Fakes::start();
    let broker = fakes.broker();
    for down in [Down::Refuse, Down::Unavailable] {
        fakes.entra.set_down(Some(down));
        let start = Instant::now();
        let error = broker.get("azure-openai").await.unwrap_err();
        assert!(error.retryable, "{error}");
        assert_eq!(error.kind, TokenErrorKind::Unavailable);
        assert_eq!(error.credential, "azure-openai");
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        // During the backoff: the same error at once.
        let start = Instant::now();
        assert!(broker.get("azure-openai").await.is_err());
        assert!(start.elapsed() < Duration::from_millis(100));
        fakes.entra.set_down(None);
        // One failed mint (of three attempts): 200 ms ± 10 % of backoff, then a mint succeeds.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let token = broker.get("azure-openai").await.unwrap();
        assert!(fakes.entra.issued(token.secret.expose()).is_some());
        broker.invalidate("azure-openai");
    }
}

#[tokio::test]
async fn configuration_errors_fail_fast() {
    let fakes = Fakes::start();
    for (failure, code) in [
        (Failure::InvalidClient, "AADSTS7000215"),
        (Failure::InvalidScope, "AADSTS70011"),
        (Failure::SubjectMismatch, "AADSTS700213"),
    ] {
        let broker = fakes.broker();
        let calls = fakes.entra.calls().len();
        fakes.entra.inject(failure);
        let error = broker.get("azure-openai").await.unwrap_err();
        assert!(!error.retryable, "{error}");
        assert_eq!(error.kind, TokenErrorKind::Rejected);
        assert!(error.message.contains(code), "{error}");
        assert_eq!(
            fakes.entra.calls().len(),
            calls + 1,
            "no retry for {failure:?}"
        );
    }
    // A real subject mismatch, found by the fake from the JWT and the FIC table.
    fakes
        .oidc
        .set_subject("repo:octo-org/octo-repo:pull_request");
    let error = fakes.broker().get("azure-openai").await.unwrap_err();
    assert!(!error.retryable);
    assert!(error.message.contains("AADSTS700213"), "{error}");
    assert!(error.message.contains("subject"), "{error}");
    assert!(
        !error.message.contains("pull_request"),
        "the description stays in the log"
    );
}

#[tokio::test]
async fn expired_assertion_is_reminted_once() {
    let fakes = Fakes::start();
    fakes.entra.inject(Failure::AssertionExpired);
    let token = fakes.broker().get("azure-openai").await.unwrap();
    assert!(fakes.entra.issued(token.secret.expose()).is_some());
    assert_eq!(
        fakes.outcomes(),
        [call(APP, "AADSTS700024"), call(APP, "ok")]
    );
    assert_eq!(fakes.oidc.mints(), 2, "a new JWT for the retry");
}

#[tokio::test]
async fn fic_replication_lag_is_retried() {
    let fakes = Fakes::start();
    let token = fakes.broker().get("lagging").await.unwrap();
    assert_eq!(
        fakes.entra.issued(token.secret.expose()),
        Some((LAGGING_APP.to_owned(), SCOPE.to_owned()))
    );
    assert_eq!(
        fakes.outcomes(),
        [
            call(LAGGING_APP, "AADSTS70021"),
            call(LAGGING_APP, "AADSTS70021"),
            call(LAGGING_APP, "ok")
        ]
    );
}

#[tokio::test]
async fn transient_oidc_and_entra_failures_are_retried() {
    let fakes = Fakes::start();
    fakes.oidc.fail_next(1);
    fakes.entra.inject(Failure::Status(503));
    let token = fakes.broker().get("azure-openai").await.unwrap();
    assert!(fakes.entra.issued(token.secret.expose()).is_some());
    assert_eq!(fakes.outcomes(), [call(APP, "503"), call(APP, "ok")]);
}

#[tokio::test]
async fn expired_t1_is_reminted_for_the_agent_hop() {
    let fakes = Fakes::start();
    let broker = fakes.broker();
    broker.get("agent").await.unwrap();
    fakes.entra.expire_issued();
    broker.invalidate("agent");
    let token = broker.get("agent").await.unwrap();
    assert_eq!(
        fakes.entra.issued(token.secret.expose()),
        Some((AGENT.to_owned(), SCOPE.to_owned()))
    );
    assert_eq!(
        fakes.outcomes(),
        [
            call(BLUEPRINT, "ok"),
            call(AGENT, "ok"),
            call(AGENT, "AADSTS700024"),
            call(BLUEPRINT, "ok"),
            call(AGENT, "ok"),
        ]
    );
}

#[tokio::test]
async fn key_rotation_works_and_unknown_keys_are_refused() {
    let fakes = Fakes::start();
    let broker = fakes.broker();
    fakes.oidc.rotate_key();
    broker.get("azure-openai").await.unwrap();
    fakes.oidc.sign_with_unknown_key(true);
    let error = broker.get("lagging").await.unwrap_err();
    assert!(!error.retryable);
    assert!(error.message.contains("AADSTS700027"), "{error}");
}

#[tokio::test]
async fn token_endpoints_need_a_trusted_certificate() {
    let fakes = Fakes::start();
    let options = BrokerOptions {
        extra_ca_pem: None,
        attempts: 1,
        ..fakes.options()
    };
    let error = fakes.broker_with(options).get("gh").await.unwrap_err();
    assert_eq!(error.kind, TokenErrorKind::Unavailable);
    assert!(error.message.contains("TLS handshake"), "{error}");
    assert_eq!(fakes.oidc.mints(), 0);
}

#[tokio::test]
async fn static_secrets_from_env_and_root_only_files() {
    let fakes = Fakes::start();
    let broker = fakes.broker();
    let token = broker.get("static-key").await.unwrap();
    assert_eq!(token.secret.expose(), "static-key-value");
    assert_eq!((token.source, token.expires_in), ("env", Duration::MAX));

    let dir = std::env::temp_dir().join(format!("egressd-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("key");
    std::fs::write(&path, "file-secret\n").unwrap();
    let toml = format!(
        "[[credential]]\nname = \"k\"\nsource = \"file\"\npath = \"{}\"\n",
        path.display()
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let error = Broker::with_options(&credentials(&toml), SourceEnv::default(), fakes.options())
        .unwrap_err();
    assert!(error.to_string().contains("chmod 600"), "{error}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let broker =
        Broker::with_options(&credentials(&toml), SourceEnv::default(), fakes.options()).unwrap();
    let token = broker.get("k").await.unwrap();
    assert_eq!(
        (token.secret.expose(), token.source),
        ("file-secret", "file")
    );
    std::fs::remove_dir_all(&dir).unwrap();

    // A missing variable or missing GitHub variables fail when the broker is built.
    let mut env = fakes.env();
    env.vars.clear();
    let error =
        Broker::with_options(&credentials(&fakes.config()), env, fakes.options()).unwrap_err();
    assert_eq!(
        error.to_string(),
        "credential 'static-key': the daemon's environment has no variable AZURE_OPENAI_KEY: \
         set it for egressd"
    );
    let mut env = fakes.env();
    env.github_oidc = None;
    let error =
        Broker::with_options(&credentials(&fakes.config()), env, fakes.options()).unwrap_err();
    assert!(error.to_string().contains("id-token: write"), "{error}");
}

#[tokio::test]
async fn cache_keys_hold_no_secret() {
    let fakes = Fakes::start();
    let broker = fakes.broker();
    let mut secrets = vec![
        fakes.oidc.request_token().to_owned(),
        "static-key-value".to_owned(),
    ];
    for name in ["gh", "azure-openai", "agent", "static-key"] {
        secrets.push(broker.get(name).await.unwrap().secret.expose().to_owned());
    }
    let keys = broker.cache_keys();
    assert_eq!(keys.len(), 5, "{keys:?}");
    for key in &keys {
        for secret in &secrets {
            assert!(!key.contains(secret.as_str()), "{key} contains a secret");
        }
    }
    assert!(
        keys.iter()
            .any(|k| k.starts_with(&format!("entra|127.0.0.1|{TENANT}|{APP}|{SCOPE}"))),
        "{keys:?}"
    );
    assert!(format!("{broker:?}").contains("azure-openai"));
}
