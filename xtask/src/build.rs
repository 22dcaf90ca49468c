//! `cargo xtask build`: set up, then build every binary of the default workspace members.
//!
//! The daemon's build script compiles the eBPF object through aya-build, which calls
//! `cargo +nightly` and `bpf-linker`; `setup` made sure both exist and `Shell` puts them on
//! `PATH`. The eBPF crate itself is not a default member (it only builds for
//! `bpfel-unknown-none`), so this builds the default members rather than `--workspace`.

use anyhow::Result;
use clap::Args;

use crate::{
    setup,
    shell::{Shell, run as run_cmd, say},
};

/// Options of `cargo xtask build`.
#[derive(Debug, Args)]
pub struct Options {
    /// Build with the release profile.
    #[arg(long)]
    pub release: bool,
}

pub fn run(opts: &Options) -> Result<()> {
    setup::run(&setup::Options { no_apt: false })?;
    build(opts.release)
}

/// Build the binaries (without running setup first).
pub fn build(release: bool) -> Result<()> {
    let sh = Shell::new()?;
    say!("building egressd, its eBPF object and the test binaries...");
    let mut cmd = sh.cmd("cargo");
    cmd.args(["build", "--bins"]);
    if release {
        cmd.arg("--release");
    }
    run_cmd(&mut cmd)
}
