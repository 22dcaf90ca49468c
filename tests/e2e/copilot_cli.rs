//! GitHub's real Copilot CLI (`@github/copilot`, pinned and installed by `cargo xtask setup`)
//! in prompt mode under `egressd exec` with the README's five-line `[copilot]` table and no
//! token in the sandbox: it must print the fake model's streamed answer and exit 0 on
//! github.com, on a GHE.com tenant, on a data-residency tenant (exchange refused with 403) and
//! on GHES, while the fakes see only tokens egressd holds, never the sandbox's placeholder.
//!
//! The fakes answer what the real CLI sends (`tests/captures/copilot-cli-1.0.102.md`). The
//! GitHub API and the Copilot API live in the test's upstream namespace under their real
//! names; `--resolve` points egressd at them for the sandbox's traffic and for its own
//! Copilot exchange alike.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;

use egressd_tests::fakes::{FAKE_MODEL_ANSWER, FakeCopilot, FakeCopilotApi, FakeGitHubApi};
use egressd_tests::{EgressdCommand, Output, Scene, privileged};

/// The CLI's native binary (its own Node runtime inside).
const CLI: &str = "/opt/egressd-tests/copilot/node_modules/@github/copilot-linux-x64/copilot";
/// Its package, extracted once by `cargo xtask setup` (else 235 MB go into every `HOME`).
const PKG_CACHE: &str = "/opt/egressd-tests/copilot/pkg-cache";
/// The GitHub token egressd holds (a Copilot OAuth token).
const HELD: &str = "gho_0123456789abcdef0123456789abcdef0123";
/// The sandbox user.
const SANDBOX_UID: u32 = 65534;
/// A DNS server that answers nothing: every name the tests use is given with `--resolve`, so
/// a host the CLI tries beyond those (an allowed GitHub name, say) fails here instead of
/// being looked up, and dialled, on the real network.
const NO_DNS: &str = "127.0.0.1:9";

/// One GitHub deployment: its server and API URLs, the names its GitHub API and Copilot API
/// answer on, and the Copilot API the user's plan names.
struct Deployment {
    server_url: &'static str,
    api_url: &'static str,
    github_names: &'static [&'static str],
    copilot_names: &'static [&'static str],
    copilot_endpoint: &'static str,
}

const DOTCOM: Deployment = Deployment {
    server_url: "https://github.com",
    api_url: "https://api.github.com",
    github_names: &["api.github.com"],
    copilot_names: &[
        "api.business.githubcopilot.com",
        "telemetry.business.githubcopilot.com",
    ],
    copilot_endpoint: "https://api.business.githubcopilot.com",
};

const TENANT: Deployment = Deployment {
    server_url: "https://acme.ghe.com",
    api_url: "https://api.acme.ghe.com",
    github_names: &["api.acme.ghe.com"],
    copilot_names: &[
        "copilot-api.acme.ghe.com",
        "copilot-telemetry-service.acme.ghe.com",
    ],
    copilot_endpoint: "https://copilot-api.acme.ghe.com",
};

struct CliSetup {
    s: Scene,
    fake: FakeCopilot,
    github: FakeGitHubApi,
    api: FakeCopilotApi,
    deployment: &'static Deployment,
    config: PathBuf,
    home: PathBuf,
}

impl CliSetup {
    fn new(deployment: &'static Deployment) -> Self {
        Self::with_copilot_names(deployment, deployment.copilot_names)
    }

