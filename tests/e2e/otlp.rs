//! Audit lines as OpenTelemetry log records: `egressd exec --otlp-endpoint` against a
//! receiver built from the official `opentelemetry-proto` definitions (`tests/otlp/receiver.py`,
//! gRPC and HTTP on loopback), with the receiver down and back, full queues and partial
//! rejections. The audit log file is the reference: every line of it must reach the receiver
//! once, or be counted as lost in the exit summary.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use egressd_tests::{API, EVIL, Scene, parse_json_lines, privileged, read_audit, shell_words};
use serde_json::Value;

const PYTHON: &str = "/opt/egressd-tests/venv/bin/python";

/// The test collector, stopped (SIGTERM) on drop.
struct Receiver {
    child: Child,
    stopped: bool,
    grpc: u16,
    http: u16,
    out: PathBuf,
}

impl Receiver {
    /// Starts it on `ports` (0: any free one) with `extra` flags; waits for its READY line.
    fn start(out: &Path, ports: (u16, u16), extra: &[&str]) -> Self {
        assert!(
            Path::new(PYTHON).is_file(),
            "{PYTHON} is missing: run `sudo cargo xtask setup` (it installs opentelemetry-proto)"
        );
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("otlp/receiver.py");
        let mut child = Command::new(PYTHON)
            .arg(script)
            .args(["--grpc", &format!("127.0.0.1:{}", ports.0)])
            .args(["--http", &format!("127.0.0.1:{}", ports.1)])
            .arg("--out")
            .arg(out)
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the OTLP receiver");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("reading the receiver's READY line");
        let port = |key: &str| -> u16 {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("no {key} in the receiver's READY line {line:?}"))
        };
        Self {
            grpc: port("grpc="),
            http: port("http="),
            child,
            stopped: false,
            out: out.to_owned(),
        }
    }

    /// Stops it (the collector goes down); its ports are free again at once.
    fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// Every record received so far.
    fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .map(|t| parse_json_lines(&t))
            .unwrap_or_default()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits (polling, up to 30 s) until `ready` says yes.
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A record's attribute.
fn attr<'a>(record: &'a Value, key: &str) -> &'a Value {
    &record["attributes"][key]
}

