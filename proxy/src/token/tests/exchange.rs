//! The generic exchange sources against the fakes of `egressd-tests` over real HTTPS on
//! loopback: GitHub OIDC → Google STS (→ IAM Credentials `generateAccessToken`), and GitHub
//! OIDC → AWS STS `AssumeRoleWithWebIdentity`. Real time; the longest test runs about 4.5 s.

use std::path::Path;

use egressd_config::ConfigBuilder;
use egressd_tests::TestCa;
use egressd_tests::fakes::{AwsFailure, FakeAwsSts, FakeGoogleSts, FakeOidc, GoogleFailure};

use super::super::*;

const PROVIDER: &str = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/gh-pool/providers/gh-provider";
const SA: &str = "sa@my-project.iam.gserviceaccount.com";
const ROLE: &str = "arn:aws:iam::123456789012:role/gha-bedrock";
const OTHER_ROLE: &str = "arn:aws:iam::123456789012:role/prod-only";
const SUBJECT: &str = "repo:octo-org/octo-repo:ref:refs/heads/main";

struct Fakes {
    ca: TestCa,
    oidc: FakeOidc,
    google: FakeGoogleSts,
    aws: FakeAwsSts,
}

impl Fakes {
    fn start() -> Self {
        let ca = TestCa::new();
        let oidc = FakeOidc::start(&ca);
        let google = FakeGoogleSts::start(&ca, &oidc, PROVIDER);
        google.allow_service_account(SA);
        let aws = FakeAwsSts::start(&ca, &oidc, "sts.amazonaws.com");
        aws.add_role(ROLE, Some(SUBJECT));
        aws.add_role(OTHER_ROLE, Some("repo:octo-org/octo-repo:environment:prod"));
        Self {
            ca,
            oidc,
            google,
            aws,
        }
    }

    fn config(&self) -> String {
        let (token_url, iam, jwt_aud, sts) = (
            self.google.token_url(),
            self.google.iam_credentials_url(),
            self.google.jwt_audience(),
            self.aws.endpoint(),
        );
        format!(
            r#"
[[credential]]
name = "gh-gcp"
source = "github-oidc"
audience = "{jwt_aud}"

[[credential]]
name = "gcp"
source = "oauth2-token-exchange"
audience = "{PROVIDER}"
subject_token = "gh-gcp"
token_url = "{token_url}"

[[credential]]
name = "gcp-sa"
source = "oauth2-token-exchange"
audience = "{PROVIDER}"
subject_token = "gh-gcp"
token_url = "{token_url}"
service_account = "{SA}"
iam_credentials_url = "{iam}"
lifetime = "600s"

[[credential]]
name = "gcp-other-sa"
source = "oauth2-token-exchange"
audience = "{PROVIDER}"
subject_token = "gh-gcp"
token_url = "{token_url}"
service_account = "other@my-project.iam.gserviceaccount.com"
iam_credentials_url = "{iam}"

[[credential]]
name = "gcp-wrong-audience"
source = "oauth2-token-exchange"
audience = "{PROVIDER}"
subject_token = "gh-aws"
token_url = "{token_url}"

[[credential]]
name = "gh-aws"
source = "github-oidc"
audience = "sts.amazonaws.com"

[[credential]]
name = "bedrock"
source = "aws-web-identity"
role_arn = "{ROLE}"
web_identity_token = "gh-aws"
endpoint = "{sts}"

[[credential]]
name = "prod"
source = "aws-web-identity"
role_arn = "{OTHER_ROLE}"
web_identity_token = "gh-aws"
endpoint = "{sts}"
duration = "15m"

[[credential]]
name = "wrong-audience"
source = "aws-web-identity"
role_arn = "{ROLE}"
web_identity_token = "gh-gcp"
endpoint = "{sts}"
"#
        )
    }