    /// As [`Self::new`], with the Copilot API answering on `copilot_names` (what `awf`
    /// derives instead of the plan's endpoint).
    fn with_copilot_names(deployment: &'static Deployment, copilot_names: &[&str]) -> Self {
        assert!(
            fs::metadata(CLI).is_ok(),
            "{CLI} is missing: run `cargo xtask setup`, which installs the Copilot CLI"
        );
        let s = Scene::new();
        let fake = FakeCopilot::start(&s.ca);
        fake.add_github_token(HELD);
        fake.set_api_endpoint(deployment.copilot_endpoint);
        let github = fake.serve_github_api(&s.ca, &s.net, s.net.addr4(), deployment.github_names);
        let api = fake.serve_api(&s.ca, &s.net, s.net.addr3(), copilot_names);
        let config = s.scratch.write(
            "copilot.toml",
            format!(
                r#"upstream_ca = "{ca}"

[[credential]]
name = "gh"
source = "env"
var = "COPILOT_GITHUB_TOKEN"

[copilot]
github_token = "gh"
"#,
                ca = s.ca_pem.display()
            ),
        );
        // A fresh HOME owned by the sandbox user: the CLI caches its user answer there.
        let home = s.scratch.path("home");
        fs::create_dir_all(&home).unwrap();
        std::os::unix::fs::chown(&home, Some(SANDBOX_UID), Some(SANDBOX_UID)).unwrap();
        fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).unwrap();
        Self {
            s,
            fake,
            github,
            api,
            deployment,
            config,
            home,
        }
    }

    /// `egressd exec` with the `[copilot]` table, `COPILOT_GITHUB_TOKEN` in egressd's own
    /// environment, and the deployment's names resolved into the test's namespace.
    fn egressd(&self) -> EgressdCommand {
        let mut cmd = self
            .s
            .egressd()
            .arg("--config")
            .arg(&self.config)
            .env("COPILOT_GITHUB_TOKEN", HELD)
            .env("GITHUB_SERVER_URL", self.deployment.server_url)
            .env("GITHUB_API_URL", self.deployment.api_url)
            .arg("--dns-server")
            .arg(NO_DNS)
            .timeout(std::time::Duration::from_secs(120));
        for name in self.deployment.github_names {
            cmd = cmd.resolve(name, self.s.net.addr4());
        }
        for name in self.deployment.copilot_names {
            cmd = cmd.resolve(name, self.s.net.addr3());
        }
        cmd
    }

    /// The CLI's prompt under egressd; the sandbox's environment is written to
    /// `HOME/env.txt` first, for [`Self::assert_no_secret_in_the_sandbox`].
    fn run(&self) -> Output {
        let script = format!(
            "export HOME={home} COPILOT_PKG_CACHE_HOME={PKG_CACHE} CI=true; \
             env > $HOME/env.txt; \
             {CLI} -p 'say hi' --allow-all-tools --no-auto-update -s",
            home = self.home.display()
        );
        self.egressd().sh(&script).run()
    }

    /// The answer reached the terminal, and every token the fakes saw was one egressd holds
    /// (the GitHub token on the GitHub API; a Copilot token the exchange issued, or the GitHub
    /// token itself after a refused exchange, on the Copilot API): never a placeholder.
    fn assert_answered_with_held_tokens(&self, out: &Output) {
        assert_eq!(out.code(), Some(0), "\n{out}");
        assert!(out.stdout.contains(FAKE_MODEL_ANSWER), "\n{out}");
        let github = self.github.calls();
        assert!(
            github
                .iter()
                .any(|c| c.path.contains("/copilot_internal/user")),
            "the CLI never asked the GitHub API for its user: {github:?}\n{out}"
        );
        for call in &github {
            for value in &call.authorization {
                let token = value.split_whitespace().last().unwrap_or_default();
                assert_eq!(token, HELD, "{call:?}\n{out}");
            }
        }
        let api = self.api.calls();
        assert!(
            api.iter().any(|c| c.path.ends_with("/models")),
            "the CLI never listed the models: {api:?}\n{out}"
        );
        for call in &api {
            for value in &call.authorization {
                let token = value.split_whitespace().last().unwrap_or_default();
                assert!(
                    token == HELD || self.fake.issued(token),
                    "the Copilot API got a token egressd does not hold: {call:?}\n{out}"
                );
            }
        }
        self.assert_no_secret_in_the_sandbox(out);
    }

    /// Neither the sandbox's environment nor any file the CLI left in its `HOME` holds the
    /// GitHub token or a Copilot token; the environment holds the placeholder instead.
    fn assert_no_secret_in_the_sandbox(&self, out: &Output) {
        let env = fs::read_to_string(self.home.join("env.txt")).unwrap();
        assert!(
            env.lines()
                .any(|l| l.starts_with("COPILOT_GITHUB_TOKEN=ghu_egressdplaceholder")),
            "{env}"
        );
        let issued: Vec<String> = self
            .api
            .calls()
            .iter()
            .flat_map(|c| c.authorization.clone())
            .filter_map(|v| v.split_whitespace().last().map(str::to_owned))
            .filter(|t| t != HELD)
            .collect();
        let mut secrets = vec![HELD.to_owned()];
        secrets.extend(issued);
        for file in files_under(&self.home) {
            let Ok(bytes) = fs::read(&file) else { continue };
            let text = String::from_utf8_lossy(&bytes);
            for secret in &secrets {
                assert!(
                    !text.contains(secret.as_str()),
                    "{} holds a secret\n{out}",
                    file.display()
                );
            }
        }
    }
}