/// The receiver must hold each line of the audit file exactly once: both sides reduced to
/// `<ms since the epoch> <arm|disarm|decision name>`.
fn assert_every_line_arrived_once(audit: &[Value], received: &[Value]) {
    let line_key = |l: &Value| {
        let t = time::OffsetDateTime::parse(
            l["time"].as_str().unwrap_or_default(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap_or_else(|e| panic!("{e}: {l}"));
        let kind = match l["event"].as_str() {
            Some(event) => event.to_owned(),
            None => format!("{} {}", l["decision"], l["name"]),
        };
        format!("{} {kind}", t.unix_timestamp_nanos() / 1_000_000)
    };
    let record_key = |r: &Value| {
        let kind = match r["event_name"].as_str() {
            Some("egressd.arm") => "arm".to_owned(),
            Some("egressd.disarm") => "disarm".to_owned(),
            _ => format!(
                "{} {}",
                r["attributes"]["egressd.decision"], r["attributes"]["server.address"]
            ),
        };
        let ns = r["time_unix_nano"].as_u64().unwrap_or_default();
        format!("{} {kind}", ns / 1_000_000)
    };
    let mut want: Vec<String> = audit.iter().map(line_key).collect();
    let mut got: Vec<String> = received.iter().map(record_key).collect();
    want.sort();
    got.sort();
    assert_eq!(got, want, "received records vs audit log lines");
}

/// `curl` to the allowed name and to the denied one.
fn two_connections(s: &Scene) -> String {
    format!(
        "{} >/dev/null; {} >/dev/null 2>&1; true",
        shell_words(&s.curl_https(API, "192.0.2.10")),
        shell_words(&s.curl_https(EVIL, "192.0.2.11"))
    )
}

#[test]
fn audit_lines_reach_an_otlp_collector_over_grpc_and_http() {
    if !privileged() {
        return;
    }
    for protocol in ["grpc", "http/protobuf"] {
        let s = Scene::new();
        let out = s.scratch.path("received.jsonl");
        let receiver = Receiver::start(&out, (0, 0), &[]);
        let endpoint = match protocol {
            "grpc" => format!("http://127.0.0.1:{}", receiver.grpc),
            _ => format!("http://127.0.0.1:{}", receiver.http),
        };
        let run = s
            .egressd()
            .allow(API)
            .args(["--otlp-endpoint", &endpoint, "--otlp-protocol", protocol])
            .env(
                "OTEL_RESOURCE_ATTRIBUTES",
                "k8s.pod.name=runner-abc,k8s.node.name=node%2D1",
            )
            .env("EGRESSD_OTLP_HEADERS", "authorization=Bearer%20otlp-secret")
            // The collector's key stays out of the sandbox.
            .sh(&format!(
                "{}; env | grep -c otlp-secret || true",
                two_connections(&s)
            ))
            .run();
        run.assert_success();
        assert!(
            run.stdout.trim_end().ends_with('0'),
            "the sandbox saw the OTLP headers: {run}"
        );
        // Control: a command started without egressd sees the variable.
        let plain = Command::new("sh")
            .args(["-c", "env | grep -c otlp-secret"])
            .env("EGRESSD_OTLP_HEADERS", "authorization=Bearer%20otlp-secret")
            .output()
            .expect("sh");
        assert_eq!(String::from_utf8_lossy(&plain.stdout).trim(), "1");
        let logged = std::fs::read_to_string(&s.audit_log).unwrap_or_default();
        assert!(
            !run.stderr.contains("otlp-secret") && !logged.contains("otlp-secret"),
            "the collector's key leaked into a log\n{run}"
        );
        let summary = run.summary();
        assert!(
            summary.contains("audit lines sent to http://127.0.0.1:"),
            "{protocol}: no OTLP line in the summary\n{run}"
        );
        assert!(!summary.contains("did NOT reach"), "{protocol}\n{run}");

        let audit = read_audit(&s.audit_log);
        let received = receiver.records();
        assert_every_line_arrived_once(&audit, &received);
        let transport = if protocol == "grpc" { "grpc" } else { "http" };
        assert!(
            received.iter().all(|r| r["transport"] == transport),
            "{received:#?}"
        );

        let denied = received
            .iter()
            .find(|r| r["attributes"]["server.address"] == EVIL)
            .unwrap_or_else(|| panic!("no record for {EVIL}: {received:#?}"));
        assert_eq!(denied["severity_text"], "WARN", "{denied:#}");
        assert_eq!(denied["event_name"], "egressd.connection", "{denied:#}");
        assert_eq!(attr(denied, "egressd.decision"), "deny", "{denied:#}");
        assert_eq!(attr(denied, "server.port"), 443, "{denied:#}");
        assert!(
            attr(denied, "egressd.reason_code").is_string(),
            "{denied:#}"
        );
        assert!(
            denied["body"]
                .as_str()
                .is_some_and(|b| b.starts_with(&format!("deny tls {EVIL}:443"))),
            "{denied:#}"
        );
        let allowed = received
            .iter()
            .find(|r| r["attributes"]["server.address"] == API)
            .unwrap_or_else(|| panic!("no record for {API}: {received:#?}"));
        assert_eq!(allowed["severity_text"], "INFO", "{allowed:#}");
        assert!(
            attr(allowed, "egressd.bytes_down").as_u64() > Some(0),
            "{allowed:#}"
        );
        let resource = &allowed["resource"];
        assert_eq!(resource["service.name"], "egressd", "{resource:#}");
        assert_eq!(resource["k8s.pod.name"], "runner-abc", "{resource:#}");
        assert_eq!(resource["k8s.node.name"], "node-1", "{resource:#}");
        assert!(resource["host.name"].is_string(), "{resource:#}");
        assert_eq!(allowed["scope_name"], "egressd.audit", "{allowed:#}");
        let arm = received
            .iter()
            .find(|r| r["event_name"] == "egressd.arm")
            .expect("no arm record");
        assert!(
            attr(arm, "egressd.programs")
                .as_array()
                .is_some_and(|p| !p.is_empty()),
            "{arm:#}"
        );
    }
}

#[test]
fn no_record_is_lost_while_the_collector_restarts() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let out = s.scratch.path("received.jsonl");
    let mut receiver = Receiver::start(&out, (0, 0), &[]);
    let ports = (receiver.grpc, receiver.http);
    // The collector goes down before the run.
    receiver.stop();

    // The sandbox connects, then waits for the test's word (a FIFO) before it ends.
    let fifo = s.scratch.path("go");
    let made = Command::new("mkfifo")
        .args(["-m", "0666"])
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let script = format!(
        "{}; read _ < {}",
        two_connections(&s),
        shell_words(&[fifo.display().to_string()])
    );
    let running = s
        .egressd()
        .allow(API)
        .args(["--otlp-endpoint", &format!("http://127.0.0.1:{}", ports.0)])
        .sh(&script)
        .spawn();
    // Both connections are in the audit file: they are queued for the collector, which is down.
    wait_until("both connection records in the audit log", || {
        read_audit(&s.audit_log)
            .iter()
            .filter(|l| l["decision"].is_string())
            .count()
            >= 2
    });
    assert!(receiver.records().is_empty());

    // The collector comes back on the same port: the queued records go out.
    let receiver = Receiver::start(&out, ports, &[]);
    wait_until("the queued records at the restarted collector", || {
        receiver
            .records()
            .iter()
            .filter(|r| r["attributes"]["egressd.decision"].is_string())
            .count()
            >= 2
    });
    std::fs::write(&fifo, "go\n").expect("writing the FIFO");
    let run = running.wait();
    run.assert_success();
    assert!(!run.summary().contains("did NOT reach"), "\n{run}");
    assert_every_line_arrived_once(&read_audit(&s.audit_log), &receiver.records());
}

#[test]
fn what_does_not_reach_the_collector_is_counted() {
    if !privileged() {
        return;
    }
    // A full queue while the collector is down: dropped and unsent records are counted, and
    // the audit file still has every line.
    let s = Scene::new();
    let out = s.scratch.path("received.jsonl");
    let mut receiver = Receiver::start(&out, (0, 0), &[]);
    let port = receiver.grpc;
    receiver.stop();
    let run = s
        .egressd()
        .allow(API)
        .args(["--otlp-endpoint", &format!("http://127.0.0.1:{port}")])
        .args(["--otlp-queue", "1"])
        .sh(&two_connections(&s))
        .run();
    run.assert_success();
    let lines = read_audit(&s.audit_log).len() as u64;
    // `N audit lines did NOT reach the OTLP collector: D dropped (queue full), R refused, J
    // rejected by the collector, U unsent at exit`.
    let counts: Vec<u64> = run
        .stderr
        .lines()
        .find(|l| l.contains("did NOT reach the OTLP collector"))
        .unwrap_or_else(|| panic!("no loss counted\n{run}"))
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    let [lost, dropped, refused, rejected, unsent] = counts[..5] else {
        panic!("unexpected loss line\n{run}")
    };
    assert_eq!(lost, lines, "every line was lost, and counted\n{run}");
    assert_eq!(dropped + refused + rejected + unsent, lost, "\n{run}");
    assert!(dropped >= 1, "a queue of one record overflowed\n{run}");
    assert!(
        run.stderr
            .contains("audit records are not reaching the OTLP collector"),
        "the first loss is told at once\n{run}"
    );

    // A partial success: the collector took the request but rejected records in it.
    let s = Scene::new();
    let out = s.scratch.path("received.jsonl");
    let receiver = Receiver::start(&out, (0, 0), &["--partial-reject", "1"]);
    let run = s
        .egressd()
        .allow(API)
        .args([
            "--otlp-endpoint",
            &format!("http://127.0.0.1:{}", receiver.http),
            "--otlp-protocol",
            "http/protobuf",
        ])
        .sh(&two_connections(&s))
        .run();
    run.assert_success();
    assert!(
        run.stderr.contains("1 rejected by the collector"),
        "\n{run}"
    );
}

#[test]
fn a_busy_collector_gets_the_batch_again_after_its_retry_after() {
    if !privileged() {
        return;
    }
    // The first two export requests get `503` with `Retry-After: 1` (gRPC: `UNAVAILABLE`):
    // both are retried, and every line arrives once.
    for (protocol, flag) in [("http/protobuf", "http"), ("grpc", "grpc")] {
        let s = Scene::new();
        let out = s.scratch.path("received.jsonl");
        let receiver = Receiver::start(&out, (0, 0), &["--fail-first", "2"]);
        let port = if flag == "http" {
            receiver.http
        } else {
            receiver.grpc
        };
        let run = s
            .egressd()
            .allow(API)
            .args(["--otlp-endpoint", &format!("http://127.0.0.1:{port}")])
            .args(["--otlp-protocol", protocol])
            .sh(&two_connections(&s))
            .run();
        run.assert_success();
        assert!(!run.stderr.contains("did NOT reach"), "{protocol}\n{run}");
        assert_every_line_arrived_once(&read_audit(&s.audit_log), &receiver.records());
        assert!(
            receiver
                .records()
                .iter()
                .all(|r| r["request"].as_u64() > Some(2)),
            "every record came through a request after the refused ones"
        );
    }
}
