//! TLS interception with credential injection: the agent calls the API with a placeholder,
//! egressd terminates TLS for that host only, injects a freshly minted token, and the real
//! credential never exists in the sandbox.

use std::fs;

use egressd_tests::fakes::{Down, FakeEntra, FakeOidc, Fic};
use egressd_tests::{API, EgressdCommand, Output, Scene, privileged};
use serde_json::Value;

use crate::text;

const TENANT: &str = "00000000-0000-0000-0000-0000000000aa";
const APP: &str = "11111111-2222-3333-4444-555555555555";
const SCOPE: &str = "https://cognitiveservices.azure.com/.default";

/// `curl https://API/` with the agent's own (placeholder) credentials, printing the status
/// after the body; the CA comes from the bundle egressd put in the environment.
fn agent_curl(extra: &str) -> String {
    format!(
        "curl -sS --max-time 20 -w ' [HTTP %{{http_code}}]' -H 'Authorization: Bearer agent-placeholder' -H 'api-key: agent-placeholder' {extra} https://{API}/openai/deployments/gpt/chat/completions; echo"
    )
}

fn intercepted_records(out: &Output) -> Vec<Value> {
    out.audit()
        .into_iter()
        .filter(|r| r["proto"] == "https")
        .collect()
}

#[test]
fn a_static_key_is_injected_and_the_agents_own_credentials_are_stripped() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let config = s.scratch.path("static.toml");
    fs::write(
        &config,
        format!(
            r#"upstream_ca = "{ca}"

[[credential]]
name = "openai-key"
source = "env"
var = "EGRESSD_TEST_API_KEY"

[[intercept]]
host = "{API}"
credential = "openai-key"
header = "api-key"
format = "{{token}}"
"#,
            ca = s.ca_pem.display()
        ),
    )
    .unwrap();
    let script = format!(
        "{}; env | grep -c 's3cr3t-key-value' || true; grep -c 'PRIVATE KEY' \"$SSL_CERT_FILE\" || true; echo \"bundle=$SSL_CERT_FILE\"",
        agent_curl("")
    );
    let out = s
        .egressd()
        .arg("--config")
        .arg(&config)
        .env("EGRESSD_TEST_API_KEY", "s3cr3t-key-value")
        .sh(&script)
        .run();
    out.assert_success();
    // curl verified a leaf from egressd's CA through the bundle, and the upstream answered.
    assert!(
        out.stdout
            .contains(&format!("hello from {API} via {API} [HTTP 200]")),
        "\n{out}"
    );
    assert_eq!(
        s.api.credentials(),
        vec![(0, "api-key".to_owned(), "s3cr3t-key-value".to_owned())],
        "the upstream must get the injected key and none of the agent's headers\n{out}"
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines.contains(&"0"),
        "the key or a private key leaked into the sandbox\n{out}"
    );
    assert!(out.stdout.contains("bundle=/run/egressd/"), "\n{out}");

    let rec = intercepted_records(&out)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no intercepted-request record\n{out}"));
    assert_eq!(rec["credential"], "openai-key", "{rec}");
    assert_eq!(rec["token_source"], "env", "{rec}");
    assert_eq!(rec["status"], 200, "{rec}");
    assert_eq!(rec["method"], "GET", "{rec}");
    let log = fs::read_to_string(&s.audit_log).unwrap();
    assert!(
        !log.contains("s3cr3t-key-value"),
        "the key is in the audit log"
    );
}

/// The Entra-only Azure OpenAI set-up: GitHub OIDC -> Entra workload identity federation.
struct EntraSetup {
    s: Scene,
    oidc: FakeOidc,
    entra: FakeEntra,
    config: std::path::PathBuf,
}

impl EntraSetup {
    fn new() -> Self {
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
        let config = s.scratch.path("entra.toml");
        fs::write(
            &config,
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
scope = "{SCOPE}"
assertion = "github"
authority = "{authority}"

[[intercept]]
host = "{API}"
credential = "azure-openai"
path_prefix = "/openai/"
"#,
                ca = s.ca_pem.display(),
                authority = entra.authority(),
            ),
        )
        .unwrap();
        Self {
            s,
            oidc,
            entra,
            config,
        }
    }

    fn egressd(&self) -> EgressdCommand {
        self.s
            .egressd()
            .arg("--config")
            .arg(&self.config)
            .env("ACTIONS_ID_TOKEN_REQUEST_URL", self.oidc.request_url())
            .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", self.oidc.request_token())
    }
}

