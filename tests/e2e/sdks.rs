//! Real vendor SDKs in `egressd exec` sandboxes: the official OpenAI Python SDK's
//! `AzureOpenAI`, the Anthropic Python SDK and boto3's `bedrock-runtime`, each configured only
//! with a placeholder credential, call a fake of their vendor's API (`fakes::FakeModelApi`,
//! in the test's upstream namespace) through egressd's TLS interception. egressd mints the
//! real credential (GitHub OIDC -> Entra; GitHub OIDC -> Anthropic workload identity
//! federation; GitHub OIDC -> STS `AssumeRoleWithWebIdentity` keys that re-sign the request
//! with SigV4), and the SDK never sees it.
//!
//! Each test checks what the SDK printed (the fake model's answer, streamed chunks in order
//! and spread over time as produced), what the fake upstream saw (only egressd's credential),
//! that the token endpoints were used, and that the sandbox's environment holds placeholders
//! only. Each SDK also has a control: the same calls with the host intercepted but no
//! credential rule are refused by the fake (the placeholder is not a credential), so the
//! fakes really check.
//!
//! The SDKs live in the venv `cargo xtask setup` makes ([`PYTHON`]); the scripts run as the
//! sandbox user (65534) with a `HOME` it owns.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

use egressd_tests::fakes::{
    AwsKey, CHUNK_GAP, FakeAnthropicWif, FakeAwsSts, FakeEntra, FakeModelApi, FakeOidc,
    FederationRule, Fic, ModelCall,
};
use egressd_tests::{EgressdCommand, Output, Scene, privileged};
use serde_json::Value;

/// The Python of the venv `cargo xtask setup` fills with `openai`, `anthropic` and `boto3`.
const PYTHON: &str = "/opt/egressd-tests/venv/bin/python";

/// The sandbox user of the tests (`EgressdCommand`'s default `--user`).
const SANDBOX_UID: u32 = 65534;

/// The subject of the fake GitHub OIDC token (`FakeOidc`'s default).
const SUBJECT: &str = "repo:octo-org/octo-repo:ref:refs/heads/main";

/// What the python scripts share: JSON lines on stdout (`step` names what each is), times
/// in milliseconds since the script started, and a dump of the environment the SDK ran in.
const PRELUDE: &str = r#"
import json, os, sys, time
T0 = time.monotonic()

def out(step, **fields):
    fields["step"] = step
    fields["t_ms"] = round((time.monotonic() - T0) * 1000, 1)
    print(json.dumps(fields), flush=True)

def dump_env():
    out("env", env=dict(os.environ))
"#;

/// Checks that the venv holds `module`; fails with the fix otherwise.
fn require_sdk(module: &str) {
    let status = std::process::Command::new(PYTHON)
        .args(["-c", &format!("import {module}")])
        .status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "{PYTHON} cannot import {module}: run `cargo xtask setup`, which makes the venv \
         /opt/egressd-tests/venv with the vendor SDKs"
    );
}

/// A `HOME` for the sandbox user in the scene's scratch directory, owned by that user.
fn sandbox_home(s: &Scene) -> PathBuf {
    let home = s.scratch.path("home");
    fs::create_dir_all(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(SANDBOX_UID), Some(SANDBOX_UID)).unwrap();
    home
}

/// Writes `body` (after [`PRELUDE`]) as `name` in the scratch directory; returns the
/// `sh -c` line that runs it with `args`, after exporting `HOME` and `exports`.
fn python(s: &Scene, name: &str, body: &str, exports: &str, args: &[&str]) -> String {
    let script = s.scratch.write(name, format!("{PRELUDE}\n{body}"));
    let home = sandbox_home(s);
    format!(
        "export HOME='{}' {exports}; exec {PYTHON} {} {}",
        home.display(),
        script.display(),
        args.join(" ")
    )
}

/// The JSON lines the script printed with `step`.
fn steps(out: &Output, step: &str) -> Vec<Value> {
    out.json_lines()
        .into_iter()
        .filter(|l| l["step"] == step)
        .collect()
}

/// The one JSON line with `step`; fails with the whole run otherwise.
#[track_caller]
fn step(out: &Output, step: &str) -> Value {
    let mut found = steps(out, step);
    assert_eq!(
        found.len(),
        1,
        "expected one {step:?} line from the SDK script\n{out}"
    );
    found.remove(0)
}

