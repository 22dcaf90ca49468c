//! The CLI without a sandbox: `allowlist check` and usage/config errors. No root needed, but
//! the `egressd` binary must be built (`cargo xtask test` does that).

use egressd_tests::{EgressdCommand, Scratch};

fn check(policy: &[&str], host: &str) -> egressd_tests::Output {
    EgressdCommand::new()
        .subcommand(["allowlist", "check"])
        .args(policy)
        .command([host])
        .run()
}

#[test]
fn allowlist_check_exits_0_for_an_allowed_host_and_names_the_entry() {
    let out = check(
        &["--allow-domains", "allowed.example,other.example"],
        "api.allowed.example",
    );
    assert_eq!(out.code(), Some(0), "\n{out}");
    assert!(
        out.stdout.contains("allowed.example"),
        "the deciding entry is printed\n{out}"
    );
    let out = check(
        &["--allow-domains", "allowed.example"],
        "api.allowed.example:443",
    );
    assert_eq!(out.code(), Some(0), "HOST:PORT form\n{out}");
}

#[test]
fn allowlist_check_exits_1_for_a_denied_host() {
    let out = check(&["--allow-domains", "allowed.example"], "evil.example");
    assert_eq!(out.code(), Some(1), "\n{out}");
    let out = check(
        &[
            "--allow-domains",
            "allowed.example",
            "--block-domains",
            "bad.allowed.example",
        ],
        "bad.allowed.example",
    );
    assert_eq!(
        out.code(),
        Some(1),
        "a block entry wins over the allow entry\n{out}"
    );
    assert!(
        format!("{}{}", out.stdout, out.stderr).contains("bad.allowed.example"),
        "\n{out}"
    );
}

#[test]
fn allowlist_check_names_the_file_an_entry_came_from() {
    let scratch = Scratch::new();
    let file = scratch.write("allow.txt", "# test allowlist\nfrom-file.example\n");
    let out = check(
        &["--allow-domains-file", &file.display().to_string()],
        "x.from-file.example",
    );
    assert_eq!(out.code(), Some(0), "\n{out}");
    let printed = format!("{}{}", out.stdout, out.stderr);
    assert!(printed.contains("from-file.example"), "\n{out}");
    assert!(
        printed.contains(&file.display().to_string()),
        "the origin (file) is printed\n{out}"
    );
}

#[test]
fn exec_with_a_broken_config_file_exits_64_and_names_the_file() {
    let scratch = Scratch::new();
    let config = scratch.write("bad.toml", "this is = = not toml\n");
    let out = EgressdCommand::new()
        .arg("--config")
        .arg(&config)
        .command(["true"])
        .run();
    assert_eq!(out.code(), Some(64), "\n{out}");
    assert!(
        out.stderr.contains(&config.display().to_string()),
        "the error names the file\n{out}"
    );
}

#[test]
fn exec_with_a_missing_allowlist_file_exits_64() {
    let out = EgressdCommand::new()
        .arg("--allow-domains-file")
        .arg("/nonexistent/egressd-allow.txt")
        .command(["true"])
        .run();
    assert_eq!(out.code(), Some(64), "\n{out}");
    assert!(
        out.stderr.contains("/nonexistent/egressd-allow.txt"),
        "\n{out}"
    );
}
