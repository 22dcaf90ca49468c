//! The pass-through fast path where the kernel has one: once the prefix is written, both
//! sockets go into a sockmap whose stream-verdict program (the daemon loads it; see
//! [`KernelRelay`]) sends every byte one socket receives out of the other. The proxy is not
//! woken per chunk: it only watches for the ends (a FIN, an error, the idle timeout).
//!
//! The contract is the splice relay's: the prefix first, half-close per direction, an idle
//! timeout only, bytes counted each way. A FIN can reach the proxy before the kernel has
//! handed over the last bytes in front of it, so a direction is shut down only once the
//! kernel's count of bytes handed over equals what the socket received and the other socket
//! has taken all of them ([`Drain`]); shutting down earlier would cut the stream short.
//!
//! Two kernel behaviours shape the hand-over. The kernel gives the program a socket's
//! queued segments whole, from their first byte, even one the proxy has partly read; so a
//! client with bytes waiting behind what classification read (early data, a pipelined
//! request) is spliced instead. And the segment that carries a FIN reaches the program
//! empty; redirected, it would break the peer's send path, so the program drops it and the
//! proxy passes the FIN on itself.
//!
//! The hand-over has one narrow window: between the two inserts, bytes the first socket
//! receives have no peer yet. The kernel program keeps them on that socket and counts them
//! as `unpaired`; their order against what follows is lost, so such a connection ends as a
//! failure rather than relay bytes out of order. The client goes in first: after its
//! ClientHello it waits for the server, and what the upstream sends before its own insert
//! waits in its receive queue, which the kick ([`kick`]) hands over once both are in.

use std::io;
use std::net::TcpStream as StdStream;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use nix::sys::socket::sockopt::{SndBuf, SndBufForce};
use nix::sys::socket::{getsockopt, setsockopt};
use nix::{getsockopt_impl, libc, setsockopt_impl, sockopt_impl};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::ends::{Ends, Watched};
use super::relay::{End, Outcome};

/// The kernel's half of the in-kernel relay: a sockmap with the stream-verdict program
/// attached, and a map of each socket's peer and counts, both keyed by socket cookie.
///
/// The daemon implements it over its eBPF maps (`RELAY_SOCKETS`, `RELAY_PEERS`); without
/// one, pass-through relays with `splice(2)`.
pub trait KernelRelay: Send + Sync + 'static {
    /// Records that the bytes socket `cookie` receives go out of socket `peer`, with zero
    /// counts. Called for both sockets before either goes into the sockmap.
    ///
    /// # Errors
    ///
    /// The map refused the entry (full, or a kernel error).
    fn pair(&self, cookie: u64, peer: u64) -> io::Result<()>;

    /// Puts `socket` (cookie `cookie`) into the sockmap: from now on the kernel program
    /// redirects what it receives.
    ///
    /// # Errors
    ///
    /// The map refused the socket (full, or the kernel cannot relay it).
    fn insert(&self, cookie: u64, socket: BorrowedFd<'_>) -> io::Result<()>;

    /// Socket `cookie`'s counts so far.
    ///
    /// # Errors
    ///
    /// The entry is missing or the map cannot be read.
    fn counts(&self, cookie: u64) -> io::Result<RelayCounts>;

    /// Takes socket `cookie` out of the sockmap, then forgets its pairing; returns its final
    /// counts (zero when they could not be read). Entries already gone are not an error.
    fn remove(&self, cookie: u64) -> RelayCounts;

    /// Bytes written into `socket` and not yet acknowledged by its peer (`SIOCOUTQ`). With
    /// `TCP_INFO`'s acknowledged bytes it tells how much the kernel has written into the
    /// socket, which `TCP_INFO` alone cannot say exactly. (An `ioctl`, so the daemon's: this
    /// crate has no unsafe code.)
    ///
    /// # Errors
    ///
    /// The `ioctl` failed.
    fn queued(&self, socket: BorrowedFd<'_>) -> io::Result<u64>;
}

/// What the kernel program counted for one relayed socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayCounts {
    /// Bytes the socket received and the kernel handed to its peer.
    pub bytes: u64,
    /// Bytes the socket received while its peer was not in the sockmap yet.
    pub unpaired: u64,
}

/// Why a connection was not handed to the kernel, with its sockets, so that the caller can
/// relay it with splice.
#[derive(Debug)]
pub(crate) struct NotHandedOver {
    /// The client's socket, as it came.
    pub client: TcpStream,
    /// The upstream's socket.
    pub upstream: TcpStream,
    /// What the kernel refused.
    pub why: io::Error,
}

