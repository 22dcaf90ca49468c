//! Limits and load: slow clients are cut off at the handshake timeout, oversize request
//! heads get `431` and oversize bodies `413`, connections past `limits.max_connections` are refused, running out of
//! file descriptors does not stop the listener, and a burst of concurrent connections goes
//! through without errors and without memory growth. Each refusal is audited with its
//! reason.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use egressd_tests::{API, Scene, privileged};
use serde_json::Value;

use crate::text;

/// `192.0.2.10`: a TEST-NET address the sandbox dials (only the redirect makes it lead
/// anywhere).
const FAKE_IP: &str = "192.0.2.10";

/// Writes `toml` as a config file in the scene's scratch directory.
fn config(s: &Scene, name: &str, toml: &str) -> PathBuf {
    let path = s.scratch.path(name);
    fs::write(&path, toml).unwrap();
    path
}

/// A config with `section` (such as `[limits]` and its keys) that intercepts `API` and
/// injects the key from `EGRESSD_TEST_API_KEY`, trusting the scene's CA upstream.
fn intercepted_key_config(s: &Scene, name: &str, section: &str) -> PathBuf {
    config(
        s,
        name,
        &format!(
            "upstream_ca = \"{ca}\"\n\n{section}\n[[credential]]\nname = \"key\"\n\
             source = \"env\"\nvar = \"EGRESSD_TEST_API_KEY\"\n\n[[intercept]]\n\
             host = \"{API}\"\ncredential = \"key\"\nheader = \"api-key\"\n\
             format = \"{{token}}\"\n",
            ca = s.ca_pem.display()
        ),
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The probe's lines for `action`.
fn lines(out: &egressd_tests::Output, action: &str) -> Vec<Value> {
    out.json_lines()
        .into_iter()
        .filter(|l| l["action"] == action)
        .collect()
}

/// The audit records whose reason contains `what`.
fn refused_for(out: &egressd_tests::Output, what: &str) -> Vec<Value> {
    out.audit()
        .into_iter()
        .filter(|r| r["decision"] == "deny" && text(&r["reason"]).contains(what))
        .collect()
}

#[test]
fn a_slow_handshake_is_cut_off_at_the_timeout_and_audited() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let config = config(&s, "slow.toml", "[timeouts]\nclassify = \"2s\"\n");
    // A TLS record header announcing 512 bytes, then only the handshake type: a ClientHello
    // that never completes. Then a valid HTTP head sent one byte every 150 ms (9 s in all).
    let partial_hello = "16030102000001";
    let head = format!("GET / HTTP/1.1\r\nHost: {API}\r\nUser-Agent: slowloris\r\n\r\n");
    let probe = s.probe.display().to_string();
    let out = s
        .egressd()
        .allow(API)
        .arg("--config")
        .arg(&config)
        .command([
            probe.as_str(),
            "slow",
            &format!("{FAKE_IP}:443"),
            partial_hello,
            "0",
            "10",
            "slow",
            &format!("{FAKE_IP}:80"),
            &hex(head.as_bytes()),
            "150",
            "10",
        ])
        .run();
    out.assert_success();
    let slow = lines(&out, "slow");
    assert_eq!(slow.len(), 2, "\n{out}");
    for line in &slow {
        assert_eq!(line["result"], "closed", "{line}\n{out}");
        let after = line["after_ms"].as_u64().unwrap();
        assert!(
            (1500..6000).contains(&after),
            "closed after {after} ms, not at the 2 s timeout: {line}\n{out}"
        );
    }
    let sent = slow[1]["sent"].as_u64().unwrap();
    assert!(
        sent < head.len() as u64,
        "the dripped head was read to the end ({sent} bytes)\n{out}"
    );
    let refused = refused_for(&out, "handshake timeout (timeouts.classify)");
    assert_eq!(refused.len(), 2, "one deny record per slow client\n{out}");
    assert_eq!(s.api.connections() + s.api_http.connections(), 0, "\n{out}");
}

#[test]
fn oversize_request_heads_get_431_plain_and_intercepted() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let config = intercepted_key_config(&s, "heads.toml", "[limits]\nmax_header_bytes = 8192\n");
    // Plain HTTP: a first request over the limit (refused while classifying), then on one
    // kept-alive connection a small request and one between the limit and twice it
    // (refused by egressd's check in the HTTP server). Intercepted: over the limit, on
    // HTTP/1.1 and on h2. Each prints its status, then the body on the next line.
    let big = |n: usize| format!("-H \"X-Big: $(head -c {n} /dev/zero | tr '\\0' a)\"");
    let opts = format!("-sS --max-time 10 -w '\\n%{{http_code}}\\n' --resolve {API}:80:{FAKE_IP}");
    let script = format!(
        "curl {opts} {big20k} http://{API}/first; \
         curl {opts} http://{API}/small --next {opts} {big10k} http://{API}/second; \
         curl {opts} --http1.1 {big10k} https://{API}/h1; \
         curl {opts} --http2 {big10k} https://{API}/h2",
        big20k = big(20_000),
        big10k = big(10_000),
    );
    let out = s
        .egressd()
        .arg("--config")
        .arg(&config)
        .env("EGRESSD_TEST_API_KEY", "s3cr3t")
        .sh(&script)
        .run();
    out.assert_success();
    let text_431 = "egressd: denied (no host):80: HTTP request head larger than 8192 bytes \
                    (limits.max_header_bytes) (rule: none)";
    let stdout: Vec<&str> = out.stdout.lines().filter(|l| !l.is_empty()).collect();
    // first: body, 431 | small: hello..., 200 | second: body, 431 | h1: json, 431 | h2: json, 431
    assert_eq!(stdout.len(), 10, "\n{out}");
    assert_eq!((stdout[0], stdout[1]), (text_431, "431"), "\n{out}");
    assert!(stdout[2].starts_with("hello from"), "\n{out}");
    assert_eq!(stdout[3], "200", "\n{out}");
    assert!(
        stdout[4].starts_with(&format!(
            "egressd: denied {API}:80: HTTP request head larger"
        )),
        "\n{out}"
    );
    assert_eq!(stdout[5], "431", "\n{out}");
    for (body, status) in [(stdout[6], stdout[7]), (stdout[8], stdout[9])] {
        assert_eq!(status, "431", "\n{out}");
        let json: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(
            json["error"], "HTTP request head larger than 8192 bytes (limits.max_header_bytes)",
            "{json}"
        );
        assert_eq!(json["host"], API, "{json}");
    }
    // Only the small request reached an upstream.
    assert_eq!(s.api_http.requests().len(), 1, "\n{out}");
    assert!(s.api.credentials().is_empty(), "\n{out}");
    let refused = refused_for(&out, "HTTP request head larger than 8192 bytes");
    assert_eq!(
        refused.len(),
        4,
        "one deny record per oversize request\n{out}"
    );
}

