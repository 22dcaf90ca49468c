//! SPIFFE workload identity on upstream connections: egressd follows a (fake) SPIRE agent's
//! Workload API, presents the runner's X.509-SVID when it dials a SPIFFE service, verifies the
//! service's SPIFFE ID against the agent's bundle, survives rotation, and fails closed with a
//! JSON error naming the rule and the reason. The last test is the seed design's whole flow:
//! GitHub OIDC -> Entra agent identity token *and* SVID mTLS, both checked by the backend.

use std::fs;
use std::time::Duration;

use egressd_tests::fakes::{FakeEntra, FakeOidc, FakeWorkloadApi, Fic, SpiffeCa};
use egressd_tests::{EgressdCommand, HttpsUpstream, Output, Scene, privileged};
use serde_json::Value;

use crate::text;

/// The SPIFFE service's name, as the agent calls it.
const BUDGET: &str = "budget-backend.example";
const TRUST_DOMAIN: &str = "aim.example.com";
/// The runner's identity (the SVID egressd presents).
const RUNNER: &str = "spiffe://aim.example.com/github/runner-1";
/// The backend's identity (the one the rule allows).
const BACKEND: &str = "spiffe://aim.example.com/budget-backend";
/// Another workload of the same trust domain.
const IMPOSTOR: &str = "spiffe://aim.example.com/impostor";

/// A scene with a fake SPIRE agent for [`TRUST_DOMAIN`] and a SPIFFE backend for [`BUDGET`]
/// on `net.addr3()` that requires the runner's SVID.
struct Spiffe {
    s: Scene,
    agent: FakeWorkloadApi,
    backend: HttpsUpstream,
    config: std::path::PathBuf,
}

impl Spiffe {
    /// The backend presents an SVID for `backend_id`; the rule allows [`BACKEND`].
    fn new(backend_id: &str) -> Self {
        let s = Scene::new();
        let agent =
            FakeWorkloadApi::start(&s.scratch.path("agent.sock"), SpiffeCa::new(TRUST_DOMAIN));
        let backend_svid = agent.ca().svid(backend_id, Duration::from_secs(3600));
        let backend = HttpsUpstream::start_spiffe(
            &s.net,
            s.net.addr3(),
            BUDGET,
            &backend_svid,
            agent.ca().cert_der(),
            &[RUNNER],
        );
        let config = s.scratch.path("spiffe.toml");
        let spiffe = Self {
            s,
            agent,
            backend,
            config,
        };
        spiffe.write_config("", "");
        spiffe
    }

    /// The SPIFFE credential and rule, with `credentials` before them and `rule_extra` in the
    /// rule (a bearer `credential`).
    fn write_config(&self, credentials: &str, rule_extra: &str) {
        fs::write(
            &self.config,
            format!(
                r#"upstream_ca = "{ca}"
{credentials}
[[credential]]
name = "runner-svid"
source = "spiffe-x509"
socket = "{socket}"
spiffe_id = "{RUNNER}"

[[intercept]]
host = "{BUDGET}"
spiffe = "runner-svid"
upstream_spiffe_ids = ["{BACKEND}"]
{rule_extra}
"#,
                ca = self.s.ca_pem.display(),
                socket = self.agent.endpoint(),
            ),
        )
        .unwrap();
    }

    fn egressd(&self) -> EgressdCommand {
        self.s
            .egressd()
            .resolve(BUDGET, self.s.net.addr3())
            .arg("--config")
            .arg(&self.config)
    }
}

/// `curl https://BUDGET/budget/remaining` with the agent's placeholder credential, printing
/// the body and then ` [HTTP <code>]`.
fn budget_curl() -> String {
    format!(
        "curl -sS --max-time 20 -w ' [HTTP %{{http_code}}]' -H 'Authorization: Bearer agent-placeholder' https://{BUDGET}/budget/remaining; echo"
    )
}

