//! Provenance and per-user credentials: `exec` verifies the job's GitHub OIDC token against
//! the (fake) issuer's JWKS, every audit record says who triggered the run, and a `per-actor`
//! credential gives each triggering user their own secret, or a 403 naming them.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use egressd_tests::fakes::FakeOidc;
use egressd_tests::{API, EgressdCommand, Output, Scene, privileged};
use serde_json::Value;

const OCTOCAT_SECRET: &str = "octocat-own-copilot-token";

/// A platform workflow called with `workflow_call` from a consumer repository, triggered by
/// octocat (583231): the fake issuer's claims, a per-actor table with octocat's entry, and a
/// config that injects the per-actor credential on [`API`].
struct Platform {
    s: Scene,
    oidc: FakeOidc,
    config: std::path::PathBuf,
}

impl Platform {
    fn new(provenance_table: &str) -> Self {
        let s = Scene::new();
        let oidc = FakeOidc::start(&s.ca);
        for (claim, value) in [
            ("actor", "octocat"),
            ("actor_id", "583231"),
            ("repository", "org/consumer-repo"),
            ("repository_id", "123456789"),
            (
                "job_workflow_ref",
                "org/platform-repo/.github/workflows/agent.lock.yml@refs/heads/main",
            ),
            (
                "workflow_ref",
                "org/consumer-repo/.github/workflows/platform-caller.yml@refs/heads/main",
            ),
            ("event_name", "issue_comment"),
            ("run_id", "4242"),
            ("run_attempt", "2"),
        ] {
            oidc.set_claim(claim, value.into());
        }
        let table = s.scratch.path("actors.toml");
        fs::write(
            &table,
            "# octocat\n583231 = { env = \"EGRESSD_TEST_OCTOCAT_TOKEN\" }\n",
        )
        .unwrap();
        fs::set_permissions(&table, fs::Permissions::from_mode(0o600)).unwrap();
        let config = s.scratch.path("platform.toml");
        fs::write(
            &config,
            format!(
                r#"upstream_ca = "{ca}"

[provenance]
issuer = "{issuer}"
{provenance_table}

[[credential]]
name = "copilot-per-user"
source = "per-actor"
table = "{table}"

[[intercept]]
host = "{API}"
credential = "copilot-per-user"
"#,
                ca = s.ca_pem.display(),
                issuer = oidc.issuer(),
                table = table.display(),
            ),
        )
        .unwrap();
        Self { s, oidc, config }
    }

    fn egressd(&self) -> EgressdCommand {
        self.s
            .egressd()
            .arg("--config")
            .arg(&self.config)
            .env("ACTIONS_ID_TOKEN_REQUEST_URL", self.oidc.request_url())
            .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", self.oidc.request_token())
            .env("EGRESSD_TEST_OCTOCAT_TOKEN", OCTOCAT_SECRET)
    }
}

/// `curl https://API/...` with a placeholder credential, printing the body then the status.
fn agent_curl() -> String {
    format!(
        "curl -sS --max-time 20 -w ' [HTTP %{{http_code}}]' -H 'Authorization: Bearer placeholder' https://{API}/chat/completions; echo"
    )
}

fn arm_record(out: &Output) -> Value {
    out.audit()
        .into_iter()
        .find(|r| r["event"] == "arm")
        .unwrap_or_else(|| panic!("no arm record\n{out}"))
}

#[test]
fn the_triggering_users_own_secret_is_injected_and_every_record_names_them() {
    if !privileged() {
        return;
    }
    let p = Platform::new("");
    let script = format!("{}; env | grep -c '{OCTOCAT_SECRET}' || true", agent_curl());
    let out = p.egressd().sh(&script).run();
    out.assert_success();
    assert!(out.stdout.contains("[HTTP 200]"), "\n{out}");
    assert_eq!(
        p.s.api.credentials(),
        vec![(
            0,
            "authorization".to_owned(),
            format!("Bearer {OCTOCAT_SECRET}")
        )],
        "the upstream must get octocat's own secret\n{out}"
    );
    assert!(
        out.stdout.lines().any(|l| l == "0"),
        "octocat's secret leaked into the sandbox\n{out}"
    );
    assert!(
        p.oidc.audiences().contains(&Some("egressd".to_owned())),
        "the provenance token has its own audience: {:?}",
        p.oidc.audiences()
    );

    let records = out.audit();
    assert!(
        records.len() >= 3,
        "arm, the request, disarm at least\n{out}"
    );
    for record in &records {
        let who = &record["provenance"];
        assert_eq!(who["actor"], "octocat", "{record}");
        assert_eq!(who["actor_id"], "583231", "{record}");
        assert_eq!(who["repository"], "org/consumer-repo", "{record}");
        assert_eq!(who["run_id"], "4242", "{record}");
        assert_eq!(who["run_attempt"], "2", "{record}");
        assert_eq!(
            who["job_workflow_ref"],
            "org/platform-repo/.github/workflows/agent.lock.yml@refs/heads/main"
        );
        assert_eq!(who["issuer"], p.oidc.issuer().as_str());
    }
    assert!(arm_record(&out).get("provenance_absent").is_none());
    let request = records
        .iter()
        .find(|r| r["proto"] == "https")
        .unwrap_or_else(|| panic!("no intercepted-request record\n{out}"));
    assert_eq!(request["credential"], "copilot-per-user", "{request}");
    assert_eq!(request["status"], 200, "{request}");
    let log = fs::read_to_string(&p.s.audit_log).unwrap();
    assert!(
        !log.contains(OCTOCAT_SECRET),
        "the secret is in the audit log"
    );

    // `egressd audit` shows the run per actor, repository and workflow.
    let audit = EgressdCommand::new()
        .subcommand(["audit", "--format", "json"])
        .command([p.s.audit_log.as_os_str()])
        .run();
    assert_eq!(audit.code(), Some(0), "\n{audit}");
    let report: Value =
        serde_json::from_str(&audit.stdout).unwrap_or_else(|e| panic!("{e}\n{audit}"));
    let views = &report["provenance"];
    assert_eq!(views["actors"][0][0], "octocat", "{views}");
    assert_eq!(views["repositories"][0][0], "org/consumer-repo", "{views}");
    assert_eq!(
        views["workflows"][0][0],
        "org/platform-repo/.github/workflows/agent.lock.yml@refs/heads/main",
        "{views}"
    );
}

