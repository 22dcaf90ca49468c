//! `egressd-bench run --quick` end to end, on the two targets that need nothing installed
//! (`direct` and egressd pass-through): the smoke test of the bench itself.
//!
//! Needs root and a built `egressd` (release, else debug); skips with the reason otherwise.
//! Not run by CI: the bench crate is not a default member (`cargo test -p egressd-bench`).

use std::{path::PathBuf, process::Command};

#[test]
fn quick_run_writes_a_report_with_both_targets() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the bench needs root");
        return;
    }
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    let Some(egressd) = ["release", "debug"]
        .iter()
        .map(|p| target.join(p).join("egressd"))
        .find(|p| p.exists())
    else {
        eprintln!("skipped: no egressd binary (cargo build -p egressd)");
        return;
    };
    let out = std::env::temp_dir().join(format!("egressd-bench-test-{}", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_egressd-bench"))
        .args(["run", "--quick", "--only", "direct,egressd-pass", "--out"])
        .arg(&out)
        .arg("--egressd")
        .arg(&egressd)
        .status()
        .unwrap();
    assert!(status.success(), "egressd-bench run --quick failed");
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    std::fs::remove_dir_all(&out).unwrap();
    assert!(md.contains("| egressd-pass |"), "{md}");
    for target in json["targets"].as_array().unwrap() {
        assert_eq!(target["status"], "ok", "{target}");
        assert!(target["summary"]["conn_per_s"].as_f64().unwrap() > 0.0);
    }
}