/// Hands both sockets to the kernel (the proxy has read `read` bytes from the client and
/// written them to the upstream) and waits (on `ends`) until both directions end, a socket
/// fails, or nothing moves for `idle`.
///
/// # Errors
///
/// [`NotHandedOver`] when the kernel refused the sockets before any byte went through it,
/// so that splice can take over.
pub(crate) async fn relay(
    kernel: &dyn KernelRelay,
    ends: &Ends,
    client: TcpStream,
    upstream: TcpStream,
    read: u64,
    idle: Duration,
) -> Result<Outcome, Box<NotHandedOver>> {
    if !ends.alive() {
        let why = io::Error::other("the relay's end watcher stopped");
        return Err(Box::new(NotHandedOver {
            client,
            upstream,
            why,
        }));
    }
    // One `TCP_INFO` of the client serves both the unread check and its base.
    let measured = info(client.as_fd()).and_then(|c| {
        let base_down = c.bytes_acked + kernel.queued(client.as_fd())?;
        Ok((c, (written(kernel, upstream.as_fd())?, base_down)))
    });
    let (client_info, (base_up, base_down)) = match measured {
        Ok(measured) => measured,
        Err(why) => {
            return Err(Box::new(NotHandedOver {
                client,
                upstream,
                why,
            }));
        }
    };
    // The kernel hands a socket's queued segments to the program whole, from their first
    // byte, even one the proxy has partly read: a client that sent more than its ClientHello
    // before the hand-over (early data, a pipelined request) would see the upstream get the
    // prefix twice. Such a connection is spliced instead. Segments that arrive from here on
    // are whole, which the kick after the insert takes care of.
    match client_info.data_received().saturating_sub(read) {
        0 => {}
        n => {
            let why = io::Error::other(format!(
                "{n} bytes from the client are waiting behind what classification read"
            ));
            return Err(Box::new(NotHandedOver {
                client,
                upstream,
                why,
            }));
        }
    }
    let pair = match Pair::hand_over(kernel, client.as_fd(), upstream.as_fd()) {
        Ok(pair) => pair,
        Err(HandOver::Refused(why)) => {
            return Err(Box::new(NotHandedOver {
                client,
                upstream,
                why,
            }));
        }
        // Bytes may already have gone through the kernel: splicing now could leave a gap.
        Err(HandOver::Broken(why)) => return Ok(Outcome::ended(End::Failed(why))),
    };
    // Out of tokio's epoll set, which would wake the runtime for every relayed chunk.
    let sockets = client
        .into_std()
        .and_then(|c| Ok((c, upstream.into_std()?)));
    let (client, upstream) = match sockets {
        Ok(sockets) => sockets,
        Err(e) => return Ok(Outcome::ended(End::Failed(e))),
    };
    let mut watch = Watch {
        kernel,
        pair,
        client: &client,
        upstream: &upstream,
        up: Drain::new(read, base_up),
        down: Drain::new(0, base_down),
    };
    let end = match ends.watch([client.as_fd(), upstream.as_fd()]) {
        Ok(watched) => watch.run(&watched, idle).await,
        Err(e) => End::Failed(e),
    };
    let (up, down) = watch.pair.finish();
    Ok(Outcome {
        bytes_up: up.bytes,
        bytes_down: down.bytes,
        end,
    })
}

/// Why [`Pair::hand_over`] failed.
enum HandOver {
    /// Nothing went through the kernel: the sockets are as they were.
    Refused(io::Error),
    /// Bytes may have gone through the kernel (or be stranded): the connection cannot be
    /// relayed another way.
    Broken(io::Error),
}

/// A connection's two sockets while they are in the sockmap; dropping it takes them out
/// (so a cancelled relay leaves nothing behind).
struct Pair<'k> {
    kernel: &'k dyn KernelRelay,
    client: u64,
    upstream: u64,
    done: bool,
}

