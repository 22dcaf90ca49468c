//! The fixtures themselves, checked without egressd: when an e2e test fails, these say
//! whether the upstreams, the CA and the probe work. The host reaches the upstreams directly
//! (host <-> test namespace only).

use std::process::Command;

use egressd_tests::{API, EVIL, Scene, parse_json_lines, privileged};

fn host_curl(args: &[String]) -> (bool, String, String) {
    let out = Command::new(&args[0])
        .args(&args[1..])
        .output()
        .expect("running curl (run `cargo xtask setup`)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn upstreams_answer_with_their_name_and_the_test_ca_verifies_them() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let api = s.net.addr().to_string();
    let evil = s.net.addr2().to_string();

    let (ok, body, err) = host_curl(&s.curl_https(API, &api));
    assert!(ok, "curl to the API upstream failed: {err}");
    assert_eq!(body, format!("hello from {API} via {API}"));
    assert_eq!(s.api.requests(), vec![(API.to_owned(), API.to_owned())]);

    let (ok, body, err) = host_curl(&s.curl_https(EVIL, &evil));
    assert!(ok, "curl to the evil upstream failed: {err}");
    assert_eq!(body, format!("hello from {EVIL} via {EVIL}"));

    let (ok, body, err) = host_curl(&s.curl_http(EVIL, &evil));
    assert!(ok, "plain HTTP to the evil upstream failed: {err}");
    assert_eq!(body, format!("hello from {EVIL} via {EVIL} HTTP 200"));
    assert_eq!(s.evil_http.connections(), 1);
    assert_eq!(s.api_http.connections(), 0);
}

#[test]
fn upstream_certificate_is_only_valid_for_its_own_name() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    // The API's certificate does not cover EVIL: a proxy that dialled the client's IP instead
    // of the name would fail verification in the e2e tests.
    let (ok, _, err) = host_curl(&s.curl_https(EVIL, &s.net.addr().to_string()));
    assert!(!ok, "curl accepted the API's certificate for {EVIL}");
    assert!(
        err.contains("certificate") || err.contains("SSL"),
        "unexpected curl error: {err}"
    );
}

#[test]
fn probe_reports_errors_as_json_in_a_namespace_without_a_route() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    // The upstream namespace only has 10.200.X.0/24 on link: TEST-NET is unreachable there.
    let out = Command::new("ip")
        .args(["netns", "exec", s.net.name()])
        .arg(&s.probe)
        .args([
            "udp",
            "192.0.2.53:9999",
            "tcp",
            "192.0.2.7:443",
            "tcp",
            "192.0.2.7:443",
            "--v6only-mapped",
        ])
        .args(["tcp", &format!("{}:443", s.net.addr()), "icmp", "192.0.2.1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = parse_json_lines(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert_eq!(lines[0]["errno"], "ENETUNREACH", "{lines:?}");
    assert_eq!(lines[1]["errno"], "ENETUNREACH", "{lines:?}");
    assert_eq!(lines[2]["dialled"], "[::ffff:192.0.2.7]:443", "{lines:?}");
    assert_eq!(lines[2]["result"], "error", "{lines:?}");
    assert_eq!(lines[3]["result"], "ok", "{lines:?}");
    assert_eq!(
        lines[3]["peer"],
        format!("{}:443", s.net.addr()),
        "{lines:?}"
    );
    assert_ne!(lines[4]["result"], "reply", "{lines:?}");
}
