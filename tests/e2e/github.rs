//! GitHub-aware by default: the allowlist follows the deployment named by
//! `GITHUB_SERVER_URL`/`GITHUB_API_URL`. These are the scenarios of the user reports: a GHE
//! Cloud tenant's own domains missing from the allowlist, and other tenants let in.

use egressd_tests::{EgressdCommand, HttpsUpstream, Scene, privileged, shell_words};

const TENANT_API: &str = "api.acme.ghe.com";
const OTHER_TENANT_API: &str = "api.other.ghe.com";

#[test]
fn a_ghe_cloud_tenant_gets_its_own_domains_and_other_tenants_are_denied() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let tenant = HttpsUpstream::start(&s.net, s.net.addr3(), &[TENANT_API], &s.ca);
    // The other tenant's name resolves to the same server: had egressd let it through,
    // the server would count a second connection.
    let curl = |name: &str| {
        shell_words(&[
            "curl".into(),
            "-sS".into(),
            "--max-time".into(),
            "10".into(),
            "--cacert".into(),
            s.ca_pem.display().to_string(),
            format!("https://{name}/"),
        ])
    };
    let out = EgressdCommand::new()
        .resolve(TENANT_API, s.net.addr3())
        .resolve(OTHER_TENANT_API, s.net.addr3())
        .audit_log(&s.audit_log)
        .env("GITHUB_SERVER_URL", "https://acme.ghe.com")
        .env("GITHUB_API_URL", "https://api.acme.ghe.com")
        .sh(&format!(
            "{}; echo; {}; echo \" [exit $?]\"",
            curl(TENANT_API),
            curl(OTHER_TENANT_API)
        ))
        .run();
    assert!(
        out.stdout
            .contains(&format!("hello from {TENANT_API} via {TENANT_API}")),
        "the tenant's API must be reachable with no allowlist flag\n{out}"
    );
    assert!(
        !out.stdout.contains("exit 0"),
        "another tenant was reachable\n{out}"
    );
    assert_eq!(tenant.connections(), 1, "\n{out}");
    let rec = out
        .audit()
        .into_iter()
        .find(|r| r["proto"] == "tls" && r["name"] == TENANT_API)
        .unwrap_or_else(|| panic!("no record for the tenant API\n{out}"));
    assert_eq!(
        rec["rule"], "acme.ghe.com (from github:ghe.com(acme))",
        "{rec}"
    );
}

#[test]
fn no_github_turns_the_derivation_off_and_show_explains_it() {
    if !privileged() {
        return;
    }
    let show = EgressdCommand::new()
        .default_user()
        .subcommand(["allowlist", "show"])
        .env("GITHUB_SERVER_URL", "https://github.com")
        .run();
    assert_eq!(show.code(), Some(0), "\n{show}");
    assert!(show.stdout.contains("github:github.com"), "\n{show}");
    assert!(show.stdout.contains("github:copilot"), "\n{show}");
    assert!(
        show.stdout
            .contains("derived for GitHub deployment: github.com"),
        "\n{show}"
    );
    assert!(!show.stdout.contains("*.blob.core.windows.net"), "\n{show}");

    let check = EgressdCommand::new()
        .default_user()
        .subcommand(["allowlist", "check", "--no-github", "api.github.com"])
        .env("GITHUB_SERVER_URL", "https://github.com")
        .run();
    assert_eq!(
        check.code(),
        Some(1),
        "--no-github must leave the allowlist empty\n{check}"
    );
}