/// The streamed chunks the script printed, in order, and checks that they spread over time
/// as the fake produced them (buffered anywhere, they would arrive together).
#[track_caller]
fn assert_streamed(out: &Output, expected: &[String]) {
    let chunks = steps(out, "chunk");
    let texts: Vec<&str> = chunks.iter().filter_map(|c| c["text"].as_str()).collect();
    assert_eq!(
        texts, expected,
        "every chunk of the fake model's answer, in order\n{out}"
    );
    let times: Vec<f64> = chunks.iter().filter_map(|c| c["t_ms"].as_f64()).collect();
    let spread = times[times.len() - 1] - times[0];
    let produced = CHUNK_GAP.as_secs_f64() * 1000.0 * (expected.len() - 1) as f64;
    assert!(
        spread >= produced / 2.0,
        "the chunks arrived within {spread} ms although the fake took {produced} ms to produce \
         them: the stream was buffered on the way\n{out}"
    );
}

/// The sandbox's environment, as the SDK's process saw it.
#[track_caller]
fn sandbox_env(out: &Output) -> serde_json::Map<String, Value> {
    step(out, "env")["env"]
        .as_object()
        .cloned()
        .unwrap_or_else(|| panic!("no environment dump\n{out}"))
}

/// No secret is in the sandbox's environment nor in anything the SDK printed; the
/// environment names egressd's trust bundle, and holds no GitHub OIDC request variables
/// and no JWT.
#[track_caller]
fn assert_no_secrets(out: &Output, secrets: &[String]) {
    let env = sandbox_env(out);
    for (name, value) in &env {
        let value = crate::text(value);
        assert!(
            !name.starts_with("ACTIONS_ID_TOKEN"),
            "{name} reached the sandbox\n{out}"
        );
        // A variable the test process has with the same value came from outside, not from
        // egressd (a CI runner's own settings): only the others can be a leaked JWT.
        let inherited = std::env::var(name).is_ok_and(|v| v == value);
        assert!(
            inherited || !value.contains("eyJ"),
            "{name} holds what looks like a JWT: {value}\n{out}"
        );
        for secret in secrets.iter().filter(|s| !s.is_empty()) {
            assert!(
                !value.contains(secret.as_str()),
                "{name} holds a secret\n{out}"
            );
        }
    }
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        assert!(
            !out.stdout.contains(secret.as_str()),
            "the sandbox printed a secret\n{out}"
        );
    }
    let bundle = env
        .get("SSL_CERT_FILE")
        .map(crate::text)
        .unwrap_or_default();
    assert!(
        bundle.starts_with("/run/egressd/"),
        "SSL_CERT_FILE does not name egressd's bundle: {bundle:?}\n{out}"
    );
}

/// The fake's calls, each with exactly one credential header `authorization: Bearer <t>`;
/// returns the tokens.
#[track_caller]
fn bearer_tokens(calls: &[ModelCall], out: &Output) -> Vec<String> {
    calls
        .iter()
        .map(|call| {
            assert_eq!(call.status, 200, "{call:?}\n{out}");
            assert_eq!(
                call.credentials.len(),
                1,
                "exactly egressd's header, none of the SDK's: {call:?}\n{out}"
            );
            let (name, value) = &call.credentials[0];
            assert_eq!(name, "authorization", "{call:?}\n{out}");
            assert!(!value.contains("placeholder"), "{call:?}\n{out}");
            value
                .strip_prefix("Bearer ")
                .unwrap_or_else(|| panic!("not a bearer token: {call:?}\n{out}"))
                .to_owned()
        })
        .collect()
}

/// The audit records of the intercepted requests whose path starts with `path_start`;
/// fails if there are none.
#[track_caller]
fn intercepted(out: &Output, path_start: &str) -> Vec<Value> {
    let recs: Vec<Value> = out
        .audit()
        .into_iter()
        .filter(|r| r["proto"] == "https" && crate::text(&r["path"]).starts_with(path_start))
        .collect();
    assert!(
        !recs.is_empty(),
        "no intercepted request to {path_start}\n{out}"
    );
    recs
}

/// The audit log's whole text (to check no token is in it).
fn audit_text(s: &Scene) -> String {
    fs::read_to_string(&s.audit_log).unwrap_or_default()
}

// === Azure OpenAI through Entra ===

const AZURE_HOST: &str = "my-resource.openai.azure.example";
const TENANT: &str = "00000000-0000-0000-0000-0000000000aa";
const APP: &str = "11111111-2222-3333-4444-555555555555";
const AZURE_SCOPE: &str = "https://cognitiveservices.azure.com/.default";

/// `AzureOpenAI` with `api_key="placeholder"` (non-streaming) and with
/// `azure_ad_token="placeholder"` (`stream=True`), as an agent configures it when it must
/// not hold the key.
const AZURE_SCRIPT: &str = r#"
import openai
from openai import AzureOpenAI

endpoint = sys.argv[1]
MESSAGES = [{"role": "user", "content": "Say hello."}]
COMMON = dict(azure_endpoint=endpoint, api_version="2024-10-21", max_retries=0, timeout=20.0)

