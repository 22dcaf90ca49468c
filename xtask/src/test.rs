//! `cargo xtask test`: set up, build, then run the test suites with privileged tests required.
//!
//! `EGRESSD_PRIVILEGED_TESTS=1` turns the tests crate's `privileged()` guard from "skip" into
//! "fail" when not root, so CI never passes by skipping. The binaries are built first because
//! the e2e tests run `target/debug/egressd`, which `cargo test` alone does not build (it is
//! another package's binary). `--no-fail-fast` so that one failing package does not hide the
//! results of the others. Then every fuzz target runs for `--fuzz-seconds` (default 4; the
//! build is incremental after the first time), `deploy/validate.sh` renders the Helm chart
//! and validates it and the plain manifests offline, and the command fails if any part did.

use anyhow::Result;
use clap::Args;

use crate::{
    build, fuzz, setup,
    shell::{Shell, run as run_cmd, say},
};

/// Options of `cargo xtask test`.
#[derive(Debug, Args)]
pub struct Options {
    /// Seconds each fuzz target runs after the tests; 0 skips fuzzing.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub fuzz_seconds: u32,
    /// Extra arguments for `cargo test` (for example `-p egressd-tests -- core::`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn run(opts: &Options) -> Result<()> {
    setup::run(&setup::Options { no_apt: false })?;
    build::build(false)?;
    let sh = Shell::new()?;
    say!("running the tests (privileged tests required: EGRESSD_PRIVILEGED_TESTS=1)...");
    let tests = run_cmd(
        sh.cmd("cargo")
            .args(["test", "--no-fail-fast"])
            .args(&opts.args)
            .env("EGRESSD_PRIVILEGED_TESTS", "1"),
    );
    let fuzzed = if opts.fuzz_seconds == 0 {
        say!("fuzzing skipped (--fuzz-seconds 0)");
        Ok(())
    } else {
        say!(
            "running each fuzz target for {} s (cargo xtask fuzz runs longer)...",
            opts.fuzz_seconds
        );
        fuzz::smoke(opts.fuzz_seconds)
    };
    say!("validating the Kubernetes deployment (deploy/validate.sh)...");
    let deployed = run_cmd(
        sh.cmd("bash")
            .arg("deploy/validate.sh")
            .env("REQUIRE_EGRESSD", "1")
            .env("EGRESSD", "target/debug/egressd"),
    );
    let failures: Vec<String> = [("tests", tests), ("fuzzing", fuzzed), ("deploy", deployed)]
        .into_iter()
        .filter_map(|(part, r)| r.err().map(|e| format!("{part}: {e:#}")))
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{}", failures.join("; "))
    }
}
