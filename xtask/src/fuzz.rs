//! `cargo xtask fuzz`: build the libFuzzer targets in `fuzz/` and run them.
//!
//! The targets (`fuzz/fuzz_targets/*.rs`) cover every parser that sees sandbox input or
//! configuration. They are built once with `cargo +nightly fuzz build` (release, debug
//! assertions on) into `target/fuzz-<sanitizer>/`, then each binary is run directly:
//!
//! ```text
//! <binary> fuzz/generated/<target> fuzz/corpus/<target> -max_total_time=<seconds>
//!          -artifact_prefix=fuzz/artifacts/<target>/
//! ```
//!
//! libFuzzer reads both corpus directories and writes the inputs it finds to the first one,
//! so the hand-written seeds in `fuzz/corpus/` (in the repository) stay as they are, and the
//! generated corpus (`fuzz/generated/`, ignored by git) grows from run to run on this
//! machine; after each run it is minimized (`-merge=1`) to the inputs that add coverage. A crash is saved under `fuzz/artifacts/<target>/`; fix the parser and add the
//! input as a unit test next to it.
//!
//! `cargo xtask test` calls [`smoke`]: every target for a few seconds, output kept in a log
//! file and shown only when a target fails. It reads the generated corpus but does not add
//! to it (new inputs go to a scratch directory that is emptied first), so test runs stay as
//! fast as the corpus left by the last `cargo xtask fuzz`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

use crate::{
    setup,
    shell::{Shell, output, run as run_cmd, say},
};

/// Every fuzz target, as named in `fuzz/Cargo.toml`.
pub const TARGETS: &[&str] = &[
    "classify",
    "http_head",
    "dns",
    "config_toml",
    "awf_config",
    "audit_line",
];

/// Options of `cargo xtask fuzz`.
#[derive(Debug, Args)]
pub struct Options {
    /// Run only this target (default: all of them, one after the other).
    #[arg(long, value_name = "TARGET", value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    pub target: Option<String>,
    /// How long to run each target.
    #[arg(long, value_name = "N", default_value_t = 60)]
    pub seconds: u32,
    /// Parallel fuzzing processes per target (libFuzzer's `-fork`); 1 runs in-process.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub jobs: u32,
    /// Instrumentation: `none` builds and runs fastest; `address` adds AddressSanitizer,
    /// which matters for the `unsafe` code of dependencies (egressd's parsers have none).
    #[arg(long, value_enum, default_value_t = Sanitizer::None)]
    pub sanitizer: Sanitizer,
}

/// The `cargo fuzz --sanitizer` values offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Sanitizer {
    /// No sanitizer.
    None,
    /// AddressSanitizer.
    Address,
}

impl Sanitizer {
    fn name(self) -> &'static str {
        match self {
            Sanitizer::None => "none",
            Sanitizer::Address => "address",
        }
    }
}

pub fn run(opts: &Options) -> Result<()> {
    setup::run(&setup::Options { no_apt: true })?;
    let sh = Shell::new()?;
    let bins = build(&sh, opts.sanitizer)?;
    let targets: Vec<&str> = match &opts.target {
        Some(t) => vec![t.as_str()],
        None => TARGETS.to_vec(),
    };
    let mut failed = Vec::new();
    for target in targets {
        say!("fuzzing {target} for {} s...", opts.seconds);
        let mut cmd = fuzz_command(&sh, &bins, target, opts.seconds, true)?;
        if opts.jobs > 1 {
            cmd.arg(format!("-fork={}", opts.jobs));
        }
        if let Err(e) = run_cmd(&mut cmd) {
            say!("{target}: {e:#}");
            failed.push(target);
        } else {
            minimize(&sh, &bins, target)?;
        }
    }
    report(&sh, &bins, &failed)
}

/// Replaces the generated corpus of `target` by the smallest subset with the same coverage
/// (libFuzzer's `-merge=1`), so that it loads fast in the next run.
fn minimize(sh: &Shell, bins: &Path, target: &str) -> Result<()> {
    let root = sh.root();
    let generated = root.join("fuzz/generated").join(target);
    let merged = root.join("target/fuzz-merge").join(target);
    if merged.exists() {
        fs::remove_dir_all(&merged).with_context(|| format!("emptying {}", merged.display()))?;
    }
    fs::create_dir_all(&merged).with_context(|| format!("creating {}", merged.display()))?;
    let before = count(&generated);
    let status = sh
        .cmd(bins.join(target))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .arg("-merge=1")
        .arg(&merged)
        .arg(&generated)
        .status()
        .with_context(|| format!("minimizing the {target} corpus"))?;
    if !status.success() {
        say!("{target}: minimizing the generated corpus failed ({status}); kept as it is");
        return Ok(());
    }
    fs::remove_dir_all(&generated).with_context(|| format!("removing {}", generated.display()))?;
    fs::rename(&merged, &generated)
        .with_context(|| format!("moving {} to {}", merged.display(), generated.display()))?;
    say!(
        "{target}: generated corpus minimized, {before} -> {} inputs",
        count(&generated)
    );
    Ok(())
}