def attempt(step, call):
    try:
        call()
    except openai.APIStatusError as e:
        out(step, status=e.status_code, error=e.response.text)
    except Exception as e:
        out(step, exception=f"{type(e).__name__}: {e}")

def create():
    client = AzureOpenAI(api_key="placeholder", **COMMON)
    r = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    out("create", text=r.choices[0].message.content, model=r.model, finish=r.choices[0].finish_reason)

def stream():
    client = AzureOpenAI(azure_ad_token="placeholder", **COMMON)
    chunks = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    finish = None
    for chunk in chunks:
        for choice in chunk.choices:
            if choice.delta.content:
                out("chunk", text=choice.delta.content)
            finish = choice.finish_reason or finish
    out("stream", done=True, finish=finish)

attempt("create", create)
attempt("stream", stream)
dump_env()
"#;

/// GitHub OIDC -> Entra (workload identity federation) for an Azure OpenAI resource whose
/// API keys are disabled. Field order is drop order: the fake API before the scene's net.
struct Azure {
    api: FakeModelApi,
    entra: Arc<FakeEntra>,
    oidc: FakeOidc,
    s: Scene,
}

impl Azure {
    fn new() -> Self {
        let s = Scene::new();
        let oidc = FakeOidc::start(&s.ca);
        let entra = Arc::new(FakeEntra::start(&s.ca, &oidc, TENANT));
        entra.add_app(
            APP,
            Fic {
                issuer: oidc.issuer(),
                subject: SUBJECT.into(),
                audience: "api://AzureADTokenExchange".into(),
            },
        );
        let issuer = Arc::clone(&entra);
        let api = FakeModelApi::azure_openai(&s.ca, &s.net, s.net.addr3(), AZURE_HOST, move |t| {
            issuer.issued(t) == Some((APP.to_owned(), AZURE_SCOPE.to_owned()))
        });
        Self {
            api,
            entra,
            oidc,
            s,
        }
    }

    /// The policy: with `credential`, the Entra token is injected; without, the host is only
    /// intercepted (the control).
    fn config(&self, credential: bool) -> PathBuf {
        let rule = if credential {
            "credential = \"azure-openai\"\npath_prefix = \"/openai/\""
        } else {
            ""
        };
        self.s.scratch.write(
            "azure.toml",
            format!(
                r#"upstream_ca = "{ca}"

[[credential]]
name = "github"
source = "github-oidc"
audience = "api://AzureADTokenExchange"

[[credential]]
name = "azure-openai"
source = "entra"
tenant = "{TENANT}"
client_id = "{APP}"
scope = "{AZURE_SCOPE}"
assertion = "github"
authority = "{authority}"

[[intercept]]
host = "{AZURE_HOST}"
{rule}
"#,
                ca = self.s.ca_pem.display(),
                authority = self.entra.authority(),
            ),
        )
    }

    fn run(&self, credential: bool) -> Output {
        require_sdk("openai");
        let script = python(
            &self.s,
            "azure_openai.py",
            AZURE_SCRIPT,
            "",
            &[&format!("https://{AZURE_HOST}")],
        );
        egressd(&self.s, &self.config(credential), AZURE_HOST, &self.oidc)
            .sh(&script)
            .run()
    }
}

/// `egressd exec` on `config`, resolving `host` to the scene's third address, with the fake
/// GitHub OIDC request variables in egressd's own environment.
fn egressd(s: &Scene, config: &Path, host: &str, oidc: &FakeOidc) -> EgressdCommand {
    s.egressd()
        .arg("--config")
        .arg(config)
        .resolve(host, s.net.addr3())
        .env("ACTIONS_ID_TOKEN_REQUEST_URL", oidc.request_url())
        .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", oidc.request_token())
}

