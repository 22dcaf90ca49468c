//! `egressd-probe`: network actions run inside an egressd sandbox, one JSON line each.
//!
//! ```text
//! egressd-probe tcp ADDR:PORT [--v6only-mapped]   connect; print the result and getpeername()
//! egressd-probe udp ADDR:PORT                     unconnected sendto()
//! egressd-probe udp-connect ADDR:PORT             connect(), then send()
//! egressd-probe icmp ADDR                         echo request via a ping socket and a raw socket
//! egressd-probe tcp-fastopen ADDR:PORT             sendto(MSG_FASTOPEN): connect and data in one call
//! egressd-probe tcp-reconnect ADDR:PORT             connect to 127.0.0.1:1 (refused), AF_UNSPEC, then ADDR
//! egressd-probe io-uring-connect ADDR:PORT          connect through io_uring (IORING_OP_CONNECT)
//! egressd-probe sctp ADDR:PORT                      SCTP connect
//! egressd-probe packet lo                           AF_PACKET socket and one frame on the interface
//! egressd-probe raw ADDR                            raw IPv4 socket (IPPROTO_RAW), one packet
//! egressd-probe dns SERVER:PORT NAME TYPE          one DNS query over UDP (unconnected socket)
//! egressd-probe dns-tcp SERVER:PORT NAME TYPE      the same over TCP
//! ```
//!
//! Several actions may follow one another on one command line. Every line has `action`,
//! `target` and `result` (`ok`, `error`, `reply`, `no-reply`); errors carry `stage` (the
//! syscall that failed), `errno` (its name, such as `EPERM`) and `code`. `--v6only-mapped` dials
//! an IPv4 target as `::ffff:a.b.c.d` from an `AF_INET6` socket. The probe exits 0 unless its
//! arguments are wrong, so tests judge it by its JSON only. It sends a few bytes at most and
//! waits at most a few seconds per action.

use std::{
    env, io,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket},
    process::ExitCode,
    time::Duration,
};