    fn broker(&self) -> Broker {
        let mut builder = ConfigBuilder::new();
        builder
            .toml_str(&self.config(), Path::new("egressd.toml"))
            .unwrap();
        let credentials = builder.build().unwrap().credentials;
        let env = SourceEnv {
            spiffe_endpoint_socket: None,
            github_oidc: Some(GithubOidcEnv {
                request_url: self.oidc.request_url(),
                request_token: Secret::new(self.oidc.request_token()),
            }),
            vars: HashMap::new(),
        };
        let options = BrokerOptions {
            extra_ca_pem: Some(self.ca.cert_pem().as_bytes().to_vec()),
            backoff_min: Duration::from_millis(200),
            ..BrokerOptions::default()
        };
        Broker::with_options(&credentials, env, options).unwrap()
    }

    fn google_outcomes(&self) -> Vec<(&'static str, String)> {
        self.google
            .calls()
            .into_iter()
            .map(|c| (c.endpoint, c.outcome))
            .collect()
    }

    fn aws_outcomes(&self) -> Vec<String> {
        self.aws.calls().into_iter().map(|c| c.outcome).collect()
    }
}

fn s(text: &str) -> String {
    text.to_owned()
}

#[tokio::test]
async fn github_oidc_to_google_sts() {
    let fakes = Fakes::start();
    let broker = fakes.broker();
    let token = broker.get("gcp").await.unwrap();
    assert_eq!(token.source, "oauth2-token-exchange");
    assert_eq!(
        fakes.google.issued(token.secret.expose()),
        Some(s("federated"))
    );
    assert_eq!(
        token.bearer().map(Secret::expose),
        Some(token.secret.expose())
    );
    assert!(token.aws.is_none());
    assert!(token.expires_in > Duration::from_secs(3500), "{token:?}");
    assert_eq!(fakes.oidc.audiences(), [Some(fakes.google.jwt_audience())]);
    let again = broker.get("gcp").await.unwrap();
    assert_eq!(again.secret.expose(), token.secret.expose());
    assert_eq!(fakes.google_outcomes(), [("sts", s("ok"))]);
    assert!(!fakes.google.calls()[0].json, "RFC 8693 form encoding");
}

#[tokio::test]
async fn github_oidc_to_google_sts_to_service_account() {
    let fakes = Fakes::start();
    let token = fakes.broker().get("gcp-sa").await.unwrap();
    assert_eq!(fakes.google.issued(token.secret.expose()), Some(s(SA)));
    // The requested lifetime, bounded by expireTime against the answer's Date.
    assert!(token.expires_in <= Duration::from_secs(600), "{token:?}");
    assert!(token.expires_in > Duration::from_secs(590), "{token:?}");
    assert_eq!(
        fakes.google_outcomes(),
        [("sts", s("ok")), ("generateAccessToken", s("ok"))]
    );
    // Not allowed to impersonate: a configuration error, not retried.
    let error = fakes.broker().get("gcp-other-sa").await.unwrap_err();
    assert!(!error.retryable, "{error}");
    assert_eq!(error.kind, TokenErrorKind::Rejected);
    assert!(error.message.contains("PERMISSION_DENIED"), "{error}");
    assert!(error.message.contains("workloadIdentityUser"), "{error}");
    assert!(
        !error.message.contains("iam.serviceAccounts"),
        "description in the log only"
    );
}

#[tokio::test]
async fn google_errors_are_classified() {
    let fakes = Fakes::start();
    fakes.google.inject(GoogleFailure::InvalidGrant);
    let error = fakes.broker().get("gcp").await.unwrap_err();
    assert!(!error.retryable, "{error}");
    assert_eq!(error.kind, TokenErrorKind::Rejected);
    assert!(
        error
            .message
            .contains("400 Bad Request invalid_grant: the subject token was refused"),
        "{error}"
    );
    assert!(!error.message.contains("attribute condition."), "{error}");
    assert_eq!(fakes.google.calls().len(), 1, "not retried");
    // Transient failures of either hop are retried.
    fakes.google.inject(GoogleFailure::Status(503));
    fakes.google.inject(GoogleFailure::Status(503));
    let token = fakes.broker().get("gcp-sa").await.unwrap();
    assert_eq!(fakes.google.issued(token.secret.expose()), Some(s(SA)));
    let outcomes: Vec<_> = fakes.google_outcomes().into_iter().skip(1).collect();
    assert_eq!(
        outcomes,
        [
            ("sts", s("503 UNAVAILABLE")),
            ("sts", s("503 UNAVAILABLE")),
            ("sts", s("ok")),
            ("generateAccessToken", s("ok"))
        ]
    );
    // A JWT for another audience, found by the fake from the JWT itself.
    let error = fakes.broker().get("gcp-wrong-audience").await.unwrap_err();
    assert!(!error.retryable, "{error}");
    assert!(error.message.contains("invalid_grant"), "{error}");
    assert!(
        !error.message.contains("ID Token"),
        "description in the log only"
    );
}