/// The intercepted-request records for [`BUDGET`].
fn budget_records(out: &Output) -> Vec<Value> {
    out.audit_for(BUDGET)
        .into_iter()
        .filter(|r| r["proto"] == "https")
        .collect()
}

/// The JSON error body printed before ` [HTTP <code>]`.
#[track_caller]
fn error_body(out: &Output, code: u16) -> Value {
    let marker = format!(" [HTTP {code}]");
    let line = out
        .stdout
        .lines()
        .find(|l| l.ends_with(&marker))
        .unwrap_or_else(|| panic!("no {code} answer\n{out}"));
    let body = line.trim_end_matches(&marker);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}\n{out}"))
}

#[test]
fn the_runners_svid_is_presented_and_the_backends_spiffe_id_verified() {
    if !privileged() {
        return;
    }
    let sp = Spiffe::new(BACKEND);
    sp.agent
        .set_identities(&[IMPOSTOR, RUNNER], Duration::from_secs(600));
    // The socket from the daemon's environment this time, as SPIRE deployments set it.
    let config = fs::read_to_string(&sp.config).unwrap();
    let without_socket: String = config
        .lines()
        .filter(|l| !l.starts_with("socket = "))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(&sp.config, without_socket).unwrap();
    let script = format!(
        "{}; env | grep -c SPIFFE_ENDPOINT_SOCKET || true",
        budget_curl()
    );
    let out = sp
        .egressd()
        .env("SPIFFE_ENDPOINT_SOCKET", sp.agent.endpoint())
        .sh(&script)
        .run();
    out.assert_success();
    assert!(
        out.stdout
            .contains(&format!("hello from {BUDGET} via {BUDGET} [HTTP 200]")),
        "\n{out}"
    );
    assert!(
        out.stdout.lines().any(|l| l == "0"),
        "SPIFFE_ENDPOINT_SOCKET reached the sandbox\n{out}"
    );
    let clients = sp.backend.clients();
    assert_eq!(clients.len(), 1, "{clients:?}\n{out}");
    assert_eq!(
        clients[0].1, RUNNER,
        "the SVID chosen by spiffe_id, not the first"
    );
    assert!(
        sp.agent.issued().iter().any(|s| s.serial == clients[0].2),
        "the backend saw a certificate the agent did not issue"
    );
    let rec = budget_records(&out)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no intercepted-request record\n{out}"));
    assert_eq!(rec["status"], 200, "{rec}");
    assert_eq!(rec["spiffe_presented"], RUNNER, "{rec}");
    assert_eq!(rec["spiffe_verified"], BACKEND, "{rec}");
    assert!(text(&rec["rule"]).starts_with(BUDGET), "{rec}");
    assert_eq!(sp.agent.streams(), 1, "one FetchX509SVID stream");
    let log = fs::read_to_string(&sp.s.audit_log).unwrap();
    assert!(
        !log.contains("PRIVATE KEY"),
        "key material in the audit log"
    );
}

