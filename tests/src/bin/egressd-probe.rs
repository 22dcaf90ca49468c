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
//! egressd-probe sse https://HOST[:PORT]/PATH         GET a server-sent event stream; each event's arrival time
//! egressd-probe websocket wss://HOST[:PORT]/PATH MESSAGE   WebSocket handshake, send MESSAGE, read the echo
//! egressd-probe h2-authorities https://HOST[:PORT]/PATH OTHER_HOST
//!                                                   one TLS+h2 connection, GET the URL, then the same
//!                                                   path with `:authority` OTHER_HOST on it
//! egressd-probe h2-idle https://HOST[:PORT]/PATH WAIT_S
//!                                                   one TLS+h2 connection, GET the URL, then wait
//!                                                   silently for the server to close it
//! egressd-probe slow ADDR:PORT HEX DRIP_MS WAIT_S     a slow client (see `limits.rs`)
//! egressd-probe hold ADDR:PORT N WAIT_MS              N idle connections held open
//! egressd-probe load ADDR:PORT HOST N ROUNDS          N concurrent HTTP requests per round
//! egressd-probe sustain ADDR:PORT HOST N SECONDS      N kept-alive connections, requests for SECONDS
//! egressd-probe unix-connect PATH                   Unix stream connect (`@name`: abstract name)
//! egressd-probe unix-sendto PATH                    one datagram from an unconnected Unix socket
//! egressd-probe vsock CID:PORT                      AF_VSOCK connect (see `doors.rs`)
//! egressd-probe socket FAMILY                       socket() of another family (number or name)
//! egressd-probe tiocsti TEXT                        push TEXT into the terminal on stdin
//! egressd-probe keyctl                              the session keyring's id (no target)
//! egressd-probe bpf                                 a one-entry BPF array map (no target)
//! ```
//!
//! The HTTPS actions (`sse`, `websocket`, `h2-authorities`, `h2-idle`) trust exactly the CA bundle in
//! `SSL_CERT_FILE` (the one egressd puts in the sandbox), resolve the host through the system
//! resolver, send the agent's own placeholder credentials (`authorization: Bearer
//! agent-placeholder`, `api-key: agent-placeholder`) so tests can check they are stripped, and
//! give up after 20 s. Their errors carry `stage` and `message`, no `errno`.
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

#[path = "egressd-probe/doors.rs"]
mod doors;
#[path = "egressd-probe/limits.rs"]
mod limits;
#[path = "egressd-probe/unix.rs"]
mod unix;

