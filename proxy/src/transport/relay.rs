//! Stage 4 (pass-through): copy bytes both ways until both sides are done.
//!
//! [`relay`] first writes the bytes classification consumed (the ClientHello) to the
//! upstream, then copies in both directions with one fixed buffer per direction (no
//! allocation per read). When one direction reaches EOF, the write side of the other socket
//! is shut down (half-close) and the other direction keeps going. The only timeout is an
//! *idle* timeout: it fires when no byte moved either way for `idle`, never because a stream
//! is long-lived.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Size of each direction's copy buffer.
const BUF_SIZE: usize = 16 * 1024;

/// How a relay ended, with the bytes moved each way.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// Bytes written to the upstream, including the replayed prefix.
    pub bytes_up: u64,
    /// Bytes written to the client.
    pub bytes_down: u64,
    /// Why it ended.
    pub end: End,
}

/// Why a relay ended.
#[derive(Debug)]
pub(crate) enum End {
    /// Both sides closed their write halves.
    Closed,
    /// A socket failed (reset, broken pipe, ...).
    Failed(io::Error),
    /// Nothing moved for the idle timeout.
    Idle,
}

impl End {
    /// The audit reason suffix for this end: `None` for a clean close.
    pub(crate) fn describe(&self) -> Option<String> {
        match self {
            Self::Closed => None,
            // Clients often end a TLS session with a reset (closing with unread data):
            // worth recording, but not a failure.
            Self::Failed(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::BrokenPipe
                ) =>
            {
                Some("closed by reset".to_owned())
            }
            Self::Failed(e) => Some(format!("relay failed: {e}")),
            Self::Idle => Some("idle timeout".to_owned()),
        }
    }
}

/// Writes `prefix` to `upstream`, then relays `client` <-> `upstream` until both directions
/// end, a socket fails, or nothing moves for `idle`.
///
/// # Cancel safety
///
/// Cancel safe in the sense that dropping the future drops no data the peers were promised:
/// it is only dropped together with both sockets.
pub(crate) async fn relay<C, U>(
    client: &mut C,
    upstream: &mut U,
    prefix: &[u8],
    idle: Duration,
) -> Outcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    relay_with::<C, U, Direction>(client, upstream, prefix, idle).await
}

/// One direction of a relay, as [`relay_with`] drives it: moves bytes from `from` to `to`
/// until either would block; `Ready(Ok)` once `from` hit EOF, everything went out and `to`
/// was shut down for writing.
pub(crate) trait Pump<A, B>: Default {
    /// Moves what it can; sets `progressed` when bytes moved.
    fn pump(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut A,
        to: &mut B,
        progressed: &mut bool,
    ) -> Poll<io::Result<()>>;

    /// Bytes written to `to` so far.
    fn moved(&self) -> u64;
}

/// What every relay does: writes `prefix` to `upstream`, then pumps both directions (a `D`
/// each) until both end, one fails, or nothing moves for `idle`; the counts come from the
/// directions.
pub(crate) async fn relay_with<C, U, D>(
    client: &mut C,
    upstream: &mut U,
    prefix: &[u8],
    idle: Duration,
) -> Outcome
where
    U: AsyncWrite + Unpin,
    D: Pump<C, U> + Pump<U, C>,
{
    let bytes_prefix = match write_prefix(upstream, prefix, idle).await {
        Ok(n) => n,
        Err(end) => return Outcome::ended(end),
    };
    let (mut up, mut down) = (D::default(), D::default());
    let end = both_ways(idle, |cx, upward, progressed| {
        if upward {
            Pump::<C, U>::pump(&mut up, cx, client, upstream, progressed)
        } else {
            Pump::<U, C>::pump(&mut down, cx, upstream, client, progressed)
        }
    })
    .await;
    Outcome {
        bytes_up: bytes_prefix + Pump::<C, U>::moved(&up),
        bytes_down: Pump::<U, C>::moved(&down),
        end,
    }
}

impl Outcome {
    /// A relay that ended before any byte was relayed.
    pub(crate) fn ended(end: End) -> Self {
        Self {
            bytes_up: 0,
            bytes_down: 0,
            end,
        }
    }
}

/// Writes the bytes classification consumed to the upstream, within `idle`; returns their
/// count. Shared by the copying relay and the splice one (`splice.rs`).
pub(crate) async fn write_prefix<U: AsyncWrite + Unpin>(
    upstream: &mut U,
    prefix: &[u8],
    idle: Duration,
) -> Result<u64, End> {
    match tokio::time::timeout(idle, upstream.write_all(prefix)).await {
        Ok(Ok(())) => Ok(prefix.len() as u64),
        Ok(Err(e)) => Err(End::Failed(e)),
        Err(_) => Err(End::Idle),
    }
}