#[test]
fn oversize_bodies_get_413_plain_and_intercepted() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let config = intercepted_key_config(&s, "bodies.toml", "[limits]\nmax_body_bytes = 10000\n");
    // Intercepted: a declared length over the limit (HTTP/1.1), streamed bodies without a
    // length over the limit (h2 from stdin, HTTP/1.1 chunked), then one at the limit.
    // Plain HTTP: a declared length over the limit. Each prints its body, then its status.
    let opts = format!(
        "-sS --max-time 10 -w '\n%{{http_code}}\n' --resolve {API}:80:{FAKE_IP}          --resolve {API}:443:{FAKE_IP}"
    );
    let script = format!(
        "head -c 10001 /dev/zero > /tmp/big; head -c 10000 /dev/zero > /tmp/fits;          curl {opts} --http1.1 --data-binary @/tmp/big https://{API}/upload;          head -c 30000 /dev/zero | curl {opts} --http2 -T - https://{API}/upload;          head -c 30000 /dev/zero | curl {opts} --http1.1 -H 'Transfer-Encoding: chunked' -T - https://{API}/upload;          curl {opts} --http2 --data-binary @/tmp/fits https://{API}/upload;          curl {opts} --data-binary @/tmp/big http://{API}/upload",
    );
    let out = s
        .egressd()
        .arg("--config")
        .arg(&config)
        .env("EGRESSD_TEST_API_KEY", "s3cr3t")
        .sh(&script)
        .run();
    out.assert_success();
    let stdout: Vec<&str> = out.stdout.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(stdout.len(), 10, "\n{out}");
    let reason = "request body larger than 10000 bytes (limits.max_body_bytes)";
    for (body, status) in [
        (stdout[0], stdout[1]),
        (stdout[2], stdout[3]),
        (stdout[4], stdout[5]),
    ] {
        assert_eq!(status, "413", "\n{out}");
        let json: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(json["error"], reason, "{json}");
        assert_eq!(json["host"], API, "{json}");
    }
    assert_eq!(
        (stdout[6], stdout[7]),
        ("received 10000 bytes", "200"),
        "\n{out}"
    );
    assert!(
        stdout[8].starts_with(&format!(
            "egressd: denied {API}:80: {reason} (rule: {API} (from "
        )),
        "\n{out}"
    );
    assert_eq!(stdout[9], "413", "\n{out}");
    // Only the body at the limit arrived whole; the streamed ones were cut before the limit.
    assert_eq!(s.api.uploads(), vec![10_000], "\n{out}");
    assert!(s.api_http.requests().is_empty(), "\n{out}");
    let refused = refused_for(&out, reason);
    assert_eq!(refused.len(), 4, "one deny record per oversize body\n{out}");
    for r in &refused {
        assert_eq!(r["status"], 413, "{r}");
        assert!(text(&r["rule"]).starts_with(API), "{r}");
        assert!(r["bytes_up"].as_u64().unwrap() <= 10_000, "{r}");
    }
}

