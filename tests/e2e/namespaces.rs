//! egressd started the way users start tools in CI: inside a network namespace with
//! `ip netns exec` (which hides the host's /sys, so no cgroup2 mount is visible), and with
//! the sandbox sharing that namespace (`--netns host`), where loopback goes through policy
//! and the `cgroup_skb/egress` program is the only thing between a raw socket and the wire.
//!
//! The namespace is the test's own upstream namespace: it has no default route, so nothing
//! can leave the machine whatever happens.

use std::process::Command;

use egressd_tests::{API, EgressdCommand, HttpUpstream, Output, Scene, privileged, shell_words};

use crate::probe_line;

/// Runs `ip netns exec <the scene's namespace> egressd <argv>`.
fn run_in_netns(s: &Scene, cmd: &EgressdCommand) -> Output {
    cmd.clone()
        .wrapped_in(["ip", "netns", "exec", s.net.name()])
        .run()
}

#[test]
fn egressd_under_ip_netns_exec_mounts_its_own_cgroup2_and_works() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let cmd = EgressdCommand::new()
        .allow(API)
        .resolve(API, s.net.addr())
        .audit_log(&s.audit_log)
        .command(s.curl_https(API, "192.0.2.10"));
    let out = run_in_netns(&s, &cmd);
    out.assert_success();
    assert_eq!(out.stdout, format!("hello from {API} via {API}"), "\n{out}");
    assert!(
        out.stderr.contains("mounted one at /run/egressd/cgroup2"),
        "egressd should say it mounted cgroup2 itself\n{out}"
    );
}

#[test]
fn shared_namespace_loopback_is_denied_unless_its_port_is_allowed() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    // A service on the namespace's own loopback, port 80.
    let local = HttpUpstream::start(&s.net, std::net::Ipv4Addr::LOCALHOST, "local-service");
    let curl = shell_words(&[
        "curl".into(),
        "-sS".into(),
        "--max-time".into(),
        "10".into(),
        "http://127.0.0.1/".into(),
    ]);
    let denied = EgressdCommand::new()
        .allow(API)
        .netns("host")
        .audit_log(&s.audit_log)
        .sh(&curl);
    loopback_policy_holds(&local, &denied, |cmd| run_in_netns(&s, cmd));
}

#[test]
fn a_named_namespace_has_its_own_loopback_policy() {
    if !privileged() {
        return;
    }
    // `--netns PATH`: egressd stays in the host namespace, the sandbox joins the upstream
    // namespace, and the proxy reaches *that* namespace's loopback for allowed ports.
    let s = Scene::new();
    let local = HttpUpstream::start(&s.net, std::net::Ipv4Addr::LOCALHOST, "local-service");
    let curl = shell_words(&[
        "curl".into(),
        "-sS".into(),
        "--max-time".into(),
        "10".into(),
        "http://127.0.0.1/".into(),
    ]);
    let denied = EgressdCommand::new()
        .allow(API)
        .netns(&s.net.netns_path().display().to_string())
        .audit_log(&s.audit_log)
        .sh(&curl);
    loopback_policy_holds(&local, &denied, EgressdCommand::run);
}

/// `denied` (a sandbox that curls `http://127.0.0.1/`) must not reach `local`; the same
/// with `--allow-loopback-port 80` must.
fn loopback_policy_holds(
    local: &HttpUpstream,
    denied: &EgressdCommand,
    run: impl Fn(&EgressdCommand) -> Output,
) {
    let out = run(denied);
    assert_ne!(out.code(), Some(0), "loopback was reachable\n{out}");
    assert_eq!(local.connections(), 0, "\n{out}");
    let audit = out.audit();
    assert!(
        audit.iter().any(|r| r["proto"] == "loopback"
            && r["decision"] == "deny"
            && r["orig_dst"] == "127.0.0.1:80"
            && r["reason"].as_str().is_some_and(|x| x.contains("loopback"))),
        "no deny record for the loopback destination\n{out}"
    );

    let allowed = denied.clone().arg("--allow-loopback-port").arg("80");
    let out = run(&allowed);
    out.assert_success();
    assert_eq!(
        out.stdout, "hello from local-service via 127.0.0.1",
        "\n{out}"
    );
    assert_eq!(local.connections(), 1, "\n{out}");
}

#[test]
fn raw_icmp_from_a_shared_namespace_is_dropped_by_the_egress_program() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let target = s.net.host_addr().to_string();
    // Control: without egressd, root in this namespace gets an echo reply from the host side.
    let control = Command::new("ip")
        .args(["netns", "exec", s.net.name()])
        .arg(&s.probe)
        .args(["icmp", &target])
        .output()
        .expect("running the probe");
    let control = String::from_utf8_lossy(&control.stdout).into_owned();
    assert!(
        control.contains("\"result\":\"reply\""),
        "the control ping got no reply, so this test would prove nothing: {control}"
    );

    // Root inside the sandbox (so raw sockets work): only cgroup_skb/egress stops it.
    let cmd = EgressdCommand::new()
        .allow(API)
        .netns("host")
        .default_user()
        .arg("--allow-root")
        .audit_log(&s.audit_log)
        .command([s.probe.display().to_string(), "icmp".into(), target.clone()]);
    let out = run_in_netns(&s, &cmd);
    out.assert_success();
    let line = probe_line(&out, "icmp");
    assert_eq!(
        line["result"], "no-reply",
        "ICMP left the sandbox: {line}\n{out}"
    );
    assert!(
        out.stderr.contains("skb_drop_v4="),
        "the kernel counters should show the dropped packets\n{out}"
    );
    assert!(out.stderr.contains("NOT enforceable"), "\n{out}");
}