#[test]
fn entra_only_azure_openai_gets_a_fresh_entra_token_minted_from_github_oidc() {
    if !privileged() {
        return;
    }
    let e = EntraSetup::new();
    let script = format!(
        "{}; env | grep -c -e ACTIONS_ID_TOKEN -e '{}' || true",
        agent_curl(""),
        e.oidc.request_token()
    );
    let out = e.egressd().sh(&script).run();
    out.assert_success();
    assert!(
        out.stdout
            .contains(&format!("hello from {API} via {API} [HTTP 200]")),
        "\n{out}"
    );
    let creds = e.s.api.credentials();
    assert_eq!(
        creds.len(),
        1,
        "exactly the injected header: {creds:?}\n{out}"
    );
    let (_, name, value) = &creds[0];
    assert_eq!(name, "authorization");
    let token = value
        .strip_prefix("Bearer ")
        .unwrap_or_else(|| panic!("not a bearer token: {value}"));
    assert_eq!(
        e.entra.issued(token),
        Some((APP.to_owned(), SCOPE.to_owned())),
        "the upstream got a token Entra did not issue for this app and scope"
    );
    assert!(e.oidc.mints() >= 1, "no GitHub OIDC token was minted");
    assert!(
        out.stdout.lines().any(|l| l == "0"),
        "OIDC variables leaked\n{out}"
    );
    let rec = intercepted_records(&out).into_iter().next().unwrap();
    assert_eq!(rec["token_source"], "entra", "{rec}");
    assert!(
        rec["token_expires_in_s"].as_u64().is_some_and(|s| s > 60),
        "{rec}"
    );
    let log = fs::read_to_string(&e.s.audit_log).unwrap();
    assert!(!log.contains(token), "the token is in the audit log");
}

#[test]
fn token_endpoint_down_gives_a_503_json_and_nothing_reaches_the_upstream() {
    if !privileged() {
        return;
    }
    let e = EntraSetup::new();
    e.entra.set_down(Some(Down::Refuse));
    let out = e.egressd().sh(&agent_curl("")).run();
    out.assert_success();
    assert!(out.stdout.contains("[HTTP 503]"), "\n{out}");
    let body = out.stdout.split(" [HTTP").next().unwrap_or_default();
    let json: Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("the 503 body is not JSON ({e}): {body}\n{out}"));
    assert_eq!(json["credential"], "azure-openai", "{json}");
    assert_eq!(json["host"], API, "{json}");
    assert_eq!(json["retryable"], true, "{json}");
    assert!(!text(&json["error"]).is_empty(), "{json}");
    assert_eq!(
        e.s.api.connections(),
        0,
        "a request went out without its credential\n{out}"
    );
}

#[test]
fn a_request_naming_another_host_gets_421_and_no_credential() {
    if !privileged() {
        return;
    }
    let e = EntraSetup::new();
    let out = e.egressd().sh(&agent_curl("-H 'Host: evil.example'")).run();
    out.assert_success();
    assert!(out.stdout.contains("[HTTP 421]"), "\n{out}");
    assert_eq!(e.s.api.connections(), 0, "\n{out}");
    assert_eq!(
        e.entra.calls().len(),
        0,
        "a token was minted for a misdirected request"
    );
}

#[test]
fn paths_outside_the_rule_get_no_credential() {
    if !privileged() {
        return;
    }
    let e = EntraSetup::new();
    let out = e
        .egressd()
        .sh(&format!(
            "curl -sS --max-time 20 -w ' [HTTP %{{http_code}}]' https://{API}/other/path \
             -H 'Authorization: Bearer the-agents-own' -H 'api-key: the-agents-key'; echo"
        ))
        .run();
    out.assert_success();
    assert!(out.stdout.contains("[HTTP 200]"), "\n{out}");
    // Neither egressd's credential nor the agent's own reached the upstream.
    assert!(e.s.api.credentials().is_empty(), "\n{out}");
    assert_eq!(e.entra.calls().len(), 0, "\n{out}");
}