#[test]
fn the_openai_sdks_azure_client_chats_and_streams_with_an_entra_token_it_never_sees() {
    if !privileged() {
        return;
    }
    let a = Azure::new();
    let out = a.run(true);
    out.assert_success();
    let create = step(&out, "create");
    assert_eq!(create["text"], a.api.text(), "{create}\n{out}");
    assert_eq!(create["finish"], "stop", "{create}\n{out}");
    let stream = step(&out, "stream");
    assert_eq!(stream["done"], true, "{stream}\n{out}");
    assert_eq!(stream["finish"], "stop", "{stream}\n{out}");
    assert_streamed(&out, &a.api.chunks());

    // The upstream saw two chat completions, each with an Entra token for this app and
    // scope, and nothing of the SDK's placeholders (`api-key`, then `Authorization`).
    let calls = a.api.calls();
    assert_eq!(calls.len(), 2, "{calls:?}\n{out}");
    assert_eq!(
        calls.iter().map(|c| c.stream).collect::<Vec<_>>(),
        [false, true],
        "{calls:?}"
    );
    for call in &calls {
        assert!(
            call.path
                .starts_with("/openai/deployments/gpt-4o/chat/completions?api-version="),
            "{call:?}"
        );
        assert_eq!(
            call.body["messages"][0]["content"], "Say hello.",
            "{call:?}"
        );
    }
    let tokens = bearer_tokens(&calls, &out);
    assert!(
        a.oidc.mints() >= 1,
        "no GitHub OIDC token was minted\n{out}"
    );
    assert!(a.entra.successes(APP) >= 1, "Entra issued nothing\n{out}");

    let mut secrets = tokens.clone();
    secrets.push(a.oidc.request_token().to_owned());
    assert_no_secrets(&out, &secrets);
    let env = sandbox_env(&out);
    assert!(!env.contains_key("AZURE_OPENAI_API_KEY"), "\n{out}");

    for rec in intercepted(&out, "/openai/") {
        assert_eq!(rec["credential"], "azure-openai", "{rec}");
        assert_eq!(rec["token_source"], "entra", "{rec}");
        assert_eq!(rec["status"], 200, "{rec}");
    }
    let log = audit_text(&a.s);
    assert!(
        tokens.iter().all(|t| !log.contains(t.as_str())),
        "a token is in the audit log"
    );
}

#[test]
fn control_the_azure_fake_refuses_the_openai_sdks_placeholders_without_egressds_token() {
    if !privileged() {
        return;
    }
    let a = Azure::new();
    let out = a.run(false);
    out.assert_success();
    let create = step(&out, "create");
    assert_eq!(create["status"], 401, "{create}\n{out}");
    assert!(
        crate::text(&create["error"]).contains("AuthenticationTypeDisabled"),
        "{create}\n{out}"
    );
    let stream = step(&out, "stream");
    assert_eq!(stream["status"], 401, "{stream}\n{out}");
    assert!(steps(&out, "chunk").is_empty(), "\n{out}");
    // The fake got the SDK's own placeholders (nothing was injected) and refused both.
    let calls = a.api.calls();
    assert_eq!(calls.len(), 2, "{calls:?}\n{out}");
    assert_eq!(
        calls[0].credentials,
        [("api-key".to_owned(), "placeholder".to_owned())],
        "{calls:?}"
    );
    assert_eq!(
        calls[1].credentials,
        [("authorization".to_owned(), "Bearer placeholder".to_owned())],
        "{calls:?}"
    );
    assert!(calls.iter().all(|c| c.status == 401), "{calls:?}");
    assert!(
        a.entra.calls().is_empty(),
        "a token was minted without a rule"
    );
}

// === The Claude API through Anthropic workload identity federation ===

const ANTHROPIC_HOST: &str = "api.anthropic.com";
const ORG: &str = "00000000-0000-0000-0000-0000000000bb";
const SERVICE_ACCOUNT: &str = "svac_ci";

/// `anthropic.Anthropic(api_key="placeholder")` on its default base URL: `messages.create`,
/// then `messages.stream` printing every event type and each text delta.
const ANTHROPIC_SCRIPT: &str = r#"
import anthropic

MESSAGES = [{"role": "user", "content": "Say hello."}]
MODEL = "claude-sonnet-4-5"
client = anthropic.Anthropic(api_key="placeholder", max_retries=0, timeout=20.0)

def attempt(step, call):
    try:
        call()
    except anthropic.APIStatusError as e:
        out(step, status=e.status_code, error=e.response.text)
    except Exception as e:
        out(step, exception=f"{type(e).__name__}: {e}")

def create():
    r = client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
    out("create", text=r.content[0].text, stop_reason=r.stop_reason)

def stream():
    with client.messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES) as s:
        for event in s:
            if event.type == "text":
                out("chunk", text=event.text)
            else:
                out("event", type=event.type)
        final = s.get_final_message()
    out("stream", text=final.content[0].text, stop_reason=final.stop_reason)

attempt("create", create)
attempt("stream", stream)
dump_env()
"#;

/// GitHub OIDC -> Anthropic workload identity federation -> `Authorization: Bearer
/// sk-ant-oat01-...` on `api.anthropic.com`.
struct Claude {
    api: FakeModelApi,
    wif: Arc<FakeAnthropicWif>,
    oidc: FakeOidc,
    s: Scene,
}

