//! `cgroup_skb/egress`: the backstop. Every packet a sandboxed socket sends that is not
//! addressed to loopback is dropped: raw sockets, ICMP, anything the socket hooks missed.

use aya_ebpf::programs::SkBuffContext;
use egressd_ebpf_common::counter;

use crate::addr::{is_local4, is_local6, is_mapped};

/// Offset of the destination address in an IPv4 header.
const V4_DADDR: usize = 16;
/// Offset of the destination address in an IPv6 header.
const V6_DADDR: usize = 24;

/// `Ok(())` lets the packet pass; `Err(counter)` drops it.
pub fn try_egress(ctx: &SkBuffContext) -> Result<(), u32> {
    let first: u8 = ctx.load(0).map_err(|_| counter::SKB_DROP_OTHER)?;
    match first >> 4 {
        4 => {
            let daddr: u32 = ctx.load(V4_DADDR).map_err(|_| counter::SKB_DROP_V4)?;
            if is_local4(daddr) {
                Ok(())
            } else {
                Err(counter::SKB_DROP_V4)
            }
        }
        6 => {
            let daddr: [u32; 4] = ctx.load(V6_DADDR).map_err(|_| counter::SKB_DROP_V6)?;
            let local = is_local6(&daddr) || (is_mapped(&daddr) && is_local4(daddr[3]));
            if local {
                Ok(())
            } else {
                Err(counter::SKB_DROP_V6)
            }
        }
        _ => Err(counter::SKB_DROP_OTHER),
    }
}
