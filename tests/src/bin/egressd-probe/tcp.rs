//! The TCP actions: every way the sandbox may open a TCP connection, each of which egressd
//! must redirect.
//!
//! ```text
//! tcp ADDR:PORT [--v6only-mapped]   connect(); the result, getpeername() (`peer`) and
//!                                   getsockname() (`local`); `dialled` is the address used
//! tcp-fastopen ADDR:PORT            sendto(MSG_FASTOPEN): connect and data in one call
//! tcp-reconnect ADDR:PORT           connect to 127.0.0.1:1 (refused), AF_UNSPEC, then ADDR:PORT
//! io-uring-connect ADDR:PORT        connect through io_uring (IORING_OP_CONNECT)
//! ```

use std::{
    io,
    net::{IpAddr, SocketAddr, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _},
};

use crate::{
    json::{Json, errno_name},
    net::{TIMEOUT, connect_raw, raw_socket, resolve, sockaddr_in},
};

/// `tcp ADDR:PORT [--v6only-mapped]`: connect() with a 5 s deadline; `mapped` dials an IPv4
/// target as `::ffff:a.b.c.d` from an `AF_INET6` socket.
pub fn connect(target: &str, mapped: bool) -> Json {
    let mut out = Json::new("tcp", target);
    let addr = match resolve(target) {
        Ok(addr) => addr,
        Err(e) => return out.error("resolve", &e),
    };
    let addr = match (mapped, addr) {
        (true, SocketAddr::V4(v4)) => {
            SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
        }
        _ => addr,
    };
    out.field("dialled", &addr.to_string());
    match TcpStream::connect_timeout(&addr, TIMEOUT) {
        Ok(stream) => {
            out.field("result", "ok");
            match stream.peer_addr() {
                Ok(peer) => out.field("peer", &peer.to_string()),
                Err(e) => out.field("peer_error", errno_name(&e)),
            }
            if let Ok(local) = stream.local_addr() {
                out.field("local", &local.to_string());
            }
            out
        }
        Err(e) => out.error("connect", &e),
    }
}

/// `tcp-fastopen ADDR:PORT`, TCP Fast Open: `sendto(MSG_FASTOPEN)` on an unconnected socket
/// connects and sends in one call, a path that skips `connect()` (the redirect must still
/// apply).
pub fn fastopen(target: &str) -> Json {
    let mut out = Json::new("tcp-fastopen", target);
    let addr = match resolve(target) {
        Ok(addr) => addr,
        Err(e) => return out.error("resolve", &e),
    };
    let SocketAddr::V4(v4) = addr else {
        return out.error("parse", &io::Error::from_raw_os_error(libc::EAFNOSUPPORT));
    };
    // SAFETY: plain socket(2); the descriptor is wrapped in a TcpStream right away, which
    // closes it.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return out.error("socket", &io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket nothing else owns.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let dst = sockaddr_in(v4);
    let payload = b"egressd-probe";
    // SAFETY: payload and dst are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            fd,
            payload.as_ptr().cast(),
            payload.len(),
            libc::MSG_FASTOPEN,
            (&raw const dst).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return out.error("sendto", &io::Error::last_os_error());
    }
    out.field("result", "ok");
    match stream.peer_addr() {
        Ok(peer) => out.field("peer", &peer.to_string()),
        Err(e) => out.field("peer_error", errno_name(&e)),
    }
    out
}

/// `tcp-reconnect ADDR:PORT`: connect somewhere, dissolve the association with `AF_UNSPEC`,
/// connect again to `target`: the second connect must be redirected like a first one.
pub fn reconnect(target: &str) -> Json {
    let mut out = Json::new("tcp-reconnect", target);
    let Ok(SocketAddr::V4(v4)) = resolve(target) else {
        return out.error("parse", &io::Error::from_raw_os_error(libc::EINVAL));
    };
    let fd = match raw_socket(libc::AF_INET, libc::SOCK_STREAM, 0) {
        Ok(fd) => fd,
        Err(e) => return out.error("socket", &e),
    };
    // Port 1 on the sandbox's own loopback: nothing listens, so this fails fast.
    let first = connect_raw(fd.as_raw_fd(), "127.0.0.1:1".parse().expect("literal"));
    out.field("first", if first.is_ok() { "ok" } else { "refused" });
    let unspec = libc::sockaddr {
        sa_family: libc::AF_UNSPEC as libc::sa_family_t,
        sa_data: [0; 14],
    };
    // SAFETY: a valid sockaddr with AF_UNSPEC dissolves the association.
    unsafe {
        libc::connect(
            fd.as_raw_fd(),
            &raw const unspec,
            size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    };
    match connect_raw(fd.as_raw_fd(), v4) {
        Ok(()) => {
            out.field("result", "ok");
            let stream = TcpStream::from(fd);
            if let Ok(peer) = stream.peer_addr() {
                out.field("peer", &peer.to_string());
            }
            out
        }
        Err(e) => out.error("connect", &e),
    }
}

/// `io-uring-connect ADDR:PORT`, `IORING_OP_CONNECT`: a connect that does not go through the
/// connect(2) system call.
pub fn io_uring_connect(target: &str) -> Json {
    let mut out = Json::new("io-uring-connect", target);
    let Ok(SocketAddr::V4(v4)) = resolve(target) else {
        return out.error("parse", &io::Error::from_raw_os_error(libc::EINVAL));
    };
    let fd = match raw_socket(libc::AF_INET, libc::SOCK_STREAM, 0) {
        Ok(fd) => fd,
        Err(e) => return out.error("socket", &e),
    };
    let mut ring = match io_uring::IoUring::new(2) {
        Ok(r) => r,
        Err(e) => return out.error("io_uring_setup", &e),
    };
    let sa = sockaddr_in(v4);
    let entry = io_uring::opcode::Connect::new(
        io_uring::types::Fd(fd.as_raw_fd()),
        (&raw const sa).cast(),
        size_of::<libc::sockaddr_in>() as libc::socklen_t,
    )
    .build();
    // SAFETY: `sa` and `fd` outlive the submission: we wait for its completion below.
    if let Err(e) = unsafe { ring.submission().push(&entry) } {
        return out.error("push", &io::Error::other(e.to_string()));
    }
    if let Err(e) = ring.submit_and_wait(1) {
        return out.error("io_uring_enter", &e);
    }
    let Some(cqe) = ring.completion().next() else {
        return out.error("completion", &io::Error::from_raw_os_error(libc::EIO));
    };
    if cqe.result() < 0 {
        return out.error("connect", &io::Error::from_raw_os_error(-cqe.result()));
    }
    out.field("result", "ok");
    if let Ok(peer) = TcpStream::from(fd).peer_addr() {
        out.field("peer", &peer.to_string());
    }
    out
}