#[test]
fn a_redirect_to_another_host_is_passed_to_the_client_and_carries_no_token() {
    if !privileged() {
        return;
    }
    let e = EntraSetup::new();
    // Inject on every path of this host, so the redirecting request gets the token.
    let config = fs::read_to_string(&e.config)
        .unwrap()
        .replace("path_prefix = \"/openai/\"\n", "");
    fs::write(&e.config, config).unwrap();
    let out = e
        .egressd()
        .sh(&format!(
            "curl -sS -L --max-time 20 -w ' [HTTP %{{http_code}}]' https://{API}/redirect-to/evil.example; echo \" [exit $?]\""
        ))
        .run();
    out.assert_success();
    // The 302 reached curl (egressd does not follow it); curl's own follow-up to the other
    // host is a new connection, denied by policy: no token went anywhere but the API.
    assert!(
        !out.stdout.contains("exit 0"),
        "the redirect target was reached\n{out}"
    );
    assert_eq!(e.s.evil.connections(), 0, "\n{out}");
    assert_eq!(e.s.api.credentials().len(), 1, "\n{out}");
    let recs = intercepted_records(&out);
    assert_eq!(recs.len(), 1, "\n{out}");
    assert_eq!(recs[0]["status"], 302, "{}", recs[0]);
}

#[test]
fn the_two_hop_agent_identity_flow_injects_the_agents_token() {
    if !privileged() {
        return;
    }
    const BLUEPRINT: &str = "22222222-0000-0000-0000-000000000000";
    const AGENT: &str = "33333333-0000-0000-0000-000000000000";
    const AGENT_SCOPE: &str = "https://graph.microsoft.com/.default";
    let e = EntraSetup::new();
    e.entra.add_app(
        BLUEPRINT,
        Fic {
            issuer: e.oidc.issuer(),
            subject: "repo:octo-org/octo-repo:ref:refs/heads/main".into(),
            audience: "api://AzureADTokenExchange".into(),
        },
    );
    e.entra.add_agent(BLUEPRINT, AGENT);
    let config = fs::read_to_string(&e.config).unwrap().replace(
        "[[intercept]]",
        &format!(
            r#"[[credential]]
name = "agent"
source = "entra-agent"
tenant = "{TENANT}"
blueprint_client_id = "{BLUEPRINT}"
agent_client_id = "{AGENT}"
scope = "{AGENT_SCOPE}"
assertion = "github"
authority = "{authority}"

[[intercept]]"#,
            authority = e.entra.authority()
        ),
    );
    let config = config.replace("credential = \"azure-openai\"", "credential = \"agent\"");
    fs::write(&e.config, config).unwrap();
    let out = e.egressd().sh(&agent_curl("")).run();
    out.assert_success();
    assert!(out.stdout.contains("[HTTP 200]"), "\n{out}");
    let creds = e.s.api.credentials();
    assert_eq!(creds.len(), 1, "{creds:?}\n{out}");
    let token = creds[0].2.strip_prefix("Bearer ").unwrap_or_default();
    assert_eq!(
        e.entra.issued(token),
        Some((AGENT.to_owned(), AGENT_SCOPE.to_owned())),
        "the upstream did not get the agent identity's token\n{out}"
    );
    let rec = intercepted_records(&out).into_iter().next().unwrap();
    assert_eq!(rec["token_source"], "entra-agent", "{rec}");
}

#[test]
fn ca_export_prints_the_running_sandboxs_ca_and_it_names_only_intercepted_hosts() {
    if !privileged() {
        return;
    }
    use std::io::{BufRead as _, BufReader};
    let e = EntraSetup::new();
    let argv = e.egressd().sh("echo ready; exec sleep 30").argv();
    let mut child = std::process::Command::new(egressd_tests::egressd_bin())
        .args(&argv)
        .env("ACTIONS_ID_TOKEN_REQUEST_URL", e.oidc.request_url())
        .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", e.oidc.request_token())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting egressd");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    let sandbox = format!("egressd-{}", child.id());
    let export = std::process::Command::new(egressd_tests::egressd_bin())
        .args(["ca", "export", &sandbox])
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let pem = String::from_utf8_lossy(&export.stdout).into_owned();
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    assert!(!pem.contains("PRIVATE KEY"), "{pem}");
    // The certificate's name constraints permit exactly the intercepted host.
    let text = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            c.stdin.take().unwrap().write_all(pem.as_bytes())?;
            c.wait_with_output()
        })
        .expect("openssl x509");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("Name Constraints: critical"), "{text}");
    assert!(text.contains(&format!("DNS:{API}")), "{text}");
    assert!(!text.contains("DNS:evil.example"), "{text}");
}

/// `egressd-probe ACTION ARGS...` as the sandboxed command.
fn probe_argv(e: &EntraSetup, action: &str, args: &[&str]) -> Vec<String> {
    let mut argv = vec![e.s.probe.display().to_string(), action.to_owned()];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    argv
}

