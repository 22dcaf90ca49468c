//! `cgroup/connect4|6` and `cgroup/sendmsg4|6`: send TCP to the proxy, UDP port 53 to the
//! DNS listener, refuse every other UDP destination and every other protocol.
//!
//! Each `try_*` returns `Err(counter)` to refuse; the entry in `main.rs` counts it and
//! returns 0, which the kernel turns into `EPERM`. Every path that cannot decide refuses.

use aya_ebpf::{
    EbpfContext,
    bindings::bpf_sock_addr,
    helpers::{bpf_get_current_pid_tgid, bpf_get_socket_cookie},
    programs::SockAddrContext,
};
use egressd_ebpf_common::{FLAG_REDIRECT_LOOPBACK, OrigDst, SandboxConfig, counter};

use crate::{
    addr::{LOOPBACK4, LOOPBACK6, is_local4, is_local6, is_mapped, mapped},
    maps::{ORIG_BY_COOKIE, count, current_sandbox},
};

const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// Port 53 in network byte order.
const DNS_PORT: u16 = 53u16.to_be();

/// Where a connect or datagram goes after the hook.
enum Route {
    /// Leave the destination as it is (the sandbox's own loopback).
    Keep,
    /// Rewrite to IPv4 loopback at this port (network byte order).
    Loopback4(u16),
    /// Rewrite to `::1` at this port (network byte order).
    Loopback6(u16),
}

/// The sandbox the current task belongs to.
#[inline(always)]
fn sandbox() -> Result<SandboxConfig, u32> {
    current_sandbox()
        .map(|(_, cfg)| cfg)
        .ok_or(counter::NO_SANDBOX)
}

#[inline(always)]
fn user_port(sa: *mut bpf_sock_addr) -> u16 {
    // SAFETY: `sa` is the program's context pointer; user_port allows 4-byte reads.
    // The port sits in the low 16 bits, in network byte order.
    (unsafe { (*sa).user_port }) as u16
}

/// Decides a connect or sendmsg to an IPv4 destination (`ip`, `port` in network order).
#[inline(always)]
fn route4(cfg: &SandboxConfig, protocol: u32, ip: u32, port: u16) -> Result<Route, u32> {
    // DNS goes to egressd whatever resolver the sandbox names, loopback ones included
    // (127.0.0.53 would forward anything to the host's resolver).
    if port == DNS_PORT {
        return dns(cfg, protocol, false);
    }
    let redirect_loopback = cfg.flags & FLAG_REDIRECT_LOOPBACK != 0;
    if is_local4(ip) && !redirect_loopback {
        return Ok(Route::Keep);
    }
    match protocol {
        IPPROTO_TCP => {
            if is_local4(ip) && port == cfg.proxy_port4 {
                // The proxy's own listener: it refuses connections it has no record of.
                return Ok(Route::Keep);
            }
            Ok(Route::Loopback4(cfg.proxy_port4))
        }
        IPPROTO_UDP => Err(counter::UDP_DENIED),
        _ => Err(counter::PROTO_DENIED),
    }
}

/// Port 53: UDP to the DNS listener, TCP to the proxy (which answers DNS over TCP itself).
#[inline(always)]
fn dns(cfg: &SandboxConfig, protocol: u32, v6: bool) -> Result<Route, u32> {
    match protocol {
        IPPROTO_TCP => {
            count(counter::DNS_TCP_REDIRECTED);
            match (v6, cfg.proxy_port6) {
                (false, _) => Ok(Route::Loopback4(cfg.proxy_port4)),
                (true, 0) => Err(counter::V6_DENIED),
                (true, port) => Ok(Route::Loopback6(port)),
            }
        }
        IPPROTO_UDP => {
            let port = if v6 { cfg.dns_port6 } else { cfg.dns_port };
            if port == 0 {
                return Err(counter::DNS_DENIED);
            }
            count(counter::DNS_REDIRECTED);
            Ok(if v6 {
                Route::Loopback6(port)
            } else {
                Route::Loopback4(port)
            })
        }
        _ => Err(counter::PROTO_DENIED),
    }
}

/// Records the original destination of a TCP socket under its cookie.
#[inline(always)]
fn record(
    ctx: &SockAddrContext,
    addr: [u32; 4],
    port: u16,
    family: u16,
    proxy_port: u16,
) -> Result<(), u32> {
    // SAFETY: the context pointer is valid for the program's duration.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let orig = OrigDst {
        addr,
        port,
        family,
        proxy_port,
        _pad: 0,
        pid: (bpf_get_current_pid_tgid() >> 32) as u32,
    };
    ORIG_BY_COOKIE
        .insert(&cookie, &orig, 0)
        .map_err(|_| counter::MAP_FAILED)?;
    Ok(())
}

#[inline(always)]
fn set_ip6(sa: *mut bpf_sock_addr, ip: [u32; 4]) {
    // SAFETY: user_ip6 allows 4-byte writes; volatile keeps LLVM from merging them.
    unsafe {
        let p = core::ptr::addr_of_mut!((*sa).user_ip6) as *mut u32;
        core::ptr::write_volatile(p, ip[0]);
        core::ptr::write_volatile(p.add(1), ip[1]);
        core::ptr::write_volatile(p.add(2), ip[2]);
        core::ptr::write_volatile(p.add(3), ip[3]);
    }
}

