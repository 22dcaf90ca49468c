//! Upstream faults (issue 9): an upstream that refuses, resets, hangs, or presents a
//! certificate egressd cannot verify. Intercepted clients get the JSON error (`502`, or `504`
//! for a hang) within the configured timeouts, plain-HTTP clients the one-line text, every
//! failure is audited with its reason, and no credential is sent anywhere it should not go.

use std::net::SocketAddr;

use egressd_tests::{HttpUpstream, HttpsUpstream, Misbehave, Scene, TestCa, privileged};
use serde_json::Value;

use crate::text;

/// The TEST-NET address the sandbox dials; only the redirect makes it lead anywhere.
const FAKE_IP: &str = "192.0.2.10";

/// One faulty upstream: its name, the port it is reached on, and what is wrong with it.
struct Fault {
    name: &'static str,
    port: u16,
}

const REFUSED: Fault = Fault {
    name: "refused.example",
    port: 8441,
};
const RESET: Fault = Fault {
    name: "reset.example",
    port: 8442,
};
const HUNG: Fault = Fault {
    name: "hung.example",
    port: 8443,
};
const BAD_CERT: Fault = Fault {
    name: "badcert.example",
    port: 8444,
};
const STALLED: Fault = Fault {
    name: "stalled.example",
    port: 8445,
};