/// The one credential header the upstream saw must be a bearer token Entra issued for this
/// app and scope (and nothing of the agent's); returns the token.
#[track_caller]
fn only_an_entra_token(e: &EntraSetup, out: &Output) -> String {
    let creds = e.s.api.credentials();
    assert_eq!(
        creds.len(),
        1,
        "exactly the injected header, none of the agent's: {creds:?}\n{out}"
    );
    let (_, name, value) = &creds[0];
    assert_eq!(name, "authorization", "{creds:?}\n{out}");
    let token = value
        .strip_prefix("Bearer ")
        .unwrap_or_else(|| panic!("not a bearer token: {value}\n{out}"));
    assert_eq!(
        e.entra.issued(token),
        Some((APP.to_owned(), SCOPE.to_owned())),
        "the upstream got a token Entra did not issue for this app and scope\n{out}"
    );
    token.to_owned()
}

/// A JSON array of numbers as `u64`s.
#[track_caller]
fn numbers(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|n| n.as_u64().unwrap_or_else(|| panic!("not a number: {n}")))
        .collect()
}

#[test]
fn server_sent_events_stream_through_interception_as_they_are_produced() {
    if !privileged() {
        return;
    }
    const N: u64 = 6;
    const GAP_MS: u64 = 300;
    let e = EntraSetup::new();
    let url = format!("https://{API}/openai/sse?n={N}&gap_ms={GAP_MS}");
    let out = e.egressd().command(probe_argv(&e, "sse", &[&url])).run();
    out.assert_success();
    let line = crate::probe_line(&out, "sse");
    assert_eq!(line["result"], "ok", "{line}\n{out}");
    assert_eq!(line["status"], 200, "{line}\n{out}");
    let expected: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    let events: Vec<String> = line["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events: {line}"))
        .iter()
        .map(text)
        .collect();
    assert_eq!(events, expected, "every event, in order: {line}\n{out}");
    let arrivals = numbers(&line["arrivals_ms"]);
    let (first, last) = (arrivals[0], arrivals[arrivals.len() - 1]);
    // The upstream starts producing when it answers (after the token was minted) and takes
    // (N-1)*GAP_MS = 1.5 s. Buffered anywhere on the way, the events (and perhaps the head)
    // would arrive together at the end; streamed, the first arrives with the head and the
    // arrivals spread like the production. Times count from the response head, so a slow
    // mint does not matter.
    let head = line["headers_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("no headers_ms: {line}"));
    assert!(
        first.saturating_sub(head) < last.saturating_sub(head) / 2,
        "head at {head} ms, first event at {first} ms, last at {last} ms: the stream was buffered\n{line}\n{out}"
    );
    assert!(
        last - first >= (N - 1) * GAP_MS / 2,
        "arrivals {arrivals:?} ms do not follow the production gaps of {GAP_MS} ms\n{line}\n{out}"
    );
    only_an_entra_token(&e, &out);
    let rec = intercepted_records(&out).into_iter().next().unwrap();
    assert_eq!(rec["status"], 200, "{rec}");
    assert_eq!(rec["credential"], "azure-openai", "{rec}");
}

#[test]
fn a_websocket_upgrade_on_an_intercepted_route_echoes_and_carries_only_the_injected_token() {
    if !privileged() {
        return;
    }
    const MESSAGE: &str = "hello over an intercepted websocket";
    let e = EntraSetup::new();
    let url = format!("wss://{API}/openai/ws");
    let out = e
        .egressd()
        .command(probe_argv(&e, "websocket", &[&url, MESSAGE]))
        .run();
    out.assert_success();
    let line = crate::probe_line(&out, "websocket");
    assert_eq!(line["result"], "ok", "{line}\n{out}");
    assert_eq!(line["status"], 101, "{line}\n{out}");
    assert_eq!(line["echo"], MESSAGE, "{line}\n{out}");
    // The echo came from the upstream, through egressd (the sandbox cannot reach it otherwise).
    assert_eq!(
        e.s.api.websocket_messages(),
        vec![MESSAGE.to_owned()],
        "\n{out}"
    );
    assert_eq!(
        e.s.api.requests().len(),
        1,
        "one upgrade request upstream\n{out}"
    );
    only_an_entra_token(&e, &out);
    let rec = intercepted_records(&out).into_iter().next().unwrap();
    assert_eq!(rec["status"], 101, "{rec}");
    assert_eq!(rec["credential"], "azure-openai", "{rec}");
}

