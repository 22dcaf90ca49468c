//! `cargo xtask bench`: set up, install the peers, build egressd and the bench in release
//! mode, then run `egressd-bench run` (bench/): egressd side by side with HAProxy, nginx,
//! Squid and mitmproxy on the same workloads, and its cost curves. Results go to
//! `target/bench/` (`results.md`, `results.json`, PNGs, `logs/`).
//!
//! The peers come from Debian (`haproxy`, `nginx` with `libnginx-mod-stream`, `squid`, and
//! `fonts-dejavu-core` for the text of the PNGs) and from PyPI (`mitmproxy`, into a venv at
//! `target/bench/venv`). Debian's maintainer scripts would start the new services on the
//! host; a temporary `/usr/sbin/policy-rc.d` (the Docker convention) stops that when none
//! is in place. The bench itself needs root and talks only to the namespaces it creates.

use std::{fs, os::unix::fs::PermissionsExt, path::Path};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::{
    setup,
    shell::{Shell, run as run_cmd, say},
};

/// Options of `cargo xtask bench`.
#[derive(Debug, Args)]
pub struct Options {
    /// A smoke run of a few seconds per target (one repetition, small counts).
    #[arg(long)]
    pub quick: bool,
    /// Only these targets, comma-separated: direct, haproxy, nginx, squid, mitmproxy,
    /// egressd-pass, egressd-intercept, egressd-strict.
    #[arg(long)]
    pub only: Option<String>,
    /// Repetitions of each figure (default 3; the median is reported).
    #[arg(long)]
    pub reps: Option<usize>,
    /// Install nothing (no apt-get, no pip); targets whose tool is missing are skipped.
    #[arg(long)]
    pub no_install: bool,
}

/// A file each Debian package installs, and the package.
const PACKAGES: &[(&str, &str)] = &[
    ("/usr/sbin/haproxy", "haproxy"),
    ("/usr/sbin/nginx", "nginx"),
    (
        "/usr/lib/nginx/modules/ngx_stream_module.so",
        "libnginx-mod-stream",
    ),
    ("/usr/sbin/squid", "squid"),
    (
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "fonts-dejavu-core",
    ),
];

/// Keeps `invoke-rc.d` from starting services while it exists.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

pub fn run(opts: &Options) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the bench needs root (network namespaces, egressd): run `sudo -E cargo xtask bench`"
        );
    }
    setup::run(&setup::Options {
        no_apt: opts.no_install,
    })?;
    let sh = Shell::new()?;
    let out = sh.root().join("target/bench");
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    if opts.no_install {
        say!("bench: --no-install: targets whose tool is missing will be skipped");
    } else {
        ensure_debian_peers(&sh)?;
        ensure_mitmproxy(&sh, &out.join("venv"))?;
    }

    say!("building egressd and egressd-bench (release)...");
    run_cmd(sh.cmd("cargo").args([
        "build",
        "--release",
        "--package",
        "egressd",
        "--package",
        "egressd-bench",
    ]))?;

    say!(
        "running the bench ({}); results in {}",
        if opts.quick {
            "quick"
        } else {
            "full, about 7 minutes"
        },
        out.display()
    );
    let release = sh.root().join("target/release");
    let mut cmd = sh.cmd(release.join("egressd-bench"));
    cmd.arg("run")
        .arg("--out")
        .arg(&out)
        .arg("--egressd")
        .arg(release.join("egressd"))
        .arg("--mitmdump")
        .arg(out.join("venv/bin/mitmdump"));
    if opts.quick {
        cmd.arg("--quick");
    }
    if let Some(only) = &opts.only {
        cmd.args(["--only", only]);
    }
    if let Some(reps) = opts.reps {
        cmd.args(["--reps", &reps.to_string()]);
    }
    run_cmd(&mut cmd)
}

fn ensure_debian_peers(sh: &Shell) -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(file, _)| !Path::new(file).exists())
        .map(|&(_, pkg)| pkg)
        .collect();
    if missing.is_empty() {
        say!("bench peers (haproxy, nginx stream, squid, fonts): present");
        return Ok(());
    }
    if sh.which("apt-get").is_none() {
        say!(
            "warning: no apt-get; install {} by hand or their targets are skipped",
            missing.join(" ")
        );
        return Ok(());
    }
    say!(
        "installing Debian packages: {} (their services are not started)...",
        missing.join(" ")
    );
    let _guard = NoServiceStart::install()?;
    setup::apt_update_install(sh, &missing)
}

/// mitmproxy from PyPI into `venv` (whatever release supports the local Python).
fn ensure_mitmproxy(sh: &Shell, venv: &Path) -> Result<()> {
    let mitmdump = venv.join("bin/mitmdump");
    if mitmdump.exists() {
        say!("mitmproxy: present ({})", mitmdump.display());
        return Ok(());
    }
    say!("installing mitmproxy from PyPI into {}...", venv.display());
    setup::make_venv(
        sh,
        "python3",
        venv,
        &["python3", "python3-venv", "python3-pip"],
    )?;
    run_cmd(sh.cmd(venv.join("bin/pip")).args([
        "install",
        "-q",
        "--disable-pip-version-check",
        "mitmproxy",
    ]))
}

/// A `policy-rc.d` that denies every service start, removed on drop; does nothing when one
/// is already there.
struct NoServiceStart {
    installed: bool,
}

impl NoServiceStart {
    fn install() -> Result<Self> {
        if Path::new(POLICY_RC_D).exists() {
            return Ok(Self { installed: false });
        }
        fs::write(
            POLICY_RC_D,
            "#!/bin/sh\n# Written by `cargo xtask bench` while it installs packages; removed after.\nexit 101\n",
        )
        .with_context(|| format!("writing {POLICY_RC_D}"))?;
        fs::set_permissions(POLICY_RC_D, fs::Permissions::from_mode(0o755))?;
        Ok(Self { installed: true })
    }
}

impl Drop for NoServiceStart {
    fn drop(&mut self) {
        if self.installed {
            let _ = fs::remove_file(POLICY_RC_D);
        }
    }
}