impl Claude {
    fn new() -> Self {
        let s = Scene::new();
        let oidc = FakeOidc::start(&s.ca);
        let wif = Arc::new(FakeAnthropicWif::start(&s.ca, &oidc));
        wif.add_rule(FederationRule {
            id: "fdrl_ci".into(),
            organization_id: ORG.into(),
            service_account_id: SERVICE_ACCOUNT.into(),
            subject: SUBJECT.into(),
        });
        let issuer = Arc::clone(&wif);
        let api = FakeModelApi::anthropic(&s.ca, &s.net, s.net.addr3(), ANTHROPIC_HOST, move |t| {
            issuer.issued(t).as_deref() == Some(SERVICE_ACCOUNT)
        });
        Self { api, wif, oidc, s }
    }

    fn config(&self, credential: bool) -> PathBuf {
        let rule = if credential {
            "credential = \"claude\"\nstrip = [\"x-api-key\"]"
        } else {
            ""
        };
        self.s.scratch.write(
            "anthropic.toml",
            format!(
                r#"upstream_ca = "{ca}"

[[credential]]
name = "github-anthropic"
source = "github-oidc"
audience = "https://api.anthropic.com"

[[credential]]
name = "claude"
source = "anthropic-wif"
assertion = "github-anthropic"
federation_rule_id = "fdrl_ci"
organization_id = "{ORG}"
service_account_id = "{SERVICE_ACCOUNT}"
token_url = "{token_url}"

[[intercept]]
host = "{ANTHROPIC_HOST}"
{rule}
"#,
                ca = self.s.ca_pem.display(),
                token_url = self.wif.token_url(),
            ),
        )
    }

    fn run(&self, credential: bool) -> Output {
        require_sdk("anthropic");
        let script = python(&self.s, "anthropic_sdk.py", ANTHROPIC_SCRIPT, "", &[]);
        egressd(
            &self.s,
            &self.config(credential),
            ANTHROPIC_HOST,
            &self.oidc,
        )
        .sh(&script)
        .run()
    }
}

#[test]
fn the_anthropic_sdk_creates_and_streams_messages_with_a_federated_token_it_never_sees() {
    if !privileged() {
        return;
    }
    let c = Claude::new();
    let out = c.run(true);
    out.assert_success();
    let create = step(&out, "create");
    assert_eq!(create["text"], c.api.text(), "{create}\n{out}");
    assert_eq!(create["stop_reason"], "end_turn", "{create}\n{out}");
    let stream = step(&out, "stream");
    assert_eq!(stream["text"], c.api.text(), "{stream}\n{out}");
    assert_eq!(stream["stop_reason"], "end_turn", "{stream}\n{out}");
    assert_streamed(&out, &c.api.chunks());
    // The SDK's stream saw Anthropic's events in Anthropic's order (it drops `ping` itself).
    let events: Vec<String> = steps(&out, "event")
        .iter()
        .map(|e| crate::text(&e["type"]))
        .collect();
    let mut expected = vec!["message_start", "content_block_start"];
    expected.extend(std::iter::repeat_n(
        "content_block_delta",
        c.api.chunks().len(),
    ));
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(events, expected, "\n{out}");

    let calls = c.api.calls();
    assert_eq!(calls.len(), 2, "{calls:?}\n{out}");
    assert_eq!(
        calls.iter().map(|c| c.stream).collect::<Vec<_>>(),
        [false, true],
        "{calls:?}"
    );
    let tokens = bearer_tokens(&calls, &out);
    for (call, token) in calls.iter().zip(&tokens) {
        assert_eq!(
            call.body["messages"][0]["content"], "Say hello.",
            "{call:?}"
        );
        assert!(token.starts_with("sk-ant-oat01-"), "{call:?}");
        let betas = call.header("anthropic-beta").join(",");
        assert!(betas.contains("oauth-2025-04-20"), "{call:?}");
        let version = call.header("anthropic-version");
        assert!(version.len() == 1 && !version[0].is_empty(), "{call:?}");
    }
    assert_eq!(
        tokens[0], tokens[1],
        "one federated token served both calls"
    );
    let exchanges = c.wif.calls();
    assert_eq!(exchanges.len(), 1, "{exchanges:?}\n{out}");
    assert_eq!(exchanges[0].outcome, "ok", "{exchanges:?}");
    assert!(
        c.oidc.mints() >= 1,
        "no GitHub OIDC token was minted\n{out}"
    );

    let mut secrets = tokens.clone();
    secrets.push(c.oidc.request_token().to_owned());
    secrets.push("sk-ant-oat01".to_owned());
    assert_no_secrets(&out, &secrets);

    for rec in intercepted(&out, "/v1/messages") {
        assert_eq!(rec["credential"], "claude", "{rec}");
        assert_eq!(rec["token_source"], "anthropic-wif", "{rec}");
        assert_eq!(rec["status"], 200, "{rec}");
    }
    assert!(
        !audit_text(&c.s).contains("sk-ant-oat01"),
        "the token is in the audit log"
    );
}