#[test]
fn a_websocket_echoing_the_upgrades_credentials_never_reveals_the_token() {
    if !privileged() {
        return;
    }
    let e = EntraSetup::new();
    let url = format!("wss://{API}/openai/ws");
    let out = e
        .egressd()
        .command(probe_argv(&e, "websocket", &[&url, "echo-credentials"]))
        .run();
    out.assert_success();
    let line = crate::probe_line(&out, "websocket");
    assert_eq!(line["status"], 101, "{line}\n{out}");
    // The upstream did get the minted token, and sent it back in the 101 and in a frame...
    let token = only_an_entra_token(&e, &out);
    let marker = "[token redacted by egressd]";
    for field in ["echo", "echoed_in_101"] {
        let echoed = line[field].as_str().unwrap_or_default();
        // ...which reached the sandbox scrubbed.
        assert!(!echoed.contains(&token), "{field}: {line}");
        assert!(echoed.contains(marker), "{field}: {line}");
    }
}

#[test]
fn five_second_tokens_across_fifteen_seconds_of_requests_are_refreshed_and_never_used_expired() {
    if !privileged() {
        return;
    }
    let e = EntraSetup::new();
    e.entra.set_expires_in(std::time::Duration::from_secs(5));
    // Requests for about 14 s (bounded in count and time), paced by the client.
    let script = format!(
        r#"end=$(( $(date +%s) + 14 )); i=0
while [ $i -lt 150 ] && [ "$(date +%s)" -lt $end ]; do
  curl -sS --max-time 5 -o /dev/null -w 'code=%{{http_code}}\n' -H 'Authorization: Bearer agent-placeholder' -H 'api-key: agent-placeholder' https://{API}/openai/deployments/gpt/chat/completions
  i=$((i + 1)); sleep 0.2
done"#
    );
    let out = e.egressd().sh(&script).run();
    out.assert_success();
    let codes: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("code="))
        .collect();
    assert!(codes.len() >= 20, "too few requests ran\n{out}");
    assert!(
        codes.iter().all(|c| *c == "200"),
        "a request failed: {codes:?}\n{out}"
    );
    let received = e.s.api.received_at();
    let creds = e.s.api.credentials();
    assert_eq!(received.len(), codes.len(), "\n{out}");
    assert_eq!(
        creds.iter().map(|(n, _, _)| *n).collect::<Vec<_>>(),
        (0..received.len()).collect::<Vec<_>>(),
        "every request upstream must carry exactly one credential header: {creds:?}\n{out}"
    );
    let span = received[received.len() - 1] - received[0];
    assert!(
        span >= std::time::Duration::from_secs(10),
        "the requests spanned only {span:?}: not two token lifetimes\n{out}"
    );
    let mut tokens: Vec<&str> = Vec::new();
    for (n, name, value) in &creds {
        assert_eq!(name, "authorization", "request {n}\n{out}");
        let token = value
            .strip_prefix("Bearer ")
            .unwrap_or_else(|| panic!("request {n}: not a bearer token: {value}\n{out}"));
        assert_eq!(
            e.entra.issued(token),
            Some((APP.to_owned(), SCOPE.to_owned())),
            "request {n} carried a token Entra did not issue\n{out}"
        );
        let expires = e.entra.expires_at(token).expect("issued above");
        assert!(
            received[*n] < expires,
            "request {n} reached the upstream {:?} after its token expired\n{out}",
            received[*n] - expires
        );
        if !tokens.contains(&token) {
            tokens.push(token);
        }
    }
    assert!(
        tokens.len() >= 2,
        "one token served {span:?} of requests with 5 s lifetimes: no refresh happened\n{out}"
    );
    let log = fs::read_to_string(&e.s.audit_log).unwrap();
    assert!(
        tokens.iter().all(|t| !log.contains(t)),
        "a token is in the audit log"
    );
}

#[test]
fn an_h2_request_for_a_sibling_host_on_the_same_connection_gets_421_and_no_credential() {
    if !privileged() {
        return;
    }
    let e = EntraSetup::new();
    let url = format!("https://{API}/openai/deployments/gpt/chat/completions");
    let out = e
        .egressd()
        .command(probe_argv(
            &e,
            "h2-authorities",
            &[&url, egressd_tests::EVIL],
        ))
        .run();
    out.assert_success();
    let line = crate::probe_line(&out, "h2-authorities");
    assert_eq!(line["result"], "ok", "{line}\n{out}");
    assert_eq!(line["alpn"], "h2", "{line}\n{out}");
    assert_eq!(
        numbers(&line["statuses"]),
        [200, 421],
        "the same connection: {API} served, {} misdirected\n{line}\n{out}",
        egressd_tests::EVIL
    );
    // Only the first request went upstream, with the one injected token.
    assert_eq!(
        e.s.api.requests(),
        vec![(API.to_owned(), API.to_owned())],
        "\n{out}"
    );
    only_an_entra_token(&e, &out);
    assert_eq!(e.s.evil.connections(), 0, "\n{out}");
    let statuses: Vec<Value> = intercepted_records(&out)
        .iter()
        .map(|r| r["status"].clone())
        .collect();
    assert!(
        statuses.contains(&Value::from(200)) && statuses.contains(&Value::from(421)),
        "{statuses:?}\n{out}"
    );
}

