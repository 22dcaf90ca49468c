//! `icmp ADDR`: an echo request through a ping socket, then through a raw socket.

use std::{io, net::Ipv4Addr};

use crate::json::{Json, errno_name};

/// `icmp ADDR`: try an ICMP echo first through an unprivileged ping socket, then through a
/// raw socket. The line's `result` is `reply` if either got an answer; `attempts` lists both.
pub fn ping(target: &str) -> Json {
    let mut out = Json::new("icmp", target);
    let ip: Ipv4Addr = match target.parse() {
        Ok(ip) => ip,
        Err(_) => return out.error("parse", &io::Error::from_raw_os_error(libc::EINVAL)),
    };
    let mut attempts = Vec::new();
    let mut replied = false;
    for (kind, ty) in [("dgram", libc::SOCK_DGRAM), ("raw", libc::SOCK_RAW)] {
        let (result, detail) = match icmp_echo(ip, ty) {
            Ok(true) => {
                replied = true;
                ("reply", String::new())
            }
            Ok(false) => ("no-reply", String::new()),
            Err((stage, e)) => (
                "error",
                format!(",\"stage\":\"{stage}\",\"errno\":\"{}\"", errno_name(&e)),
            ),
        };
        attempts.push(format!(
            "{{\"socket\":\"{kind}\",\"result\":\"{result}\"{detail}}}"
        ));
    }
    out.field("result", if replied { "reply" } else { "no-reply" });
    out.raw("attempts", &format!("[{}]", attempts.join(",")));
    out
}

/// Send one echo request; wait up to 2 s for any ICMP answer.
fn icmp_echo(ip: Ipv4Addr, ty: libc::c_int) -> Result<bool, (&'static str, io::Error)> {
    // SAFETY: plain socket(2) call; the descriptor is closed below on every path.
    let fd = unsafe { libc::socket(libc::AF_INET, ty | libc::SOCK_CLOEXEC, libc::IPPROTO_ICMP) };
    if fd < 0 {
        return Err(("socket", io::Error::last_os_error()));
    }
    let result = icmp_echo_on(fd, ip);
    // SAFETY: fd is a descriptor this function opened and nothing else owns.
    unsafe { libc::close(fd) };
    result
}

fn icmp_echo_on(fd: libc::c_int, ip: Ipv4Addr) -> Result<bool, (&'static str, io::Error)> {
    let tv = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: tv is a valid timeval and the length matches it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(("setsockopt", io::Error::last_os_error()));
    }
    // Echo request: type 8, code 0, checksum, id, sequence 1, 8 bytes of payload.
    let mut packet = [
        8u8, 0, 0, 0, 0x45, 0x67, 0, 1, b'e', b'g', b'r', b'e', b's', b's', b'd', b'!',
    ];
    let sum = checksum(&packet);
    packet[2..4].copy_from_slice(&sum.to_be_bytes());
    let dst = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: packet and dst are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            fd,
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&raw const dst).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(("sendto", io::Error::last_os_error()));
    }
    let mut buf = [0u8; 1500];
    // SAFETY: buf is valid for writes of its length.
    let got = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if got < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) => Ok(false),
            _ => Err(("recv", e)),
        };
    }
    Ok(true)
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).expect("folded to 16 bits")
}
