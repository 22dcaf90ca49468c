//! Copilot on every GitHub deployment (issue 4, scope 2): the sandboxed agent calls the
//! Copilot API with a placeholder; egressd injects the Copilot credential (the exchanged
//! token, or the GitHub token itself with the right scheme for the host) and the Copilot
//! headers. The user reports behind these tests: the exchange sent to api.github.com instead
//! of the tenant, the data-residency exchange answering 403, and `Bearer` vs `token`
//! (`400 Authorization header is badly formatted`).
//!
//! The GitHub API (`GITHUB_API_URL`) is a loopback fake egressd's broker calls; the Copilot
//! API is a fake in the test's upstream namespace, reached through egressd.

use std::fs;
use std::path::PathBuf;

use egressd_tests::fakes::{ApiCall, FakeCopilot, FakeCopilotApi};
use egressd_tests::{EgressdCommand, Output, Scene, privileged};
use serde_json::Value;

const OAUTH: &str = "gho_0123456789abcdef0123456789abcdef0123";
const PAT: &str = "github_pat_11AAAAAAA0123456789abcdef0123456789abcdef0123";

struct CopilotSetup {
    s: Scene,
    fake: FakeCopilot,
    api: FakeCopilotApi,
    names: Vec<String>,
    config: PathBuf,
}

impl CopilotSetup {
    /// The fakes, with the Copilot API serving `names`, and a five-line `[copilot]` config
    /// plus `extra` lines in the table.
    fn new(names: &[&str], extra: &str) -> Self {
        let s = Scene::new();
        let fake = FakeCopilot::start(&s.ca);
        fake.add_github_token(OAUTH);
        fake.add_github_token(PAT);
        let api = fake.serve_api(&s.ca, &s.net, s.net.addr3(), names);
        let config = s.scratch.path("copilot.toml");
        fs::write(
            &config,
            format!(
                r#"upstream_ca = "{ca}"

[[credential]]
name = "gh"
source = "env"
var = "EGRESSD_TEST_GH_TOKEN"

[copilot]
github_token = "gh"
{extra}
"#,
                ca = s.ca_pem.display()
            ),
        )
        .unwrap();
        Self {
            s,
            fake,
            api,
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            config,
        }
    }

    /// `egressd exec` on the deployment of `server_url`, whose API is the fake (under
    /// `api_path`, e.g. `/api/v3` for GHES), holding GitHub token `token`.
    fn egressd(&self, server_url: &str, api_path: &str, token: &str) -> EgressdCommand {
        let mut cmd = self
            .s
            .egressd()
            .arg("--config")
            .arg(&self.config)
            .env("GITHUB_SERVER_URL", server_url)
            .env(
                "GITHUB_API_URL",
                format!("{}{api_path}", self.fake.api_url()),
            )
            .env("GITHUB_RUN_ID", "4242")
            .env("GITHUB_RUN_ATTEMPT", "2")
            .env("EGRESSD_TEST_GH_TOKEN", token);
        for name in &self.names {
            cmd = cmd.resolve(name, self.api.addr().ip());
        }
        cmd
    }
}

/// A sandboxed call with the agent's placeholder token: `curl [args] URL`, then the status.
fn agent(method: &str, url: &str, extra: &str) -> String {
    let body = if method == "POST" {
        "-H 'content-type: application/json' -d '{\"messages\":[]}'"
    } else {
        ""
    };
    format!(
        "curl -sS --max-time 20 -o /dev/null -w '{url} [HTTP %{{http_code}}]\\n' -X {method} \
         -H 'Authorization: Bearer ghu_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa' {body} {extra} {url}"
    )
}

/// The one value of a header list, failing with context otherwise.
#[track_caller]
fn one(values: &[String], what: &str, call: &ApiCall, out: &Output) -> String {
    assert_eq!(values.len(), 1, "{what}: {call:?}\n{out}");
    values[0].clone()
}

fn copilot_records(out: &Output) -> Vec<Value> {
    out.audit()
        .into_iter()
        .filter(|r| r["proto"] == "https" && r["credential"] == "copilot")
        .collect()
}

