//! `cargo xtask setup`: make sure everything the build and the tests need is installed.
//!
//! Checks, in order: root, a cgroup v2 mount, the nightly toolchain with `rust-src`,
//! `bpf-linker` (built against the nightly's own LLVM, as `shared/TOOLCHAIN.md` describes,
//! because Debian 12 has no LLVM new enough), `cargo-fuzz` (the runner of the libFuzzer
//! targets in `fuzz/`), and the Debian packages the tests call (`ip`, `curl`, `ping`, `python3`, `script`, CA
//! certificates). Whatever is present is left alone, so a second run
//! takes well under a second. Not being root or lacking cgroup v2 is reported, not fatal:
//! building works without them; only the privileged tests need them.

use std::{fs, path::PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::shell::{Shell, output, run as run_cmd, say, succeeds};

/// Options of `cargo xtask setup`.
#[derive(Debug, Args)]
pub struct Options {
    /// Do not install Debian packages, only report the missing ones.
    #[arg(long)]
    pub no_apt: bool,
}

/// The nightly toolchain the eBPF crate is built with (`-Z build-std=core`).
const NIGHTLY: &str = "nightly";

/// The bpf-linker release known to link our programs with the nightly's LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// The cargo-fuzz release `cargo xtask fuzz` was written against.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Commands the tests run, and the Debian package providing each.
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("curl", "curl"),
    ("ping", "iputils-ping"),
    ("openssl", "openssl"),
    // The nftables backend (`exec --backend nftables`) and its tests.
    ("nft", "nftables"),
    // The daemon tests: the systemd unit is checked with `systemd-analyze verify`, the GitHub
    // Action's scripts run under node.
    ("systemd-analyze", "systemd"),
    ("node", "nodejs"),
    // The side-door tests (tests/e2e/doors.rs): a client the sandbox user can run (a pyenv
    // shim under /root is out of its reach), a real terminal, the door-open controls.
    ("/usr/bin/python3", "python3"),
    ("script", "bsdutils"),
    ("setpriv", "util-linux"),
    ("ipcmk", "util-linux"),
];

/// The CA bundle `ca-certificates` installs (curl and the proxy's upstream verification use it).
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

pub fn run(opts: &Options) -> Result<()> {
    let sh = Shell::new()?;
    check_root();
    check_cgroup2();
    ensure_nightly(&sh)?;
    ensure_bpf_linker(&sh)?;
    ensure_cargo_fuzz(&sh)?;
    ensure_packages(&sh, opts.no_apt)?;
    say!("setup: all set");
    Ok(())
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn check_root() {
    if !is_root() {
        say!(
            "warning: not running as root; attaching eBPF programs and creating network \
             namespaces needs root, so the privileged tests will fail (run `sudo -E cargo xtask ...`)"
        );
    }
}

/// Report where cgroup v2 is mounted, found the way egressd finds it (`/proc/self/mountinfo`,
/// since `ip netns exec` hides `/sys/fs/cgroup`).
fn check_cgroup2() {
    match cgroup2_mount() {
        Some(path) => say!("cgroup v2 is mounted at {path}"),
        None => say!(
            "warning: no cgroup v2 mount in /proc/self/mountinfo; egressd attaches its eBPF \
             programs to a cgroup v2 directory (mount one with \
             `mount -t cgroup2 none /sys/fs/cgroup`), so the privileged tests will fail"
        ),
    }
}

fn cgroup2_mount() -> Option<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        // Fields: id parent major:minor root mount-point options [optional...] - fstype source super
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(str::to_owned))?
    })
}