impl<'k> Pair<'k> {
    /// Pairs the sockets, inserts the client then the upstream, and kicks both. A refusal
    /// before any byte went through the kernel undoes everything ([`HandOver::Refused`]:
    /// splice can take over); after that, a failure is [`HandOver::Broken`], since bytes
    /// the client sent in the window between the inserts are stranded on its socket.
    fn hand_over(
        kernel: &'k dyn KernelRelay,
        client: BorrowedFd<'_>,
        upstream: BorrowedFd<'_>,
    ) -> Result<Self, HandOver> {
        let mut pair = Self {
            kernel,
            client: cookie(client).map_err(HandOver::Refused)?,
            upstream: cookie(upstream).map_err(HandOver::Refused)?,
            done: false,
        };
        let before = || -> io::Result<()> {
            size_send_buffer(client)?;
            size_send_buffer(upstream)?;
            kernel.pair(pair.client, pair.upstream)?;
            kernel.pair(pair.upstream, pair.client)?;
            kernel.insert(pair.client, client)
        };
        before().map_err(HandOver::Refused)?;
        if let Err(e) = kernel.insert(pair.upstream, upstream) {
            let (c, _) = pair.finish();
            if c.unpaired > 0 || c.bytes > 0 {
                return Err(HandOver::Broken(io::Error::other(format!(
                    "{} bytes arrived while the in-kernel relay was being set up and the \
                     upstream could not join it: {e}",
                    c.unpaired + c.bytes
                ))));
            }
            return Err(HandOver::Refused(e));
        }
        // Bytes that arrived before a socket went in wait in its receive queue until the
        // next segment: hand them over now.
        kick(client)
            .and_then(|()| kick(upstream))
            .map_err(HandOver::Broken)?;
        Ok(pair)
    }

    /// Both sockets' counts.
    fn counts(&self) -> io::Result<(RelayCounts, RelayCounts)> {
        Ok((
            self.kernel.counts(self.client)?,
            self.kernel.counts(self.upstream)?,
        ))
    }

    /// Takes both sockets out; returns their final counts (client's, upstream's).
    fn finish(&mut self) -> (RelayCounts, RelayCounts) {
        if self.done {
            return Default::default();
        }
        self.done = true;
        (
            self.kernel.remove(self.client),
            self.kernel.remove(self.upstream),
        )
    }
}

impl Drop for Pair<'_> {
    fn drop(&mut self) {
        self.finish();
    }
}

/// One direction's end: the reader's FIN seen, then every byte before it written to the
/// writer, then the writer shut down.
struct Drain {
    /// Bytes the proxy itself read from the reader before the hand-over (the classified
    /// prefix), which the kernel never counts.
    read: u64,
    /// The writer's bytes written ([`written`]) when the kernel took over.
    base: u64,
    /// The reader sent its FIN.
    eof: bool,
    /// The writer's write side is shut down.
    shut: bool,
}

impl Drain {
    fn new(read: u64, base: u64) -> Self {
        Self {
            read,
            base,
            eof: false,
            shut: false,
        }
    }

    /// Shuts `writer` down once everything `reader` received went through the kernel into
    /// it (`handed` is the reader's count); `Ok(false)` while bytes are still on the way.
    fn try_shut(
        &mut self,
        kernel: &dyn KernelRelay,
        reader: &StdStream,
        writer: &StdStream,
        handed: u64,
    ) -> io::Result<bool> {
        if self.shut {
            return Ok(true);
        }
        // After the FIN, `tcpi_bytes_received` counts its sequence number too.
        let received = info(reader.as_fd())?.bytes_received.saturating_sub(1);
        if !self.eof || received != self.read + handed {
            return Ok(false);
        }
        if written(kernel, writer.as_fd())? < self.base + handed {
            return Ok(false);
        }
        writer.shutdown(std::net::Shutdown::Write)?;
        self.shut = true;
        Ok(true)
    }
}

/// The proxy's side of a relay in the kernel: waits for FINs, errors and the idle timeout.
struct Watch<'a, 'k> {
    kernel: &'k dyn KernelRelay,
    pair: Pair<'k>,
    client: &'a StdStream,
    upstream: &'a StdStream,
    /// Client -> upstream.
    up: Drain,
    /// Upstream -> client.
    down: Drain,
}

/// First and last pause while a direction's last bytes are on their way to its writer.
const DRAIN_FIRST: Duration = Duration::from_micros(50);
const DRAIN_MAX: Duration = Duration::from_millis(20);

