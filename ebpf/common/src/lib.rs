//! Types that cross the kernel/userspace boundary.
//!
//! Every map key and value used by `egressd-ebpf` (the kernel programs) and by the
//! daemon's loader is defined here, once, as `#[repr(C)]` plain data with explicit
//! padding. Codes are `u32` constants with fixed numbers; a retired number is never reused.
//! The layout tests at the bottom pin sizes and offsets so a change fails here rather
//! than as a verifier error or a silent misread.
#![no_std]
#![warn(missing_docs)]

/// `SandboxConfig::flags`: also redirect loopback destinations (the sandbox shares the
/// host's network namespace, so its loopback is the host's and goes through policy).
pub const FLAG_REDIRECT_LOOPBACK: u32 = 1;

/// Per-sandbox settings, keyed by the sandbox's cgroup v2 id (`u64`) in `SANDBOXES`.
///
/// A connect from a cgroup that has the programs attached but no entry here is refused:
/// the programs fail closed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SandboxConfig {
    /// Port of the proxy's IPv4 listener on 127.0.0.1, network byte order.
    pub proxy_port4: u16,
    /// Port of the proxy's IPv6 listener on `::1`, network byte order (0: no IPv6 listener,
    /// IPv6 TCP is refused).
    pub proxy_port6: u16,
    /// Port of the sandbox's DNS listener on 127.0.0.1, network byte order (0: none, UDP
    /// to port 53 is refused like any other UDP).
    pub dns_port: u16,
    /// Port of the sandbox's DNS listener on `::1`, network byte order (0: none, IPv6 DNS
    /// over UDP is refused).
    pub dns_port6: u16,
    /// `FLAG_*` bits.
    pub flags: u32,
}

/// The destination a sandboxed socket dialled before it was redirected to the proxy (TCP)
/// or to the DNS listener (UDP port 53; the last destination the socket sent to).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrigDst {
    /// Destination address as 16 bytes in network byte order; IPv4 is stored as an
    /// IPv4-mapped IPv6 address (`::ffff:a.b.c.d`).
    pub addr: [u32; 4],
    /// Destination port, network byte order.
    pub port: u16,
    /// Address family the application used (`AF_INET` = 2 or `AF_INET6` = 10).
    pub family: u16,
    /// The listener port the connect was rewritten to, network byte order. Copied into
    /// `ClientKey::proxy_port` when the socket is re-keyed.
    pub proxy_port: u16,
    /// Explicit padding.
    pub _pad: u16,
    /// Thread-group id of the process that called `connect()`.
    pub pid: u32,
}

/// Key under which the proxy finds an `OrigDst` from an accepted connection.
///
/// Unique across sandboxes: two sandboxes in different network namespaces may reuse the
/// same client address and port, and two in one namespace use different listener ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey {
    /// Cookie of the network namespace the client socket lives in (`SO_NETNS_COOKIE` on
    /// the proxy's accepted socket gives the same value).
    pub netns_cookie: u64,
    /// The client's local address (the proxy's peer address), network byte order,
    /// IPv4 as IPv4-mapped IPv6.
    pub addr: [u32; 4],
    /// The client's local port (the proxy's peer port), network byte order.
    pub port: u16,
    /// The proxy listener port the client was sent to, network byte order.
    pub proxy_port: u16,
    /// Explicit padding.
    pub _pad: u32,
}