/// An intercepted h2 connection that has been served and then sits silent is closed after
/// `timeouts.idle` (hyper's own timers cover only HTTP/1 request heads).
#[test]
fn an_idle_intercepted_h2_connection_is_closed_at_the_idle_timeout() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let config = intercepted_key_config(&s, "idle.toml", "[timeouts]\nidle = \"2s\"\n");
    let out = s
        .egressd()
        .arg("--config")
        .arg(&config)
        .env("EGRESSD_TEST_API_KEY", "s3cr3t")
        .sh(&format!("{} h2-idle https://{API}/ 12", s.probe.display()))
        .run();
    out.assert_success();
    let line = lines(&out, "h2-idle");
    assert_eq!(line.len(), 1, "\n{out}");
    assert_eq!(line[0]["result"], "ok", "\n{out}");
    assert_eq!(line[0]["status"], 200, "\n{out}");
    assert_eq!(line[0]["ended"], "closed", "\n{out}");
    let after = line[0]["after_ms"].as_u64().unwrap();
    assert!(
        (1500..6000).contains(&after),
        "closed {after} ms after the response\n{out}"
    );
}

#[test]
fn an_intercepted_client_that_stalls_is_closed_at_its_timeouts() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let config = config(
        &s,
        "stall.toml",
        &format!(
            r#"upstream_ca = "{ca}"

[timeouts]
tls_handshake = "2s"
request_head = "2s"

[[credential]]
name = "key"
source = "env"
var = "EGRESSD_TEST_API_KEY"

[[intercept]]
host = "{API}"
credential = "key"
header = "api-key"
format = "{{token}}"
"#,
            ca = s.ca_pem.display()
        ),
    );
    // A ClientHello for the intercepted host, then nothing (the handshake never finishes);
    // then a finished handshake followed by silence (openssl with an idle stdin).
    let script = format!(
        "{probe} slow {FAKE_IP}:443 {hello} 0 10; \
         start=$(date +%s%N); \
         sleep 5 | {{ openssl s_client -connect {FAKE_IP}:443 -servername {API} -quiet \
         >/dev/null 2>&1; echo \"idle_ms=$(( ($(date +%s%N) - start) / 1000000 ))\"; }}",
        probe = s.probe.display(),
        hello = hex(&client_hello(API)),
    );
    let out = s
        .egressd()
        .arg("--config")
        .arg(&config)
        .env("EGRESSD_TEST_API_KEY", "s3cr3t")
        .sh(&script)
        .run();
    out.assert_success();
    let slow = lines(&out, "slow");
    assert_eq!(slow.len(), 1, "\n{out}");
    assert_eq!(slow[0]["result"], "closed", "\n{out}");
    let after = slow[0]["after_ms"].as_u64().unwrap();
    assert!(
        (1500..6000).contains(&after),
        "handshake cut after {after} ms\n{out}"
    );
    let idle: u64 = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("idle_ms="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no idle_ms line\n{out}"));
    assert!(
        (1500..4500).contains(&idle),
        "idle connection cut after {idle} ms\n{out}"
    );
    assert_eq!(
        refused_for(&out, "TLS handshake timed out (timeouts.tls_handshake)").len(),
        1,
        "\n{out}"
    );
    assert_eq!(
        refused_for(
            &out,
            "no request within the request head timeout (timeouts.request_head)"
        )
        .len(),
        1,
        "\n{out}"
    );
    assert!(s.api.credentials().is_empty(), "\n{out}");
}

