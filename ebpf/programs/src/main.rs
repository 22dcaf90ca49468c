//! egressd's kernel programs. Entry points only: each calls a `try_*` function and turns
//! its `Err(counter)` into a refusal (fail closed) after counting it.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod addr;
#[cfg(target_arch = "bpf")]
mod connect;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod relay;
#[cfg(target_arch = "bpf")]
mod skb;
#[cfg(target_arch = "bpf")]
mod sockops;
#[cfg(target_arch = "bpf")]
mod unix;

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        bindings::bpf_sock_addr,
        macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr, sock_ops, stream_verdict},
        programs::{SkBuffContext, SockAddrContext, SockContext, SockOpsContext},
    };
    use egressd_ebpf_common::{UNIX_KIND_CONNECT, UNIX_KIND_SENDMSG};

    use crate::{connect, maps::count, relay, skb, sockops, unix};

    const ALLOW: i32 = 1;
    const REFUSE: i32 = 0;

    #[inline(always)]
    fn verdict(result: Result<(), u32>) -> i32 {
        match result {
            Ok(()) => ALLOW,
            Err(reason) => {
                count(reason);
                REFUSE
            }
        }
    }

    #[cgroup_sock_addr(connect4)]
    pub fn egressd_connect4(ctx: SockAddrContext) -> i32 {
        verdict(connect::try_addr4(&ctx))
    }

    #[cgroup_sock_addr(connect6)]
    pub fn egressd_connect6(ctx: SockAddrContext) -> i32 {
        verdict(connect::try_addr6(&ctx))
    }

    #[cgroup_sock_addr(sendmsg4)]
    pub fn egressd_sendmsg4(ctx: SockAddrContext) -> i32 {
        verdict(connect::try_addr4(&ctx))
    }

    #[cgroup_sock_addr(sendmsg6)]
    pub fn egressd_sendmsg6(ctx: SockAddrContext) -> i32 {
        verdict(connect::try_addr6(&ctx))
    }

    #[cgroup_sock_addr(getpeername4)]
    pub fn egressd_getpeername4(ctx: SockAddrContext) -> i32 {
        connect::try_getpeername(&ctx, false);
        ALLOW
    }

    #[cgroup_sock_addr(getpeername6)]
    pub fn egressd_getpeername6(ctx: SockAddrContext) -> i32 {
        connect::try_getpeername(&ctx, true);
        ALLOW
    }

    #[cgroup_sock_addr(recvmsg4)]
    pub fn egressd_recvmsg4(ctx: SockAddrContext) -> i32 {
        connect::try_recvmsg(&ctx, false);
        ALLOW
    }

    #[cgroup_sock_addr(recvmsg6)]
    pub fn egressd_recvmsg6(ctx: SockAddrContext) -> i32 {
        connect::try_recvmsg(&ctx, true);
        ALLOW
    }

    // The Unix-socket hooks (Linux 6.7+). aya-ebpf's `cgroup_sock_addr` macro does not know
    // these attach types, so the entry points are written out the way it writes them, with
    // the section names libbpf uses. aya 0.14 does not know them either: the daemon's loader
    // hides these two sections from aya and loads them itself (see `loader.rs`).

    /// `connect()` on an `AF_UNIX` socket (stream, seqpacket and datagram).
    #[unsafe(no_mangle)]
    #[unsafe(link_section = "cgroup/connect_unix")]
    pub fn egressd_connect_unix(ctx: *mut bpf_sock_addr) -> i32 {
        unix::check(&SockAddrContext::new(ctx), UNIX_KIND_CONNECT)
    }

    /// `sendmsg()`/`sendto()` naming an address on an `AF_UNIX` datagram socket.
    #[unsafe(no_mangle)]
    #[unsafe(link_section = "cgroup/sendmsg_unix")]
    pub fn egressd_sendmsg_unix(ctx: *mut bpf_sock_addr) -> i32 {
        unix::check(&SockAddrContext::new(ctx), UNIX_KIND_SENDMSG)
    }

    /// Forget a socket's original destination when it is released (UDP sockets have no
    /// TCP state callback).
    #[cgroup_sock(sock_release)]
    pub fn egressd_sock_release(ctx: SockContext) -> i32 {
        sockops::forget(&ctx);
        ALLOW
    }

    #[sock_ops]
    pub fn egressd_sock_ops(ctx: SockOpsContext) -> u32 {
        sockops::handle(&ctx);
        1
    }

    #[cgroup_skb(egress)]
    pub fn egressd_skb_egress(ctx: SkBuffContext) -> i32 {
        verdict(skb::try_egress(&ctx))
    }

    /// The in-kernel relay of pass-through connections (`RELAY_SOCKETS`).
    #[stream_verdict]
    pub fn egressd_relay(ctx: SkBuffContext) -> u32 {
        relay::verdict(&ctx)
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