/// Every regular file below `dir`.
fn files_under(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => todo.push(entry.path()),
                Ok(t) if t.is_file() => out.push(entry.path()),
                _ => {}
            }
        }
    }
    out
}

#[test]
fn the_copilot_cli_answers_on_github_com_with_no_token_in_the_sandbox() {
    if !privileged() {
        return;
    }
    let c = CliSetup::new(&DOTCOM);
    let out = c.run();
    c.assert_answered_with_held_tokens(&out);
    // The exchange went to GITHUB_API_URL (through --resolve, as the sandbox's traffic does).
    assert!(!c.fake.exchanges().is_empty(), "\n{out}");
    // Paths of the API outside the CLI's Copilot calls got no credential at all.
    for call in c.github.calls() {
        if call.path.starts_with("/repos/") {
            assert!(call.authorization.is_empty(), "{call:?}\n{out}");
        }
    }
}

#[test]
fn the_copilot_cli_answers_on_a_ghe_com_tenant_through_gh_host() {
    if !privileged() {
        return;
    }
    let c = CliSetup::new(&TENANT);
    let out = c.run();
    c.assert_answered_with_held_tokens(&out);
    let env = fs::read_to_string(c.home.join("env.txt")).unwrap();
    assert!(env.lines().any(|l| l == "GH_HOST=acme.ghe.com"), "{env}");
    assert!(
        c.github
            .calls()
            .iter()
            .all(|call| call.host == "api.acme.ghe.com"),
        "{:?}",
        c.github.calls()
    );
}

#[test]
fn the_copilot_cli_answers_on_a_data_residency_tenant_whose_exchange_is_refused() {
    if !privileged() {
        return;
    }
    let c = CliSetup::new(&TENANT);
    c.fake.refuse_exchange(Some(403));
    let out = c.run();
    c.assert_answered_with_held_tokens(&out);
    // After the 403, the GitHub token itself went to the tenant's Copilot API.
    assert!(
        c.api
            .calls()
            .iter()
            .any(|call| call.authorization.iter().any(|v| v.ends_with(HELD))),
        "{:?}\n{out}",
        c.api.calls()
    );
    assert!(
        out.stderr.contains("403"),
        "the fallback is said once\n{out}"
    );
}

#[test]
fn control_the_fakes_refuse_the_sandboxs_placeholder() {
    if !privileged() {
        return;
    }
    // The same CLI with egressd's [copilot] table gone (the hosts merely allowed): the
    // placeholder reaches the fake GitHub API, which refuses it, and the CLI fails.
    let c = CliSetup::new(&DOTCOM);
    let allow: Vec<&str> = DOTCOM
        .github_names
        .iter()
        .chain(DOTCOM.copilot_names)
        .copied()
        .collect();
    fs::write(
        &c.config,
        format!("upstream_ca = \"{}\"\n", c.s.ca_pem.display()),
    )
    .unwrap();
    // Pass-through TLS: the CLI trusts the fakes' CA itself.
    let script = format!(
        "export HOME={home} COPILOT_PKG_CACHE_HOME={PKG_CACHE} CI=true \
           NODE_EXTRA_CA_CERTS={ca} COPILOT_GITHUB_TOKEN=ghu_egressdplaceholderaaaaaaaaaaaaaaaaaa; \
         {CLI} -p 'say hi' --allow-all-tools --no-auto-update -s",
        home = c.home.display(),
        ca = c.s.ca_pem.display()
    );
    let out = c
        .egressd()
        .allow(&allow.join(","))
        .timeout(std::time::Duration::from_secs(120))
        .sh(&script)
        .run();
    assert_ne!(out.code(), Some(0), "\n{out}");
    assert!(!out.stdout.contains(FAKE_MODEL_ANSWER), "\n{out}");
    assert!(
        c.github
            .calls()
            .iter()
            .any(|call| call.status == 401 && call.path.contains("/copilot_internal/user")),
        "{:?}\n{out}",
        c.github.calls()
    );
}

const GHES: Deployment = Deployment {
    server_url: "https://git.corp.example",
    api_url: "https://git.corp.example/api/v3",
    github_names: &["git.corp.example"],
    copilot_names: &["api.enterprise.githubcopilot.com"],
    copilot_endpoint: "https://api.enterprise.githubcopilot.com",
};

