//! The work behind each subcommand (the `cli` module only parses).

mod allowlist;
mod ca;
mod exec;

use crate::{Failure, cli};

/// Runs a parsed command line; `Ok` carries the exit code.
pub fn run(cli: cli::Cli) -> Result<u8, Failure> {
    match cli.command {
        cli::Command::Exec(args) => exec::run(args),
        cli::Command::Allowlist(cli::AllowlistCommand::Check(args)) => allowlist::check(&args),
        cli::Command::Allowlist(cli::AllowlistCommand::Show(args)) => allowlist::show(&args),
        cli::Command::Ca(cli::CaCommand::Export(args)) => ca::export(&args),
        cli::Command::SandboxInit(_) => unreachable!("handled in main before logging starts"),
    }
}
