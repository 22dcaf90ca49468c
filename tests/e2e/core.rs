//! The core promise: allowed names pass through to the *named* upstream, everything else is
//! denied and audited, whatever address the client dialled.

use std::fs;

use egressd_tests::{API, EVIL, EgressdCommand, Scene, curl_base, privileged, shell_words};

use crate::{audit_record, probe_line, text};

#[test]
fn allowed_https_passes_through_with_the_upstreams_own_certificate() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let out = s
        .egressd()
        .allow(API)
        .command(s.curl_https(API, "192.0.2.10"))
        .run();
    out.assert_success();
    // curl verified the certificate against the test CA: the upstream's own, so not intercepted.
    assert_eq!(out.stdout, format!("hello from {API} via {API}"), "\n{out}");
    assert_eq!(
        s.api.requests(),
        vec![(API.to_owned(), API.to_owned())],
        "\n{out}"
    );

    let rec = audit_record(&out, API, "allow");
    assert_eq!(rec["proto"], "tls", "{rec}");
    assert_eq!(text(&rec["port"]), "443", "{rec}");
    assert!(
        text(&rec["rule"]).contains(API),
        "the allow record should name the rule: {rec}"
    );
    assert!(text(&rec["orig_dst"]).contains("192.0.2.10"), "{rec}");
    assert!(
        text(&rec["upstream"]).contains(&s.net.addr().to_string()),
        "{rec}"
    );
}

#[test]
fn denied_https_is_closed_and_audited_with_a_reason() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let out = s
        .egressd()
        .allow(API)
        .command(s.curl_https(EVIL, "192.0.2.11"))
        .run();
    // curl: 35 (handshake failed) or 56 (connection reset); anything but success.
    assert_ne!(out.code(), Some(0), "curl reached a denied host\n{out}");
    assert!(!out.stdout.contains("hello from"), "\n{out}");
    assert_eq!(
        s.evil.connections(),
        0,
        "the proxy connected to the denied upstream\n{out}"
    );

    let rec = audit_record(&out, EVIL, "deny");
    assert_eq!(rec["proto"], "tls", "{rec}");
    assert!(
        !text(&rec["reason"]).is_empty(),
        "a deny record needs a reason: {rec}"
    );
    assert!(
        out.summary().contains(EVIL),
        "the summary should list the denied name\n{out}"
    );
}

#[test]
fn allowed_name_sent_to_a_forged_address_reaches_the_named_upstream() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    // The client dials 192.0.2.99 but says API in its ClientHello: the proxy connects to the name.
    let out = s
        .egressd()
        .allow(API)
        .command(s.curl_https(API, "192.0.2.99"))
        .run();
    out.assert_success();
    assert_eq!(out.stdout, format!("hello from {API} via {API}"), "\n{out}");
    let rec = audit_record(&out, API, "allow");
    assert!(
        text(&rec["orig_dst"]).contains("192.0.2.99"),
        "the audit keeps the dialled address: {rec}"
    );
}

#[test]
fn ip_literal_is_denied() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let mut curl = curl_base();
    curl.extend(["-k".to_owned(), "https://192.0.2.10/".to_owned()]);
    let out = s.egressd().allow(API).command(curl).run();
    assert_ne!(out.code(), Some(0), "an IP literal got through\n{out}");
    assert!(!out.stdout.contains("hello from"), "\n{out}");
    assert_eq!(s.api.connections() + s.evil.connections(), 0, "\n{out}");
    let denied = out
        .audit()
        .into_iter()
        .find(|r| r["decision"] == "deny" && text(&r["orig_dst"]).contains("192.0.2.10"));
    assert!(denied.is_some(), "no deny record for the IP literal\n{out}");
}

#[test]
fn plain_http_is_decided_by_the_host_header() {
    if !privileged() {
        return;
    }
    let s = Scene::new();

    let out = s
        .egressd()
        .allow(API)
        .command(s.curl_http(API, "192.0.2.10"))
        .run();
    out.assert_success();
    assert_eq!(
        out.stdout,
        format!("hello from {API} via {API} HTTP 200"),
        "\n{out}"
    );
    let rec = audit_record(&out, API, "allow");
    assert_eq!(rec["proto"], "http", "{rec}");
    assert_eq!(rec["method"], "GET", "{rec}");
    assert_eq!(rec["path"], "/", "{rec}");

    let _ = fs::remove_file(&s.audit_log);
    let out = s
        .egressd()
        .allow(API)
        .command(s.curl_http(EVIL, "192.0.2.11"))
        .run();
    out.assert_success();
    let body = out
        .stdout
        .strip_suffix(" HTTP 403")
        .unwrap_or_else(|| panic!("expected a 403 for {EVIL}\n{out}"))
        .trim_end();
    assert!(
        body.starts_with(&format!("egressd: denied {EVIL}:80: ")),
        "403 body: {body:?}"
    );
    assert!(
        body.contains("(rule: "),
        "the 403 body names the rule: {body:?}"
    );
    assert_eq!(
        body.lines().count(),
        1,
        "the 403 body is one line: {body:?}"
    );
    assert_eq!(s.evil_http.connections(), 0, "\n{out}");
    let rec = audit_record(&out, EVIL, "deny");
    assert_eq!(rec["proto"], "http", "{rec}");
}