#[test]
fn the_copilot_cli_answers_on_ghes_through_the_enterprise_copilot_api() {
    if !privileged() {
        return;
    }
    let c = CliSetup::new(&GHES);
    // GHES hosts no Copilot: the exchange at the server's API answers 404.
    c.fake.refuse_exchange(Some(404));
    let out = c.run();
    assert_eq!(out.code(), Some(0), "\n{out}");
    assert!(out.stdout.contains(FAKE_MODEL_ANSWER), "\n{out}");
    let exchanges = c.fake.exchanges();
    assert!(
        exchanges
            .iter()
            .all(|x| x.path.starts_with("/api/v3/") && x.status == 404),
        "{exchanges:?}"
    );
    let api = c.api.calls();
    assert!(!api.is_empty(), "\n{out}");
    for call in &api {
        assert!(
            call.authorization
                .iter()
                .all(|v| v == &format!("token {HELD}")),
            "{call:?}\n{out}"
        );
    }
    let env = fs::read_to_string(c.home.join("env.txt")).unwrap();
    for line in [
        "GH_HOST=git.corp.example",
        "COPILOT_OFFLINE=true",
        "COPILOT_PROVIDER_BASE_URL=https://api.enterprise.githubcopilot.com",
    ] {
        assert!(env.lines().any(|l| l == line), "{line}\n{env}");
    }
    assert!(!env.contains(HELD), "{env}");
}

/// Seed 001's world: the GitHub OIDC issuer, Entra with the app whose federated credential
/// trusts the job, and an Azure OpenAI resource (on the fifth address) that takes only the
/// tokens Entra issued for that app and scope.
struct Seed001 {
    c: CliSetup,
    oidc: egressd_tests::fakes::FakeOidc,
    entra: std::sync::Arc<egressd_tests::fakes::FakeEntra>,
    azure: egressd_tests::fakes::FakeModelApi,
}

const AZURE: &str = "my-resource.openai.azure.com";
const TENANT_ID: &str = "00000000-0000-0000-0000-0000000000aa";
const APP: &str = "11111111-2222-3333-4444-555555555555";
const SCOPE: &str = "https://cognitiveservices.azure.com/.default";

impl Seed001 {
    fn new() -> Self {
        use egressd_tests::fakes::{FakeEntra, FakeModelApi, FakeOidc, Fic};
        let c = CliSetup::new(&DOTCOM);
        let oidc = FakeOidc::start(&c.s.ca);
        let entra = std::sync::Arc::new(FakeEntra::start(&c.s.ca, &oidc, TENANT_ID));
        entra.add_app(
            APP,
            Fic {
                issuer: oidc.issuer(),
                subject: "repo:octo-org/octo-repo:ref:refs/heads/main".into(),
                audience: "api://AzureADTokenExchange".into(),
            },
        );
        let issuer = std::sync::Arc::clone(&entra);
        let azure =
            FakeModelApi::azure_openai(&c.s.ca, &c.s.net, c.s.net.addr5(), AZURE, move |t| {
                issuer.issued(t) == Some((APP.to_owned(), SCOPE.to_owned()))
            });
        Self {
            c,
            oidc,
            entra,
            azure,
        }
    }
}