#[tokio::test]
async fn github_oidc_to_aws_sts() {
    let fakes = Fakes::start();
    let broker = fakes.broker();
    let token = broker.get("bedrock").await.unwrap();
    assert_eq!(token.source, "aws-web-identity");
    assert!(token.bearer().is_none(), "AWS keys are not a bearer token");
    assert_eq!(token.secret.expose(), "");
    let aws = token.aws.as_ref().unwrap();
    assert!(aws.access_key_id.expose().starts_with("ASIA"));
    assert_eq!(
        fakes.aws.issued(
            aws.access_key_id.expose(),
            aws.secret_access_key.expose(),
            aws.session_token.expose()
        ),
        Some(s(ROLE))
    );
    // The default hour, minus the mandatory window never handed out.
    assert!(token.expires_in > Duration::from_secs(3590), "{token:?}");
    let calls = fakes.aws.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].role_session_name, "egressd-bedrock");
    assert_eq!(calls[0].duration_seconds, Some(3600));
    assert!(!calls[0].json, "the documented XML is asked for");
    assert_eq!(fakes.oidc.audiences(), [Some(s("sts.amazonaws.com"))]);
    // Cached; and no part of the keys shows in Debug.
    let again = broker.get("bedrock").await.unwrap();
    assert_eq!(
        again.aws.as_ref().unwrap().session_token.expose(),
        aws.session_token.expose()
    );
    assert_eq!(fakes.aws.successes(), 1);
    let shown = format!("{token:?} {broker:?}");
    for part in [
        &aws.access_key_id,
        &aws.secret_access_key,
        &aws.session_token,
    ] {
        assert!(!shown.contains(part.expose()), "{shown}");
    }
}

#[tokio::test]
async fn aws_expired_web_identity_is_reminted_once_and_transient_errors_retried() {
    let fakes = Fakes::start();
    fakes.aws.inject(AwsFailure::ExpiredToken);
    fakes.broker().get("bedrock").await.unwrap();
    assert_eq!(fakes.aws_outcomes(), [s("ExpiredTokenException"), s("ok")]);
    assert_eq!(fakes.oidc.mints(), 2, "a new JWT for the retry");

    fakes.aws.inject(AwsFailure::IdpCommunicationError);
    fakes.aws.inject(AwsFailure::Status(429));
    fakes.broker().get("bedrock").await.unwrap();
    assert_eq!(
        fakes.aws_outcomes()[2..],
        [s("IDPCommunicationError"), s("Throttling"), s("ok")]
    );
}

#[tokio::test]
async fn aws_configuration_errors_fail_fast() {
    let fakes = Fakes::start();
    let broker = fakes.broker();
    // The role's trust policy wants another subject.
    let error = broker.get("prod").await.unwrap_err();
    assert!(!error.retryable, "{error}");
    assert_eq!(error.kind, TokenErrorKind::Rejected);
    assert!(
        error
            .message
            .starts_with("AWS STS answered 403 Forbidden AccessDenied: the role's trust policy"),
        "{error}"
    );
    assert!(
        !error.message.contains(SUBJECT),
        "the Message stays in the log"
    );
    // A JWT for another audience.
    let error = broker.get("wrong-audience").await.unwrap_err();
    assert!(!error.retryable, "{error}");
    assert!(error.message.contains("InvalidIdentityToken"), "{error}");
    assert_eq!(
        fakes.aws_outcomes(),
        [s("AccessDenied"), s("InvalidIdentityToken")],
        "neither is retried"
    );
    // An unknown kid.
    fakes.oidc.sign_with_unknown_key(true);
    let error = fakes.broker().get("bedrock").await.unwrap_err();
    assert!(error.message.contains("InvalidIdentityToken"), "{error}");
}