#[test]
fn control_the_claude_fake_refuses_the_anthropic_sdks_placeholder_key_without_egressds_token() {
    if !privileged() {
        return;
    }
    let c = Claude::new();
    let out = c.run(false);
    out.assert_success();
    for name in ["create", "stream"] {
        let line = step(&out, name);
        assert_eq!(line["status"], 401, "{line}\n{out}");
        assert!(
            crate::text(&line["error"]).contains("authentication_error"),
            "{line}\n{out}"
        );
    }
    assert!(steps(&out, "chunk").is_empty(), "\n{out}");
    // The fake got the SDK's own placeholder key (this SDK sends it as a bearer token; older
    // ones as `x-api-key`) and refused it: nothing was injected.
    let calls = c.api.calls();
    assert_eq!(calls.len(), 2, "{calls:?}\n{out}");
    for call in &calls {
        assert_eq!(call.status, 401, "{call:?}");
        assert!(
            call.outcome.starts_with("401 authentication_error"),
            "{call:?}"
        );
        assert_eq!(call.credentials.len(), 1, "{call:?}");
        let (name, value) = &call.credentials[0];
        assert!(
            (name == "authorization" && value == "Bearer placeholder")
                || (name == "x-api-key" && value == "placeholder"),
            "{call:?}"
        );
    }
    assert!(
        c.wif.calls().is_empty(),
        "a token was minted without a rule"
    );
}

// === Bedrock Runtime with keys from AssumeRoleWithWebIdentity, re-signed with SigV4 ===

const BEDROCK_HOST: &str = "bedrock-runtime.us-east-1.amazonaws.com";
const ROLE: &str = "arn:aws:iam::123456789012:role/gha-bedrock";
/// The agent's placeholder keys (AWS's documentation example key id).
const PLACEHOLDER_KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
const PLACEHOLDER_SECRET: &str = "placeholder-secret-not-a-real-key";
/// A long-term key the control's fake knows with its secret, to show that the fake
/// recomputes botocore's own signatures (and refuses a wrong one).
const KNOWN_KEY_ID: &str = "AKIAKNOWNTOTHEFAKE01";
const KNOWN_SECRET: &str = "known/to/the/fake/bedrock+secret0000000";

/// boto3 `bedrock-runtime` with the placeholder keys of the environment: `converse` and
/// `converse_stream` (event types, and each text delta). The control (`control` argument)
/// also calls with the known key, and with the known key and a wrong secret.
const BEDROCK_SCRIPT: &str = r#"
import boto3, botocore
from botocore.config import Config

MODEL = "anthropic.claude-3-5-haiku-20241022-v1:0"
MESSAGES = [{"role": "user", "content": [{"text": "Say hello."}]}]
CONFIG = Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=10, read_timeout=20)

def client(**keys):
    return boto3.client("bedrock-runtime", region_name="us-east-1", config=CONFIG, **keys)

def attempt(step, call):
    try:
        call()
    except botocore.exceptions.ClientError as e:
        out(step, status=e.response["ResponseMetadata"].get("HTTPStatusCode"),
            code=e.response["Error"].get("Code"), error=e.response["Error"].get("Message"))
    except Exception as e:
        out(step, exception=f"{type(e).__name__}: {e}")

def converse(step, c):
    def call():
        r = c.converse(modelId=MODEL, messages=MESSAGES, inferenceConfig={"maxTokens": 64})
        out(step, text=r["output"]["message"]["content"][0]["text"], stop_reason=r["stopReason"],
            usage=r["usage"])
    attempt(step, call)

def converse_stream(step, c):
    def call():
        r = c.converse_stream(modelId=MODEL, messages=MESSAGES)
        stop = None
        for event in r["stream"]:
            (name, body), = event.items()
            out("event", type=name)
            if name == "contentBlockDelta":
                out("chunk", text=body["delta"]["text"])
            if name == "messageStop":
                stop = body["stopReason"]
        out(step, done=True, stop_reason=stop)
    attempt(step, call)

default = client()
out("identity", key_id=boto3.Session().get_credentials().access_key)
converse("converse", default)
converse_stream("converse_stream", default)
if sys.argv[1:2] == ["control"]:
    known = client(aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3])
    converse("converse_known", known)
    wrong = client(aws_access_key_id=sys.argv[2], aws_secret_access_key="not-" + sys.argv[3])
    converse("converse_wrong_secret", wrong)
dump_env()
"#;

/// GitHub OIDC -> STS `AssumeRoleWithWebIdentity` -> SigV4 on Bedrock Runtime.
struct Bedrock {
    api: FakeModelApi,
    sts: Arc<FakeAwsSts>,
    oidc: FakeOidc,
    s: Scene,
}

