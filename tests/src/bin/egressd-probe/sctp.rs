//! `sctp ADDR:PORT`: a connect over SCTP, a transport other than TCP and UDP.

use std::{io, net::SocketAddr, os::fd::AsRawFd as _};

use crate::{
    json::Json,
    net::{connect_raw, raw_socket, resolve},
};

/// `sctp ADDR:PORT`: socket(IPPROTO_SCTP), then connect().
pub fn connect(target: &str) -> Json {
    let mut out = Json::new("sctp", target);
    let Ok(SocketAddr::V4(v4)) = resolve(target) else {
        return out.error("parse", &io::Error::from_raw_os_error(libc::EINVAL));
    };
    let fd = match raw_socket(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_SCTP) {
        Ok(fd) => fd,
        Err(e) => return out.error("socket", &e),
    };
    match connect_raw(fd.as_raw_fd(), v4) {
        Ok(()) => {
            out.field("result", "ok");
            out
        }
        Err(e) => out.error("connect", &e),
    }
}