#[test]
fn aws_keys_from_web_identity_sign_the_request_with_sigv4() {
    if !privileged() {
        return;
    }
    use egressd_tests::fakes::FakeAwsSts;
    const ROLE: &str = "arn:aws:iam::123456789012:role/gha-bedrock";
    let s = Scene::new();
    let oidc = FakeOidc::start(&s.ca);
    let sts = FakeAwsSts::start(&s.ca, &oidc, "sts.amazonaws.com");
    sts.add_role(ROLE, None);
    let config = s.scratch.path("aws.toml");
    fs::write(
        &config,
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
    )
    .unwrap();
    let out = s
        .egressd()
        .arg("--config")
        .arg(&config)
        .env("ACTIONS_ID_TOKEN_REQUEST_URL", oidc.request_url())
        .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", oidc.request_token())
        .sh(&format!(
            "curl -sS --max-time 20 -w ' [HTTP %{{http_code}}]' -H 'Authorization: Bearer agent-placeholder' -H 'content-type: application/json' -d '{{\"prompt\":\"hi\"}}' https://{API}/model/claude/invoke; echo"
        ))
        .run();
    out.assert_success();
    assert!(out.stdout.contains("[HTTP 200]"), "\n{out}");
    let creds = s.api.credentials();
    let header = |name: &str| {
        creds
            .iter()
            .find(|(_, n, _)| n == name)
            .map(|(_, _, v)| v.clone())
            .unwrap_or_else(|| panic!("no {name} header upstream: {creds:?}\n{out}"))
    };
    let authorization = header("authorization");
    let key_id = authorization
        .strip_prefix("AWS4-HMAC-SHA256 Credential=")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("not a SigV4 authorization: {authorization}"));
    let (role, session_token) = sts.session_of(key_id).unwrap_or_else(|| {
        panic!("the request was signed with keys STS did not issue: {authorization}")
    });
    assert_eq!(role, ROLE);
    assert!(
        authorization.contains("/us-east-1/bedrock/aws4_request"),
        "{authorization}"
    );
    assert!(
        authorization.contains("SignedHeaders=") && authorization.contains("host"),
        "{authorization}"
    );
    assert_eq!(header("x-amz-security-token"), session_token);
    assert!(!header("x-amz-date").is_empty());
    assert!(
        !creds
            .iter()
            .any(|(_, _, v)| v.contains("agent-placeholder")),
        "the agent's header reached the upstream: {creds:?}"
    );
    let rec = intercepted_records(&out).into_iter().next().unwrap();
    assert_eq!(rec["token_source"], "aws-web-identity", "{rec}");
    let log = fs::read_to_string(&s.audit_log).unwrap();
    assert!(
        !log.contains(&session_token),
        "the session token is in the audit log"
    );
}

/// Bypass catalogue §12, credential reflection: an allowed upstream that echoes the request
/// (its headers, in the body and in a response header) must not hand the sandbox the real
/// key egressd injected. Both copies come back redacted.
#[test]
fn an_upstream_echoing_the_request_does_not_reveal_the_injected_key() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let config = s.scratch.write(
        "static.toml",
        format!(
            r#"upstream_ca = "{ca}"

[[credential]]
name = "openai-key"
source = "env"
var = "EGRESSD_TEST_API_KEY"

[[intercept]]
host = "{API}"
credential = "openai-key"
header = "api-key"
format = "{{token}}"
"#,
            ca = s.ca_pem.display()
        ),
    );
    let script = format!(
        "curl -sS --max-time 20 -D - -H 'api-key: agent-placeholder' https://{API}/echo-headers"
    );
    let out = s
        .egressd()
        .arg("--config")
        .arg(&config)
        .env("EGRESSD_TEST_API_KEY", "s3cr3t-key-value")
        .sh(&script)
        .run();
    out.assert_success();
    // The upstream did get the real key...
    assert_eq!(
        s.api.credentials(),
        vec![(0, "api-key".to_owned(), "s3cr3t-key-value".to_owned())],
        "\n{out}"
    );
    // ...and echoed it twice, but the sandbox saw neither copy.
    assert!(!out.stdout.contains("s3cr3t-key-value"), "\n{out}");
    assert!(
        out.stdout.contains("api-key: [token redacted by egressd]"),
        "the body's copy is redacted\n{out}"
    );
    assert!(
        out.stdout
            .to_ascii_lowercase()
            .contains("x-echo-api-key: [token redacted by egressd]"),
        "the header's copy is redacted\n{out}"
    );
}

