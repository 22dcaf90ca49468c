//! `egressd awf` / `awf`: the gh-aw smoke invocation (`shared/reference/awf.md` §1.2) replayed
//! against the Scene's fakes, its AWF-format logs read the way gh-aw reads them (§6.3), and
//! `awf logs summary` (§6.4).

use std::fs;

use egressd_tests::{API, EVIL, EgressdCommand, Scene, Scratch, privileged, shell_words};
use serde_json::Value;

use crate::text;

/// gh-aw's classification (`firewall_blocked_domains.cjs`, `pkg/cli/firewall_log.go`): `None`
/// when the line is not a log line, else `Some((domain, allowed))`.
fn gh_aw_classify(line: &str) -> Option<(String, bool)> {
    // Split on whitespace, quoted strings kept together.
    let mut fields = Vec::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        if let Some(q) = rest.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            fields.push(&q[..end]);
            rest = q.get(end + 1..).unwrap_or("").trim_start();
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            fields.push(&rest[..end]);
            rest = rest[end..].trim_start();
        }
    }
    if fields.len() < 10 {
        return None;
    }
    let ts = fields[0];
    let numeric = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    let ts_ok = match ts.split_once('.') {
        Some((a, b)) => numeric(a) && numeric(b),
        None => numeric(ts),
    };
    if !ts_ok {
        return None;
    }
    let (status, decision) = (fields[6], fields[7]);
    let blocked = ["403", "407"].contains(&status)
        || decision.contains("NONE_NONE")
        || decision.contains("TCP_DENIED");
    let allowed = !blocked
        && (["200", "206", "304"].contains(&status)
            || ["TCP_TUNNEL", "TCP_HIT", "TCP_MISS"]
                .iter()
                .any(|d| decision.contains(d)));
    let domain = fields[2].rsplit_once(':').map_or(fields[2], |(d, _)| d);
    Some((domain.to_owned(), allowed))
}

