//! `cargo xtask setup`: make sure everything the build and the tests need is installed.
//!
//! Checks, in order: root, a cgroup v2 mount, the nightly toolchain with `rust-src`,
//! `bpf-linker` (built against the nightly's own LLVM, as `shared/TOOLCHAIN.md` describes,
//! because Debian 12 has no LLVM new enough), `cargo-fuzz` (the runner of the libFuzzer
//! targets in `fuzz/`), the Debian packages the tests call (`ip`, `curl`, `ping`, `python3`, `script`, CA
//! certificates, `npm`), and the clients the e2e tests run as uid 65534 under
//! `/opt/egressd-tests` (every directory 0755, every file world-readable):
//!
//! * `/opt/egressd-tests/copilot`: GitHub's Copilot CLI, npm `@github/copilot`
//!   [`COPILOT_CLI_VERSION`] (`npm install --prefix`); its native binary is
//!   `node_modules/@github/copilot-linux-x64/copilot`, and the package it bundles is extracted
//!   once into `pkg-cache/` (tests point `COPILOT_PKG_CACHE_HOME` there, so a run with a fresh
//!   `HOME` does not unpack 235 MB again). What the CLI sends: `tests/captures/`.
//! * `/opt/egressd-tests/venv`: a Python venv (from `/usr/bin/python3`) with the SDKs in
//!   [`PYTHON_PACKAGES`], pinned.
//!
//! Whatever is present is left alone, so a second run takes well under a second. Not being
//! root or lacking cgroup v2 is reported, not fatal: building works without them; only the
//! privileged tests need them.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::shell::{Shell, output, run as run_cmd, say, succeeds};

/// Options of `cargo xtask setup`.
#[derive(Debug, Args)]
pub struct Options {
    /// Do not install Debian packages nor the test clients under /opt/egressd-tests (npm,
    /// PyPI), only report the missing ones.
    #[arg(long)]
    pub no_apt: bool,
}

/// The nightly toolchain the eBPF crate is built with (`-Z build-std=core`).
const NIGHTLY: &str = "nightly";

/// The bpf-linker release known to link our programs with the nightly's LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// The cargo-fuzz release `cargo xtask fuzz` was written against.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// The GitHub Copilot CLI release the e2e tests run (npm `@github/copilot`; the capture of
/// what it sends is `tests/captures/copilot-cli-1.0.102.md`).
const COPILOT_CLI_VERSION: &str = "1.0.102";

/// Root of the clients the e2e tests run as uid 65534 (so: outside `/root`, mode 0755).
const TEST_CLIENTS: &str = "/opt/egressd-tests";

/// `npm install --prefix` directory of the Copilot CLI.
const COPILOT_DIR: &str = "/opt/egressd-tests/copilot";

/// The venv with the Python SDKs of [`PYTHON_PACKAGES`].
const TEST_VENV: &str = "/opt/egressd-tests/venv";

/// PyPI packages of [`TEST_VENV`], pinned: the SDKs whose requests the e2e tests send through
/// egressd's credential injection, and what the test OTLP collector (`tests/otlp/receiver.py`,
/// built on the official `opentelemetry-proto` definitions) runs on.
const PYTHON_PACKAGES: &[(&str, &str)] = &[
    ("openai", "3.63.0"),
    ("anthropic", "2.17.0"),
    ("boto3", "1.44.18"),
    ("opentelemetry-proto", "1.45.2"),
    ("protobuf", "7.36.2"),
    ("grpcio", "1.85.4"),
];

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
    // Installs the Copilot CLI (the CLI itself is a native binary with its own Node).
    ("npm", "npm"),
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
    ensure_copilot_cli(&sh, opts.no_apt)?;
    ensure_test_venv(&sh, opts.no_apt)?;
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
             setpriv, ipcmk, npm, CA certificates): present"
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
    apt_update_install(sh, &missing)
}

/// `apt-get update`, then [`apt_install`] of `packages`: how setup and bench install what
/// is missing.
pub(crate) fn apt_update_install(sh: &Shell, packages: &[&str]) -> Result<()> {
    run_cmd(apt_get(sh).args(["update", "-q"]))?;
    apt_install(sh, packages)
}