/// Seed 001 exactly: Azure OpenAI with API keys disabled, the Copilot CLI in BYOK mode, the
/// Entra token minted from the job's GitHub OIDC token by egressd.
#[test]
fn the_copilot_cli_in_byok_mode_reaches_entra_only_azure_openai() {
    if !privileged() {
        return;
    }
    let Seed001 {
        c,
        oidc,
        entra,
        azure,
    } = Seed001::new();
    fs::write(
        &c.config,
        format!(
            r#"upstream_ca = "{ca}"

[[credential]]
name = "github"
source = "github-oidc"
audience = "api://AzureADTokenExchange"

[[credential]]
name = "azure-openai"
source = "entra"
tenant = "{TENANT_ID}"
client_id = "{APP}"
scope = "{SCOPE}"
assertion = "github"
authority = "{authority}"

[copilot]
byok_credential = "azure-openai"
"#,
            ca = c.s.ca_pem.display(),
            authority = entra.authority(),
        ),
    )
    .unwrap();
    let script = format!(
        "export HOME={home} COPILOT_PKG_CACHE_HOME={PKG_CACHE} CI=true; \
         env > $HOME/env.txt; \
         {CLI} -p 'say hi' --allow-all-tools --no-auto-update -s",
        home = c.home.display()
    );
    let out = c
        .egressd()
        .resolve(AZURE, c.s.net.addr5())
        .env(
            "COPILOT_PROVIDER_BASE_URL",
            format!("https://{AZURE}/openai/deployments/gpt-4o"),
        )
        .env("COPILOT_PROVIDER_TYPE", "azure")
        .env("COPILOT_MODEL", "gpt-4o")
        .env("COPILOT_OFFLINE", "true")
        .env("ACTIONS_ID_TOKEN_REQUEST_URL", oidc.request_url())
        .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", oidc.request_token())
        .sh(&script)
        .run();
    assert_eq!(out.code(), Some(0), "\n{out}");
    assert!(
        !azure.text().is_empty() && out.stdout.contains(&azure.text()),
        "\n{out}"
    );
    let calls = azure.calls();
    assert!(
        !calls.is_empty() && calls.iter().all(|c| c.status == 200),
        "{calls:?}\n{out}"
    );
    let env = fs::read_to_string(c.home.join("env.txt")).unwrap();
    assert!(
        env.lines()
            .any(|l| l == "COPILOT_PROVIDER_BEARER_TOKEN=egressd-placeholder"),
        "{env}"
    );
    for call in &calls {
        for token in call.header("authorization") {
            let token = token.trim_start_matches("Bearer ");
            assert!(!env.contains(token), "the sandbox holds the Entra token");
        }
    }
    assert!(!env.contains(oidc.request_token()), "{env}");
}

/// The same CLI under `egressd awf` (gh-aw's Copilot engine): offline provider mode against
/// the api-proxy's Copilot port, which sends egressd's Copilot credential upstream.
fn run_under_awf(c: &CliSetup, copilot_target: &str, extra_env: &[(&str, &str)]) -> Output {
    let config = c.s.scratch.write(
        "awf-config.json",
        format!(
            r#"{{"network":{{"allowDomains":["{host}"]}},"apiProxy":{{"enabled":true}},"logging":{{"proxyLogsDir":"{logs}"}}}}"#,
            host = c.deployment.github_names[0],
            logs = c.s.scratch.path("logs").display()
        ),
    );
    let script = format!(
        "export HOME={home} COPILOT_PKG_CACHE_HOME={PKG_CACHE} CI=true; \
         env > $HOME/env.txt; \
         {CLI} -p 'say hi' --allow-all-tools --no-auto-update -s",
        home = c.home.display()
    );
    let mut cmd = EgressdCommand::new()
        .subcommand(["awf"])
        .arg("--config")
        .arg(&config)
        .args(["--env-all", "--exclude-env", "COPILOT_GITHUB_TOKEN"])
        .args(["--log-level", "info", "--skip-pull"])
        .arg("--upstream-ca")
        .arg(&c.s.ca_pem)
        .arg("--audit-log")
        .arg(&c.s.audit_log)
        .env("COPILOT_GITHUB_TOKEN", HELD)
        .env("COPILOT_MODEL", "gpt-5-mini")
        .env("GITHUB_SERVER_URL", c.deployment.server_url)
        .env("GITHUB_API_URL", c.deployment.api_url)
        .args(["--dns-server", NO_DNS])
        .timeout(std::time::Duration::from_secs(120));
    for name in c.deployment.github_names {
        cmd = cmd.args(["--resolve", &format!("{name}:{}", c.s.net.addr4())]);
    }
    cmd = cmd.args([
        "--resolve",
        &format!("{copilot_target}:{}", c.s.net.addr3()),
    ]);
    for (k, v) in extra_env {
        cmd = cmd.env(k, v);
    }
    cmd.args(["--user", "65534:65534", "--"])
        .command([script])
        .run()
}

/// The CLI answered under `awf`, the Copilot API saw only egressd-held tokens, and the
/// sandbox held none.
fn assert_awf_answered(c: &CliSetup, out: &Output) {
    assert_eq!(out.code(), Some(0), "\n{out}");
    assert!(out.stdout.contains(FAKE_MODEL_ANSWER), "\n{out}");
    let api = c.api.calls();
    assert!(!api.is_empty(), "\n{out}");
    for call in &api {
        for value in &call.authorization {
            let token = value.split_whitespace().last().unwrap_or_default();
            assert!(token == HELD || c.fake.issued(token), "{call:?}\n{out}");
        }
    }
    let env = fs::read_to_string(c.home.join("env.txt")).unwrap();
    assert!(env.contains("COPILOT_OFFLINE=true"), "{env}");
    assert!(!env.contains(HELD), "{env}");
    for call in &api {
        for value in &call.authorization {
            let token = value.split_whitespace().last().unwrap_or_default();
            assert!(!env.contains(token), "{env}");
        }
    }
}