/// Number of entries in `dir` (0 if it cannot be read).
fn count(dir: &Path) -> usize {
    fs::read_dir(dir).map_or(0, Iterator::count)
}

/// `cargo xtask test`'s bounded run: each target for `seconds`, quietly.
pub fn smoke(seconds: u32) -> Result<()> {
    let sh = Shell::new()?;
    let bins = build(&sh, Sanitizer::None)?;
    let logs = sh.root().join("target/fuzz-logs");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let mut failed = Vec::new();
    for &target in TARGETS {
        let log = logs.join(format!("{target}.log"));
        let file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = fuzz_command(&sh, &bins, target, seconds, false)?;
        cmd.stdout(file.try_clone()?).stderr(file);
        let status = cmd
            .status()
            .with_context(|| format!("starting the {target} fuzz target"))?;
        let text = fs::read_to_string(&log).unwrap_or_default();
        if status.success() {
            say!("fuzz {target}: {seconds} s, {}", stats(&text));
        } else {
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            say!(
                "fuzz {target}: FAILED ({status}); full log in {}",
                log.display()
            );
            failed.push(target);
        }
    }
    report(&sh, &bins, &failed)
}

/// Builds every target; returns the directory holding the binaries.
fn build(sh: &Shell, sanitizer: Sanitizer) -> Result<PathBuf> {
    let target_dir = sh.root().join(format!("target/fuzz-{}", sanitizer.name()));
    say!(
        "building the fuzz targets (cargo +nightly fuzz build, sanitizer {})...",
        sanitizer.name()
    );
    run_cmd(
        sh.cmd("cargo")
            .args([
                "+nightly",
                "fuzz",
                "build",
                "--debug-assertions",
                "--sanitizer",
            ])
            .arg(sanitizer.name())
            .arg("--target-dir")
            .arg(&target_dir),
    )
    .context(
        "building the fuzz targets (is the nightly toolchain installed? `cargo xtask setup`)",
    )?;
    let version = output(sh.cmd("rustc").args(["+nightly", "-vV"]))?;
    let host = version
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .context("`rustc +nightly -vV` printed no host line")?;
    Ok(target_dir.join(host).join("release"))
}

/// The command running `target` for `seconds` over the generated and the seed corpus; new
/// inputs go to the generated corpus when `grow`, else to an emptied scratch directory.
fn fuzz_command(
    sh: &Shell,
    bins: &Path,
    target: &str,
    seconds: u32,
    grow: bool,
) -> Result<std::process::Command> {
    let root = sh.root();
    let generated = root.join("fuzz/generated").join(target);
    let artifacts = root.join("fuzz/artifacts").join(target);
    let scratch = root.join("target/fuzz-scratch").join(target);
    if scratch.exists() {
        fs::remove_dir_all(&scratch).with_context(|| format!("emptying {}", scratch.display()))?;
    }
    for dir in [&generated, &artifacts, &scratch] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut cmd = sh.cmd(bins.join(target));
    cmd.stdin(Stdio::null());
    if !grow {
        cmd.arg(&scratch);
    }
    cmd.arg(&generated)
        .arg(root.join("fuzz/corpus").join(target))
        .arg(format!("-max_total_time={seconds}"))
        // An input that takes this long is a hang: reported like a crash.
        .arg("-timeout=10")
        .arg("-max_len=16384")
        .arg(format!("-artifact_prefix={}/", artifacts.display()));
    Ok(cmd)
}

/// `execs/s` and corpus size from libFuzzer's last status line, for the one-line summary.
fn stats(log: &str) -> String {
    log.lines()
        .rev()
        .find(|l| l.contains("exec/s:"))
        .map_or_else(
            || "no stats".to_owned(),
            |l| {
                l.split_whitespace()
                    .skip_while(|w| !w.starts_with('#'))
                    .collect::<Vec<_>>()
                    .join(" ")
            },
        )
}

/// Fails naming the targets that failed and where their artifacts are.
fn report(sh: &Shell, bins: &Path, failed: &[&str]) -> Result<()> {
    if failed.is_empty() {
        return Ok(());
    }
    for target in failed {
        say!(
            "{target}: crash inputs are in {}; rerun one with `{} FILE`, fix the parser and \
             add the input as a unit test next to it",
            sh.root().join("fuzz/artifacts").join(target).display(),
            bins.join(target).display()
        );
    }
    bail!("fuzz targets failed: {}", failed.join(", "))
}
