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
/// `SandboxConfig::flags`: apply the Unix-socket rules in `cgroup/connect_unix` and
/// `cgroup/sendmsg_unix` (without it those hooks allow every Unix-socket address).
pub const FLAG_UNIX_RULES: u32 = 2;
/// `SandboxConfig::flags`, with `FLAG_UNIX_RULES`: allow abstract (and unnamed) Unix-socket
/// addresses. Set it only where the sandbox's abstract namespace is its own (a private
/// network namespace, or Landlock scoping abstract sockets); without it they are refused.
pub const FLAG_UNIX_ABSTRACT_ALLOW: u32 = 4;

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
    /// A Unix-socket connect/sendmsg to a path (or an unreadable address) was refused.
    pub const UNIX_DENIED: u32 = 14;
    /// A Unix-socket connect/sendmsg to an abstract or unnamed address was refused.
    pub const UNIX_ABSTRACT_DENIED: u32 = 15;
    /// Number of counters (size of the array).
    pub const COUNT: u32 = 16;

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
        "unix_denied",
        "unix_abstract_denied",
    ];
}

/// Size of `sun_path` in `struct sockaddr_un`.
pub const UNIX_PATH_MAX: usize = 108;

/// Data part of a `UNIX_ALLOW` LPM-trie key (the trie key is `{ prefixlen: u32, data }`,
/// aya's `lpm_trie::Key<UnixAllowData>`).
///
/// An entry for one socket path covers the path and its terminating NUL, so it matches only
/// that path; a directory entry ends with `/` and no NUL, so it matches everything below.
/// The programs look up the full key: the cgroup id, the path as connect() named it, a NUL,
/// zero padding, with all bits significant ([`UnixAllowData::FULL_PREFIX_BITS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnixAllowData {
    /// The sandbox's cgroup id, native byte order (bytes, so the key has no padding).
    pub cgroup_id: [u8; 8],
    /// Path bytes, zero padded.
    pub path: [u8; UNIX_PATH_MAX],
}

impl UnixAllowData {
    /// Prefix length, in bits, that makes every byte of the data significant.
    pub const FULL_PREFIX_BITS: u32 = (8 + UNIX_PATH_MAX as u32) * 8;

    /// Prefix length, in bits, of an entry for this cgroup whose path part is `path_bytes`
    /// long (a trailing NUL included for an exact socket path).
    pub const fn prefix_bits(path_bytes: usize) -> u32 {
        ((8 + path_bytes) * 8) as u32
    }
}

/// `UnixEvent::kind` of a refused `connect()` (stream, seqpacket or datagram).
pub const UNIX_KIND_CONNECT: u32 = 0;
/// `UnixEvent::kind` of a refused `sendmsg()`/`sendto()` naming an address.
pub const UNIX_KIND_SENDMSG: u32 = 1;

/// A refused Unix-socket address, pushed to the `UNIX_EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnixEvent {
    /// Cgroup id of the task that called connect()/sendmsg().
    pub cgroup_id: u64,
    /// Its thread-group id.
    pub pid: u32,
    /// `UNIX_KIND_*`.
    pub kind: u32,
    /// 1 for an abstract or unnamed address (`path` then starts with its leading NUL), else 0.
    pub is_abstract: u32,
    /// Length of `sun_path` in the address (its length less the 2-byte family, at most
    /// 108). A pathname ends at its first NUL within these bytes; what follows it may be
    /// left as the caller passed it.
    pub path_len: u32,
    /// `sun_path` as the kernel received it, zero padded.
    pub path: [u8; UNIX_PATH_MAX],
    /// Explicit padding.
    pub _pad: u32,
}

/// Offsets in the kernel's `struct bpf_sock_addr_kern`, the real context of cgroup
/// sock_addr programs (`{ struct sock *sk; struct sockaddr *uaddr; u64 tmp_reg;
/// void *t_ctx; u32 uaddrlen; }` since Linux 6.7). The Unix-socket hooks read `uaddr` and
/// `uaddrlen` at these offsets; the loader checks them against the running kernel's BTF
/// and does not load the hooks when they differ.
pub mod sock_addr_kern {
    /// Offset of `struct sockaddr *uaddr`.
    pub const UADDR: usize = 8;
    /// Offset of `u32 uaddrlen` (the address length, the 2-byte family included).
    pub const UADDRLEN: usize = 32;
}

/// Capacity of the `UNIX_ALLOW` trie (entries over all sandboxes).
pub const MAX_UNIX_ALLOW: u32 = 4096;
/// Size of the `UNIX_EVENTS` ring buffer in bytes (a power of two, whole pages).
pub const UNIX_EVENTS_BYTES: u32 = 64 * 1024;