#[test]
fn upstream_faults_become_json_errors_within_the_timeouts_and_are_audited() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let at = |port: u16| SocketAddr::new(s.net.addr3().into(), port);
    // Nothing listens on REFUSED's port.
    let reset = HttpUpstream::misbehaving(&s.net, at(RESET.port), Misbehave::Reset);
    let hung = HttpUpstream::misbehaving(&s.net, at(HUNG.port), Misbehave::Silent);
    let hung_http = HttpUpstream::misbehaving(&s.net, at(80), Misbehave::Silent);
    // A certificate from a CA egressd was never told to trust.
    let stranger = TestCa::new();
    let bad_cert = HttpsUpstream::start_on(&s.net, at(BAD_CERT.port), &[BAD_CERT.name], &stranger);
    // TLS completes, then no answer: the response wait (timeouts.idle) ends it.
    let stalled =
        HttpsUpstream::hung_after_handshake(&s.net, at(STALLED.port), &[STALLED.name], &s.ca);

    let faults = [&REFUSED, &RESET, &HUNG, &BAD_CERT, &STALLED];
    let mut toml = format!(
        "upstream_ca = \"{}\"\n\n[timeouts]\nconnect = \"2s\"\nidle = \"3s\"\n\n\
         [[credential]]\nname = \"key\"\nsource = \"env\"\nvar = \"EGRESSD_TEST_API_KEY\"\n",
        s.ca_pem.display()
    );
    for f in faults {
        toml.push_str(&format!(
            "\n[[rule]]\ndomain = \"{}\"\nports = [{}]\n\n[[intercept]]\nhost = \"{}\"\n\
             credential = \"key\"\nheader = \"api-key\"\nformat = \"{{token}}\"\n",
            f.name, f.port, f.name
        ));
    }
    toml.push_str("\n[[rule]]\ndomain = \"hung-http.example\"\n");
    let config = s.scratch.write("faults.toml", toml);

    let mut script = String::new();
    for f in faults {
        script.push_str(&format!(
            "start=$(date +%s%N); curl -sS --max-time 30 -w ' [HTTP %{{http_code}}]' \
             --resolve {n}:{p}:{FAKE_IP} https://{n}:{p}/v1/x; \
             echo \" {n} $(( ($(date +%s%N) - start) / 1000000 ))ms\"; ",
            n = f.name,
            p = f.port
        ));
    }
    script.push_str(&format!(
        "start=$(date +%s%N); curl -sS --max-time 30 -w ' [HTTP %{{http_code}}]' \
         --resolve hung-http.example:80:{FAKE_IP} http://hung-http.example/; \
         echo \" hung-http.example $(( ($(date +%s%N) - start) / 1000000 ))ms\""
    ));
    let mut cmd = s.egressd();
    for f in faults {
        cmd = cmd.resolve(f.name, s.net.addr3());
    }
    let out = cmd
        .resolve("hung-http.example", s.net.addr3())
        .arg("--config")
        .arg(&config)
        .env("EGRESSD_TEST_API_KEY", "s3cr3t")
        .sh(&script)
        .timeout(std::time::Duration::from_secs(120))
        .run();
    out.assert_success();

    // `<body> [HTTP nnn] <name> <ms>ms`, one line per request.
    let results: Vec<(String, u16, u64, String)> = out
        .stdout
        .lines()
        .filter_map(|l| {
            let (body, rest) = l.rsplit_once(" [HTTP ")?;
            let (status, rest) = rest.split_once("] ")?;
            let (name, ms) = rest.split_once(' ')?;
            Some((
                name.to_owned(),
                status.parse().ok()?,
                ms.trim_end_matches("ms").parse().ok()?,
                body.to_owned(),
            ))
        })
        .collect();
    assert_eq!(results.len(), 6, "\n{out}");
    let result = |name: &str| {
        results
            .iter()
            .find(|r| r.0 == name)
            .unwrap_or_else(|| panic!("no result for {name}\n{out}"))
            .clone()
    };
    let json = |body: &str| -> Value {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}\n{out}"))
    };

    let (_, status, _, body) = result(REFUSED.name);
    assert_eq!(status, 502, "\n{out}");
    let error = json(&body);
    assert!(
        text(&error["error"]).contains("upstream request failed"),
        "{error}"
    );
    assert_eq!(error["host"], REFUSED.name, "{error}");

    let (_, status, _, body) = result(RESET.name);
    assert_eq!(status, 502, "\n{out}");
    assert!(
        text(&json(&body)["error"]).contains("upstream request failed"),
        "{body}"
    );
    assert!(reset.connections() >= 1, "the reset upstream was reached");

    let (_, status, ms, body) = result(HUNG.name);
    assert_eq!(status, 504, "{body}\n{out}");
    assert!(
        text(&json(&body)["error"]).contains("TLS handshake timed out (timeouts.connect)"),
        "{body}"
    );
    assert!(
        (1_500..10_000).contains(&ms),
        "the hang was cut after {ms} ms (connect timeout 2 s)\n{out}"
    );
    assert!(hung.connections() >= 1, "the hung upstream was reached");

    let (_, status, _, body) = result(BAD_CERT.name);
    assert_eq!(status, 502, "\n{out}");
    let error = text(&json(&body)["error"]).to_owned();
    assert!(
        error.contains("certificate") || error.contains("UnknownIssuer"),
        "the reason names the certificate: {error}"
    );
    assert!(
        bad_cert.credentials().is_empty(),
        "nothing was sent to a server egressd could not verify"
    );

    // The intercepted connection stays up while its request waits (no idle cut at 3 s): the
    // client gets the 504 answer, not a broken stream.
    let (_, status, ms, body) = result(STALLED.name);
    assert_eq!(status, 504, "{body}\n{out}");
    assert!(
        text(&json(&body)["error"]).contains("upstream response timed out (timeouts.idle)"),
        "{body}"
    );
    assert!((2_500..10_000).contains(&ms), "after {ms} ms\n{out}");
    assert_eq!(
        stalled.requests().len(),
        0,
        "the stalled upstream answered nothing"
    );

    // Plain HTTP: the one-line text body ends in a newline, so it is the line before.
    let (_, status, ms, _) = result("hung-http.example");
    assert_eq!(status, 504, "\n{out}");
    assert!(
        out.stdout
            .contains("egressd: upstream hung-http.example:80 failed: upstream response timed out"),
        "\n{out}"
    );
    assert!(ms < 15_000, "cut after {ms} ms (idle timeout 3 s)\n{out}");
    assert!(hung_http.connections() >= 1);

    // Each failure is audited with its status and reason.
    let audit = out.audit();
    for (name, statuses) in [
        (REFUSED.name, &[502_u64][..]),
        (RESET.name, &[502]),
        (HUNG.name, &[504]),
        (BAD_CERT.name, &[502]),
        (STALLED.name, &[504]),
        ("hung-http.example", &[504]),
    ] {
        let rec = audit
            .iter()
            .find(|r| r["name"] == name && r["status"].is_u64())
            .unwrap_or_else(|| panic!("no record with a status for {name}\n{out}"));
        let status = rec["status"].as_u64().unwrap();
        assert!(statuses.contains(&status), "{name}: {rec}");
        assert!(!text(&rec["reason"]).is_empty(), "{rec}");
    }
    assert!(
        !std::fs::read_to_string(&s.audit_log)
            .unwrap()
            .contains("s3cr3t"),
        "the key is in the audit log"
    );
}
