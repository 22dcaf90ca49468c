//! The nftables backend, for hosts where cgroup BPF cannot be used (`--backend nftables`).
//!
//! It works on the sandbox's own network namespace (`--netns new` only: the rules apply to
//! every process of the namespace). That namespace gets a default route over `lo` (so a
//! `connect()` to any address gets as far as netfilter instead of failing with "network
//! unreachable") and one table:
//!
//! * `nat` output: TCP to anything but loopback is redirected to the proxy listener, UDP to
//!   port 53 to the DNS listener; the proxy reads the original destination with
//!   `SO_ORIGINAL_DST` ([`OriginalDst`]) and conntrack makes DNS replies come from the resolver
//!   the client asked;
//! * `filter` output, policy drop: only loopback and the redirected connections pass. The
//!   rest (other UDP, ICMP, raw packets) is dropped and counted. Nothing can leave anyway:
//!   the namespace has no interface but `lo`.
//!
//! Rules are installed by `nft -f -` and routes by `ip`, run from a thread that entered the
//! namespace (a child inherits its thread's namespaces).

use std::{
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsFd as _, BorrowedFd, OwnedFd},
    process::{Command, Stdio},
};

use anyhow::{Context as _, anyhow, bail};
use nix::sched::{CloneFlags, setns};

/// The source address sandboxed clients get on the default route over `lo`.
const SOURCE4: Ipv4Addr = Ipv4Addr::new(10, 255, 255, 1);
/// Its IPv6 counterpart (a unique local address).
const SOURCE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xe9e5, 0, 0, 0, 0, 0, 1);

/// The listener ports the rules redirect to.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// The proxy's IPv4 listener (127.0.0.1).
    pub proxy4: u16,
    /// The proxy's IPv6 listener (::1), 0 when there is none.
    pub proxy6: u16,
    /// The DNS listener (127.0.0.1).
    pub dns4: u16,
    /// The IPv6 DNS listener (::1), 0 when there is none.
    pub dns6: u16,
}

/// Whether `nft` (and `ip`) can be run here, for `egressd doctor` and `--backend auto`.
pub fn available() -> Result<String, String> {
    let version = Command::new("nft")
        .arg("--version")
        .output()
        .map_err(|e| format!("`nft` cannot be run ({e}): install the nftables package"))?;
    if !version.status.success() {
        return Err("`nft --version` failed".to_owned());
    }
    Command::new("ip")
        .arg("-V")
        .output()
        .map_err(|e| format!("`ip` cannot be run ({e}): install iproute2"))?;
    Ok(String::from_utf8_lossy(&version.stdout).trim().to_owned())
}

/// The ruleset for `ports`.
fn ruleset(ports: Ports) -> String {
    let mut nat = vec![
        "ip daddr 127.0.0.0/8 return".to_owned(),
        "ip6 daddr ::1 return".to_owned(),
        format!(
            "meta nfproto ipv4 meta l4proto tcp redirect to :{}",
            ports.proxy4
        ),
        format!("meta nfproto ipv4 udp dport 53 redirect to :{}", ports.dns4),
    ];
    if ports.proxy6 != 0 {
        nat.push(format!(
            "meta nfproto ipv6 meta l4proto tcp redirect to :{}",
            ports.proxy6
        ));
    }
    if ports.dns6 != 0 {
        nat.push(format!(
            "meta nfproto ipv6 udp dport 53 redirect to :{}",
            ports.dns6
        ));
    }
    let nat: String = nat.iter().map(|r| format!("    {r}\n")).collect();
    format!(
        "table inet egressd {{
  chain nat_output {{
    type nat hook output priority -100; policy accept;
{nat}  }}
  chain filter_output {{
    type filter hook output priority 0; policy drop;
    ct status dnat accept
    ip daddr 127.0.0.0/8 accept
    ip6 daddr ::1 accept
    counter name dropped drop
  }}
  counter dropped {{ }}
}}
"
    )
}