impl Watch<'_, '_> {
    /// Waits for the ends. The kernel's counts are read only when something needs them:
    /// once after the hand-over (bytes stranded in it) and while a FIN waits for its bytes;
    /// the idle timeout asks the sockets when they last sent or received data, so a slow
    /// reader still draining the last bytes is not idle.
    async fn run(&mut self, watched: &Watched<'_>, idle: Duration) -> End {
        match self.pair.counts() {
            Ok((c, u)) if c.unpaired > 0 || u.unpaired > 0 => {
                return End::Failed(io::Error::other(
                    "bytes arrived while the in-kernel relay was being set up; their order \
                     cannot be kept (the client spoke before the server answered; \
                     --relay splice never hands connections over)",
                ));
            }
            Ok(_) => {}
            Err(e) => return End::Failed(e),
        }
        let mut deadline = Instant::now() + idle;
        let mut pause = DRAIN_FIRST;
        let mut looked = self.look();
        loop {
            if let Err(e) = looked {
                return End::Failed(e);
            }
            let draining = (self.up.eof && !self.up.shut) || (self.down.eof && !self.down.shut);
            if draining {
                let (c, u) = match self.pair.counts() {
                    Ok(counts) => counts,
                    Err(e) => return End::Failed(e),
                };
                let kernel = self.kernel;
                let up = self
                    .up
                    .try_shut(kernel, self.client, self.upstream, c.bytes);
                let down = self
                    .down
                    .try_shut(kernel, self.upstream, self.client, u.bytes);
                match (up, down) {
                    (Err(e), _) | (_, Err(e)) => return End::Failed(e),
                    (Ok(true), Ok(true)) => return End::Closed,
                    _ => {}
                }
            }
            // While a FIN waits for its bytes, look again soon; otherwise sleep until an end.
            let draining = (self.up.eof && !self.up.shut) || (self.down.eof && !self.down.shut);
            let wake = if draining {
                let at = Instant::now() + pause;
                pause = (pause * 2).min(DRAIN_MAX);
                at.min(deadline)
            } else {
                pause = DRAIN_FIRST;
                deadline
            };
            looked = tokio::select! {
                () = watched.changed() => self.look(),
                () = tokio::time::sleep_until(wake) => {
                    if Instant::now() >= deadline {
                        match self.quiet() {
                            Ok(quiet) if quiet >= idle => return End::Idle,
                            Ok(quiet) => deadline = Instant::now() + (idle - quiet),
                            Err(e) => return End::Failed(e),
                        }
                    }
                    Ok(())
                }
            };
        }
    }

    /// How long neither socket has sent or received data (`tcpi_last_data_sent`,
    /// `tcpi_last_data_recv`): the relay's idle time, whoever is slow.
    fn quiet(&self) -> io::Result<Duration> {
        let (c, u) = (info(self.client.as_fd())?, info(self.upstream.as_fd())?);
        Ok(Duration::from_millis(u64::from(c.quiet_ms.min(u.quiet_ms))))
    }

    /// Asks both sockets what happened: a FIN ends that socket's reading direction; a reset
    /// or another error ends the relay. A socket in `TCP_CLOSE` whose write side the relay
    /// has not shut down was reset (a reset's error can be taken by the kernel's own send
    /// path before the proxy looks); one whose write side it shut closed in order.
    fn look(&mut self) -> io::Result<()> {
        let (client, upstream) = (info(self.client.as_fd())?, info(self.upstream.as_fd())?);
        // The client's writer is `down`, the upstream's `up`.
        let sides = [
            ("client", self.client, &client, self.down.shut),
            ("upstream", self.upstream, &upstream, self.up.shut),
        ];
        for (side, socket, info, shut_by_us) in sides {
            if info.state != TCP_CLOSE {
                continue;
            }
            if let Some(e) = socket.take_error()? {
                tracing::debug!(side, "in-kernel relay: socket error: {e}");
                return Err(e);
            }
            if !shut_by_us {
                tracing::debug!(side, "in-kernel relay: socket closed without a FIN");
                return Err(io::ErrorKind::ConnectionReset.into());
            }
        }
        let fin = |info: &TcpInfo| info.fin_received() || info.state == TCP_CLOSE;
        self.up.eof |= fin(&client);
        self.down.eof |= fin(&upstream);
        Ok(())
    }
}

/// `TCP_CLOSE` (`include/net/tcp_states.h`): the state a reset leaves a socket in.
const TCP_CLOSE: u8 = 7;

sockopt_impl!(
    /// `SO_COOKIE`: the socket's cookie.
    Cookie,
    GetOnly,
    libc::SOL_SOCKET,
    libc::SO_COOKIE,
    u64
);
sockopt_impl!(
    /// `SO_RCVLOWAT`.
    RcvLowat,
    SetOnly,
    libc::SOL_SOCKET,
    libc::SO_RCVLOWAT,
    usize
);
sockopt_impl!(
    /// `TCP_INFO`, as far as the relay reads it (`tcpi_bytes_retrans`, Linux 4.19+).
    TcpInfoWords,
    GetOnly,
    libc::IPPROTO_TCP,
    libc::TCP_INFO,
    [u64; TCP_INFO_WORDS]
);