impl Bedrock {
    fn new() -> Self {
        let s = Scene::new();
        let oidc = FakeOidc::start(&s.ca);
        let sts = Arc::new(FakeAwsSts::start(&s.ca, &oidc, "sts.amazonaws.com"));
        sts.add_role(ROLE, Some(SUBJECT));
        let issuer = Arc::clone(&sts);
        // Keys STS minted (the signature is recomputed with the minted secret, as AWS does),
        // plus one long-term key the fake knows whole, for the control.
        let api = FakeModelApi::bedrock(
            &s.ca,
            &s.net,
            s.net.addr3(),
            BEDROCK_HOST,
            "us-east-1",
            move |key_id| {
                if key_id == KNOWN_KEY_ID {
                    return Some(AwsKey {
                        session_token: None,
                        secret_access_key: Some(KNOWN_SECRET.to_owned()),
                    });
                }
                issuer.session_of(key_id).map(|(_, token)| AwsKey {
                    session_token: Some(token),
                    secret_access_key: issuer.secret_of(key_id),
                })
            },
        );
        Self { api, sts, oidc, s }
    }

    fn config(&self, credential: bool) -> PathBuf {
        let rule = if credential {
            "credential = \"bedrock\"\nsign = \"aws-sigv4\"\nregion = \"us-east-1\"\nservice = \"bedrock\""
        } else {
            ""
        };
        self.s.scratch.write(
            "bedrock.toml",
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
host = "{BEDROCK_HOST}"
{rule}
"#,
                ca = self.s.ca_pem.display(),
                endpoint = self.sts.endpoint(),
            ),
        )
    }

    fn run(&self, credential: bool) -> Output {
        require_sdk("boto3");
        // The agent's placeholder keys; egressd scrubs AWS keys from what it passes on, so
        // the sandbox sets its own, as an agent's configuration would.
        let exports = format!(
            "AWS_ACCESS_KEY_ID={PLACEHOLDER_KEY_ID} AWS_SECRET_ACCESS_KEY={PLACEHOLDER_SECRET} \
             AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true"
        );
        let args: &[&str] = if credential {
            &[]
        } else {
            &["control", KNOWN_KEY_ID, KNOWN_SECRET]
        };
        let script = python(&self.s, "bedrock_boto3.py", BEDROCK_SCRIPT, &exports, args);
        egressd(&self.s, &self.config(credential), BEDROCK_HOST, &self.oidc)
            .sh(&script)
            .run()
    }
}

/// The SigV4 key id of a Bedrock call's `Authorization`.
#[track_caller]
fn signing_key_id(call: &ModelCall) -> String {
    let authorization = call.header("authorization").join(",");
    authorization
        .strip_prefix("AWS4-HMAC-SHA256 Credential=")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("not a SigV4 authorization: {call:?}"))
        .to_owned()
}

