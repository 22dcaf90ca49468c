//! Fixtures for egressd's integration tests (the `e2e` test binary and `egressd-demo`).
//!
//! Everything here follows the network rule of `shared/TOOLCHAIN.md`: fake upstreams live in a
//! network namespace the fixture creates ([`UpstreamNet`], addresses in `10.200.0.0/16`), the
//! sandboxed commands run in egressd's fresh netns that has no route out, and TEST-NET
//! addresses (`192.0.2.0/24`, `2001:db8::/32`) are used only as "original destinations" there.
//! Names reach the proxy through `--resolve`, never through DNS.
//!
//! Tests that need root call [`privileged`] first; it skips on a developer machine and fails
//! under `cargo xtask test` / CI (`EGRESSD_PRIVILEGED_TESTS=1`).

mod ca;
mod cmd;
mod dns;
pub mod fakes;
mod netns;
mod scene;
mod scratch;
pub mod transfer;
mod upstream;

use std::{
    env,
    path::{Path, PathBuf},
};

pub use ca::{Leaf, TestCa};
pub use cmd::{EgressdCommand, Output, Running, parse_json_lines, read_audit};
pub use dns::FakeDns;
pub use netns::UpstreamNet;
pub use scene::{API, EVIL, Scene, curl_base, shell_words};
pub use scratch::Scratch;
pub use transfer::TransferUpstream;
pub use upstream::{HttpUpstream, HttpsUpstream, Misbehave};

/// The variable `cargo xtask test` and CI set: privileged tests must run, not skip.
pub const PRIVILEGED_MARKER: &str = "EGRESSD_PRIVILEGED_TESTS";

/// Guard for tests that need root. Call it first: `if !privileged() { return; }`.
///
/// Returns `true` when running as root. Otherwise it panics if [`PRIVILEGED_MARKER`] is `1`
/// (a privileged run must never pass by skipping), or prints why and returns `false`.
pub fn privileged() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if env::var(PRIVILEGED_MARKER).is_ok_and(|v| v == "1") {
        panic!(
            "this test needs root (it creates network namespaces and runs `egressd exec`), and \
             {PRIVILEGED_MARKER}=1 says privileged tests must not be skipped: run it as root \
             (for example `sudo -E cargo xtask test`)"
        );
    }
    eprintln!("skipping: needs root (set {PRIVILEGED_MARKER}=1 to make this a failure)");
    false
}

/// Path of the built `egressd` binary: `$EGRESSD_BIN`, or `egressd` in `target/<profile>/`
/// found from this executable's location. Panics with the fix when it is missing.
pub fn egressd_bin() -> PathBuf {
    if let Some(bin) = env::var_os("EGRESSD_BIN") {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "EGRESSD_BIN={} does not exist",
            bin.display()
        );
        return bin;
    }
    target_bin("egressd").unwrap_or_else(|| {
        panic!(
            "the egressd binary was not found next to {} (nor in EGRESSD_BIN): run \
             `cargo xtask test`, which builds it before running the tests (or `cargo build -p egressd`)",
            env::current_exe().map(|p| p.display().to_string()).unwrap_or_default()
        )
    })
}

/// Path of the built `egressd-probe` binary (see [`Scratch::install_probe`] for a copy the
/// sandbox user can execute).
pub fn probe_bin() -> PathBuf {
    target_bin("egressd-probe").unwrap_or_else(|| {
        panic!("the egressd-probe binary was not found: run `cargo xtask test` (or `cargo build -p egressd-tests`)")
    })
}

/// A binary in the cargo target directory this executable was built in
/// (`target/debug/deps/e2e-HASH` and `target/debug/egressd-demo` both find `target/debug/NAME`).
fn target_bin(name: &str) -> Option<PathBuf> {
    let exe = env::current_exe().ok()?;
    exe.ancestors()
        .skip(1)
        .take(3)
        .map(|dir: &Path| dir.join(name))
        .find(|p| p.is_file())
}

/// Whether the running kernel is at least `major.minor` (for tests of features a kernel
/// version brings, such as the cgroup Unix-socket hooks of 6.7).
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let Ok(uname) = nix::sys::utsname::uname() else {
        return false;
    };
    let release = uname.release().to_string_lossy().into_owned();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}