/// The third 32-bit word of an IPv4-mapped IPv6 address (`::ffff:0:0/96`), in memory order.
pub const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// Index of each counter in the per-CPU `COUNTERS` array. Fixed numbers; never reuse one.
pub mod counter {
    /// A TCP connect was redirected to the proxy.
    pub const TCP_REDIRECTED: u32 = 0;
    /// A connect from a cgroup without a `SANDBOXES` entry was refused.
    pub const NO_SANDBOX: u32 = 1;
    /// A UDP connect/sendmsg to a port other than 53 was refused (QUIC included).
    pub const UDP_DENIED: u32 = 2;
    /// A UDP connect/sendmsg to port 53 was refused because no DNS listener exists.
    pub const DNS_DENIED: u32 = 3;
    /// A UDP datagram to port 53 was redirected to the sandbox's DNS listener.
    pub const DNS_REDIRECTED: u32 = 4;
    /// A connect with a protocol other than TCP or UDP was refused (SCTP, ICMP sockets...).
    pub const PROTO_DENIED: u32 = 5;
    /// The original destination could not be recorded (map update failed): refused.
    pub const MAP_FAILED: u32 = 6;
    /// An IPv6 TCP connect was refused because the sandbox has no IPv6 listener.
    pub const V6_DENIED: u32 = 7;
    /// `cgroup_skb/egress` dropped a non-loopback IPv4 packet.
    pub const SKB_DROP_V4: u32 = 8;
    /// `cgroup_skb/egress` dropped a non-loopback IPv6 packet.
    pub const SKB_DROP_V6: u32 = 9;
    /// `cgroup_skb/egress` dropped a packet that is neither IPv4 nor IPv6.
    pub const SKB_DROP_OTHER: u32 = 10;
    /// A socket was re-keyed from its cookie to its client address at TCP connect.
    pub const REKEYED: u32 = 11;
    /// A DNS reply's source was rewritten back to the resolver address the client used.
    pub const DNS_REPLY_REWRITTEN: u32 = 12;
    /// A TCP connect to port 53 on loopback was sent to the proxy (DNS over TCP).
    pub const DNS_TCP_REDIRECTED: u32 = 13;
    /// Number of counters (size of the array).
    pub const COUNT: u32 = 14;

    /// Stable names, indexed by counter number, for logs and `egressd` output.
    pub const NAMES: [&str; COUNT as usize] = [
        "tcp_redirected",
        "no_sandbox",
        "udp_denied",
        "dns_denied",
        "dns_redirected",
        "proto_denied",
        "map_failed",
        "v6_denied",
        "skb_drop_v4",
        "skb_drop_v6",
        "skb_drop_other",
        "rekeyed",
        "dns_reply_rewritten",
        "dns_tcp_redirected",
    ];
}

/// Maximum number of concurrently configured sandboxes.
pub const MAX_SANDBOXES: u32 = 1024;
/// Capacity of each original-destination map (LRU: the oldest entries go first).
pub const MAX_TRACKED_SOCKETS: u32 = 65536;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is #[repr(C)], Copy, made only of integers, with explicit padding
    // fields so that every byte is initialised; any bit pattern is a valid value.
    unsafe impl aya::Pod for super::SandboxConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OrigDst {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ClientKey {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, offset_of, size_of};

    #[test]
    fn sandbox_config_layout() {
        assert_eq!(size_of::<SandboxConfig>(), 12);
        assert_eq!(align_of::<SandboxConfig>(), 4);
        assert_eq!(offset_of!(SandboxConfig, proxy_port4), 0);
        assert_eq!(offset_of!(SandboxConfig, proxy_port6), 2);
        assert_eq!(offset_of!(SandboxConfig, dns_port), 4);
        assert_eq!(offset_of!(SandboxConfig, dns_port6), 6);
        assert_eq!(offset_of!(SandboxConfig, flags), 8);
    }

    #[test]
    fn orig_dst_layout() {
        assert_eq!(size_of::<OrigDst>(), 28);
        assert_eq!(align_of::<OrigDst>(), 4);
        assert_eq!(offset_of!(OrigDst, addr), 0);
        assert_eq!(offset_of!(OrigDst, port), 16);
        assert_eq!(offset_of!(OrigDst, family), 18);
        assert_eq!(offset_of!(OrigDst, proxy_port), 20);
        assert_eq!(offset_of!(OrigDst, pid), 24);
    }

    #[test]
    fn client_key_layout() {
        assert_eq!(size_of::<ClientKey>(), 32);
        assert_eq!(align_of::<ClientKey>(), 8);
        assert_eq!(offset_of!(ClientKey, netns_cookie), 0);
        assert_eq!(offset_of!(ClientKey, addr), 8);
        assert_eq!(offset_of!(ClientKey, port), 24);
        assert_eq!(offset_of!(ClientKey, proxy_port), 26);
    }

    #[test]
    fn counter_names_cover_every_counter() {
        assert_eq!(counter::NAMES.len(), counter::COUNT as usize);
        assert_eq!(counter::NAMES[counter::REKEYED as usize], "rekeyed");
    }

    #[test]
    fn mapped_word_is_ffff_in_memory_order() {
        assert_eq!(V4_MAPPED_WORD.to_ne_bytes(), [0, 0, 0xff, 0xff]);
    }
}