#[test]
fn svids_rotating_every_second_are_presented_without_a_dropped_request() {
    if !privileged() {
        return;
    }
    let sp = Spiffe::new(BACKEND);
    // Three-second SVIDs, re-issued every second (SPIRE rotates at half life): across six
    // seconds of requests the first SVID expires long before the last request.
    sp.agent.set_identities(&[RUNNER], Duration::from_secs(3));
    sp.agent.rotate_every(Some(Duration::from_secs(1)));
    let script = format!(
        r#"i=0; while [ $i -lt 20 ]; do
  curl -sS --max-time 5 -o /dev/null -w 'code=%{{http_code}}\n' https://{BUDGET}/budget/remaining
  i=$((i+1)); sleep 0.3
done"#
    );
    let out = sp.egressd().sh(&script).run();
    out.assert_success();
    let codes: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("code="))
        .collect();
    assert_eq!(codes.len(), 20, "\n{out}");
    assert!(
        codes.iter().all(|c| *c == "200"),
        "a request failed: {codes:?}\n{out}"
    );
    let clients = sp.backend.clients();
    assert_eq!(clients.len(), 20, "{clients:?}");
    let issued = sp.agent.issued();
    let mut serials: Vec<&str> = clients
        .iter()
        .map(|(_, _, serial)| serial.as_str())
        .collect();
    serials.dedup();
    assert!(
        serials.len() >= 4,
        "the backend saw {} SVIDs over ~6 s of 3 s SVIDs rotated every second: {serials:?}",
        serials.len()
    );
    for serial in &serials {
        assert!(
            issued.iter().any(|s| s.serial == *serial),
            "unknown serial {serial}"
        );
    }
    assert!(clients.iter().all(|(_, id, _)| id == RUNNER), "{clients:?}");
    assert_eq!(
        sp.agent.streams(),
        1,
        "rotations arrived on one stream, without reconnecting or restarting"
    );
    let records = budget_records(&out);
    assert_eq!(records.len(), 20, "\n{out}");
    assert!(records.iter().all(|r| r["status"] == 200), "{records:?}");
}

#[test]
fn an_upstream_presenting_another_spiffe_id_gets_a_502_naming_the_rule_and_the_id() {
    if !privileged() {
        return;
    }
    let sp = Spiffe::new(IMPOSTOR);
    sp.agent.set_identities(&[RUNNER], Duration::from_secs(600));
    let out = sp.egressd().sh(&budget_curl()).run();
    out.assert_success();
    let json = error_body(&out, 502);
    assert_eq!(json["host"], BUDGET, "{json}");
    assert!(text(&json["rule"]).starts_with(BUDGET), "{json}");
    assert_eq!(json["credential"], "runner-svid", "{json}");
    assert_eq!(json["retryable"], false, "{json}");
    assert_eq!(
        text(&json["error"]),
        format!("the upstream's SPIFFE ID {IMPOSTOR} is not allowed (allowed: {BACKEND})"),
        "{json}"
    );
    assert!(
        sp.backend.requests().is_empty(),
        "a request reached the impostor\n{out}"
    );
    let rec = budget_records(&out).into_iter().next().unwrap();
    assert_eq!(rec["decision"], "deny", "{rec}");
    assert_eq!(rec["status"], 502, "{rec}");
    assert_eq!(rec["spiffe_presented"], RUNNER, "{rec}");
    assert!(rec["spiffe_verified"].is_null(), "{rec}");
}

#[test]
fn an_expired_svid_gives_a_503_and_nothing_reaches_the_upstream() {
    if !privileged() {
        return;
    }
    let sp = Spiffe::new(BACKEND);
    // A three-second SVID that the (stuck) agent never rotates.
    sp.agent.set_identities(&[RUNNER], Duration::from_secs(3));
    let script = format!("{}; sleep 4; {}", budget_curl(), budget_curl());
    let out = sp.egressd().sh(&script).run();
    out.assert_success();
    assert!(
        out.stdout.contains("[HTTP 200]"),
        "the first request\n{out}"
    );
    let json = error_body(&out, 503);
    let error = text(&json["error"]);
    assert!(
        error.starts_with(&format!("the X.509-SVID {RUNNER} expired at "))
            && error.contains("has not rotated it"),
        "{json}"
    );
    assert_eq!(json["credential"], "runner-svid", "{json}");
    assert_eq!(json["retryable"], true, "{json}");
    assert!(text(&json["rule"]).starts_with(BUDGET), "{json}");
    assert_eq!(
        sp.backend.requests().len(),
        1,
        "only the first request may reach the backend\n{out}"
    );
}

#[test]
fn a_runner_without_an_identity_gets_a_503_and_nothing_is_dialled() {
    if !privileged() {
        return;
    }
    let sp = Spiffe::new(BACKEND);
    // No registration entry matches egressd: the agent answers PermissionDenied.
    let out = sp.egressd().sh(&budget_curl()).run();
    out.assert_success();
    let json = error_body(&out, 503);
    let error = text(&json["error"]);
    assert!(
        error.starts_with("no X.509-SVID from the Workload API at unix://")
            && error.contains("PermissionDenied"),
        "{json}"
    );
    assert_eq!(json["credential"], "runner-svid", "{json}");
    assert_eq!(sp.backend.connections(), 0, "\n{out}");
}