/// Arms the namespace `netns`: routes over `lo`, then the ruleset. Fails closed: an error
/// here means the command must not start.
pub fn arm(netns: &OwnedFd, ports: Ports) -> anyhow::Result<()> {
    let netns = netns
        .try_clone()
        .context("duplicating the namespace descriptor")?;
    let rules = ruleset(ports);
    std::thread::scope(|scope| {
        scope
            .spawn(move || -> anyhow::Result<()> {
                setns(netns.as_fd(), CloneFlags::CLONE_NEWNET)
                    .context("entering the sandbox's network namespace")?;
                for args in [
                    vec!["addr", "add", &format!("{SOURCE4}/32"), "dev", "lo"],
                    vec![
                        "route",
                        "add",
                        "default",
                        "dev",
                        "lo",
                        "src",
                        &SOURCE4.to_string(),
                    ],
                ] {
                    run("ip", &args, None)?;
                }
                // IPv6 is best effort: without it, IPv6 connects fail ("unreachable").
                let six = run(
                    "ip",
                    &[
                        "-6",
                        "addr",
                        "add",
                        &format!("{SOURCE6}/128"),
                        "dev",
                        "lo",
                        "nodad",
                    ],
                    None,
                )
                .and_then(|()| {
                    run(
                        "ip",
                        &[
                            "-6",
                            "route",
                            "add",
                            "default",
                            "dev",
                            "lo",
                            "src",
                            &SOURCE6.to_string(),
                        ],
                        None,
                    )
                });
                if let Err(e) = six {
                    tracing::warn!("no IPv6 default route in the sandbox ({e:#})");
                }
                run("nft", &["-f", "-"], Some(&rules))
            })
            .join()
            .map_err(|_| anyhow!("the thread arming nftables panicked"))?
    })
}

/// How many packets the ruleset dropped, read from the namespace (for the exit summary).
pub fn dropped(netns: &OwnedFd) -> Option<u64> {
    let netns = netns.try_clone().ok()?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                setns(netns.as_fd(), CloneFlags::CLONE_NEWNET).ok()?;
                let out = Command::new("nft")
                    .args(["list", "counter", "inet", "egressd", "dropped"])
                    .output()
                    .ok()?;
                let text = String::from_utf8_lossy(&out.stdout);
                let after = text.split("packets ").nth(1)?;
                after.split_whitespace().next()?.parse().ok()
            })
            .join()
            .ok()?
    })
}

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<()> {
    let shown = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running `{shown}`"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .with_context(|| format!("writing to `{shown}`"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// [`egressd_proxy::OrigDstLookup`] over conntrack: `SO_ORIGINAL_DST` on the accepted socket.
/// A connection that was not redirected (a client dialling the listener itself) has none.
pub struct OriginalDst;

impl egressd_proxy::OrigDstLookup for OriginalDst {
    fn lookup(
        &self,
        accepted: BorrowedFd<'_>,
        _peer: SocketAddr,
        local: SocketAddr,
    ) -> Option<SocketAddr> {
        use nix::sys::socket::{getsockopt, sockopt};
        let orig = match local {
            SocketAddr::V4(_) => {
                let sin = getsockopt(&accepted, sockopt::OriginalDst).ok()?;
                SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                    u16::from_be(sin.sin_port),
                ))
            }
            SocketAddr::V6(_) => {
                let sin6 = getsockopt(&accepted, sockopt::Ip6tOriginalDst).ok()?;
                let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
                match ip {
                    IpAddr::V4(v4) => {
                        SocketAddr::V4(SocketAddrV4::new(v4, u16::from_be(sin6.sin6_port)))
                    }
                    IpAddr::V6(v6) => {
                        SocketAddr::V6(SocketAddrV6::new(v6, u16::from_be(sin6.sin6_port), 0, 0))
                    }
                }
            }
        };
        (orig != local).then_some(orig)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_redirects_tcp_and_dns_and_drops_the_rest() {
        let text = ruleset(Ports {
            proxy4: 1001,
            proxy6: 1002,
            dns4: 1003,
            dns6: 0,
        });
        assert!(text.contains("meta nfproto ipv4 meta l4proto tcp redirect to :1001"));
        assert!(text.contains("meta nfproto ipv6 meta l4proto tcp redirect to :1002"));
        assert!(text.contains("udp dport 53 redirect to :1003"));
        assert!(!text.contains(":0"), "no rule for a missing listener");
        assert!(text.contains("policy drop;"));
    }
}
