//! `cargo xtask demo`: set up, build, then run `egressd-demo` (tests/src/bin/egressd-demo.rs),
//! a scripted "agent" inside `egressd exec` that tries allowed and forbidden egress and then
//! shows the audit log. It needs root and only talks to a network namespace it creates.

use anyhow::Result;
use clap::Args;

use crate::{
    build, setup,
    shell::{Shell, run as run_cmd, say},
};

/// Options of `cargo xtask demo`.
#[derive(Debug, Args)]
pub struct Options {}

pub fn run(_opts: &Options) -> Result<()> {
    setup::run(&setup::Options { no_apt: false })?;
    build::build(false)?;
    let sh = Shell::new()?;
    say!("running the demo...");
    run_cmd(sh.cmd("cargo").args([
        "run",
        "--quiet",
        "--package",
        "egressd-tests",
        "--bin",
        "egressd-demo",
    ]))
}