#[test]
fn the_copilot_cli_answers_under_awf_on_every_deployment() {
    if !privileged() {
        return;
    }
    // github.com: api.githubcopilot.com, after the exchange.
    let c = CliSetup::with_copilot_names(&DOTCOM, &["api.githubcopilot.com"]);
    let out = run_under_awf(&c, "api.githubcopilot.com", &[]);
    assert_awf_answered(&c, &out);
    assert!(!c.fake.exchanges().is_empty(), "\n{out}");
    // A GHE.com tenant: its own Copilot API.
    let c = CliSetup::with_copilot_names(&TENANT, &["copilot-api.acme.ghe.com"]);
    let out = run_under_awf(&c, "copilot-api.acme.ghe.com", &[]);
    assert_awf_answered(&c, &out);
    // A data-residency tenant: the exchange answers 403, the GitHub token goes itself.
    let c = CliSetup::with_copilot_names(&TENANT, &["copilot-api.acme.ghe.com"]);
    c.fake.refuse_exchange(Some(403));
    let out = run_under_awf(&c, "copilot-api.acme.ghe.com", &[]);
    assert_awf_answered(&c, &out);
    assert!(
        c.api
            .calls()
            .iter()
            .any(|call| call.authorization.iter().any(|v| v.ends_with(HELD))),
        "\n{out}"
    );
    // GHES, named by ENGINE_API_TARGET: the enterprise Copilot API, exchange 404.
    let c = CliSetup::with_copilot_names(&GHES, &["api.enterprise.githubcopilot.com"]);
    c.fake.refuse_exchange(Some(404));
    let out = run_under_awf(
        &c,
        "api.enterprise.githubcopilot.com",
        &[("ENGINE_API_TARGET", "https://git.corp.example/api/v3")],
    );
    assert_awf_answered(&c, &out);
}

/// Seed 001 through the AWF front end: `AWF_AUTH_TYPE=github-oidc` with
/// `AWF_AUTH_PROVIDER=azure`; the CLI talks to the api-proxy's Copilot port in provider
/// mode, and the api-proxy sends the Entra token it minted to the Azure deployment.
#[test]
fn the_copilot_cli_in_byok_mode_reaches_entra_only_azure_openai_under_awf() {
    if !privileged() {
        return;
    }
    let Seed001 {
        c,
        oidc,
        entra,
        azure,
    } = Seed001::new();
    let config = c.s.scratch.write(
        "awf-config.json",
        format!(
            r#"{{"network":{{"allowDomains":["{AZURE}"]}},"apiProxy":{{"enabled":true}},"logging":{{"proxyLogsDir":"{logs}"}}}}"#,
            logs = c.s.scratch.path("logs").display()
        ),
    );
    let script = format!(
        "export HOME={home} COPILOT_PKG_CACHE_HOME={PKG_CACHE} CI=true; \
         env > $HOME/env.txt; \
         {CLI} -p 'say hi' --allow-all-tools --no-auto-update -s",
        home = c.home.display()
    );
    let out = EgressdCommand::new()
        .subcommand(["awf"])
        .arg("--config")
        .arg(&config)
        .args(["--env-all", "--log-level", "info", "--skip-pull"])
        .args(["--dns-server", NO_DNS])
        .arg("--upstream-ca")
        .arg(&c.s.ca_pem)
        .arg("--audit-log")
        .arg(&c.s.audit_log)
        .args(["--resolve", &format!("{AZURE}:{}", c.s.net.addr5())])
        .env(
            "COPILOT_PROVIDER_BASE_URL",
            format!("https://{AZURE}/openai/deployments/gpt-4o"),
        )
        .env("COPILOT_PROVIDER_TYPE", "azure")
        .env("COPILOT_MODEL", "gpt-4o")
        .env("AWF_AUTH_TYPE", "github-oidc")
        .env("AWF_AUTH_PROVIDER", "azure")
        .env("AWF_AUTH_AZURE_TENANT_ID", TENANT_ID)
        .env("AWF_AUTH_AZURE_CLIENT_ID", APP)
        .env("AWF_AUTH_AZURE_AUTHORITY", entra.authority())
        .env("ACTIONS_ID_TOKEN_REQUEST_URL", oidc.request_url())
        .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", oidc.request_token())
        .timeout(std::time::Duration::from_secs(120))
        .args(["--user", "65534:65534", "--"])
        .command([script])
        .run();
    assert_eq!(out.code(), Some(0), "\n{out}");
    assert!(out.stdout.contains(&azure.text()), "\n{out}");
    let calls = azure.calls();
    assert!(
        !calls.is_empty() && calls.iter().all(|c| c.status == 200),
        "{calls:?}\n{out}"
    );
    let env = fs::read_to_string(c.home.join("env.txt")).unwrap();
    assert!(!env.contains(oidc.request_token()), "{env}");
    for call in &calls {
        for token in call.header("authorization") {
            assert!(!env.contains(token.trim_start_matches("Bearer ")), "{env}");
        }
    }
}

