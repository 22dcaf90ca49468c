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
//! egressd-probe transfer ADDR:PORT SNI UP DOWN [--slow-read-ms N] [--reset-after BYTES] [--no-shutdown] [--eager] [--idle-ms N]
//!                                                   one byte-exact transfer through the relay
//! egressd-probe transfers ADDR:PORT SNI COUNT CONCURRENCY UP DOWN
//!                                                   COUNT of them, CONCURRENCY at a time (see `transfer.rs`)
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
//! waits at most a few seconds per action, except `transfer` and `transfers`, which send what
//! they are told and give up after 30 s (20 s) without progress.
//!
//! `main` parses one action at a time ([`cli::Action::parse_next`]) and runs it: the lines of
//! the actions before a wrong argument are printed before the usage error. Each action lives
//! in its module below; `json` writes the lines, `net` holds what the socket actions share.

use std::env;

use cli::Action;
use json::Json;

#[path = "egressd-probe/cli.rs"]
mod cli;
#[path = "egressd-probe/dns.rs"]
mod dns;
#[path = "egressd-probe/doors.rs"]
mod doors;
#[path = "egressd-probe/https.rs"]
mod https;
#[path = "egressd-probe/icmp.rs"]
mod icmp;
#[path = "egressd-probe/json.rs"]
mod json;
#[path = "egressd-probe/limits.rs"]
mod limits;
#[path = "egressd-probe/net.rs"]
mod net;
#[path = "egressd-probe/raw.rs"]
mod raw;
#[path = "egressd-probe/sctp.rs"]
mod sctp;
#[path = "egressd-probe/tcp.rs"]
mod tcp;
#[path = "egressd-probe/transfer.rs"]
mod transfer;
#[path = "egressd-probe/udp.rs"]
mod udp;
#[path = "egressd-probe/unix.rs"]
mod unix;

fn main() {
    let args: Vec<String> = env::args().skip(1).collect();
    let mut rest = args.as_slice();
    loop {
        let (action, next) = Action::parse_next(rest).unwrap_or_else(|e| e.exit());
        println!("{}", run(action));
        rest = next;
        if rest.is_empty() {
            return;
        }
    }
}

/// Runs `action`: its line (`load` and `sustain` print their rounds' lines first).
fn run(action: Action) -> Json {
    match action {
        Action::Tcp {
            target,
            v6only_mapped,
        } => tcp::connect(&target, v6only_mapped),
        Action::TcpFastopen { target } => tcp::fastopen(&target),
        Action::TcpReconnect { target } => tcp::reconnect(&target),
        Action::IoUringConnect { target } => tcp::io_uring_connect(&target),
        Action::Udp { target } => udp::send(&target, false),
        Action::UdpConnect { target } => udp::send(&target, true),
        Action::Icmp { target } => icmp::ping(&target),
        Action::Sctp { target } => sctp::connect(&target),
        Action::Packet { iface } => raw::packet(&iface),
        Action::Raw { target } => raw::ipv4(&target),
        Action::Dns {
            server,
            name,
            rtype,
        } => dns::query(&server, &name, &rtype, false),
        Action::DnsTcp {
            server,
            name,
            rtype,
        } => dns::query(&server, &name, &rtype, true),
        Action::Sse { url } => https::sse(&url),
        Action::Websocket { url, message } => https::websocket(&url, &message),
        Action::H2Authorities { url, other_host } => https::h2_authorities(&url, &other_host),
        Action::H2Idle { url, wait_s } => https::h2_idle(&url, &wait_s),
        Action::Slow {
            target,
            hex,
            drip_ms,
            wait_s,
        } => limits::slow(&target, &hex, &drip_ms, &wait_s),
        Action::Hold { target, n, wait_ms } => limits::hold(&target, &n, &wait_ms),
        Action::Load {
            target,
            host,
            n,
            rounds,
        } => limits::load(&target, &host, &n, &rounds),
        Action::Sustain {
            target,
            host,
            n,
            seconds,
        } => limits::sustain(&target, &host, &n, &seconds),
        Action::Transfer {
            target,
            sni,
            up,
            down,
            slow_read_ms,
            reset_after,
            no_shutdown,
            eager,
            idle_ms,
        } => {
            let flags = transfer::Flags {
                slow_read_ms,
                reset_after,
                no_shutdown,
                eager,
                idle_ms,
            };
            transfer::transfer(&target, &sni, &up, &down, &flags)
        }
        Action::Transfers {
            target,
            sni,
            count,
            concurrency,
            up,
            down,
        } => transfer::transfers(&target, &sni, &count, &concurrency, &up, &down),
        Action::UnixConnect { path } => unix::connect(&path),
        Action::UnixSendto { path } => unix::sendto(&path),
        Action::Vsock { target } => doors::vsock(&target),
        Action::Socket { family } => doors::socket(&family),
        Action::Tiocsti { text } => doors::tiocsti(&text),
        Action::Keyctl => doors::keyctl(),
        Action::Bpf => doors::bpf(),
    }
}