/// The ClientHello a rustls client sends for `sni`.
fn client_hello(sni: &str) -> Vec<u8> {
    use std::sync::Arc;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    hello
}

#[test]
fn connections_past_the_limit_are_refused_and_audited() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let config = config(
        &s,
        "limit.toml",
        "[timeouts]\nclassify = \"30s\"\n\n[limits]\nmax_connections = 20\n",
    );
    // 30 idle connections held for 1.5 s: 20 are open, 10 are reset at once. Once they are
    // gone the slots are free again.
    let script = format!(
        "{probe} hold {FAKE_IP}:443 30 1500; \
         curl -sS --max-time 10 --cacert {ca} --resolve {API}:443:{FAKE_IP} https://{API}/",
        probe = s.probe.display(),
        ca = s.ca_pem.display()
    );
    let out = s
        .egressd()
        .allow(API)
        .arg("--config")
        .arg(&config)
        .sh(&script)
        .run();
    out.assert_success();
    let hold = lines(&out, "hold");
    assert_eq!(hold.len(), 1, "\n{out}");
    // A reset can beat connect() to the established state on loopback: such a connection
    // reached the proxy and was refused just like one reset after connect.
    let count = |k: &str| {
        hold[0][k]
            .as_u64()
            .unwrap_or_else(|| panic!("no {k}\n{out}"))
    };
    assert_eq!(count("connect_errors"), 0, "\n{out}");
    assert_eq!(
        count("connected") + count("reset_at_connect"),
        30,
        "\n{out}"
    );
    assert_eq!(count("open"), 20, "\n{out}");
    assert_eq!(count("closed") + count("reset_at_connect"), 10, "\n{out}");
    assert!(
        out.stdout.contains(&format!("hello from {API} via {API}")),
        "a connection after the burst should go through\n{out}"
    );
    let refused = refused_for(
        &out,
        "connection limit reached: 20 connections open (limits.max_connections)",
    );
    assert_eq!(refused.len(), 10, "\n{out}");
    for r in &refused {
        assert!(text(&r["orig_dst"]).contains(FAKE_IP), "{r}");
    }
}