#[test]
fn a_user_without_an_entry_gets_a_403_naming_them_and_nothing_reaches_the_upstream() {
    if !privileged() {
        return;
    }
    let p = Platform::new("");
    p.oidc.set_claim("actor", "mallory".into());
    p.oidc.set_claim("actor_id", "999".into());
    let out = p.egressd().sh(&agent_curl()).run();
    out.assert_success();
    assert!(out.stdout.contains("[HTTP 403]"), "\n{out}");
    let body = out
        .stdout
        .lines()
        .find(|l| l.contains("[HTTP 403]"))
        .and_then(|l| l.strip_suffix(" [HTTP 403]"))
        .unwrap_or_default();
    let body: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}\n{out}"));
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("no credential for actor mallory (id 999)"),
        "{body}"
    );
    assert_eq!(body["credential"], "copilot-per-user", "{body}");
    assert_eq!(body["retryable"], false, "{body}");
    assert!(
        p.s.api.requests().is_empty() && p.s.api.credentials().is_empty(),
        "nothing may reach the upstream without the user's credential\n{out}"
    );
    let request = out
        .audit()
        .into_iter()
        .find(|r| r["proto"] == "https")
        .unwrap_or_else(|| panic!("no intercepted-request record\n{out}"));
    assert_eq!(request["status"], 403, "{request}");
    assert_eq!(request["decision"], "deny", "{request}");
    assert_eq!(request["provenance"]["actor"], "mallory", "{request}");
}

#[test]
fn without_verified_provenance_records_say_so_and_per_user_credentials_are_refused() {
    if !privileged() {
        return;
    }
    let p = Platform::new("");
    // A token signed with a key the issuer does not publish: it must not verify.
    p.oidc.sign_with_unknown_key(true);
    let out = p.egressd().sh(&agent_curl()).run();
    out.assert_success();
    assert!(out.stderr.contains("NO PROVENANCE"), "\n{out}");
    assert!(out.stderr.contains("does not publish"), "\n{out}");
    assert!(out.stdout.contains("[HTTP 403]"), "\n{out}");
    assert!(
        out.stdout.contains("the triggering user is unknown"),
        "\n{out}"
    );
    assert!(p.s.api.requests().is_empty(), "\n{out}");
    for record in out.audit() {
        assert!(record["provenance"].is_null(), "{record}");
    }
    let arm = arm_record(&out);
    assert!(
        arm["provenance_absent"]
            .as_str()
            .is_some_and(|why| why.contains("does not publish")),
        "{arm}"
    );
}

#[test]
fn required_provenance_that_cannot_be_verified_refuses_to_start() {
    if !privileged() {
        return;
    }
    let p = Platform::new("required = true");
    p.oidc.sign_with_unknown_key(true);
    let out = p.egressd().sh("echo the-command-ran").run();
    assert_eq!(out.code(), Some(125), "\n{out}");
    assert!(out.stderr.contains("required = true"), "\n{out}");
    assert!(out.stderr.contains("does not publish"), "\n{out}");
    assert!(!out.stdout.contains("the-command-ran"), "\n{out}");

    // The same with no way to mint at all (no `id-token: write`).
    let out =
        p.s.egressd()
            .arg("--config")
            .arg(&p.config)
            .env("EGRESSD_TEST_OCTOCAT_TOKEN", OCTOCAT_SECRET)
            .sh("echo the-command-ran")
            .run();
    assert_eq!(out.code(), Some(125), "\n{out}");
    assert!(out.stderr.contains("id-token: write"), "\n{out}");
    assert!(!out.stdout.contains("the-command-ran"), "\n{out}");
}

#[test]
fn require_provenance_flag_refuses_to_start_without_an_oidc_token() {
    if !egressd_tests::privileged() {
        return;
    }
    let out = egressd_tests::EgressdCommand::new()
        .allow("api.allowed.example")
        .arg("--require-provenance")
        .sh("echo ran")
        .run();
    assert_eq!(out.code(), Some(125), "\n{out}");
    assert!(
        !out.stdout.contains("ran"),
        "the command ran without provenance\n{out}"
    );
}
