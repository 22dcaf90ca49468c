//! WebSocket frames after an upgrade on an injected request, scrubbed of the token: the
//! upstream side of the relay is wrapped in [`ScrubbedWs`], whose reads are the server's
//! frames re-framed with every form of the token ([`Needles`]) replaced, so an echo service
//! cannot hand the sandbox the credential over the socket either.
//!
//! Data messages are scrubbed as a stream: a form of the token split across frames (or
//! reads) is still found, because the tail that may start one is held back, and the message
//! is re-fragmented around it (RFC 6455 §5.4 lets an intermediary change fragmentation when no
//! extension is in use). Control frames (at most 125 bytes) are scrubbed whole. Extensions are
//! not negotiated (egressd removes `Sec-WebSocket-Extensions` from the upgrade request); a
//! frame with a reserved bit set, which only an extension such as `permessage-deflate` may
//! send, ends the connection, since a compressed payload cannot be searched. What the client
//! sends goes to the upstream untouched.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::redact::Needles;

/// How much is read from the upstream at a time.
const READ_SIZE: usize = 16 * 1024;
/// The largest control-frame payload (RFC 6455 §5.5).
const MAX_CONTROL: usize = 125;

/// The upstream side of an upgraded connection, its frames scrubbed on the way to the client.
pub(crate) struct ScrubbedWs<U> {
    inner: U,
    needles: Arc<Needles>,
    /// Raw bytes from the upstream, not parsed yet.
    input: BytesMut,
    /// Re-framed, scrubbed bytes for the client.
    output: BytesMut,
    state: State,
    /// The data message being relayed.
    message: Message,
    eof: bool,
}

enum State {
    /// Waiting for a frame header.
    Header,
    /// Inside a frame's payload.
    Payload(Frame),
}

struct Frame {
    fin: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    /// Payload bytes already read (for the mask's offset).
    read: u64,
    remaining: u64,
    /// A control frame's payload, kept whole.
    control: BytesMut,
}

#[derive(Default)]
struct Message {
    /// The opcode of the message (text or binary) until its first fragment is sent.
    opcode: Option<u8>,
    /// Scrubbed bytes held back: they may start a form of the token.
    carry: BytesMut,
}

impl<U> ScrubbedWs<U> {
    /// Wraps the upstream side of an upgraded connection.
    pub(crate) fn new(inner: U, needles: Arc<Needles>) -> Self {
        Self {
            inner,
            needles,
            input: BytesMut::new(),
            output: BytesMut::new(),
            state: State::Header,
            message: Message::default(),
            eof: false,
        }
    }

    /// Parses what `input` holds into `output`.
    fn process(&mut self) -> io::Result<()> {
        loop {
            match &mut self.state {
                State::Header => {
                    let Some(frame) = parse_header(&mut self.input)? else {
                        return Ok(());
                    };
                    if frame.opcode < 8 && frame.opcode != 0 {
                        self.message.opcode = Some(frame.opcode);
                    }
                    let empty = frame.remaining == 0;
                    self.state = State::Payload(frame);
                    if empty {
                        self.finish_frame();
                    }
                }
                State::Payload(frame) => {
                    if self.input.is_empty() {
                        return Ok(());
                    }
                    let n = usize::try_from(frame.remaining)
                        .unwrap_or(usize::MAX)
                        .min(self.input.len());
                    let mut chunk = self.input.split_to(n);
                    if let Some(mask) = frame.mask {
                        for (i, b) in chunk.iter_mut().enumerate() {
                            *b ^= mask[usize::try_from((frame.read + i as u64) % 4).unwrap_or(0)];
                        }
                    }
                    frame.read += n as u64;
                    frame.remaining -= n as u64;
                    if frame.opcode >= 8 {
                        frame.control.extend_from_slice(&chunk);
                    } else {
                        let last = frame.remaining == 0 && frame.fin;
                        self.message.carry.extend_from_slice(&chunk);
                        self.emit_data(last);
                    }
                    if matches!(&self.state, State::Payload(f) if f.remaining == 0) {
                        self.finish_frame();
                    }
                }
            }
        }
    }

    /// The frame's payload is all read: a control frame goes out whole, scrubbed.
    fn finish_frame(&mut self) {
        let State::Payload(frame) = std::mem::replace(&mut self.state, State::Header) else {
            return;
        };
        if frame.opcode >= 8 {
            let (mut payload, _) = self.needles.replace_all(&frame.control);
            payload.truncate(MAX_CONTROL);
            write_frame(&mut self.output, true, frame.opcode, &payload);
        } else if frame.fin && frame.read == 0 {
            // An empty final frame ends its message (one with a payload already did).
            self.emit_data(true);
        }
    }

    /// Scrubs the held-back data and sends what is safe: everything when `last` (the end of
    /// the message), else all but a tail that may start a form of the token.
    fn emit_data(&mut self, last: bool) {
        let (scrubbed, _) = self.needles.replace_all(&self.message.carry);
        let keep = if last {
            0
        } else {
            self.needles.partial_tail(&scrubbed)
        };
        let send = scrubbed.len() - keep;
        self.message.carry.clear();
        self.message.carry.extend_from_slice(&scrubbed[send..]);
        if send == 0 && !last {
            return;
        }
        let opcode = self.message.opcode.take().unwrap_or(0);
        write_frame(&mut self.output, last, opcode, &scrubbed[..send]);
    }
}