#[test]
fn boto3_bedrock_converses_and_streams_events_signed_by_egressd_with_minted_keys() {
    if !privileged() {
        return;
    }
    let b = Bedrock::new();
    let out = b.run(true);
    out.assert_success();
    // The SDK signed with the placeholder key; egressd re-signed.
    assert_eq!(
        step(&out, "identity")["key_id"],
        PLACEHOLDER_KEY_ID,
        "\n{out}"
    );
    let converse = step(&out, "converse");
    assert_eq!(converse["text"], b.api.text(), "{converse}\n{out}");
    assert_eq!(converse["stop_reason"], "end_turn", "{converse}\n{out}");
    let stream = step(&out, "converse_stream");
    assert_eq!(stream["done"], true, "{stream}\n{out}");
    assert_eq!(stream["stop_reason"], "end_turn", "{stream}\n{out}");
    assert_streamed(&out, &b.api.chunks());
    // Every event of the binary stream decoded (both CRCs checked by botocore), in order.
    let events: Vec<String> = steps(&out, "event")
        .iter()
        .map(|e| crate::text(&e["type"]))
        .collect();
    let mut expected = vec!["messageStart"];
    expected.extend(std::iter::repeat_n(
        "contentBlockDelta",
        b.api.chunks().len(),
    ));
    expected.extend(["contentBlockStop", "messageStop", "metadata"]);
    assert_eq!(events, expected, "\n{out}");

    let calls = b.api.calls();
    assert_eq!(calls.len(), 2, "{calls:?}\n{out}");
    let model = "anthropic.claude-3-5-haiku-20241022-v1%3A0";
    assert_eq!(
        calls[0].path,
        format!("/model/{model}/converse"),
        "{calls:?}"
    );
    assert_eq!(
        calls[1].path,
        format!("/model/{model}/converse-stream"),
        "{calls:?}"
    );
    let mut secrets = vec![b.oidc.request_token().to_owned()];
    let mut session_tokens = Vec::new();
    for call in &calls {
        assert_eq!(call.status, 200, "{call:?}\n{out}");
        // Recomputed with the minted secret: egressd's signature is the one AWS would accept.
        assert!(call.signature_verified, "{call:?}\n{out}");
        let key_id = signing_key_id(call);
        assert_ne!(key_id, PLACEHOLDER_KEY_ID, "{call:?}");
        let (role, session_token) = b
            .sts
            .session_of(&key_id)
            .unwrap_or_else(|| panic!("signed with keys STS did not issue: {call:?}\n{out}"));
        assert_eq!(role, ROLE);
        assert_eq!(
            call.header("x-amz-security-token"),
            std::slice::from_ref(&session_token)
        );
        let authorization = call.header("authorization").join(",");
        assert!(
            authorization.contains("/us-east-1/bedrock/aws4_request"),
            "{authorization}"
        );
        assert!(
            !call
                .credentials
                .iter()
                .any(|(_, v)| v.contains(PLACEHOLDER_KEY_ID) || v.contains("placeholder")),
            "the SDK's placeholder signature reached the upstream: {call:?}"
        );
        // egressd buffered the body to sign it: it must arrive whole.
        assert_eq!(
            call.body["messages"][0]["content"][0]["text"], "Say hello.",
            "{call:?}"
        );
        secrets.push(key_id);
        secrets.push(session_token.clone());
        session_tokens.push(session_token);
    }
    assert!(b.sts.successes() >= 1, "STS issued nothing\n{out}");
    assert!(
        b.oidc.mints() >= 1,
        "no GitHub OIDC token was minted\n{out}"
    );

    assert_no_secrets(&out, &secrets);
    let env = sandbox_env(&out);
    assert_eq!(
        env.get("AWS_ACCESS_KEY_ID").map(crate::text).as_deref(),
        Some(PLACEHOLDER_KEY_ID),
        "\n{out}"
    );
    assert!(!env.contains_key("AWS_SESSION_TOKEN"), "\n{out}");
    assert!(
        env.get("AWS_CA_BUNDLE")
            .map(crate::text)
            .is_some_and(|b| b.starts_with("/run/egressd/")),
        "boto3 is not pointed at egressd's bundle\n{out}"
    );

    for rec in intercepted(&out, "/model/") {
        assert_eq!(rec["credential"], "bedrock", "{rec}");
        assert_eq!(rec["token_source"], "aws-web-identity", "{rec}");
        assert_eq!(rec["status"], 200, "{rec}");
    }
    let log = audit_text(&b.s);
    assert!(
        session_tokens.iter().all(|t| !log.contains(t.as_str())),
        "a session token is in the audit log"
    );
}

#[test]
fn control_the_bedrock_fake_verifies_botocores_signatures_and_refuses_the_placeholder_keys() {
    if !privileged() {
        return;
    }
    let b = Bedrock::new();
    let out = b.run(false);
    out.assert_success();
    // Without egressd's signing rule, the placeholder key id is unknown to the service.
    for name in ["converse", "converse_stream"] {
        let line = step(&out, name);
        assert_eq!(line["status"], 403, "{line}\n{out}");
        assert_eq!(line["code"], "UnrecognizedClientException", "{line}\n{out}");
    }
    assert!(steps(&out, "chunk").is_empty(), "\n{out}");
    // botocore's own signature with a key the fake knows verifies; a wrong secret does not.
    let known = step(&out, "converse_known");
    assert_eq!(known["text"], b.api.text(), "{known}\n{out}");
    let wrong = step(&out, "converse_wrong_secret");
    assert_eq!(wrong["status"], 403, "{wrong}\n{out}");
    assert_eq!(wrong["code"], "InvalidSignatureException", "{wrong}\n{out}");

    let calls = b.api.calls();
    assert_eq!(calls.len(), 4, "{calls:?}\n{out}");
    assert_eq!(signing_key_id(&calls[0]), PLACEHOLDER_KEY_ID, "{calls:?}");
    assert_eq!(signing_key_id(&calls[1]), PLACEHOLDER_KEY_ID, "{calls:?}");
    assert!(calls[..2].iter().all(|c| c.status == 403), "{calls:?}");
    assert_eq!(calls[2].status, 200, "{:?}", calls[2]);
    assert!(calls[2].signature_verified, "{:?}", calls[2]);
    assert_eq!(calls[3].status, 403, "{:?}", calls[3]);
    assert!(b.sts.calls().is_empty(), "keys were minted without a rule");
}
