//! Address helpers shared by the hooks. All addresses are in network byte order, as the
//! kernel hands them over; IPv4 is carried as an IPv4-mapped IPv6 address where 16 bytes
//! are needed.

use egressd_ebpf_common::V4_MAPPED_WORD;

/// 127.0.0.1 in network byte order, as stored in `user_ip4`.
pub const LOOPBACK4: u32 = u32::from_ne_bytes([127, 0, 0, 1]);

/// `::1` as four 32-bit words in memory order.
pub const LOOPBACK6: [u32; 4] = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];

/// True for 127.0.0.0/8 and 0.0.0.0 (Linux delivers a connect to 0.0.0.0 locally).
#[inline(always)]
pub fn is_local4(ip: u32) -> bool {
    let first = ip.to_ne_bytes()[0];
    first == 127 || ip == 0
}

/// True when `ip` is `::ffff:a.b.c.d`.
#[inline(always)]
pub fn is_mapped(ip: &[u32; 4]) -> bool {
    ip[0] == 0 && ip[1] == 0 && ip[2] == V4_MAPPED_WORD
}

/// True for `::1` and `::` (Linux delivers a connect to `::` locally).
#[inline(always)]
pub fn is_local6(ip: &[u32; 4]) -> bool {
    ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && (ip[3] == LOOPBACK6[3] || ip[3] == 0)
}

/// The IPv4-mapped form of `ip`.
#[inline(always)]
pub fn mapped(ip: u32) -> [u32; 4] {
    [0, 0, V4_MAPPED_WORD, ip]
}
