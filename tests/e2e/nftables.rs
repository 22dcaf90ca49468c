//! The nftables backend (`exec --backend nftables`, issue 9 scope 1) and `egressd doctor`.
//!
//! The same policy and audit as the eBPF backend, enforced by nftables rules in the
//! sandbox's own network namespace: TCP redirected to the proxy (original destination from
//! `SO_ORIGINAL_DST`), DNS to the DNS listener, everything else dropped. The namespace has no
//! interface but `lo`, so nothing can leave whatever the rules do.

use egressd_tests::{API, EVIL, EgressdCommand, Scene, privileged, shell_words};
use serde_json::Value;

use crate::{audit_record, probe_line, text};

#[test]
fn nftables_backend_enforces_the_same_policy() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let probe = s.probe.display().to_string();
    let script = format!(
        "{}; echo; {} || echo refused; {probe} udp 192.0.2.10:9999 icmp 192.0.2.10 dns 192.0.2.53:53 {API} A dns 192.0.2.53:53 {EVIL} A",
        shell_words(&s.curl_https(API, "192.0.2.10")),
        shell_words(&s.curl_https(EVIL, "192.0.2.11")),
    );
    let out = s
        .egressd()
        .allow(API)
        .args(["--backend", "nftables"])
        .sh(&script)
        .run();
    out.assert_success();
    assert!(
        out.stdout
            .starts_with(&format!("hello from {API} via {API}\n")),
        "\n{out}"
    );
    assert!(out.stdout.contains("refused"), "\n{out}");
    assert_eq!(s.evil.connections(), 0, "\n{out}");
    // The same records as with eBPF: the allowed connection with its original destination
    // (from conntrack), the denial with its reason.
    let rec = audit_record(&out, API, "allow");
    assert!(text(&rec["orig_dst"]).contains("192.0.2.10:443"), "{rec}");
    let denied = audit_record(&out, EVIL, "deny");
    assert!(!text(&denied["reason"]).is_empty(), "{denied}");
    // Other UDP and ICMP go nowhere.
    let udp = probe_line(&out, "udp");
    assert_eq!(udp["errno"], "EPERM", "dropped by the filter chain: {udp}");
    let icmp = probe_line(&out, "icmp");
    assert_ne!(icmp["result"], "reply", "{icmp}");
    // DNS is answered by the listener, by name, and the reply comes from the resolver asked.
    let dns: Vec<Value> = out
        .json_lines()
        .into_iter()
        .filter(|l| l["action"] == "dns")
        .collect();
    assert_eq!(dns.len(), 2, "\n{out}");
    assert_eq!(dns[0]["result"], "ok", "{}", dns[0]);
    assert_eq!(dns[0]["rcode"], "NOERROR", "{}", dns[0]);
    assert_eq!(dns[0]["from"], "192.0.2.53:53", "{}", dns[0]);
    assert_eq!(dns[1]["rcode"], "NXDOMAIN", "{}", dns[1]);
    // The arm record names the backend.
    let arm = out
        .audit()
        .into_iter()
        .find(|r| r["event"] == "arm")
        .unwrap_or_else(|| panic!("no arm record\n{out}"));
    assert_eq!(arm["backend"], "nftables", "{arm}");
}

#[test]
fn nftables_backend_needs_its_own_namespace() {
    if !privileged() {
        return;
    }
    let out = EgressdCommand::new()
        .allow(API)
        .args(["--backend", "nftables", "--netns", "host"])
        .command(["true"])
        .run();
    assert_eq!(out.code(), Some(64), "\n{out}");
    assert!(out.stderr.contains("needs --netns new"), "\n{out}");
}

#[test]
fn doctor_reports_the_checks_and_the_backend() {
    if !privileged() {
        return;
    }
    let out = EgressdCommand::new().subcommand(["doctor", "--json"]).run();
    out.assert_success();
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    let names: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for name in [
        "kernel",
        "btf",
        "cgroup2",
        "bpffs",
        "privileges",
        "netns",
        "ebpf-load",
        "nftables",
        // The layers beyond the network (issue 14).
        "unix-hooks",
        // The pass-through relay (issue 18).
        "relay",
        "seccomp",
        "landlock",
        "pty",
        "limits",
        "groups",
        "mounts",
    ] {
        assert!(names.contains(&name), "{name} missing: {report}");
    }
    // This machine has cgroup BPF: the eBPF backend is chosen, and every check passed.
    assert_eq!(report["backend"], "ebpf", "{report}");
    assert!(
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["ok"] == true),
        "{report}"
    );
    let text = EgressdCommand::new().subcommand(["doctor"]).run();
    assert!(text.stdout.contains("backend: ebpf"), "\n{text}");
}
