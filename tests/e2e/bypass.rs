//! Escapes from the bypass catalogue (`shared/reference/peers.md` §4) that the sandbox itself
//! might try: leaving its cgroup, making a namespace of its own, talking to the proxy
//! listener directly. Each must fail, and where the proxy sees it, be audited.

use egressd_tests::{API, Scene, privileged};

#[test]
fn the_sandbox_cannot_move_itself_to_another_cgroup() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    // The cgroup2 mount as the sandbox sees it, then an attempt to join its root.
    let script = r#"
mnt=$(awk '$9 == "cgroup2" { print $5; exit }' /proc/self/mountinfo)
before=$(cat /proc/self/cgroup)
if echo $$ > "$mnt/cgroup.procs" 2>/dev/null; then echo moved; else echo refused; fi
after=$(cat /proc/self/cgroup)
[ "$before" = "$after" ] && echo same-cgroup
case "$after" in *egressd*) echo in-sandbox-cgroup;; esac
"#;
    let out = s.egressd().allow(API).sh(script).run();
    out.assert_success();
    assert!(out.stdout.contains("refused"), "\n{out}");
    assert!(out.stdout.contains("same-cgroup"), "\n{out}");
    assert!(out.stdout.contains("in-sandbox-cgroup"), "\n{out}");
}

#[test]
fn a_new_user_and_network_namespace_inside_the_sandbox_leads_nowhere() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    // With an unprivileged user namespace the sandbox can make a network namespace of its
    // own; the cgroup programs still apply there, and it has no route out anyway.
    let upstream = s.net.addr().to_string();
    let out = s
        .egressd()
        .allow(API)
        .sh(&format!(
            "unshare -Urn sh -c 'ip link set lo up 2>/dev/null; curl -sS --max-time 5 http://{upstream}/'; echo \" [exit $?]\""
        ))
        .run();
    out.assert_success();
    assert!(
        !out.stdout.contains("[exit 0]"),
        "the new namespace reached out\n{out}"
    );
    assert!(!out.stdout.contains("hello from"), "\n{out}");
    assert_eq!(s.api_http.connections(), 0, "\n{out}");
}

#[test]
fn connecting_to_the_proxy_listener_directly_is_refused_and_audited() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    // The proxy's listener is visible in the sandbox's own /proc/net/tcp (state 0A = LISTEN).
    let script = r#"
for local in $(awk 'NR > 1 && $4 == "0A" { print $2 }' /proc/net/tcp); do
  port=$((0x${local##*:}))
  curl -sS --max-time 5 -H 'Host: api.allowed.example' "http://127.0.0.1:$port/" && echo "reached $port"
done
echo done
"#;
    let out = s.egressd().allow(API).sh(script).run();
    out.assert_success();
    assert!(out.stdout.contains("done"), "\n{out}");
    assert!(
        !out.stdout.contains("reached"),
        "the proxy answered a direct connection\n{out}"
    );
    assert_eq!(s.api_http.connections(), 0, "\n{out}");
    assert!(
        out.audit().iter().any(|r| r["reason"]
            .as_str()
            .is_some_and(|why| why.contains("no original destination"))),
        "the direct connection should be audited as having no original destination\n{out}"
    );
}

#[test]
fn an_absolute_form_target_naming_another_host_is_refused() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    // Host says the allowed name, the request line names the forbidden one (domain fronting
    // in plain HTTP); and the reverse.
    let script = format!(
        "curl -sS --max-time 5 -o /dev/null -w '%{{http_code}}\\n' --resolve {API}:80:192.0.2.10 --request-target http://evil.example/ http://{API}/; \
         curl -sS --max-time 5 -o /dev/null -w '%{{http_code}}\\n' --resolve evil.example:80:192.0.2.10 -H 'Host: {API}' --request-target http://evil.example/ http://evil.example/"
    );
    let out = s.egressd().allow(API).sh(&script).run();
    out.assert_success();
    let codes: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(codes.len(), 2, "\n{out}");
    for code in codes {
        assert!(
            code == "403" || code == "400",
            "a mismatched request got {code}\n{out}"
        );
    }
    assert_eq!(s.evil_http.connections(), 0, "\n{out}");
    assert_eq!(s.api_http.connections(), 0, "\n{out}");
}

#[test]
fn numeric_ip_forms_are_not_names() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    // 192.0.2.10 written as a decimal, a hex and an octal number, and as IPv4-mapped IPv6.
    let mut script = String::new();
    for host in [
        "3221225994",
        "0xc000020a",
        "030000001012",
        "[::ffff:192.0.2.10]",
    ] {
        script.push_str(&format!(
            "curl -sS --max-time 5 -o /dev/null -w '{host} %{{http_code}}\\n' http://{host}/; "
        ));
    }
    let out = s.egressd().allow(API).sh(&script).run();
    for host in [
        "3221225994",
        "0xc000020a",
        "030000001012",
        "[::ffff:192.0.2.10]",
    ] {
        let line = out
            .stdout
            .lines()
            .find(|l| l.starts_with(host))
            .unwrap_or_else(|| panic!("no result for {host}\n{out}"));
        assert!(
            !line.ends_with(" 200"),
            "{host} reached something: {line}\n{out}"
        );
    }
    assert_eq!(
        s.api_http.connections() + s.evil_http.connections(),
        0,
        "\n{out}"
    );
}