/// `apt-get install` of `packages`, quiet and without recommends.
fn apt_install(sh: &Shell, packages: &[&str]) -> Result<()> {
    run_cmd(
        apt_get(sh)
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages),
    )
}

/// `apt-get` that never stops to ask.
fn apt_get(sh: &Shell) -> std::process::Command {
    let mut cmd = sh.cmd("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

/// Makes a Python venv at `venv` with `python`. Debian's python3 has no venv module until
/// python3-venv is installed: then `packages` (python3-venv and what goes with it) are
/// installed and `/usr/bin/python3` tries again.
pub(crate) fn make_venv(sh: &Shell, python: &str, venv: &Path, packages: &[&str]) -> Result<()> {
    let made = |python: &str| succeeds(sh.cmd(python).args(["-m", "venv"]).arg(venv));
    if made(python) {
        return Ok(());
    }
    if sh.which("apt-get").is_none() {
        bail!("{python} cannot make a venv and there is no apt-get to install python3-venv");
    }
    say!("installing python3-venv...");
    apt_install(sh, packages)?;
    let _ = fs::remove_dir_all(venv);
    if !made("/usr/bin/python3") {
        bail!("could not create a Python venv at {}", venv.display());
    }
    Ok(())
}

/// Why the test clients under [`TEST_CLIENTS`] cannot be installed now, if they cannot.
fn cannot_install_clients(no_apt: bool) -> Option<&'static str> {
    if no_apt {
        Some("--no-apt")
    } else if !is_root() {
        Some("not root")
    } else {
        None
    }
}

/// A directory (and its missing parents) with mode 0755, so uid 65534 can read below it.
fn make_dir_0755(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut d = Some(dir);
    while let Some(p) = d.filter(|p| p.starts_with(TEST_CLIENTS)) {
        fs::set_permissions(p, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod 0755 {}", p.display()))?;
        d = p.parent();
    }
    Ok(())
}

/// Everything under `dir` readable (and directories searchable) by every user, whatever
/// root's umask was when npm or pip wrote it.
fn make_world_readable(sh: &Shell, dir: &Path) -> Result<()> {
    run_cmd(sh.cmd("chmod").arg("-R").arg("a+rX").arg(dir))
}

/// The Copilot CLI's native binary (a Node single-executable application: no system Node
/// needed to run it).
fn copilot_binary() -> PathBuf {
    Path::new(COPILOT_DIR).join("node_modules/@github/copilot-linux-x64/copilot")
}

/// The marker the CLI's loader writes when its bundled package is fully extracted.
fn copilot_extracted_marker() -> PathBuf {
    Path::new(COPILOT_DIR).join(format!(
        "pkg-cache/pkg/linux-x64/{COPILOT_CLI_VERSION}/.extraction-complete"
    ))
}

/// The installed `@github/copilot` version, if any.
fn installed_copilot_version() -> Option<String> {
    let manifest = fs::read_to_string(
        Path::new(COPILOT_DIR).join("node_modules/@github/copilot/package.json"),
    )
    .ok()?;
    // `"version": "1.0.102",` — no JSON parser in xtask for one field.
    manifest.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("\"version\":")?;
        Some(
            rest.trim()
                .trim_end_matches(',')
                .trim_matches('"')
                .to_owned(),
        )
    })
}

