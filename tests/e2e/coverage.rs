//! Paths a connection might take around the `connect()` hooks, each redirected or refused:
//! TCP Fast Open, a reconnect after `AF_UNSPEC`, io_uring, SCTP, raw and packet sockets,
//! and the cloud metadata / host-service addresses in every form.

use std::fs;

use egressd_tests::{API, EgressdCommand, FakeDns, Scene, privileged};

use crate::{probe_line, text};

/// Runs the probe with `args` in a sandbox that allows API.
fn probe(s: &Scene, args: &[&str]) -> egressd_tests::Output {
    let mut argv = vec![s.probe.display().to_string()];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    let out = s.egressd().allow(API).command(argv).run();
    out.assert_success();
    out
}

#[test]
fn reconnect_after_af_unspec_and_io_uring_connect_are_redirected() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    // io_uring with the seccomp filter off (the default profile refuses io_uring_setup, see
    // doors.rs): the kernel redirect must hold for a user whose profile allows it.
    let out = s
        .egressd()
        .allow(API)
        .args(["--seccomp", "off"])
        .command([
            s.probe.display().to_string(),
            "tcp-reconnect".into(),
            "192.0.2.21:443".into(),
            "io-uring-connect".into(),
            "192.0.2.22:443".into(),
        ])
        .run();
    out.assert_success();
    for (action, dialled) in [
        ("tcp-reconnect", "192.0.2.21:443"),
        ("io-uring-connect", "192.0.2.22:443"),
    ] {
        let line = probe_line(&out, action);
        // Without the redirect the sandbox has no route: ENETUNREACH.
        assert_eq!(line["result"], "ok", "{line}\n{out}");
        assert!(
            out.audit().iter().any(|r| r["orig_dst"] == dialled),
            "the proxy never saw the {action} connection\n{out}"
        );
    }
}

#[test]
fn sctp_raw_and_packet_sockets_are_refused() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let out = probe(
        &s,
        &[
            "sctp",
            "192.0.2.23:443",
            "raw",
            "192.0.2.24",
            "packet",
            "lo",
        ],
    );
    // SCTP: refused by the connect hook (EPERM), or absent from this kernel.
    let sctp = probe_line(&out, "sctp");
    assert_eq!(sctp["result"], "error", "{sctp}\n{out}");
    assert!(
        matches!(
            text(&sctp["errno"]).as_str(),
            "EPERM" | "EPROTONOSUPPORT" | "ESOCKTNOSUPPORT"
        ),
        "{sctp}\n{out}"
    );
    // Raw and packet sockets need CAP_NET_RAW, which the sandbox user does not have (and
    // no_new_privs keeps setuid helpers from granting it); the seccomp filter refuses the
    // packet family before that (EAFNOSUPPORT).
    for (action, errnos) in [
        ("raw", &["EPERM"][..]),
        ("packet", &["EPERM", "EAFNOSUPPORT"]),
    ] {
        let line = probe_line(&out, action);
        assert_eq!(line["result"], "error", "{line}\n{out}");
        assert!(
            errnos.contains(&text(&line["errno"]).as_str()),
            "{line}\n{out}"
        );
    }
}

#[test]
fn metadata_and_wireserver_addresses_are_unreachable_in_every_form() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    // Names an allowlisted wildcard covers, whose DNS answers point at metadata services.
    let dns = FakeDns::start(
        &s.net,
        s.net.addr().into(),
        &[
            ("imds.cloud.test", "169.254.169.254".parse().unwrap()),
            ("imds6.cloud.test", "fd00:ec2::254".parse().unwrap()),
            ("wire.cloud.test", "168.63.129.16".parse().unwrap()),
        ],
    );
    let config = s.scratch.path("meta.toml");
    fs::write(
        &config,
        format!(
            "allow_domains = [\"*.cloud.test\"]\ndns_servers = [\"{}\"]\n",
            dns.addr()
        ),
    )
    .unwrap();
    let curl = |url: &str, extra: &str| {
        format!(
            "curl -sS -o /dev/null -w '{url} %{{http_code}}\\n' --max-time 5 {extra} '{url}'; echo \"{url} exit $?\""
        )
    };
    let script = [
        curl("http://169.254.169.254/latest/meta-data/", ""),
        curl("http://[::ffff:169.254.169.254]/latest/meta-data/", ""),
        curl("http://[fd00:ec2::254]/latest/meta-data/", ""),
        curl("http://168.63.129.16/machine?comp=goalstate", ""),
        curl("http://imds.cloud.test/latest/meta-data/", ""),
        curl("http://imds6.cloud.test/latest/meta-data/", ""),
        curl("http://wire.cloud.test/machine", ""),
    ]
    .join("; ");
    let out = EgressdCommand::new()
        .arg("--config")
        .arg(&config)
        .audit_log(&s.audit_log)
        .sh(&script)
        .run();
    // Every request was answered by egressd itself (403), never by a metadata service.
    let lines: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.contains(" exit "))
        .collect();
    assert_eq!(lines.len(), 7, "\n{out}");
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://168.63.129.16/machine?comp=goalstate",
        "http://imds.cloud.test/latest/meta-data/",
        "http://imds6.cloud.test/latest/meta-data/",
        "http://wire.cloud.test/machine",
    ] {
        assert!(
            out.stdout.contains(&format!("{url} 403")),
            "{url} was not refused with 403\n{out}"
        );
    }
    let audit = out.audit();
    let denied: Vec<&serde_json::Value> = audit
        .iter()
        .filter(|r| r["proto"] == "http" && r["decision"] == "deny")
        .collect();
    assert_eq!(denied.len(), 7, "\n{out}");
    for name in ["imds.cloud.test", "imds6.cloud.test", "wire.cloud.test"] {
        let rec = denied
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no deny record for {name}\n{out}"));
        assert!(
            text(&rec["reason"]).contains("metadata") || text(&rec["reason"]).contains("refused"),
            "{rec}"
        );
        assert!(rec["upstream"].is_null(), "egressd dialled {name}: {rec}");
    }
}
