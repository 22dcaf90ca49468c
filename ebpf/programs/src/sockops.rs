//! `sockops`: re-key a redirected socket's original destination by the client's own address
//! at `TCP_CONNECT_CB` (after the local port is bound, before the SYN leaves, so before the
//! proxy can `accept()` it), and forget the cookie entry when the socket closes.

use core::ptr::{addr_of, read_volatile};

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB},
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockOpsContext,
};
use egressd_ebpf_common::{ClientKey, counter};

use crate::{
    addr::mapped,
    maps::{ORIG_BY_CLIENT, ORIG_BY_COOKIE, count},
};

const AF_INET: u32 = 2;
/// `TCP_CLOSE` from include/net/tcp_states.h.
const TCP_CLOSE: u32 = 7;

/// Entry point body; never fails the socket (sockops cannot refuse a connect).
pub fn handle(ctx: &SockOpsContext) {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => rekey(ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == TCP_CLOSE => {
            // SAFETY: the context pointer is valid for the program's duration.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            let _ = ORIG_BY_COOKIE.remove(&cookie);
        }
        _ => {}
    }
}

fn rekey(ctx: &SockOpsContext) {
    // SAFETY: as above.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: copied out at once; plain data.
    let Some(orig) = (unsafe { ORIG_BY_COOKIE.get(&cookie) }).copied() else {
        return; // not a socket we redirected
    };
    // Read every field unconditionally at its constant offset and choose between the
    // values afterwards: reading inside the branches lets LLVM merge them into one load at
    // a computed context offset, which the verifier rejects ("modified ctx ptr").
    let ops = ctx.ops;
    // SAFETY: reads of bpf_sock_ops fields sock_ops programs may read, at constant offsets.
    let (family, ip4, ip6) = unsafe {
        (
            read_volatile(addr_of!((*ops).family)),
            read_volatile(addr_of!((*ops).local_ip4)),
            [
                read_volatile(addr_of!((*ops).local_ip6[0])),
                read_volatile(addr_of!((*ops).local_ip6[1])),
                read_volatile(addr_of!((*ops).local_ip6[2])),
                read_volatile(addr_of!((*ops).local_ip6[3])),
            ],
        )
    };
    let addr = if family == AF_INET { mapped(ip4) } else { ip6 };
    let key = ClientKey {
        // SAFETY: the context pointer is valid; the helper accepts a sock_ops context.
        netns_cookie: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        addr,
        // local_port is in host byte order in bpf_sock_ops.
        port: (ctx.local_port() as u16).to_be(),
        proxy_port: orig.proxy_port,
        _pad: 0,
    };
    if ORIG_BY_CLIENT.insert(&key, &orig, 0).is_err() {
        count(counter::MAP_FAILED);
        return;
    }
    count(counter::REKEYED);
    // Ask for state callbacks so the cookie entry goes when the socket closes.
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
}

/// `cgroup/sock_release`: drop the socket's cookie entry.
pub fn forget(ctx: &aya_ebpf::programs::SockContext) {
    // SAFETY: the context pointer is valid; sock programs may ask for the socket cookie.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = ORIG_BY_COOKIE.remove(&cookie);
}