/// The seed design: a GitHub Actions job on a self-hosted runner calls budget-backend, which
/// checks two identities at once: an Entra agent identity token minted from the job's OIDC
/// token (blueprint hop, then agent hop) and the runner's SPIFFE ID over mTLS. The agent
/// holds neither; the audit record carries both, with the run's verified provenance.
#[test]
fn the_seed_flow_entra_agent_token_and_svid_mtls_both_reach_the_backend() {
    if !privileged() {
        return;
    }
    const TENANT: &str = "00000000-0000-0000-0000-0000000000aa";
    const BLUEPRINT: &str = "22222222-0000-0000-0000-000000000000";
    const AGENT: &str = "33333333-0000-0000-0000-000000000000";
    const SCOPE: &str = "api://budget-backend/.default";
    let sp = Spiffe::new(BACKEND);
    sp.agent.set_identities(&[RUNNER], Duration::from_secs(600));
    let oidc = FakeOidc::start(&sp.s.ca);
    for (claim, value) in [
        ("repository", "octo-org/octo-repo"),
        (
            "job_workflow_ref",
            "octo-org/octo-repo/.github/workflows/budget-check.yml@refs/heads/main",
        ),
        ("sha", "0123456789abcdef0123456789abcdef01234567"),
        ("run_id", "4242"),
    ] {
        oidc.set_claim(claim, value.into());
    }
    let entra = FakeEntra::start(&sp.s.ca, &oidc, TENANT);
    entra.add_app(
        BLUEPRINT,
        Fic {
            issuer: oidc.issuer(),
            subject: "repo:octo-org/octo-repo:ref:refs/heads/main".into(),
            audience: "api://AzureADTokenExchange".into(),
        },
    );
    entra.add_agent(BLUEPRINT, AGENT);
    sp.write_config(
        &format!(
            r#"
[provenance]
issuer = "{issuer}"

[[credential]]
name = "github"
source = "github-oidc"
audience = "api://AzureADTokenExchange"

[[credential]]
name = "budget-agent"
source = "entra-agent"
tenant = "{TENANT}"
blueprint_client_id = "{BLUEPRINT}"
agent_client_id = "{AGENT}"
scope = "{SCOPE}"
assertion = "github"
authority = "{authority}"
"#,
            issuer = oidc.issuer(),
            authority = entra.authority(),
        ),
        r#"credential = "budget-agent""#,
    );
    let script = format!(
        "{}; env | grep -c -e ACTIONS_ID_TOKEN -e SPIFFE_ENDPOINT || true",
        budget_curl()
    );
    let out = sp
        .egressd()
        .env("ACTIONS_ID_TOKEN_REQUEST_URL", oidc.request_url())
        .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", oidc.request_token())
        .sh(&script)
        .run();
    out.assert_success();
    assert!(
        out.stdout
            .contains(&format!("hello from {BUDGET} via {BUDGET} [HTTP 200]")),
        "\n{out}"
    );
    assert!(
        out.stdout.lines().any(|l| l == "0"),
        "a credential variable reached the sandbox\n{out}"
    );
    // Identity plane 1: the Entra agent identity's token, and none of the agent's headers.
    let creds = sp.backend.credentials();
    assert_eq!(creds.len(), 1, "{creds:?}\n{out}");
    let token = creds[0]
        .2
        .strip_prefix("Bearer ")
        .unwrap_or_else(|| panic!("not a bearer token: {creds:?}"));
    assert_eq!(
        entra.issued(token),
        Some((AGENT.to_owned(), SCOPE.to_owned())),
        "the backend did not get the agent identity's token\n{out}"
    );
    // Identity plane 2: the runner's SVID, checked by the backend's TLS and its allow list.
    let clients = sp.backend.clients();
    assert_eq!(clients.len(), 1, "{clients:?}");
    assert_eq!(clients[0].1, RUNNER);
    // One audit record names both planes and the run's signed provenance; never a secret.
    let rec = budget_records(&out).into_iter().next().unwrap();
    assert_eq!(rec["status"], 200, "{rec}");
    assert_eq!(rec["credential"], "budget-agent", "{rec}");
    assert_eq!(rec["token_source"], "entra-agent", "{rec}");
    assert_eq!(rec["spiffe_presented"], RUNNER, "{rec}");
    assert_eq!(rec["spiffe_verified"], BACKEND, "{rec}");
    let provenance = &rec["provenance"];
    assert_eq!(provenance["repository"], "octo-org/octo-repo", "{rec}");
    assert_eq!(provenance["run_id"], "4242", "{rec}");
    assert_eq!(
        provenance["job_workflow_ref"],
        "octo-org/octo-repo/.github/workflows/budget-check.yml@refs/heads/main",
        "{rec}"
    );
    let log = fs::read_to_string(&sp.s.audit_log).unwrap();
    assert!(!log.contains(token), "the token is in the audit log");
}

