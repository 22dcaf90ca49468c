//! `egressd completions SHELL` and `egressd man`: generated from the clap definition in
//! `cli`, so they never drift from the real options.

use clap::CommandFactory as _;

use crate::{Failure, cli};

/// Prints the completion script for `args.shell` on stdout.
pub fn completions(args: &cli::CompletionsArgs) -> Result<u8, Failure> {
    let mut command = cli::Cli::command();
    clap_complete::generate(args.shell, &mut command, "egressd", &mut std::io::stdout());
    Ok(0)
}

/// Prints the man page (roff) on stdout: the top-level page, then one section per
/// subcommand with its own options.
pub fn man() -> Result<u8, Failure> {
    let command = cli::Cli::command();
    let mut out = Vec::new();
    clap_mangen::Man::new(command.clone())
        .render(&mut out)
        .map_err(Failure::runtime)?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name: &'static str = Box::leak(format!("egressd-{}", sub.get_name()).into_boxed_str());
        let sub = sub.clone().name(name);
        clap_mangen::Man::new(sub)
            .render(&mut out)
            .map_err(Failure::runtime)?;
    }
    use std::io::Write as _;
    std::io::stdout()
        .write_all(&out)
        .map_err(Failure::runtime)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use crate::cli::Cli;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_visible_subcommand_has_an_example_in_its_help() {
        fn walk(cmd: &clap::Command, path: &str) {
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                let path = format!("{path} {}", sub.get_name());
                let help = sub
                    .get_long_about()
                    .or(sub.get_about())
                    .map(ToString::to_string);
                assert!(
                    help.is_some_and(
                        |h| h.contains("Example: egressd") || h.contains("Example: sudo egressd")
                    ),
                    "`{path} --help` has no example"
                );
                walk(sub, &path);
            }
        }
        walk(&Cli::command(), "egressd");
    }

    #[test]
    fn man_page_and_completions_render() {
        let mut out = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut out)
            .unwrap();
        assert!(String::from_utf8(out).unwrap().contains("egressd"));
        let mut out = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "egressd",
            &mut out,
        );
        assert!(String::from_utf8(out).unwrap().contains("audit"));
    }
}