#[test]
fn github_com_exchanges_at_github_api_url_and_injects_the_copilot_token_and_headers() {
    if !privileged() {
        return;
    }
    let c = CopilotSetup::new(
        &["api.githubcopilot.com", "api.individual.githubcopilot.com"],
        "",
    );
    c.fake
        .set_api_endpoint("https://api.individual.githubcopilot.com");
    let script = [
        agent("GET", "https://api.githubcopilot.com/models", ""),
        agent(
            "POST",
            "https://api.individual.githubcopilot.com/chat/completions",
            "-H 'Copilot-Integration-Id: chosen-by-agent' -H 'X-Interaction-Id: agent-session-7'",
        ),
        format!("env | grep -c '{OAUTH}' || true"),
    ]
    .join("; ");
    let out = c.egressd("https://github.com", "", OAUTH).sh(&script).run();
    out.assert_success();
    assert_eq!(out.stdout.matches("[HTTP 200]").count(), 2, "\n{out}");
    assert!(
        out.stdout.lines().any(|l| l == "0"),
        "the GitHub token leaked\n{out}"
    );
    let exchanges = c.fake.exchanges();
    assert_eq!(
        exchanges.len(),
        1,
        "one exchange, cached: {exchanges:?}\n{out}"
    );
    assert_eq!(exchanges[0].scheme, "token");
    let calls = c.api.calls();
    assert_eq!(calls.len(), 2, "{calls:?}\n{out}");
    for call in &calls {
        assert_eq!(call.status, 200, "{call:?}\n{out}");
        assert_eq!(call.token_kind, "copilot", "{call:?}\n{out}");
        let auth = one(&call.authorization, "authorization", call, &out);
        let token = auth
            .strip_prefix("Bearer ")
            .unwrap_or_else(|| panic!("an exchanged token is Bearer: {auth}\n{out}"));
        assert!(c.fake.issued(token), "{call:?}\n{out}");
        // Set by egressd whatever the agent sent.
        assert_eq!(
            one(&call.integration_id, "integration id", call, &out),
            "agentic-workflows"
        );
        assert_eq!(one(&call.initiator, "x-initiator", call, &out), "agent");
    }
    // X-Interaction-Id: the run's, unless the client sent its own (AWF's rule).
    assert_eq!(calls[0].interaction_id, ["4242-2"], "\n{out}");
    assert_eq!(calls[1].interaction_id, ["agent-session-7"], "\n{out}");
    let recs = copilot_records(&out);
    assert_eq!(recs.len(), 2, "\n{out}");
    assert!(
        recs.iter().all(|r| r["token_source"] == "copilot"),
        "{recs:?}"
    );
    let log = fs::read_to_string(&c.s.audit_log).unwrap();
    assert!(
        !log.contains(OAUTH) && !log.contains("tid=fake"),
        "a token is in the audit log"
    );
}

#[test]
fn a_data_residency_tenant_refusing_the_exchange_falls_back_to_the_github_token_once() {
    if !privileged() {
        return;
    }
    let c = CopilotSetup::new(&["copilot-api.acme.ghe.com"], "");
    c.fake.refuse_exchange(Some(403));
    let script = [
        agent("GET", "https://copilot-api.acme.ghe.com/models", ""),
        agent(
            "POST",
            "https://copilot-api.acme.ghe.com/chat/completions",
            "",
        ),
        agent("GET", "https://copilot-api.acme.ghe.com/models", ""),
    ]
    .join("; ");
    let out = c
        .egressd("https://acme.ghe.com", "", OAUTH)
        .sh(&script)
        .run();
    out.assert_success();
    assert_eq!(out.stdout.matches("[HTTP 200]").count(), 3, "\n{out}");
    // The exchange went to the tenant's API (GITHUB_API_URL), once.
    let exchanges = c.fake.exchanges();
    assert_eq!(exchanges.len(), 1, "{exchanges:?}\n{out}");
    assert_eq!(exchanges[0].status, 403);
    assert_eq!(
        out.stderr
            .matches("the Copilot token exchange was refused")
            .count(),
        1,
        "the fallback is logged exactly once\n{out}"
    );
    for call in c.api.calls() {
        assert_eq!(call.status, 200, "{call:?}\n{out}");
        assert_eq!(call.token_kind, "github", "{call:?}");
        // An OAuth token on copilot-api.<tenant>: `token`, not `Bearer`.
        assert_eq!(call.authorization, [format!("token {OAUTH}")], "{call:?}");
        assert_eq!(call.integration_id, ["agentic-workflows"], "{call:?}");
        assert!(
            call.interaction_id.is_empty(),
            "only on githubcopilot.com: {call:?}"
        );
    }
    let recs = copilot_records(&out);
    assert!(
        !recs.is_empty() && recs.iter().all(|r| r["token_source"] == "copilot-direct"),
        "{recs:?}\n{out}"
    );
}

#[test]
fn a_fine_grained_pat_on_a_tenant_is_sent_as_bearer() {
    if !privileged() {
        return;
    }
    let c = CopilotSetup::new(&["copilot-api.acme.ghe.com"], "");
    let out = c
        .egressd("https://acme.ghe.com", "", PAT)
        .sh(&agent("GET", "https://copilot-api.acme.ghe.com/models", ""))
        .run();
    out.assert_success();
    assert!(out.stdout.contains("[HTTP 200]"), "\n{out}");
    // The tenant refuses PATs at the exchange (403), as in the reports; auto goes direct.
    assert_eq!(c.fake.exchanges()[0].status, 403);
    let calls = c.api.calls();
    assert_eq!(
        calls[0].authorization,
        [format!("Bearer {PAT}")],
        "{calls:?}"
    );
}

