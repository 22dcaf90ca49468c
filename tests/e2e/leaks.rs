//! The leak matrix: for each kind of injected credential (a static key in a header, an Entra
//! bearer token, SigV4 with a session token, a Copilot token), an upstream that echoes the
//! request in every form it can (plain, gzip-negotiated, chunked, server-sent events, response
//! headers, URL-encoded, JSON-escaped, base64 as a Basic credential, WebSocket frames and the
//! 101's headers) never hands the sandbox the credential. Each kind also shows that the same
//! echo, asked directly with the credential egressd sent, does reveal it (so the test can
//! fail). Path tricks are in `intercept.rs` (`path_tricks_never_carry_...`).

use std::fs;

use base64::Engine as _;
use egressd_tests::fakes::{FakeAwsSts, FakeCopilot, FakeEntra, FakeOidc, Fic};
use egressd_tests::{API, Output, Scene, privileged};

const MARKER: &str = "[token redacted by egressd]";

/// The sandbox's part: the echo in every framing, then over a WebSocket.
fn echo_script(s: &Scene) -> String {
    format!(
        "for q in forms 'forms&chunked' 'forms&sse'; do \
           curl -sS --max-time 20 --compressed -D - \"https://{API}/echo-headers?$q\"; echo; \
         done; \
         {probe} websocket wss://{API}/ws echo-credentials",
        probe = s.probe.display()
    )
}

/// Every form of `secret` an echo may carry.
fn forms(secret: &str) -> Vec<String> {
    let url: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let json = secret.replace('/', "\\/");
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("user:{secret}"));
    // The run of the Basic credential that is the secret's alone ("user:" is 5 bytes).
    let basic_secret = basic[8..basic.len() - 4].to_owned();
    vec![secret.to_owned(), url, json, basic_secret]
}

/// The sandbox saw none of the forms of `secret`, and the echoes it got were scrubbed; the
/// same echo asked directly with `header: value` (what egressd sent) reveals every form.
#[track_caller]
fn assert_never_revealed(s: &Scene, out: &Output, header: &str, value: &str, secret: &str) {
    out.assert_success();
    let seen = format!("{}\n{}", out.stdout, out.stderr);
    for form in forms(secret) {
        assert!(!seen.contains(&form), "the sandbox saw {form:?}\n{out}");
    }
    // Three bodies with the forms, their x-echo- headers, the 101 and a frame.
    let scrubbed = seen.matches(MARKER).count();
    assert!(scrubbed >= 3 * 5, "only {scrubbed} redactions\n{out}");
    let ws = crate::probe_line(out, "websocket");
    assert_eq!(ws["status"], 101, "{ws}\n{out}");
    for field in ["echo", "echoed_in_101"] {
        assert!(
            ws[field].as_str().unwrap_or_default().contains(MARKER),
            "{field}: {ws}"
        );
    }
    // Control: the upstream reveals all of it to whoever sends the credential.
    for q in ["forms", "forms&chunked", "forms&sse"] {
        let direct = std::process::Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "--compressed",
                "-D",
                "-",
                "--cacert",
            ])
            .arg(&s.ca_pem)
            .arg("--resolve")
            .arg(format!("{API}:443:{}", s.net.addr()))
            .args(["-H", &format!("{header}: {value}")])
            .arg(format!("https://{API}/echo-headers?{q}"))
            .output()
            .unwrap();
        let direct = String::from_utf8_lossy(&direct.stdout);
        for form in forms(secret) {
            assert!(
                direct.contains(&form),
                "control {q}: no {form:?} in\n{direct}"
            );
        }
    }
}

/// The one value of `name` the upstream received (it must have received it).
#[track_caller]
fn received(s: &Scene, name: &str, out: &Output) -> String {
    s.api
        .credentials()
        .into_iter()
        .find(|(_, n, _)| n == name)
        .map(|(_, _, v)| v)
        .unwrap_or_else(|| panic!("the upstream got no {name}\n{out}"))
}

#[test]
fn a_static_key_is_never_echoed_back_in_any_form() {
    if !privileged() {
        return;
    }
    const KEY: &str = "sk/static+key=0123456789abcdef";
    let s = Scene::new();
    let config = s.scratch.write(
        "static.toml",
        format!(
            "upstream_ca = \"{ca}\"\n\n[[credential]]\nname = \"key\"\nsource = \"env\"\n\
             var = \"EGRESSD_TEST_API_KEY\"\n\n[[intercept]]\nhost = \"{API}\"\n\
             credential = \"key\"\nheader = \"api-key\"\nformat = \"{{token}}\"\n",
            ca = s.ca_pem.display()
        ),
    );
    let out = s
        .egressd()
        .arg("--config")
        .arg(&config)
        .env("EGRESSD_TEST_API_KEY", KEY)
        .sh(&echo_script(&s))
        .run();
    assert_eq!(received(&s, "api-key", &out), KEY);
    assert_never_revealed(&s, &out, "api-key", KEY, KEY);
}