/// The leak matrix's SPIFFE column (`leaks.rs` has the others and their controls): the
/// bearer token injected beside the SVID never comes back from an echoing backend.
#[test]
fn the_bearer_token_beside_the_svid_is_never_echoed_back() {
    if !privileged() {
        return;
    }
    const TENANT: &str = "00000000-0000-0000-0000-0000000000aa";
    const APP: &str = "44444444-0000-0000-0000-000000000000";
    let sp = Spiffe::new(BACKEND);
    sp.agent.set_identities(&[RUNNER], Duration::from_secs(600));
    let oidc = FakeOidc::start(&sp.s.ca);
    let entra = FakeEntra::start(&sp.s.ca, &oidc, TENANT);
    entra.add_app(
        APP,
        Fic {
            issuer: oidc.issuer(),
            subject: "repo:octo-org/octo-repo:ref:refs/heads/main".into(),
            audience: "api://AzureADTokenExchange".into(),
        },
    );
    sp.write_config(
        &format!(
            r#"
[[credential]]
name = "github"
source = "github-oidc"
audience = "api://AzureADTokenExchange"

[[credential]]
name = "budget-app"
source = "entra"
tenant = "{TENANT}"
client_id = "{APP}"
scope = "api://budget-backend/.default"
assertion = "github"
authority = "{authority}"
"#,
            authority = entra.authority(),
        ),
        r#"credential = "budget-app""#,
    );
    let script = format!(
        "for q in forms 'forms&chunked' 'forms&sse'; do \
           curl -sS --max-time 20 --compressed -D - \"https://{BUDGET}/echo-headers?$q\"; echo; \
         done"
    );
    let out = sp
        .egressd()
        .env("ACTIONS_ID_TOKEN_REQUEST_URL", oidc.request_url())
        .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", oidc.request_token())
        .sh(&script)
        .run();
    out.assert_success();
    let creds = sp.backend.credentials();
    let token = creds
        .iter()
        .find(|(_, n, _)| n == "authorization")
        .and_then(|(_, _, v)| v.strip_prefix("Bearer "))
        .unwrap_or_else(|| panic!("no bearer token reached the backend: {creds:?}\n{out}"))
        .to_owned();
    assert!(entra.issued(&token).is_some(), "{creds:?}");
    let url: String = url::form_urlencoded::byte_serialize(token.as_bytes()).collect();
    for form in [token.as_str(), url.as_str()] {
        assert!(!out.stdout.contains(form), "\n{out}");
    }
    assert!(
        out.stdout.matches("[token redacted by egressd]").count() >= 3 * 5,
        "\n{out}"
    );
}