#[test]
fn ghes_exchanges_at_its_own_api_gets_404_and_sends_the_token_to_the_enterprise_host() {
    if !privileged() {
        return;
    }
    let c = CopilotSetup::new(&["api.enterprise.githubcopilot.com"], "");
    c.fake.refuse_exchange(Some(404)); // GHES hosts no Copilot
    let out = c
        .egressd("https://ghes.corp.example", "/api/v3", OAUTH)
        .sh(&agent(
            "POST",
            "https://api.enterprise.githubcopilot.com/chat/completions",
            "",
        ))
        .run();
    out.assert_success();
    assert!(out.stdout.contains("[HTTP 200]"), "\n{out}");
    let exchanges = c.fake.exchanges();
    assert_eq!(exchanges.len(), 1, "{exchanges:?}\n{out}");
    assert_eq!(exchanges[0].path, "/api/v3/copilot_internal/v2/token");
    let calls = c.api.calls();
    assert_eq!(
        calls[0].authorization,
        [format!("token {OAUTH}")],
        "{calls:?}"
    );
    assert_eq!(calls[0].interaction_id, ["4242-2"], "{calls:?}");
}

#[test]
fn an_oauth_token_gets_bearer_or_token_per_host_and_a_forced_scheme_reproduces_the_400() {
    if !privileged() {
        return;
    }
    let hosts = ["api.githubcopilot.com", "api.business.githubcopilot.com"];
    let script = hosts
        .iter()
        .map(|h| agent("GET", &format!("https://{h}/models"), ""))
        .collect::<Vec<_>>()
        .join("; ");
    let c = CopilotSetup::new(&hosts, "mode = \"direct\"");
    let out = c.egressd("https://github.com", "", OAUTH).sh(&script).run();
    out.assert_success();
    assert_eq!(out.stdout.matches("[HTTP 200]").count(), 2, "\n{out}");
    assert!(c.fake.exchanges().is_empty(), "direct mode never exchanges");
    let calls = c.api.calls();
    let auth = |host: &str| {
        calls
            .iter()
            .find(|c| c.host == host)
            .map(|c| c.authorization.clone())
            .unwrap_or_else(|| panic!("no call to {host}: {calls:?}\n{out}"))
    };
    assert_eq!(auth("api.githubcopilot.com"), [format!("Bearer {OAUTH}")]);
    assert_eq!(
        auth("api.business.githubcopilot.com"),
        [format!("token {OAUTH}")]
    );

    // Forcing Bearer everywhere is the reported bug: the business host refuses it.
    let c = CopilotSetup::new(&hosts, "mode = \"direct\"\nscheme = \"bearer\"");
    let out = c.egressd("https://github.com", "", OAUTH).sh(&script).run();
    out.assert_success();
    assert!(
        out.stdout
            .contains("https://api.business.githubcopilot.com/models [HTTP 400]"),
        "\n{out}"
    );
    assert!(
        out.stdout
            .contains("https://api.githubcopilot.com/models [HTTP 200]"),
        "\n{out}"
    );
}

#[test]
fn byok_keys_stay_in_the_daemon_and_the_sandbox_gets_a_placeholder() {
    if !privileged() {
        return;
    }
    use egressd_tests::API;
    let s = Scene::new();
    let config = s.scratch.path("byok.toml");
    fs::write(
        &config,
        format!("upstream_ca = \"{}\"\n", s.ca_pem.display()),
    )
    .unwrap();
    let script = format!(
        "echo \"key=$COPILOT_PROVIDER_API_KEY\"; env | grep -c sk-ant-real-key || true; \
         curl -sS --max-time 20 -o /dev/null -w '[HTTP %{{http_code}}]\\n' \
         -H \"x-api-key: $COPILOT_PROVIDER_API_KEY\" https://{API}/v1/messages"
    );
    let out = s
        .egressd()
        .arg("--config")
        .arg(&config)
        .env("COPILOT_PROVIDER_BASE_URL", format!("https://{API}/v1"))
        .env("COPILOT_PROVIDER_TYPE", "anthropic")
        .env("COPILOT_PROVIDER_API_KEY", "sk-ant-real-key")
        .sh(&script)
        .run();
    out.assert_success();
    assert!(out.stdout.contains("key=egressd-placeholder"), "\n{out}");
    assert!(
        out.stdout.lines().any(|l| l == "0"),
        "the key leaked\n{out}"
    );
    assert!(out.stdout.contains("[HTTP 200]"), "\n{out}");
    assert_eq!(
        s.api.credentials(),
        [(0, "x-api-key".to_owned(), "sk-ant-real-key".to_owned())],
        "\n{out}"
    );
}