#[test]
fn ipv6_connect_is_redirected_to_the_named_upstream() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    // The sandbox has no IPv6 route: only connect6's redirect makes this reach anything.
    let out = s
        .egressd()
        .allow(API)
        .command(s.curl_https(API, "[2001:db8::7]"))
        .run();
    out.assert_success();
    assert_eq!(out.stdout, format!("hello from {API} via {API}"), "\n{out}");
    let rec = audit_record(&out, API, "allow");
    assert!(text(&rec["orig_dst"]).contains("2001:db8::7"), "{rec}");
}

#[test]
fn ipv4_mapped_ipv6_connect_is_redirected() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let out = s
        .egressd()
        .allow(API)
        .command([
            s.probe.display().to_string(),
            "tcp".into(),
            "[::ffff:192.0.2.7]:443".into(),
        ])
        .run();
    out.assert_success();
    let line = probe_line(&out, "tcp");
    assert_eq!(
        line["result"], "ok",
        "an AF_INET6 connect to a mapped address was not redirected\n{out}"
    );
    assert_eq!(
        line["peer"], "[::ffff:192.0.2.7]:443",
        "getpeername should show the dialled address\n{out}"
    );
}

#[test]
fn getpeername_shows_the_dialled_address_not_the_proxy() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let out = s
        .egressd()
        .allow(API)
        .command([
            s.probe.display().to_string(),
            "tcp".into(),
            "192.0.2.7:443".into(),
        ])
        .run();
    out.assert_success();
    let line = probe_line(&out, "tcp");
    assert_eq!(line["result"], "ok", "\n{out}");
    assert_eq!(
        line["peer"], "192.0.2.7:443",
        "the redirect leaks through getpeername()\n{out}"
    );
}

#[test]
fn concurrent_sandboxes_each_reach_only_their_own_allowed_host() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    // Both sandboxes wait (bounded) until the other one is up, so their programs and proxies
    // are alive at the same time when they connect.
    let meet = s.scratch.path("meet");
    fs::create_dir(&meet).unwrap();
    fs::set_permissions(&meet, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let script = |me: &str, other: &str| {
        format!(
            "touch {meet}/{me}; i=0; while [ ! -e {meet}/{other} ] && [ $i -lt 150 ]; do sleep 0.1; i=$((i+1)); done; \
             {api}; echo \" [api exit $?]\"; {evil}; echo \" [evil exit $?]\"",
            meet = meet.display(),
            api = shell_words(&s.curl_https(API, "192.0.2.10")),
            evil = shell_words(&s.curl_https(EVIL, "192.0.2.11")),
        )
    };
    let sandbox = |allow: &str, audit: &str| {
        EgressdCommand::new()
            .allow(allow)
            .resolve(API, s.net.addr())
            .resolve(EVIL, s.net.addr2())
            .audit_log(s.scratch.path(audit))
    };
    let a = sandbox(API, "a.jsonl").sh(&script("a", "b")).spawn();
    let b = sandbox(EVIL, "b.jsonl").sh(&script("b", "a")).spawn();
    let (a, b) = (a.wait(), b.wait());

    assert!(
        a.stdout
            .contains(&format!("hello from {API} via {API} [api exit 0]")),
        "sandbox A\n{a}"
    );
    assert!(
        !a.stdout.contains(&format!("hello from {EVIL}")),
        "sandbox A reached {EVIL}\n{a}"
    );
    assert!(
        b.stdout
            .contains(&format!("hello from {EVIL} via {EVIL} [evil exit 0]")),
        "sandbox B\n{b}"
    );
    assert!(
        !b.stdout.contains(&format!("hello from {API}")),
        "sandbox B reached {API}\n{b}"
    );
    audit_record(&a, EVIL, "deny");
    audit_record(&b, API, "deny");
}

#[test]
fn with_the_proxy_gone_connections_fail_instead_of_going_out() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    // The sandbox shares the upstream namespace, where API's address is directly reachable:
    // only the redirect stands between the client and the upstream. With the proxy's
    // listeners closed the redirected connect must be refused, and the upstream never hit.
    let direct = s.net.addr().to_string();
    let out = EgressdCommand::new()
        .allow(API)
        .netns(&s.net.netns_path().display().to_string())
        .arg("--test-proxy-down")
        .command(s.curl_https(API, &direct))
        .run();
    // curl exit 7: "Failed to connect" (connection refused by the closed listener).
    assert_eq!(out.code(), Some(7), "expected connection refused\n{out}");
    assert_eq!(
        s.api.connections(),
        0,
        "the client reached the upstream without the proxy\n{out}"
    );
    // Control: the same sandbox with the proxy up reaches the upstream through it.
    let out = EgressdCommand::new()
        .allow(API)
        .resolve(API, s.net.addr())
        .netns(&s.net.netns_path().display().to_string())
        .command(s.curl_https(API, &direct))
        .run();
    out.assert_success();
    assert_eq!(s.api.connections(), 1, "\n{out}");
}

