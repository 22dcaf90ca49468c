//! The proxy resolves names itself, only after the policy allowed them, and refuses answers
//! that point inside (loopback, private, metadata) unless a rule allows that name to.

use std::fs;

use egressd_tests::{API, EVIL, EgressdCommand, FakeDns, Scene, privileged, shell_words};

use crate::{audit_record, text};

/// A sandbox script: HTTPS to API, HTTPS to EVIL, plain HTTP to EVIL.
fn script(s: &Scene) -> String {
    [
        shell_words(&s.curl_https(API, "192.0.2.10")),
        shell_words(&s.curl_https(EVIL, "192.0.2.11")),
        shell_words(&s.curl_http(EVIL, "192.0.2.11")),
    ]
    .join("; echo; ")
}

#[test]
fn denied_names_are_never_looked_up_and_private_answers_are_refused() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let dns = FakeDns::start(
        &s.net,
        s.net.addr().into(),
        &[(API, s.net.addr().into()), (EVIL, s.net.addr2().into())],
    );
    let out = EgressdCommand::new()
        .allow(API)
        .arg("--dns-server")
        .arg(dns.addr().to_string())
        .audit_log(&s.audit_log)
        .sh(&script(&s))
        .run();

    // EVIL was denied by policy, so the proxy never asked DNS about it.
    assert_eq!(
        dns.asked_about(EVIL),
        0,
        "a denied name was resolved: {:?}\n{out}",
        dns.questions()
    );
    // API is allowed and was resolved, but its answer is a private address (10.200.X.2):
    // refused, because no rule says this name may point inside.
    assert!(dns.asked_about(API) > 0, "API was not resolved\n{out}");
    assert_eq!(
        s.api.connections(),
        0,
        "the proxy dialled a private answer\n{out}"
    );
    assert!(!out.stdout.contains("hello from"), "\n{out}");
    let rec = audit_record(&out, API, "deny");
    assert!(
        text(&rec["reason"]).contains("private"),
        "the reason should name the private address range: {rec}"
    );
    assert_eq!(
        s.evil.connections() + s.evil_http.connections(),
        0,
        "\n{out}"
    );
}

#[test]
fn a_rule_with_allow_private_lets_a_name_resolve_inside() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let dns = FakeDns::start(&s.net, s.net.addr().into(), &[(API, s.net.addr().into())]);
    let config = s.scratch.path("egressd.toml");
    fs::write(
        &config,
        format!(
            "dns_servers = [\"{}\"]\n\n[[rule]]\ndomain = \"{API}\"\nallow_private = true\n",
            dns.addr()
        ),
    )
    .unwrap();
    let out = EgressdCommand::new()
        .arg("--config")
        .arg(&config)
        .audit_log(&s.audit_log)
        .command(s.curl_https(API, "192.0.2.10"))
        .run();
    out.assert_success();
    assert_eq!(out.stdout, format!("hello from {API} via {API}"), "\n{out}");
    let rec = audit_record(&out, API, "allow");
    assert!(
        text(&rec["rule"]).contains("egressd.toml"),
        "the rule should name the file it came from: {rec}"
    );
}

#[test]
fn a_ghes_server_on_a_private_network_is_reached_from_the_derived_allowlist() {
    if !privileged() {
        return;
    }
    const GHES: &str = "git.corp.example";
    let s = Scene::new();
    let server = egressd_tests::HttpsUpstream::start(&s.net, s.net.addr4(), &[GHES], &s.ca);
    let dns = FakeDns::start(
        &s.net,
        s.net.addr().into(),
        &[
            (GHES, s.net.addr4().into()),
            (
                "metadata.git.corp.example",
                "169.254.169.254".parse().unwrap(),
            ),
            ("link.git.corp.example", "169.254.1.1".parse().unwrap()),
        ],
    );
    let curl = |host: &str| {
        format!(
            "curl -sS --max-time 10 --cacert {ca} https://{host}/; echo \" [{host} $?]\"",
            ca = s.ca_pem.display()
        )
    };
    let script = [
        curl(GHES),
        curl("metadata.git.corp.example"),
        curl("link.git.corp.example"),
    ]
    .join("; ");
    let ghes = |cmd: EgressdCommand| {
        cmd.env("GITHUB_SERVER_URL", format!("https://{GHES}"))
            .env("GITHUB_API_URL", format!("https://{GHES}/api/v3"))
            .arg("--dns-server")
            .arg(dns.addr().to_string())
            .audit_log(&s.audit_log)
    };
    let out = ghes(EgressdCommand::new()).sh(&script).run();
    // The server's private address is dialled: the derived entry says it may be inside.
    assert!(
        out.stdout.contains(&format!("hello from {GHES}")),
        "\n{out}"
    );
    assert_eq!(server.connections(), 1, "\n{out}");
    // Metadata and link-local answers stay refused, whatever the entry.
    for (name, range) in [
        ("metadata.git.corp.example", "metadata"),
        ("link.git.corp.example", "link-local"),
    ] {
        let rec = audit_record(&out, name, "deny");
        assert!(text(&rec["reason"]).contains(range), "{rec}");
    }
    // Control: the same name allowed by hand, without the GHES derivation, is refused for
    // its private answer.
    let out = ghes(EgressdCommand::new())
        .args(["--no-github", "--allow-domains", GHES])
        .sh(&curl(GHES))
        .run();
    assert!(!out.stdout.contains("hello from"), "\n{out}");
    assert_eq!(server.connections(), 1, "\n{out}");
    let rec = audit_record(&out, GHES, "deny");
    assert!(text(&rec["reason"]).contains("private"), "{rec}");
}