#[test]
fn running_out_of_file_descriptors_does_not_stop_the_listener() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let config = config(&s, "fds.toml", "[timeouts]\nclassify = \"30s\"\n");
    // egressd (and so the sandbox) gets 256 descriptors. Two processes hold 150 idle
    // connections each: the proxy runs out, and accept() fails with EMFILE until they go.
    // Then a request must still get through.
    let probe = s.probe.display();
    let script = format!(
        "{probe} hold {FAKE_IP}:443 150 3000 & {probe} hold {FAKE_IP}:443 150 3000; wait; \
         curl -sS --max-time 15 --cacert {ca} --resolve {API}:443:{FAKE_IP} https://{API}/",
        ca = s.ca_pem.display()
    );
    let out = s
        .egressd()
        .wrapped_in(["prlimit", "--nofile=256:256", "--"])
        .allow(API)
        .arg("--config")
        .arg(&config)
        .sh(&script)
        .run();
    out.assert_success();
    let held: u64 = lines(&out, "hold")
        .iter()
        .map(|l| l["connected"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(held, 300, "\n{out}");
    assert!(
        out.stderr.contains("accept failed"),
        "the proxy should have logged failing accepts\n{out}"
    );
    assert!(
        out.stdout.contains(&format!("hello from {API} via {API}")),
        "the listener should serve again once descriptors are free\n{out}"
    );
}

#[test]
fn a_burst_of_concurrent_connections_has_no_errors_and_flat_memory() {
    if !privileged() {
        return;
    }
    // 10,000 at once (issue 9), or as many as the host's hard limit on open files allows:
    // egressd needs two descriptors per connection, and raising the hard limit needs
    // CAP_SYS_RESOURCE, which some CI sandboxes withhold (here: 20,000, so 9,000).
    raise_nofile(65_536);
    let s = Scene::new();
    let hard = hard_nofile();
    let n: u64 = 10_000.min(hard.saturating_sub(2_000) / 2);
    eprintln!("{n} concurrent connections (hard RLIMIT_NOFILE {hard})");
    assert!(
        n >= 2_000,
        "the host allows too few descriptors ({hard}) for a load test"
    );
    const ROUNDS: u64 = 3;
    let config = s
        .scratch
        .write("load.toml", "[limits]\nmax_connections = 12000\n");
    let running = s
        .egressd()
        .allow(API)
        .arg("--config")
        .arg(&config)
        .timeout(Duration::from_secs(150))
        .command([
            s.probe.display().to_string(),
            "load".into(),
            format!("{FAKE_IP}:80"),
            API.into(),
            n.to_string(),
            ROUNDS.to_string(),
        ])
        .spawn();
    let pid = running.id();
    // Sample egressd's resident memory in the pause after each round.
    let mut rss = Vec::new();
    let until = Instant::now() + Duration::from_secs(140);
    while rss.len() < ROUNDS as usize && Instant::now() < until {
        let rounds = running.stdout_so_far().matches("\"load-round\"").count();
        if rounds > rss.len()
            && let Some(kib) = rss_kib(pid)
        {
            rss.push(kib);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = running.wait();
    out.assert_success();
    let rounds = lines(&out, "load-round");
    assert_eq!(rounds.len(), ROUNDS as usize, "\n{}", out.stdout);
    let failed: Vec<String> = out
        .audit()
        .into_iter()
        .filter(|r| {
            r["proto"] == "http" && r["reason"] != "in the allowlist" && r["event"].is_null()
        })
        .map(|r| format!("{} {}", r["status"], r["reason"]))
        .take(3)
        .collect();
    for r in &rounds {
        assert_eq!(r["ok"], n, "{r} {failed:?}");
        assert_eq!(r["errors"], 0, "{r}");
        eprintln!(
            "round {}: {} connections in {} ms",
            r["round"], r["ok"], r["ms"]
        );
    }
    assert_eq!(s.api_http.connections() as u64, n * ROUNDS);
    let allowed = out
        .audit()
        .into_iter()
        .filter(|r| r["proto"] == "http" && r["decision"] == "allow")
        .count() as u64;
    assert_eq!(allowed, n * ROUNDS, "one audit record per request");
    eprintln!("egressd RSS after each round (KiB): {rss:?}");
    assert_eq!(rss.len(), ROUNDS as usize, "RSS samples: {rss:?}");
    let (first, last) = (rss[0], rss[rss.len() - 1]);
    assert!(
        // The allocator's caches grow for a few rounds, then level off (measured here:
        // +21% to +33% after 3 rounds, +36% after 8); a leak of 16 KiB per connection would
        // add 64 MiB more by the third round.
        last <= first + first / 2,
        "egressd's memory grew from {first} KiB to {last} KiB over {ROUNDS} rounds"
    );
}

/// Resident memory of `pid` in KiB (`VmRSS` of `/proc/PID/status`).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

/// Raises this process's soft `RLIMIT_NOFILE` to at least `want` (within the hard limit);
/// egressd and its sandbox inherit it.
/// The hard limit on open files of this (test) process.
fn hard_nofile() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) },
        0
    );
    limit.rlim_max
}

fn raise_nofile(want: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) },
        0
    );
    if limit.rlim_cur >= want {
        return;
    }
    limit.rlim_cur = want.min(limit.rlim_max);
    // SAFETY: setrlimit reads the initialised struct.
    assert_eq!(
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) },
        0,
        "raising RLIMIT_NOFILE to {want}"
    );
}

