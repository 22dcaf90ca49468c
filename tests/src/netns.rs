//! [`UpstreamNet`]: a network namespace for fake upstreams, joined to the host by a veth pair.
//!
//! Layout, with `X` unique per fixture (a process-wide counter mixed with the pid, skipping
//! subnets already on the host):
//!
//! ```text
//!  host netns                                   netns egt-<pid>-<n>
//!  egt<pid>h<n>  10.200.X.1/24   <== veth ==>   egt<pid>n<n>  10.200.X.2/24, 10.200.X.3/24
//!                fd00:200:X::1/64 (optional)                  fd00:200:X::2/64, ::3 (optional)
//! ```
//!
//! egressd's proxy dials upstreams from the host netns, so `--resolve name:10.200.X.2` sends it
//! here; nothing in this namespace has a route anywhere else. Dropping the fixture deletes the
//! namespace and the veth pair. Drop upstream servers first (declare them after the net).

use std::{
    collections::HashSet,
    fs,
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    process::Command,
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
};

static NEXT: AtomicU32 = AtomicU32::new(0);
/// Subnet numbers this process holds, so parallel tests never share one.
static IN_USE: Mutex<Option<HashSet<u8>>> = Mutex::new(None);

/// A network namespace with addresses for two upstreams, deleted on drop.
#[derive(Debug)]
pub struct UpstreamNet {
    name: String,
    host_if: String,
    x: u8,
    ipv6: bool,
}

impl UpstreamNet {
    /// IPv4 only.
    pub fn new() -> Self {
        Self::create(false)
    }

    /// IPv4 plus `fd00:200:X::/64` (addresses added with `nodad`, usable at once).
    pub fn with_ipv6() -> Self {
        Self::create(true)
    }

    fn create(ipv6: bool) -> Self {
        remove_stale();
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let x = pick_subnet(pid, n);
        let name = format!("egt-{pid}-{n}");
        // Interface names: at most 15 bytes ("egt" + 7-digit pid + 'h' + counter).
        let host_if = short_if_name(pid, 'h', n);
        let ns_if = short_if_name(pid, 'n', n);
        // From here on, Drop cleans up whatever was made.
        let net = Self {
            name,
            host_if,
            x,
            ipv6,
        };
        let ns = net.name.as_str();
        ip(&["netns", "add", ns]);
        // Load tests connect thousands at once: let the upstreams' accept queues hold them.
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "sysctl",
                "-q",
                "-w",
                "net.core.somaxconn=65535",
            ])
            .status();
        ip(&[
            "link",
            "add",
            &net.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns_if,
            "netns",
            ns,
        ]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", net.host_addr()),
            "dev",
            &net.host_if,
        ]);
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/24", net.addr()),
            "dev",
            &ns_if,
        ]);
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/24", net.addr2()),
            "dev",
            &ns_if,
        ]);
        for addr in [net.addr3(), net.addr4(), net.addr5()] {
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                &ns_if,
            ]);
        }
        if ipv6 {
            ip(&[
                "addr",
                "add",
                &format!("{}/64", net.host_addr6()),
                "dev",
                &net.host_if,
                "nodad",
            ]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/64", v6(x, 2)),
                "dev",
                &ns_if,
                "nodad",
            ]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/64", v6(x, 3)),
                "dev",
                &ns_if,
                "nodad",
            ]);
        }
        ip(&["link", "set", &net.host_if, "up"]);
        ip(&["-n", ns, "link", "set", &ns_if, "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        net
    }

    /// The namespace's name (`ip netns` name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, the file to `setns` into.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// The host side of the veth: `10.200.X.1`.
    pub fn host_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 200, self.x, 1)
    }

    /// The first upstream address inside the namespace: `10.200.X.2`.
    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 200, self.x, 2)
    }

    /// The second upstream address inside the namespace: `10.200.X.3`.
    pub fn addr2(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 200, self.x, 3)
    }

    /// The third upstream address inside the namespace: `10.200.X.4`.
    pub fn addr3(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 200, self.x, 4)
    }

    /// The fourth upstream address inside the namespace: `10.200.X.5`.
    pub fn addr4(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 200, self.x, 5)
    }

    /// The fifth upstream address inside the namespace: `10.200.X.6`.
    pub fn addr5(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 200, self.x, 6)
    }

    /// The host side's IPv6 address, `fd00:200:X::1` (only configured with [`Self::with_ipv6`]).
    pub fn host_addr6(&self) -> Ipv6Addr {
        v6(self.x, 1)
    }

    /// `fd00:200:X::2`, if IPv6 was asked for.
    pub fn addr6(&self) -> Option<Ipv6Addr> {
        self.ipv6.then(|| v6(self.x, 2))
    }

    /// `fd00:200:X::3`, if IPv6 was asked for.
    pub fn addr6_2(&self) -> Option<Ipv6Addr> {
        self.ipv6.then(|| v6(self.x, 3))
    }
}

impl Default for UpstreamNet {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for UpstreamNet {
    fn drop(&mut self) {
        // Deleting the host end removes the pair even if a thread still holds the netns.
        let _ = quiet_ip(&["link", "del", &self.host_if]);
        let _ = quiet_ip(&["netns", "del", &self.name]);
        if let Ok(mut in_use) = IN_USE.lock() {
            in_use.get_or_insert_with(HashSet::new).remove(&self.x);
        }
    }
}

fn v6(x: u8, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x200, u16::from(x), 0, 0, 0, 0, host)
}

fn short_if_name(pid: u32, side: char, n: u32) -> String {
    let name = format!("egt{}{side}{}", pid % 10_000_000, n % 1000);
    debug_assert!(name.len() <= 15);
    name
}

/// A subnet number in 1..=250 that this process does not hold and the host has no address in.
fn pick_subnet(pid: u32, n: u32) -> u8 {
    let host_addrs = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut in_use = IN_USE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let in_use = in_use.get_or_insert_with(HashSet::new);
    let start = pid.wrapping_mul(37).wrapping_add(n.wrapping_mul(7));
    for i in 0..250u32 {
        let x = u8::try_from(start.wrapping_add(i) % 250 + 1).expect("1..=250 fits in u8");
        if !in_use.contains(&x) && !host_addrs.contains(&format!(" 10.200.{x}.")) {
            in_use.insert(x);
            return x;
        }
    }
    panic!("no free 10.200.X.0/24 subnet for a test network namespace");
}

/// Delete `egt-<pid>-<n>` namespaces left behind by test processes that no longer exist.
fn remove_stale() {
    let Ok(entries) = fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("egt-").and_then(|r| r.split('-').next()) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && fs::metadata(format!("/proc/{pid}")).is_err() {
            let _ = quiet_ip(&["netns", "del", &name]);
        }
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap_or_else(|e| {
        panic!(
            "running `ip {}`: {e} (is iproute2 installed? run `cargo xtask setup`)",
            args.join(" ")
        )
    });
    assert!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

fn quiet_ip(args: &[&str]) -> std::io::Result<std::process::ExitStatus> {
    Command::new("ip")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
}