#[tokio::test]
async fn aws_keys_are_refreshed_in_botocores_windows() {
    let fakes = Fakes::start();
    // 4 s keys: background refresh at ~3 s (ttl/4 before expiry), never handed out in the
    // last ~0.67 s (ttl/6).
    fakes.aws.set_expires_in(Duration::from_secs(4));
    let broker = fakes.broker();
    let start = Instant::now();
    let mut seen: Vec<String> = Vec::new();
    while start.elapsed() < Duration::from_millis(4500) {
        let token = broker.get("bedrock").await.unwrap();
        assert!(token.expires_in >= Duration::from_millis(600), "{token:?}");
        assert!(token.expires_in <= Duration::from_secs(4), "{token:?}");
        let key = token.aws.unwrap().access_key_id.expose().to_owned();
        if seen.last() != Some(&key) {
            seen.push(key);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen.len(), 2, "refreshed once, in the background");
    assert_eq!(fakes.aws.successes(), 2);
}

#[tokio::test]
async fn cache_keys_hold_no_secret_and_follow_the_reference() {
    let fakes = Fakes::start();
    let broker = fakes.broker();
    let mut secrets = vec![fakes.oidc.request_token().to_owned()];
    for name in ["gcp", "gcp-sa", "bedrock"] {
        let token = broker.get(name).await.unwrap();
        secrets.push(token.secret.expose().to_owned());
        if let Some(aws) = token.aws {
            for part in [aws.access_key_id, aws.secret_access_key, aws.session_token] {
                secrets.push(part.expose().to_owned());
            }
        }
    }
    let keys = broker.cache_keys();
    for key in &keys {
        for secret in secrets.iter().filter(|s| !s.is_empty()) {
            assert!(!key.contains(secret.as_str()), "{key} contains a secret");
        }
    }
    let port = fakes
        .aws
        .endpoint()
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    let aws_prefix = format!("aws-web-identity|127.0.0.1:{port}|{ROLE}|egressd-bedrock|3600|");
    assert!(keys.iter().any(|k| k.starts_with(&aws_prefix)), "{keys:?}");
    assert!(
        keys.iter().any(
            |k| k.starts_with("oauth2-token-exchange|127.0.0.1/v1/token|")
                && k.ends_with(&format!("|{SA}|600"))
        ),
        "{keys:?}"
    );
    // The same exchange presenting another identity has a slot of its own.
    let gcp: Vec<_> = keys
        .iter()
        .filter(|k| k.starts_with("oauth2-token-exchange") && !k.contains('@'))
        .collect();
    assert_eq!(gcp.len(), 2, "{keys:?}");
}

#[tokio::test]
async fn aws_keys_cannot_be_presented_as_a_token() {
    let fakes = Fakes::start();
    let toml = format!(
        "{}\n[[credential]]\nname = \"chained\"\nsource = \"oauth2-token-exchange\"\n\
         audience = \"a\"\nsubject_token = \"bedrock\"\n",
        fakes.config()
    );
    let mut builder = ConfigBuilder::new();
    builder.toml_str(&toml, Path::new("egressd.toml")).unwrap();
    let credentials = builder.build().unwrap().credentials;
    let error = Broker::with_options(&credentials, SourceEnv::default(), BrokerOptions::default())
        .unwrap_err();
    assert!(
        error.to_string().contains("ACTIONS_ID_TOKEN_REQUEST_URL"),
        "{error}"
    );
    let env = SourceEnv {
        spiffe_endpoint_socket: None,
        github_oidc: Some(GithubOidcEnv {
            request_url: fakes.oidc.request_url(),
            request_token: Secret::new("t"),
        }),
        vars: HashMap::new(),
    };
    let error = Broker::with_options(&credentials, env, BrokerOptions::default()).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("credential 'bedrock': AWS keys sign requests"),
        "{error}"
    );
}