/// Parses a frame header from the front of `input`, consuming it; `None` until it is whole.
fn parse_header(input: &mut BytesMut) -> io::Result<Option<Frame>> {
    if input.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (input[0], input[1]);
    if b0 & 0x70 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the upstream sent a WebSocket frame with an extension bit set (compressed?), \
             which cannot be checked for the injected token",
        ));
    }
    let masked = b1 & 0x80 != 0;
    let (len_bytes, len7) = match b1 & 0x7f {
        126 => (2, None),
        127 => (8, None),
        n => (0, Some(u64::from(n))),
    };
    let header = 2 + len_bytes + if masked { 4 } else { 0 };
    if input.len() < header {
        return Ok(None);
    }
    input.advance(2);
    let remaining = match len7 {
        Some(n) => n,
        None if len_bytes == 2 => u64::from(input.get_u16()),
        None => input.get_u64(),
    };
    let mask = masked.then(|| {
        let mut key = [0; 4];
        input.copy_to_slice(&mut key);
        key
    });
    let opcode = b0 & 0x0f;
    if opcode >= 8 && remaining > MAX_CONTROL as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the upstream sent a WebSocket control frame over 125 bytes",
        ));
    }
    Ok(Some(Frame {
        fin: b0 & 0x80 != 0,
        opcode,
        mask,
        read: 0,
        remaining,
        control: BytesMut::new(),
    }))
}

/// Appends an unmasked frame (server to client) to `out`.
fn write_frame(out: &mut BytesMut, fin: bool, opcode: u8, payload: &[u8]) {
    out.put_u8(if fin { 0x80 } else { 0 } | opcode);
    match payload.len() {
        n @ 0..=125 => out.put_u8(u8::try_from(n).unwrap_or(125)),
        n @ 126..=0xffff => {
            out.put_u8(126);
            out.put_u16(u16::try_from(n).unwrap_or(u16::MAX));
        }
        n => {
            out.put_u8(127);
            out.put_u64(n as u64);
        }
    }
    out.extend_from_slice(payload);
}

impl<U: AsyncRead + Unpin> AsyncRead for ScrubbedWs<U> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.output.is_empty() {
                let n = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut raw = [0u8; READ_SIZE];
            let mut read = ReadBuf::new(&mut raw);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.eof = true;
                continue;
            }
            this.input.extend_from_slice(read.filled());
            this.process()?;
        }
    }
}

impl<U: AsyncWrite + Unpin> AsyncWrite for ScrubbedWs<U> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The bytes `frames` (as a server writes them) read as through [`ScrubbedWs`], for tests.
#[cfg(test)]
fn scrub_all(needles: &Arc<Needles>, raw: &[u8], read_size: usize) -> io::Result<bytes::Bytes> {
    let mut ws = ScrubbedWs::new(tokio::io::empty(), Arc::clone(needles));
    for chunk in raw.chunks(read_size.max(1)) {
        ws.input.extend_from_slice(chunk);
        ws.process()?;
    }
    Ok(ws.output.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Data messages of `(opcode, payload)` after reading `raw` whole, fragments joined.
    fn messages(raw: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut input = BytesMut::from(raw);
        let mut out = Vec::new();
        let mut current: Option<(u8, Vec<u8>)> = None;
        while let Some(frame) = parse_header(&mut input).unwrap() {
            let n = usize::try_from(frame.remaining).unwrap();
            let payload = input.split_to(n).to_vec();
            if frame.opcode >= 8 {
                out.push((frame.opcode, payload));
                continue;
            }
            let (op, mut data) = current.take().unwrap_or((frame.opcode, Vec::new()));
            data.extend_from_slice(&payload);
            if frame.fin {
                out.push((op, data));
            } else {
                current = Some((op, data));
            }
        }
        assert!(input.is_empty());
        out
    }

    fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = BytesMut::new();
        write_frame(&mut out, fin, opcode, payload);
        let mut v = out.to_vec();
        if let Some(key) = mask {
            let header = v.len() - payload.len();
            v[1] |= 0x80;
            let masked: Vec<u8> = payload
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i % 4])
                .collect();
            v.truncate(header);
            v.extend_from_slice(&key);
            v.extend_from_slice(&masked);
        }
        v
    }

    #[test]
    fn the_token_is_scrubbed_across_fragments_reads_and_forms() {
        const TOKEN: &[u8] = b"eyJhbGciOiJSUzI1NiJ9.secret-part";
        let needles = Needles::new(TOKEN).unwrap();
        let marker = super::super::redact::MARKER;
        let raw = [
            frame(false, 1, b"echo: eyJhbGciOi", None),
            frame(true, 0, b"JSUzI1NiJ9.secret-part done", None),
            frame(true, 9, b"ping eyJhbGciOiJSUzI1NiJ9.secret-part", None),
            frame(
                true,
                2,
                &[b"bin ".as_slice(), TOKEN].concat(),
                Some([1, 2, 3, 4]),
            ),
            frame(true, 1, &vec![b'x'; 70_000], None),
        ]
        .concat();
        for read_size in [1, 7, 1000, raw.len()] {
            let out = scrub_all(&needles, &raw, read_size).unwrap();
            let got = messages(&out);
            assert_eq!(got.len(), 4, "{read_size}");
            assert_eq!(
                got[0],
                (1, [b"echo: ".as_slice(), marker, b" done"].concat())
            );
            assert_eq!(got[1], (9, [b"ping ".as_slice(), marker].concat()));
            assert_eq!(got[2], (2, [b"bin ".as_slice(), marker].concat()));
            assert_eq!(got[3], (1, vec![b'x'; 70_000]));
            assert!(memchr::memmem::find(&out, TOKEN).is_none());
        }
    }

    #[test]
    fn compressed_frames_end_the_connection() {
        let needles = Needles::new(b"secret-token-value").unwrap();
        let mut raw = frame(true, 1, b"deflated", None);
        raw[0] |= 0x40; // RSV1: permessage-deflate
        let err = scrub_all(&needles, &raw, 64).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let too_long = frame(true, 9, &[0; 126], None);
        assert!(scrub_all(&needles, &too_long, 64).is_err());
    }
}