/// Drives both directions (`pump(cx, upward, progressed)`: client -> upstream when `upward`)
/// until both are done (`Ready(Ok)`), one fails, or neither moved a byte for `idle`. A
/// direction sets `progressed` when bytes moved, which pushes the idle deadline back. Shared
/// by the copying relay and the splice one.
pub(crate) async fn both_ways(
    idle: Duration,
    mut pump: impl FnMut(&mut Context<'_>, bool, &mut bool) -> Poll<io::Result<()>>,
) -> End {
    let mut sleep: Pin<Box<Sleep>> = Box::pin(tokio::time::sleep(idle));
    let (mut up_done, mut down_done) = (false, false);
    poll_fn(|cx| {
        let mut progressed = false;
        if !up_done {
            match pump(cx, true, &mut progressed) {
                Poll::Ready(Err(e)) => return Poll::Ready(End::Failed(e)),
                Poll::Ready(Ok(())) => up_done = true,
                Poll::Pending => {}
            }
        }
        if !down_done {
            match pump(cx, false, &mut progressed) {
                Poll::Ready(Err(e)) => return Poll::Ready(End::Failed(e)),
                Poll::Ready(Ok(())) => down_done = true,
                Poll::Pending => {}
            }
        }
        if up_done && down_done {
            return Poll::Ready(End::Closed);
        }
        if progressed {
            sleep.as_mut().reset(Instant::now() + idle);
        }
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(End::Idle),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// One direction of the copy: reader -> buffer -> writer, then shut the writer down.
pub(crate) struct Direction {
    buf: Box<[u8]>,
    pos: usize,
    cap: usize,
    read_done: bool,
    need_flush: bool,
    shut_down: bool,
    amount: u64,
}

impl<R, W> Pump<R, W> for Direction
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Moves bytes until the reader or writer is pending; `Ready(Ok)` once the reader hit EOF,
    /// everything was written and the writer was shut down. `Err(Some)` is a socket error.
    fn pump(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        progressed: &mut bool,
    ) -> Poll<io::Result<()>> {
        if self.shut_down {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.pos == self.cap && !self.read_done {
                let mut rb = ReadBuf::new(&mut self.buf);
                match Pin::new(&mut *reader).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            self.read_done = true;
                        } else {
                            self.pos = 0;
                            self.cap = n;
                            *progressed = true;
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        if self.need_flush {
                            ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            while self.pos < self.cap {
                let n =
                    ready!(Pin::new(&mut *writer).poll_write(cx, &self.buf[self.pos..self.cap]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.amount += n as u64;
                self.need_flush = true;
                *progressed = true;
            }
            if self.read_done && self.pos == self.cap {
                // Half-close: tell the other side this direction is finished. A peer that
                // already went away cannot be told; that is not a failure of the relay.
                let _ = ready!(Pin::new(&mut *writer).poll_shutdown(cx));
                self.shut_down = true;
                return Poll::Ready(Ok(()));
            }
        }
    }

    fn moved(&self) -> u64 {
        self.amount
    }
}

impl Default for Direction {
    fn default() -> Self {
        Self {
            buf: vec![0; BUF_SIZE].into_boxed_slice(),
            pos: 0,
            cap: 0,
            read_done: false,
            need_flush: false,
            shut_down: false,
            amount: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, duplex};

    use super::*;

    #[tokio::test]
    async fn relays_both_ways_with_half_close_and_counts() {
        let (mut client, mut client_far) = duplex(64);
        let (mut upstream, mut upstream_far) = duplex(64);
        let task = tokio::spawn(async move {
            relay(
                &mut client_far,
                &mut upstream_far,
                b"HELLO",
                Duration::from_secs(5),
            )
            .await
        });
        // The upstream reads everything (prefix + data + EOF), then answers on the other
        // direction, which must still work after the client's half-close.
        let far = tokio::spawn(async move {
            let mut got = Vec::new();
            upstream.read_to_end(&mut got).await.unwrap();
            upstream.write_all(b"response").await.unwrap();
            upstream.shutdown().await.unwrap();
            got
        });
        client.write_all(&[7u8; 1000]).await.unwrap();
        client.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"response");
        let got = far.await.unwrap();
        assert_eq!(&got[..5], b"HELLO");
        assert_eq!(got.len(), 1005);
        let out = task.await.unwrap();
        assert_eq!(out.bytes_up, 1005);
        assert_eq!(out.bytes_down, 8);
        assert!(matches!(out.end, End::Closed), "{:?}", out.end);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_fires_only_without_traffic() {
        let (mut client, mut client_far) = duplex(64);
        let (mut upstream, mut upstream_far) = duplex(64);
        let task = tokio::spawn(async move {
            relay(
                &mut client_far,
                &mut upstream_far,
                b"",
                Duration::from_secs(10),
            )
            .await
        });
        // Traffic every 6 s keeps a 10 s idle timer from firing for 30 s in total.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            client.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            upstream.read_exact(&mut b).await.unwrap();
            assert!(!task.is_finished());
        }
        let out = task.await.unwrap();
        assert!(matches!(out.end, End::Idle), "{:?}", out.end);
        assert_eq!(out.bytes_up, 5);
    }
}
