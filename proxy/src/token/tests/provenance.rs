//! Provenance: the run's OIDC token verified against the fake issuer's discovery and JWKS
//! (good token; wrong issuer, audience, times, key, signature, algorithm refused), and
//! per-actor credentials selected by the verified `actor_id` only.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use egressd_config::ConfigBuilder;
use egressd_tests::TestCa;
use egressd_tests::fakes::FakeOidc;

use crate::token::http::TokenHttp;
use crate::token::provenance::{Expected, ProvenanceError, Verifier, establish};
use crate::token::{
    Broker, BrokerOptions, GithubOidcEnv, Provenance, Secret, SourceEnv, TokenErrorKind,
};

struct Issuer {
    ca: TestCa,
    oidc: FakeOidc,
    expected: Expected,
}

impl Issuer {
    fn start() -> Self {
        let ca = TestCa::new();
        let oidc = FakeOidc::start(&ca);
        oidc.set_claim("actor", "octocat".into());
        oidc.set_claim("actor_id", "583231".into());
        let expected = Expected {
            issuer: oidc.issuer(),
            audience: "egressd".to_owned(),
        };
        Self { ca, oidc, expected }
    }

    fn env(&self) -> GithubOidcEnv {
        GithubOidcEnv {
            request_url: self.oidc.request_url(),
            request_token: Secret::new(self.oidc.request_token()),
        }
    }

    fn pem(&self) -> Option<&[u8]> {
        Some(self.ca.cert_pem().as_bytes())
    }

