//! `cargo xtask dist`: the release assets the GitHub Action installs.
//!
//! Builds `egressd` with the release profile (the eBPF object embedded) and writes, in
//! `target/dist/`:
//!
//! ```text
//! egressd-<arch>-linux          the binary (arch: x86_64 or aarch64, as `uname -m`)
//! egressd-<arch>-linux.sha256   its SHA-256, in `sha256sum` format
//! ```
//!
//! `action/main.js` downloads exactly these two names from the release (or `release-url`)
//! and refuses a binary whose hash differs. `.github/workflows/release.yml` runs this on
//! each architecture and uploads the files to the tag's release.

use std::fs;

use anyhow::{Context as _, Result};
use clap::Args;

use crate::{
    setup,
    shell::{Shell, run as run_cmd, say},
};

/// Options of `cargo xtask dist`.
#[derive(Debug, Args)]
pub struct Options {}

/// The asset name for this machine's architecture.
pub fn asset_name() -> String {
    format!("egressd-{}-linux", std::env::consts::ARCH)
}

pub fn run(_opts: &Options) -> Result<()> {
    setup::run(&setup::Options { no_apt: true })?;
    let sh = Shell::new()?;
    say!("building egressd (release)...");
    run_cmd(sh.cmd("cargo").args([
        "build",
        "--release",
        "--locked",
        "-p",
        "egressd",
        "--bin",
        "egressd",
    ]))?;
    let dist = sh.root().join("target/dist");
    fs::create_dir_all(&dist).with_context(|| format!("creating {}", dist.display()))?;
    let asset = asset_name();
    let binary = dist.join(&asset);
    fs::copy(sh.root().join("target/release/egressd"), &binary)
        .with_context(|| format!("copying the binary to {}", binary.display()))?;
    let out = sh
        .cmd("sha256sum")
        .arg(&asset)
        .current_dir(&dist)
        .output()
        .context("running sha256sum")?;
    anyhow::ensure!(
        out.status.success(),
        "sha256sum failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sum = dist.join(format!("{asset}.sha256"));
    fs::write(&sum, &out.stdout).with_context(|| format!("writing {}", sum.display()))?;
    say!("wrote {} and {}", binary.display(), sum.display());
    Ok(())
}