#[test]
fn path_tricks_never_carry_the_credential_outside_its_prefix() {
    if !privileged() {
        return;
    }
    let e = EntraSetup::new();
    // Each trick starts with the rule's prefix as written: a prefix matched on the raw path
    // would inject the token, and a server normalising the path would serve /admin with it.
    let resolved = [
        "/openai/../admin",
        "/openai/%2e%2e/admin",
        "/openai/./../admin",
        "/openai/.%2E/admin",
        "/openai//..//admin",
    ];
    let ambiguous = [
        "/openai/%2E%2E%2Fadmin",
        "/openai/..%2fadmin",
        "/openai/..%5cadmin",
        "/openai/%252e%252e/admin",
    ];
    for path in resolved.iter().chain(&ambiguous) {
        assert!(path.starts_with("/openai/"), "{path}");
    }
    let curl = |path: &str| {
        format!(
            "curl -sS --path-as-is --max-time 20 -o /dev/null -w '{path} %{{http_code}}\\n' \
             'https://{API}{path}'"
        )
    };
    let script: Vec<String> = resolved.iter().chain(&ambiguous).map(|p| curl(p)).collect();
    let out = e.egressd().sh(&script.join("; ")).run();
    out.assert_success();
    for path in resolved {
        assert!(out.stdout.contains(&format!("{path} 200")), "{path}\n{out}");
    }
    for path in ambiguous {
        assert!(out.stdout.contains(&format!("{path} 400")), "{path}\n{out}");
    }
    // The upstream got the normalised path each time, and never a token.
    let paths = e.s.api.paths();
    assert_eq!(paths.len(), resolved.len(), "{paths:?}\n{out}");
    assert!(paths.iter().all(|p| p == "/admin"), "{paths:?}");
    assert!(e.s.api.credentials().is_empty(), "\n{out}");
    assert_eq!(e.entra.calls().len(), 0, "\n{out}");
    let refused: Vec<Value> = intercepted_records(&out)
        .into_iter()
        .filter(|r| r["status"] == 400)
        .collect();
    assert_eq!(refused.len(), ambiguous.len(), "\n{out}");
    assert!(
        refused
            .iter()
            .all(|r| r["reason"].as_str().unwrap().contains("ambiguous path")),
        "{refused:?}"
    );
    // Inside the prefix, the same kinds of path still get the token, normalised.
    let out = e
        .egressd()
        .sh(&curl("/openai/deployments/../deployments/gpt/x%2Dy"))
        .run();
    out.assert_success();
    assert!(out.stdout.contains(" 200"), "\n{out}");
    assert_eq!(e.s.api.credentials().len(), 1, "\n{out}");
    assert!(
        e.s.api
            .paths()
            .contains(&"/openai/deployments/gpt/x-y".to_owned()),
        "{:?}",
        e.s.api.paths()
    );
}

