//! The DNS actions: one question over UDP or TCP, built and parsed by hand.
//!
//! ```text
//! dns SERVER:PORT NAME TYPE       one query over UDP (unconnected socket); `from` is the
//!                                 address the reply came from, as the application sees it
//! dns-tcp SERVER:PORT NAME TYPE   the same over TCP
//! ```
//!
//! TYPE is one of A, MX, TXT, AAAA, SRV, HTTPS, ANY. The line has `rcode`, `answers` and
//! `truncated`.

use std::{
    io,
    net::{SocketAddr, TcpStream, UdpSocket},
};

use crate::{
    json::Json,
    net::{TIMEOUT, resolve},
};

/// `dns SERVER:PORT NAME TYPE`, or `dns-tcp` (`over_tcp`): one DNS question; prints the
/// response code, answer count, truncation bit and, for UDP, the address the reply came from
/// (as the application sees it).
pub fn query(target: &str, name: &str, rtype: &str, over_tcp: bool) -> Json {
    let action = if over_tcp { "dns-tcp" } else { "dns" };
    let mut out = Json::new(action, target);
    out.field("name", name);
    out.field("type", rtype);
    let qtype: u16 = match rtype {
        "A" => 1,
        "MX" => 15,
        "TXT" => 16,
        "AAAA" => 28,
        "SRV" => 33,
        "HTTPS" => 65,
        "ANY" => 255,
        _ => return out.error("parse", &io::Error::from_raw_os_error(libc::EINVAL)),
    };
    let server = match resolve(target) {
        Ok(a) => a,
        Err(e) => return out.error("resolve", &e),
    };
    let mut query = vec![0x45, 0x67, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.push(0);
    query.extend_from_slice(&qtype.to_be_bytes());
    query.extend_from_slice(&1u16.to_be_bytes());
    let reply = if over_tcp {
        dns_tcp(server, &query)
    } else {
        dns_udp(server, &query).map(|(reply, from)| {
            out.field("from", &from.to_string());
            reply
        })
    };
    let reply = match reply {
        Ok(r) => r,
        Err((stage, e)) => return out.error(stage, &e),
    };
    if reply.len() < 12 || reply[0..2] != [0x45, 0x67] {
        return out.error("parse", &io::Error::from_raw_os_error(libc::EBADMSG));
    }
    let rcode = match reply[3] & 0x0f {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        _ => "OTHER",
    };
    out.field("result", "ok");
    out.field("rcode", rcode);
    out.raw(
        "answers",
        &u16::from_be_bytes([reply[6], reply[7]]).to_string(),
    );
    out.raw(
        "truncated",
        if reply[2] & 0x02 != 0 {
            "true"
        } else {
            "false"
        },
    );
    out
}

/// `query` over UDP from an unconnected socket: the reply and where it came from.
fn dns_udp(
    server: SocketAddr,
    query: &[u8],
) -> Result<(Vec<u8>, SocketAddr), (&'static str, io::Error)> {
    let any = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let sock = UdpSocket::bind(any).map_err(|e| ("bind", e))?;
    sock.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| ("setsockopt", e))?;
    sock.send_to(query, server).map_err(|e| ("sendto", e))?;
    let mut buf = [0u8; 4096];
    let (n, from) = sock.recv_from(&mut buf).map_err(|e| ("recvfrom", e))?;
    Ok((buf[..n].to_vec(), from))
}

/// `query` over TCP, length-prefixed: the reply.
fn dns_tcp(server: SocketAddr, query: &[u8]) -> Result<Vec<u8>, (&'static str, io::Error)> {
    use std::io::{Read as _, Write as _};
    let mut stream = TcpStream::connect_timeout(&server, TIMEOUT).map_err(|e| ("connect", e))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(|e| ("setsockopt", e))?;
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    stream.write_all(&framed).map_err(|e| ("send", e))?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).map_err(|e| ("recv", e))?;
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut reply).map_err(|e| ("recv", e))?;
    Ok(reply)
}
