//! The work behind each subcommand (the `cli` module only parses).

mod allowlist;
pub(crate) mod audit;
mod awf;
mod ca;
mod control;
mod doctor;
pub(crate) mod exec;
mod generate;
mod job_doors;
mod lint;
mod run;

use crate::{Failure, cli};

pub use awf::{argv_for, precheck as awf_precheck};

/// Runs a parsed command line; `Ok` carries the exit code.
pub fn run(cli: cli::Cli) -> Result<u8, Failure> {
    match cli.command {
        cli::Command::Exec(args) => exec::run(args),
        cli::Command::Awf(args) => awf::run(*args),
        cli::Command::Run(args) => run::run(args),
        cli::Command::Doctor(args) => doctor::run(&args),
        cli::Command::Attach(args) => control::attach(args),
        cli::Command::Detach(args) => control::detach(args),
        cli::Command::Status(args) => control::status(&args),
        cli::Command::Reload(args) => control::reload(&args),
        cli::Command::Allowlist(cli::AllowlistCommand::Check(args)) => allowlist::check(&args),
        cli::Command::Allowlist(cli::AllowlistCommand::Show(args)) => allowlist::show(&args),
        cli::Command::Allowlist(cli::AllowlistCommand::Explain(args)) => allowlist::explain(&args),
        cli::Command::Allowlist(cli::AllowlistCommand::Diff(args)) => allowlist::diff(&args),
        cli::Command::Allowlist(cli::AllowlistCommand::Lint(args)) => lint::run(&args),
        cli::Command::Audit(args) => audit::run(&args),
        cli::Command::Completions(args) => generate::completions(&args),
        cli::Command::Man => generate::man(),
        cli::Command::Ca(cli::CaCommand::Export(args)) => ca::export(&args),
        cli::Command::SandboxInit(_) => unreachable!("handled in main before logging starts"),
    }
}