/// `struct tcp_info` up to `tcpi_bytes_retrans`, in 64-bit words.
const TCP_INFO_WORDS: usize = 27;

/// The socket's cookie (`SO_COOKIE`), the key of both relay maps.
fn cookie(socket: BorrowedFd<'_>) -> io::Result<u64> {
    Ok(getsockopt(&socket, Cookie)?)
}

/// Makes the kernel look at `socket`'s receive queue now: setting `SO_RCVLOWAT` runs the
/// socket's data-ready callback when bytes are waiting, which is the relay program's.
fn kick(socket: BorrowedFd<'_>) -> io::Result<()> {
    Ok(setsockopt(&socket, RcvLowat, &1)?)
}

/// The send buffer a relayed socket gets (the kernel doubles it): 8 MiB.
///
/// The kernel writes redirected bytes into the peer socket from a work item; when the peer's
/// send buffer is full it retries a jiffy later (4 ms at `HZ=250`), and the send buffer's
/// autotuning never grows for writes made that way. Left at its default, a bulk download ran
/// at 8 MB/s on the bench (32 KiB per 4 ms); with 1, 2 and 4 MiB here 295, 615 and 885 MB/s
/// (splice: 887). A send buffer is a ceiling, not an allocation: an idle connection holds
/// none of it.
const RELAY_SNDBUF: usize = 4 << 20;

/// Gives `socket` the relay's send buffer, past `net.core.wmem_max` where the proxy may
/// (`SO_SNDBUFFORCE`, root), else as far as that limit allows.
fn size_send_buffer(socket: BorrowedFd<'_>) -> io::Result<()> {
    if setsockopt(&socket, SndBufForce, &RELAY_SNDBUF).is_ok() {
        return Ok(());
    }
    Ok(setsockopt(&socket, SndBuf, &RELAY_SNDBUF)?)
}

/// The counters of `struct tcp_info` the relay reads, from one `TCP_INFO` (taken under the
/// socket's lock, so they agree with each other).
struct TcpInfo {
    /// The connection's state (`tcpi_state`, `TCP_ESTABLISHED`...).
    state: u8,
    /// Bytes received in order (`tcpi_bytes_received`).
    bytes_received: u64,
    /// Bytes the peer acknowledged (`tcpi_bytes_acked`).
    bytes_acked: u64,
    /// Milliseconds since the socket last sent or received data (the smaller of
    /// `tcpi_last_data_sent` and `tcpi_last_data_recv`).
    quiet_ms: u32,
}

impl TcpInfo {
    /// Data bytes received: `tcpi_bytes_received` counts the FIN's sequence number too.
    fn data_received(&self) -> u64 {
        self.bytes_received
            .saturating_sub(u64::from(self.fin_received()))
    }

    /// The peer's FIN came: `CLOSE_WAIT`, `LAST_ACK`, `CLOSING` or `TIME_WAIT`
    /// (`include/net/tcp_states.h`). `TCP_CLOSE` is ambiguous (an orderly close or a
    /// reset) and left to the caller.
    fn fin_received(&self) -> bool {
        matches!(self.state, 6 | 8 | 9 | 11)
    }
}

/// Reads `TCP_INFO`. Byte offsets are fixed by the uapi (`linux/tcp.h`).
fn info(socket: BorrowedFd<'_>) -> io::Result<TcpInfo> {
    let words = getsockopt(&socket, TcpInfoWords)?;
    let word = |offset: usize| words[offset / 8];
    // The u32 at byte `offset`: the first four bytes of its 64-bit word in memory order.
    let u32_at = |offset: usize| {
        let bytes = words[offset / 8].to_ne_bytes();
        let at = offset % 8;
        u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
    };
    Ok(TcpInfo {
        state: words[0].to_ne_bytes()[0],
        bytes_received: word(128),
        bytes_acked: word(120),
        quiet_ms: u32_at(44).min(u32_at(52)),
    })
}

/// Bytes written into `socket` so far, up to a constant (a SYN may count): acknowledged
/// (`TCP_INFO`) plus still queued (`SIOCOUTQ`), read in that order, so that an
/// acknowledgement in between can only make it smaller and "all written" is never claimed
/// early.
fn written(kernel: &dyn KernelRelay, socket: BorrowedFd<'_>) -> io::Result<u64> {
    let acked = info(socket)?.bytes_acked;
    Ok(acked + kernel.queued(socket)?)
}