fn ensure_nightly(sh: &Shell) -> Result<()> {
    if sh.which("rustup").is_none() {
        bail!(
            "rustup is not on PATH (nor in {}/bin); install it from rustup.rs first",
            sh.cargo_home().display()
        );
    }
    let toolchains = output(sh.cmd("rustup").args(["toolchain", "list"]))?;
    // `nightly-<host>`, not a dated `nightly-2026-...` (which `+nightly` does not select).
    let has_nightly = toolchains.lines().any(|l| {
        l.strip_prefix("nightly-")
            .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
    });
    if !has_nightly {
        say!("installing the nightly toolchain with rust-src (a minute or two)...");
        return run_cmd(sh.cmd("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]));
    }
    let components = output(sh.cmd("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))?;
    if components.lines().any(|l| l.trim() == "rust-src") {
        say!("nightly toolchain with rust-src: present");
        Ok(())
    } else {
        say!("adding rust-src to the nightly toolchain...");
        run_cmd(
            sh.cmd("rustup")
                .args(["component", "add", "rust-src", "--toolchain", NIGHTLY]),
        )
    }
}

/// `bpf-linker` must be on `PATH` and must start. It links `libLLVM.so.N...` from the nightly
/// sysroot, which the rustup proxy puts on `LD_LIBRARY_PATH`; so the check runs it through
/// `rustup run nightly`, as rustc will when it calls it as the linker. A binary left over from
/// an older nightly (another LLVM) fails that check and is rebuilt.
fn ensure_bpf_linker(sh: &Shell) -> Result<()> {
    let present = sh.which("bpf-linker").is_some();
    if present
        && succeeds(
            sh.cmd("rustup")
                .args(["run", NIGHTLY, "bpf-linker", "--version"]),
        )
    {
        say!("bpf-linker: present");
        return Ok(());
    }
    if present {
        say!("bpf-linker is installed but does not start with the nightly's LLVM; rebuilding it");
    }

    let version = output(sh.cmd("rustc").args([&format!("+{NIGHTLY}"), "-vV"]))?;
    let major = llvm_major(&version)
        .context("`rustc +nightly -vV` printed no `LLVM version: N.x.y` line")?;
    let sysroot = PathBuf::from(
        output(
            sh.cmd("rustc")
                .args([&format!("+{NIGHTLY}"), "--print", "sysroot"]),
        )?
        .trim(),
    );
    let libllvm = find_libllvm(&sysroot.join("lib"), major)?;

    let prefix = sh.cargo_home().join(format!("egressd-llvm-{major}"));
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let link = lib.join("libLLVM.so");
    if link.symlink_metadata().is_ok() {
        fs::remove_file(&link).with_context(|| format!("removing stale {}", link.display()))?;
    }
    std::os::unix::fs::symlink(&libllvm, &link)
        .with_context(|| format!("linking {} -> {}", link.display(), libllvm.display()))?;
    say!("LLVM prefix {} -> {}", prefix.display(), libllvm.display());

    say!("installing bpf-linker against the nightly's LLVM {major} (about a minute)...");
    let mut install = sh.cmd("cargo");
    install
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &prefix);
    if present {
        install.arg("--force");
    }
    run_cmd(&mut install).context("installing bpf-linker (see shared/TOOLCHAIN.md)")?;
    if !succeeds(
        sh.cmd("rustup")
            .args(["run", NIGHTLY, "bpf-linker", "--version"]),
    ) {
        bail!("bpf-linker was installed but `rustup run nightly bpf-linker --version` still fails");
    }
    say!("bpf-linker: installed");
    Ok(())
}

/// `cargo-fuzz` builds the fuzz targets (`cargo xtask fuzz`, and the short run in `cargo
/// xtask test`); any installed version that starts is kept.
pub fn ensure_cargo_fuzz(sh: &Shell) -> Result<()> {
    if sh.which("cargo-fuzz").is_some() && succeeds(sh.cmd("cargo").args(["fuzz", "--version"])) {
        say!("cargo-fuzz: present");
        return Ok(());
    }
    say!(
        "installing cargo-fuzz {CARGO_FUZZ_VERSION}, the runner of the fuzz targets in fuzz/ (about a minute)..."
    );
    run_cmd(sh.cmd("cargo").args([
        "install",
        "cargo-fuzz",
        "--locked",
        "--version",
        CARGO_FUZZ_VERSION,
    ]))
    .context("installing cargo-fuzz")?;
    say!("cargo-fuzz: installed");
    Ok(())
}

/// The LLVM major version from `rustc -vV` output (`LLVM version: 22.1.4` -> 22).
fn llvm_major(version: &str) -> Option<u32> {
    version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .and_then(|v| v.trim().split('.').next()?.parse().ok())
}

/// The nightly's shared LLVM library, `libLLVM.so.N.*-rust-*-nightly`.
fn find_libllvm(lib: &std::path::Path, major: u32) -> Result<PathBuf> {
    let wanted = format!("libLLVM.so.{major}.");
    let entries = fs::read_dir(lib).with_context(|| format!("reading {}", lib.display()))?;
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&wanted) && n.contains("-rust-"))
        })
        .with_context(|| {
            format!(
                "no {wanted}*-rust-* in {}: is the nightly toolchain complete?",
                lib.display()
            )
        })
}

fn ensure_packages(sh: &Shell, no_apt: bool) -> Result<()> {
    let mut missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(tool, _)| sh.which(tool).is_none())
        .map(|&(_, pkg)| pkg)
        .collect();
    if fs::metadata(CA_BUNDLE).is_err() {
        missing.push("ca-certificates");
    }
    if missing.is_empty() {
        say!(
            "test tools (ip, curl, ping, openssl, nft, systemd-analyze, node, python3, script, \
             setpriv, ipcmk, CA certificates): present"
        );
        return Ok(());
    }
    let list = missing.join(" ");
    if no_apt || !is_root() || sh.which("apt-get").is_none() {
        say!(
            "warning: missing Debian packages: {list}; install them with \
             `apt-get install -y --no-install-recommends {list}` (the e2e tests need them)"
        );
        return Ok(());
    }
    say!("installing Debian packages: {list}...");
    run_cmd(
        sh.cmd("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    run_cmd(
        sh.cmd("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_from_rustc_version() {
        let v = "rustc 1.97.0-nightly\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(v), Some(22));
        assert_eq!(llvm_major("rustc 1.0\n"), None);
    }
}