/// `--dns-server` names the hosts of egressd's own requests too: the Copilot exchange at
/// `api.github.com` is looked up at the configured server (here a fake in the test's
/// namespace), as the sandbox's names are.
#[test]
fn dns_server_names_the_hosts_of_egressds_own_requests() {
    if !privileged() {
        return;
    }
    use egressd_tests::FakeDns;
    let c = CliSetup::with_copilot_names(&DOTCOM, &["api.githubcopilot.com"]);
    c.fake.set_api_endpoint("https://api.githubcopilot.com");
    let dns = FakeDns::start(
        &c.s.net,
        c.s.net.addr().into(),
        &[("api.github.com", c.s.net.addr4().into())],
    );
    let out =
        c.s.egressd()
            .arg("--config")
            .arg(&c.config)
            .arg("--dns-server")
            .arg(dns.addr().to_string())
            .resolve("api.githubcopilot.com", c.s.net.addr3())
            .env("COPILOT_GITHUB_TOKEN", HELD)
            .env("GITHUB_SERVER_URL", DOTCOM.server_url)
            .env("GITHUB_API_URL", DOTCOM.api_url)
            .sh("curl -sS --max-time 20 -o /dev/null -w '%{http_code}\\n' \
             -H 'Authorization: Bearer placeholder' https://api.githubcopilot.com/models")
            .run();
    assert_eq!(out.stdout.trim(), "200", "\n{out}");
    assert!(
        dns.asked_about("api.github.com") > 0,
        "{:?}\n{out}",
        dns.questions()
    );
    assert_eq!(c.fake.exchanges().len(), 1, "\n{out}");
    let calls = c.api.calls();
    let token = calls[0].authorization[0].trim_start_matches("Bearer ");
    assert!(c.fake.issued(token), "{calls:?}");
}

/// The sandbox cannot have the daemon's GitHub token traded for a Copilot token it would then
/// hold: the exchange path of the API, and every method but GET, get no credential.
#[test]
fn the_sandbox_cannot_run_the_copilot_exchange_with_the_daemons_token() {
    if !privileged() {
        return;
    }
    let c = CliSetup::new(&DOTCOM);
    let curl = |method: &str, path: &str| {
        format!(
            "curl -sS --max-time 20 -o /dev/null -w '{method} {path} %{{http_code}}\\n' -X {method} \
             -H 'Authorization: token ghu_egressdplaceholderaaaaaaaaaaaaaaaaaa' https://api.github.com{path}"
        )
    };
    let script = [
        curl("GET", "/copilot_internal/v2/token"),
        curl("POST", "/copilot_internal/user"),
        curl("GET", "/copilot_internal/user"),
    ]
    .join("; ");
    let out = c.egressd().sh(&script).run();
    out.assert_success();
    for line in [
        "GET /copilot_internal/v2/token 401",
        "POST /copilot_internal/user 4",
        "GET /copilot_internal/user 200",
    ] {
        assert!(out.stdout.contains(line), "{line}\n{out}");
    }
    // Only the GET of the user's plan carried the daemon's token.
    for call in c.github.calls() {
        let held = call.authorization.iter().any(|v| v.ends_with(HELD));
        assert_eq!(
            held,
            call.method == "GET" && call.path == "/copilot_internal/user",
            "{call:?}\n{out}"
        );
    }
}