/// `cgroup/connect4` and `cgroup/sendmsg4`. `tcp_allowed` is false for sendmsg.
pub fn try_addr4(ctx: &SockAddrContext) -> Result<(), u32> {
    let sa = ctx.sock_addr;
    let cfg = sandbox()?;
    // SAFETY: reads of context fields the hook allows.
    let (ip, protocol) = unsafe { ((*sa).user_ip4, (*sa).protocol) };
    let port = user_port(sa);
    match route4(&cfg, protocol, ip, port)? {
        Route::Keep => Ok(()),
        Route::Loopback4(to) => {
            // TCP: for the proxy and getpeername. UDP (DNS): for getpeername and for
            // recvmsg, which shows replies as coming from the resolver the client used.
            record(ctx, mapped(ip), port, AF_INET, to)?;
            if protocol == IPPROTO_TCP {
                count(counter::TCP_REDIRECTED);
            }
            // SAFETY: user_ip4/user_port allow 4-byte writes in these hooks.
            unsafe {
                (*sa).user_ip4 = LOOPBACK4;
                (*sa).user_port = u32::from(to);
            }
            Ok(())
        }
        Route::Loopback6(_) => Err(counter::PROTO_DENIED),
    }
}

/// `cgroup/connect6` and `cgroup/sendmsg6`, IPv4-mapped destinations included (a
/// dual-stack socket dialling `::ffff:a.b.c.d` runs this hook, not the IPv4 one).
pub fn try_addr6(ctx: &SockAddrContext) -> Result<(), u32> {
    let sa = ctx.sock_addr;
    let cfg = sandbox()?;
    // SAFETY: reads of context fields the hook allows.
    let (ip, protocol) = unsafe { ((*sa).user_ip6, (*sa).protocol) };
    let port = user_port(sa);
    let route = if is_mapped(&ip) {
        route4(&cfg, protocol, ip[3], port)?
    } else {
        route6(&cfg, protocol, &ip, port)?
    };
    let (to_ip, to_port) = match route {
        Route::Keep => return Ok(()),
        Route::Loopback4(to) => (mapped(LOOPBACK4), to),
        Route::Loopback6(to) => (LOOPBACK6, to),
    };
    record(ctx, ip, port, AF_INET6, to_port)?;
    if protocol == IPPROTO_TCP {
        count(counter::TCP_REDIRECTED);
    }
    set_ip6(sa, to_ip);
    // SAFETY: user_port allows 4-byte writes in these hooks.
    unsafe { (*sa).user_port = u32::from(to_port) };
    Ok(())
}

#[inline(always)]
fn route6(cfg: &SandboxConfig, protocol: u32, ip: &[u32; 4], port: u16) -> Result<Route, u32> {
    if port == DNS_PORT {
        return dns(cfg, protocol, true);
    }
    let redirect_loopback = cfg.flags & FLAG_REDIRECT_LOOPBACK != 0;
    if is_local6(ip) && !redirect_loopback {
        return Ok(Route::Keep);
    }
    match protocol {
        IPPROTO_TCP => {
            if cfg.proxy_port6 == 0 {
                return Err(counter::V6_DENIED);
            }
            if is_local6(ip) && port == cfg.proxy_port6 {
                return Ok(Route::Keep);
            }
            Ok(Route::Loopback6(cfg.proxy_port6))
        }
        IPPROTO_UDP => Err(counter::UDP_DENIED),
        _ => Err(counter::PROTO_DENIED),
    }
}

/// `cgroup/recvmsg4|6`: a datagram from the DNS listener is shown as coming from the
/// resolver address the client sent its query to (resolvers compare the two).
pub fn try_recvmsg(ctx: &SockAddrContext, v6: bool) {
    let sa = ctx.sock_addr;
    // SAFETY: the context pointer is valid for the program's duration.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: copied out at once; plain data.
    let Some(orig) = (unsafe { ORIG_BY_COOKIE.get(&cookie) }).copied() else {
        return;
    };
    let from_port = user_port(sa);
    if from_port != orig.proxy_port {
        return;
    }
    // The datagram must come from loopback, where the DNS listener is.
    // SAFETY: reads of context fields recvmsg hooks allow.
    let from_local = unsafe {
        if v6 {
            let ip = [
                core::ptr::read_volatile(core::ptr::addr_of!((*sa).user_ip6[0])),
                core::ptr::read_volatile(core::ptr::addr_of!((*sa).user_ip6[1])),
                core::ptr::read_volatile(core::ptr::addr_of!((*sa).user_ip6[2])),
                core::ptr::read_volatile(core::ptr::addr_of!((*sa).user_ip6[3])),
            ];
            is_local6(&ip) || (is_mapped(&ip) && is_local4(ip[3]))
        } else {
            is_local4(core::ptr::read_volatile(core::ptr::addr_of!(
                (*sa).user_ip4
            )))
        }
    };
    if !from_local {
        return;
    }
    if v6 {
        set_ip6(sa, orig.addr);
    } else {
        // SAFETY: user_ip4 allows 4-byte writes in recvmsg4.
        unsafe { (*sa).user_ip4 = orig.addr[3] };
    }
    // SAFETY: user_port allows 4-byte writes in recvmsg hooks.
    unsafe { (*sa).user_port = u32::from(orig.port) };
    count(counter::DNS_REPLY_REWRITTEN);
}

/// `cgroup/getpeername4|6`: show the application the address it dialled, not the proxy's.
pub fn try_getpeername(ctx: &SockAddrContext, v6: bool) {
    // SAFETY: the context pointer is valid for the program's duration.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: copied out at once; plain data.
    let Some(orig) = (unsafe { ORIG_BY_COOKIE.get(&cookie) }).copied() else {
        return;
    };
    let sa = ctx.sock_addr;
    if v6 {
        set_ip6(sa, orig.addr);
    } else {
        // SAFETY: user_ip4 allows 4-byte writes in getpeername4.
        unsafe { (*sa).user_ip4 = orig.addr[3] };
    }
    // SAFETY: user_port allows 4-byte writes in getpeername hooks.
    unsafe { (*sa).user_port = u32::from(orig.port) };
}