/// `@github/copilot` [`COPILOT_CLI_VERSION`] in [`COPILOT_DIR`], and its bundled package
/// extracted into `pkg-cache/` (the loader's `COPILOT_SEA_EXTRACT_ONLY` mode: no network).
fn ensure_copilot_cli(sh: &Shell, no_apt: bool) -> Result<()> {
    let version_ok = installed_copilot_version().as_deref() == Some(COPILOT_CLI_VERSION);
    if version_ok && copilot_binary().is_file() && copilot_extracted_marker().is_file() {
        say!("Copilot CLI {COPILOT_CLI_VERSION}: present ({COPILOT_DIR})");
        return Ok(());
    }
    if let Some(why) = cannot_install_clients(no_apt) {
        say!(
            "warning: the Copilot CLI {COPILOT_CLI_VERSION} is not installed in {COPILOT_DIR} \
             ({why}); run `sudo cargo xtask setup` (the Copilot e2e tests need it)"
        );
        return Ok(());
    }
    if sh.which("npm").is_none() {
        bail!("npm is not on PATH; install it (`apt-get install npm`) and run setup again");
    }
    let dir = Path::new(COPILOT_DIR);
    make_dir_0755(dir)?;
    if !version_ok || !copilot_binary().is_file() {
        say!(
            "installing the Copilot CLI @github/copilot@{COPILOT_CLI_VERSION} into {COPILOT_DIR}..."
        );
        run_cmd(sh.cmd("npm").arg("install").arg("--prefix").arg(dir).args([
            "--no-audit",
            "--no-fund",
            "--save-exact",
            "--loglevel=error",
            &format!("@github/copilot@{COPILOT_CLI_VERSION}"),
        ]))
        .context("installing the Copilot CLI from npm")?;
        if !copilot_binary().is_file() {
            bail!(
                "npm installed @github/copilot but not its linux-x64 binary ({}): is this an \
                 x86_64 glibc machine?",
                copilot_binary().display()
            );
        }
    }
    // A fresh directory each time: the loader refuses to extract into a non-empty one.
    let cache = dir.join("pkg-cache");
    let _ = fs::remove_dir_all(&cache);
    say!(
        "extracting the Copilot CLI's bundled package into {}...",
        cache.display()
    );
    run_cmd(
        sh.cmd(copilot_binary())
            .arg("--binary-version")
            .env("COPILOT_SEA_EXTRACT_ONLY", "1")
            .env("COPILOT_PKG_CACHE_HOME", &cache),
    )
    .context("extracting the Copilot CLI's bundled package")?;
    if !copilot_extracted_marker().is_file() {
        bail!(
            "the Copilot CLI did not extract its package ({} is missing)",
            copilot_extracted_marker().display()
        );
    }
    make_world_readable(sh, dir)?;
    say!("Copilot CLI {COPILOT_CLI_VERSION}: installed");
    Ok(())
}

/// The `name==version` of every package of [`PYTHON_PACKAGES`].
fn python_pins() -> Vec<String> {
    PYTHON_PACKAGES
        .iter()
        .map(|(name, version)| format!("{name}=={version}"))
        .collect()
}

/// Whether [`TEST_VENV`] holds exactly the pinned versions.
fn venv_matches(sh: &Shell) -> bool {
    let python = Path::new(TEST_VENV).join("bin/python");
    if !python.is_file() {
        return false;
    }
    let names: Vec<&str> = PYTHON_PACKAGES.iter().map(|(n, _)| *n).collect();
    let script = format!(
        "import importlib.metadata as m\nfor n in {names:?}:\n    print(n + '==' + m.version(n))"
    );
    output(sh.cmd(python).arg("-c").arg(script))
        .is_ok_and(|out| out.lines().map(str::trim).collect::<Vec<_>>() == python_pins())
}

/// [`TEST_VENV`], made by `/usr/bin/python3 -m venv` (installing `python3-venv` when Debian's
/// python3 lacks it), with [`PYTHON_PACKAGES`] from PyPI.
fn ensure_test_venv(sh: &Shell, no_apt: bool) -> Result<()> {
    let pins = python_pins().join(" ");
    if venv_matches(sh) {
        say!("Python SDKs ({pins}): present ({TEST_VENV})");
        return Ok(());
    }
    if let Some(why) = cannot_install_clients(no_apt) {
        say!(
            "warning: the Python SDKs ({pins}) are not installed in {TEST_VENV} ({why}); run \
             `sudo cargo xtask setup` (the SDK e2e tests need them)"
        );
        return Ok(());
    }
    let venv = Path::new(TEST_VENV);
    make_dir_0755(venv.parent().context("the venv has a parent")?)?;
    if !venv.join("bin/pip").is_file() {
        say!("making a Python venv at {TEST_VENV}...");
        make_venv(
            sh,
            "/usr/bin/python3",
            venv,
            &["python3-venv", "python3-pip"],
        )?;
    }
    say!("installing {pins} from PyPI into {TEST_VENV}...");
    run_cmd(
        sh.cmd(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check"])
            .args(python_pins()),
    )
    .context("installing the Python SDKs")?;
    make_world_readable(sh, venv)?;
    if !venv_matches(sh) {
        bail!("{TEST_VENV} does not hold {pins} after pip install");
    }
    say!("Python SDKs: installed");
    Ok(())
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