const TIMEOUT: Duration = Duration::from_secs(5);
const USAGE: &str = "usage: egressd-probe (tcp ADDR:PORT [--v6only-mapped] | udp ADDR:PORT | udp-connect ADDR:PORT | icmp ADDR | tcp-fastopen ADDR:PORT | tcp-reconnect ADDR:PORT | io-uring-connect ADDR:PORT | sctp ADDR:PORT | packet IFACE | raw ADDR | dns SERVER:PORT NAME TYPE | dns-tcp SERVER:PORT NAME TYPE)...";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    if args.is_empty() {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let mut i = 0;
    while i < args.len() {
        let action = args[i].as_str();
        let Some(target) = args.get(i + 1) else {
            eprintln!("{action}: missing target\n{USAGE}");
            return ExitCode::from(2);
        };
        i += 2;
        let line = match action {
            "tcp" => {
                let mapped = args.get(i).is_some_and(|a| a == "--v6only-mapped");
                if mapped {
                    i += 1;
                }
                tcp(target, mapped)
            }
            "udp" => udp(target, false),
            "udp-connect" => udp(target, true),
            "icmp" => icmp(target),
            "tcp-fastopen" => tcp_fastopen(target),
            "tcp-reconnect" => tcp_reconnect(target),
            "io-uring-connect" => io_uring_connect(target),
            "sctp" => sctp(target),
            "packet" => packet(target),
            "raw" => raw(target),
            "dns" | "dns-tcp" => {
                let (Some(name), Some(rtype)) = (args.get(i), args.get(i + 1)) else {
                    eprintln!("{action}: needs SERVER:PORT NAME TYPE\n{USAGE}");
                    return ExitCode::from(2);
                };
                i += 2;
                dns(action, target, name, rtype)
            }
            other => {
                eprintln!("unknown action {other:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        };
        println!("{line}");
    }
    ExitCode::SUCCESS
}

fn tcp(target: &str, mapped: bool) -> Json {
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

/// TCP Fast Open: `sendto(MSG_FASTOPEN)` on an unconnected socket connects and sends in one
/// call, a path that skips `connect()` (the redirect must still apply).
fn tcp_fastopen(target: &str) -> Json {
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
    let stream = unsafe { <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let dst = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
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

/// A raw socket (no `connect()` hook sees it) of `domain`/`ty`/`proto`, or the errno.
fn raw_socket(
    domain: libc::c_int,
    ty: libc::c_int,
    proto: libc::c_int,
) -> Result<std::os::fd::OwnedFd, io::Error> {
    // SAFETY: plain socket(2); the descriptor is owned by the returned OwnedFd.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

fn sockaddr_in(v4: std::net::SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn connect_raw(fd: libc::c_int, v4: std::net::SocketAddrV4) -> io::Result<()> {
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

/// Connect somewhere, dissolve the association with `AF_UNSPEC`, connect again to `target`:
/// the second connect must be redirected like a first one.
fn tcp_reconnect(target: &str) -> Json {
    use std::os::fd::AsRawFd as _;
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

/// `IORING_OP_CONNECT`: a connect that does not go through the connect(2) system call.
fn io_uring_connect(target: &str) -> Json {
    use std::os::fd::AsRawFd as _;
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

fn sctp(target: &str) -> Json {
    use std::os::fd::AsRawFd as _;
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

/// An `AF_PACKET` socket bypasses the IP layer (and cgroup_skb): it needs `CAP_NET_RAW`.
fn packet(iface: &str) -> Json {
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

/// A raw IPv4 socket sending one hand-made UDP packet to `target`.
fn raw(target: &str) -> Json {
    use std::os::fd::AsRawFd as _;
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
    let sa = sockaddr_in(std::net::SocketAddrV4::new(ip, 0));
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

/// One DNS question; prints the response code, answer count, truncation bit and, for UDP,
/// the address the reply came from (as the application sees it).
fn dns(action: &str, target: &str, name: &str, rtype: &str) -> Json {
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
    let reply = if action == "dns-tcp" {
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

fn udp(target: &str, connect: bool) -> Json {
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

/// Try an ICMP echo first through an unprivileged ping socket, then through a raw socket. The
/// line's `result` is `reply` if either got an answer; `attempts` lists both.
fn icmp(target: &str) -> Json {
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

/// `ADDR:PORT`, `[V6]:PORT` or `HOST:PORT` (the last through the system resolver).
fn resolve(target: &str) -> io::Result<SocketAddr> {
    if let Ok(addr) = target.parse() {
        return Ok(addr);
    }
    target
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EADDRNOTAVAIL))
}

fn errno_name(e: &io::Error) -> &'static str {
    let Some(code) = e.raw_os_error() else {
        return "EOTHER";
    };
    match code {
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EINPROGRESS => "EINPROGRESS",
        libc::EAGAIN => "EAGAIN",
        libc::EINVAL => "EINVAL",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::ESOCKTNOSUPPORT => "ESOCKTNOSUPPORT",
        libc::ENOTCONN => "ENOTCONN",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::ENOBUFS => "ENOBUFS",
        libc::ENOENT => "ENOENT",
        _ => "EOTHER",
    }
}

/// A flat JSON object built field by field (std only; values are escaped strings).
struct Json {
    fields: Vec<String>,
}

impl Json {
    fn new(action: &str, target: &str) -> Self {
        let mut json = Self { fields: Vec::new() };
        json.field("action", action);
        json.field("target", target);
        json
    }

    fn field(&mut self, key: &str, value: &str) {
        self.fields.push(format!("\"{key}\":\"{}\"", escape(value)));
    }

    fn raw(&mut self, key: &str, json: &str) {
        self.fields.push(format!("\"{key}\":{json}"));
    }

    fn error(mut self, stage: &str, e: &io::Error) -> Self {
        self.field("result", "error");
        self.field("stage", stage);
        self.field("errno", errno_name(e));
        self.raw("code", &e.raw_os_error().unwrap_or(0).to_string());
        self.field("message", &e.to_string());
        self
    }
}

impl std::fmt::Display for Json {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{{{}}}", self.fields.join(","))
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}