/// Issue 9's load test proper: 10,000 concurrent connections (or as many as the hard
/// descriptor limit allows, as above) held open for three minutes, each sending a request
/// every round over its kept-alive connection: no errors, one audit record per request, and
/// a heap that stays flat (egressd's `SIGUSR1` stats line after every round).
#[test]
fn ten_thousand_connections_held_for_minutes_have_no_errors_and_flat_memory() {
    if !privileged() {
        return;
    }
    raise_nofile(65_536);
    let s = Scene::new();
    let hard = hard_nofile();
    let n: u64 = 10_000.min(hard.saturating_sub(2_000) / 2);
    eprintln!("{n} concurrent connections (hard RLIMIT_NOFILE {hard})");
    assert!(
        n >= 2_000,
        "the host allows too few descriptors ({hard}) for a load test"
    );
    const SECONDS: u64 = 180;
    let config = s.scratch.write(
        "sustain.toml",
        "[limits]\nmax_connections = 12000\n\n[timeouts]\nrequest_head = \"60s\"\n",
    );
    let running = s
        .egressd()
        .allow(API)
        .arg("--config")
        .arg(&config)
        .timeout(Duration::from_secs(SECONDS + 120))
        .command([
            s.probe.display().to_string(),
            "sustain".into(),
            format!("{FAKE_IP}:80"),
            API.into(),
            n.to_string(),
            SECONDS.to_string(),
        ])
        .spawn();
    let pid = running.id();
    // After each round, in its pause: egressd's stats line (SIGUSR1), with the heap the
    // allocator has handed out, and its resident memory.
    let mut signalled = 0;
    let until = Instant::now() + Duration::from_secs(SECONDS + 110);
    while Instant::now() < until {
        let so_far = running.stdout_so_far();
        if so_far.contains("\"action\":\"sustain\"") {
            break; // the summary: the connections are closing
        }
        if so_far.matches("\"sustain-round\"").count() > signalled {
            signalled += 1;
            let sent = std::process::Command::new("kill")
                .args(["-USR1", &pid.to_string()])
                .status()
                .unwrap();
            assert!(sent.success());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = running.wait();
    out.assert_success();
    let rounds = lines(&out, "sustain-round");
    let summary = lines(&out, "sustain");
    assert_eq!(summary.len(), 1, "\n{}", out.stdout);
    assert_eq!(summary[0]["errors"], 0, "{}", out.stdout);
    assert!(rounds.len() >= 5, "\n{}", out.stdout);
    for r in &rounds {
        assert_eq!(r["ok"], n, "{r}");
    }
    let requests = n * rounds.len() as u64;
    eprintln!(
        "{} rounds over {n} held connections ({requests} requests), round times {:?} ms",
        rounds.len(),
        rounds
            .iter()
            .map(|r| r["ms"].as_u64().unwrap_or(0))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        s.api_http.connections() as u64,
        n,
        "each client connection kept its one upstream connection"
    );
    assert_eq!(s.api_http.requests().len() as u64, requests);
    let allowed = out
        .audit()
        .into_iter()
        .filter(|r| r["proto"] == "http" && r["decision"] == "allow")
        .count() as u64;
    assert_eq!(allowed, requests, "one audit record per request");
    let stats: Vec<(u64, u64, u64)> = out
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("egressd: stats: "))
        .map(|l| {
            let field = |name: &str| {
                l.split(' ')
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("no {name} in {l:?}"))
            };
            (
                field("open_connections"),
                field("heap_in_use_kib"),
                field("rss_kib"),
            )
        })
        .collect();
    eprintln!("egressd (open connections, heap KiB, RSS KiB) after each round: {stats:?}");
    assert!(stats.len() >= 4, "{stats:?}\n{}", out.stderr);
    // The last round's signal may find the probe already closing its connections.
    let stats = &stats[..stats.len() - 1];
    for (open, _, _) in stats {
        assert_eq!(
            *open, n,
            "every connection is open between rounds: {stats:?}"
        );
    }
    // The heap in use (not RSS, which also grows while the pages of buffers allocated up
    // front are first touched) must not grow round after round. A leak of even 8 bytes per
    // request adds more than 64 KiB every round (n requests a round). hyper's per-connection
    // read buffers do grow now and then, all at once (measured: one step of about 10 KiB a
    // connection after some 30 rounds, when a buffer first fills), so a few steps are allowed;
    // steady growth is not.
    let heap: Vec<u64> = stats.iter().map(|s| s.1).collect();
    let growing = heap[2..].windows(2).filter(|w| w[1] > w[0] + 64).count();
    let allowed = (heap.len() / 10).max(2);
    assert!(
        growing <= allowed,
        "egressd's heap grew in {growing} of {} rounds (at most {allowed} allowed): {heap:?}",
        heap.len() - 3
    );
}
