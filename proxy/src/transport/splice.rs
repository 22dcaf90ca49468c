//! The pass-through fast path: once a connection is allowed, bytes move socket -> pipe ->
//! socket inside the kernel with `splice(2)`, never through a userspace buffer. Same contract
//! as [`relay`](super::relay::relay): the prefix first, half-close per direction, an idle
//! timeout only, and the bytes counted each way.
//!
//! A direction holds a pipe only while bytes are in flight: it takes one from a shared pool
//! when its reader is readable and gives it back once the pipe is drained, so ten thousand
//! idle connections hold no pipes, and descriptors stay at two per connection plus one pair
//! per transfer in progress.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use nix::fcntl::{OFlag, SpliceFFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::relay::{Outcome, Pump, relay_with};

/// The most bytes moved into a pipe at once (the default pipe capacity).
const CHUNK: usize = 64 * 1024;

/// Pipes kept for reuse (each is empty when it is put back).
static POOL: std::sync::Mutex<Vec<(OwnedFd, OwnedFd)>> = std::sync::Mutex::new(Vec::new());
/// The most idle pipes kept; more are closed when given back.
const POOL_MAX: usize = 256;

/// An empty non-blocking pipe (read end, write end), from the pool or new.
fn take_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    if let Some(pipe) = POOL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .pop()
    {
        return Ok(pipe);
    }
    Ok(nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?)
}

/// Returns an empty pipe to the pool (or closes it when the pool is full).
fn give_pipe(pipe: (OwnedFd, OwnedFd)) {
    let mut pool = POOL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if pool.len() < POOL_MAX {
        pool.push(pipe);
    }
}

/// Writes `prefix` to `upstream`, then splices `client` <-> `upstream` until both
/// directions end, a socket fails, or nothing moves for `idle`.
pub(crate) async fn relay(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    prefix: &[u8],
    idle: Duration,
) -> Outcome {
    relay_with::<TcpStream, TcpStream, Direction>(client, upstream, prefix, idle).await
}

/// One direction: reader -> pipe -> writer, then shut the writer's write side down.
#[derive(Default)]
struct Direction {
    /// The pipe (read end, write end) while bytes are in flight.
    pipe: Option<(OwnedFd, OwnedFd)>,
    /// Bytes in the pipe, not yet written out.
    in_pipe: usize,
    read_done: bool,
    shut_down: bool,
    amount: u64,
}

impl Pump<TcpStream, TcpStream> for Direction {
    /// Moves bytes until the reader or the writer would block; `Ready(Ok)` once the reader
    /// hit EOF, the pipe is empty and the writer's write side was shut down.
    fn pump(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut TcpStream,
        writer: &mut TcpStream,
        progressed: &mut bool,
    ) -> Poll<io::Result<()>> {
        if self.shut_down {
            return Poll::Ready(Ok(()));
        }
        let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
        loop {
            if self.in_pipe == 0 && !self.read_done {
                if let Some(pipe) = self.pipe.take() {
                    give_pipe(pipe);
                }
                ready!(reader.poll_read_ready(cx))?;
                let pipe = take_pipe()?;
                let filled = reader.try_io(Interest::READABLE, || {
                    nix::fcntl::splice(reader.as_fd(), None, pipe.1.as_fd(), None, CHUNK, flags)
                        .map_err(io::Error::from)
                });
                match filled {
                    Ok(0) => {
                        self.read_done = true;
                        give_pipe(pipe);
                    }
                    Ok(n) => {
                        self.in_pipe = n;
                        self.pipe = Some(pipe);
                        *progressed = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        give_pipe(pipe);
                        continue;
                    }
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            while self.in_pipe > 0 {
                ready!(writer.poll_write_ready(cx))?;
                let Some(pipe) = self.pipe.as_ref() else {
                    return Poll::Ready(Err(io::Error::other("bytes in flight without a pipe")));
                };
                let written = writer.try_io(Interest::WRITABLE, || {
                    nix::fcntl::splice(
                        pipe.0.as_fd(),
                        None,
                        writer.as_fd(),
                        None,
                        self.in_pipe,
                        flags,
                    )
                    .map_err(io::Error::from)
                });
                match written {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(n) => {
                        self.in_pipe -= n;
                        self.amount += n as u64;
                        *progressed = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            if self.read_done {
                // Half-close; a peer that already went away cannot be told, which is not a
                // failure of the relay.
                let _ = nix::sys::socket::shutdown(
                    std::os::fd::AsRawFd::as_raw_fd(writer),
                    nix::sys::socket::Shutdown::Write,
                );
                self.shut_down = true;
                return Poll::Ready(Ok(()));
            }
        }
    }

    fn moved(&self) -> u64 {
        self.amount
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::super::relay::End;
    use super::*;

    /// A connected pair of loopback TCP sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    #[tokio::test]
    async fn splices_both_ways_with_half_close_and_counts() {
        let (mut client, mut client_far) = pair().await;
        let (mut upstream, mut upstream_far) = pair().await;
        let task = tokio::spawn(async move {
            relay(
                &mut client_far,
                &mut upstream_far,
                b"HELLO",
                Duration::from_secs(5),
            )
            .await
        });
        let big = vec![7u8; 3 * 1024 * 1024 + 17];
        let far = tokio::spawn(async move {
            let mut got = Vec::new();
            upstream.read_to_end(&mut got).await.unwrap();
            upstream.write_all(b"response").await.unwrap();
            upstream.shutdown().await.unwrap();
            got
        });
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        assert_eq!(writer.await.unwrap(), b"response");
        let got = far.await.unwrap();
        assert_eq!(&got[..5], b"HELLO");
        assert_eq!(got.len(), 5 + big.len());
        assert!(got[5..].iter().all(|b| *b == 7));
        let out = task.await.unwrap();
        assert_eq!(out.bytes_up, 5 + big.len() as u64);
        assert_eq!(out.bytes_down, 8);
        assert!(matches!(out.end, End::Closed), "{:?}", out.end);
    }

    #[tokio::test]
    async fn nothing_moving_ends_at_the_idle_timeout() {
        let (_client, mut client_far) = pair().await;
        let (_upstream, mut upstream_far) = pair().await;
        let out = relay(
            &mut client_far,
            &mut upstream_far,
            b"",
            Duration::from_millis(100),
        )
        .await;
        assert!(matches!(out.end, End::Idle), "{:?}", out.end);
    }
}
