//! The actions below the transport layer, which no connect hook sees.
//!
//! ```text
//! packet IFACE   an AF_PACKET socket (needs CAP_NET_RAW; IFACE is only reported)
//! raw ADDR       a raw IPv4 socket, one hand-made UDP packet to ADDR
//! ```

use std::{
    io,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::AsRawFd as _,
};

use crate::{
    json::Json,
    net::{raw_socket, sockaddr_in},
};

/// `packet IFACE`: an `AF_PACKET` socket bypasses the IP layer (and cgroup_skb): it needs
/// `CAP_NET_RAW`.
pub fn packet(iface: &str) -> Json {
    let mut out = Json::new("packet", iface);
    match raw_socket(
        libc::AF_PACKET,
        libc::SOCK_RAW,
        i32::from((libc::ETH_P_ALL as u16).to_be()),
    ) {
        Ok(_) => {
            out.field("result", "ok");
            out
        }
        Err(e) => out.error("socket", &e),
    }
}

/// `raw ADDR`: a raw IPv4 socket sending one hand-made UDP packet to `target`.
pub fn ipv4(target: &str) -> Json {
    let mut out = Json::new("raw", target);
    let Ok(ip) = target.parse::<Ipv4Addr>() else {
        return out.error("parse", &io::Error::from_raw_os_error(libc::EINVAL));
    };
    let fd = match raw_socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_UDP) {
        Ok(fd) => fd,
        Err(e) => return out.error("socket", &e),
    };
    // UDP header only: source 9, destination 9, length 8, no checksum.
    let packet = [0u8, 9, 0, 9, 0, 8, 0, 0];
    let sa = sockaddr_in(SocketAddrV4::new(ip, 0));
    // SAFETY: packet and sa are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&raw const sa).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return out.error("sendto", &io::Error::last_os_error());
    }
    out.field("result", "ok");
    out
}
