//! UDP and ICMP: nothing but TCP leaves a sandbox. Datagrams are refused in the kernel
//! (`sendmsg4/6`, `connect4/6` return EPERM) and other packets are dropped.

use egressd_tests::{API, Scene, privileged};

/// Run the probe in a sandbox that allows API; return its JSON lines.
fn probe(s: &Scene, args: &[&str]) -> (egressd_tests::Output, Vec<serde_json::Value>) {
    let mut argv = vec![s.probe.display().to_string()];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    let out = s.egressd().allow(API).command(argv).run();
    out.assert_success();
    let lines = out.json_lines();
    (out, lines)
}

#[test]
fn udp_datagrams_are_refused_with_eperm() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let (out, lines) = probe(
        &s,
        &[
            "udp",
            "192.0.2.53:9999",
            "udp-connect",
            "192.0.2.53:9999",
            "udp",
            "[2001:db8::53]:9999",
        ],
    );
    assert_eq!(lines.len(), 3, "\n{out}");
    for line in &lines {
        // ENETUNREACH here would mean the datagram was only stopped by the missing route.
        assert_eq!(
            line["result"], "error",
            "a datagram was sent: {line}\n{out}"
        );
        assert_eq!(line["errno"], "EPERM", "{line}\n{out}");
    }
}

#[test]
fn icmp_echo_gets_no_answer() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let (out, lines) = probe(&s, &["icmp", "192.0.2.1"]);
    assert_ne!(lines[0]["result"], "reply", "\n{out}");

    assert!(
        std::process::Command::new("sh")
            .args(["-c", "command -v ping"])
            .output()
            .is_ok_and(|o| o.status.success()),
        "ping is not installed: run `cargo xtask setup`"
    );
    let out = s
        .egressd()
        .allow(API)
        .command(["ping", "-c", "1", "-W", "1", "192.0.2.1"])
        .run();
    assert_ne!(out.code(), Some(0), "ping got an answer\n{out}");
}
