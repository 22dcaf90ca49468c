//! The UDP actions: one datagram, from an unconnected or a connected socket.
//!
//! ```text
//! udp ADDR:PORT           unconnected sendto()
//! udp-connect ADDR:PORT   connect(), then send()
//! ```

use std::net::{SocketAddr, UdpSocket};

use crate::{json::Json, net::resolve};

/// `udp ADDR:PORT` (`connect` false) or `udp-connect ADDR:PORT`: one datagram; `bytes` sent.
pub fn send(target: &str, connect: bool) -> Json {
    let mut out = Json::new(if connect { "udp-connect" } else { "udp" }, target);
    let addr = match resolve(target) {
        Ok(addr) => addr,
        Err(e) => return out.error("resolve", &e),
    };
    let any: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .expect("valid literal");
    let sock = match UdpSocket::bind(any) {
        Ok(s) => s,
        Err(e) => return out.error("bind", &e),
    };
    let payload = b"egressd-probe";
    let sent = if connect {
        if let Err(e) = sock.connect(addr) {
            return out.error("connect", &e);
        }
        sock.send(payload)
    } else {
        sock.send_to(payload, addr)
    };
    match sent {
        Ok(n) => {
            out.field("result", "ok");
            out.field("bytes", &n.to_string());
            out
        }
        Err(e) => out.error(if connect { "send" } else { "sendto" }, &e),
    }
}
