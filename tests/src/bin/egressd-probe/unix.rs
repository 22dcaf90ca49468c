//! The Unix-socket actions: what egressd's `cgroup/connect_unix` and `cgroup/sendmsg_unix`
//! hooks let through.
//!
//! ```text
//! unix-connect PATH    stream connect() to PATH (`@name`: the abstract name `name`)
//! unix-sendto PATH     one datagram from an unbound, unconnected socket: sendto() PATH
//! ```
//!
//! A refused call fails with `EPERM` at stage `connect` or `sendto`; a path nothing listens
//! on fails with `ENOENT` or `ECONNREFUSED` instead, after the hooks let it through.

use std::{
    io,
    os::{
        linux::net::SocketAddrExt as _,
        unix::net::{SocketAddr, UnixDatagram, UnixStream},
    },
    time::Duration,
};

use crate::json::Json;

/// How long a stream connect may block (a listener whose backlog is full) before it fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `unix-connect PATH`.
pub fn connect(target: &str) -> Json {
    let mut out = Json::new("unix-connect", target);
    let addr = match address(target) {
        Ok(addr) => addr,
        Err(e) => return out.error("address", &e),
    };
    match connect_bounded(&addr) {
        Ok(_stream) => {
            out.field("result", "ok");
            out
        }
        Err(e) => out.error("connect", &e),
    }
}

/// `unix-sendto PATH`.
pub fn sendto(target: &str) -> Json {
    let mut out = Json::new("unix-sendto", target);
    let addr = match address(target) {
        Ok(addr) => addr,
        Err(e) => return out.error("address", &e),
    };
    let socket = match UnixDatagram::unbound() {
        Ok(socket) => socket,
        Err(e) => return out.error("socket", &e),
    };
    // A full receive queue must not block the probe.
    if let Err(e) = socket.set_nonblocking(true) {
        return out.error("socket", &e);
    }
    match socket.send_to_addr(b"egressd-probe", &addr) {
        Ok(_) => {
            out.field("result", "ok");
            out
        }
        Err(e) => out.error("sendto", &e),
    }
}

/// `@name` is the abstract name `name`; anything else a path (relative ones as given).
fn address(target: &str) -> io::Result<SocketAddr> {
    match target.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(target),
    }
}

/// A stream connect that gives up after [`CONNECT_TIMEOUT`]: it runs on a thread, and a
/// connect still blocked then is reported as `ETIMEDOUT` (the thread ends with the probe).
fn connect_bounded(addr: &SocketAddr) -> io::Result<UnixStream> {
    let (tx, rx) = std::sync::mpsc::channel();
    let addr = addr.clone();
    std::thread::spawn(move || {
        let _ = tx.send(UnixStream::connect_addr(&addr));
    });
    rx.recv_timeout(CONNECT_TIMEOUT)
        .unwrap_or_else(|_| Err(io::Error::from_raw_os_error(libc::ETIMEDOUT)))
}