const TIMEOUT: Duration = Duration::from_secs(5);
const USAGE: &str = "usage: egressd-probe (tcp ADDR:PORT [--v6only-mapped] | udp ADDR:PORT | udp-connect ADDR:PORT | icmp ADDR | tcp-fastopen ADDR:PORT | tcp-reconnect ADDR:PORT | io-uring-connect ADDR:PORT | sctp ADDR:PORT | packet IFACE | raw ADDR | dns SERVER:PORT NAME TYPE | dns-tcp SERVER:PORT NAME TYPE | sse URL | websocket URL MESSAGE | h2-authorities URL OTHER_HOST | h2-idle URL WAIT_S | slow ADDR:PORT HEX DRIP_MS WAIT_S | hold ADDR:PORT N WAIT_MS | load ADDR:PORT HOST N ROUNDS | sustain ADDR:PORT HOST N SECONDS | unix-connect PATH | unix-sendto PATH | vsock CID:PORT | socket FAMILY | tiocsti TEXT | keyctl | bpf)...";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    if args.is_empty() {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let mut i = 0;
    while i < args.len() {
        let action = args[i].as_str();
        if let Some(line) = doors::untargeted(action) {
            println!("{line}");
            i += 1;
            continue;
        }
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
            "vsock" => doors::vsock(target),
            "socket" => doors::socket(target),
            "tiocsti" => doors::tiocsti(target),
            "unix-connect" => unix::connect(target),
            "unix-sendto" => unix::sendto(target),
            "dns" | "dns-tcp" => {
                let (Some(name), Some(rtype)) = (args.get(i), args.get(i + 1)) else {
                    eprintln!("{action}: needs SERVER:PORT NAME TYPE\n{USAGE}");
                    return ExitCode::from(2);
                };
                i += 2;
                dns(action, target, name, rtype)
            }
            "sse" => https::sse(target),
            "websocket" | "h2-authorities" | "h2-idle" => {
                let Some(extra) = args.get(i) else {
                    eprintln!("{action}: needs a second argument\n{USAGE}");
                    return ExitCode::from(2);
                };
                i += 1;
                match action {
                    "websocket" => https::websocket(target, extra),
                    "h2-idle" => https::h2_idle(target, extra),
                    _ => https::h2_authorities(target, extra),
                }
            }
            "slow" | "hold" | "load" | "sustain" => {
                let extra = if action == "hold" { 2 } else { 3 };
                let Some(more) = args.get(i..i + extra) else {
                    eprintln!("{action}: needs {extra} more arguments\n{USAGE}");
                    return ExitCode::from(2);
                };
                i += extra;
                match action {
                    "slow" => limits::slow(target, &more[0], &more[1], &more[2]),
                    "hold" => limits::hold(target, &more[0], &more[1]),
                    "sustain" => limits::sustain(target, &more[0], &more[1], &more[2]),
                    _ => limits::load(target, &more[0], &more[1], &more[2]),
                }
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

    /// An error that is not an errno (the HTTPS actions).
    fn failed(mut self, stage: &str, message: &str) -> Self {
        self.field("result", "error");
        self.field("stage", stage);
        self.field("message", message);
        self
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

/// The HTTPS actions: async (tokio, hyper, rustls), each on its own current-thread runtime.
mod https {
    use std::{future::Future, sync::Arc, time::Instant};

    use bytes::Bytes;
    use futures_util::{SinkExt as _, StreamExt as _};
    use http_body_util::{BodyExt as _, Empty};
    use hyper::Request;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::net::TcpStream;
    use tokio_rustls::client::TlsStream;
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest as _};

    use super::Json;

    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

    /// The agent's own credentials: egressd must strip them.
    const AGENT_HEADERS: [(&str, &str); 2] = [
        ("authorization", "Bearer agent-placeholder"),
        ("api-key", "agent-placeholder"),
    ];

    /// A failed step: `(stage, message)`.
    type Failure = (&'static str, String);

    fn at<E: std::fmt::Display>(stage: &'static str) -> impl FnOnce(E) -> Failure {
        move |e| (stage, e.to_string())
    }

    /// Runs `work` on a fresh current-thread runtime, with a deadline.
    fn run(work: impl Future<Output = Result<(), Failure>>) -> Result<(), Failure> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(at("runtime"))?;
        rt.block_on(async {
            tokio::time::timeout(TIMEOUT, work)
                .await
                .unwrap_or_else(|_| Err(("timeout", format!("no result within {TIMEOUT:?}"))))
        })
    }

    /// The line: what `work` recorded, then `result`, or the failure.
    fn finish(mut out: Json, result: Result<(), Failure>) -> Json {
        match result {
            Ok(()) => {
                out.field("result", "ok");
                out
            }
            Err((stage, message)) => out.failed(stage, &message),
        }
    }

    /// `scheme://host[:port]/path?query`, split.
    struct Target {
        host: String,
        port: u16,
        path: String,
    }

    impl Target {
        fn parse(url: &str, scheme: &str) -> Result<Self, Failure> {
            let parsed = url::Url::parse(url).map_err(at("parse"))?;
            if parsed.scheme() != scheme {
                return Err(("parse", format!("{url}: the scheme must be {scheme}")));
            }
            let host = parsed
                .host_str()
                .ok_or(("parse", format!("{url}: no host")))?
                .to_owned();
            let mut path = parsed.path().to_owned();
            if let Some(query) = parsed.query() {
                path = format!("{path}?{query}");
            }
            Ok(Self {
                host,
                port: parsed.port_or_known_default().unwrap_or(443),
                path,
            })
        }

        /// `host`, or `host:port` off 443.
        fn authority(&self, host: &str) -> String {
            if self.port == 443 {
                host.to_owned()
            } else {
                format!("{host}:{}", self.port)
            }
        }
    }

    /// TCP, then TLS trusting only `SSL_CERT_FILE`, offering `alpn`; returns the stream and
    /// the protocol the server chose.
    async fn tls_connect(
        target: &Target,
        alpn: &[&[u8]],
    ) -> Result<(TlsStream<TcpStream>, String), Failure> {
        use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};
        let bundle = std::env::var_os("SSL_CERT_FILE")
            .ok_or(("trust", "SSL_CERT_FILE is not set".to_owned()))?;
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(&bundle)
            .map_err(at("trust"))?
            .filter_map(Result::ok);
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(("trust", "no certificate in SSL_CERT_FILE".to_owned()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(at("tls"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(at("connect"))?;
        let name = ServerName::try_from(target.host.clone()).map_err(at("parse"))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(at("tls"))?;
        let chosen = tls
            .get_ref()
            .1
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        Ok((tls, chosen))
    }

    fn get(uri: String) -> Request<Empty<Bytes>> {
        let mut builder = Request::get(uri).header("accept", "text/event-stream, */*");
        for (name, value) in AGENT_HEADERS {
            builder = builder.header(name, value);
        }
        builder
            .body(Empty::new())
            .expect("a valid request from valid parts")
    }

    /// `sse URL`: `status`, `headers_ms` (response head, from sending the request), `events`
    /// (each event's `data:` value) and `arrivals_ms` (when the bytes completing each event
    /// were read), `total_ms`.
    pub(super) fn sse(url: &str) -> Json {
        let mut out = Json::new("sse", url);
        let result = run(sse_work(&mut out, url));
        finish(out, result)
    }

    async fn sse_work(out: &mut Json, url: &str) -> Result<(), Failure> {
        let target = Target::parse(url, "https")?;
        let (tls, _) = tls_connect(&target, &[b"http/1.1"]).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(at("http"))?;
        tokio::spawn(conn);
        let mut req = get(target.path.clone());
        req.headers_mut().insert(
            hyper::header::HOST,
            target
                .authority(&target.host)
                .parse()
                .map_err(at("parse"))?,
        );
        let start = Instant::now();
        let resp = sender.send_request(req).await.map_err(at("request"))?;
        out.raw("status", &resp.status().as_u16().to_string());
        out.raw("headers_ms", &start.elapsed().as_millis().to_string());
        let mut body = resp.into_body();
        let (mut buf, mut events, mut arrivals) = (Vec::new(), Vec::new(), Vec::new());
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(at("body"))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let now = start.elapsed().as_millis();
            buf.extend_from_slice(&data);
            while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = buf.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&event);
                let data: Vec<&str> = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim)
                    .collect();
                events.push(format!("\"{}\"", super::escape(&data.join("\n"))));
                arrivals.push(now.to_string());
            }
        }
        out.raw("events", &format!("[{}]", events.join(",")));
        out.raw("arrivals_ms", &format!("[{}]", arrivals.join(",")));
        out.raw("total_ms", &start.elapsed().as_millis().to_string());
        Ok(())
    }

    /// `websocket URL MESSAGE`: `status` of the handshake, `echoed_in_101` (a test
    /// upstream's `x-echo-credentials`), `echo` (the first text message
    /// back).
    pub(super) fn websocket(url: &str, message: &str) -> Json {
        let mut out = Json::new("websocket", url);
        let result = run(websocket_work(&mut out, url, message));
        finish(out, result)
    }

    async fn websocket_work(out: &mut Json, url: &str, message: &str) -> Result<(), Failure> {
        let target = Target::parse(url, "wss")?;
        let (tls, _) = tls_connect(&target, &[b"http/1.1"]).await?;
        let mut req = url.into_client_request().map_err(at("parse"))?;
        for (name, value) in AGENT_HEADERS {
            req.headers_mut()
                .insert(name, value.parse().map_err(at("parse"))?);
        }
        let (mut ws, resp) = tokio_tungstenite::client_async(req, tls)
            .await
            .map_err(at("handshake"))?;
        out.raw("status", &resp.status().as_u16().to_string());
        if let Some(echoed) = resp.headers().get("x-echo-credentials") {
            out.field("echoed_in_101", &String::from_utf8_lossy(echoed.as_bytes()));
        }
        ws.send(Message::text(message)).await.map_err(at("send"))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    out.field("echo", text.as_str());
                    break;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(other)) => {
                    return Err(("receive", format!("not a text message: {other:?}")));
                }
                Some(Err(e)) => return Err(("receive", e.to_string())),
                None => return Err(("receive", "closed before the echo".to_owned())),
            }
        }
        let _ = ws.close(None).await;
        Ok(())
    }

    /// `h2-authorities URL OTHER_HOST`: `alpn`, then `statuses` of the two requests sent on
    /// one h2 connection (`:authority` the URL's host, then OTHER_HOST).
    pub(super) fn h2_authorities(url: &str, other_host: &str) -> Json {
        let mut out = Json::new("h2-authorities", url);
        let result = run(h2_authorities_work(&mut out, url, other_host));
        finish(out, result)
    }

    async fn h2_authorities_work(
        out: &mut Json,
        url: &str,
        other_host: &str,
    ) -> Result<(), Failure> {
        let target = Target::parse(url, "https")?;
        out.field("other", other_host);
        let (tls, alpn) = tls_connect(&target, &[b"h2"]).await?;
        out.field("alpn", &alpn);
        if alpn != "h2" {
            return Err(("alpn", "the server did not choose h2".to_owned()));
        }
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(at("http"))?;
        tokio::spawn(conn);
        let mut statuses = Vec::new();
        for host in [target.host.as_str(), other_host] {
            let uri = format!("https://{}{}", target.authority(host), target.path);
            sender.ready().await.map_err(at("request"))?;
            let resp = sender.send_request(get(uri)).await.map_err(at("request"))?;
            statuses.push(resp.status().as_u16().to_string());
            resp.into_body().collect().await.map_err(at("body"))?;
        }
        out.raw("statuses", &format!("[{}]", statuses.join(",")));
        Ok(())
    }

    /// `h2-idle URL WAIT_S`: one h2 connection, GET the URL, then send nothing and wait up to
    /// WAIT_S for the server to end the connection: `status`, then `ended`: `closed` (with
    /// `after_ms` from the end of the response) or `open`.
    pub(super) fn h2_idle(url: &str, wait_s: &str) -> Json {
        let mut out = Json::new("h2-idle", url);
        let result = run(h2_idle_work(&mut out, url, wait_s));
        finish(out, result)
    }

    async fn h2_idle_work(out: &mut Json, url: &str, wait_s: &str) -> Result<(), Failure> {
        let wait = wait_s
            .parse::<u64>()
            .map_err(|e| ("parse", format!("WAIT_S: {e}")))?;
        let target = Target::parse(url, "https")?;
        let (tls, alpn) = tls_connect(&target, &[b"h2"]).await?;
        if alpn != "h2" {
            return Err(("alpn", "the server did not choose h2".to_owned()));
        }
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(at("http"))?;
        let mut conn = tokio::spawn(conn);
        let uri = format!("https://{}{}", target.authority(&target.host), target.path);
        sender.ready().await.map_err(at("request"))?;
        let resp = sender.send_request(get(uri)).await.map_err(at("request"))?;
        out.raw("status", &resp.status().as_u16().to_string());
        resp.into_body().collect().await.map_err(at("body"))?;
        let done = std::time::Instant::now();
        match tokio::time::timeout(std::time::Duration::from_secs(wait), &mut conn).await {
            Ok(_) => {
                out.field("ended", "closed");
                out.raw("after_ms", &done.elapsed().as_millis().to_string());
            }
            Err(_) => out.field("ended", "open"),
        }
        Ok(())
    }
}