#[test]
fn gh_aw_smoke_invocation_runs_with_awf_logs_and_summary() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let logs = s.scratch.path("firewall/logs");
    let audit = s.scratch.path("firewall/audit");
    let work = s.scratch.path("workspace");
    fs::create_dir_all(&work).unwrap();
    // The JSON line gh-aw writes (§1.2), with our allowlist and directories.
    let config = format!(
        r#"{{"$schema":"https://github.com/github/gh-aw-firewall/releases/download/v0.28.4/awf-config.schema.json","network":{{"allowDomains":["{API}"],"isolation":true}},"apiProxy":{{"enabled":true,"enableTokenSteering":true,"maxRuns":500,"maxAiCredits":1000,"maxCacheMisses":5,"models":{{}}}},"container":{{"imageTag":"0.28.4,squid=sha256:aa,agent=sha256:bb,api-proxy=sha256:cc,cli-proxy=sha256:dd"}},"logging":{{"proxyLogsDir":"{}","auditDir":"{}"}}}}"#,
        logs.display(),
        audit.display()
    );
    let config = s.scratch.write("awf-config.json", config);
    let script = format!(
        "pwd; {}; {}; exit 7",
        shell_words(&s.curl_https(API, "192.0.2.10")),
        shell_words(&s.curl_https(EVIL, "192.0.2.11"))
    );
    let dir = s.scratch.dir().display().to_string();
    let out = EgressdCommand::new()
        .subcommand(["awf"])
        .arg("--config")
        .arg(&config)
        .arg("--container-workdir")
        .arg(&work)
        .args(["--mount", &format!("{dir}:{dir}:ro")])
        .args(["--mount", &format!("{dir}:/host{dir}:ro")])
        .args([
            "--env-all",
            "--exclude-env",
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
        ])
        .args(["--exclude-env", "COPILOT_GITHUB_TOKEN"])
        .args([
            "--mount",
            "/tmp:/tmp:rw",
            "--log-level",
            "info",
            "--skip-pull",
        ])
        // egressd extensions: the fakes' addresses and the sandbox user.
        .args(["--resolve", &format!("{API}:{}", s.net.addr())])
        .args(["--resolve", &format!("{EVIL}:{}", s.net.addr2())])
        .args(["--user", "65534:65534", "--"])
        .command([script])
        .run();

    // Exit code and messages (§7).
    assert_eq!(out.code(), Some(7), "\n{out}");
    assert!(
        out.stdout.starts_with(&format!("{}\n", work.display())),
        "--container-workdir is the command's cwd\n{out}"
    );
    for line in [
        format!("[INFO] Allowed domains: {API}\n"),
        "[WARN] Firewall blocked domains:\n".to_owned(),
        format!("[WARN]   - Blocked: {EVIL}:443 (domain not in allowlist)\n"),
        format!("[WARN]   - Allowed: {API}\n"),
        format!("[WARN] To fix domain issues: --allow-domains \"{API},{EVIL}\"\n"),
        "[WARN] Command completed with exit code: 7\n".to_owned(),
    ] {
        assert!(out.stderr.contains(&line), "missing {line:?}\n{out}");
    }
    assert!(
        out.stderr.ends_with("Process exiting with code: 7\n"),
        "\n{out}"
    );

    // access.log: firewall_detailed lines that gh-aw classifies as Squid's.
    let access = fs::read_to_string(logs.join("access.log")).unwrap();
    let classified: Vec<(String, bool)> = access.lines().filter_map(gh_aw_classify).collect();
    assert_eq!(classified.len(), access.lines().count(), "{access}");
    assert!(classified.contains(&(API.to_owned(), true)), "{access}");
    assert!(classified.contains(&(EVIL.to_owned(), false)), "{access}");
    let allowed_line = access.lines().find(|l| l.contains(API)).unwrap();
    assert!(
        allowed_line.contains(&format!(
            " {API}:443 {}:443 1.1 CONNECT 200 TCP_TUNNEL:HIER_DIRECT {API}:443 \"-\"",
            s.net.addr()
        )),
        "{allowed_line}"
    );
    let denied_line = access.lines().find(|l| l.contains(EVIL)).unwrap();
    assert!(
        denied_line.contains(&format!(
            " {EVIL}:443 -:- 1.1 CONNECT 403 TCP_DENIED:HIER_NONE {EVIL}:443 \"-\""
        )),
        "{denied_line}"
    );

    // audit.jsonl in AWF's schema, beside access.log (§6.1).
    let records: Vec<Value> = fs::read_to_string(logs.join("audit.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let denied = records
        .iter()
        .find(|r| r["host"] == format!("{EVIL}:443"))
        .unwrap_or_else(|| panic!("{records:?}"));
    assert_eq!(denied["_schema"], "audit/v0.28.4");
    assert_eq!(denied["event"], "http_access");
    assert_eq!(denied["method"], "CONNECT");
    assert_eq!(denied["status"], 403);
    assert_eq!(denied["decision"], "TCP_DENIED");
    assert_eq!(denied["dest"], "-:-");

    // policy-manifest.json in the audit dir (§6.5).
    let manifest: Value =
        serde_json::from_str(&fs::read_to_string(audit.join("policy-manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["version"], 1);
    let rule = manifest["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "allow-both-plain")
        .unwrap_or_else(|| panic!("{manifest:#}"));
    assert_eq!(rule["domains"][0], API);

    // `awf logs summary` (markdown by default), with the Policy Rules block from ../audit.
    let summary = EgressdCommand::new()
        .subcommand(["awf", "logs", "summary", "--source"])
        .command([&logs])
        .run();
    assert_eq!(summary.code(), Some(0), "\n{summary}");
    let (first, second) = if API < EVIL { (API, EVIL) } else { (EVIL, API) };
    let row = |d: &str| {
        if d == API {
            format!("| {API} | 1 | 0 |\n")
        } else {
            format!("| {EVIL} | 0 | 1 |\n")
        }
    };
    let expected = format!(
        "<details>\n<summary>Firewall Activity</summary>\n\n▼ 2 requests | 1 allowed | 1 \
         blocked | 2 unique domains\n\n| Domain | Allowed | Denied |\n|--------|---------|\
         --------|\n{}{}\n<details>\n<summary>Policy Rules</summary>\n\n| Rule | Action | Hits \
         | Description |\n|------|--------|------|-------------|\n| deny-raw-ipv4 | 🚫 deny | 0 \
         | Deny direct IPv4 connections (no allowed name) |\n| deny-raw-ipv6 | 🚫 deny | 0 | \
         Deny direct IPv6 connections (no allowed name) |\n| allow-both-plain | ✅ allow | 1 | \
         Allow HTTP and HTTPS to listed domains |\n| deny-default | 🚫 deny | 1 | Deny all \
         other traffic |\n\n</details>\n\n</details>\n\n",
        row(first),
        row(second)
    );
    assert_eq!(summary.stdout, expected, "\n{summary}");
}

#[test]
fn awf_name_version_and_refusals() {
    let scratch = Scratch::new();
    let link = scratch.path("awf");
    std::os::unix::fs::symlink(egressd_tests::egressd_bin(), &link).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(&link)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["--version"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0.28.4\n");
    assert_eq!(out.status.code(), Some(0));

    let out = run(&["--build-local", "--", "true"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("[ERROR] --build-local is not supported by egressd: "),
        "{err}"
    );

    let config = scratch.write("c.json", r#"{"network":{"allowDomainz":["x.com"]}}"#);
    let out = run(&["--config", &config.display().to_string(), "--", "true"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("[ERROR] Fatal error: --config ")
            && err.contains("unknown configuration key network.allowDomainz"),
        "{err}"
    );
    assert!(err.ends_with("Process exiting with code: 1\n"), "{err}");
}

/// `egressd awf` (info messages, the environment passed) with `host` resolved to the scene's
/// third upstream address, the scene's CA trusted upstream, and its audit and proxy logs.
fn awf_with_api_upstream(s: &Scene, host: &str) -> EgressdCommand {
    EgressdCommand::new()
        .subcommand(["awf"])
        .args(["--log-level", "info", "--env-all"])
        .args(["--resolve", &format!("{host}:{}", s.net.addr3())])
        .arg("--upstream-ca")
        .arg(&s.ca_pem)
        .arg("--audit-log")
        .arg(&s.audit_log)
        .arg("--proxy-logs-dir")
        .arg(s.scratch.path("logs"))
}

/// The api-proxy (§5): the agent calls `http://api-proxy:10000` with AWF's placeholder key;
/// egressd serves it, strips the placeholder and sends the daemon's key to the (fake) OpenAI
/// over verified TLS. `/health` answers like AWF's, an unconfigured provider gets AWF's 403.
#[test]
fn api_proxy_injects_the_daemons_key_and_answers_health() {
    if !privileged() {
        return;
    }
    const OPENAI: &str = "api.openai.com";
    let s = Scene::new();
    let openai = egressd_tests::HttpsUpstream::start(&s.net, s.net.addr3(), &[OPENAI], &s.ca);
    let curl = "curl -sS --max-time 20 -w ' [HTTP %{http_code}]'";
    let script = format!(
        "{curl} http://api-proxy:10000/health; echo; \
         {curl} -H \"Authorization: Bearer $OPENAI_API_KEY\" -H 'Content-Type: application/json' \
           -d '{{\"model\":\"gpt-4o\"}}' http://api-proxy:10000/v1/chat/completions; echo; \
         {curl} -d '{{}}' http://api-proxy:10001/v1/messages; echo; \
         echo \"base=$OPENAI_BASE_URL key=$OPENAI_API_KEY\"; \
         env | grep -c 'sk-real-openai-key' || true"
    );
    let out = awf_with_api_upstream(&s, OPENAI)
        .env("OPENAI_API_KEY", "sk-real-openai-key")
        .args(["--user", "65534:65534", "--"])
        .command([script])
        .run();
    assert_eq!(out.code(), Some(0), "\n{out}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 5, "\n{out}");
    let health: Value = serde_json::from_str(
        lines[0]
            .strip_suffix(" [HTTP 200]")
            .unwrap_or_else(|| panic!("/health\n{out}")),
    )
    .unwrap();
    assert_eq!(health["status"], "healthy", "{health}");
    assert_eq!(health["providers"]["openai"], true, "{health}");
    assert_eq!(health["providers"]["anthropic"], false, "{health}");
    assert_eq!(
        lines[1],
        format!("hello from {OPENAI} via {OPENAI} [HTTP 200]"),
        "\n{out}"
    );
    assert!(
        lines[2].contains("\"type\":\"provider_not_configured\"")
            && lines[2].ends_with("[HTTP 403]"),
        "\n{out}"
    );
    assert_eq!(
        lines[3], "base=http://172.30.0.30:10000 key=sk-placeholder-for-api-proxy",
        "\n{out}"
    );
    assert_eq!(lines[4], "0", "the real key is in the sandbox\n{out}");
    assert_eq!(
        openai.credentials(),
        vec![(
            0,
            "authorization".to_owned(),
            "Bearer sk-real-openai-key".to_owned()
        )],
        "the upstream must get the daemon's key and not the placeholder\n{out}"
    );
    let records = egressd_tests::read_audit(&s.audit_log);
    let rec = records
        .iter()
        .find(|r| r["path"] == "/v1/chat/completions")
        .unwrap_or_else(|| panic!("no record of the proxied request\n{out}"));
    assert_eq!(rec["name"], OPENAI, "{rec}");
    assert_eq!(rec["decision"], "allow", "{rec}");
    assert_eq!(rec["status"], 200, "{rec}");
    assert_eq!(rec["credential"], "awf-openai", "{rec}");
    let log = fs::read_to_string(&s.audit_log).unwrap();
    assert!(
        !log.contains("sk-real-openai-key"),
        "the key is in the audit log"
    );
    // AWF's access.log: the forwarded request under the provider's host; what the api-proxy
    // answered itself (health, unconfigured provider) is not there, as Squid never sees it.
    let access = fs::read_to_string(s.scratch.path("logs/access.log")).unwrap();
    let classified: Vec<(String, bool)> = access.lines().filter_map(gh_aw_classify).collect();
    assert_eq!(classified, vec![(OPENAI.to_owned(), true)], "\n{access}");
}

/// Paths through the api-proxy are read as servers read them: dot segments resolved before
/// the route (and OpenAI's `/v1`) applies, and a path servers read differently refused.
#[test]
fn api_proxy_normalises_paths_and_refuses_ambiguous_ones() {
    if !privileged() {
        return;
    }
    const OPENAI: &str = "api.openai.com";
    let s = Scene::new();
    let openai = egressd_tests::HttpsUpstream::start(&s.net, s.net.addr3(), &[OPENAI], &s.ca);
    let curl = "curl -sS --path-as-is --max-time 20 -o /dev/null -w '%{http_code}\\n'";
    let script = format!(
        "{curl} http://api-proxy:10000/v1/models/../chat/./completions; \
         {curl} http://api-proxy:10000/v1/..%2fadmin; \
         {curl} http://api-proxy:10000/v1/%252e%252e/admin"
    );
    let out = awf_with_api_upstream(&s, OPENAI)
        .env("OPENAI_API_KEY", "sk-real-openai-key")
        .args(["--user", "65534:65534", "--"])
        .command([script])
        .run();
    assert_eq!(out.code(), Some(0), "\n{out}");
    let codes: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(codes, ["200", "400", "400"], "\n{out}");
    assert_eq!(openai.paths(), ["/v1/chat/completions"], "\n{out}");
}

/// A model request through the api-proxy cannot have the provider fetch a host the allowlist
/// does not name (an MCP server URL): `403` naming the field, nothing sent upstream.
#[test]
fn api_proxy_refuses_tool_urls_outside_the_allowlist() {
    if !privileged() {
        return;
    }
    const OPENAI: &str = "api.openai.com";
    let s = Scene::new();
    let openai = egressd_tests::HttpsUpstream::start(&s.net, s.net.addr3(), &[OPENAI], &s.ca);
    let script = "curl -sS --max-time 20 -w ' [HTTP %{http_code}]' \
        -H 'content-type: application/json' \
        -d '{\"model\":\"gpt-5\",\"tools\":[{\"type\":\"mcp\",\"server_url\":\"https://evil.example/mcp\"}]}' \
        http://api-proxy:10000/v1/responses";
    let out = awf_with_api_upstream(&s, OPENAI)
        .env("OPENAI_API_KEY", "sk-real-openai-key")
        .args(["--user", "65534:65534", "--"])
        .command([script])
        .run();
    assert_eq!(out.code(), Some(0), "\n{out}");
    assert!(out.stdout.ends_with("[HTTP 403]"), "\n{out}");
    assert!(
        out.stdout.contains("tools[0].server_url") && out.stdout.contains("evil.example"),
        "\n{out}"
    );
    assert_eq!(openai.connections(), 0, "\n{out}");
    // Control: the same request with a tool that fetches nothing goes to the provider.
    let allowed = script.replace(
        r#"{"type":"mcp","server_url":"https://evil.example/mcp"}"#,
        r#"{"type":"function","name":"f"}"#,
    );
    assert_ne!(allowed, script);
    let out = awf_with_api_upstream(&s, OPENAI)
        .env("OPENAI_API_KEY", "sk-real-openai-key")
        .args(["--user", "65534:65534", "--"])
        .command([allowed])
        .run();
    assert!(out.stdout.ends_with("[HTTP 200]"), "\n{out}");
    assert_eq!(openai.connections(), 1, "\n{out}");
}

/// The api-proxy's request handling that AWF does too: a `provider/model` name loses the
/// redundant prefix before the body goes upstream (the upstream receives the shorter body),
/// and a body over 10 MiB gets 413 `request_too_large` and goes nowhere.
#[test]
fn api_proxy_strips_the_provider_prefix_and_refuses_bodies_over_10_mib() {
    if !privileged() {
        return;
    }
    const OPENAI: &str = "api.openai.com";
    let s = Scene::new();
    let openai = egressd_tests::HttpsUpstream::start(&s.net, s.net.addr3(), &[OPENAI], &s.ca);
    let curl =
        "curl -sS --max-time 20 -w ' [HTTP %{http_code}]' -H 'content-type: application/json'";
    let script = format!(
        "{curl} -d '{{\"model\":\"openai/gpt-4o\"}}' \"$OPENAI_BASE_URL/v1/upload\"; echo; \
         {curl} -d '{{\"model\":\"gpt-4o\"}}' \"$OPENAI_BASE_URL/v1/upload\"; echo; \
         head -c 10485761 /dev/zero > /tmp/big.json; \
         {curl} --data-binary @/tmp/big.json \"$OPENAI_BASE_URL/v1/upload\" | tail -c 200; echo"
    );
    let out = awf_with_api_upstream(&s, OPENAI)
        .env("OPENAI_API_KEY", "sk-real-openai-key")
        .args(["--user", "65534:65534", "--"])
        .command([script])
        .run();
    assert_eq!(out.code(), Some(0), "\n{out}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "\n{out}");
    // {"model":"gpt-4o"} is 18 bytes, with the prefix 25.
    assert_eq!(lines[0], "received 18 bytes [HTTP 200]", "\n{out}");
    assert_eq!(lines[1], "received 18 bytes [HTTP 200]", "\n{out}");
    assert!(
        lines[2].ends_with("[HTTP 413]") && lines[2].contains("request_too_large"),
        "\n{out}"
    );
    assert_eq!(
        openai.uploads(),
        vec![18, 18],
        "the large body went nowhere"
    );
}

/// Copilot BYOK through the api-proxy (reference/awf.md §5.1, tokens.md §4.6): an Azure
/// deployment URL with a key. The agent's Copilot CLI talks to `api-proxy:10002` with a
/// placeholder; the deployment gets the daemon's key in `api-key` under its base path, and
/// the deployment's host is added to the allowlist as AWF adds it.
#[test]
fn api_proxy_copilot_byok_azure_key() {
    if !privileged() {
        return;
    }
    const AZURE: &str = "res.openai.azure.com";
    let s = Scene::new();
    let azure = egressd_tests::HttpsUpstream::start(&s.net, s.net.addr3(), &[AZURE], &s.ca);
    let script = "curl -sS --max-time 20 -w ' [HTTP %{http_code}]' \
         -H \"api-key: $COPILOT_PROVIDER_API_KEY\" -d '{}' \
         \"$COPILOT_PROVIDER_BASE_URL/chat/completions?api-version=2024-10-21\"; echo; \
         env | grep -c 'real-azure-key' || true";
    let out = awf_with_api_upstream(&s, AZURE)
        .env(
            "COPILOT_PROVIDER_BASE_URL",
            format!("https://{AZURE}/openai/deployments/gpt-4o"),
        )
        .env("COPILOT_PROVIDER_TYPE", "azure")
        .env("COPILOT_PROVIDER_API_KEY", "real-azure-key")
        .args(["--user", "65534:65534", "--"])
        .command([script])
        .run();
    assert_eq!(out.code(), Some(0), "\n{out}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines,
        vec![
            format!("hello from {AZURE} via {AZURE} [HTTP 200]").as_str(),
            "0"
        ],
        "\n{out}"
    );
    assert_eq!(
        azure.credentials(),
        vec![(0, "api-key".to_owned(), "real-azure-key".to_owned())],
        "\n{out}"
    );
    assert_eq!(
        azure.paths(),
        vec!["/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"]
    );
    assert!(
        out.stderr.contains(&format!(
            "Added to the allowlist (API targets, GitHub deployment): https://{AZURE}"
        )),
        "\n{out}"
    );
}

/// `AWF_AUTH_TYPE=github-oidc` (Azure): the api-proxy mints an Entra token from the job's
/// GitHub OIDC token and sends it to the Azure OpenAI target as a bearer; nothing of either
/// token reaches the sandbox.
#[test]
fn api_proxy_oidc_azure_mints_an_entra_token() {
    if !privileged() {
        return;
    }
    use egressd_tests::fakes::{FakeEntra, FakeOidc, Fic};
    const AZURE: &str = "res.openai.azure.com";
    const TENANT: &str = "00000000-0000-0000-0000-0000000000aa";
    const APP: &str = "11111111-2222-3333-4444-555555555555";
    let s = Scene::new();
    let azure = egressd_tests::HttpsUpstream::start(&s.net, s.net.addr3(), &[AZURE], &s.ca);
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
    let script = format!(
        "curl -sS --max-time 20 -w ' [HTTP %{{http_code}}]' -H \"Authorization: Bearer $OPENAI_API_KEY\" \
         -d '{{}}' \"$OPENAI_BASE_URL/openai/v1/chat/completions\"; echo; \
         env | grep -c -e ACTIONS_ID_TOKEN -e '{}' || true",
        oidc.request_token()
    );
    let out = awf_with_api_upstream(&s, AZURE)
        .args(["--openai-api-target", AZURE])
        .env("AWF_AUTH_TYPE", "github-oidc")
        .env("AWF_AUTH_AZURE_TENANT_ID", TENANT)
        .env("AWF_AUTH_AZURE_CLIENT_ID", APP)
        .env("AWF_AUTH_AZURE_AUTHORITY", entra.authority())
        .env("ACTIONS_ID_TOKEN_REQUEST_URL", oidc.request_url())
        .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", oidc.request_token())
        .args(["--user", "65534:65534", "--"])
        .command([script])
        .run();
    assert_eq!(out.code(), Some(0), "\n{out}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines,
        vec![
            format!("hello from {AZURE} via {AZURE} [HTTP 200]").as_str(),
            "0"
        ],
        "\n{out}"
    );
    let creds = azure.credentials();
    assert_eq!(creds.len(), 1, "{creds:?}\n{out}");
    let token = creds[0]
        .2
        .strip_prefix("Bearer ")
        .unwrap_or_else(|| panic!("not a bearer: {creds:?}"));
    assert_eq!(
        entra.issued(token),
        Some((
            APP.to_owned(),
            "https://cognitiveservices.azure.com/.default".to_owned()
        )),
        "the target got a token Entra did not issue"
    );
    assert_eq!(azure.paths(), vec!["/openai/v1/chat/completions"]);
    let records = egressd_tests::read_audit(&s.audit_log);
    let rec = records
        .iter()
        .find(|r| r["name"] == AZURE)
        .unwrap_or_else(|| panic!("no record for {AZURE}\n{out}"));
    assert_eq!(rec["credential"], "awf-oidc", "{rec}");
    assert_eq!(rec["token_source"], "entra", "{rec}");
}

/// `awf logs -f`: the lines already there, then each line appended, as they come.
#[test]
fn awf_logs_follow_prints_appended_lines() {
    use std::io::{BufRead as _, Write as _};
    let dir = Scratch::new();
    let line = |host: &str, status: u16, code: &str| {
        format!(
            "1774290908.910 172.30.0.20:55872 {host}:443 203.0.113.5:443 1.1 CONNECT {status} \
             {code} {host}:443 \"-\"\n"
        )
    };
    let log = dir.write(
        "access.log",
        line("api.github.com", 200, "TCP_TUNNEL:HIER_DIRECT"),
    );
    let mut child = std::process::Command::new(egressd_tests::egressd_bin())
        .args(["awf", "logs", "-f", "--source"])
        .arg(dir.dir())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting awf logs -f");
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(
        first.contains("CONNECT api.github.com:443 → 200 (ALLOWED)"),
        "{first:?}"
    );
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(line("evil.example", 403, "TCP_DENIED:HIER_NONE").as_bytes())
        .unwrap();
    let mut second = String::new();
    out.read_line(&mut second).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        second.contains("evil.example") && second.contains("(DENIED)"),
        "{second:?}"
    );
}

/// Anthropic workload identity federation through the api-proxy (`AWF_AUTH_PROVIDER=
/// anthropic`): egressd mints the job's GitHub OIDC token for `https://api.anthropic.com`,
/// exchanges it at the (fake) token endpoint under the federation rule, and sends the minted
/// `sk-ant-oat01-` token as a bearer with the oauth beta joined to the agent's own betas. The
/// token is minted once for both requests; a rule that does not match the job is a 503 that
/// says why.
#[test]
fn api_proxy_oidc_anthropic_exchanges_the_jobs_token() {
    if !privileged() {
        return;
    }
    use egressd_tests::fakes::{FakeAnthropicWif, FakeOidc, FederationRule};
    const ANTHROPIC: &str = "api.anthropic.com";
    const ORG: &str = "00000000-0000-0000-0000-0000000000bb";
    let s = Scene::new();
    let anthropic = egressd_tests::HttpsUpstream::start(&s.net, s.net.addr3(), &[ANTHROPIC], &s.ca);
    let oidc = FakeOidc::start(&s.ca);
    let wif = FakeAnthropicWif::start(&s.ca, &oidc);
    wif.add_rule(FederationRule {
        id: "fdrl_ci".into(),
        organization_id: ORG.into(),
        service_account_id: "svac_ci".into(),
        subject: "repo:octo-org/octo-repo:ref:refs/heads/main".into(),
    });
    wif.add_rule(FederationRule {
        id: "fdrl_other".into(),
        organization_id: ORG.into(),
        service_account_id: "svac_ci".into(),
        subject: "repo:octo-org/other:ref:refs/heads/main".into(),
    });
    let curl = "curl -sS --max-time 20 -w ' [HTTP %{http_code}]'";
    let script = format!(
        "{curl} -H \"x-api-key: $ANTHROPIC_AUTH_TOKEN\" -d '{{}}' \"$ANTHROPIC_BASE_URL/v1/messages\"; echo; \
         {curl} -H 'anthropic-beta: prompt-caching-2024-07-31' \"$ANTHROPIC_BASE_URL/echo-headers\" \
           | grep -i '^anthropic-beta'; \
         env | grep -c -e ACTIONS_ID_TOKEN -e sk-ant-oat01 || true"
    );
    let run = |rule: &str| {
        awf_with_api_upstream(&s, ANTHROPIC)
            .env("AWF_AUTH_TYPE", "github-oidc")
            .env("AWF_AUTH_PROVIDER", "anthropic")
            .env("AWF_AUTH_ANTHROPIC_FEDERATION_RULE_ID", rule)
            .env("ANTHROPIC_ORGANIZATION_ID", ORG)
            .env("ANTHROPIC_SERVICE_ACCOUNT_ID", "svac_ci")
            .env("AWF_AUTH_ANTHROPIC_TOKEN_URL", wif.token_url())
            .env("ACTIONS_ID_TOKEN_REQUEST_URL", oidc.request_url())
            .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", oidc.request_token())
            .args(["--user", "65534:65534", "--"])
            .command([script.clone()])
            .run()
    };
    let out = run("fdrl_ci");
    assert_eq!(out.code(), Some(0), "\n{out}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines,
        vec![
            format!("hello from {ANTHROPIC} via {ANTHROPIC} [HTTP 200]").as_str(),
            "anthropic-beta: prompt-caching-2024-07-31,oauth-2025-04-20",
            "0"
        ],
        "\n{out}"
    );
    let creds: Vec<_> = anthropic
        .credentials()
        .into_iter()
        .filter(|(_, name, _)| name == "authorization" || name == "x-api-key")
        .collect();
    assert_eq!(
        creds.len(),
        2,
        "one bearer per request, no x-api-key: {creds:?}\n{out}"
    );
    for (_, name, value) in &creds {
        assert_eq!(name, "authorization", "{creds:?}");
        let token = value
            .strip_prefix("Bearer ")
            .unwrap_or_else(|| panic!("not a bearer: {creds:?}"));
        assert_eq!(
            wif.issued(token).as_deref(),
            Some("svac_ci"),
            "the upstream got a token the endpoint did not issue"
        );
    }
    assert_eq!(
        creds[0].2, creds[1].2,
        "the cached token served both requests"
    );
    let calls = wif.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].outcome, "ok", "{calls:?}");
    assert_eq!(calls[0].beta.as_deref(), Some("oidc-federation-2026-04-01"));
    let records = egressd_tests::read_audit(&s.audit_log);
    let rec = records
        .iter()
        .find(|r| r["path"] == "/v1/messages")
        .unwrap_or_else(|| panic!("no record of the request\n{out}"));
    assert_eq!(rec["token_source"], "anthropic-wif", "{rec}");
    assert!(
        !std::fs::read_to_string(&s.audit_log)
            .unwrap()
            .contains("sk-ant-oat01"),
        "the minted token is in the audit log"
    );

    // A rule whose subject is another repository: refused, and the agent is told why.
    let out = run("fdrl_other");
    assert_eq!(out.code(), Some(0), "\n{out}");
    let first = out.stdout.lines().next().unwrap_or_default();
    assert!(
        first.ends_with("[HTTP 503]")
            && first.contains("invalid_grant: the identity token was refused"),
        "\n{out}"
    );
    assert!(
        wif.calls().iter().any(|c| c.outcome == "401 invalid_grant"),
        "{:?}",
        wif.calls()
    );
}

/// Budget guards (§5.6) from the AWF config: `maxRuns` counts model invocations across the
/// run (`GET /models` is not one), `maxEffectiveTokens` the weighted usage the provider
/// reported; once spent, the next invocation gets a terminal 403 with AWF's error type and
/// never reaches the provider.
#[test]
fn api_proxy_budgets_stop_the_run_with_a_terminal_403() {
    if !privileged() {
        return;
    }
    use egressd_tests::fakes::FakeCopilot;
    const OAUTH: &str = "gho_0123456789abcdef0123456789abcdef0123";
    const COPILOT: &str = "api.githubcopilot.com";
    let s = Scene::new();
    let fake = FakeCopilot::start(&s.ca);
    fake.add_github_token(OAUTH);
    let api = fake.serve_api(&s.ca, &s.net, s.net.addr3(), &[COPILOT]);
    // Each answer reports 11 input (2 cached) and 3 output tokens: 11 + 0.2 + 12 = 23.2.
    let post = "curl -sS --max-time 20 -w ' [HTTP %{http_code}]\\n' -H 'content-type: application/json' \
        -d '{\"messages\":[]}' \"$COPILOT_PROVIDER_BASE_URL/chat/completions\" | tail -c 300; echo";
    let models = "curl -sS --max-time 20 -o /dev/null -w 'models [HTTP %{http_code}]\\n' \
        \"$COPILOT_PROVIDER_BASE_URL/models\"";
    let run = |budget: &str, script: String| {
        let config = s.scratch.write(
            "awf-config.json",
            format!(
                r#"{{"network":{{"allowDomains":["{API}"]}},"apiProxy":{{"enabled":true,{budget}}}}}"#
            ),
        );
        EgressdCommand::new()
            .subcommand(["awf"])
            .arg("--config")
            .arg(&config)
            .args(["--env-all", "--exclude-env", "COPILOT_GITHUB_TOKEN"])
            .args(["--resolve", &format!("{COPILOT}:{}", s.net.addr3())])
            .arg("--upstream-ca")
            .arg(&s.ca_pem)
            .arg("--audit-log")
            .arg(&s.audit_log)
            .env("COPILOT_GITHUB_TOKEN", OAUTH)
            .env("GITHUB_SERVER_URL", "https://github.com")
            .env("GITHUB_API_URL", fake.api_url())
            .args(["--user", "65534:65534", "--"])
            .command([script])
            .run()
    };
    let out = run(
        r#""maxRuns":2"#,
        format!("{post}; {models}; {post}; {post}"),
    );
    assert_eq!(out.code(), Some(0), "\n{out}");
    let statuses: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| {
            l.rsplit_once(" [HTTP ")
                .map(|(_, s)| s.trim_end_matches(']'))
        })
        .collect();
    assert_eq!(statuses, ["200", "200", "200", "403"], "\n{out}");
    assert!(
        out.stdout.contains(r#""type":"max_runs_exceeded""#)
            && out
                .stdout
                .contains("Maximum LLM invocations exceeded (2 / 2)."),
        "\n{out}"
    );
    let chats = |calls: Vec<egressd_tests::fakes::ApiCall>| {
        calls
            .iter()
            .filter(|c| c.path.ends_with("/chat/completions"))
            .count()
    };
    assert_eq!(chats(api.calls()), 2, "the refused invocation went nowhere");
    let refused = egressd_tests::read_audit(&s.audit_log)
        .into_iter()
        .filter(|r| r["status"] == 403 && text(&r["reason"]).starts_with("api-proxy budget: "))
        .count();
    assert_eq!(refused, 1, "\n{out}");

    let out = run(
        r#""maxEffectiveTokens":40"#,
        format!("{post}; {post}; {post}"),
    );
    assert_eq!(out.code(), Some(0), "\n{out}");
    assert!(
        out.stdout
            .contains(r#""type":"effective_tokens_limit_exceeded""#)
            && out
                .stdout
                .contains("Maximum effective tokens exceeded (46.40 / 40)."),
        "\n{out}"
    );
    assert_eq!(
        chats(api.calls()),
        4,
        "two more got through, the third did not"
    );
}

/// `--rate-limit-rpm` (AWF §5.5): past the limit the api-proxy answers 429 with
/// `Retry-After` and AWF's `rate_limit_error`, and nothing reaches the upstream.
#[test]
fn api_proxy_rate_limit_answers_429() {
    if !privileged() {
        return;
    }
    const OPENAI: &str = "api.openai.com";
    let s = Scene::new();
    let openai = egressd_tests::HttpsUpstream::start(&s.net, s.net.addr3(), &[OPENAI], &s.ca);
    let one = "curl -sS --max-time 20 -D - -o /tmp/body -w '%{http_code}\\n' -d '{}' \
               \"$OPENAI_BASE_URL/v1/chat/completions\" | grep -i -e '^retry-after' -e '^[0-9][0-9][0-9]$'; \
               cat /tmp/body; echo";
    let script = format!("{one}; {one}; {one}");
    let out = awf_with_api_upstream(&s, OPENAI)
        .args(["--rate-limit-rpm", "2"])
        .env("OPENAI_API_KEY", "sk-real-openai-key")
        .args(["--user", "65534:65534", "--"])
        .command([script])
        .run();
    assert_eq!(out.code(), Some(0), "\n{out}");
    assert_eq!(
        openai.requests().len(),
        2,
        "two requests got through\n{out}"
    );
    assert!(out.stdout.contains("\n429\n"), "\n{out}");
    assert!(
        out.stdout.to_ascii_lowercase().contains("retry-after: "),
        "\n{out}"
    );
    let body = out
        .stdout
        .lines()
        .find(|l| l.contains("rate_limit_error"))
        .unwrap_or_else(|| panic!("no rate_limit_error body\n{out}"));
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["error"]["window"], "per_minute", "{body}");
    assert_eq!(body["error"]["limit"], 2, "{body}");
    assert_eq!(body["error"]["provider"], "openai", "{body}");
}

/// gh-aw's Copilot engine through egressd's api-proxy (§5.1), as the smoke-copilot workflow
/// runs it: the GitHub token is in egressd's environment only (`--exclude-env
/// COPILOT_GITHUB_TOKEN`); the agent's Copilot CLI, in offline mode, posts to
/// `$COPILOT_PROVIDER_BASE_URL` with the placeholder; egressd exchanges the token at the
/// (fake) GitHub API, sends the Copilot token and the Copilot headers to the (fake) Copilot
/// API, and the run succeeds.
#[test]
fn gh_aw_copilot_engine_runs_through_the_api_proxy() {
    if !privileged() {
        return;
    }
    use egressd_tests::fakes::FakeCopilot;
    const OAUTH: &str = "gho_0123456789abcdef0123456789abcdef0123";
    const COPILOT: &str = "api.githubcopilot.com";
    let s = Scene::new();
    let fake = FakeCopilot::start(&s.ca);
    fake.add_github_token(OAUTH);
    let api = fake.serve_api(&s.ca, &s.net, s.net.addr3(), &[COPILOT]);
    let config = s.scratch.write(
        "awf-config.json",
        format!(
            r#"{{"network":{{"allowDomains":["{API}"]}},"apiProxy":{{"enabled":true}},"logging":{{"proxyLogsDir":"{}"}}}}"#,
            s.scratch.path("logs").display()
        ),
    );
    let script = "curl -sS --max-time 20 -o /dev/null -w 'copilot [HTTP %{http_code}]\\n' \
        -H \"Authorization: Bearer $COPILOT_GITHUB_TOKEN\" -H 'content-type: application/json' \
        -d '{\"messages\":[]}' \"$COPILOT_PROVIDER_BASE_URL/chat/completions\"; \
        echo \"offline=$COPILOT_OFFLINE\"; env | grep -c 'gho_' || true";
    let out = EgressdCommand::new()
        .subcommand(["awf"])
        .arg("--config")
        .arg(&config)
        .args(["--env-all", "--exclude-env", "COPILOT_GITHUB_TOKEN"])
        .args(["--log-level", "info", "--skip-pull"])
        .args(["--resolve", &format!("{COPILOT}:{}", s.net.addr3())])
        .arg("--upstream-ca")
        .arg(&s.ca_pem)
        .arg("--audit-log")
        .arg(&s.audit_log)
        .env("COPILOT_GITHUB_TOKEN", OAUTH)
        .env("GITHUB_SERVER_URL", "https://github.com")
        .env("GITHUB_API_URL", fake.api_url())
        .env("GITHUB_RUN_ID", "4242")
        .args(["--user", "65534:65534", "--"])
        .command([script])
        .run();
    assert_eq!(out.code(), Some(0), "\n{out}");
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        vec!["copilot [HTTP 200]", "offline=true", "0"],
        "\n{out}"
    );
    assert_eq!(fake.exchanges().len(), 1, "\n{out}");
    let calls = api.calls();
    assert_eq!(calls.len(), 1, "{calls:?}\n{out}");
    let call = &calls[0];
    let token = call.authorization[0]
        .strip_prefix("Bearer ")
        .unwrap_or_else(|| panic!("{call:?}"));
    assert!(
        fake.issued(token),
        "the Copilot API got a token the exchange did not issue"
    );
    assert_eq!(call.integration_id, ["agentic-workflows"], "{call:?}");
    assert_eq!(call.interaction_id, ["4242-1"], "{call:?}");
    assert_eq!(call.initiator, ["agent"], "{call:?}");
    let access = fs::read_to_string(s.scratch.path("logs/access.log")).unwrap();
    let classified: Vec<(String, bool)> = access.lines().filter_map(gh_aw_classify).collect();
    assert_eq!(classified, vec![(COPILOT.to_owned(), true)], "\n{access}");
    // AWF's token-usage.jsonl (§5.7), which gh-aw's AI-credit accounting reads.
    let usage = fs::read_to_string(s.scratch.path("logs/api-proxy-logs/token-usage.jsonl"))
        .unwrap_or_else(|e| panic!("token-usage.jsonl: {e}\n{out}"));
    let lines: Vec<Value> = usage
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{usage}");
    let u = &lines[0];
    assert!(text(&u["_schema"]).starts_with("token-usage/v"), "{u}");
    assert_eq!(u["event"], "token_usage", "{u}");
    assert_eq!(u["provider"], "copilot", "{u}");
    assert_eq!(u["model"], "gpt-4.1", "{u}");
    assert_eq!(u["path"], "/chat/completions", "{u}");
    assert_eq!(u["status"], 200, "{u}");
    assert_eq!(u["streaming"], false, "{u}");
    assert_eq!(
        (&u["input_tokens"], &u["output_tokens"]),
        (&11.into(), &3.into()),
        "{u}"
    );
    assert_eq!(
        (&u["cache_read_tokens"], &u["cache_write_tokens"]),
        (&2.into(), &0.into()),
        "{u}"
    );
    assert_eq!(u["x_initiator"], "agent", "{u}");
    assert!(
        !text(&u["request_id"]).is_empty() && u["duration_ms"].is_u64(),
        "{u}"
    );
    assert!(text(&u["timestamp"]).ends_with('Z'), "{u}");
}