#[test]
fn an_entra_token_is_never_echoed_back_in_any_form() {
    if !privileged() {
        return;
    }
    const TENANT: &str = "00000000-0000-0000-0000-0000000000aa";
    const APP: &str = "11111111-2222-3333-4444-555555555555";
    let s = Scene::new();
    let oidc = FakeOidc::start(&s.ca);
    let entra = FakeEntra::start(&s.ca, &oidc, TENANT);
    entra.add_app(
        APP,
        Fic {
            issuer: oidc.issuer(),
            subject: "repo:octo-org/octo-repo:ref:refs/heads/main".into(),
            audience: "api://AzureADTokenExchange".into(),
        },
    );
    let config = s.scratch.write(
        "entra.toml",
        format!(
            r#"upstream_ca = "{ca}"

[[credential]]
name = "github"
source = "github-oidc"
audience = "api://AzureADTokenExchange"

[[credential]]
name = "entra"
source = "entra"
tenant = "{TENANT}"
client_id = "{APP}"
scope = "https://cognitiveservices.azure.com/.default"
assertion = "github"
authority = "{authority}"

[[intercept]]
host = "{API}"
credential = "entra"
"#,
            ca = s.ca_pem.display(),
            authority = entra.authority()
        ),
    );
    let out = s
        .egressd()
        .arg("--config")
        .arg(&config)
        .env("ACTIONS_ID_TOKEN_REQUEST_URL", oidc.request_url())
        .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", oidc.request_token())
        .sh(&echo_script(&s))
        .run();
    let value = received(&s, "authorization", &out);
    let token = value.strip_prefix("Bearer ").unwrap_or(&value).to_owned();
    assert!(entra.issued(&token).is_some(), "{value}\n{out}");
    assert_never_revealed(&s, &out, "authorization", &value, &token);
}

#[test]
fn a_sigv4_session_token_is_never_echoed_back_in_any_form() {
    if !privileged() {
        return;
    }
    const ROLE: &str = "arn:aws:iam::123456789012:role/gha-bedrock";
    let s = Scene::new();
    let oidc = FakeOidc::start(&s.ca);
    let sts = FakeAwsSts::start(&s.ca, &oidc, "sts.amazonaws.com");
    sts.add_role(ROLE, None);
    let config = s.scratch.write(
        "aws.toml",
        format!(
            r#"upstream_ca = "{ca}"

[[credential]]
name = "github-aws"
source = "github-oidc"
audience = "sts.amazonaws.com"

[[credential]]
name = "bedrock"
source = "aws-web-identity"
role_arn = "{ROLE}"
web_identity_token = "github-aws"
endpoint = "{endpoint}"

[[intercept]]
host = "{API}"
credential = "bedrock"
sign = "aws-sigv4"
region = "us-east-1"
service = "bedrock"
"#,
            ca = s.ca_pem.display(),
            endpoint = sts.endpoint(),
        ),
    );
    let out = s
        .egressd()
        .arg("--config")
        .arg(&config)
        .env("ACTIONS_ID_TOKEN_REQUEST_URL", oidc.request_url())
        .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", oidc.request_token())
        .sh(&echo_script(&s))
        .run();
    let token = received(&s, "x-amz-security-token", &out);
    assert_never_revealed(&s, &out, "x-amz-security-token", &token, &token);
}

#[test]
fn a_copilot_token_is_never_echoed_back_in_any_form() {
    if !privileged() {
        return;
    }
    const HELD: &str = "gho_0123456789abcdef0123456789abcdef0123";
    let s = Scene::new();
    let fake = FakeCopilot::start(&s.ca);
    fake.add_github_token(HELD);
    let config = s.scratch.write(
        "copilot.toml",
        format!(
            r#"upstream_ca = "{ca}"

[[credential]]
name = "gh"
source = "env"
var = "EGRESSD_TEST_GH_TOKEN"

[[credential]]
name = "copilot-here"
source = "copilot"
github_token = "gh"
api_url = "{api}"

[[intercept]]
host = "{API}"
credential = "copilot-here"
format = "{{scheme}} {{token}}"
"#,
            ca = s.ca_pem.display(),
            api = fake.api_url()
        ),
    );
    let out = s
        .egressd()
        .arg("--config")
        .arg(&config)
        .env("EGRESSD_TEST_GH_TOKEN", HELD)
        .sh(&echo_script(&s))
        .run();
    let value = received(&s, "authorization", &out);
    let token = value
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .to_owned();
    assert!(fake.issued(&token), "{value}\n{out}");
    assert!(
        !fs::read_to_string(&s.audit_log)
            .unwrap_or_default()
            .contains(&token),
        "the token is in the audit log"
    );
    assert_never_revealed(&s, &out, "authorization", &value, &token);
}
