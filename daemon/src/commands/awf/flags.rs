//! AWF flags egressd refuses, by name, with the reason (`shared/reference/awf.md` §2.1). They
//! are checked on the raw arguments before clap parses them, so the error explains why instead
//! of saying "unexpected argument".

/// Flags that need Docker or that egressd does not implement yet, with why.
const REFUSED: &[(&str, &str)] = &[
    (
        "--no-enable-api-proxy",
        "the api-proxy can no longer be disabled (AWF refuses it too)",
    ),
    (
        "--build-local",
        "egressd runs no containers, so there are no images to build",
    ),
    (
        "-b",
        "egressd runs no containers, so there are no images to build (--build-local)",
    ),
    (
        "--agent-image",
        "egressd runs no containers: the command runs on the host",
    ),
    (
        "--image-registry",
        "egressd runs no containers: there are no images",
    ),
    (
        "--image-tag",
        "egressd runs no containers: there are no images",
    ),
    ("--docker-host", "egressd does not use Docker"),
    ("--docker-host-path-prefix", "egressd does not use Docker"),
    (
        "--container-runtime",
        "egressd runs the command on the host, not in a container or VM",
    ),
    ("--memory-limit", "container resource limits need Docker"),
    ("--pids-limit", "container resource limits need Docker"),
    ("--enable-dind", "Docker-in-Docker needs Docker"),
    (
        "--topology-attach",
        "attaching containers to the sandbox network needs Docker",
    ),
    (
        "--legacy-security",
        "egressd has one mode (eBPF redirection), no iptables fallback",
    ),
    ("--security-mode", "egressd has one mode (eBPF redirection)"),
    (
        "--enable-host-access",
        "host.docker.internal needs Docker; use --allow-loopback-port with egressd exec",
    ),
    (
        "--allow-host-ports",
        "host access needs Docker; use --allow-loopback-port with egressd exec",
    ),
    ("--allow-host-service-ports", "host access needs Docker"),
    ("--keep-containers", "egressd runs no containers"),
    ("-k", "egressd runs no containers (--keep-containers)"),
    (
        "--work-dir",
        "not supported yet; use --proxy-logs-dir and --audit-dir",
    ),
    ("--ssl-bump", "URL-level filtering is not supported yet"),
    (
        "--allow-urls",
        "URL-level filtering (--ssl-bump) is not supported yet",
    ),
    (
        "--ruleset-file",
        "not supported yet; use --allow-domains-file",
    ),
    (
        "--upstream-proxy",
        "egressd connects directly; an upstream proxy is not supported yet",
    ),
    (
        "--dns-servers",
        "use --dns-server (egressd resolves allowed names itself)",
    ),
    ("--dns-over-https", "egressd resolves allowed names itself"),
    ("--enable-dlp", "DLP URL filtering is not supported yet"),
    ("--session-state-dir", "not supported yet"),
    ("--diagnostic-logs", "container diagnostics need Docker"),
    ("--reflect", "not supported yet by egressd's api-proxy"),
    ("--difc-proxy-host", "the cli-proxy sidecar needs Docker"),
    ("--difc-proxy-ca-cert", "the cli-proxy sidecar needs Docker"),
    (
        "--openai-base-url-env",
        "not supported yet by egressd's api-proxy",
    ),
    (
        "--anthropic-auto-cache",
        "not supported yet by egressd's api-proxy",
    ),
    (
        "--anthropic-cache-tail-ttl",
        "not supported yet by egressd's api-proxy",
    ),
    (
        "--max-model-multiplier",
        "not supported yet by egressd's api-proxy",
    ),
    (
        "--max-model-multiplier-cap",
        "not supported yet by egressd's api-proxy",
    ),
    (
        "--max-permission-denied",
        "not supported yet by egressd's api-proxy",
    ),
    (
        "--max-cache-misses",
        "not supported yet by egressd's api-proxy",
    ),
    (
        "--enable-token-steering",
        "not supported yet by egressd's api-proxy",
    ),
];

/// Refuses the first flag before `--` that egressd cannot honour, naming it and saying why.
///
/// # Errors
///
/// The message: `--flag is not supported by egressd: <why>`.
pub fn precheck(args: &[std::ffi::OsString]) -> Result<(), String> {
    for arg in args {
        let Some(arg) = arg.to_str() else { continue };
        if arg == "--" {
            break;
        }
        let name = arg.split_once('=').map_or(arg, |(n, _)| n);
        let refused = REFUSED.iter().find(|(flag, _)| *flag == name).or_else(|| {
            name.starts_with("--cloud-hypervisor").then_some(&(
                "--cloud-hypervisor-*",
                "egressd runs the command on the host, not in a VM",
            ))
        });
        if let Some((_, why)) = refused {
            return Err(format!("{name} is not supported by egressd: {why}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(args: &[&str]) -> Result<(), String> {
        let args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
        precheck(&args)
    }

    #[test]
    fn docker_flags_are_refused_by_name() {
        let e = check(&["--allow-domains", "x.com", "--build-local", "--", "true"]).unwrap_err();
        assert!(
            e.starts_with("--build-local is not supported by egressd: "),
            "{e}"
        );
        let e = check(&["--image-tag=0.28.4"]).unwrap_err();
        assert!(e.starts_with("--image-tag is not supported"), "{e}");
        let e = check(&["--no-enable-api-proxy"]).unwrap_err();
        assert!(e.contains("api-proxy"), "{e}");
        let e = check(&["--cloud-hypervisor-vcpus", "2"]).unwrap_err();
        assert!(e.starts_with("--cloud-hypervisor-vcpus"), "{e}");
    }

    #[test]
    fn the_command_after_the_separator_is_not_checked() {
        assert!(check(&["--skip-pull", "--", "docker", "--build-local"]).is_ok());
    }
}