    /// Verifies `jwt` as [`establish`] would after minting it.
    async fn verify(&self, jwt: &str) -> Result<Provenance, ProvenanceError> {
        let http = TokenHttp::new(self.pem(), Duration::from_secs(5)).unwrap();
        let verifier = Verifier {
            http,
            expected: &self.expected,
        };
        verifier.verify(&Secret::new(jwt)).await
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[track_caller]
fn invalid(result: Result<Provenance, ProvenanceError>, says: &str) {
    match result {
        Err(ProvenanceError::Invalid(why)) => assert!(why.contains(says), "{why}"),
        other => panic!("expected a verification failure saying {says:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn a_good_token_gives_its_signed_claims() {
    let i = Issuer::start();
    let p = establish(&i.env(), &i.expected, i.pem(), Default::default())
        .await
        .unwrap();
    assert_eq!(p.actor, "octocat");
    assert_eq!(p.actor_id, "583231");
    assert_eq!(p.repository, "octo-org/octo-repo");
    assert_eq!(p.repository_id.as_deref(), Some("74"));
    assert_eq!(p.run_id, "1234567890");
    assert_eq!(p.run_attempt.as_deref(), Some("1"));
    assert_eq!(p.git_ref.as_deref(), Some("refs/heads/main"));
    assert_eq!(p.event_name.as_deref(), Some("push"));
    assert!(
        p.job_workflow_ref
            .unwrap()
            .ends_with("ci.yml@refs/heads/main")
    );
    assert_eq!(p.issuer, i.oidc.issuer());
    // Minted once, for the dedicated audience.
    assert_eq!(i.oidc.audiences(), [Some("egressd".to_owned())]);
    // Within the leeway: expired 30 s ago is still accepted.
    assert!(
        i.verify(&i.oidc.mint_at("egressd", now() - 330))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_token_from_another_issuer_is_refused_before_anything_is_fetched() {
    let mut i = Issuer::start();
    i.expected.issuer = "https://token.actions.githubusercontent.com".to_owned();
    let jwt = i.oidc.mint_at("egressd", now());
    // The expected issuer is not reachable from here: refusing must not need it.
    invalid(i.verify(&jwt).await, "not by the expected");

    let i = Issuer::start();
    i.oidc.set_issuer("https://token.actions.evil.ghe.com");
    invalid(
        i.verify(&i.oidc.mint_at("egressd", now())).await,
        "issued by https://token.actions.evil.ghe.com",
    );
}

#[tokio::test]
async fn wrong_audience_and_times_outside_the_leeway_are_refused() {
    let i = Issuer::start();
    invalid(
        i.verify(&i.oidc.mint_at("api://AzureADTokenExchange", now()))
            .await,
        "audience",
    );
    invalid(
        i.verify(&i.oidc.mint_at("egressd", now() - 400)).await,
        "expired",
    );
    invalid(
        i.verify(&i.oidc.mint_at("egressd", now() + 300)).await,
        "in the future",
    );
}

#[tokio::test]
async fn an_unknown_key_or_a_tampered_token_is_refused() {
    let i = Issuer::start();
    i.oidc.sign_with_unknown_key(true);
    invalid(
        i.verify(&i.oidc.mint_at("egressd", now())).await,
        "does not publish",
    );
    i.oidc.sign_with_unknown_key(false);

    // Someone else's actor_id in a validly signed token's payload.
    let jwt = i.oidc.mint_at("egressd", now());
    let parts: Vec<&str> = jwt.split('.').collect();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["actor_id"] = "1".into();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    );
    invalid(i.verify(&forged).await, "signature does not verify");
}

#[tokio::test]
async fn alg_none_and_hmac_confusion_are_refused() {
    let i = Issuer::start();
    let jwt = i.oidc.mint_at("egressd", now());
    let payload = jwt.split('.').nth(1).unwrap();
    let none = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT","kid":"key-0"}"#);
    invalid(i.verify(&format!("{none}.{payload}.")).await, "not a JWT");

    // HS256 keyed with the issuer's public key material (the classic confusion attack).
    let jwks: serde_json::Value = {
        let http = TokenHttp::new(i.pem(), Duration::from_secs(5)).unwrap();
        let url = url::Url::parse(&format!("{}/.well-known/jwks", i.oidc.issuer())).unwrap();
        serde_json::from_slice(&http.get(&url).await.unwrap().body).unwrap()
    };
    let n = jwks["keys"][0]["n"].as_str().unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("key-0".to_owned());
    let hs256 = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(n.as_bytes()),
    )
    .unwrap();
    invalid(i.verify(&hs256).await, "HS256");
}

#[tokio::test]
async fn keys_are_only_taken_from_the_issuers_own_host() {
    let i = Issuer::start();
    i.oidc
        .set_jwks_uri(Some("https://127.0.0.2:1/.well-known/jwks"));
    match i.verify(&i.oidc.mint_at("egressd", now())).await {
        Err(ProvenanceError::Keys(why)) => assert!(why.contains("away from the issuer"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_refused_request_token_is_a_mint_error() {
    let i = Issuer::start();
    let env = GithubOidcEnv {
        request_token: Secret::new("not-the-request-token"),
        ..i.env()
    };
    match establish(&env, &i.expected, i.pem(), Default::default()).await {
        Err(ProvenanceError::Mint(why)) => assert!(why.contains("401"), "{why}"),
        other => panic!("{other:?}"),
    }
}

// === per-actor selection ===

fn actors_table(dir: &Path, text: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("actors.toml");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn per_actor_broker(table: &Path, provenance: Option<Provenance>) -> Result<Broker, String> {
    let mut builder = ConfigBuilder::new();
    builder
        .toml_str(
            &format!(
                "[[credential]]\nname = \"team\"\nsource = \"env\"\nvar = \"TEAM_KEY\"\n\n\
                 [[credential]]\nname = \"mine\"\nsource = \"per-actor\"\ntable = \"{}\"\n",
                table.display()
            ),
            Path::new("egressd.toml"),
        )
        .unwrap();
    let credentials = builder.build().unwrap().credentials;
    let env = SourceEnv {
        spiffe_endpoint_socket: None,
        github_oidc: None,
        vars: HashMap::from([
            ("TEAM_KEY".to_owned(), Secret::new("team-secret")),
            ("OCTOCAT_KEY".to_owned(), Secret::new("octocat-secret")),
        ]),
    };
    let options = BrokerOptions {
        provenance,
        ..BrokerOptions::default()
    };
    Broker::with_options(&credentials, env, options).map_err(|e| e.to_string())
}

#[tokio::test]
async fn per_actor_credentials_follow_the_verified_actor_id_only() {
    let dir = std::env::temp_dir().join(format!("egressd-per-actor-{}", std::process::id()));
    let secret = dir.join("hubot.key");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(&secret, "hubot-secret\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let table = actors_table(
        &dir,
        "583231 = { env = \"OCTOCAT_KEY\" }\n12 = { file = \"hubot.key\" }\n\
         99 = { credential = \"team\" }\n3 = { env = \"UNSET_KEY\" }\n",
    );
    let get = |who: Option<Provenance>| {
        let broker = per_actor_broker(&table, who).unwrap();
        async move { broker.get("mine").await }
    };
    let token = get(Some(Provenance::for_tests("octocat", "583231")))
        .await
        .unwrap();
    assert_eq!(token.secret.expose(), "octocat-secret");
    let token = get(Some(Provenance::for_tests("hubot", "12")))
        .await
        .unwrap();
    assert_eq!(token.secret.expose(), "hubot-secret");
    let token = get(Some(Provenance::for_tests("team-member", "99")))
        .await
        .unwrap();
    assert_eq!(token.secret.expose(), "team-secret");

    // The login is never the key: a user named like another gets nothing of theirs.
    let error = get(Some(Provenance::for_tests("octocat", "7")))
        .await
        .unwrap_err();
    assert_eq!(error.kind, TokenErrorKind::Forbidden);
    assert!(!error.retryable);
    assert_eq!(error.credential, "mine");
    assert!(
        error
            .message
            .contains("no credential for actor octocat (id 7)"),
        "{error}"
    );
    let error = get(None).await.unwrap_err();
    assert_eq!(error.kind, TokenErrorKind::Forbidden);
    assert!(
        error.message.contains("triggering user is unknown"),
        "{error}"
    );

    // Only the selected user's secret must exist; theirs missing is a start-up error.
    let why = per_actor_broker(&table, Some(Provenance::for_tests("x", "3"))).unwrap_err();
    assert!(why.contains("UNSET_KEY"), "{why}");

    // A table naming a credential that does not exist is refused at start.
    let bad = actors_table(&dir.join("bad"), "1 = { credential = \"nope\" }\n");
    let why = per_actor_broker(&bad, None).unwrap_err();
    assert!(why.contains("'nope'"), "{why}");
    std::fs::remove_dir_all(&dir).unwrap();
}
