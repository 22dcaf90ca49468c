//! `cargo xtask ...`: the developer commands of the egressd workspace.
//!
//! Each subcommand is one module with its own `Options` struct. Every command says what it is
//! doing as it goes (`xtask: ...` on stderr), so a fresh machine's first run is not a silent
//! minute of compiling. `setup` installs what is missing and is fast when nothing is;
//! `build`, `test`, `demo` and `fuzz` run it first. The eBPF object itself is built by
//! `daemon/build.rs` through aya-build; xtask only makes sure its toolchain is there
//! (`shared/TOOLCHAIN.md`).

mod bench;
mod build;
mod demo;
mod dist;
mod fuzz;
mod setup;
mod shell;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Developer commands for egressd.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the toolchain and test tools, installing whatever is missing.
    Setup(setup::Options),
    /// Set up, then build every binary of the workspace (the daemon embeds the eBPF object).
    Build(build::Options),
    /// Set up, build, then run all tests with privileged tests required (not skipped).
    Test(test::Options),
    /// Set up, build, then run the scripted demo of a sandboxed "agent".
    Demo(demo::Options),
    /// Set up, build the fuzz targets (cargo-fuzz, nightly), then run each for a while.
    Fuzz(fuzz::Options),
    /// Build the release assets the GitHub Action installs (target/dist/).
    Dist(dist::Options),
    /// Set up, install HAProxy, nginx, Squid and mitmproxy, build in release mode, then
    /// benchmark egressd against them and plot its cost curves (target/bench/).
    Bench(bench::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup(opts) => setup::run(&opts),
        Command::Build(opts) => build::run(&opts),
        Command::Test(opts) => test::run(&opts),
        Command::Demo(opts) => demo::run(&opts),
        Command::Fuzz(opts) => fuzz::run(&opts),
        Command::Bench(opts) => bench::run(&opts),
        Command::Dist(opts) => dist::run(&opts),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
