//! What the socket actions share: the target's address, raw sockets and `sockaddr_in`s, and
//! how long a blocking step may take.

use std::{
    io,
    net::{SocketAddr, SocketAddrV4, ToSocketAddrs},
    os::fd::{FromRawFd as _, OwnedFd},
    time::Duration,
};

/// How long a connect or a read may block.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// `ADDR:PORT`, `[V6]:PORT` or `HOST:PORT` (the last through the system resolver).
pub fn resolve(target: &str) -> io::Result<SocketAddr> {
    if let Ok(addr) = target.parse() {
        return Ok(addr);
    }
    target
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EADDRNOTAVAIL))
}

/// A raw socket (no `connect()` hook sees it) of `domain`/`ty`/`proto`, or the errno.
pub fn raw_socket(
    domain: libc::c_int,
    ty: libc::c_int,
    proto: libc::c_int,
) -> Result<OwnedFd, io::Error> {
    // SAFETY: plain socket(2); the descriptor is owned by the returned OwnedFd.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `v4` as the kernel takes it.
pub fn sockaddr_in(v4: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// A plain connect(2) of `fd` to `v4`, blocking.
pub fn connect_raw(fd: libc::c_int, v4: SocketAddrV4) -> io::Result<()> {
    let sa = sockaddr_in(v4);
    // SAFETY: sa is a valid sockaddr_in for the length given.
    let rc = unsafe {
        libc::connect(
            fd,
            (&raw const sa).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