#[test]
fn compressed_and_encoded_echoes_never_reveal_the_injected_key() {
    if !privileged() {
        return;
    }
    const KEY: &str = "s3cr3t/key+value=0123456789";
    let s = Scene::new();
    let config = s.scratch.write(
        "static.toml",
        format!(
            r#"upstream_ca = "{ca}"

[[credential]]
name = "openai-key"
source = "env"
var = "EGRESSD_TEST_API_KEY"

[[intercept]]
host = "{API}"
credential = "openai-key"
header = "api-key"
format = "{{token}}"
"#,
            ca = s.ca_pem.display()
        ),
    );
    // Control: the same echo without egressd, asked for gzip, reveals the key in every form
    // once curl has decompressed it.
    let direct = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--compressed", "--cacert"])
        .arg(&s.ca_pem)
        .arg("--resolve")
        .arg(format!("{API}:443:{}", s.net.addr()))
        .args(["-H", &format!("api-key: {KEY}")])
        .arg(format!("https://{API}/echo-headers?forms"))
        .output()
        .unwrap();
    let direct = String::from_utf8_lossy(&direct.stdout);
    let url: String = url::form_urlencoded::byte_serialize(KEY.as_bytes()).collect();
    assert!(direct.contains(KEY), "control: {direct}");
    assert!(direct.contains(&url), "control: {direct}");
    assert!(direct.contains(r"s3cr3t\/key"), "control: {direct}");
    let basic = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("user:{KEY}"),
    );
    assert!(direct.contains(&basic), "control: {direct}");
    // The part of the Basic credential that is the key's alone.
    let basic_key = &basic[8..basic.len() - 4];
    let script = format!(
        "curl -sS --max-time 20 --compressed -D - -H 'api-key: placeholder' \
           'https://{API}/echo-headers?forms'; echo; \
         curl -sS --max-time 20 --compressed -o /dev/null -w 'always-gzip %{{http_code}}\\n' \
           'https://{API}/echo-headers?gzip=always'"
    );
    let out = s
        .egressd()
        .arg("--config")
        .arg(&config)
        .env("EGRESSD_TEST_API_KEY", KEY)
        .sh(&script)
        .run();
    out.assert_success();
    // The upstream got the key, asked for identity.
    assert!(
        s.api.credentials().iter().all(|(_, _, v)| v == KEY),
        "\n{out}"
    );
    for leaked in [KEY, url.as_str(), r"s3cr3t\/key", basic_key] {
        assert!(!out.stdout.contains(leaked), "{leaked}\n{out}");
    }
    let echoed = out.stdout.to_ascii_lowercase();
    assert!(echoed.contains("accept-encoding: identity"), "\n{out}");
    for form in ["url: ", "json: ", "basic: "] {
        let line = echoed
            .lines()
            .find(|l| l.starts_with(form))
            .unwrap_or_default();
        assert!(
            line.contains("[token redacted by egressd]"),
            "{form}\n{out}"
        );
    }
    // A server that compresses anyway cannot be checked: refused, audited.
    assert!(out.stdout.contains("always-gzip 502"), "\n{out}");
    let recs = intercepted_records(&out);
    assert!(
        recs.iter().any(|r| r["status"] == 502
            && r["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("content-encoding: gzip")),
        "{recs:?}"
    );
}

#[test]
fn tool_urls_outside_the_allowlist_are_refused_before_the_provider_sees_them() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let config = |tool_urls: &str| {
        s.scratch.write(
            "tools.toml",
            format!(
                r#"upstream_ca = "{ca}"
allow_domains = ["mcp.allowed.example"]

[[credential]]
name = "key"
source = "env"
var = "EGRESSD_TEST_API_KEY"

[[intercept]]
host = "{API}"
credential = "key"
{tool_urls}
"#,
                ca = s.ca_pem.display()
            ),
        )
    };
    let post = |name: &str, body: &str| {
        format!(
            "curl -sS --max-time 20 -o /dev/null -w '{name} %{{http_code}}\\n' \
             -H 'content-type: application/json' -d '{body}' https://{API}/v1/messages"
        )
    };
    let script = [
        post(
            "evil-mcp",
            r#"{"model":"m","mcp_servers":[{"type":"url","url":"https://evil.example/sse"}]}"#,
        ),
        post(
            "open-web-fetch",
            r#"{"model":"m","tools":[{"type":"web_fetch_20250910","name":"web_fetch"}]}"#,
        ),
        post(
            "allowed-mcp",
            r#"{"model":"m","mcp_servers":[{"type":"url","url":"https://mcp.allowed.example/sse"}]}"#,
        ),
    ]
    .join("; ");
    let run = |config: std::path::PathBuf| {
        s.egressd()
            .arg("--config")
            .arg(config)
            .env("EGRESSD_TEST_API_KEY", "static-key-0123456789")
            .sh(&script)
            .run()
    };
    let out = run(config(""));
    out.assert_success();
    for line in ["evil-mcp 403", "open-web-fetch 403", "allowed-mcp 200"] {
        assert!(out.stdout.contains(line), "{line}\n{out}");
    }
    // Only the allowed request reached the provider; the refusals name field and host.
    assert_eq!(s.api.paths().len(), 1, "\n{out}");
    let refused: Vec<Value> = intercepted_records(&out)
        .into_iter()
        .filter(|r| r["status"] == 403)
        .collect();
    assert_eq!(refused.len(), 2, "\n{out}");
    let reason = refused[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("mcp_servers[0].url") && reason.contains("evil.example"),
        "{reason}"
    );
    // Control: the same requests with tool_urls = "allow" all reach the provider.
    let out = run(config("tool_urls = \"allow\""));
    out.assert_success();
    assert_eq!(s.api.paths().len(), 4, "\n{out}");
}
