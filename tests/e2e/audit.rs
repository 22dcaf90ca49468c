//! `egressd audit` on the log of a real `egressd exec`: the arm/disarm proof of
//! enforcement, the per-domain view, suggestions and the job summary.

use std::fs;

use egressd_tests::{API, EVIL, EgressdCommand, Scene, privileged, read_audit, shell_words};
use serde_json::Value;

#[test]
fn audit_of_a_real_run_proves_enforcement_and_lists_what_was_denied() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    let script = format!(
        "{}; {}; true",
        shell_words(&s.curl_https(API, "192.0.2.10")),
        shell_words(&s.curl_https(EVIL, "192.0.2.11"))
    );
    let out = s.egressd().allow(API).sh(&script).run();
    out.assert_success();

    // The log starts with `arm` and ends with `disarm`; neither is counted in the summary.
    let lines = read_audit(&s.audit_log);
    let first = lines.first().expect("an empty audit log");
    let last = lines.last().expect("an empty audit log");
    assert_eq!(first["event"], "arm", "\n{out}");
    assert_eq!(first["backend"], "ebpf", "{first}");
    // 11 programs, and the two Unix-socket hooks on kernels that have them (6.7+).
    let programs = if egressd_tests::kernel_at_least(6, 7) {
        13
    } else {
        11
    };
    assert_eq!(
        first["programs"].as_array().map(Vec::len),
        Some(programs),
        "{first}"
    );
    assert!(
        first["cgroup"]
            .as_str()
            .is_some_and(|c| c.contains("egressd-")),
        "{first}"
    );
    assert!(
        first["policy_hash"]
            .as_str()
            .is_some_and(|h| h.starts_with("sha256:")),
        "{first}"
    );
    assert_eq!(last["event"], "disarm", "{last}");
    assert_eq!(last["exit_code"], 0, "{last}");

    // The same policy flags: the hash in the arm record matches, so the proof holds.
    let audit = EgressdCommand::new()
        .subcommand(["audit", "--format", "json", "--suggest", "--require-proof"])
        .args(["--allow-domains", API])
        .command([s.audit_log.as_os_str()])
        .run();
    assert_eq!(audit.code(), Some(0), "\n{audit}");
    let report: Value =
        serde_json::from_str(&audit.stdout).unwrap_or_else(|e| panic!("{e}\n{audit}"));
    assert_eq!(report["enforcement"]["status"], "proven", "{report:#}");
    assert!(
        report["enforcement"]["summary"]
            .as_str()
            .is_some_and(|t| t.starts_with("enforced from ") && t.ends_with(", no gaps")),
        "{report:#}"
    );
    let domain = |name: &str| {
        report["domains"]
            .as_array()
            .and_then(|d| d.iter().find(|r| r["domain"] == name).cloned())
            .unwrap_or_else(|| panic!("no row for {name}: {report:#}"))
    };
    assert!(domain(API)["allowed"].as_u64() >= Some(1), "{report:#}");
    assert!(domain(EVIL)["denied"].as_u64() >= Some(1), "{report:#}");
    let suggested: Vec<&str> = report["suggestions"]["add"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["add"].as_str()).collect())
        .unwrap_or_default();
    assert!(suggested.contains(&EVIL), "{report:#}");

    // A different policy: the proof no longer holds.
    let other = EgressdCommand::new()
        .subcommand(["audit", "--require-proof"])
        .args(["--allow-domains", "other.example"])
        .command([s.audit_log.as_os_str()])
        .run();
    assert_eq!(other.code(), Some(1), "\n{other}");

    // The job summary: a collapsible block with the denied name.
    let summary = s.scratch.path("step-summary.md");
    let step = EgressdCommand::new()
        .subcommand(["audit", "--step-summary", "--format", "markdown"])
        .env("GITHUB_STEP_SUMMARY", &summary)
        .command([s.audit_log.as_os_str()])
        .run();
    assert_eq!(step.code(), Some(0), "\n{step}");
    let text = fs::read_to_string(&summary).unwrap_or_default();
    assert!(
        text.starts_with("<details>") && text.contains(EVIL),
        "{text}\n{step}"
    );
    assert!(step.stdout.contains("**Enforcement:** ✅"), "\n{step}");
}

#[test]
fn a_log_without_arm_is_reported_as_not_proven() {
    let scratch = egressd_tests::Scratch::new();
    let log = scratch.write(
        "old.jsonl",
        r#"{"time":"2026-11-21T21:58:24.887Z","sandbox":"egressd-1","client":"127.0.0.1:1","orig_dst":"192.0.2.7:443","proto":"tls","name":"a.example","port":443,"decision":"allow","rule":null,"reason":"in the allowlist","upstream":null,"bytes_up":0,"bytes_down":0,"duration_ms":1}
"#,
    );
    let out = EgressdCommand::new()
        .subcommand(["audit", "--require-proof"])
        .command([log.as_os_str()])
        .run();
    assert_eq!(out.code(), Some(1), "\n{out}");
    assert!(out.stdout.contains("ENFORCEMENT NOT PROVEN"), "\n{out}");
}

/// Issue 9 faults: the audit log's disk fills up. Records are not silently lost: egressd says
/// so at the first failure and the summary counts what could not be written; the traffic
/// decisions themselves still hold.
#[test]
fn a_full_disk_for_the_audit_log_is_reported_and_counted() {
    if !egressd_tests::privileged() {
        return;
    }
    let s = egressd_tests::Scene::new();
    let small = s.scratch.path("small");
    std::fs::create_dir_all(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16k", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a small tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(small.clone());
    let log = small.join("audit.jsonl");
    // 80 denials of 80 different names: identical ones would be coalesced into one line.
    let script = format!(
        "i=0; while [ $i -lt 80 ]; do curl -sS --connect-timeout 10 --max-time 20 --cacert {ca} \
         --resolve n$i.{evil}:443:192.0.2.11 https://n$i.{evil}/ 2>/dev/null; i=$((i+1)); done; true",
        ca = s.ca_pem.display(),
        evil = egressd_tests::EVIL
    );
    let out = egressd_tests::EgressdCommand::new()
        .resolve(egressd_tests::EVIL, s.net.addr2())
        .allow(egressd_tests::API)
        .audit_log(&log)
        .sh(&script)
        .run();
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(
        s.evil.connections(),
        0,
        "denials still hold\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("writing the audit log failed"),
        "the first failure is reported\n{}",
        out.stderr
    );
    let lost = out
        .stderr
        .lines()
        .find(|l| l.contains("could NOT be written"))
        .unwrap_or_else(|| panic!("the summary counts the lost lines\n{}", out.stderr));
    let count: u64 = lost
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or(0);
    let text = std::fs::read_to_string(&log).unwrap();
    let complete = text
        .lines()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
        .count() as u64;
    // 80 denials plus arm and disarm: every line is either in the file or counted as lost.
    assert!(
        count > 0 && complete + count >= 82,
        "{complete} written + {count} lost\n{lost}"
    );
}
