//! [`BenchNet`]: the two network namespaces of a run, joined only to each other.
//!
//! ```text
//!  netns egb-c-<pid> (clients, peers, egressd)        netns egb-u-<pid> (the upstream)
//!  egbc<pid> 10.200.77.1/24  <======== veth ========>  egbu<pid> 10.200.77.2/24
//! ```
//!
//! Neither namespace has a default route nor any link to the host's, so nothing a target
//! does can reach another machine (`shared/TOOLCHAIN.md`, the network rule). The client
//! namespace gets `/etc/netns/egb-c-<pid>/hosts` (`bench.test` is the upstream) and a
//! `resolv.conf` naming only 127.0.0.1, which `ip netns exec` mounts over `/etc`; Squid and
//! mitmproxy resolve `bench.test` through it. Its sysctls (port range, TIME_WAIT reuse,
//! backlogs) are set for tens of thousands of short connections; they are per namespace
//! and vanish with it. Ephemeral ports start at 20,000, above the proxies' listening ports,
//! so that a socket left in TIME_WAIT never holds a port a proxy is about to bind. Dropping a [`BenchNet`] deletes both namespaces (the veth goes with
//! them) and the `/etc/netns` folder; namespaces left by a killed run are removed by the
//! next one.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::proto::UPSTREAM_NAME;

/// The upstream's address (in the upstream namespace).
pub const UPSTREAM_ADDR: Ipv4Addr = Ipv4Addr::new(10, 200, 77, 2);
/// The client namespace's end of the veth.
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 200, 77, 1);

/// The namespaces of one run; deleted on drop.
#[derive(Debug)]
pub struct BenchNet {
    client: String,
    upstream: String,
}

impl BenchNet {
    /// Creates both namespaces, the veth, the addresses and the `/etc/netns` files.
    ///
    /// # Errors
    ///
    /// An `ip` or `sysctl` command failed (not root, no netns support).
    pub fn create() -> Result<Self> {
        remove_stale();
        let pid = std::process::id();
        let net = Self {
            client: format!("egb-c-{pid}"),
            upstream: format!("egb-u-{pid}"),
        };
        let (c_if, u_if) = (format!("egbc{pid}"), format!("egbu{pid}"));
        ip(&["netns", "add", &net.client])?;
        ip(&["netns", "add", &net.upstream])?;
        ip(&[
            "link",
            "add",
            &c_if,
            "netns",
            &net.client,
            "type",
            "veth",
            "peer",
            "name",
            &u_if,
            "netns",
            &net.upstream,
        ])?;
        for (ns, dev, addr) in [
            (&net.client, &c_if, CLIENT_ADDR),
            (&net.upstream, &u_if, UPSTREAM_ADDR),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            for setting in [
                "net.ipv4.ip_local_port_range=20000 65000",
                "net.ipv4.tcp_tw_reuse=1",
                "net.core.somaxconn=65535",
                "net.ipv4.tcp_max_syn_backlog=65535",
            ] {
                run(Command::new("ip").args(["netns", "exec", ns, "sysctl", "-q", "-w", setting]))?;
            }
        }
        let etc = net.etc_dir();
        fs::create_dir_all(&etc).with_context(|| format!("creating {}", etc.display()))?;
        fs::write(
            etc.join("hosts"),
            format!("127.0.0.1 localhost\n{UPSTREAM_ADDR} {UPSTREAM_NAME}\n"),
        )?;
        fs::write(etc.join("resolv.conf"), "nameserver 127.0.0.1\n")?;
        Ok(net)
    }

    /// The upstream's TLS address.
    pub fn upstream_addr() -> SocketAddr {
        SocketAddr::from((UPSTREAM_ADDR, 443))
    }

    /// `ip netns exec <client ns>`: the prefix of every command run in the client namespace.
    pub fn in_client(&self) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.client]);
        cmd
    }

    /// `ip netns exec <upstream ns>`.
    pub fn in_upstream(&self) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.upstream]);
        cmd
    }

    fn etc_dir(&self) -> PathBuf {
        PathBuf::from("/etc/netns").join(&self.client)
    }
}

impl Drop for BenchNet {
    fn drop(&mut self) {
        for ns in [&self.client, &self.upstream] {
            let _ = ip(&["netns", "delete", ns]);
        }
        let _ = fs::remove_dir_all(self.etc_dir());
    }
}

/// Deletes `egb-c-<pid>`/`egb-u-<pid>` namespaces whose run is gone.
fn remove_stale() {
    let Ok(list) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix("egb-c-")
            .or_else(|| name.strip_prefix("egb-u-"))
        else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "delete", name]);
            let _ = fs::remove_dir_all(PathBuf::from("/etc/netns").join(name));
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args))
}

fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("starting {shown} (is iproute2 installed?)"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