/// Maximum number of concurrently configured sandboxes.
pub const MAX_SANDBOXES: u32 = 1024;
/// Capacity of each original-destination map (LRU: the oldest entries go first).
pub const MAX_TRACKED_SOCKETS: u32 = 65536;

/// One socket of a pass-through connection relayed inside the kernel, keyed by that
/// socket's cookie in `RELAY_PEERS` (the sockets themselves are in `RELAY_SOCKETS`, keyed by
/// the same cookie). The stream-verdict program redirects every byte the socket receives to
/// the egress of `peer` and counts it here; the proxy reads the counts for its audit record,
/// its idle timeout and its half-close.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayPeer {
    /// Cookie of the socket this one's bytes go to.
    pub peer: u64,
    /// Bytes received on this socket and handed to `peer` (added by the kernel program).
    pub bytes: u64,
    /// Bytes received while `peer` was not in `RELAY_SOCKETS` (kept on this socket; the
    /// proxy treats any as a failed hand-over, since their order is lost).
    pub unpaired: u64,
}

/// Capacity of `RELAY_SOCKETS` and `RELAY_PEERS`: sockets (two per connection) relayed in
/// the kernel at once. A connection that finds them full is relayed with `splice(2)`.
pub const MAX_RELAY_SOCKETS: u32 = 65536;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is #[repr(C)], Copy, made only of integers, with explicit padding
    // fields so that every byte is initialised; any bit pattern is a valid value.
    unsafe impl aya::Pod for super::SandboxConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OrigDst {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ClientKey {}
    // SAFETY: as above (byte arrays only, no padding).
    unsafe impl aya::Pod for super::UnixAllowData {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::UnixEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RelayPeer {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, offset_of, size_of};

    #[test]
    fn relay_peer_layout() {
        assert_eq!(size_of::<RelayPeer>(), 24);
        assert_eq!(offset_of!(RelayPeer, peer), 0);
        assert_eq!(offset_of!(RelayPeer, bytes), 8);
        assert_eq!(offset_of!(RelayPeer, unpaired), 16);
    }

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
        assert_eq!(counter::NAMES[counter::UNIX_DENIED as usize], "unix_denied");
        assert_eq!(
            counter::NAMES[counter::UNIX_ABSTRACT_DENIED as usize],
            "unix_abstract_denied"
        );
    }

    #[test]
    fn unix_allow_data_layout() {
        assert_eq!(size_of::<UnixAllowData>(), 116);
        assert_eq!(align_of::<UnixAllowData>(), 1);
        assert_eq!(offset_of!(UnixAllowData, cgroup_id), 0);
        assert_eq!(offset_of!(UnixAllowData, path), 8);
        assert_eq!(UnixAllowData::FULL_PREFIX_BITS, 116 * 8);
        assert_eq!(UnixAllowData::prefix_bits(UNIX_PATH_MAX), 116 * 8);
        // `/tmp/` as a directory entry: cgroup id and five path bytes.
        assert_eq!(UnixAllowData::prefix_bits(5), 13 * 8);
    }

    #[test]
    fn unix_event_layout() {
        assert_eq!(size_of::<UnixEvent>(), 136);
        assert_eq!(align_of::<UnixEvent>(), 8);
        assert_eq!(offset_of!(UnixEvent, cgroup_id), 0);
        assert_eq!(offset_of!(UnixEvent, pid), 8);
        assert_eq!(offset_of!(UnixEvent, kind), 12);
        assert_eq!(offset_of!(UnixEvent, is_abstract), 16);
        assert_eq!(offset_of!(UnixEvent, path_len), 20);
        assert_eq!(offset_of!(UnixEvent, path), 24);
        assert_eq!(offset_of!(UnixEvent, _pad), 132);
    }

    #[test]
    fn flags_are_distinct_bits() {
        let flags = [
            FLAG_REDIRECT_LOOPBACK,
            FLAG_UNIX_RULES,
            FLAG_UNIX_ABSTRACT_ALLOW,
        ];
        for (i, a) in flags.iter().enumerate() {
            assert_eq!(a.count_ones(), 1);
            for b in &flags[i + 1..] {
                assert_eq!(a & b, 0);
            }
        }
    }

    #[test]
    fn mapped_word_is_ffff_in_memory_order() {
        assert_eq!(V4_MAPPED_WORD.to_ne_bytes(), [0, 0, 0xff, 0xff]);
    }
}