#[test]
fn killing_egressd_takes_the_sandbox_down_with_it() {
    if !privileged() {
        return;
    }
    use std::io::{BufRead as _, BufReader, Read as _};
    let cmd = EgressdCommand::new()
        .allow(API)
        .sh("echo ready; exec sleep 600")
        .argv();
    let mut child = std::process::Command::new(egressd_tests::egressd_bin())
        .args(&cmd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting egressd");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    stdout
        .read_line(&mut line)
        .expect("reading the sandbox's first line");
    assert_eq!(line, "ready\n");
    child.kill().expect("killing egressd");
    child.wait().expect("reaping egressd");
    // The pipe reaches end-of-file only when every process holding it (the sandbox's shell
    // and sleep) has exited: the sandbox died with egressd instead of running unsupervised.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = stdout.read_to_string(&mut rest);
        let _ = tx.send(rest);
    });
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .expect("the sandbox outlived egressd by more than 10 s");
}

#[test]
fn other_ports_need_a_rule_that_names_them() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let upstream = egressd_tests::HttpsUpstream::start_on(
        &s.net,
        std::net::SocketAddr::new(s.net.addr().into(), 8443),
        &[API],
        &s.ca,
    );
    let mut curl = curl_base();
    curl.extend([
        "--cacert".to_owned(),
        s.ca_pem.display().to_string(),
        "--resolve".to_owned(),
        format!("{API}:8443:192.0.2.10"),
        format!("https://{API}:8443/"),
    ]);
    // Allowed name, port outside the default 80/443: denied, and the record says why.
    let out = s.egressd().allow(API).command(curl.clone()).run();
    assert_ne!(out.code(), Some(0), "\n{out}");
    assert_eq!(upstream.connections(), 0, "\n{out}");
    let rec = audit_record(&out, API, "deny");
    assert!(text(&rec["reason"]).contains("port"), "{rec}");

    // A [[rule]] naming the port lets it through.
    let config = s.scratch.path("ports.toml");
    fs::write(
        &config,
        format!("[[rule]]\ndomain = \"{API}\"\nports = [8443]\n"),
    )
    .unwrap();
    let out = s.egressd().arg("--config").arg(&config).command(curl).run();
    out.assert_success();
    assert_eq!(
        out.stdout,
        format!("hello from {API} via {API}:8443"),
        "\n{out}"
    );
    assert_eq!(upstream.connections(), 1, "\n{out}");
}

#[test]
fn tcp_fast_open_is_redirected_like_connect() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let out = s
        .egressd()
        .allow(API)
        .command([
            s.probe.display().to_string(),
            "tcp-fastopen".into(),
            "192.0.2.7:443".into(),
        ])
        .run();
    out.assert_success();
    let line = probe_line(&out, "tcp-fastopen");
    // Without the redirect the sandbox has no route: ENETUNREACH. With it, the proxy
    // accepted the connection (and denied the garbage it carried).
    // (The proxy may already have reset it by the time the probe asks for its peer.)
    assert_eq!(line["result"], "ok", "{line}\n{out}");
    assert!(
        out.audit()
            .iter()
            .any(|r| r["orig_dst"] == "192.0.2.7:443" && r["decision"] == "deny"),
        "the proxy should have seen and denied the fast-open connection\n{out}"
    );
}

/// `--audit-only`: the policy decides and records as usual, but a denial is let through and
/// marked `"enforced": false`, for connections and DNS alike.
#[test]
fn audit_only_records_denials_without_enforcing_them() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let script = format!(
        "{}; echo; {} dns 192.0.2.53:53 {EVIL} A",
        shell_words(&s.curl_https(EVIL, "192.0.2.11")),
        s.probe.display()
    );
    let out = s.egressd().allow(API).arg("--audit-only").sh(&script).run();
    out.assert_success();
    assert!(
        out.stdout
            .starts_with(&format!("hello from {EVIL} via {EVIL}")),
        "audit-only lets the denied host through\n{out}"
    );
    let dns = probe_line(&out, "dns");
    assert_eq!(dns["rcode"], "NOERROR", "{dns}");
    let records = out.audit_for(EVIL);
    assert_eq!(records.len(), 2, "a connection and a DNS query\n{out}");
    for rec in &records {
        assert_eq!(rec["decision"], "deny", "{rec}");
        assert_eq!(rec["enforced"], false, "{rec}");
        // The connection's record may add how it ended ("; closed by reset").
        assert!(
            text(&rec["reason"]).starts_with("not in the allowlist"),
            "{rec}"
        );
    }
    assert!(
        out.stderr.contains("audit-only mode") && out.summary().contains("not enforced"),
        "\n{out}"
    );
}
