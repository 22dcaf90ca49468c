//! Turns the policy flags shared by `exec` and `allowlist` into a validated
//! `egressd_config::Config`. Sources are applied in a fixed order (config file, then
//! files, then flags), and every error of every source is reported at once.

use std::path::PathBuf;

use egressd_config::{Config, ConfigBuilder, Origin};

use crate::cli::PolicyArgs;

/// Builds the configuration; `audit_log` comes from `exec` only.
pub fn build(
    args: &PolicyArgs,
    audit_log: Option<PathBuf>,
) -> Result<Config, egressd_config::Error> {
    build_with(args, audit_log, Vec::new())
}

/// As [`build`], plus `entries` egressd derived itself (the `awf` front end's GHES hosts).
pub fn build_with(
    args: &PolicyArgs,
    audit_log: Option<PathBuf>,
    entries: Vec<egressd_config::Entry>,
) -> Result<Config, egressd_config::Error> {
    let mut builder = ConfigBuilder::new();
    for entry in entries {
        builder.entry(entry);
    }
    let mut errors = Vec::new();
    if let Some(github) = crate::env::github_env() {
        if args.no_github {
            // No derived entries, but Copilot still exchanges at this deployment's API.
            builder.github_deployment(&github);
        } else {
            keep(&mut errors, builder.github(&github, !args.no_copilot));
        }
    }
    builder.github_run(crate::env::github_run());
    if !args.no_copilot
        && let Some(byok) = crate::env::copilot_byok()
    {
        builder.copilot_byok(byok);
    }

    if let Some(path) = &args.config {
        keep(&mut errors, builder.toml_file(path));
    }
    for path in &args.allow_domains_file {
        keep(&mut errors, builder.allow_file(path));
    }
    for path in &args.block_domains_file {
        keep(&mut errors, builder.block_file(path));
    }
    for list in &args.allow_domains {
        keep(
            &mut errors,
            builder.allow_list(list, Origin::Flag("--allow-domains")),
        );
    }
    for list in &args.block_domains {
        keep(
            &mut errors,
            builder.block_list(list, Origin::Flag("--block-domains")),
        );
    }
    for spec in &args.resolve {
        keep(&mut errors, builder.resolve(spec));
    }
    for spec in &args.dns_server {
        keep(&mut errors, builder.dns_server(spec));
    }
    if !args.allow_loopback_port.is_empty() {
        builder.loopback_ports(
            &args.allow_loopback_port,
            Origin::Flag("--allow-loopback-port"),
        );
    }
    if let Some(path) = &args.upstream_ca {
        builder.upstream_ca(path.clone());
    }
    if let Some(path) = audit_log {
        builder.audit_log(path);
    }
    builder.audit_only(args.audit_only);
    match errors.len() {
        0 => {}
        1 => return Err(errors.remove(0)),
        _ => return Err(egressd_config::Error::Partial(errors)),
    }
    builder.build()
}

fn keep(errors: &mut Vec<egressd_config::Error>, result: Result<(), egressd_config::Error>) {
    if let Err(e) = result {
        errors.push(e);
    }
}
